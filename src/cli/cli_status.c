/*
 * cli_status.c - `strata status`: the daemon's metrics, then the index.
 *
 * The daemon is asked over its admin endpoint: the first address of
 * admin.listen, GET /metrics with a minimal blocking HTTP/1.0 client (one
 * TCP connection, "Connection: close", the body ends at EOF).  The address
 * must be loopback (a wildcard address is asked on its loopback
 * counterpart); the whole exchange has a 2 s deadline and the answer is
 * capped at STATUS_MAX_RESPONSE bytes, so a wedged or hostile listener
 * cannot hang or bloat the command.
 *
 * The summary is computed from the Prometheus text: counters by name,
 * rejections by their reason label, the mean group-commit size as
 * _sum/_count of its histogram, and accept-latency quantiles interpolated
 * linearly inside the histogram bucket that holds the rank (the method of
 * Prometheus' histogram_quantile).
 *
 * Exit: 0 daemon answered; 3 no answer (the index figures are printed
 * anyway); 1 other errors.
 */
#include "cli.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define STATUS_TIMEOUT_MS 2000
#define STATUS_MAX_BUCKETS 64

/* The first entry of admin.listen, as configured, for messages. */
static void admin_text(const char *list, char *out, size_t outlen)
{
	size_t n = strcspn(list, ",");
	snprintf(out, outlen, "%.*s", (int)n, list);
}

/* ---- reading the Prometheus text ------------------------------------------ */

/* Value of the sample whose name (with labels) is exactly `name`. */
static bool sample(const char *body, const char *name, double *out)
{
	size_t n = strlen(name);
	for (const char *p = body; p != NULL && *p; ) {
		if (strncmp(p, name, n) == 0 && p[n] == ' ') {
			char *end;
			double v = strtod(p + n + 1, &end);
			if (end == p + n + 1)
				return false;
			*out = v;
			return true;
		}
		p = strchr(p, '\n');
		if (p)
			p++;
	}
	return false;
}

static double sample_or_zero(const char *body, const char *name)
{
	double v = 0;
	return sample(body, name, &v) ? v : 0;
}

struct bucket {
	double le;
	double cum;
};

/* Buckets of histogram `base` in text order (cumulative counts). */
static size_t buckets(const char *body, const char *base, struct bucket *b, size_t max)
{
	char prefix[128];
	snprintf(prefix, sizeof(prefix), "%s_bucket{le=\"", base);
	size_t plen = strlen(prefix), n = 0;
	for (const char *p = body; p != NULL && *p && n < max; ) {
		if (strncmp(p, prefix, plen) == 0) {
			const char *q = p + plen;
			double le = strncmp(q, "+Inf\"", 5) == 0 ? INFINITY : strtod(q, NULL);
			const char *sp = strchr(q, ' ');
			const char *nl = strchr(q, '\n');
			if (sp && (!nl || sp < nl)) {
				b[n].le = le;
				b[n].cum = strtod(sp + 1, NULL);
				n++;
			}
		}
		p = strchr(p, '\n');
		if (p)
			p++;
	}
	return n;
}

/* Estimates quantile q.  Returns false when the histogram is empty;
 * *beyond is set when the rank falls in the +Inf bucket (the value is then
 * the last finite bound). */
static bool estimate_quantile(const struct bucket *b, size_t n, double q, double *out, bool *beyond)
{
	*beyond = false;
	if (n == 0 || b[n - 1].cum <= 0)
		return false;
	double rank = q * b[n - 1].cum;
	double prev_le = 0, prev_cum = 0;
	for (size_t i = 0; i < n; i++) {
		if (b[i].cum >= rank) {
			if (isinf(b[i].le)) {
				*beyond = true;
				*out = prev_le;
				return true;
			}
			double in_bucket = b[i].cum - prev_cum;
			double frac = in_bucket > 0 ? (rank - prev_cum) / in_bucket : 1;
			*out = prev_le + (b[i].le - prev_le) * frac;
			return true;
		}
		prev_le = b[i].le;
		prev_cum = b[i].cum;
	}
	*out = prev_le;
	*beyond = true;
	return true;
}

static void latency_text(double seconds, bool beyond, char *out, size_t outlen)
{
	const char *gt = beyond ? "> " : "";
	if (seconds < 1)
		snprintf(out, outlen, "%s%.1f ms", gt, seconds * 1000);
	else
		snprintf(out, outlen, "%s%.2f s", gt, seconds);
}

