/*
 * mime_test.c - src/mime against the corpus in tests/data/mime and against
 * hostile input.
 *
 * Corpus: each <name>.eml (LF line ends in the repository, turned into
 * CRLF here as SMTP stores them) has <name>.expected with lines
 *   ENVELOPE <text>         the exact ENVELOPE
 *   BODYSTRUCTURE <text>    the exact BODYSTRUCTURE
 *   BODY <text>             the exact BODY
 *   PART <sec> <kind> <v>   bytes of BODY[<sec>] (kind BODY) or
 *                           BODY[<sec>.MIME|HEADER|TEXT]; v "NONE": NIL
 *   PART <sec> NONE         BODY[<sec>] does not exist
 * where \r, \n and \xHH in the text stand for those bytes.  The expected
 * texts were derived by hand from the RFC 3501 grammar.
 *
 * The data directory is $STRATA_MIME_DATA, or ../data/mime next to this
 * source file (as the compiler named it), or tests/data/mime.
 */
#include <dirent.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "mime.h"

static char data_dir[PATH_MAX];

static void find_data_dir(void)
{
	const char *env = getenv("STRATA_MIME_DATA");
	if (env != NULL) {
		snprintf(data_dir, sizeof(data_dir), "%s", env);
		return;
	}
	char src[PATH_MAX - 32];
	snprintf(src, sizeof(src), "%s", __FILE__);
	char *slash = strrchr(src, '/');
	if (slash != NULL)
		*slash = '\0';
	else
		snprintf(src, sizeof(src), ".");
	snprintf(data_dir, sizeof(data_dir), "%s/../data/mime", src);
	/* __FILE__ is relative to the build directory (meson test runs
	 * there); from the source root the corpus is at tests/data/mime. */
	if (access(data_dir, R_OK) != 0 && access("tests/data/mime", R_OK) == 0)
		snprintf(data_dir, sizeof(data_dir), "tests/data/mime");
}

static char *read_all(const char *path, size_t *len)
{
	char *data;
	if (!fs_read_file(path, &data, len)) {
		print_error("cannot read %s\n", path);
		fail();
	}
	return data;
}

/* LF -> CRLF (the corpus is kept with LF; SMTP stores CRLF). */
static char *to_crlf(const char *in, size_t len, size_t *out_len)
{
	struct buf b = BUF_INIT;
	for (size_t i = 0; i < len; i++) {
		if (in[i] == '\n' && (i == 0 || in[i - 1] != '\r'))
			buf_append_char(&b, '\r');
		buf_append_char(&b, in[i]);
	}
	*out_len = b.len;
	return b.data ? buf_steal(&b) : xstrdup("");
}

static void unescape(const char *s, struct buf *out)
{
	for (; *s; s++) {
		if (s[0] == '\\' && s[1] == 'r') {
			buf_append_char(out, '\r');
			s++;
		} else if (s[0] == '\\' && s[1] == 'n') {
			buf_append_char(out, '\n');
			s++;
		} else if (s[0] == '\\' && s[1] == 'x' && s[2] && s[3]) {
			char hex[3] = { s[2], s[3], 0 };
			buf_append_char(out, (char)strtol(hex, NULL, 16));
			s += 3;
		} else {
			buf_append_char(out, *s);
		}
	}
	buf_reserve(out, 1);
	out->data[out->len] = '\0';
}

static void expect_text(const char *file, const char *what, const char *want, const char *got)
{
	if (strcmp(want, got) != 0) {
		print_error("%s: %s differs\n  want: %s\n  got:  %s\n", file, what, want, got);
		fail();
	}
}

