/*
 * smtp_session.c - one SMTP connection: bufferevent I/O, the input pump,
 * replies and the error tarpit, timeouts, STARTTLS, closing and freeing.
 *
 * Contract: see smtp_session.h for the lifetime rules; smtp.h for the
 * protocol promises.  What this file guarantees:
 *  - Input is consumed only in session_drive(), only while no pause bit is
 *    set, and in bounded steps (a line, or at most SESS_FEED_MAX octets of
 *    message data), so memory per session is bounded by the line limit, the
 *    input watermark and the queue's in-memory threshold.
 *  - SUBMISSIONS (465) starts with the TLS handshake; the banner follows
 *    it.  Submission sessions get no banner delay (an MX defence).
 *  - STARTTLS: after "220 2.0.0 Ready to start TLS" every octet already
 *    received is discarded (CVE-2011-0411 command injection), reading stops
 *    until the 220 is on the wire, then the socket is handed to an OpenSSL
 *    bufferevent and the session restarts from the post-banner state.
 *  - A reply is never lost to a close: CLOSE_FLUSH waits for the output to
 *    drain (bounded by SESS_CLOSE_WRITE_TIMEOUT_MS).
 *  - The client's bytes never crash or block the loop: every handler is
 *    bounded and errors only produce replies, 421 or a close.
 *  - Under load the banner waits on a timer (guard.smtp.banner_delay scaled
 *    by the mx class's fill, SS_GREET); input before it is an early talker:
 *    554 and a close.  That and the per-session limits (smtp.max_errors,
 *    max_unknown_recipients, max_commands_before_helo, max_commands) are
 *    reported to the guard as offences, which ban the address.
 *
 * Threads: the worker's event loop thread only.
 */
#include "smtp_session.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>

#include "metrics.h"
#include "tls.h"

#define SESS_FEED_MAX (64u * 1024u)          /* data octets per step */
#define SESS_INPUT_HIGH (256u * 1024u)       /* stop reading above this */
#define SESS_OUTPUT_HIGH (256u * 1024u)      /* client not reading replies */
#define SESS_CLOSE_WRITE_TIMEOUT_MS 10000u   /* last reply must leave by then */
#define SESS_ERRORS_BEFORE_DELAY 3u          /* tarpit starts after the third */

static void read_cb(struct bufferevent *bev, void *arg);
static void write_cb(struct bufferevent *bev, void *arg);
static void event_cb(struct bufferevent *bev, short what, void *arg);
static struct timeval ms_tv(uint64_t ms);

/* ---- peer address ------------------------------------------------------ */

static void format_peer(struct smtp_session *s, const struct sockaddr *peer, socklen_t len)
{
	unsigned port = 0;
	snprintf(s->ip, sizeof(s->ip), "unknown");
	if (peer != NULL && peer->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)peer;
		inet_ntop(AF_INET, &in->sin_addr, s->ip, sizeof(s->ip));
		port = ntohs(in->sin_port);
	} else if (peer != NULL && peer->sa_family == AF_INET6 &&
		   len >= (socklen_t)sizeof(struct sockaddr_in6)) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)peer;
		port = ntohs(in6->sin6_port);
		if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
			inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], s->ip, sizeof(s->ip));
		} else {
			inet_ntop(AF_INET6, &in6->sin6_addr, s->ip, sizeof(s->ip));
			s->ipv6 = true;
		}
	}
	snprintf(s->client, sizeof(s->client), "[%s]:%u", s->ip, port);
}

/* ---- start and free ------------------------------------------------------ */

static void configure_bev(struct smtp_session *s)
{
	bufferevent_setcb(s->bev, read_cb, write_cb, event_cb, s);
	bufferevent_setwatermark(s->bev, EV_READ, 0, SESS_INPUT_HIGH);
	session_set_timeouts(s);
	bufferevent_enable(s->bev, EV_WRITE);
	if (s->pause == 0)
		bufferevent_enable(s->bev, EV_READ);
	else
		bufferevent_disable(s->bev, EV_READ);
}

static void link_session(struct smtp_worker *w, struct smtp_session *s)
{
	s->prev = NULL;
	s->next = w->sessions;
	if (w->sessions != NULL)
		w->sessions->prev = s;
	w->sessions = s;
	w->n_sessions++;
}

static void unlink_session(struct smtp_session *s)
{
	struct smtp_worker *w = s->w;
	if (w == NULL)
		return;
	if (s->prev != NULL)
		s->prev->next = s->next;
	else
		w->sessions = s->next;
	if (s->next != NULL)
		s->next->prev = s->prev;
	s->prev = s->next = NULL;
	w->n_sessions--;
	s->w = NULL;
}

