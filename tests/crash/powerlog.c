/*
 * powerlog.c - LD_PRELOAD recorder of file-system changes and replies, for
 * the power-loss model (tests/crash/powerloss.py replays its log).
 *
 * Owns: nothing of Strata's; it is a test tool.  Loaded into `strata serve`
 * with LD_PRELOAD, it wraps the libc entry points that change files and
 * appends one record per operation to a log file, in the order the
 * operations happened.
 *
 * Interface (environment, read once at load):
 *   STRATA_POWERLOG_DIR   absolute directory to watch (the state dir); only
 *                         paths under it are recorded, relative to it;
 *   STRATA_POWERLOG_FILE  the log to write (created, truncated).
 * Without both, every wrapper is a plain pass-through.
 *
 * Recorded, for paths under the directory: open/openat/creat with O_CREAT or
 * O_TRUNC (CREATE), write/pwrite/writev/pwritev[2] (WRITE: offset + bytes),
 * ftruncate/truncate (TRUNCATE), fallocate/posix_fallocate (FALLOCATE),
 * fsync/fdatasync of files and directories (SYNC_BEGIN before the call,
 * SYNC_END after a successful one, naming the begin record: a sync makes
 * durable what was written before it STARTED), rename/renameat/renameat2,
 * unlink/unlinkat/rmdir, mkdir/mkdirat, link/linkat, close.  SQLite's
 * "-shm" file is not followed: it is a memory-mapped cache of the WAL's
 * frame index that SQLite truncates and rebuilds from the WAL when the first
 * connection opens the database, so its content after a crash never
 * matters (and its writes go through mmap, which no wrapper could see).
 * Replies: every write/writev/send/sendto/sendmsg on a socket is scanned for
 * "250 2.0.0 Ok: queued as <ID>" and "OK [APPENDUID <uidvalidity> <uids>]";
 * each match is logged as an ACK record BEFORE the bytes are sent, so every
 * file operation the daemon made before its reply precedes the ACK.
 *
 * Record format (little-endian, what powerloss.py parses): a 64-byte header
 *   "PWL1" op:u32 seq:u64 ino:u64 off:i64 len:i64 aux:u32 tid:u32
 *   p1len:u32 p2len:u32 dlen:u64
 * then p1 (path), p2 (second path) and dlen data bytes.  seq increases by
 * one per record; a record is written whole under the lock, so a kill can
 * cut at most the last one.
 *
 * Concurrency: one mutex serialises sequence numbers and log writes; the
 * wrapped call itself runs outside the lock (so group commit still
 * overlaps fsyncs).  The descriptor table is updated under the lock and
 * probed lock-free (an atomic flag per descriptor), so a signal handler
 * writing to stderr never takes the lock.  Nothing is buffered: a record is
 * in the file when the wrapper returns, so SIGKILL loses at most the record
 * being written.  Forked children are not followed (pl_atfork_child).
 *
 * System calls of its own: fstat, lseek, writev (the daemon, libevent and
 * SQLite make all three) and getcwd for a relative path (Strata uses
 * absolute ones); none is refused by the daemon's filter
 * (server_seccomp.c), so the shim runs inside it.
 *
 * Limits: stdio writes (fwrite) and writes through mmap are not seen;
 * descriptors above PL_MAX_FD and directory descriptors the shim did not
 * see opened are reported with an UNTRACKED record, which makes the
 * replayer refuse the log rather than guess.
 */
#undef _FILE_OFFSET_BITS
#define _GNU_SOURCE 1

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

_Static_assert(sizeof(off_t) == 8, "powerlog needs a 64-bit off_t (LP64 Linux)");

#define PL_MAX_FD 65536
#define PL_LOG_FD_MIN 900

enum pl_op {
	OP_START = 0, OP_CREATE = 1, OP_WRITE = 2, OP_TRUNCATE = 3, OP_FALLOCATE = 4, OP_SYNC_BEGIN = 5,
	OP_SYNC_END = 6, OP_RENAME = 7, OP_UNLINK = 8, OP_MKDIR = 9, OP_RMDIR = 10, OP_LINK = 11,
	OP_CLOSE = 12, OP_ACK = 13, OP_UNTRACKED = 14,
};
#define SYNC_DIR 1u
#define SYNC_DATA_ONLY 2u

struct pl_fd {
	char *path;     /* relative to the watched directory; "" for itself */
	uint64_t ino;
	bool is_dir;
	bool append;
};

static char g_dir[PATH_MAX];
static size_t g_dir_len;
static int g_log = -1;
static bool g_active;
static uint64_t g_seq;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static struct pl_fd g_fds[PL_MAX_FD];
static _Atomic unsigned char g_tracked[PL_MAX_FD];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

