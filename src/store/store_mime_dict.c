/*
 * store_mime_dict.c - zstd dictionary compression of the cached MIME rows
 * (table mime_dicts, schema v8; docs/STORAGE.md "MIME cache").
 *
 * Owns: the compressed row format, the dictionaries' process-wide registry,
 * each handle's compression state, training and the re-pack of raw rows.
 *
 * Row format.  A mime row is either src/mime's packed form, whose first
 * byte is PACK_VERSION << 4 | flags (0x10..0x13), or a compressed row:
 *   0xD1 (STORE_MIME_DICT_MARK)
 *   the mime_dicts id of its dictionary, unsigned LEB128 (1..9 bytes)
 *   one zstd frame, ZSTD_f_zstd1_magicless, no checksum, no dictionary id,
 *   with its content size, holding the packed form.
 * A reader rejects before allocating a frame whose content size is
 * unknown, 0 or above STORE_MIME_ROW_MAX, and a frame that does not decode
 * to exactly that size; an id with no dictionary is damage too.  All of
 * these read as a damaged row, which store_mime_put recomputes from the
 * blob.  A row is compressed only when that makes it smaller.
 *
 * Dictionaries are trained on the index's own rows (never shipped): when
 * there is none and the mime table holds store.mime_dict_rows rows, then
 * each time it holds 10x the rows the newest was trained at (2k, 20k,
 * 200k...).  A training samples the newest MIME_DICT_SAMPLE rows (decoded
 * to the packed form), trains on nine in ten and keeps the dictionary only
 * if it saves MIME_DICT_GAIN_PCT on the tenth.  Rows of mime_dicts are
 * never changed or deleted: any row may name any of them.
 *
 * Re-pack: raw rows (written before the first dictionary, with
 * store.mime_dict=no, or by an older Strata) are rewritten with the newest
 * dictionary, REPACK_BATCH rows per call in one transaction, walking the
 * table by blob_id; the walk ends at the end of the table, and a new
 * dictionary starts a new one.  The walk's position lives in the handle
 * (a restart walks again, finding only the rows still raw).  It reads
 * through the partial index mime_raw (schema v9), which holds the raw rows
 * only: on a converged table a walk is one index probe, not a read of
 * every row.
 *
 * Registry.  ZSTD_DDict and ZSTD_CDict are read-only once made and may be
 * used by any number of threads; building one costs far more than a row,
 * so the process keeps one pair per distinct dictionary, found by its
 * bytes (never by id alone: an id names a dictionary only within one
 * index, and a rebuilt index starts again at 1).  The registry is a list
 * under a mutex, grows by one entry per dictionary the process meets and
 * lives until exit.  A handle maps ids to entries itself (loaded from the
 * table the first time a row names an id), and checks which dictionary is
 * newest when this process trained one (g_generation) or once a minute
 * (one trained by another process).
 *
 * Threads: the functions taking a handle run on that handle's thread
 * (struct store is one per thread); the compression and decompression
 * contexts are per handle.  store_mime_dict_maintain blocks (training is
 * ~0.1-0.3 s of CPU, a re-pack batch is one write transaction): the tier
 * mover thread calls it.
 *
 * Durability: a dictionary is committed before any row names it; the
 * re-pack replaces rows inside one transaction per batch.  A crash loses
 * at most a batch's progress, which the next start repeats.
 */
#include "store_internal.h"

#define ZSTD_STATIC_LINKING_ONLY /* ZSTD_f_zstd1_magicless, ZSTD_getFrameHeader_advanced */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zdict.h>
#include <zstd.h>

#define MIME_DICT_BYTES (16u * 1024u)  /* dictionary capacity */
#define MIME_DICT_LEVEL 3              /* see docs/STORAGE.md for the measurements */
#define MIME_DICT_SAMPLE 10000         /* rows a training reads */
#define MIME_DICT_SAMPLE_BYTES (32u * 1024u * 1024u)
#define MIME_DICT_MIN_SAMPLE_BYTES (8u * 1024u)
#define MIME_DICT_GAIN_PCT 10          /* held-out saving a new dictionary must give */
#define MIME_DICT_GROWTH 10            /* next training at GROWTH x the rows of the newest */
#define MIME_DICT_KNOWN 16             /* id -> dictionary entries a handle remembers */
#define MIME_DICT_RECHECK_MS 60000     /* how stale a handle's "newest" may get */
#define MIME_DICT_RECOUNT_MS 600000
#define REPACK_BATCH 2000              /* rows per re-pack transaction */
#define REPACK_BATCH_BYTES (8u * 1024u * 1024u)
#define VARINT_MAX 9

