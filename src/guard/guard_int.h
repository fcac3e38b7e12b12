/*
 * guard_int.h - private to src/guard: the table, the ban list, the
 * settings snapshot and address helpers shared by its files.
 *
 *   guard.c        struct guard, settings snapshots, admit/release/accept,
 *                  bans, stats, the daemon's guard pointer
 *   guard_table.c  the fixed, sharded, set-associative entry table with
 *                  clock eviction and token buckets
 *   guard_addr.c   address normalisation, prefixes, CIDR lists, the keyed
 *                  bucket hash
 *   guard_auth.c   failed logins per source and per account (brute force)
 *   guard_state.c  the run-time allowlist, saving and loading bans,
 *                  good senders and allowlist entries, the status report
 *   guard_good.c   the good-sender memory
 *   guard_nft.c    the kernel mirror of the bans: nft scripts, the queue
 *                  and its thread
 *   guard_nft_helper.c  the privileged process that runs nft
 */
#ifndef STRATA_GUARD_INT_H
#define STRATA_GUARD_INT_H

#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>

#include "guard.h"

#define GUARD_WAYS 8          /* entries per hash bucket */
#define GUARD_SHARDS 64       /* mutexes per table (buckets are spread over them) */
/* Token bucket unit: one connection is GUARD_TOKEN_UNIT units, and a rate
 * of R connections per minute refills exactly R units per millisecond. */
#define GUARD_TOKEN_UNIT 60000u
#define GUARD_NO_ENTRY UINT32_MAX
#define GUARD_LINE_MAX 320
#define GUARD_OFFENCE_STEPS_MAX 8                    /* durations in guard.offence_bans */
#define GUARD_OFFENCE_BAN_MAX_MS (365ull * 86400000ull) /* longest of them */

/* ---- guard_addr.c ----------------------------------------------------------- */

/* A table key: an address masked to a prefix, at one level. */
struct guard_key {
	uint8_t family;       /* 4 or 6 */
	uint8_t level;        /* enum guard_level, or GUARD_KEY_BAN */
	uint8_t prefix;       /* bits kept */
	uint8_t b[16];
};
#define GUARD_KEY_BAN 0xff
#define GUARD_KEY_GOOD 0xfe

void guard_key_make(const struct guard_addr *a, unsigned level, unsigned prefix, struct guard_key *k);
/* Keyed SipHash-2-4 of the key. */
uint64_t guard_key_hash(const struct guard_key *k, const uint8_t hash_key[crypto_shorthash_KEYBYTES]);

struct guard_cidr {
	uint8_t family;
	uint8_t bits;
	uint8_t b[16];        /* masked */
};
/* Parses guard.allow.  On success *out_r (caller frees, NULL when empty)
 * and *n_r; false with *error_r on a bad item. */
bool guard_cidr_parse_list(const char *list, struct guard_cidr **out_r, size_t *n_r, char **error_r);
bool guard_cidr_match(const struct guard_cidr *c, const struct guard_addr *a);

/* ---- guard_table.c ----------------------------------------------------------- */

/* 40 bytes: the figure docs/GUARD.md quotes. */
struct guard_entry {
	uint8_t key[16];      /* address masked to the entry's prefix */
	uint64_t stamp_ms;    /* time of the last refill */
	uint32_t tokens;      /* in GUARD_TOKEN_UNITs */
	uint32_t conns;       /* open connections (never evicted while > 0) */
	uint8_t family;       /* 0: never used */
	uint8_t level;
	uint8_t prefix;
	uint8_t ref;          /* second-chance bit, set on every use */
	uint32_t reserved;
};

struct guard_limit {
	uint64_t rate;        /* per minute; 0 = none */
	uint64_t burst;
	uint64_t concurrency; /* 0 = none */
};

struct guard_shard {
	pthread_mutex_t mu;
} __attribute__((aligned(64)));   /* one cache line each: no false sharing */

struct guard_table {
	struct guard_entry *entries;      /* n_buckets * GUARD_WAYS */
	uint8_t *hands;                   /* clock hand per bucket */
	size_t n_buckets;
	struct guard_shard shards[GUARD_SHARDS];
	_Atomic size_t used;              /* entries ever filled */
	_Atomic size_t live;              /* entries with conns > 0 */
	_Atomic uint64_t conns;           /* admitted connections of the class */
	_Atomic uint64_t active_nets;     /* NET-level entries with conns > 0 */
	_Atomic uint64_t evictions;
};

void guard_table_init(struct guard_table *t, size_t entries);
void guard_table_destroy(struct guard_table *t);

/* Outcome of one level's step. */
struct guard_step {
	enum guard_verdict verdict;
	uint32_t idx;         /* the entry, when admitted */
	uint32_t conns_before;
};
/* Finds or takes the entry for k in `bucket`, refills its bucket, and
 * admits one connection if its rate and concurrency allow (taking a token
 * and counting the connection).  lim: the class's limits by level. */
