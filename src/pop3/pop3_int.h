/*
 * pop3_int.h - private to src/pop3: the worker, the store thread pool, the
 * maildrop lock table and the session, shared by
 *   pop3_worker.c   accept, connection cap, shutdown, store threads, locks
 *   pop3_session.c  connection I/O, input pump, replies, TLS, closing
 *   pop3_command.c  the commands of the three states, RETR/TOP streaming
 *
 * Lifetime rules (as in src/imap):
 *  - Handlers never free a session: they set s->close; the libevent
 *    callback that started the work calls pop3_session_settle() last.
 *  - While a job runs (s->job != NULL) the session is never freed: if the
 *    client goes, the connection is released and the struct is freed by
 *    the job's completion.
 *  - Input is consumed only while no pause bit is set, so commands are
 *    executed strictly one after another (PIPELINING is safe).
 *
 * Threads: all of this runs on the worker's loop thread, except the run()
 * half of a job (a pool thread, with that thread's own store handle) and
 * the lock table (any thread, under its mutex).
 */
#ifndef STRATA_POP3_INT_H
#define STRATA_POP3_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "config.h"
#include "core.h"
#include "pop3.h"
#include "pop3_parser.h"
#include "queue.h"
#include "store.h"

#define POP3_OUTPUT_HIGH (256u * 1024u)   /* pause output producers above this */
#define POP3_OUTPUT_LOW (64u * 1024u)     /* refill (RETR) once output drains to this */
/* Bytes one write(2) may take from the output buffer (libevent's default
 * is 16 KiB: 16 system calls and reader wake-ups per 256 KiB). */
#define POP3_WRITE_MAX (512u * 1024u)
#define POP3_INPUT_HIGH (64u * 1024u)     /* stop reading above this */
#define POP3_CHUNK (64u * 1024u)          /* blob bytes read per RETR step */

/* ---- store jobs (pop3_worker.c, over queue.h's store thread pool) --------- */

struct pop3_job;
typedef void pop3_job_fn(struct pop3_job *j, struct store *st);
typedef void pop3_done_fn(struct pop3_job *j);
struct pop3_job {
	pop3_job_fn *run;               /* pool thread */
	pop3_done_fn *done;             /* loop thread, exactly once */
	struct event_base *base;
	struct pop3_session *s;
	struct queue_job qj;            /* the pool's view of this job */
	enum status status;
	char *error;                    /* malloc'd, for logs */
};
/* Hands j to the worker's store threads: j->run there, then j->done on
 * j->base's loop. */
void pop3_pool_submit(struct queue_pool *p, struct pop3_job *j);

/* ---- maildrop locks (pop3_worker.c) ----------------------------------------- */

/* False when another session holds the account's lock. */
bool pop3_lock_take(int64_t account_id);
void pop3_lock_release(int64_t account_id);

/* ---- worker --------------------------------------------------------------- */

struct pop3_session;
struct pop3_worker {
	struct event_base *base;
	const struct settings *s;
	SSL_CTX *tls;
	struct queue_pool *pool;        /* store threads (queue.h) */
	struct pop3_session *sessions;
	size_t n_sessions;
	bool shutting_down;
};
void pop3_worker_release_slot(void);

/* ---- the maildrop (snapshot taken at login) ------------------------------- */

struct pop3_msg {
	uint32_t uid;
	uint64_t size;
	struct msgid id;                /* blob */
	bool deleted;                   /* DELE'd in this session */
};
struct pop3_maildrop {
	int64_t mailbox_id;
	uint32_t uidvalidity;
	struct pop3_msg *m;             /* message number = index + 1 */
	size_t n, cap;
};
void pop3_maildrop_free(struct pop3_maildrop **md);

/* ---- session -------------------------------------------------------------- */

enum pop3_state { PS_AUTH = 0, PS_TRANS, PS_UPDATE };
enum pop3_mode {
	PM_CMD = 0,     /* reading commands */
	PM_SASL,        /* AUTH PLAIN: waiting for the client's response */
	PM_TLS_WAIT,    /* STLS reply queued, waiting for it to flush */
	PM_TLS,         /* handshake running */
};
enum pop3_close { PC_NONE = 0, PC_FLUSH, PC_NOW };

#define PP_JOB    (1u << 0)   /* a store job is running */
#define PP_OUTPUT (1u << 1)   /* client is not reading */
#define PP_RETR   (1u << 2)   /* a RETR/TOP is producing output */

struct pop3_retr;

struct pop3_session {
	struct pop3_worker *w;
	const struct settings *set;
	struct pop3_session *prev, *next;
	struct bufferevent *bev;
	enum pop3_state state;
	enum pop3_mode mode;
	enum pop3_close close;
	unsigned pause;
	struct pop3_job *job;           /* in flight */
	char ip[64];
	char client[80];
	bool loopback;
	bool tls;
	bool implicit_tls;              /* greeting after the handshake */
	bool shutdown;
	unsigned errors;
	struct guard_ticket ticket;     /* released with the connection */
	struct pop3_reader rd;
	char *user;                     /* USER argument, then the account address */
	/* transaction state */
	int64_t account_id;
	bool locked;                    /* holds account_id's maildrop lock */
	struct pop3_maildrop *md;
	struct pop3_retr *retr;         /* RETR/TOP in progress (PP_RETR) */
};

/* pop3_session.c */
/* Takes over *ticket (may be NULL) and clears it. */
void pop3_session_start(struct pop3_worker *w, int fd, const struct sockaddr *peer, socklen_t peer_len,
			bool implicit_tls, struct guard_ticket *ticket);
void pop3_session_shutdown(struct pop3_session *s);
void pop3_session_destroy(struct pop3_session *s);
void pop3_session_settle(struct pop3_session *s);
void pop3_session_drive(struct pop3_session *s);
void pop3_session_pause(struct pop3_session *s, unsigned bit);
void pop3_session_resume(struct pop3_session *s, unsigned bit);
void pop3_session_write(struct pop3_session *s, const void *data, size_t len);
bool pop3_session_output_full(const struct pop3_session *s);
/* "+OK text" */
void pop3_session_ok(struct pop3_session *s, const char *fmt, ...) ATTR_PRINTF(2, 3);
/* "-ERR text" (not counted as a client error). */
void pop3_session_err(struct pop3_session *s, const char *fmt, ...) ATTR_PRINTF(2, 3);
/* "-ERR text" counted towards pop3.max_errors; hangs up at the limit. */
void pop3_session_bad(struct pop3_session *s, const char *fmt, ...) ATTR_PRINTF(2, 3);
/* Close once the output has drained; no more input is read. */
void pop3_session_close_after_flush(struct pop3_session *s);
void pop3_session_starttls(struct pop3_session *s);
void pop3_session_submit(struct pop3_session *s, struct pop3_job *j);
/* See imap_int.h: false when the session is gone (orphan freed). */
bool pop3_session_job_finished(struct pop3_session *s);
void pop3_session_job_end(struct pop3_session *s);
/* Re-arms the read/write timeouts for the session's state. */
void pop3_session_timeouts(struct pop3_session *s);

/* pop3_command.c */
void pop3_command_line(struct pop3_session *s, const char *line, size_t len);
void pop3_command_sasl_response(struct pop3_session *s, const char *line, size_t len);
void pop3_command_greeting(struct pop3_session *s);
/* Continues a RETR/TOP when the output has room. */
void pop3_retr_continue(struct pop3_session *s);
void pop3_retr_free(struct pop3_retr **r);
/* Releases the maildrop lock and the snapshot (session end). */
void pop3_command_logout(struct pop3_session *s);

#endif
