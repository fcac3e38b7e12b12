/*
 * metrics_test.c - counters, gauges, histograms and their Prometheus text
 * rendering (src/metrics).
 *
 * The registry is process-global, so each test uses metrics no other test
 * touches, or compares against values read before it acted.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

/* The value on the sample line that starts with exactly `name` + ' '. */
static bool sample(const char *text, const char *name, double *out)
{
	size_t n = strlen(name);
	for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
		if (strncmp(p, name, n) == 0 && p[n] == ' ') {
			*out = strtod(p + n + 1, NULL);
			return true;
		}
	}
	return false;
}

static char *render(void)
{
	struct buf b = BUF_INIT;
	metrics_render(&b);
	return buf_steal(&b);
}

static void test_counters_and_gauges(void **state)
{
	(void)state;
	uint64_t c0 = metric_get(M_SMTP_CONNECTIONS_TOTAL);
	metric_inc(M_SMTP_CONNECTIONS_TOTAL);
	metric_inc(M_SMTP_CONNECTIONS_TOTAL);
	metric_add(M_SMTP_CONNECTIONS_TOTAL, 40);
	assert_int_equal(metric_get(M_SMTP_CONNECTIONS_TOTAL), c0 + 42);
	gauge_add(M_SMTP_SESSIONS_ACTIVE, 5);
	gauge_add(M_SMTP_SESSIONS_ACTIVE, -2);
	assert_int_equal(gauge_get(M_SMTP_SESSIONS_ACTIVE), 3);
	gauge_add(M_SMTP_SESSIONS_ACTIVE, -3);
	metric_add(M_SMTP_REJECT_QUOTA, 7);

	char *text = render();
	double v;
	assert_true(sample(text, "strata_smtp_connections_total", &v));
	assert_int_equal((uint64_t)v, c0 + 42);
	assert_true(sample(text, "strata_smtp_sessions_active", &v));
	assert_int_equal((int64_t)v, 0);
	assert_true(sample(text, "strata_smtp_rejected_total{reason=\"quota\"}", &v));
	assert_int_equal((uint64_t)v, 7);
	assert_true(sample(text, "strata_smtp_rejected_total{reason=\"unknown_user\"}", &v));
	free(text);
}

/* Many threads adding at once lose no increment. */
static void *adder(void *arg)
{
	(void)arg;
	for (int i = 0; i < 100000; i++)
		metric_inc(M_STORE_FSYNCS);
	return NULL;
}

static void test_counters_threads(void **state)
{
	(void)state;
	uint64_t before = metric_get(M_STORE_FSYNCS);
	pthread_t t[4];
	for (int i = 0; i < 4; i++)
		assert_int_equal(pthread_create(&t[i], NULL, adder, NULL), 0);
	for (int i = 0; i < 4; i++)
		pthread_join(t[i], NULL);
	assert_int_equal(metric_get(M_STORE_FSYNCS), before + 400000);
}

/* Structure of the whole exposition: every line is a comment or
 * "name[{labels}] value"; each metric family has exactly one HELP and one
 * TYPE line, and they come before its samples. */
static void test_render_format(void **state)
{
	(void)state;
	char *text = render();
	size_t len = strlen(text);
	assert_true(len > 0);
	assert_int_equal(text[len - 1], '\n');
	char *copy = xstrdup(text), *save = NULL;
	int help_rejected = 0, type_rejected = 0;
	char typed[64][96];
	size_t n_typed = 0;
	for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (strncmp(line, "# HELP ", 7) == 0) {
			if (strncmp(line + 7, "strata_smtp_rejected_total ", 27) == 0)
				help_rejected++;
			continue;
		}
		if (strncmp(line, "# TYPE ", 7) == 0) {
			char name[96], kind[32];
			assert_int_equal(sscanf(line + 7, "%95s %31s", name, kind), 2);
			if (strcmp(kind, "counter") != 0 && strcmp(kind, "gauge") != 0 &&
			    strcmp(kind, "histogram") != 0)
				fail_msg("bad TYPE line '%s'", line);
			if (strcmp(name, "strata_smtp_rejected_total") == 0)
				type_rejected++;
			for (size_t i = 0; i < n_typed; i++) {
				if (strcmp(typed[i], name) == 0)
					fail_msg("family %s typed twice", name);
			}
			assert_true(n_typed < 64);
			snprintf(typed[n_typed++], sizeof(typed[0]), "%s", name);
			continue;
		}
		assert_true(line[0] != '#');
		/* sample: name, optional {labels}, one space, a number */
		const char *sp = strrchr(line, ' ');
		if (sp == NULL)
			fail_msg("sample without value: '%s'", line);
		char *end;
		strtod(sp + 1, &end);
		if (*end != '\0' || end == sp + 1)
			fail_msg("bad value in '%s'", line);
		size_t name_len = strcspn(line, "{ ");
		bool family_typed = false;
		for (size_t i = 0; i < n_typed; i++) {
			size_t tl = strlen(typed[i]);
			if (strncmp(line, typed[i], tl) == 0 &&
			    (name_len == tl || strncmp(line + tl, "_bucket", 7) == 0 ||
			     strncmp(line + tl, "_sum", 4) == 0 || strncmp(line + tl, "_count", 6) == 0))
				family_typed = true;
		}
		if (!family_typed)
			fail_msg("sample before its TYPE line: '%s'", line);
		for (size_t i = 0; i < name_len; i++) {
			if (!(isalnum((unsigned char)line[i]) || line[i] == '_'))
				fail_msg("bad metric name in '%s'", line);
		}
	}
	assert_int_equal(help_rejected, 1);
	assert_int_equal(type_rejected, 1);
	free(copy);
	free(text);
}

