/*
 * store_checkpoint.c - the daemon's WAL checkpointer: who copies the
 * index's write-ahead log back into index.db, and when.
 *
 * Owns: one thread with its own read-write handle (store_open), the
 * process-wide state its WAL hook shares with every other daemon handle
 * (a static, like the dictionary registry of store_mime_dict.c: at most
 * one checkpointer per process), and the checkpoint metrics.
 *
 * Why: by default SQLite checkpoints inside the COMMIT that pushes the WAL
 * past wal_autocheckpoint pages: that connection copies up to that many
 * pages to random places of index.db and fsyncs it before COMMIT returns.
 * When that connection is the delivery committer (src/queue), every
 * delivery of the next batch waits for it, and the wait grows with the
 * index (more pages, further apart, more of them outside the page cache).
 * Here the committing threads only note the WAL's size (sqlite3_wal_hook:
 * two relaxed atomic stores, and a condition-variable signal whose mutex is
 * only ever held for a flag check) and this thread runs the checkpoint.
 *
 * Durability: SQLite's checkpoint protocol is unchanged; only WHO runs it
 * and WHEN changes.  A COMMIT is durable when its WAL frames are written
 * and, with store.fsync=yes (synchronous=FULL), fsynced: that is what a 250
 * promises, before and after this file.  A checkpoint copies frames that are
 * already durable into index.db, fsyncs index.db, and only then records in
 * the WAL index how far it got; a crash at any point leaves the WAL to be
 * replayed at the next open.  A checkpoint that is late, interrupted or
 * never runs costs WAL size and reader speed, never a committed message.
 *
 * When:
 *   - woken by a hook when the WAL holds >= store.checkpoint_pages pages
 *     that no checkpoint has copied yet (the hook runs on the committing
 *     thread after each COMMIT).  Counting the log's whole length instead
 *     would, under a steady load that never lets the log be rewound (see
 *     ckpt_rewind), wake this thread after nearly every commit: each round
 *     would copy a few pages and fsync index.db, with no two commits'
 *     writes to the same page folded into one (measured at 1,000,000
 *     messages: 166 rounds for 5,000 deliveries);
 *   - every CKPT_IDLE_MS while commits happened since the last complete
 *     checkpoint (a quiet index ends with an empty WAL);
 *   - a checkpoint that copied nothing new waits CKPT_RETRY_MS before the
 *     next (readers pinning the log must not make this thread spin).
 * Each round is a PASSIVE checkpoint: it copies what no reader still needs
 * and gives up at once where a reader or the writer is in its way (it
 * never takes the write lock and never calls a busy handler).  When it
 * copied everything, a RESTART with no busy wait rewinds the log (see
 * ckpt_rewind): SQLite rewinds it by itself only at the start of a write
 * transaction that began after the log was completely copied, which a
 * committer that starts its next batch while the checkpoint runs would
 * never see.  That RESTART holds the write lock for as long as it takes to
 * rewrite the WAL index header, or fails at once.  Within a round nothing
 * waits for anybody.
 *
 * Safety valve: when the log has grown to CKPT_VALVE_FACTOR times the
 * threshold anyway (readers kept it from being rewound, or the writer was
 * never idle when this thread tried), the committing thread itself runs
 * one RESTART right after its COMMIT, with no busy wait (the next one at
 * twice that size if a reader kept the log from being rewound, see
 * ckpt_valve): it copies what this thread has not yet copied and
 * rewinds the log unless a reader still uses it.  Under a steady load
 * that is routine (the committer is seldom idle when this thread tries its
 * rewind): a valve that rewound the log is only counted; one that a reader
 * kept from rewinding logs a warning.  It runs there because
 * that thread holds no lock at that moment: measured, a RESTART from this
 * thread with a busy timeout waited its whole timeout in vain while a
 * writer that is never idle kept taking the write lock (SQLite's locks are
 * polled, not queued).  One warning per episode (until a checkpoint finds
 * the log under the threshold again).  journal_size_limit (store_db.c)
 * still caps the WAL file kept after a rewind.
 *
 * Priority: the thread keeps the process's normal CPU and I/O priority (not
 * idle like the tier mover): a starved checkpointer lets the WAL, and every
 * reader's lookups through it, grow.
 *
 * Handles: store_open calls store_checkpoint_attach on every read-write
 * handle.  While the checkpointer runs and the handle is of its index, the
 * handle gets wal_autocheckpoint=0 and the hook.  Handles of other files
 * (a rebuild's new index) and of processes without a checkpointer (the
 * CLI) get SQLite's automatic checkpoint at store.checkpoint_pages.  After
 * stop, the hook of handles still open falls back to that same automatic
 * checkpoint.
 *
 * Threads: start and stop on the main thread; the hook on any thread that
 * commits; the rest on the checkpointer's own thread.
 */
