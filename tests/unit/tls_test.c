/*
 * tls_test.c - the server TLS context and the self-signed certificate
 * (src/tls).
 *
 * Each test works in its own temporary state_dir.  The certificate made on
 * first start is checked field by field (key type, version, CN, SAN,
 * validity, serial, signature digest, file modes), the error cases by the
 * message they produce, and tls_describe through a real in-memory TLS 1.3
 * handshake against the context.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "tls.h"

struct fixture {
	char dir[256];
	char cert[320], key[320];
};

static int setup(void **state)
{
	struct fixture *f = xcalloc(1, sizeof(*f));
	snprintf(f->dir, sizeof(f->dir), "%s/strata-tls-test-XXXXXX",
		 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (mkdtemp(f->dir) == NULL)
		return -1;
	snprintf(f->cert, sizeof(f->cert), "%s/tls/cert.pem", f->dir);
	snprintf(f->key, sizeof(f->key), "%s/tls/key.pem", f->dir);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	char *cmd = xasprintf("rm -rf '%s'", f->dir);
	int rc = system(cmd);
	free(cmd);
	free(f);
	return rc == 0 ? 0 : -1;
}

static struct settings *settings_for(const struct fixture *f, const char *hostname,
				     const char *cert, const char *key)
{
	char *over[4];
	size_t n = 0;
	over[n++] = xasprintf("state_dir=%s", f->dir);
	over[n++] = xasprintf("hostname=%s", hostname);
	if (cert)
		over[n++] = xasprintf("tls.cert_file=%s", cert);
	if (key)
		over[n++] = xasprintf("tls.key_file=%s", key);
	char *err = NULL;
	char *empty = xasprintf("%s/empty.conf", f->dir);
	FILE *fp = fopen(empty, "w");
	assert_non_null(fp);
	fclose(fp);
	struct settings *s = config_load(empty, over, n, &err);
	if (s == NULL)
		fail_msg("config_load: %s", err);
	for (size_t i = 0; i < n; i++)
		free(over[i]);
	free(empty);
	return s;
}

static X509 *read_cert(const char *path)
{
	FILE *fp = fopen(path, "r");
	assert_non_null(fp);
	X509 *x = PEM_read_X509(fp, NULL, NULL, NULL);
	fclose(fp);
	assert_non_null(x);
	return x;
}

static mode_t file_mode(const char *path)
{
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	return st.st_mode & 07777;
}

static void assert_error_contains(const char *err, const char *want, const char *label)
{
	if (err == NULL || strstr(err, want) == NULL)
		fail_msg("%s: error should contain '%s'\n  got: %s", label, want, err ? err : "(none)");
}

/* ---- generation ------------------------------------------------------------ */

static void test_generates_self_signed(void **state)
{
	struct fixture *f = *state;
	struct settings *s = settings_for(f, "mx.example.net", NULL, NULL);
	char *err = NULL;
	SSL_CTX *ctx = tls_context_new(s, &err);
	if (ctx == NULL)
		fail_msg("tls_context_new: %s", err);

	if (file_mode(f->key) != 0600)
		fail_msg("key mode: want 0600, got %04o", (unsigned)file_mode(f->key));
	if (file_mode(f->cert) != 0644)
		fail_msg("cert mode: want 0644, got %04o", (unsigned)file_mode(f->cert));

	X509 *x = read_cert(f->cert);
	assert_int_equal(X509_get_version(x), X509_VERSION_3);

	char cn[256] = "";
	X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof(cn));
	assert_string_equal(cn, "mx.example.net");
	assert_int_equal(X509_NAME_cmp(X509_get_subject_name(x), X509_get_issuer_name(x)), 0);

	GENERAL_NAMES *san = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	assert_non_null(san);
	assert_int_equal(sk_GENERAL_NAME_num(san), 1);
	GENERAL_NAME *g = sk_GENERAL_NAME_value(san, 0);
	assert_int_equal(g->type, GEN_DNS);
	assert_string_equal((const char *)ASN1_STRING_get0_data(g->d.dNSName), "mx.example.net");
	GENERAL_NAMES_free(san);

	/* 825 days (allow the seconds that passed during the test) */
	int days = 0, secs = 0;
	assert_int_equal(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(x), X509_get0_notAfter(x)), 1);
	if (days != 825 || secs != 0)
		fail_msg("validity: want 825 days 0 s, got %d days %d s", days, secs);

	/* random 128-bit serial: positive, 16 bytes */
	BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
	assert_non_null(bn);
	assert_false(BN_is_negative(bn));
	if (BN_num_bytes(bn) != 16)
		fail_msg("serial: want 16 bytes, got %d", BN_num_bytes(bn));
	BN_free(bn);

	assert_int_equal(X509_get_signature_nid(x), NID_ecdsa_with_SHA256);
	EVP_PKEY *pub = X509_get0_pubkey(x);
	assert_true(EVP_PKEY_is_a(pub, "EC"));
	char group[64] = "";
	assert_int_equal(EVP_PKEY_get_utf8_string_param(pub, "group", group, sizeof(group), NULL), 1);
	assert_string_equal(group, "prime256v1");
	assert_int_equal(X509_verify(x, pub), 1);
	assert_int_equal(X509_check_host(x, "mx.example.net", 0, 0, NULL), 1);

	/* A second start loads the same pair instead of making a new one. */
	unsigned char fp1[EVP_MAX_MD_SIZE], fp2[EVP_MAX_MD_SIZE];
	unsigned n1, n2;
	X509_digest(x, EVP_sha256(), fp1, &n1);
	SSL_CTX *ctx2 = tls_context_new(s, &err);
	if (ctx2 == NULL)
		fail_msg("second tls_context_new: %s", err);
	X509 *x2 = read_cert(f->cert);
	X509_digest(x2, EVP_sha256(), fp2, &n2);
	assert_int_equal(n1, n2);
	assert_memory_equal(fp1, fp2, n1);

	X509_free(x);
	X509_free(x2);
	SSL_CTX_free(ctx);
	SSL_CTX_free(ctx2);
	config_free(&s);
}

