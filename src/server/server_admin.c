/*
 * server_admin.c - the admin HTTP endpoint (admin.listen; keep it on
 * loopback): GET /metrics and GET /health.
 *
 *   /metrics  Prometheus text format 0.0.4: every registered metric
 *             (metrics_render), then figures computed at scrape time:
 *             strata_build_info{version}, strata_uptime_seconds and the
 *             index counts from store_stats (strata_index_*), which are
 *             cached for ADMIN_STATS_TTL_MS because counting a large index
 *             is not free and scrapers can be many.
 *   /health   200 "ok\n" when the daemon is running (the queue accepts
 *             work) and the index answers a query now; else 503 with the
 *             reason as the body.  Load balancers and monitors poll this.
 *   /guard/status        GET: the connection guard's report as JSON
 *                        (guard_status); ?format=text for the text the CLI
 *                        prints.
 *   /guard/ban           POST address=ADDR[&duration=DURATION] (default 1h)
 *   /guard/unban         POST address=ADDR: lifts the ban at once
 *   /guard/allow         POST address=ADDR-or-CIDR: run-time allowlist
 *                        (form-encoded bodies; `strata guard` uses them).
 *                        /guard/... answers only clients on loopback (403
 *                        otherwise), whatever admin.listen says, and a
 *                        change must carry the header "X-Strata-Guard: 1"
 *                        (a web page cannot send it cross-origin without
 *                        a CORS preflight, which is never granted).  Changes
 *                        are saved to the state directory at once, and the
 *                        guard's state every ADMIN_GUARD_SAVE_S seconds.
 *   others    404; other methods get 405 with Allow.
 *
 * Threads: evhttp runs on the main thread's event_base, and so does the
 * store handle used here (the admin's own read-write handle, opened after
 * the privilege drop; with WAL it never blocks the committer's writes).
 * The sockets are bound earlier, as root, like every listener.
 *
 * Limits: request headers 8 KiB, bodies 4 KiB, 10 s idle timeout per
 * connection (evhttp), so a stuck client cannot pin memory.
 */
#include "server_int.h"
#include "tier.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <unistd.h>

#include "metrics.h"

#define ADMIN_STATS_TTL_MS 5000
#define ADMIN_MAX_HEADERS 8192
#define ADMIN_MAX_BODY 4096
#define ADMIN_TIMEOUT_S 10
#define ADMIN_GUARD_SAVE_S 60
#define ADMIN_BAN_DEFAULT_S 3600
#define ADMIN_BAN_MAX_MS (365ull * 86400000ull)

struct server_admin {
	struct event_base *base;
	struct evhttp *http;
	struct store *store;
	server_health_cb *health;
	void *health_arg;
	uint64_t started_ms;
	struct store_stats stats;
	uint64_t stats_at_ms;
	bool stats_valid;
	struct event *guard_save_ev;   /* saves the guard's bans every ADMIN_GUARD_SAVE_S */
};

static void admin_reply(struct evhttp_request *req, int code, const char *reason,
			const char *content_type, const char *body, size_t len)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	evhttp_add_header(h, "Content-Type", content_type);
	evhttp_add_header(h, "Cache-Control", "no-store");
	if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
		/* The headers a GET would get, without the body. */
		char n[32];
		snprintf(n, sizeof(n), "%zu", len);
		evhttp_add_header(h, "Content-Length", n);
		evhttp_send_reply(req, code, reason, NULL);
		return;
	}
	struct evbuffer *b = evbuffer_new();
	if (b == NULL) {
		evhttp_send_error(req, 500, NULL);
		return;
	}
	evbuffer_add(b, body, len);
	evhttp_send_reply(req, code, reason, b);
	evbuffer_free(b);
}

static void admin_text(struct evhttp_request *req, int code, const char *reason, const char *text)
{
	admin_reply(req, code, reason, "text/plain; charset=utf-8", text, strlen(text));
}

/* Index counts, at most ADMIN_STATS_TTL_MS old.  False when the index does
 * not answer. */