#include "store_internal.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "metrics.h"

#define CKPT_IDLE_MS 2000          /* checkpoint a non-empty WAL at least this often */
#define CKPT_RETRY_MS 100          /* after a checkpoint that copied nothing new */
#define CKPT_VALVE_FACTOR 16u      /* WAL pages, in thresholds, that open the safety valve */
/* store.checkpoint_pages = 0 (automatic): see store_checkpoint_auto_pages. */
#define CKPT_AUTO_SMALL_PAGES 1000u   /* SQLite's own default */
#define CKPT_AUTO_LARGE_PAGES 256u
#define CKPT_AUTO_LARGE_INDEX (64u << 20)  /* bytes of index.db from which it is large */
#define CKPT_FINAL_BUSY_MS 1000    /* the final TRUNCATE's wait for readers */

struct store_checkpointer {
	struct store *st;          /* this thread's own handle */
	pthread_t thread;
	uint64_t threshold;        /* store.checkpoint_pages, or the automatic one now */
	bool automatic;            /* store.checkpoint_pages = 0 */
	int64_t wal_gauge;         /* value last given to M_STORE_WAL_PAGES */
	bool errored;              /* a checkpoint error logged, not yet followed by a success */
	int last_log, last_done;   /* the previous PASSIVE checkpoint's frame counts */
};

/* Shared by the hook (any committing thread) and the checkpointer. */
static struct {
	pthread_mutex_t mu;        /* guards `stop` and the condvar wait; never held across I/O */
	pthread_cond_t cv;         /* CLOCK_MONOTONIC; made once, never destroyed (a late hook may signal it) */
	bool stop;
	atomic_bool running;       /* hooks wake the thread (else they checkpoint themselves) */
	atomic_bool pending;       /* the WAL passed the threshold since the thread last looked */
	atomic_bool dirty;         /* commits since the last complete checkpoint */
	_Atomic int64_t copied;    /* frames of the present log a checkpoint has copied */
	_Atomic int64_t last_pages;/* the log's length at the previous hook: a shorter one was rewound */
	_Atomic uint64_t threshold;
	_Atomic uint64_t valve_at; /* WAL pages that open the valve (UINT64_MAX: one is running) */
	atomic_bool valve_warned;  /* warning logged for the current episode */
	char path[PATH_MAX];       /* the index the checkpointer serves (set while not running) */
} g_ckpt = { .mu = PTHREAD_MUTEX_INITIALIZER };

static pthread_once_t g_ckpt_once = PTHREAD_ONCE_INIT;

static void ckpt_init_cv(void)
{
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	if (pthread_cond_init(&g_ckpt.cv, &ca) != 0)
		panic("store: cannot create the checkpointer's condition variable");
	pthread_condattr_destroy(&ca);
}

/* ---- the hook (committing threads) ---------------------------------------------- */

/* The safety valve (see the contract), on the committing thread, when the
 * WAL holds valve_at pages or more: one RESTART with no busy wait.  One
 * thread at a time (it claims valve_at).  When it rewound the log, the
 * next one waits for the log to grow to CKPT_VALVE_FACTOR thresholds again;
 * when a reader kept it from rewinding, for twice the present size (so
 * that a long reader costs a few valves, not one per commit); when the
 * checkpointer held the checkpoint lock (nothing done), the next commit
 * tries again. */
