/*
 * imap_append.c - APPEND (RFC 3501 6.3.11) with UIDPLUS's APPENDUID,
 * MULTIAPPEND (RFC 3502) and BINARY's literal8 "~{n}" (RFC 3516).
 *
 * Message literals are streamed, never held in memory: the session's
 * reader hands their bytes out (IMAP_RD_STREAM) and they are written to a
 * temp file under <blob_dir>/tmp as they arrive, one file per message,
 * with the BLAKE2b-256 hash computed on the way.  Reading pauses at the
 * input watermark, so a 20 MB APPEND costs the server a few hundred KiB.
 * Plain write()s to the page cache happen on the loop thread; nothing
 * there waits for the disk.  A literal8 carries the message as it is
 * (binary, NUL bytes included): it is stored unchanged.
 *
 * When the command line is complete a store job (pool thread) finishes
 * each blob exactly like the queue does - trailer (store_blob_trailer),
 * fsync, checked close, mkdir -p of its directory, rename, directory fsync
 * (with store.fsync=yes) - computes its MIME structure (src/mime, for
 * FETCH's cache), and only then inserts the index rows of ALL the messages
 * in one transaction (store_imap_append_many): MULTIAPPEND is all or
 * nothing (RFC 3502 6.3.11).  OK is sent from the job's completion, so an
 * OK APPEND is durable.  Any failure removes the files: no orphan, no
 * partial message ever visible.  A literal refused on the way (too large,
 * empty) ends the command at once and drops the messages already received.
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

/* One message file being received or finished. */
struct append_msg {
	int fd;
	char tmp_path[PATH_MAX];
	char final[PATH_MAX];          /* after the rename; "" before */
	struct msgid id;
	uint64_t size;
	uint64_t written;
	int err;                       /* first write error */
	crypto_generichash_state hash;
	/* set by the command, used by the job: */
	uint32_t flags;
	char *keywords;                /* space-separated, NULL = none */
	int64_t received;
	char hash_hex[65];
	struct mime_summary sum;
	bool have_mime;
};

/* The messages of the APPEND command being received, in literal order. */
struct imap_append {
	struct append_msg **m;
	size_t n, cap;
};

/* Closes and removes what is left of a message (temp file, or the final
 * file when `final_too`), and frees it. */
static void msg_free(struct append_msg *m, bool final_too)
{
	if (m == NULL)
		return;
	if (m->fd >= 0)
		close(m->fd);
	if (m->tmp_path[0] != '\0' && unlink(m->tmp_path) != 0 && errno != ENOENT)
		log_warn("imap: cannot remove %s: %s", m->tmp_path, strerror(errno));
	if (final_too && m->final[0] != '\0') {
		if (unlink(m->final) == 0) {
			char dir[PATH_MAX];
			fs_dirname(m->final, dir, sizeof(dir));
			if (!fs_fsync_dir(dir))
				log_warn("imap: fsync of %s after removal failed: %s", dir, strerror(errno));
		} else if (errno != ENOENT) {
			log_error("imap: cannot remove %s: %s", m->final, strerror(errno));
		}
	}
	if (m->have_mime)
		mime_summary_free(&m->sum);
	sodium_memzero(&m->hash, sizeof(m->hash));
	free(m->keywords);
	free(m);
}

void imap_append_abort(struct imap_session *s)
{
	struct imap_append *a = s->append;
	if (a == NULL)
		return;
	for (size_t i = 0; i < a->n; i++)
		msg_free(a->m[i], false);
	free(a->m);
	free(a);
	s->append = NULL;
}

/* A new temp file for a message of `size` bytes; NULL with *refuse_r. */
static struct append_msg *msg_new(struct imap_session *s, uint64_t size, const char **refuse_r)
{
	if (size == 0) {
		*refuse_r = "NO Empty message";
		return NULL;
	}
	if (size > s->set->imap_max_message_size) {
		*refuse_r = "NO [TOOBIG] Message too large";
		return NULL;
	}
	struct append_msg *m = xcalloc(1, sizeof(*m));
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/tmp", s->set->store_blob_dir);
	m->fd = fs_open_temp(dir, m->tmp_path, sizeof(m->tmp_path));
	if (m->fd < 0) {
		log_error("imap: cannot create a temp file in %s: %s", dir, strerror(errno));
		free(m);
		*refuse_r = "NO [UNAVAILABLE] Cannot store the message now";
		return NULL;
	}
	msgid_new(&m->id);
	m->size = size;
	if (crypto_generichash_init(&m->hash, NULL, 0, APPEND_HASH_BYTES) != 0)
		panic("crypto_generichash_init failed");
	return m;
}

