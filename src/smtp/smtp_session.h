/*
 * smtp_session.h - private to src/smtp: the worker and session structures
 * shared by smtp_worker.c, smtp_session.c (connection, I/O, TLS, closing),
 * smtp_command.c (one handler per verb), smtp_auth.c (submission's AUTH
 * and sender check) and smtp_txn.c (the mail transaction: recipients,
 * message spool, commit, log line).
 *
 * Threads: everything here runs on the worker's event loop thread.
 *
 * Lifetime rules:
 *  - Handlers never free a session.  They set s->close and return; the
 *    libevent callback that started the work calls session_settle(), which
 *    frees the session once its output is flushed (or at once).
 *  - A session whose message is submitted (s->committing) or whose AUTH
 *    password check runs on the pool (s->auth_job) is never freed before
 *    the done callback: if its client vanishes, the connection is released
 *    and the struct waits (an "orphan"), then frees itself from the done
 *    callback.
 *  - Reading is switched off while any pause bit is set, and input already
 *    buffered is only consumed while no pause bit is set, so commands
 *    pipelined behind DATA wait for the DATA reply.
 */
#ifndef STRATA_SMTP_SESSION_H
#define STRATA_SMTP_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "config.h"
#include "core.h"
#include "queue.h"
#include "smtp.h"
#include "smtp_data.h"
#include "smtp_hdrfix.h"
#include "smtp_parser.h"
#include "smtp_sasl.h"
#include "store.h"

struct smtp_session;

struct smtp_worker {
	struct event_base *base;
	const struct settings *s;      /* for sessions started from now on */
	struct queue *q;
	SSL_CTX *tls;                  /* NULL: STARTTLS not offered */
	struct store_reader *reader;   /* recipient lookups, this thread only */
	struct queue_pool *pool;       /* submission AUTH password checks */
	struct smtp_session *sessions; /* doubly linked through s->prev/next */
	size_t n_sessions;
	bool shutting_down;
	struct event *sweep_ev;        /* every smtp.min_rate_window: session_sweep */
	uint64_t sweep_ms;             /* its period now */
};

/* smtp_worker.c: the process-wide connection slot of the service's cap,
 * taken at accept. */
void smtp_worker_release_slot(enum smtp_service service);

enum sess_state {
	SS_CMD = 0,   /* reading commands */
	SS_GREET,     /* banner held back (guard.smtp.banner_delay): any input is an early talker */
	SS_DATA,      /* after 354, until <CRLF>.<CRLF> */
	SS_BDAT,      /* inside a BDAT chunk */
	SS_COMMIT,    /* message submitted, waiting for the queue */
	SS_TLS_WAIT,  /* "220 Ready to start TLS" queued, waiting for it to flush */
	SS_TLS,       /* TLS handshake running */
};

enum sess_close {
	CLOSE_NONE = 0,
	CLOSE_FLUSH,  /* free once the output is written */
	CLOSE_NOW,    /* free at once (connection gone) */
};

/* Pause bits: reading stops while any is set. */
#define PAUSE_COMMIT   (1u << 0)  /* waiting for the done callback */
#define PAUSE_QUEUE    (1u << 1)  /* spool writers are behind (backpressure) */
#define PAUSE_DELAY    (1u << 2)  /* error reply held back (tarpit) */
#define PAUSE_OUTPUT   (1u << 3)  /* client is not reading our replies */
#define PAUSE_AUTH     (1u << 4)  /* AUTH password check, or its failure delay */

/* A SASL exchange in progress: the next line is a response, not a command. */
enum sess_sasl {
	SASL_NONE = 0,
	SASL_PLAIN_WAIT,  /* "334 " sent, waiting for the PLAIN response */
	SASL_LOGIN_USER,  /* "334 VXNlcm5hbWU6" sent */
	SASL_LOGIN_PASS,  /* "334 UGFzc3dvcmQ6" sent */
};
struct smtp_auth_job;

/* Longest address we keep: a canonical path, or postmaster@<hostname>. */
#define SESS_ADDR_MAX 320

struct txn_rcpt {
	char addr[SESS_ADDR_MAX];      /* as the client wrote it (canonical form) */
	char lookup[SESS_ADDR_MAX];    /* lower-cased address given to the store */
	bool remote;                   /* submission: for the outbound queue */
};
struct txn_account {
	int64_t id;
	size_t rcpt;                   /* index of the recipient that reached it first */
	char address[320];             /* the account's own address (blob trailer) */
};

