/*
 * fuzz_mime.c - fuzz target for the MIME structure scanner
 * (src/mime/mime.h: mime_parse_mem, mime_part_find): what IMAP serves as
 * ENVELOPE, BODYSTRUCTURE, BODY and BODY[section] of any message a client
 * or a sender can store.
 *
 * Input: the raw bytes of one message.
 *
 * Properties checked:
 *  - the envelope, BODYSTRUCTURE and BODY texts are complete IMAP syntax:
 *    parentheses balance outside quoted strings and literals, quoted
 *    strings end, a literal {n} is followed by CRLF and exactly n octets,
 *    the text contains no NUL, and the top-level is one parenthesised list;
 *  - every part the map knows (sections up to three levels, ten parts per
 *    level) has ordered offsets inside the message: header_start <=
 *    body_start <= body_end <= size, and for message/rfc822 parts
 *    body_start <= text_start <= body_end;
 *  - a damaged or absent map is refused by mime_part_find, never read past
 *    its end (ASan watches the reads of truncated maps).
 *
 * And the decoders SEARCH, SORT and THREAD use (mime_decode.c), on the
 * same input:
 *  - mime_text_scan gives the same text whether the message is fed whole
 *    or in pieces split at points derived from the input, with and without
 *    MIME_TEXT_HEADER; so do the base64 and quoted-printable decoders and
 *    the case folder;
 *  - base64 output is at most 3/4 of its input (+3), quoted-printable
 *    output at most its input;
 *  - the header helpers (mime_header_decode, mime_base_subject,
 *    mime_first_address, mime_msgid_next, mime_date_parse, mime_sort_key,
 *    mime_header_next) run on every header field of the input, and the
 *    iterators always advance.
 *
 * And the packed form the index stores (mime_pack.c):
 *  - the texts and map of the input message, packed, unpack to exactly the
 *    same bytes, tokenised with BODY derived (never the raw fallback);
 *  - the input itself taken as a packed record: mime_unpack refuses it or
 *    gives texts that are complete IMAP syntax (token records) or without
 *    NUL (raw records), each bounded, never reading past the input.
 *
 * Durability/concurrency: none (pure functions, one thread).
 */
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mime.h"

/* Walks IMAP syntax; returns the offset where the top-level list ends. */
static size_t check_imap_syntax(const char *what, const char *t)
{
	size_t len = strlen(t), i = 0;
	long depth = 0;
	FUZZ_CHECK(len > 0 && t[0] == '(', "%s does not start with '('", what);
	while (i < len) {
		char c = t[i];
		if (c == '(') {
			depth++;
			i++;
		} else if (c == ')') {
			FUZZ_CHECK(depth > 0, "%s: ')' without '(' at %zu", what, i);
			depth--;
			i++;
			if (depth == 0)
				return i;
		} else if (c == '"') {
			i++;
			while (i < len && t[i] != '"') {
				FUZZ_CHECK(t[i] != '\r' && t[i] != '\n', "%s: CR or LF in a quoted string at %zu", what, i);
				i += t[i] == '\\' ? 2 : 1;
			}
			FUZZ_CHECK(i < len, "%s: quoted string does not end", what);
			i++;
		} else if (c == '{') {
			char *end = NULL;
			unsigned long long n = strtoull(t + i + 1, &end, 10);
			FUZZ_CHECK(end != NULL && end[0] == '}' && end[1] == '\r' && end[2] == '\n',
				   "%s: bad literal header at %zu", what, i);
			i = (size_t)(end + 3 - t);
			FUZZ_CHECK(n <= len - i, "%s: literal of %llu octets past the end", what, n);
			i += (size_t)n;
		} else {
			i++;
		}
	}
	fuzz_fail(__FILE__, __LINE__, "depth == 0", "%s: %ld list(s) left open", what, depth);
}

static void check_text(const char *what, const char *t)
{
	FUZZ_CHECK(t != NULL, "%s is NULL", what);
	size_t end = check_imap_syntax(what, t);
	FUZZ_CHECK(end == strlen(t), "%s: %zu octets after the top-level list", what, strlen(t) - end);
}

static void check_part(const struct mime_summary *m, const char *section, size_t size)
{
	struct mime_part p;
	if (!mime_part_find(m->parts, m->parts_len, section, &p))
		return;
	FUZZ_CHECK(p.header_start <= p.body_start && p.body_start <= p.body_end && p.body_end <= size,
		   "part %s: header %llu body %llu..%llu of %zu", section, (unsigned long long)p.header_start,
		   (unsigned long long)p.body_start, (unsigned long long)p.body_end, size);
	if (p.is_message)
		FUZZ_CHECK(p.body_start <= p.text_start && p.text_start <= p.body_end,
			   "part %s: message text at %llu outside %llu..%llu", section,
			   (unsigned long long)p.text_start, (unsigned long long)p.body_start,
			   (unsigned long long)p.body_end);
}