/* ---- the process-wide registry -------------------------------------------- */

struct dict_entry {
	struct dict_entry *next;
	uint8_t *bytes;
	size_t len;
	ZSTD_DDict *ddict;
	ZSTD_CDict *cdict;            /* made on first compression, under g_mu */
	bool cdict_failed;
};

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static struct dict_entry *g_dicts;
static atomic_uint_fast64_t g_generation; /* bumped by each training */

/* The entry of these dictionary bytes, made if new; NULL when zstd refuses
 * them (a damaged mime_dicts row). */
static struct dict_entry *registry_get(const void *bytes, size_t len)
{
	pthread_mutex_lock(&g_mu);
	struct dict_entry *e = g_dicts;
	while (e != NULL && !(e->len == len && memcmp(e->bytes, bytes, len) == 0))
		e = e->next;
	if (e == NULL) {
		ZSTD_DDict *dd = ZSTD_createDDict(bytes, len);
		if (dd != NULL) {
			e = xcalloc(1, sizeof(*e));
			e->bytes = xmalloc(len);
			memcpy(e->bytes, bytes, len);
			e->len = len;
			e->ddict = dd;
			e->next = g_dicts;
			g_dicts = e;
		}
	}
	pthread_mutex_unlock(&g_mu);
	return e;
}

static const ZSTD_CDict *entry_cdict(struct dict_entry *e)
{
	pthread_mutex_lock(&g_mu);
	if (e->cdict == NULL && !e->cdict_failed) {
		e->cdict = ZSTD_createCDict(e->bytes, e->len, MIME_DICT_LEVEL);
		e->cdict_failed = e->cdict == NULL;
	}
	const ZSTD_CDict *cd = e->cdict;
	pthread_mutex_unlock(&g_mu);
	return cd;
}

/* ---- per-handle state -------------------------------------------------------- */

struct known_dict {
	int64_t id;
	struct dict_entry *e;
};

struct store_mime_dict {
	ZSTD_CCtx *cctx;
	ZSTD_DCtx *dctx;
	struct known_dict known[MIME_DICT_KNOWN];
	size_t n_known, next_evict;
	/* The newest dictionary as last read from the table. */
	bool newest_valid;
	int64_t newest_id;            /* 0: none */
	int64_t newest_rows;
	struct dict_entry *newest;
	uint_fast64_t newest_gen;
	uint64_t newest_checked_ms;
	/* Maintenance (the one handle that calls store_mime_dict_maintain). */
	int64_t repack_cursor;        /* last blob_id the re-pack looked at */
	int64_t repack_dict;          /* dictionary id of the walk under way */
	int64_t repacked_for;         /* dictionary id the re-pack converged with */
	bool counted;                 /* count_* hold the last count(*) */
	int64_t count_rows, count_max_blob;
	uint64_t count_ms;
	int64_t retry_rows;           /* a training gave too little: not before this */
};

static struct store_mime_dict *state(struct store *st)
{
	if (st->mime_dict == NULL)
		st->mime_dict = xcalloc(1, sizeof(*st->mime_dict));
	return st->mime_dict;
}

void store_mime_dict_close(struct store *st)
{
	struct store_mime_dict *md = st->mime_dict;
	if (md == NULL)
		return;
	ZSTD_freeCCtx(md->cctx);
	ZSTD_freeDCtx(md->dctx);
	free(md);
	st->mime_dict = NULL;
}

/* The handle's compression context with the row format's frame
 * parameters; NULL if zstd cannot make one (out of memory). */
static ZSTD_CCtx *cctx_of(struct store_mime_dict *md)
{
	if (md->cctx != NULL)
		return md->cctx;
	ZSTD_CCtx *c = ZSTD_createCCtx();
	if (c == NULL)
		return NULL;
	if (ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_format, ZSTD_f_zstd1_magicless)) ||
	    ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 0)) ||
	    ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_dictIDFlag, 0)) ||
	    ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 1)))
		panic("store: zstd refuses the MIME row frame parameters");
	md->cctx = c;
	return c;
}

