/*
 * main.c - the `strata` command: global options, the command table, help.
 *
 *   strata [-c FILE] [-o KEY=VALUE]... COMMAND [ARGS]...
 *
 * -c and -o are accepted anywhere on the line (before or after the command
 * word), so `strata user list -c test.conf` works as well as the usual
 * order; "--" ends option processing.  Each command parses its own
 * --long options from what is left (cli_parse_opts).
 *
 * Exit codes: 0 success, 1 error, 2 usage error (unknown command or
 * option, missing argument), 3 `status` found no daemon.  Help asked for
 * goes to stdout; usage printed because of a mistake goes to stderr.
 *
 * Resources: the settings and the store opened by a command are released
 * before exit, so a sanitizer build reports real leaks only.
 */
#include "cli.h"
#include "server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmd_serve(struct cli *c);
static int cmd_version(struct cli *c);

static const struct cli_command commands[] = {
	{ "serve", cmd_serve, "run the mail server (the daemon)",
	  "  strata serve [-c FILE] [-o KEY=VALUE]...\n"
	  "      Runs until SIGTERM or SIGINT; SIGHUP reloads the configuration.\n" },
	{ "domain", cli_cmd_domain, "add, delete or list local domains",
	  "  strata domain add NAME\n"
	  "  strata domain del NAME        (refused while accounts or aliases use it)\n"
	  "  strata domain list\n" },
	{ "user", cli_cmd_user, "manage accounts: add, del, passwd, list, show, quota, import",
	  "  strata user add ADDRESS [--quota-bytes SIZE] [--quota-messages N]\n"
	  "                          [--password-stdin | --password-hash HASH]\n"
	  "  strata user del ADDRESS\n"
	  "  strata user passwd ADDRESS [--password-stdin | --password-hash HASH]\n"
	  "  strata user list [DOMAIN]\n"
	  "  strata user show ADDRESS\n"
	  "  strata user quota ADDRESS BYTES MESSAGES   (0 or 'unlimited' for no limit)\n"
	  "  strata user import FILE [--format csv|passwd] [--create-domains]\n"
	  "\n"
	  "  The password is read from stdin when --password-stdin is given or stdin is\n"
	  "  not a terminal (first line); otherwise it is asked twice with echo off.\n"
	  "  It is never taken from the command line.  SIZE accepts k, M, G, T suffixes.\n" },
	{ "alias", cli_cmd_alias, "manage aliases and catch-alls",
	  "  strata alias add SOURCE TARGET[,TARGET...]   (SOURCE '@domain' is the catch-all)\n"
	  "  strata alias del SOURCE\n"
	  "  strata alias list\n" },
	{ "mailbox", cli_cmd_mailbox, "list an account's mailboxes",
	  "  strata mailbox list ADDRESS\n" },
	{ "mail", cli_cmd_mail, "list messages or print one",
	  "  strata mail list ADDRESS [MAILBOX]      (default INBOX)\n"
	  "  strata mail cat ADDRESS UID [MAILBOX]   (raw message on stdout)\n" },
	{ "tier", cli_cmd_tier, "storage tiers: status, policy, move, verify, checkpoint, rebuild",
	  "  strata tier status\n"
	  "  strata tier policy\n"
	  "  strata tier move [--account ADDRESS] [--folder NAME] [--older-than AGE] --to TIER\n"
	  "  strata tier verify            (exit 1 when the index and the tiers disagree)\n"
	  "  strata tier checkpoint        (write a heat checkpoint now)\n"
	  "  strata tier rebuild           (tier state from the blobs on disk and the newest checkpoint)\n" },
	{ "status", cli_cmd_status, "daemon metrics and index figures",
	  "  strata status\n"
	  "      Asks the daemon's admin endpoint (admin.listen, loopback only) for its\n"
	  "      metrics and prints a summary, then the index figures.  Exit code 3 when\n"
	  "      the daemon does not answer.\n" },
	{ "guard", cli_cmd_guard, "the running daemon's connection guard: status, ban, unban, allow",
	  "  strata guard status\n"
	  "  strata guard ban ADDR [DURATION]    (default 1h)\n"
	  "  strata guard unban ADDR             (at once; also forgets its offences)\n"
	  "  strata guard allow ADDR|CIDR        (beats every limit and ban; kept across restarts)\n" },
	{ "config", cli_cmd_config, "check, show or document the configuration",
	  "  strata config check\n"
	  "  strata config show [--all]\n"
	  "  strata config doc              (Markdown reference of every setting)\n" },
	{ "queue", cli_cmd_queue, "the outbound queue: list, show, flush, delete",
	  "  strata queue list\n"
	  "  strata queue show ID          (ID: an entry number, or a queue id for all its entries)\n"
	  "  strata queue flush            (every deferred entry due now)\n"
	  "  strata queue delete ID        (no bounce is sent)\n" },
	{ "store", cli_cmd_store, "verify, back up or rebuild the index", "  strata store verify | backup | rebuild    (rebuild: daemon stopped; docs/STORAGE.md)\n" },
	{ "version", cmd_version, "print the version", "  strata version\n" },
};

