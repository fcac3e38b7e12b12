/*
 * cli_mail.c - `strata mailbox list`, `strata mail list|cat`: reading an
 * account's mailboxes and messages from the index and the blob files.
 *
 * `mail cat` writes exactly the message bytes: a blob file holds the
 * message followed by Strata's metadata trailer (store.h), so the file is
 * read up to the size the index records and no further.  A blob shorter
 * than that is reported as damage, never padded or truncated silently.
 * Reading is bounded by that size and done in 64 KiB chunks.
 */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void print_mailbox(void *ctx, const char *name, const char *special_use, uint32_t uidvalidity,
			  uint32_t uidnext, uint64_t messages)
{
	size_t *rows = ctx;
	if (*rows == 0)
		printf("%-30s %-12s %12s %10s %10s\n", "NAME", "SPECIAL-USE", "UIDVALIDITY", "UIDNEXT", "MESSAGES");
	printf("%-30s %-12s %12u %10u %10llu\n", name, special_use && special_use[0] ? special_use : "-",
	       uidvalidity, uidnext, (unsigned long long)messages);
	(*rows)++;
}

static int mailbox_list(struct cli *c)
{
	if (!cli_args(c, NULL, 0, 1, 1, "address"))
		return CLI_USAGE;
	if (!cli_open_store(c))
		return CLI_ERROR;
	size_t rows = 0;
	enum status st = store_mailbox_list(c->st, c->pos[0], print_mailbox, &rows);
	if (st == ST_NOT_FOUND)
		return cli_error("no such account: %s", c->pos[0]);
	if (st != ST_OK)
		return cli_error("cannot list mailboxes: %s", status_info(st)->smtp_text);
	return CLI_OK;
}

int cli_cmd_mailbox(struct cli *c)
{
	if (c->n_args == 0)
		return cli_usage_error(c, "missing subcommand");
	if (strcmp(c->args[0], "list") == 0)
		return mailbox_list(c);
	return cli_usage_error(c, "unknown subcommand 'mailbox %s'", c->args[0]);
}

static void flags_text(uint32_t f, char *out, size_t outlen)
{
	static const struct { uint32_t bit; const char *name; } names[] = {
		{ MSG_FLAG_SEEN, "\\Seen" }, { MSG_FLAG_ANSWERED, "\\Answered" },
		{ MSG_FLAG_FLAGGED, "\\Flagged" }, { MSG_FLAG_DELETED, "\\Deleted" },
		{ MSG_FLAG_DRAFT, "\\Draft" },
	};
	size_t n = 0;
	out[0] = '\0';
	for (size_t i = 0; i < ARRAY_LEN(names); i++) {
		if (f & names[i].bit) {
			int w = snprintf(out + n, outlen - n, "%s%s", n ? " " : "", names[i].name);
			if (w < 0 || (size_t)w >= outlen - n)
				break;
			n += (size_t)w;
		}
	}
	if (n == 0)
		snprintf(out, outlen, "-");
}

static void print_message(void *ctx, const struct message_row *m)
{
	size_t *rows = ctx;
	char id[MSGID_TEXT_LEN + 1], date[64], flags[64];
	msgid_format(&m->id, id);
	cli_format_time(m->received, date, sizeof(date));
	flags_text(m->flags, flags, sizeof(flags));
	if (*rows == 0)
		printf("%10s  %-26s %10s  %-25s %s\n", "UID", "ID", "SIZE", "DATE", "FLAGS");
	printf("%10u  %-26s %10llu  %-25s %s\n", m->uid, id, (unsigned long long)m->size, date, flags);
	(*rows)++;
}

