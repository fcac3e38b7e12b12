/*
 * mime_decode.c - the decoders that SEARCH, SORT and THREAD need to see a
 * message as its reader does:
 *   - RFC 2047 encoded words in header text (B and Q, any charset glibc's
 *     iconv knows, RFC 2231 language suffixes, adjacent words joined
 *     before conversion so a character split across two words survives);
 *   - streaming Content-Transfer-Encoding decoders (base64,
 *     quoted-printable, identity) that take input in pieces of any size;
 *   - streaming charset -> UTF-8 conversion over iconv;
 *   - streaming Unicode simple case folding of UTF-8;
 *   - Content-Type parameter lookup with RFC 2231 continuations;
 *   - a streaming text extractor: raw message bytes in, the decoded UTF-8
 *     text of its text parts out, in bounded memory.
 *
 * Case folding: a built-in table of the Unicode simple case foldings
 * (CaseFolding.txt, status C and S) for ASCII, Latin-1, Latin Extended-A,
 * Latin Extended Additional, Greek and Cyrillic.  A table rather than
 * towlower(): it needs no locale (the daemon's locale is whatever the
 * administrator's environment says), it is the same on every machine and
 * it folds the final sigma and the long s as Unicode says.  Characters
 * outside those blocks are compared as they are.
 *
 * Lenience: nothing here fails.  Bytes a decoder does not understand are
 * passed through (base64 skips them); an unknown charset is treated as
 * raw bytes (ASCII text in it still matches); bytes that are invalid in
 * a known charset become U+FFFD; invalid UTF-8 is passed through unfolded.
 *
 * Memory: every streaming state is a few bytes; output goes to the
 * caller's buffers and is at most a small multiple of the input fed.  The
 * text extractor holds one line start (MIME_SCAN_LINE_MAX), one header
 * block (MIME_SCAN_HEADER_MAX) and the boundaries of the open multiparts.
 *
 * Threads: no shared state; any thread.  iconv descriptors are per call
 * or per converter object.
 */
#include "mime_int.h"

#include <ctype.h>
#include <errno.h>
#include <iconv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define CHARSET_NAME_MAX 64
#define CHARSET_PENDING_MAX 16     /* an incomplete multibyte sequence */
#define SCAN_BOUNDARY_MAX 200      /* RFC 2046 says 70; be generous */
#define PARAM_PIECES_MAX 64        /* RFC 2231 continuations per parameter */

/* ---- case folding --------------------------------------------------------------------- */

/* Pairs where the upper case letter is even and the lower case odd
 * (Latin Extended-A/Additional, Greek archaic, Cyrillic extended). */
static const struct {
	uint32_t lo, hi;
	bool odd_upper;            /* upper case letters are the odd ones */
} fold_pairs[] = {
	{ 0x0100, 0x012F, false }, { 0x0132, 0x0137, false }, { 0x0139, 0x0148, true },
	{ 0x014A, 0x0177, false }, { 0x0179, 0x017E, true },  { 0x03D8, 0x03EF, false },
	{ 0x0460, 0x0481, false }, { 0x048A, 0x04BF, false }, { 0x04C1, 0x04CE, true },
	{ 0x04D0, 0x052F, false }, { 0x1E00, 0x1E95, false }, { 0x1EA0, 0x1EFF, false },
};

static const struct {
	uint32_t from, to;
} fold_single[] = {
	{ 0x00B5, 0x03BC }, { 0x0178, 0x00FF }, { 0x017F, 0x0073 }, { 0x0345, 0x03B9 },
	{ 0x037F, 0x03F3 }, { 0x0386, 0x03AC }, { 0x038C, 0x03CC }, { 0x03C2, 0x03C3 },
	{ 0x03CF, 0x03D7 }, { 0x03D0, 0x03B2 }, { 0x03D1, 0x03B8 }, { 0x03D5, 0x03C6 },
	{ 0x03D6, 0x03C0 }, { 0x03F0, 0x03BA }, { 0x03F1, 0x03C1 }, { 0x03F4, 0x03B8 },
	{ 0x03F5, 0x03B5 }, { 0x03F7, 0x03F8 }, { 0x03F9, 0x03F2 }, { 0x03FA, 0x03FB },
	{ 0x04C0, 0x04CF }, { 0x1E9B, 0x1E61 }, { 0x1E9E, 0x00DF }, { 0x212A, 0x006B },
	{ 0x212B, 0x00E5 }, { 0x2126, 0x03C9 },
};

uint32_t mime_fold_char(uint32_t c)
{
	if (c < 0x80)
		return c >= 'A' && c <= 'Z' ? c + 32 : c;
	if ((c >= 0x00C0 && c <= 0x00DE && c != 0x00D7) || (c >= 0x0391 && c <= 0x03AB && c != 0x03A2) ||
	    (c >= 0x0410 && c <= 0x042F))
		return c + 32;
	if (c >= 0x0388 && c <= 0x038A)
		return c + 37;
	if (c >= 0x038E && c <= 0x038F)
		return c + 63;
	if (c >= 0x0400 && c <= 0x040F)
		return c + 80;
	if (c >= 0x03FD && c <= 0x03FF)
		return c - 130;
	for (size_t i = 0; i < ARRAY_LEN(fold_pairs); i++) {
		if (c >= fold_pairs[i].lo && c <= fold_pairs[i].hi) {
			bool odd = (c & 1) != 0;
			return odd == fold_pairs[i].odd_upper ? c + 1 : c;
		}
	}
	for (size_t i = 0; i < ARRAY_LEN(fold_single); i++) {
		if (fold_single[i].from == c)
			return fold_single[i].to;
	}
	return c;
}

static void utf8_put(struct buf *out, uint32_t c)
{
	char b[4];
	size_t n;
	if (c < 0x80) {
		b[0] = (char)c;
		n = 1;
	} else if (c < 0x800) {
		b[0] = (char)(0xC0 | (c >> 6));
		b[1] = (char)(0x80 | (c & 0x3F));
		n = 2;
	} else if (c < 0x10000) {
		b[0] = (char)(0xE0 | (c >> 12));
		b[1] = (char)(0x80 | ((c >> 6) & 0x3F));
		b[2] = (char)(0x80 | (c & 0x3F));
		n = 3;
	} else {
		b[0] = (char)(0xF0 | (c >> 18));
		b[1] = (char)(0x80 | ((c >> 12) & 0x3F));
		b[2] = (char)(0x80 | ((c >> 6) & 0x3F));
		b[3] = (char)(0x80 | (c & 0x3F));
		n = 4;
	}
	buf_append(out, b, n);
}

/* Length of the UTF-8 sequence a lead byte announces; 0 for a byte that
 * cannot start one. */
static size_t utf8_seq_len(unsigned char c)
{
	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF)
		return 2;
	if (c >= 0xE0 && c <= 0xEF)
		return 3;
	if (c >= 0xF0 && c <= 0xF4)
		return 4;
	return 0;
}

/* Decodes one complete sequence of `n` bytes; false when malformed
 * (continuation bytes, overlong forms, surrogates). */
