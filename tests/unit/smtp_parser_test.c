/*
 * smtp_parser_test.c - command framing, verbs, MAIL/RCPT paths and
 * parameters, BDAT arguments (src/smtp/smtp_parser.c); AUTH arguments, SASL
 * PLAIN/LOGIN decoding and the submission sender check (smtp_sasl.c).
 *
 * Every MAIL/RCPT case is also run as a full command line through the line
 * reader, fed whole and one byte at a time: the results must match the
 * table and each other.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "smtp_parser.h"
#include "smtp_sasl.h"

/* ---- line reader -------------------------------------------------------- */

struct line_event {
	enum smtp_line_status st;
	const char *line;   /* expected content for READY/NUL (NULL: don't care) */
};

struct line_case {
	const char *label;
	size_t max;
	const char *in;
	size_t in_len;
	struct line_event ev[6];
	size_t n_ev;
};

#define S(lit) lit, (sizeof(lit) - 1)

static const struct line_case line_cases[] = {
	{ "crlf", 512, S("NOOP\r\n"), { { SMTP_LINE_READY, "NOOP" } }, 1 },
	{ "bare lf accepted", 512, S("NOOP\n"), { { SMTP_LINE_READY, "NOOP" } }, 1 },
	{ "two pipelined", 512, S("RSET\r\nQUIT\r\n"),
	  { { SMTP_LINE_READY, "RSET" }, { SMTP_LINE_READY, "QUIT" } }, 2 },
	{ "partial tail", 512, S("RSET\r\nQU"), { { SMTP_LINE_READY, "RSET" }, { SMTP_LINE_PARTIAL, NULL } }, 2 },
	{ "empty line", 512, S("\r\n"), { { SMTP_LINE_READY, "" } }, 1 },
	{ "only one CR stripped", 512, S("A\r\r\n"), { { SMTP_LINE_READY, "A\r" } }, 1 },
	/* max 8: 6 octets + CRLF = 8 fits; 7 + CRLF = 9 does not; 7 + LF = 8 fits */
	{ "at limit crlf", 8, S("ABCDEF\r\n"), { { SMTP_LINE_READY, "ABCDEF" } }, 1 },
	{ "over limit crlf", 8, S("ABCDEFG\r\nNOOP\r\n"),
	  { { SMTP_LINE_TOO_LONG, NULL }, { SMTP_LINE_READY, "NOOP" } }, 2 },
	{ "at limit lf", 8, S("ABCDEFG\n"), { { SMTP_LINE_READY, "ABCDEFG" } }, 1 },
	{ "far over limit resyncs", 8, S("ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\nQUIT\r\n"),
	  { { SMTP_LINE_TOO_LONG, NULL }, { SMTP_LINE_READY, "QUIT" } }, 2 },
	{ "NUL in line", 512, S("NO\0OP\r\nQUIT\r\n"),
	  { { SMTP_LINE_NUL, NULL }, { SMTP_LINE_READY, "QUIT" } }, 2 },
	{ "NUL in long line", 8, S("\0BCDEFGHIJ\r\nQUIT\r\n"),
	  { { SMTP_LINE_TOO_LONG, NULL }, { SMTP_LINE_READY, "QUIT" } }, 2 },
};

static const char *line_status_name(enum smtp_line_status st)
{
	switch (st) {
	case SMTP_LINE_PARTIAL: return "PARTIAL";
	case SMTP_LINE_READY: return "READY";
	case SMTP_LINE_TOO_LONG: return "TOO_LONG";
	case SMTP_LINE_NUL: return "NUL";
	}
	return "?";
}

/* Feeds the case in pieces of `step` octets (0: whole); checks the events. */
static void run_line_case(const struct line_case *c, size_t step)
{
	struct smtp_line_reader r;
	smtp_line_init(&r, c->max);
	size_t off = 0, n_ev = 0;
	enum smtp_line_status st = SMTP_LINE_PARTIAL;
	while (off < c->in_len) {
		size_t piece = step == 0 ? c->in_len - off : step;
		if (piece > c->in_len - off)
			piece = c->in_len - off;
		size_t used = smtp_line_feed(&r, c->in + off, piece, &st);
		assert_true(used >= 1 && used <= piece);
		off += used;
		if (st == SMTP_LINE_PARTIAL)
			continue;
		if (n_ev >= c->n_ev) {
			fprintf(stderr, "line case '%s' (step %zu): unexpected event %s\n", c->label, step,
				line_status_name(st));
			fail();
		}
		const struct line_event *e = &c->ev[n_ev++];
		bool ok = st == e->st &&
			  (e->line == NULL || (r.line.len == strlen(e->line) &&
					       memcmp(r.line.data ? r.line.data : "", e->line, r.line.len) == 0));
		if (!ok) {
			fprintf(stderr, "line case '%s' (step %zu) event %zu: expected %s \"%s\" got %s \"%.*s\"\n",
				c->label, step, n_ev - 1, line_status_name(e->st), e->line ? e->line : "*",
				line_status_name(st), (int)r.line.len, r.line.data ? r.line.data : "");
			fail();
		}
	}
	if (n_ev < c->n_ev) {
		assert_int_equal(c->ev[n_ev].st, SMTP_LINE_PARTIAL);
		assert_int_equal(st, SMTP_LINE_PARTIAL);
		n_ev++;
	}
	assert_int_equal(n_ev, c->n_ev);
	/* Memory stays bounded by max even for long input. */
	assert_true(r.line.len < c->max);
	smtp_line_free(&r);
}

static void test_line_reader(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(line_cases); i++) {
		run_line_case(&line_cases[i], 0);
		run_line_case(&line_cases[i], 1);
		run_line_case(&line_cases[i], 3);
	}
}

/* ---- verbs ----------------------------------------------------------------- */

