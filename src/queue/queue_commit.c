/*
 * queue_commit.c - queue start/stop, the committer thread (group commit),
 * and delivery of the final status to the session.
 *
 * Owns: struct queue, the single committer thread, and the store handle
 * from queue_start to queue_stop (only the committer uses it).
 *
 * Group commit: writers append messages whose blob is at its final path to
 * the committer's list.  The committer sleeps on a condition variable; when
 * woken it takes everything listed, up to store.commit_batch, and for that
 * batch:
 *   1. fsyncs each DISTINCT blob directory once (blob ids sort by time, so
 *      concurrent messages share directories and thus fsyncs);
 *   2. writes every index row in ONE transaction (store_commit_deliveries,
 *      synchronous=FULL: the WAL is fsynced before it returns): blob rows,
 *      INBOX message rows, and the outbound rows of remote recipients;
 *   3. unlinks the blob of every delivery that failed (and fsyncs its
 *      directory, so a crash cannot resurrect a blob the sender was told
 *      was refused);
 *   4. schedules each message's done callback on its session's event loop.
 * Messages finishing while a batch commits form the next batch, so the cost
 * of the fsyncs is shared by everything that arrived meanwhile.
 *
 * Durability: a done callback reports ST_OK only after steps 1 and 2 (and
 * the writer's file fsync and rename) succeeded.  With store.fsync = no the
 * fsyncs are skipped: atomicity, consistency and isolation are kept, D is
 * given up.
 *
 * Shutdown: queue_stop refuses new submissions, waits for every open
 * message to be submitted or aborted and every submitted one to have its
 * done callback scheduled, then stops and joins the writers (which first
 * finish all queued work) and the committer.
 */
#include "queue_internal.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "metrics.h"

/* How often queue_stop logs while it waits for sessions. */
#define QUEUE_STOP_LOG_INTERVAL_S 5

const char *queue_strerror(int err)
{
	const char *s = strerrordesc_np(err);
	return s != NULL ? s : "unknown error";
}

bool queue_thread_start(pthread_t *t, void *(*fn)(void *), void *arg, const char *name,
			char **error_r)
{
	/* Signals belong to the main thread's event loop.  Synchronous signals
	 * stay unblocked so that a crash is still reported. */
	sigset_t set, old;
	sigfillset(&set);
	sigdelset(&set, SIGSEGV);
	sigdelset(&set, SIGBUS);
	sigdelset(&set, SIGFPE);
	sigdelset(&set, SIGILL);
	sigdelset(&set, SIGABRT);
	sigdelset(&set, SIGTRAP);
	pthread_sigmask(SIG_SETMASK, &set, &old);
	int rc = pthread_create(t, NULL, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		if (error_r != NULL)
			*error_r = xasprintf("cannot start %s thread: %s", name, queue_strerror(rc));
		return false;
	}
	pthread_setname_np(*t, name);
	return true;
}

/* ---- status delivery ---------------------------------------------------- */

void msg_schedule_on_base(struct queue_msg *m, event_callback_fn fn)
{
	if (event_base_once(m->base, -1, EV_TIMEOUT, fn, m, NULL) != 0)
		panic("%s: event_base_once failed", m->idtext);
}

static void commit_done_trampoline(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct queue_msg *m = arg;
	if (m->done != NULL)
		m->done(m->done_arg, m->status, m->idtext);
	msg_unref(m);
}

void msg_finish(struct queue_msg *m, enum status st)
{
	struct queue *q = m->q;
	bool counted = m->counted;
	m->status = st;
	if (counted)
		gauge_add(M_QUEUE_PENDING, -1);
	/* From here on m belongs to its event loop (and may be freed there).
	 * Only then may queue_stop see inflight drop: its caller may free the
	 * base as soon as queue_stop returns. */
	msg_schedule_on_base(m, commit_done_trampoline);
	if (!counted)
		return;
	pthread_mutex_lock(&q->mu);
	q->inflight--;
	pthread_cond_broadcast(&q->idle_cv);
	pthread_mutex_unlock(&q->mu);
}

/* ---- the committer ------------------------------------------------------ */

void commit_enqueue(struct queue *q, struct queue_msg *m)
{
	pthread_mutex_lock(&q->commit_mu);
	m->commit_next = NULL;
	if (q->commit_tail != NULL)
		q->commit_tail->commit_next = m;
	else
		q->commit_head = m;
	q->commit_tail = m;
	pthread_cond_signal(&q->commit_cv);
	pthread_mutex_unlock(&q->commit_mu);
}

static int commit_cmp_dir(const void *a, const void *b)
{
	const struct queue_msg *ma = *(const struct queue_msg *const *)a;
	const struct queue_msg *mb = *(const struct queue_msg *const *)b;
	return strcmp(ma->final_dir, mb->final_dir);
}

/* Step 1: one fsync per distinct directory of q->by_dir (sorted).  The
 * messages of a directory that cannot be synced fail. */
