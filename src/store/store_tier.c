/*
 * store_tier.c - the index side of storage tiering.
 *
 * Owns: blob paths per tier and the open helper with its fall-back (the
 * one place readers should open a blob; it hides compression, see
 * store_blob.c), the access-event hook, and the
 * SQL of the heat and tier_moves tables and of the placement queries.
 * Placement policy, heat arithmetic and the file moves are src/tier's.
 *
 * Tables (created here, idempotently, by store_tier_init):
 *   heat(blob_id PRIMARY KEY, score REAL, updated INT, reads_days INT)
 *     - rows are deleted with their blob (ON DELETE CASCADE is not relied
 *       on: placement joins blobs, so stale rows are inert).
 *   tier_moves(blob_id PRIMARY KEY, msgid, src INT, dst INT, committed INT, started INT)
 *     - the move journal; docs/STORAGE.md "Tiering" gives the recovery rule.
 *
 * Durability: every write is its own transaction (or the caller's batch);
 * store_tier_move_commit changes blobs.tier and the journal row in one
 * transaction, so the index never names a tier whose copy was not already
 * durable (the mover renames and fsyncs before committing).
 *
 * Concurrency: the path/open helpers and the hook are thread-safe; the rest
 * follows struct store's one-thread rule.  Statements are prepared per call:
 * these run at most a few times a second (heat flush, mover pass, CLI).
 */
#include "store_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- paths and opening ---------------------------------------------------- */

void store_blob_path_for(const struct settings *s, unsigned tier, const struct msgid *id, char *out,
			 size_t outlen)
{
	if (tier >= s->n_tiers)
		panic("store_blob_path_for: tier %u of %zu", tier, s->n_tiers);
	store_blob_path(s->tiers[tier].path, id, out, outlen);
}

static _Atomic(store_latency_hook *) latency_hook;

void store_latency_set_hook(store_latency_hook *fn)
{
	atomic_store_explicit(&latency_hook, fn, memory_order_release);
}

/* Opens the copy on `tier`; a compressed copy comes back as the memfd of
 * its message bytes (store_blob_fd_plain), so every reader sees the same
 * [0, size) whatever the tier stores.  With a latency hook installed, the
 * open and a first one-byte read are timed (what a reader waits for the
 * disk now; decompression is CPU and not counted). */
static int open_on(const struct settings *s, unsigned tier, const struct msgid *id, bool unpack)
{
	char path[PATH_MAX];
	store_blob_path_for(s, tier, id, path, sizeof(path));
	store_latency_hook *lh = atomic_load_explicit(&latency_hook, memory_order_acquire);
	uint64_t t0 = lh ? time_mono_us() : 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
	if (fd < 0)
		return fd;
	if (lh) {
		char probe;
		if (pread(fd, &probe, 1, 0) >= 0)
			lh(time_mono_us() - t0);
	}
	return unpack ? store_blob_fd_plain(fd) : store_blob_fd_plain_nowait(fd);
}

static int blob_scan(const struct settings *s, unsigned tier, const struct msgid *id, unsigned *found_r,
		     bool unpack)
{
	unsigned first = tier < s->n_tiers ? tier : 0;
	int fd = open_on(s, first, id, unpack);
	if (fd >= 0 || errno != ENOENT) {
		if (fd >= 0 && found_r)
			*found_r = first;
		return fd;
	}
	for (unsigned t = 0; t < s->n_tiers; t++) {
		if (t == first)
			continue;
		fd = open_on(s, t, id, unpack);
		if (fd >= 0) {
			if (found_r)
				*found_r = t;
			return fd;
		}
		if (errno != ENOENT)
			return -1;
	}
	errno = ENOENT;
	return -1;
}

/* Every tier, twice: a move renames the copy into its new tier before it
 * unlinks the old one, so a reader that looked at the new tier just before
 * the rename and at the old one just after the unlink finds it on the
 * second scan.  ENOENT after that means the blob is gone (expunged). */
static int blob_open(const struct settings *s, unsigned tier, const struct msgid *id, unsigned *found_r,
		     bool unpack)
{
	int fd = blob_scan(s, tier, id, found_r, unpack);
	if (fd < 0 && errno == ENOENT && s->n_tiers > 1)
		fd = blob_scan(s, tier, id, found_r, unpack);
	return fd;
}

