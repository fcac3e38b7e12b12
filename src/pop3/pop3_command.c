/*
 * pop3_command.c - the POP3 commands: AUTHORIZATION (CAPA, USER, PASS,
 * AUTH PLAIN, STLS, QUIT), TRANSACTION (STAT, LIST, UIDL, RETR, TOP, DELE,
 * NOOP, RSET, QUIT) and UPDATE (QUIT's deletion job), plus RETR/TOP
 * streaming.
 *
 * Authentication: plaintext mechanisms (USER/PASS, AUTH PLAIN) are refused
 * without TLS unless the peer is a loopback address, and are not
 * advertised then.  A password check, the maildrop lock and the snapshot
 * of the INBOX (message numbers, sizes, UIDs) run as one store job.
 *
 * The maildrop is a snapshot: message numbers never change during a
 * session (RFC 1939); a message expunged over IMAP meanwhile answers
 * "-ERR" on RETR and is skipped at QUIT.  DELE only marks; QUIT deletes the
 * marked messages in one store transaction (store_pop3_delete), and a
 * failure leaves every message in place and says "-ERR [SYS/TEMP]".
 *
 * RETR/TOP: the message bytes [0, size) of its blob (never the trailer),
 * read in POP3_CHUNK pieces while the output is below POP3_OUTPUT_HIGH,
 * dot-stuffed on the fly (RFC 1939 section 3), ended with CRLF "." CRLF.
 *
 * Threads: the worker's loop thread; job run() halves on a pool thread,
 * touching only the job struct, the lock table and the thread's store.
 */
#include "pop3_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "auth.h"

#define MSG_AUTH_FAILED "[AUTH] Authentication failed."
#define MSG_PLAIN_REFUSED "[AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."

/* ---- maildrop ------------------------------------------------------------------- */

void pop3_maildrop_free(struct pop3_maildrop **mdp)
{
	struct pop3_maildrop *md = *mdp;
	if (md == NULL)
		return;
	free(md->m);
	free(md);
	*mdp = NULL;
}

void pop3_command_logout(struct pop3_session *s)
{
	if (s->locked) {
		pop3_lock_release(s->account_id);
		s->locked = false;
	}
	pop3_maildrop_free(&s->md);
}

static void maildrop_add(void *ctx, const struct store_imap_msg *m)
{
	struct pop3_maildrop *md = ctx;
	if (md->n == md->cap) {
		md->cap = md->cap ? md->cap * 2 : 64;
		md->m = xreallocarray(md->m, md->cap, sizeof(*md->m));
	}
	struct pop3_msg *pm = &md->m[md->n++];
	pm->uid = m->uid;
	pm->size = m->size;
	pm->id = m->id;
	pm->deleted = false;
}

/* "+OK" alone. */
static void ok_bare(struct pop3_session *s)
{
	pop3_session_write(s, "+OK\r\n", 5);
}

/* ---- greeting and CAPA -------------------------------------------------------------- */

static bool plaintext_ok(const struct pop3_session *s)
{
	return s->tls || s->loopback;
}

void pop3_command_greeting(struct pop3_session *s)
{
	pop3_session_ok(s, "Strata POP3 ready.");
}

static void cmd_capa(struct pop3_session *s)
{
	struct buf out = BUF_INIT;
	buf_append_str(&out, "+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\n"
			     "AUTH-RESP-CODE\r\n");
	if (s->state == PS_AUTH) {
		if (plaintext_ok(s))
			buf_append_str(&out, "USER\r\nSASL PLAIN\r\n");
		if (s->w->tls != NULL && !s->tls)
			buf_append_str(&out, "STLS\r\n");
	}
	buf_append_str(&out, "IMPLEMENTATION Strata\r\n.\r\n");
	pop3_session_write(s, out.data, out.len);
	buf_free(&out);
}

/* ---- login -------------------------------------------------------------------------- */

enum login_result { LOGIN_OK, LOGIN_FAILED, LOGIN_IN_USE, LOGIN_TEMP };

