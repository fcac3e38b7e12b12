/*
 * relay_route.c - where a domain's mail goes: relay.transport routes, MX
 * lookups and addresses (RFC 5321 5.1), with c-ares.
 *
 * Owns: the parsed transport table and one c-ares channel per delivery
 * thread (struct relay_dns).
 *
 * Order of the addresses tried for a domain:
 *  1. a relay.transport entry for the domain (exact, lower-case), else the
 *     "*" entry (a smarthost): its host, an IP literal or a name resolved
 *     to A/AAAA (never an MX lookup: a route names a host);
 *  2. else the domain's MX records by preference (equal preferences in the
 *     order the server gave), each host's addresses in turn; a null MX
 *     (RFC 7505: one record ".") means the domain takes no mail;
 *  3. else, when the domain has no MX record at all, its own A/AAAA
 *     (the implicit MX of RFC 5321 5.1).
 * A recipient domain "[192.0.2.1]" (an address literal) goes to that address.
 * At most RELAY_MAX_HOPS addresses are kept.
 *
 * Failures: NXDOMAIN -> bounce (5.1.2); a null MX -> bounce (5.1.10);
 * SERVFAIL, timeouts, refused queries, no address -> defer (4.4.3).
 *
 * Bounded waits: each query runs with c-ares' timeout (2 s) and tries (3);
 * the wait loop polls the stop flag every RELAY_STOP_POLL_MS and cancels
 * the queries when it is set.
 *
 * Threads: a struct relay_dns belongs to one thread.
 */
#include "relay_int.h"

#include <arpa/inet.h>
#include <ares.h>
#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DNS_TIMEOUT_MS 2000
#define DNS_TRIES 3
#define DNS_MAX_MX 16
#define DNS_TYPE_MX 15
#define DNS_CLASS_IN 1

/* ---- relay.transport ------------------------------------------------------- */

static bool route_host_ok(const char *h)
{
	if (h[0] == '\0')
		return false;
	for (const char *p = h; *p; p++) {
		unsigned char c = (unsigned char)*p;
		if (!(isalnum(c) || c == '.' || c == '-' || c == ':' || c == '_'))
			return false;
	}
	return true;
}

/* "host", "host:port", "[v6]" or "[v6]:port" into e. */
static bool route_parse_target(const char *v, struct relay_route_entry *e, char **error_r)
{
	const char *port = NULL;
	size_t hlen;
	if (v[0] == '[') {
		const char *end = strchr(v, ']');
		if (end == NULL || (end[1] != '\0' && end[1] != ':'))
			goto bad;
		v++;
		hlen = (size_t)(end - v);
		port = end[1] == ':' ? end + 2 : NULL;
	} else {
		const char *colon = strrchr(v, ':');
		if (colon != NULL && strchr(v, ':') != colon)
			goto bad; /* a bare IPv6 address needs brackets */
		hlen = colon != NULL ? (size_t)(colon - v) : strlen(v);
		port = colon != NULL ? colon + 1 : NULL;
	}
	if (hlen == 0 || hlen > RELAY_DOMAIN_MAX)
		goto bad;
	memcpy(e->host, v, hlen);
	e->host[hlen] = '\0';
	str_lower(e->host);
	if (!route_host_ok(e->host))
		goto bad;
	e->port = 25;
	if (port != NULL) {
		uint64_t p;
		if (!str_parse_u64(port, &p) || p == 0 || p > 65535)
			goto bad;
		e->port = (uint16_t)p;
	}
	return true;
bad:
	*error_r = xasprintf("relay.transport: bad target \"%s\" (host:port, [v6]:port)", v);
	return false;
}

