/*
 * imap_parser_test.c - IMAP command framing, arguments and sequence sets
 * (src/imap/imap_parser.c), and BINARY's content-transfer-encoding
 * decoders (src/imap/imap_binary.c).
 *
 * Every framing case is fed whole, in 7-byte pieces and one byte at a time;
 * the events and the parsed commands (rendered as text) must equal the
 * table in every case.  Every decoder case is fed whole and one byte at a
 * time, with the same output.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "imap_int.h"
#include "imap_parser.h"

#define S(lit) lit, (sizeof(lit) - 1)

/* Renders arguments: atom a:x, quoted q:x, literal l:x, list (...), with
 * one space between items. */
static void render_args(const struct imap_arg *args, size_t n, struct buf *out)
{
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			buf_append_char(out, ' ');
		const struct imap_arg *a = &args[i];
		switch (a->type) {
		case IMAP_ARG_ATOM: buf_printf(out, "a:%s", a->str); break;
		case IMAP_ARG_QUOTED: buf_printf(out, "q:%s", a->str); break;
		case IMAP_ARG_LITERAL:
			if (a->str == NULL)
				buf_printf(out, "%ss:%zu", a->literal8 ? "8" : "", a->len);
			else
				buf_printf(out, "%sl:%s", a->literal8 ? "8" : "", a->str);
			break;
		case IMAP_ARG_LIST:
			buf_append_char(out, '(');
			render_args(a->list, a->n, out);
			buf_append_char(out, ')');
			break;
		}
	}
}

/* "OK tag NAME args" or "BAD tag: error" */
static void render_parse(const char *data, size_t len, bool stream_tail, struct buf *out)
{
	struct imap_cmd cmd;
	char *err = NULL;
	if (imap_parse_command(data, len, stream_tail, &cmd, &err) != ST_OK) {
		buf_printf(out, "BAD %s: %s", cmd.tag, err);
		free(err);
		return;
	}
	buf_printf(out, "OK %s %s%s", cmd.tag, cmd.uid ? "UID " : "", cmd.name);
	if (cmd.n_args > 0) {
		buf_append_char(out, ' ');
		render_args(cmd.args, cmd.n_args, out);
	}
	imap_cmd_free(&cmd);
}

/* ---- argument parsing ------------------------------------------------------ */

struct parse_case {
	const char *label;
	const char *in;
	size_t in_len;
	const char *want;
};

