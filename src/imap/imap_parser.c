/*
 * imap_parser.c - IMAP command framing (struct imap_reader), argument
 * parsing (imap_parse_command) and sequence sets.
 *
 * Contract: see imap_parser.h.  Invariants kept here:
 *  - The reader stores at most max_line bytes of text and max_literal
 *    bytes of in-memory literal per command, and accepts at most
 *    IMAP_MAX_LITERALS literals in it; anything more is dropped, never
 *    stored.  Resync happens
 *    at the end of the command: the LF that is not followed by a literal.
 *  - A refused synchronising literal ends the command at once (the client
 *    must not send it before "+"); a refused non-synchronising literal is
 *    read and dropped (RFC 7888 section 4) - the caller hangs up instead
 *    when it is absurdly large.
 *  - The argument parser is a recursive descent whose depth is bounded by
 *    IMAP_MAX_DEPTH and whose total output by IMAP_MAX_ARGS, so hostile
 *    nesting or argument floods yield BAD, not a stack overflow.
 *
 * Threads: none shared; pure functions over the caller's data.
 */
#include "imap_parser.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

/* ---- reader ------------------------------------------------------------- */

void imap_reader_init(struct imap_reader *r, size_t max_line, size_t max_literal)
{
	memset(r, 0, sizeof(*r));
	r->max_line = max_line;
	r->max_literal = max_literal;
	r->state = RD_LINE;
}

void imap_reader_free(struct imap_reader *r)
{
	buf_free(&r->buf);
	r->len = 0;
}

void imap_reader_reset(struct imap_reader *r)
{
	/* Drop a large buffer (a big literal) instead of keeping it per idle session. */
	if (r->buf.cap > 4096)
		buf_free(&r->buf);
	else
		buf_reset(&r->buf);
	r->len = 0;
	r->state = RD_LINE;
	r->seg_start = 0;
	r->text_bytes = 0;
	r->n_literals = 0;
	r->literal_bytes = 0;
	r->lit_left = 0;
	r->lit_size = 0;
	r->lit_sync = false;
	r->lit_refused = false;
	r->streamed = false;
	r->stream_at = 0;
	r->tail_len = 0;
}

static bool is_tag_char(unsigned char c)
{
	return c > 0x20 && c < 0x7f && c != '(' && c != ')' && c != '{' && c != '%' && c != '*' &&
	       c != '"' && c != '\\' && c != '+';
}

static void take_tag(const char *data, size_t len, char tag[IMAP_TAG_MAX + 1])
{
	size_t n = 0;
	while (n < len && n <= IMAP_TAG_MAX && is_tag_char((unsigned char)data[n]))
		n++;
	if (n == 0 || n > IMAP_TAG_MAX || (n < len && data[n] != ' ')) {
		strcpy(tag, "*");
		return;
	}
	memcpy(tag, data, n);
	tag[n] = '\0';
}

void imap_reader_take_tag(struct imap_reader *r)
{
	take_tag(r->buf.data ? r->buf.data : "", r->buf.len, r->tag);
}

/*
 * If text[0, len) ends with "{digits}" or "{digits+}", returns true with
 * the size (UINT64_MAX when it does not fit) and whether it is synchronising.
 */
static bool literal_announced(const char *text, size_t len, uint64_t *size, bool *sync)
{
	if (len < 3 || text[len - 1] != '}')
		return false;
	size_t end = len - 1;
	*sync = true;
	if (text[end - 1] == '+') {
		*sync = false;
		end--;
	}
	size_t start = end;
	while (start > 0 && isdigit((unsigned char)text[start - 1]) && end - start <= IMAP_LITERAL_DIGITS)
		start--;
	if (start == end || start == 0 || text[start - 1] != '{')
		return false;
	uint64_t v = 0;
	for (size_t i = start; i < end; i++) {
		unsigned d = (unsigned)(text[i] - '0');
		if (v > (UINT64_MAX - d) / 10) {
			v = UINT64_MAX;
			break;
		}
		v = v * 10 + d;
	}
	*size = v;
	return true;
}

