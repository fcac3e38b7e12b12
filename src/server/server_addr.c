/*
 * server_addr.c - listen lists ("host:port,...") and listening sockets.
 *
 * Owns: parsing smtp.listen / admin.listen, formatting socket addresses for
 * logs, and opening listening sockets.  Hosts are numeric (a name would make
 * start-up depend on the resolver and could silently bind several
 * addresses): "0.0.0.0:25", "*:25" (= 0.0.0.0), "127.0.0.1:25", "[::]:25",
 * "[::1]:25", "[fe80::1%eth0]:25".
 *
 * Sockets: SO_REUSEADDR always (restart while old connections are in
 * TIME_WAIT); SO_REUSEPORT when one address is opened once per network
 * thread, so the kernel spreads connections and no lock is shared;
 * IPV6_V6ONLY for IPv6 so "[::]:25" and "0.0.0.0:25" can coexist.
 * SO_REUSEPORT has a trap: a second daemon started by the same user would
 * bind the same port without error and quietly take half the connections.
 * So each address is first probed with a bind WITHOUT SO_REUSEPORT, which
 * fails with EADDRINUSE when anything already listens there.
 *
 * Threads: main thread, at start-up.  No global state.
 */
#include "server_int.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void server_addr_format(const struct sockaddr *sa, socklen_t len, char *out, size_t outlen)
{
	char host[NI_MAXHOST], port[NI_MAXSERV];
	int rc = getnameinfo(sa, len, host, sizeof(host), port, sizeof(port),
			     NI_NUMERICHOST | NI_NUMERICSERV);
	if (rc != 0)
		snprintf(out, outlen, "(unknown address)");
	else if (sa->sa_family == AF_INET6)
		snprintf(out, outlen, "[%s]:%s", host, port);
	else
		snprintf(out, outlen, "%s:%s", host, port);
}

static bool addr_parse_port(const char *text, uint16_t *port)
{
	uint64_t v;
	if (*text == '\0' || strspn(text, "0123456789") != strlen(text) || strlen(text) > 5 ||
	    !str_parse_u64(text, &v) || v > 65535)
		return false;
	*port = (uint16_t)v;
	return true;
}

/* One entry, already trimmed.  Returns an error text or NULL. */
static char *addr_parse_one(const char *entry, struct server_addr *out)
{
	char host[NI_MAXHOST];
	const char *port_text;
	int family;
	if (entry[0] == '[') {
		const char *close = strchr(entry, ']');
		if (close == NULL || close[1] != ':')
			return xasprintf("'%s' is not [IPv6]:port", entry);
		size_t hl = (size_t)(close - entry - 1);
		if (hl == 0 || hl >= sizeof(host))
			return xasprintf("'%s' has no valid IPv6 address", entry);
		memcpy(host, entry + 1, hl);
		host[hl] = '\0';
		port_text = close + 2;
		family = AF_INET6;
	} else {
		const char *colon = strrchr(entry, ':');
		if (colon == NULL)
			return xasprintf("'%s' has no port (host:port)", entry);
		if (memchr(entry, ':', (size_t)(colon - entry)) != NULL)
			return xasprintf("'%s': an IPv6 address needs brackets, e.g. [::1]:25", entry);
		size_t hl = (size_t)(colon - entry);
		if (hl == 0 || hl >= sizeof(host))
			return xasprintf("'%s' has no host (use *:port for every IPv4 address)", entry);
		memcpy(host, entry, hl);
		host[hl] = '\0';
		if (strcmp(host, "*") == 0)
			snprintf(host, sizeof(host), "0.0.0.0");
		port_text = colon + 1;
		family = AF_INET;
	}
	uint16_t port;
	if (!addr_parse_port(port_text, &port))
		return xasprintf("'%s': '%s' is not a port number (0-65535)", entry, port_text);

	struct addrinfo hints = { 0 }, *res = NULL;
	hints.ai_family = family;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
	char portbuf[8];
	snprintf(portbuf, sizeof(portbuf), "%u", (unsigned)port);
	int rc = getaddrinfo(host, portbuf, &hints, &res);
	if (rc != 0 || res == NULL || res->ai_addrlen > sizeof(out->ss)) {
		if (res)
			freeaddrinfo(res);
		return xasprintf("'%s': '%s' is not a numeric %s address", entry, host,
				 family == AF_INET6 ? "IPv6" : "IPv4");
	}
	memset(out, 0, sizeof(*out));
	memcpy(&out->ss, res->ai_addr, res->ai_addrlen);
	out->len = (socklen_t)res->ai_addrlen;
	freeaddrinfo(res);
	server_addr_format((struct sockaddr *)&out->ss, out->len, out->text, sizeof(out->text));
	return NULL;
}

