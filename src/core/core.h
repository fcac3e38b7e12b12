/*
 * core.h - the layer under every Strata subsystem.
 *
 * Owns: allocation that aborts on exhaustion, the growable buffer (struct buf),
 * logging, small string helpers, monotonic/wall time, unique ids, the one
 * durable-write helper with its fault points, and the status table that maps
 * an internal error to an SMTP reply and an IMAP response code.
 *
 * Invariants:
 *  - x*alloc never return NULL; size multiplications are overflow-checked and
 *    abort (an overflow is a bug, not a runtime condition).
 *  - fs_durable_* return only after data AND the directory entry are on stable
 *    storage (file fsync, checked close, rename, directory fsync).  A failure
 *    at any step returns a status and leaves no visible partial file.
 *  - Every function here is thread-safe unless its comment says otherwise.
 */
#ifndef STRATA_CORE_H
#define STRATA_CORE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define STRATA_VERSION "0.1.0"

#if defined(__GNUC__)
#define ATTR_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define ATTR_NORETURN __attribute__((noreturn))
#define ATTR_UNUSED __attribute__((unused))
#else
#define ATTR_PRINTF(a, b)
#define ATTR_NORETURN
#define ATTR_UNUSED
#endif

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- allocation (core_alloc.c) ---------------------------------------- */
void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
void *xreallocarray(void *p, size_t count, size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) ATTR_PRINTF(1, 2);
char *xvasprintf(const char *fmt, va_list ap) ATTR_PRINTF(1, 0);
/* Frees *pp and sets it to NULL. */
#define xfree(pp) do { free(*(pp)); *(pp) = NULL; } while (0)

/* ---- growable buffer (core_buf.c) --------------------------------------
 * A byte buffer that is always NUL-terminated past its length, so it can be
 * used as a C string when it holds text.  Not thread-safe (owned by one user). */
struct buf {
	char *data;
	size_t len;
	size_t cap;
};
#define BUF_INIT { NULL, 0, 0 }
void buf_reserve(struct buf *b, size_t extra);
void buf_append(struct buf *b, const void *data, size_t len);
void buf_append_str(struct buf *b, const char *s);
void buf_append_char(struct buf *b, char c);
void buf_printf(struct buf *b, const char *fmt, ...) ATTR_PRINTF(2, 3);
void buf_vprintf(struct buf *b, const char *fmt, va_list ap) ATTR_PRINTF(2, 0);
void buf_truncate(struct buf *b, size_t len);
void buf_reset(struct buf *b);          /* len = 0, keeps capacity */
void buf_free(struct buf *b);           /* releases memory */
/* Detaches and returns the data (caller frees); the buffer becomes empty. */
char *buf_steal(struct buf *b);

/* ---- logging (core_log.c) ----------------------------------------------
 * One line per call, to stderr (default) or syslog.  Text from the network
 * must pass through log_escape() first. */
enum log_level { LOG_LVL_ERROR = 0, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };
void log_init(const char *ident, bool use_syslog, enum log_level level);
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
bool log_level_parse(const char *s, enum log_level *out);
void log_msg(enum log_level lvl, const char *fmt, ...) ATTR_PRINTF(2, 3);
#define log_error(...) log_msg(LOG_LVL_ERROR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(...) do { if (log_get_level() >= LOG_LVL_DEBUG) log_msg(LOG_LVL_DEBUG, __VA_ARGS__); } while (0)
/* A fatal start-up error: logs and exits(1).  Never used after start-up. */
void fatal(const char *fmt, ...) ATTR_PRINTF(1, 2) ATTR_NORETURN;
/* A broken invariant: logs and aborts. */
void panic(const char *fmt, ...) ATTR_PRINTF(1, 2) ATTR_NORETURN;
/* Escapes untrusted text for a log line: non-printables as \xNN, at most
 * max_out-1 bytes written, always NUL-terminated.  Returns out. */
char *log_escape(const char *in, size_t in_len, char *out, size_t max_out);

/* ---- strings (core_str.c) ---------------------------------------------- */
bool str_ieq(const char *a, const char *b);
bool str_istarts(const char *s, const char *prefix);
void str_lower(char *s);
/* Strict base64 (RFC 4648 4: the standard alphabet, padding, no blanks)
 * of b64[0, len) into out[0, cap); false on any other octet, a bad length
 * or padding, or a result longer than cap.  len 0 decodes to nothing.  Use
 * it rather than sodium_base642bin directly: libsodium 1.0.18 (Debian 12)
 * decodes octets 0x80-0xff as '/'. */
bool base64_decode_strict(const char *b64, size_t len, void *out, size_t cap, size_t *n_r);
char *str_trim(char *s);                /* in place; returns start */
/* Parses a byte size "10M", "512k", "1G", "123" (powers of 1024). */
bool str_parse_size(const char *s, uint64_t *out);
/* Parses a duration "30s", "5m", "2h", "1d", "250ms", "10" (seconds) into ms. */
bool str_parse_duration_ms(const char *s, uint64_t *out_ms);
bool str_parse_u64(const char *s, uint64_t *out);
bool str_parse_bool(const char *s, bool *out);
/* Constant-time comparison of two byte strings of equal length. */
bool str_ct_equal(const void *a, const void *b, size_t n);

