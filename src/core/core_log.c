/*
 * core_log.c - one line per event, to stderr or syslog.
 *
 * Thread-safe: each line is formatted into a local buffer and written with a
 * single write(2) (stderr) or syslog(3) call, so lines from different threads
 * never interleave.  Untrusted text must be passed through log_escape().
 */
#include "core.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static _Atomic int g_level = LOG_LVL_INFO;
static bool g_syslog;
static char g_ident[32] = "strata";

static const char *const level_names[] = { "error", "warning", "info", "debug" };
static const int syslog_prio[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };

void log_init(const char *ident, bool use_syslog, enum log_level level)
{
	snprintf(g_ident, sizeof(g_ident), "%s", ident);
	g_syslog = use_syslog;
	atomic_store(&g_level, (int)level);
	if (use_syslog)
		openlog(g_ident, LOG_PID | LOG_NDELAY, LOG_MAIL);
}

void log_set_level(enum log_level level) { atomic_store(&g_level, (int)level); }
enum log_level log_get_level(void) { return (enum log_level)atomic_load(&g_level); }

bool log_level_parse(const char *s, enum log_level *out)
{
	for (size_t i = 0; i < ARRAY_LEN(level_names); i++) {
		if (str_ieq(s, level_names[i])) {
			*out = (enum log_level)i;
			return true;
		}
	}
	if (str_ieq(s, "warn")) {
		*out = LOG_LVL_WARN;
		return true;
	}
	return false;
}

static void log_vmsg(enum log_level lvl, const char *fmt, va_list ap) ATTR_PRINTF(2, 0);
static void log_vmsg(enum log_level lvl, const char *fmt, va_list ap)
{
	char line[2048];
	if (g_syslog) {
		vsnprintf(line, sizeof(line), fmt, ap);
		syslog(syslog_prio[lvl], "%s", line);
		return;
	}
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s[%d]: %s: ",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
			 tm.tm_sec, ts.tv_nsec / 1000000, g_ident, (int)getpid(), level_names[lvl]);
	if (n < 0 || (size_t)n >= sizeof(line))
		n = 0;
	int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
	if (len > sizeof(line) - 2)
		len = sizeof(line) - 2;
	line[len++] = '\n';
	ssize_t w = write(STDERR_FILENO, line, len);
	(void)w;
}

void log_msg(enum log_level lvl, const char *fmt, ...)
{
	if ((int)lvl > atomic_load(&g_level))
		return;
	va_list ap;
	va_start(ap, fmt);
	log_vmsg(lvl, fmt, ap);
	va_end(ap);
}

void fatal(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vmsg(LOG_LVL_ERROR, fmt, ap);
	va_end(ap);
	exit(1);
}

void panic(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vmsg(LOG_LVL_ERROR, fmt, ap);
	va_end(ap);
	abort();
}

char *log_escape(const char *in, size_t in_len, char *out, size_t max_out)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;
	if (max_out == 0)
		return out;
	for (size_t i = 0; i < in_len; i++) {
		unsigned char c = (unsigned char)in[i];
		if (c >= 0x20 && c < 0x7f && c != '\\') {
			if (o + 1 >= max_out)
				break;
			out[o++] = (char)c;
		} else {
			if (o + 4 >= max_out)
				break;
			out[o++] = '\\';
			out[o++] = 'x';
			out[o++] = hex[c >> 4];
			out[o++] = hex[c & 15];
		}
	}
	out[o] = '\0';
	return out;
}