static void ckpt_valve(sqlite3 *db, const char *name, int pages, uint64_t threshold, uint64_t at)
{
	if (!atomic_compare_exchange_strong(&g_ckpt.valve_at, &at, UINT64_MAX))
		return;   /* another committing thread has this turn */
	int log_frames, done;
	sqlite3_busy_timeout(db, 0);
	int rc = sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_RESTART, &log_frames, &done);
	sqlite3_busy_timeout(db, STORE_BUSY_TIMEOUT_MS);
	/* A valve that rewound the log is routine under a steady load (the
	 * committer is seldom idle when the checkpointer tries its rewind):
	 * counted, not logged.  One that could not is worth a warning. */
	if (rc != SQLITE_OK && log_frames >= 0 && !atomic_exchange(&g_ckpt.valve_warned, true))
		log_warn("store: the index's WAL holds %d pages (store.checkpoint_pages is %llu) and readers keep "
			 "it from being rewound; committing threads try again at twice that size",
			 pages, (unsigned long long)threshold);
	if (rc == SQLITE_OK) {
		metric_inc(M_STORE_CHECKPOINTS_RESTART);
		atomic_store_explicit(&g_ckpt.copied, 0, memory_order_relaxed);
		atomic_store(&g_ckpt.valve_at, threshold * CKPT_VALVE_FACTOR);
	} else {
		atomic_store(&g_ckpt.valve_at, rc == SQLITE_BUSY && log_frames < 0 ? at : 2 * (uint64_t)pages);
	}
}

/* Frames of a log of `pages` frames that no checkpoint has copied.  A log
 * shorter than at the previous commit was rewound (by SQLite at the start
 * of a write transaction, or by a RESTART): every frame in it is new.  The
 * counts are a hint for when to wake the thread, read and written without
 * a lock: a race can only make a wake-up early or late by a few commits. */
int64_t store_checkpoint_uncopied(int64_t pages, int64_t copied, int64_t last_pages)
{
	if (pages < last_pages || pages < copied)
		return pages;
	return pages - copied;
}

/* Called by SQLite after each COMMIT on a handle it is installed on, with
 * the frames now in the WAL.  Below the valve's size it never blocks for
 * longer than the waker's brief hold of g_ckpt.mu and never does I/O while
 * the checkpointer runs. */
static int ckpt_wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
	(void)arg;
	uint64_t threshold = atomic_load_explicit(&g_ckpt.threshold, memory_order_relaxed);
	bool over = pages >= 0 && (uint64_t)pages >= threshold;
	if (!atomic_load(&g_ckpt.running)) {
		/* No checkpointer (stopped): what SQLite's own hook does. */
		if (over)
			sqlite3_wal_checkpoint(db, name);
		return SQLITE_OK;
	}
	atomic_store_explicit(&g_ckpt.dirty, true, memory_order_relaxed);
	int64_t last = atomic_exchange_explicit(&g_ckpt.last_pages, pages, memory_order_relaxed);
	if (pages < last)
		atomic_store_explicit(&g_ckpt.copied, 0, memory_order_relaxed);
	int64_t fresh = store_checkpoint_uncopied(pages, atomic_load_explicit(&g_ckpt.copied, memory_order_relaxed),
						  last);
	if (over && (uint64_t)fresh >= threshold && !atomic_exchange(&g_ckpt.pending, true)) {
		pthread_mutex_lock(&g_ckpt.mu);
		pthread_cond_signal(&g_ckpt.cv);
		pthread_mutex_unlock(&g_ckpt.mu);
	}
	uint64_t valve_at = atomic_load(&g_ckpt.valve_at);
	if (over && (uint64_t)pages >= valve_at)
		ckpt_valve(db, name, pages, threshold, valve_at);
	return SQLITE_OK;
}

