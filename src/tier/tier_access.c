/*
 * tier_access.c - access events: a bounded lock-free ring fed by readers,
 * drained into the heat table by the mover thread.
 *
 * The ring is a multi-producer single-consumer array of TIER_ACCESS_RING
 * slots with per-slot sequence numbers (Vyukov's bounded queue): a producer
 * claims a slot with one CAS and never waits; when the ring is full the
 * event is dropped and counted (heat is advisory).  The consumer is the
 * one thread that calls tier_access_drain.
 *
 * Durability: none until drained; a crash loses at most the events since
 * the last drain (2 seconds in the daemon), never placement.
 *
 * Read shares: the drain also counts each read against the tier its blob
 * is on (blobs.tier when drained, so a move within the 2 seconds may
 * attribute one read to the new tier) in per-minute buckets, one slot per
 * minute of the last day (TIER_READ_SLOTS), plus a running total per
 * tier.  Memory is fixed; a mutex guards it (the drain writes every 2
 * seconds, the admin endpoint reads).  Minutes are monotonic, so a clock
 * step neither loses nor invents reads.
 */
#include "tier.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metrics.h"

struct slot {
	_Atomic uint64_t seq;
	struct msgid id;
	uint8_t ev;
};

static struct slot ring[TIER_ACCESS_RING];
static _Atomic uint64_t head;      /* next slot to claim (producers) */
static uint64_t tail;              /* next slot to read (consumer only) */
static _Atomic uint64_t dropped;
static pthread_once_t ring_once = PTHREAD_ONCE_INIT;
static _Atomic bool ring_ready;

static void ring_init_once(void)
{
	for (uint64_t i = 0; i < TIER_ACCESS_RING; i++)
		atomic_store_explicit(&ring[i].seq, i, memory_order_relaxed);
	atomic_store_explicit(&ring_ready, true, memory_order_release);
}

static void ring_init(void)
{
	pthread_once(&ring_once, ring_init_once);
}

bool tier_access_push(const struct msgid *id, enum tier_event ev)
{
	if (!atomic_load_explicit(&ring_ready, memory_order_acquire))
		ring_init();
	uint64_t pos = atomic_load_explicit(&head, memory_order_relaxed);
	for (int spins = 0; spins < 64; spins++) {
		struct slot *sl = &ring[pos % TIER_ACCESS_RING];
		uint64_t seq = atomic_load_explicit(&sl->seq, memory_order_acquire);
		int64_t diff = (int64_t)(seq - pos);
		if (diff == 0) {
			if (atomic_compare_exchange_weak_explicit(&head, &pos, pos + 1, memory_order_relaxed,
								  memory_order_relaxed)) {
				sl->id = *id;
				sl->ev = (uint8_t)ev;
				atomic_store_explicit(&sl->seq, pos + 1, memory_order_release);
				return true;
			}
		} else if (diff < 0) {
			break; /* full */
		} else {
			pos = atomic_load_explicit(&head, memory_order_relaxed);
		}
	}
	atomic_fetch_add_explicit(&dropped, 1, memory_order_relaxed);
	metric_inc(M_TIER_HEAT_DROPPED);
	return false;
}

uint64_t tier_access_dropped(void)
{
	return atomic_load_explicit(&dropped, memory_order_relaxed);
}

static void hook(const struct msgid *id)
{
	tier_access_push(id, TIER_EVENT_READ);
}

void tier_access_install(void)
{
	ring_init();
	store_access_set_hook(hook);
	store_latency_set_hook(tier_latency_note);
}

void tier_access_uninstall(void)
{
	store_access_set_hook(NULL);
	store_latency_set_hook(NULL);
}

/* Pops one event; false when the ring is empty. */
static bool pop(struct msgid *id, enum tier_event *ev)
{
	struct slot *sl = &ring[tail % TIER_ACCESS_RING];
	uint64_t seq = atomic_load_explicit(&sl->seq, memory_order_acquire);
	if ((int64_t)(seq - (tail + 1)) < 0)
		return false;
	*id = sl->id;
	*ev = (enum tier_event)sl->ev;
	atomic_store_explicit(&sl->seq, tail + TIER_ACCESS_RING, memory_order_release);
	tail++;
	return true;
}

