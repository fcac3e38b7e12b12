/*
 * imap_pool.c - the store threads of one IMAP worker.
 *
 * Contract: see imap_int.h.  Each thread owns its own read-write store
 * handle (SQLite connections are per thread; WAL and BEGIN IMMEDIATE
 * serialise writers across them and the queue's committer).  A job runs
 * on whichever thread takes it first; its done callback is scheduled on
 * the job's event_base with event_base_once, so it runs on the loop thread
 * that submitted it.  Every blocking call (fsync, COMMIT, Argon2 password
 * verification) therefore happens here, never on a network thread.
 *
 * Shutdown: imap_pool_free lets the threads finish every queued job (their
 * completions are scheduled; the loop must run once more to deliver them),
 * then joins them.
 */
#include "imap_int.h"

#include <stdlib.h>
#include <string.h>

struct pool_thread {
	pthread_t tid;
	struct imap_pool *pool;
	struct store *st;
	bool started;
};

struct imap_pool {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct imap_job *head, *tail;
	bool stopping;
	size_t n;
	struct pool_thread *t;
};

static void done_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct imap_job *j = arg;
	j->done(j);
}

static void *pool_main(void *arg)
{
	struct pool_thread *t = arg;
	struct imap_pool *p = t->pool;
	for (;;) {
		pthread_mutex_lock(&p->mu);
		while (p->head == NULL && !p->stopping)
			pthread_cond_wait(&p->cv, &p->mu);
		struct imap_job *j = p->head;
		if (j == NULL) {
			pthread_mutex_unlock(&p->mu);
			return NULL;
		}
		p->head = j->next;
		if (p->head == NULL)
			p->tail = NULL;
		pthread_mutex_unlock(&p->mu);
		j->run(j, t->st);
		if (event_base_once(j->base, -1, EV_TIMEOUT, done_cb, j, NULL) != 0)
			panic("imap: event_base_once failed");
	}
}

struct imap_pool *imap_pool_new(const struct settings *s, size_t threads, char **error_r)
{
	struct imap_pool *p = xcalloc(1, sizeof(*p));
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	p->t = xcalloc(threads, sizeof(*p->t));
	p->n = threads;
	for (size_t i = 0; i < threads; i++) {
		char *err = NULL;
		p->t[i].pool = p;
		p->t[i].st = store_open(s, false, &err);
		if (p->t[i].st == NULL) {
			*error_r = xasprintf("imap: cannot open the store: %s", err ? err : "unknown error");
			free(err);
			imap_pool_free(&p);
			return NULL;
		}
		if (pthread_create(&p->t[i].tid, NULL, pool_main, &p->t[i]) != 0) {
			*error_r = xstrdup("imap: cannot start a store thread");
			imap_pool_free(&p);
			return NULL;
		}
		p->t[i].started = true;
	}
	return p;
}

void imap_pool_submit(struct imap_pool *p, struct imap_job *j)
{
	j->next = NULL;
	pthread_mutex_lock(&p->mu);
	if (p->tail)
		p->tail->next = j;
	else
		p->head = j;
	p->tail = j;
	pthread_cond_signal(&p->cv);
	pthread_mutex_unlock(&p->mu);
}

void imap_pool_free(struct imap_pool **pp)
{
	struct imap_pool *p = *pp;
	if (p == NULL)
		return;
	pthread_mutex_lock(&p->mu);
	p->stopping = true;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	for (size_t i = 0; i < p->n; i++) {
		if (p->t[i].started)
			pthread_join(p->t[i].tid, NULL);
		store_close(&p->t[i].st);
	}
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	free(p->t);
	free(p);
	*pp = NULL;
}
