/*
 * smtp_sasl.h - private to src/smtp: the pure parts of submission's AUTH
 * (RFC 4954) and of its sender check.
 *
 * Owns: the AUTH command's argument (mechanism and optional initial
 * response), SASL PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login)
 * response decoding, and the sender ownership decision of
 * submission.sender_login_match.
 *
 * Invariants:
 *  - No I/O, no globals, no allocation: results land in caller-owned,
 *    fixed-size structures, so a hostile client cannot make any of this
 *    allocate.  Thread-safe.
 *  - Decoded credentials never contain a NUL; a user name is never empty.
 *    Callers wipe struct smtp_sasl_creds (sodium_memzero) once used.
 *  - Base64 is strict (RFC 4648 alphabet with padding, no blanks); "=" as
 *    a whole response is the empty response (RFC 4954 4).
 */
#ifndef STRATA_SMTP_SASL_H
#define STRATA_SMTP_SASL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"
#include "store.h"

#define SMTP_SASL_USER_MAX 319     /* octets of a decoded user name (an address) */
#define SMTP_SASL_PASS_MAX 1023    /* octets of a decoded password */
/* Longest base64 response accepted: a PLAIN blob of the two maxima plus
 * an authorization identity as long as the user name. */
#define SMTP_SASL_B64_MAX (4 * ((2 * SMTP_SASL_USER_MAX + SMTP_SASL_PASS_MAX + 2 + 2) / 3))

enum smtp_sasl_mech { SMTP_SASL_PLAIN = 0, SMTP_SASL_LOGIN };

enum smtp_sasl_err {
	SMTP_SASL_OK = 0,
	SMTP_SASL_SYNTAX,        /* AUTH without a mechanism, or junk after the response: 501 5.5.4 */
	SMTP_SASL_UNKNOWN_MECH,  /* not PLAIN or LOGIN: 504 5.5.4 */
	SMTP_SASL_BAD_BASE64,    /* 501 5.5.2 */
	SMTP_SASL_MALFORMED,     /* PLAIN without its two NULs, a NUL in a field, empty user, too long: 501 5.5.2 */
	SMTP_SASL_AUTHZ,         /* PLAIN authorization identity other than the user: 535 5.7.8 */
};

struct smtp_auth_arg {
	enum smtp_sasl_mech mech;
	bool has_ir;             /* an initial response was given ("=" counts: empty) */
	const char *ir;          /* points into the argument; "" for "=" */
	size_t ir_len;
};
/* Parses AUTH's argument ("PLAIN", "LOGIN dXNlcg==", "PLAIN ="). */
enum smtp_sasl_err smtp_auth_parse(const char *arg, size_t len, struct smtp_auth_arg *out);

struct smtp_sasl_creds {
	char user[SMTP_SASL_USER_MAX + 1];
	char pass[SMTP_SASL_PASS_MAX + 1];
};
/* Decodes one base64 field of a LOGIN exchange (user name or password)
 * into out (cap octets incl. the NUL); rejects NULs and, when
 * `nonempty`, an empty value. */
enum smtp_sasl_err smtp_sasl_login_field(const char *b64, size_t len, char *out, size_t cap, bool nonempty);
/* Decodes a PLAIN response ([authzid] NUL authcid NUL passwd) into c. */
enum smtp_sasl_err smtp_sasl_plain(const char *b64, size_t len, struct smtp_sasl_creds *c);
/* True if the line is "*": the client cancels the exchange (501). */
bool smtp_sasl_is_cancel(const char *line, size_t len);

/*
 * Sender ownership (submission.sender_login_match).  `from` is the
 * lower-cased MAIL FROM address ("" for <>), `account` the authenticated
 * account's id and `address` its own address; `st` and `res` are the
 * store's resolution of `from` (store_resolve_rcpt), unused when `from`
 * is the account's own address.  A sender is owned when it is the
 * account's address, or resolves (alias, recipient delimiter, catch-all)
 * to a set of accounts that contains it.  The null sender is never owned.
 */
enum smtp_sender_verdict { SMTP_SENDER_OWNED = 0, SMTP_SENDER_NOT_OWNED, SMTP_SENDER_TEMPFAIL };
/* True when smtp_sender_check needs the store's resolution of `from`
 * (it is neither <> nor the account's own address). */
bool smtp_sender_needs_lookup(const char *from, const char *address);
enum smtp_sender_verdict smtp_sender_check(const char *from, int64_t account, const char *address,
					   enum status st, const struct rcpt_resolution *res);

#endif