/* ---- read shares ------------------------------------------------------------------ */

static pthread_mutex_t reads_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t slot_minute[TIER_READ_SLOTS];          /* minute + 1 held by the slot; 0 = never */
static uint32_t slot_reads[TIER_READ_SLOTS][CONFIG_TIER_MAX];
static uint64_t reads_total[CONFIG_TIER_MAX];

void tier_reads_note(unsigned tier, uint64_t now_ms)
{
	if (tier >= CONFIG_TIER_MAX)
		return;
	uint64_t minute = now_ms / 60000 + 1;
	size_t slot = (size_t)(minute % TIER_READ_SLOTS);
	pthread_mutex_lock(&reads_mu);
	if (slot_minute[slot] != minute) {
		memset(slot_reads[slot], 0, sizeof(slot_reads[slot]));
		slot_minute[slot] = minute;
	}
	if (slot_reads[slot][tier] < UINT32_MAX)
		slot_reads[slot][tier]++;
	reads_total[tier]++;
	pthread_mutex_unlock(&reads_mu);
}

void tier_reads_get(struct tier_reads *out, uint64_t now_ms)
{
	uint64_t minute = now_ms / 60000 + 1;
	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&reads_mu);
	for (size_t i = 0; i < TIER_READ_SLOTS; i++) {
		uint64_t m = slot_minute[i];
		if (m == 0 || m > minute || minute - m >= TIER_READ_SLOTS)
			continue;
		for (size_t t = 0; t < CONFIG_TIER_MAX; t++) {
			out->day[t] += slot_reads[i][t];
			if (minute - m < 60)
				out->hour[t] += slot_reads[i][t];
		}
	}
	memcpy(out->total, reads_total, sizeof(out->total));
	pthread_mutex_unlock(&reads_mu);
}

void tier_reads_reset(void)
{
	pthread_mutex_lock(&reads_mu);
	memset(slot_minute, 0, sizeof(slot_minute));
	memset(slot_reads, 0, sizeof(slot_reads));
	memset(reads_total, 0, sizeof(reads_total));
	pthread_mutex_unlock(&reads_mu);
}

/* Folds an event into rows (one row per blob). */
static void fold(struct store *st, struct store_heat **rows, size_t *n, size_t *cap, const struct msgid *id,
		 enum tier_event ev, int64_t now, uint64_t half_life_s)
{
	struct store_heat h;
	unsigned tier = UINT32_MAX;
	if (store_tier_heat_get(st, id, &h, &tier) != ST_OK)
		return; /* blob gone (or unreadable): the event is moot */
	if (ev == TIER_EVENT_READ)
		tier_reads_note(tier, time_mono_ms());
	for (size_t i = 0; i < *n; i++) {
		if ((*rows)[i].blob_id == h.blob_id) {
			tier_heat_event(&(*rows)[i], now, ev, half_life_s);
			return;
		}
	}
	tier_heat_event(&h, now, ev, half_life_s);
	if (*n == *cap) {
		*cap = *cap ? *cap * 2 : 64;
		*rows = xreallocarray(*rows, *cap, sizeof(**rows));
	}
	(*rows)[(*n)++] = h;
}

size_t tier_access_drain(struct store *st, uint64_t half_life_s, size_t max, char **error_r)
{
	if (!atomic_load_explicit(&ring_ready, memory_order_acquire))
		return 0;
	struct store_heat *rows = NULL;
	size_t n = 0, cap = 0, popped = 0;
	int64_t now = (int64_t)time(NULL);
	struct msgid id;
	enum tier_event ev;
	while (popped < max && pop(&id, &ev)) {
		popped++;
		fold(st, &rows, &n, &cap, &id, ev, now, half_life_s);
	}
	if (n > 0 && store_tier_heat_put(st, rows, n, error_r) != ST_OK)
		popped = 0;
	free(rows);
	return popped;
}
