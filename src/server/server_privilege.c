/*
 * server_privilege.c - running as the unprivileged service user.
 *
 * Owns: looking up `user`, handing the files Strata made to it, and the
 * switch itself (setgroups, setgid, setuid, then proof that root cannot be
 * regained).  Only used when `strata serve` starts as root; started as any
 * other user the daemon stays that user.
 *
 * What is chowned (never a recursive walk: a blob tree holds millions of
 * files, and the files themselves are created by the daemon, i.e. already by
 * the service user):
 *   state_dir itself;
 *   the index file and its -wal and -shm companions (the CLI run as root
 *   may have created them while the daemon was stopped);
 *   the blob directory, blob_dir/tmp, and blob_dir's first two directory
 *   levels, but only below a first-level directory whose owner is wrong;
 *   tls/, tls/cert.pem and tls/key.pem when the certificate is the derived
 *   default (a configured certificate is the administrator's: untouched).
 * Modes are left as they are (the key stays 0600).
 *
 * Trust boundary: the path TO state_dir is the administrator's (it may be a
 * symbolic link), but everything INSIDE it is writable by the service user,
 * who must not be able to make root chown something else.  So entries
 * inside are opened relative to their directory with O_NOFOLLOW, checked with
 * fstat on the open descriptor (a directory, or a regular file with one
 * link: a hard link to /etc/shadow is refused), and changed with fchown on
 * that same descriptor: nothing can be swapped between check and change.
 *
 * Threads: main thread, before any other thread exists (setuid must apply
 * to the whole process; glibc also broadcasts it, but there is nothing to
 * broadcast to yet).
 */
#include "server_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PRIV_PWBUF 16384

bool server_privilege_lookup(const char *user, struct server_user *u, char **error_r)
{
	struct passwd pwd, *pw = NULL;
	char *buf = xmalloc(PRIV_PWBUF);
	int rc = getpwnam_r(user, &pwd, buf, PRIV_PWBUF, &pw);
	bool ok = false;
	if (pw == NULL && rc != 0 && rc != ENOENT && rc != ESRCH)
		*error_r = xasprintf("cannot look up user '%s': %s", user, strerror(rc));
	else if (pw == NULL)
		*error_r = xasprintf("user '%s' (setting `user`) does not exist; create it with: "
				     "useradd --system --no-create-home --shell /usr/sbin/nologin %s",
				     user, user);
	else if (pw->pw_uid == 0)
		*error_r = xasprintf("user '%s' has uid 0; the daemon must run as an unprivileged "
				     "user (setting `user`)", user);
	else if (strlen(user) >= sizeof(u->name))
		*error_r = xasprintf("user name '%s' is too long", user);
	else
		ok = true;
	if (ok) {
		u->uid = pw->pw_uid;
		u->gid = pw->pw_gid;
		snprintf(u->name, sizeof(u->name), "%s", user);
	}
	free(buf);
	return ok;
}

bool server_privilege_check_state_dir(const struct settings *s, char **error_r)
{
	struct stat st;
	if (stat(s->state_dir, &st) != 0) {
		*error_r = xasprintf("state_dir %s: %s", s->state_dir, strerror(errno));
		return false;
	}
	if (!S_ISDIR(st.st_mode)) {
		*error_r = xasprintf("state_dir %s is not a directory", s->state_dir);
		return false;
	}
	if (st.st_mode & S_IWOTH) {
		*error_r = xasprintf("state_dir %s is writable by every user; use a directory of its own "
				     "(e.g. /var/lib/strata)", s->state_dir);
		return false;
	}
	return true;
}

/* ---- chown, without following anything the service user controls ------- */

/* Checks the type of an open descriptor and gives it to u. */
static bool priv_chown_fd(int fd, const char *display, bool is_dir, const struct server_user *u,
			  char **error_r)
{
	struct stat st;
	if (fstat(fd, &st) != 0) {
		*error_r = xasprintf("cannot stat %s: %s", display, strerror(errno));
		return false;
	}
	if (is_dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode)) {
		*error_r = xasprintf("%s is not a %s; refusing to change its owner", display,
				     is_dir ? "directory" : "regular file");
		return false;
	}
	if (!is_dir && st.st_nlink != 1) {
		*error_r = xasprintf("%s has %ju hard links; refusing to change its owner", display,
				     (uintmax_t)st.st_nlink);
		return false;
	}
	if (st.st_uid == u->uid && st.st_gid == u->gid)
		return true;
	if (fchown(fd, u->uid, u->gid) != 0) {
		*error_r = xasprintf("cannot give %s to user %s: %s", display, u->name, strerror(errno));
		return false;
	}
	return true;
}

