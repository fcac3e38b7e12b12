/*
 * mime_test.c - src/mime against the corpus in tests/data/mime and against
 * hostile input; the packed form of the index (mime_pack.c) by labelled
 * cases, by a differential test over 3,000 generated messages (the texts
 * the parser computes against their packed and unpacked form) and by
 * damaged records.
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

/* ---- mime_decode.c ------------------------------------------------------------------ */

static void expect_buf(const char *label, const char *input, const char *want, const struct buf *got)
{
	const char *g = got->data ? got->data : "";
	if (strlen(want) != got->len || memcmp(want, g, got->len) != 0) {
		print_error("%s: input %s\n  want: [%s]\n  got:  [%.*s]\n", label, input, want, (int)got->len, g);
		fail();
	}
}

static void test_header_decode(void **state)
{
	(void)state;
	static const struct {
		const char *label, *in, *want;
	} cases[] = {
		{ "utf-8 B", "=?UTF-8?B?w6l0w6k=?=", "\xC3\xA9t\xC3\xA9" },
		{ "latin-1 Q, underscores", "=?ISO-8859-1?Q?caf=E9_cr=E8me?=", "caf\xC3\xA9 cr\xC3\xA8me" },
		{ "koi8-r B", "=?koi8-r?B?8NLJ18XU?=", "\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82" },
		{ "shift_jis B", "=?Shift_JIS?B?g2WDWINn?=", "\xE3\x83\x86\xE3\x82\xB9\xE3\x83\x88" },
		{ "adjacent words joined", "=?UTF-8?Q?a?= \t =?UTF-8?Q?b?=", "ab" },
		{ "character split between words", "=?UTF-8?B?ww==?=\r\n =?UTF-8?B?qQ==?=", "\xC3\xA9" },
		{ "words of two charsets", "=?ISO-8859-1?Q?=E9?= =?UTF-8?Q?=C3=A8?=", "\xC3\xA9\xC3\xA8" },
		{ "text around words", "Re: =?UTF-8?Q?caf=C3=A9?= ok", "Re: caf\xC3\xA9 ok" },
		{ "space before text kept", "=?UTF-8?Q?a?=  b", "a  b" },
		{ "unknown charset: raw", "=?x-unknown?Q?abc=21?=", "abc!" },
		{ "rfc 2231 language", "=?US-ASCII*EN?Q?Keith_Moore?=", "Keith Moore" },
		{ "lower-case encoding", "=?utf-8?q?x=3Dy?=", "x=y" },
		{ "not a word", "a =?bad b =?x?Z?y?= c", "a =?bad b =?x?Z?y?= c" },
		{ "unterminated", "=?UTF-8?Q?abc", "=?UTF-8?Q?abc" },
		{ "space inside: not a word", "=?UTF-8?Q?a b?=", "=?UTF-8?Q?a b?=" },
		{ "folding", "a\r\n\tb\r\n c", "a b c" },
		{ "invalid latin byte", "=?ISO-2022-JP?B?GyRCJCIbKEI=?=", "\xE3\x81\x82" },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct buf out = BUF_INIT;
		mime_header_decode(cases[i].in, strlen(cases[i].in), &out);
		expect_buf(cases[i].label, cases[i].in, cases[i].want, &out);
		buf_free(&out);
	}
}

static void test_fold(void **state)
{
	(void)state;
	static const struct {
		const char *label, *in, *want;
	} cases[] = {
		{ "ascii", "Hello WORLD 123", "hello world 123" },
		{ "latin-1", "\xC3\x89T\xC3\x89 \xC3\x9E\xC3\x98", "\xC3\xA9t\xC3\xA9 \xC3\xBE\xC3\xB8" },
		{ "multiplication sign kept", "\xC3\x97", "\xC3\x97" },
		{ "latin extended-a", "\xC5\x81\xC5\xBD\xC4\x80", "\xC5\x82\xC5\xBE\xC4\x81" },
		{ "long s and y diaeresis", "\xC5\xBF\xC5\xB8", "s\xC3\xBF" },
		{ "greek, final sigma", "\xCE\xA3\xCE\x8A\xCF\x82", "\xCF\x83\xCE\xAF\xCF\x83" },
		{ "cyrillic", "\xD0\x9F\xD0\xA0\xD0\x98\xD0\x92\xD0\x95\xD0\xA2 \xD0\x81",
		  "\xD0\xBF\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82 \xD1\x91" },
		{ "sharp s stays", "Stra\xC3\x9F" "e", "stra\xC3\x9F" "e" },
		{ "kelvin sign", "\xE2\x84\xAA", "k" },
		{ "cjk unchanged", "\xE3\x83\x86", "\xE3\x83\x86" },
		{ "invalid bytes as is", "A\xFF\xC3(B", "a\xFF\xC3(b" },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct buf out = BUF_INIT;
		mime_fold_str(cases[i].in, strlen(cases[i].in), &out);
		expect_buf(cases[i].label, cases[i].in, cases[i].want, &out);
		/* The same fed one byte at a time. */
		struct buf out2 = BUF_INIT;
		struct mime_fold f;
		mime_fold_init(&f);
		for (size_t k = 0; cases[i].in[k]; k++)
			mime_fold_feed(&f, cases[i].in + k, 1, &out2);
		mime_fold_finish(&f, &out2);
		expect_buf(cases[i].label, "(bytewise)", cases[i].want, &out2);
		buf_free(&out);
		buf_free(&out2);
	}
}

