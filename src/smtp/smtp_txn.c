/*
 * smtp_txn.c - the mail transaction: recipients, the spool, the Received:
 * header, end of data, commit, and the one log line per message.
 *
 * Contract:
 *  - Recipients are resolved on the worker's store_reader (read-only, this
 *    thread only).  On MX relaying is impossible by construction: an address
 *    is accepted only when the store resolves it to local accounts; an
 *    address literal domain is refused before any lookup; nothing in the
 *    address is reinterpreted (percent hack, bang path and quoted "@" are
 *    looked up as-is and do not match).  On submission (only ever after
 *    AUTH: MAIL needs it) an address of a domain that is not local is
 *    accepted as remote and handed to the outbound queue with the
 *    envelope sender (queue_msg_add_remote, queue_msg_set_sender).
 *  - Submission only: Received: says "with ESMTPSA" (RFC 3848), and
 *    a message without Date: or Message-ID: gets them (smtp_hdrfix.c).
 *  - Accounts are deduplicated across RCPTs: a message for two addresses of
 *    one account is stored once for it.
 *  - Message octets reach the spool only through the data machine; a
 *    message that became too big or bad stops being spooled at once (its
 *    spool is aborted) and is rejected at its end.
 *  - The 250 is sent only from txn_done, i.e. after the queue reports the
 *    message durable.  Every other outcome is a reply from a table.
 *  - Exactly one log line per started message: accepted, rejected or
 *    aborted, with the queue id.  Untrusted text passes through log_escape.
 *
 * Threads: the worker's event loop thread only.
 */
#include "smtp_session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metrics.h"

#define LOG_RCPTS_MAX 10   /* recipients named in a log line */
#define IDSET_EMPTY INT64_MIN

/* ---- account id set ------------------------------------------------------ */

static size_t idset_slot(int64_t id, size_t cap)
{
	uint64_t h = (uint64_t)id * 0x9e3779b97f4a7c15ull;
	return (size_t)(h >> 17) & (cap - 1);
}

static void idset_clear(struct smtp_txn *t)
{
	for (size_t i = 0; i < t->idset_cap; i++)
		t->idset[i] = IDSET_EMPTY;
}

static void idset_grow(struct smtp_txn *t)
{
	size_t cap = t->idset_cap ? t->idset_cap * 2 : 64;
	int64_t *slots = xreallocarray(NULL, cap, sizeof(*slots));
	for (size_t i = 0; i < cap; i++)
		slots[i] = IDSET_EMPTY;
	for (size_t i = 0; i < t->idset_cap; i++) {
		if (t->idset[i] == IDSET_EMPTY)
			continue;
		size_t k = idset_slot(t->idset[i], cap);
		while (slots[k] != IDSET_EMPTY)
			k = (k + 1) & (cap - 1);
		slots[k] = t->idset[i];
	}
	free(t->idset);
	t->idset = slots;
	t->idset_cap = cap;
}

/* Inserts id; false if it was already there.  Load factor stays <= 1/2. */
static bool idset_insert(struct smtp_txn *t, int64_t id)
{
	if (id == IDSET_EMPTY)
		panic("smtp: account id %lld is reserved", (long long)id);
	if ((t->n_accounts + 1) * 2 > t->idset_cap)
		idset_grow(t);
	size_t k = idset_slot(id, t->idset_cap);
	while (t->idset[k] != IDSET_EMPTY) {
		if (t->idset[k] == id)
			return false;
		k = (k + 1) & (t->idset_cap - 1);
	}
	t->idset[k] = id;
	return true;
}

/* ---- logging ------------------------------------------------------------- */

static void log_rcpt_list(const struct smtp_txn *t, struct buf *out)
{
	char esc[SESS_ADDR_MAX * 4];
	for (size_t i = 0; i < t->n_rcpts && i < LOG_RCPTS_MAX; i++) {
		if (i > 0)
			buf_append_char(out, ',');
		const char *a = t->rcpts[i].addr;
		buf_append_str(out, log_escape(a, strlen(a), esc, sizeof(esc)));
	}
	if (t->n_rcpts > LOG_RCPTS_MAX)
		buf_append_str(out, ",...");
}

