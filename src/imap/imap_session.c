/*
 * imap_session.c - one IMAP connection: bufferevent I/O, the input pump,
 * responses and the error limit, timeouts, STARTTLS, store jobs, the IDLE
 * poll timer, closing and freeing.
 *
 * Contract: see imap_int.h for the lifetime rules.  Guarantees here:
 *  - Input is consumed only in imap_session_drive(), only while no pause bit is
 *    set, one reader event at a time, so memory per session is bounded by
 *    the reader's limits and the input watermark.
 *  - STARTTLS: after the tagged OK every octet already received is dropped
 *    (plaintext command injection, CVE-2011-0411 and its IMAP cousins),
 *    reading stops until the OK is on the wire, then the socket is handed
 *    to OpenSSL.
 *  - A response is never lost to a close: IC_FLUSH waits for the output to
 *    drain (bounded by a write timeout).
 *  - A session with a store job in flight is never freed before the job's
 *    completion; a vanished client only releases the connection.
 *
 * Threads: the worker's loop thread only.
 */
#include "imap_int.h"

#include <arpa/inet.h>
#include <errno.h>
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

static void format_peer(struct imap_session *s, const struct sockaddr *peer, socklen_t len)
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

static void set_timeouts(struct imap_session *s)
{
	if (s->bev == NULL)
		return;
	uint64_t ms = s->state == IS_NOTAUTH ? s->set->imap_timeout_login_ms : s->set->imap_timeout_idle_ms;
	if (s->close != IC_NONE || s->mode == IM_TLS || s->mode == IM_TLS_WAIT) {
		uint64_t wms = ms < CLOSE_WRITE_TIMEOUT_MS ? ms : CLOSE_WRITE_TIMEOUT_MS;
		struct timeval wr = ms_tv(wms);
		bufferevent_set_timeouts(s->bev, s->close != IC_NONE ? NULL : &wr, &wr);
		return;
	}
	struct timeval rd = ms_tv(ms);
	bufferevent_set_timeouts(s->bev, &rd, &rd);
}

static void configure_bev(struct imap_session *s)
{
	bufferevent_setcb(s->bev, read_cb, write_cb, event_cb, s);
	bufferevent_setwatermark(s->bev, EV_READ, 0, IMAP_INPUT_HIGH);
	/* The FETCH producer refills before the socket runs dry. */
	bufferevent_setwatermark(s->bev, EV_WRITE, IMAP_OUTPUT_LOW, 0);
	if (bufferevent_set_max_single_write(s->bev, IMAP_WRITE_MAX) != 0)
		log_warn("imap: cannot raise the write size for %s", s->client);
	set_timeouts(s);
	bufferevent_enable(s->bev, EV_WRITE);
	if (s->pause == 0)
		bufferevent_enable(s->bev, EV_READ);
	else
		bufferevent_disable(s->bev, EV_READ);
}

static void link_session(struct imap_worker *w, struct imap_session *s)
{
	s->next = w->sessions;
	if (w->sessions)
		w->sessions->prev = s;
	w->sessions = s;
	w->n_sessions++;
}