static void test_cte_charset(void **state)
{
	(void)state;
	static const struct {
		const char *label, *cte, *charset, *in, *want;
	} cases[] = {
		{ "base64", "base64", NULL, "aGVsbG8g\r\nd29ybGQ=\r\n", "hello world" },
		{ "base64 two groups", "BASE64", NULL, "YQ==Yg==", "ab" },
		{ "base64 garbage skipped", "base64", NULL, "a*G!V-s\nbG8=", "hello" },
		{ "qp", "quoted-printable", "utf-8", "caf=C3=A9 =\r\nx=3d", "caf\xC3\xA9 x=" },
		{ "qp soft break LF", "quoted-printable", NULL, "a=\nb", "ab" },
		{ "qp bad escapes kept", "quoted-printable", NULL, "=G1 =4", "=G1 =4" },
		{ "qp latin-1", "quoted-printable", "iso-8859-1", "=C9t=E9", "\xC3\x89t\xC3\xA9" },
		{ "identity latin-1", "8bit", "ISO-8859-1", "\xE9t\xE9", "\xC3\xA9t\xC3\xA9" },
		{ "shift_jis", "7bit", "shift_jis", "\x83\x65\x83\x58\x83\x67", "\xE3\x83\x86\xE3\x82\xB9\xE3\x83\x88" },
		{ "koi8-r base64", "base64", "KOI8-R", "8NLJ18XU", "\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82" },
		{ "unknown charset raw", "7bit", "x-nonsense", "abc\xE9", "abc\xE9" },
		{ "invalid utf-16 tail", "base64", "utf-16le", "YQBiAGM=", "ab\xEF\xBF\xBD" },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		for (size_t step = 1; step <= 64; step += 63) {
			struct mime_cte_decoder d;
			mime_cte_init(&d, mime_cte_from_name(cases[i].cte, strlen(cases[i].cte)));
			const char *cs = cases[i].charset;
			struct mime_charset *c = mime_charset_open(cs, cs ? strlen(cs) : 0);
			struct buf mid = BUF_INIT, out = BUF_INIT;
			size_t len = strlen(cases[i].in);
			for (size_t k = 0; k < len; k += step) {
				buf_reset(&mid);
				mime_cte_feed(&d, cases[i].in + k, len - k < step ? len - k : step, &mid);
				mime_charset_feed(c, mid.data, mid.len, &out);
			}
			buf_reset(&mid);
			mime_cte_finish(&d, &mid);
			mime_charset_feed(c, mid.data ? mid.data : "", mid.len, &out);
			mime_charset_finish(c, &out);
			expect_buf(cases[i].label, step == 1 ? "(bytewise)" : "(whole)", cases[i].want, &out);
			mime_charset_close(&c);
			assert_null(c);
			buf_free(&mid);
			buf_free(&out);
		}
	}
}

static void test_param_get(void **state)
{
	(void)state;
	static const struct {
		const char *label, *value, *name, *want;   /* want NULL: absent */
	} cases[] = {
		{ "quoted", "text/plain; charset=\"iso-8859-1\"", "charset", "iso-8859-1" },
		{ "token, case", "text/plain; CHARSET=UTF-8 (comment)", "charset", "UTF-8" },
		{ "extended", "text/plain; charset*=us-ascii'en'utf-8", "charset", "utf-8" },
		{ "continuations", "multipart/mixed; boundary*0=\"ab\"; boundary*1=cd", "boundary", "abcd" },
		{ "extended continuation", "text/plain; charset*0*=''koi8; charset*1*=%2Dr", "charset", "koi8-r" },
		{ "other names not taken", "text/plain; xcharset=a; charsetx=b", "charset", NULL },
		{ "absent", "text/plain", "charset", NULL },
		{ "semicolon in quotes", "multipart/mixed; a=\"x;charset=y\"; boundary=z", "boundary", "z" },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct buf out = BUF_INIT;
		bool found = mime_param_get(cases[i].value, strlen(cases[i].value), cases[i].name, &out);
		if (found != (cases[i].want != NULL)) {
			print_error("%s: %s\n  want found=%d got %d\n", cases[i].label, cases[i].value,
				    cases[i].want != NULL, found);
			fail();
		}
		if (found)
			expect_buf(cases[i].label, cases[i].value, cases[i].want, &out);
		buf_free(&out);
	}
}

struct collect {
	struct buf text;
	size_t parts;
};

static void collect_fn(void *ctx, const char *utf8, size_t len)
{
	struct collect *c = ctx;
	if (utf8 == NULL) {
		c->parts++;
		buf_append_str(&c->text, "|");
		return;
	}
	buf_append(&c->text, utf8, len);
}