/* ---- the real functions ------------------------------------------------ */

#define REAL_LIST(X)                                                                                  \
	X(open, int, (const char *, int, ...))                                                        \
	X(open64, int, (const char *, int, ...))                                                      \
	X(openat, int, (int, const char *, int, ...))                                                 \
	X(openat64, int, (int, const char *, int, ...))                                               \
	X(creat, int, (const char *, mode_t))                                                         \
	X(creat64, int, (const char *, mode_t))                                                       \
	X(write, ssize_t, (int, const void *, size_t))                                                \
	X(writev, ssize_t, (int, const struct iovec *, int))                                          \
	X(pwrite, ssize_t, (int, const void *, size_t, off_t))                                        \
	X(pwrite64, ssize_t, (int, const void *, size_t, off64_t))                                    \
	X(pwritev, ssize_t, (int, const struct iovec *, int, off_t))                                  \
	X(pwritev64, ssize_t, (int, const struct iovec *, int, off64_t))                              \
	X(pwritev2, ssize_t, (int, const struct iovec *, int, off_t, int))                            \
	X(pwritev64v2, ssize_t, (int, const struct iovec *, int, off64_t, int))                       \
	X(ftruncate, int, (int, off_t))                                                               \
	X(ftruncate64, int, (int, off64_t))                                                           \
	X(truncate, int, (const char *, off_t))                                                       \
	X(truncate64, int, (const char *, off64_t))                                                   \
	X(fallocate, int, (int, int, off_t, off_t))                                                   \
	X(fallocate64, int, (int, int, off64_t, off64_t))                                             \
	X(posix_fallocate, int, (int, off_t, off_t))                                                  \
	X(posix_fallocate64, int, (int, off64_t, off64_t))                                            \
	X(fsync, int, (int))                                                                          \
	X(fdatasync, int, (int))                                                                      \
	X(rename, int, (const char *, const char *))                                                  \
	X(renameat, int, (int, const char *, int, const char *))                                      \
	X(renameat2, int, (int, const char *, int, const char *, unsigned int))                       \
	X(unlink, int, (const char *))                                                                \
	X(unlinkat, int, (int, const char *, int))                                                    \
	X(rmdir, int, (const char *))                                                                 \
	X(mkdir, int, (const char *, mode_t))                                                         \
	X(mkdirat, int, (int, const char *, mode_t))                                                  \
	X(link, int, (const char *, const char *))                                                    \
	X(linkat, int, (int, const char *, int, const char *, int))                                   \
	X(close, int, (int))                                                                          \
	X(dup, int, (int))                                                                            \
	X(dup2, int, (int, int))                                                                      \
	X(dup3, int, (int, int, int))                                                                 \
	X(send, ssize_t, (int, const void *, size_t, int))                                            \
	X(sendto, ssize_t, (int, const void *, size_t, int, const struct sockaddr *, socklen_t))      \
	X(sendmsg, ssize_t, (int, const struct msghdr *, int))                                        \
	X(opendir, DIR *, (const char *))                                                             \
	X(fdopendir, DIR *, (int))                                                                    \
	X(closedir, int, (DIR *))

#define DECLARE_REAL(name, ret, args) static ret(*real_##name) args;
REAL_LIST(DECLARE_REAL)

static void pl_init(void);

static void pl_resolve(void)
{
#define RESOLVE_REAL(name, ret, args) real_##name = (ret(*) args)dlsym(RTLD_NEXT, #name);
	REAL_LIST(RESOLVE_REAL)
}

/* The real function, resolved on first use (a wrapper can run before our
 * constructor, from another library's). */
#define REAL(name) (real_##name != NULL ? real_##name : (pthread_once(&g_once, pl_init), real_##name))

/* ---- paths ------------------------------------------------------------- */

/* Lexical normalisation of an absolute path: no "//", ".", "..". */
static bool path_normalise(const char *in, char *out, size_t outlen)
{
	size_t o = 0;
	const char *p = in;
	if (*p != '/')
		return false;
	for (int guard = 0; *p != '\0' && guard < PATH_MAX; guard++) {
		while (*p == '/')
			p++;
		if (*p == '\0')
			break;
		const char *e = strchr(p, '/');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		if (n == 1 && p[0] == '.') {
			/* nothing */
		} else if (n == 2 && p[0] == '.' && p[1] == '.') {
			while (o > 0 && out[o - 1] != '/')
				o--;
			if (o > 0)
				o--;
		} else {
			if (o + 1 + n + 1 > outlen)
				return false;
			out[o++] = '/';
			memcpy(out + o, p, n);
			o += n;
		}
		p += n;
	}
	if (o == 0)
		out[o++] = '/';
	out[o] = '\0';
	return true;
}