/* Keeps the last IMAP_RD_TAIL bytes of a line being discarded. */
static void tail_push(struct imap_reader *r, char c)
{
	if (r->tail_len == IMAP_RD_TAIL) {
		memmove(r->tail, r->tail + 1, IMAP_RD_TAIL - 1);
		r->tail_len--;
	}
	r->tail[r->tail_len++] = c;
}

/* Starts discarding the rest of the command; the tag is taken first. */
static void start_discard(struct imap_reader *r)
{
	imap_reader_take_tag(r);
	r->state = RD_DISCARD_LINE;
	r->tail_len = 0;
}

/* Ends a discarded command: the reader is reset, r->tag kept. */
static enum imap_rd_event end_discard(struct imap_reader *r)
{
	bool refused = r->lit_refused;
	char tag[IMAP_TAG_MAX + 1];
	memcpy(tag, r->tag, sizeof(tag));
	imap_reader_reset(r);
	memcpy(r->tag, tag, sizeof(tag));
	return refused ? IMAP_RD_REFUSED : IMAP_RD_TOO_LONG;
}

/* LF while discarding: the command ends unless a non-sync literal follows. */
static enum imap_rd_event discard_line_end(struct imap_reader *r)
{
	size_t n = r->tail_len;
	if (n > 0 && r->tail[n - 1] == '\r')
		n--;
	uint64_t size;
	bool sync;
	if (literal_announced(r->tail, n, &size, &sync) && !sync) {
		r->lit_left = size;
		r->tail_len = 0;
		r->state = RD_LIT_DISCARD;
		return IMAP_RD_NEED_MORE;
	}
	return end_discard(r);
}

/* LF in RD_LINE: the command ends, or a literal follows. */
static enum imap_rd_event line_end(struct imap_reader *r)
{
	if (r->buf.len > r->seg_start && r->buf.data[r->buf.len - 1] == '\r')
		buf_truncate(&r->buf, r->buf.len - 1);
	const char *seg = r->buf.data ? r->buf.data + r->seg_start : "";
	uint64_t size;
	bool sync;
	if (literal_announced(seg, r->buf.len - r->seg_start, &size, &sync)) {
		if (++r->n_literals > IMAP_MAX_LITERALS) {
			/* Too many: discard as for an over-long line, from the
			 * announcement on (a non-sync literal is skipped). */
			size_t n = r->buf.len - r->seg_start;
			size_t keep = n < IMAP_RD_TAIL ? n : IMAP_RD_TAIL;
			imap_reader_take_tag(r);
			memcpy(r->tail, seg + n - keep, keep);
			r->tail_len = keep;
			r->state = RD_DISCARD_LINE;
			return discard_line_end(r);
		}
		r->lit_size = size;
		r->lit_sync = sync;
		r->state = RD_LIT_PENDING;
		r->len = r->buf.len;
		return IMAP_RD_LITERAL;
	}
	r->len = r->buf.len;
	if (r->buf.data == NULL)
		buf_reserve(&r->buf, 1);   /* an empty line is a command too (BAD) */
	return IMAP_RD_COMMAND;
}

bool imap_reader_literal(struct imap_reader *r, enum imap_lit_mode mode)
{
	if (r->state != RD_LIT_PENDING)
		panic("imap_reader_literal without a pending literal");
	if (mode == IMAP_LIT_MEMORY &&
	    (r->lit_size > r->max_literal || r->literal_bytes + r->lit_size > r->max_literal))
		mode = IMAP_LIT_REFUSE;
	r->lit_left = r->lit_size;
	switch (mode) {
	case IMAP_LIT_MEMORY:
		buf_append(&r->buf, "\r\n", 2);
		r->literal_bytes += (size_t)r->lit_size;
		r->state = RD_LIT_MEMORY;
		break;
	case IMAP_LIT_STREAM:
		r->streamed = true;
		r->stream_at = r->buf.len;
		r->state = RD_LIT_STREAM;
		break;
	case IMAP_LIT_REFUSE:
		imap_reader_take_tag(r);
		r->lit_refused = true;
		if (r->lit_sync) {
			end_discard(r);
			return true;
		}
		r->state = RD_LIT_DISCARD;
		break;
	}
	if (r->lit_left == 0 && r->state != RD_LIT_DISCARD && r->state != RD_LIT_STREAM) {
		r->state = RD_LINE;
		r->seg_start = r->buf.len;
	}
	return false;
}