static void send_banner(struct smtp_session *s)
{
	session_reply(s, "220 %s ESMTP Strata", s->set->hostname);
}

/* guard.smtp.banner_delay scaled by the mx class's load: 0 when idle, the
 * whole delay when full.  Allowlisted clients (an empty ticket), good
 * senders (guard_is_good) and a daemon without a guard get the banner at
 * once. */
static uint64_t banner_delay_ms(const struct smtp_session *s)
{
	struct guard *g = guard_process();
	uint64_t max = s->set->guard_smtp_banner_delay_ms;
	struct guard_addr a;
	if (g == NULL || s->ticket.g == NULL || max == 0)
		return 0;
	if (guard_addr_parse(s->ip, &a) && guard_is_good(g, &a, time_mono_ms()))
		return 0;
	return max * guard_load_permille(g, GUARD_CLASS_MX) / 1000;
}

static void banner_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct smtp_session *s = arg;
	if (s->state != SS_GREET || s->close != CLOSE_NONE)
		return;
	s->state = SS_CMD;
	send_banner(s);
	session_settle(s);
}

/* SUBMISSIONS: the socket speaks TLS from its first octet (RFC 8314). */
static struct bufferevent *implicit_tls_bev(struct smtp_session *s, int fd)
{
	SSL *ssl = SSL_new(s->w->tls);
	if (ssl == NULL)
		return NULL;
	struct bufferevent *bev =
		bufferevent_openssl_socket_new(s->w->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		SSL_free(ssl);
		return NULL;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	s->implicit_tls = true;
	s->state = SS_TLS;
	return bev;
}

void session_start(struct smtp_worker *w, int fd, const struct sockaddr *peer, socklen_t peer_len,
		   enum smtp_service service, struct guard_ticket *ticket)
{
	struct smtp_session *s = xcalloc(1, sizeof(*s));
	if (ticket != NULL) {
		s->ticket = *ticket;
		ticket->g = NULL;   /* moved: the caller's copy releases nothing */
	}
	s->w = w;
	s->set = w->s;
	s->service = service;
	s->started_ms = time_mono_ms();
	format_peer(s, peer, peer_len);
	smtp_line_init(&s->lr, s->set->smtp_max_line_length);
	if (service == SMTP_SERVICE_SUBMISSIONS)
		s->bev = implicit_tls_bev(s, fd);
	else
		s->bev = bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (s->bev == NULL) {
		log_error("smtp: cannot create a bufferevent for %s", s->client);
		close(fd);
		guard_release(&s->ticket);
		smtp_line_free(&s->lr);
		free(s);
		smtp_worker_release_slot(service);
		return;
	}
	link_session(w, s);
	gauge_add(M_SMTP_SESSIONS_ACTIVE, 1);
	/* The banner delay is the MX class's defence against spam engines;
	 * submission clients are people's mail programs (the user class). */
	uint64_t delay = service == SMTP_SERVICE_MX ? banner_delay_ms(s) : 0;
	if (delay > 0) {
		s->banner_ev = evtimer_new(w->base, banner_cb, s);
		if (s->banner_ev == NULL)
			panic("smtp: evtimer_new failed");
		s->state = SS_GREET;
		struct timeval tv = ms_tv(delay);
		evtimer_add(s->banner_ev, &tv);
	}
	configure_bev(s);
	log_debug("smtp: connect from %s%s%s", s->client,
		  service == SMTP_SERVICE_SUBMISSIONS  ? " (submissions)"
		  : service == SMTP_SERVICE_SUBMISSION ? " (submission)"
						       : "",
		  delay > 0 ? ", banner delayed" : "");
	if (delay == 0 && !s->implicit_tls)
		send_banner(s);
}

/* Releases the connection; the struct stays when a commit is in flight. */
static void release_connection(struct smtp_session *s)
{
	guard_release(&s->ticket);   /* once: it clears the ticket */
	if (s->delay_ev != NULL) {
		event_free(s->delay_ev);
		s->delay_ev = NULL;
	}
	if (s->banner_ev != NULL) {
		event_free(s->banner_ev);
		s->banner_ev = NULL;
	}
	if (s->auth_ev != NULL) {
		event_free(s->auth_ev);
		s->auth_ev = NULL;
	}
	if (s->bev != NULL) {
		bufferevent_free(s->bev);
		s->bev = NULL;
	}
}

static void session_free(struct smtp_session *s)
{
	release_connection(s);
	if (s->committing || s->auth_job != NULL)
		return;   /* orphan: the done callback frees it */
	if (s->txn.msg != NULL)
		txn_reset(s, "lost connection");
	txn_free(&s->txn);
	log_debug("smtp: disconnect from %s", s->client);
	if (s->w != NULL)
		unlink_session(s);
	gauge_add(M_SMTP_SESSIONS_ACTIVE, -1);
	smtp_worker_release_slot(s->service);
	smtp_line_free(&s->lr);
	buf_free(&s->delayed);
	buf_free(&s->dout);
	free(s);
}

void session_destroy(struct smtp_session *s)
{
	if (s->committing || s->auth_job != NULL) {
		/* The done callback will still run on this base: detach from
		 * the worker now, free there. */
		release_connection(s);
		unlink_session(s);
		s->close = CLOSE_NOW;
		return;
	}
	session_free(s);
}

static bool output_pending(const struct smtp_session *s)
{
	return s->bev != NULL && evbuffer_get_length(bufferevent_get_output(s->bev)) > 0;
}

void session_settle(struct smtp_session *s)
{
	if (s->close == CLOSE_NONE)
		return;
	if (s->close == CLOSE_FLUSH && output_pending(s))
		return;
	session_free(s);
}

/* ---- replies ------------------------------------------------------------- */

static void write_out(struct smtp_session *s, const void *data, size_t len)
{
	if (s->bev == NULL || len == 0)
		return;
	struct evbuffer *out = bufferevent_get_output(s->bev);
	if (evbuffer_add(out, data, len) != 0)
		panic("smtp: evbuffer_add failed");
	if (evbuffer_get_length(out) > SESS_OUTPUT_HIGH && !(s->pause & PAUSE_OUTPUT))
		session_pause(s, PAUSE_OUTPUT);
}

/* Sends replies held back by the tarpit now. */
static void flush_delayed(struct smtp_session *s)
{
	if (s->delay_ev != NULL)
		evtimer_del(s->delay_ev);
	if (s->delayed.len > 0) {
		write_out(s, s->delayed.data, s->delayed.len);
		buf_reset(&s->delayed);
	}
	s->pause &= ~PAUSE_DELAY;
}

static void vreply(struct smtp_session *s, const char *fmt, va_list ap) ATTR_PRINTF(2, 0);
static void vreply(struct smtp_session *s, const char *fmt, va_list ap)
{
	struct buf line = BUF_INIT;
	buf_vprintf(&line, fmt, ap);
	buf_append(&line, "\r\n", 2);
	if (s->pause & PAUSE_DELAY)
		buf_append(&s->delayed, line.data, line.len);
	else
		write_out(s, line.data, line.len);
	buf_free(&line);
}

void session_reply(struct smtp_session *s, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vreply(s, fmt, ap);
	va_end(ap);
}

static void delay_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct smtp_session *s = arg;
	flush_delayed(s);
	session_resume(s, PAUSE_DELAY);
	session_drive(s);
	session_settle(s);
}

