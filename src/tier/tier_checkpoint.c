/*
 * tier_checkpoint.c - heat checkpoints: durable snapshots of the heat table
 * in a file kept away from the index, the source of `strata tier rebuild`.
 *
 * Where: <last tier>/tier-heat/ (the state directory's tier-heat/ with one
 * tier), so a disk that loses the index (in the state directory) does not
 * take the snapshot with it.  Files heat-<unix ms, 16 digits>.ckpt; the
 * newest TIER_CKPT_KEEP are kept.
 *
 * Format (docs/STORAGE.md, "Heat checkpoints"), little-endian:
 *   "STRATA-HEAT 1\n"                       14 bytes
 *   created                                 u64, unix seconds
 *   count x { msgid[16], score f64, updated i64, reads_days u32 }  36 bytes each
 *   count                                   u64
 *   crc                                     u32, CRC-32 (IEEE) of every byte before it
 * Keyed by msgid, not by blob rowid, so a checkpoint stays valid across an
 * index rebuild (which renumbers the rows).
 *
 * Durability: written as a temp file in the same directory, fsynced, closed
 * (checked), renamed into place, directory fsynced: a crash leaves the old
 * checkpoints and at most a .tmp.* file, which the next write removes.
 * Loading checks the length and the CRC over the whole file before it
 * touches the heat table, then replaces the table in one transaction; a
 * checkpoint that fails any check is skipped for the next older one.
 *
 * Memory: rows stream through a CKPT_BUF buffer both ways; nothing is
 * proportional to the number of rows.  Any thread with its own handle.
 */
#include "tier.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CKPT_MAGIC "STRATA-HEAT 1\n"
#define CKPT_MAGIC_LEN (sizeof(CKPT_MAGIC) - 1)
#define CKPT_HEAD (CKPT_MAGIC_LEN + 8)
#define CKPT_REC 36
#define CKPT_FOOT 12
#define CKPT_BUF (256u * 1024)
#define CKPT_NAME_DIGITS 16
#define CKPT_LIST_MAX 1024     /* files looked at in the directory */

/* ---- CRC-32 (IEEE 802.3, reflected) ------------------------------------------------- */

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
		crc_table[i] = c;
	}
}

uint32_t tier_crc32(uint32_t crc, const void *data, size_t len)
{
	pthread_once(&crc_once, crc_init);
	const uint8_t *p = data;
	crc = ~crc;
	for (size_t i = 0; i < len; i++)
		crc = crc_table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
	return ~crc;
}

/* ---- little-endian fields ------------------------------------------------------------ */

static void put_u64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static uint32_t get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void encode_row(uint8_t rec[CKPT_REC], const struct msgid *id, const struct store_heat *h)
{
	uint64_t bits;
	memcpy(rec, id->b, MSGID_BYTES);
	memcpy(&bits, &h->score, sizeof(bits));
	put_u64(rec + 16, bits);
	put_u64(rec + 24, (uint64_t)h->updated);
	put_u32(rec + 32, h->reads_days);
}

/* False for values no writer produces (a forged or damaged file). */
static bool decode_row(const uint8_t rec[CKPT_REC], struct msgid *id, struct store_heat *h)
{
	uint64_t bits = get_u64(rec + 16);
	memcpy(id->b, rec, MSGID_BYTES);
	memcpy(&h->score, &bits, sizeof(bits));
	h->blob_id = 0;
	h->updated = (int64_t)get_u64(rec + 24);
	h->reads_days = get_u32(rec + 32);
	return isfinite(h->score) && h->score >= 0 && h->score < 1e15 && h->updated >= 0;
}

/* ---- names ---------------------------------------------------------------------------- */

void tier_checkpoint_dir(const struct settings *s, char *out, size_t len)
{
	const char *base = s->n_tiers > 1 ? s->tiers[s->n_tiers - 1].path : s->state_dir;
	if ((size_t)snprintf(out, len, "%s/tier-heat", base) >= len)
		panic("tier_checkpoint_dir: buffer of %zu bytes too small", len);
}

static bool is_ckpt_name(const char *n)
{
	size_t len = strlen(n);
	if (len != 5 + CKPT_NAME_DIGITS + 5 || strncmp(n, "heat-", 5) != 0 || strcmp(n + len - 5, ".ckpt") != 0)
		return false;
	return strspn(n + 5, "0123456789") == CKPT_NAME_DIGITS;
}

