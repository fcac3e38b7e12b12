/*
 * store_internal.h - what the store's own files share; not for other subsystems.
 *
 * Owns: the definitions of struct store and struct store_reader, the ids of
 * every prepared statement (all prepared once, at open, and reused for the
 * life of the handle), the SQLite error mapping, address validation, and the
 * alias expansion engine that both the reader (RCPT) and the writer (alias
 * add-time checks) run.
 *
 * Concurrency: a handle and its statements belong to one thread at a time
 * (SQLITE_OPEN_NOMUTEX).  Every statement is reset right after its last
 * step, so no handle ever holds a read transaction open between calls (an
 * open read transaction would stop WAL checkpoints from completing).
 */
#ifndef STRATA_STORE_INTERNAL_H
#define STRATA_STORE_INTERNAL_H

#include <sqlite3.h>
#include <sys/types.h>

#include "store.h"

#define STORE_LOCAL_MAX 64
#define STORE_DOMAIN_MAX 253
#define STORE_ADDRESS_MAX (STORE_LOCAL_MAX + 1 + STORE_DOMAIN_MAX) /* 318 < 320 */
#define STORE_ALIAS_MAX_DEPTH 8
#define STORE_PWHASH_MAX 255
#define STORE_SCHEMA_VERSION 9
#define STORE_BUSY_TIMEOUT_MS 10000    /* every handle's busy timeout (store_db.c) */

/* Writer statements (struct store).  SQL text is in store_db.c. */
enum store_q {
	Q_BEGIN, Q_COMMIT, Q_ROLLBACK, Q_SAVEPOINT, Q_RELEASE, Q_ROLLBACK_TO,
	/* domains */
	Q_DOMAIN_ID, Q_DOMAIN_INSERT, Q_DOMAIN_DELETE, Q_DOMAIN_LIST, Q_DOMAIN_ACCOUNTS,
	Q_DOMAIN_ALIASES,
	/* accounts */
	Q_ACCOUNT_ID, Q_ACCOUNT_INSERT, Q_ACCOUNT_GET, Q_ACCOUNT_LIST_ALL, Q_ACCOUNT_LIST_DOMAIN,
	Q_ACCOUNT_SET_PW, Q_ACCOUNT_SET_QUOTA, Q_ACCOUNT_DELETE, Q_ACCOUNT_BLOB_REFS,
	Q_ACCOUNT_DEL_MESSAGES, Q_ACCOUNT_DEL_MAILBOXES, Q_BLOB_DECREF, Q_BLOB_DELETE,
	/* aliases and resolution */
	Q_LOOKUP_ACCOUNT, Q_LOOKUP_ALIAS, Q_ALIAS_INSERT, Q_ALIAS_DELETE, Q_ALIAS_LIST,
	Q_ALIAS_REFERRERS,
	/* mailboxes and messages */
	Q_UIDV_RESERVE, Q_MAILBOX_INSERT, Q_MAILBOX_LIST, Q_MAILBOX_ID, Q_MESSAGE_LIST,
	Q_MESSAGE_BLOB,
	/* delivery (hot path) */
	Q_DELIVER_QUOTA, Q_DELIVER_BLOB, Q_DELIVER_INBOX, Q_DELIVER_MESSAGE, Q_DELIVER_USAGE,
	Q_STATS,
	/* cached MIME rows (store_mime.c) */
	Q_MIME_GET, Q_MIME_PUT, Q_MIME_INSERT, Q_MIME_FIX,
	Q__COUNT
};

/* Reader statements (struct store_reader). */
enum store_rq { RQ_BEGIN, RQ_END, RQ_DOMAIN, RQ_ACCOUNT, RQ_ALIAS, RQ__COUNT };

#define STORE_CHANGED_MAX 32           /* mailbox ids one commit reports */
#define STORE_STMT_CACHE 128           /* statements store_db_prepare keeps per handle */

/* A statement of store_db_prepare kept for the next call with the same SQL. */
struct store_stmt_slot {
	char *sql;
	uint32_t hash;
	sqlite3_stmt *q;
	bool in_use;                  /* handed out, not yet released */
};

struct store {
	sqlite3 *db;
	const struct settings *s;     /* kept until exit by config (see config.h) */
	sqlite3_stmt *q[Q__COUNT];
	/* Mailboxes updated by the open transaction (store_set_change_listener). */
	int64_t changed[STORE_CHANGED_MAX];
	size_t n_changed;
	bool changed_all;
	struct store_stmt_slot cache[STORE_STMT_CACHE];
	size_t n_cache;
	/* MIME row compression state, made on first use (store_mime_dict.c). */
	struct store_mime_dict *mime_dict;
};

struct store_reader {
	sqlite3 *db;
	char *delimiters;             /* copy of settings->recipient_delimiter */
	sqlite3_stmt *q[RQ__COUNT];
};

/* ---- store_imap.c ---------------------------------------------------------- */
/* Logs `uids` (n) as expunged from the mailbox at `modseq` (the expunge's
 * new mod-sequence) for QRESYNC, inside the caller's transaction; see
 * store_imap_vanished.  Every path that removes messages from a mailbox
 * that goes on existing calls it. */
