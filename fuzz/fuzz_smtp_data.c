/*
 * fuzz_smtp_data.c - fuzz target for the DATA / BDAT octet state machine
 * (src/smtp/smtp_data.h).
 *
 * Input: the octets a client sends after "354" (or the concatenated BDAT
 * chunks).  Every input runs in all four combinations of mode (DATA, BDAT)
 * and bare-LF handling (normalize, reject).
 *
 * Properties checked, each for the whole input, one octet at a time, and
 * random pieces (for BDAT the pieces are the chunks):
 *  - output, flags, end of data and octets consumed equal those of an
 *    independent reference written from the header's contract: lines end
 *    at CR LF, bare LF or bare CR, each stored as CR LF; in DATA a leading
 *    dot is removed from a longer line and a lone "." line is content
 *    unless it is the terminator; the terminator is only "." between a real
 *    CR LF (or the start) and a real CR LF; NUL and, in reject mode, bare
 *    line ends set their flag;
 *  - the same after smtp_data_finish;
 *  - at most 2n + 3 output octets for n consumed, and the output has no
 *    bare CR or LF;
 *  - DATA ends only right after <CRLF>.<CRLF> (or ".\r\n" at the start),
 *    and never in BDAT mode;
 *  - smtp_data_reject_reply gives a 5xx for every non-zero flag set.
 *
 * Durability/concurrency: none (pure functions, one thread).
 */
#include "fuzz.h"

#include <string.h>

#include "smtp_data.h"

struct result {
	struct buf out;       /* before smtp_data_finish */
	struct buf out_fin;   /* after it */
	unsigned bad, bad_fin;
	bool done;
	size_t consumed;
};

static void result_free(struct result *r)
{
	buf_free(&r->out);
	buf_free(&r->out_fin);
}

/* ---- the reference ------------------------------------------------------- */

/* Stores one line's content as the state machine must. */
static void ref_content(enum smtp_data_mode mode, const char *p, size_t n, struct buf *out)
{
	if (mode == SMTP_DATA_DOT && n > 1 && p[0] == '.')
		buf_append(out, p + 1, n - 1);  /* dot-stuffing removed */
	else
		buf_append(out, p, n);          /* "." alone is content here */
}

static void reference(const char *in, size_t len, enum smtp_data_mode mode, enum bare_lf_mode bare,
		      struct result *r)
{
	bool clean = true;   /* the current line began at the start or after a real CR LF */
	size_t i = 0;
	r->consumed = len;
	for (;;) {
		size_t j = i;
		while (j < len && in[j] != '\r' && in[j] != '\n')
			j++;
		const char *line = in + i;
		size_t n = j - i;
		if (memchr(line, '\0', n) != NULL)
			r->bad |= SMTP_DATA_BAD_NUL;
		bool pending_cr = j + 1 == len && in[j] == '\r';
		if (j == len || pending_cr) {
			/* An unterminated last line: in DATA a leading dot stays held
			 * back until the line's end is known. */
			if (mode == SMTP_DATA_DOT && n >= 1 && line[0] == '.') {
				if (n > 1)
					buf_append(&r->out, line + 1, n - 1);
			} else {
				buf_append(&r->out, line, n);
			}
			/* smtp_data_finish: a pending CR is a bare line end, a held
			 * dot is content. */
			buf_append(&r->out_fin, r->out.data, r->out.len);
			r->bad_fin = r->bad;
			if (mode == SMTP_DATA_DOT && n == 1 && line[0] == '.')
				buf_append_char(&r->out_fin, '.');
			if (pending_cr) {
				buf_append(&r->out_fin, "\r\n", 2);
				if (bare == BARE_LF_REJECT)
					r->bad_fin |= SMTP_DATA_BAD_BARE_LF;
			}
			return;
		}
		bool crlf = in[j] == '\r' && in[j + 1] == '\n';
		if (mode == SMTP_DATA_DOT && crlf && clean && n == 1 && line[0] == '.') {
			r->done = true;
			r->consumed = j + 2;
			buf_append(&r->out_fin, r->out.data, r->out.len);
			r->bad_fin = r->bad;
			return;
		}
		ref_content(mode, line, n, &r->out);
		buf_append(&r->out, "\r\n", 2);
		if (!crlf && bare == BARE_LF_REJECT)
			r->bad |= SMTP_DATA_BAD_BARE_LF;
		clean = crlf;
		i = j + (crlf ? 2 : 1);
	}
}

/* ---- the state machine under test ------------------------------------------ */

