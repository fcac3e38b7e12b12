/*
 * fuzz_util.c - helpers shared by the fuzz targets: invariant failure
 * reports, a deterministic split generator and temporary input files.
 *
 * Contract: see fuzz.h.  Nothing here keeps state between inputs; the
 * generator lives on the caller's stack.
 */
#include "fuzz.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void fuzz_fail(const char *file, int line, const char *cond, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "fuzz: %s:%d: property violated: %s\nfuzz: ", file, line, cond);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	fflush(stderr);
	abort();
}

void fuzz_dump(const char *label, const void *data, size_t len)
{
	char esc[200 * 4 + 1];
	size_t n = len < 200 ? len : 200;
	log_escape(data, n, esc, sizeof(esc));
	fprintf(stderr, "fuzz:   %s (%zu octets): \"%s\"%s\n", label, len, esc, n < len ? "..." : "");
}

void fuzz_check_same(const char *what, const void *a, size_t alen, const void *b, size_t blen)
{
	if (alen == blen && (alen == 0 || memcmp(a, b, alen) == 0))
		return;
	const unsigned char *pa = a, *pb = b;
	size_t i = 0;
	while (i < alen && i < blen && pa[i] == pb[i])
		i++;
	size_t from = i > 40 ? i - 40 : 0;
	fprintf(stderr, "fuzz: %s differ at octet %zu (lengths %zu and %zu), shown from octet %zu:\n",
		what, i, alen, blen, from);
	fuzz_dump("expected", pa + from, alen - from);
	fuzz_dump("got     ", pb + from, blen - from);
	fuzz_fail(__FILE__, __LINE__, "same bytes", "%s", what);
}

/* ---- split points ------------------------------------------------------- */

void fuzz_rng_init(struct fuzz_rng *r, const void *data, size_t len, uint64_t salt)
{
	/* FNV-1a: any hash will do, it only has to depend on every octet. */
	uint64_t h = 0xcbf29ce484222325ull ^ salt;
	const unsigned char *p = data;
	for (size_t i = 0; i < len; i++) {
		h ^= p[i];
		h *= 0x100000001b3ull;
	}
	r->s = h != 0 ? h : 0x9e3779b97f4a7c15ull;
}

uint64_t fuzz_rng_next(struct fuzz_rng *r)
{
	uint64_t x = r->s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	r->s = x;
	return x;
}

size_t fuzz_rng_chunk(struct fuzz_rng *r, size_t left)
{
	uint64_t v = fuzz_rng_next(r);
	size_t n;
	if (v % 8 == 0)
		n = (size_t)((v >> 8) % 4096);  /* a long read */
	else
		n = (size_t)((v >> 8) % 9);     /* 0..8: splits inside CRLF.CRLF */
	return n < left ? n : left;
}

/* ---- temporary files ---------------------------------------------------- */

void fuzz_temp_file(const void *data, size_t len, char *path, size_t path_len)
{
	const char *dir = getenv("TMPDIR");
	if (dir == NULL || dir[0] == '\0')
		dir = "/tmp";
	int n = snprintf(path, path_len, "%s/strata-fuzz-XXXXXX", dir);
	if (n < 0 || (size_t)n >= path_len)
		fuzz_fail(__FILE__, __LINE__, "temp path fits", "TMPDIR too long");
	int fd = mkstemp(path);
	if (fd < 0)
		fuzz_fail(__FILE__, __LINE__, "mkstemp", "%s: %s", path, strerror(errno));
	const char *p = data;
	size_t left = len;
	while (left > 0) {
		ssize_t w = write(fd, p, left);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			int e = errno;
			unlink(path);
			fuzz_fail(__FILE__, __LINE__, "write temp file", "%s: %s", path, strerror(e));
		}
		p += w;
		left -= (size_t)w;
	}
	if (close(fd) != 0) {
		int e = errno;
		unlink(path);
		fuzz_fail(__FILE__, __LINE__, "close temp file", "%s: %s", path, strerror(e));
	}
}
