/*
 * guard_test.c - the connection guard (src/guard): token bucket arithmetic,
 * address aggregation (/24, /64, /48, configurable prefixes), concurrency
 * accounting, bounded memory with clock eviction that never drops live
 * entries, fair shares under the class cap, allowlist over bans, ban
 * expiry, protocol offences with bans that grow on repeat, the refusal
 * lines written on accept, the good-sender memory (bounded, forgotten on an
 * offence, kept across restarts, reserved capacity) and the kernel mirror
 * of the bans (nft names and scripts, and the mirror thread against a
 * simulated kernel set).
 *
 * Settings come from config_load("/dev/null", overrides): the machine's own
 * configuration is never read.  Time is passed explicitly (now_ms).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "guard_int.h"
#include "metrics.h"

#define MAX_OVER 40

/* Settings with every limit off unless `over` sets it. */
static struct settings *settings_with(const char *const *over)
{
	static const char *const base[] = {
		"hostname=mx.test.example",
		"guard.mx.addr.rate=0", "guard.mx.addr.concurrency=0",
		"guard.mx.net.rate=0", "guard.mx.net.concurrency=0",
		"guard.mx.wide.rate=0", "guard.mx.wide.concurrency=0",
		"guard.user.addr.rate=0", "guard.user.addr.concurrency=0",
		"guard.user.net.rate=0", "guard.user.net.concurrency=0",
		"guard.user.wide.rate=0", "guard.user.wide.concurrency=0",
		"guard.mx.max_connections=1000000", "guard.user.max_connections=1000000",
		"guard.good.reserve=0",   /* the tests of the reserve set it */
	};
	char *all[MAX_OVER];
	size_t n = 0;
	for (size_t i = 0; i < ARRAY_LEN(base); i++)
		all[n++] = (char *)base[i];
	for (size_t i = 0; over != NULL && over[i] != NULL; i++) {
		assert_true(n < MAX_OVER);
		all[n++] = (char *)over[i];
	}
	char *err = NULL;
	struct settings *s = config_load("/dev/null", all, n, &err);
	if (s == NULL)
		fail_msg("config_load: %s", err);
	return s;
}

static struct guard *guard_with(const char *const *over, struct settings **s_r)
{
	struct settings *s = settings_with(over);
	char *err = NULL;
	struct guard *g = guard_new(s, &err);
	if (g == NULL)
		fail_msg("guard_new: %s", err);
	*s_r = s;
	return g;
}

static void done(struct guard **g, struct settings **s)
{
	guard_free(g);
	config_free(s);
}

static struct guard_addr addr(const char *text)
{
	struct guard_addr a;
	if (!guard_addr_parse(text, &a))
		fail_msg("bad test address %s", text);
	return a;
}

static enum guard_verdict admit(struct guard *g, enum guard_class cls, const char *text, uint64_t now,
				struct guard_ticket *t)
{
	struct guard_addr a = addr(text);
	return guard_admit(g, cls, &a, now, t);
}

static void expect_verdict(const char *label, enum guard_verdict got, enum guard_verdict want)
{
	if (got != want)
		fail_msg("%s: got %s, expected %s", label, guard_verdict_name(got), guard_verdict_name(want));
}

/* ---- token bucket ------------------------------------------------------------------ */

static void test_bucket_refill(void **state)
{
	(void)state;
	const uint32_t U = GUARD_TOKEN_UNIT;
	static const struct {
		const char *label;
		uint32_t tokens;
		uint64_t elapsed_ms, rate, burst;
		uint32_t want;
	} cases[] = {
		{ "no time, no refill", 0, 0, 60, 5, 0 },
		{ "60/min refills one per second", 0, 1000, 60, 5, GUARD_TOKEN_UNIT },
		{ "half a second is half a token", 0, 500, 60, 5, GUARD_TOKEN_UNIT / 2 },
		{ "1/min: one ms is 1 unit", 0, 1, 1, 5, 1 },
		{ "capped at burst", 4 * GUARD_TOKEN_UNIT, 10000, 60, 5, 5 * GUARD_TOKEN_UNIT },
		{ "exactly reaching burst", 3 * GUARD_TOKEN_UNIT, 2000, 60, 5, 5 * GUARD_TOKEN_UNIT },
		{ "rate 0 means always full", 0, 0, 0, 7, 7 * GUARD_TOKEN_UNIT },
		{ "huge elapsed does not overflow", 0, UINT64_MAX, 600000, 10000, 10000u * GUARD_TOKEN_UNIT },
		{ "fastest rate, one ms", 0, 1, 600000, 100, 10 * GUARD_TOKEN_UNIT },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct guard_limit l = { cases[i].rate, cases[i].burst, 0 };
		uint32_t got = guard_bucket_refill(cases[i].tokens, cases[i].elapsed_ms, &l);
		if (got != cases[i].want)
			fail_msg("%s: got %u units (%.3f tokens), expected %u", cases[i].label, got,
				 (double)got / U, cases[i].want);
	}
}

static void test_rate_limit(void **state)
{
	(void)state;
	static const char *const over[] = { "guard.mx.addr.burst=3", "guard.mx.addr.rate=60", NULL };
	struct settings *s;
	struct guard *g = guard_with(over, &s);
	uint64_t refused_before = metric_get(M_GUARD_REFUSED_RATE);
	static const struct { const char *label; uint64_t now; enum guard_verdict want; } steps[] = {
		{ "burst 1", 1000, GUARD_ADMIT },
		{ "burst 2", 1000, GUARD_ADMIT },
		{ "burst 3", 1000, GUARD_ADMIT },
		{ "bucket empty", 1000, GUARD_REFUSE_RATE },
		{ "999 ms later: still under one token", 1999, GUARD_REFUSE_RATE },
		{ "one second later: one token", 2000, GUARD_ADMIT },
		{ "and only one", 2000, GUARD_REFUSE_RATE },
		{ "a minute later: full burst again (1)", 62000, GUARD_ADMIT },
		{ "(2)", 62000, GUARD_ADMIT },
		{ "(3)", 62000, GUARD_ADMIT },
		{ "(4) empty", 62000, GUARD_REFUSE_RATE },
	};
	struct guard_ticket t[ARRAY_LEN(steps)];
	size_t refused = 0;
	for (size_t i = 0; i < ARRAY_LEN(steps); i++) {
		expect_verdict(steps[i].label, admit(g, GUARD_CLASS_MX, "192.0.2.1", steps[i].now, &t[i]),
			       steps[i].want);
		if (steps[i].want != GUARD_ADMIT) {
			refused++;
			assert_null(t[i].g);
		}
	}
	assert_int_equal(metric_get(M_GUARD_REFUSED_RATE) - refused_before, refused);
	/* Another address, and the other class, have buckets of their own. */
	struct guard_ticket o1, o2;
	expect_verdict("other address", admit(g, GUARD_CLASS_MX, "192.0.2.2", 62000, &o1), GUARD_ADMIT);
	expect_verdict("other class", admit(g, GUARD_CLASS_USER, "192.0.2.1", 62000, &o2), GUARD_ADMIT);
	for (size_t i = 0; i < ARRAY_LEN(steps); i++)
		guard_release(&t[i]);
	guard_release(&o1);
	guard_release(&o2);
	done(&g, &s);
}

/* ---- aggregation ---------------------------------------------------------------------- */

static void test_aggregation(void **state)
{
	(void)state;
	static const struct {
		const char *label;
		const char *level_over;   /* the one limit set to 1 */
		const char *extra_over;
		const char *first, *second;
		enum guard_verdict want;
	} cases[] = {
		{ "v4 same /24", "guard.mx.net.concurrency=1", NULL, "10.1.2.3", "10.1.2.200", GUARD_REFUSE_CONCURRENCY },
		{ "v4 other /24", "guard.mx.net.concurrency=1", NULL, "10.1.2.3", "10.1.3.3", GUARD_ADMIT },
		{ "v4 mapped in v6 is the same /24", "guard.mx.net.concurrency=1", NULL, "::ffff:10.1.2.3", "10.1.2.9",
		  GUARD_REFUSE_CONCURRENCY },
		{ "v4 /16 when configured", "guard.mx.net.concurrency=1", "guard.ipv4_prefix=16", "10.1.2.3", "10.1.99.3",
		  GUARD_REFUSE_CONCURRENCY },
		{ "v4 no wide level", "guard.mx.wide.concurrency=1", NULL, "10.1.2.3", "10.1.2.3", GUARD_ADMIT },
		{ "v6 same /64", "guard.mx.net.concurrency=1", NULL, "2001:db8:1:2::1", "2001:db8:1:2:ffff::9",
		  GUARD_REFUSE_CONCURRENCY },
		{ "v6 other /64", "guard.mx.net.concurrency=1", NULL, "2001:db8:1:2::1", "2001:db8:1:3::1", GUARD_ADMIT },
		{ "v6 same /48", "guard.mx.wide.concurrency=1", NULL, "2001:db8:1:2::1", "2001:db8:1:ff::1",
		  GUARD_REFUSE_CONCURRENCY },
		{ "v6 other /48", "guard.mx.wide.concurrency=1", NULL, "2001:db8:1::1", "2001:db8:2::1", GUARD_ADMIT },
		{ "v6 /56 wide when configured", "guard.mx.wide.concurrency=1", "guard.ipv6_wide_prefix=56",
		  "2001:db8:1:100::1", "2001:db8:1:1ff::1", GUARD_REFUSE_CONCURRENCY },
		{ "v6 /56 wide, other /56", "guard.mx.wide.concurrency=1", "guard.ipv6_wide_prefix=56",
		  "2001:db8:1:100::1", "2001:db8:1:200::1", GUARD_ADMIT },
		{ "same address, address limit", "guard.mx.addr.concurrency=1", NULL, "2001:db8::5", "2001:db8::5",
		  GUARD_REFUSE_CONCURRENCY },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		const char *over[] = { cases[i].level_over, cases[i].extra_over, NULL };
		struct settings *s;
		struct guard *g = guard_with(over, &s);
		struct guard_ticket a, b;
		expect_verdict(cases[i].label, admit(g, GUARD_CLASS_MX, cases[i].first, 0, &a), GUARD_ADMIT);
		expect_verdict(cases[i].label, admit(g, GUARD_CLASS_MX, cases[i].second, 0, &b), cases[i].want);
		struct guard_stats st;
		guard_stats(g, GUARD_CLASS_MX, &st);
		uint64_t want_conns = cases[i].want == GUARD_ADMIT ? 2 : 1;
		if (st.connections != want_conns)
			fail_msg("%s: %llu connections counted, expected %llu", cases[i].label,
				 (unsigned long long)st.connections, (unsigned long long)want_conns);
		guard_release(&a);
		guard_release(&b);
		guard_stats(g, GUARD_CLASS_MX, &st);
		assert_int_equal(st.connections, 0);
		assert_int_equal(st.live, 0);
		done(&g, &s);
	}
}

/* ---- concurrency accounting ----------------------------------------------------------------- */