struct login_job {
	struct pop3_job j;
	char user[320];
	char password[1024];
	enum login_result result;
	int64_t account_id;
	char address[320];
	struct pop3_maildrop *md;
	bool delayed;                   /* the guard's brute-force delay was applied */
};

/* The INBOX snapshot, on the pool thread. */
static enum status load_maildrop(struct store *st, int64_t account_id, struct pop3_maildrop **md_r)
{
	struct store_mailbox_info mb;
	enum status s = store_imap_mailbox_get(st, account_id, "INBOX", false, &mb);
	if (s != ST_OK)
		return s;
	struct pop3_maildrop *md = xcalloc(1, sizeof(*md));
	md->mailbox_id = mb.id;
	md->uidvalidity = mb.uidvalidity;
	s = store_imap_messages(st, mb.id, 1, maildrop_add, md);
	if (s != ST_OK) {
		pop3_maildrop_free(&md);
		return s;
	}
	*md_r = md;
	return ST_OK;
}

static void login_run(struct pop3_job *j, struct store *st)
{
	struct login_job *lj = (struct login_job *)j;
	struct account a;
	char addr[320];
	snprintf(addr, sizeof(addr), "%s", lj->user);
	str_lower(addr);
	lj->result = LOGIN_FAILED;
	bool ok = store_user_get(st, addr, &a) == ST_OK && a.pwhash[0] != '\0' &&
		  auth_verify_password_cached(lj->password, a.pwhash);
	sodium_memzero(lj->password, sizeof(lj->password));
	if (!ok)
		return;
	if (!pop3_lock_take(a.id)) {
		lj->result = LOGIN_IN_USE;
		return;
	}
	enum status s = load_maildrop(st, a.id, &lj->md);
	if (s != ST_OK) {
		pop3_lock_release(a.id);
		lj->result = LOGIN_TEMP;
		j->error = xasprintf("cannot read the INBOX of %s: %s", a.address, status_info(s)->name);
		return;
	}
	lj->result = LOGIN_OK;
	lj->account_id = a.id;
	snprintf(lj->address, sizeof(lj->address), "%s", a.address);
}

static void login_failed(struct pop3_session *s, const char *user)
{
	char esc[128];
	log_info("pop3: authentication failed for %s from %s", log_escape(user, strlen(user), esc, sizeof(esc)),
		 s->client);
	pop3_session_bad(s, MSG_AUTH_FAILED);
}

static void login_delay_cb(evutil_socket_t fd, short what, void *arg);

/* A failed login is answered after the guard's brute-force delay
 * (guard_auth_failure), on a timer of the loop: the job stays outstanding
 * meanwhile, so the session reads nothing more, and login_done runs again
 * when it fires.  True when the reply was deferred. */
static bool login_delayed(struct login_job *lj)
{
	struct pop3_job *j = &lj->j;
	struct guard *g = guard_process();
	struct guard_addr a;
	if (lj->delayed || lj->result != LOGIN_FAILED || g == NULL || !guard_addr_parse(j->s->ip, &a))
		return false;
	lj->delayed = true;
	uint64_t ms = guard_auth_failure(g, &a, lj->user, time_mono_ms());
	if (ms == 0)
		return false;
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
	if (event_base_once(j->base, -1, EV_TIMEOUT, login_delay_cb, j, &tv) != 0)
		panic("pop3: event_base_once failed");
	return true;
}

