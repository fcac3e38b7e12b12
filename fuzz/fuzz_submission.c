/*
 * fuzz_submission.c - fuzz target for the pure parts of SMTP submission:
 * AUTH's argument and SASL PLAIN / LOGIN decoding (src/smtp/smtp_sasl.h),
 * and the Date: / Message-ID: header fixes (src/smtp/smtp_hdrfix.h).
 *
 * Input: either what a client sends during AUTH (the whole input, and each
 * of its lines, is an AUTH argument - with or without the verb - and a
 * base64 response), or a submitted message after the data machine; every
 * input is used both ways.
 *
 * Properties checked:
 *  - smtp_auth_parse agrees with a reference of "mech [SP response]": the
 *    mechanism is PLAIN or LOGIN, the initial response lies inside the
 *    argument (or is "" with length 0 for "="); never reads outside it.
 *  - smtp_sasl_plain and smtp_sasl_login_field (user, password and a tiny
 *    capacity) agree with a reference strict base64 decoder (RFC 4648
 *    alphabet, padding, zero pad bits, no blanks) and the header's rules:
 *    PLAIN needs its two NULs, a non-empty user name, no NUL in a field,
 *    the maxima, and an authorization identity that is empty or the user
 *    name.  On success: no NUL in user or password, lengths within
 *    SMTP_SASL_*_MAX, and the round trip: "\0user\0pass" (and
 *    "user\0user\0pass") encoded by libsodium decodes to the same fields;
 *    a LOGIN field re-encodes to exactly the response (strict base64).
 *  - valid encodings built from the input bytes (the input as a whole
 *    PLAIN blob, and split into authorization/user/password at points
 *    derived from it) decode exactly as the contract says.
 *  - smtp_sasl_is_cancel is true for "*" alone.
 *  - smtp_hdrfix, with ordinary and with over-long (truncated) values:
 *    the same output fed whole, one octet at a time and in pieces; at most
 *    SMTP_HDRFIX_HOLD octets held back, none once the header section is
 *    over; the input is a subsequence of the output, and the output is the
 *    input with one insertion of [CRLF] [Date: line] [Message-ID: line]
 *    [CRLF], whose fields are exactly those not seen; a message with both
 *    fields comes out unchanged; for an input of CRLF lines the output
 *    equals a reference written from the header's rules.
 *
 * Durability/concurrency: none (pure functions, one thread).
 */
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

#include "smtp_hdrfix.h"
#include "smtp_sasl.h"

/* Lines of the input tried as AUTH arguments and responses. */
#define MAX_LINES 64
/* The longest decoded PLAIN blob that can be accepted. */
#define PLAIN_RAW_MAX (2 * SMTP_SASL_USER_MAX + SMTP_SASL_PASS_MAX + 2)

#define ERR_BIT(e) (1u << (unsigned)(e))

static const char *const err_names[] = { "OK", "SYNTAX", "UNKNOWN_MECH", "BAD_BASE64", "MALFORMED", "AUTHZ" };

static const char *err_name(enum smtp_sasl_err e)
{
	return (unsigned)e < ARRAY_LEN(err_names) ? err_names[e] : "out of range";
}

static bool is_blank(char c)
{
	return c == ' ' || c == '\t';
}

/* ---- reference base64 (RFC 4648, strict) ----------------------------------- */

static int b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/* Decodes s[0..len) into out (room for len / 4 * 3 octets); false unless
 * it is canonical base64: groups of four, padding only at the very end,
 * the pad bits zero. */
static bool ref_b64_decode(const char *s, size_t len, unsigned char *out, size_t *n_r)
{
	size_t n = 0;
	*n_r = 0;
	if (len % 4 != 0)
		return false;
	for (size_t i = 0; i < len; i += 4) {
		int v[4];
		size_t pad = 0;
		for (size_t k = 0; k < 4; k++) {
			if (s[i + k] == '=') {
				v[k] = 0;
				pad++;
			} else {
				v[k] = b64_value((unsigned char)s[i + k]);
				if (pad > 0 || v[k] < 0)
					return false;
			}
		}
		if (pad > 2 || (pad > 0 && i + 4 != len))
			return false;
		if ((pad == 1 && (v[2] & 3) != 0) || (pad == 2 && (v[1] & 15) != 0))
			return false;
		uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
		out[n++] = (unsigned char)(w >> 16);
		if (pad < 2)
			out[n++] = (unsigned char)(w >> 8);
		if (pad < 1)
			out[n++] = (unsigned char)w;
	}
	*n_r = n;
	return true;
}

