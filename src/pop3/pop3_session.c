/*
 * pop3_session.c - one POP3 connection: bufferevent I/O, the input pump,
 * replies and the error limit, timeouts, STLS and implicit TLS, store
 * jobs, closing and freeing.
 *
 * Contract: see pop3_int.h for the lifetime rules.  Guarantees here:
 *  - Input is consumed only in pop3_session_drive(), only while no pause
 *    bit is set, one line at a time, so memory per session is bounded by
 *    the reader's fixed buffer and the input watermark.
 *  - STLS: after "+OK" every octet already received is dropped (plaintext
 *    command injection, CVE-2011-0411 and its POP3 cousins), reading stops
 *    until the reply is on the wire, then the socket goes to OpenSSL.
 *  - A reply is never lost to a close: PC_FLUSH waits for the output to
 *    drain (bounded by a write timeout).
 *  - Whatever ends a session - QUIT, timeout, error, the client vanishing,
 *    shutdown - the maildrop lock is released (pop3_command_logout) and
 *    nothing is expunged: only QUIT's UPDATE state deletes.
 *
 * Threads: the worker's loop thread only.
 */
#include "pop3_int.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>

#define CLOSE_WRITE_TIMEOUT_MS 10000u

static void read_cb(struct bufferevent *bev, void *arg);
static void write_cb(struct bufferevent *bev, void *arg);
static void event_cb(struct bufferevent *bev, short what, void *arg);

/* ---- start and free ---------------------------------------------------------- */

static void format_peer(struct pop3_session *s, const struct sockaddr *peer, socklen_t len)
{
	unsigned port = 0;
	snprintf(s->ip, sizeof(s->ip), "unknown");
	if (peer != NULL && peer->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)peer;
		inet_ntop(AF_INET, &in->sin_addr, s->ip, sizeof(s->ip));
		port = ntohs(in->sin_port);
		s->loopback = (ntohl(in->sin_addr.s_addr) >> 24) == 127;
	} else if (peer != NULL && peer->sa_family == AF_INET6 &&
		   len >= (socklen_t)sizeof(struct sockaddr_in6)) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)peer;
		port = ntohs(in6->sin6_port);
		if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
			inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], s->ip, sizeof(s->ip));
			s->loopback = in6->sin6_addr.s6_addr[12] == 127;
		} else {
			inet_ntop(AF_INET6, &in6->sin6_addr, s->ip, sizeof(s->ip));
			s->loopback = IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
		}
	}
	snprintf(s->client, sizeof(s->client), "[%s]:%u", s->ip, port);
}

static struct timeval ms_tv(uint64_t ms)
{
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
	return tv;
}

void pop3_session_timeouts(struct pop3_session *s)
{
	if (s->bev == NULL)
		return;
	uint64_t ms = s->state == PS_AUTH ? s->set->pop3_timeout_login_ms : s->set->pop3_timeout_idle_ms;
	if (s->close != PC_NONE || s->mode == PM_TLS || s->mode == PM_TLS_WAIT) {
		uint64_t wms = ms < CLOSE_WRITE_TIMEOUT_MS ? ms : CLOSE_WRITE_TIMEOUT_MS;
		struct timeval wr = ms_tv(wms);
		bufferevent_set_timeouts(s->bev, s->close != PC_NONE ? NULL : &wr, &wr);
		return;
	}
	struct timeval rd = ms_tv(ms);
	bufferevent_set_timeouts(s->bev, &rd, &rd);
}

static void configure_bev(struct pop3_session *s)
{
	bufferevent_setcb(s->bev, read_cb, write_cb, event_cb, s);
	bufferevent_setwatermark(s->bev, EV_READ, 0, POP3_INPUT_HIGH);
	/* The RETR producer refills before the socket runs dry. */
	bufferevent_setwatermark(s->bev, EV_WRITE, POP3_OUTPUT_LOW, 0);
	if (bufferevent_set_max_single_write(s->bev, POP3_WRITE_MAX) != 0)
		log_warn("pop3: cannot raise the write size for %s", s->client);
	pop3_session_timeouts(s);
	bufferevent_enable(s->bev, EV_WRITE);
	if (s->pause == 0)
		bufferevent_enable(s->bev, EV_READ);
	else
		bufferevent_disable(s->bev, EV_READ);
}

