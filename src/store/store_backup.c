/*
 * store_backup.c - online backups of the index, and the daemon's backup thread.
 *
 * Owns: store_backup_run (one backup), the backup thread, the list of
 * backups in store.backup_dir, and the integrity check both this file and
 * the rebuild run on a copy before trusting it.
 *
 * A backup is <store.backup_dir>/index-<YYYYmmddTHHMMSS.mmmZ>.db, a
 * self-contained SQLite file (rollback-journal mode, no -wal beside it), so
 * it can be copied, inspected with sqlite3, or restored by rebuild.  The
 * names sort by time, oldest first.
 *
 * Durability: the copy is made with SQLite's online backup API from a
 * read-only connection in one read transaction (a consistent snapshot; the
 * daemon's writer is not blocked under WAL) into ".tmp-index-<time>.db",
 * then PRAGMA integrity_check'ed, fsynced, renamed into place and the
 * directory fsynced.  Only after that are the oldest backups beyond
 * store.backup_keep deleted, so a failure never leaves fewer verified
 * backups than before.  Backups hold password hashes: mode 0640, the
 * directory 0750.
 *
 * Threads: store_backup_run may run on any thread (its own connections);
 * the backup thread sleeps on a monotonic condition variable and is woken
 * by store_backup_stop.
 */
#include "store_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BACKUP_PREFIX "index-"
#define BACKUP_SUFFIX ".db"
/* "index-" + "20261128T232800.123Z" + ".db" */
#define BACKUP_NAME_LEN (sizeof(BACKUP_PREFIX) - 1 + 20 + sizeof(BACKUP_SUFFIX) - 1)
#define BACKUP_MAX_LISTED 100000
#define BACKUP_BUSY_RETRIES 200
#define BACKUP_BUSY_SLEEP_MS 50
#define BACKUP_TIMEOUT_MS 10000

/* ---- checks shared with the rebuild ---------------------------------------- */

bool store_db_check(sqlite3 *db, bool full, char **error_r)
{
	const char *sql = full ? "PRAGMA integrity_check(20)" : "PRAGMA quick_check(20)";
	sqlite3_stmt *q = NULL;
	int rc = sqlite3_prepare_v2(db, sql, -1, &q, NULL);
	struct buf msg = BUF_INIT;
	unsigned rows = 0;
	bool ok = false;
	while (rc == SQLITE_OK && (rc = sqlite3_step(q)) == SQLITE_ROW && rows < 20) {
		const char *t = (const char *)sqlite3_column_text(q, 0);
		if (rows++ == 0 && t != NULL && strcmp(t, "ok") == 0)
			ok = true;
		else
			buf_printf(&msg, "%s%s", msg.len ? "; " : "", t ? t : "?");
		rc = SQLITE_OK;
	}
	if (rc != SQLITE_DONE && rc != SQLITE_OK && rc != SQLITE_ROW) {
		ok = false;
		buf_printf(&msg, "%s%s", msg.len ? "; " : "", sqlite3_errmsg(db));
	}
	sqlite3_finalize(q);
	if (!ok && error_r)
		*error_r = xasprintf("%s failed: %s", full ? "integrity_check" : "quick_check",
				     msg.len ? msg.data : "no answer");
	buf_free(&msg);
	return ok;
}

/* ---- the list of backups -------------------------------------------------- */

static bool backup_name_ok(const char *n)
{
	if (strlen(n) != BACKUP_NAME_LEN || strncmp(n, BACKUP_PREFIX, sizeof(BACKUP_PREFIX) - 1) != 0 ||
	    strcmp(n + BACKUP_NAME_LEN - (sizeof(BACKUP_SUFFIX) - 1), BACKUP_SUFFIX) != 0)
		return false;
	const char *t = n + sizeof(BACKUP_PREFIX) - 1;
	static const char pattern[] = "dddddddd" "Tdddddd.dddZ";
	for (size_t i = 0; i < sizeof(pattern) - 1; i++) {
		if (pattern[i] == 'd' ? (t[i] < '0' || t[i] > '9') : t[i] != pattern[i])
			return false;
	}
	return true;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

size_t store_backup_list(const char *dir, char ***paths_r)
{
	*paths_r = NULL;
	DIR *d = opendir(dir);
	if (d == NULL)
		return 0;
	char **names = NULL;
	size_t n = 0, cap = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL && n < BACKUP_MAX_LISTED) {
		if (!backup_name_ok(e->d_name))
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			names = xreallocarray(names, cap, sizeof(*names));
		}
		names[n++] = xasprintf("%s/%s", dir, e->d_name);
	}
	closedir(d);
	if (n > 1)
		qsort(names, n, sizeof(*names), cmp_str);
	*paths_r = names;
	return n;
}

