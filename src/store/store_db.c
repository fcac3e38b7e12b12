/*
 * store_db.c - the index handles: open, schema migrations, prepared
 * statements, SQLite error mapping, transactions, statistics.
 *
 * Owns: struct store (the read-write handle) and struct store_reader (the
 * read-only handle of one network thread), the schema and its migrations.
 *
 * The index is ONE SQLite file shared by every account, in WAL mode, so that
 * one transaction commits a batch of deliveries to many accounts with one
 * WAL fsync (group commit).  Per-account databases would need one fsync per
 * account per batch.
 *
 * Writer pragmas: journal_mode=WAL; synchronous=FULL when store.fsync=yes
 * (every COMMIT fsyncs the WAL: ACID), OFF when store.fsync=no (the WAL is
 * never fsynced: preserves ACI, gives up D - a power loss may lose recently
 * committed deliveries that were already answered 250); busy_timeout=10000;
 * foreign_keys=ON; a 32 MiB page cache.  WAL checkpoints: in the daemon,
 * by the checkpointer thread (store_checkpoint.c: the handle gets
 * wal_autocheckpoint=0 and a WAL hook that wakes it); elsewhere SQLite's
 * automatic checkpoint at store.checkpoint_pages.
 * Readers: SQLITE_OPEN_READONLY, query_only, busy_timeout, 8 MiB cache.
 *
 * Schema versions: PRAGMA user_version is the number of migrations applied.
 * store_open(create=true) applies the missing ones in one transaction;
 * create=false and the reader refuse an index whose version differs from
 * this build's (older: needs `create`; newer: written by a newer Strata).
 *
 * Concurrency: each handle is used by one thread at a time (NOMUTEX: SQLite
 * takes no mutex per call).  Several processes may open the same index: the
 * daemon and the CLI; SQLite's WAL locks serialise their write transactions
 * (BEGIN IMMEDIATE, waiting up to busy_timeout).  Every statement is reset
 * after use, so no handle keeps a read transaction open between calls.
 */
#include "store_internal.h"

#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define BUSY_TIMEOUT_MS STORE_BUSY_TIMEOUT_MS
#define WRITER_CACHE_KIB 32768
#define READER_CACHE_KIB 8192
/* Room a blob path needs past the blob directory: "/XXXXX/XX/" + 26 + NUL. */
#define BLOB_PATH_EXTRA 40

/* ---- schema ------------------------------------------------------------ */

/*
 * migrations[i] brings the schema from version i to i+1.  Never edit a
 * released entry: add a new one.  Each runs inside the migration
 * transaction, so a crash leaves the previous version intact.
 */
