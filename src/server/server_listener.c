/*
 * server_listener.c - the network threads and their listeners.
 *
 * Owns: two pools of network threads, each thread with its own event_base
 * and its own listening socket for every address of its pool (SO_REUSEPORT:
 * the kernel spreads connections between the threads of the pool, so
 * nothing is handed over and no lock is shared):
 *   MX pool    (`threads`)       smtp.listen, with an smtp_worker each;
 *   user pool  (`threads.user`)  imap(s).listen, pop3(s).listen,
 *              submission(s).listen, with an imap_worker, pop3_worker and
 *              smtp_worker each for the protocols the pool serves.
 * Isolation: a flood on port 25 - its accepts, the guard's verdicts, the
 * refusal writes and the sessions it opens - runs only on MX event loops,
 * so an IMAP command never waits behind it in a loop turn.  On a loaded
 * machine the MX threads also run `threads.mx_nice` nice levels below the
 * rest of the daemon (5 by default: about a third of the CPU weight), so a
 * user thread that wakes up wins the CPU from a flooded MX loop; SMTP
 * clients tolerate seconds of delay, a mail client's user does not.
 * Connection budgets
 * are per class as well: the guard keeps separate caps and tables for the
 * mx and user classes (guard.h), and each protocol has its own
 * *.max_connections.
 *
 * Accepting: each listener is a persistent level-triggered read event on
 * its socket that accepts at most `accepts_per_turn` connections per loop
 * turn (NET_ACCEPTS_MX on MX listeners, NET_ACCEPTS_USER on the others);
 * what is left in the kernel's backlog makes the socket readable again on
 * the next turn, after the sessions already open had theirs.  A connect
 * flood therefore cannot monopolise a loop with accepts, and the backlog
 * (SERVER_LISTEN_BACKLOG) absorbs the rest; libevent's evconnlistener
 * accepts until the backlog is empty in one callback, which is why it is
 * not used here.
 *
 * Life cycle (all calls on the main thread):
 *   server_listener_bind   sockets, as root, before the privilege drop
 *   server_listener_start  bases, workers, accept events; threads start
 *   server_listener_set_settings  (SIGHUP) new settings, applied on each
 *                          worker's own thread through event_base_once
 *   server_listener_shutdown  each thread frees its listeners (the port
 *                          stops accepting) and shuts its workers down,
 *                          then watches them every 50 ms until no session
 *                          is left and raises its `drained` flag
 *   server_listener_join   loopexit + join, once every thread is drained
 *   server_listener_free   after queue_stop: one last non-blocking pass over
 *                          each base (anything the queue scheduled), then
 *                          workers and bases are freed
 * *_worker_* functions are only ever called on the worker's thread while
 * that thread runs, and on the main thread before it starts / after it is
 * joined, as the protocol headers require.  The main thread learns a
 * worker's session count only through the atomics the thread publishes.
 *
 * Accept errors (EMFILE, ENFILE, ENOBUFS, ENOMEM): the listener is disabled
 * for 100 ms, otherwise the level-triggered readable socket would spin the
 * loop at 100% CPU; the error is logged at most once per second for the
 * whole process, with the number of repeats that were not logged.  Errors
 * that concern only the connection being accepted (ECONNABORTED, EPROTO,
 * the network errors accept(2) passes on) skip it.
 */
#include "server_int.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <event2/event.h>
#include <event2/util.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "server_proxy.h"

#define NET_ACCEPT_PAUSE_MS 100
#define NET_DRAIN_POLL_MS 50
#define NET_ERROR_LOG_INTERVAL_MS 1000
/* Connections accepted per listener per loop turn.  MX: small, so a connect
 * flood yields the loop to the open sessions (legitimate senders mid-DATA)
 * after every 16 guard verdicts; user: larger, since a login storm after a
 * network outage is legitimate, and it has loops of its own. */
#define NET_ACCEPTS_MX 16
#define NET_ACCEPTS_USER 64

struct net_thread;

struct net_listener {
	struct net_thread *thread;
	int fd;                     /* the listening socket, owned; -1 once closed */
	struct event *accept_ev;    /* EV_READ | EV_PERSIST on fd */
	struct event *resume;       /* re-enables accept_ev after an accept-error pause */
	unsigned accepts_per_turn;
	char text[SERVER_ADDR_TEXT];
	enum server_proto proto;
	struct server_proxy_list proxies; /* connections whose PROXY header is being read */
};