static bool admin_stats(struct server_admin *a, struct store_stats *out)
{
	if (a->store == NULL)
		return false;
	uint64_t now = time_mono_ms();
	if (!a->stats_valid || now - a->stats_at_ms >= ADMIN_STATS_TTL_MS) {
		enum status st = store_stats(a->store, &a->stats);
		a->stats_valid = st == ST_OK;
		a->stats_at_ms = now;
		if (st != ST_OK)
			log_warn("admin: index statistics unavailable: %s", status_info(st)->name);
	}
	*out = a->stats;
	return a->stats_valid;
}

static void admin_gauge(struct buf *out, const char *name, const char *help, uint64_t value)
{
	buf_printf(out, "# HELP %s %s\n# TYPE %s gauge\n%s %llu\n", name, help, name, name,
		   (unsigned long long)value);
}

static void admin_metrics(struct server_admin *a, struct evhttp_request *req)
{
	struct buf out = BUF_INIT;
	metrics_render(&out);
	tier_admin_metrics(&out);
	buf_printf(&out, "# HELP strata_build_info Strata version\n# TYPE strata_build_info gauge\n"
			 "strata_build_info{version=\"%s\"} 1\n", STRATA_VERSION);
	admin_gauge(&out, "strata_uptime_seconds", "Seconds since the daemon started",
		    (time_mono_ms() - a->started_ms) / 1000);
	struct store_stats st;
	bool ok = admin_stats(a, &st);
	admin_gauge(&out, "strata_index_up", "1 if the index answered the last statistics query", ok);
	if (ok) {
		admin_gauge(&out, "strata_index_domains", "Local domains", st.domains);
		admin_gauge(&out, "strata_index_accounts", "Mail accounts", st.accounts);
		admin_gauge(&out, "strata_index_aliases", "Aliases", st.aliases);
		admin_gauge(&out, "strata_index_mailboxes", "Mailboxes", st.mailboxes);
		admin_gauge(&out, "strata_index_messages", "Messages in all mailboxes", st.messages);
		admin_gauge(&out, "strata_index_blobs", "Message blob files", st.blobs);
		admin_gauge(&out, "strata_index_blob_bytes", "Bytes in message blob files", st.blob_bytes);
	}
	admin_reply(req, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", out.data, out.len);
	buf_free(&out);
}

static void admin_count_cb(void *ctx, const char *name)
{
	(void)name;
	(*(uint64_t *)ctx)++;
}

static void admin_health(struct server_admin *a, struct evhttp_request *req)
{
	const char *reason = a->health ? a->health(a->health_arg) : NULL;
	if (reason == NULL && a->store == NULL)
		reason = "starting";
	uint64_t domains = 0;
	/* A real query against the index (the domain table is small). */
	if (reason == NULL && store_domain_list(a->store, admin_count_cb, &domains) != ST_OK)
		reason = "index not answering";
	if (reason != NULL) {
		char body[128];
		snprintf(body, sizeof(body), "%s\n", reason);
		admin_text(req, 503, "Service Unavailable", body);
		return;
	}
	admin_text(req, 200, "OK", "ok\n");
}

/* ---- /guard/... ----------------------------------------------------------------------- */

static bool admin_peer_is_loopback(struct evhttp_request *req)
{
	struct evhttp_connection *conn = evhttp_request_get_connection(req);
	const struct sockaddr *sa = conn != NULL ? evhttp_connection_get_addr(conn) : NULL;
	struct guard_addr a;
	if (sa == NULL || !guard_addr_from_sockaddr(sa, sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
										 : sizeof(struct sockaddr_in), &a))
		return false;
	static const uint8_t v6_loopback[16] = { [15] = 1 };
	return a.family == 4 ? a.b[0] == 127 : memcmp(a.b, v6_loopback, 16) == 0;
}

/* The form-encoded body of a POST (at most ADMIN_MAX_BODY bytes, evhttp's
 * limit) parsed into q; false when it does not parse. */
static bool admin_form(struct evhttp_request *req, struct evkeyvalq *q)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in);
	if (len > ADMIN_MAX_BODY)
		return false;
	char body[ADMIN_MAX_BODY + 1];
	evbuffer_copyout(in, body, len);
	body[len] = '\0';
	return evhttp_parse_query_str(body, q) == 0;
}

