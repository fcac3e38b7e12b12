/*
 * guard_auth.c - brute force on IMAP and POP3: failed logins counted per
 * source address and per account, the delay before the failure reply, and
 * the ban of a source that keeps failing.
 *
 * Contract: see guard.h (guard_auth_failure).  Two fixed tables, sources
 * and accounts, each set-associative like the ban table (buckets of
 * GUARD_WAYS entries picked by the keyed hash, one mutex per shard): a new
 * key takes a free entry, an entry whose failures are forgotten, or the
 * entry idle longest.  An attacker with many addresses or account names
 * cannot grow them; at worst older counts are forgotten early.
 *
 * Account names are stored as a keyed hash (SipHash of the lower-cased
 * name, 16 bytes from two keys), never as text: the table holds no user
 * names and one cannot pick names that collide.
 */
#include "guard_int.h"

#include <stdlib.h>
#include <string.h>

#include "metrics.h"

#define AUTH_DOUBLINGS_MAX 30   /* 2^30 x the base delay is past any max_delay */

_Static_assert(sizeof(struct guard_auth_entry) == 32, "docs/GUARD.md quotes 32 bytes per entry");

void guard_auth_init(struct guard *g, size_t entries)
{
	for (int t = 0; t < 2; t++) {
		struct guard_auth_table *at = &g->auth[t];
		at->n_buckets = entries / GUARD_WAYS;
		if (at->n_buckets < GUARD_SHARDS)
			at->n_buckets = GUARD_SHARDS;
		at->entries = xcalloc(at->n_buckets * GUARD_WAYS, sizeof(*at->entries));
		for (size_t i = 0; i < GUARD_SHARDS; i++) {
			if (pthread_mutex_init(&at->shards[i].mu, NULL) != 0)
				panic("guard: cannot initialise a mutex");
		}
	}
}

void guard_auth_destroy(struct guard *g)
{
	for (int t = 0; t < 2; t++) {
		for (size_t i = 0; i < GUARD_SHARDS; i++)
			pthread_mutex_destroy(&g->auth[t].shards[i].mu);
		free(g->auth[t].entries);
		g->auth[t].entries = NULL;
	}
}

/* The key of a source, or of an account name (family 1). */
static void source_key(const struct guard_addr *a, uint8_t key[16], uint8_t *family)
{
	memcpy(key, a->b, 16);
	*family = a->family;
}

static void account_key(struct guard *g, const char *account, uint8_t key[16], uint8_t *family)
{
	char lower[320];
	size_t n = strlen(account);
	if (n >= sizeof(lower))
		n = sizeof(lower) - 1;
	for (size_t i = 0; i < n; i++)
		lower[i] = (char)(account[i] >= 'A' && account[i] <= 'Z' ? account[i] - 'A' + 'a' : account[i]);
	/* Two SipHash outputs under keys derived from the guard's: 128 bits. */
	uint8_t k2[crypto_shorthash_KEYBYTES];
	memcpy(k2, g->hash_key, sizeof(k2));
	crypto_shorthash(key, (const unsigned char *)lower, n, g->hash_key);
	k2[0] ^= 0x5a;
	crypto_shorthash(key + 8, (const unsigned char *)lower, n, k2);
	*family = 1;
}

static size_t auth_bucket(struct guard *g, const struct guard_auth_table *at, const uint8_t key[16], uint8_t family)
{
	struct guard_key k;
	memset(&k, 0, sizeof(k));
	k.family = family;
	k.level = GUARD_KEY_BAN;
	k.prefix = 128;
	memcpy(k.b, key, 16);
	return (size_t)(guard_key_hash(&k, g->hash_key) % at->n_buckets);
}

static bool forgotten(const struct guard_auth_entry *e, uint64_t now_ms, uint64_t window_ms)
{
	return e->family == 0 || now_ms - e->last_ms >= window_ms || now_ms < e->last_ms;
}

