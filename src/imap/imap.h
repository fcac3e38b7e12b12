/*
 * imap.h - the IMAP4rev1 (RFC 3501) and IMAP4rev2 (RFC 9051, after ENABLE
 * IMAP4rev2) server on Strata's store, with LITERAL+, SASL-IR, AUTH=PLAIN,
 * AUTH=LOGIN, STARTTLS, IDLE, UIDPLUS, MOVE, UNSELECT, NAMESPACE,
 * SPECIAL-USE, ENABLE, ID, BINARY, MULTIAPPEND, STATUS=SIZE and the others
 * docs/IMAP.md lists.
 *
 * Owns: one struct imap_worker per network thread and the sessions on it,
 * plus the worker's small pool of store threads.  A session parses commands
 * (imap_parser.c), reads the index through the worker's own handle on the
 * loop thread (short autocommit reads), and runs everything that writes -
 * flag changes, expunges, copies, mailbox changes, APPEND's blob fsync and
 * commit, password verification, and SEARCH over headers or bodies - on
 * the pool, replying from the job's completion, which runs on the worker's
 * loop.  No fsync ever runs on the loop thread.
 *
 * Change notification: a selected session checks its mailbox's (uidnext,
 * highestmodseq) before each tagged reply, and reports other sessions' and
 * deliveries' changes as EXISTS / EXPUNGE / FETCH (FLAGS) untagged
 * responses.  A session in IDLE is woken at once by any commit of this
 * process that changed its mailbox (imap_notify_changes, installed as the
 * store's change listener), and polls every IMAP_IDLE_POLL_MS for changes
 * made by other processes (the strata CLI).
 *
 * Threads: every function here runs on the worker's event loop thread,
 * except imap_worker_new/free (owner thread, before/after the loop runs).
 * The event_base must have been created after evthread_use_pthreads().
 *
 * Shutdown: imap_worker_shutdown sends "* BYE" to sessions and closes them;
 * a session with a store job in flight closes when the job completes, so
 * wait for imap_worker_sessions() to reach 0 before stopping the loop.
 */
#ifndef STRATA_IMAP_H
#define STRATA_IMAP_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "config.h"
#include "guard.h"

struct event_base;
struct imap_worker;

/* Opens the worker's store handles (the index must exist) and starts its
 * store threads.  tls NULL: no STARTTLS.  NULL with *error_r on failure. */
struct imap_worker *imap_worker_new(struct event_base *base, const struct settings *s, SSL_CTX *tls,
				    char **error_r);
/* A store_change_fn (store.h): wakes, on every worker's loop, the sessions
 * in IDLE whose selected mailbox is among `mailbox_ids` (all: every one).
 * Any thread; never blocks beyond a short mutex. */
void imap_notify_changes(void *ctx, const int64_t *mailbox_ids, size_t n, bool all);
/* Takes ownership of fd (non-blocking, accepted) and starts a session.
 * Also takes over *ticket (the guard's; NULL or empty: none) and clears it:
 * it is released exactly once, when the connection closes or at once when
 * the worker refuses the connection. */
void imap_worker_accept(struct imap_worker *w, int fd, const struct sockaddr *peer, socklen_t peer_len,
			const struct sockaddr *local, socklen_t local_len, struct guard_ticket *ticket);
/* The same for an implicit-TLS port (993, RFC 8314): the TLS handshake
 * starts at once and the greeting follows it.  Needs a worker with TLS
 * (without, the connection is closed). */
void imap_worker_accept_tls(struct imap_worker *w, int fd, const struct sockaddr *peer, socklen_t peer_len,
			    const struct sockaddr *local, socklen_t local_len, struct guard_ticket *ticket);
/* Settings for sessions started from now on (SIGHUP); `s` must outlive
 * imap_worker_free. */
void imap_worker_set_settings(struct imap_worker *w, const struct settings *s);
void imap_worker_shutdown(struct imap_worker *w);
/* Sessions still open (shutdown is complete at 0). */
size_t imap_worker_sessions(const struct imap_worker *w);
/* Stops the store threads (after finishing queued jobs) and frees. */
void imap_worker_free(struct imap_worker **w);

#endif
