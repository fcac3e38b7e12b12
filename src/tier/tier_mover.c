/*
 * tier_mover.c - the placement pass and the daemon's mover thread.
 *
 * A pass reads every message reference (store_tier_refs, in chunks that
 * each end their read transaction, so a pass starved of CPU never holds
 * the WAL), folds the references of a blob into one candidate
 * (tier_cand_merge: the hottest reference's temperature, the fastest pin,
 * read days from the heat row), asks
 * tier_place for at most tier.batch moves, and performs them under the
 * token-bucket budget, sleeping between moves in slices of at most 100 ms
 * so a stop request is honoured promptly.
 *
 * Gentleness: the mover only ever uses what the users leave.
 *   - CPU: its thread runs at SCHED_IDLE (nice 19 first, which stays if
 *     SCHED_IDLE is refused): any runnable foreground thread preempts it.
 *   - Disk: its thread is in the idle I/O class (ioprio_set): schedulers
 *     that implement classes (BFQ, mq-deadline since Linux 5.14) dispatch
 *     its reads, writes and fsyncs only when no other class has requests
 *     queued (BFQ after a short grace period; mq-deadline ages a starved
 *     request after 10 s).  With "none" (NVMe, virtio defaults) the class
 *     is ignored, and the pacing below is what protects the users.
 *   - Pacing: after each move it rests for a multiple of the time the move
 *     took (MOVE_REST_BASE, more as the back-off lowers its factor: at
 *     factor f the rest is move time x (MOVE_REST_BASE + 1/f - 1)), so at
 *     most ~89% duty cycle when nobody waits and a long pause per move
 *     while foreground latency is high; a slow disk makes moves slower and
 *     so the rests longer by itself.  The token bucket still caps bytes and
 *     files per second on top.
 *   The index transactions of a move are short, and a SCHED_IDLE thread
 *   still gets CPU time on a busy machine (a weight of 3 against 1024), far
 *   within the writers' 10 s busy timeout.
 *
 * The thread: drains access events into the heat table every 2 seconds
 * (also between the moves of a pass), and every tier.interval takes the mover lock without waiting (a running
 * `strata tier move` makes it skip the pass), runs recovery and a pass,
 * and refreshes the per-tier gauges; with every flush, and while a pass
 * waits for its budget, the back-off (tier_backoff.c) rescales the budget
 * from the foreground latency; every tier.checkpoint_interval (and
 * once more at stop) it writes a heat checkpoint (tier_checkpoint.c).  It
 * owns its own store handle.  With each flush it also runs the store's MIME
 * dictionary maintenance (store_mime_dict_maintain: a training now and
 * then, a batch of re-packed rows until none is raw): it may block for a
 * few hundred ms of CPU, which this idle thread is the place for.
 *
 * Start: when the tier tables are damaged or lost (tier_state_needs_rebuild),
 * tier_rebuild runs under the mover lock before the thread starts, so the
 * first pass already sees the placement from the files and the restored heat.
 */
#include "tier.h"

#include <errno.h>
#include <linux/ioprio.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "metrics.h"

#define FLUSH_MS 2000
#define MOVER_CACHE_KIB 4096        /* the mover handle's SQLite page cache */
#define FIRST_PASS_MS 5000          /* first pass after start (sooner when tier.interval is) */
#define DRAIN_MAX 8192
#define MOVE_REST_BASE 0.125        /* rest per move / move time, back-off at 1 */
#define MOVE_REST_MAX_US 2000000    /* longest rest after one move */

struct fold_ctx {
	const struct settings *s;
	int64_t now;
	uint64_t half_life_s;
	struct tier_cand *c;
	size_t n, cap;
	bool overflow;
};

