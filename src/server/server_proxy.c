/*
 * server_proxy.c - the pre-protocol reader for the PROXY protocol header.
 *
 * Contract: see server_proxy.h.  Each read first peeks at what the socket
 * holds, asks guard_proxy_wanted how much of it is header, and consumes
 * exactly that: the protocol that follows (a TLS ClientHello, say) finds
 * its first byte untouched.  Everything peeked is consumed unless it lies
 * past the header, so a level-triggered loop never spins on a partial
 * header.  The deadline covers the whole header.
 */
#include "server_proxy.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core.h"
#include "guard.h"
#include "metrics.h"

struct server_proxy_conn {
	struct server_proxy_list *list;
	struct server_proxy_conn *prev, *next;
	struct event *ev;
	int fd;
	uint64_t deadline_ms;
	struct sockaddr_storage peer;
	socklen_t peer_len;
	server_proxy_done_fn *done;
	void *arg;
	size_t have;
	uint8_t buf[GUARD_PROXY_BUF];
};

static void conn_unlink_free(struct server_proxy_conn *c, bool close_fd)
{
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		c->list->head = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	event_free(c->ev);
	if (close_fd)
		close(c->fd);
	free(c);
}

static void conn_fail(struct server_proxy_conn *c, const char *why)
{
	char text[64];
	struct guard_addr a;
	if (guard_addr_from_sockaddr((const struct sockaddr *)&c->peer, c->peer_len, &a))
		guard_addr_format(&a, text, sizeof(text));
	else
		snprintf(text, sizeof(text), "unknown");
	log_info("proxy: connection from %s closed: %s", text, why);
	metric_inc(M_GUARD_PROXY_REFUSED);
	conn_unlink_free(c, true);
}

/* Readable or the deadline: reads what belongs to the header; hands the
 * connection on when the header is complete, closes it when it fails. */
static void conn_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server_proxy_conn *c = arg;
	if (what & EV_TIMEOUT) {
		conn_fail(c, "no complete PROXY header in time");
		return;
	}
	ssize_t n = recv(fd, c->buf + c->have, sizeof(c->buf) - c->have, MSG_PEEK);
	if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
		n = -2;
	} else if (n <= 0) {
		conn_fail(c, n == 0 ? "closed before its PROXY header" : strerror(errno));
		return;
	}
	if (n > 0) {
		size_t take = guard_proxy_wanted(c->buf, c->have, (size_t)n);
		ssize_t got = take > 0 ? recv(fd, c->buf + c->have, take, 0) : 0;
		if (got != (ssize_t)take) {
			conn_fail(c, "read error");
			return;
		}
		c->have += take;
	}
	struct guard_proxy_header h;
	enum guard_proxy_result r = guard_proxy_parse(c->buf, c->have, &h);
	if (r == GUARD_PROXY_INVALID || (r == GUARD_PROXY_MORE && c->have == sizeof(c->buf))) {
		conn_fail(c, "malformed PROXY header");
		return;
	}
	if (r == GUARD_PROXY_MORE) {
		uint64_t now = time_mono_ms(), left = c->deadline_ms > now ? c->deadline_ms - now : 0;
		struct timeval tv = { (time_t)(left / 1000), (suseconds_t)((left % 1000) * 1000) };
		event_add(c->ev, &tv);
		return;
	}
	metric_inc(M_GUARD_PROXY_ACCEPTED);
	server_proxy_done_fn *done = c->done;
	void *done_arg = c->arg;
	int cfd = c->fd;
	struct sockaddr_storage client;
	socklen_t client_len;
	if (h.local) {
		client = c->peer;
		client_len = c->peer_len;
	} else {
		client = h.src;
		client_len = h.src_len;
	}
	conn_unlink_free(c, false);
	done(done_arg, cfd, (const struct sockaddr *)&client, client_len);
}

void server_proxy_start(struct server_proxy_list *list, struct event_base *base, int fd,
			const struct sockaddr *peer, socklen_t peer_len, uint64_t timeout_ms,
			server_proxy_done_fn *done, void *arg)
{
	struct server_proxy_conn *c = xcalloc(1, sizeof(*c));
	c->list = list;
	c->fd = fd;
	c->done = done;
	c->arg = arg;
	c->deadline_ms = time_mono_ms() + timeout_ms;
	if (peer_len > (socklen_t)sizeof(c->peer))
		peer_len = sizeof(c->peer);
	memcpy(&c->peer, peer, (size_t)peer_len);
	c->peer_len = peer_len;
	c->ev = event_new(base, fd, EV_READ, conn_read_cb, c);
	if (c->ev == NULL)
		panic("proxy: event_new failed");
	c->next = list->head;
	if (list->head != NULL)
		list->head->prev = c;
	list->head = c;
	struct timeval tv = { (time_t)(timeout_ms / 1000), (suseconds_t)((timeout_ms % 1000) * 1000) };
	event_add(c->ev, &tv);
}

void server_proxy_abort_all(struct server_proxy_list *list)
{
	/* Bounded by the connections reading a header; none is added meanwhile. */
	while (list->head != NULL)
		conn_unlink_free(list->head, true);
}