static void test_text_scan(void **state)
{
	(void)state;
	static const char msg[] =
		"Subject: =?UTF-8?Q?caf=C3=A9?=\r\n"
		"Content-Type: multipart/mixed; boundary=\"outer\"\r\n"
		"\r\n"
		"preamble is skipped\r\n"
		"--outer\r\n"
		"Content-Type: text/plain; charset=iso-8859-1\r\n"
		"Content-Transfer-Encoding: quoted-printable\r\n"
		"\r\n"
		"=C9t=E9 chaud\r\n"
		"--outer\r\n"
		"Content-Type: image/png\r\n"
		"Content-Transfer-Encoding: base64\r\n"
		"\r\n"
		"c2VjcmV0IHdvcmQ=\r\n"
		"--outer\r\n"
		"Content-Type: multipart/alternative; boundary=inner\r\n"
		"\r\n"
		"--inner\r\n"
		"Content-Type: text/html; charset*=utf-8''koi8-r\r\n"
		"Content-Transfer-Encoding: base64\r\n"
		"\r\n"
		"8NLJ18XU\r\n"
		"--inner--\r\n"
		"inner epilogue\r\n"
		"--outer\r\n"
		"Content-Type: message/rfc822\r\n"
		"\r\n"
		"Subject: inside\r\n"
		"\r\n"
		"embedded body\r\n"
		"--outer--\r\n"
		"epilogue\r\n";
	static const char *const want_headers =
		"Subject: caf\xC3\xA9\n"
		"Content-Type: multipart/mixed; boundary=\"outer\"\n|"
		"\xC3\x89t\xC3\xA9 chaud\r\n|"
		"\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82|"
		"Subject: inside\n|"
		"embedded body\r\n|";
	for (int with_header = 0; with_header < 2; with_header++) {
		for (size_t step = 1; step <= sizeof(msg); step = step == 1 ? 7 : step == 7 ? sizeof(msg) : step + 1) {
			struct collect c = { BUF_INIT, 0 };
			struct mime_text_scan *s =
				mime_text_scan_new(with_header ? MIME_TEXT_HEADER : 0, collect_fn, &c);
			size_t len = sizeof(msg) - 1;
			for (size_t k = 0; k < len; k += step)
				mime_text_scan_feed(s, msg + k, len - k < step ? len - k : step);
			mime_text_scan_finish(s);
			mime_text_scan_free(&s);
			assert_null(s);
			const char *want = with_header ? want_headers : strchr(want_headers, '|') + 1;
			char label[64];
			snprintf(label, sizeof(label), "scan header=%d step=%zu", with_header, step);
			expect_buf(label, "(multipart message)", want, &c.text);
			buf_free(&c.text);
		}
	}
	/* A long line (no boundary possible) and a truncated message. */
	struct buf big = BUF_INIT;
	buf_append_str(&big, "Content-Type: text/plain\r\n\r\n");
	for (int i = 0; i < 5000; i++)
		buf_append_str(&big, "abcdefghij");
	buf_append_str(&big, "NEEDLE");
	struct collect c = { BUF_INIT, 0 };
	struct mime_text_scan *s = mime_text_scan_new(0, collect_fn, &c);
	mime_text_scan_feed(s, big.data, big.len);
	mime_text_scan_finish(s);
	mime_text_scan_free(&s);
	assert_int_equal(c.text.len, 50000 + 6 + 1);
	assert_non_null(memmem(c.text.data, c.text.len, "jNEEDLE|", 8));
	buf_free(&c.text);
	buf_free(&big);
}

static void test_base_subject(void **state)
{
	(void)state;
	static const struct {
		const char *label, *in, *want;
		bool reply;
	} cases[] = {
		{ "plain", "Hello  world ", "Hello world", false },
		{ "re", "Re: Hello", "Hello", true },
		{ "nested re fwd", "RE: Fwd: re:  Hello", "Hello", true },
		{ "fw", "FW: x", "x", true },
		{ "re with blob", "Re[2]: x", "x", true },
		{ "list tag then re", "[list] Re: x", "x", true },
		{ "re then list tag", "Re: [list] x", "x", true },
		{ "blob alone kept", "[list]", "[list]", false },
		{ "blob before text dropped", "[list] x", "x", false },
		{ "fwd trailer", "x (fwd)", "x", true },
		{ "fwd trailers", "x (FWD) (fwd) ", "x", true },
		{ "fwd wrapper", "[Fwd: Re: x]", "x", true },
		{ "encoded word", "=?UTF-8?Q?Re=3A_caf=C3=A9?=", "caf\xC3\xA9", true },
		{ "not a leader", "Rebate: x", "Rebate: x", false },
		{ "tabs", "a\t\tb", "a b", false },
		{ "empty", "", "", false },
		{ "only re", "Re:", "", true },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct buf out = BUF_INIT;
		bool reply = !cases[i].reply;
		mime_base_subject(cases[i].in, strlen(cases[i].in), &out, &reply);
		expect_buf(cases[i].label, cases[i].in, cases[i].want, &out);
		if (reply != cases[i].reply) {
			print_error("%s: %s: reply want %d got %d\n", cases[i].label, cases[i].in, cases[i].reply, reply);
			fail();
		}
		buf_free(&out);
	}
}