static void msg_write(struct append_msg *m, const char *data, size_t len)
{
	if (len == 0)
		return;
	crypto_generichash_update(&m->hash, (const unsigned char *)data, len);
	m->written += len;
	if (m->err != 0)
		return;
	errno = 0;
	if (!fs_write_all(m->fd, data, len))
		m->err = errno ? errno : EIO;
}

bool imap_append_literal(struct imap_session *s, uint64_t size, bool first, const char **refuse_r)
{
	if (s->state != IS_AUTH && s->state != IS_SELECTED) {
		*refuse_r = "BAD APPEND not allowed before login";
		return false;
	}
	if (first)
		imap_append_abort(s);   /* nothing of an earlier command survives */
	struct append_msg *m = msg_new(s, size, refuse_r);
	if (m == NULL) {
		imap_append_abort(s);   /* MULTIAPPEND: all or nothing */
		return false;
	}
	if (s->append == NULL)
		s->append = xcalloc(1, sizeof(*s->append));
	struct imap_append *a = s->append;
	if (a->n == a->cap) {
		a->cap = a->cap ? a->cap * 2 : 4;
		a->m = xreallocarray(a->m, a->cap, sizeof(*a->m));
	}
	a->m[a->n++] = m;
	return true;
}

void imap_append_data(struct imap_session *s, const char *data, size_t len)
{
	struct imap_append *a = s->append;
	if (a == NULL || a->n == 0)
		return;
	msg_write(a->m[a->n - 1], data, len);
}

/* ---- the job ----------------------------------------------------------------------- */

struct append_job {
	struct imap_job j;
	struct append_msg **m;          /* owned by the job now, in command order */
	size_t n;
	const struct settings *set;
	int64_t account_id;
	char address[320];
	char mailbox[STORE_MAILBOX_NAME_MAX + 1];
	bool trycreate;
	uint32_t *uids, uidvalidity;
};

/* Trailer, fsync, close, rename into place.  Returns false with errno. */
static bool finish_blob(struct append_job *aj, struct append_msg *m)
{
	char addrs[1][320];
	snprintf(addrs[0], sizeof(addrs[0]), "%s", aj->address);
	struct blob_meta meta = { .id = m->id, .received = m->received, .size = m->size,
				  .n_rcpts = 1, .rcpt_addresses = addrs };
	memcpy(meta.hash_hex, m->hash_hex, sizeof(meta.hash_hex));
	/* The target mailbox (normalised by store_imap_mailbox_name at parse
	 * time), so an index rebuild files the message where it was appended. */
	snprintf(meta.mailbox, sizeof(meta.mailbox), "%s", aj->mailbox);
	struct buf t = BUF_INIT;
	store_blob_trailer(&meta, &t);
	bool ok = fs_write_all(m->fd, t.data, t.len);
	buf_free(&t);
	if (!ok || (aj->set->store_fsync && !fs_fsync(m->fd)))
		return false;
	int fd = m->fd;
	m->fd = -1;
	if (!fs_close(fd))
		return false;
	char dir[PATH_MAX], final[PATH_MAX];
	store_blob_dir_of(aj->set->store_blob_dir, &m->id, dir, sizeof(dir));
	store_blob_path(aj->set->store_blob_dir, &m->id, final, sizeof(final));
	if (!fs_mkdir_p(dir, 0750))
		return false;
	if (aj->set->store_fsync) {
		if (!fs_rename_durable(m->tmp_path, final))
			return false;
	} else {
		int err = fs_fault_check(FS_OP_RENAME);
		if (err != 0) {
			errno = err;
			return false;
		}
		if (rename(m->tmp_path, final) != 0)
			return false;
	}
	m->tmp_path[0] = '\0';     /* renamed: nothing left to remove there */
	memcpy(m->final, final, sizeof(final));
	return true;
}

/* Makes every blob durable and computes its MIME row; false with the
 * job's status and error set. */
static bool finish_blobs(struct append_job *aj)
{
	struct imap_job *j = &aj->j;
	for (size_t i = 0; i < aj->n; i++) {
		struct append_msg *m = aj->m[i];
		errno = 0;
		if (!finish_blob(aj, m)) {
			int err = errno ? errno : EIO;
			j->status = status_from_errno(err);
			if (j->status == ST_OK)
				j->status = ST_IO_ERROR;
			j->error = xasprintf("writing the message: %s", strerror(err));
			return false;
		}
		/* MIME hook: the FETCH cache row is computed here, on the pool
		 * thread, and committed with the message; without it FETCH
		 * computes it later. */
		char *merr = NULL;
		m->have_mime = mime_parse_file(m->final, m->size, &m->sum, &merr) == ST_OK;
		if (!m->have_mime) {
			log_warn("imap: MIME structure not cached: %s", merr);
			free(merr);
		}
	}
	return true;
}

