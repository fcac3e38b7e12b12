/*
 * cli_common.c - what every `strata` command shares: error output, config
 * loading, the privilege rule and store opening, password input, option
 * parsing and number formatting.
 *
 * Privileges: admin commands may run as root, but files the daemon uses
 * must never become root-owned (the daemon runs as `user` and could no
 * longer open them).  So before the store is opened, a root process
 * switches to the owner of state_dir, or creates state_dir for the
 * configured user and switches to it; only when neither applies (no such
 * user, or state_dir itself belongs to root) does it stay root.  The switch
 * is permanent (setgroups/initgroups, setgid, setuid) and verified.
 *
 * Passwords never come from argv (visible in ps and shell history).  They
 * come from stdin (scripts) or from the controlling terminal with echo off;
 * a signal while echo is off restores the terminal before the process dies.
 * Buffers that held a password are wiped with explicit_bzero.
 */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

int cli_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("strata: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	return CLI_ERROR;
}

int cli_usage_error(const struct cli *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("strata: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	if (c->cmd)
		fprintf(stderr, "\nusage:\n%s", c->cmd->usage);
	return CLI_USAGE;
}

bool cli_load_config(struct cli *c)
{
	if (c->s)
		return true;
	char *err = NULL;
	c->s = config_load(c->config_path, c->overrides, c->n_over, &err);
	if (c->s == NULL) {
		cli_error("%s", err);
		free(err);
		return false;
	}
	/* Admin commands are quiet unless the configuration asks for debug. */
	log_set_level(c->s->log_level >= LOG_LVL_DEBUG ? LOG_LVL_DEBUG : LOG_LVL_WARN);
	return true;
}

/* ---- privileges ---------------------------------------------------------- */

/* Permanently becomes uid/gid (with name's supplementary groups). */
static bool become(uid_t uid, gid_t gid, const char *name)
{
	if (name ? initgroups(name, gid) != 0 : setgroups(0, NULL) != 0) {
		cli_error("cannot set supplementary groups for uid %u: %s", (unsigned)uid, strerror(errno));
		return false;
	}
	if (setgid(gid) != 0 || setuid(uid) != 0) {
		cli_error("cannot switch to uid %u gid %u: %s", (unsigned)uid, (unsigned)gid, strerror(errno));
		return false;
	}
	/* A switch that can be undone is no switch at all. */
	if (getuid() != uid || geteuid() != uid || getegid() != gid || (uid != 0 && setuid(0) == 0)) {
		cli_error("privilege switch to uid %u did not take effect", (unsigned)uid);
		return false;
	}
	return true;
}

/* Creates state_dir (0750) owned by pw; its parent with mode 0755. */
static bool create_state_dir(const char *dir, const struct passwd *pw)
{
	char parent[4096];
	fs_dirname(dir, parent, sizeof(parent));
	if (!fs_mkdir_p(parent, 0755)) {
		cli_error("cannot create %s: %s", parent, strerror(errno));
		return false;
	}
	if (mkdir(dir, 0750) != 0 && errno != EEXIST) {
		cli_error("cannot create %s: %s", dir, strerror(errno));
		return false;
	}
	if (chown(dir, pw->pw_uid, pw->pw_gid) != 0 || chmod(dir, 0750) != 0) {
		cli_error("cannot give %s to user %s: %s", dir, pw->pw_name, strerror(errno));
		return false;
	}
	if (!fs_fsync_dir(parent)) {
		cli_error("cannot sync %s: %s", parent, strerror(errno));
		return false;
	}
	return true;
}

bool cli_become_state_owner(const struct settings *s)
{
	umask(027); /* the index and its backups hold password hashes */
	struct stat st;
	if (geteuid() != 0 || stat(s->state_dir, &st) != 0 || st.st_uid == 0)
		return true; /* not root, no state yet, or a root-owned state */
	const struct passwd *pw = getpwuid(st.st_uid);
	return become(st.st_uid, pw ? pw->pw_gid : st.st_gid, pw ? pw->pw_name : NULL);
}

static bool apply_privilege_rule(const struct settings *s)
{
	if (geteuid() != 0)
		return true;
	struct stat st;
	if (stat(s->state_dir, &st) == 0)
		return cli_become_state_owner(s);
	if (errno != ENOENT) {
		cli_error("cannot examine %s: %s", s->state_dir, strerror(errno));
		return false;
	}
	const struct passwd *pw = getpwnam(s->user);
	if (pw == NULL)
		return true; /* no such user: stay root, as documented */
	uid_t uid = pw->pw_uid;
	gid_t gid = pw->pw_gid;
	char *name = xstrdup(pw->pw_name);
	bool ok = create_state_dir(s->state_dir, pw) && become(uid, gid, name);
	free(name);
	return ok;
}

bool cli_open_store(struct cli *c)
{
	if (c->st)
		return true;
	if (!cli_load_config(c) || !apply_privilege_rule(c->s))
		return false;
	/* The index holds password hashes: nothing we create is world-readable. */
	umask(027);
	char *err = NULL;
	c->st = store_open(c->s, true, &err);
	if (c->st == NULL) {
		cli_error("cannot open the store: %s", err ? err : "unknown error");
		free(err);
		return false;
	}
	return true;
}

/* ---- options ---------------------------------------------------------------- */

static const struct cli_opt *find_opt(const struct cli_opt *opts, size_t n, const char *name, size_t len)
{
	for (size_t i = 0; i < n; i++) {
		if (strlen(opts[i].name) == len && strncmp(opts[i].name, name, len) == 0)
			return &opts[i];
	}
	return NULL;
}

bool cli_parse_opts(struct cli *c, size_t first, const struct cli_opt *opts, size_t n_opts,
		    char ***pos_r, size_t *n_pos_r)
{
	char **pos = xcalloc(c->n_args + 1, sizeof(*pos));
	size_t n_pos = 0;
	bool only_pos = false;
	for (size_t i = first; i < c->n_args; i++) {
		const char *a = c->args[i];
		if (only_pos || a[0] != '-' || a[1] == '\0') {
			pos[n_pos++] = c->args[i];
			continue;
		}
		if (strcmp(a, "--") == 0) {
			only_pos = true;
			continue;
		}
		if (a[1] != '-') {
			free(pos);
			cli_usage_error(c, "unknown option '%s'", a);
			return false;
		}
		const char *name = a + 2, *eq = strchr(name, '=');
		size_t len = eq ? (size_t)(eq - name) : strlen(name);
		const struct cli_opt *o = find_opt(opts, n_opts, name, len);
		if (o == NULL) {
			free(pos);
			cli_usage_error(c, "unknown option '--%.*s'", (int)len, name);
			return false;
		}
		if (o->flag) {
			if (eq) {
				free(pos);
				cli_usage_error(c, "option '--%s' takes no value", o->name);
				return false;
			}
			*o->flag = true;
		} else if (eq) {
			*o->value = eq + 1;
		} else if (i + 1 < c->n_args) {
			*o->value = c->args[++i];
		} else {
			free(pos);
			cli_usage_error(c, "option '--%s' needs a value", o->name);
			return false;
		}
	}
	*pos_r = pos;
	*n_pos_r = n_pos;
	return true;
}

bool cli_args(struct cli *c, const struct cli_opt *opts, size_t n_opts, size_t min, size_t max,
	      const char *what)
{
	free(c->pos);
	c->pos = NULL;
	c->n_pos = 0;
	if (!cli_parse_opts(c, 1, opts, n_opts, &c->pos, &c->n_pos))
		return false;
	if (c->n_pos < min) {
		cli_usage_error(c, "missing %s", what);
		return false;
	}
	if (c->n_pos > max) {
		cli_usage_error(c, "unexpected argument '%s'", c->pos[max]);
		return false;
	}
	return true;
}

/* ---- passwords ------------------------------------------------------------------ */

/* Terminal state to restore if a signal arrives while echo is off. */
static volatile sig_atomic_t tty_fd = -1;
static struct termios tty_saved;

static void restore_tty_and_die(int sig)
{
	if (tty_fd >= 0)
		tcsetattr(tty_fd, TCSAFLUSH, &tty_saved);
	signal(sig, SIG_DFL);
	raise(sig);
}

static const int tty_signals[] = { SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGTSTP };

/*
 * Reads one line from fd, byte by byte so nothing after the newline is
 * consumed.  Returns 1 with a line, 0 at EOF before any byte, -1 on error
 * (errno) or when the line exceeds max bytes (errno = EMSGSIZE; the rest of
 * the line is still consumed, up to a bound).
 */
static int read_line_fd(int fd, char *out, size_t max, size_t *len_r)
{
	size_t n = 0;
	bool too_long = false, any = false;
	for (size_t guard = 0; guard < 1u << 20; guard++) {
		char ch;
		ssize_t r = read(fd, &ch, 1);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (r == 0)
			break;
		any = true;
		if (ch == '\n')
			break;
		if (n < max)
			out[n++] = ch;
		else
			too_long = true;
	}
	out[n] = '\0';
	*len_r = n;
	if (too_long) {
		errno = EMSGSIZE;
		return -1;
	}
	return any ? 1 : 0;
}

static bool check_password(const char *pw, size_t len, char **error_r)
{
	if (len > 0 && pw[len - 1] == '\r')
		len--; /* a CRLF line end */
	if (len == 0) {
		*error_r = xstrdup("empty password refused");
		return false;
	}
	if (memchr(pw, '\0', len) != NULL) {
		*error_r = xstrdup("password contains a NUL byte");
		return false;
	}
	return true;
}

static bool read_password_stdin(char *out, size_t outlen, char **error_r)
{
	size_t len = 0;
	int r = read_line_fd(STDIN_FILENO, out, outlen - 1, &len);
	if (r < 0) {
		*error_r = errno == EMSGSIZE ? xasprintf("password longer than %zu bytes", outlen - 1)
					     : xasprintf("cannot read the password from stdin: %s", strerror(errno));
		return false;
	}
	if (!check_password(out, len, error_r))
		return false;
	if (out[len - 1] == '\r')
		out[len - 1] = '\0';
	return true;
}

/* Prompts on the terminal with echo off.  Returns false with *error_r. */
static bool ask_tty(int fd, const char *prompt, char *out, size_t outlen, char **error_r)
{
	struct termios noecho;
	if (tcgetattr(fd, &tty_saved) != 0) {
		*error_r = xasprintf("cannot read terminal settings: %s", strerror(errno));
		return false;
	}
	noecho = tty_saved;
	noecho.c_lflag &= ~(tcflag_t)ECHO;
	noecho.c_lflag |= ECHONL;
	struct sigaction sa, old[ARRAY_LEN(tty_signals)];
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = restore_tty_and_die;
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < ARRAY_LEN(tty_signals); i++)
		sigaction(tty_signals[i], &sa, &old[i]);
	tty_fd = fd;
	bool ok = false;
	if (write(fd, prompt, strlen(prompt)) < 0 || tcsetattr(fd, TCSAFLUSH, &noecho) != 0) {
		*error_r = xasprintf("cannot use the terminal: %s", strerror(errno));
	} else {
		size_t len = 0;
		int r = read_line_fd(fd, out, outlen - 1, &len);
		if (r < 0 && errno == EMSGSIZE)
			*error_r = xasprintf("password longer than %zu bytes", outlen - 1);
		else if (r < 0)
			*error_r = xasprintf("cannot read the password: %s", strerror(errno));
		else if (r == 0)
			*error_r = xstrdup("no password given (end of input)");
		else
			ok = check_password(out, len, error_r);
		if (ok && out[len - 1] == '\r')
			out[len - 1] = '\0';
	}
	tcsetattr(fd, TCSAFLUSH, &tty_saved);
	tty_fd = -1;
	for (size_t i = 0; i < ARRAY_LEN(tty_signals); i++)
		sigaction(tty_signals[i], &old[i], NULL);
	return ok;
}

