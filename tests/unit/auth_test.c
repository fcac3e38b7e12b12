/*
 * auth_test.c - password hashing and verification (src/auth).
 *
 * The crypt(3) vectors were produced by two implementations: the $6$ and
 * $5$ ones by `openssl passwd -6/-5 -salt saltsaltsalt 'correct horse'`
 * and glibc/libxcrypt crypt(3) (identical output); the $2a$ ones are the
 * published crypt_blowfish test vectors.  The Argon2 vectors were made
 * with the reference implementation (libargon2, not libsodium), so a pass
 * shows libsodium reads hashes that other systems (Dovecot) wrote.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "auth.h"
#include "metrics.h"

#define PW "correct horse"
#define SHA512_PW "$6$saltsaltsalt$Cy2drr8kDRji6smvDcT28wkqtq0R0VzVL5CkrjPQCITc5d/31j94knt9rGTcVSyjLXfjsiIsBh5ee8qR/3QDx1"
#define SHA512_ROUNDS "$6$rounds=10000$roundsalt$lu7Rcrwbzvc4i3UU0le05F9a9bmjWI6qZ3W01cRCxB0EHJ8hLrRWzqCTVE5ceVSQRShxY.Ag20d5tJkF3rdy/."
#define SHA512_UTF8 "$6$utf8salt$1nubEmwzyHKD6zFI2f7nPqHTKX2denRnLg4VpLOWNaBoSi9qi58RZSlIf0XC7D7QIDGTzNB63qpvn6PCagK1G."
#define SHA256_PW "$5$saltsaltsalt$7axwV9kT3PvvGXgJl1FcfUCHLdLFhWk/dIFhzsbucLB"
#define BLF_2Y "$2y$05$abcdefghijklmnopqrstuuHNbAKRhpaujgo33bRWs.NLUTJO3lOy2"
#define BLF_2B "$2b$05$abcdefghijklmnopqrstuuHNbAKRhpaujgo33bRWs.NLUTJO3lOy2"
#define BLF_UU "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"
#define BLF_UUU "$2a$05$CCCCCCCCCCCCCCCCCCCCC.VGOzA784oUp/Z0DY336zx7pLYAy0lwK"
#define BLF_LONG "$2a$05$abcdefghijklmnopqrstuu5s2v8.iXieOjg/.AySBTTZIIVFJeBui"
#define BLF_LONG_PW "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789chars after 72 are ignored"
#define ARGON2ID_REF "$argon2id$v=19$m=65536,t=2,p=1$c3RyYXRhLXRlc3Qtc2FsdA$48jq6KL0hVhgEUrC9WL6l+cuQgBq1IW+7Rx/ntMTngg"
#define ARGON2I_REF "$argon2i$v=19$m=32768,t=3,p=1$c3RyYXRhLXRlc3Qtc2FsdA$t8RAUcNFnX20KMCBrOYRGvfnv7PQLFkVib2qRLLAtJY"

struct verify_case {
	const char *label;
	const char *stored;
	const char *password;
	bool expect;
};

static const struct verify_case verify_cases[] = {
	{ "sha512 right", "{SHA512-CRYPT}" SHA512_PW, PW, true },
	{ "sha512 wrong", "{SHA512-CRYPT}" SHA512_PW, "correct horsf", false },
	{ "sha512 prefix of pw", "{SHA512-CRYPT}" SHA512_PW, "correct hors", false },
	{ "sha512 lower-case scheme", "{sha512-crypt}" SHA512_PW, PW, true },
	{ "sha512 bare", SHA512_PW, PW, true },
	{ "sha512 rounds=10000", "{SHA512-CRYPT}" SHA512_ROUNDS, PW, true },
	{ "sha512 utf-8 password", "{SHA512-CRYPT}" SHA512_UTF8, "p\xc3\xa4ssw\xc3\xb6rd \xe2\x9c\x93", true },
	{ "sha512 utf-8 differs", "{SHA512-CRYPT}" SHA512_UTF8, "p\xc3\xa4ssw\xc3\xb6rd", false },
	{ "generic CRYPT with $6$", "{CRYPT}" SHA512_PW, PW, true },
	{ "sha256 right", "{SHA256-CRYPT}" SHA256_PW, PW, true },
	{ "sha256 wrong", "{SHA256-CRYPT}" SHA256_PW, "Correct horse", false },
	{ "blf 2y right", "{BLF-CRYPT}" BLF_2Y, PW, true },
	{ "blf 2b right", "{BLF-CRYPT}" BLF_2B, PW, true },
	{ "blf 2y wrong", "{BLF-CRYPT}" BLF_2Y, "correct horse ", false },
	{ "blf U*U", "{BLF-CRYPT}" BLF_UU, "U*U", true },
	{ "blf U*U*", "{BLF-CRYPT}" BLF_UUU, "U*U*", true },
	{ "blf U*U* vs U*U", "{BLF-CRYPT}" BLF_UUU, "U*U", false },
	{ "blf 72-byte truncation", "{BLF-CRYPT}" BLF_LONG, BLF_LONG_PW, true },
	{ "argon2id reference impl", "{ARGON2ID}" ARGON2ID_REF, PW, true },
	{ "argon2id wrong", "{ARGON2ID}" ARGON2ID_REF, "correct horse!", false },
	{ "argon2i reference impl", "{ARGON2I}" ARGON2I_REF, PW, true },
	{ "argon2i wrong", "{ARGON2I}" ARGON2I_REF, "incorrect horse", false },
	{ "argon2id bare", ARGON2ID_REF, PW, true },
	{ "plain right", "{PLAIN}" PW, PW, true },
	{ "plain wrong", "{PLAIN}" PW, "correct", false },
	{ "plain longer", "{PLAIN}" PW, PW "x", false },
	{ "plain without prefix is not a hash", PW, PW, false },
	{ "empty password never verifies", "{PLAIN}", "", false },
	{ "empty password vs sha512", "{SHA512-CRYPT}" SHA512_PW, "", false },
	{ "scheme/body mismatch", "{SHA256-CRYPT}" SHA512_PW, PW, false },
	{ "argon2i body under ARGON2ID", "{ARGON2ID}" ARGON2I_REF, PW, false },
	{ "unknown scheme", "{MD5-CRYPT}$1$abcdefgh$xxxxxxxxxxxxxxxxxxxxxx", PW, false },
	{ "truncated sha512", "{SHA512-CRYPT}$6$saltsaltsalt$Cy2drr8kDRji6smvDcT28wkqtq0R0VzVL5Ck", PW, false },
	{ "empty stored", "", PW, false },
	{ "unterminated prefix", "{SHA512-CRYPT" SHA512_PW, PW, false },
};

static void test_verify_table(void **state)
{
	(void)state;
	int failures = 0;
	for (size_t i = 0; i < sizeof(verify_cases) / sizeof(verify_cases[0]); i++) {
		const struct verify_case *c = &verify_cases[i];
		bool got = auth_verify_password(c->password, c->stored);
		if (got != c->expect) {
			print_error("case '%s': stored '%s' password '%s': expected %s, got %s\n", c->label,
				    c->stored, c->password, c->expect ? "match" : "no match",
				    got ? "match" : "no match");
			failures++;
		}
	}
	assert_int_equal(failures, 0);
}

struct norm_case {
	const char *label;
	const char *in;
	const char *expect; /* NULL: rejected */
};