static void test_cmd_parse(void **state)
{
	(void)state;
	static const struct {
		const char *line;
		enum smtp_verb verb;
		const char *arg;
	} cases[] = {
		{ "EHLO client.example", SMTP_V_EHLO, "client.example" },
		{ "ehlo   client.example  ", SMTP_V_EHLO, "client.example" },
		{ "HeLo x", SMTP_V_HELO, "x" },
		{ "MAIL FROM:<a@b.example>", SMTP_V_MAIL, "FROM:<a@b.example>" },
		{ "mail from: <a@b.example> SIZE=10", SMTP_V_MAIL, "from: <a@b.example> SIZE=10" },
		{ "RCPT TO:<a@b.example>", SMTP_V_RCPT, "TO:<a@b.example>" },
		{ "DATA", SMTP_V_DATA, "" },
		{ "data ", SMTP_V_DATA, "" },
		{ "BDAT 10 LAST", SMTP_V_BDAT, "10 LAST" },
		{ "RSET", SMTP_V_RSET, "" },
		{ "NOOP hello", SMTP_V_NOOP, "hello" },
		{ "QUIT", SMTP_V_QUIT, "" },
		{ "HELP", SMTP_V_HELP, "" },
		{ "VRFY bob", SMTP_V_VRFY, "bob" },
		{ "EXPN list", SMTP_V_EXPN, "list" },
		{ "StartTLS", SMTP_V_STARTTLS, "" },
		{ "AUTH PLAIN AGJvYgBzZWNyZXQ=", SMTP_V_AUTH, "PLAIN AGJvYgBzZWNyZXQ=" },
		{ "auth login", SMTP_V_AUTH, "login" },
		{ "", SMTP_V_EMPTY, "" },
		{ "   ", SMTP_V_EMPTY, "" },
		{ "MAILX FROM:<a@b>", SMTP_V_UNKNOWN, "FROM:<a@b>" },
		{ "MAI", SMTP_V_UNKNOWN, "" },
		{ "GET / HTTP/1.1", SMTP_V_UNKNOWN, "/ HTTP/1.1" },
		{ "EHLO\tx", SMTP_V_EHLO, "x" },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		char line[128];
		snprintf(line, sizeof(line), "%s", cases[i].line);
		struct smtp_cmd cmd;
		smtp_cmd_parse(line, strlen(line), &cmd);
		if (cmd.verb != cases[i].verb || strcmp(cmd.arg, cases[i].arg) != 0 ||
		    cmd.arg_len != strlen(cases[i].arg)) {
			fprintf(stderr, "cmd '%s': expected %s \"%s\" got %s \"%s\"\n", cases[i].line,
				smtp_verb_name(cases[i].verb), cases[i].arg, smtp_verb_name(cmd.verb), cmd.arg);
			fail();
		}
	}
}

/* ---- MAIL / RCPT ------------------------------------------------------------- */

enum kind { MAIL, RCPT };
struct path_case {
	const char *label;
	enum kind kind;
	bool flag;            /* MAIL: esmtp; RCPT: smtputf8 */
	const char *arg;
	enum smtp_perr err;
	const char *addr;     /* expected canonical address when OK */
	unsigned pflags;      /* P_* */
	uint64_t size;        /* expected SIZE when P_SIZE */
	enum smtp_body body;
};
#define P_NULL 1u
#define P_PM 2u
#define P_LIT 4u
#define P_UTF8 8u
#define P_SIZE 16u
#define P_SMTPUTF8 32u