/* One mail transaction: MAIL FROM to the final reply or RSET. */
struct smtp_txn {
	bool active;                   /* MAIL accepted */
	char from[SMTP_PATH_MAX + 1];  /* canonical reverse-path, "" for <> */
	struct smtp_mail_params params;
	size_t rcpt_attempts;          /* RCPT commands seen */
	struct txn_rcpt *rcpts;        /* accepted */
	size_t n_rcpts, cap_rcpts;
	struct txn_account *accounts;  /* deduplicated */
	size_t n_accounts, cap_accounts;
	int64_t *idset;                /* open addressing over account ids */
	size_t idset_cap;
	/* message */
	bool bdat;                     /* BDAT chunks are being received */
	struct queue_msg *msg;         /* spool, from DATA/first BDAT to submit */
	char qid[MSGID_TEXT_LEN + 1];  /* set while a started message is not yet logged */
	struct smtp_data data;
	bool too_big;
	uint64_t size;                 /* octets given to the spool */
	uint64_t eod_us;               /* end of data (monotonic) */
	bool fix_headers;              /* submission: add Date:/Message-ID: (smtp_hdrfix) */
	struct smtp_hdrfix hdrfix;
	struct buf fixed;              /* hdrfix output on its way to the spool */
};

struct smtp_session {
	struct smtp_worker *w;
	const struct settings *set;    /* fixed for the session's life */
	struct smtp_session *prev, *next;
	struct bufferevent *bev;       /* NULL once the connection is gone */
	struct guard_ticket ticket;    /* released with the connection */
	enum sess_state state;
	enum sess_close close;
	unsigned pause;                /* PAUSE_* */
	bool committing;               /* a done callback is outstanding */
	bool shutdown;                 /* worker shutting down: close after the commit reply */

	char ip[64];                   /* "192.0.2.1" / "2001:db8::1" */
	char client[80];               /* "[192.0.2.1]:4321" for logs */
	bool ipv6;

	struct smtp_line_reader lr;
	bool helo_seen;
	bool esmtp;                    /* EHLO (not HELO) */
	char helo[SMTP_DOMAIN_MAX + 1];/* sanitised, for Received and logs */
	bool tls;
	char tls_desc[128];            /* tls_describe() */
	enum smtp_service service;     /* MX, or submission (AUTH, outbound) */
	bool implicit_tls;             /* SUBMISSIONS: banner after the handshake */

	/* submission AUTH (smtp_auth.c) */
	bool authed;
	int64_t auth_account;
	char auth_user[320];           /* the account's address (logs, sender check) */
	const char *auth_mech;         /* "PLAIN" / "LOGIN" once authed */
	enum sess_sasl sasl;
	char sasl_user[SMTP_SASL_USER_MAX + 1]; /* LOGIN: the name, until the password */
	struct smtp_auth_job *auth_job;/* password check in flight: never freed before its done */
	struct event *auth_ev;         /* a failure reply held back by the guard's delay */

	unsigned errors;
	uint64_t commands;             /* command lines read in the session */
	uint64_t commands_budget;      /* of them, since the last accepted message (smtp.max_commands) */
	uint64_t pre_helo;             /* of them, before HELO/EHLO (smtp.max_commands_before_helo) */
	uint64_t unknown_rcpts;        /* RCPTs refused as unknown (smtp.max_unknown_recipients) */
	uint64_t started_ms;           /* monotonic; smtp.max_session_time */
	uint64_t rx_bytes;             /* input consumed */
	uint64_t rx_mark;              /* rx_bytes at the previous sweep */
	bool was_busy;                 /* mid-transfer at the previous sweep */
	struct event *delay_ev;
	struct event *banner_ev;       /* SS_GREET: sends the banner */
	struct buf delayed;            /* replies held back by PAUSE_DELAY */

	/* BDAT chunk in progress */
	uint64_t bdat_left;
	uint64_t bdat_size;
	bool bdat_last;
	bool bdat_discard;             /* consume and reply bdat_err */
	int bdat_err_code;
	const char *bdat_err_enh;
	const char *bdat_err_text;

	struct buf dout;               /* data-machine output awaiting the spool */
	struct smtp_txn txn;
};

/* ---- smtp_session.c ---------------------------------------------------- */
/* Takes over *ticket (may be NULL) and clears it; released when the
 * connection closes (release_connection). */
void session_start(struct smtp_worker *w, int fd, const struct sockaddr *peer, socklen_t peer_len,
		   enum smtp_service service, struct guard_ticket *ticket);