static const struct parse_case parse_cases[] = {
	{ "bare command", S("a1 NOOP"), "OK a1 NOOP" },
	{ "lower-case name", S("a1 noop"), "OK a1 NOOP" },
	{ "login atoms", S("A2 LOGIN alice secret"), "OK A2 LOGIN a:alice a:secret" },
	{ "quoted with escapes", S("t LOGIN \"al\\\"ice\" \"p\\\\w d\""), "OK t LOGIN q:al\"ice q:p\\w d" },
	{ "empty quoted", S("t LOGIN \"\" x"), "OK t LOGIN q: a:x" },
	{ "literal", S("t LOGIN {5}\r\nalice pw"), "OK t LOGIN l:alice a:pw" },
	{ "literal plus", S("t LOGIN {2+}\r\nab {0}\r\n"), "OK t LOGIN l:ab l:" },
	{ "nested list", S("t STORE 1 +FLAGS (\\Seen (a b) \\Flagged)"),
	  "OK t STORE a:1 a:+FLAGS (a:\\Seen (a:a a:b) a:\\Flagged)" },
	{ "empty list", S("t X ()"), "OK t X ()" },
	{ "uid prefix", S("t UID fetch 1:* (FLAGS)"), "OK t UID FETCH a:1:* (a:FLAGS)" },
	{ "section with spaces", S("t FETCH 1 (BODY.PEEK[HEADER.FIELDS (From To)]<0.10> UID)"),
	  "OK t FETCH a:1 (a:BODY.PEEK[HEADER.FIELDS (From To)]<0.10> a:UID)" },
	{ "list wildcards", S("t LIST \"\" %"), "OK t LIST q: a:%" },
	{ "tag with ]", S("a]1 NOOP"), "OK a]1 NOOP" },
	{ "streamed tail ends the text", S("t APPEND INBOX (\\Seen) {20}"), "BAD t: Literal announcement must end the line" },
	{ "literal8", S("t APPEND INBOX ~{3}\r\na\x01" "b"), "OK t APPEND a:INBOX 8l:a\x01" "b" },
	{ "literal8 plus", S("t APPEND INBOX ~{2+}\r\nab x"), "OK t APPEND a:INBOX 8l:ab a:x" },
	{ "tilde atom", S("t X ~a ~"), "OK t X a:~a a:~" },
	{ "literal8 without crlf", S("t X ~{3}abc"), "BAD t: Literal announcement must end the line" },
	/* errors */
	{ "empty line", S(""), "BAD *: Empty command line" },
	{ "no command", S("a1"), "BAD a1: Missing command" },
	{ "bad tag", S("a+1 NOOP"), "BAD *: Invalid tag" },
	{ "star tag", S("* NOOP"), "BAD *: Invalid tag" },
	{ "digit in name", S("a1 NO0P"), "BAD a1: Unknown command" },
	{ "unbalanced open", S("t X (a (b)"), "BAD t: Missing )" },
	{ "unbalanced close", S("t X a)"), "BAD t: Unexpected )" },
	{ "lone close", S("t X )"), "BAD t: Unexpected )" },
	{ "close after list", S("t X (a))"), "BAD t: Unexpected )" },
	{ "double space", S("t X a  b"), "BAD t: Unexpected space" },
	{ "trailing space", S("t X a "), "BAD t: Unexpected space" },
	{ "unterminated quote", S("t X \"abc"), "BAD t: Unterminated quoted string" },
	{ "bad escape", S("t X \"a\\bc\""), "BAD t: Bad escape in quoted string" },
	{ "negative literal", S("t X {-5}"), "BAD t: Bad literal" },
	{ "short literal", S("t X {10}\r\nabc"), "BAD t: Literal shorter than announced" },
	{ "huge literal digits", S("t X {123456789012345678901234}\r\n"), "BAD t: Bad literal" },
	{ "unbalanced bracket", S("t FETCH 1 BODY[HEADER"), "BAD t: Unbalanced [" },
	{ "depth 16 ok", S("t X ((((((((((((((((a))))))))))))))))"),
	  "OK t X ((((((((((((((((a:a))))))))))))))))" },
	{ "depth 17 refused", S("t X (((((((((((((((((a)))))))))))))))))"), "BAD t: Too deeply nested" },
	{ "ctl in atom", S("t X a\x01"), "BAD t: Missing space between arguments" },
};

static void test_parse_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(parse_cases); i++) {
		const struct parse_case *c = &parse_cases[i];
		struct buf got = BUF_INIT;
		render_parse(c->in, c->in_len, false, &got);
		if (strcmp(got.data, c->want) != 0)
			fail_msg("case '%s':\n  want: %s\n  got:  %s", c->label, c->want, got.data);
		buf_free(&got);
	}
}

static void test_parse_stream_tail(void **state)
{
	(void)state;
	static const struct parse_case cases[] = {
		{ "one", S("t APPEND INBOX (\\Seen) \"1-Jan-2020 00:00:00 +0000\" {20}"),
		  "OK t APPEND a:INBOX (a:\\Seen) q:1-Jan-2020 00:00:00 +0000 s:20" },
		{ "multiappend", S("t APPEND INBOX {20} (\\Seen) ~{5} {7}"),
		  "OK t APPEND a:INBOX s:20 (a:\\Seen) 8s:5 s:7" },
		{ "memory literal before", S("t APPEND {5}\r\nINBOX {9}"), "OK t APPEND l:INBOX s:9" },
		{ "text right after", S("t APPEND INBOX {3}x"), "BAD t: Missing space between arguments" },
		{ "not inside a list", S("t APPEND INBOX ({3} x) {4}"), "BAD t: Literal announcement must end the line" },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct buf got = BUF_INIT;
		render_parse(cases[i].in, cases[i].in_len, true, &got);
		if (strcmp(got.data, cases[i].want) != 0)
			fail_msg("case '%s':\n  want: %s\n  got:  %s", cases[i].label, cases[i].want, got.data);
		buf_free(&got);
	}
}

