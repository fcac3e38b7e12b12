/*
 * guard_state.c - what the guard keeps across restarts and shows to the
 * operator: allowlist entries added at run time, bans and offence records
 * saved to the state directory, and the status report.
 *
 * Contract: see guard.h.  Files, both in the state directory, both written
 * whole with the durable sequence (temp file, fsync, rename, fsync of the
 * directory), so a crash leaves the old or the new file, never a mix:
 *
 *   guard-allow   one CIDR a line: entries added by guard_allow_add.
 *   guard-bans    "ADDRESS EXPIRES STRIKES" a line: EXPIRES is wall-clock
 *                 milliseconds since the epoch (the monotonic clock starts
 *                 again at boot), STRIKES the offence count.  Records whose
 *                 ban has expired are kept while the offence count is
 *                 remembered (guard.offence_forget).
 *   guard-good    "ADDRESS SEEN" a line: good senders (guard_good.c), SEEN
 *                 the wall-clock milliseconds of the last clean delivery
 *                 or login; entries past guard.good.ttl are not loaded.
 *
 * '#' starts a comment line.  Loading is bounded: a file above
 * GUARD_STATE_MAX_BYTES is refused, a line that does not parse is logged
 * and skipped, and bans go through the fixed ban table (a file with more
 * bans than room keeps the latest-expiring ones a bucket can hold).
 *
 * Threads: guard_allow_add, guard_state_load and guard_state_save run on
 * one thread (the daemon's main thread), like guard_set_settings.  The
 * report reads the tables under their shard locks, one shard at a time.
 */
#include "guard_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "metrics.h"

#define GUARD_STATE_MAX_BYTES (64u << 20)
#define GUARD_EXTRA_MAX 4096          /* allowlist entries added at run time */
#define GUARD_REPORT_TOP 10           /* rows in each "top" list of the report */
#define GUARD_REPORT_BANS 100         /* bans listed in the report */

static const char allow_file[] = "guard-allow";
static const char bans_file[] = "guard-bans";
static const char good_file[] = "guard-good";

/* ---- the run-time allowlist ------------------------------------------------------ */

static void cidr_format(const struct guard_cidr *c, char *out, size_t outlen)
{
	struct guard_addr a = { .family = c->family };
	memcpy(a.b, c->b, sizeof(a.b));
	char text[64];
	guard_addr_format(&a, text, sizeof(text));
	snprintf(out, outlen, "%s/%u", text, (unsigned)c->bits);
}

static bool cidr_equal(const struct guard_cidr *x, const struct guard_cidr *y)
{
	return x->family == y->family && x->bits == y->bits && memcmp(x->b, y->b, sizeof(x->b)) == 0;
}

/* Adds parsed entries to g->extra (duplicates skipped) and publishes a
 * snapshot that allows them.  False with *error_r when there is no room. */
static bool extra_add(struct guard *g, const struct guard_cidr *add, size_t n, char **error_r)
{
	size_t added = 0;
	for (size_t i = 0; i < n; i++) {
		bool dup = false;
		for (size_t j = 0; j < g->n_extra && !dup; j++)
			dup = cidr_equal(&g->extra[j], &add[i]);
		if (dup)
			continue;
		if (g->n_extra == GUARD_EXTRA_MAX) {
			*error_r = xasprintf("the run-time allowlist is full (%d entries)", GUARD_EXTRA_MAX);
			break;
		}
		g->extra = xreallocarray(g->extra, g->n_extra + 1, sizeof(*g->extra));
		g->extra[g->n_extra++] = add[i];
		added++;
	}
	if (added > 0) {
		struct guard_conf *cur = atomic_load(&g->conf);
		struct guard_conf *c = guard_conf_with_allow(cur, &g->extra[g->n_extra - added], added);
		c->older = cur;   /* a decision may still be reading it: freed by guard_free */
		atomic_store(&g->conf, c);
		guard_nft_resync(g);   /* allowlisted addresses leave the kernel sets */
	}
	return added == n || *error_r == NULL;
}