/* The TLS protocol name: the part of tls_describe() before the first ':'. */
static void tls_proto(const struct smtp_session *s, char *out, size_t cap)
{
	size_t n = strcspn(s->tls_desc, ":");
	if (n >= cap)
		n = cap - 1;
	memcpy(out, s->tls_desc, n);
	out[n] = '\0';
}

static void txn_log(const struct smtp_session *s, const char *qid, const char *status)
{
	const struct smtp_txn *t = &s->txn;
	char from[SMTP_PATH_MAX * 4 + 1], helo[SMTP_DOMAIN_MAX * 4 + 1], st[1024];
	struct buf rcpts = BUF_INIT;
	log_rcpt_list(t, &rcpts);
	char tls[64] = "";
	if (s->tls) {
		char proto[48];
		tls_proto(s, proto, sizeof(proto));
		snprintf(tls, sizeof(tls), ", tls=%s", proto);
	}
	char sasl[sizeof(s->auth_user) * 4 + 64] = "";
	if (s->authed) {
		char user[sizeof(s->auth_user) * 4];
		snprintf(sasl, sizeof(sasl), ", sasl_method=%s, sasl_username=%s", s->auth_mech,
			 log_escape(s->auth_user, strlen(s->auth_user), user, sizeof(user)));
	}
	log_info("%s: from=<%s>, size=%llu, nrcpt=%zu (%s), client=%s, helo=<%s>%s%s, status=%s", qid,
		 log_escape(t->from, strlen(t->from), from, sizeof(from)), (unsigned long long)t->size,
		 t->n_rcpts, rcpts.data != NULL ? rcpts.data : "", s->client,
		 log_escape(s->helo, strlen(s->helo), helo, sizeof(helo)), tls, sasl,
		 log_escape(status, strlen(status), st, sizeof(st)));
	buf_free(&rcpts);
}

static void log_rcpt_reject(const struct smtp_session *s, const char *addr, int code, const char *enh,
			    const char *text)
{
	char a[SESS_ADDR_MAX * 4], from[SMTP_PATH_MAX * 4 + 1], helo[SMTP_DOMAIN_MAX * 4 + 1];
	log_escape(addr, strlen(addr), a, sizeof(a));
	log_info("reject: RCPT from %s: %d %s <%s>: %s; from=<%s> to=<%s> proto=%s helo=<%s>", s->client,
		 code, enh, a, text, log_escape(s->txn.from, strlen(s->txn.from), from, sizeof(from)), a,
		 s->esmtp ? "ESMTP" : "SMTP", log_escape(s->helo, strlen(s->helo), helo, sizeof(helo)));
}

/* ---- reset --------------------------------------------------------------- */

void txn_reset(struct smtp_session *s, const char *abort_reason)
{
	struct smtp_txn *t = &s->txn;
	if (t->qid[0] != '\0' && abort_reason != NULL) {
		char status[256];
		snprintf(status, sizeof(status), "aborted (%s)", abort_reason);
		txn_log(s, t->qid, status);
	}
	if (t->msg != NULL)
		queue_msg_abort(&t->msg);
	if (s->pause & PAUSE_QUEUE)
		session_resume(s, PAUSE_QUEUE);
	t->active = false;
	t->from[0] = '\0';
	memset(&t->params, 0, sizeof(t->params));
	t->rcpt_attempts = 0;
	t->n_rcpts = 0;
	t->n_accounts = 0;
	idset_clear(t);
	t->bdat = false;
	t->qid[0] = '\0';
	t->too_big = false;
	t->size = 0;
	t->eod_us = 0;
	t->fix_headers = false;
	buf_reset(&t->fixed);
	buf_reset(&s->dout);
}

void txn_free(struct smtp_txn *t)
{
	if (t->msg != NULL)
		queue_msg_abort(&t->msg);
	xfree(&t->rcpts);
	xfree(&t->accounts);
	xfree(&t->idset);
	buf_free(&t->fixed);
	t->cap_rcpts = t->cap_accounts = t->idset_cap = 0;
	t->n_rcpts = t->n_accounts = 0;
}