static void test_parse_deep_nesting(void **state)
{
	(void)state;
	/* 10,000 levels: refused without recursion past the limit. */
	struct buf in = BUF_INIT;
	buf_append_str(&in, "t X ");
	for (int i = 0; i < 10000; i++)
		buf_append_char(&in, '(');
	for (int i = 0; i < 10000; i++)
		buf_append_char(&in, ')');
	struct buf got = BUF_INIT;
	render_parse(in.data, in.len, false, &got);
	assert_string_equal(got.data, "BAD t: Too deeply nested");
	buf_reset(&in);
	buf_append_str(&in, "t FETCH 1 BODY");
	for (int i = 0; i < 10000; i++)
		buf_append_char(&in, '[');
	buf_reset(&got);
	render_parse(in.data, in.len, false, &got);
	assert_string_equal(got.data, "BAD t: Too deeply nested");
	buf_free(&in);
	buf_free(&got);
}

static void test_parse_too_many_args(void **state)
{
	(void)state;
	struct buf in = BUF_INIT;
	buf_append_str(&in, "t X");
	for (int i = 0; i < IMAP_MAX_ARGS + 1; i++)
		buf_append_str(&in, " a");
	struct buf got = BUF_INIT;
	render_parse(in.data, in.len, false, &got);
	assert_string_equal(got.data, "BAD t: Too many arguments");
	buf_free(&in);
	buf_free(&got);
}

static void test_parse_literal_with_nul(void **state)
{
	(void)state;
	struct imap_cmd cmd;
	char *err = NULL;
	assert_int_equal(imap_parse_command(S("t LOGIN {3}\r\na\0b x"), false, &cmd, &err), ST_OK);
	assert_int_equal(cmd.n_args, 2);
	assert_int_equal(cmd.args[0].type, IMAP_ARG_LITERAL);
	assert_int_equal(cmd.args[0].len, 3);
	assert_memory_equal(cmd.args[0].str, "a\0b", 3);
	imap_cmd_free(&cmd);
}

/* ---- framing ---------------------------------------------------------------- */

enum lit_policy { POL_MEMORY, POL_REFUSE, POL_STREAM };

struct frame_case {
	const char *label;
	size_t max_line, max_literal;
	enum lit_policy policy;
	const char *in;
	size_t in_len;
	const char *want;   /* events, one per line */
};

