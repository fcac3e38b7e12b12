/*
 * flood.c - a bounded, loopback-only SMTP/IMAP attack simulator with a
 * legitimate-traffic probe, for the "under attack" benchmark (bench/flood.py).
 *
 * Owns: nothing in Strata; it is a client only, links plain libc, and drives
 * Strata and the reference stack (Postfix + postscreen, Dovecot) alike.
 *
 * Roles (any subset, chosen with --roles, all run in one epoll loop):
 *  connect-flood  opens connections at --flood-rate per second, each from the
 *                 next of --flood-sources addresses (127.10.0.0/16, in order),
 *                 then either closes at once or (--flood-banner-pct percent of
 *                 them) waits up to 2 s for the first bytes of the banner;
 *  slowloris      holds up to --slow-conns connections from --slow-sources
 *                 addresses, opened at --slow-rate per second; each waits for
 *                 the banner, then sends one byte of a command line that never
 *                 ends every --slow-interval seconds; a connection the server
 *                 closes is replaced (within the same rate);
 *  early-talker   --early-rate connections per second that send EHLO before
 *                 the banner and record what the server answers;
 *  junk           --junk-rate connections per second that wait for the
 *                 banner, then send 25 lines of random bytes and bad commands
 *                 and record whether the server hangs up on them;
 *  legit          --legit-senders senders (127.20.0.1 ...), each starting one
 *                 complete SMTP transaction (new connection, EHLO, MAIL, RCPT
 *                 to an existing user, DATA with a 4 KiB message, QUIT) every
 *                 1 / --legit-rate seconds; success is a 250 to the final dot;
 *                 latency runs from the start of connect() to that 250;
 *  imap-probe     one client (127.30.0.1) looping LOGIN, SELECT INBOX,
 *                 FETCH 1 BODY.PEEK[], LOGOUT, starting a round at most every
 *                 --imap-interval ms; latency runs from connect() to the
 *                 tagged OK of LOGOUT.
 *
 * Every source address is bound with bind() before connect(), with
 * IP_BIND_ADDRESS_NO_PORT so that the port is chosen by connect() for the
 * whole 4-tuple (thousands of sources do not exhaust the ephemeral range).
 *
 * Output (stdout, one JSON object per line): one "role" line per role with
 * its counts, success rate and p50/p99/max latency in ms, then one "second"
 * line per second of the run (legitimate messages started that second and
 * how many succeeded, IMAP rounds and their p99, slowloris connections held,
 * flood connections opened, and the longest gap between two turns of the
 * event loop: a gap far above 5 ms means this tool was not scheduled, so
 * latencies measured across it are the machine's, not the server's), and
 * one "tool" line with the longest such gap of the run.  Progress and errors go to stderr.  Exit status
 * 0 when the run completed, 2 on bad arguments, 1 on a set-up failure.
 *
 * Safety and bounds:
 *  - Loopback only: the target and every source must be in 127.0.0.0/8.
 *  - The run starts nothing after --seconds (at most 600); legitimate
 *    messages and IMAP rounds already started may finish within a grace of
 *    --timeout seconds (at most 120), after which everything is closed.
 *  - The number of open connections is bounded per role (flood and junk at
 *    most 2,000 and 1,000 in flight; slowloris at --slow-conns, at most
 *    20,000; legit 20 in flight per sender); a start that would exceed its
 *    bound is counted as "skipped", never queued.  Every rate is capped.
 *  - Every connection has a deadline; server lines are bounded (a reply
 *    longer than the input buffer fails the transaction).
 *  - Memory: connection slots are allocated once at start; latency samples
 *    are bounded by rate x duration (allocated once).
 *
 * Concurrency: single-threaded; nothing is shared.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define FLOOD_MAX_SECONDS 600
#define FLOOD_MAX_TIMEOUT 120
#define FLOOD_MAX_RATE 20000
#define FLOOD_MAX_SOURCES 65000
#define FLOOD_FLOOD_INFLIGHT 2000
#define FLOOD_JUNK_INFLIGHT 1000
#define FLOOD_EARLY_INFLIGHT 1000
#define FLOOD_SLOW_MAX 20000
#define FLOOD_LEGIT_MAX_SENDERS 250
#define FLOOD_LEGIT_INFLIGHT 20
#define FLOOD_INBUF 2048
#define FLOOD_MSG_SIZE 4096
#define FLOOD_JUNK_LINES 25
#define FLOOD_BANNER_WAIT_MS 2000
#define FLOOD_ATTACK_WAIT_MS 10000

enum role { R_FLOOD, R_SLOW, R_EARLY, R_JUNK, R_LEGIT, R_IMAP, R_COUNT };

static const char *const role_names[R_COUNT] = {
	"connect-flood", "slowloris", "early-talker", "junk", "legit", "imap-probe",
};

/* Step of a connection; what it is waiting for next. */
enum step {
	S_FREE,
	S_CONNECTING,
	S_BANNER,     /* waiting for the (complete) greeting */
	S_REPLY,      /* SMTP: waiting for the reply to the current command */
	S_TRICKLE,    /* slowloris: dribbling */
	S_DRAIN,      /* early talker / junk: reading until the server closes */
	S_IMAP,       /* IMAP: waiting for the tagged reply of the current command */
};

struct conn {
	enum role role;
	enum step step;
	int fd;
	int sub;              /* SMTP command index / IMAP command index / junk lines sent */
	int sender;           /* legit sender index, else -1 */
	bool want_banner;     /* connect-flood: wait for the banner before closing */
	uint64_t t_start;     /* us, connect() started */
	uint64_t deadline;    /* us */
	uint64_t next_byte;   /* slowloris: when the next byte goes */
	uint32_t trickled;
	unsigned rcpt;        /* legit: recipient number (user0 is the IMAP probe's) */
	uint64_t seq;         /* legit: message number */
	const char *out;      /* pending output (not owned unless out_owned) */
	size_t out_len, out_off;
	char *out_owned;
	size_t in_len;
	size_t skip;          /* IMAP: literal bytes still to skip */
	bool epollout;
	bool counted;         /* counted in f->open[role] (the connect was started) */
	char in[FLOOD_INBUF]; /* last: conn_get clears everything before it */
};

struct samples {
	uint32_t *v;          /* latency in microseconds */
	size_t n, cap;
};

struct role_stats {
	uint64_t attempts, connected, connect_failed, skipped;
	uint64_t ok, failed, timeout;
	uint64_t banner_220, refused_4xx, refused_5xx, server_closed, cut_by_server;
	uint64_t hold_max;
	struct samples lat;
	struct samples lat_fail;
	uint64_t fail_reason[6];
};