static const struct path_case path_cases[] = {
	{ "plain", MAIL, true, "FROM:<alice@example.com>", SMTP_PE_OK, "alice@example.com", 0, 0, 0 },
	{ "case kept", MAIL, true, "from:<Alice@Example.COM>", SMTP_PE_OK, "Alice@Example.COM", 0, 0, 0 },
	{ "null sender", MAIL, true, "FROM:<>", SMTP_PE_OK, "", P_NULL, 0, 0 },
	{ "null sender with SIZE", MAIL, true, "FROM:<> SIZE=100", SMTP_PE_OK, "", P_NULL | P_SIZE, 100, 0 },
	{ "space after colon", MAIL, true, "FROM: <a@b.example>", SMTP_PE_OK, "a@b.example", 0, 0, 0 },
	{ "spaces after colon", MAIL, true, "FROM:   <a@b.example>", SMTP_PE_OK, "a@b.example", 0, 0, 0 },
	{ "no brackets", MAIL, true, "FROM:a@b.example", SMTP_PE_SYNTAX, NULL, 0, 0, 0 },
	{ "no colon", MAIL, true, "FROM <a@b.example>", SMTP_PE_SYNTAX, NULL, 0, 0, 0 },
	{ "wrong keyword", MAIL, true, "TO:<a@b.example>", SMTP_PE_SYNTAX, NULL, 0, 0, 0 },
	{ "empty", MAIL, true, "", SMTP_PE_SYNTAX, NULL, 0, 0, 0 },
	{ "unterminated", MAIL, true, "FROM:<a@b.example", SMTP_PE_BAD_ADDRESS, NULL, 0, 0, 0 },
	{ "source route", MAIL, true, "FROM:<@r1.example,@r2.example:u@d.example>", SMTP_PE_OK, "u@d.example", 0, 0, 0 },
	{ "one hop route", MAIL, true, "FROM:<@r1.example:u@d.example>", SMTP_PE_OK, "u@d.example", 0, 0, 0 },
	{ "bad route", MAIL, true, "FROM:<@r1..example:u@d.example>", SMTP_PE_BAD_ADDRESS, NULL, 0, 0, 0 },
	{ "route without colon", MAIL, true, "FROM:<@r1.example,u@d.example>", SMTP_PE_BAD_ADDRESS, NULL, 0, 0, 0 },
	{ "quoted dot-atom unquoted", MAIL, true, "FROM:<\"john.doe\"@example.com>", SMTP_PE_OK, "john.doe@example.com", 0, 0, 0 },
	{ "quoted escape unquoted", MAIL, true, "FROM:<\"a\\b\"@x.example>", SMTP_PE_OK, "ab@x.example", 0, 0, 0 },
	{ "quoted space kept", MAIL, true, "FROM:<\"john doe\"@example.com>", SMTP_PE_OK, "\"john doe\"@example.com", 0, 0, 0 },
	{ "quoted quote kept", MAIL, true, "FROM:<\"j\\\"d\"@example.com>", SMTP_PE_OK, "\"j\\\"d\"@example.com", 0, 0, 0 },
	{ "quoted double dot kept", MAIL, true, "FROM:<\"a..b\"@example.com>", SMTP_PE_OK, "\"a..b\"@example.com", 0, 0, 0 },
	{ "quoted empty", MAIL, true, "FROM:<\"\"@example.com>", SMTP_PE_OK, "\"\"@example.com", 0, 0, 0 },
	{ "quoted gt inside", MAIL, true, "FROM:<\"a>b\"@example.com>", SMTP_PE_OK, "\"a>b\"@example.com", 0, 0, 0 },
	{ "quoted unterminated", MAIL, true, "FROM:<\"ab@example.com>", SMTP_PE_BAD_ADDRESS, NULL, 0, 0, 0 },
	{ "double dot", MAIL, true, "FROM:<a..b@x.example>", SMTP_PE_BAD_ADDRESS, NULL, 0, 0, 0 },
	{ "leading dot", MAIL, true, "FROM:<.a@x.example>", SMTP_PE_BAD_ADDRESS, NULL, 0, 0, 0 },
	{ "trailing dot", MAIL, true, "FROM:<a.@x.example>", SMTP_PE_BAD_ADDRESS, NULL, 0, 0, 0 },
	{ "space in local", MAIL, true, "FROM:<a b@x.example>", SMTP_PE_BAD_ADDRESS, NULL, 0, 0, 0 },
	{ "two ats", MAIL, true, "FROM:<a@b@x.example>", SMTP_PE_BAD_ADDRESS, NULL, 0, 0, 0 },
	{ "domain leading hyphen", MAIL, true, "FROM:<a@-x.example>", SMTP_PE_BAD_ADDRESS, NULL, 0, 0, 0 },
	{ "domain trailing hyphen", MAIL, true, "FROM:<a@x-.example>", SMTP_PE_BAD_ADDRESS, NULL, 0, 0, 0 },
	{ "domain double dot", MAIL, true, "FROM:<a@x..example>", SMTP_PE_BAD_ADDRESS, NULL, 0, 0, 0 },
	{ "domain trailing dot", MAIL, true, "FROM:<a@x.example.>", SMTP_PE_BAD_ADDRESS, NULL, 0, 0, 0 },
	{ "domain underscore", MAIL, true, "FROM:<a@x_y.example>", SMTP_PE_BAD_ADDRESS, NULL, 0, 0, 0 },
	{ "empty domain", MAIL, true, "FROM:<a@>", SMTP_PE_BAD_ADDRESS, NULL, 0, 0, 0 },
	{ "hyphen inside domain", MAIL, true, "FROM:<a@x-y.example>", SMTP_PE_OK, "a@x-y.example", 0, 0, 0 },
	{ "ipv4 literal", MAIL, true, "FROM:<a@[192.0.2.1]>", SMTP_PE_OK, "a@[192.0.2.1]", P_LIT, 0, 0 },
	{ "ipv6 literal", MAIL, true, "FROM:<a@[IPv6:2001:db8::1]>", SMTP_PE_OK, "a@[IPv6:2001:db8::1]", P_LIT, 0, 0 },
	{ "ipv6 tag any case", MAIL, true, "FROM:<a@[ipv6:::1]>", SMTP_PE_OK, "a@[ipv6:::1]", P_LIT, 0, 0 },
	{ "bad ipv4 literal", MAIL, true, "FROM:<a@[999.0.0.1]>", SMTP_PE_BAD_ADDRESS, NULL, 0, 0, 0 },
	{ "ipv6 without tag", MAIL, true, "FROM:<a@[2001:db8::1]>", SMTP_PE_BAD_ADDRESS, NULL, 0, 0, 0 },
	{ "general literal", MAIL, true, "FROM:<a@[x-tag:stuff]>", SMTP_PE_BAD_ADDRESS, NULL, 0, 0, 0 },
	{ "empty literal", MAIL, true, "FROM:<a@[]>", SMTP_PE_BAD_ADDRESS, NULL, 0, 0, 0 },
	{ "unqualified sender", MAIL, true, "FROM:<user>", SMTP_PE_UNQUALIFIED, NULL, 0, 0, 0 },
	{ "postmaster sender unqualified", MAIL, true, "FROM:<postmaster>", SMTP_PE_UNQUALIFIED, NULL, 0, 0, 0 },
	{ "size", MAIL, true, "FROM:<a@b.example> SIZE=1000", SMTP_PE_OK, "a@b.example", P_SIZE, 1000, 0 },
	{ "size zero", MAIL, true, "FROM:<a@b.example> SIZE=0", SMTP_PE_OK, "a@b.example", P_SIZE, 0, 0 },
	{ "size and body", MAIL, true, "FROM:<a@b.example> SIZE=1000 BODY=8BITMIME", SMTP_PE_OK, "a@b.example", P_SIZE, 1000, SMTP_BODY_8BITMIME },
	{ "body lower case", MAIL, true, "FROM:<a@b.example> body=7bit", SMTP_PE_OK, "a@b.example", 0, 0, SMTP_BODY_7BIT },
	{ "many spaces between params", MAIL, true, "FROM:<a@b.example>   SIZE=5   SMTPUTF8", SMTP_PE_OK, "a@b.example", P_SIZE | P_SMTPUTF8, 5, 0 },
	{ "trailing space", MAIL, true, "FROM:<a@b.example> ", SMTP_PE_OK, "a@b.example", 0, 0, 0 },
	{ "size huge saturates", MAIL, true, "FROM:<a@b.example> SIZE=99999999999999999999999", SMTP_PE_OK, "a@b.example", P_SIZE, UINT64_MAX, 0 },
	{ "size not a number", MAIL, true, "FROM:<a@b.example> SIZE=abc", SMTP_PE_BAD_PARAM, NULL, 0, 0, 0 },
	{ "size empty", MAIL, true, "FROM:<a@b.example> SIZE=", SMTP_PE_BAD_PARAM, NULL, 0, 0, 0 },
	{ "size without value", MAIL, true, "FROM:<a@b.example> SIZE", SMTP_PE_BAD_PARAM, NULL, 0, 0, 0 },
	{ "size twice", MAIL, true, "FROM:<a@b.example> SIZE=1 SIZE=2", SMTP_PE_BAD_PARAM, NULL, 0, 0, 0 },
	{ "body twice", MAIL, true, "FROM:<a@b.example> BODY=7BIT BODY=7BIT", SMTP_PE_BAD_PARAM, NULL, 0, 0, 0 },
	{ "binarymime unsupported", MAIL, true, "FROM:<a@b.example> BODY=BINARYMIME", SMTP_PE_UNSUPPORTED_PARAM, NULL, 0, 0, 0 },
	/* AUTH= parses (RFC 4954 5); port 25, which offers no AUTH, refuses it
	 * as unsupported in smtp_command.c (test_submission.py checks). */
	{ "auth parameter", MAIL, true, "FROM:<a@b.example> AUTH=<>", SMTP_PE_OK, "a@b.example", 0, 0, 0 },
	{ "ret unsupported", MAIL, true, "FROM:<a@b.example> RET=HDRS", SMTP_PE_UNSUPPORTED_PARAM, NULL, 0, 0, 0 },
	{ "param glued to path", MAIL, true, "FROM:<a@b.example>SIZE=1", SMTP_PE_SYNTAX, NULL, 0, 0, 0 },
	{ "param garbage", MAIL, true, "FROM:<a@b.example> =x", SMTP_PE_BAD_PARAM, NULL, 0, 0, 0 },
	{ "params after HELO", MAIL, false, "FROM:<a@b.example> SIZE=1", SMTP_PE_UNSUPPORTED_PARAM, NULL, 0, 0, 0 },
	{ "no params after HELO", MAIL, false, "FROM:<a@b.example>", SMTP_PE_OK, "a@b.example", 0, 0, 0 },
	{ "smtputf8 with value", MAIL, true, "FROM:<a@b.example> SMTPUTF8=yes", SMTP_PE_BAD_PARAM, NULL, 0, 0, 0 },
	{ "utf8 sender needs SMTPUTF8", MAIL, true, "FROM:<j\xc3\xb6rg@example.de>", SMTP_PE_UTF8_REQUIRED, NULL, 0, 0, 0 },
	{ "utf8 sender with SMTPUTF8", MAIL, true, "FROM:<j\xc3\xb6rg@example.de> SMTPUTF8", SMTP_PE_OK, "j\xc3\xb6rg@example.de", P_UTF8 | P_SMTPUTF8, 0, 0 },
	{ "utf8 domain", MAIL, true, "FROM:<j@b\xc3\xbc" "cher.de> SMTPUTF8", SMTP_PE_OK, "j@b\xc3\xbc" "cher.de", P_UTF8 | P_SMTPUTF8, 0, 0 },
	{ "truncated utf8", MAIL, true, "FROM:<j\xc3@example.de> SMTPUTF8", SMTP_PE_BAD_ADDRESS, NULL, 0, 0, 0 },
	{ "overlong utf8", MAIL, true, "FROM:<j\xc0\xaf@example.de> SMTPUTF8", SMTP_PE_BAD_ADDRESS, NULL, 0, 0, 0 },
	{ "surrogate utf8", MAIL, true, "FROM:<j\xed\xa0\x80@example.de> SMTPUTF8", SMTP_PE_BAD_ADDRESS, NULL, 0, 0, 0 },
	{ "percent hack kept", MAIL, true, "FROM:<u%other.example@local.example>", SMTP_PE_OK, "u%other.example@local.example", 0, 0, 0 },

	{ "rcpt plain", RCPT, false, "TO:<bob@example.com>", SMTP_PE_OK, "bob@example.com", 0, 0, 0 },
	{ "rcpt space after colon", RCPT, false, "to: <bob@example.com>", SMTP_PE_OK, "bob@example.com", 0, 0, 0 },
	{ "rcpt null", RCPT, false, "TO:<>", SMTP_PE_NULL_RCPT, NULL, 0, 0, 0 },
	{ "rcpt postmaster", RCPT, false, "TO:<postmaster>", SMTP_PE_OK, "postmaster", P_PM, 0, 0 },
	{ "rcpt Postmaster", RCPT, false, "TO:<PostMaster>", SMTP_PE_OK, "postmaster", P_PM, 0, 0 },
	{ "rcpt quoted postmaster", RCPT, false, "TO:<\"postmaster\">", SMTP_PE_OK, "postmaster", P_PM, 0, 0 },
	{ "rcpt postmaster qualified", RCPT, false, "TO:<postmaster@example.com>", SMTP_PE_OK, "postmaster@example.com", 0, 0, 0 },
	{ "rcpt unqualified", RCPT, false, "TO:<bob>", SMTP_PE_UNQUALIFIED, NULL, 0, 0, 0 },
	{ "rcpt routed unqualified", RCPT, false, "TO:<@relay.example:bob>", SMTP_PE_UNQUALIFIED, NULL, 0, 0, 0 },
	{ "rcpt percent hack as-is", RCPT, false, "TO:<bob%evil.example@local.example>", SMTP_PE_OK, "bob%evil.example@local.example", 0, 0, 0 },
	{ "rcpt bang path as-is", RCPT, false, "TO:<evil.example!bob@local.example>", SMTP_PE_OK, "evil.example!bob@local.example", 0, 0, 0 },
	{ "rcpt source route dropped", RCPT, false, "TO:<@local.example:bob@evil.example>", SMTP_PE_OK, "bob@evil.example", 0, 0, 0 },
	{ "rcpt ip literal", RCPT, false, "TO:<bob@[127.0.0.1]>", SMTP_PE_OK, "bob@[127.0.0.1]", P_LIT, 0, 0 },
	{ "rcpt quoted at-sign kept", RCPT, false, "TO:<\"bob@evil.example\"@local.example>", SMTP_PE_OK, "\"bob@evil.example\"@local.example", 0, 0, 0 },
	{ "rcpt notify unsupported", RCPT, false, "TO:<bob@example.com> NOTIFY=NEVER", SMTP_PE_UNSUPPORTED_PARAM, NULL, 0, 0, 0 },
	{ "rcpt size unsupported", RCPT, false, "TO:<bob@example.com> SIZE=1", SMTP_PE_UNSUPPORTED_PARAM, NULL, 0, 0, 0 },
	{ "rcpt bad param", RCPT, false, "TO:<bob@example.com> ===", SMTP_PE_BAD_PARAM, NULL, 0, 0, 0 },
	{ "rcpt utf8 without SMTPUTF8", RCPT, false, "TO:<j\xc3\xb6rg@example.de>", SMTP_PE_UTF8_REQUIRED, NULL, 0, 0, 0 },
	{ "rcpt utf8 with SMTPUTF8", RCPT, true, "TO:<j\xc3\xb6rg@example.de>", SMTP_PE_OK, "j\xc3\xb6rg@example.de", P_UTF8, 0, 0 },
	{ "rcpt no brackets", RCPT, false, "TO:bob@example.com", SMTP_PE_SYNTAX, NULL, 0, 0, 0 },
	{ "rcpt from keyword", RCPT, false, "FROM:<bob@example.com>", SMTP_PE_SYNTAX, NULL, 0, 0, 0 },
	{ "rcpt unterminated", RCPT, false, "TO:<bob@example.com", SMTP_PE_BAD_ADDRESS, NULL, 0, 0, 0 },
	{ "rcpt garbage after path", RCPT, false, "TO:<bob@example.com>x", SMTP_PE_SYNTAX, NULL, 0, 0, 0 },
};

