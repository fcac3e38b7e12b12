/*
 * relay_smtp.c - the SMTP client: one message to the recipients of one
 * destination domain, in one transaction (RFC 5321).
 *
 * Owns: the connection to a remote server (plain TCP, then TLS after
 * STARTTLS), reply parsing, and the dialogue:
 *   connect (relay.connect_timeout) -> 220 greeting -> EHLO (HELO when EHLO
 *   gets a 5xx) -> STARTTLS when offered (relay.tls = may: opportunistic,
 *   certificate not verified; encrypt: a server without it is skipped) and
 *   EHLO again -> MAIL FROM with SIZE=, BODY=8BITMIME when the message has
 *   8-bit bytes and the server offers it, SMTPUTF8 when an envelope address
 *   is not ASCII -> one RCPT per recipient -> DATA, the message dot-stuffed
 *   from its blob -> QUIT.
 *
 * Results, per recipient: 2xx after the final dot -> RELAY_SENT; a 4xx to
 * MAIL, RCPT, DATA or the dot -> RELAY_DEFER; a 5xx -> RELAY_BOUNCE.  A
 * server that cannot be reached, does not greet with 2xx, refuses EHLO and
 * HELO or drops the connection before the transaction is answered is
 * skipped: the next address is tried (RFC 5321 5.1), and when none is left
 * every recipient is deferred with the last reason.  A connection lost
 * after the final dot (no reply) defers: the server may have taken the
 * message, so a retry can duplicate it, never lose it.  A server whose SIZE
 * is below the message, or that lacks SMTPUTF8 for a UTF-8 envelope, gets
 * a bounce (552 5.3.4, 553 5.6.7) without a transaction, and so does one
 * that greets EHLO with our own name (5.4.6: the route loops back here).
 *
 * Timeouts (RFC 5321 4.5.3.2): relay.connect_timeout for the connection,
 * relay.command_timeout for the greeting and every reply and every data
 * block written, twice it for the reply to the final dot.  Every wait
 * polls the stop flag every RELAY_STOP_POLL_MS: relay_stop interrupts a
 * delivery at once (its recipients get RELAY_ABORTED: the rows stay due).
 *
 * Hostile servers: a reply line is cut at SMTP_LINE_MAX bytes (and the
 * connection dropped past SMTP_LINE_DISCARD_MAX), a reply at
 * SMTP_REPLY_LINES lines, a reply's wait at its deadline even while bytes
 * keep coming, and everything a server says is kept bounded
 * (RELAY_REPLY_MAX) and escaped before it is logged.
 *
 * Threads: runs on one delivery thread; no shared state but SSL_CTX.
 */
#include "relay_int.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define SMTP_LINE_MAX 2048
#define SMTP_LINE_DISCARD_MAX (64u * 1024)   /* bytes of one line read at most */
#define SMTP_REPLY_LINES 200
#define SMTP_QUIT_TIMEOUT_MS 5000
#define SMTP_DATA_CHUNK (64u * 1024)

struct conn {
	int fd;
	SSL *ssl;
	const atomic_bool *stop;
	char in[8192];
	size_t start, len;
	bool stopped;                     /* the stop flag ended a wait */
	char err[256];                    /* why the connection failed */
};

/* ---- waits and I/O ------------------------------------------------------------ */

/* Waits for `events` until deadline (monotonic ms), checking the stop flag. */
static bool conn_wait(struct conn *c, short events, uint64_t deadline)
{
	for (;;) {
		if (atomic_load(c->stop)) {
			c->stopped = true;
			snprintf(c->err, sizeof(c->err), "delivery interrupted by shutdown");
			return false;
		}
		uint64_t now = time_mono_ms();
		if (now >= deadline) {
			snprintf(c->err, sizeof(c->err), "timed out");
			return false;
		}
		uint64_t left = deadline - now;
		struct pollfd p = { c->fd, events, 0 };
		int rc = poll(&p, 1, (int)(left < RELAY_STOP_POLL_MS ? left : RELAY_STOP_POLL_MS));
		if (rc > 0)
			return true;
		if (rc < 0 && errno != EINTR) {
			snprintf(c->err, sizeof(c->err), "poll: %s", strerror(errno));
			return false;
		}
	}
}

