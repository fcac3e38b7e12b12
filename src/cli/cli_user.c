/*
 * cli_user.c - `strata user add|del|passwd|list|show|quota|import`.
 *
 * Passwords: never on argv.  `add` and `passwd` read the new password as
 * cli_read_password() describes (stdin, or twice on the terminal) and store
 * its Argon2id hash; --password-hash takes a ready hash instead (for
 * provisioning scripts: a hash is not the secret), which must be of a
 * scheme Strata can verify.  The clear text is wiped as soon as it is
 * hashed.
 *
 * Quotas are bytes and messages; 0 (or "unlimited") means no limit.  New
 * accounts get quota.default_bytes / quota.default_messages unless told
 * otherwise.
 *
 * `import` drives cli_import.c: read and check the whole file, check the
 * domains, hash clear-text passwords on every core, then one transaction.
 */
#include "cli.h"
#include "cli_import.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"

/* Fills hash (AUTH_HASH_MAX) from --password-hash or by asking. */
static bool obtain_hash(const char *address, const char *given_hash, bool from_stdin, char *hash)
{
	if (given_hash) {
		if (str_istarts(given_hash, "{PLAIN}")) {
			cli_error("--password-hash: a {PLAIN} password on the command line is visible to "
				  "every local user; use --password-stdin");
			return false;
		}
		if (!auth_hash_normalize(given_hash, hash, AUTH_HASH_MAX)) {
			cli_error("--password-hash: not a supported, well-formed hash (ARGON2ID, ARGON2I, "
				  "SHA512-CRYPT, SHA256-CRYPT, BLF-CRYPT)");
			return false;
		}
		return true;
	}
	char pw[CLI_PASSWORD_MAX + 1];
	char *err = NULL;
	bool ok = cli_read_password(address, from_stdin, pw, sizeof(pw), &err);
	if (!ok) {
		cli_error("%s", err);
		free(err);
	} else if (!auth_hash_password(pw, hash, AUTH_HASH_MAX)) {
		cli_error("cannot hash the password (Argon2id needs 64 MiB of memory)");
		ok = false;
	}
	explicit_bzero(pw, sizeof(pw));
	return ok;
}

struct domain_probe {
	const char *domain;
	bool found;
};

static void probe_domain(void *ctx, const char *name)
{
	struct domain_probe *p = ctx;
	if (str_ieq(name, p->domain))
		p->found = true;
}

/* Cheap checks before a password is asked for: the address has a local
 * domain and is not taken.  The store repeats them in its transaction. */
static bool precheck_new_account(struct cli *c, const char *address)
{
	const char *at = strrchr(address, '@');
	if (at == NULL || at == address || at[1] == '\0') {
		cli_error("'%s' is not an address of the form user@domain", address);
		return false;
	}
	struct account a;
	if (store_user_get(c->st, address, &a) == ST_OK) {
		cli_error("account %s already exists", a.address);
		return false;
	}
	struct domain_probe p = { at + 1, false };
	enum status st = store_domain_list(c->st, probe_domain, &p);
	if (st != ST_OK) {
		cli_error("cannot list domains: %s", status_info(st)->smtp_text);
		return false;
	}
	if (!p.found) {
		cli_error("%s is not a local domain (add it with `strata domain add %s`)", at + 1, at + 1);
		return false;
	}
	return true;
}

static int report(enum status st, char *err, const char *what)
{
	int rc = cli_error("%s%s%s", what ? what : "", what ? ": " : "",
			   err ? err : status_info(st)->smtp_text);
	free(err);
	return rc;
}

