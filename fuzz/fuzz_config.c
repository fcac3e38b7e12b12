/*
 * fuzz_config.c - fuzz target for the configuration parser
 * (src/config/config.h): the file grammar and -o overrides, and with them
 * the core size/duration/number/boolean parsers.
 *
 * Input: a configuration file.  It is loaded twice: as a file (written to a
 * temporary file, since config_load takes a path), and as -o overrides, one
 * per line (at most MAX_OVERRIDES), applied over an empty file.
 *
 * Properties checked:
 *  - config_load either returns settings and leaves *error_r alone, or
 *    returns NULL with an error message;
 *  - loaded settings obey the table: numbers within [min, max] (threads,
 *    resolved from 0, at least 1), enum values within their choice list,
 *    hostname and the derived paths not empty;
 *  - the settings round-trip: every value written with config_value_text
 *    (as `strata config show` does), given back as quoted -o overrides,
 *    loads into settings with the same text for every key, and
 *    config_needs_restart finds no difference.
 *
 * Durability/concurrency: one temporary file per load, removed before the
 * call returns; one thread.  config_load never reads the system default
 * path here (a path is always given).
 */
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

#define MAX_OVERRIDES 64

static struct settings *load(const char *file, size_t file_len, char *const *over, size_t n_over,
			     char **error_r)
{
	char path[4096];
	fuzz_temp_file(file, file_len, path, sizeof(path));
	*error_r = NULL;
	struct settings *s = config_load(path, over, n_over, error_r);
	unlink(path);
	if (s == NULL)
		FUZZ_CHECK(*error_r != NULL && (*error_r)[0] != '\0', "NULL settings without an error");
	else
		FUZZ_CHECK(*error_r == NULL, "settings returned with error '%s'", *error_r);
	return s;
}

static void check_settings(const struct settings *s)
{
	size_t n;
	const struct config_key *keys = config_keys(&n);
	for (size_t i = 0; i < n; i++) {
		const struct config_key *k = &keys[i];
		const void *field = (const char *)s + k->offset;
		switch (k->type) {
		case CFG_STRING:
			FUZZ_CHECK(*(char *const *)field != NULL, "%s is NULL", k->name);
			break;
		case CFG_ENUM: {
			unsigned v = *(const unsigned *)field, count = 0;
			while (k->choices[count] != NULL)
				count++;
			FUZZ_CHECK(v < count, "%s = %u of %u choices", k->name, v, count);
			break;
		}
		case CFG_UINT:
		case CFG_SIZE:
		case CFG_DURATION: {
			uint64_t v = *(const uint64_t *)field;
			/* threads = 0 means "one per core" and is resolved at load */
			uint64_t min = strcmp(k->name, "threads") == 0 ? 1 : k->min;
			FUZZ_CHECK(v >= min && v <= k->max, "%s = %llu outside %llu..%llu", k->name,
				   (unsigned long long)v, (unsigned long long)min, (unsigned long long)k->max);
			break;
		}
		case CFG_BOOL:
			break;
		}
	}
	FUZZ_CHECK(s->hostname[0] != '\0', "empty hostname after load");
	FUZZ_CHECK(s->tls_cert_file[0] && s->tls_key_file[0] && s->store_index_path[0] &&
		   s->store_blob_dir[0], "a derived path is empty after load");
}

/* Every value as a quoted override, loaded over an empty file, gives the
 * same settings. */
static void check_round_trip(const struct settings *s)
{
	size_t n;
	const struct config_key *keys = config_keys(&n);
	char **over = xcalloc(n, sizeof(*over));
	struct buf v = BUF_INIT;
	for (size_t i = 0; i < n; i++) {
		buf_reset(&v);
		config_value_text(s, &keys[i], &v);
		over[i] = xasprintf("%s=\"%s\"", keys[i].name, v.data);
	}
	char *err = NULL;
	struct settings *again = load("", 0, over, n, &err);
	if (again == NULL)
		fuzz_fail(__FILE__, __LINE__, "round trip loads", "shown values do not load back: %s", err);
	struct buf w = BUF_INIT;
	for (size_t i = 0; i < n; i++) {
		buf_reset(&v);
		buf_reset(&w);
		config_value_text(s, &keys[i], &v);
		config_value_text(again, &keys[i], &w);
		if (strcmp(v.data, w.data) != 0) {
			fuzz_dump("loaded  ", v.data, v.len);
			fuzz_dump("reloaded", w.data, w.len);
			fuzz_fail(__FILE__, __LINE__, "round trip", "%s changes on a round trip", keys[i].name);
		}
	}
	char *which = NULL;
	FUZZ_CHECK(!config_needs_restart(s, again, &which), "restart needed for %s", which);
	FUZZ_CHECK(which == NULL, "needs_restart names keys without a difference");
	config_free(&again);
	FUZZ_CHECK(again == NULL, "config_free left the pointer set");
	for (size_t i = 0; i < n; i++)
		free(over[i]);
	free(over);
	buf_free(&v);
	buf_free(&w);
}

static void check_loaded(struct settings *s)
{
	check_settings(s);
	check_round_trip(s);
	config_free(&s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *err = NULL;
	struct settings *s = load((const char *)data, size, NULL, 0, &err);
	if (s != NULL)
		check_loaded(s);
	free(err);

	/* The same text as -o overrides, one per line. */
	char *copy = xmalloc(size + 1);
	if (size > 0)
		memcpy(copy, data, size);
	copy[size] = '\0';
	char *over[MAX_OVERRIDES];
	size_t n_over = 0;
	char *p = copy, *end = copy + size;
	while (p < end && n_over < MAX_OVERRIDES) {
		char *nl = memchr(p, '\n', (size_t)(end - p));
		if (nl != NULL)
			*nl = '\0';
		over[n_over++] = p;
		if (nl == NULL)
			break;
		p = nl + 1;
	}
	err = NULL;
	s = load("", 0, over, n_over, &err);
	if (s != NULL)
		check_loaded(s);
	free(err);
	free(copy);
	return 0;
}