enum fail { F_CONNECT, F_CLOSED, F_TIMEOUT, F_REFUSED, F_REJECTED, F_PROTO };
static const char *const fail_names[6] = {
	"connect", "closed", "timeout", "refused_at_greeting", "rejected", "protocol",
};

struct second {
	uint32_t legit_started, legit_ok;
	uint32_t lag_ms;      /* longest gap between two turns of the event loop */
	uint32_t flood_opened, slow_held;
	struct samples imap;
};

struct opts {
	struct in_addr host;
	int smtp_port, imap_port;
	unsigned seconds, timeout_s;
	bool roles[R_COUNT];
	double flood_rate, slow_rate, early_rate, junk_rate, legit_rate;
	unsigned flood_sources, slow_sources, early_sources, junk_sources;
	unsigned flood_banner_pct, slow_conns, slow_interval_s, legit_senders;
	unsigned imap_interval_ms, users;
	const char *domain, *prefix, *imap_user, *imap_pass;
	uint64_t seed;
};

struct flood {
	struct opts o;
	int ep;
	struct conn *conns;
	size_t nconns;
	size_t *free_list;
	size_t nfree;
	struct role_stats st[R_COUNT];
	uint64_t open[R_COUNT];
	uint64_t legit_open[FLOOD_LEGIT_MAX_SENDERS];
	uint64_t legit_next[FLOOD_LEGIT_MAX_SENDERS];   /* us, next message's start */
	uint64_t legit_seq;
	double credit[R_COUNT];                       /* fractional starts owed */
	uint64_t src_next[R_COUNT];
	uint64_t t0, t_end, t_last_tick;
	uint64_t max_lag_ms;
	uint64_t imap_next;
	struct second *secs;
	unsigned nsecs;
	uint64_t rng;
	char body[FLOOD_MSG_SIZE];
};

static volatile sig_atomic_t flood_stop_signal;

/* ---- small helpers --------------------------------------------------------- */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("flood: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);
	if (p == NULL)
		die("out of memory (%zu x %zu)", n, size);
	return p;
}

static uint64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

static void samples_init(struct samples *s, size_t cap)
{
	s->cap = cap;
	s->n = 0;
	s->v = xcalloc(cap, sizeof *s->v);
}

static void samples_add(struct samples *s, uint64_t us)
{
	if (s->n < s->cap)
		s->v[s->n++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x > y) - (x < y);
}

/* Nearest-rank percentile in ms of sorted samples; -1 when there are none. */
static double samples_pct(const struct samples *s, double p)
{
	if (s->n == 0)
		return -1.0;
	size_t rank = (size_t)ceil(p / 100.0 * (double)s->n);
	if (rank < 1)
		rank = 1;
	if (rank > s->n)
		rank = s->n;
	return s->v[rank - 1] / 1000.0;
}

static void samples_sort(struct samples *s)
{
	if (s->n > 1)
		qsort(s->v, s->n, sizeof *s->v, cmp_u32);
}

/*
 * i-th source address of a role: 127.<a>.<b+i/200>.<1+i%200>, 200 a /24:
 * connect-flood 127.10.0-49.x, slowloris 127.10.100-124.x, early-talker
 * 127.10.150-174.x, junk 127.10.200-224.x (the source limits keep the
 * ranges apart), legit 127.20.0.1-250, imap-probe 127.30.0.1.
 */
static struct in_addr role_source(enum role r, uint64_t i)
{
	static const uint8_t base[R_COUNT][2] = {
		{ 10, 0 }, { 10, 100 }, { 10, 150 }, { 10, 200 }, { 20, 0 }, { 30, 0 },
	};
	uint32_t third = base[r][1] + (uint32_t)(i / 200u);
	uint32_t fourth = 1u + (uint32_t)(i % 200u);
	if (r == R_LEGIT) {
		third = 0;
		fourth = 1u + (uint32_t)i;
	}
	struct in_addr a;
	a.s_addr = htonl((127u << 24) | ((uint32_t)base[r][0] << 16) | (third << 8) | fourth);
	return a;
}

/* ---- connection slots ------------------------------------------------------ */

static struct conn *conn_get(struct flood *f, enum role r)
{
	if (f->nfree == 0)
		return NULL;
	struct conn *c = &f->conns[f->free_list[--f->nfree]];
	memset(c, 0, offsetof(struct conn, in));
	c->role = r;
	c->fd = -1;
	c->sender = -1;
	return c;
}

static void conn_close(struct flood *f, struct conn *c)
{
	if (c->fd >= 0) {
		epoll_ctl(f->ep, EPOLL_CTL_DEL, c->fd, NULL);
		close(c->fd);
	}
	free(c->out_owned);
	c->out_owned = NULL;
	if (c->sender >= 0 && f->legit_open[c->sender] > 0)
		f->legit_open[c->sender]--;
	if (c->counted)
		f->open[c->role]--;
	c->step = S_FREE;
	c->fd = -1;
	f->free_list[f->nfree++] = (size_t)(c - f->conns);
}

static void conn_watch(struct flood *f, struct conn *c, bool out)
{
	if (c->epollout == out)
		return;
	struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP | (out ? EPOLLOUT : 0u),
				  .data.ptr = c };
	epoll_ctl(f->ep, EPOLL_CTL_MOD, c->fd, &ev);
	c->epollout = out;
}

static struct second *sec_at(struct flood *f, uint64_t t)
{
	uint64_t s = (t - f->t0) / 1000000u;
	return s < f->nsecs ? &f->secs[s] : NULL;
}

/* Starts a non-blocking connect from `src` to the role's port. */
static bool conn_start(struct flood *f, struct conn *c, struct in_addr src, int port)
{
	struct role_stats *st = &f->st[c->role];
	st->attempts++;
	c->t_start = now_us();
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		st->connect_failed++;
		return false;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr = src };
	struct sockaddr_in da = { .sin_family = AF_INET, .sin_addr = f->o.host,
				  .sin_port = htons((uint16_t)port) };
	if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
	    (connect(fd, (struct sockaddr *)&da, sizeof da) != 0 && errno != EINPROGRESS)) {
		close(fd);
		st->connect_failed++;
		return false;
	}
	c->fd = fd;
	c->step = S_CONNECTING;
	struct epoll_event ev = { .events = EPOLLOUT | EPOLLIN | EPOLLRDHUP, .data.ptr = c };
	c->epollout = true;
	if (epoll_ctl(f->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
		close(fd);
		c->fd = -1;
		st->connect_failed++;
		return false;
	}
	f->open[c->role]++;
	c->counted = true;
	if (f->open[c->role] > st->hold_max)
		st->hold_max = f->open[c->role];
	return true;
}