static void unlink_session(struct imap_session *s)
{
	struct imap_worker *w = s->w;
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

static const char *capability_text(const struct imap_session *s);

static struct bufferevent *tls_bev(struct imap_session *s, struct event_base *base, int fd)
{
	SSL *ssl = SSL_new(s->w->tls);
	if (ssl == NULL) {
		log_error("imap: SSL_new failed for %s", s->client);
		return NULL;
	}
	struct bufferevent *bev = bufferevent_openssl_socket_new(base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
								 BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		log_error("imap: cannot create a TLS bufferevent for %s", s->client);
		SSL_free(ssl);
		return NULL;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return bev;
}

void imap_session_start(struct imap_worker *w, int fd, const struct sockaddr *peer, socklen_t peer_len,
			bool implicit_tls, struct guard_ticket *ticket)
{
	struct imap_session *s = xcalloc(1, sizeof(*s));
	if (ticket != NULL) {
		s->ticket = *ticket;
		ticket->g = NULL;   /* moved: the caller's copy releases nothing */
	}
	s->w = w;
	s->set = w->s;
	s->implicit_tls = implicit_tls;
	format_peer(s, peer, peer_len);
	imap_reader_init(&s->rd, (size_t)s->set->imap_max_line_length, IMAP_MEMORY_LITERAL_MAX);
	if (implicit_tls) {
		s->bev = tls_bev(s, w->base, fd);
		s->mode = IM_TLS;
	} else {
		s->bev = bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE);
	}
	if (s->bev == NULL) {
		log_error("imap: cannot create a bufferevent for %s", s->client);
		close(fd);
		guard_release(&s->ticket);
		imap_reader_free(&s->rd);
		free(s);
		imap_worker_release_slot();
		return;
	}
	link_session(w, s);
	configure_bev(s);
	log_debug("imap: connect from %s%s", s->client, implicit_tls ? " (TLS)" : "");
	if (!implicit_tls)
		imap_session_untagged(s, "OK [CAPABILITY %s] Strata IMAP ready", capability_text(s));
}

static void release_connection(struct imap_session *s)
{
	guard_release(&s->ticket);   /* once: it clears the ticket */
	if (s->idle_ev != NULL) {
		event_free(s->idle_ev);
		s->idle_ev = NULL;
	}
	if (s->bev != NULL) {
		bufferevent_free(s->bev);
		s->bev = NULL;
	}
}

static void session_free(struct imap_session *s)
{
	release_connection(s);
	if (s->job != NULL)
		return;   /* orphan: the job's completion frees it */
	imap_append_abort(s);
	imap_fetch_free(&s->fetch);
	imap_view_free(&s->view);
	log_debug("imap: disconnect from %s", s->client);
	if (s->w != NULL)
		unlink_session(s);
	imap_worker_release_slot();
	imap_reader_free(&s->rd);
	free(s->user);
	free(s->sasl_user);
	free(s);
}

void imap_session_destroy(struct imap_session *s)
{
	if (s->job != NULL) {
		release_connection(s);
		unlink_session(s);
		s->close = IC_NOW;
		return;
	}
	session_free(s);
}

static bool output_pending(const struct imap_session *s)
{
	return s->bev != NULL && evbuffer_get_length(bufferevent_get_output(s->bev)) > 0;
}

void imap_session_settle(struct imap_session *s)
{
	if (s->close == IC_NONE || s->job != NULL)
		return;
	if (s->close == IC_FLUSH && output_pending(s))
		return;
	session_free(s);
}

/* ---- output ------------------------------------------------------------------ */

bool imap_session_output_full(const struct imap_session *s)
{
	return s->bev != NULL && evbuffer_get_length(bufferevent_get_output(s->bev)) > IMAP_OUTPUT_HIGH;
}

void imap_session_write(struct imap_session *s, const void *data, size_t len)
{
	if (s->bev == NULL || len == 0 || s->close == IC_NOW)
		return;
	if (evbuffer_add(bufferevent_get_output(s->bev), data, len) != 0)
		panic("imap: evbuffer_add failed");
}

ssize_t imap_session_write_pread(struct imap_session *s, int fd, uint64_t off, size_t len)
{
	if (s->bev == NULL || len == 0 || s->close == IC_NOW)
		return 0;
	struct evbuffer *out = bufferevent_get_output(s->bev);
	struct evbuffer_iovec v;
	if (evbuffer_reserve_space(out, (ev_ssize_t)len, &v, 1) < 1)
		panic("imap: evbuffer_reserve_space failed");
	ssize_t n;
	do
		n = pread(fd, v.iov_base, len, (off_t)off);
	while (n < 0 && errno == EINTR);
	int err = errno;
	v.iov_len = n > 0 ? (size_t)n : 0;
	if (evbuffer_commit_space(out, &v, 1) != 0)
		panic("imap: evbuffer_commit_space failed");
	errno = err;
	return n;
}

static void vline(struct imap_session *s, const char *prefix, const char *fmt, va_list ap)
{
	struct buf line = BUF_INIT;
	buf_append_str(&line, prefix);
	buf_vprintf(&line, fmt, ap);
	buf_append(&line, "\r\n", 2);
	imap_session_write(s, line.data, line.len);
	buf_free(&line);
}

void imap_session_untagged(struct imap_session *s, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vline(s, "* ", fmt, ap);
	va_end(ap);
}

void imap_session_tagged(struct imap_session *s, const char *result, const char *fmt, ...)
{
	char prefix[IMAP_TAG_MAX + 16];
	snprintf(prefix, sizeof(prefix), "%s %s ", s->tag[0] ? s->tag : "*", result);
	va_list ap;
	va_start(ap, fmt);
	vline(s, prefix, fmt, ap);
	va_end(ap);
}

void imap_session_bye(struct imap_session *s, const char *fmt, ...)
{
	if (s->close != IC_NONE)
		return;
	va_list ap;
	va_start(ap, fmt);
	vline(s, "* BYE ", fmt, ap);
	va_end(ap);
	s->close = IC_FLUSH;
	if (s->bev != NULL) {
		bufferevent_disable(s->bev, EV_READ);
		set_timeouts(s);
	}
}

void imap_session_bad(struct imap_session *s, const char *tag, const char *fmt, ...)
{
	char prefix[IMAP_TAG_MAX + 16];
	snprintf(prefix, sizeof(prefix), "%s BAD ", tag && tag[0] ? tag : "*");
	va_list ap;
	va_start(ap, fmt);
	vline(s, prefix, fmt, ap);
	va_end(ap);
	if (++s->errors >= s->set->imap_max_errors)
		imap_session_bye(s, "Too many invalid commands");
}

/* ---- capabilities ---------------------------------------------------------------- */

static const char *capability_text(const struct imap_session *s)
{
	bool tls_offer = s->w != NULL && s->w->tls != NULL && !s->tls;
	bool plain_ok = s->tls || s->loopback;
	if (s->state != IS_NOTAUTH)
		return "IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR IDLE UIDPLUS MOVE UNSELECT NAMESPACE SPECIAL-USE"
		       " ENABLE ID ESEARCH CONDSTORE QRESYNC QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE"
		       " LIST-EXTENDED LIST-STATUS CHILDREN BINARY MULTIAPPEND STATUS=SIZE"
		       " SORT SORT=DISPLAY THREAD=ORDEREDSUBJECT THREAD=REFERENCES SEARCHRES";
	if (plain_ok)
		return tls_offer ? "IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR STARTTLS AUTH=PLAIN AUTH=LOGIN ID ENABLE IDLE"
				 : "IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR AUTH=PLAIN AUTH=LOGIN ID ENABLE IDLE";
	return tls_offer ? "IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR STARTTLS LOGINDISABLED ID ENABLE IDLE"
			 : "IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR LOGINDISABLED ID ENABLE IDLE";
}

const char *imap_session_capabilities(const struct imap_session *s)
{
	return capability_text(s);
}

/* ---- pausing --------------------------------------------------------------------- */

void imap_session_pause(struct imap_session *s, unsigned bit)
{
	s->pause |= bit;
	if (s->bev != NULL)
		bufferevent_disable(s->bev, EV_READ);
}

void imap_session_resume(struct imap_session *s, unsigned bit)
{
	s->pause &= ~bit;
	if (s->pause == 0 && s->bev != NULL && s->close == IC_NONE && s->mode != IM_TLS_WAIT)
		bufferevent_enable(s->bev, EV_READ);
}

/* ---- jobs ----------------------------------------------------------------------- */

void imap_session_submit(struct imap_session *s, struct imap_job *j)
{
	if (s->job != NULL)
		panic("imap: two jobs for one session");
	j->s = s;
	j->base = s->w->base;
	s->job = j;
	imap_session_pause(s, IP_JOB);
	imap_pool_submit(s->w->pool, j);
}

void imap_session_job_end(struct imap_session *s)
{
	if (s->shutdown && s->close == IC_NONE) {
		imap_append_abort(s);
		if (s->fetch != NULL)
			s->close = IC_NOW;   /* not in the middle of a FETCH response */
		else
			imap_session_bye(s, "Server shutting down");
	} else {
		imap_session_drive(s);
	}
	imap_session_settle(s);
}

bool imap_session_job_finished(struct imap_session *s)
{
	s->job = NULL;
	if (s->bev == NULL || s->w == NULL) {
		/* The client went while the job ran. */
		s->close = IC_NOW;
		session_free(s);
		return false;
	}
	imap_session_resume(s, IP_JOB);
	return true;
}

/* ---- IDLE ------------------------------------------------------------------------ */

static void idle_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct imap_session *s = arg;
	if (s->mode == IM_IDLE && s->state == IS_SELECTED && s->close == IC_NONE)
		imap_mailbox_sync(s, true);
	imap_session_settle(s);
}

