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

/* Change notification: after a transaction that changed mailboxes (new
 * messages, flags, expunges: anything that moves a mailbox's uidnext or
 * highestmodseq) commits on any store handle of this process, the listener
 * is called on the committing thread with the mailboxes' ids (all = true
 * when more changed than one call carries: treat every mailbox as changed).
 * It must not block: IMAP uses it to wake IDLE sessions at once.  Set once
 * at start, before store handles are used from other threads. */
typedef void store_change_fn(void *ctx, const int64_t *mailbox_ids, size_t n, bool all);
void store_set_change_listener(store_change_fn *fn, void *ctx);
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
 * Keys: id, received, size, hash, rcpt (one per account), and - for a blob
 * written by IMAP APPEND only - mailbox (the target's name; a delivery
 * goes to INBOX and has none).  Readers ignore unknown keys, so older
 * readers accept newer trailers.
 *
 * The last STORE_TRAILER_TAIL bytes give the trailer's length, so a reader
 * finds it with one pread.  Blob path: <blob_dir>/<id[0..4]>/<id[5..6]>/<id>
 * (ids sort by time, so concurrent deliveries share directories and thus
 * directory fsyncs).  Temp files live in <blob_dir>/tmp/.
 */
#define STORE_TRAILER_TAIL 27 /* "STRATA-META-END " + 10 digits + "\n" */
/* How the message bytes before the trailer are stored (docs/STORAGE.md,
 * "Compressed blobs").  A compressed blob's trailer carries the keys
 * "compress: zstd" and "stored: <bytes before the trailer>"; its message
 * bytes are one zstd frame with a content checksum.  The trailer itself is
 * never compressed, so it reads with the same two preads. */
enum blob_compress { BLOB_COMPRESS_NONE = TIER_COMPRESS_NONE, BLOB_COMPRESS_ZSTD = TIER_COMPRESS_ZSTD };
/* Largest message a compressed blob may declare (the ceiling of
 * smtp.max_message_size and imap.max_message_size): bounds decompression. */
#define STORE_BLOB_SIZE_MAX (2ull << 30)
struct blob_meta {
	struct msgid id;
	int64_t received;           /* unix time: the IMAP internal date */
	uint64_t size;              /* message bytes, without the trailer */
	char hash_hex[65];          /* BLAKE2b-256 of the message bytes */
	size_t n_rcpts;
	char (*rcpt_addresses)[320];/* account addresses it was delivered to */
	char mailbox[256];          /* APPEND: the target mailbox; "" = INBOX */
	unsigned compress;          /* enum blob_compress; 0 = plain */
	uint64_t stored_size;       /* bytes before the trailer; parsed: == size when plain */
	/* Outbound mail (submission): the envelope sender and the remote
	 * recipients, as keys "sender" (at most one) and "remote" (one each),
	 * both xtext-encoded (RFC 3461 4) since they may hold any byte.  A
	 * trailer names at least one rcpt or one remote. */
	char sender[320];           /* "" = null reverse-path (or none) */
	size_t n_remotes;
	char (*remote_addresses)[320];
};
/* Formats the trailer for meta into out (appends).  meta must name at
 * least one rcpt or remote (a trailer without one does not parse). */
void store_blob_trailer(const struct blob_meta *meta, struct buf *out);
/* Parses a blob file's trailer (rebuild, verify).  Caller frees with
 * store_blob_meta_free.  ST_INVALID when the file has no valid trailer (or
 * is not a regular file); ST_NOT_FOUND when it does not exist; ST_IO_ERROR
 * when it could not be read (not proof of garbage: do not delete it). */
enum status store_blob_read_meta(const char *path, struct blob_meta *meta);
/* The same on an open descriptor (the file's position is not used). */
enum status store_blob_read_meta_fd(int fd, struct blob_meta *meta);
void store_blob_meta_free(struct blob_meta *meta);
/* Streams the message bytes [0, meta->size) of the blob open as `in`
 * (meta parsed from its trailer) to `out` (-1: only check them): copied
 * when plain, decompressed when compressed.  Decompression is streaming
 * (bounded buffers), never produces more than meta->size bytes, and checks
 * the frame's checksum.  ST_INVALID (with *error_r) when the stored bytes
 * are corrupt or of the wrong length; ST_IO_ERROR/ST_NO_SPACE with errno
 * on a read or write error.  Thread-safe. */
enum status store_blob_unpack(int in, const struct blob_meta *meta, int out, char **error_r);
/* Writes a whole blob file for the blob open as `in` to `out`: its message
 * bytes stored as `compress` (zstd at `level`, 1..19), then its trailer
 * rewritten to say so.  Plain to plain is a copy; the others stream
 * through zstd.  *written_r = bytes written.  The caller fsyncs.  Errors
 * as store_blob_unpack. */
enum status store_blob_repack(int in, const struct blob_meta *meta, int out, unsigned compress, int level,
			      uint64_t *written_r, char **error_r);
/* For readers of an open blob: fd itself when the blob is plain; for a
 * compressed blob a sealed memfd holding its message bytes [0, size) (fd is
 * closed).  -1 with errno (fd closed) when it cannot: EIO for a corrupt
 * blob, ENOMEM/EMFILE from memfd_create. */
int store_blob_fd_plain(int fd);
/* The same, but a compressed blob is not decompressed: -1 with errno
 * EWOULDBLOCK (fd closed).  For event-loop threads (store_blob_open_nowait). */
