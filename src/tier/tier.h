/*
 * tier.h - automatic storage tiering: heat, placement and crash-safe moves.
 *
 * Owns: the heat model (decay and priors), the in-memory access-event ring
 * and its flusher, the placement decision, the file move with its journal
 * and start-up recovery, the mover thread, and the mover lock.  The index
 * side (tables, queries, blob paths per tier, the open helper readers use)
 * is src/store/store_tier.c.  docs/TIERING.md is the user's guide;
 * docs/STORAGE.md "Tiering" is the on-disk contract.
 *
 * Invariants:
 *  - A blob's file exists on the tier blobs.tier names whenever the index
 *    is committed (copy, fsync, rename, directory fsync come before the
 *    index update; the unlink of the source comes after).
 *  - One process moves at a time: the mover lock (flock on
 *    <tier 0>/tier.lock) is held by the daemon's mover during a pass and by
 *    `strata tier move` while it runs; recovery runs under it.
 *  - Heat is advisory: losing it (a crash loses at most the last flush
 *    interval) changes placement quality, never correctness.
 *
 * Threads: the heat and placement functions are pure and thread-safe;
 * tier_access_* is callable from any thread; a struct store passed in is
 * used by the calling thread only.
 */
#ifndef STRATA_TIER_H
#define STRATA_TIER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "core.h"
#include "store.h"

#define TIER_DAY_S 86400
#define TIER_READ_WINDOW_DAYS 30

/* ---- heat (tier_heat.c) --------------------------------------------------- */

/* score * 2^(-dt / half_life); dt <= 0 returns score unchanged. */
double tier_heat_decay(double score, int64_t dt_s, uint64_t half_life_s);
enum tier_event { TIER_EVENT_DELIVERY = 0, TIER_EVENT_READ = 1 };
/* Applies one event at `now` to h: decays the score to now, adds the
 * event's weight (1.0), and for a read marks today in reads_days (the bit
 * map is shifted so bit 0 is always the day of h->updated). */
void tier_heat_event(struct store_heat *h, int64_t now, enum tier_event ev, uint64_t half_life_s);
/* Distinct days in the last TIER_READ_WINDOW_DAYS (as of now) with a read. */
unsigned tier_heat_read_days(uint32_t reads_days, int64_t updated, int64_t now);

/* Priors that need no history: in [0, 1]. */
struct tier_prior_in {
	int64_t received;         /* unix time */
	const char *mailbox;      /* name */
	const char *special_use;  /* "\\Sent" etc. or "" */
	bool seen;
	int64_t last_login;       /* 0 = never logged in */
};
double tier_prior(const struct tier_prior_in *in, int64_t now);
/* Temperature of one reference: prior + decayed heat. */
double tier_temperature(const struct store_tier_ref *r, int64_t now, uint64_t half_life_s);
/* What placement ranks blobs by: temperature per TIER_RANK_BYTES of the
 * blob (sizes below TIER_RANK_MIN_BYTES count as that), so the fast
 * tier's bytes go to the mail read most per byte: a 2 MB attachment must
 * be read far more than a 4 KB note to earn the same room. */
#define TIER_RANK_BYTES 20480.0
#define TIER_RANK_MIN_BYTES 2048u
double tier_rank(double temperature, uint64_t size);
/* The tier a pin rule forces for this reference, or -1.  Account pins win
 * over folder pins; among several matches the fastest tier wins. */
int tier_pin_for(const struct settings *s, const char *mailbox, const char *special_use,
		 const char *account);

/* ---- access events (tier_access.c) ---------------------------------------
 * A bounded ring (TIER_ACCESS_RING events) that store_access_note feeds
 * through the store hook; a full ring drops the event and counts it.
 * tier_access_drain moves queued events into the heat table in one
 * transaction. */