static const char *perr_name(enum smtp_perr e)
{
	static const char *const names[] = { "OK", "SYNTAX", "BAD_ADDRESS", "TOO_LONG", "UNQUALIFIED",
					     "NULL_RCPT", "UTF8_REQUIRED", "BAD_PARAM", "UNSUPPORTED_PARAM" };
	return (unsigned)e < ARRAY_LEN(names) ? names[e] : "?";
}

struct path_result {
	enum smtp_perr err;
	struct smtp_path path;
	struct smtp_mail_params params;
};

static void parse_arg(enum kind kind, bool flag, const char *arg, struct path_result *r)
{
	memset(r, 0, sizeof(*r));
	if (kind == MAIL)
		r->err = smtp_parse_mail(arg, flag, &r->path, &r->params);
	else
		r->err = smtp_parse_rcpt(arg, flag, &r->path);
}

/* The same argument as a command line through the line reader. */
static void parse_line(enum kind kind, bool flag, const char *arg, size_t step, struct path_result *r)
{
	struct buf line = BUF_INIT;
	buf_printf(&line, "%s %s\r\n", kind == MAIL ? "MAIL" : "RCPT", arg);
	struct smtp_line_reader rd;
	smtp_line_init(&rd, 2048);
	enum smtp_line_status st = SMTP_LINE_PARTIAL;
	size_t off = 0;
	while (off < line.len && st == SMTP_LINE_PARTIAL) {
		size_t n = step == 0 || step > line.len - off ? line.len - off : step;
		off += smtp_line_feed(&rd, line.data + off, n, &st);
	}
	assert_int_equal(st, SMTP_LINE_READY);
	assert_int_equal(off, line.len);
	struct smtp_cmd cmd;
	smtp_cmd_parse(rd.line.data, rd.line.len, &cmd);
	assert_int_equal(cmd.verb, kind == MAIL ? SMTP_V_MAIL : SMTP_V_RCPT);
	parse_arg(kind, flag, cmd.arg, r);
	smtp_line_free(&rd);
	buf_free(&line);
}

