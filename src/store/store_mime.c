/*
 * store_mime.c - the cached MIME structure of blobs (table mime, schema v2).
 *
 * Owns: reading and writing mime rows.  The rows hold what src/mime
 * computed from a blob (ENVELOPE, BODYSTRUCTURE, BODY texts and the part
 * map) so that IMAP FETCH never parses a message twice.  The store does not
 * interpret them.
 *
 * Life of a row: written in the delivery or APPEND transaction that adds
 * the blob row (store_mime_insert), or later by store_mime_put for blobs
 * that predate the cache or were added without it (CLI import); removed with
 * its blob row by ON DELETE CASCADE (foreign_keys=ON on every writer), so
 * no code that deletes blobs needs to know about it.
 *
 * Durability: a row is a cache.  store_mime_put is an autocommit write with
 * the handle's synchronous setting; losing a row only costs a recompute.
 *
 * Threads: the handle's owner (see store.h): get on any thread's own
 * handle, put from a thread that may block.
 */
#include "store_internal.h"

#include <stdlib.h>
#include <string.h>

static void bind_row(sqlite3_stmt *q, int first, const struct store_mime *m)
{
	sqlite3_bind_text(q, first, m->envelope, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, first + 1, m->bodystructure, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, first + 2, m->body, -1, SQLITE_STATIC);
	/* A zero-length blob must still be non-NULL (the column is NOT NULL). */
	sqlite3_bind_blob(q, first + 3, m->parts_len ? (const void *)m->parts : "", (int)m->parts_len,
			  SQLITE_STATIC);
}

static bool row_ok(const struct store_mime *m)
{
	return m->envelope != NULL && m->bodystructure != NULL && m->body != NULL && m->parts_len <= INT32_MAX &&
	       (m->parts != NULL || m->parts_len == 0);
}

int store_mime_insert(struct store *st, int64_t blob_id, const struct store_mime *m)
{
	if (!row_ok(m))
		panic("store_mime_insert: incomplete MIME row");
	sqlite3_stmt *q = st->q[Q_MIME_INSERT];
	sqlite3_bind_int64(q, 1, blob_id);
	bind_row(q, 2, m);
	return store_db_run(q);
}

static char *column_dup(sqlite3_stmt *q, int col)
{
	const unsigned char *t = sqlite3_column_text(q, col);
	int n = sqlite3_column_bytes(q, col);
	return t ? xstrndup((const char *)t, (size_t)n) : xstrdup("");
}

enum status store_mime_get(struct store *st, const struct msgid *id, struct store_mime *out)
{
	memset(out, 0, sizeof(*out));
	sqlite3_stmt *q = st->q[Q_MIME_GET];
	sqlite3_bind_blob(q, 1, id->b, MSGID_BYTES, SQLITE_STATIC);
	int rc = sqlite3_step(q);
	if (rc != SQLITE_ROW) {
		enum status s = rc == SQLITE_DONE ? ST_NOT_FOUND : store_db_status(rc);
		if (rc != SQLITE_DONE)
			log_error("store: reading a MIME row: %s", sqlite3_errmsg(st->db));
		store_db_reset(q);
		return s;
	}
	out->envelope = column_dup(q, 0);
	out->bodystructure = column_dup(q, 1);
	out->body = column_dup(q, 2);
	const void *p = sqlite3_column_blob(q, 3);
	int n = sqlite3_column_bytes(q, 3);
	out->parts_len = n > 0 ? (size_t)n : 0;
	out->parts = xmalloc(out->parts_len ? out->parts_len : 1);
	if (out->parts_len)
		memcpy(out->parts, p, out->parts_len);
	store_db_reset(q);
	return ST_OK;
}

enum status store_mime_put(struct store *st, const struct msgid *id, const struct store_mime *m,
			   char **error_r)
{
	if (!row_ok(m))
		panic("store_mime_put: incomplete MIME row");
	sqlite3_stmt *q = st->q[Q_MIME_PUT];
	sqlite3_bind_blob(q, 1, id->b, MSGID_BYTES, SQLITE_STATIC);
	bind_row(q, 2, m);
	int rc = sqlite3_step(q);
	enum status s = ST_OK;
	if (rc != SQLITE_DONE)
		s = store_db_fail(st->db, rc, "MIME row", error_r);
	store_db_reset(q);
	return s;
}

void store_mime_free(struct store_mime *m)
{
	if (m == NULL)
		return;
	xfree(&m->envelope);
	xfree(&m->bodystructure);
	xfree(&m->body);
	xfree(&m->parts);
	m->parts_len = 0;
}