int store_blob_open(const struct settings *s, unsigned tier, const struct msgid *id, unsigned *found_r)
{
	return blob_open(s, tier, id, found_r, true);
}

int store_blob_open_nowait(const struct settings *s, unsigned tier, const struct msgid *id, unsigned *found_r)
{
	return blob_open(s, tier, id, found_r, false);
}

bool store_blob_find(const struct settings *s, unsigned tier, const struct msgid *id, char *out,
		     size_t outlen)
{
	unsigned first = tier < s->n_tiers ? tier : 0;
	store_blob_path_for(s, first, id, out, outlen);
	if (access(out, F_OK) == 0)
		return true;
	for (unsigned t = 0; t < s->n_tiers; t++) {
		if (t == first)
			continue;
		store_blob_path_for(s, t, id, out, outlen);
		if (access(out, F_OK) == 0)
			return true;
	}
	store_blob_path_for(s, first, id, out, outlen);
	return false;
}

int store_blob_unlink(const struct settings *s, const struct msgid *id)
{
	int err = 0;
	for (unsigned t = 0; t < s->n_tiers; t++) {
		char path[PATH_MAX];
		store_blob_path_for(s, t, id, path, sizeof(path));
		if (unlink(path) != 0 && errno != ENOENT && err == 0)
			err = errno;
	}
	return err;
}

/* ---- access hook ------------------------------------------------------------ */

static _Atomic(store_access_hook *) access_hook;

void store_access_set_hook(store_access_hook *fn)
{
	atomic_store_explicit(&access_hook, fn, memory_order_release);
}

void store_access_note(const struct msgid *id)
{
	store_access_hook *fn = atomic_load_explicit(&access_hook, memory_order_acquire);
	if (fn)
		fn(id);
}

/* ---- helpers ---------------------------------------------------------------- */

static void column_msgid(sqlite3_stmt *q, int col, struct msgid *id)
{
	memset(id, 0, sizeof(*id));
	if (sqlite3_column_bytes(q, col) == MSGID_BYTES)
		memcpy(id->b, sqlite3_column_blob(q, col), MSGID_BYTES);
}

static const char *column_text(sqlite3_stmt *q, int col)
{
	const unsigned char *t = sqlite3_column_text(q, col);
	return t ? (const char *)t : "";
}

static unsigned column_tier(sqlite3_stmt *q, int col)
{
	int64_t t = sqlite3_column_int64(q, col);
	return t < 0 || t > UINT32_MAX ? UINT32_MAX : (unsigned)t;
}

/* Runs a statement without results inside the caller's context. */
static enum status exec_one(struct store *st, sqlite3_stmt *q, const char *what, char **error_r)
{
	int rc = sqlite3_step(q);
	if (rc != SQLITE_DONE && rc != SQLITE_ROW)
		return store_db_fail(st->db, rc, what, error_r);
	return ST_OK;
}

/* ---- tables ----------------------------------------------------------------- */

enum status store_tier_init(struct store *st, char **error_r)
{
	static const char sql[] =
		"CREATE TABLE IF NOT EXISTS heat(blob_id INTEGER PRIMARY KEY, score REAL NOT NULL,"
		" updated INTEGER NOT NULL, reads_days INTEGER NOT NULL DEFAULT 0);"
		"CREATE TABLE IF NOT EXISTS tier_moves(blob_id INTEGER PRIMARY KEY, msgid BLOB NOT NULL,"
		" src INTEGER NOT NULL,"
		" dst INTEGER NOT NULL, committed INTEGER NOT NULL DEFAULT 0, started INTEGER NOT NULL);";
	char *msg = NULL;
	int rc = sqlite3_exec(st->db, sql, NULL, NULL, &msg);
	if (rc != SQLITE_OK) {
		if (error_r)
			*error_r = xasprintf("create tier tables: %s", msg ? msg : sqlite3_errstr(rc));
		sqlite3_free(msg);
		return store_db_status(rc);
	}
	return ST_OK;
}

/* ---- placement queries --------------------------------------------------------- */

static int refs_chunk(sqlite3_stmt *q, store_tier_ref_cb *cb, void *ctx, size_t *rows_r, int64_t *mailbox_r,
		      int64_t *uid_r, bool *stopped_r);

