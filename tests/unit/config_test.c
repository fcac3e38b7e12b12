/*
 * config_test.c - the settings table, file parser, -o overrides, derived
 * defaults and the restart check (src/config).
 *
 * Every load names an explicit file (an empty one for "defaults"), so the
 * tests never read the machine's own configuration.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

struct fixture {
	char dir[256];
	char path[300];
};

static int setup(void **state)
{
	struct fixture *f = xcalloc(1, sizeof(*f));
	snprintf(f->dir, sizeof(f->dir), "%s/strata-config-test-XXXXXX",
		 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (mkdtemp(f->dir) == NULL)
		return -1;
	snprintf(f->path, sizeof(f->path), "%s/strata.conf", f->dir);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	unlink(f->path);
	rmdir(f->dir);
	free(f);
	return 0;
}

static void write_conf(const struct fixture *f, const char *text)
{
	FILE *fp = fopen(f->path, "w");
	assert_non_null(fp);
	fputs(text, fp);
	assert_int_equal(fclose(fp), 0);
}

static struct settings *load_ok(const struct fixture *f, const char *text, char *const *over, size_t n)
{
	write_conf(f, text);
	char *err = NULL;
	struct settings *s = config_load(f->path, over, n, &err);
	if (s == NULL)
		fail_msg("config_load failed: %s\nfile:\n%s", err, text);
	assert_null(err);
	return s;
}

static const struct config_key *key(const char *name)
{
	size_t n;
	const struct config_key *k = config_keys(&n);
	for (size_t i = 0; i < n; i++) {
		if (strcmp(k[i].name, name) == 0)
			return &k[i];
	}
	fail_msg("no key '%s'", name);
	return NULL;
}

/* The value of `name` in s, as config_value_text writes it (static buffer). */
static const char *val(const struct settings *s, const char *name)
{
	static char text[512];
	struct buf b = BUF_INIT;
	config_value_text(s, key(name), &b);
	snprintf(text, sizeof(text), "%s", b.data ? b.data : "");
	buf_free(&b);
	return text;
}

static void test_table_sane(void **state)
{
	(void)state;
	size_t n;
	const struct config_key *k = config_keys(&n);
	assert_true(n >= 20);
	for (size_t i = 0; i < n; i++) {
		if (k[i].doc == NULL || strlen(k[i].doc) < 10)
			fail_msg("key %s has no documentation", k[i].name);
		for (size_t j = i + 1; j < n; j++) {
			if (strcmp(k[i].name, k[j].name) == 0)
				fail_msg("key %s appears twice", k[i].name);
		}
		if (k[i].type == CFG_ENUM && (k[i].choices == NULL || k[i].choices[0] == NULL))
			fail_msg("enum key %s has no choices", k[i].name);
		if ((k[i].type == CFG_UINT || k[i].type == CFG_SIZE || k[i].type == CFG_DURATION) &&
		    k[i].min > k[i].max)
			fail_msg("key %s: min > max", k[i].name);
	}
}

static void test_defaults(void **state)
{
	struct fixture *f = *state;
	struct settings *s = load_ok(f, "", NULL, 0);
	assert_string_equal(s->state_dir, "/var/lib/strata");
	assert_string_equal(s->user, "strata");
	assert_string_equal(s->admin_listen, "127.0.0.1:9425");
	assert_string_equal(s->smtp_listen, "0.0.0.0:25");
	assert_string_equal(s->recipient_delimiter, "+");
	assert_int_equal(s->smtp_max_message_size, 50ull * 1024 * 1024);
	assert_int_equal(s->smtp_max_recipients, 100);
	assert_int_equal(s->smtp_max_line_length, 2048);
	assert_int_equal(s->smtp_timeout_command_ms, 5 * 60 * 1000);
	assert_int_equal(s->smtp_timeout_data_ms, 3 * 60 * 1000);
	assert_int_equal(s->smtp_error_delay_ms, 0);
	assert_int_equal(s->smtp_vrfy, VRFY_CANNOT);
	assert_int_equal(s->smtp_bare_lf, BARE_LF_NORMALIZE);
	assert_int_equal(s->log_target, LOG_TARGET_STDERR);
	assert_int_equal(s->log_level, LOG_LVL_INFO);
	assert_true(s->store_fsync);
	assert_int_equal(s->store_blob_writers, 4);
	assert_int_equal(s->store_commit_batch, 512);
	assert_int_equal(s->quota_default_bytes, 0);
	assert_int_equal(s->quota_over_reply, QUOTA_REPLY_TEMPORARY);
	/* resolved at load: never empty, never zero */
	assert_true(s->hostname[0] != '\0');
	assert_true(s->threads >= 1);
	assert_string_equal(s->store_index_path, "/var/lib/strata/index.db");
	assert_string_equal(s->store_blob_dir, "/var/lib/strata/blobs");
	assert_string_equal(s->tls_cert_file, "/var/lib/strata/tls/cert.pem");
	assert_string_equal(s->tls_key_file, "/var/lib/strata/tls/key.pem");
	config_free(&s);
	assert_null(s);
	config_free(&s); /* NULL is fine */
}