static bool save_allow(struct guard *g, char **error_r)
{
	struct buf out = BUF_INIT;
	buf_printf(&out, "# Allowlist entries added with 'strata guard allow'; one CIDR a line.\n");
	for (size_t i = 0; i < g->n_extra; i++) {
		char text[80];
		cidr_format(&g->extra[i], text, sizeof(text));
		buf_printf(&out, "%s\n", text);
	}
	char *path = xasprintf("%s/%s", g->state_dir, allow_file);
	bool ok = fs_write_file_durable(path, out.data, out.len, 0640);
	if (!ok)
		*error_r = xasprintf("cannot write %s: %s", path, strerror(errno));
	free(path);
	buf_free(&out);
	return ok;
}

bool guard_allow_add(struct guard *g, const char *cidr, char **error_r)
{
	struct guard_cidr *list = NULL;
	size_t n = 0;
	*error_r = NULL;
	if (!guard_cidr_parse_list(cidr, &list, &n, error_r))
		return false;
	if (n == 0) {
		*error_r = xstrdup("no address or CIDR given");
		return false;
	}
	bool ok = extra_add(g, list, n, error_r);
	free(list);
	if (ok && g->state_dir != NULL)
		ok = save_allow(g, error_r);
	return ok;
}

/* ---- saving and loading -------------------------------------------------------------- */

struct save_ctx {
	struct buf *out;
	uint64_t now_mono, now_wall;
};

static void save_ban_cb(void *arg, const struct guard_addr *a, uint64_t expires_ms, unsigned strikes)
{
	struct save_ctx *x = arg;
	char text[64];
	guard_addr_format(a, text, sizeof(text));
	uint64_t wall;
	if (expires_ms == UINT64_MAX)
		wall = UINT64_MAX;
	else if (expires_ms >= x->now_mono)
		wall = x->now_wall + (expires_ms - x->now_mono);
	else
		wall = x->now_wall - (x->now_mono - expires_ms < x->now_wall ? x->now_mono - expires_ms : x->now_wall);
	buf_printf(x->out, "%s %llu %u\n", text, (unsigned long long)wall, strikes);
}

/* Monotonic to wall-clock milliseconds (both "now" given). */
static uint64_t mono_to_wall(uint64_t mono, uint64_t now_mono, uint64_t now_wall)
{
	if (mono == UINT64_MAX)
		return UINT64_MAX;
	if (mono >= now_mono)
		return now_wall + (mono - now_mono);
	return now_wall - (now_mono - mono < now_wall ? now_mono - mono : now_wall);
}

static void save_good_cb(void *arg, const struct guard_addr *a, uint64_t seen_ms)
{
	struct save_ctx *x = arg;
	char text[64];
	guard_addr_format(a, text, sizeof(text));
	buf_printf(x->out, "%s %llu\n", text, (unsigned long long)mono_to_wall(seen_ms, x->now_mono, x->now_wall));
}

static bool save_good(struct guard *g, uint64_t now_ms, char **error_r)
{
	struct buf out = BUF_INIT;
	buf_printf(&out, "# Good senders: address, last clean delivery or login (ms since the epoch).\n");
	struct save_ctx x = { &out, now_ms, time_wall_ms() };
	guard_good_foreach(g, now_ms, save_good_cb, &x);
	char *path = xasprintf("%s/%s", g->state_dir, good_file);
	bool ok = fs_write_file_durable(path, out.data, out.len, 0640);
	if (!ok)
		*error_r = xasprintf("cannot write %s: %s", path, strerror(errno));
	free(path);
	buf_free(&out);
	return ok;
}

bool guard_state_save(struct guard *g, uint64_t now_ms, char **error_r)
{
	if (g->state_dir == NULL)
		return true;
	struct buf out = BUF_INIT;
	buf_printf(&out, "# Bans and offence records: address, expiry (ms since the epoch), offences.\n");
	struct save_ctx x = { &out, now_ms, time_wall_ms() };
	guard_ban_foreach(g, now_ms, save_ban_cb, &x);
	char *path = xasprintf("%s/%s", g->state_dir, bans_file);
	bool ok = fs_write_file_durable(path, out.data, out.len, 0640);
	if (!ok)
		*error_r = xasprintf("cannot write %s: %s", path, strerror(errno));
	free(path);
	buf_free(&out);
	return ok && save_allow(g, error_r) && save_good(g, now_ms, error_r);
}