enum status store_tier_refs(struct store *st, const char *account, const char *mailbox,
			    int64_t older_than, store_tier_ref_cb *cb, void *ctx, char **error_r)
{
	/* Keyset pagination over the messages primary key: each chunk starts
	 * after the last (mailbox_id, uid) of the one before, with no sort. */
	static const char sql[] =
		"SELECT b.id, b.msgid, b.tier, b.size, b.received, mb.name, coalesce(mb.special_use, ''),"
		" a.address, a.last_login, m.flags, coalesce(h.score, 0), coalesce(h.updated, 0),"
		" coalesce(h.reads_days, 0), m.mailbox_id, m.uid"
		" FROM messages m JOIN blobs b ON b.id = m.blob_id"
		" JOIN mailboxes mb ON mb.id = m.mailbox_id JOIN accounts a ON a.id = mb.account_id"
		" LEFT JOIN heat h ON h.blob_id = b.id"
		" WHERE (m.mailbox_id, m.uid) > (?4, ?5)"
		" AND (?1 IS NULL OR a.address = ?1) AND (?2 IS NULL OR mb.name = ?2 COLLATE NOCASE)"
		" AND (?3 = 0 OR b.received < ?3) ORDER BY m.mailbox_id, m.uid LIMIT ?6";
	sqlite3_stmt *q;
	enum status s = store_db_prepare(st, sql, &q, error_r);
	if (s != ST_OK)
		return s;
	int64_t after_mailbox = -1, after_uid = -1;
	size_t rows = STORE_TIER_REFS_CHUNK;
	int rc = SQLITE_DONE;
	bool stopped = false;
	/* Bounded: each chunk but the last advances the key by a full chunk. */
	while (rows == STORE_TIER_REFS_CHUNK && !stopped) {
		sqlite3_reset(q);
		if (account)
			sqlite3_bind_text(q, 1, account, -1, SQLITE_STATIC);
		if (mailbox)
			sqlite3_bind_text(q, 2, mailbox, -1, SQLITE_STATIC);
		sqlite3_bind_int64(q, 3, older_than);
		sqlite3_bind_int64(q, 4, after_mailbox);
		sqlite3_bind_int64(q, 5, after_uid);
		sqlite3_bind_int64(q, 6, STORE_TIER_REFS_CHUNK);
		rows = 0;
		rc = refs_chunk(q, cb, ctx, &rows, &after_mailbox, &after_uid, &stopped);
		if (rc != SQLITE_DONE)
			break;
	}
	s = rc == SQLITE_DONE ? ST_OK : store_db_fail(st->db, rc, "list tier references", error_r);
	store_db_release(st, q);
	return s;
}

/* One chunk of store_tier_refs: SQLITE_DONE at its end (or when cb asked
 * to stop: *stopped_r), else the error. */
static int refs_chunk(sqlite3_stmt *q, store_tier_ref_cb *cb, void *ctx, size_t *rows_r, int64_t *mailbox_r,
		      int64_t *uid_r, bool *stopped_r)
{
	int rc;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		(*rows_r)++;
		*mailbox_r = sqlite3_column_int64(q, 13);
		*uid_r = sqlite3_column_int64(q, 14);
		struct store_tier_ref r;
		r.blob_id = sqlite3_column_int64(q, 0);
		column_msgid(q, 1, &r.id);
		r.tier = column_tier(q, 2);
		r.size = store_db_column_u64(q, 3);
		r.received = sqlite3_column_int64(q, 4);
		r.mailbox = column_text(q, 5);
		r.special_use = column_text(q, 6);
		r.account = column_text(q, 7);
		r.last_login = sqlite3_column_int64(q, 8);
		r.flags = (uint32_t)sqlite3_column_int64(q, 9);
		r.heat = sqlite3_column_double(q, 10);
		r.heat_updated = sqlite3_column_int64(q, 11);
		r.reads_days = (uint32_t)sqlite3_column_int64(q, 12);
		if (!cb(ctx, &r)) {
			*stopped_r = true;
			return SQLITE_DONE;
		}
	}
	return rc;
}

/* Whether `sql` ("SELECT 1 FROM t LIMIT 1") finds a row: one index step. */
static enum status any_row(struct store *st, const char *sql, const char *what, bool *any_r, char **error_r)
{
	sqlite3_stmt *q;
	enum status s = store_db_prepare(st, sql, &q, error_r);
	if (s != ST_OK)
		return s;
	int rc = sqlite3_step(q);
	*any_r = rc == SQLITE_ROW;
	s = rc == SQLITE_ROW || rc == SQLITE_DONE ? ST_OK : store_db_fail(st->db, rc, what, error_r);
	store_db_release(st, q);
	return s;
}

