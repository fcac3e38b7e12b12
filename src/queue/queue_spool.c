/*
 * queue_spool.c - the per-transaction spool and the blob writer pool.
 *
 * Owns: struct queue_msg from queue_msg_new until its blob is at its final
 * path (then queue_commit.c takes it), the writer threads, and crash
 * recovery of <blob_dir>/tmp.
 *
 * The session thread (never blocking on disk):
 *   queue_msg_append hashes the bytes (BLAKE2b-256, CPU only) and keeps them
 *   in memory.  Past QUEUE_SPILL_THRESHOLD the buffer is handed to the pool
 *   as a WRITE op, and every QUEUE_SPILL_CHUNK after that.  The buffer's
 *   memory moves with the op (no copy).  queue_msg_submit hands the rest as
 *   a FINALIZE op; queue_msg_abort of a spilled message queues an ABORT op.
 *
 * The writer pool (store.blob_writers threads):
 *   A message's ops form a FIFO under msg.mu; a message is in the pool's run
 *   queue at most once (msg.scheduled), so one writer at a time works on it
 *   and its bytes reach the file in order.  A writer runs ONE op, then puts
 *   the message back at the tail of the run queue if more ops are waiting,
 *   so a large upload cannot starve small messages.  Writers sleep on a
 *   condition variable: nothing busy-waits.
 *
 *   FINALIZE: open the temp file in <blob_dir>/tmp if the message never
 *   spilled, write the last bytes and the trailer (store_blob_trailer),
 *   fsync (store.fsync), close (checked), create the blob directory
 *   (fs_mkdir_p fsyncs new directories into their parents), rename(2) to
 *   store_blob_path, compute the blob's MIME structure for the IMAP cache
 *   (spool_compute_mime), and hand the message to the committer, which fsyncs
 *   the directory entry and writes the index rows.  Any failure removes the
 *   temp file and reports status_from_errno(errno): a 4xx, never a 250.
 *
 * Durability: nothing in <blob_dir>/tmp is ever named by the index, so
 * queue_recover may delete all of it at start-up.  A blob at its final path
 * is not yet visible to anyone until the committer's transaction names it.
 *
 * Back-pressure: msg.pending counts bytes queued but not yet written.  When
 * it exceeds QUEUE_PENDING_HIGH_WATER the message remembers it, and the
 * writer that brings it back under half the mark schedules the session's
 * drained callback on the session's event loop.
 */
#include "queue_internal.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "metrics.h"
#include "mime.h"

#define HASH_BYTES 32

/* ---- message lifetime ------------------------------------------------- */

static struct queue_msg *msg_alloc(void)
{
	void *p = NULL;
	if (posix_memalign(&p, 64, sizeof(struct queue_msg)) != 0)
		panic("out of memory allocating a queue message");
	memset(p, 0, sizeof(struct queue_msg));
	return p;
}

static void msg_free(struct queue_msg *m)
{
	while (m->ops_head != NULL) {
		struct spool_op *op = m->ops_head;
		m->ops_head = op->next;
		free(op->data);
		free(op);
	}
	if (m->fd >= 0)
		panic("queue message %s freed with its spool file open", m->idtext);
	buf_free(&m->mem);
	free(m->account_ids);
	free(m->addresses);
	free(m->remotes);
	free(m->tmp_path);
	free(m->final_path);
	free(m->final_dir);
	store_mime_free(&m->mime);
	free(m->uids);
	pthread_mutex_destroy(&m->mu);
	free(m);
}

void msg_unref(struct queue_msg *m)
{
	pthread_mutex_lock(&m->mu);
	if (m->refs == 0)
		panic("queue message %s: reference count underflow", m->idtext);
	bool last = --m->refs == 0;
	pthread_mutex_unlock(&m->mu);
	if (last)
		msg_free(m);
}

static void queue_open_msgs_dec(struct queue *q)
{
	pthread_mutex_lock(&q->mu);
	q->open_msgs--;
	pthread_cond_broadcast(&q->idle_cv);
	pthread_mutex_unlock(&q->mu);
}

