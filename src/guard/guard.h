/*
 * guard.h - the connection guard in front of every listener.
 *
 * Owns: per-source connection RATE (token bucket: burst + refill per
 * second) and CONCURRENCY limits at three levels of aggregation - the
 * address, its network (IPv4 /24, IPv6 /64) and, for IPv6, a wider network
 * (/48) - for each protocol class (mx: inbound SMTP; user: IMAP, POP3,
 * submission), a global cap per class with fair shares between networks,
 * an allowlist (CIDRs that bypass every limit; guard.allow plus entries
 * added at run time) and a ban list with expiry that also counts each
 * address's protocol offences, so bans grow on repeat.  Bans and run-time
 * allowlist entries are saved in the state directory (guard_state.c).
 * It also counts failed logins per source and per account (brute force,
 * guard_auth.c), parses the PROXY protocol header of connections from
 * trusted load balancers (guard_proxy.c), remembers good senders that get
 * reserved room and no banner delay (guard_good.c), and mirrors every ban
 * into an nftables set so the kernel drops banned sources
 * (guard_nft.c, guard_nft_helper.c).
 * The listener consults it on accept, before any TLS or
 * protocol work; a refused connection gets one protocol line written with a
 * non-blocking send() and is closed, with no allocation.
 *
 * Memory is bounded by construction: one fixed table per class
 * (guard.table_entries entries of 40 bytes), one fixed ban table and one
 * fixed good-sender table, all allocated by guard_new; the kernel mirror's
 * queue of changes is fixed too (a full queue becomes one re-sync).  A new source takes an entry by clock
 * (second-chance) eviction inside its hash bucket; an entry with live
 * connections is never evicted.  A million distinct sources cannot grow it.
 *
 * Concurrency: every function is thread-safe (several network threads call
 * guard_accept/guard_release at once).  The table is split into shards,
 * each with its own mutex; a decision locks at most one shard at a time,
 * briefly, for each level (see guard_table.c for why).  Limits and the
 * allowlist change on guard_set_settings (SIGHUP) without stopping anyone.
 *
 * Bucket placement uses a keyed hash (SipHash-2-4, random key per process),
 * so a client cannot choose addresses that collide in one bucket.
 */
#ifndef STRATA_GUARD_H
#define STRATA_GUARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "config.h"
#include "core.h"

/* What a listener serves: decides the class and the refusal line (an
 * implicit-TLS port gets no line: plaintext would only confuse the
 * client's TLS stack; it is closed). */
enum guard_proto {
	GUARD_PROTO_SMTP = 0,      /* class mx */
	GUARD_PROTO_SUBMISSION,    /* class user, SMTP refusal line */
	GUARD_PROTO_IMAP,
	GUARD_PROTO_IMAPS,
	GUARD_PROTO_POP3,
	GUARD_PROTO_POP3S,
};

enum guard_class { GUARD_CLASS_MX = 0, GUARD_CLASS_USER, GUARD_CLASS__COUNT };

/* Levels of aggregation, each with its own limits and table entries. */
enum guard_level { GUARD_LEVEL_ADDR = 0, GUARD_LEVEL_NET, GUARD_LEVEL_WIDE, GUARD_LEVEL__COUNT };

enum guard_verdict {
	GUARD_ADMIT = 0,
	GUARD_REFUSE_RATE,         /* a token bucket is empty */
	GUARD_REFUSE_CONCURRENCY,  /* an address/network is at its concurrency limit */
	GUARD_REFUSE_GLOBAL,       /* class cap, fair share, or no table entry free */
	GUARD_REFUSE_BAN,          /* the address is banned */
};
const char *guard_verdict_name(enum guard_verdict v);

/* A normalised source address: IPv4-mapped IPv6 becomes IPv4. */
struct guard_addr {
	uint8_t family;            /* 4 or 6 */
	uint8_t b[16];             /* IPv4 in b[0..3], the rest zero */
};
/* False for a family other than AF_INET/AF_INET6 or a short length. */
bool guard_addr_from_sockaddr(const struct sockaddr *sa, socklen_t len, struct guard_addr *out);
/* Numeric "192.0.2.1" or "2001:db8::1".  False when not an address. */
bool guard_addr_parse(const char *text, struct guard_addr *out);
/* Text form into out (at least 46 bytes). */
void guard_addr_format(const struct guard_addr *a, char *out, size_t outlen);