static const struct norm_case norm_cases[] = {
	{ "bare $6$", SHA512_PW, "{SHA512-CRYPT}" SHA512_PW },
	{ "bare $5$", SHA256_PW, "{SHA256-CRYPT}" SHA256_PW },
	{ "bare $2y$", BLF_2Y, "{BLF-CRYPT}" BLF_2Y },
	{ "bare $2a$", BLF_UU, "{BLF-CRYPT}" BLF_UU },
	{ "bare argon2id", ARGON2ID_REF, "{ARGON2ID}" ARGON2ID_REF },
	{ "bare argon2i", ARGON2I_REF, "{ARGON2I}" ARGON2I_REF },
	{ "prefixed stays", "{SHA512-CRYPT}" SHA512_PW, "{SHA512-CRYPT}" SHA512_PW },
	{ "prefix upper-cased", "{blf-crypt}" BLF_2Y, "{BLF-CRYPT}" BLF_2Y },
	{ "CRYPT resolves $6$", "{CRYPT}" SHA512_PW, "{SHA512-CRYPT}" SHA512_PW },
	{ "CRYPT resolves $2y$", "{crypt}" BLF_2Y, "{BLF-CRYPT}" BLF_2Y },
	{ "explicit plain", "{PLAIN}hunter2", "{PLAIN}hunter2" },
	{ "empty plain rejected", "{PLAIN}", NULL },
	{ "plain text is not a hash", "hunter2", NULL },
	{ "CRYPT with DES rejected", "{CRYPT}abJnggxhB/yWI", NULL },
	{ "md5-crypt rejected", "$1$saltsalt$qjXMvbEw8oaL.CzflDugX/", NULL },
	{ "$2x$ rejected", "$2x$05$abcdefghijklmnopqrstuuHNbAKRhpaujgo33bRWs.NLUTJO3lOy2", NULL },
	{ "bcrypt cost 03 rejected", "$2y$03$abcdefghijklmnopqrstuuHNbAKRhpaujgo33bRWs.NLUTJO3lOy2", NULL },
	{ "bcrypt cost 17 rejected", "$2y$17$abcdefghijklmnopqrstuuHNbAKRhpaujgo33bRWs.NLUTJO3lOy2", NULL },
	{ "bcrypt short", "$2y$05$abcdefghijklmnopqrstuuHNbAKRhpaujgo33bRWs.NLUTJO3lOy", NULL },
	{ "bcrypt long", "$2y$05$abcdefghijklmnopqrstuuHNbAKRhpaujgo33bRWs.NLUTJO3lOy22", NULL },
	{ "sha512 rounds too high", "$6$rounds=2000000$roundsalt$lu7Rcrwbzvc4i3UU0le05F9a9bmjWI6qZ3W01cRCxB0EHJ8hLrRWzqCTVE5ceVSQRShxY.Ag20d5tJkF3rdy/.", NULL },
	{ "sha512 rounds leading zero", "$6$rounds=010000$roundsalt$lu7Rcrwbzvc4i3UU0le05F9a9bmjWI6qZ3W01cRCxB0EHJ8hLrRWzqCTVE5ceVSQRShxY.Ag20d5tJkF3rdy/.", NULL },
	{ "sha512 salt too long", "$6$saltsaltsaltsalts$Cy2drr8kDRji6smvDcT28wkqtq0R0VzVL5CkrjPQCITc5d/31j94knt9rGTcVSyjLXfjsiIsBh5ee8qR/3QDx1", NULL },
	{ "sha512 bad char", "$6$saltsaltsalt$Cy2drr8kDRji6smvDcT28wkqtq0R0VzVL5CkrjPQCITc5d/31j94knt9rGTcVSyjLXfjsiIsBh5ee8qR/3QDx:", NULL },
	{ "argon2 memory over 1 GiB", "$argon2id$v=19$m=2097152,t=2,p=1$c3RyYXRhLXRlc3Qtc2FsdA$48jq6KL0hVhgEUrC9WL6l+cuQgBq1IW+7Rx/ntMTngg", NULL },
	{ "argon2 t=0", "$argon2id$v=19$m=65536,t=0,p=1$c3RyYXRhLXRlc3Qtc2FsdA$48jq6KL0hVhgEUrC9WL6l+cuQgBq1IW+7Rx/ntMTngg", NULL },
	{ "argon2 bad base64", "$argon2id$v=19$m=65536,t=2,p=1$c3RyYXRhLXRlc3Qtc2FsdA$48jq6KL0hVhgEU!C9WL6l+cuQgBq1IW+7Rx/ntMTngg", NULL },
	{ "argon2 missing hash", "$argon2id$v=19$m=65536,t=2,p=1$c3RyYXRhLXRlc3Qtc2FsdA", NULL },
	{ "unknown prefix", "{SSHA}abcdef", NULL },
	{ "empty", "", NULL },
};