struct net_thread {
	struct server_net *net;
	size_t index;
	bool mx;                        /* pool: MX, else user-facing */
	struct event_base *base;
	struct smtp_worker *worker;     /* MX, or submission on a user thread; else NULL */
	struct imap_worker *imap;
	struct pop3_worker *pop3;
	struct net_listener *listeners; /* the addresses of its pool */
	size_t n_listeners;
	struct event *drain_timer;
	pthread_t tid;
	bool started;
	_Atomic bool drained;
	_Atomic size_t open_sessions;
	_Atomic(const struct settings *) settings;
};

struct server_net {
	struct net_thread *threads;     /* the MX pool first, then the user pool */
	size_t n_threads;
	_Atomic uint64_t last_error_log_ms;
	_Atomic uint64_t errors_not_logged;
};

/* True when one of t's listeners serves one of the two protocols. */
static bool net_serves(const struct net_thread *t, enum server_proto a, enum server_proto b)
{
	for (size_t i = 0; i < t->n_listeners; i++) {
		if (t->listeners[i].proto == a || t->listeners[i].proto == b)
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
	case SERVER_PROTO_SUBMISSION:
		smtp_worker_accept(t->worker, fd, peer, peer_len, local, local_len, SMTP_SERVICE_SUBMISSION,
				   ticket);
		break;
	case SERVER_PROTO_SUBMISSIONS:
		smtp_worker_accept(t->worker, fd, peer, peer_len, local, local_len, SMTP_SERVICE_SUBMISSIONS,
				   ticket);
		break;
	case SERVER_PROTO_SMTP:
	default:
		smtp_worker_accept(t->worker, fd, peer, peer_len, local, local_len, SMTP_SERVICE_MX, ticket);
		break;
	}
}

static enum guard_proto net_guard_proto(const struct net_listener *l)
{
	static const enum guard_proto guard_proto_of[] = {
		[SERVER_PROTO_SMTP] = GUARD_PROTO_SMTP, [SERVER_PROTO_IMAP] = GUARD_PROTO_IMAP,
		[SERVER_PROTO_IMAPS] = GUARD_PROTO_IMAPS, [SERVER_PROTO_POP3] = GUARD_PROTO_POP3,
		[SERVER_PROTO_POP3S] = GUARD_PROTO_POP3S, [SERVER_PROTO_SUBMISSION] = GUARD_PROTO_SUBMISSION,
		[SERVER_PROTO_SUBMISSIONS] = GUARD_PROTO_SUBMISSION,
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

/* One accepted connection (fd non-blocking, close-on-exec). */
static void net_accepted(struct net_listener *l, int fd, const struct sockaddr *peer, socklen_t peer_len)
{
	/* A trusted load balancer's connection: its PROXY header names the
	 * client, and every limit applies to that address, so the header is
	 * read before the guard decides (server_proxy.c, without blocking). */
	struct guard *g = guard_process();
	if (g != NULL && guard_proxy_trusted(g, guard_proto_class(net_guard_proto(l)), peer, peer_len)) {
		server_proxy_start(&l->proxies, l->thread->base, fd, peer, peer_len, guard_proxy_timeout_ms(g),
				   net_proxied_cb, l);
		return;
	}
	net_admit(l, fd, peer, peer_len);
}

/* accept(2) errors that concern only the connection being accepted: the
 * next one in the backlog may be fine (Linux passes pending network errors
 * on to accept, see its man page). */
static bool net_accept_error_is_transient(int err)
{
	switch (err) {
	case EINTR:
	case ECONNABORTED:
	case EPROTO:
	case ENETDOWN:
	case ENOPROTOOPT:
	case EHOSTDOWN:
	case ENONET:
	case EHOSTUNREACH:
	case EOPNOTSUPP:
	case ENETUNREACH:
	case EPERM:         /* refused by a firewall rule */
		return true;
	default:
		return false;
	}
}

/* Out of descriptors or memory: pause the listener for a while instead of
 * spinning on a socket that stays readable. */
static void net_accept_pause(struct net_listener *l, int err)
{
	struct server_net *net = l->thread->net;
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
	event_del(l->accept_ev);
	struct timeval tv = { 0, NET_ACCEPT_PAUSE_MS * 1000 };
	event_add(l->resume, &tv);
}

static void net_accept_cb(evutil_socket_t lfd, short what, void *arg)
{
	(void)what;
	struct net_listener *l = arg;
	for (unsigned i = 0; i < l->accepts_per_turn; i++) {
		struct sockaddr_storage peer;
		socklen_t peer_len = sizeof(peer);
		int fd = accept4(lfd, (struct sockaddr *)&peer, &peer_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			int err = errno;
			if (err == EAGAIN || err == EWOULDBLOCK)
				return;
			if (net_accept_error_is_transient(err))
				continue;
			net_accept_pause(l, err);
			return;
		}
		net_accepted(l, fd, (struct sockaddr *)&peer, peer_len);
	}
}

static void net_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct net_listener *l = arg;
	if (l->accept_ev != NULL)
		event_add(l->accept_ev, NULL);
}

static void net_settings_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct net_thread *t = arg;
	if (t->worker != NULL)
		smtp_worker_set_settings(t->worker, atomic_load(&t->settings));
	if (t->imap != NULL)
		imap_worker_set_settings(t->imap, atomic_load(&t->settings));
	if (t->pop3 != NULL)
		pop3_worker_set_settings(t->pop3, atomic_load(&t->settings));
}