/* Writes pending output; watches for writability while some is left.
 * Returns false on a socket error. */
static bool conn_flush(struct flood *f, struct conn *c)
{
	while (c->out_off < c->out_len) {
		ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
		if (n > 0) {
			c->out_off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			conn_watch(f, c, true);
			return true;
		}
		return false;
	}
	conn_watch(f, c, false);
	return true;
}

/* Queues output (taking `owned`, which may be NULL for static data) and
 * writes what the socket takes now.  Returns false on a socket error. */
static bool conn_send(struct flood *f, struct conn *c, const char *data, size_t len, char *owned)
{
	free(c->out_owned);
	c->out_owned = owned;
	c->out = data;
	c->out_len = len;
	c->out_off = 0;
	return conn_flush(f, c);
}

/* ---- outcomes -------------------------------------------------------------- */

static void legit_done(struct flood *f, struct conn *c, bool ok, enum fail why)
{
	struct role_stats *st = &f->st[c->role];
	uint64_t lat = now_us() - c->t_start;
	struct second *s = sec_at(f, c->t_start);
	if (ok) {
		st->ok++;
		samples_add(&st->lat, lat);
		if (c->role == R_IMAP) {
			if (s != NULL)
				samples_add(&s->imap, lat);
		} else if (s != NULL) {
			s->legit_ok++;
		}
	} else {
		st->failed++;
		st->fail_reason[why]++;
		samples_add(&st->lat_fail, lat);
		if (why == F_TIMEOUT)
			st->timeout++;
		if (c->role == R_IMAP && s != NULL)
			samples_add(&s->imap, lat);  /* a failed round counts at its duration */
	}
	conn_close(f, c);
}

static void attack_done(struct flood *f, struct conn *c, bool server_closed)
{
	if (server_closed) {
		f->st[c->role].server_closed++;
		if (c->role == R_SLOW || c->role == R_JUNK)
			samples_add(&f->st[c->role].lat, now_us() - c->t_start);
	}
	conn_close(f, c);
}

/* ---- SMTP (legit) ---------------------------------------------------------- */

/* The 4 KiB message (headers + body + final dot) for c's recipient. */
static char *legit_message(struct flood *f, struct conn *c, size_t *len)
{
	char head[512];
	int h = snprintf(head, sizeof head,
			 "From: Sender %d <sender%d@legit%d.example>\r\n"
			 "To: <%s%u@%s>\r\n"
			 "Subject: flood benchmark message %" PRIu64 "\r\n"
			 "Message-ID: <%" PRIu64 ".%d@legit.example>\r\n"
			 "Date: Sun, 29 Nov 2026 00:00:00 +0000\r\n"
			 "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
			 c->sender, c->sender, c->sender, f->o.prefix, c->rcpt, f->o.domain,
			 c->seq, c->seq, c->sender);
	if (h < 0 || (size_t)h >= sizeof head)
		h = 0;
	size_t body = FLOOD_MSG_SIZE > (size_t)h + 64 ? FLOOD_MSG_SIZE - (size_t)h : 64;
	char *m = xcalloc((size_t)h + body + 8, 1);
	memcpy(m, head, (size_t)h);
	memcpy(m + h, f->body + (FLOOD_MSG_SIZE - body), body);
	memcpy(m + h + body, ".\r\n", 3);
	*len = (size_t)h + body + 3;
	return m;
}

/* Sends the command of step c->sub; returns false on a socket error. */
static bool legit_command(struct flood *f, struct conn *c)
{
	char line[256];
	int n = 0;
	switch (c->sub) {
	case 0:
		n = snprintf(line, sizeof line, "EHLO legit%d.example\r\n", c->sender);
		break;
	case 1:
		n = snprintf(line, sizeof line, "MAIL FROM:<sender%d@legit%d.example> SIZE=%d\r\n",
			     c->sender, c->sender, FLOOD_MSG_SIZE);
		break;
	case 2:
		n = snprintf(line, sizeof line, "RCPT TO:<%s%u@%s>\r\n", f->o.prefix, c->rcpt,
			     f->o.domain);
		break;
	case 3:
		n = snprintf(line, sizeof line, "DATA\r\n");
		break;
	case 4: {
		size_t len;
		char *m = legit_message(f, c, &len);
		return conn_send(f, c, m, len, m);
	}
	default:
		n = snprintf(line, sizeof line, "QUIT\r\n");
		break;
	}
	char *copy = xcalloc((size_t)n + 1, 1);
	memcpy(copy, line, (size_t)n);
	return conn_send(f, c, copy, (size_t)n, copy);
}

/*
 * One complete SMTP reply line arrived.  `last` is true for the final line
 * of a (possibly multi-line) reply.  Drives the transaction.
 */
static void legit_reply(struct flood *f, struct conn *c, const char *line, bool last)
{
	if (!last)
		return;
	int code = atoi(line);
	if (c->step == S_BANNER) {
		if (code != 220) {
			legit_done(f, c, false, code >= 400 ? F_REFUSED : F_PROTO);
			return;
		}
		c->step = S_REPLY;
		c->sub = 0;
		if (!legit_command(f, c))
			legit_done(f, c, false, F_CLOSED);
		return;
	}
	int want = c->sub == 3 ? 354 : c->sub == 5 ? 221 : 250;
	if (c->sub == 5) {
		/* The 250 to the dot already made it a success; QUIT is courtesy. */
		conn_close(f, c);
		return;
	}
	if (code != want) {
		legit_done(f, c, false, F_REJECTED);
		return;
	}
	if (c->sub == 4) {
		/* Success: the latency stops at the 250 to the final dot. */
		struct role_stats *st = &f->st[R_LEGIT];
		uint64_t lat = now_us() - c->t_start;
		struct second *s = sec_at(f, c->t_start);
		st->ok++;
		samples_add(&st->lat, lat);
		if (s != NULL)
			s->legit_ok++;
		c->sub = 5;
		c->deadline = now_us() + 2000000u;
		if (!legit_command(f, c))
			conn_close(f, c);
		return;
	}
	c->sub++;
	if (!legit_command(f, c))
		legit_done(f, c, false, F_CLOSED);
}

/* ---- IMAP probe ------------------------------------------------------------ */

static bool imap_command(struct flood *f, struct conn *c)
{
	char line[512];
	int n;
	switch (c->sub) {
	case 0:
		n = snprintf(line, sizeof line, "a1 LOGIN \"%s\" \"%s\"\r\n", f->o.imap_user,
			     f->o.imap_pass);
		break;
	case 1:
		n = snprintf(line, sizeof line, "a2 SELECT INBOX\r\n");
		break;
	case 2:
		n = snprintf(line, sizeof line, "a3 FETCH 1 BODY.PEEK[]\r\n");
		break;
	default:
		n = snprintf(line, sizeof line, "a4 LOGOUT\r\n");
		break;
	}
	char *copy = xcalloc((size_t)n + 1, 1);
	memcpy(copy, line, (size_t)n);
	return conn_send(f, c, copy, (size_t)n, copy);
}

