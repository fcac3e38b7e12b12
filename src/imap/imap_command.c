/*
 * imap_command.c - command dispatch with state checks, the any-state and
 * not-authenticated commands (CAPABILITY, NOOP, LOGOUT, STARTTLS, LOGIN,
 * AUTHENTICATE PLAIN and LOGIN, ID, ENABLE of CONDSTORE, QRESYNC and
 * IMAP4rev2) and the mailbox-level commands of the authenticated state (LIST
 * with LIST-EXTENDED and LIST-STATUS, LSUB, NAMESPACE, STATUS with SIZE and
 * DELETED, CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE) and QUOTA
 * (GETQUOTA, GETQUOTAROOT; SETQUOTA is refused: limits are the
 * administrator's).  For an IMAP4rev2 session a SEARCH without RETURN gets
 * "RETURN ()" put in front, so imap_search.c answers it with ESEARCH.
 *
 * Plaintext authentication (LOGIN, AUTHENTICATE PLAIN) is refused without
 * TLS unless the peer is a loopback address; LOGINDISABLED is advertised
 * then (RFC 3501 6.2.3).  Password verification (Argon2, deliberately slow)
 * and every mailbox change run as store jobs on the pool.
 *
 * Threads: the worker's loop thread; job run() halves on a pool thread,
 * touching only the job struct and the pool thread's store.
 */
#include "imap_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "auth.h"

/* ---- helpers --------------------------------------------------------------------- */

void imap_quote(struct buf *out, const char *str)
{
	buf_append_char(out, '"');
	for (const char *p = str; *p; p++) {
		if (*p == '"' || *p == '\\')
			buf_append_char(out, '\\');
		buf_append_char(out, *p);
	}
	buf_append_char(out, '"');
}

void imap_command_reply_status(struct imap_session *s, enum status st, const char *what)
{
	if (st == ST_INVALID) {
		imap_session_tagged(s, "NO", "[CANNOT] %s", what);
		return;
	}
	const struct status_info *si = status_info(st);
	if (si->imap_code != NULL)
		imap_session_tagged(s, "NO", "[%s] %s", si->imap_code, what);
	else
		imap_session_tagged(s, "NO", "%s", what);
}

static bool want_args(struct imap_session *s, const struct imap_cmd *cmd, size_t min, size_t max)
{
	if (cmd->n_args < min || cmd->n_args > max) {
		imap_session_bad(s, cmd->tag, "Wrong number of arguments to %s", cmd->name);
		return false;
	}
	return true;
}

static bool want_strings(struct imap_session *s, const struct imap_cmd *cmd, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (!imap_arg_is_string(&cmd->args[i]) || strlen(cmd->args[i].str) != cmd->args[i].len) {
			imap_session_bad(s, cmd->tag, "Invalid arguments to %s", cmd->name);
			return false;
		}
	}
	return true;
}

static void sync_if_selected(struct imap_session *s, bool allow_expunge)
{
	if (s->state == IS_SELECTED)
		imap_mailbox_sync(s, allow_expunge);
}

/* ---- any state -------------------------------------------------------------------- */

static void cmd_capability(struct imap_session *s, struct imap_cmd *cmd)
{
	if (!want_args(s, cmd, 0, 0))
		return;
	imap_session_untagged(s, "CAPABILITY %s", imap_session_capabilities(s));
	imap_session_tagged(s, "OK", "CAPABILITY completed");
}

static void cmd_noop(struct imap_session *s, struct imap_cmd *cmd)
{
	if (!want_args(s, cmd, 0, 0))
		return;
	sync_if_selected(s, true);
	imap_session_tagged(s, "OK", "%s completed", cmd->name);
}

static void cmd_logout(struct imap_session *s, struct imap_cmd *cmd)
{
	if (!want_args(s, cmd, 0, 0))
		return;
	imap_session_untagged(s, "BYE Logging out");
	imap_session_tagged(s, "OK", "LOGOUT completed");
	s->state = IS_LOGOUT;
	s->close = IC_FLUSH;
	if (s->bev != NULL)
		bufferevent_disable(s->bev, EV_READ);
}

static void cmd_id(struct imap_session *s, struct imap_cmd *cmd)
{
	if (!want_args(s, cmd, 1, 1))
		return;
	if (cmd->args[0].type != IMAP_ARG_LIST && !imap_arg_is_atom(&cmd->args[0], "NIL")) {
		imap_session_bad(s, cmd->tag, "ID takes a list or NIL");
		return;
	}
	imap_session_untagged(s, "ID (\"name\" \"Strata\" \"version\" \"%s\")", STRATA_VERSION);
	imap_session_tagged(s, "OK", "ID completed");
}

static void cmd_enable(struct imap_session *s, struct imap_cmd *cmd)
{
	if (!want_args(s, cmd, 1, IMAP_MAX_ARGS))
		return;
	/* RFC 5161: unknown extensions are ignored; ENABLED names only those
	 * this command turned on. */
	bool cs_on = false, qr_on = false, rev2_on = false;
	for (size_t i = 0; i < cmd->n_args; i++) {
		bool qr = imap_arg_is_atom(&cmd->args[i], "QRESYNC");
		if ((qr || imap_arg_is_atom(&cmd->args[i], "CONDSTORE")) && !s->condstore)
			cs_on = s->condstore = true;   /* QRESYNC implies CONDSTORE (RFC 7162 3.2.3) */
		if (qr && !s->qresync)
			qr_on = s->qresync = true;
		if (imap_arg_is_atom(&cmd->args[i], "IMAP4rev2") && !s->rev2)
			rev2_on = s->rev2 = true;      /* RFC 9051 7.2.1: for the rest of the session */
	}
	for (size_t i = 0; rev2_on && s->view != NULL && i < s->view->n; i++)
		s->view->m[i].flags &= ~VIEW_RECENT;   /* IMAP4rev2 has no \Recent */
	imap_session_untagged(s, "ENABLED%s%s%s", cs_on ? " CONDSTORE" : "", qr_on ? " QRESYNC" : "",
			      rev2_on ? " IMAP4rev2" : "");
	imap_session_tagged(s, "OK", "ENABLE completed");
}