static const char *const migrations[] = {
	/* v1: the initial schema.  Columns are documented in docs/STORAGE.md. */
	"CREATE TABLE meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
	"CREATE TABLE domains(id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL);"
	"CREATE TABLE accounts("
	"  id INTEGER PRIMARY KEY,"
	"  domain_id INTEGER NOT NULL REFERENCES domains(id),"
	"  address TEXT UNIQUE NOT NULL,"
	"  pwhash TEXT NOT NULL DEFAULT '',"
	"  quota_bytes INTEGER NOT NULL DEFAULT 0,"
	"  quota_messages INTEGER NOT NULL DEFAULT 0,"
	"  used_bytes INTEGER NOT NULL DEFAULT 0,"
	"  used_messages INTEGER NOT NULL DEFAULT 0,"
	"  created INTEGER NOT NULL,"
	"  last_login INTEGER NOT NULL DEFAULT 0);"
	"CREATE INDEX accounts_domain ON accounts(domain_id);"
	"CREATE TABLE aliases(source TEXT PRIMARY KEY, targets TEXT NOT NULL) WITHOUT ROWID;"
	"CREATE TABLE mailboxes("
	"  id INTEGER PRIMARY KEY,"
	"  account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,"
	"  name TEXT NOT NULL,"
	"  special_use TEXT,"
	"  uidvalidity INTEGER NOT NULL,"
	"  uidnext INTEGER NOT NULL DEFAULT 1,"
	"  highestmodseq INTEGER NOT NULL DEFAULT 1,"
	"  subscribed INTEGER NOT NULL DEFAULT 1,"
	"  UNIQUE(account_id, name));"
	"CREATE TABLE blobs("
	"  id INTEGER PRIMARY KEY,"
	"  msgid BLOB UNIQUE NOT NULL CHECK(length(msgid) = 16),"
	"  tier INTEGER NOT NULL DEFAULT 0,"
	"  size INTEGER NOT NULL,"
	"  received INTEGER NOT NULL,"
	"  refcount INTEGER NOT NULL);"
	"CREATE TABLE messages("
	"  mailbox_id INTEGER NOT NULL,"
	"  uid INTEGER NOT NULL,"
	"  blob_id INTEGER NOT NULL,"
	"  flags INTEGER NOT NULL DEFAULT 0,"
	"  keywords TEXT,"
	"  modseq INTEGER NOT NULL,"
	"  PRIMARY KEY(mailbox_id, uid)) WITHOUT ROWID;"
	"INSERT INTO meta(key, value) VALUES('next_uidvalidity', CAST(strftime('%s', 'now') AS INTEGER));"
	"INSERT INTO meta(key, value) VALUES('created', CAST(strftime('%s', 'now') AS INTEGER));",
	/* v2: the cached MIME structure of each blob (store_mime.c). */
	"CREATE TABLE mime("
	"  blob_id INTEGER PRIMARY KEY REFERENCES blobs(id) ON DELETE CASCADE,"
	"  envelope TEXT NOT NULL,"
	"  bodystructure TEXT NOT NULL,"
	"  body TEXT NOT NULL,"
	"  parts BLOB NOT NULL);",
	/* v3: the expunge log for IMAP QRESYNC (store_imap.c, "VANISHED"): the
	 * UIDs expunged from a mailbox with the modseq of their expunge, and per
	 * mailbox the modseq after which the log is complete.  A mailbox
	 * without a floor row has no complete log yet (existing mailboxes, or
	 * after a rebuild): clients then get the full VANISHED set. */
	"CREATE TABLE vanished("
	"  mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,"
	"  modseq INTEGER NOT NULL,"
	"  uid INTEGER NOT NULL,"
	"  PRIMARY KEY(mailbox_id, modseq, uid)) WITHOUT ROWID;"
	"CREATE TABLE vanished_floor("
	"  mailbox_id INTEGER PRIMARY KEY REFERENCES mailboxes(id) ON DELETE CASCADE,"
	"  modseq INTEGER NOT NULL);",
	/* v4: IMAP \Recent (RFC 3501 2.3.2): per mailbox the first UID no IMAP
	 * session has claimed as recent yet (store_imap_recent_*).  A mailbox
	 * without a row has every message recent; existing mailboxes start
	 * with none. */
	"CREATE TABLE IF NOT EXISTS mailbox_recent("
	"  mailbox_id INTEGER PRIMARY KEY REFERENCES mailboxes(id) ON DELETE CASCADE,"
	"  uid INTEGER NOT NULL);"
	"INSERT OR IGNORE INTO mailbox_recent(mailbox_id, uid) SELECT id, uidnext FROM mailboxes;",
	/* v5: the outbound queue (store_outbound.c, docs/RELAY.md): one row per
	 * remote recipient of a submitted message not yet delivered.  Each row
	 * holds one reference of its blob (blobs.refcount counts message rows
	 * plus outbound rows).  Existing indexes start with an empty queue. */
	"CREATE TABLE IF NOT EXISTS outbound("
	"  id INTEGER PRIMARY KEY,"
	"  blob_id INTEGER NOT NULL REFERENCES blobs(id) ON DELETE CASCADE,"
	"  sender TEXT NOT NULL,"
	"  recipient TEXT NOT NULL,"
	"  created INTEGER NOT NULL,"
	"  next_attempt INTEGER NOT NULL,"
	"  attempts INTEGER NOT NULL DEFAULT 0,"
	"  last_error TEXT);"
	"CREATE INDEX IF NOT EXISTS outbound_next ON outbound(next_attempt);"
	"CREATE INDEX IF NOT EXISTS outbound_blob ON outbound(blob_id);",
	/* v6: IMAP sessions learn flag changes since their last known modseq
	 * (store_imap_changes) without walking the whole mailbox.  The entries
	 * hold (mailbox_id, modseq, uid): about 13 bytes a message. */
	"CREATE INDEX IF NOT EXISTS messages_modseq ON messages(mailbox_id, modseq);",
	/* v7: MIME rows in src/mime's packed form (store_mime.c, docs/STORAGE.md
	 * "MIME cache"): one BLOB instead of three texts and the part map.  The
	 * text rows are dropped, not converted (that would hold start-up for
	 * the whole table): IMAP FETCH recomputes a message's row from its blob
	 * the first time it needs it, as for imported mail.  The drop frees the
	 * pages without zeroing them (secure_delete=FAST: 0.2 s for a million
	 * rows instead of 18 s of writes); they hold copies of live messages'
	 * headers and are overwritten as the index reuses them. */
	"PRAGMA secure_delete = FAST;"
	"DROP TABLE IF EXISTS mime;"
	"PRAGMA secure_delete = ON;"
	"CREATE TABLE mime("
	"  blob_id INTEGER PRIMARY KEY REFERENCES blobs(id) ON DELETE CASCADE,"
	"  packed BLOB NOT NULL);",
	/* v8: zstd dictionaries trained on this index's own MIME rows
	 * (store_mime_dict.c, docs/STORAGE.md "MIME cache").  A compressed mime
	 * row names its dictionary by id, so rows are never deleted or changed.
	 * Existing rows stay raw until the maintenance re-pack reaches them. */
	"CREATE TABLE IF NOT EXISTS mime_dicts("
	"  id INTEGER PRIMARY KEY,"
	"  dict BLOB NOT NULL,"
	"  rows INTEGER NOT NULL,"
	"  created INTEGER NOT NULL);",
	/* v9: the raw (uncompressed) MIME rows, indexed apart, so that the
	 * re-pack walk (store_mime_dict.c) visits those rows only: without it
	 * every daemon start walked the whole mime table again, a million rows
	 * through the tier thread's page cache, to find none.  Rows that are
	 * compressed (first byte 0xD1, STORE_MIME_DICT_MARK) have no entry. */
	"CREATE INDEX IF NOT EXISTS mime_raw ON mime(blob_id) WHERE substr(packed, 1, 1) <> x'D1';",
};

