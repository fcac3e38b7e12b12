/*
 * store_mime_test.c - unit tests of the dictionary-compressed MIME rows
 * (src/store/store_mime_dict.c, store_mime.c).
 *
 * Each test gets a fresh temporary state directory with store.fsync=no
 * and a low store.mime_dict_rows.  MIME rows are computed by src/mime
 * from generated messages (varied senders, subjects, boundaries and MIME
 * shapes, as a domain's mail is) and planted with their blob rows through
 * a second, plain SQLite connection ("raw") in one transaction, so a test
 * can hold thousands of rows; reads go through the store's API and must
 * give the parsed texts back byte for byte.
 *
 * Cases are tables with labels; a failing case prints its label and both
 * values.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "core.h"
#include "mime.h"
#include "store.h"
#include "store_internal.h" /* STORE_MIME_DICT_MARK, STORE_MIME_ROW_MAX */
#include "store_fixture.h"

/* ---- helpers ---------------------------------------------------------------- */

static int setup(void **state)
{
	*state = fixture_new("mime-test", true, "store.fsync=no", "store.mime_dict_rows=200", NULL);
	return 0;
}

static int teardown(void **state)
{
	fixture_free(*state);
	return 0;
}

/* The message id of blob n (blob rows are planted with id n). */
static struct msgid id_of(int64_t n)
{
	struct msgid id;
	memset(&id, 0, sizeof(id));
	memcpy(id.b, "mimetest", 8);
	for (int i = 0; i < 8; i++)
		id.b[8 + i] = (uint8_t)((uint64_t)n >> (8 * i));
	return id;
}

/* A deterministic generator of the kind of mail one domain receives. */
static uint32_t rnd_next(uint32_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 17;
	*x ^= *x << 5;
	return *x;
}

static void make_message(int64_t n, struct buf *out)
{
	static const char *const senders[] = { "\"Alice Martin\" <alice@example.net>", "bob@example.net",
		"Newsletter <news@lists.shop.example>", "\"Support\" <support@helpdesk.example.org>",
		"noreply@notifications.social.example", "=?UTF-8?Q?Ren=C3=A9_Dupont?= <rene@mail.example.fr>" };
	static const char *const subjects[] = { "Re: quarterly report", "Your order has shipped",
		"Meeting tomorrow at 10", "=?UTF-8?B?UsOpc3Vtw6kgZHUgbW9pcw==?=", "Invoice", "Fwd: photos" };
	uint32_t x = (uint32_t)n * 2654435761u + 1;
	rnd_next(&x);
	buf_reset(out);
	buf_printf(out, "Return-Path: <x@example.net>\r\nFrom: %s\r\nTo: user%u@example.net\r\n",
		   senders[rnd_next(&x) % 6], rnd_next(&x) % 500);
	buf_printf(out, "Subject: %s #%lld\r\nDate: Mon, %u Jan 2024 10:%02u:00 +0000\r\n",
		   subjects[rnd_next(&x) % 6], (long long)n, 1 + rnd_next(&x) % 28, rnd_next(&x) % 60);
	buf_printf(out, "Message-ID: <%08x.%lld@mx%u.example.net>\r\nMIME-Version: 1.0\r\n", rnd_next(&x),
		   (long long)n, rnd_next(&x) % 4);
	switch (rnd_next(&x) % 3) {
	case 0:
		buf_printf(out, "Content-Type: text/plain; charset=utf-8\r\n\r\nHello %lld\r\n", (long long)n);
		break;
	case 1:
		buf_printf(out, "Content-Type: multipart/alternative; boundary=\"----=_Part_%u_%u\"\r\n\r\n"
				"------=_Part_%u_%u\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhi\r\n"
				"------=_Part_%u_%u\r\nContent-Type: text/html; charset=utf-8\r\n"
				"Content-Transfer-Encoding: quoted-printable\r\n\r\n<p>hi</p>\r\n"
				"------=_Part_%u_%u--\r\n", 1u, (unsigned)n, 1u, (unsigned)n, 1u, (unsigned)n, 1u,
			   (unsigned)n);
		break;
	default:
		buf_printf(out, "Content-Type: multipart/mixed; boundary=\"b%u\"\r\n\r\n--b%u\r\n"
				"Content-Type: text/plain\r\n\r\nsee attached\r\n--b%u\r\n"
				"Content-Type: application/pdf; name=\"doc%u.pdf\"\r\n"
				"Content-Disposition: attachment; filename=\"doc%u.pdf\"\r\n"
				"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b%u--\r\n",
			   (unsigned)n, (unsigned)n, (unsigned)n, (unsigned)n, (unsigned)n, (unsigned)n);
		break;
	}
}