/*
 * The right to one admitted connection.  guard_admit/guard_accept fill it;
 * guard_release gives it back exactly once (it clears the ticket, so a
 * second call is a no-op).  An allowlisted connection gets an empty ticket
 * (g == NULL): it counts against nothing and its release does nothing.
 * A ticket may be copied to move it (the old copy must then be forgotten).
 */
struct guard_ticket {
	struct guard *g;
	uint32_t idx[GUARD_LEVEL__COUNT]; /* table entries; UINT32_MAX: level unused */
	uint8_t cls;                      /* enum guard_class */
};

struct guard;

/* Builds the tables (fixed size from s) and a random hash key.  NULL with
 * *error_r (caller frees) when a setting is unusable (e.g. guard.allow). */
struct guard *guard_new(const struct settings *s, char **error_r);
/* Every ticket must have been released. */
void guard_free(struct guard **g);

/* New limits and allowlist (SIGHUP), in effect for the next decision.
 * Table size and prefix lengths are not reloadable (config.c marks them).
 * False with *error_r when the allowlist is bad: nothing changes then. */
bool guard_set_settings(struct guard *g, const struct settings *s, char **error_r);

/* The decision without I/O, at monotonic time now_ms.  On GUARD_ADMIT the
 * ticket holds the connection; otherwise it is empty.  Counts the refusal
 * in the metrics. */
enum guard_verdict guard_admit(struct guard *g, enum guard_class cls, const struct guard_addr *a,
			       uint64_t now_ms, struct guard_ticket *ticket_r);
void guard_release(struct guard_ticket *t);

/*
 * The accept path: decides for `peer` (g NULL: admits with an empty
 * ticket).  When refused, writes the protocol's one-line refusal with
 * send(MSG_NOSIGNAL|MSG_DONTWAIT), closes fd and returns false.  When
 * admitted returns true: the caller owns fd and *ticket_r and must pass the
 * ticket on to the session, which releases it when the connection closes.
 */
bool guard_accept(struct guard *g, enum guard_proto proto, int fd, const struct sockaddr *peer,
		  socklen_t peer_len, struct guard_ticket *ticket_r);

/* The class a protocol belongs to. */
enum guard_class guard_proto_class(enum guard_proto proto);

/*
 * Bans: `a` is refused on every class for `seconds` from now (a second ban
 * of the same address replaces the expiry).  The ban table is fixed-size:
 * when an address's bucket is full, the ban expiring soonest is displaced.
 * An allowlisted address is never refused, banned or not.  Bans do not
 * close connections already open.
 */
void guard_ban(struct guard *g, const struct guard_addr *a, uint64_t seconds, uint64_t now_ms);
/* Lifts the ban of `a` at once and forgets its offences (an operator
 * unbanning a real user gives them a clean record).  True when a ban or an
 * offence record was removed. */
bool guard_unban(struct guard *g, const struct guard_addr *a);
/* True while `a` is banned (whatever the allowlist says). */
bool guard_is_banned(struct guard *g, const struct guard_addr *a, uint64_t now_ms);
/*
 * Protocol offences: a session that breaks a protocol limit reports it
 * here, and closes.  Each offence bans `a` for the next step of
 * guard.offence_bans (1st offence: first duration, 2nd: second, ...; past
 * the last step, the last one).  The count lives in the address's ban
 * entry and outlives the ban by guard.offence_forget, then starts again.
 * An offence never shortens a ban in force.  Allowlisted addresses are
 * counted in the metrics but never banned.  Returns the ban in seconds (0:
 * allowlisted).  Logs one info line.
 */