/* The watched-directory-relative form of (dirfd, path) into rel, or false
 * when it is outside.  *untracked is set when it cannot be known (a
 * relative path against a directory descriptor the shim never saw). */
static bool path_rel(int dirfd, const char *path, char *rel, size_t rellen, bool *untracked)
{
	char abs[PATH_MAX * 2], norm[PATH_MAX];
	*untracked = false;
	if (path == NULL)
		return false;
	if (path[0] == '/') {
		snprintf(abs, sizeof(abs), "%s", path);
	} else if (dirfd == AT_FDCWD) {
		char cwd[PATH_MAX];
		if (getcwd(cwd, sizeof(cwd)) == NULL)
			return false;
		snprintf(abs, sizeof(abs), "%s/%s", cwd, path);
	} else {
		if (dirfd < 0 || dirfd >= PL_MAX_FD || !atomic_load(&g_tracked[dirfd])) {
			*untracked = true;
			return false;
		}
		pthread_mutex_lock(&g_mu);
		const char *base = g_fds[dirfd].path ? g_fds[dirfd].path : "";
		snprintf(abs, sizeof(abs), "%s/%s/%s", g_dir, base, path);
		pthread_mutex_unlock(&g_mu);
	}
	if (!path_normalise(abs, norm, sizeof(norm)))
		return false;
	if (strncmp(norm, g_dir, g_dir_len) != 0 || (norm[g_dir_len] != '/' && norm[g_dir_len] != '\0'))
		return false;
	const char *r = norm + g_dir_len;
	if (*r == '/')
		r++;
	size_t n = strlen(r);
	if (n >= rellen)
		return false;
	memcpy(rel, r, n + 1);
	return true;
}

static bool is_shm(const char *rel)
{
	size_t n = strlen(rel);
	return n >= 4 && strcmp(rel + n - 4, "-shm") == 0;
}

/* ---- the log ----------------------------------------------------------- */

static void put32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

struct pl_rec {
	enum pl_op op;
	uint64_t ino;
	int64_t off, len;
	uint32_t aux;
	const char *p1, *p2;
	const struct iovec *data;
	int ndata;
	size_t dlen;    /* bytes of data to log (a prefix of the iovecs) */
};

/* Writes n iovecs whole to the log (EINTR and short writes resumed). */
static void log_iov(struct iovec *v, int n)
{
	int first = 0;
	for (int guard = 0; first < n && guard < (1 << 20); guard++) {
		if (v[first].iov_len == 0) {
			first++;
			continue;
		}
		ssize_t w = real_writev(g_log, v + first, n - first);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return;  /* the replayer sees a short log and refuses it */
		}
		while (w > 0 && first < n) {
			if ((size_t)w >= v[first].iov_len) {
				w -= (ssize_t)v[first].iov_len;
				first++;
			} else {
				v[first].iov_base = (char *)v[first].iov_base + w;
				v[first].iov_len -= (size_t)w;
				w = 0;
			}
		}
	}
}

/* Appends one record; the caller holds g_mu, so the record's pieces are
 * contiguous in the log even when they take several writev calls.
 * Returns its sequence number. */
static uint64_t log_locked(const struct pl_rec *r)
{
	unsigned char h[64];
	uint64_t seq = ++g_seq;
	size_t l1 = r->p1 ? strlen(r->p1) : 0, l2 = r->p2 ? strlen(r->p2) : 0;
	memcpy(h, "PWL1", 4);
	put32(h + 4, (uint32_t)r->op);
	put64(h + 8, seq);
	put64(h + 16, r->ino);
	put64(h + 24, (uint64_t)r->off);
	put64(h + 32, (uint64_t)r->len);
	put32(h + 40, r->aux);
	put32(h + 44, (uint32_t)gettid());
	put32(h + 48, (uint32_t)l1);
	put32(h + 52, (uint32_t)l2);
	put64(h + 56, (uint64_t)r->dlen);
	struct iovec v[64];
	int n = 0;
	v[n++] = (struct iovec){ h, sizeof(h) };
	v[n++] = (struct iovec){ (void *)r->p1, l1 };
	v[n++] = (struct iovec){ (void *)r->p2, l2 };
	size_t want = r->dlen;
	for (int i = 0; i < r->ndata && want > 0; i++) {
		size_t take = r->data[i].iov_len < want ? r->data[i].iov_len : want;
		v[n++] = (struct iovec){ r->data[i].iov_base, take };
		want -= take;
		if (n == 64) {
			log_iov(v, n);
			n = 0;
		}
	}
	log_iov(v, n);
	return seq;
}