static ZSTD_DCtx *dctx_of(struct store_mime_dict *md)
{
	if (md->dctx != NULL)
		return md->dctx;
	ZSTD_DCtx *d = ZSTD_createDCtx();
	if (d == NULL)
		return NULL;
	if (ZSTD_isError(ZSTD_DCtx_setParameter(d, ZSTD_d_format, ZSTD_f_zstd1_magicless)))
		panic("store: zstd refuses the magicless frame format");
	md->dctx = d;
	return d;
}

/* ---- dictionaries of the table ---------------------------------------------- */

/* The entry of dictionary `id` of this index, loaded from the table the
 * first time; NULL when there is no such dictionary (or it is damaged). */
static struct dict_entry *dict_by_id(struct store *st, int64_t id)
{
	struct store_mime_dict *md = state(st);
	for (size_t i = 0; i < md->n_known; i++) {
		if (md->known[i].id == id)
			return md->known[i].e;
	}
	sqlite3_stmt *q;
	char *err = NULL;
	if (store_db_prepare(st, "SELECT dict FROM mime_dicts WHERE id = ?1", &q, &err) != ST_OK) {
		log_error("store: reading a MIME dictionary: %s", err);
		free(err);
		return NULL;
	}
	sqlite3_bind_int64(q, 1, id);
	struct dict_entry *e = NULL;
	int rc = sqlite3_step(q);
	if (rc == SQLITE_ROW) {
		const void *p = sqlite3_column_blob(q, 0);
		int n = sqlite3_column_bytes(q, 0);
		if (p != NULL && n > 0)
			e = registry_get(p, (size_t)n);
		if (e == NULL)
			log_error("store: MIME dictionary %lld is damaged", (long long)id);
	} else if (rc != SQLITE_DONE) {
		log_error("store: reading MIME dictionary %lld: %s", (long long)id, sqlite3_errmsg(st->db));
	}
	store_db_release(st, q);
	if (e == NULL)
		return NULL;
	size_t slot = md->n_known < MIME_DICT_KNOWN ? md->n_known++ : md->next_evict++ % MIME_DICT_KNOWN;
	md->known[slot] = (struct known_dict){ id, e };
	return e;
}

/* Reads which dictionary is the newest into md (kept as it was on an
 * error, which is logged). */
static void newest_refresh(struct store *st)
{
	struct store_mime_dict *md = state(st);
	sqlite3_stmt *q;
	char *err = NULL;
	if (store_db_prepare(st, "SELECT id, rows FROM mime_dicts ORDER BY id DESC LIMIT 1", &q, &err) != ST_OK) {
		log_error("store: reading the MIME dictionaries: %s", err);
		free(err);
		return;
	}
	uint_fast64_t gen = atomic_load(&g_generation);
	int rc = sqlite3_step(q);
	if (rc == SQLITE_ROW || rc == SQLITE_DONE) {
		md->newest_id = rc == SQLITE_ROW ? sqlite3_column_int64(q, 0) : 0;
		md->newest_rows = rc == SQLITE_ROW ? sqlite3_column_int64(q, 1) : 0;
		md->newest_valid = true;
		md->newest_gen = gen;
		md->newest_checked_ms = time_mono_ms();
	} else {
		log_error("store: reading the MIME dictionaries: %s", sqlite3_errmsg(st->db));
	}
	store_db_release(st, q);
	md->newest = md->newest_id > 0 ? dict_by_id(st, md->newest_id) : NULL;
}

/* The dictionary new rows are compressed with, or NULL. */
static struct dict_entry *newest_dict(struct store *st)
{
	struct store_mime_dict *md = state(st);
	if (!md->newest_valid || md->newest_gen != atomic_load(&g_generation) ||
	    time_mono_ms() - md->newest_checked_ms >= MIME_DICT_RECHECK_MS)
		newest_refresh(st);
	return md->newest;
}

/* ---- frames ------------------------------------------------------------------ */

static void varint_put(struct buf *b, uint64_t v)
{
	uint8_t tmp[10];
	size_t n = 0;
	do {
		tmp[n++] = (uint8_t)((v & 0x7f) | (v >= 0x80 ? 0x80 : 0));
		v >>= 7;
	} while (v != 0);
	buf_append(b, tmp, n);
}

