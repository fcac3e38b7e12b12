/*
 * queue_pool.c - store threads for protocol sessions (IMAP, POP3): the
 * place where their index writes, fsyncs and password checks run, so that
 * no network event loop ever blocks on them.
 *
 * Contract (queue.h): each thread owns its own read-write store handle
 * (SQLite connections are per thread; WAL and BEGIN IMMEDIATE serialise the
 * writers across them and the delivery committer).  A job runs on whichever
 * thread takes it first, in submission order; its done callback is then
 * scheduled on the job's event_base with event_base_once, so it runs on the
 * loop thread that submitted it, exactly once.
 *
 * Shutdown: queue_pool_free lets the threads finish every queued job (their
 * completions are scheduled: the loops must run once more to deliver them),
 * then joins them and closes their store handles.
 */
#include "queue.h"

#include <event2/event.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct pool_thread {
	pthread_t tid;
	struct queue_pool *pool;
	struct store *st;
	bool started;
};

struct queue_pool {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct queue_job *head, *tail;
	bool stopping;
	size_t n;
	struct pool_thread *t;
	char name[16];               /* for messages: "imap", "pop3" */
};

static void pool_done_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct queue_job *j = arg;
	j->done(j);
}

static void *pool_main(void *arg)
{
	struct pool_thread *t = arg;
	struct queue_pool *p = t->pool;
	for (;;) {
		pthread_mutex_lock(&p->mu);
		while (p->head == NULL && !p->stopping)
			pthread_cond_wait(&p->cv, &p->mu);
		struct queue_job *j = p->head;
		if (j == NULL) {
			pthread_mutex_unlock(&p->mu);
			return NULL;
		}
		p->head = j->next;
		if (p->head == NULL)
			p->tail = NULL;
		pthread_mutex_unlock(&p->mu);
		j->run(j, t->st);
		if (event_base_once(j->base, -1, EV_TIMEOUT, pool_done_cb, j, NULL) != 0)
			panic("%s: event_base_once failed", p->name);
	}
}

struct queue_pool *queue_pool_new(const struct settings *s, size_t threads, const char *name,
				  char **error_r)
{
	struct queue_pool *p = xcalloc(1, sizeof(*p));
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	snprintf(p->name, sizeof(p->name), "%s", name);
	p->t = xcalloc(threads, sizeof(*p->t));
	p->n = threads;
	for (size_t i = 0; i < threads; i++) {
		char *err = NULL;
		p->t[i].pool = p;
		p->t[i].st = store_open(s, false, &err);
		if (p->t[i].st == NULL) {
			*error_r = xasprintf("%s: cannot open the store: %s", name, err ? err : "unknown error");
			free(err);
			queue_pool_free(&p);
			return NULL;
		}
		if (pthread_create(&p->t[i].tid, NULL, pool_main, &p->t[i]) != 0) {
			*error_r = xasprintf("%s: cannot start a store thread", name);
			queue_pool_free(&p);
			return NULL;
		}
		p->t[i].started = true;
	}
	return p;
}

void queue_pool_submit(struct queue_pool *p, struct queue_job *j)
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

void queue_pool_free(struct queue_pool **pp)
{
	struct queue_pool *p = *pp;
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