static bool read_password_tty(const char *address, char *out, size_t outlen, char **error_r)
{
	int fd = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (fd < 0) {
		*error_r = xasprintf("no terminal to ask for the password (%s); pipe it in or use "
				     "--password-stdin", strerror(errno));
		return false;
	}
	char *again = xmalloc(outlen);
	char *prompt = xasprintf("New password for %s: ", address);
	bool ok = ask_tty(fd, prompt, out, outlen, error_r) &&
		  ask_tty(fd, "Retype the password: ", again, outlen, error_r);
	if (ok && strcmp(out, again) != 0) {
		*error_r = xstrdup("the passwords do not match");
		ok = false;
	}
	explicit_bzero(again, outlen);
	free(again);
	free(prompt);
	close(fd);
	if (!ok)
		explicit_bzero(out, outlen);
	return ok;
}

bool cli_read_password(const char *address, bool from_stdin, char *out, size_t outlen, char **error_r)
{
	if (outlen < 2)
		panic("cli_read_password: buffer too small");
	out[0] = '\0';
	if (from_stdin || !isatty(STDIN_FILENO))
		return read_password_stdin(out, outlen, error_r);
	return read_password_tty(address, out, outlen, error_r);
}

/* ---- numbers ------------------------------------------------------------------------ */

bool cli_parse_quota_bytes(const char *s, uint64_t *out)
{
	if (str_ieq(s, "unlimited") || str_ieq(s, "none")) {
		*out = 0;
		return true;
	}
	return str_parse_size(s, out) && *out <= (uint64_t)INT64_MAX;
}

bool cli_parse_quota_count(const char *s, uint64_t *out)
{
	if (str_ieq(s, "unlimited") || str_ieq(s, "none")) {
		*out = 0;
		return true;
	}
	return str_parse_u64(s, out) && *out <= (uint64_t)INT64_MAX;
}

void cli_format_size(uint64_t bytes, char *out, size_t outlen)
{
	static const char *const units[] = { "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
	if (bytes < 1024) {
		snprintf(out, outlen, "%llu B", (unsigned long long)bytes);
		return;
	}
	double v = (double)bytes / 1024.0;
	size_t u = 0;
	while (v >= 1024.0 && u + 1 < ARRAY_LEN(units)) {
		v /= 1024.0;
		u++;
	}
	snprintf(out, outlen, v < 10 ? "%.1f %s" : "%.0f %s", v, units[u]);
}

void cli_format_time(int64_t t, char *out, size_t outlen)
{
	if (t == 0) {
		snprintf(out, outlen, "never");
		return;
	}
	time_t tt = (time_t)t;
	struct tm tm;
	if (localtime_r(&tt, &tm) == NULL || strftime(out, outlen, "%Y-%m-%d %H:%M:%S %z", &tm) == 0)
		snprintf(out, outlen, "@%lld", (long long)t);
}
