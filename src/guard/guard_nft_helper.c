/*
 * guard_nft_helper.c - the small privileged process that runs nft for the
 * kernel mirror of the bans.
 *
 * Contract: see guard.h (guard_nft_helper_start).  Why a process and not a
 * thread that keeps CAP_NET_ADMIN: capabilities belong to threads, but a
 * capability kept in the daemon's permitted set could be raised again by
 * any code running in the daemon, and `nft` is a separate program that
 * would need it as an ambient capability.  A forked helper keeps the
 * daemon's drop complete (server_privilege_drop still proves that root
 * cannot be regained) and confines the capability to a process that
 * accepts only four fixed requests about Strata's own table.
 *
 * The helper: forked on the main thread before any other thread exists
 * and before the drop; closes every descriptor but its socket and stdio
 * (the listening sockets stay the daemon's alone); with change_user it
 * becomes the service user keeping only CAP_NET_ADMIN (permitted,
 * effective, inheritable and ambient, so the nft it runs has it too); asks
 * for SIGKILL when the daemon dies; ignores SIGINT, SIGTERM and SIGHUP (it
 * ends when the daemon closes the socket, after the daemon has had the
 * chance to delete its table).
 *
 * Protocol on the socket (a stream; both ends are this program):
 *   request: struct req_head { op, n } then n struct guard_nft_elem
 *            (n <= GUARD_NFT_BATCH; 0 for SETUP and DESTROY);
 *   answer:  struct ans_head { ok, len } then len bytes of nft's complaint
 *            (at most ANS_TEXT_MAX).
 * A malformed request ends the helper: only a broken daemon sends one.
 *
 * Each nft run gets NFT_RUN_LIMIT_MS; a run past it is killed.
 */
#include "guard_int.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#define NFT_RUN_LIMIT_MS 10000
#define ANS_TEXT_MAX 512
#define HELPER_STOP_WAIT_MS 5000
#define HELPER_FD 3

struct req_head {
	uint32_t op;
	uint32_t n;
};

struct ans_head {
	int32_t ok;
	uint32_t len;
};

static const char *const nft_paths[] = { "/usr/sbin/nft", "/sbin/nft" };

/* ---- I/O helpers (both ends) ---------------------------------------------------- */