/* libsodium's encoding of raw[0..n), malloc'd and NUL-terminated. */
static char *b64_encode(const void *raw, size_t n, size_t *len_r)
{
	size_t cap = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL);
	char *s = xmalloc(cap);
	sodium_bin2base64(s, cap, raw, n, sodium_base64_VARIANT_ORIGINAL);
	*len_r = strlen(s);
	return s;
}

static bool ascii_equal_nocase(const unsigned char *a, const unsigned char *b, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char x = a[i], y = b[i];
		if (x >= 'A' && x <= 'Z')
			x = (unsigned char)(x - 'A' + 'a');
		if (y >= 'A' && y <= 'Z')
			y = (unsigned char)(y - 'A' + 'a');
		if (x != y)
			return false;
	}
	return true;
}

/* ---- SASL PLAIN ---------------------------------------------------------- */

struct plain_want {
	unsigned allowed;           /* ERR_BIT of each acceptable result */
	const unsigned char *user;  /* when OK is allowed */
	size_t user_len;
	const unsigned char *pass;
	size_t pass_len;
};

/* What the header's rules make of a decoded PLAIN blob raw[0..n). */
static void plain_rules(const unsigned char *raw, size_t n, struct plain_want *w)
{
	/* "too long" may come out of the decoder for a blob no field split can accept */
	w->allowed = n > PLAIN_RAW_MAX ? ERR_BIT(SMTP_SASL_BAD_BASE64) : 0;
	const unsigned char *nul1 = memchr(raw, '\0', n);
	const unsigned char *nul2 = nul1 != NULL ? memchr(nul1 + 1, '\0', n - (size_t)(nul1 + 1 - raw)) : NULL;
	if (nul2 == NULL) {
		w->allowed |= ERR_BIT(SMTP_SASL_MALFORMED);
		return;
	}
	size_t authz_len = (size_t)(nul1 - raw);
	w->user = nul1 + 1;
	w->user_len = (size_t)(nul2 - w->user);
	w->pass = nul2 + 1;
	w->pass_len = n - (size_t)(w->pass - raw);
	bool malformed = w->user_len == 0 || w->user_len > SMTP_SASL_USER_MAX ||
			 w->pass_len > SMTP_SASL_PASS_MAX || memchr(w->pass, '\0', w->pass_len) != NULL;
	bool same = authz_len == 0 || (authz_len == w->user_len && memcmp(raw, w->user, authz_len) == 0);
	bool same_nocase = authz_len == w->user_len && ascii_equal_nocase(raw, w->user, authz_len);
	/* when two rules are broken, either error will do */
	if (malformed)
		w->allowed |= ERR_BIT(SMTP_SASL_MALFORMED);
	if (!same)
		w->allowed |= ERR_BIT(SMTP_SASL_AUTHZ);
	if (!malformed && (same || same_nocase))
		w->allowed |= ERR_BIT(SMTP_SASL_OK);   /* a case-only difference: the implementation's choice */
}

static void check_creds_field(const char *what, const char *field, size_t cap, const unsigned char *want,
			      size_t want_len)
{
	size_t n = strnlen(field, cap);
	FUZZ_CHECK(n < cap, "%s not NUL-terminated", what);
	if (n != want_len || memcmp(field, want, n) != 0) {
		fuzz_dump("expected", want, want_len);
		fuzz_dump("got     ", field, n);
		fuzz_fail(__FILE__, __LINE__, "same field", "PLAIN %s differs (a NUL inside, or wrong split)", what);
	}
}

/* Round trip of accepted credentials: "\0user\0pass" and
 * "user\0user\0pass", encoded by libsodium, decode to the same fields. */
