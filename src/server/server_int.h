/*
 * server_int.h - private interfaces between the files of src/server/.
 *
 *   server.c            server_run: start-up order, signals, reload, shutdown
 *   server_addr.c       "host:port" lists, listening sockets
 *   server_listener.c   the network threads and their listeners
 *   server_admin.c      the admin HTTP endpoint (/metrics, /health)
 *   server_privilege.c  the unprivileged user, ownership of state, the drop
 *
 * Threads: everything here is called on the main thread, except where a
 * comment says a function runs on a network thread.
 */
#ifndef STRATA_SERVER_INT_H
#define STRATA_SERVER_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "config.h"
#include "queue.h"
#include "imap.h"
#include "pop3.h"
#include "smtp.h"
#include "store.h"

struct event_base;

/* ---- server_addr.c ------------------------------------------------------ */

#define SERVER_MAX_ADDRS 32          /* entries in one listen list */
#define SERVER_LISTEN_BACKLOG 4096
#define SERVER_ADDR_TEXT 80

/* The protocol a listener serves; set by the caller after parsing. */
enum server_proto {
	SERVER_PROTO_SMTP = 0,
	SERVER_PROTO_IMAP,
	SERVER_PROTO_IMAPS,     /* implicit TLS (993) */
	SERVER_PROTO_POP3,
	SERVER_PROTO_POP3S,     /* implicit TLS (995) */
	SERVER_PROTO_SUBMISSION,  /* SMTP submission, STARTTLS then AUTH (587) */
	SERVER_PROTO_SUBMISSIONS, /* SMTP submission over implicit TLS (465) */
};

/* MX listeners (smtp.listen) are served by the MX network threads, every
 * other protocol by the user-facing ones. */
static inline bool server_proto_is_mx(enum server_proto proto)
{
	return proto == SERVER_PROTO_SMTP;
}

struct server_addr {
	struct sockaddr_storage ss;
	enum server_proto proto;
	socklen_t len;
	char text[SERVER_ADDR_TEXT]; /* "127.0.0.1:25", "[::1]:25" */
};

/*
 * Parses a comma-separated list: "host:port" (numeric IPv4), "[v6]:port",
 * "*:port" (0.0.0.0).  Port 0 lets the kernel choose (tests).  An empty list
 * gives *n_r = 0.  `key` names the setting in error messages.  On success
 * *addrs_r is a malloc'd array (caller frees); on failure *error_r is set.
 */
bool server_addr_parse_list(const char *list, const char *key, struct server_addr **addrs_r,
			    size_t *n_r, char **error_r);
/* "1.2.3.4:25" or "[::1]:25" for a socket address. */
void server_addr_format(const struct sockaddr *sa, socklen_t len, char *out, size_t outlen);
/*
 * Opens `count` non-blocking listening sockets on `a` (SO_REUSEADDR; with
 * count > 1 or `reuseport` also SO_REUSEPORT, so the kernel spreads
 * connections between them; IPV6_V6ONLY for IPv6; backlog 4096).  Before
 * that, a bind without SO_REUSEPORT makes sure no other process already
 * listens there (SO_REUSEPORT would otherwise silently share the port with
 * it).  When a's port is 0 the first bind picks one and `a` is updated so
 * that the others share it.  Errors read "cannot listen on <addr>: <reason>".
 */
bool server_addr_listen(struct server_addr *a, size_t count, bool reuseport, int *fds,
			char **error_r);

/* ---- server_listener.c -------------------------------------------------- */

struct server_net;

/* The network threads form two pools: `n_mx` threads serve the MX
 * listeners, `n_user` threads the user-facing ones (IMAP, POP3, submission),
 * so that a flood on port 25 never shares an event loop with users.  Each
 * address is bound once per thread of its pool (as root, before the drop).
 * A pool whose listeners are all absent must have 0 threads, and one with
 * listeners at least 1. */
struct server_net *server_listener_bind(struct server_addr *addrs, size_t n_addrs, size_t n_mx,
					size_t n_user, char **error_r);
/* Creates each thread's event_base, the workers of the protocols its pool
 * serves and its listeners (each hands connections to the worker of its
 * addr's proto), then starts the threads.  After the privilege drop (workers
 * open store readers). */
bool server_listener_start(struct server_net *n, const struct settings *s, struct queue *q,
			   SSL_CTX *tls, char **error_r);
size_t server_listener_threads(const struct server_net *n);
/* Hands `s` to every worker, on the worker's thread (SIGHUP).  The caller
 * keeps `s` alive until server_listener_free. */
void server_listener_set_settings(struct server_net *n, const struct settings *s);
/* Each thread frees its listeners (stops accepting) and shuts its worker
 * down, on its own thread.  Returns at once. */
void server_listener_shutdown(struct server_net *n);
/* True when every worker reports no open session; *open_r: sessions still
 * open as last seen by the threads. */
bool server_listener_drained(const struct server_net *n, size_t *open_r);
/* Ends every thread's loop and joins the threads. */
void server_listener_join(struct server_net *n);
/* After server_listener_join (and queue_stop): runs what is still due on
 * each base once, frees workers, bases and any socket not yet handed over. */
void server_listener_free(struct server_net **n);

/* ---- server_admin.c ------------------------------------------------------ */

struct server_admin;
/* NULL when healthy, else the reason (static text) for a 503. */
typedef const char *server_health_cb(void *arg);

/* Binds the admin endpoint on `base` (as root, before the drop).  n may be 0
 * (no admin endpoint). */
struct server_admin *server_admin_bind(struct event_base *base, struct server_addr *addrs, size_t n,
				       char **error_r);
/* Starts answering with figures from `st` (taken over: closed by
 * server_admin_free; the admin's own handle, used only on the main thread). */
void server_admin_start(struct server_admin *a, struct store *st, server_health_cb *health, void *arg);
void server_admin_free(struct server_admin **a);

/* ---- server_seccomp.c ---------------------------------------------------- */
/* Installs the daemon's system call filter on every thread, for good. */
bool server_seccomp_apply(char **error_r);
/* The refused system calls (for tests). */
size_t server_seccomp_denied(const int **calls_r);

/* ---- server_privilege.c -------------------------------------------------- */

struct server_user {
	uid_t uid;
	gid_t gid;
	char name[64];
};

/* The account to switch to; refuses a missing user and uid 0. */
bool server_privilege_lookup(const char *user, struct server_user *u, char **error_r);
/* Refuses a state_dir that is a symbolic link, not a directory, or writable
 * by everyone (like /tmp): it is about to be handed to the service user. */
bool server_privilege_check_state_dir(const struct settings *s, char **error_r);
/* Gives the files Strata made to the service user (see the file comment). */
bool server_privilege_chown_state(const struct settings *s, const struct server_user *u,
				  char **error_r);
/* setgroups, setgid, setuid; verifies that root cannot be regained. */
bool server_privilege_drop(const struct server_user *u, char **error_r);

#endif