/* Trailing "{N}" of a line (IMAP literal announcement), else 0. */
static size_t imap_literal(const char *line, size_t len)
{
	if (len < 3 || line[len - 1] != '}')
		return 0;
	size_t i = len - 1;
	while (i > 0 && line[i - 1] >= '0' && line[i - 1] <= '9')
		i--;
	if (i == 0 || line[i - 1] != '{' || i == len - 1)
		return 0;
	unsigned long long v = strtoull(line + i, NULL, 10);
	return v > 64u * 1024 * 1024 ? 0 : (size_t)v;
}

static void imap_line(struct flood *f, struct conn *c, const char *line, size_t len)
{
	if (c->step == S_BANNER) {
		if (len >= 4 && strncmp(line, "* OK", 4) == 0) {
			c->step = S_IMAP;
			c->sub = 0;
			if (!imap_command(f, c))
				legit_done(f, c, false, F_CLOSED);
		} else {
			legit_done(f, c, false, F_REFUSED);
		}
		return;
	}
	c->skip = imap_literal(line, len);
	char tag[4] = { 'a', (char)('1' + c->sub), ' ', 0 };
	if (len < 3 || strncmp(line, tag, 3) != 0)
		return;  /* untagged data */
	if (len < 5 || strncmp(line + 3, "OK", 2) != 0) {
		legit_done(f, c, false, F_REJECTED);
		return;
	}
	if (c->sub == 3) {
		legit_done(f, c, true, F_PROTO);
		return;
	}
	c->sub++;
	if (!imap_command(f, c))
		legit_done(f, c, false, F_CLOSED);
}

/* ---- attackers ------------------------------------------------------------- */

static const char *const junk_lines[] = {
	"RCPT TO:<nobody@example.invalid>\r\n", "DATA\r\n", "XYZZY\r\n",
	"MAIL FROM:<>\r\n", "GET / HTTP/1.0\r\n", "AUTH LOGIN\r\n", "\r\n",
	"VRFY root\r\n", "EXPN staff\r\n", "TURN\r\n",
};

static bool junk_send(struct flood *f, struct conn *c)
{
	size_t cap = 200, n;
	char *buf = xcalloc(cap, 1);
	if (rng_next(&f->rng) % 3 == 0) {
		n = 20 + rng_next(&f->rng) % 150;
		for (size_t i = 0; i < n; i++) {
			char ch = (char)(rng_next(&f->rng) & 0xff);
			buf[i] = (ch == '\n' || ch == '\r') ? 'x' : ch;
		}
		buf[n++] = '\r';
		buf[n++] = '\n';
	} else {
		const char *l = junk_lines[rng_next(&f->rng) % (sizeof junk_lines / sizeof *junk_lines)];
		n = strlen(l);
		memcpy(buf, l, n);
	}
	c->sub++;
	return conn_send(f, c, buf, n, buf);
}

static void slow_byte(struct flood *f, struct conn *c, uint64_t t)
{
	static const char text[] = "EHLO slowly-but-surely.example.invalid.and.on.and.on";
	char *b = xcalloc(1, 1);
	b[0] = text[c->trickled % (sizeof text - 1)];
	c->trickled++;
	c->next_byte = t + (uint64_t)f->o.slow_interval_s * 1000000u;
	if (!conn_send(f, c, b, 1, b))
		attack_done(f, c, true);
}

/* First line (or part of it) of the greeting reached an attacker. */
static void attack_banner(struct flood *f, struct conn *c, const char *line)
{
	struct role_stats *st = &f->st[c->role];
	int code = atoi(line);
	if (code == 220)
		st->banner_220++;
	else if (code >= 500)
		st->refused_5xx++;
	else if (code >= 400)
		st->refused_4xx++;
}

/* ---- input ----------------------------------------------------------------- */

static void conn_line(struct flood *f, struct conn *c, char *line, size_t len)
{
	line[len] = 0;
	bool last = len < 4 || line[3] != '-';
	switch (c->role) {
	case R_LEGIT:
		legit_reply(f, c, line, last);
		return;
	case R_IMAP:
		imap_line(f, c, line, len);
		return;
	case R_FLOOD:
		attack_banner(f, c, line);
		conn_close(f, c);
		return;
	case R_SLOW:
		if (c->step == S_BANNER) {
			attack_banner(f, c, line);
			if (atoi(line) != 220) {
				c->step = S_DRAIN;
				return;
			}
			if (last) {
				c->step = S_TRICKLE;
				c->next_byte = now_us();
			}
		} else if (c->step == S_TRICKLE && atoi(line) >= 400) {
			f->st[R_SLOW].cut_by_server++;
		}
		return;
	case R_EARLY:
		if (c->sub == 0) {
			c->sub = 1;
			attack_banner(f, c, line);
		}
		if (strncmp(line, "250", 3) == 0) {
			/* The early EHLO was answered as if nothing had happened. */
			f->st[R_EARLY].ok++;
			conn_close(f, c);
		}
		return;
	case R_JUNK:
		if (c->step == S_BANNER) {
			attack_banner(f, c, line);
			if (atoi(line) != 220) {
				c->step = S_DRAIN;
				return;
			}
			if (last) {
				c->step = S_DRAIN;
				for (int i = 0; i < FLOOD_JUNK_LINES; i++)
					if (!junk_send(f, c) || c->epollout)
						break;
			}
		} else if (atoi(line) == 421) {
			f->st[R_JUNK].cut_by_server++;
		}
		return;
	default:
		return;
	}
}

/* Reads what is there; splits lines; reports EOF/errors. */
static void conn_readable(struct flood *f, struct conn *c)
{
	for (int rounds = 0; rounds < 64 && c->step != S_FREE; rounds++) {
		if (c->in_len >= sizeof c->in - 1) {
			if (c->role == R_LEGIT || c->role == R_IMAP)
				legit_done(f, c, false, F_PROTO);
			else
				c->in_len = 0;  /* attackers do not care what they are told */
			return;
		}
		ssize_t n = recv(c->fd, c->in + c->in_len, sizeof c->in - 1 - c->in_len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n <= 0) {
			if (c->role == R_LEGIT || c->role == R_IMAP) {
				if (c->role == R_LEGIT && c->sub == 5)
					conn_close(f, c);
				else
					legit_done(f, c, false, F_CLOSED);
			} else {
				attack_done(f, c, true);
			}
			return;
		}
		size_t have = c->in_len + (size_t)n;
		size_t start = 0;
		/* IMAP literal bytes are skipped, not parsed. */
		for (size_t i = 0; i < have && c->step != S_FREE;) {
			if (c->skip > 0) {
				size_t take = have - i < c->skip ? have - i : c->skip;
				c->skip -= take;
				i += take;
				start = i;
				continue;
			}
			if (c->in[i] == '\n') {
				size_t end = i;
				if (end > start && c->in[end - 1] == '\r')
					end--;
				conn_line(f, c, c->in + start, end - start);
				start = i + 1;
			}
			i++;
		}
		if (c->step == S_FREE)
			return;
		if (start > have)
			start = have;
		memmove(c->in, c->in + start, have - start);
		c->in_len = have - start;
	}
}