int store_blob_fd_plain_nowait(int fd);
/* Full path of a blob's final location. */
void store_blob_path(const char *blob_dir, const struct msgid *id, char *out, size_t outlen);
/* Directory of a blob's final location.  Names it only: the writer creates
 * it with fs_mkdir_p (which fsyncs each new level into its parent) before
 * renaming into it. */
void store_blob_dir_of(const char *blob_dir, const struct msgid *id, char *out, size_t outlen);

/* ---- cached MIME structure (store_mime.c) ------------------------------
 * One row per blob in table mime: the IMAP ENVELOPE, BODYSTRUCTURE and
 * BODY texts and the encoded part map that src/mime computes, stored in
 * src/mime's packed form (mime_pack) and given back byte for byte (the
 * store does not interpret them).  The row is written with the blob row
 * at delivery or APPEND when the caller computed it, else later by
 * store_mime_put; it goes with the blob row (ON DELETE CASCADE).  A
 * missing row is never an error: the data can always be recomputed from
 * the blob. */
struct store_mime {
	char *envelope;           /* NUL-terminated, no NUL inside */
	char *bodystructure;
	char *body;
	uint8_t *parts;
	size_t parts_len;
};
/* The row of blob `id` into out (malloc'd copies: store_mime_free).
 * ST_NOT_FOUND when the blob has no row (or no longer exists) or its row
 * does not decode (logged).  A read: any thread's own handle. */
enum status store_mime_get(struct store *st, const struct msgid *id, struct store_mime *out);
/* Stores the row of blob `id` unless one that decodes exists (ST_OK
 * either way, and when the blob row is gone).  One autocommit write (two
 * when it replaces a damaged row): may block. */
enum status store_mime_put(struct store *st, const struct msgid *id, const struct store_mime *m,
			   char **error_r);
/* Frees what store_mime_get allocated (not the struct). */
void store_mime_free(struct store_mime *m);
/* Maintenance of the MIME rows' zstd dictionaries (store_mime_dict.c):
 * trains a dictionary on the index's own rows when there is none and the
 * mime table holds store.mime_dict_rows rows, or when it holds 10x the rows
 * the newest one was trained at (kept only if it saves 10% on held-out
 * rows), then re-packs up to 2,000 raw rows per call with the newest one
 * (one transaction).  Does nothing with store.mime_dict=no.  Blocks for up
 * to a few hundred ms of CPU (training): call it from a maintenance thread,
 * never from a path a user waits on.  A failed training is logged and is
 * not an error; index errors are (*error_r). */
enum status store_mime_dict_maintain(struct store *st, char **error_r);

/* ---- delivery (the committer thread) ---------------------------------- */
struct store_delivery {
	struct msgid id;
	int64_t received;
	uint64_t size;
	size_t n_accounts;
	const int64_t *account_ids;   /* deduplicated */
	const struct store_mime *mime; /* optional: stored with the blob row */
	/* out: */
	enum status status;           /* per delivery */
	uint32_t *uids;               /* out: INBOX uid per account (n_accounts), caller-owned */
	/* in: outbound (store_outbound.c): one queue row per remote recipient,
	 * inserted with the delivery; each row is one blob reference.  Last,
	 * so that positional initialisers of the fields above still hold. */
	const char *sender;           /* envelope sender; NULL or "" = null */
	size_t n_remotes;
	const char (*remotes)[320];   /* deduplicated */
};
/*
 * Inserts, in ONE transaction, a blob row (refcount = accounts + remotes),
 * one message row in each account's INBOX (next UID, new modseq, \Recent-free,
 * flags empty), updating quota usage, and one outbound row per remote
 * recipient (due at once).  A delivery may have no account when it has
 * remotes.  A delivery whose account would go
 * over quota gets ST_OVER_QUOTA_TEMP/PERM (per settings) and writes nothing;
 * the others still commit.  If the transaction fails, every delivery gets
 * the failure status and nothing is written.  Precondition: each blob is
 * already durable at its final path.
 * An account deleted since resolution is skipped (its uids[] entry is 0);
 * when none is left and it has no remote, the delivery gets ST_NOT_FOUND.  Returns ST_OK when
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

/* ---- IMAP access (store_imap.c) ----------------------------------------
 * Mailbox operations for the IMAP server, by account and mailbox id.
 *
 * Threads: every function that writes (create, delete, rename, subscribe,
 * set_flags, expunge, copy, append) runs ONE transaction that is durable at
 * return (store.fsync=yes) and may wait on disk and locks: call it from a
 * thread that may block, never from an event loop.  The read functions
 * (mailbox_get, mailbox_list, poll, messages) run short autocommit reads
 * and may use a network thread's own handle.
 *
 * Every change to a mailbox takes a new mod-sequence: highestmodseq + 1,
 * shared by all messages changed in the same call, and given to each of
 * them (RFC 7162).  Expunges bump highestmodseq too, so a session polling
 * (uidnext, highestmodseq) sees every change.
 *
 * Blob references: a copy adds one reference; an expunge or a mailbox
 * delete removes one, and a blob whose count reaches 0 loses its row in
 * the same transaction and its file right after the commit.  Quota usage
 * (used_bytes, used_messages) follows every message row added or removed.
 *
 * Names: "INBOX" in any case (and "INBOX/..." ) names the INBOX; other names
 * are case-sensitive, '/' separated, at most STORE_MAILBOX_NAME_MAX bytes
 * of printable ASCII (modified UTF-7 is the client's business) without
 * '*', '%', empty levels or a leading/trailing '/'.  Invalid: ST_INVALID.
 */
