/*
 * smtp_sasl.c - AUTH argument parsing, SASL PLAIN/LOGIN decoding and the
 * sender ownership decision for submission.
 *
 * Contract: see smtp_sasl.h.  Pure functions over caller-owned memory;
 * base64 goes through core's strict decoder (base64_decode_strict, which
 * IMAP and POP3 SASL use too).  Every
 * decoded buffer that held a password is wiped before returning, whatever
 * the outcome.
 */
#include "smtp_sasl.h"

#include <string.h>
#include <strings.h>

#include <sodium.h>

static bool is_blank(char c)
{
	return c == ' ' || c == '\t';
}

enum smtp_sasl_err smtp_auth_parse(const char *arg, size_t len, struct smtp_auth_arg *out)
{
	memset(out, 0, sizeof(*out));
	out->ir = "";
	size_t i = 0;
	while (i < len && !is_blank(arg[i]))
		i++;
	if (i == 0)
		return SMTP_SASL_SYNTAX;
	if (i == 5 && strncasecmp(arg, "PLAIN", 5) == 0)
		out->mech = SMTP_SASL_PLAIN;
	else if (i == 5 && strncasecmp(arg, "LOGIN", 5) == 0)
		out->mech = SMTP_SASL_LOGIN;
	else
		return SMTP_SASL_UNKNOWN_MECH;
	while (i < len && is_blank(arg[i]))
		i++;
	if (i == len)
		return SMTP_SASL_OK;
	size_t start = i;
	while (i < len && !is_blank(arg[i]))
		i++;
	size_t end = i;
	while (i < len && is_blank(arg[i]))
		i++;
	if (i != len)
		return SMTP_SASL_SYNTAX;   /* a second word: no such syntax */
	out->has_ir = true;
	if (end - start == 1 && arg[start] == '=')
		return SMTP_SASL_OK;       /* "=": an empty initial response */
	out->ir = arg + start;
	out->ir_len = end - start;
	return SMTP_SASL_OK;
}

bool smtp_sasl_is_cancel(const char *line, size_t len)
{
	return len == 1 && line[0] == '*';
}

/* Strict base64 into out[0..cap); false on a bad alphabet, bad padding or
 * a result that does not fit. */
static bool b64_decode(const char *b64, size_t len, unsigned char *out, size_t cap, size_t *n_r)
{
	*n_r = 0;
	return len <= SMTP_SASL_B64_MAX && base64_decode_strict(b64, len, out, cap, n_r);
}

enum smtp_sasl_err smtp_sasl_login_field(const char *b64, size_t len, char *out, size_t cap, bool nonempty)
{
	unsigned char raw[SMTP_SASL_PASS_MAX + 1];
	size_t n = 0;
	enum smtp_sasl_err e = SMTP_SASL_OK;
	out[0] = '\0';
	if (!b64_decode(b64, len, raw, sizeof(raw), &n))
		e = SMTP_SASL_BAD_BASE64;
	else if (n >= cap || memchr(raw, '\0', n) != NULL || (nonempty && n == 0))
		e = SMTP_SASL_MALFORMED;
	if (e == SMTP_SASL_OK) {
		memcpy(out, raw, n);
		out[n] = '\0';
	}
	sodium_memzero(raw, sizeof(raw));
	return e;
}

/* Splits raw[0..n) at its two NULs into c; authzid must be empty or the
 * user name itself (no proxy authorization). */
static enum smtp_sasl_err plain_split(const unsigned char *raw, size_t n, struct smtp_sasl_creds *c)
{
	const unsigned char *nul1 = memchr(raw, '\0', n);
	if (nul1 == NULL)
		return SMTP_SASL_MALFORMED;
	const unsigned char *user = nul1 + 1;
	const unsigned char *nul2 = memchr(user, '\0', n - (size_t)(user - raw));
	if (nul2 == NULL)
		return SMTP_SASL_MALFORMED;
	const unsigned char *pass = nul2 + 1;
	size_t authz_len = (size_t)(nul1 - raw);
	size_t user_len = (size_t)(nul2 - user);
	size_t pass_len = n - (size_t)(pass - raw);
	if (user_len == 0 || user_len > SMTP_SASL_USER_MAX || pass_len > SMTP_SASL_PASS_MAX ||
	    memchr(pass, '\0', pass_len) != NULL)
		return SMTP_SASL_MALFORMED;
	if (authz_len > 0 && (authz_len != user_len || strncasecmp((const char *)raw, (const char *)user,
								   user_len) != 0))
		return SMTP_SASL_AUTHZ;
	memcpy(c->user, user, user_len);
	c->user[user_len] = '\0';
	memcpy(c->pass, pass, pass_len);
	c->pass[pass_len] = '\0';
	return SMTP_SASL_OK;
}

enum smtp_sasl_err smtp_sasl_plain(const char *b64, size_t len, struct smtp_sasl_creds *c)
{
	unsigned char raw[2 * SMTP_SASL_USER_MAX + SMTP_SASL_PASS_MAX + 3];
	size_t n = 0;
	enum smtp_sasl_err e;
	memset(c, 0, sizeof(*c));
	if (!b64_decode(b64, len, raw, sizeof(raw), &n))
		e = SMTP_SASL_BAD_BASE64;
	else
		e = plain_split(raw, n, c);
	sodium_memzero(raw, sizeof(raw));
	if (e != SMTP_SASL_OK)
		sodium_memzero(c, sizeof(*c));
	return e;
}

bool smtp_sender_needs_lookup(const char *from, const char *address)
{
	return from[0] != '\0' && strcasecmp(from, address) != 0;
}

enum smtp_sender_verdict smtp_sender_check(const char *from, int64_t account, const char *address,
					   enum status st, const struct rcpt_resolution *res)
{
	if (from[0] == '\0')
		return SMTP_SENDER_NOT_OWNED;
	if (strcasecmp(from, address) == 0)
		return SMTP_SENDER_OWNED;
	if (st == ST_NOT_FOUND || st == ST_INVALID)
		return SMTP_SENDER_NOT_OWNED;   /* unknown here, or another domain */
	if (st != ST_OK)
		return SMTP_SENDER_TEMPFAIL;
	for (size_t i = 0; i < res->n && i < STORE_MAX_EXPANSION; i++)
		if (res->account_ids[i] == account)
			return SMTP_SENDER_OWNED;
	return SMTP_SENDER_NOT_OWNED;
}
