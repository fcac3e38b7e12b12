/*
 * imap_int.h - private to src/imap: the worker, the store thread pool, the
 * session, and the selected-mailbox view, shared by
 *   imap_worker.c   accept, connection cap, shutdown
 *   imap_pool.c     store threads and job completion on the loop
 *   imap_session.c  connection I/O, input pump, replies, TLS, IDLE timer
 *   imap_command.c  dispatch, any-state and authentication commands,
 *                   mailbox-level commands (LIST, CREATE, STATUS, ...)
 *   imap_mailbox.c  SELECT and the view: updates, STORE, EXPUNGE, COPY/MOVE
 *   imap_fetch.c    FETCH (incremental, bounded output)
 *   imap_search.c   SEARCH, SEARCHRES, the search engine of SORT and THREAD
 *   imap_sort.c     SORT
 *   imap_thread.c   THREAD
 *   imap_append.c   APPEND: streamed literal, durable blob, commit
 *
 * Lifetime rules (as in src/smtp):
 *  - Handlers never free a session: they set s->close; the libevent
 *    callback that started the work calls imap_session_settle() last.
 *  - While a job runs (s->job != NULL) the session is never freed: if the
 *    client goes, the connection is released and the struct is freed by
 *    the job's completion.
 *  - Input is consumed only while no pause bit is set, so commands are
 *    executed strictly one after another.
 *
 * Threads: all of this runs on the worker's loop thread, except the run()
 * half of a job (a pool thread, with that thread's own store handle).
 */
#ifndef STRATA_IMAP_INT_H
#define STRATA_IMAP_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "config.h"
#include "core.h"
#include "imap.h"
#include "imap_parser.h"
#include "queue.h"
#include "store.h"

#define IMAP_IDLE_POLL_MS 30000u          /* IDLE fallback poll: changes made outside the daemon */
#define IMAP_NOTIFY_MAX 64                /* changed mailboxes a worker queues before "all" */
#define IMAP_INPUT_HIGH (256u * 1024u)    /* stop reading above this */
#define IMAP_OUTPUT_HIGH (256u * 1024u)   /* pause output producers above this */
#define IMAP_OUTPUT_LOW (64u * 1024u)     /* refill (FETCH) once output drains to this */
/* Bytes one write(2) may take from the output buffer (libevent's default
 * is 16 KiB: 16 system calls and reader wake-ups per 256 KiB). */
#define IMAP_WRITE_MAX (512u * 1024u)
/* Page cache of a worker's read handle: what its sessions read most
 * (mailbox rows, message lists, MIME rows) stays hot, and the cache does
 * not grow with the number of different mailboxes idle sessions have
 * selected (a writer handle's default is 32 MiB). */
#define IMAP_READER_CACHE_KIB 8192u
#define IMAP_MEMORY_LITERAL_MAX (64u * 1024u) /* in-memory literals per command */
#define IMAP_DISCARD_MAX (64ull << 20)    /* refused non-sync literal we still read */

/* ---- store jobs (imap_pool.c, over queue.h's store thread pool) ----------- */

struct imap_job;
typedef void imap_job_fn(struct imap_job *j, struct store *st);
typedef void imap_done_fn(struct imap_job *j);
struct imap_job {
	imap_job_fn *run;               /* pool thread */
	imap_done_fn *done;             /* loop thread, exactly once */
	struct event_base *base;
	struct imap_session *s;
	struct queue_job qj;            /* the pool's view of this job */
	enum status status;
	char *error;                    /* malloc'd, for logs */
};
/* Hands j to the worker's store threads: j->run there, then j->done on
 * j->base's loop. */
void imap_pool_submit(struct queue_pool *p, struct imap_job *j);

/* ---- worker --------------------------------------------------------------- */

struct imap_session;
struct imap_worker {
	struct event_base *base;
	const struct settings *s;
	SSL_CTX *tls;
	struct store *reader;           /* reads on this loop thread only */
	struct queue_pool *pool;        /* store threads (queue.h) */
	struct imap_session *sessions;
	size_t n_sessions;
	bool shutting_down;
	/* Mailboxes changed by commits on other threads (imap_notify_changes):
	 * filled under notify_mu by any thread, drained by notify_ev on the loop. */
	pthread_mutex_t notify_mu;
	int64_t notify_ids[IMAP_NOTIFY_MAX];
	size_t notify_n;
	bool notify_all;
	struct event *notify_ev;
	struct imap_worker *next_worker;   /* the process's worker list */
};
void imap_worker_release_slot(void);

/* ---- the selected mailbox ------------------------------------------------- */