#define STORE_MAILBOX_NAME_MAX 255
#define STORE_MAILBOX_SEP '/'
struct store_mailbox_info {
	int64_t id;
	char name[STORE_MAILBOX_NAME_MAX + 1];
	char special_use[16];          /* RFC 6154 attribute or "" */
	uint32_t uidvalidity;
	uint32_t uidnext;
	uint64_t highestmodseq;
	bool subscribed;
	uint64_t messages;             /* counts: only when asked for */
	uint64_t unseen;
};
/* Normalises a client's mailbox name into out (INBOX case folding) and
 * validates it.  False for an invalid name. */
bool store_imap_mailbox_name(const char *in, char out[STORE_MAILBOX_NAME_MAX + 1]);
/* One mailbox by name; with `counts` also messages and unseen.
 * ST_NOT_FOUND, ST_INVALID (name). */
enum status store_imap_mailbox_get(struct store *st, int64_t account_id, const char *name, bool counts,
				   struct store_mailbox_info *out);
typedef void store_imap_mailbox_cb(void *ctx, const struct store_mailbox_info *mb);
/* Every mailbox of the account, INBOX first then by name (no counts). */
enum status store_imap_mailbox_list(struct store *st, int64_t account_id, store_imap_mailbox_cb *cb,
				    void *ctx);
/* The cheap change check: ST_NOT_FOUND once the mailbox is gone. */
enum status store_imap_mailbox_poll(struct store *st, int64_t mailbox_id, uint32_t *uidnext_r,
				    uint64_t *highestmodseq_r);
/* IMAP \Recent (RFC 3501 2.3.2): the first UID of the mailbox that no
 * session has claimed as recent yet (1 when none was: every message is
 * recent).  A read. */
enum status store_imap_recent_get(struct store *st, int64_t mailbox_id, uint32_t *uid_r);
/* Records that sessions have claimed every UID below `uid` (the value only
 * grows; a mailbox that is gone is left alone).  One autocommit write: call
 * from a thread that may block. */
enum status store_imap_recent_advance(struct store *st, int64_t mailbox_id, uint32_t uid, char **error_r);
/* CREATE: also creates missing superiors (RFC 3501 6.3.3).  ST_EXISTS. */
enum status store_imap_mailbox_create(struct store *st, int64_t account_id, const char *name,
				      char **error_r);
/* DELETE: not INBOX, not a mailbox with inferiors (ST_INVALID);
 * its messages are removed as by an expunge. */
enum status store_imap_mailbox_delete(struct store *st, int64_t account_id, const char *name,
				      char **error_r);
/* RENAME, with inferiors.  Renaming INBOX moves its messages into a new
 * mailbox `to` (new UIDs, new UIDVALIDITY) and leaves INBOX empty.
 * ST_NOT_FOUND (from), ST_EXISTS (to), ST_INVALID (to inside from). */
enum status store_imap_mailbox_rename(struct store *st, int64_t account_id, const char *from,
				      const char *to, char **error_r);
enum status store_imap_mailbox_subscribe(struct store *st, int64_t account_id, const char *name,
					 bool subscribed, char **error_r);

struct store_imap_msg {
	uint32_t uid;
	uint32_t flags;                /* MSG_FLAG_* */
	const char *keywords;          /* space-separated, NULL = none; valid during the callback only */
	uint64_t modseq;
	uint64_t size;
	int64_t received;              /* internal date, unix time */
	struct msgid id;               /* blob: store_blob_path; read [0, size) only */
};
typedef void store_imap_msg_cb(void *ctx, const struct store_imap_msg *m);
/* Messages of a mailbox with uid >= uid_min, in UID order. */
enum status store_imap_messages(struct store *st, int64_t mailbox_id, uint32_t uid_min,
				store_imap_msg_cb *cb, void *ctx);
/* What changed in a mailbox since a session last saw it at (uidnext,
 * modseq) holding `live` messages below uidnext, read in ONE read
 * transaction so that all of it is one state of the mailbox.  Incremental
 * (*full_r false): cb gets the messages with uid < uidnext changed after
 * `modseq`, then those with uid >= uidnext, each group in UID order (size,
 * received and id are not filled: 0); *expunged_r (ascending, caller frees,
 * may be NULL when none) the UIDs below uidnext expunged after `modseq`,
 * from the expunge log (a mailbox that never had a logged removal has had
 * none: every removal is logged by its own transaction), or - where the
 * log was pruned past `modseq` - found by counting (a count equal to
 * `live` means none went).  When expunges cannot
 * be told (*full_r true), cb gets every message of the mailbox, as
 * store_imap_messages with the same fields, and *expunged_r is NULL.
 * *uidnext_r and *modseq_r: the state read.  ST_NOT_FOUND: no such mailbox.
 * Costs O(changed rows) through the messages_modseq index, plus one
 * count over the mailbox's rows when the log was pruned past `modseq`.  A read:
 * the thread owning the handle. */
enum status store_imap_changes(struct store *st, int64_t mailbox_id, uint32_t uidnext, uint64_t modseq,
			       size_t live, store_imap_msg_cb *cb, void *ctx, uint32_t *uidnext_r,
			       uint64_t *modseq_r, uint32_t **expunged_r, size_t *n_expunged_r, bool *full_r);
