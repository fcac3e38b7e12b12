/*
 * smtp.h - the SMTP protocol: inbound mail (MX, RFC 5321 with PIPELINING,
 * SIZE, 8BITMIME, ENHANCEDSTATUSCODES, STARTTLS, SMTPUTF8 and CHUNKING) and
 * mail submission (RFC 6409 / RFC 8314: the same plus AUTH PLAIN and LOGIN,
 * RFC 4954; docs/SUBMISSION.md).
 *
 * Owns: one struct smtp_worker per network thread, and the sessions on it.
 * A session parses commands (smtp_parser.c), validates recipients through the
 * worker's read-only store handle, feeds message data through the
 * dot-unstuffing and bare-LF state machine (smtp_data.c) into a queue_msg,
 * and replies 250 only from the queue's done callback, i.e. only after the
 * message is durable.
 *
 * Threads: every function here runs on the worker's event loop thread,
 * except smtp_worker_new/free (owner thread, before/after the loop runs).
 *
 * Shutdown: smtp_worker_shutdown closes idle sessions with 421, aborts
 * sessions in the middle of DATA/BDAT with 421 (their spool is discarded,
 * nothing becomes visible) and lets sessions whose message is already
 * submitted finish: their reply is sent when the commit completes.
 */
#ifndef STRATA_SMTP_H
#define STRATA_SMTP_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "config.h"
#include "guard.h"
#include "queue.h"

struct event_base;
struct smtp_worker;

/* What a listener offers (the server picks it per listener):
 * MX (port 25): inbound mail for local recipients only, no AUTH;
 * SUBMISSION (587, RFC 6409): STARTTLS, then AUTH is required before MAIL,
 *   and authenticated users may send to remote recipients (outbound queue);
 * SUBMISSIONS (465, RFC 8314): the same over implicit TLS. */
enum smtp_service { SMTP_SERVICE_MX = 0, SMTP_SERVICE_SUBMISSION, SMTP_SERVICE_SUBMISSIONS };

struct smtp_worker *smtp_worker_new(struct event_base *base, const struct settings *s,
				    struct queue *q, SSL_CTX *tls, char **error_r);
/* Takes ownership of fd (non-blocking, accepted) and starts a session.
 * Also takes over *ticket (the guard's; NULL or empty: none) and clears it:
 * it is released exactly once, when the connection closes or at once when
 * the worker refuses the connection. */
void smtp_worker_accept(struct smtp_worker *w, int fd, const struct sockaddr *peer,
			socklen_t peer_len, const struct sockaddr *local, socklen_t local_len,
			enum smtp_service service, struct guard_ticket *ticket);
/* New settings for sessions started from now on (SIGHUP).  The caller keeps
 * `s` alive until after smtp_worker_free. */
void smtp_worker_set_settings(struct smtp_worker *w, const struct settings *s);
void smtp_worker_shutdown(struct smtp_worker *w);
/* Sessions still open (shutdown is complete when this reaches 0). */
size_t smtp_worker_sessions(const struct smtp_worker *w);
void smtp_worker_free(struct smtp_worker **w);

#endif