static void login_done(struct pop3_job *j)
{
	struct login_job *lj = (struct login_job *)j;
	struct pop3_session *s = j->s;
	if (login_delayed(lj))
		return;
	if (!pop3_session_job_finished(s)) {
		if (lj->result == LOGIN_OK)
			pop3_lock_release(lj->account_id);
		pop3_maildrop_free(&lj->md);
		free(j->error);
		free(lj);
		return;
	}
	switch (lj->result) {
	case LOGIN_OK:
		s->state = PS_TRANS;
		s->account_id = lj->account_id;
		s->locked = true;
		s->md = lj->md;
		lj->md = NULL;
		free(s->user);
		s->user = xstrdup(lj->address);
		log_info("pop3: login %s from %s (%zu messages)", s->user, s->client, s->md->n);
		guard_good_mark_ip(s->ip);   /* a good sender from now on (guard.h) */
		pop3_session_ok(s, "Logged in.");
		break;
	case LOGIN_IN_USE: {
		char esc[128];
		log_info("pop3: maildrop of %s in use, refused for %s",
			 log_escape(lj->user, strlen(lj->user), esc, sizeof(esc)), s->client);
		pop3_session_err(s, "[IN-USE] mailbox locked by another POP3 session");
		break;
	}
	case LOGIN_TEMP:
		log_error("pop3: %s", j->error ? j->error : "login failed");
		pop3_session_err(s, "[SYS/TEMP] Cannot open the mailbox, try again later");
		break;
	case LOGIN_FAILED:
		login_failed(s, lj->user);
		break;
	}
	pop3_maildrop_free(&lj->md);
	free(j->error);
	free(lj);
	pop3_session_job_end(s);
}

static void login_delay_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	login_done(arg);
}

static void start_login(struct pop3_session *s, const char *user, size_t ulen, const char *pass, size_t plen)
{
	struct login_job *lj = xcalloc(1, sizeof(*lj));
	if (ulen == 0 || ulen >= sizeof(lj->user) || plen >= sizeof(lj->password) ||
	    memchr(user, '\0', ulen) != NULL || memchr(pass, '\0', plen) != NULL) {
		free(lj);
		pop3_session_bad(s, MSG_AUTH_FAILED);
		return;
	}
	memcpy(lj->user, user, ulen);
	memcpy(lj->password, pass, plen);
	lj->j.run = login_run;
	lj->j.done = login_done;
	pop3_session_submit(s, &lj->j);
}

static void cmd_user(struct pop3_session *s, const struct pop3_cmd *cmd)
{
	if (!plaintext_ok(s)) {
		pop3_session_bad(s, MSG_PLAIN_REFUSED);
		return;
	}
	if (cmd->n_args != 1 || strlen(cmd->args[0]) >= 320) {
		pop3_session_bad(s, "USER takes one argument");
		return;
	}
	free(s->user);
	s->user = xstrdup(cmd->args[0]);
	ok_bare(s);
}

static void cmd_pass(struct pop3_session *s, const struct pop3_cmd *cmd)
{
	if (!plaintext_ok(s)) {
		pop3_session_bad(s, MSG_PLAIN_REFUSED);
		return;
	}
	if (s->user == NULL) {
		pop3_session_bad(s, "No username given.");
		return;
	}
	if (cmd->n_args != 1) {
		pop3_session_bad(s, "PASS takes one argument");
		return;
	}
	/* USER must be given again after any PASS (RFC 1939 section 7). */
	char *user = s->user;
	s->user = NULL;
	start_login(s, user, strlen(user), cmd->args[0], strlen(cmd->args[0]));
	free(user);
}

/* SASL PLAIN (RFC 4616): [authzid] NUL authcid NUL passwd, base64. */
static void sasl_plain(struct pop3_session *s, const char *b64, size_t len)
{
	unsigned char raw[1400];
	size_t n = 0;
	if (len > 1800 || !base64_decode_strict(b64, len, raw, sizeof(raw), &n)) {
		pop3_session_bad(s, "[AUTH] Invalid base64 data in SASL response");
		return;
	}
	const char *authz = (const char *)raw;
	const unsigned char *nul1 = memchr(raw, '\0', n);
	const unsigned char *nul2 = nul1 ? memchr(nul1 + 1, '\0', n - (size_t)(nul1 + 1 - raw)) : NULL;
	if (nul1 == NULL || nul2 == NULL) {
		sodium_memzero(raw, sizeof(raw));
		pop3_session_bad(s, "[AUTH] Malformed SASL PLAIN response");
		return;
	}
	const char *authc = (const char *)nul1 + 1;
	size_t authc_len = (size_t)(nul2 - nul1 - 1);
	const char *pass = (const char *)nul2 + 1;
	size_t pass_len = n - (size_t)(nul2 + 1 - raw);
	size_t authz_len = (size_t)(nul1 - raw);
	if (authz_len > 0 && (authz_len != authc_len || strncasecmp(authz, authc, authc_len) != 0)) {
		sodium_memzero(raw, sizeof(raw));
		pop3_session_bad(s, "[AUTH] Authorization identity not allowed");
		return;
	}
	start_login(s, authc, authc_len, pass, pass_len);
	sodium_memzero(raw, sizeof(raw));
}