static bool result_matches(const struct path_case *c, const struct path_result *r)
{
	if (r->err != c->err)
		return false;
	if (c->err != SMTP_PE_OK)
		return true;
	const struct smtp_path *p = &r->path;
	if (strcmp(p->addr, c->addr) != 0 || p->null != !!(c->pflags & P_NULL) ||
	    p->postmaster != !!(c->pflags & P_PM) || p->domain_literal != !!(c->pflags & P_LIT) ||
	    p->utf8 != !!(c->pflags & P_UTF8))
		return false;
	const char *at = strrchr(p->addr, '@');
	if (!p->null && !p->postmaster && (at == NULL || (size_t)(at - p->addr) != p->local_len))
		return false;
	if (c->kind == RCPT)
		return true;
	const struct smtp_mail_params *mp = &r->params;
	return mp->size_given == !!(c->pflags & P_SIZE) && (!mp->size_given || mp->size == c->size) &&
	       mp->body == c->body && mp->smtputf8 == !!(c->pflags & P_SMTPUTF8);
}

static void report(const struct path_case *c, const char *how, const struct path_result *r)
{
	fprintf(stderr, "case '%s' (%s): %s %s\n", c->label, how, c->kind == MAIL ? "MAIL" : "RCPT", c->arg);
	fprintf(stderr, "  expected %s addr=\"%s\" flags=%u size=%llu body=%d\n", perr_name(c->err),
		c->addr ? c->addr : "", c->pflags, (unsigned long long)c->size, (int)c->body);
	fprintf(stderr, "  got      %s addr=\"%s\" null=%d pm=%d lit=%d utf8=%d local_len=%zu size_given=%d size=%llu body=%d smtputf8=%d\n",
		perr_name(r->err), r->path.addr, r->path.null, r->path.postmaster, r->path.domain_literal,
		r->path.utf8, r->path.local_len, r->params.size_given, (unsigned long long)r->params.size,
		(int)r->params.body, r->params.smtputf8);
}

static void test_path_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(path_cases); i++) {
		const struct path_case *c = &path_cases[i];
		struct path_result r;
		parse_arg(c->kind, c->flag, c->arg, &r);
		if (!result_matches(c, &r)) {
			report(c, "argument", &r);
			fail();
		}
		parse_line(c->kind, c->flag, c->arg, 0, &r);
		if (!result_matches(c, &r)) {
			report(c, "whole line", &r);
			fail();
		}
		parse_line(c->kind, c->flag, c->arg, 1, &r);
		if (!result_matches(c, &r)) {
			report(c, "line byte at a time", &r);
			fail();
		}
	}
}