void imap_session_idle_wake(struct imap_session *s)
{
	idle_cb(-1, 0, s);
}

void imap_session_idle_start(struct imap_session *s)
{
	s->mode = IM_IDLE;
	if (s->state != IS_SELECTED || s->bev == NULL)
		return;
	if (s->idle_ev == NULL) {
		s->idle_ev = event_new(s->w->base, -1, EV_PERSIST, idle_cb, s);
		if (s->idle_ev == NULL)
			panic("imap: event_new failed");
	}
	struct timeval tv = ms_tv(IMAP_IDLE_POLL_MS);
	evtimer_add(s->idle_ev, &tv);
}

void imap_session_idle_stop(struct imap_session *s)
{
	s->mode = IM_CMD;
	if (s->idle_ev != NULL) {
		/* Freed rather than kept: an idle session costs no timer. */
		event_free(s->idle_ev);
		s->idle_ev = NULL;
	}
}

/* ---- the input pump ----------------------------------------------------------------- */

/* The reply to a command whose literal was refused: "tag NO|BAD ...". */
static void tagged_text(struct imap_session *s, const char *tag, const char *text)
{
	if (text == NULL || strncmp(text, "BAD", 3) == 0) {
		imap_session_bad(s, tag, "%s", text ? text + 4 : "Literal refused");
		return;
	}
	struct buf line = BUF_INIT;
	buf_printf(&line, "%s %s\r\n", tag, text);
	imap_session_write(s, line.data, line.len);
	buf_free(&line);
}

