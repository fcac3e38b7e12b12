/*
 * server_listener.c - the network threads and their listeners.
 *
 * Owns: `threads` network threads.  Each has its own event_base, its own
 * smtp_worker (sessions, store reader), and its own listening socket for
 * every smtp.listen address (SO_REUSEPORT: the kernel spreads connections
 * between the threads, so nothing is handed over and no lock is shared).
 *
 * Life cycle (all calls on the main thread):
 *   server_listener_bind   sockets, as root, before the privilege drop
 *   server_listener_start  bases, workers, evconnlisteners; threads start
 *   server_listener_set_settings  (SIGHUP) new settings, applied on each
 *                          worker's own thread through event_base_once
 *   server_listener_shutdown  each thread frees its listeners (the port
 *                          stops accepting) and calls smtp_worker_shutdown,
 *                          then watches its worker every 50 ms until no
 *                          session is left and raises its `drained` flag
 *   server_listener_join   loopexit + join, once every thread is drained
 *   server_listener_free   after queue_stop: one last non-blocking pass over
 *                          each base (anything the queue scheduled), then
 *                          workers and bases are freed
 * smtp_worker_* functions are only ever called on the worker's thread while
 * that thread runs, and on the main thread before it starts / after it is
 * joined, as smtp.h requires.  The main thread learns a worker's session
 * count only through the atomics the worker's thread publishes.
 *
 * Accept errors (EMFILE, ENFILE, ENOBUFS, ENOMEM): the listener is disabled
 * for 100 ms, otherwise the level-triggered readable socket would spin the
 * loop at 100% CPU; the error is logged at most once per second for the
 * whole process, with the number of repeats that were not logged.
 */
#include "server_int.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server_proxy.h"

#define NET_ACCEPT_PAUSE_MS 100
#define NET_DRAIN_POLL_MS 50
#define NET_ERROR_LOG_INTERVAL_MS 1000

struct net_thread;

struct net_listener {
	struct net_thread *thread;
	int fd;                     /* until evl owns it; then -1 */
	struct evconnlistener *evl;
	struct event *resume;       /* re-enables evl after an accept-error pause */
	char text[SERVER_ADDR_TEXT];
	enum server_proto proto;
	struct server_proxy_list proxies; /* connections whose PROXY header is being read */
};

struct net_thread {
	struct server_net *net;
	size_t index;
	struct event_base *base;
	struct smtp_worker *worker;
	struct imap_worker *imap;
	struct pop3_worker *pop3;
	struct net_listener *listeners; /* net->n_addrs */
	struct event *drain_timer;
	pthread_t tid;
	bool started;
	_Atomic bool drained;
	_Atomic size_t open_sessions;
	_Atomic(const struct settings *) settings;
};

struct server_net {
	struct net_thread *threads;
	size_t n_threads;
	size_t n_addrs;
	_Atomic uint64_t last_error_log_ms;
	_Atomic uint64_t errors_not_logged;
};

/* True when some listener serves `proto` (every thread has the same ones). */
static bool net_serves(const struct server_net *n, enum server_proto proto)
{
	if (n->n_threads == 0)
		return false;
	for (size_t i = 0; i < n->n_addrs; i++) {
		if (n->threads[0].listeners[i].proto == proto)
			return true;
	}
	return false;
}

/* ---- network-thread callbacks --------------------------------------------- */

/* Hands an accepted connection to the worker of the listener's protocol. */
static void net_dispatch(struct net_listener *l, int fd, const struct sockaddr *peer, socklen_t peer_len,
			 const struct sockaddr *local, socklen_t local_len, struct guard_ticket *ticket)
{
	struct net_thread *t = l->thread;
	switch (l->proto) {
	case SERVER_PROTO_IMAP:
		imap_worker_accept(t->imap, fd, peer, peer_len, local, local_len, ticket);
		break;
	case SERVER_PROTO_IMAPS:
		imap_worker_accept_tls(t->imap, fd, peer, peer_len, local, local_len, ticket);
		break;
	case SERVER_PROTO_POP3:
	case SERVER_PROTO_POP3S:
		pop3_worker_accept(t->pop3, fd, peer, peer_len, local, local_len, l->proto == SERVER_PROTO_POP3S,
				   ticket);
		break;
	case SERVER_PROTO_SMTP:
	default:
		smtp_worker_accept(t->worker, fd, peer, peer_len, local, local_len, ticket);
		break;
	}
}