static void test_first_address(void **state)
{
	(void)state;
	static const struct {
		const char *label, *in, *display, *mailbox, *host;   /* mailbox NULL: none */
	} cases[] = {
		{ "bare", "a@b.example", "", "a", "b.example" },
		{ "angle", "Zed Q <zed@a.example>, x@y", "Zed Q", "zed", "a.example" },
		{ "quoted name", "\"Doe, John\" <j@d>", "Doe, John", "j", "d" },
		{ "encoded name", "=?UTF-8?Q?Mil=C3=A8ne?= <m@x>", "Mil\xC3\xA8ne", "m", "x" },
		{ "comment", "a@b (Alice)", "", "a", "b" },
		{ "group", "team: c@d, e@f;", "", "c", "d" },
		{ "empty group then mailbox", "undisclosed-recipients:;, g@h", "", "g", "h" },
		{ "empty group", "undisclosed-recipients:;", NULL, NULL, NULL },
		{ "route", "<@r1,@r2:u@h>", "", "u", "h" },
		{ "no domain", "root", "", "root", "" },
		{ "empty", "  ", NULL, NULL, NULL },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct mime_address a = { BUF_INIT, BUF_INIT, BUF_INIT };
		bool found = mime_first_address(cases[i].in, strlen(cases[i].in), &a);
		if (found != (cases[i].mailbox != NULL)) {
			print_error("%s: %s: found want %d got %d\n", cases[i].label, cases[i].in,
				    cases[i].mailbox != NULL, found);
			fail();
		}
		if (found) {
			expect_buf(cases[i].label, cases[i].in, cases[i].display, &a.display);
			expect_buf(cases[i].label, cases[i].in, cases[i].mailbox, &a.mailbox);
			expect_buf(cases[i].label, cases[i].in, cases[i].host, &a.host);
		}
		buf_free(&a.display);
		buf_free(&a.mailbox);
		buf_free(&a.host);
	}
}

static void test_msgid_and_date(void **state)
{
	(void)state;
	const char *refs = "<a@x> junk <b\r\n @y> <> (c) <c@z>";
	const char *want[] = { "a@x", "b@y", "c@z" };
	size_t pos = 0, n = 0, len = strlen(refs);
	struct buf id = BUF_INIT;
	while (mime_msgid_next(refs, len, &pos, &id)) {
		assert_true(n < ARRAY_LEN(want));
		expect_buf("msgid", refs, want[n], &id);
		n++;
	}
	assert_int_equal(n, 3);
	buf_free(&id);
	static const struct {
		const char *label, *in;
		bool ok;
		int64_t utc;
		int zone;
	} dates[] = {
		{ "full", "Fri, 3 Jan 2020 10:00:00 +0000", true, 1578045600, 0 },
		{ "negative zone", "Wed, 1 Jan 2020 23:30:00 -0500", true, 1577939400, -300 },
		{ "no weekday, no seconds", "2 Jan 2020 12:00 +0100", true, 1577962800, 60 },
		{ "named zone, comment", "Thu, 02 Jan 2020 07:00:00 EST (Eastern)", true, 1577966400, -300 },
		{ "two-digit year", "1 Feb 99 00:00:00 GMT", true, 917827200, 0 },
		{ "date only", "1 Feb 2000", true, 949363200, 0 },
		{ "no month", "1 Foo 2000 00:00:00 +0000", false, 0, 0 },
		{ "garbage", "yesterday", false, 0, 0 },
		{ "empty", "", false, 0, 0 },
	};
	for (size_t i = 0; i < ARRAY_LEN(dates); i++) {
		int64_t t = 0;
		int zone = 0;
		bool ok = mime_date_parse(dates[i].in, strlen(dates[i].in), &t, &zone);
		if (ok != dates[i].ok || (ok && (t != dates[i].utc || zone != dates[i].zone))) {
			print_error("%s: %s\n  want ok=%d %lld %d\n  got  ok=%d %lld %d\n", dates[i].label, dates[i].in,
				    dates[i].ok, (long long)dates[i].utc, dates[i].zone, ok, (long long)t, zone);
			fail();
		}
	}
}

struct counter {
	size_t bytes, marks;
};

static void count_fn(void *ctx, const char *utf8, size_t len)
{
	struct counter *c = ctx;
	if (utf8 == NULL)
		c->marks++;
	else
		c->bytes += len;
}

/* Random inputs built from the tokens the decoders react to: nothing
 * may crash (ASan) and the decoded output stays within a small multiple
 * of the input (no unbounded growth). */
static void test_decode_hostile(void **state)
{
	(void)state;
	static const char *const tok[] = {
		"=?", "?=", "?Q?", "?B?", "utf-8", "koi8-r", "x-bad", "=E9", "=\r\n", "_", "\r\n", "\n", " ", "\t",
		"--b", "--b--", "--c", "Content-Type: multipart/mixed; boundary=b\r\n",
		"Content-Type: multipart/digest; boundary=c\r\n", "Content-Type: message/rfc822\r\n",
		"Content-Type: text/plain; charset*0=utf; charset*1*=%2D16\r\n",
		"Content-Transfer-Encoding: base64\r\n", "Content-Transfer-Encoding: quoted-printable\r\n",
		"\r\n\r\n", "Re:", "[x]", "(fwd)", "[fwd:", "]", "<", ">", "@", "\"", "(", ")", ",", ";", ":",
		"\xC3", "\xA9", "\xFF", "\x1B$B", "=?ISO-2022-JP?B?GyRC?=", "Mon, 1 Jan 2020 00:00 +0000",
	};
	uint32_t seed = 12345;
	struct buf in = BUF_INIT, out = BUF_INIT;
	for (int round = 0; round < 3000; round++) {
		buf_reset(&in);
		seed = seed * 1103515245u + 12345u;
		size_t n = 1 + (seed >> 16) % 60;
		for (size_t i = 0; i < n; i++) {
			seed = seed * 1103515245u + 12345u;
			if ((seed >> 24) % 5 == 0)
				buf_append_char(&in, (char)(seed >> 8));
			else
				buf_append_str(&in, tok[(seed >> 16) % ARRAY_LEN(tok)]);
		}
		buf_reset(&out);
		mime_header_decode(in.data, in.len, &out);
		assert_true(out.len <= in.len * 4 + 16);
		buf_reset(&out);
		bool reply;
		mime_base_subject(in.data, in.len, &out, &reply);
		assert_true(out.len <= in.len * 4 + 16);
		struct mime_address a = { BUF_INIT, BUF_INIT, BUF_INIT };
		mime_first_address(in.data, in.len, &a);
		assert_true(a.mailbox.len <= in.len);
		buf_free(&a.display);
		buf_free(&a.mailbox);
		buf_free(&a.host);
		int64_t t;
		int zone;
		(void)mime_date_parse(in.data, in.len, &t, &zone);
		buf_reset(&out);
		(void)mime_param_get(in.data, in.len, "charset", &out);
		assert_true(out.len <= in.len);
		size_t pos = 0;
		for (int k = 0; k < 100 && mime_msgid_next(in.data, in.len, &pos, &out); k++)
			assert_true(out.len <= in.len);
		struct counter c = { 0, 0 };
		struct mime_text_scan *scan = mime_text_scan_new(round & 1 ? MIME_TEXT_HEADER : 0, count_fn, &c);
		for (size_t off = 0; off < in.len;) {
			seed = seed * 1103515245u + 12345u;
			size_t piece = 1 + (seed >> 16) % 17;
			if (piece > in.len - off)
				piece = in.len - off;
			mime_text_scan_feed(scan, in.data + off, piece);
			off += piece;
		}
		mime_text_scan_finish(scan);
		mime_text_scan_free(&scan);
		assert_true(c.bytes <= in.len * 8 + 64);
	}
	buf_free(&in);
	buf_free(&out);
}