static int cmp_name_desc(const void *a, const void *b)
{
	return strcmp(*(char *const *)b, *(char *const *)a);
}

/* The checkpoint file names in dir, newest first (caller frees each and the array). */
static size_t list_ckpts(const char *dir, char ***names_r)
{
	char **v = NULL;
	size_t n = 0;
	DIR *d = opendir(dir);
	if (d != NULL) {
		struct dirent *e;
		v = xcalloc(CKPT_LIST_MAX, sizeof(*v));
		while (n < CKPT_LIST_MAX && (e = readdir(d)) != NULL) {
			if (is_ckpt_name(e->d_name))
				v[n++] = xstrdup(e->d_name);
		}
		closedir(d);
		if (n > 0)
			qsort(v, n, sizeof(*v), cmp_name_desc);
	}
	*names_r = v;
	return n;
}

static void free_names(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

/* Removes checkpoints beyond the newest TIER_CKPT_KEEP and stale temp files. */
static void prune(const char *dir)
{
	char **v;
	size_t n = list_ckpts(dir, &v);
	char path[PATH_MAX];
	for (size_t i = TIER_CKPT_KEEP; i < n; i++) {
		if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, v[i]) < sizeof(path))
			unlink(path);
	}
	free_names(v, n);
	DIR *d = opendir(dir);
	if (d == NULL)
		return;
	struct dirent *e;
	time_t now = time(NULL);
	while ((e = readdir(d)) != NULL) {
		struct stat sb;
		if (strncmp(e->d_name, ".tmp.", 5) != 0 ||
		    (size_t)snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) >= sizeof(path))
			continue;
		/* Only old ones: a concurrent writer (the CLI beside the daemon) owns a young one. */
		if (lstat(path, &sb) == 0 && sb.st_mtime < now - 3600)
			unlink(path);
	}
	closedir(d);
}

/* ---- writing ---------------------------------------------------------------------------- */

struct writer {
	int fd;
	struct buf b;
	uint32_t crc;
	uint64_t count;
	int err;                     /* errno of the first failed write */
};

static void w_flush(struct writer *w)
{
	if (w->err == 0 && w->b.len > 0 && !fs_write_all(w->fd, w->b.data, w->b.len))
		w->err = errno ? errno : EIO;
	buf_reset(&w->b);
}

static void w_put(struct writer *w, const void *p, size_t n)
{
	w->crc = tier_crc32(w->crc, p, n);
	buf_append(&w->b, p, n);
	if (w->b.len >= CKPT_BUF)
		w_flush(w);
}

static bool w_row(void *ctx, const struct msgid *id, const struct store_heat *h)
{
	struct writer *w = ctx;
	uint8_t rec[CKPT_REC];
	encode_row(rec, id, h);
	w_put(w, rec, sizeof(rec));
	w->count++;
	return w->err == 0;
}

/* Header, rows, footer into w; false with *error_r. */
static enum status write_body(struct store *st, struct writer *w, int64_t created, char **error_r)
{
	uint8_t head[CKPT_HEAD];
	memcpy(head, CKPT_MAGIC, CKPT_MAGIC_LEN);
	put_u64(head + CKPT_MAGIC_LEN, (uint64_t)created);
	w_put(w, head, sizeof(head));
	enum status r = store_tier_heat_each(st, w_row, w, error_r);
	if (r != ST_OK)
		return r;
	uint8_t foot[CKPT_FOOT];
	put_u64(foot, w->count);
	w_put(w, foot, 8);
	put_u32(foot + 8, w->crc);
	buf_append(&w->b, foot + 8, 4);
	w_flush(w);
	if (w->err != 0) {
		if (error_r)
			*error_r = xasprintf("write heat checkpoint: %s", strerror(w->err));
		return status_from_errno(w->err);
	}
	return ST_OK;
}