_Static_assert(ARRAY_LEN(migrations) == STORE_SCHEMA_VERSION,
	       "STORE_SCHEMA_VERSION must equal the number of migrations");

/* ---- statements ---------------------------------------------------------- */

#define ACCOUNT_COLS "id, address, pwhash, quota_bytes, quota_messages, used_bytes, used_messages, " \
		     "created, last_login"
#define LOOKUP_ACCOUNT_SQL \
	"SELECT id, quota_bytes, quota_messages, used_bytes, used_messages, address FROM accounts WHERE address = ?1"
#define LOOKUP_ALIAS_SQL "SELECT targets FROM aliases WHERE source = ?1"

static const char *const writer_sql[Q__COUNT] = {
	[Q_BEGIN] = "BEGIN IMMEDIATE",
	[Q_COMMIT] = "COMMIT",
	[Q_ROLLBACK] = "ROLLBACK",
	[Q_SAVEPOINT] = "SAVEPOINT delivery",
	[Q_RELEASE] = "RELEASE delivery",
	[Q_ROLLBACK_TO] = "ROLLBACK TO delivery",
	[Q_DOMAIN_ID] = "SELECT id FROM domains WHERE name = ?1",
	[Q_DOMAIN_INSERT] = "INSERT INTO domains(name) VALUES(?1)",
	[Q_DOMAIN_DELETE] = "DELETE FROM domains WHERE id = ?1",
	[Q_DOMAIN_LIST] = "SELECT name FROM domains ORDER BY name",
	[Q_DOMAIN_ACCOUNTS] = "SELECT count(*) FROM accounts WHERE domain_id = ?1",
	/* ?1 is "@domain": matches "x@domain" and the catch-all "@domain". */
	[Q_DOMAIN_ALIASES] = "SELECT count(*) FROM aliases WHERE substr(source, -length(?1)) = ?1",
	[Q_ACCOUNT_ID] = "SELECT id FROM accounts WHERE address = ?1",
	[Q_ACCOUNT_INSERT] = "INSERT INTO accounts(domain_id, address, pwhash, quota_bytes, quota_messages,"
			     " used_bytes, used_messages, created, last_login)"
			     " VALUES(?1, ?2, ?3, ?4, ?5, 0, 0, ?6, 0)",
	[Q_ACCOUNT_GET] = "SELECT " ACCOUNT_COLS " FROM accounts WHERE address = ?1",
	[Q_ACCOUNT_LIST_ALL] = "SELECT " ACCOUNT_COLS " FROM accounts ORDER BY address",
	[Q_ACCOUNT_LIST_DOMAIN] = "SELECT " ACCOUNT_COLS " FROM accounts WHERE domain_id = ?1 ORDER BY address",
	[Q_ACCOUNT_SET_PW] = "UPDATE accounts SET pwhash = ?2 WHERE address = ?1",
	[Q_ACCOUNT_SET_QUOTA] = "UPDATE accounts SET quota_bytes = ?2, quota_messages = ?3 WHERE address = ?1",
	[Q_ACCOUNT_DELETE] = "DELETE FROM accounts WHERE id = ?1",
	[Q_ACCOUNT_BLOB_REFS] = "SELECT blob_id, count(*) FROM messages WHERE mailbox_id IN"
				" (SELECT id FROM mailboxes WHERE account_id = ?1) GROUP BY blob_id",
	[Q_ACCOUNT_DEL_MESSAGES] = "DELETE FROM messages WHERE mailbox_id IN"
				   " (SELECT id FROM mailboxes WHERE account_id = ?1)",
	[Q_ACCOUNT_DEL_MAILBOXES] = "DELETE FROM mailboxes WHERE account_id = ?1",
	[Q_BLOB_DECREF] = "UPDATE blobs SET refcount = refcount - ?2 WHERE id = ?1 RETURNING refcount, msgid, tier",
	[Q_BLOB_DELETE] = "DELETE FROM blobs WHERE id = ?1",
	[Q_LOOKUP_ACCOUNT] = LOOKUP_ACCOUNT_SQL,
	[Q_LOOKUP_ALIAS] = LOOKUP_ALIAS_SQL,
	[Q_ALIAS_INSERT] = "INSERT INTO aliases(source, targets) VALUES(?1, ?2)",
	[Q_ALIAS_DELETE] = "DELETE FROM aliases WHERE source = ?1",
	[Q_ALIAS_LIST] = "SELECT source, targets FROM aliases ORDER BY source",
	[Q_ALIAS_REFERRERS] = "SELECT source FROM aliases"
			      " WHERE instr(',' || targets || ',', ',' || ?1 || ',') > 0",
	[Q_UIDV_RESERVE] = "UPDATE meta SET value = value + ?1 WHERE key = 'next_uidvalidity'"
			   " RETURNING value - ?1",
	[Q_MAILBOX_INSERT] = "INSERT INTO mailboxes(account_id, name, special_use, uidvalidity, uidnext,"
			     " highestmodseq, subscribed) VALUES(?1, ?2, ?3, ?4, 1, 1, 1)",
	[Q_MAILBOX_LIST] = "SELECT name, special_use, uidvalidity, uidnext,"
			   " (SELECT count(*) FROM messages WHERE mailbox_id = mb.id)"
			   " FROM mailboxes mb WHERE account_id = ?1 ORDER BY name <> 'INBOX', id",
	[Q_MAILBOX_ID] = "SELECT id FROM mailboxes WHERE account_id = ?1 AND name = ?2",
	[Q_MESSAGE_LIST] = "SELECT m.uid, b.msgid, b.size, b.received, m.flags, m.modseq"
			   " FROM messages m JOIN blobs b ON b.id = m.blob_id"
			   " WHERE m.mailbox_id = ?1 ORDER BY m.uid",
	[Q_MESSAGE_BLOB] = "SELECT b.msgid, b.size, b.tier FROM messages m JOIN blobs b ON b.id = m.blob_id"
			   " WHERE m.mailbox_id = ?1 AND m.uid = ?2",
	[Q_DELIVER_QUOTA] = "SELECT quota_bytes, quota_messages, used_bytes, used_messages"
			    " FROM accounts WHERE id = ?1",
	[Q_DELIVER_BLOB] = "INSERT INTO blobs(msgid, tier, size, received, refcount) VALUES(?1, 0, ?2, ?3, ?4)",
	[Q_DELIVER_INBOX] = "UPDATE mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1"
			    " WHERE account_id = ?1 AND name = 'INBOX' RETURNING id, uidnext - 1, highestmodseq",
	[Q_DELIVER_MESSAGE] = "INSERT INTO messages(mailbox_id, uid, blob_id, flags, keywords, modseq)"
			      " VALUES(?1, ?2, ?3, 0, NULL, ?4)",
	[Q_DELIVER_USAGE] = "UPDATE accounts SET used_bytes = used_bytes + ?2, used_messages = used_messages + 1"
			    " WHERE id = ?1",
	[Q_STATS] = "SELECT (SELECT count(*) FROM domains), (SELECT count(*) FROM accounts),"
		    " (SELECT count(*) FROM aliases), (SELECT count(*) FROM mailboxes),"
		    " (SELECT count(*) FROM messages), (SELECT count(*) FROM blobs),"
		    " (SELECT coalesce(sum(size), 0) FROM blobs)",
	[Q_MIME_GET] = "SELECT packed FROM mime"
		       " WHERE blob_id = (SELECT id FROM blobs WHERE msgid = ?1)",
	[Q_MIME_PUT] = "INSERT OR IGNORE INTO mime(blob_id, packed)"
		       " SELECT id, ?2 FROM blobs WHERE msgid = ?1",
	[Q_MIME_INSERT] = "INSERT INTO mime(blob_id, packed)"
			  " VALUES(?1, ?2)",
	[Q_MIME_FIX] = "UPDATE mime SET packed = ?2 WHERE blob_id = (SELECT id FROM blobs WHERE msgid = ?1)",
};