static void link_session(struct pop3_worker *w, struct pop3_session *s)
{
	s->next = w->sessions;
	if (w->sessions)
		w->sessions->prev = s;
	w->sessions = s;
	w->n_sessions++;
}

static void unlink_session(struct pop3_session *s)
{
	struct pop3_worker *w = s->w;
	if (w == NULL)
		return;
	if (s->prev)
		s->prev->next = s->next;
	else
		w->sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	s->prev = s->next = NULL;
	w->n_sessions--;
	s->w = NULL;
}

static struct bufferevent *tls_bev(struct pop3_session *s, struct event_base *base, int fd)
{
	SSL *ssl = SSL_new(s->w->tls);
	if (ssl == NULL) {
		log_error("pop3: SSL_new failed for %s", s->client);
		return NULL;
	}
	struct bufferevent *bev = bufferevent_openssl_socket_new(base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
								 BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		log_error("pop3: cannot create a TLS bufferevent for %s", s->client);
		SSL_free(ssl);
		return NULL;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return bev;
}

void pop3_session_start(struct pop3_worker *w, int fd, const struct sockaddr *peer, socklen_t peer_len,
			bool implicit_tls, struct guard_ticket *ticket)
{
	struct pop3_session *s = xcalloc(1, sizeof(*s));
	if (ticket != NULL) {
		s->ticket = *ticket;
		ticket->g = NULL;   /* moved: the caller's copy releases nothing */
	}
	s->w = w;
	s->set = w->s;
	s->implicit_tls = implicit_tls;
	format_peer(s, peer, peer_len);
	pop3_reader_init(&s->rd, POP3_SASL_LINE_MAX);
	if (implicit_tls) {
		s->bev = tls_bev(s, w->base, fd);
		s->mode = PM_TLS;
	} else {
		s->bev = bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE);
	}
	if (s->bev == NULL) {
		log_error("pop3: cannot set up the connection from %s", s->client);
		close(fd);
		guard_release(&s->ticket);
		free(s);
		pop3_worker_release_slot();
		return;
	}
	link_session(w, s);
	configure_bev(s);
	log_debug("pop3: connect from %s%s", s->client, implicit_tls ? " (TLS)" : "");
	if (!implicit_tls)
		pop3_command_greeting(s);
}

static void release_connection(struct pop3_session *s)
{
	guard_release(&s->ticket);   /* once: it clears the ticket */
	if (s->bev != NULL) {
		bufferevent_free(s->bev);
		s->bev = NULL;
	}
}

static void session_free(struct pop3_session *s)
{
	release_connection(s);
	if (s->job != NULL)
		return;   /* orphan: the job's completion frees it */
	pop3_retr_free(&s->retr);
	pop3_command_logout(s);
	log_debug("pop3: disconnect from %s", s->client);
	if (s->w != NULL)
		unlink_session(s);
	pop3_worker_release_slot();
	free(s->user);
	free(s);
}

void pop3_session_destroy(struct pop3_session *s)
{
	if (s->job != NULL) {
		release_connection(s);
		unlink_session(s);
		s->close = PC_NOW;
		return;
	}
	session_free(s);
}

static bool output_pending(const struct pop3_session *s)
{
	return s->bev != NULL && evbuffer_get_length(bufferevent_get_output(s->bev)) > 0;
}

void pop3_session_settle(struct pop3_session *s)
{
	if (s->close == PC_NONE || s->job != NULL)
		return;
	if (s->close == PC_FLUSH && output_pending(s))
		return;
	session_free(s);
}

/* ---- output ------------------------------------------------------------------ */

bool pop3_session_output_full(const struct pop3_session *s)
{
	return s->bev != NULL && evbuffer_get_length(bufferevent_get_output(s->bev)) > POP3_OUTPUT_HIGH;
}

void pop3_session_write(struct pop3_session *s, const void *data, size_t len)
{
	if (s->bev == NULL || len == 0 || s->close == PC_NOW)
		return;
	if (evbuffer_add(bufferevent_get_output(s->bev), data, len) != 0)
		panic("pop3: evbuffer_add failed");
}

static void vline(struct pop3_session *s, const char *prefix, const char *fmt, va_list ap)
{
	struct buf line = BUF_INIT;
	buf_append_str(&line, prefix);
	buf_vprintf(&line, fmt, ap);
	buf_append(&line, "\r\n", 2);
	pop3_session_write(s, line.data, line.len);
	buf_free(&line);
}

