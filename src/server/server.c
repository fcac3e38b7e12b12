/*
 * server.c - `strata serve`: start-up, signals, reload and shutdown.
 *
 * Start-up order (server_run), and why:
 *   1. libevent threading (before any event_base), SIGPIPE ignored, umask
 *      027 (mail and index are nobody else's business), logging, fault
 *      injection from STRATA_FAULT (tests), the open-file limit raised to
 *      its hard maximum (each SMTP session is a descriptor).
 *   2. Listen lists parsed (a typo fails here, before anything changes).
 *   3. As root: the service user is looked up (a missing user is fatal).
 *      state_dir is created (0750) and checked.
 *   4. TLS context (tls_context_new): loads cert and key, or makes the
 *      self-signed pair.  As root, because a configured key is typically
 *      readable by root only; the SSL_CTX keeps it in memory after the drop.
 *   5. Every listen address bound once per network thread of its pool
 *      (MX: `threads`; user-facing: `threads.user`, server_listener.c),
 *      and the admin endpoint bound: as root, so ports below 1024 work.
 *   6. With guard.nft.enabled, the nft helper is forked (guard.h: it keeps
 *      CAP_NET_ADMIN alone, so the kernel mirror of the bans works after
 *      the drop while the daemon keeps nothing of root).  As root: the
 *      files Strata made are given to the service user
 *      (server_privilege.c), then setgroups/setgid/setuid.
 *   7. AFTER the drop: queue_recover (removes stale temp files), the WAL
 *      checkpointer (store_checkpoint_start: its own handle, which creates
 *      the index and blob directories, and its thread; first, so that every
 *      daemon handle after it leaves checkpoints to it and no COMMIT runs
 *      one; stopped last but one, after every thread that commits, with a
 *      final checkpoint), the store opened, queue_start, the
 *      relay (relay_start: outbound delivery threads, woken by the queue's
 *      committer; stopped before the queue at shutdown), the
 *      tier mover (tier_mover_start: recovery of interrupted moves, its own
 *      store handle and thread), the admin's own store handle, the network
 *      threads and their workers
 *      (each opens a store reader).  Before the store: the verified-
 *      password cache (auth_cache_init, auth.cache_size/auth.cache_ttl).
 *      The store is deliberately opened after the drop, not before: every
 *      file SQLite creates from then on (index.db, -wal, -shm, whenever
 *      they are recreated) is owned by the service user by construction,
 *      and root never writes into the tree the service user controls
 *      except for the TLS pair made in step 4.  Opening as root and
 *      chowning the -wal/-shm afterwards would work only as long as SQLite
 *      never recreates them, which is not a promise it makes.
 *   8. One "ready" log line; the main loop runs signals and admin HTTP.
 * Every start-up failure is logged in one line naming what and why, what
 * was built so far is torn down, and server_run returns 1.
 *
 * Signals (libevent signal events on the main base):
 *   SIGTERM/SIGINT  shutdown: every network thread frees its listeners and
 *                   shuts its worker down (idle sessions get 421, sessions
 *                   in DATA are aborted, sessions waiting for a commit get
 *                   their reply when it completes); the main loop polls
 *                   every 50 ms until no session is left, then the threads
 *                   are joined, the queue stopped, everything freed: exit 0.
 *                   A second SIGTERM/SIGINT exits at once with code 1, as
 *                   does a drain that takes longer than SERVER_DRAIN_LIMIT_MS.
 *                   Nothing is lost either way: only durable messages were
 *                   ever answered 250.
 *   SIGHUP          reload: the config file is read again with the same -o
 *                   overrides.  A bad file is logged and ignored.  Keys that
 *                   need a restart keep their old values (named in a
 *                   warning); reloadable keys go to every worker for new
 *                   sessions, and log.level applies at once.  Every settings
 *                   struct ever in use is kept until exit: sessions may still
 *                   point at an older one.
 *
 * Threads: everything here runs on the main thread.
 */
