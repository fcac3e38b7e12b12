/*
 * server_test.c - listen lists and listening sockets (src/server,
 * server_addr.c).
 *
 * The rest of the daemon (threads, privilege drop, signals, admin HTTP) is
 * exercised against the real running server by the integration suite.
 * Sockets here are only ever bound on loopback, to ports the kernel picks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "server_int.h"

/* ---- parsing -------------------------------------------------------------------- */

struct parse_case {
	const char *label;
	const char *input;
	const char *want;   /* the parsed entries' text joined with '|', or NULL for an error */
	const char *error;  /* substring of the error when want is NULL */
};

static const struct parse_case parse_cases[] = {
	{ "ipv4", "127.0.0.1:25", "127.0.0.1:25", NULL },
	{ "wildcard star", "*:2525", "0.0.0.0:2525", NULL },
	{ "ipv4 any", "0.0.0.0:25", "0.0.0.0:25", NULL },
	{ "ipv6 loopback", "[::1]:587", "[::1]:587", NULL },
	{ "ipv6 any", "[::]:25", "[::]:25", NULL },
	{ "port zero (kernel picks)", "127.0.0.1:0", "127.0.0.1:0", NULL },
	{ "highest port", "127.0.0.1:65535", "127.0.0.1:65535", NULL },
	{ "list with spaces", " 127.0.0.1:25 , [::1]:26 ", "127.0.0.1:25|[::1]:26", NULL },
	{ "empty list", "", "", NULL },
	{ "blank list", "   ", "", NULL },
	{ "host name", "localhost:25", NULL, "is not a numeric IPv4 address" },
	{ "no port", "127.0.0.1", NULL, "has no port" },
	{ "bare ipv6", "::1:25", NULL, "needs brackets" },
	{ "port too big", "127.0.0.1:65536", NULL, "is not a port number" },
	{ "negative port", "127.0.0.1:-1", NULL, "is not a port number" },
	{ "port with letters", "127.0.0.1:2x", NULL, "is not a port number" },
	{ "empty port", "127.0.0.1:", NULL, "is not a port number" },
	{ "ipv6 without colon", "[::1]25", NULL, "is not [IPv6]:port" },
	{ "ipv6 not closed", "[::1:25", NULL, "is not [IPv6]:port" },
	{ "ipv4 in brackets", "[127.0.0.1]:25", NULL, "is not a numeric IPv6 address" },
	{ "empty host", ":25", NULL, "has no host" },
	{ "empty entry", "127.0.0.1:25,,127.0.0.1:26", NULL, "empty entry" },
	{ "trailing comma", "127.0.0.1:25,", NULL, "empty entry" },
	{ "duplicate", "127.0.0.1:25, 127.0.0.1:25", NULL, "127.0.0.1:25 is listed twice" },
	{ "bad octet", "127.0.0.256:25", NULL, "is not a numeric IPv4 address" },
};

static void test_parse(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(parse_cases) / sizeof(parse_cases[0]); i++) {
		const struct parse_case *c = &parse_cases[i];
		struct server_addr *addrs = NULL;
		size_t n = 99;
		char *err = NULL;
		bool ok = server_addr_parse_list(c->input, "smtp.listen", &addrs, &n, &err);
		if (c->want == NULL) {
			if (ok)
				fail_msg("%s: '%s' parsed, expected an error containing '%s'", c->label,
					 c->input, c->error);
			if (strstr(err, c->error) == NULL || strncmp(err, "smtp.listen: ", 13) != 0)
				fail_msg("%s: '%s'\n  want error containing: smtp.listen: ...%s\n  got: %s",
					 c->label, c->input, c->error, err);
			free(err);
			continue;
		}
		if (!ok)
			fail_msg("%s: '%s' failed: %s", c->label, c->input, err);
		struct buf got = BUF_INIT;
		buf_append_str(&got, "");
		for (size_t j = 0; j < n; j++)
			buf_printf(&got, "%s%s", j ? "|" : "", addrs[j].text);
		if (strcmp(got.data, c->want) != 0)
			fail_msg("%s: '%s'\n  want: %s\n  got:  %s", c->label, c->input, c->want, got.data);
		buf_free(&got);
		free(addrs);
	}
}