/* Reads a state file; *data_r NULL (and true) when it does not exist. */
static bool read_state_file(const char *path, char **data_r, char **error_r)
{
	*data_r = NULL;
	struct stat st;
	if (stat(path, &st) != 0) {
		if (errno == ENOENT)
			return true;
		*error_r = xasprintf("cannot read %s: %s", path, strerror(errno));
		return false;
	}
	if (st.st_size > (off_t)GUARD_STATE_MAX_BYTES) {
		*error_r = xasprintf("%s is larger than %u bytes", path, GUARD_STATE_MAX_BYTES);
		return false;
	}
	size_t len = 0;
	if (!fs_read_file(path, data_r, &len)) {
		*error_r = xasprintf("cannot read %s: %s", path, strerror(errno));
		return false;
	}
	return true;
}

/* Calls line_cb for each non-comment, non-blank line (NUL-terminated, trimmed). */
static void each_line(char *data, const char *path, bool (*line_cb)(void *arg, char *line), void *arg)
{
	unsigned lineno = 0;
	for (char *save = NULL, *line = strtok_r(data, "\n", &save); line != NULL;
	     line = strtok_r(NULL, "\n", &save)) {
		lineno++;
		char *t = str_trim(line);
		if (*t == '\0' || *t == '#')
			continue;
		if (!line_cb(arg, t))
			log_warn("guard: %s:%u: ignoring a line that does not parse", path, lineno);
	}
}

struct load_ctx {
	struct guard *g;
	uint64_t now_mono, now_wall;
	size_t bans, allows, good;
};

static bool load_allow_line(void *arg, char *line)
{
	struct load_ctx *x = arg;
	struct guard_cidr *list = NULL;
	size_t n = 0;
	char *err = NULL;
	if (strchr(line, ',') != NULL || !guard_cidr_parse_list(line, &list, &n, &err) || n != 1) {
		free(err);
		free(list);
		return false;
	}
	bool ok = extra_add(x->g, list, n, &err);
	if (!ok)
		log_warn("guard: %s", err);
	free(err);
	free(list);
	x->allows += ok;
	return true;
}

static bool load_ban_line(void *arg, char *line)
{
	struct load_ctx *x = arg;
	char addr[64];
	unsigned long long wall;
	unsigned strikes;
	char extra;
	struct guard_addr a;
	if (sscanf(line, "%63s %llu %u %c", addr, &wall, &strikes, &extra) != 3 || !guard_addr_parse(addr, &a))
		return false;
	uint64_t mono;
	if (wall == UINT64_MAX)
		mono = UINT64_MAX;
	else if (wall >= x->now_wall)
		mono = wall - x->now_wall > UINT64_MAX - x->now_mono ? UINT64_MAX : x->now_mono + (wall - x->now_wall);
	else
		mono = x->now_wall - wall < x->now_mono ? x->now_mono - (x->now_wall - wall) : 0;
	guard_ban_restore(x->g, &a, mono, strikes, x->now_mono);
	x->bans++;
	return true;
}

static bool load_good_line(void *arg, char *line)
{
	struct load_ctx *x = arg;
	char addr[64];
	unsigned long long wall;
	char extra;
	struct guard_addr a;
	if (sscanf(line, "%63s %llu %c", addr, &wall, &extra) != 2 || !guard_addr_parse(addr, &a))
		return false;
	uint64_t age = wall < x->now_wall ? x->now_wall - wall : 0;   /* a clock set back: seen now */
	if (age >= atomic_load(&x->g->conf)->good_ttl_ms)
		return true;   /* forgotten while the daemon was down */
	uint64_t mono = age < x->now_mono ? x->now_mono - age : 0;
	guard_good_restore(x->g, &a, mono, x->now_mono);
	x->good++;
	return true;
}