#include "server.h"

#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server_int.h"
#include "auth.h"
#include "guard.h"
#include "relay.h"
#include "tier.h"
#include "tls.h"

#define SERVER_DRAIN_POLL_MS 50
#define SERVER_DRAIN_LOG_MS 5000
#define SERVER_DRAIN_LIMIT_MS 60000
#define SERVER_FD_RESERVE 256 /* descriptors beyond one per session */

struct server {
	const char *config_path;
	char *const *overrides;
	size_t n_over;
	const struct settings *cur;   /* in effect for new sessions */
	struct settings **reloaded;   /* every one loaded by SIGHUP; freed at exit */
	size_t n_reloaded;

	struct server_addr *smtp_addrs, *admin_addrs;
	size_t n_smtp, n_admin;
	size_t n_imap;                /* the last n_imap of smtp_addrs are IMAP, */
	size_t n_imaps, n_pop3, n_pop3s; /* ... IMAPS, POP3, POP3S, */
	size_t n_sub, n_subs;         /* ... SUBMISSION, SUBMISSIONS, in this order */
	size_t n_mx_threads, n_user_threads; /* the two pools of network threads */
	bool as_root;
	struct server_user user;

	struct event_base *base;
	struct event *sig_term, *sig_int, *sig_hup;
	struct event *drain_timer;
	SSL_CTX *tls;
	struct server_net *net;
	struct server_admin *admin;
	struct store *store;          /* the queue's (committer's) handle */
	struct queue *queue;
	struct relay *relay;          /* outbound delivery (src/relay): after the queue, stopped before it */
	struct tier_mover *tier;      /* storage tiering: heat flush and mover (src/tier) */
	struct store_backup_thread *backup; /* periodic index backups, or NULL */
	struct store_checkpointer *ckpt;    /* WAL checkpoints off the commit path, or NULL */
	struct guard *guard;          /* the connection guard, published as guard_process() */
	struct guard_nft_helper nft;  /* until the guard takes it over (fd -1: none) */

	bool shutting_down;
	uint64_t shutdown_started_ms;
	uint64_t drain_logged_ms;
};

/* ---- process set-up -------------------------------------------------------- */

static void server_raise_fd_limit(const struct settings *s)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
			log_warn("cannot raise the open-file limit to %llu: %s",
				 (unsigned long long)rl.rlim_max, strerror(errno));
	}
	uint64_t want = s->smtp_max_connections + SERVER_FD_RESERVE;
	if (rl.rlim_max != RLIM_INFINITY && (uint64_t)rl.rlim_max < want)
		log_warn("the open-file limit (%llu) is below smtp.max_connections + %d (%llu): busy "
			 "periods will see accept errors; raise it (systemd: LimitNOFILE=)",
			 (unsigned long long)rl.rlim_max, SERVER_FD_RESERVE, (unsigned long long)want);
}

static void server_init_process(const struct settings *s)
{
	if (evthread_use_pthreads() != 0) {
		/* Nothing has been logged yet: do it the plain way. */
		log_init("strata", false, LOG_LVL_ERROR);
		panic("libevent: cannot enable pthreads support");
	}
	signal(SIGPIPE, SIG_IGN);
	umask(027);
	log_init("strata", s->log_target == LOG_TARGET_SYSLOG, (enum log_level)s->log_level);
	fs_fault_init_from_env();
	server_raise_fd_limit(s);
}

/* ---- small helpers -------------------------------------------------------- */

/* Entries of srv->smtp_addrs (SMTP, then IMAP, IMAPS, POP3, POP3S,
 * SUBMISSION, SUBMISSIONS). */
static size_t server_n_listeners(const struct server *srv)
{
	return srv->n_smtp + srv->n_imap + srv->n_imaps + srv->n_pop3 + srv->n_pop3s + srv->n_sub + srv->n_subs;
}