/* IMAP_RD_LITERAL: choose memory, stream (APPEND) or refusal. */
static void on_literal(struct imap_session *s)
{
	struct imap_reader *r = &s->rd;
	const char *refuse = NULL;
	enum imap_lit_mode mode = IMAP_LIT_MEMORY;
	/* The message literal of APPEND: "tag APPEND mailbox ... {n}". */
	struct imap_cmd pre;
	char *err = NULL;
	bool is_append = false;
	size_t n_streamed = 0;          /* message literals so far, this one included */
	const char *sp = memchr(r->buf.data, ' ', r->len);
	/* Parse the text so far only for APPEND: cheap test first.  Every
	 * literal after the mailbox name is a message (MULTIAPPEND). */
	if (sp != NULL && (size_t)(r->buf.data + r->len - sp) > 7 && strncasecmp(sp + 1, "APPEND ", 7) == 0 &&
	    imap_parse_command(r->buf.data, r->len, true, &pre, &err) == ST_OK) {
		is_append = strcmp(pre.name, "APPEND") == 0 && !pre.uid && pre.n_args >= 2;
		for (size_t i = 1; i < pre.n_args; i++)
			n_streamed += pre.args[i].type == IMAP_ARG_LITERAL && pre.args[i].str == NULL;
		imap_cmd_free(&pre);
	}
	free(err);
	if (is_append) {
		if (imap_append_literal(s, r->lit_size, n_streamed <= 1, &refuse))
			mode = IMAP_LIT_STREAM;
		else
			mode = IMAP_LIT_REFUSE;
	} else if (r->lit_size > IMAP_MEMORY_LITERAL_MAX || r->literal_bytes + r->lit_size > IMAP_MEMORY_LITERAL_MAX) {
		mode = IMAP_LIT_REFUSE;
		refuse = "BAD [TOOBIG] Literal too large";
	}
	if (mode == IMAP_LIT_REFUSE && !r->lit_sync && r->lit_size > IMAP_DISCARD_MAX) {
		imap_reader_take_tag(r);
		imap_session_bad(s, r->tag, "Literal too large");
		imap_session_bye(s, "Literal too large to skip");
		return;
	}
	s->refuse_text = refuse;
	bool sync = r->lit_sync;
	if (imap_reader_literal(r, mode)) {
		/* Synchronising literal refused: the command ends here, with
		 * whatever it streamed before (MULTIAPPEND is all or nothing). */
		imap_append_abort(s);
		tagged_text(s, r->tag, refuse);
		return;
	}
	if (sync && mode != IMAP_LIT_REFUSE)
		imap_session_write(s, "+ Ready for literal data\r\n", 26);
}