static void cmd_auth(struct pop3_session *s, const struct pop3_cmd *cmd)
{
	if (cmd->n_args == 0) {
		/* The mechanism list (RFC 1734 clients probe with a bare AUTH). */
		pop3_session_write(s, "+OK\r\n", 5);
		if (plaintext_ok(s))
			pop3_session_write(s, "PLAIN\r\n", 7);
		pop3_session_write(s, ".\r\n", 3);
		return;
	}
	if (cmd->n_args > 2) {
		pop3_session_bad(s, "Invalid AUTH arguments");
		return;
	}
	if (strcasecmp(cmd->args[0], "PLAIN") != 0) {
		pop3_session_bad(s, "Unsupported authentication mechanism.");
		return;
	}
	if (!plaintext_ok(s)) {
		pop3_session_bad(s, MSG_PLAIN_REFUSED);
		return;
	}
	if (cmd->n_args == 2) {
		const char *ir = cmd->args[1];
		if (strcmp(ir, "=") == 0)
			sasl_plain(s, "", 0);
		else
			sasl_plain(s, ir, strlen(ir));
		return;
	}
	free(s->user);
	s->user = NULL;
	s->mode = PM_SASL;
	pop3_session_write(s, "+ \r\n", 4);
}

void pop3_command_sasl_response(struct pop3_session *s, const char *line, size_t len)
{
	if (len == 1 && line[0] == '*') {
		pop3_session_bad(s, "Authentication aborted by client.");
		return;
	}
	sasl_plain(s, line, len);
}

static void cmd_stls(struct pop3_session *s)
{
	if (s->w->tls == NULL || s->tls) {
		pop3_session_bad(s, s->tls ? "TLS is already active." : "TLS support isn't enabled.");
		return;
	}
	free(s->user);
	s->user = NULL;
	pop3_session_ok(s, "Begin TLS negotiation now.");
	pop3_session_starttls(s);
}

/* ---- QUIT and the UPDATE state -------------------------------------------------------- */

struct quit_job {
	struct pop3_job j;
	int64_t account_id, mailbox_id;
	uint32_t *uids;
	size_t n;
	size_t deleted;
};

static void quit_run(struct pop3_job *j, struct store *st)
{
	struct quit_job *qj = (struct quit_job *)j;
	j->status = store_pop3_delete(st, qj->account_id, qj->mailbox_id, qj->uids, qj->n, &qj->deleted,
				      &j->error);
}

static void quit_done(struct pop3_job *j)
{
	struct quit_job *qj = (struct quit_job *)j;
	struct pop3_session *s = j->s;
	if (j->status != ST_OK)
		log_error("pop3: deleting %zu messages of account %lld failed: %s", qj->n,
			  (long long)qj->account_id, j->error ? j->error : status_info(j->status)->name);
	/* The lock goes before the reply: a client that logs in again as soon
	 * as it reads +OK must find the maildrop free (RFC 1939 section 6). */
	if (pop3_session_job_finished(s)) {
		pop3_command_logout(s);
		if (j->status == ST_OK) {
			log_info("pop3: logout %s, %zu deleted", s->user, qj->deleted);
			pop3_session_ok(s, "Logging out, messages deleted.");
		} else {
			pop3_session_err(s, "[SYS/TEMP] Failed to delete messages, none were deleted.");
		}
		pop3_session_close_after_flush(s);
		pop3_session_job_end(s);
	}
	free(qj->uids);
	free(j->error);
	free(qj);
}

