/*
 * core_str.c - small string and number parsing helpers, strict base64.
 *
 * All parsers reject trailing garbage and overflow; none allocate.
 */
#include "core.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

bool str_ieq(const char *a, const char *b)
{
	return strcasecmp(a, b) == 0;
}

bool str_istarts(const char *s, const char *prefix)
{
	return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

void str_lower(char *s)
{
	for (; *s; s++)
		*s = (char)tolower((unsigned char)*s);
}

static bool base64_octet(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/' ||
	       c == '=';
}

bool base64_decode_strict(const char *b64, size_t len, void *out, size_t cap, size_t *n_r)
{
	*n_r = 0;
	if (len == 0)
		return true;
	if (len % 4 != 0)
		return false;
	for (size_t i = 0; i < len; i++)
		if (!base64_octet((unsigned char)b64[i]))
			return false;
	const char *end = NULL;
	if (sodium_base642bin(out, cap, b64, len, NULL, n_r, &end, sodium_base64_VARIANT_ORIGINAL) != 0)
		return false;
	return end == b64 + len;
}

char *str_trim(char *s)
{
	while (*s && isspace((unsigned char)*s))
		s++;
	size_t n = strlen(s);
	while (n > 0 && isspace((unsigned char)s[n - 1]))
		s[--n] = '\0';
	return s;
}

bool str_parse_u64(const char *s, uint64_t *out)
{
	if (s == NULL || !isdigit((unsigned char)*s))
		return false;
	errno = 0;
	char *end;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0')
		return false;
	*out = v;
	return true;
}

/* Parses "<digits><suffix>" where suffix is looked up in a table. */
static bool parse_with_unit(const char *s, const char *const *units, const uint64_t *mult,
			    size_t n_units, uint64_t *out)
{
	if (s == NULL || !isdigit((unsigned char)*s))
		return false;
	errno = 0;
	char *end;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno != 0)
		return false;
	for (size_t i = 0; i < n_units; i++) {
		if (strcasecmp(end, units[i]) == 0) {
			uint64_t r;
			if (__builtin_mul_overflow((uint64_t)v, mult[i], &r))
				return false;
			*out = r;
			return true;
		}
	}
	return false;
}

bool str_parse_size(const char *s, uint64_t *out)
{
	static const char *const units[] = { "", "b", "k", "kb", "kib", "m", "mb", "mib",
					     "g", "gb", "gib", "t", "tb", "tib" };
	static const uint64_t K = 1024, M = 1024 * 1024, G = 1024ull * 1024 * 1024,
			      T = 1024ull * 1024 * 1024 * 1024;
	static const uint64_t mult[] = { 1, 1, K, K, K, M, M, M, G, G, G, T, T, T };
	return parse_with_unit(s, units, mult, ARRAY_LEN(units), out);
}

bool str_parse_duration_ms(const char *s, uint64_t *out_ms)
{
	static const char *const units[] = { "", "ms", "s", "m", "min", "h", "d" };
	static const uint64_t mult[] = { 1000, 1, 1000, 60000, 60000, 3600000, 86400000 };
	return parse_with_unit(s, units, mult, ARRAY_LEN(units), out_ms);
}

bool str_parse_bool(const char *s, bool *out)
{
	static const char *const yes[] = { "yes", "true", "on", "1" };
	static const char *const no[] = { "no", "false", "off", "0" };
	for (size_t i = 0; i < ARRAY_LEN(yes); i++) {
		if (strcasecmp(s, yes[i]) == 0) {
			*out = true;
			return true;
		}
		if (strcasecmp(s, no[i]) == 0) {
			*out = false;
			return true;
		}
	}
	return false;
}

bool str_ct_equal(const void *a, const void *b, size_t n)
{
	const volatile unsigned char *x = a, *y = b;
	unsigned char d = 0;
	for (size_t i = 0; i < n; i++)
		d |= x[i] ^ y[i];
	return d == 0;
}