static const struct frame_case frame_cases[] = {
	{ "one line", 64, 64, POL_MEMORY, S("a NOOP\r\n"), "CMD OK a NOOP\n" },
	{ "bare lf", 64, 64, POL_MEMORY, S("a NOOP\n"), "CMD OK a NOOP\n" },
	{ "two pipelined", 64, 64, POL_MEMORY, S("a NOOP\r\nb CHECK\r\n"), "CMD OK a NOOP\nCMD OK b CHECK\n" },
	{ "sync literal", 64, 64, POL_MEMORY, S("a LOGIN {5}\r\nalice {2}\r\npw\r\n"),
	  "LIT 5 sync\nLIT 2 sync\nCMD OK a LOGIN l:alice l:pw\n" },
	{ "nonsync literal", 64, 64, POL_MEMORY, S("a LOGIN {5+}\r\nalice x\r\n"),
	  "LIT 5 nonsync\nCMD OK a LOGIN l:alice a:x\n" },
	{ "literal holding crlf and braces", 64, 64, POL_MEMORY, S("a X {7}\r\n{1}\r\n\r\n\r\n"),
	  "LIT 7 sync\nCMD OK a X l:{1}\r\n\r\n\n" },
	{ "zero literal", 64, 64, POL_MEMORY, S("a X {0}\r\n\r\n"), "LIT 0 sync\nCMD OK a X l:\n" },
	{ "line over limit resyncs", 16, 64, POL_MEMORY,
	  S("tag1 X aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\nb NOOP\r\n"), "TOO_LONG tag1\nCMD OK b NOOP\n" },
	{ "over limit: nonsync literal skipped", 16, 64, POL_MEMORY,
	  S("t X aaaaaaaaaaaaaaaaaaaaaa {4+}\r\nb\nc\r\nd NOOP\r\n"), "TOO_LONG t\nCMD OK d NOOP\n" },
	{ "over limit: sync literal ends it", 16, 64, POL_MEMORY,
	  S("t X aaaaaaaaaaaaaaaaaaaaaa {4}\r\nd NOOP\r\n"), "TOO_LONG t\nCMD OK d NOOP\n" },
	{ "text limit spans segments", 16, 64, POL_MEMORY, S("t X {1}\r\na aaaaaaaaaaaaaaaaaa\r\nu NOOP\r\n"),
	  "LIT 1 sync\nTOO_LONG t\nCMD OK u NOOP\n" },
	{ "literal over budget refused (sync)", 64, 4, POL_MEMORY, S("t LOGIN {5}\r\nu NOOP\r\n"),
	  "LIT 5 sync\nENDED t\nCMD OK u NOOP\n" },
	{ "literal over budget refused (nonsync)", 64, 4, POL_MEMORY,
	  S("t LOGIN {5+}\r\nalice pw\r\nu NOOP\r\n"), "LIT 5 nonsync\nREFUSED t\nCMD OK u NOOP\n" },
	{ "budget counts all literals", 64, 6, POL_MEMORY, S("t X {3}\r\nabc {4}\r\nu NOOP\r\n"),
	  "LIT 3 sync\nLIT 4 sync\nENDED t\nCMD OK u NOOP\n" },
	{ "refused by caller", 64, 64, POL_REFUSE, S("t APPEND x {3+}\r\nabc\r\nu NOOP\r\n"),
	  "LIT 3 nonsync\nREFUSED t\nCMD OK u NOOP\n" },
	{ "huge literal size", 64, 64, POL_REFUSE, S("t X {99999999999999999999}\r\nu NOOP\r\n"),
	  "LIT 18446744073709551615 sync\nENDED t\nCMD OK u NOOP\n" },
	{ "streamed", 64, 64, POL_STREAM, S("t APPEND INBOX {10}\r\n0123456789\r\nu NOOP\r\n"),
	  "LIT 10 sync\nSTREAM 0123456789\nCMD OK t APPEND a:INBOX s:10\nCMD OK u NOOP\n" },
	{ "multiappend streamed", 64, 64, POL_STREAM,
	  S("t APPEND INBOX {3}\r\nabc (\\Seen) ~{2+}\r\n\0z\r\nu NOOP\r\n"),
	  "LIT 3 sync\nSTREAM abc\nLIT 2 nonsync\nSTREAM \nCMD OK t APPEND a:INBOX s:3 (a:\\Seen) 8s:2\n"
	  "CMD OK u NOOP\n" },
	{ "negative is not a literal", 64, 64, POL_MEMORY, S("t X {-1}\r\n"), "CMD BAD t: Bad literal\n" },
	{ "empty line", 64, 64, POL_MEMORY, S("\r\n"), "CMD BAD *: Empty command line\n" },
};