static void check_parts(const struct mime_summary *m, size_t size)
{
	char sec[32];
	for (int a = 1; a <= 10; a++) {
		snprintf(sec, sizeof(sec), "%d", a);
		check_part(m, sec, size);
		for (int b = 1; b <= 10; b++) {
			snprintf(sec, sizeof(sec), "%d.%d", a, b);
			check_part(m, sec, size);
			for (int c = 1; c <= 10; c++) {
				snprintf(sec, sizeof(sec), "%d.%d.%d", a, b, c);
				check_part(m, sec, size);
			}
		}
	}
	/* A truncated map is refused or read within bounds. */
	struct mime_part p;
	for (size_t cut = 0; cut < m->parts_len && cut < 64; cut++)
		(void)mime_part_find(m->parts, cut, "1", &p);
}

/* ---- decoders ------------------------------------------------------------------- */

static void collect(void *ctx, const char *utf8, size_t len)
{
	struct buf *b = ctx;
	if (utf8 == NULL)
		buf_append(b, "\0|", 2);   /* part separator */
	else
		buf_append(b, utf8, len);
}

static void text_scan(const uint8_t *data, size_t size, unsigned flags, uint64_t salt, bool split,
		      struct buf *out)
{
	struct mime_text_scan *s = mime_text_scan_new(flags, collect, out);
	struct fuzz_rng rng;
	fuzz_rng_init(&rng, data, size, salt);
	size_t pos = 0;
	while (pos < size) {
		size_t n = split ? fuzz_rng_chunk(&rng, size - pos) : size - pos;
		mime_text_scan_feed(s, (const char *)data + pos, n);
		pos += n;
	}
	mime_text_scan_finish(s);
	mime_text_scan_free(&s);
}

static void check_text_scan(const uint8_t *data, size_t size)
{
	for (unsigned flags = 0; flags <= MIME_TEXT_HEADER; flags++) {
		struct buf whole = BUF_INIT, pieces = BUF_INIT;
		text_scan(data, size, flags, 0, false, &whole);
		text_scan(data, size, flags, 0x51ed, true, &pieces);
		fuzz_check_same(flags ? "text scan with header, whole vs pieces" : "text scan, whole vs pieces",
				whole.data, whole.len, pieces.data, pieces.len);
		buf_free(&whole);
		buf_free(&pieces);
	}
}

static void cte_run(const uint8_t *data, size_t size, enum mime_cte cte, bool split, struct buf *out)
{
	struct mime_cte_decoder d;
	mime_cte_init(&d, cte);
	struct fuzz_rng rng;
	fuzz_rng_init(&rng, data, size, 0xc7e + (uint64_t)cte);
	size_t pos = 0;
	while (pos < size) {
		size_t n = split ? fuzz_rng_chunk(&rng, size - pos) : size - pos;
		mime_cte_feed(&d, (const char *)data + pos, n, out);
		pos += n;
	}
	mime_cte_finish(&d, out);
}

static void check_cte(const uint8_t *data, size_t size)
{
	static const enum mime_cte ctes[] = { MIME_CTE_BASE64, MIME_CTE_QP };
	for (size_t i = 0; i < 2; i++) {
		struct buf whole = BUF_INIT, pieces = BUF_INIT;
		cte_run(data, size, ctes[i], false, &whole);
		cte_run(data, size, ctes[i], true, &pieces);
		fuzz_check_same(i ? "quoted-printable, whole vs pieces" : "base64, whole vs pieces", whole.data,
				whole.len, pieces.data, pieces.len);
		if (ctes[i] == MIME_CTE_BASE64)
			FUZZ_CHECK(whole.len <= size / 4 * 3 + 3, "base64: %zu octets out of %zu", whole.len, size);
		else
			FUZZ_CHECK(whole.len <= size, "quoted-printable: %zu octets out of %zu", whole.len, size);
		buf_free(&whole);
		buf_free(&pieces);
	}
	struct buf a = BUF_INIT, b = BUF_INIT;
	mime_fold_str((const char *)data, size, &a);
	struct mime_fold f;
	mime_fold_init(&f);
	struct fuzz_rng rng;
	fuzz_rng_init(&rng, data, size, 0xf01d);
	for (size_t pos = 0; pos < size;) {
		size_t n = fuzz_rng_chunk(&rng, size - pos);
		mime_fold_feed(&f, (const char *)data + pos, n, &b);
		pos += n;
	}
	mime_fold_finish(&f, &b);
	fuzz_check_same("case folding, whole vs pieces", a.data, a.len, b.data, b.len);
	buf_free(&a);
	buf_free(&b);
}

