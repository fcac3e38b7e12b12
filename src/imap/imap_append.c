/*
 * imap_append.c - APPEND (RFC 3501 6.3.11) with UIDPLUS's APPENDUID.
 *
 * The message literal is streamed, never held in memory: the session's
 * reader hands its bytes out (IMAP_RD_STREAM) and they are written to a
 * temp file under <blob_dir>/tmp as they arrive, with the BLAKE2b-256 hash
 * computed on the way.  Reading pauses at the input watermark, so a 20 MB
 * APPEND costs the server a few hundred KiB.  Plain write()s to the page
 * cache happen on the loop thread; nothing there waits for the disk.
 *
 * When the command line is complete a store job (pool thread) finishes the
 * blob exactly like the queue does - trailer (store_blob_trailer), fsync,
 * checked close, mkdir -p of its directory, rename, directory fsync (with
 * store.fsync=yes) - computes the blob's MIME structure (src/mime, for
 * FETCH's cache), and only then inserts the index rows with it
 * (store_imap_append).  OK is sent from the job's completion, so an OK
 * APPEND is durable.  Any failure removes the file: no orphan, no partial
 * message ever visible.
 *
 * Threads: literal handling on the loop; append_run on a pool thread.
 */
#include "imap_int.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "mime.h"

#define APPEND_HASH_BYTES 32

struct imap_append {
	int fd;
	char tmp_path[PATH_MAX];
	struct msgid id;
	uint64_t size;
	uint64_t written;
	int err;                       /* first write error */
	crypto_generichash_state hash;
};

void imap_append_abort(struct imap_session *s)
{
	struct imap_append *a = s->append;
	if (a == NULL)
		return;
	if (a->fd >= 0)
		close(a->fd);
	if (unlink(a->tmp_path) != 0 && errno != ENOENT)
		log_warn("imap: cannot remove %s: %s", a->tmp_path, strerror(errno));
	sodium_memzero(&a->hash, sizeof(a->hash));
	free(a);
	s->append = NULL;
}

bool imap_append_literal(struct imap_session *s, uint64_t size, const char **refuse_r)
{
	if (s->state != IS_AUTH && s->state != IS_SELECTED) {
		*refuse_r = "BAD APPEND not allowed before login";
		return false;
	}
	if (size == 0) {
		*refuse_r = "NO Empty message";
		return false;
	}
	if (size > s->set->imap_max_message_size) {
		*refuse_r = "NO [TOOBIG] Message too large";
		return false;
	}
	imap_append_abort(s);
	struct imap_append *a = xcalloc(1, sizeof(*a));
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/tmp", s->set->store_blob_dir);
	a->fd = fs_open_temp(dir, a->tmp_path, sizeof(a->tmp_path));
	if (a->fd < 0) {
		log_error("imap: cannot create a temp file in %s: %s", dir, strerror(errno));
		free(a);
		*refuse_r = "NO [UNAVAILABLE] Cannot store the message now";
		return false;
	}
	msgid_new(&a->id);
	a->size = size;
	if (crypto_generichash_init(&a->hash, NULL, 0, APPEND_HASH_BYTES) != 0)
		panic("crypto_generichash_init failed");
	s->append = a;
	return true;
}

void imap_append_data(struct imap_session *s, const char *data, size_t len)
{
	struct imap_append *a = s->append;
	if (a == NULL || len == 0)
		return;
	crypto_generichash_update(&a->hash, (const unsigned char *)data, len);
	a->written += len;
	if (a->err != 0)
		return;
	errno = 0;
	if (!fs_write_all(a->fd, data, len))
		a->err = errno ? errno : EIO;
}

/* ---- the job ----------------------------------------------------------------------- */

struct append_job {
	struct imap_job j;
	struct imap_append *a;          /* owned by the job now */
	const struct settings *set;
	int64_t account_id;
	char address[320];
	char mailbox[STORE_MAILBOX_NAME_MAX + 1];
	uint32_t flags;
	char *keywords;                 /* space-separated, NULL = none */
	int64_t received;
	char hash_hex[65];
	bool trycreate;
	uint32_t uid, uidvalidity;
};

