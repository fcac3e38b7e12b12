/*
 * cli_store.c - `strata store verify | backup | rebuild`.
 *
 *   verify    checks the index against the blob files (store_verify); one
 *             line per problem on stdout, a summary on stderr; exit 0
 *             clean, 1 problems found or the check could not run.
 *   backup    one online backup now (store_backup_run); prints its path.
 *             Safe while the daemon runs.
 *   rebuild   a new index from the newest backup plus the blob files
 *             (store_rebuild).  Refused while the index is open elsewhere:
 *             stop the daemon first.
 *
 * None of them goes through cli_open_store: verify and backup must not
 * create an index, and rebuild replaces it.  Run as root, they first
 * become the owner of state_dir (become_state_owner), as every command
 * that touches the store does.
 */
#include "cli.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void print_line(void *ctx, const char *line)
{
	(void)ctx;
	printf("%s\n", line);
}

static int store_verify_cmd(struct cli *c)
{
	if (!cli_args(c, NULL, 0, 0, 0, ""))
		return CLI_USAGE;
	if (!cli_load_config(c) || !cli_become_state_owner(c->s))
		return CLI_ERROR;
	struct store_verify_result r;
	char *err = NULL;
	if (store_verify(c->s, print_line, NULL, &r, &err) != ST_OK) {
		int rc = cli_error("verify: %s", err ? err : "failed");
		free(err);
		return rc;
	}
	fflush(stdout);
	fprintf(stderr, "strata: verified %llu accounts, %llu messages, %llu blob rows, %llu blob files: "
			"%llu problem%s\n",
		(unsigned long long)r.accounts, (unsigned long long)r.messages, (unsigned long long)r.blobs,
		(unsigned long long)r.files, (unsigned long long)r.problems, r.problems == 1 ? "" : "s");
	return r.problems == 0 ? CLI_OK : CLI_ERROR;
}

static int store_backup_cmd(struct cli *c)
{
	if (!cli_args(c, NULL, 0, 0, 0, ""))
		return CLI_USAGE;
	if (!cli_load_config(c) || !cli_become_state_owner(c->s))
		return CLI_ERROR;
	char *path = NULL, *err = NULL;
	if (store_backup_run(c->s, &path, &err) != ST_OK) {
		int rc = cli_error("backup: %s", err ? err : "failed");
		free(err);
		return rc;
	}
	printf("%s\n", path);
	free(path);
	return CLI_OK;
}

static int store_rebuild_cmd(struct cli *c)
{
	if (!cli_args(c, NULL, 0, 0, 0, ""))
		return CLI_USAGE;
	if (!cli_load_config(c) || !cli_become_state_owner(c->s))
		return CLI_ERROR;
	struct store_rebuild_result r;
	char *err = NULL;
	if (store_rebuild(c->s, &r, &err) != ST_OK) {
		int rc = cli_error("rebuild: %s", err ? err : "failed");
		free(err);
		return rc;
	}
	printf("rebuilt from: %s\n"
	       "messages kept: %llu\n"
	       "messages dropped (blob gone): %llu\n"
	       "blobs added from files: %llu\n"
	       "messages added from files: %llu\n"
	       "files naming no account: %llu\n"
	       "files without a valid trailer: %llu\n",
	       r.base, (unsigned long long)r.base_messages, (unsigned long long)r.dropped_messages,
	       (unsigned long long)r.added_blobs, (unsigned long long)r.added_messages,
	       (unsigned long long)r.unplaced, (unsigned long long)r.bad_files);
	return CLI_OK;
}

int cli_cmd_store(struct cli *c)
{
	if (c->n_args == 0)
		return cli_usage_error(c, "missing subcommand");
	const char *sub = c->args[0];
	if (strcmp(sub, "verify") == 0)
		return store_verify_cmd(c);
	if (strcmp(sub, "backup") == 0)
		return store_backup_cmd(c);
	if (strcmp(sub, "rebuild") == 0)
		return store_rebuild_cmd(c);
	return cli_usage_error(c, "unknown subcommand '%s'", sub);
}
