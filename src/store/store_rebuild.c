/*
 * store_rebuild.c - index verification, damage detection and rebuild.
 *
 * Owns: store_verify (index against blob files), store_index_check (the
 * start-up classification), store_rebuild (a new index from the newest
 * backup plus the blob trailers) and store_recover_index (the daemon's
 * automatic rebuild).  docs/STORAGE.md, "Index loss", is the user's view.
 *
 * The blob walk streams the directory tree (<blob_dir>/XXXXX/XX/<id>) with
 * readdir, one directory open at a time, so a million blobs cost constant
 * memory; rebuild parks what it finds in a table of the new index
 * (rb_pending) and places the messages from it in (received, id) order in
 * batches of REBUILD_BATCH per transaction.  The remote recipients a
 * trailer lists (outbound mail, store_outbound.c) are parked in
 * rb_outbound and re-queued, due at once, by the fix-up step, which then
 * counts message and outbound rows as the blobs' references.
 *
 * Compressed blobs (a tier with compress = zstd) need nothing special:
 * their trailer is plain text found the same way, and its size is the
 * message's, so verify and rebuild never decompress (store_blob.c).
 *
 * Durability of a rebuild: the new index is written under <index>.rebuild
 * with synchronous=FULL, checkpointed, switched to rollback-journal mode,
 * integrity_check'ed and fsynced; the old index and its -wal/-shm are
 * renamed to <index>.broken-<time>[-wal|-shm] (a stale -wal left beside
 * the new file would be replayed into it), then the new one is renamed into
 * place and the directory fsynced.  A crash at any point leaves either the
 * old index or the new one at <index>, never a mix; a leftover .rebuild is
 * removed by the next rebuild.  Blob files are never modified or deleted.
 *
 * Processes: verify uses a read-only connection and may run beside the
 * daemon; rebuild must run alone (the daemon at start-up before it opens
 * the store, or `strata store rebuild` with the daemon stopped).
 */
#include "store_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define REBUILD_BATCH 5000
#define TEMP_GRACE_S 3600
#define REBUILD_TIMEOUT_MS 10000

/* ---- the blob walk ---------------------------------------------------------- */

enum walk_kind { WALK_BLOB, WALK_TEMP, WALK_OTHER };
/* Returns false to stop the walk. */
typedef bool walk_cb(void *ctx, enum walk_kind kind, unsigned tier, const char *path,
		     const struct msgid *id, const struct stat *sb);

/* Tiers (store.h, "Tiers"): tier 0 is store.blob_dir. */
static size_t tier_count(const struct settings *s)
{
	return s->n_tiers > 0 ? s->n_tiers : 1;
}

static const char *tier_dir(const struct settings *s, unsigned tier)
{
	return s->n_tiers > 0 ? s->tiers[tier].path : s->store_blob_dir;
}

/* Path of blob id on a configured tier (store_blob_path_for, the store's
 * one path rule, once config_load has filled the tier list). */
static void tier_path(const struct settings *s, unsigned tier, const struct msgid *id, char *out, size_t len)
{
	if (s->n_tiers > 0)
		store_blob_path_for(s, tier, id, out, len);
	else
		store_blob_path(s->store_blob_dir, id, out, len);
}

static bool is_dir_name(const char *n, size_t len)
{
	return strlen(n) == len && strspn(n, "0123456789ABCDEFGHJKMNPQRSTVWXYZ") == len;
}

static bool walk_files(const char *dir, unsigned tier, const char *top, const char *sub, walk_cb *cb,
		       void *ctx)
{
	DIR *d = opendir(dir);
	if (d == NULL)
		return true;
	bool go = true;
	struct dirent *e;
	while (go && (e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		char path[PATH_MAX];
		if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) >= sizeof(path))
			continue;
		struct stat sb;
		if (lstat(path, &sb) != 0)
			continue; /* gone meanwhile */
		struct msgid id;
		enum walk_kind kind = WALK_OTHER;
		if (top == NULL)
			kind = WALK_TEMP;
		else if (S_ISREG(sb.st_mode) && strlen(e->d_name) == MSGID_TEXT_LEN &&
			 strncmp(e->d_name, top, 5) == 0 && strncmp(e->d_name + 5, sub, 2) == 0 &&
			 msgid_parse(e->d_name, &id))
			kind = WALK_BLOB;
		go = cb(ctx, kind, tier, path, kind == WALK_BLOB ? &id : NULL, &sb);
	}
	closedir(d);
	return go;
}

