/*
 * store.h - the mailbox store: accounts, mailboxes, messages, blobs.
 *
 * Owns: the SQLite index (one shared file, WAL mode) and the blob files
 * under the blob directory.  See docs/STORAGE.md for the on-disk format.
 *
 * Concurrency:
 *  - struct store is the read-write handle.  Exactly one thread uses it at a
 *    time: the queue's committer thread in the daemon, or the CLI process.
 *    Other processes (the CLI while the daemon runs) may write too; SQLite's
 *    WAL locking serialises them and busy_timeout waits.
 *  - struct store_reader is a read-only handle for one network thread each
 *    (recipient lookups).  Readers never block the writer (WAL).
 *
 * Durability:
 *  - store_commit_deliveries() returns ST_OK only once every row it wrote is
 *    in a committed transaction with synchronous=FULL (WAL fsynced), and the
 *    caller has already made each blob durable (file + directory fsync) with
 *    store_blob_*.  The index never names a blob that is not durable.
 *  - Admin writes (domains, users, aliases) are ordinary durable transactions.
 *
 * Errors: functions return enum status; *error_r (when given) receives a
 * malloc'd message for the log or the CLI user.
 *
 * Callbacks of the *_list functions run while the handle's statement is
 * active: they must not call back into the same handle.
 */
#ifndef STRATA_STORE_H
#define STRATA_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "core.h"

struct store;
struct store_reader;

/* Opens (and creates/migrates when `create`) the index and blob directory
 * named by the settings.  Without `create` the index must exist at this
 * build's schema version.  Returns NULL with *error_r on failure.
 * store_reader_open needs an index that exists at this schema version. */
struct store *store_open(const struct settings *s, bool create, char **error_r);
void store_close(struct store **st);
struct store_reader *store_reader_open(const struct settings *s, char **error_r);
void store_reader_close(struct store_reader **r);

/* ---- domains ---------------------------------------------------------- */
enum status store_domain_add(struct store *st, const char *domain, char **error_r);
/* Fails with ST_INVALID when accounts or aliases still use the domain. */
enum status store_domain_del(struct store *st, const char *domain, char **error_r);
typedef void store_name_cb(void *ctx, const char *name);
enum status store_domain_list(struct store *st, store_name_cb *cb, void *ctx);

/* ---- accounts --------------------------------------------------------- */
struct account {
	int64_t id;
	char address[320];       /* lower-case local@domain */
	char pwhash[256];        /* scheme-prefixed hash, see auth.h */
	uint64_t quota_bytes;    /* 0 = unlimited */
	uint64_t quota_messages; /* 0 = unlimited */
	uint64_t used_bytes;
	uint64_t used_messages;
	int64_t created;         /* unix time */
	int64_t last_login;      /* unix time, 0 = never */
};
/* Creates the account with INBOX, Sent, Drafts, Trash, Junk and Archive.
 * The domain must exist (ST_NOT_FOUND otherwise); ST_EXISTS if taken by an
 * account or an alias; ST_INVALID for a malformed address, a password hash
 * over 255 bytes or with spaces/control bytes, or a quota above INT64_MAX.
 * pwhash may be NULL or "" (no password login). */
enum status store_user_add(struct store *st, const char *address, const char *pwhash,
			   uint64_t quota_bytes, uint64_t quota_messages, char **error_r);
/* Many accounts in one transaction (bulk import).  Stops at the first
 * failure and rolls back everything; *failed_index_r names the entry. */
struct user_spec {
	const char *address;
	const char *pwhash;
	uint64_t quota_bytes;
	uint64_t quota_messages;
};
enum status store_user_add_many(struct store *st, const struct user_spec *specs, size_t n,
				size_t *failed_index_r, char **error_r);
/* Deletes the account, its mailboxes and messages; blobs whose reference
 * count drops to zero are unlinked after the transaction commits. */