enum status store_tier_any_blob(struct store *st, bool *any_r, char **error_r)
{
	return any_row(st, "SELECT 1 FROM blobs LIMIT 1", "any blob", any_r, error_r);
}

enum status store_tier_heat_any(struct store *st, bool *any_r, char **error_r)
{
	return any_row(st, "SELECT 1 FROM heat LIMIT 1", "any heat row", any_r, error_r);
}

enum status store_tier_usage(struct store *st, struct store_tier_usage out[CONFIG_TIER_MAX],
			     uint64_t *stray_r, char **error_r)
{
	sqlite3_stmt *q;
	enum status s = store_db_prepare(st, "SELECT tier, count(*), coalesce(sum(size), 0) FROM blobs GROUP BY tier",
			     &q, error_r);
	if (s != ST_OK)
		return s;
	memset(out, 0, sizeof(*out) * CONFIG_TIER_MAX);
	*stray_r = 0;
	int rc;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		unsigned t = column_tier(q, 0);
		uint64_t n = store_db_column_u64(q, 1);
		if (t >= CONFIG_TIER_MAX) {
			*stray_r += n;
			continue;
		}
		out[t].messages = n;
		out[t].bytes = store_db_column_u64(q, 2);
	}
	s = rc == SQLITE_DONE ? ST_OK : store_db_fail(st->db, rc, "tier usage", error_r);
	store_db_release(st, q);
	return s;
}

enum status store_tier_blobs(struct store *st, store_tier_blob_cb *cb, void *ctx, char **error_r)
{
	sqlite3_stmt *q;
	enum status s = store_db_prepare(st, "SELECT id, msgid, tier, size FROM blobs ORDER BY id", &q, error_r);
	if (s != ST_OK)
		return s;
	int rc;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		struct msgid id;
		column_msgid(q, 1, &id);
		if (!cb(ctx, sqlite3_column_int64(q, 0), &id, column_tier(q, 2), store_db_column_u64(q, 3))) {
			rc = SQLITE_DONE;
			break;
		}
	}
	s = rc == SQLITE_DONE ? ST_OK : store_db_fail(st->db, rc, "list blobs", error_r);
	store_db_release(st, q);
	return s;
}

/* ---- heat ---------------------------------------------------------------- */

enum status store_tier_heat_get(struct store *st, const struct msgid *id, struct store_heat *out,
				unsigned *tier_r)
{
	sqlite3_stmt *q;
	enum status s = store_db_prepare(st,
			     "SELECT b.id, coalesce(h.score, 0), coalesce(h.updated, 0), coalesce(h.reads_days, 0),"
			     " b.tier FROM blobs b LEFT JOIN heat h ON h.blob_id = b.id WHERE b.msgid = ?1",
			     &q, NULL);
	if (s != ST_OK)
		return s;
	sqlite3_bind_blob(q, 1, id->b, MSGID_BYTES, SQLITE_STATIC);
	int rc = sqlite3_step(q);
	if (rc == SQLITE_ROW) {
		out->blob_id = sqlite3_column_int64(q, 0);
		out->score = sqlite3_column_double(q, 1);
		out->updated = sqlite3_column_int64(q, 2);
		out->reads_days = (uint32_t)sqlite3_column_int64(q, 3);
		if (tier_r)
			*tier_r = column_tier(q, 4);
		s = ST_OK;
	} else {
		s = rc == SQLITE_DONE ? ST_NOT_FOUND : store_db_status(rc);
	}
	store_db_release(st, q);
	return s;
}

enum status store_tier_heat_put(struct store *st, const struct store_heat *rows, size_t n,
				char **error_r)
{
	sqlite3_stmt *q;
	enum status s = store_db_prepare(st,
			     "INSERT OR REPLACE INTO heat(blob_id, score, updated, reads_days)"
			     " SELECT id, ?2, ?3, ?4 FROM blobs WHERE id = ?1",
			     &q, error_r);
	if (s != ST_OK)
		return s;
	s = store_db_begin(st, error_r);
	for (size_t i = 0; s == ST_OK && i < n; i++) {
		sqlite3_bind_int64(q, 1, rows[i].blob_id);
		sqlite3_bind_double(q, 2, rows[i].score);
		sqlite3_bind_int64(q, 3, rows[i].updated);
		sqlite3_bind_int64(q, 4, rows[i].reads_days);
		s = exec_one(st, q, "write heat", error_r);
		sqlite3_reset(q);
	}
	store_db_release(st, q);
	if (s == ST_OK)
		return store_db_commit(st, error_r);
	store_db_rollback(st);
	return s;
}