enum guard_offence {
	GUARD_OFFENCE_ERRORS = 0,  /* smtp.max_errors reached */
	GUARD_OFFENCE_HARVEST,     /* smtp.max_unknown_recipients passed (directory harvest) */
	GUARD_OFFENCE_PRE_HELO,    /* smtp.max_commands_before_helo passed */
	GUARD_OFFENCE_COMMANDS,    /* smtp.max_commands passed */
	GUARD_OFFENCE_EARLY_TALK,  /* SMTP client spoke before the banner */
	GUARD_OFFENCE_AUTH,        /* guard.auth.ban_after failed logins */
};
const char *guard_offence_name(enum guard_offence kind);
uint64_t guard_offence(struct guard *g, const struct guard_addr *a, enum guard_offence kind, uint64_t now_ms);
/*
 * Brute force (guard_auth.c).  IMAP and POP3 report every failed login
 * with the source and the account name tried.  Failures are counted per
 * source address and per account (case-insensitive), in two fixed tables
 * (guard.ban_entries entries each; an address or account evicts the one
 * idle longest in its bucket), and forgotten guard.auth.window after the
 * last one.  The return value is the delay, in ms, the caller must wait -
 * on a timer, never blocking its loop - before sending the failure reply:
 * guard.auth.delay doubled for each earlier failure of the source or of
 * the account (the larger count), at most guard.auth.max_delay.  The
 * guard.auth.ban_after-th failure of a source is an offence (a growing ban
 * of the SOURCE; its count then starts again).
 *
 * Nothing here ever refuses or delays a successful login: the per-account
 * count only slows down failures for that account, so an attacker who
 * hammers a real user's account makes the attacker's own failures slow, and
 * the user, logging in correctly from an address with a clean history,
 * gets in at once.  Accounts are never locked.
 */
uint64_t guard_auth_failure(struct guard *g, const struct guard_addr *a, const char *account, uint64_t now_ms);
/* Failures counted now for the source and the account (tests, status). */
void guard_auth_counts(struct guard *g, const struct guard_addr *a, const char *account, uint64_t now_ms,
		       unsigned *source_r, unsigned *account_r);

/* Offences remembered for `a` (0 when none or forgotten). */
unsigned guard_offences(struct guard *g, const struct guard_addr *a, uint64_t now_ms);
/* True when `a` matches guard.allow. */
bool guard_is_allowed(struct guard *g, const struct guard_addr *a);

/* How full class `cls` is: its admitted connections per thousand of
 * guard.<class>.max_connections (0 to 1000; 0 with guard.enabled = no).
 * The SMTP banner delay grows with it. */
unsigned guard_load_permille(struct guard *g, enum guard_class cls);

/* Figures for tests and status pages. */
struct guard_stats {
	size_t capacity;           /* entries in the class's table */
	size_t used;               /* entries ever filled (never above capacity) */
	size_t live;               /* entries with connections now */
	uint64_t connections;      /* admitted connections of the class now */
	uint64_t active_networks;  /* networks with connections now */
	uint64_t evictions;
	size_t bytes;              /* memory of the class's table */
};
void guard_stats(struct guard *g, enum guard_class cls, struct guard_stats *out);
/* Connections open from the entry of `a` at `level` (0 when none). */
uint32_t guard_connections(struct guard *g, enum guard_class cls, enum guard_level level,
			   const struct guard_addr *a);

/*
 * Operator controls and state across restarts (guard_state.c).  These run
 * on one thread, the daemon's main thread (as guard_set_settings does).
 *
 * guard_allow_add: adds CIDRs ("192.0.2.0/24", "2001:db8::1", a comma
 * list) to a run-time allowlist that overrides every limit and ban like
 * guard.allow, survives reloads, and is saved to <state_dir>/guard-allow
 * at once (once guard_state_load has named the directory).  At most 4,096
 * entries.  False with *error_r on a bad entry, a full list or a failed
 * write (the entries are in effect all the same).
 *
 * guard_state_load: remembers state_dir for saving and restores what
 * guard_state_save wrote there (missing files: nothing to restore).  Bans
 * keep their wall-clock expiry across the restart.  False with *error_r
 * on an unreadable or oversized file; a bad line is logged and skipped.
 *
 * guard_state_save: writes <state_dir>/guard-bans (bans and offence
 * records) and guard-allow, each durably (temp, fsync, rename).  Does
 * nothing before guard_state_load.
 *
 * guard_status: the operator's report at now_ms - budgets in use per
 * class, the top sources by connections, refusals by reason, offences by
 * kind, bans with the time left (the 100 longest), top offenders, run-time
 * allowlist - as JSON (one object) or as text.
 */
