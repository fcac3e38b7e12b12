/*
 * fuzz.h - shared by the fuzz targets (fuzz_*.c), their helpers
 * (fuzz_util.c) and the corpus replay driver (replay_main.c).
 *
 * Owns: the libFuzzer entry point prototype, the invariant check that turns
 * a violated property into a crash libFuzzer (or the replay test) reports,
 * a deterministic split generator so that "any split gives the same result"
 * properties are tested with split points derived from the input, and a
 * temporary-file helper for APIs that only take a path.
 *
 * Invariants:
 *  - A target is a pure function of its input: no state survives from one
 *    call to the next (so a crash reproduces from the saved input alone),
 *    and every allocation made during a call is freed before it returns
 *    (LeakSanitizer runs after each input under libFuzzer).
 *  - FUZZ_CHECK never returns on failure: it prints what was expected and
 *    what was seen, then aborts.
 *  - Single-threaded; libFuzzer calls the target from one thread.
 */
#ifndef STRATA_FUZZ_H
#define STRATA_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"

/* The libFuzzer entry point: each target defines it, libFuzzer or
 * replay_main.c calls it.  Always returns 0. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reports a violated property and aborts. */
void fuzz_fail(const char *file, int line, const char *cond, const char *fmt, ...)
	ATTR_PRINTF(4, 5) ATTR_NORETURN;

#define FUZZ_CHECK(cond, ...)                                                 \
	do {                                                                  \
		if (!(cond))                                                  \
			fuzz_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);    \
	} while (0)

/* Prints a labelled, escaped excerpt of bytes (at most 200 octets) to
 * stderr, for the two sides of a failed comparison. */
void fuzz_dump(const char *label, const void *data, size_t len);

/* Compares two byte strings; on a difference prints both sides (around the
 * first differing octet) and aborts, naming `what`. */
void fuzz_check_same(const char *what, const void *a, size_t alen, const void *b, size_t blen);

/* ---- split points ------------------------------------------------------
 * A small xorshift generator seeded from a hash of the input, so the split
 * points are a pure function of the input and a crash reproduces. */
struct fuzz_rng {
	uint64_t s;
};
void fuzz_rng_init(struct fuzz_rng *r, const void *data, size_t len, uint64_t salt);
uint64_t fuzz_rng_next(struct fuzz_rng *r);
/* Length of the next chunk when `left` bytes remain: mostly short chunks
 * (0 to 8 octets, zero-length feeds included), sometimes long ones. */
size_t fuzz_rng_chunk(struct fuzz_rng *r, size_t left);

/* ---- temporary files ----------------------------------------------------
 * Writes data to a new file in $TMPDIR (or /tmp) and returns its path in
 * path (at least 4096 bytes); the caller unlinks it.  Aborts on failure: a
 * target that cannot create its input cannot test anything. */
void fuzz_temp_file(const void *data, size_t len, char *path, size_t path_len);

#endif