static void test_concurrency_accounting(void **state)
{
	(void)state;
	static const char *const over[] = { "guard.user.addr.concurrency=2", "guard.user.net.concurrency=3", NULL };
	struct settings *s;
	struct guard *g = guard_with(over, &s);
	struct guard_ticket t[6];
	struct guard_addr a1 = addr("198.51.100.1"), a2 = addr("198.51.100.2");
	expect_verdict("a1 #1", guard_admit(g, GUARD_CLASS_USER, &a1, 0, &t[0]), GUARD_ADMIT);
	expect_verdict("a1 #2", guard_admit(g, GUARD_CLASS_USER, &a1, 0, &t[1]), GUARD_ADMIT);
	expect_verdict("a1 #3 over address", guard_admit(g, GUARD_CLASS_USER, &a1, 0, &t[2]),
		       GUARD_REFUSE_CONCURRENCY);
	expect_verdict("a2 #1", guard_admit(g, GUARD_CLASS_USER, &a2, 0, &t[3]), GUARD_ADMIT);
	expect_verdict("a2 #2 over network", guard_admit(g, GUARD_CLASS_USER, &a2, 0, &t[4]),
		       GUARD_REFUSE_CONCURRENCY);
	/* The refusal at the network level gave back a2's address count. */
	assert_int_equal(guard_connections(g, GUARD_CLASS_USER, GUARD_LEVEL_ADDR, &a1), 2);
	assert_int_equal(guard_connections(g, GUARD_CLASS_USER, GUARD_LEVEL_ADDR, &a2), 1);
	assert_int_equal(guard_connections(g, GUARD_CLASS_USER, GUARD_LEVEL_NET, &a1), 3);
	struct guard_stats st;
	guard_stats(g, GUARD_CLASS_USER, &st);
	assert_int_equal(st.connections, 3);
	assert_int_equal(st.active_networks, 1);
	/* Release one of a1's: a2 fits again. */
	guard_release(&t[0]);
	guard_release(&t[0]);   /* second release of the same ticket: no-op */
	assert_int_equal(guard_connections(g, GUARD_CLASS_USER, GUARD_LEVEL_ADDR, &a1), 1);
	expect_verdict("a2 #2 after a release", guard_admit(g, GUARD_CLASS_USER, &a2, 0, &t[5]), GUARD_ADMIT);
	guard_release(&t[1]);
	guard_release(&t[3]);
	guard_release(&t[5]);
	guard_stats(g, GUARD_CLASS_USER, &st);
	assert_int_equal(st.connections, 0);
	assert_int_equal(st.active_networks, 0);
	assert_int_equal(st.live, 0);
	assert_int_equal(guard_connections(g, GUARD_CLASS_USER, GUARD_LEVEL_NET, &a1), 0);
	/* The MX class saw nothing. */
	guard_stats(g, GUARD_CLASS_MX, &st);
	assert_int_equal(st.used, 0);
	done(&g, &s);
}

/* ---- bounded memory and eviction ---------------------------------------------------------------- */

#define LIVE 100
#define FLOOD 1000000

static void test_eviction_bounded(void **state)
{
	(void)state;
	/* Rate-limited entries are never "full", so recycling them is a real
	 * (counted) eviction by the clock, not a free lossless reuse. */
	static const char *const over[] = { "guard.table_entries=4096", "guard.mx.addr.rate=1",
					    "guard.mx.addr.burst=10", "guard.mx.net.rate=1",
					    "guard.mx.net.burst=10000", NULL };
	struct settings *s;
	struct guard *g = guard_with(over, &s);
	struct guard_stats before;
	guard_stats(g, GUARD_CLASS_MX, &before);
	assert_int_equal(before.capacity, 4096);
	struct guard_ticket live[LIVE];
	struct guard_addr live_addr[LIVE];
	for (int i = 0; i < LIVE; i++) {
		char text[32];
		snprintf(text, sizeof(text), "172.16.%d.%d", i / 250, i % 250 + 1);
		live_addr[i] = addr(text);
		expect_verdict(text, guard_admit(g, GUARD_CLASS_MX, &live_addr[i], 0, &live[i]), GUARD_ADMIT);
	}
	uint64_t refused = 0;
	for (uint32_t i = 0; i < FLOOD; i++) {
		struct guard_addr a = { .family = 4 };
		uint32_t v = htonl(0x0a000000u + i * 7u);   /* 10/8, spread over many /24s */
		memcpy(a.b, &v, 4);
		struct guard_ticket t;
		if (guard_admit(g, GUARD_CLASS_MX, &a, 1 + i / 1000, &t) == GUARD_ADMIT)
			guard_release(&t);
		else
			refused++;
	}
	struct guard_stats after;
	guard_stats(g, GUARD_CLASS_MX, &after);
	print_message("flood: %d sources into %zu entries: %llu evictions, %llu refused, %zu bytes\n", FLOOD,
		      after.capacity, (unsigned long long)after.evictions, (unsigned long long)refused, after.bytes);
	assert_int_equal(after.capacity, before.capacity);
	assert_int_equal(after.bytes, before.bytes);
	assert_true(after.used <= after.capacity);
	assert_true(after.evictions > (uint64_t)FLOOD);   /* address + network entries recycled */
	assert_int_equal(after.connections, LIVE);
	for (int i = 0; i < LIVE; i++) {
		uint32_t c = guard_connections(g, GUARD_CLASS_MX, GUARD_LEVEL_ADDR, &live_addr[i]);
		if (c != 1)
			fail_msg("live entry %d lost: %u connections", i, c);
	}
	for (int i = 0; i < LIVE; i++)
		guard_release(&live[i]);
	guard_stats(g, GUARD_CLASS_MX, &after);
	assert_int_equal(after.connections, 0);
	assert_int_equal(after.live, 0);
	done(&g, &s);
}

/* A bucket whose every way is live refuses a newcomer; one release frees a way. */
static void test_full_bucket_never_evicts_live(void **state)
{
	(void)state;
	struct guard_table t;
	guard_table_init(&t, 1024);
	struct guard_limit lim[GUARD_LEVEL__COUNT] = { { 1, 10, 0 }, { 1, 10, 0 }, { 1, 10, 0 } };
	const uint64_t hash = 77;   /* every key forced into the same bucket */
	uint32_t idx[GUARD_WAYS];
	for (unsigned i = 0; i <= GUARD_WAYS; i++) {
		struct guard_addr a = { .family = 4, .b = { 10, 9, 9, (uint8_t)i } };
		struct guard_key k;
		guard_key_make(&a, GUARD_LEVEL_ADDR, 32, &k);
		struct guard_step st;
		guard_table_step(&t, hash, &k, lim, 0, &st);
		if (i < GUARD_WAYS) {
			expect_verdict("filling the bucket", st.verdict, GUARD_ADMIT);
			idx[i] = st.idx;
		} else {
			expect_verdict("bucket all live", st.verdict, GUARD_REFUSE_GLOBAL);
			assert_int_equal(st.idx, GUARD_NO_ENTRY);
		}
	}
	guard_table_put(&t, idx[3]);
	struct guard_addr a = { .family = 4, .b = { 10, 9, 9, 200 } };
	struct guard_key k;
	guard_key_make(&a, GUARD_LEVEL_ADDR, 32, &k);
	struct guard_step st;
	guard_table_step(&t, hash, &k, lim, 0, &st);
	expect_verdict("after one release", st.verdict, GUARD_ADMIT);
	assert_int_equal(st.idx, idx[3]);
	assert_int_equal(atomic_load(&t.evictions), 1);
	guard_table_put(&t, st.idx);
	for (unsigned i = 0; i < GUARD_WAYS; i++) {
		if (i != 3)
			guard_table_put(&t, idx[i]);
	}
	assert_int_equal(atomic_load(&t.live), 0);
	guard_table_destroy(&t);
}

/* ---- fair share ------------------------------------------------------------------------------ */

static void test_fair_share(void **state)
{
	(void)state;
	/* cap 10, fair shares above 50 %: from the 6th connection on. */
	static const char *const over[] = { "guard.mx.max_connections=10", "guard.fair_share_above=50", NULL };
	struct settings *s;
	struct guard *g = guard_with(over, &s);
	/* share = cap / (active networks + 1), floored */
	static const struct { const char *label, *src; enum guard_verdict want; } steps[] = {
		{ "A1", "10.0.1.1", GUARD_ADMIT }, { "A2", "10.0.1.2", GUARD_ADMIT },
		{ "A3", "10.0.1.3", GUARD_ADMIT }, { "A4", "10.0.1.4", GUARD_ADMIT },
		{ "A5: at high water", "10.0.1.5", GUARD_ADMIT },
		{ "A6: above, alone: share 10/2 = 5, A holds 5", "10.0.1.6", GUARD_REFUSE_GLOBAL },
		{ "B1: share 10/3 = 3, B holds 0", "10.0.2.1", GUARD_ADMIT },
		{ "B2", "10.0.2.2", GUARD_ADMIT }, { "B3", "10.0.2.3", GUARD_ADMIT },
		{ "B4: B holds 3", "10.0.2.4", GUARD_REFUSE_GLOBAL },
		{ "C1: share 10/4 = 2", "10.0.3.1", GUARD_ADMIT },
		{ "C2: total 10 = cap", "10.0.3.2", GUARD_ADMIT },
		{ "C3: over the cap", "10.0.3.3", GUARD_REFUSE_GLOBAL },
		{ "D1: over the cap", "10.0.4.1", GUARD_REFUSE_GLOBAL },
	};
	struct guard_ticket t[ARRAY_LEN(steps)];
	uint64_t before = metric_get(M_GUARD_REFUSED_GLOBAL);
	for (size_t i = 0; i < ARRAY_LEN(steps); i++)
		expect_verdict(steps[i].label, admit(g, GUARD_CLASS_MX, steps[i].src, 0, &t[i]), steps[i].want);
	assert_int_equal(metric_get(M_GUARD_REFUSED_GLOBAL) - before, 4);
	/* One of A's goes: D (0 connections, share 10/5 = 2) gets in. */
	guard_release(&t[0]);
	struct guard_ticket c;
	expect_verdict("D1 after a release", admit(g, GUARD_CLASS_MX, "10.0.4.1", 0, &c), GUARD_ADMIT);
	struct guard_stats st;
	guard_stats(g, GUARD_CLASS_MX, &st);
	assert_int_equal(st.connections, 10);
	assert_int_equal(st.active_networks, 4);
	guard_release(&c);
	for (size_t i = 0; i < ARRAY_LEN(steps); i++)
		guard_release(&t[i]);
	guard_stats(g, GUARD_CLASS_MX, &st);
	assert_int_equal(st.connections, 0);
	assert_int_equal(st.active_networks, 0);
	done(&g, &s);
}

/* ---- allowlist and bans ------------------------------------------------------------------------ */

