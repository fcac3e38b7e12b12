/*
 * cli_queue.c - `strata queue list | show ID | flush | delete ID`: the
 * outbound queue (mail waiting for delivery to remote hosts, docs/RELAY.md).
 *
 *   list     one line per entry (one per message and remote recipient):
 *            entry id, queue id, size, age, attempts, next attempt, sender
 *            and recipient, then the last error indented; a summary on
 *            stderr.  At most CLI_QUEUE_LIST_MAX entries, soonest first.
 *   show ID  every field of one entry (ID a number), or of every entry of
 *            a message (ID its 26-character queue id, as in "250 2.0.0 Ok:
 *            queued as ..." and the log).
 *   flush    makes every entry due now; a running daemon's relay picks them
 *            up within a second (it looks at the queue every second).
 *   delete   removes an entry or every entry of a message, without a bounce
 *            (the operator's decision); their blob references go with them.
 *
 * All of them work on the index directly, beside a running daemon (SQLite
 * serialises the writers).  An entry the relay is delivering while it is
 * deleted may still be delivered once.
 */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CLI_QUEUE_LIST_MAX 10000

static void print_entry_line(const struct store_outbound *o, int64_t now)
{
	char qid[MSGID_TEXT_LEN + 1], size[32], next[64];
	msgid_format(&o->msgid, qid);
	cli_format_size(o->size, size, sizeof(size));
	if (o->next_attempt <= now)
		snprintf(next, sizeof(next), "now");
	else
		snprintf(next, sizeof(next), "in %llds", (long long)(o->next_attempt - now));
	char from[400], to[400];
	log_escape(o->sender, strlen(o->sender), from, sizeof(from));
	log_escape(o->recipient, strlen(o->recipient), to, sizeof(to));
	printf("%-8lld %s %10s age %llds tries %u next %s <%s> -> <%s>\n", (long long)o->id, qid, size,
	       (long long)(now - o->created), o->attempts, next, from, to);
	if (o->last_error[0] != '\0') {
		char err[STORE_OUTBOUND_ERROR_MAX * 4 + 1];
		log_escape(o->last_error, strlen(o->last_error), err, sizeof(err));
		printf("         %s\n", err);
	}
}

static void print_entry_full(const struct store_outbound *o)
{
	char qid[MSGID_TEXT_LEN + 1], created[64], next[64], received[64];
	msgid_format(&o->msgid, qid);
	cli_format_time(o->created, created, sizeof(created));
	cli_format_time(o->next_attempt, next, sizeof(next));
	cli_format_time(o->received, received, sizeof(received));
	char from[400], to[400], err[STORE_OUTBOUND_ERROR_MAX * 4 + 1];
	log_escape(o->sender, strlen(o->sender), from, sizeof(from));
	log_escape(o->recipient, strlen(o->recipient), to, sizeof(to));
	log_escape(o->last_error, strlen(o->last_error), err, sizeof(err));
	printf("entry:        %lld\n"
	       "queue id:     %s\n"
	       "size:         %llu\n"
	       "received:     %s\n"
	       "sender:       <%s>\n"
	       "recipient:    <%s>\n"
	       "queued:       %s\n"
	       "attempts:     %u\n"
	       "next attempt: %s\n"
	       "last error:   %s\n",
	       (long long)o->id, qid, (unsigned long long)o->size, received, from, to, created, o->attempts, next,
	       err[0] ? err : "-");
}

/* The entries ID names: a row id, or a queue id (every row of it). */
static int queue_lookup(struct cli *c, const char *id, struct store_outbound **rows_r, size_t *n_r)
{
	char *err = NULL;
	struct msgid mid;
	uint64_t row;
	enum status st;
	*rows_r = NULL;
	*n_r = 0;
	if (strlen(id) == MSGID_TEXT_LEN && msgid_parse(id, &mid)) {
		st = store_outbound_by_msgid(c->st, &mid, rows_r, n_r, &err);
		if (st == ST_OK && *n_r == 0)
			return cli_error("no queue entry for message %s", id);
	} else if (str_parse_u64(id, &row) && row > 0 && row <= (uint64_t)INT64_MAX) {
		*rows_r = xcalloc(1, sizeof(**rows_r));
		st = store_outbound_get(c->st, (int64_t)row, *rows_r, &err);
		if (st == ST_OK)
			*n_r = 1;
	} else {
		return cli_usage_error(c, "'%s' is neither an entry number nor a queue id", id);
	}
	if (st != ST_OK) {
		int rc = cli_error("%s", err ? err : status_info(st)->name);
		free(err);
		free(*rows_r);
		*rows_r = NULL;
		return rc;
	}
	return CLI_OK;
}

