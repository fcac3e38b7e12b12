/*
 * smtp_data_test.c - the DATA/BDAT state machine (src/smtp/smtp_data.c),
 * and submission's Date:/Message-ID: fixes (src/smtp/smtp_hdrfix.c).
 *
 * Every case is fed whole, one byte at a time, and in many random splits;
 * all must give the same stored bytes, end flag, end position and bad
 * flags.  The smuggling cases are the CVE-2023-51764 family: anything but
 * <CRLF>.<CRLF> must be content.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "smtp_data.h"
#include "smtp_hdrfix.h"

#define S(lit) lit, (sizeof(lit) - 1)

struct data_case {
	const char *label;
	enum smtp_data_mode mode;
	enum bare_lf_mode bare_lf;
	const char *in;
	size_t in_len;
	const char *out;
	size_t out_len;
	bool done;
	size_t left;         /* DOT mode: input octets after the end (ignored when !done) */
	unsigned bad;
};

#define N BARE_LF_NORMALIZE
#define R BARE_LF_REJECT
#define DOT SMTP_DATA_DOT
#define BDAT SMTP_DATA_BDAT
#define NUL SMTP_DATA_BAD_NUL
#define BARE SMTP_DATA_BAD_BARE_LF

static const struct data_case cases[] = {
	{ "simple message", DOT, N, S("Subject: x\r\n\r\nbody\r\n.\r\n"),
	  S("Subject: x\r\n\r\nbody\r\n"), true, 0, 0 },
	{ "empty message", DOT, N, S(".\r\n"), S(""), true, 0, 0 },
	{ "pipelined command stays", DOT, N, S("a\r\n.\r\nQUIT\r\n"), S("a\r\n"), true, 6, 0 },
	{ "dot stuffing removed", DOT, N, S("..x\r\n..\r\n...\r\n.\r\n"),
	  S(".x\r\n.\r\n..\r\n"), true, 0, 0 },
	{ "unstuffed leading dot dropped", DOT, N, S(".x\r\n.\r\n"), S("x\r\n"), true, 0, 0 },
	{ "dot inside line kept", DOT, N, S("a.b\r\n a.\r\n.\r\n"), S("a.b\r\n a.\r\n"), true, 0, 0 },
	{ "incomplete terminator", DOT, N, S("a\r\n.\r"), S("a\r\n"), false, 0, 0 },
	{ "no terminator yet", DOT, N, S("a\r\nb"), S("a\r\nb"), false, 0, 0 },
	{ "smuggle LF.LF", DOT, N, S("a\n.\nMAIL FROM:<x@y>\r\n.\r\n"),
	  S("a\r\n.\r\nMAIL FROM:<x@y>\r\n"), true, 0, 0 },
	{ "smuggle LF.LF reject", DOT, R, S("a\n.\nMAIL FROM:<x@y>\r\n.\r\n"),
	  S("a\r\n.\r\nMAIL FROM:<x@y>\r\n"), true, 0, BARE },
	{ "smuggle CRLF.LF", DOT, N, S("a\r\n.\nb\r\n.\r\n"), S("a\r\n.\r\nb\r\n"), true, 0, 0 },
	{ "smuggle LF.CRLF", DOT, N, S("a\n.\r\nb\r\n.\r\n"), S("a\r\n.\r\nb\r\n"), true, 0, 0 },
	{ "smuggle CR.CR", DOT, N, S("a\r.\rb\r\n.\r\n"), S("a\r\n.\r\nb\r\n"), true, 0, 0 },
	{ "smuggle CR.CRLF", DOT, N, S("a\r.\r\nb\r\n.\r\n"), S("a\r\n.\r\nb\r\n"), true, 0, 0 },
	{ "smuggle CRLF.CR", DOT, N, S("a\r\n.\rb\r\n.\r\n"), S("a\r\n.\r\nb\r\n"), true, 0, 0 },
	{ "smuggle CRLF.CR reject", DOT, R, S("a\r\n.\rb\r\n.\r\n"), S("a\r\n.\r\nb\r\n"), true, 0, BARE },
	{ "smuggle at start LF", DOT, N, S(".\nx\r\n.\r\n"), S(".\r\nx\r\n"), true, 0, 0 },
	{ "bare-LF dot line then end", DOT, N, S("a\n.\r\n.\r\n"), S("a\r\n.\r\n"), true, 0, 0 },
	{ "bare LF normalised", DOT, N, S("a\nb\n\r\n.\r\n"), S("a\r\nb\r\n\r\n"), true, 0, 0 },
	{ "bare LF rejected", DOT, R, S("a\nb\r\n.\r\n"), S("a\r\nb\r\n"), true, 0, BARE },
	{ "bare CR normalised", DOT, N, S("a\rb\r\n.\r\n"), S("a\r\nb\r\n"), true, 0, 0 },
	{ "CR CR LF", DOT, N, S("a\r\r\nb\r\n.\r\n"), S("a\r\n\r\nb\r\n"), true, 0, 0 },
	{ "CR CR LF reject", DOT, R, S("a\r\r\nb\r\n.\r\n"), S("a\r\n\r\nb\r\n"), true, 0, BARE },
	{ "dot CR CR LF", DOT, N, S(".\r\r\n.\r\n"), S(".\r\n\r\n"), true, 0, 0 },
	{ "stuffed dot after bare LF", DOT, N, S("a\n..b\r\n.\r\n"), S("a\r\n.b\r\n"), true, 0, 0 },
	{ "NUL marks bad", DOT, N, S("a\0b\r\n.\r\n"), S("a\0b\r\n"), true, 0, NUL },
	{ "NUL after dot", DOT, N, S(".\0\r\n.\r\n"), S("\0\r\n"), true, 0, NUL },
	{ "NUL and bare LF", DOT, R, S("\0\n\r\n.\r\n"), S("\0\r\n\r\n"), true, 0, NUL | BARE },
	{ "8-bit bytes pass", DOT, N, S("caf\xc3\xa9\xff\r\n.\r\n"), S("caf\xc3\xa9\xff\r\n"), true, 0, 0 },
	{ "blank lines kept", DOT, N, S("\r\n\r\n.\r\n"), S("\r\n\r\n"), true, 0, 0 },

	{ "bdat plain", BDAT, N, S("hello\r\nworld\r\n"), S("hello\r\nworld\r\n"), false, 0, 0 },
	{ "bdat no dot handling", BDAT, N, S("..x\r\n.\r\n.\r\n"), S("..x\r\n.\r\n.\r\n"), false, 0, 0 },
	{ "bdat bare LF", BDAT, N, S("a\nb"), S("a\r\nb"), false, 0, 0 },
	{ "bdat bare LF reject", BDAT, R, S("a\nb"), S("a\r\nb"), false, 0, BARE },
	{ "bdat bare CR", BDAT, R, S("a\rb"), S("a\r\nb"), false, 0, BARE },
	{ "bdat trailing CR at LAST", BDAT, R, S("a\r"), S("a\r\n"), false, 0, BARE },
	{ "bdat trailing CRLF", BDAT, R, S("a\r\n"), S("a\r\n"), false, 0, 0 },
	{ "bdat NUL", BDAT, N, S("a\0"), S("a\0"), false, 0, NUL },
};