static void append_run(struct imap_job *j, struct store *st)
{
	struct append_job *aj = (struct append_job *)j;
	struct store_mailbox_info mb;
	j->status = store_imap_mailbox_get(st, aj->account_id, aj->mailbox, false, &mb);
	if (j->status == ST_NOT_FOUND || j->status == ST_INVALID) {
		aj->trycreate = true;
		j->status = ST_NOT_FOUND;
		return;
	}
	if (j->status != ST_OK || !finish_blobs(aj))
		return;
	struct store_imap_new *rows = xcalloc(aj->n, sizeof(*rows));
	struct store_mime *mime = xcalloc(aj->n, sizeof(*mime));
	for (size_t i = 0; i < aj->n; i++) {
		struct append_msg *m = aj->m[i];
		mime[i] = (struct store_mime){ m->sum.envelope, m->sum.bodystructure, m->sum.body, m->sum.parts,
					       m->sum.parts_len };
		rows[i] = (struct store_imap_new){ &m->id, m->size, m->received, m->flags, m->keywords,
						   m->have_mime ? &mime[i] : NULL };
	}
	aj->uids = xcalloc(aj->n, sizeof(*aj->uids));
	j->status = store_imap_append_many(st, aj->account_id, mb.id, rows, aj->n, aj->uids, &aj->uidvalidity,
					   &j->error);
	free(rows);
	free(mime);
	/* An I/O error from the index may have come from the WAL fsync at
	 * COMMIT, in which case SQLite can still replay the rows at the next
	 * open: keep the blobs then (at worst orphans, never a row without its
	 * file).  Any other failure wrote nothing: msg_free removes them. */
	if (j->status == ST_OK || j->status == ST_IO_ERROR) {
		for (size_t i = 0; i < aj->n; i++)
			aj->m[i]->final[0] = '\0';
	}
}

