/*
 * mime_pack.c - the compact form of a message's cached MIME structure:
 * what the index stores instead of the ENVELOPE, BODYSTRUCTURE and BODY
 * texts and the part map (see mime.h, docs/STORAGE.md "MIME cache").
 *
 * Owns: mime_pack (texts -> bytes) and mime_unpack (bytes -> the same
 * texts, byte for byte).  The texts are IMAP s-expressions written by
 * mime_write.c and mime_envelope.c; the form keeps their syntax as tokens
 * and drops what can be recomputed:
 *   - BODY is not stored: it is BODYSTRUCTURE without its extension data
 *     (derive_body), which a T_EXT before each body's extension data lets
 *     the decoder write in the same pass as BODYSTRUCTURE; unless that
 *     does not give the BODY text given (then it is stored);
 *   - parentheses, NIL, separating spaces: one token byte each, the space
 *     folded into the next token's top bit;
 *   - numbers (sizes, line counts): LEB128 varints;
 *   - strings common in MIME structure ("text", "plain", "charset",
 *     "us-ascii", "base64", ...): one byte from a fixed dictionary;
 *   - a string already seen in the record: a reference to it; a string
 *     holding one (a Message-ID ending in the From domain): a prefix, the
 *     reference and a suffix;
 *   - a list equal to an earlier list of the same text (Sender and
 *     Reply-To defaulting to From): a reference to it;
 *   - an RFC 5322 date in the common form ("Sun, 29 Nov 2026 03:16:34
 *     +0000"): 9 bytes of fields.
 *
 * Record: byte 0 = PACK_VERSION << 4 | flags, then
 *   tokens:  envelope tokens T_END, bodystructure tokens T_END,
 *            [PACK_F_BODY: body tokens T_END], varint n, n bytes part map
 *   PACK_F_RAW: varint n + n bytes for each of the three texts, then the
 *            part map as above.
 * A token byte is T_SPACE (a space precedes it) | its kind (below).
 *
 * Invariants: mime_pack decodes what it wrote and compares it with its
 * input before returning; any difference (a text this file does not know
 * how to tokenise) gives a PACK_F_RAW record, so mime_unpack(mime_pack(x))
 * == x always.  The dictionary below is part of the format: entries may be
 * appended (with a new PACK_VERSION for old readers), never changed.
 *
 * Hostile or damaged input (mime_unpack): every length is checked against
 * the record, parentheses must balance, strings must be valid IMAP quoted
 * strings or literals without NUL, each text is one parenthesised list
 * (PACK_F_RAW texts: any text without NUL), at most PACK_TEXT_MAX
 * bytes and list references copy at most LIST_REF_MAX bytes, so the
 * output is bounded and a token text is always valid IMAP syntax.
 * Damage gives false, never a crash.
 *
 * Threads: no shared state; the dictionary is constant.
 */
#include "mime_int.h"

#include <stdlib.h>
#include <string.h>

#define PACK_VERSION 1
#define PACK_F_BODY 1u            /* BODY stored: it is not the derived one */
#define PACK_F_RAW 2u             /* texts stored as they are */

#define T_SPACE 0x80u
enum {
	T_END = 0,                /* end of a text */
	T_OPEN, T_CLOSE, T_NIL,   /* "(", ")", "NIL" */
	T_QUOTED,                 /* varint n, n bytes: a quoted string's contents, escapes kept */
	T_LITERAL,                /* varint n, n bytes: "{n}\r\n" and the bytes */
	T_NUMBER,                 /* varint */
	T_STR_REF,                /* varint i: the i-th T_QUOTED string of the record */
	T_LIST_REF,               /* varint i: the i-th list (LIST_REF_MIN to MAX bytes) of the text */
	T_DATE,                   /* DATE_BYTES: a quoted date (date_render) */
	T_EXT,                    /* BODYSTRUCTURE: a body's extension data follows */
	T_SPLICE,                 /* varint n, n bytes, varint i, varint m, m bytes: a
				   * quoted string of prefix, T_STR_REF i, suffix */
	T_DICT = 16               /* T_DICT + i: dictionary entry i, quoted */
};

/* Part of the format (an encoder and a decoder must agree on them), and
 * sized so that a decode needs a few KiB of stack. */
#define PACK_TEXT_MAX (16u * 1024u * 1024u) /* longer texts are stored raw */
#define STR_TABLE_MAX 64          /* strings a reference may name, per record */
#define STR_REF_MIN 3             /* shorter strings are cheaper spelt out */
#define SPLICE_MIN 6              /* a T_SPLICE reuses at least this much */
#define LIST_TABLE_MAX 32         /* lists a reference may name, per text */
#define LIST_REF_MIN 8
#define LIST_REF_MAX 4096
#define NEST_MAX 256              /* parenthesis depth of one text (the parser
				   * nests at most MIME_MAX_DEPTH bodies) */
#define DERIVE_DEPTH_MAX 128      /* body nesting derive_body follows */

