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

#include <errno.h>
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
	uint64_t cap = tier_capacity(&(struct tier_setting){ "t", "/tmp", 0, 50 });
	assert_true(cap > 0);
	assert_int_equal(tier_capacity(&(struct tier_setting){ "t", "/tmp", 12345, 0 }), 12345);
	config_free(&s);

	static const struct { const char *label; char *over[3]; const char *err; } bad[] = {
		{ "undefined path", { "tier.names=a,b", NULL, NULL }, "tier.b.path is not set" },
		{ "unknown tier", { "tier.zz.capacity=1G", NULL, NULL }, "'zz' is not in tier.names" },
		{ "bad capacity", { "tier.fast.capacity=0%", NULL, NULL }, "1% to 100%" },
		{ "bad name", { "tier.names=Fast", NULL, NULL }, "is not a tier name" },
		{ "same dir", { "tier.names=a,b", "tier.b.path=/tmp/x/blobs", NULL }, "same directory" },
		{ "pin syntax", { "tier.pin=mailbox:x=fast", NULL, NULL }, "folder: or account:" },
		{ "too many", { "tier.names=a,b,c,d,e,f,g,h,i", NULL, NULL }, "more than 8 tiers" },
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
		{ "promotion stops at target", 2, { { 0, 95, 1, -1, 0 }, { 2, 10, 5, -1, 1 } }, { 100, 100, 0 },
		  10, { 0, 1 } },
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
	assert_int_equal(tier_access_drain(f->st, 7 * DAY, 1000, &err), 5);
	struct store_heat h;
	assert_int_equal(store_tier_heat_get(f->st, &f->id[0], &h), ST_OK);
	if (fabs(h.score - 3.0) > 0.01)
		fail_msg("heat after 3 reads: %f", h.score);
	assert_int_equal(h.reads_days & 1, 1);
	assert_int_equal(store_tier_heat_get(f->st, &f->id[1], &h), ST_OK);
	assert_int_equal(h.reads_days, 0);
	assert_int_equal(store_tier_heat_get(f->st, &unknown, &h), ST_NOT_FOUND);
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
	assert_int_equal(store_tier_heat_get(f->st, &f->id[3], &h), ST_OK);
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

int main(void)
{
	log_init("tier_test", false, LOG_LVL_ERROR);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_decay),
		cmocka_unit_test(test_heat_events_and_read_days),
		cmocka_unit_test(test_priors),
		cmocka_unit_test(test_config_and_pins),
		cmocka_unit_test(test_placement),
		cmocka_unit_test(test_budget),
		cmocka_unit_test_setup_teardown(test_move_and_back, fix_setup, fix_teardown),
		cmocka_unit_test_setup_teardown(test_move_fault_injection, fix_setup, fix_teardown),
		cmocka_unit_test_setup_teardown(test_crash_states_recover, fix_setup, fix_teardown),
		cmocka_unit_test_setup_teardown(test_access_ring_and_heat, fix_setup, fix_teardown),
		cmocka_unit_test_setup_teardown(test_pass, fix_setup, fix_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
