/*
 * tier_place.c - the placement decision and capacity targets.
 *
 * tier_place works on a candidate array only (no I/O), so it is unit-
 * tested directly.  It simulates the moves it plans on a per-tier byte
 * account, so the plan leaves every tier but the last within its target
 * when that is possible at all, and plans nothing when all is in place.
 * Pure; thread-safe.  O(n log n) (one sort by temperature).
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
	uint64_t used[CONFIG_TIER_MAX];
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
	/* A candidate planned twice (demoted, then put back) keeps one entry. */
	for (size_t k = 0; k < p->count; k++) {
		if (p->out[k].cand == i) {
			account(p, i, to);
			p->out[k].to = to;
			return true;
		}
	}
	if (p->count == p->max)
		return false;
	account(p, i, to);
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

size_t tier_place(struct tier_cand *c, size_t n, const uint64_t *cap, size_t n_tiers, size_t max_moves,
		  struct tier_plan *out)
{
	if (n_tiers == 0 || n_tiers > CONFIG_TIER_MAX)
		panic("tier_place: %zu tiers", n_tiers);
	struct plan_state p = { c, n, n_tiers, max_moves, 0, xcalloc(n ? n : 1, sizeof(unsigned)), { 0 }, out };
	size_t *order = xcalloc(n ? n : 1, sizeof(size_t));
	for (size_t i = 0; i < n; i++) {
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
	/* 3. promotion, hottest first, to the fastest tier with room */
	for (size_t k = 0; k < n; k++) {
		size_t i = order[k];
		if (!c[i].promotable || c[i].pin >= 0 || p.where[i] == 0)
			continue;
		for (unsigned t = 0; t < p.where[i]; t++) {
			if (cap[t] == 0 || p.used[t] + c[i].size <= cap[t]) {
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
	return w;
}