static size_t feed_discard_line(struct imap_reader *r, const char *data, size_t len,
				enum imap_rd_event *ev)
{
	const char *lf = memchr(data, '\n', len);
	size_t take = lf ? (size_t)(lf - data) : len;
	size_t from = take > IMAP_RD_TAIL ? take - IMAP_RD_TAIL : 0;
	for (size_t i = from; i < take; i++)
		tail_push(r, data[i]);
	if (lf == NULL)
		return take;
	*ev = discard_line_end(r);
	return take + 1;
}

/* Text bytes: up to LF, or until the segment is too long. */
static size_t feed_line(struct imap_reader *r, const char *data, size_t len, enum imap_rd_event *ev)
{
	const char *lf = memchr(data, '\n', len);
	size_t take = lf ? (size_t)(lf - data) : len;
	size_t room = r->max_line - r->text_bytes;
	if (take > room) {
		buf_append(&r->buf, data, room);
		r->text_bytes += room;
		start_discard(r);
		return room + feed_discard_line(r, data + room, len - room, ev);
	}
	buf_append(&r->buf, data, take);
	r->text_bytes += take;
	if (lf == NULL)
		return take;
	*ev = line_end(r);
	return take + 1;
}

static size_t feed_step(struct imap_reader *r, const char *data, size_t len, enum imap_rd_event *ev,
			const char **data_r, size_t *len_r)
{
	*ev = IMAP_RD_NEED_MORE;
	size_t n;
	switch (r->state) {
	case RD_LINE:
		return feed_line(r, data, len, ev);
	case RD_LIT_PENDING:
		panic("imap_reader_feed with a literal not answered");
	case RD_LIT_MEMORY:
		n = len < r->lit_left ? len : (size_t)r->lit_left;
		buf_append(&r->buf, data, n);
		r->lit_left -= n;
		if (r->lit_left == 0) {
			r->state = RD_LINE;
			r->seg_start = r->buf.len;
		}
		return n;
	case RD_LIT_STREAM:
		n = len < r->lit_left ? len : (size_t)r->lit_left;
		r->lit_left -= n;
		*data_r = data;
		*len_r = n;
		*ev = IMAP_RD_STREAM;
		if (r->lit_left == 0) {
			r->state = RD_LINE;
			r->seg_start = r->buf.len;
		}
		return n;
	case RD_LIT_DISCARD:
		n = len < r->lit_left ? len : (size_t)r->lit_left;
		r->lit_left -= n;
		if (r->lit_left == 0) {
			r->state = RD_DISCARD_LINE;
			r->tail_len = 0;
		}
		return n;
	case RD_DISCARD_LINE:
		return feed_discard_line(r, data, len, ev);
	}
	panic("imap reader: bad state %d", (int)r->state);
}

size_t imap_reader_feed(struct imap_reader *r, const char *data, size_t len, enum imap_rd_event *ev,
			const char **data_r, size_t *len_r)
{
	/* A step may only change state (an empty literal ends): repeat so
	 * that input is never left unconsumed without an event.  At most
	 * three state changes can happen without consuming a byte. */
	size_t used = 0;
	for (int i = 0; i < 4; i++) {
		used = feed_step(r, data, len, ev, data_r, len_r);
		if (used > 0 || *ev != IMAP_RD_NEED_MORE || len == 0)
			break;
	}
	return used;
}

/* ---- arguments ------------------------------------------------------------ */

struct parser {
	const char *p, *end;
	bool stream_tail;
	size_t total;
	const char *error;
};