static void test_parse_too_many(void **state)
{
	(void)state;
	struct buf list = BUF_INIT;
	for (int i = 0; i <= SERVER_MAX_ADDRS; i++)
		buf_printf(&list, "%s127.0.0.1:%d", i ? "," : "", 1000 + i);
	struct server_addr *addrs = NULL;
	size_t n = 0;
	char *err = NULL;
	assert_false(server_addr_parse_list(list.data, "smtp.listen", &addrs, &n, &err));
	if (strstr(err, "more than 32 addresses") == NULL)
		fail_msg("want 'more than 32 addresses', got: %s", err);
	free(err);
	/* exactly the maximum is fine */
	buf_truncate(&list, (size_t)(strrchr(list.data, ',') - list.data));
	assert_true(server_addr_parse_list(list.data, "smtp.listen", &addrs, &n, &err));
	assert_int_equal(n, SERVER_MAX_ADDRS);
	free(addrs);
	buf_free(&list);
}

/* ---- listening ------------------------------------------------------------------ */

static struct server_addr parse_one(const char *text)
{
	struct server_addr *addrs = NULL;
	size_t n = 0;
	char *err = NULL;
	if (!server_addr_parse_list(text, "test", &addrs, &n, &err))
		fail_msg("parse '%s': %s", text, err);
	assert_int_equal(n, 1);
	struct server_addr a = addrs[0];
	free(addrs);
	return a;
}

static int int_opt(int fd, int level, int opt)
{
	int v = -1;
	socklen_t len = sizeof(v);
	assert_int_equal(getsockopt(fd, level, opt, &v, &len), 0);
	return v;
}

static uint16_t bound_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&ss, &len), 0);
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void connect_ok(const struct server_addr *a)
{
	int c = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(c >= 0);
	if (connect(c, (const struct sockaddr *)&a->ss, a->len) != 0)
		fail_msg("connect to %s: %s", a->text, strerror(errno));
	close(c);
}

/* One address opened once per thread: every socket shares the port the
 * kernel picked, with SO_REUSEPORT, non-blocking and listening. */
static void test_listen_group(void **state)
{
	(void)state;
	struct server_addr a = parse_one("127.0.0.1:0");
	int fds[3];
	char *err = NULL;
	if (!server_addr_listen(&a, 3, true, fds, &err))
		fail_msg("listen: %s", err);
	uint16_t port = bound_port(fds[0]);
	assert_true(port != 0);
	char want[64];
	snprintf(want, sizeof(want), "127.0.0.1:%u", (unsigned)port);
	assert_string_equal(a.text, want);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(bound_port(fds[i]), port);
		assert_int_equal(int_opt(fds[i], SOL_SOCKET, SO_REUSEPORT), 1);
		assert_int_equal(int_opt(fds[i], SOL_SOCKET, SO_REUSEADDR), 1);
		assert_int_equal(int_opt(fds[i], SOL_SOCKET, SO_ACCEPTCONN), 1);
		assert_true(fcntl(fds[i], F_GETFL) & O_NONBLOCK);
		assert_true(fcntl(fds[i], F_GETFD) & FD_CLOEXEC);
	}
	connect_ok(&a);

	/* A second daemon on the same port is refused, although SO_REUSEPORT
	 * alone would have let it share the port. */
	struct server_addr b = a;
	int more[2];
	assert_false(server_addr_listen(&b, 2, true, more, &err));
	char want_err[128];
	snprintf(want_err, sizeof(want_err), "cannot listen on 127.0.0.1:%u: %s", (unsigned)port,
		 strerror(EADDRINUSE));
	assert_string_equal(err, want_err);
	free(err);
	err = NULL;
	/* the same for a single socket without SO_REUSEPORT (admin endpoint) */
	assert_false(server_addr_listen(&b, 1, false, more, &err));
	assert_string_equal(err, want_err);
	free(err);
	err = NULL;

	for (int i = 0; i < 3; i++)
		close(fds[i]);
	/* once closed, the port is free again at once */
	if (!server_addr_listen(&b, 2, true, more, &err))
		fail_msg("listen again: %s", err);
	close(more[0]);
	close(more[1]);
}

