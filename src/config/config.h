/*
 * config.h - every Strata setting, in one table, parsed once.
 *
 * Owns: the settings table (name, type, default, range, unit, reloadable,
 * one line of documentation), the config file parser ("key = value" lines,
 * '#' comments, optional double quotes), -o overrides, and the immutable
 * struct settings that the rest of the program receives explicitly.
 *
 * Invariants:
 *  - A struct settings is never modified after config_load() returns; a
 *    reload (SIGHUP) builds a new one and swaps it in.  Old ones are kept
 *    until exit (config_free) because sessions may still hold a pointer.
 *  - Every key has a default, so an empty or missing file yields a working
 *    embedded configuration.
 *  - Unknown keys, bad values and out-of-range numbers are errors reported
 *    with file and line; nothing is silently ignored.
 */
#ifndef STRATA_CONFIG_H
#define STRATA_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"

#define CONFIG_DEFAULT_PATH "/etc/strata/strata.conf"
#define CONFIG_MAX_ALLOW 1024       /* entries in guard.allow */

/* ---- Tiers (docs/TIERING.md) -------------------------------------------
 * tier.names lists the tiers, fastest first; per tier `tier.<name>.path`,
 * `.capacity`, `.compress` and `.compress_level` are parsed outside the fixed key table into
 * settings->tiers.  Tier 0's path is always store.blob_dir (new mail lands
 * there); `tier.<first>.path`, when given, sets it. */
#define CONFIG_TIER_MAX 8
#define CONFIG_TIER_NAME_MAX 31
#define CONFIG_TIER_PIN_MAX 64
enum tier_compress { TIER_COMPRESS_NONE = 0, TIER_COMPRESS_ZSTD = 1 };
#define TIER_COMPRESS_LEVEL_DEFAULT 3
#define TIER_COMPRESS_LEVEL_MAX 19
struct tier_setting {
	char name[CONFIG_TIER_NAME_MAX + 1];
	char *path;                /* resolved, absolute or as given; never empty */
	uint64_t capacity_bytes;   /* target; 0 = unlimited (unless capacity_percent) */
	unsigned capacity_percent; /* 1..100 of the filesystem's size; 0 = use bytes */
	unsigned compress;         /* tier.<name>.compress: enum tier_compress */
	int compress_level;        /* tier.<name>.compress_level: 1..19 (zstd) */
};
enum tier_pin_kind { TIER_PIN_FOLDER = 0, TIER_PIN_ACCOUNT = 1 };
struct tier_pin_setting {
	unsigned kind;             /* enum tier_pin_kind */
	char *match;               /* folder name or role (case-insensitive), or address */
	unsigned tier;             /* index into settings->tiers */
};

enum cfg_type { CFG_STRING, CFG_BOOL, CFG_UINT, CFG_SIZE, CFG_DURATION, CFG_ENUM };

/* Enumerated values are stored as their index in the key's choice list. */
enum log_target { LOG_TARGET_STDERR = 0, LOG_TARGET_SYSLOG = 1 };
enum vrfy_mode { VRFY_CANNOT = 0, VRFY_DISABLED = 1 };
enum bare_lf_mode { BARE_LF_NORMALIZE = 0, BARE_LF_REJECT = 1 };
enum quota_reply { QUOTA_REPLY_TEMPORARY = 0, QUOTA_REPLY_PERMANENT = 1 };
enum store_startup_check { STORE_STARTUP_PROBE = 0, STORE_STARTUP_QUICK_CHECK = 1 };