static void cmd_starttls(struct imap_session *s, struct imap_cmd *cmd)
{
	if (!want_args(s, cmd, 0, 0))
		return;
	if (s->w->tls == NULL || s->tls) {
		imap_session_bad(s, cmd->tag, "STARTTLS not available");
		return;
	}
	imap_session_tagged(s, "OK", "Begin TLS negotiation now");
	imap_session_starttls(s);
}

/* ---- authentication ----------------------------------------------------------------- */

struct login_job {
	struct imap_job j;
	char user[320];
	char password[1024];
	int64_t account_id;
	char address[320];
	bool delayed;                   /* the guard's brute-force delay was applied */
};

static void login_done(struct imap_job *j);

static void login_delay_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	login_done(arg);
}

/* A failed login is answered after the guard's brute-force delay
 * (guard_auth_failure), on a timer of the loop: the job stays outstanding
 * meanwhile, so the session reads nothing more, and login_done runs again
 * when it fires.  True when the reply was deferred. */
static bool login_delayed(struct login_job *lj)
{
	struct imap_job *j = &lj->j;
	struct guard *g = guard_process();
	struct guard_addr a;
	if (lj->delayed || j->status == ST_OK || g == NULL || !guard_addr_parse(j->s->ip, &a))
		return false;
	lj->delayed = true;
	uint64_t ms = guard_auth_failure(g, &a, lj->user, time_mono_ms());
	if (ms == 0)
		return false;
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
	if (event_base_once(j->base, -1, EV_TIMEOUT, login_delay_cb, j, &tv) != 0)
		panic("imap: event_base_once failed");
	return true;
}

static void login_run(struct imap_job *j, struct store *st)
{
	struct login_job *lj = (struct login_job *)j;
	struct account a;
	char addr[320];
	snprintf(addr, sizeof(addr), "%s", lj->user);
	str_lower(addr);
	j->status = ST_NOT_FOUND;
	if (store_user_get(st, addr, &a) == ST_OK && a.pwhash[0] != '\0' &&
	    auth_verify_password_cached(lj->password, a.pwhash)) {
		j->status = ST_OK;
		lj->account_id = a.id;
		snprintf(lj->address, sizeof(lj->address), "%s", a.address);
	}
	sodium_memzero(lj->password, sizeof(lj->password));
}

static void login_done(struct imap_job *j)
{
	struct login_job *lj = (struct login_job *)j;
	struct imap_session *s = j->s;
	if (login_delayed(lj))
		return;
	if (imap_session_job_finished(s)) {
		if (j->status == ST_OK && s->state == IS_NOTAUTH) {
			s->state = IS_AUTH;
			s->account_id = lj->account_id;
			s->user = xstrdup(lj->address);
			log_info("imap: login %s from %s", s->user, s->client);
			guard_good_mark_ip(s->ip);   /* a known-good client (docs/GUARD.md) */
			imap_session_tagged(s, "OK", "[CAPABILITY %s] Logged in", imap_session_capabilities(s));
		} else {
			char esc[128];
			log_info("imap: authentication failed for %s from %s",
				 log_escape(lj->user, strlen(lj->user), esc, sizeof(esc)), s->client);
			s->errors++;
			imap_session_tagged(s, "NO", "[AUTHENTICATIONFAILED] Authentication failed");
			if (s->errors >= s->set->imap_max_errors)
				imap_session_bye(s, "Too many errors");
		}
		imap_session_job_end(s);
	}
	free(lj);
}

static bool plaintext_allowed(struct imap_session *s)
{
	if (s->tls || s->loopback)
		return true;
	imap_session_tagged(s, "NO", "[PRIVACYREQUIRED] Plaintext authentication is disabled without TLS");
	return false;
}

static void start_login(struct imap_session *s, const char *user, size_t ulen, const char *pass, size_t plen)
{
	struct login_job *lj = xcalloc(1, sizeof(*lj));
	if (ulen == 0 || ulen >= sizeof(lj->user) || plen >= sizeof(lj->password) ||
	    memchr(user, '\0', ulen) != NULL || memchr(pass, '\0', plen) != NULL) {
		free(lj);
		s->errors++;
		imap_session_tagged(s, "NO", "[AUTHENTICATIONFAILED] Authentication failed");
		return;
	}
	memcpy(lj->user, user, ulen);
	memcpy(lj->password, pass, plen);
	lj->j.run = login_run;
	lj->j.done = login_done;
	imap_session_submit(s, &lj->j);
}

static void cmd_login(struct imap_session *s, struct imap_cmd *cmd)
{
	if (!want_args(s, cmd, 2, 2) || !want_strings(s, cmd, 2))
		return;
	if (!plaintext_allowed(s))
		return;
	start_login(s, cmd->args[0].str, cmd->args[0].len, cmd->args[1].str, cmd->args[1].len);
}

/* SASL PLAIN (RFC 4616): [authzid] NUL authcid NUL passwd, base64. */
static void sasl_plain(struct imap_session *s, const char *b64, size_t len)
{
	unsigned char raw[1400];
	size_t n = 0;
	if (len > 1800 || !base64_decode_strict(b64, len, raw, sizeof(raw), &n)) {
		imap_session_bad(s, s->tag, "Invalid base64 in SASL response");
		return;
	}
	const char *authz = (const char *)raw;
	const unsigned char *nul1 = memchr(raw, '\0', n);
	const unsigned char *nul2 = nul1 ? memchr(nul1 + 1, '\0', n - (size_t)(nul1 + 1 - raw)) : NULL;
	if (nul1 == NULL || nul2 == NULL) {
		sodium_memzero(raw, sizeof(raw));
		imap_session_bad(s, s->tag, "Malformed SASL PLAIN response");
		return;
	}
	const char *authc = (const char *)nul1 + 1;
	size_t authc_len = (size_t)(nul2 - nul1 - 1);
	const char *pass = (const char *)nul2 + 1;
	size_t pass_len = n - (size_t)(nul2 + 1 - raw);
	size_t authz_len = (size_t)(nul1 - raw);
	if (authz_len > 0 && (authz_len != authc_len || strncasecmp(authz, authc, authc_len) != 0)) {
		sodium_memzero(raw, sizeof(raw));
		s->errors++;
		imap_session_tagged(s, "NO", "[AUTHORIZATIONFAILED] Authorization identity not allowed");
		return;
	}
	start_login(s, authc, authc_len, pass, pass_len);
	sodium_memzero(raw, sizeof(raw));
}