static void frame_run(const struct frame_case *c, size_t step, struct buf *log)
{
	/* steps of 0 take the whole input; otherwise pieces of `step` octets */
	struct imap_reader r;
	imap_reader_init(&r, c->max_line, c->max_literal);
	struct buf stream = BUF_INIT;
	size_t off = 0;
	for (size_t guard = 0; off < c->in_len && guard < 100000; guard++) {
		size_t piece = step == 0 ? c->in_len - off : step;
		if (piece > c->in_len - off)
			piece = c->in_len - off;
		enum imap_rd_event ev;
		const char *d = NULL;
		size_t dl = 0;
		size_t used = imap_reader_feed(&r, c->in + off, piece, &ev, &d, &dl);
		off += used;
		switch (ev) {
		case IMAP_RD_NEED_MORE:
			break;
		case IMAP_RD_LITERAL:
			buf_printf(log, "LIT %llu %s\n", (unsigned long long)r.lit_size,
				   r.lit_sync ? "sync" : "nonsync");
			if (imap_reader_literal(&r, c->policy == POL_MEMORY ? IMAP_LIT_MEMORY
						    : c->policy == POL_STREAM ? IMAP_LIT_STREAM
									      : IMAP_LIT_REFUSE))
				buf_printf(log, "ENDED %s\n", r.tag);
			break;
		case IMAP_RD_STREAM:
			buf_append(&stream, d, dl);
			if (r.lit_left == 0) {
				buf_printf(log, "STREAM %s\n", stream.data);
				buf_reset(&stream);
			}
			break;
		case IMAP_RD_COMMAND:
			buf_append_str(log, "CMD ");
			render_parse(r.buf.data, r.len, r.streamed, log);
			buf_append_char(log, '\n');
			imap_reader_reset(&r);
			break;
		case IMAP_RD_TOO_LONG:
			buf_printf(log, "TOO_LONG %s\n", r.tag);
			break;
		case IMAP_RD_REFUSED:
			buf_printf(log, "REFUSED %s\n", r.tag);
			break;
		}
	}
	buf_free(&stream);
	imap_reader_free(&r);
}

static void test_frame_table(void **state)
{
	(void)state;
	static const size_t steps[] = { 0, 7, 1 };
	for (size_t i = 0; i < ARRAY_LEN(frame_cases); i++) {
		const struct frame_case *c = &frame_cases[i];
		for (size_t k = 0; k < ARRAY_LEN(steps); k++) {
			struct buf got = BUF_INIT;
			frame_run(c, steps[k], &got);
			if (got.data == NULL || strcmp(got.data, c->want) != 0)
				fail_msg("case '%s' (step %zu):\n  want: %s\n  got:  %s", c->label, steps[k],
					 c->want, got.data ? got.data : "(nothing)");
			buf_free(&got);
		}
	}
}

static void test_frame_too_many_literals(void **state)
{
	(void)state;
	struct buf in = BUF_INIT, want = BUF_INIT;
	buf_append_str(&in, "t X");
	for (int i = 0; i < IMAP_MAX_LITERALS + 1; i++) {
		buf_append_str(&in, " {1+}\r\nz");
		if (i < IMAP_MAX_LITERALS)
			buf_append_str(&want, "LIT 1 nonsync\n");
	}
	buf_append_str(&in, " rest\r\nu NOOP\r\n");
	buf_append_str(&want, "TOO_LONG t\nCMD OK u NOOP\n");
	struct frame_case c = { "too many literals", 4096, 4096, POL_MEMORY, in.data, in.len, want.data };
	static const size_t steps[] = { 0, 1 };
	for (size_t k = 0; k < ARRAY_LEN(steps); k++) {
		struct buf got = BUF_INIT;
		frame_run(&c, steps[k], &got);
		if (got.data == NULL || strcmp(got.data, want.data) != 0)
			fail_msg("step %zu:\n  want: %s\n  got:  %s", steps[k], want.data, got.data ? got.data : "");
		buf_free(&got);
	}
	buf_free(&in);
	buf_free(&want);
}

/* Random inputs built from protocol fragments: the events must not depend
 * on how the input is split (whole, 1, 3 and 13 octets at a time). */
