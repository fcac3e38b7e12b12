/*
 * relay_int.h - what the relay's files share; not a public header.
 *
 *   relay.c        start/stop, the scheduler and the delivery threads,
 *                  results (remove, defer with back-off, bounce), logging
 *   relay_route.c  relay.transport, MX and address lookups (c-ares)
 *   relay_smtp.c   the SMTP client: one transaction to one destination
 *   relay_bounce.c delivery status notifications into the sender's INBOX
 *
 * Threads: a struct relay_dns and a struct relay_conn belong to one
 * delivery thread.  The transport table is immutable after relay_start.
 * `stop` is the relay's stop flag: every network wait checks it at least
 * every RELAY_STOP_POLL_MS and gives up when it is set.
 */
#ifndef STRATA_RELAY_INT_H
#define STRATA_RELAY_INT_H

#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "relay.h"
#include "store.h"

#define RELAY_STOP_POLL_MS 250
#define RELAY_DOMAIN_MAX 255      /* a domain or host name, or a bracketed literal */
#define RELAY_MAX_HOPS 10         /* addresses tried per delivery (RFC 5321 5.1: a limit) */
#define RELAY_REPLY_MAX 1024      /* reply text kept for logs and bounces */
#define RELAY_MAX_RCPTS 100       /* recipients per transaction (RFC 5321 4.5.3.1.8) */

/* ---- relay_route.c ---------------------------------------------------------- */

struct relay_route_entry {
	char domain[RELAY_DOMAIN_MAX + 1]; /* lower-case; "*" = every other domain */
	char host[RELAY_DOMAIN_MAX + 1];   /* name or IP literal (without brackets) */
	uint16_t port;
};
struct relay_transport {
	struct relay_route_entry *e;
	size_t n;
};
bool relay_transport_parse(const char *value, struct relay_transport *out, char **error_r);
void relay_transport_free(struct relay_transport *t);

/* One address to try. */
struct relay_hop {
	char host[RELAY_DOMAIN_MAX + 1];   /* the MX (or route) name, for logs */
	char ip[INET6_ADDRSTRLEN];
	uint16_t port;
	struct sockaddr_storage addr;
	socklen_t addr_len;
};
struct relay_hops {
	struct relay_hop h[RELAY_MAX_HOPS];
	size_t n;
};

enum relay_result { RELAY_SENT = 0, RELAY_DEFER, RELAY_BOUNCE, RELAY_ABORTED };

struct relay_dns;
/* `servers` is relay.dns_servers ("" = the system's). */
struct relay_dns *relay_dns_new(const char *servers, const atomic_bool *stop, char **error_r);
void relay_dns_free(struct relay_dns **d);
/* The addresses to try for `domain` (lower-case, or "[literal]"), in
 * order: the transport's route when one matches, else the MX hosts by
 * preference, else the domain's own A/AAAA (RFC 5321 5.1).  RELAY_SENT
 * means found; RELAY_DEFER (a DNS failure, no address) or RELAY_BOUNCE
 * (no such domain, a null MX) with a reply in *error_r, "4.4.3 ..." or
 * "5.1.2 ...", enhanced status first. */
enum relay_result relay_route(struct relay_dns *d, const struct relay_transport *t, const char *domain,
			      struct relay_hops *out, char **error_r);

/* ---- relay_smtp.c ----------------------------------------------------------- */

/* One recipient of a transaction, with its result. */
struct relay_rcpt {
	const char *address;
	enum relay_result result;
	int code;                          /* SMTP reply code; 0 = none (no connection) */
	char dsn[16];                      /* enhanced status, e.g. "2.0.0" */
	char reply[RELAY_REPLY_MAX];       /* what the server said, or why it was not asked */
};
struct relay_txn {
	/* in */
	const struct settings *s;
	SSL_CTX *tls;
	const atomic_bool *stop;
	const char *sender;                /* "" = null reverse-path */
	int fd;                            /* the message bytes [0, size) */
	uint64_t size;
	bool eight_bit;                    /* the message has bytes >= 0x80 */
	struct relay_rcpt *rcpts;
	size_t n_rcpts;
	/* out: the host that answered last (for logs and bounces) */
	char relay_host[RELAY_DOMAIN_MAX + 1];
	char relay_ip[INET6_ADDRSTRLEN];
	uint16_t relay_port;
	bool tls_used;
	char tls_desc[96];                 /* "TLSv1.3:TLS_AES_256_GCM_SHA384" when used */
};
/* Tries the hops in order until one takes the transaction (answers every
 * recipient) and fills every rcpts[i].result. */
void relay_smtp_deliver(struct relay_txn *t, const struct relay_hops *hops);
/* Gives all n recipients the same result, code, dsn and reply. */
void relay_rcpts_set(struct relay_rcpt *r, size_t n, enum relay_result res, int code, const char *dsn,
		     const char *reply);

/* ---- relay_bounce.c --------------------------------------------------------- */

/* What a bounce reports about the original message. */
struct relay_bounce_msg {
	struct msgid id;                   /* the original's queue id */
	int64_t received;                  /* when it was submitted */
	const char *sender;                /* never "" (no bounce for the null sender) */
	int fd;                            /* the original's bytes, or -1 when unreadable */
	uint64_t size;
	const struct relay_rcpt *const *failed;
	size_t n_failed;
	const char *remote_mta;            /* "" when no server answered */
};
/* Composes the DSN and stores it in the INBOX of every account the sender
 * reaches (through `reader`), durably, with `st`.  ST_OK when stored;
 * ST_NOT_FOUND when the sender is not local (nothing can be done: logged
 * by the caller); else a storage status (worth a retry). */
enum status relay_bounce_send(const struct settings *s, struct store *st, struct store_reader *reader,
			      const struct relay_bounce_msg *m, char **error_r);
/* The DSN text (exposed for tests): appends the whole message to out. */
void relay_bounce_compose(const struct settings *s, const struct relay_bounce_msg *m, int64_t now,
			  struct buf *out);

#endif