static const char *const reader_sql[RQ__COUNT] = {
	[RQ_BEGIN] = "BEGIN",
	[RQ_END] = "COMMIT",
	[RQ_DOMAIN] = "SELECT 1 FROM domains WHERE name = ?1",
	[RQ_ACCOUNT] = LOOKUP_ACCOUNT_SQL,
	[RQ_ALIAS] = LOOKUP_ALIAS_SQL,
};

/* ---- errors and small helpers ------------------------------------------- */

enum status store_db_status(int rc)
{
	switch (rc & 0xff) {
	case SQLITE_OK:
	case SQLITE_DONE:
	case SQLITE_ROW:
		return ST_OK;
	case SQLITE_FULL:
		return ST_NO_SPACE;
	case SQLITE_IOERR:
		return ST_IO_ERROR;
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return ST_DB_BUSY;
	default:
		return ST_TEMPFAIL;
	}
}

enum status store_db_fail(sqlite3 *db, int rc, const char *what, char **error_r)
{
	if (error_r)
		*error_r = xasprintf("%s: %s (%s)", what, sqlite3_errmsg(db), sqlite3_errstr(rc));
	return store_db_status(rc);
}

void store_db_reset(sqlite3_stmt *q)
{
	sqlite3_reset(q);
	sqlite3_clear_bindings(q);
}

