/*
 * core_fs.c - the durable-write sequence and its fault points.
 *
 * Durability contract (the one place it is implemented):
 *   1. write the whole content to a temp file opened O_EXCL in the target
 *      directory (same filesystem, so rename is atomic);
 *   2. fsync(2) the file;  3. close(2) and check its result;
 *   4. rename(2) onto the final name;  5. fsync(2) the directory.
 * Only after step 5 may the caller tell anyone the file exists (a 250 reply,
 * an index row).  Skipping step 5 loses the directory entry on power loss on
 * several filesystems (see SQLite's os_unix.c); we never skip it.
 *
 * Fault points: tests set STRATA_FAULT="op:nth:errno[:repeat]" so the nth
 * call of an operation fails with errno (and every later one, with repeat).
 * The check is one relaxed atomic load when no fault is armed.
 */
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct fault {
	_Atomic uint64_t calls;
	uint64_t nth;   /* 0 = disarmed */
	int err;
	bool repeat;
};
static struct fault g_faults[FS_OP__COUNT];
static _Atomic bool g_faults_armed;

static const char *const op_names[FS_OP__COUNT] = { "write", "fsync", "rename", "open", "fsync_dir" };

void fs_fault_set(enum fs_fault_op op, uint64_t nth, int err, bool repeat)
{
	g_faults[op].nth = nth;
	g_faults[op].err = err;
	g_faults[op].repeat = repeat;
	atomic_store(&g_faults[op].calls, 0);
	atomic_store(&g_faults_armed, true);
}

void fs_fault_init_from_env(void)
{
	const char *spec = getenv("STRATA_FAULT");
	if (spec == NULL || *spec == '\0')
		return;
	char *copy = xstrdup(spec), *save = NULL;
	for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char name[16];
		unsigned long long nth;
		int err;
		char rep[16] = "";
		int n = sscanf(tok, "%15[a-z_]:%llu:%d:%15s", name, &nth, &err, rep);
		if (n < 3) {
			log_warn("STRATA_FAULT: ignoring malformed entry '%s'", tok);
			continue;
		}
		for (int op = 0; op < FS_OP__COUNT; op++) {
			if (strcmp(name, op_names[op]) == 0) {
				fs_fault_set((enum fs_fault_op)op, nth, err, strcmp(rep, "repeat") == 0);
				log_warn("fault injection armed: %s call %llu fails with errno %d%s", name,
					 nth, err, rep[0] ? " (repeating)" : "");
			}
		}
	}
	free(copy);
}

int fs_fault_check(enum fs_fault_op op)
{
	if (!atomic_load_explicit(&g_faults_armed, memory_order_relaxed))
		return 0;
	struct fault *f = &g_faults[op];
	if (f->nth == 0)
		return 0;
	uint64_t n = atomic_fetch_add(&f->calls, 1) + 1;
	if (n == f->nth || (f->repeat && n > f->nth))
		return f->err;
	return 0;
}

static bool inject(enum fs_fault_op op)
{
	int err = fs_fault_check(op);
	if (err) {
		errno = err;
		return true;
	}
	return false;
}

int fs_open_temp(const char *dir, char *path_out, size_t path_len)
{
	if (inject(FS_OP_OPEN))
		return -1;
	for (int attempt = 0; attempt < 16; attempt++) {
		uint8_t rnd[8];
		random_bytes(rnd, sizeof(rnd));
		int n = snprintf(path_out, path_len, "%s/.tmp.%02x%02x%02x%02x%02x%02x%02x%02x", dir,
				 rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
		if (n < 0 || (size_t)n >= path_len) {
			errno = ENAMETOOLONG;
			return -1;
		}
		int fd = open(path_out, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd >= 0 || errno != EEXIST)
			return fd;
	}
	errno = EEXIST;
	return -1;
}

bool fs_write_all(int fd, const void *data, size_t len)
{
	const char *p = data;
	while (len > 0) {
		if (inject(FS_OP_WRITE))
			return false;
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return false;
		}
		p += n;
		len -= (size_t)n;
	}
	return true;
}