static void test_frame_random_splits(void **state)
{
	(void)state;
	static const char *const frags[] = {
		"a", "t1 ", "LOGIN", " ", "(", ")", "\"", "\\", "{", "}", "+", "3", "0", "12",
		"\r\n", "\n", "\r", "[", "]", "*", "x y", "{2}\r\n", "{3+}\r\n", "{40}\r\n",
	};
	uint32_t seed = 12345;
	for (int round = 0; round < 3000; round++) {
		char in[256];
		size_t len = 0;
		seed = seed * 1103515245u + 12345u;
		size_t n = 1 + (seed >> 16) % 24;
		for (size_t i = 0; i < n; i++) {
			seed = seed * 1103515245u + 12345u;
			const char *f = frags[(seed >> 16) % ARRAY_LEN(frags)];
			size_t fl = strlen(f);
			if (len + fl >= sizeof(in))
				break;
			memcpy(in + len, f, fl);
			len += fl;
		}
		struct frame_case c = { "random", 24, 16, (enum lit_policy)(round % 3), in, len, NULL };
		struct buf whole = BUF_INIT;
		frame_run(&c, 0, &whole);
		static const size_t steps[] = { 1, 3, 13 };
		for (size_t k = 0; k < ARRAY_LEN(steps); k++) {
			struct buf got = BUF_INIT;
			frame_run(&c, steps[k], &got);
			const char *a = whole.data ? whole.data : "", *b = got.data ? got.data : "";
			if (strcmp(a, b) != 0)
				fail_msg("round %d (step %zu), input '%.*s':\n  whole: %s\n  split: %s", round,
					 steps[k], (int)len, in, a, b);
			buf_free(&got);
		}
		buf_free(&whole);
	}
}

/* ---- sequence sets ---------------------------------------------------------- */

struct seq_case {
	const char *label;
	const char *in;
	bool ok;
	uint32_t max;
	const char *members; /* numbers 1..20 in the set, rendered */
};

static const struct seq_case seq_cases[] = {
	{ "single", "3", true, 10, "3" },
	{ "range", "2:4", true, 10, "2,3,4" },
	{ "reversed range", "4:2", true, 10, "2,3,4" },
	{ "star", "*", true, 10, "10" },
	{ "to star", "8:*", true, 10, "8,9,10" },
	{ "star reversed", "*:9", true, 10, "9,10" },
	{ "list", "1,3:4,*", true, 6, "1,3,4,6" },
	{ "star past max", "12:*", true, 10, "10,11,12" },
	{ "max uint32", "4294967295", true, 10, "" },
	{ "zero", "0", false, 0, NULL },
	{ "zero in range", "1:0", false, 0, NULL },
	{ "leading zero", "01", false, 0, NULL },
	{ "overflow", "4294967296", false, 0, NULL },
	{ "negative", "-1", false, 0, NULL },
	{ "empty", "", false, 0, NULL },
	{ "trailing comma", "1,", false, 0, NULL },
	{ "double colon", "1:2:3", false, 0, NULL },
	{ "searchres", "$", false, 0, NULL },
	{ "letters", "1a", false, 0, NULL },
};

static void test_seqset_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(seq_cases); i++) {
		const struct seq_case *c = &seq_cases[i];
		struct imap_seqset set;
		enum status st = imap_seqset_parse(c->in, &set);
		if ((st == ST_OK) != c->ok)
			fail_msg("case '%s': want %s, got %s", c->label, c->ok ? "ok" : "invalid",
				 st == ST_OK ? "ok" : "invalid");
		if (!c->ok)
			continue;
		struct buf got = BUF_INIT;
		buf_append_str(&got, "");
		for (uint32_t n = 1; n <= 20; n++) {
			if (imap_seqset_contains(&set, n, c->max))
				buf_printf(&got, "%s%u", got.len ? "," : "", n);
		}
		if (strcmp(got.data, c->members) != 0)
			fail_msg("case '%s': want {%s}, got {%s}", c->label, c->members, got.data);
		buf_free(&got);
		imap_seqset_free(&set);
	}
}

