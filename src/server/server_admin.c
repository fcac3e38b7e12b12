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
 *   others    404; methods other than GET and HEAD get 405 with Allow.
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

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "metrics.h"

#define ADMIN_STATS_TTL_MS 5000
#define ADMIN_MAX_HEADERS 8192
#define ADMIN_MAX_BODY 4096
#define ADMIN_TIMEOUT_S 10

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

static void admin_request_cb(struct evhttp_request *req, void *arg)
{
	struct server_admin *a = arg;
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
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
}

void server_admin_free(struct server_admin **ap)
{
	struct server_admin *a = *ap;
	if (a == NULL)
		return;
	if (a->http != NULL)
		evhttp_free(a->http);
	if (a->store != NULL)
		store_close(&a->store);
	free(a);
	*ap = NULL;
}