/* ---- hand-off to the pool --------------------------------------------- */

static void pool_run(struct queue *q, struct queue_msg *m)
{
	pthread_mutex_lock(&q->pool_mu);
	m->run_next = NULL;
	if (q->run_tail != NULL)
		q->run_tail->run_next = m;
	else
		q->run_head = m;
	q->run_tail = m;
	pthread_cond_signal(&q->pool_cv);
	pthread_mutex_unlock(&q->pool_mu);
}

/* Queues an op for m (takes ownership of data) and makes sure a writer will
 * run it.  Called on the session thread. */
static void spool_push(struct queue_msg *m, enum spool_op_kind kind, char *data, size_t len)
{
	struct spool_op *op = xcalloc(1, sizeof(*op));
	op->kind = kind;
	op->data = data;
	op->len = len;

	pthread_mutex_lock(&m->mu);
	if (m->ops_tail != NULL)
		m->ops_tail->next = op;
	else
		m->ops_head = op;
	m->ops_tail = op;
	m->pending += len;
	if (kind == SPOOL_OP_WRITE && m->pending > QUEUE_PENDING_HIGH_WATER)
		m->over_hwm = true;
	bool wake = !m->scheduled;
	if (wake) {
		m->scheduled = true;
		m->refs++;
	}
	pthread_mutex_unlock(&m->mu);
	if (wake)
		pool_run(m->q, m);
}

static void spool_hand_off(struct queue_msg *m)
{
	size_t len = m->mem.len;
	char *data = buf_steal(&m->mem);
	m->spilled = true;
	spool_push(m, SPOOL_OP_WRITE, data, len);
}

/* ---- the session's API ------------------------------------------------- */

struct queue_msg *queue_msg_new(struct queue *q, struct event_base *base)
{
	struct queue_msg *m = msg_alloc();
	m->q = q;
	m->base = base;
	msgid_new(&m->id);
	msgid_format(&m->id, m->idtext);
	if (crypto_generichash_init(&m->hash, NULL, 0, HASH_BYTES) != 0)
		panic("crypto_generichash_init failed");
	pthread_mutex_init(&m->mu, NULL);
	m->refs = 1;
	m->owned = true;
	m->fd = -1;
	m->status = ST_OK;

	pthread_mutex_lock(&q->mu);
	q->open_msgs++;
	pthread_mutex_unlock(&q->mu);
	return m;
}

const char *queue_msg_id(const struct queue_msg *m)
{
	return m->idtext;
}

static void msg_mark_too_big(struct queue_msg *m)
{
	m->too_big = true;
	buf_free(&m->mem);
	pthread_mutex_lock(&m->mu);
	m->discard = true;
	pthread_mutex_unlock(&m->mu);
}

enum status queue_msg_append(struct queue_msg *m, const void *data, size_t len)
{
	if (m->too_big)
		return ST_TOO_BIG;
	uint64_t max = m->q->s->smtp_max_message_size;
	if (m->size > max || len > max - m->size) {
		msg_mark_too_big(m);
		return ST_TOO_BIG;
	}
	if (len == 0)
		return ST_OK;
	crypto_generichash_update(&m->hash, data, len);
	buf_append(&m->mem, data, len);
	m->size += len;
	if (m->mem.len >= (m->spilled ? QUEUE_SPILL_CHUNK : QUEUE_SPILL_THRESHOLD))
		spool_hand_off(m);
	return ST_OK;
}

uint64_t queue_msg_size(const struct queue_msg *m)
{
	return m->size;
}

size_t queue_msg_pending_bytes(const struct queue_msg *m)
{
	/* The mutex is logically mutable state, not part of the message. */
	struct queue_msg *mm = (struct queue_msg *)m;
	pthread_mutex_lock(&mm->mu);
	size_t n = mm->pending;
	pthread_mutex_unlock(&mm->mu);
	return n;
}