/* Counts one failure for the key; returns the failures before it. */
static uint32_t auth_count(struct guard *g, struct guard_auth_table *at, const uint8_t key[16], uint8_t family,
			   uint64_t now_ms, uint64_t window_ms)
{
	size_t bucket = auth_bucket(g, at, key, family);
	struct guard_auth_entry *ways = &at->entries[bucket * GUARD_WAYS];
	pthread_mutex_t *mu = &at->shards[bucket % GUARD_SHARDS].mu;
	pthread_mutex_lock(mu);
	struct guard_auth_entry *e = NULL;
	for (int w = 0; w < GUARD_WAYS && e == NULL; w++) {
		if (ways[w].family == family && memcmp(ways[w].key, key, 16) == 0)
			e = &ways[w];
	}
	if (e == NULL) {
		/* A free or forgotten entry, else the one idle longest. */
		for (int w = 0; w < GUARD_WAYS && e == NULL; w++) {
			if (forgotten(&ways[w], now_ms, window_ms))
				e = &ways[w];
		}
		if (e == NULL) {
			e = &ways[0];
			for (int w = 1; w < GUARD_WAYS; w++) {
				if (ways[w].last_ms < e->last_ms)
					e = &ways[w];
			}
		}
		memset(e, 0, sizeof(*e));
		memcpy(e->key, key, 16);
		e->family = family;
	} else if (forgotten(e, now_ms, window_ms)) {
		e->fails = 0;
	}
	uint32_t before = e->fails;
	if (e->fails < UINT32_MAX)
		e->fails++;
	e->last_ms = now_ms;
	pthread_mutex_unlock(mu);
	return before;
}

/* Resets a source's count (after its ban). */
static void auth_reset(struct guard *g, struct guard_auth_table *at, const uint8_t key[16], uint8_t family)
{
	size_t bucket = auth_bucket(g, at, key, family);
	struct guard_auth_entry *ways = &at->entries[bucket * GUARD_WAYS];
	pthread_mutex_t *mu = &at->shards[bucket % GUARD_SHARDS].mu;
	pthread_mutex_lock(mu);
	for (int w = 0; w < GUARD_WAYS; w++) {
		if (ways[w].family == family && memcmp(ways[w].key, key, 16) == 0)
			memset(&ways[w], 0, sizeof(ways[w]));
	}
	pthread_mutex_unlock(mu);
}

static unsigned auth_peek(struct guard *g, struct guard_auth_table *at, const uint8_t key[16], uint8_t family,
			  uint64_t now_ms, uint64_t window_ms)
{
	size_t bucket = auth_bucket(g, at, key, family);
	struct guard_auth_entry *ways = &at->entries[bucket * GUARD_WAYS];
	pthread_mutex_t *mu = &at->shards[bucket % GUARD_SHARDS].mu;
	unsigned fails = 0;
	pthread_mutex_lock(mu);
	for (int w = 0; w < GUARD_WAYS; w++) {
		if (ways[w].family == family && memcmp(ways[w].key, key, 16) == 0 &&
		    !forgotten(&ways[w], now_ms, window_ms))
			fails = ways[w].fails;
	}
	pthread_mutex_unlock(mu);
	return fails;
}

uint64_t guard_auth_failure(struct guard *g, const struct guard_addr *a, const char *account, uint64_t now_ms)
{
	const struct guard_conf *c = atomic_load(&g->conf);
	metric_inc(M_GUARD_AUTH_FAILURES);
	uint8_t skey[16], akey[16], sfam, afam;
	source_key(a, skey, &sfam);
	account_key(g, account, akey, &afam);
	uint32_t src_before = auth_count(g, &g->auth[0], skey, sfam, now_ms, c->auth_window_ms);
	uint32_t acct_before = auth_count(g, &g->auth[1], akey, afam, now_ms, c->auth_window_ms);
	if (src_before + 1 >= c->auth_ban_after) {
		guard_offence(g, a, GUARD_OFFENCE_AUTH, now_ms);
		auth_reset(g, &g->auth[0], skey, sfam);
	}
	uint32_t n = src_before > acct_before ? src_before : acct_before;
	if (n > AUTH_DOUBLINGS_MAX)
		n = AUTH_DOUBLINGS_MAX;
	uint64_t delay = c->auth_delay_ms << n;
	if (delay > c->auth_max_delay_ms)
		delay = c->auth_max_delay_ms;
	if (delay > 0)
		metric_inc(M_GUARD_AUTH_DELAYED);
	return delay;
}

void guard_auth_counts(struct guard *g, const struct guard_addr *a, const char *account, uint64_t now_ms,
		       unsigned *source_r, unsigned *account_r)
{
	const struct guard_conf *c = atomic_load(&g->conf);
	uint8_t skey[16], akey[16], sfam, afam;
	source_key(a, skey, &sfam);
	account_key(g, account, akey, &afam);
	*source_r = auth_peek(g, &g->auth[0], skey, sfam, now_ms, c->auth_window_ms);
	*account_r = auth_peek(g, &g->auth[1], akey, afam, now_ms, c->auth_window_ms);
}
