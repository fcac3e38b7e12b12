/*
 * relay_test.c - the relay's parts without a daemon: relay.transport
 * parsing, routing of IP literals, the SMTP client against scripted
 * servers (well-behaved and hostile), and the DSN text.
 *
 * The scripted server is a thread on 127.0.0.1 that sends a greeting and
 * then, per step, reads one command line (or, for a DATA_BODY step, the
 * message up to the final dot), records it, and answers with the step's
 * reply (NULL: hang up).  Every case checks what the client sent and the
 * result of every recipient.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "core.h"
#include "relay_int.h"

#define DATA_BODY "<data>"
#define MAX_STEPS 16

/* ---- relay.transport ------------------------------------------------------------ */

static void test_transport_parse(void **state)
{
	(void)state;
	static const struct {
		const char *label, *value;
		bool ok;
		size_t n;
		const char *domain0, *host0;
		uint16_t port0;
	} cases[] = {
		{ "empty", "", true, 0, NULL, NULL, 0 },
		{ "smarthost", "*=127.0.0.1:2525", true, 1, "*", "127.0.0.1", 2525 },
		{ "default port, case folded", "Example.NET=MX.Example.net", true, 1, "example.net", "mx.example.net", 25 },
		{ "v6 literal", "a.example=[::1]:26, *=h.example", true, 2, "a.example", "::1", 26 },
		{ "spaces and empty items", " a.example = h:1 ,, ", true, 1, "a.example", "h", 1 },
		{ "no equals", "a.example", false, 0, NULL, NULL, 0 },
		{ "no host", "a.example=", false, 0, NULL, NULL, 0 },
		{ "port 0", "a.example=h:0", false, 0, NULL, NULL, 0 },
		{ "port too big", "a.example=h:65536", false, 0, NULL, NULL, 0 },
		{ "bare v6", "a.example=::1:25", false, 0, NULL, NULL, 0 },
		{ "bad host byte", "a.example=h/x:25", false, 0, NULL, NULL, 0 },
		{ "bad domain", "a b=h", false, 0, NULL, NULL, 0 },
		{ "duplicate", "a.example=h,A.example=g", false, 0, NULL, NULL, 0 },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct relay_transport t;
		char *err = NULL;
		bool ok = relay_transport_parse(cases[i].value, &t, &err);
		if (ok != cases[i].ok)
			fail_msg("%s: \"%s\" parsed %s, want %s (%s)", cases[i].label, cases[i].value,
				 ok ? "ok" : "bad", cases[i].ok ? "ok" : "bad", err ? err : "");
		if (!ok) {
			assert_non_null(err);
			assert_int_equal(t.n, 0);
			free(err);
			continue;
		}
		if (t.n != cases[i].n)
			fail_msg("%s: %zu entries, want %zu", cases[i].label, t.n, cases[i].n);
		if (t.n > 0) {
			assert_string_equal(t.e[0].domain, cases[i].domain0);
			assert_string_equal(t.e[0].host, cases[i].host0);
			assert_int_equal(t.e[0].port, cases[i].port0);
		}
		relay_transport_free(&t);
	}
}

/* ---- a scripted SMTP server ------------------------------------------------------ */

struct step {
	const char *expect;     /* prefix of the command line, or DATA_BODY */
	const char *reply;      /* sent as is (CRLFs included); NULL: hang up */
};

struct server {
	int lfd;
	uint16_t port;
	const char *greeting;
	struct step steps[MAX_STEPS];
	pthread_t t;
	struct buf got;         /* every line and body received, in order */
	char mismatch[512];     /* a step whose command did not match */
};

static bool read_line(FILE *f, char *out, size_t len)
{
	if (fgets(out, (int)len, f) == NULL)
		return false;
	return true;
}