static int queue_list(struct cli *c)
{
	if (!cli_args(c, NULL, 0, 0, 0, ""))
		return CLI_USAGE;
	if (!cli_open_store(c))
		return CLI_ERROR;
	struct store_outbound *rows = NULL;
	size_t n = 0;
	uint64_t total = 0;
	char *err = NULL;
	if (store_outbound_due(c->st, -1, NULL, CLI_QUEUE_LIST_MAX, &rows, &n, &err) != ST_OK ||
	    store_outbound_count(c->st, &total, &err) != ST_OK) {
		free(rows);
		int rc = cli_error("queue: %s", err ? err : "cannot read the queue");
		free(err);
		return rc;
	}
	int64_t now = (int64_t)time(NULL);
	for (size_t i = 0; i < n; i++)
		print_entry_line(&rows[i], now);
	free(rows);
	fflush(stdout);
	if (total > n)
		fprintf(stderr, "strata: %llu entries in the queue, the first %zu shown\n", (unsigned long long)total, n);
	else
		fprintf(stderr, "strata: %llu entr%s in the queue\n", (unsigned long long)total, total == 1 ? "y" : "ies");
	return CLI_OK;
}

static int queue_show(struct cli *c)
{
	if (!cli_args(c, NULL, 0, 1, 1, "ID"))
		return CLI_USAGE;
	if (!cli_open_store(c))
		return CLI_ERROR;
	struct store_outbound *rows = NULL;
	size_t n = 0;
	int rc = queue_lookup(c, c->pos[0], &rows, &n);
	for (size_t i = 0; rc == CLI_OK && i < n; i++) {
		if (i > 0)
			printf("\n");
		print_entry_full(&rows[i]);
	}
	free(rows);
	return rc;
}

static int queue_flush(struct cli *c)
{
	if (!cli_args(c, NULL, 0, 0, 0, ""))
		return CLI_USAGE;
	if (!cli_open_store(c))
		return CLI_ERROR;
	size_t n = 0;
	char *err = NULL;
	if (store_outbound_flush(c->st, (int64_t)time(NULL), &n, &err) != ST_OK) {
		int rc = cli_error("queue flush: %s", err ? err : "failed");
		free(err);
		return rc;
	}
	printf("%zu deferred entr%s due now\n", n, n == 1 ? "y" : "ies");
	return CLI_OK;
}

static int queue_delete(struct cli *c)
{
	if (!cli_args(c, NULL, 0, 1, 1, "ID"))
		return CLI_USAGE;
	if (!cli_open_store(c))
		return CLI_ERROR;
	struct store_outbound *rows = NULL;
	size_t n = 0;
	int rc = queue_lookup(c, c->pos[0], &rows, &n);
	if (rc != CLI_OK)
		return rc;
	int64_t *ids = xcalloc(n, sizeof(*ids));
	for (size_t i = 0; i < n; i++)
		ids[i] = rows[i].id;
	free(rows);
	size_t removed = 0;
	char *err = NULL;
	if (store_outbound_remove(c->st, ids, n, &removed, &err) != ST_OK) {
		rc = cli_error("queue delete: %s", err ? err : "failed");
		free(err);
	} else {
		printf("%zu entr%s deleted\n", removed, removed == 1 ? "y" : "ies");
	}
	free(ids);
	return rc;
}

int cli_cmd_queue(struct cli *c)
{
	if (c->n_args == 0)
		return cli_usage_error(c, "missing subcommand");
	const char *sub = c->args[0];
	if (strcmp(sub, "list") == 0)
		return queue_list(c);
	if (strcmp(sub, "show") == 0)
		return queue_show(c);
	if (strcmp(sub, "flush") == 0)
		return queue_flush(c);
	if (strcmp(sub, "delete") == 0)
		return queue_delete(c);
	return cli_usage_error(c, "unknown subcommand '%s'", sub);
}
