/*
 * imap_worker.c - one IMAP worker per network thread: its store handles,
 * accepting connections into sessions, the process-wide connection cap,
 * shutdown.
 *
 * Contract: see imap.h.  The worker owns a read-write store handle used
 * only for reads on its loop thread, and a pool of imap.store_threads store
 * threads (queue.h's store thread pool) for everything that writes or blocks.
 *
 * Connection cap: imap.max_connections counts the IMAP sessions of the
 * whole process in one atomic counter; a connection over the cap gets
 * "* BYE" with one non-blocking send() and is closed.
 *
 * IDLE push: the workers of the process are on one list (g_workers_mu).
 * imap_notify_changes, the store's change listener, runs on whichever
 * thread committed: it queues the changed mailbox ids on each worker under
 * the worker's notify_mu and activates the worker's notify_ev; notify_cb,
 * on the loop, drains the queue and syncs the IDLE sessions that have one
 * of those mailboxes selected.  Activations coalesce: a burst of commits
 * costs one pass over the worker's sessions.
 *
 * Threads: imap_worker_new/free on the owner thread while the loop is not
 * running; imap_notify_changes on any thread; everything else on the loop
 * thread.
 */
#include "imap_int.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static atomic_size_t g_connections;
static pthread_mutex_t g_workers_mu = PTHREAD_MUTEX_INITIALIZER;
static struct imap_worker *g_workers;

void imap_worker_release_slot(void)
{
	size_t prev = atomic_fetch_sub(&g_connections, 1);
	if (prev == 0)
		panic("imap: connection slot released twice");
}

static bool take_slot(uint64_t max)
{
	size_t cur = atomic_load(&g_connections);
	do {
		if (cur >= max)
			return false;
	} while (!atomic_compare_exchange_weak(&g_connections, &cur, cur + 1));
	return true;
}

/* ---- IDLE push ------------------------------------------------------------- */

static void notify_queue(struct imap_worker *w, const int64_t *ids, size_t n, bool all)
{
	pthread_mutex_lock(&w->notify_mu);
	for (size_t i = 0; i < n && !w->notify_all; i++) {
		size_t k = 0;
		while (k < w->notify_n && w->notify_ids[k] != ids[i])
			k++;
		if (k < w->notify_n)
			continue;
		if (w->notify_n == IMAP_NOTIFY_MAX)
			w->notify_all = true;
		else
			w->notify_ids[w->notify_n++] = ids[i];
	}
	if (all)
		w->notify_all = true;
	pthread_mutex_unlock(&w->notify_mu);
	event_active(w->notify_ev, EV_TIMEOUT, 0);
}

void imap_notify_changes(void *ctx, const int64_t *mailbox_ids, size_t n, bool all)
{
	(void)ctx;
	pthread_mutex_lock(&g_workers_mu);
	for (struct imap_worker *w = g_workers; w != NULL; w = w->next_worker)
		notify_queue(w, mailbox_ids, n, all);
	pthread_mutex_unlock(&g_workers_mu);
}

static bool notified(const int64_t *ids, size_t n, bool all, int64_t id)
{
	for (size_t i = 0; i < n && !all; i++) {
		if (ids[i] == id)
			return true;
	}
	return all;
}

static void notify_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct imap_worker *w = arg;
	int64_t ids[IMAP_NOTIFY_MAX];
	pthread_mutex_lock(&w->notify_mu);
	size_t n = w->notify_n;
	bool all = w->notify_all;
	memcpy(ids, w->notify_ids, n * sizeof(ids[0]));
	w->notify_n = 0;
	w->notify_all = false;
	pthread_mutex_unlock(&w->notify_mu);
	struct imap_session *s = w->sessions;
	while (s != NULL) {
		struct imap_session *next = s->next;   /* s may close and go */
		if (s->mode == IM_IDLE && s->state == IS_SELECTED && s->view != NULL &&
		    notified(ids, n, all, s->view->id))
			imap_session_idle_wake(s);
		s = next;
	}
}

static void workers_add(struct imap_worker *w)
{
	pthread_mutex_lock(&g_workers_mu);
	w->next_worker = g_workers;
	g_workers = w;
	pthread_mutex_unlock(&g_workers_mu);
}