#define TIER_ACCESS_RING 65536
void tier_access_install(void);     /* installs the store hook; idempotent */
void tier_access_uninstall(void);
/* Queues a read event (what the hook does); false when dropped. */
bool tier_access_push(const struct msgid *id, enum tier_event ev);
uint64_t tier_access_dropped(void);
/* Drains at most `max` events and persists them; returns how many.  Each
 * read is also counted against its blob's tier (tier_reads_note). */
size_t tier_access_drain(struct store *st, uint64_t half_life_s, size_t max, char **error_r);

/* Read shares: body reads per tier in the last hour and day, from bounded
 * per-minute buckets (one per minute of a day), and since start.  In
 * memory only (the daemon's; a restart starts from zero).  Thread-safe. */
#define TIER_READ_SLOTS 1440
struct tier_reads { uint64_t hour[CONFIG_TIER_MAX], day[CONFIG_TIER_MAX], total[CONFIG_TIER_MAX]; };
void tier_reads_note(unsigned tier, uint64_t now_ms);   /* now_ms: time_mono_ms() */
void tier_reads_get(struct tier_reads *out, uint64_t now_ms);
void tier_reads_reset(void);                            /* tests */

/* ---- placement (tier_place.c) ---------------------------------------------- */
struct tier_cand {
	int64_t blob_id;
	struct msgid id;
	unsigned tier;            /* current */
	uint64_t size;
	double temp;
	int pin;                  /* forced tier or -1 */
	bool promotable;          /* read on >= tier.promote_days distinct days */
};
struct tier_plan { size_t cand; unsigned to; };
/* Folds the candidates of one blob into one (store_tier_refs gives a blob
 * once per mailbox holding it, not necessarily in a row): the hottest
 * temperature, the fastest pin, promotable if any is.  Sorts c by blob id
 * and returns the new count.  Pure. */
size_t tier_cand_merge(struct tier_cand *c, size_t n);
/* Decides up to max_moves moves.  cap[t] is tier t's byte target (0 = no
 * limit); the last tier takes whatever the others cannot.  Rules, in order:
 *  1. pinned candidates go to their pin;
 *  2. each tier over its target demotes its coldest unpinned blobs to the
 *     next tier until it is at or below TIER_LOW_WATER percent of target
 *     (the hottest of those that still fit under the target then stay);
 *  3. promotable blobs (hottest first) move up to the fastest tier with
 *     room, never past a tier's target.
 * Writes to out (room for max_moves) and returns the count. */
#define TIER_LOW_WATER 90
size_t tier_place(struct tier_cand *c, size_t n, const uint64_t *cap, size_t n_tiers, size_t max_moves,
		  struct tier_plan *out);
/* A tier's byte target: capacity_bytes, or capacity_percent of the size of
 * the filesystem holding its path (statvfs); 0 = no limit. */
uint64_t tier_capacity(const struct tier_setting *t);

/* ---- moves (tier_move.c) ------------------------------------------------------- */
/* Token bucket over bytes and files per second. */
struct tier_budget {
	double bytes, files;            /* tokens */
	double bytes_rate, files_rate;  /* per second, as scaled by the back-off */
	uint64_t last_us;
	double bytes_max, files_max;    /* the unscaled rates (tier.move_rate, tier.move_files) */
};
void tier_budget_init(struct tier_budget *b, const struct settings *s);
/* Microseconds to wait before `bytes` (one file) may be spent; 0 = now
 * (and the tokens are taken). */
uint64_t tier_budget_take(struct tier_budget *b, uint64_t bytes, uint64_t now_us);

/* ---- back-off on foreground latency (tier_backoff.c) ------------------------------
 * The rule is in tier_backoff.c's header and TIERING.md ("Back-off"). */
