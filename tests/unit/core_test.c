/*
 * core_test.c - the core library: buffers, string parsers, message ids,
 * log escaping, the status table and the durable-write helper with its
 * fault points (src/core).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core.h"

/* ---- buf ---------------------------------------------------------------- */

static void test_buf_basics(void **state)
{
	(void)state;
	struct buf b = BUF_INIT;
	buf_append_str(&b, "hello");
	buf_append_char(&b, ' ');
	buf_printf(&b, "%s %d", "world", 42);
	assert_int_equal(b.len, strlen("hello world 42"));
	assert_string_equal(b.data, "hello world 42");
	assert_true(b.cap > b.len);

	buf_truncate(&b, 5);
	assert_string_equal(b.data, "hello");
	buf_truncate(&b, 100); /* longer than len: no effect */
	assert_int_equal(b.len, 5);

	/* binary data with NULs keeps its length and stays terminated */
	buf_append(&b, "\0x\0", 3);
	assert_int_equal(b.len, 8);
	assert_memory_equal(b.data + 5, "\0x\0", 3);
	assert_int_equal(b.data[8], '\0');

	size_t cap = b.cap;
	buf_reset(&b);
	assert_int_equal(b.len, 0);
	assert_int_equal(b.cap, cap);
	assert_string_equal(b.data, "");

	buf_append_str(&b, "kept");
	char *s = buf_steal(&b);
	assert_string_equal(s, "kept");
	assert_null(b.data);
	assert_int_equal(b.len, 0);
	assert_int_equal(b.cap, 0);
	free(s);

	/* stealing an empty, never-used buffer gives an empty string */
	s = buf_steal(&b);
	assert_non_null(s);
	assert_string_equal(s, "");
	free(s);
	buf_free(&b);
}

/* The invariant of core_buf.c (data[len] == '\0' whenever data != NULL)
 * must hold from the first allocation on, whichever call makes it.  main()
 * turns on glibc's malloc perturbation so fresh memory is never zero by
 * luck. */
static void test_buf_reserve_terminates(void **state)
{
	(void)state;
	struct buf b = BUF_INIT;
	buf_reserve(&b, 100);
	assert_non_null(b.data);
	assert_int_equal(b.len, 0);
	assert_int_equal(b.data[0], '\0');
	char *s = buf_steal(&b);
	assert_string_equal(s, "");
	free(s);
	struct buf c = BUF_INIT;
	buf_append(&c, "", 0);
	assert_non_null(c.data);
	assert_string_equal(c.data, "");
	buf_free(&c);
}

static void test_buf_growth(void **state)
{
	(void)state;
	struct buf b = BUF_INIT;
	/* a formatted chunk bigger than any initial capacity */
	char big[10000];
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	for (int i = 0; i < 100; i++) {
		buf_printf(&b, "%d:%s;", i, big);
		assert_int_equal(b.data[b.len], '\0');
		assert_true(b.len < b.cap);
	}
	assert_int_equal(b.len, 100 * (sizeof(big) - 1 + 2) + 10 * 1 + 90 * 2);
	assert_memory_equal(b.data, "0:aaa", 5);
	assert_memory_equal(b.data + b.len - 4, "aaa;", 4);
	buf_free(&b);
	assert_null(b.data);
}

/* ---- string parsers ------------------------------------------------------ */

enum parser { P_SIZE, P_DURATION, P_U64, P_BOOL };

struct parse_case {
	const char *label;
	enum parser p;
	const char *in;
	bool ok;
	uint64_t want;
};