struct run_result {
	struct buf out;
	bool done;
	size_t consumed;
	unsigned bad;
};

/* Feeds c->in split at the offsets produced by next_len (total == in_len). */
static void run(const struct data_case *c, size_t (*next_len)(void *st, size_t left), void *st,
		struct run_result *r)
{
	struct smtp_data d;
	smtp_data_init(&d, c->mode, c->bare_lf);
	memset(r, 0, sizeof(*r));
	size_t off = 0;
	while (off < c->in_len && !d.done) {
		size_t n = next_len(st, c->in_len - off);
		size_t used = smtp_data_feed(&d, c->in + off, n, &r->out);
		assert_true(used <= n);
		if (!d.done)
			assert_int_equal(used, n);
		off += used;
	}
	if (c->mode == SMTP_DATA_BDAT)
		smtp_data_finish(&d, &r->out);
	r->done = d.done;
	r->consumed = off;
	r->bad = d.bad;
}

static size_t whole(void *st, size_t left)
{
	(void)st;
	return left;
}

static size_t one(void *st, size_t left)
{
	(void)st;
	(void)left;
	return 1;
}

static size_t random_len(void *st, size_t left)
{
	uint64_t *x = st;
	*x = *x * 6364136223846793005ull + 1442695040888963407ull;
	size_t n = (size_t)((*x >> 33) % 5) + 1;
	return n < left ? n : left;
}