int store_db_run(sqlite3_stmt *q)
{
	int rc = sqlite3_step(q);
	store_db_reset(q);
	return rc;
}

static uint32_t sql_hash(const char *sql)
{
	uint32_t h = 2166136261u;   /* FNV-1a */
	for (const unsigned char *p = (const unsigned char *)sql; *p; p++)
		h = (h ^ *p) * 16777619u;
	return h;
}

enum status store_db_prepare(struct store *st, const char *sql, sqlite3_stmt **q, char **error_r)
{
	uint32_t h = sql_hash(sql);
	for (size_t i = 0; i < st->n_cache; i++) {
		struct store_stmt_slot *c = &st->cache[i];
		if (c->hash == h && !c->in_use && strcmp(c->sql, sql) == 0) {
			c->in_use = true;
			*q = c->q;
			return ST_OK;
		}
	}
	bool keep = st->n_cache < STORE_STMT_CACHE;
	int rc = sqlite3_prepare_v3(st->db, sql, -1, keep ? SQLITE_PREPARE_PERSISTENT : 0, q, NULL);
	if (rc != SQLITE_OK) {
		enum status s = store_db_fail(st->db, rc, "preparing a statement", error_r);
		sqlite3_finalize(*q);
		*q = NULL;
		return s;
	}
	if (keep)
		st->cache[st->n_cache++] = (struct store_stmt_slot){ xstrdup(sql), h, *q, true };
	return ST_OK;
}

void store_db_release(struct store *st, sqlite3_stmt *q)
{
	if (q == NULL)
		return;
	for (size_t i = 0; i < st->n_cache; i++) {
		if (st->cache[i].q == q) {
			sqlite3_reset(q);
			sqlite3_clear_bindings(q);
			st->cache[i].in_use = false;
			return;
		}
	}
	sqlite3_finalize(q);
}

static void cache_free(struct store *st)
{
	for (size_t i = 0; i < st->n_cache; i++) {
		if (st->cache[i].in_use)
			panic("store: statement for \"%.60s\" not released", st->cache[i].sql);
		sqlite3_finalize(st->cache[i].q);
		free(st->cache[i].sql);
	}
	st->n_cache = 0;
}

enum status store_db_step_done(struct store *st, sqlite3_stmt *q, const char *what, char **error_r)
{
	int rc = sqlite3_step(q);
	enum status s = ST_OK;
	if (rc != SQLITE_DONE && rc != SQLITE_ROW)
		s = store_db_fail(st->db, rc, what, error_r);
	store_db_reset(q);
	return s;
}

int store_db_bind_u64(sqlite3_stmt *q, int idx, uint64_t v)
{
	if (v > (uint64_t)INT64_MAX)
		panic("store: value %llu does not fit the index", (unsigned long long)v);
	return sqlite3_bind_int64(q, idx, (sqlite3_int64)v);
}

uint64_t store_db_column_u64(sqlite3_stmt *q, int col)
{
	sqlite3_int64 v = sqlite3_column_int64(q, col);
	return v < 0 ? 0 : (uint64_t)v;
}

/* ---- change notification --------------------------------------------------- */

/* Atomic: set by the main thread while the committer may already run. */
static _Atomic(store_change_fn *) g_change_fn;
static void *_Atomic g_change_ctx;

void store_set_change_listener(store_change_fn *fn, void *ctx)
{
	atomic_store(&g_change_ctx, ctx);
	atomic_store(&g_change_fn, fn);
}