static void cmd_quit(struct pop3_session *s)
{
	size_t n = 0;
	for (size_t i = 0; s->md != NULL && i < s->md->n; i++)
		n += s->md->m[i].deleted;
	if (s->state != PS_TRANS || n == 0) {
		if (s->state == PS_TRANS)
			log_info("pop3: logout %s", s->user);
		pop3_command_logout(s);
		pop3_session_ok(s, "Logging out.");
		pop3_session_close_after_flush(s);
		return;
	}
	s->state = PS_UPDATE;
	struct quit_job *qj = xcalloc(1, sizeof(*qj));
	qj->account_id = s->account_id;
	qj->mailbox_id = s->md->mailbox_id;
	qj->uids = xcalloc(n, sizeof(*qj->uids));
	for (size_t i = 0; i < s->md->n; i++) {
		if (s->md->m[i].deleted)
			qj->uids[qj->n++] = s->md->m[i].uid;
	}
	qj->j.run = quit_run;
	qj->j.done = quit_done;
	pop3_session_submit(s, &qj->j);
}

/* ---- TRANSACTION: listing ------------------------------------------------------------- */

/* The message named by arg, or NULL after an -ERR reply. */
static struct pop3_msg *message_arg(struct pop3_session *s, const char *arg, uint32_t *num_r)
{
	uint32_t num;
	if (!pop3_parse_number(arg, &num)) {
		pop3_session_bad(s, "Invalid message number.");
		return NULL;
	}
	if (num == 0 || num > s->md->n) {
		pop3_session_err(s, "There's no message %u.", num);
		return NULL;
	}
	struct pop3_msg *m = &s->md->m[num - 1];
	if (m->deleted) {
		pop3_session_err(s, "Message is deleted.");
		return NULL;
	}
	*num_r = num;
	return m;
}

static void cmd_stat(struct pop3_session *s)
{
	size_t count = 0;
	uint64_t bytes = 0;
	for (size_t i = 0; i < s->md->n; i++) {
		if (!s->md->m[i].deleted) {
			count++;
			bytes += s->md->m[i].size;
		}
	}
	pop3_session_ok(s, "%zu %llu", count, (unsigned long long)bytes);
}

static void uidl_text(const struct pop3_session *s, const struct pop3_msg *m, char out[24])
{
	/* Dovecot's default pop3_uidl_format %08Xu%08Xv. */
	snprintf(out, 24, "%08X%08X", m->uid, s->md->uidvalidity);
}

static void list_or_uidl(struct pop3_session *s, const struct pop3_cmd *cmd, bool uidl)
{
	if (cmd->n_args > 1) {
		pop3_session_bad(s, "Too many arguments");
		return;
	}
	char u[24];
	if (cmd->n_args == 1) {
		uint32_t num;
		struct pop3_msg *m = message_arg(s, cmd->args[0], &num);
		if (m == NULL)
			return;
		if (uidl) {
			uidl_text(s, m, u);
			pop3_session_ok(s, "%u %s", num, u);
		} else {
			pop3_session_ok(s, "%u %llu", num, (unsigned long long)m->size);
		}
		return;
	}
	struct buf out = BUF_INIT;
	buf_append_str(&out, "+OK\r\n");
	for (size_t i = 0; i < s->md->n; i++) {
		const struct pop3_msg *m = &s->md->m[i];
		if (m->deleted)
			continue;
		if (uidl) {
			uidl_text(s, m, u);
			buf_printf(&out, "%zu %s\r\n", i + 1, u);
		} else {
			buf_printf(&out, "%zu %llu\r\n", i + 1, (unsigned long long)m->size);
		}
	}
	buf_append_str(&out, ".\r\n");
	pop3_session_write(s, out.data, out.len);
	buf_free(&out);
}