static bool utf8_decode(const unsigned char *p, size_t n, uint32_t *c_r)
{
	static const uint32_t min[5] = { 0, 0, 0x80, 0x800, 0x10000 };
	uint32_t c = n == 2 ? p[0] & 0x1Fu : n == 3 ? p[0] & 0x0Fu : p[0] & 0x07u;
	for (size_t i = 1; i < n; i++) {
		if ((p[i] & 0xC0) != 0x80)
			return false;
		c = (c << 6) | (p[i] & 0x3Fu);
	}
	if (c < min[n] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
		return false;
	*c_r = c;
	return true;
}

void mime_fold_init(struct mime_fold *f)
{
	f->n = 0;
}

/* Folds whole sequences of p[0, len); returns how many bytes it consumed
 * (less than len only when the input ends inside a sequence). */
static size_t fold_run(const unsigned char *p, size_t len, struct buf *out)
{
	size_t i = 0;
	while (i < len) {
		unsigned char c = p[i];
		if (c < 0x80) {
			size_t j = i;
			while (j < len && p[j] < 0x80)
				j++;
			buf_reserve(out, j - i);
			for (size_t k = i; k < j; k++)
				out->data[out->len++] = (char)(p[k] >= 'A' && p[k] <= 'Z' ? p[k] + 32 : p[k]);
			out->data[out->len] = '\0';
			i = j;
			continue;
		}
		size_t n = utf8_seq_len(c);
		if (n == 0) {
			buf_append_char(out, (char)c);   /* not UTF-8: as is */
			i++;
			continue;
		}
		if (i + n > len) {
			/* Maybe a sequence the next piece completes. */
			bool prefix = true;
			for (size_t k = i + 1; k < len; k++)
				prefix = prefix && (p[k] & 0xC0) == 0x80;
			if (prefix)
				return i;
			buf_append_char(out, (char)c);
			i++;
			continue;
		}
		uint32_t cp;
		if (!utf8_decode(p + i, n, &cp)) {
			buf_append_char(out, (char)c);
			i++;
			continue;
		}
		utf8_put(out, mime_fold_char(cp));
		i += n;
	}
	return i;
}

void mime_fold_feed(struct mime_fold *f, const char *in, size_t len, struct buf *out)
{
	const unsigned char *p = (const unsigned char *)in;
	if (f->n > 0) {
		/* Complete the sequence the previous piece began. */
		size_t need = utf8_seq_len(f->pend[0]);
		while (f->n < need && len > 0 && (*p & 0xC0) == 0x80) {
			f->pend[f->n++] = *p++;
			len--;
		}
		if (f->n < need && len == 0)
			return;   /* still incomplete */
		if (f->n == need)
			fold_run(f->pend, f->n, out);
		else
			buf_append(out, f->pend, f->n);   /* cut short: as is */
		f->n = 0;
	}
	size_t used = fold_run(p, len, out);
	if (used < len) {
		memcpy(f->pend, p + used, len - used);   /* < 4 bytes: an unfinished sequence */
		f->n = len - used;
	}
	if (out->data == NULL)
		buf_reserve(out, 1);
}

void mime_fold_finish(struct mime_fold *f, struct buf *out)
{
	buf_append(out, f->pend, f->n);   /* an unfinished sequence: as is */
	f->n = 0;
}

void mime_fold_str(const char *in, size_t len, struct buf *out)
{
	struct mime_fold f;
	mime_fold_init(&f);
	mime_fold_feed(&f, in, len, out);
	mime_fold_finish(&f, out);
}

/* ---- transfer encodings ------------------------------------------------------------- */

enum mime_cte mime_cte_from_name(const char *name, size_t len)
{
	while (len > 0 && (*name == ' ' || *name == '\t')) {
		name++;
		len--;
	}
	while (len > 0 && (name[len - 1] == ' ' || name[len - 1] == '\t' || name[len - 1] == '\r' ||
			   name[len - 1] == '\n'))
		len--;
	if (len == 6 && strncasecmp(name, "base64", 6) == 0)
		return MIME_CTE_BASE64;
	if (len == 16 && strncasecmp(name, "quoted-printable", 16) == 0)
		return MIME_CTE_QP;
	return MIME_CTE_IDENTITY;
}

void mime_cte_init(struct mime_cte_decoder *d, enum mime_cte cte)
{
	memset(d, 0, sizeof(*d));
	d->cte = cte;
}

static int hex_value(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static int b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

static void b64_feed(struct mime_cte_decoder *d, const unsigned char *p, size_t len, struct buf *out)
{
	buf_reserve(out, len / 4 * 3 + 3);
	for (size_t i = 0; i < len; i++) {
		int v = b64_value(p[i]);
		if (v < 0) {
			if (p[i] == '=')
				d->nbits = 0;   /* padding: a new group may follow */
			continue;
		}
		d->bits = (d->bits << 6) | (uint32_t)v;
		d->nbits += 6;
		if (d->nbits >= 8) {
			d->nbits -= 8;
			out->data[out->len++] = (char)((d->bits >> d->nbits) & 0xFF);
		}
	}
	out->data[out->len] = '\0';
}

/* Quoted-printable states: after "=", after "=" and one hex digit, after "=\r". */
enum { QP_TEXT = 0, QP_EQ, QP_EQ_HEX, QP_EQ_CR };

static void qp_feed(struct mime_cte_decoder *d, const unsigned char *p, size_t len, struct buf *out)
{
	buf_reserve(out, len + 2);
	for (size_t i = 0; i < len; i++) {
		unsigned char c = p[i];
		switch (d->state) {
		case QP_TEXT:
			if (c == '=')
				d->state = QP_EQ;
			else
				out->data[out->len++] = (char)c;
			break;
		case QP_EQ:
			if (hex_value(c) >= 0) {
				d->hex = c;
				d->state = QP_EQ_HEX;
			} else if (c == '\r') {
				d->state = QP_EQ_CR;
			} else if (c == '\n') {
				d->state = QP_TEXT;   /* soft line break */
			} else {
				out->data[out->len++] = '=';
				d->state = QP_TEXT;
				i--;                  /* again, as text */
			}
			break;
		case QP_EQ_HEX:
			if (hex_value(c) >= 0) {
				out->data[out->len++] = (char)(hex_value(d->hex) * 16 + hex_value(c));
				d->state = QP_TEXT;
			} else {
				out->data[out->len++] = '=';
				out->data[out->len++] = (char)d->hex;
				d->state = QP_TEXT;
				i--;
			}
			break;
		default: /* QP_EQ_CR */
			d->state = QP_TEXT;
			if (c != '\n')
				i--;
			break;
		}
	}
	out->data[out->len] = '\0';
}

void mime_cte_feed(struct mime_cte_decoder *d, const char *in, size_t len, struct buf *out)
{
	const unsigned char *p = (const unsigned char *)in;
	if (d->cte == MIME_CTE_BASE64)
		b64_feed(d, p, len, out);
	else if (d->cte == MIME_CTE_QP)
		qp_feed(d, p, len, out);
	else
		buf_append(out, in, len);
	if (out->data == NULL)
		buf_reserve(out, 1);
}

void mime_cte_finish(struct mime_cte_decoder *d, struct buf *out)
{
	if (d->cte == MIME_CTE_QP && d->state == QP_EQ) {
		buf_append_char(out, '=');
	} else if (d->cte == MIME_CTE_QP && d->state == QP_EQ_HEX) {
		buf_append_char(out, '=');
		buf_append_char(out, (char)d->hex);
	}
	d->state = QP_TEXT;
	d->nbits = 0;
}

/* ---- charsets ----------------------------------------------------------------------- */

enum cs_mode { CS_ICONV, CS_PASS };

struct mime_charset {
	enum cs_mode mode;
	iconv_t cd;
	char pend[CHARSET_PENDING_MAX];
	size_t n_pend;
	struct buf scratch;
};

/* Names iconv does not know under the spelling mail uses. */
static const struct {
	const char *mail, *iconv;
} charset_alias[] = {
	{ "ks_c_5601-1987", "CP949" }, { "x-sjis", "SHIFT_JIS" }, { "x-euc-jp", "EUC-JP" },
	{ "x-mac-roman", "MACINTOSH" }, { "gb2312", "GB18030" }, { "gbk", "GB18030" },
};

/* The charset name as iconv should get it: RFC 2231 language suffix
 * dropped, only token characters, bounded.  False for a bad name. */
static bool charset_clean(const char *name, size_t len, char out[CHARSET_NAME_MAX + 1])
{
	const char *star = memchr(name, '*', len);
	if (star != NULL)
		len = (size_t)(star - name);
	while (len > 0 && (*name == ' ' || *name == '"')) {
		name++;
		len--;
	}
	while (len > 0 && (name[len - 1] == ' ' || name[len - 1] == '"'))
		len--;
	if (len == 0 || len > CHARSET_NAME_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)name[i];
		if (!isalnum(c) && strchr("-_.:()+", c) == NULL)
			return false;
		out[i] = (char)c;
	}
	out[len] = '\0';
	for (size_t i = 0; i < ARRAY_LEN(charset_alias); i++) {
		if (strcasecmp(out, charset_alias[i].mail) == 0) {
			snprintf(out, CHARSET_NAME_MAX + 1, "%s", charset_alias[i].iconv);
			break;
		}
	}
	return true;
}

static bool charset_is_utf8(const char *name)
{
	return strcasecmp(name, "utf-8") == 0 || strcasecmp(name, "utf8") == 0 ||
	       strcasecmp(name, "us-ascii") == 0 || strcasecmp(name, "ascii") == 0;
}

struct mime_charset *mime_charset_open(const char *name, size_t len)
{
	struct mime_charset *c = xcalloc(1, sizeof(*c));
	char clean[CHARSET_NAME_MAX + 1];
	c->mode = CS_PASS;
	if (name != NULL && charset_clean(name, len, clean) && !charset_is_utf8(clean)) {
		c->cd = iconv_open("UTF-8", clean);
		if (c->cd != (iconv_t)-1)
			c->mode = CS_ICONV;
	}
	return c;
}

/* Converts in[0, len) and returns how many bytes were left unconverted
 * at the end because they start an incomplete sequence. */
static size_t iconv_run(struct mime_charset *c, const char *in, size_t len, struct buf *out)
{
	char *ip = (char *)(uintptr_t)in;
	size_t left = len;
	/* Bounded: every pass converts, skips one byte or grows the buffer. */
	while (left > 0) {
		buf_reserve(out, left * 4 + 16);
		char *op = out->data + out->len;
		size_t room = out->cap - out->len - 1;
		size_t r = iconv(c->cd, &ip, &left, &op, &room);
		out->len = (size_t)(op - out->data);
		out->data[out->len] = '\0';
		if (r != (size_t)-1)
			break;
		if (errno == E2BIG)
			continue;
		if (errno == EINVAL && left < CHARSET_PENDING_MAX)
			return left;   /* incomplete: wait for more */
		/* EILSEQ (or a too long incomplete tail): one replacement. */
		buf_append_str(out, "\xEF\xBF\xBD");
		ip++;
		left--;
	}
	return 0;
}

void mime_charset_feed(struct mime_charset *c, const char *in, size_t len, struct buf *out)
{
	if (c->mode == CS_PASS) {
		buf_append(out, in, len);
		if (out->data == NULL)
			buf_reserve(out, 1);
		return;
	}
	const char *p = in;
	size_t n = len;
	if (c->n_pend > 0) {
		buf_reset(&c->scratch);
		buf_append(&c->scratch, c->pend, c->n_pend);
		buf_append(&c->scratch, in, len);
		p = c->scratch.data;
		n = c->scratch.len;
		c->n_pend = 0;
	}
	size_t rest = iconv_run(c, p, n, out);
	memcpy(c->pend, p + n - rest, rest);
	c->n_pend = rest;
	if (out->data == NULL)
		buf_reserve(out, 1);
}

void mime_charset_finish(struct mime_charset *c, struct buf *out)
{
	if (c->mode != CS_ICONV)
		return;
	if (c->n_pend > 0)
		buf_append_str(out, "\xEF\xBF\xBD");   /* a sequence cut by the end */
	c->n_pend = 0;
	/* Shift state back to the initial one (ISO-2022-JP and friends). */
	char tail[64];
	char *op = tail;
	size_t room = sizeof(tail);
	if (iconv(c->cd, NULL, NULL, &op, &room) != (size_t)-1)
		buf_append(out, tail, (size_t)(op - tail));
}

void mime_charset_close(struct mime_charset **cp)
{
	struct mime_charset *c = *cp;
	if (c == NULL)
		return;
	if (c->mode == CS_ICONV)
		iconv_close(c->cd);
	buf_free(&c->scratch);
	free(c);
	*cp = NULL;
}

/* Whole text in one call. */
static void charset_convert(const char *name, size_t name_len, const char *in, size_t len, struct buf *out)
{
	struct mime_charset *c = mime_charset_open(name, name_len);
	mime_charset_feed(c, in, len, out);
	mime_charset_finish(c, out);
	mime_charset_close(&c);
}

/* ---- RFC 2047 ----------------------------------------------------------------------- */

/* An encoded word at p[0, len): "=?charset?e?text?=".  Fills the parts
 * and the word's length; false when p is not one. */
struct eword {
	const char *cs, *text;
	size_t cs_len, text_len, len;
	char enc;
};

static bool eword_parse(const char *p, size_t len, struct eword *w)
{
	if (len < 8 || p[0] != '=' || p[1] != '?')
		return false;
	size_t i = 2;
	while (i < len && i - 2 <= CHARSET_NAME_MAX + 16 && p[i] != '?' && p[i] > ' ' && p[i] < 0x7f)
		i++;
	if (i >= len || p[i] != '?' || i == 2)
		return false;
	w->cs = p + 2;
	w->cs_len = i - 2;
	if (i + 2 >= len || p[i + 2] != '?')
		return false;
	w->enc = (char)toupper((unsigned char)p[i + 1]);
	if (w->enc != 'B' && w->enc != 'Q')
		return false;
	size_t t = i + 3;
	size_t j = t;
	while (j + 1 < len && !(p[j] == '?' && p[j + 1] == '=')) {
		if (p[j] == ' ' || p[j] == '\t' || p[j] == '\r' || p[j] == '\n')
			return false;
		j++;
	}
	if (j + 1 >= len)
		return false;
	w->text = p + t;
	w->text_len = j - t;
	w->len = j + 2;
	return true;
}

static void eword_bytes(const struct eword *w, struct buf *out)
{
	if (w->enc == 'B') {
		struct mime_cte_decoder d;
		mime_cte_init(&d, MIME_CTE_BASE64);
		mime_cte_feed(&d, w->text, w->text_len, out);
		return;
	}
	for (size_t i = 0; i < w->text_len; i++) {
		char c = w->text[i];
		if (c == '_') {
			buf_append_char(out, ' ');
		} else if (c == '=' && i + 2 < w->text_len &&
			   hex_value((unsigned char)w->text[i + 1]) >= 0 &&
			   hex_value((unsigned char)w->text[i + 2]) >= 0) {
			buf_append_char(out, (char)(hex_value((unsigned char)w->text[i + 1]) * 16 +
						    hex_value((unsigned char)w->text[i + 2])));
			i += 2;
		} else {
			buf_append_char(out, c);
		}
	}
}

/* Decoded bytes of a run of encoded words in one charset, converted
 * together when the run ends. */
struct ew_run {
	struct buf bytes;
	char cs[CHARSET_NAME_MAX + 17];
	size_t cs_len;
};

static void ew_flush(struct ew_run *r, struct buf *out)
{
	if (r->cs_len > 0 || r->bytes.len > 0)
		charset_convert(r->cs, r->cs_len, r->bytes.data ? r->bytes.data : "", r->bytes.len, out);
	buf_reset(&r->bytes);
	r->cs_len = 0;
}

void mime_header_decode(const char *in, size_t len, struct buf *out)
{
	struct ew_run run = { BUF_INIT, "", 0 };
	size_t ws_start = 0, ws_len = 0;   /* white space after an encoded word, held back */
	bool after_word = false;
	size_t i = 0;
	while (i < len) {
		char c = in[i];
		struct eword w;
		if (c == '=' && eword_parse(in + i, len - i, &w)) {
			/* White space between two encoded words is dropped. */
			if (run.cs_len > 0 && (run.cs_len != w.cs_len || strncasecmp(run.cs, w.cs, w.cs_len) != 0))
				ew_flush(&run, out);
			if (run.cs_len == 0) {
				memcpy(run.cs, w.cs, w.cs_len);
				run.cs_len = w.cs_len;
			}
			eword_bytes(&w, &run.bytes);
			ws_len = 0;
			after_word = true;
			i += w.len;
			continue;
		}
		if (c == '\r' && i + 1 < len && in[i + 1] == '\n') {
			i++;   /* CRLF: as LF */
			continue;
		}
		if (c == '\r' || c == '\n') {
			i++;   /* unfolding: the line break goes, the white space after it stays */
			if (i < len && (in[i] == ' ' || in[i] == '\t'))
				continue;
			c = ' ';
			i--;
		}
		if ((c == ' ' || c == '\t') && after_word) {
			if (ws_len == 0)
				ws_start = i;
			ws_len = i - ws_start + 1;
			i++;
			continue;
		}
		if (after_word) {
			ew_flush(&run, out);
			for (size_t k = ws_start; k < ws_start + ws_len; k++)
				buf_append_char(out, in[k] == '\t' || in[k] == '\r' || in[k] == '\n' ? ' ' : in[k]);
			after_word = false;
			ws_len = 0;
		}
		buf_append_char(out, c == '\t' ? ' ' : c);
		i++;
	}
	ew_flush(&run, out);
	buf_free(&run.bytes);
	if (out->data == NULL)
		buf_reserve(out, 1);
}

/* ---- Content-Type parameters --------------------------------------------------------- */

static void skip_ws(const char **p, const char *end)
{
	while (*p < end && (**p == ' ' || **p == '\t' || **p == '\r' || **p == '\n'))
		(*p)++;
	if (*p < end && **p == '(') {
		int depth = 0;
		while (*p < end) {
			if (**p == '\\' && *p + 1 < end)
				(*p)++;
			else if (**p == '(')
				depth++;
			else if (**p == ')' && --depth == 0) {
				(*p)++;
				break;
			}
			(*p)++;
		}
		skip_ws(p, end);
	}
}

static void append_pct_decoded(struct buf *out, const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '%' && i + 2 < len && hex_value((unsigned char)s[i + 1]) >= 0 &&
		    hex_value((unsigned char)s[i + 2]) >= 0) {
			buf_append_char(out, (char)(hex_value((unsigned char)s[i + 1]) * 16 +
						    hex_value((unsigned char)s[i + 2])));
			i += 2;
		} else {
			buf_append_char(out, s[i]);
		}
	}
}