#define VIEW_GONE (1u << 31)            /* expunged, not yet reported */
#define VIEW_RECENT (1u << 30)          /* \Recent for this session (IMAP4rev1 only) */
#define VIEW_BITS (VIEW_GONE | VIEW_RECENT) /* session state, not stored flags */
struct view_msg {
	uint32_t uid;
	uint32_t flags;                 /* MSG_FLAG_* | VIEW_GONE */
	uint64_t modseq;                /* RFC 7162, as last reported */
	char *kw;                       /* keywords as stored (space-separated), NULL = none */
};
struct imap_view {
	int64_t id;
	char name[STORE_MAILBOX_NAME_MAX + 1];
	bool readonly;
	uint32_t uidvalidity;
	uint32_t uidnext;
	uint64_t highestmodseq;
	struct view_msg *m;             /* sequence number = index + 1 */
	size_t n, cap;
	char **known;                   /* keywords announced in FLAGS: grows only */
	size_t n_known, cap_known;
	bool pending_expunge;           /* some entries are VIEW_GONE */
	uint32_t *saved;                /* SEARCHRES "$" (RFC 5182): UIDs, ascending; the
					 * view's lifetime is the one RFC 5182 gives it */
	size_t n_saved;
};

/* ---- session -------------------------------------------------------------- */

enum imap_state { IS_NOTAUTH = 0, IS_AUTH, IS_SELECTED, IS_LOGOUT };
enum imap_mode {
	IM_CMD = 0,     /* reading commands */
	IM_IDLE,        /* after "+ idling": waiting for DONE */
	IM_SASL,        /* AUTHENTICATE: waiting for the client's response */
	IM_TLS_WAIT,    /* STARTTLS reply queued, waiting for it to flush */
	IM_TLS,         /* handshake running */
};
enum imap_close { IC_NONE = 0, IC_FLUSH, IC_NOW };
enum imap_sasl { SASL_PLAIN = 0, SASL_LOGIN_USER, SASL_LOGIN_PASS };

#define IP_JOB    (1u << 0)   /* a store job is running */
#define IP_OUTPUT (1u << 1)   /* client is not reading */
#define IP_FETCH  (1u << 2)   /* a FETCH is producing output */

struct imap_fetch;
struct imap_append;

struct imap_session {
	struct imap_worker *w;
	const struct settings *set;
	struct imap_session *prev, *next;
	struct bufferevent *bev;
	struct guard_ticket ticket;     /* released with the connection */
	enum imap_state state;
	enum imap_mode mode;
	enum imap_close close;
	unsigned pause;
	struct imap_job *job;           /* in flight */
	char ip[64];
	char client[80];
	bool loopback;
	bool tls;
	bool implicit_tls;              /* greeting after the handshake */
	bool shutdown;
	unsigned errors;
	struct imap_reader rd;
	char tag[IMAP_TAG_MAX + 1];     /* of the command in progress */
	const char *refuse_text;        /* reply for a refused literal's command */
	/* authenticated */
	int64_t account_id;
	char *user;                     /* account address */
	struct imap_view *view;         /* IS_SELECTED */
	bool condstore;                 /* RFC 7162 CONDSTORE enabled (ENABLE or a CONDSTORE command) */
	bool qresync;                   /* RFC 7162 QRESYNC enabled: VANISHED replaces EXPUNGE */
	bool rev2;                      /* ENABLE IMAP4rev2 (RFC 9051): ESEARCH answers, no RECENT */
	enum imap_sasl sasl;            /* IM_SASL: the mechanism waiting for a response */
	char *sasl_user;                /* AUTHENTICATE LOGIN: the user name, once sent */
	struct event *idle_ev;
	struct imap_fetch *fetch;       /* FETCH in progress (IP_FETCH) */
	struct imap_append *append;     /* APPEND messages being received (MULTIAPPEND: several) */
};

/* imap_session.c */
/* Takes over *ticket (the guard's, may be NULL) and clears it; it is
 * released when the connection closes (release_connection). */
void imap_session_start(struct imap_worker *w, int fd, const struct sockaddr *peer, socklen_t peer_len,
			bool implicit_tls, struct guard_ticket *ticket);
void imap_session_shutdown(struct imap_session *s);
void imap_session_destroy(struct imap_session *s);
void imap_session_settle(struct imap_session *s);
void imap_session_drive(struct imap_session *s);
void imap_session_pause(struct imap_session *s, unsigned bit);
void imap_session_resume(struct imap_session *s, unsigned bit);
void imap_session_write(struct imap_session *s, const void *data, size_t len);
/* pread(2) of fd at off, up to len bytes, straight into the output buffer
 * (no intermediate copy); returns what pread returned (0 when the session
 * has no connection left: the caller then stops). */
