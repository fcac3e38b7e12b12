/*
 * tier_place.c - the placement decision and capacity targets.
 *
 * tier_place works on a candidate array only (no I/O), so it is unit-
 * tested directly.  It simulates the moves it plans on a per-tier byte
 * account, so the plan leaves every tier but the last within its target
 * when that is possible at all, and plans nothing when all is in place.
 * Pure; thread-safe.  O(n log n) (one sort by temperature; each candidate
 * is planned at most once per slot, found through plan_state.slot).
 */
#include "tier.h"

#include <stdlib.h>
#include <sys/statvfs.h>

uint64_t tier_capacity(const struct tier_setting *t)
{
	if (t->capacity_percent == 0)
		return t->capacity_bytes;
	struct statvfs sv;
	if (statvfs(t->path, &sv) != 0)
		return 0; /* unknown: no limit rather than a bogus one */
	unsigned __int128 total = (unsigned __int128)sv.f_blocks * sv.f_frsize;
	return (uint64_t)(total * t->capacity_percent / 100);
}

static int by_blob_id(const void *a, const void *b)
{
	int64_t x = ((const struct tier_cand *)a)->blob_id, y = ((const struct tier_cand *)b)->blob_id;
	return (x > y) - (x < y);
}

size_t tier_cand_merge(struct tier_cand *c, size_t n)
{
	if (n < 2)
		return n;
	qsort(c, n, sizeof(*c), by_blob_id);
	size_t k = 0;
	for (size_t i = 1; i < n; i++) {
		struct tier_cand *last = &c[k];
		if (c[i].blob_id != last->blob_id) {
			c[++k] = c[i];
			continue;
		}
		if (c[i].temp > last->temp)
			last->temp = c[i].temp;
		if (c[i].pin >= 0 && (last->pin < 0 || c[i].pin < last->pin))
			last->pin = c[i].pin;
		last->promotable |= c[i].promotable;
	}
	return k + 1;
}

static int by_temp_desc(const void *a, const void *b, void *ctx)
{
	const struct tier_cand *c = ctx;
	double x = c[*(const size_t *)a].temp, y = c[*(const size_t *)b].temp;
	return x < y ? 1 : x > y ? -1 : 0;
}

struct plan_state {
	struct tier_cand *c;
	size_t n, n_tiers, max, count;
	unsigned *where;          /* planned tier per candidate */
	size_t *slot;             /* its entry in out, or SIZE_MAX */
	uint64_t used[CONFIG_TIER_MAX];
	size_t cold[CONFIG_TIER_MAX];   /* promotion: where the search for colder blobs stopped */
	struct tier_plan *out;
};

static uint64_t low_water(uint64_t cap)
{
	return cap / 100 * TIER_LOW_WATER + cap % 100 * TIER_LOW_WATER / 100;
}

static void account(struct plan_state *p, size_t i, unsigned to)
{
	p->used[p->where[i]] -= p->c[i].size;
	p->used[to] += p->c[i].size;
	p->where[i] = to;
}

static bool plan(struct plan_state *p, size_t i, unsigned to)
{
	/* A candidate planned twice keeps one entry; one put back where it
	 * started (demoted, then put back) gives its entry up, so no-op moves
	 * never use the pass's max_moves. */
	if (p->slot[i] != SIZE_MAX) {
		account(p, i, to);
		size_t at = p->slot[i];
		if (to != p->c[i].tier) {
			p->out[at].to = to;
			return true;
		}
		p->slot[i] = SIZE_MAX;
		p->out[at] = p->out[--p->count];
		if (at < p->count)
			p->slot[p->out[at].cand] = at;
		return true;
	}
	if (p->count == p->max)
		return false;
	account(p, i, to);
	p->slot[i] = p->count;
	p->out[p->count++] = (struct tier_plan){ i, to };
	return true;
}

/* Demotes tier t's coldest unpinned blobs until it is at its low-water
 * mark, then puts back the hottest of them that still fit under the target
 * itself (so one blob larger than the margin does not empty the tier). */