static void print_rejections(const char *body)
{
	static const char prefix[] = "strata_smtp_rejected_total{reason=\"";
	double total = 0;
	struct buf detail = BUF_INIT;
	size_t rows = 0;
	for (const char *p = body; p != NULL && *p && rows < 64; ) {
		if (strncmp(p, prefix, sizeof(prefix) - 1) == 0) {
			const char *r = p + sizeof(prefix) - 1;
			const char *q = strchr(r, '"');
			const char *nl = strchr(r, '\n');
			if (q && (!nl || q < nl) && strncmp(q, "\"} ", 3) == 0) {
				double v = strtod(q + 3, NULL);
				total += v;
				if (v > 0)
					buf_printf(&detail, "%s%.*s %.0f", detail.len ? ", " : "", (int)(q - r), r, v);
				rows++;
			}
		}
		p = strchr(p, '\n');
		if (p)
			p++;
	}
	printf("  %-22s %.0f", "rejections:", total);
	if (detail.len)
		printf(" (%s)", detail.data);
	printf("\n");
	buf_free(&detail);
}

static void print_daemon(const char *admin, const char *body)
{
	printf("daemon: running (admin endpoint %s)\n", admin);
	printf("  %-22s %.0f\n", "sessions active:", sample_or_zero(body, "strata_smtp_sessions_active"));
	printf("  %-22s %.0f\n", "connections:", sample_or_zero(body, "strata_smtp_connections_total"));
	printf("  %-22s %.0f\n", "messages accepted:",
	       sample_or_zero(body, "strata_smtp_messages_accepted_total"));
	print_rejections(body);
	double batches = sample_or_zero(body, "strata_store_commits_total");
	double bsum = sample_or_zero(body, "strata_store_commit_batch_size_sum");
	double bcount = sample_or_zero(body, "strata_store_commit_batch_size_count");
	printf("  %-22s %.0f", "group commits:", batches);
	if (bcount > 0)
		printf(", mean batch %.1f deliveries", bsum / bcount);
	printf("\n");
	struct bucket b[STATUS_MAX_BUCKETS];
	size_t n = buckets(body, "strata_smtp_accept_latency_seconds", b, ARRAY_LEN(b));
	double p50, p99;
	bool beyond50, beyond99;
	if (estimate_quantile(b, n, 0.50, &p50, &beyond50) && estimate_quantile(b, n, 0.99, &p99, &beyond99)) {
		char t50[32], t99[32];
		latency_text(p50, beyond50, t50, sizeof(t50));
		latency_text(p99, beyond99, t99, sizeof(t99));
		printf("  %-22s p50 %s, p99 %s (estimated from histogram buckets)\n", "accept latency:", t50, t99);
	} else {
		printf("  %-22s no messages yet\n", "accept latency:");
	}
	printf("  %-22s %.0f\n", "queue pending:", sample_or_zero(body, "strata_queue_pending"));
}

static int print_index(struct cli *c)
{
	if (!cli_open_store(c))
		return CLI_ERROR;
	struct store_stats ss;
	enum status st = store_stats(c->st, &ss);
	if (st != ST_OK)
		return cli_error("cannot read index figures: %s", status_info(st)->smtp_text);
	char bytes[32];
	cli_format_size(ss.blob_bytes, bytes, sizeof(bytes));
	printf("index: %s\n", c->s->store_index_path);
	printf("  %-22s %llu\n", "domains:", (unsigned long long)ss.domains);
	printf("  %-22s %llu\n", "accounts:", (unsigned long long)ss.accounts);
	printf("  %-22s %llu\n", "aliases:", (unsigned long long)ss.aliases);
	printf("  %-22s %llu\n", "mailboxes:", (unsigned long long)ss.mailboxes);
	printf("  %-22s %llu\n", "messages:", (unsigned long long)ss.messages);
	printf("  %-22s %llu (%s)\n", "blobs:", (unsigned long long)ss.blobs, bytes);
	return CLI_OK;
}

int cli_cmd_status(struct cli *c)
{
	/* no subcommand: options and arguments start at args[0] */
	char **pos;
	size_t n_pos;
	if (!cli_parse_opts(c, 0, NULL, 0, &pos, &n_pos))
		return CLI_USAGE;
	const char *extra = n_pos > 0 ? pos[0] : NULL;
	free(pos);
	if (extra)
		return cli_usage_error(c, "unexpected argument '%s'", extra);
	if (!cli_load_config(c))
		return CLI_ERROR;
	char admin[128];
	admin_text(c->s->admin_listen, admin, sizeof(admin));
	struct buf body = BUF_INIT;
	char *err = NULL;
	int code = 0;
	int got = cli_admin_http(c->s, "GET", "/metrics", NULL, STATUS_TIMEOUT_MS, &code, &body, &err);
	int rc = CLI_OK;
	if (got == 1 && code == 200) {
		print_daemon(admin, body.data ? body.data : "");
		rc = print_index(c);
	} else if (got == 1) {
		rc = cli_error("unexpected answer from the admin endpoint %s: HTTP status %d", admin, code);
	} else if (got == 0) {
		rc = print_index(c);
		printf("daemon: not running (no answer on %s)\n", admin);
		if (rc == CLI_OK)
			rc = CLI_DOWN;
	} else {
		print_index(c);
		rc = cli_error("%s", err);
	}
	free(err);
	buf_free(&body);
	return rc;
}