enum status store_user_del(struct store *st, const char *address, char **error_r);
enum status store_user_set_password(struct store *st, const char *address, const char *pwhash,
				    char **error_r);
enum status store_user_set_quota(struct store *st, const char *address, uint64_t quota_bytes,
				 uint64_t quota_messages, char **error_r);
enum status store_user_get(struct store *st, const char *address, struct account *out);
typedef void store_account_cb(void *ctx, const struct account *a);
/* Lists accounts, optionally only those of `domain` (NULL = all). */
enum status store_user_list(struct store *st, const char *domain, store_account_cb *cb, void *ctx);

/* ---- aliases ---------------------------------------------------------- */
/* `source` is local@domain, or "@domain" for the domain's catch-all.
 * `targets` is a comma-separated list of local accounts or aliases.
 * add: ST_NOT_FOUND when the source domain is not local or a target does
 * not exist; ST_EXISTS when the source is an alias or an account;
 * ST_INVALID for bad syntax, more than STORE_MAX_EXPANSION targets, or an
 * alias that would loop, nest deeper than 8 or reach more than
 * STORE_MAX_EXPANSION accounts. */
enum status store_alias_add(struct store *st, const char *source, const char *targets, char **error_r);
enum status store_alias_del(struct store *st, const char *source, char **error_r);
typedef void store_alias_cb(void *ctx, const char *source, const char *targets);
enum status store_alias_list(struct store *st, store_alias_cb *cb, void *ctx);

/* ---- recipient resolution (network threads, via a reader) ------------- */
#define STORE_MAX_EXPANSION 64
struct rcpt_resolution {
	size_t n;                          /* accounts the address expands to */
	int64_t account_ids[STORE_MAX_EXPANSION];
	char addresses[STORE_MAX_EXPANSION][320]; /* each account's own address */
	bool over_quota;                   /* at least one is full for `size` */
};
/*
 * Resolves an envelope address (already lower-cased, without <>) through
 * accounts, aliases (nested up to 8 levels), and the domain catch-all.
 *  ST_OK        - res filled (deduplicated account ids)
 *  ST_NOT_FOUND - local domain, no such account or alias (550 5.1.1)
 *  ST_INVALID   - domain is not local (relay denied, 550 5.7.1)
 *  ST_TEMPFAIL  - index error
 * `size` is the declared message size (0 if unknown) for the quota check.
 */
enum status store_resolve_rcpt(struct store_reader *r, const char *address, uint64_t size,
			       struct rcpt_resolution *res);
bool store_domain_is_local(struct store_reader *r, const char *domain);

/* ---- blobs ------------------------------------------------------------ */
/*
 * A blob file holds the message bytes exactly as IMAP serves them, followed
 * by a text trailer that makes the file self-describing for a rebuild:
 *
 *   <message bytes>
 *   "\nSTRATA-META 1\n" key: value lines "STRATA-META-END <len:10>\n"
 *
 * The last STORE_TRAILER_TAIL bytes give the trailer's length, so a reader
 * finds it with one pread.  Blob path: <blob_dir>/<id[0..4]>/<id[5..6]>/<id>
 * (ids sort by time, so concurrent deliveries share directories and thus
 * directory fsyncs).  Temp files live in <blob_dir>/tmp/.
 */
#define STORE_TRAILER_TAIL 27 /* "STRATA-META-END " + 10 digits + "\n" */
struct blob_meta {
	struct msgid id;
	int64_t received;           /* unix time: the IMAP internal date */
	uint64_t size;              /* message bytes, without the trailer */
	char hash_hex[65];          /* BLAKE2b-256 of the message bytes */
	size_t n_rcpts;
	char (*rcpt_addresses)[320];/* account addresses it was delivered to */
};
/* Formats the trailer for meta into out (appends).  meta must name at
 * least one rcpt (a trailer without one does not parse). */