/* Trailer, fsync, close, rename into place.  Returns false with errno. */
static bool finish_blob(struct append_job *aj, char *final, size_t final_len)
{
	struct imap_append *a = aj->a;
	char addrs[1][320];
	snprintf(addrs[0], sizeof(addrs[0]), "%s", aj->address);
	struct blob_meta meta = { .id = a->id, .received = aj->received, .size = a->size,
				  .n_rcpts = 1, .rcpt_addresses = addrs };
	memcpy(meta.hash_hex, aj->hash_hex, sizeof(meta.hash_hex));
	/* The target mailbox (normalised by store_imap_mailbox_name at parse
	 * time), so an index rebuild files the message where it was appended. */
	snprintf(meta.mailbox, sizeof(meta.mailbox), "%s", aj->mailbox);
	struct buf t = BUF_INIT;
	store_blob_trailer(&meta, &t);
	bool ok = fs_write_all(a->fd, t.data, t.len);
	buf_free(&t);
	if (!ok || (aj->set->store_fsync && !fs_fsync(a->fd)))
		return false;
	int fd = a->fd;
	a->fd = -1;
	if (!fs_close(fd))
		return false;
	char dir[PATH_MAX];
	store_blob_dir_of(aj->set->store_blob_dir, &a->id, dir, sizeof(dir));
	store_blob_path(aj->set->store_blob_dir, &a->id, final, final_len);
	if (!fs_mkdir_p(dir, 0750))
		return false;
	if (aj->set->store_fsync)
		return fs_rename_durable(a->tmp_path, final);
	int err = fs_fault_check(FS_OP_RENAME);
	if (err != 0) {
		errno = err;
		return false;
	}
	return rename(a->tmp_path, final) == 0;
}

static void append_run(struct imap_job *j, struct store *st)
{
	struct append_job *aj = (struct append_job *)j;
	struct imap_append *a = aj->a;
	struct store_mailbox_info mb;
	j->status = store_imap_mailbox_get(st, aj->account_id, aj->mailbox, false, &mb);
	if (j->status == ST_NOT_FOUND || j->status == ST_INVALID) {
		aj->trycreate = true;
		j->status = ST_NOT_FOUND;
		return;
	}
	if (j->status != ST_OK)
		return;
	char final[PATH_MAX];
	errno = 0;
	if (!finish_blob(aj, final, sizeof(final))) {
		int err = errno ? errno : EIO;
		j->status = status_from_errno(err);
		if (j->status == ST_OK)
			j->status = ST_IO_ERROR;
		j->error = xasprintf("writing the message: %s", strerror(err));
		return;
	}
	a->tmp_path[0] = '\0'; /* renamed: nothing left to remove there */
	/* MIME hook: the FETCH cache row is computed here, on the pool thread,
	 * and committed with the message; without it FETCH computes it later. */
	struct mime_summary sum;
	char *merr = NULL;
	bool have_mime = mime_parse_file(final, a->size, &sum, &merr) == ST_OK;
	if (!have_mime) {
		log_warn("imap: MIME structure not cached: %s", merr);
		free(merr);
	}
	struct store_mime row = { sum.envelope, sum.bodystructure, sum.body, sum.parts, sum.parts_len };
	j->status = store_imap_append(st, aj->account_id, mb.id, &a->id, a->size, aj->received, aj->flags,
				      aj->keywords, have_mime ? &row : NULL, &aj->uid, &aj->uidvalidity, &j->error);
	mime_summary_free(&sum);
	/* An I/O error from the index may have come from the WAL fsync at
	 * COMMIT, in which case SQLite can still replay the row at the next
	 * open: keep the blob then (at worst an orphan, never a row without its
	 * file).  Any other failure wrote nothing: remove it, durably. */
	if (j->status == ST_OK || j->status == ST_IO_ERROR)
		return;
	if (unlink(final) == 0) {
		char dir[PATH_MAX];
		fs_dirname(final, dir, sizeof(dir));
		if (!fs_fsync_dir(dir))
			log_warn("imap: fsync of %s after removal failed: %s", dir, strerror(errno));
	} else if (errno != ENOENT) {
		log_error("imap: cannot remove %s: %s", final, strerror(errno));
	}
}