static bool io_write_all(int fd, const void *p, size_t len)
{
	const uint8_t *b = p;
	while (len > 0) {
		ssize_t w = send(fd, b, len, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return false;
		b += w;
		len -= (size_t)w;
	}
	return true;
}

/* False at EOF or on an error (errno EAGAIN: the receive timeout). */
static bool io_read_all(int fd, void *p, size_t len)
{
	uint8_t *b = p;
	while (len > 0) {
		ssize_t r = recv(fd, b, len, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return false;
		b += r;
		len -= (size_t)r;
	}
	return true;
}

/* ---- the daemon's end ---------------------------------------------------------------- */

bool guard_nft_helper_call(struct guard_nft_helper *h, enum guard_nft_op op, const struct guard_nft_elem *e,
			   size_t n, char **error_r)
{
	struct req_head rq = { (uint32_t)op, (uint32_t)n };
	struct ans_head an;
	char text[ANS_TEXT_MAX + 1];
	if (h->fd < 0 || !io_write_all(h->fd, &rq, sizeof(rq)) ||
	    (n > 0 && !io_write_all(h->fd, e, n * sizeof(*e))) || !io_read_all(h->fd, &an, sizeof(an)) ||
	    an.len > ANS_TEXT_MAX || !io_read_all(h->fd, text, an.len)) {
		/* Gone, or silent past every bound: the stream may be out of step,
		 * so it is closed (the helper exits on EOF) and never used again. */
		if (h->fd >= 0)
			close(h->fd);
		h->fd = -1;
		*error_r = xstrdup("the nft helper process is gone");
		return false;
	}
	text[an.len] = '\0';
	if (!an.ok)
		*error_r = xstrdup(text[0] ? text : "nft failed");
	return an.ok != 0;
}

void guard_nft_helper_stop(struct guard_nft_helper *h)
{
	if (h->fd >= 0)
		close(h->fd);
	h->fd = -1;
	if (h->pid <= 0)
		return;
	/* It sees EOF and exits; bounded wait, then SIGKILL. */
	for (int waited = 0;; waited += 10) {
		pid_t r = waitpid(h->pid, NULL, WNOHANG);
		if (r == h->pid || (r < 0 && errno != EINTR))
			break;
		if (waited >= HELPER_STOP_WAIT_MS) {
			kill(h->pid, SIGKILL);
			waitpid(h->pid, NULL, 0);
			break;
		}
		usleep(10000);
	}
	h->pid = -1;
}

/* ---- running nft (helper) --------------------------------------------------------------- */

/* Keeps the first line of nft's output in err (its complaint). */
static void first_line(const char *out, size_t len, char *err, size_t errlen)
{
	size_t n = 0;
	while (n < len && out[n] != '\n' && n + 1 < errlen) {
		err[n] = out[n] >= ' ' && out[n] < 0x7f ? out[n] : ' ';
		n++;
	}
	err[n] = '\0';
}

/* Feeds `script` to nft's stdin while reading its output (either could
 * fill a pipe), within `deadline`.  Returns the number of output bytes
 * kept, -1 when the time ran out. */
static ssize_t nft_pump(int in, int out, const char *script, size_t len, uint64_t deadline, char *keep,
			size_t keep_cap)
{
	size_t sent = 0, kept = 0;
	bool out_open = true;
	while (out_open) {
		uint64_t now = time_mono_ms();
		if (now >= deadline)
			return -1;
		struct pollfd p[2] = { { out, POLLIN, 0 }, { in, POLLOUT, 0 } };
		nfds_t np = in >= 0 ? 2 : 1;
		int r = poll(p, np, (int)(deadline - now));
		if (r < 0 && errno != EINTR)
			return -1;
		if (np == 2 && (p[1].revents & (POLLOUT | POLLERR | POLLHUP))) {
			ssize_t w = write(in, script + sent, len - sent);
			if (w > 0)
				sent += (size_t)w;
			if (w < 0 && errno != EAGAIN && errno != EINTR)
				sent = len;   /* nft is gone: its exit status tells */
			if (sent == len) {
				close(in);
				in = -1;
			}
		}
		if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
			char buf[1024];
			ssize_t rd = read(out, buf, sizeof(buf));
			if (rd <= 0 && !(rd < 0 && (errno == EINTR || errno == EAGAIN)))
				out_open = false;
			for (ssize_t i = 0; i < rd && kept < keep_cap; i++)
				keep[kept++] = buf[i];
		}
	}
	if (in >= 0)
		close(in);
	return (ssize_t)kept;
}

static bool nft_run(const char *nft, const char *script, size_t len, char *err, size_t errlen)
{
	int in[2], out[2];
	if (pipe2(in, O_CLOEXEC) != 0)
		goto fail_errno;
	if (pipe2(out, O_CLOEXEC) != 0) {
		close(in[0]);
		close(in[1]);
		goto fail_errno;
	}
	pid_t pid = fork();
	if (pid == 0) {
		if (dup2(in[0], 0) < 0 || dup2(out[1], 1) < 0 || dup2(out[1], 2) < 0)
			_exit(126);
		execl(nft, "nft", "-f", "-", (char *)NULL);
		_exit(127);
	}
	int saved = errno;
	close(in[0]);
	close(out[1]);
	if (pid < 0) {
		close(in[1]);
		close(out[0]);
		errno = saved;
		goto fail_errno;
	}
	fcntl(in[1], F_SETFL, O_NONBLOCK);
	char keep[ANS_TEXT_MAX];
	ssize_t kept = nft_pump(in[1], out[0], script, len, time_mono_ms() + NFT_RUN_LIMIT_MS, keep, sizeof(keep));
	close(out[0]);
	if (kept < 0)
		kill(pid, SIGKILL);
	int st = 0;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (kept < 0) {
		snprintf(err, errlen, "nft did not finish within %d s", NFT_RUN_LIMIT_MS / 1000);
		return false;
	}
	if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
		return true;
	if (WIFEXITED(st) && WEXITSTATUS(st) == 127)
		snprintf(err, errlen, "cannot run %s", nft);
	else
		first_line(keep, (size_t)kept, err, errlen);
	if (err[0] == '\0')
		snprintf(err, errlen, "nft failed (status %d)", st);
	return false;
fail_errno:
	snprintf(err, errlen, "cannot run nft: %s", strerror(errno));
	return false;
}

/* ---- the helper process ---------------------------------------------------------------------- */

/* The service user with CAP_NET_ADMIN only (permitted, effective,
 * inheritable, ambient: the nft it runs gets it too).  "" or the error. */
static void helper_drop(uid_t uid, gid_t gid, char *err, size_t errlen)
{
	struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct data[2];
	memset(data, 0, sizeof(data));
	data[0].effective = data[0].permitted = data[0].inheritable = 1u << CAP_NET_ADMIN;
	if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 || setgroups(0, NULL) != 0 || setgid(gid) != 0 ||
	    setuid(uid) != 0)
		snprintf(err, errlen, "cannot become the service user keeping CAP_NET_ADMIN: %s", strerror(errno));
	else if (syscall(SYS_capset, &hdr, data) != 0)
		snprintf(err, errlen, "cannot keep CAP_NET_ADMIN (capset): %s", strerror(errno));
	else if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_ADMIN, 0, 0) != 0)
		snprintf(err, errlen, "cannot pass CAP_NET_ADMIN to nft (ambient): %s", strerror(errno));
	else if (setuid(0) == 0)
		snprintf(err, errlen, "root could be regained; refusing to run nft");
	else
		err[0] = '\0';
}

