/*
 * auth_cache.c - the cache of verified passwords (auth.h).
 *
 * Why: an imported {SHA512-CRYPT} hash costs milliseconds of CPU per check
 * (Argon2id and bcrypt more), and mail clients open several sessions and
 * reconnect every few minutes with the same password, so without a cache
 * the daemon spends much of its CPU re-proving what it proved a minute ago.
 *
 * What an entry is: a 32-byte tag and an expiry, nothing else.
 *   tag    = BLAKE2b-256, keyed with K_tag, over
 *            le64(strlen(stored)) || stored || password
 *   bucket = SipHash-2-4 (crypto_shorthash), keyed with K_index, over
 *            stored, mod n_buckets
 * K_tag (256 bits) and K_index (128 bits) are random (libsodium
 * randombytes) per process, made at auth_cache_init and never leave it.
 * SipHash is the keyed hash made for table indexing (a quarter of the cost
 * of a keyed BLAKE2b); the tag, which decides a login, is full BLAKE2b.  The length prefix makes the split
 * between stored hash and password unambiguous.
 *
 * Invariants (why it is safe):
 *  - Only successful verifications are inserted.  A wrong password yields a
 *    different tag; without the key nobody can make one that matches, so a
 *    guess is answered by the full verification like any other miss, and a
 *    flood of wrong guesses writes nothing (it can evict no entry).
 *  - The stored hash is part of the tag: a password change (`strata user
 *    passwd`, an import, any re-hash) gives the account a new stored hash,
 *    which no entry was made for, so the old password stops working at the
 *    next login, whatever the ttl.  Old entries are unreachable and age out.
 *  - A deleted account never reaches the cache: every login path looks the
 *    account up in the index first and only verifies the hash it found.
 *  - An entry lives ttl from the verification that made it, on the
 *    monotonic clock (immune to wall-clock steps); a hit does not extend
 *    it, so every password in use is fully verified again at least once per
 *    ttl.
 *  - Tags are compared with sodium_memcmp (constant time); all the ways of
 *    a bucket are compared whether or not one matched.
 *  - Fixed memory: one anonymous mapping made at init (the keys, then
 *    n_buckets buckets of 4 ways, 40 bytes a way), never grown, no
 *    allocation per login.  A full bucket evicts the way that expires first
 *    (the oldest, as all share one ttl).  The bucket index is keyed, so a
 *    client cannot aim its own accounts' logins at someone else's bucket.
 *  - The mapping is excluded from core dumps (MADV_DONTDUMP, best effort)
 *    and wiped (sodium_memzero: the keys, then every resident page) before
 *    it is unmapped.  What a live dump of
 *    the process memory would give: the keys and the tags of the passwords
 *    verified in the last ttl, i.e. an offline guessing oracle at BLAKE2b
 *    speed instead of the stored scheme's speed for those accounts.  The
 *    same process memory holds each password in clear while its login runs;
 *    docs/SECURITY.md states the trade-off and how to turn the cache off.
 *
 * Concurrency: auth_cache_init and auth_cache_free run while no other
 * thread verifies (daemon start-up and after the threads are joined).
 * Lookups and inserts come from any thread: both hashes are computed
 * outside any lock; a bucket is guarded by one of CACHE_STRIPES mutexes
 * (bucket index mod CACHE_STRIPES), held only to compare or write at most
 * four tags.  The slow verification itself never runs under a lock, so two
 * sessions that miss on the same password at once both verify it (and the
 * second insert refreshes the first's way).
 *
 * Cost, measured (x86-64, 2 cores): a hit takes about 0.7 us, nearly all of
 * it the two hashes; a {SHA512-CRYPT} miss with the default 5000 rounds
 * about 1.4 ms.  4 threads hitting one account (one stripe) ran as fast with
 * one mutex as with 64; the stripes are for machines whose many store
 * threads would otherwise queue on one lock, at 2.5 KiB of mutexes.
 */
#include "auth.h"

#include <pthread.h>
#include <sodium.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "metrics.h"

#define CACHE_WAYS 4
#define CACHE_TAG_BYTES crypto_generichash_BYTES /* 32 */
/* Enough that the store threads of a large machine rarely meet on one
 * mutex (2.5 KiB of mutexes). */
