/*
 * auth_hash.c - password hashes: Argon2id for new ones, verification of
 * imported Dovecot-style hashes.
 *
 * Interface: auth.h.  Stored form: "{SCHEME}body", the scheme upper case.
 *
 *   {ARGON2ID}     body is libsodium's crypto_pwhash_str() output
 *                  ("$argon2id$v=19$m=65536,t=2,p=1$salt$hash"); new hashes
 *                  use OPSLIMIT_INTERACTIVE / MEMLIMIT_INTERACTIVE.
 *   {ARGON2I}      "$argon2i$..." (older Dovecot installations); libsodium's
 *                  crypto_pwhash_str_verify handles both variants.
 *   {SHA512-CRYPT} "$6$[rounds=N$]salt$86 chars"   crypt_r(3), libcrypt
 *   {SHA256-CRYPT} "$5$[rounds=N$]salt$43 chars"   crypt_r(3), libcrypt
 *   {BLF-CRYPT}    "$2y$NN$53 chars" ($2a$, $2b$ too) crypt_r(3), libcrypt
 *   {PLAIN}        clear text, migration only (see auth.h)
 *
 * Invariants:
 *  - Nothing is verified against a hash this file would not accept on
 *    import: the same well-formedness check and cost bounds apply to both,
 *    so a hostile or corrupt row cannot make one login cost minutes of CPU
 *    or gigabytes of memory.
 *  - Computed and stored hashes are compared with str_ct_equal; clear text
 *    ({PLAIN}) is compared through BLAKE2b digests of both sides so that
 *    neither content nor length leaks through timing.
 *  - Thread-safe: crypt_rn (libxcrypt's crypt_r with an explicit size)
 *    with a per-call struct crypt_data, libsodium
 *    initialised once through pthread_once.  No global mutable state.
 */
#include "auth.h"

#include <crypt.h>
#include <ctype.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Bounds on imported hash costs (documented in auth.h). */
#define ARGON2_MAX_M_KIB (1024u * 1024u) /* 1 GiB */
#define ARGON2_MAX_T 32u
#define ARGON2_MAX_P 16u
#define SHACRYPT_MIN_ROUNDS 1000u
#define SHACRYPT_MAX_ROUNDS 1000000u
#define BCRYPT_MIN_COST 4u
#define BCRYPT_MAX_COST 16u

enum scheme {
	SCHEME_ARGON2ID,
	SCHEME_ARGON2I,
	SCHEME_SHA512_CRYPT,
	SCHEME_SHA256_CRYPT,
	SCHEME_BLF_CRYPT,
	SCHEME_PLAIN,
	SCHEME__COUNT,
	SCHEME_CRYPT_GENERIC, /* Dovecot's {CRYPT}: resolved from the body */
	SCHEME_NONE
};

static const char *const scheme_names[SCHEME__COUNT] = {
	[SCHEME_ARGON2ID] = "ARGON2ID",
	[SCHEME_ARGON2I] = "ARGON2I",
	[SCHEME_SHA512_CRYPT] = "SHA512-CRYPT",
	[SCHEME_SHA256_CRYPT] = "SHA256-CRYPT",
	[SCHEME_BLF_CRYPT] = "BLF-CRYPT",
	[SCHEME_PLAIN] = "PLAIN",
};

static pthread_once_t sodium_once = PTHREAD_ONCE_INIT;
static bool sodium_ok;

static void sodium_setup(void)
{
	sodium_ok = sodium_init() >= 0;
}

static bool sodium_ready(void)
{
	pthread_once(&sodium_once, sodium_setup);
	return sodium_ok;
}

/* The crypt(3) alphabet shared by SHA-crypt and bcrypt. */
static bool is_crypt64(char c)
{
	return c == '.' || c == '/' || isalnum((unsigned char)c);
}

static size_t span_crypt64(const char *s)
{
	size_t n = 0;
	while (is_crypt64(s[n]))
		n++;
	return n;
}

/* Parses a decimal number of at most 10 digits without a leading zero;
 * advances *pp past it. */
static bool parse_small_uint(const char **pp, unsigned long *out)
{
	const char *p = *pp;
	unsigned long v = 0;
	size_t n = 0;
	while (isdigit((unsigned char)p[n]) && n < 10) {
		v = v * 10 + (unsigned long)(p[n] - '0');
		n++;
	}
	if (n == 0 || isdigit((unsigned char)p[n]) || (n > 1 && p[0] == '0'))
		return false;
	*pp = p + n;
	*out = v;
	return true;
}

/* "$5$" / "$6$" [rounds=N$] salt(0..16) "$" hash(hash_len). */
static bool sha_crypt_well_formed(const char *body, char id, size_t hash_len)
{
	if (body[0] != '$' || body[1] != id || body[2] != '$')
		return false;
	const char *p = body + 3;
	if (strncmp(p, "rounds=", 7) == 0) {
		unsigned long rounds;
		p += 7;
		if (!parse_small_uint(&p, &rounds) || *p != '$')
			return false;
		if (rounds < SHACRYPT_MIN_ROUNDS || rounds > SHACRYPT_MAX_ROUNDS)
			return false;
		p++;
	}
	size_t salt = span_crypt64(p);
	if (salt > 16 || p[salt] != '$')
		return false;
	p += salt + 1;
	return span_crypt64(p) == hash_len && p[hash_len] == '\0';
}