static void test_sort_key(void **state)
{
	(void)state;
	static const struct {
		const char *label, *in, *want;
	} cases[] = {
		{ "ascii upper-cased", "Hello_world", "HELLO_WORLD" },
		{ "latin-1 decomposed", "\xC3\x89mile", "E\xCC\x81MILE" },
		{ "small letter too", "\xC3\xA9", "E\xCC\x81" },
		{ "latin extended-a", "\xC5\xA0" "a", "S\xCC\x8C" "A" },
		{ "no decomposition", "\xC3\x86\xC3\x98", "\xC3\xA6\xC3\xB8" },
		{ "greek tonos", "\xCE\x86", "\xCE\xB1\xCC\x81" },
		{ "greek two marks", "\xCE\x90", "\xCE\xB9\xCC\x88\xCC\x81" },
		{ "cyrillic short i", "\xD0\x99", "\xD0\xB8\xCC\x86" },
		{ "invalid bytes kept", "a\xFF", "A\xFF" },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct buf out = BUF_INIT;
		mime_sort_key(cases[i].in, strlen(cases[i].in), &out);
		expect_buf(cases[i].label, cases[i].in, cases[i].want, &out);
		buf_free(&out);
	}
	/* The order this gives: accented capitals sort with their letter, and
	 * "_" after the letters (they are upper-cased, as i;ascii-casemap does). */
	const char *order[] = { "Emile", "\xC3\x89mile", "Fred", "zed", "_x" };
	for (size_t i = 0; i + 1 < ARRAY_LEN(order); i++) {
		struct buf a = BUF_INIT, b = BUF_INIT;
		mime_sort_key(order[i], strlen(order[i]), &a);
		mime_sort_key(order[i + 1], strlen(order[i + 1]), &b);
		if (strcmp(a.data, b.data) >= 0) {
			print_error("sort order: [%s] should sort before [%s]\n", order[i], order[i + 1]);
			fail();
		}
		buf_free(&a);
		buf_free(&b);
	}
}

/* ---- packed form (mime_pack.c) --------------------------------------------------------- */

/* The flag bits of a packed record's first byte (mime_pack.c's format). */
#define PACKED_BODY_STORED 1u
#define PACKED_RAW 2u

/* Packs, unpacks and compares; prints both sides on a difference.
 * Returns the packed record (caller frees). */
static void pack_roundtrip(const char *label, const char *env, const char *bs, const char *body,
			   const uint8_t *parts, size_t parts_len, struct buf *packed)
{
	buf_reset(packed);
	mime_pack(env, bs, body, parts, parts_len, packed);
	struct mime_summary m;
	if (!mime_unpack((const uint8_t *)packed->data, packed->len, &m)) {
		print_error("%s: the packed record (%zu bytes) does not decode\n", label, packed->len);
		fail();
	}
	expect_text(label, "ENVELOPE", env, m.envelope);
	expect_text(label, "BODYSTRUCTURE", bs, m.bodystructure);
	expect_text(label, "BODY", body, m.body);
	if (m.parts_len != parts_len || (parts_len && memcmp(m.parts, parts, parts_len) != 0)) {
		print_error("%s: part map differs (%zu bytes, want %zu)\n", label, m.parts_len, parts_len);
		fail();
	}
	mime_summary_free(&m);
}

