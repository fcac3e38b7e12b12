/*
 * store_test.c - unit tests of the mailbox store (src/store).
 *
 * Each test gets a fresh temporary state directory (mkdtemp under /tmp,
 * removed afterwards), settings loaded from an empty config file in it
 * (never /etc/strata/strata.conf), and a store opened with create.  A
 * second, plain SQLite connection ("raw") reads the index to check what the
 * API does not expose (refcounts, subscribed flags) and to plant states the
 * API refuses to create (an alias loop).
 *
 * Cases are tables with labels; a failing case prints its label and both
 * values.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "core.h"
#include "metrics.h"
#include "store.h"
#include "store_internal.h" /* the test reaches st->db to inject index faults */
#include "store_fixture.h"

/* ---- helpers ---------------------------------------------------------------- */

static int setup(void **state)
{
	*state = fixture_new("store-test", true, NULL, NULL, NULL);
	return 0;
}

static int teardown(void **state)
{
	fixture_free(*state);
	return 0;
}

static void must(enum status got, const char *what, char *err)
{
	if (got != ST_OK)
		fail_msg("%s: %s (%s)", what, status_info(got)->name, err ? err : "");
	free(err);
}

static void add_domain(struct fixture *f, const char *d)
{
	char *err = NULL;
	must(store_domain_add(f->st, d, &err), d, err);
}

static int64_t add_user(struct fixture *f, const char *addr, uint64_t qb, uint64_t qm)
{
	char *err = NULL;
	must(store_user_add(f->st, addr, "{ARGON2ID}$argon2id$x", qb, qm, &err), addr, err);
	struct account a;
	CHECK_ST(addr, store_user_get(f->st, addr, &a), ST_OK);
	return a.id;
}

static void add_alias(struct fixture *f, const char *src, const char *targets)
{
	char *err = NULL;
	must(store_alias_add(f->st, src, targets, &err), src, err);
}

struct delivery_buf {
	struct store_delivery d;
	int64_t ids[8];
	uint32_t uids[8];
};

static void make_delivery(struct delivery_buf *b, const int64_t *ids, size_t n, uint64_t size)
{
	memset(b, 0, sizeof(*b));
	msgid_new(&b->d.id);
	b->d.received = (int64_t)time(NULL);
	b->d.size = size;
	b->d.n_accounts = n;
	memcpy(b->ids, ids, n * sizeof(*ids));
	b->d.account_ids = b->ids;
	b->d.uids = b->uids;
	b->d.status = ST_TEMPFAIL;
}

static enum status commit(struct fixture *f, struct delivery_buf *bufs, size_t n)
{
	struct store_delivery **dp = xcalloc(n, sizeof(*dp));
	for (size_t i = 0; i < n; i++)
		dp[i] = &bufs[i].d;
	enum status s = store_commit_deliveries(f->st, dp, n);
	free(dp);
	return s;
}

static void hash_hex(const void *data, size_t len, char out[65])
{
	unsigned char h[32];
	crypto_generichash(h, sizeof(h), data, len, NULL, 0);
	sodium_bin2hex(out, 65, h, sizeof(h));
}

/* Builds body + trailer bytes for a blob. */
static void blob_bytes(const struct msgid *id, const char *body, const char *const *rcpts, size_t nr,
		       struct buf *out)
{
	struct blob_meta m;
	memset(&m, 0, sizeof(m));
	m.id = *id;
	m.received = 1764367424;
	m.size = strlen(body);
	hash_hex(body, m.size, m.hash_hex);
	m.n_rcpts = nr;
	m.rcpt_addresses = xcalloc(nr ? nr : 1, sizeof(*m.rcpt_addresses));
	for (size_t i = 0; i < nr; i++)
		snprintf(m.rcpt_addresses[i], sizeof(m.rcpt_addresses[i]), "%s", rcpts[i]);
	buf_append(out, body, m.size);
	store_blob_trailer(&m, out);
	free(m.rcpt_addresses);
}

/* Writes a blob at its final path the way the queue does. */
static void write_blob(struct fixture *f, const struct msgid *id, const char *body,
		       const char *const *rcpts, size_t nr, char *path, size_t pathlen)
{
	struct buf b = BUF_INIT;
	blob_bytes(id, body, rcpts, nr, &b);
	char dir[PATH_MAX];
	store_blob_dir_of(f->s->store_blob_dir, id, dir, sizeof(dir));
	if (!fs_mkdir_p(dir, 0750))
		fail_msg("mkdir %s: %s", dir, strerror(errno));
	store_blob_path(f->s->store_blob_dir, id, path, pathlen);
	if (!fs_write_file_durable(path, b.data, b.len, 0640))
		fail_msg("writing %s: %s", path, strerror(errno));
	buf_free(&b);
}

static bool file_exists(const char *path)
{
	struct stat sb;
	return stat(path, &sb) == 0;
}

static void write_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_true(fs_write_all(fd, data, len));
	close(fd);
}

/* ---- domains ------------------------------------------------------------------ */

static void collect_name(void *ctx, const char *name)
{
	struct buf *b = ctx;
	buf_printf(b, "%s;", name);
}

static void test_domain_syntax(void **state)
{
	struct fixture *f = *state;
	char long_label[80], long_name[300];
	memset(long_label, 'a', 64);
	strcpy(long_label + 64, ".org");
	/* 4 labels of 63 + ".x" = 255 bytes */
	snprintf(long_name, sizeof(long_name), "%.63s.%.63s.%.63s.%.63s.x", long_label, long_label,
		 long_label, long_label);
	static const char *const blank = "";
	const struct {
		const char *label, *domain;
		enum status want;
	} cases[] = {
		{ "plain", "example.org", ST_OK },
		{ "upper case is lowered", "EXAMPLE.NET", ST_OK },
		{ "single label", "localhost", ST_OK },
		{ "digits and hyphen", "mx-1.e2e.test", ST_OK },
		{ "punycode", "xn--bcher-kva.example", ST_OK },
		{ "duplicate", "example.org", ST_EXISTS },
		{ "duplicate in other case", "Example.Org", ST_EXISTS },
		{ "empty", blank, ST_INVALID },
		{ "trailing dot", "example.com.", ST_INVALID },
		{ "leading dot", ".example.com", ST_INVALID },
		{ "double dot", "a..b", ST_INVALID },
		{ "underscore", "a_b.com", ST_INVALID },
		{ "leading hyphen", "-a.com", ST_INVALID },
		{ "trailing hyphen", "a-.com", ST_INVALID },
		{ "space", "a b.com", ST_INVALID },
		{ "at sign", "a@b.com", ST_INVALID },
		{ "non-ascii", "b\xc3\xbc" "cher.de", ST_INVALID },
		{ "label of 64", long_label, ST_INVALID },
		{ "name of 255", long_name, ST_INVALID },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		char *err = NULL;
		enum status got = store_domain_add(f->st, cases[i].domain, &err);
		CHECK_ST(cases[i].label, got, cases[i].want);
		if (got != ST_OK && err == NULL)
			fail_msg("%s: no error string", cases[i].label);
		free(err);
	}
	struct buf b = BUF_INIT;
	CHECK_ST("list", store_domain_list(f->st, collect_name, &b), ST_OK);
	assert_string_equal(b.data, "example.net;example.org;localhost;mx-1.e2e.test;xn--bcher-kva.example;");
	buf_free(&b);
}

static void test_domain_del(void **state)
{
	struct fixture *f = *state;
	add_domain(f, "a.org");
	add_domain(f, "b.org");
	add_domain(f, "c.org");
	add_user(f, "u@a.org", 0, 0);
	add_alias(f, "list@b.org", "u@a.org");
	const struct {
		const char *label, *domain;
		enum status want;
	} cases[] = {
		{ "unknown domain", "nope.org", ST_NOT_FOUND },
		{ "bad syntax", "no_pe.org", ST_INVALID },
		{ "has an account", "a.org", ST_INVALID },
		{ "has an alias", "b.org", ST_INVALID },
		{ "unused", "C.ORG", ST_OK },
		{ "already gone", "c.org", ST_NOT_FOUND },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		char *err = NULL;
		CHECK_ST(cases[i].label, store_domain_del(f->st, cases[i].domain, &err), cases[i].want);
		free(err);
	}
	/* Emptied domains can go. */
	must(store_alias_del(f->st, "list@b.org", NULL), "alias del", NULL);
	must(store_domain_del(f->st, "b.org", NULL), "domain del b", NULL);
	must(store_user_del(f->st, "u@a.org", NULL), "user del", NULL);
	must(store_domain_del(f->st, "a.org", NULL), "domain del a", NULL);
	/* A catch-all also holds its domain. */
	add_domain(f, "d.org");
	add_user(f, "x@d.org", 0, 0);
	add_alias(f, "@d.org", "x@d.org");
	must(store_user_del(f->st, "x@d.org", NULL), "user del x", NULL);
	CHECK_ST("catch-all holds domain", store_domain_del(f->st, "d.org", NULL), ST_INVALID);
	struct buf b = BUF_INIT;
	store_domain_list(f->st, collect_name, &b);
	assert_string_equal(b.data, "d.org;");
	buf_free(&b);
}

/* ---- accounts ------------------------------------------------------------------ */

struct mbox_seen {
	char names[8][32];
	char special[8][32];
	uint32_t uidvalidity[8], uidnext[8];
	uint64_t messages[8];
	size_t n;
};

static void collect_mailbox(void *ctx, const char *name, const char *special_use, uint32_t uidvalidity,
			    uint32_t uidnext, uint64_t messages)
{
	struct mbox_seen *m = ctx;
	assert_true(m->n < 8);
	snprintf(m->names[m->n], sizeof(m->names[0]), "%s", name);
	snprintf(m->special[m->n], sizeof(m->special[0]), "%s", special_use ? special_use : "-");
	m->uidvalidity[m->n] = uidvalidity;
	m->uidnext[m->n] = uidnext;
	m->messages[m->n] = messages;
	m->n++;
}