static void test_seqset_range_limit(void **state)
{
	(void)state;
	struct buf in = BUF_INIT;
	for (int i = 0; i < IMAP_SEQSET_MAX_RANGES + 1; i++)
		buf_printf(&in, "%s%d", i ? "," : "", i + 1);
	struct imap_seqset set;
	assert_int_equal(imap_seqset_parse(in.data, &set), ST_INVALID);
	assert_null(set.r);
	buf_free(&in);
}

/* ---- BINARY decoders (imap_binary.c) ------------------------------------------- */

struct cte_case {
	const char *label;
	const char *hdr;
	enum imap_cte want;
};

static void test_binary_cte(void **state)
{
	(void)state;
	static const struct cte_case cases[] = {
		{ "none", "Content-Type: text/plain\r\n\r\n", IMAP_CTE_IDENTITY },
		{ "base64", "Content-Type: a/b\r\nContent-Transfer-Encoding: base64\r\n\r\n", IMAP_CTE_BASE64 },
		{ "qp any case, comment", "content-transfer-encoding:  Quoted-Printable (x)\r\n", IMAP_CTE_QP },
		{ "folded", "Content-Transfer-Encoding:\r\n\tbase64\r\n\r\n", IMAP_CTE_BASE64 },
		{ "space before colon", "Content-Transfer-Encoding : base64\n\n", IMAP_CTE_BASE64 },
		{ "8bit", "Content-Transfer-Encoding: 8BIT\r\n", IMAP_CTE_IDENTITY },
		{ "binary", "Content-Transfer-Encoding: binary\r\n", IMAP_CTE_IDENTITY },
		{ "empty value", "Content-Transfer-Encoding:\r\n", IMAP_CTE_IDENTITY },
		{ "unknown", "Content-Transfer-Encoding: x-uuencode\r\n", IMAP_CTE_UNKNOWN },
		{ "other field", "X-Content-Transfer-Encoding: base64\r\n", IMAP_CTE_IDENTITY },
		{ "longer name", "Content-Transfer-Encodings: base64\r\n", IMAP_CTE_IDENTITY },
		{ "first one counts", "Content-Transfer-Encoding: base64\r\nContent-Transfer-Encoding: 7bit\r\n",
		  IMAP_CTE_BASE64 },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		enum imap_cte got = imap_binary_cte(cases[i].hdr, strlen(cases[i].hdr));
		if (got != cases[i].want)
			fail_msg("case '%s': want %d, got %d", cases[i].label, (int)cases[i].want, (int)got);
	}
}

struct dec_case {
	const char *label;
	enum imap_cte cte;
	const char *in;
	size_t in_len;
	const char *want;
	size_t want_len;
};

static void decode(const struct dec_case *c, size_t step, struct buf *out)
{
	struct imap_decoder d;
	imap_decoder_init(&d, c->cte);
	for (size_t off = 0; off < c->in_len;) {
		size_t n = step == 0 || step > c->in_len - off ? c->in_len - off : step;
		imap_decoder_feed(&d, c->in + off, n, out);
		off += n;
	}
	imap_decoder_finish(&d, out);
}