static void *server_main(void *arg)
{
	struct server *sv = arg;
	int fd = accept(sv->lfd, NULL, NULL);
	if (fd < 0)
		return NULL;
	FILE *f = fdopen(dup(fd), "r");
	if (write(fd, sv->greeting, strlen(sv->greeting)) < 0)
		goto out;
	for (size_t i = 0; i < MAX_STEPS && sv->steps[i].expect != NULL; i++) {
		char line[4096];
		if (strcmp(sv->steps[i].expect, DATA_BODY) == 0) {
			for (;;) {
				if (!read_line(f, line, sizeof(line)))
					goto out;
				buf_append_str(&sv->got, line);
				if (strcmp(line, ".\r\n") == 0)
					break;
			}
		} else {
			if (!read_line(f, line, sizeof(line)))
				goto out;
			buf_append_str(&sv->got, line);
			if (strncmp(line, sv->steps[i].expect, strlen(sv->steps[i].expect)) != 0 &&
			    sv->mismatch[0] == '\0')
				snprintf(sv->mismatch, sizeof(sv->mismatch), "step %zu: got \"%.200s\", want \"%.200s...\"", i,
					 line, sv->steps[i].expect);
		}
		if (sv->steps[i].reply == NULL)
			goto out;
		if (write(fd, sv->steps[i].reply, strlen(sv->steps[i].reply)) < 0)
			goto out;
	}
	/* drain until the client closes */
	char sink[512];
	while (read_line(f, sink, sizeof(sink)))
		buf_append_str(&sv->got, sink);
out:
	fclose(f);
	close(fd);
	return NULL;
}