static void net_listeners_free(struct net_thread *t)
{
	for (size_t i = 0; i < t->n_listeners; i++) {
		struct net_listener *l = &t->listeners[i];
		server_proxy_abort_all(&l->proxies);
		if (l->resume != NULL) {
			event_free(l->resume);
			l->resume = NULL;
		}
		if (l->accept_ev != NULL) {
			event_free(l->accept_ev);
			l->accept_ev = NULL;
		}
		if (l->fd >= 0) {
			close(l->fd);
			l->fd = -1;
		}
	}
}

static size_t net_open_sessions(const struct net_thread *t)
{
	size_t open = 0;
	if (t->worker != NULL)
		open += smtp_worker_sessions(t->worker);
	if (t->imap != NULL)
		open += imap_worker_sessions(t->imap);
	if (t->pop3 != NULL)
		open += pop3_worker_sessions(t->pop3);
	return open;
}

static void net_drain_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct net_thread *t = arg;
	size_t open = net_open_sessions(t);
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
	if (t->worker != NULL)
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

/* On the thread itself: its name, and for MX threads the lower priority
 * (Linux applies nice per thread; raising it needs no privilege). */
static void net_thread_setup(struct net_thread *t)
{
	char name[16];
	snprintf(name, sizeof(name), "%s%u", t->mx ? "net-mx" : "net-user", (unsigned)(t->index % 1000));
	(void)pthread_setname_np(pthread_self(), name);  /* top -H, /proc/<pid>/task/<tid>/comm */
	const struct settings *s = atomic_load(&t->settings);
	if (!t->mx || s->threads_mx_nice == 0)
		return;
	id_t tid = (id_t)syscall(SYS_gettid);
	errno = 0;
	int cur = getpriority(PRIO_PROCESS, tid);
	if (cur == -1 && errno != 0)
		return;
	int want = cur + (int)s->threads_mx_nice;
	if (setpriority(PRIO_PROCESS, tid, want < 19 ? want : 19) != 0)
		log_warn("network thread %zu: cannot lower its priority: %s", t->index, strerror(errno));
}

static void *net_thread_main(void *arg)
{
	struct net_thread *t = arg;
	net_thread_setup(t);
	if (event_base_loop(t->base, EVLOOP_NO_EXIT_ON_EMPTY) < 0)
		log_error("network thread %zu: event loop failed", t->index);
	return NULL;
}

/* ---- main-thread interface ---------------------------------------------- */

/* Threads [0, n_mx) serve the MX addresses of `addrs`, [n_mx, n_mx+n_user)
 * the others; each thread gets one (unopened) listener per address of its pool. */