/* Bounds the handle's SQLite page cache to `kib` KiB (store_open gives a
 * writer's 32 MiB).  For a handle a network thread only reads with: its
 * sessions touch pages of many mailboxes, and an unbounded share of that
 * would be held for every idle session.  Misses are read from the OS page
 * cache.  Fails only on a broken handle. */
enum status store_imap_cache_limit(struct store *st, unsigned kib, char **error_r);
/* One read transaction around a run of reads on a loop thread's handle
 * (a FETCH batch's MIME rows, SELECT's three reads): the statements until
 * store_read_end share one snapshot and take the WAL read lock once,
 * instead of once per statement (each take is an fcntl and a mutex that
 * every loop thread of the process shares).  Returns whether it opened
 * one: false when the handle is already inside a transaction (then the
 * reads simply join it) or when BEGIN failed (the reads then run as
 * before, each in its own).  Pass the result to store_read_end, on the
 * same thread, before control returns to the event loop: a handle never
 * holds a read transaction between loop turns (it would pin the WAL). */
bool store_read_begin(struct store *st);
void store_read_end(struct store *st, bool opened);

enum store_flag_op { STORE_FLAGS_SET, STORE_FLAGS_ADD, STORE_FLAGS_REMOVE };
/* Applies op/flags to the messages `uids` (n, ascending).  flags_out[i]
 * receives the message's flags afterwards, or UINT32_MAX if it is gone.
 * Keywords are kept, except by STORE_FLAGS_SET, which clears them.
 * *modseq_r: the mod-sequence given to changed messages (0: none changed). */
enum status store_imap_set_flags(struct store *st, int64_t mailbox_id, const uint32_t *uids, size_t n,
				 enum store_flag_op op, uint32_t flags, uint32_t *flags_out,
				 uint64_t *modseq_r, char **error_r);
/* Keywords (custom flags, RFC 3501 2.3.2): atoms of at most
 * STORE_KEYWORD_LEN_MAX bytes without atom-specials, compared ASCII
 * case-insensitively; a mailbox holds at most STORE_KEYWORDS_MAX distinct
 * ones (counted over its messages; COPY/MOVE carry keywords unchecked). */
#define STORE_KEYWORDS_MAX 128u
#define STORE_KEYWORD_LEN_MAX 64u
/* store_imap_set_flags with keywords and RFC 7162 conditions.  `keywords`
 * (space-separated, NULL = none) are set, added or removed with the system
 * flags by `op` (STORE_FLAGS_SET replaces both).  When `unchangedsince` is
 * not NULL, a message whose modseq is above *unchangedsince is left alone
 * and gets flags_out[i] = STORE_FLAGS_MODIFIED.  Optional outputs (n
 * entries, may be NULL): keywords_out[i], the message's keywords afterwards
 * (malloc'd, caller frees; NULL = none, gone or left alone); modseqs_out[i],
 * its modseq afterwards (0: gone).  ST_INVALID when the mailbox would hold
 * more than STORE_KEYWORDS_MAX keywords (nothing is written). */
#define STORE_FLAGS_MODIFIED (UINT32_MAX - 1)
enum status store_imap_set_flags_cond(struct store *st, int64_t mailbox_id, const uint32_t *uids, size_t n,
				      enum store_flag_op op, uint32_t flags, const char *keywords,
				      const uint64_t *unchangedsince, uint32_t *flags_out, char **keywords_out,
				      uint64_t *modseqs_out, uint64_t *modseq_r, char **error_r);
/* QRESYNC (RFC 7162 3.2.5): the UIDs expunged from the mailbox by changes
 * whose mod-sequence is above `since`, ascending, from the expunge log
 * (*uids_r: caller frees).  The log keeps, per mailbox, the newest
 * STORE_VANISHED_KEEP expunges; *complete_r is false when it does not
 * reach back to `since` (older entries pruned, or a mailbox whose log
 * started later): the caller then reports every UID it does not see.  A
 * read: any thread owning the handle. */
#define STORE_VANISHED_KEEP 10000
enum status store_imap_vanished(struct store *st, int64_t mailbox_id, uint64_t since, uint32_t **uids_r,
				size_t *n_r, bool *complete_r);
/* Removes the messages flagged \Deleted - of `uids` only when uids is not
 * NULL (UID EXPUNGE).  *expunged_r (caller frees) lists the removed UIDs in
 * ascending order. */
enum status store_imap_expunge(struct store *st, int64_t account_id, int64_t mailbox_id,
			       const uint32_t *uids, size_t n, uint32_t **expunged_r, size_t *n_expunged_r,
			       char **error_r);
/* COPY or MOVE (RFC 6851) of `uids` (ascending) to another mailbox of the
 * account.  dst_uids[i] receives the new UID, or 0 when the source message
 * is gone.  A copy counts against the quota (ST_OVER_QUOTA_*: nothing is
 * written); a move does not change usage.  Moving into the same mailbox
 * is ST_INVALID. */
enum status store_imap_copy(struct store *st, int64_t account_id, int64_t src_mailbox_id,
			    const uint32_t *uids, size_t n, int64_t dst_mailbox_id, bool move,
			    uint32_t *dst_uids, uint32_t *dst_uidvalidity_r, char **error_r);
/* APPEND: adds the blob `id` (already durable at its final path, with its
 * trailer) as a new message with `flags` and `keywords` (space-separated,
 * NULL = none); `mime` (optional) is stored as the blob's cached MIME row
 * in the same transaction.  ST_OVER_QUOTA_*, ST_NOT_FOUND (mailbox),
 * ST_INVALID (the mailbox's keyword limit). */