static void plain_round_trip(const struct smtp_sasl_creds *c)
{
	size_t ul = strlen(c->user), pl = strlen(c->pass);
	FUZZ_CHECK(ul > 0 && ul <= SMTP_SASL_USER_MAX, "accepted user name of %zu octets", ul);
	FUZZ_CHECK(pl <= SMTP_SASL_PASS_MAX, "accepted password of %zu octets", pl);
	unsigned char *raw = xmalloc(2 * ul + pl + 2);
	for (int authz = 0; authz < 2; authz++) {
		size_t n = 0;
		if (authz) {
			memcpy(raw, c->user, ul);
			n = ul;
		}
		raw[n++] = '\0';
		memcpy(raw + n, c->user, ul);
		n += ul;
		raw[n++] = '\0';
		memcpy(raw + n, c->pass, pl);
		n += pl;
		size_t blen;
		char *b64 = b64_encode(raw, n, &blen);
		struct smtp_sasl_creds *again = xmalloc(sizeof(*again));
		enum smtp_sasl_err e = smtp_sasl_plain(b64, blen, again);
		FUZZ_CHECK(e == SMTP_SASL_OK, "re-encoded credentials (%s authorization identity, %zu octets of "
			   "base64) refused: %s", authz ? "with" : "without", blen, err_name(e));
		check_creds_field("user (round trip)", again->user, sizeof(again->user), (const unsigned char *)c->user, ul);
		check_creds_field("password (round trip)", again->pass, sizeof(again->pass), (const unsigned char *)c->pass,
				  pl);
		sodium_memzero(again, sizeof(*again));
		free(again);
		free(b64);
	}
	free(raw);
}

/* smtp_sasl_plain on b64[0..len) against the reference. */
static void check_plain(const char *b64, size_t len)
{
	/* an exact-size copy: ASan sees a read past the response */
	char *copy = xmalloc(len > 0 ? len : 1);
	memcpy(copy, b64, len);
	unsigned char *raw = xmalloc(len / 4 * 3 + 1);
	size_t n = 0;
	struct plain_want w = { 0, NULL, 0, NULL, 0 };
	if (len > SMTP_SASL_B64_MAX)
		w.allowed = ERR_BIT(SMTP_SASL_BAD_BASE64) | ERR_BIT(SMTP_SASL_MALFORMED);
	else if (!ref_b64_decode(b64, len, raw, &n))
		w.allowed = ERR_BIT(SMTP_SASL_BAD_BASE64);
	else
		plain_rules(raw, n, &w);
	struct smtp_sasl_creds *c = xmalloc(sizeof(*c));
	enum smtp_sasl_err e = smtp_sasl_plain(copy, len, c);
	if (!(w.allowed & ERR_BIT(e))) {
		fuzz_dump("response", b64, len);
		fuzz_fail(__FILE__, __LINE__, "PLAIN result", "smtp_sasl_plain gives %s, the contract allows mask %#x "
			  "(bits: OK 1, BAD_BASE64 8, MALFORMED 16, AUTHZ 32)", err_name(e), w.allowed);
	}
	if (e == SMTP_SASL_OK) {
		check_creds_field("user", c->user, sizeof(c->user), w.user, w.user_len);
		check_creds_field("password", c->pass, sizeof(c->pass), w.pass, w.pass_len);
		plain_round_trip(c);
	}
	sodium_memzero(c, sizeof(*c));
	free(c);
	free(raw);
	free(copy);
}

/* ---- SASL LOGIN ---------------------------------------------------------- */

/* smtp_sasl_login_field on b64[0..len) with capacity cap against the
 * reference; on success the field re-encodes to the response itself. */
