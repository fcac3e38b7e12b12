/*
 * imap_parser.h - private to src/imap: IMAP4rev1 command framing and
 * argument parsing (RFC 3501 section 9, LITERAL+ of RFC 7888), and sequence
 * sets.
 *
 * Two layers:
 *  - struct imap_reader assembles one command from the byte stream: line
 *    text and the literals it announces ({n} synchronising, {n+} not;
 *    "~{n}" literal8 of RFC 3516 the same way, the "~" being text).  It
 *    can be fed any split of the input, down to one byte at a time, with the
 *    same result.  A literal is announced to the caller (IMAP_RD_LITERAL),
 *    which decides to keep it in memory, stream it out (APPEND) or refuse
 *    it.  The command's text (all segments together), its in-memory
 *    literals and its number of literals are bounded; over-long input is
 *    discarded up to the end of the command (resynchronisation) and then
 *    reported once.
 *  - imap_parse_command() turns an assembled command into a tag, a command
 *    name and a tree of arguments, with a nesting depth limit.
 *
 * Memory: the reader's buffer never exceeds max_line + max_literal bytes
 * per command; arguments are copies freed by imap_cmd_free().
 * Threads: no shared state; one reader per session.
 */
#ifndef STRATA_IMAP_PARSER_H
#define STRATA_IMAP_PARSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"

#define IMAP_TAG_MAX 64          /* longest tag we echo */
#define IMAP_MAX_DEPTH 16        /* parenthesis / bracket nesting */
#define IMAP_MAX_ARGS 4096       /* arguments in one command, all levels */
#define IMAP_LITERAL_DIGITS 20   /* "{" digits beyond this are refused */
#define IMAP_MAX_LITERALS 64     /* literals in one command */

/* ---- reader ------------------------------------------------------------- */

enum imap_rd_event {
	IMAP_RD_NEED_MORE = 0,  /* all input consumed, command not complete */
	IMAP_RD_COMMAND,        /* a command is complete in r->buf (r->len bytes) */
	IMAP_RD_LITERAL,        /* a literal was announced: call imap_reader_literal() */
	IMAP_RD_STREAM,         /* streamed literal bytes in data_r, len_r; the
				 * literal is complete when r->lit_left is 0 */
	IMAP_RD_TOO_LONG,       /* a command was discarded: line or literal over the limit */
	IMAP_RD_REFUSED,        /* a command whose literal was refused has ended */
};

enum imap_lit_mode {
	IMAP_LIT_MEMORY,        /* keep it in the command buffer */
	IMAP_LIT_STREAM,        /* hand it out as IMAP_RD_STREAM events */
	IMAP_LIT_REFUSE,        /* end the command: sync literals are never sent,
				 * non-sync ones are read and dropped */
};

enum imap_rd_state {
	RD_LINE = 0, RD_LIT_PENDING, RD_LIT_MEMORY, RD_LIT_STREAM, RD_LIT_DISCARD, RD_DISCARD_LINE,
};
#define IMAP_RD_TAIL 32          /* bytes of a discarded line kept to spot "{n+}" */

struct imap_reader {
	struct buf buf;          /* command so far: text and in-memory literals */
	size_t len;              /* == buf.len; kept for readers of the header */
	size_t max_line;         /* bytes of text in one command */
	size_t max_literal;      /* in-memory literal bytes per command */
	enum imap_rd_state state;
	size_t seg_start;        /* where the current text segment began */
	size_t text_bytes;       /* text of the whole command (all segments) */
	unsigned n_literals;     /* literals announced in this command */
	size_t literal_bytes;    /* in-memory literal bytes in this command */
	uint64_t lit_left;       /* bytes of the current literal still to come */
	/* set with IMAP_RD_LITERAL: */
	uint64_t lit_size;
	bool lit_sync;           /* the client waits for "+" */
	bool lit_refused;        /* the command ends as IMAP_RD_REFUSED */
	bool streamed;           /* the command had streamed literals ... */
	size_t stream_at;        /* ... the last one announced by buf[0, stream_at) */
	char tail[IMAP_RD_TAIL]; /* end of the line being discarded */
	size_t tail_len;
	char tag[IMAP_TAG_MAX + 1]; /* of a discarded or refused command, "*" if none */
};

