/*
 * auth.h - password hashing and verification.
 *
 * Owns: hashing new passwords with Argon2id (libsodium, stored as
 * "{ARGON2ID}$argon2id$..."), and verifying imported Dovecot-style hashes:
 * {ARGON2ID}, {SHA512-CRYPT} ($6$), {SHA256-CRYPT} ($5$), {BLF-CRYPT}
 * ($2y$/$2b$), through libcrypt for the crypt(3) families.
 *
 * Thread-safe.  Hashing is deliberately slow (tens of ms); never call it on
 * a network event loop.
 */
#ifndef STRATA_AUTH_H
#define STRATA_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "core.h"

/* Hashes `password` with Argon2id into out (scheme-prefixed). */
bool auth_hash_password(const char *password, char *out, size_t outlen);
/* Verifies password against a stored hash of any supported scheme. */
bool auth_verify_password(const char *password, const char *stored);
/* True when `hash` names a supported scheme and is well formed (import). */
bool auth_hash_is_supported(const char *hash);
/* Normalises an imported hash: a bare "$argon2id$..." / "$6$..." / "$2y$..."
 * gets its {SCHEME} prefix.  Returns false for unsupported schemes. */
bool auth_hash_normalize(const char *in, char *out, size_t outlen);

#endif