/* Drops "charset'language'" from an extended value. */
static size_t ext_value_start(const char *v, size_t len)
{
	const char *q1 = memchr(v, '\'', len);
	if (q1 == NULL)
		return 0;
	const char *q2 = memchr(q1 + 1, '\'', len - (size_t)(q1 + 1 - v));
	return q2 == NULL ? 0 : (size_t)(q2 + 1 - v);
}

bool mime_param_get(const char *value, size_t len, const char *name, struct buf *out)
{
	const char *p = value, *end = value + len;
	size_t name_len = strlen(name);
	struct buf plain = BUF_INIT, pieces[PARAM_PIECES_MAX];
	bool have_plain = false, have_ext = false, have_piece[PARAM_PIECES_MAX] = { false };
	struct buf ext = BUF_INIT;
	memset(pieces, 0, sizeof(pieces));
	const char *semi = memchr(p, ';', len);
	p = semi ? semi : end;
	/* Bounded: every pass moves past one ';'. */
	while (p < end && *p == ';') {
		p++;
		skip_ws(&p, end);
		const char *an = p;
		while (p < end && *p != '=' && *p != ';' && *p != ' ' && *p != '\t')
			p++;
		size_t al = (size_t)(p - an);
		skip_ws(&p, end);
		if (p >= end || *p != '=') {
			const char *next = memchr(p, ';', (size_t)(end - p));
			p = next ? next : end;
			continue;
		}
		p++;
		skip_ws(&p, end);
		struct buf v = BUF_INIT;
		if (p < end && *p == '"') {
			for (p++; p < end && *p != '"'; p++) {
				if (*p == '\\' && p + 1 < end)
					p++;
				if (*p != '\r' && *p != '\n')
					buf_append_char(&v, *p);
			}
			if (p < end)
				p++;
		} else {
			const char *vs = p;
			while (p < end && *p != ';' && *p != ' ' && *p != '\t' && *p != '\r' && *p != '\n' && *p != '(')
				p++;
			buf_append(&v, vs, (size_t)(p - vs));
		}
		const char *vd = v.data ? v.data : "";
		if (al >= name_len && strncasecmp(an, name, name_len) == 0) {
			const char *suffix = an + name_len;
			size_t sl = al - name_len;
			if (sl == 0 && !have_plain) {
				buf_append(&plain, vd, v.len);
				have_plain = true;
			} else if (sl == 1 && suffix[0] == '*' && !have_ext) {
				size_t st = ext_value_start(vd, v.len);
				append_pct_decoded(&ext, vd + st, v.len - st);
				have_ext = true;
			} else if (sl >= 2 && suffix[0] == '*' && isdigit((unsigned char)suffix[1])) {
				size_t k = 1, idx = 0;
				while (k < sl && isdigit((unsigned char)suffix[k]) && idx < PARAM_PIECES_MAX)
					idx = idx * 10 + (size_t)(suffix[k++] - '0');
				bool star = k < sl && suffix[k] == '*';
				if (idx < PARAM_PIECES_MAX && k + (star ? 1u : 0u) == sl && !have_piece[idx]) {
					size_t st = star && idx == 0 ? ext_value_start(vd, v.len) : 0;
					if (star)
						append_pct_decoded(&pieces[idx], vd + st, v.len - st);
					else
						buf_append(&pieces[idx], vd, v.len);
					have_piece[idx] = true;
				}
			}
		}
		buf_free(&v);
		skip_ws(&p, end);
		if (p < end && *p != ';') {
			const char *next = memchr(p, ';', (size_t)(end - p));
			p = next ? next : end;
		}
	}
	bool found = true;
	if (have_piece[0]) {
		for (size_t i = 0; i < PARAM_PIECES_MAX && have_piece[i]; i++)
			buf_append(out, pieces[i].data, pieces[i].len);
	} else if (have_ext) {
		buf_append(out, ext.data, ext.len);
	} else if (have_plain) {
		buf_append(out, plain.data, plain.len);
	} else {
		found = false;
	}
	for (size_t i = 0; i < PARAM_PIECES_MAX; i++)
		buf_free(&pieces[i]);
	buf_free(&plain);
	buf_free(&ext);
	if (out->data == NULL)
		buf_reserve(out, 1);
	return found;
}