static enum guard_proto net_guard_proto(const struct net_listener *l)
{
	static const enum guard_proto guard_proto_of[] = {
		[SERVER_PROTO_SMTP] = GUARD_PROTO_SMTP, [SERVER_PROTO_IMAP] = GUARD_PROTO_IMAP,
		[SERVER_PROTO_IMAPS] = GUARD_PROTO_IMAPS, [SERVER_PROTO_POP3] = GUARD_PROTO_POP3,
		[SERVER_PROTO_POP3S] = GUARD_PROTO_POP3S,
	};
	return (size_t)l->proto < ARRAY_LEN(guard_proto_of) ? guard_proto_of[l->proto] : GUARD_PROTO_SMTP;
}

/* The guard's decision for the client's address, then the protocol. */
static void net_admit(struct net_listener *l, int fd, const struct sockaddr *peer, socklen_t peer_len)
{
	/* The guard first: a refused connection costs one send() and a close. */
	struct guard_ticket ticket;
	if (!guard_accept(guard_process(), net_guard_proto(l), fd, peer, peer_len, &ticket))
		return;
	struct sockaddr_storage local;
	socklen_t local_len = sizeof(local);
	if (getsockname(fd, (struct sockaddr *)&local, &local_len) != 0) {
		/* reset by the peer before we got to it */
		close(fd);
		guard_release(&ticket);
		return;
	}
	/* Replies leave as soon as the loop writes them: every protocol here
	 * answers in request/response turns, and Nagle's algorithm against the
	 * client's delayed ACK would hold a short last segment (POP3's ".",
	 * IMAP's tagged OK) for up to 40 ms.  The output buffers already
	 * coalesce what one turn writes. */
	int one = 1;
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	net_dispatch(l, fd, peer, peer_len, (struct sockaddr *)&local, local_len, &ticket);
}

/* The PROXY header is read: `client` is the address behind the balancer. */
static void net_proxied_cb(void *arg, int fd, const struct sockaddr *client, socklen_t client_len)
{
	net_admit(arg, fd, client, client_len);
}

static void net_accept_cb(struct evconnlistener *evl, evutil_socket_t fd, struct sockaddr *peer,
			  int peer_len, void *arg)
{
	(void)evl;
	struct net_listener *l = arg;
	/* A trusted load balancer's connection: its PROXY header names the
	 * client, and every limit applies to that address, so the header is
	 * read before the guard decides (server_proxy.c, without blocking). */
	struct guard *g = guard_process();
	if (g != NULL && guard_proxy_trusted(g, guard_proto_class(net_guard_proto(l)), peer, (socklen_t)peer_len)) {
		server_proxy_start(&l->proxies, l->thread->base, fd, peer, (socklen_t)peer_len,
				   guard_proxy_timeout_ms(g), net_proxied_cb, l);
		return;
	}
	net_admit(l, fd, peer, (socklen_t)peer_len);
}

static void net_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct net_listener *l = arg;
	if (l->evl != NULL)
		evconnlistener_enable(l->evl);
}

static void net_accept_error_cb(struct evconnlistener *evl, void *arg)
{
	struct net_listener *l = arg;
	struct server_net *net = l->thread->net;
	int err = EVUTIL_SOCKET_ERROR();
	uint64_t now = time_mono_ms();
	uint64_t last = atomic_load(&net->last_error_log_ms);
	if (now - last >= NET_ERROR_LOG_INTERVAL_MS &&
	    atomic_compare_exchange_strong(&net->last_error_log_ms, &last, now)) {
		uint64_t skipped = atomic_exchange(&net->errors_not_logged, 0);
		char more[64] = "";
		if (skipped > 0)
			snprintf(more, sizeof(more), " (%llu more since the last report)",
				 (unsigned long long)skipped);
		log_error("accept on %s: %s; pausing this listener for %d ms%s", l->text, strerror(err),
			  NET_ACCEPT_PAUSE_MS, more);
	} else {
		atomic_fetch_add(&net->errors_not_logged, 1);
	}
	evconnlistener_disable(evl);
	struct timeval tv = { 0, NET_ACCEPT_PAUSE_MS * 1000 };
	event_add(l->resume, &tv);
}

static void net_settings_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct net_thread *t = arg;
	smtp_worker_set_settings(t->worker, atomic_load(&t->settings));
	if (t->imap != NULL)
		imap_worker_set_settings(t->imap, atomic_load(&t->settings));
	if (t->pop3 != NULL)
		pop3_worker_set_settings(t->pop3, atomic_load(&t->settings));
}