static bool conn_connect(struct conn *c, const struct relay_hop *h, uint64_t timeout_ms)
{
	c->fd = socket(h->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		snprintf(c->err, sizeof(c->err), "socket: %s", strerror(errno));
		return false;
	}
	if (connect(c->fd, (const struct sockaddr *)&h->addr, h->addr_len) == 0)
		return true;
	if (errno != EINPROGRESS) {
		snprintf(c->err, sizeof(c->err), "connect: %s", strerror(errno));
		return false;
	}
	if (!conn_wait(c, POLLOUT, time_mono_ms() + timeout_ms)) {
		if (!c->stopped)
			snprintf(c->err, sizeof(c->err), "connect: timed out");
		return false;
	}
	int soerr = 0;
	socklen_t sl = sizeof(soerr);
	if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
		soerr = errno;
	if (soerr != 0) {
		snprintf(c->err, sizeof(c->err), "connect: %s", strerror(soerr));
		return false;
	}
	int one = 1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return true;
}

/* For an SSL_* result: waits as OpenSSL asks; false on a real error. */
static bool conn_ssl_retry(struct conn *c, int rc, uint64_t deadline, const char *what)
{
	int e = SSL_get_error(c->ssl, rc);
	if (e == SSL_ERROR_WANT_READ)
		return conn_wait(c, POLLIN, deadline);
	if (e == SSL_ERROR_WANT_WRITE)
		return conn_wait(c, POLLOUT, deadline);
	unsigned long ossl = ERR_get_error();
	ERR_clear_error();
	if (e == SSL_ERROR_ZERO_RETURN)
		snprintf(c->err, sizeof(c->err), "%s: connection closed", what);
	else if (ossl != 0)
		snprintf(c->err, sizeof(c->err), "%s: %s", what, ERR_reason_error_string(ossl) ? ERR_reason_error_string(ossl) : "TLS error");
	else
		snprintf(c->err, sizeof(c->err), "%s: %s", what, e == SSL_ERROR_SYSCALL && errno ? strerror(errno) : "lost connection");
	return false;
}

/* Some bytes into buf; 0 at EOF, -1 on error or timeout. */
static ssize_t conn_read(struct conn *c, char *buf, size_t len, uint64_t deadline)
{
	for (;;) {
		if (c->ssl != NULL) {
			int rc = SSL_read(c->ssl, buf, (int)(len > INT32_MAX ? INT32_MAX : len));
			if (rc > 0)
				return rc;
			if (SSL_get_error(c->ssl, rc) == SSL_ERROR_ZERO_RETURN)
				return 0;
			if (!conn_ssl_retry(c, rc, deadline, "TLS read"))
				return -1;
			continue;
		}
		ssize_t n = recv(c->fd, buf, len, 0);
		if (n >= 0)
			return n;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK) {
			snprintf(c->err, sizeof(c->err), "read: %s", strerror(errno));
			return -1;
		}
		if (!conn_wait(c, POLLIN, deadline))
			return -1;
	}
}

static bool conn_write(struct conn *c, const char *data, size_t len, uint64_t deadline)
{
	while (len > 0) {
		ssize_t n;
		if (c->ssl != NULL) {
			int rc = SSL_write(c->ssl, data, (int)(len > INT32_MAX ? INT32_MAX : len));
			if (rc <= 0) {
				if (!conn_ssl_retry(c, rc, deadline, "TLS write"))
					return false;
				continue;
			}
			n = rc;
		} else {
			n = send(c->fd, data, len, MSG_NOSIGNAL);
			if (n < 0) {
				if (errno == EINTR)
					continue;
				if (errno != EAGAIN && errno != EWOULDBLOCK) {
					snprintf(c->err, sizeof(c->err), "write: %s", strerror(errno));
					return false;
				}
				if (!conn_wait(c, POLLOUT, deadline))
					return false;
				continue;
			}
		}
		data += n;
		len -= (size_t)n;
	}
	return true;
}

static void conn_close(struct conn *c)
{
	if (c->ssl != NULL) {
		SSL_free(c->ssl); /* no close_notify wait: QUIT was the goodbye */
		c->ssl = NULL;
	}
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->start = c->len = 0;
}