static void test_pack_cases(void **state)
{
	(void)state;
	static const uint8_t map[] = { 1, '1', 0, 0, 2, 8, 0 };
	static const struct {
		const char *label, *env, *bs, *body;
		unsigned flags;           /* PACKED_* expected in byte 0 */
		size_t max_len;           /* 0: no bound checked */
	} cases[] = {
		{ "plain text, derived BODY, date, sender/reply-to references",
		  "(\"Sun, 29 Nov 2026 03:16:34 +0000\" \"hi\" ((\"Ann Example\" NIL \"ann\" \"example.org\")) "
		  "((\"Ann Example\" NIL \"ann\" \"example.org\")) ((\"Ann Example\" NIL \"ann\" \"example.org\")) "
		  "((NIL NIL \"bob\" \"example.net\")) NIL NIL NIL \"<1@example.org>\")",
		  "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 4758 61 NIL NIL NIL NIL)",
		  "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 4758 61)", 0, 132 },
		{ "multipart with extension data",
		  "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)",
		  "((\"text\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"quoted-printable\" 10 1 NIL NIL NIL NIL)"
		  "(\"application\" \"pdf\" (\"name\" \"a b.pdf\") \"<cid@x>\" \"desc\" \"base64\" 2000 \"md5==\" "
		  "(\"attachment\" (\"filename\" \"a b.pdf\")) (\"en\" \"de\") \"http://x/y\") \"mixed\" "
		  "(\"boundary\" \"=_b\") NIL NIL NIL)",
		  "((\"text\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"quoted-printable\" 10 1)"
		  "(\"application\" \"pdf\" (\"name\" \"a b.pdf\") \"<cid@x>\" \"desc\" \"base64\" 2000) \"mixed\")",
		  0, 0 },
		{ "message/rfc822: embedded envelope kept, embedded body derived",
		  "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)",
		  "(\"message\" \"rfc822\" NIL NIL NIL \"7bit\" 300 (NIL \"in\" NIL NIL NIL NIL NIL NIL NIL NIL) "
		  "((\"text\" \"plain\" NIL NIL NIL \"7bit\" 2 1 NIL NIL NIL NIL)(\"text\" \"html\" NIL NIL NIL "
		  "\"7bit\" 3 1 NIL NIL NIL NIL) \"alternative\" NIL NIL NIL NIL) 12 NIL NIL NIL NIL)",
		  "(\"message\" \"rfc822\" NIL NIL NIL \"7bit\" 300 (NIL \"in\" NIL NIL NIL NIL NIL NIL NIL NIL) "
		  "((\"text\" \"plain\" NIL NIL NIL \"7bit\" 2 1)(\"text\" \"html\" NIL NIL NIL \"7bit\" 3 1) "
		  "\"alternative\") 12)", 0, 0 },
		{ "escapes, 8-bit literal, zero, big number",
		  "(\"Mon, 1 Dec 2026 00:00:00 -0130\" {6}\r\n\xc3\xa9t\xc3\xa9 ((\"a \\\"q\\\" \\\\ b\" NIL \"x\" \"y\")) "
		  "NIL NIL NIL NIL NIL NIL NIL)",
		  "(\"text\" \"plain\" NIL NIL NIL \"8bit\" 0 18446744073709551615 NIL NIL NIL NIL)",
		  "(\"text\" \"plain\" NIL NIL NIL \"8bit\" 0 18446744073709551615)", 0, 0 },
		{ "dates not in the common form stay strings",
		  "(\"Tue, 2 Dec 26 10:00 GMT\" \"Mon, 01 Dec 2026 24:00:00 +0000\" "
		  "\"Sun, 29 Nov 2026 03:16:34 +0000 (UTC)\" "
		  "\"01 Dec 2026 23:59:60 +1400\" NIL NIL NIL NIL NIL NIL)",
		  "(\"text\" \"plain\" NIL NIL NIL \"7bit\" 1 1 NIL NIL NIL NIL)",
		  "(\"text\" \"plain\" NIL NIL NIL \"7bit\" 1 1)", 0, 0 },
		{ "BODY that is not the derived one is stored",
		  "(NIL \"s\" NIL NIL NIL NIL NIL NIL NIL NIL)", "(\"text\" \"plain\")", "(\"text\")",
		  PACKED_BODY_STORED, 0 },
		{ "text that does not tokenise is stored raw",
		  "(NIL  \"two spaces\")", "(\"text\" \"plain\" 007)", "garbage", PACKED_RAW, 0 },
		{ "unbalanced text is stored raw", "((NIL)", "(\"a\")", "(\"a\")", PACKED_RAW, 0 },
		{ "empty texts", "", "", "", PACKED_RAW, 0 },
	};
	struct buf packed = BUF_INIT;
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		for (int with_map = 0; with_map < 2; with_map++) {
			pack_roundtrip(cases[i].label, cases[i].env, cases[i].bs, cases[i].body, with_map ? map : NULL,
				       with_map ? sizeof(map) : 0, &packed);
			unsigned flags = (uint8_t)packed.data[0] & 15u;
			if (flags != cases[i].flags) {
				print_error("%s: flags %u, want %u\n", cases[i].label, flags, cases[i].flags);
				fail();
			}
			if (cases[i].max_len && packed.len > cases[i].max_len) {
				print_error("%s: %zu packed bytes, want at most %zu\n", cases[i].label, packed.len,
					    cases[i].max_len);
				fail();
			}
		}
	}
	buf_free(&packed);
}

/* ---- a generator of varied messages, for the differential test ---------------------- */

static const char *pick(unsigned *seed, const char *const *v, size_t n)
{
	return v[(size_t)rand_r(seed) % n];
}
#define PICK(seed, arr) pick(seed, arr, ARRAY_LEN(arr))