/* Length limits: local part 64, domain 255, path 256 (with the brackets). */
static void test_lengths(void **state)
{
	(void)state;
	static const struct {
		const char *label;
		size_t local, domain;   /* domain: total length, built of labels */
		bool quoted;
		enum smtp_perr err;
	} cases[] = {
		{ "local 64", 64, 10, false, SMTP_PE_OK },
		{ "local 65", 65, 10, false, SMTP_PE_TOO_LONG },
		{ "quoted local 64 with quotes", 62, 10, true, SMTP_PE_OK },
		{ "quoted local 65 with quotes", 63, 10, true, SMTP_PE_TOO_LONG },
		{ "quoted local huge", 600, 10, true, SMTP_PE_TOO_LONG },
		{ "path 256", 1, 252, false, SMTP_PE_OK },
		{ "path 257", 1, 253, false, SMTP_PE_TOO_LONG },
		{ "domain 255, path too long", 1, 255, false, SMTP_PE_TOO_LONG },
		{ "label 64", 1, 64, false, SMTP_PE_BAD_ADDRESS },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct buf arg = BUF_INIT;
		buf_append_str(&arg, "TO:<");
		if (cases[i].quoted)
			buf_append_char(&arg, '"');
		for (size_t k = 0; k < cases[i].local; k++)
			buf_append_char(&arg, cases[i].quoted && k == 0 ? ' ' : 'l');
		if (cases[i].quoted)
			buf_append_char(&arg, '"');
		buf_append_char(&arg, '@');
		/* labels of up to 63 octets ("a...a.") ending in a letter */
		size_t d = cases[i].domain, label = 0;
		for (size_t k = 0; k < d; k++) {
			bool dot = label == 63 && cases[i].domain != 64 && k + 1 < d;
			buf_append_char(&arg, dot ? '.' : 'd');
			label = dot ? 0 : label + 1;
		}
		buf_append_char(&arg, '>');
		struct smtp_path p;
		enum smtp_perr e = smtp_parse_rcpt(arg.data, false, &p);
		if (e != cases[i].err) {
			fprintf(stderr, "length case '%s': expected %s got %s (arg %zu octets)\n", cases[i].label,
				perr_name(cases[i].err), perr_name(e), arg.len);
			fail();
		}
		buf_free(&arg);
	}
}

static void test_perr_replies(void **state)
{
	(void)state;
	assert_int_equal(smtp_perr_reply(SMTP_PE_UNSUPPORTED_PARAM, false)->code, 555);
	assert_string_equal(smtp_perr_reply(SMTP_PE_UNSUPPORTED_PARAM, true)->enh, "5.5.4");
	assert_string_equal(smtp_perr_reply(SMTP_PE_BAD_ADDRESS, false)->enh, "5.1.7");
	assert_string_equal(smtp_perr_reply(SMTP_PE_BAD_ADDRESS, true)->enh, "5.1.3");
	assert_int_equal(smtp_perr_reply(SMTP_PE_UTF8_REQUIRED, true)->code, 553);
	for (int e = SMTP_PE_SYNTAX; e < SMTP_PE__COUNT; e++) {
		const struct smtp_reply_code *m = smtp_perr_reply((enum smtp_perr)e, false);
		const struct smtp_reply_code *r = smtp_perr_reply((enum smtp_perr)e, true);
		assert_true(m->code >= 500 && r->code >= 500);
		assert_true(m->enh[0] == '5' && r->enh[0] == '5');
	}
}

/* ---- BDAT ------------------------------------------------------------------ */

static void test_bdat(void **state)
{
	(void)state;
	static const struct {
		const char *arg;
		bool ok;
		uint64_t size;
		bool last;
	} cases[] = {
		{ "100", true, 100, false },
		{ "0 LAST", true, 0, true },
		{ "10 last", true, 10, true },
		{ "10   LAST", true, 10, true },
		{ "18446744073709551615", true, UINT64_MAX, false },
		{ "18446744073709551616", false, 0, false },
		{ "abc", false, 0, false },
		{ "", false, 0, false },
		{ "-1", false, 0, false },
		{ "10LAST", false, 0, false },
		{ "10 LASTX", false, 0, false },
		{ "10 FOO", false, 0, false },
		{ "10 LAST x", false, 0, false },
		{ " 10", false, 0, false },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		uint64_t size = 12345;
		bool last = false;
		bool ok = smtp_parse_bdat(cases[i].arg, &size, &last);
		if (ok != cases[i].ok || (ok && (size != cases[i].size || last != cases[i].last))) {
			fprintf(stderr, "BDAT '%s': expected ok=%d size=%llu last=%d got ok=%d size=%llu last=%d\n",
				cases[i].arg, cases[i].ok, (unsigned long long)cases[i].size, cases[i].last, ok,
				(unsigned long long)size, last);
			fail();
		}
	}
}

static void test_utf8(void **state)
{
	(void)state;
	static const struct {
		const char *s;
		bool ok;
	} cases[] = {
		{ "plain", true },
		{ "caf\xc3\xa9", true },
		{ "\xe2\x82\xac", true },
		{ "\xf0\x9f\x98\x80", true },
		{ "\xc3", false },
		{ "\xc0\x80", false },
		{ "\xe0\x80\x80", false },
		{ "\xed\xa0\x80", false },
		{ "\xf4\x90\x80\x80", false },
		{ "\xff", false },
		{ "\x80", false },
		{ "\xe2\x82", false },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		if (smtp_utf8_valid(cases[i].s, strlen(cases[i].s)) != cases[i].ok) {
			fprintf(stderr, "utf8 case %zu: expected %d\n", i, cases[i].ok);
			fail();
		}
	}
}

/* ---- AUTH (smtp_sasl.c) --------------------------------------------------------- */

