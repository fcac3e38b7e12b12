/*
 * pop3_parser_test.c - POP3 line framing, command parsing and numbers
 * (src/pop3/pop3_parser.c).
 *
 * Every framing case is fed whole, in 5-byte pieces and one byte at a time;
 * the events (rendered as text, one per line) must equal the table in
 * every case.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pop3_parser.h"

/* Feeds data in pieces of `step` bytes (0: whole); renders each event as
 * "L:<line>" or "TOO_LONG", joined by '|'. */
static void frame(const char *data, size_t len, size_t max, size_t step, struct buf *out)
{
	struct pop3_reader r;
	pop3_reader_init(&r, max);
	size_t off = 0;
	/* Bounded: each pass consumes at least one byte. */
	while (off < len) {
		size_t piece = step == 0 || len - off < step ? len - off : step;
		size_t at = 0;
		while (at < piece) {
			enum pop3_rd_event ev;
			size_t used = pop3_reader_feed(&r, data + off + at, piece - at, &ev);
			assert_true(used > 0);
			at += used;
			if (ev == POP3_RD_LINE) {
				buf_append_str(out, out->len ? "|L:" : "L:");
				buf_append(out, r.line, r.len);
			} else if (ev == POP3_RD_TOO_LONG) {
				buf_append_str(out, out->len ? "|TOO_LONG" : "TOO_LONG");
			}
		}
		off += piece;
	}
	buf_append_char(out, '\0');
}

struct frame_case {
	const char *label;
	const char *in;
	size_t max;
	const char *want;
};

static const struct frame_case frame_cases[] = {
	{ "one CRLF line", "STAT\r\n", 512, "L:STAT" },
	{ "bare LF", "STAT\n", 512, "L:STAT" },
	{ "two pipelined", "USER a\r\nPASS b c\r\n", 512, "L:USER a|L:PASS b c" },
	{ "incomplete line not reported", "NOOP", 512, "" },
	{ "empty line", "\r\n", 512, "L:" },
	{ "CR inside kept", "A\rB\r\n", 512, "L:A\rB" },
	{ "exactly max", "12345678\r\n", 8, "L:12345678" },
	{ "max plus one", "123456789\r\nOK\r\n", 8, "TOO_LONG|L:OK" },
	{ "long without CR", "1234567890123\nX\n", 8, "TOO_LONG|L:X" },
	{ "much too long then resync", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\nQUIT\r\n", 8, "TOO_LONG|L:QUIT" },
};

static void test_frame_table(void **state)
{
	(void)state;
	static const size_t steps[] = { 0, 5, 1 };
	for (size_t i = 0; i < sizeof(frame_cases) / sizeof(frame_cases[0]); i++) {
		const struct frame_case *c = &frame_cases[i];
		for (size_t k = 0; k < 3; k++) {
			struct buf out = BUF_INIT;
			frame(c->in, strlen(c->in), c->max, steps[k], &out);
			if (strcmp(out.data, c->want) != 0)
				fail_msg("%s (step %zu): got \"%s\", want \"%s\"", c->label, steps[k], out.data,
					 c->want);
			buf_free(&out);
		}
	}
}

static void test_frame_nul_byte_is_kept(void **state)
{
	(void)state;
	struct pop3_reader r;
	pop3_reader_init(&r, 512);
	enum pop3_rd_event ev;
	size_t used = pop3_reader_feed(&r, "LI\0ST\r\n", 7, &ev);
	assert_int_equal(used, 7);
	assert_int_equal(ev, POP3_RD_LINE);
	assert_int_equal(r.len, 5);   /* the parser must see and refuse it */
	struct pop3_cmd cmd;
	const char *err = NULL;
	assert_int_equal(pop3_parse_command(r.line, r.len, &cmd, &err), ST_INVALID);
}

/* "OK NAME [arg]... rest=<rest>" or "ERR <message>" */
static void render_cmd(const char *line, struct buf *out)
{
	struct pop3_cmd cmd;
	const char *err = NULL;
	if (pop3_parse_command(line, strlen(line), &cmd, &err) != ST_OK) {
		buf_printf(out, "ERR %s", err);
		return;
	}
	buf_printf(out, "OK %s", cmd.name);
	for (size_t i = 0; i < cmd.n_args; i++)
		buf_printf(out, " [%s]", cmd.args[i]);
	buf_printf(out, " rest=<%s>", cmd.rest);
}

struct cmd_case {
	const char *label;
	const char *in;
	const char *want;
};

static const struct cmd_case cmd_cases[] = {
	{ "no args", "STAT", "OK STAT rest=<>" },
	{ "lower case keyword", "stat", "OK STAT rest=<>" },
	{ "one arg", "RETR 1", "OK RETR [1] rest=<1>" },
	{ "two args", "TOP 1 10", "OK TOP [1] [10] rest=<1 10>" },
	{ "three letter keyword", "top 2 0", "OK TOP [2] [0] rest=<2 0>" },
	{ "PASS keeps spaces", "PASS my  secret pw ", "OK PASS [my  secret pw ] rest=<my  secret pw >" },
	{ "PASS empty", "PASS ", "OK PASS rest=<>" },
	{ "AUTH with initial response", "AUTH PLAIN AGFsaWNlAHB3", "OK AUTH [PLAIN] [AGFsaWNlAHB3] rest=<PLAIN AGFsaWNlAHB3>" },
	{ "empty line", "", "ERR Empty command" },
	{ "keyword too long", "STATS", "ERR Unknown command" },
	{ "digit in keyword", "ST4T", "ERR Unknown command" },
	{ "leading space", " STAT", "ERR Unknown command" },
	{ "double space", "TOP 1  2", "ERR Invalid arguments" },
	{ "trailing space", "RETR 1 ", "ERR Invalid arguments" },
	{ "too many args", "LIST 1 2 3 4 5", "ERR Too many arguments" },
	{ "eight-bit keyword", "\xc3\xa9TAT", "ERR Unknown command" },
};

static void test_command_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(cmd_cases) / sizeof(cmd_cases[0]); i++) {
		const struct cmd_case *c = &cmd_cases[i];
		struct buf out = BUF_INIT;
		render_cmd(c->in, &out);
		buf_append_char(&out, '\0');
		if (strcmp(out.data, c->want) != 0)
			fail_msg("%s: \"%s\" gave \"%s\", want \"%s\"", c->label, c->in, out.data, c->want);
		buf_free(&out);
	}
}

struct num_case {
	const char *in;
	bool ok;
	uint32_t value;
};

static const struct num_case num_cases[] = {
	{ "0", true, 0 },
	{ "1", true, 1 },
	{ "007", true, 7 },
	{ "4294967295", true, UINT32_MAX },
	{ "4294967296", false, 0 },
	{ "99999999999", false, 0 },
	{ "", false, 0 },
	{ "-1", false, 0 },
	{ "+1", false, 0 },
	{ "1x", false, 0 },
	{ " 1", false, 0 },
};

static void test_numbers(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(num_cases) / sizeof(num_cases[0]); i++) {
		const struct num_case *c = &num_cases[i];
		uint32_t v = 12345;
		bool ok = pop3_parse_number(c->in, &v);
		if (ok != c->ok || (ok && v != c->value))
			fail_msg("\"%s\": got %s %u, want %s %u", c->in, ok ? "ok" : "invalid", v,
				 c->ok ? "ok" : "invalid", c->value);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_frame_table),
		cmocka_unit_test(test_frame_nul_byte_is_kept),
		cmocka_unit_test(test_command_table),
		cmocka_unit_test(test_numbers),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
