/*
 * store_account.c - domains and accounts (administration).
 *
 * Owns: store_domain_*, store_user_* and the quota rule shared by recipient
 * resolution and delivery.
 *
 * Every write is one durable transaction (BEGIN IMMEDIATE ... COMMIT with the
 * writer's synchronous setting); a failure rolls back everything the call
 * did.  Inputs are validated and lower-cased (store_addr.c) before they
 * reach the index.  An account address and an alias source are one name
 * space: adding either fails with ST_EXISTS when the other holds the name,
 * so an alias is never silently shadowed by an account.
 *
 * store_user_del removes index rows in one transaction and unlinks blob
 * files whose reference count reached zero only after COMMIT: a crash in
 * between leaves an orphan file (harmless; `verify` finds it), never an
 * index row naming a missing file.
 *
 * Thread: the writer's (see store.h).  Callbacks of the list functions run
 * while a statement is active and must not use the same store handle.
 */
#include "store_internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

bool store_account_over_quota(uint64_t quota_bytes, uint64_t quota_messages, uint64_t used_bytes,
			      uint64_t used_messages, uint64_t size)
{
	/* used + size > quota, without overflow */
	if (quota_bytes && (used_bytes > quota_bytes || size > quota_bytes - used_bytes))
		return true;
	if (quota_messages && used_messages >= quota_messages)
		return true;
	return false;
}

/* ---- lookups shared with the other files -------------------------------- */

static enum status lookup_id(struct store *st, enum store_q qid, const char *key, const char *kind,
			     int64_t *id_r, char **error_r)
{
	sqlite3_stmt *q = st->q[qid];
	sqlite3_bind_text(q, 1, key, -1, SQLITE_STATIC);
	int rc = sqlite3_step(q);
	enum status s = ST_OK;
	if (rc == SQLITE_ROW) {
		*id_r = sqlite3_column_int64(q, 0);
	} else if (rc == SQLITE_DONE) {
		s = ST_NOT_FOUND;
		if (error_r)
			*error_r = xasprintf("no such %s: %s", kind, key);
	} else {
		s = store_db_fail(st->db, rc, kind, error_r);
	}
	store_db_reset(q);
	return s;
}

enum status store_account_domain_id(struct store *st, const char *domain, int64_t *id_r, char **error_r)
{
	return lookup_id(st, Q_DOMAIN_ID, domain, "local domain", id_r, error_r);
}

enum status store_account_id(struct store *st, const char *address, int64_t *id_r, char **error_r)
{
	return lookup_id(st, Q_ACCOUNT_ID, address, "account", id_r, error_r);
}

/* Runs a one-row count query bound to one text parameter. */
static enum status count_rows(struct store *st, enum store_q qid, const char *text, int64_t id,
			      int64_t *count_r, char **error_r)
{
	sqlite3_stmt *q = st->q[qid];
	if (text)
		sqlite3_bind_text(q, 1, text, -1, SQLITE_STATIC);
	else
		sqlite3_bind_int64(q, 1, id);
	int rc = sqlite3_step(q);
	enum status s = ST_OK;
	if (rc == SQLITE_ROW)
		*count_r = sqlite3_column_int64(q, 0);
	else
		s = store_db_fail(st->db, rc, "count", error_r);
	store_db_reset(q);
	return s;
}

/* ---- domains ---------------------------------------------------------- */

enum status store_domain_add(struct store *st, const char *domain, char **error_r)
{
	char d[STORE_DOMAIN_MAX + 1];
	if (!store_addr_domain(domain, d, error_r))
		return ST_INVALID;
	sqlite3_stmt *q = st->q[Q_DOMAIN_INSERT];
	sqlite3_bind_text(q, 1, d, -1, SQLITE_STATIC);
	int rc = sqlite3_step(q);
	enum status s = ST_OK;
	if (rc == SQLITE_CONSTRAINT_UNIQUE) {
		s = ST_EXISTS;
		if (error_r)
			*error_r = xasprintf("domain %s already exists", d);
	} else if (rc != SQLITE_DONE) {
		s = store_db_fail(st->db, rc, "adding domain", error_r);
	}
	store_db_reset(q);
	return s;
}