/* One line without its CRLF, cut at SMTP_LINE_MAX; false on EOF/error. */
static bool conn_line(struct conn *c, char *out, size_t outlen, uint64_t deadline)
{
	size_t n = 0, seen = 0;
	for (;;) {
		/* a server that streams without a line end is cut off by bytes and by time */
		if (seen > SMTP_LINE_DISCARD_MAX || time_mono_ms() >= deadline) {
			snprintf(c->err, sizeof(c->err), seen > SMTP_LINE_DISCARD_MAX ? "reply line too long" : "timed out");
			return false;
		}
		if (c->len == 0) {
			c->start = 0;
			ssize_t r = conn_read(c, c->in, sizeof(c->in), deadline);
			if (r <= 0) {
				if (r == 0)
					snprintf(c->err, sizeof(c->err), "lost connection");
				return false;
			}
			c->len = (size_t)r;
		}
		char *p = c->in + c->start;
		char *nl = memchr(p, '\n', c->len);
		size_t take = nl != NULL ? (size_t)(nl - p) : c->len;
		size_t room = outlen - 1 - n;
		memcpy(out + n, p, take < room ? take : room);
		n += take < room ? take : room;
		size_t used = nl != NULL ? take + 1 : take;
		seen += used;
		c->start += used;
		c->len -= used;
		if (nl != NULL)
			break;
	}
	if (n > 0 && out[n - 1] == '\r')
		n--;
	out[n] = '\0';
	return true;
}

/* ---- replies ---------------------------------------------------------------- */

struct reply {
	int code;                         /* 0: no reply (c->err says why) */
	char dsn[16];                     /* enhanced status, "" when none */
	char text[RELAY_REPLY_MAX];       /* "250 2.0.0 text ..." lines joined by "; " */
	/* EHLO keywords */
	bool starttls, eightbitmime, smtputf8;
	uint64_t size_max;                /* 0 = no limit advertised */
};

static bool parse_enhanced(const char *p, char dsn[16])
{
	/* class "." subject (1-3 digits) "." detail (1-3 digits) */
	if (!(p[0] == '2' || p[0] == '4' || p[0] == '5') || p[1] != '.')
		return false;
	size_t i = 2, d1 = 0, d2 = 0;
	while (isdigit((unsigned char)p[i]) && d1 < 3)
		i++, d1++;
	if (d1 == 0 || p[i] != '.')
		return false;
	i++;
	while (isdigit((unsigned char)p[i]) && d2 < 3)
		i++, d2++;
	if (d2 == 0 || (p[i] != ' ' && p[i] != '\0'))
		return false;
	memcpy(dsn, p, i);
	dsn[i] = '\0';
	return true;
}

static void ehlo_keyword(struct reply *r, const char *kw)
{
	if (str_ieq(kw, "STARTTLS"))
		r->starttls = true;
	else if (str_ieq(kw, "8BITMIME"))
		r->eightbitmime = true;
	else if (str_ieq(kw, "SMTPUTF8"))
		r->smtputf8 = true;
	else if (str_istarts(kw, "SIZE ") || str_ieq(kw, "SIZE")) {
		uint64_t v = 0;
		if (kw[4] == ' ' && str_parse_u64(kw + 5, &v))
			r->size_max = v;
	}
}

static void reply_append(struct reply *r, const char *text)
{
	size_t have = strlen(r->text);
	if (have > 0 && have + 2 < sizeof(r->text)) {
		memcpy(r->text + have, "; ", 3);
		have += 2;
	}
	snprintf(r->text + have, sizeof(r->text) - have, "%s", text);
}

static bool read_reply(struct conn *c, struct reply *r, uint64_t timeout_ms)
{
	memset(r, 0, sizeof(*r));
	uint64_t deadline = time_mono_ms() + timeout_ms;
	char line[SMTP_LINE_MAX];
	for (int i = 0; i < SMTP_REPLY_LINES; i++) {
		if (!conn_line(c, line, sizeof(line), deadline)) {
			r->code = 0;
			return false;
		}
		if (!isdigit((unsigned char)line[0]) || !isdigit((unsigned char)line[1]) ||
		    !isdigit((unsigned char)line[2]) || (line[3] != ' ' && line[3] != '-' && line[3] != '\0') ||
		    line[0] < '2' || line[0] > '5') {
			snprintf(c->err, sizeof(c->err), "malformed reply");
			r->code = 0;
			return false;
		}
		int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
		if (i == 0) {
			r->code = code;
			const char *t = line[3] ? line + 4 : line + 3;
			if (parse_enhanced(t, r->dsn) == false)
				r->dsn[0] = '\0';
			reply_append(r, line);
		} else if (code != r->code) {
			snprintf(c->err, sizeof(c->err), "malformed reply (code changed)");
			r->code = 0;
			return false;
		} else {
			ehlo_keyword(r, line[3] ? line + 4 : "");
			if (strlen(r->text) < 200)
				reply_append(r, line[3] ? line + 4 : "");
		}
		if (line[3] != '-')
			return true;
	}
	snprintf(c->err, sizeof(c->err), "reply of more than %d lines", SMTP_REPLY_LINES);
	r->code = 0;
	return false;
}