void store_backup_list_free(char **paths, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(paths[i]);
	free(paths);
}

/* ---- one backup -------------------------------------------------------------- */

static void time_tag(char *out, size_t outlen)
{
	uint64_t ms = time_wall_ms();
	time_t t = (time_t)(ms / 1000);
	struct tm tm;
	gmtime_r(&t, &tm);
	char base[20];
	if (strftime(base, sizeof(base), "%Y%m%dT%H%M%S", &tm) != 15)
		panic("store: backup time out of range");
	snprintf(out, outlen, "%s.%03uZ", base, (unsigned)(ms % 1000));
}

static sqlite3 *backup_open(const char *path, int flags, char **error_r)
{
	sqlite3 *db = NULL;
	int rc = sqlite3_open_v2(path, &db, flags | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK) {
		*error_r = xasprintf("cannot open %s: %s", path, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
		sqlite3_close(db);
		return NULL;
	}
	sqlite3_extended_result_codes(db, 1);
	sqlite3_busy_timeout(db, BACKUP_TIMEOUT_MS);
	return db;
}

/* Removes a database file and its journals (errors but ENOENT are ignored:
 * a later create fails loudly if the name stays taken). */
void store_db_unlink(const char *path)
{
	static const char *const suffixes[] = { "", "-journal", "-wal", "-shm" };
	for (size_t i = 0; i < ARRAY_LEN(suffixes); i++) {
		char p[PATH_MAX];
		if ((size_t)snprintf(p, sizeof(p), "%s%s", path, suffixes[i]) < sizeof(p))
			unlink(p);
	}
}

bool store_db_copy(const char *src_path, const char *dst_path, mode_t mode, char **error_r)
{
	int fd = open(dst_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	if (fd < 0) {
		*error_r = xasprintf("cannot create %s: %s", dst_path, strerror(errno));
		return false;
	}
	close(fd);
	sqlite3 *src = backup_open(src_path, SQLITE_OPEN_READONLY, error_r);
	if (src == NULL)
		return false;
	sqlite3 *dst = backup_open(dst_path, SQLITE_OPEN_READWRITE, error_r);
	if (dst == NULL) {
		sqlite3_close(src);
		return false;
	}
	bool ok = false;
	sqlite3_backup *b = sqlite3_backup_init(dst, "main", src, "main");
	if (b == NULL) {
		*error_r = xasprintf("backup of %s: %s", src_path, sqlite3_errmsg(dst));
		goto out;
	}
	int rc = SQLITE_OK;
	/* -1: every page in one step, i.e. one read transaction on the source:
	 * a consistent snapshot that a concurrent writer cannot restart. */
	for (unsigned tries = 0; tries < BACKUP_BUSY_RETRIES; tries++) {
		rc = sqlite3_backup_step(b, -1);
		if (rc != SQLITE_BUSY && rc != SQLITE_LOCKED)
			break;
		sqlite3_sleep(BACKUP_BUSY_SLEEP_MS);
	}
	sqlite3_backup_finish(b);
	if (rc != SQLITE_DONE) {
		*error_r = xasprintf("backup of %s: %s", src_path, sqlite3_errstr(rc));
		goto out;
	}
	char *msg = NULL;
	if (sqlite3_exec(dst, "PRAGMA journal_mode = DELETE", NULL, NULL, &msg) != SQLITE_OK) {
		*error_r = xasprintf("backup %s: %s", dst_path, msg ? msg : sqlite3_errmsg(dst));
		sqlite3_free(msg);
		goto out;
	}
	ok = store_db_check(dst, true, error_r);
out:
	sqlite3_close(src);
	if (sqlite3_close(dst) != SQLITE_OK && ok) {
		*error_r = xasprintf("closing %s failed", dst_path);
		ok = false;
	}
	return ok;
}

/* fsyncs a whole file by name. */
bool store_fsync_path(const char *path, char **error_r)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || !fs_fsync(fd)) {
		*error_r = xasprintf("cannot fsync %s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return false;
	}
	close(fd);
	return true;
}

static void backup_prune(const char *dir, uint64_t keep)
{
	char **paths;
	size_t n = store_backup_list(dir, &paths);
	bool removed = false;
	for (size_t i = 0; n > keep && i < n - keep; i++) {
		if (unlink(paths[i]) != 0)
			log_warn("store: cannot delete old backup %s: %s", paths[i], strerror(errno));
		else
			removed = true;
	}
	if (removed && !fs_fsync_dir(dir))
		log_warn("store: fsync of %s: %s", dir, strerror(errno));
	store_backup_list_free(paths, n);
}

enum status store_backup_run(const struct settings *s, char **path_r, char **error_r)
{
	const char *dir = s->store_backup_dir;
	struct stat sb;
	if (stat(s->store_index_path, &sb) != 0) {
		*error_r = xasprintf("no index to back up at %s: %s", s->store_index_path, strerror(errno));
		return ST_NOT_FOUND;
	}
	if (strlen(dir) + BACKUP_NAME_LEN + 16 >= PATH_MAX) {
		*error_r = xstrdup("store.backup_dir is too long");
		return ST_INVALID;
	}
	if (!fs_mkdir_p(dir, 0750)) {
		*error_r = xasprintf("cannot create %s: %s", dir, strerror(errno));
		return status_from_errno(errno);
	}
	char tag[32], tmp[PATH_MAX], final[PATH_MAX];
	time_tag(tag, sizeof(tag));
	snprintf(tmp, sizeof(tmp), "%s/.tmp-" BACKUP_PREFIX "%s" BACKUP_SUFFIX, dir, tag);
	snprintf(final, sizeof(final), "%s/" BACKUP_PREFIX "%s" BACKUP_SUFFIX, dir, tag);
	store_db_unlink(tmp);
	if (!store_db_copy(s->store_index_path, tmp, 0640, error_r) || !store_fsync_path(tmp, error_r)) {
		store_db_unlink(tmp);
		return ST_IO_ERROR;
	}
	if (!fs_rename_durable(tmp, final)) {
		*error_r = xasprintf("cannot rename %s to %s: %s", tmp, final, strerror(errno));
		store_db_unlink(tmp);
		return status_from_errno(errno);
	}
	backup_prune(dir, s->store_backup_keep);
	if (path_r)
		*path_r = xstrdup(final);
	return ST_OK;
}

/* ---- the daemon's thread ------------------------------------------------------ */

struct store_backup_thread {
	const struct settings *s;
	pthread_t th;
	pthread_mutex_t mu;
	pthread_cond_t cv;              /* CLOCK_MONOTONIC */
	bool stop;
};

/* Milliseconds until the first backup: what is left of the interval since
 * the newest backup was written (0 when there is none, or it is older). */
static uint64_t first_delay_ms(const struct settings *s)
{
	char **paths;
	size_t n = store_backup_list(s->store_backup_dir, &paths);
	uint64_t delay = 0;
	struct stat sb;
	if (n > 0 && stat(paths[n - 1], &sb) == 0) {
		uint64_t made = (uint64_t)sb.st_mtim.tv_sec * 1000 + (uint64_t)sb.st_mtim.tv_nsec / 1000000;
		uint64_t now = time_wall_ms();
		if (made <= now && now - made < s->store_backup_interval_ms)
			delay = s->store_backup_interval_ms - (now - made);
	}
	store_backup_list_free(paths, n);
	return delay;
}

static void *backup_main(void *arg)
{
	struct store_backup_thread *t = arg;
	struct timespec due;
	time_mono_deadline(first_delay_ms(t->s), &due);
	pthread_mutex_lock(&t->mu);
	while (!t->stop) {
		int rc = pthread_cond_timedwait(&t->cv, &t->mu, &due);
		if (t->stop)
			break;
		if (rc != ETIMEDOUT)
			continue; /* spurious wake-up: the deadline stands */
		pthread_mutex_unlock(&t->mu);
		char *path = NULL, *err = NULL;
		uint64_t start = time_mono_ms();
		if (store_backup_run(t->s, &path, &err) == ST_OK) {
			log_info("store: index backed up to %s in %llu ms", path,
				 (unsigned long long)(time_mono_ms() - start));
		} else {
			log_error("store: index backup failed (retried in one interval): %s", err);
		}
		free(path);
		free(err);
		time_mono_deadline(t->s->store_backup_interval_ms, &due);
		pthread_mutex_lock(&t->mu);
	}
	pthread_mutex_unlock(&t->mu);
	return NULL;
}

struct store_backup_thread *store_backup_start(const struct settings *s)
{
	if (s->store_backup_interval_ms == 0)
		return NULL;
	struct store_backup_thread *t = xcalloc(1, sizeof(*t));
	t->s = s;
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&t->cv, &ca);
	pthread_condattr_destroy(&ca);
	pthread_mutex_init(&t->mu, NULL);
	int rc = pthread_create(&t->th, NULL, backup_main, t);
	if (rc != 0)
		panic("store: cannot start the backup thread: %s", strerror(rc));
	return t;
}

void store_backup_stop(struct store_backup_thread **tp)
{
	struct store_backup_thread *t = *tp;
	if (t == NULL)
		return;
	pthread_mutex_lock(&t->mu);
	t->stop = true;
	pthread_cond_signal(&t->cv);
	pthread_mutex_unlock(&t->mu);
	pthread_join(t->th, NULL);
	pthread_cond_destroy(&t->cv);
	pthread_mutex_destroy(&t->mu);
	free(t);
	*tp = NULL;
}