static void commit_sync_dirs(struct queue *q, size_t n)
{
	for (size_t i = 0; i < n;) {
		size_t j = i + 1;
		while (j < n && strcmp(q->by_dir[j]->final_dir, q->by_dir[i]->final_dir) == 0)
			j++;
		errno = 0;
		if (fs_fsync_dir(q->by_dir[i]->final_dir)) {
			metric_inc(M_STORE_FSYNCS);
		} else {
			int err = errno != 0 ? errno : EIO;
			enum status st = status_from_errno(err);
			log_warn("queue: fsync of %s failed: %s", q->by_dir[i]->final_dir,
				 queue_strerror(err));
			for (size_t k = i; k < j; k++)
				q->by_dir[k]->status = st;
		}
		i = j;
	}
}

/* Step 2: the index transaction for every message still ST_OK. */
static size_t commit_index(struct queue *q, size_t n)
{
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		struct queue_msg *m = q->batch[i];
		if (m->status != ST_OK)
			continue;
		m->uids = xreallocarray(m->uids, m->n_accounts, sizeof(*m->uids));
		m->deliv = (struct store_delivery){
			.id = m->id,
			.received = m->received,
			.size = m->size,
			.n_accounts = m->n_accounts,
			.account_ids = m->account_ids,
			.mime = m->mime.envelope != NULL ? &m->mime : NULL,
			.sender = m->sender,
			.n_remotes = m->n_remotes,
			.remotes = (const char (*)[320])m->remotes,
			.status = ST_OK,
			.uids = m->uids,
		};
		q->dp[k++] = &m->deliv;
	}
	if (k == 0)
		return 0;
	enum status ret = store_commit_deliveries(q->st, q->dp, k);
	if (ret != ST_OK)
		log_warn("queue: index commit of %zu deliveries failed: %s", k, status_info(ret)->name);
	/* Exactly the messages still ST_OK were passed, in batch order.  A failed
	 * transaction wrote nothing, whatever a delivery's own status says. */
	for (size_t i = 0; i < n; i++) {
		struct queue_msg *m = q->batch[i];
		if (m->status != ST_OK)
			continue;
		m->status = m->deliv.status != ST_OK ? m->deliv.status : ret;
		m->commit_uncertain = ret == ST_IO_ERROR;
	}
	return k;
}

/* Whether a failed delivery's blob may be removed.  An I/O error from the
 * index transaction is ambiguous: if it came from the WAL fsync at COMMIT,
 * the commit record may already be in the log and SQLite replays it at the
 * next open, so its rows would name the blob.  Such blobs are kept: at worst
 * an orphan (found by verify) and a duplicate when the client retries its
 * 4xx, never a row without its file. */
static bool commit_blob_is_unreferenced(const struct queue_msg *m)
{
	return m->status != ST_OK && !m->commit_uncertain;
}

/* Step 3: remove the blobs the index does not name. */
static void commit_remove_failed(struct queue *q, size_t n)
{
	for (size_t i = 0; i < n;) {
		size_t j = i + 1;
		while (j < n && strcmp(q->by_dir[j]->final_dir, q->by_dir[i]->final_dir) == 0)
			j++;
		bool removed = false;
		for (size_t k = i; k < j; k++) {
			struct queue_msg *m = q->by_dir[k];
			if (!commit_blob_is_unreferenced(m))
				continue;
			if (unlink(m->final_path) == 0)
				removed = true;
			else if (errno != ENOENT)
				log_error("%s: cannot remove unreferenced blob %s: %s", m->idtext,
					  m->final_path, queue_strerror(errno));
		}
		if (removed && q->s->store_fsync) {
			if (fs_fsync_dir(q->by_dir[i]->final_dir))
				metric_inc(M_STORE_FSYNCS);
			else
				log_warn("queue: fsync of %s after removal failed: %s",
					 q->by_dir[i]->final_dir, queue_strerror(errno));
		}
		i = j;
	}
}

/* Wakes the relay: new outbound rows are committed. */
static void commit_notify_outbound(struct queue *q)
{
	pthread_mutex_lock(&q->commit_mu);
	void (*fn)(void *) = q->outbound_cb;
	void *arg = q->outbound_arg;
	pthread_mutex_unlock(&q->commit_mu);
	if (fn != NULL)
		fn(arg);
}

void queue_set_outbound_cb(struct queue *q, void (*fn)(void *arg), void *arg)
{
	pthread_mutex_lock(&q->commit_mu);
	q->outbound_cb = fn;
	q->outbound_arg = arg;
	pthread_mutex_unlock(&q->commit_mu);
}

static void commit_batch(struct queue *q, size_t n)
{
	uint64_t t0 = time_mono_us();

	memcpy(q->by_dir, q->batch, n * sizeof(*q->batch));
	qsort(q->by_dir, n, sizeof(*q->by_dir), commit_cmp_dir);
	if (q->s->store_fsync)
		commit_sync_dirs(q, n);
	size_t k = commit_index(q, n);
	if (k > 0) {
		histogram_observe(M_H_COMMIT_BATCH_SIZE, (double)k);
		histogram_observe(M_H_COMMIT_DURATION, (double)(time_mono_us() - t0) / 1e6);
	}
	commit_remove_failed(q, n);

	bool outbound = false;
	for (size_t i = 0; i < n; i++) {
		struct queue_msg *m = q->batch[i];
		if (m->status == ST_OK && m->n_remotes > 0) {
			outbound = true;
			log_info("%s: stored size=%llu accounts=%zu remote=%zu", m->idtext,
				 (unsigned long long)m->size, m->n_accounts, m->n_remotes);
		} else if (m->status == ST_OK)
			log_info("%s: stored size=%llu accounts=%zu", m->idtext,
				 (unsigned long long)m->size, m->n_accounts);
		else
			log_warn("%s: not stored: %s", m->idtext, status_info(m->status)->name);
		msg_finish(m, m->status);
	}
	if (outbound)
		commit_notify_outbound(q);
}