static void conn_connected(struct flood *f, struct conn *c)
{
	int err = 0;
	socklen_t len = sizeof err;
	if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
		struct role_stats *st = &f->st[c->role];
		st->connect_failed++;
		if (c->role == R_LEGIT || c->role == R_IMAP)
			legit_done(f, c, false, F_CONNECT);
		else
			conn_close(f, c);
		return;
	}
	f->st[c->role].connected++;
	conn_watch(f, c, false);
	uint64_t t = now_us();
	switch (c->role) {
	case R_FLOOD:
		if (!c->want_banner) {
			conn_close(f, c);
			return;
		}
		c->step = S_BANNER;
		c->deadline = t + FLOOD_BANNER_WAIT_MS * 1000u;
		return;
	case R_EARLY: {
		c->step = S_DRAIN;
		c->deadline = t + FLOOD_ATTACK_WAIT_MS * 1000u;
		static const char ehlo[] = "EHLO early-bird.example.invalid\r\n";
		if (!conn_send(f, c, ehlo, sizeof ehlo - 1, NULL))
			attack_done(f, c, true);
		return;
	}
	case R_SLOW:
		c->step = S_BANNER;
		c->deadline = f->t_end;
		return;
	default:
		c->step = S_BANNER;
		return;
	}
}

static void conn_event(struct flood *f, struct conn *c, uint32_t ev)
{
	if (c->step == S_CONNECTING) {
		if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))
			conn_connected(f, c);
		if (c->step == S_FREE || c->step == S_CONNECTING)
			return;
	}
	if ((ev & EPOLLOUT) && c->out_off < c->out_len && !conn_flush(f, c)) {
		if (c->role == R_LEGIT || c->role == R_IMAP)
			legit_done(f, c, false, F_CLOSED);
		else
			attack_done(f, c, true);
		return;
	}
	if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		conn_readable(f, c);
}

/* ---- starting connections -------------------------------------------------- */

static void start_attacker(struct flood *f, enum role r)
{
	static const size_t bound[R_COUNT] = { FLOOD_FLOOD_INFLIGHT, FLOOD_SLOW_MAX,
					       FLOOD_EARLY_INFLIGHT, FLOOD_JUNK_INFLIGHT, 0, 0 };
	size_t cap = r == R_SLOW ? f->o.slow_conns : bound[r];
	unsigned sources = r == R_FLOOD ? f->o.flood_sources : r == R_SLOW ? f->o.slow_sources
			 : r == R_EARLY ? f->o.early_sources : f->o.junk_sources;
	if (f->open[r] >= cap) {
		f->st[r].skipped++;
		return;
	}
	struct conn *c = conn_get(f, r);
	if (c == NULL) {
		f->st[r].skipped++;
		return;
	}
	uint64_t idx = f->src_next[r]++ % sources;
	if (r == R_FLOOD)
		c->want_banner = rng_next(&f->rng) % 100 < f->o.flood_banner_pct;
	c->deadline = now_us() + FLOOD_ATTACK_WAIT_MS * 1000u;
	if (!conn_start(f, c, role_source(r, idx), f->o.smtp_port)) {
		conn_close(f, c);
		return;
	}
	if (r == R_FLOOD) {
		struct second *s = sec_at(f, c->t_start);
		if (s != NULL)
			s->flood_opened++;
	}
}

static void start_legit(struct flood *f, unsigned sender)
{
	struct second *s = sec_at(f, now_us());
	if (s != NULL)
		s->legit_started++;
	f->legit_seq++;
	struct conn *c = NULL;
	if (f->legit_open[sender] < FLOOD_LEGIT_INFLIGHT)
		c = conn_get(f, R_LEGIT);
	if (c == NULL) {
		/* Counted as a failure: a real MTA would have had to wait. */
		f->st[R_LEGIT].attempts++;
		f->st[R_LEGIT].skipped++;
		f->st[R_LEGIT].failed++;
		f->st[R_LEGIT].fail_reason[F_CONNECT]++;
		return;
	}
	c->sender = (int)sender;
	c->seq = f->legit_seq;
	c->rcpt = 1 + (unsigned)(rng_next(&f->rng) % (f->o.users > 1 ? f->o.users - 1 : 1));
	f->legit_open[sender]++;
	c->deadline = now_us() + (uint64_t)f->o.timeout_s * 1000000u;
	if (!conn_start(f, c, role_source(R_LEGIT, sender), f->o.smtp_port))
		legit_done(f, c, false, F_CONNECT);
}

static void start_imap(struct flood *f)
{
	struct conn *c = conn_get(f, R_IMAP);
	if (c == NULL)
		return;
	c->deadline = now_us() + (uint64_t)f->o.timeout_s * 1000000u;
	if (!conn_start(f, c, role_source(R_IMAP, 0), f->o.imap_port))
		legit_done(f, c, false, F_CONNECT);
}

/* Starts what each role owes for the time elapsed since the last tick. */
static void schedule(struct flood *f, uint64_t t)
{
	double dt = (double)(t - f->t_last_tick) / 1e6;
	f->t_last_tick = t;
	const double rates[R_COUNT] = { f->o.flood_rate, f->o.slow_rate, f->o.early_rate,
					f->o.junk_rate, 0, 0 };
	for (int r = R_FLOOD; r <= R_JUNK; r++) {
		if (!f->o.roles[r])
			continue;
		f->credit[r] += rates[r] * dt;
		/* At most one second of owed starts: a stalled loop does not burst. */
		if (f->credit[r] > rates[r] + 1)
			f->credit[r] = rates[r] + 1;
		for (unsigned k = 0; k < FLOOD_MAX_RATE && f->credit[r] >= 1.0; k++) {
			f->credit[r] -= 1.0;
			if (r == R_SLOW && f->open[r] >= f->o.slow_conns) {
				f->credit[r] = 0;
				break;
			}
			start_attacker(f, (enum role)r);
		}
	}
	if (f->o.roles[R_LEGIT]) {
		uint64_t step = (uint64_t)(1e6 / f->o.legit_rate);
		for (unsigned s = 0; s < f->o.legit_senders; s++) {
			for (int k = 0; k < 4 && f->legit_next[s] <= t; k++) {
				f->legit_next[s] += step;
				start_legit(f, s);
			}
			if (f->legit_next[s] <= t)
				f->legit_next[s] = t + step;  /* a stall does not become a burst */
		}
	}
	if (f->o.roles[R_IMAP] && f->open[R_IMAP] == 0 && t >= f->imap_next) {
		f->imap_next = t + (uint64_t)f->o.imap_interval_ms * 1000u;
		start_imap(f);
	}
}