void queue_msg_set_drained_cb(struct queue_msg *m, void (*drained)(void *arg), void *arg)
{
	pthread_mutex_lock(&m->mu);
	m->drained = drained;
	m->drained_arg = arg;
	pthread_mutex_unlock(&m->mu);
}

void queue_msg_add_account(struct queue_msg *m, int64_t account_id, const char *address)
{
	for (size_t i = 0; i < m->n_accounts; i++) {
		if (m->account_ids[i] == account_id)
			return;
	}
	if (m->n_accounts == m->cap_accounts) {
		size_t cap = m->cap_accounts ? m->cap_accounts * 2 : 4;
		m->account_ids = xreallocarray(m->account_ids, cap, sizeof(*m->account_ids));
		m->addresses = xreallocarray(m->addresses, cap, sizeof(*m->addresses));
		m->cap_accounts = cap;
	}
	/* The trailer is printable ASCII (the store refuses anything else).
	 * Account addresses always are; anything else is made safe here rather
	 * than trusted to reach the writer thread. */
	char *out = m->addresses[m->n_accounts];
	size_t i = 0;
	for (; address[i] != '\0' && i < sizeof(m->addresses[0]) - 1; i++) {
		unsigned char c = (unsigned char)address[i];
		out[i] = c > 0x20 && c < 0x7f ? (char)c : '?';
	}
	out[i] = '\0';
	m->account_ids[m->n_accounts] = account_id;
	m->n_accounts++;
}

/* Envelope addresses of outbound mail are kept byte for byte (the relay
 * sends them as given); one that does not fit the fixed field is refused at
 * submit rather than cut (which would send the mail elsewhere). */
static bool queue_copy_address(char out[320], const char *address)
{
	size_t len = strlen(address);
	if (len >= 320)
		return false;
	memcpy(out, address, len + 1);
	return true;
}

void queue_msg_set_sender(struct queue_msg *m, const char *sender)
{
	if (!queue_copy_address(m->sender, sender != NULL ? sender : "")) {
		m->sender[0] = '\0';
		m->bad_remote = true;
	}
}

void queue_msg_add_remote(struct queue_msg *m, const char *address)
{
	if (address == NULL || address[0] == '\0') {
		m->bad_remote = true;
		return;
	}
	for (size_t i = 0; i < m->n_remotes; i++) {
		if (strcmp(m->remotes[i], address) == 0)
			return;
	}
	if (m->n_remotes == m->cap_remotes) {
		size_t cap = m->cap_remotes ? m->cap_remotes * 2 : 4;
		m->remotes = xreallocarray(m->remotes, cap, sizeof(*m->remotes));
		m->cap_remotes = cap;
	}
	if (!queue_copy_address(m->remotes[m->n_remotes], address)) {
		m->bad_remote = true;
		return;
	}
	m->n_remotes++;
}

void queue_msg_submit(struct queue_msg *m, queue_done_cb *done, void *arg)
{
	struct queue *q = m->q;
	uint8_t digest[HASH_BYTES];

	m->done = done;
	m->done_arg = arg;
	crypto_generichash_final(&m->hash, digest, sizeof(digest));
	sodium_bin2hex(m->hash_hex, sizeof(m->hash_hex), digest, sizeof(digest));
	m->received = (int64_t)time(NULL);

	pthread_mutex_lock(&q->mu);
	bool refused = q->stopping;
	if (!refused) {
		q->inflight++;
		m->counted = true;
	}
	pthread_mutex_unlock(&q->mu);

	pthread_mutex_lock(&m->mu);
	m->owned = false;
	pthread_mutex_unlock(&m->mu);

	if (refused) {
		buf_free(&m->mem);
		if (m->spilled) {
			pthread_mutex_lock(&m->mu);
			m->discard = true;
			pthread_mutex_unlock(&m->mu);
			spool_push(m, SPOOL_OP_ABORT, NULL, 0);
		}
		log_info("%s: not queued: shutting down", m->idtext);
		msg_finish(m, ST_SHUTDOWN);
	} else {
		gauge_add(M_QUEUE_PENDING, 1);
		size_t len = m->mem.len;
		char *data = len > 0 ? buf_steal(&m->mem) : NULL;
		buf_free(&m->mem);
		spool_push(m, SPOOL_OP_FINALIZE, data, len);
	}
	/* m may be gone already; q lives until open_msgs reaches 0. */
	queue_open_msgs_dec(q);
}

