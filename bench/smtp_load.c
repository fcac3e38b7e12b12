/*
 * smtp_load.c - a bounded SMTP ingest load generator (`make bench`).
 *
 * Owns: nothing in Strata; it is a client only and links plain libc and
 * pthreads, so the same binary measures Strata and a reference MTA alike.
 *
 * What it does: opens `--concurrency` connections (one thread each,
 * blocking sockets, TCP_NODELAY), says EHLO once per connection, then runs
 * MAIL / RCPT / DATA transactions back to back on that connection until
 * `--messages` transactions have been started in total or `--duration-max`
 * seconds have passed, whichever comes first.  Each message is exactly
 * `--size` bytes (headers + body, CRLF line ends, no line starting with a
 * dot) to one recipient chosen at random among `--accounts` addresses
 * <prefix><n>@<domain>, n in [0, accounts).  Random choices come from a
 * per-thread xorshift generator seeded from `--seed`, so a run is repeatable.
 *
 * `--mix realistic` replaces the fixed size with a mail-like mix (the
 * scale benchmark's load): sizes log-normal with a median of 8 KiB,
 * clamped to [2 KiB, 2 MiB] (a mean near 20 KiB); 55% text/plain, 25%
 * multipart/alternative (text and HTML), 20% multipart/mixed with a short
 * text part and a base64 attachment carrying the bulk.  Sizes are those
 * drawn, to within a line; the report gives the bytes actually sent.
 *
 * Accept latency is the time from the moment the final "." has been handed
 * to the kernel to the moment the reply to it has been read.  A message
 * counts as accepted only on a 2xx reply to the final ".".
 *
 * Output: one JSON object on stdout (counts, elapsed seconds, accepted/s,
 * latency percentiles in ms, wall-clock start and end for end-to-end
 * measurements by the caller).  Diagnostics go to stderr.  Exit status is 0
 * when the run completed (even with rejected messages: they are counted),
 * 2 on bad arguments, 1 when no connection could be made at all.
 *
 * Safety and bounds:
 *  - Loopback only: --host must be a numeric IPv4 address in 127.0.0.0/8;
 *    anything else is refused before a socket is opened.
 *  - Every loop is bounded: the message count is capped, the run stops by
 *    itself at the deadline, every socket read and write has a timeout
 *    (--timeout), server replies are limited in line length and line count,
 *    and a worker gives up after a few consecutive failed reconnects.
 *  - Memory is bounded by --messages (one 32-bit latency sample each).
 *
 * Concurrency: worker threads share only an atomic transaction counter and
 * a start barrier; each keeps its own counters and samples, merged by the
 * main thread after join.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define LOAD_MAX_CONCURRENCY 1000
#define LOAD_MAX_MESSAGES 10000000ull
#define LOAD_MAX_DURATION_S 3600ull
#define LOAD_MIN_SIZE 512ull
#define LOAD_MAX_SIZE (16ull << 20)
#define LOAD_MAX_ACCOUNTS 10000000ull
#define LOAD_MAX_TIMEOUT_S 600ull
#define LOAD_REPLY_LINE_MAX 4096    /* a longer reply line is a protocol error */
#define LOAD_REPLY_LINES_MAX 200    /* lines in one multi-line reply */
#define LOAD_RECONNECT_TRIES 5      /* consecutive failures before a worker quits */
#define LOAD_RECONNECT_PAUSE_MS 100
#define LOAD_ERR_TEXT 200
#define LOAD_BODY_LINE 76
#define LOAD_MIX_MIN 2048ull
#define LOAD_MIX_MAX (2ull << 20)
#define LOAD_MIX_MEDIAN 8192.0
#define LOAD_MIX_SIGMA 1.2
#define LOAD_MIX_HEADROOM 4096      /* headers and MIME framing past the drawn size */

struct load_opts {
	char host[INET_ADDRSTRLEN];
	struct sockaddr_in addr;
	unsigned concurrency;
	uint64_t messages;
	uint64_t duration_max_s;
	uint64_t size;
	char domain[200];
	char prefix[64];
	char from[256];
	uint64_t accounts;
	uint64_t seed;
	uint64_t timeout_s;
	bool mix;                       /* --mix realistic */
};

/* State shared by every worker. */
struct load_shared {
	const struct load_opts *opts;
	atomic_uint_fast64_t next_tx;   /* transactions started so far */
	uint64_t deadline_ns;           /* CLOCK_MONOTONIC */
	pthread_barrier_t start;
	uint64_t start_ns;              /* written by main before the barrier releases workers */
};

/* One connection's buffered reader. */
struct load_conn {
	int fd;
	size_t rpos, rlen;
	char rbuf[8192];
};