enum status store_vanished_log(struct store *st, int64_t mailbox_id, uint64_t modseq, const uint32_t *uids,
			       size_t n, char **error_r);

/* ---- store_db.c ---------------------------------------------------------- */
/* Maps an SQLite result code (primary or extended) to a status. */
enum status store_db_status(int rc);
/* Sets *error_r (if error_r) to "<what>: <sqlite message>" and returns the
 * mapped status.  Reads the message from the handle: call right after the
 * failing step, before any reset. */
enum status store_db_fail(sqlite3 *db, int rc, const char *what, char **error_r);
/* Steps a statement that returns no rows we need, then resets it.  Returns
 * SQLITE_DONE (or SQLITE_ROW, for RETURNING statements whose row is ignored)
 * or the error code. */
int store_db_run(sqlite3_stmt *q);
/* A statement for `sql`, which the caller gives back with store_db_release
 * (never sqlite3_finalize).  The handle keeps up to STORE_STMT_CACHE
 * statements by their SQL text, so a repeated call costs a lookup and
 * not a compile; a statement already handed out (nested use of the same
 * SQL) gets a fresh one.  On failure *q is NULL and *error_r names the
 * SQLite error. */
enum status store_db_prepare(struct store *st, const char *sql, sqlite3_stmt **q, char **error_r);
/* Gives back a statement of store_db_prepare: reset and unbound for the
 * next caller when cached, finalized otherwise.  NULL is a no-op. */
void store_db_release(struct store *st, sqlite3_stmt *q);
/* Steps q once (a write, or a read whose row is not wanted), then resets it
 * and clears its bindings; `what` names it in the error. */
enum status store_db_step_done(struct store *st, sqlite3_stmt *q, const char *what, char **error_r);
/* Resets a statement and clears its bindings. */
void store_db_reset(sqlite3_stmt *q);
/* BEGIN IMMEDIATE / COMMIT / ROLLBACK on the writer.  rollback is a no-op
 * outside a transaction and never fails visibly (it logs). */
enum status store_db_begin(struct store *st, char **error_r);
enum status store_db_commit(struct store *st, char **error_r);
void store_db_rollback(struct store *st);
/* Binds a uint64 that must fit SQLite's signed 64-bit integer. */
int store_db_bind_u64(sqlite3_stmt *q, int idx, uint64_t v);
uint64_t store_db_column_u64(sqlite3_stmt *q, int col);

/* ---- store_checkpoint.c -------------------------------------------------- */
/* Called by store_open on every new read-write handle: while a
 * checkpointer runs for the same index, turns off the handle's automatic
 * checkpoints and installs the WAL hook that wakes the checkpointer; with
 * none running, sets SQLite's autocheckpoint to store.checkpoint_pages. */
void store_checkpoint_attach(struct store *st);
/* Frames of a WAL of `pages` frames that no checkpoint has copied, given
 * the frames the last checkpoint of this log copied and the log's length at
 * the previous commit (a shorter log now was rewound: all of it is new). */
int64_t store_checkpoint_uncopied(int64_t pages, int64_t copied, int64_t last_pages);
/* store.checkpoint_pages = 0: the threshold for an index.db of that size. */
uint64_t store_checkpoint_auto_pages(uint64_t index_bytes);

/* ---- store_addr.c -------------------------------------------------------- */
/* Each validates `in`, writes its lower-cased form to out, and returns true;
 * or returns false with *error_r (if error_r) naming the problem. */
bool store_addr_domain(const char *in, char out[STORE_DOMAIN_MAX + 1], char **error_r);
/* local@domain, local a dot-atom of RFC 5322 atext, at most 64 bytes. */
bool store_addr_address(const char *in, char out[STORE_ADDRESS_MAX + 1], char **error_r);
/* An alias source: local@domain, or "@domain" for the catch-all. */
bool store_addr_alias_source(const char *in, char out[STORE_ADDRESS_MAX + 1], char **error_r);
/* The domain part (after the last '@') of a normalised address. */
const char *store_addr_domain_part(const char *address);

/* ---- store_account.c ----------------------------------------------------- */
/* True when one more message of `size` bytes would exceed either quota. */
bool store_account_over_quota(uint64_t quota_bytes, uint64_t quota_messages, uint64_t used_bytes,
			      uint64_t used_messages, uint64_t size);
/* The id of a domain (ST_NOT_FOUND when not local). */
enum status store_account_domain_id(struct store *st, const char *domain, int64_t *id_r,
				    char **error_r);
/* The id of an account by normalised address (ST_NOT_FOUND). */
enum status store_account_id(struct store *st, const char *address, int64_t *id_r, char **error_r);

/* ---- store_mime.c -------------------------------------------------------- */
/* Inserts the MIME row of a blob inside the caller's transaction
 * (Q_MIME_INSERT); returns the SQLite code (SQLITE_DONE on success). */
int store_mime_insert(struct store *st, int64_t blob_id, const struct store_mime *m);