static enum status domain_del_locked(struct store *st, const char *d, char **error_r)
{
	int64_t id, n = 0;
	enum status s = store_account_domain_id(st, d, &id, error_r);
	if (s != ST_OK)
		return s;
	if ((s = count_rows(st, Q_DOMAIN_ACCOUNTS, NULL, id, &n, error_r)) != ST_OK)
		return s;
	if (n > 0) {
		if (error_r)
			*error_r = xasprintf("domain %s still has %lld account(s); delete them first", d,
					     (long long)n);
		return ST_INVALID;
	}
	char at_domain[STORE_DOMAIN_MAX + 2];
	snprintf(at_domain, sizeof(at_domain), "@%s", d);
	if ((s = count_rows(st, Q_DOMAIN_ALIASES, at_domain, 0, &n, error_r)) != ST_OK)
		return s;
	if (n > 0) {
		if (error_r)
			*error_r = xasprintf("domain %s still has %lld alias(es); delete them first", d,
					     (long long)n);
		return ST_INVALID;
	}
	sqlite3_stmt *q = st->q[Q_DOMAIN_DELETE];
	sqlite3_bind_int64(q, 1, id);
	int rc = sqlite3_step(q);
	if (rc != SQLITE_DONE)
		s = store_db_fail(st->db, rc, "deleting domain", error_r);
	store_db_reset(q);
	return s;
}

enum status store_domain_del(struct store *st, const char *domain, char **error_r)
{
	char d[STORE_DOMAIN_MAX + 1];
	if (!store_addr_domain(domain, d, error_r))
		return ST_INVALID;
	enum status s = store_db_begin(st, error_r);
	if (s != ST_OK)
		return s;
	s = domain_del_locked(st, d, error_r);
	if (s != ST_OK) {
		store_db_rollback(st);
		return s;
	}
	return store_db_commit(st, error_r);
}

enum status store_domain_list(struct store *st, store_name_cb *cb, void *ctx)
{
	sqlite3_stmt *q = st->q[Q_DOMAIN_LIST];
	int rc;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW)
		cb(ctx, (const char *)sqlite3_column_text(q, 0));
	enum status s = ST_OK;
	if (rc != SQLITE_DONE) {
		log_error("store: listing domains: %s", sqlite3_errmsg(st->db));
		s = store_db_status(rc);
	}
	store_db_reset(q);
	return s;
}

/* ---- accounts: adding ------------------------------------------------- */

static bool pwhash_ok(const char *h, char **error_r)
{
	size_t n = strnlen(h, STORE_PWHASH_MAX + 1);
	if (n > STORE_PWHASH_MAX) {
		if (error_r)
			*error_r = xasprintf("password hash longer than %d bytes", STORE_PWHASH_MAX);
		return false;
	}
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)h[i];
		if (c < 0x21 || c > 0x7e) {
			if (error_r)
				*error_r = xstrdup("password hash contains spaces, control or non-ASCII "
						   "characters");
			return false;
		}
	}
	return true;
}

static bool quota_ok(uint64_t bytes, uint64_t messages, char **error_r)
{
	if (bytes > (uint64_t)INT64_MAX || messages > (uint64_t)INT64_MAX) {
		if (error_r)
			*error_r = xstrdup("quota too large");
		return false;
	}
	return true;
}

/* Fails with ST_EXISTS when `address` is an alias source. */
static enum status check_not_alias(struct store *st, const char *address, char **error_r)
{
	sqlite3_stmt *q = st->q[Q_LOOKUP_ALIAS];
	sqlite3_bind_text(q, 1, address, -1, SQLITE_STATIC);
	int rc = sqlite3_step(q);
	enum status s = ST_OK;
	if (rc == SQLITE_ROW) {
		s = ST_EXISTS;
		if (error_r)
			*error_r = xasprintf("%s is an alias; delete the alias first", address);
	} else if (rc != SQLITE_DONE) {
		s = store_db_fail(st->db, rc, "alias lookup", error_r);
	}
	store_db_reset(q);
	return s;
}