bool relay_transport_parse(const char *value, struct relay_transport *out, char **error_r)
{
	out->e = NULL;
	out->n = 0;
	char *copy = xstrdup(value);
	char *save = NULL;
	bool ok = true;
	for (char *tok = strtok_r(copy, ",", &save); ok && tok != NULL; tok = strtok_r(NULL, ",", &save)) {
		tok = str_trim(tok);
		if (*tok == '\0')
			continue;
		char *eq = strchr(tok, '=');
		if (eq == NULL || eq == tok) {
			*error_r = xasprintf("relay.transport: \"%s\" is not domain=host:port", tok);
			ok = false;
			break;
		}
		*eq = '\0';
		char *dom = str_trim(tok), *target = str_trim(eq + 1);
		struct relay_route_entry e;
		memset(&e, 0, sizeof(e));
		if (strlen(dom) > RELAY_DOMAIN_MAX || (strcmp(dom, "*") != 0 && !route_host_ok(dom))) {
			*error_r = xasprintf("relay.transport: bad domain \"%s\"", dom);
			ok = false;
			break;
		}
		snprintf(e.domain, sizeof(e.domain), "%s", dom);
		str_lower(e.domain);
		if (!(ok = route_parse_target(target, &e, error_r)))
			break;
		for (size_t i = 0; i < out->n; i++) {
			if (strcmp(out->e[i].domain, e.domain) == 0) {
				*error_r = xasprintf("relay.transport: domain \"%s\" given twice", e.domain);
				ok = false;
			}
		}
		if (!ok)
			break;
		out->e = xreallocarray(out->e, out->n + 1, sizeof(*out->e));
		out->e[out->n++] = e;
	}
	free(copy);
	if (!ok)
		relay_transport_free(out);
	return ok;
}

void relay_transport_free(struct relay_transport *t)
{
	free(t->e);
	t->e = NULL;
	t->n = 0;
}

bool relay_transport_check(const char *value, char **error_r)
{
	struct relay_transport t;
	if (!relay_transport_parse(value, &t, error_r))
		return false;
	relay_transport_free(&t);
	return true;
}

static const struct relay_route_entry *route_find(const struct relay_transport *t, const char *domain)
{
	const struct relay_route_entry *star = NULL;
	for (size_t i = 0; i < t->n; i++) {
		if (strcmp(t->e[i].domain, domain) == 0)
			return &t->e[i];
		if (strcmp(t->e[i].domain, "*") == 0)
			star = &t->e[i];
	}
	return star;
}

/* ---- c-ares ------------------------------------------------------------------ */

struct relay_dns {
	ares_channel ch;
	const atomic_bool *stop;
};

static bool g_ares_ready;
static pthread_mutex_t g_ares_mu = PTHREAD_MUTEX_INITIALIZER;

struct relay_dns *relay_dns_new(const char *servers, const atomic_bool *stop, char **error_r)
{
	pthread_mutex_lock(&g_ares_mu);
	if (!g_ares_ready) {
		int rc = ares_library_init(ARES_LIB_INIT_ALL);
		if (rc != ARES_SUCCESS) {
			pthread_mutex_unlock(&g_ares_mu);
			*error_r = xasprintf("c-ares: %s", ares_strerror(rc));
			return NULL;
		}
		g_ares_ready = true; /* kept until exit: other threads may use it */
	}
	pthread_mutex_unlock(&g_ares_mu);

	struct relay_dns *d = xcalloc(1, sizeof(*d));
	d->stop = stop;
	struct ares_options o;
	memset(&o, 0, sizeof(o));
	o.timeout = DNS_TIMEOUT_MS;
	o.tries = DNS_TRIES;
	o.ndomains = 0;   /* no search list: mail domains are fully qualified */
	o.domains = NULL;
	int rc = ares_init_options(&d->ch, &o, ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_DOMAINS);
	if (rc != ARES_SUCCESS) {
		*error_r = xasprintf("c-ares: %s", ares_strerror(rc));
		free(d);
		return NULL;
	}
	if (servers != NULL && servers[0] != '\0' && (rc = ares_set_servers_ports_csv(d->ch, servers)) != ARES_SUCCESS) {
		*error_r = xasprintf("relay.dns_servers \"%s\": %s", servers, ares_strerror(rc));
		ares_destroy(d->ch);
		free(d);
		return NULL;
	}
	return d;
}