bool fs_fsync(int fd)
{
	if (inject(FS_OP_FSYNC))
		return false;
	while (fsync(fd) != 0) {
		if (errno != EINTR)
			return false;
	}
	return true;
}

bool fs_close(int fd)
{
	/* Linux closes the descriptor even when close() fails; never retry. */
	return close(fd) == 0 || errno == EINTR;
}

bool fs_fsync_dir(const char *dir)
{
	if (inject(FS_OP_FSYNC_DIR))
		return false;
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return false;
	bool ok = true;
	while (fsync(fd) != 0) {
		if (errno != EINTR) {
			ok = false;
			break;
		}
	}
	int saved = errno;
	close(fd);
	errno = saved;
	return ok;
}

void fs_dirname(const char *path, char *out, size_t outlen)
{
	const char *slash = strrchr(path, '/');
	if (slash == NULL) {
		snprintf(out, outlen, ".");
		return;
	}
	size_t n = (size_t)(slash - path);
	if (n == 0)
		n = 1;
	snprintf(out, outlen, "%.*s", (int)n, path);
}

bool fs_rename_durable(const char *oldpath, const char *newpath)
{
	if (inject(FS_OP_RENAME))
		return false;
	if (rename(oldpath, newpath) != 0)
		return false;
	char d_new[4096], d_old[4096];
	fs_dirname(newpath, d_new, sizeof(d_new));
	fs_dirname(oldpath, d_old, sizeof(d_old));
	if (!fs_fsync_dir(d_new))
		return false;
	if (strcmp(d_new, d_old) != 0 && !fs_fsync_dir(d_old))
		return false;
	return true;
}

bool fs_write_file_durable(const char *path, const void *data, size_t len, mode_t mode)
{
	char dir[4096], tmp[4096];
	fs_dirname(path, dir, sizeof(dir));
	int fd = fs_open_temp(dir, tmp, sizeof(tmp));
	if (fd < 0)
		return false;
	int saved;
	if (!fs_write_all(fd, data, len) || fchmod(fd, mode) != 0 || !fs_fsync(fd)) {
		saved = errno;
		close(fd);
		unlink(tmp);
		errno = saved;
		return false;
	}
	if (!fs_close(fd) || inject(FS_OP_RENAME) || rename(tmp, path) != 0) {
		saved = errno;
		unlink(tmp);
		errno = saved;
		return false;
	}
	if (!fs_fsync_dir(dir)) {
		/* The entry may not survive a crash: report failure and take the
		 * file back so no caller ever sees a file we called failed. */
		saved = errno;
		unlink(path);
		fs_fsync_dir(dir);
		errno = saved;
		return false;
	}
	return true;
}

bool fs_mkdir_p(const char *path, mode_t mode)
{
	char tmp[4096];
	size_t len = strlen(path);
	if (len == 0 || len >= sizeof(tmp)) {
		errno = ENAMETOOLONG;
		return false;
	}
	memcpy(tmp, path, len + 1);
	for (size_t i = 1; i <= len; i++) {
		if (tmp[i] != '/' && tmp[i] != '\0')
			continue;
		char saved = tmp[i];
		tmp[i] = '\0';
		if (mkdir(tmp, mode) == 0) {
			char parent[4096];
			fs_dirname(tmp, parent, sizeof(parent));
			if (!fs_fsync_dir(parent))
				return false;
		} else if (errno != EEXIST) {
			return false;
		}
		tmp[i] = saved;
	}
	struct stat st;
	if (stat(path, &st) != 0)
		return false;
	if (!S_ISDIR(st.st_mode)) {
		errno = ENOTDIR;
		return false;
	}
	return true;
}

bool fs_read_file(const char *path, char **out, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	struct buf b = BUF_INIT;
	char chunk[65536];
	for (;;) {
		ssize_t n = read(fd, chunk, sizeof(chunk));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			int saved = errno;
			close(fd);
			buf_free(&b);
			errno = saved;
			return false;
		}
		if (n == 0)
			break;
		buf_append(&b, chunk, (size_t)n);
	}
	close(fd);
	*len = b.len;
	*out = buf_steal(&b);
	return true;
}
