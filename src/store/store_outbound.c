/*
 * store_outbound.c - the outbound queue in the index (table outbound, v5).
 *
 * Owns: the rows of mail waiting to be relayed to remote hosts: one per
 * (message, remote recipient), with its envelope sender, creation time,
 * next attempt, attempt count and last error.
 *
 * References: every row holds one reference of its blob, so
 * blobs.refcount = message rows + outbound rows (store verify checks it,
 * a rebuild recomputes it).  Rows are inserted by store_commit_deliveries
 * in the group-commit transaction that adds the blob row (a message with
 * only remote recipients has no message row at all); removing a row drops
 * its reference through store_blob_decref, and a blob whose count reaches
 * 0 loses its row in the same transaction and its file after COMMIT,
 * exactly as an expunge frees it.
 *
 * Durability: each public function but store_outbound_insert is one
 * transaction with the handle's synchronous setting (FULL with
 * store.fsync=yes): a removal or a deferral is on disk at return.  The
 * relay removes a row only after the remote host accepted the message (or
 * the bounce is stored), so a crash in between delivers it again: at
 * least once, never lost.
 *
 * Threads: the handle's owner (store.h): the relay's own store handle in
 * the daemon, the CLI process otherwise.
 */
#include "store_internal.h"

#include <stdlib.h>
#include <string.h>

#define OUTBOUND_COLS \
	"o.id, o.blob_id, b.msgid, b.tier, b.size, b.received, o.sender, o.recipient, o.created," \
	" o.next_attempt, o.attempts, coalesce(o.last_error, '')"
#define OUTBOUND_FROM " FROM outbound o JOIN blobs b ON b.id = o.blob_id"

int store_outbound_insert(struct store *st, int64_t blob_id, const char *sender, const char *recipient,
			  int64_t now)
{
	sqlite3_stmt *q = NULL;
	if (store_db_prepare(st, "INSERT INTO outbound(blob_id, sender, recipient, created, next_attempt, attempts)"
			     " VALUES(?1, ?2, ?3, ?4, ?4, 0)", &q, NULL) != ST_OK)
		return sqlite3_errcode(st->db) != SQLITE_OK ? sqlite3_errcode(st->db) : SQLITE_ERROR;
	sqlite3_bind_int64(q, 1, blob_id);
	sqlite3_bind_text(q, 2, sender != NULL ? sender : "", -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 3, recipient, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 4, now);
	int rc = store_db_run(q);
	store_db_release(st, q);
	return rc;
}

static void copy_text(char *out, size_t outlen, sqlite3_stmt *q, int col)
{
	const unsigned char *t = sqlite3_column_text(q, col);
	size_t n = t != NULL ? (size_t)sqlite3_column_bytes(q, col) : 0;
	if (n >= outlen)
		n = outlen - 1;
	if (n > 0)
		memcpy(out, t, n);
	out[n] = '\0';
}

static void read_row(sqlite3_stmt *q, struct store_outbound *o)
{
	memset(o, 0, sizeof(*o));
	o->id = sqlite3_column_int64(q, 0);
	o->blob_id = sqlite3_column_int64(q, 1);
	if (sqlite3_column_bytes(q, 2) == MSGID_BYTES)
		memcpy(o->msgid.b, sqlite3_column_blob(q, 2), MSGID_BYTES);
	int64_t tier = sqlite3_column_int64(q, 3);
	o->tier = tier >= 0 && tier < CONFIG_TIER_MAX ? (unsigned)tier : 0;
	o->size = store_db_column_u64(q, 4);
	o->received = sqlite3_column_int64(q, 5);
	copy_text(o->sender, sizeof(o->sender), q, 6);
	copy_text(o->recipient, sizeof(o->recipient), q, 7);
	o->created = sqlite3_column_int64(q, 8);
	o->next_attempt = sqlite3_column_int64(q, 9);
	int64_t attempts = sqlite3_column_int64(q, 10);
	o->attempts = attempts < 0 ? 0 : attempts > (int64_t)UINT32_MAX ? UINT32_MAX : (uint32_t)attempts;
	copy_text(o->last_error, sizeof(o->last_error), q, 11);
}

