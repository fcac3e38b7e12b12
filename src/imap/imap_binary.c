/*
 * imap_binary.c - the content-transfer-encoding side of BINARY (RFC 3516):
 * finding a part's Content-Transfer-Encoding in its MIME header and
 * decoding base64 and quoted-printable as a stream.
 *
 * Contract (imap_int.h):
 *  - imap_binary_cte() reads only the header bytes it is given; an absent
 *    field means 7bit (RFC 2045 6.1), a field naming an encoding other than
 *    7bit, 8bit, binary, base64 or quoted-printable is IMAP_CTE_UNKNOWN
 *    (the FETCH then fails with NO [UNKNOWN-CTE]).
 *  - The decoder keeps a few bytes of state between calls, whatever the
 *    split of its input: feeding a body one byte at a time or in one piece
 *    gives the same output.  Memory is the caller's output buffer only, so
 *    a 50 MB attachment is decoded in FETCH-sized chunks.
 *  - Malformed input never fails: base64 ignores characters outside its
 *    alphabet and stops at "=" padding; quoted-printable keeps an "=" that
 *    does not start a valid escape or soft line break as it is (RFC 2045
 *    6.7 note 1), and drops whitespace at the end of a line (note 3).
 *
 * Threads: pure functions over the caller's data.
 */
#include "imap_int.h"

#include <ctype.h>
#include <string.h>

/* ---- Content-Transfer-Encoding ------------------------------------------------------ */

/* The value of the first Content-Transfer-Encoding field, unfolded and
 * trimmed, into out (truncated to outlen - 1); false when there is none. */
static bool cte_field(const char *hdr, size_t len, char *out, size_t outlen)
{
	static const char name[] = "content-transfer-encoding";
	const size_t nlen = sizeof(name) - 1;
	for (size_t i = 0; i < len;) {
		const char *line = hdr + i;
		const char *nl = memchr(line, '\n', len - i);
		size_t ll = nl ? (size_t)(nl - line) + 1 : len - i;
		if (ll > nlen && strncasecmp(line, name, nlen) == 0) {
			size_t p = nlen;
			while (p < ll && (line[p] == ' ' || line[p] == '\t'))
				p++;
			if (p < ll && line[p] == ':') {
				/* The value may be folded over continuation lines. */
				size_t o = 0;
				size_t at = i + p + 1;
				while (at < len) {
					char c = hdr[at];
					if (c == '\n') {
						if (at + 1 < len && (hdr[at + 1] == ' ' || hdr[at + 1] == '\t')) {
							at++;
							continue;
						}
						break;
					}
					if (c != '\r' && c != ' ' && c != '\t' && o + 1 < outlen)
						out[o++] = (char)tolower((unsigned char)c);
					at++;
				}
				out[o] = '\0';
				return true;
			}
		}
		i += ll;
	}
	return false;
}

enum imap_cte imap_binary_cte(const char *hdr, size_t len)
{
	char v[64];
	if (!cte_field(hdr, len, v, sizeof(v)))
		return IMAP_CTE_IDENTITY;
	/* A comment "(...)" may follow the token (RFC 2045 uses RFC 822 syntax). */
	char *c = strchr(v, '(');
	if (c != NULL)
		*c = '\0';
	if (v[0] == '\0' || strcmp(v, "7bit") == 0 || strcmp(v, "8bit") == 0 || strcmp(v, "binary") == 0)
		return IMAP_CTE_IDENTITY;
	if (strcmp(v, "base64") == 0)
		return IMAP_CTE_BASE64;
	if (strcmp(v, "quoted-printable") == 0)
		return IMAP_CTE_QP;
	return IMAP_CTE_UNKNOWN;
}

/* ---- the decoder --------------------------------------------------------------------- */