/*
 * Opens `name` in `dirfd` without following a symbolic link and chowns it.
 * A missing entry is fine (nothing to fix).  With fd_r, the descriptor is
 * returned (or -1 when missing) for descending into a directory.
 */
static bool priv_chown_at(int dirfd, const char *dir_display, const char *name, bool is_dir,
			  const struct server_user *u, int *fd_r, char **error_r)
{
	char display[4200];
	snprintf(display, sizeof(display), "%s/%s", dir_display, name);
	if (fd_r)
		*fd_r = -1;
	int flags = O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY | (is_dir ? O_DIRECTORY : 0);
	int fd = openat(dirfd, name, flags);
	if (fd < 0) {
		if (errno == ENOENT)
			return true;
		if (errno == ELOOP || errno == ENOTDIR)
			*error_r = xasprintf("%s is a symbolic link or not a %s; refusing to use it", display,
					     is_dir ? "directory" : "regular file");
		else
			*error_r = xasprintf("cannot open %s: %s", display, strerror(errno));
		return false;
	}
	bool ok = priv_chown_fd(fd, display, is_dir, u, error_r);
	if (ok && fd_r)
		*fd_r = fd;
	else
		close(fd);
	return ok;
}

/* Opens directory `dir`: by path when it is state_dir or outside it (the
 * administrator's path), component by component with O_NOFOLLOW when it is
 * inside state_dir (the service user's tree).  -1 with errno on failure. */