/* The automatic threshold.  A checkpoint writes each distinct page of its
 * frames once, at its place in index.db, then fsyncs it, and the disk
 * serves that before the next commit's fsync.  On a small index the same
 * pages are written over and over, so 1,000 frames fold into a few hundred
 * writes, and checkpointing less often saves fsyncs (IMAP STORE on a
 * 10,000-message index: 1.4x the throughput and a third of the p99 of
 * 256-page checkpoints).  On a large one a delivery dirties about four
 * pages in random places, so 1,000 frames are about 1,000 random writes
 * (delivery p99 at 1,000,000 messages: 34-38 ms with 1,000-page
 * checkpoints, 27-30 ms with 256, as at 20,000 messages). */
uint64_t store_checkpoint_auto_pages(uint64_t index_bytes)
{
	return index_bytes < CKPT_AUTO_LARGE_INDEX ? CKPT_AUTO_SMALL_PAGES : CKPT_AUTO_LARGE_PAGES;
}

static uint64_t index_bytes(const char *path)
{
	struct stat sb;
	return stat(path, &sb) == 0 ? (uint64_t)sb.st_size : 0;
}

/* The threshold for a handle of `s`: the setting, or the automatic one for
 * the index's present size. */
static uint64_t ckpt_threshold(const struct settings *s)
{
	if (s->store_checkpoint_pages > 0)
		return s->store_checkpoint_pages < 16 ? 16 : s->store_checkpoint_pages;
	return store_checkpoint_auto_pages(index_bytes(s->store_index_path));
}

void store_checkpoint_attach(struct store *st)
{
	uint64_t pages = ckpt_threshold(st->s);
	if (atomic_load(&g_ckpt.running) && strcmp(st->s->store_index_path, g_ckpt.path) == 0) {
		sqlite3_wal_autocheckpoint(st->db, 0);
		sqlite3_wal_hook(st->db, ckpt_wal_hook, NULL);
		return;
	}
	sqlite3_wal_autocheckpoint(st->db, pages > INT_MAX ? INT_MAX : (int)pages);
}

/* ---- the thread ------------------------------------------------------------------- */

static void ckpt_set_gauge(struct store_checkpointer *c, int log_frames)
{
	int64_t v = log_frames < 0 ? 0 : log_frames;
	gauge_add(M_STORE_WAL_PAGES, v - c->wal_gauge);
	c->wal_gauge = v;
}

/* One checkpoint of `mode`; returns the SQLite code, with the WAL's frames
 * and the frames now copied in *log_r and *ckpt_r (-1 when unknown). */
static int ckpt_run(struct store_checkpointer *c, int mode, int *log_r, int *ckpt_r)
{
	*log_r = *ckpt_r = -1;
	uint64_t t0 = time_mono_us();
	int rc = sqlite3_wal_checkpoint_v2(c->st->db, NULL, mode, log_r, ckpt_r);
	histogram_observe(M_H_CHECKPOINT_DURATION, (double)(time_mono_us() - t0) / 1e6);
	if (rc == SQLITE_OK || rc == SQLITE_BUSY) {
		/* BUSY: a reader or the writer was in the way; not an error.  A
		 * RESTART counts only when it rewound the log. */
		if (mode == SQLITE_CHECKPOINT_PASSIVE)
			metric_inc(M_STORE_CHECKPOINTS);
		else if (rc == SQLITE_OK)
			metric_inc(M_STORE_CHECKPOINTS_RESTART);
		ckpt_set_gauge(c, *log_r);
		if (c->errored)
			log_info("store: WAL checkpoints work again");
		c->errored = false;
	} else if (!c->errored) {
		/* Logged once until a checkpoint succeeds: a full disk fails each one. */
		log_error("store: WAL checkpoint failed (retried): %s", sqlite3_errmsg(c->st->db));
		c->errored = true;
	}
	return rc;
}

/* After a PASSIVE checkpoint that copied every frame: a RESTART that waits
 * for nobody (busy timeout 0), so that the next commit writes the WAL from
 * its start again.  SQLite rewinds the log only at the start of a write
 * transaction that began after the log was completely copied; a committer
 * that starts its next transaction while the checkpoint still runs would
 * never see that moment.  With the log already copied this RESTART only
 * takes the write lock for as long as it takes to rewrite the WAL index
 * header (and, when a commit slipped in since the PASSIVE one, to copy
 * that commit's pages); when the writer holds it, or a reader still uses
 * the log, it fails at once (SQLITE_BUSY) and the next round tries again. */