/* SASL LOGIN (draft-murchison-sasl-login): the user name, then the
 * password, each answering a base64 challenge ("Username:", "Password:").
 * Outlook uses it.  With SASL-IR the initial response is the user name. */
#define SASL_LOGIN_MAX 1024             /* decoded user name or password */

static void sasl_challenge(struct imap_session *s, enum imap_sasl step)
{
	s->sasl = step;
	s->mode = IM_SASL;
	if (step == SASL_LOGIN_USER)
		imap_session_write(s, "+ VXNlcm5hbWU6\r\n", 16);   /* "Username:" */
	else if (step == SASL_LOGIN_PASS)
		imap_session_write(s, "+ UGFzc3dvcmQ6\r\n", 16);   /* "Password:" */
	else
		imap_session_write(s, "+ \r\n", 4);
}

/* Decodes one LOGIN response into out (NUL-terminated); false after a BAD. */
static bool sasl_login_decode(struct imap_session *s, const char *b64, size_t len, unsigned char *out,
			      size_t cap, size_t *n_r)
{
	if (len > 4 * (cap / 3) || !base64_decode_strict(b64, len, out, cap - 1, n_r)) {
		imap_session_bad(s, s->tag, "Invalid base64 in SASL response");
		return false;
	}
	out[*n_r] = '\0';
	return true;
}

static void sasl_login_step(struct imap_session *s, const char *b64, size_t len)
{
	unsigned char raw[SASL_LOGIN_MAX + 1];
	size_t n = 0;
	if (!sasl_login_decode(s, b64, len, raw, sizeof(raw), &n)) {
		free(s->sasl_user);
		s->sasl_user = NULL;
		return;
	}
	if (s->sasl == SASL_LOGIN_USER) {
		if (n == 0 || memchr(raw, '\0', n) != NULL) {
			s->errors++;
			imap_session_tagged(s, "NO", "[AUTHENTICATIONFAILED] Authentication failed");
			return;
		}
		free(s->sasl_user);
		s->sasl_user = xstrndup((const char *)raw, n);
		sasl_challenge(s, SASL_LOGIN_PASS);
		return;
	}
	char *user = s->sasl_user;
	s->sasl_user = NULL;
	if (user == NULL) {
		imap_session_bad(s, s->tag, "SASL exchange out of order");
		sodium_memzero(raw, sizeof(raw));
		return;
	}
	start_login(s, user, strlen(user), (const char *)raw, n);
	sodium_memzero(raw, sizeof(raw));
	free(user);
}

static void cmd_authenticate(struct imap_session *s, struct imap_cmd *cmd)
{
	if (!want_args(s, cmd, 1, 2))
		return;
	if (cmd->args[0].type != IMAP_ARG_ATOM) {
		imap_session_bad(s, cmd->tag, "Invalid mechanism name");
		return;
	}
	bool login = str_ieq(cmd->args[0].str, "LOGIN");
	if (!login && !str_ieq(cmd->args[0].str, "PLAIN")) {
		imap_session_tagged(s, "NO", "[CANNOT] Unsupported authentication mechanism");
		return;
	}
	if (!plaintext_allowed(s))
		return;
	s->sasl = login ? SASL_LOGIN_USER : SASL_PLAIN;
	if (cmd->n_args == 2) {
		const struct imap_arg *ir = &cmd->args[1];
		if (!imap_arg_is_string(ir)) {
			imap_session_bad(s, cmd->tag, "Invalid initial response");
			return;
		}
		/* "=" is an empty initial response (RFC 4959). */
		bool empty = ir->len == 1 && ir->str[0] == '=';
		if (login)
			sasl_login_step(s, empty ? "" : ir->str, empty ? 0 : ir->len);
		else
			sasl_plain(s, empty ? "" : ir->str, empty ? 0 : ir->len);
		return;
	}
	sasl_challenge(s, s->sasl);
}

void imap_command_sasl_response(struct imap_session *s, const char *line, size_t len)
{
	if (len == 1 && line[0] == '*') {
		free(s->sasl_user);
		s->sasl_user = NULL;
		imap_session_bad(s, s->tag, "Authentication cancelled");
		return;
	}
	if (s->sasl == SASL_PLAIN)
		sasl_plain(s, line, len);
	else
		sasl_login_step(s, line, len);
}

/* ---- LIST / LSUB ----------------------------------------------------------------------- */

/* IMAP pattern match: '*' matches anything, '%' anything but '/'.
 * Dynamic programming over two rows: O(len(pattern) * len(name)) time
 * whatever the pattern, so "****...*" cannot blow up. */
static bool pattern_match(const char *pat, const char *name)
{
	size_t m = strlen(pat), n = strlen(name);
	bool *next = xcalloc(n + 1, sizeof(bool));
	bool *cur = xcalloc(n + 1, sizeof(bool));
	next[n] = true; /* empty pattern matches only the empty rest */
	for (size_t i = m; i-- > 0;) {
		for (size_t j = n + 1; j-- > 0;) {
			char p = pat[i];
			if (p == '*')
				cur[j] = next[j] || (j < n && cur[j + 1]);
			else if (p == '%')
				cur[j] = next[j] || (j < n && name[j] != STORE_MAILBOX_SEP && cur[j + 1]);
			else
				cur[j] = j < n && p == name[j] && next[j + 1];
		}
		bool *t = next;
		next = cur;
		cur = t;
	}
	bool match = next[0];
	free(next);
	free(cur);
	return match;
}