static void test_allowlist_beats_ban(void **state)
{
	(void)state;
	static const char *const over[] = { "guard.allow=192.0.2.0/24, 2001:db8::/32", "guard.mx.addr.concurrency=1",
					    NULL };
	struct settings *s;
	struct guard *g = guard_with(over, &s);
	struct guard_addr in = addr("192.0.2.7"), in6 = addr("2001:db8:5::1"), out = addr("198.51.100.1");
	guard_ban(g, &in, 3600, 0);
	guard_ban(g, &in6, 3600, 0);
	guard_ban(g, &out, 3600, 0);
	assert_true(guard_is_banned(g, &in, 10));
	assert_true(guard_is_allowed(g, &in));
	assert_false(guard_is_allowed(g, &out));
	uint64_t bans = metric_get(M_GUARD_REFUSED_BAN);
	struct guard_ticket t[5];
	for (int i = 0; i < 5; i++) {
		/* banned, and over its concurrency of 1 after the first: still in */
		expect_verdict("allowlisted v4", guard_admit(g, GUARD_CLASS_MX, &in, 10, &t[i]), GUARD_ADMIT);
		assert_null(t[i].g);   /* counts against nothing */
	}
	struct guard_ticket t6, to;
	expect_verdict("allowlisted v6", guard_admit(g, GUARD_CLASS_MX, &in6, 10, &t6), GUARD_ADMIT);
	expect_verdict("banned, not allowlisted", guard_admit(g, GUARD_CLASS_MX, &out, 10, &to), GUARD_REFUSE_BAN);
	assert_int_equal(metric_get(M_GUARD_REFUSED_BAN) - bans, 1);
	struct guard_stats st;
	guard_stats(g, GUARD_CLASS_MX, &st);
	assert_int_equal(st.connections, 0);
	/* A reload that drops the allowlist makes the ban bite. */
	static const char *const over2[] = { "guard.mx.addr.concurrency=1", NULL };
	struct settings *s2 = settings_with(over2);
	char *err = NULL;
	assert_true(guard_set_settings(g, s2, &err));
	expect_verdict("ban after reload", guard_admit(g, GUARD_CLASS_MX, &in, 10, &t[0]), GUARD_REFUSE_BAN);
	done(&g, &s);
	config_free(&s2);
}

static void test_ban_expiry(void **state)
{
	(void)state;
	static const char *const over[] = { "guard.ban_entries=1024", NULL };
	struct settings *s;
	struct guard *g = guard_with(over, &s);
	struct guard_addr a = addr("203.0.113.9"), b = addr("203.0.113.10");
	static const struct { const char *label; uint64_t now; bool want; } at[] = {
		{ "just banned", 1000, true }, { "last ms", 10999, true }, { "expired", 11000, false },
	};
	guard_ban(g, &a, 10, 1000);
	assert_false(guard_is_banned(g, &b, 1000));
	for (size_t i = 0; i < ARRAY_LEN(at); i++) {
		if (guard_is_banned(g, &a, at[i].now) != at[i].want)
			fail_msg("%s (t=%llu): banned is %d, expected %d", at[i].label,
				 (unsigned long long)at[i].now, !at[i].want, at[i].want);
	}
	struct guard_ticket t;
	expect_verdict("admitted after expiry", guard_admit(g, GUARD_CLASS_MX, &a, 11000, &t), GUARD_ADMIT);
	guard_release(&t);
	/* A second ban replaces the expiry; unban lifts it once. */
	guard_ban(g, &a, 10, 20000);
	guard_ban(g, &a, 100, 20000);
	assert_true(guard_is_banned(g, &a, 50000));
	assert_true(guard_unban(g, &a));
	assert_false(guard_unban(g, &a));
	assert_false(guard_is_banned(g, &a, 50000));
	/* Many more bans than room: fixed memory, the newest always holds. */
	for (uint32_t i = 0; i < 100000; i++) {
		struct guard_addr x = { .family = 6 };
		memcpy(x.b, "\x20\x01\x0d\xb8", 4);
		memcpy(x.b + 12, &i, 4);
		guard_ban(g, &x, 60 + i % 7, 60000);
		if (!guard_is_banned(g, &x, 60000))
			fail_msg("ban %u not in effect right after guard_ban", i);
	}
	done(&g, &s);
}

/* ---- protocol offences ------------------------------------------------------------------------ */

struct offence_step {
	const char *label;
	uint64_t at_ms;            /* the offence */
	uint64_t want_s;           /* ban it sets */
	unsigned want_strikes;     /* guard_offences right after */
};

static void expect_banned_window(const char *label, struct guard *g, const struct guard_addr *a, uint64_t from,
				 uint64_t until)
{
	if (!guard_is_banned(g, a, from) || !guard_is_banned(g, a, until - 1) || guard_is_banned(g, a, until))
		fail_msg("%s: expected banned from %llu to %llu ms: %d %d %d", label, (unsigned long long)from,
			 (unsigned long long)until, guard_is_banned(g, a, from), guard_is_banned(g, a, until - 1),
			 guard_is_banned(g, a, until));
}

static void test_offence_ladder(void **state)
{
	(void)state;
	static const char *const over[] = { "guard.offence_bans=10s, 100s,1000s", "guard.offence_forget=10m",
					    "guard.allow=192.0.2.0/24", NULL };
	struct settings *s;
	struct guard *g = guard_with(over, &s);
	struct guard_addr a = addr("203.0.113.5"), other = addr("203.0.113.6");
	static const struct offence_step steps[] = {
		{ "first offence", 1000, 10, 1 },
		{ "second, after the first ban expired", 20000, 100, 2 },
		{ "third", 200000, 1000, 3 },
		{ "fourth: the last step repeats", 1300000, 1000, 4 },
		/* the 4th ban ends at 2,300,000; the record is forgotten 10 min later */
		{ "after the record is forgotten: first again", 2900000, 10, 1 },
	};
	uint64_t bans = metric_get(M_GUARD_OFFENCE_BANS), harvest = metric_get(M_GUARD_OFFENCE_HARVEST);
	for (size_t i = 0; i < ARRAY_LEN(steps); i++) {
		uint64_t got = guard_offence(g, &a, GUARD_OFFENCE_HARVEST, steps[i].at_ms);
		if (got != steps[i].want_s)
			fail_msg("%s: ban of %llu s, expected %llu s", steps[i].label, (unsigned long long)got,
				 (unsigned long long)steps[i].want_s);
		unsigned strikes = guard_offences(g, &a, steps[i].at_ms);
		if (strikes != steps[i].want_strikes)
			fail_msg("%s: %u offences remembered, expected %u", steps[i].label, strikes,
				 steps[i].want_strikes);
		expect_banned_window(steps[i].label, g, &a, steps[i].at_ms, steps[i].at_ms + got * 1000);
		assert_false(guard_is_banned(g, &other, steps[i].at_ms));
		struct guard_ticket t;
		expect_verdict(steps[i].label, guard_admit(g, GUARD_CLASS_MX, &a, steps[i].at_ms + 1, &t),
			       GUARD_REFUSE_BAN);
	}
	assert_int_equal(metric_get(M_GUARD_OFFENCE_BANS) - bans, ARRAY_LEN(steps));
	assert_int_equal(metric_get(M_GUARD_OFFENCE_HARVEST) - harvest, ARRAY_LEN(steps));
	/* The record outlives the ban: remembered after expiry, until forgotten. */
	assert_int_equal(guard_offences(g, &a, 2910000 + 60000), 1);
	assert_false(guard_is_banned(g, &a, 2910000 + 60000));
	assert_int_equal(guard_offences(g, &a, 2910000 + 600000), 0);

	/* An offence never shortens a longer ban in force. */
	guard_ban(g, &other, 3600, 5000000);
	assert_int_equal(guard_offence(g, &other, GUARD_OFFENCE_ERRORS, 5000000), 10);
	expect_banned_window("admin ban kept", g, &other, 5000000, 5000000 + 3600000);

	/* Unban lifts at once and forgets the record: the next offence is a first. */
	assert_int_equal(guard_offence(g, &a, GUARD_OFFENCE_COMMANDS, 9000000), 10);
	assert_int_equal(guard_offence(g, &a, GUARD_OFFENCE_COMMANDS, 9000001), 100);
	assert_true(guard_unban(g, &a));
	assert_false(guard_is_banned(g, &a, 9000002));
	assert_int_equal(guard_offences(g, &a, 9000002), 0);
	assert_int_equal(guard_offence(g, &a, GUARD_OFFENCE_COMMANDS, 9000003), 10);

	/* Allowlisted: counted, never banned. */
	struct guard_addr in = addr("192.0.2.44");
	uint64_t pre = metric_get(M_GUARD_OFFENCE_PRE_HELO);
	assert_int_equal(guard_offence(g, &in, GUARD_OFFENCE_PRE_HELO, 1000), 0);
	assert_false(guard_is_banned(g, &in, 1000));
	assert_int_equal(guard_offences(g, &in, 1000), 0);
	assert_int_equal(metric_get(M_GUARD_OFFENCE_PRE_HELO) - pre, 1);
	done(&g, &s);
}

static void test_offence_bounded(void **state)
{
	(void)state;
	static const char *const over[] = { "guard.ban_entries=1024", NULL };
	struct settings *s;
	struct guard *g = guard_with(over, &s);
	/* Far more offenders than room: fixed memory, the newest is always banned. */
	enum log_level was = log_get_level();
	log_set_level(LOG_LVL_WARN);   /* one info line per offence */
	for (uint32_t i = 0; i < 50000; i++) {
		struct guard_addr x = { .family = 6 };
		memcpy(x.b, "\x20\x01\x0d\xb8", 4);
		memcpy(x.b + 12, &i, 4);
		uint64_t now = 1000 + i;
		if (guard_offence(g, &x, GUARD_OFFENCE_ERRORS, now) != 60)
			fail_msg("offender %u: not a first-offence ban of 60 s", i);
		if (!guard_is_banned(g, &x, now))
			fail_msg("offender %u not banned right after its offence", i);
	}
	log_set_level(was);
	done(&g, &s);
}

static void test_load_permille(void **state)
{
	(void)state;
	static const char *const over[] = { "guard.mx.max_connections=8", "guard.fair_share_above=100", NULL };
	struct settings *s;
	struct guard *g = guard_with(over, &s);
	static const struct { unsigned open; unsigned want; } at[] = {
		{ 0, 0 }, { 1, 125 }, { 4, 500 }, { 7, 875 }, { 8, 1000 },
	};
	struct guard_ticket t[8];
	unsigned open = 0;
	for (size_t i = 0; i < ARRAY_LEN(at); i++) {
		for (; open < at[i].open; open++) {
			char text[32];
			snprintf(text, sizeof(text), "198.51.%u.1", open);
			expect_verdict("filling the class", admit(g, GUARD_CLASS_MX, text, 0, &t[open]), GUARD_ADMIT);
		}
		unsigned got = guard_load_permille(g, GUARD_CLASS_MX);
		if (got != at[i].want)
			fail_msg("%u of 8 open: load %u permille, expected %u", at[i].open, got, at[i].want);
		assert_int_equal(guard_load_permille(g, GUARD_CLASS_USER), 0);
	}
	for (unsigned i = 0; i < open; i++)
		guard_release(&t[i]);
	assert_int_equal(guard_load_permille(g, GUARD_CLASS_MX), 0);
	done(&g, &s);
}