/* ---- state check, reset, heat export and import (tier rebuild) ------------------ */

static const char *const tier_tables[] = { "heat", "tier_moves" };

/* 1 when the table exists, 0 when not, -1 (with *reason_r) on an error. */
static int table_exists(struct store *st, const char *name, char **reason_r)
{
	sqlite3_stmt *q;
	if (store_db_prepare(st, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1", &q,
			     reason_r) != ST_OK)
		return -1;
	sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
	int rc = sqlite3_step(q);
	int found = rc == SQLITE_ROW ? sqlite3_column_int(q, 0) > 0 : -1;
	if (found < 0 && reason_r)
		*reason_r = xasprintf("schema of table %s: %s", name, sqlite3_errmsg(st->db));
	store_db_release(st, q);
	return found;
}

/* quick_check of one table: true when it says "ok". */
static bool table_ok(struct store *st, const char *name, char **reason_r)
{
	char sql[64];
	snprintf(sql, sizeof(sql), "PRAGMA quick_check(%s)", name);
	sqlite3_stmt *q;
	if (store_db_prepare(st, sql, &q, reason_r) != ST_OK)
		return false;
	int rc = sqlite3_step(q);
	const char *t = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(q, 0) : NULL;
	bool ok = t != NULL && strcmp(t, "ok") == 0;
	if (!ok && reason_r)
		*reason_r = xasprintf("table %s is damaged: %s", name, t ? t : sqlite3_errmsg(st->db));
	store_db_release(st, q);
	return ok;
}

enum status store_tier_check(struct store *st, char **reason_r)
{
	for (size_t i = 0; i < ARRAY_LEN(tier_tables); i++) {
		int e = table_exists(st, tier_tables[i], reason_r);
		if (e < 0)
			return ST_INVALID;
		if (e == 0) {
			if (reason_r)
				*reason_r = xasprintf("table %s is missing", tier_tables[i]);
			return ST_NOT_FOUND;
		}
		if (!table_ok(st, tier_tables[i], reason_r))
			return ST_INVALID;
	}
	return ST_OK;
}

enum status store_tier_reset(struct store *st, bool journal, char **error_r)
{
	const char *sql = journal ? "DROP TABLE IF EXISTS heat; DROP TABLE IF EXISTS tier_moves;"
				  : "DROP TABLE IF EXISTS heat;";
	char *msg = NULL;
	int rc = sqlite3_exec(st->db, sql, NULL, NULL, &msg);
	if (rc != SQLITE_OK) {
		if (error_r)
			*error_r = xasprintf("drop tier tables: %s", msg ? msg : sqlite3_errstr(rc));
		sqlite3_free(msg);
		return store_db_status(rc);
	}
	return store_tier_init(st, error_r);
}

enum status store_tier_heat_each(struct store *st, store_tier_heat_cb *cb, void *ctx, char **error_r)
{
	sqlite3_stmt *q;
	enum status s = store_db_prepare(st,
			     "SELECT b.msgid, h.blob_id, h.score, h.updated, h.reads_days FROM heat h"
			     " JOIN blobs b ON b.id = h.blob_id ORDER BY h.blob_id",
			     &q, error_r);
	if (s != ST_OK)
		return s;
	int rc;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		struct msgid id;
		column_msgid(q, 0, &id);
		struct store_heat h = { sqlite3_column_int64(q, 1), sqlite3_column_double(q, 2),
					sqlite3_column_int64(q, 3), (uint32_t)sqlite3_column_int64(q, 4) };
		if (!cb(ctx, &id, &h)) {
			rc = SQLITE_DONE;
			break;
		}
	}
	s = rc == SQLITE_DONE ? ST_OK : store_db_fail(st->db, rc, "read heat", error_r);
	store_db_release(st, q);
	return s;
}

