/*
 * cli_config.c - `strata config check|show|doc`.
 *
 * Everything here is generated from the settings table (config_keys()), so
 * docs/CONFIG.md, `config show` and the parser cannot disagree.
 *
 * "Differs from the default" is decided against a configuration loaded from
 * an empty file with the same state_dir: derived paths (store.index = ""
 * meaning <state_dir>/index.db) then compare equal when they were not set,
 * and differ when they were.  state_dir itself is compared with its
 * built-in default.
 */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int config_check(struct cli *c)
{
	if (!cli_args(c, NULL, 0, 0, 0, ""))
		return CLI_USAGE;
	if (!cli_load_config(c))
		return CLI_ERROR;
	const char *path = config_effective_path(c->config_path);
	printf("config OK: %s\n", path ? path : "built-in defaults");
	return CLI_OK;
}

/* Whether the value needs quotes to be read back by the config parser. */
static bool needs_quotes(const char *v)
{
	size_t n = strlen(v);
	return n == 0 || v[0] == ' ' || v[0] == '\t' || v[n - 1] == ' ' || v[n - 1] == '\t' ||
	       strchr(v, '#') != NULL || strchr(v, '"') != NULL;
}

static void print_value_line(const char *name, const char *value)
{
	if (needs_quotes(value))
		printf("%s = \"%s\"\n", name, value);
	else
		printf("%s = %s\n", name, value);
}

static const char *type_name(enum cfg_type t)
{
	switch (t) {
	case CFG_STRING: return "string";
	case CFG_BOOL: return "boolean";
	case CFG_UINT: return "number";
	case CFG_SIZE: return "size";
	case CFG_DURATION: return "duration";
	case CFG_ENUM: return "choice";
	}
	return "?";
}

/* A size in the largest unit that divides it: "2G", "1k", "1500". */
static void size_text(uint64_t v, struct buf *out)
{
	static const struct { uint64_t mult; const char *suffix; } u[] = {
		{ 1ull << 40, "T" }, { 1ull << 30, "G" }, { 1ull << 20, "M" }, { 1ull << 10, "k" },
	};
	for (size_t i = 0; i < ARRAY_LEN(u); i++) {
		if (v != 0 && v % u[i].mult == 0) {
			buf_printf(out, "%llu%s", (unsigned long long)(v / u[i].mult), u[i].suffix);
			return;
		}
	}
	buf_printf(out, "%llu", (unsigned long long)v);
}

static void duration_text(uint64_t ms, struct buf *out)
{
	if (ms != 0 && ms % 3600000 == 0)
		buf_printf(out, "%lluh", (unsigned long long)(ms / 3600000));
	else if (ms != 0 && ms % 60000 == 0)
		buf_printf(out, "%llum", (unsigned long long)(ms / 60000));
	else if (ms % 1000 == 0)
		buf_printf(out, "%llus", (unsigned long long)(ms / 1000));
	else
		buf_printf(out, "%llums", (unsigned long long)ms);
}

static void bound_text(const struct config_key *k, uint64_t v, struct buf *out)
{
	if (k->type == CFG_SIZE)
		size_text(v, out);
	else if (k->type == CFG_DURATION)
		duration_text(v, out);
	else
		buf_printf(out, "%llu", (unsigned long long)v);
}

/* "1 to 100000", "1k to 2G", "no limit", "cannot, disabled"; empty for
 * strings and booleans. */
static void range_text(const struct config_key *k, struct buf *out)
{
	if (k->type == CFG_ENUM) {
		for (size_t i = 0; k->choices[i]; i++)
			buf_printf(out, "%s%s", i ? ", " : "", k->choices[i]);
		return;
	}
	if (k->type != CFG_UINT && k->type != CFG_SIZE && k->type != CFG_DURATION)
		return;
	if (k->min == 0 && k->max == UINT64_MAX) {
		buf_append_str(out, "any");
		return;
	}
	bound_text(k, k->min, out);
	buf_append_str(out, " to ");
	bound_text(k, k->max, out);
}

/* Defaults with this configuration's state_dir, for "differs" marks. */
static struct settings *load_baseline(const struct settings *s)
{
	char *over = xasprintf("state_dir=%s", s->state_dir);
	char *const overs[] = { over };
	char *err = NULL;
	/* an empty file: the built-in table and nothing else */
	struct settings *base = config_load("/dev/null", overs, 1, &err);
	free(over);
	if (base == NULL) {
		cli_error("cannot build the default configuration: %s", err);
		free(err);
	}
	return base;
}

static bool differs(const struct settings *s, const struct settings *base, const struct config_key *k,
		    struct buf *cur, struct buf *def)
{
	buf_reset(cur);
	buf_reset(def);
	config_value_text(s, k, cur);
	if (strcmp(k->name, "state_dir") == 0)
		buf_append_str(def, k->def);
	else
		config_value_text(base, k, def);
	return strcmp(cur->data, def->data) != 0;
}

