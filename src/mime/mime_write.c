/*
 * mime_write.c - BODYSTRUCTURE and BODY text (RFC 3501 section 9: body,
 * body-type-1part, body-type-mpart, body-ext-*) and the part map.
 *
 * BODYSTRUCTURE always carries the full extension data: md5, disposition,
 * language and location for a single part; parameters, disposition,
 * language and location for a multipart.  BODY carries none.
 *
 * Part map encoding (opaque to the store, read by mime_part_find):
 *   version byte 1, then per part:
 *     section text, NUL,
 *     varint header_start, varint body_start - header_start,
 *     varint body_end - body_start, byte flags (1 = message/rfc822),
 *     [flags & 1: varint text_start - body_start]
 *   varint = unsigned LEB128, at most 10 bytes.
 * A typical part costs 8 to 14 bytes.
 *
 * Threads: no shared state.
 */
#include "mime_int.h"

#include <stdio.h>
#include <string.h>

#define PARTS_VERSION 1

/* ---- structure text ------------------------------------------------------------- */

static void write_params(struct buf *out, const struct mparam *ps, size_t n)
{
	if (n == 0) {
		buf_append_str(out, "NIL");
		return;
	}
	buf_append_char(out, '(');
	for (size_t i = 0; i < n; i++) {
		if (i)
			buf_append_char(out, ' ');
		mime_write_nstring(out, ps[i].name, strlen(ps[i].name));
		buf_append_char(out, ' ');
		struct buf v = BUF_INIT;
		mime_unfold(ps[i].value, strlen(ps[i].value), &v);
		mime_write_nstring(out, v.data ? v.data : "", v.len);
		buf_free(&v);
	}
	buf_append_char(out, ')');
}

/* An unstructured field, unfolded, or NIL. */
static void write_field(struct buf *out, const struct mnode *n, enum mhdr h)
{
	if (!n->has[h]) {
		buf_append_str(out, "NIL");
		return;
	}
	struct buf v = BUF_INIT;
	mime_unfold(n->h[h].p, n->h[h].len, &v);
	mime_write_nstring(out, v.len ? v.data : NULL, v.len);
	buf_free(&v);
}

static bool is_token_char(char c)
{
	return (unsigned char)c > ' ' && (unsigned char)c < 0x7f && strchr("()<>@,;:\\\"/[]?=", c) == NULL;
}

static void write_encoding(struct buf *out, const struct mnode *n)
{
	struct buf v = BUF_INIT;
	if (n->has[MH_CONTENT_ENCODING])
		mime_unfold(n->h[MH_CONTENT_ENCODING].p, n->h[MH_CONTENT_ENCODING].len, &v);
	size_t len = 0;
	while (len < v.len && is_token_char(v.data[len])) {
		v.data[len] = (char)(v.data[len] >= 'A' && v.data[len] <= 'Z' ? v.data[len] + 32 : v.data[len]);
		len++;
	}
	if (len == 0)
		buf_append_str(out, "\"7bit\"");
	else
		mime_write_nstring(out, v.data, len);
	buf_free(&v);
}

static void write_disposition(struct buf *out, const struct mnode *n)
{
	if (n->disp == NULL) {
		buf_append_str(out, "NIL");
		return;
	}
	buf_append_char(out, '(');
	mime_write_nstring(out, n->disp, strlen(n->disp));
	buf_append_char(out, ' ');
	write_params(out, n->dparams, n->n_dparams);
	buf_append_char(out, ')');
}

/* Content-Language: one tag as a string, several as a list. */
static void write_language(struct buf *out, const struct mnode *n)
{
	if (!n->has[MH_CONTENT_LANGUAGE]) {
		buf_append_str(out, "NIL");
		return;
	}
	struct buf v = BUF_INIT;
	mime_unfold(n->h[MH_CONTENT_LANGUAGE].p, n->h[MH_CONTENT_LANGUAGE].len, &v);
	const char *tags[64];
	size_t lens[64], nt = 0;
	const char *p = v.data ? v.data : "", *end = p + v.len;
	while (p < end && nt < ARRAY_LEN(tags)) {
		while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
			p++;
		if (p < end && *p == '(') {
			/* A comment. */
			while (p < end && *p != ')')
				p++;
			if (p < end)
				p++;
			continue;
		}
		const char *s = p;
		while (p < end && is_token_char(*p))
			p++;
		if (p > s) {
			tags[nt] = s;
			lens[nt++] = (size_t)(p - s);
		} else if (p < end) {
			p++;
		}
	}
	if (nt == 0) {
		buf_append_str(out, "NIL");
	} else if (nt == 1) {
		mime_write_nstring(out, tags[0], lens[0]);
	} else {
		buf_append_char(out, '(');
		for (size_t i = 0; i < nt; i++) {
			if (i)
				buf_append_char(out, ' ');
			mime_write_nstring(out, tags[i], lens[i]);
		}
		buf_append_char(out, ')');
	}
	buf_free(&v);
}

/* disposition, language, location: shared by both kinds of extension. */
static void write_ext_tail(struct buf *out, const struct mnode *n)
{
	buf_append_char(out, ' ');
	write_disposition(out, n);
	buf_append_char(out, ' ');
	write_language(out, n);
	buf_append_char(out, ' ');
	write_field(out, n, MH_CONTENT_LOCATION);
}

