/*
 * cli_admin.c - the admin commands' HTTP client for the daemon's admin
 * endpoint (`strata status`, `strata guard`).
 *
 * One HTTP/1.0 exchange with the first address of admin.listen, which must
 * be loopback (a wildcard address is asked on its loopback counterpart).
 * The whole exchange has a deadline and the answer is capped at
 * CLI_ADMIN_MAX_RESPONSE bytes, so a wedged or hostile listener can neither
 * hang nor bloat a command.  Every request carries X-Strata-Guard: 1, which
 * the daemon requires on state-changing requests (a browser on the same host
 * cannot forge it).
 */
#include "cli.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CLI_ADMIN_MAX_RESPONSE (4u << 20)

/* ---- the admin endpoint's address ----------------------------------------------- */

/* The first entry of admin.listen as a loopback socket address. */
static bool admin_target(const char *list, struct sockaddr_storage *ss, socklen_t *len, char **error_r)
{
	size_t n = strcspn(list, ",");
	char entry[128];
	if (n == 0 || n >= sizeof(entry)) {
		*error_r = xasprintf("admin.listen '%s' has no usable first address", list);
		return false;
	}
	memcpy(entry, list, n);
	entry[n] = '\0';
	char *host = str_trim(entry), *port;
	if (*host == '[') {
		char *close = strchr(host, ']');
		if (close == NULL || close[1] != ':') {
			*error_r = xasprintf("admin.listen: cannot parse '%s'", host);
			return false;
		}
		*close = '\0';
		port = close + 2;
		host++;
	} else {
		port = strrchr(host, ':');
		if (port == NULL) {
			*error_r = xasprintf("admin.listen: '%s' has no port", host);
			return false;
		}
		*port++ = '\0';
	}
	uint64_t p;
	if (!str_parse_u64(port, &p) || p == 0 || p > 65535) {
		*error_r = xasprintf("admin.listen: bad port '%s'", port);
		return false;
	}
	if (*host == '\0' || strcmp(host, "*") == 0 || strcmp(host, "0.0.0.0") == 0 || str_ieq(host, "localhost"))
		host = "127.0.0.1";
	else if (strcmp(host, "::") == 0)
		host = "::1";
	memset(ss, 0, sizeof(*ss));
	struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, host, &v4->sin_addr) == 1 && (ntohl(v4->sin_addr.s_addr) >> 24) == 127) {
		v4->sin_family = AF_INET;
		v4->sin_port = htons((uint16_t)p);
		*len = sizeof(*v4);
		return true;
	}
	if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1 && IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr)) {
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons((uint16_t)p);
		*len = sizeof(*v6);
		return true;
	}
	*error_r = xasprintf("admin.listen %s is not a numeric loopback address; admin commands only ask loopback",
			     host);
	return false;
}

/* ---- one HTTP exchange ---------------------------------------------------------------- */

static bool wait_fd(int fd, short events, uint64_t deadline)
{
	for (;;) {
		uint64_t now = time_mono_ms();
		if (now >= deadline)
			return false;
		struct pollfd p = { fd, events, 0 };
		int r = poll(&p, 1, (int)(deadline - now));
		if (r > 0)
			return true;
		if (r == 0 || errno != EINTR)
			return false;
	}
}

static bool send_all(int fd, const char *data, size_t len, uint64_t deadline)
{
	size_t sent = 0;
	while (sent < len) {
		if (!wait_fd(fd, POLLOUT, deadline))
			return false;
		ssize_t w = send(fd, data + sent, len - sent, MSG_NOSIGNAL);
		if (w < 0 && errno != EINTR && errno != EAGAIN)
			return false;
		if (w > 0)
			sent += (size_t)w;
	}
	return true;
}

int cli_admin_http(const struct settings *s, const char *method, const char *path, const char *form,
		   unsigned timeout_ms, int *code_r, struct buf *body, char **error_r)
{
	struct sockaddr_storage ss;
	socklen_t len = 0;
	if (!admin_target(s->admin_listen, &ss, &len, error_r))
		return -1;
	uint64_t deadline = time_mono_ms() + timeout_ms;
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		*error_r = xasprintf("socket: %s", strerror(errno));
		return -1;
	}
	int result = 0;
	struct buf resp = BUF_INIT, req = BUF_INIT;
	if (connect(fd, (const struct sockaddr *)&ss, len) != 0) {
		int err = 0;
		socklen_t el = sizeof(err);
		if (errno != EINPROGRESS || !wait_fd(fd, POLLOUT, deadline) ||
		    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0 || err != 0)
			goto out;   /* refused or no answer in time: not running */
	}
	buf_printf(&req, "%s %s HTTP/1.0\r\nHost: localhost\r\nUser-Agent: strata-cli\r\nConnection: close\r\n"
			 "X-Strata-Guard: 1\r\n",
		   method, path);
	if (form != NULL)
		buf_printf(&req, "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %zu\r\n\r\n%s",
			   strlen(form), form);
	else
		buf_printf(&req, "\r\n");
	if (!send_all(fd, req.data, req.len, deadline))
		goto out;
	char chunk[16384];
	for (;;) {
		if (!wait_fd(fd, POLLIN, deadline)) {
			if (resp.len == 0)
				goto out;   /* accepted but never answered: not serving */
			*error_r = xasprintf("the daemon's answer did not complete within %u ms", timeout_ms);
			result = -1;
			goto out;
		}
		ssize_t r = recv(fd, chunk, sizeof(chunk), 0);
		if (r == 0)
			break;
		if (r < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			goto out;
		}
		if (resp.len + (size_t)r > CLI_ADMIN_MAX_RESPONSE) {
			*error_r = xasprintf("the daemon's answer exceeds %u bytes", CLI_ADMIN_MAX_RESPONSE);
			result = -1;
			goto out;
		}
		buf_append(&resp, chunk, (size_t)r);
	}
	buf_append(&resp, "", 1);   /* NUL: the text below is a C string */
	int code = 0;
	const char *sep = strstr(resp.data, "\r\n\r\n");
	if (sscanf(resp.data, "HTTP/1.%*d %d", &code) != 1 || code < 100 || code > 599 || sep == NULL) {
		*error_r = xstrdup("the daemon's answer is not HTTP");
		result = -1;
		goto out;
	}
	*code_r = code;
	buf_append(body, sep + 4, resp.len - 1 - (size_t)(sep + 4 - resp.data));
	result = 1;
out:
	close(fd);
	buf_free(&req);
	buf_free(&resp);
	return result;
}