static void test_normalize_table(void **state)
{
	(void)state;
	int failures = 0;
	for (size_t i = 0; i < sizeof(norm_cases) / sizeof(norm_cases[0]); i++) {
		const struct norm_case *c = &norm_cases[i];
		char out[AUTH_HASH_MAX];
		bool ok = auth_hash_normalize(c->in, out, sizeof(out));
		bool supported = auth_hash_is_supported(c->in);
		bool expect_ok = c->expect != NULL;
		if (ok != expect_ok || supported != expect_ok || (ok && strcmp(out, c->expect) != 0) ||
		    (!ok && out[0] != '\0')) {
			print_error("case '%s': in '%s': expected %s, got %s '%s' (supported=%d)\n", c->label,
				    c->in, c->expect ? c->expect : "(rejected)", ok ? "accepted" : "rejected",
				    out, supported);
			failures++;
		}
	}
	assert_int_equal(failures, 0);
}

static void test_normalize_small_buffer(void **state)
{
	(void)state;
	char out[20];
	memset(out, 'x', sizeof(out));
	assert_false(auth_hash_normalize(SHA512_PW, out, sizeof(out)));
	assert_string_equal(out, "");
	char exact[sizeof("{PLAIN}abc")];
	assert_true(auth_hash_normalize("{PLAIN}abc", exact, sizeof(exact)));
	assert_string_equal(exact, "{PLAIN}abc");
	assert_false(auth_hash_normalize("{PLAIN}abcd", exact, sizeof(exact)));
}