static void check_field(const struct mime_field *f)
{
	struct buf out = BUF_INIT;
	mime_header_decode(f->value, f->value_len, &out);
	buf_reset(&out);
	bool reply = false;
	mime_base_subject(f->value, f->value_len, &out, &reply);
	buf_reset(&out);
	mime_sort_key(f->value, f->value_len, &out);
	struct mime_address addr = { BUF_INIT, BUF_INIT, BUF_INIT };
	(void)mime_first_address(f->value, f->value_len, &addr);
	buf_free(&addr.display);
	buf_free(&addr.mailbox);
	buf_free(&addr.host);
	size_t pos = 0, last = 0, ids = 0;
	while (mime_msgid_next(f->value, f->value_len, &pos, &out)) {
		FUZZ_CHECK(pos > last && pos <= f->value_len, "msgid iterator at %zu after %zu", pos, last);
		FUZZ_CHECK(out.len <= MIME_MSGID_MAX, "message id of %zu octets", out.len);
		last = pos;
		FUZZ_CHECK(++ids <= f->value_len, "more ids than octets");
	}
	int64_t utc;
	int zone;
	(void)mime_date_parse(f->value, f->value_len, &utc, &zone);
	buf_free(&out);
}

static void check_headers(const uint8_t *data, size_t size)
{
	size_t pos = 0, last = 0, n = 0;
	struct mime_field f;
	while (mime_header_next((const char *)data, size, &pos, &f)) {
		FUZZ_CHECK(pos > last && pos <= size, "header iterator at %zu after %zu", pos, last);
		FUZZ_CHECK(f.name >= (const char *)data && f.name + f.name_len <= (const char *)data + size &&
				   f.value >= (const char *)data && f.value + f.value_len <= (const char *)data + size,
			   "field outside the input");
		last = pos;
		check_field(&f);
		FUZZ_CHECK(++n <= size, "more fields than octets");
	}
}

/* ---- packed form ---------------------------------------------------------------- */

static void check_same_text(const char *what, const char *want, const char *got)
{
	fuzz_check_same(what, want, strlen(want), got, strlen(got));
}

static void check_pack(const struct mime_summary *m)
{
	struct buf packed = BUF_INIT;
	mime_pack(m->envelope, m->bodystructure, m->body, m->parts, m->parts_len, &packed);
	FUZZ_CHECK(packed.len > 0 && ((uint8_t)packed.data[0] & 15u) == 0,
		   "the parser's texts were not tokenised with BODY derived (flags %u)",
		   packed.len ? (uint8_t)packed.data[0] & 15u : 99u);
	struct mime_summary u;
	FUZZ_CHECK(mime_unpack((const uint8_t *)packed.data, packed.len, &u), "a packed record does not decode");
	check_same_text("ENVELOPE, packed", m->envelope, u.envelope);
	check_same_text("BODYSTRUCTURE, packed", m->bodystructure, u.bodystructure);
	check_same_text("BODY, packed", m->body, u.body);
	fuzz_check_same("part map, packed", (const char *)m->parts, m->parts_len, (const char *)u.parts,
			u.parts_len);
	mime_summary_free(&u);
	buf_free(&packed);
}

static void check_unpack(const uint8_t *data, size_t size)
{
	struct mime_summary u;
	if (!mime_unpack(data, size, &u))
		return;
	if ((data[0] & 2u) == 0) {
		check_text("ENVELOPE, unpacked", u.envelope);
		check_text("BODYSTRUCTURE, unpacked", u.bodystructure);
		check_text("BODY, unpacked", u.body);
	}
	FUZZ_CHECK(u.parts_len <= size, "a part map of %zu octets from %zu", u.parts_len, size);
	struct mime_part p;
	(void)mime_part_find(u.parts, u.parts_len, "1", &p);
	mime_summary_free(&u);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mime_summary m;
	mime_parse_mem((const char *)data, size, &m);
	check_text("ENVELOPE", m.envelope);
	check_text("BODYSTRUCTURE", m.bodystructure);
	check_text("BODY", m.body);
	check_parts(&m, size);
	check_pack(&m);
	mime_summary_free(&m);
	check_unpack(data, size);
	check_text_scan(data, size);
	check_cte(data, size);
	check_headers(data, size);
	return 0;
}