#define KI 1024ull
static const struct parse_case parse_cases[] = {
	{ "size plain", P_SIZE, "123", true, 123 },
	{ "size zero", P_SIZE, "0", true, 0 },
	{ "size k", P_SIZE, "512k", true, 512 * KI },
	{ "size K", P_SIZE, "512K", true, 512 * KI },
	{ "size kb", P_SIZE, "2kb", true, 2 * KI },
	{ "size KiB", P_SIZE, "2KiB", true, 2 * KI },
	{ "size M", P_SIZE, "50M", true, 50 * KI * KI },
	{ "size G", P_SIZE, "1G", true, KI * KI * KI },
	{ "size T", P_SIZE, "3t", true, 3 * KI * KI * KI * KI },
	{ "size b", P_SIZE, "77b", true, 77 },
	{ "size overflow by unit", P_SIZE, "17179869184G", false, 0 },
	{ "size overflow digits", P_SIZE, "99999999999999999999", false, 0 },
	{ "size negative", P_SIZE, "-1", false, 0 },
	{ "size leading space", P_SIZE, " 1", false, 0 },
	{ "size trailing space", P_SIZE, "1 ", false, 0 },
	{ "size space before unit", P_SIZE, "1 M", false, 0 },
	{ "size fraction", P_SIZE, "1.5G", false, 0 },
	{ "size unknown unit", P_SIZE, "5x", false, 0 },
	{ "size empty", P_SIZE, "", false, 0 },
	{ "size unit only", P_SIZE, "M", false, 0 },
	{ "duration bare seconds", P_DURATION, "10", true, 10000 },
	{ "duration ms", P_DURATION, "250ms", true, 250 },
	{ "duration s", P_DURATION, "30s", true, 30000 },
	{ "duration m", P_DURATION, "5m", true, 300000 },
	{ "duration min", P_DURATION, "2min", true, 120000 },
	{ "duration h", P_DURATION, "2h", true, 7200000 },
	{ "duration d", P_DURATION, "1d", true, 86400000 },
	{ "duration zero", P_DURATION, "0", true, 0 },
	{ "duration unknown", P_DURATION, "3w", false, 0 },
	{ "duration negative", P_DURATION, "-5s", false, 0 },
	{ "duration overflow", P_DURATION, "18446744073709551615d", false, 0 },
	{ "u64 max", P_U64, "18446744073709551615", true, UINT64_MAX },
	{ "u64 max+1", P_U64, "18446744073709551616", false, 0 },
	{ "u64 zero", P_U64, "0", true, 0 },
	{ "u64 plus sign", P_U64, "+5", false, 0 },
	{ "u64 minus", P_U64, "-5", false, 0 },
	{ "u64 hex", P_U64, "0x10", false, 0 },
	{ "u64 trailing", P_U64, "12a", false, 0 },
	{ "u64 empty", P_U64, "", false, 0 },
	{ "bool yes", P_BOOL, "yes", true, 1 },
	{ "bool YES", P_BOOL, "YES", true, 1 },
	{ "bool true", P_BOOL, "true", true, 1 },
	{ "bool on", P_BOOL, "on", true, 1 },
	{ "bool 1", P_BOOL, "1", true, 1 },
	{ "bool no", P_BOOL, "no", true, 0 },
	{ "bool False", P_BOOL, "False", true, 0 },
	{ "bool off", P_BOOL, "off", true, 0 },
	{ "bool 0", P_BOOL, "0", true, 0 },
	{ "bool maybe", P_BOOL, "maybe", false, 0 },
	{ "bool empty", P_BOOL, "", false, 0 },
	{ "bool yes with space", P_BOOL, "yes ", false, 0 },
};

static void test_str_parsers(void **state)
{
	(void)state;
	int failures = 0;
	for (size_t i = 0; i < ARRAY_LEN(parse_cases); i++) {
		const struct parse_case *c = &parse_cases[i];
		uint64_t v = 0xdeadbeef;
		bool bv = false, ok = false;
		switch (c->p) {
		case P_SIZE:
			ok = str_parse_size(c->in, &v);
			break;
		case P_DURATION:
			ok = str_parse_duration_ms(c->in, &v);
			break;
		case P_U64:
			ok = str_parse_u64(c->in, &v);
			break;
		case P_BOOL:
			ok = str_parse_bool(c->in, &bv);
			v = bv;
			break;
		}
		if (ok != c->ok || (ok && v != c->want)) {
			print_error("case '%s': input '%s': expected %s %llu, got %s %llu\n", c->label, c->in,
				    c->ok ? "ok" : "error", (unsigned long long)c->want, ok ? "ok" : "error",
				    (unsigned long long)v);
			failures++;
		}
	}
	assert_int_equal(failures, 0);
}

