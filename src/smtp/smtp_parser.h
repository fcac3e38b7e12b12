/*
 * smtp_parser.h - private to src/smtp: the pure SMTP command parsers.
 *
 * Owns: command-line framing with a hard length limit and resynchronisation
 * (smtp_line_*), verb recognition (smtp_cmd_parse), and the RFC 5321 4.1.2
 * path and ESMTP parameter grammar of MAIL FROM / RCPT TO, plus BDAT's
 * argument (RFC 3030).
 *
 * Invariants:
 *  - No I/O, no globals, no allocation beyond the line reader's bounded
 *    buffer (at most `max` bytes).  Thread-safe for distinct objects.
 *  - The line reader gives identical results whether it is fed a byte at a
 *    time or everything at once; it never consumes past the end of a line,
 *    so the bytes after a command (DATA or BDAT payload) stay with the caller.
 *  - Path parsing never rewrites an address into something routable that the
 *    client did not write: source routes are dropped, a quoted local part is
 *    unquoted only when the result is the same dot-atom, and nothing else
 *    (percent hack, bang path, IP literal) is interpreted.  Relay decisions
 *    are the caller's, made on the canonical address.
 */
#ifndef STRATA_SMTP_PARSER_H
#define STRATA_SMTP_PARSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"

/* ---- line framing ------------------------------------------------------ */
enum smtp_line_status {
	SMTP_LINE_PARTIAL = 0, /* all input consumed, no line end yet */
	SMTP_LINE_READY,       /* a line is in reader->line (terminator removed) */
	SMTP_LINE_TOO_LONG,    /* a line longer than max ended; its bytes were discarded */
	SMTP_LINE_NUL,         /* a line containing a NUL byte ended (content kept) */
};
struct smtp_line_reader {
	struct buf line;  /* current line, without its LF (and CR) */
	size_t max;       /* longest line accepted, counting its CRLF or LF */
	bool overflow;    /* line exceeded max: discarding until LF */
	bool nul;         /* line contains a NUL */
	bool complete;    /* last feed returned a finished line: reset on next feed */
};
/* `max` >= 3.  The line ends at LF; one CR before it is removed, so
 * commands ending in bare LF are accepted. */
void smtp_line_init(struct smtp_line_reader *r, size_t max);
void smtp_line_free(struct smtp_line_reader *r);
/* Forgets any partial line (after STARTTLS, or to change `max`). */
void smtp_line_reset(struct smtp_line_reader *r, size_t max);
/* Consumes bytes up to and including the first LF, or all of them.
 * Returns the number consumed and sets *st.  After READY/TOO_LONG/NUL the
 * next call starts a new line. */
size_t smtp_line_feed(struct smtp_line_reader *r, const char *data, size_t len,
		      enum smtp_line_status *st);

/* ---- verbs ------------------------------------------------------------- */
enum smtp_verb {
	SMTP_V_UNKNOWN = 0,
	SMTP_V_HELO, SMTP_V_EHLO, SMTP_V_MAIL, SMTP_V_RCPT, SMTP_V_DATA, SMTP_V_BDAT,
	SMTP_V_RSET, SMTP_V_NOOP, SMTP_V_QUIT, SMTP_V_HELP, SMTP_V_VRFY, SMTP_V_EXPN,
	SMTP_V_STARTTLS, SMTP_V_AUTH,
	SMTP_V_EMPTY,  /* blank line */
};
struct smtp_cmd {
	enum smtp_verb verb;
	const char *arg;  /* after the verb and its spaces, trailing blanks removed; never NULL */
	size_t arg_len;
};
/* `line` must be NUL-terminated at line[len] (as struct buf is); the
 * argument points into it and is NUL-terminated in place. */
void smtp_cmd_parse(char *line, size_t len, struct smtp_cmd *cmd);
const char *smtp_verb_name(enum smtp_verb v);

/* ---- MAIL FROM / RCPT TO ----------------------------------------------- */
#define SMTP_LOCAL_MAX 64   /* octets of the local part as sent (RFC 5321 4.5.3.1.1) */
#define SMTP_DOMAIN_MAX 255 /* octets of the domain (4.5.3.1.2) */
#define SMTP_PATH_MAX 256   /* octets of the path, "<" and ">" included (4.5.3.1.3) */

enum smtp_perr {
	SMTP_PE_OK = 0,
	SMTP_PE_SYNTAX,          /* not "FROM:<...>" / "TO:<...>"        501 5.5.4 */
	SMTP_PE_BAD_ADDRESS,     /* path grammar violated                 501 5.1.7 / 5.1.3 */
	SMTP_PE_TOO_LONG,        /* local part, domain or path too long   501 5.1.7 / 5.1.3 */
	SMTP_PE_UNQUALIFIED,     /* no domain (other than <postmaster>)   501 5.1.7 / 5.1.3 */
	SMTP_PE_NULL_RCPT,       /* RCPT TO:<>                            501 5.1.3 */
	SMTP_PE_UTF8_REQUIRED,   /* non-ASCII address without SMTPUTF8    553 5.6.7 */
	SMTP_PE_BAD_PARAM,       /* malformed or repeated parameter       501 5.5.4 */
	SMTP_PE_UNSUPPORTED_PARAM, /* unknown keyword or value            555 5.5.4 */
	SMTP_PE__COUNT
};
struct smtp_reply_code {
	int code;
	const char *enh;
	const char *text;
};
/* The reply for a parse error (rcpt selects the RCPT wording). */
const struct smtp_reply_code *smtp_perr_reply(enum smtp_perr e, bool rcpt);

struct smtp_path {
	bool null;            /* "<>" (MAIL only) */
	bool postmaster;      /* "<postmaster>" without a domain (RCPT only); addr = "postmaster" */
	bool domain_literal;  /* domain is [1.2.3.4] or [IPv6:...]: never local */
	bool utf8;            /* contains non-ASCII (valid UTF-8) octets */
	size_t local_len;     /* bytes of addr before the '@' */
	/* Canonical address without <> and source route: a quoted local part
	 * whose content is a dot-atom is unquoted, other quoted local parts are
	 * re-quoted minimally.  Original case.  "" for the null path. */
	char addr[SMTP_PATH_MAX + 1];
};

enum smtp_body { SMTP_BODY_NONE = 0, SMTP_BODY_7BIT, SMTP_BODY_8BITMIME };
struct smtp_mail_params {
	bool size_given;
	uint64_t size;        /* UINT64_MAX when the number does not fit */
	enum smtp_body body;
	bool smtputf8;
	bool auth_given;      /* AUTH=<xtext> (RFC 4954 5): accepted and ignored; submission only */
};

/* `arg` is the MAIL command's argument ("FROM:<a@b> SIZE=10").  Params are
 * only accepted when `esmtp` (the client said EHLO). */
enum smtp_perr smtp_parse_mail(const char *arg, bool esmtp, struct smtp_path *path,
			       struct smtp_mail_params *params);
/* `arg` is RCPT's argument ("TO:<a@b>"); `smtputf8` from the transaction. */
enum smtp_perr smtp_parse_rcpt(const char *arg, bool smtputf8, struct smtp_path *path);

/* ---- BDAT -------------------------------------------------------------- */
/* "<size> [LAST]".  False on any other syntax (the caller must then close:
 * the chunk length is unknown). */
bool smtp_parse_bdat(const char *arg, uint64_t *size, bool *last);

/* True if s[0..len) is well-formed UTF-8 (no overlongs, surrogates or
 * code points above U+10FFFF). */
bool smtp_utf8_valid(const char *s, size_t len);

#endif