static void server_addrs_text(const struct server_addr *a, size_t n, const char *prefix,
			      struct buf *out)
{
	for (size_t i = 0; i < n; i++)
		buf_printf(out, "%s%s%s", i ? ", " : "", prefix, a[i].text);
}

static void server_log_ready(const struct server *srv)
{
	struct buf smtp = BUF_INIT, admin = BUF_INIT, imap = BUF_INIT, pop3 = BUF_INIT, sub = BUF_INIT;
	const struct server_addr *a = srv->smtp_addrs;
	server_addrs_text(a, srv->n_smtp, "", &smtp);
	a += srv->n_smtp;
	server_addrs_text(a, srv->n_imap + srv->n_imaps, "", &imap);
	a += srv->n_imap + srv->n_imaps;
	server_addrs_text(a, srv->n_pop3 + srv->n_pop3s, "", &pop3);
	a += srv->n_pop3 + srv->n_pop3s;
	server_addrs_text(a, srv->n_sub + srv->n_subs, "", &sub);
	server_addrs_text(srv->admin_addrs, srv->n_admin, "http://", &admin);
	char user[64];
	struct passwd *pw = getpwuid(geteuid());
	if (pw != NULL)
		snprintf(user, sizeof(user), "%s", pw->pw_name);
	else
		snprintf(user, sizeof(user), "uid %u", (unsigned)geteuid());
	log_info("strata %s ready: smtp %s, imap %s, pop3 %s, submission %s (network threads: %zu mx, "
		 "%zu user), admin %s, state %s, user %s",
		 STRATA_VERSION, srv->n_smtp ? smtp.data : "off", srv->n_imap + srv->n_imaps ? imap.data : "off",
		 srv->n_pop3 + srv->n_pop3s ? pop3.data : "off", srv->n_sub + srv->n_subs ? sub.data : "off",
		 srv->n_mx_threads, srv->n_user_threads, srv->n_admin ? admin.data : "off", srv->cur->state_dir,
		 user);
	buf_free(&sub);
	buf_free(&smtp);
	buf_free(&imap);
	buf_free(&pop3);
	buf_free(&admin);
}

/* Names of the keys whose values differ between a and b (only the
 * non-reloadable ones when restart_only); NULL when none. */
static char *server_changed_keys(const struct settings *a, const struct settings *b, bool restart_only)
{
	size_t n;
	const struct config_key *keys = config_keys(&n);
	struct buf names = BUF_INIT, va = BUF_INIT, vb = BUF_INIT;
	for (size_t i = 0; i < n; i++) {
		if (restart_only && keys[i].reloadable)
			continue;
		buf_reset(&va);
		buf_reset(&vb);
		config_value_text(a, &keys[i], &va);
		config_value_text(b, &keys[i], &vb);
		if (strcmp(va.data ? va.data : "", vb.data ? vb.data : "") != 0)
			buf_printf(&names, "%s%s", names.len ? ", " : "", keys[i].name);
	}
	buf_free(&va);
	buf_free(&vb);
	if (names.len == 0) {
		buf_free(&names);
		return NULL;
	}
	return buf_steal(&names);
}

/* ---- shutdown ---------------------------------------------------------------- */

static void server_late_signal(int sig)
{
	(void)sig;
	static const char msg[] = "strata: signal during final clean-up: exiting at once\n";
	ssize_t w = write(STDERR_FILENO, msg, sizeof(msg) - 1);
	(void)w;
	_exit(1);
}

static void server_drain_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct server *srv = arg;
	size_t open;
	if (server_listener_drained(srv->net, &open)) {
		event_del(srv->drain_timer);
		event_base_loopbreak(srv->base);
		return;
	}
	uint64_t now = time_mono_ms();
	if (now - srv->shutdown_started_ms >= SERVER_DRAIN_LIMIT_MS) {
		log_error("%zu SMTP sessions still open %d s after shutdown began; exiting without them "
			  "(every message answered 250 is already durable)", open,
			  SERVER_DRAIN_LIMIT_MS / 1000);
		_exit(1);
	}
	if (now - srv->drain_logged_ms >= SERVER_DRAIN_LOG_MS) {
		srv->drain_logged_ms = now;
		log_info("waiting for %zu SMTP sessions to finish", open);
	}
}

