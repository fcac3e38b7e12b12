/*
 * store_imap.c - the mailbox operations of the IMAP server.
 *
 * Owns: mailbox create/delete/rename/subscribe, listing and change polling,
 * message listing, flag changes, expunge, copy/move and append, as
 * declared in store.h ("IMAP access").
 *
 * Transactions: each writing function is one BEGIN IMMEDIATE ... COMMIT on
 * the caller's writer handle; any failure rolls the whole call back, so a
 * COPY of 50 messages is all or nothing.  A change takes the mod-sequence
 * highestmodseq + 1 of its mailbox (one value per call and mailbox).
 * Durability: every commit is fsynced (store.fsync=yes) except flag-only
 * ones with imap.flag_fsync=no, which are durable at the next fsynced
 * commit or checkpoint (see flags_relaxed below).
 *
 * Change reads: store_imap_changes reads a mailbox's changes since a
 * (uidnext, modseq) in one deferred (lock-free) read transaction, through
 * the messages_modseq index, the primary key and the expunge log.
 *
 * Blob files: a blob whose reference count falls to 0 loses its row inside
 * the transaction and its file only after COMMIT returned, so a crash in
 * between leaves an orphan file (found by a verify pass) and never an index
 * row naming a missing file.
 *
 * Keywords (IMAP custom flags) live in messages.keywords: space-separated
 * atoms in the spelling first used in the mailbox, sorted ASCII
 * case-insensitively, NULL when none.  They compare case-insensitively
 * (RFC 3501 2.3.2).  A mailbox holds at most STORE_KEYWORDS_MAX distinct
 * keywords, counted over its messages inside the transaction that would
 * add one; COPY/MOVE carry a message's keywords as they are.
 *
 * Expunge log (QRESYNC): every removal of messages from a mailbox that
 * stays (EXPUNGE, MOVE's source, RENAME of INBOX, POP3's update state)
 * writes (mailbox, modseq, uid) rows into `vanished` in its own
 * transaction; `vanished_floor` says after which modseq a mailbox's log is
 * complete (set by its first logged expunge, raised by pruning to the
 * newest STORE_VANISHED_KEEP rows).
 *
 * Statements here come from store_db_prepare, which keeps them per handle
 * by their SQL text (compiled once, then reset and reused); each is given
 * back with store_db_release.
 *
 * Threads: see store.h - writers on a blocking thread, reads anywhere the
 * handle is owned.
 */
#include "store_internal.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MSG_FLAGS_ALL (MSG_FLAG_SEEN | MSG_FLAG_ANSWERED | MSG_FLAG_FLAGGED | MSG_FLAG_DELETED | MSG_FLAG_DRAFT)

/* ---- small helpers --------------------------------------------------------- */

static bool column_id(sqlite3_stmt *q, int col, struct msgid *id)
{
	const void *b = sqlite3_column_blob(q, col);
	if (b == NULL || sqlite3_column_bytes(q, col) != MSGID_BYTES)
		return false;
	memcpy(id->b, b, MSGID_BYTES);
	return true;
}

bool store_imap_mailbox_name(const char *in, char out[STORE_MAILBOX_NAME_MAX + 1])
{
	size_t len = strlen(in);
	if (len == 0 || len > STORE_MAILBOX_NAME_MAX)
		return false;
	if (in[0] == STORE_MAILBOX_SEP || in[len - 1] == STORE_MAILBOX_SEP)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)in[i];
		if (c < 0x20 || c >= 0x7f || c == '*' || c == '%')
			return false;
		if (c == STORE_MAILBOX_SEP && in[i + 1] == STORE_MAILBOX_SEP)
			return false;
	}
	memcpy(out, in, len + 1);
	if (len >= 5 && strncasecmp(in, "INBOX", 5) == 0 && (len == 5 || in[5] == STORE_MAILBOX_SEP))
		memcpy(out, "INBOX", 5);
	return true;
}

/* Account quota state. */
struct quota {
	uint64_t quota_bytes, quota_messages, used_bytes, used_messages;
};

static enum status quota_get(struct store *st, int64_t account_id, struct quota *qt, char **error_r)
{
	sqlite3_stmt *q = st->q[Q_DELIVER_QUOTA];
	sqlite3_bind_int64(q, 1, account_id);
	int rc = sqlite3_step(q);
	enum status s = ST_OK;
	if (rc == SQLITE_ROW) {
		qt->quota_bytes = store_db_column_u64(q, 0);
		qt->quota_messages = store_db_column_u64(q, 1);
		qt->used_bytes = store_db_column_u64(q, 2);
		qt->used_messages = store_db_column_u64(q, 3);
	} else if (rc == SQLITE_DONE) {
		s = ST_NOT_FOUND;
		if (error_r)
			*error_r = xstrdup("account not found");
	} else {
		s = store_db_fail(st->db, rc, "reading quota", error_r);
	}
	store_db_reset(q);
	return s;
}

/* ST_OVER_QUOTA_* when adding `messages` messages of `bytes` in total
 * would pass either limit. */
static enum status quota_check(struct store *st, const struct quota *qt, uint64_t messages, uint64_t bytes,
			       char **error_r)
{
	bool over = (qt->quota_bytes && (qt->used_bytes > qt->quota_bytes ||
					 bytes > qt->quota_bytes - qt->used_bytes)) ||
		    (qt->quota_messages && (qt->used_messages > qt->quota_messages ||
					    messages > qt->quota_messages - qt->used_messages));
	if (!over)
		return ST_OK;
	if (error_r)
		*error_r = xstrdup("quota exceeded");
	return st->s->quota_over_reply == QUOTA_REPLY_PERMANENT ? ST_OVER_QUOTA_PERM : ST_OVER_QUOTA_TEMP;
}

/* Adds (sign +1) or removes (-1) messages from the account's usage. */
static enum status usage_add(struct store *st, int64_t account_id, int sign, uint64_t messages,
			     uint64_t bytes, char **error_r)
{
	sqlite3_stmt *q = NULL;
	enum status s = store_db_prepare(st, sign > 0
		? "UPDATE accounts SET used_bytes = used_bytes + ?2, used_messages = used_messages + ?3"
		  " WHERE id = ?1"
		: "UPDATE accounts SET used_bytes = max(0, used_bytes - ?2),"
		  " used_messages = max(0, used_messages - ?3) WHERE id = ?1", &q, error_r);
	if (s != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, account_id);
	store_db_bind_u64(q, 2, bytes);
	store_db_bind_u64(q, 3, messages);
	s = store_db_step_done(st, q, "updating quota usage", error_r);
	store_db_release(st, q);
	return s;
}

/* Takes the next mod-sequence of a mailbox (and optionally `uids` UIDs). */
static enum status mailbox_bump(struct store *st, int64_t mailbox_id, uint32_t uids, uint32_t *first_uid_r,
				uint64_t *modseq_r, char **error_r)
{
	sqlite3_stmt *q = NULL;
	enum status s = store_db_prepare(st, "UPDATE mailboxes SET uidnext = uidnext + ?2, highestmodseq = highestmodseq + 1"
				 " WHERE id = ?1 RETURNING uidnext - ?2, highestmodseq", &q, error_r);
	if (s != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, mailbox_id);
	sqlite3_bind_int64(q, 2, uids);
	int rc = sqlite3_step(q);
	if (rc == SQLITE_ROW) {
		int64_t first = sqlite3_column_int64(q, 0);
		if (first < 1 || first + (int64_t)uids - 1 > (int64_t)UINT32_MAX) {
			s = ST_TEMPFAIL;
			if (error_r)
				*error_r = xstrdup("mailbox has run out of UIDs");
		} else {
			if (first_uid_r)
				*first_uid_r = (uint32_t)first;
			*modseq_r = store_db_column_u64(q, 1);
		}
	} else if (rc == SQLITE_DONE) {
		s = ST_NOT_FOUND;
		if (error_r)
			*error_r = xstrdup("mailbox not found");
	} else {
		s = store_db_fail(st->db, rc, "mailbox modseq", error_r);
	}
	store_db_release(st, q);
	return s;
}

/* COMMIT, or ROLLBACK when s is not ST_OK; returns the final status. */
static enum status finish(struct store *st, enum status s, char **error_r)
{
	if (s == ST_OK)
		return store_db_commit(st, error_r);
	store_db_rollback(st);
	return s;
}

/* ---- reading ------------------------------------------------------------------ */

#define MAILBOX_COLS "id, name, coalesce(special_use, ''), uidvalidity, uidnext, highestmodseq, subscribed"