static bool fold_ref(void *vctx, const struct store_tier_ref *r)
{
	struct fold_ctx *f = vctx;
	double t = tier_rank(tier_temperature(r, f->now, f->half_life_s), r->size);
	int pin = tier_pin_for(f->s, r->mailbox, r->special_use, r->account);
	struct tier_cand *last = f->n ? &f->c[f->n - 1] : NULL;
	if (last && last->blob_id == r->blob_id) {
		if (t > last->temp)
			last->temp = t;
		if (pin >= 0 && (last->pin < 0 || pin < last->pin))
			last->pin = pin;
		return true;
	}
	if (f->n == f->cap) {
		if (f->cap >= (size_t)1 << 28) {
			f->overflow = true;
			return false;
		}
		f->cap = f->cap ? f->cap * 2 : 1024;
		f->c = xreallocarray(f->c, f->cap, sizeof(*f->c));
	}
	struct tier_cand *c = &f->c[f->n++];
	c->blob_id = r->blob_id;
	c->id = r->id;
	c->tier = r->tier;
	c->size = r->size;
	c->temp = t;
	c->pin = pin;
	c->promotable = r->heat_updated != 0 &&
			tier_heat_read_days(r->reads_days, r->heat_updated, f->now) >= f->s->tier_promote_days;
	return true;
}