/* ---- RCPT ------------------------------------------------------------------ */

static void ascii_lower(char *p)
{
	for (; *p != '\0'; p++)
		if (*p >= 'A' && *p <= 'Z')
			*p = (char)(*p - 'A' + 'a');
}

static void rcpt_reject(struct smtp_session *s, const char *addr, int metric, int code, const char *enh,
			const char *text)
{
	log_rcpt_reject(s, addr, code, enh, text);
	session_reply_error(s, metric, "%d %s <%s>: %s", code, enh, addr, text);
}

static void rcpt_add(struct smtp_txn *t, const char *addr, const char *lookup, bool remote)
{
	if (t->n_rcpts == t->cap_rcpts) {
		t->cap_rcpts = t->cap_rcpts ? t->cap_rcpts * 2 : 4;
		t->rcpts = xreallocarray(t->rcpts, t->cap_rcpts, sizeof(*t->rcpts));
	}
	struct txn_rcpt *r = &t->rcpts[t->n_rcpts];
	snprintf(r->addr, sizeof(r->addr), "%s", addr);
	snprintf(r->lookup, sizeof(r->lookup), "%s", lookup);
	r->remote = remote;
}

/* Submission: a recipient outside the local domains, for the outbound
 * queue.  Its address keeps the client's case (a remote local part may be
 * case-sensitive, RFC 5321 2.4). */
static void rcpt_accept_remote(struct smtp_session *s, const char *addr, const char *lookup)
{
	rcpt_add(&s->txn, addr, lookup, true);
	s->txn.n_rcpts++;
	metric_inc(M_SMTP_RECIPIENTS_ACCEPTED);
	session_reply(s, "250 2.1.5 Ok");
}

static void rcpt_accept(struct smtp_session *s, const char *addr, const char *lookup,
			const struct rcpt_resolution *res)
{
	struct smtp_txn *t = &s->txn;
	rcpt_add(t, addr, lookup, false);
	for (size_t i = 0; i < res->n && i < STORE_MAX_EXPANSION; i++) {
		if (!idset_insert(t, res->account_ids[i]))
			continue;
		if (t->n_accounts == t->cap_accounts) {
			t->cap_accounts = t->cap_accounts ? t->cap_accounts * 2 : 4;
			t->accounts = xreallocarray(t->accounts, t->cap_accounts, sizeof(*t->accounts));
		}
		t->accounts[t->n_accounts].id = res->account_ids[i];
		t->accounts[t->n_accounts].rcpt = t->n_rcpts;
		snprintf(t->accounts[t->n_accounts].address, sizeof(t->accounts[t->n_accounts].address),
			 "%s", res->addresses[i]);
		t->n_accounts++;
	}
	t->n_rcpts++;
	metric_inc(M_SMTP_RECIPIENTS_ACCEPTED);
	session_reply(s, "250 2.1.5 Ok");
}