static bool command(struct conn *c, struct reply *r, uint64_t timeout_ms, const char *fmt, ...) ATTR_PRINTF(4, 5);
static bool command(struct conn *c, struct reply *r, uint64_t timeout_ms, const char *fmt, ...)
{
	char line[1100];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line) - 2, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(line) - 2)
		panic("relay: SMTP command too long");
	memcpy(line + n, "\r\n", 3);
	memset(r, 0, sizeof(*r));
	if (!conn_write(c, line, (size_t)n + 2, time_mono_ms() + timeout_ms))
		return false;
	return read_reply(c, r, timeout_ms);
}

/* ---- results ----------------------------------------------------------------- */

void relay_rcpts_set(struct relay_rcpt *r, size_t n, enum relay_result res, int code, const char *dsn,
		     const char *reply)
{
	for (size_t i = 0; i < n; i++) {
		r[i].result = res;
		r[i].code = code;
		snprintf(r[i].dsn, sizeof(r[i].dsn), "%s", dsn);
		snprintf(r[i].reply, sizeof(r[i].reply), "%s", reply);
	}
}

/* The result of a reply code for recipient i. */
static void rcpt_from_reply(struct relay_rcpt *rc, const struct reply *r)
{
	rc->result = r->code < 400 ? RELAY_SENT : r->code < 500 ? RELAY_DEFER : RELAY_BOUNCE;
	rc->code = r->code;
	if (r->dsn[0] != '\0')
		snprintf(rc->dsn, sizeof(rc->dsn), "%s", r->dsn);
	else
		snprintf(rc->dsn, sizeof(rc->dsn), "%c.0.0", '0' + r->code / 100);
	snprintf(rc->reply, sizeof(rc->reply), "%s", r->text);
}

/* ---- the dialogue ------------------------------------------------------------ */

enum hop_outcome { HOP_DONE, HOP_NEXT, HOP_TLS_FAILED };

struct session {
	struct relay_txn *t;
	const struct relay_hop *h;
	struct conn c;
	struct reply r;
	bool use_tls;
	char why[RELAY_REPLY_MAX];        /* HOP_NEXT: the reason */
	int why_code;
};

static enum hop_outcome hop_next(struct session *ss, int code, const char *fmt, ...) ATTR_PRINTF(3, 4);
static enum hop_outcome hop_next(struct session *ss, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(ss->why, sizeof(ss->why), fmt, ap);
	va_end(ap);
	ss->why_code = code;
	return HOP_NEXT;
}

static bool is_ascii(const char *s)
{
	for (; *s; s++) {
		if ((unsigned char)*s >= 0x80)
			return false;
	}
	return true;
}

static void quit(struct session *ss)
{
	struct reply r;
	if (ss->c.fd >= 0 && !ss->c.stopped)
		(void)command(&ss->c, &r, SMTP_QUIT_TIMEOUT_MS, "QUIT");
}

/* Writes the message dot-stuffed, then ".".  False with c.err. */
static bool send_body(struct session *ss)
{
	struct relay_txn *t = ss->t;
	uint64_t timeout = t->s->relay_command_timeout_ms;
	char *in = xmalloc(SMTP_DATA_CHUNK);
	struct buf out = BUF_INIT;
	bool bol = true, ok = true;
	char last = '\n';
	for (uint64_t off = 0; ok && off < t->size;) {
		size_t want = t->size - off < SMTP_DATA_CHUNK ? (size_t)(t->size - off) : SMTP_DATA_CHUNK;
		ssize_t n = pread(t->fd, in, want, (off_t)off);
		if (n <= 0) {
			snprintf(ss->c.err, sizeof(ss->c.err), "local: cannot read the message: %s",
				 n < 0 ? strerror(errno) : "short file");
			ok = false;
			break;
		}
		buf_reset(&out);
		/* dot-stuffing (RFC 5321 4.5.2): a line that starts with "." gets one more */
		for (size_t i = 0; i < (size_t)n;) {
			if (bol && in[i] == '.')
				buf_append_char(&out, '.');
			const char *nl = memchr(in + i, '\n', (size_t)n - i);
			size_t end = nl != NULL ? (size_t)(nl - in) + 1 : (size_t)n;
			buf_append(&out, in + i, end - i);
			bol = nl != NULL;
			i = end;
		}
		last = in[n - 1];
		off += (uint64_t)n;
		ok = conn_write(&ss->c, out.data, out.len, time_mono_ms() + timeout);
	}
	if (ok) {
		const char *end = last == '\n' ? ".\r\n" : "\r\n.\r\n";
		ok = conn_write(&ss->c, end, strlen(end), time_mono_ms() + timeout);
	}
	buf_free(&out);
	free(in);
	return ok;
}

