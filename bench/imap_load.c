/*
 * imap_load.c - a bounded IMAP and POP3 read load generator (`make bench`).
 *
 * Owns: nothing in Strata; it is a client only and links plain libc and
 * pthreads, so the same binary measures Strata and a reference server alike.
 *
 * What it does: starts `--clients` threads at once (a barrier releases
 * them together); client i logs in as its own account
 * <prefix><i, zero-padded to --width digits>[@<domain>] with `--password`
 * and runs one scenario `--iterations` times, each time in a new session:
 *
 *   fetch-bodies  connect, LOGIN, SELECT INBOX,
 *                 UID FETCH 1:* (RFC822.SIZE BODY.PEEK[]), LOGOUT
 *   fetch-meta    connect, LOGIN, SELECT INBOX,
 *                 FETCH 1:* (FLAGS ENVELOPE BODYSTRUCTURE), LOGOUT
 *   search        connect, LOGIN, SELECT INBOX, SEARCH FROM <from>,
 *                 SEARCH SUBJECT <subject>, SEARCH BODY <body>, SEARCH UNSEEN,
 *                 SEARCH SINCE <date>, LOGOUT
 *   store         connect, LOGIN, SELECT INBOX, STORE n +FLAGS (\Flagged) for
 *                 every message n (the first --store-max ones when given),
 *                 then STORE n -FLAGS (\Flagged) for the same n (the mailbox
 *                 ends as it began), LOGOUT
 *   pop3-retr     connect, USER, PASS, STAT, RETR every message, QUIT (no DELE)
 *
 * What is checked (every failed check is an error of the session):
 *  - every tagged reply is OK and every POP3 reply +OK; a BYE is an error;
 *  - IMAP literals are read by their announced size, byte for byte; each
 *    body literal must be exactly the message's RFC822.SIZE, and a FETCH
 *    1:* must return one body (or one ENVELOPE and BODYSTRUCTURE) per
 *    message that SELECT announced;
 *  - with --expect-messages N, SELECT's EXISTS and POP3's STAT count must be N;
 *  - SEARCH results must be message numbers within the mailbox; the number
 *    of matches of each search is reported so the caller can compare it
 *    with what the corpus holds;
 *  - every STORE must be answered by a FETCH of that message whose FLAGS
 *    include \Flagged after +FLAGS and leave it out after -FLAGS;
 *  - RETR bodies are dot-unstuffed and counted; their sum must equal the
 *    octets STAT announced.
 * A session with an error is closed and counted; the other clients go on.
 *
 * Paced mode (--interval-ms T > 0): instead of starting its next session
 * as soon as the last one ends (a closed loop, which measures the most a
 * server can do), client k starts session i at k*T/clients + i*T ms after
 * the barrier, or at once when it is already late.  All clients together
 * then offer clients/T sessions per ms whatever the server's speed, so two
 * servers' latencies can be compared at the same load: in a closed loop a
 * faster server is offered more work at once and each of its commands
 * waits behind more of the others.
 *
 * Measurements: the latency of every command, from handing it to the
 * kernel to reading the last byte of its tagged (or POP3 final) reply,
 * grouped by command; the connect-to-greeting time ("connect") and the
 * whole session ("session").  "messages" counts the work the scenario is
 * about: bodies received (fetch-bodies, pop3-retr), messages described
 * (fetch-meta), messages searched (each SEARCH counts the whole mailbox)
 * and messages whose flags a STORE changed.  Elapsed time runs from the
 * barrier to the end of the last client's last session.
 *
 * Output: one JSON object per line on stdout for each scenario given
 * (--scenario may list several, separated by commas, all on --port).
 * Diagnostics go to stderr.  Exit status: 0 when the run completed (errors
 * are counted in the JSON, not in the status), 2 on bad arguments.
 *
 * Safety and bounds:
 *  - Loopback only: --host must be a numeric IPv4 address in 127.0.0.0/8.
 *  - Every loop is bounded: sessions by --iterations, every command by the
 *    mailbox size (at most IL_MAX_EXISTS messages), every socket read and
 *    write by --timeout, lines by IL_LINE_MAX, the text of one IMAP response
 *    by IL_TEXT_MAX, a literal by IL_LITERAL_MAX and the literals of one
 *    response by IL_LITERALS_MAX.  No new session starts after
 *    --duration-max seconds, and long STORE and RETR loops stop there too
 *    (the run is then reported as "truncated").
 *  - Memory: a fixed read buffer and response text per client, and one
 *    32-bit latency sample per command.
 *
 * Concurrency: clients share only the options and a start barrier; each
 * keeps its own counters and samples, merged by the main thread after join.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define IL_MAX_CLIENTS 1000
#define IL_MAX_ITERATIONS 10000ull
#define IL_MAX_DURATION_S 3600ull
#define IL_MAX_TIMEOUT_S 600ull
#define IL_MAX_ACCOUNTS 1000000ull
#define IL_MAX_EXISTS 1000000ull          /* a larger mailbox is an error */
#define IL_LINE_MAX (256u * 1024u)        /* one line (also the read buffer) */
#define IL_TEXT_MAX (4u * 1024u * 1024u)  /* non-literal text of one IMAP response */
#define IL_LITERAL_MAX (256ull << 20)     /* one literal, one POP3 message */
#define IL_LITERALS_MAX 100000u           /* literals in one IMAP response */
#define IL_NEST_MAX 100u                  /* parenthesis depth in a FETCH response */
#define IL_ERR_TEXT 240
#define IL_ARG_MAX 128
#define IL_CMD_MAX 1024                   /* one command line we send */

/* ---- options ---------------------------------------------------------- */

enum il_scenario {
	IL_SC_FETCH_BODIES,
	IL_SC_FETCH_META,
	IL_SC_SEARCH,
	IL_SC_STORE,
	IL_SC_POP3_RETR,
	IL_SC_COUNT
};

static const char *const il_scenario_names[IL_SC_COUNT] = {
	"fetch-bodies", "fetch-meta", "search", "store", "pop3-retr",
};

/* The searches of the search scenario, in the order they are sent. */
enum il_search {
	IL_SEARCH_FROM,
	IL_SEARCH_SUBJECT,
	IL_SEARCH_BODY,
	IL_SEARCH_UNSEEN,
	IL_SEARCH_SINCE,
	IL_SEARCH_COUNT
};

static const char *const il_search_names[IL_SEARCH_COUNT] = {
	"FROM", "SUBJECT", "BODY", "UNSEEN", "SINCE",
};

/* Latency classes: one per command kind, plus connect and session. */
enum il_class {
	IL_C_SESSION,
	IL_C_CONNECT,
	IL_C_LOGIN,
	IL_C_SELECT,
	IL_C_FETCH,
	IL_C_SEARCH_FROM,      /* IL_C_SEARCH_FROM + enum il_search */
	IL_C_SEARCH_SUBJECT,
	IL_C_SEARCH_BODY,
	IL_C_SEARCH_UNSEEN,
	IL_C_SEARCH_SINCE,
	IL_C_STORE_ADD,
	IL_C_STORE_REMOVE,
	IL_C_LOGOUT,
	IL_C_USER,
	IL_C_PASS,
	IL_C_STAT,
	IL_C_RETR,
	IL_C_QUIT,
	IL_C_COUNT
};