static uint64_t log_rec(const struct pl_rec *r)
{
	int saved = errno;
	pthread_mutex_lock(&g_mu);
	uint64_t seq = log_locked(r);
	pthread_mutex_unlock(&g_mu);
	errno = saved;
	return seq;
}

static void log_untracked(const char *what, const char *path)
{
	log_rec(&(struct pl_rec){ .op = OP_UNTRACKED, .p1 = what, .p2 = path });
}

static void pl_init(void)
{
	pl_resolve();
	const char *dir = getenv("STRATA_POWERLOG_DIR");
	const char *file = getenv("STRATA_POWERLOG_FILE");
	if (dir == NULL || file == NULL || *dir == '\0' || *file == '\0')
		return;
	if (!path_normalise(dir, g_dir, sizeof(g_dir)))
		return;
	g_dir_len = strlen(g_dir);
	int fd = real_open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	int high = fcntl(fd, F_DUPFD_CLOEXEC, PL_LOG_FD_MIN);
	if (high >= 0) {
		real_close(fd);
		fd = high;
	}
	g_log = fd;
	g_active = true;
	log_rec(&(struct pl_rec){ .op = OP_START, .p1 = g_dir });
}

/* A forked child would log with its own copy of the sequence number into
 * the same file: the child is not followed (Strata's daemon forks only its
 * nftables helper, before it serves, and that never touches the state
 * directory). */
static void pl_atfork_child(void)
{
	g_active = false;
}

__attribute__((constructor)) static void pl_constructor(void)
{
	pthread_once(&g_once, pl_init);
	pthread_atfork(NULL, NULL, pl_atfork_child);
}

/* ---- the descriptor table ---------------------------------------------- */

static bool fd_tracked(int fd)
{
	return g_active && fd >= 0 && fd < PL_MAX_FD && atomic_load_explicit(&g_tracked[fd], memory_order_acquire);
}

/* Starts following fd, opened on rel; logs CREATE when flags create or
 * truncate. */
static void fd_track(int fd, const char *rel, int flags)
{
	struct stat st;
	if (fstat(fd, &st) != 0)
		return;
	if (fd >= PL_MAX_FD) {
		log_untracked("fd above table", rel);
		return;
	}
	char *copy = strdup(rel);
	int saved = errno;
	pthread_mutex_lock(&g_mu);
	free(g_fds[fd].path);
	g_fds[fd] = (struct pl_fd){ copy, (uint64_t)st.st_ino, S_ISDIR(st.st_mode), (flags & O_APPEND) != 0 };
	atomic_store_explicit(&g_tracked[fd], 1, memory_order_release);
	if (S_ISREG(st.st_mode) && (flags & (O_CREAT | O_TRUNC)))
		log_locked(&(struct pl_rec){ .op = OP_CREATE, .ino = (uint64_t)st.st_ino, .aux = (uint32_t)flags,
					     .p1 = rel });
	pthread_mutex_unlock(&g_mu);
	errno = saved;
}

static void fd_after_open(int fd, int dirfd, const char *path, int flags)
{
	if (fd < 0 || !g_active)
		return;
	char rel[PATH_MAX];
	bool unknown;
	if (path_rel(dirfd, path, rel, sizeof(rel), &unknown)) {
		if ((flags & O_TMPFILE) == O_TMPFILE)
			log_untracked("O_TMPFILE (an unnamed file) in", rel);
		else if (!is_shm(rel))
			fd_track(fd, rel, flags);
	} else if (unknown && (flags & (O_CREAT | O_TRUNC))) {
		log_untracked("open relative to an unknown directory descriptor", path);
	}
}

static void fd_forget(int fd)
{
	if (!fd_tracked(fd))
		return;
	int saved = errno;
	pthread_mutex_lock(&g_mu);
	if (atomic_load(&g_tracked[fd])) {
		atomic_store(&g_tracked[fd], 0);
		log_locked(&(struct pl_rec){ .op = OP_CLOSE, .ino = g_fds[fd].ino, .p1 = g_fds[fd].path });
		free(g_fds[fd].path);
		g_fds[fd] = (struct pl_fd){ 0 };
	}
	pthread_mutex_unlock(&g_mu);
	errno = saved;
}

static void fd_copy(int from, int to)
{
	if (to < 0)
		return;
	fd_forget(to);
	if (!fd_tracked(from))
		return;
	if (to >= PL_MAX_FD) {
		log_untracked("dup above table", NULL);
		return;
	}
	int saved = errno;
	pthread_mutex_lock(&g_mu);
	g_fds[to] = g_fds[from];
	g_fds[to].path = strdup(g_fds[from].path ? g_fds[from].path : "");
	atomic_store(&g_tracked[to], 1);
	pthread_mutex_unlock(&g_mu);
	errno = saved;
}