/* Reads a LEB128 id of at most VARINT_MAX bytes; 0 bytes used on error. */
static size_t varint_get(const uint8_t *p, size_t len, uint64_t *v_r)
{
	uint64_t v = 0;
	for (size_t i = 0; i < len && i < VARINT_MAX; i++) {
		v |= (uint64_t)(p[i] & 0x7f) << (7 * i);
		if ((p[i] & 0x80) == 0) {
			*v_r = v;
			return i + 1;
		}
	}
	return 0;
}

/* Appends to out the compressed row of `raw` with dictionary `id`; false
 * when zstd fails. */
static bool row_compress(ZSTD_CCtx *c, const ZSTD_CDict *cd, int64_t id, const uint8_t *raw, size_t len,
			 struct buf *out)
{
	buf_append_char(out, (char)STORE_MIME_DICT_MARK);
	varint_put(out, (uint64_t)id);
	size_t bound = ZSTD_compressBound(len);
	buf_reserve(out, bound);
	ZSTD_CCtx_reset(c, ZSTD_reset_session_only);
	if (ZSTD_isError(ZSTD_CCtx_refCDict(c, cd)))
		return false;
	size_t n = ZSTD_compress2(c, out->data + out->len, bound, raw, len);
	if (ZSTD_isError(n))
		return false;
	out->len += n;
	return true;
}

/* Decodes one frame into out, bounded by STORE_MIME_ROW_MAX before any
 * allocation. */
static bool frame_decompress(ZSTD_DCtx *d, const ZSTD_DDict *dd, const uint8_t *src, size_t len,
			     struct buf *out)
{
	ZSTD_frameHeader h;
	if (ZSTD_getFrameHeader_advanced(&h, src, len, ZSTD_f_zstd1_magicless) != 0)
		return false;  /* an error, or a header longer than the row */
	if (h.frameType != ZSTD_frame || h.frameContentSize == ZSTD_CONTENTSIZE_UNKNOWN ||
	    h.frameContentSize == 0 || h.frameContentSize > STORE_MIME_ROW_MAX)
		return false;
	size_t want = (size_t)h.frameContentSize;
	buf_reset(out);
	buf_reserve(out, want);
	ZSTD_DCtx_reset(d, ZSTD_reset_session_only);
	if (ZSTD_isError(ZSTD_DCtx_refDDict(d, dd)))
		return false;
	size_t n = ZSTD_decompressDCtx(d, out->data, want, src, len);
	if (ZSTD_isError(n) || n != want)
		return false;
	out->len = n;
	return true;
}

void store_mime_dict_wrap(struct store *st, const uint8_t *raw, size_t len, struct buf *scratch,
			  const uint8_t **row_r, size_t *len_r)
{
	*row_r = raw;
	*len_r = len;
	if (!st->s->store_mime_dict || len == 0 || len > STORE_MIME_ROW_MAX)
		return;
	struct dict_entry *e = newest_dict(st);
	if (e == NULL)
		return;
	struct store_mime_dict *md = state(st);
	const ZSTD_CDict *cd = entry_cdict(e);
	ZSTD_CCtx *c = cctx_of(md);
	if (cd == NULL || c == NULL)
		return;
	buf_reset(scratch);
	if (!row_compress(c, cd, md->newest_id, raw, len, scratch) || scratch->len >= len)
		return;
	*row_r = (const uint8_t *)scratch->data;
	*len_r = scratch->len;
}

/* The dictionary id of a compressed row and the offset of its frame; 0
 * when the row does not start like one. */
static size_t row_header(const uint8_t *row, size_t len, int64_t *id_r)
{
	uint64_t id;
	if (len < 2 || row[0] != STORE_MIME_DICT_MARK)
		return 0;
	size_t n = varint_get(row + 1, len - 1, &id);
	if (n == 0 || id == 0 || id > (uint64_t)INT64_MAX)
		return 0;
	*id_r = (int64_t)id;
	return 1 + n;
}

bool store_mime_dict_unwrap(struct store *st, const uint8_t *row, size_t len, struct buf *out)
{
	int64_t id;
	size_t off = row_header(row, len, &id);
	if (off == 0)
		return false;
	struct dict_entry *e = dict_by_id(st, id);
	if (e == NULL)
		return false;
	ZSTD_DCtx *d = dctx_of(state(st));
	return d != NULL && frame_decompress(d, e->ddict, row + off, len - off, out);
}