/* The summary src/mime computes for message n. */
static void summary_of(int64_t n, struct mime_summary *sum)
{
	struct buf m = BUF_INIT;
	make_message(n, &m);
	mime_parse_mem(m.data, m.len, sum);
	buf_free(&m);
}

/* Plants blob rows first..last (ids = n) with their raw packed MIME rows,
 * in one transaction; with_mime=false plants the blob rows only. */
static void plant(struct fixture *f, int64_t first, int64_t last, bool with_mime)
{
	raw_exec(f, "BEGIN");
	sqlite3_stmt *qb = NULL, *qm = NULL;
	assert_int_equal(sqlite3_prepare_v2(f->raw, "INSERT INTO blobs(id, msgid, tier, size, received, refcount)"
						    " VALUES(?1, ?2, 0, 100, 0, 1)", -1, &qb, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(f->raw, "INSERT INTO mime(blob_id, packed) VALUES(?1, ?2)", -1, &qm,
					    NULL), SQLITE_OK);
	struct buf p = BUF_INIT;
	for (int64_t n = first; n <= last; n++) {
		struct msgid id = id_of(n);
		sqlite3_bind_int64(qb, 1, n);
		sqlite3_bind_blob(qb, 2, id.b, MSGID_BYTES, SQLITE_STATIC);
		assert_int_equal(sqlite3_step(qb), SQLITE_DONE);
		sqlite3_reset(qb);
		if (!with_mime)
			continue;
		struct mime_summary sum;
		summary_of(n, &sum);
		buf_reset(&p);
		mime_pack(sum.envelope, sum.bodystructure, sum.body, sum.parts, sum.parts_len, &p);
		mime_summary_free(&sum);
		sqlite3_bind_int64(qm, 1, n);
		sqlite3_bind_blob(qm, 2, p.data, (int)p.len, SQLITE_STATIC);
		assert_int_equal(sqlite3_step(qm), SQLITE_DONE);
		sqlite3_reset(qm);
	}
	buf_free(&p);
	sqlite3_finalize(qb);
	sqlite3_finalize(qm);
	raw_exec(f, "COMMIT");
}

/* Fails unless blob n's row reads back as what src/mime computes. */
static void check_row(struct store *st, int64_t n, const char *label)
{
	struct mime_summary want;
	summary_of(n, &want);
	struct msgid id = id_of(n);
	struct store_mime got;
	enum status s = store_mime_get(st, &id, &got);
	if (s != ST_OK)
		fail_msg("%s: row %lld: got %s, want OK", label, (long long)n, status_info(s)->name);
	if (strcmp(got.envelope, want.envelope) != 0)
		fail_msg("%s: row %lld envelope:\n got  %s\n want %s", label, (long long)n, got.envelope,
			 want.envelope);
	if (strcmp(got.bodystructure, want.bodystructure) != 0)
		fail_msg("%s: row %lld bodystructure:\n got  %s\n want %s", label, (long long)n, got.bodystructure,
			 want.bodystructure);
	if (strcmp(got.body, want.body) != 0)
		fail_msg("%s: row %lld body:\n got  %s\n want %s", label, (long long)n, got.body, want.body);
	if (got.parts_len != want.parts_len || memcmp(got.parts, want.parts, want.parts_len) != 0)
		fail_msg("%s: row %lld part map differs (%zu vs %zu bytes)", label, (long long)n, got.parts_len,
			 want.parts_len);
	store_mime_free(&got);
	mime_summary_free(&want);
}

static void maintain(struct fixture *f, const char *label)
{
	char *err = NULL;
	enum status s = store_mime_dict_maintain(f->st, &err);
	if (s != ST_OK)
		fail_msg("%s: maintain: %s (%s)", label, status_info(s)->name, err ? err : "");
}

static int64_t compressed_rows(struct fixture *f)
{
	return raw_int(f, "SELECT count(*) FROM mime WHERE substr(packed, 1, 1) = x'D1'");
}

/* ---- tests ---------------------------------------------------------------------- */

/* Rows written before and after the first dictionary, raw and compressed,
 * all read back byte for byte, on the training handle and on a new one. */
static void test_round_trip(void **state)
{
	struct fixture *f = *state;
	plant(f, 1, 300, true);
	maintain(f, "train");
	CHECK_INT("dictionaries", raw_int(f, "SELECT count(*) FROM mime_dicts"), 1);
	CHECK_INT("rows recorded", raw_int(f, "SELECT rows FROM mime_dicts"), 300);
	CHECK_INT("re-packed by the same call", compressed_rows(f), 300);

	/* New rows through the API: compressed at once. */
	static const struct { const char *label; int64_t n; } cases[] = {
		{ "text/plain", 1001 }, { "multipart/alternative", 1002 }, { "multipart/mixed", 1003 },
		{ "another plain", 1004 }, { "another mixed", 1006 },
	};
	plant(f, 1001, 1006, false);
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct mime_summary sum;
		summary_of(cases[i].n, &sum);
		struct store_mime row = { sum.envelope, sum.bodystructure, sum.body, sum.parts, sum.parts_len };
		struct msgid id = id_of(cases[i].n);
		char *err = NULL;
		CHECK_ST(cases[i].label, store_mime_put(f->st, &id, &row, &err), ST_OK);
		mime_summary_free(&sum);
		char sql[96];
		snprintf(sql, sizeof(sql), "SELECT hex(substr(packed, 1, 1)) = 'D1' FROM mime WHERE blob_id = %lld",
			 (long long)cases[i].n);
		if (raw_int(f, sql) != 1)
			fail_msg("%s: written raw, want compressed", cases[i].label);
		check_row(f->st, cases[i].n, cases[i].label);
	}
	for (int64_t n = 1; n <= 300; n++)
		check_row(f->st, n, "raw row");
	/* A second handle loads the dictionary from the table. */
	char *err = NULL;
	struct store *other = store_open(f->s, false, &err);
	assert_non_null(other);
	for (size_t i = 0; i < ARRAY_LEN(cases); i++)
		check_row(other, cases[i].n, "other handle");
	store_close(&other);
}