enum status store_tier_heat_replace(struct store *st, store_tier_heat_next *next, void *ctx, size_t *applied_r,
				    char **error_r)
{
	sqlite3_stmt *q;
	enum status s = store_db_prepare(st,
			     "INSERT OR REPLACE INTO heat(blob_id, score, updated, reads_days)"
			     " SELECT id, ?2, ?3, ?4 FROM blobs WHERE msgid = ?1",
			     &q, error_r);
	if (s != ST_OK)
		return s;
	*applied_r = 0;
	s = store_db_begin(st, error_r);
	if (s == ST_OK) {
		char *msg = NULL;
		int rc = sqlite3_exec(st->db, "DELETE FROM heat", NULL, NULL, &msg);
		if (rc != SQLITE_OK) {
			s = store_db_fail(st->db, rc, "clear heat", error_r);
			sqlite3_free(msg);
		}
	}
	struct msgid id;
	struct store_heat h;
	int more = 1;
	while (s == ST_OK && (more = next(ctx, &id, &h)) > 0) {
		sqlite3_bind_blob(q, 1, id.b, MSGID_BYTES, SQLITE_STATIC);
		sqlite3_bind_double(q, 2, h.score);
		sqlite3_bind_int64(q, 3, h.updated);
		sqlite3_bind_int64(q, 4, h.reads_days);
		s = exec_one(st, q, "write heat", error_r);
		*applied_r += (size_t)sqlite3_changes(st->db);
		sqlite3_reset(q);
	}
	store_db_release(st, q);
	if (s == ST_OK && more < 0) {
		s = ST_IO_ERROR;
		if (error_r)
			*error_r = xstrdup("heat rows could not be read");
	}
	if (s == ST_OK)
		return store_db_commit(st, error_r);
	store_db_rollback(st);
	*applied_r = 0;
	return s;
}

/* ---- the move journal --------------------------------------------------------- */

/* Runs `sql` with (?1 blob, ?2 from, ?3 to, ?4 now) in its own transaction,
 * and reports how many rows it changed. */
static enum status run_tx(struct store *st, const char *const *sql, size_t n_sql, int64_t blob_id,
			  unsigned from, unsigned to, int *changes_r, char **error_r)
{
	enum status s = store_db_begin(st, error_r);
	if (s != ST_OK)
		return s;
	for (size_t i = 0; s == ST_OK && i < n_sql; i++) {
		sqlite3_stmt *q;
		s = store_db_prepare(st, sql[i], &q, error_r);
		if (s != ST_OK)
			break;
		int np = sqlite3_bind_parameter_count(q);
		sqlite3_bind_int64(q, 1, blob_id);
		if (np >= 2)
			sqlite3_bind_int64(q, 2, from);
		if (np >= 3)
			sqlite3_bind_int64(q, 3, to);
		if (np >= 4)
			sqlite3_bind_int64(q, 4, (int64_t)time(NULL));
		int rc = sqlite3_step(q);
		if (rc != SQLITE_DONE)
			s = store_db_fail(st->db, rc, "tier move journal", error_r);
		if (s == ST_OK && i == 0 && changes_r)
			*changes_r = sqlite3_changes(st->db);
		store_db_release(st, q);
	}
	if (s != ST_OK) {
		store_db_rollback(st);
		return s;
	}
	return store_db_commit(st, error_r);
}

enum status store_tier_move_begin(struct store *st, int64_t blob_id, const struct msgid *id,
				  unsigned from, unsigned to, char **error_r)
{
	sqlite3_stmt *q;
	enum status s = store_db_prepare(st,
			     "INSERT INTO tier_moves(blob_id, msgid, src, dst, committed, started)"
			     " VALUES(?1, ?2, ?3, ?4, 0, ?5)",
			     &q, error_r);
	if (s != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, blob_id);
	sqlite3_bind_blob(q, 2, id->b, MSGID_BYTES, SQLITE_STATIC);
	sqlite3_bind_int64(q, 3, from);
	sqlite3_bind_int64(q, 4, to);
	sqlite3_bind_int64(q, 5, (int64_t)time(NULL));
	int rc = sqlite3_step(q);
	if (rc == SQLITE_CONSTRAINT) {
		s = ST_EXISTS;
		if (error_r)
			*error_r = xasprintf("a move of blob %lld is already pending", (long long)blob_id);
	} else if (rc != SQLITE_DONE) {
		s = store_db_fail(st->db, rc, "tier move journal", error_r);
	}
	store_db_release(st, q);
	return s;
}

