/*
 * store_rebuild_test.c - unit tests of index verification, backup and
 * rebuild (src/store/store_rebuild.c, store_backup.c) and of the trailer's
 * mailbox line (store_blob.c).
 *
 * Each test gets a fresh temporary state directory (removed afterwards) and
 * settings from an empty config file.  Blob files are written by the test
 * exactly as the queue writes them (bytes + trailer) and committed with
 * store_commit_deliveries, so the rebuild sees what a daemon leaves behind.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "core.h"
#include "store.h"
#include "store_fixture.h"

#define HASH "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static int setup(void **state)
{
	*state = fixture_new("rebuild-test", false, "store.backup_keep=2", NULL, NULL);
	return 0;
}

static int teardown(void **state)
{
	fixture_free(*state);
	return 0;
}

static void open_store(struct fixture *f)
{
	char *err = NULL;
	f->st = store_open(f->s, true, &err);
	if (f->st == NULL)
		fail_msg("store_open: %s", err);
}

static void add_user(struct fixture *f, const char *address)
{
	char *err = NULL;
	enum status s = store_user_add(f->st, address, "", 0, 0, &err);
	if (s != ST_OK)
		fail_msg("user add %s: %s", address, err);
}

/* Writes a blob file for `rcpts` (and the APPEND mailbox) at its final path. */
static struct msgid write_blob(struct fixture *f, const char *body, const char *rcpt, const char *mailbox,
			       int64_t received)
{
	struct msgid id;
	msgid_new(&id);
	char addrs[1][320];
	snprintf(addrs[0], sizeof(addrs[0]), "%s", rcpt);
	struct blob_meta m = { .id = id, .received = received, .size = strlen(body), .n_rcpts = 1,
			       .rcpt_addresses = addrs };
	memcpy(m.hash_hex, HASH, sizeof(m.hash_hex));
	snprintf(m.mailbox, sizeof(m.mailbox), "%s", mailbox ? mailbox : "");
	struct buf b = BUF_INIT;
	buf_append_str(&b, body);
	store_blob_trailer(&m, &b);
	char dir[PATH_MAX], path[PATH_MAX];
	store_blob_dir_of(f->s->store_blob_dir, &id, dir, sizeof(dir));
	store_blob_path(f->s->store_blob_dir, &id, path, sizeof(path));
	assert_true(fs_mkdir_p(dir, 0750));
	assert_true(fs_write_file_durable(path, b.data, b.len, 0640));
	buf_free(&b);
	return id;
}

/* A blob file and its delivery into the account's INBOX. */
static struct msgid deliver(struct fixture *f, const char *rcpt, const char *body, int64_t received)
{
	struct msgid id = write_blob(f, body, rcpt, NULL, received);
	struct account a;
	assert_int_equal(store_user_get(f->st, rcpt, &a), ST_OK);
	uint32_t uid = 0;
	struct store_delivery d = { .id = id, .received = received, .size = strlen(body), .n_accounts = 1,
				    .account_ids = &a.id, .uids = &uid };
	struct store_delivery *dp = &d;
	assert_int_equal(store_commit_deliveries(f->st, &dp, 1), ST_OK);
	assert_int_equal(d.status, ST_OK);
	return id;
}

struct listed {
	size_t n;
	struct message_row rows[16];
};

static void collect(void *ctx, const struct message_row *m)
{
	struct listed *l = ctx;
	if (l->n < 16)
		l->rows[l->n++] = *m;
}

static struct listed list(struct fixture *f, const char *address, const char *mailbox)
{
	struct listed l = { 0 };
	assert_int_equal(store_mailbox_list_messages(f->st, address, mailbox, collect, &l), ST_OK);
	return l;
}

static void unlink_index(struct fixture *f)
{
	static const char *const sfx[] = { "", "-wal", "-shm" };
	for (size_t i = 0; i < 3; i++) {
		char p[PATH_MAX];
		snprintf(p, sizeof(p), "%s%s", f->s->store_index_path, sfx[i]);
		unlink(p);
	}
}

static void count_line(void *ctx, const char *line)
{
	(void)line;
	(*(int *)ctx)++;
}

static uint64_t verify_problems(struct fixture *f)
{
	struct store_verify_result r;
	char *err = NULL;
	int lines = 0;
	if (store_verify(f->s, count_line, &lines, &r, &err) != ST_OK)
		fail_msg("verify: %s", err);
	assert_int_equal((uint64_t)lines, r.problems);
	return r.problems;
}