static void test_hash_round_trip(void **state)
{
	(void)state;
	char h1[AUTH_HASH_MAX], h2[AUTH_HASH_MAX], norm[AUTH_HASH_MAX];
	assert_true(auth_hash_password("s3cret pass", h1, sizeof(h1)));
	assert_true(auth_hash_password("s3cret pass", h2, sizeof(h2)));
	/* libsodium's INTERACTIVE parameters, documented in auth.h */
	const char *prefix = "{ARGON2ID}$argon2id$v=19$m=65536,t=2,p=1$";
	if (strncmp(h1, prefix, strlen(prefix)) != 0)
		fail_msg("hash '%s' does not start with '%s'", h1, prefix);
	assert_string_not_equal(h1, h2); /* random salt */
	assert_true(auth_verify_password("s3cret pass", h1));
	assert_true(auth_verify_password("s3cret pass", h2));
	assert_false(auth_verify_password("s3cret pasS", h1));
	assert_false(auth_verify_password("s3cret pas", h1));
	assert_true(auth_hash_is_supported(h1));
	assert_true(auth_hash_normalize(h1, norm, sizeof(norm)));
	assert_string_equal(norm, h1);
}

static void test_hash_refusals(void **state)
{
	(void)state;
	char out[AUTH_HASH_MAX];
	assert_false(auth_hash_password("", out, sizeof(out)));
	assert_string_equal(out, "");
	char tiny[32];
	assert_false(auth_hash_password("x", tiny, sizeof(tiny)));
	assert_string_equal(tiny, "");
}

/* crypt_r and libsodium from several threads at once: every verification
 * must give the single-threaded answer. */
static void *verify_worker(void *arg)
{
	int *bad = arg;
	for (int round = 0; round < 20; round++) {
		if (!auth_verify_password(PW, "{SHA512-CRYPT}" SHA512_PW) ||
		    auth_verify_password("nope", "{SHA256-CRYPT}" SHA256_PW) ||
		    !auth_verify_password("U*U", "{BLF-CRYPT}" BLF_UU))
			(*bad)++;
	}
	return NULL;
}

static void test_verify_threads(void **state)
{
	(void)state;
	pthread_t t[4];
	int bad[4] = { 0 };
	for (int i = 0; i < 4; i++)
		assert_int_equal(pthread_create(&t[i], NULL, verify_worker, &bad[i]), 0);
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(bad[i], 0);
	}
}

/* ---- the verified-password cache (auth_cache.c) ------------------------- */

struct cache_counts {
	uint64_t hits, misses;
};

static struct cache_counts cache_counts_now(void)
{
	struct cache_counts c = { metric_get(M_AUTH_CACHE_HITS), metric_get(M_AUTH_CACHE_MISSES) };
	return c;
}

/* One step of a scripted sequence: verify `password` against `stored` through
 * the cache and expect this verdict and this outcome in the counters. */