/* "4:7" or "4,9" for APPENDUID: the UIDs are ascending. */
static void uid_set_format(const uint32_t *uids, size_t n, struct buf *out)
{
	for (size_t i = 0; i < n;) {
		size_t k = i;
		while (k + 1 < n && uids[k + 1] == uids[k] + 1)
			k++;
		buf_printf(out, "%s%u", i > 0 ? "," : "", uids[i]);
		if (k > i)
			buf_printf(out, ":%u", uids[k]);
		i = k + 1;
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
			struct buf set = BUF_INIT;
			uid_set_format(aj->uids, aj->n, &set);
			imap_session_tagged(s, "OK", "[APPENDUID %u %s] APPEND completed", aj->uidvalidity, set.data);
			buf_free(&set);
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
	for (size_t i = 0; i < aj->n; i++)
		msg_free(aj->m[i], true);
	free(aj->m);
	free(aj->uids);
	free(j->error);
	free(aj);
}

/* A failed command: the messages received are dropped, BAD or NO sent. */
static void append_fail(struct imap_session *s, const struct imap_cmd *cmd, bool bad, const char *text)
{
	imap_append_abort(s);
	if (bad)
		imap_session_bad(s, cmd->tag, "%s", text);
	else
		imap_session_tagged(s, "NO", "%s", text);
}

/* One message's "[(flags)] [date-time] literal" starting at args[*i];
 * fills m's flags, keywords and date, and advances *i past the literal.
 * False (BAD) when malformed. */
static bool append_message_args(const struct imap_cmd *cmd, size_t *i, struct append_msg *m)
{
	size_t k = *i;
	m->received = (int64_t)time(NULL);
	if (k < cmd->n_args && cmd->args[k].type == IMAP_ARG_LIST) {
		struct buf kw = BUF_INIT;
		if (!imap_flags_parse(&cmd->args[k], &m->flags, &kw)) {
			buf_free(&kw);
			return false;
		}
		m->keywords = kw.len > 0 ? buf_steal(&kw) : NULL;
		buf_free(&kw);
		k++;
	}
	if (k < cmd->n_args && cmd->args[k].type == IMAP_ARG_QUOTED) {
		if (!imap_date_parse(cmd->args[k].str, true, &m->received))
			return false;
		k++;
	}
	if (k >= cmd->n_args || cmd->args[k].type != IMAP_ARG_LITERAL)
		return false;
	*i = k + 1;
	return true;
}

/* The messages of the command, in order: streamed ones from s->append,
 * small ones that arrived in memory written to files now.  NULL after a
 * reply when something is wrong. */
static struct append_msg **append_collect(struct imap_session *s, const struct imap_cmd *cmd, size_t *n_r)
{
	struct imap_append *a = s->append;
	size_t n_lit = 0;
	for (size_t i = 1; i < cmd->n_args; i++)
		n_lit += cmd->args[i].type == IMAP_ARG_LITERAL;
	struct append_msg **out = xcalloc(n_lit ? n_lit : 1, sizeof(*out));
	size_t n = 0, streamed = 0;
	const char *why = NULL;
	bool bad = true;
	enum status werr = ST_OK;       /* a write error on one of the files */
	for (size_t i = 1; i < cmd->n_args && why == NULL;) {
		struct append_msg tmp = { 0 };
		if (!append_message_args(cmd, &i, &tmp)) {
			free(tmp.keywords);
			why = "APPEND takes a mailbox, then per message optional flags and date, and a literal";
			break;
		}
		const struct imap_arg *lit = &cmd->args[i - 1];
		struct append_msg *m;
		if (lit->str == NULL) {
			/* Streamed: the next file received for this command. */
			m = a != NULL && streamed < a->n ? a->m[streamed] : NULL;
			if (m == NULL || m->written != m->size) {
				free(tmp.keywords);
				why = "[UNAVAILABLE] Message data incomplete";
				bad = false;
				break;
			}
			a->m[streamed++] = NULL;
		} else {
			/* Not streamed (the literal came before we knew it was
			 * APPEND's message): it is small, write it now. */
			const char *refuse = NULL;
			m = msg_new(s, lit->len, &refuse);
			if (m == NULL) {
				free(tmp.keywords);
				why = refuse + 3;   /* "NO ..." */
				bad = false;
				break;
			}
			msg_write(m, lit->str, lit->len);
		}
		m->flags = tmp.flags;
		m->keywords = tmp.keywords;
		m->received = tmp.received;
		out[n++] = m;
		if (m->err != 0 && werr == ST_OK) {
			log_error("imap: writing an APPEND for %s: %s", s->user, strerror(m->err));
			werr = status_from_errno(m->err);
			if (werr == ST_OK)
				werr = ST_IO_ERROR;
		}
	}
	if (why == NULL && werr != ST_OK) {
		for (size_t i = 0; i < n; i++)
			msg_free(out[i], false);
		free(out);
		imap_append_abort(s);
		imap_command_reply_status(s, werr, "Cannot store the message");
		return NULL;
	}
	if (why == NULL && (n == 0 || (a != NULL && streamed != a->n))) {
		why = "APPEND takes a mailbox, then per message optional flags and date, and a literal";
		bad = true;
	}
	if (why != NULL) {
		for (size_t i = 0; i < n; i++)
			msg_free(out[i], false);
		free(out);
		append_fail(s, cmd, bad, why);
		return NULL;
	}
	imap_append_abort(s);   /* the list: its messages were all taken */
	*n_r = n;
	return out;
}

void imap_append_command(struct imap_session *s, struct imap_cmd *cmd)
{
	if (cmd->n_args < 2 || !imap_arg_is_string(&cmd->args[0]) || cmd->args[0].type == IMAP_ARG_LIST) {
		append_fail(s, cmd, true, "APPEND takes a mailbox, optional flags and date, and a literal");
		return;
	}
	char mailbox[STORE_MAILBOX_NAME_MAX + 1];
	if (strlen(cmd->args[0].str) != cmd->args[0].len || !store_imap_mailbox_name(cmd->args[0].str, mailbox)) {
		append_fail(s, cmd, false, "[TRYCREATE] Mailbox does not exist");
		return;
	}
	size_t n = 0;
	struct append_msg **m = append_collect(s, cmd, &n);
	if (m == NULL)
		return;
	for (size_t i = 0; i < n; i++) {
		unsigned char digest[APPEND_HASH_BYTES];
		crypto_generichash_final(&m[i]->hash, digest, sizeof(digest));
		sodium_bin2hex(m[i]->hash_hex, sizeof(m[i]->hash_hex), digest, sizeof(digest));
	}
	struct append_job *aj = xcalloc(1, sizeof(*aj));
	aj->m = m;
	aj->n = n;
	aj->set = s->set;
	aj->account_id = s->account_id;
	snprintf(aj->address, sizeof(aj->address), "%s", s->user);
	memcpy(aj->mailbox, mailbox, sizeof(mailbox));
	aj->j.run = append_run;
	aj->j.done = append_done;
	imap_session_submit(s, &aj->j);
}
