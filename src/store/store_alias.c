/*
 * store_alias.c - aliases (administration).
 *
 * Owns: store_alias_add, store_alias_del, store_alias_list.
 *
 * An alias maps a source (local@domain, or "@domain": the domain's
 * catch-all) to a comma-separated list of targets, each a local account or
 * another alias.  alias add is one transaction that checks, before COMMIT:
 *  - the source is well formed, its domain is local, and it is neither an
 *    alias already nor an account (ST_EXISTS);
 *  - every target is a well-formed address naming an existing account or
 *    alias (ST_NOT_FOUND otherwise), at most STORE_MAX_EXPANSION targets;
 *  - the new alias expands without a loop, within 8 levels and 64 accounts
 *    (ST_INVALID otherwise), and so does every alias that already named
 *    the source as a target (left dangling by an earlier delete).
 * Targets are stored lower-cased, deduplicated, joined by ",".
 *
 * alias del removes the row only: aliases naming it keep a dangling target,
 * which resolution skips (as it skips deleted accounts).
 *
 * Thread: the writer's.  The list callback runs while a statement is active
 * and must not use the same store handle.
 */
#include "store_internal.h"

#include <stdlib.h>
#include <string.h>

/* Targets parsed from the user's list. */
struct target_list {
	char (*addr)[STORE_ADDRESS_MAX + 1];
	size_t n;
};

static enum status parse_targets(const char *source, const char *targets, struct target_list *tl,
				 char **error_r)
{
	tl->addr = xcalloc(STORE_MAX_EXPANSION, sizeof(*tl->addr));
	tl->n = 0;
	char *copy = xstrdup(targets), *save = NULL;
	enum status s = ST_OK;
	for (char *t = strtok_r(copy, ",", &save); t && s == ST_OK; t = strtok_r(NULL, ",", &save)) {
		t = str_trim(t);
		if (*t == '\0')
			continue;
		char norm[STORE_ADDRESS_MAX + 1];
		if (!store_addr_address(t, norm, error_r)) {
			s = ST_INVALID;
			break;
		}
		if (strcmp(norm, source) == 0) {
			if (error_r)
				*error_r = xasprintf("alias %s cannot target itself", source);
			s = ST_INVALID;
			break;
		}
		bool dup = false;
		for (size_t i = 0; i < tl->n && !dup; i++)
			dup = strcmp(tl->addr[i], norm) == 0;
		if (dup)
			continue;
		if (tl->n == STORE_MAX_EXPANSION) {
			if (error_r)
				*error_r = xasprintf("more than %d targets", STORE_MAX_EXPANSION);
			s = ST_INVALID;
			break;
		}
		memcpy(tl->addr[tl->n++], norm, sizeof(norm));
	}
	free(copy);
	if (s == ST_OK && tl->n == 0) {
		if (error_r)
			*error_r = xstrdup("an alias needs at least one target");
		s = ST_INVALID;
	}
	return s;
}

/* 1 when the statement finds a row for key, 0 when not, -1 on error. */
static int row_exists(struct store *st, enum store_q qid, const char *key, char **error_r)
{
	sqlite3_stmt *q = st->q[qid];
	sqlite3_bind_text(q, 1, key, -1, SQLITE_STATIC);
	int rc = sqlite3_step(q);
	int r = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
	if (r < 0)
		store_db_fail(st->db, rc, "lookup", error_r);
	store_db_reset(q);
	return r;
}

static enum status check_source(struct store *st, const char *src, char **error_r)
{
	int64_t domain_id;
	enum status s = store_account_domain_id(st, store_addr_domain_part(src), &domain_id, error_r);
	if (s != ST_OK)
		return s;
	int r = row_exists(st, Q_ACCOUNT_ID, src, error_r);
	if (r != 0) {
		if (r > 0 && error_r)
			*error_r = xasprintf("%s is an account", src);
		return r > 0 ? ST_EXISTS : ST_TEMPFAIL;
	}
	return ST_OK;
}

static enum status check_targets(struct store *st, const struct target_list *tl, char **error_r)
{
	for (size_t i = 0; i < tl->n; i++) {
		int r = row_exists(st, Q_ACCOUNT_ID, tl->addr[i], error_r);
		if (r == 0)
			r = row_exists(st, Q_LOOKUP_ALIAS, tl->addr[i], error_r);
		if (r < 0)
			return ST_TEMPFAIL;
		if (r == 0) {
			if (error_r)
				*error_r = xasprintf("target %s is neither a local account nor an alias",
						     tl->addr[i]);
			return ST_NOT_FOUND;
		}
	}
	return ST_OK;
}

static enum status check_expansion(struct store *st, const char *alias, char **error_r)
{
	struct rcpt_resolution res;
	memset(&res, 0, sizeof(res));
	char *err = NULL;
	enum status s = store_resolve_expand(st->q[Q_LOOKUP_ACCOUNT], st->q[Q_LOOKUP_ALIAS], alias, 0,
					     &res, &err);
	if (s == ST_NOT_FOUND) {
		if (error_r)
			*error_r = xasprintf("alias %s would reach no account", alias);
	} else if (s != ST_OK && error_r) {
		*error_r = err;
		err = NULL;
	}
	free(err);
	return s;
}

struct name_set {
	char **v;
	size_t n, cap;
};

