/*
 * tier_rebuild.c - reconstructs the complete tier state from what lies on
 * disk: `strata tier rebuild`, and the daemon's start when the heat or
 * tier_moves table is missing or damaged (tier_mover_start).
 *
 * Steps, under the mover lock (no move runs meanwhile):
 *  1. The tables: a damaged one is dropped and created empty (a lost
 *     journal is covered by step 3), a missing one is created.  When the
 *     heat table is healthy and holds rows, it is checkpointed first, so a
 *     rebuild by hand loses no heat.
 *  2. The move journal, when it survived: tier_recover settles it.
 *  3. Placement from the files: for every blob row, the tiers holding a
 *     copy.  A single copy is kept without reading it, wherever it is
 *     (trailers are `verify`'s business; a copy reaches a tier directory
 *     only whole, by rename after fsync).  With several (a move
 *     interrupted without its journal) the index's tier wins when its copy
 *     has a valid trailer for the blob, else the fastest tier with a valid
 *     copy.  The corrections are written to the index in transactions of
 *     50,000 rows, and only then are the other copies removed, so the
 *     index never names a removed file.  A blob with no valid copy
 *     anywhere is counted and left to `strata tier verify`.
 *  4. Heat: the newest valid checkpoint replaces the heat table; blobs it
 *     does not cover have no heat row, so placement ranks them by their
 *     priors alone (TIERING.md, "Heat"), which need no history.  Without
 *     any valid checkpoint the table is left empty: priors only.
 *
 * Memory: one 32-byte row per blob for step 3 (a store statement cannot
 * stay open while the index is written), and one 40-byte fix per blob
 * whose placement changes.  The caller's thread, own handle.
 */
#include "tier.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct brow { int64_t blob_id; struct msgid id; unsigned tier; };
struct brows { struct brow *v; size_t n, cap; };

static bool collect(void *ctx, int64_t blob_id, const struct msgid *id, unsigned tier, uint64_t size)
{
	struct brows *b = ctx;
	(void)size;
	if (b->n == b->cap) {
		b->cap = b->cap ? b->cap * 2 : 1024;
		b->v = xreallocarray(b->v, b->cap, sizeof(*b->v));
	}
	b->v[b->n++] = (struct brow){ blob_id, *id, tier };
	return true;
}

static bool has_copy(const struct settings *s, unsigned t, const struct msgid *id)
{
	char path[PATH_MAX];
	store_blob_path_for(s, t, id, path, sizeof(path));
	return access(path, F_OK) == 0;
}

static bool valid_copy(const struct settings *s, unsigned t, const struct msgid *id)
{
	char path[PATH_MAX];
	struct blob_meta m;
	store_blob_path_for(s, t, id, path, sizeof(path));
	if (store_blob_read_meta(path, &m) != ST_OK)
		return false;
	bool ok = memcmp(m.id.b, id->b, MSGID_BYTES) == 0;
	store_blob_meta_free(&m);
	return ok;
}

static void remove_copy(const struct settings *s, unsigned t, const struct msgid *id)
{
	char path[PATH_MAX], dir[PATH_MAX];
	store_blob_path_for(s, t, id, path, sizeof(path));
	store_blob_dir_of(s->tiers[t].path, id, dir, sizeof(dir));
	if (unlink(path) == 0)
		fs_fsync_dir(dir);
	else if (errno != ENOENT)
		log_warn("tier: rebuild: cannot remove the extra copy %s: %s", path, strerror(errno));
}

/* Step 3's decisions, applied after the scan: the index first (in large
 * transactions), then the extra copies, so the index never names a file
 * that was removed. */
struct fix { int64_t blob_id; struct msgid id; unsigned keep, from, extra; };
struct fixes { struct fix *v; size_t n, cap; };

#define REBUILD_LOG_EACH 20   /* corrections logged one by one, then counted */

/* Step 3 for one blob: which copy is kept.  A single copy is kept without
 * reading it, wherever it is (trailers are `verify`'s business: a copy
 * only ever reaches a tier directory whole, by rename after fsync); with
 * several, the index's tier wins when its copy is valid, else the fastest
 * valid one. */
static void place_one(const struct settings *s, const struct brow *b, struct fixes *f,
		      struct tier_rebuild_result *out)
{
	bool have[CONFIG_TIER_MAX];
	size_t copies = 0;
	unsigned only = UINT32_MAX;
	for (unsigned t = 0; t < s->n_tiers; t++) {
		copies += have[t] = has_copy(s, t, &b->id);
		if (have[t])
			only = t;
	}
	unsigned keep = UINT32_MAX;
	if (copies == 1) {
		keep = only;
	} else if (copies > 1) {
		if (b->tier < s->n_tiers && have[b->tier] && valid_copy(s, b->tier, &b->id))
			keep = b->tier;
		for (unsigned t = 0; keep == UINT32_MAX && t < s->n_tiers; t++) {
			if (have[t] && t != b->tier && valid_copy(s, t, &b->id))
				keep = t;
		}
	}
	if (keep == UINT32_MAX) {
		char text[MSGID_TEXT_LEN + 1];
		msgid_format(&b->id, text);
		out->missing++;
		log_warn("tier: rebuild: blob %s has no valid copy on any tier", text);
		return;
	}
	unsigned extra = 0;
	for (unsigned t = 0; t < s->n_tiers; t++)
		if (t != keep && have[t])
			extra |= 1u << t;
	if (keep == b->tier && extra == 0)
		return;
	if (f->n == f->cap) {
		f->cap = f->cap ? f->cap * 2 : 1024;
		f->v = xreallocarray(f->v, f->cap, sizeof(*f->v));
	}
	f->v[f->n++] = (struct fix){ b->blob_id, b->id, keep, b->tier, extra };
}

