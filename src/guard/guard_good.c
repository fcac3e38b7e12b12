/*
 * guard_good.c - the good-sender memory: addresses that recently completed a
 * clean SMTP delivery or a successful IMAP/POP3 login.
 *
 * Contract: see guard.h (guard_good_mark).  Like postscreen's temporary
 * allowlist, but kept across restarts (guard_state.c saves it).  A good
 * sender gets the share of each class's cap that guard.good.reserve holds
 * back from everyone else (guard.c, check_global) and skips the SMTP banner
 * delay; it still passes every rate, concurrency limit and ban.
 *
 * Memory: one fixed set-associative table (guard.good.entries entries of 32
 * bytes, buckets of GUARD_WAYS picked by the keyed hash, so a client cannot
 * aim addresses at one bucket).  A new address takes a free way, a way
 * whose guard.good.ttl has run out, or the way the bucket's clock hand
 * picks (second chance: a way marked or consulted since the hand last
 * passed is spared once).  Nothing grows with the number of senders.
 *
 * Threads: any thread; one mutex per shard of buckets, held briefly, never
 * together with another guard lock except that guard_offence and guard_ban
 * call guard_good_forget after releasing the ban shard.
 */
#include "guard_int.h"

#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(struct guard_good_entry) == 32, "docs/GUARD.md quotes 32 bytes per entry");

void guard_good_init(struct guard *g, size_t entries)
{
	struct guard_good_table *t = &g->good;
	t->n_buckets = entries / GUARD_WAYS;
	if (t->n_buckets < GUARD_SHARDS)
		t->n_buckets = GUARD_SHARDS;
	t->entries = xcalloc(t->n_buckets * GUARD_WAYS, sizeof(*t->entries));
	t->hands = xcalloc(t->n_buckets, 1);
	for (size_t i = 0; i < GUARD_SHARDS; i++) {
		if (pthread_mutex_init(&t->shards[i].mu, NULL) != 0)
			panic("guard: cannot initialise a mutex");
	}
	atomic_init(&t->n, 0);
}

void guard_good_destroy(struct guard *g)
{
	struct guard_good_table *t = &g->good;
	for (size_t i = 0; i < GUARD_SHARDS; i++)
		pthread_mutex_destroy(&t->shards[i].mu);
	free(t->entries);
	free(t->hands);
	t->entries = NULL;
	t->hands = NULL;
}

size_t guard_good_capacity(struct guard *g)
{
	return g->good.n_buckets * GUARD_WAYS;
}

static size_t good_bucket(struct guard *g, const struct guard_addr *a)
{
	struct guard_key k;
	guard_key_make(a, GUARD_KEY_GOOD, a->family == 4 ? 32 : 128, &k);
	return (size_t)(guard_key_hash(&k, g->hash_key) % g->good.n_buckets);
}

static bool good_match(const struct guard_good_entry *e, const struct guard_addr *a)
{
	return e->family == a->family && memcmp(e->b, a->b, sizeof(e->b)) == 0;
}

static bool good_live(const struct guard_good_entry *e, uint64_t now_ms, uint64_t ttl_ms)
{
	return e->family != 0 && (e->seen_ms > now_ms || now_ms - e->seen_ms < ttl_ms);
}

static void good_clear(struct guard_good_table *t, struct guard_good_entry *e)
{
	memset(e, 0, sizeof(*e));
	atomic_fetch_sub(&t->n, 1);
}

/* The way for a new address in a locked bucket: free, expired, else the
 * clock hand's pick (cleared, so the caller fills it). */
static struct guard_good_entry *good_take(struct guard_good_table *t, size_t bucket, uint64_t now_ms,
					  uint64_t ttl_ms)
{
	struct guard_good_entry *ways = &t->entries[bucket * GUARD_WAYS];
	for (int w = 0; w < GUARD_WAYS; w++) {
		if (ways[w].family != 0 && !good_live(&ways[w], now_ms, ttl_ms))
			good_clear(t, &ways[w]);
		if (ways[w].family == 0)
			return &ways[w];
	}
	/* Second chance: at most two turns of the hand find a way. */
	for (int step = 0; step < 2 * GUARD_WAYS; step++) {
		struct guard_good_entry *e = &ways[t->hands[bucket]];
		t->hands[bucket] = (uint8_t)((t->hands[bucket] + 1) % GUARD_WAYS);
		if (e->ref == 0 || step == 2 * GUARD_WAYS - 1) {
			good_clear(t, e);
			return e;
		}
		e->ref = 0;
	}
	panic("guard: the good-sender clock found no way");
}