static void net_listeners_free(struct net_thread *t)
{
	for (size_t i = 0; i < t->net->n_addrs; i++) {
		struct net_listener *l = &t->listeners[i];
		server_proxy_abort_all(&l->proxies);
		if (l->resume != NULL) {
			event_free(l->resume);
			l->resume = NULL;
		}
		if (l->evl != NULL) {
			evconnlistener_free(l->evl); /* LEV_OPT_CLOSE_ON_FREE: closes the socket */
			l->evl = NULL;
		}
		if (l->fd >= 0) {
			close(l->fd);
			l->fd = -1;
		}
	}
}

static void net_drain_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct net_thread *t = arg;
	size_t open = smtp_worker_sessions(t->worker);
	if (t->imap != NULL)
		open += imap_worker_sessions(t->imap);
	if (t->pop3 != NULL)
		open += pop3_worker_sessions(t->pop3);
	atomic_store(&t->open_sessions, open);
	if (open == 0) {
		event_del(t->drain_timer);
		atomic_store(&t->drained, true);
	}
}

static void net_shutdown_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct net_thread *t = arg;
	net_listeners_free(t);
	smtp_worker_shutdown(t->worker);
	if (t->imap != NULL)
		imap_worker_shutdown(t->imap);
	if (t->pop3 != NULL)
		pop3_worker_shutdown(t->pop3);
	t->drain_timer = event_new(t->base, -1, EV_PERSIST, net_drain_cb, t);
	if (t->drain_timer == NULL)
		panic("network thread %zu: cannot allocate the drain timer", t->index);
	struct timeval tv = { 0, NET_DRAIN_POLL_MS * 1000 };
	event_add(t->drain_timer, &tv);
	net_drain_cb(-1, 0, t);
}

static void *net_thread_main(void *arg)
{
	struct net_thread *t = arg;
	if (event_base_loop(t->base, EVLOOP_NO_EXIT_ON_EMPTY) < 0)
		log_error("network thread %zu: event loop failed", t->index);
	return NULL;
}

/* ---- main-thread interface ---------------------------------------------- */

static struct server_net *net_alloc(size_t n_addrs, size_t n_threads)
{
	struct server_net *n = xcalloc(1, sizeof(*n));
	n->n_threads = n_threads;
	n->n_addrs = n_addrs;
	n->threads = xcalloc(n_threads, sizeof(*n->threads));
	for (size_t t = 0; t < n_threads; t++) {
		struct net_thread *th = &n->threads[t];
		th->net = n;
		th->index = t;
		th->listeners = xcalloc(n_addrs, sizeof(*th->listeners));
		for (size_t a = 0; a < n_addrs; a++) {
			th->listeners[a].thread = th;
			th->listeners[a].fd = -1;
		}
	}
	return n;
}

struct server_net *server_listener_bind(struct server_addr *addrs, size_t n_addrs, size_t n_threads,
					char **error_r)
{
	struct server_net *n = net_alloc(n_addrs, n_threads);
	int *fds = xcalloc(n_threads, sizeof(*fds));
	for (size_t a = 0; a < n_addrs; a++) {
		if (!server_addr_listen(&addrs[a], n_threads, true, fds, error_r)) {
			free(fds);
			server_listener_free(&n);
			return NULL;
		}
		for (size_t t = 0; t < n_threads; t++) {
			struct net_listener *l = &n->threads[t].listeners[a];
			l->fd = fds[t];
			memcpy(l->text, addrs[a].text, sizeof(l->text));
			l->proto = addrs[a].proto;
		}
	}
	free(fds);
	return n;
}

static bool net_thread_prepare(struct net_thread *t, const struct settings *s, struct queue *q,
			       SSL_CTX *tls, char **error_r)
{
	t->base = event_base_new();
	if (t->base == NULL) {
		*error_r = xasprintf("network thread %zu: cannot create an event loop", t->index);
		return false;
	}
	atomic_store(&t->settings, s);
	char *err = NULL;
	t->worker = smtp_worker_new(t->base, s, q, tls, &err);
	if (t->worker == NULL) {
		*error_r = xasprintf("network thread %zu: %s", t->index, err ? err : "cannot start SMTP");
		free(err);
		return false;
	}
	if (net_serves(t->net, SERVER_PROTO_IMAP) || net_serves(t->net, SERVER_PROTO_IMAPS)) {
		t->imap = imap_worker_new(t->base, s, tls, &err);
		if (t->imap == NULL) {
			*error_r = xasprintf("network thread %zu: %s", t->index,
					     err ? err : "cannot start IMAP");
			free(err);
			return false;
		}
		store_set_change_listener(imap_notify_changes, NULL);   /* IDLE push */
	}
	if (net_serves(t->net, SERVER_PROTO_POP3) || net_serves(t->net, SERVER_PROTO_POP3S)) {
		t->pop3 = pop3_worker_new(t->base, s, tls, &err);
		if (t->pop3 == NULL) {
			*error_r = xasprintf("network thread %zu: %s", t->index,
					     err ? err : "cannot start POP3");
			free(err);
			return false;
		}
	}
	for (size_t i = 0; i < t->net->n_addrs; i++) {
		struct net_listener *l = &t->listeners[i];
		/* backlog 0: the socket already listens with SERVER_LISTEN_BACKLOG
		 * (-1 would make libevent call listen(fd, 128) and shrink it). */
		l->evl = evconnlistener_new(t->base, net_accept_cb, l,
					    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 0, l->fd);
		l->resume = evtimer_new(t->base, net_resume_cb, l);
		if (l->evl == NULL || l->resume == NULL) {
			*error_r = xasprintf("network thread %zu: cannot listen on %s", t->index, l->text);
			return false;
		}
		l->fd = -1;
		evconnlistener_set_error_cb(l->evl, net_accept_error_cb);
	}
	return true;
}