static void mailbox_row(sqlite3_stmt *q, struct store_mailbox_info *out)
{
	memset(out, 0, sizeof(*out));
	out->id = sqlite3_column_int64(q, 0);
	const unsigned char *name = sqlite3_column_text(q, 1);
	snprintf(out->name, sizeof(out->name), "%s", name ? (const char *)name : "");
	const unsigned char *su = sqlite3_column_text(q, 2);
	snprintf(out->special_use, sizeof(out->special_use), "%s", su ? (const char *)su : "");
	out->uidvalidity = (uint32_t)sqlite3_column_int64(q, 3);
	out->uidnext = (uint32_t)sqlite3_column_int64(q, 4);
	out->highestmodseq = store_db_column_u64(q, 5);
	out->subscribed = sqlite3_column_int64(q, 6) != 0;
}

enum status store_imap_mailbox_get(struct store *st, int64_t account_id, const char *name, bool counts,
				   struct store_mailbox_info *out)
{
	char norm[STORE_MAILBOX_NAME_MAX + 1];
	if (!store_imap_mailbox_name(name, norm))
		return ST_INVALID;
	sqlite3_stmt *q = NULL;
	enum status s = store_db_prepare(st, counts
		? "SELECT " MAILBOX_COLS ", (SELECT count(*) FROM messages WHERE mailbox_id = mb.id),"
		  " (SELECT count(*) FROM messages WHERE mailbox_id = mb.id AND (flags & 1) = 0)"
		  " FROM mailboxes mb WHERE account_id = ?1 AND name = ?2"
		: "SELECT " MAILBOX_COLS " FROM mailboxes WHERE account_id = ?1 AND name = ?2", &q, NULL);
	if (s != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, account_id);
	sqlite3_bind_text(q, 2, norm, -1, SQLITE_STATIC);
	int rc = sqlite3_step(q);
	if (rc == SQLITE_ROW) {
		mailbox_row(q, out);
		if (counts) {
			out->messages = store_db_column_u64(q, 7);
			out->unseen = store_db_column_u64(q, 8);
		}
	} else if (rc == SQLITE_DONE) {
		s = ST_NOT_FOUND;
	} else {
		log_error("store: mailbox lookup: %s", sqlite3_errmsg(st->db));
		s = store_db_status(rc);
	}
	store_db_release(st, q);
	return s;
}

enum status store_imap_mailbox_list(struct store *st, int64_t account_id, store_imap_mailbox_cb *cb,
				    void *ctx)
{
	sqlite3_stmt *q = NULL;
	enum status s = store_db_prepare(st, "SELECT " MAILBOX_COLS " FROM mailboxes WHERE account_id = ?1"
				 " ORDER BY name <> 'INBOX', name", &q, NULL);
	if (s != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, account_id);
	int rc;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		struct store_mailbox_info mb;
		mailbox_row(q, &mb);
		cb(ctx, &mb);
	}
	if (rc != SQLITE_DONE) {
		log_error("store: listing mailboxes: %s", sqlite3_errmsg(st->db));
		s = store_db_status(rc);
	}
	store_db_release(st, q);
	return s;
}

enum status store_imap_recent_get(struct store *st, int64_t mailbox_id, uint32_t *uid_r)
{
	sqlite3_stmt *q = NULL;
	enum status s = store_db_prepare(st, "SELECT uid FROM mailbox_recent WHERE mailbox_id = ?1", &q, NULL);
	if (s != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, mailbox_id);
	int rc = sqlite3_step(q);
	if (rc == SQLITE_ROW) {
		int64_t v = sqlite3_column_int64(q, 0);
		*uid_r = v < 1 ? 1 : v > (int64_t)UINT32_MAX ? UINT32_MAX : (uint32_t)v;
	} else if (rc == SQLITE_DONE) {
		*uid_r = 1;
	} else {
		log_error("store: recent uid lookup: %s", sqlite3_errmsg(st->db));
		s = store_db_status(rc);
	}
	store_db_release(st, q);
	return s;
}

enum status store_imap_recent_advance(struct store *st, int64_t mailbox_id, uint32_t uid, char **error_r)
{
	sqlite3_stmt *q = NULL;
	enum status s = store_db_prepare(st, "INSERT INTO mailbox_recent(mailbox_id, uid)"
					 " SELECT id, ?2 FROM mailboxes WHERE id = ?1"
					 " ON CONFLICT(mailbox_id) DO UPDATE SET uid = max(uid, excluded.uid)",
					 &q, error_r);
	if (s != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, mailbox_id);
	sqlite3_bind_int64(q, 2, uid);
	s = store_db_step_done(st, q, "recent uid", error_r);
	store_db_release(st, q);
	return s;
}

enum status store_imap_mailbox_poll(struct store *st, int64_t mailbox_id, uint32_t *uidnext_r,
				    uint64_t *highestmodseq_r)
{
	sqlite3_stmt *q = NULL;
	enum status s = store_db_prepare(st, "SELECT uidnext, highestmodseq FROM mailboxes WHERE id = ?1", &q, NULL);
	if (s != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, mailbox_id);
	int rc = sqlite3_step(q);
	if (rc == SQLITE_ROW) {
		*uidnext_r = (uint32_t)sqlite3_column_int64(q, 0);
		*highestmodseq_r = store_db_column_u64(q, 1);
	} else if (rc == SQLITE_DONE) {
		s = ST_NOT_FOUND;
	} else {
		s = store_db_status(rc);
	}
	store_db_release(st, q);
	return s;
}

enum status store_imap_messages(struct store *st, int64_t mailbox_id, uint32_t uid_min,
				store_imap_msg_cb *cb, void *ctx)
{
	sqlite3_stmt *q = NULL;
	enum status s = store_db_prepare(st, "SELECT m.uid, m.flags, m.modseq, b.size, b.received, b.msgid, m.keywords"
				 " FROM messages m JOIN blobs b ON b.id = m.blob_id"
				 " WHERE m.mailbox_id = ?1 AND m.uid >= ?2 ORDER BY m.uid", &q, NULL);
	if (s != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, mailbox_id);
	sqlite3_bind_int64(q, 2, uid_min);
	int rc;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		struct store_imap_msg m;
		m.uid = (uint32_t)sqlite3_column_int64(q, 0);
		m.flags = (uint32_t)sqlite3_column_int64(q, 1) & MSG_FLAGS_ALL;
		m.modseq = store_db_column_u64(q, 2);
		m.size = store_db_column_u64(q, 3);
		m.received = sqlite3_column_int64(q, 4);
		if (!column_id(q, 5, &m.id))
			continue; /* impossible by the CHECK constraint */
		m.keywords = (const char *)sqlite3_column_text(q, 6);
		cb(ctx, &m);
	}
	if (rc != SQLITE_DONE) {
		log_error("store: listing messages: %s", sqlite3_errmsg(st->db));
		s = store_db_status(rc);
	}
	store_db_release(st, q);
	return s;
}

/* Steps q (bound by the caller) and hands each row (uid, flags, modseq,
 * keywords) to cb, then releases q. */
static enum status changes_rows(struct store *st, sqlite3_stmt *q, store_imap_msg_cb *cb, void *ctx)
{
	enum status s = ST_OK;
	int rc;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		struct store_imap_msg m;
		memset(&m, 0, sizeof(m));
		m.uid = (uint32_t)sqlite3_column_int64(q, 0);
		m.flags = (uint32_t)sqlite3_column_int64(q, 1) & MSG_FLAGS_ALL;
		m.modseq = store_db_column_u64(q, 2);
		m.keywords = (const char *)sqlite3_column_text(q, 3);
		cb(ctx, &m);
	}
	if (rc != SQLITE_DONE) {
		log_error("store: reading changed messages: %s", sqlite3_errmsg(st->db));
		s = store_db_status(rc);
	}
	store_db_release(st, q);
	return s;
}

/* The expunges after `modseq` below `uidnext`: from the log when it
 * reaches back, else *full_r when a count of the rows below uidnext
 * differs from `live`.
 *
 * A mailbox without a floor row has never had a removal logged, and every
 * removal from a mailbox that goes on existing is logged by the
 * transaction that makes it (store_vanished_log): so it has had none since
 * `modseq`.  (QRESYNC's store_imap_vanished must treat that case as
 * incomplete: a client's modseq may predate logging - an older version, a
 * rebuild - which a session of the running daemon cannot.) */
static enum status changes_expunged(struct store *st, int64_t mailbox_id, uint32_t uidnext, uint64_t modseq,
				    size_t live, uint32_t **uids_r, size_t *n_r, bool *full_r)
{
	sqlite3_stmt *q = NULL;
	enum status s = store_db_prepare(st, "SELECT modseq FROM vanished_floor WHERE mailbox_id = ?1", &q, NULL);
	if (s != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, mailbox_id);
	int rc = sqlite3_step(q);
	bool logged = rc == SQLITE_ROW;
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		s = store_db_status(rc);
	store_db_release(st, q);
	if (s != ST_OK || !logged)
		return s;
	bool complete;
	s = store_imap_vanished(st, mailbox_id, modseq, uids_r, n_r, &complete);
	if (s != ST_OK || complete) {
		size_t k = 0;   /* keep the UIDs the session could know */
		for (size_t i = 0; i < *n_r; i++) {
			if ((*uids_r)[i] < uidnext)
				(*uids_r)[k++] = (*uids_r)[i];
		}
		*n_r = k;
		return s;
	}
	/* The log was pruned past `modseq`: count. */
	if ((s = store_db_prepare(st, "SELECT count(*) FROM messages WHERE mailbox_id = ?1 AND uid < ?2", &q, NULL)) !=
	    ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, mailbox_id);
	sqlite3_bind_int64(q, 2, uidnext);
	rc = sqlite3_step(q);
	if (rc == SQLITE_ROW)
		*full_r = (uint64_t)sqlite3_column_int64(q, 0) != (uint64_t)live;
	else
		s = store_db_status(rc);
	store_db_release(st, q);
	return s;
}