bool guard_state_load(struct guard *g, const char *state_dir, uint64_t now_ms, char **error_r)
{
	free(g->state_dir);
	g->state_dir = xstrdup(state_dir);
	struct load_ctx x = { g, now_ms, time_wall_ms(), 0, 0, 0 };
	static const struct {
		const char *name;
		bool (*line_cb)(void *arg, char *line);
	} files[] = { { allow_file, load_allow_line }, { bans_file, load_ban_line }, { good_file, load_good_line } };
	for (size_t i = 0; i < ARRAY_LEN(files); i++) {
		char *path = xasprintf("%s/%s", state_dir, files[i].name);
		char *data = NULL;
		bool ok = read_state_file(path, &data, error_r);
		if (ok && data != NULL)
			each_line(data, path, files[i].line_cb, &x);
		free(data);
		free(path);
		if (!ok)
			return false;
	}
	if (x.bans > 0 || x.allows > 0 || x.good > 0)
		log_info("guard: restored %zu bans and offence records, %zu run-time allowlist entries, %zu good "
			 "senders read", x.bans, x.allows, x.good);
	return true;
}

/* ---- the status report ------------------------------------------------------------- */

struct top_row {
	struct guard_addr a;
	uint64_t value;          /* connections or offences */
	uint64_t expires_ms;     /* bans: monotonic expiry */
};

struct top_list {
	struct top_row rows[GUARD_REPORT_BANS];
	size_t n, cap;
	uint64_t total;          /* rows offered */
};

/* Keeps the `cap` rows with the largest value (ties: the first seen). */
static void top_offer(struct top_list *t, const struct guard_addr *a, uint64_t value, uint64_t expires_ms)
{
	t->total++;
	size_t at = t->n;
	if (t->n == t->cap) {
		if (value <= t->rows[t->n - 1].value)
			return;
		at = t->n - 1;
	} else {
		t->n++;
	}
	while (at > 0 && t->rows[at - 1].value < value) {
		t->rows[at] = t->rows[at - 1];
		at--;
	}
	t->rows[at] = (struct top_row){ *a, value, expires_ms };
}

struct report_ctx {
	uint64_t now;
	struct top_list bans, offenders;
};

static void report_ban_cb(void *arg, const struct guard_addr *a, uint64_t expires_ms, unsigned strikes)
{
	struct report_ctx *x = arg;
	if (expires_ms > x->now)
		top_offer(&x->bans, a, expires_ms - x->now, expires_ms);
	if (strikes > 0)
		top_offer(&x->offenders, a, strikes, expires_ms);
}

static void report_source_cb(void *arg, const struct guard_entry *e)
{
	struct top_list *t = arg;
	if (e->level != GUARD_LEVEL_ADDR)
		return;
	struct guard_addr a = { .family = e->family };
	memcpy(a.b, e->key, sizeof(a.b));
	top_offer(t, &a, e->conns, 0);
}

static const char *const class_names[GUARD_CLASS__COUNT] = { "mx", "user" };

static const struct {
	const char *name;
	enum metric_counter m;
} refusal_metrics[] = {
	{ "rate", M_GUARD_REFUSED_RATE },
	{ "concurrency", M_GUARD_REFUSED_CONCURRENCY },
	{ "global", M_GUARD_REFUSED_GLOBAL },
	{ "ban", M_GUARD_REFUSED_BAN },
}, offence_metrics[] = {
	{ "errors", M_GUARD_OFFENCE_ERRORS },
	{ "harvest", M_GUARD_OFFENCE_HARVEST },
	{ "pre_helo", M_GUARD_OFFENCE_PRE_HELO },
	{ "commands", M_GUARD_OFFENCE_COMMANDS },
	{ "early_talk", M_GUARD_OFFENCE_EARLY_TALK },
	{ "auth", M_GUARD_OFFENCE_AUTH },
};

/* Text from nft for a JSON string: quotes, backslashes and controls out. */
static void json_text(const char *s, struct buf *out)
{
	for (; *s != '\0'; s++) {
		char ch = *s;
		if (ch == '"' || ch == '\\')
			buf_printf(out, "\\%c", ch);
		else
			buf_printf(out, "%c", (unsigned char)ch < 0x20 || (unsigned char)ch >= 0x7f ? '?' : ch);
	}
}