struct load_worker {
	pthread_t thread;
	unsigned index;
	struct load_shared *sh;
	uint64_t rng;
	/* results */
	uint64_t attempted, sent, accepted, rejected, io_errors, connect_errors;
	uint64_t bytes_sent;            /* message bytes of sent transactions */
	uint64_t begin_ns;              /* when this worker passed the start barrier */
	uint64_t last_done_ns;
	uint32_t *lat_us;
	size_t n_lat, cap_lat;
	char last_error[LOAD_ERR_TEXT];
	/* scratch */
	char *msg;                      /* size + 3 bytes: message then ".\r\n" */
	char *body;                     /* pre-generated body lines */
	size_t body_len;
};

enum load_tx {
	LOAD_TX_OK,        /* 2xx after the final dot */
	LOAD_TX_REJECTED,  /* 4xx/5xx somewhere; the connection is still usable */
	LOAD_TX_IO,        /* the connection is broken or the server hung up */
};

/* ---- small helpers ---------------------------------------------------- */

static uint64_t load_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double load_wall_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void load_sleep_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static void *load_xmalloc(size_t n)
{
	void *p = malloc(n);
	if (p == NULL) {
		fprintf(stderr, "smtp_load: out of memory (%zu bytes)\n", n);
		abort();
	}
	return p;
}

/* xorshift64*: fast, good enough to spread recipients evenly. */
static uint64_t load_rand(uint64_t *state)
{
	uint64_t x = *state;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*state = x;
	return x * 0x2545F4914F6CDD1Dull;
}

/* Records a short, printable description of the latest failure. */
static void load_note_error(struct load_worker *w, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void load_note_error(struct load_worker *w, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(w->last_error, sizeof(w->last_error), fmt, ap);
	va_end(ap);
	for (char *p = w->last_error; *p != '\0'; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
			*p = '?';
}

/* ---- connection ------------------------------------------------------- */

static void load_conn_close(struct load_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->rpos = c->rlen = 0;
}

static bool load_send_all(struct load_conn *c, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return false;
		}
		data += n;
		len -= (size_t)n;
	}
	return true;
}

/* Reads one line (without CRLF) into out.  False on EOF, error, timeout or
 * a line longer than LOAD_REPLY_LINE_MAX. */
static bool load_read_line(struct load_conn *c, char *out, size_t outlen)
{
	size_t n = 0;
	for (;;) {
		if (c->rpos == c->rlen) {
			ssize_t r = recv(c->fd, c->rbuf, sizeof(c->rbuf), 0);
			if (r < 0 && errno == EINTR)
				continue;
			if (r == 0)
				errno = 0; /* orderly close: reported as EOF */
			if (r <= 0)
				return false;
			c->rpos = 0;
			c->rlen = (size_t)r;
		}
		char ch = c->rbuf[c->rpos++];
		if (ch == '\n') {
			if (n > 0 && out[n - 1] == '\r')
				n--;
			out[n] = '\0';
			return true;
		}
		if (n + 1 >= outlen) {
			errno = EPROTO;
			return false;
		}
		out[n++] = ch;
	}
}

/* Reads a complete (possibly multi-line) reply.  Returns its code, or -1 on
 * I/O or protocol error.  The last line is left in `line` for diagnostics. */
static int load_read_reply(struct load_conn *c, char *line, size_t linelen)
{
	for (unsigned i = 0; i < LOAD_REPLY_LINES_MAX; i++) {
		if (!load_read_line(c, line, linelen))
			return -1;
		if (strlen(line) < 3 || line[0] < '2' || line[0] > '5' ||
		    line[1] < '0' || line[1] > '9' || line[2] < '0' || line[2] > '9') {
			errno = EPROTO;
			return -1;
		}
		if (line[3] == '-')
			continue;
		if (line[3] != ' ' && line[3] != '\0') {
			errno = EPROTO;
			return -1;
		}
		return (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
	}
	errno = EPROTO;
	return -1;
}

/* Sends a command line and reads its reply.  Returns the code or -1. */
static int load_command(struct load_conn *c, const char *cmd, size_t len, char *line,
			size_t linelen)
{
	if (!load_send_all(c, cmd, len))
		return -1;
	return load_read_reply(c, line, linelen);
}

static bool load_conn_open(struct load_worker *w, struct load_conn *c)
{
	const struct load_opts *o = w->sh->opts;
	char line[LOAD_REPLY_LINE_MAX];
	struct timeval tv = { .tv_sec = (time_t)o->timeout_s, .tv_usec = 0 };
	int one = 1;

	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		load_note_error(w, "socket: %s", strerror(errno));
		return false;
	}
	c->rpos = c->rlen = 0;
	if (setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0 ||
	    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0 ||
	    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) {
		load_note_error(w, "setsockopt: %s", strerror(errno));
		load_conn_close(c);
		return false;
	}
	if (connect(c->fd, (const struct sockaddr *)&o->addr, sizeof(o->addr)) != 0) {
		load_note_error(w, "connect %s:%u: %s", o->host, (unsigned)ntohs(o->addr.sin_port),
				strerror(errno));
		load_conn_close(c);
		return false;
	}
	int code = load_read_reply(c, line, sizeof(line));
	if (code != 220) {
		load_note_error(w, "greeting: %s", code < 0 ? "no valid reply" : line);
		load_conn_close(c);
		return false;
	}
	static const char ehlo[] = "EHLO client.bench.example\r\n";
	code = load_command(c, ehlo, sizeof(ehlo) - 1, line, sizeof(line));
	if (code != 250) {
		load_note_error(w, "EHLO: %s", code < 0 ? "no valid reply" : line);
		load_conn_close(c);
		return false;
	}
	return true;
}