static void name_set_add(struct name_set *ns, const char *name)
{
	for (size_t i = 0; i < ns->n; i++) {
		if (strcmp(ns->v[i], name) == 0)
			return;
	}
	if (ns->n == ns->cap) {
		ns->cap = ns->cap ? ns->cap * 2 : 8;
		ns->v = xreallocarray(ns->v, ns->cap, sizeof(*ns->v));
	}
	ns->v[ns->n++] = xstrdup(name);
}

static void name_set_free(struct name_set *ns)
{
	for (size_t i = 0; i < ns->n; i++)
		free(ns->v[i]);
	free(ns->v);
}

/* Adds the aliases naming `name` as a target to ns. */
static enum status add_referrers(struct store *st, const char *name, struct name_set *ns,
				 char **error_r)
{
	sqlite3_stmt *q = st->q[Q_ALIAS_REFERRERS];
	sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
	int rc;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		const unsigned char *t = sqlite3_column_text(q, 0);
		if (t)
			name_set_add(ns, (const char *)t);
	}
	enum status s = rc == SQLITE_DONE ? ST_OK : store_db_fail(st->db, rc, "alias referrers", error_r);
	store_db_reset(q);
	return s;
}

/* Checks the new alias, then every alias that reaches it.  The set grows
 * while it is walked and holds each alias once, so the walk ends after at
 * most as many steps as there are aliases. */
static enum status check_graph(struct store *st, const char *src, char **error_r)
{
	struct name_set ns = { NULL, 0, 0 };
	name_set_add(&ns, src);
	enum status s = ST_OK;
	for (size_t i = 0; i < ns.n && s == ST_OK; i++) {
		s = check_expansion(st, ns.v[i], error_r);
		if (s == ST_OK)
			s = add_referrers(st, ns.v[i], &ns, error_r);
	}
	name_set_free(&ns);
	return s;
}

static enum status alias_add_locked(struct store *st, const char *src, const struct target_list *tl,
				    char **error_r)
{
	enum status s;
	if ((s = check_source(st, src, error_r)) != ST_OK || (s = check_targets(st, tl, error_r)) != ST_OK)
		return s;
	struct buf joined = BUF_INIT;
	for (size_t i = 0; i < tl->n; i++) {
		if (i)
			buf_append_char(&joined, ',');
		buf_append_str(&joined, tl->addr[i]);
	}
	sqlite3_stmt *q = st->q[Q_ALIAS_INSERT];
	sqlite3_bind_text(q, 1, src, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 2, joined.data, (int)joined.len, SQLITE_STATIC);
	int rc = sqlite3_step(q);
	if (rc == SQLITE_CONSTRAINT_PRIMARYKEY || rc == SQLITE_CONSTRAINT_UNIQUE) {
		s = ST_EXISTS;
		if (error_r)
			*error_r = xasprintf("alias %s already exists", src);
	} else if (rc != SQLITE_DONE) {
		s = store_db_fail(st->db, rc, "adding alias", error_r);
	}
	store_db_reset(q);
	buf_free(&joined);
	if (s != ST_OK)
		return s;
	return check_graph(st, src, error_r);
}

enum status store_alias_add(struct store *st, const char *source, const char *targets, char **error_r)
{
	char src[STORE_ADDRESS_MAX + 1];
	if (source == NULL || targets == NULL) {
		if (error_r)
			*error_r = xstrdup("alias source and targets are required");
		return ST_INVALID;
	}
	if (!store_addr_alias_source(source, src, error_r))
		return ST_INVALID;
	struct target_list tl;
	enum status s = parse_targets(src, targets, &tl, error_r);
	if (s == ST_OK && (s = store_db_begin(st, error_r)) == ST_OK) {
		s = alias_add_locked(st, src, &tl, error_r);
		if (s == ST_OK)
			s = store_db_commit(st, error_r);
		else
			store_db_rollback(st);
	}
	free(tl.addr);
	return s;
}

enum status store_alias_del(struct store *st, const char *source, char **error_r)
{
	char src[STORE_ADDRESS_MAX + 1];
	if (source == NULL || !store_addr_alias_source(source, src, error_r))
		return ST_INVALID;
	sqlite3_stmt *q = st->q[Q_ALIAS_DELETE];
	sqlite3_bind_text(q, 1, src, -1, SQLITE_STATIC);
	int rc = sqlite3_step(q);
	enum status s = ST_OK;
	if (rc != SQLITE_DONE) {
		s = store_db_fail(st->db, rc, "deleting alias", error_r);
	} else if (sqlite3_changes(st->db) == 0) {
		s = ST_NOT_FOUND;
		if (error_r)
			*error_r = xasprintf("no such alias: %s", src);
	}
	store_db_reset(q);
	return s;
}

enum status store_alias_list(struct store *st, store_alias_cb *cb, void *ctx)
{
	sqlite3_stmt *q = st->q[Q_ALIAS_LIST];
	int rc;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		const unsigned char *src = sqlite3_column_text(q, 0);
		const unsigned char *tg = sqlite3_column_text(q, 1);
		cb(ctx, src ? (const char *)src : "", tg ? (const char *)tg : "");
	}
	enum status s = ST_OK;
	if (rc != SQLITE_DONE) {
		log_error("store: listing aliases: %s", sqlite3_errmsg(st->db));
		s = store_db_status(rc);
	}
	store_db_reset(q);
	return s;
}