/* ---- time and ids (core_time.c) ----------------------------------------- */
uint64_t time_mono_ms(void);
uint64_t time_mono_us(void);
uint64_t time_wall_ms(void);
/* *ts = CLOCK_MONOTONIC now + ms: the absolute deadline a
 * pthread_cond_timedwait on a monotonic condition variable takes. */
struct timespec;
void time_mono_deadline(uint64_t ms, struct timespec *ts);
/* RFC 5322 date-time for `t` in local time, e.g. "Sat, 28 Nov 2026 22:03:44 +0000". */
void time_rfc5322(int64_t t, char *out, size_t outlen);

/* A message id: 16 bytes, 48-bit big-endian wall clock ms then 80 random bits,
 * so ids sort by creation time.  Its text form is 26 Crockford base32 chars
 * and is both the queue id in logs and the blob file name. */
#define MSGID_BYTES 16
#define MSGID_TEXT_LEN 26
struct msgid { uint8_t b[MSGID_BYTES]; };
void msgid_new(struct msgid *id);
void msgid_format(const struct msgid *id, char out[MSGID_TEXT_LEN + 1]);
bool msgid_parse(const char *text, struct msgid *id);
uint64_t msgid_time_ms(const struct msgid *id);
void random_bytes(void *buf, size_t n);  /* libsodium randombytes_buf */

/* ---- status table (core_status.c) --------------------------------------
 * Every failure that can reach a client maps to exactly one SMTP reply and
 * one IMAP response code, here and nowhere else. */
enum status {
	ST_OK = 0,
	ST_TEMPFAIL,        /* generic local problem: 451 4.3.0 / NO [UNAVAILABLE] */
	ST_NO_SPACE,        /* disk full: 452 4.3.1 / NO [UNAVAILABLE] */
	ST_IO_ERROR,        /* I/O error: 451 4.3.0 / NO [UNAVAILABLE] */
	ST_OVER_QUOTA_TEMP, /* 452 4.2.2 / NO [OVERQUOTA] */
	ST_OVER_QUOTA_PERM, /* 552 5.2.2 / NO [OVERQUOTA] */
	ST_TOO_BIG,         /* 552 5.3.4 / NO [TOOBIG] */
	ST_NOT_FOUND,       /* 550 5.1.1 / NO [NONEXISTENT] */
	ST_EXISTS,          /* 550 5.0.0 / NO [ALREADYEXISTS] */
	ST_INVALID,         /* 501 5.5.4 / BAD */
	ST_SHUTDOWN,        /* 421 4.3.2 / BYE */
	ST_DB_BUSY,         /* 451 4.3.0 / NO [INUSE] */
	ST__COUNT
};
struct status_info {
	const char *name;       /* short name for logs and metrics labels */
	int smtp_code;          /* e.g. 452 */
	const char *smtp_enh;   /* e.g. "4.3.1" */
	const char *smtp_text;  /* human text */
	const char *imap_code;  /* e.g. "OVERQUOTA" or NULL */
};
const struct status_info *status_info(enum status st);
/* Maps an errno from a failed write/fsync/rename to a status. */
enum status status_from_errno(int err);

/* ---- durable file system helper (core_fs.c) ----------------------------
 * The one place that knows the full durable-write sequence:
 *   write temp file -> fsync(file) -> close (checked) -> rename -> fsync(dir)
 * Fault points let tests fail any step (see fs_fault_*).  The functions set
 * errno and return false on failure; no partial file is left at `final`. */
int  fs_open_temp(const char *dir, char *path_out, size_t path_len); /* O_EXCL, 0600 */
bool fs_write_all(int fd, const void *data, size_t len);
bool fs_fsync(int fd);
bool fs_close(int fd);
bool fs_fsync_dir(const char *dir);
/* Renames old to new and fsyncs the directory of new (and of old if it differs). */
bool fs_rename_durable(const char *oldpath, const char *newpath);
/* Whole sequence for a small file.  mode applies to the final file. */
bool fs_write_file_durable(const char *path, const void *data, size_t len, mode_t mode);
/* mkdir -p; each directory created is fsynced into its parent. */
bool fs_mkdir_p(const char *path, mode_t mode);
/* Reads a whole file (caller frees *out).  Returns false and sets errno. */
bool fs_read_file(const char *path, char **out, size_t *len);
/* Directory part of a path into out. */
void fs_dirname(const char *path, char *out, size_t outlen);

/* Fault injection for tests: make the Nth future call (1-based) of `op` fail
 * with `err`.  Configured from the environment STRATA_FAULT="op:n:errno,...",
 * e.g. "fsync:3:5" (EIO on the 3rd fsync), "write:1:28" (ENOSPC).  Ops:
 * write, fsync, rename, open, fsync_dir.  Zero cost when unset. */
enum fs_fault_op { FS_OP_WRITE, FS_OP_FSYNC, FS_OP_RENAME, FS_OP_OPEN, FS_OP_FSYNC_DIR, FS_OP__COUNT };
void fs_fault_init_from_env(void);
void fs_fault_set(enum fs_fault_op op, uint64_t nth, int err, bool repeat);
/* Returns 0 or the errno to inject for this call. */
int  fs_fault_check(enum fs_fault_op op);

#endif