void mime_write_structure(struct buf *out, const struct mnode *n, bool extended)
{
	buf_append_char(out, '(');
	if (n->kind == MK_MULTIPART) {
		for (const struct mnode *c = n->children; c != NULL; c = c->next)
			mime_write_structure(out, c, extended);
		buf_append_char(out, ' ');
		mime_write_nstring(out, n->subtype, strlen(n->subtype));
		if (extended) {
			buf_append_char(out, ' ');
			write_params(out, n->params, n->n_params);
			write_ext_tail(out, n);
		}
		buf_append_char(out, ')');
		return;
	}
	mime_write_nstring(out, n->type, strlen(n->type));
	buf_append_char(out, ' ');
	mime_write_nstring(out, n->subtype, strlen(n->subtype));
	buf_append_char(out, ' ');
	write_params(out, n->params, n->n_params);
	buf_append_char(out, ' ');
	write_field(out, n, MH_CONTENT_ID);
	buf_append_char(out, ' ');
	write_field(out, n, MH_CONTENT_DESCRIPTION);
	buf_append_char(out, ' ');
	write_encoding(out, n);
	buf_printf(out, " %llu", (unsigned long long)(n->be - n->bs));
	if (n->kind == MK_MESSAGE) {
		buf_append_char(out, ' ');
		mime_write_envelope(out, n->msg);
		buf_append_char(out, ' ');
		mime_write_structure(out, n->msg, extended);
	}
	if (n->kind == MK_TEXT || n->kind == MK_MESSAGE)
		buf_printf(out, " %llu", (unsigned long long)n->lines);
	if (extended) {
		buf_append_char(out, ' ');
		write_field(out, n, MH_CONTENT_MD5);
		write_ext_tail(out, n);
	}
	buf_append_char(out, ')');
}

/* ---- part map -------------------------------------------------------------------- */

static void put_varint(struct buf *out, uint64_t v)
{
	do {
		uint8_t byte = v & 0x7f;
		v >>= 7;
		buf_append_char(out, (char)(byte | (v ? 0x80 : 0)));
	} while (v);
}

static void put_part(struct buf *out, const char *section, const struct mnode *n)
{
	buf_append(out, section, strlen(section) + 1);
	put_varint(out, n->hs);
	put_varint(out, n->bs - n->hs);
	put_varint(out, n->be - n->bs);
	bool msg = n->kind == MK_MESSAGE;
	buf_append_char(out, msg ? 1 : 0);
	if (msg)
		put_varint(out, n->msg->bs - n->bs);
}

static void visit(struct buf *out, const struct mnode *n, const char *section);

/* The parts inside a message body: a multipart's children, or the body
 * itself as part 1. */
static void visit_body(struct buf *out, const struct mnode *m, const char *prefix)
{
	char sec[MIME_SECTION_MAX + 16];
	if (m->kind != MK_MULTIPART) {
		snprintf(sec, sizeof(sec), "%s%s1", prefix, *prefix ? "." : "");
		visit(out, m, sec);
		return;
	}
	unsigned i = 1;
	for (const struct mnode *c = m->children; c != NULL; c = c->next, i++) {
		snprintf(sec, sizeof(sec), "%s%s%u", prefix, *prefix ? "." : "", i);
		visit(out, c, sec);
	}
}

static void visit(struct buf *out, const struct mnode *n, const char *section)
{
	if (strlen(section) > MIME_SECTION_MAX)
		return; /* deeper than any client can name in a command */
	put_part(out, section, n);
	if (n->kind == MK_MULTIPART) {
		char sec[MIME_SECTION_MAX + 16];
		unsigned i = 1;
		for (const struct mnode *c = n->children; c != NULL; c = c->next, i++) {
			snprintf(sec, sizeof(sec), "%s.%u", section, i);
			visit(out, c, sec);
		}
	} else if (n->kind == MK_MESSAGE) {
		visit_body(out, n->msg, section);
	}
}

void mime_parts_encode(const struct mnode *top, struct buf *out)
{
	buf_append_char(out, PARTS_VERSION);
	visit_body(out, top, "");
}

static bool get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
	*v = 0;
	for (unsigned shift = 0; shift < 64; shift += 7) {
		if (*p >= end)
			return false;
		uint8_t b = *(*p)++;
		*v |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80))
			return true;
	}
	return false;
}

bool mime_part_find(const uint8_t *parts, size_t len, const char *section, struct mime_part *out)
{
	if (parts == NULL || len == 0 || parts[0] != PARTS_VERSION)
		return false;
	const uint8_t *p = parts + 1, *end = parts + len;
	/* Bounded: each entry consumes at least 5 bytes. */
	while (p < end) {
		const uint8_t *nul = memchr(p, '\0', (size_t)(end - p));
		if (nul == NULL)
			return false;
		bool match = strcmp((const char *)p, section) == 0;
		p = nul + 1;
		uint64_t hs, hl, bl, tl = 0;
		if (!get_varint(&p, end, &hs) || !get_varint(&p, end, &hl) || !get_varint(&p, end, &bl) || p >= end)
			return false;
		uint8_t flags = *p++;
		if ((flags & 1) && !get_varint(&p, end, &tl))
			return false;
		if (match) {
			if (hl > UINT64_MAX - hs || bl > UINT64_MAX - hs - hl || tl > bl)
				return false;
			out->header_start = hs;
			out->body_start = hs + hl;
			out->body_end = hs + hl + bl;
			out->is_message = (flags & 1) != 0;
			out->text_start = out->body_start + tl;
			return true;
		}
	}
	return false;
}