#define TIER_BACKOFF_INTERVAL_MS 2000
#define TIER_BACKOFF_MIN_SAMPLES 3      /* per interval, else "no one is waiting" */
#define TIER_BACKOFF_WARMUP 5           /* intervals that set the baseline */
#define TIER_BACKOFF_SLACK_US 2000.0    /* congestion needs this much excess too */
#define TIER_BACKOFF_FLOOR (1.0 / 16)
struct tier_backoff {
	double lat_us;                  /* EWMA of foreground blob-open latency */
	double base_us;                 /* the baseline it is compared with */
	double factor;                  /* mover budget multiplier, FLOOR..1 */
	uint64_t samples;               /* since start */
	uint64_t intervals;             /* intervals with enough samples */
	uint64_t halvings;              /* since start */
};
enum tier_backoff_step { TIER_BACKOFF_HOLD, TIER_BACKOFF_HALVE, TIER_BACKOFF_RECOVER };
void tier_backoff_init(struct tier_backoff *b);
/* One interval: n samples summing sum_us.  Pure; returns what it did. */
enum tier_backoff_step tier_backoff_update(struct tier_backoff *b, uint64_t sum_us, uint64_t n);
/* Sets the budget's rates to factor x its unscaled rates. */
void tier_budget_scale(struct tier_budget *b, double factor);
/* The store's latency hook (installed by tier_access_install): one sample. */
void tier_latency_note(uint64_t us);
/* The daemon's back-off: at most once per interval, folds the samples into
 * the process's state and scales `budget` (if given).  Thread-safe. */
void tier_backoff_tick(struct tier_budget *budget, uint64_t now_ms);
void tier_backoff_get(struct tier_backoff *out);
void tier_backoff_reset(void);   /* tests */

/* Takes the mover lock: returns the fd, or -1 (errno EWOULDBLOCK when
 * another process holds it and !wait). */
int tier_lock(const struct settings *s, bool wait);
void tier_unlock(int *fd);

/* Moves one blob, crash-safely (docs/STORAGE.md "Tiering"): journal row,
 * copy into <to>/tier-tmp, fsync, rename into place, directory fsync, index
 * update + journal commit in one transaction, unlink of the source and its
 * directory fsync, journal row removed.  Needs the mover lock.  On failure
 * before the index update the target copy is removed and the index still
 * names `from`.  ST_NOT_FOUND: the blob disappeared (expunged) meanwhile. */
enum status tier_move_blob(struct store *st, const struct settings *s, int64_t blob_id,
			   const struct msgid *id, unsigned from, unsigned to, uint64_t *bytes_r,
			   char **error_r);
/* Completes or rolls back every journalled move and clears the tier-tmp
 * directories.  Needs the mover lock.  *fixed_r (if given) = rows handled. */
enum status tier_recover(struct store *st, const struct settings *s, size_t *fixed_r, char **error_r);

/* ---- heat checkpoints (tier_checkpoint.c; docs/STORAGE.md "Heat checkpoints") ----
 * A checkpoint is a durable snapshot of the heat table, keyed by message id,
 * in <last tier>/tier-heat/ (<state_dir>/tier-heat/ with one tier): away
 * from the index.  The newest TIER_CKPT_KEEP files are kept. */
#define TIER_CKPT_KEEP 3
struct tier_ckpt_info {
	char path[4096];
	size_t rows;                  /* heat rows written / applied */
	int64_t created;              /* unix time */
};
void tier_checkpoint_dir(const struct settings *s, char *out, size_t len);
/* Writes one (temp, fsync, rename, directory fsync, with a CRC-32), then
 * prunes old ones.  *out (optional) describes it.  An empty heat table
 * while the newest checkpoint has rows writes nothing (ST_OK, out->path
 * ""): the table was lost, and that checkpoint is what rebuilds it. */
enum status tier_checkpoint_write(struct store *st, const struct settings *s, struct tier_ckpt_info *out,
				  char **error_r);
/* Replaces the heat table (one transaction) with the newest checkpoint
 * that passes every check (length, CRC, values); older ones are tried in
 * turn.  ST_NOT_FOUND (*error_r) when none is valid: the table is then
 * untouched.  Other errors are the index's. */