static void test_listen_ipv6(void **state)
{
	(void)state;
	int probe = socket(AF_INET6, SOCK_STREAM, 0);
	struct sockaddr_in6 lo = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	bool have_v6 = probe >= 0 && bind(probe, (struct sockaddr *)&lo, sizeof(lo)) == 0;
	if (probe >= 0)
		close(probe);
	if (!have_v6)
		skip();
	struct server_addr a = parse_one("[::1]:0");
	int fd;
	char *err = NULL;
	if (!server_addr_listen(&a, 1, false, &fd, &err))
		fail_msg("listen: %s", err);
	assert_int_equal(int_opt(fd, IPPROTO_IPV6, IPV6_V6ONLY), 1);
	assert_int_equal(int_opt(fd, SOL_SOCKET, SO_REUSEPORT), 0);
	char want[64];
	snprintf(want, sizeof(want), "[::1]:%u", (unsigned)bound_port(fd));
	assert_string_equal(a.text, want);
	connect_ok(&a);
	close(fd);
}

/* ---- the system call filter (in a child: it is for good) ---------------- */

static void *thread_noop(void *arg)
{
	return arg;
}

/* Exit codes of the child: 0 all as expected, else the failing step. */
static int filtered_child(void)
{
	char *err = NULL;
	if (!server_seccomp_apply(&err)) {
		fprintf(stderr, "apply: %s\n", err);
		return 10;
	}
	/* What the daemon does keeps working. */
	char path[] = "/tmp/strata-seccomp-XXXXXX";
	int fd = mkstemp(path);
	if (fd < 0 || write(fd, "x", 1) != 1 || fsync(fd) != 0 || close(fd) != 0 || unlink(path) != 0)
		return 11;
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
		return 12;
	close(sv[0]);
	close(sv[1]);
	pthread_t t;
	if (pthread_create(&t, NULL, thread_noop, NULL) != 0 || pthread_join(t, NULL) != 0)
		return 13;
	/* What a compromised parser would want is refused with EPERM. */
	char *const argv[] = { "false", NULL };
	errno = 0;
	if (execv("/bin/false", argv) != -1 || errno != EPERM)   /* run, it would exit 1 */
		return 20;
	errno = 0;
	if (unshare(CLONE_NEWUSER) != -1 || errno != EPERM)
		return 21;
	errno = 0;
	if (mount("none", "/tmp", "tmpfs", 0, NULL) != -1 || errno != EPERM)
		return 22;
#if !defined(__SANITIZE_ADDRESS__)
	errno = 0;
	if (syscall(SYS_ptrace, 0 /* PTRACE_TRACEME */, 0, 0, 0) != -1 || errno != EPERM)
		return 23;
#endif
	/* Every listed call: EPERM (arguments are harmless if one slipped). */
	const int *calls;
	size_t n = server_seccomp_denied(&calls);
	for (size_t i = 0; i < n; i++) {
		if (calls[i] == SYS_reboot || calls[i] == SYS_vhangup)
			continue;   /* not even probed: harmless only when refused */
		errno = 0;
		if (syscall(calls[i], -1, 0, 0, 0, 0, 0) != -1 || errno != EPERM) {
			fprintf(stderr, "call %d: errno %d\n", calls[i], errno);
			return 30;
		}
	}
	return 0;
}

static void test_seccomp_filter(void **state)
{
	(void)state;
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(filtered_child());
	int status = 0;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	if (!WIFEXITED(status))
		fail_msg("filtered child died of signal %d", WTERMSIG(status));
	assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_format(void **state)
{
	(void)state;
	struct sockaddr_in v4 = { .sin_family = AF_INET, .sin_port = htons(25) };
	inet_pton(AF_INET, "192.0.2.7", &v4.sin_addr);
	struct sockaddr_in6 v6 = { .sin6_family = AF_INET6, .sin6_port = htons(587) };
	inet_pton(AF_INET6, "2001:db8::1", &v6.sin6_addr);
	char out[SERVER_ADDR_TEXT];
	server_addr_format((struct sockaddr *)&v4, sizeof(v4), out, sizeof(out));
	assert_string_equal(out, "192.0.2.7:25");
	server_addr_format((struct sockaddr *)&v6, sizeof(v6), out, sizeof(out));
	assert_string_equal(out, "[2001:db8::1]:587");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse),
		cmocka_unit_test(test_parse_too_many),
		cmocka_unit_test(test_listen_group),
		cmocka_unit_test(test_listen_ipv6),
		cmocka_unit_test(test_format),
		cmocka_unit_test(test_seccomp_filter),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