static void test_auth_parse(void **state)
{
	(void)state;
	static const struct {
		const char *label;
		const char *arg;
		enum smtp_sasl_err err;
		enum smtp_sasl_mech mech;
		bool has_ir;
		const char *ir;
	} cases[] = {
		{ "plain, no response", "PLAIN", SMTP_SASL_OK, SMTP_SASL_PLAIN, false, "" },
		{ "login lower case", "login", SMTP_SASL_OK, SMTP_SASL_LOGIN, false, "" },
		{ "plain with response", "PLAIN AGJvYgBzZWNyZXQ=", SMTP_SASL_OK, SMTP_SASL_PLAIN, true, "AGJvYgBzZWNyZXQ=" },
		{ "blanks around", "Plain \t AGJv  ", SMTP_SASL_OK, SMTP_SASL_PLAIN, true, "AGJv" },
		{ "= is an empty response", "PLAIN =", SMTP_SASL_OK, SMTP_SASL_PLAIN, true, "" },
		{ "login with user name", "LOGIN Ym9i", SMTP_SASL_OK, SMTP_SASL_LOGIN, true, "Ym9i" },
		{ "no mechanism", "", SMTP_SASL_SYNTAX, SMTP_SASL_PLAIN, false, "" },
		{ "two responses", "PLAIN abc def", SMTP_SASL_SYNTAX, SMTP_SASL_PLAIN, false, "" },
		{ "unknown mechanism", "CRAM-MD5", SMTP_SASL_UNKNOWN_MECH, SMTP_SASL_PLAIN, false, "" },
		{ "prefix of a mechanism", "PLAI", SMTP_SASL_UNKNOWN_MECH, SMTP_SASL_PLAIN, false, "" },
		{ "longer than a mechanism", "PLAINX", SMTP_SASL_UNKNOWN_MECH, SMTP_SASL_PLAIN, false, "" },
		{ "xoauth2 is not offered", "XOAUTH2 abc", SMTP_SASL_UNKNOWN_MECH, SMTP_SASL_PLAIN, false, "" },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct smtp_auth_arg a;
		enum smtp_sasl_err e = smtp_auth_parse(cases[i].arg, strlen(cases[i].arg), &a);
		bool ok = e == cases[i].err;
		if (ok && e == SMTP_SASL_OK) {
			ok = a.mech == cases[i].mech && a.has_ir == cases[i].has_ir && a.ir_len == strlen(cases[i].ir) &&
			     memcmp(a.ir, cases[i].ir, a.ir_len) == 0;
		}
		if (!ok) {
			fprintf(stderr, "auth '%s' (%s): expected err %d mech %d ir %d \"%s\", got err %d mech %d ir %d \"%.*s\"\n",
				cases[i].label, cases[i].arg, cases[i].err, cases[i].mech, cases[i].has_ir, cases[i].ir, e,
				a.mech, a.has_ir, (int)a.ir_len, a.ir);
			fail();
		}
	}
}

