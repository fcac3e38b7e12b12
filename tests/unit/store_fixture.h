/*
 * store_fixture.h - what the store unit tests share (store_test.c,
 * store_mime_test.c, store_rebuild_test.c): a temporary state directory,
 * settings loaded from an empty config file with "key=value" overrides,
 * an index opened on them with a plain SQLite handle beside it, and the
 * labelled checks that print both values.
 *
 * Header-only: every function is static inline, so a test that does not
 * use one is not warned about it.  Include after <cmocka.h>, config.h,
 * core.h, store.h and <sqlite3.h>.
 */
#ifndef STRATA_STORE_FIXTURE_H
#define STRATA_STORE_FIXTURE_H

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

struct fixture {
	char dir[64];
	struct settings *s;
	struct store *st;             /* NULL unless opened */
	sqlite3 *raw;                 /* a plain handle on the index, or NULL */
};

static inline int fixture_rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb, (void)flag, (void)ftw;
	return remove(path);
}

/* Settings for <dir>/state from an empty config, with up to three
 * "key=value" overrides (NULL ones are skipped). */
static inline struct settings *fixture_settings(const char *dir, const char *o1, const char *o2, const char *o3)
{
	char conf[PATH_MAX], state[PATH_MAX];
	snprintf(conf, sizeof(conf), "%s/empty.conf", dir);
	FILE *f = fopen(conf, "w");
	assert_non_null(f);
	fclose(f);
	snprintf(state, sizeof(state), "state_dir=%s/state", dir);
	char *over[4] = { state };
	size_t n = 1;
	const char *given[3] = { o1, o2, o3 };
	for (size_t i = 0; i < 3; i++) {
		if (given[i] != NULL)
			over[n++] = (char *)given[i];
	}
	char *err = NULL;
	struct settings *s = config_load(conf, over, n, &err);
	if (s == NULL)
		fail_msg("config_load: %s", err);
	return s;
}

/* Opens the index of f->s (creating it) and a plain handle on it. */
static inline void fixture_open(struct fixture *f)
{
	char *err = NULL;
	f->st = store_open(f->s, true, &err);
	if (f->st == NULL)
		fail_msg("store_open: %s", err);
	assert_int_equal(sqlite3_open_v2(f->s->store_index_path, &f->raw, SQLITE_OPEN_READWRITE, NULL),
			 SQLITE_OK);
	sqlite3_busy_timeout(f->raw, 10000);
}

/* A fresh directory /tmp/strata-<name>-XXXXXX and its settings; the index
 * is opened when `open` is set. */
static inline struct fixture *fixture_new(const char *name, bool open, const char *o1, const char *o2,
					  const char *o3)
{
	struct fixture *f = xcalloc(1, sizeof(*f));
	snprintf(f->dir, sizeof(f->dir), "/tmp/strata-%s-XXXXXX", name);
	if (mkdtemp(f->dir) == NULL)
		fail_msg("mkdtemp: %s", strerror(errno));
	f->s = fixture_settings(f->dir, o1, o2, o3);
	if (open)
		fixture_open(f);
	return f;
}

static inline void fixture_free(struct fixture *f)
{
	if (f->raw != NULL)
		sqlite3_close(f->raw);
	store_close(&f->st);
	config_free(&f->s);
	nftw(f->dir, fixture_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
}

/* The first column of the first row of `sql` on the plain handle. */
static inline int64_t raw_int(struct fixture *f, const char *sql)
{
	sqlite3_stmt *q = NULL;
	if (sqlite3_prepare_v2(f->raw, sql, -1, &q, NULL) != SQLITE_OK)
		fail_msg("%s: %s", sql, sqlite3_errmsg(f->raw));
	if (sqlite3_step(q) != SQLITE_ROW)
		fail_msg("%s: no row (%s)", sql, sqlite3_errmsg(f->raw));
	int64_t v = sqlite3_column_int64(q, 0);
	sqlite3_finalize(q);
	return v;
}

static inline void raw_exec(struct fixture *f, const char *sql)
{
	char *msg = NULL;
	if (sqlite3_exec(f->raw, sql, NULL, NULL, &msg) != SQLITE_OK)
		fail_msg("%s: %s", sql, msg);
}

/* Fails with the label and both statuses when they differ. */
#define CHECK_ST(label, got, want)                                                            \
	do {                                                                                  \
		enum status got_ = (got), want_ = (want);                                     \
		if (got_ != want_)                                                            \
			fail_msg("%s: got %s, want %s", (label), status_info(got_)->name,     \
				 status_info(want_)->name);                                   \
	} while (0)

/* Fails with the label and both values when they differ. */
#define CHECK_INT(label, got, want)                                                           \
	do {                                                                                  \
		long long got_ = (long long)(got), want_ = (long long)(want);                 \
		if (got_ != want_)                                                            \
			fail_msg("%s: got %lld, want %lld", (label), got_, want_);            \
	} while (0)

#endif
