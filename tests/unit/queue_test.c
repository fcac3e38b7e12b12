/*
 * queue_test.c - the spool, writer pool and group committer against a real
 * store in a temporary state directory.
 *
 * Every case runs the queue's threads for real and waits for the done
 * callbacks on an event_base owned by the test thread (bounded by a
 * deadline), then checks the disk and the index: blob bytes and trailer,
 * INBOX rows and UIDs, no leftover temp or blob files after a failure.
 * Fault cases use core's fault points (fs_fault_set) to fail one step of
 * the durable-write sequence each.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
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
#include "queue.h"
#include "store.h"

#define N_ACCOUNTS 3
#define WAIT_MS 10000

static const char *const g_addresses[N_ACCOUNTS] = {
	"alice@example.org", "bob@example.org", "carol@example.org",
};

struct fixture {
	char dir[64];
	struct settings *s;
	struct store *st;
	struct queue *q;
	struct event_base *base;
	int64_t ids[N_ACCOUNTS];
};
static struct fixture F;

/* ---- helpers ------------------------------------------------------------ */

struct done_rec {
	int fired;
	enum status st;
	char id[MSGID_TEXT_LEN + 1];
};
static int g_fired; /* done callbacks run so far, all cases */

static void on_done(void *arg, enum status st, const char *queue_id)
{
	struct done_rec *r = arg;
	r->fired++;
	r->st = st;
	snprintf(r->id, sizeof(r->id), "%s", queue_id);
	g_fired++;
}

/* Runs the test thread's loop until *counter reaches target or WAIT_MS. */
static bool run_until(const int *counter, int target)
{
	uint64_t deadline = time_mono_ms() + WAIT_MS;
	while (*counter < target && time_mono_ms() < deadline) {
		struct timeval tv = { 0, 20000 };
		event_base_loopexit(F.base, &tv);
		event_base_dispatch(F.base);
	}
	return *counter >= target;
}