static void test_base64_decode_strict(void **state)
{
	(void)state;
	struct { const char *label, *in; size_t cap; bool ok; const char *want; } cases[] = {
		{ "plain", "QUJD", 8, true, "ABC" },
		{ "padding", "QUI=", 8, true, "AB" },
		{ "empty", "", 8, true, "" },
		{ "high octet (libsodium 1.0.18 reads it as '/')", "QUJ\x80", 8, false, NULL },
		{ "blank inside", "QU JD", 8, false, NULL },
		{ "no padding", "QUI", 8, false, NULL },
		{ "data after padding", "QUI=QUJD", 8, false, NULL },
		{ "does not fit", "QUJDREVG", 4, false, NULL },
		{ "url-safe alphabet", "QU-_", 8, false, NULL },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		unsigned char out[16];
		size_t n = 99;
		bool ok = base64_decode_strict(cases[i].in, strlen(cases[i].in), out, cases[i].cap, &n);
		if (ok != cases[i].ok)
			fail_msg("%s: expected %s, got %s", cases[i].label, cases[i].ok ? "ok" : "refused",
				 ok ? "ok" : "refused");
		if (ok && (n != strlen(cases[i].want) || memcmp(out, cases[i].want, n) != 0))
			fail_msg("%s: expected '%s', got %zu bytes '%.*s'", cases[i].label, cases[i].want, n, (int)n,
				 (const char *)out);
	}
}

static void test_str_helpers(void **state)
{
	(void)state;
	struct { const char *in, *want; } trims[] = {
		{ "  a b  ", "a b" }, { "\t\r\nx\n", "x" }, { "", "" }, { "   ", "" }, { "none", "none" },
	};
	for (size_t i = 0; i < ARRAY_LEN(trims); i++) {
		char tmp[32];
		snprintf(tmp, sizeof(tmp), "%s", trims[i].in);
		const char *got = str_trim(tmp);
		if (strcmp(got, trims[i].want) != 0)
			fail_msg("str_trim('%s'): expected '%s', got '%s'", trims[i].in, trims[i].want, got);
	}
	char low[] = "MiXeD@Example.ORG";
	str_lower(low);
	assert_string_equal(low, "mixed@example.org");
	assert_true(str_ieq("Example", "eXAMPLE"));
	assert_false(str_ieq("Example", "Exampl"));
	assert_true(str_istarts("MAIL FROM:<a@b>", "mail from:"));
	assert_false(str_istarts("MAIL", "mail from:"));
	assert_true(str_ct_equal("abcdef", "abcdef", 6));
	assert_false(str_ct_equal("abcdef", "abcdeg", 6));
	assert_false(str_ct_equal("xbcdef", "abcdef", 6));
	assert_true(str_ct_equal("ab", "ac", 1)); /* only n bytes count */
	assert_true(str_ct_equal("", "", 0));
}

/* ---- message ids ---------------------------------------------------------- */

static int cmp_id_bytes(const void *a, const void *b)
{
	return memcmp(a, b, MSGID_BYTES);
}

static void test_msgid_round_trip(void **state)
{
	(void)state;
	struct msgid fixed[3];
	memset(fixed[0].b, 0, MSGID_BYTES);
	memset(fixed[1].b, 0xff, MSGID_BYTES);
	for (int i = 0; i < MSGID_BYTES; i++)
		fixed[2].b[i] = (uint8_t)(i * 17 + 3);
	const char *want[2] = { "00000000000000000000000000", "7ZZZZZZZZZZZZZZZZZZZZZZZZZ" };
	for (int i = 0; i < 3; i++) {
		char text[MSGID_TEXT_LEN + 1];
		struct msgid back;
		msgid_format(&fixed[i], text);
		assert_int_equal(strlen(text), MSGID_TEXT_LEN);
		if (i < 2)
			assert_string_equal(text, want[i]);
		assert_true(msgid_parse(text, &back));
		assert_memory_equal(back.b, fixed[i].b, MSGID_BYTES);
	}
	for (int i = 0; i < 2000; i++) {
		struct msgid id, back;
		char text[MSGID_TEXT_LEN + 1];
		random_bytes(id.b, sizeof(id.b));
		msgid_format(&id, text);
		if (!msgid_parse(text, &back) || memcmp(id.b, back.b, MSGID_BYTES) != 0)
			fail_msg("round trip failed for '%s'", text);
	}
}