void pop3_session_ok(struct pop3_session *s, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vline(s, "+OK ", fmt, ap);
	va_end(ap);
}

void pop3_session_err(struct pop3_session *s, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vline(s, "-ERR ", fmt, ap);
	va_end(ap);
}

void pop3_session_close_after_flush(struct pop3_session *s)
{
	if (s->close != PC_NONE)
		return;
	s->close = PC_FLUSH;
	if (s->bev != NULL) {
		bufferevent_disable(s->bev, EV_READ);
		pop3_session_timeouts(s);
	}
}

void pop3_session_bad(struct pop3_session *s, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vline(s, "-ERR ", fmt, ap);
	va_end(ap);
	if (++s->errors >= s->set->pop3_max_errors) {
		pop3_session_err(s, "Too many bad commands, closing connection");
		pop3_session_close_after_flush(s);
	}
}

/* ---- pausing --------------------------------------------------------------------- */

void pop3_session_pause(struct pop3_session *s, unsigned bit)
{
	s->pause |= bit;
	if (s->bev != NULL)
		bufferevent_disable(s->bev, EV_READ);
}

void pop3_session_resume(struct pop3_session *s, unsigned bit)
{
	s->pause &= ~bit;
	if (s->pause == 0 && s->bev != NULL && s->close == PC_NONE && s->mode != PM_TLS_WAIT)
		bufferevent_enable(s->bev, EV_READ);
}

/* ---- jobs ----------------------------------------------------------------------- */

void pop3_session_submit(struct pop3_session *s, struct pop3_job *j)
{
	if (s->job != NULL)
		panic("pop3: two jobs for one session");
	j->s = s;
	j->base = s->w->base;
	s->job = j;
	pop3_session_pause(s, PP_JOB);
	pop3_pool_submit(s->w->pool, j);
}

void pop3_session_job_end(struct pop3_session *s)
{
	if (s->shutdown && s->close == PC_NONE) {
		pop3_session_err(s, "[SYS/TEMP] Server shutting down");
		pop3_session_close_after_flush(s);
	} else {
		pop3_session_timeouts(s);
		pop3_session_drive(s);
	}
	pop3_session_settle(s);
}

bool pop3_session_job_finished(struct pop3_session *s)
{
	s->job = NULL;
	if (s->bev == NULL || s->w == NULL) {
		/* The client went while the job ran. */
		s->close = PC_NOW;
		session_free(s);
		return false;
	}
	pop3_session_resume(s, PP_JOB);
	return true;
}

/* ---- the input pump ----------------------------------------------------------------- */

static void on_line(struct pop3_session *s)
{
	/* Copied: a command may reset the reader (STLS) before it is done. */
	char line[POP3_SASL_LINE_MAX + 1];
	size_t len = s->rd.len;
	memcpy(line, s->rd.line, len);
	line[len] = '\0';
	pop3_reader_reset(&s->rd);
	if (s->mode == PM_SASL) {
		s->mode = PM_CMD;
		pop3_command_sasl_response(s, line, len);
	} else if (len > POP3_LINE_MAX && strncasecmp(line, "AUTH ", 5) != 0) {
		pop3_session_bad(s, "Line too long");
	} else {
		pop3_command_line(s, line, len);
	}
	explicit_bzero(line, sizeof(line));   /* may hold a password */
}

void pop3_session_drive(struct pop3_session *s)
{
	/* Bounded: each pass consumes input (at most one line) or stops;
	 * it stops when input runs out or a pause is set. */
	while (s->close == PC_NONE && s->pause == 0 && s->bev != NULL &&
	       (s->mode == PM_CMD || s->mode == PM_SASL)) {
		if (pop3_session_output_full(s)) {
			/* The client is not reading our replies: stop reading
			 * its commands until the output drains (write_cb). */
			pop3_session_pause(s, PP_OUTPUT);
			return;
		}
		struct evbuffer *in = bufferevent_get_input(s->bev);
		if (evbuffer_get_length(in) == 0)
			return;
		struct evbuffer_iovec v;
		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
			return;
		enum pop3_rd_event ev;
		size_t used = pop3_reader_feed(&s->rd, v.iov_base, v.iov_len, &ev);
		evbuffer_drain(in, used);
		if (ev == POP3_RD_LINE) {
			on_line(s);
		} else if (ev == POP3_RD_TOO_LONG) {
			pop3_reader_reset(&s->rd);
			if (s->mode == PM_SASL) {
				s->mode = PM_CMD;
				pop3_session_bad(s, "Authentication failed: response too long");
			} else {
				pop3_session_bad(s, "Line too long");
			}
		}
		if (s->bev == NULL || s->mode == PM_TLS_WAIT)
			return;
	}
}