static int config_show(struct cli *c)
{
	bool all = false;
	const struct cli_opt opts[] = { { "all", NULL, &all } };
	if (!cli_args(c, opts, ARRAY_LEN(opts), 0, 0, ""))
		return CLI_USAGE;
	if (!cli_load_config(c))
		return CLI_ERROR;
	struct settings *base = load_baseline(c->s);
	if (base == NULL)
		return CLI_ERROR;
	const char *path = config_effective_path(c->config_path);
	size_t n;
	const struct config_key *keys = config_keys(&n);
	struct buf cur = BUF_INIT, def = BUF_INIT, range = BUF_INIT;
	printf("# effective configuration (%s%s)\n", path ? "file " : "", path ? path : "built-in defaults");
	printf("# a line marked '# changed' differs from the built-in default\n");
	for (size_t i = 0; i < n; i++) {
		const struct config_key *k = &keys[i];
		bool changed = differs(c->s, base, k, &cur, &def);
		if (all) {
			buf_reset(&range);
			range_text(k, &range);
			printf("\n# %s\n", k->doc);
			printf("# %s; default: %s", type_name(k->type), k->def[0] ? k->def : "\"\"");
			if (range.len)
				printf("; range: %s", range.data);
			printf("; %s\n", k->reloadable ? "reloadable with SIGHUP" : "needs a restart");
		}
		if (changed)
			printf("# changed (default: %s)\n", def.len ? def.data : "\"\"");
		print_value_line(k->name, cur.data);
	}
	buf_free(&cur);
	buf_free(&def);
	buf_free(&range);
	config_free(&base);
	return CLI_OK;
}

/* Escapes what would break a Markdown table cell ('|') or be taken for an
 * HTML tag ("<state_dir>"). */
static void md_cell(const char *s, struct buf *out)
{
	for (; *s; s++) {
		if (*s == '|')
			buf_append_str(out, "\\|");
		else if (*s == '<')
			buf_append_str(out, "&lt;");
		else if (*s == '>')
			buf_append_str(out, "&gt;");
		else
			buf_append_char(out, *s);
	}
}

static int config_doc(struct cli *c)
{
	if (!cli_args(c, NULL, 0, 0, 0, ""))
		return CLI_USAGE;
	size_t n;
	const struct config_key *keys = config_keys(&n);
	struct buf out = BUF_INIT, range = BUF_INIT;
	buf_printf(&out,
		"# Strata configuration reference\n"
		"\n"
		"This file is generated by `strata config doc` from the settings table in\n"
		"`src/config/config.c`; edit the table, not this file.\n"
		"\n"
		"## File format\n"
		"\n"
		"Strata reads `%s` when it exists (or the file named with `-c FILE`).\n"
		"Every setting has a built-in default, so the file may be empty or absent.\n"
		"\n"
		"* One `key = value` per line; blank lines are ignored.\n"
		"* `#` starts a comment that runs to the end of the line; inside a\n"
		"  double-quoted value it is an ordinary character.\n"
		"* A value may be enclosed in double quotes (`user = \"strata\"`); the quotes\n"
		"  are removed.  `\"\"` is the empty string.\n"
		"* Unknown keys, malformed values and values out of range are errors that\n"
		"  name the file and line; nothing is silently ignored.\n"
		"* `-o key=value` on the command line overrides the file (repeatable; the\n"
		"  last one wins).  `strata config check` validates, `strata config show`\n"
		"  prints the effective values and marks those that differ from the default.\n"
		"\n"
		"Value types:\n"
		"\n"
		"* **size**: bytes, with an optional unit `k`, `M`, `G` or `T` (powers of\n"
		"  1024; `kb`, `KiB` and so on are accepted too): `512k`, `50M`, `2G`.\n"
		"* **duration**: `250ms`, `30s`, `5m`, `2h`, `1d`; a bare number is seconds.\n"
		"* **boolean**: `yes`/`no`, `true`/`false`, `on`/`off`, `1`/`0`.\n"
		"* **choice**: one of the listed words (case-insensitive).\n"
		"\n"
		"**Reloadable** settings take effect for new sessions when the daemon gets\n"
		"SIGHUP; the others need a restart (a reload names any that changed).\n"
		"\n"
		"Paths left empty are derived from `state_dir` when the file is loaded.\n"
		"\n"
		"## Settings\n"
		"\n"
		"| Setting | Type | Default | Range | Reloadable | Description |\n"
		"|---|---|---|---|---|---|\n",
		CONFIG_DEFAULT_PATH);
	for (size_t i = 0; i < n; i++) {
		const struct config_key *k = &keys[i];
		buf_reset(&range);
		range_text(k, &range);
		buf_printf(&out, "| `%s` | %s | ", k->name, type_name(k->type));
		if (k->def[0]) {
			buf_append_str(&out, "`");
			md_cell(k->def, &out);
			buf_append_str(&out, "`");
		} else {
			buf_append_str(&out, "(empty)");
		}
		buf_append_str(&out, " | ");
		md_cell(range.len ? range.data : "", &out);
		buf_printf(&out, " | %s | ", k->reloadable ? "yes" : "no");
		md_cell(k->doc, &out);
		buf_append_str(&out, " |\n");
	}
	fwrite(out.data, 1, out.len, stdout);
	buf_free(&out);
	buf_free(&range);
	return CLI_OK;
}

int cli_cmd_config(struct cli *c)
{
	if (c->n_args == 0)
		return cli_usage_error(c, "missing subcommand");
	const char *sub = c->args[0];
	if (strcmp(sub, "check") == 0)
		return config_check(c);
	if (strcmp(sub, "show") == 0)
		return config_show(c);
	if (strcmp(sub, "doc") == 0)
		return config_doc(c);
	return cli_usage_error(c, "unknown subcommand 'config %s'", sub);
}