/* Connects, retrying a few times with a pause; false if the worker should stop. */
static bool load_conn_reopen(struct load_worker *w, struct load_conn *c)
{
	for (unsigned i = 0; i < LOAD_RECONNECT_TRIES; i++) {
		if (load_now_ns() >= w->sh->deadline_ns)
			return false;
		if (load_conn_open(w, c))
			return true;
		w->connect_errors++;
		load_sleep_ms(LOAD_RECONNECT_PAUSE_MS);
	}
	return false;
}

/* ---- message ---------------------------------------------------------- */

/* Fills w->body with body lines totalling exactly `len` bytes.  Lines are at
 * most LOAD_BODY_LINE characters plus CRLF and never start with '.'. */
static void load_body_make(struct load_worker *w, size_t len)
{
	static const char alphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t pos = 0;

	w->body = load_xmalloc(len + 1);
	while (pos < len) {
		size_t left = len - pos;
		size_t chars = left <= LOAD_BODY_LINE + 2 ? left - 2 : LOAD_BODY_LINE;
		/* Never leave a remainder of exactly 1 byte: it cannot hold a CRLF. */
		if (left == LOAD_BODY_LINE + 2 + 1)
			chars = LOAD_BODY_LINE - 1;
		for (size_t i = 0; i < chars; i++)
			w->body[pos + i] = alphabet[load_rand(&w->rng) % (sizeof(alphabet) - 1)];
		pos += chars;
		w->body[pos++] = '\r';
		w->body[pos++] = '\n';
	}
	w->body[len] = '\0';
	w->body_len = len;
}

/* Formats the header block of message `tx` (ending with the empty line)
 * into out, snprintf-style: returns the length it needs.  ctype NULL:
 * text/plain. */