struct cache_step {
	const char *label;
	const char *stored;
	const char *password;
	bool expect;
	bool expect_hit;
};

/* Sets the cache up; a failure (no memory to map) fails the test. */
static void cache_up(size_t entries, uint64_t ttl_ms)
{
	char *err = NULL;
	if (!auth_cache_init(entries, ttl_ms, &err))
		fail_msg("auth_cache_init(%zu, %llu): %s", entries, (unsigned long long)ttl_ms, err);
}

static int cache_run_steps(const struct cache_step *steps, size_t n)
{
	int failures = 0;
	for (size_t i = 0; i < n; i++) {
		const struct cache_step *st = &steps[i];
		struct cache_counts before = cache_counts_now();
		bool got = auth_verify_password_cached(st->password, st->stored);
		struct cache_counts after = cache_counts_now();
		bool hit = after.hits == before.hits + 1 && after.misses == before.misses;
		bool miss = after.misses == before.misses + 1 && after.hits == before.hits;
		if (got != st->expect || (st->expect_hit ? !hit : !miss)) {
			print_error("step '%s': expected %s and a %s, got %s with hits +%llu misses +%llu\n",
				    st->label, st->expect ? "match" : "no match", st->expect_hit ? "hit" : "miss",
				    got ? "match" : "no match", (unsigned long long)(after.hits - before.hits),
				    (unsigned long long)(after.misses - before.misses));
			failures++;
		}
	}
	return failures;
}

#define S512 "{SHA512-CRYPT}" SHA512_PW
#define S512_ROUNDS "{SHA512-CRYPT}" SHA512_ROUNDS

static const struct cache_step cache_basic_steps[] = {
	{ "first login verifies", S512, PW, true, false },
	{ "second login hits", S512, PW, true, true },
	{ "third login hits", S512, PW, true, true },
	{ "wrong password right after a success", S512, "correct horsf", false, false },
	{ "same wrong password again: never cached", S512, "correct horsf", false, false },
	{ "prefix of the password", S512, "correct hors", false, false },
	{ "password plus a byte", S512, PW "x", false, false },
	{ "empty password", S512, "", false, false },
	{ "right password still hits", S512, PW, true, true },
	/* same password, another stored hash: what a password change looks like */
	{ "changed stored hash misses", S512_ROUNDS, PW, true, false },
	{ "then hits under the new hash", S512_ROUNDS, PW, true, true },
	{ "old hash's entry unaffected", S512, PW, true, true },
	/* a stored hash that is a prefix of another, password moved across */
	{ "plain ab + c", "{PLAIN}abc", "abc", true, false },
	{ "plain ab + c hits", "{PLAIN}abc", "abc", true, true },
	{ "split moved: no collision", "{PLAIN}ab", "cabc", false, false },
	{ "unsupported stored hash", "{MD5}xyz", PW, false, false },
};

/* Run on a large table and on a single bucket, where every stored hash
 * lands in the same four ways and only the tag tells entries apart. */
static void test_cache_basic(void **state)
{
	(void)state;
	static const size_t sizes[] = { 1024, 4 };
	for (size_t i = 0; i < ARRAY_LEN(sizes); i++) {
		cache_up(sizes[i], 3600 * 1000);
		assert_int_equal(auth_cache_capacity(), sizes[i]);
		int failures = cache_run_steps(cache_basic_steps, ARRAY_LEN(cache_basic_steps));
		auth_cache_free();
		if (failures != 0)
			fail_msg("%d failed steps with a table of %zu entries", failures, sizes[i]);
		assert_int_equal(auth_cache_capacity(), 0);
	}
}

/* A new process key at every init: nothing survives auth_cache_free. */
static const struct cache_step cache_reinit_steps[] = {
	{ "after re-init the first login verifies", S512, PW, true, false },
	{ "then hits", S512, PW, true, true },
};

static void test_cache_reinit(void **state)
{
	(void)state;
	cache_up(64, 3600 * 1000);
	assert_true(auth_verify_password_cached(PW, S512));
	auth_cache_free();
	cache_up(64, 3600 * 1000);
	int failures = cache_run_steps(cache_reinit_steps, ARRAY_LEN(cache_reinit_steps));
	auth_cache_free();
	assert_int_equal(failures, 0);
}