void session_reply_error(struct smtp_session *s, int metric, const char *fmt, ...)
{
	if (metric >= 0)
		metric_inc((enum metric_counter)metric);
	s->errors++;
	va_list ap;
	va_start(ap, fmt);
	if (s->errors >= s->set->smtp_max_errors) {
		flush_delayed(s);
		vreply(s, fmt, ap);
		va_end(ap);
		session_offence(s, GUARD_OFFENCE_ERRORS);
		return;
	}
	uint64_t delay = s->set->smtp_error_delay_ms;
	if (s->errors > SESS_ERRORS_BEFORE_DELAY && delay > 0 && s->bev != NULL) {
		if (s->delay_ev == NULL)
			s->delay_ev = evtimer_new(bufferevent_get_base(s->bev), delay_cb, s);
		if (s->delay_ev == NULL)
			panic("smtp: evtimer_new failed");
		session_pause(s, PAUSE_DELAY);
		vreply(s, fmt, ap);
		struct timeval tv = { (time_t)(delay / 1000), (suseconds_t)((delay % 1000) * 1000) };
		evtimer_add(s->delay_ev, &tv);
	} else {
		vreply(s, fmt, ap);
	}
	va_end(ap);
}

void session_offence(struct smtp_session *s, enum guard_offence kind)
{
	if (s->close != CLOSE_NONE)
		return;
	struct guard *g = guard_process();
	struct guard_addr a;
	if (g != NULL && guard_addr_parse(s->ip, &a))
		guard_offence(g, &a, kind, time_mono_ms());
	const char *code = kind == GUARD_OFFENCE_EARLY_TALK ? "554 5.5.0" : "421 4.7.0";
	session_close_with(s, guard_offence_name(kind), "%s %s Error: %s", code, s->set->hostname,
			   guard_offence_name(kind));
}