/* The index half of the fixes, then the files. */
static enum status apply_fixes(struct store *st, const struct settings *s, const struct fixes *f,
			       struct tier_rebuild_result *out, char **error_r)
{
	struct store_tier_placement *p = xreallocarray(NULL, f->n ? f->n : 1, sizeof(*p));
	size_t n = 0;
	for (size_t i = 0; i < f->n; i++) {
		const struct fix *x = &f->v[i];
		if (x->keep == x->from)
			continue;
		p[n++] = (struct store_tier_placement){ x->blob_id, x->keep };
		if (n <= REBUILD_LOG_EACH) {
			char text[MSGID_TEXT_LEN + 1];
			msgid_format(&x->id, text);
			log_info("tier: rebuild: blob %s is on tier %s (the index said %u)", text,
				 s->tiers[x->keep].name, x->from);
		}
	}
	enum status r = store_tier_set_many(st, p, n, error_r);
	free(p);
	if (r != ST_OK)
		return r;
	out->corrected = n;
	if (n > REBUILD_LOG_EACH)
		log_info("tier: rebuild: %zu more blob(s) were on another tier than the index said",
			 n - REBUILD_LOG_EACH);
	for (size_t i = 0; i < f->n; i++) {
		for (unsigned t = 0; t < s->n_tiers; t++) {
			if (f->v[i].extra & (1u << t)) {
				remove_copy(s, t, &f->v[i].id);
				out->removed++;
			}
		}
	}
	return ST_OK;
}

/* Step 1: tables usable; *heat_rows_r = the heat table is healthy and not empty. */
static enum status check_tables(struct store *st, bool *heat_rows_r, char **error_r)
{
	char *reason = NULL;
	enum status c = store_tier_check(st, &reason);
	enum status r = ST_OK;
	*heat_rows_r = false;
	if (c == ST_INVALID) {
		log_warn("tier: rebuild: %s: heat and move journal recreated", reason);
		r = store_tier_reset(st, true, error_r);
	} else {
		r = store_tier_init(st, error_r);
		if (r == ST_OK && c == ST_OK)
			r = store_tier_heat_any(st, heat_rows_r, error_r);
	}
	free(reason);
	return r;
}

static enum status place_all(struct store *st, const struct settings *s, struct tier_rebuild_result *out,
			     char **error_r)
{
	struct brows b = { NULL, 0, 0 };
	struct fixes f = { NULL, 0, 0 };
	enum status r = store_tier_blobs(st, collect, &b, error_r);
	for (size_t i = 0; r == ST_OK && i < b.n; i++)
		place_one(s, &b.v[i], &f, out);
	out->blobs = b.n;
	free(b.v);
	if (r == ST_OK)
		r = apply_fixes(st, s, &f, out, error_r);
	free(f.v);
	return r;
}

enum status tier_rebuild(struct store *st, const struct settings *s, struct tier_rebuild_result *out,
			 char **error_r)
{
	memset(out, 0, sizeof(*out));
	bool heat_rows = false;
	enum status r = check_tables(st, &heat_rows, error_r);
	if (r == ST_OK && heat_rows)
		r = tier_checkpoint_write(st, s, NULL, error_r);
	if (r == ST_OK)
		r = tier_recover(st, s, &out->journal_rows, error_r);
	if (r == ST_OK)
		r = place_all(st, s, out, error_r);
	if (r != ST_OK)
		return r;
	char *err = NULL;
	r = tier_checkpoint_load(st, s, &out->checkpoint, &err);
	if (r == ST_NOT_FOUND) {
		log_warn("tier: rebuild: %s: heat starts empty (placement by priors alone)", err);
		free(err);
		return store_tier_reset(st, false, error_r);
	}
	if (r != ST_OK) {
		if (error_r)
			*error_r = err;
		else
			free(err);
		return r;
	}
	out->from_checkpoint = true;
	log_info("tier: rebuild: %zu blob(s), %zu placement(s) corrected, %zu extra cop(ies) removed, %zu missing;"
		 " heat of %zu blob(s) from %s", out->blobs, out->corrected, out->removed, out->missing,
		 out->checkpoint.rows, out->checkpoint.path);
	return ST_OK;
}

bool tier_state_needs_rebuild(struct store *st, const struct settings *s, char **reason_r)
{
	*reason_r = NULL;
	enum status c = store_tier_check(st, reason_r);
	if (c == ST_INVALID)
		return true;
	/* Existence only: a scan of the blobs here would make start-up grow
	 * with the mail (about 0.3 s per million messages). */
	bool blobs = false;
	if (store_tier_any_blob(st, &blobs, NULL) != ST_OK)
		blobs = true; /* unreadable: let the checks below decide as if there were mail */
	if (c == ST_NOT_FOUND) {
		if (blobs || tier_checkpoint_has_rows(s))
			return true;
		free(*reason_r); /* a first start: neither mail nor a checkpoint */
		*reason_r = NULL;
		return false;
	}
	/* A healthy but empty heat table beside a checkpoint with rows: the
	 * table was lost and recreated empty (by a CLI command, say). */
	bool rows = false;
	if (store_tier_heat_any(st, &rows, NULL) == ST_OK && !rows && blobs &&
	    tier_checkpoint_has_rows(s)) {
		if (reason_r)
			*reason_r = xstrdup("the heat table is empty while a heat checkpoint has rows");
		return true;
	}
	free(*reason_r);
	*reason_r = NULL;
	return false;
}