static const char *const gen_dates[] = {
	"Sun, 29 Nov 2026 03:16:34 +0000", "29 Nov 2026 03:16:34 -0500", "Mon, 1 Dec 2026 00:00:00 +0100",
	"Mon, 01 Dec 2026 23:59:60 +1400", "Tue, 2 Dec 26 10:00 GMT", "not a date", NULL,
};
static const char *const gen_subjects[] = {
	"hello", "Re: [list] \"quoted\" and \\backslash\\", "=?UTF-8?B?w6l0w6k=?= encoded",
	"\xc3\xa9t\xc3\xa9 raw 8-bit",
	"", "folded\r\n  subject", NULL,
};
static const char *const gen_addrs[] = {
	"Ann Example <ann@example.org>", "bob@example.net", "\"Doe, John\" <jd@example.com>",
	"team: a@x.org, b@y.org;", "undisclosed-recipients:;", "<no-domain>", "=?ISO-8859-1?Q?Andr=E9?= <a@b.fr>",
	"a@x.org, \"B\" <b@y.org>, c@z.org",
};
static const char *const gen_leaf_types[] = {
	"text/plain; charset=us-ascii", "text/plain; charset=\"UTF-8\"; format=flowed", "text/html",
	"application/pdf; name=\"report 1.pdf\"", "image/png",
	"application/octet-stream; name*=utf-8''%E2%82%AC.bin",
	"application/x-custom; a=1; b=\"two words\"", NULL,
};
static const char *const gen_encodings[] = {
	"7bit", "base64", "quoted-printable", "8BIT", "x-unknown", NULL,
};
static const char *const gen_dispositions[] = {
	"attachment; filename=\"report 1.pdf\"", "inline", "attachment; filename*0=a; filename*1=b.txt", NULL,
};
static const char *const gen_languages[] = { "en", "en, de", "fr (French)", NULL };

static void gen_opt_header(struct buf *m, unsigned *seed, const char *name, const char *const *v, size_t n)
{
	const char *x = pick(seed, v, n);
	if (x != NULL)
		buf_printf(m, "%s: %s\r\n", name, x);
}

static void gen_entity(struct buf *m, unsigned *seed, int depth, unsigned id);

static void gen_leaf(struct buf *m, unsigned *seed)
{
	gen_opt_header(m, seed, "Content-Type", gen_leaf_types, ARRAY_LEN(gen_leaf_types));
	gen_opt_header(m, seed, "Content-Transfer-Encoding", gen_encodings, ARRAY_LEN(gen_encodings));
	gen_opt_header(m, seed, "Content-Disposition", gen_dispositions, ARRAY_LEN(gen_dispositions));
	gen_opt_header(m, seed, "Content-Language", gen_languages, ARRAY_LEN(gen_languages));
	if (rand_r(seed) % 4 == 0)
		buf_append_str(m, "Content-ID: <part@example.org>\r\nContent-Description: a part\r\n");
	if (rand_r(seed) % 8 == 0)
		buf_append_str(m, "Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\r\nContent-Location: http://x.example/y\r\n");
	buf_append_str(m, "\r\n");
	for (int l = rand_r(seed) % 5; l >= 0; l--)
		buf_append_str(m, "Some body text of a line.\r\n");
}

static void gen_message_header(struct buf *m, unsigned *seed)
{
	gen_opt_header(m, seed, "Date", gen_dates, ARRAY_LEN(gen_dates));
	gen_opt_header(m, seed, "Subject", gen_subjects, ARRAY_LEN(gen_subjects));
	const char *from = PICK(seed, gen_addrs);
	buf_printf(m, "From: %s\r\n", from);
	switch (rand_r(seed) % 3) {
	case 0: buf_printf(m, "Sender: %s\r\nReply-To: %s\r\n", from, from); break;
	case 1: buf_printf(m, "Reply-To: %s\r\n", PICK(seed, gen_addrs)); break;
	default: break;
	}
	buf_printf(m, "To: %s\r\n", PICK(seed, gen_addrs));
	if (rand_r(seed) % 2)
		buf_printf(m, "Cc: %s\r\nBcc: %s\r\n", PICK(seed, gen_addrs), PICK(seed, gen_addrs));
	if (rand_r(seed) % 2)
		buf_printf(m, "In-Reply-To: <parent.%u@example.org>\r\n", (unsigned)rand_r(seed));
	buf_printf(m, "Message-ID: <%u.%u@example.org>\r\n", (unsigned)rand_r(seed), (unsigned)rand_r(seed));
}

static void gen_entity(struct buf *m, unsigned *seed, int depth, unsigned id)
{
	unsigned kind = depth >= 3 ? 0 : (unsigned)rand_r(seed) % 4;
	if (kind <= 1) {
		gen_leaf(m, seed);
		return;
	}
	if (kind == 2) {
		buf_append_str(m, "Content-Type: message/rfc822\r\n\r\n");
		gen_message_header(m, seed);
		gen_entity(m, seed, depth + 1, id * 10 + 1);
		return;
	}
	static const char *const subs[] = { "mixed", "alternative", "related", "digest", "signed; protocol=x" };
	buf_printf(m, "Content-Type: multipart/%s; boundary=\"b%u.%d\"\r\n", PICK(seed, subs), id, depth);
	gen_opt_header(m, seed, "Content-Disposition", gen_dispositions, ARRAY_LEN(gen_dispositions));
	buf_append_str(m, "\r\npreamble\r\n");
	unsigned n = 1 + (unsigned)rand_r(seed) % 3;
	for (unsigned i = 0; i < n; i++) {
		buf_printf(m, "--b%u.%d\r\n", id, depth);
		gen_entity(m, seed, depth + 1, id * 10 + i + 1);
	}
	buf_printf(m, "--b%u.%d--\r\nepilogue\r\n", id, depth);
}