static void print_bytes(const char *what, const char *p, size_t n)
{
	fprintf(stderr, "  %s (%zu): \"", what, n);
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)p[i];
		if (ch >= 0x20 && ch < 0x7f && ch != '\\')
			fputc(ch, stderr);
		else
			fprintf(stderr, "\\x%02x", ch);
	}
	fprintf(stderr, "\"\n");
}

static void check(const struct data_case *c, const char *how, struct run_result *r)
{
	bool ok = r->out.len == c->out_len && memcmp(r->out.data ? r->out.data : "", c->out, c->out_len) == 0 &&
		  r->done == c->done && r->bad == c->bad && (!c->done || r->consumed == c->in_len - c->left);
	if (!ok) {
		fprintf(stderr, "case '%s' fed %s:\n", c->label, how);
		print_bytes("input   ", c->in, c->in_len);
		print_bytes("expected", c->out, c->out_len);
		print_bytes("got     ", r->out.data ? r->out.data : "", r->out.len);
		fprintf(stderr, "  done expected %d got %d; consumed expected %zu got %zu; bad expected %u got %u\n",
			c->done, r->done, c->in_len - c->left, r->consumed, c->bad, r->bad);
	}
	buf_free(&r->out);
	assert_true(ok);
}

static void test_data_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		const struct data_case *c = &cases[i];
		struct run_result r;
		run(c, whole, NULL, &r);
		check(c, "whole", &r);
		run(c, one, NULL, &r);
		check(c, "byte at a time", &r);
		for (uint64_t seed = 1; seed <= 200; seed++) {
			uint64_t x = seed * 0x9e3779b97f4a7c15ull;
			run(c, random_len, &x, &r);
			char how[64];
			snprintf(how, sizeof(how), "in random splits (seed %llu)", (unsigned long long)seed);
			check(c, how, &r);
		}
	}
}

/* BDAT: the state carries across chunks, so CR at the end of one chunk and
 * LF at the start of the next is one CRLF. */
static void test_bdat_chunks(void **state)
{
	(void)state;
	static const struct {
		const char *label;
		enum bare_lf_mode mode;
		const char *chunks[4];
		const char *out;
		unsigned bad;
	} chunk_cases[] = {
		{ "CR|LF is CRLF", R, { "a\r", "\nb\r\n", NULL }, "a\r\nb\r\n", 0 },
		{ "CR|x is bare CR", R, { "a\r", "b", NULL }, "a\r\nb", BARE },
		{ "CR|x normalised", N, { "a\r", "b", NULL }, "a\r\nb", 0 },
		{ "CR|CR|LF", R, { "a\r", "\r", "\n" }, "a\r\n\r\n", BARE },
		{ "CR|empty|LF", R, { "a\r", "", "\n" }, "a\r\n", 0 },
		{ "CR at LAST", N, { "x\r\n", "y\r", NULL }, "x\r\ny\r\n", 0 },
		{ "dots untouched", R, { ".\r", "\n.", "\r\n" }, ".\r\n.\r\n", 0 },
	};
	for (size_t i = 0; i < ARRAY_LEN(chunk_cases); i++) {
		struct smtp_data d;
		struct buf out = BUF_INIT;
		smtp_data_init(&d, SMTP_DATA_BDAT, chunk_cases[i].mode);
		for (size_t k = 0; k < 4 && chunk_cases[i].chunks[k] != NULL; k++) {
			const char *ch = chunk_cases[i].chunks[k];
			assert_int_equal(smtp_data_feed(&d, ch, strlen(ch), &out), strlen(ch));
		}
		smtp_data_finish(&d, &out);
		const char *got = out.data ? out.data : "";
		bool ok = strcmp(got, chunk_cases[i].out) == 0 && d.bad == chunk_cases[i].bad && !d.done;
		if (!ok) {
			fprintf(stderr, "bdat case '%s':\n", chunk_cases[i].label);
			print_bytes("expected", chunk_cases[i].out, strlen(chunk_cases[i].out));
			print_bytes("got     ", got, out.len);
			fprintf(stderr, "  bad expected %u got %u\n", chunk_cases[i].bad, d.bad);
		}
		buf_free(&out);
		assert_true(ok);
	}
}