/* Polls (the writer pool works asynchronously) until pred() or WAIT_MS. */
static bool wait_for(bool (*pred)(void *), void *arg)
{
	uint64_t deadline = time_mono_ms() + WAIT_MS;
	while (!pred(arg)) {
		if (time_mono_ms() >= deadline)
			return false;
		struct timespec ts = { 0, 2 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	return true;
}

static size_t g_walk_count;
static const char *g_walk_skip;

static int walk_count_cb(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
	(void)ftw;
	if (type == FTW_F && S_ISREG(sb->st_mode) &&
	    (g_walk_skip == NULL || strncmp(path, g_walk_skip, strlen(g_walk_skip)) != 0))
		g_walk_count++;
	return 0;
}

/* Regular files under dir, ignoring those under `skip` (may be NULL). */
static size_t count_files(const char *dir, const char *skip)
{
	g_walk_count = 0;
	g_walk_skip = skip;
	if (nftw(dir, walk_count_cb, 16, FTW_PHYS) != 0 && errno != ENOENT)
		fail_msg("nftw %s: %s", dir, strerror(errno));
	return g_walk_count;
}

static char g_tmp_dir[4096];

static size_t tmp_files(void)
{
	return count_files(g_tmp_dir, NULL);
}

static bool tmp_empty(void *arg)
{
	(void)arg;
	return tmp_files() == 0;
}

/* Blob files in the final tree (everything but tmp/). */
static size_t blob_files(void)
{
	return count_files(F.s->store_blob_dir, g_tmp_dir);
}

static void fill_body(char *p, size_t len, unsigned seed)
{
	static const char hdr[] = "Subject: test\r\n\r\n";
	size_t i = 0;
	for (; i < len && i < sizeof(hdr) - 1; i++)
		p[i] = hdr[i];
	uint32_t x = seed * 2654435761u + 1;
	for (size_t col = 0; i < len; i++, col++) {
		if (col == 76 && i + 1 < len) {
			p[i++] = '\r';
			p[i] = '\n';
			col = (size_t)-1;
			continue;
		}
		x = x * 1103515245u + 12345u;
		p[i] = (char)('!' + (x >> 16) % 94);
	}
}

/* Appends body in pieces of `chunk` bytes; returns the first non-OK status. */
static enum status append_all(struct queue_msg *m, const char *body, size_t len, size_t chunk)
{
	enum status first = ST_OK;
	for (size_t off = 0; off < len; off += chunk) {
		size_t n = len - off < chunk ? len - off : chunk;
		enum status st = queue_msg_append(m, body + off, n);
		if (st != ST_OK && first == ST_OK)
			first = st;
	}
	return first;
}

static void add_accounts(struct queue_msg *m, const size_t *which, size_t n)
{
	for (size_t i = 0; i < n; i++)
		queue_msg_add_account(m, F.ids[which[i]], g_addresses[which[i]]);
}

/* One message start to finish; returns its done record. */
static struct done_rec deliver(const char *body, size_t len, size_t chunk, const size_t *which,
			       size_t n_which)
{
	struct done_rec r = { 0 };
	struct queue_msg *m = queue_msg_new(F.q, F.base);
	assert_int_equal(append_all(m, body, len, chunk), ST_OK);
	assert_int_equal(queue_msg_size(m), len);
	add_accounts(m, which, n_which);
	queue_msg_submit(m, on_done, &r);
	if (!run_until(&r.fired, 1))
		fail_msg("done callback did not run within %d ms", WAIT_MS);
	assert_int_equal(r.fired, 1);
	return r;
}

struct rows {
	size_t n;
	struct message_row r[2048];
};

static void rows_cb(void *ctx, const struct message_row *m)
{
	struct rows *rows = ctx;
	if (rows->n < ARRAY_LEN(rows->r))
		rows->r[rows->n] = *m;
	rows->n++;
}

static void inbox(size_t account, struct rows *out)
{
	out->n = 0;
	assert_int_equal(store_mailbox_list_messages(F.st, g_addresses[account], "INBOX", rows_cb, out),
			 ST_OK);
	assert_true(out->n <= ARRAY_LEN(out->r));
}

static void stats(struct store_stats *out)
{
	assert_int_equal(store_stats(F.st, out), ST_OK);
}

static void blob_path_of(const char *queue_id, char *path, size_t len)
{
	struct msgid id;
	assert_true(msgid_parse(queue_id, &id));
	store_blob_path(F.s->store_blob_dir, &id, path, len);
}

/* The blob holds exactly body + trailer, and the trailer describes it. */
static void check_blob(const char *queue_id, const char *body, size_t len, const size_t *which,
		       size_t n_which)
{
	char path[4096];
	blob_path_of(queue_id, path, sizeof(path));
	char *data = NULL;
	size_t flen = 0;
	if (!fs_read_file(path, &data, &flen))
		fail_msg("blob %s: %s", path, strerror(errno));
	assert_true(flen > len);
	if (memcmp(data, body, len) != 0) {
		size_t i = 0;
		while (data[i] == body[i])
			i++;
		fail_msg("blob %s differs from the message at byte %zu of %zu", path, i, len);
	}

	struct blob_meta meta;
	memset(&meta, 0, sizeof(meta));
	assert_int_equal(store_blob_read_meta(path, &meta), ST_OK);
	char idtext[MSGID_TEXT_LEN + 1];
	msgid_format(&meta.id, idtext);
	assert_string_equal(idtext, queue_id);
	assert_int_equal(meta.size, len);
	uint8_t h[32];
	char hex[65];
	crypto_generichash(h, sizeof(h), (const unsigned char *)body, len, NULL, 0);
	sodium_bin2hex(hex, sizeof(hex), h, sizeof(h));
	assert_string_equal(meta.hash_hex, hex);
	assert_int_equal(meta.n_rcpts, n_which);
	for (size_t i = 0; i < n_which; i++)
		assert_string_equal(meta.rcpt_addresses[i], g_addresses[which[i]]);
	int64_t now = (int64_t)time(NULL);
	assert_true(meta.received <= now && meta.received > now - 60);

	struct buf t = BUF_INIT;
	store_blob_trailer(&meta, &t);
	assert_int_equal(flen, len + t.len);
	assert_memory_equal(data + len, t.data, t.len);
	buf_free(&t);
	store_blob_meta_free(&meta);
	free(data);
}

/* The INBOX of `account` grew by exactly one row: queue_id, with the next UID. */
static void check_new_row(size_t account, const struct rows *before, const char *queue_id,
			  size_t size)
{
	static struct rows after;
	inbox(account, &after);
	assert_int_equal(after.n, before->n + 1);
	const struct message_row *row = &after.r[after.n - 1];
	char idtext[MSGID_TEXT_LEN + 1];
	msgid_format(&row->id, idtext);
	assert_string_equal(idtext, queue_id);
	assert_int_equal(row->size, size);
	/* nothing is ever expunged here, so UIDs are dense from 1 */
	uint32_t prev = before->n > 0 ? before->r[before->n - 1].uid : 0;
	if (row->uid != prev + 1)
		fail_msg("%s: new UID %u, want %u", g_addresses[account], row->uid, prev + 1);
	assert_int_equal(row->flags, 0);
}

/* ---- fixture ------------------------------------------------------------ */

static int rm_cb(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
	(void)sb;
	(void)type;
	(void)ftw;
	return remove(path);
}

static int group_setup(void **state)
{
	(void)state;
	if (sodium_init() < 0 || evthread_use_pthreads() != 0)
		return -1;
	log_init("queue_test", false, LOG_LVL_WARN);

	snprintf(F.dir, sizeof(F.dir), "/tmp/strata-queue-test-XXXXXX");
	if (mkdtemp(F.dir) == NULL)
		return -1;
	char conf[128];
	snprintf(conf, sizeof(conf), "%s/strata.conf", F.dir);
	int fd = open(conf, O_WRONLY | O_CREAT | O_EXCL, 0600);
	if (fd < 0)
		return -1;
	close(fd);

	char *over[4];
	over[0] = xasprintf("state_dir=%s", F.dir);
	over[1] = xstrdup("store.blob_writers=4");
	over[2] = xstrdup("smtp.max_message_size=4M");
	over[3] = xstrdup("store.commit_batch=512");
	char *err = NULL;
	F.s = config_load(conf, over, ARRAY_LEN(over), &err);
	for (size_t i = 0; i < ARRAY_LEN(over); i++)
		free(over[i]);
	if (F.s == NULL) {
		fprintf(stderr, "config_load: %s\n", err);
		free(err);
		return -1;
	}
	snprintf(g_tmp_dir, sizeof(g_tmp_dir), "%s/tmp", F.s->store_blob_dir);

	F.st = store_open(F.s, true, &err);
	if (F.st == NULL) {
		fprintf(stderr, "store_open: %s\n", err);
		free(err);
		return -1;
	}
	if (store_domain_add(F.st, "example.org", &err) != ST_OK) {
		fprintf(stderr, "store_domain_add: %s\n", err);
		free(err);
		return -1;
	}
	for (size_t i = 0; i < N_ACCOUNTS; i++) {
		struct account a;
		if (store_user_add(F.st, g_addresses[i], "{PLAIN}unused", 0, 0, &err) != ST_OK) {
			fprintf(stderr, "store_user_add %s: %s\n", g_addresses[i], err);
			free(err);
			return -1;
		}
		if (store_user_get(F.st, g_addresses[i], &a) != ST_OK)
			return -1;
		F.ids[i] = a.id;
	}
	F.q = queue_start(F.s, F.st, &err);
	if (F.q == NULL) {
		fprintf(stderr, "queue_start: %s\n", err);
		free(err);
		return -1;
	}
	F.base = event_base_new();
	return F.base != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
	(void)state;
	queue_stop(&F.q);
	if (F.base != NULL) {
		/* deliver anything queue_stop scheduled, then free */
		event_base_loop(F.base, EVLOOP_NONBLOCK);
		event_base_free(F.base);
	}
	store_close(&F.st);
	config_free(&F.s);
	nftw(F.dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	return 0;
}

/* ---- cases -------------------------------------------------------------- */

static void test_small_message(void **state)
{
	(void)state;
	static const char body[] = "From: a@example.net\r\nSubject: hi\r\n\r\nHello.\r\n";
	const size_t who[] = { 0 };
	struct rows before;
	struct store_stats s0, s1;
	inbox(0, &before);
	stats(&s0);
	uint64_t blobs0 = metric_get(M_STORE_BLOBS_WRITTEN);

	struct done_rec r = deliver(body, sizeof(body) - 1, 7, who, 1);
	assert_int_equal(r.st, ST_OK);
	assert_int_equal(strlen(r.id), MSGID_TEXT_LEN);

	check_blob(r.id, body, sizeof(body) - 1, who, 1);
	check_new_row(0, &before, r.id, sizeof(body) - 1);
	stats(&s1);
	assert_int_equal(s1.messages, s0.messages + 1);
	assert_int_equal(s1.blobs, s0.blobs + 1);
	assert_int_equal(metric_get(M_STORE_BLOBS_WRITTEN), blobs0 + 1);
	assert_int_equal(tmp_files(), 0);
	assert_int_equal(gauge_get(M_QUEUE_PENDING), 0);

	/* a second one gets the next UID */
	inbox(0, &before);
	r = deliver(body, sizeof(body) - 1, sizeof(body), who, 1);
	assert_int_equal(r.st, ST_OK);
	check_new_row(0, &before, r.id, sizeof(body) - 1);
}

static void test_large_message_spills(void **state)
{
	(void)state;
	const size_t len = 3u * 1024 * 1024;
	char *body = xmalloc(len);
	fill_body(body, len, 3);
	const size_t who[] = { 1 };
	struct rows before;
	inbox(1, &before);

	/* 16 KiB appends, as a session would feed them */
	struct done_rec r = deliver(body, len, 16384, who, 1);
	assert_int_equal(r.st, ST_OK);
	check_blob(r.id, body, len, who, 1);
	check_new_row(1, &before, r.id, len);

	/* and one append of the whole message */
	inbox(1, &before);
	fill_body(body, len, 4);
	r = deliver(body, len, len, who, 1);
	assert_int_equal(r.st, ST_OK);
	check_blob(r.id, body, len, who, 1);
	check_new_row(1, &before, r.id, len);
	assert_int_equal(tmp_files(), 0);
	free(body);
}

static void test_multi_account_stored_once(void **state)
{
	(void)state;
	static const char body[] = "Subject: to all\r\n\r\nOne copy, three mailboxes.\r\n";
	const size_t who[] = { 0, 1, 2 };
	struct rows before[N_ACCOUNTS];
	for (size_t i = 0; i < N_ACCOUNTS; i++)
		inbox(i, &before[i]);
	struct store_stats s0, s1;
	stats(&s0);
	size_t files0 = blob_files();

	struct queue_msg *m = queue_msg_new(F.q, F.base);
	assert_int_equal(queue_msg_append(m, body, sizeof(body) - 1), ST_OK);
	add_accounts(m, who, 3);
	/* duplicates (an alias and the account itself) are ignored */
	add_accounts(m, who, 3);
	struct done_rec r = { 0 };
	queue_msg_submit(m, on_done, &r);
	assert_true(run_until(&r.fired, 1));
	assert_int_equal(r.st, ST_OK);

	stats(&s1);
	assert_int_equal(s1.blobs, s0.blobs + 1);
	assert_int_equal(s1.messages, s0.messages + 3);
	assert_int_equal(blob_files(), files0 + 1);
	check_blob(r.id, body, sizeof(body) - 1, who, 3);
	char want[4096];
	blob_path_of(r.id, want, sizeof(want));
	for (size_t i = 0; i < N_ACCOUNTS; i++) {
		check_new_row(i, &before[i], r.id, sizeof(body) - 1);
		static struct rows after;
		inbox(i, &after);
		char path[4096];
		uint64_t size = 0;
		assert_int_equal(store_message_path(F.st, g_addresses[i], "INBOX",
						    after.r[after.n - 1].uid, path, sizeof(path), &size),
				 ST_OK);
		assert_string_equal(path, want);
		assert_int_equal(size, sizeof(body) - 1);
	}
}

/* The trailer stays printable ASCII whatever address the session passes. */
static void test_trailer_address_sanitized(void **state)
{
	(void)state;
	static const char body[] = "Subject: utf8\r\n\r\nx\r\n";
	struct queue_msg *m = queue_msg_new(F.q, F.base);
	assert_int_equal(queue_msg_append(m, body, sizeof(body) - 1), ST_OK);
	queue_msg_add_account(m, F.ids[0], "j\xc3\xb6rg\t@example.org");
	struct done_rec r = { 0 };
	queue_msg_submit(m, on_done, &r);
	assert_true(run_until(&r.fired, 1));
	assert_int_equal(r.st, ST_OK);
	char path[4096];
	blob_path_of(r.id, path, sizeof(path));
	struct blob_meta meta;
	memset(&meta, 0, sizeof(meta));
	assert_int_equal(store_blob_read_meta(path, &meta), ST_OK);
	assert_int_equal(meta.n_rcpts, 1);
	assert_string_equal(meta.rcpt_addresses[0], "j??rg?@example.org");
	store_blob_meta_free(&meta);
}

static void test_too_big(void **state)
{
	(void)state;
	const size_t piece = 256u * 1024;
	char *buf = xmalloc(piece);
	fill_body(buf, piece, 9);
	const size_t who[] = { 0 };
	struct store_stats s0, s1;
	stats(&s0);

	struct queue_msg *m = queue_msg_new(F.q, F.base);
	add_accounts(m, who, 1);
	/* 4 MiB is the limit: 16 pieces fit, the 17th does not */
	for (int i = 0; i < 16; i++)
		assert_int_equal(queue_msg_append(m, buf, piece), ST_OK);
	assert_int_equal(queue_msg_size(m), 16 * piece);
	assert_int_equal(queue_msg_append(m, buf, piece), ST_TOO_BIG);
	assert_int_equal(queue_msg_append(m, buf, 1), ST_TOO_BIG);
	assert_int_equal(queue_msg_append(m, buf, 0), ST_TOO_BIG);
	struct done_rec r = { 0 };
	queue_msg_submit(m, on_done, &r);
	assert_true(run_until(&r.fired, 1));
	assert_int_equal(r.st, ST_TOO_BIG);
	assert_int_equal(status_info(r.st)->smtp_code, 552);

	stats(&s1);
	assert_int_equal(s1.messages, s0.messages);
	assert_int_equal(tmp_files(), 0);
	free(buf);
}

struct pending_ctx {
	struct queue_msg *m;
	size_t tmp_want;
};

static bool spool_settled(void *arg)
{
	struct pending_ctx *c = arg;
	return queue_msg_pending_bytes(c->m) == 0 && tmp_files() == c->tmp_want;
}

static void test_abort(void **state)
{
	(void)state;
	const size_t len = 1024u * 1024;
	char *body = xmalloc(len);
	fill_body(body, len, 5);
	struct store_stats s0, s1;
	stats(&s0);
	size_t files0 = blob_files();

	/* spilled: its temp file exists, and abort removes it (on the pool) */
	struct queue_msg *m = queue_msg_new(F.q, F.base);
	assert_int_equal(append_all(m, body, len, 65536), ST_OK);
	struct pending_ctx c = { m, 1 };
	if (!wait_for(spool_settled, &c))
		fail_msg("spool did not settle: pending %zu, temp files %zu (want 0 and 1)",
			 queue_msg_pending_bytes(m), tmp_files());
	queue_msg_abort(&m);
	assert_null(m);
	if (!wait_for(tmp_empty, NULL))
		fail_msg("temp file still there after abort: %zu", tmp_files());

	/* never spilled: nothing on disk at all */
	m = queue_msg_new(F.q, F.base);
	assert_int_equal(queue_msg_append(m, body, 1000), ST_OK);
	assert_int_equal(queue_msg_pending_bytes(m), 0);
	assert_int_equal(tmp_files(), 0);
	queue_msg_abort(&m);
	queue_msg_abort(&m); /* NULL is a no-op */

	stats(&s1);
	assert_int_equal(s1.messages, s0.messages);
	assert_int_equal(blob_files(), files0);
	free(body);
}

static int g_drained;

static void on_drained(void *arg)
{
	int *n = arg;
	(*n)++;
}

static void test_backpressure_drained(void **state)
{
	(void)state;
	const size_t len = 2u * 1024 * 1024;
	static const char tail[] = "tail\r\n";
	char *body = xmalloc(len + sizeof(tail) - 1);
	fill_body(body, len, 6);
	memcpy(body + len, tail, sizeof(tail) - 1);
	const size_t who[] = { 2 };

	struct queue_msg *m = queue_msg_new(F.q, F.base);
	g_drained = 0;
	queue_msg_set_drained_cb(m, on_drained, &g_drained);
	/* one append above the high-water mark: the backlog exceeds it at once */
	assert_int_equal(queue_msg_append(m, body, len), ST_OK);
	assert_true(queue_msg_pending_bytes(m) <= len);
	if (!run_until(&g_drained, 1))
		fail_msg("drained callback did not run (pending %zu)", queue_msg_pending_bytes(m));
	assert_int_equal(queue_msg_pending_bytes(m), 0);
	/* a small tail does not cross the mark again: no second callback */
	assert_int_equal(queue_msg_append(m, tail, sizeof(tail) - 1), ST_OK);
	add_accounts(m, who, 1);
	struct done_rec r = { 0 };
	queue_msg_submit(m, on_done, &r);
	assert_true(run_until(&r.fired, 1));
	assert_int_equal(r.st, ST_OK);
	assert_int_equal(g_drained, 1);
	check_blob(r.id, body, len + sizeof(tail) - 1, who, 1);
	free(body);
}

/* Many sessions at once: the committer batches them. */
static void test_group_commit(void **state)
{
	(void)state;
	enum { N = 500, LEN = 1500 };
	static char bodies[N][LEN];
	static struct done_rec recs[N];
	struct rows before[N_ACCOUNTS];
	for (size_t i = 0; i < N_ACCOUNTS; i++)
		inbox(i, &before[i]);
	struct store_stats s0, s1;
	stats(&s0);
	uint64_t commits0 = metric_get(M_STORE_COMMITS);
	int fired0 = g_fired;

	for (size_t i = 0; i < N; i++) {
		memset(&recs[i], 0, sizeof(recs[i]));
		fill_body(bodies[i], LEN, (unsigned)(100 + i));
		struct queue_msg *m = queue_msg_new(F.q, F.base);
		assert_int_equal(queue_msg_append(m, bodies[i], LEN), ST_OK);
		const size_t who[] = { i % N_ACCOUNTS };
		add_accounts(m, who, 1);
		queue_msg_submit(m, on_done, &recs[i]);
	}
	if (!run_until(&g_fired, fired0 + N))
		fail_msg("only %d of %d done callbacks ran", g_fired - fired0, N);

	/* Unhindered, batches form from whatever finished during the previous
	 * commit: how many depends on the disk, but never one per message. */
	uint64_t commits = metric_get(M_STORE_COMMITS) - commits0;
	print_message("%d deliveries in %llu index transactions\n", N, (unsigned long long)commits);
	if (commits == 0 || commits > N / 2)
		fail_msg("expected group commit: %llu transactions for %d deliveries",
			 (unsigned long long)commits, N);
	for (size_t i = 0; i < N; i++) {
		if (recs[i].fired != 1 || recs[i].st != ST_OK)
			fail_msg("message %zu: fired %d status %s", i, recs[i].fired,
				 status_info(recs[i].st)->name);
	}
	stats(&s1);
	assert_int_equal(s1.messages, s0.messages + N);
	assert_int_equal(s1.blobs, s0.blobs + N);
	for (size_t a = 0; a < N_ACCOUNTS; a++) {
		static struct rows after;
		inbox(a, &after);
		size_t want = N / N_ACCOUNTS + (a < N % N_ACCOUNTS ? 1 : 0);
		assert_int_equal(after.n, before[a].n + want);
	}
	/* spot-check content */
	const size_t spot[] = { 0, 1, 250, 499 };
	for (size_t i = 0; i < ARRAY_LEN(spot); i++) {
		const size_t who[] = { spot[i] % N_ACCOUNTS };
		check_blob(recs[spot[i]].id, bodies[spot[i]], LEN, who, 1);
	}
	assert_int_equal(gauge_get(M_QUEUE_PENDING), 0);
	assert_int_equal(tmp_files(), 0);
}

static bool blobs_written_reach(void *arg)
{
	return metric_get(M_STORE_BLOBS_WRITTEN) >= *(const uint64_t *)arg;
}

/* While one transaction is stuck (another process holds the index's write
 * lock), every delivery that becomes durable meanwhile joins the next one. */
static void test_group_commit_behind_busy_index(void **state)
{
	(void)state;
	enum { N = 500, LEN = 700 };
	static struct done_rec recs[N];
	char body[LEN];
	struct store_stats s0, s1;
	stats(&s0);

	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open_v2(F.s->store_index_path, &db, SQLITE_OPEN_READWRITE, NULL),
			 SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
	uint64_t commits0 = metric_get(M_STORE_COMMITS);
	uint64_t want_blobs = metric_get(M_STORE_BLOBS_WRITTEN) + N;
	int fired0 = g_fired;

	for (size_t i = 0; i < N; i++) {
		memset(&recs[i], 0, sizeof(recs[i]));
		fill_body(body, LEN, (unsigned)(7000 + i));
		struct queue_msg *m = queue_msg_new(F.q, F.base);
		assert_int_equal(queue_msg_append(m, body, LEN), ST_OK);
		const size_t who[] = { i % N_ACCOUNTS };
		add_accounts(m, who, 1);
		queue_msg_submit(m, on_done, &recs[i]);
	}
	bool all_durable = wait_for(blobs_written_reach, &want_blobs);
	/* nothing may be answered while the index cannot commit */
	event_base_loop(F.base, EVLOOP_NONBLOCK);
	int early = g_fired - fired0;
	assert_int_equal(sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
	if (!all_durable)
		fail_msg("blobs not written while the index was locked");
	assert_int_equal(early, 0);

	if (!run_until(&g_fired, fired0 + N))
		fail_msg("only %d of %d done callbacks ran", g_fired - fired0, N);
	uint64_t commits = metric_get(M_STORE_COMMITS) - commits0;
	print_message("%d deliveries behind a busy index: %llu transactions\n", N,
		      (unsigned long long)commits);
	/* the one stuck, then (nearly) everything else in one */
	if (commits < 2 || commits > 3)
		fail_msg("%llu transactions for %d deliveries, want 2 or 3",
			 (unsigned long long)commits, N);
	for (size_t i = 0; i < N; i++) {
		if (recs[i].fired != 1 || recs[i].st != ST_OK)
			fail_msg("message %zu: fired %d status %s", i, recs[i].fired,
				 status_info(recs[i].st)->name);
	}
	stats(&s1);
	assert_int_equal(s1.messages, s0.messages + N);
	assert_int_equal(gauge_get(M_QUEUE_PENDING), 0);
}

struct fault_case {
	const char *label;
	enum fs_fault_op op;
	uint64_t nth;
	int err;
	size_t len;            /* message size: above 256 KiB it spills */
	bool dir_exists;       /* pre-create the blob directory (no mkdir fsync) */
	enum status want;
};

static const struct fault_case fault_cases[] = {
	{ "temp file open fails (EIO)", FS_OP_OPEN, 1, EIO, 2000, false, ST_IO_ERROR },
	{ "write fails (ENOSPC)", FS_OP_WRITE, 1, ENOSPC, 2000, false, ST_NO_SPACE },
	{ "write fails mid-spill (ENOSPC)", FS_OP_WRITE, 2, ENOSPC, 600 * 1024, false, ST_NO_SPACE },
	{ "trailer write fails (EIO)", FS_OP_WRITE, 2, EIO, 2000, false, ST_IO_ERROR },
	{ "file fsync fails (EIO)", FS_OP_FSYNC, 1, EIO, 2000, false, ST_IO_ERROR },
	{ "file fsync fails (ENOSPC)", FS_OP_FSYNC, 1, ENOSPC, 300 * 1024, false, ST_NO_SPACE },
	{ "rename fails (EIO)", FS_OP_RENAME, 1, EIO, 2000, false, ST_IO_ERROR },
	{ "rename fails (ENOSPC), spilled", FS_OP_RENAME, 1, ENOSPC, 400 * 1024, false, ST_NO_SPACE },
	{ "blob directory fsync fails (EIO)", FS_OP_FSYNC_DIR, 1, EIO, 2000, true, ST_IO_ERROR },
	{ "directory fsync fails, any (EIO)", FS_OP_FSYNC_DIR, 1, EIO, 2000, false, ST_IO_ERROR },
};

static void test_faults(void **state)
{
	(void)state;
	char *body = xmalloc(600 * 1024);
	const size_t who[] = { 0, 1 };

	for (size_t i = 0; i < ARRAY_LEN(fault_cases); i++) {
		const struct fault_case *fc = &fault_cases[i];
		print_message("fault case: %s\n", fc->label);
		fill_body(body, fc->len, (unsigned)(1000 + i));
		struct rows before0, before1, after0, after1;
		inbox(0, &before0);
		inbox(1, &before1);
		struct store_stats s0, s1;
		stats(&s0);
		size_t files0 = blob_files();

		struct queue_msg *m = queue_msg_new(F.q, F.base);
		char path[4096];
		blob_path_of(queue_msg_id(m), path, sizeof(path));
		if (fc->dir_exists) {
			char dir[4096];
			struct msgid id;
			assert_true(msgid_parse(queue_msg_id(m), &id));
			store_blob_dir_of(F.s->store_blob_dir, &id, dir, sizeof(dir));
			assert_true(fs_mkdir_p(dir, 0700));
		}
		fs_fault_set(fc->op, fc->nth, fc->err, true);
		assert_int_equal(append_all(m, body, fc->len, 32768), ST_OK);
		add_accounts(m, who, 2);
		struct done_rec r = { 0 };
		queue_msg_submit(m, on_done, &r);
		bool fired = run_until(&r.fired, 1);
		fs_fault_set(fc->op, 0, 0, false);
		if (!fired)
			fail_msg("%s: no done callback", fc->label);

		const struct status_info *si = status_info(r.st);
		if (r.st != fc->want || si->smtp_code / 100 != 4)
			fail_msg("%s: status %s (%d %s), want %s", fc->label, si->name, si->smtp_code,
				 si->smtp_enh, status_info(fc->want)->name);
		size_t tmp_n = tmp_files(), files_n = blob_files();
		if (tmp_n != 0 || files_n != files0)
			fail_msg("%s: %zu temp file(s), %zu blob file(s) (want 0 and %zu)", fc->label,
				 tmp_n, files_n, files0);
		struct stat sb;
		if (stat(path, &sb) == 0)
			fail_msg("%s: blob %s exists", fc->label, path);
		stats(&s1);
		if (s1.messages != s0.messages || s1.blobs != s0.blobs)
			fail_msg("%s: index has %llu messages / %llu blobs, want %llu / %llu", fc->label,
				 (unsigned long long)s1.messages, (unsigned long long)s1.blobs,
				 (unsigned long long)s0.messages, (unsigned long long)s0.blobs);
		inbox(0, &after0);
		inbox(1, &after1);
		assert_int_equal(after0.n, before0.n);
		assert_int_equal(after1.n, before1.n);
	}
	assert_int_equal(gauge_get(M_QUEUE_PENDING), 0);

	/* and with the faults gone, delivery works again */
	fill_body(body, 5000, 77);
	struct done_rec r = deliver(body, 5000, 5000, who, 2);
	assert_int_equal(r.st, ST_OK);
	check_blob(r.id, body, 5000, who, 2);
	free(body);
}

static void test_recover(void **state)
{
	(void)state;
	size_t files0 = blob_files();
	for (int i = 0; i < 3; i++) {
		char path[4096];
		int fd = fs_open_temp(g_tmp_dir, path, sizeof(path));
		assert_true(fd >= 0);
		assert_true(fs_write_all(fd, "partial", 7));
		assert_true(fs_close(fd));
	}
	assert_int_equal(tmp_files(), 3);
	queue_recover(F.s);
	assert_int_equal(tmp_files(), 0);
	assert_int_equal(blob_files(), files0);
	/* an empty spool directory is fine too */
	queue_recover(F.s);
	assert_int_equal(tmp_files(), 0);
}

struct stopper {
	pthread_t t;
	struct queue *q;
};

static void *stopper_main(void *arg)
{
	struct stopper *sp = arg;
	queue_stop(&sp->q);
	return NULL;
}

/* queue_stop answers every submitted message, and refuses new ones. */
static void test_stop(void **state)
{
	(void)state;
	enum { N = 50 };
	static struct done_rec recs[N];
	char body[800];
	fill_body(body, sizeof(body), 55);
	const size_t who[] = { 2 };
	struct store_stats s0, s1;
	stats(&s0);

	for (size_t i = 0; i < N; i++) {
		memset(&recs[i], 0, sizeof(recs[i]));
		struct queue_msg *m = queue_msg_new(F.q, F.base);
		assert_int_equal(queue_msg_append(m, body, sizeof(body)), ST_OK);
		add_accounts(m, who, 1);
		queue_msg_submit(m, on_done, &recs[i]);
	}
	/* returns once every done callback is scheduled on our (idle) base */
	queue_stop(&F.q);
	assert_null(F.q);
	int fired = 0;
	for (size_t i = 0; i < N; i++)
		fired += recs[i].fired;
	assert_int_equal(fired, 0); /* they run on the base, not in queue_stop */
	event_base_loop(F.base, EVLOOP_NONBLOCK);
	for (size_t i = 0; i < N; i++) {
		assert_int_equal(recs[i].fired, 1);
		assert_int_equal(recs[i].st, ST_OK);
	}
	stats(&s1);
	assert_int_equal(s1.messages, s0.messages + N);

	/* a submit while stopping gets ST_SHUTDOWN: hold a transaction open so
	 * queue_stop (on another thread) waits, and submit until it refuses */
	char *err = NULL;
	F.q = queue_start(F.s, F.st, &err);
	assert_non_null(F.q);
	struct queue_msg *open_msg = queue_msg_new(F.q, F.base);
	assert_int_equal(queue_msg_append(open_msg, body, sizeof(body)), ST_OK);
	struct stopper sp = { .q = F.q };
	struct queue *q = F.q;
	F.q = NULL;
	assert_int_equal(pthread_create(&sp.t, NULL, stopper_main, &sp), 0);
	struct done_rec r = { 0 };
	for (int attempt = 0; attempt < 500; attempt++) {
		memset(&r, 0, sizeof(r));
		struct queue_msg *m = queue_msg_new(q, F.base);
		assert_int_equal(queue_msg_append(m, body, sizeof(body)), ST_OK);
		add_accounts(m, who, 1);
		queue_msg_submit(m, on_done, &r);
		assert_true(run_until(&r.fired, 1));
		if (r.st == ST_SHUTDOWN)
			break;
		assert_int_equal(r.st, ST_OK);
	}
	assert_int_equal(r.st, ST_SHUTDOWN);
	assert_int_equal(status_info(r.st)->smtp_code, 421);
	/* a spilled message refused at stop leaves no temp file */
	const size_t len = 512u * 1024;
	char *big = xmalloc(len);
	fill_body(big, len, 56);
	struct queue_msg *m = queue_msg_new(q, F.base);
	assert_int_equal(queue_msg_append(m, big, len), ST_OK);
	add_accounts(m, who, 1);
	memset(&r, 0, sizeof(r));
	queue_msg_submit(m, on_done, &r);
	assert_true(run_until(&r.fired, 1));
	assert_int_equal(r.st, ST_SHUTDOWN);
	free(big);

	queue_msg_abort(&open_msg);
	assert_int_equal(pthread_join(sp.t, NULL), 0);
	assert_null(sp.q);
	assert_int_equal(tmp_files(), 0);
	assert_int_equal(gauge_get(M_QUEUE_PENDING), 0);

	F.q = queue_start(F.s, F.st, &err);
	assert_non_null(F.q);
}

/* ---- outbound (submission to remote recipients) ------------------------- */

static int g_outbound_wakes;
static void on_outbound(void *arg)
{
	(void)arg;
	__atomic_add_fetch(&g_outbound_wakes, 1, __ATOMIC_SEQ_CST);
}

/* The rows of one message, by queue id. */
static size_t outbound_rows(const char *queue_id, struct store_outbound **rows)
{
	struct msgid id;
	assert_true(msgid_parse(queue_id, &id));
	size_t n = 0;
	char *err = NULL;
	assert_int_equal(store_outbound_by_msgid(F.st, &id, rows, &n, &err), ST_OK);
	return n;
}

static int64_t blob_refcount(const char *queue_id)
{
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open_v2(F.s->store_index_path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	sqlite3_stmt *q = NULL;
	assert_int_equal(sqlite3_prepare_v2(db, "SELECT refcount FROM blobs WHERE msgid = ?1", -1, &q, NULL),
			 SQLITE_OK);
	struct msgid id;
	assert_true(msgid_parse(queue_id, &id));
	sqlite3_bind_blob(q, 1, id.b, MSGID_BYTES, SQLITE_STATIC);
	int64_t n = sqlite3_step(q) == SQLITE_ROW ? sqlite3_column_int64(q, 0) : -1;
	sqlite3_finalize(q);
	sqlite3_close(db);
	return n;
}

static void verify_clean(void)
{
	struct store_verify_result vr;
	char *err = NULL;
	assert_int_equal(store_verify(F.s, NULL, NULL, &vr, &err), ST_OK);
	if (vr.problems != 0)
		fail_msg("store verify: %llu problems, want 0", (unsigned long long)vr.problems);
}

struct outbound_case {
	const char *label;
	size_t n_accounts;            /* accounts 0..n-1 */
	const char *sender;
	const char *remotes[4];       /* NULL-terminated; duplicates allowed */
	size_t want_remotes;          /* distinct */
};

static const struct outbound_case outbound_cases[] = {
	{ "remote only", 0, "alice@example.org", { "x@example.net", "y@example.com", "x@example.net", NULL }, 2 },
	{ "local and remote", 2, "alice@example.org", { "z@example.net", NULL }, 1 },
	{ "null sender, UTF-8 and xtext bytes", 0, "",
	  { "j\xc3\xb6rg@example.net", "a+b=c d@example.net", NULL }, 2 },
};

static void outbound_case_run(const struct outbound_case *c)
{
	static const char body[] = "From: alice@example.org\r\nSubject: out\r\n\r\nto the world\r\n";
	struct rows before;
	inbox(0, &before);
	int wakes0 = __atomic_load_n(&g_outbound_wakes, __ATOMIC_SEQ_CST);
	struct queue_msg *m = queue_msg_new(F.q, F.base);
	assert_int_equal(queue_msg_append(m, body, sizeof(body) - 1), ST_OK);
	const size_t who[] = { 0, 1, 2 };
	add_accounts(m, who, c->n_accounts);
	queue_msg_set_sender(m, c->sender);
	for (size_t i = 0; c->remotes[i] != NULL; i++)
		queue_msg_add_remote(m, c->remotes[i]);
	struct done_rec r = { 0 };
	queue_msg_submit(m, on_done, &r);
	assert_true(run_until(&r.fired, 1));
	if (r.st != ST_OK)
		fail_msg("%s: status %s, want OK", c->label, status_info(r.st)->name);

	/* one row per distinct remote, one reference each plus the accounts' */
	struct store_outbound *rows = NULL;
	size_t n = outbound_rows(r.id, &rows);
	if (n != c->want_remotes)
		fail_msg("%s: %zu outbound rows, want %zu", c->label, n, c->want_remotes);
	for (size_t i = 0; i < n; i++) {
		assert_string_equal(rows[i].sender, c->sender);
		assert_string_equal(rows[i].recipient, c->remotes[i]);
		assert_int_equal(rows[i].attempts, 0);
		assert_int_equal(rows[i].size, sizeof(body) - 1);
		assert_true(rows[i].next_attempt <= (int64_t)time(NULL));
	}
	free(rows);
	int64_t refs = blob_refcount(r.id);
	if (refs != (int64_t)(c->n_accounts + c->want_remotes))
		fail_msg("%s: refcount %lld, want %zu", c->label, (long long)refs, c->n_accounts + c->want_remotes);
	if (c->n_accounts > 0)
		check_new_row(0, &before, r.id, sizeof(body) - 1);

	/* the trailer names sender and remotes, byte for byte */
	char path[4096];
	blob_path_of(r.id, path, sizeof(path));
	struct blob_meta meta;
	memset(&meta, 0, sizeof(meta));
	assert_int_equal(store_blob_read_meta(path, &meta), ST_OK);
	assert_int_equal(meta.n_rcpts, c->n_accounts);
	assert_int_equal(meta.n_remotes, c->want_remotes);
	assert_string_equal(meta.sender, c->sender);
	for (size_t i = 0; i < meta.n_remotes; i++)
		assert_string_equal(meta.remote_addresses[i], c->remotes[i]);
	store_blob_meta_free(&meta);
	/* the committer woke the relay (it runs before or after the done callback) */
	for (int i = 0; i < 500 && __atomic_load_n(&g_outbound_wakes, __ATOMIC_SEQ_CST) == wakes0; i++) {
		struct timespec ts = { 0, 2 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	assert_true(__atomic_load_n(&g_outbound_wakes, __ATOMIC_SEQ_CST) > wakes0);
}

static void test_outbound_rows(void **state)
{
	(void)state;
	queue_set_outbound_cb(F.q, on_outbound, NULL);
	for (size_t i = 0; i < ARRAY_LEN(outbound_cases); i++)
		outbound_case_run(&outbound_cases[i]);
	verify_clean();
	queue_set_outbound_cb(F.q, NULL, NULL);
}

/* Refused envelopes: nothing is stored, no file is left. */
static void test_outbound_invalid(void **state)
{
	(void)state;
	static const char body[] = "Subject: bad\r\n\r\nx\r\n";
	char long_addr[400];
	memset(long_addr, 'a', sizeof(long_addr) - 1);
	long_addr[sizeof(long_addr) - 1] = '\0';
	const struct {
		const char *label, *sender, *remote;
	} cases[] = {
		{ "no recipient at all", "a@example.org", NULL },
		{ "remote too long", "a@example.org", long_addr },
		{ "sender too long", long_addr, "x@example.net" },
		{ "empty remote", "a@example.org", "" },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		size_t files0 = blob_files();
		uint64_t n0 = 0;
		char *err = NULL;
		assert_int_equal(store_outbound_count(F.st, &n0, &err), ST_OK);
		struct queue_msg *m = queue_msg_new(F.q, F.base);
		assert_int_equal(queue_msg_append(m, body, sizeof(body) - 1), ST_OK);
		queue_msg_set_sender(m, cases[i].sender);
		if (cases[i].remote != NULL)
			queue_msg_add_remote(m, cases[i].remote);
		struct done_rec r = { 0 };
		queue_msg_submit(m, on_done, &r);
		assert_true(run_until(&r.fired, 1));
		if (r.st != ST_INVALID)
			fail_msg("%s: status %s, want INVALID", cases[i].label, status_info(r.st)->name);
		uint64_t n1 = 0;
		assert_int_equal(store_outbound_count(F.st, &n1, &err), ST_OK);
		assert_int_equal(n1, n0);
		assert_int_equal(blob_files(), files0);
		assert_int_equal(tmp_files(), 0);
	}
}

/* Defer, flush and removal: the last reference frees the blob and its file. */
static void test_outbound_lifecycle(void **state)
{
	(void)state;
	static const char body[] = "Subject: life\r\n\r\nof a queue entry\r\n";
	struct queue_msg *m = queue_msg_new(F.q, F.base);
	assert_int_equal(queue_msg_append(m, body, sizeof(body) - 1), ST_OK);
	queue_msg_set_sender(m, "alice@example.org");
	queue_msg_add_remote(m, "p@example.net");
	queue_msg_add_remote(m, "q@example.net");
	struct done_rec r = { 0 };
	queue_msg_submit(m, on_done, &r);
	assert_true(run_until(&r.fired, 1));
	assert_int_equal(r.st, ST_OK);
	struct store_outbound *rows = NULL;
	assert_int_equal(outbound_rows(r.id, &rows), 2);
	int64_t ids[2] = { rows[0].id, rows[1].id };
	free(rows);
	char *err = NULL;
	int64_t now = (int64_t)time(NULL);

	/* deferred: not due now, due later, attempts and error recorded */
	assert_int_equal(store_outbound_defer(F.st, &ids[0], 1, now + 600, "451 4.3.0 try later", &err), ST_OK);
	struct store_outbound o;
	assert_int_equal(store_outbound_get(F.st, ids[0], &o, &err), ST_OK);
	assert_int_equal(o.attempts, 1);
	assert_int_equal(o.next_attempt, now + 600);
	assert_string_equal(o.last_error, "451 4.3.0 try later");
	size_t n = 0;
	assert_int_equal(store_outbound_due(F.st, now, NULL, 1000, &rows, &n, &err), ST_OK);
	for (size_t i = 0; i < n; i++)
		assert_true(rows[i].id != ids[0]);
	free(rows);
	assert_int_equal(store_outbound_due(F.st, now + 600, NULL, 1000, &rows, &n, &err), ST_OK);
	bool seen = false;
	for (size_t i = 0; i < n; i++)
		seen = seen || rows[i].id == ids[0];
	assert_true(seen);
	/* paging: one row at a time after the previous one visits every row once */
	size_t total = n, paged = 0;
	free(rows);
	struct store_outbound last, *page = NULL;
	bool have_last = false;
	for (size_t k = 0; k <= total; k++) {
		assert_int_equal(store_outbound_due(F.st, now + 600, have_last ? &last : NULL, 1, &page, &n, &err), ST_OK);
		if (n == 0)
			break;
		if (have_last)
			assert_true(page[0].next_attempt > last.next_attempt ||
				    (page[0].next_attempt == last.next_attempt && page[0].id > last.id));
		last = page[0];
		have_last = true;
		paged++;
		free(page);
	}
	if (paged != total)
		fail_msg("paging saw %zu rows, one page saw %zu", paged, total);
	/* flush makes it due now */
	size_t flushed = 0;
	assert_int_equal(store_outbound_flush(F.st, now, &flushed, &err), ST_OK);
	assert_true(flushed >= 1);
	assert_int_equal(store_outbound_get(F.st, ids[0], &o, &err), ST_OK);
	assert_int_equal(o.next_attempt, now);

	/* removal: one reference at a time; the file goes with the last */
	char path[4096];
	blob_path_of(r.id, path, sizeof(path));
	size_t removed = 0;
	assert_int_equal(store_outbound_remove(F.st, &ids[0], 1, &removed, &err), ST_OK);
	assert_int_equal(removed, 1);
	assert_int_equal(blob_refcount(r.id), 1);
	assert_int_equal(access(path, F_OK), 0);
	/* removing twice is harmless */
	assert_int_equal(store_outbound_remove(F.st, ids, 2, &removed, &err), ST_OK);
	assert_int_equal(removed, 1);
	assert_int_equal(blob_refcount(r.id), -1);
	assert_int_equal(access(path, F_OK), -1);
	assert_int_equal(store_outbound_get(F.st, ids[1], &o, &err), ST_NOT_FOUND);
	free(err);
	verify_clean();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_small_message),
		cmocka_unit_test(test_large_message_spills),
		cmocka_unit_test(test_multi_account_stored_once),
		cmocka_unit_test(test_trailer_address_sanitized),
		cmocka_unit_test(test_too_big),
		cmocka_unit_test(test_abort),
		cmocka_unit_test(test_backpressure_drained),
		cmocka_unit_test(test_group_commit),
		cmocka_unit_test(test_group_commit_behind_busy_index),
		cmocka_unit_test(test_faults),
		cmocka_unit_test(test_recover),
		cmocka_unit_test(test_stop),
		cmocka_unit_test(test_outbound_rows),
		cmocka_unit_test(test_outbound_invalid),
		cmocka_unit_test(test_outbound_lifecycle),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