bool server_listener_start(struct server_net *n, const struct settings *s, struct queue *q,
			   SSL_CTX *tls, char **error_r)
{
	for (size_t t = 0; t < n->n_threads; t++) {
		if (!net_thread_prepare(&n->threads[t], s, q, tls, error_r))
			return false;
	}
	/* Network threads never take the daemon's signals: those are handled by
	 * the main loop, and a signal landing here would only cause EINTRs. */
	sigset_t block, old;
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &block, &old);
	bool ok = true;
	for (size_t t = 0; ok && t < n->n_threads; t++) {
		struct net_thread *th = &n->threads[t];
		int rc = pthread_create(&th->tid, NULL, net_thread_main, th);
		if (rc != 0) {
			*error_r = xasprintf("cannot start network thread %zu: %s", t, strerror(rc));
			ok = false;
		} else {
			th->started = true;
		}
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return ok;
}

size_t server_listener_threads(const struct server_net *n)
{
	return n->n_threads;
}

static void net_run_on_thread(struct net_thread *t, event_callback_fn cb)
{
	if (event_base_once(t->base, -1, EV_TIMEOUT, cb, t, NULL) != 0)
		panic("network thread %zu: cannot schedule work on its event loop", t->index);
}

void server_listener_set_settings(struct server_net *n, const struct settings *s)
{
	for (size_t t = 0; t < n->n_threads; t++) {
		struct net_thread *th = &n->threads[t];
		atomic_store(&th->settings, s);
		if (th->started)
			net_run_on_thread(th, net_settings_cb);
	}
}

void server_listener_shutdown(struct server_net *n)
{
	for (size_t t = 0; t < n->n_threads; t++) {
		struct net_thread *th = &n->threads[t];
		if (th->started)
			net_run_on_thread(th, net_shutdown_cb);
		else
			atomic_store(&th->drained, true);
	}
}

bool server_listener_drained(const struct server_net *n, size_t *open_r)
{
	bool all = true;
	size_t open = 0;
	for (size_t t = 0; t < n->n_threads; t++) {
		const struct net_thread *th = &n->threads[t];
		if (!atomic_load(&th->drained))
			all = false;
		open += atomic_load(&th->open_sessions);
	}
	*open_r = open;
	return all;
}

void server_listener_join(struct server_net *n)
{
	for (size_t t = 0; t < n->n_threads; t++) {
		struct net_thread *th = &n->threads[t];
		if (!th->started)
			continue;
		event_base_loopexit(th->base, NULL);
		pthread_join(th->tid, NULL);
		th->started = false;
	}
}

void server_listener_free(struct server_net **np)
{
	struct server_net *n = *np;
	if (n == NULL)
		return;
	for (size_t t = 0; t < n->n_threads; t++) {
		struct net_thread *th = &n->threads[t];
		if (th->started)
			panic("server_listener_free: network thread %zu still running", t);
		if (th->base != NULL)
			event_base_loop(th->base, EVLOOP_NONBLOCK);
		net_listeners_free(th);
		if (th->drain_timer != NULL)
			event_free(th->drain_timer);
		if (th->worker != NULL)
			smtp_worker_free(&th->worker);
		if (th->imap != NULL)
			imap_worker_free(&th->imap);
		if (th->pop3 != NULL)
			pop3_worker_free(&th->pop3);
		if (th->base != NULL)
			event_base_free(th->base);
		free(th->listeners);
	}
	free(n->threads);
	free(n);
	*np = NULL;
}
