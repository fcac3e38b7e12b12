/*
 * cli_import_test.c - the `strata user import` engine (src/cli/cli_import.c):
 * CSV and Dovecot passwd-file lines, format detection, whole files with
 * errors naming their line, duplicates, parallel hashing, and the one
 * all-or-nothing transaction against a real store in a temporary directory.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "cli_import.h"

#define SHA512 "$6$saltsaltsalt$Cy2drr8kDRji6smvDcT28wkqtq0R0VzVL5CkrjPQCITc5d/31j94knt9rGTcVSyjLXfjsiIsBh5ee8qR/3QDx1"
#define BLF "$2y$05$abcdefghijklmnopqrstuuHNbAKRhpaujgo33bRWs.NLUTJO3lOy2"
#define ARGON "$argon2id$v=19$m=65536,t=2,p=1$c3RyYXRhLXRlc3Qtc2FsdA$48jq6KL0hVhgEUrC9WL6l+cuQgBq1IW+7Rx/ntMTngg"
#define GiB (1024ull * 1024 * 1024)
#define MiB (1024ull * 1024)

enum { ENTRY = IMPORT_LINE_ENTRY, SKIP = IMPORT_LINE_SKIP, ERROR = IMPORT_LINE_ERROR };

struct line_case {
	const char *label;
	enum import_format fmt;
	bool first;              /* first record of the file */
	const char *line;
	int kind;
	const char *address;     /* ENTRY: expected fields */
	const char *secret;
	bool is_hash;
	int has_qb, has_qm;
	uint64_t qb, qm;
	const char *err;         /* ERROR: substring of the message */
};

