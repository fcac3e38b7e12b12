/*
 * store_pop3.c - the POP3 server's UPDATE state: deleting a session's
 * DELE'd messages in one transaction.
 *
 * Contract: see store.h ("POP3 access").  Unlike an IMAP expunge, which
 * removes messages carrying \Deleted, POP3 deletes exactly the UIDs its
 * session marked, whatever their flags: the marks live in the session,
 * never in the index, so a session that ends without QUIT changes nothing.
 *
 * Transaction: BEGIN IMMEDIATE; per UID read (blob, size), delete the row,
 * drop one blob reference (the blob row goes at 0); then usage, the
 * mailbox's highestmodseq and the expunge log (IMAP QRESYNC); COMMIT.  Blob files are unlinked only after
 * COMMIT returned, so a crash in between leaves an orphan file (found by
 * a verify pass), never an index row naming a missing file.
 *
 * Threads: the caller's writer handle, on a thread that may block.
 */
#include "store_internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Removes one message; *bytes_r gets its size, *found_r whether it was there. */
static enum status remove_one(struct store *st, sqlite3_stmt *get, sqlite3_stmt *del, int64_t mailbox_id,
			      uint32_t uid, struct store_unlink_list *ul, bool *found_r, uint64_t *bytes_r,
			      char **error_r)
{
	*found_r = false;
	sqlite3_bind_int64(get, 1, mailbox_id);
	sqlite3_bind_int64(get, 2, uid);
	int rc = sqlite3_step(get);
	int64_t blob = 0;
	if (rc == SQLITE_ROW) {
		blob = sqlite3_column_int64(get, 0);
		*bytes_r = store_db_column_u64(get, 1);
		*found_r = true;
	}
	enum status s = ST_OK;
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		s = store_db_fail(st->db, rc, "reading a message to delete", error_r);
	sqlite3_reset(get);
	sqlite3_clear_bindings(get);
	if (s != ST_OK || !*found_r)
		return s;
	sqlite3_bind_int64(del, 1, mailbox_id);
	sqlite3_bind_int64(del, 2, uid);
	s = store_db_step_done(st, del, "deleting a message", error_r);
	if (s == ST_OK)
		s = store_blob_decref(st, blob, ul, error_r);
	return s;
}

/* Usage, the mailbox's mod-sequence and the expunge log after removing
 * `gone` (count UIDs). */
static enum status account_after(struct store *st, int64_t account_id, int64_t mailbox_id, uint64_t count,
				 uint64_t bytes, const uint32_t *gone, char **error_r)
{
	sqlite3_stmt *q = NULL;
	enum status s = store_db_prepare(st, "UPDATE accounts SET used_bytes = max(0, used_bytes - ?2),"
				 " used_messages = max(0, used_messages - ?3) WHERE id = ?1", &q, error_r);
	if (s != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, account_id);
	store_db_bind_u64(q, 2, bytes);
	store_db_bind_u64(q, 3, count);
	s = store_db_step_done(st, q, "updating quota usage", error_r);
	store_db_release(st, q);
	if (s != ST_OK)
		return s;
	if ((s = store_db_prepare(st, "UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = ?1"
			  " RETURNING highestmodseq", &q, error_r)) != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, mailbox_id);
	int rc = sqlite3_step(q);
	uint64_t modseq = rc == SQLITE_ROW ? store_db_column_u64(q, 0) : 0;
	if (rc != SQLITE_ROW)
		s = store_db_fail(st->db, rc == SQLITE_DONE ? SQLITE_NOTFOUND : rc, "mailbox modseq", error_r);
	store_db_release(st, q);
	if (s == ST_OK)
		s = store_vanished_log(st, mailbox_id, modseq, gone, (size_t)count, error_r);
	return s;
}

static enum status mailbox_owned(struct store *st, int64_t account_id, int64_t mailbox_id, char **error_r)
{
	sqlite3_stmt *q = NULL;
	enum status s = store_db_prepare(st, "SELECT 1 FROM mailboxes WHERE id = ?1 AND account_id = ?2", &q, error_r);
	if (s != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, mailbox_id);
	sqlite3_bind_int64(q, 2, account_id);
	int rc = sqlite3_step(q);
	if (rc == SQLITE_DONE) {
		s = ST_NOT_FOUND;
		if (error_r)
			*error_r = xstrdup("mailbox not found");
	} else if (rc != SQLITE_ROW) {
		s = store_db_fail(st->db, rc, "mailbox lookup", error_r);
	}
	store_db_release(st, q);
	return s;
}

enum status store_pop3_delete(struct store *st, int64_t account_id, int64_t mailbox_id, const uint32_t *uids,
			      size_t n, size_t *deleted_r, char **error_r)
{
	*deleted_r = 0;
	struct store_unlink_list ul = { NULL, 0, 0 };
	enum status s = store_db_begin(st, error_r);
	if (s != ST_OK)
		return s;
	sqlite3_stmt *get = NULL, *del = NULL;
	s = mailbox_owned(st, account_id, mailbox_id, error_r);
	if (s == ST_OK)
		s = store_db_prepare(st, "SELECT m.blob_id, b.size FROM messages m JOIN blobs b ON b.id = m.blob_id"
			     " WHERE m.mailbox_id = ?1 AND m.uid = ?2", &get, error_r);
	if (s == ST_OK)
		s = store_db_prepare(st, "DELETE FROM messages WHERE mailbox_id = ?1 AND uid = ?2", &del, error_r);
	uint64_t count = 0, bytes = 0;
	uint32_t *gone = xcalloc(n ? n : 1, sizeof(*gone));
	for (size_t i = 0; s == ST_OK && i < n; i++) {
		bool found = false;
		uint64_t size = 0;
		s = remove_one(st, get, del, mailbox_id, uids[i], &ul, &found, &size, error_r);
		if (s == ST_OK && found) {
			gone[count++] = uids[i];
			bytes += size;
		}
	}
	store_db_release(st, get);
	store_db_release(st, del);
	if (s == ST_OK && count > 0)
		s = account_after(st, account_id, mailbox_id, count, bytes, gone, error_r);
	free(gone);
	if (s == ST_OK) {
		s = store_db_commit(st, error_r);
	} else {
		store_db_rollback(st);
	}
	if (s == ST_OK) {
		store_unlink_after_commit(st, &ul);
		*deleted_r = (size_t)count;
	}
	free(ul.ids);
	return s;
}
