/*
 * smtp_data.h - private to src/smtp: the message-data state machine for
 * DATA (dot-terminated, dot-stuffed) and BDAT (counted chunks).
 *
 * Owns: turning the octets a client sends after "354" (or inside BDAT
 * chunks) into the octets stored, and recognising the end of DATA.
 *
 * Invariants:
 *  - Pure: no I/O, no allocation except appending to the caller's buffer.
 *    Output for n input octets is at most 2n + 3 octets (a bare line end
 *    becomes CRLF), so a caller that feeds bounded chunks holds bounded memory.
 *  - Feeding the input in any split (one byte at a time, whole, random
 *    pieces) gives the same output, flags and end position.
 *  - End of DATA is ONLY <CRLF>.<CRLF> where the CRLF before the dot is a
 *    real CR LF pair (or the dot is the first octet of the data).  Bare LF
 *    or bare CR never take part in it, so "\n.\n", "\r\n.\n", "\n.\r\n" and
 *    "\r.\r" are content: this closes the SMTP smuggling class of attacks
 *    (CVE-2023-51764), where another server would see a different message
 *    boundary than ours.
 *  - A bare LF or bare CR ends a line and is stored as CRLF; in
 *    BARE_LF_REJECT mode it also sets SMTP_DATA_BAD_BARE_LF.  A line made of
 *    a single dot that is not the terminator is stored as ".".
 *  - A NUL octet sets SMTP_DATA_BAD_NUL (the octet is passed through; a bad
 *    message is never stored, so what it would contain does not matter).
 */
#ifndef STRATA_SMTP_DATA_H
#define STRATA_SMTP_DATA_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "core.h"

enum smtp_data_mode { SMTP_DATA_DOT = 0, SMTP_DATA_BDAT };

#define SMTP_DATA_BAD_NUL     (1u << 0)
#define SMTP_DATA_BAD_BARE_LF (1u << 1)

struct smtp_data {
	enum smtp_data_mode mode;
	enum bare_lf_mode bare_lf;
	unsigned bad;      /* SMTP_DATA_BAD_* */
	bool done;         /* DOT mode: the terminator was consumed */
	bool bol;          /* at the beginning of a line */
	bool clean;        /* the current line was preceded by a real CRLF */
	bool dot;          /* DOT mode: the line so far is one held-back "." */
	bool cr;           /* a CR was seen, its meaning depends on the next octet */
};

void smtp_data_init(struct smtp_data *d, enum smtp_data_mode mode, enum bare_lf_mode bare_lf);
/*
 * Consumes input, appending the octets to store to `out`.  In DOT mode it
 * stops right after the terminator's LF (sets d->done) and returns the
 * number of octets consumed, so pipelined commands after it stay with the
 * caller; otherwise it consumes everything.  Must not be called after done.
 */
size_t smtp_data_feed(struct smtp_data *d, const char *in, size_t len, struct buf *out);
/* BDAT LAST: resolves a CR held back at the end of the last chunk (it is a
 * bare CR line end).  Harmless in DOT mode after done. */
void smtp_data_finish(struct smtp_data *d, struct buf *out);

/* The reply for a bad message: one place for these codes.
 * NUL: 554 5.6.0; bare LF/CR in reject mode: 550 5.6.11 (RFC 5321 2.3.8
 * forbids them; 5.6.11 is the code large receivers already give for bare
 * line feeds, so senders recognise it).  NUL wins when both are set. */
struct smtp_data_reject {
	int code;
	const char *enh;
	const char *text;
};
const struct smtp_data_reject *smtp_data_reject_reply(unsigned bad);

#endif