void session_close_after_flush(struct smtp_session *s)
{
	if (s->close != CLOSE_NONE)
		return;
	flush_delayed(s);
	s->close = CLOSE_FLUSH;
	if (s->bev != NULL) {
		bufferevent_disable(s->bev, EV_READ);
		session_set_timeouts(s);
	}
}

void session_close_with(struct smtp_session *s, const char *log_reason, const char *fmt, ...)
{
	if (s->close != CLOSE_NONE)
		return;
	flush_delayed(s);
	va_list ap;
	va_start(ap, fmt);
	vreply(s, fmt, ap);
	va_end(ap);
	if (s->txn.active || s->txn.msg != NULL)
		txn_reset(s, log_reason);
	session_close_after_flush(s);
}

/* ---- pausing and timeouts ------------------------------------------------ */

void session_pause(struct smtp_session *s, unsigned bit)
{
	s->pause |= bit;
	if (s->bev != NULL)
		bufferevent_disable(s->bev, EV_READ);
}

void session_resume(struct smtp_session *s, unsigned bit)
{
	s->pause &= ~bit;
	if (s->pause == 0 && s->bev != NULL && s->close == CLOSE_NONE &&
	    s->state != SS_TLS_WAIT && s->state != SS_COMMIT)
		bufferevent_enable(s->bev, EV_READ);
}

static struct timeval ms_tv(uint64_t ms)
{
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
	return tv;
}

void session_set_timeouts(struct smtp_session *s)
{
	if (s->bev == NULL)
		return;
	uint64_t ms = (s->state == SS_DATA || s->state == SS_BDAT) ? s->set->smtp_timeout_data_ms
								    : s->set->smtp_timeout_command_ms;
	struct timeval rd = ms_tv(ms);
	if (s->close != CLOSE_NONE) {
		struct timeval wr = ms_tv(ms < SESS_CLOSE_WRITE_TIMEOUT_MS ? ms : SESS_CLOSE_WRITE_TIMEOUT_MS);
		bufferevent_set_timeouts(s->bev, NULL, &wr);
		return;
	}
	bufferevent_set_timeouts(s->bev, &rd, &rd);
}

/* ---- the input pump -------------------------------------------------------- */

/* One step of message data (at most SESS_FEED_MAX octets). */
static void drive_data(struct smtp_session *s, struct evbuffer *in, const struct evbuffer_iovec *v)
{
	size_t len = v->iov_len < SESS_FEED_MAX ? v->iov_len : SESS_FEED_MAX;
	size_t used = txn_feed(s, v->iov_base, len);
	evbuffer_drain(in, used);
	if (s->txn.data.done) {
		s->state = SS_CMD;
		session_set_timeouts(s);
		txn_end_message(s);
	}
}

static void drive_bdat(struct smtp_session *s, struct evbuffer *in, const struct evbuffer_iovec *v)
{
	if (s->bdat_left == 0) {
		/* not reached (a chunk ends as its last octet is read), but
		 * the pump must always make progress */
		command_bdat_chunk_done(s);
		return;
	}
	size_t len = v->iov_len < SESS_FEED_MAX ? v->iov_len : SESS_FEED_MAX;
	if (len > s->bdat_left)
		len = (size_t)s->bdat_left;
	if (!s->bdat_discard)
		txn_feed(s, v->iov_base, len);
	evbuffer_drain(in, len);
	s->bdat_left -= len;
	if (s->bdat_left == 0)
		command_bdat_chunk_done(s);
}