/* Output stays within 2n + 3 for any input (the bound the session relies on). */
static void test_output_bound(void **state)
{
	(void)state;
	static const char alphabet[] = { '\r', '\n', '.', 'a', '\0' };
	uint64_t x = 42;
	for (int iter = 0; iter < 2000; iter++) {
		char in[64];
		for (size_t i = 0; i < sizeof(in); i++) {
			x = x * 6364136223846793005ull + 1442695040888963407ull;
			in[i] = alphabet[(x >> 33) % sizeof(alphabet)];
		}
		struct smtp_data d;
		smtp_data_init(&d, iter % 2 ? SMTP_DATA_BDAT : SMTP_DATA_DOT, BARE_LF_NORMALIZE);
		struct buf out = BUF_INIT;
		size_t used = smtp_data_feed(&d, in, sizeof(in), &out);
		assert_true(out.len <= 2 * used + 3);
		if (!d.done)
			assert_int_equal(used, sizeof(in));
		/* Only the real terminator ends the data. */
		if (d.done)
			assert_true(used >= 3 && memcmp(in + used - 3, ".\r\n", 3) == 0 &&
				    (used == 3 || (used >= 5 && memcmp(in + used - 5, "\r\n", 2) == 0)));
		buf_free(&out);
	}
}

static void test_reject_reply(void **state)
{
	(void)state;
	const struct smtp_data_reject *r = smtp_data_reject_reply(SMTP_DATA_BAD_NUL);
	assert_int_equal(r->code, 554);
	assert_string_equal(r->enh, "5.6.0");
	r = smtp_data_reject_reply(SMTP_DATA_BAD_BARE_LF);
	assert_int_equal(r->code, 550);
	assert_string_equal(r->enh, "5.6.11");
	r = smtp_data_reject_reply(SMTP_DATA_BAD_BARE_LF | SMTP_DATA_BAD_NUL);
	assert_int_equal(r->code, 554);
}

/* ---- submission header fixes (smtp_hdrfix.c) ----------------------------------- */

#define FIX_DATE "Sun, 29 Nov 2026 03:00:00 +0000"
#define FIX_ID "<q1@mail.example>"
#define ADD_BOTH "Date: " FIX_DATE "\r\nMessage-ID: " FIX_ID "\r\n"
#define ADD_DATE "Date: " FIX_DATE "\r\n"
#define ADD_ID "Message-ID: " FIX_ID "\r\n"

struct fix_case {
	const char *label;
	const char *in;
	const char *out;
};

static const struct fix_case fix_cases[] = {
	{ "both missing", "Subject: hi\r\n\r\nbody\r\n", "Subject: hi\r\n" ADD_BOTH "\r\nbody\r\n" },
	{ "both present", "Date: x\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n", "Date: x\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n" },
	{ "only date present, any case", "DATE: x\r\nSubject: s\r\n\r\nb\r\n", "DATE: x\r\nSubject: s\r\n" ADD_ID "\r\nb\r\n" },
	{ "only message-id present", "message-id: <a@b>\r\n\r\nb\r\n", "message-id: <a@b>\r\n" ADD_DATE "\r\nb\r\n" },
	{ "folded field", "Subject: a\r\n long\r\n\tfold\r\n\r\nb\r\n", "Subject: a\r\n long\r\n\tfold\r\n" ADD_BOTH "\r\nb\r\n" },
	{ "date in a fold is not a field", "Subject: a\r\n Date: x\r\n\r\nb\r\n", "Subject: a\r\n Date: x\r\n" ADD_BOTH "\r\nb\r\n" },
	{ "date in the body is not a field", "Subject: a\r\n\r\nDate: x\r\n", "Subject: a\r\n" ADD_BOTH "\r\nDate: x\r\n" },
	{ "name prefix is not the field", "Dated: x\r\nMessage-IDs: y\r\n\r\n", "Dated: x\r\nMessage-IDs: y\r\n" ADD_BOTH "\r\n" },
	{ "obsolete blank before colon", "Date : x\r\n\r\n", "Date : x\r\n" ADD_ID "\r\n" },
	{ "no header at all", "hello world\r\n", ADD_BOTH "\r\nhello world\r\n" },
	{ "body line after fields", "Subject: a\r\nnot a field\r\n", "Subject: a\r\n" ADD_BOTH "\r\nnot a field\r\n" },
	{ "leading fold is body", " x\r\n", ADD_BOTH "\r\n x\r\n" },
	{ "all header, no body", "Subject: a\r\n", "Subject: a\r\n" ADD_BOTH },
	{ "all header, no final CRLF", "Subject: a", "Subject: a\r\n" ADD_BOTH },
	{ "empty message", "", ADD_BOTH },
	{ "only the separator", "\r\nbody\r\n", ADD_BOTH "\r\nbody\r\n" },
	{ "8-bit at line start is body", "\xc3\xa9t\xc3\xa9\r\n", ADD_BOTH "\r\n\xc3\xa9t\xc3\xa9\r\n" },
	{ "received header first", "Received: from x\r\n\tby y; date\r\nSubject: s\r\n\r\nb\r\n",
	  "Received: from x\r\n\tby y; date\r\nSubject: s\r\n" ADD_BOTH "\r\nb\r\n" },
	{ "body keeps everything", "Subject: a\r\n\r\nx\r\n\r\ny: z\r\n", "Subject: a\r\n" ADD_BOTH "\r\nx\r\n\r\ny: z\r\n" },
};