void imap_decoder_init(struct imap_decoder *d, enum imap_cte cte)
{
	memset(d, 0, sizeof(*d));
	d->cte = cte;
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

static void b64_feed(struct imap_decoder *d, const unsigned char *in, size_t len, struct buf *out)
{
	for (size_t i = 0; i < len && !d->b64_end; i++) {
		if (in[i] == '=') {
			/* Padding: the encoded data ends (anything after is ignored). */
			d->b64_end = true;
			break;
		}
		int v = b64_value(in[i]);
		if (v < 0)
			continue;
		d->acc = (d->acc << 6) | (uint32_t)v;
		d->bits += 6;
		if (d->bits >= 8) {
			d->bits -= 8;
			buf_append_char(out, (char)((d->acc >> d->bits) & 0xff));
			d->acc &= (1u << d->bits) - 1;
		}
	}
}

static int hex_value(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = (unsigned char)toupper(c);
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Whitespace held back until we know whether the line ends after it. */
static void qp_flush_ws(struct imap_decoder *d, struct buf *out)
{
	buf_append(out, d->ws, d->n_ws);
	d->n_ws = 0;
}

static void qp_byte(struct imap_decoder *d, unsigned char c, struct buf *out)
{
	switch (d->qp) {
	case QP_TEXT:
		if (c == '=') {
			qp_flush_ws(d, out);       /* blanks before "=" are not at a line end */
			d->qp = QP_EQ;
		} else if (c == ' ' || c == '\t') {
			if (d->n_ws == sizeof(d->ws))
				qp_flush_ws(d, out);   /* an absurd run: keep it, bounded */
			d->ws[d->n_ws++] = (char)c;
		} else if (c == '\r' || c == '\n') {
			d->n_ws = 0;               /* trailing whitespace is transport padding */
			buf_append_char(out, (char)c);
		} else {
			qp_flush_ws(d, out);
			buf_append_char(out, (char)c);
		}
		return;
	case QP_EQ:
		if (c == '\n') {               /* soft line break "=\n" */
			d->n_ws = 0;
			d->qp = QP_TEXT;
		} else if (c == '\r') {
			d->qp = QP_EQ_CR;
		} else if (c == ' ' || c == '\t') {
			d->qp = QP_EQ_WS;          /* "=  \r\n": padded soft break */
		} else if (hex_value(c) >= 0) {
			d->hex = c;
			d->qp = QP_EQ_HEX;
		} else {
			qp_flush_ws(d, out);
			buf_append_char(out, '=');
			d->qp = QP_TEXT;
			qp_byte(d, c, out);
		}
		return;
	case QP_EQ_WS:
		if (c == ' ' || c == '\t')
			return;
		if (c == '\r') {
			d->qp = QP_EQ_CR;
		} else if (c == '\n') {
			d->n_ws = 0;
			d->qp = QP_TEXT;
		} else {
			/* Not a soft break after all: "=" and the blanks were text. */
			qp_flush_ws(d, out);
			buf_append_str(out, "= ");
			d->qp = QP_TEXT;
			qp_byte(d, c, out);
		}
		return;
	case QP_EQ_CR:
		d->qp = QP_TEXT;
		d->n_ws = 0;
		if (c != '\n')                 /* "=\r" then text: treat as a soft break */
			qp_byte(d, c, out);
		return;
	case QP_EQ_HEX:
		d->qp = QP_TEXT;
		if (hex_value(c) >= 0) {
			qp_flush_ws(d, out);
			buf_append_char(out, (char)(hex_value(d->hex) * 16 + hex_value(c)));
		} else {
			qp_flush_ws(d, out);
			buf_append_char(out, '=');
			buf_append_char(out, (char)d->hex);
			qp_byte(d, c, out);
		}
		return;
	}
}

void imap_decoder_feed(struct imap_decoder *d, const char *in, size_t len, struct buf *out)
{
	switch (d->cte) {
	case IMAP_CTE_BASE64:
		b64_feed(d, (const unsigned char *)in, len, out);
		return;
	case IMAP_CTE_QP:
		for (size_t i = 0; i < len; i++)
			qp_byte(d, (unsigned char)in[i], out);
		return;
	case IMAP_CTE_IDENTITY:
	case IMAP_CTE_UNKNOWN:
		buf_append(out, in, len);
		return;
	}
}

void imap_decoder_finish(struct imap_decoder *d, struct buf *out)
{
	if (d->cte != IMAP_CTE_QP)
		return;
	/* End of the body: a pending "=" or "=X" is kept as text; trailing
	 * whitespace without a line end is content. */
	switch (d->qp) {
	case QP_EQ:
		qp_flush_ws(d, out);
		buf_append_char(out, '=');
		break;
	case QP_EQ_HEX:
		qp_flush_ws(d, out);
		buf_append_char(out, '=');
		buf_append_char(out, (char)d->hex);
		break;
	case QP_EQ_WS:
		qp_flush_ws(d, out);
		buf_append_str(out, "= ");
		break;
	case QP_TEXT:
		qp_flush_ws(d, out);
		break;
	case QP_EQ_CR:
		break;
	}
	d->qp = QP_TEXT;
}
