/*
 * smtp_data.c - DATA / BDAT octet state machine.
 *
 * Contract: see smtp_data.h.  The machine keeps four bits of line state
 * (at beginning of line, line preceded by a real CRLF, a held-back leading
 * dot, a held-back CR); every octet is handled by exactly one transition,
 * and runs of ordinary octets in the middle of a line are copied in one
 * append, which is the same transition applied octet by octet.  That is
 * why any split of the input gives the same result.
 *
 * Dot handling (RFC 5321 4.5.2): at the beginning of a line a dot is held
 * back.  Followed by more text on the line it was stuffing and is dropped
 * ("..x" -> ".x", ".x" -> "x").  Followed by CR LF on a line that itself
 * began after a real CR LF, it is the end of the data.  Followed by any
 * other line end it is content and stored as ".".
 */
#include "smtp_data.h"

#include <string.h>

void smtp_data_init(struct smtp_data *d, enum smtp_data_mode mode, enum bare_lf_mode bare_lf)
{
	memset(d, 0, sizeof(*d));
	d->mode = mode;
	d->bare_lf = bare_lf;
	d->bol = true;
	d->clean = true;   /* the first line counts as preceded by CRLF */
}

/* Emits the held-back dot of a "." line that is content. */
static void flush_dot(struct smtp_data *d, struct buf *out)
{
	if (d->dot) {
		buf_append_char(out, '.');
		d->dot = false;
	}
}

/* A real CR LF ends the line. */
static void line_end_crlf(struct smtp_data *d, struct buf *out)
{
	if (d->dot && d->clean && d->mode == SMTP_DATA_DOT) {
		d->dot = false;
		d->done = true;
		return;
	}
	flush_dot(d, out);
	buf_append(out, "\r\n", 2);
	d->bol = true;
	d->clean = true;
}

/* A bare LF or bare CR ends the line: stored as CRLF, never a boundary. */
static void line_end_bare(struct smtp_data *d, struct buf *out)
{
	if (d->bare_lf == BARE_LF_REJECT)
		d->bad |= SMTP_DATA_BAD_BARE_LF;
	flush_dot(d, out);
	buf_append(out, "\r\n", 2);
	d->bol = true;
	d->clean = false;
}

static void step(struct smtp_data *d, char c, struct buf *out)
{
	if (d->cr) {
		d->cr = false;
		if (c == '\n') {
			line_end_crlf(d, out);
			return;
		}
		line_end_bare(d, out);
		/* c starts the next line */
	}
	if (c == '\r') {
		d->cr = true;
		return;
	}
	if (c == '\n') {
		line_end_bare(d, out);
		return;
	}
	if (c == '\0')
		d->bad |= SMTP_DATA_BAD_NUL;
	if (d->bol) {
		d->bol = false;
		if (c == '.' && d->mode == SMTP_DATA_DOT) {
			d->dot = true;
			return;
		}
	} else if (d->dot) {
		d->dot = false;   /* the leading dot was stuffing */
	}
	buf_append_char(out, c);
}

size_t smtp_data_feed(struct smtp_data *d, const char *in, size_t len, struct buf *out)
{
	if (d->done)
		panic("smtp_data_feed after end of data");
	size_t i = 0;
	while (i < len && !d->done) {
		if (!d->cr && !d->bol && !d->dot) {
			size_t j = i;
			while (j < len && in[j] != '\r' && in[j] != '\n' && in[j] != '\0')
				j++;
			if (j > i) {
				buf_append(out, in + i, j - i);
				i = j;
				continue;
			}
		}
		step(d, in[i], out);
		i++;
	}
	return i;
}

void smtp_data_finish(struct smtp_data *d, struct buf *out)
{
	if (d->cr) {
		d->cr = false;
		line_end_bare(d, out);
	}
	flush_dot(d, out);
}

static const struct smtp_data_reject reject_nul = {
	554, "5.6.0", "Message contains NUL characters"
};
static const struct smtp_data_reject reject_bare = {
	550, "5.6.11", "Message contains bare CR or LF characters; lines must end with CRLF"
};

const struct smtp_data_reject *smtp_data_reject_reply(unsigned bad)
{
	if (bad & SMTP_DATA_BAD_NUL)
		return &reject_nul;
	if (bad & SMTP_DATA_BAD_BARE_LF)
		return &reject_bare;
	panic("smtp_data_reject_reply: message is not bad");
}
