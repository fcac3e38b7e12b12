/*
 * store_resolve.c - recipient resolution (RCPT TO) and alias expansion.
 *
 * Owns: store_resolve_rcpt and store_domain_is_local (network threads, each
 * with its own struct store_reader), and the expansion engine that the
 * writer also runs when an alias is added (store_alias.c).
 *
 * Order for an envelope address local@domain (RFC 5321 says local parts
 * may be case-sensitive; Strata treats them as case-insensitive, like
 * almost every mail system, and lower-cases):
 *   domain not in `domains`          -> ST_INVALID (not ours: relay denied)
 *   1. exact account, else exact alias (expanded recursively)
 *   2. local part cut at the first recipient_delimiter character
 *      ("user+tag" -> "user"), account then alias
 *   3. the catch-all alias "@domain"
 *   nothing                           -> ST_NOT_FOUND
 * An alias target is an account or an alias, looked up exactly.  Expansion
 * is bounded: 8 levels of nesting, STORE_MAX_EXPANSION accounts, 1024
 * lookups; a loop is detected on the current path.  An alias reached twice
 * through different paths (a diamond) is expanded once.  A target that no
 * longer exists (deleted since the alias was made) is skipped.  Loops and
 * limits are configuration errors: resolution answers ST_TEMPFAIL (the
 * sender retries while the administrator fixes it) and logs the chain.
 *
 * All lookups of one resolution run in one read transaction, so they see
 * one consistent snapshot; every statement is prepared once per reader.
 */
#include "store_internal.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPAND_MAX_LOOKUPS 1024

struct expand_done {
	char *name;
	bool found;
};

struct expand {
	sqlite3_stmt *q_account, *q_alias;
	uint64_t size;
	struct rcpt_resolution *res;
	const char *path[STORE_ALIAS_MAX_DEPTH]; /* aliases being expanded, outermost first */
	size_t depth;
	struct expand_done *done;                /* aliases fully expanded */
	size_t n_done, cap_done;
	size_t lookups;
	enum status err;
	char *error;
};

static int expand_fail(struct expand *x, enum status s, char *msg)
{
	x->err = s;
	free(x->error);
	x->error = msg;
	return -1;
}

static int expand_db_fail(struct expand *x, sqlite3_stmt *q, int rc)
{
	return expand_fail(x, store_db_status(rc),
			   xasprintf("alias expansion: %s", sqlite3_errmsg(sqlite3_db_handle(q))));
}

static char *path_text(const struct expand *x, const char *last)
{
	struct buf b = BUF_INIT;
	for (size_t i = 0; i < x->depth; i++)
		buf_printf(&b, "%s -> ", x->path[i]);
	buf_append_str(&b, last);
	return buf_steal(&b);
}

static int add_account(struct expand *x, sqlite3_stmt *q)
{
	struct rcpt_resolution *res = x->res;
	int64_t id = sqlite3_column_int64(q, 0);
	for (size_t i = 0; i < res->n; i++) {
		if (res->account_ids[i] == id)
			return 1;
	}
	if (res->n == STORE_MAX_EXPANSION)
		return expand_fail(x, ST_INVALID,
				   xasprintf("alias expansion reaches more than %d accounts",
					     STORE_MAX_EXPANSION));
	const unsigned char *addr = sqlite3_column_text(q, 5);
	snprintf(res->addresses[res->n], sizeof(res->addresses[res->n]), "%s",
		 addr ? (const char *)addr : "");
	res->account_ids[res->n++] = id;
	if (store_account_over_quota(store_db_column_u64(q, 1), store_db_column_u64(q, 2),
				     store_db_column_u64(q, 3), store_db_column_u64(q, 4), x->size))
		res->over_quota = true;
	return 1;
}

static void remember_done(struct expand *x, const char *name, bool found)
{
	if (x->n_done == x->cap_done) {
		x->cap_done = x->cap_done ? x->cap_done * 2 : 8;
		x->done = xreallocarray(x->done, x->cap_done, sizeof(*x->done));
	}
	x->done[x->n_done].name = xstrdup(name);
	x->done[x->n_done].found = found;
	x->n_done++;
}

static int lookup(struct expand *x, const char *addr);