static void on_command(struct imap_session *s)
{
	struct imap_reader *r = &s->rd;
	if (s->mode == IM_IDLE) {
		bool done = r->len == 4 && strncasecmp(r->buf.data, "DONE", 4) == 0;
		imap_reader_reset(r);
		imap_session_idle_stop(s);
		if (s->state == IS_SELECTED)
			imap_mailbox_sync(s, true);
		if (done)
			imap_session_tagged(s, "OK", "IDLE terminated");
		else
			imap_session_tagged(s, "BAD", "Expected DONE");
		s->tag[0] = '\0';
		return;
	}
	if (s->mode == IM_SASL) {
		struct buf line = BUF_INIT;
		buf_append(&line, r->buf.data, r->len);
		imap_reader_reset(r);
		s->mode = IM_CMD;
		imap_command_sasl_response(s, line.data, line.len);
		buf_free(&line);
		return;
	}
	struct imap_cmd cmd;
	char *err = NULL;
	enum status st = imap_parse_command(r->buf.data, r->len, r->streamed, &cmd, &err);
	imap_reader_reset(r);
	if (st != ST_OK && s->state == IS_NOTAUTH && strcmp(cmd.tag, "PROXY") == 0) {
		/* "PROXY TCP4 ...": a PROXY header from an address not in
		 * guard.user.proxy_from, a protocol error (docs/GUARD.md). */
		free(err);
		imap_session_bye(s, "PROXY protocol not accepted from your address");
		return;
	}
	if (st != ST_OK) {
		imap_append_abort(s);
		imap_session_bad(s, cmd.tag, "%s", err);
		free(err);
		return;
	}
	snprintf(s->tag, sizeof(s->tag), "%s", cmd.tag);
	imap_command_execute(s, &cmd);
	imap_cmd_free(&cmd);
}

static void on_event(struct imap_session *s, enum imap_rd_event ev, const char *d, size_t dl)
{
	switch (ev) {
	case IMAP_RD_NEED_MORE:
		break;
	case IMAP_RD_COMMAND:
		on_command(s);
		break;
	case IMAP_RD_LITERAL:
		on_literal(s);
		break;
	case IMAP_RD_STREAM:
		imap_append_data(s, d, dl);
		break;
	case IMAP_RD_TOO_LONG:
		imap_append_abort(s);
		imap_session_bad(s, s->rd.tag, "Command line too long");
		break;
	case IMAP_RD_REFUSED:
		imap_append_abort(s);
		tagged_text(s, s->rd.tag, s->refuse_text);
		break;
	}
}

void imap_session_drive(struct imap_session *s)
{
	/* Bounded: each pass consumes input or produces an event that
	 * changes state; it stops when input runs out or a pause is set. */
	while (s->close == IC_NONE && s->pause == 0 && s->bev != NULL &&
	       (s->mode == IM_CMD || s->mode == IM_IDLE || s->mode == IM_SASL)) {
		if (imap_session_output_full(s)) {
			/* The client is not reading our responses: stop reading
			 * its commands until the output drains (write_cb). */
			imap_session_pause(s, IP_OUTPUT);
			return;
		}
		struct evbuffer *in = bufferevent_get_input(s->bev);
		if (evbuffer_get_length(in) == 0)
			return;
		struct evbuffer_iovec v;
		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
			return;
		enum imap_rd_event ev;
		const char *d = NULL;
		size_t dl = 0;
		size_t used = imap_reader_feed(&s->rd, v.iov_base, v.iov_len, &ev, &d, &dl);
		/* Stream data points into the buffer: use it before draining. */
		on_event(s, ev, d, dl);
		if (s->bev == NULL)
			return;
		if (s->mode == IM_TLS_WAIT)
			return;   /* STARTTLS already dropped the input */
		evbuffer_drain(in, used);
		if (used == 0 && ev == IMAP_RD_NEED_MORE)
			return;
	}
}

