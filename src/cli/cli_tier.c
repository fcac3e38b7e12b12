/*
 * cli_tier.c - strata tier status | policy | move | verify | checkpoint | rebuild.
 *
 * `move` performs the moves itself through tier_move_blob, under the mover
 * lock (waiting for a daemon pass in progress to finish) and the same
 * token-bucket budget as the daemon: safe alongside a running daemon
 * because every move is journalled and transactional and readers fall back
 * to the other tiers.  `verify` only reads; exit 1 when it finds a problem.
 * `checkpoint` writes a heat checkpoint now (safe beside the daemon: its own
 * file, the heat table as of the daemon's last 2-second flush).  `rebuild`
 * runs tier_rebuild under the mover lock (beside a running daemon too: it
 * waits for a pass; the daemon keeps its own heat in memory for at most a
 * flush interval); exit 1 when a blob has no valid copy.
 */
#include "cli.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "tier.h"

static bool open_tier_store(struct cli *c)
{
	if (!cli_open_store(c))
		return false;
	char *err = NULL;
	if (store_tier_init(c->st, &err) != ST_OK) {
		cli_error("%s", err);
		free(err);
		return false;
	}
	return true;
}

/* ---- status ------------------------------------------------------------------ */

static void print_share(uint64_t n, uint64_t sum)
{
	char cell[40];
	if (sum == 0)
		snprintf(cell, sizeof(cell), "-");
	else
		snprintf(cell, sizeof(cell), "%.1f%% (%llu)", 100.0 * (double)n / (double)sum, (unsigned long long)n);
	printf(" %16s", cell);
}

/* What only the running daemon knows: read shares, from its admin endpoint. */
static void print_daemon_view(const struct settings *s)
{
	struct buf body = BUF_INIT;
	int code = 0;
	char *err = NULL;
	int r = cli_admin_http(s, "GET", "/tier/status", NULL, 2000, &code, &body, &err);
	struct tier_admin_view v;
	if (r == 0) {
		printf("read shares: the daemon is not running\n");
	} else if (r < 0 || code != 200 || !tier_admin_parse(body.data ? body.data : "", body.len, &v) ||
		   !v.have_reads) {
		printf("read shares: unavailable from the daemon's admin endpoint (%s)\n",
		       r < 0 ? (err ? err : "error") : code != 200 ? "no /tier/status" : "unreadable answer");
	} else {
		uint64_t sum_h = 0, sum_d = 0;
		for (size_t t = 0; t < s->n_tiers; t++) {
			sum_h += v.reads.hour[t];
			sum_d += v.reads.day[t];
		}
		printf("body reads served (share of all tiers):\n%-3s %-12s %16s %16s\n", "#", "tier", "last hour",
		       "last day");
		for (size_t t = 0; t < s->n_tiers; t++) {
			printf("%-3zu %-12s", t, s->tiers[t].name);
			print_share(v.reads.hour[t], sum_h);
			print_share(v.reads.day[t], sum_d);
			printf("\n");
		}
	}
	if (r > 0 && code == 200 && v.have_mover) {
		printf("mover budget: %.0f%% of tier.move_rate", v.mover.factor * 100);
		if (v.mover.intervals == 0 && v.mover.samples == 0)
			printf(" (no foreground blob reads measured yet)");
		else
			printf(" (foreground blob-read latency %.2f ms, baseline %.2f ms; halved %llu time(s))",
			       v.mover.lat_us / 1000, v.mover.base_us / 1000, (unsigned long long)v.mover.halvings);
		printf("\n");
	}
	free(err);
	buf_free(&body);
}