/* EHLO, or HELO when EHLO is refused with a 5xx. */
static enum hop_outcome greet(struct session *ss, const char *helo)
{
	uint64_t to = ss->t->s->relay_command_timeout_ms;
	if (!command(&ss->c, &ss->r, to, "EHLO %s", helo))
		return hop_next(ss, 0, "4.4.2 %s[%s] dropped the connection after EHLO: %s", ss->h->host, ss->h->ip,
				ss->c.err);
	if (ss->r.code >= 500) {
		if (!command(&ss->c, &ss->r, to, "HELO %s", helo))
			return hop_next(ss, 0, "4.4.2 %s[%s] dropped the connection after HELO: %s", ss->h->host,
					ss->h->ip, ss->c.err);
	}
	if (ss->r.code / 100 != 2)
		return hop_next(ss, ss->r.code, "4.4.2 %s[%s] refused to talk to me: %s", ss->h->host, ss->h->ip,
				ss->r.text);
	return HOP_DONE;
}

static enum hop_outcome starttls(struct session *ss, const char *helo)
{
	struct relay_txn *t = ss->t;
	uint64_t to = t->s->relay_command_timeout_ms;
	if (!command(&ss->c, &ss->r, to, "STARTTLS"))
		return hop_next(ss, 0, "4.4.2 %s[%s] lost connection after STARTTLS: %s", ss->h->host, ss->h->ip,
				ss->c.err);
	if (ss->r.code != 220) {
		if (t->s->relay_tls == RELAY_TLS_ENCRYPT)
			return hop_next(ss, ss->r.code, "4.7.5 %s[%s] refused STARTTLS: %s", ss->h->host, ss->h->ip,
					ss->r.text);
		return HOP_DONE; /* opportunistic: carry on in plain text */
	}
	ss->c.ssl = SSL_new(t->tls);
	if (ss->c.ssl == NULL)
		panic("relay: SSL_new failed");
	SSL_set_fd(ss->c.ssl, ss->c.fd);
	struct in6_addr tmp;
	if (inet_pton(AF_INET, ss->h->host, &tmp) != 1 && inet_pton(AF_INET6, ss->h->host, &tmp) != 1)
		SSL_set_tlsext_host_name(ss->c.ssl, ss->h->host);
	uint64_t deadline = time_mono_ms() + to;
	int rc;
	while ((rc = SSL_connect(ss->c.ssl)) != 1) {
		if (!conn_ssl_retry(&ss->c, rc, deadline, "TLS handshake")) {
			hop_next(ss, 0, "4.7.5 %s[%s]: TLS handshake failed: %s", ss->h->host, ss->h->ip, ss->c.err);
			return t->s->relay_tls == RELAY_TLS_ENCRYPT || ss->c.stopped ? HOP_NEXT : HOP_TLS_FAILED;
		}
	}
	t->tls_used = true;
	snprintf(t->tls_desc, sizeof(t->tls_desc), "%s:%s", SSL_get_version(ss->c.ssl),
		 SSL_get_cipher_name(ss->c.ssl));
	return greet(ss, helo);
}

/* The transaction proper, from MAIL FROM on.  Always HOP_DONE but for a
 * connection lost before the recipients were answered. */