/* ---- PROXY protocol ------------------------------------------------------------------------------- */

#define V2SIG "\r\n\r\n\0\r\nQUIT\n"

struct proxy_case {
	const char *label;
	const char *data;
	size_t len;                /* 0: strlen(data) */
	enum guard_proxy_result want;
	size_t want_length;        /* header bytes, when OK */
	bool want_local;
	const char *want_src;      /* "addr port", when OK and not local */
};

static void src_text(const struct guard_proxy_header *h, char *out, size_t outlen)
{
	struct guard_addr a;
	char text[64];
	unsigned port = 0;
	if (!guard_addr_from_sockaddr((const struct sockaddr *)&h->src, h->src_len, &a)) {
		snprintf(out, outlen, "(none)");
		return;
	}
	guard_addr_format(&a, text, sizeof(text));
	if (h->src.ss_family == AF_INET)
		port = ntohs(((const struct sockaddr_in *)&h->src)->sin_port);
	else
		port = ntohs(((const struct sockaddr_in6 *)&h->src)->sin6_port);
	snprintf(out, outlen, "%s %u", text, port);
}

static void test_proxy_parse(void **state)
{
	(void)state;
	static const struct proxy_case cases[] = {
		{ "v1 tcp4", "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\nEHLO x\r\n", 0, GUARD_PROXY_OK, 44, false,
		  "192.0.2.1 56324" },
		{ "v1 tcp6", "PROXY TCP6 2001:db8::1 2001:db8::2 1 993\r\n", 0, GUARD_PROXY_OK, 42, false, "2001:db8::1 1" },
		{ "v1 unknown", "PROXY UNKNOWN\r\n", 0, GUARD_PROXY_OK, 15, true, NULL },
		{ "v1 unknown with addresses", "PROXY UNKNOWN ffff:f...f 1 2\r\n", 0, GUARD_PROXY_OK, 30, true, NULL },
		{ "v1 partial", "PROXY TCP4 192.0.2.1 19", 0, GUARD_PROXY_MORE, 0, false, NULL },
		{ "v1 prefix only", "PRO", 0, GUARD_PROXY_MORE, 0, false, NULL },
		{ "empty", "", 0, GUARD_PROXY_MORE, 0, false, NULL },
		{ "not proxy", "EHLO x\r\n", 0, GUARD_PROXY_INVALID, 0, false, NULL },
		{ "v1 wrong prefix", "PROXX TCP4", 0, GUARD_PROXY_INVALID, 0, false, NULL },
		{ "v1 bare LF", "PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n", 0, GUARD_PROXY_INVALID, 0, false, NULL },
		{ "v1 family mismatch", "PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n", 0, GUARD_PROXY_INVALID, 0, false, NULL },
		{ "v1 port range", "PROXY TCP4 192.0.2.1 198.51.100.2 65536 2\r\n", 0, GUARD_PROXY_INVALID, 0, false, NULL },
		{ "v1 leading zero", "PROXY TCP4 192.0.2.1 198.51.100.2 025 2\r\n", 0, GUARD_PROXY_INVALID, 0, false, NULL },
		{ "v1 double space", "PROXY TCP4  192.0.2.1 198.51.100.2 1 2\r\n", 0, GUARD_PROXY_INVALID, 0, false, NULL },
		{ "v1 trailing space", "PROXY TCP4 192.0.2.1 198.51.100.2 1 2 \r\n", 0, GUARD_PROXY_INVALID, 0, false, NULL },
		{ "v1 extra token", "PROXY TCP4 192.0.2.1 198.51.100.2 1 2 3\r\n", 0, GUARD_PROXY_INVALID, 0, false, NULL },
		{ "v1 UDP", "PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n", 0, GUARD_PROXY_INVALID, 0, false, NULL },
		{ "v1 control char", "PROXY TCP4 192.0.2.1\t198.51.100.2 1 2\r\n", 0, GUARD_PROXY_INVALID, 0, false, NULL },
		{ "v1 too long",
		  "PROXY UNKNOWN xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
		  0, GUARD_PROXY_INVALID, 0, false, NULL },
		{ "v2 tcp4", V2SIG "\x21\x11\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x02\xdc\x04\x00\x19" "EHLO",
		  16 + 12 + 4, GUARD_PROXY_OK, 28, false, "192.0.2.1 56324" },
		{ "v2 tcp6", V2SIG "\x21\x21\x00\x24" "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x01"
		  "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x02" "\x00\x07\x03\xe1", 16 + 36, GUARD_PROXY_OK, 52, false,
		  "2001:db8::1 7" },
		{ "v2 tcp4 with TLVs", V2SIG "\x21\x11\x00\x10\xc0\x00\x02\x01\xc6\x33\x64\x02\x00\x01\x00\x02"
		  "\x04\x00\x01\x00", 32, GUARD_PROXY_OK, 32, false, "192.0.2.1 1" },
		{ "v2 local", V2SIG "\x20\x00\x00\x00", 16, GUARD_PROXY_OK, 16, true, NULL },
		{ "v2 unix", V2SIG "\x21\x31\x00\x00", 16, GUARD_PROXY_OK, 16, true, NULL },
		{ "v2 udp: own address", V2SIG "\x21\x12\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x02\xdc\x04\x00\x19", 28,
		  GUARD_PROXY_OK, 28, true, NULL },
		{ "v2 partial signature", V2SIG, 7, GUARD_PROXY_MORE, 0, false, NULL },
		{ "v2 partial body", V2SIG "\x21\x11\x00\x0c\xc0\x00", 18, GUARD_PROXY_MORE, 0, false, NULL },
		{ "v2 bad signature", "\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x0c", 16, GUARD_PROXY_INVALID, 0, false, NULL },
		{ "v2 version 1", V2SIG "\x11\x11\x00\x0c", 16, GUARD_PROXY_INVALID, 0, false, NULL },
		{ "v2 command 2", V2SIG "\x22\x11\x00\x0c", 16, GUARD_PROXY_INVALID, 0, false, NULL },
		{ "v2 too short for tcp4", V2SIG "\x21\x11\x00\x04\xc0\x00\x02\x01", 20, GUARD_PROXY_INVALID, 0, false, NULL },
		{ "v2 body over the cap", V2SIG "\x21\x11\x02\x01", 16, GUARD_PROXY_INVALID, 0, false, NULL },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		const struct proxy_case *c = &cases[i];
		size_t len = c->len ? c->len : strlen(c->data);
		struct guard_proxy_header h;
		enum guard_proxy_result r = guard_proxy_parse((const uint8_t *)c->data, len, &h);
		char src[96] = "";
		if (r == GUARD_PROXY_OK && !h.local)
			src_text(&h, src, sizeof(src));
		if (r != c->want || (r == GUARD_PROXY_OK && (h.length != c->want_length || h.local != c->want_local ||
							    (c->want_src != NULL && strcmp(src, c->want_src) != 0))))
			fail_msg("%s: result %d length %zu local %d src '%s'; expected %d, %zu, %d, '%s'", c->label, r,
				 h.length, h.local, src, c->want, c->want_length, c->want_local,
				 c->want_src ? c->want_src : "");
		/* Fed byte by byte, the header is never complete early, and what
		 * the reader would consume never passes the header's end. */
		if (c->want == GUARD_PROXY_OK) {
			size_t have = 0;
			for (size_t k = 1; k < c->want_length; k++) {
				if (guard_proxy_parse((const uint8_t *)c->data, k, &h) != GUARD_PROXY_MORE)
					fail_msg("%s: not MORE after %zu of %zu bytes", c->label, k, c->want_length);
			}
			while (have < c->want_length) {
				size_t take = guard_proxy_wanted((const uint8_t *)c->data, have, len - have);
				if (take == 0 || have + take > c->want_length)
					fail_msg("%s: the reader would take %zu bytes at %zu (header %zu)", c->label, take, have,
						 c->want_length);
				have += take;
			}
		}
	}
}

/* ---- brute force --------------------------------------------------------------------------------- */

static void test_auth_brute_force(void **state)
{
	(void)state;
	static const char *const over[] = { "guard.auth.delay=100ms", "guard.auth.max_delay=1s",
					    "guard.auth.ban_after=5", "guard.auth.window=1m",
					    "guard.allow=192.0.2.0/24", NULL };
	struct settings *s;
	struct guard *g = guard_with(over, &s);
	struct guard_addr attacker = addr("203.0.113.66"), other = addr("198.51.100.44"), nat = addr("192.0.2.9");
	enum log_level was = log_get_level();
	log_set_level(LOG_LVL_WARN);
	static const struct { const char *label; uint64_t want_ms; bool banned_after; } steps[] = {
		{ "1st failure", 100, false }, { "2nd", 200, false }, { "3rd", 400, false },
		{ "4th", 800, false }, { "5th: capped, and the source is banned", 1000, true },
	};
	uint64_t now = 10000;
	for (size_t i = 0; i < ARRAY_LEN(steps); i++, now += 10) {
		uint64_t got = guard_auth_failure(g, &attacker, i % 2 ? "Victim@Example.ORG" : "victim@example.org", now);
		if (got != steps[i].want_ms || guard_is_banned(g, &attacker, now) != steps[i].banned_after)
			fail_msg("%s: delay %llu ms (expected %llu), banned %d (expected %d)", steps[i].label,
				 (unsigned long long)got, (unsigned long long)steps[i].want_ms,
				 guard_is_banned(g, &attacker, now), steps[i].banned_after);
	}
	unsigned src, acct;
	guard_auth_counts(g, &attacker, "VICTIM@example.org", now, &src, &acct);
	assert_int_equal(src, 0);    /* started again after its ban */
	assert_int_equal(acct, 5);   /* one account, whatever the case */
	/* Another source failing for the attacked account: slowed, never banned
	 * for the attacker's failures; a success is never delayed (the caller
	 * only asks on failure) and the account is never locked. */
	assert_int_equal(guard_auth_failure(g, &other, "victim@example.org", now), 1000);
	assert_false(guard_is_banned(g, &other, now));
	guard_auth_counts(g, &other, "victim@example.org", now, &src, &acct);
	assert_int_equal(src, 1);
	/* A fresh account from a fresh source: the base delay. */
	struct guard_addr fresh = addr("198.51.100.45");
	assert_int_equal(guard_auth_failure(g, &fresh, "someone@example.org", now), 100);
	/* The window: a minute after the last failure everything is forgotten. */
	assert_int_equal(guard_auth_failure(g, &other, "victim@example.org", now + 60000), 100);
	/* Allowlisted sources are slowed but never banned. */
	for (int i = 0; i < 10; i++)
		guard_auth_failure(g, &nat, "x@example.org", now + (uint64_t)i);
	assert_false(guard_is_banned(g, &nat, now + 10));
	/* Fixed memory: a flood of addresses and names only recycles entries. */
	for (uint32_t i = 0; i < 20000; i++) {
		struct guard_addr x = { .family = 4, .b = { 10, (uint8_t)(i >> 16), (uint8_t)(i >> 8), (uint8_t)i } };
		char name[32];
		snprintf(name, sizeof(name), "u%u@example.org", i);
		if (guard_auth_failure(g, &x, name, now + 100) != 100)
			fail_msg("flood failure %u: not the base delay", i);
	}
	log_set_level(was);
	done(&g, &s);
}