static enum status changes_read(struct store *st, int64_t mailbox_id, uint32_t uidnext, uint64_t modseq,
				size_t live, store_imap_msg_cb *cb, void *ctx, uint32_t *uidnext_r,
				uint64_t *modseq_r, uint32_t **expunged_r, size_t *n_expunged_r, bool *full_r)
{
	enum status s = store_imap_mailbox_poll(st, mailbox_id, uidnext_r, modseq_r);
	if (s != ST_OK)
		return s;
	if (*uidnext_r == uidnext && *modseq_r == modseq)
		return ST_OK;
	if ((s = changes_expunged(st, mailbox_id, uidnext, modseq, live, expunged_r, n_expunged_r, full_r)) != ST_OK)
		return s;
	if (*full_r) {
		free(*expunged_r);
		*expunged_r = NULL;
		*n_expunged_r = 0;
		return store_imap_messages(st, mailbox_id, 1, cb, ctx);
	}
	sqlite3_stmt *q = NULL;
	if (*modseq_r != modseq) {
		/* INDEXED BY: the primary key would walk the whole mailbox. */
		if ((s = store_db_prepare(st, "SELECT uid, flags, modseq, keywords FROM messages INDEXED BY messages_modseq"
				  " WHERE mailbox_id = ?1 AND modseq > ?2 AND uid < ?3 ORDER BY uid", &q, NULL)) != ST_OK)
			return s;
		sqlite3_bind_int64(q, 1, mailbox_id);
		store_db_bind_u64(q, 2, modseq);
		sqlite3_bind_int64(q, 3, uidnext);
		if ((s = changes_rows(st, q, cb, ctx)) != ST_OK)
			return s;
	}
	if (*uidnext_r == uidnext)
		return ST_OK;
	if ((s = store_db_prepare(st, "SELECT uid, flags, modseq, keywords FROM messages"
			  " WHERE mailbox_id = ?1 AND uid >= ?2 ORDER BY uid", &q, NULL)) != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, mailbox_id);
	sqlite3_bind_int64(q, 2, uidnext);
	return changes_rows(st, q, cb, ctx);
}

enum status store_imap_changes(struct store *st, int64_t mailbox_id, uint32_t uidnext, uint64_t modseq,
			       size_t live, store_imap_msg_cb *cb, void *ctx, uint32_t *uidnext_r,
			       uint64_t *modseq_r, uint32_t **expunged_r, size_t *n_expunged_r, bool *full_r)
{
	*expunged_r = NULL;
	*n_expunged_r = 0;
	*full_r = false;
	/* A deferred BEGIN takes no lock: the statements below share one WAL
	 * snapshot, so the counts, the log and the rows agree. */
	bool own = sqlite3_get_autocommit(st->db) != 0;
	sqlite3_stmt *q = NULL;
	enum status s = ST_OK;
	if (own && (s = store_db_prepare(st, "BEGIN DEFERRED", &q, NULL)) == ST_OK) {
		int rc = sqlite3_step(q);
		if (rc != SQLITE_DONE)
			s = store_db_fail(st->db, rc, "begin read", NULL);
		store_db_release(st, q);
	}
	if (s == ST_OK)
		s = changes_read(st, mailbox_id, uidnext, modseq, live, cb, ctx, uidnext_r, modseq_r, expunged_r,
				 n_expunged_r, full_r);
	if (own && !sqlite3_get_autocommit(st->db)) {
		/* Nothing was written: ending the read is COMMIT, which cannot fail
		 * for want of a lock; on a failure the transaction is rolled back. */
		if (store_db_prepare(st, "COMMIT", &q, NULL) == ST_OK) {
			if (sqlite3_step(q) != SQLITE_DONE)
				store_db_rollback(st);
			store_db_release(st, q);
		} else {
			store_db_rollback(st);
		}
	}
	if (s != ST_OK) {
		free(*expunged_r);
		*expunged_r = NULL;
		*n_expunged_r = 0;
	}
	return s;
}

bool store_read_begin(struct store *st)
{
	if (!sqlite3_get_autocommit(st->db))
		return false;
	char *err = NULL;
	if (sqlite3_exec(st->db, "BEGIN", NULL, NULL, &err) == SQLITE_OK)
		return true;
	log_warn("store: cannot open a read transaction: %s", err ? err : "?");
	sqlite3_free(err);
	return false;
}

void store_read_end(struct store *st, bool opened)
{
	if (!opened || sqlite3_get_autocommit(st->db))
		return;
	char *err = NULL;
	if (sqlite3_exec(st->db, "COMMIT", NULL, NULL, &err) == SQLITE_OK)
		return;
	/* Only reads ran, so nothing is lost; never leave it open. */
	log_error("store: ending a read transaction: %s", err ? err : "?");
	sqlite3_free(err);
	if (sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL) != SQLITE_OK)
		panic("store: a read transaction stays open: %s", sqlite3_errmsg(st->db));
}

enum status store_imap_cache_limit(struct store *st, unsigned kib, char **error_r)
{
	char sql[64], *err = NULL;
	snprintf(sql, sizeof(sql), "PRAGMA cache_size = -%u", kib);
	if (sqlite3_exec(st->db, sql, NULL, NULL, &err) == SQLITE_OK)
		return ST_OK;
	if (error_r)
		*error_r = xasprintf("index cache size: %s", err ? err : "unknown error");
	sqlite3_free(err);
	return ST_TEMPFAIL;
}

/* ---- mailboxes ----------------------------------------------------------------- */

/* Looks a mailbox up inside a transaction: id and uidvalidity. */
static enum status mailbox_find(struct store *st, int64_t account_id, const char *norm, int64_t *id_r,
				char **error_r)
{
	sqlite3_stmt *q = st->q[Q_MAILBOX_ID];
	sqlite3_bind_int64(q, 1, account_id);
	sqlite3_bind_text(q, 2, norm, -1, SQLITE_STATIC);
	int rc = sqlite3_step(q);
	enum status s = ST_OK;
	if (rc == SQLITE_ROW)
		*id_r = sqlite3_column_int64(q, 0);
	else if (rc == SQLITE_DONE)
		s = ST_NOT_FOUND;
	else
		s = store_db_fail(st->db, rc, "mailbox lookup", error_r);
	store_db_reset(q);
	return s;
}

/* Inserts one mailbox with a fresh UIDVALIDITY. */
static enum status mailbox_insert(struct store *st, int64_t account_id, const char *norm, int64_t *id_r,
				  char **error_r)
{
	sqlite3_stmt *q = st->q[Q_UIDV_RESERVE];
	sqlite3_bind_int64(q, 1, 1);
	int rc = sqlite3_step(q);
	int64_t uidv = rc == SQLITE_ROW ? sqlite3_column_int64(q, 0) : 0;
	enum status s = rc == SQLITE_ROW ? ST_OK : store_db_fail(st->db, rc, "reserving UIDVALIDITY", error_r);
	store_db_reset(q);
	if (s != ST_OK)
		return s;
	if (uidv < 1 || uidv > (int64_t)UINT32_MAX) {
		if (error_r)
			*error_r = xstrdup("UIDVALIDITY counter exhausted");
		return ST_TEMPFAIL;
	}
	q = st->q[Q_MAILBOX_INSERT];
	sqlite3_bind_int64(q, 1, account_id);
	sqlite3_bind_text(q, 2, norm, -1, SQLITE_STATIC);
	sqlite3_bind_null(q, 3);
	sqlite3_bind_int64(q, 4, uidv);
	rc = store_db_run(q);
	if (rc != SQLITE_DONE)
		return store_db_fail(st->db, rc, "creating mailbox", error_r);
	if (id_r)
		*id_r = sqlite3_last_insert_rowid(st->db);
	return ST_OK;
}

/* Creates `norm` and each missing superior (inside the caller's transaction).
 * ST_EXISTS only when `norm` itself exists. */