/* Expands the targets of alias `addr`.  targets is a private copy. */
static int expand_alias(struct expand *x, const char *addr, char *targets)
{
	for (size_t i = 0; i < x->depth; i++) {
		if (strcmp(x->path[i], addr) == 0) {
			char *chain = path_text(x, addr);
			int r = expand_fail(x, ST_INVALID, xasprintf("alias loop: %s", chain));
			free(chain);
			return r;
		}
	}
	for (size_t i = 0; i < x->n_done; i++) {
		if (strcmp(x->done[i].name, addr) == 0)
			return x->done[i].found ? 1 : 0;
	}
	if (x->depth == STORE_ALIAS_MAX_DEPTH) {
		char *chain = path_text(x, addr);
		int r = expand_fail(x, ST_INVALID, xasprintf("aliases nested deeper than %d levels: %s",
							     STORE_ALIAS_MAX_DEPTH, chain));
		free(chain);
		return r;
	}
	x->path[x->depth++] = addr;
	bool found = false;
	char *save = NULL;
	for (char *t = strtok_r(targets, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		while (*t == ' ' || *t == '\t')
			t++;
		size_t n = strlen(t);
		while (n > 0 && (t[n - 1] == ' ' || t[n - 1] == '\t'))
			t[--n] = '\0';
		if (n == 0)
			continue;
		int r = lookup(x, t);
		if (r < 0) {
			x->depth--;
			return r;
		}
		found = found || r == 1;
	}
	x->depth--;
	remember_done(x, addr, found);
	return found ? 1 : 0;
}

/* 1: found (accounts added), 0: nothing by that name, -1: error in x. */
static int lookup(struct expand *x, const char *addr)
{
	if (++x->lookups > EXPAND_MAX_LOOKUPS)
		return expand_fail(x, ST_INVALID, xasprintf("alias expansion of more than %d lookups",
							    EXPAND_MAX_LOOKUPS));
	sqlite3_stmt *q = x->q_account;
	sqlite3_bind_text(q, 1, addr, -1, SQLITE_STATIC);
	int rc = sqlite3_step(q);
	if (rc == SQLITE_ROW) {
		int r = add_account(x, q);
		store_db_reset(q);
		return r;
	}
	store_db_reset(q);
	if (rc != SQLITE_DONE)
		return expand_db_fail(x, q, rc);
	q = x->q_alias;
	sqlite3_bind_text(q, 1, addr, -1, SQLITE_STATIC);
	rc = sqlite3_step(q);
	if (rc != SQLITE_ROW) {
		store_db_reset(q);
		return rc == SQLITE_DONE ? 0 : expand_db_fail(x, q, rc);
	}
	const unsigned char *t = sqlite3_column_text(q, 0);
	char *targets = xstrdup(t ? (const char *)t : "");
	store_db_reset(q);
	int r = expand_alias(x, addr, targets);
	free(targets);
	return r;
}

enum status store_resolve_expand(sqlite3_stmt *q_account, sqlite3_stmt *q_alias, const char *address,
				 uint64_t size, struct rcpt_resolution *res, char **error_r)
{
	struct expand x = { .q_account = q_account, .q_alias = q_alias, .size = size, .res = res };
	int r = lookup(&x, address);
	for (size_t i = 0; i < x.n_done; i++)
		free(x.done[i].name);
	free(x.done);
	if (r < 0) {
		if (error_r)
			*error_r = x.error;
		else
			free(x.error);
		return x.err;
	}
	return r == 1 ? ST_OK : ST_NOT_FOUND;
}

/* ---- the reader --------------------------------------------------------- */

static bool domain_known(struct store_reader *r, const char *domain, enum status *err)
{
	sqlite3_stmt *q = r->q[RQ_DOMAIN];
	sqlite3_bind_text(q, 1, domain, -1, SQLITE_STATIC);
	int rc = sqlite3_step(q);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		log_error("store: domain lookup: %s", sqlite3_errmsg(r->db));
		*err = ST_TEMPFAIL;
	}
	store_db_reset(q);
	return rc == SQLITE_ROW;
}