enum status tier_checkpoint_write(struct store *st, const struct settings *s, struct tier_ckpt_info *out,
				  char **error_r)
{
	char dir[PATH_MAX], tmp[PATH_MAX], final[PATH_MAX];
	tier_checkpoint_dir(s, dir, sizeof(dir));
	if (!fs_mkdir_p(dir, 0750)) {
		if (error_r)
			*error_r = xasprintf("create %s: %s", dir, strerror(errno));
		return status_from_errno(errno);
	}
	struct writer w = { fs_open_temp(dir, tmp, sizeof(tmp)), BUF_INIT, 0, 0, 0 };
	if (w.fd < 0) {
		if (error_r)
			*error_r = xasprintf("create a temp file in %s: %s", dir, strerror(errno));
		return status_from_errno(errno);
	}
	int64_t created = (int64_t)time(NULL);
	enum status r = write_body(st, &w, created, error_r);
	buf_free(&w.b);
	if (r == ST_OK && w.count == 0 && tier_checkpoint_has_rows(s)) {
		/* An empty table while the newest snapshot has rows: the table was
		 * lost, not cooled down (heat rows only go with their blobs).  Keep
		 * the snapshot for the rebuild rather than prune it away. */
		close(w.fd);
		unlink(tmp);
		log_warn("tier: the heat table is empty but the newest checkpoint is not: checkpoint skipped"
			 " (run `strata tier rebuild`)");
		if (out)
			memset(out, 0, sizeof(*out));
		return ST_OK;
	}
	if (r == ST_OK && !fs_fsync(w.fd)) {
		r = status_from_errno(errno);
		if (error_r)
			*error_r = xasprintf("fsync %s: %s", tmp, strerror(errno));
	}
	if (r != ST_OK) {
		close(w.fd);
	} else if (!fs_close(w.fd)) {
		r = status_from_errno(errno);
		if (error_r)
			*error_r = xasprintf("close %s: %s", tmp, strerror(errno));
	}
	uint64_t ms = time_wall_ms();
	if (r == ST_OK && (size_t)snprintf(final, sizeof(final), "%.4000s/heat-%0*llu.ckpt", dir, CKPT_NAME_DIGITS,
					   (unsigned long long)ms) >= sizeof(final)) {
		r = ST_INVALID;
		if (error_r)
			*error_r = xasprintf("checkpoint path in %s too long", dir);
	} else if (r == ST_OK && !fs_rename_durable(tmp, final)) {
		r = status_from_errno(errno);
		if (error_r)
			*error_r = xasprintf("rename into %s: %s", final, strerror(errno));
	}
	if (r != ST_OK) {
		unlink(tmp);
		return r;
	}
	prune(dir);
	if (out) {
		snprintf(out->path, sizeof(out->path), "%s", final);
		out->rows = w.count;
		out->created = created;
	}
	return ST_OK;
}

/* ---- reading ---------------------------------------------------------------------------- */

static bool read_exact(int fd, void *buf, size_t len, off_t off)
{
	uint8_t *p = buf;
	while (len > 0) {
		ssize_t n = pread(fd, p, len, off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return false;
		p += n;
		len -= (size_t)n;
		off += n;
	}
	return true;
}

/* Length, magic and CRC of the whole file; *count_r and *created_r. */
static bool ckpt_valid(int fd, uint64_t *count_r, int64_t *created_r, const char **why)
{
	struct stat sb;
	uint8_t head[CKPT_HEAD], foot[CKPT_FOOT];
	*why = "not a regular file of checkpoint size";
	if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size < (off_t)(CKPT_HEAD + CKPT_FOOT))
		return false;
	uint64_t size = (uint64_t)sb.st_size;
	*why = "truncated or unreadable";
	if (!read_exact(fd, head, sizeof(head), 0) || !read_exact(fd, foot, sizeof(foot), (off_t)(size - CKPT_FOOT)))
		return false;
	*why = "bad magic";
	if (memcmp(head, CKPT_MAGIC, CKPT_MAGIC_LEN) != 0)
		return false;
	uint64_t count = get_u64(foot);
	*why = "length does not match its row count";
	if (count > (size - CKPT_HEAD - CKPT_FOOT) / CKPT_REC || CKPT_HEAD + count * CKPT_REC + CKPT_FOOT != size)
		return false;
	uint8_t *buf = xmalloc(CKPT_BUF);
	uint32_t crc = 0;
	bool ok = true;
	for (uint64_t off = 0, end = size - 4; ok && off < end;) {
		size_t want = end - off < CKPT_BUF ? (size_t)(end - off) : CKPT_BUF;
		ok = read_exact(fd, buf, want, (off_t)off);
		crc = tier_crc32(crc, buf, want);
		off += want;
	}
	free(buf);
	*why = ok ? "checksum mismatch" : "unreadable";
	if (!ok || crc != get_u32(foot + 8))
		return false;
	*count_r = count;
	*created_r = (int64_t)get_u64(head + CKPT_MAGIC_LEN);
	return true;
}