/* "$2a$" / "$2b$" / "$2y$" cost(2 digits) "$" 22 salt + 31 hash chars. */
static bool bcrypt_well_formed(const char *body)
{
	if (body[0] != '$' || body[1] != '2' || strchr("aby", body[2]) == NULL || body[2] == '\0' ||
	    body[3] != '$')
		return false;
	if (!isdigit((unsigned char)body[4]) || !isdigit((unsigned char)body[5]) || body[6] != '$')
		return false;
	unsigned cost = (unsigned)(body[4] - '0') * 10u + (unsigned)(body[5] - '0');
	if (cost < BCRYPT_MIN_COST || cost > BCRYPT_MAX_COST)
		return false;
	return span_crypt64(body + 7) == 53 && body[60] == '\0';
}

/* Reads "k=N" at *pp into *out and advances past it. */
static bool argon2_param(const char **pp, char key, unsigned long *out)
{
	const char *p = *pp;
	if (p[0] != key || p[1] != '=')
		return false;
	p += 2;
	if (!parse_small_uint(&p, out))
		return false;
	*pp = p;
	return true;
}

/* "$argon2id$" / "$argon2i$" [v=N$] m=M,t=T,p=P$salt$hash, within bounds,
 * and decodable by libsodium. */
static bool argon2_well_formed(const char *body, enum scheme sc)
{
	const char *prefix = sc == SCHEME_ARGON2ID ? "$argon2id$" : "$argon2i$";
	size_t plen = strlen(prefix);
	if (strncmp(body, prefix, plen) != 0 || strlen(body) >= crypto_pwhash_STRBYTES)
		return false;
	const char *p = body + plen;
	unsigned long v, m, t, par;
	if (p[0] == 'v') {
		if (!argon2_param(&p, 'v', &v) || *p++ != '$')
			return false;
	}
	if (!argon2_param(&p, 'm', &m) || *p++ != ',' || !argon2_param(&p, 't', &t) || *p++ != ',' ||
	    !argon2_param(&p, 'p', &par) || *p != '$')
		return false;
	if (m > ARGON2_MAX_M_KIB || t == 0 || t > ARGON2_MAX_T || par == 0 || par > ARGON2_MAX_P)
		return false;
	if (!sodium_ready())
		return false;
	/* needs_rehash decodes the whole string and returns -1 when it is not
	 * a valid hash of that variant; 0 or 1 otherwise. */
	int r = sc == SCHEME_ARGON2ID
			? crypto_pwhash_argon2id_str_needs_rehash(body, crypto_pwhash_argon2id_OPSLIMIT_INTERACTIVE,
								  crypto_pwhash_argon2id_MEMLIMIT_INTERACTIVE)
			: crypto_pwhash_argon2i_str_needs_rehash(body, crypto_pwhash_argon2i_OPSLIMIT_INTERACTIVE,
								 crypto_pwhash_argon2i_MEMLIMIT_INTERACTIVE);
	return r >= 0;
}

/* Which scheme a bare body (no {PREFIX}) belongs to, by its modular-crypt id. */
static enum scheme scheme_of_body(const char *body)
{
	if (strncmp(body, "$argon2id$", 10) == 0)
		return SCHEME_ARGON2ID;
	if (strncmp(body, "$argon2i$", 9) == 0)
		return SCHEME_ARGON2I;
	if (strncmp(body, "$6$", 3) == 0)
		return SCHEME_SHA512_CRYPT;
	if (strncmp(body, "$5$", 3) == 0)
		return SCHEME_SHA256_CRYPT;
	if (body[0] == '$' && body[1] == '2' && body[2] != '\0' && strchr("aby", body[2]) && body[3] == '$')
		return SCHEME_BLF_CRYPT;
	return SCHEME_NONE;
}

static bool body_well_formed(enum scheme sc, const char *body)
{
	switch (sc) {
	case SCHEME_ARGON2ID:
	case SCHEME_ARGON2I:
		return argon2_well_formed(body, sc);
	case SCHEME_SHA512_CRYPT:
		return sha_crypt_well_formed(body, '6', 86);
	case SCHEME_SHA256_CRYPT:
		return sha_crypt_well_formed(body, '5', 43);
	case SCHEME_BLF_CRYPT:
		return bcrypt_well_formed(body);
	case SCHEME_PLAIN:
		return body[0] != '\0'; /* an empty password is never intended */
	default:
		return false;
	}
}

/* Splits "{NAME}body" or a bare body into scheme and body.  Returns
 * SCHEME_NONE for an unknown or malformed prefix or bare body. */