static int priv_open_dir(const char *state_dir, int state_fd, const char *dir)
{
	size_t sl = strlen(state_dir);
	while (sl > 1 && state_dir[sl - 1] == '/')
		sl--;
	if (strncmp(dir, state_dir, sl) != 0 || (dir[sl] != '/' && dir[sl] != '\0'))
		return open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int fd = dup(state_fd);
	char *rest = xstrdup(dir + sl), *save = NULL;
	for (char *c = strtok_r(rest, "/", &save); fd >= 0 && c; c = strtok_r(NULL, "/", &save)) {
		int next = openat(fd, c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		int saved = errno;
		close(fd);
		errno = saved;
		fd = next;
	}
	free(rest);
	return fd;
}

/* Chowns `path` (and, for the index, its -wal/-shm companions). */
static bool priv_chown_path(const char *state_dir, int state_fd, const char *path, bool is_dir,
			    const char *const *suffixes, const struct server_user *u, int *fd_r,
			    char **error_r)
{
	char dir[4096];
	fs_dirname(path, dir, sizeof(dir));
	const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
	if (fd_r)
		*fd_r = -1;
	if (*base == '\0')
		return true; /* a path ending in '/': nothing of ours to chown */
	int dfd = priv_open_dir(state_dir, state_fd, dir);
	if (dfd < 0) {
		if (errno == ENOENT)
			return true;
		*error_r = xasprintf("cannot open %s: %s", dir, strerror(errno));
		return false;
	}
	bool ok = priv_chown_at(dfd, dir, base, is_dir, u, fd_r, error_r);
	for (size_t i = 0; ok && suffixes && suffixes[i]; i++) {
		char name[1024];
		snprintf(name, sizeof(name), "%s%s", base, suffixes[i]);
		ok = priv_chown_at(dfd, dir, name, false, u, NULL, error_r);
	}
	close(dfd);
	return ok;
}

/* Directories of the blob tree: <blob_dir>/tmp, then each first-level
 * directory, and the second level only under a first-level directory whose
 * owner was wrong (the daemon makes them as the service user, so a right
 * first level means its children are right too). */
static bool priv_chown_blob_levels(int blob_fd, const char *blob_dir, const struct server_user *u,
				   char **error_r)
{
	if (!priv_chown_at(blob_fd, blob_dir, "tmp", true, u, NULL, error_r))
		return false;
	int scan_fd = dup(blob_fd);
	DIR *d = scan_fd >= 0 ? fdopendir(scan_fd) : NULL;
	if (d == NULL) {
		if (scan_fd >= 0)
			close(scan_fd);
		*error_r = xasprintf("cannot list %s: %s", blob_dir, strerror(errno));
		return false;
	}
	bool ok = true;
	struct dirent *e;
	while (ok && (e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.' || strcmp(e->d_name, "tmp") == 0)
			continue;
		struct stat st;
		if (fstatat(blob_fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISDIR(st.st_mode) ||
		    (st.st_uid == u->uid && st.st_gid == u->gid))
			continue;
		char l1_display[4200];
		snprintf(l1_display, sizeof(l1_display), "%s/%s", blob_dir, e->d_name);
		int l1;
		ok = priv_chown_at(blob_fd, blob_dir, e->d_name, true, u, &l1, error_r);
		if (!ok || l1 < 0)
			continue;
		DIR *d2 = fdopendir(l1);
		if (d2 == NULL) {
			close(l1);
			continue;
		}
		struct dirent *e2;
		while (ok && (e2 = readdir(d2)) != NULL) {
			if (e2->d_name[0] == '.')
				continue;
			if (fstatat(dirfd(d2), e2->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
			    S_ISDIR(st.st_mode))
				ok = priv_chown_at(dirfd(d2), l1_display, e2->d_name, true, u, NULL, error_r);
		}
		closedir(d2);
	}
	closedir(d);
	return ok;
}

static bool priv_tls_is_default(const struct settings *s)
{
	char *cert = xasprintf("%s/tls/cert.pem", s->state_dir);
	char *key = xasprintf("%s/tls/key.pem", s->state_dir);
	bool def = strcmp(cert, s->tls_cert_file) == 0 && strcmp(key, s->tls_key_file) == 0;
	free(cert);
	free(key);
	return def;
}

bool server_privilege_chown_state(const struct settings *s, const struct server_user *u,
				  char **error_r)
{
	int state_fd = open(s->state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (state_fd < 0) {
		*error_r = xasprintf("cannot open state_dir %s: %s", s->state_dir, strerror(errno));
		return false;
	}
	static const char *const index_suffixes[] = { "-wal", "-shm", "-journal", NULL };
	bool ok = priv_chown_fd(state_fd, s->state_dir, true, u, error_r) &&
		  priv_chown_path(s->state_dir, state_fd, s->store_index_path, false, index_suffixes, u,
				  NULL, error_r);
	int blob_fd = -1;
	if (ok)
		ok = priv_chown_path(s->state_dir, state_fd, s->store_blob_dir, true, NULL, u, &blob_fd,
				     error_r);
	if (ok && blob_fd >= 0)
		ok = priv_chown_blob_levels(blob_fd, s->store_blob_dir, u, error_r);
	if (blob_fd >= 0)
		close(blob_fd);
	if (ok && priv_tls_is_default(s)) {
		int tls_fd = -1;
		ok = priv_chown_at(state_fd, s->state_dir, "tls", true, u, &tls_fd, error_r);
		if (ok && tls_fd >= 0) {
			char *tls_dir = xasprintf("%s/tls", s->state_dir);
			ok = priv_chown_at(tls_fd, tls_dir, "cert.pem", false, u, NULL, error_r) &&
			     priv_chown_at(tls_fd, tls_dir, "key.pem", false, u, NULL, error_r);
			free(tls_dir);
		}
		if (tls_fd >= 0)
			close(tls_fd);
	}
	close(state_fd);
	return ok;
}

bool server_privilege_drop(const struct server_user *u, char **error_r)
{
	if (setgroups(0, NULL) != 0) {
		*error_r = xasprintf("setgroups: %s", strerror(errno));
		return false;
	}
	if (setgid(u->gid) != 0) {
		*error_r = xasprintf("setgid(%u): %s", (unsigned)u->gid, strerror(errno));
		return false;
	}
	if (setuid(u->uid) != 0) {
		*error_r = xasprintf("setuid(%u) for user %s: %s", (unsigned)u->uid, u->name, strerror(errno));
		return false;
	}
	/* Proof, not trust: every id must be the user's and root must be gone
	 * for good (a saved set-user-ID of 0 would let setuid(0) succeed). */
	uid_t ruid, euid, suid;
	gid_t rgid, egid, sgid;
	if (setuid(0) == 0 || getresuid(&ruid, &euid, &suid) != 0 || getresgid(&rgid, &egid, &sgid) != 0 ||
	    ruid != u->uid || euid != u->uid || suid != u->uid || rgid != u->gid || egid != u->gid ||
	    sgid != u->gid) {
		*error_r = xasprintf("privileges were not fully dropped to user %s; refusing to continue",
				     u->name);
		return false;
	}
	return true;
}