static const struct line_case line_cases[] = {
	/* CSV */
	{ "csv plain password", IMPORT_CSV, false, "alice@example.org,s3cret", ENTRY,
	  "alice@example.org", "s3cret", false, 0, 0, 0, 0, NULL },
	{ "csv address lower-cased and trimmed", IMPORT_CSV, false, "  Alice@Example.ORG ,pw", ENTRY,
	  "alice@example.org", "pw", false, 0, 0, 0, 0, NULL },
	{ "csv password keeps its spaces", IMPORT_CSV, false, "a@b.org, two words ", ENTRY,
	  "a@b.org", " two words ", false, 0, 0, 0, 0, NULL },
	{ "csv bare sha512 hash", IMPORT_CSV, false, "a@b.org," SHA512, ENTRY,
	  "a@b.org", "{SHA512-CRYPT}" SHA512, true, 0, 0, 0, 0, NULL },
	{ "csv prefixed bcrypt hash", IMPORT_CSV, false, "a@b.org,{BLF-CRYPT}" BLF, ENTRY,
	  "a@b.org", "{BLF-CRYPT}" BLF, true, 0, 0, 0, 0, NULL },
	{ "csv quoted argon2 hash (has commas)", IMPORT_CSV, false, "a@b.org,\"{ARGON2ID}" ARGON "\",1G,500",
	  ENTRY, "a@b.org", "{ARGON2ID}" ARGON, true, 1, 1, GiB, 500, NULL },
	{ "csv quotas", IMPORT_CSV, false, "a@b.org,pw,500M,1000", ENTRY,
	  "a@b.org", "pw", false, 1, 1, 500 * MiB, 1000, NULL },
	{ "csv quota bytes only", IMPORT_CSV, false, "a@b.org,pw,2048", ENTRY,
	  "a@b.org", "pw", false, 1, 0, 2048, 0, NULL },
	{ "csv empty quota fields take defaults", IMPORT_CSV, false, "a@b.org,pw,,", ENTRY,
	  "a@b.org", "pw", false, 0, 0, 0, 0, NULL },
	{ "csv zero quota is unlimited", IMPORT_CSV, false, "a@b.org,pw,0,0", ENTRY,
	  "a@b.org", "pw", false, 1, 1, 0, 0, NULL },
	{ "csv quoted fields with comma and quotes", IMPORT_CSV, false,
	  "\"a@b.org\",\"pa,ss \"\"word\"\"\"", ENTRY, "a@b.org", "pa,ss \"word\"", false, 0, 0, 0, 0, NULL },
	{ "csv empty quoted password", IMPORT_CSV, false, "a@b.org,\"\"", ERROR,
	  NULL, NULL, false, 0, 0, 0, 0, "empty password" },
	{ "csv literal quote inside unquoted field", IMPORT_CSV, false, "a@b.org,pa\"ss", ENTRY,
	  "a@b.org", "pa\"ss", false, 0, 0, 0, 0, NULL },
	{ "csv CRLF line end", IMPORT_CSV, false, "a@b.org,pw\r", ENTRY,
	  "a@b.org", "pw", false, 0, 0, 0, 0, NULL },
	{ "csv {PLAIN} is clear text to hash", IMPORT_CSV, false, "a@b.org,{PLAIN}hunter2", ENTRY,
	  "a@b.org", "hunter2", false, 0, 0, 0, 0, NULL },
	{ "csv header skipped on first record", IMPORT_CSV, true, "address,password,quota_bytes", SKIP,
	  NULL, NULL, false, 0, 0, 0, 0, NULL },
	{ "csv header word later is an error", IMPORT_CSV, false, "address,password", ERROR,
	  NULL, NULL, false, 0, 0, 0, 0, "user@domain" },
	{ "csv comment", IMPORT_CSV, false, "# exported 2026-11-28", SKIP,
	  NULL, NULL, false, 0, 0, 0, 0, NULL },
	{ "csv indented comment", IMPORT_CSV, false, "   # note", SKIP, NULL, NULL, false, 0, 0, 0, 0, NULL },
	{ "csv blank", IMPORT_CSV, false, "  \t ", SKIP, NULL, NULL, false, 0, 0, 0, 0, NULL },
	{ "csv missing password", IMPORT_CSV, false, "a@b.org", ERROR,
	  NULL, NULL, false, 0, 0, 0, 0, "expected address,password" },
	{ "csv too many fields", IMPORT_CSV, false, "a@b.org,pw,1G,10,extra", ERROR,
	  NULL, NULL, false, 0, 0, 0, 0, "too many fields" },
	{ "csv unterminated quote", IMPORT_CSV, false, "a@b.org,\"pw", ERROR,
	  NULL, NULL, false, 0, 0, 0, 0, "unterminated" },
	{ "csv text after closing quote", IMPORT_CSV, false, "a@b.org,\"pw\"x", ERROR,
	  NULL, NULL, false, 0, 0, 0, 0, "after the closing quote" },
	{ "csv bad quota bytes", IMPORT_CSV, false, "a@b.org,pw,lots", ERROR,
	  NULL, NULL, false, 0, 0, 0, 0, "quota_bytes 'lots'" },
	{ "csv bad quota messages", IMPORT_CSV, false, "a@b.org,pw,1G,-3", ERROR,
	  NULL, NULL, false, 0, 0, 0, 0, "quota_messages '-3'" },
	{ "csv address without domain", IMPORT_CSV, false, "alice,pw", ERROR,
	  NULL, NULL, false, 0, 0, 0, 0, "user@domain" },
	{ "csv address with space", IMPORT_CSV, false, "al ice@b.org,pw", ERROR,
	  NULL, NULL, false, 0, 0, 0, 0, "not allowed" },
	{ "csv empty address", IMPORT_CSV, false, ",pw", ERROR, NULL, NULL, false, 0, 0, 0, 0, "empty address" },
	{ "csv unsupported scheme is not a password", IMPORT_CSV, false,
	  "a@b.org,{MD5-CRYPT}$1$saltsalt$qjXMvbEw8oaL.CzflDugX/", ERROR,
	  NULL, NULL, false, 0, 0, 0, 0, "{MD5-CRYPT} is not supported" },
	{ "csv md5-crypt bare is not a password", IMPORT_CSV, false, "a@b.org,$1$saltsalt$qjXMvbEw8oaL.CzflDugX/",
	  ERROR, NULL, NULL, false, 0, 0, 0, 0, "$1$ is not supported" },
	{ "csv truncated sha512 is not a password", IMPORT_CSV, false, "a@b.org,$6$saltsaltsalt$Cy2drr8k",
	  ERROR, NULL, NULL, false, 0, 0, 0, 0, "$6$ is not supported or the hash is malformed" },
	{ "csv NUL byte", IMPORT_CSV, false, "a@b.org,p\0w", ERROR,
	  NULL, NULL, false, 0, 0, 0, 0, "NUL" },
	/* passwd-file */
	{ "passwd full line", IMPORT_PASSWD, false,
	  "bob@example.net:{SHA512-CRYPT}" SHA512 ":1000:1000::/home/bob::userdb_quota_rule=*:storage=1G",
	  ENTRY, "bob@example.net", "{SHA512-CRYPT}" SHA512, true, 1, 0, GiB, 0, NULL },
	{ "passwd two fields", IMPORT_PASSWD, false, "bob@example.net:{BLF-CRYPT}" BLF, ENTRY,
	  "bob@example.net", "{BLF-CRYPT}" BLF, true, 0, 0, 0, 0, NULL },
	{ "passwd argon2 with commas", IMPORT_PASSWD, false, "bob@example.net:{ARGON2ID}" ARGON "::::::", ENTRY,
	  "bob@example.net", "{ARGON2ID}" ARGON, true, 0, 0, 0, 0, NULL },
	{ "passwd storage without unit is KiB", IMPORT_PASSWD, false,
	  "u@d.org:{PLAIN}pw:::::: userdb_quota_rule=*:storage=2048", ENTRY,
	  "u@d.org", "pw", false, 1, 0, 2 * MiB, 0, NULL },
	{ "passwd bytes and messages in one rule", IMPORT_PASSWD, false,
	  "u@d.org:{PLAIN}pw::::::userdb_quota_rule=*:bytes=5000:messages=300", ENTRY,
	  "u@d.org", "pw", false, 1, 1, 5000, 300, NULL },
	{ "passwd numbered rules, per-mailbox skipped", IMPORT_PASSWD, false,
	  "u@d.org:{PLAIN}pw::::::userdb_mail=maildir:~/Maildir userdb_quota_rule=*:storage=100M "
	  "userdb_quota_rule2=Trash:storage=+10M userdb_quota_rule3=*:messages=50", ENTRY,
	  "u@d.org", "pw", false, 1, 1, 100 * MiB, 50, NULL },
	{ "passwd quota_rule without userdb_ prefix", IMPORT_PASSWD, false,
	  "u@d.org:{PLAIN}pw::::::quota_rule=?:storage=1T", ENTRY,
	  "u@d.org", "pw", false, 1, 0, 1024 * GiB, 0, NULL },
	{ "passwd *:ignore is unlimited", IMPORT_PASSWD, false,
	  "u@d.org:{PLAIN}pw::::::userdb_quota_rule=*:ignore", ENTRY, "u@d.org", "pw", false, 1, 1, 0, 0, NULL },
	{ "passwd relative default rule", IMPORT_PASSWD, false,
	  "u@d.org:{PLAIN}pw::::::userdb_quota_rule=*:storage=+1G", ERROR,
	  NULL, NULL, false, 0, 0, 0, 0, "relative quota limit" },
	{ "passwd percentage", IMPORT_PASSWD, false, "u@d.org:{PLAIN}pw::::::userdb_quota_rule=*:storage=10%",
	  ERROR, NULL, NULL, false, 0, 0, 0, 0, "relative quota limit" },
	{ "passwd unknown limit", IMPORT_PASSWD, false, "u@d.org:{PLAIN}pw::::::userdb_quota_rule=*:files=10",
	  ERROR, NULL, NULL, false, 0, 0, 0, 0, "unknown quota limit 'files'" },
	{ "passwd bad storage", IMPORT_PASSWD, false, "u@d.org:{PLAIN}pw::::::userdb_quota_rule=*:storage=big",
	  ERROR, NULL, NULL, false, 0, 0, 0, 0, "storage 'big'" },
	{ "passwd empty password", IMPORT_PASSWD, false, "u@d.org::1000:1000", ERROR,
	  NULL, NULL, false, 0, 0, 0, 0, "empty password" },
	{ "passwd no password field", IMPORT_PASSWD, false, "u@d.org", ERROR,
	  NULL, NULL, false, 0, 0, 0, 0, "expected user@domain:" },
	{ "passwd user without domain", IMPORT_PASSWD, false, "bob:{BLF-CRYPT}" BLF, ERROR,
	  NULL, NULL, false, 0, 0, 0, 0, "user@domain" },
	{ "passwd DES crypt refused", IMPORT_PASSWD, false, "u@d.org:abJnggxhB/yWI", ERROR,
	  NULL, NULL, false, 0, 0, 0, 0, "DES crypt" },
	{ "passwd bare clear text", IMPORT_PASSWD, false, "u@d.org:correct horse", ENTRY,
	  "u@d.org", "correct horse", false, 0, 0, 0, 0, NULL },
	{ "passwd comment", IMPORT_PASSWD, false, "#u@d.org:{PLAIN}x", SKIP, NULL, NULL, false, 0, 0, 0, 0, NULL },
	/* detection */
	{ "auto: passwd line", IMPORT_AUTO, true, "u@d.org:{SHA512-CRYPT}" SHA512, ENTRY,
	  "u@d.org", "{SHA512-CRYPT}" SHA512, true, 0, 0, 0, 0, NULL },
	{ "auto: csv line", IMPORT_AUTO, true, "u@d.org,pw:with:colons", ENTRY,
	  "u@d.org", "pw:with:colons", false, 0, 0, 0, 0, NULL },
};

