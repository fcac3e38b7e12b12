/*
 * tls_context.c - the server's OpenSSL context and its self-signed
 * certificate.
 *
 * Owns: building the one SSL_CTX that every network thread shares, and, on
 * the first start of an installation that configured no certificate, making
 * a self-signed one so that STARTTLS works out of the box (opportunistic TLS
 * between MTAs does not verify certificates; a real one can be configured
 * later with tls.cert_file / tls.key_file).
 *
 * Policy: TLS 1.2 minimum, the system's default cipher list (Debian's
 * OpenSSL configuration), server cipher preference, no renegotiation, the
 * server-side session cache, automatic DH parameters for DHE suites.
 *
 * Generation: only when BOTH files are at their derived defaults
 * (<state_dir>/tls/cert.pem and key.pem) and BOTH are absent.  A key without
 * a certificate (or the reverse) is never "repaired", because it may be the
 * administrator's: that is an error that says what to do.  The key is an EC
 * P-256 key; the certificate is X.509v3, CN and subjectAltName DNS = the
 * hostname, 825 days, a random 128-bit serial, signed with SHA-256.  Both
 * files are written with fs_write_file_durable (temp file, fsync, rename,
 * directory fsync): the key 0600 first, then the certificate 0644; if the
 * certificate cannot be written the new key is removed again.
 *
 * Threads: tls_context_new runs once at start-up on the main thread (as root
 * when the daemon starts as root, so that a key readable only by root can be
 * loaded).  The returned SSL_CTX is then only used to create SSL objects,
 * which OpenSSL makes thread-safe.  tls_describe is thread-safe.
 */
#include "tls.h"

#include <errno.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TLS_CERT_DAYS 825
#define TLS_SERIAL_BYTES 16
#define TLS_CN_MAX 64 /* ub-common-name, RFC 5280 */

/* The root cause of the failure, as text: the OLDEST error in the thread's
 * queue (e.g. "No such file or directory", "no start line", "key values
 * mismatch"; later entries are the callers' generic "system lib", "PEM
 * lib").  Clears the queue and returns the packed error (0: none queued,
 * text "unknown error"). */
static unsigned long tls_ssl_error(char *out, size_t outlen)
{
	unsigned long first = ERR_get_error();
	while (ERR_get_error() != 0)
		;
	if (first == 0) {
		snprintf(out, outlen, "unknown error");
		return 0;
	}
	const char *reason = ERR_reason_error_string(first);
	if (ERR_SYSTEM_ERROR(first))
		snprintf(out, outlen, "%s", strerror(ERR_GET_REASON(first)));
	else if (reason != NULL)
		snprintf(out, outlen, "%s", reason);
	else
		ERR_error_string_n(first, out, outlen);
	return first;
}

static char *tls_error(const char *what)
{
	char reason[256];
	tls_ssl_error(reason, sizeof(reason));
	return xasprintf("%s: %s", what, reason);
}

/* True if `path` is the derived default "<state_dir>/tls/<name>". */
static bool tls_is_default_path(const struct settings *s, const char *path, const char *name)
{
	char *def = xasprintf("%s/tls/%s", s->state_dir, name);
	bool same = strcmp(def, path) == 0;
	free(def);
	return same;
}

/* ---- self-signed certificate ------------------------------------------ */

static bool tls_hostname_ok(const char *h)
{
	size_t n = strlen(h);
	if (n == 0 || n > 253)
		return false;
	for (const char *p = h; *p; p++) {
		char c = *p;
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
			  c == '-' || c == '.';
		if (!ok)
			return false;
	}
	return true;
}

static bool tls_set_serial(X509 *x)
{
	unsigned char rnd[TLS_SERIAL_BYTES];
	random_bytes(rnd, sizeof(rnd));
	rnd[0] |= 0x01; /* never zero: RFC 5280 wants a positive serial */
	BIGNUM *bn = BN_bin2bn(rnd, sizeof(rnd), NULL);
	bool ok = bn != NULL && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL;
	BN_free(bn);
	return ok;
}

static bool tls_set_name(X509 *x, const char *hostname)
{
	X509_NAME *name = X509_get_subject_name(x);
	/* A CN longer than 64 bytes is invalid; the SAN alone names the host then. */
	const char *field = strlen(hostname) <= TLS_CN_MAX ? "CN" : "O";
	const char *value = strlen(hostname) <= TLS_CN_MAX ? hostname : "Strata";
	if (!X509_NAME_add_entry_by_txt(name, field, MBSTRING_UTF8, (const unsigned char *)value, -1,
					-1, 0))
		return false;
	return X509_set_issuer_name(x, name) == 1;
}