bool guard_allow_add(struct guard *g, const char *cidr, char **error_r);
bool guard_state_load(struct guard *g, const char *state_dir, uint64_t now_ms, char **error_r);
bool guard_state_save(struct guard *g, uint64_t now_ms, char **error_r);
void guard_status(struct guard *g, uint64_t now_ms, bool json, struct buf *out);

/*
 * The PROXY protocol (guard_proxy.c), versions 1 and 2 of HAProxy's spec.
 * guard_proxy_parse looks at the first `len` bytes of a connection:
 * GUARD_PROXY_MORE (a valid beginning, not complete yet), GUARD_PROXY_OK
 * (out->length bytes are the header; out->src is the client, unless
 * out->local: LOCAL or UNKNOWN, keep the connection's own address), or
 * GUARD_PROXY_INVALID (close the connection).  A v1 header is at most
 * GUARD_PROXY_V1_MAX bytes, a v2 header 16 + GUARD_PROXY_V2_MAX_TLV.
 *
 * guard_proxy_wanted: of `avail` bytes just peeked at p[have...], how
 * many belong to the header (so the reader consumes no byte of the
 * client's own stream).
 */
#define GUARD_PROXY_V1_MAX 107
#define GUARD_PROXY_V2_MAX_TLV 512
#define GUARD_PROXY_BUF (16 + GUARD_PROXY_V2_MAX_TLV)
enum guard_proxy_result { GUARD_PROXY_MORE = 0, GUARD_PROXY_OK, GUARD_PROXY_INVALID };
struct guard_proxy_header {
	bool local;
	struct sockaddr_storage src, dst;
	socklen_t src_len, dst_len;
	size_t length;
};
enum guard_proxy_result guard_proxy_parse(const uint8_t *p, size_t len, struct guard_proxy_header *out);
size_t guard_proxy_wanted(const uint8_t *p, size_t have, size_t avail);
/* True when the listener class takes a PROXY header from `peer`
 * (guard.<class>.proxy_from). */
bool guard_proxy_trusted(struct guard *g, enum guard_class cls, const struct sockaddr *peer, socklen_t len);
/* guard.proxy_timeout: the whole header must arrive within it. */
uint64_t guard_proxy_timeout_ms(struct guard *g);

/*
 * Good senders (guard_good.c): a source that completed a clean SMTP
 * delivery (a 250 to DATA/BDAT in a session with no offence) or logged in
 * over IMAP or POP3 is remembered for guard.good.ttl after the last time,
 * in a fixed table (guard.good.entries; a full bucket forgets one by
 * clock, second chance), saved with the other guard state.  A good sender
 * may use the share of each class's cap (guard.good.reserve) that others
 * may not, and gets the SMTP banner at once; every rate, concurrency limit
 * and ban still applies to it.  An offence or a ban forgets the address.
 *
 * guard_good_mark: called by the protocol after the clean delivery or the
 * login (any thread).  Allowlisted and banned addresses are not recorded.
 * guard_is_good: true while `a` is remembered.  guard_good_forget: true
 * when `a` was remembered.
 */
void guard_good_mark(struct guard *g, const struct guard_addr *a, uint64_t now_ms);
/* The protocols' one-line hook: guard_good_mark on the daemon's guard
 * (guard_process; nothing without one) for the numeric address `ip`, now. */
void guard_good_mark_ip(const char *ip);
bool guard_is_good(struct guard *g, const struct guard_addr *a, uint64_t now_ms);
bool guard_good_forget(struct guard *g, const struct guard_addr *a);
/* Entries of the table (guard.good.entries rounded to whole buckets). */
size_t guard_good_capacity(struct guard *g);

