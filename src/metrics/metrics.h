/*
 * metrics.h - process-wide counters, gauges and histograms.
 *
 * Owns: a fixed registry of named metrics updated lock-free (relaxed atomics)
 * from any thread, and their rendering in the Prometheus text format.
 * Metrics are static: the set is known at compile time, so a hostile client
 * can never create new label values (bounded memory by construction).
 */
#ifndef STRATA_METRICS_H
#define STRATA_METRICS_H

#include <stdint.h>

#include "core.h"

enum metric_counter {
	M_SMTP_CONNECTIONS_TOTAL,
	M_SMTP_TRANSACTIONS_TOTAL,      /* MAIL FROM accepted */
	M_SMTP_MESSAGES_ACCEPTED,       /* 250 after DATA/BDAT LAST */
	M_SMTP_RECIPIENTS_ACCEPTED,
	M_SMTP_REJECT_UNKNOWN_USER,
	M_SMTP_REJECT_RELAY,
	M_SMTP_REJECT_SIZE,
	M_SMTP_REJECT_QUOTA,
	M_SMTP_REJECT_SYNTAX,
	M_SMTP_REJECT_TOO_MANY_RCPTS,
	M_SMTP_REJECT_TEMPFAIL,         /* 4xx from storage */
	M_SMTP_REJECT_BAD_CONTENT,      /* NUL, bare LF in reject mode */
	M_SMTP_REJECT_CONN_LIMIT,
	M_SMTP_TIMEOUTS,
	M_SMTP_CUT_SLOW,                /* sessions cut below smtp.min_rate */
	M_SMTP_CUT_LIFETIME,            /* sessions cut at smtp.max_session_time */
	M_SMTP_TLS_HANDSHAKES,
	M_SMTP_TLS_FAILURES,
	M_STORE_COMMITS,                /* index transactions */
	M_STORE_COMMITTED_DELIVERIES,
	M_STORE_BLOBS_WRITTEN,
	M_STORE_BLOB_BYTES_WRITTEN,
	M_STORE_FSYNCS,
	M_STORE_COMMIT_FAILURES,
	M_GUARD_REFUSED_RATE,           /* connection guard (src/guard), by reason */
	M_GUARD_REFUSED_CONCURRENCY,
	M_GUARD_REFUSED_GLOBAL,         /* class cap, fair share, or table bucket all live */
	M_GUARD_REFUSED_BAN,
	M_GUARD_EVICTIONS,              /* table entries with state recycled for a new source */
	M_GUARD_OFFENCE_ERRORS,         /* protocol offences reported to the guard, by kind */
	M_GUARD_OFFENCE_HARVEST,
	M_GUARD_OFFENCE_PRE_HELO,
	M_GUARD_OFFENCE_COMMANDS,
	M_GUARD_OFFENCE_EARLY_TALK,
	M_GUARD_OFFENCE_AUTH,
	M_GUARD_AUTH_FAILURES,          /* failed IMAP/POP3 logins counted by the guard */
	M_GUARD_AUTH_DELAYED,           /* of them, answered after a delay */
	M_GUARD_PROXY_ACCEPTED,         /* PROXY protocol headers read from trusted balancers */
	M_GUARD_PROXY_REFUSED,          /* connections closed: bad, late or missing header */
	M_GUARD_OFFENCE_BANS,           /* bans set for offences */
	M_GUARD_ADMIN_BAN,              /* operator actions through the admin endpoint */
	M_GUARD_ADMIN_UNBAN,
	M_GUARD_ADMIN_ALLOW,
	M_GUARD_NFT_UPDATES,            /* elements added to / removed from the kernel sets, and set-ups */
	M_GUARD_NFT_ERRORS,             /* failed nft runs of the kernel mirror */
	M_TIER_MOVES,                   /* blobs moved between tiers (src/tier) */
	M_TIER_MOVE_BYTES,
	M_TIER_MOVE_FAILURES,
	M_TIER_HEAT_DROPPED,            /* access events dropped: ring full */
	M_RELAY_SENT,                   /* outbound deliveries (per recipient), by result */
	M_RELAY_DEFERRED,
	M_RELAY_BOUNCED,
	M_SMTP_AUTH_SUCCESS,            /* submission AUTH, by result */
	M_SMTP_AUTH_FAILURES,
	M_AUTH_CACHE_HITS,              /* IMAP/POP3/submission password checks answered by the cache */
	M_AUTH_CACHE_MISSES,            /* ... that ran the full verification (src/auth/auth_cache.c) */
	M_STORE_CHECKPOINTS,            /* WAL checkpoints run by the checkpointer (store_checkpoint.c), by mode */
	M_STORE_CHECKPOINTS_RESTART,
	M_COUNTER__COUNT
};

enum metric_gauge {
	M_SMTP_SESSIONS_ACTIVE,
	M_QUEUE_PENDING,                /* deliveries submitted, not yet answered */
	M_GUARD_ENTRIES,                /* guard table entries in use (bounded by guard.table_entries) */
	M_RELAY_QUEUE,                  /* outbound rows waiting (src/relay) */
	M_TIER_BYTES_0,                 /* per tier, from the index: bytes, then messages */
	M_TIER_BYTES_7 = M_TIER_BYTES_0 + 7,
	M_TIER_MESSAGES_0,
	M_TIER_MESSAGES_7 = M_TIER_MESSAGES_0 + 7,
	M_STORE_WAL_PAGES,              /* frames in the index's WAL at the last checkpoint */
	M_GAUGE__COUNT
};

enum metric_histogram {
	M_H_SMTP_ACCEPT_LATENCY,        /* end of DATA to 250, seconds */
	M_H_COMMIT_BATCH_SIZE,          /* deliveries per index transaction */
	M_H_COMMIT_DURATION,            /* seconds per group commit */
	M_H_CHECKPOINT_DURATION,        /* seconds per WAL checkpoint (store_checkpoint.c) */
	M_HISTOGRAM__COUNT
};

void metric_inc(enum metric_counter c);
void metric_add(enum metric_counter c, uint64_t n);
uint64_t metric_get(enum metric_counter c);
void gauge_add(enum metric_gauge g, int64_t delta);
int64_t gauge_get(enum metric_gauge g);
/* Records one observation (seconds for latencies, counts for sizes). */
void histogram_observe(enum metric_histogram h, double value);
/* Quantile estimate (0..1) from the histogram buckets; 0 when empty. */
double histogram_quantile(enum metric_histogram h, double q);
/* Appends the Prometheus exposition text of every metric. */
void metrics_render(struct buf *out);

#endif