/* ---- TLS --------------------------------------------------------------------------- */

void pop3_session_starttls(struct pop3_session *s)
{
	s->mode = PM_TLS_WAIT;
	bufferevent_disable(s->bev, EV_READ);
	struct evbuffer *in = bufferevent_get_input(s->bev);
	evbuffer_drain(in, evbuffer_get_length(in));
	pop3_reader_reset(&s->rd);
	pop3_session_timeouts(s);
}

static void tls_begin(struct pop3_session *s)
{
	struct event_base *base = bufferevent_get_base(s->bev);
	int fd = bufferevent_getfd(s->bev);
	bufferevent_setfd(s->bev, -1);
	bufferevent_free(s->bev);
	s->bev = tls_bev(s, base, fd);
	if (s->bev == NULL) {
		close(fd);
		s->close = PC_NOW;
		return;
	}
	s->mode = PM_TLS;
	configure_bev(s);
	bufferevent_enable(s->bev, EV_READ);
}

static void tls_done(struct pop3_session *s)
{
	s->tls = true;
	s->mode = PM_CMD;
	pop3_session_timeouts(s);
	if (s->implicit_tls)
		pop3_command_greeting(s);
	if (s->pause == 0)
		bufferevent_enable(s->bev, EV_READ);
	pop3_session_drive(s);
}

/* ---- libevent callbacks ------------------------------------------------------------ */

static void read_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	struct pop3_session *s = arg;
	pop3_session_drive(s);
	pop3_session_settle(s);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	struct pop3_session *s = arg;
	if (s->mode == PM_TLS_WAIT && s->close == PC_NONE) {
		/* write_cb runs from POP3_OUTPUT_LOW down: the handshake starts
		 * only once the plaintext reply is all sent. */
		if (!output_pending(s))
			tls_begin(s);
	} else if (s->retr != NULL && s->job == NULL && s->close == PC_NONE) {
		pop3_retr_continue(s);
		pop3_session_drive(s);
	} else if (s->pause & PP_OUTPUT) {
		pop3_session_resume(s, PP_OUTPUT);
		pop3_session_drive(s);
	}
	pop3_session_settle(s);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	struct pop3_session *s = arg;
	if (what & BEV_EVENT_CONNECTED) {
		if (s->mode == PM_TLS)
			tls_done(s);
	} else if (what & BEV_EVENT_TIMEOUT) {
		if (s->close != PC_NONE || (what & BEV_EVENT_WRITING) || s->mode == PM_TLS ||
		    s->mode == PM_TLS_WAIT || s->retr != NULL) {
			log_info("pop3: timeout %s from %s", (what & BEV_EVENT_WRITING) ? "writing" : "in TLS",
				 s->client);
			s->close = PC_NOW;
		} else {
			log_info("pop3: idle timeout from %s", s->client);
			pop3_session_err(s, "Disconnected for inactivity");
			pop3_session_close_after_flush(s);
		}
	} else if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
		if (s->mode == PM_TLS) {
			unsigned long e = bufferevent_get_openssl_error(s->bev);
			char err[256] = "connection closed";
			if (e != 0)
				ERR_error_string_n(e, err, sizeof(err));
			log_info("pop3: TLS handshake failed from %s: %s", s->client, err);
		}
		s->close = PC_NOW;
	}
	pop3_session_settle(s);
}

/* ---- shutdown ---------------------------------------------------------------------- */

void pop3_session_shutdown(struct pop3_session *s)
{
	s->shutdown = true;
	if (s->job != NULL)
		return;   /* closes from the job's completion */
	if (s->close == PC_NONE) {
		/* No "-ERR" in the middle of a RETR's multi-line reply. */
		if (s->mode == PM_TLS || s->mode == PM_TLS_WAIT || s->bev == NULL || s->retr != NULL) {
			s->close = PC_NOW;
		} else {
			pop3_session_err(s, "[SYS/TEMP] Server shutting down");
			pop3_session_close_after_flush(s);
		}
	}
	pop3_session_settle(s);
}