static void test_user_add(void **state)
{
	struct fixture *f = *state;
	add_domain(f, "example.org");
	time_t before = time(NULL);
	char *err = NULL;
	must(store_user_add(f->st, "Alice.Smith@Example.ORG", "{ARGON2ID}$argon2id$v=19$abc", 1000, 10, &err),
	     "add", err);
	struct account a;
	CHECK_ST("get lower-cased", store_user_get(f->st, "alice.smith@example.org", &a), ST_OK);
	assert_string_equal(a.address, "alice.smith@example.org");
	assert_string_equal(a.pwhash, "{ARGON2ID}$argon2id$v=19$abc");
	assert_int_equal(a.quota_bytes, 1000);
	assert_int_equal(a.quota_messages, 10);
	assert_int_equal(a.used_bytes, 0);
	assert_int_equal(a.last_login, 0);
	assert_true(a.created >= before && a.created <= time(NULL));
	CHECK_ST("get any case", store_user_get(f->st, "ALICE.SMITH@example.org", &a), ST_OK);

	struct mbox_seen m = { 0 };
	CHECK_ST("mailbox list", store_mailbox_list(f->st, "alice.smith@example.org", collect_mailbox, &m),
		 ST_OK);
	const char *want_names[] = { "INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive" };
	const char *want_special[] = { "-", "\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive" };
	assert_int_equal(m.n, 6);
	for (size_t i = 0; i < 6; i++) {
		assert_string_equal(m.names[i], want_names[i]);
		assert_string_equal(m.special[i], want_special[i]);
		assert_int_equal(m.uidnext[i], 1);
		assert_int_equal(m.messages[i], 0);
		for (size_t j = 0; j < i; j++)
			assert_int_not_equal(m.uidvalidity[i], m.uidvalidity[j]);
		assert_true(m.uidvalidity[i] > 0);
	}
	assert_int_equal(raw_int(f, "SELECT count(*) FROM mailboxes WHERE subscribed = 1"), 6);
	assert_int_equal(raw_int(f, "SELECT highestmodseq FROM mailboxes WHERE name = 'INBOX'"), 1);

	/* changes */
	must(store_user_set_password(f->st, "alice.smith@example.org", "{SHA512-CRYPT}$6$x$y", NULL),
	     "set pw", NULL);
	must(store_user_set_quota(f->st, "alice.smith@example.org", 5, 6, NULL), "set quota", NULL);
	store_user_get(f->st, "alice.smith@example.org", &a);
	assert_string_equal(a.pwhash, "{SHA512-CRYPT}$6$x$y");
	assert_int_equal(a.quota_bytes, 5);
	assert_int_equal(a.quota_messages, 6);
	CHECK_ST("set pw unknown", store_user_set_password(f->st, "bob@example.org", "x", NULL), ST_NOT_FOUND);
	CHECK_ST("set quota unknown", store_user_set_quota(f->st, "bob@example.org", 1, 1, NULL),
		 ST_NOT_FOUND);
	CHECK_ST("get unknown", store_user_get(f->st, "bob@example.org", &a), ST_NOT_FOUND);
	CHECK_ST("mailboxes of unknown", store_mailbox_list(f->st, "bob@example.org", collect_mailbox, &m),
		 ST_NOT_FOUND);
}

static void test_user_add_errors(void **state)
{
	struct fixture *f = *state;
	add_domain(f, "example.org");
	add_user(f, "taken@example.org", 0, 0);
	add_alias(f, "alias@example.org", "taken@example.org");
	char long_local[80], long_hash[300];
	memset(long_local, 'a', 65);
	strcpy(long_local + 65, "@example.org");
	memset(long_hash, 'h', 256);
	long_hash[256] = '\0';
	const struct {
		const char *label, *address, *pwhash;
		uint64_t qb;
		enum status want;
	} cases[] = {
		{ "ok", "ok@example.org", "x", 0, ST_OK },
		{ "all atext", "a!#$%&'*+-/=?^_`{|}~z@example.org", "x", 0, ST_OK },
		{ "dots", "first.middle.last@example.org", "x", 0, ST_OK },
		{ "no password", "nopw@example.org", NULL, 0, ST_OK },
		{ "duplicate", "taken@example.org", "x", 0, ST_EXISTS },
		{ "duplicate other case", "TAKEN@example.org", "x", 0, ST_EXISTS },
		{ "is an alias", "alias@example.org", "x", 0, ST_EXISTS },
		{ "missing domain", "u@missing.org", "x", 0, ST_NOT_FOUND },
		{ "no at", "user.example.org", "x", 0, ST_INVALID },
		{ "empty local", "@example.org", "x", 0, ST_INVALID },
		{ "empty domain", "u@", "x", 0, ST_INVALID },
		{ "leading dot", ".u@example.org", "x", 0, ST_INVALID },
		{ "trailing dot", "u.@example.org", "x", 0, ST_INVALID },
		{ "double dot", "a..b@example.org", "x", 0, ST_INVALID },
		{ "space", "a b@example.org", "x", 0, ST_INVALID },
		{ "quoted", "\"a\"@example.org", "x", 0, ST_INVALID },
		{ "two ats", "a@b@example.org", "x", 0, ST_INVALID },
		{ "comma", "a,b@example.org", "x", 0, ST_INVALID },
		{ "non-ascii", "j\xc3\xb6rg@example.org", "x", 0, ST_INVALID },
		{ "local of 65", long_local, "x", 0, ST_INVALID },
		{ "bad domain", "u@exa_mple.org", "x", 0, ST_INVALID },
		{ "hash too long", "h@example.org", long_hash, 0, ST_INVALID },
		{ "hash with newline", "h@example.org", "ab\ncd", 0, ST_INVALID },
		{ "quota too large", "q@example.org", "x", UINT64_MAX, ST_INVALID },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		char *err = NULL;
		enum status got = store_user_add(f->st, cases[i].address, cases[i].pwhash, cases[i].qb, 0, &err);
		CHECK_ST(cases[i].label, got, cases[i].want);
		if (got != ST_OK && err == NULL)
			fail_msg("%s: no error string", cases[i].label);
		free(err);
	}
	/* Failed adds left nothing behind: 5 accounts, 30 mailboxes. */
	struct store_stats ss;
	CHECK_ST("stats", store_stats(f->st, &ss), ST_OK);
	assert_int_equal(ss.accounts, 5);
	assert_int_equal(ss.mailboxes, 30);
	assert_int_equal(ss.aliases, 1);
	assert_int_equal(ss.domains, 1);
}

struct list_ctx {
	struct buf b;
	size_t n;
};

static void collect_account(void *ctx, const struct account *a)
{
	struct list_ctx *l = ctx;
	buf_printf(&l->b, "%s;", a->address);
	l->n++;
}

static void test_user_list_and_add_many(void **state)
{
	struct fixture *f = *state;
	add_domain(f, "one.org");
	add_domain(f, "two.org");
	enum { N = 2000 };
	struct user_spec *specs = xcalloc(N, sizeof(*specs));
	char (*addrs)[64] = xcalloc(N, sizeof(*addrs));
	for (size_t i = 0; i < N; i++) {
		snprintf(addrs[i], sizeof(addrs[i]), "user%04zu@%s", i, i % 2 ? "two.org" : "one.org");
		specs[i].address = addrs[i];
		specs[i].pwhash = "{ARGON2ID}$argon2id$v=19$m=65536,t=2,p=1$c2FsdA$aGFzaA";
		specs[i].quota_bytes = i;
	}
	/* A failure in the middle rolls everything back and names the entry. */
	snprintf(addrs[1500], sizeof(addrs[1500]), "user0006@one.org"); /* duplicate of entry 6 */
	size_t failed = 0;
	char *err = NULL;
	CHECK_ST("duplicate in batch", store_user_add_many(f->st, specs, N, &failed, &err), ST_EXISTS);
	assert_int_equal(failed, 1500);
	assert_non_null(err);
	free(err);
	struct store_stats ss;
	store_stats(f->st, &ss);
	assert_int_equal(ss.accounts, 0);
	assert_int_equal(ss.mailboxes, 0);

	snprintf(addrs[1500], sizeof(addrs[1500]), "user1500@one.org");
	uint64_t t0 = time_mono_us();
	err = NULL;
	must(store_user_add_many(f->st, specs, N, &failed, &err), "add_many", err);
	uint64_t t1 = time_mono_us();
	print_message("store_user_add_many: %d accounts in %.3f s\n", N, (double)(t1 - t0) / 1e6);
	store_stats(f->st, &ss);
	assert_int_equal(ss.accounts, N);
	assert_int_equal(ss.mailboxes, 6 * N);
	assert_int_equal(raw_int(f, "SELECT count(DISTINCT uidvalidity) FROM mailboxes"), 6 * N);
	struct account a;
	CHECK_ST("get 1999", store_user_get(f->st, "user1999@two.org", &a), ST_OK);
	assert_int_equal(a.quota_bytes, 1999);

	struct list_ctx l = { BUF_INIT, 0 };
	CHECK_ST("list all", store_user_list(f->st, NULL, collect_account, &l), ST_OK);
	assert_int_equal(l.n, N);
	assert_true(strncmp(l.b.data, "user0000@one.org;user0001@two.org;", 34) == 0);
	buf_free(&l.b);
	l.n = 0;
	CHECK_ST("list one.org", store_user_list(f->st, "ONE.org", collect_account, &l), ST_OK);
	assert_int_equal(l.n, N / 2);
	assert_true(strncmp(l.b.data, "user0000@one.org;user0002@one.org;", 34) == 0);
	buf_free(&l.b);
	CHECK_ST("list unknown domain", store_user_list(f->st, "three.org", collect_account, &l),
		 ST_NOT_FOUND);
	buf_free(&l.b);
	free(specs);
	free(addrs);
}

static void test_uidvalidity_unique(void **state)
{
	struct fixture *f = *state;
	add_domain(f, "example.org");
	struct mbox_seen first = { 0 }, again = { 0 };
	add_user(f, "u@example.org", 0, 0);
	store_mailbox_list(f->st, "u@example.org", collect_mailbox, &first);
	must(store_user_del(f->st, "u@example.org", NULL), "del", NULL);
	add_user(f, "u@example.org", 0, 0);
	store_mailbox_list(f->st, "u@example.org", collect_mailbox, &again);
	assert_int_equal(first.n, 6);
	assert_int_equal(again.n, 6);
	for (size_t i = 0; i < 6; i++) {
		assert_string_equal(first.names[i], again.names[i]);
		for (size_t j = 0; j < 6; j++) {
			if (first.uidvalidity[i] == again.uidvalidity[j])
				fail_msg("%s re-created with UIDVALIDITY %u of old %s", again.names[j],
					 again.uidvalidity[j], first.names[i]);
		}
		assert_true(again.uidvalidity[i] > first.uidvalidity[i]);
	}
	/* The counter started at the creation time of the index. */
	assert_true(first.uidvalidity[0] >= (uint32_t)(time(NULL) - 3600));
}

/* ---- aliases and resolution ---------------------------------------------------- */

struct rcpt_case {
	const char *label, *address;
	enum status want;
	const char *accounts; /* expected addresses, sorted, ";"-joined */
};

