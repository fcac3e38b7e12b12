/*
 * guard_table.c - the guard's fixed-size table of sources.
 *
 * Layout: n_buckets buckets of GUARD_WAYS entries each (set-associative,
 * like a CPU cache), all allocated once by guard_table_init.  A key lives
 * only in the bucket its keyed hash names, so a lookup or an insertion
 * reads at most GUARD_WAYS entries: O(1), no probing chains, no tombstones,
 * no rehashing, no allocation after start-up.
 *
 * Taking an entry for a new key, in this order:
 *   1. a never-used way;
 *   2. a way that has no connection and whose token bucket has refilled to
 *      its burst: forgetting it loses nothing (a new entry starts full);
 *   3. clock (second chance): the bucket's hand sweeps the ways; a way with
 *      connections is skipped (never evicted: its connections must be given
 *      back to it), a way with its reference bit set has the bit cleared and
 *      is skipped once, the first other way is evicted (counted).
 * When every way holds live connections the new source is refused (GLOBAL):
 * with the keyed hash this needs about as many live connections as the
 * table has entries, which the class cap prevents long before.
 *
 * Locking: GUARD_SHARDS mutexes; bucket b is guarded by shard b % SHARDS.
 * A decision touches up to three entries (address, network, wide network)
 * which lie in unrelated buckets, so it locks one shard at a time, for a
 * few dozen instructions, and never holds two: no lock order to get wrong,
 * and two network threads meet on a mutex only when their keys fall in the
 * same shard (about threads/64 of the time).  Why not one mutex: every
 * accept of every thread would serialise on it, exactly when a flood makes
 * accepts hot.  Why not lock-free: an entry is a key, a stamp, tokens and a
 * count that must change together, and eviction replaces all of them; a
 * 40-byte compare-and-swap does not exist, and seqlocks would make the
 * rare contended case retry instead of wait.  The class counters (conns,
 * active networks, used, live) are atomics updated inside or after the
 * shard's critical section.
 */
#include "guard_int.h"

#include <stdlib.h>
#include <string.h>

#include "metrics.h"

_Static_assert(sizeof(struct guard_entry) == 40, "docs/GUARD.md quotes 40 bytes per entry");

void guard_table_init(struct guard_table *t, size_t entries)
{
	memset(t, 0, sizeof(*t));
	size_t n = entries / GUARD_WAYS;
	if (n < GUARD_SHARDS)
		n = GUARD_SHARDS;
	t->n_buckets = n;
	t->entries = xcalloc(n * GUARD_WAYS, sizeof(*t->entries));
	t->hands = xcalloc(n, 1);
	for (size_t i = 0; i < GUARD_SHARDS; i++) {
		if (pthread_mutex_init(&t->shards[i].mu, NULL) != 0)
			panic("guard: cannot initialise a mutex");
	}
}

void guard_table_destroy(struct guard_table *t)
{
	if (t->entries == NULL)
		return;
	for (size_t i = 0; i < GUARD_SHARDS; i++)
		pthread_mutex_destroy(&t->shards[i].mu);
	gauge_add(M_GUARD_ENTRIES, -(int64_t)atomic_load(&t->used));
	free(t->entries);
	free(t->hands);
	t->entries = NULL;
	t->hands = NULL;
}

size_t guard_table_capacity(const struct guard_table *t)
{
	return t->n_buckets * GUARD_WAYS;
}

size_t guard_table_bytes(const struct guard_table *t)
{
	return t->n_buckets * (GUARD_WAYS * sizeof(struct guard_entry) + 1);
}

uint32_t guard_bucket_refill(uint32_t tokens, uint64_t elapsed_ms, const struct guard_limit *lim)
{
	uint64_t cap = lim->burst * GUARD_TOKEN_UNIT;
	if (lim->rate == 0 || elapsed_ms >= cap / lim->rate + 1)
		return (uint32_t)cap;   /* no rate limit, or long enough to be full */
	uint64_t t = (uint64_t)tokens + elapsed_ms * lim->rate;
	return (uint32_t)(t < cap ? t : cap);
}