enum status store_imap_append(struct store *st, int64_t account_id, int64_t mailbox_id,
			      const struct msgid *id, uint64_t size, int64_t received, uint32_t flags,
			      const char *keywords, const struct store_mime *mime, uint32_t *uid_r,
			      uint32_t *uidvalidity_r, char **error_r);
/* MULTIAPPEND (RFC 3502): `n` messages (n >= 1, each blob already durable
 * as for store_imap_append) added in ONE transaction, all or none: the
 * quota is checked for their total, and any failure writes nothing.
 * uids_r[i] receives message i's UID (ascending).  Errors as
 * store_imap_append. */
struct store_imap_new {
	const struct msgid *id;
	uint64_t size;
	int64_t received;
	uint32_t flags;
	const char *keywords;          /* space-separated, NULL = none */
	const struct store_mime *mime; /* optional */
};
enum status store_imap_append_many(struct store *st, int64_t account_id, int64_t mailbox_id,
				   const struct store_imap_new *msgs, size_t n, uint32_t *uids_r,
				   uint32_t *uidvalidity_r, char **error_r);

/* ---- POP3 access (store_pop3.c) ----------------------------------------
 * The UPDATE state of POP3 (RFC 1939 section 6): the messages a session
 * marked with DELE are removed in ONE transaction, durable at return
 * (store.fsync=yes); any failure rolls everything back, so either all of
 * them are gone or none is.  Blob references and quota usage follow as for
 * an IMAP expunge, the mailbox takes a new mod-sequence so IMAP sessions
 * see the expunge, and blob files whose count reached 0 are unlinked after
 * COMMIT.  A UID already gone (expunged over IMAP meanwhile) is skipped.
 * Writes: call from a thread that may block, never from an event loop.
 */
/* Removes `uids` (n, any order) from the account's mailbox; *deleted_r
 * counts the messages actually removed.  ST_NOT_FOUND when the mailbox is
 * not the account's. */
enum status store_pop3_delete(struct store *st, int64_t account_id, int64_t mailbox_id, const uint32_t *uids,
			      size_t n, size_t *deleted_r, char **error_r);

/* ---- Verify, backup, rebuild (store_rebuild.c, store_backup.c) ----------
 * The index can always be rebuilt from the blob files (whose trailers name
 * their accounts and, for APPEND, their mailbox) plus the newest index
 * backup (which brings back accounts, passwords, aliases, mailboxes with
 * UIDVALIDITY/UIDNEXT, and every message's UID, flags and modseq as of the
 * backup).  docs/STORAGE.md, "Index loss", says exactly what can be lost.
 *
 * Threads and processes: verify and backup read the index through their
 * own SQLite connections and may run beside the daemon (the daemon's
 * backup thread calls store_backup_run).  Rebuild replaces the index file:
 * run it only while no process has the index open (the daemon stopped).
 */
/* One line of a report (no trailing newline). */
typedef void store_report_cb(void *ctx, const char *line);
struct store_verify_result {
	uint64_t messages, blobs, files, accounts; /* what was checked */
	uint64_t problems;                         /* 0 = index and files agree */
};
/* Checks the index against the blob files: index integrity (quick_check);
 * every blob row's file exists with a valid trailer naming the same id and
 * size; refcounts equal message rows plus outbound rows; no message without its blob or
 * mailbox; UIDs below each mailbox's uidnext; accounts' used_bytes and
 * used_messages equal their messages' sums; blob files without a row
 * (orphans), unexpected files and temp files older than an hour.  Each
 * problem is one report line.  Files younger than STORE_VERIFY_GRACE_S are
 * skipped (a running daemon writes them before it commits their rows).
 * ST_OK when the check ran (look at problems), else the reason it could
 * not (no index, I/O) with *error_r. */
#define STORE_VERIFY_GRACE_S 600
enum status store_verify(const struct settings *s, store_report_cb *cb, void *ctx,
			 struct store_verify_result *out, char **error_r);

/* Copies the live index with SQLite's online backup API (readers and the
 * writer keep going) into <store.backup_dir>/index-<UTC time>.db: written
 * as a temp file, PRAGMA integrity_check'ed, fsynced, renamed into place,
 * directory fsynced; only then are backups beyond store.backup_keep (the
 * oldest) deleted.  *path_r (if given, caller frees) names the backup.
 * Any thread; blocks on disk. */
enum status store_backup_run(const struct settings *s, char **path_r, char **error_r);
/* The daemon's backup thread: one backup every store.backup_interval (the
 * first once the newest backup is that old, or at once when there is
 * none).  Failures are logged and retried at the next interval.  NULL
 * when store.backup_interval is 0 (never an error).  stop joins it. */
struct store_backup_thread;
struct store_backup_thread *store_backup_start(const struct settings *s);
void store_backup_stop(struct store_backup_thread **t);

/*
 * The daemon's WAL checkpointer (store_checkpoint.c): one thread with its
 * own read-write handle that copies the index's write-ahead log into the
 * index (sqlite3_wal_checkpoint_v2, PASSIVE) when the log holds
 * store.checkpoint_pages pages, and every few seconds while it is not
 * fully copied.  While it runs, every store_open of the same index in this
 * process gets wal_autocheckpoint=0 and a WAL hook that wakes it, so no
 * committing thread (the delivery committer above all) runs a checkpoint
 * inside its COMMIT.  Durability is unchanged: a COMMIT is durable once
 * its WAL frames are fsynced (store.fsync=yes), whoever checkpoints later.
 * At most one per process; start it before the handles it should cover
 * are opened (handles opened earlier keep SQLite's autocheckpoint).
 *  ST_OK  *out is the running checkpointer, or NULL when
 *         store.checkpointer=no (never an error)
 *  other  its handle could not be opened (*error_r says why)
 * stop (main thread, after every thread that commits has stopped): wakes
 * and joins the thread, runs a final checkpoint (TRUNCATE when no reader
 * pins the log, else PASSIVE) and closes the handle; handles still open
 * then checkpoint as SQLite does by default (at store.checkpoint_pages).
 * NULL is a no-op.
 */
