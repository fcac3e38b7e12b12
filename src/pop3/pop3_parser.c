/*
 * pop3_parser.c - the POP3 line reader and command parser.
 *
 * Contract: see pop3_parser.h.  Nothing here allocates: a reader is a
 * fixed buffer of POP3_SASL_LINE_MAX + 1 bytes, and a parsed command keeps
 * its copies inside struct pop3_cmd.
 */
#include "pop3_parser.h"

#include <ctype.h>
#include <string.h>

void pop3_reader_init(struct pop3_reader *r, size_t max)
{
	memset(r, 0, sizeof(*r));
	r->max = max < POP3_SASL_LINE_MAX ? max : POP3_SASL_LINE_MAX;
}

void pop3_reader_reset(struct pop3_reader *r)
{
	r->len = 0;
	r->overflow = false;
	r->done = false;
	r->line[0] = '\0';
}

size_t pop3_reader_feed(struct pop3_reader *r, const char *data, size_t len, enum pop3_rd_event *ev)
{
	if (r->done)
		pop3_reader_reset(r);
	*ev = POP3_RD_NEED_MORE;
	const char *lf = memchr(data, '\n', len);
	size_t take = lf ? (size_t)(lf - data) : len;   /* bytes before the LF */
	if (!r->overflow) {
		if (r->len + take > r->max + 1) {
			/* One byte of slack for the CR before the LF. */
			r->overflow = true;
			r->len = 0;
		} else {
			memcpy(r->line + r->len, data, take);
			r->len += take;
		}
	}
	if (lf == NULL)
		return len;
	if (!r->overflow && r->len > 0 && r->line[r->len - 1] == '\r')
		r->len--;
	if (!r->overflow && r->len > r->max)
		r->overflow = true;
	r->done = true;
	if (r->overflow) {
		r->len = 0;
		r->line[0] = '\0';
		*ev = POP3_RD_TOO_LONG;
	} else {
		r->line[r->len] = '\0';
		*ev = POP3_RD_LINE;
	}
	return take + 1;
}

enum status pop3_parse_command(const char *line, size_t len, struct pop3_cmd *cmd, const char **error_r)
{
	memset(cmd->name, 0, sizeof(cmd->name));
	cmd->n_args = 0;
	cmd->rest = "";
	cmd->store[0] = cmd->rest_store[0] = '\0';
	if (len == 0) {
		*error_r = "Empty command";
		return ST_INVALID;
	}
	if (len > POP3_SASL_LINE_MAX || memchr(line, '\0', len) != NULL) {
		*error_r = "Invalid characters in command";
		return ST_INVALID;
	}
	size_t k = 0;
	while (k < len && line[k] != ' ') {
		if (k >= 4 || !isalpha((unsigned char)line[k])) {
			*error_r = "Unknown command";
			return ST_INVALID;
		}
		cmd->name[k] = (char)toupper((unsigned char)line[k]);
		k++;
	}
	if (k == 0) {
		*error_r = "Unknown command";
		return ST_INVALID;
	}
	if (k == len)
		return ST_OK;
	/* line[k] == ' ' */
	size_t rlen = len - k - 1;
	memcpy(cmd->rest_store, line + k + 1, rlen);
	cmd->rest_store[rlen] = '\0';
	cmd->rest = cmd->rest_store;
	if (strcmp(cmd->name, "PASS") == 0) {
		/* The whole rest is the password, spaces included. */
		if (rlen > 0) {
			cmd->args[0] = cmd->rest;
			cmd->n_args = 1;
		}
		return ST_OK;
	}
	memcpy(cmd->store, line + k + 1, rlen);
	cmd->store[rlen] = '\0';
	char *p = cmd->store;
	for (;;) {
		char *sp = strchr(p, ' ');
		if (sp != NULL)
			*sp = '\0';
		if (*p == '\0') {
			*error_r = "Invalid arguments";
			return ST_INVALID;
		}
		if (cmd->n_args == POP3_ARG_MAX) {
			*error_r = "Too many arguments";
			return ST_INVALID;
		}
		cmd->args[cmd->n_args++] = p;
		if (sp == NULL)
			break;
		p = sp + 1;
	}
	return ST_OK;
}

bool pop3_parse_number(const char *s, uint32_t *n_r)
{
	size_t len = strlen(s);
	if (len == 0 || len > 10)
		return false;
	uint64_t v = 0;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	if (v > UINT32_MAX)
		return false;
	*n_r = (uint32_t)v;
	return true;
}