/* ---- the trailer's mailbox line -------------------------------------------------- */

static void test_trailer_mailbox(void **state)
{
	struct fixture *f = *state;
	static const struct {
		const char *label, *mailbox;   /* written raw into the trailer */
		bool valid;
		const char *parsed;
	} cases[] = {
		{ "no line: INBOX (a delivery)", NULL, true, "" },
		{ "a folder", "Archive/2026", true, "Archive/2026" },
		{ "INBOX spelled canonically", "INBOX", true, "INBOX" },
		{ "lower-case inbox is not canonical", "inbox", false, NULL },
		{ "empty level", "a//b", false, NULL },
		{ "wildcard", "a*", false, NULL },
		{ "trailing separator", "a/", false, NULL },
	};
	fs_mkdir_p(f->dir, 0700);
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct buf b = BUF_INIT;
		buf_append_str(&b, "hello\r\n");
		size_t start = b.len;
		buf_printf(&b, "\nSTRATA-META 1\nid: 01M8J83PADEHA7AWX7Y9CH4HRJ\nreceived: 5\nsize: 7\nhash: %s\n"
			       "rcpt: a@b.example\n", HASH);
		if (cases[i].mailbox)
			buf_printf(&b, "mailbox: %s\n", cases[i].mailbox);
		buf_printf(&b, "STRATA-META-END %010zu\n", b.len - start + STORE_TRAILER_TAIL);
		char path[PATH_MAX];
		snprintf(path, sizeof(path), "%s/t%zu", f->dir, i);
		assert_true(fs_write_file_durable(path, b.data, b.len, 0600));
		buf_free(&b);
		struct blob_meta m;
		enum status s = store_blob_read_meta(path, &m);
		if ((s == ST_OK) != cases[i].valid)
			fail_msg("%s: status %d, expected %s", cases[i].label, s, cases[i].valid ? "OK" : "invalid");
		if (s == ST_OK && strcmp(m.mailbox, cases[i].parsed) != 0)
			fail_msg("%s: mailbox '%s', expected '%s'", cases[i].label, m.mailbox, cases[i].parsed);
		store_blob_meta_free(&m);
	}
}

/* ---- start-up classification ---------------------------------------------------- */

