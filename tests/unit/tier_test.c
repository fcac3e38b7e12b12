/*
 * tier_test.c - unit tests of storage tiering (src/tier, src/store/store_tier.c).
 *
 * Pure parts (decay, read days, priors, pins, placement, the budget) are
 * table-driven with labelled cases.  The move tests build a real store in a
 * temporary directory with three tiers, deliver blobs through the store
 * API, and then:
 *  - fail every file-system step of a move in turn (core's fs_fault_set)
 *    and check the invariant: the index names a tier that holds the blob,
 *    byte-identical, and after tier_recover exactly one copy exists;
 *  - plant the state a crash leaves after each step of the sequence and
 *    check that tier_recover applies the rule of docs/STORAGE.md.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "core.h"
#include "metrics.h"
#include "store.h"
#include "tier.h"

#define DAY TIER_DAY_S
#define NOW ((int64_t)1800000000) /* a fixed "now" for the pure tests */

/* ---- heat decay ------------------------------------------------------------------ */

static void test_decay(void **state)
{
	(void)state;
	static const struct { const char *label; double score; int64_t dt; uint64_t hl; double want; } cases[] = {
		{ "no time", 4.0, 0, 100, 4.0 },
		{ "one half-life", 4.0, 100, 100, 2.0 },
		{ "two half-lives", 4.0, 200, 100, 1.0 },
		{ "half a half-life", 1.0, 50, 100, 0.70710678 },
		{ "negative dt", 3.0, -50, 100, 3.0 },
		{ "a week at 7 days", 10.0, 7 * DAY, 7 * DAY, 5.0 },
		{ "far future", 1.0, (int64_t)100 * 365 * DAY, DAY, 0.0 },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		double got = tier_heat_decay(cases[i].score, cases[i].dt, cases[i].hl);
		if (fabs(got - cases[i].want) > 1e-6)
			fail_msg("%s: got %.9f want %.9f", cases[i].label, got, cases[i].want);
	}
}

static void test_heat_events_and_read_days(void **state)
{
	(void)state;
	const uint64_t hl = 7 * DAY;
	struct store_heat h = { 1, 0, 0, 0 };
	tier_heat_event(&h, NOW, TIER_EVENT_DELIVERY, hl);
	assert_true(fabs(h.score - 1.0) < 1e-9);
	assert_int_equal(tier_heat_read_days(h.reads_days, h.updated, NOW), 0); /* delivery is not a read */
	tier_heat_event(&h, NOW + 60, TIER_EVENT_READ, hl);
	tier_heat_event(&h, NOW + 120, TIER_EVENT_READ, hl); /* same day: still one day */
	assert_int_equal(tier_heat_read_days(h.reads_days, h.updated, NOW + 120), 1);
	tier_heat_event(&h, NOW + 2 * DAY, TIER_EVENT_READ, hl);
	assert_int_equal(tier_heat_read_days(h.reads_days, h.updated, NOW + 2 * DAY), 2);
	/* decayed: 3 events ~1 each, the first three two days old */
	double want = 3.0 * exp2(-2.0 / 7.0) + 1.0;
	if (fabs(h.score - want) > 1e-3)
		fail_msg("score after 4 events: got %f want %f", h.score, want);
	/* the window is 30 days: both read days count 29 days on, one at 31, none at 40 */
	assert_int_equal(tier_heat_read_days(h.reads_days, h.updated, NOW + 29 * DAY), 2);
	assert_int_equal(tier_heat_read_days(h.reads_days, h.updated, NOW + 31 * DAY), 1);
	assert_int_equal(tier_heat_read_days(h.reads_days, h.updated, NOW + 40 * DAY), 0);
	/* clock stepped back: the score never grows by decay, the event counts */
	double before = h.score;
	tier_heat_event(&h, NOW, TIER_EVENT_READ, hl);
	assert_true(h.score > before && h.score <= before + 1.0 + 1e-9);
	assert_int_equal(h.updated, NOW + 2 * DAY);
}

/* ---- priors -------------------------------------------------------------------------- */

static void test_priors(void **state)
{
	(void)state;
	struct { const char *label; struct tier_prior_in in; } c[] = {
		/* 0 */ { "INBOX, new, unseen", { NOW - 3600, "INBOX", "", false, NOW - DAY } },
		/* 1 */ { "INBOX, new, seen", { NOW - 3600, "INBOX", "", true, NOW - DAY } },
		/* 2 */ { "Sent, new", { NOW - 3600, "Sent", "\\Sent", false, NOW - DAY } },
		/* 3 */ { "Archive, new", { NOW - 3600, "Archive", "\\Archive", false, NOW - DAY } },
		/* 4 */ { "Junk by role only", { NOW - 3600, "Spam", "\\Junk", false, NOW - DAY } },
		/* 5 */ { "INBOX, 60 days old", { NOW - 60 * DAY, "INBOX", "", false, NOW - DAY } },
		/* 6 */ { "INBOX, idle account", { NOW - 3600, "INBOX", "", false, NOW - 91 * DAY } },
		/* 7 */ { "other folder, new", { NOW - 3600, "Projects", "", false, NOW - DAY } },
	};
	double p[ARRAY_LEN(c)];
	for (size_t i = 0; i < ARRAY_LEN(c); i++) {
		p[i] = tier_prior(&c[i].in, NOW);
		if (!(p[i] >= 0 && p[i] <= 1))
			fail_msg("%s: prior %f outside [0, 1]", c[i].label, p[i]);
	}
	static const struct { size_t hot, cold; } order[] = {
		{ 0, 1 }, { 1, 3 }, { 2, 3 }, { 0, 2 }, { 7, 3 }, { 7, 4 }, { 0, 5 }, { 0, 6 }, { 1, 6 }, { 2, 7 },
	};
	for (size_t i = 0; i < ARRAY_LEN(order); i++) {
		if (!(p[order[i].hot] > p[order[i].cold]))
			fail_msg("'%s' (%f) should be hotter than '%s' (%f)", c[order[i].hot].label, p[order[i].hot],
				 c[order[i].cold].label, p[order[i].cold]);
	}
	/* 30-day age half-life */
	if (fabs(p[5] / p[0] - exp2(-(60.0 * DAY - 3600) / (30.0 * DAY)) / exp2(0)) > 0.01)
		fail_msg("60-day-old prior ratio %f", p[5] / p[0]);
	/* 90-day inactivity = cold (x0.1) */
	if (fabs(p[6] / p[0] - 0.1) > 1e-9)
		fail_msg("idle account ratio %f", p[6] / p[0]);
}

/* ---- config and pins ----------------------------------------------------------------- */

static struct settings *load(const char *state_dir, char **over, size_t n, char **err)
{
	char *all[16];
	char sd[PATH_MAX + 16];
	snprintf(sd, sizeof(sd), "state_dir=%s", state_dir);
	all[0] = sd;
	for (size_t i = 0; i < n && i < 15; i++)
		all[i + 1] = over[i];
	return config_load("/dev/null", all, n + 1, err);
}

static void test_config_and_pins(void **state)
{
	(void)state;
	char *err = NULL;
	struct settings *s = load("/tmp/x", NULL, 0, &err);
	assert_non_null(s);
	assert_int_equal(s->n_tiers, 1);
	assert_string_equal(s->tiers[0].name, "fast");
	assert_string_equal(s->tiers[0].path, s->store_blob_dir);
	config_free(&s);

	char *over[] = { "tier.names = fast, standard ,archive", "tier.standard.path=/srv/std",
			 "tier.archive.path=/srv/arc", "tier.fast.capacity=80%", "tier.standard.capacity=2G",
			 "tier.archive.compress=zstd", "tier.standard.compress=zstd", "tier.standard.compress_level=19",
			 "tier.standard.compress=none", "tier.standard.compress_level=7", "tier.standard.compress=zstd",
			 "tier.pin=folder:Archive=archive,account:CEO@x.example=fast,folder:Trash=standard,"
			 "folder:Trash=archive" };
	s = load("/tmp/x", over, ARRAY_LEN(over), &err);
	if (s == NULL)
		fail_msg("config: %s", err);
	assert_int_equal(s->n_tiers, 3);
	assert_string_equal(s->tiers[1].name, "standard");
	assert_int_equal(s->tiers[0].capacity_percent, 80);
	assert_int_equal(s->tiers[1].capacity_bytes, 2ull << 30);
	assert_int_equal(s->tiers[2].capacity_bytes, 0);
	/* compression: none by default; the last assignment of a key wins; level 3 by default */
	assert_int_equal(s->tiers[0].compress, TIER_COMPRESS_NONE);
	assert_int_equal(s->tiers[1].compress, TIER_COMPRESS_ZSTD);
	assert_int_equal(s->tiers[1].compress_level, 7);
	assert_int_equal(s->tiers[2].compress, TIER_COMPRESS_ZSTD);
	assert_int_equal(s->tiers[2].compress_level, TIER_COMPRESS_LEVEL_DEFAULT);
	static const struct { const char *label, *mailbox, *special, *account; int want; } cases[] = {
		{ "no rule", "INBOX", "", "a@x.example", -1 },
		{ "folder by name", "Archive", "", "a@x.example", 2 },
		{ "folder by role", "Old mail", "\\Archive", "a@x.example", 2 },
		{ "folder case-insensitive", "archive", "", "a@x.example", 2 },
		{ "two rules: fastest wins", "Trash", "", "a@x.example", 1 },
		{ "account beats folder", "Archive", "", "ceo@x.example", 0 },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		int got = tier_pin_for(s, cases[i].mailbox, cases[i].special, cases[i].account);
		if (got != cases[i].want)
			fail_msg("%s: got %d want %d", cases[i].label, got, cases[i].want);
	}
	/* a percentage target is a share of the real filesystem */
	uint64_t cap = tier_capacity(&(struct tier_setting){ "t", "/tmp", 0, 50, 0, 0 });
	assert_true(cap > 0);
	assert_int_equal(tier_capacity(&(struct tier_setting){ "t", "/tmp", 12345, 0, 0, 0 }), 12345);
	config_free(&s);

	static const struct { const char *label; char *over[3]; const char *err; } bad[] = {
		{ "undefined path", { "tier.names=a,b", NULL, NULL }, "tier.b.path is not set" },
		{ "unknown tier", { "tier.zz.capacity=1G", NULL, NULL }, "'zz' is not in tier.names" },
		{ "bad capacity", { "tier.fast.capacity=0%", NULL, NULL }, "1% to 100%" },
		{ "bad name", { "tier.names=Fast", NULL, NULL }, "is not a tier name" },
		{ "same dir", { "tier.names=a,b", "tier.b.path=/tmp/x/blobs", NULL }, "same directory" },
		{ "pin syntax", { "tier.pin=mailbox:x=fast", NULL, NULL }, "folder: or account:" },
		{ "too many", { "tier.names=a,b,c,d,e,f,g,h,i", NULL, NULL }, "more than 8 tiers" },
		{ "bad compression", { "tier.fast.compress=gzip", NULL, NULL }, "is not none or zstd" },
		{ "level out of range", { "tier.fast.compress=zstd", "tier.fast.compress_level=20", NULL }, "is not 1 to 19" },
		{ "level zero", { "tier.fast.compress=zstd", "tier.fast.compress_level=0", NULL }, "is not 1 to 19" },
		{ "level without zstd", { "tier.fast.compress_level=5", NULL, NULL }, "needs tier.fast.compress = zstd" },
	};
	for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
		size_t n = bad[i].over[1] ? 2 : 1;
		err = NULL;
		s = load("/tmp/x", (char **)bad[i].over, n, &err);
		if (s != NULL || err == NULL || strstr(err, bad[i].err) == NULL)
			fail_msg("%s: got error '%s', want '%s'", bad[i].label, err ? err : "(none)", bad[i].err);
		free(err);
		config_free(&s);
	}
}

