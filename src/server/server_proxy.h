/*
 * server_proxy.h - reading the PROXY protocol header of a connection from
 * a trusted load balancer, before the guard and the protocol see it.
 *
 * Contract: server_proxy_start takes over fd.  On the connection's event
 * loop, without blocking it, it reads exactly the header (peeking first,
 * so no byte of the client's own stream is consumed) within timeout_ms;
 * then calls done(arg, fd, client, client_len) with the client's address
 * from the header (or the connection's own for LOCAL/UNKNOWN), and done
 * owns fd.  On a malformed or oversized header, a close by the peer or the
 * deadline, fd is closed and done is not called.  Memory: one
 * GUARD_PROXY_BUF-byte record per connection while its header is read;
 * only addresses in guard.<class>.proxy_from get one.
 *
 * server_proxy_abort_all closes every connection of `list` still reading
 * (listener shutdown).  Loop thread only.
 */
#ifndef STRATA_SERVER_PROXY_H
#define STRATA_SERVER_PROXY_H

#include <stdint.h>
#include <sys/socket.h>

#include <event2/event.h>

struct server_proxy_conn;
struct server_proxy_list {
	struct server_proxy_conn *head;
};

typedef void server_proxy_done_fn(void *arg, int fd, const struct sockaddr *client, socklen_t client_len);

void server_proxy_start(struct server_proxy_list *list, struct event_base *base, int fd,
			const struct sockaddr *peer, socklen_t peer_len, uint64_t timeout_ms,
			server_proxy_done_fn *done, void *arg);
void server_proxy_abort_all(struct server_proxy_list *list);

#endif
