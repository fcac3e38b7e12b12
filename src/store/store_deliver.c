/*
 * store_deliver.c - group commit of deliveries into the index (hot path).
 *
 * Owns: store_commit_deliveries, called by the queue's committer thread with
 * every delivery whose blob is already durable at its final path.
 *
 * One call is one transaction (BEGIN IMMEDIATE ... COMMIT): with
 * synchronous=FULL the COMMIT fsyncs the WAL once for the whole batch, which
 * is what makes thousands of deliveries per second possible on a disk that
 * does a few hundred fsyncs per second.
 *
 * Per delivery, inside a SAVEPOINT so that a delivery that fails on its own
 * (over quota, a duplicate message id, a damaged mailbox row) is undone
 * without touching the rest of the batch:
 *   1. read every target account's quota and usage (an account deleted since
 *      RCPT is skipped: its uid is 0; if none is left, ST_NOT_FOUND);
 *   2. any account over quota -> ST_OVER_QUOTA_TEMP/PERM, nothing written;
 *   3. insert the blob row, refcount = accounts that get the message plus
 *      remote recipients, one outbound row per remote recipient
 *      (store_outbound.c), and its cached MIME row when the queue computed
 *      one;
 *   4. per account: take INBOX uidnext as the uid and highestmodseq + 1 as
 *      the modseq (one UPDATE ... RETURNING), insert the message row, add
 *      the size to the account's usage.
 * Usage updated by earlier deliveries of the batch counts for later ones.
 *
 * A failure of the transaction itself (disk full, I/O error, lock timeout,
 * COMMIT failing) rolls everything back and gives every delivery the same
 * status: SQLITE_FULL -> ST_NO_SPACE, SQLITE_IOERR* -> ST_IO_ERROR,
 * SQLITE_BUSY/LOCKED -> ST_DB_BUSY, anything else -> ST_TEMPFAIL.
 *
 * Thread: the writer's (the committer).  No allocation on this path.
 */
#include "store_internal.h"

#include <stdlib.h>
#include <string.h>

#include "metrics.h"

/* State of one group commit.  A step that fails for one delivery only
 * (a constraint) returns its status; a failure that dooms the whole
 * transaction also records its SQLite code in txn_rc. */
struct deliver_ctx {
	struct store *st;
	int txn_rc;             /* SQLITE_OK, or the code that dooms the transaction */
};

/* Errors that leave the transaction unusable or signal a failing disk. */
static bool rc_is_fatal(int rc)
{
	switch (rc & 0xff) {
	case SQLITE_CONSTRAINT:
	case SQLITE_MISMATCH:
	case SQLITE_RANGE:
		return false;
	default:
		return true;
	}
}

static enum status step_failed(struct deliver_ctx *c, int rc, const char *what,
			       const struct store_delivery *d)
{
	char id[MSGID_TEXT_LEN + 1];
	msgid_format(&d->id, id);
	log_error("store: delivery %s: %s: %s", id, what, sqlite3_errmsg(c->st->db));
	if (rc_is_fatal(rc))
		c->txn_rc = rc;
	return store_db_status(rc);
}

/* Steps 1 and 2.  Marks present accounts with uids[i] = 1, deleted ones 0. */
static enum status check_accounts(struct deliver_ctx *c, struct store_delivery *d, size_t *present)
{
	sqlite3_stmt *q = c->st->q[Q_DELIVER_QUOTA];
	bool over = false;
	*present = 0;
	for (size_t i = 0; i < d->n_accounts; i++) {
		sqlite3_bind_int64(q, 1, d->account_ids[i]);
		int rc = sqlite3_step(q);
		if (rc == SQLITE_ROW) {
			d->uids[i] = 1;
			(*present)++;
			over = over || store_account_over_quota(store_db_column_u64(q, 0),
								store_db_column_u64(q, 1),
								store_db_column_u64(q, 2),
								store_db_column_u64(q, 3), d->size);
		} else if (rc == SQLITE_DONE) {
			d->uids[i] = 0;
		} else {
			store_db_reset(q);
			return step_failed(c, rc, "quota check", d);
		}
		store_db_reset(q);
	}
	if (over)
		return c->st->s->quota_over_reply == QUOTA_REPLY_PERMANENT ? ST_OVER_QUOTA_PERM
									   : ST_OVER_QUOTA_TEMP;
	return *present ? ST_OK : ST_NOT_FOUND;
}

/* Step 4 for one account. */
static enum status add_to_inbox(struct deliver_ctx *c, struct store_delivery *d, size_t i,
				int64_t blob_id)
{
	struct store *st = c->st;
	sqlite3_stmt *q = st->q[Q_DELIVER_INBOX];
	sqlite3_bind_int64(q, 1, d->account_ids[i]);
	int rc = sqlite3_step(q);
	if (rc != SQLITE_ROW) {
		store_db_reset(q);
		if (rc == SQLITE_DONE) {
			log_error("store: account %lld has no INBOX", (long long)d->account_ids[i]);
			return ST_TEMPFAIL;
		}
		return step_failed(c, rc, "INBOX uid", d);
	}
	int64_t mailbox_id = sqlite3_column_int64(q, 0);
	int64_t uid = sqlite3_column_int64(q, 1);
	int64_t modseq = sqlite3_column_int64(q, 2);
	store_db_reset(q);
	if (uid < 1 || uid > (int64_t)UINT32_MAX) {
		log_error("store: INBOX of account %lld has run out of UIDs",
			  (long long)d->account_ids[i]);
		return ST_TEMPFAIL;
	}
	q = st->q[Q_DELIVER_MESSAGE];
	sqlite3_bind_int64(q, 1, mailbox_id);
	sqlite3_bind_int64(q, 2, uid);
	sqlite3_bind_int64(q, 3, blob_id);
	sqlite3_bind_int64(q, 4, modseq);
	if ((rc = store_db_run(q)) != SQLITE_DONE)
		return step_failed(c, rc, "message row", d);
	q = st->q[Q_DELIVER_USAGE];
	sqlite3_bind_int64(q, 1, d->account_ids[i]);
	store_db_bind_u64(q, 2, d->size);
	if ((rc = store_db_run(q)) != SQLITE_DONE)
		return step_failed(c, rc, "quota usage", d);
	d->uids[i] = (uint32_t)uid;
	return ST_OK;
}