/* Steps q (bound by the caller) and collects at most max rows. */
static enum status collect(struct store *st, sqlite3_stmt *q, size_t max, struct store_outbound **rows_r,
			   size_t *n_r, char **error_r)
{
	struct store_outbound *rows = NULL;
	size_t n = 0, cap = 0;
	int rc = SQLITE_DONE;
	while (n < max && (rc = sqlite3_step(q)) == SQLITE_ROW) {
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			rows = xreallocarray(rows, cap, sizeof(*rows));
		}
		read_row(q, &rows[n++]);
	}
	enum status s = ST_OK;
	if (n < max && rc != SQLITE_DONE)
		s = store_db_fail(st->db, rc, "reading the outbound queue", error_r);
	store_db_release(st, q);
	if (s != ST_OK) {
		free(rows);
		rows = NULL;
		n = 0;
	}
	*rows_r = rows;
	*n_r = n;
	return s;
}

enum status store_outbound_due(struct store *st, int64_t now, const struct store_outbound *after, size_t max,
			       struct store_outbound **rows_r, size_t *n_r, char **error_r)
{
	*rows_r = NULL;
	*n_r = 0;
	if (max == 0)
		return ST_OK;
	/* Separate texts, not "?1 < 0 OR ...": each walks index outbound_next
	 * in order, without a scan and a sort of the whole queue. */
	static const char *const sql[2][2] = {
		{ "SELECT " OUTBOUND_COLS OUTBOUND_FROM " WHERE o.next_attempt <= ?1"
		  " ORDER BY o.next_attempt, o.id LIMIT ?2",
		  "SELECT " OUTBOUND_COLS OUTBOUND_FROM " WHERE o.next_attempt <= ?1"
		  " AND (o.next_attempt, o.id) > (?3, ?4) ORDER BY o.next_attempt, o.id LIMIT ?2" },
		{ "SELECT " OUTBOUND_COLS OUTBOUND_FROM " ORDER BY o.next_attempt, o.id LIMIT ?2",
		  "SELECT " OUTBOUND_COLS OUTBOUND_FROM " WHERE (o.next_attempt, o.id) > (?3, ?4)"
		  " ORDER BY o.next_attempt, o.id LIMIT ?2" },
	};
	sqlite3_stmt *q = NULL;
	enum status s = store_db_prepare(st, sql[now < 0][after != NULL], &q, error_r);
	if (s != ST_OK)
		return s;
	if (now >= 0)
		sqlite3_bind_int64(q, 1, now);
	sqlite3_bind_int64(q, 2, max > (size_t)INT64_MAX ? INT64_MAX : (int64_t)max);
	if (after != NULL) {
		sqlite3_bind_int64(q, 3, after->next_attempt);
		sqlite3_bind_int64(q, 4, after->id);
	}
	return collect(st, q, max, rows_r, n_r, error_r);
}

enum status store_outbound_by_msgid(struct store *st, const struct msgid *id, struct store_outbound **rows_r,
				    size_t *n_r, char **error_r)
{
	*rows_r = NULL;
	*n_r = 0;
	sqlite3_stmt *q = NULL;
	enum status s = store_db_prepare(st, "SELECT " OUTBOUND_COLS OUTBOUND_FROM " WHERE b.msgid = ?1 ORDER BY o.id",
					 &q, error_r);
	if (s != ST_OK)
		return s;
	sqlite3_bind_blob(q, 1, id->b, MSGID_BYTES, SQLITE_STATIC);
	return collect(st, q, SIZE_MAX, rows_r, n_r, error_r);
}

enum status store_outbound_get(struct store *st, int64_t id, struct store_outbound *out, char **error_r)
{
	sqlite3_stmt *q = NULL;
	enum status s = store_db_prepare(st, "SELECT " OUTBOUND_COLS OUTBOUND_FROM " WHERE o.id = ?1", &q, error_r);
	if (s != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, id);
	int rc = sqlite3_step(q);
	if (rc == SQLITE_ROW)
		read_row(q, out);
	else if (rc == SQLITE_DONE)
		s = ST_NOT_FOUND;
	else
		s = store_db_fail(st->db, rc, "reading the outbound queue", error_r);
	store_db_release(st, q);
	if (s == ST_NOT_FOUND && error_r != NULL)
		*error_r = xasprintf("no queue entry %lld", (long long)id);
	return s;
}