static enum status create_with_superiors(struct store *st, int64_t account_id, const char *norm,
					 int64_t *id_r, char **error_r)
{
	char part[STORE_MAILBOX_NAME_MAX + 1];
	size_t len = strlen(norm);
	for (size_t i = 0; i <= len; i++) {
		if (norm[i] != STORE_MAILBOX_SEP && norm[i] != '\0')
			continue;
		memcpy(part, norm, i);
		part[i] = '\0';
		int64_t id;
		enum status s = mailbox_find(st, account_id, part, &id, error_r);
		if (s == ST_OK) {
			if (i == len) {
				if (error_r)
					*error_r = xstrdup("mailbox already exists");
				return ST_EXISTS;
			}
			continue;
		}
		if (s != ST_NOT_FOUND)
			return s;
		if ((s = mailbox_insert(st, account_id, part, &id, error_r)) != ST_OK)
			return s;
		if (i == len && id_r)
			*id_r = id;
	}
	return ST_OK;
}

enum status store_imap_mailbox_create(struct store *st, int64_t account_id, const char *name,
				      char **error_r)
{
	char norm[STORE_MAILBOX_NAME_MAX + 1];
	if (!store_imap_mailbox_name(name, norm)) {
		if (error_r)
			*error_r = xstrdup("invalid mailbox name");
		return ST_INVALID;
	}
	enum status s = store_db_begin(st, error_r);
	if (s != ST_OK)
		return s;
	s = create_with_superiors(st, account_id, norm, NULL, error_r);
	return finish(st, s, error_r);
}

/* True if the mailbox `norm` has inferiors. */
static enum status has_inferiors(struct store *st, int64_t account_id, const char *norm, bool *yes,
				 char **error_r)
{
	sqlite3_stmt *q = NULL;
	enum status s = store_db_prepare(st, "SELECT 1 FROM mailboxes WHERE account_id = ?1"
				 " AND substr(name, 1, length(?2) + 1) = ?2 || '/' LIMIT 1", &q, error_r);
	if (s != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, account_id);
	sqlite3_bind_text(q, 2, norm, -1, SQLITE_STATIC);
	int rc = sqlite3_step(q);
	*yes = rc == SQLITE_ROW;
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		s = store_db_fail(st->db, rc, "mailbox children", error_r);
	store_db_release(st, q);
	return s;
}

/* Deletes message rows of a mailbox: all, or those matching `filter` (SQL
 * over messages m; with uids, run once per uid bound to ?2), dropping blob
 * references and usage.  Removed UIDs go to *uids_r (ascending) if given. */
static enum status remove_messages(struct store *st, int64_t account_id, int64_t mailbox_id,
				   const char *filter, const uint32_t *uids, size_t n_uids,
				   struct store_unlink_list *ul, uint32_t **uids_r, size_t *n_r, char **error_r)
{
	char sql[512];
	snprintf(sql, sizeof(sql),
		 "SELECT m.uid, m.blob_id, b.size FROM messages m JOIN blobs b ON b.id = m.blob_id"
		 " WHERE m.mailbox_id = ?1 %s ORDER BY m.uid", filter);
	sqlite3_stmt *q = NULL, *del = NULL;
	enum status s = store_db_prepare(st, sql, &q, error_r);
	if (s == ST_OK)
		s = store_db_prepare(st, "DELETE FROM messages WHERE mailbox_id = ?1 AND uid = ?2", &del, error_r);
	uint64_t bytes = 0;
	struct { uint32_t uid; int64_t blob; } *rows = NULL;
	size_t n = 0, cap = 0;
	/* With a UID list, run once per uid; otherwise once.  Rows are
	 * collected first: deleting while the SELECT steps would disturb it. */
	for (size_t k = 0; s == ST_OK && k < (uids ? n_uids : 1); k++) {
		sqlite3_bind_int64(q, 1, mailbox_id);
		if (uids)
			sqlite3_bind_int64(q, 2, uids[k]);
		int rc;
		while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
			if (n == cap) {
				cap = cap ? cap * 2 : 64;
				rows = xreallocarray(rows, cap, sizeof(*rows));
			}
			rows[n].uid = (uint32_t)sqlite3_column_int64(q, 0);
			rows[n].blob = sqlite3_column_int64(q, 1);
			bytes += store_db_column_u64(q, 2);
			n++;
		}
		if (rc != SQLITE_DONE)
			s = store_db_fail(st->db, rc, "reading messages to remove", error_r);
		sqlite3_reset(q);
		sqlite3_clear_bindings(q);
	}
	store_db_release(st, q);
	for (size_t i = 0; s == ST_OK && i < n; i++) {
		sqlite3_bind_int64(del, 1, mailbox_id);
		sqlite3_bind_int64(del, 2, rows[i].uid);
		if ((s = store_db_step_done(st, del, "removing a message", error_r)) == ST_OK)
			s = store_blob_decref(st, rows[i].blob, ul, error_r);
	}
	store_db_release(st, del);
	if (s == ST_OK && n > 0)
		s = usage_add(st, account_id, -1, n, bytes, error_r);
	if (s == ST_OK && uids_r) {
		uint32_t *out = xcalloc(n ? n : 1, sizeof(*out));
		for (size_t i = 0; i < n; i++)
			out[i] = rows[i].uid;
		*uids_r = out;
		*n_r = n;
	}
	free(rows);
	return s;
}

enum status store_imap_mailbox_delete(struct store *st, int64_t account_id, const char *name,
				      char **error_r)
{
	char norm[STORE_MAILBOX_NAME_MAX + 1];
	if (!store_imap_mailbox_name(name, norm)) {
		if (error_r)
			*error_r = xstrdup("invalid mailbox name");
		return ST_INVALID;
	}
	if (strcmp(norm, "INBOX") == 0) {
		if (error_r)
			*error_r = xstrdup("INBOX cannot be deleted");
		return ST_INVALID;
	}
	struct store_unlink_list ul = { NULL, 0, 0 };
	enum status s = store_db_begin(st, error_r);
	if (s != ST_OK)
		return s;
	int64_t id = 0;
	bool inferiors = false;
	s = mailbox_find(st, account_id, norm, &id, error_r);
	if (s == ST_NOT_FOUND && error_r)
		*error_r = xstrdup("no such mailbox");
	if (s == ST_OK)
		s = has_inferiors(st, account_id, norm, &inferiors, error_r);
	if (s == ST_OK && inferiors) {
		s = ST_INVALID;
		if (error_r)
			*error_r = xstrdup("mailbox has inferior hierarchical names");
	}
	if (s == ST_OK)
		s = remove_messages(st, account_id, id, "", NULL, 0, &ul, NULL, NULL, error_r);
	if (s == ST_OK) {
		sqlite3_stmt *q = NULL;
		s = store_db_prepare(st, "DELETE FROM mailboxes WHERE id = ?1", &q, error_r);
		if (s == ST_OK) {
			sqlite3_bind_int64(q, 1, id);
			s = store_db_step_done(st, q, "deleting mailbox", error_r);
			store_db_release(st, q);
		}
	}
	s = finish(st, s, error_r);
	if (s == ST_OK)
		store_unlink_after_commit(st, &ul);
	free(ul.ids);
	return s;
}

/* Moves every message of INBOX into `dst` (new UIDs in order, new modseq). */
static enum status move_inbox(struct store *st, int64_t inbox_id, int64_t dst, char **error_r)
{
	sqlite3_stmt *q = NULL;
	enum status s = store_db_prepare(st, "SELECT count(*) FROM messages WHERE mailbox_id = ?1", &q, error_r);
	if (s != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, inbox_id);
	int64_t count = sqlite3_step(q) == SQLITE_ROW ? sqlite3_column_int64(q, 0) : 0;
	store_db_release(st, q);
	if (count == 0)
		return ST_OK;
	uint32_t first;
	uint64_t modseq, inbox_modseq;
	if ((s = mailbox_bump(st, dst, (uint32_t)count, &first, &modseq, error_r)) != ST_OK ||
	    (s = mailbox_bump(st, inbox_id, 0, NULL, &inbox_modseq, error_r)) != ST_OK)
		return s;
	/* row_number() keeps the UID order in the new mailbox. */
	s = store_db_prepare(st, "INSERT INTO messages(mailbox_id, uid, blob_id, flags, keywords, modseq)"
		     " SELECT ?2, ?3 + row_number() OVER (ORDER BY uid) - 1, blob_id, flags, keywords, ?4"
		     " FROM messages WHERE mailbox_id = ?1", &q, error_r);
	if (s != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, inbox_id);
	sqlite3_bind_int64(q, 2, dst);
	sqlite3_bind_int64(q, 3, first);
	store_db_bind_u64(q, 4, modseq);
	s = store_db_step_done(st, q, "moving INBOX messages", error_r);
	store_db_release(st, q);
	if (s != ST_OK)
		return s;
	if ((s = store_db_prepare(st, "SELECT uid FROM messages WHERE mailbox_id = ?1 ORDER BY uid", &q, error_r)) != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, inbox_id);
	uint32_t *gone = xcalloc((size_t)count, sizeof(*gone));
	size_t n_gone = 0;
	int rc;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW && n_gone < (size_t)count)
		gone[n_gone++] = (uint32_t)sqlite3_column_int64(q, 0);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		s = store_db_fail(st->db, rc, "listing INBOX", error_r);
	store_db_release(st, q);
	if (s == ST_OK)
		s = store_vanished_log(st, inbox_id, inbox_modseq, gone, n_gone, error_r);
	free(gone);
	if (s != ST_OK)
		return s;
	if ((s = store_db_prepare(st, "DELETE FROM messages WHERE mailbox_id = ?1", &q, error_r)) != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, inbox_id);
	s = store_db_step_done(st, q, "emptying INBOX", error_r);
	store_db_release(st, q);
	return s;
}