void guard_table_step(struct guard_table *t, uint64_t hash, const struct guard_key *k,
		      const struct guard_limit lim[GUARD_LEVEL__COUNT], uint64_t now_ms,
		      struct guard_step *out);
/* Gives back one connection counted at entry idx. */
void guard_table_put(struct guard_table *t, uint32_t idx);
/* Connections at the entry for k, 0 when not present. */
uint32_t guard_table_peek(struct guard_table *t, uint64_t hash, const struct guard_key *k);
/* Calls cb with a copy of every entry holding connections, one shard
 * locked at a time (cb must not call back into the table). */
typedef void guard_entry_cb(void *arg, const struct guard_entry *e);
void guard_table_foreach_live(struct guard_table *t, guard_entry_cb *cb, void *arg);
size_t guard_table_capacity(const struct guard_table *t);
size_t guard_table_bytes(const struct guard_table *t);

/* The refill rule, exposed for the unit tests: tokens after `elapsed_ms`. */
uint32_t guard_bucket_refill(uint32_t tokens, uint64_t elapsed_ms, const struct guard_limit *lim);

/* ---- guard.c ------------------------------------------------------------------ */

struct guard_conf {
	struct guard_conf *older;         /* replaced snapshots, freed by guard_free */
	bool enabled;
	uint64_t fair_pct;
	uint64_t max_conn[GUARD_CLASS__COUNT];
	struct guard_limit lim[GUARD_CLASS__COUNT][GUARD_LEVEL__COUNT];
	struct guard_cidr *allow;
	size_t n_allow;
	char smtp_line[GUARD_LINE_MAX];
	size_t smtp_len;
	uint64_t offence_ban_s[GUARD_OFFENCE_STEPS_MAX]; /* ban for the 1st, 2nd, ... offence */
	size_t n_offence_steps;
	uint64_t offence_forget_ms;
	uint64_t auth_delay_ms, auth_max_delay_ms, auth_ban_after, auth_window_ms;
	struct guard_cidr *proxy_from[GUARD_CLASS__COUNT];   /* guard.<class>.proxy_from */
	size_t n_proxy_from[GUARD_CLASS__COUNT];
	uint64_t proxy_timeout_ms;
	uint64_t good_ttl_ms;                /* guard.good.ttl */
	uint64_t good_reserve_pct;           /* guard.good.reserve */
};

/* Failed logins of one source (key: the address) or one account (key: a
 * keyed hash of the lower-cased name), 32 bytes. */
struct guard_auth_entry {
	uint8_t key[16];
	uint64_t last_ms;                 /* last failure */
	uint32_t fails;
	uint8_t family;                   /* 0: free; 4, 6: source; 1: account */
	uint8_t reserved[3];
};

struct guard_auth_table {
	struct guard_auth_entry *entries; /* n_buckets * GUARD_WAYS */
	size_t n_buckets;
	struct guard_shard shards[GUARD_SHARDS];
};

/* A ban, or the offence record of an address whose ban has expired: an
 * entry with strikes > 0 is kept until guard.offence_forget after its
 * expiry, so the next offence bans for longer. */
struct guard_ban {
	uint8_t b[16];
	uint64_t expires_ms;
	uint8_t family;                   /* 0: free */
	uint8_t strikes;                  /* offences counted (saturates at 255) */
	uint8_t reserved[6];
};

/* A good sender (guard_good.c), 32 bytes. */
struct guard_good_entry {
	uint8_t b[16];
	uint64_t seen_ms;                 /* monotonic: last clean delivery or login */
	uint8_t family;                   /* 0: free */
	uint8_t ref;                      /* second-chance bit */
	uint8_t reserved[6];
};

struct guard_good_table {
	struct guard_good_entry *entries; /* n_buckets * GUARD_WAYS */
	uint8_t *hands;                   /* clock hand per bucket */
	size_t n_buckets;
	struct guard_shard shards[GUARD_SHARDS];
	_Atomic size_t n;                 /* ways in use (some may have expired) */
};

struct guard_nft;