static void server_begin_shutdown(struct server *srv, int sig)
{
	if (srv->shutting_down) {
		log_warn("%s again during shutdown: exiting at once", strsignal(sig));
		_exit(1);
	}
	srv->shutting_down = true;
	srv->shutdown_started_ms = srv->drain_logged_ms = time_mono_ms();
	log_info("shutting down (%s)", strsignal(sig));
	server_listener_shutdown(srv->net);
	srv->drain_timer = event_new(srv->base, -1, EV_PERSIST, server_drain_cb, srv);
	if (srv->drain_timer == NULL)
		panic("cannot allocate the shutdown timer");
	struct timeval tv = { 0, SERVER_DRAIN_POLL_MS * 1000 };
	event_add(srv->drain_timer, &tv);
}

/* ---- reload ------------------------------------------------------------------- */

/* Loads the file again with every non-reloadable key pinned (as an extra
 * -o) to its value in `cur`, so those keep their values while the
 * reloadable ones change.  NULL with *error_r on failure. */
static struct settings *server_load_pinned(struct server *srv, const struct settings *next,
					   char **error_r)
{
	size_t n_keys;
	const struct config_key *keys = config_keys(&n_keys);
	char **over = xreallocarray(NULL, srv->n_over + n_keys, sizeof(*over));
	size_t n = 0;
	for (size_t i = 0; i < srv->n_over; i++)
		over[n++] = xstrdup(srv->overrides[i]);
	struct buf va = BUF_INIT, vb = BUF_INIT;
	for (size_t i = 0; i < n_keys; i++) {
		if (keys[i].reloadable)
			continue;
		buf_reset(&va);
		buf_reset(&vb);
		config_value_text(srv->cur, &keys[i], &va);
		config_value_text(next, &keys[i], &vb);
		const char *old = va.data ? va.data : "";
		if (strcmp(old, vb.data ? vb.data : "") == 0)
			continue;
		/* Quotes keep a string exactly (the parser strips one pair). */
		over[n++] = keys[i].type == CFG_STRING ? xasprintf("%s=\"%s\"", keys[i].name, old)
						       : xasprintf("%s=%s", keys[i].name, old);
	}
	buf_free(&va);
	buf_free(&vb);
	struct settings *pinned = config_load(srv->config_path, over, n, error_r);
	for (size_t i = 0; i < n; i++)
		free(over[i]);
	free(over);
	return pinned;
}

static void server_reload(struct server *srv)
{
	if (srv->shutting_down) {
		log_info("SIGHUP ignored: shutting down");
		return;
	}
	/* Whatever the file says: the kernel set is rebuilt from the bans (an
	 * operator may have flushed the ruleset). */
	guard_nft_resync(srv->guard);
	char *err = NULL;
	struct settings *next = config_load(srv->config_path, srv->overrides, srv->n_over, &err);
	if (next == NULL) {
		log_error("reload failed, the current settings stay in effect: %s", err);
		free(err);
		return;
	}
	char *restart = NULL;
	if (config_needs_restart(srv->cur, next, &restart)) {
		log_warn("reload: %s changed; such settings take effect only after a restart and keep "
			 "their current values until then", restart);
		free(restart);
		struct settings *pinned = server_load_pinned(srv, next, &err);
		config_free(&next);
		if (pinned != NULL && config_needs_restart(srv->cur, pinned, &restart)) {
			log_error("reload: could not keep %s at the current values; nothing changed", restart);
			free(restart);
			config_free(&pinned);
			return;
		}
		if (pinned == NULL) {
			log_error("reload failed, the current settings stay in effect: %s", err);
			free(err);
			return;
		}
		next = pinned;
	}
	char *changed = server_changed_keys(srv->cur, next, false);
	if (changed == NULL) {
		log_info("reload: no reloadable setting changed");
		config_free(&next);
		return;
	}
	srv->reloaded = xreallocarray(srv->reloaded, srv->n_reloaded + 1, sizeof(*srv->reloaded));
	srv->reloaded[srv->n_reloaded++] = next;
	srv->cur = next;
	server_listener_set_settings(srv->net, next);
	char *guard_err = NULL;
	if (!guard_set_settings(srv->guard, next, &guard_err)) {
		log_error("reload: %s; the guard keeps its previous limits", guard_err);
		free(guard_err);
	}
	/* Logged under whichever of the old and new levels shows it. */
	bool shown_now = log_get_level() >= LOG_LVL_INFO;
	if (shown_now)
		log_info("reload: %s changed; in effect for new SMTP sessions", changed);
	log_set_level((enum log_level)next->log_level);
	if (!shown_now)
		log_info("reload: %s changed; in effect for new SMTP sessions", changed);
	free(changed);
}