enum status store_imap_mailbox_rename(struct store *st, int64_t account_id, const char *from,
				      const char *to, char **error_r)
{
	char src[STORE_MAILBOX_NAME_MAX + 1], dst[STORE_MAILBOX_NAME_MAX + 1];
	if (!store_imap_mailbox_name(from, src) || !store_imap_mailbox_name(to, dst)) {
		if (error_r)
			*error_r = xstrdup("invalid mailbox name");
		return ST_INVALID;
	}
	size_t sl = strlen(src);
	if (strcmp(dst, "INBOX") == 0 || strcmp(src, dst) == 0 ||
	    (strncmp(dst, src, sl) == 0 && dst[sl] == STORE_MAILBOX_SEP)) {
		if (error_r)
			*error_r = xstrdup(strcmp(dst, "INBOX") == 0 || strcmp(src, dst) == 0
						   ? "target mailbox already exists"
						   : "cannot rename a mailbox into itself");
		return strcmp(src, dst) == 0 || strcmp(dst, "INBOX") == 0 ? ST_EXISTS : ST_INVALID;
	}
	enum status s = store_db_begin(st, error_r);
	if (s != ST_OK)
		return s;
	int64_t src_id = 0, dst_id = 0;
	s = mailbox_find(st, account_id, src, &src_id, error_r);
	if (s == ST_NOT_FOUND && error_r)
		*error_r = xstrdup("no such mailbox");
	if (s == ST_OK) {
		s = mailbox_find(st, account_id, dst, &dst_id, error_r);
		if (s == ST_OK) {
			s = ST_EXISTS;
			if (error_r)
				*error_r = xstrdup("target mailbox already exists");
		} else if (s == ST_NOT_FOUND) {
			/* Inferiors of the target would collide with the moved ones. */
			bool taken = false;
			s = has_inferiors(st, account_id, dst, &taken, error_r);
			if (s == ST_OK && taken) {
				s = ST_EXISTS;
				if (error_r)
					*error_r = xstrdup("target mailbox has inferiors already");
			}
		}
	}
	if (s == ST_OK && strcmp(src, "INBOX") == 0) {
		/* RFC 3501 6.3.5: messages move to a new mailbox; INBOX stays. */
		s = create_with_superiors(st, account_id, dst, &dst_id, error_r);
		if (s == ST_OK)
			s = move_inbox(st, src_id, dst_id, error_r);
		return finish(st, s, error_r);
	}
	if (s == ST_OK) {
		/* Inferiors keep their suffix: "a/b" -> "c/b". */
		sqlite3_stmt *q = NULL;
		s = store_db_prepare(st, "UPDATE mailboxes SET name = ?3 || substr(name, length(?2) + 1)"
			     " WHERE account_id = ?1 AND (name = ?2 OR substr(name, 1, length(?2) + 1) = ?2 || '/')",
			 &q, error_r);
		if (s == ST_OK) {
			sqlite3_bind_int64(q, 1, account_id);
			sqlite3_bind_text(q, 2, src, -1, SQLITE_STATIC);
			sqlite3_bind_text(q, 3, dst, -1, SQLITE_STATIC);
			s = store_db_step_done(st, q, "renaming mailbox", error_r);
			store_db_release(st, q);
		}
	}
	if (s == ST_OK) {
		/* Superiors of the new name that do not exist yet. */
		const char *slash = strrchr(dst, STORE_MAILBOX_SEP);
		if (slash != NULL) {
			char parent[STORE_MAILBOX_NAME_MAX + 1];
			memcpy(parent, dst, (size_t)(slash - dst));
			parent[slash - dst] = '\0';
			s = create_with_superiors(st, account_id, parent, NULL, NULL);
			if (s == ST_EXISTS)
				s = ST_OK;
		}
	}
	return finish(st, s, error_r);
}

enum status store_imap_mailbox_subscribe(struct store *st, int64_t account_id, const char *name,
					 bool subscribed, char **error_r)
{
	char norm[STORE_MAILBOX_NAME_MAX + 1];
	if (!store_imap_mailbox_name(name, norm)) {
		if (error_r)
			*error_r = xstrdup("invalid mailbox name");
		return ST_INVALID;
	}
	sqlite3_stmt *q = NULL;
	enum status s = store_db_prepare(st, "UPDATE mailboxes SET subscribed = ?3 WHERE account_id = ?1 AND name = ?2",
			     &q, error_r);
	if (s != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, account_id);
	sqlite3_bind_text(q, 2, norm, -1, SQLITE_STATIC);
	sqlite3_bind_int(q, 3, subscribed ? 1 : 0);
	s = store_db_step_done(st, q, "subscribing", error_r);
	if (s == ST_OK && sqlite3_changes(st->db) == 0) {
		s = ST_NOT_FOUND;
		if (error_r)
			*error_r = xstrdup("no such mailbox");
	}
	store_db_release(st, q);
	return s;
}

/* ---- expunge log ---------------------------------------------------------------- */

enum status store_vanished_log(struct store *st, int64_t mailbox_id, uint64_t modseq, const uint32_t *uids,
			       size_t n, char **error_r)
{
	if (n == 0)
		return ST_OK;
	sqlite3_stmt *q = NULL;
	/* First logged expunge: complete from here on (modseq - 1 excluded). */
	enum status s = store_db_prepare(st, "INSERT OR IGNORE INTO vanished_floor(mailbox_id, modseq) VALUES(?1, ?2)", &q,
			     error_r);
	if (s == ST_OK) {
		sqlite3_bind_int64(q, 1, mailbox_id);
		store_db_bind_u64(q, 2, modseq - 1);
		s = store_db_step_done(st, q, "expunge log floor", error_r);
		store_db_release(st, q);
	}
	if (s == ST_OK && (s = store_db_prepare(st, "INSERT OR IGNORE INTO vanished(mailbox_id, modseq, uid) VALUES(?1, ?2, ?3)",
				    &q, error_r)) == ST_OK) {
		for (size_t i = 0; s == ST_OK && i < n; i++) {
			sqlite3_bind_int64(q, 1, mailbox_id);
			store_db_bind_u64(q, 2, modseq);
			sqlite3_bind_int64(q, 3, uids[i]);
			s = store_db_step_done(st, q, "expunge log", error_r);
		}
		store_db_release(st, q);
	}
	if (s != ST_OK)
		return s;
	/* Retention: the modseq of the first row beyond the newest KEEP. */
	if ((s = store_db_prepare(st, "SELECT modseq FROM vanished WHERE mailbox_id = ?1 ORDER BY modseq DESC, uid DESC"
			  " LIMIT 1 OFFSET ?2", &q, error_r)) != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, mailbox_id);
	sqlite3_bind_int64(q, 2, STORE_VANISHED_KEEP);
	int rc = sqlite3_step(q);
	uint64_t cut = rc == SQLITE_ROW ? store_db_column_u64(q, 0) : 0;
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		s = store_db_fail(st->db, rc, "expunge log retention", error_r);
	store_db_release(st, q);
	if (s != ST_OK || cut == 0)
		return s;
	if ((s = store_db_prepare(st, "DELETE FROM vanished WHERE mailbox_id = ?1 AND modseq <= ?2", &q, error_r)) == ST_OK) {
		sqlite3_bind_int64(q, 1, mailbox_id);
		store_db_bind_u64(q, 2, cut);
		s = store_db_step_done(st, q, "expunge log pruning", error_r);
		store_db_release(st, q);
	}
	if (s == ST_OK && (s = store_db_prepare(st, "UPDATE vanished_floor SET modseq = max(modseq, ?2) WHERE mailbox_id = ?1",
				    &q, error_r)) == ST_OK) {
		sqlite3_bind_int64(q, 1, mailbox_id);
		store_db_bind_u64(q, 2, cut);
		s = store_db_step_done(st, q, "expunge log floor", error_r);
		store_db_release(st, q);
	}
	return s;
}