bool store_mime_dict_encode(const void *dict, size_t dict_len, int64_t dict_id, const uint8_t *raw, size_t len,
			    struct buf *out)
{
	struct store_mime_dict md = { 0 };
	ZSTD_CDict *cd = ZSTD_createCDict(dict, dict_len, MIME_DICT_LEVEL);
	ZSTD_CCtx *c = cctx_of(&md);
	bool ok = cd != NULL && c != NULL && dict_id > 0 && len > 0 && len <= STORE_MIME_ROW_MAX &&
		  row_compress(c, cd, dict_id, raw, len, out);
	ZSTD_freeCDict(cd);
	ZSTD_freeCCtx(c);
	return ok;
}

bool store_mime_dict_decode(const void *dict, size_t dict_len, int64_t dict_id, const uint8_t *row, size_t len,
			    struct buf *out)
{
	int64_t id;
	size_t off = row_header(row, len, &id);
	if (off == 0 || id != dict_id)
		return false;
	struct store_mime_dict md = { 0 };
	ZSTD_DDict *dd = ZSTD_createDDict(dict, dict_len);
	ZSTD_DCtx *d = dctx_of(&md);
	bool ok = dd != NULL && d != NULL && frame_decompress(d, dd, row + off, len - off, out);
	ZSTD_freeDDict(dd);
	ZSTD_freeDCtx(d);
	return ok;
}

/* ---- training ------------------------------------------------------------------ */

/* Rows sampled for a training: nine in ten to train on, the tenth held out. */
struct sample {
	struct buf train, held;
	size_t *train_sizes, *held_sizes;
	size_t n_train, n_held;
};

static void sample_free(struct sample *sm)
{
	buf_free(&sm->train);
	buf_free(&sm->held);
	free(sm->train_sizes);
	free(sm->held_sizes);
}

static void sample_add(struct sample *sm, const uint8_t *raw, size_t len)
{
	bool held = (sm->n_train + sm->n_held) % 10 == 9;
	struct buf *b = held ? &sm->held : &sm->train;
	size_t **sizes = held ? &sm->held_sizes : &sm->train_sizes;
	size_t *n = held ? &sm->n_held : &sm->n_train;
	buf_append(b, raw, len);
	*sizes = xreallocarray(*sizes, *n + 1, sizeof(**sizes));
	(*sizes)[(*n)++] = len;
}

/* Reads the newest rows of the mime table, decoded to the packed form. */
static enum status sample_read(struct store *st, struct sample *sm, char **error_r)
{
	sqlite3_stmt *q;
	enum status s = store_db_prepare(st, "SELECT packed FROM mime ORDER BY blob_id DESC LIMIT ?1", &q, error_r);
	if (s != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, MIME_DICT_SAMPLE);
	struct buf dec = BUF_INIT;
	int rc;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW && sm->train.len + sm->held.len < MIME_DICT_SAMPLE_BYTES) {
		const uint8_t *p = sqlite3_column_blob(q, 0);
		int n = sqlite3_column_bytes(q, 0);
		if (p == NULL || n <= 0 || (size_t)n > STORE_MIME_ROW_MAX)
			continue;
		if (p[0] != STORE_MIME_DICT_MARK)
			sample_add(sm, p, (size_t)n);
		else if (store_mime_dict_unwrap(st, p, (size_t)n, &dec))
			sample_add(sm, (const uint8_t *)dec.data, dec.len);
	}
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		s = store_db_fail(st->db, rc, "sampling MIME rows", error_r);
	store_db_release(st, q);
	buf_free(&dec);
	return s;
}

/* Bytes the held-out rows take with dictionary `dict` (each row at most
 * its raw size, as the writer stores it); SIZE_MAX if zstd fails. */
static size_t held_cost(struct store *st, const struct sample *sm, const void *dict, size_t dict_len)
{
	ZSTD_CDict *cd = ZSTD_createCDict(dict, dict_len, MIME_DICT_LEVEL);
	ZSTD_CCtx *c = cctx_of(state(st));
	if (cd == NULL || c == NULL) {
		ZSTD_freeCDict(cd);
		return SIZE_MAX;
	}
	struct buf out = BUF_INIT;
	size_t total = 0, off = 0;
	for (size_t i = 0; i < sm->n_held; i++) {
		const uint8_t *raw = (const uint8_t *)sm->held.data + off;
		size_t len = sm->held_sizes[i];
		off += len;
		buf_reset(&out);
		if (!row_compress(c, cd, state(st)->newest_id + 1, raw, len, &out)) {
			total = SIZE_MAX;
			break;
		}
		total += out.len < len ? out.len : len;
	}
	buf_free(&out);
	ZSTD_CCtx_refCDict(c, NULL);
	ZSTD_freeCDict(cd);
	return total;
}

