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
}

void tier_access_uninstall(void)
{
	store_access_set_hook(NULL);
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

/* Folds an event into rows (one row per blob). */
static void fold(struct store *st, struct store_heat **rows, size_t *n, size_t *cap, const struct msgid *id,
		 enum tier_event ev, int64_t now, uint64_t half_life_s)
{
	struct store_heat h;
	if (store_tier_heat_get(st, id, &h) != ST_OK)
		return; /* blob gone (or unreadable): the event is moot */
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
