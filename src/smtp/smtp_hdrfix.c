/*
 * smtp_hdrfix.c - adds Date: and Message-ID: to submitted messages that
 * lack them (RFC 6409 8.2, 8.3).
 *
 * Contract: see smtp_hdrfix.h.  A small state machine over the start of
 * each line of the header section; the octets of a line are held back
 * only until its kind is known (a field name and its colon, a fold, an
 * empty line), so memory is bounded by SMTP_HDRFIX_HOLD whatever the input.
 */
#include "smtp_hdrfix.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

enum {
	HF_LINE_START = 0, /* at the start of a line, nothing held */
	HF_CR,             /* "\r" at the start of a line, held */
	HF_NAME,           /* field name being read, held */
	HF_NAME_WSP,       /* blanks after a name (RFC 5322 obs-syntax), held */
	HF_FIELD,          /* inside a header field line: pass-through to LF */
};

void smtp_hdrfix_init(struct smtp_hdrfix *h, const char *date, const char *msgid)
{
	memset(h, 0, sizeof(*h));
	h->state = HF_LINE_START;
	snprintf(h->date_value, sizeof(h->date_value), "%s", date);
	snprintf(h->msgid_value, sizeof(h->msgid_value), "%s", msgid);
}

static bool is_name_char(unsigned char c)
{
	return c >= 33 && c <= 126 && c != ':';
}

static void emit_missing(const struct smtp_hdrfix *h, struct buf *out)
{
	if (!h->date)
		buf_printf(out, "Date: %s\r\n", h->date_value);
	if (!h->msgid)
		buf_printf(out, "Message-ID: %s\r\n", h->msgid_value);
}

static void flush_hold(struct smtp_hdrfix *h, struct buf *out)
{
	buf_append(out, h->hold, h->hold_len);
	h->hold_len = 0;
}

/* The header section ended before the held line.  `body_line`: that line
 * is body text, so an empty line goes between the new fields and it. */
/* The empty line before a body that started without one is added only
 * with fields: a message that has both passes unchanged. */
static void end_headers(struct smtp_hdrfix *h, bool body_line, struct buf *out)
{
	bool missing = !h->date || !h->msgid;
	emit_missing(h, out);
	if (body_line && missing)
		buf_append(out, "\r\n", 2);
	flush_hold(h, out);
	h->done = true;
}

/* A colon ended the held field name: note Date and Message-ID. */
static void field_named(struct smtp_hdrfix *h, struct buf *out)
{
	size_t n = h->hold_len;
	while (n > 0 && (h->hold[n - 1] == ' ' || h->hold[n - 1] == '\t'))
		n--;
	if (n == 4 && strncasecmp(h->hold, "Date", 4) == 0)
		h->date = true;
	else if (n == 10 && strncasecmp(h->hold, "Message-ID", 10) == 0)
		h->msgid = true;
	h->any = true;
	flush_hold(h, out);
	h->state = HF_FIELD;
}

static void hold(struct smtp_hdrfix *h, char c)
{
	h->hold[h->hold_len++] = c;
}

/* One octet at a line start or inside a held line. */
static void step(struct smtp_hdrfix *h, unsigned char c, struct buf *out)
{
	switch (h->state) {
	case HF_LINE_START:
		if (c == '\r') {
			hold(h, (char)c);
			h->state = HF_CR;
		} else if (c == '\n') {
			end_headers(h, false, out);
		} else if ((c == ' ' || c == '\t') && h->any) {
			h->state = HF_FIELD;   /* a folded continuation */
		} else if (is_name_char(c)) {
			hold(h, (char)c);
			h->state = HF_NAME;
			return;
		} else {
			end_headers(h, true, out);
		}
		break;
	case HF_CR:
		end_headers(h, c != '\n', out);
		break;
	case HF_NAME:
	case HF_NAME_WSP:
		if (c == ':') {
			field_named(h, out);
		} else if (h->hold_len >= SMTP_HDRFIX_HOLD) {
			end_headers(h, true, out);
		} else if (c == ' ' || c == '\t') {
			hold(h, (char)c);
			h->state = HF_NAME_WSP;
			return;
		} else if (is_name_char(c) && h->state == HF_NAME) {
			hold(h, (char)c);
			return;
		} else {
			end_headers(h, true, out);
		}
		break;
	default:
		break;
	}
	if (h->state != HF_NAME && h->state != HF_NAME_WSP && h->state != HF_CR)
		buf_append_char(out, (char)c);
	else if (h->done)
		buf_append_char(out, (char)c);
}

void smtp_hdrfix_feed(struct smtp_hdrfix *h, const char *data, size_t len, struct buf *out)
{
	size_t i = 0;
	while (i < len && !h->done) {
		if (h->state == HF_FIELD) {
			const char *lf = memchr(data + i, '\n', len - i);
			size_t n = lf != NULL ? (size_t)(lf - (data + i)) + 1 : len - i;
			buf_append(out, data + i, n);
			i += n;
			if (lf != NULL)
				h->state = HF_LINE_START;
			continue;
		}
		step(h, (unsigned char)data[i], out);
		i++;
	}
	if (i < len)
		buf_append(out, data + i, len - i);
}

void smtp_hdrfix_finish(struct smtp_hdrfix *h, struct buf *out)
{
	if (h->done)
		return;
	if (h->state == HF_FIELD && (!h->date || !h->msgid))
		buf_append(out, "\r\n", 2);   /* the last field lacked its line end: fields follow it */
	end_headers(h, h->state != HF_FIELD && h->state != HF_LINE_START, out);
}