static int user_add(struct cli *c)
{
	const char *qb = NULL, *qm = NULL, *given_hash = NULL;
	bool from_stdin = false;
	const struct cli_opt opts[] = {
		{ "quota-bytes", &qb, NULL },
		{ "quota-messages", &qm, NULL },
		{ "password-stdin", NULL, &from_stdin },
		{ "password-hash", &given_hash, NULL },
	};
	if (!cli_args(c, opts, ARRAY_LEN(opts), 1, 1, "address"))
		return CLI_USAGE;
	if (given_hash && from_stdin)
		return cli_usage_error(c, "--password-hash and --password-stdin exclude each other");
	if (!cli_load_config(c))
		return CLI_ERROR;
	uint64_t quota_bytes = c->s->quota_default_bytes, quota_messages = c->s->quota_default_messages;
	if (qb && !cli_parse_quota_bytes(qb, &quota_bytes))
		return cli_usage_error(c, "--quota-bytes '%s' is not a size (e.g. 500M, 2G, unlimited)", qb);
	if (qm && !cli_parse_quota_count(qm, &quota_messages))
		return cli_usage_error(c, "--quota-messages '%s' is not a number", qm);
	/* the store first: a missing domain should fail before a password is asked */
	if (!cli_open_store(c))
		return CLI_ERROR;
	const char *address = c->pos[0];
	if (!precheck_new_account(c, address))
		return CLI_ERROR;
	char hash[AUTH_HASH_MAX];
	if (!obtain_hash(address, given_hash, from_stdin, hash))
		return CLI_ERROR;
	char *err = NULL;
	enum status st = store_user_add(c->st, address, hash, quota_bytes, quota_messages, &err);
	explicit_bzero(hash, sizeof(hash));
	if (st != ST_OK)
		return report(st, err, NULL);
	printf("account %s added\n", address);
	return CLI_OK;
}

static int user_del(struct cli *c)
{
	if (!cli_args(c, NULL, 0, 1, 1, "address"))
		return CLI_USAGE;
	if (!cli_open_store(c))
		return CLI_ERROR;
	char *err = NULL;
	enum status st = store_user_del(c->st, c->pos[0], &err);
	if (st != ST_OK)
		return report(st, err, NULL);
	printf("account %s deleted, with its mailboxes and messages\n", c->pos[0]);
	return CLI_OK;
}

static int user_passwd(struct cli *c)
{
	const char *given_hash = NULL;
	bool from_stdin = false;
	const struct cli_opt opts[] = {
		{ "password-stdin", NULL, &from_stdin },
		{ "password-hash", &given_hash, NULL },
	};
	if (!cli_args(c, opts, ARRAY_LEN(opts), 1, 1, "address"))
		return CLI_USAGE;
	if (given_hash && from_stdin)
		return cli_usage_error(c, "--password-hash and --password-stdin exclude each other");
	if (!cli_open_store(c))
		return CLI_ERROR;
	const char *address = c->pos[0];
	struct account a;
	enum status st = store_user_get(c->st, address, &a);
	if (st != ST_OK)
		return cli_error(st == ST_NOT_FOUND ? "no such account: %s" : "cannot look up %s", address);
	char hash[AUTH_HASH_MAX];
	if (!obtain_hash(address, given_hash, from_stdin, hash))
		return CLI_ERROR;
	char *err = NULL;
	st = store_user_set_password(c->st, address, hash, &err);
	explicit_bzero(hash, sizeof(hash));
	if (st != ST_OK)
		return report(st, err, NULL);
	printf("password of %s changed\n", address);
	return CLI_OK;
}

static void format_limit(uint64_t v, bool bytes, char *out, size_t outlen)
{
	if (v == 0)
		snprintf(out, outlen, "unlimited");
	else if (bytes)
		cli_format_size(v, out, outlen);
	else
		snprintf(out, outlen, "%llu", (unsigned long long)v);
}

static void print_account_row(void *ctx, const struct account *a)
{
	size_t *count = ctx;
	char used[32], quota[32], mq[32];
	cli_format_size(a->used_bytes, used, sizeof(used));
	format_limit(a->quota_bytes, true, quota, sizeof(quota));
	format_limit(a->quota_messages, false, mq, sizeof(mq));
	if (*count == 0)
		printf("%-40s %21s %21s\n", "ADDRESS", "STORAGE (used/quota)", "MESSAGES (used/quota)");
	char storage[64], msgs[64];
	snprintf(storage, sizeof(storage), "%s/%s", used, quota);
	snprintf(msgs, sizeof(msgs), "%llu/%s", (unsigned long long)a->used_messages, mq);
	printf("%-40s %21s %21s\n", a->address, storage, msgs);
	(*count)++;
}