static void arg_free(struct imap_arg *a)
{
	free(a->str);
	for (size_t i = 0; i < a->n; i++)
		arg_free(&a->list[i]);
	free(a->list);
}

static void args_free(struct imap_arg *args, size_t n)
{
	for (size_t i = 0; i < n; i++)
		arg_free(&args[i]);
	free(args);
}

void imap_cmd_free(struct imap_cmd *cmd)
{
	args_free(cmd->args, cmd->n_args);
	cmd->args = NULL;
	cmd->n_args = 0;
}

static bool is_atom_char(unsigned char c)
{
	return c > 0x20 && c != 0x7f && c != '(' && c != ')' && c != '"';
}

static bool parse_quoted(struct parser *ps, struct imap_arg *a)
{
	struct buf b = BUF_INIT;
	ps->p++; /* opening quote */
	while (ps->p < ps->end && *ps->p != '"') {
		unsigned char c = (unsigned char)*ps->p;
		if (c == '\\') {
			if (ps->p + 1 >= ps->end || (ps->p[1] != '"' && ps->p[1] != '\\')) {
				ps->error = "Bad escape in quoted string";
				buf_free(&b);
				return false;
			}
			ps->p++;
			c = (unsigned char)*ps->p;
		} else if (c == '\r' || c == '\n' || c == '\0') {
			ps->error = "Control character in quoted string";
			buf_free(&b);
			return false;
		}
		buf_append_char(&b, (char)c);
		ps->p++;
	}
	if (ps->p >= ps->end) {
		ps->error = "Unterminated quoted string";
		buf_free(&b);
		return false;
	}
	ps->p++;
	a->type = IMAP_ARG_QUOTED;
	a->len = b.len;
	a->str = b.data ? buf_steal(&b) : xstrdup("");
	return true;
}

/* "{n}" or, with `literal8`, "~{n}" (RFC 3516) at ps->p.  With
 * stream_tail, a top-level announcement not followed by CRLF is a streamed
 * literal (its bytes went to APPEND's file, never into the buffer). */
static bool parse_literal(struct parser *ps, struct imap_arg *a, bool literal8, unsigned depth)
{
	if (literal8)
		ps->p++;
	const char *q = ps->p + 1;
	uint64_t n = 0;
	size_t digits = 0;
	while (q < ps->end && isdigit((unsigned char)*q) && digits < IMAP_LITERAL_DIGITS) {
		n = n * 10 + (uint64_t)(*q - '0');
		q++;
		digits++;
	}
	if (q < ps->end && *q == '+')
		q++;
	if (digits == 0 || digits >= IMAP_LITERAL_DIGITS || q >= ps->end || *q != '}') {
		ps->error = "Bad literal";
		return false;
	}
	q++;
	a->type = IMAP_ARG_LITERAL;
	a->literal8 = literal8;
	if (ps->stream_tail && depth == 0 && (q == ps->end || *q != '\r')) {
		a->str = NULL;
		a->len = (size_t)n;
		ps->p = q;
		return true;
	}
	if ((size_t)(ps->end - q) < 2 || q[0] != '\r' || q[1] != '\n') {
		ps->error = "Literal announcement must end the line";
		return false;
	}
	q += 2;
	if ((uint64_t)(ps->end - q) < n) {
		ps->error = "Literal shorter than announced";
		return false;
	}
	a->str = xmalloc((size_t)n + 1);   /* not strndup: a literal may hold NUL */
	memcpy(a->str, q, (size_t)n);
	a->str[n] = '\0';
	a->len = (size_t)n;
	ps->p = q + n;
	return true;
}