static void append_done(struct imap_job *j)
{
	struct append_job *aj = (struct append_job *)j;
	struct imap_session *s = j->s;
	if (imap_session_job_finished(s)) {
		if (s->state == IS_SELECTED)
			imap_mailbox_sync(s, true);
		if (j->status == ST_OK) {
			imap_session_tagged(s, "OK", "[APPENDUID %u %u] APPEND completed", aj->uidvalidity, aj->uid);
		} else if (aj->trycreate) {
			imap_session_tagged(s, "NO", "[TRYCREATE] Mailbox does not exist");
		} else if (j->status == ST_INVALID) {
			/* valid flags refused: the mailbox's keyword limit */
			imap_session_tagged(s, "NO", "[LIMIT] %s", j->error ? j->error : "Too many keywords");
		} else {
			if (j->error)
				log_warn("imap: APPEND for %s failed: %s", s->user, j->error);
			imap_command_reply_status(s, j->status, "APPEND failed");
		}
		imap_session_job_end(s);
	}
	struct imap_append *a = aj->a;
	if (a->fd >= 0)
		close(a->fd);
	if (a->tmp_path[0] != '\0' && unlink(a->tmp_path) != 0 && errno != ENOENT)
		log_warn("imap: cannot remove %s: %s", a->tmp_path, strerror(errno));
	free(a);
	free(j->error);
	free(aj->keywords);
	free(aj);
}

void imap_append_command(struct imap_session *s, struct imap_cmd *cmd)
{
	size_t n = cmd->n_args;
	const struct imap_arg *msg = n > 0 ? &cmd->args[n - 1] : NULL;
	if (n < 2 || n > 4 || !imap_arg_is_string(&cmd->args[0]) || msg->type != IMAP_ARG_LITERAL) {
		imap_append_abort(s);
		imap_session_bad(s, cmd->tag, "APPEND takes a mailbox, optional flags and date, and a literal");
		return;
	}
	char mailbox[STORE_MAILBOX_NAME_MAX + 1];
	if (strlen(cmd->args[0].str) != cmd->args[0].len || !store_imap_mailbox_name(cmd->args[0].str, mailbox)) {
		imap_append_abort(s);
		imap_session_tagged(s, "NO", "[TRYCREATE] Mailbox does not exist");
		return;
	}
	uint32_t flags = 0;
	struct buf kw = BUF_INIT;
	int64_t received = (int64_t)time(NULL);
	for (size_t i = 1; i + 1 < n; i++) {
		const struct imap_arg *a = &cmd->args[i];
		if (a->type == IMAP_ARG_LIST && i == 1) {
			if (!imap_flags_parse(a, &flags, &kw)) {
				imap_append_abort(s);
				imap_session_bad(s, cmd->tag, "Invalid flags");
				buf_free(&kw);
				return;
			}
		} else if (a->type == IMAP_ARG_QUOTED && imap_date_parse(a->str, true, &received)) {
			continue;
		} else {
			imap_append_abort(s);
			imap_session_bad(s, cmd->tag, "Invalid APPEND argument");
			buf_free(&kw);
			return;
		}
	}
	if (msg->str != NULL) {
		/* Not streamed (the literal came before we knew it was APPEND's
		 * message): it is small, write it now. */
		const char *refuse = NULL;
		if (!imap_append_literal(s, msg->len, &refuse)) {
			struct buf t = BUF_INIT;
			buf_printf(&t, "%s %s\r\n", cmd->tag, refuse);
			imap_session_write(s, t.data, t.len);
			buf_free(&t);
			buf_free(&kw);
			return;
		}
		imap_append_data(s, msg->str, msg->len);
	}
	struct imap_append *a = s->append;
	if (a == NULL || a->written != a->size) {
		imap_append_abort(s);
		imap_session_tagged(s, "NO", "[UNAVAILABLE] Message data incomplete");
		buf_free(&kw);
		return;
	}
	if (a->err != 0) {
		enum status st = status_from_errno(a->err);
		log_error("imap: writing an APPEND for %s: %s", s->user, strerror(a->err));
		imap_append_abort(s);
		imap_command_reply_status(s, st == ST_OK ? ST_IO_ERROR : st, "Cannot store the message");
		buf_free(&kw);
		return;
	}
	struct append_job *aj = xcalloc(1, sizeof(*aj));
	unsigned char digest[APPEND_HASH_BYTES];
	crypto_generichash_final(&a->hash, digest, sizeof(digest));
	sodium_bin2hex(aj->hash_hex, sizeof(aj->hash_hex), digest, sizeof(digest));
	aj->a = a;
	s->append = NULL;
	aj->set = s->set;
	aj->account_id = s->account_id;
	snprintf(aj->address, sizeof(aj->address), "%s", s->user);
	memcpy(aj->mailbox, mailbox, sizeof(mailbox));
	aj->flags = flags;
	aj->keywords = kw.len > 0 ? buf_steal(&kw) : NULL;
	buf_free(&kw);
	aj->received = received;
	aj->j.run = append_run;
	aj->j.done = append_done;
	imap_session_submit(s, &aj->j);
}