static void cmd_dele(struct pop3_session *s, const struct pop3_cmd *cmd)
{
	if (cmd->n_args != 1) {
		pop3_session_bad(s, "DELE takes one argument");
		return;
	}
	uint32_t num;
	struct pop3_msg *m = message_arg(s, cmd->args[0], &num);
	if (m == NULL)
		return;
	m->deleted = true;
	pop3_session_ok(s, "Marked to be deleted.");
}

static void cmd_rset(struct pop3_session *s)
{
	for (size_t i = 0; i < s->md->n; i++)
		s->md->m[i].deleted = false;
	ok_bare(s);
}

/* ---- RETR / TOP ------------------------------------------------------------------------ */

struct pop3_retr {
	int fd;
	uint64_t off, size;
	bool top;
	uint32_t lines_left;        /* TOP: body lines still to send */
	bool in_body;               /* TOP: past the header's blank line */
	bool bol;                   /* next byte starts a line */
	bool last_lf;               /* last byte sent was LF */
	size_t line_bytes;          /* bytes of the current line so far */
	bool line_cr_first;         /* its first byte was CR */
	bool finished;              /* TOP stopped early */
};

void pop3_retr_free(struct pop3_retr **rp)
{
	struct pop3_retr *r = *rp;
	if (r == NULL)
		return;
	if (r->fd >= 0)
		close(r->fd);
	free(r);
	*rp = NULL;
}

/* At the LF ending a line: TOP's header/body accounting. */
static void retr_line_end(struct pop3_retr *r)
{
	if (r->top) {
		if (!r->in_body) {
			bool blank = r->line_bytes == 0 || (r->line_bytes == 1 && r->line_cr_first);
			if (blank) {
				r->in_body = true;
				if (r->lines_left == 0)
					r->finished = true;
			}
		} else if (--r->lines_left == 0) {
			r->finished = true;
		}
	}
	r->line_bytes = 0;
	r->line_cr_first = false;
}

/* Dot-stuffs data[0, len) into out, stopping early when TOP is done. */
static void retr_stuff(struct pop3_retr *r, const char *data, size_t len, struct buf *out)
{
	const char *p = data, *end = data + len;
	while (p < end && !r->finished) {
		if (r->bol && *p == '.')
			buf_append_char(out, '.');
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *seg_end = nl ? nl + 1 : end;
		size_t content = (size_t)((nl ? nl : end) - p);
		if (r->line_bytes == 0 && content > 0)
			r->line_cr_first = *p == '\r';
		r->line_bytes += content;
		buf_append(out, p, (size_t)(seg_end - p));
		r->last_lf = nl != NULL;
		r->bol = nl != NULL;
		if (nl != NULL)
			retr_line_end(r);
		p = seg_end;
	}
}

/* RETR: dot-stuffs data[0, len) (len > 0) straight into the output, in
 * spans between the lines that start with '.': no per-line copy. */