/* ---- header fields ------------------------------------------------------------------ */

bool mime_header_next(const char *h, size_t len, size_t *pos, struct mime_field *f)
{
	size_t i = *pos;
	/* Bounded: every pass consumes one line. */
	while (i < len) {
		const char *line = h + i;
		const char *nl = memchr(line, '\n', len - i);
		size_t ll = nl ? (size_t)(nl - line) + 1 : len - i;
		size_t start = i;
		i += ll;
		while (i < len && (h[i] == ' ' || h[i] == '\t')) {
			const char *c = h + i;
			const char *cnl = memchr(c, '\n', len - i);
			i += cnl ? (size_t)(cnl - c) + 1 : len - i;
		}
		if (line[0] == ' ' || line[0] == '\t')
			continue;
		const char *colon = memchr(line, ':', ll);
		if (colon == NULL)
			continue;
		size_t nlen = (size_t)(colon - line);
		while (nlen > 0 && (line[nlen - 1] == ' ' || line[nlen - 1] == '\t'))
			nlen--;
		if (nlen == 0)
			continue;
		f->name = line;
		f->name_len = nlen;
		f->value = colon + 1;
		f->value_len = i - start - (size_t)(colon + 1 - line);
		*pos = i;
		return true;
	}
	*pos = i;
	return false;
}

/* ---- text extraction ---------------------------------------------------------------- */

enum scan_state { SC_HEADER, SC_TEXT, SC_SKIP };

struct scan_level {
	char boundary[SCAN_BOUNDARY_MAX];
	size_t len;
	bool digest;
};