/* ---- store_mime_dict.c --------------------------------------------------- */
/* First byte of a dictionary-compressed MIME row (a packed row starts with
 * 0x10..0x13): then a LEB128 dictionary id, then a magicless zstd frame. */
#define STORE_MIME_DICT_MARK 0xD1
/* Largest raw packed row that is compressed, and so the largest content
 * size a compressed row may claim. */
#define STORE_MIME_ROW_MAX (1u << 20)
/* The row to store for the raw packed row `raw`: *row_r and *len_r point into
 * `scratch` (a compressed row) when store.mime_dict is on, a dictionary
 * exists and the compressed row is smaller, else to raw itself. */
void store_mime_dict_wrap(struct store *st, const uint8_t *raw, size_t len, struct buf *scratch,
			  const uint8_t **row_r, size_t *len_r);
/* Decodes a compressed row (first byte STORE_MIME_DICT_MARK) into out (raw
 * packed form).  False, out undefined, on an unknown dictionary, a bad
 * frame, a content size above STORE_MIME_ROW_MAX or not matching. */
bool store_mime_dict_unwrap(struct store *st, const uint8_t *row, size_t len, struct buf *out);
/* Frees the handle's compression state (store_close). */
void store_mime_dict_close(struct store *st);
/* The same row format with the dictionary given by its bytes and id, a
 * pure function of the arguments (the fuzz target, tests, measurements):
 * encode appends the compressed row of `raw` to out (false when zstd
 * fails or len is 0 or above STORE_MIME_ROW_MAX); decode is
 * store_mime_dict_unwrap for rows naming dict_id. */
bool store_mime_dict_encode(const void *dict, size_t dict_len, int64_t dict_id, const uint8_t *raw, size_t len,
			    struct buf *out);
bool store_mime_dict_decode(const void *dict, size_t dict_len, int64_t dict_id, const uint8_t *row, size_t len,
			    struct buf *out);

/* ---- store_mailbox.c ----------------------------------------------------- */
/* Creates INBOX, Sent, Drafts, Trash, Junk, Archive for a new account, each
 * with a fresh UIDVALIDITY.  Runs inside the caller's transaction. */
enum status store_mailbox_create_defaults(struct store *st, int64_t account_id, char **error_r);

/* ---- store_resolve.c ----------------------------------------------------- */
/*
 * Expands the normalised `address` exactly (no +tag stripping, no
 * catch-all) through accounts and aliases, with the two lookup statements
 * given: the reader's or the writer's.  q_account returns id, quota_bytes,
 * quota_messages, used_bytes, used_messages; q_alias returns targets.
 * Appends deduplicated account ids to res (which the caller zeroed) and
 * sets res->over_quota for `size`.  Targets naming nothing (an account or
 * alias deleted since) are skipped.
 *  ST_OK        at least one account found
 *  ST_NOT_FOUND nothing matched, or every target was dangling
 *  ST_INVALID   alias loop, nesting deeper than 8 levels, more than
 *               STORE_MAX_EXPANSION accounts, or too much work
 *  other        index error
 * *error_r (if error_r) describes every failure but ST_NOT_FOUND.
 */
enum status store_resolve_expand(sqlite3_stmt *q_account, sqlite3_stmt *q_alias, const char *address,
				 uint64_t size, struct rcpt_resolution *res, char **error_r);

/* ---- store_backup.c (shared with store_rebuild.c) ---------------------- */
/* PRAGMA quick_check (full: integrity_check) answered "ok"; else false with
 * *error_r (if error_r) quoting the first problems. */
bool store_db_check(sqlite3 *db, bool full, char **error_r);
/* The backups in `dir` as full paths, oldest first (caller frees with
 * store_backup_list_free).  0 when there are none or dir is missing. */
size_t store_backup_list(const char *dir, char ***paths_r);
void store_backup_list_free(char **paths, size_t n);
/* Copies database src to the new file dst (created with `mode`, must not
 * exist) with the online backup API, switches it to rollback-journal mode
 * and integrity_checks it.  Not fsynced. */
bool store_db_copy(const char *src_path, const char *dst_path, mode_t mode, char **error_r);
/* Unlinks a database file and its -journal, -wal, -shm. */
void store_db_unlink(const char *path);
/* fsync of a file by name. */
bool store_fsync_path(const char *path, char **error_r);

/* ---- blob references (store_blob.c) ------------------------------------ */

/* Blob ids whose files go once the transaction commits. */
struct store_unlink_list {
	struct msgid *ids;
	size_t n, cap;
};
/* Inside a transaction: one reference less on the blob; at 0 its row goes
 * and its id is added to ul.  The file stays until the COMMIT succeeded. */
enum status store_blob_decref(struct store *st, int64_t blob_id, struct store_unlink_list *ul,
			      char **error_r);
/* After COMMIT: removes the listed blobs' files from every tier (failures
 * are logged: an orphan file is found by verify), and empties ul. */
void store_unlink_after_commit(struct store *st, struct store_unlink_list *ul);

#endif