static void test_index_check(void **state)
{
	struct fixture *f = *state;
	static const struct {
		const char *label;
		enum { NOTHING, EMPTY_FILE, HEALTHY, HEALTHY_THEN_LOST, GARBAGE } index;
		bool blob;
		enum store_index_state want;
	} cases[] = {
		{ "first start: nothing at all", NOTHING, false, STORE_INDEX_NEW },
		{ "0-byte index, no blobs", EMPTY_FILE, false, STORE_INDEX_NEW },
		{ "healthy index with blobs", HEALTHY, true, STORE_INDEX_OK },
		{ "index deleted, blobs remain", HEALTHY_THEN_LOST, true, STORE_INDEX_DAMAGED },
		{ "0-byte index, blobs remain", EMPTY_FILE, true, STORE_INDEX_DAMAGED },
		{ "garbage index, blobs remain", GARBAGE, true, STORE_INDEX_DAMAGED },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		nftw(f->s->state_dir, fixture_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
		store_close(&f->st);
		assert_true(fs_mkdir_p(f->s->state_dir, 0750));
		if (cases[i].index == HEALTHY || cases[i].index == HEALTHY_THEN_LOST) {
			open_store(f);
			store_close(&f->st);
		}
		if (cases[i].blob)
			write_blob(f, "x\r\n", "a@b.example", NULL, 1);
		if (cases[i].index == HEALTHY_THEN_LOST)
			unlink_index(f);
		if (cases[i].index == EMPTY_FILE)
			assert_true(fs_write_file_durable(f->s->store_index_path, "", 0, 0640));
		if (cases[i].index == GARBAGE) {
			char junk[8192];
			for (size_t k = 0; k < sizeof(junk); k++)
				junk[k] = (char)(k * 131 + 7);
			assert_true(fs_write_file_durable(f->s->store_index_path, junk, sizeof(junk), 0640));
		}
		char *reason = NULL;
		enum store_index_state got = store_index_check(f->s, &reason);
		if (got != cases[i].want)
			fail_msg("%s: state %d, expected %d (%s)", cases[i].label, got, cases[i].want,
				 reason ? reason : "-");
		assert_true((got == STORE_INDEX_DAMAGED) == (reason != NULL));
		free(reason);
	}
}

/* ---- backup, loss, rebuild ------------------------------------------------------- */

static void test_backup_and_rebuild(void **state)
{
	struct fixture *f = *state;
	open_store(f);
	char *err = NULL;
	assert_int_equal(store_domain_add(f->st, "b.example", &err), ST_OK);
	add_user(f, "a@b.example");
	add_user(f, "c@b.example");
	struct msgid m1 = deliver(f, "a@b.example", "one\r\n", 100);
	struct msgid m2 = deliver(f, "a@b.example", "two\r\n", 101);
	struct msgid m3 = deliver(f, "a@b.example", "three\r\n", 102);
	(void)m3;
	struct store_mailbox_info inbox;
	struct account a;
	assert_int_equal(store_user_get(f->st, "a@b.example", &a), ST_OK);
	assert_int_equal(store_imap_mailbox_get(f->st, a.id, "INBOX", false, &inbox), ST_OK);
	uint32_t uid1 = 1, fl[1];
	uint64_t modseq;
	assert_int_equal(store_imap_set_flags(f->st, inbox.id, &uid1, 1, STORE_FLAGS_ADD,
					      MSG_FLAG_SEEN | MSG_FLAG_FLAGGED, fl, &modseq, &err), ST_OK);
	assert_int_equal(verify_problems(f), 0);
	/* Three backups with store.backup_keep=2: the oldest goes. */
	char *path = NULL;
	for (int i = 0; i < 3; i++) {
		free(path);
		path = NULL;
		if (store_backup_run(f->s, &path, &err) != ST_OK)
			fail_msg("backup: %s", err);
		usleep(2000); /* distinct millisecond names */
	}
	int n_backups = 0;
	DIR *d = opendir(f->s->store_backup_dir);
	assert_non_null(d);
	for (struct dirent *e; (e = readdir(d)) != NULL;)
		n_backups += strncmp(e->d_name, "index-", 6) == 0;
	closedir(d);
	assert_int_equal(n_backups, 2);
	/* After the backup: a delivery, an APPEND-style blob naming a new
	 * folder, a flag change, an expunge (m3's file is removed). */
	struct msgid m4 = deliver(f, "a@b.example", "four\r\n", 103);
	struct msgid m5 = write_blob(f, "five\r\n", "a@b.example", "Lists/new", 104);
	uint32_t uid2 = 2, uid3 = 3;
	assert_int_equal(store_imap_set_flags(f->st, inbox.id, &uid2, 1, STORE_FLAGS_ADD, MSG_FLAG_ANSWERED, fl,
					      &modseq, &err), ST_OK);
	assert_int_equal(store_imap_set_flags(f->st, inbox.id, &uid3, 1, STORE_FLAGS_ADD, MSG_FLAG_DELETED, fl,
					      &modseq, &err), ST_OK);
	uint32_t *gone = NULL;
	size_t n_gone = 0;
	assert_int_equal(store_imap_expunge(f->st, a.id, inbox.id, NULL, 0, &gone, &n_gone, &err), ST_OK);
	assert_int_equal(n_gone, 1);
	free(gone);
	store_close(&f->st);
	unlink_index(f);

	struct store_rebuild_result r;
	if (store_rebuild(f->s, &r, &err) != ST_OK)
		fail_msg("rebuild: %s", err);
	assert_string_equal(r.base, path);
	assert_int_equal(r.base_messages, 2);     /* m1, m2 (m3 expunged since) */
	assert_int_equal(r.dropped_messages, 1);
	assert_int_equal(r.added_messages, 2);    /* m4, m5 */
	free(path);
	open_store(f);
	struct listed l = list(f, "a@b.example", "INBOX");
	static const struct { uint32_t uid; uint32_t flags; } want[] = {
		{ 1, MSG_FLAG_SEEN | MSG_FLAG_FLAGGED }, { 2, 0 /* \Answered came after the backup */ }, { 4, 0 },
	};
	assert_int_equal(l.n, ARRAY_LEN(want));
	const struct msgid *ids[] = { &m1, &m2, &m4 };
	for (size_t i = 0; i < l.n; i++) {
		if (l.rows[i].uid != want[i].uid || l.rows[i].flags != want[i].flags ||
		    memcmp(l.rows[i].id.b, ids[i]->b, MSGID_BYTES) != 0)
			fail_msg("INBOX row %zu: uid %u flags %u, expected uid %u flags %u", i, l.rows[i].uid,
				 l.rows[i].flags, want[i].uid, want[i].flags);
	}
	struct store_mailbox_info again;
	assert_int_equal(store_imap_mailbox_get(f->st, a.id, "INBOX", false, &again), ST_OK);
	assert_int_equal(again.uidvalidity, inbox.uidvalidity);
	l = list(f, "a@b.example", "Lists/new");
	assert_int_equal(l.n, 1);
	assert_memory_equal(l.rows[0].id.b, m5.b, MSGID_BYTES);
	struct account after;
	assert_int_equal(store_user_get(f->st, "a@b.example", &after), ST_OK);
	assert_int_equal(after.used_messages, 4);
	assert_int_equal(after.used_bytes, strlen("one\r\ntwo\r\nfour\r\nfive\r\n"));
	assert_int_equal(verify_problems(f), 0);
}

static void test_rebuild_without_backup(void **state)
{
	struct fixture *f = *state;
	open_store(f);
	char *err = NULL;
	assert_int_equal(store_domain_add(f->st, "b.example", &err), ST_OK);
	add_user(f, "a@b.example");
	deliver(f, "a@b.example", "one\r\n", 100);
	write_blob(f, "to a stranger\r\n", "nobody@b.example", NULL, 101);
	store_close(&f->st);
	unlink_index(f);
	struct store_rebuild_result r;
	assert_int_equal(store_rebuild(f->s, &r, &err), ST_NOT_FOUND);
	assert_non_null(strstr(err, "strata user import"));
	free(err);
	err = NULL;
	/* Accounts re-created: the rebuild files the mail it can place. */
	open_store(f);
	assert_int_equal(store_domain_add(f->st, "b.example", &err), ST_OK);
	add_user(f, "a@b.example");
	store_close(&f->st);
	if (store_rebuild(f->s, &r, &err) != ST_OK)
		fail_msg("rebuild: %s", err);
	assert_int_equal(r.added_messages, 1);
	assert_int_equal(r.unplaced, 1);
	open_store(f);
	assert_int_equal(list(f, "a@b.example", "INBOX").n, 1);
	/* No backup: every mailbox gets a UIDVALIDITY no earlier index used. */
	struct account a;
	struct store_mailbox_info mb;
	assert_int_equal(store_user_get(f->st, "a@b.example", &a), ST_OK);
	assert_int_equal(store_imap_mailbox_get(f->st, a.id, "INBOX", false, &mb), ST_OK);
	if ((int64_t)mb.uidvalidity < (int64_t)time(NULL) + (1 << 30) - 60)
		fail_msg("UIDVALIDITY %u not above now + 2^30", mb.uidvalidity);
	/* The stranger's file stays on disk, so verify names it. */
	assert_int_equal(verify_problems(f), 0); /* younger than the grace period */
}

/* ---- compressed blobs -------------------------------------------------------------- */

/* Rewrites blob id from tier `from` as a zstd blob on tier `to` (what the
 * mover does), without touching the index. */
static void compress_onto(struct fixture *f, const struct msgid *id, unsigned from, unsigned to)
{
	char src[PATH_MAX], dst[PATH_MAX], dir[PATH_MAX];
	store_blob_path_for(f->s, from, id, src, sizeof(src));
	store_blob_path_for(f->s, to, id, dst, sizeof(dst));
	store_blob_dir_of(f->s->tiers[to].path, id, dir, sizeof(dir));
	assert_true(fs_mkdir_p(dir, 0750));
	int in = open(src, O_RDONLY);
	assert_true(in >= 0);
	int out = open(dst, O_WRONLY | O_CREAT | O_EXCL, 0640);
	assert_true(out >= 0);
	struct blob_meta m;
	assert_int_equal(store_blob_read_meta_fd(in, &m), ST_OK);
	uint64_t written = 0;
	assert_int_equal(store_blob_repack(in, &m, out, BLOB_COMPRESS_ZSTD, 3, &written, NULL), ST_OK);
	store_blob_meta_free(&m);
	close(in);
	assert_true(fs_fsync(out) && fs_close(out));
	assert_int_equal(unlink(src), 0);
}

/* The message bytes readers get for id equal body. */
static void check_body(struct fixture *f, const struct msgid *id, const char *body, const char *label)
{
	int fd = store_blob_open(f->s, 0, id, NULL);
	if (fd < 0)
		fail_msg("%s: open: %s", label, strerror(errno));
	char got[256];
	ssize_t n = pread(fd, got, sizeof(got), 0);
	close(fd);
	if (n != (ssize_t)strlen(body) || memcmp(got, body, strlen(body)) != 0)
		fail_msg("%s: read %zd bytes, want \"%s\"", label, n, body);
}

static void test_rebuild_compressed_blobs(void **state)
{
	struct fixture *f = *state;
	config_free(&f->s);
	char conf[PATH_MAX], sd[PATH_MAX], ap[PATH_MAX];
	snprintf(conf, sizeof(conf), "%s/empty.conf", f->dir);
	FILE *cf = fopen(conf, "w");
	assert_non_null(cf);
	fclose(cf);
	snprintf(sd, sizeof(sd), "state_dir=%s/state", f->dir);
	snprintf(ap, sizeof(ap), "tier.archive.path=%s/arc", f->dir);
	char *over[] = { sd, "tier.names=fast,archive", ap, "tier.archive.compress=zstd" };
	char *err = NULL;
	f->s = config_load(conf, over, ARRAY_LEN(over), &err);
	if (f->s == NULL)
		fail_msg("config: %s", err);
	open_store(f);
	assert_int_equal(store_domain_add(f->st, "b.example", &err), ST_OK);
	add_user(f, "a@b.example");
	const char *known = "Subject: known\r\n\r\nkept kept kept kept kept kept kept kept\r\n";
	const char *unknown = "Subject: new\r\n\r\nfound only on the archive, compressed\r\n";
	struct msgid k = deliver(f, "a@b.example", known, 100);
	struct msgid u = write_blob(f, unknown, "a@b.example", NULL, 101);
	store_close(&f->st);
	/* the index's row says tier 0, the file is compressed on tier 1; the
	 * other file is known to no index at all */
	compress_onto(f, &k, 0, 1);
	compress_onto(f, &u, 0, 1);
	check_body(f, &k, known, "before rebuild");
	struct store_rebuild_result r;
	if (store_rebuild(f->s, &r, &err) != ST_OK)
		fail_msg("rebuild: %s", err);
	assert_int_equal(r.added_messages, 1);
	assert_int_equal(r.bad_files, 0);
	open_store(f);
	struct listed l = list(f, "a@b.example", "INBOX");
	assert_int_equal(l.n, 2);
	/* sizes are the message sizes, not the compressed ones */
	assert_int_equal(l.rows[0].size, strlen(known));
	assert_int_equal(l.rows[1].size, strlen(unknown));
	check_body(f, &k, known, "known, after rebuild");
	check_body(f, &u, unknown, "found, after rebuild");
	store_close(&f->st);
	sqlite3 *db;
	assert_int_equal(sqlite3_open_v2(f->s->store_index_path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	sqlite3_stmt *q;
	assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM blobs WHERE tier = 1", -1, &q, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(q), SQLITE_ROW);
	assert_int_equal(sqlite3_column_int(q, 0), 2);
	sqlite3_finalize(q);
	sqlite3_close(db);
	open_store(f);
	assert_int_equal(verify_problems(f), 0);
}

static void test_verify_finds_damage(void **state)
{
	struct fixture *f = *state;
	open_store(f);
	char *err = NULL;
	assert_int_equal(store_domain_add(f->st, "b.example", &err), ST_OK);
	add_user(f, "a@b.example");
	struct msgid m1 = deliver(f, "a@b.example", "one\r\n", 100);
	deliver(f, "a@b.example", "two\r\n", 101);
	assert_int_equal(verify_problems(f), 0);
	sqlite3 *raw = NULL;
	assert_int_equal(sqlite3_open(f->s->store_index_path, &raw), SQLITE_OK);
	assert_int_equal(sqlite3_exec(raw, "UPDATE blobs SET refcount = 5 WHERE id = 1;"
					   "UPDATE accounts SET used_messages = 9", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(raw);
	char path[PATH_MAX];
	store_blob_path(f->s->store_blob_dir, &m1, path, sizeof(path));
	assert_int_equal(unlink(path), 0);
	/* refcount, usage, missing file */
	assert_int_equal(verify_problems(f), 3);
}

int main(void)
{
	log_init("store_rebuild_test", false, LOG_LVL_ERROR);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_trailer_mailbox, setup, teardown),
		cmocka_unit_test_setup_teardown(test_index_check, setup, teardown),
		cmocka_unit_test_setup_teardown(test_backup_and_rebuild, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rebuild_without_backup, setup, teardown),
		cmocka_unit_test_setup_teardown(test_verify_finds_damage, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rebuild_compressed_blobs, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