enum status tier_checkpoint_load(struct store *st, const struct settings *s, struct tier_ckpt_info *out,
				 char **error_r);
/* The newest checkpoint holds at least one row (a stat only, no validation). */
bool tier_checkpoint_has_rows(const struct settings *s);
/* CRC-32 (IEEE 802.3) continued from crc (0 to start). */
uint32_t tier_crc32(uint32_t crc, const void *data, size_t len);

/* ---- tier rebuild (tier_rebuild.c) ---------------------------------------------
 * Reconstructs the tier state: damaged tier tables recreated, a surviving
 * move journal settled, every blob's tier taken from where its valid copy
 * is (extra copies removed), and the heat table replaced by the newest
 * valid checkpoint (a healthy, non-empty heat table is checkpointed first,
 * so nothing is lost).  Blobs without heat are ranked by their priors.
 * Needs the mover lock. */
struct tier_rebuild_result {
	size_t blobs;                 /* blob rows looked at */
	size_t corrected;             /* rows whose tier was changed to where the file is */
	size_t removed;               /* extra copies removed */
	size_t missing;               /* rows with no valid copy anywhere */
	size_t journal_rows;          /* interrupted moves settled */
	bool from_checkpoint;         /* heat came from checkpoint (else: empty) */
	struct tier_ckpt_info checkpoint;
};
enum status tier_rebuild(struct store *st, const struct settings *s, struct tier_rebuild_result *out,
			 char **error_r);
/* The start-up decision: true (with *reason_r, caller frees) when a tier
 * table is damaged, or missing while blobs or a checkpoint exist, or the
 * heat table is empty while the newest checkpoint has rows. */
bool tier_state_needs_rebuild(struct store *st, const struct settings *s, char **reason_r);

/* ---- the admin endpoint (tier_admin.c) -------------------------------------------
 * GET /tier/status on the daemon's admin endpoint answers tier_admin_status
 * (text/plain, one record per line: read shares per tier, the mover's
 * back-off); /metrics carries
 * tier_admin_metrics (strata_tier_reads_total{tier="<name>"}).  Both run on
 * the admin thread.  The mover registers its settings for the tier names. */
void tier_admin_settings(const struct settings *s);      /* NULL: none */
void tier_admin_status(struct buf *out, uint64_t now_ms); /* now_ms: time_mono_ms() */
void tier_admin_metrics(struct buf *out);
struct tier_admin_view {
	bool have_reads;
	struct tier_reads reads;
	bool have_mover;
	struct tier_backoff mover;
};
/* Parses a /tier/status body (`strata tier status`); false when it is not one. */
bool tier_admin_parse(const char *body, size_t len, struct tier_admin_view *out);

/* ---- placement pass and the daemon's mover (tier_mover.c) ---------------------- */
struct tier_pass_stats { size_t planned, moved, failed; uint64_t bytes; };
/* One pass: reads every reference, decides, and moves under the budget
 * (sleeping between moves; returns early when *stop becomes true). */
enum status tier_pass(struct store *st, const struct settings *s, struct tier_budget *b,
		      const volatile bool *stop, struct tier_pass_stats *out, char **error_r);
/* Fills the per-tier gauges from the index. */
void tier_metrics_update(struct store *st, const struct settings *s);

struct tier_mover;
/* Opens its own store handle, runs tier_rebuild when tier_state_needs_rebuild
 * says so (else creates the tier tables and runs recovery), installs the
 * access hook, and starts the thread (heat flush every 2 s, a placement
 * pass every tier.interval, a heat checkpoint every
 * tier.checkpoint_interval).  NULL with *error_r on failure. */
struct tier_mover *tier_mover_start(const struct settings *s, char **error_r);
/* Stops and joins the thread (a pass in progress stops between moves),
 * flushes the remaining heat, writes a last checkpoint, closes the handle.
 * NULL is a no-op. */
void tier_mover_stop(struct tier_mover **m);

#endif