enum status store_tier_move_commit(struct store *st, int64_t blob_id, unsigned from, unsigned to,
				   char **error_r)
{
	static const char *const sql[] = {
		"UPDATE blobs SET tier = ?3 WHERE id = ?1 AND tier = ?2",
		"UPDATE tier_moves SET committed = 1 WHERE blob_id = ?1 AND src = ?2 AND dst = ?3"
		" AND EXISTS(SELECT 1 FROM blobs WHERE id = ?1 AND tier = ?3)",
	};
	int changed = 0;
	enum status s = run_tx(st, sql, ARRAY_LEN(sql), blob_id, from, to, &changed, error_r);
	if (s == ST_OK && changed == 0) {
		if (error_r)
			*error_r = xasprintf("blob %lld is gone or no longer on tier %u", (long long)blob_id, from);
		return ST_NOT_FOUND;
	}
	return s;
}

enum status store_tier_move_end(struct store *st, int64_t blob_id, char **error_r)
{
	static const char *const sql[] = { "DELETE FROM tier_moves WHERE blob_id = ?1" };
	return run_tx(st, sql, ARRAY_LEN(sql), blob_id, 0, 0, NULL, error_r);
}

enum status store_tier_set(struct store *st, int64_t blob_id, unsigned tier, char **error_r)
{
	static const char *const sql[] = { "UPDATE blobs SET tier = ?3 WHERE id = ?1" };
	return run_tx(st, sql, ARRAY_LEN(sql), blob_id, 0, tier, NULL, error_r);
}

#define TIER_SET_CHUNK 50000

/* One transaction: rows [i, end) of v. */
static enum status tier_set_chunk(struct store *st, const struct store_tier_placement *v, size_t i, size_t end,
				  char **error_r)
{
	enum status s = store_db_begin(st, error_r);
	if (s != ST_OK)
		return s;
	sqlite3_stmt *q = NULL;
	s = store_db_prepare(st, "UPDATE blobs SET tier = ?2 WHERE id = ?1", &q, error_r);
	if (s == ST_OK) {
		for (; s == ST_OK && i < end; i++) {
			sqlite3_bind_int64(q, 1, v[i].blob_id);
			sqlite3_bind_int64(q, 2, v[i].tier);
			int rc = sqlite3_step(q);
			if (rc != SQLITE_DONE)
				s = store_db_fail(st->db, rc, "tier placement", error_r);
			sqlite3_reset(q);
		}
		store_db_release(st, q);
	}
	if (s != ST_OK) {
		store_db_rollback(st);
		return s;
	}
	return store_db_commit(st, error_r);
}

enum status store_tier_set_many(struct store *st, const struct store_tier_placement *v, size_t n,
				char **error_r)
{
	for (size_t i = 0; i < n; i += TIER_SET_CHUNK) {
		enum status s = tier_set_chunk(st, v, i, i + TIER_SET_CHUNK < n ? i + TIER_SET_CHUNK : n, error_r);
		if (s != ST_OK)
			return s;
	}
	return ST_OK;
}

enum status store_tier_moves(struct store *st, struct store_tier_move **out, size_t *n_r,
			     char **error_r)
{
	sqlite3_stmt *q;
	enum status s = store_db_prepare(st,
			     "SELECT j.blob_id, j.msgid, b.id IS NOT NULL, coalesce(b.tier, 0), j.src, j.dst,"
			     " j.committed FROM tier_moves j LEFT JOIN blobs b ON b.id = j.blob_id"
			     " ORDER BY j.blob_id",
			     &q, error_r);
	if (s != ST_OK)
		return s;
	struct store_tier_move *v = NULL;
	size_t n = 0, cap = 0;
	int rc;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			v = xreallocarray(v, cap, sizeof(*v));
		}
		struct store_tier_move *m = &v[n++];
		m->blob_id = sqlite3_column_int64(q, 0);
		column_msgid(q, 1, &m->id);
		m->blob_exists = sqlite3_column_int(q, 2) != 0;
		m->index_tier = column_tier(q, 3);
		m->from = column_tier(q, 4);
		m->to = column_tier(q, 5);
		m->committed = sqlite3_column_int(q, 6) != 0;
	}
	store_db_release(st, q);
	if (rc != SQLITE_DONE) {
		free(v);
		return store_db_fail(st->db, rc, "read tier move journal", error_r);
	}
	*out = v;
	*n_r = n;
	return ST_OK;
}