static void *committer_main(void *arg)
{
	struct queue *q = arg;
	size_t max = (size_t)q->s->store_commit_batch;
	for (;;) {
		pthread_mutex_lock(&q->commit_mu);
		while (q->commit_head == NULL && !q->commit_stop)
			pthread_cond_wait(&q->commit_cv, &q->commit_mu);
		if (q->commit_head == NULL) {
			pthread_mutex_unlock(&q->commit_mu);
			break;
		}
		size_t n = 0;
		while (q->commit_head != NULL && n < max) {
			q->batch[n++] = q->commit_head;
			q->commit_head = q->commit_head->commit_next;
		}
		if (q->commit_head == NULL)
			q->commit_tail = NULL;
		pthread_mutex_unlock(&q->commit_mu);
		commit_batch(q, n);
	}
	return NULL;
}

/* ---- start / stop ------------------------------------------------------- */

static void queue_free(struct queue *q)
{
	pthread_mutex_destroy(&q->mu);
	pthread_cond_destroy(&q->idle_cv);
	pthread_mutex_destroy(&q->pool_mu);
	pthread_cond_destroy(&q->pool_cv);
	pthread_mutex_destroy(&q->commit_mu);
	pthread_cond_destroy(&q->commit_cv);
	free(q->batch);
	free(q->by_dir);
	free(q->dp);
	free(q->tmp_dir);
	free(q);
}

static void queue_threads_stop(struct queue *q)
{
	spool_pool_stop(q);
	if (q->committer_started) {
		pthread_mutex_lock(&q->commit_mu);
		q->commit_stop = true;
		pthread_cond_signal(&q->commit_cv);
		pthread_mutex_unlock(&q->commit_mu);
		pthread_join(q->committer, NULL);
		q->committer_started = false;
	}
}

struct queue *queue_start(const struct settings *s, struct store *st, char **error_r)
{
	struct queue *q = xcalloc(1, sizeof(*q));
	q->s = s;
	q->st = st;
	q->tmp_dir = xasprintf("%s/tmp", s->store_blob_dir);
	if (!fs_mkdir_p(q->tmp_dir, QUEUE_DIR_MODE)) {
		if (error_r != NULL)
			*error_r = xasprintf("%s: %s", q->tmp_dir, queue_strerror(errno));
		free(q->tmp_dir);
		free(q);
		return NULL;
	}

	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_mutex_init(&q->mu, NULL);
	pthread_cond_init(&q->idle_cv, &ca);
	pthread_condattr_destroy(&ca);
	pthread_mutex_init(&q->pool_mu, NULL);
	pthread_cond_init(&q->pool_cv, NULL);
	pthread_mutex_init(&q->commit_mu, NULL);
	pthread_cond_init(&q->commit_cv, NULL);

	size_t batch = s->store_commit_batch > 0 ? (size_t)s->store_commit_batch : 1;
	q->batch = xcalloc(batch, sizeof(*q->batch));
	q->by_dir = xcalloc(batch, sizeof(*q->by_dir));
	q->dp = xcalloc(batch, sizeof(*q->dp));

	if (!queue_thread_start(&q->committer, committer_main, q, "strata-commit", error_r))
		goto fail;
	q->committer_started = true;
	if (!spool_pool_start(q, error_r))
		goto fail;
	log_info("queue: started %zu blob writer(s), commit batch %zu%s", q->n_writers, batch,
		 s->store_fsync ? "" : " (store.fsync=no: not durable)");
	return q;
fail:
	queue_threads_stop(q);
	queue_free(q);
	return NULL;
}

void queue_stop(struct queue **qp)
{
	struct queue *q = *qp;
	if (q == NULL)
		return;
	*qp = NULL;

	pthread_mutex_lock(&q->mu);
	q->stopping = true;
	while (q->open_msgs > 0 || q->inflight > 0) {
		struct timespec deadline;
		clock_gettime(CLOCK_MONOTONIC, &deadline);
		deadline.tv_sec += QUEUE_STOP_LOG_INTERVAL_S;
		int rc = pthread_cond_timedwait(&q->idle_cv, &q->mu, &deadline);
		if (rc == ETIMEDOUT)
			log_info("queue: stopping, waiting for %zu open and %zu submitted message(s)",
				 q->open_msgs, q->inflight);
	}
	pthread_mutex_unlock(&q->mu);

	queue_threads_stop(q);
	queue_free(q);
	log_info("queue: stopped");
}