static enum scheme split_hash(const char *in, const char **body_r)
{
	if (in[0] != '{') {
		*body_r = in;
		return scheme_of_body(in);
	}
	const char *close = strchr(in, '}');
	if (close == NULL)
		return SCHEME_NONE;
	size_t n = (size_t)(close - in - 1);
	*body_r = close + 1;
	for (int i = 0; i < SCHEME__COUNT; i++) {
		if (strlen(scheme_names[i]) == n && strncasecmp(in + 1, scheme_names[i], n) == 0)
			return (enum scheme)i;
	}
	if (n == 5 && strncasecmp(in + 1, "CRYPT", 5) == 0)
		return SCHEME_CRYPT_GENERIC;
	return SCHEME_NONE;
}

/* Resolves `in` to a supported scheme and its well-formed body. */
static enum scheme classify(const char *in, const char **body_r)
{
	const char *body;
	enum scheme sc = split_hash(in, &body);
	if (sc == SCHEME_CRYPT_GENERIC) {
		/* Dovecot's {CRYPT} is whatever crypt(3) understands; we take
		 * the SHA-crypt and bcrypt members of that family. */
		sc = scheme_of_body(body);
		if (sc != SCHEME_SHA512_CRYPT && sc != SCHEME_SHA256_CRYPT && sc != SCHEME_BLF_CRYPT)
			return SCHEME_NONE;
	}
	if (sc == SCHEME_NONE || !body_well_formed(sc, body))
		return SCHEME_NONE;
	*body_r = body;
	return sc;
}

bool auth_hash_normalize(const char *in, char *out, size_t outlen)
{
	const char *body;
	enum scheme sc = classify(in, &body);
	if (outlen > 0)
		out[0] = '\0';
	if (sc == SCHEME_NONE)
		return false;
	int n = snprintf(out, outlen, "{%s}%s", scheme_names[sc], body);
	if (n < 0 || (size_t)n >= outlen) {
		if (outlen > 0)
			out[0] = '\0';
		return false;
	}
	return true;
}

bool auth_hash_is_supported(const char *hash)
{
	const char *body;
	return classify(hash, &body) != SCHEME_NONE;
}

bool auth_hash_password(const char *password, char *out, size_t outlen)
{
	char raw[crypto_pwhash_STRBYTES];
	if (outlen > 0)
		out[0] = '\0';
	if (password[0] == '\0' || !sodium_ready())
		return false;
	if (crypto_pwhash_str_alg(raw, password, strlen(password), crypto_pwhash_argon2id_OPSLIMIT_INTERACTIVE,
				  crypto_pwhash_argon2id_MEMLIMIT_INTERACTIVE, crypto_pwhash_ALG_ARGON2ID13) != 0)
		return false; /* the only failure is memory for the 64 MiB matrix */
	int n = snprintf(out, outlen, "{%s}%s", scheme_names[SCHEME_ARGON2ID], raw);
	sodium_memzero(raw, sizeof(raw));
	if (n < 0 || (size_t)n >= outlen) {
		if (outlen > 0)
			out[0] = '\0';
		return false;
	}
	return true;
}

static bool verify_crypt(const char *password, const char *body)
{
	struct crypt_data *cd = xcalloc(1, sizeof(*cd));
	/* crypt_rn rather than crypt_r: same function in libxcrypt, but the
	 * sanitizers intercept crypt_r, and with --as-needed their interceptor
	 * would satisfy the symbol, drop libcrypt from the link and crash at
	 * the first call in an ASan build. */
	const char *res = crypt_rn(password, body, cd, (int)sizeof(*cd));
	bool ok = false;
	/* libcrypt reports failure with NULL or a string starting with '*'. */
	if (res != NULL && res[0] != '*') {
		size_t n = strlen(body);
		ok = strlen(res) == n && str_ct_equal(res, body, n);
	}
	explicit_bzero(cd, sizeof(*cd));
	free(cd);
	return ok;
}

static bool verify_plain(const char *password, const char *body)
{
	unsigned char a[crypto_generichash_BYTES], b[crypto_generichash_BYTES];
	crypto_generichash(a, sizeof(a), (const unsigned char *)password, strlen(password), NULL, 0);
	crypto_generichash(b, sizeof(b), (const unsigned char *)body, strlen(body), NULL, 0);
	bool ok = str_ct_equal(a, b, sizeof(a));
	sodium_memzero(a, sizeof(a));
	sodium_memzero(b, sizeof(b));
	return ok;
}

bool auth_verify_password(const char *password, const char *stored)
{
	const char *body;
	if (password[0] == '\0' || !sodium_ready())
		return false;
	enum scheme sc = classify(stored, &body);
	switch (sc) {
	case SCHEME_ARGON2ID:
	case SCHEME_ARGON2I:
		return crypto_pwhash_str_verify(body, password, strlen(password)) == 0;
	case SCHEME_SHA512_CRYPT:
	case SCHEME_SHA256_CRYPT:
	case SCHEME_BLF_CRYPT:
		return verify_crypt(password, body);
	case SCHEME_PLAIN:
		return verify_plain(password, body);
	default:
		return false;
	}
}