struct guard {
	_Atomic(struct guard_conf *) conf;
	/* Allowlist entries added at run time (guard_allow_add), kept across
	 * reloads and in <state_dir>/guard-allow; main thread only. */
	struct guard_cidr *extra;
	size_t n_extra;
	char *state_dir;                  /* set by guard_state_load; NULL: nothing is saved */
	uint8_t hash_key[crypto_shorthash_KEYBYTES];
	unsigned prefix[2][GUARD_LEVEL__COUNT]; /* [v4, v6][level]; 0 = level unused */
	struct guard_table tables[GUARD_CLASS__COUNT];
	struct guard_ban *bans;           /* n_ban_buckets * GUARD_WAYS */
	size_t n_ban_buckets;
	struct guard_shard ban_shards[GUARD_SHARDS];
	_Atomic size_t n_bans;            /* bans stored (some may have expired) */
	struct guard_auth_table auth[2];  /* [0] sources, [1] accounts (guard_auth.c) */
	struct guard_good_table good;     /* guard_good.c */
	_Atomic(struct guard_nft *) nft;  /* the kernel mirror, NULL when off (guard_nft.c) */
};

/* guard_auth.c: the tables' memory (entries: guard.ban_entries each). */
void guard_auth_init(struct guard *g, size_t entries);
void guard_auth_destroy(struct guard *g);

/* Restores a saved ban or offence record (guard_state.c), expiring at
 * monotonic expires_ms. */
void guard_ban_restore(struct guard *g, const struct guard_addr *a, uint64_t expires_ms, unsigned strikes,
		       uint64_t now_ms);
/* Calls cb for every entry that bans or remembers something at now_ms;
 * expires_ms is monotonic (at or before now_ms: an offence record only).
 * Locks one shard at a time; cb must not call back into the guard. */
typedef void guard_ban_cb(void *arg, const struct guard_addr *a, uint64_t expires_ms, unsigned strikes);
void guard_ban_foreach(struct guard *g, uint64_t now_ms, guard_ban_cb *cb, void *arg);
/* ---- guard_good.c -------------------------------------------------------------- */

void guard_good_init(struct guard *g, size_t entries);
void guard_good_destroy(struct guard *g);
/* Restores a saved good sender last seen at monotonic seen_ms (skipped when
 * guard.good.ttl has passed). */
void guard_good_restore(struct guard *g, const struct guard_addr *a, uint64_t seen_ms, uint64_t now_ms);
/* Calls cb (may be NULL) for every good sender at now_ms, one shard locked
 * at a time (cb must not call back into the guard); returns their number. */
typedef void guard_good_cb(void *arg, const struct guard_addr *a, uint64_t seen_ms);
size_t guard_good_foreach(struct guard *g, uint64_t now_ms, guard_good_cb *cb, void *arg);

/* ---- guard_nft.c ------------------------------------------------------------------ */

#define GUARD_NFT_BATCH 1024                    /* elements in one request to the helper */
#define GUARD_NFT_MAX_TIMEOUT_S (365u * 86400u) /* longest timeout given to the kernel */

enum guard_nft_op {
	GUARD_NFT_SETUP = 1,   /* (re)creates the table, its chain, rule and empty sets */
	GUARD_NFT_ADD,         /* adds (or renews) elements with their timeouts */
	GUARD_NFT_DEL,         /* removes elements (absent ones are no error) */
	GUARD_NFT_DESTROY,     /* deletes the table */
};

/* One element of a request: 24 bytes on the helper's socket. */
struct guard_nft_elem {
	uint8_t family;        /* 4 or 6 */
	uint8_t reserved[3];
	uint32_t timeout_s;    /* ADD: 1 .. GUARD_NFT_MAX_TIMEOUT_S */
	uint8_t b[16];
};


/* The nft script of one request (validated elements only). */
void guard_nft_script(const struct guard_nft_names *nm, enum guard_nft_op op, const struct guard_nft_elem *e,
		      size_t n, struct buf *out);
/* How the mirror's thread sends one request: true when nft applied it,
 * else false with *error_r (the first line of nft's complaint). */
typedef bool guard_nft_send_fn(void *arg, enum guard_nft_op op, const struct guard_nft_elem *e, size_t n,
			       char **error_r);
/* Starts the mirror thread over `send` (tests pass their own), queue of
 * queue_cap changes; a first full re-sync is queued.  Sets g->nft. */
void guard_nft_attach(struct guard *g, guard_nft_send_fn *send, void *arg, size_t queue_cap,
		      const char *describe);
/* One request to the helper process and its answer (the mirror thread). */
bool guard_nft_helper_call(struct guard_nft_helper *h, enum guard_nft_op op, const struct guard_nft_elem *e,
			   size_t n, char **error_r);
/* Waits until the thread has nothing left to do (tests). */
void guard_nft_wait_idle(struct guard *g);
/* Called by the ban code (any thread, any lock held): `a` is now banned
 * until monotonic expires_ms, or (expires_ms 0) no longer banned. */
void guard_nft_note(struct guard *g, const struct guard_addr *a, uint64_t expires_ms);

/* The settings snapshot with `extra` CIDRs added to its allowlist (a copy). */
struct guard_conf *guard_conf_with_allow(const struct guard_conf *c, const struct guard_cidr *extra, size_t n);

#endif