/* Writing each value back through -o reproduces it exactly. */
static void test_value_text_round_trip(void **state)
{
	struct fixture *f = *state;
	struct settings *s = load_ok(f, "smtp.error_delay = 1500ms\nsmtp.timeout.data = 90s\n", NULL, 0);
	size_t n;
	const struct config_key *k = config_keys(&n);
	char **over = xcalloc(n, sizeof(*over));
	for (size_t i = 0; i < n; i++)
		over[i] = xasprintf("%s=%s", k[i].name, val(s, k[i].name));
	struct settings *s2 = load_ok(f, "", over, n);
	for (size_t i = 0; i < n; i++) {
		char a[512];
		snprintf(a, sizeof(a), "%s", val(s, k[i].name));
		if (strcmp(a, val(s2, k[i].name)) != 0)
			fail_msg("key %s: '%s' became '%s'", k[i].name, a, val(s2, k[i].name));
		free(over[i]);
	}
	assert_string_equal(val(s, "smtp.error_delay"), "1500ms");
	assert_string_equal(val(s, "smtp.timeout.data"), "90s");
	assert_string_equal(val(s, "smtp.timeout.command"), "5m");
	assert_string_equal(val(s, "store.fsync"), "yes");
	free(over);
	config_free(&s);
	config_free(&s2);
}

static void test_file_syntax(void **state)
{
	struct fixture *f = *state;
	struct settings *s = load_ok(f,
		"# Strata test configuration\n"
		"\n"
		"   hostname   =   mx1.example.net   \n"
		"\tstate_dir=/srv/strata\n"
		"smtp.listen = \"127.0.0.1:2525\"   # trailing comment\n"
		"smtp.max_message_size = 10M # ten mebibytes\n"
		"user = \"mail # not a comment\"\n"
		"smtp.vrfy = DISABLED\n"
		"store.fsync = off\n"
		"smtp.timeout.command = 2m\n"
		"   # indented comment\n"
		"recipient_delimiter = \"\"\n",
		NULL, 0);
	assert_string_equal(s->hostname, "mx1.example.net");
	assert_string_equal(s->state_dir, "/srv/strata");
	assert_string_equal(s->smtp_listen, "127.0.0.1:2525");
	assert_int_equal(s->smtp_max_message_size, 10 * 1024 * 1024);
	assert_string_equal(s->user, "mail # not a comment");
	assert_int_equal(s->smtp_vrfy, VRFY_DISABLED);
	assert_false(s->store_fsync);
	assert_int_equal(s->smtp_timeout_command_ms, 120000);
	assert_string_equal(s->recipient_delimiter, "");
	config_free(&s);
}

static void test_overrides(void **state)
{
	struct fixture *f = *state;
	char *over[] = { "smtp.max_recipients=7", "hostname = over.example", "smtp.max_recipients=9" };
	struct settings *s = load_ok(f, "smtp.max_recipients = 50\nhostname = file.example\n", over, 3);
	assert_int_equal(s->smtp_max_recipients, 9); /* last one wins, over the file */
	assert_string_equal(s->hostname, "over.example");
	config_free(&s);
}

struct error_case {
	const char *label;
	const char *file;      /* NULL: only the override */
	const char *override;  /* NULL: none */
	const char *want[3];   /* substrings expected in the error */
};