void session_drive(struct smtp_session *s)
{
	/* Bounded: every pass consumes at least one octet of buffered input,
	 * or stops. */
	while (s->close == CLOSE_NONE && s->pause == 0 && s->bev != NULL) {
		if (s->state != SS_CMD && s->state != SS_DATA && s->state != SS_BDAT)
			return;
		struct evbuffer *in = bufferevent_get_input(s->bev);
		if (evbuffer_get_length(in) == 0)
			return;
		struct evbuffer_iovec v;
		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
			return;
		if (s->state == SS_CMD) {
			enum smtp_line_status st;
			size_t used = smtp_line_feed(&s->lr, v.iov_base, v.iov_len, &st);
			evbuffer_drain(in, used);
			s->rx_bytes += used;
			if (st != SMTP_LINE_PARTIAL)
				command_line(s, st);
		} else {
			size_t before = evbuffer_get_length(in);
			if (s->state == SS_DATA)
				drive_data(s, in, &v);
			else
				drive_bdat(s, in, &v);
			s->rx_bytes += before - evbuffer_get_length(in);
		}
	}
}

/* ---- slow clients and session lifetime ---------------------------------------- */

/* In the middle of something the client has to finish: a command line
 * started, DATA, a BDAT chunk.  Not while the server holds it back. */
static bool mid_transfer(const struct smtp_session *s)
{
	if (s->pause != 0 || s->close != CLOSE_NONE || s->bev == NULL)
		return false;
	if (s->state == SS_DATA || s->state == SS_BDAT)
		return true;
	return s->state == SS_CMD && !s->lr.complete && (s->lr.line.len > 0 || s->lr.overflow);
}

void session_sweep(struct smtp_session *s, uint64_t now_ms)
{
	if (s->close != CLOSE_NONE || s->committing || s->state == SS_COMMIT || s->state == SS_TLS ||
	    s->state == SS_TLS_WAIT)
		return;
	bool busy = mid_transfer(s);
	uint64_t got = s->rx_bytes - s->rx_mark;
	bool slow = busy && s->was_busy && s->set->smtp_min_rate > 0 && got < s->set->smtp_min_rate;
	s->was_busy = busy;
	s->rx_mark = s->rx_bytes;
	if (slow) {
		metric_inc(M_SMTP_CUT_SLOW);
		log_info("smtp: %s too slow: %llu bytes in the last window", s->client, (unsigned long long)got);
		session_close_with(s, "too slow", "421 4.4.2 %s Error: too slow", s->set->hostname);
	} else if (now_ms - s->started_ms >= s->set->smtp_max_session_time_ms) {
		metric_inc(M_SMTP_CUT_LIFETIME);
		log_info("smtp: %s session too long", s->client);
		session_close_with(s, "session too long", "421 4.4.2 %s Error: session too long",
				   s->set->hostname);
	}
	session_settle(s);
}

/* ---- STARTTLS ---------------------------------------------------------------- */

void session_starttls(struct smtp_session *s)
{
	s->state = SS_TLS_WAIT;
	bufferevent_disable(s->bev, EV_READ);
	/* Anything the client sent after STARTTLS and before seeing our 220
	 * is plaintext injection: drop it (CVE-2011-0411). */
	struct evbuffer *in = bufferevent_get_input(s->bev);
	evbuffer_drain(in, evbuffer_get_length(in));
	smtp_line_reset(&s->lr, s->set->smtp_max_line_length);
	/* RFC 3207 4.2: forget everything learned from the client. */
	txn_reset(s, NULL);
	s->helo_seen = false;
	s->esmtp = false;
	s->helo[0] = '\0';
	auth_forget(s);
}