/* Bytes of BODY[sec(.kind)] from the part map; false for NIL. */
static bool part_bytes(const struct mime_summary *sum, const char *msg, const char *sec, const char *kind,
		       struct buf *out)
{
	struct mime_part mp;
	if (!mime_part_find(sum->parts, sum->parts_len, sec, &mp))
		return false;
	uint64_t s = 0, e = 0;
	if (strcmp(kind, "BODY") == 0) {
		s = mp.body_start;
		e = mp.body_end;
	} else if (strcmp(kind, "MIME") == 0) {
		s = mp.header_start;
		e = mp.body_start;
	} else if (strcmp(kind, "HEADER") == 0) {
		if (!mp.is_message)
			return false;
		s = mp.body_start;
		e = mp.text_start;
	} else if (strcmp(kind, "TEXT") == 0) {
		if (!mp.is_message)
			return false;
		s = mp.text_start;
		e = mp.body_end;
	} else {
		print_error("unknown part kind %s\n", kind);
		fail();
	}
	assert_true(s <= e);
	buf_append(out, msg + s, (size_t)(e - s));
	buf_reserve(out, 1);
	out->data[out->len] = '\0';
	return true;
}

static void check_part_line(const char *file, const struct mime_summary *sum, const char *msg, char *line)
{
	/* "sec kind value" or "sec NONE" */
	char *sec = line;
	char *sp = strchr(sec, ' ');
	assert_non_null(sp);
	*sp = '\0';
	char *kind = sp + 1;
	struct buf got = BUF_INIT;
	if (strcmp(kind, "NONE") == 0) {
		if (part_bytes(sum, msg, sec, "BODY", &got)) {
			print_error("%s: BODY[%s] should not exist, got \"%s\"\n", file, sec, got.data);
			fail();
		}
		buf_free(&got);
		return;
	}
	char *val = strchr(kind, ' ');
	assert_non_null(val);
	*val++ = '\0';
	bool exists = part_bytes(sum, msg, sec, kind, &got);
	if (strcmp(val, "NONE") == 0) {
		if (exists) {
			print_error("%s: BODY[%s.%s] should be NIL, got \"%s\"\n", file, sec, kind, got.data);
			fail();
		}
	} else {
		struct buf want = BUF_INIT;
		unescape(val, &want);
		if (!exists) {
			print_error("%s: BODY[%s.%s] missing\n", file, sec, kind);
			fail();
		}
		char what[64];
		snprintf(what, sizeof(what), "BODY[%s %s]", sec, kind);
		expect_text(file, what, want.data ? want.data : "", got.data ? got.data : "");
		buf_free(&want);
	}
	buf_free(&got);
}

static void run_case(const char *name)
{
	char path[PATH_MAX + 64];
	size_t raw_len, len, exp_len;
	snprintf(path, sizeof(path), "%s/%s.eml", data_dir, name);
	char *raw = read_all(path, &raw_len);
	char *msg = to_crlf(raw, raw_len, &len);
	free(raw);
	snprintf(path, sizeof(path), "%s/%s.expected", data_dir, name);
	char *exp = read_all(path, &exp_len);

	struct mime_summary sum;
	mime_parse_mem(msg, len, &sum);
	unsigned checked = 0;
	char *save = NULL;
	for (char *line = strtok_r(exp, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
		if (line[0] == '#' || line[0] == '\0')
			continue;
		struct buf want = BUF_INIT;
		if (strncmp(line, "ENVELOPE ", 9) == 0) {
			unescape(line + 9, &want);
			expect_text(name, "ENVELOPE", want.data, sum.envelope);
		} else if (strncmp(line, "BODYSTRUCTURE ", 14) == 0) {
			unescape(line + 14, &want);
			expect_text(name, "BODYSTRUCTURE", want.data, sum.bodystructure);
		} else if (strncmp(line, "BODY ", 5) == 0) {
			unescape(line + 5, &want);
			expect_text(name, "BODY", want.data, sum.body);
		} else if (strncmp(line, "PART ", 5) == 0) {
			check_part_line(name, &sum, msg, line + 5);
		} else {
			print_error("%s: bad expected line: %s\n", name, line);
			fail();
		}
		buf_free(&want);
		checked++;
	}
	assert_true(checked >= 4);
	mime_summary_free(&sum);
	free(exp);
	free(msg);
}

/* One test per corpus file, found by listing the directory. */
static void test_corpus(void **state)
{
	(void)state;
	DIR *d = opendir(data_dir);
	if (d == NULL) {
		print_error("cannot open the corpus directory %s\n", data_dir);
		fail();
	}
	unsigned n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		size_t l = strlen(e->d_name);
		if (l < 5 || strcmp(e->d_name + l - 4, ".eml") != 0)
			continue;
		char name[256];
		snprintf(name, sizeof(name), "%.*s", (int)(l - 4), e->d_name);
		print_message("corpus: %s\n", name);
		run_case(name);
		n++;
	}
	closedir(d);
	assert_true(n >= 12);
}