struct list_ctx {
	struct imap_session *s;
	struct store_mailbox_info *mb;
	size_t n, cap;
};

static void list_collect(void *arg, const struct store_mailbox_info *mb)
{
	struct list_ctx *c = arg;
	if (c->n == c->cap) {
		c->cap = c->cap ? c->cap * 2 : 16;
		c->mb = xreallocarray(c->mb, c->cap, sizeof(*c->mb));
	}
	c->mb[c->n++] = *mb;
}

static bool has_children(const struct list_ctx *c, const char *name)
{
	size_t len = strlen(name);
	for (size_t i = 0; i < c->n; i++) {
		if (strncmp(c->mb[i].name, name, len) == 0 && c->mb[i].name[len] == STORE_MAILBOX_SEP)
			return true;
	}
	return false;
}

static bool status_items_valid(const struct imap_arg *items);
static bool status_reply(struct imap_session *s, const struct store_mailbox_info *mb,
			 const struct imap_arg *items);

/* LIST-EXTENDED (RFC 5258) options, LIST-STATUS (RFC 5819), SPECIAL-USE
 * selection (RFC 6154).  Subscriptions are a property of existing
 * mailboxes here, so \NonExistent never appears. */
struct list_opts {
	bool sel_subscribed, sel_special, recursive;
	bool ret_subscribed;
	const struct imap_arg *status;  /* RETURN (STATUS (items)), or NULL */
	const struct imap_arg *pats;    /* one pattern, or a list of them */
};

static bool list_selection(const struct imap_arg *a, struct list_opts *o)
{
	bool other = false;
	for (size_t i = 0; i < a->n; i++) {
		const struct imap_arg *x = &a->list[i];
		if (imap_arg_is_atom(x, "SUBSCRIBED"))
			o->sel_subscribed = other = true;
		else if (imap_arg_is_atom(x, "SPECIAL-USE"))
			o->sel_special = other = true;
		else if (imap_arg_is_atom(x, "RECURSIVEMATCH"))
			o->recursive = true;
		else if (!imap_arg_is_atom(x, "REMOTE"))   /* no remote mailboxes: nothing to add */
			return false;
	}
	/* RECURSIVEMATCH alone is a syntax error (RFC 5258 3.1). */
	return !o->recursive || other;
}

static bool list_return(const struct imap_arg *a, struct list_opts *o)
{
	for (size_t i = 0; i < a->n; i++) {
		const struct imap_arg *x = &a->list[i];
		if (imap_arg_is_atom(x, "SUBSCRIBED")) {
			o->ret_subscribed = true;
		} else if (imap_arg_is_atom(x, "CHILDREN") || imap_arg_is_atom(x, "SPECIAL-USE")) {
			continue;   /* child and special-use attributes are always returned */
		} else if (imap_arg_is_atom(x, "STATUS") && o->status == NULL && i + 1 < a->n &&
			   status_items_valid(&a->list[i + 1])) {
			o->status = &a->list[++i];
		} else {
			return false;
		}
	}
	return true;
}

/* [(selection)] reference pattern(s) [RETURN (options)] */
static bool list_parse(const struct imap_cmd *cmd, struct list_opts *o)
{
	size_t i = 0, n = cmd->n_args;
	if (n > 0 && cmd->args[0].type == IMAP_ARG_LIST) {
		if (!list_selection(&cmd->args[0], o))
			return false;
		i = 1;
	}
	if (i + 2 > n || !imap_arg_is_string(&cmd->args[i]) || strlen(cmd->args[i].str) != cmd->args[i].len)
		return false;
	const struct imap_arg *p = &cmd->args[i + 1];
	if (p->type == IMAP_ARG_LIST) {
		if (p->n == 0)
			return false;
		for (size_t k = 0; k < p->n; k++) {
			if (!imap_arg_is_string(&p->list[k]) || strlen(p->list[k].str) != p->list[k].len)
				return false;
		}
	} else if (!imap_arg_is_string(p) || strlen(p->str) != p->len) {
		return false;
	}
	o->pats = p;
	i += 2;
	if (i == n)
		return true;
	return i + 2 == n && imap_arg_is_atom(&cmd->args[i], "RETURN") && cmd->args[i + 1].type == IMAP_ARG_LIST &&
	       list_return(&cmd->args[i + 1], o);
}

static bool list_pattern_match(const char *ref, const struct imap_arg *pats, const char *name)
{
	size_t n = pats->type == IMAP_ARG_LIST ? pats->n : 1;
	for (size_t i = 0; i < n; i++) {
		const char *pat = pats->type == IMAP_ARG_LIST ? pats->list[i].str : pats->str;
		char *full = xasprintf("%s%s", ref, pat);
		/* "INBOX" matches case-insensitively. */
		bool match = pattern_match(full, name) || (strcmp(name, "INBOX") == 0 && str_ieq(full, "INBOX"));
		free(full);
		if (match)
			return true;
	}
	return false;
}

static bool list_meets(const struct list_opts *o, const struct store_mailbox_info *mb)
{
	return (!o->sel_subscribed || mb->subscribed) && (!o->sel_special || mb->special_use[0] != '\0');
}

/* RECURSIVEMATCH: a descendant meets the selection (CHILDINFO). */
static bool list_childinfo(const struct list_ctx *c, const struct list_opts *o, const char *name)
{
	size_t len = strlen(name);
	for (size_t i = 0; i < c->n; i++) {
		if (strncmp(c->mb[i].name, name, len) == 0 && c->mb[i].name[len] == STORE_MAILBOX_SEP &&
		    list_meets(o, &c->mb[i]))
			return true;
	}
	return false;
}