/* Size 0 or ttl 0: the cache is off, every check is a full verification. */
static const struct cache_step cache_off_steps[] = {
	{ "off: first", S512, PW, true, false },
	{ "off: second still verifies", S512, PW, true, false },
	{ "off: wrong", S512, "nope", false, false },
	{ "off: plain", "{PLAIN}abc", "abc", true, false },
	{ "off: plain again", "{PLAIN}abc", "abc", true, false },
};

static void test_cache_off(void **state)
{
	(void)state;
	int failures = cache_run_steps(cache_off_steps, ARRAY_LEN(cache_off_steps)); /* never set up */
	cache_up(0, 3600 * 1000);
	assert_int_equal(auth_cache_capacity(), 0);
	failures += cache_run_steps(cache_off_steps, ARRAY_LEN(cache_off_steps));
	auth_cache_free();
	cache_up(1024, 0);
	assert_int_equal(auth_cache_capacity(), 0);
	failures += cache_run_steps(cache_off_steps, ARRAY_LEN(cache_off_steps));
	auth_cache_free();
	assert_int_equal(failures, 0);
}

static void test_cache_sizes(void **state)
{
	(void)state;
	static const struct { const char *label; size_t entries; size_t capacity; } cases[] = {
		{ "one entry: one bucket", 1, 4 },
		{ "rounded up to a bucket", 5, 8 },
		{ "exact", 65536, 65536 },
		{ "capped", AUTH_CACHE_MAX_ENTRIES + 1000u, AUTH_CACHE_MAX_ENTRIES },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		cache_up(cases[i].entries, 1000);
		size_t got = auth_cache_capacity();
		auth_cache_free();
		if (got != cases[i].capacity)
			fail_msg("case '%s': %zu entries: expected capacity %zu, got %zu", cases[i].label,
				 cases[i].entries, cases[i].capacity, got);
	}
}

/* An entry lives ttl from its verification; a hit does not extend it. */
static void test_cache_expiry(void **state)
{
	(void)state;
	const uint64_t ttl_ms = 1000;
	cache_up(64, ttl_ms);
	uint64_t t0 = time_mono_ms();
	struct cache_counts c0 = cache_counts_now();
	assert_true(auth_verify_password_cached("abc", "{PLAIN}abc"));
	assert_true(auth_verify_password_cached("abc", "{PLAIN}abc"));
	struct cache_counts c1 = cache_counts_now();
	/* The hit is only required when the machine answered within the ttl. */
	if (time_mono_ms() - t0 < ttl_ms && c1.hits != c0.hits + 1)
		fail_msg("expected a hit within the ttl: hits +%llu misses +%llu",
			 (unsigned long long)(c1.hits - c0.hits), (unsigned long long)(c1.misses - c0.misses));
	struct timespec ts = { 1, 150 * 1000 * 1000 };
	nanosleep(&ts, NULL);
	const struct cache_step after[] = {
		{ "expired: verifies again", "{PLAIN}abc", "abc", true, false },
		{ "wrong password after expiry", "{PLAIN}abc", "abd", false, false },
	};
	int failures = cache_run_steps(after, ARRAY_LEN(after));
	auth_cache_free();
	assert_int_equal(failures, 0);
}

/* Many distinct accounts through a table of 8: the table never grows (at
 * most 8 of them can hit afterwards), answers stay right, the newest
 * entry is always there. */