/* An atom; inside "[...]" spaces and parentheses belong to it (BODY[...]). */
static bool parse_atom(struct parser *ps, struct imap_arg *a)
{
	const char *start = ps->p;
	unsigned brackets = 0;
	while (ps->p < ps->end) {
		unsigned char c = (unsigned char)*ps->p;
		if (c == '[') {
			if (++brackets > IMAP_MAX_DEPTH) {
				ps->error = "Too deeply nested";
				return false;
			}
		} else if (c == ']' && brackets > 0) {
			brackets--;
		} else if (brackets > 0) {
			if (c < 0x20 || c == 0x7f) {
				ps->error = "Control character in argument";
				return false;
			}
		} else if (!is_atom_char(c)) {
			break;
		}
		ps->p++;
	}
	if (brackets > 0) {
		ps->error = "Unbalanced [";
		return false;
	}
	if (ps->p == start) {
		ps->error = *ps->p == ')' ? "Unexpected )" : "Invalid character in argument";
		return false;
	}
	a->type = IMAP_ARG_ATOM;
	a->len = (size_t)(ps->p - start);
	a->str = xstrndup(start, a->len);
	return true;
}

static bool parse_list(struct parser *ps, unsigned depth, bool top, struct imap_arg **out, size_t *n_out);

static bool parse_one(struct parser *ps, unsigned depth, struct imap_arg *a)
{
	memset(a, 0, sizeof(*a));
	if (++ps->total > IMAP_MAX_ARGS) {
		ps->error = "Too many arguments";
		return false;
	}
	switch (*ps->p) {
	case '(':
		if (depth + 1 > IMAP_MAX_DEPTH) {
			ps->error = "Too deeply nested";
			return false;
		}
		ps->p++;
		a->type = IMAP_ARG_LIST;
		if (!parse_list(ps, depth + 1, false, &a->list, &a->n))
			return false;
		if (ps->p >= ps->end || *ps->p != ')') {
			ps->error = "Missing )";
			return false;
		}
		ps->p++;
		return true;
	case '"':
		return parse_quoted(ps, a);
	case '{':
		return parse_literal(ps, a, false, depth);
	case '~':
		if (ps->p + 1 < ps->end && ps->p[1] == '{')
			return parse_literal(ps, a, true, depth);
		return parse_atom(ps, a);
	default:
		return parse_atom(ps, a);
	}
}

/* Arguments separated by single spaces, up to ")" (lists) or the end. */
static bool parse_list(struct parser *ps, unsigned depth, bool top, struct imap_arg **out, size_t *n_out)
{
	struct imap_arg *args = NULL;
	size_t n = 0, cap = 0;
	bool ok = true;
	while (ps->p < ps->end) {
		if (*ps->p == ')') {
			if (top) {
				ps->error = "Unexpected )";
				ok = false;
			}
			break;
		}
		if (n > 0) {
			if (*ps->p != ' ') {
				ps->error = "Missing space between arguments";
				ok = false;
				break;
			}
			ps->p++;
			if (ps->p >= ps->end || *ps->p == ')' || *ps->p == ' ') {
				ps->error = "Unexpected space";
				ok = false;
				break;
			}
		}
		if (n == cap) {
			cap = cap ? cap * 2 : 4;
			args = xreallocarray(args, cap, sizeof(*args));
		}
		if (!parse_one(ps, depth, &args[n])) {
			arg_free(&args[n]);
			ok = false;
			break;
		}
		n++;
	}
	if (!ok) {
		args_free(args, n);
		return false;
	}
	*out = args;
	*n_out = n;
	return true;
}

/* The command name: letters only, upper-cased. */
static bool parse_name(struct parser *ps, char out[32])
{
	size_t n = 0;
	while (ps->p < ps->end && isalpha((unsigned char)*ps->p)) {
		if (n == 31) {
			ps->error = "Unknown command";
			return false;
		}
		out[n++] = (char)toupper((unsigned char)*ps->p);
		ps->p++;
	}
	out[n] = '\0';
	if (n == 0 || (ps->p < ps->end && *ps->p != ' ')) {
		ps->error = n == 0 ? "Missing command" : "Unknown command";
		return false;
	}
	return true;
}

