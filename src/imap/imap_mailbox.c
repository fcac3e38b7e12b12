/*
 * imap_mailbox.c - the selected state: SELECT/EXAMINE, the session's view
 * of its mailbox and how it learns about changes, STORE, EXPUNGE,
 * CLOSE/UNSELECT, COPY and MOVE (with UIDPLUS response codes).
 *
 * The view: one (uid, flags) pair per message in UID order; the sequence
 * number is the index + 1.  Changes made by anyone (other sessions,
 * deliveries, this session's own jobs) reach the view only through
 * imap_mailbox_sync(), which polls (uidnext, highestmodseq), reloads the UID
 * list when either moved, and reports the difference: EXPUNGE for UIDs
 * that went (in ascending sequence order, each number valid at the moment
 * it is sent), FETCH (FLAGS) for changed flags, and one EXISTS for new
 * messages.  During FETCH, STORE and SEARCH (non-UID forms) expunges are
 * held back (RFC 3501 7.4.1): the message stays in the view marked
 * VIEW_GONE so sequence numbers keep their meaning until a later command
 * may report it.
 *
 * Memory: 8 bytes per message of the selected mailbox.
 * Threads: the loop thread; store jobs receive copies of what they need.
 */
#include "imap_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SYSTEM_FLAGS "\\Answered \\Flagged \\Deleted \\Seen \\Draft"

/* ---- flags ------------------------------------------------------------------------ */

static const struct {
	const char *name;
	uint32_t bit;
} flag_names[] = {
	{ "\\Seen", MSG_FLAG_SEEN },       { "\\Answered", MSG_FLAG_ANSWERED },
	{ "\\Flagged", MSG_FLAG_FLAGGED }, { "\\Deleted", MSG_FLAG_DELETED },
	{ "\\Draft", MSG_FLAG_DRAFT },
};

void imap_flags_format(uint32_t flags, struct buf *out)
{
	buf_append_char(out, '(');
	bool first = true;
	for (size_t i = 0; i < ARRAY_LEN(flag_names); i++) {
		if (flags & flag_names[i].bit) {
			buf_printf(out, "%s%s", first ? "" : " ", flag_names[i].name);
			first = false;
		}
	}
	buf_append_char(out, ')');
}

/* One flag atom: a system flag sets its bit; a keyword is accepted and not
 * kept (PERMANENTFLAGS does not offer \*); \Recent and unknown
 * backslash flags are invalid. */
static bool flag_parse_one(const struct imap_arg *a, uint32_t *flags)
{
	if (a->type != IMAP_ARG_ATOM)
		return false;
	if (a->str[0] != '\\')
		return strpbrk(a->str, "[]{") == NULL;
	for (size_t i = 0; i < ARRAY_LEN(flag_names); i++) {
		if (str_ieq(a->str, flag_names[i].name)) {
			*flags |= flag_names[i].bit;
			return true;
		}
	}
	return false;
}

bool imap_flags_parse(const struct imap_arg *a, uint32_t *flags_r)
{
	*flags_r = 0;
	if (a->type != IMAP_ARG_LIST)
		return flag_parse_one(a, flags_r);
	for (size_t i = 0; i < a->n; i++) {
		if (!flag_parse_one(&a->list[i], flags_r))
			return false;
	}
	return true;
}

/* ---- the view ------------------------------------------------------------------------ */

void imap_view_free(struct imap_view **vp)
{
	struct imap_view *v = *vp;
	if (v == NULL)
		return;
	free(v->m);
	free(v);
	*vp = NULL;
}

static void view_push(struct view_msg **m, size_t *n, size_t *cap, uint32_t uid, uint32_t flags)
{
	if (*n == *cap) {
		*cap = *cap ? *cap * 2 : 64;
		*m = xreallocarray(*m, *cap, sizeof(**m));
	}
	(*m)[*n].uid = uid;
	(*m)[*n].flags = flags;
	(*n)++;
}

struct load_ctx {
	struct view_msg *m;
	size_t n, cap;
};

static void load_cb(void *arg, const struct store_imap_msg *msg)
{
	struct load_ctx *c = arg;
	view_push(&c->m, &c->n, &c->cap, msg->uid, msg->flags);
}