/* Quoted-string contents frequent in BODYSTRUCTURE and ENVELOPE texts. */
#define D(s) { s, sizeof(s) - 1 }
static const struct {
	const char *s;
	size_t len;
} dict[] = {
	D("text"), D("plain"), D("html"), D("charset"), D("us-ascii"), D("utf-8"), D("UTF-8"),
	D("iso-8859-1"), D("ISO-8859-1"), D("iso-8859-15"), D("windows-1252"), D("Windows-1252"), D("7bit"),
	D("8bit"), D("base64"), D("quoted-printable"), D("binary"), D("multipart"), D("alternative"),
	D("mixed"), D("related"), D("signed"), D("report"), D("application"), D("octet-stream"), D("pdf"),
	D("image"), D("jpeg"), D("png"), D("gif"), D("message"), D("rfc822"), D("delivery-status"),
	D("name"), D("filename"), D("attachment"), D("inline"), D("boundary"), D("format"), D("flowed"),
	D("delsp"), D("yes"), D("no"), D("protocol"), D("micalg"), D("type"), D("report-type"), D("size"),
	D("creation-date"), D("modification-date"), D("MISSING_DOMAIN"), D("pgp-signature"),
	D("pgp-sha256"), D("pgp-sha1"), D("sha-256"), D("sha1"), D("x-pkcs7-signature"),
	D("pkcs7-signature"), D("pkcs7-mime"), D("smime.p7s"), D("smime-type"), D("signed-data"),
	D("calendar"), D("method"), D("REQUEST"), D("zip"), D("x-zip-compressed"), D("msword"),
	D("vnd.openxmlformats-officedocument.wordprocessingml.document"),
	D("vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
	D("vnd.openxmlformats-officedocument.presentationml.presentation"), D("vnd.ms-excel"), D("json"),
	D("xml"), D("csv"), D("rtf"), D("enriched"), D("ics"), D("en"), D("en-US"), D("de"), D("fr"),
	D("audio"), D("video"), D("mpeg"), D("mp4"), D("gzip"), D("x-gzip"), D("vcard"), D("x-vcard"),
	D("tiff"), D("svg+xml"), D("webp"), D("heic"), D("koi8-r"), D("iso-2022-jp"), D("gb2312"),
	D("big5"), D("shift_jis"), D("euc-kr"), D("x-unknown"), D("unknown-8bit"),
	D("disposition-notification"), D("partial"), D("external-body"), D("digest"), D("rfc822-headers"),
	D("global"), D("reply-type"), D("original"), D("smime.p7m"), D("enveloped-data"),
};
#undef D
#define DICT_LEN (sizeof(dict) / sizeof(dict[0]))
_Static_assert(sizeof(dict) / sizeof(dict[0]) <= 0x7f - T_DICT + 1, "dictionary codes fit in 7 bits");

static const char wdays[7][4] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
static const char months[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
				     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };

/* ---- shared pieces --------------------------------------------------------------- */

static void put_varint(struct buf *out, uint64_t v)
{
	do {
		uint8_t byte = v & 0x7f;
		v >>= 7;
		buf_append_char(out, (char)(byte | (v ? 0x80 : 0)));
	} while (v);
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

/* buf_append and buf_append_char without a call when the room is there:
 * a decode appends a few dozen small pieces. */
static inline void emit(struct buf *out, const void *p, size_t n)
{
	if (out->cap - out->len > n) {
		if (n <= 16) {           /* most pieces: a call to memcpy costs more */
			const char *src = p;
			for (size_t i = 0; i < n; i++)
				out->data[out->len + i] = src[i];
		} else {
			memcpy(out->data + out->len, p, n);
		}
		out->len += n;
		out->data[out->len] = '\0';
	} else {
		buf_append(out, p, n);
	}
}

static inline void emit_quoted(struct buf *out, const void *p, size_t n)
{
	buf_reserve(out, n + 2);
	out->data[out->len] = '"';
	memcpy(out->data + out->len + 1, p, n);
	out->data[out->len + 1 + n] = '"';
	out->len += n + 2;
	out->data[out->len] = '\0';
}

static inline void emit_char(struct buf *out, char c)
{
	if (out->cap - out->len > 1) {
		out->data[out->len++] = c;
		out->data[out->len] = '\0';
	} else {
		buf_append_char(out, c);
	}
}

/* The strings a T_STR_REF may name: the T_QUOTED contents of the record
 * so far (in the packed record or in the source texts), in order. */
struct str_table {
	const char *s[STR_TABLE_MAX];
	size_t len[STR_TABLE_MAX];
	size_t n;
};

static void str_table_add(struct str_table *t, const char *s, size_t len)
{
	if (len >= STR_REF_MIN && t->n < STR_TABLE_MAX) {
		t->s[t->n] = s;
		t->len[t->n++] = len;
	}
}

/* The lists a T_LIST_REF may name: [start, start + len) of the text. */
struct list_table {
	size_t start[LIST_TABLE_MAX];
	size_t len[LIST_TABLE_MAX];
	size_t n;
};

static bool list_ref_able(size_t len)
{
	return len >= LIST_REF_MIN && len <= LIST_REF_MAX;
}

static void list_table_add(struct list_table *t, size_t start, size_t len)
{
	if (list_ref_able(len) && t->n < LIST_TABLE_MAX) {
		t->start[t->n] = start;
		t->len[t->n++] = len;
	}
}

/* ---- dates ----------------------------------------------------------------------- */

/* The 9 bytes of a date: weekday (7 = none) << 5 | day, month << 4 |
 * flags (1 = day zero-padded, 2 = negative zone), year (2 bytes, LE),
 * hour, minute, second, zone hours, zone minutes. */
#define DATE_BYTES 9

/* Appends v in decimal, zero-padded to `width` digits (snprintf costs
 * more than the rest of a decode). */
static void put_dec(struct buf *out, uint64_t v, unsigned width)
{
	static const char pairs[] = "00010203040506070809101112131415161718192021222324"
				    "25262728293031323334353637383940414243444546474849"
				    "50515253545556575859606162636465666768697071727374"
				    "75767778798081828384858687888990919293949596979899";
	char tmp[24];
	size_t n = 0;
	while (v >= 10 || n + 1 < width) {
		tmp[n++] = pairs[(v % 100) * 2 + 1];
		tmp[n++] = pairs[(v % 100) * 2];
		v /= 100;
	}
	if (v != 0 || n < width)
		tmp[n++] = (char)('0' + v);
	buf_reserve(out, n);
	while (n > 0)
		out->data[out->len++] = tmp[--n];
	out->data[out->len] = '\0';
}

static void date_render(const uint8_t d[DATE_BYTES], struct buf *out)
{
	unsigned wd = d[0] >> 5, day = d[0] & 31u, mon = d[1] >> 4, fl = d[1] & 15u;
	unsigned year = (unsigned)d[2] | (unsigned)d[3] << 8;
	if (wd < 7) {
		emit(out, wdays[wd], 3);
		emit(out, ", ", 2);
	}
	put_dec(out, day, (fl & 1) ? 2 : 1);
	emit_char(out, ' ');
	emit(out, months[mon], 3);
	emit_char(out, ' ');
	put_dec(out, year, 4);
	emit_char(out, ' ');
	put_dec(out, d[4], 2);
	emit_char(out, ':');
	put_dec(out, d[5], 2);
	emit_char(out, ':');
	put_dec(out, d[6], 2);
	emit_char(out, ' ');
	emit_char(out, (fl & 2) ? '-' : '+');
	put_dec(out, d[7], 2);
	put_dec(out, d[8], 2);
}

static bool date_valid(const uint8_t d[DATE_BYTES])
{
	unsigned day = d[0] & 31u, mon = d[1] >> 4, year = (unsigned)d[2] | (unsigned)d[3] << 8;
	return day >= 1 && mon < 12 && (d[1] & 12u) == 0 && year >= 1000 && year <= 9999 && d[4] < 24 &&
	       d[5] < 60 && d[6] < 61 && d[7] < 100 && d[8] < 60;
}

static bool date_num(const char **p, const char *end, unsigned digits_min, unsigned digits_max, unsigned *v)
{
	unsigned n = 0;
	*v = 0;
	while (*p < end && **p >= '0' && **p <= '9' && n < digits_max) {
		*v = *v * 10 + (unsigned)(**p - '0');
		(*p)++;
		n++;
	}
	return n >= digits_min;
}

static bool date_lit(const char **p, const char *end, const char *lit)
{
	size_t n = strlen(lit);
	if ((size_t)(end - *p) < n || memcmp(*p, lit, n) != 0)
		return false;
	*p += n;
	return true;
}

static int date_name(const char **p, const char *end, const char (*names)[4], int n)
{
	for (int i = 0; i < n; i++)
		if (date_lit(p, end, names[i]))
			return i;
	return -1;
}

/* Parses s[0, len) as a date in the common form; true when date_render
 * gives s back exactly. */
static bool date_parse(const char *s, size_t len, uint8_t d[DATE_BYTES])
{
	if (len < 24 || len > 40)
		return false;
	const char *p = s, *end = s + len;
	int wd = date_name(&p, end, wdays, 7);
	if (wd >= 0 && !date_lit(&p, end, ", "))
		return false;
	const char *day_at = p;
	unsigned day, year, hh, mm, ss, zh, zm;
	if (!date_num(&p, end, 1, 2, &day) || !date_lit(&p, end, " "))
		return false;
	bool padded = *day_at == '0';
	int mon = date_name(&p, end, months, 12);
	if (mon < 0 || !date_lit(&p, end, " ") || !date_num(&p, end, 4, 4, &year) || !date_lit(&p, end, " ") ||
	    !date_num(&p, end, 2, 2, &hh) || !date_lit(&p, end, ":") || !date_num(&p, end, 2, 2, &mm) ||
	    !date_lit(&p, end, ":") || !date_num(&p, end, 2, 2, &ss) || !date_lit(&p, end, " ") || p >= end ||
	    (*p != '+' && *p != '-'))
		return false;
	bool neg = *p++ == '-';
	if (!date_num(&p, end, 2, 2, &zh) || !date_num(&p, end, 2, 2, &zm) || p != end)
		return false;
	d[0] = (uint8_t)((wd >= 0 ? (unsigned)wd : 7u) << 5 | (day & 31u));
	d[1] = (uint8_t)((unsigned)mon << 4 | (padded ? 1u : 0u) | (neg ? 2u : 0u));
	d[2] = (uint8_t)(year & 0xff);
	d[3] = (uint8_t)(year >> 8);
	d[4] = (uint8_t)hh;
	d[5] = (uint8_t)mm;
	d[6] = (uint8_t)ss;
	d[7] = (uint8_t)zh;
	d[8] = (uint8_t)zm;
	if (!date_valid(d))
		return false;
	struct buf r = BUF_INIT;
	date_render(d, &r);
	bool same = r.len == len && memcmp(r.data, s, len) == 0;
	buf_free(&r);
	return same;
}

/* ---- scanning IMAP text ---------------------------------------------------------- */

/* A canonical decimal number at s[*pos] ("0" or no leading zero, fits
 * 64 bits) whose text ends where the token ends. */
static bool scan_number(const char *s, size_t len, size_t *pos, uint64_t *v)
{
	size_t p = *pos;
	*v = 0;
	if (p >= len || s[p] < '0' || s[p] > '9')
		return false;
	if (s[p] == '0' && p + 1 < len && s[p + 1] >= '0' && s[p + 1] <= '9')
		return false;     /* a leading zero would not come back */
	for (; p < len && s[p] >= '0' && s[p] <= '9'; p++) {
		unsigned dgt = (unsigned)(s[p] - '0');
		if (*v > (UINT64_MAX - dgt) / 10)
			return false;
		*v = *v * 10 + dgt;
	}
	*pos = p;
	return true;
}

/* A quoted string at s[*pos]: its contents (between the quotes, escapes
 * kept) as [*cs, *cs + *clen). */
static bool scan_quoted(const char *s, size_t len, size_t *pos, const char **cs, size_t *clen)
{
	size_t p = *pos + 1;
	for (;;) {
		const char *q = p < len ? memchr(s + p, '"', len - p) : NULL;
		if (q == NULL)
			return false;
		size_t at = (size_t)(q - s), bs = 0;
		while (at - bs > p && s[at - bs - 1] == '\\')
			bs++;
		p = at;
		if (bs % 2 == 0)
			break;        /* not escaped */
		p++;
	}
	*cs = s + *pos + 1;
	*clen = p - *pos - 1;
	*pos = p + 1;
	return true;
}

/* A literal "{n}\r\n" + n bytes at s[*pos]. */
static bool scan_literal(const char *s, size_t len, size_t *pos, const char **cs, size_t *clen)
{
	size_t p = *pos + 1;
	uint64_t n;
	if (!scan_number(s, len, &p, &n) || len - p < 3 || memcmp(s + p, "}\r\n", 3) != 0 || n > len - p - 3)
		return false;
	*cs = s + p + 3;
	*clen = (size_t)n;
	*pos = p + 3 + (size_t)n;
	return true;
}

/* Skips one element (list, string, literal, NIL or number) at s[*pos]. */
static bool skip_elem(const char *s, size_t len, size_t *pos)
{
	size_t depth = 0;
	do {
		if (*pos >= len)
			return false;
		const char *cs;
		size_t clen;
		uint64_t v;
		char c = s[*pos];
		if (c == '(') {
			depth++;
			(*pos)++;
		} else if (c == ')') {
			if (depth == 0)
				return false;
			depth--;
			(*pos)++;
		} else if (c == ' ' && depth > 0) {
			(*pos)++;
		} else if (c == '"') {
			if (!scan_quoted(s, len, pos, &cs, &clen))
				return false;
		} else if (c == '{') {
			if (!scan_literal(s, len, pos, &cs, &clen))
				return false;
		} else if (len - *pos >= 3 && memcmp(s + *pos, "NIL", 3) == 0) {
			*pos += 3;
		} else if (!scan_number(s, len, pos, &v)) {
			return false;
		}
	} while (depth > 0);
	return true;
}

/* ---- BODY from BODYSTRUCTURE ----------------------------------------------------- */

#define BODY_ELEMS_MAX 14

/* Appends the BODY form of the body at s[*pos] (mime_write_structure with
 * extended = false): a multipart keeps its children (in BODY form) and
 * subtype, dropping parameters, disposition, language and location; a
 * single part drops md5, disposition, language and location, and a
 * message/rfc822 (14 elements) has its embedded body in BODY form too. */
static bool derive_body(const char *s, size_t len, size_t *pos, struct buf *out, struct buf *marks,
			unsigned depth)
{
	if (depth > DERIVE_DEPTH_MAX || *pos >= len || s[*pos] != '(')
		return false;
	size_t p = *pos + 1;
	emit_char(out, '(');
	if (p < len && s[p] == '(') {
		while (p < len && s[p] == '(')
			if (!derive_body(s, len, &p, out, marks, depth + 1))
				return false;
		size_t st[5], en[5];
		for (size_t i = 0; i < 5; i++) {
			if (p >= len || s[p] != ' ')
				return false;
			st[i] = ++p;
			if (!skip_elem(s, len, &p))
				return false;
			en[i] = p;
		}
		if (p >= len || s[p] != ')')
			return false;
		emit_char(out, ' ');
		emit(out, s + st[0], en[0] - st[0]);
		emit_char(out, ')');
		buf_append(marks, &en[0], sizeof(en[0]));
		*pos = p + 1;
		return true;
	}
	size_t st[BODY_ELEMS_MAX], en[BODY_ELEMS_MAX], n = 0;
	while (p < len && s[p] != ')') {
		if (n == BODY_ELEMS_MAX || (n > 0 && s[p++] != ' '))
			return false;
		st[n] = p;
		if (!skip_elem(s, len, &p))
			return false;
		en[n++] = p;
	}
	if (p >= len || (n != 11 && n != 12 && n != 14))
		return false;
	for (size_t i = 0; i < n - 4; i++) {
		if (i)
			emit_char(out, ' ');
		if (n == 14 && i == 8) {
			size_t q = st[i];
			if (!derive_body(s, en[i], &q, out, marks, depth + 1) || q != en[i])
				return false;
		} else {
			emit(out, s + st[i], en[i] - st[i]);
		}
	}
	emit_char(out, ')');
	buf_append(marks, &en[n - 5], sizeof(en[n - 5]));
	*pos = p + 1;
	return true;
}

/* The BODY text derived from a BODYSTRUCTURE text, and in `marks` (an
 * array of size_t) the offsets, in increasing order, of the space before
 * each body's extension data; false when it is not a text this subsystem
 * writes. */
static bool body_from_structure(const char *bs, size_t len, struct buf *out, struct buf *marks)
{
	size_t pos = 0;
	return derive_body(bs, len, &pos, out, marks, 0) && pos == len;
}

/* ---- decoding -------------------------------------------------------------------- */

struct unpack {
	const uint8_t *p, *end;
	struct str_table strs;
};

#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

/* Nonzero when a byte of v is c. */
static inline uint64_t has_byte(uint64_t v, uint8_t c)
{
	uint64_t x = v ^ (ONES * c);
	return (x - ONES) & ~x & HIGHS;
}

/* Quoted-string contents as mime_write_nstring writes them: 7-bit, no
 * NUL, CR or LF, '"' and '\' only escaped.  Eight bytes at a time while
 * none of those appears (the common case), byte by byte from there. */
static bool quoted_ok(const uint8_t *s, size_t len)
{
	size_t i = 0;
	for (; i + 8 <= len; i += 8) {
		uint64_t v;
		memcpy(&v, s + i, 8);
		if (((v & HIGHS) | has_byte(v, 0) | has_byte(v, '\r') | has_byte(v, '\n') | has_byte(v, '"') |
		     has_byte(v, '\\')) != 0)
			break;
	}
	for (; i < len; i++) {
		uint8_t c = s[i];
		if (c == 0 || c >= 0x80 || c == '\r' || c == '\n' || c == '"')
			return false;
		if (c == '\\' && (++i == len || (s[i] != '"' && s[i] != '\\')))
			return false;
	}
	return true;
}

static bool unpack_bytes(struct unpack *u, const uint8_t **s, size_t *len)
{
	uint64_t n;
	if (!get_varint(&u->p, u->end, &n) || n > (uint64_t)(u->end - u->p))
		return false;
	*s = u->p;
	*len = (size_t)n;
	u->p += n;
	return true;
}

/* T_SPLICE: a string made of a prefix, a string of the table and a
 * suffix (a Message-ID ending in the From address's domain). */
static bool unpack_splice(struct unpack *u, struct buf *out)
{
	const uint8_t *pre, *suf;
	size_t pre_len, suf_len;
	uint64_t k;
	if (!unpack_bytes(u, &pre, &pre_len) || !get_varint(&u->p, u->end, &k) || k >= u->strs.n ||
	    !unpack_bytes(u, &suf, &suf_len))
		return false;
	size_t at = out->len;
	emit_char(out, '"');
	emit(out, pre, pre_len);
	emit(out, u->strs.s[k], u->strs.len[k]);
	emit(out, suf, suf_len);
	emit_char(out, '"');
	return quoted_ok((const uint8_t *)out->data + at + 1, out->len - at - 2);
}

/* One token (not T_END, T_OPEN or T_CLOSE) onto out. */
static bool unpack_atom(struct unpack *u, unsigned kind, const struct list_table *lists, struct buf *out)
{
	const uint8_t *s;
	size_t len;
	uint64_t v;
	switch (kind) {
	case T_NIL:
		emit(out, "NIL", 3);
		return true;
	case T_QUOTED:
		if (!unpack_bytes(u, &s, &len) || !quoted_ok(s, len))
			return false;
		str_table_add(&u->strs, (const char *)s, len);
		break;
	case T_LITERAL:
		if (!unpack_bytes(u, &s, &len) || memchr(s, '\0', len) != NULL)
			return false;
		emit_char(out, '{');
		put_dec(out, len, 1);
		emit(out, "}\r\n", 3);
		emit(out, s, len);
		return true;
	case T_NUMBER:
		if (!get_varint(&u->p, u->end, &v))
			return false;
		put_dec(out, v, 1);
		return true;
	case T_SPLICE:
		return unpack_splice(u, out);
	case T_STR_REF:
		if (!get_varint(&u->p, u->end, &v) || v >= u->strs.n)
			return false;
		s = (const uint8_t *)u->strs.s[v];
		len = u->strs.len[v];
		break;
	case T_LIST_REF:
		if (!get_varint(&u->p, u->end, &v) || v >= lists->n)
			return false;
		/* Room first: the source lies in out, which must not move. */
		buf_reserve(out, lists->len[v]);
		emit(out, out->data + lists->start[v], lists->len[v]);
		return true;
	case T_DATE:
		if ((size_t)(u->end - u->p) < DATE_BYTES || !date_valid(u->p))
			return false;
		emit_char(out, '"');
		date_render(u->p, out);
		emit_char(out, '"');
		u->p += DATE_BYTES;
		return true;
	default:
		if (kind < T_DICT || kind - T_DICT >= DICT_LEN)
			return false;
		s = (const uint8_t *)dict[kind - T_DICT].s;
		len = dict[kind - T_DICT].len;
		break;
	}
	emit_quoted(out, s, len);
	return true;
}

/* One text's tokens up to T_END onto out (reset first).  With `body`
 * (the BODYSTRUCTURE of a record without PACK_F_BODY), BODY is written in
 * the same pass: everything but what follows a T_EXT up to the close of
 * the list it is in. */
static bool unpack_text(struct unpack *u, struct buf *out, struct buf *body)
{
	struct list_table lists;   /* not zeroed: read below n only */
	lists.n = 0;
	size_t open[NEST_MAX], depth = 0, ext = 0;   /* ext: depth of the list being left out, or 0 */
	buf_reset(out);
	buf_reserve(out, 256 + 2 * (size_t)(u->end - u->p));
	for (;;) {
		if (u->p >= u->end || out->len > PACK_TEXT_MAX)
			return false;
		uint8_t t = *u->p++;
		unsigned kind = t & ~T_SPACE;
		if (kind == T_END)
			return t == T_END && depth == 0 && ext == 0 && out->len > 0;
		/* One top-level list: it opens first and ends the text. */
		if (out->len == 0 ? t != T_OPEN : depth == 0)
			return false;
		if (kind == T_EXT) {
			if (t != T_EXT || body == NULL || ext != 0)
				return false;
			ext = depth;
			continue;
		}
		size_t before = out->len;
		if (t & T_SPACE)
			emit_char(out, ' ');
		if (kind == T_OPEN) {
			if (depth == NEST_MAX)
				return false;
			open[depth++] = out->len;
			emit_char(out, '(');
		} else if (kind == T_CLOSE) {
			emit_char(out, ')');
			depth--;
			list_table_add(&lists, open[depth], out->len - open[depth]);
			if (ext != 0 && depth < ext)
				ext = 0;  /* the list left out of BODY ends: its ')' is BODY's */
		} else if ((kind == T_LIST_REF && body != NULL) || !unpack_atom(u, kind, &lists, out)) {
			return false;     /* no references where BODY is derived */
		}
		if (body != NULL && ext == 0)
			emit(body, out->data + before, out->len - before);
	}
}

static bool unpack_raw_text(struct unpack *u, char **out)
{
	const uint8_t *s;
	size_t len;
	if (!unpack_bytes(u, &s, &len) || memchr(s, '\0', len) != NULL)
		return false;
	*out = xstrndup((const char *)s, len);
	return true;
}

static bool unpack_parts(struct unpack *u, struct mime_summary *out)
{
	const uint8_t *s;
	size_t len;
	if (!unpack_bytes(u, &s, &len) || u->p != u->end)
		return false;
	out->parts = xmalloc(len ? len : 1);
	memcpy(out->parts, s, len);
	out->parts_len = len;
	return true;
}

static bool unpack_tokens(struct unpack *u, unsigned flags, struct mime_summary *out)
{
	struct buf env = BUF_INIT, bs = BUF_INIT, body = BUF_INIT;
	bool derived = !(flags & PACK_F_BODY);
	if (derived)
		buf_reserve(&body, 256 + (size_t)(u->end - u->p));
	bool ok = unpack_text(u, &env, NULL) && unpack_text(u, &bs, derived ? &body : NULL) &&
		  (derived || unpack_text(u, &body, NULL));
	if (ok) {
		out->envelope = buf_steal(&env);
		out->bodystructure = buf_steal(&bs);
		out->body = buf_steal(&body);
	}
	buf_free(&env);
	buf_free(&bs);
	buf_free(&body);
	return ok;
}

bool mime_unpack(const uint8_t *data, size_t len, struct mime_summary *out)
{
	memset(out, 0, sizeof(*out));
	if (data == NULL || len == 0 || data[0] >> 4 != PACK_VERSION || (data[0] & 15u) > (PACK_F_BODY | PACK_F_RAW))
		return false;
	unsigned flags = data[0] & 15u;
	struct unpack uk, *u = &uk;    /* not zeroed: the tables are read below n only */
	u->p = data + 1;
	u->end = data + len;
	u->strs.n = 0;
	bool ok;
	if (flags & PACK_F_RAW)
		ok = unpack_raw_text(u, &out->envelope) && unpack_raw_text(u, &out->bodystructure) &&
		     unpack_raw_text(u, &out->body);
	else
		ok = unpack_tokens(u, flags, out);
	ok = ok && unpack_parts(u, out);
	if (!ok)
		mime_summary_free(out);
	return ok;
}

/* ---- encoding -------------------------------------------------------------------- */

struct pack_open {
	size_t out_len, src_start, strs_n, lists_n;
	bool space;
};

struct pack {
	struct buf *out;
	struct str_table strs;
	struct list_table lists;
	struct pack_open open[NEST_MAX];
};

/* The longest string of the table (SPLICE_MIN or more) inside cs, as a
 * T_SPLICE; false when there is none.  Spliced strings do not enter the
 * table (the decoder has them in no one piece of the record). */
static bool pack_splice(struct pack *k, uint8_t sp, const char *cs, size_t clen)
{
	size_t best = 0, best_len = 0;
	const char *at = NULL;
	for (size_t i = 0; i < k->strs.n; i++) {
		size_t n = k->strs.len[i];
		if (n < SPLICE_MIN || n <= best_len || n >= clen)
			continue;
		const char *m = memmem(cs, clen, k->strs.s[i], n);
		if (m != NULL) {
			best = i;
			best_len = n;
			at = m;
		}
	}
	if (at == NULL)
		return false;
	size_t pre = (size_t)(at - cs), suf = clen - pre - best_len;
	buf_append_char(k->out, (char)(sp | T_SPLICE));
	put_varint(k->out, pre);
	buf_append(k->out, cs, pre);
	put_varint(k->out, best);
	put_varint(k->out, suf);
	buf_append(k->out, at + best_len, suf);
	return true;
}

static void pack_string(struct pack *k, uint8_t sp, const char *cs, size_t clen)
{
	uint8_t d[DATE_BYTES];
	for (size_t i = 0; i < DICT_LEN; i++) {
		if (dict[i].len == clen && memcmp(dict[i].s, cs, clen) == 0) {
			buf_append_char(k->out, (char)(sp | (T_DICT + i)));
			return;
		}
	}
	if (date_parse(cs, clen, d)) {
		buf_append_char(k->out, (char)(sp | T_DATE));
		buf_append(k->out, d, DATE_BYTES);
		return;
	}
	for (size_t i = 0; clen >= STR_REF_MIN && i < k->strs.n; i++) {
		if (k->strs.len[i] == clen && memcmp(k->strs.s[i], cs, clen) == 0) {
			buf_append_char(k->out, (char)(sp | T_STR_REF));
			put_varint(k->out, i);
			return;
		}
	}
	if (pack_splice(k, sp, cs, clen))
		return;
	buf_append_char(k->out, (char)(sp | T_QUOTED));
	put_varint(k->out, clen);
	buf_append(k->out, cs, clen);
	str_table_add(&k->strs, cs, clen);
}

/* The list that ends at s[end - 1]: replaced by a reference when an
 * earlier list of the text is the same (what it added to the tables is
 * taken back: the decoder never sees it). */
static void pack_close(struct pack *k, const char *s, size_t end, const struct pack_open *o, bool refs)
{
	size_t len = end - o->src_start;
	for (size_t i = 0; refs && list_ref_able(len) && i < o->lists_n; i++) {
		if (k->lists.len[i] == len && memcmp(s + k->lists.start[i], s + o->src_start, len) == 0) {
			buf_truncate(k->out, o->out_len);
			k->strs.n = o->strs_n;
			k->lists.n = o->lists_n;
			buf_append_char(k->out, (char)((o->space ? T_SPACE : 0) | T_LIST_REF));
			put_varint(k->out, i);
			return;
		}
	}
	buf_append_char(k->out, T_CLOSE);
	list_table_add(&k->lists, o->src_start, len);
}

/* Tokenises one text, with a T_EXT at each of the n_marks offsets (and
 * then no list references); false when it has something this encoder does
 * not know (the caller then stores the record raw). */
static bool pack_text(struct pack *k, const char *s, size_t len, const size_t *marks, size_t n_marks)
{
	size_t depth = 0, pos = 0, mi = 0;
	bool space = false;
	k->lists.n = 0;
	if (len == 0 || len > PACK_TEXT_MAX)
		return false;
	while (pos < len) {
		uint8_t sp = space ? T_SPACE : 0;
		const char *cs;
		size_t clen;
		uint64_t v;
		char c = s[pos];
		space = false;
		if (pos > 0 ? depth == 0 : c != '(')
			return false;    /* not one top-level list */
		if (mi < n_marks && marks[mi] == pos) {
			if (c != ' ')
				return false;
			buf_append_char(k->out, T_EXT);
			mi++;
		}
		if (c == ' ') {
			if (sp || pos == 0)
				return false;
			space = true;
			pos++;
		} else if (c == '(') {
			if (depth == NEST_MAX)
				return false;
			k->open[depth++] = (struct pack_open){ k->out->len, pos, k->strs.n, k->lists.n, sp != 0 };
			buf_append_char(k->out, (char)(sp | T_OPEN));
			pos++;
		} else if (c == ')') {
			if (sp || depth == 0)
				return false;
			pack_close(k, s, ++pos, &k->open[--depth], n_marks == 0);
		} else if (c == '"') {
			if (!scan_quoted(s, len, &pos, &cs, &clen))
				return false;
			pack_string(k, sp, cs, clen);
		} else if (c == '{') {
			if (!scan_literal(s, len, &pos, &cs, &clen))
				return false;
			buf_append_char(k->out, (char)(sp | T_LITERAL));
			put_varint(k->out, clen);
			buf_append(k->out, cs, clen);
		} else if (len - pos >= 3 && memcmp(s + pos, "NIL", 3) == 0) {
			buf_append_char(k->out, (char)(sp | T_NIL));
			pos += 3;
		} else if (scan_number(s, len, &pos, &v)) {
			buf_append_char(k->out, (char)(sp | T_NUMBER));
			put_varint(k->out, v);
		} else {
			return false;
		}
	}
	if (depth != 0 || space || mi != n_marks)
		return false;
	buf_append_char(k->out, T_END);
	return true;
}

static void pack_parts(struct buf *out, const uint8_t *parts, size_t parts_len)
{
	put_varint(out, parts_len);
	if (parts_len)
		buf_append(out, parts, parts_len);
}

static void pack_raw(struct buf *out, size_t at, const char *env, const char *bs, const char *body,
		     const uint8_t *parts, size_t parts_len)
{
	buf_truncate(out, at);
	buf_append_char(out, (char)(PACK_VERSION << 4 | PACK_F_RAW));
	const char *texts[3] = { env, bs, body };
	for (size_t i = 0; i < 3; i++) {
		size_t n = strlen(texts[i]);
		put_varint(out, n);
		buf_append(out, texts[i], n);
	}
	pack_parts(out, parts, parts_len);
}

static bool same_text(const char *a, const char *b)
{
	return strcmp(a, b) == 0;
}

/* True when data decodes to exactly the given texts and part map. */
static bool pack_check(const uint8_t *data, size_t len, const char *env, const char *bs, const char *body,
		       const uint8_t *parts, size_t parts_len)
{
	struct mime_summary m;
	if (!mime_unpack(data, len, &m))
		return false;
	bool same = same_text(m.envelope, env) && same_text(m.bodystructure, bs) && same_text(m.body, body) &&
		    m.parts_len == parts_len && (parts_len == 0 || memcmp(m.parts, parts, parts_len) == 0);
	mime_summary_free(&m);
	return same;
}

void mime_pack(const char *envelope, const char *bodystructure, const char *body, const uint8_t *parts,
	       size_t parts_len, struct buf *out)
{
	size_t at = out->len;
	struct pack *k = xcalloc(1, sizeof(*k));
	k->out = out;
	struct buf derived = BUF_INIT, marks = BUF_INIT;
	size_t bs_len = strlen(bodystructure);
	bool derive = body_from_structure(bodystructure, bs_len, &derived, &marks) && same_text(derived.data, body);
	buf_free(&derived);
	buf_append_char(out, (char)(PACK_VERSION << 4 | (derive ? 0 : PACK_F_BODY)));
	bool ok = pack_text(k, envelope, strlen(envelope), NULL, 0) &&
		  (derive ? pack_text(k, bodystructure, bs_len, (const size_t *)(void *)marks.data,
				      marks.len / sizeof(size_t))
			  : pack_text(k, bodystructure, bs_len, NULL, 0) && pack_text(k, body, strlen(body), NULL, 0));
	buf_free(&marks);
	free(k);
	if (ok) {
		pack_parts(out, parts, parts_len);
		ok = pack_check((const uint8_t *)out->data + at, out->len - at, envelope, bodystructure, body, parts,
				parts_len);
	}
	if (!ok)
		pack_raw(out, at, envelope, bodystructure, body, parts, parts_len);
}