void relay_dns_free(struct relay_dns **dp)
{
	struct relay_dns *d = *dp;
	if (d == NULL)
		return;
	*dp = NULL;
	ares_destroy(d->ch);
	free(d);
}

/* Runs the channel until its queries are answered (or the stop flag). */
static void dns_wait(struct relay_dns *d)
{
	for (;;) {
		ares_socket_t socks[ARES_GETSOCK_MAXNUM];
		int bits = ares_getsock(d->ch, socks, ARES_GETSOCK_MAXNUM);
		struct pollfd pfd[ARES_GETSOCK_MAXNUM];
		nfds_t n = 0;
		for (int i = 0; i < ARES_GETSOCK_MAXNUM; i++) {
			/* ARES_GETSOCK_WRITABLE shifts a signed 1 into bit 31: test the bits here */
			unsigned ubits = (unsigned)bits;
			short ev = (short)((((ubits >> i) & 1u) ? POLLIN : 0) |
					   (((ubits >> (i + ARES_GETSOCK_MAXNUM)) & 1u) ? POLLOUT : 0));
			if (ev == 0)
				continue;
			pfd[n].fd = socks[i];
			pfd[n].events = ev;
			pfd[n].revents = 0;
			n++;
		}
		if (n == 0)
			return; /* nothing pending: every callback ran */
		if (atomic_load(d->stop)) {
			ares_cancel(d->ch);
			return;
		}
		struct timeval tv, max = { 0, RELAY_STOP_POLL_MS * 1000 };
		struct timeval *tvp = ares_timeout(d->ch, &max, &tv);
		int ms = (int)(tvp->tv_sec * 1000 + tvp->tv_usec / 1000);
		int rc = poll(pfd, n, ms > 0 ? ms : 1);
		if (rc < 0 && errno != EINTR) {
			ares_cancel(d->ch);
			return;
		}
		if (rc <= 0) {
			ares_process_fd(d->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD); /* timeouts */
			continue;
		}
		for (nfds_t i = 0; i < n; i++) {
			ares_socket_t r = pfd[i].revents & (POLLIN | POLLERR | POLLHUP) ? pfd[i].fd : ARES_SOCKET_BAD;
			ares_socket_t w = pfd[i].revents & (POLLOUT | POLLERR) ? pfd[i].fd : ARES_SOCKET_BAD;
			if (r != ARES_SOCKET_BAD || w != ARES_SOCKET_BAD)
				ares_process_fd(d->ch, r, w);
		}
	}
}

/* ---- MX ---------------------------------------------------------------------- */

struct mx_host {
	char name[RELAY_DOMAIN_MAX + 1];
	unsigned pref;
};
struct mx_result {
	int status;                       /* ARES_* */
	bool done;
	struct mx_host h[DNS_MAX_MX];
	size_t n;
	bool null_mx;
};

static int mx_cmp(const void *a, const void *b)
{
	const struct mx_host *x = a, *y = b;
	return x->pref < y->pref ? -1 : x->pref > y->pref;
}