static void print_global_usage(FILE *fp)
{
	fprintf(fp, "usage: strata [-c FILE] [-o KEY=VALUE]... COMMAND [ARGS]...\n"
		    "\n"
		    "Options, accepted before or after the command:\n"
		    "  -c FILE        configuration file (default %s, if it exists)\n"
		    "  -o KEY=VALUE   override one setting; may be repeated\n"
		    "  -h, --help     show help (for a command: strata COMMAND --help)\n"
		    "\n"
		    "Commands:\n",
		CONFIG_DEFAULT_PATH);
	for (size_t i = 0; i < ARRAY_LEN(commands); i++)
		fprintf(fp, "  %-9s %s\n", commands[i].name, commands[i].summary);
	fprintf(fp, "  %-9s %s\n", "help", "show this text, or a command's usage");
	fprintf(fp, "\nRun 'strata help COMMAND' for the usage of one command.\n");
}

static void print_command_usage(FILE *fp, const struct cli_command *cmd)
{
	fprintf(fp, "usage:\n%s", cmd->usage);
}

static const struct cli_command *find_command(const char *name)
{
	for (size_t i = 0; i < ARRAY_LEN(commands); i++) {
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	}
	return NULL;
}

static int cmd_serve(struct cli *c)
{
	if (c->n_args > 0)
		return cli_usage_error(c, "unexpected argument '%s'", c->args[0]);
	if (!cli_load_config(c))
		return CLI_ERROR;
	return server_run(c->s, c->config_path, c->overrides, c->n_over);
}

static int cmd_version(struct cli *c)
{
	if (c->n_args > 0)
		return cli_usage_error(c, "unexpected argument '%s'", c->args[0]);
	printf("strata %s\n", STRATA_VERSION);
	return CLI_OK;
}

struct global_opts {
	bool help;
	bool version;
};

/* Takes -c/-o/-h out of argv, anywhere; the rest goes to c->args in order.
 * Returns false after printing a usage error. */
static bool parse_global(int argc, char **argv, struct cli *c, struct global_opts *g)
{
	c->args = xcalloc((size_t)argc + 1, sizeof(*c->args));
	c->overrides = xcalloc((size_t)argc + 1, sizeof(*c->overrides));
	bool only_pos = false;
	for (int i = 1; i < argc; i++) {
		char *a = argv[i];
		if (only_pos) {
			c->args[c->n_args++] = a;
			continue;
		}
		if (strcmp(a, "--") == 0) {
			/* kept so a command's own option parser stops there too */
			c->args[c->n_args++] = a;
			only_pos = true;
			continue;
		}
		enum { OPT_CONFIG, OPT_OVERRIDE } which;
		char *val = NULL;
		if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
			which = OPT_CONFIG;
		} else if (strncmp(a, "--config=", 9) == 0) {
			which = OPT_CONFIG;
			val = a + 9;
		} else if (strncmp(a, "-c", 2) == 0) {
			which = OPT_CONFIG;
			val = a + 2;
		} else if (strcmp(a, "-o") == 0) {
			which = OPT_OVERRIDE;
		} else if (strncmp(a, "-o", 2) == 0) {
			which = OPT_OVERRIDE;
			val = a + 2;
		} else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			g->help = true;
			continue;
		} else if (strcmp(a, "--version") == 0) {
			g->version = true;
			continue;
		} else {
			c->args[c->n_args++] = a;
			continue;
		}
		if (val == NULL) {
			if (i + 1 >= argc) {
				fprintf(stderr, "strata: option '%s' needs a value\n", a);
				return false;
			}
			val = argv[++i];
		}
		if (which == OPT_CONFIG)
			c->config_path = val;
		else
			c->overrides[c->n_over++] = val;
	}
	return true;
}

static int run(struct cli *c, const struct global_opts *g)
{
	if (g->version && c->n_args == 0)
		return cmd_version(c);
	if (c->n_args == 0) {
		print_global_usage(g->help ? stdout : stderr);
		return g->help ? CLI_OK : CLI_USAGE;
	}
	const char *word = c->args[0];
	if (strcmp(word, "help") == 0) {
		if (c->n_args == 1) {
			print_global_usage(stdout);
			return CLI_OK;
		}
		const struct cli_command *cmd = find_command(c->args[1]);
		if (cmd == NULL) {
			fprintf(stderr, "strata: unknown command '%s'\n\n", c->args[1]);
			print_global_usage(stderr);
			return CLI_USAGE;
		}
		print_command_usage(stdout, cmd);
		return CLI_OK;
	}
	const struct cli_command *cmd = find_command(word);
	if (cmd == NULL) {
		fprintf(stderr, "strata: unknown command '%s'\n\n", word);
		print_global_usage(stderr);
		return CLI_USAGE;
	}
	if (g->help) {
		print_command_usage(stdout, cmd);
		return CLI_OK;
	}
	c->cmd = cmd;
	c->args++;
	c->n_args--;
	return cmd->run(c);
}

int main(int argc, char **argv)
{
	log_init("strata", false, LOG_LVL_WARN);
	struct cli c;
	memset(&c, 0, sizeof(c));
	struct global_opts g = { false, false };
	int rc = CLI_USAGE;
	if (parse_global(argc, argv, &c, &g)) {
		char **all = c.args; /* run() advances c.args past the command word */
		rc = run(&c, &g);
		c.args = all;
	}
	store_close(&c.st);
	config_free(&c.s);
	free(c.args);
	free(c.pos);
	free(c.overrides);
	if (fflush(stdout) != 0 && rc == CLI_OK) {
		cli_error("cannot write the output: %m");
		rc = CLI_ERROR;
	}
	return rc;
}