/*
 * The kernel mirror of the bans (guard_nft.c, guard_nft_helper.c): every
 * ban in force is also an element, with the time it has left (at most a
 * year; a re-sync renews it), of an nftables set in Strata's own table
 * (guard.nft.table, family inet; sets guard.nft.set4 and guard.nft.set6),
 * whose input-hook rule drops the TCP packets of its elements to
 * guard.nft.ports (default: every listener's port) - except on loopback.
 * User space stays the truth and keeps refusing banned sources whether the
 * mirror works or not.
 *
 * Privileges: nft needs CAP_NET_ADMIN, which the daemon gives up with
 * root.  So guard_nft_helper_start forks, before the drop, a small helper
 * that keeps only CAP_NET_ADMIN (as the service user when change_user),
 * reads fixed-size requests (set up, add, remove, delete the table) from a
 * socket, builds the nft script itself from validated addresses and the
 * names fixed at its start - a compromised daemon can touch nothing but
 * Strata's own table - and runs `nft -f -` with a time limit.  It exits
 * when the daemon closes the socket or dies.
 *
 * guard_nft_helper_start: main thread, before other threads exist.  False
 * with *error_r on a bad guard.nft.* setting (a configuration error) or
 * when the helper cannot be started.  out->fd is -1 after a failure.
 * guard_nft_helper_stop: closes the socket and reaps the helper (waits at
 * most a few seconds, then kills it); safe on a stopped helper.
 *
 * guard_nft_start: takes over the helper and starts the mirror's thread,
 * which first recreates the table and adds every ban in force.  Without
 * permission (not root, no CAP_NET_ADMIN, no nft) it logs one warning and
 * the guard keeps banning in user space.  guard_nft_resync: asks for a
 * full re-sync (guard_set_settings does, on SIGHUP).  guard_nft_stop: ends
 * the thread (deleting the table first when delete_table: a clean
 * shutdown; the bans are in the state file) and the helper.  guard_free
 * stops a mirror still running, without deleting the table.
 */
#define GUARD_NFT_MAX_PORTS 64
#define GUARD_NFT_NAME_MAX 64

/* What the helper may touch, fixed when it starts. */
struct guard_nft_names {
	char table[GUARD_NFT_NAME_MAX];     /* without the family: always inet */
	char set4[GUARD_NFT_NAME_MAX], set6[GUARD_NFT_NAME_MAX];
	uint16_t ports[GUARD_NFT_MAX_PORTS];
	size_t n_ports;
	size_t set_size;                    /* guard.ban_entries */
};

struct guard_nft_helper {
	int pid;                            /* -1: none */
	int fd;                             /* the daemon's end of the socket; -1: none */
	struct guard_nft_names names;
};

/* guard.nft.* into names; listener_ports are used when guard.nft.ports is
 * empty.  False with *error_r on a bad name or port list. */
bool guard_nft_names_parse(const struct settings *s, const uint16_t *listener_ports, size_t n_listener_ports,
			   struct guard_nft_names *out, char **error_r);
bool guard_nft_helper_start(const struct settings *s, const uint16_t *listener_ports, size_t n_listener_ports,
			    bool change_user, uid_t uid, gid_t gid, struct guard_nft_helper *out, char **error_r);
void guard_nft_helper_stop(struct guard_nft_helper *h);
void guard_nft_start(struct guard *g, struct guard_nft_helper *h);
void guard_nft_resync(struct guard *g);
void guard_nft_stop(struct guard *g, bool delete_table);

enum guard_nft_state {
	GUARD_NFT_OFF = 0,     /* guard.nft.enabled = no, or not started */
	GUARD_NFT_STARTING,    /* the first re-sync has not finished */
	GUARD_NFT_ACTIVE,      /* the table exists and updates reach it */
	GUARD_NFT_INACTIVE,    /* no permission or no nft: user space only */
};
struct guard_nft_report {
	enum guard_nft_state state;
	uint64_t updates;      /* elements added or removed, and set-ups */
	uint64_t errors;       /* failed nft runs */
	char describe[256];    /* "table inet strata, sets ban4 and ban6" */
	char reason[256];      /* why not active */
};
enum guard_nft_state guard_nft_status(struct guard *g, struct guard_nft_report *out);
const char *guard_nft_state_name(enum guard_nft_state st);

/* The daemon's guard, for the accept path (set on the main thread before
 * the network threads start, cleared after they are joined). */
void guard_process_set(struct guard *g);
struct guard *guard_process(void);

#endif
