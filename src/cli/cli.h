/*
 * cli.h - private interfaces between the files of src/cli/ (the `strata`
 * command).  Not a public header: nothing outside src/cli includes it.
 *
 *   main.c         argument parsing (-c/-o anywhere), the command table, help
 *   cli_common.c   errors, config loading, privilege switch + store opening,
 *                  password input, option parsing and formatting helpers
 *   cli_domain.c   strata domain ...
 *   cli_user.c     strata user ...  (the import engine: cli_import.c/.h)
 *   cli_alias.c    strata alias ...
 *   cli_config.c   strata config ...
 *   cli_status.c   strata status
 *   cli_mail.c     strata mailbox list, strata mail ...
 *
 * Conventions: a command returns its exit code.  0 success, 1 an error
 * ("strata: <message>" on stderr), 2 a usage error (message and usage on
 * stderr), 3 `status` found no daemon.  Output meant for people and
 * scripts goes to stdout, diagnostics to stderr.
 *
 * Single-threaded except for password hashing in import (cli_import.c).
 */
#ifndef STRATA_CLI_H
#define STRATA_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "core.h"
#include "store.h"

enum cli_exit { CLI_OK = 0, CLI_ERROR = 1, CLI_USAGE = 2, CLI_DOWN = 3 };

/* Longest password read from stdin or the terminal, in bytes. */
#define CLI_PASSWORD_MAX 1024

struct cli_command;

struct cli {
	const char *config_path;        /* -c, or NULL */
	char **overrides;               /* -o values, in order */
	size_t n_over;
	char **args;                    /* after the command word */
	size_t n_args;
	char **pos;                     /* positional arguments after the subcommand */
	size_t n_pos;                   /* (set by cli_args; freed at exit) */
	const struct cli_command *cmd;  /* for usage messages */
	struct settings *s;             /* after cli_load_config; freed at exit */
	struct store *st;               /* after cli_open_store; closed at exit */
};

struct cli_command {
	const char *name;
	int (*run)(struct cli *c);
	const char *summary;            /* one line for `strata help` */
	const char *usage;              /* full usage, lines end in '\n' */
};

/* ---- commands (one file each) ---- */
int cli_cmd_domain(struct cli *c);
int cli_cmd_user(struct cli *c);
int cli_cmd_alias(struct cli *c);
int cli_cmd_config(struct cli *c);
int cli_cmd_status(struct cli *c);
int cli_cmd_mailbox(struct cli *c);
int cli_cmd_mail(struct cli *c);
int cli_cmd_store(struct cli *c);
int cli_cmd_tier(struct cli *c);
int cli_cmd_guard(struct cli *c);
int cli_cmd_queue(struct cli *c);

/* ---- cli_admin.c ---- */

#define CLI_ADMIN_TIMEOUT_MS 5000  /* `strata guard`; `strata status` uses 2 s */
/* One HTTP/1.0 request to the daemon's admin endpoint: the first address of
 * admin.listen, loopback only; `form` (or NULL) is sent as a form-encoded
 * body; the whole exchange within timeout_ms.  1: answered, *code_r and the
 * body appended to `body`; 0: nothing answers (not running); -1: *error_r. */
int cli_admin_http(const struct settings *s, const char *method, const char *path, const char *form,
		   unsigned timeout_ms, int *code_r, struct buf *body, char **error_r);

/* ---- cli_common.c ---- */

/* "strata: <message>\n" on stderr.  Returns CLI_ERROR for `return cli_error(...)`. */
int cli_error(const char *fmt, ...) ATTR_PRINTF(1, 2);
/* "strata: <message>\n" and the command's usage on stderr; returns CLI_USAGE. */
int cli_usage_error(const struct cli *c, const char *fmt, ...) ATTR_PRINTF(2, 3);

/* Loads the configuration (-c, -o) into c->s.  Prints the error and returns
 * false on failure. */
bool cli_load_config(struct cli *c);

/*
 * Opens the store read-write (creating it if needed) into c->st, after the
 * privilege rule: run as root, switch to the owner of state_dir when it
 * exists and belongs to another user; create state_dir (0750) owned by the
 * configured `user` when it does not exist and that user does; otherwise
 * stay root.  Loads the configuration first if needed.  Prints the error and
 * returns false on failure.
 */
bool cli_open_store(struct cli *c);
/* As root, becomes the owner of an existing state_dir that belongs to another
 * user (so nothing a command creates there ends up root-owned where the
 * daemon cannot open it), without opening the store.  Not root, a missing or
 * a root-owned state_dir: unchanged.  False (message printed) on failure. */
bool cli_become_state_owner(const struct settings *s);

/* Options of a command: "--name VALUE", "--name=VALUE" or a flag "--name".
 * Exactly one of value / flag is set. */
struct cli_opt {
	const char *name;               /* without the dashes */
	const char **value;
	bool *flag;
};
/*
 * Splits c->args into options (stored through opts) and positional
 * arguments (*pos_r, an array into c->args that the caller frees; *n_pos_r).
 * "--" ends options.  Returns false after printing a usage error for an
 * unknown option or a missing value.
 */
bool cli_parse_opts(struct cli *c, size_t first, const struct cli_opt *opts, size_t n_opts,
		    char ***pos_r, size_t *n_pos_r);

/*
 * The usual entry of a subcommand: parses c->args after the subcommand word
 * (c->args[0]) into options and c->pos / c->n_pos, and checks that there are
 * between min and max positional arguments ("missing <what>" otherwise).
 * Returns false after printing a usage error.
 */
bool cli_args(struct cli *c, const struct cli_opt *opts, size_t n_opts, size_t min, size_t max,
	      const char *what);

/*
 * Reads a new password for `address` into out (outlen bytes, at least
 * CLI_PASSWORD_MAX + 1): the first line of stdin when `from_stdin` or stdin
 * is not a terminal (its newline stripped); otherwise asked twice on
 * /dev/tty with echo off.  Empty, over-long, NUL-containing and (asked
 * twice) mismatched passwords are refused with *error_r set.
 */
bool cli_read_password(const char *address, bool from_stdin, char *out, size_t outlen, char **error_r);

/* Parses a quota: a size ("500M", "2G", "0") or "unlimited" (0). */
bool cli_parse_quota_bytes(const char *s, uint64_t *out);
/* Parses a count or "unlimited" (0). */
bool cli_parse_quota_count(const char *s, uint64_t *out);

/* "1.5 GiB", "512 KiB", "17 B". */
void cli_format_size(uint64_t bytes, char *out, size_t outlen);
/* Local time "2026-11-28 22:03:44 +0000"; "never" for 0. */
void cli_format_time(int64_t t, char *out, size_t outlen);

#endif