void queue_msg_abort(struct queue_msg **mp)
{
	struct queue_msg *m = *mp;
	if (m == NULL)
		return;
	*mp = NULL;
	struct queue *q = m->q;

	buf_free(&m->mem);
	pthread_mutex_lock(&m->mu);
	m->owned = false;
	m->discard = true;
	pthread_mutex_unlock(&m->mu);
	if (m->spilled)
		spool_push(m, SPOOL_OP_ABORT, NULL, 0);
	msg_unref(m);
	queue_open_msgs_dec(q);
}

/* ---- writer side -------------------------------------------------------- */

static void spool_fail(struct queue_msg *m, const char *step)
{
	int err = errno != 0 ? errno : EIO;
	if (m->io_err == 0)
		m->io_err = err;
	log_warn("%s: blob %s failed: %s", m->idtext, step, queue_strerror(err));
}

static bool spool_open(struct queue *q, struct queue_msg *m)
{
	char path[4096];
	errno = 0;
	int fd = fs_open_temp(q->tmp_dir, path, sizeof(path));
	if (fd < 0) {
		spool_fail(m, "temp file creation");
		return false;
	}
	m->fd = fd;
	m->tmp_path = xstrdup(path);
	return true;
}

/* Closes and removes whatever the message has on disk. */
static void spool_discard(struct queue_msg *m)
{
	if (m->fd >= 0) {
		close(m->fd);
		m->fd = -1;
	}
	if (m->tmp_path != NULL) {
		if (unlink(m->tmp_path) != 0 && errno != ENOENT)
			log_warn("%s: cannot remove %s: %s", m->idtext, m->tmp_path,
				 queue_strerror(errno));
		xfree(&m->tmp_path);
	}
}

static void spool_write(struct queue *q, struct queue_msg *m, const struct spool_op *op)
{
	if (m->io_err != 0)
		return;
	if (m->fd < 0 && !spool_open(q, m))
		return;
	errno = 0;
	if (!fs_write_all(m->fd, op->data, op->len))
		spool_fail(m, "write");
}

static bool spool_write_trailer(struct queue_msg *m, uint64_t *bytes_r)
{
	struct blob_meta meta = {
		.id = m->id,
		.received = m->received,
		.size = m->size,
		.n_rcpts = m->n_accounts,
		.rcpt_addresses = m->addresses,
		.n_remotes = m->n_remotes,
		.remote_addresses = m->remotes,
	};
	memcpy(meta.sender, m->sender, sizeof(meta.sender));
	memcpy(meta.hash_hex, m->hash_hex, sizeof(meta.hash_hex));
	struct buf t = BUF_INIT;
	store_blob_trailer(&meta, &t);
	errno = 0;
	bool ok = fs_write_all(m->fd, t.data, t.len);
	*bytes_r = m->size + t.len;
	buf_free(&t);
	if (!ok)
		spool_fail(m, "trailer write");
	return ok;
}