static void mx_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	(void)timeouts;
	struct mx_result *r = arg;
	r->done = true;
	r->status = status;
	if (status != ARES_SUCCESS)
		return;
	struct ares_mx_reply *mx = NULL;
	int rc = ares_parse_mx_reply(abuf, alen, &mx);
	if (rc != ARES_SUCCESS) {
		r->status = rc;
		return;
	}
	size_t total = 0;
	for (struct ares_mx_reply *p = mx; p != NULL; p = p->next) {
		total++;
		if (p->host == NULL || strlen(p->host) > RELAY_DOMAIN_MAX)
			continue;
		if (p->host[0] == '\0' || strcmp(p->host, ".") == 0) {
			r->null_mx = true;
			continue;
		}
		if (r->n < DNS_MAX_MX) {
			snprintf(r->h[r->n].name, sizeof(r->h[r->n].name), "%s", p->host);
			str_lower(r->h[r->n].name);
			r->h[r->n].pref = p->priority;
			r->n++;
		}
	}
	ares_free_data(mx);
	/* RFC 7505: a null MX is the only record; with others it is ignored */
	if (r->null_mx && total > 1)
		r->null_mx = false;
	/* stable: equal preferences keep the server's order */
	for (size_t i = 1; i < r->n; i++) {
		for (size_t j = i; j > 0 && mx_cmp(&r->h[j - 1], &r->h[j]) > 0; j--) {
			struct mx_host t = r->h[j - 1];
			r->h[j - 1] = r->h[j];
			r->h[j] = t;
		}
	}
}

/* ---- addresses --------------------------------------------------------------- */

struct addr_result {
	int status;
	bool done;
	struct relay_hops *out;
	const char *host;
	uint16_t port;
};

static void hop_add(struct relay_hops *out, const char *host, const struct sockaddr *sa, socklen_t len,
		    uint16_t port)
{
	if (out->n >= RELAY_MAX_HOPS || len > (socklen_t)sizeof(out->h[0].addr))
		return;
	struct relay_hop *h = &out->h[out->n];
	memset(h, 0, sizeof(*h));
	snprintf(h->host, sizeof(h->host), "%s", host);
	memcpy(&h->addr, sa, len);
	h->addr_len = len;
	h->port = port;
	if (sa->sa_family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)&h->addr;
		in->sin_port = htons(port);
		inet_ntop(AF_INET, &in->sin_addr, h->ip, sizeof(h->ip));
	} else if (sa->sa_family == AF_INET6) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&h->addr;
		in6->sin6_port = htons(port);
		inet_ntop(AF_INET6, &in6->sin6_addr, h->ip, sizeof(h->ip));
	} else {
		return;
	}
	for (size_t i = 0; i < out->n; i++) {
		if (strcmp(out->h[i].ip, h->ip) == 0 && out->h[i].port == port)
			return; /* the same address twice (two MX names) */
	}
	out->n++;
}

static void addr_cb(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
	(void)timeouts;
	struct addr_result *r = arg;
	r->done = true;
	r->status = status;
	if (status != ARES_SUCCESS || res == NULL) {
		if (res != NULL)
			ares_freeaddrinfo(res);
		return;
	}
	for (struct ares_addrinfo_node *n = res->nodes; n != NULL; n = n->ai_next)
		hop_add(r->out, r->host, n->ai_addr, (socklen_t)n->ai_addrlen, r->port);
	ares_freeaddrinfo(res);
}

/* An IP literal host: one hop, no lookup. */
static bool literal_hop(const char *host, uint16_t port, struct relay_hops *out)
{
	struct sockaddr_in in;
	struct sockaddr_in6 in6;
	memset(&in, 0, sizeof(in));
	memset(&in6, 0, sizeof(in6));
	if (inet_pton(AF_INET, host, &in.sin_addr) == 1) {
		in.sin_family = AF_INET;
		hop_add(out, host, (struct sockaddr *)&in, sizeof(in), port);
		return true;
	}
	const char *v6 = strncmp(host, "ipv6:", 5) == 0 ? host + 5 : host;
	if (inet_pton(AF_INET6, v6, &in6.sin6_addr) == 1) {
		in6.sin6_family = AF_INET6;
		hop_add(out, host, (struct sockaddr *)&in6, sizeof(in6), port);
		return true;
	}
	return false;
}