/* how: 0 whole, 1 one octet at a time, 2 random pieces. */
static void run(const char *in, size_t len, enum smtp_data_mode mode, enum bare_lf_mode bare, int how,
		struct fuzz_rng *rng, struct result *r)
{
	struct smtp_data d;
	smtp_data_init(&d, mode, bare);
	size_t pos = 0, empty_feeds = 0;
	while (pos < len && !d.done) {
		size_t n = how == 0 ? len - pos : how == 1 ? 1 : fuzz_rng_chunk(rng, len - pos);
		/* zero-length feeds are part of the test, but capped: the loop
		 * otherwise consumes at least one octet per round */
		if (n == 0 && ++empty_feeds > len + 16)
			n = 1;
		size_t before = r->out.len;
		size_t used = smtp_data_feed(&d, in + pos, n, &r->out);
		FUZZ_CHECK(used <= n, "consumed %zu of %zu", used, n);
		FUZZ_CHECK(used == n || d.done, "stopped after %zu of %zu without end of data", used, n);
		FUZZ_CHECK(r->out.len - before <= 2 * used + 3, "%zu octets out for %zu in",
			   r->out.len - before, used);
		pos += used;
	}
	r->consumed = pos;
	r->done = d.done;
	r->bad = d.bad;
	buf_append(&r->out_fin, r->out.data, r->out.len);
	smtp_data_finish(&d, &r->out_fin);
	r->bad_fin = d.bad;
}

static void check_output_lines(const struct buf *b, const char *what)
{
	for (size_t i = 0; i < b->len; i++) {
		if (b->data[i] == '\r')
			FUZZ_CHECK(i + 1 < b->len && b->data[i + 1] == '\n', "%s: bare CR stored at %zu", what, i);
		if (b->data[i] == '\n')
			FUZZ_CHECK(i > 0 && b->data[i - 1] == '\r', "%s: bare LF stored at %zu", what, i);
	}
}

static void check_end(const char *in, size_t len, enum smtp_data_mode mode, const struct result *r)
{
	if (!r->done)
		return;
	FUZZ_CHECK(mode == SMTP_DATA_DOT, "BDAT data ended");
	size_t c = r->consumed;
	FUZZ_CHECK(c >= 3 && c <= len && memcmp(in + c - 3, ".\r\n", 3) == 0,
		   "end of data at %zu not after \".CRLF\"", c);
	FUZZ_CHECK(c == 3 || (c >= 5 && memcmp(in + c - 5, "\r\n", 2) == 0),
		   "end of data at %zu not after CRLF.CRLF", c);
}

static void compare(const char *what, const struct result *want, const struct result *got)
{
	fuzz_check_same(what, want->out.data, want->out.len, got->out.data, got->out.len);
	fuzz_check_same(what, want->out_fin.data, want->out_fin.len, got->out_fin.data, got->out_fin.len);
	FUZZ_CHECK(want->done == got->done && want->consumed == got->consumed,
		   "%s: done %d after %zu octets, reference %d after %zu", what, got->done, got->consumed,
		   want->done, want->consumed);
	FUZZ_CHECK(want->bad == got->bad && want->bad_fin == got->bad_fin,
		   "%s: flags %#x/%#x, reference %#x/%#x", what, got->bad, got->bad_fin, want->bad,
		   want->bad_fin);
}

static void check_mode(const char *in, size_t len, enum smtp_data_mode mode, enum bare_lf_mode bare)
{
	static const char *const names[2][2][3] = {
		{ { "DATA normalize whole", "DATA normalize octets", "DATA normalize split" },
		  { "DATA reject whole", "DATA reject octets", "DATA reject split" } },
		{ { "BDAT normalize whole", "BDAT normalize octets", "BDAT normalize split" },
		  { "BDAT reject whole", "BDAT reject octets", "BDAT reject split" } },
	};
	struct result want = { BUF_INIT, BUF_INIT, 0, 0, false, 0 };
	reference(in, len, mode, bare, &want);
	struct fuzz_rng rng;
	fuzz_rng_init(&rng, in, len, (uint64_t)mode * 2 + (uint64_t)bare);
	for (int how = 0; how < 3; how++) {
		const char *what = names[mode][bare][how];
		struct result got = { BUF_INIT, BUF_INIT, 0, 0, false, 0 };
		run(in, len, mode, bare, how, &rng, &got);
		compare(what, &want, &got);
		check_end(in, len, mode, &got);
		check_output_lines(&got.out_fin, what);
		FUZZ_CHECK(got.out_fin.len <= 2 * got.consumed + 3, "%s: %zu octets out for %zu in", what,
			   got.out_fin.len, got.consumed);
		if (bare == BARE_LF_NORMALIZE)
			FUZZ_CHECK(!(got.bad_fin & SMTP_DATA_BAD_BARE_LF), "%s: bare LF flagged", what);
		if (got.bad_fin != 0) {
			const struct smtp_data_reject *rj = smtp_data_reject_reply(got.bad_fin);
			FUZZ_CHECK(rj->code >= 500 && rj->code < 600 && rj->enh != NULL && rj->text != NULL,
				   "%s: reject reply %d", what, rj->code);
		}
		result_free(&got);
	}
	result_free(&want);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *in = (const char *)data;
	check_mode(in, size, SMTP_DATA_DOT, BARE_LF_NORMALIZE);
	check_mode(in, size, SMTP_DATA_DOT, BARE_LF_REJECT);
	check_mode(in, size, SMTP_DATA_BDAT, BARE_LF_NORMALIZE);
	check_mode(in, size, SMTP_DATA_BDAT, BARE_LF_REJECT);
	return 0;
}