bool server_addr_parse_list(const char *list, const char *key, struct server_addr **addrs_r,
			    size_t *n_r, char **error_r)
{
	char *copy = xstrdup(list);
	struct server_addr *addrs = xcalloc(SERVER_MAX_ADDRS, sizeof(*addrs));
	size_t n = 0;
	char *err = NULL;
	char *trimmed = str_trim(copy);
	if (*trimmed != '\0') {
		char *p = trimmed;
		for (;;) {
			char *comma = strchr(p, ',');
			if (comma)
				*comma = '\0';
			char *entry = str_trim(p);
			if (*entry == '\0') {
				err = xstrdup("empty entry in the list");
			} else if (n == SERVER_MAX_ADDRS) {
				err = xasprintf("more than %d addresses", SERVER_MAX_ADDRS);
			} else {
				err = addr_parse_one(entry, &addrs[n]);
				for (size_t i = 0; err == NULL && i < n; i++) {
					if (strcmp(addrs[i].text, addrs[n].text) == 0 &&
					    strcmp(addrs[n].text + strlen(addrs[n].text) - 2, ":0") != 0)
						err = xasprintf("%s is listed twice", addrs[n].text);
				}
				n++;
			}
			if (err != NULL || comma == NULL)
				break;
			p = comma + 1;
		}
	}
	free(copy);
	if (err != NULL) {
		*error_r = xasprintf("%s: %s", key, err);
		free(err);
		free(addrs);
		return false;
	}
	*addrs_r = addrs;
	*n_r = n;
	return true;
}

static int addr_socket(const struct server_addr *a, bool reuseport)
{
	int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	int one = 1;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
	    (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) ||
	    (a->ss.ss_family == AF_INET6 &&
	     setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) != 0) ||
	    bind(fd, (const struct sockaddr *)&a->ss, a->len) != 0) {
		int saved = errno;
		close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

static uint16_t addr_port(const struct server_addr *a)
{
	if (a->ss.ss_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
	return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
}

/* Learns the port the kernel chose for fd and writes it into a. */
static bool addr_adopt_port(struct server_addr *a, int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
		return false;
	memcpy(&a->ss, &ss, len);
	a->len = len;
	server_addr_format((struct sockaddr *)&a->ss, a->len, a->text, sizeof(a->text));
	return true;
}

bool server_addr_listen(struct server_addr *a, size_t count, bool reuseport, int *fds, char **error_r)
{
	reuseport = reuseport || count > 1;
	if (reuseport && addr_port(a) != 0) {
		int probe = addr_socket(a, false);
		if (probe < 0) {
			*error_r = xasprintf("cannot listen on %s: %s", a->text, strerror(errno));
			return false;
		}
		close(probe);
	}
	for (size_t i = 0; i < count; i++)
		fds[i] = -1;
	for (size_t i = 0; i < count; i++) {
		fds[i] = addr_socket(a, reuseport);
		bool ok = fds[i] >= 0;
		if (ok && i == 0 && addr_port(a) == 0)
			ok = addr_adopt_port(a, fds[i]);
		if (ok)
			ok = listen(fds[i], SERVER_LISTEN_BACKLOG) == 0;
		if (!ok) {
			int saved = errno;
			*error_r = xasprintf("cannot listen on %s: %s", a->text, strerror(saved));
			for (size_t j = 0; j <= i; j++) {
				if (fds[j] >= 0)
					close(fds[j]);
				fds[j] = -1;
			}
			return false;
		}
	}
	return true;
}