/* Inserts one account and its mailboxes inside the caller's transaction. */
static enum status user_insert(struct store *st, const struct user_spec *u, int64_t now,
			       char **error_r)
{
	char addr[STORE_ADDRESS_MAX + 1];
	const char *pw = u->pwhash ? u->pwhash : "";
	if (u->address == NULL) {
		if (error_r)
			*error_r = xstrdup("missing address");
		return ST_INVALID;
	}
	if (!store_addr_address(u->address, addr, error_r) || !pwhash_ok(pw, error_r) ||
	    !quota_ok(u->quota_bytes, u->quota_messages, error_r))
		return ST_INVALID;
	int64_t domain_id;
	enum status s = store_account_domain_id(st, store_addr_domain_part(addr), &domain_id, error_r);
	if (s != ST_OK)
		return s;
	if ((s = check_not_alias(st, addr, error_r)) != ST_OK)
		return s;
	sqlite3_stmt *q = st->q[Q_ACCOUNT_INSERT];
	sqlite3_bind_int64(q, 1, domain_id);
	sqlite3_bind_text(q, 2, addr, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 3, pw, -1, SQLITE_STATIC);
	store_db_bind_u64(q, 4, u->quota_bytes);
	store_db_bind_u64(q, 5, u->quota_messages);
	sqlite3_bind_int64(q, 6, now);
	int rc = sqlite3_step(q);
	if (rc == SQLITE_CONSTRAINT_UNIQUE) {
		s = ST_EXISTS;
		if (error_r)
			*error_r = xasprintf("account %s already exists", addr);
	} else if (rc != SQLITE_DONE) {
		s = store_db_fail(st->db, rc, "adding account", error_r);
	}
	store_db_reset(q);
	if (s != ST_OK)
		return s;
	return store_mailbox_create_defaults(st, sqlite3_last_insert_rowid(st->db), error_r);
}

enum status store_user_add(struct store *st, const char *address, const char *pwhash,
			   uint64_t quota_bytes, uint64_t quota_messages, char **error_r)
{
	struct user_spec u = { address, pwhash, quota_bytes, quota_messages };
	size_t failed;
	return store_user_add_many(st, &u, 1, &failed, error_r);
}

enum status store_user_add_many(struct store *st, const struct user_spec *specs, size_t n,
				size_t *failed_index_r, char **error_r)
{
	*failed_index_r = 0;
	enum status s = store_db_begin(st, error_r);
	if (s != ST_OK)
		return s;
	int64_t now = (int64_t)time(NULL);
	for (size_t i = 0; i < n; i++) {
		s = user_insert(st, &specs[i], now, error_r);
		if (s != ST_OK) {
			*failed_index_r = i;
			store_db_rollback(st);
			return s;
		}
	}
	s = store_db_commit(st, error_r);
	if (s != ST_OK)
		*failed_index_r = n;
	return s;
}

/* ---- accounts: deleting ----------------------------------------------- */

struct doomed {
	struct msgid *ids;
	size_t n, cap;
};

/* Drops this account's references from every blob it uses; collects the
 * blobs that no account uses any more and deletes their rows. */