/* Feeds `in` in pieces of `step` octets (0: whole). */
static void fix_run(const struct fix_case *c, size_t step, struct buf *out)
{
	struct smtp_hdrfix h;
	smtp_hdrfix_init(&h, FIX_DATE, FIX_ID);
	size_t len = strlen(c->in);
	size_t n = step == 0 ? (len > 0 ? len : 1) : step;
	for (size_t i = 0; i < len; i += n)
		smtp_hdrfix_feed(&h, c->in + i, len - i < n ? len - i : n, out);
	smtp_hdrfix_finish(&h, out);
	assert_true(h.done);
}

static void test_hdrfix_table(void **state)
{
	(void)state;
	static const size_t steps[] = { 0, 1, 2, 3, 7 };
	for (size_t i = 0; i < ARRAY_LEN(fix_cases); i++) {
		for (size_t k = 0; k < ARRAY_LEN(steps); k++) {
			struct buf out = BUF_INIT;
			fix_run(&fix_cases[i], steps[k], &out);
			const char *got = out.data != NULL ? out.data : "";
			if (out.len != strlen(fix_cases[i].out) || memcmp(got, fix_cases[i].out, out.len) != 0) {
				fprintf(stderr, "hdrfix '%s' (step %zu):\n expected [%s]\n got      [%.*s]\n", fix_cases[i].label,
					steps[k], fix_cases[i].out, (int)out.len, got);
				buf_free(&out);
				fail();
			}
			buf_free(&out);
		}
	}
}

/* A line that never shows a colon is held for at most SMTP_HDRFIX_HOLD
 * octets, then counts as body: bounded memory, nothing lost. */
static void test_hdrfix_bound(void **state)
{
	(void)state;
	size_t len = SMTP_HDRFIX_HOLD * 3;
	char *in = malloc(len);
	assert_non_null(in);
	memset(in, 'x', len);
	struct smtp_hdrfix h;
	smtp_hdrfix_init(&h, FIX_DATE, FIX_ID);
	struct buf out = BUF_INIT;
	for (size_t i = 0; i < len; i++) {
		smtp_hdrfix_feed(&h, in + i, 1, &out);
		assert_true(h.hold_len <= SMTP_HDRFIX_HOLD);
	}
	assert_true(h.done);
	smtp_hdrfix_finish(&h, &out);
	const char *add = ADD_BOTH "\r\n";
	assert_int_equal(out.len, strlen(add) + len);
	assert_memory_equal(out.data, add, strlen(add));
	assert_memory_equal(out.data + strlen(add), in, len);
	buf_free(&out);
	free(in);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_data_table),
		cmocka_unit_test(test_bdat_chunks),
		cmocka_unit_test(test_output_bound),
		cmocka_unit_test(test_reject_reply),
		cmocka_unit_test(test_hdrfix_table),
		cmocka_unit_test(test_hdrfix_bound),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