static int tier_status(struct cli *c)
{
	if (!cli_args(c, NULL, 0, 0, 0, "nothing"))
		return CLI_USAGE;
	if (!open_tier_store(c))
		return CLI_ERROR;
	struct store_tier_usage u[CONFIG_TIER_MAX];
	uint64_t stray = 0;
	struct store_tier_move *mv = NULL;
	size_t n_mv = 0;
	char *err = NULL;
	if (store_tier_usage(c->st, u, &stray, &err) != ST_OK || store_tier_moves(c->st, &mv, &n_mv, &err) != ST_OK) {
		int rc = cli_error("%s", err);
		free(err);
		return rc;
	}
	printf("%-3s %-12s %12s %10s %12s %6s %8s  %s\n", "#", "tier", "bytes", "messages", "target", "fill",
	       "pending", "path");
	for (size_t t = 0; t < c->s->n_tiers; t++) {
		const struct tier_setting *ts = &c->s->tiers[t];
		uint64_t cap = tier_capacity(ts);
		size_t pending = 0;
		for (size_t i = 0; i < n_mv; i++)
			pending += mv[i].to == t;
		char bytes[32], target[32], fill[16];
		cli_format_size(u[t].bytes, bytes, sizeof(bytes));
		if (cap) {
			cli_format_size(cap, target, sizeof(target));
			snprintf(fill, sizeof(fill), "%.1f%%", 100.0 * (double)u[t].bytes / (double)cap);
		} else {
			snprintf(target, sizeof(target), "unlimited");
			snprintf(fill, sizeof(fill), "-");
		}
		printf("%-3zu %-12s %12s %10llu %12s %6s %8zu  %s\n", t, ts->name, bytes,
		       (unsigned long long)u[t].messages, target, fill, pending, ts->path);
	}
	for (size_t t = c->s->n_tiers; t < CONFIG_TIER_MAX; t++) {
		if (u[t].messages)
			printf("warning: %llu blob(s) on tier %zu, which is not configured\n",
			       (unsigned long long)u[t].messages, t);
	}
	if (stray)
		printf("warning: %llu blob(s) with an invalid tier number\n", (unsigned long long)stray);
	free(mv);
	print_daemon_view(c->s);
	return CLI_OK;
}

/* ---- policy -------------------------------------------------------------------- */

static int tier_policy(struct cli *c)
{
	if (!cli_args(c, NULL, 0, 0, 0, "nothing"))
		return CLI_USAGE;
	if (!cli_load_config(c))
		return CLI_ERROR;
	const struct settings *s = c->s;
	printf("tiers (fastest first; new mail lands on %s):\n", s->tiers[0].name);
	for (size_t t = 0; t < s->n_tiers; t++) {
		const struct tier_setting *ts = &s->tiers[t];
		char cap[32];
		if (ts->capacity_percent)
			snprintf(cap, sizeof(cap), "%u%% of its filesystem", ts->capacity_percent);
		else if (ts->capacity_bytes)
			cli_format_size(ts->capacity_bytes, cap, sizeof(cap));
		else
			snprintf(cap, sizeof(cap), "unlimited");
		char comp[24];
		if (ts->compress == TIER_COMPRESS_ZSTD)
			snprintf(comp, sizeof(comp), "zstd:%d", ts->compress_level);
		else
			snprintf(comp, sizeof(comp), "none");
		printf("  %zu %-12s capacity %-22s compress %-8s %s\n", t, ts->name, cap, comp, ts->path);
	}
	printf("pins:%s\n", s->n_tier_pins ? "" : " none");
	for (size_t i = 0; i < s->n_tier_pins; i++) {
		const struct tier_pin_setting *p = &s->tier_pins[i];
		printf("  %s %s -> %s\n", p->kind == TIER_PIN_ACCOUNT ? "account" : "folder", p->match,
		       s->tiers[p->tier].name);
	}
	char rate[32];
	cli_format_size(s->tier_move_bytes_per_s, rate, sizeof(rate));
	printf("heat half-life %llus; promotion after reads on %llu distinct day(s)\n",
	       (unsigned long long)(s->tier_half_life_ms / 1000), (unsigned long long)s->tier_promote_days);
	printf("demotion when a tier is over its target, down to %d%% of it\n", TIER_LOW_WATER);
	printf("mover budget %s/s and %llu files/s; pass every %llums, at most %llu moves\n", rate,
	       (unsigned long long)s->tier_move_files_per_s, (unsigned long long)s->tier_interval_ms,
	       (unsigned long long)s->tier_batch);
	return CLI_OK;
}

/* ---- move ------------------------------------------------------------------------- */

struct sel { struct tier_cand *v; size_t n, cap; };

