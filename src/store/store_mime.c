/*
 * store_mime.c - the cached MIME structure of blobs (table mime, schema v2,
 * packed since v7).
 *
 * Owns: reading and writing mime rows.  A row holds what src/mime computed
 * from a blob (ENVELOPE, BODYSTRUCTURE, BODY texts and the part map) so
 * that IMAP FETCH never parses a message twice.  The row stores them in
 * src/mime's packed form (mime_pack: BODY derived from BODYSTRUCTURE, the
 * texts as tokens, about a fifth of their size); store_mime_get gives the
 * texts back byte for byte, so callers see the texts only.
 *
 * Life of a row: written in the delivery or APPEND transaction that adds
 * the blob row (store_mime_insert), or later by store_mime_put for blobs
 * that predate the cache or were added without it (CLI import, an index
 * upgraded from v6, whose text rows the v7 migration dropped); removed with
 * its blob row by ON DELETE CASCADE (foreign_keys=ON on every writer), so
 * no code that deletes blobs needs to know about it.  A row that does not
 * decode (damage) reads as missing, and the store_mime_put of the
 * recomputed row replaces it.
 *
 * Compression (store_mime_dict.c): a row is written compressed with the
 * index's newest zstd dictionary when that is smaller (first byte 0xD1,
 * STORE_MIME_DICT_MARK; a packed row starts with 0x10..0x13), and read
 * back through the dictionary it names.  A compressed row that does not
 * decode is damage like any other.
 *
 * Durability: a row is a cache.  store_mime_put is an autocommit write with
 * the handle's synchronous setting; losing a row only costs a recompute.
 *
 * Threads: the handle's owner (see store.h): get on any thread's own
 * handle, put from a thread that may block.
 */
#include "store_internal.h"

#include "mime.h"

#include <stdlib.h>
#include <string.h>

static bool row_ok(const struct store_mime *m)
{
	return m->envelope != NULL && m->bodystructure != NULL && m->body != NULL && m->parts_len <= INT32_MAX &&
	       (m->parts != NULL || m->parts_len == 0);
}

/* Binds the row of m to parameter `col` (SQLite copies it): packed, then
 * compressed when store_mime_dict_wrap says so. */
static bool bind_row(struct store *st, sqlite3_stmt *q, int col, const struct store_mime *m)
{
	struct buf b = BUF_INIT, z = BUF_INIT;
	mime_pack(m->envelope, m->bodystructure, m->body, m->parts, m->parts_len, &b);
	const uint8_t *row;
	size_t len;
	store_mime_dict_wrap(st, (const uint8_t *)b.data, b.len, &z, &row, &len);
	bool ok = len <= INT32_MAX && sqlite3_bind_blob(q, col, row, (int)len, SQLITE_TRANSIENT) == SQLITE_OK;
	buf_free(&b);
	buf_free(&z);
	return ok;
}

int store_mime_insert(struct store *st, int64_t blob_id, const struct store_mime *m)
{
	if (!row_ok(m))
		panic("store_mime_insert: incomplete MIME row");
	sqlite3_stmt *q = st->q[Q_MIME_INSERT];
	sqlite3_bind_int64(q, 1, blob_id);
	if (!bind_row(st, q, 2, m)) {
		store_db_reset(q);
		return SQLITE_TOOBIG;
	}
	return store_db_run(q);
}

/* Reads and decodes the row of `id` on `st`'s handle.  ST_NOT_FOUND with
 * *damaged_r set when a row exists but does not decode. */
static enum status mime_read(struct store *st, const struct msgid *id, struct store_mime *out,
			     bool *damaged_r)
{
	memset(out, 0, sizeof(*out));
	*damaged_r = false;
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
	const uint8_t *p = sqlite3_column_blob(q, 0);
	int n = sqlite3_column_bytes(q, 0);
	struct mime_summary sum;
	struct buf raw = BUF_INIT;
	bool ok = p != NULL && n > 0;
	if (ok && p[0] == STORE_MIME_DICT_MARK)
		ok = store_mime_dict_unwrap(st, p, (size_t)n, &raw) &&
		     mime_unpack((const uint8_t *)raw.data, raw.len, &sum);
	else if (ok)
		ok = mime_unpack(p, (size_t)n, &sum);
	buf_free(&raw);
	store_db_reset(q);
	if (!ok) {
		*damaged_r = true;
		return ST_NOT_FOUND;
	}
	*out = (struct store_mime){ sum.envelope, sum.bodystructure, sum.body, sum.parts, sum.parts_len };
	return ST_OK;
}

enum status store_mime_get(struct store *st, const struct msgid *id, struct store_mime *out)
{
	bool damaged;
	enum status s = mime_read(st, id, out, &damaged);
	if (damaged)
		log_error("store: a MIME row does not decode; it will be recomputed from its blob");
	return s;
}

/* Runs Q_MIME_PUT or Q_MIME_FIX for `id` with the packed row. */
static int mime_write(struct store *st, enum store_q which, const struct msgid *id,
		      const struct store_mime *m)
{
	sqlite3_stmt *q = st->q[which];
	sqlite3_bind_blob(q, 1, id->b, MSGID_BYTES, SQLITE_STATIC);
	if (!bind_row(st, q, 2, m)) {
		store_db_reset(q);
		return SQLITE_TOOBIG;
	}
	return store_db_run(q);
}

enum status store_mime_put(struct store *st, const struct msgid *id, const struct store_mime *m,
			   char **error_r)
{
	if (!row_ok(m))
		panic("store_mime_put: incomplete MIME row");
	int rc = mime_write(st, Q_MIME_PUT, id, m);
	if (rc == SQLITE_DONE && sqlite3_changes(st->db) == 0) {
		/* A row exists (or the blob is gone): kept, unless it is the
		 * damaged row that made the caller recompute this one. */
		struct store_mime old;
		bool damaged;
		if (mime_read(st, id, &old, &damaged) == ST_OK)
			store_mime_free(&old);
		else if (damaged)
			rc = mime_write(st, Q_MIME_FIX, id, m);
	}
	if (rc != SQLITE_DONE)
		return store_db_fail(st->db, rc, "MIME row", error_r);
	return ST_OK;
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