static int mail_list(struct cli *c)
{
	if (!cli_args(c, NULL, 0, 1, 2, "address"))
		return CLI_USAGE;
	if (!cli_open_store(c))
		return CLI_ERROR;
	const char *mailbox = c->n_pos > 1 ? c->pos[1] : "INBOX";
	size_t rows = 0;
	enum status st = store_mailbox_list_messages(c->st, c->pos[0], mailbox, print_message, &rows);
	if (st == ST_NOT_FOUND)
		return cli_error("no such account or mailbox: %s %s", c->pos[0], mailbox);
	if (st != ST_OK)
		return cli_error("cannot list messages: %s", status_info(st)->smtp_text);
	if (rows == 0)
		fprintf(stderr, "strata: %s of %s is empty\n", mailbox, c->pos[0]);
	return CLI_OK;
}

static bool write_all_stdout(const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(STDOUT_FILENO, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return false;
		}
		p += w;
		n -= (size_t)w;
	}
	return true;
}

/* Copies the first `size` bytes of fd (the file at path) to stdout. */
static int copy_message(int fd, const char *path, uint64_t size)
{
	char *chunk = xmalloc(65536);
	uint64_t done = 0;
	int rc = CLI_OK;
	fflush(stdout);
	while (done < size) {
		size_t want = size - done < 65536 ? (size_t)(size - done) : 65536;
		ssize_t r = pread(fd, chunk, want, (off_t)done);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = cli_error("cannot read %s: %s", path, strerror(errno));
			break;
		}
		if (r == 0) {
			rc = cli_error("message file %s is shorter than the index says (%llu of %llu bytes)", path,
				       (unsigned long long)done, (unsigned long long)size);
			break;
		}
		if (!write_all_stdout(chunk, (size_t)r)) {
			if (errno != EPIPE)
				rc = cli_error("cannot write the message: %s", strerror(errno));
			else
				rc = CLI_ERROR; /* reader went away (e.g. `| head`): quietly */
			break;
		}
		done += (uint64_t)r;
	}
	free(chunk);
	close(fd);
	return rc;
}

static int mail_cat(struct cli *c)
{
	if (!cli_args(c, NULL, 0, 2, 3, "address and UID"))
		return CLI_USAGE;
	uint64_t uid;
	if (!str_parse_u64(c->pos[1], &uid) || uid == 0 || uid > UINT32_MAX)
		return cli_usage_error(c, "'%s' is not a message UID", c->pos[1]);
	if (!cli_open_store(c))
		return CLI_ERROR;
	const char *mailbox = c->n_pos > 2 ? c->pos[2] : "INBOX";
	char path[4096];
	uint64_t size = 0;
	/* The tier mover may move the file between the index lookup and the
	 * open: then the index already names the new place, so look again. */
	int fd = -1;
	for (int attempt = 0; fd < 0 && attempt < 3; attempt++) {
		enum status st = store_message_path(c->st, c->pos[0], mailbox, (uint32_t)uid, path,
						    sizeof(path), &size);
		if (st == ST_NOT_FOUND)
			return cli_error("no message %llu in %s of %s", (unsigned long long)uid, mailbox,
					 c->pos[0]);
		if (st != ST_OK)
			return cli_error("cannot find the message: %s", status_info(st)->smtp_text);
		const char *base = strrchr(path, '/');
		struct msgid id;
		if (!msgid_parse(base ? base + 1 : path, &id))
			return cli_error("cannot find the message: bad blob name %s", path);
		fd = store_blob_open(c->s, 0, &id, NULL); /* any tier; decompressed */
		if (fd < 0 && errno != ENOENT)
			break;
	}
	if (fd < 0)
		return cli_error("cannot open the message file %s: %s", path, strerror(errno));
	signal(SIGPIPE, SIG_IGN); /* EPIPE instead of a silent death mid-copy */
	return copy_message(fd, path, size);
}

int cli_cmd_mail(struct cli *c)
{
	if (c->n_args == 0)
		return cli_usage_error(c, "missing subcommand");
	if (strcmp(c->args[0], "list") == 0)
		return mail_list(c);
	if (strcmp(c->args[0], "cat") == 0)
		return mail_cat(c);
	return cli_usage_error(c, "unknown subcommand 'mail %s'", c->args[0]);
}