/* The 220 is on the wire: hand the socket to OpenSSL. */
static void tls_begin(struct smtp_session *s)
{
	struct event_base *base = bufferevent_get_base(s->bev);
	SSL *ssl = SSL_new(s->w->tls);
	if (ssl == NULL) {
		log_error("smtp: SSL_new failed for %s", s->client);
		metric_inc(M_SMTP_TLS_FAILURES);
		s->close = CLOSE_NOW;
		return;
	}
	int fd = bufferevent_getfd(s->bev);
	/* Detach the socket so freeing the plain bufferevent keeps it open. */
	bufferevent_setfd(s->bev, -1);
	bufferevent_free(s->bev);
	s->bev = bufferevent_openssl_socket_new(base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
						BEV_OPT_CLOSE_ON_FREE);
	if (s->bev == NULL) {
		log_error("smtp: cannot create a TLS bufferevent for %s", s->client);
		SSL_free(ssl);
		close(fd);
		metric_inc(M_SMTP_TLS_FAILURES);
		s->close = CLOSE_NOW;
		return;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(s->bev, 1);
	s->state = SS_TLS;
	configure_bev(s);
	bufferevent_enable(s->bev, EV_READ);
}

static void tls_done(struct smtp_session *s)
{
	SSL *ssl = bufferevent_openssl_get_ssl(s->bev);
	if (ssl != NULL)
		tls_describe(ssl, s->tls_desc, sizeof(s->tls_desc));
	else
		snprintf(s->tls_desc, sizeof(s->tls_desc), "TLS");
	s->tls = true;
	metric_inc(M_SMTP_TLS_HANDSHAKES);
	s->state = SS_CMD;
	session_set_timeouts(s);
	if (s->implicit_tls)
		send_banner(s);   /* SUBMISSIONS: the greeting goes over TLS (its only handshake) */
	if (s->pause == 0)
		bufferevent_enable(s->bev, EV_READ);
	session_drive(s);
}

static void tls_failed(struct smtp_session *s)
{
	unsigned long e = bufferevent_get_openssl_error(s->bev);
	char err[256] = "connection closed";
	if (e != 0)
		ERR_error_string_n(e, err, sizeof(err));
	log_info("smtp: TLS handshake failed from %s: %s", s->client, err);
	metric_inc(M_SMTP_TLS_FAILURES);
	s->close = CLOSE_NOW;
}

/* ---- libevent callbacks -------------------------------------------------------- */

static void read_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	struct smtp_session *s = arg;
	if (s->state == SS_GREET) {
		/* Input before the banner: a client that does not wait for
		 * the server (RFC 5321 3.1), typically a spam engine. */
		s->state = SS_CMD;
		session_offence(s, GUARD_OFFENCE_EARLY_TALK);
	} else {
		session_drive(s);
	}
	session_settle(s);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	struct smtp_session *s = arg;
	if (s->state == SS_TLS_WAIT && s->close == CLOSE_NONE) {
		tls_begin(s);
	} else if (s->pause & PAUSE_OUTPUT) {
		session_resume(s, PAUSE_OUTPUT);
		session_drive(s);
	}
	session_settle(s);
}

static void on_timeout(struct smtp_session *s, short what)
{
	if (s->close != CLOSE_NONE || (what & BEV_EVENT_WRITING) || s->state == SS_TLS ||
	    s->state == SS_TLS_WAIT) {
		/* The client stopped reading, or a TLS handshake stalled, or
		 * the last reply could not be sent: nothing more can be said. */
		log_info("smtp: timeout %s from %s",
			 s->state == SS_TLS || s->state == SS_TLS_WAIT ? "in TLS handshake"
			 : (what & BEV_EVENT_WRITING)                  ? "writing"
								       : "reading",
			 s->client);
		metric_inc(M_SMTP_TIMEOUTS);
		if (s->txn.msg != NULL)
			txn_reset(s, "timeout");
		s->close = CLOSE_NOW;
		return;
	}
	metric_inc(M_SMTP_TIMEOUTS);
	log_info("smtp: timeout after %s from %s",
		 s->state == SS_DATA ? "DATA" : s->state == SS_BDAT ? "BDAT" : "command", s->client);
	s->state = SS_CMD;
	session_close_with(s, "timeout", "421 4.4.2 %s Error: timeout exceeded", s->set->hostname);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	struct smtp_session *s = arg;
	if (what & BEV_EVENT_CONNECTED) {
		if (s->state == SS_TLS)
			tls_done(s);
	} else if (what & BEV_EVENT_TIMEOUT) {
		on_timeout(s, what);
	} else if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
		if (s->state == SS_TLS) {
			tls_failed(s);
		} else {
			if (what & BEV_EVENT_ERROR)
				log_debug("smtp: connection error from %s: %s", s->client,
					  strerror(EVUTIL_SOCKET_ERROR()));
			if (s->txn.msg != NULL)
				txn_reset(s, s->state == SS_DATA || s->state == SS_BDAT
						     ? "lost connection during message data"
						     : "lost connection");
			s->close = CLOSE_NOW;
		}
	}
	session_settle(s);
}

/* ---- shutdown ------------------------------------------------------------------ */

void session_shutdown(struct smtp_session *s)
{
	if (s->committing) {
		/* The reply goes out when the commit completes, then 421. */
		s->shutdown = true;
		return;
	}
	if (s->close == CLOSE_NONE) {
		if (s->state == SS_TLS || s->state == SS_TLS_WAIT || s->bev == NULL) {
			s->close = CLOSE_NOW;
		} else {
			const struct status_info *si = status_info(ST_SHUTDOWN);
			s->state = SS_CMD;
			session_close_with(s, "shutdown", "%d %s %s", si->smtp_code, si->smtp_enh,
					   si->smtp_text);
		}
	}
	session_settle(s);
}