static void test_binary_decoders(void **state)
{
	(void)state;
	static const struct dec_case cases[] = {
		{ "b64", IMAP_CTE_BASE64, S("aGVsbG8="), S("hello") },
		{ "b64 lines and junk", IMAP_CTE_BASE64, S("aGVs\r\nbG8g\r\nd29y*bGQ="), S("hello world") },
		{ "b64 unpadded", IMAP_CTE_BASE64, S("YWI"), S("ab") },
		{ "b64 ends at padding", IMAP_CTE_BASE64, S("YQ==YWJj"), S("a") },
		{ "b64 nul bytes", IMAP_CTE_BASE64, S("AAEC/w=="), S("\0\1\2\xff") },
		{ "b64 empty", IMAP_CTE_BASE64, S(""), S("") },
		{ "qp hex", IMAP_CTE_QP, S("caf=C3=A9 =3D x"), S("caf\xc3\xa9 = x") },
		{ "qp lower-case hex", IMAP_CTE_QP, S("=c3=a9"), S("\xc3\xa9") },
		{ "qp soft break crlf", IMAP_CTE_QP, S("ab=\r\ncd"), S("abcd") },
		{ "qp soft break lf", IMAP_CTE_QP, S("ab=\ncd"), S("abcd") },
		{ "qp padded soft break", IMAP_CTE_QP, S("ab=  \r\ncd"), S("abcd") },
		{ "qp blanks before soft break kept", IMAP_CTE_QP, S("ab  =\r\ncd"), S("ab  cd") },
		{ "qp blanks before escape kept", IMAP_CTE_QP, S("a =3D"), S("a =") },
		{ "qp trailing blanks dropped", IMAP_CTE_QP, S("ab  \r\ncd\t\r\n"), S("ab\r\ncd\r\n") },
		{ "qp inner blanks kept", IMAP_CTE_QP, S("a b\tc"), S("a b\tc") },
		{ "qp blanks at the end kept", IMAP_CTE_QP, S("a  "), S("a  ") },
		{ "qp bad escape kept", IMAP_CTE_QP, S("=ZZ a=4x"), S("=ZZ a=4x") },
		{ "qp dangling =", IMAP_CTE_QP, S("a="), S("a=") },
		{ "qp dangling =X", IMAP_CTE_QP, S("a=4"), S("a=4") },
		{ "qp = then blank then text", IMAP_CTE_QP, S("a= b"), S("a= b") },
		{ "qp nul", IMAP_CTE_QP, S("a=00b"), S("a\0b") },
		{ "identity", IMAP_CTE_IDENTITY, S("x\0y=41"), S("x\0y=41") },
	};
	static const size_t steps[] = { 0, 1, 3 };
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		for (size_t k = 0; k < ARRAY_LEN(steps); k++) {
			struct buf got = BUF_INIT;
			decode(&cases[i], steps[k], &got);
			if (got.len != cases[i].want_len ||
			    (got.len > 0 && memcmp(got.data, cases[i].want, got.len) != 0))
				fail_msg("case '%s' (step %zu): want %zu bytes '%s', got %zu bytes '%.*s'", cases[i].label,
					 steps[k], cases[i].want_len, cases[i].want, got.len, (int)got.len,
					 got.data ? got.data : "");
			buf_free(&got);
		}
	}
	/* A long base64 body fed in uneven pieces: every byte value back. */
	static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	struct buf enc = BUF_INIT, got = BUF_INIT;
	unsigned char raw[3 * 1000];
	for (size_t i = 0; i < sizeof(raw); i++)
		raw[i] = (unsigned char)(i * 7 + 3);
	for (size_t i = 0; i < sizeof(raw); i += 3) {
		uint32_t v = (uint32_t)raw[i] << 16 | (uint32_t)raw[i + 1] << 8 | raw[i + 2];
		for (int k = 3; k >= 0; k--)
			buf_append_char(&enc, alphabet[(v >> (6 * k)) & 63]);
		if (i % 57 == 54)
			buf_append(&enc, "\r\n", 2);
	}
	struct dec_case big = { "long", IMAP_CTE_BASE64, enc.data, enc.len, (const char *)raw, sizeof(raw) };
	decode(&big, 13, &got);
	assert_int_equal(got.len, sizeof(raw));
	assert_memory_equal(got.data, raw, sizeof(raw));
	buf_free(&enc);
	buf_free(&got);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_table),
		cmocka_unit_test(test_parse_stream_tail),
		cmocka_unit_test(test_parse_deep_nesting),
		cmocka_unit_test(test_parse_too_many_args),
		cmocka_unit_test(test_parse_literal_with_nul),
		cmocka_unit_test(test_frame_table),
		cmocka_unit_test(test_frame_random_splits),
		cmocka_unit_test(test_frame_too_many_literals),
		cmocka_unit_test(test_binary_cte),
		cmocka_unit_test(test_binary_decoders),
		cmocka_unit_test(test_seqset_table),
		cmocka_unit_test(test_seqset_range_limit),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