static void server_start(struct server *sv)
{
	sv->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(sv->lfd >= 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	assert_int_equal(bind(sv->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(sv->lfd, 4), 0);
	socklen_t al = sizeof(a);
	assert_int_equal(getsockname(sv->lfd, (struct sockaddr *)&a, &al), 0);
	sv->port = ntohs(a.sin_port);
	assert_int_equal(pthread_create(&sv->t, NULL, server_main, sv), 0);
}

static void server_finish(struct server *sv)
{
	shutdown(sv->lfd, SHUT_RDWR);
	pthread_join(sv->t, NULL);
	close(sv->lfd);
	buf_append_char(&sv->got, '\0');
}

/* ---- the SMTP client -------------------------------------------------------------- */

static struct settings *g_s;
static atomic_bool g_stop;

#define EHLO_OK "250-sink.test\r\n250-8BITMIME\r\n250-SIZE 1000000\r\n250 PIPELINING\r\n"

struct client_case {
	const char *label;
	const char *greeting;
	struct step steps[MAX_STEPS];
	const char *message;
	const char *rcpts[3];
	enum relay_result want[3];
	int want_code[3];
	const char *want_sent;  /* substring of what the server got, or NULL */
	const char *want_reply; /* substring of the first recipient's reply, or NULL */
};

static const struct client_case client_cases[] = {
	{ "delivered, dot-stuffed, one RCPT refused",
	  "220 sink ESMTP\r\n",
	  { { "EHLO relay.test", EHLO_OK }, { "MAIL FROM:<a@local.example> SIZE=19 BODY=8BITMIME", "250 ok\r\n" },
	    { "RCPT TO:<x@far.example>", "250 ok\r\n" }, { "RCPT TO:<y@far.example>", "550 5.1.1 no such user\r\n" },
	    { "DATA", "354 go\r\n" }, { DATA_BODY, "250 2.0.0 queued\r\n" }, { "QUIT", "221 bye\r\n" } },
	  "a\r\n.b\r\n..c\r\n\xc3\xa9t\xc3\xa9\r\n", { "x@far.example", "y@far.example" },
	  { RELAY_SENT, RELAY_BOUNCE }, { 250, 550 }, "DATA\r\na\r\n..b\r\n...c\r\n\xc3\xa9t\xc3\xa9\r\n.\r\nQUIT" },
	{ "EHLO refused: HELO; no final CRLF added twice",
	  "220 old\r\n",
	  { { "EHLO", "502 5.5.1 what\r\n" }, { "HELO relay.test", "250 old\r\n" },
	    { "MAIL FROM:<a@local.example> SIZE=4\r\n", "250 ok\r\n" }, { "RCPT", "250 ok\r\n" },
	    { "DATA", "354 go\r\n" }, { DATA_BODY, "250 ok\r\n" }, { "QUIT", "221 bye\r\n" } },
	  "x\r\ny", { "x@far.example" }, { RELAY_SENT }, { 250 }, "x\r\ny\r\n.\r\n" },
	{ "greeting 554: no transaction, deferred",
	  "554 5.7.1 go away\r\n", { { "QUIT", NULL } }, "x\r\n", { "x@far.example" }, { RELAY_DEFER }, { 554 }, NULL },
	{ "server SIZE below the message: bounced, no MAIL",
	  "220 small\r\n", { { "EHLO", "250-small\r\n250 SIZE 3\r\n" }, { "QUIT", "221 bye\r\n" } },
	  "x\r\nyz\r\n", { "x@far.example" }, { RELAY_BOUNCE }, { 552 }, NULL },
	{ "451 to MAIL: every recipient deferred",
	  "220 busy\r\n", { { "EHLO", EHLO_OK }, { "MAIL", "451 4.3.0 later\r\n" }, { "QUIT", "221 bye\r\n" } },
	  "x\r\n", { "x@far.example", "y@far.example" }, { RELAY_DEFER, RELAY_DEFER }, { 451, 451 }, NULL },
	{ "malformed reply: deferred",
	  "220 odd\r\n", { { "EHLO", "hello there\r\n" } }, "x\r\n", { "x@far.example" }, { RELAY_DEFER }, { 0 }, NULL },
	{ "reply code changes inside a multi-line reply: deferred",
	  "220 odd\r\n", { { "EHLO", "250-a\r\n550 b\r\n" } }, "x\r\n", { "x@far.example" }, { RELAY_DEFER }, { 0 },
	  NULL },
	{ "connection lost after the dot: deferred (may be delivered twice, never lost)",
	  "220 flaky\r\n",
	  { { "EHLO", EHLO_OK }, { "MAIL", "250 ok\r\n" }, { "RCPT", "250 ok\r\n" }, { "DATA", "354 go\r\n" },
	    { DATA_BODY, NULL } },
	  "x\r\n", { "x@far.example" }, { RELAY_DEFER }, { 0 }, "x\r\n.\r\n" },
	{ "5xx to the dot: bounced",
	  "220 strict\r\n",
	  { { "EHLO", EHLO_OK }, { "MAIL", "250 ok\r\n" }, { "RCPT", "250 ok\r\n" }, { "DATA", "354 go\r\n" },
	    { DATA_BODY, "554 5.7.1 spam\r\n" }, { "QUIT", "221 bye\r\n" } },
	  "x\r\n", { "x@far.example" }, { RELAY_BOUNCE }, { 554 }, NULL },
	{ "the server greets with our own name (an MX pointing back here): bounced 5.4.6",
	  "220 me\r\n", { { "EHLO", "250-relay.test Hello\r\n250 8BITMIME\r\n" }, { "QUIT", "221 bye\r\n" } },
	  "x\r\n", { "x@far.example" }, { RELAY_BOUNCE }, { 0 }, NULL },
	{ "UTF-8 recipient without SMTPUTF8: bounced 5.6.7",
	  "220 ascii\r\n", { { "EHLO", EHLO_OK }, { "QUIT", "221 bye\r\n" } },
	  "x\r\n", { "j\xc3\xb6rg@far.example" }, { RELAY_BOUNCE }, { 553 }, NULL },
};

static int write_memfd(const char *data, size_t len)
{
	int fd = memfd_create("relay-test", MFD_CLOEXEC);
	assert_true(fd >= 0);
	assert_true(fs_write_all(fd, data, len));
	return fd;
}

static void run_client_case(const struct client_case *c)
{
	struct server sv;
	memset(&sv, 0, sizeof(sv));
	sv.greeting = c->greeting;
	memcpy(sv.steps, c->steps, sizeof(sv.steps));
	server_start(&sv);

	char route[64];
	snprintf(route, sizeof(route), "*=127.0.0.1:%u", sv.port);
	struct relay_transport t;
	char *err = NULL;
	assert_true(relay_transport_parse(route, &t, &err));
	struct relay_dns *dns = relay_dns_new("", &g_stop, &err);
	assert_non_null(dns);
	struct relay_hops hops;
	assert_int_equal(relay_route(dns, &t, "far.example", &hops, &err), RELAY_SENT);
	assert_int_equal(hops.n, 1);

	struct relay_rcpt rc[3];
	memset(rc, 0, sizeof(rc));
	size_t n = 0;
	while (n < 3 && c->rcpts[n] != NULL) {
		rc[n].address = c->rcpts[n];
		n++;
	}
	size_t len = strlen(c->message);
	bool eight = false;
	for (size_t i = 0; i < len; i++)
		eight = eight || (unsigned char)c->message[i] >= 0x80;
	struct relay_txn txn = {
		.s = g_s, .tls = NULL, .stop = &g_stop, .sender = "a@local.example", .fd = write_memfd(c->message, len),
		.size = len, .eight_bit = eight, .rcpts = rc, .n_rcpts = n,
	};
	relay_smtp_deliver(&txn, &hops);
	close(txn.fd);
	server_finish(&sv);
	if (sv.mismatch[0] != '\0')
		fail_msg("%s: %s\nsession:\n%s", c->label, sv.mismatch, sv.got.data);
	for (size_t i = 0; i < n; i++) {
		if (rc[i].result != c->want[i] || rc[i].code != c->want_code[i])
			fail_msg("%s: recipient %zu: result %d code %d (%s), want %d code %d", c->label, i, rc[i].result,
				 rc[i].code, rc[i].reply, c->want[i], c->want_code[i]);
		assert_true(rc[i].reply[0] != '\0');
	}
	if (c->want_reply != NULL && strstr(rc[0].reply, c->want_reply) == NULL)
		fail_msg("%s: reply \"%s\" lacks \"%s\"", c->label, rc[0].reply, c->want_reply);
	if (c->want_sent != NULL && strstr(sv.got.data, c->want_sent) == NULL)
		fail_msg("%s: the server did not get \"%s\"; session:\n%s", c->label, c->want_sent, sv.got.data);
	assert_string_equal(txn.relay_ip, "127.0.0.1");
	buf_free(&sv.got);
	relay_dns_free(&dns);
	relay_transport_free(&t);
}

static void test_smtp_client(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(client_cases); i++)
		run_client_case(&client_cases[i]);
}

/* A message of many chunks whose lines all start with "." (16-byte lines:
 * a chunk boundary falls at a line start) arrives stuffed, byte for byte. */
static void test_smtp_large_body(void **state)
{
	(void)state;
	const size_t lines = 40000;
	struct buf msg = BUF_INIT, want = BUF_INIT;
	buf_append_str(&want, "DATA\r\n");
	for (size_t i = 0; i < lines; i++) {
		char line[32];
		snprintf(line, sizeof(line), ".%013zu\r\n", i);
		assert_int_equal(strlen(line), 16);
		buf_append_str(&msg, line);
		buf_append_char(&want, '.');
		buf_append_str(&want, line);
	}
	buf_append_str(&want, ".\r\nQUIT");
	buf_append_char(&msg, '\0');
	buf_append_char(&want, '\0');
	struct client_case c = {
		.label = "640 KB of dot lines", .greeting = "220 big\r\n",
		.steps = { { "EHLO", EHLO_OK }, { "MAIL", "250 ok\r\n" }, { "RCPT", "250 ok\r\n" },
			   { "DATA", "354 go\r\n" }, { DATA_BODY, "250 ok\r\n" }, { "QUIT", "221 bye\r\n" } },
		.message = msg.data, .rcpts = { "x@far.example" }, .want = { RELAY_SENT }, .want_code = { 250 },
		.want_sent = want.data,
	};
	run_client_case(&c);
	buf_free(&msg);
	buf_free(&want);
}

/* A server that streams a line without end is cut off, not followed. */
static void test_smtp_endless_line(void **state)
{
	(void)state;
	struct buf g = BUF_INIT;
	buf_append_str(&g, "220 ");
	for (int i = 0; i < 100000; i++)
		buf_append_char(&g, 'a');
	buf_append_char(&g, '\0');
	struct client_case c = {
		.label = "a 100 KB greeting line", .greeting = g.data, .steps = { { "QUIT", NULL } },
		.message = "x\r\n", .rcpts = { "x@far.example" }, .want = { RELAY_DEFER }, .want_code = { 0 },
		.want_reply = "reply line too long",
	};
	run_client_case(&c);
	buf_free(&g);
}

/* No server at all: every recipient deferred with the connect error. */
static void test_smtp_unreachable(void **state)
{
	(void)state;
	struct relay_transport t;
	char *err = NULL;
	int probe = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	assert_int_equal(bind(probe, (struct sockaddr *)&a, sizeof(a)), 0);
	socklen_t al = sizeof(a);
	getsockname(probe, (struct sockaddr *)&a, &al);
	char route[64];
	snprintf(route, sizeof(route), "*=127.0.0.1:%u", ntohs(a.sin_port));
	close(probe);  /* nothing listens there now */
	assert_true(relay_transport_parse(route, &t, &err));
	struct relay_dns *dns = relay_dns_new("", &g_stop, &err);
	struct relay_hops hops;
	assert_int_equal(relay_route(dns, &t, "far.example", &hops, &err), RELAY_SENT);
	struct relay_rcpt rc = { .address = "x@far.example" };
	struct relay_txn txn = { .s = g_s, .stop = &g_stop, .sender = "", .fd = write_memfd("x\r\n", 3), .size = 3,
				 .rcpts = &rc, .n_rcpts = 1 };
	relay_smtp_deliver(&txn, &hops);
	close(txn.fd);
	assert_int_equal(rc.result, RELAY_DEFER);
	assert_string_equal(rc.dsn, "4.4.1");
	assert_non_null(strstr(rc.reply, "Connection refused"));
	relay_dns_free(&dns);
	relay_transport_free(&t);
}

/* Address literals route without DNS; malformed ones bounce. */
static void test_route_literals(void **state)
{
	(void)state;
	struct relay_transport t = { NULL, 0 };
	char *err = NULL;
	struct relay_dns *dns = relay_dns_new("", &g_stop, &err);
	assert_non_null(dns);
	static const struct {
		const char *domain;
		enum relay_result want;
		const char *ip;
	} cases[] = {
		{ "[127.0.0.9]", RELAY_SENT, "127.0.0.9" },
		{ "[IPv6:::1]", RELAY_SENT, "::1" },
		{ "[300.1.1.1]", RELAY_BOUNCE, NULL },
		{ "[]", RELAY_BOUNCE, NULL },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct relay_hops hops;
		char dom[64];
		snprintf(dom, sizeof(dom), "%s", cases[i].domain);
		str_lower(dom);
		enum relay_result r = relay_route(dns, &t, dom, &hops, &err);
		if (r != cases[i].want)
			fail_msg("%s: result %d, want %d (%s)", cases[i].domain, r, cases[i].want, err ? err : "");
		if (r == RELAY_SENT) {
			assert_int_equal(hops.n, 1);
			assert_string_equal(hops.h[0].ip, cases[i].ip);
			assert_int_equal(hops.h[0].port, 25);
		} else {
			assert_non_null(strstr(err, "5.1.2"));
			xfree(&err);
		}
	}
	relay_dns_free(&dns);
}

/* ---- the DSN ---------------------------------------------------------------------- */

static void test_bounce_compose(void **state)
{
	(void)state;
	static const char orig[] = "From: a@local.example\r\nSubject: hello\r\n\r\nbody that must not come back\r\n";
	int fd = write_memfd(orig, sizeof(orig) - 1);
	struct relay_rcpt r1 = { .address = "x@far.example", .result = RELAY_BOUNCE, .code = 550, .dsn = "5.1.1",
				 .reply = "550 5.1.1 <x@far.example>: no\x01 such\xff user" };
	struct relay_rcpt r2 = { .address = "j\xc3\xb6rg@far.example", .result = RELAY_BOUNCE, .code = 0,
				 .dsn = "4.4.1", .reply = "4.4.1 connect to far.example: Connection refused" };
	const struct relay_rcpt *failed[] = { &r1, &r2 };
	struct relay_bounce_msg m = { .sender = "a@local.example", .fd = fd, .size = sizeof(orig) - 1,
				      .failed = failed, .n_failed = 2, .remote_mta = "mx.far.example", .received = 1 };
	msgid_new(&m.id);
	struct buf out = BUF_INIT;
	relay_bounce_compose(g_s, &m, 1764400000, &out);
	buf_append_char(&out, '\0');
	close(fd);
	const char *t = out.data;
	static const char *const want[] = {
		"From: Mail Delivery System <MAILER-DAEMON@relay.test>\r\n",
		"To: <a@local.example>\r\n",
		"Auto-Submitted: auto-replied\r\n",
		"Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"",
		"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; relay.test\r\n",
		"\r\nFinal-Recipient: rfc822; x@far.example\r\nAction: failed\r\nStatus: 5.1.1\r\n"
		"Remote-MTA: dns; mx.far.example\r\nDiagnostic-Code: smtp; 550 5.1.1 <x@far.example>: no? such? user\r\n",
		"\r\nFinal-Recipient: utf-8; j??rg@far.example\r\nAction: failed\r\nStatus: 4.4.1\r\n"
		"Diagnostic-Code: X-Strata; 4.4.1 connect",
		"Content-Type: text/rfc822-headers\r\n\r\nFrom: a@local.example\r\nSubject: hello\r\n",
	};
	for (size_t i = 0; i < ARRAY_LEN(want); i++) {
		if (strstr(t, want[i]) == NULL)
			fail_msg("the DSN lacks \"%s\":\n%s", want[i], t);
	}
	assert_null(strstr(t, "body that must not come back"));
	assert_null(strstr(t, "\x01"));
	/* the closing boundary ends it */
	const char *b = strstr(t, "boundary=\"") + 10;
	char boundary[128];
	size_t bl = strcspn(b, "\"");
	assert_true(bl < sizeof(boundary) - 8);
	snprintf(boundary, sizeof(boundary), "\r\n--%.*s--\r\n", (int)bl, b);
	assert_true(out.len - 1 >= strlen(boundary));
	assert_string_equal(t + out.len - 1 - strlen(boundary), boundary);
	buf_free(&out);
}

static int group_setup(void **state)
{
	(void)state;
	log_init("relay_test", false, LOG_LVL_ERROR);
	static char *const over[] = { "hostname=relay.test", "relay.command_timeout=10s", "relay.connect_timeout=2s",
				      "state_dir=/nonexistent-relay-test" };
	char *err = NULL;
	g_s = config_load(NULL, over, ARRAY_LEN(over), &err);
	if (g_s == NULL)
		fail_msg("config: %s", err);
	atomic_init(&g_stop, false);
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	config_free(&g_s);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_transport_parse),
		cmocka_unit_test(test_route_literals),
		cmocka_unit_test(test_smtp_client),
		cmocka_unit_test(test_smtp_large_body),
		cmocka_unit_test(test_smtp_endless_line),
		cmocka_unit_test(test_smtp_unreachable),
		cmocka_unit_test(test_bounce_compose),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
