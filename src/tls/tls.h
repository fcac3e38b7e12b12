/*
 * tls.h - the server TLS context.
 *
 * Owns: the OpenSSL SSL_CTX shared by all listeners (TLS 1.2 minimum, the
 * system's default cipher policy), and the self-signed certificate made on
 * first start when none is configured.  The private key is written 0600.
 * Thread-safe after tls_context_new returns (SSL_CTX is reference counted).
 */
#ifndef STRATA_TLS_H
#define STRATA_TLS_H

#include <openssl/ssl.h>
#include <stdbool.h>

#include "config.h"

/* Loads cert and key from the settings; when both are at their default
 * paths and absent, first generates a self-signed certificate for
 * s->hostname (durably, key mode 0600).  NULL with *error_r on failure. */
SSL_CTX *tls_context_new(const struct settings *s, char **error_r);
/* "TLSv1.3:TLS_AES_256_GCM_SHA384:256" for Received: headers and logs. */
void tls_describe(SSL *ssl, char *out, size_t outlen);

#endif