static enum status release_blobs(struct store *st, int64_t account_id, struct doomed *dm,
				 char **error_r)
{
	sqlite3_stmt *refs = st->q[Q_ACCOUNT_BLOB_REFS];
	sqlite3_bind_int64(refs, 1, account_id);
	enum status s = ST_OK;
	int rc = SQLITE_DONE;
	while (s == ST_OK && (rc = sqlite3_step(refs)) == SQLITE_ROW) {
		int64_t blob_id = sqlite3_column_int64(refs, 0);
		sqlite3_stmt *dec = st->q[Q_BLOB_DECREF];
		sqlite3_bind_int64(dec, 1, blob_id);
		sqlite3_bind_int64(dec, 2, sqlite3_column_int64(refs, 1));
		int rc2 = sqlite3_step(dec);
		if (rc2 == SQLITE_ROW && sqlite3_column_int64(dec, 0) <= 0) {
			const void *mid = sqlite3_column_blob(dec, 1);
			int64_t tier = sqlite3_column_int64(dec, 2);
			if (mid && sqlite3_column_bytes(dec, 1) == MSGID_BYTES) {
				if (dm->n == dm->cap) {
					dm->cap = dm->cap ? dm->cap * 2 : 64;
					dm->ids = xreallocarray(dm->ids, dm->cap, sizeof(*dm->ids));
				}
				memcpy(dm->ids[dm->n++].b, mid, MSGID_BYTES);
			} else {
				log_warn("store: blob row %lld (tier %lld) freed; its file is left for "
					 "verify", (long long)blob_id, (long long)tier);
			}
			store_db_reset(dec);
			sqlite3_stmt *del = st->q[Q_BLOB_DELETE];
			sqlite3_bind_int64(del, 1, blob_id);
			rc2 = store_db_run(del);
		} else {
			store_db_reset(dec);
		}
		if (rc2 != SQLITE_DONE && rc2 != SQLITE_ROW)
			s = store_db_fail(st->db, rc2, "releasing blobs", error_r);
	}
	if (s == ST_OK && rc != SQLITE_DONE)
		s = store_db_fail(st->db, rc, "listing blobs", error_r);
	store_db_reset(refs);
	return s;
}

static enum status run_by_id(struct store *st, enum store_q qid, int64_t id, const char *what,
			     char **error_r)
{
	sqlite3_stmt *q = st->q[qid];
	sqlite3_bind_int64(q, 1, id);
	int rc = sqlite3_step(q);
	enum status s = rc == SQLITE_DONE ? ST_OK : store_db_fail(st->db, rc, what, error_r);
	store_db_reset(q);
	return s;
}

static void unlink_blobs(struct store *st, const struct doomed *dm)
{
	for (size_t i = 0; i < dm->n; i++) {
		char path[PATH_MAX];
		store_blob_path(st->s->store_blob_dir, &dm->ids[i], path, sizeof(path));
		int e = store_blob_unlink(st->s, &dm->ids[i]); /* every tier */
		if (e != 0)
			log_warn("store: cannot remove blob %s: %s (an orphan; verify will find it)",
				 path, strerror(e));
	}
}

enum status store_user_del(struct store *st, const char *address, char **error_r)
{
	char addr[STORE_ADDRESS_MAX + 1];
	if (!store_addr_address(address, addr, error_r))
		return ST_INVALID;
	enum status s = store_db_begin(st, error_r);
	if (s != ST_OK)
		return s;
	struct doomed dm = { NULL, 0, 0 };
	int64_t id;
	if ((s = store_account_id(st, addr, &id, error_r)) != ST_OK ||
	    (s = release_blobs(st, id, &dm, error_r)) != ST_OK ||
	    (s = run_by_id(st, Q_ACCOUNT_DEL_MESSAGES, id, "deleting messages", error_r)) != ST_OK ||
	    (s = run_by_id(st, Q_ACCOUNT_DEL_MAILBOXES, id, "deleting mailboxes", error_r)) != ST_OK ||
	    (s = run_by_id(st, Q_ACCOUNT_DELETE, id, "deleting account", error_r)) != ST_OK) {
		store_db_rollback(st);
		free(dm.ids);
		return s;
	}
	s = store_db_commit(st, error_r);
	if (s == ST_OK)
		unlink_blobs(st, &dm);
	free(dm.ids);
	return s;
}

/* ---- accounts: changing and reading --------------------------------------- */

/* Runs an UPDATE keyed by address; ST_NOT_FOUND when no row changed. */
static enum status update_account(struct store *st, sqlite3_stmt *q, const char *addr,
				  const char *what, char **error_r)
{
	int rc = sqlite3_step(q);
	enum status s = ST_OK;
	if (rc != SQLITE_DONE) {
		s = store_db_fail(st->db, rc, what, error_r);
	} else if (sqlite3_changes(st->db) == 0) {
		s = ST_NOT_FOUND;
		if (error_r)
			*error_r = xasprintf("no such account: %s", addr);
	}
	store_db_reset(q);
	return s;
}