/* ---- errors ------------------------------------------------------------------ */

struct error_case {
	const char *label;
	const char *prepare;    /* shell fragment run in the state dir first, or NULL */
	bool custom_paths;      /* tls.* set explicitly to <dir>/own/{cert,key}.pem */
	const char *hostname;
	const char *want;       /* substring of the error */
};

static void test_errors(void **state)
{
	struct fixture *f = *state;
	static const struct error_case cases[] = {
		{ "key without certificate", "mkdir -p tls && echo x > tls/key.pem", false, "mx.example.net",
		  "tls/key.pem exists but" },
		{ "certificate without key", "mkdir -p tls && echo x > tls/cert.pem", false, "mx.example.net",
		  "tls/cert.pem exists but" },
		{ "configured files missing", NULL, true, "mx.example.net", "own/cert.pem (tls.cert_file): " },
		{ "missing file reason", NULL, true, "mx.example.net", "No such file or directory" },
		{ "garbage certificate", "mkdir -p own && echo garbage > own/cert.pem && echo x > own/key.pem",
		  true, "mx.example.net", "cannot load the certificate" },
		{ "hostname not a DNS name", NULL, false, "bad host,name", "is not a DNS name" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct error_case *c = &cases[i];
		char *clean = xasprintf("cd '%s' && rm -rf tls own", f->dir);
		assert_int_equal(system(clean), 0);
		free(clean);
		if (c->prepare) {
			char *cmd = xasprintf("cd '%s' && %s", f->dir, c->prepare);
			assert_int_equal(system(cmd), 0);
			free(cmd);
		}
		char *cert = c->custom_paths ? xasprintf("%s/own/cert.pem", f->dir) : NULL;
		char *key = c->custom_paths ? xasprintf("%s/own/key.pem", f->dir) : NULL;
		struct settings *s = settings_for(f, c->hostname, cert, key);
		char *err = NULL;
		SSL_CTX *ctx = tls_context_new(s, &err);
		if (ctx != NULL)
			fail_msg("%s: tls_context_new succeeded, expected an error", c->label);
		assert_error_contains(err, c->want, c->label);
		/* nothing generated for configured paths */
		if (c->custom_paths)
			assert_int_not_equal(access(f->cert, F_OK), 0);
		free(err);
		free(cert);
		free(key);
		config_free(&s);
	}
}

/* A key that does not belong to the certificate. */
static void test_key_mismatch(void **state)
{
	struct fixture *f = *state;
	struct settings *s = settings_for(f, "a.example", NULL, NULL);
	char *err = NULL;
	SSL_CTX *ctx = tls_context_new(s, &err);
	if (ctx == NULL)
		fail_msg("tls_context_new: %s", err);
	SSL_CTX_free(ctx);
	/* Keep the key, make a new pair elsewhere and use its certificate. */
	char *other = xasprintf("%s/other", f->dir);
	char *cmd = xasprintf("mkdir -p '%s'", other);
	assert_int_equal(system(cmd), 0);
	free(cmd);
	struct fixture g = *f;
	snprintf(g.dir, sizeof(g.dir), "%s", other);
	struct settings *s2 = settings_for(&g, "b.example", NULL, NULL);
	ctx = tls_context_new(s2, &err);
	if (ctx == NULL)
		fail_msg("tls_context_new (other): %s", err);
	SSL_CTX_free(ctx);
	char *cert = xasprintf("%s/tls/cert.pem", other);
	struct settings *mixed = settings_for(f, "a.example", cert, f->key);
	ctx = tls_context_new(mixed, &err);
	assert_null(ctx);
	assert_error_contains(err, "does not match the certificate", "mismatch");
	assert_error_contains(err, "key values mismatch", "mismatch reason");
	free(err);
	free(cert);
	free(other);
	config_free(&s);
	config_free(&s2);
	config_free(&mixed);
}

/* ---- tls_describe through a real handshake ------------------------------------ */

static bool pump(SSL *client, SSL *server)
{
	for (int i = 0; i < 100; i++) {
		int rc = SSL_do_handshake(client);
		int rs = SSL_do_handshake(server);
		if (rc == 1 && rs == 1)
			return true;
		if ((rc != 1 && SSL_get_error(client, rc) != SSL_ERROR_WANT_READ) ||
		    (rs != 1 && SSL_get_error(server, rs) != SSL_ERROR_WANT_READ))
			return false;
	}
	return false;
}

static void test_describe(void **state)
{
	struct fixture *f = *state;
	struct settings *s = settings_for(f, "mx.example.net", NULL, NULL);
	char *err = NULL;
	SSL_CTX *sctx = tls_context_new(s, &err);
	if (sctx == NULL)
		fail_msg("tls_context_new: %s", err);

	struct { const char *label; int max_version; const char *want_prefix; } cases[] = {
		{ "TLS 1.3", TLS1_3_VERSION, "TLSv1.3:TLS_AES_256_GCM_SHA384:256" },
		{ "TLS 1.2", TLS1_2_VERSION, "TLSv1.2:ECDHE-ECDSA-" },
	};
	for (size_t i = 0; i < 2; i++) {
		SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
		SSL_CTX_set_max_proto_version(cctx, cases[i].max_version);
		SSL *client = SSL_new(cctx), *server = SSL_new(sctx);
		BIO *b1, *b2;
		assert_int_equal(BIO_new_bio_pair(&b1, 0, &b2, 0), 1);
		SSL_set_bio(client, b1, b1);
		SSL_set_bio(server, b2, b2);
		SSL_set_connect_state(client);
		SSL_set_accept_state(server);
		if (!pump(client, server))
			fail_msg("%s: handshake failed", cases[i].label);
		char out[128];
		tls_describe(server, out, sizeof(out));
		if (strncmp(out, cases[i].want_prefix, strlen(cases[i].want_prefix)) != 0)
			fail_msg("%s: want '%s...', got '%s'", cases[i].label, cases[i].want_prefix, out);
		SSL_free(client);
		SSL_free(server);
		SSL_CTX_free(cctx);
	}

	/* TLS 1.1 is refused */
	SSL_CTX *old = SSL_CTX_new(TLS_client_method());
	SSL_CTX_set_min_proto_version(old, TLS1_VERSION);
	SSL_CTX_set_max_proto_version(old, TLS1_1_VERSION);
	SSL_CTX_set_security_level(old, 0);
	SSL *client = SSL_new(old), *server = SSL_new(sctx);
	BIO *b1, *b2;
	assert_int_equal(BIO_new_bio_pair(&b1, 0, &b2, 0), 1);
	SSL_set_bio(client, b1, b1);
	SSL_set_bio(server, b2, b2);
	SSL_set_connect_state(client);
	SSL_set_accept_state(server);
	assert_false(pump(client, server));
	ERR_clear_error();
	SSL_free(client);
	SSL_free(server);
	SSL_CTX_free(old);

	char out[32];
	tls_describe(NULL, out, sizeof(out));
	assert_string_equal(out, "none");
	SSL_CTX_free(sctx);
	config_free(&s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_generates_self_signed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_key_mismatch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_describe, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