static bool tls_add_ext(X509 *x, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509V3_set_ctx_nodb(&ctx);
	X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
	X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
	if (ext == NULL)
		return false;
	bool ok = X509_add_ext(x, ext, -1) == 1;
	X509_EXTENSION_free(ext);
	return ok;
}

/* subjectAltName built directly (not from a config string, so no character
 * of the hostname can be read as syntax). */
static bool tls_add_san(X509 *x, const char *hostname)
{
	GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
	GENERAL_NAME *gen = GENERAL_NAME_new();
	ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
	bool ok = gens != NULL && gen != NULL && ia5 != NULL &&
		  ASN1_STRING_set(ia5, hostname, (int)strlen(hostname)) == 1;
	if (ok) {
		GENERAL_NAME_set0_value(gen, GEN_DNS, ia5);
		ia5 = NULL;
		ok = sk_GENERAL_NAME_push(gens, gen) > 0;
		if (ok)
			gen = NULL;
	}
	if (ok)
		ok = X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, X509V3_ADD_DEFAULT) == 1;
	ASN1_IA5STRING_free(ia5);
	GENERAL_NAME_free(gen);
	GENERAL_NAMES_free(gens);
	return ok;
}

static X509 *tls_make_cert(EVP_PKEY *pkey, const char *hostname)
{
	X509 *x = X509_new();
	bool ok = x != NULL && X509_set_version(x, X509_VERSION_3) == 1 && tls_set_serial(x) &&
		  X509_gmtime_adj(X509_getm_notBefore(x), 0) != NULL &&
		  X509_time_adj_ex(X509_getm_notAfter(x), TLS_CERT_DAYS, 0, NULL) != NULL &&
		  X509_set_pubkey(x, pkey) == 1 && tls_set_name(x, hostname) &&
		  tls_add_ext(x, NID_basic_constraints, "critical,CA:FALSE") &&
		  tls_add_ext(x, NID_key_usage, "critical,digitalSignature,keyAgreement") &&
		  tls_add_ext(x, NID_ext_key_usage, "serverAuth") &&
		  tls_add_ext(x, NID_subject_key_identifier, "hash") && tls_add_san(x, hostname) &&
		  X509_sign(x, pkey, EVP_sha256()) > 0;
	if (!ok) {
		X509_free(x);
		return NULL;
	}
	return x;
}

/* Encodes the key (when pkey is given) or the certificate as PEM in memory,
 * then writes it durably to `path` with `mode`.  The memory is wiped before
 * it is freed (it may hold the key).  Returns an error text or NULL. */
static char *tls_write_pem(const char *path, mode_t mode, EVP_PKEY *pkey, X509 *cert)
{
	BIO *bio = BIO_new(BIO_s_mem());
	if (bio == NULL)
		return tls_error("cannot allocate a memory BIO");
	bool ok = pkey ? PEM_write_bio_PrivateKey(bio, pkey, NULL, NULL, 0, NULL, NULL) == 1
		       : PEM_write_bio_X509(bio, cert) == 1;
	if (!ok) {
		BIO_free(bio);
		return tls_error(pkey ? "cannot encode the private key" : "cannot encode the certificate");
	}
	char *data = NULL;
	long len = BIO_get_mem_data(bio, &data);
	char *err = NULL;
	if (len <= 0 || !fs_write_file_durable(path, data, (size_t)len, mode))
		err = xasprintf("cannot write %s: %s", path, len <= 0 ? "empty PEM" : strerror(errno));
	if (len > 0)
		OPENSSL_cleanse(data, (size_t)len);
	BIO_free(bio);
	return err;
}

