/*
 * smtp_auth.c - AUTH on the submission services (RFC 4954): the SASL
 * exchange, password verification off the event loop, the brute-force
 * delay, and the sender ownership check of MAIL FROM.
 *
 * Contract:
 *  - AUTH exists only on SUBMISSION/SUBMISSIONS, and only over TLS unless
 *    submission.require_tls = no; on MX the verb stays unknown (500).
 *  - The password is verified on one of the worker's store threads
 *    (queue_pool): store_user_get + auth_verify_password_cached (auth.cache_*), never
 *    on the network thread.  While it runs the session reads nothing
 *    (PAUSE_AUTH), so pipelined commands wait for the verdict.
 *  - A failure is reported to the guard (guard_auth_failure, the same
 *    per-address and per-account counts as IMAP and POP3) and answered
 *    535 only after the delay the guard returns, on a timer of the loop.
 *    A success is never delayed, whatever the counts (the guard's design:
 *    an attacker hammering an account cannot lock its owner out), and it
 *    marks the client as a good sender.
 *  - The session is never freed while a job is in flight (it becomes an
 *    orphan, see smtp_session.h); the job's done callback settles it.
 *  - Every decoded password is wiped (sodium_memzero) once used.
 *  - Log lines name the SASL method and user like Postfix
 *    ("sasl_method=PLAIN, sasl_username=..."); user names are escaped.
 *
 * Threads: everything on the worker's loop thread, except auth_job_run
 * (a store thread, touching only its job).
 */
#include "smtp_session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "auth.h"
#include "metrics.h"

struct smtp_auth_job {
	struct queue_job qj;            /* first: the pool's handle */
	struct smtp_session *s;
	enum smtp_sasl_mech mech;
	enum status status;             /* ST_OK, ST_NOT_FOUND (bad credentials) or a temp failure */
	char user[SMTP_SASL_USER_MAX + 1];
	char pass[SMTP_SASL_PASS_MAX + 1];
	int64_t account;
	char address[320];
};

static const char *mech_name(enum smtp_sasl_mech m)
{
	return m == SMTP_SASL_LOGIN ? "LOGIN" : "PLAIN";
}

bool auth_offered(const struct smtp_session *s)
{
	if (s->service == SMTP_SERVICE_MX)
		return false;
	return s->tls || !s->set->submission_require_tls;
}

void auth_forget(struct smtp_session *s)
{
	s->authed = false;
	s->auth_account = 0;
	s->auth_user[0] = '\0';
	s->auth_mech = NULL;
	s->sasl = SASL_NONE;
	sodium_memzero(s->sasl_user, sizeof(s->sasl_user));
}

/* ---- the verdict -------------------------------------------------------------- */

/* Runs on a store thread. */
static void auth_job_run(struct queue_job *qj, struct store *st)
{
	struct smtp_auth_job *j = (struct smtp_auth_job *)qj;
	char addr[SMTP_SASL_USER_MAX + 1];
	snprintf(addr, sizeof(addr), "%s", j->user);
	str_lower(addr);
	struct account a;
	enum status rc = store_user_get(st, addr, &a);
	if (rc == ST_OK && a.pwhash[0] != '\0' && auth_verify_password_cached(j->pass, a.pwhash)) {
		j->status = ST_OK;
		j->account = a.id;
		snprintf(j->address, sizeof(j->address), "%s", a.address);
	} else if (rc == ST_OK || rc == ST_NOT_FOUND || rc == ST_INVALID) {
		j->status = ST_NOT_FOUND;
	} else {
		j->status = ST_TEMPFAIL;
	}
	sodium_memzero(j->pass, sizeof(j->pass));
	sodium_memzero(&a, sizeof(a));
}

/* Ends the PAUSE_AUTH period: reads again and runs pipelined input. */
static void auth_resume(struct smtp_session *s)
{
	session_resume(s, PAUSE_AUTH);
	session_drive(s);
}

static void auth_fail_reply(struct smtp_session *s)
{
	session_reply_error(s, -1, "535 5.7.8 Error: authentication failed: authentication failure");
}

static void auth_delay_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct smtp_session *s = arg;
	if (s->close == CLOSE_NONE && s->bev != NULL) {
		auth_fail_reply(s);
		auth_resume(s);
	}
	session_settle(s);
}

/* Reports the failure to the guard; the 535 goes out after its delay. */
static void auth_failed(struct smtp_session *s, const struct smtp_auth_job *j)
{
	char esc[SMTP_SASL_USER_MAX * 4 + 1];
	metric_inc(M_SMTP_AUTH_FAILURES);
	log_info("smtp: %s: SASL %s authentication failed, sasl_username=%s", s->client, mech_name(j->mech),
		 log_escape(j->user, strlen(j->user), esc, sizeof(esc)));
	struct guard *g = guard_process();
	struct guard_addr a;
	uint64_t ms = 0;
	if (g != NULL && guard_addr_parse(s->ip, &a)) {
		char account[SMTP_SASL_USER_MAX + 1];
		snprintf(account, sizeof(account), "%s", j->user);
		str_lower(account);
		ms = guard_auth_failure(g, &a, account, time_mono_ms());
	}
	if (ms == 0) {
		auth_fail_reply(s);
		auth_resume(s);
		return;
	}
	if (s->auth_ev == NULL)
		s->auth_ev = evtimer_new(bufferevent_get_base(s->bev), auth_delay_cb, s);
	if (s->auth_ev == NULL)
		panic("smtp: evtimer_new failed");
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
	evtimer_add(s->auth_ev, &tv);   /* PAUSE_AUTH stays set until it fires */
}

