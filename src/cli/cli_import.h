/*
 * cli_import.h - the engine of `strata user import` (private to src/cli and
 * its unit test).
 *
 * Input formats (one account per line; blank lines and lines whose first
 * non-blank character is '#' are skipped):
 *
 *   CSV     address,password_or_hash[,quota_bytes[,quota_messages]]
 *           RFC 4180 quoting ("a ""quoted"" , field"); a first line whose
 *           first field is "address" is a header and skipped; empty quota
 *           fields take the configured defaults; sizes accept k/M/G/T.
 *   passwd  Dovecot passwd-file: user@domain:{SCHEME}hash:uid:gid:gecos:
 *           home:shell:extra, where only the first two fields are needed
 *           and extra holds space-separated fields; userdb_quota_rule (or
 *           quota_rule, numbered variants too) with the mask '*' or '?'
 *           sets the quotas: "*:storage=1G", "*:messages=1000",
 *           "*:bytes=N", "*:storage=1G:messages=1000", "*:ignore"
 *           (unlimited).  As in Dovecot, a storage value without a unit is
 *           in KiB.  Rules for other mailboxes (Trash:storage=+100M) do
 *           not apply to Strata's per-account quota and are skipped.
 *
 * Automatic detection looks at the first record: it is passwd when it has
 * a ':' before any ',' (Argon2 hashes contain commas, so "no ',' at all"
 * would misread Dovecot lines), CSV otherwise.
 *
 * Passwords: a field that auth_hash_normalize accepts is a hash and is
 * stored as is (normalised); {PLAIN}text is clear text and gets hashed like
 * any other; anything else is a clear-text password and is hashed with
 * Argon2id, on one thread per core.  A field that looks like a hash Strata
 * cannot verify ({MD5-CRYPT}..., $1$..., and in passwd files a bare 13
 * character DES crypt) is an error, never mistaken for a password.
 *
 * Atomicity: every account is inserted in ONE store transaction
 * (store_user_add_many): all or nothing.  Domains created by
 * --create-domains are removed again if that transaction fails.
 *
 * Limits: lines up to IMPORT_LINE_MAX bytes, IMPORT_MAX_ENTRIES accounts
 * per file; memory is proportional to the file.  Errors name the file and
 * line and never echo a clear-text password.
 *
 * Threads: import_hash_passwords runs worker threads internally; every
 * other function is single-threaded.
 */
#ifndef STRATA_CLI_IMPORT_H
#define STRATA_CLI_IMPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "core.h"
#include "store.h"

#define IMPORT_LINE_MAX 4096
#define IMPORT_MAX_ENTRIES 2000000
#define IMPORT_PASSWORD_MAX 1024

enum import_format { IMPORT_AUTO = 0, IMPORT_CSV, IMPORT_PASSWD };

struct import_entry {
	char *address;             /* lower-cased */
	char *secret;              /* normalised hash, or clear text until hashed */
	bool is_hash;
	bool has_quota_bytes, has_quota_messages;
	uint64_t quota_bytes, quota_messages;  /* 0 = unlimited */
	unsigned long line;
};

struct import_list {
	struct import_entry *v;
	size_t n, cap;
	enum import_format format; /* the format read (after detection) */
};

enum import_line_kind { IMPORT_LINE_SKIP, IMPORT_LINE_ENTRY, IMPORT_LINE_ERROR };

/* "csv" / "passwd" (case-insensitive). */
bool import_format_parse(const char *name, enum import_format *out);
const char *import_format_name(enum import_format f);
/* The format of a first record (see above): IMPORT_CSV or IMPORT_PASSWD. */
enum import_format import_detect(const char *line);

/*
 * Parses one line (len bytes, without its '\n'; a trailing '\r' is
 * ignored).  `first_record` is true for the first line that is neither
 * blank nor a comment (a CSV header may be skipped there).  On
 * IMPORT_LINE_ENTRY `out` is filled (free with import_entry_clear; out->line
 * is left to the caller); on IMPORT_LINE_ERROR *error_r says why, without
 * file or line.
 */
enum import_line_kind import_parse_line(enum import_format fmt, const char *line, size_t len,
					bool first_record, struct import_entry *out, char **error_r);

/*
 * Reads a whole file.  fmt IMPORT_AUTO detects the format.  On failure
 * returns false with *error_r "<name>:<line>: <reason>"; out then holds
 * nothing (already freed).
 */
bool import_read(FILE *fp, const char *name, enum import_format fmt, struct import_list *out,
		 char **error_r);

/* Fails on the first address that appears twice, naming both lines. */
bool import_check_duplicates(const struct import_list *l, const char *name, char **error_r);

struct import_hash_stats {
	unsigned threads;
	size_t hashed;
	double seconds;
};
/*
 * Hashes every clear-text secret with Argon2id on `threads` threads (at
 * least 1; no more than there are secrets), wiping the clear text.  When
 * `progress` is not NULL a line "hashed X of N passwords" is written to it
 * every 10 s (a large clear-text import takes long).  Fails only when
 * Argon2 cannot get its memory; the failing line is named.
 */
bool import_hash_passwords(struct import_list *l, const char *name, unsigned threads, FILE *progress,
			   struct import_hash_stats *stats, char **error_r);

/* Checks that every domain used is local; with create_domains a missing one
 * is not an error.  *missing_r counts the missing domains. */
bool import_check_domains(struct store *st, const struct import_list *l, const char *name,
			  bool create_domains, size_t *missing_r, char **error_r);

struct import_result {
	size_t accounts;
	size_t domains_created;
};
/*
 * Creates missing domains (create_domains) and inserts every account in one
 * transaction, quotas defaulting to the settings.  Every secret must be a
 * hash by now.  On failure nothing stays behind (created domains are
 * removed) and *error_r names the file and line of the failing entry.
 */
enum status import_commit(struct store *st, const struct settings *s, const struct import_list *l,
			  const char *name, bool create_domains, struct import_result *res,
			  char **error_r);

void import_entry_clear(struct import_entry *e);
void import_list_free(struct import_list *l);

#endif