static void test_msgid_ordering(void **state)
{
	(void)state;
	enum { N = 500 };
	struct msgid ids[N];
	for (int i = 0; i < N; i++)
		random_bytes(ids[i].b, MSGID_BYTES);
	qsort(ids, N, sizeof(ids[0]), cmp_id_bytes);
	char prev[MSGID_TEXT_LEN + 1], cur[MSGID_TEXT_LEN + 1];
	msgid_format(&ids[0], prev);
	for (int i = 1; i < N; i++) {
		msgid_format(&ids[i], cur);
		if (strcmp(prev, cur) > 0)
			fail_msg("byte order and text order differ: '%s' before '%s'", prev, cur);
		memcpy(prev, cur, sizeof(cur));
	}
	/* new ids carry the wall clock and sort by creation time */
	uint64_t before = time_wall_ms();
	struct msgid a, b;
	msgid_new(&a);
	struct timespec ts = { 0, 3 * 1000 * 1000 };
	nanosleep(&ts, NULL);
	msgid_new(&b);
	uint64_t after = time_wall_ms();
	assert_in_range(msgid_time_ms(&a), before, after);
	assert_in_range(msgid_time_ms(&b), before, after);
	assert_true(msgid_time_ms(&a) < msgid_time_ms(&b));
	char ta[MSGID_TEXT_LEN + 1], tb[MSGID_TEXT_LEN + 1];
	msgid_format(&a, ta);
	msgid_format(&b, tb);
	assert_true(strcmp(ta, tb) < 0);
}

static void test_msgid_parse_rejects(void **state)
{
	(void)state;
	const char *bad[] = {
		"",
		"0000000000000000000000000",   /* 25 chars */
		"000000000000000000000000000", /* 27 chars */
		"8ZZZZZZZZZZZZZZZZZZZZZZZZZ",  /* first digit carries 3 bits only */
		"0000000000000000000000000I",  /* not Crockford */
		"0000000000000000000000000U",
		"000000000000000000000000-0",
		"0000000000000000000000000z",  /* lower case is not produced */
	};
	for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
		struct msgid id;
		if (msgid_parse(bad[i], &id))
			fail_msg("msgid_parse accepted '%s'", bad[i]);
	}
}

/* ---- log_escape ------------------------------------------------------------ */

struct esc_case {
	const char *label;
	const char *in;
	size_t in_len;
	size_t max_out;
	const char *want;
};

static const struct esc_case esc_cases[] = {
	{ "printable", "MAIL FROM:<a@b>", 15, 64, "MAIL FROM:<a@b>" },
	{ "crlf", "a\r\nb", 4, 64, "a\\x0d\\x0ab" },
	{ "backslash", "a\\b", 3, 64, "a\\x5cb" },
	{ "nul inside", "a\0b", 3, 64, "a\\x00b" },
	{ "high bytes", "\xff\x80", 2, 64, "\\xff\\x80" },
	{ "del", "\x7f", 1, 64, "\\x7f" },
	{ "truncated plain", "abcdef", 6, 4, "abc" },
	{ "escape never split", "ab\x01", 3, 6, "ab" },
	{ "escape just fits", "ab\x01", 3, 7, "ab\\x01" },
	{ "size one", "abc", 3, 1, "" },
	{ "empty input", "", 0, 8, "" },
};