struct store_checkpointer;
enum status store_checkpoint_start(const struct settings *s, struct store_checkpointer **out, char **error_r);
void store_checkpoint_stop(struct store_checkpointer **c);

struct store_rebuild_result {
	char base[4096];             /* the backup (or index) rebuilt from, "" = none */
	uint64_t base_messages;      /* message rows kept from it */
	uint64_t dropped_messages;   /* its rows whose blob file is gone */
	uint64_t added_blobs;        /* blob files added from their trailers */
	uint64_t added_messages;
	uint64_t unplaced;           /* files naming no existing account: left on disk */
	uint64_t bad_files;          /* files without a valid trailer: left on disk */
};
/*
 * Builds a new index as <index>.rebuild from the newest backup that passes
 * quick_check (else from the current index, when it is healthy: accounts
 * re-imported into a fresh index), drops rows whose blob file is gone,
 * adds every blob file the base does not know to its accounts' INBOX (or
 * the trailer's mailbox) in (received, id) order with UIDs from each
 * mailbox's uidnext and its remote recipients back to the outbound queue,
 * recomputes refcounts and quota usage, checks it with
 * integrity_check, then moves the old index (and its -wal/-shm) aside to
 * <index>.broken-<time> and renames the new one into place, fsyncing the
 * directory.  ST_NOT_FOUND when there is neither a backup nor a usable
 * index (domains and accounts must be created first); ST_DB_BUSY when
 * another process has the index open (checked with an exclusive lock at
 * the start: the caller still makes sure none opens it meanwhile).
 * Progress and warnings go to the log.
 */
enum status store_rebuild(const struct settings *s, struct store_rebuild_result *out, char **error_r);

enum store_index_state {
	STORE_INDEX_OK,        /* opens, quick_check ok, known schema */
	STORE_INDEX_NEW,       /* missing or empty, and no blob files: a first start */
	STORE_INDEX_DAMAGED    /* missing, unreadable, failing quick_check or without schema, while blobs exist */
};
/* Classifies the index for the start-up decision; *reason_r (caller frees)
 * says why it is DAMAGED.  An index from a NEWER Strata is reported as OK
 * (store_open refuses it with a clear message; rebuilding would lose data). */
enum store_index_state store_index_check(const struct settings *s, char **reason_r);
/* The daemon's start-up step, before it opens the store: when the index
 * is DAMAGED, logs it loudly and runs store_rebuild.  False (*error_r)
 * when the rebuild fails: the daemon must not start on an empty index
 * while blobs exist. */
bool store_recover_index(const struct settings *s, char **error_r);


/* ---- Tiers (store_tier.c; docs/TIERING.md) ---------------------------------
 * A blob lives on exactly one tier; blobs.tier is its index in
 * settings->tiers, and its file is <tiers[tier].path>/<id 0..4>/<id 5..6>/<id>.
 * The mover (src/tier) changes blobs.tier in the same transaction that
 * marks its journal row (tier_moves) committed; see docs/STORAGE.md,
 * "Tiering", for the recovery rule.  Tables heat and tier_moves are created
 * by store_tier_init (idempotent).  Functions taking struct store follow
 * the handle's one-thread rule; the path and open helpers are thread-safe. */

/* Path of blob id on tier `tier`; a tier outside settings->tiers is a bug. */
void store_blob_path_for(const struct settings *s, unsigned tier, const struct msgid *id, char *out,
			 size_t outlen);
/* Opens the blob read-only (O_CLOEXEC|O_NOFOLLOW) on `tier`, the tier the
 * index named.  When that copy is gone (ENOENT: a move committed between the
 * index read and the open) every other tier is tried, and with several
 * tiers the whole scan runs twice (a move renames the new copy in before it
 * unlinks the old one, so one scan can miss both).  Returns the fd,
 * with *found_r (if non-NULL) the tier it was opened on; or -1 with errno.
 * A compressed blob is decompressed into an anonymous sealed memory file
 * (memfd) holding exactly the message bytes [0, size), without the trailer:
 * readers pread [0, size) of either kind the same way.  That costs the
 * message's size in memory while the descriptor is open; a corrupt
 * compressed blob fails with EIO. */
int store_blob_open(const struct settings *s, unsigned tier, const struct msgid *id, unsigned *found_r);
/* store_blob_open for event-loop threads: never decompresses (that takes
 * CPU time in proportion to the message): a blob on a compressed tier
 * gives -1 with errno EWOULDBLOCK, and the caller opens it with
 * store_blob_open on a store thread instead. */
int store_blob_open_nowait(const struct settings *s, unsigned tier, const struct msgid *id, unsigned *found_r);

/* The path of the copy that exists now, `tier` first, then the others;
 * false (out = the path on `tier`) when none does.  For administration and
 * logs: a move may unlink the copy before the caller opens it, and a copy
 * on a compressed tier holds a zstd frame, not the message.  Readers of
 * message bytes use store_blob_open. */
