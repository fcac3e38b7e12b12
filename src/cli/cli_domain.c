/*
 * cli_domain.c - `strata domain add|del|list`.
 *
 * A domain is local when it is in the index: mail for it is accepted (for
 * existing accounts and aliases), mail for any other domain is refused as
 * relaying.  Deleting a domain that accounts or aliases still use is
 * refused by the store, so no account is ever orphaned.
 */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void print_name(void *ctx, const char *name)
{
	(void)ctx;
	printf("%s\n", name);
}

static int domain_change(struct cli *c, bool add)
{
	if (!cli_args(c, NULL, 0, 1, 1, "domain name"))
		return CLI_USAGE;
	if (!cli_open_store(c))
		return CLI_ERROR;
	char *err = NULL;
	const char *name = c->pos[0];
	enum status st = add ? store_domain_add(c->st, name, &err) : store_domain_del(c->st, name, &err);
	if (st != ST_OK) {
		int rc = cli_error("%s", err ? err : status_info(st)->smtp_text);
		free(err);
		return rc;
	}
	printf("domain %s %s\n", name, add ? "added" : "deleted");
	return CLI_OK;
}

static int domain_list(struct cli *c)
{
	if (!cli_args(c, NULL, 0, 0, 0, ""))
		return CLI_USAGE;
	if (!cli_open_store(c))
		return CLI_ERROR;
	enum status st = store_domain_list(c->st, print_name, NULL);
	if (st != ST_OK)
		return cli_error("cannot list domains: %s", status_info(st)->smtp_text);
	return CLI_OK;
}

int cli_cmd_domain(struct cli *c)
{
	if (c->n_args == 0)
		return cli_usage_error(c, "missing subcommand");
	const char *sub = c->args[0];
	if (strcmp(sub, "add") == 0)
		return domain_change(c, true);
	if (strcmp(sub, "del") == 0)
		return domain_change(c, false);
	if (strcmp(sub, "list") == 0)
		return domain_list(c);
	return cli_usage_error(c, "unknown subcommand 'domain %s'", sub);
}