static void auth_succeeded(struct smtp_session *s, const struct smtp_auth_job *j)
{
	metric_inc(M_SMTP_AUTH_SUCCESS);
	s->authed = true;
	s->auth_account = j->account;
	snprintf(s->auth_user, sizeof(s->auth_user), "%s", j->address);
	s->auth_mech = mech_name(j->mech);
	char esc[sizeof(s->auth_user) * 4];
	log_info("smtp: %s: sasl_method=%s, sasl_username=%s", s->client, s->auth_mech,
		 log_escape(s->auth_user, strlen(s->auth_user), esc, sizeof(esc)));
	guard_good_mark_ip(s->ip);   /* a known-good client (docs/GUARD.md) */
	session_reply(s, "235 2.7.0 Authentication successful");
	auth_resume(s);
}

static void auth_job_done(struct queue_job *qj)
{
	struct smtp_auth_job *j = (struct smtp_auth_job *)qj;
	struct smtp_session *s = j->s;
	s->auth_job = NULL;
	if (s->bev == NULL || s->w == NULL || s->close != CLOSE_NONE) {
		/* The client went (or the session is closing) meanwhile. */
		if (s->close == CLOSE_NONE)
			s->close = CLOSE_NOW;
	} else if (j->status == ST_OK) {
		auth_succeeded(s, j);
	} else if (j->status == ST_NOT_FOUND) {
		auth_failed(s, j);
	} else {
		log_error("smtp: %s: cannot verify a password: index unavailable", s->client);
		session_reply(s, "454 4.7.0 Temporary authentication failure");
		auth_resume(s);
	}
	sodium_memzero(j, sizeof(*j));
	free(j);
	session_settle(s);
}

/* Hands the credentials to a store thread; wipes c. */
static void auth_start(struct smtp_session *s, enum smtp_sasl_mech mech, struct smtp_sasl_creds *c)
{
	if (s->w->pool == NULL) {
		/* Not reached: a worker serves submission only with its pool. */
		sodium_memzero(c, sizeof(*c));
		session_reply(s, "454 4.7.0 Temporary authentication failure");
		return;
	}
	struct smtp_auth_job *j = xcalloc(1, sizeof(*j));
	j->s = s;
	j->mech = mech;
	memcpy(j->user, c->user, sizeof(j->user));
	memcpy(j->pass, c->pass, sizeof(j->pass));
	sodium_memzero(c, sizeof(*c));
	j->qj.run = auth_job_run;
	j->qj.done = auth_job_done;
	j->qj.base = s->w->base;
	s->auth_job = j;
	session_pause(s, PAUSE_AUTH);
	queue_pool_submit(s->w->pool, &j->qj);
}

/* ---- the exchange ------------------------------------------------------------- */

static void sasl_error(struct smtp_session *s, enum smtp_sasl_err e)
{
	s->sasl = SASL_NONE;
	sodium_memzero(s->sasl_user, sizeof(s->sasl_user));
	switch (e) {
	case SMTP_SASL_SYNTAX:
		session_reply_error(s, M_SMTP_REJECT_SYNTAX, "501 5.5.4 Syntax: AUTH mechanism [initial-response]");
		break;
	case SMTP_SASL_UNKNOWN_MECH:
		session_reply_error(s, -1, "504 5.5.4 Unrecognized authentication type");
		break;
	case SMTP_SASL_BAD_BASE64:
		session_reply_error(s, -1, "501 5.5.2 Cannot decode response");
		break;
	case SMTP_SASL_MALFORMED:
		session_reply_error(s, -1, "501 5.5.2 Malformed authentication response");
		break;
	case SMTP_SASL_AUTHZ:
		session_reply_error(s, -1, "535 5.7.8 Error: authentication failed: authorization identity not allowed");
		break;
	case SMTP_SASL_OK:
		break;
	}
}

static void sasl_plain_step(struct smtp_session *s, const char *b64, size_t len)
{
	struct smtp_sasl_creds c;
	enum smtp_sasl_err e = smtp_sasl_plain(b64, len, &c);
	s->sasl = SASL_NONE;
	if (e != SMTP_SASL_OK) {
		sasl_error(s, e);
		return;
	}
	auth_start(s, SMTP_SASL_PLAIN, &c);
}