/* SQLite's update hook, on the handle's thread inside the statement: every
 * change to a mailbox's counters is an UPDATE of its mailboxes row. */
static void note_update(void *arg, int op, const char *db_name, const char *table, sqlite3_int64 rowid)
{
	(void)db_name;
	struct store *st = arg;
	if (op != SQLITE_UPDATE || strcmp(table, "mailboxes") != 0 || st->changed_all)
		return;
	for (size_t i = 0; i < st->n_changed; i++) {
		if (st->changed[i] == rowid)
			return;
	}
	if (st->n_changed == STORE_CHANGED_MAX)
		st->changed_all = true;
	else
		st->changed[st->n_changed++] = rowid;
}

static void changes_forget(struct store *st)
{
	st->n_changed = 0;
	st->changed_all = false;
}

/* After COMMIT returned: the change is visible to every reader now. */
static void changes_publish(struct store *st)
{
	store_change_fn *fn = atomic_load(&g_change_fn);
	if ((st->n_changed > 0 || st->changed_all) && fn != NULL)
		fn(atomic_load(&g_change_ctx), st->changed, st->changed_all ? 0 : st->n_changed, st->changed_all);
	changes_forget(st);
}

enum status store_db_begin(struct store *st, char **error_r)
{
	changes_forget(st);
	int rc = sqlite3_step(st->q[Q_BEGIN]);
	if (rc != SQLITE_DONE) {
		enum status s = store_db_fail(st->db, rc, "begin transaction", error_r);
		store_db_reset(st->q[Q_BEGIN]);
		return s;
	}
	store_db_reset(st->q[Q_BEGIN]);
	return ST_OK;
}

enum status store_db_commit(struct store *st, char **error_r)
{
	int rc = sqlite3_step(st->q[Q_COMMIT]);
	if (rc != SQLITE_DONE) {
		enum status s = store_db_fail(st->db, rc, "commit", error_r);
		store_db_reset(st->q[Q_COMMIT]);
		store_db_rollback(st);
		return s;
	}
	store_db_reset(st->q[Q_COMMIT]);
	changes_publish(st);
	return ST_OK;
}

void store_db_rollback(struct store *st)
{
	changes_forget(st);
	if (sqlite3_get_autocommit(st->db))
		return; /* SQLite already rolled back (e.g. after SQLITE_FULL) */
	int rc = sqlite3_step(st->q[Q_ROLLBACK]);
	if (rc != SQLITE_DONE)
		log_error("store: rollback failed: %s", sqlite3_errmsg(st->db));
	store_db_reset(st->q[Q_ROLLBACK]);
}

/* ---- opening --------------------------------------------------------------- */

static bool exec_sql(sqlite3 *db, const char *sql, const char *what, char **error_r)
{
	char *msg = NULL;
	int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
	if (rc != SQLITE_OK) {
		if (error_r)
			*error_r = xasprintf("%s: %s", what, msg ? msg : sqlite3_errstr(rc));
		sqlite3_free(msg);
		return false;
	}
	return true;
}

/* Runs a one-value pragma query and copies its text result into out. */
static bool pragma_text(sqlite3 *db, const char *sql, char *out, size_t outlen, char **error_r)
{
	sqlite3_stmt *q = NULL;
	int rc = sqlite3_prepare_v2(db, sql, -1, &q, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(q);
	if (rc != SQLITE_ROW) {
		if (error_r)
			*error_r = xasprintf("%s: %s", sql, sqlite3_errmsg(db));
		sqlite3_finalize(q);
		return false;
	}
	const unsigned char *t = sqlite3_column_text(q, 0);
	snprintf(out, outlen, "%s", t ? (const char *)t : "");
	sqlite3_finalize(q);
	return true;
}

static bool schema_version(sqlite3 *db, int *version, char **error_r)
{
	char text[32];
	if (!pragma_text(db, "PRAGMA user_version", text, sizeof(text), error_r))
		return false;
	*version = atoi(text);
	return true;
}

static sqlite3 *open_db(const char *path, int flags, char **error_r)
{
	if (sqlite3_threadsafe() == 0)
		panic("store: SQLite was built without thread support");
	sqlite3 *db = NULL;
	int rc = sqlite3_open_v2(path, &db, flags | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK) {
		*error_r = xasprintf("cannot open index %s: %s", path,
				     db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
		sqlite3_close(db);
		return NULL;
	}
	sqlite3_extended_result_codes(db, 1);
	sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);
	return db;
}

static bool prepare_all(sqlite3 *db, const char *const *sql, sqlite3_stmt **q, size_t n,
			char **error_r)
{
	for (size_t i = 0; i < n; i++) {
		int rc = sqlite3_prepare_v3(db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, &q[i], NULL);
		if (rc != SQLITE_OK) {
			*error_r = xasprintf("index statement %zu: %s", i, sqlite3_errmsg(db));
			return false;
		}
	}
	return true;
}

static void finalize_all(sqlite3_stmt **q, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		sqlite3_finalize(q[i]);
		q[i] = NULL;
	}
}