struct settings {
	/* general */
	char *hostname;            /* resolved: never empty after config_load */
	char *state_dir;
	char *user;
	bool seccomp;                        /* system call filter (server_seccomp.c) */
	unsigned log_target;       /* enum log_target */
	unsigned log_level;        /* enum log_level */
	uint64_t threads;          /* resolved: >= 1 after config_load */
	uint64_t threads_user;     /* user-facing network threads; 0 = as many as threads */
	uint64_t threads_mx_nice;  /* nice increment of the MX network threads */
	char *admin_listen;        /* comma-separated host:port list */
	char *recipient_delimiter; /* e.g. "+": user+tag@d delivers to user@d; empty = off */
	/* smtp */
	char *smtp_listen;
	uint64_t smtp_max_message_size;
	uint64_t smtp_max_recipients;
	uint64_t smtp_max_line_length;
	uint64_t smtp_max_errors;
	uint64_t smtp_max_unknown_recipients;
	uint64_t smtp_max_commands_before_helo;
	uint64_t smtp_max_commands;
	uint64_t smtp_min_rate;          /* bytes per smtp_min_rate_window_ms while transferring; 0 = off */
	uint64_t smtp_min_rate_window_ms;
	uint64_t smtp_max_session_time_ms;
	uint64_t smtp_max_connections;
	uint64_t smtp_timeout_command_ms;
	uint64_t smtp_timeout_data_ms;
	unsigned smtp_vrfy;        /* enum vrfy_mode */
	unsigned smtp_bare_lf;     /* enum bare_lf_mode */
	uint64_t smtp_error_delay_ms;
	/* submission (587/465) */
	bool submission_require_tls;          /* AUTH only after TLS */
	bool submission_sender_login_match;   /* MAIL FROM must be owned by the AUTH user */
	uint64_t submission_store_threads;    /* password checks, per network thread */
	uint64_t submission_max_connections;  /* own cap: a port 25 flood cannot fill it */
	/* imap */
	char *imap_listen;         /* comma-separated host:port list; empty = no IMAP */
	uint64_t imap_max_line_length;
	uint64_t imap_max_message_size;
	uint64_t imap_max_connections;
	uint64_t imap_max_errors;
	uint64_t imap_timeout_login_ms;
	uint64_t imap_timeout_idle_ms;
	uint64_t imap_store_threads;
	bool imap_flag_fsync;          /* flag-only STOREs fsync the index (store.fsync=yes) */
	char *imaps_listen;        /* implicit-TLS IMAP (993); empty = none */
	/* pop3 */
	char *pop3_listen;         /* comma-separated host:port list; empty = no POP3 */
	char *pop3s_listen;        /* implicit-TLS POP3 (995); empty = none */
	char *submission_listen;   /* submission (587); empty = none */
	char *submissions_listen;  /* implicit-TLS submission (465); empty = none */
	uint64_t pop3_max_connections;
	uint64_t pop3_max_errors;
	uint64_t pop3_timeout_login_ms;
	uint64_t pop3_timeout_idle_ms;
	uint64_t pop3_store_threads;
	/* auth: the verified-password cache of the login paths (src/auth/auth_cache.c) */
	uint64_t auth_cache_ttl_ms;       /* 0 = no cache */
	uint64_t auth_cache_size;         /* entries; 0 = no cache */
	/* tls */
	char *tls_cert_file;       /* resolved: default under state_dir */
	char *tls_key_file;
	/* store */
	char *store_index_path;    /* resolved */
	char *store_blob_dir;      /* resolved */
	bool store_fsync;
	uint64_t store_blob_writers;
	uint64_t store_commit_batch;
	char *store_backup_dir;    /* resolved: default <state_dir>/backup */
	uint64_t store_backup_interval_ms; /* 0 = no periodic backup */
	unsigned store_startup_check;      /* enum store_startup_check */
	uint64_t store_backup_keep;
	bool store_mime_dict;             /* compress new MIME rows with a trained dictionary */
	uint64_t store_mime_dict_rows;   /* MIME rows before the first dictionary is trained */
	bool store_checkpointer;          /* WAL checkpoints on their own thread (store_checkpoint.c) */
	uint64_t store_checkpoint_pages;  /* WAL pages that call for a checkpoint */
	/* quota */
	uint64_t quota_default_bytes;
	uint64_t quota_default_messages;
	unsigned quota_over_reply; /* enum quota_reply */
	/* guard (src/guard): [class][level], class 0 = mx, 1 = user; level
	 * 0 = address, 1 = network, 2 = wide network (IPv6 only) */
	bool guard_enabled;
	char *guard_allow;         /* comma-separated CIDRs; checked by config_load */
	uint64_t guard_table_entries;
	uint64_t guard_ban_entries;
	uint64_t guard_ipv4_prefix;
	uint64_t guard_ipv6_prefix;
	uint64_t guard_ipv6_wide_prefix;
	uint64_t guard_fair_share_percent;
	char *guard_offence_bans;  /* durations "1m,10m,1h,1d"; checked by guard_new */
	uint64_t guard_offence_forget_ms;
	uint64_t guard_smtp_banner_delay_ms; /* at a full mx class; scaled by its load */
	uint64_t guard_auth_delay_ms;        /* first failed login's delay; doubles per failure */
	uint64_t guard_auth_max_delay_ms;
	uint64_t guard_auth_ban_after;       /* failed logins from one source before it is banned */
	uint64_t guard_auth_window_ms;       /* failures are forgotten this long after the last one */
	char *guard_proxy_from[2];           /* [class]: load balancers whose PROXY header is read */
	uint64_t guard_proxy_timeout_ms;
	bool guard_nft_enabled;              /* mirror bans into an nftables set (guard_nft.c) */
	char *guard_nft_table;               /* "inet strata"; checked by guard_nft_names_parse */
	char *guard_nft_set4, *guard_nft_set6;
	char *guard_nft_ports;               /* comma-separated ports; empty = the listeners' */
	uint64_t guard_good_entries;         /* good-sender memory (guard_good.c) */
	uint64_t guard_good_ttl_ms;
	uint64_t guard_good_reserve_percent; /* share of each class's cap only good senders may use */
	uint64_t guard_max_connections[2];
	struct guard_limit_settings {
		uint64_t rate;         /* connections per minute refilled; 0 = no rate limit */
		uint64_t burst;        /* bucket size */
		uint64_t concurrency;  /* open connections; 0 = no limit */
	} guard_limits[2][3];
	/* Tiers: table keys, then the structured list built by config_load */
	char *tier_names;          /* "fast,standard,archive"; empty = one tier "fast" */
	char *tier_pin;            /* "folder:Archive=archive,account:a@b=fast" */
	uint64_t tier_half_life_ms;
	uint64_t tier_promote_days;
	uint64_t tier_move_bytes_per_s;
	uint64_t tier_move_files_per_s;
	uint64_t tier_interval_ms;
	uint64_t tier_batch;
	uint64_t tier_checkpoint_interval_ms;
	char *tier_defs;           /* raw "name.attr=value\n" lines; config.c only */
	struct tier_setting tiers[CONFIG_TIER_MAX];
	size_t n_tiers;            /* >= 1 after config_load */
	struct tier_pin_setting tier_pins[CONFIG_TIER_PIN_MAX];
	size_t n_tier_pins;
	/* relay: outbound delivery (src/relay, docs/RELAY.md) */
	uint64_t relay_threads;
	uint64_t relay_retry_min_ms;
	uint64_t relay_retry_max_ms;
	uint64_t relay_max_lifetime_ms;
	uint64_t relay_connect_timeout_ms;
	uint64_t relay_command_timeout_ms;
	uint64_t relay_destination_concurrency;
	unsigned relay_tls;                  /* enum relay_tls */
	char *relay_helo_name;               /* "" = hostname */
	char *relay_transport;               /* "domain=host:port,...,*=host:port"; checked by relay_start */
	char *relay_dns_servers;             /* "ip:port,..."; "" = the system resolver */
};
enum relay_tls { RELAY_TLS_MAY = 0, RELAY_TLS_ENCRYPT = 1 };