static char *tls_generate(const struct settings *s)
{
	if (!tls_hostname_ok(s->hostname))
		return xasprintf("hostname '%s' is not a DNS name; set hostname (or tls.cert_file and "
				 "tls.key_file) before the self-signed certificate can be made", s->hostname);
	char dir[4096];
	fs_dirname(s->tls_cert_file, dir, sizeof(dir));
	struct stat st;
	if (lstat(dir, &st) == 0 && !S_ISDIR(st.st_mode))
		return xasprintf("%s is not a directory (a symbolic link is refused here)", dir);
	if (!fs_mkdir_p(dir, 0750))
		return xasprintf("cannot create %s: %s", dir, strerror(errno));

	EVP_PKEY *pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	if (pkey == NULL)
		return tls_error("cannot generate an EC P-256 key");
	X509 *cert = tls_make_cert(pkey, s->hostname);
	if (cert == NULL) {
		EVP_PKEY_free(pkey);
		return tls_error("cannot build the self-signed certificate");
	}
	char *err = tls_write_pem(s->tls_key_file, 0600, pkey, NULL);
	if (err == NULL) {
		err = tls_write_pem(s->tls_cert_file, 0644, NULL, cert);
		if (err != NULL)
			unlink(s->tls_key_file);
	}
	X509_free(cert);
	EVP_PKEY_free(pkey);
	if (err == NULL)
		log_info("made a self-signed certificate for %s: %s (key %s)", s->hostname,
			 s->tls_cert_file, s->tls_key_file);
	return err;
}

/* Generates the pair when the configuration asks for the defaults and none
 * exists yet.  Returns an error text or NULL. */
static char *tls_ensure_files(const struct settings *s)
{
	if (!tls_is_default_path(s, s->tls_cert_file, "cert.pem") ||
	    !tls_is_default_path(s, s->tls_key_file, "key.pem"))
		return NULL; /* configured files: loading reports what is wrong */
	bool have_cert = access(s->tls_cert_file, F_OK) == 0;
	bool have_key = access(s->tls_key_file, F_OK) == 0;
	if (have_cert && have_key)
		return NULL;
	if (have_cert != have_key)
		return xasprintf("%s exists but %s does not; remove the other one too to have a new "
				 "self-signed certificate made, or set tls.cert_file and tls.key_file",
				 have_cert ? s->tls_cert_file : s->tls_key_file,
				 have_cert ? s->tls_key_file : s->tls_cert_file);
	return tls_generate(s);
}

/* ---- the context -------------------------------------------------------- */

static char *tls_configure(SSL_CTX *ctx, const struct settings *s)
{
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1)
		return tls_error("cannot set TLS 1.2 as the minimum version");
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
	static const unsigned char sid_ctx[] = "strata-smtp";
	if (SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1) != 1)
		return tls_error("cannot set the session id context");
	SSL_CTX_set_dh_auto(ctx, 1);

	if (SSL_CTX_use_certificate_chain_file(ctx, s->tls_cert_file) != 1) {
		char *what = xasprintf("cannot load the certificate %s (tls.cert_file)", s->tls_cert_file);
		char *err = tls_error(what);
		free(what);
		return err;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, s->tls_key_file, SSL_FILETYPE_PEM) != 1) {
		/* OpenSSL checks the key against the certificate while loading it. */
		char reason[256];
		unsigned long e = tls_ssl_error(reason, sizeof(reason));
		if (ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH)
			return xasprintf("the private key %s (tls.key_file) does not match the "
					 "certificate %s (tls.cert_file): %s", s->tls_key_file,
					 s->tls_cert_file, reason);
		return xasprintf("cannot load the private key %s (tls.key_file): %s", s->tls_key_file,
				 reason);
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		char *what = xasprintf("the private key %s (tls.key_file) does not match the "
				       "certificate %s (tls.cert_file)", s->tls_key_file, s->tls_cert_file);
		char *err = tls_error(what);
		free(what);
		return err;
	}
	return NULL;
}

SSL_CTX *tls_context_new(const struct settings *s, char **error_r)
{
	ERR_clear_error();
	char *err = tls_ensure_files(s);
	if (err != NULL) {
		*error_r = err;
		return NULL;
	}
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (ctx == NULL) {
		*error_r = tls_error("cannot create the TLS context");
		return NULL;
	}
	err = tls_configure(ctx, s);
	if (err != NULL) {
		SSL_CTX_free(ctx);
		*error_r = err;
		return NULL;
	}
	return ctx;
}

void tls_describe(SSL *ssl, char *out, size_t outlen)
{
	if (outlen == 0)
		return;
	const SSL_CIPHER *c = ssl ? SSL_get_current_cipher(ssl) : NULL;
	if (c == NULL) {
		snprintf(out, outlen, "none");
		return;
	}
	snprintf(out, outlen, "%s:%s:%d", SSL_get_version(ssl), SSL_CIPHER_get_name(c),
		 SSL_CIPHER_get_bits(c, NULL));
}
