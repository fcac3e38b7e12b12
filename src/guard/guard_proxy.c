/*
 * guard_proxy.c - the PROXY protocol header (HAProxy, versions 1 and 2) that
 * a load balancer sends before the client's first byte: who the client
 * really is.
 *
 * Contract: see guard.h (guard_proxy_parse).  Pure: no I/O, no allocation,
 * reads at most `len` bytes, bounded work (a v1 header is at most 107
 * bytes; a v2 header 16 + GUARD_PROXY_V2_MAX_TLV).  Strict: v1 needs
 * exactly "PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n" with addresses of the
 * named family and ports 0-65535 without leading zeros, or
 * "PROXY UNKNOWN...\r\n"; v2 needs the 12-byte signature, version 2,
 * command LOCAL or PROXY.  LOCAL, UNKNOWN, and v2 families other than
 * TCP over IPv4/IPv6 mean "use the connection's own address" (the
 * balancer's health checks).  Anything else is invalid, and the caller
 * closes the connection.
 */
#include "guard_int.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

static const uint8_t v2_sig[12] = { '\r', '\n', '\r', '\n', 0, '\r', '\n', 'Q', 'U', 'I', 'T', '\n' };
static const char v1_prefix[] = "PROXY ";

/* "0".."65535", no sign, no leading zero. */
static bool parse_port(const char *p, size_t n, uint16_t *out)
{
	if (n == 0 || n > 5 || (n > 1 && p[0] == '0'))
		return false;
	uint32_t v = 0;
	for (size_t i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return false;
		v = v * 10 + (uint32_t)(p[i] - '0');
	}
	if (v > 65535)
		return false;
	*out = (uint16_t)v;
	return true;
}

static bool parse_addr(int family, const char *p, size_t n, void *out)
{
	char text[INET6_ADDRSTRLEN];
	if (n == 0 || n >= sizeof(text))
		return false;
	memcpy(text, p, n);
	text[n] = '\0';
	return inet_pton(family, text, out) == 1;
}

static void set_v4(struct sockaddr_storage *ss, socklen_t *len, const void *addr, uint16_t port)
{
	struct sockaddr_in *in = (struct sockaddr_in *)ss;
	memset(ss, 0, sizeof(*ss));
	in->sin_family = AF_INET;
	memcpy(&in->sin_addr, addr, 4);
	in->sin_port = htons(port);
	*len = sizeof(*in);
}

static void set_v6(struct sockaddr_storage *ss, socklen_t *len, const void *addr, uint16_t port)
{
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
	memset(ss, 0, sizeof(*ss));
	in6->sin6_family = AF_INET6;
	memcpy(&in6->sin6_addr, addr, 16);
	in6->sin6_port = htons(port);
	*len = sizeof(*in6);
}

/* The line without its CRLF: "PROXY TCP4 a b p q". */
static enum guard_proxy_result parse_v1_line(const char *line, size_t n, struct guard_proxy_header *out)
{
	if (n >= 13 && memcmp(line, "PROXY UNKNOWN", 13) == 0 && (n == 13 || line[13] == ' ')) {
		out->local = true;   /* the rest of the line is ignored (spec 2.1) */
		return GUARD_PROXY_OK;
	}
	/* Six tokens, one space apart: an empty token (two spaces, a trailing
	 * space) fails its own parse below. */
	const char *tok[6];
	size_t tlen[6], nt = 0, i = 0;
	for (;;) {
		if (nt == 6)
			return GUARD_PROXY_INVALID;
		size_t start = i;
		while (i < n && line[i] != ' ')
			i++;
		tok[nt] = line + start;
		tlen[nt++] = i - start;
		if (i == n)
			break;
		i++;   /* the space */
	}
	if (nt != 6 || tlen[1] != 4)
		return GUARD_PROXY_INVALID;
	bool v4 = memcmp(tok[1], "TCP4", 4) == 0, v6 = memcmp(tok[1], "TCP6", 4) == 0;
	uint8_t src[16], dst[16];
	uint16_t sport, dport;
	int family = v4 ? AF_INET : AF_INET6;
	if ((!v4 && !v6) || !parse_addr(family, tok[2], tlen[2], src) || !parse_addr(family, tok[3], tlen[3], dst) ||
	    !parse_port(tok[4], tlen[4], &sport) || !parse_port(tok[5], tlen[5], &dport))
		return GUARD_PROXY_INVALID;
	if (v4) {
		set_v4(&out->src, &out->src_len, src, sport);
		set_v4(&out->dst, &out->dst_len, dst, dport);
	} else {
		set_v6(&out->src, &out->src_len, src, sport);
		set_v6(&out->dst, &out->dst_len, dst, dport);
	}
	return GUARD_PROXY_OK;
}