struct mime_text_scan {
	unsigned flags;
	mime_text_fn *fn;
	void *ctx;
	enum scan_state state;
	bool top;                  /* the header being read is the message's own */
	bool is_msg;               /* the header being read is a message's (not a part's) */
	bool digest_child;         /* the part being read defaults to message/rfc822 */
	unsigned nested;           /* message/rfc822 levels entered */
	struct scan_level lv[MIME_MAX_DEPTH];
	size_t depth;
	struct buf line;           /* the start of the current line */
	bool line_long;            /* the current line outgrew `line`: streamed */
	struct buf header;         /* the header block being read, bounded */
	bool header_full;
	struct mime_cte_decoder cte;
	struct mime_charset *cs;
	struct buf t1, t2;
};

struct mime_text_scan *mime_text_scan_new(unsigned flags, mime_text_fn *fn, void *ctx)
{
	struct mime_text_scan *s = xcalloc(1, sizeof(*s));
	s->flags = flags;
	s->fn = fn;
	s->ctx = ctx;
	s->state = SC_HEADER;
	s->top = true;
	s->is_msg = true;
	return s;
}

void mime_text_scan_free(struct mime_text_scan **sp)
{
	struct mime_text_scan *s = *sp;
	if (s == NULL)
		return;
	mime_charset_close(&s->cs);
	buf_free(&s->line);
	buf_free(&s->header);
	buf_free(&s->t1);
	buf_free(&s->t2);
	free(s);
	*sp = NULL;
}

static void scan_emit(struct mime_text_scan *s, const char *p, size_t len)
{
	if (len > 0)
		s->fn(s->ctx, p, len);
}

/* Ends the text part being decoded (if any) and tells the caller. */
static void scan_end_part(struct mime_text_scan *s)
{
	if (s->state == SC_TEXT) {
		buf_reset(&s->t1);
		buf_reset(&s->t2);
		mime_cte_finish(&s->cte, &s->t1);
		mime_charset_feed(s->cs, s->t1.data ? s->t1.data : "", s->t1.len, &s->t2);
		mime_charset_finish(s->cs, &s->t2);
		scan_emit(s, s->t2.data, s->t2.len);
		mime_charset_close(&s->cs);
	}
	s->fn(s->ctx, NULL, 0);
}

static void scan_text(struct mime_text_scan *s, const char *p, size_t len)
{
	buf_reset(&s->t1);
	buf_reset(&s->t2);
	mime_cte_feed(&s->cte, p, len, &s->t1);
	mime_charset_feed(s->cs, s->t1.data, s->t1.len, &s->t2);
	scan_emit(s, s->t2.data, s->t2.len);
}

/* The decoded header fields, one per line. */
static void scan_emit_header(struct mime_text_scan *s)
{
	size_t pos = 0;
	struct mime_field f;
	struct buf out = BUF_INIT;
	while (mime_header_next(s->header.data, s->header.len, &pos, &f)) {
		const char *v = f.value;
		size_t vl = f.value_len;
		while (vl > 0 && (*v == ' ' || *v == '\t')) {
			v++;
			vl--;
		}
		while (vl > 0 && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' ' || v[vl - 1] == '\t'))
			vl--;
		buf_append(&out, f.name, f.name_len);
		buf_append_str(&out, ": ");
		mime_header_decode(v, vl, &out);
		buf_append_char(&out, '\n');
		if (out.len >= 16384) {
			scan_emit(s, out.data, out.len);
			buf_reset(&out);
		}
	}
	scan_emit(s, out.data, out.len);
	buf_free(&out);
	s->fn(s->ctx, NULL, 0);
}

static bool field_value(const struct buf *h, const char *name, struct mime_field *out)
{
	size_t pos = 0;
	size_t nl = strlen(name);
	while (mime_header_next(h->data, h->len, &pos, out)) {
		if (out->name_len == nl && strncasecmp(out->name, name, nl) == 0)
			return true;
	}
	return false;
}

/* The header block is complete: how is the body read? */
static void scan_header_done(struct mime_text_scan *s)
{
	if (s->header.data == NULL)
		buf_reserve(&s->header, 1);
	if (s->is_msg && (!s->top || (s->flags & MIME_TEXT_HEADER)))
		scan_emit_header(s);   /* embedded messages' headers are body text */
	struct mime_field ct, te;
	bool has_ct = field_value(&s->header, "content-type", &ct);
	enum mime_cte cte = field_value(&s->header, "content-transfer-encoding", &te)
				    ? mime_cte_from_name(te.value, te.value_len)
				    : MIME_CTE_IDENTITY;
	char type[32] = "", sub[32] = "";
	if (has_ct) {
		const char *p = ct.value, *end = ct.value + ct.value_len;
		skip_ws(&p, end);
		size_t k = 0;
		while (p < end && *p != '/' && *p != ';' && *p != ' ' && k + 1 < sizeof(type))
			type[k++] = (char)tolower((unsigned char)*p++);
		type[k] = '\0';
		if (p < end && *p == '/') {
			p++;
			k = 0;
			while (p < end && *p != ';' && *p != ' ' && *p != '\r' && *p != '\n' && k + 1 < sizeof(sub))
				sub[k++] = (char)tolower((unsigned char)*p++);
			sub[k] = '\0';
		} else {
			type[0] = '\0';   /* unparsable: the default */
		}
	}
	if (type[0] == '\0') {
		snprintf(type, sizeof(type), "%s", s->digest_child ? "message" : "text");
		snprintf(sub, sizeof(sub), "%s", s->digest_child ? "rfc822" : "plain");
		has_ct = false;
	}
	buf_reset(&s->header);
	s->header_full = false;
	s->top = false;
	s->is_msg = false;
	s->digest_child = false;
	struct buf bd = BUF_INIT;
	if (strcmp(type, "multipart") == 0 && has_ct && s->depth < MIME_MAX_DEPTH &&
	    mime_param_get(ct.value, ct.value_len, "boundary", &bd) && bd.len > 0 && bd.len < SCAN_BOUNDARY_MAX) {
		struct scan_level *l = &s->lv[s->depth++];
		memcpy(l->boundary, bd.data, bd.len);
		l->len = bd.len;
		l->digest = strcmp(sub, "digest") == 0;
		s->state = SC_SKIP;   /* the preamble */
	} else if (strcmp(type, "message") == 0 && (strcmp(sub, "rfc822") == 0 || strcmp(sub, "global") == 0) &&
		   s->nested < MIME_MAX_DEPTH) {
		s->nested++;
		s->state = SC_HEADER;
		s->is_msg = true;
	} else if (strcmp(type, "text") == 0 || (strcmp(type, "multipart") != 0 && cte != MIME_CTE_BASE64)) {
		/* Text, and other parts that are readable as they are; base64
		 * non-text parts (images, archives) are never searched. */
		struct buf cs = BUF_INIT;
		bool has_cs = has_ct && strcmp(type, "text") == 0 &&
			      mime_param_get(ct.value, ct.value_len, "charset", &cs);
		s->cs = mime_charset_open(has_cs ? cs.data : NULL, has_cs ? cs.len : 0);
		buf_free(&cs);
		mime_cte_init(&s->cte, cte);
		s->state = SC_TEXT;
	} else {
		s->state = SC_SKIP;
	}
	buf_free(&bd);
}

/* Is line[0, len) a boundary of an open multipart?  Returns the level
 * + 1 (0: no) and whether it is a close delimiter. */