static void workers_remove(struct imap_worker *w)
{
	pthread_mutex_lock(&g_workers_mu);
	for (struct imap_worker **p = &g_workers; *p != NULL; p = &(*p)->next_worker) {
		if (*p == w) {
			*p = w->next_worker;
			break;
		}
	}
	pthread_mutex_unlock(&g_workers_mu);
}

/* ---- the worker --------------------------------------------------------------- */

struct imap_worker *imap_worker_new(struct event_base *base, const struct settings *s, SSL_CTX *tls,
				    char **error_r)
{
	char *err = NULL;
	struct store *reader = store_open(s, false, &err);
	if (reader == NULL || store_imap_cache_limit(reader, IMAP_READER_CACHE_KIB, &err) != ST_OK) {
		*error_r = xasprintf("imap worker: cannot open the store: %s", err ? err : "unknown error");
		free(err);
		store_close(&reader);
		return NULL;
	}
	struct queue_pool *pool = queue_pool_new(s, (size_t)s->imap_store_threads, "imap", error_r);
	if (pool == NULL) {
		store_close(&reader);
		return NULL;
	}
	struct imap_worker *w = xcalloc(1, sizeof(*w));
	w->base = base;
	w->s = s;
	w->tls = tls;
	w->reader = reader;
	w->pool = pool;
	pthread_mutex_init(&w->notify_mu, NULL);
	w->notify_ev = event_new(base, -1, 0, notify_cb, w);
	if (w->notify_ev == NULL)
		panic("imap: event_new failed");
	workers_add(w);
	return w;
}

static void refuse(int fd, const char *line)
{
	ssize_t n = send(fd, line, strlen(line), MSG_DONTWAIT | MSG_NOSIGNAL);
	(void)n;   /* best effort */
	close(fd);
}

void imap_worker_accept(struct imap_worker *w, int fd, const struct sockaddr *peer, socklen_t peer_len,
			const struct sockaddr *local, socklen_t local_len, struct guard_ticket *ticket)
{
	(void)local;
	(void)local_len;
	if (w->shutting_down) {
		refuse(fd, "* BYE Server shutting down\r\n");
		guard_release(ticket);
		return;
	}
	if (!take_slot(w->s->imap_max_connections)) {
		refuse(fd, "* BYE [UNAVAILABLE] Too many connections, try again later\r\n");
		guard_release(ticket);
		return;
	}
	imap_session_start(w, fd, peer, peer_len, false, ticket);
}

void imap_worker_accept_tls(struct imap_worker *w, int fd, const struct sockaddr *peer, socklen_t peer_len,
			    const struct sockaddr *local, socklen_t local_len, struct guard_ticket *ticket)
{
	(void)local;
	(void)local_len;
	/* A plaintext BYE would be noise to the client's TLS stack: close. */
	if (w->tls == NULL || w->shutting_down || !take_slot(w->s->imap_max_connections)) {
		close(fd);
		guard_release(ticket);
		return;
	}
	imap_session_start(w, fd, peer, peer_len, true, ticket);
}

void imap_worker_set_settings(struct imap_worker *w, const struct settings *s)
{
	w->s = s;
}

void imap_worker_shutdown(struct imap_worker *w)
{
	w->shutting_down = true;
	struct imap_session *s = w->sessions;
	while (s != NULL) {
		struct imap_session *next = s->next;
		imap_session_shutdown(s);
		s = next;
	}
}

size_t imap_worker_sessions(const struct imap_worker *w)
{
	return w->n_sessions;
}

void imap_worker_free(struct imap_worker **wp)
{
	struct imap_worker *w = *wp;
	if (w == NULL)
		return;
	workers_remove(w);   /* no notify_queue on w after this */
	event_free(w->notify_ev);
	pthread_mutex_destroy(&w->notify_mu);
	while (w->sessions != NULL)
		imap_session_destroy(w->sessions);
	/* Jobs still queued finish on the pool; their completions were
	 * detached from sessions by imap_session_destroy. */
	queue_pool_free(&w->pool);
	store_close(&w->reader);
	free(w);
	*wp = NULL;
}