/* ---- state across restarts, run-time allowlist, report ------------------------------------------ */

static void remove_state(const char *dir)
{
	static const char *const names[] = { "guard-allow", "guard-bans", "guard-good" };
	for (size_t i = 0; i < ARRAY_LEN(names); i++) {
		char path[512];
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		unlink(path);
	}
	rmdir(dir);
}

static void test_state_roundtrip(void **state)
{
	(void)state;
	char dir[] = "/tmp/guard-test-XXXXXX";
	assert_non_null(mkdtemp(dir));
	static const char *const over[] = { "guard.offence_bans=10s,100s", NULL };
	struct settings *s;
	struct guard *g = guard_with(over, &s);
	char *err = NULL;
	uint64_t t0 = 1000000;
	assert_true(guard_state_load(g, dir, t0, &err));   /* nothing there yet */
	struct guard_addr banned = addr("198.51.100.1"), offender = addr("2001:db8::7"), old = addr("198.51.100.2");
	struct guard_addr in = addr("203.0.113.77");
	guard_ban(g, &banned, 3600, t0);
	guard_offence(g, &offender, GUARD_OFFENCE_HARVEST, t0);
	guard_offence(g, &offender, GUARD_OFFENCE_HARVEST, t0 + 20000);   /* 2nd: 100 s, until t0+120 s */
	guard_offence(g, &old, GUARD_OFFENCE_ERRORS, t0);                 /* expires at t0+10 s, remembered */
	assert_false(guard_is_allowed(g, &in));
	assert_true(guard_allow_add(g, "203.0.113.0/24, 2001:db8:ffff::/48", &err));
	assert_true(guard_allow_add(g, "203.0.113.0/24", &err));          /* a duplicate changes nothing */
	assert_true(guard_is_allowed(g, &in));
	assert_false(guard_allow_add(g, "203.0.113.0/33", &err));
	assert_non_null(err);
	free(err);
	err = NULL;
	assert_true(guard_state_save(g, t0 + 30000, &err));
	done(&g, &s);

	/* A new process: another monotonic origin; wall-clock expiries carry over. */
	g = guard_with(over, &s);
	uint64_t t1 = 50000000;
	assert_true(guard_state_load(g, dir, t1, &err));
	assert_true(guard_is_allowed(g, &in));
	struct guard_addr in6 = addr("2001:db8:ffff:1::1");
	assert_true(guard_is_allowed(g, &in6));
	const struct { const char *label; const struct guard_addr *a; uint64_t at; bool want; } at[] = {
		{ "admin ban, an hour less 30 s left", &banned, t1 + 3500000, true },
		{ "admin ban over", &banned, t1 + 3600000, false },
		{ "offence ban, 90 s left", &offender, t1 + 80000, true },
		{ "offence ban over", &offender, t1 + 95000, false },
		{ "expired ban stays expired", &old, t1, false },
	};
	for (size_t i = 0; i < ARRAY_LEN(at); i++) {
		if (guard_is_banned(g, at[i].a, at[i].at) != at[i].want)
			fail_msg("%s: banned %d, expected %d", at[i].label, !at[i].want, at[i].want);
	}
	/* The offence counts came back: the next offence is a 2nd (or 3rd). */
	assert_int_equal(guard_offences(g, &old, t1), 1);
	assert_int_equal(guard_offence(g, &old, GUARD_OFFENCE_ERRORS, t1), 100);
	assert_int_equal(guard_offences(g, &offender, t1 + 100000), 2);
	/* A reload keeps the run-time allowlist. */
	assert_true(guard_set_settings(g, s, &err));
	assert_true(guard_is_allowed(g, &in));
	done(&g, &s);
	remove_state(dir);
}

static void test_state_bad_files(void **state)
{
	(void)state;
	char dir[] = "/tmp/guard-test-XXXXXX";
	assert_non_null(mkdtemp(dir));
	char path[512];
	snprintf(path, sizeof(path), "%s/guard-bans", dir);
	static const char junk[] = "# comment\n\nnot-an-address 1 1\n198.51.100.9\n198.51.100.8 99999999999999 2 extra\n"
				   "198.51.100.7 18446744073709551615 1\n";
	assert_true(fs_write_file_durable(path, junk, sizeof(junk) - 1, 0600));
	snprintf(path, sizeof(path), "%s/guard-allow", dir);
	static const char allow[] = "10.0.0.0/8\nbogus\n172.16.0.0/16, 172.17.0.0/16\n";
	assert_true(fs_write_file_durable(path, allow, sizeof(allow) - 1, 0600));
	struct settings *s;
	struct guard *g = guard_with(NULL, &s);
	char *err = NULL;
	enum log_level was = log_get_level();
	log_set_level(LOG_LVL_ERROR);   /* one warning per bad line */
	assert_true(guard_state_load(g, dir, 1000, &err));
	log_set_level(was);
	struct guard_addr forever = addr("198.51.100.7"), in = addr("10.9.9.9"), not_in = addr("172.16.2.3");
	assert_true(guard_is_banned(g, &forever, 1000));
	assert_true(guard_is_allowed(g, &in));
	assert_false(guard_is_allowed(g, &not_in));   /* a list on one line is not a saved entry */
	done(&g, &s);
	remove_state(dir);
}

static void test_status_report(void **state)
{
	(void)state;
	static const char *const over[] = { "guard.mx.max_connections=50", NULL };
	struct settings *s;
	struct guard *g = guard_with(over, &s);
	struct guard_ticket t[5];
	for (int i = 0; i < 3; i++)
		expect_verdict("busy source", admit(g, GUARD_CLASS_MX, "192.0.2.1", 0, &t[i]), GUARD_ADMIT);
	expect_verdict("quiet source", admit(g, GUARD_CLASS_MX, "192.0.2.2", 0, &t[3]), GUARD_ADMIT);
	expect_verdict("user", admit(g, GUARD_CLASS_USER, "2001:db8::5", 0, &t[4]), GUARD_ADMIT);
	struct guard_addr b = addr("198.51.100.3");
	guard_ban(g, &b, 600, 0);
	guard_offence(g, &b, GUARD_OFFENCE_EARLY_TALK, 0);
	struct buf out = BUF_INIT;
	guard_status(g, 1000, true, &out);
	buf_append(&out, "", 1);
	static const char *const want_json[] = {
		"\"mx\":{\"connections\":4,\"max_connections\":50,",
		"\"top_sources\":[{\"address\":\"192.0.2.1\",\"connections\":3},{\"address\":\"192.0.2.2\",\"connections\":1}]",
		"\"user\":{\"connections\":1,",
		"{\"address\":\"2001:db8::5\",\"connections\":1}",
		"\"bans\":[{\"address\":\"198.51.100.3\",\"expires_in\":599}]",
		"\"top_offenders\":[{\"address\":\"198.51.100.3\",\"offences\":1}]",
		"\"allowed_at_run_time\":[]",
	};
	for (size_t i = 0; i < ARRAY_LEN(want_json); i++) {
		if (strstr(out.data, want_json[i]) == NULL)
			fail_msg("JSON report lacks %s:\n%s", want_json[i], out.data);
	}
	buf_free(&out);
	guard_status(g, 1000, false, &out);
	buf_append(&out, "", 1);
	static const char *const want_text[] = { "mx    4 of 50 connections", "192.0.2.1", "3 connections", "bans: 1",
						 "599s left", "1 offences" };
	for (size_t i = 0; i < ARRAY_LEN(want_text); i++) {
		if (strstr(out.data, want_text[i]) == NULL)
			fail_msg("text report lacks %s:\n%s", want_text[i], out.data);
	}
	buf_free(&out);
	for (int i = 0; i < 5; i++)
		guard_release(&t[i]);
	done(&g, &s);
}

static void test_offence_settings(void **state)
{
	(void)state;
	static const struct { const char *label; const char *value; const char *want_err; } cases[] = {
		{ "shorter than the one before", "guard.offence_bans=10m,1m", "shorter" },
		{ "empty", "guard.offence_bans=", "at least one" },
		{ "below a second", "guard.offence_bans=500ms", "not a duration" },
		{ "not a duration", "guard.offence_bans=soon", "not a duration" },
		{ "too many", "guard.offence_bans=1s,2s,3s,4s,5s,6s,7s,8s,9s", "more than 8" },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		const char *over[] = { cases[i].value, NULL };
		struct settings *s = settings_with(over);
		char *err = NULL;
		struct guard *g = guard_new(s, &err);
		if (g != NULL || err == NULL || strstr(err, cases[i].want_err) == NULL)
			fail_msg("%s: guard_new gave %p, error '%s', expected an error with '%s'", cases[i].label,
				 (void *)g, err ? err : "(none)", cases[i].want_err);
		free(err);
		guard_free(&g);
		config_free(&s);
	}
}

/* ---- addresses and lists ------------------------------------------------------------------------ */

static void test_cidr_lists(void **state)
{
	(void)state;
	static const struct {
		const char *list;
		bool ok;
		size_t n;
		const char *inside, *outside;
	} cases[] = {
		{ "", true, 0, NULL, "10.0.0.1" },
		{ "10.0.0.0/8", true, 1, "10.255.1.1", "11.0.0.1" },
		{ " 10.1.1.1 , ::/0 ", true, 2, "2001:db8::1", "10.1.1.2" },
		{ "2001:db8::/32", true, 1, "2001:db8:ffff::1", "2001:db9::1" },
		{ "192.0.2.128/25", true, 1, "192.0.2.200", "192.0.2.127" },
		{ "::ffff:192.0.2.0/120", true, 1, "192.0.2.5", "192.0.3.5" },
		{ "0.0.0.0/0", true, 1, "127.0.0.1", "::1" },
		{ "10.0.0.0/33", false, 0, NULL, NULL },
		{ "::1/129", false, 0, NULL, NULL },
		{ "10.0.0.0/", false, 0, NULL, NULL },
		{ "10.0.0.0/8x", false, 0, NULL, NULL },
		{ "example.org", false, 0, NULL, NULL },
		{ "10.0.0.0/8,,bad", false, 0, NULL, NULL },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct guard_cidr *v = NULL;
		size_t n = 99;
		char *err = NULL;
		bool ok = guard_cidr_parse_list(cases[i].list, &v, &n, &err);
		if (ok != cases[i].ok)
			fail_msg("'%s': parse %s, expected %s (%s)", cases[i].list, ok ? "ok" : "failed",
				 cases[i].ok ? "ok" : "failure", err ? err : "");
		/* config_load must agree with the guard's own parser */
		char over[128];
		snprintf(over, sizeof(over), "guard.allow=%s", cases[i].list);
		char *o[] = { over }, *cerr = NULL;
		struct settings *s = config_load("/dev/null", o, 1, &cerr);
		if ((s != NULL) != cases[i].ok)
			fail_msg("'%s': config_load %s", cases[i].list, s ? "accepted" : cerr);
		config_free(&s);
		free(cerr);
		if (!ok) {
			assert_non_null(err);
			free(err);
			continue;
		}
		assert_int_equal(n, cases[i].n);
		bool in = false, outm = false;
		struct guard_addr a;
		for (size_t j = 0; j < n; j++) {
			if (cases[i].inside && guard_addr_parse(cases[i].inside, &a) && guard_cidr_match(&v[j], &a))
				in = true;
			if (guard_addr_parse(cases[i].outside, &a) && guard_cidr_match(&v[j], &a))
				outm = true;
		}
		if (cases[i].inside != NULL && !in)
			fail_msg("'%s' should contain %s", cases[i].list, cases[i].inside);
		if (outm)
			fail_msg("'%s' should not contain %s", cases[i].list, cases[i].outside);
		free(v);
	}
}