static enum hop_outcome transaction(struct session *ss)
{
	struct relay_txn *t = ss->t;
	uint64_t to = t->s->relay_command_timeout_ms;
	bool utf8 = !is_ascii(t->sender);
	for (size_t i = 0; i < t->n_rcpts; i++)
		utf8 = utf8 || !is_ascii(t->rcpts[i].address);
	if (ss->r.size_max > 0 && t->size > ss->r.size_max) {
		char why[RELAY_REPLY_MAX];
		snprintf(why, sizeof(why), "552 5.3.4 message size %llu exceeds the limit of %s[%s] (%llu)",
			 (unsigned long long)t->size, ss->h->host, ss->h->ip, (unsigned long long)ss->r.size_max);
		relay_rcpts_set(t->rcpts, t->n_rcpts, RELAY_BOUNCE, 552, "5.3.4", why);
		return HOP_DONE;
	}
	if (utf8 && !ss->r.smtputf8) {
		char why[RELAY_REPLY_MAX];
		snprintf(why, sizeof(why), "553 5.6.7 %s[%s] does not support SMTPUTF8, needed for this envelope",
			 ss->h->host, ss->h->ip);
		relay_rcpts_set(t->rcpts, t->n_rcpts, RELAY_BOUNCE, 553, "5.6.7", why);
		return HOP_DONE;
	}
	if (!command(&ss->c, &ss->r, to, "MAIL FROM:<%s> SIZE=%llu%s%s", t->sender, (unsigned long long)t->size,
		     t->eight_bit && ss->r.eightbitmime ? " BODY=8BITMIME" : "", utf8 ? " SMTPUTF8" : ""))
		return hop_next(ss, 0, "4.4.2 %s[%s] lost connection after MAIL FROM: %s", ss->h->host, ss->h->ip,
				ss->c.err);
	if (ss->r.code / 100 != 2) {
		struct relay_rcpt tmp;
		memset(&tmp, 0, sizeof(tmp));
		rcpt_from_reply(&tmp, &ss->r);
		relay_rcpts_set(t->rcpts, t->n_rcpts, tmp.result, tmp.code, tmp.dsn, tmp.reply);
		return HOP_DONE;
	}
	size_t accepted = 0;
	for (size_t i = 0; i < t->n_rcpts; i++) {
		if (!command(&ss->c, &ss->r, to, "RCPT TO:<%s>", t->rcpts[i].address))
			return hop_next(ss, 0, "4.4.2 %s[%s] lost connection after RCPT TO: %s", ss->h->host,
					ss->h->ip, ss->c.err);
		rcpt_from_reply(&t->rcpts[i], &ss->r);
		accepted += t->rcpts[i].result == RELAY_SENT;
	}
	if (accepted == 0)
		return HOP_DONE;
	/* From here a lost connection defers the accepted recipients. */
	struct relay_rcpt verdict;
	memset(&verdict, 0, sizeof(verdict));
	if (!command(&ss->c, &ss->r, to, "DATA")) {
		relay_rcpts_set(&verdict, 1, RELAY_DEFER, 0, "4.4.2", "");
		snprintf(verdict.reply, sizeof(verdict.reply), "4.4.2 %s[%s] lost connection after DATA: %s",
			 ss->h->host, ss->h->ip, ss->c.err);
	} else if (ss->r.code != 354) {
		rcpt_from_reply(&verdict, &ss->r);
		if (verdict.result == RELAY_SENT) /* 2xx to DATA is a protocol error */
			verdict.result = RELAY_DEFER;
	} else if (!send_body(ss) || !read_reply(&ss->c, &ss->r, 2 * to)) {
		relay_rcpts_set(&verdict, 1, RELAY_DEFER, 0, "4.4.2", "");
		snprintf(verdict.reply, sizeof(verdict.reply), "4.4.2 %s[%s] lost connection while sending the message: %s",
			 ss->h->host, ss->h->ip, ss->c.err);
	} else {
		rcpt_from_reply(&verdict, &ss->r);
	}
	if (ss->c.stopped)
		verdict.result = RELAY_ABORTED;
	for (size_t i = 0; i < t->n_rcpts; i++) {
		if (t->rcpts[i].result != RELAY_SENT)
			continue;
		t->rcpts[i].result = verdict.result;
		t->rcpts[i].code = verdict.code;
		memcpy(t->rcpts[i].dsn, verdict.dsn, sizeof(verdict.dsn));
		memcpy(t->rcpts[i].reply, verdict.reply, sizeof(verdict.reply));
	}
	return HOP_DONE;
}

/* The server greeted EHLO/HELO with our own name: an MX or route that
 * points back at this host (Postfix: "mail for ... loops back to myself"). */