/* ---- STARTTLS -------------------------------------------------------------------- */

void imap_session_starttls(struct imap_session *s)
{
	s->mode = IM_TLS_WAIT;
	bufferevent_disable(s->bev, EV_READ);
	struct evbuffer *in = bufferevent_get_input(s->bev);
	evbuffer_drain(in, evbuffer_get_length(in));
	imap_reader_reset(&s->rd);
	set_timeouts(s);
}

static void tls_begin(struct imap_session *s)
{
	struct event_base *base = bufferevent_get_base(s->bev);
	int fd = bufferevent_getfd(s->bev);
	bufferevent_setfd(s->bev, -1);
	bufferevent_free(s->bev);
	s->bev = tls_bev(s, base, fd);
	if (s->bev == NULL) {
		close(fd);
		s->close = IC_NOW;
		return;
	}
	s->mode = IM_TLS;
	configure_bev(s);
	bufferevent_enable(s->bev, EV_READ);
}

static void tls_done(struct imap_session *s)
{
	s->tls = true;
	s->mode = IM_CMD;
	set_timeouts(s);
	if (s->implicit_tls)
		imap_session_untagged(s, "OK [CAPABILITY %s] Strata IMAP ready", capability_text(s));
	if (s->pause == 0)
		bufferevent_enable(s->bev, EV_READ);
	imap_session_drive(s);
}

/* ---- libevent callbacks ------------------------------------------------------------ */

static void read_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	struct imap_session *s = arg;
	imap_session_drive(s);
	imap_session_settle(s);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	struct imap_session *s = arg;
	if (s->mode == IM_TLS_WAIT && s->close == IC_NONE) {
		/* write_cb runs from IMAP_OUTPUT_LOW down: the handshake starts
		 * only once the plaintext reply is all sent. */
		if (!output_pending(s))
			tls_begin(s);
	} else if (s->fetch != NULL && s->job == NULL && s->close == IC_NONE) {
		imap_fetch_continue(s);
		imap_session_drive(s);
	} else if (s->pause & IP_OUTPUT) {
		imap_session_resume(s, IP_OUTPUT);
		imap_session_drive(s);
	}
	imap_session_settle(s);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	struct imap_session *s = arg;
	if (what & BEV_EVENT_CONNECTED) {
		if (s->mode == IM_TLS)
			tls_done(s);
	} else if (what & BEV_EVENT_TIMEOUT) {
		if (s->close != IC_NONE || (what & BEV_EVENT_WRITING) || s->mode == IM_TLS ||
		    s->mode == IM_TLS_WAIT) {
			log_info("imap: timeout %s from %s", (what & BEV_EVENT_WRITING) ? "writing" : "in TLS",
				 s->client);
			s->close = IC_NOW;
		} else {
			log_info("imap: idle timeout from %s", s->client);
			imap_append_abort(s);
			imap_session_bye(s, "Autologout; idle for too long");
		}
	} else if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
		if (s->mode == IM_TLS) {
			unsigned long e = bufferevent_get_openssl_error(s->bev);
			char err[256] = "connection closed";
			if (e != 0)
				ERR_error_string_n(e, err, sizeof(err));
			log_info("imap: TLS handshake failed from %s: %s", s->client, err);
		}
		s->close = IC_NOW;
	}
	imap_session_settle(s);
}

/* ---- shutdown ---------------------------------------------------------------------- */

void imap_session_shutdown(struct imap_session *s)
{
	s->shutdown = true;
	if (s->job != NULL)
		return;   /* closes from the job's completion */
	if (s->close == IC_NONE) {
		/* A BYE cannot be put in the middle of a FETCH response. */
		if (s->mode == IM_TLS || s->mode == IM_TLS_WAIT || s->bev == NULL || s->fetch != NULL) {
			s->close = IC_NOW;
		} else {
			imap_append_abort(s);
			imap_session_bye(s, "Server shutting down");
		}
	}
	imap_session_settle(s);
}