/* The worker's periodic check (every smtp.min_rate_window): cuts the
 * session with 421 4.4.2 when it was mid-transfer (a partial command line,
 * DATA, a BDAT chunk; not paused by the server) at this sweep and the one
 * before and got fewer than smtp.min_rate bytes in between, or when it has
 * lasted smtp.max_session_time.  May free s. */
void session_sweep(struct smtp_session *s, uint64_t now_ms);
/* Worker shutdown for one session (see smtp.h). */
void session_shutdown(struct smtp_session *s);
/* Frees a session regardless of its state (worker teardown). */
void session_destroy(struct smtp_session *s);
/* A normal reply line: "code text" (text already contains the enhanced code). */
void session_reply(struct smtp_session *s, const char *fmt, ...) ATTR_PRINTF(2, 3);
/* An error reply: counts the error, may be held back (tarpit), and closes
 * the session with 421 once smtp_max_errors is reached.  `metric` is a
 * counter to bump, or -1. */
void session_reply_error(struct smtp_session *s, int metric, const char *fmt, ...) ATTR_PRINTF(3, 4);
/* Sends a last reply line (a 421), aborts any open spool (logged with
 * `log_reason`) and closes after flushing. */
void session_close_with(struct smtp_session *s, const char *log_reason, const char *fmt, ...)
	ATTR_PRINTF(3, 4);
void session_close_after_flush(struct smtp_session *s);
/* A protocol offence: reports it to the daemon's guard (which bans the
 * client's address for a growing time, see guard.h), then closes with
 * "421 4.7.0 <hostname> Error: <what the offence is>" ("554 5.5.0" for an
 * early talker, which never got a banner).  Nothing when the
 * session is already closing (one offence per session). */
void session_offence(struct smtp_session *s, enum guard_offence kind);
/* Frees the session if it is closing and its output is flushed.  Only the
 * libevent callbacks call this, as their last step. */
void session_settle(struct smtp_session *s);
void session_pause(struct smtp_session *s, unsigned bit);
void session_resume(struct smtp_session *s, unsigned bit);
/* Applies the command or data timeout that fits the current state. */
void session_set_timeouts(struct smtp_session *s);
/* Starts STARTTLS: the 220 reply is queued by the caller. */
void session_starttls(struct smtp_session *s);
/* Processes buffered input as far as the state allows. */
void session_drive(struct smtp_session *s);

/* ---- smtp_command.c ------------------------------------------------------ */
void command_line(struct smtp_session *s, enum smtp_line_status st);
/* Reply to a finished BDAT chunk (called once bdat_left reaches 0). */
void command_bdat_chunk_done(struct smtp_session *s);

/* ---- smtp_auth.c ---------------------------------------------------------- */
/* True when AUTH is advertised and accepted now (submission, and TLS
 * unless submission.require_tls = no). */
bool auth_offered(const struct smtp_session *s);
void auth_command(struct smtp_session *s, const struct smtp_cmd *cmd);
/* A line read while s->sasl != SASL_NONE (st as from the line reader). */
void auth_response(struct smtp_session *s, enum smtp_line_status st);
/* Forgets the authentication (STARTTLS, RFC 3207 4.2). */
void auth_forget(struct smtp_session *s);
/* MAIL FROM on submission: true if `path` may be used by the
 * authenticated user, else false with the reply sent. */
bool auth_sender_allowed(struct smtp_session *s, const struct smtp_path *path);

/* ---- smtp_txn.c ---------------------------------------------------------- */
/* Aborts the spool (if any), logs an aborted message, forgets the transaction. */
void txn_reset(struct smtp_session *s, const char *abort_reason);
void txn_free(struct smtp_txn *t);
/* RCPT with a parsed path: lookup, reply, bookkeeping. */
void txn_rcpt(struct smtp_session *s, const struct smtp_path *path);
/* Creates the spool for DATA/BDAT and writes the Received: header. */
void txn_begin_message(struct smtp_session *s, enum smtp_data_mode mode);
/* Runs message octets through the data machine into the spool; returns
 * the number consumed (DATA stops after the terminator). */
size_t txn_feed(struct smtp_session *s, const char *data, size_t len);
/* End of the message (DATA terminator or BDAT LAST): reject or submit. */
void txn_end_message(struct smtp_session *s);
/* True if the transaction can no longer succeed (too big or bad content);
 * *code etc. receive the reply. */
bool txn_failed(struct smtp_session *s, int *code, const char **enh, const char **text, int *metric);
/* Logs "rejected (code enh text)" for the started message and resets. */
void txn_reject_message(struct smtp_session *s, int code, const char *enh, const char *text);
/* Called when the queue's drained callback fires. */
void txn_drained(void *arg);

#endif