static void cmd_list(struct imap_session *s, struct imap_cmd *cmd, bool lsub)
{
	struct list_opts o = { 0 };
	if (lsub ? !(want_args(s, cmd, 2, 2) && want_strings(s, cmd, 2)) : !list_parse(cmd, &o)) {
		if (!lsub)
			imap_session_bad(s, cmd->tag, "Invalid LIST arguments");
		return;
	}
	if (lsub)
		o.pats = &cmd->args[1];
	const char *ref = cmd->args[cmd->args[0].type == IMAP_ARG_LIST ? 1 : 0].str;
	size_t n_pats = o.pats->type == IMAP_ARG_LIST ? o.pats->n : 1;
	if (n_pats == 1 && o.pats->type != IMAP_ARG_LIST && o.pats->str[0] == '\0' && !o.sel_subscribed &&
	    !o.sel_special) {
		imap_session_untagged(s, "%s (\\Noselect) \"/\" \"\"", lsub ? "LSUB" : "LIST");
		imap_session_tagged(s, "OK", "%s completed", cmd->name);
		return;
	}
	for (size_t i = 0; i < n_pats; i++) {
		const char *pat = o.pats->type == IMAP_ARG_LIST ? o.pats->list[i].str : o.pats->str;
		if (strlen(ref) + strlen(pat) > 2 * STORE_MAILBOX_NAME_MAX) {
			imap_session_bad(s, cmd->tag, "Pattern too long");
			return;
		}
	}
	struct list_ctx c = { s, NULL, 0, 0 };
	enum status st = store_imap_mailbox_list(s->w->reader, s->account_id, list_collect, &c);
	if (st != ST_OK) {
		free(c.mb);
		imap_command_reply_status(s, st, "Cannot list mailboxes");
		return;
	}
	if (lsub)
		o.sel_subscribed = true;
	struct buf line = BUF_INIT;
	for (size_t i = 0; i < c.n; i++) {
		const struct store_mailbox_info *mb = &c.mb[i];
		if (!list_pattern_match(ref, o.pats, mb->name))
			continue;
		bool meets = list_meets(&o, mb);
		bool childinfo = o.recursive && list_childinfo(&c, &o, mb->name);
		if (!meets && !childinfo)
			continue;
		buf_reset(&line);
		buf_printf(&line, "%s (%s", lsub ? "LSUB" : "LIST",
			   has_children(&c, mb->name) ? "\\HasChildren" : "\\HasNoChildren");
		if (mb->special_use[0])
			buf_printf(&line, " %s", mb->special_use);
		if (!lsub && (o.sel_subscribed || o.ret_subscribed) && mb->subscribed)
			buf_append_str(&line, " \\Subscribed");
		buf_append_str(&line, ") \"/\" ");
		imap_quote(&line, mb->name);
		if (childinfo)   /* the selection options a descendant meets */
			buf_printf(&line, " (\"CHILDINFO\" (%s%s%s))", o.sel_subscribed ? "\"SUBSCRIBED\"" : "",
				   o.sel_subscribed && o.sel_special ? " " : "",
				   o.sel_special ? "\"SPECIAL-USE\"" : "");
		imap_session_untagged(s, "%s", line.data);
		struct store_mailbox_info full;
		if (o.status != NULL &&
		    store_imap_mailbox_get(s->w->reader, s->account_id, mb->name, true, &full) == ST_OK)
			(void)status_reply(s, &full, o.status);
	}
	buf_free(&line);
	free(c.mb);
	sync_if_selected(s, true);
	imap_session_tagged(s, "OK", "%s completed", cmd->name);
}

static void cmd_namespace(struct imap_session *s, struct imap_cmd *cmd)
{
	if (!want_args(s, cmd, 0, 0))
		return;
	imap_session_untagged(s, "NAMESPACE ((\"\" \"/\")) NIL NIL");
	imap_session_tagged(s, "OK", "NAMESPACE completed");
}

/* STATUS items (RFC 3501 6.3.10, RFC 7162 HIGHESTMODSEQ, RFC 9051 6.3.11
 * DELETED and SIZE, the latter also for IMAP4rev1 clients: STATUS=SIZE,
 * RFC 8438). */
static const char *const status_items[] = { "MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN",
					    "HIGHESTMODSEQ", "SIZE", "DELETED" };

/* SIZE, DELETED and RECENT: one pass over the mailbox's index rows. */
struct status_sums {
	uint64_t size, deleted, recent;
	uint32_t recent_from;           /* first UID nobody claimed as recent */
};

static void status_sum_cb(void *arg, const struct store_imap_msg *m)
{
	struct status_sums *t = arg;
	t->size += m->size;
	t->deleted += (m->flags & MSG_FLAG_DELETED) != 0;
	t->recent += m->uid >= t->recent_from;
}

static bool status_wants(const struct imap_arg *items, const char *a, const char *b)
{
	for (size_t i = 0; i < items->n; i++) {
		if (imap_arg_is_atom(&items->list[i], a) || imap_arg_is_atom(&items->list[i], b))
			return true;
	}
	return false;
}

static bool status_items_valid(const struct imap_arg *items)
{
	if (items->type != IMAP_ARG_LIST || items->n == 0)
		return false;
	for (size_t i = 0; i < items->n; i++) {
		size_t k = 0;
		while (k < ARRAY_LEN(status_items) && !imap_arg_is_atom(&items->list[i], status_items[k]))
			k++;
		if (k == ARRAY_LEN(status_items))
			return false;
	}
	return true;
}

/* "* STATUS name (items)" for a mailbox read with counts; items valid.
 * False (nothing sent) when the index could not be read. */