/* Logs an operation on a tracked descriptor (the caller checked it). */
static uint64_t fd_log(int fd, struct pl_rec r)
{
	int saved = errno;
	pthread_mutex_lock(&g_mu);
	r.ino = g_fds[fd].ino;
	r.p1 = g_fds[fd].path;
	if (r.op == OP_SYNC_BEGIN || r.op == OP_SYNC_END)
		r.aux |= g_fds[fd].is_dir ? SYNC_DIR : 0;
	if (r.op == OP_WRITE && g_fds[fd].append)
		r.off = -1;
	uint64_t seq = log_locked(&r);
	pthread_mutex_unlock(&g_mu);
	errno = saved;
	return seq;
}

/* ---- acknowledgements -------------------------------------------------- */

static const char SMTP_ACK[] = "250 2.0.0 Ok: queued as ";
static const char IMAP_ACK[] = "OK [APPENDUID ";

static bool crockford(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z');
}

/* Logs every acknowledgement in buf[0, len).  With from > 0 (a window over
 * two segments, the boundary at from) only matches that start before the
 * boundary and end after it, the ones the per-segment scans miss.
 * Returns the number found. */
static int ack_scan(const unsigned char *buf, size_t len, size_t from)
{
	int found = 0;
	for (size_t i = 0; i < len && found < 1024;) {
		const unsigned char *s = memmem(buf + i, len - i, SMTP_ACK, sizeof(SMTP_ACK) - 1);
		const unsigned char *m = memmem(buf + i, len - i, IMAP_ACK, sizeof(IMAP_ACK) - 1);
		const unsigned char *p = s && (!m || s < m) ? s : m;
		if (p == NULL)
			break;
		size_t at = (size_t)(p - buf);
		if (p == s) {
			size_t id = at + sizeof(SMTP_ACK) - 1;
			size_t k = 0;
			while (k < 26 && id + k < len && crockford(buf[id + k]))
				k++;
			if (k == 26 && (from == 0 || (at < from && id + 26 > from))) {
				char text[27];
				memcpy(text, buf + id, 26);
				text[26] = '\0';
				log_rec(&(struct pl_rec){ .op = OP_ACK, .p1 = "smtp", .p2 = text });
				found++;
			}
			i = id;
		} else {
			size_t id = at + sizeof(IMAP_ACK) - 1;
			size_t k = 0;
			while (k < 96 && id + k < len && buf[id + k] != ']' && buf[id + k] >= 0x20 && buf[id + k] < 0x7f)
				k++;
			bool whole = k > 0 && k < 96 && id + k < len && buf[id + k] == ']';
			if (whole && (from == 0 || (at < from && id + k >= from))) {
				char text[97];
				memcpy(text, buf + id, k);
				text[k] = '\0';
				log_rec(&(struct pl_rec){ .op = OP_ACK, .p1 = "imap", .p2 = text });
				found++;
			}
			i = id;
		}
	}
	return found;
}

static bool is_socket(int fd)
{
	struct stat st;
	int saved = errno;
	bool sock = fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
	errno = saved;
	return sock;
}

/* Scans what is about to be sent on fd (not a followed file). */
static void ack_check(int fd, const struct iovec *iov, int n)
{
	if (!g_active || fd_tracked(fd) || fd < 0 || n <= 0)
		return;
	bool any = false;
	for (int i = 0; i < n && !any; i++) {
		const unsigned char *b = iov[i].iov_base;
		if (b != NULL && iov[i].iov_len > 0 && (memmem(b, iov[i].iov_len, "Ok: queued as", 13) ||
					   memmem(b, iov[i].iov_len, "APPENDUID", 9)))
			any = true;
		if (i + 1 < n)
			any = true;     /* a match may straddle two segments */
	}
	if (!any || !is_socket(fd))
		return;
	for (int i = 0; i < n; i++) {
		if (iov[i].iov_base == NULL || iov[i].iov_len == 0)
			continue;
		ack_scan(iov[i].iov_base, iov[i].iov_len, 0);
		if (i + 1 < n && iov[i + 1].iov_base != NULL) {
			/* a window across the boundary: matches ending in the next segment */
			unsigned char w[256];
			size_t a = iov[i].iov_len < 128 ? iov[i].iov_len : 128;
			size_t b = iov[i + 1].iov_len < 128 ? iov[i + 1].iov_len : 128;
			memcpy(w, (const unsigned char *)iov[i].iov_base + iov[i].iov_len - a, a);
			memcpy(w + a, iov[i + 1].iov_base, b);
			/* only matches that start in the first part and end in the second */
			for (size_t k = 0; k < a; k++) {
				if (memcmp(w + k, SMTP_ACK, a - k < sizeof(SMTP_ACK) - 1 ? a - k : sizeof(SMTP_ACK) - 1) != 0 &&
				    memcmp(w + k, IMAP_ACK, a - k < sizeof(IMAP_ACK) - 1 ? a - k : sizeof(IMAP_ACK) - 1) != 0)
					continue;
				ack_scan(w + k, a + b - k, a - k);
				break;
			}
		}
	}
}