static bool contains(const char *hay, const char *needle)
{
	return hay && strstr(hay, needle) != NULL;
}

static void test_line_table(void **state)
{
	(void)state;
	int failures = 0;
	for (size_t i = 0; i < ARRAY_LEN(line_cases); i++) {
		const struct line_case *c = &line_cases[i];
		struct import_entry e;
		char *err = NULL;
		/* the NUL case carries an embedded NUL: length from the literal */
		size_t len = strcmp(c->label, "csv NUL byte") == 0 ? 11 : strlen(c->line);
		enum import_line_kind k = import_parse_line(c->fmt, c->line, len, c->first, &e, &err);
		bool ok = (int)k == c->kind;
		if (ok && c->kind == ENTRY) {
			ok = strcmp(e.address, c->address) == 0 && strcmp(e.secret, c->secret) == 0 &&
			     e.is_hash == c->is_hash && e.has_quota_bytes == (bool)c->has_qb &&
			     e.has_quota_messages == (bool)c->has_qm && e.quota_bytes == c->qb &&
			     e.quota_messages == c->qm;
		}
		if (ok && c->kind == ERROR)
			ok = contains(err, c->err);
		if (!ok) {
			print_error("case '%s': line '%s'\n  expected kind %d address '%s' secret '%s' hash %d "
				    "qb %d/%llu qm %d/%llu err '%s'\n  got      kind %d address '%s' secret '%s' "
				    "hash %d qb %d/%llu qm %d/%llu err '%s'\n",
				    c->label, c->line, c->kind, c->address ? c->address : "", c->secret ? c->secret : "",
				    c->is_hash, c->has_qb, (unsigned long long)c->qb, c->has_qm,
				    (unsigned long long)c->qm, c->err ? c->err : "", (int)k,
				    k == IMPORT_LINE_ENTRY ? e.address : "", k == IMPORT_LINE_ENTRY ? e.secret : "",
				    e.is_hash, e.has_quota_bytes, (unsigned long long)e.quota_bytes,
				    e.has_quota_messages, (unsigned long long)e.quota_messages, err ? err : "");
			failures++;
		}
		/* errors never echo a clear-text password */
		if (k == IMPORT_LINE_ERROR && contains(err, "hunter2"))
			failures++;
		if (k == IMPORT_LINE_ENTRY)
			import_entry_clear(&e);
		free(err);
	}
	assert_int_equal(failures, 0);
}