/* ---- placement ------------------------------------------------------------------------- */

static void test_rank(void **state)
{
	(void)state;
	static const struct { const char *label; double temp; uint64_t size; double want; } cases[] = {
		{ "at the reference size: the temperature", 2.0, 20480, 2.0 },
		{ "ten times bigger: a tenth", 2.0, 204800, 0.2 },
		{ "smaller than the floor: as the floor", 1.0, 100, 10.0 },
		{ "at the floor", 1.0, 2048, 10.0 },
		{ "cold stays cold", 0.0, 5000, 0.0 },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		double got = tier_rank(cases[i].temp, cases[i].size);
		if (fabs(got - cases[i].want) > 1e-9)
			fail_msg("%s: got %.6f want %.6f", cases[i].label, got, cases[i].want);
	}
	/* a 2 MB blob read as often as a 4 KB one ranks below it */
	assert_true(tier_rank(3.0, 2u << 20) < tier_rank(3.0, 4096));
}

struct pcase {
	const char *label;
	size_t n;
	struct { unsigned tier; uint64_t size; double temp; int pin; bool prom; } c[8];
	uint64_t cap[3];
	size_t max;
	unsigned want[8];             /* final tier per candidate */
};

static void test_placement(void **state)
{
	(void)state;
	static const struct pcase cases[] = {
		{ "all fits: no moves", 3, { { 0, 10, 1, -1, 0 }, { 0, 10, 2, -1, 0 }, { 1, 10, 3, -1, 0 } },
		  { 100, 100, 0 }, 10, { 0, 0, 1 } },
		{ "over target: coldest demoted to 90%", 4,
		  { { 0, 30, 0.9, -1, 0 }, { 0, 30, 0.1, -1, 0 }, { 0, 30, 0.5, -1, 0 }, { 0, 30, 0.3, -1, 0 } },
		  { 100, 0, 0 }, 10, { 0, 1, 0, 0 } },
		{ "far over target: down to 90%, coldest first", 4,
		  { { 0, 40, 0.9, -1, 0 }, { 0, 40, 0.1, -1, 0 }, { 0, 40, 0.5, -1, 0 }, { 0, 40, 0.3, -1, 0 } },
		  { 100, 0, 0 }, 10, { 0, 1, 0, 1 } },
		{ "cascade to the last tier", 4,
		  { { 0, 50, 4, -1, 0 }, { 0, 50, 3, -1, 0 }, { 0, 50, 2, -1, 0 }, { 0, 50, 1, -1, 0 } },
		  { 100, 60, 0 }, 10, { 0, 0, 1, 2 } },
		{ "a blob larger than the 10% margin is not emptied out", 2,
		  { { 0, 50, 2, -1, 0 }, { 0, 50, 1, -1, 0 } }, { 50, 0, 0 }, 10, { 0, 1 } },
		{ "pin beats heat", 2, { { 0, 10, 9, 2, 0 }, { 2, 10, 0, 0, 0 } }, { 100, 100, 0 }, 10, { 2, 0 } },
		{ "pinned never demoted", 2, { { 0, 60, 0.0, 0, 0 }, { 0, 60, 1, -1, 0 } }, { 100, 0, 0 }, 10,
		  { 0, 1 } },
		{ "promotable goes up when room", 2, { { 2, 10, 5, -1, 1 }, { 2, 10, 5, -1, 0 } }, { 100, 100, 0 },
		  10, { 0, 2 } },
		{ "promotion displaces a blob colder than half its temperature", 2,
		  { { 0, 95, 1, -1, 0 }, { 2, 10, 5, -1, 1 } }, { 100, 100, 0 }, 10, { 1, 0 } },
		{ "promotion does not displace warm blobs: next tier with room", 2,
		  { { 0, 95, 3, -1, 0 }, { 2, 10, 5, -1, 1 } }, { 100, 100, 0 }, 10, { 0, 1 } },
		{ "promotion displaces the coldest first, only as much as needed", 4,
		  { { 0, 30, 0.5, -1, 0 }, { 0, 30, 0.1, -1, 0 }, { 0, 30, 0.2, -1, 0 }, { 2, 20, 4, -1, 1 } },
		  { 100, 100, 0 }, 10, { 0, 1, 0, 0 } },
		{ "a blob put back frees its move for a promotion", 4,
		  { { 0, 50, 3, -1, 0 }, { 0, 45, 2, -1, 0 }, { 0, 10, 1, -1, 0 }, { 2, 5, 9, -1, 1 } },
		  { 100, 0, 0 }, 2, { 0, 0, 1, 0 } },
		{ "pinned blobs are never displaced", 2, { { 0, 95, 0.1, 0, 0 }, { 2, 10, 5, -1, 1 } },
		  { 100, 100, 0 }, 10, { 0, 1 } },
		{ "no displacement for a blob larger than the tier", 2, { { 0, 50, 0.1, -1, 0 }, { 2, 200, 5, -1, 1 } },
		  { 100, 0, 0 }, 10, { 0, 1 } },
		{ "max moves respected", 4,
		  { { 0, 50, 4, -1, 0 }, { 0, 50, 3, -1, 0 }, { 0, 50, 2, -1, 0 }, { 0, 50, 1, -1, 0 } },
		  { 10, 0, 0 }, 2, { 0, 0, 1, 1 } },
		{ "unlimited tier 0", 2, { { 0, 1000, 0, -1, 0 }, { 1, 10, 0, -1, 0 } }, { 0, 0, 0 }, 10, { 0, 1 } },
	};
	for (size_t k = 0; k < ARRAY_LEN(cases); k++) {
		const struct pcase *pc = &cases[k];
		struct tier_cand c[8];
		for (size_t i = 0; i < pc->n; i++)
			c[i] = (struct tier_cand){ (int64_t)i + 1, { { 0 } }, pc->c[i].tier, pc->c[i].size,
						   pc->c[i].temp, pc->c[i].pin, pc->c[i].prom };
		struct tier_plan plan[16];
		size_t n = tier_place(c, pc->n, pc->cap, 3, pc->max, plan);
		if (n > pc->max)
			fail_msg("%s: %zu moves > max %zu", pc->label, n, pc->max);
		unsigned got[8];
		for (size_t i = 0; i < pc->n; i++)
			got[i] = c[i].tier;
		for (size_t i = 0; i < n; i++) {
			if (plan[i].to == c[plan[i].cand].tier)
				fail_msg("%s: a no-op move of %zu", pc->label, plan[i].cand);
			got[plan[i].cand] = plan[i].to;
		}
		for (size_t i = 0; i < pc->n; i++) {
			if (got[i] != pc->want[i])
				fail_msg("%s: candidate %zu ends on tier %u, want %u", pc->label, i, got[i], pc->want[i]);
		}
	}
}

/* ---- budget -------------------------------------------------------------------------- */