static size_t scan_boundary(const struct mime_text_scan *s, const char *line, size_t len, bool *close)
{
	if (len < 3 || line[0] != '-' || line[1] != '-')
		return 0;
	for (size_t d = s->depth; d > 0; d--) {
		const struct scan_level *l = &s->lv[d - 1];
		if (len < 2 + l->len || memcmp(line + 2, l->boundary, l->len) != 0)
			continue;
		size_t i = 2 + l->len;
		*close = i + 1 < len && line[i] == '-' && line[i + 1] == '-';
		if (*close)
			i += 2;
		while (i < len && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r' || line[i] == '\n'))
			i++;
		if (i == len)
			return d;
	}
	return 0;
}

/* Content that is not a boundary line (a whole line, or part of a long one). */
static void scan_content(struct mime_text_scan *s, const char *p, size_t len)
{
	if (s->state == SC_TEXT) {
		scan_text(s, p, len);
	} else if (s->state == SC_HEADER && !s->header_full) {
		size_t room = MIME_SCAN_HEADER_MAX - s->header.len;
		buf_append(&s->header, p, len < room ? len : room);
		s->header_full = len >= room;
	}
}

static void scan_line(struct mime_text_scan *s, const char *line, size_t len)
{
	bool close = false;
	size_t d = scan_boundary(s, line, len, &close);
	if (d > 0) {
		if (s->state == SC_HEADER)
			scan_header_done(s);   /* a part without a body */
		if (s->state == SC_TEXT || s->state == SC_HEADER)
			scan_end_part(s);
		s->state = SC_SKIP;
		mime_charset_close(&s->cs);
		buf_reset(&s->header);
		s->header_full = false;
		if (close) {
			s->depth = d - 1;   /* the epilogue is skipped */
		} else {
			s->depth = d;
			s->state = SC_HEADER;
			s->digest_child = s->lv[d - 1].digest;
		}
		return;
	}
	if (s->state == SC_HEADER && (len == 1 || (len == 2 && line[0] == '\r')) && line[len - 1] == '\n') {
		scan_header_done(s);
		return;
	}
	scan_content(s, line, len);
}

void mime_text_scan_feed(struct mime_text_scan *s, const char *data, size_t len)
{
	/* Bounded: every pass consumes at least one byte. */
	while (len > 0) {
		const char *nl = memchr(data, '\n', len);
		size_t n = nl ? (size_t)(nl - data) + 1 : len;
		if (s->line_long) {
			scan_content(s, data, n);   /* the rest of a long line */
			if (nl != NULL)
				s->line_long = false;
		} else if (s->line.len + n > MIME_SCAN_LINE_MAX) {
			/* Too long to be a boundary: stream it. */
			scan_content(s, s->line.data ? s->line.data : "", s->line.len);
			buf_reset(&s->line);
			scan_content(s, data, n);
			s->line_long = nl == NULL;
		} else if (nl != NULL) {
			if (s->line.len == 0) {
				scan_line(s, data, n);
			} else {
				buf_append(&s->line, data, n);
				scan_line(s, s->line.data, s->line.len);
				buf_reset(&s->line);
			}
		} else {
			buf_append(&s->line, data, n);
		}
		data += n;
		len -= n;
	}
}

void mime_text_scan_finish(struct mime_text_scan *s)
{
	if (s->line.len > 0) {
		scan_line(s, s->line.data, s->line.len);
		buf_reset(&s->line);
	}
	if (s->state == SC_HEADER)
		scan_header_done(s);
	if (s->state == SC_TEXT)
		scan_end_part(s);
	s->state = SC_SKIP;
}

/* ---- dates ------------------------------------------------------------------------------ */

/* Days since 1970-01-01 of a civil date (proleptic Gregorian). */
static int64_t civil_days(int64_t y, unsigned m, unsigned d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	unsigned yoe = (unsigned)(y - era * 400);
	unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (int64_t)doe - 719468;
}

/* Next word of a date: digits, letters or one sign+digits; comments and
 * separators skipped. */
static size_t date_word(const char **p, const char *end, const char **w)
{
	while (*p < end) {
		unsigned char c = (unsigned char)**p;
		if (c == '(') {
			const char *q = *p;
			skip_ws(&q, end);
			if (q == *p)
				q++;
			*p = q;
		} else if (isalnum(c) || c == '+' || c == '-') {
			break;
		} else {
			(*p)++;
		}
	}
	*w = *p;
	if (*p < end && (**p == '+' || **p == '-'))
		(*p)++;
	while (*p < end && isalnum((unsigned char)**p))
		(*p)++;
	return (size_t)(*p - *w);
}

static bool date_number(const char *w, size_t n, long max, long *v)
{
	if (n == 0 || n > 9)
		return false;
	long x = 0;
	for (size_t i = 0; i < n; i++) {
		if (!isdigit((unsigned char)w[i]))
			return false;
		x = x * 10 + (w[i] - '0');
	}
	*v = x;
	return x <= max;
}

static int date_zone(const char *w, size_t n, bool *ok)
{
	static const struct {
		const char *name;
		int minutes;
	} zones[] = {
		{ "UT", 0 },       { "UTC", 0 },      { "GMT", 0 },      { "Z", 0 },
		{ "EST", -5 * 60 }, { "EDT", -4 * 60 }, { "CST", -6 * 60 }, { "CDT", -5 * 60 },
		{ "MST", -7 * 60 }, { "MDT", -6 * 60 }, { "PST", -8 * 60 }, { "PDT", -7 * 60 },
	};
	*ok = true;
	if (n == 5 && (w[0] == '+' || w[0] == '-')) {
		long hhmm;
		if (date_number(w + 1, 4, 9999, &hhmm) && hhmm % 100 < 60) {
			int z = (int)(hhmm / 100 * 60 + hhmm % 100);
			return w[0] == '-' ? -z : z;
		}
	}
	for (size_t i = 0; i < ARRAY_LEN(zones); i++) {
		if (strlen(zones[i].name) == n && strncasecmp(zones[i].name, w, n) == 0)
			return zones[i].minutes;
	}
	*ok = n == 1 && isalpha((unsigned char)w[0]);   /* military zones: RFC 5322 says treat as 0 */
	return 0;
}

bool mime_date_parse(const char *value, size_t len, int64_t *utc_r, int *zone_r)
{
	static const char *const mon[] = { "jan", "feb", "mar", "apr", "may", "jun",
					   "jul", "aug", "sep", "oct", "nov", "dec" };
	const char *p = value, *end = value + len, *w;
	size_t n = date_word(&p, end, &w);
	if (n > 0 && isalpha((unsigned char)w[0]))
		n = date_word(&p, end, &w);   /* the day of the week */
	long day, year, hh = 0, mm = 0, ss = 0;
	if (!date_number(w, n, 31, &day) || day < 1)
		return false;
	n = date_word(&p, end, &w);
	int month = 0;
	for (int i = 0; i < 12 && n >= 3; i++) {
		if (strncasecmp(w, mon[i], 3) == 0)
			month = i + 1;
	}
	if (month == 0)
		return false;
	n = date_word(&p, end, &w);
	if (!date_number(w, n, 9999, &year))
		return false;
	if (n <= 2)
		year += year < 50 ? 2000 : 1900;
	else if (n == 3)
		year += 1900;
	/* hh:mm[:ss]: numbers separated by ':' (date_word skips the colons). */
	const char *t = p;
	while (t < end && (*t == ' ' || *t == '\t' || *t == '\r' || *t == '\n'))
		t++;
	int zone = 0;
	if (t < end && isdigit((unsigned char)*t)) {
		n = date_word(&p, end, &w);
		if (!date_number(w, n, 23, &hh))
			return false;
		n = date_word(&p, end, &w);
		if (!date_number(w, n, 59, &mm))
			return false;
		t = p;
		if (t < end && *t == ':') {
			n = date_word(&p, end, &w);
			if (!date_number(w, n, 60, &ss))
				return false;
		}
		n = date_word(&p, end, &w);
		if (n > 0) {
			bool ok;
			zone = date_zone(w, n, &ok);
			if (!ok)
				zone = 0;
		}
	}
	int64_t days = civil_days(year, (unsigned)month, (unsigned)day);
	*utc_r = days * 86400 + hh * 3600 + mm * 60 + ss - (int64_t)zone * 60;
	if (zone_r != NULL)
		*zone_r = zone;
	return true;
}

/* ---- RFC 5256 base subject ------------------------------------------------------------- */

static bool is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

/* A subj-blob ("[" *BLOBCHAR "]" *WSP) at s[i]: its length, or 0. */
static size_t subj_blob(const char *s, size_t len, size_t i)
{
	if (i >= len || s[i] != '[')
		return 0;
	size_t j = i + 1;
	while (j < len && s[j] != '[' && s[j] != ']')
		j++;
	if (j >= len || s[j] != ']')
		return 0;
	j++;
	while (j < len && is_wsp(s[j]))
		j++;
	return j - i;
}

/* *subj-blob subj-refwd at s[i]: its length, or 0.
 * subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":" */
static size_t subj_leader(const char *s, size_t len, size_t i)
{
	size_t j = i, b;
	while ((b = subj_blob(s, len, j)) > 0)
		j += b;
	if (j + 2 <= len && strncasecmp(s + j, "re", 2) == 0) {
		j += 2;
	} else if (j + 2 <= len && strncasecmp(s + j, "fw", 2) == 0) {
		j += 2;
		if (j < len && (s[j] == 'd' || s[j] == 'D'))
			j++;
	} else {
		return 0;
	}
	while (j < len && is_wsp(s[j]))
		j++;
	j += subj_blob(s, len, j);
	if (j >= len || s[j] != ':')
		return 0;
	return j + 1 - i;
}

void mime_base_subject(const char *raw, size_t raw_len, struct buf *out, bool *is_reply_r)
{
	struct buf dec = BUF_INIT;
	mime_header_decode(raw, raw_len, &dec);
	/* (1) white space runs become one space. */
	char *s = dec.data;
	size_t len = 0;
	for (size_t i = 0; i < dec.len; i++) {
		char c = dec.data[i] == '\t' || dec.data[i] == '\r' || dec.data[i] == '\n' ? ' ' : dec.data[i];
		if (c == ' ' && len > 0 && s[len - 1] == ' ')
			continue;
		s[len++] = c;
	}
	size_t start = 0;
	bool reply = false;
	/* Bounded: every pass removes text, or stops. */
	for (;;) {
		/* (2) trailers: "(fwd)" and white space. */
		for (;;) {
			if (len > start && s[len - 1] == ' ') {
				len--;
			} else if (len >= start + 5 && strncasecmp(s + len - 5, "(fwd)", 5) == 0) {
				len -= 5;
				reply = true;
			} else {
				break;
			}
		}
		/* (3)-(5) leaders and blobs. */
		bool changed = true;
		while (changed) {
			changed = false;
			size_t l;
			while (start < len && is_wsp(s[start])) {
				start++;
				changed = true;
			}
			if ((l = subj_leader(s, len, start)) > 0) {
				start += l;
				reply = true;
				changed = true;
				continue;
			}
			l = subj_blob(s, len, start);
			if (l > 0) {
				/* Only when a non-empty subject remains. */
				bool rest = false;
				for (size_t k = start + l; k < len && !rest; k++)
					rest = !is_wsp(s[k]);
				if (rest) {
					start += l;
					changed = true;
				}
			}
		}
		/* (6) "[fwd: ... ]" */
		if (len - start >= 6 && strncasecmp(s + start, "[fwd:", 5) == 0 && s[len - 1] == ']') {
			start += 5;
			len--;
			reply = true;
			continue;
		}
		break;
	}
	if (len > start)
		buf_append(out, s + start, len - start);
	if (out->data == NULL)
		buf_reserve(out, 1);
	buf_free(&dec);
	if (is_reply_r != NULL)
		*is_reply_r = reply;
}

/* ---- first address of an address list ------------------------------------------------ */

/* Appends p[0, len) without comments, quotes unquoted; outer white
 * space trimmed and runs of it collapsed. */
static void addr_clean(const char *p, size_t len, struct buf *out)
{
	size_t start = out->len;
	bool space = false;
	for (size_t i = 0; i < len; i++) {
		char c = p[i];
		if (c == '(') {
			int depth = 0;
			for (; i < len; i++) {
				if (p[i] == '\\' && i + 1 < len)
					i++;
				else if (p[i] == '(')
					depth++;
				else if (p[i] == ')' && --depth == 0)
					break;
			}
			space = true;
			continue;
		}
		if (c == '"') {
			for (i++; i < len && p[i] != '"'; i++) {
				if (p[i] == '\\' && i + 1 < len)
					i++;
				if (space && out->len > start)
					buf_append_char(out, ' ');
				space = false;
				if (p[i] != '\r' && p[i] != '\n')
					buf_append_char(out, p[i]);
			}
			continue;
		}
		if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
			space = true;
			continue;
		}
		if (space && out->len > start)
			buf_append_char(out, ' ');
		space = false;
		buf_append_char(out, c);
	}
	if (out->data == NULL)
		buf_reserve(out, 1);
}

