/*
 * auth.h - password hashing and verification.
 *
 * Owns: hashing new passwords with Argon2id (libsodium, stored as
 * "{ARGON2ID}$argon2id$..."), and verifying imported Dovecot-style hashes:
 * {ARGON2ID}, {ARGON2I}, {SHA512-CRYPT} ($6$), {SHA256-CRYPT} ($5$),
 * {BLF-CRYPT} ($2y$/$2b$/$2a$), through libcrypt for the crypt(3) families,
 * and {PLAIN} for migrations only.
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

#endif