static void ckpt_rewind(struct store_checkpointer *c)
{
	int log_frames, done;
	if (ckpt_run(c, SQLITE_CHECKPOINT_RESTART, &log_frames, &done) == SQLITE_OK) {
		atomic_store_explicit(&g_ckpt.copied, 0, memory_order_relaxed);
		ckpt_set_gauge(c, 0);
	}
}

/* Publishes the threshold to the hooks, and moves the valve's level with
 * it, unless that level is a valve episode's own (see ckpt_valve). */
static void ckpt_set_threshold(struct store_checkpointer *c, uint64_t t)
{
	uint64_t at = c->threshold * CKPT_VALVE_FACTOR;   /* the level that goes with the old one */
	if (c->threshold == 0)
		atomic_store(&g_ckpt.valve_at, t * CKPT_VALVE_FACTOR);
	else if (t != c->threshold)
		atomic_compare_exchange_strong(&g_ckpt.valve_at, &at, t * CKPT_VALVE_FACTOR);
	c->threshold = t;
	atomic_store(&g_ckpt.threshold, t);
}

/* One round: a PASSIVE checkpoint, and the rewind when it copied all.
 * Returns false when it left frames uncopied without copying more than the
 * previous round (then the thread pauses CKPT_RETRY_MS); when frames are
 * left uncopied, `dirty` brings the thread back. */
static bool ckpt_round(struct store_checkpointer *c)
{
	int log_frames, done;
	int rc = ckpt_run(c, SQLITE_CHECKPOINT_PASSIVE, &log_frames, &done);
	if (rc == SQLITE_OK && done >= 0)
		atomic_store_explicit(&g_ckpt.copied, done, memory_order_relaxed);
	bool complete = rc == SQLITE_OK && log_frames >= 0 && done >= log_frames;
	/* No progress: frames are left that the previous round could not copy
	 * either (a reader still needs them). */
	bool progress = rc == SQLITE_OK && (complete || log_frames < c->last_log || done > c->last_done);
	c->last_log = log_frames;
	c->last_done = done;
	if (c->automatic)   /* the index grows: so may the automatic threshold change */
		ckpt_set_threshold(c, ckpt_threshold(c->st->s));
	if (!complete)
		atomic_store(&g_ckpt.dirty, true);
	else if (log_frames > 0)
		ckpt_rewind(c);
	if (rc == SQLITE_OK && log_frames >= 0 && (uint64_t)log_frames < c->threshold &&
	    atomic_exchange(&g_ckpt.valve_warned, false)) {
		/* The episode is over; a valve running now sets its own level. */
		uint64_t at = atomic_load(&g_ckpt.valve_at);
		if (at != UINT64_MAX)
			atomic_compare_exchange_strong(&g_ckpt.valve_at, &at, c->threshold * CKPT_VALVE_FACTOR);
		log_info("store: the index's WAL is back under store.checkpoint_pages");
	}
	return progress;
}

/* Waits until a hook asks (pending), a stop, or `ms` passed; with
 * `stop_only`, only a stop ends the wait early.  Called and returns with
 * g_ckpt.mu held. */
static void ckpt_wait(uint64_t ms, bool stop_only)
{
	struct timespec due;
	time_mono_deadline(ms, &due);
	while (!g_ckpt.stop && (stop_only || !atomic_load(&g_ckpt.pending))) {
		if (pthread_cond_timedwait(&g_ckpt.cv, &g_ckpt.mu, &due) == ETIMEDOUT)
			return;
	}
}

