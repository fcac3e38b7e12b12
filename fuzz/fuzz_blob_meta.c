/*
 * fuzz_blob_meta.c - fuzz target for the blob trailer parser
 * (store_blob_read_meta in src/store/store.h), which rebuild and verify
 * run over whatever files lie in the blob directory.
 *
 * Input: a blob file (message bytes, then the trailer).  It is read twice:
 * as is, and with a correct "STRATA-META-END <len>" tail appended for the
 * text from its last "\nSTRATA-META 1\n" on, so that mutations of the
 * trailer's lines reach the line parser instead of stopping at the tail's
 * length check.
 *
 * Properties checked:
 *  - the status is one of ST_OK / ST_INVALID (never ST_NOT_FOUND or a
 *    crash for a file that exists; ST_IO_ERROR is not expected from a
 *    regular temporary file), and a failed read leaves no recipients;
 *  - accepted metadata is complete: 64 lower-case hex digits of hash, at
 *    least one recipient, each printable ASCII with an '@', at most 318
 *    octets, and `size` equal to the octets before the trailer;
 *  - round trip: the message bytes followed by store_blob_trailer(meta)
 *    read back to the same metadata.
 *
 * Durability/concurrency: one temporary file per read, removed before the
 * call returns; one thread.
 */
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store.h"

#define HEAD "\nSTRATA-META 1\n"
#define ADDRESS_MAX 318

static enum status read_meta(const void *file, size_t len, struct blob_meta *meta)
{
	char path[4096];
	fuzz_temp_file(file, len, path, sizeof(path));
	enum status st = store_blob_read_meta(path, meta);
	unlink(path);
	FUZZ_CHECK(st == ST_OK || st == ST_INVALID, "status %s for a regular file", status_info(st)->name);
	if (st != ST_OK)
		FUZZ_CHECK(meta->n_rcpts == 0 && meta->rcpt_addresses == NULL,
			   "failed read left %zu recipients", meta->n_rcpts);
	return st;
}

static void check_meta(const struct blob_meta *m, size_t file_len)
{
	FUZZ_CHECK(m->size < file_len, "size %llu for a file of %zu octets", (unsigned long long)m->size,
		   file_len);
	FUZZ_CHECK(strlen(m->hash_hex) == 64 && strspn(m->hash_hex, "0123456789abcdef") == 64,
		   "hash '%s'", m->hash_hex);
	FUZZ_CHECK(m->received >= 0, "received %lld", (long long)m->received);
	FUZZ_CHECK(m->n_rcpts > 0 && m->rcpt_addresses != NULL, "no recipients");
	for (size_t i = 0; i < m->n_rcpts; i++) {
		const char *a = m->rcpt_addresses[i];
		size_t n = strnlen(a, sizeof(m->rcpt_addresses[i]));
		FUZZ_CHECK(n > 0 && n <= ADDRESS_MAX, "recipient %zu of %zu octets", i, n);
		for (size_t k = 0; k < n; k++)
			FUZZ_CHECK(a[k] > 0x20 && a[k] < 0x7f, "recipient '%s' has octet 0x%02x", a,
				   (unsigned char)a[k]);
		FUZZ_CHECK(strchr(a, '@') != NULL, "recipient '%s' has no '@'", a);
	}
}

static void check_same_meta(const struct blob_meta *a, const struct blob_meta *b)
{
	FUZZ_CHECK(memcmp(&a->id, &b->id, sizeof(a->id)) == 0, "id changes on a round trip");
	FUZZ_CHECK(a->received == b->received && a->size == b->size, "received/size %lld/%llu became %lld/%llu",
		   (long long)a->received, (unsigned long long)a->size, (long long)b->received,
		   (unsigned long long)b->size);
	FUZZ_CHECK(strcmp(a->hash_hex, b->hash_hex) == 0, "hash changes on a round trip");
	FUZZ_CHECK(a->n_rcpts == b->n_rcpts, "%zu recipients became %zu", a->n_rcpts, b->n_rcpts);
	for (size_t i = 0; i < a->n_rcpts; i++)
		FUZZ_CHECK(strcmp(a->rcpt_addresses[i], b->rcpt_addresses[i]) == 0, "recipient '%s' became '%s'",
			   a->rcpt_addresses[i], b->rcpt_addresses[i]);
}

static void check_file(const uint8_t *file, size_t len)
{
	struct blob_meta meta;
	if (read_meta(file, len, &meta) != ST_OK)
		return;
	check_meta(&meta, len);
	struct buf again = BUF_INIT;
	buf_append(&again, file, (size_t)meta.size);
	store_blob_trailer(&meta, &again);
	struct blob_meta meta2;
	enum status st = read_meta(again.data, again.len, &meta2);
	if (st != ST_OK) {
		fuzz_dump("rewritten trailer", again.data + meta.size, again.len - (size_t)meta.size);
		fuzz_fail(__FILE__, __LINE__, "round trip", "a written trailer does not read back: %s",
			  status_info(st)->name);
	}
	check_same_meta(&meta, &meta2);
	store_blob_meta_free(&meta2);
	store_blob_meta_free(&meta);
	FUZZ_CHECK(meta.rcpt_addresses == NULL && meta.n_rcpts == 0, "meta_free left recipients");
	buf_free(&again);
}

/* The input with a tail that gives the right length for its last HEAD. */
static void check_fixed_tail(const uint8_t *data, size_t size)
{
	size_t hlen = sizeof(HEAD) - 1;
	if (size < hlen)
		return;
	size_t pos = size - hlen + 1;
	while (pos > 0 && memcmp(data + pos - 1, HEAD, hlen) != 0)
		pos--;
	if (pos == 0)
		return;
	size_t tlen = size - (pos - 1) + STORE_TRAILER_TAIL;
	struct buf b = BUF_INIT;
	buf_append(&b, data, size);
	buf_printf(&b, "STRATA-META-END %010zu\n", tlen);
	if (b.len - size == STORE_TRAILER_TAIL)
		check_file((const uint8_t *)b.data, b.len);
	buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	check_file(data, size);
	check_fixed_tail(data, size);
	return 0;
}