enum status store_imap_vanished(struct store *st, int64_t mailbox_id, uint64_t since, uint32_t **uids_r,
				size_t *n_r, bool *complete_r)
{
	*uids_r = NULL;
	*n_r = 0;
	*complete_r = false;
	sqlite3_stmt *q = NULL;
	enum status s = store_db_prepare(st, "SELECT modseq FROM vanished_floor WHERE mailbox_id = ?1", &q, NULL);
	if (s != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, mailbox_id);
	int rc = sqlite3_step(q);
	bool complete = rc == SQLITE_ROW && store_db_column_u64(q, 0) <= since;
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		s = store_db_status(rc);
	store_db_release(st, q);
	if (s != ST_OK || !complete)
		return s;
	if ((s = store_db_prepare(st, "SELECT DISTINCT uid FROM vanished WHERE mailbox_id = ?1 AND modseq > ?2 ORDER BY uid", &q,
		      NULL)) != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, mailbox_id);
	store_db_bind_u64(q, 2, since);
	uint32_t *out = NULL;
	size_t n = 0, cap = 0;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			out = xreallocarray(out, cap, sizeof(*out));
		}
		out[n++] = (uint32_t)sqlite3_column_int64(q, 0);
	}
	if (rc != SQLITE_DONE) {
		log_error("store: reading the expunge log: %s", sqlite3_errmsg(st->db));
		s = store_db_status(rc);
		free(out);
		out = NULL;
		n = 0;
	}
	store_db_release(st, q);
	if (s == ST_OK) {
		*uids_r = out;
		*n_r = n;
		*complete_r = true;
	}
	return s;
}

/* ---- keywords ------------------------------------------------------------------ */

/* A small set of keywords, unique case-insensitively. */
struct kwset {
	char **w;
	size_t n, cap;
};

static void kwset_free(struct kwset *k)
{
	for (size_t i = 0; i < k->n; i++)
		free(k->w[i]);
	free(k->w);
	k->w = NULL;
	k->n = k->cap = 0;
}

static long kwset_find(const struct kwset *k, const char *w, size_t len)
{
	for (size_t i = 0; i < k->n; i++) {
		if (strncasecmp(k->w[i], w, len) == 0 && k->w[i][len] == '\0')
			return (long)i;
	}
	return -1;
}

static void kwset_add(struct kwset *k, const char *w, size_t len)
{
	if (len == 0 || kwset_find(k, w, len) >= 0)
		return;
	if (k->n == k->cap) {
		k->cap = k->cap ? k->cap * 2 : 8;
		k->w = xreallocarray(k->w, k->cap, sizeof(*k->w));
	}
	k->w[k->n++] = xstrndup(w, len);
}

static void kwset_remove(struct kwset *k, const char *w)
{
	long at = kwset_find(k, w, strlen(w));
	if (at < 0)
		return;
	free(k->w[at]);
	k->w[at] = k->w[--k->n];
}

/* Adds each space-separated word of text (NULL: none). */
static void kwset_parse(struct kwset *k, const char *text)
{
	for (const char *p = text; p != NULL && *p;) {
		while (*p == ' ')
			p++;
		size_t len = strcspn(p, " ");
		kwset_add(k, p, len);
		p += len;
	}
}

static int kw_cmp(const void *a, const void *b)
{
	return strcasecmp(*(char *const *)a, *(char *const *)b);
}

/* The canonical column value: sorted, space-separated; NULL when empty. */
static char *kwset_join(struct kwset *k)
{
	if (k->n == 0)
		return NULL;
	qsort(k->w, k->n, sizeof(*k->w), kw_cmp);
	struct buf b = BUF_INIT;
	for (size_t i = 0; i < k->n; i++)
		buf_printf(&b, "%s%s", i ? " " : "", k->w[i]);
	return buf_steal(&b);
}

/* The mailbox's distinct keywords (inside the caller's transaction). */
static enum status mailbox_keywords(struct store *st, int64_t mailbox_id, struct kwset *out, char **error_r)
{
	sqlite3_stmt *q = NULL;
	enum status s = store_db_prepare(st, "SELECT DISTINCT keywords FROM messages WHERE mailbox_id = ?1"
				 " AND keywords IS NOT NULL", &q, error_r);
	if (s != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, mailbox_id);
	int rc;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW)
		kwset_parse(out, (const char *)sqlite3_column_text(q, 0));
	if (rc != SQLITE_DONE)
		s = store_db_fail(st->db, rc, "reading keywords", error_r);
	store_db_release(st, q);
	return s;
}

/* The keywords `text` asks to add to a mailbox, in the mailbox's spelling
 * where it has them already; ST_INVALID when the mailbox would pass
 * STORE_KEYWORDS_MAX. */
static enum status keywords_admit(struct store *st, int64_t mailbox_id, const char *text, struct kwset *out,
				  char **error_r)
{
	kwset_parse(out, text);
	if (out->n == 0)
		return ST_OK;
	struct kwset have = { NULL, 0, 0 };
	enum status s = mailbox_keywords(st, mailbox_id, &have, error_r);
	size_t fresh = 0;
	for (size_t i = 0; s == ST_OK && i < out->n; i++) {
		long at = kwset_find(&have, out->w[i], strlen(out->w[i]));
		if (at < 0) {
			fresh++;
			continue;
		}
		free(out->w[i]);
		out->w[i] = xstrdup(have.w[at]);
	}
	if (s == ST_OK && have.n + fresh > STORE_KEYWORDS_MAX) {
		s = ST_INVALID;
		if (error_r)
			*error_r = xasprintf("a mailbox holds at most %u keywords", STORE_KEYWORDS_MAX);
	}
	kwset_free(&have);
	return s;
}

/* ---- messages ------------------------------------------------------------------ */

enum status store_imap_set_flags(struct store *st, int64_t mailbox_id, const uint32_t *uids, size_t n,
				 enum store_flag_op op, uint32_t flags, uint32_t *flags_out,
				 uint64_t *modseq_r, char **error_r)
{
	return store_imap_set_flags_cond(st, mailbox_id, uids, n, op, flags, NULL, NULL, flags_out, NULL, NULL,
					 modseq_r, error_r);
}

/* One message's new keywords: NULL when none; *changed_r when they differ. */
static char *keywords_apply(const char *old, enum store_flag_op op, const struct kwset *req, bool *changed_r)
{
	struct kwset k = { NULL, 0, 0 };
	if (op != STORE_FLAGS_SET)
		kwset_parse(&k, old);
	for (size_t i = 0; i < req->n; i++) {
		if (op == STORE_FLAGS_REMOVE)
			kwset_remove(&k, req->w[i]);
		else
			kwset_add(&k, req->w[i], strlen(req->w[i]));
	}
	char *now = kwset_join(&k);
	kwset_free(&k);
	*changed_r = (old == NULL) != (now == NULL) || (old != NULL && strcmp(old, now) != 0);
	return now;
}

/*
 * Flag durability (imap.flag_fsync=no, with store.fsync=yes): a flag-only
 * transaction commits with synchronous=NORMAL, so its WAL frames are
 * written but not fsynced.  They become durable with the next fsynced
 * commit of any handle (fsync covers the whole WAL file: a delivery, an
 * APPEND, an EXPUNGE) or checkpoint.  A power loss can lose the last flag
 * changes; WAL checksums make recovery stop at the last complete commit, so
 * the index is never corrupt and no message or expunge is lost.  This
 * gives up D for flags only, as Dovecot's mail_fsync=optimized does.
 * PRAGMA synchronous acts when it is prepared (and only outside a
 * transaction), so it goes through sqlite3_exec each time.
 */
static bool flags_relaxed(const struct store *st)
{
	return st->s->store_fsync && !st->s->imap_flag_fsync;
}

static void flags_sync_level(struct store *st, bool relaxed)
{
	char *err = NULL;
	if (sqlite3_exec(st->db, relaxed ? "PRAGMA synchronous = NORMAL" : "PRAGMA synchronous = FULL", NULL, NULL,
			 &err) == SQLITE_OK)
		return;
	/* Left at NORMAL, this handle's later deliveries would not be durable. */
	if (!relaxed)
		panic("store: cannot restore synchronous=FULL: %s", err ? err : "?");
	log_error("store: synchronous=NORMAL for a flag change: %s", err ? err : "?");
	sqlite3_free(err);
}

static enum status set_flags_txn(struct store *st, int64_t mailbox_id, const uint32_t *uids, size_t n,
				 enum store_flag_op op, uint32_t flags, const char *keywords,
				 const uint64_t *unchangedsince, uint32_t *flags_out, char **keywords_out,
				 uint64_t *modseqs_out, uint64_t *modseq_r, char **error_r);

/* The flag transactions of this process's threads take turns on this mutex
 * before BEGIN IMMEDIATE.  Without it a second one finds SQLite's write
 * lock held and its busy handler sleeps 1, 2, 5, 10 ms... while the holder
 * commits in a fraction of a millisecond; the mutex hands over at once.
 * Held for one transaction only; other writers (deliveries, other
 * processes) still meet the busy handler as before. */
static pthread_mutex_t flags_mu = PTHREAD_MUTEX_INITIALIZER;

