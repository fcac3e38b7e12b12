/*
 * mime_envelope.c - the IMAP ENVELOPE of a message (RFC 3501 7.4.2) and the
 * RFC 5322 address-list parser behind it, plus IMAP string output.
 *
 * The address parser is lenient in the way of Dovecot's: it accepts the
 * obsolete syntax (routes, missing commas, comments anywhere), never
 * fails, and gives each address as (name adl mailbox host):
 *   - name: the display name, quoted strings unquoted, words joined by one
 *     space, RFC 2047 encoded words left as they are; with no display name,
 *     the text of a comment after an addr-spec ("a@b (Name)");
 *   - adl: an obsolete source route "@x,@y" or NIL;
 *   - mailbox, host: local part and domain as written; a missing one is
 *     "MISSING_MAILBOX" / "MISSING_DOMAIN";
 *   - groups: (NIL NIL "name" NIL), the members, then (NIL NIL NIL NIL).
 *
 * Threads: no shared state.
 */
#include "mime_int.h"

#include <string.h>

#define ENV_MAX_ADDRESSES 1000    /* per header; the rest is dropped */

/* ---- IMAP strings -------------------------------------------------------------- */

void mime_write_nstring(struct buf *out, const char *s, size_t len)
{
	if (s == NULL) {
		buf_append_str(out, "NIL");
		return;
	}
	bool literal = len > 4096;
	for (size_t i = 0; i < len && !literal; i++) {
		unsigned char c = (unsigned char)s[i];
		literal = c >= 0x80 || c == '\r' || c == '\n' || c == '\0';
	}
	if (literal) {
		/* Our texts never hold NUL, CR or LF (mime_unfold), so the
		 * literal is a valid IMAP4rev1 literal. */
		buf_printf(out, "{%zu}\r\n", len);
		buf_append(out, s, len);
		return;
	}
	buf_append_char(out, '"');
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '"' || s[i] == '\\')
			buf_append_char(out, '\\');
		buf_append_char(out, s[i]);
	}
	buf_append_char(out, '"');
}

/* ---- address tokens ------------------------------------------------------------- */

struct alex {
	const char *p, *end;
	struct buf comment;       /* text of the last comment skipped */
};

static void skip_ws(struct alex *x, bool keep_comment)
{
	while (x->p < x->end) {
		char c = *x->p;
		if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
			x->p++;
			continue;
		}
		if (c != '(')
			break;
		if (keep_comment)
			buf_reset(&x->comment);
		int depth = 0;
		while (x->p < x->end) {
			char d = *x->p++;
			if (d == '\\' && x->p < x->end) {
				if (keep_comment && depth == 1)
					buf_append_char(&x->comment, *x->p);
				x->p++;
				continue;
			}
			if (d == '(' && depth++ == 0)
				continue;
			if (d == ')' && --depth == 0)
				break;
			if (keep_comment && depth >= 1)
				buf_append_char(&x->comment, d);
		}
	}
}

static bool is_special(char c)
{
	return strchr("()<>[]:;@\\,.\"", c) != NULL;
}

/* An atom or a quoted string.  raw: keep the quotes (local parts). */
static bool read_word(struct alex *x, struct buf *out, bool raw)
{
	if (x->p >= x->end)
		return false;
	if (*x->p == '"') {
		if (raw)
			buf_append_char(out, '"');
		x->p++;
		while (x->p < x->end && *x->p != '"') {
			char c = *x->p++;
			if (c == '\\' && x->p < x->end) {
				if (raw)
					buf_append_char(out, '\\');
				c = *x->p++;
			}
			buf_append_char(out, c);
		}
		if (x->p < x->end)
			x->p++;
		if (raw)
			buf_append_char(out, '"');
		return true;
	}
	const char *s = x->p;
	while (x->p < x->end && !is_special(*x->p) && *x->p != ' ' && *x->p != '\t' && *x->p != '\r' &&
	       *x->p != '\n')
		x->p++;
	buf_append(out, s, (size_t)(x->p - s));
	return x->p > s;
}

/* A dot-separated sequence of words (local part or domain), without CFWS. */
static void read_dotted(struct alex *x, struct buf *out, bool raw)
{
	/* Bounded: each pass consumes a word or a dot, or stops. */
	for (;;) {
		skip_ws(x, false);
		if (x->p < x->end && *x->p == '[') {
			const char *s = x->p;
			const char *rb = memchr(s, ']', (size_t)(x->end - s));
			x->p = rb ? rb + 1 : x->end;
			buf_append(out, s, (size_t)(x->p - s));
		} else if (!read_word(x, out, raw)) {
			return;
		}
		/* Look past white space for a dot; leave a trailing comment
		 * for the caller (it may be the display name). */
		const char *save = x->p;
		skip_ws(x, false);
		if (x->p >= x->end || *x->p != '.') {
			x->p = save;
			return;
		}
		buf_append_char(out, '.');
		x->p++;
	}
}