/* Commits when s is ST_OK, else rolls back; returns the final status. */
static enum status finish(struct store *st, enum status s, char **error_r)
{
	if (s == ST_OK)
		return store_db_commit(st, error_r);
	store_db_rollback(st);
	return s;
}

enum status store_outbound_defer(struct store *st, const int64_t *ids, size_t n, int64_t next_attempt,
				 const char *error, char **error_r)
{
	if (n == 0)
		return ST_OK;
	size_t elen = error != NULL ? strlen(error) : 0;
	if (elen > STORE_OUTBOUND_ERROR_MAX)
		elen = STORE_OUTBOUND_ERROR_MAX;
	enum status s = store_db_begin(st, error_r);
	if (s != ST_OK)
		return s;
	sqlite3_stmt *q = NULL;
	s = store_db_prepare(st, "UPDATE outbound SET attempts = attempts + 1, next_attempt = ?2, last_error = ?3"
			     " WHERE id = ?1", &q, error_r);
	for (size_t i = 0; s == ST_OK && i < n; i++) {
		sqlite3_bind_int64(q, 1, ids[i]);
		sqlite3_bind_int64(q, 2, next_attempt);
		sqlite3_bind_text(q, 3, error != NULL ? error : "", (int)elen, SQLITE_STATIC);
		s = store_db_step_done(st, q, "deferring an outbound row", error_r);
	}
	store_db_release(st, q);
	return finish(st, s, error_r);
}

enum status store_outbound_remove(struct store *st, const int64_t *ids, size_t n, size_t *removed_r,
				  char **error_r)
{
	if (removed_r != NULL)
		*removed_r = 0;
	if (n == 0)
		return ST_OK;
	struct store_unlink_list ul = { NULL, 0, 0 };
	size_t removed = 0;
	enum status s = store_db_begin(st, error_r);
	if (s != ST_OK)
		return s;
	sqlite3_stmt *q = NULL;
	s = store_db_prepare(st, "DELETE FROM outbound WHERE id = ?1 RETURNING blob_id", &q, error_r);
	for (size_t i = 0; s == ST_OK && i < n; i++) {
		sqlite3_bind_int64(q, 1, ids[i]);
		int rc = sqlite3_step(q);
		int64_t blob_id = rc == SQLITE_ROW ? sqlite3_column_int64(q, 0) : 0;
		if (rc == SQLITE_ROW)
			rc = sqlite3_step(q); /* finishes the DELETE */
		if (rc != SQLITE_DONE)
			s = store_db_fail(st->db, rc, "removing an outbound row", error_r);
		store_db_reset(q);
		if (s == ST_OK && blob_id != 0) {
			removed++;
			s = store_blob_decref(st, blob_id, &ul, error_r);
		}
	}
	store_db_release(st, q);
	s = finish(st, s, error_r);
	if (s == ST_OK) {
		store_unlink_after_commit(st, &ul);
		if (removed_r != NULL)
			*removed_r = removed;
	}
	free(ul.ids);
	return s;
}

enum status store_outbound_flush(struct store *st, int64_t now, size_t *n_r, char **error_r)
{
	*n_r = 0;
	sqlite3_stmt *q = NULL;
	enum status s = store_db_prepare(st, "UPDATE outbound SET next_attempt = ?1 WHERE next_attempt > ?1", &q,
					 error_r);
	if (s != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, now);
	s = store_db_step_done(st, q, "flushing the outbound queue", error_r);
	if (s == ST_OK)
		*n_r = (size_t)sqlite3_changes(st->db);
	store_db_release(st, q);
	return s;
}

enum status store_outbound_count(struct store *st, uint64_t *n_r, char **error_r)
{
	*n_r = 0;
	sqlite3_stmt *q = NULL;
	enum status s = store_db_prepare(st, "SELECT count(*) FROM outbound", &q, error_r);
	if (s != ST_OK)
		return s;
	int rc = sqlite3_step(q);
	if (rc == SQLITE_ROW)
		*n_r = store_db_column_u64(q, 0);
	else
		s = store_db_fail(st->db, rc, "counting the outbound queue", error_r);
	store_db_release(st, q);
	return s;
}
