/*
 * smtp_worker.c - one SMTP worker per network thread: accepts connections
 * into sessions, enforces the process-wide connection cap, shuts down.
 *
 * Contract: see smtp.h.  The worker owns its store_reader (one read-only
 * SQLite connection for recipient lookups, used only on this thread), a
 * queue_pool of submission.store_threads store threads for the password
 * checks of submission AUTH (smtp_auth.c; only when submission(s).listen
 * is set), and the list of its sessions.
 * SUBMISSIONS connections start with a TLS handshake; without a TLS
 * context, or over the cap, they are closed without a word.
 *
 * Connection caps: smtp.max_connections counts every open MX session of
 * the process, across all network threads, in one atomic counter, and
 * submission.max_connections the submission sessions (587 and 465) in
 * another, so a flood on port 25 never takes the users' slots.  A slot
 * is taken before a session exists and released when it is freed; a
 * connection over the cap gets "421 4.7.0" with one non-blocking send()
 * (465: a plain close) and is closed without ever becoming a session.
 *
 * Threads: smtp_worker_new/free on the owner thread while the loop is not
 * running; everything else on the loop thread.  Only the two connection
 * counters are shared between threads.
 */
#include "smtp_session.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "metrics.h"

static atomic_size_t g_connections;      /* MX */
static atomic_size_t g_sub_connections;  /* SUBMISSION and SUBMISSIONS */

static atomic_size_t *slots_of(enum smtp_service service)
{
	return service == SMTP_SERVICE_MX ? &g_connections : &g_sub_connections;
}

void smtp_worker_release_slot(enum smtp_service service)
{
	size_t prev = atomic_fetch_sub(slots_of(service), 1);
	if (prev == 0)
		panic("smtp: connection slot released twice");
}

/* Takes a slot of the service's cap unless it is reached. */
static bool take_slot(const struct settings *s, enum smtp_service service)
{
	atomic_size_t *slots = slots_of(service);
	uint64_t max = service == SMTP_SERVICE_MX ? s->smtp_max_connections : s->submission_max_connections;
	size_t cur = atomic_load(slots);
	do {
		if (cur >= max)
			return false;
	} while (!atomic_compare_exchange_weak(slots, &cur, cur + 1));
	return true;
}

/* Every smtp.min_rate_window: slow clients and over-long sessions. */
static void sweep_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct smtp_worker *w = arg;
	uint64_t now = time_mono_ms();
	/* session_sweep may free s: take the next one first.  Bounded by the
	 * number of sessions; none is added during the sweep. */
	struct smtp_session *s = w->sessions;
	while (s != NULL) {
		struct smtp_session *next = s->next;
		session_sweep(s, now);
		s = next;
	}
}

static void sweep_schedule(struct smtp_worker *w)
{
	if (w->sweep_ms == w->s->smtp_min_rate_window_ms && evtimer_pending(w->sweep_ev, NULL))
		return;
	w->sweep_ms = w->s->smtp_min_rate_window_ms;
	struct timeval tv = { (time_t)(w->sweep_ms / 1000), (suseconds_t)((w->sweep_ms % 1000) * 1000) };
	evtimer_add(w->sweep_ev, &tv);
}