static void report_json_extra(struct guard *g, uint64_t now, struct buf *out)
{
	struct guard_nft_report r;
	guard_nft_status(g, &r);
	buf_printf(out, ",\"nft\":{\"state\":\"%s\",\"updates\":%llu,\"errors\":%llu,\"mirror\":\"",
		   guard_nft_state_name(r.state), (unsigned long long)r.updates, (unsigned long long)r.errors);
	json_text(r.describe, out);
	buf_printf(out, "\",\"reason\":\"");
	json_text(r.state == GUARD_NFT_INACTIVE ? r.reason : "", out);
	buf_printf(out, "\"},\"good_senders\":{\"count\":%zu,\"capacity\":%zu}",
		   guard_good_foreach(g, now, NULL, NULL), guard_good_capacity(g));
}

static void report_json(struct guard *g, const struct report_ctx *x, const struct top_list *src,
			struct buf *out)
{
	const struct guard_conf *c = atomic_load(&g->conf);
	char text[80];
	buf_printf(out, "{\"classes\":{");
	for (int cls = 0; cls < GUARD_CLASS__COUNT; cls++) {
		struct guard_stats st;
		guard_stats(g, (enum guard_class)cls, &st);
		buf_printf(out, "%s\"%s\":{\"connections\":%llu,\"max_connections\":%llu,\"active_networks\":%llu,"
				"\"table_used\":%zu,\"table_capacity\":%zu,\"top_sources\":[",
			   cls ? "," : "", class_names[cls], (unsigned long long)st.connections,
			   (unsigned long long)c->max_conn[cls], (unsigned long long)st.active_networks, st.used,
			   st.capacity);
		for (size_t i = 0; i < src[cls].n; i++) {
			guard_addr_format(&src[cls].rows[i].a, text, sizeof(text));
			buf_printf(out, "%s{\"address\":\"%s\",\"connections\":%llu}", i ? "," : "", text,
				   (unsigned long long)src[cls].rows[i].value);
		}
		buf_printf(out, "]}");
	}
	buf_printf(out, "},\"refused\":{");
	for (size_t i = 0; i < ARRAY_LEN(refusal_metrics); i++)
		buf_printf(out, "%s\"%s\":%llu", i ? "," : "", refusal_metrics[i].name,
			   (unsigned long long)metric_get(refusal_metrics[i].m));
	buf_printf(out, "},\"offences\":{");
	for (size_t i = 0; i < ARRAY_LEN(offence_metrics); i++)
		buf_printf(out, "%s\"%s\":%llu", i ? "," : "", offence_metrics[i].name,
			   (unsigned long long)metric_get(offence_metrics[i].m));
	buf_printf(out, "},\"bans_total\":%llu,\"bans\":[", (unsigned long long)x->bans.total);
	for (size_t i = 0; i < x->bans.n; i++) {
		guard_addr_format(&x->bans.rows[i].a, text, sizeof(text));
		buf_printf(out, "%s{\"address\":\"%s\",\"expires_in\":%llu}", i ? "," : "", text,
			   (unsigned long long)((x->bans.rows[i].value + 999) / 1000));
	}
	buf_printf(out, "],\"top_offenders\":[");
	for (size_t i = 0; i < x->offenders.n; i++) {
		guard_addr_format(&x->offenders.rows[i].a, text, sizeof(text));
		buf_printf(out, "%s{\"address\":\"%s\",\"offences\":%llu}", i ? "," : "", text,
			   (unsigned long long)x->offenders.rows[i].value);
	}
	buf_printf(out, "],\"allowed_at_run_time\":[");
	for (size_t i = 0; i < g->n_extra; i++) {
		cidr_format(&g->extra[i], text, sizeof(text));
		buf_printf(out, "%s\"%s\"", i ? "," : "", text);
	}
	buf_printf(out, "]");
	report_json_extra(g, x->now, out);
	buf_printf(out, "}\n");
}

