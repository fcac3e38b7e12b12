/*
 * tier_heat.c - the heat model: exponential decay, read-day tracking,
 * priors that need no history, and pin rules.
 *
 * A reference's temperature is prior + heat, where heat is the sum of its
 * events' weights (1.0 each), each halved every tier.half_life.  The score
 * is stored undecayed as of `updated`, so a row is only written when an
 * event arrives.  reads_days is a 32-bit day map: bit d set = a read on day
 * (updated / 86400 - d).
 *
 * Priors (docs/TIERING.md): age halves every 30 days; folder role weights
 * INBOX 1.0, Sent/Drafts 0.6, other folders 0.4, Archive/Trash/Junk 0.05;
 * \Seen halves; an account nobody logged into for 90 days (or never, for
 * mail older than 90 days) weighs 0.1.
 *
 * Pure functions; thread-safe.
 */
#include "tier.h"

#include <math.h>
#include <string.h>
#include <strings.h>

#define PRIOR_AGE_HALF_S (30.0 * TIER_DAY_S)
#define INACTIVE_S (90 * (int64_t)TIER_DAY_S)

double tier_heat_decay(double score, int64_t dt_s, uint64_t half_life_s)
{
	if (dt_s <= 0 || half_life_s == 0)
		return score;
	return score * exp2(-(double)dt_s / (double)half_life_s);
}

static int64_t day_of(int64_t t)
{
	return t >= 0 ? t / TIER_DAY_S : -((-t + TIER_DAY_S - 1) / TIER_DAY_S);
}

/* The day map re-based from day `from` to the later day `to`. */
static uint32_t shift_days(uint32_t map, int64_t from, int64_t to)
{
	int64_t d = to - from;
	if (d <= 0)
		return map;
	return d >= 32 ? 0 : map << d;
}

void tier_heat_event(struct store_heat *h, int64_t now, enum tier_event ev, uint64_t half_life_s)
{
	if (h->updated != 0 && now < h->updated)
		now = h->updated; /* clock stepped back: never decay negatively */
	if (h->updated != 0) {
		h->score = tier_heat_decay(h->score, now - h->updated, half_life_s);
		h->reads_days = shift_days(h->reads_days, day_of(h->updated), day_of(now));
	} else {
		h->score = 0;
		h->reads_days = 0;
	}
	h->score += 1.0;
	if (ev == TIER_EVENT_READ)
		h->reads_days |= 1u;
	h->updated = now;
}

unsigned tier_heat_read_days(uint32_t reads_days, int64_t updated, int64_t now)
{
	uint32_t map = shift_days(reads_days, day_of(updated), day_of(now));
	if (TIER_READ_WINDOW_DAYS < 32)
		map &= (1u << TIER_READ_WINDOW_DAYS) - 1;
	return (unsigned)__builtin_popcount(map);
}

static bool role_is(const char *mailbox, const char *special_use, const char *role)
{
	return strcasecmp(mailbox, role) == 0 ||
	       (special_use[0] == '\\' && strcasecmp(special_use + 1, role) == 0);
}

static double role_weight(const char *mailbox, const char *special_use)
{
	if (strcasecmp(mailbox, "INBOX") == 0)
		return 1.0;
	static const char *const cold[] = { "Archive", "Trash", "Junk" };
	for (size_t i = 0; i < ARRAY_LEN(cold); i++) {
		if (role_is(mailbox, special_use, cold[i]))
			return 0.05;
	}
	if (role_is(mailbox, special_use, "Sent") || role_is(mailbox, special_use, "Drafts"))
		return 0.6;
	return 0.4;
}

double tier_prior(const struct tier_prior_in *in, int64_t now)
{
	int64_t age = now - in->received;
	double p = exp2(-(double)(age > 0 ? age : 0) / PRIOR_AGE_HALF_S);
	p *= role_weight(in->mailbox, in->special_use);
	if (in->seen)
		p *= 0.5;
	int64_t active = in->last_login != 0 ? in->last_login : in->received;
	if (now - active > INACTIVE_S)
		p *= 0.1;
	return p;
}

double tier_rank(double temperature, uint64_t size)
{
	return temperature * TIER_RANK_BYTES / (double)(size > TIER_RANK_MIN_BYTES ? size : TIER_RANK_MIN_BYTES);
}

double tier_temperature(const struct store_tier_ref *r, int64_t now, uint64_t half_life_s)
{
	struct tier_prior_in in = { r->received, r->mailbox, r->special_use,
				    (r->flags & MSG_FLAG_SEEN) != 0, r->last_login };
	double heat = r->heat_updated != 0 ? tier_heat_decay(r->heat, now - r->heat_updated, half_life_s) : 0;
	return tier_prior(&in, now) + heat;
}

int tier_pin_for(const struct settings *s, const char *mailbox, const char *special_use,
		 const char *account)
{
	int best_account = -1, best_folder = -1;
	for (size_t i = 0; i < s->n_tier_pins; i++) {
		const struct tier_pin_setting *p = &s->tier_pins[i];
		int t = (int)p->tier;
		if (p->kind == TIER_PIN_ACCOUNT) {
			if (strcasecmp(p->match, account) == 0 && (best_account < 0 || t < best_account))
				best_account = t;
		} else if (role_is(mailbox, special_use, p->match)) {
			if (best_folder < 0 || t < best_folder)
				best_folder = t;
		}
	}
	return best_account >= 0 ? best_account : best_folder;
}
