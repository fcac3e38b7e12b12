/*
 * fuzz_proxy.c - fuzz target for the PROXY protocol header parser
 * (src/guard/guard.h: guard_proxy_parse, guard_proxy_wanted).
 *
 * Input: the first bytes a load balancer (or anyone) sends on a connection.
 *
 * Properties checked:
 *  - OK means a header of length at most GUARD_PROXY_V1_MAX (v1, starting
 *    with 'P') or 16 + GUARD_PROXY_V2_MAX_TLV (v2), within the input; a
 *    non-local result has an IPv4 or IPv6 source of the right length;
 *  - the result is a function of the header alone: parsing only its
 *    `length` bytes gives the same result and fields;
 *  - every proper prefix of an OK header is MORE, and MORE never holds
 *    for a v1 input of GUARD_PROXY_V1_MAX bytes or more;
 *  - the reader (guard_proxy_wanted, in input-derived pieces, as
 *    server_proxy.c calls it) never consumes a byte past the header's end
 *    and always makes progress until it reaches it.
 *
 * Durability/concurrency: none (pure functions, one thread).
 */
#include "fuzz.h"

#include <netinet/in.h>
#include <string.h>

#include "guard.h"

static void check_ok(const uint8_t *data, size_t size, const struct guard_proxy_header *h)
{
	size_t cap = data[0] == 'P' ? GUARD_PROXY_V1_MAX : 16 + GUARD_PROXY_V2_MAX_TLV;
	FUZZ_CHECK(h->length > 0 && h->length <= size && h->length <= cap, "header length %zu of %zu (cap %zu)",
		   h->length, size, cap);
	if (!h->local)
		FUZZ_CHECK((h->src.ss_family == AF_INET && h->src_len == sizeof(struct sockaddr_in)) ||
				   (h->src.ss_family == AF_INET6 && h->src_len == sizeof(struct sockaddr_in6)),
			   "source family %d length %u", h->src.ss_family, (unsigned)h->src_len);
	struct guard_proxy_header again;
	FUZZ_CHECK(guard_proxy_parse(data, h->length, &again) == GUARD_PROXY_OK, "not OK on its own header");
	FUZZ_CHECK(again.length == h->length && again.local == h->local && again.src_len == h->src_len &&
			   memcmp(&again.src, &h->src, h->src_len) == 0,
		   "the header alone parses differently");
	for (size_t k = 0; k < h->length; k++) {
		struct guard_proxy_header p;
		FUZZ_CHECK(guard_proxy_parse(data, k, &p) == GUARD_PROXY_MORE, "prefix of %zu bytes is not MORE", k);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct guard_proxy_header h;
	enum guard_proxy_result r = guard_proxy_parse(data, size, &h);
	FUZZ_CHECK(r == GUARD_PROXY_MORE || r == GUARD_PROXY_OK || r == GUARD_PROXY_INVALID, "result %d", r);
	if (r == GUARD_PROXY_OK)
		check_ok(data, size, &h);
	if (r == GUARD_PROXY_MORE && size > 0 && data[0] == 'P')
		FUZZ_CHECK(size < GUARD_PROXY_V1_MAX, "MORE after %zu bytes of v1", size);
	/* The reader, fed in pieces, stops at the header's end. */
	struct fuzz_rng rng;
	fuzz_rng_init(&rng, data, size, 0x9e3779b9u);
	size_t have = 0, limit = size < GUARD_PROXY_BUF ? size : GUARD_PROXY_BUF;
	for (unsigned step = 0; have < limit && step < 2 * GUARD_PROXY_BUF; step++) {
		size_t avail = fuzz_rng_chunk(&rng, limit - have);
		if (avail == 0)
			continue;
		size_t take = guard_proxy_wanted(data, have, avail);
		FUZZ_CHECK(take <= avail, "took %zu of %zu", take, avail);
		if (r == GUARD_PROXY_OK)
			FUZZ_CHECK(have + take <= h.length, "consumed %zu past a %zu-byte header", have + take, h.length);
		if (take == 0)
			break;
		have += take;
		struct guard_proxy_header p;
		if (guard_proxy_parse(data, have, &p) != GUARD_PROXY_MORE)
			break;
	}
	if (r == GUARD_PROXY_OK && h.length <= limit)
		FUZZ_CHECK(have == h.length, "the reader stopped at %zu of a %zu-byte header", have, h.length);
	return 0;
}