static void test_budget(void **state)
{
	(void)state;
	struct tier_budget b = { 1000, 2, 1000, 2, 1000000 };
	assert_int_equal(tier_budget_take(&b, 600, 1000000), 0);
	uint64_t w = tier_budget_take(&b, 600, 1000000); /* 400 bytes left: wait 0.2 s */
	if (w < 199000 || w > 201000)
		fail_msg("byte wait %llu us, want ~200000", (unsigned long long)w);
	assert_int_equal(tier_budget_take(&b, 600, 1000000 + 200001), 0);
	/* files: 2/s; two taken already (tokens 2 - 2 + 0.4 refill = 0.4): wait for 0.6 more */
	w = tier_budget_take(&b, 1, 1200001);
	if (w < 290000 || w > 310000)
		fail_msg("file wait %llu us, want ~300000", (unsigned long long)w);
	/* a file larger than a second of budget still goes once the bucket is full */
	struct tier_budget b2 = { 1000, 10, 1000, 10, 0 };
	assert_int_equal(tier_budget_take(&b2, 50000, 0), 0);
}

/* ---- a real store with three tiers ------------------------------------------------------ */

struct fix {
	char dir[64];
	struct settings *s;
	struct store *st;
	int64_t blob_id[4];
	struct msgid id[4];
	struct buf data[4];
};

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void write_blob(struct fix *f, size_t i, int64_t account_id)
{
	msgid_new(&f->id[i]);
	struct buf *b = &f->data[i];
	buf_printf(b, "Subject: blob %zu\r\n\r\n", i);
	for (int k = 0; k < 200; k++)
		buf_printf(b, "line %d of message %zu, padding padding padding\r\n", k, i);
	uint64_t size = b->len;
	struct blob_meta meta = { 0 };
	meta.id = f->id[i];
	meta.received = time(NULL) - 3600;
	meta.size = size;
	memset(meta.hash_hex, 'a', 64);
	char rcpt[1][320] = { "u@t.example" };
	meta.rcpt_addresses = rcpt;
	meta.n_rcpts = 1;
	store_blob_trailer(&meta, b);
	char dir[PATH_MAX], path[PATH_MAX];
	store_blob_dir_of(f->s->store_blob_dir, &f->id[i], dir, sizeof(dir));
	assert_true(fs_mkdir_p(dir, 0750));
	store_blob_path(f->s->store_blob_dir, &f->id[i], path, sizeof(path));
	assert_true(fs_write_file_durable(path, b->data, b->len, 0640));
	uint32_t uid = 0;
	struct store_delivery d = { f->id[i], meta.received, size, 1, &account_id, NULL, ST_OK, &uid };
	struct store_delivery *dp = &d;
	assert_int_equal(store_commit_deliveries(f->st, &dp, 1), ST_OK);
	assert_int_equal(d.status, ST_OK);
}