static void test_detect(void **state)
{
	(void)state;
	assert_int_equal(import_detect("a@b:{X}y"), IMPORT_PASSWD);
	assert_int_equal(import_detect("a@b:{ARGON2ID}$argon2id$v=19$m=65536,t=2,p=1$x$y"), IMPORT_PASSWD);
	assert_int_equal(import_detect("a@b,pw"), IMPORT_CSV);
	assert_int_equal(import_detect("a@b,p:w"), IMPORT_CSV);
	assert_int_equal(import_detect("address,password"), IMPORT_CSV);
	assert_int_equal(import_detect("nothing"), IMPORT_CSV);
	enum import_format f;
	assert_true(import_format_parse("CSV", &f));
	assert_int_equal(f, IMPORT_CSV);
	assert_true(import_format_parse("passwd", &f));
	assert_int_equal(f, IMPORT_PASSWD);
	assert_false(import_format_parse("ldif", &f));
}

/* Reads `text` as a file named "users.csv". */
static bool read_text(const char *text, enum import_format fmt, struct import_list *l, char **err)
{
	FILE *fp = fmemopen((void *)text, strlen(text), "r");
	assert_non_null(fp);
	bool ok = import_read(fp, "users.csv", fmt, l, err);
	fclose(fp);
	return ok;
}

