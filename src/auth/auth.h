/*
 * auth.h - password hashing and verification.
 *
 * Owns: hashing new passwords with Argon2id (libsodium, stored as
 * "{ARGON2ID}$argon2id$..."), and verifying imported Dovecot-style hashes:
 * {ARGON2ID}, {ARGON2I}, {SHA512-CRYPT} ($6$), {SHA256-CRYPT} ($5$),
 * {BLF-CRYPT} ($2y$/$2b$/$2a$), through libcrypt for the crypt(3) families,
 * and {PLAIN} for migrations only; and the cache of verified passwords the
 * login paths go through (auth_verify_password_cached).
 *
 * New hashes: Argon2id with libsodium's INTERACTIVE limits (2 passes over
 * 64 MiB, one lane): on the order of 0.1 s of one core and 64 MiB of memory
 * per hash, so a bulk import hashes on every core in parallel.
 *
 * Accepted imported hashes are bounded so that one login cannot cost more
 * than a few seconds of CPU or 1 GiB of memory: Argon2 m <= 1 GiB, t <= 32,
 * p <= 16; SHA-crypt rounds <= 1,000,000; bcrypt cost 4..16.  A hash beyond
 * these bounds is "unsupported" (import refuses it; verification fails).
 *
 * {PLAIN}secret is accepted only with its explicit prefix, is compared in
 * constant time, and exists only to migrate accounts whose old system kept
 * clear text: re-hash such accounts (`strata user passwd`) after migration.
 *
 * Thread-safe.  Hashing is deliberately slow (tens of ms); never call it on
 * a network event loop.  Verification of a crypt(3) hash allocates one
 * struct crypt_data (about 32 KiB) per call.
 */
#ifndef STRATA_AUTH_H
#define STRATA_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"

/* Size of a buffer that holds any stored hash, with its NUL (equals the
 * size of struct account.pwhash in store.h). */
#define AUTH_HASH_MAX 256

/* Hashes `password` (non-empty) with Argon2id into out (scheme-prefixed,
 * NUL-terminated).  Returns false when the password is empty, out is smaller
 * than the result (AUTH_HASH_MAX always suffices) or memory for Argon2 could
 * not be had. */
bool auth_hash_password(const char *password, char *out, size_t outlen);
/* Verifies password against a stored hash of any supported scheme.  False
 * for a wrong password, an empty password, and a malformed or unsupported
 * stored hash.  The comparison of the computed and stored hash is constant
 * time. */
bool auth_verify_password(const char *password, const char *stored);
/* True when `hash` names a supported scheme and is well formed (import):
 * exactly when auth_hash_normalize() accepts it. */
bool auth_hash_is_supported(const char *hash);
/* Normalises an imported hash: a bare "$argon2id$..." / "$6$..." / "$2y$..."
 * gets its {SCHEME} prefix, a prefix is upper-cased, and Dovecot's generic
 * {CRYPT} becomes the specific scheme its body names.  Returns false for
 * unsupported or malformed hashes and when out (outlen bytes) is too small;
 * out is then left empty. */
bool auth_hash_normalize(const char *in, char *out, size_t outlen);

/* ---- verified-password cache (auth_cache.c) ------------------------------
 * A bounded in-memory cache of successful verifications, so that a client
 * opening several sessions does not pay for SHA512-crypt, bcrypt or Argon2
 * at each one.  An entry is a keyed BLAKE2b tag over (stored hash,
 * password) under a random per-process key, with an expiry: it holds
 * neither the password nor anything that can be checked without the key.
 * Because the stored hash is part of the tag, changing a password (a new
 * stored hash) makes every entry of the old one unreachable at once.
 * Failures are never cached.  See auth_cache.c for the full contract. */

/* Largest cache accepted (entries); auth.cache_size in config.c matches. */
#define AUTH_CACHE_MAX_ENTRIES (16u * 1024u * 1024u)

/* Sets the process-wide cache up: `entries` slots (rounded up to a whole
 * 4-way bucket; at most AUTH_CACHE_MAX_ENTRIES), each valid `ttl_ms` after
 * the verification that made it (a hit does not extend it).  entries 0 or
 * ttl_ms 0 leaves the cache off.  Memory: 40 bytes per slot, mapped once,
 * excluded from core dumps, never grown.  Call before any thread verifies
 * passwords (daemon start-up), at most once between auth_cache_free calls.
 * False (with *error_r, caller frees) when the memory cannot be mapped;
 * the cache is then off. */
bool auth_cache_init(size_t entries, uint64_t ttl_ms, char **error_r);
/* Wipes the key and every entry and unmaps them; the cache is off again.
 * Only once no thread can verify any more.  Safe when never initialised. */
void auth_cache_free(void);
/* auth_verify_password through the cache: a live entry for (stored,
 * password) answers true at once (a hit); otherwise the full verification
 * runs (a miss) and, on success only, is remembered.  With the cache off it
 * is exactly auth_verify_password.  Counts strata_auth_cache_total
 * {result="hit"|"miss"}.  Thread-safe; allocates nothing. */
bool auth_verify_password_cached(const char *password, const char *stored);
/* Slots in the table (0: off). */
size_t auth_cache_capacity(void);

#endif