enum status store_imap_set_flags_cond(struct store *st, int64_t mailbox_id, const uint32_t *uids, size_t n,
				      enum store_flag_op op, uint32_t flags, const char *keywords,
				      const uint64_t *unchangedsince, uint32_t *flags_out, char **keywords_out,
				      uint64_t *modseqs_out, uint64_t *modseq_r, char **error_r)
{
	bool relaxed = flags_relaxed(st) && sqlite3_get_autocommit(st->db);
	if (relaxed)
		flags_sync_level(st, true);
	pthread_mutex_lock(&flags_mu);
	enum status s = set_flags_txn(st, mailbox_id, uids, n, op, flags, keywords, unchangedsince, flags_out,
				      keywords_out, modseqs_out, modseq_r, error_r);
	pthread_mutex_unlock(&flags_mu);
	if (relaxed)
		flags_sync_level(st, false);
	return s;
}

static enum status set_flags_txn(struct store *st, int64_t mailbox_id, const uint32_t *uids, size_t n,
				 enum store_flag_op op, uint32_t flags, const char *keywords,
				 const uint64_t *unchangedsince, uint32_t *flags_out, char **keywords_out,
				 uint64_t *modseqs_out, uint64_t *modseq_r, char **error_r)
{
	flags &= MSG_FLAGS_ALL;
	*modseq_r = 0;
	for (size_t i = 0; keywords_out != NULL && i < n; i++)
		keywords_out[i] = NULL;
	enum status s = store_db_begin(st, error_r);
	if (s != ST_OK)
		return s;
	sqlite3_stmt *get = NULL, *set = NULL;
	uint64_t modseq = 0;
	struct kwset req = { NULL, 0, 0 };
	if (op == STORE_FLAGS_REMOVE)
		kwset_parse(&req, keywords);
	else
		s = keywords_admit(st, mailbox_id, keywords, &req, error_r);
	if (s == ST_OK)
		s = store_db_prepare(st, "SELECT flags, modseq, keywords FROM messages WHERE mailbox_id = ?1 AND uid = ?2",
			 &get, error_r);
	if (s == ST_OK)
		s = store_db_prepare(st, "UPDATE messages SET flags = ?3, modseq = ?4, keywords = ?5"
			     " WHERE mailbox_id = ?1 AND uid = ?2", &set, error_r);
	for (size_t i = 0; s == ST_OK && i < n; i++) {
		sqlite3_bind_int64(get, 1, mailbox_id);
		sqlite3_bind_int64(get, 2, uids[i]);
		int rc = sqlite3_step(get);
		if (rc == SQLITE_DONE) {
			sqlite3_reset(get);
			flags_out[i] = UINT32_MAX;
			if (modseqs_out != NULL)
				modseqs_out[i] = 0;
			continue;
		}
		if (rc != SQLITE_ROW) {
			sqlite3_reset(get);
			s = store_db_fail(st->db, rc, "reading flags", error_r);
			break;
		}
		uint32_t old = (uint32_t)sqlite3_column_int64(get, 0);
		uint64_t old_modseq = store_db_column_u64(get, 1);
		const char *old_kw = (const char *)sqlite3_column_text(get, 2);
		if (modseqs_out != NULL)
			modseqs_out[i] = old_modseq;
		if (unchangedsince != NULL && old_modseq > *unchangedsince) {
			sqlite3_reset(get);
			flags_out[i] = STORE_FLAGS_MODIFIED;   /* RFC 7162 3.1.3: left alone */
			continue;
		}
		bool kw_changed;
		char *kw = keywords_apply(old_kw, op, &req, &kw_changed);
		sqlite3_reset(get);
		uint32_t now = op == STORE_FLAGS_SET ? flags : op == STORE_FLAGS_ADD ? (old | flags) : (old & ~flags);
		now = (now & MSG_FLAGS_ALL) | (old & ~MSG_FLAGS_ALL);
		flags_out[i] = now & MSG_FLAGS_ALL;
		if (keywords_out != NULL)
			keywords_out[i] = kw != NULL ? xstrdup(kw) : NULL;
		if (now == old && !kw_changed) {
			free(kw);
			continue;
		}
		if (modseq == 0 && (s = mailbox_bump(st, mailbox_id, 0, NULL, &modseq, error_r)) != ST_OK) {
			free(kw);
			break;
		}
		if (modseqs_out != NULL)
			modseqs_out[i] = modseq;
		sqlite3_bind_int64(set, 1, mailbox_id);
		sqlite3_bind_int64(set, 2, uids[i]);
		sqlite3_bind_int64(set, 3, now);
		store_db_bind_u64(set, 4, modseq);
		if (kw != NULL)
			sqlite3_bind_text(set, 5, kw, -1, SQLITE_TRANSIENT);
		else
			sqlite3_bind_null(set, 5);
		s = store_db_step_done(st, set, "setting flags", error_r);
		free(kw);
	}
	kwset_free(&req);
	store_db_release(st, get);
	store_db_release(st, set);
	s = finish(st, s, error_r);
	if (s == ST_OK) {
		*modseq_r = modseq;
	} else {
		for (size_t i = 0; keywords_out != NULL && i < n; i++) {
			free(keywords_out[i]);
			keywords_out[i] = NULL;
		}
	}
	return s;
}

enum status store_imap_expunge(struct store *st, int64_t account_id, int64_t mailbox_id,
			       const uint32_t *uids, size_t n, uint32_t **expunged_r, size_t *n_expunged_r,
			       char **error_r)
{
	*expunged_r = NULL;
	*n_expunged_r = 0;
	struct store_unlink_list ul = { NULL, 0, 0 };
	enum status s = store_db_begin(st, error_r);
	if (s != ST_OK)
		return s;
	uint32_t *out = NULL;
	size_t n_out = 0;
	s = remove_messages(st, account_id, mailbox_id,
			    uids ? "AND (m.flags & 8) != 0 AND m.uid = ?2" : "AND (m.flags & 8) != 0", uids, n,
			    &ul, &out, &n_out, error_r);
	uint64_t modseq;
	if (s == ST_OK && n_out > 0)
		s = mailbox_bump(st, mailbox_id, 0, NULL, &modseq, error_r);
	if (s == ST_OK && n_out > 0)
		s = store_vanished_log(st, mailbox_id, modseq, out, n_out, error_r);
	s = finish(st, s, error_r);
	if (s == ST_OK) {
		store_unlink_after_commit(st, &ul);
		*expunged_r = out;
		*n_expunged_r = n_out;
	} else {
		free(out);
	}
	free(ul.ids);
	return s;
}

/* Source rows of a copy, in the caller's UID order. */
struct copy_src {
	uint32_t uid;
	int64_t blob;
	uint32_t flags;
	uint64_t size;
	bool found;
};

static enum status copy_read(struct store *st, int64_t mailbox_id, const uint32_t *uids, size_t n,
			     struct copy_src *src, uint64_t *count_r, uint64_t *bytes_r, char **error_r)
{
	sqlite3_stmt *q = NULL;
	enum status s = store_db_prepare(st, "SELECT m.blob_id, m.flags, b.size FROM messages m JOIN blobs b ON b.id = m.blob_id"
				 " WHERE m.mailbox_id = ?1 AND m.uid = ?2", &q, error_r);
	*count_r = *bytes_r = 0;
	for (size_t i = 0; s == ST_OK && i < n; i++) {
		sqlite3_bind_int64(q, 1, mailbox_id);
		sqlite3_bind_int64(q, 2, uids[i]);
		int rc = sqlite3_step(q);
		src[i].uid = uids[i];
		src[i].found = rc == SQLITE_ROW;
		if (rc == SQLITE_ROW) {
			src[i].blob = sqlite3_column_int64(q, 0);
			src[i].flags = (uint32_t)sqlite3_column_int64(q, 1);
			src[i].size = store_db_column_u64(q, 2);
			(*count_r)++;
			*bytes_r += src[i].size;
		} else if (rc != SQLITE_DONE) {
			s = store_db_fail(st->db, rc, "reading messages to copy", error_r);
		}
		sqlite3_reset(q);
	}
	store_db_release(st, q);
	return s;
}