static void test_read_csv_file(void **state)
{
	(void)state;
	const char *text = "# export\n"
			   "address,password,quota_bytes,quota_messages\n"
			   "\n"
			   "a@one.org,pw1,1G,100\r\n"
			   "b@one.org," SHA512 "\n"
			   "\"c@two.org\",\"p,w\"\n"
			   "d@two.org,{BLF-CRYPT}" BLF; /* no final newline */
	struct import_list l;
	char *err = NULL;
	if (!read_text(text, IMPORT_AUTO, &l, &err))
		fail_msg("read failed: %s", err);
	assert_int_equal(l.format, IMPORT_CSV);
	assert_int_equal(l.n, 4);
	static const unsigned long lines[] = { 4, 5, 6, 7 };
	static const char *const addrs[] = { "a@one.org", "b@one.org", "c@two.org", "d@two.org" };
	for (size_t i = 0; i < 4; i++) {
		assert_int_equal(l.v[i].line, lines[i]);
		assert_string_equal(l.v[i].address, addrs[i]);
	}
	assert_string_equal(l.v[2].secret, "p,w");
	assert_int_equal(l.v[0].quota_bytes, GiB);
	assert_true(import_check_duplicates(&l, "users.csv", &err));
	import_list_free(&l);
}

static void test_read_passwd_file(void **state)
{
	(void)state;
	const char *text = "u1@d.org:{SHA512-CRYPT}" SHA512 ":1000:1000::/home/u1::userdb_quota_rule=*:storage=1G\n"
			   "u2@d.org:{ARGON2ID}" ARGON "::::::userdb_quota_rule=*:messages=10\n";
	struct import_list l;
	char *err = NULL;
	if (!read_text(text, IMPORT_AUTO, &l, &err))
		fail_msg("read failed: %s", err);
	assert_int_equal(l.format, IMPORT_PASSWD);
	assert_int_equal(l.n, 2);
	assert_int_equal(l.v[0].quota_bytes, GiB);
	assert_true(l.v[1].has_quota_messages);
	assert_int_equal(l.v[1].quota_messages, 10);
	assert_string_equal(l.v[1].secret, "{ARGON2ID}" ARGON);
	import_list_free(&l);
}