static void test_histogram_render(void **state)
{
	(void)state;
	histogram_observe(M_H_COMMIT_BATCH_SIZE, 1);
	histogram_observe(M_H_COMMIT_BATCH_SIZE, 3);
	histogram_observe(M_H_COMMIT_BATCH_SIZE, 3);
	histogram_observe(M_H_COMMIT_BATCH_SIZE, 100);
	histogram_observe(M_H_COMMIT_BATCH_SIZE, 5000); /* beyond the last bound */
	char *text = render();
	struct { const char *name; double want; } rows[] = {
		{ "strata_store_commit_batch_size_bucket{le=\"1\"}", 1 },
		{ "strata_store_commit_batch_size_bucket{le=\"2\"}", 1 },
		{ "strata_store_commit_batch_size_bucket{le=\"4\"}", 3 },
		{ "strata_store_commit_batch_size_bucket{le=\"64\"}", 3 },
		{ "strata_store_commit_batch_size_bucket{le=\"128\"}", 4 },
		{ "strata_store_commit_batch_size_bucket{le=\"1024\"}", 4 },
		{ "strata_store_commit_batch_size_bucket{le=\"+Inf\"}", 5 },
		{ "strata_store_commit_batch_size_count", 5 },
		{ "strata_store_commit_batch_size_sum", 5107 },
	};
	for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
		double v = -1;
		if (!sample(text, rows[i].name, &v) || v != rows[i].want)
			fail_msg("%s: expected %g, got %g", rows[i].name, rows[i].want, v);
	}
	/* buckets are cumulative: never decreasing */
	double prev = 0;
	for (const char *p = strstr(text, "strata_store_commit_batch_size_bucket"); p;
	     p = strstr(p + 1, "strata_store_commit_batch_size_bucket")) {
		double v = strtod(strchr(p, ' ') + 1, NULL);
		assert_true(v >= prev);
		prev = v;
	}
	free(text);
}

static void test_histogram_quantile(void **state)
{
	(void)state;
	/* empty histogram */
	assert_true(histogram_quantile(M_H_SMTP_ACCEPT_LATENCY, 0.5) == 0.0);
	/* 90 fast (<= 2 ms), 9 medium (<= 50 ms), 1 slow (> 10 s) */
	for (int i = 0; i < 90; i++)
		histogram_observe(M_H_SMTP_ACCEPT_LATENCY, 0.0015);
	for (int i = 0; i < 9; i++)
		histogram_observe(M_H_SMTP_ACCEPT_LATENCY, 0.03);
	histogram_observe(M_H_SMTP_ACCEPT_LATENCY, 30.0);
	struct { double q, want; } rows[] = {
		{ 0.0, 0.002 },   /* rank clamps to the first observation */
		{ 0.5, 0.002 },
		{ 0.9, 0.002 },
		{ 0.95, 0.05 },
		{ 0.99, 0.05 },
		{ 1.0, 10 },      /* beyond the last bound: reports the last bound */
	};
	for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
		double got = histogram_quantile(M_H_SMTP_ACCEPT_LATENCY, rows[i].q);
		if (got != rows[i].want)
			fail_msg("q=%g: expected %g, got %g", rows[i].q, rows[i].want, got);
	}
	/* an observation exactly on a bound belongs to that bucket */
	histogram_observe(M_H_COMMIT_DURATION, 0.01);
	assert_true(histogram_quantile(M_H_COMMIT_DURATION, 0.5) == 0.01);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_counters_and_gauges),
		cmocka_unit_test(test_counters_threads),
		cmocka_unit_test(test_render_format),
		cmocka_unit_test(test_histogram_render),
		cmocka_unit_test(test_histogram_quantile),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
