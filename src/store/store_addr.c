/*
 * store_addr.c - syntax of the addresses and domains the store accepts.
 *
 * Owns: validation and normalisation (lower-casing) of administrator input
 * before it reaches the index.  Pure functions, thread-safe, no allocation
 * except the error string.
 *
 * Rules (docs/STORAGE.md):
 *  - domain: labels of [a-z0-9-], 1..63 bytes each, not starting or ending
 *    with '-' (RFC 1123 host names; IDNs in their xn-- form), separated by
 *    single dots, at most 253 bytes, no trailing dot.
 *  - local part: an RFC 5322 dot-atom of atext, at most 64 bytes.  Quoted
 *    local parts and non-ASCII (SMTPUTF8) addresses are not accepted for
 *    accounts or aliases.
 * Everything is lower-cased first, so "User@Example.ORG" is stored as
 * "user@example.org"; lookups lower-case too.
 */
#include "store_internal.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define ESC_MAX 128

static void ATTR_PRINTF(2, 3) set_error(char **error_r, const char *fmt, ...)
{
	if (error_r == NULL)
		return;
	va_list ap;
	va_start(ap, fmt);
	*error_r = xvasprintf(fmt, ap);
	va_end(ap);
}

/* User input is echoed in errors: escaped and bounded. */
static const char *esc(const char *in, char out[ESC_MAX])
{
	return log_escape(in, strnlen(in, 4 * ESC_MAX), out, ESC_MAX);
}

static bool is_ldh(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
}

/* RFC 5322 atext, lower-case letters only (input is lower-cased first). */
static bool is_atext(int c)
{
	if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
		return true;
	return c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

/* Lower-cases at most max bytes of in into out; false if in is longer. */
static bool lower_copy(const char *in, char *out, size_t max)
{
	size_t n = strnlen(in, max + 1);
	if (n > max)
		return false;
	for (size_t i = 0; i < n; i++)
		out[i] = (char)tolower((unsigned char)in[i]);
	out[n] = '\0';
	return true;
}

static bool domain_syntax_ok(const char *d)
{
	size_t len = strlen(d);
	if (len == 0 || len > STORE_DOMAIN_MAX)
		return false;
	const char *label = d;
	for (size_t i = 0; i <= len; i++) {
		if (d[i] != '.' && d[i] != '\0') {
			if (!is_ldh((unsigned char)d[i]))
				return false;
			continue;
		}
		size_t llen = (size_t)(d + i - label);
		if (llen == 0 || llen > 63 || label[0] == '-' || label[llen - 1] == '-')
			return false;
		label = d + i + 1;
	}
	return true;
}

static bool local_syntax_ok(const char *l, size_t len)
{
	if (len == 0 || len > STORE_LOCAL_MAX || l[0] == '.' || l[len - 1] == '.')
		return false;
	for (size_t i = 0; i < len; i++) {
		if (l[i] == '.') {
			if (l[i + 1] == '.')
				return false;
		} else if (!is_atext((unsigned char)l[i])) {
			return false;
		}
	}
	return true;
}

bool store_addr_domain(const char *in, char out[STORE_DOMAIN_MAX + 1], char **error_r)
{
	char e[ESC_MAX];
	if (!lower_copy(in, out, STORE_DOMAIN_MAX) || !domain_syntax_ok(out)) {
		set_error(error_r,
			  "invalid domain '%s': expected labels of a-z, 0-9 and '-' (1-63 characters, "
			  "not starting or ending with '-'), separated by dots, at most 253 characters",
			  esc(in, e));
		return false;
	}
	return true;
}

/* Splits and checks local@domain (local may be empty when allow_empty_local). */
static bool address_common(const char *in, char out[STORE_ADDRESS_MAX + 1], bool allow_empty_local,
			   char **error_r)
{
	char e[ESC_MAX];
	if (!lower_copy(in, out, STORE_ADDRESS_MAX)) {
		set_error(error_r, "address '%s' is too long (at most 318 characters)", esc(in, e));
		return false;
	}
	char *at = strrchr(out, '@');
	if (at == NULL) {
		set_error(error_r, "invalid address '%s': expected local@domain", esc(in, e));
		return false;
	}
	if (!domain_syntax_ok(at + 1)) {
		set_error(error_r, "invalid domain in address '%s'", esc(in, e));
		return false;
	}
	size_t llen = (size_t)(at - out);
	if (llen == 0 && allow_empty_local)
		return true;
	if (!local_syntax_ok(out, llen)) {
		set_error(error_r,
			  "invalid local part in address '%s': expected at most 64 characters of "
			  "a-z, 0-9 and !#$%%&'*+-/=?^_`{|}~ in dot-separated words",
			  esc(in, e));
		return false;
	}
	return true;
}

bool store_addr_address(const char *in, char out[STORE_ADDRESS_MAX + 1], char **error_r)
{
	return address_common(in, out, false, error_r);
}

bool store_addr_alias_source(const char *in, char out[STORE_ADDRESS_MAX + 1], char **error_r)
{
	return address_common(in, out, true, error_r);
}

const char *store_addr_domain_part(const char *address)
{
	const char *at = strrchr(address, '@');
	return at ? at + 1 : address;
}