/* Deadlines and slowloris bytes; a sweep over the slots (bounded by their count). */
static void sweep(struct flood *f, uint64_t t)
{
	for (size_t i = 0; i < f->nconns; i++) {
		struct conn *c = &f->conns[i];
		if (c->step == S_FREE)
			continue;
		if (c->step == S_TRICKLE && t >= c->next_byte && !c->epollout) {
			slow_byte(f, c, t);
			if (c->step == S_FREE)
				continue;
		}
		if (c->deadline != 0 && t >= c->deadline) {
			if (c->role == R_LEGIT || c->role == R_IMAP) {
				if (c->role == R_LEGIT && c->sub == 5)
					conn_close(f, c);
				else
					legit_done(f, c, false, F_TIMEOUT);
			} else {
				attack_done(f, c, false);
			}
		}
	}
	struct second *s = sec_at(f, t);
	if (s != NULL && f->open[R_SLOW] > s->slow_held)
		s->slow_held = (uint32_t)f->open[R_SLOW];
}

/* ---- output ---------------------------------------------------------------- */

static void print_role(struct flood *f, enum role r, double elapsed)
{
	struct role_stats *st = &f->st[r];
	samples_sort(&st->lat);
	samples_sort(&st->lat_fail);
	printf("{\"type\":\"role\",\"role\":\"%s\",\"elapsed_s\":%.3f,\"attempts\":%" PRIu64
	       ",\"connected\":%" PRIu64 ",\"connect_failed\":%" PRIu64 ",\"skipped\":%" PRIu64
	       ",\"banner_220\":%" PRIu64 ",\"refused_4xx\":%" PRIu64 ",\"refused_5xx\":%" PRIu64
	       ",\"server_closed\":%" PRIu64 ",\"cut_by_server\":%" PRIu64 ",\"max_open\":%" PRIu64,
	       role_names[r], elapsed, st->attempts, st->connected, st->connect_failed, st->skipped,
	       st->banner_220, st->refused_4xx, st->refused_5xx, st->server_closed,
	       st->cut_by_server, st->hold_max);
	if (r == R_LEGIT || r == R_IMAP) {
		uint64_t total = st->ok + st->failed;
		printf(",\"ok\":%" PRIu64 ",\"failed\":%" PRIu64 ",\"success_rate\":%.5f",
		       st->ok, st->failed, total ? (double)st->ok / (double)total : 0.0);
		printf(",\"failures\":{");
		for (int k = 0; k < 6; k++)
			printf("%s\"%s\":%" PRIu64, k ? "," : "", fail_names[k], st->fail_reason[k]);
		printf("}");
	}
	if (r == R_EARLY)
		printf(",\"ehlo_answered_250\":%" PRIu64, st->ok);
	/* For slowloris and junk: how long the server let a connection live. */
	printf(",\"samples\":%zu,\"p50_ms\":%.2f,\"p99_ms\":%.2f,\"max_ms\":%.2f",
	       st->lat.n, samples_pct(&st->lat, 50), samples_pct(&st->lat, 99),
	       samples_pct(&st->lat, 100));
	if (r == R_LEGIT || r == R_IMAP)
		printf(",\"fail_p50_ms\":%.2f,\"fail_max_ms\":%.2f", samples_pct(&st->lat_fail, 50),
		       samples_pct(&st->lat_fail, 100));
	printf("}\n");
}

static void print_seconds(struct flood *f, unsigned upto)
{
	for (unsigned i = 0; i < upto && i < f->nsecs; i++) {
		struct second *s = &f->secs[i];
		samples_sort(&s->imap);
		printf("{\"type\":\"second\",\"t\":%u,\"legit_started\":%u,\"legit_ok\":%u,"
		       "\"imap_rounds\":%zu,\"imap_p99_ms\":%.2f,\"slow_held\":%u,\"flood_opened\":%u,"
		       "\"loop_lag_ms\":%u}\n",
		       i, s->legit_started, s->legit_ok, s->imap.n, samples_pct(&s->imap, 99),
		       s->slow_held, s->flood_opened, s->lag_ms);
	}
}

/* ---- set-up ---------------------------------------------------------------- */

static void usage(void)
{
	fprintf(stderr,
		"usage: flood --smtp-port P [--imap-port P] [--host 127.0.0.1] [--seconds 60]\n"
		"  [--roles connect-flood,slowloris,early-talker,junk,legit,imap-probe]\n"
		"  [--flood-rate 500] [--flood-sources 10000] [--flood-banner-pct 50]\n"
		"  [--slow-conns 5000] [--slow-sources 1000] [--slow-rate 500] [--slow-interval 5]\n"
		"  [--early-rate 50] [--early-sources 400] [--junk-rate 50] [--junk-sources 400]\n"
		"  [--legit-senders 10] [--legit-rate 0.5] [--users 1000] [--domain D]\n"
		"  [--prefix user] [--imap-user U] [--imap-pass P] [--imap-interval 250]\n"
		"  [--timeout 30] [--seed N]\n");
	exit(2);
}

static double arg_num(const char *name, const char *v, double lo, double hi)
{
	char *end;
	double d = strtod(v, &end);
	if (*v == 0 || *end != 0 || !(d >= lo && d <= hi)) {
		fprintf(stderr, "flood: --%s must be a number in [%g, %g]\n", name, lo, hi);
		exit(2);
	}
	return d;
}

static void parse_roles(struct opts *o, const char *list)
{
	memset(o->roles, 0, sizeof o->roles);
	char buf[256];
	snprintf(buf, sizeof buf, "%s", list);
	for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		int r;
		for (r = 0; r < R_COUNT && strcmp(t, role_names[r]) != 0; r++)
			;
		if (r == R_COUNT) {
			fprintf(stderr, "flood: unknown role '%s'\n", t);
			exit(2);
		}
		o->roles[r] = true;
	}
}