static void admin_guard_saved(struct guard *g)
{
	char *err = NULL;
	if (!guard_state_save(g, time_mono_ms(), &err)) {
		log_error("guard: %s", err);
		free(err);
	}
}

static void admin_guard_change(struct evhttp_request *req, struct guard *g, const char *what)
{
	struct evkeyvalq q;
	TAILQ_INIT(&q);
	const char *addr = NULL, *duration = NULL;
	if (admin_form(req, &q)) {
		addr = evhttp_find_header(&q, "address");
		duration = evhttp_find_header(&q, "duration");
	}
	char msg[256];
	int code = 200;
	struct guard_addr a;
	uint64_t ms = ADMIN_BAN_DEFAULT_S * 1000ull;
	if (addr == NULL || *addr == '\0') {
		code = 400;
		snprintf(msg, sizeof(msg), "missing address\n");
	} else if (strcmp(what, "allow") == 0) {
		char *err = NULL;
		bool ok = guard_allow_add(g, addr, &err);
		code = ok ? 200 : 400;
		snprintf(msg, sizeof(msg), ok ? "allowed %.100s\n" : "%.200s\n", ok ? addr : err);
		if (ok) {
			metric_inc(M_GUARD_ADMIN_ALLOW);
			log_info("guard: %s allowlisted by the administrator", addr);
		}
		free(err);
	} else if (!guard_addr_parse(addr, &a)) {
		code = 400;
		snprintf(msg, sizeof(msg), "not an address: %.100s\n", addr);
	} else if (strcmp(what, "unban") == 0) {
		bool lifted = guard_unban(g, &a);
		code = lifted ? 200 : 404;
		snprintf(msg, sizeof(msg), lifted ? "unbanned %.100s\n" : "%.100s was not banned\n", addr);
		if (lifted) {
			metric_inc(M_GUARD_ADMIN_UNBAN);
			log_info("guard: %s unbanned by the administrator", addr);
		}
	} else if (duration != NULL && (!str_parse_duration_ms(duration, &ms) || ms < 1000 || ms > ADMIN_BAN_MAX_MS)) {
		code = 400;
		snprintf(msg, sizeof(msg), "not a duration from 1s to 365d: %.100s\n", duration);
	} else {
		guard_ban(g, &a, ms / 1000, time_mono_ms());
		metric_inc(M_GUARD_ADMIN_BAN);
		snprintf(msg, sizeof(msg), "banned %.100s for %llus%s\n", addr, (unsigned long long)(ms / 1000),
			 guard_is_allowed(g, &a) ? " (allowlisted: the allowlist wins while it lists it)" : "");
		log_info("guard: %s banned by the administrator for %llus", addr, (unsigned long long)(ms / 1000));
	}
	evhttp_clear_headers(&q);
	if (code == 200)
		admin_guard_saved(g);
	admin_text(req, code, code == 200 ? "OK" : code == 404 ? "Not Found" : "Bad Request", msg);
}

static void admin_guard(struct evhttp_request *req, const char *path, const struct evhttp_uri *uri)
{
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	struct guard *g = guard_process();
	bool status = strcmp(path, "/guard/status") == 0;
	bool change = strcmp(path, "/guard/ban") == 0 || strcmp(path, "/guard/unban") == 0 ||
		      strcmp(path, "/guard/allow") == 0;
	if (!status && !change) {
		admin_text(req, 404, "Not Found", "not found\n");
	} else if (!admin_peer_is_loopback(req)) {
		admin_text(req, 403, "Forbidden", "the guard is managed from loopback only\n");
	} else if ((status && cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) || (change && cmd != EVHTTP_REQ_POST)) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", status ? "GET, HEAD" : "POST");
		admin_text(req, 405, "Method Not Allowed", "method not allowed\n");
	} else if (change && evhttp_find_header(evhttp_request_get_input_headers(req), "X-Strata-Guard") == NULL) {
		admin_text(req, 403, "Forbidden", "a change needs the header X-Strata-Guard: 1\n");
	} else if (g == NULL) {
		admin_text(req, 503, "Service Unavailable", "the guard is not running\n");
	} else if (change) {
		admin_guard_change(req, g, path + strlen("/guard/"));
	} else {
		const char *query = evhttp_uri_get_query(uri);
		bool text = query != NULL && strcmp(query, "format=text") == 0;
		struct buf out = BUF_INIT;
		guard_status(g, time_mono_ms(), !text, &out);
		admin_reply(req, 200, "OK", text ? "text/plain; charset=utf-8" : "application/json", out.data, out.len);
		buf_free(&out);
	}
}

