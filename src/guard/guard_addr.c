/*
 * guard_addr.c - source addresses for the guard: normalisation (an
 * IPv4-mapped IPv6 peer is the IPv4 address it carries, so a dual-stack
 * listener cannot be used to double a client's limits), prefix masking,
 * allowlist CIDRs and the keyed bucket hash.
 *
 * Pure functions: thread-safe, no allocation except in
 * guard_cidr_parse_list (start-up and reload only).
 */
#include "guard_int.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t v4_mapped_prefix[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

bool guard_addr_from_sockaddr(const struct sockaddr *sa, socklen_t len, struct guard_addr *out)
{
	memset(out, 0, sizeof(*out));
	if (sa == NULL)
		return false;
	if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		out->family = 4;
		memcpy(out->b, &in->sin_addr, 4);
		return true;
	}
	if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		const uint8_t *b = in6->sin6_addr.s6_addr;
		if (memcmp(b, v4_mapped_prefix, sizeof(v4_mapped_prefix)) == 0) {
			out->family = 4;
			memcpy(out->b, b + 12, 4);
		} else {
			out->family = 6;
			memcpy(out->b, b, 16);
		}
		return true;
	}
	return false;
}

bool guard_addr_parse(const char *text, struct guard_addr *out)
{
	memset(out, 0, sizeof(*out));
	if (inet_pton(AF_INET, text, out->b) == 1) {
		out->family = 4;
		return true;
	}
	uint8_t b[16];
	if (inet_pton(AF_INET6, text, b) != 1)
		return false;
	if (memcmp(b, v4_mapped_prefix, sizeof(v4_mapped_prefix)) == 0) {
		out->family = 4;
		memcpy(out->b, b + 12, 4);
	} else {
		out->family = 6;
		memcpy(out->b, b, 16);
	}
	return true;
}

void guard_addr_format(const struct guard_addr *a, char *out, size_t outlen)
{
	if (inet_ntop(a->family == 4 ? AF_INET : AF_INET6, a->b, out, (socklen_t)outlen) == NULL)
		snprintf(out, outlen, "?");
}

/* Keeps the first `bits` bits of src (width bytes) in dst, zeroes the rest. */
static void mask_bits(const uint8_t *src, unsigned bits, size_t width, uint8_t *dst)
{
	memset(dst, 0, 16);
	size_t full = bits / 8;
	if (full > width)
		full = width;
	memcpy(dst, src, full);
	if (full < width && bits % 8 != 0)
		dst[full] = (uint8_t)(src[full] & (uint8_t)(0xff00u >> (bits % 8)));
}

void guard_key_make(const struct guard_addr *a, unsigned level, unsigned prefix, struct guard_key *k)
{
	size_t width = a->family == 4 ? 4 : 16;
	if (prefix > width * 8)
		prefix = (unsigned)(width * 8);
	memset(k, 0, sizeof(*k));
	k->family = a->family;
	k->level = (uint8_t)level;
	k->prefix = (uint8_t)prefix;
	mask_bits(a->b, prefix, width, k->b);
}

uint64_t guard_key_hash(const struct guard_key *k, const uint8_t hash_key[crypto_shorthash_KEYBYTES])
{
	uint8_t in[3 + 16], out[crypto_shorthash_BYTES];
	in[0] = k->family;
	in[1] = k->level;
	in[2] = k->prefix;
	memcpy(in + 3, k->b, 16);
	crypto_shorthash(out, in, sizeof(in), hash_key);
	uint64_t h;
	memcpy(&h, out, sizeof(h));
	return h;
}

bool guard_cidr_match(const struct guard_cidr *c, const struct guard_addr *a)
{
	if (c->family != a->family)
		return false;
	uint8_t m[16];
	mask_bits(a->b, c->bits, a->family == 4 ? 4 : 16, m);
	return memcmp(m, c->b, 16) == 0;
}

/* One "address[/bits]" item. */
static bool cidr_parse_item(const char *item, struct guard_cidr *c)
{
	char addr[64];
	const char *slash = strchr(item, '/');
	size_t alen = slash ? (size_t)(slash - item) : strlen(item);
	if (alen == 0 || alen >= sizeof(addr))
		return false;
	memcpy(addr, item, alen);
	addr[alen] = '\0';
	struct guard_addr a;
	if (!guard_addr_parse(addr, &a))
		return false;
	unsigned max = a.family == 4 ? 32 : 128;
	/* An IPv4-mapped form written as IPv6 counts its prefix in IPv6 bits. */
	bool mapped = a.family == 4 && strchr(addr, ':') != NULL;
	uint64_t bits = mapped ? 128 : max;
	if (slash != NULL) {
		if (slash[1] == '\0' || strlen(slash + 1) > 3 || !str_parse_u64(slash + 1, &bits) ||
		    bits > (mapped ? 128 : max))
			return false;
	}
	if (mapped)
		bits = bits >= 96 ? bits - 96 : 0;
	c->family = a.family;
	c->bits = (uint8_t)bits;
	mask_bits(a.b, (unsigned)bits, a.family == 4 ? 4 : 16, c->b);
	return true;
}

bool guard_cidr_parse_list(const char *list, struct guard_cidr **out_r, size_t *n_r, char **error_r)
{
	*out_r = NULL;
	*n_r = 0;
	char *copy = xstrdup(list != NULL ? list : ""), *save = NULL;
	struct guard_cidr *v = NULL;
	size_t n = 0;
	bool ok = true;
	for (char *tok = strtok_r(copy, ",", &save); tok != NULL && ok; tok = strtok_r(NULL, ",", &save)) {
		char *item = str_trim(tok);
		if (*item == '\0')
			continue;
		if (n >= CONFIG_MAX_ALLOW) {
			*error_r = xasprintf("guard.allow: more than %d entries", CONFIG_MAX_ALLOW);
			ok = false;
			break;
		}
		v = xreallocarray(v, n + 1, sizeof(*v));
		if (!cidr_parse_item(item, &v[n])) {
			*error_r = xasprintf("guard.allow: '%s' is not an address or address/prefix", item);
			ok = false;
			break;
		}
		n++;
	}
	free(copy);
	if (!ok) {
		free(v);
		return false;
	}
	*out_r = v;
	*n_r = n;
	return true;
}
