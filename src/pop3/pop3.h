/*
 * pop3.h - the POP3 server (RFC 1939) with CAPA (RFC 2449), STLS
 * (RFC 2595), SASL PLAIN (RFC 5034), RESP-CODES and AUTH-RESP-CODE
 * (RFC 3206), on Strata's store.  POP3 serves the INBOX only.
 *
 * Owns: one struct pop3_worker per network thread and the sessions on it,
 * plus the worker's small pool of store threads.  Password verification,
 * the maildrop listing at login and the UPDATE state's expunge run on the
 * pool, replying from the job's completion on the worker's loop.  RETR and
 * TOP stream the message from its blob file in bounded chunks on the loop
 * (short reads of a local file, never a whole message in memory).
 *
 * Maildrop lock (RFC 1939 section 8): one POP3 session per account at a
 * time in this process; a second login gets "-ERR [IN-USE]".  The lock is
 * released whenever the session ends, however it ends.
 *
 * UIDL: "%08X%08X" of the message's INBOX UID and the INBOX UIDVALIDITY
 * (Dovecot's default format), stable across sessions and restarts.
 *
 * Threads: every function here runs on the worker's event loop thread,
 * except pop3_worker_new/free (owner thread, before/after the loop runs).
 * The event_base must have been created after evthread_use_pthreads().
 *
 * Shutdown: pop3_worker_shutdown closes idle sessions with "-ERR" and lets
 * a session with a store job in flight close when the job completes; wait
 * for pop3_worker_sessions() to reach 0 before stopping the loop.
 */
#ifndef STRATA_POP3_H
#define STRATA_POP3_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "config.h"
#include "guard.h"

struct event_base;
struct pop3_worker;

/* Starts the worker's store threads (the index must exist).  tls NULL: no
 * STLS and no implicit TLS.  NULL with *error_r on failure. */
struct pop3_worker *pop3_worker_new(struct event_base *base, const struct settings *s, SSL_CTX *tls,
				    char **error_r);
/* Takes ownership of fd (non-blocking, accepted) and starts a session.
 * implicit_tls: the TLS handshake starts at once (port 995, RFC 8314) and
 * the greeting follows it.  Also takes over *ticket (the guard's; NULL or
 * empty: none) and clears it: it is released exactly once, when the
 * connection closes or at once when the worker refuses the connection. */
void pop3_worker_accept(struct pop3_worker *w, int fd, const struct sockaddr *peer, socklen_t peer_len,
			const struct sockaddr *local, socklen_t local_len, bool implicit_tls,
			struct guard_ticket *ticket);
/* Settings for sessions started from now on (SIGHUP); `s` must outlive
 * pop3_worker_free. */
void pop3_worker_set_settings(struct pop3_worker *w, const struct settings *s);
void pop3_worker_shutdown(struct pop3_worker *w);
/* Sessions still open (shutdown is complete at 0). */
size_t pop3_worker_sessions(const struct pop3_worker *w);
/* Stops the store threads (after finishing queued jobs) and frees. */
void pop3_worker_free(struct pop3_worker **w);

#endif