static const char *const il_class_names[IL_C_COUNT] = {
	"session", "connect", "LOGIN", "SELECT", "FETCH", "SEARCH FROM", "SEARCH SUBJECT",
	"SEARCH BODY", "SEARCH UNSEEN", "SEARCH SINCE", "STORE +FLAGS", "STORE -FLAGS",
	"LOGOUT", "USER", "PASS", "STAT", "RETR", "QUIT",
};

struct il_opts {
	char host[INET_ADDRSTRLEN];
	struct sockaddr_in addr;
	bool scenario[IL_SC_COUNT];
	unsigned clients;
	uint64_t iterations;
	uint64_t duration_max_s;
	uint64_t timeout_s;
	uint64_t accounts;       /* client i logs in as account i % accounts */
	uint64_t width;          /* zero-padded digits of the account number */
	uint64_t expect_messages; /* 0: not checked */
	uint64_t store_max;      /* store: messages 1..store_max only (0: all) */
	uint64_t interval_ms;    /* paced mode: a session every interval_ms per client (0: closed loop) */
	char prefix[IL_ARG_MAX];
	char domain[IL_ARG_MAX];
	char password[IL_ARG_MAX];
	char search[IL_SEARCH_COUNT][IL_ARG_MAX]; /* UNSEEN's entry stays empty */
};

/* ---- per-client state ------------------------------------------------- */

struct il_samples {
	uint32_t *v;  /* microseconds */
	size_t n, cap;
};

struct il_conn {
	int fd;
	char *buf;     /* IL_LINE_MAX bytes */
	size_t pos, len;
};

/* The non-literal text of one IMAP response, literals left as "{n}". */
struct il_resp {
	char *text;    /* IL_TEXT_MAX + 1 bytes */
	size_t len;
	unsigned literals;
};

struct il_shared {
	const struct il_opts *opts;
	enum il_scenario scenario;
	uint64_t deadline_ns;    /* CLOCK_MONOTONIC */
	pthread_barrier_t start;
};

struct il_worker {
	pthread_t thread;
	unsigned index;
	struct il_shared *sh;
	char user[2 * IL_ARG_MAX + 24];
	struct il_conn conn;
	struct il_resp resp;
	unsigned tag;
	/* results */
	struct il_samples lat[IL_C_COUNT];
	uint64_t sessions, failed_sessions, commands, errors;
	uint64_t messages, bytes;
	uint64_t matches[IL_SEARCH_COUNT];
	bool truncated;
	uint64_t begin_ns, end_ns;
	char last_error[IL_ERR_TEXT];
};

/* What one session learns from the server's untagged responses. */
struct il_session {
	uint64_t exists;
	bool have_exists;
	/* FETCH 1:* */
	uint64_t fetched;        /* responses carrying what was asked for */
	uint64_t body_bytes;
	/* SEARCH */
	uint64_t hits;
	bool have_search;
	/* STORE */
	uint64_t store_seq;
	bool store_flagged;      /* the state the FETCH must show */
	bool store_seen;
};

/* ---- small helpers ---------------------------------------------------- */

static uint64_t il_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Paced mode: sleeps until `when_ns` (CLOCK_MONOTONIC); returns at once
 * when it has passed. */