ssize_t imap_session_write_pread(struct imap_session *s, int fd, uint64_t off, size_t len);
/* "* text" */
void imap_session_untagged(struct imap_session *s, const char *fmt, ...) ATTR_PRINTF(2, 3);
/* "<tag> OK|NO|BAD text" for the current command (s->tag). */
void imap_session_tagged(struct imap_session *s, const char *result, const char *fmt, ...) ATTR_PRINTF(3, 4);
/* A BAD reply that counts towards the error limit (closes with BYE). */
void imap_session_bad(struct imap_session *s, const char *tag, const char *fmt, ...) ATTR_PRINTF(3, 4);
/* "* BYE text" and close after flushing. */
void imap_session_bye(struct imap_session *s, const char *fmt, ...) ATTR_PRINTF(2, 3);
void imap_session_starttls(struct imap_session *s);
/* Submits a job; input pauses until its done callback (which must call
 * imap_session_job_finished first). */
void imap_session_submit(struct imap_session *s, struct imap_job *j);
/* Returns false when the session is gone (orphan freed): do nothing more.
 * Otherwise the caller replies, then calls imap_session_job_end (which resumes
 * input, closes if shutting down, and settles). */
bool imap_session_job_finished(struct imap_session *s);
void imap_session_job_end(struct imap_session *s);
const char *imap_session_capabilities(const struct imap_session *s);
void imap_session_idle_start(struct imap_session *s);
/* A commit changed the IDLE session's mailbox: report it now. */
void imap_session_idle_wake(struct imap_session *s);
void imap_session_idle_stop(struct imap_session *s);
bool imap_session_output_full(const struct imap_session *s);

/* imap_command.c */
void imap_command_execute(struct imap_session *s, struct imap_cmd *cmd);
void imap_command_sasl_response(struct imap_session *s, const char *line, size_t len);
/* Reply for a status (tagged NO [CODE] text / BAD). */
void imap_command_reply_status(struct imap_session *s, enum status st, const char *what);
void imap_quote(struct buf *out, const char *str);

/* imap_mailbox.c */
void imap_mailbox_select(struct imap_session *s, struct imap_cmd *cmd, bool readonly);
void imap_mailbox_unselect(struct imap_session *s);
/* Reports changes (EXISTS/EXPUNGE/FETCH).  allow_expunge false during
 * FETCH/STORE/SEARCH (RFC 3501 7.4.1). */
void imap_mailbox_sync(struct imap_session *s, bool allow_expunge);
void imap_mailbox_close(struct imap_session *s, struct imap_cmd *cmd, bool expunge);
void imap_mailbox_expunge(struct imap_session *s, struct imap_cmd *cmd);
void imap_mailbox_store(struct imap_session *s, struct imap_cmd *cmd);
void imap_mailbox_copy(struct imap_session *s, struct imap_cmd *cmd, bool move);
/* Resolves a sequence set (UIDs when `uid`) against the view into a sorted
 * array of view indexes; ST_INVALID for a bad set (message in *bad_r). */
enum status imap_mailbox_resolve_set(struct imap_session *s, const char *set, bool uid, size_t **idx_r,
				size_t *n_r, const char **bad_r);
void imap_view_free(struct imap_view **v);
/* The FLAGS list text for a flags word and keywords (space-separated,
 * NULL = none): "(\\Seen \\Deleted $Forwarded)". */
void imap_flags_format(uint32_t flags, const char *keywords, struct buf *out);
/* Parses a flag or a flag list argument: system flags into *flags_r,
 * keywords appended space-separated to kw (validated atoms of at most
 * STORE_KEYWORD_LEN_MAX bytes).  False for an invalid flag. */
bool imap_flags_parse(const struct imap_arg *a, uint32_t *flags_r, struct buf *kw);
/* True when the space-separated keyword list has `word` (case-insensitive). */
bool imap_keywords_have(const char *keywords, const char *word);
/* Index of uid in the view, or -1. */
long imap_view_find(const struct imap_view *v, uint32_t uid);
/* Messages of the view with VIEW_RECENT. */
size_t imap_view_recent(const struct imap_view *v);
/* STATUS RECENT: the first UID of mailbox `mailbox_id` that no session
 * has claimed as recent yet (the messages from it on are recent); false on
 * a store error. */
bool imap_mailbox_recent_count(struct imap_session *s, int64_t mailbox_id, uint32_t *first_r);
/* A modifier list "(NAME value)" with one 63-bit number (CHANGEDSINCE,
 * UNCHANGEDSINCE): false unless `a` is exactly that. */
bool imap_modifier_number(const struct imap_arg *a, const char *name, uint64_t *value_r);
/* A mod-sequence-value atom (0 .. 2^63-1). */
bool imap_modseq_parse(const char *p, uint64_t *value_r);
/* "* VANISHED (EARLIER) uids" for the UIDs of `known` (NULL: every UID
 * the mailbox ever gave) expunged by changes after mod-sequence `since`
 * (RFC 7162 3.2.5.1, 3.2.6); nothing when there are none.  Where the
 * expunge log does not reach back that far, every UID of `known` that is
 * not in the view is reported. */