static void retr_send_stuffed(struct pop3_session *s, struct pop3_retr *r, const char *data, size_t len)
{
	const char *p = data, *end = data + len, *span = data;
	if (r->bol && *p == '.')
		pop3_session_write(s, ".", 1);
	while ((p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
		if (++p < end && *p == '.') {
			pop3_session_write(s, span, (size_t)(p - span));
			pop3_session_write(s, ".", 1);
			span = p;
		}
	}
	pop3_session_write(s, span, (size_t)(end - span));
	r->bol = r->last_lf = end[-1] == '\n';
}

static void retr_finish(struct pop3_session *s)
{
	struct pop3_retr *r = s->retr;
	if (!r->last_lf)
		pop3_session_write(s, "\r\n", 2);
	pop3_session_write(s, ".\r\n", 3);
	pop3_retr_free(&s->retr);
	pop3_session_resume(s, PP_RETR);
}

void pop3_retr_continue(struct pop3_session *s)
{
	struct pop3_retr *r = s->retr;
	char *chunk = xmalloc(POP3_CHUNK);
	struct buf out = BUF_INIT;
	/* Bounded: each pass reads at least one byte or ends the reply. */
	while (s->retr != NULL && s->bev != NULL && s->close == PC_NONE && !pop3_session_output_full(s)) {
		if (r->finished || r->off >= r->size) {
			retr_finish(s);
			break;
		}
		uint64_t want = r->size - r->off < POP3_CHUNK ? r->size - r->off : POP3_CHUNK;
		ssize_t got = pread(r->fd, chunk, (size_t)want, (off_t)r->off);
		if (got <= 0) {
			/* The reply cannot be completed: the client must not
			 * mistake a truncated message for a whole one. */
			log_error("pop3: reading a message for %s failed at %llu of %llu: %s", s->client,
				  (unsigned long long)r->off, (unsigned long long)r->size,
				  got < 0 ? strerror(errno) : "file too short");
			s->close = PC_NOW;
			break;
		}
		r->off += (uint64_t)got;
		if (!r->top) {
			retr_send_stuffed(s, r, chunk, (size_t)got);
			continue;
		}
		buf_reset(&out);
		retr_stuff(r, chunk, (size_t)got, &out);
		pop3_session_write(s, out.data, out.len);
	}
	buf_free(&out);
	free(chunk);
}

static void send_retr(struct pop3_session *s, const struct pop3_msg *m, int fd, int err, bool top,
		      uint32_t lines);

/* A blob on a compressed tier is opened (decompressed) on a store thread:
 * that takes CPU time in proportion to the message, never the loop's. */
struct open_job {
	struct pop3_job j;
	const struct settings *set;  /* settings live until exit */
	struct msgid id;             /* a copy: the pool thread reads no session state */
	uint32_t num;                /* 1-based message number */
	bool top;
	uint32_t lines;
	int fd;
	int err;
};

static void open_run(struct pop3_job *j, struct store *st)
{
	(void)st;
	struct open_job *oj = (struct open_job *)j;
	oj->fd = store_blob_open(oj->set, 0, &oj->id, NULL);
	oj->err = errno;
	j->status = ST_OK;
}

static void open_done(struct pop3_job *j)
{
	struct open_job *oj = (struct open_job *)j;
	struct pop3_session *s = j->s;
	if (pop3_session_job_finished(s)) {
		send_retr(s, &s->md->m[oj->num - 1], oj->fd, oj->err, oj->top, oj->lines);
		oj->fd = -1;
		pop3_session_job_end(s);
	}
	if (oj->fd >= 0)
		close(oj->fd);
	free(j->error);
	free(oj);
}

static void start_retr(struct pop3_session *s, struct pop3_msg *m, bool top, uint32_t lines)
{
	int fd = store_blob_open_nowait(s->set, 0, &m->id, NULL); /* any tier (src/tier) */
	if (fd < 0 && errno == EWOULDBLOCK) {
		struct open_job *oj = xcalloc(1, sizeof(*oj));
		oj->set = s->set;
		oj->id = m->id;
		oj->num = (uint32_t)(m - s->md->m) + 1;
		oj->top = top;
		oj->lines = lines;
		oj->fd = -1;
		oj->j.run = open_run;
		oj->j.done = open_done;
		pop3_session_submit(s, &oj->j);
		return;
	}
	send_retr(s, m, fd, errno, top, lines);
}

/* Starts the reply to RETR or TOP with the message's open blob (fd), or
 * answers the error (fd < 0, err). */
static void send_retr(struct pop3_session *s, const struct pop3_msg *m, int fd, int err, bool top,
		      uint32_t lines)
{
	if (fd < 0) {
		char path[PATH_MAX];
		store_blob_path(s->set->store_blob_dir, &m->id, path, sizeof(path));
		log_error("pop3: cannot open %s for %s: %s", path, s->client, strerror(err));
		pop3_session_err(s, "[SYS/TEMP] Cannot read the message, it may have been deleted.");
		return;
	}
	store_access_note(&m->id);
	struct pop3_retr *r = xcalloc(1, sizeof(*r));
	r->fd = fd;
	r->size = m->size;
	r->top = top;
	r->lines_left = lines;
	r->bol = true;
	r->last_lf = true;   /* an empty message still ends with "." alone */
	s->retr = r;
	if (top)
		ok_bare(s);
	else
		pop3_session_ok(s, "%llu octets", (unsigned long long)m->size);
	pop3_session_pause(s, PP_RETR);
	pop3_retr_continue(s);
}

static void cmd_retr(struct pop3_session *s, const struct pop3_cmd *cmd)
{
	if (cmd->n_args != 1) {
		pop3_session_bad(s, "RETR takes one argument");
		return;
	}
	uint32_t num;
	struct pop3_msg *m = message_arg(s, cmd->args[0], &num);
	if (m != NULL)
		start_retr(s, m, false, 0);
}

static void cmd_top(struct pop3_session *s, const struct pop3_cmd *cmd)
{
	if (cmd->n_args != 2) {
		pop3_session_bad(s, "TOP takes two arguments");
		return;
	}
	uint32_t lines;
	if (!pop3_parse_number(cmd->args[1], &lines)) {
		pop3_session_bad(s, "Invalid number of lines");
		return;
	}
	uint32_t num;
	struct pop3_msg *m = message_arg(s, cmd->args[0], &num);
	if (m != NULL)
		start_retr(s, m, true, lines);
}

/* ---- dispatch ----------------------------------------------------------------------------- */

static void dispatch_auth(struct pop3_session *s, const struct pop3_cmd *cmd)
{
	const char *n = cmd->name;
	if (strcmp(n, "USER") == 0)
		cmd_user(s, cmd);
	else if (strcmp(n, "PASS") == 0)
		cmd_pass(s, cmd);
	else if (strcmp(n, "AUTH") == 0)
		cmd_auth(s, cmd);
	else if (strcmp(n, "STLS") == 0 && cmd->n_args == 0)
		cmd_stls(s);
	else
		pop3_session_bad(s, "Unknown command.");
}

static void dispatch_trans(struct pop3_session *s, const struct pop3_cmd *cmd)
{
	const char *n = cmd->name;
	bool none = cmd->n_args == 0;
	if (strcmp(n, "STAT") == 0 && none)
		cmd_stat(s);
	else if (strcmp(n, "LIST") == 0)
		list_or_uidl(s, cmd, false);
	else if (strcmp(n, "UIDL") == 0)
		list_or_uidl(s, cmd, true);
	else if (strcmp(n, "RETR") == 0)
		cmd_retr(s, cmd);
	else if (strcmp(n, "TOP") == 0)
		cmd_top(s, cmd);
	else if (strcmp(n, "DELE") == 0)
		cmd_dele(s, cmd);
	else if (strcmp(n, "NOOP") == 0 && none)
		ok_bare(s);
	else if (strcmp(n, "RSET") == 0 && none)
		cmd_rset(s);
	else
		pop3_session_bad(s, "Unknown command.");
}

void pop3_command_line(struct pop3_session *s, const char *line, size_t len)
{
	if (s->state == PS_AUTH && len >= 6 && memcmp(line, "PROXY ", 6) == 0) {
		/* A PROXY header from an address not in guard.user.proxy_from:
		 * a protocol error (docs/GUARD.md). */
		pop3_session_err(s, "PROXY protocol not accepted from your address");
		pop3_session_close_after_flush(s);
		return;
	}
	struct pop3_cmd *cmd = xmalloc(sizeof(*cmd));
	const char *err = NULL;
	if (pop3_parse_command(line, len, cmd, &err) != ST_OK) {
		pop3_session_bad(s, "%s", err);
	} else if (strcmp(cmd->name, "CAPA") == 0 && cmd->n_args == 0) {
		cmd_capa(s);
	} else if (strcmp(cmd->name, "QUIT") == 0 && cmd->n_args == 0) {
		cmd_quit(s);
	} else if (s->state == PS_AUTH) {
		dispatch_auth(s, cmd);
	} else if (s->state == PS_TRANS) {
		dispatch_trans(s, cmd);
	}
	explicit_bzero(cmd, sizeof(*cmd));   /* PASS and AUTH lines */
	free(cmd);
}