struct file_error_case {
	const char *label;
	const char *text;
	enum import_format fmt;
	const char *want;
};

static const struct file_error_case file_errors[] = {
	{ "bad line names its number", "a@b.org,pw\n# c\nc@b.org,pw,1X\n", IMPORT_AUTO,
	  "users.csv:3: quota_bytes '1X'" },
	{ "header only counts on the first record", "a@b.org,pw\naddress,pw\n", IMPORT_CSV, "users.csv:2:" },
	{ "forced passwd on a CSV file", "a@b.org,pw\n", IMPORT_PASSWD, "users.csv:1: expected user@domain:" },
	{ "over-long line", NULL, IMPORT_CSV, "users.csv:2: line longer than 4096 bytes" },
};

static void test_read_errors(void **state)
{
	(void)state;
	int failures = 0;
	for (size_t i = 0; i < ARRAY_LEN(file_errors); i++) {
		const struct file_error_case *c = &file_errors[i];
		char *text;
		if (c->text) {
			text = xstrdup(c->text);
		} else {
			struct buf b = BUF_INIT;
			buf_append_str(&b, "a@b.org,pw\nz@b.org,");
			for (int k = 0; k < 5000; k++)
				buf_append_char(&b, 'x');
			buf_append_str(&b, "\n");
			text = buf_steal(&b);
		}
		struct import_list l;
		char *err = NULL;
		bool ok = read_text(text, c->fmt, &l, &err);
		if (ok || !contains(err, c->want)) {
			print_error("case '%s': expected error '%s', got %s '%s'\n", c->label, c->want,
				    ok ? "success" : "error", err ? err : "");
			failures++;
		}
		if (ok)
			import_list_free(&l);
		assert_null(l.v); /* nothing left behind on failure */
		free(err);
		free(text);
	}
	assert_int_equal(failures, 0);
}

static void test_duplicates(void **state)
{
	(void)state;
	struct import_list l;
	char *err = NULL;
	assert_true(read_text("a@b.org,pw\nc@b.org,pw\nA@B.org,pw2\n", IMPORT_CSV, &l, &err));
	assert_false(import_check_duplicates(&l, "users.csv", &err));
	assert_non_null(err);
	if (!contains(err, "users.csv:3: duplicate address a@b.org (first on line 1)"))
		fail_msg("unexpected message '%s'", err);
	free(err);
	import_list_free(&l);
}

static void test_hash_passwords(void **state)
{
	(void)state;
	struct import_list l;
	char *err = NULL;
	assert_true(read_text("a@b.org,first pw\nb@b.org," SHA512 "\nc@b.org,third pw\nd@b.org,{PLAIN}fourth\n",
			      IMPORT_CSV, &l, &err));
	struct import_hash_stats hs;
	assert_true(import_hash_passwords(&l, "users.csv", 2, NULL, &hs, &err));
	assert_int_equal(hs.hashed, 3);
	assert_int_equal(hs.threads, 2);
	assert_true(hs.seconds > 0);
	static const char *const pws[] = { "first pw", "correct horse", "third pw", "fourth" };
	for (size_t i = 0; i < l.n; i++) {
		assert_true(l.v[i].is_hash);
		if (!auth_verify_password(pws[i], l.v[i].secret))
			fail_msg("line %lu: '%s' does not verify against '%s'", l.v[i].line, pws[i], l.v[i].secret);
	}
	assert_string_equal(l.v[1].secret, "{SHA512-CRYPT}" SHA512); /* kept as given */
	assert_int_equal(strncmp(l.v[0].secret, "{ARGON2ID}$argon2id$", 20), 0);
	/* nothing to hash */
	assert_true(import_hash_passwords(&l, "users.csv", 4, NULL, &hs, &err));
	assert_int_equal(hs.hashed, 0);
	import_list_free(&l);
}

