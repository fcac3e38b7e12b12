/*
 * tier_move.c - moving one blob between tiers, crash-safely, and recovery.
 *
 * The sequence (tier_move_blob), and what a crash after each step leaves:
 *   1. journal row (blob, from, to, committed=0), durable
 *        -> recovery: index names `from`; any target copy is removed
 *   2. copy into <to>/tier-tmp/.tmp.*, fsync, checked close
 *   3. rename to <to>/<a>/<b>/<id>, fsync of both directories
 *        -> both copies exist; index names `from`: target removed
 *   4. one transaction: blobs.tier = to, journal committed = 1
 *        -> both exist; index names `to`: source removed
 *   5. unlink source, fsync its directory
 *   6. journal row deleted
 * The rule is always "the index's tier wins; the other copy is removed",
 * with one exception for a damaged tree: when the index's copy is missing
 * and the other is present with a valid trailer, the index is corrected to
 * the other tier instead.  The copy is verified (size, trailer, and for a
 * compressed copy a full decompression with its checksum) before the
 * rename, so a torn copy never becomes a blob.
 *
 * Compression: the copy is written as the target tier stores blobs
 * (tier.<name>.compress): compressed into a zstd tier, decompressed into a
 * plain one, copied as is between tiers of the same kind (a level change
 * applies to blobs moved in later).  See store_blob_repack.
 *
 * Budget: a token bucket over bytes and files; the caller sleeps.
 * Concurrency: under the mover lock (one mover per installation); readers
 * open through store_blob_open, which falls back to the other tiers when
 * the copy the index named was unlinked after they read the index.
 */
#include "tier.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "metrics.h"

/* ---- budget ---------------------------------------------------------------- */

void tier_budget_init(struct tier_budget *b, const struct settings *s)
{
	b->bytes_rate = (double)s->tier_move_bytes_per_s;
	b->files_rate = (double)s->tier_move_files_per_s;
	b->bytes = b->bytes_rate;   /* one second of burst */
	b->files = b->files_rate;
	b->last_us = time_mono_us();
	b->bytes_max = b->bytes_rate;
	b->files_max = b->files_rate;
}

uint64_t tier_budget_take(struct tier_budget *b, uint64_t bytes, uint64_t now_us)
{
	if (now_us > b->last_us) {
		double dt = (double)(now_us - b->last_us) / 1e6;
		b->bytes += dt * b->bytes_rate;
		b->files += dt * b->files_rate;
		if (b->bytes > b->bytes_rate)
			b->bytes = b->bytes_rate;
		if (b->files > b->files_rate)
			b->files = b->files_rate;
		b->last_us = now_us;
	}
	/* A file larger than one second of budget may go once the bucket is full. */
	double need_b = (double)bytes < b->bytes_rate ? (double)bytes : b->bytes_rate;
	double wait_b = b->bytes >= need_b ? 0 : (need_b - b->bytes) / b->bytes_rate;
	double wait_f = b->files >= 1 ? 0 : (1 - b->files) / b->files_rate;
	double wait = wait_b > wait_f ? wait_b : wait_f;
	if (wait > 0)
		return (uint64_t)(wait * 1e6) + 1;
	b->bytes -= (double)bytes;
	b->files -= 1;
	return 0;
}

/* ---- lock ------------------------------------------------------------------- */