/* Inserts a trained dictionary (autocommit). */
static enum status dict_insert(struct store *st, const void *dict, size_t len, int64_t rows, char **error_r)
{
	sqlite3_stmt *q;
	enum status s = store_db_prepare(st, "INSERT INTO mime_dicts(dict, rows, created) VALUES(?1, ?2, ?3)",
					 &q, error_r);
	if (s != ST_OK)
		return s;
	sqlite3_bind_blob(q, 1, dict, (int)len, SQLITE_STATIC);
	sqlite3_bind_int64(q, 2, rows);
	sqlite3_bind_int64(q, 3, (sqlite3_int64)time(NULL));
	s = store_db_step_done(st, q, "storing a MIME dictionary", error_r);
	store_db_release(st, q);
	if (s == ST_OK)
		atomic_fetch_add(&g_generation, 1);
	return s;
}

/* Trains, evaluates and (if it saves enough) stores a dictionary; `rows`
 * is the mime table's row count, recorded with it. */
static enum status dict_train(struct store *st, int64_t rows, char **error_r)
{
	struct store_mime_dict *md = state(st);
	struct sample sm = { 0 };
	uint64_t t0 = time_mono_ms();
	enum status s = sample_read(st, &sm, error_r);
	if (s != ST_OK || sm.train.len < MIME_DICT_MIN_SAMPLE_BYTES || sm.n_held == 0) {
		if (s == ST_OK)
			log_info("store: %zu bytes of MIME rows are too few to train a dictionary", sm.train.len);
		md->retry_rows = rows * 2;
		sample_free(&sm);
		return s;
	}
	size_t cap = sm.train.len / 8 < MIME_DICT_BYTES ? sm.train.len / 8 : MIME_DICT_BYTES;
	uint8_t *dict = xmalloc(cap);
	size_t dlen = ZDICT_trainFromBuffer(dict, cap, sm.train.data, sm.train_sizes, (unsigned)sm.n_train);
	size_t raw = sm.held.len, cost = SIZE_MAX;
	if (ZDICT_isError(dlen))
		log_info("store: training a MIME dictionary on %zu rows failed: %s", sm.n_train,
			 ZDICT_getErrorName(dlen));
	else
		cost = held_cost(st, &sm, dict, dlen);
	uint64_t ms = time_mono_ms() - t0;
	if (cost != SIZE_MAX && cost * 100 <= raw * (100 - MIME_DICT_GAIN_PCT)) {
		s = dict_insert(st, dict, dlen, rows, error_r);
		if (s == ST_OK) {
			md->retry_rows = 0;
			md->counted = false;
			log_info("store: trained a %zu-byte MIME dictionary on %zu rows in %llu ms: held-out rows "
				 "%zu -> %zu bytes", dlen, sm.n_train, (unsigned long long)ms, raw, cost);
		}
	} else {
		if (cost != SIZE_MAX)
			log_info("store: a MIME dictionary trained on %zu rows saves too little (held-out rows "
				 "%zu -> %zu bytes): not kept", sm.n_train, raw, cost);
		md->retry_rows = rows * 2;
	}
	free(dict);
	sample_free(&sm);
	return s;
}

/* One int64 of a one-row query. */
static enum status query_int(struct store *st, const char *sql, int64_t *v_r, char **error_r)
{
	sqlite3_stmt *q;
	enum status s = store_db_prepare(st, sql, &q, error_r);
	if (s != ST_OK)
		return s;
	int rc = sqlite3_step(q);
	if (rc == SQLITE_ROW)
		*v_r = sqlite3_column_int64(q, 0);
	else
		s = store_db_fail(st->db, rc == SQLITE_DONE ? SQLITE_CORRUPT : rc, sql, error_r);
	store_db_release(st, q);
	return s;
}

/* Whether a training is due, and the row count (*rows_r) it would record.
 * count(*) reads the whole table, so it runs only once max(blob_id) (a
 * bound on the count: ids are unique and positive) says the threshold can
 * have been reached, and again only when enough new ids came for it to be
 * reached or every MIME_DICT_RECOUNT_MS. */
