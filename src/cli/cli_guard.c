/*
 * cli_guard.c - `strata guard`: the running daemon's connection guard.
 *
 *   strata guard status              the report (budgets, top sources,
 *                                    refusals, offences, bans, allowlist)
 *   strata guard ban ADDR [DURATION] refuse ADDR for DURATION (default 1h)
 *   strata guard unban ADDR          lift the ban at once (and forget the
 *                                    address's offences)
 *   strata guard allow ADDR|CIDR     allowlist at run time (beats every
 *                                    limit and ban; kept across restarts)
 *
 * Every subcommand is one HTTP/1.0 request to the daemon's admin endpoint
 * (the first address of admin.listen, which must be loopback; a wildcard
 * address is asked on its loopback counterpart): GET /guard/status?format=
 * text, or a form-encoded POST /guard/ban|unban|allow.  The exchange has a
 * CLI_ADMIN_TIMEOUT_MS deadline and the answer is capped at
 * CLI_ADMIN_MAX_RESPONSE bytes, so a wedged or hostile listener cannot hang
 * or bloat the command.  The daemon applies a change before it answers:
 * when `unban` returns, the address is let in.
 *
 * Exit: 0 done; 1 the daemon refused (the reason is printed); 2 usage;
 * 3 the daemon does not answer.
 */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- the subcommands -------------------------------------------------------------- */

/* Percent-encodes a form value (everything but unreserved characters). */
static void form_value(struct buf *out, const char *v)
{
	static const char hex[] = "0123456789ABCDEF";
	for (const unsigned char *p = (const unsigned char *)v; *p != '\0'; p++) {
		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		    *p == '-' || *p == '.' || *p == '_' || *p == '~') {
			buf_append(out, (const char *)p, 1);
		} else {
			char e[3] = { '%', hex[*p >> 4], hex[*p & 15] };
			buf_append(out, e, 3);
		}
	}
}

static int guard_request(struct cli *c, const char *method, const char *path, const char *form)
{
	struct buf body = BUF_INIT;
	char *err = NULL;
	int code = 0;
	int got = cli_admin_http(c->s, method, path, form, CLI_ADMIN_TIMEOUT_MS, &code, &body, &err);
	int rc = CLI_OK;
	if (got == 0) {
		(void)cli_error("the daemon does not answer on its admin endpoint (admin.listen %s): is it running?",
				c->s->admin_listen);
		rc = CLI_DOWN;
	} else if (got < 0) {
		rc = cli_error("%s", err);
	} else {
		buf_append(&body, "", 1);
		fputs(body.data, code == 200 ? stdout : stderr);
		rc = code == 200 ? CLI_OK : CLI_ERROR;
	}
	free(err);
	buf_free(&body);
	return rc;
}

int cli_cmd_guard(struct cli *c)
{
	if (c->n_args == 0)
		return cli_usage_error(c, "missing subcommand");
	const char *sub = c->args[0];
	bool status = strcmp(sub, "status") == 0, ban = strcmp(sub, "ban") == 0;
	bool unban = strcmp(sub, "unban") == 0, allow = strcmp(sub, "allow") == 0;
	if (!status && !ban && !unban && !allow)
		return cli_usage_error(c, "unknown subcommand '%s'", sub);
	size_t max = status ? 1 : ban ? 3 : 2, min = status ? 1 : 2;
	if (c->n_args < min || c->n_args > max)
		return cli_usage_error(c, "guard %s takes %s", sub,
				       status ? "no argument" : ban ? "ADDR [DURATION]" : allow ? "ADDR or CIDR" : "ADDR");
	if (ban && c->n_args == 3) {
		uint64_t ms;
		if (!str_parse_duration_ms(c->args[2], &ms) || ms < 1000)
			return cli_usage_error(c, "'%s' is not a duration (30s, 10m, 2h, 7d)", c->args[2]);
	}
	if (!cli_load_config(c))
		return CLI_ERROR;
	if (status)
		return guard_request(c, "GET", "/guard/status?format=text", NULL);
	struct buf form = BUF_INIT;
	buf_printf(&form, "address=");
	form_value(&form, c->args[1]);
	if (ban && c->n_args == 3) {
		buf_printf(&form, "&duration=");
		form_value(&form, c->args[2]);
	}
	buf_append(&form, "", 1);
	char path[32];
	snprintf(path, sizeof(path), "/guard/%s", sub);
	int rc = guard_request(c, "POST", path, form.data);
	buf_free(&form);
	return rc;
}