void imap_mailbox_vanished_earlier(struct imap_session *s, uint64_t since, const struct imap_seqset *known);

/* imap_fetch.c */
void imap_fetch_start(struct imap_session *s, struct imap_cmd *cmd);
void imap_fetch_continue(struct imap_session *s);
void imap_fetch_free(struct imap_fetch **f);

/* imap_binary.c: Content-Transfer-Encoding for BINARY (RFC 3516) */
enum imap_cte { IMAP_CTE_IDENTITY = 0, IMAP_CTE_BASE64, IMAP_CTE_QP, IMAP_CTE_UNKNOWN };
/* The encoding named by a MIME header block [hdr, hdr+len): identity for
 * none, 7bit, 8bit and binary; IMAP_CTE_UNKNOWN for any other token. */
enum imap_cte imap_binary_cte(const char *hdr, size_t len);
enum imap_qp_state { QP_TEXT = 0, QP_EQ, QP_EQ_WS, QP_EQ_CR, QP_EQ_HEX };
/* A streaming decoder: a few bytes of state, any split of the input. */
struct imap_decoder {
	enum imap_cte cte;
	uint32_t acc;                   /* base64: pending bits */
	unsigned bits;
	bool b64_end;                   /* base64: "=" padding seen */
	enum imap_qp_state qp;
	unsigned char hex;              /* QP: first digit of "=XY" */
	char ws[64];                    /* QP: blanks that may end a line */
	size_t n_ws;
};
void imap_decoder_init(struct imap_decoder *d, enum imap_cte cte);
/* Appends the decoding of in[0, len) to out. */
void imap_decoder_feed(struct imap_decoder *d, const char *in, size_t len, struct buf *out);
/* End of input: appends what was held back. */
void imap_decoder_finish(struct imap_decoder *d, struct buf *out);

/* imap_search.c */
void imap_search_run(struct imap_session *s, struct imap_cmd *cmd);
/* "$" (RFC 5182): the view indexes of the saved result's messages still in
 * the view, ascending (malloc'd, never NULL), and their number in *n_r. */
size_t *imap_search_saved_resolve(struct imap_session *s, size_t *n_r);
/* The search engine under SORT and THREAD: the program is evaluated on a
 * store thread and every match handed to `hit` (in UID order), then
 * `finish` runs there too; `reply` writes the untagged response on the
 * loop, before the sync and "<tag> OK <name> completed".  `free` releases
 * ctx in every case, errors included. */
struct imap_search_hit {
	uint32_t uid, seq;
	uint64_t size;
	int64_t received;
	const char *header;             /* raw header block (need_header), else "" */
	size_t header_len;
};
struct imap_search_user {
	const char *name;               /* "SORT", "THREAD" */
	bool need_header;
	void (*hit)(void *ctx, const struct imap_search_hit *h);
	void (*finish)(void *ctx);
	void (*reply)(struct imap_session *s, void *ctx, bool uid);
	void (*free)(void *ctx);
};
/* a[0, n) is "charset search-key...": CHARSET is UTF-8 or US-ASCII, else
 * NO [BADCHARSET]; replies BAD to a bad program.  Submits a store job. */
void imap_search_submit_for(struct imap_session *s, struct imap_cmd *cmd, const struct imap_arg *a, size_t n,
			    const struct imap_search_user *u, void *ctx);

/* imap_sort.c, imap_thread.c: SORT and UID SORT (RFC 5256, 5957), THREAD. */
void imap_sort_run(struct imap_session *s, struct imap_cmd *cmd);
/* RFC 5256 2.2 sent date of a match: its Date: header, else its internal date. */
int64_t imap_sort_sent_date(const struct imap_search_hit *h);
void imap_thread_run(struct imap_session *s, struct imap_cmd *cmd);

/* imap_append.c */
/* A message literal was announced for an APPEND (`first`: the command's
 * first; later ones are MULTIAPPEND's): sets up streaming into a new temp
 * file, or refuses (*refuse_r: "NO ..."/"BAD ..." reply text) and drops the
 * command's earlier messages. */
bool imap_append_literal(struct imap_session *s, uint64_t size, bool first, const char **refuse_r);
void imap_append_data(struct imap_session *s, const char *data, size_t len);
void imap_append_command(struct imap_session *s, struct imap_cmd *cmd);
void imap_append_abort(struct imap_session *s);
/* Reads [off, off+len) of a blob into out; false on error (logged). */
bool imap_blob_read(const char *path, uint64_t off, uint64_t len, struct buf *out);

/* Internal date / date parsing shared by APPEND and SEARCH. */
bool imap_date_parse(const char *s, bool with_time, int64_t *t_r);
void imap_date_format(int64_t t, char out[32]);

#endif