static int cmp_str_ptr(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void names_of(struct fixture *f, const struct rcpt_resolution *res, struct buf *out)
{
	/* Map ids back to addresses through the raw connection, sorted. */
	struct buf ids = BUF_INIT;
	for (size_t i = 0; i < res->n; i++)
		buf_printf(&ids, "%s%lld", i ? "," : "", (long long)res->account_ids[i]);
	char *sql = xasprintf("SELECT address FROM accounts WHERE id IN (%s) ORDER BY address",
			      ids.len ? ids.data : "-1");
	sqlite3_stmt *q = NULL;
	assert_int_equal(sqlite3_prepare_v2(f->raw, sql, -1, &q, NULL), SQLITE_OK);
	size_t rows = 0;
	while (sqlite3_step(q) == SQLITE_ROW) {
		buf_printf(out, "%s;", sqlite3_column_text(q, 0));
		rows++;
	}
	sqlite3_finalize(q);
	free(sql);
	buf_free(&ids);
	if (rows != res->n)
		fail_msg("resolution has %zu ids for %zu accounts (duplicates?)", res->n, rows);
	/* The resolution also names each account by its own address (for the
	 * blob trailer): the same set, whatever alias reached it. */
	const char *sorted[STORE_MAX_EXPANSION];
	for (size_t i = 0; i < res->n; i++)
		sorted[i] = res->addresses[i];
	qsort(sorted, res->n, sizeof(sorted[0]), cmp_str_ptr);
	struct buf own = BUF_INIT;
	for (size_t i = 0; i < res->n; i++)
		buf_printf(&own, "%s;", sorted[i]);
	if (strcmp(own.len ? own.data : "", out->len ? out->data : "") != 0)
		fail_msg("resolution addresses [%s] differ from its accounts [%s]",
			 own.len ? own.data : "", out->len ? out->data : "");
	buf_free(&own);
}

static void run_rcpt_cases(struct fixture *f, struct store_reader *r, const struct rcpt_case *cases,
			   size_t n)
{
	for (size_t i = 0; i < n; i++) {
		struct rcpt_resolution res;
		enum status got = store_resolve_rcpt(r, cases[i].address, 0, &res);
		CHECK_ST(cases[i].label, got, cases[i].want);
		struct buf b = BUF_INIT;
		names_of(f, &res, &b);
		const char *want = cases[i].accounts ? cases[i].accounts : "";
		if (strcmp(b.len ? b.data : "", want) != 0)
			fail_msg("%s: got accounts [%s], want [%s]", cases[i].label, b.len ? b.data : "",
				 want);
		buf_free(&b);
	}
}

static void test_aliases(void **state)
{
	struct fixture *f = *state;
	add_domain(f, "ex.org");
	add_domain(f, "other.org");
	add_user(f, "a@ex.org", 0, 0);
	add_user(f, "b@ex.org", 0, 0);
	add_user(f, "c@ex.org", 0, 0);
	add_user(f, "d@other.org", 0, 0);
	add_alias(f, "team@ex.org", "a@ex.org, B@EX.ORG,a@ex.org");
	add_alias(f, "all@ex.org", "team@ex.org,c@ex.org,a@ex.org");
	add_alias(f, "ext@ex.org", "d@other.org");
	add_alias(f, "owner@ex.org", "ext@ex.org, team@ex.org");
	add_alias(f, "@other.org", "c@ex.org");
	/* a chain of 8 aliases is allowed, a 9th level is not */
	add_alias(f, "l1@ex.org", "a@ex.org");
	for (int i = 2; i <= 8; i++) {
		char src[32], dst[32];
		snprintf(src, sizeof(src), "l%d@ex.org", i);
		snprintf(dst, sizeof(dst), "l%d@ex.org", i - 1);
		add_alias(f, src, dst);
	}
	const struct {
		const char *label, *source, *targets;
		enum status want;
	} add_cases[] = {
		{ "too deep", "l9@ex.org", "l8@ex.org", ST_INVALID },
		{ "target unknown", "x@ex.org", "nobody@ex.org", ST_NOT_FOUND },
		{ "target in unknown domain", "x@ex.org", "a@nowhere.org", ST_NOT_FOUND },
		{ "source domain not local", "x@nowhere.org", "a@ex.org", ST_NOT_FOUND },
		{ "source is an account", "a@ex.org", "b@ex.org", ST_EXISTS },
		{ "source exists", "team@ex.org", "c@ex.org", ST_EXISTS },
		{ "targets itself", "self@ex.org", "a@ex.org,self@ex.org", ST_INVALID },
		{ "no targets", "x@ex.org", " , ,", ST_INVALID },
		{ "bad target", "x@ex.org", "a b@ex.org", ST_INVALID },
		{ "catch-all target", "x@ex.org", "@ex.org", ST_INVALID },
		{ "bad source", "x y@ex.org", "a@ex.org", ST_INVALID },
		{ "catch-all of unknown domain", "@nowhere.org", "a@ex.org", ST_NOT_FOUND },
	};
	for (size_t i = 0; i < ARRAY_LEN(add_cases); i++) {
		char *err = NULL;
		enum status got = store_alias_add(f->st, add_cases[i].source, add_cases[i].targets, &err);
		CHECK_ST(add_cases[i].label, got, add_cases[i].want);
		if (err == NULL)
			fail_msg("%s: no error string", add_cases[i].label);
		free(err);
	}
	/* A loop can only be made through a dangling target: it is refused. */
	add_alias(f, "p@ex.org", "a@ex.org");
	add_alias(f, "q@ex.org", "p@ex.org");
	must(store_alias_del(f->st, "p@ex.org", NULL), "del p", NULL);
	char *err = NULL;
	CHECK_ST("loop through dangling target", store_alias_add(f->st, "p@ex.org", "q@ex.org", &err),
		 ST_INVALID);
	assert_non_null(strstr(err, "loop"));
	free(err);
	/* Re-adding the dangling target deeper than allowed for its referrers. */
	must(store_alias_del(f->st, "l1@ex.org", NULL), "del l1", NULL);
	add_alias(f, "m1@ex.org", "a@ex.org");
	CHECK_ST("referrer would nest too deep", store_alias_add(f->st, "l1@ex.org", "m1@ex.org", NULL),
		 ST_INVALID);
	add_alias(f, "l1@ex.org", "a@ex.org");
	CHECK_ST("del unknown", store_alias_del(f->st, "nope@ex.org", NULL), ST_NOT_FOUND);

	/* more than 64 accounts */
	struct buf many = BUF_INIT;
	for (int i = 0; i < 65; i++) {
		char addr[32];
		snprintf(addr, sizeof(addr), "m%02d@ex.org", i);
		add_user(f, addr, 0, 0);
		buf_printf(&many, "%s%s", i ? "," : "", addr);
	}
	CHECK_ST("65 targets", store_alias_add(f->st, "big@ex.org", many.data, NULL), ST_INVALID);
	char *cut = strrchr(many.data, ',');
	*cut = '\0';
	add_alias(f, "big@ex.org", many.data); /* 64 */
	CHECK_ST("expands to 65", store_alias_add(f->st, "bigger@ex.org", "big@ex.org,a@ex.org", NULL),
		 ST_INVALID);
	buf_free(&many);
}

static void collect_alias(void *ctx, const char *source, const char *targets)
{
	struct buf *b = ctx;
	buf_printf(b, "%s=%s;", source, targets);
}

static void test_resolve(void **state)
{
	struct fixture *f = *state;
	add_domain(f, "ex.org");
	add_domain(f, "other.org");
	add_user(f, "a@ex.org", 0, 0);
	add_user(f, "b@ex.org", 0, 0);
	add_user(f, "c@ex.org", 0, 0);
	add_user(f, "d@other.org", 0, 0);
	add_user(f, "e+x@ex.org", 0, 0);
	add_alias(f, "team@ex.org", "a@ex.org, B@EX.ORG,a@ex.org");
	add_alias(f, "all@ex.org", "team@ex.org,c@ex.org,a@ex.org");
	add_alias(f, "diamond@ex.org", "team@ex.org,all@ex.org");
	add_alias(f, "cross@ex.org", "d@other.org");
	add_alias(f, "@other.org", "c@ex.org");
	add_alias(f, "gone@ex.org", "b@ex.org");
	add_alias(f, "half@ex.org", "gone@ex.org,d@other.org");
	must(store_alias_del(f->st, "gone@ex.org", NULL), "del gone", NULL);

	struct buf b = BUF_INIT;
	CHECK_ST("alias list", store_alias_list(f->st, collect_alias, &b), ST_OK);
	assert_string_equal(b.data, "@other.org=c@ex.org;all@ex.org=team@ex.org,c@ex.org,a@ex.org;"
				    "cross@ex.org=d@other.org;diamond@ex.org=team@ex.org,all@ex.org;"
				    "half@ex.org=gone@ex.org,d@other.org;team@ex.org=a@ex.org,b@ex.org;");
	buf_free(&b);

	char *err = NULL;
	struct store_reader *r = store_reader_open(f->s, &err);
	if (r == NULL)
		fail_msg("reader: %s", err);
	const struct rcpt_case cases[] = {
		{ "account", "a@ex.org", ST_OK, "a@ex.org;" },
		{ "account upper case", "A@Ex.Org", ST_OK, "a@ex.org;" },
		{ "alias deduplicated", "team@ex.org", ST_OK, "a@ex.org;b@ex.org;" },
		{ "nested alias", "all@ex.org", ST_OK, "a@ex.org;b@ex.org;c@ex.org;" },
		{ "diamond", "diamond@ex.org", ST_OK, "a@ex.org;b@ex.org;c@ex.org;" },
		{ "cross-domain target", "cross@ex.org", ST_OK, "d@other.org;" },
		{ "dangling target skipped", "half@ex.org", ST_OK, "d@other.org;" },
		{ "deleted alias", "gone@ex.org", ST_NOT_FOUND, NULL },
		{ "delimiter on account", "a+news@ex.org", ST_OK, "a@ex.org;" },
		{ "delimiter on alias", "team+x@ex.org", ST_OK, "a@ex.org;b@ex.org;" },
		{ "account with + wins", "e+x@ex.org", ST_OK, "e+x@ex.org;" },
		{ "delimiter then account", "e+y@ex.org", ST_NOT_FOUND, NULL },
		{ "leading delimiter", "+a@ex.org", ST_NOT_FOUND, NULL },
		{ "unknown local", "zz@ex.org", ST_NOT_FOUND, NULL },
		{ "empty local", "@ex.org", ST_NOT_FOUND, NULL },
		{ "catch-all", "anything@other.org", ST_OK, "c@ex.org;" },
		{ "catch-all with tag", "x+y@other.org", ST_OK, "c@ex.org;" },
		{ "account before catch-all", "d@other.org", ST_OK, "d@other.org;" },
		{ "non-local domain", "a@nowhere.org", ST_INVALID, NULL },
		{ "subdomain is not local", "a@sub.ex.org", ST_INVALID, NULL },
		{ "no at", "postmaster", ST_INVALID, NULL },
		{ "empty", "", ST_INVALID, NULL },
		{ "quoted local", "\"a b\"@ex.org", ST_NOT_FOUND, NULL },
		{ "overlong local", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@ex.org",
		  ST_NOT_FOUND, NULL },
	};
	run_rcpt_cases(f, r, cases, ARRAY_LEN(cases));
	assert_true(store_domain_is_local(r, "EX.org"));
	assert_false(store_domain_is_local(r, "nowhere.org"));
	assert_false(store_domain_is_local(r, ""));

	/* A loop planted behind the API's back is caught at resolution. */
	raw_exec(f, "INSERT INTO aliases VALUES('loop1@ex.org', 'loop2@ex.org'),"
		    " ('loop2@ex.org', 'a@ex.org,loop1@ex.org')");
	const struct rcpt_case loop_cases[] = {
		{ "planted loop", "loop1@ex.org", ST_TEMPFAIL, NULL },
		{ "others unaffected", "team@ex.org", ST_OK, "a@ex.org;b@ex.org;" },
	};
	run_rcpt_cases(f, r, loop_cases, ARRAY_LEN(loop_cases));
	store_reader_close(&r);
	assert_null(r);

	/* Several delimiter characters; and none. */
	struct settings *s2 = fixture_settings(f->dir, "recipient_delimiter=-+", NULL, NULL);
	r = store_reader_open(s2, &err);
	assert_non_null(r);
	const struct rcpt_case multi[] = {
		{ "minus", "a-list@ex.org", ST_OK, "a@ex.org;" },
		{ "plus", "b+list@ex.org", ST_OK, "b@ex.org;" },
		{ "first delimiter cuts", "b+x-y@ex.org", ST_OK, "b@ex.org;" },
	};
	run_rcpt_cases(f, r, multi, ARRAY_LEN(multi));
	store_reader_close(&r);
	config_free(&s2);
	s2 = fixture_settings(f->dir, "recipient_delimiter=", NULL, NULL);
	r = store_reader_open(s2, &err);
	assert_non_null(r);
	const struct rcpt_case none[] = {
		{ "delimiter off", "a+news@ex.org", ST_NOT_FOUND, NULL },
		{ "delimiter off, catch-all", "x+y@other.org", ST_OK, "c@ex.org;" },
	};
	run_rcpt_cases(f, r, none, ARRAY_LEN(none));
	store_reader_close(&r);
	config_free(&s2);
}

/* ---- quota and delivery --------------------------------------------------------- */

static void test_quota(void **state)
{
	struct fixture *f = *state;
	add_domain(f, "ex.org");
	int64_t q = add_user(f, "q@ex.org", 1000, 0);
	int64_t m = add_user(f, "m@ex.org", 0, 2);
	int64_t o = add_user(f, "o@ex.org", 0, 0);
	add_alias(f, "both@ex.org", "o@ex.org,q@ex.org");

	char *err = NULL;
	struct store_reader *r = store_reader_open(f->s, &err);
	assert_non_null(r);
	const struct {
		const char *label, *address;
		uint64_t size;
		bool over;
	} rq[] = {
		{ "fits", "q@ex.org", 1000, false },
		{ "one byte over", "q@ex.org", 1001, true },
		{ "unknown size", "q@ex.org", 0, false },
		{ "unlimited", "o@ex.org", UINT64_MAX, false },
		{ "alias with a full member", "both@ex.org", 5000, true },
		{ "message quota not reached", "m@ex.org", 99999, false },
	};
	for (size_t i = 0; i < ARRAY_LEN(rq); i++) {
		struct rcpt_resolution res;
		CHECK_ST(rq[i].label, store_resolve_rcpt(r, rq[i].address, rq[i].size, &res), ST_OK);
		if (res.over_quota != rq[i].over)
			fail_msg("%s: over_quota %d, want %d", rq[i].label, res.over_quota, rq[i].over);
	}

	/* In one batch: later deliveries see the usage of earlier ones. */
	struct delivery_buf d[7];
	int64_t both[2] = { o, q };
	make_delivery(&d[0], &q, 1, 600);
	make_delivery(&d[1], &o, 1, 10);
	make_delivery(&d[2], &q, 1, 600);   /* 1200 > 1000 */
	make_delivery(&d[3], both, 2, 500); /* q would reach 1100: the whole delivery is refused */
	make_delivery(&d[4], &q, 1, 400);   /* exactly 1000 */
	make_delivery(&d[5], &m, 1, 1);
	make_delivery(&d[6], &m, 1, 1);
	CHECK_ST("batch 1", commit(f, d, 7), ST_OK);
	const enum status want[7] = { ST_OK, ST_OK, ST_OVER_QUOTA_TEMP, ST_OVER_QUOTA_TEMP, ST_OK, ST_OK, ST_OK };
	for (size_t i = 0; i < 7; i++) {
		char label[32];
		snprintf(label, sizeof(label), "delivery %zu", i);
		CHECK_ST(label, d[i].d.status, want[i]);
	}
	assert_int_equal(d[3].uids[0], 0);
	assert_int_equal(d[3].uids[1], 0);
	assert_int_equal(d[4].uids[0], 2);
	struct account a;
	store_user_get(f->st, "q@ex.org", &a);
	assert_int_equal(a.used_bytes, 1000);
	assert_int_equal(a.used_messages, 2);
	store_user_get(f->st, "o@ex.org", &a);
	assert_int_equal(a.used_bytes, 10);
	assert_int_equal(a.used_messages, 1);
	/* The refused delivery left no blob row. */
	assert_int_equal(raw_int(f, "SELECT count(*) FROM blobs"), 5);

	struct rcpt_resolution res;
	CHECK_ST("full now", store_resolve_rcpt(r, "q@ex.org", 1, &res), ST_OK);
	assert_true(res.over_quota);
	/* used + size > quota: exactly full with an unknown size is not over */
	CHECK_ST("full, size unknown", store_resolve_rcpt(r, "q@ex.org", 0, &res), ST_OK);
	assert_false(res.over_quota);
	CHECK_ST("message quota reached", store_resolve_rcpt(r, "m@ex.org", 0, &res), ST_OK);
	assert_true(res.over_quota);
	store_reader_close(&r);

	/* quota.over_quota_reply = permanent, through a second writer. */
	struct settings *s2 = fixture_settings(f->dir, "quota.over_quota_reply=permanent", NULL, NULL);
	struct store *st2 = store_open(s2, false, &err);
	if (st2 == NULL)
		fail_msg("second writer: %s", err);
	struct delivery_buf p;
	make_delivery(&p, &m, 1, 1);
	struct store_delivery *pp = &p.d;
	CHECK_ST("commit permanent", store_commit_deliveries(st2, &pp, 1), ST_OK);
	CHECK_ST("permanent reply", p.d.status, ST_OVER_QUOTA_PERM);
	store_close(&st2);
	config_free(&s2);
}

struct msg_list {
	struct message_row rows[64];
	size_t n;
};

static void collect_message(void *ctx, const struct message_row *m)
{
	struct msg_list *l = ctx;
	assert_true(l->n < 64);
	l->rows[l->n++] = *m;
}

static void test_commit_batch(void **state)
{
	struct fixture *f = *state;
	add_domain(f, "ex.org");
	int64_t ids[3] = { add_user(f, "a@ex.org", 0, 0), add_user(f, "b@ex.org", 0, 0),
			   add_user(f, "c@ex.org", 0, 0) };
	uint64_t commits = metric_get(M_STORE_COMMITS);
	uint64_t delivered = metric_get(M_STORE_COMMITTED_DELIVERIES);
	enum { N = 30 };
	struct delivery_buf d[N];
	uint64_t bytes[3] = { 0 };
	for (size_t i = 0; i < N; i++) {
		/* i%3==0: a only; 1: a and b; 2: all three */
		make_delivery(&d[i], ids, i % 3 + 1, 100 + i);
		for (size_t k = 0; k <= i % 3; k++)
			bytes[k] += 100 + i;
	}
	CHECK_ST("commit", commit(f, d, N), ST_OK);
	uint32_t next[3] = { 1, 1, 1 };
	for (size_t i = 0; i < N; i++) {
		CHECK_ST("delivery", d[i].d.status, ST_OK);
		for (size_t k = 0; k <= i % 3; k++) {
			if (d[i].uids[k] != next[k])
				fail_msg("delivery %zu account %zu: uid %u, want %u", i, k, d[i].uids[k],
					 next[k]);
			next[k]++;
		}
	}
	assert_int_equal(metric_get(M_STORE_COMMITS), commits + 1);
	assert_int_equal(metric_get(M_STORE_COMMITTED_DELIVERIES), delivered + N);
	const char *names[3] = { "a@ex.org", "b@ex.org", "c@ex.org" };
	for (size_t k = 0; k < 3; k++) {
		struct account a;
		store_user_get(f->st, names[k], &a);
		assert_int_equal(a.used_bytes, bytes[k]);
		assert_int_equal(a.used_messages, next[k] - 1);
		struct mbox_seen mb = { 0 };
		store_mailbox_list(f->st, names[k], collect_mailbox, &mb);
		assert_int_equal(mb.uidnext[0], next[k]);
		assert_int_equal(mb.messages[0], next[k] - 1);
	}
	/* refcount = number of accounts; modseq = highestmodseq after the delivery */
	assert_int_equal(raw_int(f, "SELECT count(*) FROM blobs"), N);
	assert_int_equal(raw_int(f, "SELECT count(*) FROM blobs b WHERE refcount !="
				    " (SELECT count(*) FROM messages WHERE blob_id = b.id)"), 0);
	assert_int_equal(raw_int(f, "SELECT sum(refcount) FROM blobs"), N / 3 * 6);
	assert_int_equal(raw_int(f, "SELECT highestmodseq FROM mailboxes m JOIN accounts a ON"
				    " a.id = m.account_id WHERE a.address = 'a@ex.org' AND m.name = 'INBOX'"),
			 N + 1);

	struct msg_list l = { .n = 0 };
	CHECK_ST("messages of b", store_mailbox_list_messages(f->st, "b@ex.org", "inbox", collect_message, &l),
		 ST_OK);
	assert_int_equal(l.n, 2 * N / 3);
	size_t j = 0;
	for (size_t i = 0; i < N; i++) {
		if (i % 3 == 0)
			continue;
		assert_int_equal(l.rows[j].uid, j + 1);
		assert_memory_equal(l.rows[j].id.b, d[i].d.id.b, MSGID_BYTES);
		assert_int_equal(l.rows[j].size, 100 + i);
		assert_int_equal(l.rows[j].received, d[i].d.received);
		assert_int_equal(l.rows[j].flags, 0);
		assert_int_equal(l.rows[j].modseq, j + 2);
		j++;
	}
	char path[PATH_MAX], want[PATH_MAX];
	uint64_t size = 0;
	CHECK_ST("message path", store_message_path(f->st, "c@ex.org", NULL, 3, path, sizeof(path), &size),
		 ST_OK);
	store_blob_path(f->s->store_blob_dir, &d[8].d.id, want, sizeof(want));
	assert_string_equal(path, want);
	assert_int_equal(size, 108);
	CHECK_ST("no such uid", store_message_path(f->st, "c@ex.org", "INBOX", 99, path, sizeof(path), NULL),
		 ST_NOT_FOUND);
	CHECK_ST("no such mailbox", store_mailbox_list_messages(f->st, "c@ex.org", "Nope", collect_message, &l),
		 ST_NOT_FOUND);
	CHECK_ST("mailbox names are case-sensitive",
		 store_mailbox_list_messages(f->st, "c@ex.org", "sent", collect_message, &l), ST_NOT_FOUND);

	/* Per-delivery failures inside a batch: a duplicate message id, an
	 * account deleted since RCPT, a delivery to nobody left. */
	int64_t e = add_user(f, "e@ex.org", 0, 0);
	int64_t mixed[2] = { ids[0], e };
	struct delivery_buf d2[4];
	make_delivery(&d2[0], &ids[1], 1, 5);
	d2[0].d.id = d[0].d.id; /* duplicate id */
	make_delivery(&d2[1], mixed, 2, 7);
	make_delivery(&d2[2], &e, 1, 9);
	make_delivery(&d2[3], &ids[2], 1, 11);
	must(store_user_del(f->st, "e@ex.org", NULL), "del e", NULL);
	CHECK_ST("commit 2", commit(f, d2, 4), ST_OK);
	CHECK_ST("duplicate id", d2[0].d.status, ST_TEMPFAIL);
	CHECK_ST("one account deleted", d2[1].d.status, ST_OK);
	assert_int_equal(d2[1].uids[0], next[0]);
	assert_int_equal(d2[1].uids[1], 0);
	CHECK_ST("all accounts deleted", d2[2].d.status, ST_NOT_FOUND);
	CHECK_ST("after failures", d2[3].d.status, ST_OK);
	assert_int_equal(d2[3].uids[0], next[2]);
	struct account b;
	store_user_get(f->st, "b@ex.org", &b);
	assert_int_equal(b.used_messages, next[1] - 1); /* the duplicate wrote nothing */
	assert_int_equal(raw_int(f, "SELECT refcount FROM blobs ORDER BY id DESC LIMIT 1 OFFSET 1"), 1);

	struct store_stats ss;
	store_stats(f->st, &ss);
	assert_int_equal(ss.blobs, N + 2);
	assert_int_equal(ss.messages, N / 3 * 6 + 2);
}

static void test_commit_failure(void **state)
{
	struct fixture *f = *state;
	add_domain(f, "ex.org");
	int64_t a = add_user(f, "a@ex.org", 0, 0);
	uint64_t failures = metric_get(M_STORE_COMMIT_FAILURES);

	/* Another process holds the write lock past busy_timeout (shortened
	 * here): every delivery gets ST_DB_BUSY and nothing is written. */
	sqlite3_busy_timeout(f->st->db, 200);
	raw_exec(f, "BEGIN IMMEDIATE");
	struct delivery_buf d[2];
	make_delivery(&d[0], &a, 1, 10);
	make_delivery(&d[1], &a, 1, 20);
	enum status s = commit(f, d, 2);
	raw_exec(f, "ROLLBACK");
	sqlite3_busy_timeout(f->st->db, 10000);
	CHECK_ST("busy", s, ST_DB_BUSY);
	CHECK_ST("busy delivery 0", d[0].d.status, ST_DB_BUSY);
	CHECK_ST("busy delivery 1", d[1].d.status, ST_DB_BUSY);
	assert_int_equal(metric_get(M_STORE_COMMIT_FAILURES), failures + 1);

	/* The index cannot grow (a full disk): ST_NO_SPACE for the whole
	 * batch, the deliveries that had fitted are rolled back too. */
	enum { N = 2000 };
	struct delivery_buf *big = xcalloc(N, sizeof(*big));
	for (size_t i = 0; i < N; i++)
		make_delivery(&big[i], &a, 1, 1000);
	char sql[80];
	snprintf(sql, sizeof(sql), "PRAGMA max_page_count = %lld",
		 (long long)raw_int(f, "PRAGMA page_count"));
	assert_int_equal(sqlite3_exec(f->st->db, sql, NULL, NULL, NULL), SQLITE_OK);
	s = commit(f, big, N);
	CHECK_ST("full", s, ST_NO_SPACE);
	for (size_t i = 0; i < N; i++) {
		if (big[i].d.status != ST_NO_SPACE || big[i].uids[0] != 0)
			fail_msg("delivery %zu: %s uid %u after a failed batch", i,
				 status_info(big[i].d.status)->name, big[i].uids[0]);
	}
	assert_int_equal(metric_get(M_STORE_COMMIT_FAILURES), failures + 2);
	assert_int_equal(raw_int(f, "SELECT count(*) FROM blobs"), 0);
	assert_int_equal(raw_int(f, "SELECT used_bytes FROM accounts"), 0);
	assert_int_equal(raw_int(f, "SELECT uidnext FROM mailboxes WHERE name = 'INBOX'"), 1);

	/* Space again: the same deliveries commit. */
	assert_int_equal(sqlite3_exec(f->st->db, "PRAGMA max_page_count = 1073741823", NULL, NULL, NULL),
			 SQLITE_OK);
	CHECK_ST("retry", commit(f, d, 2), ST_OK);
	CHECK_ST("retry 0", d[0].d.status, ST_OK);
	assert_int_equal(d[0].uids[0], 1);
	assert_int_equal(d[1].uids[0], 2);
	free(big);
}

/* ---- deleting accounts and their blobs ---------------------------------------- */

static void test_user_del_blobs(void **state)
{
	struct fixture *f = *state;
	add_domain(f, "ex.org");
	int64_t a = add_user(f, "a@ex.org", 0, 0);
	int64_t b = add_user(f, "b@ex.org", 0, 0);
	int64_t ab[2] = { a, b };
	struct delivery_buf d[3];
	make_delivery(&d[0], ab, 2, 0);
	make_delivery(&d[1], &a, 1, 0);
	make_delivery(&d[2], &b, 1, 0);
	char paths[3][PATH_MAX];
	const char *rc_ab[] = { "a@ex.org", "b@ex.org" };
	const char *bodies[3] = { "Subject: shared\r\n\r\nboth\r\n", "Subject: a\r\n\r\nonly a\r\n",
				  "Subject: b\r\n\r\nonly b\r\n" };
	write_blob(f, &d[0].d.id, bodies[0], rc_ab, 2, paths[0], sizeof(paths[0]));
	write_blob(f, &d[1].d.id, bodies[1], rc_ab, 1, paths[1], sizeof(paths[1]));
	write_blob(f, &d[2].d.id, bodies[2], rc_ab + 1, 1, paths[2], sizeof(paths[2]));
	for (size_t i = 0; i < 3; i++)
		d[i].d.size = strlen(bodies[i]);
	CHECK_ST("commit", commit(f, d, 3), ST_OK);
	for (size_t i = 0; i < 3; i++)
		assert_true(file_exists(paths[i]));

	must(store_user_del(f->st, "A@EX.ORG", NULL), "del a", NULL);
	assert_true(file_exists(paths[0]));  /* still b's */
	assert_false(file_exists(paths[1])); /* only a's */
	assert_true(file_exists(paths[2]));
	assert_int_equal(raw_int(f, "SELECT count(*) FROM blobs"), 2);
	assert_int_equal(raw_int(f, "SELECT refcount FROM blobs ORDER BY id LIMIT 1"), 1);
	assert_int_equal(raw_int(f, "SELECT count(*) FROM mailboxes"), 6);
	assert_int_equal(raw_int(f, "SELECT count(*) FROM messages"), 2);
	CHECK_ST("del again", store_user_del(f->st, "a@ex.org", NULL), ST_NOT_FOUND);
	CHECK_ST("del bad", store_user_del(f->st, "a b@ex.org", NULL), ST_INVALID);

	must(store_user_del(f->st, "b@ex.org", NULL), "del b", NULL);
	assert_false(file_exists(paths[0]));
	assert_false(file_exists(paths[2]));
	struct store_stats ss;
	store_stats(f->st, &ss);
	assert_int_equal(ss.accounts, 0);
	assert_int_equal(ss.mailboxes, 0);
	assert_int_equal(ss.messages, 0);
	assert_int_equal(ss.blobs, 0);
	assert_int_equal(ss.blob_bytes, 0);
}

/* ---- blob files ------------------------------------------------------------------ */

static void test_blob_roundtrip(void **state)
{
	struct fixture *f = *state;
	struct msgid id;
	msgid_new(&id);
	char text[MSGID_TEXT_LEN + 1];
	msgid_format(&id, text);
	char path[PATH_MAX], dir[PATH_MAX], want[PATH_MAX];
	store_blob_dir_of(f->s->store_blob_dir, &id, dir, sizeof(dir));
	snprintf(want, sizeof(want), "%s/%.5s/%.2s", f->s->store_blob_dir, text, text + 5);
	assert_string_equal(dir, want);
	const char *rcpts[] = { "a@ex.org", "b.c+d@example.net", "x@y" };
	const char *body = "From: x@y\r\nSubject: hi\r\n\r\nbody\r\n";
	write_blob(f, &id, body, rcpts, 3, path, sizeof(path));
	char *want_path = xasprintf("%s/%s", dir, text);
	assert_string_equal(path, want_path);
	free(want_path);

	struct blob_meta m;
	CHECK_ST("read", store_blob_read_meta(path, &m), ST_OK);
	assert_memory_equal(m.id.b, id.b, MSGID_BYTES);
	assert_int_equal(m.received, 1764367424);
	assert_int_equal(m.size, strlen(body));
	char h[65];
	hash_hex(body, strlen(body), h);
	assert_string_equal(m.hash_hex, h);
	assert_int_equal(m.n_rcpts, 3);
	for (size_t i = 0; i < 3; i++)
		assert_string_equal(m.rcpt_addresses[i], rcpts[i]);
	store_blob_meta_free(&m);
	assert_null(m.rcpt_addresses);

	/* The exact bytes of the trailer. */
	char *data = NULL;
	size_t len = 0;
	assert_true(fs_read_file(path, &data, &len));
	char *expect = xasprintf("\nSTRATA-META 1\nid: %s\nreceived: 1764367424\nsize: %zu\nhash: %s\n"
				 "rcpt: a@ex.org\nrcpt: b.c+d@example.net\nrcpt: x@y\n",
				 text, strlen(body), h);
	size_t tlen = strlen(expect) + STORE_TRAILER_TAIL;
	char tail[64];
	snprintf(tail, sizeof(tail), "STRATA-META-END %010zu\n", tlen);
	assert_int_equal(len, strlen(body) + tlen);
	assert_memory_equal(data, body, strlen(body));
	assert_memory_equal(data + strlen(body), expect, strlen(expect));
	assert_memory_equal(data + len - STORE_TRAILER_TAIL, tail, STORE_TRAILER_TAIL);

	/* Every truncation of the file is rejected. */
	char tpath[PATH_MAX];
	snprintf(tpath, sizeof(tpath), "%s/trunc", f->dir);
	for (size_t cut = 0; cut < len; cut++) {
		write_file(tpath, data, cut);
		enum status s = store_blob_read_meta(tpath, &m);
		if (s != ST_INVALID)
			fail_msg("truncated to %zu of %zu bytes: got %s", cut, len, status_info(s)->name);
	}
	/* Every single-byte corruption of the trailer is rejected or still
	 * parses consistently; none crashes (run under ASan). */
	for (size_t i = strlen(body); i < len; i++) {
		char saved = data[i];
		for (int v = 0; v < 256; v += 37) {
			data[i] = (char)v;
			write_file(tpath, data, len);
			enum status s = store_blob_read_meta(tpath, &m);
			if (s != ST_OK && s != ST_INVALID)
				fail_msg("corrupt byte %zu=%d: got %s", i, v, status_info(s)->name);
			if (s == ST_OK) {
				assert_int_equal(m.size, strlen(body));
				assert_true(m.n_rcpts >= 1 && m.n_rcpts <= 3);
			}
			store_blob_meta_free(&m);
		}
		data[i] = saved;
	}
	free(data);
	free(expect);
}

static void test_blob_garbage(void **state)
{
	struct fixture *f = *state;
	struct msgid id;
	msgid_new(&id);
	char idt[MSGID_TEXT_LEN + 1];
	msgid_format(&id, idt);
	char h[65];
	hash_hex("x", 1, h);
	/* Trailers made by hand; the tail length is computed unless given. */
	const struct {
		const char *label, *body, *trailer; /* trailer without the tail */
		long tail_len;                       /* -1: correct */
	} cases[] = {
		{ "valid control case", "x", "\nSTRATA-META 1\nid: %1$s\nreceived: 5\nsize: 1\nhash: %2$s\nrcpt: a@b\n", -1 },
		{ "missing hash", "x", "\nSTRATA-META 1\nid: %1$s\nreceived: 5\nsize: 1\nrcpt: a@b\n", -1 },
		{ "missing rcpt", "x", "\nSTRATA-META 1\nid: %1$s\nreceived: 5\nsize: 1\nhash: %2$s\n", -1 },
		{ "duplicate id", "x", "\nSTRATA-META 1\nid: %1$s\nid: %1$s\nreceived: 5\nsize: 1\nhash: %2$s\nrcpt: a@b\n", -1 },
		{ "size larger than body", "x", "\nSTRATA-META 1\nid: %1$s\nreceived: 5\nsize: 2\nhash: %2$s\nrcpt: a@b\n", -1 },
		{ "size mismatch", "xx", "\nSTRATA-META 1\nid: %1$s\nreceived: 5\nsize: 1\nhash: %2$s\nrcpt: a@b\n", -1 },
		{ "upper-case hash", "x", "\nSTRATA-META 1\nid: %1$s\nreceived: 5\nsize: 1\nhash: %2$.60sABCD\nrcpt: a@b\n", -1 },
		{ "short hash", "x", "\nSTRATA-META 1\nid: %1$s\nreceived: 5\nsize: 1\nhash: %2$.63s\nrcpt: a@b\n", -1 },
		{ "bad id", "x", "\nSTRATA-META 1\nid: %1$.25sU\nreceived: 5\nsize: 1\nhash: %2$s\nrcpt: a@b\n", -1 },
		{ "negative received", "x", "\nSTRATA-META 1\nid: %1$s\nreceived: -5\nsize: 1\nhash: %2$s\nrcpt: a@b\n", -1 },
		{ "leading zero", "x", "\nSTRATA-META 1\nid: %1$s\nreceived: 05\nsize: 1\nhash: %2$s\nrcpt: a@b\n", -1 },
		{ "huge number", "x", "\nSTRATA-META 1\nid: %1$s\nreceived: 99999999999999999999\nsize: 1\nhash: %2$s\nrcpt: a@b\n", -1 },
		{ "bad rcpt", "x", "\nSTRATA-META 1\nid: %1$s\nreceived: 5\nsize: 1\nhash: %2$s\nrcpt: a b@c\n", -1 },
		{ "upper-case rcpt", "x", "\nSTRATA-META 1\nid: %1$s\nreceived: 5\nsize: 1\nhash: %2$s\nrcpt: A@b\n", -1 },
		{ "no space after colon", "x", "\nSTRATA-META 1\nid:%1$s\nreceived: 5\nsize: 1\nhash: %2$s\nrcpt: a@b\n", -1 },
		{ "CR in value", "x", "\nSTRATA-META 1\nid: %1$s\nreceived: 5\r\nsize: 1\nhash: %2$s\nrcpt: a@b\n", -1 },
		{ "wrong version", "x", "\nSTRATA-META 2\nid: %1$s\nreceived: 5\nsize: 1\nhash: %2$s\nrcpt: a@b\n", -1 },
		{ "no leading newline", "x", "STRATA-META 1\nid: %1$s\nreceived: 5\nsize: 1\nhash: %2$s\nrcpt: a@b\n", -1 },
		{ "no final newline", "x", "\nSTRATA-META 1\nid: %1$s\nreceived: 5\nsize: 1\nhash: %2$s\nrcpt: a@b", -1 },
		{ "tail too short", "x", "\nSTRATA-META 1\nid: %1$s\nreceived: 5\nsize: 1\nhash: %2$s\nrcpt: a@b\n", 100 },
		{ "tail past start", "x", "\nSTRATA-META 1\nid: %1$s\nreceived: 5\nsize: 1\nhash: %2$s\nrcpt: a@b\n", 100000 },
		{ "tail huge", "x", "\nSTRATA-META 1\nid: %1$s\nreceived: 5\nsize: 1\nhash: %2$s\nrcpt: a@b\n", 9999999999 },
		{ "tail zero", "x", "\nSTRATA-META 1\nid: %1$s\nreceived: 5\nsize: 1\nhash: %2$s\nrcpt: a@b\n", 0 },
	};
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/garbage", f->dir);
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct buf b = BUF_INIT;
		buf_append_str(&b, cases[i].body);
		size_t start = b.len;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
		buf_printf(&b, cases[i].trailer, idt, h);
#pragma GCC diagnostic pop
		long tl = cases[i].tail_len >= 0 ? cases[i].tail_len
						 : (long)(b.len - start + STORE_TRAILER_TAIL);
		buf_printf(&b, "STRATA-META-END %010ld\n", tl);
		write_file(path, b.data, b.len);
		struct blob_meta m;
		enum status want = i == 0 ? ST_OK : ST_INVALID;
		CHECK_ST(cases[i].label, store_blob_read_meta(path, &m), want);
		store_blob_meta_free(&m);
		buf_free(&b);
	}
	/* Files that are not blobs at all. */
	unsigned char noise[4096];
	random_bytes(noise, sizeof(noise));
	write_file(path, noise, sizeof(noise));
	struct blob_meta m;
	CHECK_ST("random bytes", store_blob_read_meta(path, &m), ST_INVALID);
	write_file(path, "", 0);
	CHECK_ST("empty file", store_blob_read_meta(path, &m), ST_INVALID);
	CHECK_ST("a directory", store_blob_read_meta(f->dir, &m), ST_INVALID);
	char link[PATH_MAX];
	snprintf(link, sizeof(link), "%s/link", f->dir);
	assert_int_equal(symlink(path, link), 0);
	CHECK_ST("a symlink", store_blob_read_meta(link, &m), ST_INVALID);
	char fifo[PATH_MAX];
	snprintf(fifo, sizeof(fifo), "%s/fifo", f->dir);
	assert_int_equal(mkfifo(fifo, 0600), 0);
	CHECK_ST("a fifo", store_blob_read_meta(fifo, &m), ST_INVALID);
	snprintf(path, sizeof(path), "%s/does-not-exist", f->dir);
	CHECK_ST("missing", store_blob_read_meta(path, &m), ST_NOT_FOUND);
}