static void sasl_login_step(struct smtp_session *s, const char *b64, size_t len)
{
	if (s->sasl == SASL_LOGIN_USER) {
		enum smtp_sasl_err e = smtp_sasl_login_field(b64, len, s->sasl_user, sizeof(s->sasl_user), true);
		if (e != SMTP_SASL_OK) {
			sasl_error(s, e);
			return;
		}
		s->sasl = SASL_LOGIN_PASS;
		session_reply(s, "334 UGFzc3dvcmQ6");   /* "Password:" */
		return;
	}
	struct smtp_sasl_creds c;
	memset(&c, 0, sizeof(c));
	enum smtp_sasl_err e = smtp_sasl_login_field(b64, len, c.pass, sizeof(c.pass), false);
	if (e != SMTP_SASL_OK) {
		sodium_memzero(&c, sizeof(c));
		sasl_error(s, e);
		return;
	}
	memcpy(c.user, s->sasl_user, sizeof(c.user));
	sodium_memzero(s->sasl_user, sizeof(s->sasl_user));
	s->sasl = SASL_NONE;
	auth_start(s, SMTP_SASL_LOGIN, &c);
}

void auth_response(struct smtp_session *s, enum smtp_line_status st)
{
	if (st == SMTP_LINE_TOO_LONG) {
		/* RFC 4954 4: the exchange ends, the session goes on. */
		s->sasl = SASL_NONE;
		sodium_memzero(s->sasl_user, sizeof(s->sasl_user));
		session_reply_error(s, M_SMTP_REJECT_SYNTAX, "500 5.5.6 Authentication Exchange line is too long");
		return;
	}
	if (st == SMTP_LINE_NUL) {
		sasl_error(s, SMTP_SASL_BAD_BASE64);
		return;
	}
	const char *line = s->lr.line.data != NULL ? s->lr.line.data : "";
	size_t len = s->lr.line.len;
	if (smtp_sasl_is_cancel(line, len)) {
		s->sasl = SASL_NONE;
		sodium_memzero(s->sasl_user, sizeof(s->sasl_user));
		session_reply_error(s, -1, "501 5.7.0 Authentication aborted");
		return;
	}
	if (s->sasl == SASL_PLAIN_WAIT)
		sasl_plain_step(s, line, len);
	else
		sasl_login_step(s, line, len);
}

void auth_command(struct smtp_session *s, const struct smtp_cmd *cmd)
{
	if (!s->helo_seen) {
		session_reply_error(s, -1, "503 5.5.1 Error: send EHLO first");
		return;
	}
	if (!auth_offered(s)) {
		session_reply_error(s, -1, "538 5.7.11 Encryption required for requested authentication mechanism");
		return;
	}
	if (s->authed) {
		session_reply_error(s, -1, "503 5.5.1 Error: already authenticated");
		return;
	}
	if (s->txn.active) {
		session_reply_error(s, -1, "503 5.5.1 Error: MAIL transaction in progress");
		return;
	}
	struct smtp_auth_arg a;
	enum smtp_sasl_err e = smtp_auth_parse(cmd->arg, cmd->arg_len, &a);
	if (e != SMTP_SASL_OK) {
		sasl_error(s, e);
		return;
	}
	if (a.mech == SMTP_SASL_PLAIN) {
		s->sasl = SASL_PLAIN_WAIT;
		if (a.has_ir)
			sasl_plain_step(s, a.ir, a.ir_len);
		else
			session_reply(s, "334 ");
		return;
	}
	s->sasl = SASL_LOGIN_USER;
	if (a.has_ir)
		sasl_login_step(s, a.ir, a.ir_len);
	else
		session_reply(s, "334 VXNlcm5hbWU6");   /* "Username:" */
}

/* ---- MAIL FROM ---------------------------------------------------------------- */

bool auth_sender_allowed(struct smtp_session *s, const struct smtp_path *path)
{
	if (!s->set->submission_sender_login_match)
		return true;
	char from[SMTP_PATH_MAX + 1];
	snprintf(from, sizeof(from), "%s", path->addr);
	str_lower(from);
	struct rcpt_resolution *res = NULL;
	enum status st = ST_OK;
	if (smtp_sender_needs_lookup(from, s->auth_user)) {
		res = xcalloc(1, sizeof(*res));
		st = store_resolve_rcpt(s->w->reader, from, 0, res);
	}
	enum smtp_sender_verdict v = smtp_sender_check(from, s->auth_account, s->auth_user, st, res);
	free(res);
	if (v == SMTP_SENDER_OWNED)
		return true;
	char esc_from[SMTP_PATH_MAX * 4 + 1], esc_user[sizeof(s->auth_user) * 4];
	log_escape(path->addr, strlen(path->addr), esc_from, sizeof(esc_from));
	log_escape(s->auth_user, strlen(s->auth_user), esc_user, sizeof(esc_user));
	if (v == SMTP_SENDER_TEMPFAIL) {
		const struct status_info *si = status_info(ST_TEMPFAIL);
		session_reply_error(s, M_SMTP_REJECT_TEMPFAIL, "%d %s %s", si->smtp_code, si->smtp_enh,
				    si->smtp_text);
		return false;
	}
	log_info("reject: MAIL from %s: 553 5.7.1 <%s>: Sender address rejected: not owned by user %s; "
		 "sasl_username=%s", s->client, esc_from, esc_user, esc_user);
	session_reply_error(s, -1, "553 5.7.1 <%s>: Sender address rejected: not owned by user %s", esc_from,
			    esc_user);
	return false;
}
