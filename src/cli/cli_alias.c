/*
 * cli_alias.c - `strata alias add|del|list`.
 *
 * An alias maps a source address to one or more targets (local accounts or
 * other aliases, nested up to the store's limit).  The source "@domain" is
 * that domain's catch-all: it receives mail for every address of the
 * domain that is neither an account nor an alias.  Targets may be given as
 * one comma-separated argument or as several arguments.
 */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void print_alias(void *ctx, const char *source, const char *targets)
{
	(void)ctx;
	printf("%s -> %s\n", source, targets);
}

static int alias_add(struct cli *c)
{
	if (!cli_args(c, NULL, 0, 2, SIZE_MAX, "source and target addresses"))
		return CLI_USAGE;
	if (!cli_open_store(c))
		return CLI_ERROR;
	struct buf targets = BUF_INIT;
	for (size_t i = 1; i < c->n_pos; i++) {
		if (targets.len)
			buf_append_char(&targets, ',');
		buf_append_str(&targets, c->pos[i]);
	}
	char *err = NULL;
	int rc = CLI_OK;
	enum status st = store_alias_add(c->st, c->pos[0], targets.data, &err);
	if (st != ST_OK)
		rc = cli_error("%s", err ? err : status_info(st)->smtp_text);
	else
		printf("alias %s -> %s added\n", c->pos[0], targets.data);
	free(err);
	buf_free(&targets);
	return rc;
}

static int alias_del(struct cli *c)
{
	if (!cli_args(c, NULL, 0, 1, 1, "source address"))
		return CLI_USAGE;
	if (!cli_open_store(c))
		return CLI_ERROR;
	char *err = NULL;
	enum status st = store_alias_del(c->st, c->pos[0], &err);
	if (st != ST_OK) {
		int rc = cli_error("%s", err ? err : status_info(st)->smtp_text);
		free(err);
		return rc;
	}
	printf("alias %s deleted\n", c->pos[0]);
	return CLI_OK;
}

static int alias_list(struct cli *c)
{
	if (!cli_args(c, NULL, 0, 0, 0, ""))
		return CLI_USAGE;
	if (!cli_open_store(c))
		return CLI_ERROR;
	enum status st = store_alias_list(c->st, print_alias, NULL);
	if (st != ST_OK)
		return cli_error("cannot list aliases: %s", status_info(st)->smtp_text);
	return CLI_OK;
}

int cli_cmd_alias(struct cli *c)
{
	if (c->n_args == 0)
		return cli_usage_error(c, "missing subcommand");
	const char *sub = c->args[0];
	if (strcmp(sub, "add") == 0)
		return alias_add(c);
	if (strcmp(sub, "del") == 0)
		return alias_del(c);
	if (strcmp(sub, "list") == 0)
		return alias_list(c);
	return cli_usage_error(c, "unknown subcommand 'alias %s'", sub);
}