static void sleep_us(uint64_t us)
{
	struct timespec ts = { (time_t)(us / 1000000), (long)(us % 1000000) * 1000 };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* Sleeps `us` in slices of at most 100 ms; false when stopped meanwhile. */
static bool rest_us(uint64_t us, const volatile bool *stop)
{
	for (int i = 0; us > 0 && i < 100000; i++) {
		if (*stop)
			return false;
		uint64_t slice = us < 100000 ? us : 100000;
		sleep_us(slice);
		us -= slice;
	}
	return !*stop;
}

/* The rest after a move of `move_us` (the daemon's mover only). */
static uint64_t move_rest_us(uint64_t move_us)
{
	struct tier_backoff bo;
	tier_backoff_get(&bo);
	double f = bo.factor >= TIER_BACKOFF_FLOOR ? bo.factor : TIER_BACKOFF_FLOOR;
	double rest = (double)move_us * (MOVE_REST_BASE + 1.0 / f - 1.0);
	return rest < MOVE_REST_MAX_US ? (uint64_t)rest : MOVE_REST_MAX_US;
}

/* A long pass (rests, a lowered budget) must not let the access ring
 * overflow: the daemon's pass drains it every FLUSH_MS, as the thread does
 * between passes. */
static void pass_drain_heat(struct store *st, const struct settings *s, uint64_t *next_ms)
{
	uint64_t now = time_mono_ms();
	if (now < *next_ms)
		return;
	*next_ms = now + FLUSH_MS;
	char *err = NULL;
	(void)tier_access_drain(st, s->tier_half_life_ms / 1000, DRAIN_MAX, &err);
	if (err) {
		log_warn("tier: heat flush failed: %s", err);
		free(err);
	}
}

/* Waits for the budget; false when stopped meanwhile. */
static bool wait_budget(struct tier_budget *b, uint64_t bytes, const volatile bool *stop)
{
	for (int i = 0; i < 100000; i++) {
		if (stop && *stop)
			return false;
		if (stop) /* only the daemon's mover passes `stop`: the back-off applies to it */
			tier_backoff_tick(b, time_mono_ms());
		uint64_t w = tier_budget_take(b, bytes, time_mono_us());
		if (w == 0)
			return true;
		sleep_us(w < 100000 ? w : 100000);
	}
	return false;
}

enum status tier_pass(struct store *st, const struct settings *s, struct tier_budget *b,
		      const volatile bool *stop, struct tier_pass_stats *out, char **error_r)
{
	memset(out, 0, sizeof(*out));
	struct fold_ctx f = { s, (int64_t)time(NULL), s->tier_half_life_ms / 1000, NULL, 0, 0, false };
	enum status r = store_tier_refs(st, NULL, NULL, 0, fold_ref, &f, error_r);
	if (r == ST_OK && f.overflow) {
		if (error_r)
			*error_r = xstrdup("too many blobs for one placement pass");
		r = ST_TEMPFAIL;
	}
	if (r != ST_OK || s->n_tiers < 2) {
		free(f.c);
		return r;
	}
	f.n = tier_cand_merge(f.c, f.n);
	uint64_t cap[CONFIG_TIER_MAX];
	for (size_t t = 0; t < s->n_tiers; t++)
		cap[t] = tier_capacity(&s->tiers[t]);
	struct tier_plan *plan = xcalloc(s->tier_batch, sizeof(*plan));
	size_t n = tier_place(f.c, f.n, cap, s->n_tiers, s->tier_batch, plan);
	out->planned = n;
	uint64_t next_drain_ms = time_mono_ms() + FLUSH_MS;
	for (size_t i = 0; i < n; i++) {
		const struct tier_cand *c = &f.c[plan[i].cand];
		if (!wait_budget(b, c->size, stop))
			break;
		uint64_t bytes = 0;
		char *err = NULL;
		uint64_t t0 = time_mono_us();
		enum status mr = tier_move_blob(st, s, c->blob_id, &c->id, c->tier, plan[i].to, &bytes, &err);
		uint64_t move_us = time_mono_us() - t0;
		if (mr == ST_OK) {
			out->moved++;
			out->bytes += bytes;
		} else if (mr != ST_NOT_FOUND) {
			out->failed++;
			metric_inc(M_TIER_MOVE_FAILURES);
			log_warn("tier: move of blob %lld to tier %u failed: %s", (long long)c->blob_id,
				 plan[i].to, err ? err : status_info(mr)->name);
		}
		free(err);
		if (stop != NULL) {
			if (!rest_us(move_rest_us(move_us), stop))
				break;
			pass_drain_heat(st, s, &next_drain_ms);
		}
	}
	free(plan);
	free(f.c);
	return ST_OK;
}

void tier_metrics_update(struct store *st, const struct settings *s)
{
	struct store_tier_usage u[CONFIG_TIER_MAX];
	uint64_t stray;
	(void)s;
	if (store_tier_usage(st, u, &stray, NULL) != ST_OK)
		return;
	for (int t = 0; t < CONFIG_TIER_MAX; t++) {
		enum metric_gauge gb = (enum metric_gauge)(M_TIER_BYTES_0 + t);
		enum metric_gauge gm = (enum metric_gauge)(M_TIER_MESSAGES_0 + t);
		gauge_add(gb, (int64_t)u[t].bytes - gauge_get(gb));
		gauge_add(gm, (int64_t)u[t].messages - gauge_get(gm));
	}
}

/* ---- the thread ------------------------------------------------------------- */

struct tier_mover {
	const struct settings *s;
	struct store *st;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	volatile bool stop;
	struct tier_budget budget;
};

/* See "The thread" above; a failure is logged and retried next flush. */
static void mime_dicts(struct tier_mover *m)
{
	char *err = NULL;
	if (store_mime_dict_maintain(m->st, &err) != ST_OK) {
		log_warn("tier: MIME dictionary maintenance: %s", err ? err : "unknown error");
		free(err);
	}
}

static void flush_heat(struct tier_mover *m)
{
	char *err = NULL;
	for (int i = 0; i < 64; i++) {
		if (tier_access_drain(m->st, m->s->tier_half_life_ms / 1000, DRAIN_MAX, &err) < DRAIN_MAX)
			break;
	}
	if (err) {
		log_warn("tier: heat flush failed: %s", err);
		free(err);
	}
}

static void checkpoint(struct tier_mover *m)
{
	char *err = NULL;
	struct tier_ckpt_info ci;
	if (tier_checkpoint_write(m->st, m->s, &ci, &err) != ST_OK) {
		log_warn("tier: heat checkpoint failed: %s", err ? err : "?");
		free(err);
		return;
	}
	if (ci.path[0] != '\0')
		log_debug("tier: heat checkpoint %s: %zu row(s)", ci.path, ci.rows);
}

static void run_pass(struct tier_mover *m)
{
	int lock = tier_lock(m->s, false);
	if (lock < 0)
		return; /* `strata tier move` is running: next interval */
	char *err = NULL;
	struct tier_pass_stats ps;
	if (tier_recover(m->st, m->s, NULL, &err) != ST_OK ||
	    tier_pass(m->st, m->s, &m->budget, &m->stop, &ps, &err) != ST_OK) {
		log_warn("tier: placement pass failed: %s", err ? err : "?");
	} else if (ps.moved || ps.failed) {
		log_info("tier: pass moved %zu blob(s), %llu bytes, %zu failed, of %zu planned", ps.moved,
			 (unsigned long long)ps.bytes, ps.failed, ps.planned);
	}
	free(err);
	tier_unlock(&lock);
	tier_metrics_update(m->st, m->s);
}

/* Sleeps on the condition variable until `until_ms` (monotonic) or a stop. */
static void wait_until_ms(struct tier_mover *m, uint64_t until_ms)
{
	uint64_t now = time_mono_ms();
	if (until_ms <= now)
		return;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	uint64_t ns = (uint64_t)ts.tv_nsec + (until_ms - now) * 1000000ull;
	ts.tv_sec += (time_t)(ns / 1000000000ull);
	ts.tv_nsec = (long)(ns % 1000000000ull);
	pthread_cond_timedwait(&m->cv, &m->mu, &ts);
}

/* See "Gentleness" above.  Each step is on this thread only (Linux applies
 * nice, policy and I/O priority per thread); a refusal is logged and the
 * mover runs anyway, paced by its back-off. */
static void mover_be_gentle(void)
{
	pid_t tid = (pid_t)syscall(SYS_gettid);
	if (setpriority(PRIO_PROCESS, (id_t)tid, 19) != 0)
		log_warn("tier: cannot lower the mover's priority: %s", strerror(errno));
	struct sched_param sp = { 0 };
	int e = pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
	if (e != 0)
		log_warn("tier: cannot run the mover at SCHED_IDLE: %s", strerror(e));
	if (syscall(SYS_ioprio_set, IOPRIO_WHO_PROCESS, tid, IOPRIO_PRIO_VALUE(IOPRIO_CLASS_IDLE, 0)) != 0)
		log_warn("tier: cannot put the mover in the idle I/O class: %s", strerror(errno));
}

static void *mover_main(void *arg)
{
	struct tier_mover *m = arg;
	mover_be_gentle();
	(void)pthread_setname_np(pthread_self(), "tier-mover");
	/* The first pass, and with it the first tier gauges (both read every
	 * message or blob row), wait until the daemon has started: run at
	 * once, they competed with its start-up for the CPUs and the page
	 * cache (0.04 s of start-up became 0.08 at 200,000 messages). */
	uint64_t now = time_mono_ms();
	uint64_t first = m->s->tier_interval_ms < FIRST_PASS_MS ? m->s->tier_interval_ms : FIRST_PASS_MS;
	uint64_t next_flush = now + FLUSH_MS, next_pass = now + first;
	uint64_t next_ckpt = now + m->s->tier_checkpoint_interval_ms;
	pthread_mutex_lock(&m->mu);
	while (!m->stop) {
		uint64_t until = next_flush < next_pass ? next_flush : next_pass;
		wait_until_ms(m, until < next_ckpt ? until : next_ckpt);
		if (m->stop)
			break;
		pthread_mutex_unlock(&m->mu);
		now = time_mono_ms();
		if (now >= next_flush) {
			flush_heat(m);
			mime_dicts(m);
			tier_backoff_tick(&m->budget, time_mono_ms());
			next_flush = time_mono_ms() + FLUSH_MS;
		}
		if (now >= next_pass) {
			run_pass(m);
			next_pass = time_mono_ms() + m->s->tier_interval_ms;
		}
		if (now >= next_ckpt) {
			flush_heat(m);
			checkpoint(m);
			next_ckpt = time_mono_ms() + m->s->tier_checkpoint_interval_ms;
		}
		pthread_mutex_lock(&m->mu);
	}
	pthread_mutex_unlock(&m->mu);
	return NULL;
}

/* Under the mover lock: a rebuild when the tier state was lost, else the
 * tables (created if missing) and recovery of interrupted moves. */
static enum status start_state(struct store *st, const struct settings *s, char **error_r)
{
	char *reason = NULL;
	if (!tier_state_needs_rebuild(st, s, &reason)) {
		enum status r = store_tier_init(st, error_r);
		return r == ST_OK ? tier_recover(st, s, NULL, error_r) : r;
	}
	log_warn("tier: %s: rebuilding the tier state (placement from the files, heat from the newest checkpoint)",
		 reason);
	free(reason);
	struct tier_rebuild_result rr;
	char *err = NULL;
	if (tier_rebuild(st, s, &rr, &err) == ST_OK)
		return ST_OK;
	/* Heat is advisory: start with what there is rather than not at all. */
	log_error("tier: rebuild of the tier state failed: %s; starting without it", err ? err : "?");
	free(err);
	enum status r = store_tier_init(st, error_r);
	return r == ST_OK ? tier_recover(st, s, NULL, error_r) : r;
}

struct tier_mover *tier_mover_start(const struct settings *s, char **error_r)
{
	for (size_t t = 1; t < s->n_tiers; t++) {
		if (!fs_mkdir_p(s->tiers[t].path, 0750)) {
			*error_r = xasprintf("cannot create tier %s at %s: %s", s->tiers[t].name, s->tiers[t].path,
					     strerror(errno));
			return NULL;
		}
	}
	struct store *st = store_open(s, false, error_r);
	if (st == NULL)
		return NULL;
	int lock = tier_lock(s, true);
	if (lock < 0) {
		*error_r = xasprintf("tier lock in %s: %s", s->tiers[0].path, strerror(errno));
		store_close(&st);
		return NULL;
	}
	enum status r = start_state(st, s, error_r);
	tier_unlock(&lock);
	/* From here on the handle scans (placement passes, gauges) and makes
	 * small writes (heat, MIME re-pack): a writer's 32 MiB page cache would
	 * only keep a scan's pages resident, 32 MiB of idle RSS at 1,000,000
	 * messages.  Misses are served by the OS page cache. */
	if (r == ST_OK)
		r = store_imap_cache_limit(st, MOVER_CACHE_KIB, error_r);
	if (r != ST_OK) {
		store_close(&st);
		return NULL;
	}
	struct tier_mover *m = xcalloc(1, sizeof(*m));
	m->s = s;
	m->st = st;
	tier_budget_init(&m->budget, s);
	tier_backoff_reset();
	pthread_mutex_init(&m->mu, NULL);
	pthread_cond_init(&m->cv, NULL);
	tier_admin_settings(s);
	tier_access_install();
	int e = pthread_create(&m->thread, NULL, mover_main, m);
	if (e != 0) {
		tier_access_uninstall();
		tier_admin_settings(NULL);
		*error_r = xasprintf("tier mover thread: %s", strerror(e));
		pthread_cond_destroy(&m->cv);
		pthread_mutex_destroy(&m->mu);
		store_close(&m->st);
		free(m);
		return NULL;
	}
	return m;
}

void tier_mover_stop(struct tier_mover **mp)
{
	struct tier_mover *m = *mp;
	if (m == NULL)
		return;
	pthread_mutex_lock(&m->mu);
	m->stop = true;
	pthread_cond_signal(&m->cv);
	pthread_mutex_unlock(&m->mu);
	pthread_join(m->thread, NULL);
	tier_access_uninstall();
	tier_admin_settings(NULL);
	flush_heat(m);
	checkpoint(m);
	pthread_cond_destroy(&m->cv);
	pthread_mutex_destroy(&m->mu);
	store_close(&m->st);
	free(m);
	*mp = NULL;
}