void store_blob_trailer(const struct blob_meta *meta, struct buf *out);
/* Parses a blob file's trailer (rebuild, verify).  Caller frees with
 * store_blob_meta_free.  ST_INVALID when the file has no valid trailer (or
 * is not a regular file); ST_NOT_FOUND when it does not exist; ST_IO_ERROR
 * when it could not be read (not proof of garbage: do not delete it). */
enum status store_blob_read_meta(const char *path, struct blob_meta *meta);
void store_blob_meta_free(struct blob_meta *meta);
/* Full path of a blob's final location. */
void store_blob_path(const char *blob_dir, const struct msgid *id, char *out, size_t outlen);
/* Directory of a blob's final location.  Names it only: the writer creates
 * it with fs_mkdir_p (which fsyncs each new level into its parent) before
 * renaming into it. */
void store_blob_dir_of(const char *blob_dir, const struct msgid *id, char *out, size_t outlen);

/* ---- delivery (the committer thread) ---------------------------------- */
struct store_delivery {
	struct msgid id;
	int64_t received;
	uint64_t size;
	size_t n_accounts;
	const int64_t *account_ids;   /* deduplicated */
	/* out: */
	enum status status;           /* per delivery */
	uint32_t *uids;               /* out: INBOX uid per account (n_accounts), caller-owned */
};
/*
 * Inserts, in ONE transaction, a blob row (refcount = n_accounts) and one
 * message row in each account's INBOX (next UID, new modseq, \Recent-free,
 * flags empty), updating quota usage.  A delivery whose account would go
 * over quota gets ST_OVER_QUOTA_TEMP/PERM (per settings) and writes nothing;
 * the others still commit.  If the transaction fails, every delivery gets
 * the failure status and nothing is written.  Precondition: each blob is
 * already durable at its final path.
 * An account deleted since resolution is skipped (its uids[] entry is 0);
 * when none is left the delivery gets ST_NOT_FOUND.  Returns ST_OK when
 * the transaction committed (each d[i]->status then says whether that
 * delivery was written), else the transaction's failure status.
 */
enum status store_commit_deliveries(struct store *st, struct store_delivery **d, size_t n);

/* ---- reading (CLI `strata mail`, later IMAP) -------------------------- */
struct message_row {
	int64_t mailbox_id;
	uint32_t uid;
	struct msgid id;
	uint64_t size;
	int64_t received;
	uint32_t flags;
	uint64_t modseq;
};
#define MSG_FLAG_SEEN     (1u << 0)
#define MSG_FLAG_ANSWERED (1u << 1)
#define MSG_FLAG_FLAGGED  (1u << 2)
#define MSG_FLAG_DELETED  (1u << 3)
#define MSG_FLAG_DRAFT    (1u << 4)
typedef void store_message_cb(void *ctx, const struct message_row *m);
/* Lists a mailbox of an account in UID order.  ST_NOT_FOUND if either is unknown.
 * mailbox NULL or any case of "INBOX" names the INBOX; other names are
 * case-sensitive.  The same holds for store_message_path. */
enum status store_mailbox_list_messages(struct store *st, const char *address, const char *mailbox,
					store_message_cb *cb, void *ctx);
/* Names of an account's mailboxes with their message counts. */
typedef void store_mailbox_cb(void *ctx, const char *name, const char *special_use,
			      uint32_t uidvalidity, uint32_t uidnext, uint64_t messages);
enum status store_mailbox_list(struct store *st, const char *address, store_mailbox_cb *cb, void *ctx);
/* Path of the blob holding message `uid` of `mailbox`; size in *size_r. */
enum status store_message_path(struct store *st, const char *address, const char *mailbox,
			       uint32_t uid, char *path, size_t pathlen, uint64_t *size_r);

/* ---- status ----------------------------------------------------------- */
struct store_stats {
	uint64_t domains, accounts, aliases, mailboxes, messages, blobs, blob_bytes;
};
enum status store_stats(struct store *st, struct store_stats *out);

#endif