/* ---- wrappers: opening ------------------------------------------------- */

static mode_t va_mode(int flags, va_list ap)
{
	return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t mode = va_mode(flags, ap);
	va_end(ap);
	int fd = REAL(open)(path, flags, mode);
	fd_after_open(fd, AT_FDCWD, path, flags);
	return fd;
}

int open64(const char *path, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t mode = va_mode(flags, ap);
	va_end(ap);
	int fd = REAL(open64)(path, flags, mode);
	fd_after_open(fd, AT_FDCWD, path, flags);
	return fd;
}

int openat(int dirfd, const char *path, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t mode = va_mode(flags, ap);
	va_end(ap);
	int fd = REAL(openat)(dirfd, path, flags, mode);
	fd_after_open(fd, dirfd, path, flags);
	return fd;
}

int openat64(int dirfd, const char *path, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t mode = va_mode(flags, ap);
	va_end(ap);
	int fd = REAL(openat64)(dirfd, path, flags, mode);
	fd_after_open(fd, dirfd, path, flags);
	return fd;
}

int creat(const char *path, mode_t mode)
{
	int fd = REAL(creat)(path, mode);
	fd_after_open(fd, AT_FDCWD, path, O_CREAT | O_TRUNC | O_WRONLY);
	return fd;
}

int creat64(const char *path, mode_t mode)
{
	int fd = REAL(creat64)(path, mode);
	fd_after_open(fd, AT_FDCWD, path, O_CREAT | O_TRUNC | O_WRONLY);
	return fd;
}

DIR *opendir(const char *path)
{
	DIR *d = REAL(opendir)(path);
	if (d != NULL)
		fd_after_open(dirfd(d), AT_FDCWD, path, O_RDONLY | O_DIRECTORY);
	return d;
}

DIR *fdopendir(int fd)
{
	return REAL(fdopendir)(fd);     /* fd was followed when it was opened */
}

int closedir(DIR *d)
{
	fd_forget(dirfd(d));
	return REAL(closedir)(d);
}

int close(int fd)
{
	fd_forget(fd);
	return REAL(close)(fd);
}

int dup(int fd)
{
	int r = REAL(dup)(fd);
	if (r >= 0)
		fd_copy(fd, r);
	return r;
}

int dup2(int fd, int to)
{
	int r = REAL(dup2)(fd, to);
	if (r >= 0 && fd != to)
		fd_copy(fd, r);
	return r;
}

int dup3(int fd, int to, int flags)
{
	int r = REAL(dup3)(fd, to, flags);
	if (r >= 0)
		fd_copy(fd, r);
	return r;
}

/* ---- wrappers: data ---------------------------------------------------- */

/* One write of any kind; the record is logged after it succeeds, with
 * the bytes actually written.  positional: at off, else at the current
 * position (O_APPEND descriptors, and RWF_APPEND, log offset -1: the end). */
static ssize_t wr_vec(int fd, const struct iovec *iov, int n, off_t off, bool positional,
		      ssize_t (*call)(int, const struct iovec *, int, off_t, int, void *), void *ctx)
{
	if (!fd_tracked(fd)) {
		ack_check(fd, iov, n);
		return call(fd, iov, n, off, 0, ctx);
	}
	int saved = errno;
	off_t at = positional ? off : lseek(fd, 0, SEEK_CUR);
	errno = saved;
	ssize_t w = call(fd, iov, n, off, 0, ctx);
	if (ctx != NULL && (*(int *)ctx & RWF_APPEND))
		at = -1;
	if (w > 0)
		fd_log(fd, (struct pl_rec){ .op = OP_WRITE, .off = at, .data = iov, .ndata = n, .dlen = (size_t)w });
	return w;
}

static ssize_t call_write(int fd, const struct iovec *iov, int n, off_t off, int f, void *ctx)
{
	(void)n, (void)off, (void)f, (void)ctx;
	return REAL(write)(fd, iov[0].iov_base, iov[0].iov_len);
}