/* Damaged compressed rows read as missing (never a crash or a big
 * allocation) and are replaced by the recomputed row. */
static void test_damage(void **state)
{
	struct fixture *f = *state;
	plant(f, 1, 300, true);
	maintain(f, "train");
	maintain(f, "re-pack");
	CHECK_INT("compressed", compressed_rows(f) > 250, 1);
	/* A frame claiming 2^40 bytes: single segment, 8-byte content size. */
	static const uint8_t huge[] = { 0xD1, 0x01, 0xE0, 0, 0, 0, 0, 0, 1, 0, 0, 0x01, 0, 0 };
	/* Exactly one byte above STORE_MIME_ROW_MAX (4-byte content size). */
#define OVER (STORE_MIME_ROW_MAX + 1u)
	static const uint8_t over_max[] = { 0xD1, 0x01, 0xA0, OVER & 0xff, (OVER >> 8) & 0xff, (OVER >> 16) & 0xff,
					    OVER >> 24, 0x01, 0, 0 };
#undef OVER
	static const struct { const char *label; const char *sql; const uint8_t *row; size_t len; } cases[] = {
		{ "unknown dictionary", "UPDATE mime SET packed = x'D163' || substr(packed, 3) WHERE blob_id = ?1",
		  NULL, 0 },
		{ "truncated frame", "UPDATE mime SET packed = substr(packed, 1, length(packed) / 2) WHERE blob_id = ?1",
		  NULL, 0 },
		{ "no frame", "UPDATE mime SET packed = x'D101' WHERE blob_id = ?1", NULL, 0 },
		{ "overlong id", "UPDATE mime SET packed = x'D1FFFFFFFFFFFFFFFFFF01' WHERE blob_id = ?1", NULL, 0 },
		{ "huge content size", "UPDATE mime SET packed = ?2 WHERE blob_id = ?1", huge, sizeof(huge) },
		{ "content size over the maximum", "UPDATE mime SET packed = ?2 WHERE blob_id = ?1", over_max,
		  sizeof(over_max) },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		int64_t n = 10 + (int64_t)i;
		sqlite3_stmt *q = NULL;
		assert_int_equal(sqlite3_prepare_v2(f->raw, cases[i].sql, -1, &q, NULL), SQLITE_OK);
		sqlite3_bind_int64(q, 1, n);
		if (cases[i].row)
			sqlite3_bind_blob(q, 2, cases[i].row, (int)cases[i].len, SQLITE_STATIC);
		assert_int_equal(sqlite3_step(q), SQLITE_DONE);
		sqlite3_finalize(q);
		struct msgid id = id_of(n);
		struct store_mime got;
		CHECK_ST(cases[i].label, store_mime_get(f->st, &id, &got), ST_NOT_FOUND);
		/* The recompute path replaces it. */
		struct mime_summary sum;
		summary_of(n, &sum);
		struct store_mime row = { sum.envelope, sum.bodystructure, sum.body, sum.parts, sum.parts_len };
		char *err = NULL;
		CHECK_ST(cases[i].label, store_mime_put(f->st, &id, &row, &err), ST_OK);
		mime_summary_free(&sum);
		check_row(f->st, n, cases[i].label);
	}
}