static int user_list(struct cli *c)
{
	if (!cli_args(c, NULL, 0, 0, 1, ""))
		return CLI_USAGE;
	if (!cli_open_store(c))
		return CLI_ERROR;
	size_t count = 0;
	enum status st = store_user_list(c->st, c->n_pos ? c->pos[0] : NULL, print_account_row, &count);
	if (st != ST_OK)
		return cli_error("cannot list accounts: %s", status_info(st)->smtp_text);
	if (count == 0)
		fprintf(stderr, "strata: no accounts%s%s\n", c->n_pos ? " in " : "", c->n_pos ? c->pos[0] : "");
	return CLI_OK;
}

static void print_mailbox_row(void *ctx, const char *name, const char *special_use, uint32_t uidvalidity,
			      uint32_t uidnext, uint64_t messages)
{
	(void)ctx;
	(void)uidvalidity;
	(void)uidnext;
	printf("  %-24s %-10s %llu message%s\n", name, special_use && special_use[0] ? special_use : "-",
	       (unsigned long long)messages, messages == 1 ? "" : "s");
}

/* "ARGON2ID" from "{ARGON2ID}$argon2id$..." */
static void scheme_of(const char *pwhash, char *out, size_t outlen)
{
	const char *close = pwhash[0] == '{' ? strchr(pwhash, '}') : NULL;
	if (close == NULL)
		snprintf(out, outlen, "(unknown scheme)");
	else
		snprintf(out, outlen, "%.*s", (int)(close - pwhash - 1), pwhash + 1);
}

static int user_show(struct cli *c)
{
	if (!cli_args(c, NULL, 0, 1, 1, "address"))
		return CLI_USAGE;
	if (!cli_open_store(c))
		return CLI_ERROR;
	struct account a;
	enum status st = store_user_get(c->st, c->pos[0], &a);
	if (st == ST_NOT_FOUND)
		return cli_error("no such account: %s", c->pos[0]);
	if (st != ST_OK)
		return cli_error("cannot look up %s: %s", c->pos[0], status_info(st)->smtp_text);
	char qb[32], qm[32], used[32], created[64], login[64], scheme[64];
	format_limit(a.quota_bytes, true, qb, sizeof(qb));
	format_limit(a.quota_messages, false, qm, sizeof(qm));
	cli_format_size(a.used_bytes, used, sizeof(used));
	cli_format_time(a.created, created, sizeof(created));
	cli_format_time(a.last_login, login, sizeof(login));
	scheme_of(a.pwhash, scheme, sizeof(scheme));
	printf("address:     %s\n", a.address);
	printf("password:    %s%s\n", scheme,
	       strcmp(scheme, "PLAIN") == 0 ? " (clear text: set a new one with `strata user passwd`)" : "");
	printf("quota:       %s", qb);
	if (a.quota_bytes)
		printf(" (%llu bytes)", (unsigned long long)a.quota_bytes);
	printf(", %s message%s\n", qm, a.quota_messages == 1 ? "" : "s");
	printf("usage:       %s (%llu bytes", used, (unsigned long long)a.used_bytes);
	if (a.quota_bytes)
		printf(", %.1f%%", 100.0 * (double)a.used_bytes / (double)a.quota_bytes);
	printf("), %llu message%s\n", (unsigned long long)a.used_messages, a.used_messages == 1 ? "" : "s");
	printf("created:     %s\n", created);
	printf("last login:  %s\n", login);
	printf("mailboxes:\n");
	st = store_mailbox_list(c->st, a.address, print_mailbox_row, NULL);
	if (st != ST_OK)
		return cli_error("cannot list the mailboxes of %s: %s", a.address, status_info(st)->smtp_text);
	return CLI_OK;
}

static int user_quota(struct cli *c)
{
	if (!cli_args(c, NULL, 0, 3, 3, "address, bytes and messages"))
		return CLI_USAGE;
	uint64_t bytes, messages;
	if (!cli_parse_quota_bytes(c->pos[1], &bytes))
		return cli_usage_error(c, "'%s' is not a size (e.g. 500M, 2G, 0 or unlimited)", c->pos[1]);
	if (!cli_parse_quota_count(c->pos[2], &messages))
		return cli_usage_error(c, "'%s' is not a number of messages (or unlimited)", c->pos[2]);
	if (!cli_open_store(c))
		return CLI_ERROR;
	char *err = NULL;
	enum status st = store_user_set_quota(c->st, c->pos[0], bytes, messages, &err);
	if (st != ST_OK)
		return report(st, err, NULL);
	char qb[32], qm[32];
	format_limit(bytes, true, qb, sizeof(qb));
	format_limit(messages, false, qm, sizeof(qm));
	printf("quota of %s set to %s, %s messages\n", c->pos[0], qb, qm);
	return CLI_OK;
}