/* ---- hostile input -------------------------------------------------------------------- */

/* Parentheses balance outside quoted strings and literals. */
static bool balanced(const char *s)
{
	int depth = 0;
	for (const char *p = s; *p; p++) {
		if (*p == '"') {
			for (p++; *p && *p != '"'; p++)
				if (*p == '\\' && p[1])
					p++;
			if (!*p)
				return false;
		} else if (*p == '{') {
			char *end;
			unsigned long n = strtoul(p + 1, &end, 10);
			if (*end != '}' || end[1] != '\r' || end[2] != '\n' || strlen(end + 3) < n)
				return false;
			p = end + 2 + n;
		} else if (*p == '(') {
			depth++;
		} else if (*p == ')' && --depth < 0) {
			return false;
		}
	}
	return depth == 0;
}

static void check_sane(const char *label, const char *msg, size_t len)
{
	struct mime_summary sum;
	mime_parse_mem(msg, len, &sum);
	if (!balanced(sum.envelope) || !balanced(sum.bodystructure) || !balanced(sum.body)) {
		print_error("%s: unbalanced output\n  envelope: %s\n  bodystructure: %s\n", label, sum.envelope,
			    sum.bodystructure);
		fail();
	}
	/* Every part the map names lies inside the message. */
	struct mime_part mp;
	if (mime_part_find(sum.parts, sum.parts_len, "1", &mp))
		assert_true(mp.header_start <= mp.body_start && mp.body_start <= mp.body_end && mp.body_end <= len);
	else {
		print_error("%s: no part 1\n", label);
		fail();
	}
	mime_summary_free(&sum);
}