static const struct error_case error_cases[] = {
	{ "unknown key names file:line", "# c\nhostname = a\nno.such.key = 1\n", NULL,
	  { "strata.conf:3:", "no.such.key", NULL } },
	{ "line without =", "hostname\n", NULL, { "strata.conf:1:", "key = value", NULL } },
	{ "uint above range", "\n\nsmtp.max_recipients = 100001\n", NULL,
	  { "strata.conf:3:", "smtp.max_recipients", "out of range" } },
	{ "uint below range", "smtp.max_recipients = 0\n", NULL, { ":1:", "out of range", "1 to 100000" } },
	{ "threads above range", "threads = 257\n", NULL, { ":1:", "threads", "out of range" } },
	{ "size below range", "smtp.max_message_size = 1000\n", NULL, { ":1:", "out of range", NULL } },
	{ "size unit", "smtp.max_message_size = 10X\n", NULL, { ":1:", "not a size", NULL } },
	{ "duration", "smtp.timeout.data = soon\n", NULL, { ":1:", "not a duration", NULL } },
	{ "duration range", "smtp.timeout.data = 2h\n", NULL, { ":1:", "out of range", NULL } },
	{ "negative number", "smtp.max_errors = -1\n", NULL, { ":1:", "not a whole number", NULL } },
	{ "enum", "smtp.vrfy = sometimes\n", NULL, { ":1:", "smtp.vrfy", "cannot, disabled" } },
	{ "enum log level", "log.level = loud\n", NULL, { ":1:", "error, warning, info, debug", NULL } },
	{ "bool", "store.fsync = perhaps\n", NULL, { ":1:", "store.fsync", "yes or no" } },
	{ "override unknown", "", "bogus=1", { "-o bogus=1", "bogus", NULL } },
	{ "override range", "", "smtp.max_errors=0", { "-o smtp.max_errors=0", "out of range", NULL } },
	{ "override enum", "", "quota.over_quota_reply=never", { "-o ", "temporary, permanent", NULL } },
	{ "override without =", "", "hostname", { "-o hostname", NULL, NULL } },
};

static void test_errors(void **state)
{
	struct fixture *f = *state;
	int failures = 0;
	for (size_t i = 0; i < ARRAY_LEN(error_cases); i++) {
		const struct error_case *c = &error_cases[i];
		write_conf(f, c->file ? c->file : "");
		char *over[1] = { (char *)c->override };
		char *err = NULL;
		struct settings *s = config_load(f->path, over, c->override ? 1 : 0, &err);
		if (s != NULL) {
			print_error("case '%s': expected an error, load succeeded\n", c->label);
			failures++;
			config_free(&s);
			continue;
		}
		for (int k = 0; k < 3 && c->want[k]; k++) {
			if (err == NULL || strstr(err, c->want[k]) == NULL) {
				print_error("case '%s': error '%s' lacks '%s'\n", c->label, err ? err : "(null)",
					    c->want[k]);
				failures++;
			}
		}
		free(err);
	}
	assert_int_equal(failures, 0);
}

static void test_missing_explicit_file(void **state)
{
	struct fixture *f = *state;
	char path[400];
	snprintf(path, sizeof(path), "%s/absent.conf", f->dir);
	char *err = NULL;
	struct settings *s = config_load(path, NULL, 0, &err);
	assert_null(s);
	assert_non_null(err);
	assert_non_null(strstr(err, "absent.conf"));
	free(err);
	assert_string_equal(config_effective_path(path), path);
}

static void test_derived_paths(void **state)
{
	struct fixture *f = *state;
	struct settings *s = load_ok(f, "state_dir = /data/strata\nstore.index = /fast/index.db\n", NULL, 0);
	assert_string_equal(s->store_index_path, "/fast/index.db"); /* explicit wins */
	assert_string_equal(s->store_blob_dir, "/data/strata/blobs");
	assert_string_equal(s->tls_cert_file, "/data/strata/tls/cert.pem");
	assert_string_equal(s->tls_key_file, "/data/strata/tls/key.pem");
	config_free(&s);
	char *over[] = { "threads=3", "hostname=named.example" };
	s = load_ok(f, "", over, 2);
	assert_int_equal(s->threads, 3);
	assert_string_equal(s->hostname, "named.example");
	config_free(&s);
}

static void test_needs_restart(void **state)
{
	struct fixture *f = *state;
	struct settings *a = load_ok(f, "smtp.listen = 127.0.0.1:2525\nlog.level = info\n", NULL, 0);
	struct settings *b = load_ok(f, "smtp.listen = 127.0.0.1:2525\nlog.level = debug\n"
					"smtp.max_recipients = 5\n", NULL, 0);
	char *which = (char *)"untouched";
	assert_false(config_needs_restart(a, b, &which)); /* only reloadable keys differ */
	assert_null(which);
	struct settings *c = load_ok(f, "smtp.listen = 127.0.0.1:2626\nstore.blob_writers = 8\n"
					"log.level = debug\n", NULL, 0);
	assert_true(config_needs_restart(a, c, &which));
	assert_non_null(which);
	assert_non_null(strstr(which, "smtp.listen"));
	assert_non_null(strstr(which, "store.blob_writers"));
	assert_null(strstr(which, "log.level"));
	free(which);
	assert_false(config_needs_restart(a, a, &which));
	assert_null(which);
	config_free(&a);
	config_free(&b);
	config_free(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_table_sane),
		cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
		cmocka_unit_test_setup_teardown(test_value_text_round_trip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_file_syntax, setup, teardown),
		cmocka_unit_test_setup_teardown(test_overrides, setup, teardown),
		cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_missing_explicit_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_derived_paths, setup, teardown),
		cmocka_unit_test_setup_teardown(test_needs_restart, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