static bool status_reply(struct imap_session *s, const struct store_mailbox_info *mb, const struct imap_arg *items)
{
	struct status_sums sums = { 0, 0, 0, UINT32_MAX };
	bool recent = !s->rev2 && status_wants(items, "RECENT", "RECENT");
	if (recent && !imap_mailbox_recent_count(s, mb->id, &sums.recent_from)) {
		log_warn("imap: cannot read the recent messages of mailbox %lld", (long long)mb->id);
		return false;
	}
	if ((recent || status_wants(items, "SIZE", "DELETED")) &&
	    store_imap_messages(s->w->reader, mb->id, 1, status_sum_cb, &sums) != ST_OK) {
		/* The items would be wrong: leave this mailbox's response out. */
		log_warn("imap: cannot read the messages of mailbox %lld for STATUS", (long long)mb->id);
		return false;
	}
	struct buf line = BUF_INIT;
	buf_append_str(&line, "STATUS ");
	imap_quote(&line, mb->name);
	buf_append_str(&line, " (");
	for (size_t i = 0; i < items->n; i++) {
		const struct imap_arg *a = &items->list[i];
		if (i > 0)
			buf_append_char(&line, ' ');
		if (imap_arg_is_atom(a, "MESSAGES"))
			buf_printf(&line, "MESSAGES %llu", (unsigned long long)mb->messages);
		else if (imap_arg_is_atom(a, "RECENT"))
			buf_printf(&line, "RECENT %llu", (unsigned long long)sums.recent);
		else if (imap_arg_is_atom(a, "UIDNEXT"))
			buf_printf(&line, "UIDNEXT %u", mb->uidnext);
		else if (imap_arg_is_atom(a, "UIDVALIDITY"))
			buf_printf(&line, "UIDVALIDITY %u", mb->uidvalidity);
		else if (imap_arg_is_atom(a, "UNSEEN"))
			buf_printf(&line, "UNSEEN %llu", (unsigned long long)mb->unseen);
		else if (imap_arg_is_atom(a, "SIZE"))
			buf_printf(&line, "SIZE %llu", (unsigned long long)sums.size);
		else if (imap_arg_is_atom(a, "DELETED"))
			buf_printf(&line, "DELETED %llu", (unsigned long long)sums.deleted);
		else {   /* HIGHESTMODSEQ: a CONDSTORE enabling item (RFC 7162 3.1) */
			buf_printf(&line, "HIGHESTMODSEQ %llu", (unsigned long long)mb->highestmodseq);
			s->condstore = true;
		}
	}
	buf_append_char(&line, ')');
	imap_session_untagged(s, "%s", line.data);
	buf_free(&line);
	return true;
}

static void cmd_status(struct imap_session *s, struct imap_cmd *cmd)
{
	if (!want_args(s, cmd, 2, 2) || !want_strings(s, cmd, 1))
		return;
	const struct imap_arg *items = &cmd->args[1];
	if (items->type != IMAP_ARG_LIST || items->n == 0) {
		imap_session_bad(s, cmd->tag, "STATUS needs a list of items");
		return;
	}
	if (!status_items_valid(items)) {
		imap_session_bad(s, cmd->tag, "Unknown STATUS item");
		return;
	}
	struct store_mailbox_info mb;
	enum status st = store_imap_mailbox_get(s->w->reader, s->account_id, cmd->args[0].str, true, &mb);
	if (st != ST_OK) {
		imap_command_reply_status(s, st == ST_INVALID ? ST_NOT_FOUND : st, "Mailbox does not exist");
		return;
	}
	if (!status_reply(s, &mb, items)) {
		imap_command_reply_status(s, ST_TEMPFAIL, "Cannot read the mailbox");
		return;
	}
	sync_if_selected(s, true);
	imap_session_tagged(s, "OK", "STATUS completed");
}

/* ---- QUOTA (RFC 9208) ----------------------------------------------------------------- */

/* Every mailbox of an account shares one quota root, named "" (the
 * account's limits from accounts.quota_*).  STORAGE is in KiB: usage
 * rounded up, the limit rounded down, so a client never believes it has
 * room the server will refuse.  A resource without a limit is not listed;
 * an account without any limit has no quota root. */
#define QUOTA_ROOT ""

static bool quota_account(struct imap_session *s, struct account *a)
{
	enum status st = store_user_get(s->w->reader, s->user, a);
	if (st != ST_OK) {
		imap_command_reply_status(s, st == ST_NOT_FOUND ? ST_TEMPFAIL : st, "Cannot read the quota");
		return false;
	}
	return true;
}

static void quota_untagged(struct imap_session *s, const struct account *a)
{
	struct buf line = BUF_INIT;
	buf_append_str(&line, "QUOTA ");
	imap_quote(&line, QUOTA_ROOT);
	buf_append_str(&line, " (");
	if (a->quota_bytes > 0)
		buf_printf(&line, "STORAGE %llu %llu", (unsigned long long)((a->used_bytes + 1023) / 1024),
			   (unsigned long long)(a->quota_bytes / 1024));
	if (a->quota_messages > 0)
		buf_printf(&line, "%sMESSAGE %llu %llu", a->quota_bytes > 0 ? " " : "",
			   (unsigned long long)a->used_messages, (unsigned long long)a->quota_messages);
	buf_append_char(&line, ')');
	imap_session_untagged(s, "%s", line.data);
	buf_free(&line);
}

static bool quota_limited(const struct account *a)
{
	return a->quota_bytes > 0 || a->quota_messages > 0;
}

static void cmd_getquota(struct imap_session *s, struct imap_cmd *cmd)
{
	if (!want_args(s, cmd, 1, 1) || !want_strings(s, cmd, 1))
		return;
	struct account a;
	if (!quota_account(s, &a))
		return;
	if (strcmp(cmd->args[0].str, QUOTA_ROOT) != 0 || !quota_limited(&a)) {
		imap_session_tagged(s, "NO", "[NONEXISTENT] No such quota root");
		return;
	}
	quota_untagged(s, &a);
	sync_if_selected(s, true);
	imap_session_tagged(s, "OK", "GETQUOTA completed");
}