static void server_signal_cb(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	struct server *srv = arg;
	if (sig == SIGHUP)
		server_reload(srv);
	else
		server_begin_shutdown(srv, (int)sig);
}

static const char *server_health(void *arg)
{
	const struct server *srv = arg;
	if (srv->shutting_down)
		return "shutting down";
	if (srv->queue == NULL)
		return "queue not running";
	return NULL;
}

/* ---- start-up steps (each returns false with *error_r) ----------------------- */

/* Appends the listeners of `list` to srv->smtp_addrs with `proto`. */
static bool server_append_addrs(struct server *srv, const char *list, const char *key, enum server_proto proto,
				size_t *n_r, char **error_r)
{
	struct server_addr *a = NULL;
	size_t n = 0;
	if (!server_addr_parse_list(list, key, &a, &n, error_r))
		return false;
	size_t have = server_n_listeners(srv);
	srv->smtp_addrs = xreallocarray(srv->smtp_addrs, have + n, sizeof(*a));
	for (size_t i = 0; i < n; i++) {
		a[i].proto = proto;
		srv->smtp_addrs[have + i] = a[i];
	}
	*n_r = n;
	free(a);
	return true;
}

static bool server_parse_addrs(struct server *srv, char **error_r)
{
	const struct settings *s = srv->cur;
	if (!server_addr_parse_list(s->smtp_listen, "smtp.listen", &srv->smtp_addrs, &srv->n_smtp, error_r) ||
	    !server_addr_parse_list(s->admin_listen, "admin.listen", &srv->admin_addrs, &srv->n_admin,
				    error_r))
		return false;
	/* IMAP, POP3 and submission listeners follow the SMTP ones in the same
	 * array, so the network threads bind and accept them all alike; proto
	 * tells them apart (and the pool that serves them). */
	if (!server_append_addrs(srv, s->imap_listen, "imap.listen", SERVER_PROTO_IMAP, &srv->n_imap, error_r) ||
	    !server_append_addrs(srv, s->imaps_listen, "imaps.listen", SERVER_PROTO_IMAPS, &srv->n_imaps,
				 error_r) ||
	    !server_append_addrs(srv, s->pop3_listen, "pop3.listen", SERVER_PROTO_POP3, &srv->n_pop3, error_r) ||
	    !server_append_addrs(srv, s->pop3s_listen, "pop3s.listen", SERVER_PROTO_POP3S, &srv->n_pop3s,
				 error_r) ||
	    !server_append_addrs(srv, s->submission_listen, "submission.listen", SERVER_PROTO_SUBMISSION,
				 &srv->n_sub, error_r) ||
	    !server_append_addrs(srv, s->submissions_listen, "submissions.listen", SERVER_PROTO_SUBMISSIONS,
				 &srv->n_subs, error_r))
		return false;
	/* An empty smtp.listen is a node that serves users only (MX elsewhere). */
	if (server_n_listeners(srv) == 0) {
		*error_r = xstrdup("smtp.listen, imap(s).listen, pop3(s).listen and submission(s).listen are all "
				   "empty: nothing to listen on");
		return false;
	}
	/* A pool without listeners gets no thread. */
	size_t n_user = server_n_listeners(srv) - srv->n_smtp;
	srv->n_mx_threads = srv->n_smtp > 0 ? (size_t)s->threads : 0;
	srv->n_user_threads = n_user == 0 ? 0 : s->threads_user > 0 ? (size_t)s->threads_user : (size_t)s->threads;
	return true;
}