static void parse_args(struct opts *o, int argc, char **argv)
{
	static const struct option lo[] = {
		{ "host", 1, 0, 'h' }, { "smtp-port", 1, 0, 'p' }, { "imap-port", 1, 0, 'i' },
		{ "seconds", 1, 0, 's' }, { "roles", 1, 0, 'r' }, { "timeout", 1, 0, 't' },
		{ "flood-rate", 1, 0, 1 }, { "flood-sources", 1, 0, 2 },
		{ "flood-banner-pct", 1, 0, 3 }, { "slow-conns", 1, 0, 4 },
		{ "slow-sources", 1, 0, 5 }, { "slow-rate", 1, 0, 6 }, { "slow-interval", 1, 0, 7 },
		{ "early-rate", 1, 0, 8 }, { "early-sources", 1, 0, 9 }, { "junk-rate", 1, 0, 10 },
		{ "junk-sources", 1, 0, 11 }, { "legit-senders", 1, 0, 12 },
		{ "legit-rate", 1, 0, 13 }, { "users", 1, 0, 14 }, { "domain", 1, 0, 15 },
		{ "prefix", 1, 0, 16 }, { "imap-user", 1, 0, 17 }, { "imap-pass", 1, 0, 18 },
		{ "imap-interval", 1, 0, 19 }, { "seed", 1, 0, 20 }, { 0, 0, 0, 0 },
	};
	const char *host = "127.0.0.1";
	*o = (struct opts){ .seconds = 60, .timeout_s = 30, .flood_rate = 500,
			    .flood_sources = 10000, .flood_banner_pct = 50, .slow_conns = 5000,
			    .slow_sources = 1000, .slow_rate = 500, .slow_interval_s = 5,
			    .early_rate = 50, .early_sources = 400, .junk_rate = 50,
			    .junk_sources = 400, .legit_senders = 10, .legit_rate = 0.5,
			    .imap_interval_ms = 250, .users = 1000, .domain = "bench.example",
			    .prefix = "user", .imap_user = "user0@bench.example",
			    .imap_pass = "benchpass", .seed = 20261129 };
	parse_roles(o, "connect-flood,slowloris,early-talker,junk,legit,imap-probe");
	int ch;
	while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (ch) {
		case 'h': host = optarg; break;
		case 'p': o->smtp_port = (int)arg_num("smtp-port", optarg, 1, 65535); break;
		case 'i': o->imap_port = (int)arg_num("imap-port", optarg, 1, 65535); break;
		case 's': o->seconds = (unsigned)arg_num("seconds", optarg, 1, FLOOD_MAX_SECONDS); break;
		case 'r': parse_roles(o, optarg); break;
		case 't': o->timeout_s = (unsigned)arg_num("timeout", optarg, 1, FLOOD_MAX_TIMEOUT); break;
		case 1: o->flood_rate = arg_num("flood-rate", optarg, 0, FLOOD_MAX_RATE); break;
		case 2: o->flood_sources = (unsigned)arg_num("flood-sources", optarg, 1, 10000); break;
		case 3: o->flood_banner_pct = (unsigned)arg_num("flood-banner-pct", optarg, 0, 100); break;
		case 4: o->slow_conns = (unsigned)arg_num("slow-conns", optarg, 0, FLOOD_SLOW_MAX); break;
		case 5: o->slow_sources = (unsigned)arg_num("slow-sources", optarg, 1, 5000); break;
		case 6: o->slow_rate = arg_num("slow-rate", optarg, 0, FLOOD_MAX_RATE); break;
		case 7: o->slow_interval_s = (unsigned)arg_num("slow-interval", optarg, 1, 300); break;
		case 8: o->early_rate = arg_num("early-rate", optarg, 0, FLOOD_MAX_RATE); break;
		case 9: o->early_sources = (unsigned)arg_num("early-sources", optarg, 1, 5000); break;
		case 10: o->junk_rate = arg_num("junk-rate", optarg, 0, FLOOD_MAX_RATE); break;
		case 11: o->junk_sources = (unsigned)arg_num("junk-sources", optarg, 1, 5000); break;
		case 12: o->legit_senders = (unsigned)arg_num("legit-senders", optarg, 1,
							     FLOOD_LEGIT_MAX_SENDERS); break;
		case 13: o->legit_rate = arg_num("legit-rate", optarg, 0.01, 100); break;
		case 14: o->users = (unsigned)arg_num("users", optarg, 1, 10000000); break;
		case 15: o->domain = optarg; break;
		case 16: o->prefix = optarg; break;
		case 17: o->imap_user = optarg; break;
		case 18: o->imap_pass = optarg; break;
		case 19: o->imap_interval_ms = (unsigned)arg_num("imap-interval", optarg, 1, 60000); break;
		case 20: o->seed = (uint64_t)arg_num("seed", optarg, 1, 1e15); break;
		default: usage();
		}
	}
	if (optind != argc || o->smtp_port == 0 || (o->roles[R_IMAP] && o->imap_port == 0))
		usage();
	if (inet_pton(AF_INET, host, &o->host) != 1 || (ntohl(o->host.s_addr) >> 24) != 127) {
		fprintf(stderr, "flood: --host must be a numeric address in 127.0.0.0/8\n");
		exit(2);
	}
	if (strlen(o->domain) > 100 || strlen(o->prefix) > 50 || strlen(o->imap_user) > 200 ||
	    strlen(o->imap_pass) > 200 || strpbrk(o->imap_user, "\"\\\r\n") ||
	    strpbrk(o->imap_pass, "\"\\\r\n")) {
		fprintf(stderr, "flood: --domain/--prefix/--imap-user/--imap-pass too long or unsafe\n");
		exit(2);
	}
}

/* Descriptors for every slot plus slack; raised up to what is allowed. */
static void raise_nofile(size_t need)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return;
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
		rl.rlim_cur = need;
		if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need)
			rl.rlim_max = need;  /* works as root; else fall back to the hard limit */
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
			getrlimit(RLIMIT_NOFILE, &rl);
			rl.rlim_cur = rl.rlim_max;
			setrlimit(RLIMIT_NOFILE, &rl);
			fprintf(stderr, "flood: open-file limit %llu is below the %zu wanted; "
				"starts beyond it are counted as connect failures\n",
				(unsigned long long)rl.rlim_max, need);
		}
	}
}

static void on_signal(int sig)
{
	flood_stop_signal = sig;
}