static void report_text(struct guard *g, const struct report_ctx *x, const struct top_list *src,
			struct buf *out)
{
	const struct guard_conf *c = atomic_load(&g->conf);
	char text[80];
	buf_printf(out, "budgets:\n");
	for (int cls = 0; cls < GUARD_CLASS__COUNT; cls++) {
		struct guard_stats st;
		guard_stats(g, (enum guard_class)cls, &st);
		buf_printf(out, "  %-5s %llu of %llu connections, %llu networks, table %zu of %zu entries\n",
			   class_names[cls], (unsigned long long)st.connections, (unsigned long long)c->max_conn[cls],
			   (unsigned long long)st.active_networks, st.used, st.capacity);
	}
	buf_printf(out, "refused:");
	for (size_t i = 0; i < ARRAY_LEN(refusal_metrics); i++)
		buf_printf(out, " %s %llu", refusal_metrics[i].name,
			   (unsigned long long)metric_get(refusal_metrics[i].m));
	buf_printf(out, "\noffences:");
	for (size_t i = 0; i < ARRAY_LEN(offence_metrics); i++)
		buf_printf(out, " %s %llu", offence_metrics[i].name,
			   (unsigned long long)metric_get(offence_metrics[i].m));
	buf_printf(out, "\n");
	for (int cls = 0; cls < GUARD_CLASS__COUNT; cls++) {
		buf_printf(out, "top sources (%s):%s\n", class_names[cls], src[cls].n ? "" : " none");
		for (size_t i = 0; i < src[cls].n; i++) {
			guard_addr_format(&src[cls].rows[i].a, text, sizeof(text));
			buf_printf(out, "  %-40s %llu connections\n", text, (unsigned long long)src[cls].rows[i].value);
		}
	}
	buf_printf(out, "bans: %llu%s\n", (unsigned long long)x->bans.total,
		   x->bans.total > x->bans.n ? " (the longest listed)" : "");
	for (size_t i = 0; i < x->bans.n; i++) {
		guard_addr_format(&x->bans.rows[i].a, text, sizeof(text));
		buf_printf(out, "  %-40s %llus left\n", text, (unsigned long long)((x->bans.rows[i].value + 999) / 1000));
	}
	buf_printf(out, "top offenders:%s\n", x->offenders.n ? "" : " none");
	for (size_t i = 0; i < x->offenders.n; i++) {
		guard_addr_format(&x->offenders.rows[i].a, text, sizeof(text));
		buf_printf(out, "  %-40s %llu offences\n", text, (unsigned long long)x->offenders.rows[i].value);
	}
	buf_printf(out, "allowed at run time:%s\n", g->n_extra ? "" : " none");
	for (size_t i = 0; i < g->n_extra; i++) {
		cidr_format(&g->extra[i], text, sizeof(text));
		buf_printf(out, "  %s\n", text);
	}
	buf_printf(out, "good senders: %zu remembered (room for %zu)\n", guard_good_foreach(g, x->now, NULL, NULL),
		   guard_good_capacity(g));
	struct guard_nft_report r;
	switch (guard_nft_status(g, &r)) {
	case GUARD_NFT_OFF:
		buf_printf(out, "kernel firewall: off (guard.nft.enabled = no)\n");
		break;
	case GUARD_NFT_STARTING:
		buf_printf(out, "kernel firewall: starting (%s)\n", r.describe);
		break;
	case GUARD_NFT_ACTIVE:
		buf_printf(out, "kernel firewall: active (%s); %llu updates, %llu errors\n", r.describe,
			   (unsigned long long)r.updates, (unsigned long long)r.errors);
		break;
	case GUARD_NFT_INACTIVE:
		buf_printf(out, "kernel firewall: not active (%s): %s; bans are enforced in user space only\n",
			   r.describe, r.reason);
		break;
	}
}

void guard_status(struct guard *g, uint64_t now_ms, bool json, struct buf *out)
{
	struct report_ctx *x = xcalloc(1, sizeof(*x));
	struct top_list *src = xcalloc(GUARD_CLASS__COUNT, sizeof(*src));
	x->now = now_ms;
	x->bans.cap = GUARD_REPORT_BANS;
	x->offenders.cap = GUARD_REPORT_TOP;
	guard_ban_foreach(g, now_ms, report_ban_cb, x);
	for (int cls = 0; cls < GUARD_CLASS__COUNT; cls++) {
		src[cls].cap = GUARD_REPORT_TOP;
		guard_table_foreach_live(&g->tables[cls], report_source_cb, &src[cls]);
	}
	if (json)
		report_json(g, x, src, out);
	else
		report_text(g, x, src, out);
	free(src);
	free(x);
}