static bool select_ref(void *ctx, const struct store_tier_ref *r)
{
	struct sel *s = ctx;
	if (s->n && s->v[s->n - 1].blob_id == r->blob_id)
		return true;
	if (s->n == s->cap) {
		s->cap = s->cap ? s->cap * 2 : 256;
		s->v = xreallocarray(s->v, s->cap, sizeof(*s->v));
	}
	s->v[s->n++] = (struct tier_cand){ r->blob_id, r->id, r->tier, r->size, 0, -1, false };
	return true;
}

static int find_tier(const struct settings *s, const char *name)
{
	for (size_t t = 0; t < s->n_tiers; t++) {
		if (strcmp(s->tiers[t].name, name) == 0)
			return (int)t;
	}
	return -1;
}

static void sleep_us(uint64_t us)
{
	struct timespec ts = { (time_t)(us / 1000000), (long)(us % 1000000) * 1000 };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static int tier_move(struct cli *c)
{
	const char *account = NULL, *folder = NULL, *older = NULL, *to_name = NULL;
	const struct cli_opt opts[] = {
		{ "account", &account, NULL }, { "folder", &folder, NULL },
		{ "older-than", &older, NULL }, { "to", &to_name, NULL },
	};
	if (!cli_args(c, opts, ARRAY_LEN(opts), 0, 0, "nothing"))
		return CLI_USAGE;
	if (to_name == NULL)
		return cli_usage_error(c, "--to TIER is required");
	if (!account && !folder && !older)
		return cli_usage_error(c, "name what to move: --account, --folder and/or --older-than");
	uint64_t older_ms = 0;
	if (older && (!str_parse_duration_ms(older, &older_ms) || older_ms < 1000))
		return cli_usage_error(c, "'%s' is not a duration (e.g. 30d, 12h)", older);
	if (!open_tier_store(c))
		return CLI_ERROR;
	int to = find_tier(c->s, to_name);
	if (to < 0)
		return cli_error("no tier named '%s' (see `strata tier policy`)", to_name);
	char addr[320] = "";
	if (account) {
		snprintf(addr, sizeof(addr), "%s", account);
		str_lower(addr);
	}
	int lock = tier_lock(c->s, true);
	if (lock < 0)
		return cli_error("tier lock: %s", strerror(errno));
	char *err = NULL;
	struct sel sel = { NULL, 0, 0 };
	int64_t cutoff = older ? (int64_t)time(NULL) - (int64_t)(older_ms / 1000) : 0;
	enum status r = tier_recover(c->st, c->s, NULL, &err);
	if (r == ST_OK)
		r = store_tier_refs(c->st, account ? addr : NULL, folder, cutoff, select_ref, &sel, &err);
	sel.n = tier_cand_merge(sel.v, sel.n);
	size_t moved = 0, failed = 0;
	uint64_t bytes = 0;
	struct tier_budget b;
	tier_budget_init(&b, c->s);
	for (size_t i = 0; r == ST_OK && i < sel.n; i++) {
		if (sel.v[i].tier == (unsigned)to || sel.v[i].tier >= c->s->n_tiers)
			continue;
		for (uint64_t w; (w = tier_budget_take(&b, sel.v[i].size, time_mono_us())) != 0;)
			sleep_us(w);
		uint64_t nb = 0;
		char *e = NULL;
		enum status mr = tier_move_blob(c->st, c->s, sel.v[i].blob_id, &sel.v[i].id, sel.v[i].tier,
						(unsigned)to, &nb, &e);
		if (mr == ST_OK) {
			moved++;
			bytes += nb;
		} else if (mr != ST_NOT_FOUND) {
			failed++;
			fprintf(stderr, "strata: blob %lld: %s\n", (long long)sel.v[i].blob_id,
				e ? e : status_info(mr)->name);
		}
		free(e);
	}
	tier_unlock(&lock);
	free(sel.v);
	if (r != ST_OK) {
		int rc = cli_error("%s", err ? err : status_info(r)->name);
		free(err);
		return rc;
	}
	char sz[32];
	cli_format_size(bytes, sz, sizeof(sz));
	printf("moved %zu message(s), %s, to %s; %zu failed\n", moved, sz, c->s->tiers[to].name, failed);
	return failed ? CLI_ERROR : CLI_OK;
}

/* ---- verify ----------------------------------------------------------------------- */

struct verify {
	const struct settings *s;
	struct msgid *ids;
	size_t n, cap;
	size_t problems, checked;
};

static bool verify_blob(void *ctx, int64_t blob_id, const struct msgid *id, unsigned tier, uint64_t size)
{
	struct verify *v = ctx;
	char text[MSGID_TEXT_LEN + 1], path[PATH_MAX];
	msgid_format(id, text);
	if (v->n == v->cap) {
		v->cap = v->cap ? v->cap * 2 : 1024;
		v->ids = xreallocarray(v->ids, v->cap, sizeof(*v->ids));
	}
	v->ids[v->n++] = *id;
	v->checked++;
	if (tier >= v->s->n_tiers) {
		printf("blob %lld %s: tier %u is not configured\n", (long long)blob_id, text, tier);
		v->problems++;
		return true;
	}
	store_blob_path_for(v->s, tier, id, path, sizeof(path));
	struct blob_meta meta;
	enum status r = store_blob_read_meta(path, &meta);
	if (r != ST_OK) {
		printf("blob %lld %s: %s on tier %s: %s\n", (long long)blob_id, text,
		       r == ST_NOT_FOUND ? "missing" : "unreadable or no valid trailer", v->s->tiers[tier].name, path);
		v->problems++;
		return true;
	}
	if (memcmp(meta.id.b, id->b, MSGID_BYTES) != 0 || meta.size != size) {
		printf("blob %lld %s: trailer does not match the index (size %llu vs %llu): %s\n", (long long)blob_id,
		       text, (unsigned long long)meta.size, (unsigned long long)size, path);
		v->problems++;
	}
	store_blob_meta_free(&meta);
	for (unsigned t = 0; t < v->s->n_tiers; t++) {
		struct stat sb;
		if (t == tier)
			continue;
		store_blob_path_for(v->s, t, id, path, sizeof(path));
		if (lstat(path, &sb) == 0) {
			printf("blob %lld %s: second copy on tier %s: %s\n", (long long)blob_id, text,
			       v->s->tiers[t].name, path);
			v->problems++;
		}
	}
	return true;
}

static int cmp_id(const void *a, const void *b)
{
	return memcmp(a, b, MSGID_BYTES);
}

/* Lists files in <tier>/<5>/<2>/ that are not in the index. */
static void scan_orphans(struct verify *v, unsigned tier)
{
	const char *root = v->s->tiers[tier].path;
	DIR *d1 = opendir(root);
	if (d1 == NULL)
		return;
	struct dirent *e1, *e2, *e3;
	char p1[PATH_MAX], p2[PATH_MAX];
	while ((e1 = readdir(d1)) != NULL) {
		if (strlen(e1->d_name) != 5)
			continue;
		if ((size_t)snprintf(p1, sizeof(p1), "%s/%s", root, e1->d_name) >= sizeof(p1) - 8)
			continue;
		DIR *d2 = opendir(p1);
		if (d2 == NULL)
			continue;
		while ((e2 = readdir(d2)) != NULL) {
			if (strlen(e2->d_name) != 2 || e2->d_name[0] == '.')
				continue;
			if ((size_t)snprintf(p2, sizeof(p2), "%.4000s/%.2s", p1, e2->d_name) >= sizeof(p2))
				continue;
			DIR *d3 = opendir(p2);
			if (d3 == NULL)
				continue;
			while ((e3 = readdir(d3)) != NULL) {
				if (e3->d_name[0] == '.')
					continue;
				struct msgid id;
				if (msgid_parse(e3->d_name, &id) &&
				    v->n > 0 && bsearch(&id, v->ids, v->n, sizeof(*v->ids), cmp_id) != NULL)
					continue;
				printf("orphan on tier %s: %s/%s\n", v->s->tiers[tier].name, p2, e3->d_name);
				v->problems++;
			}
			closedir(d3);
		}
		closedir(d2);
	}
	closedir(d1);
}

static int tier_verify(struct cli *c)
{
	if (!cli_args(c, NULL, 0, 0, 0, "nothing"))
		return CLI_USAGE;
	if (!open_tier_store(c))
		return CLI_ERROR;
	struct verify v = { c->s, NULL, 0, 0, 0, 0 };
	char *err = NULL;
	struct store_tier_move *mv = NULL;
	size_t n_mv = 0;
	if (store_tier_blobs(c->st, verify_blob, &v, &err) != ST_OK ||
	    store_tier_moves(c->st, &mv, &n_mv, &err) != ST_OK) {
		free(v.ids);
		int rc = cli_error("%s", err);
		free(err);
		return rc;
	}
	if (v.n > 0)
		qsort(v.ids, v.n, sizeof(*v.ids), cmp_id);
	for (unsigned t = 0; t < c->s->n_tiers; t++)
		scan_orphans(&v, t);
	free(v.ids);
	free(mv);
	printf("%zu blob(s) checked, %zu problem(s), %zu move(s) in progress\n", v.checked, v.problems, n_mv);
	return v.problems ? CLI_ERROR : CLI_OK;
}

/* ---- checkpoint and rebuild ------------------------------------------------------------- */

static int tier_checkpoint(struct cli *c)
{
	if (!cli_args(c, NULL, 0, 0, 0, "nothing"))
		return CLI_USAGE;
	if (!open_tier_store(c))
		return CLI_ERROR;
	struct tier_ckpt_info ci;
	char *err = NULL;
	if (tier_checkpoint_write(c->st, c->s, &ci, &err) != ST_OK) {
		int rc = cli_error("%s", err ? err : "heat checkpoint failed");
		free(err);
		return rc;
	}
	if (ci.path[0] == '\0')
		return cli_error("the heat table is empty but the newest checkpoint is not: nothing written;"
				 " run `strata tier rebuild` to restore the heat from it");
	printf("heat checkpoint %s: %zu row(s)\n", ci.path, ci.rows);
	return CLI_OK;
}

static int tier_rebuild_cmd(struct cli *c)
{
	if (!cli_args(c, NULL, 0, 0, 0, "nothing"))
		return CLI_USAGE;
	if (!cli_open_store(c)) /* not open_tier_store: the rebuild judges the tables itself */
		return CLI_ERROR;
	int lock = tier_lock(c->s, true);
	if (lock < 0)
		return cli_error("tier lock: %s", strerror(errno));
	struct tier_rebuild_result rr;
	char *err = NULL;
	enum status r = tier_rebuild(c->st, c->s, &rr, &err);
	tier_unlock(&lock);
	if (r != ST_OK) {
		int rc = cli_error("%s", err ? err : status_info(r)->name);
		free(err);
		return rc;
	}
	printf("%zu blob(s): %zu placement(s) corrected from the files, %zu extra cop(ies) removed, %zu missing;"
	       " %zu interrupted move(s) settled\n", rr.blobs, rr.corrected, rr.removed, rr.missing, rr.journal_rows);
	if (rr.from_checkpoint)
		printf("heat of %zu blob(s) from %s\n", rr.checkpoint.rows, rr.checkpoint.path);
	else
		printf("no valid heat checkpoint: heat starts empty (placement by priors)\n");
	return rr.missing ? CLI_ERROR : CLI_OK;
}

int cli_cmd_tier(struct cli *c)
{
	if (c->n_args == 0)
		return cli_usage_error(c, "missing subcommand");
	if (strcmp(c->args[0], "status") == 0)
		return tier_status(c);
	if (strcmp(c->args[0], "policy") == 0)
		return tier_policy(c);
	if (strcmp(c->args[0], "move") == 0)
		return tier_move(c);
	if (strcmp(c->args[0], "verify") == 0)
		return tier_verify(c);
	if (strcmp(c->args[0], "checkpoint") == 0)
		return tier_checkpoint(c);
	if (strcmp(c->args[0], "rebuild") == 0)
		return tier_rebuild_cmd(c);
	return cli_usage_error(c, "unknown subcommand 'tier %s'", c->args[0]);
}