/* Every step up to the rename.  On failure m->io_err is set. */
static bool spool_complete(struct queue *q, struct queue_msg *m, const struct spool_op *op)
{
	const struct settings *s = q->s;
	char path[4096];
	uint64_t bytes = 0;

	if (m->io_err != 0)
		return false;
	if (m->fd < 0 && !spool_open(q, m))
		return false;
	errno = 0;
	if (op->len > 0 && !fs_write_all(m->fd, op->data, op->len)) {
		spool_fail(m, "write");
		return false;
	}
	if (!spool_write_trailer(m, &bytes))
		return false;
	if (s->store_fsync) {
		errno = 0;
		if (!fs_fsync(m->fd)) {
			spool_fail(m, "fsync");
			return false;
		}
		metric_inc(M_STORE_FSYNCS);
	}
	int fd = m->fd;
	m->fd = -1;
	errno = 0;
	if (!fs_close(fd)) {
		spool_fail(m, "close");
		return false;
	}
	store_blob_dir_of(s->store_blob_dir, &m->id, path, sizeof(path));
	m->final_dir = xstrdup(path);
	store_blob_path(s->store_blob_dir, &m->id, path, sizeof(path));
	m->final_path = xstrdup(path);
	errno = 0;
	if (!fs_mkdir_p(m->final_dir, QUEUE_DIR_MODE)) {
		spool_fail(m, "directory creation");
		return false;
	}
	int err = fs_fault_check(FS_OP_RENAME);
	if (err != 0 || rename(m->tmp_path, m->final_path) != 0) {
		if (err != 0)
			errno = err;
		spool_fail(m, "rename");
		return false;
	}
	xfree(&m->tmp_path);
	metric_inc(M_STORE_BLOBS_WRITTEN);
	metric_add(M_STORE_BLOB_BYTES_WRITTEN, bytes);
	return true;
}

/*
 * MIME hook: computes the blob's IMAP structure (ENVELOPE, BODYSTRUCTURE,
 * BODY, part map) here, on the writer thread, so that it is CPU work off
 * the network threads, done once, and committed with the blob row.  The
 * blob is at its final path and complete; the pages were just written, so
 * the parse reads the page cache.  A failure only loses the cache: IMAP
 * computes the row on first FETCH instead.
 */
static void spool_compute_mime(struct queue_msg *m)
{
	struct mime_summary sum;
	char *err = NULL;
	if (mime_parse_file(m->final_path, m->size, &sum, &err) != ST_OK) {
		log_warn("%s: MIME structure not cached: %s", m->idtext, err);
		free(err);
		return;
	}
	m->mime = (struct store_mime){ sum.envelope, sum.bodystructure, sum.body, sum.parts, sum.parts_len };
}

static void spool_finalize(struct queue *q, struct queue_msg *m, const struct spool_op *op)
{
	enum status st = ST_OK;
	if (m->too_big) {
		st = ST_TOO_BIG;
	} else if (m->bad_remote) {
		log_error("%s: an outbound envelope address is empty or too long", m->idtext);
		st = ST_INVALID;
	} else if (m->n_accounts == 0 && m->n_remotes == 0) {
		log_error("%s: submitted without recipients", m->idtext);
		st = ST_INVALID;
	} else if (!spool_complete(q, m, op)) {
		st = status_from_errno(m->io_err);
		if (st == ST_OK)
			st = ST_IO_ERROR;
	}
	if (st != ST_OK) {
		spool_discard(m);
		msg_finish(m, st);
		return;
	}
	spool_compute_mime(m);
	commit_enqueue(q, m);
}

/* On the session's loop: tells the session it may read again, unless it has
 * submitted or aborted the message meanwhile. */
static void spool_drained_trampoline(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct queue_msg *m = arg;
	pthread_mutex_lock(&m->mu);
	m->drained_scheduled = false;
	void (*cb)(void *) = m->owned ? m->drained : NULL;
	void *cb_arg = m->drained_arg;
	pthread_mutex_unlock(&m->mu);
	if (cb != NULL)
		cb(cb_arg);
	msg_unref(m);
}