static bool server_prepare_state(struct server *srv, char **error_r)
{
	const struct settings *s = srv->cur;
	srv->as_root = geteuid() == 0;
	if (srv->as_root && !server_privilege_lookup(s->user, &srv->user, error_r))
		return false;
	if (!fs_mkdir_p(s->state_dir, 0750)) {
		*error_r = xasprintf("cannot create state_dir %s: %s", s->state_dir, strerror(errno));
		return false;
	}
	return !srv->as_root || server_privilege_check_state_dir(s, error_r);
}

static bool server_open_tls(struct server *srv, char **error_r)
{
	char *err = NULL;
	srv->tls = tls_context_new(srv->cur, &err);
	if (srv->tls == NULL) {
		*error_r = xasprintf("TLS: %s", err);
		free(err);
		return false;
	}
	return true;
}

static bool server_bind(struct server *srv, char **error_r)
{
	srv->net = server_listener_bind(srv->smtp_addrs, server_n_listeners(srv), srv->n_mx_threads,
					 srv->n_user_threads, error_r);
	if (srv->net == NULL)
		return false;
	srv->admin = server_admin_bind(srv->base, srv->admin_addrs, srv->n_admin, error_r);
	return srv->admin != NULL;
}

/* The privileged nft helper for the kernel mirror of the bans, forked while
 * the process is still root and single-threaded; its drop rule covers the
 * ports the listeners got (guard.nft.ports aside).  A bad guard.nft.*
 * setting fails the start; a failed fork only costs the mirror. */
static bool server_start_nft_helper(struct server *srv, char **error_r)
{
	srv->nft.fd = srv->nft.pid = -1;
	if (!srv->cur->guard_nft_enabled)
		return true;
	size_t n = server_n_listeners(srv);
	uint16_t *ports = xreallocarray(NULL, n + 1, sizeof(*ports));
	for (size_t i = 0; i < n; i++) {
		const struct sockaddr_storage *ss = &srv->smtp_addrs[i].ss;
		ports[i] = ntohs(ss->ss_family == AF_INET6 ? ((const struct sockaddr_in6 *)ss)->sin6_port
							  : ((const struct sockaddr_in *)ss)->sin_port);
	}
	struct guard_nft_names names;
	bool ok = guard_nft_names_parse(srv->cur, ports, n, &names, error_r);   /* a typo fails the start */
	char *err = NULL;
	if (ok && !guard_nft_helper_start(srv->cur, ports, n, srv->as_root, srv->user.uid, srv->user.gid, &srv->nft,
					  &err)) {
		log_warn("guard: %s; bans are enforced in user space only", err);
		free(err);
	}
	free(ports);
	return ok;
}

static bool server_drop_privileges(struct server *srv, char **error_r)
{
	if (!server_start_nft_helper(srv, error_r))
		return false;
	if (!srv->as_root)
		return true;
	if (!server_privilege_chown_state(srv->cur, &srv->user, error_r) ||
	    !server_privilege_drop(&srv->user, error_r))
		return false;
	if (access(srv->cur->state_dir, R_OK | W_OK | X_OK) != 0) {
		*error_r = xasprintf("state_dir %s is not usable by user %s: %s (every parent directory "
				     "must be searchable by it)", srv->cur->state_dir, srv->user.name,
				     strerror(errno));
		return false;
	}
	return true;
}