/* ---- handles and schema ---------------------------------------------------------- */

static void test_open_errors(void **state)
{
	struct fixture *f = *state;
	char *err = NULL;
	char idx[PATH_MAX];
	snprintf(idx, sizeof(idx), "store.index=%s/missing/index.db", f->dir);
	struct settings *s2 = fixture_settings(f->dir, idx, NULL, NULL);
	assert_null(store_open(s2, false, &err));
	assert_non_null(err);
	xfree(&err);
	assert_null(store_reader_open(s2, &err));
	assert_non_null(err);
	xfree(&err);
	config_free(&s2);

	/* An index from a newer Strata is refused by every handle. */
	raw_exec(f, "PRAGMA user_version = 99");
	s2 = fixture_settings(f->dir, NULL, NULL, NULL);
	assert_null(store_open(s2, true, &err));
	assert_non_null(strstr(err, "newer"));
	xfree(&err);
	assert_null(store_open(s2, false, &err));
	xfree(&err);
	assert_null(store_reader_open(s2, &err));
	xfree(&err);
	char current[64];
	snprintf(current, sizeof(current), "PRAGMA user_version = %d", STORE_SCHEMA_VERSION);
	raw_exec(f, current);
	struct store *st2 = store_open(s2, false, &err);
	assert_non_null(st2);
	store_close(&st2);
	assert_null(st2);
	config_free(&s2);
	/* WAL mode and the meta counter are in place. */
	char wal[PATH_MAX];
	snprintf(wal, sizeof(wal), "%s-wal", f->s->store_index_path);
	assert_true(file_exists(wal));
	assert_true(raw_int(f, "SELECT value FROM meta WHERE key = 'next_uidvalidity'") > 1700000000);
	struct stat sb;
	char tmp[PATH_MAX];
	snprintf(tmp, sizeof(tmp), "%s/tmp", f->s->store_blob_dir);
	assert_int_equal(stat(tmp, &sb), 0);
}