static int load_headers_ct(char *out, size_t outlen, const struct load_opts *o, uint64_t tx,
			   unsigned index, const char *rcpt, const char *ctype)
{
	char date[64];
	time_t now = time(NULL);
	struct tm tm;

	gmtime_r(&now, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
	return snprintf(out, outlen,
			"Message-ID: <%" PRIu64 ".%" PRIu64 ".%u@client.bench.example>\r\n"
			"Date: %s\r\n"
			"From: Load Generator <%s>\r\n"
			"To: <%s>\r\n"
			"Subject: bench message %" PRIu64 "\r\n"
			"MIME-Version: 1.0\r\n"
			"Content-Type: %s\r\n"
			"\r\n",
			o->seed, tx, index, date, o->from, rcpt, tx,
			ctype ? ctype : "text/plain; charset=us-ascii");
}

static int load_headers(char *out, size_t outlen, const struct load_opts *o, uint64_t tx,
			unsigned index, const char *rcpt)
{
	return load_headers_ct(out, outlen, o, tx, index, rcpt, NULL);
}

/* ---- the realistic mix --------------------------------------------------- */

/* A uniform double in (0, 1). */
static double load_uniform(uint64_t *rng)
{
	return ((double)(load_rand(rng) >> 11) + 0.5) / 9007199254740992.0;
}

/* Log-normal (Box-Muller), clamped to [LOAD_MIX_MIN, LOAD_MIX_MAX]. */
static size_t load_mix_size(uint64_t *rng)
{
	double u1 = load_uniform(rng), u2 = load_uniform(rng);
	double z = sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
	double v = LOAD_MIX_MEDIAN * exp(LOAD_MIX_SIGMA * z);
	if (v < (double)LOAD_MIX_MIN)
		v = (double)LOAD_MIX_MIN;
	if (v > (double)LOAD_MIX_MAX)
		v = (double)LOAD_MIX_MAX;
	return (size_t)v;
}

struct load_out {
	char *p;
	size_t len, cap;
};

static void load_put(struct load_out *b, const char *s, size_t n)
{
	if (n > b->cap - b->len)
		n = b->cap - b->len;   /* cannot happen: the buffer has LOAD_MIX_HEADROOM */
	memcpy(b->p + b->len, s, n);
	b->len += n;
}

static void load_puts(struct load_out *b, const char *s)
{
	load_put(b, s, strlen(s));
}

/* About `bytes` of whole body lines from the worker's pool (at least one). */
static void load_put_lines(struct load_worker *w, struct load_out *b, size_t bytes)
{
	size_t line = LOAD_BODY_LINE + 2, lines = bytes / line;
	if (lines == 0)
		lines = 1;
	if (lines * line > w->body_len)
		lines = w->body_len / line;
	size_t start = (size_t)(load_rand(&w->rng) % (w->body_len / line - lines + 1)) * line;
	load_put(b, w->body + start, lines * line);
}

static size_t load_message_mix(struct load_worker *w, uint64_t tx, const char *rcpt)
{
	const struct load_opts *o = w->sh->opts;
	if (w->body == NULL)
		load_body_make(w, (size_t)LOAD_MIX_MAX - (size_t)LOAD_MIX_MAX % (LOAD_BODY_LINE + 2));
	size_t size = load_mix_size(&w->rng);
	unsigned kind = (unsigned)(load_rand(&w->rng) % 100);
	char ctype[128], bnd[64];
	snprintf(bnd, sizeof(bnd), "=_strata_bench_%" PRIu64, tx);
	if (kind < 55)
		snprintf(ctype, sizeof(ctype), "text/plain; charset=us-ascii");
	else
		snprintf(ctype, sizeof(ctype), "multipart/%s; boundary=\"%s\"", kind < 80 ? "alternative" : "mixed",
			 bnd);
	struct load_out b = { w->msg, 0, (size_t)LOAD_MIX_MAX + LOAD_MIX_HEADROOM };
	int h = load_headers_ct(b.p, b.cap, o, tx, w->index, rcpt, ctype);
	if (h < 0 || (size_t)h >= LOAD_MIX_HEADROOM / 2)
		return 0;
	b.len = (size_t)h;
	size_t body = size > (size_t)h ? size - (size_t)h : 0;
	char part[256];
	if (kind < 55) {
		load_put_lines(w, &b, body);
	} else if (kind < 80) {
		snprintf(part, sizeof(part), "--%s\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n", bnd);
		load_puts(&b, part);
		load_put_lines(w, &b, body / 3);
		snprintf(part, sizeof(part), "--%s\r\nContent-Type: text/html; charset=us-ascii\r\n\r\n"
			 "<html><body>\r\n", bnd);
		load_puts(&b, part);
		load_put_lines(w, &b, body - body / 3);
		snprintf(part, sizeof(part), "</body></html>\r\n--%s--\r\n", bnd);
		load_puts(&b, part);
	} else {
		snprintf(part, sizeof(part), "--%s\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n", bnd);
		load_puts(&b, part);
		load_put_lines(w, &b, 800);
		snprintf(part, sizeof(part), "--%s\r\nContent-Type: application/pdf; name=\"doc%" PRIu64 ".pdf\"\r\n"
			 "Content-Disposition: attachment; filename=\"doc%" PRIu64 ".pdf\"\r\n"
			 "Content-Transfer-Encoding: base64\r\n\r\n", bnd, tx, tx);
		load_puts(&b, part);
		load_put_lines(w, &b, body > 800 ? body - 800 : 1);
		snprintf(part, sizeof(part), "--%s--\r\n", bnd);
		load_puts(&b, part);
	}
	load_put(&b, ".\r\n", 3);
	return b.len;
}

/* Builds message number `tx` for `rcpt` in w->msg, followed by ".\r\n".
 * Returns the total length to send, or 0 if the headers do not fit (main
 * checks the longest possible headers against --size, so that is a bug). */
static size_t load_message_build(struct load_worker *w, uint64_t tx, const char *rcpt)
{
	const struct load_opts *o = w->sh->opts;
	if (o->mix)
		return load_message_mix(w, tx, rcpt);
	int h = load_headers(w->msg, (size_t)o->size + 1, o, tx, w->index, rcpt);
	/* The body needs at least one line ("x\r\n" or "\r\n"): keep 2 bytes. */
	if (h < 0 || (uint64_t)h + 2 > o->size)
		return 0;
	size_t body = (size_t)o->size - (size_t)h;
	if (w->body == NULL || w->body_len != body) {
		free(w->body);
		load_body_make(w, body);
	}
	memcpy(w->msg + h, w->body, body);
	memcpy(w->msg + o->size, ".\r\n", 3);
	return (size_t)o->size + 3;
}

static void load_latency_add(struct load_worker *w, uint64_t ns)
{
	uint64_t us = ns / 1000;
	if (w->n_lat == w->cap_lat) {
		size_t cap = w->cap_lat == 0 ? 1024 : w->cap_lat * 2;
		uint32_t *p = realloc(w->lat_us, cap * sizeof(*p));
		if (p == NULL) {
			fprintf(stderr, "smtp_load: out of memory for latency samples\n");
			abort();
		}
		w->lat_us = p;
		w->cap_lat = cap;
	}
	w->lat_us[w->n_lat++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

/* After a 4xx/5xx mid-transaction: reset it so the connection can go on. */
static enum load_tx load_tx_abort(struct load_worker *w, struct load_conn *c, int code,
				  const char *stage, const char *line)
{
	char reply[LOAD_REPLY_LINE_MAX];
	static const char rset[] = "RSET\r\n";

	load_note_error(w, "%s: %s", stage, line);
	if (code == 421 || load_command(c, rset, sizeof(rset) - 1, reply, sizeof(reply)) != 250)
		return LOAD_TX_IO;
	return LOAD_TX_REJECTED;
}

static enum load_tx load_tx_lost(struct load_worker *w, const char *stage)
{
	load_note_error(w, "%s: connection lost (%s)", stage, errno != 0 ? strerror(errno) : "EOF");
	return LOAD_TX_IO;
}

static enum load_tx load_transaction(struct load_worker *w, struct load_conn *c, uint64_t tx)
{
	const struct load_opts *o = w->sh->opts;
	char line[LOAD_REPLY_LINE_MAX];
	char rcpt[320], cmd[400];
	int code, n;

	n = snprintf(rcpt, sizeof(rcpt), "%s%" PRIu64 "@%s", o->prefix,
		     load_rand(&w->rng) % o->accounts, o->domain);
	if (n < 0 || (size_t)n >= sizeof(rcpt))
		return LOAD_TX_REJECTED; /* cannot happen: lengths are checked at start */

	n = snprintf(cmd, sizeof(cmd), "MAIL FROM:<%s>\r\n", o->from);
	code = load_command(c, cmd, (size_t)n, line, sizeof(line));
	if (code < 0)
		return load_tx_lost(w, "MAIL");
	if (code != 250)
		return load_tx_abort(w, c, code, "MAIL", line);

	n = snprintf(cmd, sizeof(cmd), "RCPT TO:<%s>\r\n", rcpt);
	code = load_command(c, cmd, (size_t)n, line, sizeof(line));
	if (code < 0)
		return load_tx_lost(w, "RCPT");
	if (code != 250 && code != 251)
		return load_tx_abort(w, c, code, "RCPT", line);

	static const char data[] = "DATA\r\n";
	code = load_command(c, data, sizeof(data) - 1, line, sizeof(line));
	if (code < 0)
		return load_tx_lost(w, "DATA");
	if (code != 354)
		return load_tx_abort(w, c, code, "DATA", line);

	size_t len = load_message_build(w, tx, rcpt);
	if (len == 0 || !load_send_all(c, w->msg, len))
		return load_tx_lost(w, "message");
	w->sent++;
	w->bytes_sent += len - 3;
	uint64_t t_dot = load_now_ns();
	code = load_read_reply(c, line, sizeof(line));
	uint64_t t_reply = load_now_ns();
	if (code < 0)
		return load_tx_lost(w, "final dot");
	if (code / 100 != 2) {
		load_note_error(w, "final dot: %s", line);
		return code == 421 ? LOAD_TX_IO : LOAD_TX_REJECTED;
	}
	load_latency_add(w, t_reply - t_dot);
	return LOAD_TX_OK;
}

/* ---- workers ---------------------------------------------------------- */

static void *load_worker_main(void *arg)
{
	struct load_worker *w = arg;
	struct load_shared *sh = w->sh;
	struct load_conn *c = load_xmalloc(sizeof(*c));
	bool up;

	c->fd = -1;
	w->msg = load_xmalloc(sh->opts->mix ? (size_t)LOAD_MIX_MAX + LOAD_MIX_HEADROOM : (size_t)sh->opts->size + 3);
	up = load_conn_open(w, c);
	if (!up)
		w->connect_errors++;
	pthread_barrier_wait(&sh->start);
	w->begin_ns = load_now_ns();

	if (!up)
		up = load_conn_reopen(w, c);
	while (up) {
		if (load_now_ns() >= sh->deadline_ns)
			break;
		uint64_t tx = atomic_fetch_add(&sh->next_tx, 1);
		if (tx >= sh->opts->messages)
			break;
		w->attempted++;
		enum load_tx r = load_transaction(w, c, tx);
		w->last_done_ns = load_now_ns();
		switch (r) {
		case LOAD_TX_OK:
			w->accepted++;
			break;
		case LOAD_TX_REJECTED:
			w->rejected++;
			break;
		case LOAD_TX_IO:
			w->io_errors++;
			load_conn_close(c);
			up = load_conn_reopen(w, c);
			break;
		}
	}
	if (c->fd >= 0) {
		char line[LOAD_REPLY_LINE_MAX];
		static const char quit[] = "QUIT\r\n";
		(void)load_command(c, quit, sizeof(quit) - 1, line, sizeof(line));
		load_conn_close(c);
	}
	free(c);
	free(w->msg);
	free(w->body);
	w->msg = w->body = NULL;
	return NULL;
}

/* ---- arguments -------------------------------------------------------- */

static void load_usage(FILE *f)
{
	fprintf(f,
		"usage: smtp_load --port P [--host 127.0.0.1] [--concurrency C] [--messages N]\n"
		"                 [--duration-max S] [--size BYTES] [--domain D] [--accounts A]\n"
		"                 [--prefix user] [--from ADDR] [--seed N] [--timeout S]\n"
		"                 [--mix fixed|realistic]\n"
		"Sends N messages of BYTES bytes (or of a realistic size and MIME mix) over C\n"
		"SMTP connections to random recipients <prefix><0..A-1>@D and prints a JSON\n"
		"summary.  Loopback (127.0.0.0/8) only.\n");
}

static bool load_parse_u64(const char *name, const char *s, uint64_t min, uint64_t max,
			   uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (*s == '\0' || *s == '-' || *end != '\0' || errno != 0 || v < min || v > max) {
		fprintf(stderr, "smtp_load: --%s must be an integer in [%" PRIu64 ", %" PRIu64 "]\n",
			name, min, max);
		return false;
	}
	*out = v;
	return true;
}

static bool load_copy_arg(const char *name, const char *s, char *out, size_t outlen)
{
	size_t len = strlen(s);
	if (len == 0 || len >= outlen) {
		fprintf(stderr, "smtp_load: --%s must be 1..%zu characters\n", name, outlen - 1);
		return false;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (ch <= 0x20 || ch >= 0x7f || ch == '<' || ch == '>') {
			fprintf(stderr, "smtp_load: --%s contains a character not allowed in an address\n",
				name);
			return false;
		}
	}
	memcpy(out, s, len + 1);
	return true;
}

/* Accepts only a numeric IPv4 address inside 127.0.0.0/8. */
static bool load_set_host(struct load_opts *o, const char *host)
{
	struct in_addr a;
	if (inet_pton(AF_INET, host, &a) != 1 || (ntohl(a.s_addr) >> 24) != 127) {
		fprintf(stderr, "smtp_load: refusing --host %s: only numeric loopback addresses "
			"(127.0.0.0/8) are allowed\n", host);
		return false;
	}
	inet_ntop(AF_INET, &a, o->host, sizeof(o->host));
	o->addr.sin_family = AF_INET;
	o->addr.sin_addr = a;
	return true;
}

static bool load_parse_args(int argc, char **argv, struct load_opts *o)
{
	static const struct option longopts[] = {
		{ "host", required_argument, NULL, 'H' },
		{ "port", required_argument, NULL, 'p' },
		{ "concurrency", required_argument, NULL, 'c' },
		{ "messages", required_argument, NULL, 'n' },
		{ "duration-max", required_argument, NULL, 'd' },
		{ "size", required_argument, NULL, 's' },
		{ "domain", required_argument, NULL, 'D' },
		{ "accounts", required_argument, NULL, 'a' },
		{ "prefix", required_argument, NULL, 'P' },
		{ "from", required_argument, NULL, 'f' },
		{ "seed", required_argument, NULL, 'S' },
		{ "timeout", required_argument, NULL, 't' },
		{ "mix", required_argument, NULL, 'm' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	uint64_t v, port = 0;
	bool have_from = false;
	int ch;

	memset(o, 0, sizeof(*o));
	o->concurrency = 1;
	o->messages = 1000;
	o->duration_max_s = 60;
	o->size = 4096;
	o->accounts = 1000;
	o->seed = 1;
	o->timeout_s = 30;
	strcpy(o->domain, "bench.example");
	strcpy(o->prefix, "user");
	if (!load_set_host(o, "127.0.0.1"))
		return false;

	while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		bool ok = true;
		switch (ch) {
		case 'H': ok = load_set_host(o, optarg); break;
		case 'p': ok = load_parse_u64("port", optarg, 1, 65535, &port); break;
		case 'c':
			ok = load_parse_u64("concurrency", optarg, 1, LOAD_MAX_CONCURRENCY, &v);
			o->concurrency = (unsigned)v;
			break;
		case 'n': ok = load_parse_u64("messages", optarg, 1, LOAD_MAX_MESSAGES, &o->messages); break;
		case 'd':
			ok = load_parse_u64("duration-max", optarg, 1, LOAD_MAX_DURATION_S, &o->duration_max_s);
			break;
		case 's': ok = load_parse_u64("size", optarg, LOAD_MIN_SIZE, LOAD_MAX_SIZE, &o->size); break;
		case 'D': ok = load_copy_arg("domain", optarg, o->domain, sizeof(o->domain)); break;
		case 'a': ok = load_parse_u64("accounts", optarg, 1, LOAD_MAX_ACCOUNTS, &o->accounts); break;
		case 'P': ok = load_copy_arg("prefix", optarg, o->prefix, sizeof(o->prefix)); break;
		case 'f':
			ok = load_copy_arg("from", optarg, o->from, sizeof(o->from));
			have_from = true;
			break;
		case 'S': ok = load_parse_u64("seed", optarg, 0, UINT64_MAX, &o->seed); break;
		case 't': ok = load_parse_u64("timeout", optarg, 1, LOAD_MAX_TIMEOUT_S, &o->timeout_s); break;
		case 'm':
			ok = strcmp(optarg, "fixed") == 0 || strcmp(optarg, "realistic") == 0;
			o->mix = strcmp(optarg, "realistic") == 0;
			if (!ok)
				fprintf(stderr, "smtp_load: --mix is fixed or realistic\n");
			break;
		case 'h': load_usage(stdout); exit(0);
		default: ok = false; break;
		}
		if (!ok)
			return false;
	}
	if (optind != argc) {
		fprintf(stderr, "smtp_load: unexpected argument: %s\n", argv[optind]);
		return false;
	}
	if (port == 0) {
		fprintf(stderr, "smtp_load: --port is required\n");
		return false;
	}
	o->addr.sin_port = htons((uint16_t)port);
	if (!have_from)
		snprintf(o->from, sizeof(o->from), "loadgen@client.bench.example");
	return true;
}

/* ---- results ---------------------------------------------------------- */

static int load_cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted samples, in ms. */
static double load_percentile_ms(const uint32_t *v, size_t n, double p)
{
	if (n == 0)
		return 0.0;
	size_t rank = (size_t)((p / 100.0) * (double)n + 0.999999);
	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	return (double)v[rank - 1] / 1000.0;
}

static void load_json_string(const char *s)
{
	putchar('"');
	for (; *s != '\0'; s++) {
		if (*s == '"' || *s == '\\')
			printf("\\%c", *s);
		else
			putchar(*s);
	}
	putchar('"');
}

static void load_report(const struct load_opts *o, struct load_worker *w, double start_wall,
			uint64_t start_ns, uint64_t end_ns)
{
	uint64_t attempted = 0, sent = 0, accepted = 0, rejected = 0, io = 0, conn = 0;
	size_t n_lat = 0;
	const char *err = "";

	for (unsigned i = 0; i < o->concurrency; i++) {
		attempted += w[i].attempted;
		sent += w[i].sent;
		accepted += w[i].accepted;
		rejected += w[i].rejected;
		io += w[i].io_errors;
		conn += w[i].connect_errors;
		n_lat += w[i].n_lat;
		if (*err == '\0' && w[i].last_error[0] != '\0')
			err = w[i].last_error;
	}
	uint32_t *lat = load_xmalloc((n_lat == 0 ? 1 : n_lat) * sizeof(*lat));
	size_t k = 0;
	double sum = 0.0;
	for (unsigned i = 0; i < o->concurrency; i++) {
		if (w[i].n_lat == 0)
			continue; /* lat_us may be NULL */
		memcpy(lat + k, w[i].lat_us, w[i].n_lat * sizeof(*lat));
		k += w[i].n_lat;
	}
	for (size_t i = 0; i < n_lat; i++)
		sum += (double)lat[i];
	qsort(lat, n_lat, sizeof(*lat), load_cmp_u32);

	double elapsed = (double)(end_ns - start_ns) / 1e9;
	uint64_t bytes = 0;
	for (unsigned i = 0; i < o->concurrency; i++)
		bytes += w[i].bytes_sent;
	printf("{\"host\": \"%s\", \"port\": %u, \"concurrency\": %u, \"size\": %" PRIu64
	       ", \"mix\": \"%s\", \"bytes_sent\": %" PRIu64 ", \"accounts\": %" PRIu64 ", \"seed\": %" PRIu64 ",\n",
	       o->host, (unsigned)ntohs(o->addr.sin_port), o->concurrency, o->size, o->mix ? "realistic" : "fixed",
	       bytes, o->accounts, o->seed);
	printf(" \"attempted\": %" PRIu64 ", \"sent\": %" PRIu64 ", \"accepted\": %" PRIu64
	       ", \"failed\": %" PRIu64 ", \"rejected\": %" PRIu64 ", \"io_errors\": %" PRIu64
	       ", \"connect_errors\": %" PRIu64 ",\n",
	       attempted, sent, accepted, attempted - accepted, rejected, io, conn);
	printf(" \"elapsed\": %.6f, \"rate\": %.2f, \"start_unix\": %.6f, \"end_unix\": %.6f,\n",
	       elapsed, elapsed > 0 ? (double)accepted / elapsed : 0.0, start_wall, start_wall + elapsed);
	printf(" \"latency_ms\": {\"mean\": %.3f, \"p50\": %.3f, \"p90\": %.3f, "
	       "\"p99\": %.3f, \"max\": %.3f},\n",
	       n_lat ? sum / (double)n_lat / 1000.0 : 0.0, load_percentile_ms(lat, n_lat, 50),
	       load_percentile_ms(lat, n_lat, 90), load_percentile_ms(lat, n_lat, 99),
	       n_lat ? (double)lat[n_lat - 1] / 1000.0 : 0.0);
	printf(" \"last_error\": ");
	load_json_string(err);
	printf("}\n");
	free(lat);
}

int main(int argc, char **argv)
{
	struct load_opts o;
	struct load_shared sh;

	if (!load_parse_args(argc, argv, &o)) {
		load_usage(stderr);
		return 2;
	}
	/* Recipient <prefix><max index>@<domain> must fit an address buffer,
	 * and the longest possible headers must leave room for a body line. */
	if (strlen(o.prefix) + 20 + 1 + strlen(o.domain) >= 320) {
		fprintf(stderr, "smtp_load: --prefix and --domain are too long together\n");
		return 2;
	}
	char longest[320];
	snprintf(longest, sizeof(longest), "%s%" PRIu64 "@%s", o.prefix, UINT64_MAX, o.domain);
	int hmax = load_headers(NULL, 0, &o, UINT64_MAX, LOAD_MAX_CONCURRENCY, longest);
	if (hmax < 0 || (uint64_t)hmax + 2 > o.size) {
		fprintf(stderr, "smtp_load: --size %" PRIu64 " is too small for the headers "
			"(needs at least %d)\n", o.size, hmax + 2);
		return 2;
	}
	memset(&sh, 0, sizeof(sh));
	sh.opts = &o;
	atomic_init(&sh.next_tx, 0);
	/* Connection set-up happens before the clock starts, but it is bounded
	 * by the same deadline as the run (plus the socket timeout). */
	sh.deadline_ns = load_now_ns() + o.duration_max_s * 1000000000ull;
	if (pthread_barrier_init(&sh.start, NULL, o.concurrency + 1) != 0) {
		fprintf(stderr, "smtp_load: pthread_barrier_init failed\n");
		return 1;
	}

	struct load_worker *w = calloc(o.concurrency, sizeof(*w));
	if (w == NULL) {
		fprintf(stderr, "smtp_load: out of memory\n");
		return 1;
	}
	unsigned started = 0;
	for (unsigned i = 0; i < o.concurrency; i++) {
		w[i].index = i;
		w[i].sh = &sh;
		/* Distinct non-zero xorshift state per worker. */
		w[i].rng = (o.seed + 1) * 0x9E3779B97F4A7C15ull ^ ((uint64_t)i + 1) * 0xD1B54A32D192ED03ull;
		if (w[i].rng == 0)
			w[i].rng = 0x853c49e6748fea9bull;
		int rc = pthread_create(&w[i].thread, NULL, load_worker_main, &w[i]);
		if (rc != 0) {
			/* The barrier counts every worker: without them all, nobody would pass. */
			fprintf(stderr, "smtp_load: pthread_create: %s\n", strerror(rc));
			abort();
		}
		started++;
	}
	pthread_barrier_wait(&sh.start);
	uint64_t main_ns = load_now_ns();
	double main_wall = load_wall_s();
	for (unsigned i = 0; i < started; i++)
		pthread_join(w[i].thread, NULL);
	/* The clock starts when the first worker was released to send. */
	uint64_t start_ns = main_ns, end_ns = 0, connected = 0;
	for (unsigned i = 0; i < o.concurrency; i++)
		if (w[i].begin_ns < start_ns)
			start_ns = w[i].begin_ns;
	for (unsigned i = 0; i < o.concurrency; i++) {
		if (w[i].last_done_ns > end_ns)
			end_ns = w[i].last_done_ns;
		connected += w[i].attempted > 0;
	}
	if (end_ns < start_ns)
		end_ns = start_ns;
	double start_wall = main_wall - (double)(main_ns - start_ns) / 1e9;
	pthread_barrier_destroy(&sh.start);

	load_report(&o, w, start_wall, start_ns, end_ns);
	for (unsigned i = 0; i < o.concurrency; i++)
		free(w[i].lat_us);
	free(w);
	if (connected == 0) {
		fprintf(stderr, "smtp_load: no connection could be used\n");
		return 1;
	}
	return 0;
}