/* End of the address starting at p[i]: the top-level ',' or ';' or ':'
 * (outside quotes, comments and angle brackets). */
static size_t addr_segment_end(const char *p, size_t len, size_t i, char *stop)
{
	int paren = 0;
	bool quote = false, angle = false;
	for (; i < len; i++) {
		char c = p[i];
		if (c == '\\' && (quote || paren) && i + 1 < len) {
			i++;
			continue;
		}
		if (quote) {
			quote = c != '"';
			continue;
		}
		if (c == '"' && paren == 0) {
			quote = true;
		} else if (c == '(') {
			paren++;
		} else if (c == ')' && paren > 0) {
			paren--;
		} else if (paren == 0 && c == '<') {
			angle = true;
		} else if (paren == 0 && c == '>') {
			angle = false;
		} else if (paren == 0 && !angle && (c == ',' || c == ';' || c == ':')) {
			*stop = c;
			return i;
		}
	}
	*stop = '\0';
	return len;
}

bool mime_first_address(const char *value, size_t len, struct mime_address *out)
{
	buf_reset(&out->display);
	buf_reset(&out->mailbox);
	buf_reset(&out->host);
	size_t i = 0;
	/* Bounded: every pass moves past one segment. */
	while (i < len) {
		char stop;
		size_t e = addr_segment_end(value, len, i, &stop);
		if (stop == ':') {   /* a group's name: its members follow */
			i = e + 1;
			continue;
		}
		const char *seg = value + i;
		size_t sl = e - i;
		i = e + 1;
		const char *lt = memchr(seg, '<', sl);
		const char *spec = seg;
		size_t spec_len = sl;
		struct buf phrase = BUF_INIT;
		if (lt != NULL) {
			const char *gt = memchr(lt, '>', sl - (size_t)(lt - seg));
			addr_clean(seg, (size_t)(lt - seg), &phrase);
			spec = lt + 1;
			spec_len = gt ? (size_t)(gt - spec) : sl - (size_t)(spec - seg);
			const char *colon = memchr(spec, ':', spec_len);   /* obsolete route */
			if (colon != NULL) {
				spec_len -= (size_t)(colon + 1 - spec);
				spec = colon + 1;
			}
		}
		struct buf addr = BUF_INIT;
		addr_clean(spec, spec_len, &addr);
		if (addr.len == 0) {
			buf_free(&addr);
			buf_free(&phrase);
			continue;
		}
		char *at = memrchr(addr.data, '@', addr.len);
		size_t local = at ? (size_t)(at - addr.data) : addr.len;
		buf_append(&out->mailbox, addr.data, local);
		if (at != NULL)
			buf_append(&out->host, at + 1, addr.len - local - 1);
		if (phrase.len > 0)
			mime_header_decode(phrase.data, phrase.len, &out->display);
		buf_free(&addr);
		buf_free(&phrase);
		return true;
	}
	return false;
}

/* ---- message ids ------------------------------------------------------------------------ */

bool mime_msgid_next(const char *value, size_t len, size_t *pos, struct buf *out)
{
	size_t i = *pos;
	/* Bounded: every pass moves forward. */
	while (i < len) {
		const char *lt = memchr(value + i, '<', len - i);
		if (lt == NULL)
			break;
		size_t s = (size_t)(lt - value) + 1;
		const char *gt = memchr(value + s, '>', len - s);
		if (gt == NULL)
			break;
		size_t e = (size_t)(gt - value);
		i = e + 1;
		buf_reset(out);
		for (size_t k = s; k < e; k++) {
			char c = value[k];
			if (c != ' ' && c != '\t' && c != '\r' && c != '\n')
				buf_append_char(out, c);
		}
		if (out->len > 0 && out->len <= MIME_MSGID_MAX && memchr(out->data, '<', out->len) == NULL) {
			*pos = i;
			return true;
		}
	}
	*pos = len;
	return false;
}