bool store_blob_find(const struct settings *s, unsigned tier, const struct msgid *id, char *out,
		     size_t outlen);
/* Removes the blob's file from every tier (deletion: the copy may sit on
 * any tier, or on two while a move is in flight).  Returns 0, or the errno
 * of the first failure other than ENOENT. */
int store_blob_unlink(const struct settings *s, const struct msgid *id);

/* Body-read events for the heat model.  Readers (IMAP FETCH of a body,
 * POP3 RETR/TOP, `strata mail cat`) call store_access_note: a relaxed atomic
 * load and, when a hook is installed (by the tier subsystem in the daemon),
 * one non-blocking call.  Thread-safe; never blocks, never fails. */
typedef void store_access_hook(const struct msgid *id);
void store_access_set_hook(store_access_hook *fn);
void store_access_note(const struct msgid *id);
/* Foreground latency for the tier mover's back-off: store_blob_open reports
 * how long the open and the first read of a blob took, in microseconds,
 * to the latency hook when one is installed.  Same rules as the access hook. */
typedef void store_latency_hook(uint64_t us);
void store_latency_set_hook(store_latency_hook *fn);

/* Creates the heat and tier_moves tables if missing. */
enum status store_tier_init(struct store *st, char **error_r);

/* One reference of a blob, for placement (store_tier_refs). */
struct store_tier_ref {
	int64_t blob_id;
	struct msgid id;
	unsigned tier;
	uint64_t size;
	int64_t received;
	const char *mailbox;        /* name */
	const char *special_use;    /* "\\Archive" etc. or "" */
	const char *account;        /* address */
	int64_t last_login;         /* unix time; 0 = never */
	uint32_t flags;             /* MSG_FLAG_* */
	double heat;                /* stored score (undecayed) */
	int64_t heat_updated;       /* unix time of the score; 0 = no heat row */
	uint32_t reads_days;        /* bit d = read on day (heat_updated/86400 - d) */
};
typedef bool store_tier_ref_cb(void *ctx, const struct store_tier_ref *r); /* false stops */
/* Every message reference, in the order of the messages table (mailbox,
 * UID): a blob in several mailboxes comes once for each, not necessarily
 * in a row (tier_cand_merge folds them).  Read in chunks of
 * STORE_TIER_REFS_CHUNK rows, each its own statement run, so that no read
 * transaction outlives a chunk: the daemon's pass runs at idle priority,
 * and a transaction held while it waits for the CPU would keep every WAL
 * checkpoint from passing it.  A reference added or removed between
 * chunks may be seen or missed, which placement, an estimate, allows.
 * Optional filters: account address, mailbox name (case-insensitive),
 * received before `older_than` (0 = none). */
#define STORE_TIER_REFS_CHUNK 4096
enum status store_tier_refs(struct store *st, const char *account, const char *mailbox,
			    int64_t older_than, store_tier_ref_cb *cb, void *ctx, char **error_r);

/* Whether the index has any blob at all: one index step, not a scan (the
 * start-up path uses it; store_tier_usage reads every blob row). */
enum status store_tier_any_blob(struct store *st, bool *any_r, char **error_r);
/* Sets *any_r when the heat table has at least one row (one page read). */
enum status store_tier_heat_any(struct store *st, bool *any_r, char **error_r);

/* Per-tier totals from the index; blobs whose tier is outside
 * [0, CONFIG_TIER_MAX) are counted in *stray_r (a damaged index). */
struct store_tier_usage { uint64_t bytes, messages; };
enum status store_tier_usage(struct store *st, struct store_tier_usage out[CONFIG_TIER_MAX],
			     uint64_t *stray_r, char **error_r);

/* Every blob row: id, msgid, tier, size (verify). */
typedef bool store_tier_blob_cb(void *ctx, int64_t blob_id, const struct msgid *id, unsigned tier,
				uint64_t size);
enum status store_tier_blobs(struct store *st, store_tier_blob_cb *cb, void *ctx, char **error_r);

/* Heat rows: read one (ST_NOT_FOUND when the blob does not exist; a blob
 * without a heat row reads as zeros), with the blob's tier in *tier_r (if
 * given); and write a batch in one transaction.  Rows whose blob is gone
 * are skipped. */
struct store_heat { int64_t blob_id; double score; int64_t updated; uint32_t reads_days; };
enum status store_tier_heat_get(struct store *st, const struct msgid *id, struct store_heat *out,
				unsigned *tier_r);
enum status store_tier_heat_put(struct store *st, const struct store_heat *rows, size_t n,
				char **error_r);

/* The move journal.  begin: inserts (blob, from, to) durably (own
 * statement, durable at return; ST_EXISTS if a move of the blob is pending).  commit: in one
 * transaction sets blobs.tier = to where it was `from` and marks the row
 * committed (ST_NOT_FOUND if the blob is gone or no longer on `from`).
 * end: deletes the row. */
enum status store_tier_move_begin(struct store *st, int64_t blob_id, const struct msgid *id,
				  unsigned from, unsigned to, char **error_r);
enum status store_tier_move_commit(struct store *st, int64_t blob_id, unsigned from, unsigned to,
				   char **error_r);
