/*
 * pop3_worker.c - one POP3 worker per network thread: accepting
 * connections into sessions, the process-wide connection cap, shutdown,
 * the worker's store threads and the process-wide maildrop lock table.
 *
 * Contract: see pop3.h and pop3_int.h.
 *
 * Store threads: each owns its own read-write store handle (SQLite
 * connections are per thread; WAL and BEGIN IMMEDIATE serialise writers).
 * A job's done callback is scheduled on its event_base with
 * event_base_once, so it runs on the loop thread that submitted it; every
 * blocking call (Argon2, fsync, COMMIT) happens here, never on a loop.
 *
 * Connection cap: pop3.max_connections counts the POP3 sessions of the
 * whole process in one atomic counter; a connection over the cap gets
 * "-ERR [SYS/TEMP]" with one non-blocking send() and is closed.
 *
 * Lock table: a chained hash of account ids under one mutex.  Entries are
 * held only by logged-in sessions, so its size is bounded by the cap.
 *
 * Threads: pop3_worker_new/free on the owner thread while the loop is not
 * running; the lock table from any thread; everything else on the loop.
 */
#include "pop3_int.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- connection slots ------------------------------------------------------ */

static atomic_size_t g_connections;

void pop3_worker_release_slot(void)
{
	size_t prev = atomic_fetch_sub(&g_connections, 1);
	if (prev == 0)
		panic("pop3: connection slot released twice");
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

/* ---- maildrop locks ------------------------------------------------------- */

#define LOCK_BUCKETS 1024u
struct lock_entry {
	int64_t account_id;
	struct lock_entry *next;
};
static pthread_mutex_t g_lock_mu = PTHREAD_MUTEX_INITIALIZER;
static struct lock_entry *g_locks[LOCK_BUCKETS];

static size_t lock_bucket(int64_t id)
{
	uint64_t h = (uint64_t)id * 0x9E3779B97F4A7C15ull;
	return (size_t)(h >> 54) % LOCK_BUCKETS;
}

bool pop3_lock_take(int64_t account_id)
{
	size_t b = lock_bucket(account_id);
	pthread_mutex_lock(&g_lock_mu);
	for (struct lock_entry *e = g_locks[b]; e != NULL; e = e->next) {
		if (e->account_id == account_id) {
			pthread_mutex_unlock(&g_lock_mu);
			return false;
		}
	}
	struct lock_entry *e = xcalloc(1, sizeof(*e));
	e->account_id = account_id;
	e->next = g_locks[b];
	g_locks[b] = e;
	pthread_mutex_unlock(&g_lock_mu);
	return true;
}

void pop3_lock_release(int64_t account_id)
{
	size_t b = lock_bucket(account_id);
	pthread_mutex_lock(&g_lock_mu);
	for (struct lock_entry **pe = &g_locks[b]; *pe != NULL; pe = &(*pe)->next) {
		if ((*pe)->account_id == account_id) {
			struct lock_entry *e = *pe;
			*pe = e->next;
			pthread_mutex_unlock(&g_lock_mu);
			free(e);
			return;
		}
	}
	pthread_mutex_unlock(&g_lock_mu);
	panic("pop3: maildrop lock of account %lld released but not held", (long long)account_id);
}

/* ---- store jobs ---------------------------------------------------------------- */

static struct pop3_job *job_of(struct queue_job *qj)
{
	return (struct pop3_job *)(void *)((char *)qj - offsetof(struct pop3_job, qj));
}

static void job_run(struct queue_job *qj, struct store *st)
{
	struct pop3_job *j = job_of(qj);
	j->run(j, st);
}

static void job_done(struct queue_job *qj)
{
	struct pop3_job *j = job_of(qj);
	j->done(j);
}

void pop3_pool_submit(struct queue_pool *p, struct pop3_job *j)
{
	j->qj.run = job_run;
	j->qj.done = job_done;
	j->qj.base = j->base;
	queue_pool_submit(p, &j->qj);
}

/* ---- the worker --------------------------------------------------------------- */

struct pop3_worker *pop3_worker_new(struct event_base *base, const struct settings *s, SSL_CTX *tls,
				    char **error_r)
{
	struct queue_pool *pool = queue_pool_new(s, (size_t)s->pop3_store_threads, "pop3", error_r);
	if (pool == NULL)
		return NULL;
	struct pop3_worker *w = xcalloc(1, sizeof(*w));
	w->base = base;
	w->s = s;
	w->tls = tls;
	w->pool = pool;
	return w;
}

static void refuse(int fd, const char *line)
{
	ssize_t n = send(fd, line, strlen(line), MSG_DONTWAIT | MSG_NOSIGNAL);
	(void)n;   /* best effort */
	close(fd);
}

void pop3_worker_accept(struct pop3_worker *w, int fd, const struct sockaddr *peer, socklen_t peer_len,
			const struct sockaddr *local, socklen_t local_len, bool implicit_tls,
			struct guard_ticket *ticket)
{
	(void)local;
	(void)local_len;
	const char *refusal = NULL;
	if (implicit_tls && w->tls == NULL)
		refusal = "";   /* cannot happen: the server always has a TLS context */
	else if (w->shutting_down)
		refusal = "-ERR [SYS/TEMP] Server shutting down\r\n";
	else if (!take_slot(w->s->pop3_max_connections))
		refusal = "-ERR [SYS/TEMP] Too many connections, try again later\r\n";
	if (refusal == NULL) {
		pop3_session_start(w, fd, peer, peer_len, implicit_tls, ticket);
		return;
	}
	if (ticket != NULL)
		guard_release(ticket);
	/* On an implicit-TLS port a plaintext refusal would be noise to the
	 * client's TLS stack: just close. */
	if (implicit_tls || refusal[0] == '\0')
		close(fd);
	else
		refuse(fd, refusal);
}

void pop3_worker_set_settings(struct pop3_worker *w, const struct settings *s)
{
	w->s = s;
}

void pop3_worker_shutdown(struct pop3_worker *w)
{
	w->shutting_down = true;
	struct pop3_session *s = w->sessions;
	while (s != NULL) {
		struct pop3_session *next = s->next;
		pop3_session_shutdown(s);
		s = next;
	}
}

size_t pop3_worker_sessions(const struct pop3_worker *w)
{
	return w->n_sessions;
}

void pop3_worker_free(struct pop3_worker **wp)
{
	struct pop3_worker *w = *wp;
	if (w == NULL)
		return;
	while (w->sessions != NULL)
		pop3_session_destroy(w->sessions);
	queue_pool_free(&w->pool);
	free(w);
	*wp = NULL;
}
