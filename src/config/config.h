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

enum cfg_type { CFG_STRING, CFG_BOOL, CFG_UINT, CFG_SIZE, CFG_DURATION, CFG_ENUM };

/* Enumerated values are stored as their index in the key's choice list. */
enum log_target { LOG_TARGET_STDERR = 0, LOG_TARGET_SYSLOG = 1 };
enum vrfy_mode { VRFY_CANNOT = 0, VRFY_DISABLED = 1 };
enum bare_lf_mode { BARE_LF_NORMALIZE = 0, BARE_LF_REJECT = 1 };
enum quota_reply { QUOTA_REPLY_TEMPORARY = 0, QUOTA_REPLY_PERMANENT = 1 };

struct settings {
	/* general */
	char *hostname;            /* resolved: never empty after config_load */
	char *state_dir;
	char *user;
	unsigned log_target;       /* enum log_target */
	unsigned log_level;        /* enum log_level */
	uint64_t threads;          /* resolved: >= 1 after config_load */
	char *admin_listen;        /* comma-separated host:port list */
	char *recipient_delimiter; /* e.g. "+": user+tag@d delivers to user@d; empty = off */
	/* smtp */
	char *smtp_listen;
	uint64_t smtp_max_message_size;
	uint64_t smtp_max_recipients;
	uint64_t smtp_max_line_length;
	uint64_t smtp_max_errors;
	uint64_t smtp_max_connections;
	uint64_t smtp_timeout_command_ms;
	uint64_t smtp_timeout_data_ms;
	unsigned smtp_vrfy;        /* enum vrfy_mode */
	unsigned smtp_bare_lf;     /* enum bare_lf_mode */
	uint64_t smtp_error_delay_ms;
	/* imap */
	char *imap_listen;         /* comma-separated host:port list; empty = no IMAP */
	uint64_t imap_max_line_length;
	uint64_t imap_max_message_size;
	uint64_t imap_max_connections;
	uint64_t imap_max_errors;
	uint64_t imap_timeout_login_ms;
	uint64_t imap_timeout_idle_ms;
	uint64_t imap_store_threads;
	/* tls */
	char *tls_cert_file;       /* resolved: default under state_dir */
	char *tls_key_file;
	/* store */
	char *store_index_path;    /* resolved */
	char *store_blob_dir;      /* resolved */
	bool store_fsync;
	uint64_t store_blob_writers;
	uint64_t store_commit_batch;
	/* quota */
	uint64_t quota_default_bytes;
	uint64_t quota_default_messages;
	unsigned quota_over_reply; /* enum quota_reply */
};

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