int tier_lock(const struct settings *s, bool wait)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/tier.lock", s->tiers[0].path);
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return -1;
	while (flock(fd, LOCK_EX | (wait ? 0 : LOCK_NB)) != 0) {
		if (errno == EINTR)
			continue;
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

void tier_unlock(int *fd)
{
	if (*fd >= 0)
		close(*fd); /* releases the flock */
	*fd = -1;
}

/* ---- one move --------------------------------------------------------------- */

static void tmp_dir_of(const struct settings *s, unsigned tier, char *out, size_t len)
{
	snprintf(out, len, "%s/tier-tmp", s->tiers[tier].path);
}

static enum status fail_errno(const char *what, const char *path, char **error_r)
{
	int e = errno;
	if (error_r)
		*error_r = xasprintf("%s %s: %s", what, path, strerror(e));
	return status_from_errno(e);
}

/* Writes the blob open as `in` (trailer in *meta) into a new temp file in
 * dir, stored as the target tier says (compressed, decompressed or copied),
 * then fsyncs and closes it.  ST_OK with the temp path in tmp. */
static enum status copy_to_temp(int in, const struct blob_meta *meta, const struct tier_setting *to,
				const char *dir, char *tmp, size_t tmplen, uint64_t *bytes_r, char **error_r)
{
	int out = fs_open_temp(dir, tmp, tmplen);
	if (out < 0)
		return fail_errno("create temp file in", dir, error_r);
	enum status r = store_blob_repack(in, meta, out, to->compress, to->compress_level, bytes_r, error_r);
	if (r == ST_OK && !fs_fsync(out))
		r = fail_errno("fsync", tmp, error_r);
	if (r == ST_OK) {
		int fd = out;
		out = -1;
		if (!fs_close(fd))
			r = fail_errno("close", tmp, error_r);
	}
	if (out >= 0)
		close(out);
	if (r != ST_OK)
		unlink(tmp);
	return r;
}

/* The copy at `path` is a whole blob for id: a valid trailer naming id and
 * `size`, and (compressed) a frame that decompresses to exactly that size
 * with a good checksum, so a torn or corrupt copy never becomes the blob. */
static bool copy_valid(const char *path, const struct msgid *id, uint64_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return false;
	struct blob_meta meta;
	bool ok = store_blob_read_meta_fd(fd, &meta) == ST_OK;
	if (ok) {
		ok = memcmp(meta.id.b, id->b, MSGID_BYTES) == 0 && (size == UINT64_MAX || meta.size == size);
		if (ok && meta.compress != BLOB_COMPRESS_NONE)
			ok = store_blob_unpack(fd, &meta, -1, NULL) == ST_OK;
		store_blob_meta_free(&meta);
	}
	close(fd);
	return ok;
}

/* Steps 2-3: the target copy, durable under its final name. */
static enum status place_copy(const struct settings *s, const struct msgid *id, unsigned from, unsigned to,
			      uint64_t *bytes_r, char **error_r)
{
	char src[PATH_MAX], dst[PATH_MAX], dir[PATH_MAX], tmpdir[PATH_MAX], tmp[PATH_MAX];
	store_blob_path_for(s, from, id, src, sizeof(src));
	store_blob_path_for(s, to, id, dst, sizeof(dst));
	store_blob_dir_of(s->tiers[to].path, id, dir, sizeof(dir));
	tmp_dir_of(s, to, tmpdir, sizeof(tmpdir));
	if (!fs_mkdir_p(dir, 0750))
		return fail_errno("create", dir, error_r);
	if (!fs_mkdir_p(tmpdir, 0750))
		return fail_errno("create", tmpdir, error_r);
	int in = open(src, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (in < 0)
		return errno == ENOENT ? ST_NOT_FOUND : fail_errno("open", src, error_r);
	struct blob_meta meta;
	enum status r = store_blob_read_meta_fd(in, &meta);
	if (r != ST_OK || memcmp(meta.id.b, id->b, MSGID_BYTES) != 0) {
		close(in);
		if (r == ST_OK)
			store_blob_meta_free(&meta);
		if (error_r)
			*error_r = xasprintf("source %s has no valid trailer for this blob", src);
		return r == ST_OK || r == ST_INVALID ? ST_IO_ERROR : r;
	}
	r = copy_to_temp(in, &meta, &s->tiers[to], tmpdir, tmp, sizeof(tmp), bytes_r, error_r);
	uint64_t size = meta.size;
	store_blob_meta_free(&meta);
	close(in);
	if (r != ST_OK)
		return r;
	if (!copy_valid(tmp, id, size)) {
		unlink(tmp);
		if (error_r)
			*error_r = xasprintf("copy of %s has no valid trailer", src);
		return ST_IO_ERROR;
	}
	if (!fs_rename_durable(tmp, dst)) {
		enum status st = fail_errno("rename into", dst, error_r);
		unlink(tmp);
		return st;
	}
	return ST_OK;
}

/* Removes a blob copy and fsyncs its directory; a missing copy is fine. */
static bool remove_copy(const struct settings *s, unsigned tier, const struct msgid *id)
{
	char path[PATH_MAX], dir[PATH_MAX];
	store_blob_path_for(s, tier, id, path, sizeof(path));
	if (unlink(path) != 0)
		return errno == ENOENT;
	store_blob_dir_of(s->tiers[tier].path, id, dir, sizeof(dir));
	return fs_fsync_dir(dir);
}

enum status tier_move_blob(struct store *st, const struct settings *s, int64_t blob_id,
			   const struct msgid *id, unsigned from, unsigned to, uint64_t *bytes_r,
			   char **error_r)
{
	if (from >= s->n_tiers || to >= s->n_tiers || from == to) {
		if (error_r)
			*error_r = xasprintf("bad move of blob %lld from tier %u to %u", (long long)blob_id, from, to);
		return ST_INVALID;
	}
	*bytes_r = 0;
	enum status r = store_tier_move_begin(st, blob_id, id, from, to, error_r);
	if (r != ST_OK)
		return r;
	r = place_copy(s, id, from, to, bytes_r, error_r);
	if (r == ST_OK)
		r = store_tier_move_commit(st, blob_id, from, to, error_r);
	if (r != ST_OK) {
		/* Index still names `from` (or the blob is gone): undo the target. */
		char *e2 = NULL;
		if (remove_copy(s, to, id) && store_tier_move_end(st, blob_id, &e2) == ST_OK)
			return r;
		log_warn("tier: move of blob %lld left for recovery: %s", (long long)blob_id,
			 e2 ? e2 : strerror(errno));
		free(e2);
		return r;
	}
	if (!remove_copy(s, from, id)) {
		/* Committed: the move happened.  The source is removed by recovery. */
		log_warn("tier: blob %lld moved; old copy on tier %u left for recovery: %s",
			 (long long)blob_id, from, strerror(errno));
		return ST_OK;
	}
	char *e2 = NULL;
	if (store_tier_move_end(st, blob_id, &e2) != ST_OK) {
		log_warn("tier: journal row of blob %lld left for recovery: %s", (long long)blob_id, e2);
		free(e2);
	}
	metric_inc(M_TIER_MOVES);
	metric_add(M_TIER_MOVE_BYTES, *bytes_r);
	return ST_OK;
}

/* ---- recovery --------------------------------------------------------------- */

static bool copy_exists(const struct settings *s, unsigned tier, const struct msgid *id, char *path,
			size_t len)
{
	store_blob_path_for(s, tier, id, path, len);
	return access(path, F_OK) == 0;
}

/* Applies the rule to one journal row. */
static enum status recover_one(struct store *st, const struct settings *s, const struct store_tier_move *m,
			       char **error_r)
{
	if (m->from >= s->n_tiers || m->to >= s->n_tiers) {
		if (error_r)
			*error_r = xasprintf("journal row of blob %lld names a tier not configured (%u -> %u);"
					     " restore the tier configuration", (long long)m->blob_id, m->from, m->to);
		return ST_INVALID;
	}
	if (!m->blob_exists) {
		/* Deleted during the move: whichever copy survives is garbage. */
		if (!remove_copy(s, m->from, &m->id) || !remove_copy(s, m->to, &m->id))
			return fail_errno("remove copy of deleted blob", "", error_r);
		return store_tier_move_end(st, m->blob_id, error_r);
	}
	unsigned keep = m->index_tier, other = keep == m->from ? m->to : m->from;
	char kp[PATH_MAX], op[PATH_MAX];
	bool have_keep = keep < s->n_tiers && copy_exists(s, keep, &m->id, kp, sizeof(kp));
	bool have_other = copy_exists(s, other, &m->id, op, sizeof(op));
	if (!have_keep && have_other && copy_valid(op, &m->id, UINT64_MAX)) {
		enum status r = store_tier_set(st, m->blob_id, other, error_r);
		if (r != ST_OK)
			return r;
		log_warn("tier: blob %lld: index named tier %u but only tier %u has it; index corrected",
			 (long long)m->blob_id, keep, other);
	} else if (have_other && !remove_copy(s, other, &m->id)) {
		return fail_errno("remove", op, error_r);
	}
	return store_tier_move_end(st, m->blob_id, error_r);
}

/* Removes every file in <tier>/tier-tmp (only movers write there). */
static void clear_tmp(const struct settings *s, unsigned tier)
{
	char dir[PATH_MAX], path[PATH_MAX];
	tmp_dir_of(s, tier, dir, sizeof(dir));
	DIR *d = opendir(dir);
	if (d == NULL)
		return;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (strncmp(e->d_name, ".tmp.", 5) != 0)
			continue;
		if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) < sizeof(path))
			unlink(path);
	}
	closedir(d);
}

enum status tier_recover(struct store *st, const struct settings *s, size_t *fixed_r, char **error_r)
{
	struct store_tier_move *v = NULL;
	size_t n = 0;
	enum status r = store_tier_moves(st, &v, &n, error_r);
	if (r != ST_OK)
		return r;
	for (size_t i = 0; i < n && r == ST_OK; i++)
		r = recover_one(st, s, &v[i], error_r);
	free(v);
	if (r != ST_OK)
		return r;
	for (unsigned t = 0; t < s->n_tiers; t++)
		clear_tmp(s, t);
	if (fixed_r)
		*fixed_r = n;
	if (n > 0)
		log_info("tier: recovery settled %zu interrupted move(s)", n);
	return ST_OK;
}