void txn_rcpt(struct smtp_session *s, const struct smtp_path *path)
{
	struct smtp_txn *t = &s->txn;
	char lookup[SESS_ADDR_MAX];
	if (path->postmaster)
		snprintf(lookup, sizeof(lookup), "postmaster@%s", s->set->hostname);
	else
		snprintf(lookup, sizeof(lookup), "%s", path->addr);
	ascii_lower(lookup);
	const char *shown = path->postmaster ? lookup : path->addr;

	if (t->n_rcpts >= s->set->smtp_max_recipients) {
		rcpt_reject(s, shown, M_SMTP_REJECT_TOO_MANY_RCPTS, 452, "4.5.3", "Too many recipients");
		return;
	}
	if (path->domain_literal && s->service != SMTP_SERVICE_MX) {
		rcpt_reject(s, shown, M_SMTP_REJECT_RELAY, 550, "5.7.1",
			    "Recipient address rejected: address literals are not accepted");
		return;
	}
	if (path->domain_literal) {
		rcpt_reject(s, shown, M_SMTP_REJECT_RELAY, 554, "5.7.1", "Relay access denied");
		return;
	}
	struct rcpt_resolution res;
	memset(&res, 0, sizeof(res));
	uint64_t size = t->params.size_given ? t->params.size : 0;
	enum status st = store_resolve_rcpt(s->w->reader, lookup, size, &res);
	if (st == ST_OK && res.n == 0)
		st = ST_NOT_FOUND;
	/* <postmaster> is ours by definition (RFC 5321 4.5.1): when the
	 * hostname's domain is not served, it is an unknown user, not a relay. */
	if (st == ST_INVALID && path->postmaster)
		st = ST_NOT_FOUND;
	const struct status_info *si;
	switch (st) {
	case ST_OK:
		if (res.over_quota) {
			si = status_info(s->set->quota_over_reply == QUOTA_REPLY_PERMANENT ? ST_OVER_QUOTA_PERM
											   : ST_OVER_QUOTA_TEMP);
			rcpt_reject(s, shown, M_SMTP_REJECT_QUOTA, si->smtp_code, si->smtp_enh, si->smtp_text);
			return;
		}
		rcpt_accept(s, shown, lookup, &res);
		return;
	case ST_NOT_FOUND:
		si = status_info(ST_NOT_FOUND);
		rcpt_reject(s, shown, M_SMTP_REJECT_UNKNOWN_USER, si->smtp_code, si->smtp_enh,
			    "Recipient address rejected: User unknown");
		if (++s->unknown_rcpts >= s->set->smtp_max_unknown_recipients)
			session_offence(s, GUARD_OFFENCE_HARVEST);
		return;
	case ST_INVALID:
		if (s->service != SMTP_SERVICE_MX && s->authed) {
			rcpt_accept_remote(s, path->addr, lookup);
			return;
		}
		rcpt_reject(s, shown, M_SMTP_REJECT_RELAY, 554, "5.7.1", "Relay access denied");
		return;
	default:
		si = status_info(ST_TEMPFAIL);
		rcpt_reject(s, shown, M_SMTP_REJECT_TEMPFAIL, si->smtp_code, si->smtp_enh, si->smtp_text);
		return;
	}
}

/* ---- the message ------------------------------------------------------------ */

/* RFC 3848 / RFC 6531 "with" keyword ("A": AUTH, submission only). */
static const char *with_keyword(const struct smtp_session *s)
{
	if (s->txn.params.smtputf8 && s->authed)
		return s->tls ? "UTF8SMTPSA" : "UTF8SMTPA";
	if (s->txn.params.smtputf8)
		return s->tls ? "UTF8SMTPS" : "UTF8SMTP";
	if (s->authed)
		return s->tls ? "ESMTPSA" : "ESMTPA";
	if (s->tls)
		return "ESMTPS";
	return s->esmtp ? "ESMTP" : "SMTP";
}

static void received_header(const struct smtp_session *s, struct buf *h)
{
	const struct smtp_txn *t = &s->txn;
	char date[64];
	time_rfc5322((int64_t)time(NULL), date, sizeof(date));
	buf_printf(h, "Received: from %s ([%s%s])\r\n", s->helo, s->ipv6 ? "IPv6:" : "", s->ip);
	buf_printf(h, "\tby %s (Strata) with %s id %s", s->set->hostname, with_keyword(s), t->qid);
	if (s->tls)
		buf_printf(h, "\r\n\t(using %s)", s->tls_desc);
	if (t->n_rcpts == 1)
		buf_printf(h, "\r\n\tfor <%s>", t->rcpts[0].addr);
	buf_printf(h, "; %s\r\n", date);
}

/* Submission: Date: and Message-ID: for a message that lacks them. */
static void begin_header_fix(struct smtp_session *s)
{
	struct smtp_txn *t = &s->txn;
	char date[64], msgid[SESS_ADDR_MAX + MSGID_TEXT_LEN + 8];
	time_rfc5322((int64_t)time(NULL), date, sizeof(date));
	snprintf(msgid, sizeof(msgid), "<%s@%s>", t->qid, s->set->hostname);
	smtp_hdrfix_init(&t->hdrfix, date, msgid);
	t->fix_headers = true;
	buf_reset(&t->fixed);
}