/* ---- the accept path ------------------------------------------------------------------------------ */

static void test_accept_refusal_lines(void **state)
{
	(void)state;
	struct settings *s;
	struct guard *g = guard_with(NULL, &s);
	struct guard_addr banned = addr("198.51.100.66");
	guard_ban(g, &banned, 60, time_mono_ms());
	struct sockaddr_in sin = { .sin_family = AF_INET };
	inet_pton(AF_INET, "198.51.100.66", &sin.sin_addr);
	static const struct { enum guard_proto proto; const char *line; } cases[] = {
		{ GUARD_PROTO_SMTP, "421 4.7.0 mx.test.example Too many connections from your network, try again later\r\n" },
		{ GUARD_PROTO_SUBMISSION, "421 4.7.0 mx.test.example Too many connections from your network, try again later\r\n" },
		{ GUARD_PROTO_IMAP, "* BYE Too many connections\r\n" },
		{ GUARD_PROTO_POP3, "-ERR [SYS/TEMP] Too many connections\r\n" },
		{ GUARD_PROTO_IMAPS, "" },
		{ GUARD_PROTO_POP3S, "" },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		int sv[2];
		assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
		struct guard_ticket t;
		assert_false(guard_accept(g, cases[i].proto, sv[0], (struct sockaddr *)&sin, sizeof(sin), &t));
		char buf[256];
		ssize_t n = read(sv[1], buf, sizeof(buf) - 1);   /* sv[0] was closed: EOF after the line */
		assert_true(n >= 0);
		buf[n] = '\0';
		if (strcmp(buf, cases[i].line) != 0)
			fail_msg("proto %d: got '%s', expected '%s'", (int)cases[i].proto, buf, cases[i].line);
		close(sv[1]);
	}
	/* Not an IP peer, or no guard: admitted with an empty ticket. */
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	struct sockaddr_un_like { sa_family_t f; char p[8]; } un = { AF_UNIX, "" };
	struct guard_ticket t;
	assert_true(guard_accept(g, GUARD_PROTO_SMTP, sv[0], (struct sockaddr *)&un, sizeof(un), &t));
	assert_null(t.g);
	assert_true(guard_accept(NULL, GUARD_PROTO_SMTP, sv[0], (struct sockaddr *)&sin, sizeof(sin), &t));
	assert_null(t.g);
	close(sv[0]);
	close(sv[1]);
	done(&g, &s);
}

static void test_disabled(void **state)
{
	(void)state;
	static const char *const over[] = { "guard.enabled=no", "guard.mx.addr.concurrency=1", NULL };
	struct settings *s;
	struct guard *g = guard_with(over, &s);
	struct guard_ticket t[3];
	for (int i = 0; i < 3; i++)
		expect_verdict("disabled: no limits", admit(g, GUARD_CLASS_MX, "192.0.2.1", 0, &t[i]), GUARD_ADMIT);
	struct guard_addr a = addr("192.0.2.1");
	guard_ban(g, &a, 60, 0);
	struct guard_ticket b;
	expect_verdict("disabled: bans still apply", guard_admit(g, GUARD_CLASS_MX, &a, 1, &b), GUARD_REFUSE_BAN);
	done(&g, &s);
}

/* ---- good senders ------------------------------------------------------------------------------ */

static void test_good_senders(void **state)
{
	(void)state;
	static const char *const over[] = { "guard.good.ttl=1h", "guard.good.entries=1024",
					    "guard.allow=192.0.2.0/24", NULL };
	struct settings *s;
	struct guard *g = guard_with(over, &s);
	uint64_t t0 = 5000000;
	struct guard_addr a = addr("198.51.100.9"), b = addr("2001:db8::9"), al = addr("192.0.2.5");
	struct guard_addr c = addr("198.51.100.10"), d = addr("198.51.100.11");
	guard_good_mark(g, &a, t0);
	guard_good_mark(g, &b, t0);
	guard_good_mark(g, &al, t0);       /* allowlisted: needs no reserve */
	guard_good_mark(g, &c, t0);
	guard_ban(g, &d, 60, t0);
	guard_good_mark(g, &d, t0 + 1);    /* banned: earns nothing */
	const struct { const char *label; const struct guard_addr *x; uint64_t at; bool want; } cases[] = {
		{ "v4 marked", &a, t0 + 1, true },
		{ "v6 marked", &b, t0 + 1, true },
		{ "allowlisted not recorded", &al, t0 + 1, false },
		{ "banned not recorded", &d, t0 + 2, false },
		{ "unknown", &(struct guard_addr){ 0 }, t0, false },
		{ "just inside the ttl", &a, t0 + 3599999, true },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		bool got = cases[i].x->family != 0 && guard_is_good(g, cases[i].x, cases[i].at);
		if (got != cases[i].want)
			fail_msg("%s: good %d, expected %d", cases[i].label, got, cases[i].want);
	}
	assert_int_equal(guard_good_foreach(g, t0 + 1, NULL, NULL), 3);
	/* A new mark renews the ttl; the old one runs out. */
	guard_good_mark(g, &b, t0 + 1800000);
	assert_false(guard_is_good(g, &a, t0 + 3600000));
	assert_true(guard_is_good(g, &b, t0 + 3600000));
	/* An offence forgets the address, and so does an administrator's ban. */
	assert_true(guard_is_good(g, &c, t0 + 10));
	assert_int_equal(guard_offence(g, &c, GUARD_OFFENCE_HARVEST, t0 + 10), 60);
	assert_false(guard_is_good(g, &c, t0 + 11));
	guard_ban(g, &b, 60, t0 + 1800001);
	assert_false(guard_is_good(g, &b, t0 + 1800002));
	assert_false(guard_good_forget(g, &b));
	/* The protocols' hook: the daemon's guard, a text address, now. */
	guard_good_mark_ip("198.51.100.30");     /* no daemon guard: nothing */
	guard_process_set(g);
	guard_good_mark_ip("not an address");
	guard_good_mark_ip("198.51.100.30");
	struct guard_addr hooked = addr("198.51.100.30");
	assert_true(guard_is_good(g, &hooked, time_mono_ms()));
	guard_process_set(NULL);
	done(&g, &s);
}

static void test_good_bounded(void **state)
{
	(void)state;
	static const char *const over[] = { "guard.good.entries=1024", NULL };
	struct settings *s;
	struct guard *g = guard_with(over, &s);
	size_t cap = guard_good_capacity(g);
	assert_true(cap >= 1024 && cap <= 1024 + GUARD_SHARDS * GUARD_WAYS);
	/* Twenty times the room: the table recycles, it never grows. */
	for (unsigned i = 0; i < 20 * cap; i++) {
		struct guard_addr a = { .family = 4, .b = { 10, (uint8_t)(i >> 16), (uint8_t)(i >> 8), (uint8_t)i } };
		guard_good_mark(g, &a, 1000 + i);
		if (atomic_load(&g->good.n) > cap)
			fail_msg("after %u marks: %zu entries, room for %zu", i + 1, atomic_load(&g->good.n), cap);
	}
	size_t live = guard_good_foreach(g, 1000 + 20 * cap, NULL, NULL);
	if (live < cap / 2 || live > cap)
		fail_msg("%zu good senders remembered, room for %zu", live, cap);
	/* The latest sender is remembered (the clock evicts older ones). */
	unsigned last = 20 * (unsigned)cap - 1;
	struct guard_addr a = { .family = 4, .b = { 10, (uint8_t)(last >> 16), (uint8_t)(last >> 8), (uint8_t)last } };
	assert_true(guard_is_good(g, &a, 1000 + 20 * cap));
	done(&g, &s);
}

static void test_good_reserve(void **state)
{
	(void)state;
	/* cap 10, 30 % reserved: others stop at 7; fair shares above 50 % of 7. */
	static const char *const over[] = { "guard.mx.max_connections=10", "guard.good.reserve=30",
					    "guard.fair_share_above=50", NULL };
	struct settings *s;
	struct guard *g = guard_with(over, &s);
	struct guard_addr good = addr("10.0.9.1"), good2 = addr("10.0.1.99");
	guard_good_mark(g, &good, 0);
	guard_good_mark(g, &good2, 0);
	static const struct { const char *label, *src; enum guard_verdict want; } steps[] = {
		{ "A1", "10.0.1.1", GUARD_ADMIT }, { "A2", "10.0.1.2", GUARD_ADMIT },
		{ "A3", "10.0.1.3", GUARD_ADMIT },
		{ "A4: above 50 % of the pool of 7, share 7/2 = 3", "10.0.1.4", GUARD_REFUSE_GLOBAL },
		{ "good in A's network: no fair share for it", "10.0.1.99", GUARD_ADMIT },
		{ "B1", "10.0.2.1", GUARD_ADMIT }, { "B2", "10.0.2.2", GUARD_ADMIT },
		{ "C1: 7, the whole pool", "10.0.3.1", GUARD_ADMIT },
		{ "C2: the pool of 7 is full", "10.0.3.2", GUARD_REFUSE_GLOBAL },
		{ "good: the reserve", "10.0.9.1", GUARD_ADMIT },
		{ "good again: the reserve", "10.0.9.1", GUARD_ADMIT },
		{ "good2 again: 10 = cap", "10.0.1.99", GUARD_ADMIT },
		{ "good over the cap", "10.0.9.1", GUARD_REFUSE_GLOBAL },
		{ "others still refused", "10.0.4.1", GUARD_REFUSE_GLOBAL },
	};
	struct guard_ticket t[ARRAY_LEN(steps)];
	for (size_t i = 0; i < ARRAY_LEN(steps); i++)
		expect_verdict(steps[i].label, admit(g, GUARD_CLASS_MX, steps[i].src, 0, &t[i]), steps[i].want);
	struct guard_stats st;
	guard_stats(g, GUARD_CLASS_MX, &st);
	assert_int_equal(st.connections, 10);
	/* reserve 0: a good sender is like anyone else. */
	for (size_t i = 0; i < ARRAY_LEN(steps); i++)
		guard_release(&t[i]);
	static const char *const none[] = { "guard.mx.max_connections=2", "guard.good.reserve=0", NULL };
	struct settings *s2 = settings_with(none);
	char *err = NULL;
	assert_true(guard_set_settings(g, s2, &err));
	struct guard_ticket u[3];
	expect_verdict("r0 1", admit(g, GUARD_CLASS_MX, "10.0.5.1", 0, &u[0]), GUARD_ADMIT);
	expect_verdict("r0 2", admit(g, GUARD_CLASS_MX, "10.0.6.1", 0, &u[1]), GUARD_ADMIT);
	expect_verdict("r0 good at the cap", admit(g, GUARD_CLASS_MX, "10.0.9.1", 0, &u[2]), GUARD_REFUSE_GLOBAL);
	for (size_t i = 0; i < 3; i++)
		guard_release(&u[i]);
	done(&g, &s);
	config_free(&s2);
}