/* Walks one tier's directory: blob files, tmp/ files, and anything unexpected. */
static bool walk_tier(const char *blob_dir, unsigned tier, walk_cb *cb, void *ctx)
{
	DIR *d = opendir(blob_dir);
	if (d == NULL)
		return true;
	bool go = true;
	struct dirent *e;
	while (go && (e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		char path[PATH_MAX];
		if ((size_t)snprintf(path, sizeof(path), "%s/%s", blob_dir, e->d_name) >= sizeof(path))
			continue;
		struct stat sb;
		if (lstat(path, &sb) != 0)
			continue;
		if (S_ISDIR(sb.st_mode) && strcmp(e->d_name, "tmp") == 0) {
			go = walk_files(path, tier, NULL, NULL, cb, ctx);
			continue;
		}
		if (!S_ISDIR(sb.st_mode) || !is_dir_name(e->d_name, 5))
			continue; /* not blob storage: other subsystems' files (tier.lock) */
		DIR *d2 = opendir(path);
		if (d2 == NULL)
			continue;
		struct dirent *e2;
		while (go && (e2 = readdir(d2)) != NULL) {
			if (strcmp(e2->d_name, ".") == 0 || strcmp(e2->d_name, "..") == 0)
				continue;
			char sub[PATH_MAX];
			if ((size_t)snprintf(sub, sizeof(sub), "%s/%s", path, e2->d_name) >= sizeof(sub))
				continue;
			struct stat sb2;
			if (lstat(sub, &sb2) != 0)
				continue;
			if (S_ISDIR(sb2.st_mode) && is_dir_name(e2->d_name, 2))
				go = walk_files(sub, tier, e->d_name, e2->d_name, cb, ctx);
			else
				go = cb(ctx, WALK_OTHER, tier, sub, NULL, &sb2);
		}
		closedir(d2);
	}
	closedir(d);
	return go;
}

/* Walks every tier, fastest first. */
static void walk_blobs(const struct settings *s, walk_cb *cb, void *ctx)
{
	for (unsigned i = 0; i < tier_count(s); i++) {
		if (!walk_tier(tier_dir(s, i), i, cb, ctx))
			return;
	}
}

static bool any_blob_cb(void *ctx, enum walk_kind kind, unsigned tier, const char *path,
			const struct msgid *id, const struct stat *sb)
{
	(void)tier, (void)path, (void)id, (void)sb;
	if (kind != WALK_BLOB)
		return true;
	*(bool *)ctx = true;
	return false;
}

static bool blobs_exist(const struct settings *s)
{
	bool found = false;
	walk_blobs(s, any_blob_cb, &found);
	return found;
}

/* ---- small SQLite helpers --------------------------------------------------- */

static sqlite3 *rb_open(const char *path, int flags, char **error_r)
{
	sqlite3 *db = NULL;
	int rc = sqlite3_open_v2(path, &db, flags | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK) {
		if (error_r)
			*error_r = xasprintf("cannot open %s: %s", path,
					     db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
		sqlite3_close(db);
		return NULL;
	}
	sqlite3_extended_result_codes(db, 1);
	sqlite3_busy_timeout(db, REBUILD_TIMEOUT_MS);
	return db;
}

static bool rb_exec(sqlite3 *db, const char *sql, char **error_r)
{
	char *msg = NULL;
	int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
	if (rc == SQLITE_OK)
		return true;
	if (error_r)
		*error_r = xasprintf("%.60s...: %s", sql, msg ? msg : sqlite3_errstr(rc));
	sqlite3_free(msg);
	return false;
}

/* The single integer a query returns; false when it fails. */
static bool rb_int(sqlite3 *db, const char *sql, int64_t *out, char **error_r)
{
	sqlite3_stmt *q = NULL;
	int rc = sqlite3_prepare_v2(db, sql, -1, &q, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(q);
	if (rc != SQLITE_ROW) {
		if (error_r)
			*error_r = xasprintf("%s: %s", sql, sqlite3_errmsg(db));
		sqlite3_finalize(q);
		return false;
	}
	*out = sqlite3_column_int64(q, 0);
	sqlite3_finalize(q);
	return true;
}

static sqlite3_stmt *rb_prep(sqlite3 *db, const char *sql, char **error_r)
{
	sqlite3_stmt *q = NULL;
	if (sqlite3_prepare_v2(db, sql, -1, &q, NULL) != SQLITE_OK) {
		if (error_r)
			*error_r = xasprintf("%s: %s", sql, sqlite3_errmsg(db));
		sqlite3_finalize(q);
		return NULL;
	}
	return q;
}

/* A database that opens, has this build's tables and passes quick_check.
 * *version_r: its user_version. */
/* The start-up probe: each table's first and last entry, i.e. the root
 * and both edge paths of every b-tree, in a few page reads whatever the
 * index's size (one min() or max() per SELECT: SQLite's min/max
 * optimisation does not apply to a query holding both, which then reads
 * the whole table).  It catches a file overwritten, truncated or cut short;
 * damage in the middle is found by the full check of every backup
 * (store_db_copy: integrity_check) or by store.startup_check = quick_check. */
static const char *const probe_sql[] = {
	"SELECT coalesce((SELECT max(rowid) FROM domains), 0) + coalesce((SELECT min(rowid) FROM domains), 0)",
	"SELECT coalesce((SELECT max(rowid) FROM accounts), 0) + coalesce((SELECT min(rowid) FROM accounts), 0)",
	"SELECT coalesce((SELECT max(rowid) FROM mailboxes), 0) + coalesce((SELECT min(rowid) FROM mailboxes), 0)",
	"SELECT coalesce((SELECT max(rowid) FROM blobs), 0) + coalesce((SELECT min(rowid) FROM blobs), 0)",
	"SELECT count(*) FROM (SELECT 1 FROM meta ORDER BY key LIMIT 1)",
	"SELECT count(*) FROM (SELECT 1 FROM meta ORDER BY key DESC LIMIT 1)",
	"SELECT count(*) FROM (SELECT 1 FROM aliases ORDER BY source LIMIT 1)",
	"SELECT count(*) FROM (SELECT 1 FROM aliases ORDER BY source DESC LIMIT 1)",
	"SELECT count(*) FROM (SELECT 1 FROM messages ORDER BY mailbox_id, uid LIMIT 1)",
	"SELECT count(*) FROM (SELECT 1 FROM messages ORDER BY mailbox_id DESC, uid DESC LIMIT 1)",
};

static bool db_probe(sqlite3 *db, char **reason_r)
{
	for (size_t i = 0; i < ARRAY_LEN(probe_sql); i++) {
		int64_t v;
		if (!rb_int(db, probe_sql[i], &v, reason_r))
			return false;
	}
	return true;
}

static bool db_healthy_mode(const char *path, bool full, int64_t *version_r, char **reason_r);

/* With the full quick_check (backups, rebuild sources). */
static bool db_healthy(const char *path, int64_t *version_r, char **reason_r)
{
	return db_healthy_mode(path, true, version_r, reason_r);
}

static bool db_healthy_mode(const char *path, bool full, int64_t *version_r, char **reason_r)
{
	sqlite3 *db = rb_open(path, SQLITE_OPEN_READONLY, reason_r);
	if (db == NULL)
		return false;
	int64_t version = 0, tables = 0;
	bool ok = rb_int(db, "PRAGMA user_version", &version, reason_r);
	if (ok && version == 0) {
		ok = false;
		if (reason_r)
			*reason_r = xstrdup("it has no schema");
	}
	if (ok && version <= STORE_SCHEMA_VERSION) {
		ok = rb_int(db, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN"
				" ('domains', 'accounts', 'aliases', 'mailboxes', 'blobs', 'messages', 'meta')",
			    &tables, reason_r);
		if (ok && tables != 7) {
			ok = false;
			if (reason_r)
				*reason_r = xstrdup("tables of the schema are missing");
		}
	}
	if (ok)
		ok = full ? store_db_check(db, false, reason_r) : db_probe(db, reason_r);
	sqlite3_close(db);
	*version_r = version;
	return ok;
}

/* ---- start-up classification ----------------------------------------------- */

static bool backups_exist(const struct settings *s)
{
	char **paths;
	size_t n = store_backup_list(s->store_backup_dir, &paths);
	store_backup_list_free(paths, n);
	return n > 0;
}

static bool has_data(const struct settings *s)
{
	return blobs_exist(s) || backups_exist(s);
}

enum store_index_state store_index_check(const struct settings *s, char **reason_r)
{
	*reason_r = NULL;
	struct stat sb;
	bool missing;
	if (stat(s->store_index_path, &sb) == 0) {
		missing = sb.st_size == 0;
	} else if (errno == ENOENT) {
		missing = true;
	} else {
		/* Not proof of damage (permissions, I/O): store_open reports it. */
		return STORE_INDEX_OK;
	}
	/* Whether there is mail to rebuild from is asked only when the index
	 * is missing or unhealthy: a healthy start never walks the tiers. */
	if (missing) {
		if (!has_data(s))
			return STORE_INDEX_NEW;
		*reason_r = xasprintf("the index %s is missing or empty", s->store_index_path);
		return STORE_INDEX_DAMAGED;
	}
	int64_t version = 0;
	char *why = NULL;
	if (db_healthy_mode(s->store_index_path, s->store_startup_check == STORE_STARTUP_QUICK_CHECK, &version, &why)) {
		free(why);
		return STORE_INDEX_OK;
	}
	if (version > STORE_SCHEMA_VERSION) {
		free(why);
		return STORE_INDEX_OK; /* a newer Strata's: store_open says so */
	}
	if (version == 0 && !has_data(s)) {
		free(why);
		return STORE_INDEX_NEW; /* e.g. a crash during the very first start */
	}
	*reason_r = xasprintf("the index %s is damaged: %s", s->store_index_path, why ? why : "unknown");
	free(why);
	return STORE_INDEX_DAMAGED;
}

/* ---- verify ------------------------------------------------------------------- */

struct verify_ctx {
	const struct settings *s;
	store_report_cb *cb;
	void *ctx;
	struct store_verify_result *out;
	sqlite3_stmt *q_known;
	time_t now;
};

static void report(struct verify_ctx *v, const char *fmt, ...) ATTR_PRINTF(2, 3);
static void report(struct verify_ctx *v, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	struct buf b = BUF_INIT;
	buf_vprintf(&b, fmt, ap);
	va_end(ap);
	v->out->problems++;
	v->cb(v->ctx, b.data);
	buf_free(&b);
}

static bool verify_file_cb(void *ctx, enum walk_kind kind, unsigned tier, const char *path,
			   const struct msgid *id, const struct stat *sb)
{
	struct verify_ctx *v = ctx;
	bool recent = sb->st_mtime > v->now - STORE_VERIFY_GRACE_S;
	if (kind == WALK_TEMP) {
		if (sb->st_mtime < v->now - TEMP_GRACE_S)
			report(v, "temp file older than an hour: %s", path);
		return true;
	}
	if (kind == WALK_OTHER) {
		report(v, "unexpected file in the blob directory: %s", path);
		return true;
	}
	v->out->files++;
	sqlite3_stmt *q = v->q_known;
	sqlite3_bind_blob(q, 1, id->b, MSGID_BYTES, SQLITE_STATIC);
	int rc = sqlite3_step(q);
	int64_t row_tier = rc == SQLITE_ROW ? sqlite3_column_int64(q, 0) : -1;
	store_db_reset(q);
	if (rc == SQLITE_DONE && !recent)
		report(v, "orphan blob file (no index row): %s", path);
	else if (rc == SQLITE_ROW && row_tier != (int64_t)tier && !recent)
		report(v, "stray copy on tier %u of a blob the index puts on tier %lld: %s", tier,
		       (long long)row_tier, path);
	else if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		report(v, "index lookup of %s failed: %s", path, sqlite3_errstr(rc));
	return true;
}

/* Every blob row: its file, trailer, size, and refcount against the rows. */
static bool verify_blobs(sqlite3 *db, struct verify_ctx *v, char **error_r)
{
	sqlite3_stmt *q = rb_prep(db,
		"SELECT b.msgid, b.size, b.refcount, coalesce(r.n, 0), b.tier FROM blobs b LEFT JOIN"
		" (SELECT blob_id, count(*) AS n FROM (SELECT blob_id FROM messages"
		"  UNION ALL SELECT blob_id FROM outbound) GROUP BY blob_id) r ON r.blob_id = b.id",
		error_r);
	if (q == NULL)
		return false;
	int rc;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		v->out->blobs++;
		struct msgid id;
		if (sqlite3_column_bytes(q, 0) != MSGID_BYTES) {
			report(v, "blob row with a malformed id");
			continue;
		}
		memcpy(id.b, sqlite3_column_blob(q, 0), MSGID_BYTES);
		char path[PATH_MAX], text[MSGID_TEXT_LEN + 1];
		msgid_format(&id, text);
		int64_t tier = sqlite3_column_int64(q, 4);
		if (tier < 0 || (uint64_t)tier >= tier_count(v->s)) {
			report(v, "blob %s: tier %lld is not configured", text, (long long)tier);
			continue;
		}
		tier_path(v->s, (unsigned)tier, &id, path, sizeof(path));
		uint64_t size = store_db_column_u64(q, 1);
		int64_t refs = sqlite3_column_int64(q, 2), rows = sqlite3_column_int64(q, 3);
		if (refs != rows)
			report(v, "blob %s: refcount %lld but %lld message and outbound rows", text, (long long)refs,
			       (long long)rows);
		struct blob_meta meta;
		enum status s = store_blob_read_meta(path, &meta);
		if (s == ST_NOT_FOUND)
			report(v, "blob %s: file missing (%s)", text, path);
		else if (s != ST_OK)
			report(v, "blob %s: %s", text, s == ST_INVALID ? "no valid trailer" : "unreadable");
		else if (memcmp(meta.id.b, id.b, MSGID_BYTES) != 0)
			report(v, "blob %s: trailer names another id", text);
		else if (meta.size != size)
			report(v, "blob %s: size %llu in the index, %llu in the file", text,
			       (unsigned long long)size, (unsigned long long)meta.size);
		store_blob_meta_free(&meta);
	}
	sqlite3_finalize(q);
	if (rc != SQLITE_DONE) {
		*error_r = xasprintf("reading blob rows: %s", sqlite3_errstr(rc));
		return false;
	}
	return true;
}

/* Counting queries whose every row is one problem (text in column 0). */
static bool verify_rows(sqlite3 *db, struct verify_ctx *v, const char *sql, char **error_r)
{
	sqlite3_stmt *q = rb_prep(db, sql, error_r);
	if (q == NULL)
		return false;
	int rc;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW)
		report(v, "%s", (const char *)sqlite3_column_text(q, 0));
	sqlite3_finalize(q);
	if (rc != SQLITE_DONE) {
		*error_r = xasprintf("verify query: %s", sqlite3_errstr(rc));
		return false;
	}
	return true;
}

static const char *const verify_sql[] = {
	"SELECT 'message ' || mailbox_id || '/' || uid || ': its blob row is missing'"
	" FROM messages WHERE blob_id NOT IN (SELECT id FROM blobs)",
	"SELECT 'message ' || mailbox_id || '/' || uid || ': its mailbox is missing'"
	" FROM messages WHERE mailbox_id NOT IN (SELECT id FROM mailboxes)",
	"SELECT 'mailbox ' || mb.id || ' (' || mb.name || '): uid ' || max(m.uid) || ' not below uidnext '"
	" || mb.uidnext FROM mailboxes mb JOIN messages m ON m.mailbox_id = mb.id GROUP BY mb.id"
	" HAVING max(m.uid) >= mb.uidnext",
	"SELECT 'account ' || a.address || ': used ' || a.used_messages || ' messages / ' || a.used_bytes"
	" || ' bytes, counted ' || coalesce(u.n, 0) || ' / ' || coalesce(u.bytes, 0)"
	" FROM accounts a LEFT JOIN (SELECT mb.account_id AS aid, count(*) AS n, sum(b.size) AS bytes"
	"  FROM messages m JOIN mailboxes mb ON mb.id = m.mailbox_id JOIN blobs b ON b.id = m.blob_id"
	"  GROUP BY mb.account_id) u ON u.aid = a.id"
	" WHERE a.used_messages <> coalesce(u.n, 0) OR a.used_bytes <> coalesce(u.bytes, 0)",
};

enum status store_verify(const struct settings *s, store_report_cb *cb, void *ctx,
			 struct store_verify_result *out, char **error_r)
{
	memset(out, 0, sizeof(*out));
	struct stat sb;
	if (stat(s->store_index_path, &sb) != 0) {
		*error_r = xasprintf("no index at %s", s->store_index_path);
		return ST_NOT_FOUND;
	}
	sqlite3 *db = rb_open(s->store_index_path, SQLITE_OPEN_READONLY, error_r);
	if (db == NULL)
		return ST_IO_ERROR;
	struct verify_ctx v = { .s = s, .cb = cb, .ctx = ctx, .out = out, .now = time(NULL) };
	char *why = NULL;
	enum status st = ST_OK;
	int64_t n = 0;
	if (!store_db_check(db, false, &why)) {
		report(&v, "index: %s", why);
		free(why);
		goto out; /* the rows cannot be trusted for the rest */
	}
	for (size_t i = 0; i < ARRAY_LEN(verify_sql); i++) {
		if (!verify_rows(db, &v, verify_sql[i], error_r)) {
			st = ST_TEMPFAIL;
			goto out;
		}
	}
	if (!verify_blobs(db, &v, error_r) ||
	    (v.q_known = rb_prep(db, "SELECT tier FROM blobs WHERE msgid = ?1", error_r)) == NULL) {
		st = ST_TEMPFAIL;
		goto out;
	}
	walk_blobs(s, verify_file_cb, &v);
	if (rb_int(db, "SELECT count(*) FROM messages", &n, NULL))
		out->messages = (uint64_t)n;
	if (rb_int(db, "SELECT count(*) FROM accounts", &n, NULL))
		out->accounts = (uint64_t)n;
out:
	sqlite3_finalize(v.q_known);
	sqlite3_close(db);
	return st;
}

/* ---- rebuild: the base ------------------------------------------------------- */

/* Copies the newest healthy backup (else the current index, if healthy)
 * to `dst`.  ST_NOT_FOUND when neither exists. */
static enum status rebuild_base(const struct settings *s, const char *dst, struct store_rebuild_result *out,
				char **error_r)
{
	char **paths;
	size_t n = store_backup_list(s->store_backup_dir, &paths);
	const char *base = NULL;
	for (size_t i = n; i-- > 0 && base == NULL;) {
		int64_t version;
		char *why = NULL;
		if (db_healthy(paths[i], &version, &why) && version <= STORE_SCHEMA_VERSION)
			base = paths[i];
		else
			log_warn("store: rebuild: skipping backup %s: %s", paths[i],
				 why ? why : "newer schema");
		free(why);
	}
	int64_t version;
	if (base == NULL && db_healthy(s->store_index_path, &version, NULL) &&
	    version <= STORE_SCHEMA_VERSION)
		base = s->store_index_path;
	enum status st = ST_OK;
	if (base == NULL) {
		*error_r = xasprintf("no usable backup in %s and no usable index: create the domains and "
				     "accounts first (strata domain add, strata user import), then run "
				     "strata store rebuild", s->store_backup_dir);
		st = ST_NOT_FOUND;
	} else if (!store_db_copy(base, dst, 0640, error_r)) {
		st = ST_IO_ERROR;
	} else {
		snprintf(out->base, sizeof(out->base), "%s", base);
		log_info("store: rebuild: starting from %s", base);
	}
	store_backup_list_free(paths, n);
	return st;
}

/* The tier blob `raw` is on: `hint` (the row's) when its file is there,
 * else the first tier that has it (a move after the backup); -1: gone.  A
 * file that cannot be checked (not ENOENT) counts as present. */
static int rebuild_find_tier(const struct settings *s, const void *raw, int64_t hint)
{
	struct msgid id;
	memcpy(id.b, raw, MSGID_BYTES);
	for (int64_t i = -1; i < (int64_t)tier_count(s); i++) {
		int64_t t = i < 0 ? hint : i;
		if (t < 0 || (uint64_t)t >= tier_count(s) || (i >= 0 && t == hint))
			continue;
		char path[PATH_MAX];
		struct stat sb;
		tier_path(s, (unsigned)t, &id, path, sizeof(path));
		if (lstat(path, &sb) == 0 || errno != ENOENT)
			return (int)t;
	}
	return -1;
}

/* The tier subsystem's tables (store_tier.c), when the base has them: heat
 * rows of blobs that are gone would be inherited by new blobs reusing
 * their ids, and the move journal describes files as they were at the
 * backup - replaying it could remove the only copy of a blob moved since.
 * The rebuild has just found every blob's tier from the files instead. */
static bool rebuild_tier_tables(sqlite3 *db, char **error_r)
{
	int64_t n = 0;
	if (!rb_int(db, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'heat'", &n, error_r))
		return false;
	if (n > 0 && !rb_exec(db, "DELETE FROM heat WHERE blob_id NOT IN (SELECT id FROM blobs)", error_r))
		return false;
	if (!rb_int(db, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'tier_moves'", &n,
		    error_r))
		return false;
	return n == 0 || rb_exec(db, "DELETE FROM tier_moves", error_r);
}

/* Drops the base's message rows whose blob file is gone (expunged after
 * the backup was taken), and follows blobs moved to another tier since. */
static bool rebuild_prune(struct store *st, struct store_rebuild_result *out, char **error_r)
{
	sqlite3 *db = st->db;
	if (!rb_exec(db, "BEGIN IMMEDIATE; CREATE TABLE rb_gone(id INTEGER PRIMARY KEY);", error_r))
		return false;
	sqlite3_stmt *q = rb_prep(db, "SELECT id, msgid, tier FROM blobs", error_r);
	sqlite3_stmt *ins = q ? rb_prep(db, "INSERT INTO rb_gone(id) VALUES(?1)", error_r) : NULL;
	sqlite3_stmt *move = ins ? rb_prep(db, "UPDATE blobs SET tier = ?2 WHERE id = ?1", error_r) : NULL;
	bool ok = q != NULL && ins != NULL && move != NULL;
	int rc = SQLITE_ROW;
	while (ok && (rc = sqlite3_step(q)) == SQLITE_ROW) {
		int found = -1;
		if (sqlite3_column_bytes(q, 1) == MSGID_BYTES)
			found = rebuild_find_tier(st->s, sqlite3_column_blob(q, 1), sqlite3_column_int64(q, 2));
		if (found < 0) {
			sqlite3_bind_int64(ins, 1, sqlite3_column_int64(q, 0));
			ok = store_db_run(ins) == SQLITE_DONE;
		} else if (found != sqlite3_column_int64(q, 2)) {
			sqlite3_bind_int64(move, 1, sqlite3_column_int64(q, 0));
			sqlite3_bind_int64(move, 2, found);
			ok = store_db_run(move) == SQLITE_DONE;
		}
	}
	if (ok && rc != SQLITE_DONE)
		ok = false;
	if (!ok && *error_r == NULL)
		*error_r = xasprintf("rebuild: checking blob rows: %s", sqlite3_errmsg(db));
	sqlite3_finalize(q);
	sqlite3_finalize(ins);
	sqlite3_finalize(move);
	int64_t before = 0, after = 0;
	ok = ok && rb_int(db, "SELECT count(*) FROM messages", &before, error_r) &&
	     rb_exec(db, "DELETE FROM messages WHERE blob_id IN (SELECT id FROM rb_gone);"
			 "DELETE FROM blobs WHERE id IN (SELECT id FROM rb_gone);"
			 "DELETE FROM messages WHERE blob_id NOT IN (SELECT id FROM blobs)"
			 " OR mailbox_id NOT IN (SELECT id FROM mailboxes);"
			 "DROP TABLE rb_gone;", error_r) &&
	     rebuild_tier_tables(db, error_r) &&
	     rb_int(db, "SELECT count(*) FROM messages", &after, error_r) && rb_exec(db, "COMMIT", error_r);
	if (!ok) {
		rb_exec(db, "ROLLBACK", NULL);
		return false;
	}
	out->dropped_messages = (uint64_t)(before - after);
	out->base_messages = (uint64_t)after;
	return true;
}

/* ---- rebuild: the files the base does not know -------------------------------- */

struct scan_ctx {
	struct store *st;
	struct store_rebuild_result *out;
	sqlite3_stmt *q_known, *q_park;
	sqlite3_stmt *q_park_out;    /* rb_outbound: remote recipients from trailers */
	uint64_t in_batch;
	char *error;                 /* set: stop */
};

static bool scan_commit(struct scan_ctx *c)
{
	if (c->in_batch == 0)
		return true;
	c->in_batch = 0;
	return rb_exec(c->st->db, "COMMIT", &c->error) && rb_exec(c->st->db, "BEGIN IMMEDIATE", &c->error);
}

static bool scan_park(struct scan_ctx *c, unsigned tier, const char *path, const struct blob_meta *m)
{
	struct buf rcpts = BUF_INIT;
	for (size_t i = 0; i < m->n_rcpts; i++)
		buf_printf(&rcpts, "%s%s", i ? "," : "", m->rcpt_addresses[i]);
	sqlite3_stmt *q = c->q_park;
	sqlite3_bind_int64(q, 1, m->received);
	sqlite3_bind_blob(q, 2, m->id.b, MSGID_BYTES, SQLITE_TRANSIENT);
	store_db_bind_u64(q, 3, m->size);
	sqlite3_bind_text(q, 4, rcpts.data, (int)rcpts.len, SQLITE_TRANSIENT);
	sqlite3_bind_text(q, 5, m->mailbox[0] ? m->mailbox : "INBOX", -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(q, 6, tier);
	int rc = store_db_run(q);
	buf_free(&rcpts);
	if (rc != SQLITE_DONE) {
		c->error = xasprintf("rebuild: parking %s: %s", path, sqlite3_errmsg(c->st->db));
		return false;
	}
	return ++c->in_batch < REBUILD_BATCH || scan_commit(c);
}

/* The outbound rows a trailer describes (store_outbound.c): re-queued by
 * rebuild_fixup_sql, so mail not yet relayed survives the loss of the index. */
static bool scan_park_remotes(struct scan_ctx *c, unsigned tier, const char *path, const struct blob_meta *m)
{
	sqlite3_stmt *q = c->q_park_out;
	for (size_t i = 0; i < m->n_remotes; i++) {
		sqlite3_bind_blob(q, 1, m->id.b, MSGID_BYTES, SQLITE_TRANSIENT);
		sqlite3_bind_text(q, 2, m->sender, -1, SQLITE_TRANSIENT);
		sqlite3_bind_text(q, 3, m->remote_addresses[i], -1, SQLITE_TRANSIENT);
		sqlite3_bind_int64(q, 4, m->received);
		store_db_bind_u64(q, 5, m->size);
		sqlite3_bind_int64(q, 6, tier);
		if (store_db_run(q) != SQLITE_DONE) {
			c->error = xasprintf("rebuild: parking the remote recipients of %s: %s", path,
					     sqlite3_errmsg(c->st->db));
			return false;
		}
		if (++c->in_batch >= REBUILD_BATCH && !scan_commit(c))
			return false;
	}
	return true;
}

static bool scan_cb(void *ctx, enum walk_kind kind, unsigned tier, const char *path,
		    const struct msgid *id, const struct stat *sb)
{
	struct scan_ctx *c = ctx;
	(void)sb;
	if (kind != WALK_BLOB)
		return true;
	sqlite3_stmt *q = c->q_known;
	sqlite3_bind_blob(q, 1, id->b, MSGID_BYTES, SQLITE_STATIC);
	int rc = store_db_run(q);
	if (rc == SQLITE_ROW)
		return true; /* in the base */
	if (rc != SQLITE_DONE) {
		c->error = xasprintf("rebuild: index lookup: %s", sqlite3_errmsg(c->st->db));
		return false;
	}
	struct blob_meta m;
	enum status s = store_blob_read_meta(path, &m);
	if (s == ST_NOT_FOUND)
		return true;
	if (s != ST_OK || memcmp(m.id.b, id->b, MSGID_BYTES) != 0) {
		log_warn("store: rebuild: %s: %s; left in place", path,
			 s == ST_IO_ERROR ? "unreadable" : "no valid trailer for this id");
		c->out->bad_files++;
		if (s == ST_OK)
			store_blob_meta_free(&m);
		return true;
	}
	/* a blob of remote recipients only is not placed in any mailbox */
	bool ok = (m.n_rcpts == 0 || scan_park(c, tier, path, &m)) && scan_park_remotes(c, tier, path, &m);
	store_blob_meta_free(&m);
	return ok;
}

static bool rebuild_scan(struct store *st, struct store_rebuild_result *out, char **error_r)
{
	struct scan_ctx c = { .st = st, .out = out };
	/* msgid UNIQUE: a copy on a second tier (an interrupted move) is one blob. */
	if (!rb_exec(st->db, "CREATE TABLE rb_pending(received INTEGER NOT NULL, msgid BLOB UNIQUE NOT NULL,"
			     " size INTEGER NOT NULL, rcpts TEXT NOT NULL, mailbox TEXT NOT NULL,"
			     " tier INTEGER NOT NULL);"
			     "CREATE TABLE rb_outbound(msgid BLOB NOT NULL, sender TEXT NOT NULL, recipient TEXT NOT NULL,"
			     " received INTEGER NOT NULL, size INTEGER NOT NULL, tier INTEGER NOT NULL,"
			     " UNIQUE(msgid, recipient));"
			     "BEGIN IMMEDIATE;", error_r))
		return false;
	c.q_known = rb_prep(st->db, "SELECT 1 FROM blobs WHERE msgid = ?1", error_r);
	c.q_park = c.q_known ? rb_prep(st->db, "INSERT OR IGNORE INTO rb_pending VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
						     error_r)
			     : NULL;
	c.q_park_out = c.q_park ? rb_prep(st->db, "INSERT OR IGNORE INTO rb_outbound VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
					  error_r)
				: NULL;
	if (c.q_park_out != NULL) {
		walk_blobs(st->s, scan_cb, &c);
		if (c.error == NULL)
			rb_exec(st->db, "COMMIT; CREATE INDEX rb_pending_order ON rb_pending(received, msgid);",
				&c.error);
		if (c.error != NULL)
			*error_r = c.error;
	}
	sqlite3_finalize(c.q_known);
	sqlite3_finalize(c.q_park);
	sqlite3_finalize(c.q_park_out);
	if (!sqlite3_get_autocommit(st->db))
		rb_exec(st->db, "ROLLBACK", NULL);
	return c.q_park_out != NULL && c.error == NULL;
}

/* ---- rebuild: placing the parked files ---------------------------------------- */

enum place_q { PQ_NEXT, PQ_ACCOUNT, PQ_BUMP, PQ_UIDV, PQ_MAILBOX_NEW, PQ_BLOB, PQ_MESSAGE, PQ__COUNT };

static const char *const place_sql[PQ__COUNT] = {
	[PQ_NEXT] = "SELECT received, msgid, size, rcpts, mailbox, tier FROM rb_pending"
		    " WHERE (received, msgid) > (?1, ?2) ORDER BY received, msgid LIMIT " "5000",
	[PQ_ACCOUNT] = "SELECT id FROM accounts WHERE address = ?1",
	[PQ_BUMP] = "UPDATE mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1"
		    " WHERE account_id = ?1 AND name = ?2 RETURNING id, uidnext - 1, highestmodseq",
	[PQ_UIDV] = "UPDATE meta SET value = value + 1 WHERE key = 'next_uidvalidity' RETURNING value - 1",
	[PQ_MAILBOX_NEW] = "INSERT INTO mailboxes(account_id, name, special_use, uidvalidity, uidnext,"
			   " highestmodseq, subscribed) VALUES(?1, ?2, NULL, ?3, 1, 1, 1)",
	[PQ_BLOB] = "INSERT INTO blobs(msgid, tier, size, received, refcount) VALUES(?1, ?4, ?2, ?3, 0)",
	[PQ_MESSAGE] = "INSERT INTO messages(mailbox_id, uid, blob_id, flags, keywords, modseq)"
		       " VALUES(?1, ?2, ?3, 0, NULL, ?4)",
};
_Static_assert(REBUILD_BATCH == 5000, "PQ_NEXT's LIMIT is REBUILD_BATCH");

struct place_ctx {
	sqlite3 *db;
	sqlite3_stmt *q[PQ__COUNT];
	struct store_rebuild_result *out;
};

/* Creates a mailbox an APPEND named that the base does not have. */
static bool place_mailbox_new(struct place_ctx *p, int64_t account, const char *name)
{
	sqlite3_stmt *q = p->q[PQ_UIDV];
	if (sqlite3_step(q) != SQLITE_ROW) {
		store_db_reset(q);
		return false;
	}
	int64_t uidv = sqlite3_column_int64(q, 0);
	store_db_reset(q);
	q = p->q[PQ_MAILBOX_NEW];
	sqlite3_bind_int64(q, 1, account);
	sqlite3_bind_text(q, 2, name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 3, uidv);
	return store_db_run(q) == SQLITE_DONE;
}

/* The next UID and modseq of the account's mailbox `name` (created when
 * missing; INBOX when it cannot be).  0: the account has no INBOX. */
static int64_t place_bump(struct place_ctx *p, int64_t account, const char *name, int64_t *uid_r,
			  int64_t *modseq_r)
{
	for (int attempt = 0; attempt < 3; attempt++) {
		sqlite3_stmt *q = p->q[PQ_BUMP];
		sqlite3_bind_int64(q, 1, account);
		sqlite3_bind_text(q, 2, name, -1, SQLITE_STATIC);
		int rc = sqlite3_step(q);
		if (rc == SQLITE_ROW) {
			int64_t mb = sqlite3_column_int64(q, 0);
			*uid_r = sqlite3_column_int64(q, 1);
			*modseq_r = sqlite3_column_int64(q, 2);
			store_db_reset(q);
			return mb;
		}
		store_db_reset(q);
		if (strcmp(name, "INBOX") == 0)
			return 0;
		if (attempt > 0 || !place_mailbox_new(p, account, name)) {
			log_warn("store: rebuild: cannot create mailbox '%s'; using INBOX", name);
			name = "INBOX";
		}
	}
	return 0;
}

/* Places one parked file: a blob row and one message per known account. */
static bool place_one(struct place_ctx *p, sqlite3_stmt *row)
{
	char *rcpts = xstrdup((const char *)sqlite3_column_text(row, 3));
	char mailbox[STORE_MAILBOX_NAME_MAX + 1];
	snprintf(mailbox, sizeof(mailbox), "%s", (const char *)sqlite3_column_text(row, 4));
	int64_t blob_id = 0;
	bool ok = true;
	char *save = NULL;
	for (char *a = strtok_r(rcpts, ",", &save); ok && a != NULL; a = strtok_r(NULL, ",", &save)) {
		sqlite3_stmt *q = p->q[PQ_ACCOUNT];
		sqlite3_bind_text(q, 1, a, -1, SQLITE_STATIC);
		int64_t account = sqlite3_step(q) == SQLITE_ROW ? sqlite3_column_int64(q, 0) : 0;
		store_db_reset(q);
		int64_t uid = 0, modseq = 0, mb = account ? place_bump(p, account, mailbox, &uid, &modseq) : 0;
		if (mb == 0 || uid < 1 || uid > (int64_t)UINT32_MAX) {
			log_warn("store: rebuild: no account or INBOX for %s: message left on disk only", a);
			continue;
		}
		if (blob_id == 0) {
			q = p->q[PQ_BLOB];
			sqlite3_bind_value(q, 1, sqlite3_column_value(row, 1));
			sqlite3_bind_int64(q, 2, sqlite3_column_int64(row, 2));
			sqlite3_bind_int64(q, 3, sqlite3_column_int64(row, 0));
			sqlite3_bind_int64(q, 4, sqlite3_column_int64(row, 5));
			ok = store_db_run(q) == SQLITE_DONE;
			blob_id = sqlite3_last_insert_rowid(p->db);
			p->out->added_blobs += ok;
		}
		q = p->q[PQ_MESSAGE];
		sqlite3_bind_int64(q, 1, mb);
		sqlite3_bind_int64(q, 2, uid);
		sqlite3_bind_int64(q, 3, blob_id);
		sqlite3_bind_int64(q, 4, modseq);
		ok = ok && store_db_run(q) == SQLITE_DONE;
		p->out->added_messages += ok;
	}
	if (blob_id == 0)
		p->out->unplaced++;
	free(rcpts);
	return ok;
}

/* One batch: the next REBUILD_BATCH parked files after (last_received,
 * last_id), in one transaction.  *more_r: a full batch was read. */
static bool place_batch(struct place_ctx *p, int64_t *last_received, uint8_t last_id[MSGID_BYTES],
			bool *more_r, char **error_r)
{
	*more_r = false;
	if (!rb_exec(p->db, "BEGIN IMMEDIATE", error_r))
		return false;
	sqlite3_stmt *q = p->q[PQ_NEXT];
	sqlite3_bind_int64(q, 1, *last_received);
	sqlite3_bind_blob(q, 2, last_id, MSGID_BYTES, SQLITE_TRANSIENT);
	unsigned n = 0;
	int rc;
	bool ok = true;
	while (ok && (rc = sqlite3_step(q)) == SQLITE_ROW) {
		ok = place_one(p, q);
		*last_received = sqlite3_column_int64(q, 0);
		if (sqlite3_column_bytes(q, 1) == MSGID_BYTES)
			memcpy(last_id, sqlite3_column_blob(q, 1), MSGID_BYTES);
		n++;
	}
	if (ok && rc != SQLITE_DONE)
		ok = false;
	if (!ok)
		*error_r = xasprintf("rebuild: placing messages: %s", sqlite3_errmsg(p->db));
	store_db_reset(q);
	if (!ok || !rb_exec(p->db, "COMMIT", error_r)) {
		rb_exec(p->db, "ROLLBACK", NULL);
		return false;
	}
	*more_r = n == REBUILD_BATCH;
	return true;
}

static bool rebuild_place(struct store *st, struct store_rebuild_result *out, char **error_r)
{
	struct place_ctx p = { .db = st->db, .out = out };
	bool ok = true;
	for (size_t i = 0; i < PQ__COUNT && ok; i++)
		ok = (p.q[i] = rb_prep(st->db, place_sql[i], error_r)) != NULL;
	int64_t last_received = INT64_MIN;
	uint8_t last_id[MSGID_BYTES] = { 0 };
	bool more = ok;
	/* Bounded: every batch consumes REBUILD_BATCH parked rows, in key order. */
	while (ok && more) {
		ok = place_batch(&p, &last_received, last_id, &more, error_r);
		if (ok && out->added_messages > 0 && out->added_messages % 100000 < REBUILD_BATCH && more)
			log_info("store: rebuild: %llu messages added so far",
				 (unsigned long long)out->added_messages);
	}
	for (size_t i = 0; i < PQ__COUNT; i++)
		sqlite3_finalize(p.q[i]);
	return ok;
}

/* Refcounts, quota usage and uidnext from the rows; a new modseq for every
 * mailbox so CONDSTORE clients look again. */
static const char rebuild_fixup_sql[] =
	"BEGIN IMMEDIATE;"
	/* outbound mail the base does not know, from the trailers: due at once */
	"INSERT OR IGNORE INTO blobs(msgid, tier, size, received, refcount)"
	" SELECT msgid, tier, size, received, 0 FROM rb_outbound;"
	"INSERT INTO outbound(blob_id, sender, recipient, created, next_attempt, attempts)"
	" SELECT b.id, r.sender, r.recipient, r.received, r.received, 0 FROM rb_outbound r"
	" JOIN blobs b ON b.msgid = r.msgid;"
	"CREATE TABLE rb_refs(blob_id INTEGER PRIMARY KEY, n INTEGER NOT NULL);"
	"INSERT INTO rb_refs SELECT blob_id, count(*) FROM"
	" (SELECT blob_id FROM messages UNION ALL SELECT blob_id FROM outbound) GROUP BY blob_id;"
	"UPDATE blobs SET refcount = coalesce((SELECT n FROM rb_refs WHERE rb_refs.blob_id = blobs.id), 0);"
	"DELETE FROM blobs WHERE refcount = 0;"
	/* The backup's expunge log misses every expunge since the backup:
	 * dropping its floors makes QRESYNC clients get the full VANISHED list,
	 * which is always correct, instead of a partial one. */
	"DELETE FROM vanished_floor;"
	"CREATE TABLE rb_use(account_id INTEGER PRIMARY KEY, n INTEGER NOT NULL, bytes INTEGER NOT NULL);"
	"INSERT INTO rb_use SELECT mb.account_id, count(*), sum(b.size) FROM messages m"
	" JOIN mailboxes mb ON mb.id = m.mailbox_id JOIN blobs b ON b.id = m.blob_id GROUP BY mb.account_id;"
	"UPDATE accounts SET"
	" used_messages = coalesce((SELECT n FROM rb_use WHERE rb_use.account_id = accounts.id), 0),"
	" used_bytes = coalesce((SELECT bytes FROM rb_use WHERE rb_use.account_id = accounts.id), 0);"
	"UPDATE mailboxes SET highestmodseq = highestmodseq + 1,"
	" uidnext = max(uidnext, coalesce((SELECT max(uid) + 1 FROM messages WHERE mailbox_id = mailboxes.id), 1));"
	"DROP TABLE rb_refs; DROP TABLE rb_use; DROP TABLE rb_pending; DROP TABLE rb_outbound;"
	"COMMIT;";

/* Without a backup, the UIDVALIDITY values of the lost index are unknown,
 * and a re-created index hands out values from the same clock-based
 * counter (meta.next_uidvalidity starts at the creation time and grows by
 * one per mailbox), so the old and new ranges may overlap.  Every mailbox
 * gets a value above now + 2^30 instead: the lost index would have had to
 * create 2^30 mailboxes more than seconds elapsed to reach it.  Clients
 * see a new UIDVALIDITY and resynchronise. */
static const char rebuild_uidvalidity_sql[] =
	"BEGIN IMMEDIATE;"
	"UPDATE meta SET value = max(value, CAST(strftime('%s', 'now') AS INTEGER) + 1073741824)"
	" WHERE key = 'next_uidvalidity';"
	"UPDATE mailboxes SET uidvalidity = (SELECT value FROM meta WHERE key = 'next_uidvalidity') + id;"
	"UPDATE meta SET value = value + coalesce((SELECT max(id) FROM mailboxes), 0) + 1"
	" WHERE key = 'next_uidvalidity';"
	"COMMIT;";

static bool rebuild_uidvalidity(struct store *st, char **error_r)
{
	if (!rb_exec(st->db, rebuild_uidvalidity_sql, error_r))
		return false;
	int64_t top = 0;
	if (!rb_int(st->db, "SELECT value FROM meta WHERE key = 'next_uidvalidity'", &top, error_r))
		return false;
	if (top > (int64_t)UINT32_MAX) {
		*error_r = xasprintf("rebuild: UIDVALIDITY counter exhausted (%lld)", (long long)top);
		return false;
	}
	return true;
}

/* ---- rebuild: swapping the files ---------------------------------------------- */

/* Checkpoints, leaves WAL mode, checks and fsyncs the closed new index. */
static bool rebuild_seal(const char *path, char **error_r)
{
	sqlite3 *db = rb_open(path, SQLITE_OPEN_READWRITE, error_r);
	if (db == NULL)
		return false;
	bool ok = rb_exec(db, "PRAGMA journal_mode = DELETE", error_r) && store_db_check(db, true, error_r);
	if (sqlite3_close(db) != SQLITE_OK && ok) {
		*error_r = xasprintf("closing %s failed", path);
		ok = false;
	}
	if (ok && geteuid() == 0) {
		/* A root CLI run: the daemon's user must own the index. */
		char dir[PATH_MAX];
		struct stat sb;
		fs_dirname(path, dir, sizeof(dir));
		if (stat(dir, &sb) == 0 && chown(path, sb.st_uid, sb.st_gid) != 0)
			log_warn("store: rebuild: chown %s: %s", path, strerror(errno));
	}
	return ok && store_fsync_path(path, error_r);
}

/* Moves the old index and its journals aside, the new one into place. */
static bool rebuild_swap(const char *index, const char *fresh, char **error_r)
{
	char tag[32];
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	strftime(tag, sizeof(tag), "%Y%m%dT%H%M%SZ", &tm);
	static const char *const suffixes[] = { "", "-wal", "-shm", "-journal" };
	for (size_t i = 0; i < ARRAY_LEN(suffixes); i++) {
		char from[PATH_MAX], to[PATH_MAX];
		snprintf(from, sizeof(from), "%s%s", index, suffixes[i]);
		snprintf(to, sizeof(to), "%s.broken-%s%s", index, tag, suffixes[i]);
		if (rename(from, to) != 0 && errno != ENOENT) {
			*error_r = xasprintf("cannot move %s aside: %s", from, strerror(errno));
			return false;
		}
		if (i == 0 && access(to, F_OK) == 0)
			log_warn("store: rebuild: the old index is kept as %s", to);
	}
	if (!fs_rename_durable(fresh, index)) {
		*error_r = xasprintf("cannot rename %s to %s: %s", fresh, index, strerror(errno));
		return false;
	}
	return true;
}

/* True when another connection has the index open (the daemon, a CLI):
 * an exclusive lock cannot be had at once.  A file SQLite cannot read
 * (garbage, a damaged header) is not "in use". */
static bool index_in_use(const char *path)
{
	sqlite3 *db = NULL;
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
		sqlite3_close(db);
		return false;
	}
	int rc = sqlite3_exec(db, "PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; COMMIT;", NULL, NULL, NULL);
	sqlite3_close(db);
	return (rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED;
}

enum status store_rebuild(const struct settings *s, struct store_rebuild_result *out, char **error_r)
{
	memset(out, 0, sizeof(*out));
	*error_r = NULL;
	if (strlen(s->store_index_path) + 16 >= PATH_MAX) {
		*error_r = xstrdup("store.index is too long");
		return ST_INVALID;
	}
	char fresh[PATH_MAX], dir[PATH_MAX];
	snprintf(fresh, sizeof(fresh), "%s.rebuild", s->store_index_path);
	fs_dirname(s->store_index_path, dir, sizeof(dir));
	if (!fs_mkdir_p(dir, 0750)) {
		*error_r = xasprintf("cannot create %s: %s", dir, strerror(errno));
		return ST_IO_ERROR;
	}
	if (access(s->store_index_path, F_OK) == 0 && index_in_use(s->store_index_path)) {
		*error_r = xasprintf("the index %s is in use: stop the daemon first", s->store_index_path);
		return ST_DB_BUSY;
	}
	store_db_unlink(fresh);
	uint64_t start = time_mono_ms();
	enum status st = rebuild_base(s, fresh, out, error_r);
	if (st != ST_OK)
		return st;
	struct settings tmp = *s;
	tmp.store_index_path = fresh;
	char *err = NULL;
	struct store *h = store_open(&tmp, true, &err); /* migrates an older backup */
	if (h == NULL) {
		*error_r = xasprintf("rebuild: %s", err);
		free(err);
		store_db_unlink(fresh);
		return ST_IO_ERROR;
	}
	h->s = s; /* blob paths and logging use the real settings from here on */
	bool from_backup = strcmp(out->base, s->store_index_path) != 0;
	bool ok = (from_backup || rebuild_uidvalidity(h, error_r)) &&
		  rebuild_prune(h, out, error_r) && rebuild_scan(h, out, error_r) &&
		  rebuild_place(h, out, error_r) && rb_exec(h->db, rebuild_fixup_sql, error_r) &&
		  rb_exec(h->db, "PRAGMA wal_checkpoint(TRUNCATE)", error_r);
	if (!ok && !sqlite3_get_autocommit(h->db))
		rb_exec(h->db, "ROLLBACK", NULL);
	store_close(&h);
	ok = ok && rebuild_seal(fresh, error_r) && rebuild_swap(s->store_index_path, fresh, error_r);
	if (!ok) {
		store_db_unlink(fresh);
		return ST_IO_ERROR;
	}
	log_info("store: rebuild done in %llu ms from %s: %llu messages kept, %llu dropped (blob gone), "
		 "%llu added from %llu blob files, %llu files without an account, %llu unreadable",
		 (unsigned long long)(time_mono_ms() - start), out->base,
		 (unsigned long long)out->base_messages, (unsigned long long)out->dropped_messages,
		 (unsigned long long)out->added_messages, (unsigned long long)out->added_blobs,
		 (unsigned long long)out->unplaced, (unsigned long long)out->bad_files);
	return ST_OK;
}

bool store_recover_index(const struct settings *s, char **error_r)
{
	char *reason = NULL;
	if (store_index_check(s, &reason) != STORE_INDEX_DAMAGED)
		return true;
	log_error("store: ==================================================================");
	log_error("store: INDEX DAMAGED: %s", reason);
	log_error("store: rebuilding it from the newest backup and the blob files now");
	log_error("store: ==================================================================");
	free(reason);
	struct store_rebuild_result r;
	char *err = NULL;
	if (store_rebuild(s, &r, &err) != ST_OK) {
		*error_r = xasprintf("index rebuild failed: %s", err ? err : "unknown error");
		free(err);
		return false;
	}
	log_error("store: index rebuilt from %s; flags, moves and expunges made after that backup "
		  "are lost (docs/STORAGE.md, \"Index loss\")", r.base);
	return true;
}