static void *ckpt_main(void *arg)
{
	struct store_checkpointer *c = arg;
	(void)pthread_setname_np(pthread_self(), "store-ckpt");
	bool progress = true;
	pthread_mutex_lock(&g_ckpt.mu);
	while (!g_ckpt.stop) {
		if (!progress)
			ckpt_wait(CKPT_RETRY_MS, true);  /* readers pin the log: do not spin */
		ckpt_wait(CKPT_IDLE_MS, false);
		if (g_ckpt.stop)
			break;
		bool asked = atomic_exchange(&g_ckpt.pending, false);
		bool dirty = atomic_exchange(&g_ckpt.dirty, false);
		if (!asked && !dirty) {
			progress = true;
			continue;
		}
		pthread_mutex_unlock(&g_ckpt.mu);
		progress = ckpt_round(c);
		pthread_mutex_lock(&g_ckpt.mu);
	}
	pthread_mutex_unlock(&g_ckpt.mu);
	return NULL;
}

/* ---- start and stop ----------------------------------------------------------------- */

enum status store_checkpoint_start(const struct settings *s, struct store_checkpointer **out, char **error_r)
{
	*out = NULL;
	if (!s->store_checkpointer)
		return ST_OK;
	if (atomic_load(&g_ckpt.running))
		panic("store: a second WAL checkpointer in one process");
	struct store *st = store_open(s, true, error_r);
	if (st == NULL)
		return ST_TEMPFAIL;
	struct store_checkpointer *c = xcalloc(1, sizeof(*c));
	c->st = st;
	/* PASSIVE never waits; this handle's RESTARTs must not either. */
	sqlite3_busy_timeout(st->db, 0);
	c->automatic = s->store_checkpoint_pages == 0;
	snprintf(g_ckpt.path, sizeof(g_ckpt.path), "%s", s->store_index_path);
	ckpt_set_threshold(c, ckpt_threshold(s));
	atomic_store(&g_ckpt.pending, false);
	atomic_store(&g_ckpt.copied, 0);
	atomic_store(&g_ckpt.last_pages, 0);
	atomic_store(&g_ckpt.dirty, true);  /* whatever an earlier process left in the WAL */
	pthread_once(&g_ckpt_once, ckpt_init_cv);
	pthread_mutex_lock(&g_ckpt.mu);
	g_ckpt.stop = false;
	pthread_mutex_unlock(&g_ckpt.mu);
	/* Before the thread: no handle opened from now on checkpoints itself. */
	atomic_store(&g_ckpt.running, true);
	int e = pthread_create(&c->thread, NULL, ckpt_main, c);
	if (e != 0)
		panic("store: cannot start the WAL checkpointer thread: %s", strerror(e));
	*out = c;
	return ST_OK;
}

/* The last checkpoint before the handle closes: TRUNCATE leaves an empty
 * WAL file when nothing pins the log; with readers, PASSIVE copies what
 * it can. */
static void ckpt_final(struct store_checkpointer *c)
{
	int log_frames, done;
	/* store_close runs it too: first here, so that the checkpoint follows
	 * this handle's last write (the second run finds nothing to do). */
	sqlite3_exec(c->st->db, "PRAGMA optimize", NULL, NULL, NULL);
	sqlite3_busy_timeout(c->st->db, CKPT_FINAL_BUSY_MS);
	int rc = ckpt_run(c, SQLITE_CHECKPOINT_TRUNCATE, &log_frames, &done);
	if (rc == SQLITE_BUSY)
		rc = ckpt_run(c, SQLITE_CHECKPOINT_PASSIVE, &log_frames, &done);
	if (rc != SQLITE_OK || done < log_frames)
		log_warn("store: final WAL checkpoint incomplete (%d of %d pages): the next start replays the rest",
			 done, log_frames);
}

void store_checkpoint_stop(struct store_checkpointer **cp)
{
	struct store_checkpointer *c = *cp;
	if (c == NULL)
		return;
	/* Hooks of handles still open checkpoint on their own from now on. */
	atomic_store(&g_ckpt.running, false);
	pthread_mutex_lock(&g_ckpt.mu);
	g_ckpt.stop = true;
	pthread_cond_signal(&g_ckpt.cv);
	pthread_mutex_unlock(&g_ckpt.mu);
	pthread_join(c->thread, NULL);
	ckpt_final(c);
	ckpt_set_gauge(c, 0);
	store_close(&c->st);
	free(c);
	*cp = NULL;
}