/* After the last privileged step (the nft helper is forked, the user
 * switched) and before any network input is read. */
static bool server_restrict_calls(struct server *srv, char **error_r)
{
	if (!srv->cur->seccomp)
		return true;
	char *err = NULL;
	if (!server_seccomp_apply(&err)) {
		*error_r = xasprintf("%s (set seccomp = no to run without the filter)", err);
		free(err);
		return false;
	}
	return true;
}

static bool server_open_store(struct server *srv, char **error_r)
{
	const struct settings *s = srv->cur;
	/* A lost or damaged index is rebuilt before anything opens it. */
	if (!store_recover_index(s, error_r))
		return false;
	queue_recover(s);
	char *err = NULL;
	if (store_checkpoint_start(s, &srv->ckpt, &err) != ST_OK) {
		*error_r = xasprintf("cannot start the WAL checkpointer: %s", err ? err : "unknown error");
		free(err);
		return false;
	}
	srv->store = store_open(s, true, &err);
	if (srv->store == NULL) {
		*error_r = xasprintf("cannot open the index: %s", err ? err : "unknown error");
		free(err);
		return false;
	}
	srv->queue = queue_start(s, srv->store, &err);
	if (srv->queue == NULL) {
		*error_r = xasprintf("cannot start the queue: %s", err ? err : "unknown error");
		free(err);
		return false;
	}
	srv->relay = relay_start(s, &err);
	if (srv->relay == NULL) {
		*error_r = xasprintf("cannot start the relay: %s", err ? err : "unknown error");
		free(err);
		return false;
	}
	queue_set_outbound_cb(srv->queue, relay_wake, srv->relay);
	srv->tier = tier_mover_start(s, &err);
	if (srv->tier == NULL) {
		*error_r = xasprintf("cannot start the tier mover: %s", err ? err : "unknown error");
		free(err);
		return false;
	}
	struct store *admin_store = NULL;
	if (srv->n_admin > 0) {
		admin_store = store_open(s, false, &err);
		if (admin_store == NULL) {
			*error_r = xasprintf("cannot open the index for the admin endpoint: %s",
					     err ? err : "unknown error");
			free(err);
			return false;
		}
	}
	server_admin_start(srv->admin, admin_store, server_health, srv);
	srv->backup = store_backup_start(s);
	return true;
}

/* The verified-password cache (src/auth/auth_cache.c): after the privilege
 * drop (the nft helper forked as root never holds its key) and before any
 * login can run; freed once every thread is joined. */
static bool server_open_auth_cache(struct server *srv, char **error_r)
{
	const struct settings *s = srv->cur;
	return auth_cache_init((size_t)s->auth_cache_size, s->auth_cache_ttl_ms, error_r);
}

/* The connection guard (src/guard), published for every listener's accept
 * callback before the network threads start; freed after they are joined
 * and their sessions (which hold its tickets) are freed. */
static bool server_open_guard(struct server *srv, char **error_r)
{
	srv->guard = guard_new(srv->cur, error_r);
	if (srv->guard == NULL)
		return false;
	/* Bans and run-time allowlist entries from before the restart; a bad
	 * file must not keep mail out: warn and start without it. */
	char *err = NULL;
	if (!guard_state_load(srv->guard, srv->cur->state_dir, time_mono_ms(), &err)) {
		log_warn("guard: %s; starting without the saved bans and allowlist entries", err);
		free(err);
	}
	guard_process_set(srv->guard);
	guard_nft_start(srv->guard, &srv->nft);   /* takes the helper over */
	return true;
}