static void admin_guard_save_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	struct guard *g = guard_process();
	if (g != NULL)
		admin_guard_saved(g);
}

static void admin_request_cb(struct evhttp_request *req, void *arg)
{
	struct server_admin *a = arg;
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	const struct evhttp_uri *guri = evhttp_request_get_evhttp_uri(req);
	const char *gpath = guri ? evhttp_uri_get_path(guri) : NULL;
	if (gpath != NULL && strncmp(gpath, "/guard/", 7) == 0) {
		admin_guard(req, gpath, guri);
		return;
	}
	if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
		admin_text(req, 405, "Method Not Allowed", "method not allowed\n");
		return;
	}
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	if (path != NULL && strcmp(path, "/metrics") == 0)
		admin_metrics(a, req);
	else if (path != NULL && strcmp(path, "/health") == 0)
		admin_health(a, req);
	else if (path != NULL && strcmp(path, "/tier/status") == 0) {
		struct buf b = BUF_INIT;
		tier_admin_status(&b, time_mono_ms());
		admin_reply(req, 200, "OK", "text/plain; charset=utf-8", b.data, b.len);
		buf_free(&b);
	}
	else
		admin_text(req, 404, "Not Found", "not found\n");
}

struct server_admin *server_admin_bind(struct event_base *base, struct server_addr *addrs, size_t n,
				       char **error_r)
{
	struct server_admin *a = xcalloc(1, sizeof(*a));
	a->base = base;
	a->started_ms = time_mono_ms();
	if (n == 0)
		return a;
	a->http = evhttp_new(base);
	if (a->http == NULL) {
		*error_r = xstrdup("admin endpoint: cannot create the HTTP server");
		free(a);
		return NULL;
	}
	/* Every method reaches our callback, which answers 405 itself (libevent
	 * would answer 501 to the ones not allowed here). */
	evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
					    EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
					    EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
	evhttp_set_max_headers_size(a->http, ADMIN_MAX_HEADERS);
	evhttp_set_max_body_size(a->http, ADMIN_MAX_BODY);
	evhttp_set_timeout(a->http, ADMIN_TIMEOUT_S);
	evhttp_set_gencb(a->http, admin_request_cb, a);
	for (size_t i = 0; i < n; i++) {
		int fd;
		char *err = NULL;
		if (!server_addr_listen(&addrs[i], 1, false, &fd, &err)) {
			*error_r = xasprintf("admin endpoint: %s", err);
			free(err);
			server_admin_free(&a);
			return NULL;
		}
		if (evhttp_accept_socket_with_handle(a->http, fd) == NULL) {
			close(fd);
			*error_r = xasprintf("admin endpoint: cannot serve HTTP on %s", addrs[i].text);
			server_admin_free(&a);
			return NULL;
		}
	}
	return a;
}

void server_admin_start(struct server_admin *a, struct store *st, server_health_cb *health, void *arg)
{
	a->store = st;
	a->health = health;
	a->health_arg = arg;
	if (a->http != NULL) {
		a->guard_save_ev = event_new(a->base, -1, EV_PERSIST, admin_guard_save_cb, a);
		struct timeval tv = { ADMIN_GUARD_SAVE_S, 0 };
		if (a->guard_save_ev == NULL || event_add(a->guard_save_ev, &tv) != 0)
			panic("admin: cannot start the guard's save timer");
	}
}

void server_admin_free(struct server_admin **ap)
{
	struct server_admin *a = *ap;
	if (a == NULL)
		return;
	if (a->http != NULL)
		evhttp_free(a->http);
	if (a->guard_save_ev != NULL)
		event_free(a->guard_save_ev);
	if (a->store != NULL)
		store_close(&a->store);
	free(a);
	*ap = NULL;
}