/* Lower-cases and checks the domain part; false if it cannot be local. */
static bool split_address(const char *address, char *local, size_t *local_len,
			  char domain[STORE_DOMAIN_MAX + 1])
{
	size_t len = strnlen(address, 1024);
	if (len == 1024)
		return false;
	const char *at = memrchr(address, '@', len);
	if (at == NULL)
		return false;
	size_t dlen = len - (size_t)(at + 1 - address);
	if (dlen == 0 || dlen > STORE_DOMAIN_MAX)
		return false;
	for (size_t i = 0; i < dlen; i++)
		domain[i] = (char)tolower((unsigned char)at[1 + i]);
	domain[dlen] = '\0';
	*local_len = (size_t)(at - address);
	for (size_t i = 0; i < *local_len && i < STORE_LOCAL_MAX; i++)
		local[i] = (char)tolower((unsigned char)address[i]);
	return true;
}

/* One exact expansion; logs configuration errors.  ST_OK, ST_NOT_FOUND or
 * ST_TEMPFAIL. */
static enum status try_expand(struct store_reader *r, const char *addr, uint64_t size,
			      struct rcpt_resolution *res)
{
	char *err = NULL;
	enum status s = store_resolve_expand(r->q[RQ_ACCOUNT], r->q[RQ_ALIAS], addr, size, res, &err);
	if (s == ST_OK || s == ST_NOT_FOUND)
		return s;
	char esc[STORE_ADDRESS_MAX * 2];
	log_escape(addr, strlen(addr), esc, sizeof(esc));
	log_warn("store: cannot resolve %s: %s", esc, err ? err : "error");
	free(err);
	memset(res, 0, sizeof(*res));
	return ST_TEMPFAIL;
}

static enum status resolve_in_txn(struct store_reader *r, const char *local, size_t local_len,
				  const char *domain, uint64_t size, struct rcpt_resolution *res)
{
	enum status err = ST_OK;
	if (!domain_known(r, domain, &err))
		return err != ST_OK ? err : ST_INVALID;
	if (local_len == 0 || local_len > STORE_LOCAL_MAX)
		return ST_NOT_FOUND;
	char addr[STORE_ADDRESS_MAX + 1];
	snprintf(addr, sizeof(addr), "%.*s@%s", (int)local_len, local, domain);
	enum status s = try_expand(r, addr, size, res);
	if (s != ST_NOT_FOUND)
		return s;
	size_t cut = r->delimiters[0] ? strcspn(addr, r->delimiters) : local_len;
	if (cut > 0 && cut < local_len) {
		snprintf(addr, sizeof(addr), "%.*s@%s", (int)cut, local, domain);
		if ((s = try_expand(r, addr, size, res)) != ST_NOT_FOUND)
			return s;
	}
	snprintf(addr, sizeof(addr), "@%s", domain);
	return try_expand(r, addr, size, res);
}

enum status store_resolve_rcpt(struct store_reader *r, const char *address, uint64_t size,
			       struct rcpt_resolution *res)
{
	memset(res, 0, sizeof(*res));
	char local[STORE_LOCAL_MAX], domain[STORE_DOMAIN_MAX + 1];
	size_t local_len;
	if (address == NULL || !split_address(address, local, &local_len, domain))
		return ST_INVALID;
	if (store_db_run(r->q[RQ_BEGIN]) != SQLITE_DONE) {
		log_error("store: reader transaction: %s", sqlite3_errmsg(r->db));
		return ST_TEMPFAIL;
	}
	enum status s = resolve_in_txn(r, local, local_len, domain, size, res);
	if (store_db_run(r->q[RQ_END]) != SQLITE_DONE) {
		log_error("store: ending reader transaction: %s", sqlite3_errmsg(r->db));
		if (!sqlite3_get_autocommit(r->db))
			sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
	}
	if (s != ST_OK)
		memset(res, 0, sizeof(*res));
	return s;
}

bool store_domain_is_local(struct store_reader *r, const char *domain)
{
	char d[STORE_DOMAIN_MAX + 1];
	size_t n = strnlen(domain, STORE_DOMAIN_MAX + 1);
	if (n == 0 || n > STORE_DOMAIN_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		d[i] = (char)tolower((unsigned char)domain[i]);
	d[n] = '\0';
	enum status err = ST_OK;
	return domain_known(r, d, &err);
}