/* ---- against a real store ------------------------------------------------- */

struct store_fixture {
	char dir[256];
	struct settings *s;
	struct store *st;
};

static int store_setup(void **state)
{
	struct store_fixture *f = xcalloc(1, sizeof(*f));
	snprintf(f->dir, sizeof(f->dir), "%s/strata-import-test-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (mkdtemp(f->dir) == NULL)
		return -1;
	char *over[3];
	over[0] = xasprintf("state_dir=%s", f->dir);
	over[1] = xstrdup("quota.default_bytes=10M");
	over[2] = xstrdup("quota.default_messages=77");
	char *err = NULL;
	f->s = config_load("/dev/null", over, 3, &err);
	for (int i = 0; i < 3; i++)
		free(over[i]);
	if (f->s == NULL) {
		print_error("config: %s\n", err);
		return -1;
	}
	f->st = store_open(f->s, true, &err);
	if (f->st == NULL) {
		print_error("store_open: %s\n", err);
		return -1;
	}
	assert_int_equal(store_domain_add(f->st, "one.org", NULL), ST_OK);
	*state = f;
	return 0;
}

static void rm_tree(const char *path)
{
	DIR *d = opendir(path);
	if (d == NULL) {
		unlink(path);
		return;
	}
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		char p[1024];
		snprintf(p, sizeof(p), "%s/%s", path, de->d_name);
		struct stat st;
		if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
			rm_tree(p);
		else
			unlink(p);
	}
	closedir(d);
	rmdir(path);
}

static int store_teardown(void **state)
{
	struct store_fixture *f = *state;
	store_close(&f->st);
	config_free(&f->s);
	rm_tree(f->dir);
	free(f);
	return 0;
}

static void count_account(void *ctx, const struct account *a)
{
	(void)a;
	(*(size_t *)ctx)++;
}

static void count_name(void *ctx, const char *name)
{
	(void)name;
	(*(size_t *)ctx)++;
}

static size_t n_accounts(struct store *st)
{
	size_t n = 0;
	assert_int_equal(store_user_list(st, NULL, count_account, &n), ST_OK);
	return n;
}

static size_t n_domains(struct store *st)
{
	size_t n = 0;
	assert_int_equal(store_domain_list(st, count_name, &n), ST_OK);
	return n;
}

static void read_hashed(const char *text, struct import_list *l)
{
	char *err = NULL;
	if (!read_text(text, IMPORT_AUTO, l, &err))
		fail_msg("read: %s", err);
	struct import_hash_stats hs;
	assert_true(import_hash_passwords(l, "users.csv", 2, NULL, &hs, &err));
}

static void test_commit_ok(void **state)
{
	struct store_fixture *f = *state;
	struct import_list l;
	read_hashed("a@one.org," SHA512 ",1G,5\nb@one.org,{BLF-CRYPT}" BLF "\nc@two.org," SHA512 "\n", &l);
	char *err = NULL;
	size_t missing;
	/* two.org is not local: refused before anything happens */
	assert_false(import_check_domains(f->st, &l, "users.csv", false, &missing, &err));
	if (!contains(err, "users.csv:3: two.org is not a local domain"))
		fail_msg("unexpected message '%s'", err);
	free(err);
	err = NULL;
	struct import_result res;
	assert_int_equal(import_commit(f->st, f->s, &l, "users.csv", false, &res, &err), ST_NOT_FOUND);
	free(err);
	err = NULL;
	assert_int_equal(n_accounts(f->st), 0);
	/* with --create-domains */
	assert_true(import_check_domains(f->st, &l, "users.csv", true, &missing, &err));
	assert_int_equal(missing, 1);
	if (import_commit(f->st, f->s, &l, "users.csv", true, &res, &err) != ST_OK)
		fail_msg("commit: %s", err);
	assert_int_equal(res.accounts, 3);
	assert_int_equal(res.domains_created, 1);
	assert_int_equal(n_accounts(f->st), 3);
	struct account a;
	assert_int_equal(store_user_get(f->st, "a@one.org", &a), ST_OK);
	assert_int_equal(a.quota_bytes, GiB);
	assert_int_equal(a.quota_messages, 5);
	assert_true(auth_verify_password("correct horse", a.pwhash));
	assert_int_equal(store_user_get(f->st, "b@one.org", &a), ST_OK);
	assert_int_equal(a.quota_bytes, 10 * MiB); /* defaults from the settings */
	assert_int_equal(a.quota_messages, 77);
	import_list_free(&l);
}