/* Applies the missing migrations in one IMMEDIATE transaction. */
static bool migrate(sqlite3 *db, char **error_r)
{
	if (!exec_sql(db, "BEGIN IMMEDIATE", "migration", error_r))
		return false;
	int version;
	if (!schema_version(db, &version, error_r))
		goto fail;
	int latest = (int)ARRAY_LEN(migrations);
	if (version > latest) {
		*error_r = xasprintf("index schema version %d is newer than this Strata (%d)", version,
				     latest);
		goto fail;
	}
	for (int v = version; v < latest; v++) {
		char what[64];
		snprintf(what, sizeof(what), "schema migration to version %d", v + 1);
		if (!exec_sql(db, migrations[v], what, error_r))
			goto fail;
	}
	if (version != latest) {
		char sql[64];
		snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", latest);
		if (!exec_sql(db, sql, "migration", error_r))
			goto fail;
	}
	if (!exec_sql(db, "COMMIT", "migration commit", error_r))
		goto fail;
	if (version != latest)
		log_info("store: index schema migrated from version %d to %d", version, latest);
	return true;
fail:
	if (!sqlite3_get_autocommit(db))
		exec_sql(db, "ROLLBACK", "migration rollback", NULL);
	return false;
}

/* Before a schema upgrade of an existing index: an online backup, or no
 * upgrade at all.  store_backup_run verifies its copy (integrity_check in
 * store_db_copy) before it names it a backup.  The upgrade itself is one
 * transaction, so a failure leaves the old schema; the backup covers what a
 * transaction cannot (a bug in a migration). */
static bool backup_before_upgrade(const struct settings *s, sqlite3 *db, char **error_r)
{
	int version;
	if (!schema_version(db, &version, error_r))
		return false;
	if (version == 0 || version >= (int)ARRAY_LEN(migrations))
		return true;   /* a new index, or nothing to upgrade */
	char *path = NULL, *err = NULL;
	uint64_t t0 = time_mono_ms();
	if (store_backup_run(s, &path, &err) != ST_OK) {
		*error_r = xasprintf("backing up the index before its schema upgrade from version %d failed, "
				     "nothing was changed: %s", version, err ? err : "unknown error");
		free(err);
		return false;
	}
	log_info("store: index backed up to %s and verified in %llu ms before its schema upgrade "
		 "from version %d", path, (unsigned long long)(time_mono_ms() - t0), version);
	free(path);
	return true;
}

static bool check_version(sqlite3 *db, const char *path, char **error_r)
{
	int version;
	if (!schema_version(db, &version, error_r))
		return false;
	if (version == STORE_SCHEMA_VERSION)
		return true;
	if (version == 0)
		*error_r = xasprintf("index %s is not initialised", path);
	else
		*error_r = xasprintf("index %s has schema version %d, this Strata uses %d%s", path,
				     version, STORE_SCHEMA_VERSION,
				     version < STORE_SCHEMA_VERSION ? " (open it once with create to migrate)"
								    : "");
	return false;
}

static bool writer_pragmas(sqlite3 *db, const struct settings *s, char **error_r)
{
	char mode[16];
	if (!pragma_text(db, "PRAGMA journal_mode = WAL", mode, sizeof(mode), error_r))
		return false;
	if (strcmp(mode, "wal") != 0) {
		*error_r = xasprintf("index cannot use WAL mode (got '%s'): is it on a network "
				     "file system?", mode);
		return false;
	}
	char sql[256];
	snprintf(sql, sizeof(sql),
		 "PRAGMA synchronous = %s; PRAGMA foreign_keys = ON; PRAGMA cache_size = -%d;"
		 " PRAGMA temp_store = MEMORY; PRAGMA journal_size_limit = 67108864;",
		 s->store_fsync ? "FULL" : "OFF", WRITER_CACHE_KIB);
	return exec_sql(db, sql, "index pragmas", error_r);
}

static bool make_dirs(const struct settings *s, char **error_r)
{
	char dir[PATH_MAX];
	fs_dirname(s->store_index_path, dir, sizeof(dir));
	const char *dirs[3] = { dir, s->store_blob_dir, NULL };
	char tmp[PATH_MAX];
	snprintf(tmp, sizeof(tmp), "%s/tmp", s->store_blob_dir);
	dirs[2] = tmp;
	for (size_t i = 0; i < ARRAY_LEN(dirs); i++) {
		if (!fs_mkdir_p(dirs[i], 0750)) {
			*error_r = xasprintf("cannot create %s: %s", dirs[i], strerror(errno));
			return false;
		}
	}
	return true;
}