/* Runs the first op of m; then requeues m, or drops the pool's reference. */
static void writer_run_one(struct queue *q, struct queue_msg *m)
{
	pthread_mutex_lock(&m->mu);
	struct spool_op *op = m->ops_head;
	if (op == NULL)
		panic("queue message %s scheduled without work", m->idtext);
	m->ops_head = op->next;
	if (m->ops_head == NULL)
		m->ops_tail = NULL;
	bool discard = m->discard;
	pthread_mutex_unlock(&m->mu);

	switch (op->kind) {
	case SPOOL_OP_WRITE:
		if (!discard)
			spool_write(q, m, op);
		break;
	case SPOOL_OP_FINALIZE:
		spool_finalize(q, m, op);
		break;
	case SPOOL_OP_ABORT:
		spool_discard(m);
		break;
	}

	bool drained = false, more, last = false;
	pthread_mutex_lock(&m->mu);
	m->pending -= op->len;
	if (m->over_hwm && m->pending < QUEUE_PENDING_HIGH_WATER / 2 && m->owned &&
	    m->drained != NULL && !m->drained_scheduled) {
		m->over_hwm = false;
		m->drained_scheduled = true;
		m->refs++;
		drained = true;
	}
	more = m->ops_head != NULL;
	if (!more) {
		m->scheduled = false;
		last = --m->refs == 0;
	}
	pthread_mutex_unlock(&m->mu);
	free(op->data);
	free(op);

	if (drained)
		msg_schedule_on_base(m, spool_drained_trampoline);
	if (more)
		pool_run(q, m);
	else if (last)
		msg_free(m);
}

static void *writer_main(void *arg)
{
	struct queue *q = arg;
	for (;;) {
		pthread_mutex_lock(&q->pool_mu);
		while (q->run_head == NULL && !q->pool_stop)
			pthread_cond_wait(&q->pool_cv, &q->pool_mu);
		struct queue_msg *m = q->run_head;
		if (m == NULL) {
			/* stopping, and nothing left to write */
			pthread_mutex_unlock(&q->pool_mu);
			break;
		}
		q->run_head = m->run_next;
		if (q->run_head == NULL)
			q->run_tail = NULL;
		pthread_mutex_unlock(&q->pool_mu);
		writer_run_one(q, m);
	}
	return NULL;
}

bool spool_pool_start(struct queue *q, char **error_r)
{
	size_t n = q->s->store_blob_writers > 0 ? (size_t)q->s->store_blob_writers : 1;
	q->writers = xcalloc(n, sizeof(*q->writers));
	for (size_t i = 0; i < n; i++) {
		if (!queue_thread_start(&q->writers[i], writer_main, q, "strata-writer", error_r))
			return false;
		q->n_writers++;
	}
	return true;
}

/* Writers finish every queued op before they exit. */
void spool_pool_stop(struct queue *q)
{
	pthread_mutex_lock(&q->pool_mu);
	q->pool_stop = true;
	pthread_cond_broadcast(&q->pool_cv);
	pthread_mutex_unlock(&q->pool_mu);
	for (size_t i = 0; i < q->n_writers; i++)
		pthread_join(q->writers[i], NULL);
	q->n_writers = 0;
	xfree(&q->writers);
}

/* ---- crash recovery ----------------------------------------------------- */

void queue_recover(const struct settings *s)
{
	char dir[4096];
	int n = snprintf(dir, sizeof(dir), "%s/tmp", s->store_blob_dir);
	if (n < 0 || (size_t)n >= sizeof(dir)) {
		log_error("queue: blob directory path too long: %s", s->store_blob_dir);
		return;
	}
	DIR *d = opendir(dir);
	if (d == NULL) {
		if (errno == ENOENT)
			log_info("queue: no spool directory %s yet, nothing to recover", dir);
		else
			log_warn("queue: cannot open %s: %s", dir, queue_strerror(errno));
		return;
	}
	size_t removed = 0, failed = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (unlinkat(dirfd(d), e->d_name, 0) == 0) {
			removed++;
		} else if (errno != ENOENT) {
			log_warn("queue: cannot remove stale %s/%s: %s", dir, e->d_name,
				 queue_strerror(errno));
			failed++;
		}
	}
	closedir(d);
	if (removed > 0 && s->store_fsync && !fs_fsync_dir(dir))
		log_warn("queue: cannot fsync %s: %s", dir, queue_strerror(errno));
	log_info("queue: removed %zu stale temp file(s) from %s%s", removed, dir,
		 failed > 0 ? " (some could not be removed)" : "");
}