/* One bad entry: nothing is inserted and the domain the import created is
 * gone again. */
static void test_commit_all_or_nothing(void **state)
{
	struct store_fixture *f = *state;
	assert_int_equal(store_user_add(f->st, "taken@one.org", "{SHA512-CRYPT}" SHA512, 0, 0, NULL), ST_OK);
	struct import_list l;
	read_hashed("n1@new.org," SHA512 "\nn2@one.org," SHA512 "\n\ntaken@one.org," SHA512 "\n", &l);
	size_t before_domains = n_domains(f->st);
	char *err = NULL;
	struct import_result res;
	enum status st = import_commit(f->st, f->s, &l, "users.csv", true, &res, &err);
	assert_int_equal(st, ST_EXISTS);
	if (!contains(err, "users.csv:4:"))
		fail_msg("error does not name line 4: '%s'", err);
	free(err);
	assert_int_equal(n_accounts(f->st), 1);
	assert_int_equal(n_domains(f->st), before_domains);
	assert_int_equal(store_user_get(f->st, "n2@one.org", &(struct account){ 0 }), ST_NOT_FOUND);
	import_list_free(&l);
}

/* 50,000 accounts with given hashes in one transaction: the figure the
 * import promises is "well under 30 s". */
static void test_commit_50000(void **state)
{
	struct store_fixture *f = *state;
	struct buf b = BUF_INIT;
	for (int i = 0; i < 50000; i++)
		buf_printf(&b, "user%05d@one.org,{SHA512-CRYPT}" SHA512 ",1G,10000\n", i);
	struct import_list l;
	char *err = NULL;
	uint64_t t0 = time_mono_us();
	if (!read_text(b.data, IMPORT_AUTO, &l, &err))
		fail_msg("read: %s", err);
	assert_true(import_check_duplicates(&l, "users.csv", &err));
	struct import_result res;
	if (import_commit(f->st, f->s, &l, "users.csv", false, &res, &err) != ST_OK)
		fail_msg("commit: %s", err);
	double secs = (double)(time_mono_us() - t0) / 1e6;
	print_message("[   INFO   ] 50000 accounts parsed, checked and committed in %.2f s\n", secs);
	assert_int_equal(res.accounts, 50000);
	assert_int_equal(n_accounts(f->st), 50000);
#ifdef __SANITIZE_ADDRESS__
	const double limit = 120.0; /* instrumented code runs several times slower */
#else
	const double limit = 30.0;
#endif
	if (secs >= limit)
		fail_msg("50000 accounts took %.2f s (limit %.0f s)", secs, limit);
	import_list_free(&l);
	buf_free(&b);
}

int main(void)
{
	log_set_level(LOG_LVL_WARN); /* the store's start-up notes are not test output */
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_line_table),
		cmocka_unit_test(test_detect),
		cmocka_unit_test(test_read_csv_file),
		cmocka_unit_test(test_read_passwd_file),
		cmocka_unit_test(test_read_errors),
		cmocka_unit_test(test_duplicates),
		cmocka_unit_test(test_hash_passwords),
		cmocka_unit_test_setup_teardown(test_commit_ok, store_setup, store_teardown),
		cmocka_unit_test_setup_teardown(test_commit_all_or_nothing, store_setup, store_teardown),
		cmocka_unit_test_setup_teardown(test_commit_50000, store_setup, store_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