/* A/AAAA of host into out; the c-ares status. */
static int resolve_host(struct relay_dns *d, const char *host, uint16_t port, struct relay_hops *out)
{
	if (literal_hop(host, port, out))
		return ARES_SUCCESS;
	struct addr_result r = { ARES_ENOTFOUND, false, out, host, port };
	struct ares_addrinfo_hints hints;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	ares_getaddrinfo(d->ch, host, NULL, &hints, addr_cb, &r);
	dns_wait(d);
	return r.done ? r.status : ARES_ECANCELLED;
}

static bool dns_is_nxdomain(int status)
{
	return status == ARES_ENOTFOUND;
}

static enum relay_result route_fail(enum relay_result res, char **error_r, const char *fmt, ...)
	ATTR_PRINTF(3, 4);
static enum relay_result route_fail(enum relay_result res, char **error_r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	*error_r = xvasprintf(fmt, ap);
	va_end(ap);
	return res;
}

enum relay_result relay_route(struct relay_dns *d, const struct relay_transport *t, const char *domain,
			      struct relay_hops *out, char **error_r)
{
	memset(out, 0, sizeof(*out));
	size_t dlen = strlen(domain);
	if (dlen >= 2 && domain[0] == '[' && domain[dlen - 1] == ']') {
		char lit[RELAY_DOMAIN_MAX + 1];
		if (dlen - 2 >= sizeof(lit) || dlen - 2 == 0)
			return route_fail(RELAY_BOUNCE, error_r, "5.1.2 bad address literal %s", domain);
		memcpy(lit, domain + 1, dlen - 2);
		lit[dlen - 2] = '\0';
		if (!literal_hop(lit, 25, out))
			return route_fail(RELAY_BOUNCE, error_r, "5.1.2 bad address literal %s", domain);
		return RELAY_SENT;
	}
	const struct relay_route_entry *e = route_find(t, domain);
	if (e != NULL) {
		int st = resolve_host(d, e->host, e->port, out);
		if (out->n > 0)
			return RELAY_SENT;
		return route_fail(RELAY_DEFER, error_r, "4.4.3 route %s for %s: %s", e->host, domain,
				  ares_strerror(st));
	}
	struct mx_result mx;
	memset(&mx, 0, sizeof(mx));
	ares_query(d->ch, domain, DNS_CLASS_IN, DNS_TYPE_MX, mx_cb, &mx);
	dns_wait(d);
	if (!mx.done)
		return route_fail(RELAY_DEFER, error_r, "4.4.3 MX lookup for %s cancelled", domain);
	if (dns_is_nxdomain(mx.status))
		return route_fail(RELAY_BOUNCE, error_r, "5.1.2 Host or domain name not found: %s", domain);
	if (mx.status == ARES_SUCCESS && mx.null_mx)
		return route_fail(RELAY_BOUNCE, error_r, "5.1.10 %s does not accept mail (null MX)", domain);
	if (mx.status != ARES_SUCCESS && mx.status != ARES_ENODATA)
		return route_fail(RELAY_DEFER, error_r, "4.4.3 MX lookup for %s: %s", domain,
				  ares_strerror(mx.status));
	if (mx.status == ARES_SUCCESS && mx.n > 0) {
		int last = ARES_SUCCESS;
		for (size_t i = 0; i < mx.n && out->n < RELAY_MAX_HOPS; i++)
			last = resolve_host(d, mx.h[i].name, 25, out);
		if (out->n > 0)
			return RELAY_SENT;
		return route_fail(RELAY_DEFER, error_r, "4.4.3 no address for the MX hosts of %s (%s)", domain,
				  ares_strerror(last));
	}
	/* no MX record: the domain itself (implicit MX) */
	int st = resolve_host(d, domain, 25, out);
	if (out->n > 0)
		return RELAY_SENT;
	if (dns_is_nxdomain(st) || st == ARES_ENODATA)
		return route_fail(RELAY_BOUNCE, error_r, "5.1.2 no MX and no address for %s", domain);
	return route_fail(RELAY_DEFER, error_r, "4.4.3 address lookup for %s: %s", domain, ares_strerror(st));
}