static enum status train_due(struct store *st, bool *due_r, int64_t *rows_r, char **error_r)
{
	struct store_mime_dict *md = state(st);
	*due_r = false;
	int64_t threshold = md->newest_id > 0 ? md->newest_rows * MIME_DICT_GROWTH
					      : (int64_t)st->s->store_mime_dict_rows;
	if (md->retry_rows > threshold)
		threshold = md->retry_rows;
	int64_t max_blob;
	enum status s = query_int(st, "SELECT coalesce(max(blob_id), 0) FROM mime", &max_blob, error_r);
	if (s != ST_OK || max_blob < threshold)
		return s;
	uint64_t now = time_mono_ms();
	if (md->counted && md->count_rows < threshold &&
	    max_blob - md->count_max_blob < threshold - md->count_rows && now - md->count_ms < MIME_DICT_RECOUNT_MS)
		return ST_OK;
	int64_t rows;
	s = query_int(st, "SELECT count(*) FROM mime", &rows, error_r);
	if (s != ST_OK)
		return s;
	md->counted = true;
	md->count_rows = rows;
	md->count_max_blob = max_blob;
	md->count_ms = now;
	*due_r = rows >= threshold;
	*rows_r = rows;
	return ST_OK;
}

/* ---- re-pack ---------------------------------------------------------------------- */

/* Raw rows of one batch, and what they compress to. */
struct repack_batch {
	int64_t *ids;
	size_t *lens, *zlens;         /* zlens[i] 0: row i does not compress */
	size_t n;
	struct buf rows, zrows;
	size_t scanned;
	int64_t last_id;
};

static void repack_batch_free(struct repack_batch *b)
{
	free(b->ids);
	free(b->lens);
	free(b->zlens);
	buf_free(&b->rows);
	buf_free(&b->zrows);
}

/* Reads the raw rows after blob_id `after` (a read, no transaction held
 * afterwards).  b->scanned is 0 when the walk reached the end. */
static enum status repack_collect(struct store *st, int64_t after, struct repack_batch *b, char **error_r)
{
	sqlite3_stmt *q;
	/* The WHERE term is mime_raw's (schema v9), so only raw rows are read. */
	enum status s = store_db_prepare(st, "SELECT blob_id, packed FROM mime WHERE blob_id > ?1"
					     " AND substr(packed, 1, 1) <> x'D1' ORDER BY blob_id LIMIT ?2",
					     &q, error_r);
	if (s != ST_OK)
		return s;
	sqlite3_bind_int64(q, 1, after);
	sqlite3_bind_int64(q, 2, REPACK_BATCH);
	b->ids = xreallocarray(NULL, REPACK_BATCH, sizeof(*b->ids));
	b->lens = xreallocarray(NULL, REPACK_BATCH, sizeof(*b->lens));
	b->zlens = xreallocarray(NULL, REPACK_BATCH, sizeof(*b->zlens));
	int rc = SQLITE_DONE;
	while (b->rows.len < REPACK_BATCH_BYTES && (rc = sqlite3_step(q)) == SQLITE_ROW) {
		b->scanned++;
		b->last_id = sqlite3_column_int64(q, 0);
		const uint8_t *p = sqlite3_column_blob(q, 1);
		int n = sqlite3_column_bytes(q, 1);
		if (p == NULL || n <= 0 || p[0] == STORE_MIME_DICT_MARK || (size_t)n > STORE_MIME_ROW_MAX)
			continue;
		b->ids[b->n] = b->last_id;
		b->lens[b->n++] = (size_t)n;
		buf_append(&b->rows, p, (size_t)n);
	}
	if (b->rows.len >= REPACK_BATCH_BYTES)
		rc = SQLITE_ROW;   /* stopped early: not the end of the table */
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		s = store_db_fail(st->db, rc, "reading MIME rows to re-pack", error_r);
	else if (rc == SQLITE_DONE && b->scanned < REPACK_BATCH)
		b->scanned = 0;    /* the end: tells the caller */
	store_db_release(st, q);
	return s;
}

/* Compresses the collected rows, before any transaction: the write lock
 * is then held for the SQLite work alone. */