/* Steps 1-4 for one delivery, inside the caller's savepoint. */
static enum status deliver_one(struct deliver_ctx *c, struct store_delivery *d)
{
	if ((d->n_accounts == 0 && d->n_remotes == 0) || d->size > (uint64_t)INT64_MAX)
		return ST_INVALID;
	if (d->n_accounts > 0 && (d->account_ids == NULL || d->uids == NULL))
		panic("store_commit_deliveries: delivery without account_ids or uids");
	if (d->n_remotes > 0 && d->remotes == NULL)
		panic("store_commit_deliveries: delivery without remotes");
	size_t present = 0;
	enum status s = d->n_accounts > 0 ? check_accounts(c, d, &present) : ST_OK;
	if (s == ST_NOT_FOUND && d->n_remotes > 0)
		s = ST_OK; /* every account deleted since RCPT: the remotes still go */
	if (s != ST_OK)
		return s;
	sqlite3_stmt *q = c->st->q[Q_DELIVER_BLOB];
	sqlite3_bind_blob(q, 1, d->id.b, MSGID_BYTES, SQLITE_STATIC);
	store_db_bind_u64(q, 2, d->size);
	sqlite3_bind_int64(q, 3, d->received);
	sqlite3_bind_int64(q, 4, (int64_t)(present + d->n_remotes));
	int rc = store_db_run(q);
	if (rc != SQLITE_DONE)
		return step_failed(c, rc, "blob row", d);
	int64_t blob_id = sqlite3_last_insert_rowid(c->st->db);
	for (size_t i = 0; i < d->n_remotes; i++) {
		if ((rc = store_outbound_insert(c->st, blob_id, d->sender, d->remotes[i], d->received)) != SQLITE_DONE)
			return step_failed(c, rc, "outbound row", d);
	}
	if (d->mime != NULL && (rc = store_mime_insert(c->st, blob_id, d->mime)) != SQLITE_DONE)
		return step_failed(c, rc, "MIME row", d);
	for (size_t i = 0; i < d->n_accounts; i++) {
		if (d->uids[i] == 0)
			continue; /* account deleted since RCPT */
		if ((s = add_to_inbox(c, d, i, blob_id)) != ST_OK)
			return s;
	}
	return ST_OK;
}

/* Runs one of the savepoint statements; a failure dooms the transaction. */
static bool savepoint_op(struct deliver_ctx *c, enum store_q qid)
{
	int rc = store_db_run(c->st->q[qid]);
	if (rc == SQLITE_DONE)
		return true;
	log_error("store: savepoint: %s", sqlite3_errmsg(c->st->db));
	c->txn_rc = rc;
	return false;
}

static void fail_all(struct store_delivery **d, size_t n, enum status s)
{
	for (size_t i = 0; i < n; i++) {
		d[i]->status = s;
		if (d[i]->uids)
			memset(d[i]->uids, 0, d[i]->n_accounts * sizeof(*d[i]->uids));
	}
}

enum status store_commit_deliveries(struct store *st, struct store_delivery **d, size_t n)
{
	struct deliver_ctx c = { st, SQLITE_OK };
	char *err = NULL;
	if (n == 0)
		return ST_OK;
	enum status s = store_db_begin(st, &err);
	if (s != ST_OK) {
		log_error("store: group commit: %s", err);
		free(err);
		fail_all(d, n, s);
		metric_inc(M_STORE_COMMIT_FAILURES);
		return s;
	}
	uint64_t ok = 0;
	for (size_t i = 0; i < n && c.txn_rc == SQLITE_OK; i++) {
		if (!savepoint_op(&c, Q_SAVEPOINT))
			break;
		d[i]->status = deliver_one(&c, d[i]);
		if (c.txn_rc != SQLITE_OK)
			break;
		if (d[i]->status != ST_OK) {
			if (d[i]->uids)
				memset(d[i]->uids, 0, d[i]->n_accounts * sizeof(*d[i]->uids));
			if (!savepoint_op(&c, Q_ROLLBACK_TO))
				break;
		} else {
			ok++;
		}
		savepoint_op(&c, Q_RELEASE);
	}
	if (c.txn_rc != SQLITE_OK) {
		s = store_db_status(c.txn_rc);
		store_db_rollback(st);
	} else if ((s = store_db_commit(st, &err)) != ST_OK) {
		log_error("store: group commit: %s", err);
		free(err);
	}
	if (s != ST_OK) {
		fail_all(d, n, s);
		metric_inc(M_STORE_COMMIT_FAILURES);
		return s;
	}
	metric_inc(M_STORE_COMMITS);
	metric_add(M_STORE_COMMITTED_DELIVERIES, ok);
	return ST_OK;
}