/* ---- cached MIME rows ------------------------------------------------------------------ */

static void test_mime_rows(void **state)
{
	struct fixture *f = *state;
	add_domain(f, "ex.org");
	int64_t a = add_user(f, "a@ex.org", 0, 0);
	struct delivery_buf d[2];
	make_delivery(&d[0], &a, 1, 10);
	make_delivery(&d[1], &a, 1, 10);
	uint8_t parts[] = { 1, '1', 0, 0, 2, 8, 0 };
	struct store_mime row = { "(NIL \"s\" NIL NIL NIL NIL NIL NIL NIL NIL)", "(\"text\" \"plain\")",
				  "(\"text\")", parts, sizeof(parts) };
	d[0].d.mime = &row;        /* d[1]: no row, as from an older Strata */
	CHECK_ST("commit", commit(f, d, 2), ST_OK);
	CHECK_ST("both delivered", d[0].d.status, ST_OK);
	CHECK_ST("both delivered", d[1].d.status, ST_OK);

	struct store_mime got;
	CHECK_ST("get", store_mime_get(f->st, &d[0].d.id, &got), ST_OK);
	assert_string_equal(got.envelope, row.envelope);
	assert_string_equal(got.bodystructure, row.bodystructure);
	assert_string_equal(got.body, row.body);
	assert_int_equal(got.parts_len, sizeof(parts));
	assert_memory_equal(got.parts, parts, sizeof(parts));
	store_mime_free(&got);
	assert_null(got.envelope);
	CHECK_ST("no row", store_mime_get(f->st, &d[1].d.id, &got), ST_NOT_FOUND);

	/* Lazy fill; a second put keeps the first row. */
	CHECK_ST("put", store_mime_put(f->st, &d[1].d.id, &row, NULL), ST_OK);
	struct store_mime other = row;
	other.body = "(\"other\")";
	CHECK_ST("put again", store_mime_put(f->st, &d[1].d.id, &other, NULL), ST_OK);
	CHECK_ST("get filled", store_mime_get(f->st, &d[1].d.id, &got), ST_OK);
	assert_string_equal(got.body, row.body);
	store_mime_free(&got);
	/* A blob that does not exist: nothing written, not an error. */
	struct msgid none;
	msgid_new(&none);
	CHECK_ST("put unknown", store_mime_put(f->st, &none, &row, NULL), ST_OK);
	assert_int_equal(raw_int(f, "SELECT count(*) FROM mime"), 2);

	/* Rows go with their blobs. */
	must(store_user_del(f->st, "a@ex.org", NULL), "del a", NULL);
	assert_int_equal(raw_int(f, "SELECT count(*) FROM mime"), 0);
}