/* Appends octets to the spool, noting a refusal as too big. */
static void spool_append(struct smtp_txn *t, const char *data, size_t len)
{
	if (len == 0)
		return;
	if (queue_msg_append(t->msg, data, len) == ST_TOO_BIG)
		t->too_big = true;
	else
		t->size += len;
}

void txn_begin_message(struct smtp_session *s, enum smtp_data_mode mode)
{
	struct smtp_txn *t = &s->txn;
	t->msg = queue_msg_new(s->w->q, s->w->base);
	snprintf(t->qid, sizeof(t->qid), "%s", queue_msg_id(t->msg));
	queue_msg_set_drained_cb(t->msg, txn_drained, s);
	for (size_t i = 0; i < t->n_accounts; i++)
		queue_msg_add_account(t->msg, t->accounts[i].id, t->accounts[i].address);
	if (s->service != SMTP_SERVICE_MX) {
		queue_msg_set_sender(t->msg, t->from);
		for (size_t i = 0; i < t->n_rcpts; i++)
			if (t->rcpts[i].remote)
				queue_msg_add_remote(t->msg, t->rcpts[i].addr);
		begin_header_fix(s);
	}
	smtp_data_init(&t->data, mode, (enum bare_lf_mode)s->set->smtp_bare_lf);
	t->too_big = false;
	t->size = 0;
	buf_reset(&s->dout);
	received_header(s, &s->dout);
}

/* Hands the data machine's output to the spool (or drops it once the
 * message has failed), then applies backpressure. */
static void spool_out(struct smtp_session *s)
{
	struct smtp_txn *t = &s->txn;
	if (s->dout.len == 0)
		return;
	if (t->msg != NULL && !t->too_big && t->data.bad == 0) {
		if (t->fix_headers && !t->hdrfix.done) {
			buf_reset(&t->fixed);
			smtp_hdrfix_feed(&t->hdrfix, s->dout.data, s->dout.len, &t->fixed);
			spool_append(t, t->fixed.data, t->fixed.len);
		} else {
			spool_append(t, s->dout.data, s->dout.len);
		}
	}
	buf_reset(&s->dout);
	if (t->msg != NULL && (t->too_big || t->data.bad != 0)) {
		/* The message cannot succeed: free its spool now and keep
		 * consuming its data to the end (t->qid stays for the log). */
		queue_msg_abort(&t->msg);
		if (s->pause & PAUSE_QUEUE)
			session_resume(s, PAUSE_QUEUE);
		return;
	}
	if (t->msg != NULL && queue_msg_pending_bytes(t->msg) > QUEUE_PENDING_HIGH_WATER)
		session_pause(s, PAUSE_QUEUE);
}

size_t txn_feed(struct smtp_session *s, const char *data, size_t len)
{
	size_t used = smtp_data_feed(&s->txn.data, data, len, &s->dout);
	spool_out(s);
	return used;
}

void txn_drained(void *arg)
{
	struct smtp_session *s = arg;
	if (!(s->pause & PAUSE_QUEUE))
		return;
	session_resume(s, PAUSE_QUEUE);
	session_drive(s);
	session_settle(s);
}

bool txn_failed(struct smtp_session *s, int *code, const char **enh, const char **text, int *metric)
{
	const struct smtp_txn *t = &s->txn;
	if (t->too_big) {
		const struct status_info *si = status_info(ST_TOO_BIG);
		*code = si->smtp_code;
		*enh = si->smtp_enh;
		*text = si->smtp_text;
		*metric = M_SMTP_REJECT_SIZE;
		return true;
	}
	if (t->data.bad != 0) {
		const struct smtp_data_reject *r = smtp_data_reject_reply(t->data.bad);
		*code = r->code;
		*enh = r->enh;
		*text = r->text;
		*metric = M_SMTP_REJECT_BAD_CONTENT;
		return true;
	}
	return false;
}

/* Logs "rejected (...)" for the started message and forgets the transaction. */
void txn_reject_message(struct smtp_session *s, int code, const char *enh, const char *text)
{
	char status[512];
	snprintf(status, sizeof(status), "rejected (%d %s %s)", code, enh, text);
	if (s->txn.qid[0] != '\0')
		txn_log(s, s->txn.qid, status);
	s->txn.qid[0] = '\0';
	txn_reset(s, NULL);
}