static unsigned cpu_count(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 && n < 1024 ? (unsigned)n : 1;
}

static int user_import(struct cli *c)
{
	const char *format = NULL;
	bool create_domains = false;
	const struct cli_opt opts[] = {
		{ "format", &format, NULL },
		{ "create-domains", NULL, &create_domains },
	};
	if (!cli_args(c, opts, ARRAY_LEN(opts), 1, 1, "file to import"))
		return CLI_USAGE;
	enum import_format fmt = IMPORT_AUTO;
	if (format && !import_format_parse(format, &fmt))
		return cli_usage_error(c, "--format must be csv or passwd, not '%s'", format);
	const char *path = c->pos[0];
	bool use_stdin = strcmp(path, "-") == 0;
	const char *name = use_stdin ? "(stdin)" : path;
	/* read the file before any privilege switch: it may be readable by root only */
	FILE *fp = use_stdin ? stdin : fopen(path, "r");
	if (fp == NULL)
		return cli_error("cannot open %s: %s", path, strerror(errno));
	struct import_list l;
	char *err = NULL;
	uint64_t t0 = time_mono_us();
	bool ok = import_read(fp, name, fmt, &l, &err);
	if (!use_stdin)
		fclose(fp);
	if (!ok) {
		cli_error("%s", err);
		free(err);
		return CLI_ERROR;
	}
	int rc = CLI_ERROR;
	struct import_hash_stats hs = { 0 };
	struct import_result res = { 0 };
	size_t missing = 0;
	if (l.n == 0) {
		cli_error("%s: no accounts in the file", name);
	} else if (!import_check_duplicates(&l, name, &err) || !cli_open_store(c) ||
		   !import_check_domains(c->st, &l, name, create_domains, &missing, &err) ||
		   !import_hash_passwords(&l, name, cpu_count(), isatty(STDERR_FILENO) ? stderr : NULL, &hs,
					  &err) ||
		   import_commit(c->st, c->s, &l, name, create_domains, &res, &err) != ST_OK) {
		if (err)
			cli_error("%s", err);
		cli_error("nothing was imported");
	} else {
		rc = CLI_OK;
	}
	free(err);
	if (rc == CLI_OK) {
		double total = (double)(time_mono_us() - t0) / 1e6;
		printf("imported %zu account%s from %s (%s format) in %.2f s", res.accounts,
		       res.accounts == 1 ? "" : "s", name, import_format_name(l.format), total);
		if (res.domains_created)
			printf("; %zu domain%s created", res.domains_created, res.domains_created == 1 ? "" : "s");
		printf("\n");
		if (hs.hashed)
			printf("hashed %zu clear-text password%s with Argon2id on %u thread%s in %.2f s "
			       "(%.1f per second)\n",
			       hs.hashed, hs.hashed == 1 ? "" : "s", hs.threads, hs.threads == 1 ? "" : "s",
			       hs.seconds, hs.seconds > 0 ? (double)hs.hashed / hs.seconds : 0.0);
	}
	import_list_free(&l);
	return rc;
}

int cli_cmd_user(struct cli *c)
{
	static const struct {
		const char *name;
		int (*fn)(struct cli *c);
	} subs[] = {
		{ "add", user_add }, { "del", user_del }, { "passwd", user_passwd }, { "list", user_list },
		{ "show", user_show }, { "quota", user_quota }, { "import", user_import },
	};
	if (c->n_args == 0)
		return cli_usage_error(c, "missing subcommand");
	for (size_t i = 0; i < ARRAY_LEN(subs); i++) {
		if (strcmp(c->args[0], subs[i].name) == 0)
			return subs[i].fn(c);
	}
	return cli_usage_error(c, "unknown subcommand 'user %s'", c->args[0]);
}