/* Index of uid in the view, or -1. */
static long view_find(const struct imap_view *v, uint32_t uid)
{
	size_t lo = 0, hi = v->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (v->m[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < v->n && v->m[lo].uid == uid ? (long)lo : -1;
}

void imap_mailbox_unselect(struct imap_session *s)
{
	imap_view_free(&s->view);
	if (s->state == IS_SELECTED)
		s->state = IS_AUTH;
}

void imap_mailbox_select(struct imap_session *s, struct imap_cmd *cmd, bool readonly)
{
	if (cmd->n_args != 1 || !imap_arg_is_string(&cmd->args[0])) {
		imap_session_bad(s, cmd->tag, "%s takes one mailbox name", cmd->name);
		return;
	}
	bool was_selected = s->state == IS_SELECTED;
	imap_mailbox_unselect(s);
	if (was_selected)
		imap_session_untagged(s, "OK [CLOSED] Previous mailbox closed");
	struct store_mailbox_info mb;
	enum status st = store_imap_mailbox_get(s->w->reader, s->account_id, cmd->args[0].str, false, &mb);
	if (st != ST_OK) {
		imap_command_reply_status(s, st == ST_INVALID ? ST_NOT_FOUND : st, "Mailbox does not exist");
		return;
	}
	uint32_t uidnext;
	uint64_t hms;
	struct load_ctx c = { NULL, 0, 0 };
	if ((st = store_imap_mailbox_poll(s->w->reader, mb.id, &uidnext, &hms)) != ST_OK ||
	    (st = store_imap_messages(s->w->reader, mb.id, 1, load_cb, &c)) != ST_OK) {
		free(c.m);
		imap_command_reply_status(s, st, "Cannot open mailbox");
		return;
	}
	struct imap_view *v = xcalloc(1, sizeof(*v));
	v->id = mb.id;
	snprintf(v->name, sizeof(v->name), "%s", mb.name);
	v->readonly = readonly;
	v->uidvalidity = mb.uidvalidity;
	v->uidnext = uidnext;
	v->highestmodseq = hms;
	v->m = c.m;
	v->n = c.n;
	v->cap = c.cap;
	s->view = v;
	s->state = IS_SELECTED;
	size_t first_unseen = 0;
	for (size_t i = 0; i < v->n && first_unseen == 0; i++) {
		if (!(v->m[i].flags & MSG_FLAG_SEEN))
			first_unseen = i + 1;
	}
	imap_session_untagged(s, "FLAGS (" SYSTEM_FLAGS ")");
	imap_session_untagged(s, "OK [PERMANENTFLAGS (%s)] Flags permitted", readonly ? "" : SYSTEM_FLAGS);
	imap_session_untagged(s, "%zu EXISTS", v->n);
	imap_session_untagged(s, "0 RECENT");
	if (first_unseen)
		imap_session_untagged(s, "OK [UNSEEN %zu] First unseen", first_unseen);
	imap_session_untagged(s, "OK [UIDVALIDITY %u] UIDs valid", v->uidvalidity);
	imap_session_untagged(s, "OK [UIDNEXT %u] Predicted next UID", v->uidnext);
	imap_session_tagged(s, "OK", "[%s] %s completed", readonly ? "READ-ONLY" : "READ-WRITE", cmd->name);
}

/* ---- change reporting ------------------------------------------------------------------ */

static void report_flags(struct imap_session *s, size_t seq, uint32_t uid, uint32_t flags)
{
	struct buf b = BUF_INIT;
	buf_printf(&b, "%zu FETCH (UID %u FLAGS ", seq, uid);
	imap_flags_format(flags, &b);
	buf_append_char(&b, ')');
	imap_session_untagged(s, "%s", b.data);
	buf_free(&b);
}

void imap_mailbox_sync(struct imap_session *s, bool allow_expunge)
{
	struct imap_view *v = s->view;
	if (v == NULL)
		return;
	uint32_t uidnext;
	uint64_t hms;
	enum status st = store_imap_mailbox_poll(s->w->reader, v->id, &uidnext, &hms);
	if (st == ST_NOT_FOUND) {
		imap_session_bye(s, "Selected mailbox was deleted");
		return;
	}
	if (st != ST_OK)
		return;   /* try again at the next boundary */
	if (uidnext == v->uidnext && hms == v->highestmodseq && !(allow_expunge && v->pending_expunge))
		return;
	struct load_ctx c = { NULL, 0, 0 };
	if (store_imap_messages(s->w->reader, v->id, 1, load_cb, &c) != ST_OK) {
		free(c.m);
		return;
	}
	struct view_msg *out = NULL;
	size_t n_out = 0, cap_out = 0, k = 0;
	size_t old_n = v->n;
	bool pending = false;
	for (size_t i = 0; i < v->n; i++) {
		const struct view_msg *o = &v->m[i];
		while (k < c.n && c.m[k].uid < o->uid)
			k++;  /* a UID below a known one cannot be new: skip (never happens) */
		if (k < c.n && c.m[k].uid == o->uid) {
			uint32_t now = c.m[k].flags;
			view_push(&out, &n_out, &cap_out, o->uid, now | (o->flags & VIEW_GONE));
			if ((o->flags & ~VIEW_GONE) != now)
				report_flags(s, n_out, o->uid, now);
			k++;
		} else if (allow_expunge) {
			imap_session_untagged(s, "%zu EXPUNGE", n_out + 1);
			old_n--;
		} else {
			view_push(&out, &n_out, &cap_out, o->uid, o->flags | VIEW_GONE);
			pending = true;
		}
	}
	uint32_t last = v->n ? v->m[v->n - 1].uid : 0;
	for (; k < c.n; k++) {
		if (c.m[k].uid > last)
			view_push(&out, &n_out, &cap_out, c.m[k].uid, c.m[k].flags);
	}
	free(c.m);
	free(v->m);
	v->m = out;
	v->n = n_out;
	v->cap = cap_out;
	v->pending_expunge = pending;
	if (n_out != old_n)
		imap_session_untagged(s, "%zu EXISTS", n_out);
	v->uidnext = uidnext;
	v->highestmodseq = hms;
}

/* ---- sequence sets ---------------------------------------------------------------------- */

static int range_cmp(const void *a, const void *b)
{
	const struct imap_range *x = a, *y = b;
	return x->lo < y->lo ? -1 : x->lo > y->lo;
}

enum status imap_mailbox_resolve_set(struct imap_session *s, const char *text, bool uid, size_t **idx_r,
				size_t *n_r, const char **bad_r)
{
	struct imap_view *v = s->view;
	struct imap_seqset set;
	*idx_r = NULL;
	*n_r = 0;
	if (imap_seqset_parse(text, &set) != ST_OK) {
		*bad_r = "Invalid sequence set";
		return ST_INVALID;
	}
	uint32_t max = uid ? (v->n ? v->m[v->n - 1].uid : 0) : (uint32_t)v->n;
	for (size_t i = 0; i < set.n; i++) {
		struct imap_range *r = &set.r[i];
		r->lo = r->lo ? r->lo : max;
		r->hi = r->hi ? r->hi : max;
		if (r->lo > r->hi) {
			uint32_t t = r->lo;
			r->lo = r->hi;
			r->hi = t;
		}
		if (!uid && (r->hi > v->n || r->lo == 0)) {
			imap_seqset_free(&set);
			*bad_r = v->n == 0 ? "No messages" : "Invalid sequence number";
			return ST_INVALID;
		}
	}
	qsort(set.r, set.n, sizeof(*set.r), range_cmp);
	size_t *idx = xcalloc(v->n ? v->n : 1, sizeof(*idx));
	size_t n = 0, pos = 0;
	/* Ranges sorted by lo: one forward walk over the view. */
	for (size_t i = 0; i < set.n; i++) {
		uint32_t lo = set.r[i].lo, hi = set.r[i].hi;
		if (lo == 0)
			continue;
		if (!uid) {
			size_t from = lo - 1 > pos ? lo - 1 : pos;
			for (size_t j = from; j < hi; j++)
				idx[n++] = j;
			if (hi > pos)
				pos = hi;
			continue;
		}
		while (pos < v->n && v->m[pos].uid < lo)
			pos++;
		while (pos < v->n && v->m[pos].uid <= hi)
			idx[n++] = pos++;
	}
	imap_seqset_free(&set);
	*idx_r = idx;
	*n_r = n;
	return ST_OK;
}

/* UIDs of the chosen messages that are not expunged already. */
static uint32_t *chosen_uids(const struct imap_view *v, const size_t *idx, size_t n, size_t *n_r)
{
	uint32_t *uids = xcalloc(n ? n : 1, sizeof(*uids));
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		if (!(v->m[idx[i]].flags & VIEW_GONE))
			uids[k++] = v->m[idx[i]].uid;
	}
	*n_r = k;
	return uids;
}

/* Compact "1:3,7" form of ascending UIDs (COPYUID). */
static void uid_set_format(const uint32_t *uids, size_t n, struct buf *out)
{
	for (size_t i = 0; i < n;) {
		size_t j = i;
		while (j + 1 < n && uids[j + 1] == uids[j] + 1)
			j++;
		if (out->len > 0 && out->data[out->len - 1] != ' ')
			buf_append_char(out, ',');
		if (j > i)
			buf_printf(out, "%u:%u", uids[i], uids[j]);
		else
			buf_printf(out, "%u", uids[i]);
		i = j + 1;
	}
}

/* ---- STORE ------------------------------------------------------------------------------- */

struct store_job {
	struct imap_job j;
	int64_t mailbox_id;
	uint32_t *uids;
	size_t n;
	enum store_flag_op op;
	uint32_t flags;
	uint32_t *flags_out;
	uint64_t modseq;
	bool silent;
	bool uid_cmd;
};

static void store_run(struct imap_job *j, struct store *st)
{
	struct store_job *sj = (struct store_job *)j;
	j->status = store_imap_set_flags(st, sj->mailbox_id, sj->uids, sj->n, sj->op, sj->flags, sj->flags_out,
					 &sj->modseq, &j->error);
}

static void store_done(struct imap_job *j)
{
	struct store_job *sj = (struct store_job *)j;
	struct imap_session *s = j->s;
	if (imap_session_job_finished(s)) {
		struct imap_view *v = s->view;
		if (j->status == ST_OK && v != NULL) {
			for (size_t i = 0; i < sj->n; i++) {
				long at = view_find(v, sj->uids[i]);
				if (at < 0 || sj->flags_out[i] == UINT32_MAX)
					continue;
				v->m[at].flags = sj->flags_out[i] | (v->m[at].flags & VIEW_GONE);
				if (!sj->silent)
					report_flags(s, (size_t)at + 1, sj->uids[i], sj->flags_out[i]);
			}
			imap_mailbox_sync(s, sj->uid_cmd);
			imap_session_tagged(s, "OK", "STORE completed");
		} else {
			imap_command_reply_status(s, j->status, j->error ? j->error : "STORE failed");
		}
		imap_session_job_end(s);
	}
	free(j->error);
	free(sj->uids);
	free(sj->flags_out);
	free(sj);
}

void imap_mailbox_store(struct imap_session *s, struct imap_cmd *cmd)
{
	if (cmd->n_args < 3 || cmd->args[0].type != IMAP_ARG_ATOM || cmd->args[1].type != IMAP_ARG_ATOM) {
		imap_session_bad(s, cmd->tag, "STORE takes a set, an item and flags");
		return;
	}
	const char *item = cmd->args[1].str;
	enum store_flag_op op = STORE_FLAGS_SET;
	if (item[0] == '+' || item[0] == '-') {
		op = item[0] == '+' ? STORE_FLAGS_ADD : STORE_FLAGS_REMOVE;
		item++;
	}
	bool silent = str_ieq(item, "FLAGS.SILENT");
	if (!silent && !str_ieq(item, "FLAGS")) {
		imap_session_bad(s, cmd->tag, "Unknown STORE item");
		return;
	}
	uint32_t flags = 0;
	for (size_t i = 2; i < cmd->n_args; i++) {
		uint32_t f;
		if ((cmd->args[i].type == IMAP_ARG_LIST && cmd->n_args != 3) || !imap_flags_parse(&cmd->args[i], &f)) {
			imap_session_bad(s, cmd->tag, "Invalid flags");
			return;
		}
		flags |= f;
	}
	if (s->view->readonly) {
		imap_session_tagged(s, "NO", "[READ-ONLY] Mailbox is read-only");
		return;
	}
	size_t *idx, n;
	const char *bad;
	if (imap_mailbox_resolve_set(s, cmd->args[0].str, cmd->uid, &idx, &n, &bad) != ST_OK) {
		imap_session_bad(s, cmd->tag, "%s", bad);
		return;
	}
	struct store_job *sj = xcalloc(1, sizeof(*sj));
	sj->uids = chosen_uids(s->view, idx, n, &sj->n);
	free(idx);
	sj->flags_out = xcalloc(sj->n ? sj->n : 1, sizeof(*sj->flags_out));
	sj->mailbox_id = s->view->id;
	sj->op = op;
	sj->flags = flags;
	sj->silent = silent;
	sj->uid_cmd = cmd->uid;
	sj->j.run = store_run;
	sj->j.done = store_done;
	imap_session_submit(s, &sj->j);
}

/* ---- EXPUNGE / CLOSE ------------------------------------------------------------------------ */

struct expunge_job {
	struct imap_job j;
	int64_t account_id;
	int64_t mailbox_id;
	uint32_t *uids;       /* UID EXPUNGE, else NULL */
	size_t n;
	bool close;           /* CLOSE: silent, then unselect */
	bool unselect_only;
};

static void expunge_run(struct imap_job *j, struct store *st)
{
	struct expunge_job *ej = (struct expunge_job *)j;
	uint32_t *gone = NULL;
	size_t n_gone = 0;
	j->status = store_imap_expunge(st, ej->account_id, ej->mailbox_id, ej->uids, ej->n, &gone, &n_gone,
				       &j->error);
	free(gone);
}

static void expunge_done(struct imap_job *j)
{
	struct expunge_job *ej = (struct expunge_job *)j;
	struct imap_session *s = j->s;
	if (imap_session_job_finished(s)) {
		if (j->status != ST_OK) {
			imap_command_reply_status(s, j->status, j->error ? j->error : "EXPUNGE failed");
		} else if (ej->close) {
			imap_mailbox_unselect(s);
			imap_session_tagged(s, "OK", "CLOSE completed");
		} else {
			imap_mailbox_sync(s, true);
			imap_session_tagged(s, "OK", "EXPUNGE completed");
		}
		imap_session_job_end(s);
	}
	free(j->error);
	free(ej->uids);
	free(ej);
}

static void start_expunge(struct imap_session *s, uint32_t *uids, size_t n, bool close)
{
	struct expunge_job *ej = xcalloc(1, sizeof(*ej));
	ej->account_id = s->account_id;
	ej->mailbox_id = s->view->id;
	ej->uids = uids;
	ej->n = n;
	ej->close = close;
	ej->j.run = expunge_run;
	ej->j.done = expunge_done;
	imap_session_submit(s, &ej->j);
}

void imap_mailbox_expunge(struct imap_session *s, struct imap_cmd *cmd)
{
	if (cmd->n_args != (cmd->uid ? 1u : 0u) || (cmd->uid && cmd->args[0].type != IMAP_ARG_ATOM)) {
		imap_session_bad(s, cmd->tag, "Wrong arguments to EXPUNGE");
		return;
	}
	if (s->view->readonly) {
		imap_session_tagged(s, "NO", "[READ-ONLY] Mailbox is read-only");
		return;
	}
	uint32_t *uids = NULL;
	size_t n = 0;
	if (cmd->uid) {
		size_t *idx;
		const char *bad;
		if (imap_mailbox_resolve_set(s, cmd->args[0].str, true, &idx, &n, &bad) != ST_OK) {
			imap_session_bad(s, cmd->tag, "%s", bad);
			return;
		}
		uids = chosen_uids(s->view, idx, n, &n);
		free(idx);
		if (n == 0) {
			free(uids);
			imap_mailbox_sync(s, true);
			imap_session_tagged(s, "OK", "EXPUNGE completed");
			return;
		}
	}
	start_expunge(s, uids, n, false);
}

void imap_mailbox_close(struct imap_session *s, struct imap_cmd *cmd, bool expunge)
{
	(void)cmd;
	if (!expunge || s->view->readonly) {
		imap_mailbox_unselect(s);
		imap_session_tagged(s, "OK", "%s completed", expunge ? "CLOSE" : "UNSELECT");
		return;
	}
	start_expunge(s, NULL, 0, true);
}

/* ---- COPY / MOVE ----------------------------------------------------------------------------- */

struct copy_job {
	struct imap_job j;
	int64_t account_id;
	int64_t src, dst;
	bool move;
	bool uid_cmd;
	uint32_t *uids;
	uint32_t *dst_uids;
	size_t n;
	uint32_t uidvalidity;
};

static void copy_run(struct imap_job *j, struct store *st)
{
	struct copy_job *cj = (struct copy_job *)j;
	j->status = store_imap_copy(st, cj->account_id, cj->src, cj->uids, cj->n, cj->dst, cj->move, cj->dst_uids,
				    &cj->uidvalidity, &j->error);
}

static void copy_done(struct imap_job *j)
{
	struct copy_job *cj = (struct copy_job *)j;
	struct imap_session *s = j->s;
	if (imap_session_job_finished(s)) {
		if (j->status != ST_OK) {
			if (j->status == ST_NOT_FOUND)
				imap_session_tagged(s, "NO", "[TRYCREATE] Mailbox does not exist");
			else
				imap_command_reply_status(s, j->status, j->error ? j->error : "COPY failed");
		} else {
			struct buf from = BUF_INIT, to = BUF_INIT;
			size_t k = 0;
			for (size_t i = 0; i < cj->n; i++) {
				if (cj->dst_uids[i] == 0)
					continue;
				cj->uids[k] = cj->uids[i];
				cj->dst_uids[k] = cj->dst_uids[i];
				k++;
			}
			uid_set_format(cj->uids, k, &from);
			uid_set_format(cj->dst_uids, k, &to);
			struct buf text = BUF_INIT;
			if (k > 0)
				buf_printf(&text, "[COPYUID %u %s %s] ", cj->uidvalidity, from.data, to.data);
			if (cj->move) {
				if (k > 0)
					imap_session_untagged(s, "OK %sMoved", text.data);
				imap_mailbox_sync(s, true);
				imap_session_tagged(s, "OK", "MOVE completed");
			} else {
				imap_mailbox_sync(s, cj->uid_cmd);
				imap_session_tagged(s, "OK", "%sCOPY completed", text.data ? text.data : "");
			}
			buf_free(&text);
			buf_free(&from);
			buf_free(&to);
		}
		imap_session_job_end(s);
	}
	free(j->error);
	free(cj->uids);
	free(cj->dst_uids);
	free(cj);
}

void imap_mailbox_copy(struct imap_session *s, struct imap_cmd *cmd, bool move)
{
	if (cmd->n_args != 2 || cmd->args[0].type != IMAP_ARG_ATOM || !imap_arg_is_string(&cmd->args[1])) {
		imap_session_bad(s, cmd->tag, "%s takes a set and a mailbox", cmd->name);
		return;
	}
	if (move && s->view->readonly) {
		imap_session_tagged(s, "NO", "[READ-ONLY] Mailbox is read-only");
		return;
	}
	struct store_mailbox_info mb;
	enum status st = store_imap_mailbox_get(s->w->reader, s->account_id, cmd->args[1].str, false, &mb);
	if (st == ST_NOT_FOUND || st == ST_INVALID) {
		imap_session_tagged(s, "NO", "[TRYCREATE] Mailbox does not exist");
		return;
	}
	if (st != ST_OK) {
		imap_command_reply_status(s, st, "Cannot open target mailbox");
		return;
	}
	if (move && mb.id == s->view->id) {
		imap_session_tagged(s, "NO", "[CANNOT] Source and target mailbox are the same");
		return;
	}
	size_t *idx, n;
	const char *bad;
	if (imap_mailbox_resolve_set(s, cmd->args[0].str, cmd->uid, &idx, &n, &bad) != ST_OK) {
		imap_session_bad(s, cmd->tag, "%s", bad);
		return;
	}
	struct copy_job *cj = xcalloc(1, sizeof(*cj));
	cj->uids = chosen_uids(s->view, idx, n, &cj->n);
	free(idx);
	if (cj->n == 0) {
		free(cj->uids);
		free(cj);
		imap_mailbox_sync(s, move || cmd->uid);
		imap_session_tagged(s, "OK", "%s completed", cmd->name);
		return;
	}
	cj->dst_uids = xcalloc(cj->n, sizeof(*cj->dst_uids));
	cj->account_id = s->account_id;
	cj->src = s->view->id;
	cj->dst = mb.id;
	cj->move = move;
	cj->uid_cmd = cmd->uid;
	cj->j.run = copy_run;
	cj->j.done = copy_done;
	imap_session_submit(s, &cj->j);
}