static void test_good_state(void **state)
{
	(void)state;
	char dir[] = "/tmp/guard-test-XXXXXX";
	assert_non_null(mkdtemp(dir));
	static const char *const over[] = { "guard.good.ttl=1h", NULL };
	struct settings *s;
	struct guard *g = guard_with(over, &s);
	char *err = NULL;
	uint64_t t0 = 10000000;
	assert_true(guard_state_load(g, dir, t0, &err));
	struct guard_addr fresh = addr("198.51.100.20"), v6 = addr("2001:db8:1::20"), stale = addr("198.51.100.21");
	guard_good_mark(g, &stale, t0 - 3000000);    /* 50 min before the save */
	guard_good_mark(g, &fresh, t0);
	guard_good_mark(g, &v6, t0);
	assert_true(guard_state_save(g, t0, &err));
	done(&g, &s);
	/* Ten minutes later in wall-clock time would age `stale` past the
	 * ttl; the test cannot move the wall clock, so it checks the values
	 * written and that a restart restores them. */
	char path[512];
	snprintf(path, sizeof(path), "%s/guard-good", dir);
	char *text = NULL;
	size_t len = 0;
	assert_true(fs_read_file(path, &text, &len));
	if (strstr(text, "198.51.100.20 ") == NULL || strstr(text, "2001:db8:1::20 ") == NULL)
		fail_msg("guard-good lacks an address:\n%s", text);
	free(text);
	/* Lines a person or a crash could leave: skipped, the rest loaded. */
	FILE *f = fopen(path, "a");
	assert_non_null(f);
	fprintf(f, "not-an-address 1\n198.51.100.22\n198.51.100.23 12 extra\n198.51.100.24 1\n");
	fclose(f);
	g = guard_with(over, &s);
	uint64_t t1 = 90000000;
	assert_true(guard_state_load(g, dir, t1, &err));
	const struct { const char *label; const struct guard_addr *a; bool want; } cases[] = {
		{ "fresh v4 survives", &fresh, true },
		{ "fresh v6 survives", &v6, true },
		{ "50 minutes old, ttl 1 h: survives", &stale, true },
		{ "seen in 1970: forgotten", &(struct guard_addr){ 4, { 198, 51, 100, 24 } }, false },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		if (guard_is_good(g, cases[i].a, t1) != cases[i].want)
			fail_msg("%s: good %d, expected %d", cases[i].label, !cases[i].want, cases[i].want);
	}
	/* Still aged: 50 minutes old at the save, so gone 10 minutes later. */
	assert_false(guard_is_good(g, &stale, t1 + 11 * 60000));
	assert_true(guard_is_good(g, &fresh, t1 + 11 * 60000));
	done(&g, &s);
	remove_state(dir);
}

/* ---- the kernel mirror (nftables) ------------------------------------------------------------------ */

static void test_nft_names(void **state)
{
	(void)state;
	static const uint16_t listeners[] = { 25, 143, 25, 110 };
	static const struct {
		const char *label;
		const char *over[4];
		bool ok;
		const char *table, *ports;
	} cases[] = {
		{ "defaults: the listeners' ports, once each", { NULL }, true, "strata", "25,143,110" },
		{ "bare table name", { "guard.nft.table=mail_guard" }, true, "mail_guard", "25,143,110" },
		{ "ports given", { "guard.nft.ports=25, 587,25" }, true, "strata", "25,587" },
		{ "family ip", { "guard.nft.table=ip strata" }, false, NULL, NULL },
		{ "name with a quote", { "guard.nft.table=inet a\"b" }, false, NULL, NULL },
		{ "name starting with a digit", { "guard.nft.set4=4ban" }, false, NULL, NULL },
		{ "one name for both sets", { "guard.nft.set4=ban", "guard.nft.set6=ban" }, false, NULL, NULL },
		{ "port 0", { "guard.nft.ports=0" }, false, NULL, NULL },
		{ "port too big", { "guard.nft.ports=65536" }, false, NULL, NULL },
		{ "not a port", { "guard.nft.ports=smtp" }, false, NULL, NULL },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct settings *s = settings_with(cases[i].over);
		struct guard_nft_names nm;
		char *err = NULL;
		bool ok = guard_nft_names_parse(s, listeners, ARRAY_LEN(listeners), &nm, &err);
		if (ok != cases[i].ok)
			fail_msg("%s: parse %s (%s)", cases[i].label, ok ? "accepted" : "refused", err ? err : "");
		if (ok) {
			char ports[128] = "";
			for (size_t k = 0; k < nm.n_ports; k++)
				snprintf(ports + strlen(ports), sizeof(ports) - strlen(ports), "%s%u", k ? "," : "",
					 (unsigned)nm.ports[k]);
			if (strcmp(nm.table, cases[i].table) != 0 || strcmp(ports, cases[i].ports) != 0)
				fail_msg("%s: table '%s' ports '%s', expected '%s' '%s'", cases[i].label, nm.table, ports,
					 cases[i].table, cases[i].ports);
		} else {
			assert_non_null(err);
		}
		free(err);
		config_free(&s);
	}
	struct settings *s = settings_with(NULL);
	struct guard_nft_names nm;
	char *err = NULL;
	assert_false(guard_nft_names_parse(s, NULL, 0, &nm, &err));   /* no port at all */
	free(err);
	config_free(&s);
}

static struct guard_nft_elem elem(const char *text, uint32_t timeout_s)
{
	struct guard_addr a = addr(text);
	struct guard_nft_elem e = { .family = a.family, .timeout_s = timeout_s };
	memcpy(e.b, a.b, sizeof(e.b));
	return e;
}

static void test_nft_scripts(void **state)
{
	(void)state;
	struct guard_nft_names nm = { .table = "strata", .set4 = "ban4", .set6 = "ban6", .ports = { 25, 587 },
				      .n_ports = 2, .set_size = 16384 };
	struct guard_nft_elem add[] = { elem("192.0.2.1", 60), elem("2001:db8::1", 3600), elem("192.0.2.1", 90) };
	struct guard_nft_elem del[] = { elem("192.0.2.2", 0) };
	static const struct { const char *label; enum guard_nft_op op; size_t n; const char *want; } cases[] = {
		{ "setup", GUARD_NFT_SETUP, 0,
		  "add table inet strata\n"
		  "delete table inet strata\n"
		  "table inet strata {\n"
		  "\tset ban4 { type ipv4_addr; flags timeout; size 16384; }\n"
		  "\tset ban6 { type ipv6_addr; flags timeout; size 16384; }\n"
		  "\tchain input {\n"
		  "\t\ttype filter hook input priority filter - 10; policy accept;\n"
		  "\t\tiif \"lo\" accept\n"
		  "\t\tip saddr @ban4 tcp dport { 25, 587 } counter drop\n"
		  "\t\tip6 saddr @ban6 tcp dport { 25, 587 } counter drop\n"
		  "\t}\n"
		  "}\n" },
		{ "add: renewed, the later duplicate wins", GUARD_NFT_ADD, 3,
		  "add element inet strata ban4 { 192.0.2.1 timeout 1s }\n"
		  "delete element inet strata ban4 { 192.0.2.1 }\n"
		  "add element inet strata ban4 { 192.0.2.1 timeout 90s }\n"
		  "add element inet strata ban6 { 2001:db8::1 timeout 1s }\n"
		  "delete element inet strata ban6 { 2001:db8::1 }\n"
		  "add element inet strata ban6 { 2001:db8::1 timeout 3600s }\n" },
		{ "del: absent is no error", GUARD_NFT_DEL, 1,
		  "add element inet strata ban4 { 192.0.2.2 timeout 1s }\n"
		  "delete element inet strata ban4 { 192.0.2.2 }\n" },
		{ "destroy", GUARD_NFT_DESTROY, 0, "add table inet strata\ndelete table inet strata\n" },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct buf out = BUF_INIT;
		guard_nft_script(&nm, cases[i].op, cases[i].op == GUARD_NFT_DEL ? del : add, cases[i].n, &out);
		if (out.data == NULL || strcmp(out.data, cases[i].want) != 0)
			fail_msg("%s:\n--- got\n%s--- expected\n%s", cases[i].label, out.data ? out.data : "",
				 cases[i].want);
		buf_free(&out);
	}
}

/* A simulated kernel: requests applied to a set, as nft would. */
struct fake_kernel {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool gate_closed;          /* the sender waits while closed */
	bool fail;                 /* every request fails (no permission) */
	unsigned setups, adds, dels, destroys, calls;
	struct guard_nft_elem set[64];
	size_t n;
	bool table;
};

static void fake_remove(struct fake_kernel *k, const struct guard_nft_elem *e)
{
	for (size_t i = 0; i < k->n; i++) {
		if (k->set[i].family == e->family && memcmp(k->set[i].b, e->b, 16) == 0) {
			k->set[i] = k->set[--k->n];
			return;
		}
	}
}

static bool fake_send(void *arg, enum guard_nft_op op, const struct guard_nft_elem *e, size_t n, char **error_r)
{
	struct fake_kernel *k = arg;
	pthread_mutex_lock(&k->mu);
	while (k->gate_closed)
		pthread_cond_wait(&k->cv, &k->mu);
	k->calls++;
	bool ok = !k->fail;
	if (!ok)
		*error_r = xstrdup("Operation not permitted");
	else if (op == GUARD_NFT_SETUP) {
		k->setups++;
		k->table = true;
		k->n = 0;
	} else if (op == GUARD_NFT_DESTROY) {
		k->destroys++;
		k->table = false;
		k->n = 0;
	}
	for (size_t i = 0; ok && (op == GUARD_NFT_ADD || op == GUARD_NFT_DEL) && i < n; i++) {
		fake_remove(k, &e[i]);
		if (op == GUARD_NFT_ADD) {
			assert_true(e[i].timeout_s >= 1 && e[i].timeout_s <= GUARD_NFT_MAX_TIMEOUT_S);
			assert_true(k->n < ARRAY_LEN(k->set));
			k->set[k->n++] = e[i];
		}
		op == GUARD_NFT_ADD ? k->adds++ : k->dels++;
	}
	pthread_mutex_unlock(&k->mu);
	return ok;
}