/* ---- address output ---------------------------------------------------------------- */

struct env_out {
	struct buf *out;
	size_t n;
};

static void put_str(struct buf *out, const struct buf *b)
{
	mime_write_nstring(out, b->len ? b->data : NULL, b->len);
}

static void emit_address(struct env_out *e, const struct buf *name, const struct buf *route, const struct buf *local,
			 const struct buf *domain)
{
	if (e->n >= ENV_MAX_ADDRESSES)
		return;
	if (e->n++ == 0)
		buf_append_char(e->out, '(');
	buf_append_char(e->out, '(');
	put_str(e->out, name);
	buf_append_char(e->out, ' ');
	put_str(e->out, route);
	buf_append_char(e->out, ' ');
	if (local->len)
		mime_write_nstring(e->out, local->data, local->len);
	else
		buf_append_str(e->out, "\"MISSING_MAILBOX\"");
	buf_append_char(e->out, ' ');
	if (domain->len)
		mime_write_nstring(e->out, domain->data, domain->len);
	else
		buf_append_str(e->out, "\"MISSING_DOMAIN\"");
	buf_append_char(e->out, ')');
}

static void emit_group(struct env_out *e, const struct buf *name, bool start)
{
	if (e->n >= ENV_MAX_ADDRESSES)
		return;
	if (e->n++ == 0)
		buf_append_char(e->out, '(');
	buf_append_str(e->out, "(NIL NIL ");
	if (start)
		mime_write_nstring(e->out, name->data ? name->data : "", name->len);
	else
		buf_append_str(e->out, "NIL");
	buf_append_str(e->out, " NIL)");
}

/* ---- address parsing --------------------------------------------------------------- */

/* The display-name phrase: words joined by one space where the header had
 * white space between them; the same words with quotes kept and without
 * spaces go to raw_local (they are the local part if an '@' follows).
 * Stops at a special other than '.' and '"'. */
static void read_phrase(struct alex *x, struct buf *name, struct buf *raw_local)
{
	/* Bounded: each pass consumes a word or a dot, or stops. */
	for (;;) {
		const char *before = x->p;
		skip_ws(x, false);
		bool spaced = x->p != before;
		if (x->p >= x->end)
			return;
		if (*x->p != '.' && *x->p != '"' && is_special(*x->p))
			return;
		if (spaced && name->len)
			buf_append_char(name, ' ');
		if (*x->p == '.') {
			buf_append_char(name, '.');
			buf_append_char(raw_local, '.');
			x->p++;
			continue;
		}
		const char *save = x->p;
		read_word(x, raw_local, true);
		x->p = save;
		if (!read_word(x, name, false))
			return;
	}
}

/* "<" [route ":"] addr-spec ">" after the '<'. */
static void read_angle(struct alex *x, struct buf *route, struct buf *local, struct buf *domain)
{
	skip_ws(x, false);
	if (x->p < x->end && *x->p == '@') {
		/* obs-route: "@a,@b:" */
		while (x->p < x->end && *x->p != ':' && *x->p != '>') {
			if (*x->p != ' ' && *x->p != '\t' && *x->p != '\r' && *x->p != '\n')
				buf_append_char(route, *x->p);
			x->p++;
		}
		if (x->p < x->end && *x->p == ':')
			x->p++;
	}
	read_dotted(x, local, true);
	skip_ws(x, false);
	if (x->p < x->end && *x->p == '@') {
		x->p++;
		read_dotted(x, domain, false);
	}
	/* Skip whatever is left up to '>'. */
	while (x->p < x->end && *x->p != '>' && *x->p != ',' && *x->p != ';')
		x->p++;
	if (x->p < x->end && *x->p == '>')
		x->p++;
}