#define EVICT_ACCOUNTS 300
static void test_cache_eviction(void **state)
{
	(void)state;
	cache_up(8, 3600 * 1000);
	assert_int_equal(auth_cache_capacity(), 8);
	char stored[64], pw[64], wrong[64];
	int failures = 0;
	for (int i = 0; i < EVICT_ACCOUNTS; i++) {
		snprintf(stored, sizeof(stored), "{PLAIN}pw-%d", i);
		snprintf(pw, sizeof(pw), "pw-%d", i);
		const struct cache_step steps[] = {
			{ "new account verifies", stored, pw, true, false },
			{ "just inserted: hit", stored, pw, true, true },
		};
		failures += cache_run_steps(steps, ARRAY_LEN(steps));
	}
	struct cache_counts c0 = cache_counts_now();
	for (int i = 0; i < EVICT_ACCOUNTS; i++) {
		snprintf(stored, sizeof(stored), "{PLAIN}pw-%d", i);
		snprintf(pw, sizeof(pw), "pw-%d", i);
		snprintf(wrong, sizeof(wrong), "pw-%d", i + 1);
		if (!auth_verify_password_cached(pw, stored) || auth_verify_password_cached(wrong, stored)) {
			print_error("account %d: wrong verdict after eviction\n", i);
			failures++;
		}
	}
	struct cache_counts c1 = cache_counts_now();
	auth_cache_free();
	assert_int_equal(failures, 0);
	if (c1.hits - c0.hits > 8 || c1.hits - c0.hits + c1.misses - c0.misses != 2 * EVICT_ACCOUNTS)
		fail_msg("table of 8: expected at most 8 hits of %d checks, got hits %llu misses %llu",
			 2 * EVICT_ACCOUNTS, (unsigned long long)(c1.hits - c0.hits),
			 (unsigned long long)(c1.misses - c0.misses));
}

/* 4 threads over a small table (eviction under contention): every verdict
 * must be the single-threaded one, and every check counted exactly once. */
#define CACHE_THREADS 4
#define CACHE_ROUNDS 3000
struct cache_worker {
	int id;
	int bad;
};

static void *cache_worker_run(void *arg)
{
	struct cache_worker *w = arg;
	char stored[64], pw[64];
	for (int r = 0; r < CACHE_ROUNDS; r++) {
		int acct = (r * 7 + w->id) % 40;
		snprintf(stored, sizeof(stored), "{PLAIN}secret-%d", acct);
		bool right = (r + w->id) % 3 != 0;
		snprintf(pw, sizeof(pw), "secret-%d%s", acct, right ? "" : "!");
		if (auth_verify_password_cached(pw, stored) != right)
			w->bad++;
		if (r % 500 == 0 && !auth_verify_password_cached(PW, S512))
			w->bad++;
	}
	return NULL;
}

static void test_cache_threads(void **state)
{
	(void)state;
	cache_up(32, 3600 * 1000);
	struct cache_counts c0 = cache_counts_now();
	pthread_t t[CACHE_THREADS];
	struct cache_worker w[CACHE_THREADS];
	for (int i = 0; i < CACHE_THREADS; i++) {
		w[i] = (struct cache_worker){ i, 0 };
		assert_int_equal(pthread_create(&t[i], NULL, cache_worker_run, &w[i]), 0);
	}
	int bad = 0;
	for (int i = 0; i < CACHE_THREADS; i++) {
		pthread_join(t[i], NULL);
		if (w[i].bad != 0)
			print_error("thread %d: %d wrong verdicts\n", i, w[i].bad);
		bad += w[i].bad;
	}
	struct cache_counts c1 = cache_counts_now();
	auth_cache_free();
	assert_int_equal(bad, 0);
	uint64_t checks = (uint64_t)CACHE_THREADS * (CACHE_ROUNDS + CACHE_ROUNDS / 500);
	uint64_t counted = (c1.hits - c0.hits) + (c1.misses - c0.misses);
	if (counted != checks || c1.hits == c0.hits)
		fail_msg("expected %llu checks counted with some hits, got hits %llu misses %llu",
			 (unsigned long long)checks, (unsigned long long)(c1.hits - c0.hits),
			 (unsigned long long)(c1.misses - c0.misses));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_verify_table),
		cmocka_unit_test(test_normalize_table),
		cmocka_unit_test(test_normalize_small_buffer),
		cmocka_unit_test(test_hash_round_trip),
		cmocka_unit_test(test_hash_refusals),
		cmocka_unit_test(test_verify_threads),
		cmocka_unit_test(test_cache_basic),
		cmocka_unit_test(test_cache_reinit),
		cmocka_unit_test(test_cache_off),
		cmocka_unit_test(test_cache_sizes),
		cmocka_unit_test(test_cache_expiry),
		cmocka_unit_test(test_cache_eviction),
		cmocka_unit_test(test_cache_threads),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
