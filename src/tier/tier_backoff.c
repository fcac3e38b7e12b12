/*
 * tier_backoff.c - the mover slows down while foreground latency rises.
 *
 * Samples: store_blob_open times the open and first read of every blob a
 * reader opens (IMAP FETCH, POP3 RETR/TOP, SEARCH), and reports it through
 * the store's latency hook, which tier_access_install points at
 * tier_latency_note: two relaxed atomic adds, never blocking.  The mover's
 * own copies do not go through store_blob_open, so they are not samples.
 *
 * The rule (tier_backoff_update, pure), once per TIER_BACKOFF_INTERVAL_MS:
 *   mean  = the interval's mean latency (needs TIER_BACKOFF_MIN_SAMPLES)
 *   lat   = EWMA of mean, weight 0.3
 *   base  = the baseline: the lowest lat of the first TIER_BACKOFF_WARMUP
 *           intervals, then an EWMA of lat with weight 0.02 (0.002 while
 *           congested, so a lasting overload is adopted as normal only
 *           after about half an hour)
 *   congested: lat > 2 x base and lat - base > TIER_BACKOFF_SLACK_US, and
 *           the same holds for this interval's mean
 *           -> factor = max(factor / 2, TIER_BACKOFF_FLOOR)    (halve)
 *   relaxed: lat < 1.25 x base, or lat - base < SLACK / 2, or too few
 *           samples (nobody is waiting on a disk)
 *           -> factor = min(factor + 1/16, 1)                   (recover)
 * The mover's token bucket runs at factor x tier.move_rate and
 * tier.move_files (tier_budget_scale).  Multiplicative decrease and
 * additive increase, as TCP does: a spike halves the mover at once; once
 * the average has come back down, each quiet interval gives back 1/16,
 * so the way back from the floor takes at least 15 intervals (30 s).
 *
 * State: one per process (the daemon has one mover), guarded by a mutex;
 * the admin endpoint reads it.  `strata tier move` runs in its own
 * process, where no reader reports samples: its budget is not scaled.
 */
#include "tier.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

static _Atomic uint64_t lat_sum_us, lat_n;

void tier_latency_note(uint64_t us)
{
	atomic_fetch_add_explicit(&lat_sum_us, us, memory_order_relaxed);
	atomic_fetch_add_explicit(&lat_n, 1, memory_order_relaxed);
}

/* The samples since the last call (a sample racing the two exchanges lands
 * in this interval or the next: harmless). */
static void latency_take(uint64_t *sum_r, uint64_t *n_r)
{
	*n_r = atomic_exchange_explicit(&lat_n, 0, memory_order_relaxed);
	*sum_r = atomic_exchange_explicit(&lat_sum_us, 0, memory_order_relaxed);
}

void tier_backoff_init(struct tier_backoff *b)
{
	memset(b, 0, sizeof(*b));
	b->factor = 1.0;
}

static void recover(struct tier_backoff *b)
{
	b->factor += 1.0 / 16;
	if (b->factor > 1.0)
		b->factor = 1.0;
}

enum tier_backoff_step tier_backoff_update(struct tier_backoff *b, uint64_t sum_us, uint64_t n)
{
	if (n < TIER_BACKOFF_MIN_SAMPLES) {
		bool was = b->factor < 1.0;
		recover(b);
		return was ? TIER_BACKOFF_RECOVER : TIER_BACKOFF_HOLD;
	}
	double mean = (double)sum_us / (double)n;
	b->samples += n;
	b->lat_us = b->intervals == 0 ? mean : 0.3 * mean + 0.7 * b->lat_us;
	b->intervals++;
	if (b->intervals <= TIER_BACKOFF_WARMUP) {
		if (b->intervals == 1 || b->lat_us < b->base_us)
			b->base_us = b->lat_us;
		return TIER_BACKOFF_HOLD;
	}
	double excess = b->lat_us - b->base_us;
	/* The interval itself must be slow too: after a spike the EWMA stays
	 * high for a while, and that memory should delay recovery, not halve
	 * the mover again. */
	bool congested = b->lat_us > 2.0 * b->base_us && excess > TIER_BACKOFF_SLACK_US &&
			 mean > 2.0 * b->base_us && mean - b->base_us > TIER_BACKOFF_SLACK_US;
	b->base_us += (congested ? 0.002 : 0.02) * (b->lat_us - b->base_us);
	if (congested) {
		b->factor /= 2;
		if (b->factor < TIER_BACKOFF_FLOOR)
			b->factor = TIER_BACKOFF_FLOOR;
		b->halvings++;
		return TIER_BACKOFF_HALVE;
	}
	if (b->lat_us < 1.25 * b->base_us || excess < TIER_BACKOFF_SLACK_US / 2) {
		bool was = b->factor < 1.0;
		recover(b);
		return was ? TIER_BACKOFF_RECOVER : TIER_BACKOFF_HOLD;
	}
	return TIER_BACKOFF_HOLD;
}

void tier_budget_scale(struct tier_budget *b, double factor)
{
	if (b->bytes_max <= 0) {
		b->bytes_max = b->bytes_rate;
		b->files_max = b->files_rate;
	}
	b->bytes_rate = b->bytes_max * factor;
	b->files_rate = b->files_max * factor;
	if (b->bytes > b->bytes_rate)
		b->bytes = b->bytes_rate;
	if (b->files > b->files_rate)
		b->files = b->files_rate;
}

/* ---- the daemon's state ------------------------------------------------------------- */

static pthread_mutex_t bo_mu = PTHREAD_MUTEX_INITIALIZER;
static struct tier_backoff bo = { .factor = 1.0 };
static uint64_t bo_next_ms;

void tier_backoff_tick(struct tier_budget *budget, uint64_t now_ms)
{
	pthread_mutex_lock(&bo_mu);
	if (now_ms < bo_next_ms) {
		pthread_mutex_unlock(&bo_mu);
		return;
	}
	bo_next_ms = now_ms + TIER_BACKOFF_INTERVAL_MS;
	uint64_t sum, n;
	latency_take(&sum, &n);
	enum tier_backoff_step step = tier_backoff_update(&bo, sum, n);
	double factor = bo.factor, lat = bo.lat_us, base = bo.base_us;
	pthread_mutex_unlock(&bo_mu);
	if (budget)
		tier_budget_scale(budget, factor);
	if (step == TIER_BACKOFF_HALVE)
		log_info("tier: foreground blob latency %.1f ms over a %.1f ms baseline: mover budget now %.0f%%",
			 lat / 1000, base / 1000, factor * 100);
	else if (step == TIER_BACKOFF_RECOVER && factor >= 1.0)
		log_info("tier: foreground latency back to normal: mover budget 100%%");
}

void tier_backoff_get(struct tier_backoff *out)
{
	pthread_mutex_lock(&bo_mu);
	*out = bo;
	pthread_mutex_unlock(&bo_mu);
}

void tier_backoff_reset(void)
{
	uint64_t sum, n;
	pthread_mutex_lock(&bo_mu);
	tier_backoff_init(&bo);
	bo_next_ms = 0;
	latency_take(&sum, &n);
	pthread_mutex_unlock(&bo_mu);
}