/* A clean delivery makes the source a good sender (guard.h): the session
 * is not being closed for an offence (an offence closes it at once, so a
 * session still open has none). */
static void txn_good_sender(const struct smtp_session *s)
{
	if (s->close == CLOSE_NONE)
		guard_good_mark_ip(s->ip);
}

static void txn_done(void *arg, enum status st, const char *queue_id)
{
	struct smtp_session *s = arg;
	struct smtp_txn *t = &s->txn;
	s->committing = false;
	histogram_observe(M_H_SMTP_ACCEPT_LATENCY, (double)(time_mono_us() - t->eod_us) / 1e6);
	bool gone = s->bev == NULL;
	if (st == ST_OK) {
		metric_inc(M_SMTP_MESSAGES_ACCEPTED);
		txn_log(s, queue_id, gone ? "accepted (client gone before the reply)" : "accepted");
		session_reply(s, "250 2.0.0 Ok: queued as %s", queue_id);
		txn_good_sender(s);
		/* smtp.max_commands bounds the commands between accepted
		 * messages: a sender that keeps delivering on one connection
		 * (a relay's connection cache) is never cut for it. */
		s->commands_budget = 0;
	} else {
		const struct status_info *si = status_info(st);
		metric_inc(st == ST_OVER_QUOTA_TEMP || st == ST_OVER_QUOTA_PERM ? M_SMTP_REJECT_QUOTA
		       : st == ST_TOO_BIG ? M_SMTP_REJECT_SIZE
					 : M_SMTP_REJECT_TEMPFAIL);
		char status[512];
		snprintf(status, sizeof(status), "rejected (%d %s %s)", si->smtp_code, si->smtp_enh,
			 si->smtp_text);
		txn_log(s, queue_id, status);
		session_reply(s, "%d %s %s", si->smtp_code, si->smtp_enh, si->smtp_text);
	}
	txn_reset(s, NULL);
	s->state = SS_CMD;
	s->pause &= ~PAUSE_COMMIT;
	if (!gone && s->close == CLOSE_NONE) {
		session_set_timeouts(s);
		if (s->shutdown) {
			const struct status_info *si = status_info(ST_SHUTDOWN);
			session_close_with(s, "shutdown", "%d %s %s", si->smtp_code, si->smtp_enh,
					   si->smtp_text);
		} else {
			session_resume(s, 0);
			session_drive(s);
		}
	}
	session_settle(s);
}

void txn_end_message(struct smtp_session *s)
{
	struct smtp_txn *t = &s->txn;
	t->eod_us = time_mono_us();
	if (t->data.mode == SMTP_DATA_BDAT) {
		smtp_data_finish(&t->data, &s->dout);
		spool_out(s);
	}
	if (t->fix_headers && !t->hdrfix.done && t->msg != NULL && !t->too_big && t->data.bad == 0) {
		/* A message that is all header: the missing fields go last. */
		buf_reset(&t->fixed);
		smtp_hdrfix_finish(&t->hdrfix, &t->fixed);
		spool_append(t, t->fixed.data, t->fixed.len);
		if (t->too_big)
			queue_msg_abort(&t->msg);
	}
	int code, metric;
	const char *enh, *text;
	if (txn_failed(s, &code, &enh, &text, &metric)) {
		txn_reject_message(s, code, enh, text);
		session_reply_error(s, metric, "%d %s %s", code, enh, text);
		return;
	}
	if (t->msg == NULL)
		panic("smtp: end of message without a spool");
	t->size = queue_msg_size(t->msg);
	struct queue_msg *m = t->msg;
	t->msg = NULL;
	t->qid[0] = '\0';   /* logged by txn_done */
	s->committing = true;
	s->state = SS_COMMIT;
	s->pause &= ~PAUSE_QUEUE;   /* drained never runs after submit */
	session_pause(s, PAUSE_COMMIT);
	queue_msg_submit(m, txn_done, s);
}