static void cmd_getquotaroot(struct imap_session *s, struct imap_cmd *cmd)
{
	if (!want_args(s, cmd, 1, 1) || !want_strings(s, cmd, 1))
		return;
	struct store_mailbox_info mb;
	enum status st = store_imap_mailbox_get(s->w->reader, s->account_id, cmd->args[0].str, false, &mb);
	if (st != ST_OK) {
		imap_session_tagged(s, "NO", "[NONEXISTENT] Mailbox does not exist");
		return;
	}
	struct account a;
	if (!quota_account(s, &a))
		return;
	struct buf line = BUF_INIT;
	buf_append_str(&line, "QUOTAROOT ");
	imap_quote(&line, mb.name);
	if (quota_limited(&a)) {
		buf_append_char(&line, ' ');
		imap_quote(&line, QUOTA_ROOT);
	}
	imap_session_untagged(s, "%s", line.data);
	buf_free(&line);
	if (quota_limited(&a))
		quota_untagged(s, &a);
	sync_if_selected(s, true);
	imap_session_tagged(s, "OK", "GETQUOTAROOT completed");
}

static void cmd_setquota(struct imap_session *s, struct imap_cmd *cmd)
{
	if (!want_args(s, cmd, 2, 2) || !want_strings(s, cmd, 1) || cmd->args[1].type != IMAP_ARG_LIST) {
		imap_session_bad(s, cmd->tag, "SETQUOTA takes a quota root and a list of limits");
		return;
	}
	imap_session_tagged(s, "NO", "[NOPERM] Quotas are set by the administrator");
}

/* ---- mailbox changes (jobs) ----------------------------------------------------------- */

enum mbox_op { MB_CREATE, MB_DELETE, MB_RENAME, MB_SUBSCRIBE, MB_UNSUBSCRIBE };

struct mbox_job {
	struct imap_job j;
	enum mbox_op op;
	int64_t account_id;
	char name[STORE_MAILBOX_NAME_MAX + 1];
	char to[STORE_MAILBOX_NAME_MAX + 1];
	char cmd[32];
};

static void mbox_run(struct imap_job *j, struct store *st)
{
	struct mbox_job *mj = (struct mbox_job *)j;
	switch (mj->op) {
	case MB_CREATE:
		j->status = store_imap_mailbox_create(st, mj->account_id, mj->name, &j->error);
		break;
	case MB_DELETE:
		j->status = store_imap_mailbox_delete(st, mj->account_id, mj->name, &j->error);
		break;
	case MB_RENAME:
		j->status = store_imap_mailbox_rename(st, mj->account_id, mj->name, mj->to, &j->error);
		break;
	case MB_SUBSCRIBE:
	case MB_UNSUBSCRIBE:
		j->status = store_imap_mailbox_subscribe(st, mj->account_id, mj->name, mj->op == MB_SUBSCRIBE,
							 &j->error);
		break;
	}
}

static void mbox_done(struct imap_job *j)
{
	struct mbox_job *mj = (struct mbox_job *)j;
	struct imap_session *s = j->s;
	if (imap_session_job_finished(s)) {
		sync_if_selected(s, true);
		if (j->status == ST_OK) {
			imap_session_tagged(s, "OK", "%s completed", mj->cmd);
		} else {
			const char *text = j->error ? j->error : "failed";
			if (j->status == ST_INVALID)
				imap_session_tagged(s, "NO", "[CANNOT] %s", text);
			else if (j->status == ST_NOT_FOUND)
				imap_session_tagged(s, "NO", "[NONEXISTENT] %s", text);
			else
				imap_command_reply_status(s, j->status, text);
		}
		imap_session_job_end(s);
	}
	free(j->error);
	free(mj);
}

static void cmd_mailbox_change(struct imap_session *s, struct imap_cmd *cmd, enum mbox_op op)
{
	size_t n = op == MB_RENAME ? 2 : 1;
	if (!want_args(s, cmd, n, n) || !want_strings(s, cmd, n))
		return;
	struct mbox_job *mj = xcalloc(1, sizeof(*mj));
	if (!store_imap_mailbox_name(cmd->args[0].str, mj->name) ||
	    (op == MB_RENAME && !store_imap_mailbox_name(cmd->args[1].str, mj->to))) {
		free(mj);
		imap_session_tagged(s, "NO", "[CANNOT] Invalid mailbox name");
		return;
	}
	mj->op = op;
	mj->account_id = s->account_id;
	snprintf(mj->cmd, sizeof(mj->cmd), "%s", cmd->name);
	mj->j.run = mbox_run;
	mj->j.done = mbox_done;
	imap_session_submit(s, &mj->j);
}

/* ---- dispatch --------------------------------------------------------------------------- */

enum need { ANY, NOTAUTH, AUTH, SELECTED };

static void dispatch_selected(struct imap_session *s, struct imap_cmd *cmd);