static struct server_net *net_alloc(const struct server_addr *addrs, size_t n_addrs, size_t n_mx,
				    size_t n_user)
{
	size_t n_mx_addrs = 0;
	for (size_t a = 0; a < n_addrs; a++)
		n_mx_addrs += server_proto_is_mx(addrs[a].proto);
	struct server_net *n = xcalloc(1, sizeof(*n));
	n->n_threads = n_mx + n_user;
	n->threads = xcalloc(n->n_threads, sizeof(*n->threads));
	for (size_t t = 0; t < n->n_threads; t++) {
		struct net_thread *th = &n->threads[t];
		th->net = n;
		th->index = t;
		th->mx = t < n_mx;
		size_t want = th->mx ? n_mx_addrs : n_addrs - n_mx_addrs;
		th->listeners = xcalloc(want, sizeof(*th->listeners));
		for (size_t a = 0; a < n_addrs; a++) {
			if (server_proto_is_mx(addrs[a].proto) != th->mx)
				continue;
			struct net_listener *l = &th->listeners[th->n_listeners++];
			l->thread = th;
			l->fd = -1;
			l->proto = addrs[a].proto;
			l->accepts_per_turn = th->mx ? NET_ACCEPTS_MX : NET_ACCEPTS_USER;
			memcpy(l->text, addrs[a].text, sizeof(l->text));
		}
	}
	return n;
}

/* Opens `a` once per thread of its pool; li: its index among the pool's
 * listeners (the same on every thread of the pool). */
static bool net_bind_one(struct server_net *n, struct server_addr *a, size_t li, char **error_r)
{
	size_t first = n->n_threads, count = 0;
	for (size_t t = 0; t < n->n_threads; t++) {
		if (n->threads[t].mx == server_proto_is_mx(a->proto)) {
			if (count++ == 0)
				first = t;
		}
	}
	if (count == 0) {
		*error_r = xasprintf("no network thread to serve %s", a->text);
		return false;
	}
	int *fds = xcalloc(count, sizeof(*fds));
	bool ok = server_addr_listen(a, count, true, fds, error_r);
	for (size_t i = 0; ok && i < count; i++) {
		struct net_listener *l = &n->threads[first + i].listeners[li];
		l->fd = fds[i];
		memcpy(l->text, a->text, sizeof(l->text));  /* port 0: the kernel's choice */
	}
	free(fds);
	return ok;
}

struct server_net *server_listener_bind(struct server_addr *addrs, size_t n_addrs, size_t n_mx,
					size_t n_user, char **error_r)
{
	struct server_net *n = net_alloc(addrs, n_addrs, n_mx, n_user);
	size_t li_mx = 0, li_user = 0;
	for (size_t a = 0; a < n_addrs; a++) {
		size_t *li = server_proto_is_mx(addrs[a].proto) ? &li_mx : &li_user;
		if (!net_bind_one(n, &addrs[a], (*li)++, error_r)) {
			server_listener_free(&n);
			return NULL;
		}
	}
	return n;
}

static bool net_thread_workers(struct net_thread *t, const struct settings *s, struct queue *q,
			       SSL_CTX *tls, char **error_r)
{
	char *err = NULL;
	if (t->mx || net_serves(t, SERVER_PROTO_SUBMISSION, SERVER_PROTO_SUBMISSIONS)) {
		t->worker = smtp_worker_new(t->base, s, q, tls, &err);
		if (t->worker == NULL) {
			*error_r = xasprintf("network thread %zu: %s", t->index, err ? err : "cannot start SMTP");
			free(err);
			return false;
		}
	}
	if (net_serves(t, SERVER_PROTO_IMAP, SERVER_PROTO_IMAPS)) {
		t->imap = imap_worker_new(t->base, s, tls, &err);
		if (t->imap == NULL) {
			*error_r = xasprintf("network thread %zu: %s", t->index,
					     err ? err : "cannot start IMAP");
			free(err);
			return false;
		}
		store_set_change_listener(imap_notify_changes, NULL);   /* IDLE push */
	}
	if (net_serves(t, SERVER_PROTO_POP3, SERVER_PROTO_POP3S)) {
		t->pop3 = pop3_worker_new(t->base, s, tls, &err);
		if (t->pop3 == NULL) {
			*error_r = xasprintf("network thread %zu: %s", t->index,
					     err ? err : "cannot start POP3");
			free(err);
			return false;
		}
	}
	return true;
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
	if (!net_thread_workers(t, s, q, tls, error_r))
		return false;
	for (size_t i = 0; i < t->n_listeners; i++) {
		struct net_listener *l = &t->listeners[i];
		l->accept_ev = event_new(t->base, l->fd, EV_READ | EV_PERSIST, net_accept_cb, l);
		l->resume = evtimer_new(t->base, net_resume_cb, l);
		if (l->accept_ev == NULL || l->resume == NULL || event_add(l->accept_ev, NULL) != 0) {
			*error_r = xasprintf("network thread %zu: cannot listen on %s", t->index, l->text);
			return false;
		}
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