/* One mailbox or group; false at the end of input. */
static bool read_address(struct alex *x, struct env_out *e, bool in_group)
{
	struct buf name = BUF_INIT, route = BUF_INIT, local = BUF_INIT, domain = BUF_INIT;
	skip_ws(x, false);
	while (x->p < x->end && *x->p == ',') {
		x->p++;
		skip_ws(x, false);
	}
	if (x->p >= x->end)
		return false;
	const char *start = x->p;
	read_phrase(x, &name, &local);
	skip_ws(x, false);
	char c = x->p < x->end ? *x->p : '\0';
	if (c == '<') {
		x->p++;
		buf_reset(&local);
		read_angle(x, &route, &local, &domain);
		if (local.len || domain.len || name.len)
			emit_address(e, &name, &route, &local, &domain);
	} else if (c == ':' && !in_group) {
		x->p++;
		emit_group(e, &name, true);
		/* Bounded: each member consumes input. */
		for (;;) {
			skip_ws(x, false);
			if (x->p >= x->end)
				break;
			if (*x->p == ';') {
				x->p++;
				break;
			}
			const char *before = x->p;
			if (!read_address(x, e, true) || x->p == before)
				break;
		}
		emit_group(e, &name, false);
	} else if (c == '@') {
		x->p++;
		read_dotted(x, &domain, false);
		buf_reset(&name);
		buf_reset(&x->comment);
		skip_ws(x, true);
		struct buf *cn = &x->comment;
		if (cn->len) {
			struct buf unf = BUF_INIT;
			mime_unfold(cn->data, cn->len, &unf);
			emit_address(e, &unf, &route, &local, &domain);
			buf_free(&unf);
		} else {
			emit_address(e, &name, &route, &local, &domain);
		}
	} else if (name.len) {
		/* A bare word list: a mailbox without a domain. */
		buf_reset(&name);
		emit_address(e, &name, &route, &local, &domain);
	}
	/* Resynchronise at the next separator. */
	while (x->p < x->end && *x->p != ',' && !(in_group && *x->p == ';')) {
		if (*x->p == '"' || *x->p == '(') {
			struct buf junk = BUF_INIT;
			if (*x->p == '"')
				read_word(x, &junk, false);
			else
				skip_ws(x, false);
			buf_free(&junk);
			continue;
		}
		x->p++;
	}
	if (x->p == start && x->p < x->end)
		x->p++;
	buf_free(&name);
	buf_free(&route);
	buf_free(&local);
	buf_free(&domain);
	return true;
}

static void write_addresses(struct buf *out, const struct mnode *m, enum mhdr h)
{
	if (!m->has[h]) {
		buf_append_str(out, "NIL");
		return;
	}
	/* Work on the sanitised, unfolded value (no NUL, no line breaks). */
	struct buf v = BUF_INIT;
	mime_unfold(m->h[h].p, m->h[h].len, &v);
	struct alex x = { v.data ? v.data : "", (v.data ? v.data : "") + v.len, BUF_INIT };
	struct env_out e = { out, 0 };
	/* Bounded: each call consumes input. */
	while (x.p < x.end) {
		const char *before = x.p;
		if (!read_address(&x, &e, false) || x.p == before)
			break;
	}
	if (e.n == 0)
		buf_append_str(out, "NIL");
	else
		buf_append_char(out, ')');
	buf_free(&x.comment);
	buf_free(&v);
}

/* True when the header exists and has at least one address. */
static bool has_addresses(const struct mnode *m, enum mhdr h)
{
	if (!m->has[h])
		return false;
	struct buf tmp = BUF_INIT;
	write_addresses(&tmp, m, h);
	bool yes = strcmp(tmp.data, "NIL") != 0;
	buf_free(&tmp);
	return yes;
}

static void write_text(struct buf *out, const struct mnode *m, enum mhdr h)
{
	if (!m->has[h]) {
		buf_append_str(out, "NIL");
		return;
	}
	struct buf v = BUF_INIT;
	mime_unfold(m->h[h].p, m->h[h].len, &v);
	mime_write_nstring(out, v.data ? v.data : "", v.len);
	buf_free(&v);
}

void mime_write_envelope(struct buf *out, const struct mnode *m)
{
	buf_append_char(out, '(');
	write_text(out, m, MH_DATE);
	buf_append_char(out, ' ');
	write_text(out, m, MH_SUBJECT);
	buf_append_char(out, ' ');
	write_addresses(out, m, MH_FROM);
	buf_append_char(out, ' ');
	write_addresses(out, m, has_addresses(m, MH_SENDER) ? MH_SENDER : MH_FROM);
	buf_append_char(out, ' ');
	write_addresses(out, m, has_addresses(m, MH_REPLY_TO) ? MH_REPLY_TO : MH_FROM);
	buf_append_char(out, ' ');
	write_addresses(out, m, MH_TO);
	buf_append_char(out, ' ');
	write_addresses(out, m, MH_CC);
	buf_append_char(out, ' ');
	write_addresses(out, m, MH_BCC);
	buf_append_char(out, ' ');
	write_text(out, m, MH_IN_REPLY_TO);
	buf_append_char(out, ' ');
	write_text(out, m, MH_MESSAGE_ID);
	buf_append_char(out, ')');
}
