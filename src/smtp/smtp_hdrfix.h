/*
 * smtp_hdrfix.h - private to src/smtp: the header fixes of a submission
 * server (RFC 6409 8.2, 8.3): a message without Date: or Message-ID: gets
 * them, added at the end of its header section.  Nothing else is changed.
 *
 * The filter sits between the data machine's output (CRLF lines, already
 * unstuffed) and the spool.  It passes octets through unchanged, except
 * that it holds back the start of a line whose kind (header field,
 * folded continuation, empty line, body) is not yet known - at most
 * SMTP_HDRFIX_HOLD octets, after which the line counts as body - and
 * inserts the missing fields where the header section ends:
 *  - before the empty line that separates it from the body;
 *  - before the first line that is not a header field (a body that
 *    starts without an empty line), followed by an empty line so that
 *    line stays in the body;
 *  - at the end of a message that is all header (smtp_hdrfix_finish).
 * Once the header section has ended every octet passes through at once.
 *
 * Pure: no I/O, no globals; output goes to a caller's struct buf.  Gives
 * the same output whether fed a byte at a time or all at once.
 */
#ifndef STRATA_SMTP_HDRFIX_H
#define STRATA_SMTP_HDRFIX_H

#include <stdbool.h>
#include <stddef.h>

#include "core.h"

#define SMTP_HDRFIX_HOLD 1000   /* longest field name we wait for (RFC 5322: 998-octet lines) */

struct smtp_hdrfix {
	bool done;                  /* header section over: pass-through */
	bool date, msgid;           /* fields seen */
	bool any;                   /* a field was seen (a fold may follow) */
	int state;                  /* private */
	size_t hold_len;
	char hold[SMTP_HDRFIX_HOLD + 2];
	char date_value[64];        /* RFC 5322 date to add */
	char msgid_value[400];      /* "<id@host>" to add */
};

/* `date` is the Date: value to add, `msgid` the Message-ID: value
 * ("<...>"); both are copied (truncated to their fields). */
void smtp_hdrfix_init(struct smtp_hdrfix *h, const char *date, const char *msgid);
/* Filters data[0..len) into out. */
void smtp_hdrfix_feed(struct smtp_hdrfix *h, const char *data, size_t len, struct buf *out);
/* End of message: flushes what is held and, if the header section never
 * ended, adds the missing fields (after a CRLF if the last line lacked one). */
void smtp_hdrfix_finish(struct smtp_hdrfix *h, struct buf *out);

#endif