static ssize_t call_writev(int fd, const struct iovec *iov, int n, off_t off, int f, void *ctx)
{
	(void)off, (void)f, (void)ctx;
	return REAL(writev)(fd, iov, n);
}

static ssize_t call_pwrite(int fd, const struct iovec *iov, int n, off_t off, int f, void *ctx)
{
	(void)n, (void)f, (void)ctx;
	return REAL(pwrite64)(fd, iov[0].iov_base, iov[0].iov_len, off);
}

static ssize_t call_pwritev(int fd, const struct iovec *iov, int n, off_t off, int f, void *ctx)
{
	(void)f;
	int flags = ctx ? *(int *)ctx : 0;
	return REAL(pwritev64v2)(fd, iov, n, off, flags);
}

ssize_t write(int fd, const void *buf, size_t len)
{
	struct iovec v = { (void *)buf, len };
	return wr_vec(fd, &v, 1, 0, false, call_write, NULL);
}

ssize_t writev(int fd, const struct iovec *iov, int n)
{
	return wr_vec(fd, iov, n, 0, false, call_writev, NULL);
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off)
{
	struct iovec v = { (void *)buf, len };
	return wr_vec(fd, &v, 1, off, true, call_pwrite, NULL);
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off64_t off)
{
	struct iovec v = { (void *)buf, len };
	return wr_vec(fd, &v, 1, off, true, call_pwrite, NULL);
}

ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t off)
{
	int flags = 0;
	return wr_vec(fd, iov, n, off, true, call_pwritev, &flags);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int n, off64_t off)
{
	int flags = 0;
	return wr_vec(fd, iov, n, off, true, call_pwritev, &flags);
}

ssize_t pwritev2(int fd, const struct iovec *iov, int n, off_t off, int flags)
{
	/* offset -1: the current position, as writev */
	return wr_vec(fd, iov, n, off, off != -1, call_pwritev, &flags);
}

ssize_t pwritev64v2(int fd, const struct iovec *iov, int n, off64_t off, int flags)
{
	return wr_vec(fd, iov, n, off, off != -1, call_pwritev, &flags);
}

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
	struct iovec v = { (void *)buf, len };
	ack_check(fd, &v, 1);
	return REAL(send)(fd, buf, len, flags);
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *to, socklen_t tolen)
{
	struct iovec v = { (void *)buf, len };
	ack_check(fd, &v, 1);
	return REAL(sendto)(fd, buf, len, flags, to, tolen);
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	if (msg != NULL && msg->msg_iovlen > 0 && msg->msg_iovlen <= INT_MAX)
		ack_check(fd, msg->msg_iov, (int)msg->msg_iovlen);
	return REAL(sendmsg)(fd, msg, flags);
}

static int trunc_fd(int fd, off_t len, int r)
{
	if (r == 0 && fd_tracked(fd))
		fd_log(fd, (struct pl_rec){ .op = OP_TRUNCATE, .off = len });
	return r;
}

int ftruncate(int fd, off_t len)
{
	return trunc_fd(fd, len, REAL(ftruncate64)(fd, len));
}

int ftruncate64(int fd, off64_t len)
{
	return trunc_fd(fd, len, REAL(ftruncate64)(fd, len));
}

static int trunc_path(const char *path, off_t len, int r)
{
	char rel[PATH_MAX];
	bool unknown;
	if (r == 0 && g_active && path_rel(AT_FDCWD, path, rel, sizeof(rel), &unknown) && !is_shm(rel))
		log_rec(&(struct pl_rec){ .op = OP_TRUNCATE, .off = len, .p1 = rel, .aux = 1 });
	return r;
}

int truncate(const char *path, off_t len)
{
	return trunc_path(path, len, REAL(truncate64)(path, len));
}

int truncate64(const char *path, off64_t len)
{
	return trunc_path(path, len, REAL(truncate64)(path, len));
}

static int falloc_log(int fd, int mode, off_t off, off_t len, int r)
{
	if (r == 0 && fd_tracked(fd))
		fd_log(fd, (struct pl_rec){ .op = OP_FALLOCATE, .off = off, .len = len, .aux = (uint32_t)mode });
	return r;
}

int fallocate(int fd, int mode, off_t off, off_t len)
{
	return falloc_log(fd, mode, off, len, REAL(fallocate64)(fd, mode, off, len));
}

int fallocate64(int fd, int mode, off64_t off, off64_t len)
{
	return falloc_log(fd, mode, off, len, REAL(fallocate64)(fd, mode, off, len));
}

int posix_fallocate(int fd, off_t off, off_t len)
{
	return falloc_log(fd, 0, off, len, REAL(posix_fallocate64)(fd, off, len));
}