static void repack_compress(struct store *st, struct repack_batch *b)
{
	struct buf scratch = BUF_INIT;
	size_t off = 0;
	for (size_t i = 0; i < b->n; i++) {
		const uint8_t *raw = (const uint8_t *)b->rows.data + off, *row;
		size_t len;
		off += b->lens[i];
		store_mime_dict_wrap(st, raw, b->lens[i], &scratch, &row, &len);
		b->zlens[i] = row == raw ? 0 : len;
		if (row != raw)
			buf_append(&b->zrows, row, len);
	}
	buf_free(&scratch);
}

/* Replaces the rows that compress, inside the open transaction, each only
 * if it is still the raw row that was read (a writer may have replaced or
 * removed it since).  DELETE then INSERT rather than UPDATE: SQLite
 * rewrites a shrunk cell in place and leaves the page as sparse as it
 * gets, while a delete merges a page with its neighbours once it is
 * two-thirds free, so the re-pack of an upgraded index gives its pages
 * back (to the freelist, reused by new rows) instead of leaving every leaf
 * a quarter full. */
static enum status repack_write(struct store *st, const struct repack_batch *b, size_t *done_r,
				char **error_r)
{
	sqlite3_stmt *qd, *qi = NULL;
	enum status s = store_db_prepare(st, "DELETE FROM mime WHERE blob_id = ?1 AND packed = ?2", &qd, error_r);
	if (s == ST_OK)
		s = store_db_prepare(st, "INSERT INTO mime(blob_id, packed) VALUES(?1, ?2)", &qi, error_r);
	size_t off = 0, zoff = 0;
	for (size_t i = 0; i < b->n && s == ST_OK; i++) {
		const char *raw = b->rows.data + off, *row = b->zrows.data + zoff;
		off += b->lens[i];
		zoff += b->zlens[i];
		if (b->zlens[i] == 0)
			continue;
		sqlite3_bind_int64(qd, 1, b->ids[i]);
		sqlite3_bind_blob(qd, 2, raw, (int)b->lens[i], SQLITE_STATIC);
		s = store_db_step_done(st, qd, "re-packing a MIME row", error_r);
		if (s != ST_OK || sqlite3_changes(st->db) == 0)
			continue;
		sqlite3_bind_int64(qi, 1, b->ids[i]);
		sqlite3_bind_blob(qi, 2, row, (int)b->zlens[i], SQLITE_STATIC);
		s = store_db_step_done(st, qi, "re-packing a MIME row", error_r);
		if (s == ST_OK)
			(*done_r)++;
	}
	store_db_release(st, qd);
	store_db_release(st, qi);
	return s;
}

/* One batch of the re-pack of raw rows with the newest dictionary. */
static enum status repack_step(struct store *st, char **error_r)
{
	struct store_mime_dict *md = state(st);
	if (md->newest == NULL || md->repacked_for == md->newest_id)
		return ST_OK;
	if (md->repack_dict != md->newest_id) {
		md->repack_dict = md->newest_id;   /* a new dictionary: a new walk */
		md->repack_cursor = 0;
	}
	struct repack_batch b = { 0 };
	size_t done = 0;
	enum status s = repack_collect(st, md->repack_cursor, &b, error_r);
	repack_compress(st, &b);
	bool any = b.zrows.len > 0;
	if (s == ST_OK && any)
		s = store_db_begin(st, error_r);
	if (s == ST_OK && any) {
		s = repack_write(st, &b, &done, error_r);
		if (s == ST_OK)
			s = store_db_commit(st, error_r);
		else
			store_db_rollback(st);
	}
	if (s == ST_OK) {
		if (b.scanned == 0) {
			md->repacked_for = md->newest_id;
			md->repack_cursor = 0;
			log_info("store: every raw MIME row that compresses is packed with dictionary %lld",
				 (long long)md->newest_id);
		} else {
			md->repack_cursor = b.last_id;
		}
		if (done > 0)
			log_debug("store: re-packed %zu MIME rows with dictionary %lld", done, (long long)md->newest_id);
	}
	repack_batch_free(&b);
	return s;
}

enum status store_mime_dict_maintain(struct store *st, char **error_r)
{
	if (!st->s->store_mime_dict)
		return ST_OK;
	newest_refresh(st);
	bool due;
	int64_t rows = 0;
	enum status s = train_due(st, &due, &rows, error_r);
	if (s == ST_OK && due) {
		s = dict_train(st, rows, error_r);
		newest_refresh(st);
	}
	if (s == ST_OK)
		s = repack_step(st, error_r);
	return s;
}