static enum status copy_write(struct store *st, int64_t src_mailbox, int64_t dst_mailbox, bool move,
			      struct copy_src *src, size_t n, uint64_t count, uint32_t *dst_uids,
			      char **error_r)
{
	uint32_t uid;
	uint64_t modseq, src_modseq = 0;
	enum status s = mailbox_bump(st, dst_mailbox, (uint32_t)count, &uid, &modseq, error_r);
	if (s == ST_OK && move)
		s = mailbox_bump(st, src_mailbox, 0, NULL, &src_modseq, error_r);
	sqlite3_stmt *ins = NULL, *ref = NULL, *del = NULL;
	uint32_t *moved = move ? xcalloc(n ? n : 1, sizeof(*moved)) : NULL;
	size_t n_moved = 0;
	if (s == ST_OK)
		s = store_db_prepare(st, "INSERT INTO messages(mailbox_id, uid, blob_id, flags, keywords, modseq)"
			     " SELECT ?1, ?2, blob_id, flags, keywords, ?3 FROM messages WHERE mailbox_id = ?4 AND uid = ?5",
			 &ins, error_r);
	if (s == ST_OK)
		s = store_db_prepare(st, move ? "DELETE FROM messages WHERE mailbox_id = ?1 AND uid = ?2"
				  : "UPDATE blobs SET refcount = refcount + 1 WHERE id = ?1",
			 move ? &del : &ref, error_r);
	for (size_t i = 0; s == ST_OK && i < n; i++) {
		dst_uids[i] = 0;
		if (!src[i].found)
			continue;
		sqlite3_bind_int64(ins, 1, dst_mailbox);
		sqlite3_bind_int64(ins, 2, uid);
		store_db_bind_u64(ins, 3, modseq);
		sqlite3_bind_int64(ins, 4, src_mailbox);
		sqlite3_bind_int64(ins, 5, src[i].uid);
		if ((s = store_db_step_done(st, ins, "copying a message", error_r)) != ST_OK)
			break;
		if (move) {
			sqlite3_bind_int64(del, 1, src_mailbox);
			sqlite3_bind_int64(del, 2, src[i].uid);
			s = store_db_step_done(st, del, "moving a message", error_r);
			moved[n_moved++] = src[i].uid;
		} else {
			sqlite3_bind_int64(ref, 1, src[i].blob);
			s = store_db_step_done(st, ref, "blob reference", error_r);
		}
		dst_uids[i] = uid++;
	}
	store_db_release(st, ins);
	store_db_release(st, ref);
	store_db_release(st, del);
	if (s == ST_OK && move)
		s = store_vanished_log(st, src_mailbox, src_modseq, moved, n_moved, error_r);
	free(moved);
	return s;
}

enum status store_imap_copy(struct store *st, int64_t account_id, int64_t src_mailbox_id,
			    const uint32_t *uids, size_t n, int64_t dst_mailbox_id, bool move,
			    uint32_t *dst_uids, uint32_t *dst_uidvalidity_r, char **error_r)
{
	if (src_mailbox_id == dst_mailbox_id && move) {
		if (error_r)
			*error_r = xstrdup("cannot move into the same mailbox");
		return ST_INVALID;
	}
	enum status s = store_db_begin(st, error_r);
	if (s != ST_OK)
		return s;
	struct copy_src *src = xcalloc(n ? n : 1, sizeof(*src));
	uint64_t count = 0, bytes = 0;
	struct quota qt;
	s = copy_read(st, src_mailbox_id, uids, n, src, &count, &bytes, error_r);
	if (s == ST_OK && count > UINT32_MAX)
		s = ST_INVALID;
	if (s == ST_OK && !move && (s = quota_get(st, account_id, &qt, error_r)) == ST_OK)
		s = quota_check(st, &qt, count, bytes, error_r);
	if (s == ST_OK) {
		sqlite3_stmt *q = NULL;
		s = store_db_prepare(st, "SELECT uidvalidity FROM mailboxes WHERE id = ?1 AND account_id = ?2", &q, error_r);
		if (s == ST_OK) {
			sqlite3_bind_int64(q, 1, dst_mailbox_id);
			sqlite3_bind_int64(q, 2, account_id);
			if (sqlite3_step(q) == SQLITE_ROW) {
				*dst_uidvalidity_r = (uint32_t)sqlite3_column_int64(q, 0);
			} else {
				s = ST_NOT_FOUND;
				if (error_r)
					*error_r = xstrdup("no such mailbox");
			}
			store_db_release(st, q);
		}
	}
	if (s == ST_OK && count > 0)
		s = copy_write(st, src_mailbox_id, dst_mailbox_id, move, src, n, count, dst_uids, error_r);
	else if (s == ST_OK)
		memset(dst_uids, 0, n * sizeof(*dst_uids));
	if (s == ST_OK && !move && count > 0)
		s = usage_add(st, account_id, 1, count, bytes, error_r);
	free(src);
	return finish(st, s, error_r);
}

/* One message of an APPEND inside the caller's transaction: blob row,
 * MIME row, message row with a new UID and mod-sequence, flags. */
static enum status append_one(struct store *st, int64_t mailbox_id, const struct store_imap_new *m,
			      uint32_t *uid_r, char **error_r)
{
	sqlite3_stmt *q = st->q[Q_DELIVER_BLOB];
	sqlite3_bind_blob(q, 1, m->id->b, MSGID_BYTES, SQLITE_STATIC);
	store_db_bind_u64(q, 2, m->size);
	sqlite3_bind_int64(q, 3, m->received);
	sqlite3_bind_int64(q, 4, 1);
	int rc = store_db_run(q);
	if (rc != SQLITE_DONE)
		return store_db_fail(st->db, rc, "blob row", error_r);
	int64_t blob_id = sqlite3_last_insert_rowid(st->db);
	if (m->mime != NULL && (rc = store_mime_insert(st, blob_id, m->mime)) != SQLITE_DONE)
		return store_db_fail(st->db, rc, "MIME row", error_r);
	uint32_t uid = 0;
	uint64_t modseq = 0;
	enum status s = mailbox_bump(st, mailbox_id, 1, &uid, &modseq, error_r);
	if (s != ST_OK)
		return s;
	q = st->q[Q_DELIVER_MESSAGE];
	sqlite3_bind_int64(q, 1, mailbox_id);
	sqlite3_bind_int64(q, 2, uid);
	sqlite3_bind_int64(q, 3, blob_id);
	store_db_bind_u64(q, 4, modseq);
	rc = store_db_run(q);
	if (rc != SQLITE_DONE)
		return store_db_fail(st->db, rc, "message row", error_r);
	struct kwset kws = { NULL, 0, 0 };
	s = keywords_admit(st, mailbox_id, m->keywords, &kws, error_r);
	char *kw = kwset_join(&kws);
	kwset_free(&kws);
	if (s == ST_OK && ((m->flags & MSG_FLAGS_ALL) != 0 || kw != NULL) && (s = store_db_prepare(st,
		"UPDATE messages SET flags = ?3, keywords = ?4 WHERE mailbox_id = ?1 AND uid = ?2", &q,
		error_r)) == ST_OK) {
		sqlite3_bind_int64(q, 1, mailbox_id);
		sqlite3_bind_int64(q, 2, uid);
		sqlite3_bind_int64(q, 3, m->flags & MSG_FLAGS_ALL);
		if (kw != NULL)
			sqlite3_bind_text(q, 4, kw, -1, SQLITE_TRANSIENT);
		s = store_db_step_done(st, q, "message flags", error_r);
		store_db_release(st, q);
	}
	free(kw);
	if (s == ST_OK)
		*uid_r = uid;
	return s;
}

enum status store_imap_append_many(struct store *st, int64_t account_id, int64_t mailbox_id,
				   const struct store_imap_new *msgs, size_t n, uint32_t *uids_r,
				   uint32_t *uidvalidity_r, char **error_r)
{
	uint64_t total = 0;
	for (size_t i = 0; i < n; i++) {
		if (msgs[i].size > (uint64_t)INT64_MAX || total + msgs[i].size > (uint64_t)INT64_MAX)
			return ST_INVALID;
		total += msgs[i].size;
	}
	if (n == 0)
		return ST_INVALID;
	enum status s = store_db_begin(st, error_r);
	if (s != ST_OK)
		return s;
	struct quota qt;
	if ((s = quota_get(st, account_id, &qt, error_r)) == ST_OK)
		s = quota_check(st, &qt, n, total, error_r);
	sqlite3_stmt *q = NULL;
	if (s == ST_OK && (s = store_db_prepare(st, "SELECT uidvalidity FROM mailboxes WHERE id = ?1 AND account_id = ?2",
				    &q, error_r)) == ST_OK) {
		sqlite3_bind_int64(q, 1, mailbox_id);
		sqlite3_bind_int64(q, 2, account_id);
		if (sqlite3_step(q) == SQLITE_ROW) {
			*uidvalidity_r = (uint32_t)sqlite3_column_int64(q, 0);
		} else {
			s = ST_NOT_FOUND;
			if (error_r)
				*error_r = xstrdup("no such mailbox");
		}
		store_db_release(st, q);
	}
	for (size_t i = 0; s == ST_OK && i < n; i++)
		s = append_one(st, mailbox_id, &msgs[i], &uids_r[i], error_r);
	if (s == ST_OK)
		s = usage_add(st, account_id, 1, n, total, error_r);
	return finish(st, s, error_r);
}

enum status store_imap_append(struct store *st, int64_t account_id, int64_t mailbox_id,
			      const struct msgid *id, uint64_t size, int64_t received, uint32_t flags,
			      const char *keywords, const struct store_mime *mime, uint32_t *uid_r,
			      uint32_t *uidvalidity_r, char **error_r)
{
	struct store_imap_new m = { id, size, received, flags, keywords, mime };
	return store_imap_append_many(st, account_id, mailbox_id, &m, 1, uid_r, uidvalidity_r, error_r);
}
