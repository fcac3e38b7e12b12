/*
 * queue_internal.h - what queue_spool.c and queue_commit.c share.
 *
 * Not a public header: nothing outside src/queue/ includes it.
 *
 * Threads and who may touch what:
 *  - struct queue: immutable after queue_start except the fields grouped
 *    under a mutex, which are read and written only with that mutex held.
 *    Lock order (never taken in the other direction):
 *        queue_msg.mu  ->  queue.pool_mu / queue.commit_mu / queue.mu
 *    (the three queue mutexes are never held together).
 *  - struct queue_msg: fields are grouped by the thread that owns them.
 *    The hand-offs (session -> pool -> committer -> done callback) happen
 *    through a mutex, so each owner sees its predecessor's writes.
 *
 * Lifetime of a queue_msg: reference counted under msg.mu.  References:
 *    one for the session (queue_msg_new .. submit or abort), which submit
 *    turns into the delivery's reference, dropped by the done trampoline;
 *    one while the message sits in the writer pool's run queue or a
 *    writer works on it; one per scheduled drained callback.
 * The last reference frees it (msg_unref), on whichever thread that is.
 * Once its done callback is scheduled, a message never touches the queue
 * again, so queue_stop may free the queue while callbacks are still pending
 * on the network threads' event loops.
 */
#ifndef STRATA_QUEUE_INTERNAL_H
#define STRATA_QUEUE_INTERNAL_H

#include <event2/event.h>
#include <pthread.h>
#include <sodium.h>

#include "queue.h"

/* Bytes kept in memory before a message is spilled to its temp file. */
#define QUEUE_SPILL_THRESHOLD (256u * 1024u)
/* Size of each later chunk handed to the pool once spilled. */
#define QUEUE_SPILL_CHUNK (64u * 1024u)
/* Mode of the directories the queue creates, as the store makes the blob tree. */
#define QUEUE_DIR_MODE 0750

struct queue {
	const struct settings *s;
	struct store *st;        /* committer thread only */
	char *tmp_dir;           /* <blob_dir>/tmp */

	/* lifecycle; guarded by mu */
	pthread_mutex_t mu;
	pthread_cond_t idle_cv;  /* signalled when open_msgs or inflight drop */
	bool stopping;           /* queue_stop began: submits get ST_SHUTDOWN */
	size_t open_msgs;        /* created, not yet submitted or aborted */
	size_t inflight;         /* submitted, done callback not yet scheduled */

	/* writer pool; guarded by pool_mu */
	pthread_mutex_t pool_mu;
	pthread_cond_t pool_cv;
	struct queue_msg *run_head, *run_tail;
	bool pool_stop;
	pthread_t *writers;
	size_t n_writers;        /* threads actually started */

	/* committer; guarded by commit_mu */
	pthread_mutex_t commit_mu;
	pthread_cond_t commit_cv;
	struct queue_msg *commit_head, *commit_tail;
	bool commit_stop;
	bool committer_started;
	/* called after a batch that inserted outbound rows (queue_set_outbound_cb) */
	void (*outbound_cb)(void *arg);
	void *outbound_arg;
	pthread_t committer;
	/* committer-thread scratch, store_commit_batch entries each */
	struct queue_msg **batch;
	struct queue_msg **by_dir;
	struct store_delivery **dp;
};

enum spool_op_kind {
	SPOOL_OP_WRITE,    /* append data to the temp file */
	SPOOL_OP_FINALIZE, /* last bytes + trailer, fsync, close, rename, to committer */
	SPOOL_OP_ABORT,    /* close and unlink the temp file */
};

struct spool_op {
	enum spool_op_kind kind;
	char *data;        /* owned; NULL when len == 0 */
	size_t len;
	struct spool_op *next;
};

struct queue_msg {
	/* first member: libsodium wants it 64-byte aligned (msg is allocated so) */
	crypto_generichash_state hash;

	struct queue *q;          /* not used once the done callback is scheduled */
	struct event_base *base;
	struct msgid id;
	char idtext[MSGID_TEXT_LEN + 1];

	/* session thread, until submit or abort */
	struct buf mem;           /* bytes not yet handed to the pool */
	uint64_t size;            /* message bytes appended so far */
	bool spilled;             /* the pool has (or will have) a temp file */
	bool too_big;
	size_t n_accounts, cap_accounts;
	int64_t *account_ids;     /* deduplicated */
	char (*addresses)[320];
	char sender[320];         /* envelope sender of outbound mail; "" = null */
	size_t n_remotes, cap_remotes;
	char (*remotes)[320];     /* deduplicated remote recipients */
	bool bad_remote;          /* an address did not fit: submit fails */
	/* set at submit, read by the done trampoline */
	queue_done_cb *done;
	void *done_arg;
	int64_t received;
	char hash_hex[65];

	/* guarded by mu */
	pthread_mutex_t mu;
	unsigned refs;
	struct spool_op *ops_head, *ops_tail;
	bool scheduled;           /* in the run queue or being run by a writer */
	bool owned;               /* the session still holds it */
	bool discard;             /* aborted or too big: writes are pointless */
	size_t pending;           /* bytes in ops not yet written */
	bool over_hwm;            /* pending exceeded the high-water mark */
	bool drained_scheduled;
	void (*drained)(void *arg);
	void *drained_arg;

	/* writer pool: one writer at a time (msg.scheduled serialises them) */
	int fd;
	char *tmp_path;
	int io_err;               /* first errno of a failed write; 0 = none */
	char *final_path;
	char *final_dir;
	/* The blob's MIME structure, computed by the writer once the blob is
	 * at its final path (queue_spool.c) and stored by the committer with
	 * the blob row.  All NULL when it could not be computed. */
	struct store_mime mime;

	/* committer (and the done trampoline) */
	enum status status;
	bool commit_uncertain;    /* the index commit failed with an I/O error:
				   * it may still be replayed from the WAL, so
				   * the blob is kept (queue_commit.c) */
	bool counted;             /* counted in q->inflight and M_QUEUE_PENDING */
	struct store_delivery deliv;
	uint32_t *uids;

	struct queue_msg *run_next;    /* pool run queue link */
	struct queue_msg *commit_next; /* committer queue link */
};

/* queue_spool.c */
bool spool_pool_start(struct queue *q, char **error_r);
void spool_pool_stop(struct queue *q);
void msg_unref(struct queue_msg *m);

/* queue_commit.c */
/* Hands a message whose blob is at its final path to the committer. */
void commit_enqueue(struct queue *q, struct queue_msg *m);
/* Reports the final status: schedules the done callback on the message's
 * base and releases the queue's accounting.  The caller must not touch m
 * afterwards (it may already be freed). */
void msg_finish(struct queue_msg *m, enum status st);
/* Runs `fn(m)` on m's event loop; panics when libevent cannot allocate. */
void msg_schedule_on_base(struct queue_msg *m, event_callback_fn fn);
/* Starts threads with every signal blocked (the main thread handles them). */
bool queue_thread_start(pthread_t *t, void *(*fn)(void *), void *arg, const char *name,
			char **error_r);
const char *queue_strerror(int err);

#endif