static void test_log_escape(void **state)
{
	(void)state;
	int failures = 0;
	for (size_t i = 0; i < ARRAY_LEN(esc_cases); i++) {
		const struct esc_case *c = &esc_cases[i];
		char out[64];
		memset(out, '#', sizeof(out));
		char *r = log_escape(c->in, c->in_len, out, c->max_out);
		if (r != out || strcmp(out, c->want) != 0 || strlen(out) >= c->max_out) {
			print_error("case '%s': max_out %zu: expected '%s', got '%s'\n", c->label, c->max_out,
				    c->want, out);
			failures++;
		}
		/* nothing written past max_out */
		for (size_t k = c->max_out; k < sizeof(out); k++) {
			if (out[k] != '#') {
				print_error("case '%s': byte %zu written past max_out\n", c->label, k);
				failures++;
				break;
			}
		}
	}
	char untouched = 'z';
	log_escape("abc", 3, &untouched, 0);
	assert_int_equal(untouched, 'z');
	assert_int_equal(failures, 0);
}

/* ---- status table ------------------------------------------------------------ */

static void test_status_table(void **state)
{
	(void)state;
	for (int st = 0; st < ST__COUNT; st++) {
		const struct status_info *si = status_info((enum status)st);
		assert_non_null(si->name);
		assert_non_null(si->smtp_text);
		/* the enhanced code's class matches the reply's class */
		if (si->smtp_enh[0] - '0' != si->smtp_code / 100)
			fail_msg("status %s: %d vs %s", si->name, si->smtp_code, si->smtp_enh);
		if (st != ST_OK)
			assert_non_null(si->imap_code);
	}
	assert_int_equal(status_info(ST_NO_SPACE)->smtp_code, 452);
	assert_string_equal(status_info(ST_NO_SPACE)->smtp_enh, "4.3.1");
	assert_string_equal(status_info(ST_OVER_QUOTA_TEMP)->imap_code, "OVERQUOTA");
	assert_int_equal(status_from_errno(0), ST_OK);
	assert_int_equal(status_from_errno(ENOSPC), ST_NO_SPACE);
	assert_int_equal(status_from_errno(EDQUOT), ST_NO_SPACE);
	assert_int_equal(status_from_errno(EIO), ST_IO_ERROR);
	assert_int_equal(status_from_errno(EACCES), ST_TEMPFAIL);
}

/* ---- durable writes and fault points ------------------------------------------ */

struct fs_fixture {
	char dir[256];
	char path[300];
};

static int fs_setup(void **state)
{
	struct fs_fixture *f = xcalloc(1, sizeof(*f));
	snprintf(f->dir, sizeof(f->dir), "%s/strata-core-test-XXXXXX",
		 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (mkdtemp(f->dir) == NULL)
		return -1;
	snprintf(f->path, sizeof(f->path), "%s/final.txt", f->dir);
	*state = f;
	return 0;
}

static int fs_teardown(void **state)
{
	struct fs_fixture *f = *state;
	for (int op = 0; op < FS_OP__COUNT; op++)
		fs_fault_set((enum fs_fault_op)op, 0, 0, false);
	DIR *d = opendir(f->dir);
	if (d) {
		struct dirent *de;
		while ((de = readdir(d)) != NULL) {
			if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
				continue;
			char p[600];
			snprintf(p, sizeof(p), "%s/%s", f->dir, de->d_name);
			char sub[700];
			snprintf(sub, sizeof(sub), "%s/b", p);
			rmdir(sub);
			if (unlink(p) != 0)
				rmdir(p);
		}
		closedir(d);
	}
	rmdir(f->dir);
	free(f);
	return 0;
}

/* Number of directory entries other than . and .. */
static int dir_entries(const char *dir)
{
	DIR *d = opendir(dir);
	assert_non_null(d);
	int n = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
			n++;
	}
	closedir(d);
	return n;
}