static enum guard_proxy_result parse_v1(const uint8_t *p, size_t len, struct guard_proxy_header *out)
{
	size_t cmp = len < sizeof(v1_prefix) - 1 ? len : sizeof(v1_prefix) - 1;
	if (memcmp(p, v1_prefix, cmp) != 0)
		return GUARD_PROXY_INVALID;
	size_t limit = len < GUARD_PROXY_V1_MAX ? len : GUARD_PROXY_V1_MAX;
	for (size_t i = 0; i < limit; i++) {
		if (p[i] == '\n') {
			if (i == 0 || p[i - 1] != '\r')
				return GUARD_PROXY_INVALID;
			for (size_t k = 0; k + 1 < i; k++) {
				if (p[k] < 0x20 || p[k] > 0x7e)
					return GUARD_PROXY_INVALID;
			}
			out->length = i + 1;
			return parse_v1_line((const char *)p, i - 1, out);
		}
	}
	return len >= GUARD_PROXY_V1_MAX ? GUARD_PROXY_INVALID : GUARD_PROXY_MORE;
}

static enum guard_proxy_result parse_v2(const uint8_t *p, size_t len, struct guard_proxy_header *out)
{
	size_t cmp = len < sizeof(v2_sig) ? len : sizeof(v2_sig);
	if (memcmp(p, v2_sig, cmp) != 0)
		return GUARD_PROXY_INVALID;
	if (len < 16)
		return GUARD_PROXY_MORE;
	unsigned version = p[12] >> 4, command = p[12] & 0x0f, family = p[13] >> 4, transport = p[13] & 0x0f;
	size_t body = (size_t)p[14] << 8 | p[15];
	if (version != 2 || command > 1 || body > GUARD_PROXY_V2_MAX_TLV)
		return GUARD_PROXY_INVALID;
	if (len < 16 + body)
		return GUARD_PROXY_MORE;
	out->length = 16 + body;
	const uint8_t *b = p + 16;
	if (command == 0 || transport != 1 || (family != 1 && family != 2)) {
		out->local = true;   /* LOCAL, or not TCP over IP: the connection's own address */
		return GUARD_PROXY_OK;
	}
	if (family == 1) {
		if (body < 12)
			return GUARD_PROXY_INVALID;
		set_v4(&out->src, &out->src_len, b, (uint16_t)(b[8] << 8 | b[9]));
		set_v4(&out->dst, &out->dst_len, b + 4, (uint16_t)(b[10] << 8 | b[11]));
	} else {
		if (body < 36)
			return GUARD_PROXY_INVALID;
		set_v6(&out->src, &out->src_len, b, (uint16_t)(b[32] << 8 | b[33]));
		set_v6(&out->dst, &out->dst_len, b + 16, (uint16_t)(b[34] << 8 | b[35]));
	}
	return GUARD_PROXY_OK;
}

enum guard_proxy_result guard_proxy_parse(const uint8_t *p, size_t len, struct guard_proxy_header *out)
{
	memset(out, 0, sizeof(*out));
	if (len == 0)
		return GUARD_PROXY_MORE;
	if (p[0] == 'P')
		return parse_v1(p, len, out);
	if (p[0] == '\r')
		return parse_v2(p, len, out);
	return GUARD_PROXY_INVALID;
}

size_t guard_proxy_wanted(const uint8_t *p, size_t have, size_t avail)
{
	if (have + avail == 0)
		return 0;
	if (p[0] == 'P') {
		/* Up to and including the first LF: never a byte of the client's. */
		for (size_t i = have; i < have + avail; i++) {
			if (p[i] == '\n')
				return i + 1 - have;
		}
		return avail;
	}
	if (p[0] == '\r' && have + avail >= 16) {
		size_t total = 16 + ((size_t)p[14] << 8 | p[15]);
		return total > have ? (total - have < avail ? total - have : avail) : 0;
	}
	return avail;   /* shorter than the fixed part, or invalid: the parser decides */
}