static int64_t blob_row(struct fix *f, size_t i, unsigned *tier)
{
	sqlite3 *db;
	assert_int_equal(sqlite3_open_v2(f->s->store_index_path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	sqlite3_stmt *q;
	assert_int_equal(sqlite3_prepare_v2(db, "SELECT id, tier FROM blobs WHERE msgid = ?1", -1, &q, NULL),
			 SQLITE_OK);
	sqlite3_bind_blob(q, 1, f->id[i].b, MSGID_BYTES, SQLITE_STATIC);
	int64_t id = -1;
	if (sqlite3_step(q) == SQLITE_ROW) {
		id = sqlite3_column_int64(q, 0);
		*tier = (unsigned)sqlite3_column_int64(q, 1);
	}
	sqlite3_finalize(q);
	sqlite3_close(db);
	return id;
}

static int fix_setup(void **state)
{
	struct fix *f = xcalloc(1, sizeof(*f));
	snprintf(f->dir, sizeof(f->dir), "/tmp/strata-tier-test-XXXXXX");
	if (mkdtemp(f->dir) == NULL)
		fail_msg("mkdtemp: %s", strerror(errno));
	char sd[128], p1[128], p2[128];
	snprintf(sd, sizeof(sd), "%s/state", f->dir);
	snprintf(p1, sizeof(p1), "tier.standard.path=%s/std", f->dir);
	snprintf(p2, sizeof(p2), "tier.archive.path=%s/arc", f->dir);
	char *over[] = { "tier.names=fast,standard,archive", p1, p2 };
	char *err = NULL;
	f->s = load(sd, over, ARRAY_LEN(over), &err);
	if (f->s == NULL)
		fail_msg("config: %s", err);
	f->st = store_open(f->s, true, &err);
	if (f->st == NULL || store_tier_init(f->st, &err) != ST_OK)
		fail_msg("store: %s", err);
	assert_int_equal(store_domain_add(f->st, "t.example", NULL), ST_OK);
	assert_int_equal(store_user_add(f->st, "u@t.example", "", 0, 0, NULL), ST_OK);
	struct account a;
	assert_int_equal(store_user_get(f->st, "u@t.example", &a), ST_OK);
	for (size_t i = 0; i < ARRAY_LEN(f->id); i++) {
		write_blob(f, i, a.id);
		unsigned t;
		f->blob_id[i] = blob_row(f, i, &t);
		assert_true(f->blob_id[i] > 0);
		assert_int_equal(t, 0);
	}
	*state = f;
	return 0;
}

static int fix_teardown(void **state)
{
	struct fix *f = *state;
	fs_fault_set(FS_OP_WRITE, 0, 0, false);
	store_close(&f->st);
	config_free(&f->s);
	for (size_t i = 0; i < ARRAY_LEN(f->data); i++)
		buf_free(&f->data[i]);
	nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static bool exists_on(struct fix *f, size_t i, unsigned tier)
{
	char path[PATH_MAX];
	store_blob_path_for(f->s, tier, &f->id[i], path, sizeof(path));
	return access(path, F_OK) == 0;
}

/* The blob is whole on its index tier, and (unless allow_two) nowhere else;
 * returns the index tier. */
static unsigned check_blob(struct fix *f, size_t i, bool allow_two, const char *label)
{
	unsigned tier = 99;
	if (blob_row(f, i, &tier) < 0)
		fail_msg("%s: blob %zu has no row", label, i);
	if (tier >= f->s->n_tiers)
		fail_msg("%s: blob %zu on tier %u", label, i, tier);
	char path[PATH_MAX];
	store_blob_path_for(f->s, tier, &f->id[i], path, sizeof(path));
	char *got = NULL;
	size_t len = 0;
	if (!fs_read_file(path, &got, &len))
		fail_msg("%s: blob %zu not on its index tier %u: %s", label, i, tier, strerror(errno));
	if (len != f->data[i].len || memcmp(got, f->data[i].data, len) != 0)
		fail_msg("%s: blob %zu on tier %u differs (%zu vs %zu bytes)", label, i, tier, len, f->data[i].len);
	free(got);
	for (unsigned t = 0; !allow_two && t < f->s->n_tiers; t++) {
		if (t != tier && exists_on(f, i, t))
			fail_msg("%s: blob %zu has a second copy on tier %u (index: %u)", label, i, t, tier);
	}
	/* and readers find it through the open helper, whatever tier they guess */
	for (unsigned guess = 0; guess < f->s->n_tiers; guess++) {
		unsigned found = 99;
		int fd = store_blob_open(f->s, guess, &f->id[i], &found);
		if (fd < 0)
			fail_msg("%s: store_blob_open(guess %u) of blob %zu: %s", label, guess, i, strerror(errno));
		close(fd);
	}
	return tier;
}

static size_t journal_rows(struct fix *f)
{
	struct store_tier_move *v = NULL;
	size_t n = 0;
	assert_int_equal(store_tier_moves(f->st, &v, &n, NULL), ST_OK);
	free(v);
	return n;
}

static void test_move_and_back(void **state)
{
	struct fix *f = *state;
	uint64_t bytes = 0;
	char *err = NULL;
	assert_int_equal(tier_move_blob(f->st, f->s, f->blob_id[0], &f->id[0], 0, 2, &bytes, &err), ST_OK);
	assert_int_equal(bytes, f->data[0].len);
	assert_int_equal(check_blob(f, 0, false, "to archive"), 2);
	assert_int_equal(tier_move_blob(f->st, f->s, f->blob_id[0], &f->id[0], 2, 1, &bytes, &err), ST_OK);
	assert_int_equal(check_blob(f, 0, false, "to standard"), 1);
	assert_int_equal(journal_rows(f), 0);
	/* a stale "from" (the index says 1) is refused and leaves nothing behind */
	assert_int_equal(tier_move_blob(f->st, f->s, f->blob_id[0], &f->id[0], 0, 2, &bytes, &err), ST_NOT_FOUND);
	free(err);
	err = NULL;
	assert_int_equal(check_blob(f, 0, false, "stale from"), 1);
	assert_int_equal(journal_rows(f), 0);
	/* usage follows */
	struct store_tier_usage u[CONFIG_TIER_MAX];
	uint64_t stray = 9;
	assert_int_equal(store_tier_usage(f->st, u, &stray, NULL), ST_OK);
	assert_int_equal(u[0].messages, 3);
	assert_int_equal(u[1].messages, 1);
	assert_int_equal(stray, 0);
	/* deletion removes the file on whatever tier it is */
	assert_int_equal(store_blob_unlink(f->s, &f->id[0]), 0);
	for (unsigned t = 0; t < 3; t++)
		assert_false(exists_on(f, 0, t));
}

/* Every file-system step of a move, failed in turn. */
static void test_move_fault_injection(void **state)
{
	struct fix *f = *state;
	static const struct { const char *label; enum fs_fault_op op; } ops[] = {
		{ "open temp", FS_OP_OPEN }, { "write", FS_OP_WRITE }, { "fsync", FS_OP_FSYNC },
		{ "rename", FS_OP_RENAME }, { "fsync_dir", FS_OP_FSYNC_DIR },
	};
	size_t moves_ok = 0, moves_failed = 0;
	for (size_t k = 0; k < ARRAY_LEN(ops); k++) {
		for (uint64_t nth = 1; nth <= 4; nth++) {
			char label[64];
			snprintf(label, sizeof(label), "%s #%llu", ops[k].label, (unsigned long long)nth);
			unsigned from;
			blob_row(f, 1, &from);
			unsigned to = (from + 1) % 3;
			fs_fault_set(ops[k].op, nth, EIO, false);
			uint64_t bytes;
			char *err = NULL;
			enum status r = tier_move_blob(f->st, f->s, f->blob_id[1], &f->id[1], from, to, &bytes, &err);
			free(err);
			fs_fault_set(ops[k].op, 0, 0, false);
			unsigned now = check_blob(f, 1, true, label);
			if (r == ST_OK) {
				moves_ok++;
				if (now != to)
					fail_msg("%s: move reported done, index says %u", label, now);
			} else {
				moves_failed++;
				if (now != from)
					fail_msg("%s: move failed, index says %u (was %u)", label, now, from);
			}
			assert_int_equal(tier_recover(f->st, f->s, NULL, NULL), ST_OK);
			check_blob(f, 1, false, label);
			assert_int_equal(journal_rows(f), 0);
		}
	}
	/* the faults did hit moves (and some nth were past the last call) */
	assert_true(moves_failed >= 5);
	assert_true(moves_ok >= 1);
	/* the other blobs were never touched */
	for (size_t i = 2; i < 4; i++)
		assert_int_equal(check_blob(f, i, false, "bystander"), 0);
}

/* The states a crash leaves after each step, planted by hand. */
static void copy_to(struct fix *f, size_t i, unsigned tier)
{
	char dir[PATH_MAX], path[PATH_MAX];
	store_blob_dir_of(f->s->tiers[tier].path, &f->id[i], dir, sizeof(dir));
	assert_true(fs_mkdir_p(dir, 0750));
	store_blob_path_for(f->s, tier, &f->id[i], path, sizeof(path));
	assert_true(fs_write_file_durable(path, f->data[i].data, f->data[i].len, 0640));
}

static void unlink_on(struct fix *f, size_t i, unsigned tier)
{
	char path[PATH_MAX];
	store_blob_path_for(f->s, tier, &f->id[i], path, sizeof(path));
	assert_int_equal(unlink(path), 0);
}

static void test_crash_states_recover(void **state)
{
	struct fix *f = *state;
	char *err = NULL;
	/* after step 1 (journal only) and a stray temp copy */
	assert_int_equal(store_tier_move_begin(f->st, f->blob_id[0], &f->id[0], 0, 1, &err), ST_OK);
	char tmpdir[PATH_MAX], tmp[PATH_MAX];
	snprintf(tmpdir, sizeof(tmpdir), "%s/tier-tmp", f->s->tiers[1].path);
	assert_true(fs_mkdir_p(tmpdir, 0750));
	int fd = fs_open_temp(tmpdir, tmp, sizeof(tmp));
	assert_true(fd >= 0);
	close(fd);
	/* after step 3 (renamed into place, index not updated) */
	assert_int_equal(store_tier_move_begin(f->st, f->blob_id[1], &f->id[1], 0, 2, &err), ST_OK);
	copy_to(f, 1, 2);
	/* after step 4 (committed, source not yet unlinked) */
	assert_int_equal(store_tier_move_begin(f->st, f->blob_id[2], &f->id[2], 0, 1, &err), ST_OK);
	copy_to(f, 2, 1);
	assert_int_equal(store_tier_move_commit(f->st, f->blob_id[2], 0, 1, &err), ST_OK);
	/* damaged: index names the source, only the target copy exists */
	assert_int_equal(store_tier_move_begin(f->st, f->blob_id[3], &f->id[3], 0, 2, &err), ST_OK);
	copy_to(f, 3, 2);
	unlink_on(f, 3, 0);
	/* reads work in every one of these states (blob 3 through the fall-back) */
	for (size_t i = 0; i < 3; i++)
		check_blob(f, i, true, "before recovery");
	int fd3 = store_blob_open(f->s, 0, &f->id[3], NULL);
	assert_true(fd3 >= 0);
	close(fd3);

	size_t fixed = 0;
	assert_int_equal(tier_recover(f->st, f->s, &fixed, &err), ST_OK);
	assert_int_equal(fixed, 4);
	assert_int_equal(check_blob(f, 0, false, "journal only: rolled back"), 0);
	assert_int_equal(check_blob(f, 1, false, "renamed, uncommitted: rolled back"), 0);
	assert_int_equal(check_blob(f, 2, false, "committed: completed"), 1);
	assert_int_equal(check_blob(f, 3, false, "only the target: index corrected"), 2);
	assert_int_equal(access(tmp, F_OK), -1);
	assert_int_equal(journal_rows(f), 0);
	/* idempotent */
	assert_int_equal(tier_recover(f->st, f->s, &fixed, &err), ST_OK);
	assert_int_equal(fixed, 0);
}

static void test_access_ring_and_heat(void **state)
{
	struct fix *f = *state;
	/* events for a blob become one heat row; unknown ids are ignored */
	struct msgid unknown;
	msgid_new(&unknown);
	for (int k = 0; k < 3; k++)
		assert_true(tier_access_push(&f->id[0], TIER_EVENT_READ));
	assert_true(tier_access_push(&unknown, TIER_EVENT_READ));
	assert_true(tier_access_push(&f->id[1], TIER_EVENT_DELIVERY));
	char *err = NULL;
	tier_reads_reset();
	assert_int_equal(tier_access_drain(f->st, 7 * DAY, 1000, &err), 5);
	/* the reads count against the blob's tier; a delivery and an unknown id do not */
	struct tier_reads rs;
	tier_reads_get(&rs, time_mono_ms());
	assert_int_equal(rs.hour[0], 3);
	assert_int_equal(rs.total[0] + rs.total[1] + rs.total[2], 3);
	struct store_heat h;
	assert_int_equal(store_tier_heat_get(f->st, &f->id[0], &h, NULL), ST_OK);
	if (fabs(h.score - 3.0) > 0.01)
		fail_msg("heat after 3 reads: %f", h.score);
	assert_int_equal(h.reads_days & 1, 1);
	assert_int_equal(store_tier_heat_get(f->st, &f->id[1], &h, NULL), ST_OK);
	assert_int_equal(h.reads_days, 0);
	assert_int_equal(store_tier_heat_get(f->st, &unknown, &h, NULL), ST_NOT_FOUND);
	/* the hook path: store_access_note feeds the ring once installed */
	tier_access_install();
	store_access_note(&f->id[2]);
	tier_access_uninstall();
	store_access_note(&f->id[2]); /* no hook: nothing */
	assert_int_equal(tier_access_drain(f->st, 7 * DAY, 1000, &err), 1);
	/* overflow drops and counts, never blocks */
	uint64_t dropped = tier_access_dropped();
	for (int k = 0; k < TIER_ACCESS_RING + 10; k++)
		tier_access_push(&f->id[3], TIER_EVENT_READ);
	assert_int_equal(tier_access_dropped() - dropped, 10);
	assert_int_equal(tier_access_drain(f->st, 7 * DAY, TIER_ACCESS_RING * 2, &err), TIER_ACCESS_RING);
	assert_int_equal(store_tier_heat_get(f->st, &f->id[3], &h, NULL), ST_OK);
	assert_true(h.score > 1000);
}

/* A pass with a tiny fast tier demotes the coldest; pins win. */
static void test_pass(void **state)
{
	struct fix *f = *state;
	const struct settings *base = f->s;
	(void)base;
	/* capacity for about two blobs on fast */
	f->s->tiers[0].capacity_bytes = f->data[0].len * 2 + 10;
	f->s->tier_move_bytes_per_s = 1ull << 30;
	f->s->tier_move_files_per_s = 100000;
	/* blob 3 is hot (many reads) */
	for (int k = 0; k < 50; k++)
		tier_access_push(&f->id[3], TIER_EVENT_READ);
	assert_true(tier_access_drain(f->st, 7 * DAY, 1000, NULL) == 50);
	struct tier_budget b;
	tier_budget_init(&b, f->s);
	struct tier_pass_stats ps;
	char *err = NULL;
	assert_int_equal(tier_pass(f->st, f->s, &b, NULL, &ps, &err), ST_OK);
	struct store_tier_usage u[CONFIG_TIER_MAX];
	uint64_t stray;
	assert_int_equal(store_tier_usage(f->st, u, &stray, NULL), ST_OK);
	if (u[0].bytes > f->s->tiers[0].capacity_bytes)
		fail_msg("fast holds %llu bytes > target", (unsigned long long)u[0].bytes);
	assert_int_equal(check_blob(f, 3, false, "hot blob"), 0);
	assert_int_equal(ps.failed, 0);
	assert_true(ps.moved >= 2);
	/* a second pass has nothing to do */
	assert_int_equal(tier_pass(f->st, f->s, &b, NULL, &ps, &err), ST_OK);
	assert_int_equal(ps.planned, 0);
	f->s->tiers[0].capacity_bytes = 0;
}

/* ---- references in chunks, and their fold ----------------------------------------------- */

struct ref_count {
	int64_t blob_id[4];
	size_t per_blob[4];
	size_t total, stop_after;
};

static bool count_ref(void *ctx, const struct store_tier_ref *r)
{
	struct ref_count *c = ctx;
	for (size_t i = 0; i < 4; i++) {
		if (c->blob_id[i] == r->blob_id)
			c->per_blob[i]++;
	}
	c->total++;
	return c->stop_after == 0 || c->total < c->stop_after;
}

/* store_tier_refs reads STORE_TIER_REFS_CHUNK rows at a time: every
 * reference comes exactly once across the chunk boundaries (a count just
 * over two chunks, spread over three mailboxes), and a callback's stop is
 * honoured at once, also at a boundary. */
static void test_refs_in_chunks(void **state)
{
	struct fix *f = *state;
	sqlite3 *db;
	assert_int_equal(sqlite3_open(f->s->store_index_path, &db), SQLITE_OK);
	sqlite3_busy_timeout(db, 10000);
	const size_t n = 2 * STORE_TIER_REFS_CHUNK + 7;
	char *err = NULL;
	if (sqlite3_exec(db, "BEGIN;"
			 "INSERT INTO mailboxes(account_id, name, uidvalidity) SELECT account_id, 'chunk' || n, 1"
			 " FROM (SELECT account_id FROM mailboxes LIMIT 1), (SELECT 1 AS n UNION SELECT 2 UNION SELECT 3);",
			 NULL, NULL, &err) != SQLITE_OK)
		fail_msg("mailboxes: %s", err);
	sqlite3_stmt *q;
	assert_int_equal(sqlite3_prepare_v2(db, "INSERT INTO messages(mailbox_id, uid, blob_id, modseq)"
					    " VALUES((SELECT id FROM mailboxes WHERE name = 'chunk' || ?1), ?2, ?3, 1)",
					    -1, &q, NULL), SQLITE_OK);
	size_t want[4] = { 0 };
	for (size_t i = 0; i < n; i++) {
		sqlite3_bind_int64(q, 1, (int64_t)(i % 3) + 1);
		sqlite3_bind_int64(q, 2, (int64_t)i + 1);
		sqlite3_bind_int64(q, 3, f->blob_id[i % 4]);
		assert_int_equal(sqlite3_step(q), SQLITE_DONE);
		sqlite3_reset(q);
		want[i % 4]++;
	}
	sqlite3_finalize(q);
	assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
	for (size_t i = 0; i < 4; i++)
		want[i]++;   /* the fixture's own message of each blob */

	struct ref_count c = { { 0 }, { 0 }, 0, 0 };
	memcpy(c.blob_id, f->blob_id, sizeof(c.blob_id));
	assert_int_equal(store_tier_refs(f->st, NULL, NULL, 0, count_ref, &c, &err), ST_OK);
	if (c.total != n + 4)
		fail_msg("all references: got %zu, want %zu", c.total, n + 4);
	for (size_t i = 0; i < 4; i++) {
		if (c.per_blob[i] != want[i])
			fail_msg("blob %zu: got %zu references, want %zu", i, c.per_blob[i], want[i]);
	}
	static const size_t stops[] = { 1, STORE_TIER_REFS_CHUNK, STORE_TIER_REFS_CHUNK + 1 };
	for (size_t k = 0; k < ARRAY_LEN(stops); k++) {
		struct ref_count s = { { 0 }, { 0 }, 0, stops[k] };
		assert_int_equal(store_tier_refs(f->st, NULL, NULL, 0, count_ref, &s, &err), ST_OK);
		if (s.total != stops[k])
			fail_msg("stop after %zu: the callback ran %zu times", stops[k], s.total);
	}
	/* a mailbox filter, through the same chunks */
	struct ref_count m = { { 0 }, { 0 }, 0, 0 };
	assert_int_equal(store_tier_refs(f->st, NULL, "CHUNK2", 0, count_ref, &m, &err), ST_OK);
	if (m.total != (n + 1) / 3)
		fail_msg("mailbox chunk2: got %zu references, want %zu", m.total, (n + 1) / 3);
}

static void test_cand_merge(void **state)
{
	(void)state;
	struct cand_case {
		const char *label;
		size_t n;
		struct { int64_t blob; double temp; int pin; bool promotable; } in[6];
		size_t want_n;
		struct { int64_t blob; double temp; int pin; bool promotable; } want[6];
	};
	static const struct cand_case cases[] = {
		{ "empty", 0, { { 0, 0, 0, false } }, 0, { { 0, 0, 0, false } } },
		{ "one", 1, { { 7, 1.5, -1, false } }, 1, { { 7, 1.5, -1, false } } },
		{ "distinct, sorted by blob id", 3, { { 9, 1, -1, false }, { 2, 2, 1, false }, { 5, 3, -1, true } },
		  3, { { 2, 2, 1, false }, { 5, 3, -1, true }, { 9, 1, -1, false } } },
		{ "one blob scattered: hottest, fastest pin, promotable if any", 5,
		  { { 4, 1, -1, false }, { 8, 5, -1, false }, { 4, 3, 2, false }, { 8, 2, -1, true }, { 4, 2, 1, false } },
		  2, { { 4, 3, 1, false }, { 8, 5, -1, true } } },
		{ "an unpinned reference keeps the pin", 2, { { 3, 1, 0, false }, { 3, 1, -1, false } },
		  1, { { 3, 1, 0, false } } },
	};
	for (size_t k = 0; k < ARRAY_LEN(cases); k++) {
		const struct cand_case *t = &cases[k];
		struct tier_cand c[6];
		memset(c, 0, sizeof(c));
		for (size_t i = 0; i < t->n; i++) {
			c[i].blob_id = t->in[i].blob;
			c[i].temp = t->in[i].temp;
			c[i].pin = t->in[i].pin;
			c[i].promotable = t->in[i].promotable;
		}
		size_t got = tier_cand_merge(c, t->n);
		if (got != t->want_n)
			fail_msg("%s: %zu candidates, want %zu", t->label, got, t->want_n);
		for (size_t i = 0; i < got; i++) {
			if (c[i].blob_id != t->want[i].blob || c[i].temp != t->want[i].temp ||
			    c[i].pin != t->want[i].pin || c[i].promotable != t->want[i].promotable)
				fail_msg("%s: candidate %zu is blob %lld temp %g pin %d promotable %d,"
					 " want blob %lld temp %g pin %d promotable %d", t->label, i,
					 (long long)c[i].blob_id, c[i].temp, c[i].pin, c[i].promotable,
					 (long long)t->want[i].blob, t->want[i].temp, t->want[i].pin,
					 t->want[i].promotable);
		}
	}
}

/* ---- compressed tiers -------------------------------------------------------------------- */

static void read_file_or_fail(const char *path, struct buf *out)
{
	char *d = NULL;
	size_t len = 0;
	if (!fs_read_file(path, &d, &len))
		fail_msg("read %s: %s", path, strerror(errno));
	buf_reset(out);
	buf_append(out, d, len);
	free(d);
}

/* Reads every byte of fd from offset 0 with pread, as IMAP FETCH does. */
static void pread_all_fd(int fd, struct buf *out)
{
	char chunk[4096];
	buf_reset(out);
	for (off_t off = 0;; ) {
		ssize_t n = pread(fd, chunk, sizeof(chunk), off);
		assert_true(n >= 0);
		if (n == 0)
			break;
		buf_append(out, chunk, (size_t)n);
		off += n;
	}
}

/* The message bytes a reader gets through store_blob_open equal the
 * original's [0, size), whatever tier it guesses. */
static void check_open_bytes(struct fix *f, size_t i, uint64_t size, const char *label)
{
	struct buf got = BUF_INIT;
	for (unsigned guess = 0; guess < f->s->n_tiers; guess++) {
		int fd = store_blob_open(f->s, guess, &f->id[i], NULL);
		if (fd < 0)
			fail_msg("%s: open (guess %u): %s", label, guess, strerror(errno));
		pread_all_fd(fd, &got);
		close(fd);
		/* a plain copy is the file itself (the trailer follows [0, size)),
		 * a compressed one exactly the message */
		bool exact = exists_on(f, i, 2) && f->s->tiers[2].compress == TIER_COMPRESS_ZSTD;
		if (got.len < size || (exact && got.len != size) || memcmp(got.data, f->data[i].data, size) != 0)
			fail_msg("%s: reader got %zu bytes, want the %llu message bytes", label, got.len,
				 (unsigned long long)size);
	}
	buf_free(&got);
}

static void test_compressed_tier_moves(void **state)
{
	struct fix *f = *state;
	f->s->tiers[2].compress = TIER_COMPRESS_ZSTD;
	f->s->tiers[2].compress_level = 3;
	uint64_t bytes = 0;
	char *err = NULL;
	char path[PATH_MAX];
	struct blob_meta m;
	assert_int_equal(tier_move_blob(f->st, f->s, f->blob_id[0], &f->id[0], 0, 2, &bytes, &err), ST_OK);
	store_blob_path_for(f->s, 2, &f->id[0], path, sizeof(path));
	assert_int_equal(store_blob_read_meta(path, &m), ST_OK);
	uint64_t size = m.size;
	assert_int_equal(m.compress, BLOB_COMPRESS_ZSTD);
	if (!(m.stored_size < size / 2))
		fail_msg("compressed %llu message bytes to %llu", (unsigned long long)size,
			 (unsigned long long)m.stored_size);
	struct buf file = BUF_INIT;
	read_file_or_fail(path, &file);
	assert_int_equal(bytes, file.len);
	assert_memory_equal(file.data, "\x28\xb5\x2f\xfd", 4);
	store_blob_meta_free(&m);
	check_open_bytes(f, 0, size, "on the zstd tier");
	/* out to a plain tier: the file is the original, byte for byte */
	assert_int_equal(tier_move_blob(f->st, f->s, f->blob_id[0], &f->id[0], 2, 1, &bytes, &err), ST_OK);
	assert_int_equal(check_blob(f, 0, false, "zstd -> plain"), 1);
	assert_int_equal(bytes, f->data[0].len);
	check_open_bytes(f, 0, size, "back on a plain tier");
	/* and round again, to the first tier */
	assert_int_equal(tier_move_blob(f->st, f->s, f->blob_id[0], &f->id[0], 1, 2, &bytes, &err), ST_OK);
	assert_int_equal(tier_move_blob(f->st, f->s, f->blob_id[0], &f->id[0], 2, 0, &bytes, &err), ST_OK);
	assert_int_equal(check_blob(f, 0, false, "zstd -> first tier"), 0);
	/* a zstd tier to a zstd tier copies the frame as it is */
	f->s->tiers[1].compress = TIER_COMPRESS_ZSTD;
	f->s->tiers[1].compress_level = 19;
	assert_int_equal(tier_move_blob(f->st, f->s, f->blob_id[0], &f->id[0], 0, 1, &bytes, &err), ST_OK);
	assert_int_equal(tier_move_blob(f->st, f->s, f->blob_id[0], &f->id[0], 1, 2, &bytes, &err), ST_OK);
	check_open_bytes(f, 0, size, "zstd -> zstd");
	assert_int_equal(journal_rows(f), 0);
	f->s->tiers[1].compress = TIER_COMPRESS_NONE;
	buf_free(&file);
}

/* Damaged compressed blobs: readers get EIO (never compressed bytes as
 * mail), and a move out fails and leaves the blob where the index says. */
static void test_compressed_damage(void **state)
{
	struct fix *f = *state;
	f->s->tiers[2].compress = TIER_COMPRESS_ZSTD;
	f->s->tiers[2].compress_level = 3;
	uint64_t bytes = 0;
	char *err = NULL;
	char path[PATH_MAX];
	assert_int_equal(tier_move_blob(f->st, f->s, f->blob_id[1], &f->id[1], 0, 2, &bytes, &err), ST_OK);
	store_blob_path_for(f->s, 2, &f->id[1], path, sizeof(path));
	struct buf good = BUF_INIT;
	read_file_or_fail(path, &good);
	struct blob_meta m;
	assert_int_equal(store_blob_read_meta(path, &m), ST_OK);
	const uint64_t stored = m.stored_size, size = m.size;
	static const struct { const char *label; int kind; } cases[] = {
		{ "a payload byte flipped", 0 },
		{ "frame truncated (trailer agrees)", 1 },
		{ "trailer size one more than the frame holds", 2 },
		{ "trailer size one less than the frame holds", 3 },
		{ "unknown compression in the trailer", 4 },
		{ "stored key without compress key", 5 },
	};
	for (size_t k = 0; k < ARRAY_LEN(cases); k++) {
		struct buf bad = BUF_INIT;
		struct blob_meta mm = m;
		size_t keep = (size_t)stored;
		switch (cases[k].kind) {
		case 0: keep = (size_t)stored; break;
		case 1: keep = (size_t)stored - 7; mm.stored_size = keep; break;
		case 2: mm.size = size + 1; break;
		case 3: mm.size = size - 1; break;
		default: break;
		}
		buf_append(&bad, good.data, keep);
		if (cases[k].kind == 0)
			bad.data[keep / 2] ^= 0x55;
		size_t tstart = bad.len;
		store_blob_trailer(&mm, &bad);
		char *hit = NULL;
		if (cases[k].kind == 4 && (hit = memmem(bad.data + tstart, bad.len - tstart, "compress: zstd", 14)))
			memcpy(hit, "compress: lz4x", 14);
		if (cases[k].kind == 5 && (hit = memmem(bad.data + tstart, bad.len - tstart, "compress: zstd", 14)))
			memcpy(hit, "comment: zstdx", 14);
		assert_true(fs_write_file_durable(path, bad.data, bad.len, 0640));
		errno = 0;
		int fd = store_blob_open(f->s, 2, &f->id[1], NULL);
		if (fd >= 0 || errno != EIO)
			fail_msg("%s: open gave fd %d errno %d, want -1 EIO", cases[k].label, fd, errno);
		enum status r = tier_move_blob(f->st, f->s, f->blob_id[1], &f->id[1], 2, 1, &bytes, &err);
		free(err);
		err = NULL;
		unsigned tier = 99;
		blob_row(f, 1, &tier);
		if (r == ST_OK || tier != 2 || exists_on(f, 1, 1))
			fail_msg("%s: move out gave %s, index tier %u", cases[k].label, status_info(r)->name, tier);
		assert_int_equal(journal_rows(f), 0);
		buf_free(&bad);
	}
	/* restored, it reads again */
	assert_true(fs_write_file_durable(path, good.data, good.len, 0640));
	check_open_bytes(f, 1, size, "restored");
	store_blob_meta_free(&m);
	buf_free(&good);
}

/* store_blob_unpack and store_blob_repack on their own: bounded output,
 * exact bytes, a plain message that starts with zstd's magic stays plain. */
static void test_pack_formats(void **state)
{
	struct fix *f = *state;
	char path[PATH_MAX], tmp[PATH_MAX];
	struct buf msg = BUF_INIT, file = BUF_INIT, back = BUF_INIT;
	/* a plain blob whose message begins with the zstd magic */
	static const char magic_msg[] = "\x28\xb5\x2f\xfd not a frame\r\n\r\nbody\r\n";
	buf_append(&msg, magic_msg, sizeof(magic_msg) - 1);
	struct blob_meta m = { 0 };
	msgid_new(&m.id);
	m.received = 1;
	m.size = msg.len;
	memset(m.hash_hex, 'b', 64);
	char rcpt[1][320] = { "u@t.example" };
	m.rcpt_addresses = rcpt;
	m.n_rcpts = 1;
	buf_append(&file, msg.data, msg.len);
	store_blob_trailer(&m, &file);
	snprintf(path, sizeof(path), "%s/magic", f->dir);
	assert_true(fs_write_file_durable(path, file.data, file.len, 0640));
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	fd = store_blob_fd_plain(fd);
	assert_true(fd >= 0);
	pread_all_fd(fd, &back);
	assert_int_equal(back.len, file.len); /* the file itself: plain */
	/* repack to zstd and back through unpack into a file */
	snprintf(tmp, sizeof(tmp), "%s/packed", f->dir);
	int out = open(tmp, O_RDWR | O_CREAT | O_TRUNC, 0600);
	uint64_t written = 0;
	struct blob_meta pm;
	assert_int_equal(store_blob_read_meta_fd(fd, &pm), ST_OK);
	assert_int_equal(store_blob_repack(fd, &pm, out, BLOB_COMPRESS_ZSTD, 1, &written, NULL), ST_OK);
	close(fd);
	store_blob_meta_free(&pm);
	struct stat sb;
	assert_int_equal(fstat(out, &sb), 0);
	assert_int_equal((uint64_t)sb.st_size, written);
	assert_int_equal(store_blob_read_meta_fd(out, &pm), ST_OK);
	assert_int_equal(pm.compress, BLOB_COMPRESS_ZSTD);
	assert_int_equal(pm.size, msg.len);
	char upath[PATH_MAX];
	snprintf(upath, sizeof(upath), "%s/unpacked", f->dir);
	int u = open(upath, O_RDWR | O_CREAT | O_TRUNC, 0600);
	assert_int_equal(store_blob_unpack(out, &pm, u, NULL), ST_OK);
	pread_all_fd(u, &back);
	assert_int_equal(back.len, msg.len);
	assert_memory_equal(back.data, msg.data, msg.len);
	/* a check-only pass (out = -1) and a too-small size bound */
	assert_int_equal(store_blob_unpack(out, &pm, -1, NULL), ST_OK);
	pm.size = msg.len - 1;
	char *err = NULL;
	assert_int_equal(store_blob_unpack(out, &pm, -1, &err), ST_INVALID);
	assert_non_null(strstr(err, "longer than its size"));
	free(err);
	store_blob_meta_free(&pm);
	close(u);
	close(out);
	buf_free(&msg);
	buf_free(&file);
	buf_free(&back);
}

/* ---- heat checkpoints and tier rebuild -------------------------------------------------- */

static void heat_of(struct fix *f, size_t i, struct store_heat *h)
{
	memset(h, 0, sizeof(*h));
	assert_int_equal(store_tier_heat_get(f->st, &f->id[i], h, NULL), ST_OK);
}

static void reads(struct fix *f, size_t i, int n)
{
	for (int k = 0; k < n; k++)
		assert_true(tier_access_push(&f->id[i], TIER_EVENT_READ));
	assert_int_equal(tier_access_drain(f->st, 7 * DAY, 100000, NULL), (size_t)n);
}

static void write_ckpt(struct fix *f, struct tier_ckpt_info *ci)
{
	char *err = NULL;
	usleep(3000); /* names are by millisecond */
	if (tier_checkpoint_write(f->st, f->s, ci, &err) != ST_OK)
		fail_msg("checkpoint: %s", err);
}

static void test_checkpoint_roundtrip_and_damage(void **state)
{
	struct fix *f = *state;
	reads(f, 0, 3);
	reads(f, 1, 1);
	struct tier_ckpt_info a, b, got;
	write_ckpt(f, &a);
	assert_int_equal(a.rows, 2);
	char dir[PATH_MAX];
	tier_checkpoint_dir(f->s, dir, sizeof(dir));
	assert_non_null(strstr(dir, "/arc/tier-heat")); /* on the last tier, away from the index */
	assert_true(strncmp(a.path, dir, strlen(dir)) == 0);
	struct store_heat h0a, h1a;
	heat_of(f, 0, &h0a);
	heat_of(f, 1, &h1a);
	reads(f, 2, 5);
	write_ckpt(f, &b);
	assert_int_equal(b.rows, 3);
	/* the newest, intact: three rows back with the same values */
	char *err = NULL;
	assert_int_equal(store_tier_reset(f->st, false, NULL), ST_OK);
	assert_int_equal(tier_checkpoint_load(f->st, f->s, &got, &err), ST_OK);
	assert_string_equal(got.path, b.path);
	assert_int_equal(got.rows, 3);
	struct store_heat h;
	heat_of(f, 0, &h);
	if (h.score != h0a.score || h.updated != h0a.updated || h.reads_days != h0a.reads_days)
		fail_msg("restored heat %f/%lld/%u, want %f/%lld/%u", h.score, (long long)h.updated, h.reads_days,
			 h0a.score, (long long)h0a.updated, h0a.reads_days);
	struct buf good = BUF_INIT;
	read_file_or_fail(b.path, &good);
	static const struct { const char *label; int kind; } cases[] = {
		{ "a row byte flipped", 0 }, { "truncated by one byte", 1 }, { "bad magic", 2 },
		{ "count larger than the rows", 3 }, { "NaN score with a correct CRC", 4 }, { "empty file", 5 },
	};
	for (size_t k = 0; k < ARRAY_LEN(cases); k++) {
		struct buf bad = BUF_INIT;
		buf_append(&bad, good.data, good.len);
		uint8_t *p = (uint8_t *)bad.data;
		size_t n = bad.len;
		switch (cases[k].kind) {
		case 0: p[14 + 8 + 20] ^= 1; break;
		case 1: bad.len--; break;
		case 2: p[0] = 'X'; break;
		case 3: p[n - 12] += 1; break;
		case 4: {
			uint64_t nan_bits = 0x7ff8000000000000ull;
			for (int i = 0; i < 8; i++)
				p[14 + 8 + 16 + i] = (uint8_t)(nan_bits >> (8 * i));
			uint32_t crc = tier_crc32(0, p, n - 4);
			for (int i = 0; i < 4; i++)
				p[n - 4 + i] = (uint8_t)(crc >> (8 * i));
			break;
		}
		default: bad.len = 0; break;
		}
		assert_true(fs_write_file_durable(b.path, bad.data, bad.len, 0640));
		reads(f, 3, 1); /* the table changes: a load must replace it */
		memset(&got, 0, sizeof(got));
		if (tier_checkpoint_load(f->st, f->s, &got, &err) != ST_OK)
			fail_msg("%s: load failed: %s", cases[k].label, err);
		if (strcmp(got.path, a.path) != 0 || got.rows != 2)
			fail_msg("%s: loaded %s (%zu rows), want the older %s", cases[k].label, got.path, got.rows, a.path);
		assert_int_equal(store_tier_heat_get(f->st, &f->id[2], &h, NULL), ST_OK);
		if (h.updated != 0)
			fail_msg("%s: blob 2 has heat the older checkpoint does not have", cases[k].label);
		buf_free(&bad);
	}
	/* none valid: ST_NOT_FOUND and the table untouched */
	assert_true(fs_write_file_durable(a.path, "junk", 4, 0640));
	reads(f, 3, 1);
	assert_int_equal(tier_checkpoint_load(f->st, f->s, &got, &err), ST_NOT_FOUND);
	assert_non_null(strstr(err, "no valid heat checkpoint"));
	free(err);
	err = NULL;
	heat_of(f, 3, &h);
	assert_true(h.score > 0.5);
	/* only the newest TIER_CKPT_KEEP stay */
	for (int i = 0; i < TIER_CKPT_KEEP + 2; i++)
		write_ckpt(f, &got);
	size_t files = 0;
	DIR *d = opendir(dir);
	assert_non_null(d);
	for (struct dirent *e; (e = readdir(d)) != NULL;)
		files += strncmp(e->d_name, "heat-", 5) == 0;
	closedir(d);
	assert_int_equal(files, TIER_CKPT_KEEP);
	/* an empty table (lost) never replaces a checkpoint with rows */
	assert_int_equal(store_tier_reset(f->st, false, NULL), ST_OK);
	usleep(3000);
	assert_int_equal(tier_checkpoint_write(f->st, f->s, &got, NULL), ST_OK);
	assert_string_equal(got.path, "");
	assert_true(tier_checkpoint_has_rows(f->s));
	assert_int_equal(tier_checkpoint_load(f->st, f->s, &got, NULL), ST_OK);
	assert_true(got.rows > 0);
	buf_free(&good);
}

static void test_tier_rebuild(void **state)
{
	struct fix *f = *state;
	char *err = NULL;
	reads(f, 0, 4);
	struct store_heat before;
	heat_of(f, 0, &before);
	struct tier_ckpt_info ci;
	write_ckpt(f, &ci);
	/* damage: blob 1's file on tier 2 but the index says 0; blob 2 with an
	 * extra copy on tier 1; blob 3 gone; the heat table dropped */
	char p0[PATH_MAX], p2[PATH_MAX];
	copy_to(f, 1, 2);
	unlink_on(f, 1, 0);
	copy_to(f, 2, 1);
	store_blob_path_for(f->s, 0, &f->id[3], p0, sizeof(p0));
	store_blob_path_for(f->s, 2, &f->id[3], p2, sizeof(p2));
	assert_int_equal(rename(p0, p2), 0);
	char dmg[PATH_MAX];
	snprintf(dmg, sizeof(dmg), "%.4000s.bak", p2);
	assert_int_equal(rename(p2, dmg), 0);
	assert_int_equal(store_tier_reset(f->st, false, NULL), ST_OK);
	char *reason = NULL;
	/* an empty heat table beside a checkpoint with rows is a lost table */
	assert_true(tier_state_needs_rebuild(f->st, f->s, &reason));
	assert_non_null(strstr(reason, "empty"));
	free(reason);
	struct tier_rebuild_result rr;
	if (tier_rebuild(f->st, f->s, &rr, &err) != ST_OK)
		fail_msg("rebuild: %s", err);
	assert_int_equal(rr.blobs, 4);
	assert_int_equal(rr.corrected, 1);
	assert_int_equal(rr.removed, 1);
	assert_int_equal(rr.missing, 1);
	assert_true(rr.from_checkpoint);
	assert_int_equal(check_blob(f, 1, false, "found on tier 2"), 2);
	assert_int_equal(check_blob(f, 2, false, "extra copy removed"), 0);
	struct store_heat h;
	heat_of(f, 0, &h);
	if (h.score != before.score || h.reads_days != before.reads_days)
		fail_msg("heat after rebuild %f, want %f", h.score, before.score);
	assert_false(tier_state_needs_rebuild(f->st, f->s, &reason));
	assert_null(reason);
	/* blob 3 comes back: a second rebuild finds it (and checkpoints the
	 * healthy heat table first, so the newest checkpoint keeps the heat) */
	assert_int_equal(rename(dmg, p2), 0);
	reads(f, 1, 2);
	if (tier_rebuild(f->st, f->s, &rr, &err) != ST_OK)
		fail_msg("second rebuild: %s", err);
	assert_int_equal(rr.corrected, 1);
	assert_int_equal(rr.missing, 0);
	assert_int_equal(check_blob(f, 3, false, "found again"), 2);
	heat_of(f, 1, &h);
	assert_true(h.score > 1.5);
	/* a dropped table is a missing table */
	sqlite3 *db;
	assert_int_equal(sqlite3_open(f->s->store_index_path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "DROP TABLE heat", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
	assert_true(tier_state_needs_rebuild(f->st, f->s, &reason));
	assert_non_null(strstr(reason, "heat is missing"));
	free(reason);
}

/* ---- back-off ------------------------------------------------------------------------- */

static void test_backoff_rule(void **state)
{
	(void)state;
	/* intervals of (mean latency us, samples) and the factor after each */
	static const struct { const char *label; size_t n; struct { uint64_t mean, n; } iv[24]; double want; } cases[] = {
		{ "warm-up never backs off", 5, { { 300, 10 }, { 9000, 10 }, { 300, 10 }, { 9000, 10 }, { 300, 10 } }, 1.0 },
		{ "a spike halves", 6, { { 300, 10 }, { 300, 10 }, { 300, 10 }, { 300, 10 }, { 300, 10 }, { 20000, 10 } }, 0.5 },
		{ "a sustained rise halves each interval down to the floor", 13,
		  { { 300, 10 }, { 300, 10 }, { 300, 10 }, { 300, 10 }, { 300, 10 }, { 30000, 10 }, { 30000, 10 },
		    { 30000, 10 }, { 30000, 10 }, { 30000, 10 }, { 30000, 10 }, { 30000, 10 }, { 30000, 10 } },
		  TIER_BACKOFF_FLOOR },
		{ "small jitter on a fast disk is not congestion", 8,
		  { { 20, 10 }, { 20, 10 }, { 20, 10 }, { 20, 10 }, { 20, 10 }, { 900, 10 }, { 1500, 10 }, { 900, 10 } }, 1.0 },
		{ "too few samples: nobody waits, so it recovers", 8,
		  { { 300, 10 }, { 300, 10 }, { 300, 10 }, { 300, 10 }, { 300, 10 }, { 20000, 10 }, { 0, 0 }, { 50000, 2 } },
		  0.625 },
		{ "one spike halves once; the quiet intervals after it do not", 8,
		  { { 300, 10 }, { 300, 10 }, { 300, 10 }, { 300, 10 }, { 300, 10 }, { 20000, 10 }, { 300, 10 },
		    { 300, 10 } }, 0.5 },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct tier_backoff b;
		tier_backoff_init(&b);
		for (size_t k = 0; k < cases[i].n; k++)
			tier_backoff_update(&b, cases[i].iv[k].mean * cases[i].iv[k].n, cases[i].iv[k].n);
		if (fabs(b.factor - cases[i].want) > 1e-9)
			fail_msg("%s: factor %f want %f (lat %.0f us, base %.0f us)", cases[i].label, b.factor,
				 cases[i].want, b.lat_us, b.base_us);
	}
	/* recovery is gradual: never more than +1/16 per interval, back to 1 in the end */
	struct tier_backoff r;
	tier_backoff_init(&r);
	for (int k = 0; k < 5; k++)
		tier_backoff_update(&r, 3000, 10);
	for (int k = 0; k < 4; k++)
		tier_backoff_update(&r, 300000, 10);
	assert_true(fabs(r.factor - 1.0 / 16) < 1e-9);
	double last = r.factor;
	int steps = 0;
	for (int k = 0; k < 200 && r.factor < 1.0; k++, steps++) {
		tier_backoff_update(&r, 3000, 10);
		if (r.factor < last || r.factor - last > 1.0 / 16 + 1e-9)
			fail_msg("recovery step %d: %f -> %f", k, last, r.factor);
		last = r.factor;
	}
	assert_true(r.factor == 1.0);
	assert_true(steps >= 15);
	/* the budget follows the factor, and comes back to its full rates */
	struct tier_budget bg = { 1000, 10, 1000, 10, 0, 1000, 10 };
	tier_budget_scale(&bg, 0.25);
	assert_true(fabs(bg.bytes_rate - 250) < 1e-9 && fabs(bg.files_rate - 2.5) < 1e-9);
	assert_true(bg.bytes <= 250 && bg.files <= 2.5);
	tier_budget_scale(&bg, 1.0);
	assert_true(fabs(bg.bytes_rate - 1000) < 1e-9);
	/* the process's state: fed by the hook, ticked at most once per interval */
	tier_backoff_reset();
	struct tier_budget b2 = { 100, 10, 100, 10, 0, 100, 10 };
	uint64_t t = 1000000;
	for (int k = 0; k < 5; k++, t += TIER_BACKOFF_INTERVAL_MS) {
		for (int j = 0; j < 4; j++)
			tier_latency_note(200);
		tier_backoff_tick(&b2, t);
	}
	for (int j = 0; j < 4; j++)
		tier_latency_note(50000);
	tier_backoff_tick(&b2, t - 1);                        /* not due yet: nothing */
	struct tier_backoff now;
	tier_backoff_get(&now);
	assert_true(now.factor == 1.0);
	tier_backoff_tick(&b2, t);
	tier_backoff_get(&now);
	assert_true(now.factor == 0.5);
	assert_int_equal(now.halvings, 1);
	assert_int_equal(now.samples, 24);
	assert_true(fabs(b2.bytes_rate - 50) < 1e-9);
	struct buf body = BUF_INIT;
	tier_admin_status(&body, t);
	struct tier_admin_view v;
	assert_true(tier_admin_parse(body.data, body.len, &v));
	assert_true(v.have_mover);
	assert_true(fabs(v.mover.factor - 0.5) < 1e-6);
	assert_int_equal(v.mover.halvings, 1);
	buf_free(&body);
	tier_backoff_reset();
}

/* ---- read shares ---------------------------------------------------------------------- */

static void test_read_shares(void **state)
{
	(void)state;
	tier_reads_reset();
	const uint64_t t0 = 1000ull * 60000; /* minute 1000 */
	static const struct { const char *label; unsigned tier; uint64_t at_min; } notes[] = {
		{ "fast now", 0, 0 }, { "fast now again", 0, 0 }, { "archive now", 2, 0 },
		{ "fast 59 min ago", 0, 59 }, { "standard 61 min ago", 1, 61 },
		{ "archive 23 h ago", 2, 23 * 60 }, { "archive 25 h ago: outside the day", 2, 25 * 60 },
		{ "tier out of range: ignored", CONFIG_TIER_MAX, 0 },
	};
	/* written in time order, as the drain does */
	for (size_t i = ARRAY_LEN(notes); i-- > 0;)
		tier_reads_note(notes[i].tier, t0 + (40 * 60 - notes[i].at_min) * 60000ull);
	struct tier_reads r;
	const uint64_t now = t0 + 40 * 60 * 60000ull + 30000;
	tier_reads_get(&r, now);
	static const struct { const char *label; uint64_t got, want; } cases[] = {
		{ "fast, last hour", 0, 3 }, { "standard, last hour", 0, 0 }, { "archive, last hour", 0, 1 },
		{ "fast, last day", 0, 3 }, { "standard, last day", 0, 1 }, { "archive, last day", 0, 2 },
		{ "archive, since start", 0, 3 },
	};
	uint64_t got[] = { r.hour[0], r.hour[1], r.hour[2], r.day[0], r.day[1], r.day[2], r.total[2] };
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		if (got[i] != cases[i].want)
			fail_msg("%s: got %llu want %llu", cases[i].label, (unsigned long long)got[i],
				 (unsigned long long)cases[i].want);
	}
	/* a day later everything has aged out of the buckets, not of the totals */
	tier_reads_get(&r, now + 24 * 3600000ull);
	assert_int_equal(r.day[0] + r.day[1] + r.day[2], 0);
	assert_int_equal(r.total[0], 3);
	/* a reused slot starts from zero */
	tier_reads_note(1, now + 24 * 3600000ull);
	tier_reads_get(&r, now + 24 * 3600000ull);
	assert_int_equal(r.hour[1], 1);
	assert_int_equal(r.day[0], 0);

	/* the admin body and its parser agree; names come from the settings */
	char *err = NULL;
	char *over[] = { "tier.names=fast,cold", "tier.cold.path=/tmp/x/cold" };
	struct settings *st = load("/tmp/x", over, 2, &err);
	assert_non_null(st);
	tier_admin_settings(st);
	struct buf b = BUF_INIT;
	tier_admin_status(&b, now + 24 * 3600000ull);
	assert_non_null(strstr(b.data, "reads 1 cold 1 1 2\n"));
	struct tier_admin_view v;
	assert_true(tier_admin_parse(b.data, b.len, &v));
	assert_true(v.have_reads);
	assert_int_equal(v.reads.hour[1], 1);
	assert_int_equal(v.reads.total[0], 3);
	assert_false(tier_admin_parse("not a status\nreads 0 x 1 1 1\n", 30, &v));
	buf_reset(&b);
	tier_admin_metrics(&b);
	assert_non_null(strstr(b.data, "strata_tier_reads_total{tier=\"fast\"} 3\n"));
	assert_non_null(strstr(b.data, "# TYPE strata_tier_reads_total counter\n"));
	tier_admin_settings(NULL);
	buf_free(&b);
	config_free(&st);
	tier_reads_reset();
}

int main(void)
{
	log_init("tier_test", false, LOG_LVL_ERROR);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_decay),
		cmocka_unit_test(test_heat_events_and_read_days),
		cmocka_unit_test(test_priors),
		cmocka_unit_test(test_config_and_pins),
		cmocka_unit_test(test_placement),
		cmocka_unit_test(test_rank),
		cmocka_unit_test(test_budget),
		cmocka_unit_test(test_read_shares),
		cmocka_unit_test(test_backoff_rule),
		cmocka_unit_test_setup_teardown(test_move_and_back, fix_setup, fix_teardown),
		cmocka_unit_test_setup_teardown(test_move_fault_injection, fix_setup, fix_teardown),
		cmocka_unit_test_setup_teardown(test_crash_states_recover, fix_setup, fix_teardown),
		cmocka_unit_test_setup_teardown(test_access_ring_and_heat, fix_setup, fix_teardown),
		cmocka_unit_test_setup_teardown(test_pass, fix_setup, fix_teardown),
		cmocka_unit_test_setup_teardown(test_refs_in_chunks, fix_setup, fix_teardown),
		cmocka_unit_test(test_cand_merge),
		cmocka_unit_test_setup_teardown(test_compressed_tier_moves, fix_setup, fix_teardown),
		cmocka_unit_test_setup_teardown(test_compressed_damage, fix_setup, fix_teardown),
		cmocka_unit_test_setup_teardown(test_pack_formats, fix_setup, fix_teardown),
		cmocka_unit_test_setup_teardown(test_checkpoint_roundtrip_and_damage, fix_setup, fix_teardown),
		cmocka_unit_test_setup_teardown(test_tier_rebuild, fix_setup, fix_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