/* A frame claiming more than STORE_MIME_ROW_MAX is refused before any
 * allocation (the output buffer stays unallocated); one at the maximum is
 * allocated for, then refused because it does not decode to that size. */
static void test_content_size_bound(void **state)
{
	(void)state;
	static const uint8_t dict[] = "a raw-content dictionary: any bytes are one for zstd";
	static const struct { const char *label; uint64_t claim; bool allocates; } cases[] = {
		{ "2^40", 1ull << 40, false },
		{ "2^32 - 1", 0xffffffffull, false },
		{ "maximum + 1", STORE_MIME_ROW_MAX + 1ull, false },
		{ "maximum, no block", STORE_MIME_ROW_MAX, true },
		{ "zero", 0, false },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		/* mark, id 1, single-segment frame with an 8-byte content size,
		 * then a last raw block of 0 bytes */
		uint8_t row[3 + 8 + 3] = { STORE_MIME_DICT_MARK, 0x01, 0xE0 };
		for (int k = 0; k < 8; k++)
			row[3 + k] = (uint8_t)(cases[i].claim >> (8 * k));
		row[11] = 0x01;
		struct buf out = BUF_INIT;
		if (store_mime_dict_decode(dict, sizeof(dict), 1, row, sizeof(row), &out))
			fail_msg("%s: accepted", cases[i].label);
		if ((out.cap != 0) != cases[i].allocates)
			fail_msg("%s: buffer capacity %zu after the refusal", cases[i].label, out.cap);
		buf_free(&out);
	}
	/* And a real row round-trips through the same pair of functions. */
	struct mime_summary sum;
	summary_of(3, &sum);
	struct buf raw = BUF_INIT, row = BUF_INIT, back = BUF_INIT;
	mime_pack(sum.envelope, sum.bodystructure, sum.body, sum.parts, sum.parts_len, &raw);
	mime_summary_free(&sum);
	assert_true(store_mime_dict_encode(dict, sizeof(dict), 7, (const uint8_t *)raw.data, raw.len, &row));
	assert_false(store_mime_dict_decode(dict, sizeof(dict), 8, (const uint8_t *)row.data, row.len, &back));
	assert_true(store_mime_dict_decode(dict, sizeof(dict), 7, (const uint8_t *)row.data, row.len, &back));
	CHECK_INT("round trip length", back.len, raw.len);
	assert_memory_equal(back.data, raw.data, raw.len);
	buf_free(&raw);
	buf_free(&row);
	buf_free(&back);
}

/* Training happens at store.mime_dict_rows rows, then at 10x the rows of
 * the newest dictionary, and not before. */
static void test_threshold(void **state)
{
	struct fixture *f = *state;
	static const struct { const char *label; int64_t rows; int64_t dicts; } steps[] = {
		{ "below store.mime_dict_rows", 150, 0 },
		{ "just below", 199, 0 },
		{ "at store.mime_dict_rows", 200, 1 },
		{ "between", 1000, 1 },
		{ "just below 10x", 1999, 1 },
		{ "at 10x", 2000, 2 },
		{ "after", 2500, 2 },
	};
	int64_t have = 0;
	for (size_t i = 0; i < ARRAY_LEN(steps); i++) {
		plant(f, have + 1, steps[i].rows, true);
		have = steps[i].rows;
		maintain(f, steps[i].label);
		CHECK_INT(steps[i].label, raw_int(f, "SELECT count(*) FROM mime_dicts"), steps[i].dicts);
	}
	CHECK_INT("rows of the second", raw_int(f, "SELECT rows FROM mime_dicts WHERE id = 2"), 2000);
	/* Rows of both dictionaries read back. */
	for (int64_t n = 1; n <= 2500; n += 7)
		check_row(f->st, n, "after two dictionaries");
}