static void check_login(const char *b64, size_t len, size_t cap, bool nonempty)
{
	char *copy = xmalloc(len > 0 ? len : 1);
	memcpy(copy, b64, len);
	unsigned char *raw = xmalloc(len / 4 * 3 + 1);
	size_t n = 0;
	unsigned allowed;
	if (len > SMTP_SASL_B64_MAX)
		allowed = ERR_BIT(SMTP_SASL_BAD_BASE64) | ERR_BIT(SMTP_SASL_MALFORMED);
	else if (!ref_b64_decode(b64, len, raw, &n))
		allowed = ERR_BIT(SMTP_SASL_BAD_BASE64);
	else if (n >= cap)
		/* too long: MALFORMED, or the decoder's refusal beyond any field's maximum */
		allowed = ERR_BIT(SMTP_SASL_MALFORMED) | (n > SMTP_SASL_PASS_MAX ? ERR_BIT(SMTP_SASL_BAD_BASE64) : 0);
	else if (memchr(raw, '\0', n) != NULL || (nonempty && n == 0))
		allowed = ERR_BIT(SMTP_SASL_MALFORMED);
	else
		allowed = ERR_BIT(SMTP_SASL_OK);
	char *out = xmalloc(cap);   /* exact size: ASan sees an overflow */
	enum smtp_sasl_err e = smtp_sasl_login_field(copy, len, out, cap, nonempty);
	if (!(allowed & ERR_BIT(e))) {
		fuzz_dump("response", b64, len);
		fuzz_fail(__FILE__, __LINE__, "LOGIN result", "smtp_sasl_login_field (cap %zu, nonempty %d) gives %s, "
			  "the contract allows mask %#x (bits: OK 1, BAD_BASE64 8, MALFORMED 16)", cap, nonempty,
			  err_name(e), allowed);
	}
	if (e == SMTP_SASL_OK) {
		size_t got = strnlen(out, cap);
		FUZZ_CHECK(got < cap, "LOGIN field not NUL-terminated within cap %zu", cap);
		if (got != n || memcmp(out, raw, n) != 0) {
			fuzz_dump("expected", raw, n);
			fuzz_dump("got     ", out, got);
			fuzz_fail(__FILE__, __LINE__, "same field", "LOGIN field differs from the decoded response");
		}
		FUZZ_CHECK(!nonempty || got > 0, "empty LOGIN field accepted as non-empty");
		size_t elen;
		char *again = b64_encode(out, got, &elen);
		fuzz_check_same("LOGIN field re-encoded against the response (strict base64)", b64, len, again, elen);
		free(again);
	}
	sodium_memzero(out, cap);
	free(out);
	free(raw);
	free(copy);
}

/* A client's base64 response, as each step of PLAIN and LOGIN takes it. */
static void check_response(const char *b64, size_t len, struct fuzz_rng *rng)
{
	check_plain(b64, len);
	check_login(b64, len, SMTP_SASL_USER_MAX + 1, true);
	check_login(b64, len, SMTP_SASL_PASS_MAX + 1, false);
	check_login(b64, len, 1 + (size_t)(fuzz_rng_next(rng) % 48), fuzz_rng_next(rng) % 2 == 0);
	bool cancel = smtp_sasl_is_cancel(b64, len);
	FUZZ_CHECK(cancel == (len == 1 && b64[0] == '*'), "smtp_sasl_is_cancel gives %d for a line of %zu octets",
		   cancel, len);
}

/* Valid encodings of blobs built from the input: they exercise the PLAIN
 * and LOGIN rules past the base64 decoder. */