#define CACHE_STRIPES 64

struct cache_way {
	uint64_t expires_ms;           /* 0: empty; live while > now */
	unsigned char tag[CACHE_TAG_BYTES];
};

struct cache_bucket {
	struct cache_way way[CACHE_WAYS];
};

/* The keys, at the start of the mapping so the dump exclusion and the wipe
 * cover them with the entries. */
struct cache_keys {
	unsigned char index[crypto_shorthash_KEYBYTES];
	unsigned char tag[crypto_generichash_KEYBYTES];
};

struct auth_cache {
	void *map;
	size_t map_len;
	struct cache_keys *keys;       /* in map */
	struct cache_bucket *buckets;  /* in map, after the keys */
	size_t n_buckets;
	uint64_t ttl_ms;
	pthread_mutex_t stripes[CACHE_STRIPES];
};

static struct auth_cache cache_state;
static struct auth_cache *cache_on; /* &cache_state while on, else NULL */

_Static_assert(crypto_shorthash_BYTES == sizeof(uint64_t), "SipHash-2-4 gives 64 bits");

static size_t cache_bucket_index(const struct auth_cache *c, const char *stored)
{
	unsigned char h[crypto_shorthash_BYTES];
	crypto_shorthash(h, (const unsigned char *)stored, strlen(stored), c->keys->index);
	uint64_t v;
	memcpy(&v, h, sizeof(v));
	return (size_t)(v % c->n_buckets);
}

static void cache_tag(const struct auth_cache *c, const char *stored, const char *password,
		      unsigned char tag[CACHE_TAG_BYTES])
{
	crypto_generichash_state st;
	size_t n = strlen(stored);
	unsigned char len[8];
	for (size_t i = 0; i < sizeof(len); i++)
		len[i] = (unsigned char)((uint64_t)n >> (8 * i));
	crypto_generichash_init(&st, c->keys->tag, sizeof(c->keys->tag), CACHE_TAG_BYTES);
	crypto_generichash_update(&st, len, sizeof(len));
	crypto_generichash_update(&st, (const unsigned char *)stored, n);
	crypto_generichash_update(&st, (const unsigned char *)password, strlen(password));
	crypto_generichash_final(&st, tag, CACHE_TAG_BYTES);
	sodium_memzero(&st, sizeof(st));
}

/* True when a live way of b holds tag.  Caller holds the bucket's stripe. */
static bool cache_bucket_has(const struct cache_bucket *b, const unsigned char *tag, uint64_t now)
{
	bool hit = false;
	for (size_t i = 0; i < CACHE_WAYS; i++) {
		const struct cache_way *w = &b->way[i];
		bool same = sodium_memcmp(w->tag, tag, CACHE_TAG_BYTES) == 0;
		hit |= same && w->expires_ms > now;
	}
	return hit;
}

/* Stores tag in b: over its own way if present (a refresh), else over the
 * way that expires first (empty and expired ways come first of all).
 * Caller holds the bucket's stripe. */
static void cache_bucket_put(struct cache_bucket *b, const unsigned char *tag, uint64_t expires_ms)
{
	struct cache_way *victim = &b->way[0];
	for (size_t i = 0; i < CACHE_WAYS; i++) {
		struct cache_way *w = &b->way[i];
		if (sodium_memcmp(w->tag, tag, CACHE_TAG_BYTES) == 0) {
			victim = w;
			break;
		}
		if (w->expires_ms < victim->expires_ms)
			victim = w;
	}
	memcpy(victim->tag, tag, CACHE_TAG_BYTES);
	victim->expires_ms = expires_ms;
}