static pthread_mutex_t *shard_of(struct guard_table *t, size_t bucket)
{
	return &t->shards[bucket % GUARD_SHARDS].mu;
}

static bool key_equal(const struct guard_entry *e, const struct guard_key *k)
{
	return e->family == k->family && e->level == k->level && e->prefix == k->prefix &&
	       memcmp(e->key, k->b, sizeof(e->key)) == 0;
}

/* True when forgetting e loses nothing (idle and its bucket refilled). */
static bool entry_idle_full(const struct guard_entry *e, const struct guard_limit lim[], uint64_t now)
{
	if (e->conns != 0 || e->level >= GUARD_LEVEL__COUNT)
		return false;
	const struct guard_limit *l = &lim[e->level];
	uint64_t elapsed = now > e->stamp_ms ? now - e->stamp_ms : 0;
	return guard_bucket_refill(e->tokens, elapsed, l) >= l->burst * GUARD_TOKEN_UNIT;
}

/* The clock sweep over one bucket; GUARD_NO_ENTRY when every way is live. */
static uint32_t clock_victim(struct guard_table *t, size_t bucket)
{
	struct guard_entry *ways = &t->entries[bucket * GUARD_WAYS];
	unsigned hand = t->hands[bucket];
	/* Two turns: the first may only clear reference bits. */
	for (unsigned step = 0; step < 2 * GUARD_WAYS; step++) {
		unsigned w = hand;
		hand = (hand + 1) % GUARD_WAYS;
		if (ways[w].conns > 0)
			continue;
		if (ways[w].ref) {
			ways[w].ref = 0;
			continue;
		}
		t->hands[bucket] = (uint8_t)hand;
		return (uint32_t)(bucket * GUARD_WAYS + w);
	}
	t->hands[bucket] = (uint8_t)hand;
	return GUARD_NO_ENTRY;
}

/* The entry for k in its bucket, taken if absent.  Shard lock held. */
static uint32_t find_or_take(struct guard_table *t, size_t bucket, const struct guard_key *k,
			     const struct guard_limit lim[], uint64_t now)
{
	struct guard_entry *ways = &t->entries[bucket * GUARD_WAYS];
	int unused = -1, idle = -1;
	for (int w = 0; w < GUARD_WAYS; w++) {
		if (ways[w].family == 0) {
			if (unused < 0)
				unused = w;
			continue;
		}
		if (key_equal(&ways[w], k))
			return (uint32_t)(bucket * GUARD_WAYS + (size_t)w);
		if (idle < 0 && entry_idle_full(&ways[w], lim, now))
			idle = w;
	}
	uint32_t idx;
	if (unused >= 0) {
		idx = (uint32_t)(bucket * GUARD_WAYS + (size_t)unused);
		atomic_fetch_add(&t->used, 1);
		gauge_add(M_GUARD_ENTRIES, 1);
	} else if (idle >= 0) {
		idx = (uint32_t)(bucket * GUARD_WAYS + (size_t)idle);
	} else {
		idx = clock_victim(t, bucket);
		if (idx == GUARD_NO_ENTRY)
			return idx;
		atomic_fetch_add(&t->evictions, 1);
		metric_inc(M_GUARD_EVICTIONS);
	}
	struct guard_entry *e = &t->entries[idx];
	memset(e, 0, sizeof(*e));
	memcpy(e->key, k->b, sizeof(e->key));
	e->family = k->family;
	e->level = k->level;
	e->prefix = k->prefix;
	e->stamp_ms = now;
	e->tokens = (uint32_t)(lim[k->level].burst * GUARD_TOKEN_UNIT);
	return idx;
}