static bool fake_has(struct fake_kernel *k, const char *text, uint32_t *timeout_r)
{
	struct guard_nft_elem e = elem(text, 0);
	pthread_mutex_lock(&k->mu);
	bool found = false;
	for (size_t i = 0; i < k->n && !found; i++) {
		if (k->set[i].family == e.family && memcmp(k->set[i].b, e.b, 16) == 0) {
			found = true;
			if (timeout_r)
				*timeout_r = k->set[i].timeout_s;
		}
	}
	pthread_mutex_unlock(&k->mu);
	return found;
}

static void fake_gate(struct fake_kernel *k, bool closed)
{
	pthread_mutex_lock(&k->mu);
	k->gate_closed = closed;
	pthread_cond_broadcast(&k->cv);
	pthread_mutex_unlock(&k->mu);
}

static void test_nft_mirror(void **state)
{
	(void)state;
	static const char *const over[] = { "guard.allow=192.0.2.0/24", "guard.offence_bans=2m", NULL };
	struct settings *s;
	struct guard *g = guard_with(over, &s);
	struct fake_kernel k = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };
	uint64_t now = time_mono_ms();
	struct guard_addr before = addr("198.51.100.1");
	guard_ban(g, &before, 600, now);   /* before the mirror: the first re-sync adds it */
	guard_nft_attach(g, fake_send, &k, 0, "test");
	guard_nft_wait_idle(g);
	struct guard_nft_report r;
	assert_int_equal(guard_nft_status(g, &r), GUARD_NFT_ACTIVE);
	uint32_t to = 0;
	assert_true(k.table);
	assert_true(fake_has(&k, "198.51.100.1", &to));
	if (to < 599 || to > 600)
		fail_msg("re-synced timeout %u, expected 600 s less the time taken", to);
	struct guard_addr v6 = addr("2001:db8::66"), off = addr("198.51.100.2"), allowed = addr("192.0.2.9");
	guard_ban(g, &v6, 10ull * 365 * 86400, now);        /* ten years: the kernel gets one */
	assert_int_equal(guard_offence(g, &off, GUARD_OFFENCE_ERRORS, now), 120);
	guard_ban(g, &allowed, 600, now);                  /* the allowlist wins: not in the kernel */
	guard_nft_wait_idle(g);
	const struct { const char *label, *a; bool in; uint32_t lo, hi; } cases[] = {
		{ "long ban capped", "2001:db8::66", true, GUARD_NFT_MAX_TIMEOUT_S, GUARD_NFT_MAX_TIMEOUT_S },
		{ "offence ban", "198.51.100.2", true, 119, 120 },
		{ "allowlisted", "192.0.2.9", false, 0, 0 },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		uint32_t t = 0;
		bool in = fake_has(&k, cases[i].a, &t);
		if (in != cases[i].in || (in && (t < cases[i].lo || t > cases[i].hi)))
			fail_msg("%s: in the set %d timeout %u, expected %d [%u, %u]", cases[i].label, in, t, cases[i].in,
				 cases[i].lo, cases[i].hi);
	}
	/* Unban: gone from the kernel at once. */
	assert_true(guard_unban(g, &off));
	guard_nft_wait_idle(g);
	assert_false(fake_has(&k, "198.51.100.2", NULL));
	/* Someone flushed the ruleset; SIGHUP (guard_set_settings) rebuilds it. */
	pthread_mutex_lock(&k.mu);
	k.n = 0;
	unsigned setups = k.setups;
	pthread_mutex_unlock(&k.mu);
	char *err = NULL;
	assert_true(guard_set_settings(g, s, &err));
	guard_nft_wait_idle(g);
	assert_int_equal(k.setups, setups + 1);
	assert_true(fake_has(&k, "198.51.100.1", NULL));
	assert_true(fake_has(&k, "2001:db8::66", NULL));
	assert_int_equal(k.n, 2);
	/* Clean shutdown deletes the table. */
	guard_nft_stop(g, true);
	assert_int_equal(k.destroys, 1);
	assert_false(k.table);
	assert_int_equal(guard_nft_status(g, &r), GUARD_NFT_OFF);
	done(&g, &s);
}

static void test_nft_queue_overflow(void **state)
{
	(void)state;
	struct settings *s;
	struct guard *g = guard_with(NULL, &s);
	struct fake_kernel k = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .gate_closed = true };
	guard_nft_attach(g, fake_send, &k, 2, "test");   /* a queue of two: the thread is held at the gate */
	uint64_t now = time_mono_ms();
	char text[32];
	for (int i = 1; i <= 20; i++) {
		snprintf(text, sizeof(text), "198.51.100.%d", i);
		struct guard_addr a = addr(text);
		guard_ban(g, &a, 600, now);
	}
	for (int i = 1; i <= 5; i++) {
		snprintf(text, sizeof(text), "198.51.100.%d", i);
		struct guard_addr a = addr(text);
		assert_true(guard_unban(g, &a));
	}
	fake_gate(&k, false);
	guard_nft_wait_idle(g);
	/* Whatever was dropped from the full queue, a re-sync caught up. */
	for (int i = 1; i <= 20; i++) {
		snprintf(text, sizeof(text), "198.51.100.%d", i);
		if (fake_has(&k, text, NULL) != (i > 5))
			fail_msg("%s: in the kernel set %d, expected %d", text, i <= 5, i > 5);
	}
	assert_int_equal(k.n, 15);
	guard_nft_stop(g, false);
	assert_int_equal(k.destroys, 0);   /* not a clean shutdown: the table stays */
	done(&g, &s);
}

static void test_nft_no_permission(void **state)
{
	(void)state;
	struct settings *s;
	struct guard *g = guard_with(NULL, &s);
	struct fake_kernel k = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .fail = true };
	guard_nft_attach(g, fake_send, &k, 0, "test");
	guard_nft_wait_idle(g);
	struct guard_nft_report r;
	assert_int_equal(guard_nft_status(g, &r), GUARD_NFT_INACTIVE);
	if (strstr(r.reason, "Operation not permitted") == NULL)
		fail_msg("reason '%s'", r.reason);
	assert_int_equal(r.errors, 1);
	/* Bans still work in user space, and cost no nft run. */
	struct guard_addr a = addr("198.51.100.7");
	uint64_t now = time_mono_ms();
	guard_ban(g, &a, 600, now);
	guard_nft_wait_idle(g);
	assert_true(guard_is_banned(g, &a, now));
	assert_int_equal(k.calls, 1);
	struct buf out = BUF_INIT;
	guard_status(g, now, false, &out);
	if (strstr(out.data, "kernel firewall: not active (test): Operation not permitted") == NULL)
		fail_msg("status:\n%s", out.data);
	buf_free(&out);
	/* SIGHUP tries again; once permitted, the bans reach the kernel. */
	pthread_mutex_lock(&k.mu);
	k.fail = false;
	pthread_mutex_unlock(&k.mu);
	guard_nft_resync(g);
	guard_nft_wait_idle(g);
	assert_int_equal(guard_nft_status(g, &r), GUARD_NFT_ACTIVE);
	assert_true(fake_has(&k, "198.51.100.7", NULL));
	guard_status(g, now, true, &out);
	if (strstr(out.data, "\"nft\":{\"state\":\"active\"") == NULL || strstr(out.data, "\"good_senders\":{") == NULL)
		fail_msg("status JSON:\n%s", out.data);
	buf_free(&out);
	done(&g, &s);   /* guard_free stops the mirror */
	assert_int_equal(k.destroys, 0);
}

static void test_nft_helper_protocol(void **state)
{
	(void)state;
	/* A table name of the test's own: as root the request really runs nft
	 * (add and delete of that table); otherwise nft refuses.  Either way
	 * the helper answers. */
	char table[64];
	snprintf(table, sizeof(table), "guard.nft.table=inet strata_unit_%d", (int)getpid());
	const char *over[] = { table, NULL };
	struct settings *s = settings_with(over);
	static const uint16_t ports[] = { 25 };
	struct guard_nft_helper h;
	char *err = NULL;
	assert_true(guard_nft_helper_start(s, ports, 1, false, 0, 0, &h, &err));
	assert_true(h.fd >= 0 && h.pid > 0);
	bool ok = guard_nft_helper_call(&h, GUARD_NFT_DESTROY, NULL, 0, &err);
	if (!ok) {
		if (err == NULL || strstr(err, "gone") != NULL)
			fail_msg("the helper did not answer: %s", err ? err : "(no error)");
		free(err);
		err = NULL;
	}
	/* A request no daemon sends: the helper ends, and says nothing more. */
	struct { uint32_t op, n; } bogus = { 99, 0 };
	assert_int_equal(write(h.fd, &bogus, sizeof(bogus)), (ssize_t)sizeof(bogus));
	assert_false(guard_nft_helper_call(&h, GUARD_NFT_DESTROY, NULL, 0, &err));
	if (err == NULL || strstr(err, "gone") == NULL)
		fail_msg("after a bad request: %s", err ? err : "(no error)");
	free(err);
	assert_int_equal(h.fd, -1);
	guard_nft_helper_stop(&h);
	assert_int_equal(h.pid, -1);
	guard_nft_helper_stop(&h);   /* safe twice */
	/* A bad name never starts a helper. */
	const char *bad[] = { "guard.nft.table=inet x;y", NULL };
	struct settings *s2 = settings_with(bad);
	err = NULL;
	assert_false(guard_nft_helper_start(s2, ports, 1, false, 0, 0, &h, &err));
	assert_non_null(err);
	assert_int_equal(h.fd, -1);
	free(err);
	config_free(&s2);
	config_free(&s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bucket_refill),
		cmocka_unit_test(test_rate_limit),
		cmocka_unit_test(test_aggregation),
		cmocka_unit_test(test_concurrency_accounting),
		cmocka_unit_test(test_eviction_bounded),
		cmocka_unit_test(test_full_bucket_never_evicts_live),
		cmocka_unit_test(test_fair_share),
		cmocka_unit_test(test_allowlist_beats_ban),
		cmocka_unit_test(test_ban_expiry),
		cmocka_unit_test(test_offence_ladder),
		cmocka_unit_test(test_offence_bounded),
		cmocka_unit_test(test_offence_settings),
		cmocka_unit_test(test_load_permille),
		cmocka_unit_test(test_proxy_parse),
		cmocka_unit_test(test_auth_brute_force),
		cmocka_unit_test(test_state_roundtrip),
		cmocka_unit_test(test_state_bad_files),
		cmocka_unit_test(test_status_report),
		cmocka_unit_test(test_cidr_lists),
		cmocka_unit_test(test_accept_refusal_lines),
		cmocka_unit_test(test_disabled),
		cmocka_unit_test(test_good_senders),
		cmocka_unit_test(test_good_bounded),
		cmocka_unit_test(test_good_reserve),
		cmocka_unit_test(test_good_state),
		cmocka_unit_test(test_nft_names),
		cmocka_unit_test(test_nft_scripts),
		cmocka_unit_test(test_nft_mirror),
		cmocka_unit_test(test_nft_queue_overflow),
		cmocka_unit_test(test_nft_no_permission),
		cmocka_unit_test(test_nft_helper_protocol),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
