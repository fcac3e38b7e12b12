/*
 * imap_pool.c - IMAP jobs on the store threads.
 *
 * The threads themselves are queue.h's store thread pool (queue_pool.c,
 * shared with POP3): every blocking call an IMAP command needs (fsync,
 * COMMIT, Argon2 password verification, body search) runs there, never on
 * a network thread.  This file only adapts struct imap_job to it.
 */
#include "imap_int.h"

#include <stddef.h>

static struct imap_job *job_of(struct queue_job *qj)
{
	return (struct imap_job *)(void *)((char *)qj - offsetof(struct imap_job, qj));
}

static void job_run(struct queue_job *qj, struct store *st)
{
	struct imap_job *j = job_of(qj);
	j->run(j, st);
}

static void job_done(struct queue_job *qj)
{
	struct imap_job *j = job_of(qj);
	j->done(j);
}

void imap_pool_submit(struct queue_pool *p, struct imap_job *j)
{
	j->qj.run = job_run;
	j->qj.done = job_done;
	j->qj.base = j->base;
	queue_pool_submit(p, &j->qj);
}