static void test_sasl_plain(void **state)
{
	(void)state;
	static const struct {
		const char *label;
		const char *b64;
		enum smtp_sasl_err err;
		const char *user, *pass;
	} cases[] = {
		/* "\0bob@example.com\0secret" */
		{ "no authzid", "AGJvYkBleGFtcGxlLmNvbQBzZWNyZXQ=", SMTP_SASL_OK, "bob@example.com", "secret" },
		/* "bob@example.com\0bob@example.com\0secret" */
		{ "authzid = user", "Ym9iQGV4YW1wbGUuY29tAGJvYkBleGFtcGxlLmNvbQBzZWNyZXQ=", SMTP_SASL_OK,
		  "bob@example.com", "secret" },
		/* "BOB@example.com\0bob@example.com\0secret" */
		{ "authzid differs only in case", "Qk9CQGV4YW1wbGUuY29tAGJvYkBleGFtcGxlLmNvbQBzZWNyZXQ=", SMTP_SASL_OK,
		  "bob@example.com", "secret" },
		/* "alice@example.com\0bob@example.com\0secret" */
		{ "authzid of someone else", "YWxpY2VAZXhhbXBsZS5jb20AYm9iQGV4YW1wbGUuY29tAHNlY3JldA==", SMTP_SASL_AUTHZ, "", "" },
		/* "\0bob\0" */
		{ "empty password", "AGJvYgA=", SMTP_SASL_OK, "bob", "" },
		/* "\0\0secret" */
		{ "empty user", "AABzZWNyZXQ=", SMTP_SASL_MALFORMED, "", "" },
		/* "bob secret" */
		{ "no NULs", "Ym9iIHNlY3JldA==", SMTP_SASL_MALFORMED, "", "" },
		/* "\0bob" */
		{ "one NUL", "AGJvYg==", SMTP_SASL_MALFORMED, "", "" },
		/* "\0bob\0se\0cret" */
		{ "NUL in password", "AGJvYgBzZQBjcmV0", SMTP_SASL_MALFORMED, "", "" },
		{ "empty response", "", SMTP_SASL_MALFORMED, "", "" },
		{ "bad alphabet", "AGJvYgBzZWNy!XQ=", SMTP_SASL_BAD_BASE64, "", "" },
		{ "missing padding", "AGJvYgBzZWNyZXQ", SMTP_SASL_BAD_BASE64, "", "" },
		{ "trailing junk", "AGJvYgBzZWNyZXQ=AAAA", SMTP_SASL_BAD_BASE64, "", "" },
		{ "blank inside", "AGJv YgBzZWNyZXQ=", SMTP_SASL_BAD_BASE64, "", "" },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct smtp_sasl_creds c;
		enum smtp_sasl_err e = smtp_sasl_plain(cases[i].b64, strlen(cases[i].b64), &c);
		bool ok = e == cases[i].err && strcmp(c.user, cases[i].user) == 0 && strcmp(c.pass, cases[i].pass) == 0;
		if (!ok) {
			fprintf(stderr, "plain '%s': expected %d \"%s\"/\"%s\", got %d \"%s\"/\"%s\"\n", cases[i].label,
				cases[i].err, cases[i].user, cases[i].pass, e, c.user, c.pass);
			fail();
		}
	}
	/* Longer than any user name plus password we accept: refused before
	 * decoding, whatever its content. */
	static char big[SMTP_SASL_B64_MAX + 5];
	memset(big, 'A', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	struct smtp_sasl_creds c;
	assert_int_equal(smtp_sasl_plain(big, strlen(big), &c), SMTP_SASL_BAD_BASE64);
}

static void test_sasl_login(void **state)
{
	(void)state;
	static const struct {
		const char *label;
		const char *b64;
		bool nonempty;
		size_t cap;
		enum smtp_sasl_err err;
		const char *out;
	} cases[] = {
		{ "user name", "Ym9iQGV4YW1wbGUuY29t", true, 320, SMTP_SASL_OK, "bob@example.com" },
		{ "password", "c2VjcmV0", false, 1024, SMTP_SASL_OK, "secret" },
		{ "empty password", "", false, 1024, SMTP_SASL_OK, "" },
		{ "empty user name", "", true, 320, SMTP_SASL_MALFORMED, "" },
		{ "NUL in the name", "Ym9iAGV2ZQ==", true, 320, SMTP_SASL_MALFORMED, "" },
		{ "does not fit", "c2VjcmV0", false, 6, SMTP_SASL_MALFORMED, "" },
		{ "just fits", "c2VjcmV0", false, 7, SMTP_SASL_OK, "secret" },
		{ "bad base64", "c2Vj*mV0", false, 1024, SMTP_SASL_BAD_BASE64, "" },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		char out[1024];
		enum smtp_sasl_err e = smtp_sasl_login_field(cases[i].b64, strlen(cases[i].b64), out, cases[i].cap,
							     cases[i].nonempty);
		if (e != cases[i].err || strcmp(out, cases[i].out) != 0) {
			fprintf(stderr, "login '%s': expected %d \"%s\", got %d \"%s\"\n", cases[i].label, cases[i].err,
				cases[i].out, e, out);
			fail();
		}
	}
	assert_true(smtp_sasl_is_cancel("*", 1));
	assert_false(smtp_sasl_is_cancel("**", 2));
	assert_false(smtp_sasl_is_cancel("", 0));
}

static void test_mail_auth_param(void **state)
{
	(void)state;
	static const struct {
		const char *label;
		const char *arg;
		enum smtp_perr err;
	} cases[] = {
		{ "null identity", "FROM:<a@b.example> AUTH=<>", SMTP_PE_OK },
		{ "address identity", "FROM:<a@b.example> AUTH=a@b.example", SMTP_PE_OK },
		{ "xtext escape", "FROM:<a@b.example> AUTH=a+2Bx@b.example", SMTP_PE_OK },
		{ "with SIZE", "FROM:<a@b.example> SIZE=10 AUTH=<> BODY=8BITMIME", SMTP_PE_OK },
		{ "lower-case hex", "FROM:<a@b.example> AUTH=a+2bx@b", SMTP_PE_BAD_PARAM },
		{ "short escape", "FROM:<a@b.example> AUTH=a+2", SMTP_PE_BAD_PARAM },
		{ "no value", "FROM:<a@b.example> AUTH", SMTP_PE_BAD_PARAM },
		{ "twice", "FROM:<a@b.example> AUTH=<> AUTH=<>", SMTP_PE_BAD_PARAM },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct smtp_path path;
		struct smtp_mail_params mp;
		enum smtp_perr e = smtp_parse_mail(cases[i].arg, true, &path, &mp);
		if (e != cases[i].err || (e == SMTP_PE_OK && !mp.auth_given)) {
			fprintf(stderr, "MAIL '%s' (%s): expected %d, got %d (auth_given %d)\n", cases[i].label,
				cases[i].arg, cases[i].err, e, mp.auth_given);
			fail();
		}
	}
}

static void test_sender_check(void **state)
{
	(void)state;
	static struct rcpt_resolution res_bob, res_list, res_other;
	res_bob.n = 1;
	res_bob.account_ids[0] = 7;
	res_list.n = 3;
	res_list.account_ids[0] = 3;
	res_list.account_ids[1] = 7;
	res_list.account_ids[2] = 9;
	res_other.n = 1;
	res_other.account_ids[0] = 8;
	static const struct {
		const char *label;
		const char *from;
		enum status st;
		const struct rcpt_resolution *res;
		bool lookup;
		enum smtp_sender_verdict v;
	} cases[] = {
		{ "own address", "bob@example.com", ST_OK, NULL, false, SMTP_SENDER_OWNED },
		{ "own address, other case", "Bob@Example.COM", ST_OK, NULL, false, SMTP_SENDER_OWNED },
		{ "null sender", "", ST_OK, NULL, false, SMTP_SENDER_NOT_OWNED },
		{ "alias of bob", "sales@example.com", ST_OK, &res_bob, true, SMTP_SENDER_OWNED },
		{ "list with bob in it", "team@example.com", ST_OK, &res_list, true, SMTP_SENDER_OWNED },
		{ "someone else", "alice@example.com", ST_OK, &res_other, true, SMTP_SENDER_NOT_OWNED },
		{ "unknown local", "nobody@example.com", ST_NOT_FOUND, &res_other, true, SMTP_SENDER_NOT_OWNED },
		{ "foreign domain", "bob@gmail.example", ST_INVALID, &res_other, true, SMTP_SENDER_NOT_OWNED },
		{ "index error", "sales@example.com", ST_TEMPFAIL, &res_bob, true, SMTP_SENDER_TEMPFAIL },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		bool lookup = smtp_sender_needs_lookup(cases[i].from, "bob@example.com");
		enum smtp_sender_verdict v =
			smtp_sender_check(cases[i].from, 7, "bob@example.com", cases[i].st, cases[i].res);
		if (lookup != cases[i].lookup || v != cases[i].v) {
			fprintf(stderr, "sender '%s' (%s): expected lookup %d verdict %d, got %d %d\n", cases[i].label,
				cases[i].from, cases[i].lookup, cases[i].v, lookup, v);
			fail();
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_line_reader),
		cmocka_unit_test(test_cmd_parse),
		cmocka_unit_test(test_path_table),
		cmocka_unit_test(test_lengths),
		cmocka_unit_test(test_perr_replies),
		cmocka_unit_test(test_bdat),
		cmocka_unit_test(test_utf8),
		cmocka_unit_test(test_auth_parse),
		cmocka_unit_test(test_sasl_plain),
		cmocka_unit_test(test_sasl_login),
		cmocka_unit_test(test_sender_check),
		cmocka_unit_test(test_mail_auth_param),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