enum status store_user_set_password(struct store *st, const char *address, const char *pwhash,
				    char **error_r)
{
	char addr[STORE_ADDRESS_MAX + 1];
	const char *pw = pwhash ? pwhash : "";
	if (!store_addr_address(address, addr, error_r) || !pwhash_ok(pw, error_r))
		return ST_INVALID;
	sqlite3_stmt *q = st->q[Q_ACCOUNT_SET_PW];
	sqlite3_bind_text(q, 1, addr, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 2, pw, -1, SQLITE_STATIC);
	return update_account(st, q, addr, "setting password", error_r);
}

enum status store_user_set_quota(struct store *st, const char *address, uint64_t quota_bytes,
				 uint64_t quota_messages, char **error_r)
{
	char addr[STORE_ADDRESS_MAX + 1];
	if (!store_addr_address(address, addr, error_r) ||
	    !quota_ok(quota_bytes, quota_messages, error_r))
		return ST_INVALID;
	sqlite3_stmt *q = st->q[Q_ACCOUNT_SET_QUOTA];
	sqlite3_bind_text(q, 1, addr, -1, SQLITE_STATIC);
	store_db_bind_u64(q, 2, quota_bytes);
	store_db_bind_u64(q, 3, quota_messages);
	return update_account(st, q, addr, "setting quota", error_r);
}

static void account_from_row(sqlite3_stmt *q, struct account *a)
{
	memset(a, 0, sizeof(*a));
	a->id = sqlite3_column_int64(q, 0);
	const unsigned char *t = sqlite3_column_text(q, 1);
	snprintf(a->address, sizeof(a->address), "%s", t ? (const char *)t : "");
	t = sqlite3_column_text(q, 2);
	snprintf(a->pwhash, sizeof(a->pwhash), "%s", t ? (const char *)t : "");
	a->quota_bytes = store_db_column_u64(q, 3);
	a->quota_messages = store_db_column_u64(q, 4);
	a->used_bytes = store_db_column_u64(q, 5);
	a->used_messages = store_db_column_u64(q, 6);
	a->created = sqlite3_column_int64(q, 7);
	a->last_login = sqlite3_column_int64(q, 8);
}

enum status store_user_get(struct store *st, const char *address, struct account *out)
{
	char addr[STORE_ADDRESS_MAX + 1];
	memset(out, 0, sizeof(*out));
	if (!store_addr_address(address, addr, NULL))
		return ST_INVALID;
	sqlite3_stmt *q = st->q[Q_ACCOUNT_GET];
	sqlite3_bind_text(q, 1, addr, -1, SQLITE_STATIC);
	int rc = sqlite3_step(q);
	enum status s = ST_OK;
	if (rc == SQLITE_ROW) {
		account_from_row(q, out);
	} else if (rc == SQLITE_DONE) {
		s = ST_NOT_FOUND;
	} else {
		log_error("store: reading account: %s", sqlite3_errmsg(st->db));
		s = store_db_status(rc);
	}
	store_db_reset(q);
	return s;
}

enum status store_user_list(struct store *st, const char *domain, store_account_cb *cb, void *ctx)
{
	sqlite3_stmt *q = st->q[Q_ACCOUNT_LIST_ALL];
	if (domain) {
		char d[STORE_DOMAIN_MAX + 1];
		int64_t domain_id;
		if (!store_addr_domain(domain, d, NULL))
			return ST_INVALID;
		enum status s = store_account_domain_id(st, d, &domain_id, NULL);
		if (s != ST_OK)
			return s;
		q = st->q[Q_ACCOUNT_LIST_DOMAIN];
		sqlite3_bind_int64(q, 1, domain_id);
	}
	int rc;
	struct account a;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		account_from_row(q, &a);
		cb(ctx, &a);
	}
	enum status s = ST_OK;
	if (rc != SQLITE_DONE) {
		log_error("store: listing accounts: %s", sqlite3_errmsg(st->db));
		s = store_db_status(rc);
	}
	store_db_reset(q);
	return s;
}