enum status store_tier_move_end(struct store *st, int64_t blob_id, char **error_r);
struct store_tier_move {
	int64_t blob_id;
	struct msgid id;
	bool blob_exists;           /* false: the blob row was deleted meanwhile */
	unsigned index_tier;        /* blobs.tier now (when blob_exists) */
	unsigned from, to;
	bool committed;
};
/* All journal rows; caller frees *out. */
enum status store_tier_moves(struct store *st, struct store_tier_move **out, size_t *n_r,
			     char **error_r);
/* Sets blobs.tier directly (recovery only, when the file proves the tier). */
enum status store_tier_set(struct store *st, int64_t blob_id, unsigned tier, char **error_r);
/* The same for many blobs (a tier rebuild's corrections), in transactions
 * of up to 50,000 rows: one fsync per chunk instead of one per blob.  A
 * failure leaves the chunks before it committed (each row is a complete
 * correction on its own). */
struct store_tier_placement { int64_t blob_id; unsigned tier; };
enum status store_tier_set_many(struct store *st, const struct store_tier_placement *v, size_t n,
				char **error_r);

/* Tier state health (the start-up decision to run tier_rebuild): ST_OK
 * when tables heat and tier_moves exist and pass PRAGMA quick_check;
 * ST_NOT_FOUND when one is missing, ST_INVALID when one is damaged or
 * cannot be checked; *reason_r (caller frees) says which. */
enum status store_tier_check(struct store *st, char **reason_r);
/* Drops heat (and with `journal` tier_moves) and creates them empty. */
enum status store_tier_reset(struct store *st, bool journal, char **error_r);
/* Every heat row of an existing blob, with the blob's msgid (checkpoints). */
typedef bool store_tier_heat_cb(void *ctx, const struct msgid *id, const struct store_heat *h);
enum status store_tier_heat_each(struct store *st, store_tier_heat_cb *cb, void *ctx, char **error_r);
/* Replaces the whole heat table in ONE transaction: deletes every row,
 * then inserts each row `next` yields (1 = a row, 0 = no more, -1 = abort:
 * everything is rolled back), keyed by msgid; rows whose blob does not
 * exist are skipped.  *applied_r = rows written. */
typedef int store_tier_heat_next(void *ctx, struct msgid *id, struct store_heat *h);
enum status store_tier_heat_replace(struct store *st, store_tier_heat_next *next, void *ctx, size_t *applied_r,
				    char **error_r);

/* ---- Outbound queue (store_outbound.c; docs/RELAY.md) ----------------------
 * Table outbound: one row per remote recipient of a submitted message,
 * inserted by store_commit_deliveries with the blob row, deleted when the
 * relay delivered or bounced it.  Each row is one reference of its blob
 * (blobs.refcount); deleting the last reference removes the blob row and,
 * after COMMIT, its file from every tier.  Every write here is its own
 * durable transaction; the functions follow the handle's one-thread rule. */
#define STORE_OUTBOUND_ERROR_MAX 511  /* last_error is cut to this many bytes */
struct store_outbound {
	int64_t id;                  /* row id: the CLI's queue entry id */
	int64_t blob_id;
	struct msgid msgid;          /* the message (its queue id as text) */
	unsigned tier;               /* the blob's tier (store_blob_open) */
	uint64_t size;
	int64_t received;            /* unix time the message was stored */
	char sender[320];            /* "" = null reverse-path */
	char recipient[320];
	int64_t created, next_attempt;  /* unix time */
	uint32_t attempts;
	char last_error[STORE_OUTBOUND_ERROR_MAX + 1];  /* "" = none yet */
};
/* Inside the caller's transaction (store_deliver.c): one row for blob_id,
 * due at `now`; returns the SQLite code (SQLITE_DONE on success). */
int store_outbound_insert(struct store *st, int64_t blob_id, const char *sender, const char *recipient,
			  int64_t now);
/* Up to `max` rows with next_attempt <= now, soonest first (all rows when
 * now < 0), into a malloc'd array (*rows_r, caller frees; NULL when none).
 * With `after` (a row of an earlier page), only rows ordered after it:
 * (next_attempt, id) greater than its. */
enum status store_outbound_due(struct store *st, int64_t now, const struct store_outbound *after, size_t max,
			       struct store_outbound **rows_r, size_t *n_r, char **error_r);
/* One row by id; ST_NOT_FOUND when it is gone. */
enum status store_outbound_get(struct store *st, int64_t id, struct store_outbound *out, char **error_r);
/* Rows of one message (the CLI's "queue show <queue id>"); as _due. */
enum status store_outbound_by_msgid(struct store *st, const struct msgid *id, struct store_outbound **rows_r,
				    size_t *n_r, char **error_r);
/* Records a failed attempt of rows ids[0..n): attempts + 1, last_error
 * (cut to STORE_OUTBOUND_ERROR_MAX), next_attempt.  One transaction; rows
 * already gone are skipped. */
enum status store_outbound_defer(struct store *st, const int64_t *ids, size_t n, int64_t next_attempt,
				 const char *error, char **error_r);
/* Removes rows ids[0..n) (delivered, bounced or deleted by the operator)
 * and their blob references in one transaction, then unlinks blobs whose
 * count reached 0.  *removed_r (if given) counts rows actually removed. */
enum status store_outbound_remove(struct store *st, const int64_t *ids, size_t n, size_t *removed_r,
				  char **error_r);
/* Makes every row due at `now` (flush); *n_r = rows changed. */
enum status store_outbound_flush(struct store *st, int64_t now, size_t *n_r, char **error_r);
/* Rows in the queue. */
enum status store_outbound_count(struct store *st, uint64_t *n_r, char **error_r);

#endif