static void demote(struct plan_state *p, const size_t *order, size_t t, uint64_t cap, size_t *moved)
{
	uint64_t goal = low_water(cap);
	size_t n_moved = 0;
	for (size_t k = p->n; k-- > 0 && p->used[t] > goal;) {
		size_t i = order[k];
		p->cold[t] = k;   /* promotion looks for colder blobs above here */
		if (p->where[i] != t || p->c[i].pin >= 0)
			continue;
		if (!plan(p, i, (unsigned)t + 1))
			break;
		moved[n_moved++] = i;
	}
	for (size_t k = n_moved; k-- > 0;) {
		size_t i = moved[k];
		if (p->used[t] + p->c[i].size <= cap)
			plan(p, i, (unsigned)t);
	}
}

/* Room on tier t for promoting candidate i (at position k of order) by
 * demoting, one tier down, unpinned blobs of t colder than half of i's
 * temperature, coldest first.  The search goes on where demotion (or the
 * previous promotion) stopped: each blob is looked at once per pass.  A
 * blob displaced for a promotion that still does not fit stays demoted:
 * it was colder than half of something read again. */
static bool displace(struct plan_state *p, const size_t *order, unsigned t, uint64_t cap, size_t i, size_t k)
{
	if (p->c[i].size > cap)
		return false;
	while (p->used[t] + p->c[i].size > cap && p->cold[t] > k + 1) {
		size_t v = order[p->cold[t] - 1];
		if (p->c[v].temp * 2 >= p->c[i].temp)
			break;        /* hotter from here on (order is hottest first) */
		p->cold[t]--;
		if (p->where[v] == t && p->c[v].pin < 0 && !plan(p, v, t + 1))
			return false;
	}
	return p->used[t] + p->c[i].size <= cap;
}

size_t tier_place(struct tier_cand *c, size_t n, const uint64_t *cap, size_t n_tiers, size_t max_moves,
		  struct tier_plan *out)
{
	if (n_tiers == 0 || n_tiers > CONFIG_TIER_MAX)
		panic("tier_place: %zu tiers", n_tiers);
	struct plan_state p = { c, n, n_tiers, max_moves, 0, xcalloc(n ? n : 1, sizeof(unsigned)),
				xcalloc(n ? n : 1, sizeof(size_t)), { 0 }, { 0 }, out };
	size_t *order = xcalloc(n ? n : 1, sizeof(size_t));
	for (size_t t = 0; t < n_tiers; t++)
		p.cold[t] = n;
	for (size_t i = 0; i < n; i++) {
		p.slot[i] = SIZE_MAX;
		unsigned t = c[i].tier < n_tiers ? c[i].tier : (unsigned)n_tiers - 1;
		p.where[i] = t;
		p.used[t] += c[i].size;
		order[i] = i;
	}
	qsort_r(order, n, sizeof(size_t), by_temp_desc, c);
	/* 1. pins */
	for (size_t i = 0; i < n; i++) {
		if (c[i].pin >= 0 && (unsigned)c[i].pin < n_tiers && p.where[i] != (unsigned)c[i].pin)
			plan(&p, i, (unsigned)c[i].pin);
	}
	/* 2. demotion, tier by tier, coldest first */
	size_t *moved = xcalloc(n ? n : 1, sizeof(size_t));
	for (size_t t = 0; t + 1 < n_tiers; t++) {
		if (cap[t] != 0 && p.used[t] > cap[t])
			demote(&p, order, t, cap[t], moved);
	}
	free(moved);
	/* 3. promotion, hottest first, to the fastest tier with room, or where
	 * blobs colder than half its temperature can make room (a full fast
	 * tier would otherwise never take back a message read again) */
	for (size_t k = 0; k < n; k++) {
		size_t i = order[k];
		if (!c[i].promotable || c[i].pin >= 0 || p.where[i] == 0)
			continue;
		for (unsigned t = 0; t < p.where[i]; t++) {
			if (cap[t] == 0 || p.used[t] + c[i].size <= cap[t] || displace(&p, order, t, cap[t], i, k)) {
				plan(&p, i, t);
				break;
			}
		}
	}
	/* moves that ended where they started are no moves */
	size_t w = 0;
	for (size_t k = 0; k < p.count; k++) {
		if (p.out[k].to != c[p.out[k].cand].tier)
			p.out[w++] = p.out[k];
	}
	free(order);
	free(p.where);
	free(p.slot);
	return w;
}