enum status imap_parse_command(const char *data, size_t len, bool stream_tail, struct imap_cmd *cmd,
			       char **error_r)
{
	memset(cmd, 0, sizeof(*cmd));
	struct parser ps = { data, data + len, stream_tail, 0, NULL };
	take_tag(data, len, cmd->tag);
	if (strcmp(cmd->tag, "*") == 0) {
		*error_r = xstrdup(len == 0 ? "Empty command line" : "Invalid tag");
		return ST_INVALID;
	}
	ps.p += strlen(cmd->tag);
	if (ps.p >= ps.end) {
		*error_r = xstrdup("Missing command");
		return ST_INVALID;
	}
	ps.p++;
	if (!parse_name(&ps, cmd->name))
		goto fail;
	if (strcmp(cmd->name, "UID") == 0) {
		cmd->uid = true;
		if (ps.p >= ps.end) {
			ps.error = "Missing UID command";
			goto fail;
		}
		ps.p++;
		if (!parse_name(&ps, cmd->name))
			goto fail;
	}
	if (ps.p < ps.end) {
		ps.p++; /* the space after the name */
		if (ps.p >= ps.end) {
			ps.error = "Unexpected space";
			goto fail;
		}
		if (!parse_list(&ps, 0, true, &cmd->args, &cmd->n_args))
			goto fail;
	}
	if (ps.p != ps.end) {
		ps.error = "Unexpected )";
		imap_cmd_free(cmd);
		goto fail;
	}
	cmd->total_args = ps.total;
	return ST_OK;
fail:
	*error_r = xstrdup(ps.error ? ps.error : "Syntax error");
	return ST_INVALID;
}

bool imap_arg_is_atom(const struct imap_arg *a, const char *word)
{
	return a->type == IMAP_ARG_ATOM && str_ieq(a->str, word);
}

bool imap_arg_is_string(const struct imap_arg *a)
{
	return a->type != IMAP_ARG_LIST && a->str != NULL;
}

/* ---- sequence sets ---------------------------------------------------------- */

/* nz-number or "*" (0); advances *s. */
static bool seq_number(const char **s, uint32_t *out)
{
	const char *p = *s;
	if (*p == '*') {
		*out = 0;
		*s = p + 1;
		return true;
	}
	if (*p < '1' || *p > '9')
		return false;
	uint64_t v = 0;
	while (isdigit((unsigned char)*p)) {
		v = v * 10 + (uint64_t)(*p - '0');
		if (v > UINT32_MAX)
			return false;
		p++;
	}
	*out = (uint32_t)v;
	*s = p;
	return true;
}

enum status imap_seqset_parse(const char *s, struct imap_seqset *out)
{
	memset(out, 0, sizeof(*out));
	size_t cap = 0;
	for (;;) {
		struct imap_range rg;
		if (!seq_number(&s, &rg.lo))
			goto bad;
		rg.hi = rg.lo;
		if (*s == ':') {
			s++;
			if (!seq_number(&s, &rg.hi))
				goto bad;
		}
		if (out->n == IMAP_SEQSET_MAX_RANGES)
			goto bad;
		if (out->n == cap) {
			cap = cap ? cap * 2 : 4;
			out->r = xreallocarray(out->r, cap, sizeof(*out->r));
		}
		out->r[out->n++] = rg;
		if (*s == '\0')
			return ST_OK;
		if (*s != ',')
			goto bad;
		s++;
	}
bad:
	imap_seqset_free(out);
	return ST_INVALID;
}

bool imap_seqset_contains(const struct imap_seqset *set, uint32_t n, uint32_t max)
{
	for (size_t i = 0; i < set->n; i++) {
		uint32_t lo = set->r[i].lo ? set->r[i].lo : max;
		uint32_t hi = set->r[i].hi ? set->r[i].hi : max;
		if (lo > hi) {
			uint32_t t = lo;
			lo = hi;
			hi = t;
		}
		if (n >= lo && n <= hi)
			return true;
	}
	return false;
}

void imap_seqset_free(struct imap_seqset *set)
{
	free(set->r);
	set->r = NULL;
	set->n = 0;
}