/* Rows that do not compress give no dictionary. */
static void test_no_gain(void **state)
{
	struct fixture *f = *state;
	plant(f, 1, 400, false);
	raw_exec(f, "INSERT INTO mime(blob_id, packed) SELECT id, x'10' || randomblob(300) FROM blobs");
	maintain(f, "random rows");
	CHECK_INT("dictionaries", raw_int(f, "SELECT count(*) FROM mime_dicts"), 0);
}

/* The re-pack turns every raw row into a compressed one, at most 2,000
 * per call, and stops. */
static void test_repack(void **state)
{
	struct fixture *f = *state;
	plant(f, 1, 5000, true);
	maintain(f, "train and first batch");
	CHECK_INT("dictionaries", raw_int(f, "SELECT count(*) FROM mime_dicts"), 1);
	int64_t after_first = compressed_rows(f);
	if (after_first == 0 || after_first > 2000)
		fail_msg("first batch: %lld rows compressed, want 1..2000", (long long)after_first);
	int calls = 1;
	while (compressed_rows(f) < 5000 && calls < 10) {
		maintain(f, "re-pack");
		calls++;
	}
	CHECK_INT("every row compressed", compressed_rows(f), 5000);
	if (calls > 4)
		fail_msg("re-pack took %d calls for 5000 rows, want <= 4", calls);
	for (int64_t n = 1; n <= 5000; n += 13)
		check_row(f->st, n, "re-packed");
	/* Converged: further calls write nothing. */
	int64_t before = sqlite3_total_changes64(f->st->db);
	maintain(f, "idle");
	CHECK_INT("idle call writes nothing", sqlite3_total_changes64(f->st->db), before);
}

/* store.mime_dict=no writes raw rows and still reads compressed ones. */
static void test_dict_off(void **state)
{
	struct fixture *f = *state;
	plant(f, 1, 300, true);
	maintain(f, "train");
	maintain(f, "re-pack");
	CHECK_INT("compressed", compressed_rows(f), 300);
	struct settings *off = fixture_settings(f->dir, "store.fsync=no", "store.mime_dict_rows=200", "store.mime_dict=no");
	char *err = NULL;
	struct store *st = store_open(off, false, &err);
	assert_non_null(st);
	check_row(st, 5, "compressed row, dictionaries off");
	plant(f, 301, 301, false);
	struct mime_summary sum;
	summary_of(301, &sum);
	struct store_mime row = { sum.envelope, sum.bodystructure, sum.body, sum.parts, sum.parts_len };
	struct msgid id = id_of(301);
	CHECK_ST("put", store_mime_put(st, &id, &row, &err), ST_OK);
	mime_summary_free(&sum);
	CHECK_INT("written raw", raw_int(f, "SELECT hex(substr(packed, 1, 1)) <> 'D1' FROM mime WHERE blob_id = 301"),
		  1);
	check_row(st, 301, "raw row");
	plant(f, 302, 3000, true);
	CHECK_ST("maintain off", store_mime_dict_maintain(st, &err), ST_OK);
	CHECK_INT("no training", raw_int(f, "SELECT count(*) FROM mime_dicts"), 1);
	CHECK_INT("no re-pack", compressed_rows(f), 300);
	store_close(&st);
	config_free(&off);
}

/* A populated v7 index gets the table and keeps its raw rows readable. */
static void test_migration_v7(void **state)
{
	struct fixture *f = *state;
	plant(f, 1, 300, true);
	store_close(&f->st);
	raw_exec(f, "DROP TABLE mime_dicts; PRAGMA user_version = 7");
	char *err = NULL;
	f->st = store_open(f->s, true, &err);
	if (f->st == NULL)
		fail_msg("store_open: %s", err);
	CHECK_INT("version", raw_int(f, "PRAGMA user_version"), STORE_SCHEMA_VERSION);
	CHECK_INT("rows kept", raw_int(f, "SELECT count(*) FROM mime"), 300);
	check_row(f->st, 7, "raw row after upgrade");
	maintain(f, "train after upgrade");
	CHECK_INT("dictionaries", raw_int(f, "SELECT count(*) FROM mime_dicts"), 1);
}

int main(void)
{
	log_init("store_mime_test", false, LOG_LVL_WARN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_damage, setup, teardown),
		cmocka_unit_test(test_content_size_bound),
		cmocka_unit_test_setup_teardown(test_threshold, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_gain, setup, teardown),
		cmocka_unit_test_setup_teardown(test_repack, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dict_off, setup, teardown),
		cmocka_unit_test_setup_teardown(test_migration_v7, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
