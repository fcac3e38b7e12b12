/*
 * pop3_parser.h - POP3 command lines (RFC 1939, RFC 2449, RFC 5034):
 * the line reader and the command parser, free of I/O so that they can be
 * fed one byte at a time or in one piece and tested alone.
 *
 * Line reader: collects one line up to its LF (a CR before the LF is
 * dropped) into a fixed buffer.  A line longer than the reader's limit is
 * discarded up to its LF and reported once as POP3_RD_TOO_LONG, so the
 * session resynchronises on the next line; memory never grows with input.
 *
 * Command parser: a keyword of 1-4 letters (case-insensitive, returned in
 * upper case) followed by arguments separated by single spaces.  The raw
 * rest of the line after the keyword's space is kept too, because PASS
 * takes the whole rest as the password (RFC 1939 section 7): for PASS the
 * rest is not split, and args[0] is the rest (n_args 0 when it is empty).
 *
 * Threads: any; no shared state.
 */
#ifndef STRATA_POP3_PARSER_H
#define STRATA_POP3_PARSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"

#define POP3_LINE_MAX 512        /* command line, CRLF excluded (RFC 2449: 255) */
#define POP3_SASL_LINE_MAX 2048  /* AUTH lines and SASL responses */
#define POP3_ARG_MAX 4           /* arguments kept per command */

enum pop3_rd_event {
	POP3_RD_NEED_MORE = 0,  /* every byte given was consumed */
	POP3_RD_LINE,           /* r->line[0, r->len) is a complete line, NUL-terminated */
	POP3_RD_TOO_LONG,       /* an over-long line ended (its bytes are gone) */
};

struct pop3_reader {
	char line[POP3_SASL_LINE_MAX + 1];
	size_t len;
	size_t max;             /* <= POP3_SASL_LINE_MAX */
	bool overflow;          /* discarding the rest of an over-long line */
	bool done;              /* a line was returned: reset before feeding */
};

void pop3_reader_init(struct pop3_reader *r, size_t max);
/* Starts the next line (after an event other than NEED_MORE). */
void pop3_reader_reset(struct pop3_reader *r);
/* Consumes bytes of `data` up to the end of one line at most; returns how
 * many were used and sets *ev.  A line holding a NUL byte is reported as
 * is (len counts it): the command parser refuses it. */
size_t pop3_reader_feed(struct pop3_reader *r, const char *data, size_t len, enum pop3_rd_event *ev);

struct pop3_cmd {
	char name[5];                   /* upper case */
	size_t n_args;
	const char *args[POP3_ARG_MAX]; /* NUL-terminated copies in `store` */
	const char *rest;               /* text after "NAME ", or "" */
	char store[POP3_SASL_LINE_MAX + 1];
	char rest_store[POP3_SASL_LINE_MAX + 1];
};

/* Parses one line (without CRLF).  ST_INVALID with a static message in
 * *error_r for an empty line, a NUL byte, a bad keyword, empty arguments
 * (two spaces, trailing space) or more than POP3_ARG_MAX arguments. */
enum status pop3_parse_command(const char *line, size_t len, struct pop3_cmd *cmd, const char **error_r);

/* A message number or line count: decimal digits only, no sign, at most
 * 10 digits, value <= UINT32_MAX.  False otherwise. */
bool pop3_parse_number(const char *s, uint32_t *n_r);

#endif