static bool helper_valid(const struct req_head *rq, const struct guard_nft_elem *e)
{
	for (uint32_t i = 0; i < rq->n; i++) {
		if (e[i].family != 4 && e[i].family != 6)
			return false;
		if (rq->op == GUARD_NFT_ADD && (e[i].timeout_s == 0 || e[i].timeout_s > GUARD_NFT_MAX_TIMEOUT_S))
			return false;
		if (e[i].family == 4) {
			for (int k = 4; k < 16; k++) {
				if (e[i].b[k] != 0)
					return false;
			}
		}
	}
	return true;
}

static void helper_loop(const struct guard_nft_names *nm, const char *priv_err)
{
	const char *nft = NULL;
	for (size_t i = 0; i < ARRAY_LEN(nft_paths) && nft == NULL; i++) {
		if (access(nft_paths[i], X_OK) == 0)
			nft = nft_paths[i];
	}
	struct guard_nft_elem *e = xcalloc(GUARD_NFT_BATCH, sizeof(*e));
	for (;;) {
		struct req_head rq;
		if (!io_read_all(HELPER_FD, &rq, sizeof(rq)))
			break;   /* the daemon closed its end */
		bool with_elems = rq.op == GUARD_NFT_ADD || rq.op == GUARD_NFT_DEL;
		if (rq.op < GUARD_NFT_SETUP || rq.op > GUARD_NFT_DESTROY || rq.n > GUARD_NFT_BATCH ||
		    (!with_elems && rq.n != 0) || (rq.n > 0 && !io_read_all(HELPER_FD, e, rq.n * sizeof(*e))) ||
		    !helper_valid(&rq, e))
			break;
		char err[ANS_TEXT_MAX] = "";
		bool ok = false;
		if (priv_err[0] != '\0') {
			snprintf(err, sizeof(err), "%s", priv_err);
		} else if (nft == NULL) {
			snprintf(err, sizeof(err), "nft is not installed (Debian package nftables)");
		} else {
			struct buf script = BUF_INIT;
			guard_nft_script(nm, (enum guard_nft_op)rq.op, e, rq.n, &script);
			ok = script.len == 0 || nft_run(nft, script.data, script.len, err, sizeof(err));
			buf_free(&script);
		}
		struct ans_head an = { ok ? 1 : 0, ok ? 0 : (uint32_t)strlen(err) };
		if (!io_write_all(HELPER_FD, &an, sizeof(an)) || !io_write_all(HELPER_FD, err, an.len))
			break;
	}
	free(e);
}

ATTR_NORETURN static void helper_main(const struct guard_nft_names *nm, int sock, pid_t parent, bool change_user,
				       uid_t uid, gid_t gid)
{
	signal(SIGINT, SIG_IGN);
	signal(SIGTERM, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	if (sock != HELPER_FD) {
		if (dup2(sock, HELPER_FD) < 0)
			_exit(1);
		fcntl(HELPER_FD, F_SETFD, FD_CLOEXEC);
	}
	/* Listening sockets, the event loop's descriptors: the daemon's alone. */
	if (syscall(SYS_close_range, HELPER_FD + 1, ~0u, 0) != 0) {
		for (int fd = HELPER_FD + 1; fd < 65536; fd++)
			close(fd);
	}
	char priv_err[256] = "";
	if (change_user)
		helper_drop(uid, gid, priv_err, sizeof(priv_err));
	/* After the credential change, which clears it; then the race with a
	 * daemon that died before this line. */
	prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
	if (getppid() != parent)
		_exit(0);
	prctl(PR_SET_NAME, "strata-nft", 0, 0, 0);
	helper_loop(nm, priv_err);
	_exit(0);
}

bool guard_nft_helper_start(const struct settings *s, const uint16_t *listener_ports, size_t n_listener_ports,
			    bool change_user, uid_t uid, gid_t gid, struct guard_nft_helper *out, char **error_r)
{
	out->fd = -1;
	out->pid = -1;
	if (!guard_nft_names_parse(s, listener_ports, n_listener_ports, &out->names, error_r))
		return false;
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
		*error_r = xasprintf("cannot start the nft helper: socketpair: %s", strerror(errno));
		return false;
	}
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid < 0) {
		*error_r = xasprintf("cannot start the nft helper: fork: %s", strerror(errno));
		close(sv[0]);
		close(sv[1]);
		return false;
	}
	if (pid == 0) {
		close(sv[0]);
		helper_main(&out->names, sv[1], parent, change_user, uid, gid);
	}
	close(sv[1]);
	/* Every nft run is bounded; a helper silent far longer than that is stuck. */
	struct timeval tv = { (NFT_RUN_LIMIT_MS / 1000) * 3, 0 };
	setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(sv[0], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	out->fd = sv[0];
	out->pid = (int)pid;
	return true;
}