/* An index of schema version 1 (before the MIME cache) is migrated by a
 * writer opened with `create`, keeps its data, and refuses other handles
 * until then. */
static void test_migration_v1_to_v2(void **state)
{
	struct fixture *f = *state;
	add_domain(f, "ex.org");
	int64_t a = add_user(f, "a@ex.org", 0, 0);
	struct delivery_buf d;
	make_delivery(&d, &a, 1, 10);
	CHECK_ST("commit", commit(f, &d, 1), ST_OK);
	store_close(&f->st);
	raw_exec(f, "DROP TABLE vanished_floor; DROP TABLE vanished; DROP TABLE mime; PRAGMA user_version = 1");

	char *err = NULL;
	assert_null(store_open(f->s, false, &err));
	assert_non_null(strstr(err, "version 1"));
	xfree(&err);
	f->st = store_open(f->s, true, &err);
	assert_non_null(f->st);
	assert_int_equal(raw_int(f, "PRAGMA user_version"), STORE_SCHEMA_VERSION);
	assert_int_equal(raw_int(f, "SELECT count(*) FROM blobs"), 1);
	struct store_mime got;
	CHECK_ST("no row yet", store_mime_get(f->st, &d.d.id, &got), ST_NOT_FOUND);
	struct store_mime row = { "(NIL)", "(\"text\")", "(\"text\")", NULL, 0 };
	CHECK_ST("lazy put", store_mime_put(f->st, &d.d.id, &row, NULL), ST_OK);
	CHECK_ST("row", store_mime_get(f->st, &d.d.id, &got), ST_OK);
	assert_string_equal(got.envelope, "(NIL)");
	assert_int_equal(got.parts_len, 0);
	store_mime_free(&got);
}