struct smtp_worker *smtp_worker_new(struct event_base *base, const struct settings *s,
				    struct queue *q, SSL_CTX *tls, char **error_r)
{
	char *err = NULL;
	struct store_reader *reader = store_reader_open(s, &err);
	if (reader == NULL) {
		*error_r = xasprintf("smtp worker: cannot open the store for lookups: %s",
				     err != NULL ? err : "unknown error");
		free(err);
		return NULL;
	}
	/* Store threads for AUTH only when the daemon offers submission at all
	 * (the listeners are fixed for the process's life: not reloadable). */
	struct queue_pool *pool = NULL;
	bool submission = (s->submission_listen != NULL && s->submission_listen[0] != '\0') ||
			  (s->submissions_listen != NULL && s->submissions_listen[0] != '\0');
	if (submission) {
		pool = queue_pool_new(s, (size_t)s->submission_store_threads, "smtp", error_r);
		if (pool == NULL) {
			store_reader_close(&reader);
			return NULL;
		}
	}
	struct smtp_worker *w = xcalloc(1, sizeof(*w));
	w->pool = pool;
	w->base = base;
	w->s = s;
	w->q = q;
	w->tls = tls;
	w->reader = reader;
	w->sweep_ev = event_new(base, -1, EV_PERSIST, sweep_cb, w);
	if (w->sweep_ev == NULL)
		panic("smtp: event_new failed");
	sweep_schedule(w);
	return w;
}

/* Refuses a connection with one best-effort reply. */
static void refuse(int fd, const char *line)
{
	ssize_t n = send(fd, line, strlen(line), MSG_DONTWAIT | MSG_NOSIGNAL);
	(void)n;   /* best effort: the client may already be gone */
	close(fd);
}

void smtp_worker_accept(struct smtp_worker *w, int fd, const struct sockaddr *peer,
			socklen_t peer_len, const struct sockaddr *local, socklen_t local_len,
			enum smtp_service service, struct guard_ticket *ticket)
{
	(void)local;
	(void)local_len;
	char line[512];
	metric_inc(M_SMTP_CONNECTIONS_TOTAL);
	if (service == SMTP_SERVICE_SUBMISSIONS &&
	    (w->tls == NULL || w->shutting_down || !take_slot(w->s, service))) {
		/* A plaintext reply would be noise to the client's TLS stack. */
		if (w->tls != NULL && !w->shutting_down)
			metric_inc(M_SMTP_REJECT_CONN_LIMIT);
		close(fd);
		guard_release(ticket);
		return;
	}
	if (service == SMTP_SERVICE_SUBMISSIONS) {
		session_start(w, fd, peer, peer_len, service, ticket);
		return;
	}
	if (w->shutting_down) {
		const struct status_info *si = status_info(ST_SHUTDOWN);
		snprintf(line, sizeof(line), "%d %s %s\r\n", si->smtp_code, si->smtp_enh, si->smtp_text);
		refuse(fd, line);
		guard_release(ticket);
		return;
	}
	if (!take_slot(w->s, service)) {
		metric_inc(M_SMTP_REJECT_CONN_LIMIT);
		snprintf(line, sizeof(line), "421 4.7.0 %s Too many connections, try again later\r\n",
			 w->s->hostname);
		refuse(fd, line);
		guard_release(ticket);
		return;
	}
	session_start(w, fd, peer, peer_len, service, ticket);
}

void smtp_worker_set_settings(struct smtp_worker *w, const struct settings *s)
{
	w->s = s;
	sweep_schedule(w);
}

void smtp_worker_shutdown(struct smtp_worker *w)
{
	w->shutting_down = true;
	/* session_shutdown may free s: take the next one first.  Bounded by
	 * the number of sessions; none is added while shutting down. */
	struct smtp_session *s = w->sessions;
	while (s != NULL) {
		struct smtp_session *next = s->next;
		session_shutdown(s);
		s = next;
	}
}

size_t smtp_worker_sessions(const struct smtp_worker *w)
{
	return w->n_sessions;
}

void smtp_worker_free(struct smtp_worker **wp)
{
	struct smtp_worker *w = *wp;
	if (w == NULL)
		return;
	while (w->sessions != NULL)
		session_destroy(w->sessions);
	if (w->sweep_ev != NULL)
		event_free(w->sweep_ev);
	/* Password checks still queued finish on the pool; their sessions
	 * were detached by session_destroy and are freed by the done
	 * callbacks, which run on the loop once more. */
	queue_pool_free(&w->pool);
	store_reader_close(&w->reader);
	free(w);
	*wp = NULL;
}