static void il_sleep_until(uint64_t when_ns)
{
	struct timespec ts = { (time_t)(when_ns / 1000000000ull), (long)(when_ns % 1000000000ull) };
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

static void *il_xmalloc(size_t n)
{
	void *p = malloc(n);
	if (p == NULL) {
		fprintf(stderr, "imap_load: out of memory (%zu bytes)\n", n);
		abort();
	}
	return p;
}

/* Records a short, printable description of the latest failure and counts
 * it.  Always returns false, so that callers can `return il_fail(...)`. */
static bool il_fail(struct il_worker *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool il_fail(struct il_worker *w, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(w->last_error, sizeof(w->last_error), fmt, ap);
	va_end(ap);
	for (char *p = w->last_error; *p != '\0'; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
			*p = '?';
	w->errors++;
	return false;
}

static void il_sample_add(struct il_samples *s, uint64_t ns)
{
	uint64_t us = ns / 1000;
	if (s->n == s->cap) {
		size_t cap = s->cap == 0 ? 256 : s->cap * 2;
		uint32_t *p = realloc(s->v, cap * sizeof(*p));
		if (p == NULL) {
			fprintf(stderr, "imap_load: out of memory for latency samples\n");
			abort();
		}
		s->v = p;
		s->cap = cap;
	}
	s->v[s->n++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

/* Parses an unsigned decimal of at most 19 digits from [p, end); returns
 * the first byte after it, or NULL if there is no number. */
static const char *il_number(const char *p, const char *end, uint64_t *out)
{
	uint64_t v = 0;
	unsigned digits = 0;
	while (p < end && *p >= '0' && *p <= '9') {
		if (++digits > 19)
			return NULL;
		v = v * 10 + (uint64_t)(*p - '0');
		p++;
	}
	if (digits == 0)
		return NULL;
	*out = v;
	return p;
}

static bool il_past_deadline(const struct il_worker *w)
{
	return il_now_ns() >= w->sh->deadline_ns;
}

/* ---- connection ------------------------------------------------------- */

static void il_conn_close(struct il_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->pos = c->len = 0;
}

static bool il_send(struct il_worker *w, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t n = send(w->conn.fd, data, len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return il_fail(w, "send: %s", strerror(errno));
		}
		data += n;
		len -= (size_t)n;
	}
	return true;
}

/* Reads more bytes into the buffer after what it holds.  False on EOF,
 * error or timeout (the error is recorded). */
static bool il_fill(struct il_worker *w)
{
	struct il_conn *c = &w->conn;
	if (c->pos == c->len) {
		c->pos = c->len = 0;
	} else if (c->pos > 0 && c->len == IL_LINE_MAX) {
		memmove(c->buf, c->buf + c->pos, c->len - c->pos);
		c->len -= c->pos;
		c->pos = 0;
	}
	for (;;) {
		ssize_t r = recv(c->fd, c->buf + c->len, IL_LINE_MAX - c->len, 0);
		if (r > 0) {
			c->len += (size_t)r;
			return true;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r == 0)
			return il_fail(w, "connection closed by the server");
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return il_fail(w, "no reply within the timeout");
		return il_fail(w, "recv: %s", strerror(errno));
	}
}

/* Returns the next line in *line: *len bytes without its line end, *raw
 * bytes with it (CRLF or a bare LF).  The pointer is valid until the next
 * read.  A line longer than IL_LINE_MAX is an error. */
static bool il_line(struct il_worker *w, const char **line, size_t *len, size_t *raw)
{
	struct il_conn *c = &w->conn;
	size_t scanned = 0;
	for (;;) {
		const char *start = c->buf + c->pos;
		const char *nl = memchr(start + scanned, '\n', c->len - c->pos - scanned);
		if (nl != NULL) {
			size_t n = (size_t)(nl - start);
			*raw = n + 1;
			if (n > 0 && start[n - 1] == '\r')
				n--;
			*line = start;
			*len = n;
			c->pos += *raw;
			return true;
		}
		scanned = c->len - c->pos;
		if (scanned >= IL_LINE_MAX)
			return il_fail(w, "a line longer than %u bytes", IL_LINE_MAX);
		if (c->len == IL_LINE_MAX) {
			memmove(c->buf, start, scanned);
			c->len = scanned;
			c->pos = 0;
		}
		if (!il_fill(w))
			return false;
	}
}

/* Consumes exactly n bytes (a literal's contents), counting them. */
static bool il_skip(struct il_worker *w, uint64_t n)
{
	struct il_conn *c = &w->conn;
	while (n > 0) {
		if (c->pos == c->len && !il_fill(w))
			return false;
		size_t have = c->len - c->pos;
		size_t take = n < have ? (size_t)n : have;
		c->pos += take;
		n -= take;
	}
	return true;
}

static bool il_connect(struct il_worker *w)
{
	const struct il_opts *o = w->sh->opts;
	struct il_conn *c = &w->conn;
	struct timeval tv = { .tv_sec = (time_t)o->timeout_s, .tv_usec = 0 };
	int one = 1;

	c->pos = c->len = 0;
	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return il_fail(w, "socket: %s", strerror(errno));
	if (setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0 ||
	    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0 ||
	    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) {
		il_conn_close(c);
		return il_fail(w, "setsockopt: %s", strerror(errno));
	}
	if (connect(c->fd, (const struct sockaddr *)&o->addr, sizeof(o->addr)) != 0) {
		int e = errno;
		il_conn_close(c);
		return il_fail(w, "connect %s:%u: %s", o->host, (unsigned)ntohs(o->addr.sin_port),
			       strerror(e));
	}
	return true;
}

/* ---- IMAP responses ---------------------------------------------------- */

/* If the line ends in a literal announcement "{n}", stores n. */
static bool il_literal_suffix(const char *line, size_t len, uint64_t *n)
{
	if (len < 3 || line[len - 1] != '}')
		return false;
	size_t i = len - 1;
	while (i > 0 && line[i - 1] >= '0' && line[i - 1] <= '9')
		i--;
	if (i == 0 || i == len - 1 || line[i - 1] != '{')
		return false;
	return il_number(line + i, line + len - 1, n) == line + len - 1;
}

/* Reads one whole response into w->resp: its lines, with each literal's
 * contents consumed and counted and only its "{n}" left in the text. */
static bool il_imap_read(struct il_worker *w, uint64_t *literal_bytes)
{
	struct il_resp *r = &w->resp;
	r->len = 0;
	r->literals = 0;
	for (;;) {
		const char *line;
		size_t len, raw;
		uint64_t n;
		if (!il_line(w, &line, &len, &raw))
			return false;
		if (len > IL_TEXT_MAX - r->len)
			return il_fail(w, "a response longer than %u bytes of text", IL_TEXT_MAX);
		memcpy(r->text + r->len, line, len);
		r->len += len;
		r->text[r->len] = '\0';
		if (!il_literal_suffix(line, len, &n))
			return true;
		if (n > IL_LITERAL_MAX)
			return il_fail(w, "a literal of %" PRIu64 " bytes (limit %llu)", n,
				       (unsigned long long)IL_LITERAL_MAX);
		if (++r->literals > IL_LITERALS_MAX)
			return il_fail(w, "more than %u literals in one response", IL_LITERALS_MAX);
		if (!il_skip(w, n))
			return false;
		*literal_bytes += n;
	}
}

/* A cursor over the text of a response. */
struct il_scan {
	const char *p, *end;
};

static bool il_scan_lit(struct il_scan *s, const char *word)
{
	size_t n = strlen(word);
	if ((size_t)(s->end - s->p) < n || strncasecmp(s->p, word, n) != 0)
		return false;
	s->p += n;
	return true;
}

/* Skips one value: NIL, number or atom, quoted string, literal marker or
 * parenthesised list.  Sets *len to a string's length (else 0). */
static bool il_skip_value(struct il_scan *s, unsigned depth, uint64_t *len)
{
	*len = 0;
	if (s->p >= s->end)
		return false;
	if (*s->p == '"') {
		for (s->p++; s->p < s->end; s->p++) {
			if (*s->p == '\\') {
				if (++s->p >= s->end)
					return false;
			} else if (*s->p == '"') {
				s->p++;
				return true;
			}
			(*len)++;
		}
		return false;
	}
	if (*s->p == '{') {
		const char *q = il_number(s->p + 1, s->end, len);
		if (q == NULL || q >= s->end || *q != '}')
			return false;
		s->p = q + 1;
		return true;
	}
	if (*s->p == '(') {
		uint64_t ignored;
		if (depth >= IL_NEST_MAX)
			return false;
		s->p++;
		while (s->p < s->end && *s->p != ')') {
			if (*s->p == ' ') {
				s->p++;
				continue;
			}
			if (!il_skip_value(s, depth + 1, &ignored))
				return false;
		}
		if (s->p >= s->end)
			return false;
		s->p++;
		return true;
	}
	const char *start = s->p;
	while (s->p < s->end && *s->p != ' ' && *s->p != '(' && *s->p != ')' && *s->p != '"' &&
	       *s->p != '{')
		s->p++;
	return s->p > start;
}

/* What one untagged FETCH response carries. */
struct il_fetch {
	uint64_t seq, uid, size, body;
	bool has_uid, has_size, has_body, has_flags, flagged, has_envelope, has_bodystructure;
};

/* Scans the FLAGS list the cursor is on for \Flagged. */
static bool il_flags_scan(struct il_scan *s, struct il_fetch *f)
{
	uint64_t ignored;
	if (s->p >= s->end || *s->p != '(')
		return false;
	struct il_scan list = { s->p + 1, s->end };
	if (!il_skip_value(s, 0, &ignored))
		return false;
	list.end = s->p - 1;
	f->has_flags = true;
	while (list.p < list.end) {
		if (*list.p == ' ') {
			list.p++;
			continue;
		}
		const char *flag = list.p;
		if (!il_skip_value(&list, 1, &ignored))
			return false;
		if (list.p - flag == 8 && strncasecmp(flag, "\\Flagged", 8) == 0)
			f->flagged = true;
	}
	return true;
}

/* Parses the item name the cursor is on ("UID", "BODY[]", ...). */
static bool il_item_name(struct il_scan *s, const char **name, size_t *len)
{
	*name = s->p;
	while (s->p < s->end && *s->p != ' ' && *s->p != '[' && *s->p != ')')
		s->p++;
	if (s->p < s->end && *s->p == '[') {
		const char *close = memchr(s->p, ']', (size_t)(s->end - s->p));
		if (close == NULL)
			return false;
		s->p = close + 1;
		while (s->p < s->end && *s->p != ' ')
			s->p++;
	}
	*len = (size_t)(s->p - *name);
	return *len > 0;
}

static bool il_name_is(const char *name, size_t len, const char *want)
{
	return strlen(want) == len && strncasecmp(name, want, len) == 0;
}

/* Parses "* n FETCH (item value ...)".  Returns false if the response is
 * not a FETCH or is malformed (*bad tells which). */
static bool il_fetch_parse(const struct il_resp *r, struct il_fetch *f, bool *bad)
{
	struct il_scan s = { r->text, r->text + r->len };
	memset(f, 0, sizeof(*f));
	*bad = false;
	if (!il_scan_lit(&s, "* ") || (s.p = il_number(s.p, s.end, &f->seq)) == NULL ||
	    !il_scan_lit(&s, " FETCH ("))
		return false;
	*bad = true;
	while (s.p < s.end && *s.p != ')') {
		const char *name, *value;
		size_t len;
		uint64_t slen;
		if (*s.p == ' ') {
			s.p++;
			continue;
		}
		if (!il_item_name(&s, &name, &len) || !il_scan_lit(&s, " "))
			return false;
		value = s.p;
		if (il_name_is(name, len, "FLAGS")) {
			if (!il_flags_scan(&s, f))
				return false;
			continue;
		}
		if (!il_skip_value(&s, 0, &slen))
			return false;
		if (il_name_is(name, len, "UID")) {
			f->has_uid = il_number(value, s.p, &f->uid) == s.p;
			if (!f->has_uid)
				return false;
		} else if (il_name_is(name, len, "RFC822.SIZE")) {
			f->has_size = il_number(value, s.p, &f->size) == s.p;
			if (!f->has_size)
				return false;
		} else if (il_name_is(name, len, "BODY[]")) {
			if (*value != '{' && *value != '"')
				return false;
			f->has_body = true;
			f->body = slen;
		} else if (il_name_is(name, len, "ENVELOPE")) {
			f->has_envelope = *value == '(';
		} else if (il_name_is(name, len, "BODYSTRUCTURE")) {
			f->has_bodystructure = *value == '(';
		}
	}
	if (s.p >= s.end)
		return false;
	*bad = false;
	return true;
}

/* Handles an untagged response of the current command.  Returns false
 * (with the error recorded) when it breaks a check. */
typedef bool il_untagged_fn(struct il_worker *w, struct il_session *ss);

static bool il_untagged_exists(struct il_worker *w, struct il_session *ss)
{
	const struct il_resp *r = &w->resp;
	struct il_scan s = { r->text, r->text + r->len };
	uint64_t n;
	if (!il_scan_lit(&s, "* ") || (s.p = il_number(s.p, s.end, &n)) == NULL ||
	    !il_scan_lit(&s, " EXISTS") || s.p != s.end)
		return true;
	if (n > IL_MAX_EXISTS)
		return il_fail(w, "a mailbox of %" PRIu64 " messages (limit %llu)", n, IL_MAX_EXISTS);
	ss->exists = n;
	ss->have_exists = true;
	return true;
}

static bool il_untagged_bodies(struct il_worker *w, struct il_session *ss)
{
	struct il_fetch f;
	bool bad;
	if (!il_fetch_parse(&w->resp, &f, &bad))
		return bad ? il_fail(w, "malformed FETCH response: %.80s", w->resp.text)
			   : il_untagged_exists(w, ss);
	if (!f.has_body)
		return true; /* an unsolicited FLAGS update, say */
	if (!f.has_uid || !f.has_size)
		return il_fail(w, "FETCH %" PRIu64 " without UID or RFC822.SIZE", f.seq);
	if (f.body != f.size)
		return il_fail(w, "message UID %" PRIu64 ": body of %" PRIu64
			       " bytes, RFC822.SIZE %" PRIu64, f.uid, f.body, f.size);
	ss->fetched++;
	ss->body_bytes += f.body;
	return true;
}

static bool il_untagged_meta(struct il_worker *w, struct il_session *ss)
{
	struct il_fetch f;
	bool bad;
	if (!il_fetch_parse(&w->resp, &f, &bad))
		return bad ? il_fail(w, "malformed FETCH response: %.80s", w->resp.text)
			   : il_untagged_exists(w, ss);
	if (!f.has_envelope && !f.has_bodystructure)
		return true;
	if (!f.has_envelope || !f.has_bodystructure || !f.has_flags)
		return il_fail(w, "FETCH %" PRIu64 " lacks FLAGS, ENVELOPE or BODYSTRUCTURE", f.seq);
	ss->fetched++;
	return true;
}

static bool il_untagged_search(struct il_worker *w, struct il_session *ss)
{
	const struct il_resp *r = &w->resp;
	struct il_scan s = { r->text, r->text + r->len };
	if (!il_scan_lit(&s, "* SEARCH"))
		return il_untagged_exists(w, ss);
	if (ss->have_search)
		return il_fail(w, "two SEARCH responses to one command");
	ss->have_search = true;
	while (s.p < s.end) {
		uint64_t n;
		if (!il_scan_lit(&s, " ") || (s.p = il_number(s.p, s.end, &n)) == NULL)
			return il_fail(w, "malformed SEARCH response: %.80s", r->text);
		if (n == 0 || n > ss->exists)
			return il_fail(w, "SEARCH names message %" PRIu64 " of %" PRIu64, n, ss->exists);
		ss->hits++;
	}
	return true;
}

static bool il_untagged_store(struct il_worker *w, struct il_session *ss)
{
	struct il_fetch f;
	bool bad;
	if (!il_fetch_parse(&w->resp, &f, &bad))
		return bad ? il_fail(w, "malformed FETCH response: %.80s", w->resp.text)
			   : il_untagged_exists(w, ss);
	if (f.seq != ss->store_seq || !f.has_flags)
		return true;
	if (f.flagged != ss->store_flagged)
		return il_fail(w, "STORE %" PRIu64 ": FETCH shows \\Flagged %s", f.seq,
			       f.flagged ? "set" : "not set");
	ss->store_seen = true;
	return true;
}

/* Sends "<tag> <cmd>\r\n" and reads responses up to its tagged reply,
 * handing each untagged one to fn.  Records the latency in class cls.
 * True only on a tagged OK with every check passed. */
static bool il_imap_command(struct il_worker *w, struct il_session *ss, enum il_class cls,
			    const char *cmd, il_untagged_fn *fn)
{
	char line[IL_CMD_MAX];
	char tag[16];
	uint64_t literal_bytes = 0;

	int tl = snprintf(tag, sizeof(tag), "a%u", ++w->tag);
	int n = snprintf(line, sizeof(line), "%s %s\r\n", tag, cmd);
	if (tl < 0 || n < 0 || (size_t)n >= sizeof(line))
		return il_fail(w, "command too long: %.40s", cmd);
	uint64_t t0 = il_now_ns();
	w->commands++;
	if (!il_send(w, line, (size_t)n))
		return false;
	/* Bounded: every response consumes at least one line from a socket
	 * with a timeout, and at most 4 responses per message (plus slack)
	 * belong to any command of this program. */
	uint64_t limit = 4 * (ss->have_exists ? ss->exists : 0) + 10000;
	for (uint64_t i = 0; i < limit; i++) {
		if (!il_imap_read(w, &literal_bytes))
			return false;
		const char *t = w->resp.text;
		if (strncmp(t, "* ", 2) == 0) {
			if (strncasecmp(t + 2, "BYE", 3) == 0 && cls != IL_C_LOGOUT)
				return il_fail(w, "%s: %.120s", il_class_names[cls], t);
			if (fn != NULL && !fn(w, ss))
				return false;
			continue;
		}
		if (strncmp(t, tag, (size_t)tl) != 0 || t[tl] != ' ')
			return il_fail(w, "%s: unexpected response: %.120s", il_class_names[cls], t);
		il_sample_add(&w->lat[cls], il_now_ns() - t0);
		if (strncasecmp(t + tl + 1, "OK", 2) != 0)
			return il_fail(w, "%s: %.160s", il_class_names[cls], t);
		w->bytes += literal_bytes;
		return true;
	}
	return il_fail(w, "%s: more than %" PRIu64 " responses", il_class_names[cls], limit);
}

/* ---- IMAP scenarios ---------------------------------------------------- */

static bool il_imap_open(struct il_worker *w, struct il_session *ss)
{
	const struct il_opts *o = w->sh->opts;
	char cmd[IL_CMD_MAX - 32];
	uint64_t ignored = 0, t0 = il_now_ns();

	if (!il_connect(w))
		return false;
	if (!il_imap_read(w, &ignored))
		return false;
	if (strncasecmp(w->resp.text, "* OK", 4) != 0)
		return il_fail(w, "greeting: %.160s", w->resp.text);
	il_sample_add(&w->lat[IL_C_CONNECT], il_now_ns() - t0);
	snprintf(cmd, sizeof(cmd), "LOGIN \"%s\" \"%s\"", w->user, o->password);
	if (!il_imap_command(w, ss, IL_C_LOGIN, cmd, il_untagged_exists))
		return false;
	ss->have_exists = false;
	if (!il_imap_command(w, ss, IL_C_SELECT, "SELECT INBOX", il_untagged_exists))
		return false;
	if (!ss->have_exists)
		return il_fail(w, "SELECT INBOX: no EXISTS");
	if (o->expect_messages != 0 && ss->exists != o->expect_messages)
		return il_fail(w, "%s: INBOX has %" PRIu64 " messages, expected %" PRIu64, w->user,
			       ss->exists, o->expect_messages);
	return true;
}

static bool il_scenario_fetch(struct il_worker *w, struct il_session *ss, bool bodies)
{
	const char *cmd = bodies ? "UID FETCH 1:* (RFC822.SIZE BODY.PEEK[])"
				 : "FETCH 1:* (FLAGS ENVELOPE BODYSTRUCTURE)";
	if (ss->exists == 0)
		return true; /* "1:*" on an empty mailbox is an error in IMAP */
	uint64_t want = ss->exists;
	if (!il_imap_command(w, ss, IL_C_FETCH, cmd, bodies ? il_untagged_bodies : il_untagged_meta))
		return false;
	w->messages += ss->fetched;
	if (ss->fetched != want)
		return il_fail(w, "%s: %" PRIu64 " of %" PRIu64 " messages returned", cmd,
			       ss->fetched, want);
	return true;
}

static bool il_scenario_search(struct il_worker *w, struct il_session *ss)
{
	const struct il_opts *o = w->sh->opts;
	char cmd[IL_ARG_MAX + 32];
	for (unsigned i = 0; i < IL_SEARCH_COUNT; i++) {
		if (i == IL_SEARCH_UNSEEN)
			snprintf(cmd, sizeof(cmd), "SEARCH UNSEEN");
		else if (i == IL_SEARCH_SINCE)
			snprintf(cmd, sizeof(cmd), "SEARCH SINCE %s", o->search[i]);
		else
			snprintf(cmd, sizeof(cmd), "SEARCH %s \"%s\"", il_search_names[i], o->search[i]);
		ss->hits = 0;
		ss->have_search = false;
		if (!il_imap_command(w, ss, (enum il_class)(IL_C_SEARCH_FROM + i), cmd,
				     il_untagged_search))
			return false;
		if (!ss->have_search)
			return il_fail(w, "%s: no SEARCH response", cmd);
		w->matches[i] += ss->hits;
		w->messages += ss->exists;
	}
	return true;
}

static bool il_scenario_store(struct il_worker *w, struct il_session *ss)
{
	char cmd[96];
	for (unsigned pass = 0; pass < 2; pass++) {
		bool add = pass == 0;
		uint64_t last = ss->exists;
		if (w->sh->opts->store_max != 0 && last > w->sh->opts->store_max)
			last = w->sh->opts->store_max;
		for (uint64_t n = 1; n <= last && n <= ss->exists; n++) {
			if (il_past_deadline(w)) {
				w->truncated = true;
				return true;
			}
			snprintf(cmd, sizeof(cmd), "STORE %" PRIu64 " %cFLAGS (\\Flagged)", n,
				 add ? '+' : '-');
			ss->store_seq = n;
			ss->store_flagged = add;
			ss->store_seen = false;
			if (!il_imap_command(w, ss, add ? IL_C_STORE_ADD : IL_C_STORE_REMOVE, cmd,
					     il_untagged_store))
				return false;
			if (!ss->store_seen)
				return il_fail(w, "%s: no FETCH with the new FLAGS", cmd);
			w->messages++;
		}
	}
	return true;
}

static bool il_imap_session(struct il_worker *w, enum il_scenario sc)
{
	struct il_session ss;
	bool ok;
	memset(&ss, 0, sizeof(ss));
	w->tag = 0;
	ok = il_imap_open(w, &ss);
	if (ok) {
		switch (sc) {
		case IL_SC_FETCH_BODIES: ok = il_scenario_fetch(w, &ss, true); break;
		case IL_SC_FETCH_META: ok = il_scenario_fetch(w, &ss, false); break;
		case IL_SC_SEARCH: ok = il_scenario_search(w, &ss); break;
		case IL_SC_STORE: ok = il_scenario_store(w, &ss); break;
		default: ok = il_fail(w, "not an IMAP scenario"); break;
		}
	}
	if (ok)
		ok = il_imap_command(w, &ss, IL_C_LOGOUT, "LOGOUT", NULL);
	il_conn_close(&w->conn);
	return ok;
}

/* ---- POP3 -------------------------------------------------------------- */

/* Sends a command (NULL: none, for the greeting) and reads a one-line
 * reply, which must be +OK.  The reply stays in w->resp.text. */
static bool il_pop3_command(struct il_worker *w, enum il_class cls, const char *cmd,
			    const char *what)
{
	char line[IL_CMD_MAX];
	const char *reply;
	size_t len, raw;
	uint64_t t0 = il_now_ns();

	if (cmd != NULL) {
		int n = snprintf(line, sizeof(line), "%s\r\n", cmd);
		if (n < 0 || (size_t)n >= sizeof(line))
			return il_fail(w, "command too long");
		w->commands++;
		if (!il_send(w, line, (size_t)n))
			return false;
	}
	if (!il_line(w, &reply, &len, &raw))
		return false;
	if (len > IL_TEXT_MAX)
		len = IL_TEXT_MAX;
	memcpy(w->resp.text, reply, len);
	w->resp.text[len] = '\0';
	w->resp.len = len;
	if (len < 3 || strncmp(reply, "+OK", 3) != 0)
		return il_fail(w, "%s: %.160s", what, w->resp.text);
	if (cmd != NULL && cls != IL_C_RETR)
		il_sample_add(&w->lat[cls], il_now_ns() - t0);
	return true;
}

/* Reads a multi-line RETR body up to its "." line; returns its size with
 * the dot-stuffing undone, line ends included. */
static bool il_pop3_body(struct il_worker *w, uint64_t *size)
{
	*size = 0;
	for (;;) {
		const char *line;
		size_t len, raw;
		if (!il_line(w, &line, &len, &raw))
			return false;
		if (len == 1 && line[0] == '.')
			return true;
		*size += line[0] == '.' ? raw - 1 : raw;
		if (*size > IL_LITERAL_MAX)
			return il_fail(w, "a message longer than %llu bytes",
				       (unsigned long long)IL_LITERAL_MAX);
	}
}

static bool il_pop3_retr_all(struct il_worker *w, uint64_t count, uint64_t octets)
{
	char cmd[64];
	uint64_t total = 0;
	for (uint64_t i = 1; i <= count; i++) {
		uint64_t size, t0 = il_now_ns();
		if (il_past_deadline(w)) {
			w->truncated = true;
			return true;
		}
		snprintf(cmd, sizeof(cmd), "RETR %" PRIu64, i);
		if (!il_pop3_command(w, IL_C_RETR, cmd, cmd) || !il_pop3_body(w, &size))
			return false;
		il_sample_add(&w->lat[IL_C_RETR], il_now_ns() - t0);
		total += size;
		w->bytes += size;
		w->messages++;
	}
	if (total != octets)
		return il_fail(w, "%s: RETR returned %" PRIu64 " bytes in all, STAT announced %" PRIu64,
			       w->user, total, octets);
	return true;
}

static bool il_pop3_session(struct il_worker *w)
{
	const struct il_opts *o = w->sh->opts;
	char cmd[IL_CMD_MAX - 32];
	uint64_t count = 0, octets = 0, t0 = il_now_ns();
	bool ok = il_connect(w) && il_pop3_command(w, IL_C_CONNECT, NULL, "greeting");

	if (ok) {
		il_sample_add(&w->lat[IL_C_CONNECT], il_now_ns() - t0);
		snprintf(cmd, sizeof(cmd), "USER %s", w->user);
		ok = il_pop3_command(w, IL_C_USER, cmd, "USER");
	}
	if (ok) {
		snprintf(cmd, sizeof(cmd), "PASS %s", o->password);
		ok = il_pop3_command(w, IL_C_PASS, cmd, "PASS") &&
		     il_pop3_command(w, IL_C_STAT, "STAT", "STAT");
	}
	if (ok) {
		struct il_scan s = { w->resp.text, w->resp.text + w->resp.len };
		if (!il_scan_lit(&s, "+OK ") || (s.p = il_number(s.p, s.end, &count)) == NULL ||
		    !il_scan_lit(&s, " ") || il_number(s.p, s.end, &octets) == NULL)
			ok = il_fail(w, "malformed STAT reply: %.80s", w->resp.text);
		else if (count > IL_MAX_EXISTS)
			ok = il_fail(w, "a maildrop of %" PRIu64 " messages", count);
		else if (o->expect_messages != 0 && count != o->expect_messages)
			ok = il_fail(w, "%s: maildrop has %" PRIu64 " messages, expected %" PRIu64,
				     w->user, count, o->expect_messages);
	}
	if (ok)
		ok = il_pop3_retr_all(w, count, octets);
	if (ok)
		ok = il_pop3_command(w, IL_C_QUIT, "QUIT", "QUIT");
	il_conn_close(&w->conn);
	return ok;
}

/* ---- workers ------------------------------------------------------------ */

static void *il_worker_main(void *arg)
{
	struct il_worker *w = arg;
	struct il_shared *sh = w->sh;
	const struct il_opts *o = sh->opts;

	pthread_barrier_wait(&sh->start);
	w->begin_ns = il_now_ns();
	w->end_ns = w->begin_ns;
	uint64_t period_ns = o->interval_ms * 1000000ull;
	uint64_t next_ns = w->begin_ns + period_ns * w->index / (o->clients ? o->clients : 1);
	for (uint64_t i = 0; i < o->iterations; i++) {
		if (period_ns > 0) {
			il_sleep_until(next_ns);
			next_ns += period_ns;
		}
		if (il_past_deadline(w)) {
			w->truncated = true;
			break;
		}
		uint64_t t0 = il_now_ns();
		bool ok = sh->scenario == IL_SC_POP3_RETR ? il_pop3_session(w)
							  : il_imap_session(w, sh->scenario);
		w->end_ns = il_now_ns();
		w->sessions++;
		if (ok)
			il_sample_add(&w->lat[IL_C_SESSION], w->end_ns - t0);
		else
			w->failed_sessions++;
	}
	return NULL;
}

/* ---- results ------------------------------------------------------------ */

static int il_cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted samples, in ms. */
static double il_percentile_ms(const uint32_t *v, size_t n, double p)
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

static void il_json_string(const char *s)
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

/* Merges the samples of the classes in mask (bit per class) over all
 * workers, sorted; the caller frees the result. */
static uint32_t *il_merge(struct il_worker *w, unsigned n_workers, uint32_t mask, size_t *n)
{
	size_t total = 0, k = 0;
	for (unsigned i = 0; i < n_workers; i++)
		for (unsigned c = 0; c < IL_C_COUNT; c++)
			if (mask & (1u << c))
				total += w[i].lat[c].n;
	uint32_t *v = il_xmalloc((total == 0 ? 1 : total) * sizeof(*v));
	for (unsigned i = 0; i < n_workers; i++)
		for (unsigned c = 0; c < IL_C_COUNT; c++)
			if ((mask & (1u << c)) && w[i].lat[c].n > 0) {
				memcpy(v + k, w[i].lat[c].v, w[i].lat[c].n * sizeof(*v));
				k += w[i].lat[c].n;
			}
	qsort(v, total, sizeof(*v), il_cmp_u32);
	*n = total;
	return v;
}

static void il_print_latency(struct il_worker *w, unsigned n_workers, uint32_t mask)
{
	size_t n;
	double sum = 0.0;
	uint32_t *v = il_merge(w, n_workers, mask, &n);
	for (size_t i = 0; i < n; i++)
		sum += (double)v[i];
	printf("{\"count\": %zu, \"mean\": %.3f, \"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, "
	       "\"max\": %.3f}", n, n ? sum / (double)n / 1000.0 : 0.0, il_percentile_ms(v, n, 50),
	       il_percentile_ms(v, n, 90), il_percentile_ms(v, n, 99),
	       n ? (double)v[n - 1] / 1000.0 : 0.0);
	free(v);
}

/* The commands whose latency is the scenario's headline figure. */
static uint32_t il_main_classes(enum il_scenario sc)
{
	switch (sc) {
	case IL_SC_FETCH_BODIES:
	case IL_SC_FETCH_META:
		return 1u << IL_C_FETCH;
	case IL_SC_SEARCH:
		return ((1u << IL_SEARCH_COUNT) - 1) << IL_C_SEARCH_FROM;
	case IL_SC_STORE:
		return (1u << IL_C_STORE_ADD) | (1u << IL_C_STORE_REMOVE);
	default:
		return 1u << IL_C_RETR;
	}
}

static void il_report(const struct il_opts *o, enum il_scenario sc, struct il_worker *w,
		      double elapsed)
{
	uint64_t sessions = 0, failed = 0, commands = 0, errors = 0, messages = 0, bytes = 0;
	uint64_t matches[IL_SEARCH_COUNT] = { 0 };
	bool truncated = false;
	const char *err = "";

	for (unsigned i = 0; i < o->clients; i++) {
		sessions += w[i].sessions;
		failed += w[i].failed_sessions;
		commands += w[i].commands;
		errors += w[i].errors;
		messages += w[i].messages;
		bytes += w[i].bytes;
		truncated |= w[i].truncated;
		for (unsigned k = 0; k < IL_SEARCH_COUNT; k++)
			matches[k] += w[i].matches[k];
		if (*err == '\0' && w[i].last_error[0] != '\0')
			err = w[i].last_error;
	}
	printf("{\"scenario\": \"%s\", \"host\": \"%s\", \"port\": %u, \"clients\": %u, "
	       "\"iterations\": %" PRIu64 ", ", il_scenario_names[sc], o->host,
	       (unsigned)ntohs(o->addr.sin_port), o->clients, o->iterations);
	printf("\"sessions\": %" PRIu64 ", \"failed_sessions\": %" PRIu64 ", \"commands\": %" PRIu64
	       ", \"errors\": %" PRIu64 ", \"truncated\": %s, \"messages\": %" PRIu64
	       ", \"bytes\": %" PRIu64 ", \"elapsed\": %.6f, \"messages_per_s\": %.2f, ",
	       sessions, failed, commands, errors, truncated ? "true" : "false", messages, bytes,
	       elapsed, elapsed > 0 ? (double)messages / elapsed : 0.0);
	printf("\"latency_ms\": ");
	il_print_latency(w, o->clients, il_main_classes(sc));
	printf(", \"commands_ms\": {");
	bool first = true;
	for (unsigned c = 0; c < IL_C_COUNT; c++) {
		bool any = false;
		for (unsigned i = 0; i < o->clients && !any; i++)
			any = w[i].lat[c].n > 0;
		if (!any)
			continue;
		printf("%s\"%s\": ", first ? "" : ", ", il_class_names[c]);
		il_print_latency(w, o->clients, 1u << c);
		first = false;
	}
	printf("}");
	if (sc == IL_SC_SEARCH) {
		printf(", \"matches\": {");
		for (unsigned k = 0; k < IL_SEARCH_COUNT; k++)
			printf("%s\"%s\": %" PRIu64, k ? ", " : "", il_search_names[k], matches[k]);
		printf("}");
	}
	printf(", \"last_error\": ");
	il_json_string(err);
	printf("}\n");
	fflush(stdout);
}

/* Runs one scenario with fresh workers and prints its JSON line. */
static bool il_run(const struct il_opts *o, enum il_scenario sc)
{
	struct il_shared sh;
	memset(&sh, 0, sizeof(sh));
	sh.opts = o;
	sh.scenario = sc;
	if (pthread_barrier_init(&sh.start, NULL, o->clients + 1) != 0) {
		fprintf(stderr, "imap_load: pthread_barrier_init failed\n");
		return false;
	}
	struct il_worker *w = calloc(o->clients, sizeof(*w));
	if (w == NULL) {
		fprintf(stderr, "imap_load: out of memory\n");
		abort();
	}
	for (unsigned i = 0; i < o->clients; i++) {
		w[i].index = i;
		w[i].sh = &sh;
		w[i].conn.fd = -1;
		w[i].conn.buf = il_xmalloc(IL_LINE_MAX);
		w[i].resp.text = il_xmalloc(IL_TEXT_MAX + 1);
		snprintf(w[i].user, sizeof(w[i].user), "%s%0*" PRIu64 "%s%s", o->prefix, (int)o->width,
			 (uint64_t)i % o->accounts, o->domain[0] != '\0' ? "@" : "", o->domain);
		int rc = pthread_create(&w[i].thread, NULL, il_worker_main, &w[i]);
		if (rc != 0) {
			/* The barrier counts every worker: without them all, nobody would pass. */
			fprintf(stderr, "imap_load: pthread_create: %s\n", strerror(rc));
			abort();
		}
	}
	/* Set before the barrier releases the workers, who read it after it. */
	sh.deadline_ns = il_now_ns() + o->duration_max_s * 1000000000ull;
	pthread_barrier_wait(&sh.start);
	for (unsigned i = 0; i < o->clients; i++)
		pthread_join(w[i].thread, NULL);
	uint64_t start_ns = UINT64_MAX, end_ns = 0;
	for (unsigned i = 0; i < o->clients; i++) {
		if (w[i].begin_ns < start_ns)
			start_ns = w[i].begin_ns;
		if (w[i].end_ns > end_ns)
			end_ns = w[i].end_ns;
	}
	if (end_ns < start_ns)
		end_ns = start_ns;
	pthread_barrier_destroy(&sh.start);
	il_report(o, sc, w, (double)(end_ns - start_ns) / 1e9);
	for (unsigned i = 0; i < o->clients; i++) {
		for (unsigned c = 0; c < IL_C_COUNT; c++)
			free(w[i].lat[c].v);
		free(w[i].conn.buf);
		free(w[i].resp.text);
	}
	free(w);
	return true;
}

/* ---- arguments ---------------------------------------------------------- */

static void il_usage(FILE *f)
{
	fprintf(f,
		"usage: imap_load --port P --scenario NAME[,NAME...] [--host 127.0.0.1]\n"
		"                 [--clients C] [--iterations N] [--duration-max S] [--timeout S]\n"
		"                 [--prefix user] [--width 4] [--domain D] [--accounts A]\n"
		"                 [--password PW] [--expect-messages N] [--store-max N]\n"
		"                 [--search-from S]\n"
		"                 [--search-subject S] [--search-body S] [--search-since D-Mon-YYYY]\n"
		"                 [--interval-ms T]\n"
		"Scenarios: fetch-bodies fetch-meta search store (IMAP), pop3-retr (POP3).\n"
		"C clients log in as <prefix><i>[@D] and run the scenario N times each;\n"
		"one JSON line per scenario.  Loopback (127.0.0.0/8) only.\n");
}

static bool il_parse_u64(const char *name, const char *s, uint64_t min, uint64_t max,
			 uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (*s == '\0' || *s == '-' || *end != '\0' || errno != 0 || v < min || v > max) {
		fprintf(stderr, "imap_load: --%s must be an integer in [%" PRIu64 ", %" PRIu64 "]\n",
			name, min, max);
		return false;
	}
	*out = v;
	return true;
}

/* Copies an argument that goes inside a quoted IMAP string or a POP3
 * command: printable ASCII without '"' and '\\' (and, when !space, no
 * space either). */
static bool il_copy_arg(const char *name, const char *s, char *out, size_t outlen, bool empty,
			bool space)
{
	size_t len = strlen(s);
	if ((len == 0 && !empty) || len >= outlen) {
		fprintf(stderr, "imap_load: --%s must be %s..%zu characters\n", name,
			empty ? "0" : "1", outlen - 1);
		return false;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (ch < 0x20 || ch >= 0x7f || ch == '"' || ch == '\\' || (ch == ' ' && !space)) {
			fprintf(stderr, "imap_load: --%s contains a character that is not allowed\n",
				name);
			return false;
		}
	}
	memcpy(out, s, len + 1);
	return true;
}

/* An IMAP date: 1*2DIGIT "-" Mon "-" 4DIGIT. */
static bool il_valid_date(const char *s)
{
	static const char *const months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
					      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	size_t i = 0;
	while (i < 2 && s[i] >= '0' && s[i] <= '9')
		i++;
	if (i == 0 || s[i] != '-' || strlen(s + i) != 9 || s[i + 4] != '-')
		return false;
	bool month = false;
	for (unsigned m = 0; m < 12; m++)
		month |= strncasecmp(s + i + 1, months[m], 3) == 0;
	for (size_t k = i + 5; k < i + 9; k++)
		if (s[k] < '0' || s[k] > '9')
			return false;
	return month;
}

static bool il_set_host(struct il_opts *o, const char *host)
{
	struct in_addr a;
	if (inet_pton(AF_INET, host, &a) != 1 || (ntohl(a.s_addr) >> 24) != 127) {
		fprintf(stderr, "imap_load: refusing --host %s: only numeric loopback addresses "
			"(127.0.0.0/8) are allowed\n", host);
		return false;
	}
	inet_ntop(AF_INET, &a, o->host, sizeof(o->host));
	o->addr.sin_family = AF_INET;
	o->addr.sin_addr = a;
	return true;
}

static bool il_set_scenarios(struct il_opts *o, const char *list)
{
	char copy[256];
	char *save = NULL;
	if (strlen(list) >= sizeof(copy)) {
		fprintf(stderr, "imap_load: --scenario is too long\n");
		return false;
	}
	strcpy(copy, list);
	for (char *t = strtok_r(copy, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
		unsigned i = 0;
		while (i < IL_SC_COUNT && strcmp(t, il_scenario_names[i]) != 0)
			i++;
		if (i == IL_SC_COUNT) {
			fprintf(stderr, "imap_load: unknown scenario %s\n", t);
			return false;
		}
		o->scenario[i] = true;
	}
	return true;
}

static void il_defaults(struct il_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->clients = 1;
	o->iterations = 1;
	o->duration_max_s = 60;
	o->timeout_s = 30;
	o->accounts = IL_MAX_ACCOUNTS;
	o->width = 4;
	strcpy(o->prefix, "user");
	strcpy(o->password, "benchpass");
	strcpy(o->search[IL_SEARCH_FROM], "example");
	strcpy(o->search[IL_SEARCH_SUBJECT], "report");
	strcpy(o->search[IL_SEARCH_BODY], "meeting");
	strcpy(o->search[IL_SEARCH_SINCE], "1-Jan-2000");
}

/* Cross-option checks once every option is known. */
static bool il_check(struct il_opts *o, uint64_t port)
{
	bool any = false, imap = false, pop3 = o->scenario[IL_SC_POP3_RETR];
	for (unsigned i = 0; i < IL_SC_COUNT; i++) {
		any |= o->scenario[i];
		imap |= o->scenario[i] && i != IL_SC_POP3_RETR;
	}
	if (port == 0 || !any) {
		fprintf(stderr, "imap_load: --port and --scenario are required\n");
		return false;
	}
	if (imap && pop3) {
		fprintf(stderr, "imap_load: IMAP and POP3 scenarios need separate runs (one port)\n");
		return false;
	}
	if (!il_valid_date(o->search[IL_SEARCH_SINCE])) {
		fprintf(stderr, "imap_load: --search-since must look like 1-Jan-2025\n");
		return false;
	}
	o->addr.sin_port = htons((uint16_t)port);
	return true;
}

static bool il_parse_args(int argc, char **argv, struct il_opts *o)
{
	static const struct option longopts[] = {
		{ "host", required_argument, NULL, 'H' },
		{ "port", required_argument, NULL, 'p' },
		{ "scenario", required_argument, NULL, 's' },
		{ "clients", required_argument, NULL, 'c' },
		{ "iterations", required_argument, NULL, 'n' },
		{ "duration-max", required_argument, NULL, 'd' },
		{ "timeout", required_argument, NULL, 't' },
		{ "prefix", required_argument, NULL, 'P' },
		{ "width", required_argument, NULL, 'w' },
		{ "domain", required_argument, NULL, 'D' },
		{ "accounts", required_argument, NULL, 'a' },
		{ "password", required_argument, NULL, 'W' },
		{ "expect-messages", required_argument, NULL, 'e' },
		{ "store-max", required_argument, NULL, 'M' },
		{ "search-from", required_argument, NULL, 'F' },
		{ "search-subject", required_argument, NULL, 'S' },
		{ "search-body", required_argument, NULL, 'B' },
		{ "search-since", required_argument, NULL, 'I' },
		{ "interval-ms", required_argument, NULL, 'i' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	uint64_t v, port = 0;
	int ch;

	il_defaults(o);
	if (!il_set_host(o, "127.0.0.1"))
		return false;
	while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		bool ok = true;
		switch (ch) {
		case 'H': ok = il_set_host(o, optarg); break;
		case 'p': ok = il_parse_u64("port", optarg, 1, 65535, &port); break;
		case 's': ok = il_set_scenarios(o, optarg); break;
		case 'c':
			ok = il_parse_u64("clients", optarg, 1, IL_MAX_CLIENTS, &v);
			o->clients = (unsigned)v;
			break;
		case 'n': ok = il_parse_u64("iterations", optarg, 1, IL_MAX_ITERATIONS, &o->iterations); break;
		case 'd': ok = il_parse_u64("duration-max", optarg, 1, IL_MAX_DURATION_S, &o->duration_max_s); break;
		case 't': ok = il_parse_u64("timeout", optarg, 1, IL_MAX_TIMEOUT_S, &o->timeout_s); break;
		case 'P': ok = il_copy_arg("prefix", optarg, o->prefix, sizeof(o->prefix), false, false); break;
		case 'w': ok = il_parse_u64("width", optarg, 0, 20, &o->width); break;
		case 'D': ok = il_copy_arg("domain", optarg, o->domain, sizeof(o->domain), true, false); break;
		case 'a': ok = il_parse_u64("accounts", optarg, 1, IL_MAX_ACCOUNTS, &o->accounts); break;
		case 'W': ok = il_copy_arg("password", optarg, o->password, sizeof(o->password), false, false); break;
		case 'e': ok = il_parse_u64("expect-messages", optarg, 0, IL_MAX_EXISTS, &o->expect_messages); break;
		case 'M': ok = il_parse_u64("store-max", optarg, 0, IL_MAX_EXISTS, &o->store_max); break;
		case 'F': ok = il_copy_arg("search-from", optarg, o->search[IL_SEARCH_FROM], IL_ARG_MAX, false, true); break;
		case 'S': ok = il_copy_arg("search-subject", optarg, o->search[IL_SEARCH_SUBJECT], IL_ARG_MAX, false, true); break;
		case 'B': ok = il_copy_arg("search-body", optarg, o->search[IL_SEARCH_BODY], IL_ARG_MAX, false, true); break;
		case 'I': ok = il_copy_arg("search-since", optarg, o->search[IL_SEARCH_SINCE], IL_ARG_MAX, false, false); break;
		case 'i': ok = il_parse_u64("interval-ms", optarg, 0, 3600000, &o->interval_ms); break;
		case 'h': il_usage(stdout); exit(0);
		default: ok = false; break;
		}
		if (!ok)
			return false;
	}
	if (optind != argc) {
		fprintf(stderr, "imap_load: unexpected argument: %s\n", argv[optind]);
		return false;
	}
	return il_check(o, port);
}

int main(int argc, char **argv)
{
	struct il_opts o;
	if (!il_parse_args(argc, argv, &o)) {
		il_usage(stderr);
		return 2;
	}
	for (unsigned i = 0; i < IL_SC_COUNT; i++)
		if (o.scenario[i] && !il_run(&o, (enum il_scenario)i))
			return 1;
	return 0;
}