static void test_fs_write_durable_ok(void **state)
{
	struct fs_fixture *f = *state;
	const char content[] = "line one\nline two\n";
	assert_true(fs_write_file_durable(f->path, content, sizeof(content) - 1, 0640));
	char *data = NULL;
	size_t len = 0;
	assert_true(fs_read_file(f->path, &data, &len));
	assert_int_equal(len, sizeof(content) - 1);
	assert_memory_equal(data, content, len);
	free(data);
	struct stat st;
	assert_int_equal(stat(f->path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0640);
	assert_int_equal(dir_entries(f->dir), 1); /* no temp file left */

	/* replacing keeps exactly one file with the new content */
	assert_true(fs_write_file_durable(f->path, "x", 1, 0600));
	assert_true(fs_read_file(f->path, &data, &len));
	assert_int_equal(len, 1);
	assert_memory_equal(data, "x", 1);
	free(data);
	assert_int_equal(dir_entries(f->dir), 1);

	/* empty content is a valid file */
	assert_true(fs_write_file_durable(f->path, "", 0, 0600));
	assert_true(fs_read_file(f->path, &data, &len));
	assert_int_equal(len, 0);
	free(data);
}

struct fault_case {
	const char *label;
	enum fs_fault_op op;
	int err;
};

static const struct fault_case fault_cases[] = {
	{ "open fails", FS_OP_OPEN, EACCES },
	{ "write fails (ENOSPC)", FS_OP_WRITE, ENOSPC },
	{ "fsync fails (EIO)", FS_OP_FSYNC, EIO },
	{ "rename fails", FS_OP_RENAME, EXDEV },
	{ "directory fsync fails", FS_OP_FSYNC_DIR, EIO },
};

static void test_fs_write_durable_faults(void **state)
{
	struct fs_fixture *f = *state;
	int failures = 0;
	for (size_t i = 0; i < ARRAY_LEN(fault_cases); i++) {
		const struct fault_case *c = &fault_cases[i];
		fs_fault_set(c->op, 1, c->err, false);
		errno = 0;
		bool ok = fs_write_file_durable(f->path, "payload", 7, 0600);
		int err = errno;
		fs_fault_set(c->op, 0, 0, false);
		bool exists = access(f->path, F_OK) == 0;
		int entries = dir_entries(f->dir);
		if (ok || err != c->err || exists || entries != 0) {
			print_error("case '%s': expected failure with errno %d and an empty directory; got "
				    "%s, errno %d, final file %s, %d entries\n",
				    c->label, c->err, ok ? "success" : "failure", err,
				    exists ? "present" : "absent", entries);
			failures++;
		}
		unlink(f->path); /* keep later cases independent */
	}
	assert_int_equal(failures, 0);
	/* with every fault disarmed the same call succeeds */
	assert_true(fs_write_file_durable(f->path, "payload", 7, 0600));
}

static void test_fs_fault_nth_and_repeat(void **state)
{
	struct fs_fixture *f = *state;
	/* the 2nd write call fails; the 1st (another file) succeeds */
	fs_fault_set(FS_OP_WRITE, 2, ENOSPC, false);
	assert_true(fs_write_file_durable(f->path, "a", 1, 0600));
	errno = 0;
	assert_false(fs_write_file_durable(f->path, "b", 1, 0600));
	assert_int_equal(errno, ENOSPC);
	assert_true(fs_write_file_durable(f->path, "c", 1, 0600)); /* one-shot */
	/* repeat: every call from the nth on fails */
	fs_fault_set(FS_OP_FSYNC, 1, EIO, true);
	assert_false(fs_write_file_durable(f->path, "d", 1, 0600));
	assert_false(fs_write_file_durable(f->path, "e", 1, 0600));
	fs_fault_set(FS_OP_FSYNC, 0, 0, false);
	char *data;
	size_t len;
	assert_true(fs_read_file(f->path, &data, &len));
	assert_memory_equal(data, "c", 1); /* failed writes never replaced it */
	free(data);
	assert_int_equal(dir_entries(f->dir), 1);

	/* the environment form */
	setenv("STRATA_FAULT", "rename:1:30,bogus", 1);
	log_set_level(LOG_LVL_ERROR); /* the armed-fault warning is expected */
	fs_fault_init_from_env();
	unsetenv("STRATA_FAULT");
	errno = 0;
	assert_false(fs_write_file_durable(f->path, "f", 1, 0600));
	assert_int_equal(errno, EROFS);
	assert_true(fs_write_file_durable(f->path, "g", 1, 0600));
	assert_int_equal(dir_entries(f->dir), 1);
}

static void test_fs_helpers(void **state)
{
	struct fs_fixture *f = *state;
	struct { const char *in, *want; } dn[] = {
		{ "/a/b/c", "/a/b" }, { "/a", "/" }, { "name", "." }, { "a/b", "a" },
	};
	for (size_t i = 0; i < ARRAY_LEN(dn); i++) {
		char out[64];
		fs_dirname(dn[i].in, out, sizeof(out));
		if (strcmp(out, dn[i].want) != 0)
			fail_msg("fs_dirname('%s'): expected '%s', got '%s'", dn[i].in, dn[i].want, out);
	}
	char deep[400];
	snprintf(deep, sizeof(deep), "%s/a/b", f->dir);
	assert_true(fs_mkdir_p(deep, 0750));
	assert_true(fs_mkdir_p(deep, 0750)); /* idempotent */
	struct stat st;
	assert_int_equal(stat(deep, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	/* a file in the way is an error */
	char file[400];
	snprintf(file, sizeof(file), "%s/plain", f->dir);
	assert_true(fs_write_file_durable(file, "x", 1, 0600));
	errno = 0;
	assert_false(fs_mkdir_p(file, 0750));
	assert_int_equal(errno, ENOTDIR);
	char *data;
	size_t len;
	errno = 0;
	assert_false(fs_read_file("/nonexistent/strata/file", &data, &len));
	assert_int_equal(errno, ENOENT);
	/* rename_durable moves the file */
	char moved[400];
	snprintf(moved, sizeof(moved), "%s/a/moved", f->dir);
	assert_true(fs_rename_durable(file, moved));
	assert_int_equal(access(file, F_OK), -1);
	assert_int_equal(access(moved, F_OK), 0);
	unlink(moved);
}

static void test_time_rfc5322(void **state)
{
	(void)state;
	const char *old = getenv("TZ");
	char *saved = old ? xstrdup(old) : NULL;
	setenv("TZ", "UTC", 1);
	tzset();
	char out[64];
	time_rfc5322(0, out, sizeof(out));
	assert_string_equal(out, "Thu, 1 Jan 1970 00:00:00 +0000");
	time_rfc5322(1795903424, out, sizeof(out)); /* 2026-11-28 22:03:44 UTC */
	assert_string_equal(out, "Sat, 28 Nov 2026 22:03:44 +0000");
	setenv("TZ", "UTC-05:30", 1); /* POSIX sign: 5h30 east of UTC */
	tzset();
	time_rfc5322(0, out, sizeof(out));
	assert_string_equal(out, "Thu, 1 Jan 1970 05:30:00 +0530");
	if (saved) {
		setenv("TZ", saved, 1);
		free(saved);
	} else {
		unsetenv("TZ");
	}
	tzset();
}

int main(void)
{
	mallopt(M_PERTURB, 0x5a);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_buf_basics),
		cmocka_unit_test(test_buf_reserve_terminates),
		cmocka_unit_test(test_buf_growth),
		cmocka_unit_test(test_str_parsers),
		cmocka_unit_test(test_str_helpers),
		cmocka_unit_test(test_msgid_round_trip),
		cmocka_unit_test(test_msgid_ordering),
		cmocka_unit_test(test_msgid_parse_rejects),
		cmocka_unit_test(test_base64_decode_strict),
		cmocka_unit_test(test_log_escape),
		cmocka_unit_test(test_status_table),
		cmocka_unit_test_setup_teardown(test_fs_write_durable_ok, fs_setup, fs_teardown),
		cmocka_unit_test_setup_teardown(test_fs_write_durable_faults, fs_setup, fs_teardown),
		cmocka_unit_test_setup_teardown(test_fs_fault_nth_and_repeat, fs_setup, fs_teardown),
		cmocka_unit_test_setup_teardown(test_fs_helpers, fs_setup, fs_teardown),
		cmocka_unit_test(test_time_rfc5322),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