static bool loops_back(const struct reply *r, const char *helo)
{
	const char *name = r->text + (strlen(r->text) >= 4 ? 4 : strlen(r->text));
	size_t n = strcspn(name, " ;");
	return n == strlen(helo) && strncasecmp(name, helo, n) == 0;
}

static enum hop_outcome try_hop(struct session *ss)
{
	struct relay_txn *t = ss->t;
	const struct relay_hop *h = ss->h;
	const char *helo = t->s->relay_helo_name[0] != '\0' ? t->s->relay_helo_name : t->s->hostname;
	if (!conn_connect(&ss->c, h, t->s->relay_connect_timeout_ms))
		return hop_next(ss, 0, "4.4.1 connect to %s[%s]:%u: %s", h->host, h->ip, h->port, ss->c.err);
	snprintf(t->relay_host, sizeof(t->relay_host), "%s", h->host);
	snprintf(t->relay_ip, sizeof(t->relay_ip), "%s", h->ip);
	t->relay_port = h->port;
	t->tls_used = false;
	t->tls_desc[0] = '\0';
	if (!read_reply(&ss->c, &ss->r, t->s->relay_command_timeout_ms))
		return hop_next(ss, 0, "4.4.2 %s[%s] lost connection before the greeting: %s", h->host, h->ip,
				ss->c.err);
	if (ss->r.code != 220)
		return hop_next(ss, ss->r.code, "4.4.2 %s[%s] refused to talk to me: %s", h->host, h->ip, ss->r.text);
	enum hop_outcome o = greet(ss, helo);
	if (o != HOP_DONE)
		return o;
	if (loops_back(&ss->r, helo)) {
		char why[RELAY_REPLY_MAX];
		snprintf(why, sizeof(why), "5.4.6 mail for %s[%s] loops back to myself", h->host, h->ip);
		relay_rcpts_set(t->rcpts, t->n_rcpts, RELAY_BOUNCE, 0, "5.4.6", why);
		return HOP_DONE;
	}
	if (ss->r.starttls && ss->use_tls) {
		if ((o = starttls(ss, helo)) != HOP_DONE)
			return o;
	} else if (t->s->relay_tls == RELAY_TLS_ENCRYPT && t->tls_used == false) {
		return hop_next(ss, 0, "4.7.4 TLS is required, but %s[%s] does not offer STARTTLS", h->host, h->ip);
	}
	return transaction(ss);
}

void relay_smtp_deliver(struct relay_txn *t, const struct relay_hops *hops)
{
	char why[RELAY_REPLY_MAX] = "4.4.1 no address to deliver to";
	int why_code = 0;
	relay_rcpts_set(t->rcpts, t->n_rcpts, RELAY_DEFER, 0, "4.4.1", why);
	for (size_t i = 0; i < hops->n; i++) {
		struct session ss;
		memset(&ss, 0, sizeof(ss));
		ss.t = t;
		ss.h = &hops->h[i];
		ss.c.fd = -1;
		ss.c.stop = t->stop;
		ss.use_tls = t->tls != NULL;
		enum hop_outcome o = try_hop(&ss);
		if (o == HOP_TLS_FAILED) {
			/* opportunistic TLS: the same server once more in plain text */
			conn_close(&ss.c);
			memset(&ss.r, 0, sizeof(ss.r));
			ss.use_tls = false;
			o = try_hop(&ss);
		}
		if (o == HOP_DONE)
			quit(&ss);
		bool stopped = ss.c.stopped;
		conn_close(&ss.c);
		if (o == HOP_DONE) {
			if (stopped) {
				for (size_t k = 0; k < t->n_rcpts; k++) {
					if (t->rcpts[k].result != RELAY_SENT)
						t->rcpts[k].result = RELAY_ABORTED;
				}
			}
			return;
		}
		snprintf(why, sizeof(why), "%s", ss.why);
		why_code = ss.why_code;
		log_debug("relay: %s", why);
		if (stopped) {
			relay_rcpts_set(t->rcpts, t->n_rcpts, RELAY_ABORTED, 0, "4.3.2", "delivery interrupted by shutdown");
			return;
		}
		/* results a dropped connection left are void: the next host answers them */
		relay_rcpts_set(t->rcpts, t->n_rcpts, RELAY_DEFER, why_code, "4.4.2", why);
	}
	char dsn[16] = "4.4.1";
	parse_enhanced(why, dsn);
	relay_rcpts_set(t->rcpts, t->n_rcpts, RELAY_DEFER, why_code, dsn, why);
}