static void check_built_encodings(const unsigned char *in, size_t len, struct fuzz_rng *rng)
{
	size_t blen;
	char *b64 = b64_encode(in, len, &blen);   /* the input as the decoded blob */
	check_response(b64, blen, rng);
	free(b64);
	/* [authzid] NUL user NUL pass, user = in[0..k), pass = in[k..) */
	size_t k = len > 0 ? (size_t)(fuzz_rng_next(rng) % (len + 1)) : 0;
	unsigned char *raw = xmalloc(2 * len + 2);
	for (int form = 0; form < 3; form++) {
		size_t n = 0;
		if (form == 1) {                      /* authzid = the user name */
			memcpy(raw, in, k);
			n = k;
		} else if (form == 2 && k > 0) {      /* authzid = the user name, another case */
			for (size_t i = 0; i < k; i++) {
				unsigned char c = in[i];
				raw[n++] = (unsigned char)(c >= 'a' && c <= 'z' ? c - 'a' + 'A' :
							   c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
			}
		}
		raw[n++] = '\0';
		memcpy(raw + n, in, k);
		n += k;
		raw[n++] = '\0';
		memcpy(raw + n, in + k, len - k);
		n += len - k;
		b64 = b64_encode(raw, n, &blen);
		check_plain(b64, blen);
		free(b64);
	}
	free(raw);
}

/* ---- AUTH argument ------------------------------------------------------- */

/* Reference of "mech [1*blank response] *blank"; returns the acceptable
 * results and, for OK, the expected fields. */
static unsigned auth_rules(const char *a, size_t len, struct smtp_auth_arg *w)
{
	memset(w, 0, sizeof(*w));
	w->ir = "";
	size_t i = 0;
	while (i < len && !is_blank(a[i]))
		i++;
	if (i == 0)
		return ERR_BIT(SMTP_SASL_SYNTAX);   /* no mechanism */
	unsigned mech_err = 0;
	if (i == 5 && strncasecmp(a, "PLAIN", 5) == 0)
		w->mech = SMTP_SASL_PLAIN;
	else if (i == 5 && strncasecmp(a, "LOGIN", 5) == 0)
		w->mech = SMTP_SASL_LOGIN;
	else
		mech_err = ERR_BIT(SMTP_SASL_UNKNOWN_MECH);
	while (i < len && is_blank(a[i]))
		i++;
	size_t start = i;
	while (i < len && !is_blank(a[i]))
		i++;
	size_t end = i;
	while (i < len && is_blank(a[i]))
		i++;
	if (i != len)   /* a third word; either error will do when the mechanism is unknown too */
		return mech_err | ERR_BIT(SMTP_SASL_SYNTAX);
	if (mech_err != 0)
		return mech_err;
	if (end > start) {
		w->has_ir = true;
		if (!(end - start == 1 && a[start] == '=')) {
			w->ir = a + start;
			w->ir_len = end - start;
		}
	}
	return ERR_BIT(SMTP_SASL_OK);
}

static void check_auth_arg(const char *arg, size_t len, struct fuzz_rng *rng)
{
	char *copy = xmalloc(len > 0 ? len : 1);   /* exact size, not NUL-terminated */
	memcpy(copy, arg, len);
	struct smtp_auth_arg want, got;
	unsigned allowed = auth_rules(copy, len, &want);
	enum smtp_sasl_err e = smtp_auth_parse(copy, len, &got);
	if (!(allowed & ERR_BIT(e))) {
		fuzz_dump("argument", arg, len);
		fuzz_fail(__FILE__, __LINE__, "AUTH result", "smtp_auth_parse gives %s, the reference allows mask %#x "
			  "(bits: OK 1, SYNTAX 2, UNKNOWN_MECH 4)", err_name(e), allowed);
	}
	if (e == SMTP_SASL_OK) {
		FUZZ_CHECK(got.mech == want.mech, "mechanism %d, expected %d", (int)got.mech, (int)want.mech);
		FUZZ_CHECK(got.has_ir == want.has_ir, "has_ir %d, expected %d", got.has_ir, want.has_ir);
		FUZZ_CHECK(got.ir != NULL, "NULL initial response");
		if (want.ir_len == 0) {
			FUZZ_CHECK(got.ir_len == 0 && got.ir[0] == '\0', "initial response of %zu octets, expected none"
				   " (has_ir %d)", got.ir_len, want.has_ir);
		} else {
			FUZZ_CHECK(got.ir >= copy && got.ir_len <= len && got.ir <= copy + len - got.ir_len,
				   "initial response outside the argument");
			FUZZ_CHECK(got.ir == want.ir && got.ir_len == want.ir_len,
				   "initial response at %td (%zu octets), expected at %td (%zu)", got.ir - copy,
				   got.ir_len, want.ir - copy, want.ir_len);
			check_response(got.ir, got.ir_len, rng);
		}
	}
	free(copy);
}

/* One line as the session sees it in AUTH: after the verb (if the line
 * has it, as smtp_cmd_parse leaves the argument) and as a response. */
static void check_auth_line(const char *line, size_t len, struct fuzz_rng *rng)
{
	if (len >= 5 && strncasecmp(line, "AUTH", 4) == 0 && is_blank(line[4])) {
		size_t i = 5;
		while (i < len && is_blank(line[i]))
			i++;
		size_t end = len;
		while (end > i && is_blank(line[end - 1]))
			end--;
		check_auth_arg(line + i, end - i, rng);
	} else {
		check_auth_arg(line, len, rng);
	}
	check_response(line, len, rng);
}

static void check_sasl(const char *in, size_t len)
{
	struct fuzz_rng rng;
	fuzz_rng_init(&rng, in, len, 1);
	check_auth_line(in, len, &rng);
	size_t start = 0, lines = 0;
	while (start < len && lines < MAX_LINES) {
		const char *lf = memchr(in + start, '\n', len - start);
		size_t end = lf != NULL ? (size_t)(lf - in) : len;
		size_t n = end - start;
		if (n > 0 && in[start + n - 1] == '\r')
			n--;
		if (lf == NULL && start == 0)
			break;   /* one line: already done */
		check_auth_line(in + start, n, &rng);
		lines++;
		start = end + 1;
	}
	check_built_encodings((const unsigned char *)in, len, &rng);
}

/* ---- header fixes -------------------------------------------------------- */

struct fix_values {
	const char *date, *msgid;       /* given to smtp_hdrfix_init */
	struct buf date_line, id_line;  /* the fields as they must be added */
};

static bool is_name_char(unsigned char c)
{
	return c >= 33 && c <= 126 && c != ':';
}

/* Length of line[0..n)'s field name if it is a header field line (name,
 * optional blanks, colon within SMTP_HDRFIX_HOLD octets), else 0. */
static size_t field_name_len(const char *line, size_t n)
{
	size_t k = 0;
	while (k < n && is_name_char((unsigned char)line[k]))
		k++;
	size_t j = k;
	while (j < n && is_blank(line[j]))
		j++;
	if (k == 0 || j == n || line[j] != ':' || j > SMTP_HDRFIX_HOLD)
		return 0;
	return k;
}

/* The expected output for an input of CRLF lines (what the data machine
 * gives), from the header's rules; false if the input has a bare CR or LF. */
static bool hdrfix_reference(const char *in, size_t len, const struct fix_values *v, struct buf *want, bool *date,
			     bool *msgid)
{
	for (size_t i = 0; i < len; i++) {
		if (in[i] == '\r' && (i + 1 == len || in[i + 1] != '\n'))
			return false;
		if (in[i] == '\n' && (i == 0 || in[i - 1] != '\r'))
			return false;
	}
	*date = *msgid = false;
	bool any = false, crlf_before = false, crlf_after = false;
	size_t pos = 0, at;
	for (;;) {
		if (pos == len) {   /* all header (or empty), ending at a line end */
			at = len;
			break;
		}
		const char *crlf = memmem(in + pos, len - pos, "\r\n", 2);
		size_t end = crlf != NULL ? (size_t)(crlf - in) : len;
		const char *line = in + pos;
		size_t n = end - pos, name;
		if (n == 0) {       /* the empty line */
			at = pos;
			break;
		}
		if (any && is_blank(line[0])) {
			/* a folded continuation */
		} else if ((name = field_name_len(line, n)) > 0) {
			any = true;
			if (name == 4 && strncasecmp(line, "Date", 4) == 0)
				*date = true;
			if (name == 10 && strncasecmp(line, "Message-ID", 10) == 0)
				*msgid = true;
		} else {            /* the first body line: an empty line goes before it */
			at = pos;
			crlf_after = true;
			break;
		}
		if (crlf == NULL) { /* the last field lacked its CRLF */
			at = len;
			crlf_before = true;
			break;
		}
		pos = end + 2;
	}
	buf_append(want, in, at);
	if (!*date || !*msgid) {
		if (crlf_before)
			buf_append(want, "\r\n", 2);
		if (!*date)
			buf_append(want, v->date_line.data, v->date_line.len);
		if (!*msgid)
			buf_append(want, v->id_line.data, v->id_line.len);
		if (crlf_after)
			buf_append(want, "\r\n", 2);
	}
	buf_append(want, in + at, len - at);
	return true;
}

struct fix_run {
	struct buf out;
	bool date, msgid;   /* the filter's own record of the fields seen */
};

/* how: 0 whole, 1 one octet at a time, 2 pieces from rng. */
static void hdrfix_run(const char *in, size_t len, const struct fix_values *v, int how, struct fuzz_rng *rng,
		       struct fix_run *r)
{
	struct smtp_hdrfix *h = xmalloc(sizeof(*h));
	smtp_hdrfix_init(h, v->date, v->msgid);
	size_t pos = 0, empty_feeds = 0;
	bool done_seen = false;
	size_t extra_at_done = 0;
	while (pos < len) {
		size_t n = how == 0 ? len - pos : how == 1 ? 1 : fuzz_rng_chunk(rng, len - pos);
		if (n == 0 && ++empty_feeds > len + 16)
			n = 1;
		smtp_hdrfix_feed(h, in + pos, n, &r->out);
		pos += n;
		FUZZ_CHECK(h->hold_len <= SMTP_HDRFIX_HOLD, "%zu octets held", h->hold_len);
		FUZZ_CHECK(r->out.len + SMTP_HDRFIX_HOLD >= pos, "%zu octets out after %zu in: more than %d held back",
			   r->out.len, pos, SMTP_HDRFIX_HOLD);
		if (h->done) {
			/* nothing held, nothing more to insert: every octet passes at once */
			FUZZ_CHECK(r->out.len >= pos, "header section over but %zu octets out after %zu in",
				   r->out.len, pos);
			if (!done_seen)
				extra_at_done = r->out.len - pos;
			done_seen = true;
			FUZZ_CHECK(r->out.len - pos == extra_at_done, "%zu octets added after the header section ended",
				   r->out.len - pos - extra_at_done);
		}
	}
	smtp_hdrfix_finish(h, &r->out);
	if (done_seen)
		FUZZ_CHECK(r->out.len - len == extra_at_done, "smtp_hdrfix_finish added %zu octets after the header "
			   "section ended", r->out.len - len - extra_at_done);
	r->date = h->date;
	r->msgid = h->msgid;
	free(h);
}

/* The input must be a subsequence of the output: nothing changed or lost. */
static void check_subsequence(const char *in, size_t len, const struct buf *out)
{
	size_t i = 0;
	for (size_t j = 0; j < out->len && i < len; j++)
		if (out->data[j] == in[i])
			i++;
	if (i < len) {
		fuzz_dump("input ", in, len);
		fuzz_dump("output", out->data, out->len);
		fuzz_fail(__FILE__, __LINE__, "input is a subsequence of the output", "input octet %zu (of %zu) "
			  "changed or dropped", i, len);
	}
}

/* out is in[0..k) + ins + in[k..) for some k, where ins is [CRLF] [the Date:
 * line if the field was not seen] [the Message-ID: line if not seen]
 * [CRLF]: only the missing fields, once, and at most a line end or two. */
static void check_insertion(const char *in, size_t len, const struct fix_values *v, const struct fix_run *r)
{
	FUZZ_CHECK(r->out.len >= len, "output of %zu octets for %zu in", r->out.len, len);
	size_t extra = r->out.len - len;
	size_t fields = (r->date ? 0 : v->date_line.len) + (r->msgid ? 0 : v->id_line.len);
	const char *out = r->out.data;
	size_t pre = 0, suf = 0;
	while (pre < len && out[pre] == in[pre])
		pre++;
	while (suf < len && out[r->out.len - 1 - suf] == in[len - 1 - suf])
		suf++;
	for (int crlfs = 0; crlfs <= 2; crlfs++) {
		if (fields + 2 * (size_t)crlfs != extra)
			continue;
		/* every split of the line ends around the fields, at every k that keeps in[0..k) and in[k..) */
		for (int before = 0; before <= crlfs; before++) {
			struct buf ins = BUF_INIT;
			if (before >= 1)
				buf_append(&ins, "\r\n", 2);
			if (before >= 2)
				buf_append(&ins, "\r\n", 2);
			if (!r->date)
				buf_append(&ins, v->date_line.data, v->date_line.len);
			if (!r->msgid)
				buf_append(&ins, v->id_line.data, v->id_line.len);
			for (int a = before; a < crlfs; a++)
				buf_append(&ins, "\r\n", 2);
			bool found = false;
			size_t lo = len - suf;
			for (size_t k = lo; k <= pre && !found; k++)
				found = ins.len == 0 || memcmp(out + k, ins.data, ins.len) == 0;
			buf_free(&ins);
			if (found)
				return;
		}
	}
	fuzz_dump("input ", in, len);
	fuzz_dump("output", out, r->out.len);
	fuzz_fail(__FILE__, __LINE__, "one insertion of the missing fields", "%zu octets added (Date: %s, Message-ID: "
		  "%s seen): not the missing fields plus at most two CRLF at one place", extra,
		  r->date ? "" : "not", r->msgid ? "" : "not");
}

static void check_hdrfix_values(const char *in, size_t len, const struct fix_values *v, uint64_t salt)
{
	static const char *const names[] = { "header fix fed whole", "header fix fed an octet at a time",
					     "header fix fed in pieces" };
	struct fuzz_rng rng;
	fuzz_rng_init(&rng, in, len, salt);
	struct fix_run runs[3];
	for (int how = 0; how < 3; how++) {
		runs[how] = (struct fix_run){ BUF_INIT, false, false };
		hdrfix_run(in, len, v, how, &rng, &runs[how]);
	}
	for (int how = 1; how < 3; how++) {
		fuzz_check_same(names[how], runs[0].out.data, runs[0].out.len, runs[how].out.data, runs[how].out.len);
		FUZZ_CHECK(runs[how].date == runs[0].date && runs[how].msgid == runs[0].msgid,
			   "%s: fields seen %d/%d, fed whole %d/%d", names[how], runs[how].date, runs[how].msgid,
			   runs[0].date, runs[0].msgid);
	}
	const struct fix_run *r = &runs[0];
	check_subsequence(in, len, &r->out);
	check_insertion(in, len, v, r);
	if (r->date && r->msgid && (r->out.len != len || (len > 0 && memcmp(r->out.data, in, len) != 0))) {
		fuzz_check_same("a message with both Date: and Message-ID: must pass unchanged", in, len,
				r->out.data, r->out.len);
	}
	struct buf want = BUF_INIT;
	bool date, msgid;
	if (hdrfix_reference(in, len, v, &want, &date, &msgid)) {
		FUZZ_CHECK(date == r->date && msgid == r->msgid, "fields seen: Date %d Message-ID %d, reference %d %d",
			   r->date, r->msgid, date, msgid);
		fuzz_check_same("header fix against the reference (CRLF lines)", want.data, want.len, r->out.data,
				r->out.len);
	}
	buf_free(&want);
	for (int how = 0; how < 3; how++)
		buf_free(&runs[how].out);
}

static void check_hdrfix(const char *in, size_t len)
{
	struct fix_values v = { "Sun, 29 Nov 2026 04:00:00 +0000", "<S2fQx7.1@mx.example.net>", BUF_INIT, BUF_INIT };
	buf_printf(&v.date_line, "Date: %s\r\n", v.date);
	buf_printf(&v.id_line, "Message-ID: %s\r\n", v.msgid);
	check_hdrfix_values(in, len, &v, 2);
	buf_free(&v.date_line);
	buf_free(&v.id_line);

	/* over-long values: copied truncated to their fields */
	char date[100], msgid[600];
	memset(date, 'd', sizeof(date) - 1);
	date[sizeof(date) - 1] = '\0';
	msgid[0] = '<';
	memset(msgid + 1, 'm', sizeof(msgid) - 3);
	msgid[sizeof(msgid) - 2] = '>';
	msgid[sizeof(msgid) - 1] = '\0';
	struct fix_values t = { date, msgid, BUF_INIT, BUF_INIT };
	size_t date_max = sizeof(((struct smtp_hdrfix *)NULL)->date_value) - 1;
	size_t msgid_max = sizeof(((struct smtp_hdrfix *)NULL)->msgid_value) - 1;
	buf_printf(&t.date_line, "Date: %.*s\r\n", (int)date_max, date);
	buf_printf(&t.id_line, "Message-ID: %.*s\r\n", (int)msgid_max, msgid);
	check_hdrfix_values(in, len, &t, 3);
	buf_free(&t.date_line);
	buf_free(&t.id_line);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *in = (const char *)data;
	check_sasl(in, size);
	check_hdrfix(in, size);
	return 0;
}