struct config_key {
	const char *name;
	enum cfg_type type;
	const char *def;           /* default, as text */
	uint64_t min, max;         /* for numeric types */
	const char *const *choices;/* for CFG_ENUM, NULL-terminated */
	bool reloadable;
	size_t offset;             /* into struct settings */
	const char *doc;
};

/* The table, for docs and `strata config show`. */
const struct config_key *config_keys(size_t *count);

/*
 * Loads `path` (NULL: CONFIG_DEFAULT_PATH if it exists, else defaults only;
 * a path given explicitly must exist), then applies `overrides` (n_over
 * strings of the form "key=value"), then resolves derived defaults.
 * On error returns NULL and sets *error_r (caller frees) to a message naming
 * the file, line and key.
 */
struct settings *config_load(const char *path, char *const *overrides, size_t n_over,
			     char **error_r);
void config_free(struct settings **s);

/* Writes the value of `key` in `s` as text into out. */
void config_value_text(const struct settings *s, const struct config_key *key, struct buf *out);

/* True if keys that are not reloadable differ between a and b; names them in *which_r. */
bool config_needs_restart(const struct settings *a, const struct settings *b, char **which_r);

/* The effective path that config_load would read for `path` (or NULL: none). */
const char *config_effective_path(const char *path);

#endif
