/*
 * relay.h - outbound delivery: the SMTP client that empties the outbound
 * queue (the store's table outbound) towards remote hosts, like Postfix's
 * qmgr + smtp.
 *
 * Owns: the relay threads (relay.threads delivery threads and one
 * scheduler), routing (relay.transport, MX lookups with c-ares, RFC 5321
 * 5.1), the SMTP client (EHLO/HELO, STARTTLS, SIZE, 8BITMIME, SMTPUTF8,
 * one transaction per message and destination domain with several RCPT),
 * retries with back-off, and delivery status notifications (RFC 3464) put
 * into the sender's INBOX.
 *
 * Life of a queue row (docs/RELAY.md):
 *   submission  -> queue commits the blob and one outbound row per remote
 *                  recipient in one transaction (store_commit_deliveries)
 *   scheduler   -> reads due rows, groups them by (message, domain), hands
 *                  a group to a delivery thread unless the domain already
 *                  has relay.destination_concurrency groups in flight
 *   delivery    -> route, connect, one SMTP transaction; per recipient:
 *                  2xx -> row removed (its blob reference dropped)
 *                  4xx or no connection -> row deferred (attempts + 1,
 *                        next_attempt grows from relay.retry_min to
 *                        relay.retry_max), until relay.max_lifetime, then
 *                  5xx or expired -> a bounce to the sender (none for the
 *                        null sender), then the row is removed.
 *
 * Durability: a row is removed only after the remote server accepted the
 * message (or the bounce is durable in the sender's INBOX).  A crash in
 * between delivers it again: at least once, never lost.
 *
 * Threads: relay_start/relay_stop from the main thread; relay_wake from
 * any thread (it never blocks: the queue's committer calls it).  Every
 * relay thread has its own store handle.
 */
#ifndef STRATA_RELAY_H
#define STRATA_RELAY_H

#include "config.h"
#include "core.h"

struct relay;

/* Checks relay.transport and relay.dns_servers, opens the threads' store
 * handles and starts the threads.  NULL with *error_r on failure (a bad
 * setting, no index).  The index must exist (the daemon created it). */
struct relay *relay_start(const struct settings *s, char **error_r);
/* Makes the scheduler look at the queue now (new rows, a flush).  Safe on
 * any thread, never blocks; the argument is a struct relay *.  NULL is a
 * no-op. */
void relay_wake(void *relay);
/* Stops taking new work, aborts transactions in progress at their next
 * network wait (their rows stay in the queue, due again), joins the
 * threads and frees the relay.  Sets *r to NULL; NULL is a no-op. */
void relay_stop(struct relay **r);

/* Checks a relay.transport value ("domain=host:port,...,*=host:port"; the
 * port defaults to 25, host may be [v6addr]).  False with *error_r. */
bool relay_transport_check(const char *value, char **error_r);

#endif