static bool check_paths(const struct settings *s, char **error_r)
{
	if (s->store_index_path[0] == '\0' || s->store_blob_dir[0] == '\0') {
		*error_r = xstrdup("store.index and store.blob_dir must not be empty");
		return false;
	}
	if (strlen(s->store_blob_dir) + BLOB_PATH_EXTRA >= PATH_MAX ||
	    strlen(s->store_index_path) + 16 >= PATH_MAX) {
		*error_r = xstrdup("store.index or store.blob_dir is too long");
		return false;
	}
	return true;
}

struct store *store_open(const struct settings *s, bool create, char **error_r)
{
	if (!check_paths(s, error_r))
		return NULL;
	if (create && !make_dirs(s, error_r))
		return NULL;
	int flags = SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0);
	sqlite3 *db = open_db(s->store_index_path, flags, error_r);
	if (db == NULL)
		return NULL;
	struct store *st = xcalloc(1, sizeof(*st));
	st->db = db;
	st->s = s;
	if (!writer_pragmas(db, s, error_r) ||
	    (create ? !backup_before_upgrade(s, db, error_r) || !migrate(db, error_r)
		    : !check_version(db, s->store_index_path, error_r)) ||
	    (!create && !make_dirs(s, error_r)) ||
	    !prepare_all(db, writer_sql, st->q, Q__COUNT, error_r)) {
		store_close(&st);
		return NULL;
	}
	sqlite3_update_hook(db, note_update, st);
	store_checkpoint_attach(st);
	return st;
}

void store_close(struct store **stp)
{
	struct store *st = *stp;
	if (st == NULL)
		return;
	if (st->db && !sqlite3_get_autocommit(st->db))
		panic("store_close inside a transaction");
	finalize_all(st->q, Q__COUNT);
	cache_free(st);
	store_mime_dict_close(st);
	if (st->db) {
		/* Lets SQLite refresh planner statistics it found useful. */
		sqlite3_exec(st->db, "PRAGMA optimize", NULL, NULL, NULL);
		if (sqlite3_close(st->db) != SQLITE_OK)
			log_error("store: closing the index: %s", sqlite3_errmsg(st->db));
	}
	free(st);
	*stp = NULL;
}

struct store_reader *store_reader_open(const struct settings *s, char **error_r)
{
	sqlite3 *db = open_db(s->store_index_path, SQLITE_OPEN_READONLY, error_r);
	if (db == NULL)
		return NULL;
	struct store_reader *r = xcalloc(1, sizeof(*r));
	r->db = db;
	r->delimiters = xstrdup(s->recipient_delimiter ? s->recipient_delimiter : "");
	char sql[96];
	snprintf(sql, sizeof(sql), "PRAGMA query_only = ON; PRAGMA cache_size = -%d;", READER_CACHE_KIB);
	if (!exec_sql(db, sql, "index reader pragmas", error_r) ||
	    !check_version(db, s->store_index_path, error_r) ||
	    !prepare_all(db, reader_sql, r->q, RQ__COUNT, error_r)) {
		store_reader_close(&r);
		return NULL;
	}
	return r;
}

void store_reader_close(struct store_reader **rp)
{
	struct store_reader *r = *rp;
	if (r == NULL)
		return;
	finalize_all(r->q, RQ__COUNT);
	if (r->db && sqlite3_close(r->db) != SQLITE_OK)
		log_error("store: closing an index reader: %s", sqlite3_errmsg(r->db));
	free(r->delimiters);
	free(r);
	*rp = NULL;
}

/* ---- statistics ------------------------------------------------------------ */

enum status store_stats(struct store *st, struct store_stats *out)
{
	memset(out, 0, sizeof(*out));
	sqlite3_stmt *q = st->q[Q_STATS];
	int rc = sqlite3_step(q);
	if (rc != SQLITE_ROW) {
		enum status s = store_db_fail(st->db, rc, "statistics", NULL);
		log_error("store: statistics: %s", sqlite3_errmsg(st->db));
		store_db_reset(q);
		return s;
	}
	uint64_t *fields[] = { &out->domains, &out->accounts, &out->aliases, &out->mailboxes,
			       &out->messages, &out->blobs, &out->blob_bytes };
	for (size_t i = 0; i < ARRAY_LEN(fields); i++)
		*fields[i] = store_db_column_u64(q, (int)i);
	store_db_reset(q);
	return ST_OK;
}