/* Sets `a` seen at seen_ms (later of the stored and the new time). */
static void good_put(struct guard *g, const struct guard_addr *a, uint64_t seen_ms, uint64_t now_ms,
		     uint64_t ttl_ms)
{
	struct guard_good_table *t = &g->good;
	size_t bucket = good_bucket(g, a);
	struct guard_good_entry *ways = &t->entries[bucket * GUARD_WAYS];
	pthread_mutex_t *mu = &t->shards[bucket % GUARD_SHARDS].mu;
	pthread_mutex_lock(mu);
	struct guard_good_entry *e = NULL;
	for (int w = 0; w < GUARD_WAYS && e == NULL; w++) {
		if (ways[w].family != 0 && good_match(&ways[w], a))
			e = &ways[w];
	}
	if (e == NULL) {
		e = good_take(t, bucket, now_ms, ttl_ms);
		memcpy(e->b, a->b, sizeof(e->b));
		e->family = a->family;
		e->seen_ms = seen_ms;
		atomic_fetch_add(&t->n, 1);
	} else if (seen_ms > e->seen_ms || !good_live(e, now_ms, ttl_ms)) {
		e->seen_ms = seen_ms;
	}
	e->ref = 1;
	pthread_mutex_unlock(mu);
}

void guard_good_mark(struct guard *g, const struct guard_addr *a, uint64_t now_ms)
{
	if (a->family != 4 && a->family != 6)
		return;
	const struct guard_conf *c = atomic_load(&g->conf);
	/* An allowlisted address needs no reserve; a banned one earns nothing
	 * (its session was admitted before the ban). */
	if (guard_is_allowed(g, a) || guard_is_banned(g, a, now_ms))
		return;
	good_put(g, a, now_ms, now_ms, c->good_ttl_ms);
}

void guard_good_mark_ip(const char *ip)
{
	struct guard *g = guard_process();
	struct guard_addr a;
	if (g != NULL && guard_addr_parse(ip, &a))
		guard_good_mark(g, &a, time_mono_ms());
}

void guard_good_restore(struct guard *g, const struct guard_addr *a, uint64_t seen_ms, uint64_t now_ms)
{
	const struct guard_conf *c = atomic_load(&g->conf);
	if (seen_ms <= now_ms && now_ms - seen_ms >= c->good_ttl_ms)
		return;   /* forgotten while the daemon was down */
	good_put(g, a, seen_ms, now_ms, c->good_ttl_ms);
}

bool guard_is_good(struct guard *g, const struct guard_addr *a, uint64_t now_ms)
{
	struct guard_good_table *t = &g->good;
	if (atomic_load(&t->n) == 0)
		return false;
	const struct guard_conf *c = atomic_load(&g->conf);
	size_t bucket = good_bucket(g, a);
	struct guard_good_entry *ways = &t->entries[bucket * GUARD_WAYS];
	pthread_mutex_t *mu = &t->shards[bucket % GUARD_SHARDS].mu;
	bool good = false;
	pthread_mutex_lock(mu);
	for (int w = 0; w < GUARD_WAYS; w++) {
		if (ways[w].family == 0 || !good_match(&ways[w], a))
			continue;
		if (good_live(&ways[w], now_ms, c->good_ttl_ms)) {
			ways[w].ref = 1;
			good = true;
		} else {
			good_clear(t, &ways[w]);
		}
		break;
	}
	pthread_mutex_unlock(mu);
	return good;
}

bool guard_good_forget(struct guard *g, const struct guard_addr *a)
{
	struct guard_good_table *t = &g->good;
	if (atomic_load(&t->n) == 0)
		return false;
	size_t bucket = good_bucket(g, a);
	struct guard_good_entry *ways = &t->entries[bucket * GUARD_WAYS];
	pthread_mutex_t *mu = &t->shards[bucket % GUARD_SHARDS].mu;
	bool found = false;
	pthread_mutex_lock(mu);
	for (int w = 0; w < GUARD_WAYS && !found; w++) {
		if (ways[w].family != 0 && good_match(&ways[w], a)) {
			good_clear(t, &ways[w]);
			found = true;
		}
	}
	pthread_mutex_unlock(mu);
	return found;
}

size_t guard_good_foreach(struct guard *g, uint64_t now_ms, guard_good_cb *cb, void *arg)
{
	struct guard_good_table *t = &g->good;
	if (atomic_load(&t->n) == 0)
		return 0;
	const struct guard_conf *c = atomic_load(&g->conf);
	size_t live = 0;
	for (size_t bucket = 0; bucket < t->n_buckets; bucket++) {
		struct guard_good_entry *ways = &t->entries[bucket * GUARD_WAYS];
		pthread_mutex_t *mu = &t->shards[bucket % GUARD_SHARDS].mu;
		pthread_mutex_lock(mu);
		for (int w = 0; w < GUARD_WAYS; w++) {
			if (!good_live(&ways[w], now_ms, c->good_ttl_ms))
				continue;
			live++;
			if (cb != NULL) {
				struct guard_addr a = { .family = ways[w].family };
				memcpy(a.b, ways[w].b, sizeof(a.b));
				cb(arg, &a, ways[w].seen_ms);
			}
		}
		pthread_mutex_unlock(mu);
	}
	return live;
}