static bool server_add_signals(struct server *srv, char **error_r)
{
	srv->sig_term = evsignal_new(srv->base, SIGTERM, server_signal_cb, srv);
	srv->sig_int = evsignal_new(srv->base, SIGINT, server_signal_cb, srv);
	srv->sig_hup = evsignal_new(srv->base, SIGHUP, server_signal_cb, srv);
	if (srv->sig_term == NULL || srv->sig_int == NULL || srv->sig_hup == NULL ||
	    evsignal_add(srv->sig_term, NULL) != 0 || evsignal_add(srv->sig_int, NULL) != 0 ||
	    evsignal_add(srv->sig_hup, NULL) != 0) {
		*error_r = xstrdup("cannot install signal handlers");
		return false;
	}
	return true;
}

/* Tears down whatever was built, in dependency order; safe on a partial
 * start-up. */
static void server_cleanup(struct server *srv)
{
	/* The libevent handlers no longer run once the loop has ended. */
	signal(SIGTERM, server_late_signal);
	signal(SIGINT, server_late_signal);
	signal(SIGHUP, SIG_IGN);
	if (srv->net != NULL)
		server_listener_join(srv->net);
	store_backup_stop(&srv->backup);
	if (srv->queue != NULL)
		queue_set_outbound_cb(srv->queue, NULL, NULL);
	relay_stop(&srv->relay);
	queue_stop(&srv->queue);
	tier_mover_stop(&srv->tier);
	server_listener_free(&srv->net);
	auth_cache_free();   /* no thread left that verifies passwords */
	guard_process_set(NULL);
	char *guard_err = NULL;
	if (srv->guard != NULL && !guard_state_save(srv->guard, time_mono_ms(), &guard_err)) {
		log_error("guard: %s", guard_err);
		free(guard_err);
	}
	/* The kernel table goes with the daemon; the bans are in the state file. */
	if (srv->guard != NULL)
		guard_nft_stop(srv->guard, true);
	guard_nft_helper_stop(&srv->nft);   /* one never handed over */
	guard_free(&srv->guard);
	/* Every thread that commits is joined: the final checkpoint runs alone. */
	store_checkpoint_stop(&srv->ckpt);
	store_close(&srv->store);
	server_admin_free(&srv->admin);
	struct event **evs[] = { &srv->sig_term, &srv->sig_int, &srv->sig_hup, &srv->drain_timer };
	for (size_t i = 0; i < ARRAY_LEN(evs); i++) {
		if (*evs[i] != NULL) {
			event_free(*evs[i]);
			*evs[i] = NULL;
		}
	}
	if (srv->tls != NULL)
		SSL_CTX_free(srv->tls);
	for (size_t i = 0; i < srv->n_reloaded; i++)
		config_free(&srv->reloaded[i]);
	free(srv->reloaded);
	free(srv->smtp_addrs);
	free(srv->admin_addrs);
	if (srv->base != NULL)
		event_base_free(srv->base);
	libevent_global_shutdown();
}

int server_run(struct settings *s, const char *config_path, char *const *overrides, size_t n_over)
{
	struct server srv = { .config_path = config_path, .overrides = overrides, .n_over = n_over,
			      .cur = s, .nft = { .pid = -1, .fd = -1 } };
	server_init_process(s);
	char *err = NULL;
	srv.base = event_base_new();
	if (srv.base == NULL)
		err = xstrdup("cannot create the main event loop");
	bool ok = err == NULL && server_add_signals(&srv, &err) && server_parse_addrs(&srv, &err) &&
		  server_prepare_state(&srv, &err) && server_open_tls(&srv, &err) &&
		  server_bind(&srv, &err) && server_drop_privileges(&srv, &err) &&
		  server_restrict_calls(&srv, &err) && server_open_auth_cache(&srv, &err) &&
		  server_open_store(&srv, &err) && server_open_guard(&srv, &err) &&
		  server_listener_start(srv.net, s, srv.queue, srv.tls, &err);
	if (!ok) {
		log_error("%s", err);
		free(err);
		server_cleanup(&srv);
		return 1;
	}
	server_log_ready(&srv);
	if (event_base_dispatch(srv.base) < 0)
		log_error("main event loop failed");
	server_cleanup(&srv);
	log_info("stopped");
	return 0;
}