bool auth_cache_init(size_t entries, uint64_t ttl_ms, char **error_r)
{
	if (cache_on != NULL)
		panic("auth_cache_init: the cache is already set up");
	if (entries == 0 || ttl_ms == 0)
		return true;
	if (entries > AUTH_CACHE_MAX_ENTRIES)
		entries = AUTH_CACHE_MAX_ENTRIES;
	if (sodium_init() < 0) {
		*error_r = xstrdup("auth cache: libsodium cannot be initialised");
		return false;
	}
	struct auth_cache *c = &cache_state;
	c->n_buckets = (entries + CACHE_WAYS - 1) / CACHE_WAYS;
	/* The buckets start at a multiple of 64 bytes after the keys. */
	size_t head = (sizeof(struct cache_keys) + 63) & ~(size_t)63;
	c->map_len = head + c->n_buckets * sizeof(struct cache_bucket);
	c->map = mmap(NULL, c->map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (c->map == MAP_FAILED) {
		*error_r = xasprintf("auth cache: cannot map %zu bytes for %zu entries", c->map_len,
				     c->n_buckets * CACHE_WAYS);
		c->map = NULL;
		return false;
	}
	/* Best effort: a kernel without MADV_DONTDUMP still gets a working cache. */
	(void)madvise(c->map, c->map_len, MADV_DONTDUMP);
	c->keys = c->map;
	c->buckets = (struct cache_bucket *)((unsigned char *)c->map + head);
	randombytes_buf(c->keys->index, sizeof(c->keys->index));
	randombytes_buf(c->keys->tag, sizeof(c->keys->tag));
	c->ttl_ms = ttl_ms;
	for (size_t i = 0; i < CACHE_STRIPES; i++) {
		if (pthread_mutex_init(&c->stripes[i], NULL) != 0)
			panic("auth cache: pthread_mutex_init failed");
	}
	cache_on = c; /* anonymous pages are zero: every way starts empty */
	return true;
}

/* Wipes the pages of the mapping that are in memory.  A page never written
 * is not resident and holds zeros, so a large, sparsely used table is
 * wiped without first being faulted in whole (16M entries are 640 MiB).
 * Without mincore's answer every page is wiped. */
static void cache_wipe(struct auth_cache *c)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t n_pages = (c->map_len + page - 1) / page;
	unsigned char vec[4096];
	for (size_t first = 0; first < n_pages; first += sizeof(vec)) {
		size_t n = n_pages - first < sizeof(vec) ? n_pages - first : sizeof(vec);
		/* The mapping covers whole pages (mmap rounds its length up). */
		unsigned char *at = (unsigned char *)c->map + first * page;
		if (mincore(at, n * page, vec) != 0) {
			sodium_memzero(at, n * page);
			continue;
		}
		for (size_t i = 0; i < n; i++) {
			if (vec[i] & 1)
				sodium_memzero(at + i * page, page);
		}
	}
}

void auth_cache_free(void)
{
	struct auth_cache *c = cache_on;
	if (c == NULL)
		return;
	cache_on = NULL;
	for (size_t i = 0; i < CACHE_STRIPES; i++)
		pthread_mutex_destroy(&c->stripes[i]);
	sodium_memzero(c->keys, sizeof(*c->keys));
	cache_wipe(c);
	munmap(c->map, c->map_len);
	memset(c, 0, sizeof(*c));
}

size_t auth_cache_capacity(void)
{
	return cache_on != NULL ? cache_on->n_buckets * CACHE_WAYS : 0;
}

bool auth_verify_password_cached(const char *password, const char *stored)
{
	struct auth_cache *c = cache_on;
	if (c == NULL) {
		metric_inc(M_AUTH_CACHE_MISSES);
		return auth_verify_password(password, stored);
	}
	unsigned char tag[CACHE_TAG_BYTES];
	size_t bi = cache_bucket_index(c, stored);
	struct cache_bucket *b = &c->buckets[bi];
	pthread_mutex_t *m = &c->stripes[bi % CACHE_STRIPES];
	cache_tag(c, stored, password, tag);

	pthread_mutex_lock(m);
	bool hit = cache_bucket_has(b, tag, time_mono_ms());
	pthread_mutex_unlock(m);
	if (hit) {
		metric_inc(M_AUTH_CACHE_HITS);
		sodium_memzero(tag, sizeof(tag));
		return true;
	}
	metric_inc(M_AUTH_CACHE_MISSES);
	bool ok = auth_verify_password(password, stored);
	if (ok) {
		/* The ttl counts from now, when the verification has succeeded. */
		uint64_t expires;
		if (__builtin_add_overflow(time_mono_ms(), c->ttl_ms, &expires))
			expires = UINT64_MAX;
		pthread_mutex_lock(m);
		cache_bucket_put(b, tag, expires);
		pthread_mutex_unlock(m);
	}
	sodium_memzero(tag, sizeof(tag));
	return ok;
}