void imap_command_execute(struct imap_session *s, struct imap_cmd *cmd)
{
	static const struct {
		const char *name;
		enum need need;
		bool uid_ok;
	} table[] = {
		{ "CAPABILITY", ANY, false }, { "NOOP", ANY, false }, { "LOGOUT", ANY, false },
		{ "ID", ANY, false }, { "STARTTLS", NOTAUTH, false }, { "LOGIN", NOTAUTH, false },
		{ "AUTHENTICATE", NOTAUTH, false }, { "ENABLE", AUTH, false }, { "SELECT", AUTH, false },
		{ "EXAMINE", AUTH, false }, { "CREATE", AUTH, false }, { "DELETE", AUTH, false },
		{ "RENAME", AUTH, false }, { "SUBSCRIBE", AUTH, false }, { "UNSUBSCRIBE", AUTH, false },
		{ "LIST", AUTH, false }, { "LSUB", AUTH, false }, { "NAMESPACE", AUTH, false },
		{ "STATUS", AUTH, false }, { "APPEND", AUTH, false }, { "IDLE", AUTH, false },
		{ "GETQUOTA", AUTH, false }, { "GETQUOTAROOT", AUTH, false }, { "SETQUOTA", AUTH, false },
		{ "CHECK", SELECTED, false }, { "CLOSE", SELECTED, false }, { "UNSELECT", SELECTED, false },
		{ "EXPUNGE", SELECTED, true }, { "SEARCH", SELECTED, true }, { "FETCH", SELECTED, true },
		{ "STORE", SELECTED, true }, { "COPY", SELECTED, true }, { "MOVE", SELECTED, true },
		{ "SORT", SELECTED, true }, { "THREAD", SELECTED, true },
	};
	size_t i;
	for (i = 0; i < ARRAY_LEN(table); i++) {
		if (strcmp(table[i].name, cmd->name) == 0)
			break;
	}
	if (i == ARRAY_LEN(table) || (cmd->uid && !table[i].uid_ok)) {
		imap_append_abort(s);
		imap_session_bad(s, cmd->tag, "Unknown command");
		return;
	}
	enum need need = table[i].need;
	bool ok = need == ANY || (need == NOTAUTH && s->state == IS_NOTAUTH) ||
		  (need == AUTH && (s->state == IS_AUTH || s->state == IS_SELECTED)) ||
		  (need == SELECTED && s->state == IS_SELECTED);
	if (!ok) {
		imap_append_abort(s);
		imap_session_bad(s, cmd->tag, "%s not allowed %s", cmd->name,
			    s->state == IS_NOTAUTH ? "before login" : need == NOTAUTH ? "after login"
											 : "without a selected mailbox");
		return;
	}
	const char *n = cmd->name;
	if (strcmp(n, "CAPABILITY") == 0) cmd_capability(s, cmd);
	else if (strcmp(n, "NOOP") == 0) cmd_noop(s, cmd);
	else if (strcmp(n, "LOGOUT") == 0) cmd_logout(s, cmd);
	else if (strcmp(n, "ID") == 0) cmd_id(s, cmd);
	else if (strcmp(n, "STARTTLS") == 0) cmd_starttls(s, cmd);
	else if (strcmp(n, "LOGIN") == 0) cmd_login(s, cmd);
	else if (strcmp(n, "AUTHENTICATE") == 0) cmd_authenticate(s, cmd);
	else if (strcmp(n, "ENABLE") == 0) cmd_enable(s, cmd);
	else if (strcmp(n, "SELECT") == 0) imap_mailbox_select(s, cmd, false);
	else if (strcmp(n, "EXAMINE") == 0) imap_mailbox_select(s, cmd, true);
	else if (strcmp(n, "CREATE") == 0) cmd_mailbox_change(s, cmd, MB_CREATE);
	else if (strcmp(n, "DELETE") == 0) cmd_mailbox_change(s, cmd, MB_DELETE);
	else if (strcmp(n, "RENAME") == 0) cmd_mailbox_change(s, cmd, MB_RENAME);
	else if (strcmp(n, "SUBSCRIBE") == 0) cmd_mailbox_change(s, cmd, MB_SUBSCRIBE);
	else if (strcmp(n, "UNSUBSCRIBE") == 0) cmd_mailbox_change(s, cmd, MB_UNSUBSCRIBE);
	else if (strcmp(n, "LIST") == 0) cmd_list(s, cmd, false);
	else if (strcmp(n, "LSUB") == 0) cmd_list(s, cmd, true);
	else if (strcmp(n, "NAMESPACE") == 0) cmd_namespace(s, cmd);
	else if (strcmp(n, "STATUS") == 0) cmd_status(s, cmd);
	else if (strcmp(n, "APPEND") == 0) imap_append_command(s, cmd);
	else if (strcmp(n, "GETQUOTA") == 0) cmd_getquota(s, cmd);
	else if (strcmp(n, "GETQUOTAROOT") == 0) cmd_getquotaroot(s, cmd);
	else if (strcmp(n, "SETQUOTA") == 0) cmd_setquota(s, cmd);
	else if (strcmp(n, "IDLE") == 0) {
		if (want_args(s, cmd, 0, 0)) {
			sync_if_selected(s, true);
			imap_session_write(s, "+ idling\r\n", 10);
			imap_session_idle_start(s);
		}
	} else dispatch_selected(s, cmd);
}

/* IMAP4rev2 (RFC 9051 6.4.4): SEARCH without RETURN is answered with
 * ESEARCH as if it said "RETURN (ALL)": the options are put in front. */
static void search_rev2_args(struct imap_cmd *cmd)
{
	if (cmd->n_args > 0 && imap_arg_is_atom(&cmd->args[0], "RETURN"))
		return;
	struct imap_arg *args = xcalloc(cmd->n_args + 2, sizeof(*args));
	args[0].type = IMAP_ARG_ATOM;
	args[0].str = xstrdup("RETURN");
	args[0].len = 6;
	args[1].type = IMAP_ARG_LIST;   /* "()" means ALL */
	if (cmd->n_args > 0)
		memcpy(args + 2, cmd->args, cmd->n_args * sizeof(*args));
	free(cmd->args);
	cmd->args = args;
	cmd->n_args += 2;
	cmd->total_args += 2;
}

static void dispatch_selected(struct imap_session *s, struct imap_cmd *cmd)
{
	const char *n = cmd->name;
	if (strcmp(n, "CHECK") == 0) {
		cmd_noop(s, cmd);
	} else if (strcmp(n, "CLOSE") == 0) {
		if (want_args(s, cmd, 0, 0))
			imap_mailbox_close(s, cmd, true);
	} else if (strcmp(n, "UNSELECT") == 0) {
		if (want_args(s, cmd, 0, 0))
			imap_mailbox_close(s, cmd, false);
	} else if (strcmp(n, "EXPUNGE") == 0) {
		imap_mailbox_expunge(s, cmd);
	} else if (strcmp(n, "SEARCH") == 0) {
		if (s->rev2)
			search_rev2_args(cmd);
		imap_search_run(s, cmd);
	} else if (strcmp(n, "SORT") == 0) {
		imap_sort_run(s, cmd);
	} else if (strcmp(n, "THREAD") == 0) {
		imap_thread_run(s, cmd);
	} else if (strcmp(n, "FETCH") == 0) {
		imap_fetch_start(s, cmd);
	} else if (strcmp(n, "STORE") == 0) {
		imap_mailbox_store(s, cmd);
	} else if (strcmp(n, "COPY") == 0) {
		imap_mailbox_copy(s, cmd, false);
	} else {
		imap_mailbox_copy(s, cmd, true);
	}
}