static void test_hostile(void **state)
{
	(void)state;
	static const struct {
		const char *label;
		const char *msg;
	} cases[] = {
		{ "empty", "" },
		{ "only a blank line", "\r\n" },
		{ "no colon lines", "garbage\r\nmore garbage\r\n\r\nbody" },
		{ "unterminated quote", "Content-Type: text/plain; name=\"abc\r\n\r\nx" },
		{ "unterminated comment", "From: a@b (comment\r\nTo: (((\r\n\r\n" },
		{ "empty boundary", "Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n\r\n" },
		{ "boundary only", "Content-Type: multipart/mixed; boundary=x\r\n\r\n--x" },
		{ "close at once", "Content-Type: multipart/mixed; boundary=x\r\n\r\n--x--\r\n" },
		{ "no type slash", "Content-Type: text\r\n\r\nx" },
		{ "bare message/rfc822", "Content-Type: message/rfc822\r\n\r\n" },
		{ "2231 without piece 0", "Content-Type: text/plain; a*1=x; a*2*=y\r\n\r\n" },
		{ "2231 bad numbers", "Content-Type: text/plain; a*01=x; a*=b; *=c; a**=d\r\n\r\n" },
		{ "address junk", "From: <<>>,,,@@;:;:\"\r\nTo: a:b:c;;\r\nCc: <@r1,@r2:u@h>\r\n\r\n" },
		{ "LF only", "Content-Type: multipart/mixed; boundary=q\n\n--q\nContent-Type: text/plain\n\nx\n--q--\n" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		check_sane(cases[i].label, cases[i].msg, strlen(cases[i].msg));

	/* A NUL inside a header value never reaches an IMAP string. */
	static const char nul_msg[] = "Subject: a\0b\r\n\r\nx";
	struct mime_summary sum;
	mime_parse_mem(nul_msg, sizeof(nul_msg) - 1, &sum);
	assert_non_null(strstr(sum.envelope, "\"ab\""));
	mime_summary_free(&sum);

	/* Nesting far past MIME_MAX_DEPTH: bounded work, a sane structure. */
	struct buf b = BUF_INIT;
	for (int i = 0; i < 500; i++)
		buf_printf(&b, "Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n", i, i);
	buf_append_str(&b, "\r\nleaf\r\n");
	check_sane("deep multipart", b.data, b.len);
	buf_reset(&b);
	for (int i = 0; i < 500; i++)
		buf_append_str(&b, "Content-Type: message/rfc822\r\n\r\n");
	check_sane("deep message/rfc822", b.data, b.len);

	/* Many parts: capped at MIME_MAX_PARTS. */
	buf_reset(&b);
	buf_append_str(&b, "Content-Type: multipart/mixed; boundary=p\r\n\r\n");
	for (int i = 0; i < 5000; i++)
		buf_append_str(&b, "--p\r\n\r\nx\r\n");
	mime_parse_mem(b.data, b.len, &sum);
	struct mime_part mp;
	assert_true(mime_part_find(sum.parts, sum.parts_len, "1", &mp));
	assert_false(mime_part_find(sum.parts, sum.parts_len, "4999", &mp));
	assert_true(balanced(sum.bodystructure));
	mime_summary_free(&sum);
	buf_free(&b);
}

/* Content-Type parameters, RFC 2231 joining included: the BODYSTRUCTURE's
 * parameter list for a one-part message with that Content-Type. */
static void test_params(void **state)
{
	(void)state;
	static const struct {
		const char *label, *ctype, *want;
	} cases[] = {
		{ "plain, names lower-cased", "text/plain; CharSet=\"UTF-8\"", "(\"charset\" \"UTF-8\")" },
		{ "comments and spaces", "text/plain (c) ; (x) a = b (y); c=\"d;e\"", "(\"a\" \"b\" \"c\" \"d;e\")" },
		{ "continuations, plain", "text/plain; n*0=\"ab \"; n*1=cd", "(\"n\" \"ab cd\")" },
		{ "continuations out of order", "text/plain; n*1=cd; n*0=ab", "(\"n\" \"abcd\")" },
		{ "extended piece 0", "text/plain; n*0*=utf-8''%41; n*1=\"b c\"", "(\"n*\" \"utf-8''%41b%20c\")" },
		{ "extended later piece only", "text/plain; n*0=a; n*1*=%42", "(\"n*\" \"''a%42\")" },
		{ "single extended", "text/plain; n*=us-ascii'en'x%20y", "(\"n*\" \"us-ascii'en'x%20y\")" },
		{ "no piece 0", "text/plain; n*1=a; n*2=b", "(\"n*1\" \"a\" \"n*2\" \"b\")" },
		{ "gap after piece 0", "text/plain; n*2=c; n*0=a; x=y", "(\"n\" \"a\" \"x\" \"y\" \"n*2\" \"c\")" },
		{ "garbage skipped", "text/plain; ===; a=b; c", "(\"a\" \"b\")" },
		{ "no parameters", "TEXT/Plain", "NIL" },
		{ "backslash in quoted", "text/plain; a=\"x\\\\y\\\"z\"", "(\"a\" \"x\\\\y\\\"z\")" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *msg = xasprintf("Content-Type: %s\r\n\r\nx", cases[i].ctype);
		struct mime_summary sum;
		mime_parse_mem(msg, strlen(msg), &sum);
		char *want = xasprintf("(\"text\" \"plain\" %s NIL NIL \"7bit\" 1 1 NIL NIL NIL NIL)", cases[i].want);
		if (strcmp(want, sum.bodystructure) != 0) {
			print_error("%s: Content-Type: %s\n  want: %s\n  got:  %s\n", cases[i].label, cases[i].ctype,
				    want, sum.bodystructure);
			fail();
		}
		free(want);
		free(msg);
		mime_summary_free(&sum);
	}
}

/* RFC 5322 address lists as ENVELOPE's To member. */
static void test_addresses(void **state)
{
	(void)state;
	static const struct {
		const char *label, *to, *want;
	} cases[] = {
		{ "addr-spec", "a@b.example", "((NIL NIL \"a\" \"b.example\"))" },
		{ "name-addr", "Ann Lee <ann@x.example>", "((\"Ann Lee\" NIL \"ann\" \"x.example\"))" },
		{ "dotted name", "John Q. Public <jqp@x>", "((\"John Q. Public\" NIL \"jqp\" \"x\"))" },
		{ "comment as name", "ann@x (Ann)", "((\"Ann\" NIL \"ann\" \"x\"))" },
		{ "comments elsewhere", "(c) ann (d) @ (e) x (f)", "((\"f\" NIL \"ann\" \"x\"))" },
		{ "source route", "<@r1,@r2:u@h>", "((NIL \"@r1,@r2\" \"u\" \"h\"))" },
		{ "quoted local part", "\"a b\"@x", "((NIL NIL \"\\\"a b\\\"\" \"x\"))" },
		{ "dotted local part", "first.last@x", "((NIL NIL \"first.last\" \"x\"))" },
		{ "no domain", "root", "((NIL NIL \"root\" \"MISSING_DOMAIN\"))" },
		{ "empty angle with name", "Nobody <>", "((\"Nobody\" NIL \"MISSING_MAILBOX\" \"MISSING_DOMAIN\"))" },
		{ "empty group", "g: ;", "((NIL NIL \"g\" NIL)(NIL NIL NIL NIL))" },
		{ "domain literal", "u@[127.0.0.1]", "((NIL NIL \"u\" \"[127.0.0.1]\"))" },
		{ "empty list", " , ,", "NIL" },
		{ "empty header", "", "NIL" },
		{ "folded", "a@x,\r\n b@y", "((NIL NIL \"a\" \"x\")(NIL NIL \"b\" \"y\"))" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *msg = xasprintf("To: %s\r\n\r\n", cases[i].to);
		struct mime_summary sum;
		mime_parse_mem(msg, strlen(msg), &sum);
		char *want = xasprintf("(NIL NIL NIL NIL NIL %s NIL NIL NIL NIL)", cases[i].want);
		if (strcmp(want, sum.envelope) != 0) {
			print_error("%s: To: %s\n  want: %s\n  got:  %s\n", cases[i].label, cases[i].to, want,
				    sum.envelope);
			fail();
		}
		free(want);
		free(msg);
		mime_summary_free(&sum);
	}
}

/* Mutations of the corpus (fixed seed, so failures reproduce): byte
 * changes, cuts, and boundary-like lines spliced in.  Every result must be
 * well-formed IMAP and every part range inside the message. */
static void test_mutations(void **state)
{
	(void)state;
	static const char *const names[] = { "nested_rfc822", "rfc2231", "alternative_related", "mixed_attachment" };
	static const char *const inserts[] = { "\r\n--outer\r\n", "\r\n--inner--\r\n", "\r\n\r\n", "\"", "(",
						"=?", "*0*=", ";", "\r\n ", "\0", "\xff" };
	unsigned seed = 12345;
	for (size_t n = 0; n < sizeof(names) / sizeof(names[0]); n++) {
		char path[PATH_MAX + 64];
		snprintf(path, sizeof(path), "%s/%s.eml", data_dir, names[n]);
		size_t raw_len, len;
		char *raw = read_all(path, &raw_len);
		char *msg = to_crlf(raw, raw_len, &len);
		free(raw);
		for (int round = 0; round < 500; round++) {
			struct buf m = BUF_INIT;
			buf_append(&m, msg, len);
			for (int k = 0; k < 1 + rand_r(&seed) % 4; k++) {
				size_t at = m.len ? (size_t)rand_r(&seed) % m.len : 0;
				switch (rand_r(&seed) % 3) {
				case 0:
					if (m.len)
						m.data[at] = (char)(rand_r(&seed) & 0xff);
					break;
				case 1:
					buf_truncate(&m, at);
					break;
				default: {
					const char *ins = inserts[rand_r(&seed) % (sizeof(inserts) / sizeof(inserts[0]))];
					size_t il = strlen(ins) ? strlen(ins) : 1;
					struct buf t = BUF_INIT;
					buf_append(&t, m.data, at);
					buf_append(&t, ins, il);
					buf_append(&t, m.data + at, m.len - at);
					buf_free(&m);
					m = t;
				}
				}
			}
			char label[64];
			snprintf(label, sizeof(label), "%s mutation %d", names[n], round);
			check_sane(label, m.data ? m.data : "", m.len);
			struct mime_summary sum;
			mime_parse_mem(m.data, m.len, &sum);
			static const char *const secs[] = { "1", "2", "1.1", "2.1", "2.2", "2.3" };
			for (size_t i = 0; i < sizeof(secs) / sizeof(secs[0]); i++) {
				struct mime_part mp;
				if (mime_part_find(sum.parts, sum.parts_len, secs[i], &mp))
					assert_true(mp.header_start <= mp.body_start && mp.body_start <= mp.body_end &&
						    mp.body_end <= m.len && mp.text_start <= mp.body_end &&
						    mp.text_start >= mp.body_start);
			}
			mime_summary_free(&sum);
			buf_free(&m);
		}
		free(msg);
	}
}

static void test_part_map_damage(void **state)
{
	(void)state;
	const char *msg = "Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\nA\r\n--x\r\n\r\nB\r\n--x--\r\n";
	struct mime_summary sum;
	mime_parse_mem(msg, strlen(msg), &sum);
	struct mime_part mp;
	assert_true(mime_part_find(sum.parts, sum.parts_len, "2", &mp));
	assert_int_equal(mp.body_end - mp.body_start, 1);
	assert_memory_equal(msg + mp.body_start, "B", 1);
	/* Every truncation of the map is refused or still in range, never read past. */
	for (size_t cut = 0; cut < sum.parts_len; cut++) {
		uint8_t *copy = xmalloc(cut ? cut : 1);
		memcpy(copy, sum.parts, cut);
		if (mime_part_find(copy, cut, "2", &mp))
			assert_true(mp.body_end <= strlen(msg));
		free(copy);
	}
	/* A wrong version byte is refused. */
	uint8_t *bad = xmalloc(sum.parts_len);
	memcpy(bad, sum.parts, sum.parts_len);
	bad[0] = 99;
	assert_false(mime_part_find(bad, sum.parts_len, "1", &mp));
	free(bad);
	assert_false(mime_part_find(sum.parts, sum.parts_len, "", &mp));
	assert_false(mime_part_find(sum.parts, sum.parts_len, "1.1", &mp));
	mime_summary_free(&sum);
}

static void test_parse_file(void **state)
{
	(void)state;
	char path[] = "/tmp/strata_mime_test_XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	const char *msg = "Subject: hi\r\n\r\nbody\r\nSTRATA-META trailer that is not the message";
	assert_true(fs_write_all(fd, msg, strlen(msg)));
	close(fd);
	struct mime_summary sum;
	char *err = NULL;
	assert_int_equal(mime_parse_file(path, 21, &sum, &err), ST_OK);
	assert_string_equal(sum.bodystructure,
			    "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 6 1 NIL NIL NIL NIL)");
	mime_summary_free(&sum);
	/* Asking for more bytes than the file has is an error, not a crash. */
	assert_int_equal(mime_parse_file(path, 1000, &sum, &err), ST_IO_ERROR);
	assert_non_null(err);
	free(err);
	err = NULL;
	unlink(path);
	assert_int_equal(mime_parse_file(path, 10, &sum, &err), ST_NOT_FOUND);
	free(err);
}

int main(void)
{
	find_data_dir();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_corpus),
		cmocka_unit_test(test_hostile),
		cmocka_unit_test(test_params),
		cmocka_unit_test(test_addresses),
		cmocka_unit_test(test_mutations),
		cmocka_unit_test(test_part_map_damage),
		cmocka_unit_test(test_parse_file),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