void imap_reader_init(struct imap_reader *r, size_t max_line, size_t max_literal);
void imap_reader_free(struct imap_reader *r);
/* Forgets any partial command (STARTTLS, after IMAP_RD_COMMAND). */
void imap_reader_reset(struct imap_reader *r);
/*
 * Consumes input up to the next event.  Returns the bytes consumed; the
 * event in *ev.  For IMAP_RD_STREAM, *data_r and *len_r give the bytes (inside
 * `data`).  After IMAP_RD_COMMAND the caller parses r->buf and then calls
 * imap_reader_reset(); after IMAP_RD_TOO_LONG and IMAP_RD_REFUSED the
 * reader has already reset itself (r->tag names the command).
 */
size_t imap_reader_feed(struct imap_reader *r, const char *data, size_t len, enum imap_rd_event *ev,
			const char **data_r, size_t *len_r);
/* Answers IMAP_RD_LITERAL.  IMAP_LIT_MEMORY of a literal over the remaining
 * in-memory budget is treated as IMAP_LIT_REFUSE.  Returns true when the
 * command ended right here (a refused synchronising literal: the client
 * sends nothing more for it); r->tag names it and the reader is reset.
 * A refused non-synchronising literal is read and dropped, and the command
 * ends later with IMAP_RD_REFUSED.  After IMAP_LIT_STREAM the command text
 * so far is buf[0, stream_at): it ends with the "{n}" announcement. */
bool imap_reader_literal(struct imap_reader *r, enum imap_lit_mode mode);
/* The tag of the command being read, into r->tag ("*" if not parseable). */
void imap_reader_take_tag(struct imap_reader *r);

/* ---- arguments --------------------------------------------------------- */

enum imap_arg_type {
	IMAP_ARG_ATOM,           /* includes NIL and bracketed atoms like BODY[...] */
	IMAP_ARG_QUOTED,
	IMAP_ARG_LITERAL,
	IMAP_ARG_LIST,
};

struct imap_arg {
	enum imap_arg_type type;
	char *str;               /* NUL-terminated copy (atom, quoted, literal) */
	size_t len;              /* its length (a literal may contain NUL) */
	bool literal8;           /* IMAP_ARG_LITERAL sent as "~{n}" (RFC 3516) */
	struct imap_arg *list;   /* IMAP_ARG_LIST children */
	size_t n;
};

struct imap_cmd {
	char tag[IMAP_TAG_MAX + 1];
	char name[32];           /* upper-cased command name */
	bool uid;                /* "UID <name>": name is the sub-command */
	struct imap_arg *args;   /* top-level arguments */
	size_t n_args;
	size_t total_args;       /* all levels */
};

/*
 * Parses one assembled command (r->buf).  `stream_tail` says that the
 * command had streamed literals (APPEND, MULTIAPPEND): a "{n}" or "~{n}"
 * announcement not followed by CRLF (its bytes were streamed out, so the
 * text goes on right after it, or ends) becomes an IMAP_ARG_LITERAL with
 * str NULL and len n.  The caller checks that their number matches what
 * was streamed.
 * ST_OK: *cmd filled (free with imap_cmd_free).  ST_INVALID: *error_r is
 * the text for a BAD reply, and cmd->tag is set when the tag was valid.
 */
enum status imap_parse_command(const char *data, size_t len, bool stream_tail, struct imap_cmd *cmd,
			       char **error_r);
void imap_cmd_free(struct imap_cmd *cmd);

/* True for an atom argument equal (case-insensitively) to `word`. */
bool imap_arg_is_atom(const struct imap_arg *a, const char *word);
/* True for an astring (atom, quoted or literal) or an nstring. */
bool imap_arg_is_string(const struct imap_arg *a);

/* ---- sequence sets ------------------------------------------------------- */

/* "*" is stored as 0 and resolved against the largest number in use. */
struct imap_range { uint32_t lo, hi; };
struct imap_seqset {
	struct imap_range *r;
	size_t n;
};
#define IMAP_SEQSET_MAX_RANGES 10000
/* Parses "1,3:5,7:*".  Numbers are 1..4294967295; ST_INVALID otherwise or
 * for more than IMAP_SEQSET_MAX_RANGES ranges or "$" (no SEARCHRES). */
enum status imap_seqset_parse(const char *s, struct imap_seqset *out);
/* True if n is in the set, with "*" meaning `max` (ranges are inclusive and
 * either way round, RFC 3501 9 "seq-range"). */
bool imap_seqset_contains(const struct imap_seqset *set, uint32_t n, uint32_t max);
void imap_seqset_free(struct imap_seqset *set);

#endif