static void flood_init(struct flood *f)
{
	const struct opts *o = &f->o;
	f->nconns = FLOOD_FLOOD_INFLIGHT + FLOOD_EARLY_INFLIGHT + FLOOD_JUNK_INFLIGHT +
		    o->slow_conns + (size_t)o->legit_senders * FLOOD_LEGIT_INFLIGHT + 4;
	raise_nofile(f->nconns + 64);
	f->conns = xcalloc(f->nconns, sizeof *f->conns);
	f->free_list = xcalloc(f->nconns, sizeof *f->free_list);
	for (size_t i = 0; i < f->nconns; i++) {
		f->conns[i].fd = -1;
		f->free_list[f->nconns - 1 - i] = i;
	}
	f->nfree = f->nconns;
	f->ep = epoll_create1(EPOLL_CLOEXEC);
	if (f->ep < 0)
		die("epoll_create1: %s", strerror(errno));
	double secs = o->seconds + o->timeout_s + 2;
	size_t legit_cap = (size_t)(o->legit_rate * o->legit_senders * secs) + 16;
	size_t imap_cap = (size_t)(secs * 1000.0 / o->imap_interval_ms) + 16;
	const double rates[R_COUNT] = { 0, o->slow_rate, 0, o->junk_rate, 0, 0 };
	for (int r = 0; r < R_COUNT; r++) {
		size_t cap = r == R_LEGIT ? legit_cap : r == R_IMAP ? imap_cap
			   : (size_t)(rates[r] * secs) + 16;
		samples_init(&f->st[r].lat, cap);
		samples_init(&f->st[r].lat_fail, r == R_LEGIT || r == R_IMAP ? cap : 1);
	}
	f->nsecs = o->seconds + o->timeout_s + 2;
	f->secs = xcalloc(f->nsecs, sizeof *f->secs);
	size_t per_sec = 1000 / o->imap_interval_ms + 4;
	for (unsigned i = 0; i < f->nsecs; i++)
		samples_init(&f->secs[i].imap, per_sec);
	f->rng = o->seed | 1;
	/* Message body: 72-column lines of text, no line starting with a dot. */
	for (size_t i = 0; i < sizeof f->body; i++)
		f->body[i] = (i % 74 == 72) ? '\r' : (i % 74 == 73) ? '\n'
			   : (char)('a' + (rng_next(&f->rng) % 26));
	f->body[sizeof f->body - 2] = '\r';
	f->body[sizeof f->body - 1] = '\n';
}

static void flood_free(struct flood *f)
{
	for (size_t i = 0; i < f->nconns; i++)
		if (f->conns[i].step != S_FREE)
			conn_close(f, &f->conns[i]);
	for (int r = 0; r < R_COUNT; r++) {
		free(f->st[r].lat.v);
		free(f->st[r].lat_fail.v);
	}
	for (unsigned i = 0; i < f->nsecs; i++)
		free(f->secs[i].imap.v);
	free(f->secs);
	free(f->conns);
	free(f->free_list);
	close(f->ep);
}

/* Open probes (legit, imap) still in flight. */
static bool probes_open(const struct flood *f)
{
	return f->open[R_LEGIT] > 0 || f->open[R_IMAP] > 0;
}

static void flood_run(struct flood *f)
{
	const struct opts *o = &f->o;
	f->t0 = now_us();
	f->t_last_tick = f->t0;
	f->t_end = f->t0 + (uint64_t)o->seconds * 1000000u;
	uint64_t hard_end = f->t_end + (uint64_t)o->timeout_s * 1000000u + 1000000u;
	for (unsigned s = 0; s < o->legit_senders; s++)
		f->legit_next[s] = f->t0 + (uint64_t)(1e6 / o->legit_rate * s / o->legit_senders);
	f->imap_next = f->t0;
	struct epoll_event evs[256];
	uint64_t last_sweep = 0, last_report = f->t0, last_turn = f->t0;
	bool closed_attack = false;
	for (;;) {
		uint64_t t = now_us();
		if (flood_stop_signal || t >= hard_end)
			break;
		if (t < f->t_end) {
			schedule(f, t);
		} else {
			if (!closed_attack) {
				/* Attackers stop at the end; probes may finish their round. */
				for (size_t i = 0; i < f->nconns; i++) {
					struct conn *c = &f->conns[i];
					if (c->step != S_FREE && c->role != R_LEGIT && c->role != R_IMAP)
						conn_close(f, c);
				}
				closed_attack = true;
			}
			if (!probes_open(f))
				break;
		}
		/* A turn normally takes at most the 5 ms wait plus its work; a much
		 * longer gap means this process was not scheduled (a loaded machine),
		 * and every latency measured across it is inflated by the gap. */
		uint64_t lag = t - last_turn;
		last_turn = t;
		struct second *ls = sec_at(f, t);
		if (ls != NULL && lag / 1000u > ls->lag_ms)
			ls->lag_ms = (uint32_t)(lag / 1000u);
		if (lag / 1000u > f->max_lag_ms)
			f->max_lag_ms = lag / 1000u;
		int n = epoll_wait(f->ep, evs, 256, 5);
		for (int i = 0; i < n; i++) {
			struct conn *c = evs[i].data.ptr;
			if (c->step != S_FREE)
				conn_event(f, c, evs[i].events);
		}
		t = now_us();
		if (t - last_sweep >= 20000) {
			sweep(f, t);
			last_sweep = t;
		}
		if (t - last_report >= 10000000) {
			last_report = t;
			fprintf(stderr, "flood: t=%3.0fs legit ok %" PRIu64 " failed %" PRIu64
				", imap ok %" PRIu64 ", slowloris open %" PRIu64 ", flood %" PRIu64 "\n",
				(t - f->t0) / 1e6, f->st[R_LEGIT].ok, f->st[R_LEGIT].failed,
				f->st[R_IMAP].ok, f->open[R_SLOW], f->st[R_FLOOD].attempts);
		}
	}
	/* Anything still open at the hard end is a timeout for the probes. */
	for (size_t i = 0; i < f->nconns; i++) {
		struct conn *c = &f->conns[i];
		if (c->step == S_FREE)
			continue;
		if ((c->role == R_LEGIT && c->sub != 5) || c->role == R_IMAP)
			legit_done(f, c, false, F_TIMEOUT);
		else
			conn_close(f, c);
	}
}

int main(int argc, char **argv)
{
	static struct flood f;
	parse_args(&f.o, argc, argv);
	signal(SIGPIPE, SIG_IGN);
	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	flood_init(&f);
	flood_run(&f);
	double elapsed = (now_us() - f.t0) / 1e6;
	for (int r = 0; r < R_COUNT; r++)
		if (f.o.roles[r])
			print_role(&f, (enum role)r, elapsed);
	printf("{\"type\":\"tool\",\"max_loop_lag_ms\":%" PRIu64 "}\n", f.max_lag_ms);
	print_seconds(&f, f.o.seconds);
	fflush(stdout);
	flood_free(&f);
	return flood_stop_signal ? 1 : 0;
}