int posix_fallocate64(int fd, off64_t off, off64_t len)
{
	return falloc_log(fd, 0, off, len, REAL(posix_fallocate64)(fd, off, len));
}

/* ---- wrappers: syncs ----------------------------------------------------- */

static int sync_fd(int fd, bool data_only)
{
	int (*call)(int) = data_only ? REAL(fdatasync) : REAL(fsync);
	if (!fd_tracked(fd))
		return call(fd);
	uint32_t aux = data_only ? SYNC_DATA_ONLY : 0;
	uint64_t begin = fd_log(fd, (struct pl_rec){ .op = OP_SYNC_BEGIN, .aux = aux });
	int r = call(fd);
	if (r == 0 && fd_tracked(fd))
		fd_log(fd, (struct pl_rec){ .op = OP_SYNC_END, .off = (int64_t)begin, .aux = aux });
	return r;
}

int fsync(int fd)
{
	return sync_fd(fd, false);
}

int fdatasync(int fd)
{
	return sync_fd(fd, true);
}

/* ---- wrappers: names ----------------------------------------------------- */

/* Logs a one-path operation that succeeded (r == 0). */
static int name_op(enum pl_op op, int dirfd, const char *path, int r)
{
	char rel[PATH_MAX];
	bool unknown;
	if (r != 0 || !g_active)
		return r;
	if (path_rel(dirfd, path, rel, sizeof(rel), &unknown)) {
		if (!is_shm(rel))
			log_rec(&(struct pl_rec){ .op = op, .p1 = rel });
	} else if (unknown) {
		log_untracked("name operation relative to an unknown directory descriptor", path);
	}
	return r;
}

/* rename or link: both names inside is the operation; a move out of the
 * directory is an unlink; anything coming in from outside is untracked. */
static int two_op(enum pl_op op, int fd1, const char *p1, int fd2, const char *p2, unsigned flags, int r)
{
	char r1[PATH_MAX], r2[PATH_MAX];
	bool u1, u2;
	if (r != 0 || !g_active)
		return r;
	bool in1 = path_rel(fd1, p1, r1, sizeof(r1), &u1);
	bool in2 = path_rel(fd2, p2, r2, sizeof(r2), &u2);
	if (u1 || u2)
		log_untracked("rename/link relative to an unknown directory descriptor", p1);
	else if (in1 && in2)
		log_rec(&(struct pl_rec){ .op = op, .aux = flags, .p1 = r1, .p2 = r2 });
	else if (in1 && op == OP_RENAME)
		log_rec(&(struct pl_rec){ .op = OP_UNLINK, .p1 = r1 });
	else if (in2)
		log_untracked("rename/link into the directory from outside", p2);
	return r;
}

int rename(const char *a, const char *b)
{
	return two_op(OP_RENAME, AT_FDCWD, a, AT_FDCWD, b, 0, REAL(rename)(a, b));
}

int renameat(int fa, const char *a, int fb, const char *b)
{
	return two_op(OP_RENAME, fa, a, fb, b, 0, REAL(renameat)(fa, a, fb, b));
}

int renameat2(int fa, const char *a, int fb, const char *b, unsigned int flags)
{
	return two_op(OP_RENAME, fa, a, fb, b, flags, REAL(renameat2)(fa, a, fb, b, flags));
}

int link(const char *a, const char *b)
{
	return two_op(OP_LINK, AT_FDCWD, a, AT_FDCWD, b, 0, REAL(link)(a, b));
}

int linkat(int fa, const char *a, int fb, const char *b, int flags)
{
	return two_op(OP_LINK, fa, a, fb, b, (unsigned)flags, REAL(linkat)(fa, a, fb, b, flags));
}

int unlink(const char *path)
{
	return name_op(OP_UNLINK, AT_FDCWD, path, REAL(unlink)(path));
}

int unlinkat(int dirfd, const char *path, int flags)
{
	enum pl_op op = (flags & AT_REMOVEDIR) ? OP_RMDIR : OP_UNLINK;
	return name_op(op, dirfd, path, REAL(unlinkat)(dirfd, path, flags));
}

int rmdir(const char *path)
{
	return name_op(OP_RMDIR, AT_FDCWD, path, REAL(rmdir)(path));
}

int mkdir(const char *path, mode_t mode)
{
	return name_op(OP_MKDIR, AT_FDCWD, path, REAL(mkdir)(path, mode));
}

int mkdirat(int dirfd, const char *path, mode_t mode)
{
	return name_op(OP_MKDIR, dirfd, path, REAL(mkdirat)(dirfd, path, mode));
}