/* Rate, then concurrency, for one entry.  Shard lock held. */
static enum guard_verdict entry_admit(struct guard_table *t, struct guard_entry *e,
				      const struct guard_limit *l, uint64_t now)
{
	if (now > e->stamp_ms) {
		e->tokens = guard_bucket_refill(e->tokens, now - e->stamp_ms, l);
		e->stamp_ms = now;
	}
	uint64_t cap = l->burst * GUARD_TOKEN_UNIT;
	if (e->tokens > cap)
		e->tokens = (uint32_t)cap;   /* burst lowered by a reload */
	if (l->rate != 0 && e->tokens < GUARD_TOKEN_UNIT)
		return GUARD_REFUSE_RATE;
	if (l->concurrency != 0 && e->conns >= l->concurrency)
		return GUARD_REFUSE_CONCURRENCY;
	if (l->rate != 0)
		e->tokens -= GUARD_TOKEN_UNIT;
	if (e->conns++ == 0) {
		atomic_fetch_add(&t->live, 1);
		if (e->level == GUARD_LEVEL_NET)
			atomic_fetch_add(&t->active_nets, 1);
	}
	return GUARD_ADMIT;
}

void guard_table_step(struct guard_table *t, uint64_t hash, const struct guard_key *k,
		      const struct guard_limit lim[GUARD_LEVEL__COUNT], uint64_t now_ms,
		      struct guard_step *out)
{
	size_t bucket = (size_t)(hash % t->n_buckets);
	pthread_mutex_t *mu = shard_of(t, bucket);
	pthread_mutex_lock(mu);
	out->idx = find_or_take(t, bucket, k, lim, now_ms);
	if (out->idx == GUARD_NO_ENTRY) {
		out->verdict = GUARD_REFUSE_GLOBAL;
		out->conns_before = 0;
	} else {
		struct guard_entry *e = &t->entries[out->idx];
		e->ref = 1;
		out->conns_before = e->conns;
		out->verdict = entry_admit(t, e, &lim[k->level], now_ms);
	}
	pthread_mutex_unlock(mu);
}

void guard_table_put(struct guard_table *t, uint32_t idx)
{
	if ((size_t)idx >= t->n_buckets * GUARD_WAYS)
		panic("guard: release of entry %u outside the table", (unsigned)idx);
	pthread_mutex_t *mu = shard_of(t, idx / GUARD_WAYS);
	pthread_mutex_lock(mu);
	struct guard_entry *e = &t->entries[idx];
	if (e->conns == 0)
		panic("guard: entry %u released with no connection (double release)", (unsigned)idx);
	if (--e->conns == 0) {
		atomic_fetch_sub(&t->live, 1);
		if (e->level == GUARD_LEVEL_NET)
			atomic_fetch_sub(&t->active_nets, 1);
	}
	pthread_mutex_unlock(mu);
}

uint32_t guard_table_peek(struct guard_table *t, uint64_t hash, const struct guard_key *k)
{
	size_t bucket = (size_t)(hash % t->n_buckets);
	pthread_mutex_t *mu = shard_of(t, bucket);
	uint32_t conns = 0;
	pthread_mutex_lock(mu);
	const struct guard_entry *ways = &t->entries[bucket * GUARD_WAYS];
	for (int w = 0; w < GUARD_WAYS; w++) {
		if (ways[w].family != 0 && key_equal(&ways[w], k)) {
			conns = ways[w].conns;
			break;
		}
	}
	pthread_mutex_unlock(mu);
	return conns;
}

void guard_table_foreach_live(struct guard_table *t, guard_entry_cb *cb, void *arg)
{
	struct guard_entry copy[GUARD_WAYS];
	for (size_t bucket = 0; bucket < t->n_buckets; bucket++) {
		size_t n = 0;
		pthread_mutex_t *mu = shard_of(t, bucket);
		pthread_mutex_lock(mu);
		const struct guard_entry *ways = &t->entries[bucket * GUARD_WAYS];
		for (int w = 0; w < GUARD_WAYS; w++) {
			if (ways[w].family != 0 && ways[w].conns > 0)
				copy[n++] = ways[w];
		}
		pthread_mutex_unlock(mu);
		for (size_t i = 0; i < n; i++)
			cb(arg, &copy[i]);
	}
}