/* An index of schema version 4 (before the outbound queue) is migrated with
 * its messages kept; the migrated index then takes outbound rows, which
 * hold blob references like message rows. */
static void test_migration_v4_outbound(void **state)
{
	struct fixture *f = *state;
	add_domain(f, "ex.org");
	int64_t a = add_user(f, "a@ex.org", 0, 0);
	struct delivery_buf d;
	make_delivery(&d, &a, 1, 10);
	CHECK_ST("commit", commit(f, &d, 1), ST_OK);
	store_close(&f->st);
	raw_exec(f, "DROP TABLE outbound; PRAGMA user_version = 4");
	char *err = NULL;
	f->st = store_open(f->s, true, &err);
	assert_non_null(f->st);
	assert_int_equal(raw_int(f, "PRAGMA user_version"), STORE_SCHEMA_VERSION);
	assert_int_equal(raw_int(f, "SELECT count(*) FROM messages"), 1);
	assert_int_equal(raw_int(f, "SELECT count(*) FROM outbound"), 0);

	/* remote only, and local and remote: one reference per account and per remote */
	static const char remotes[2][320] = { "x@remote.example", "y@remote.example" };
	const struct {
		const char *label;
		size_t n_accounts, n_remotes;
		int64_t refcount;
	} cases[] = {
		{ "remote only", 0, 2, 2 },
		{ "local and remote", 1, 1, 2 },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		int64_t before = raw_int(f, "SELECT count(*) FROM outbound");
		make_delivery(&d, &a, cases[i].n_accounts, 20);
		d.d.sender = "a@ex.org";
		d.d.n_remotes = cases[i].n_remotes;
		d.d.remotes = remotes;
		CHECK_ST(cases[i].label, commit(f, &d, 1), ST_OK);
		CHECK_ST(cases[i].label, d.d.status, ST_OK);
		int64_t after = raw_int(f, "SELECT count(*) FROM outbound");
		if (after - before != (int64_t)cases[i].n_remotes)
			fail_msg("%s: %lld outbound rows added, want %zu", cases[i].label,
				 (long long)(after - before), cases[i].n_remotes);
		int64_t refs = raw_int(f, "SELECT refcount FROM blobs ORDER BY id DESC LIMIT 1");
		if (refs != cases[i].refcount)
			fail_msg("%s: refcount %lld, want %lld", cases[i].label, (long long)refs,
				 (long long)cases[i].refcount);
	}
	/* no account and no remote is refused */
	make_delivery(&d, &a, 0, 20);
	CHECK_ST("empty", commit(f, &d, 1), ST_OK);
	CHECK_ST("empty delivery", d.d.status, ST_INVALID);
}

/* ---- the index size of a message ---------------------------------------------------- */

static void test_index_bytes_per_message(void **state)
{
	struct fixture *f = *state;
	add_domain(f, "ex.org");
	enum { ACCOUNTS = 100, MESSAGES = 10000, BATCH = 500 };
	int64_t ids[ACCOUNTS];
	for (int i = 0; i < ACCOUNTS; i++) {
		char addr[32];
		snprintf(addr, sizeof(addr), "user%03d@ex.org", i);
		ids[i] = add_user(f, addr, 0, 0);
	}
	raw_exec(f, "PRAGMA wal_checkpoint(TRUNCATE)");
	int64_t page = raw_int(f, "PRAGMA page_size");
	int64_t before = raw_int(f, "SELECT sum(pgsize) FROM dbstat WHERE name IN"
				    " ('blobs', 'messages', 'messages_modseq', 'sqlite_autoindex_blobs_1')");
	struct delivery_buf *d = xcalloc(BATCH, sizeof(*d));
	uint64_t t0 = time_mono_us();
	for (int done = 0; done < MESSAGES; done += BATCH) {
		for (int i = 0; i < BATCH; i++)
			make_delivery(&d[i], &ids[(done + i) % ACCOUNTS], 1, 20000 + (uint64_t)i);
		CHECK_ST("batch", commit(f, d, BATCH), ST_OK);
		for (int i = 0; i < BATCH; i++)
			CHECK_ST("delivery", d[i].d.status, ST_OK);
	}
	uint64_t t1 = time_mono_us();
	free(d);
	raw_exec(f, "PRAGMA wal_checkpoint(TRUNCATE)");
	int64_t after = raw_int(f, "SELECT sum(pgsize) FROM dbstat WHERE name IN"
				   " ('blobs', 'messages', 'messages_modseq', 'sqlite_autoindex_blobs_1')");
	double per = (double)(after - before) / MESSAGES;
	print_message("index: %.1f bytes/message (blobs + its msgid index + messages + messages_modseq, %lld-byte pages); "
		      "%d deliveries committed in batches of %d at %.0f/s\n",
		      per, (long long)page, MESSAGES, BATCH, MESSAGES / ((double)(t1 - t0) / 1e6));
	sqlite3_stmt *q = NULL;
	assert_int_equal(sqlite3_prepare_v2(f->raw, "SELECT name, sum(pgsize), sum(payload), count(*)"
					    " FROM dbstat GROUP BY name ORDER BY name", -1, &q, NULL),
			 SQLITE_OK);
	while (sqlite3_step(q) == SQLITE_ROW)
		print_message("  %-28s %9lld bytes in %5lld pages, payload %9lld\n", sqlite3_column_text(q, 0),
			      (long long)sqlite3_column_int64(q, 1), (long long)sqlite3_column_int64(q, 3),
			      (long long)sqlite3_column_int64(q, 2));
	sqlite3_finalize(q);
	if (per >= 300)
		fail_msg("index uses %.1f bytes per message, budget 300", per);
}

/* The QRESYNC expunge log: complete only after its floor, and pruned to the
 * newest STORE_VANISHED_KEEP rows with the floor raised to match. */
static void check_vanished(int64_t mb, struct store *st, const char *label, uint64_t since, bool want_complete,
			   size_t want_n, uint32_t want_first)
{
	uint32_t *uids = NULL;
	size_t n = 0;
	bool complete = true;
	CHECK_ST(label, store_imap_vanished(st, mb, since, &uids, &n, &complete), ST_OK);
	if (complete != want_complete || n != want_n || (n > 0 && uids[0] != want_first))
		fail_msg("%s: got complete=%d n=%zu first=%u, want complete=%d n=%zu first=%u", label, complete, n,
			 n ? uids[0] : 0, want_complete, want_n, want_first);
	for (size_t i = 1; i < n; i++) {
		if (uids[i] <= uids[i - 1])
			fail_msg("%s: not ascending at %zu: %u after %u", label, i, uids[i], uids[i - 1]);
	}
	free(uids);
}

/* Size of the index's WAL file (0 when there is none). */
static long long wal_size(struct fixture *f)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s-wal", f->s->store_index_path);
	struct stat sb;
	return stat(path, &sb) == 0 ? (long long)sb.st_size : 0;
}

/* Adds n accounts, one transaction each, through `st`, with `gap_us`
 * between transactions; returns the largest WAL size seen after a commit. */
static long long add_users_watch_wal(struct fixture *f, struct store *st, const char *prefix, int n,
				     unsigned gap_us)
{
	long long most = 0;
	for (int i = 0; i < n; i++) {
		char addr[64], *err = NULL;
		snprintf(addr, sizeof(addr), "%s%d@ck.org", prefix, i);
		must(store_user_add(st, addr, "", 0, 0, &err), addr, err);
		long long w = wal_size(f);
		most = w > most ? w : most;
		if (gap_us > 0)
			usleep(gap_us);
	}
	return most;
}

/* A checkpointer started with settings `option` and a read-write handle
 * opened while it runs (so it gets the checkpointer's WAL hook). */
struct ckpt_run {
	struct settings *s;
	struct store_checkpointer *c;
	struct store *st;
};

static void ckpt_run_start(struct fixture *f, const char *option, struct ckpt_run *r)
{
	char *err = NULL;
	r->s = fixture_settings(f->dir, option, NULL, NULL);
	r->c = NULL;
	CHECK_ST("start", store_checkpoint_start(r->s, &r->c, &err), ST_OK);
	assert_non_null(r->c);
	r->st = store_open(r->s, false, &err);
	if (r->st == NULL)
		fail_msg("store_open: %s", err);
}

static void ckpt_run_stop(struct ckpt_run *r)
{
	store_close(&r->st);
	store_checkpoint_stop(&r->c);
	config_free(&r->s);
}

/* The WAL checkpointer (store_checkpoint.c): handles opened while it runs
 * leave checkpoints to its thread, which keeps the WAL near
 * store.checkpoint_pages; its stop truncates the WAL; handles still open
 * afterwards checkpoint on their own at the same threshold; with
 * store.checkpointer=no nothing starts. */
static void test_checkpointer(void **state)
{
	struct fixture *f = *state;
	add_domain(f, "ck.org");
	/* 16 pages: 150 accounts (6 WAL frames each) pass it many times over;
	 * without checkpoints their WAL (3.7 MB) passes the bound below 3 times.
	 * The bound is the safety valve's size plus a few transactions. */
	const long long bound = (16LL * 16 + 32) * (4096 + 24);
	struct ckpt_run r;
	ckpt_run_start(f, "store.checkpoint_pages=16", &r);
	struct store *st = r.st;
	uint64_t ran = metric_get(M_STORE_CHECKPOINTS);
	/* 1 ms between transactions, as the queue's committer has between
	 * its batches (directory fsyncs, replies): the moments the
	 * checkpointer rewinds the log in. */
	long long most = add_users_watch_wal(f, st, "run", 150, 1000);
	/* The thread is woken, not waited for: give it a bounded while. */
	for (int i = 0; i < 200 && metric_get(M_STORE_CHECKPOINTS) == ran; i++)
		usleep(50 * 1000);
	if (metric_get(M_STORE_CHECKPOINTS) == ran)
		fail_msg("running: no checkpoint counted (WAL %lld bytes)", wal_size(f));
	if (most > bound)
		fail_msg("running: WAL grew to %lld bytes, bound %lld (%llu passive, %llu restart)", most, bound,
			 (unsigned long long)(metric_get(M_STORE_CHECKPOINTS) - ran),
			 (unsigned long long)metric_get(M_STORE_CHECKPOINTS_RESTART));
	store_checkpoint_stop(&r.c);
	assert_null(r.c);
	if (wal_size(f) != 0)
		fail_msg("after stop: WAL %lld bytes, want 0 (TRUNCATE)", wal_size(f));
	/* st keeps the hook: with no checkpointer it checkpoints itself. */
	uint64_t stopped = metric_get(M_STORE_CHECKPOINTS);
	most = add_users_watch_wal(f, st, "after", 150, 0);
	if (most > bound)
		fail_msg("after stop: WAL grew to %lld bytes, bound %lld", most, bound);
	assert_int_equal(metric_get(M_STORE_CHECKPOINTS), stopped);
	ckpt_run_stop(&r);
	char *err = NULL;
	struct settings *s = fixture_settings(f->dir, "store.checkpointer=no", NULL, NULL);
	struct store_checkpointer *c = (struct store_checkpointer *)s;   /* must be overwritten */
	CHECK_ST("start with checkpointer=no", store_checkpoint_start(s, &c, &err), ST_OK);
	assert_null(c);
	config_free(&s);
}

