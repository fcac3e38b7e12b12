/*
 * queue.h - from "message received" to "message durable": spooling and
 * group commit.
 *
 * Owns: the per-transaction spool (struct queue_msg), the blob writer
 * thread pool, and the single committer thread that batches index commits.
 *
 * Life of a message:
 *   smtp session: queue_msg_new -> queue_msg_append ... -> queue_msg_submit
 *   writer pool:  write the message + trailer to <blob_dir>/tmp, fsync,
 *                 close, rename to its final path          (parallel)
 *   committer:    fsync each distinct blob directory once per batch, then
 *                 one index transaction for the whole batch   (group commit)
 *   done callback on the session's event loop with the final status.
 *
 * Durability: the done callback reports ST_OK only after the blob file, its
 * directory entry and the index rows are on stable storage.  On any failure
 * the blob is unlinked and the callback reports a 4xx status: never a 250
 * for something that is not durable, never a visible partial message.
 *
 * Threads: queue_msg_* are called from one network thread (the session's);
 * `done` runs on that thread's event_base.  No disk write or fsync ever runs
 * on a network thread: small messages stay in memory until submit; larger
 * ones are appended to their spool file by the writer pool.
 */
#ifndef STRATA_QUEUE_H
#define STRATA_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "core.h"
#include "store.h"

struct event_base;
struct queue;
struct queue_msg;

/* Starts the writer pool and committer over an open store (the queue then
 * owns the store's thread affinity until queue_stop). */
struct queue *queue_start(const struct settings *s, struct store *st, char **error_r);
/* Stops accepting submissions (a submit from now on gets ST_SHUTDOWN),
 * waits until every open message is submitted or aborted and every submitted
 * message has its done callback scheduled, joins the threads and frees the
 * queue (not the store).  Done callbacks are delivered through the sessions'
 * event loops, so those loops must keep running (or be dispatched once more)
 * after queue_stop returns, before their bases are freed.  Every event_base
 * given to the queue must have been created after evthread_use_pthreads(). */
void queue_stop(struct queue **q);

/* A new spool for one transaction; `base` is the session's event loop. */
struct queue_msg *queue_msg_new(struct queue *q, struct event_base *base);
const char *queue_msg_id(const struct queue_msg *m);  /* 26-char queue id */
/* Appends message bytes (already dot-unstuffed, CRLF line ends).  Never
 * blocks on disk.  Returns ST_TOO_BIG past max_message_size (the rest of
 * the data should then be discarded, and the message not submitted). */
enum status queue_msg_append(struct queue_msg *m, const void *data, size_t len);
uint64_t queue_msg_size(const struct queue_msg *m);
/* Bytes handed to the writer pool but not yet written: the session stops
 * reading from its socket above QUEUE_PENDING_HIGH_WATER and resumes from
 * `drained`, which runs on the message's base once the backlog that exceeded
 * the mark falls below half of it.  `drained` may run when the session did
 * not pause (the writers caught up first); it never runs after submit or
 * abort. */
#define QUEUE_PENDING_HIGH_WATER (1024u * 1024u)
size_t queue_msg_pending_bytes(const struct queue_msg *m);
void queue_msg_set_drained_cb(struct queue_msg *m, void (*drained)(void *arg), void *arg);
/* Records a delivery target: account id and its address (for the trailer).
 * A repeated account id is ignored (an alias and the account itself). */
void queue_msg_add_account(struct queue_msg *m, int64_t account_id, const char *address);
/*
 * Outbound mail (submission).  The envelope sender (may be "" for a null
 * reverse-path) and each remote recipient of the transaction.  At submit the
 * message is stored once as a blob, and one outbound row per remote
 * recipient is inserted in the same index transaction as the local
 * deliveries, so the done callback's ST_OK means every local copy and every
 * outbound row is durable, and a failure leaves none of them.  The relay
 * (relay/) then delivers those rows.  A message may have local accounts,
 * remote recipients or both; a repeated remote address is ignored.
 */
void queue_msg_set_sender(struct queue_msg *m, const char *sender);
void queue_msg_add_remote(struct queue_msg *m, const char *address);
/* `fn(arg)` runs on the committer thread after each group commit that
 * inserted outbound rows (the daemon wakes the relay with it); it must not
 * block.  NULL removes it: the daemon does so before it stops the relay.
 * An address of 320 bytes or more, or an empty remote, makes the submit
 * fail with ST_INVALID (the session validates them first). */
void queue_set_outbound_cb(struct queue *q, void (*fn)(void *arg), void *arg);

/*
 * Hands the message to the writer pool.  Ownership passes to the queue;
 * `done(arg, status, queue_id)` runs exactly once on the message's base.
 * After submit the caller must not touch m.  The status is ST_OK (durable,
 * see above), ST_TOO_BIG (an append was refused), ST_OVER_QUOTA_TEMP/PERM,
 * ST_SHUTDOWN (queue_stop began), ST_INVALID (no account and no remote
 * recipient was added), or a
 * 4xx storage status (ST_NO_SPACE, ST_IO_ERROR, ST_DB_BUSY, ST_TEMPFAIL).
 */
typedef void queue_done_cb(void *arg, enum status st, const char *queue_id);
void queue_msg_submit(struct queue_msg *m, queue_done_cb *done, void *arg);
/* Discards an unsubmitted message and its spool file (never blocks: the
 * unlink is done by the pool).  Sets *m to NULL; NULL is a no-op.  Every
 * message is either submitted or aborted exactly once. */
void queue_msg_abort(struct queue_msg **m);

/* Removes stale temp files left by a crash (called at start, before
 * listening).  A temp file is never referenced by the index. */
void queue_recover(const struct settings *s);

/* ---- store threads for protocol sessions (queue_pool.c) ----------------
 * IMAP and POP3 sessions hand every index write, fsync and password check
 * to a pool of threads with their own store handles, and get the result
 * back on their event loop.  `run` runs on a pool thread; `done` then runs
 * exactly once on `base`'s loop.  The job stays the caller's memory and must
 * live until `done`.  queue_pool_free runs every queued job first (their
 * done callbacks are scheduled: the loops must run once more). */
struct queue_job;
typedef void queue_job_run_fn(struct queue_job *j, struct store *st);
typedef void queue_job_done_fn(struct queue_job *j);
struct queue_job {
	queue_job_run_fn *run;
	queue_job_done_fn *done;
	struct event_base *base;
	struct queue_job *next;      /* the pool's */
};
struct queue_pool;
/* `threads` threads, each with store_open(s, false); `name` prefixes errors. */
struct queue_pool *queue_pool_new(const struct settings *s, size_t threads, const char *name,
				  char **error_r);
void queue_pool_submit(struct queue_pool *p, struct queue_job *j);
void queue_pool_free(struct queue_pool **p);

#endif