/* ---- sort keys -------------------------------------------------------------------------- */

/* Canonical decompositions (UnicodeData.txt) of the precomposed small
 * letters of Latin-1, Latin Extended-A, Greek and Cyrillic: what case
 * folding leaves of their capitals too. */
static const struct {
	uint16_t cp, base, mark, mark2;
} decomp[] = {
	{ 0x00E0, 'a', 0x0300, 0 }, { 0x00E1, 'a', 0x0301, 0 }, { 0x00E2, 'a', 0x0302, 0 },
	{ 0x00E3, 'a', 0x0303, 0 }, { 0x00E4, 'a', 0x0308, 0 }, { 0x00E5, 'a', 0x030A, 0 },
	{ 0x00E7, 'c', 0x0327, 0 }, { 0x00E8, 'e', 0x0300, 0 }, { 0x00E9, 'e', 0x0301, 0 },
	{ 0x00EA, 'e', 0x0302, 0 }, { 0x00EB, 'e', 0x0308, 0 }, { 0x00EC, 'i', 0x0300, 0 },
	{ 0x00ED, 'i', 0x0301, 0 }, { 0x00EE, 'i', 0x0302, 0 }, { 0x00EF, 'i', 0x0308, 0 },
	{ 0x00F1, 'n', 0x0303, 0 }, { 0x00F2, 'o', 0x0300, 0 }, { 0x00F3, 'o', 0x0301, 0 },
	{ 0x00F4, 'o', 0x0302, 0 }, { 0x00F5, 'o', 0x0303, 0 }, { 0x00F6, 'o', 0x0308, 0 },
	{ 0x00F9, 'u', 0x0300, 0 }, { 0x00FA, 'u', 0x0301, 0 }, { 0x00FB, 'u', 0x0302, 0 },
	{ 0x00FC, 'u', 0x0308, 0 }, { 0x00FD, 'y', 0x0301, 0 }, { 0x00FF, 'y', 0x0308, 0 },
	{ 0x0101, 'a', 0x0304, 0 }, { 0x0103, 'a', 0x0306, 0 }, { 0x0105, 'a', 0x0328, 0 },
	{ 0x0107, 'c', 0x0301, 0 }, { 0x0109, 'c', 0x0302, 0 }, { 0x010B, 'c', 0x0307, 0 },
	{ 0x010D, 'c', 0x030C, 0 }, { 0x010F, 'd', 0x030C, 0 }, { 0x0113, 'e', 0x0304, 0 },
	{ 0x0115, 'e', 0x0306, 0 }, { 0x0117, 'e', 0x0307, 0 }, { 0x0119, 'e', 0x0328, 0 },
	{ 0x011B, 'e', 0x030C, 0 }, { 0x011D, 'g', 0x0302, 0 }, { 0x011F, 'g', 0x0306, 0 },
	{ 0x0121, 'g', 0x0307, 0 }, { 0x0123, 'g', 0x0327, 0 }, { 0x0125, 'h', 0x0302, 0 },
	{ 0x0129, 'i', 0x0303, 0 }, { 0x012B, 'i', 0x0304, 0 }, { 0x012D, 'i', 0x0306, 0 },
	{ 0x012F, 'i', 0x0328, 0 }, { 0x0135, 'j', 0x0302, 0 }, { 0x0137, 'k', 0x0327, 0 },
	{ 0x013A, 'l', 0x0301, 0 }, { 0x013C, 'l', 0x0327, 0 }, { 0x013E, 'l', 0x030C, 0 },
	{ 0x0144, 'n', 0x0301, 0 }, { 0x0146, 'n', 0x0327, 0 }, { 0x0148, 'n', 0x030C, 0 },
	{ 0x014D, 'o', 0x0304, 0 }, { 0x014F, 'o', 0x0306, 0 }, { 0x0151, 'o', 0x030B, 0 },
	{ 0x0155, 'r', 0x0301, 0 }, { 0x0157, 'r', 0x0327, 0 }, { 0x0159, 'r', 0x030C, 0 },
	{ 0x015B, 's', 0x0301, 0 }, { 0x015D, 's', 0x0302, 0 }, { 0x015F, 's', 0x0327, 0 },
	{ 0x0161, 's', 0x030C, 0 }, { 0x0163, 't', 0x0327, 0 }, { 0x0165, 't', 0x030C, 0 },
	{ 0x0169, 'u', 0x0303, 0 }, { 0x016B, 'u', 0x0304, 0 }, { 0x016D, 'u', 0x0306, 0 },
	{ 0x016F, 'u', 0x030A, 0 }, { 0x0171, 'u', 0x030B, 0 }, { 0x0173, 'u', 0x0328, 0 },
	{ 0x0175, 'w', 0x0302, 0 }, { 0x0177, 'y', 0x0302, 0 }, { 0x017A, 'z', 0x0301, 0 },
	{ 0x017C, 'z', 0x0307, 0 }, { 0x017E, 'z', 0x030C, 0 },
	{ 0x0390, 0x03B9, 0x0308, 0x0301 }, { 0x03AC, 0x03B1, 0x0301, 0 }, { 0x03AD, 0x03B5, 0x0301, 0 },
	{ 0x03AE, 0x03B7, 0x0301, 0 }, { 0x03AF, 0x03B9, 0x0301, 0 }, { 0x03B0, 0x03C5, 0x0308, 0x0301 },
	{ 0x03CA, 0x03B9, 0x0308, 0 }, { 0x03CB, 0x03C5, 0x0308, 0 }, { 0x03CC, 0x03BF, 0x0301, 0 },
	{ 0x03CD, 0x03C5, 0x0301, 0 }, { 0x03CE, 0x03C9, 0x0301, 0 },
	{ 0x0439, 0x0438, 0x0306, 0 }, { 0x0450, 0x0435, 0x0300, 0 }, { 0x0451, 0x0435, 0x0308, 0 },
	{ 0x0453, 0x0433, 0x0301, 0 }, { 0x0457, 0x0456, 0x0308, 0 }, { 0x045C, 0x043A, 0x0301, 0 },
	{ 0x045D, 0x0438, 0x0300, 0 }, { 0x045E, 0x0443, 0x0306, 0 },
};

void mime_sort_key(const char *in, size_t len, struct buf *out)
{
	struct buf f = BUF_INIT;
	mime_fold_str(in, len, &f);
	const unsigned char *p = (const unsigned char *)f.data;
	for (size_t i = 0; i < f.len;) {
		size_t n = utf8_seq_len(p[i]);
		uint32_t c;
		if (n <= 1 || i + n > f.len || !utf8_decode(p + i, n, &c)) {
			unsigned char b = p[i];
			buf_append_char(out, (char)(b >= 'a' && b <= 'z' ? b - 32 : b));
			i++;
			continue;
		}
		i += n;
		size_t lo = 0, hi = ARRAY_LEN(decomp);
		while (lo < hi) {
			size_t mid = lo + (hi - lo) / 2;
			if (decomp[mid].cp < c)
				lo = mid + 1;
			else
				hi = mid;
		}
		if (lo < ARRAY_LEN(decomp) && decomp[lo].cp == c) {
			uint32_t base = decomp[lo].base;
			utf8_put(out, base >= 'a' && base <= 'z' ? base - 32 : base);
			utf8_put(out, decomp[lo].mark);
			if (decomp[lo].mark2 != 0)
				utf8_put(out, decomp[lo].mark2);
		} else {
			utf8_put(out, c);
		}
	}
	if (out->data == NULL)
		buf_reserve(out, 1);
	buf_free(&f);
}