struct reader {
	int fd;
	uint64_t count, next;        /* rows in the file, next row to return */
	uint8_t *buf;
	size_t have, pos;            /* bytes in buf, next byte */
	bool bad;                    /* a row failed decode_row */
};

static int r_next(void *ctx, struct msgid *id, struct store_heat *h)
{
	struct reader *r = ctx;
	if (r->next == r->count)
		return 0;
	if (r->pos == r->have) {
		uint64_t left = (r->count - r->next) * CKPT_REC;
		size_t want = left < (CKPT_BUF / CKPT_REC) * CKPT_REC ? (size_t)left : (CKPT_BUF / CKPT_REC) * CKPT_REC;
		if (!read_exact(r->fd, r->buf, want, (off_t)(CKPT_HEAD + r->next * CKPT_REC)))
			return -1;
		r->have = want;
		r->pos = 0;
	}
	if (!decode_row(r->buf + r->pos, id, h)) {
		r->bad = true;
		return -1;
	}
	r->pos += CKPT_REC;
	r->next++;
	return 1;
}

/* Validates and applies one file; false (logged) when it is not usable. */
static bool load_one(struct store *st, const char *path, struct tier_ckpt_info *out, enum status *fatal_r,
		     char **error_r)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
	if (fd < 0) {
		log_warn("tier: heat checkpoint %s: %s; trying an older one", path, strerror(errno));
		return false;
	}
	const char *why = NULL;
	struct reader r = { fd, 0, 0, NULL, 0, 0, false };
	int64_t created = 0;
	if (!ckpt_valid(fd, &r.count, &created, &why)) {
		log_warn("tier: heat checkpoint %s: %s; trying an older one", path, why);
		close(fd);
		return false;
	}
	r.buf = xmalloc(CKPT_BUF);
	size_t applied = 0;
	char *err = NULL;
	enum status s = store_tier_heat_replace(st, r_next, &r, &applied, &err);
	free(r.buf);
	close(fd);
	if (s == ST_IO_ERROR && r.next < r.count) {
		log_warn("tier: heat checkpoint %s: %s; trying an older one", path,
			 r.bad ? "a row with impossible values" : "read failed");
		free(err);
		return false;
	}
	if (s != ST_OK) {
		*fatal_r = s;       /* the index, not the file: stop */
		if (error_r)
			*error_r = err;
		else
			free(err);
		return false;
	}
	snprintf(out->path, sizeof(out->path), "%s", path);
	out->rows = applied;
	out->created = created;
	return true;
}

enum status tier_checkpoint_load(struct store *st, const struct settings *s, struct tier_ckpt_info *out,
				 char **error_r)
{
	char dir[PATH_MAX], path[PATH_MAX];
	tier_checkpoint_dir(s, dir, sizeof(dir));
	memset(out, 0, sizeof(*out));
	char **v;
	size_t n = list_ckpts(dir, &v);
	enum status fatal = ST_OK;
	bool loaded = false;
	for (size_t i = 0; i < n && !loaded && fatal == ST_OK; i++) {
		if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, v[i]) >= sizeof(path))
			continue;
		loaded = load_one(st, path, out, &fatal, error_r);
	}
	free_names(v, n);
	if (fatal != ST_OK)
		return fatal;
	if (!loaded) {
		if (error_r)
			*error_r = xasprintf("no valid heat checkpoint in %s", dir);
		return ST_NOT_FOUND;
	}
	return ST_OK;
}

bool tier_checkpoint_has_rows(const struct settings *s)
{
	char dir[PATH_MAX], path[PATH_MAX];
	tier_checkpoint_dir(s, dir, sizeof(dir));
	char **v;
	size_t n = list_ckpts(dir, &v);
	bool rows = false;
	struct stat sb;
	if (n > 0 && (size_t)snprintf(path, sizeof(path), "%s/%s", dir, v[0]) < sizeof(path) &&
	    stat(path, &sb) == 0)
		rows = sb.st_size > (off_t)(CKPT_HEAD + CKPT_FOOT);
	free_names(v, n);
	return rows;
}