/* Old text vs new rendering: for thousands of generated messages and the
 * corpus, the texts mime_parse_mem computes come back from their packed
 * form byte for byte, tokenised (never raw), BODY derived, and smaller. */
static void test_pack_differential(void **state)
{
	(void)state;
	unsigned seed = 20261129;
	size_t texts = 0, packed_total = 0;
	struct buf packed = BUF_INIT;
	for (unsigned i = 0; i < 3000; i++) {
		struct buf m = BUF_INIT;
		gen_message_header(&m, &seed);
		buf_append_str(&m, "MIME-Version: 1.0\r\n");
		gen_entity(&m, &seed, 0, i);
		struct mime_summary sum;
		mime_parse_mem(m.data, m.len, &sum);
		char label[64];
		snprintf(label, sizeof(label), "generated message %u", i);
		pack_roundtrip(label, sum.envelope, sum.bodystructure, sum.body, sum.parts, sum.parts_len, &packed);
		if (((uint8_t)packed.data[0] & 15u) != 0) {
			print_error("%s: packed with flags %u\n  message:\n%s\n", label, (uint8_t)packed.data[0] & 15u,
				    m.data);
			fail();
		}
		texts += strlen(sum.envelope) + strlen(sum.bodystructure) + strlen(sum.body) + sum.parts_len;
		packed_total += packed.len;
		mime_summary_free(&sum);
		buf_free(&m);
	}
	print_message("generated: %zu packed bytes for %zu bytes of texts and maps\n", packed_total, texts);
	assert_true(packed_total * 2 < texts);
	buf_free(&packed);
}

/* Every truncation and many byte changes of packed records: refused, or
 * decoded to balanced texts; never a crash or a read out of bounds. */
static void test_pack_damage(void **state)
{
	(void)state;
	static const char *const names[] = { "nested_rfc822", "rfc2231", "mixed_attachment", "eightbit_header" };
	unsigned seed = 7;
	for (size_t n = 0; n < ARRAY_LEN(names); n++) {
		char path[PATH_MAX + 64];
		snprintf(path, sizeof(path), "%s/%s.eml", data_dir, names[n]);
		size_t raw_len, len;
		char *raw = read_all(path, &raw_len);
		char *msg = to_crlf(raw, raw_len, &len);
		free(raw);
		struct mime_summary sum;
		mime_parse_mem(msg, len, &sum);
		struct buf packed = BUF_INIT;
		pack_roundtrip(names[n], sum.envelope, sum.bodystructure, sum.body, sum.parts, sum.parts_len, &packed);
		for (size_t cut = 0; cut < packed.len; cut++) {
			struct mime_summary m;
			uint8_t *copy = xmalloc(cut ? cut : 1);
			memcpy(copy, packed.data, cut);
			if (mime_unpack(copy, cut, &m)) {
				print_error("%s: a record cut at %zu of %zu bytes decodes\n", names[n], cut, packed.len);
				fail();
			}
			free(copy);
		}
		for (int round = 0; round < 4000; round++) {
			uint8_t *copy = xmalloc(packed.len);
			memcpy(copy, packed.data, packed.len);
			for (int k = 0; k < 1 + rand_r(&seed) % 3; k++)
				copy[(size_t)rand_r(&seed) % packed.len] = (uint8_t)rand_r(&seed);
			struct mime_summary m;
			if (mime_unpack(copy, packed.len, &m)) {
				if (!balanced(m.envelope) || !balanced(m.bodystructure) || !balanced(m.body)) {
					print_error("%s: damaged record %d decodes unbalanced\n  %s\n  %s\n", names[n],
						    round, m.envelope, m.bodystructure);
					fail();
				}
				mime_summary_free(&m);
			}
			free(copy);
		}
		buf_free(&packed);
		mime_summary_free(&sum);
		free(msg);
	}
	struct mime_summary m;
	assert_false(mime_unpack(NULL, 0, &m));
	assert_false(mime_unpack((const uint8_t *)"\x20", 1, &m));   /* unknown version */
	/* A reference chain cannot blow up: each list reference copies a
	 * list the text already holds, and the text is capped. */
	struct buf bomb = BUF_INIT;
	buf_append_char(&bomb, 0x10);
	buf_append(&bomb, "\x01\x04\x08xxxxxxxx\x02", 12);
	for (int i = 0; i < 20000; i++)
		buf_append(&bomb, "\x88\x00", 2);
	buf_append(&bomb, "\x00\x01\x03\x02\x00\x00", 6);
	if (mime_unpack((const uint8_t *)bomb.data, bomb.len, &m)) {
		assert_true(strlen(m.envelope) < 64u * 1024u * 1024u);
		mime_summary_free(&m);
	}
	buf_free(&bomb);
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
		cmocka_unit_test(test_header_decode),
		cmocka_unit_test(test_fold),
		cmocka_unit_test(test_cte_charset),
		cmocka_unit_test(test_param_get),
		cmocka_unit_test(test_text_scan),
		cmocka_unit_test(test_base_subject),
		cmocka_unit_test(test_first_address),
		cmocka_unit_test(test_msgid_and_date),
		cmocka_unit_test(test_decode_hostile),
		cmocka_unit_test(test_sort_key),
		cmocka_unit_test(test_pack_cases),
		cmocka_unit_test(test_pack_differential),
		cmocka_unit_test(test_pack_damage),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