/* What the hook counts: frames no checkpoint has copied yet. */
static void test_checkpoint_uncopied(void **state)
{
	(void)state;
	CHECK_INT("fresh log", store_checkpoint_uncopied(40, 0, 30), 40);
	CHECK_INT("partly copied", store_checkpoint_uncopied(1200, 1000, 1190), 200);
	CHECK_INT("all copied", store_checkpoint_uncopied(1000, 1000, 990), 0);
	CHECK_INT("rewound since the last commit", store_checkpoint_uncopied(12, 1000, 1006), 12);
	CHECK_INT("rewound, the copy count not yet reset", store_checkpoint_uncopied(900, 1000, 890), 900);
}

/* store.checkpoint_pages = 0: 1,000 pages while index.db is small, 256
 * once it is large (64 MiB), where each page of a checkpoint is a random
 * write. */
static void test_checkpoint_auto_pages(void **state)
{
	(void)state;
	CHECK_INT("empty", store_checkpoint_auto_pages(0), 1000);
	CHECK_INT("20,000 messages", store_checkpoint_auto_pages(3739648), 1000);
	CHECK_INT("just under", store_checkpoint_auto_pages((64u << 20) - 1), 1000);
	CHECK_INT("64 MiB", store_checkpoint_auto_pages(64u << 20), 256);
	CHECK_INT("1,000,000 messages", store_checkpoint_auto_pages(192471040), 256);
}

/* A log that readers keep from being rewound (each reader takes its
 * snapshot again right after the next commit, as IMAP sessions under load
 * do) stays long: the checkpointer must still run once per
 * store.checkpoint_pages NEW frames, not after every commit because the
 * log as a whole is over the threshold.  Each round copies and fsyncs
 * index.db; at a million messages a round per commit (no two commits'
 * pages folded into one write) cost a third of delivery's p99. */
static void test_checkpoint_pinned_log(void **state)
{
	struct fixture *f = *state;
	add_domain(f, "ck.org");
	struct ckpt_run r;
	ckpt_run_start(f, "store.checkpoint_pages=64", &r);
	struct store *st = r.st;
	/* Past the threshold first, so that the old rule would fire on every
	 * commit from here on. */
	add_users_watch_wal(f, st, "fill", 20, 0);
	usleep(100 * 1000);
	uint64_t before = metric_get(M_STORE_CHECKPOINTS);
	const int commits = 60;   /* 6 frames each: 360 new frames, 5 or 6 thresholds */
	for (int i = 0; i < commits; i++) {
		raw_exec(f, "BEGIN");
		(void)raw_int(f, "SELECT count(*) FROM accounts");
		char prefix[16];
		snprintf(prefix, sizeof(prefix), "pin%d_", i);
		add_users_watch_wal(f, st, prefix, 1, 0);
		usleep(5 * 1000);   /* the thread's chance to run a round for this commit */
		raw_exec(f, "COMMIT");
	}
	uint64_t rounds = metric_get(M_STORE_CHECKPOINTS) - before;
	/* 360 / 64 thresholds, one round of the 2 s timer, and slack for a
	 * round that copied less than a threshold because a reader held it. */
	if (rounds > 15 || rounds == 0)
		fail_msg("%llu checkpoint rounds for %d commits of 6 frames at a threshold of 64",
			 (unsigned long long)rounds, commits);
	ckpt_run_stop(&r);
}

/* Runs fn(f, arg) with stderr (where the log goes) captured; returns
 * what was written, NUL-terminated, for the caller to free. */
static char *capture_stderr(struct fixture *f, void (*fn)(struct fixture *, void *), void *arg)
{
	fflush(stderr);
	FILE *tmp = tmpfile();
	assert_non_null(tmp);
	int saved = dup(STDERR_FILENO);
	assert_true(saved >= 0);
	assert_true(dup2(fileno(tmp), STDERR_FILENO) >= 0);
	fn(f, arg);
	fflush(stderr);
	assert_true(dup2(saved, STDERR_FILENO) >= 0);
	close(saved);
	long n = (long)lseek(fileno(tmp), 0, SEEK_END);
	char *out = xcalloc(1, (size_t)n + 1);
	if (n > 0 && pread(fileno(tmp), out, (size_t)n, 0) != n)
		fail_msg("reading the captured log");
	fclose(tmp);
	return out;
}

struct valve_run {
	struct store *st;
	bool pin;   /* a reader holds a snapshot from before the first commit */
};

static void valve_commits(struct fixture *f, void *arg)
{
	struct valve_run *v = arg;
	if (v->pin) {
		raw_exec(f, "BEGIN");
		(void)raw_int(f, "SELECT count(*) FROM accounts");
	}
	/* 120 commits of 6 frames: past the valve (16 x 16 pages) twice over. */
	add_users_watch_wal(f, v->st, v->pin ? "pinned" : "free", 120, 0);
	if (v->pin)
		raw_exec(f, "COMMIT");
}

/* The safety valve warns only when a reader kept it from rewinding the
 * log; rewinds under a plain steady load are routine and silent. */
static void test_checkpoint_valve_warning(void **state)
{
	struct fixture *f = *state;
	add_domain(f, "ck.org");
	log_set_level(LOG_LVL_INFO);
	struct ckpt_run r;
	ckpt_run_start(f, "store.checkpoint_pages=16", &r);
	struct valve_run run = { .st = r.st, .pin = true };
	char *log = capture_stderr(f, valve_commits, &run);
	if (strstr(log, "readers keep it from being rewound") == NULL)
		fail_msg("a reader pinned the log past the valve, and no warning: [%s]", log);
	free(log);
	/* The episode ends once a checkpoint finds the log short again. */
	for (int i = 0; i < 100 && wal_size(f) > 64 * 4096; i++)
		usleep(20 * 1000);
	usleep(2500 * 1000);   /* the idle round that logs the end of the episode */
	run.pin = false;
	log = capture_stderr(f, valve_commits, &run);
	if (strstr(log, "readers keep it from being rewound") != NULL)
		fail_msg("no reader, yet the valve warned: [%s]", log);
	free(log);
	ckpt_run_stop(&r);
}

static void test_vanished_log(void **state)
{
	struct fixture *f = *state;
	add_domain(f, "ex.org");
	add_user(f, "a@ex.org", 0, 0);
	int64_t account;
	CHECK_ST("account", store_account_id(f->st, "a@ex.org", &account, NULL), ST_OK);
	struct store_mailbox_info inbox;
	CHECK_ST("inbox", store_imap_mailbox_get(f->st, account, "INBOX", false, &inbox), ST_OK);
	int64_t mb = inbox.id;
	check_vanished(mb, f->st, "no log yet", 0, false, 0, 0);

	const uint32_t first[] = { 3, 1, 2 };
	CHECK_ST("log 3", store_vanished_log(f->st, mb, 10, first, 3, NULL), ST_OK);
	static const struct {
		const char *label;
		uint64_t since;
		bool complete;
		size_t n;
		uint32_t first;
	} before[] = {
		{ "before the floor", 8, false, 0, 0 },
		{ "at the floor", 9, true, 3, 1 },
		{ "after the expunge", 10, true, 0, 0 },
	};
	for (size_t i = 0; i < ARRAY_LEN(before); i++)
		check_vanished(mb, f->st, before[i].label, before[i].since, before[i].complete, before[i].n,
			       before[i].first);

	/* KEEP more rows at modseq 11: the three at 10 are pruned, floor 10. */
	uint32_t *many = xcalloc(STORE_VANISHED_KEEP, sizeof(*many));
	for (size_t i = 0; i < STORE_VANISHED_KEEP; i++)
		many[i] = (uint32_t)(100 + i);
	CHECK_ST("begin", store_db_begin(f->st, NULL), ST_OK);
	CHECK_ST("log many", store_vanished_log(f->st, mb, 11, many, STORE_VANISHED_KEEP, NULL), ST_OK);
	CHECK_ST("commit", store_db_commit(f->st, NULL), ST_OK);
	free(many);
	static const struct {
		const char *label;
		uint64_t since;
		bool complete;
		size_t n;
		uint32_t first;
	} after[] = {
		{ "pruned range", 9, false, 0, 0 },
		{ "raised floor", 10, true, STORE_VANISHED_KEEP, 100 },
		{ "newest", 11, true, 0, 0 },
	};
	for (size_t i = 0; i < ARRAY_LEN(after); i++)
		check_vanished(mb, f->st, after[i].label, after[i].since, after[i].complete, after[i].n,
			       after[i].first);
	assert_int_equal(raw_int(f, "SELECT count(*) FROM vanished"), STORE_VANISHED_KEEP);

	/* Deleting the mailbox takes its log with it (ON DELETE CASCADE). */
	CHECK_ST("create", store_imap_mailbox_create(f->st, account, "Tmp", NULL), ST_OK);
	struct store_mailbox_info tmp;
	CHECK_ST("tmp", store_imap_mailbox_get(f->st, account, "Tmp", false, &tmp), ST_OK);
	CHECK_ST("log tmp", store_vanished_log(f->st, tmp.id, 2, first, 3, NULL), ST_OK);
	CHECK_ST("delete", store_imap_mailbox_delete(f->st, account, "Tmp", NULL), ST_OK);
	assert_int_equal(raw_int(f, "SELECT count(*) FROM vanished_floor"), 1);
	assert_int_equal(raw_int(f, "SELECT count(*) FROM vanished"), STORE_VANISHED_KEEP);
}

int main(void)
{
	log_init("store_test", false, LOG_LVL_ERROR);
	if (sodium_init() < 0)
		return 1;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_domain_syntax, setup, teardown),
		cmocka_unit_test_setup_teardown(test_mime_rows, setup, teardown),
		cmocka_unit_test_setup_teardown(test_migration_v1_to_v2, setup, teardown),
		cmocka_unit_test_setup_teardown(test_migration_v4_outbound, setup, teardown),
		cmocka_unit_test_setup_teardown(test_vanished_log, setup, teardown),
		cmocka_unit_test_setup_teardown(test_checkpointer, setup, teardown),
		cmocka_unit_test(test_checkpoint_uncopied),
		cmocka_unit_test(test_checkpoint_auto_pages),
		cmocka_unit_test_setup_teardown(test_checkpoint_pinned_log, setup, teardown),
		cmocka_unit_test_setup_teardown(test_checkpoint_valve_warning, setup, teardown),
		cmocka_unit_test_setup_teardown(test_domain_del, setup, teardown),
		cmocka_unit_test_setup_teardown(test_user_add, setup, teardown),
		cmocka_unit_test_setup_teardown(test_user_add_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_user_list_and_add_many, setup, teardown),
		cmocka_unit_test_setup_teardown(test_uidvalidity_unique, setup, teardown),
		cmocka_unit_test_setup_teardown(test_aliases, setup, teardown),
		cmocka_unit_test_setup_teardown(test_resolve, setup, teardown),
		cmocka_unit_test_setup_teardown(test_quota, setup, teardown),
		cmocka_unit_test_setup_teardown(test_commit_batch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_commit_failure, setup, teardown),
		cmocka_unit_test_setup_teardown(test_user_del_blobs, setup, teardown),
		cmocka_unit_test_setup_teardown(test_blob_roundtrip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_blob_garbage, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_index_bytes_per_message, setup, teardown),
	};
	return cmocka_run_group_tests_name("store", tests, NULL, NULL);
}
