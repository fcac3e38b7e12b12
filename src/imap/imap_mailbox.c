/*
 * imap_mailbox.c - the selected state: SELECT/EXAMINE, the session's view
 * of its mailbox and how it learns about changes, STORE, EXPUNGE,
 * CLOSE/UNSELECT, COPY and MOVE (with UIDPLUS response codes).
 *
 * The view: one (uid, flags) pair per message in UID order; the sequence
 * number is the index + 1.  Changes made by anyone (other sessions,
 * deliveries, this session's own jobs) reach the view only through
 * imap_mailbox_sync(), which polls (uidnext, highestmodseq), reads what
 * changed when either moved (see "Cost of a sync" below), and reports it: EXPUNGE for UIDs
 * that went (in ascending sequence order, each number valid at the moment
 * it is sent), FETCH (FLAGS) for changed flags, and one EXISTS for new
 * messages.  During FETCH, STORE and SEARCH (non-UID forms) expunges are
 * held back (RFC 3501 7.4.1): the message stays in the view marked
 * VIEW_GONE so sequence numbers keep their meaning until a later command
 * may report it.
 *
 * CONDSTORE (RFC 7162): the view keeps each message's mod-sequence too;
 * once the session has enabled CONDSTORE, SELECT reports HIGHESTMODSEQ
 * (SELECT/EXAMINE (CONDSTORE) enables it), every FETCH reporting a flag
 * change carries MODSEQ, a flag change without a flags difference (a
 * keyword-only change by another session) is reported too, and STORE
 * accepts (UNCHANGEDSINCE n): messages changed after n are left alone and
 * named in [MODIFIED set], decided inside the store's transaction.
 *
 * QRESYNC (RFC 7162 3.2): once enabled, expunges are reported as one
 * "VANISHED uids" (sent before any FETCH that follows, so sequence numbers
 * agree), and SELECT/EXAMINE accept (QRESYNC (uidvalidity modseq
 * [known-uids] [seq-match-data])): with a matching UIDVALIDITY the reply
 * adds VANISHED (EARLIER) from the store's expunge log (or, beyond its
 * retention, every known UID that is gone) and a FETCH (UID FLAGS MODSEQ)
 * for each message changed after modseq.  seq-match-data is validated and
 * not needed: the log answers exactly.
 *
 * \Recent (IMAP4rev1 only): VIEW_RECENT marks the messages this session
 * was the first to be told about; the process-wide claim table and its
 * copy in the index are described at recent_take below.  IMAP4rev2
 * sessions (RFC 9051) get no RECENT and no \Recent, a LIST response in
 * SELECT instead of the UNSEEN code, and take no claims.
 *
 * Memory: 24 bytes per message of the selected mailbox (the list is
 * trimmed to its length after each full load), plus the keyword strings of
 * messages that have keywords.
 *
 * Cost of a sync: one (uidnext, highestmodseq) poll when nothing changed;
 * otherwise store_imap_changes reads only the rows changed after the
 * view's modseq, the new UIDs and the expunges since (one read
 * transaction), so a session's own STORE costs one row, not the mailbox.
 * Only when the expunge log was pruned past the view's modseq (and a count
 * disagrees) is the whole list read and compared, as SELECT does.
 * Threads: the loop thread; store jobs receive copies of what they need.
 */
#include "imap_int.h"

#include <pthread.h>
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

void imap_flags_format(uint32_t flags, const char *keywords, struct buf *out)
{
	buf_append_char(out, '(');
	bool first = true;
	if (flags & VIEW_RECENT) {
		buf_append_str(out, "\\Recent");
		first = false;
	}
	for (size_t i = 0; i < ARRAY_LEN(flag_names); i++) {
		if (flags & flag_names[i].bit) {
			buf_printf(out, "%s%s", first ? "" : " ", flag_names[i].name);
			first = false;
		}
	}
	if (keywords != NULL && keywords[0] != '\0')
		buf_printf(out, "%s%s", first ? "" : " ", keywords);
	buf_append_char(out, ')');
}

bool imap_keywords_have(const char *keywords, const char *word)
{
	size_t len = strlen(word);
	for (const char *p = keywords; p != NULL && *p;) {
		while (*p == ' ')
			p++;
		size_t n = strcspn(p, " ");
		if (n == len && strncasecmp(p, word, len) == 0)
			return true;
		p += n;
	}
	return false;
}

/* A keyword: an atom (RFC 3501 9: no atom-specials, no ']' either, which
 * resp-text-code would misread) of bounded length. */
static bool keyword_valid(const char *w, size_t len)
{
	if (len == 0 || len > STORE_KEYWORD_LEN_MAX || strlen(w) != len)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)w[i];
		if (c <= 0x20 || c >= 0x7f || strchr("(){%*\"\\]", c) != NULL)
			return false;
	}
	return true;
}

/* One flag atom: a system flag sets its bit, a keyword is appended to kw;
 * \Recent and unknown backslash flags are invalid. */
static bool flag_parse_one(const struct imap_arg *a, uint32_t *flags, struct buf *kw)
{
	if (a->type != IMAP_ARG_ATOM)
		return false;
	if (a->str[0] != '\\') {
		if (!keyword_valid(a->str, a->len))
			return false;
		if (!imap_keywords_have(kw->data, a->str))
			buf_printf(kw, "%s%s", kw->len ? " " : "", a->str);
		return true;
	}
	for (size_t i = 0; i < ARRAY_LEN(flag_names); i++) {
		if (str_ieq(a->str, flag_names[i].name)) {
			*flags |= flag_names[i].bit;
			return true;
		}
	}
	return false;
}

bool imap_flags_parse(const struct imap_arg *a, uint32_t *flags_r, struct buf *kw)
{
	*flags_r = 0;
	if (a->type != IMAP_ARG_LIST)
		return flag_parse_one(a, flags_r, kw);
	for (size_t i = 0; i < a->n; i++) {
		if (!flag_parse_one(&a->list[i], flags_r, kw))
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
	for (size_t i = 0; i < v->n; i++)
		free(v->m[i].kw);
	free(v->m);
	for (size_t i = 0; i < v->n_known; i++)
		free(v->known[i]);
	free(v->known);
	free(v->saved);
	free(v);
	*vp = NULL;
}

/* Appends an entry; takes over kw (malloc'd or NULL). */
static void view_push(struct view_msg **m, size_t *n, size_t *cap, uint32_t uid, uint32_t flags,
		      uint64_t modseq, char *kw)
{
	if (*n == *cap) {
		*cap = *cap ? *cap * 2 : 64;
		*m = xreallocarray(*m, *cap, sizeof(**m));
	}
	(*m)[*n].uid = uid;
	(*m)[*n].flags = flags;
	(*m)[*n].modseq = modseq;
	(*m)[*n].kw = kw;
	(*n)++;
}

struct load_ctx {
	struct view_msg *m;
	size_t n, cap;
};

static void load_cb(void *arg, const struct store_imap_msg *msg)
{
	struct load_ctx *c = arg;
	view_push(&c->m, &c->n, &c->cap, msg->uid, msg->flags, msg->modseq,
		  msg->keywords != NULL ? xstrdup(msg->keywords) : NULL);
}

/* Gives back the unused tail of a loaded list: a selected mailbox is held
 * for the whole session, idle ones included. */
static void load_fit(struct load_ctx *c)
{
	if (c->cap > c->n && c->n > 0) {
		c->m = xreallocarray(c->m, c->n, sizeof(*c->m));
		c->cap = c->n;
	}
}

static void msgs_free(struct view_msg *m, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(m[i].kw);
	free(m);
}

/* Adds the words of kw the view has not announced; true if any was new. */
static bool view_learn(struct imap_view *v, const char *kw)
{
	bool fresh = false;
	for (const char *p = kw; p != NULL && *p;) {
		while (*p == ' ')
			p++;
		size_t len = strcspn(p, " ");
		bool have = len == 0;
		for (size_t i = 0; i < v->n_known && !have; i++)
			have = strncasecmp(v->known[i], p, len) == 0 && v->known[i][len] == '\0';
		if (!have) {
			if (v->n_known == v->cap_known) {
				v->cap_known = v->cap_known ? v->cap_known * 2 : 16;
				v->known = xreallocarray(v->known, v->cap_known, sizeof(*v->known));
			}
			v->known[v->n_known++] = xstrndup(p, len);
			fresh = true;
		}
		p += len;
	}
	return fresh;
}

/* FLAGS and PERMANENTFLAGS: the system flags and the mailbox's keywords;
 * \* (new keywords allowed) while it is below its keyword limit. */
static void announce_flags(struct imap_session *s)
{
	const struct imap_view *v = s->view;
	struct buf kw = BUF_INIT;
	for (size_t i = 0; i < v->n_known; i++)
		buf_printf(&kw, " %s", v->known[i]);
	const char *k = kw.data ? kw.data : "";
	imap_session_untagged(s, "FLAGS (" SYSTEM_FLAGS "%s)", k);
	if (v->readonly)
		imap_session_untagged(s, "OK [PERMANENTFLAGS ()] Read-only mailbox");
	else
		imap_session_untagged(s, "OK [PERMANENTFLAGS (" SYSTEM_FLAGS "%s%s)] Flags permitted", k,
				      v->n_known < STORE_KEYWORDS_MAX ? " \\*" : "");
	buf_free(&kw);
}

long imap_view_find(const struct imap_view *v, uint32_t uid)
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

/* ---- VANISHED (QRESYNC) ------------------------------------------------------------------- */

struct uranges {
	struct imap_range *r;      /* ascending, disjoint, not adjacent */
	size_t n, cap;
};

static void uranges_push(struct uranges *u, uint32_t lo, uint32_t hi)
{
	if (u->n > 0 && (uint64_t)u->r[u->n - 1].hi + 1 >= lo) {
		if (hi > u->r[u->n - 1].hi)
			u->r[u->n - 1].hi = hi;
		return;
	}
	if (u->n == u->cap) {
		u->cap = u->cap ? u->cap * 2 : 16;
		u->r = xreallocarray(u->r, u->cap, sizeof(*u->r));
	}
	u->r[u->n].lo = lo;
	u->r[u->n].hi = hi;
	u->n++;
}

static int irange_cmp(const void *a, const void *b)
{
	const struct imap_range *x = a, *y = b;
	return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* "* VANISHED ..." with the ranges; nothing when empty. */
static void vanished_send(struct imap_session *s, const char *head, const struct uranges *u)
{
	if (u->n == 0)
		return;
	struct buf b = BUF_INIT;
	buf_append_str(&b, head);
	for (size_t i = 0; i < u->n; i++) {
		if (i > 0)
			buf_append_char(&b, ',');
		if (u->r[i].hi > u->r[i].lo)
			buf_printf(&b, "%u:%u", u->r[i].lo, u->r[i].hi);
		else
			buf_printf(&b, "%u", u->r[i].lo);
	}
	imap_session_untagged(s, "%s", b.data);
	buf_free(&b);
}

/* The known UIDs as sorted, merged ranges within [1, max]; "*" is max. */
static void known_ranges(const struct imap_seqset *known, uint32_t max, struct uranges *out)
{
	if (max == 0)
		return;
	if (known == NULL) {
		uranges_push(out, 1, max);
		return;
	}
	struct imap_range *r = xcalloc(known->n ? known->n : 1, sizeof(*r));
	for (size_t i = 0; i < known->n; i++) {
		uint32_t lo = known->r[i].lo ? known->r[i].lo : max;
		uint32_t hi = known->r[i].hi ? known->r[i].hi : max;
		r[i].lo = lo < hi ? lo : hi;
		r[i].hi = lo < hi ? hi : lo;
	}
	if (known->n > 0)
		qsort(r, known->n, sizeof(*r), irange_cmp);
	for (size_t i = 0; i < known->n; i++) {
		if (r[i].lo <= max)
			uranges_push(out, r[i].lo, r[i].hi < max ? r[i].hi : max);
	}
	free(r);
}

void imap_mailbox_vanished_earlier(struct imap_session *s, uint64_t since, const struct imap_seqset *known)
{
	const struct imap_view *v = s->view;
	struct uranges k = { NULL, 0, 0 }, out = { NULL, 0, 0 };
	known_ranges(known, v->uidnext > 0 ? v->uidnext - 1 : 0, &k);
	uint32_t *log = NULL;
	size_t n_log = 0;
	bool complete = false;
	/* A client ahead of the mailbox (an index restored from a backup) or a
	 * log that cannot be read: the fallback is always right. */
	if (k.n > 0 && since <= v->highestmodseq &&
	    store_imap_vanished(s->w->reader, v->id, since, &log, &n_log, &complete) != ST_OK)
		complete = false;
	if (complete) {
		size_t j = 0;
		for (size_t i = 0; i < n_log; i++) {
			while (j < k.n && k.r[j].hi < log[i])
				j++;
			if (j == k.n)
				break;
			if (log[i] >= k.r[j].lo)
				uranges_push(&out, log[i], log[i]);
		}
	} else {
		/* Every known UID the view does not hold (bounded by the
		 * number of ranges plus the view's size). */
		size_t p = 0;
		for (size_t i = 0; i < k.n; i++) {
			uint64_t cur = k.r[i].lo;
			while (p < v->n && v->m[p].uid < k.r[i].lo)
				p++;
			for (; p < v->n && v->m[p].uid <= k.r[i].hi; p++) {
				if (v->m[p].uid > cur)
					uranges_push(&out, (uint32_t)cur, v->m[p].uid - 1);
				cur = (uint64_t)v->m[p].uid + 1;
			}
			if (cur <= k.r[i].hi)
				uranges_push(&out, (uint32_t)cur, k.r[i].hi);
		}
	}
	vanished_send(s, "VANISHED (EARLIER) ", &out);
	free(log);
	free(k.r);
	free(out.r);
}

/* SELECT's "(QRESYNC (uidvalidity modseq [known-uids] [seq-match-data]))". */
struct qresync_param {
	bool given;
	uint32_t uidvalidity;
	uint64_t modseq;
	bool has_known;
	struct imap_seqset known;
};

static bool seqset_valid(const struct imap_arg *a, struct imap_seqset *out)
{
	struct imap_seqset tmp;
	if (a->type != IMAP_ARG_ATOM || imap_seqset_parse(a->str, out ? out : &tmp) != ST_OK)
		return false;
	if (out == NULL)
		imap_seqset_free(&tmp);
	return true;
}

static bool qresync_parse(const struct imap_arg *l, struct qresync_param *q)
{
	uint64_t uv;
	if (l->type != IMAP_ARG_LIST || l->n < 2 || l->n > 4 || l->list[0].type != IMAP_ARG_ATOM ||
	    !imap_modseq_parse(l->list[0].str, &uv) || uv == 0 || uv > UINT32_MAX ||
	    l->list[1].type != IMAP_ARG_ATOM || !imap_modseq_parse(l->list[1].str, &q->modseq))
		return false;
	q->uidvalidity = (uint32_t)uv;
	size_t i = 2;
	if (i < l->n && l->list[i].type == IMAP_ARG_ATOM) {
		if (!seqset_valid(&l->list[i], &q->known))
			return false;
		q->has_known = true;
		i++;
	}
	if (i < l->n) {   /* seq-match-data: (known-sequence-set known-uid-set) */
		const struct imap_arg *m = &l->list[i++];
		if (m->type != IMAP_ARG_LIST || m->n != 2 || !seqset_valid(&m->list[0], NULL) ||
		    !seqset_valid(&m->list[1], NULL))
			return false;
	}
	return i == l->n;
}

/* The SELECT parameter list: CONDSTORE and QRESYNC (RFC 7162 3.1.8, 3.2.5). */
static bool select_params(struct imap_session *s, const struct imap_arg *a, bool *condstore_r,
			  struct qresync_param *q, const char **why_r)
{
	*why_r = "Invalid SELECT parameters";
	if (a->type != IMAP_ARG_LIST || a->n == 0)
		return false;
	for (size_t i = 0; i < a->n; i++) {
		const struct imap_arg *p = &a->list[i];
		if (imap_arg_is_atom(p, "CONDSTORE")) {
			*condstore_r = true;
		} else if (imap_arg_is_atom(p, "QRESYNC") && !q->given && i + 1 < a->n) {
			if (!s->qresync) {
				*why_r = "QRESYNC is not enabled";
				return false;
			}
			q->given = true;
			if (!qresync_parse(&a->list[++i], q))
				return false;
		} else {
			return false;
		}
	}
	return true;
}

static void report_flags(struct imap_session *s, size_t seq, uint32_t uid, uint32_t flags, const char *kw,
			 uint64_t modseq);

/* ---- \Recent (RFC 3501 2.3.2; IMAP4rev1 sessions only) ------------------------------ */

/*
 * A message is recent for the first session that is told about it: the
 * session that selects the mailbox (SELECT, not EXAMINE) after it arrived,
 * or the selected session whose sync sees it first.  The claims are kept
 * in one process-wide table, mailbox id -> first UID nobody claimed yet,
 * under a mutex (the workers' sessions share it), so claiming is atomic and
 * costs no I/O on the loop.  The index keeps the same value
 * (store_imap_recent_*) for the next process: an entry starts from it, and
 * a SELECT that claims something writes the table's value back with a
 * store job before its tagged OK.  Claims made by a sync are written by the
 * next SELECT of the mailbox: after a restart in between they can be
 * recent once more, never lost.  EXAMINE sees what is unclaimed as recent
 * without claiming it (RFC 3501 6.3.2).  Memory: 16 bytes per mailbox
 * selected since the start, never more than the index has mailboxes.
 */
struct recent_slot {
	int64_t id;                     /* 0 = empty (mailbox ids start at 1) */
	uint32_t next;                  /* first UID not claimed */
};
static pthread_mutex_t recent_lock = PTHREAD_MUTEX_INITIALIZER;
static struct recent_slot *recent_tab;
static size_t recent_cap, recent_used;

static struct recent_slot *recent_slot_of(int64_t id)
{
	size_t i = (size_t)((uint64_t)id * 0x9E3779B97F4A7C15ull) & (recent_cap - 1);
	/* Bounded: the table is at most half full, so an empty slot exists. */
	while (recent_tab[i].id != 0 && recent_tab[i].id != id)
		i = (i + 1) & (recent_cap - 1);
	return &recent_tab[i];
}

static void recent_grow(void)
{
	struct recent_slot *old = recent_tab;
	size_t old_cap = recent_cap;
	recent_cap = recent_cap ? recent_cap * 2 : 256;
	recent_tab = xcalloc(recent_cap, sizeof(*recent_tab));
	for (size_t i = 0; i < old_cap; i++) {
		if (old[i].id != 0)
			*recent_slot_of(old[i].id) = old[i];
	}
	free(old);
}

/* The first unclaimed UID of a mailbox; with `claim`, everything below
 * `upto` becomes claimed.  `stored` seeds a mailbox not in the table yet
 * (0: unknown, look it up first).  Returns false when the mailbox is not
 * in the table and stored is 0. */
static bool recent_take(int64_t id, uint32_t stored, bool claim, uint32_t upto, uint32_t *first_r)
{
	pthread_mutex_lock(&recent_lock);
	if (recent_cap == 0 || (recent_used + 1) * 2 > recent_cap)
		recent_grow();
	struct recent_slot *e = recent_slot_of(id);
	if (e->id == 0) {
		if (stored == 0) {
			pthread_mutex_unlock(&recent_lock);
			return false;
		}
		e->id = id;
		e->next = stored;
		recent_used++;
	}
	*first_r = e->next;
	if (claim && upto > e->next)
		e->next = upto;
	pthread_mutex_unlock(&recent_lock);
	return true;
}

/* recent_take, seeding the table from the index when needed.  On a store
 * error nothing is recent (and nothing claimed): *first_r = upto. */
static void recent_claim(struct imap_session *s, int64_t id, bool claim, uint32_t upto, uint32_t *first_r)
{
	if (recent_take(id, 0, claim, upto, first_r))
		return;
	uint32_t stored = 1;
	if (store_imap_recent_get(s->w->reader, id, &stored) != ST_OK) {
		*first_r = upto;
		return;
	}
	recent_take(id, stored, claim, upto, first_r);
}

bool imap_mailbox_recent_count(struct imap_session *s, int64_t mailbox_id, uint32_t *first_r)
{
	if (recent_take(mailbox_id, 0, false, 0, first_r))
		return true;
	return store_imap_recent_get(s->w->reader, mailbox_id, first_r) == ST_OK;
}

/* Marks msgs[0, n) (UID order) recent when this session is the first to
 * see them; SELECT and sync.  The claim covers UIDs below `upto`.  True
 * when this call claimed something. */
static bool recent_mark(struct imap_session *s, int64_t id, struct view_msg *msgs, size_t n, uint32_t upto)
{
	if (s->rev2 || n == 0)
		return false;   /* RFC 9051 has no \Recent: a rev2 session takes nothing */
	uint32_t first;
	recent_claim(s, id, !s->view->readonly, upto, &first);
	for (size_t i = 0; i < n; i++) {
		if (msgs[i].uid >= first && msgs[i].uid < upto)
			msgs[i].flags |= VIEW_RECENT;
	}
	return !s->view->readonly && first < upto;
}

size_t imap_view_recent(const struct imap_view *v)
{
	size_t n = 0;
	for (size_t i = 0; i < v->n; i++)
		n += (v->m[i].flags & VIEW_RECENT) != 0;
	return n;
}

/* SELECT's tagged OK, after the claims are in the index. */
struct recent_job {
	struct imap_job j;
	int64_t mailbox_id;
	uint32_t upto;
	char reply[64];
};

static void recent_job_run(struct imap_job *j, struct store *st)
{
	struct recent_job *rj = (struct recent_job *)j;
	j->status = store_imap_recent_advance(st, rj->mailbox_id, rj->upto, &j->error);
}

static void recent_job_done(struct imap_job *j)
{
	struct recent_job *rj = (struct recent_job *)j;
	struct imap_session *s = j->s;
	if (j->status != ST_OK)   /* the claim stands in this process: only the next one may differ */
		log_warn("imap: cannot record recent messages: %s", j->error ? j->error : "store error");
	if (imap_session_job_finished(s)) {
		imap_session_tagged(s, "OK", "%s", rj->reply);
		imap_session_job_end(s);
	}
	free(j->error);
	free(rj);
}

void imap_mailbox_unselect(struct imap_session *s)
{
	imap_view_free(&s->view);
	if (s->state == IS_SELECTED)
		s->state = IS_AUTH;
}

void imap_mailbox_select(struct imap_session *s, struct imap_cmd *cmd, bool readonly)
{
	if ((cmd->n_args != 1 && cmd->n_args != 2) || !imap_arg_is_string(&cmd->args[0])) {
		imap_session_bad(s, cmd->tag, "%s takes one mailbox name", cmd->name);
		return;
	}
	/* RFC 7162 3.1.8: "SELECT mailbox (CONDSTORE)" enables CONDSTORE. */
	bool cs_param = false;
	struct qresync_param qr = { 0 };
	const char *why;
	if (cmd->n_args == 2 && !select_params(s, &cmd->args[1], &cs_param, &qr, &why)) {
		imap_seqset_free(&qr.known);
		imap_session_bad(s, cmd->tag, "%s", why);
		return;
	}
	if (cs_param)
		s->condstore = true;
	bool was_selected = s->state == IS_SELECTED;
	imap_mailbox_unselect(s);
	if (was_selected)
		imap_session_untagged(s, "OK [CLOSED] Previous mailbox closed");
	struct store_mailbox_info mb;
	bool rtx = store_read_begin(s->w->reader);   /* one snapshot for the three reads */
	enum status st = store_imap_mailbox_get(s->w->reader, s->account_id, cmd->args[0].str, false, &mb);
	if (st != ST_OK) {
		store_read_end(s->w->reader, rtx);
		imap_seqset_free(&qr.known);
		imap_command_reply_status(s, st == ST_INVALID ? ST_NOT_FOUND : st, "Mailbox does not exist");
		return;
	}
	uint32_t uidnext;
	uint64_t hms;
	struct load_ctx c = { NULL, 0, 0 };
	if ((st = store_imap_mailbox_poll(s->w->reader, mb.id, &uidnext, &hms)) == ST_OK)
		st = store_imap_messages(s->w->reader, mb.id, 1, load_cb, &c);
	store_read_end(s->w->reader, rtx);
	if (st != ST_OK) {
		imap_seqset_free(&qr.known);
		msgs_free(c.m, c.n);
		imap_command_reply_status(s, st, "Cannot open mailbox");
		return;
	}
	load_fit(&c);
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
	for (size_t i = 0; i < v->n; i++)
		view_learn(v, v->m[i].kw);
	uint32_t upto = v->n && v->m[v->n - 1].uid >= v->uidnext ? v->m[v->n - 1].uid + 1 : v->uidnext;
	bool claimed = recent_mark(s, v->id, v->m, v->n, upto);
	announce_flags(s);
	imap_session_untagged(s, "%zu EXISTS", v->n);
	if (s->rev2) {
		/* RFC 9051 6.3.2: no RECENT, no UNSEEN code; a LIST response
		 * gives the mailbox's name as the server spells it. */
		struct buf l = BUF_INIT;
		buf_append_str(&l, "LIST () \"/\" ");
		imap_quote(&l, v->name);
		imap_session_untagged(s, "%s", l.data);
		buf_free(&l);
	} else {
		imap_session_untagged(s, "%zu RECENT", imap_view_recent(v));
		if (first_unseen)
			imap_session_untagged(s, "OK [UNSEEN %zu] First unseen", first_unseen);
	}
	imap_session_untagged(s, "OK [UIDVALIDITY %u] UIDs valid", v->uidvalidity);
	imap_session_untagged(s, "OK [UIDNEXT %u] Predicted next UID", v->uidnext);
	if (s->condstore)
		imap_session_untagged(s, "OK [HIGHESTMODSEQ %llu] Highest", (unsigned long long)v->highestmodseq);
	if (qr.given && qr.uidvalidity == v->uidvalidity) {
		imap_mailbox_vanished_earlier(s, qr.modseq, qr.has_known ? &qr.known : NULL);
		for (size_t i = 0; i < v->n; i++) {
			if (v->m[i].modseq > qr.modseq)
				report_flags(s, i + 1, v->m[i].uid, v->m[i].flags & ~VIEW_GONE, v->m[i].kw,
					     v->m[i].modseq);
		}
	}
	imap_seqset_free(&qr.known);
	if (!claimed) {
		imap_session_tagged(s, "OK", "[%s] %s completed", readonly ? "READ-ONLY" : "READ-WRITE", cmd->name);
		return;
	}
	/* Record this session's claims in the index before the OK. */
	struct recent_job *rj = xcalloc(1, sizeof(*rj));
	rj->mailbox_id = v->id;
	recent_take(v->id, 1, false, 0, &rj->upto);   /* the table's value, this claim included */
	snprintf(rj->reply, sizeof(rj->reply), "[READ-WRITE] %s completed", cmd->name);
	rj->j.run = recent_job_run;
	rj->j.done = recent_job_done;
	imap_session_submit(s, &rj->j);
}

/* ---- change reporting ------------------------------------------------------------------ */

static void report_flags(struct imap_session *s, size_t seq, uint32_t uid, uint32_t flags, const char *kw,
			 uint64_t modseq)
{
	if (view_learn(s->view, kw))
		announce_flags(s);   /* a new keyword: FLAGS first (RFC 3501 7.2.6) */
	struct buf b = BUF_INIT;
	buf_printf(&b, "%zu FETCH (UID %u FLAGS ", seq, uid);
	imap_flags_format(flags, kw, &b);
	if (s->condstore)
		buf_printf(&b, " MODSEQ (%llu)", (unsigned long long)modseq);
	buf_append_char(&b, ')');
	imap_session_untagged(s, "%s", b.data);
	buf_free(&b);
}

/* Every message of the mailbox is in c: the difference with the view. */
static void sync_full(struct imap_session *s, bool allow_expunge, struct load_ctx *c)
{
	struct imap_view *v = s->view;
	if (allow_expunge && s->qresync) {
		/* One VANISHED for every expunge, before any FETCH below. */
		struct uranges gone = { NULL, 0, 0 };
		size_t kk = 0;
		for (size_t i = 0; i < v->n; i++) {
			while (kk < c->n && c->m[kk].uid < v->m[i].uid)
				kk++;
			if (kk == c->n || c->m[kk].uid != v->m[i].uid)
				uranges_push(&gone, v->m[i].uid, v->m[i].uid);
		}
		vanished_send(s, "VANISHED ", &gone);
		free(gone.r);
	}
	struct view_msg *out = NULL;
	size_t n_out = 0, cap_out = 0, k = 0;
	size_t old_n = v->n;
	bool pending = false;
	for (size_t i = 0; i < v->n; i++) {
		const struct view_msg *o = &v->m[i];
		while (k < c->n && c->m[k].uid < o->uid)
			k++;  /* a UID below a known one cannot be new: skip (never happens) */
		if (k < c->n && c->m[k].uid == o->uid) {
			uint32_t now = c->m[k].flags;
			uint64_t ms = c->m[k].modseq;
			char *kw = c->m[k].kw;
			c->m[k].kw = NULL;
			bool kw_changed = (kw == NULL) != (o->kw == NULL) || (kw != NULL && strcmp(kw, o->kw) != 0);
			view_push(&out, &n_out, &cap_out, o->uid, now | (o->flags & VIEW_BITS), ms, kw);
			if ((o->flags & ~VIEW_BITS) != now || kw_changed || (s->condstore && ms != o->modseq))
				report_flags(s, n_out, o->uid, now | (o->flags & VIEW_RECENT), kw, ms);
			k++;
		} else if (allow_expunge) {
			if (!s->qresync)
				imap_session_untagged(s, "%zu EXPUNGE", n_out + 1);
			old_n--;
		} else {
			view_push(&out, &n_out, &cap_out, o->uid, o->flags | VIEW_GONE, o->modseq, v->m[i].kw);
			v->m[i].kw = NULL;
			pending = true;
		}
	}
	uint32_t last = v->n ? v->m[v->n - 1].uid : 0;
	bool fresh = false;
	size_t first_new = n_out;
	for (; k < c->n; k++) {
		if (c->m[k].uid > last) {
			fresh |= view_learn(v, c->m[k].kw);
			view_push(&out, &n_out, &cap_out, c->m[k].uid, c->m[k].flags, c->m[k].modseq, c->m[k].kw);
			c->m[k].kw = NULL;
		}
	}
	if (n_out > first_new)
		(void)recent_mark(s, v->id, out + first_new, n_out - first_new, out[n_out - 1].uid + 1);
	if (fresh)
		announce_flags(s);   /* before EXISTS: new messages brought new keywords */
	msgs_free(v->m, v->n);
	struct load_ctx fit = { out, n_out, cap_out };
	load_fit(&fit);
	v->m = fit.m;
	v->n = n_out;
	v->cap = fit.cap;
	v->pending_expunge = pending;
	if (n_out != old_n) {
		imap_session_untagged(s, "%zu EXISTS", n_out);
		if (!s->rev2)
			imap_session_untagged(s, "%zu RECENT", imap_view_recent(v));
	}
}

/* Drops the VIEW_GONE entries, reporting each: EXPUNGE in ascending
 * sequence order (each number valid when sent), or one VANISHED. */
static void view_compact(struct imap_session *s)
{
	struct imap_view *v = s->view;
	struct uranges gone = { NULL, 0, 0 };
	size_t k = 0;
	for (size_t i = 0; i < v->n; i++) {
		if (!(v->m[i].flags & VIEW_GONE)) {
			v->m[k++] = v->m[i];
			continue;
		}
		if (s->qresync)
			uranges_push(&gone, v->m[i].uid, v->m[i].uid);
		else
			imap_session_untagged(s, "%zu EXPUNGE", k + 1);
		free(v->m[i].kw);
	}
	v->n = k;
	v->pending_expunge = false;
	vanished_send(s, "VANISHED ", &gone);
	free(gone.r);
}

/* c holds the messages changed since the view's modseq, then the new ones
 * (UID order); `gone` the UIDs expunged since. */
static void sync_delta(struct imap_session *s, bool allow_expunge, struct load_ctx *c, const uint32_t *gone,
		       size_t n_gone)
{
	struct imap_view *v = s->view;
	for (size_t i = 0; i < n_gone; i++) {
		long at = imap_view_find(v, gone[i]);
		if (at >= 0) {
			v->m[at].flags |= VIEW_GONE;
			v->pending_expunge = true;
		}
	}
	if (allow_expunge && v->pending_expunge)
		view_compact(s);   /* before any FETCH, so sequence numbers agree */
	uint32_t last = v->n ? v->m[v->n - 1].uid : 0;
	size_t k = 0;
	for (; k < c->n && c->m[k].uid <= last; k++) {
		long at = imap_view_find(v, c->m[k].uid);
		if (at < 0 || (v->m[at].flags & VIEW_GONE))
			continue;
		struct view_msg *o = &v->m[at];
		uint32_t now = c->m[k].flags;
		uint64_t ms = c->m[k].modseq;
		char *kw = c->m[k].kw;
		bool kw_changed = (kw == NULL) != (o->kw == NULL) || (kw != NULL && strcmp(kw, o->kw) != 0);
		bool report = (o->flags & ~VIEW_BITS) != now || kw_changed || (s->condstore && ms != o->modseq);
		c->m[k].kw = o->kw;   /* freed with c */
		o->kw = kw;
		o->flags = now | (o->flags & VIEW_BITS);
		o->modseq = ms;
		if (report)
			report_flags(s, (size_t)at + 1, o->uid, now | (o->flags & VIEW_RECENT), o->kw, ms);
	}
	size_t first_new = v->n;
	bool fresh = false;
	for (; k < c->n; k++) {
		fresh |= view_learn(v, c->m[k].kw);
		view_push(&v->m, &v->n, &v->cap, c->m[k].uid, c->m[k].flags, c->m[k].modseq, c->m[k].kw);
		c->m[k].kw = NULL;
	}
	if (v->n == first_new)
		return;
	(void)recent_mark(s, v->id, v->m + first_new, v->n - first_new, v->m[v->n - 1].uid + 1);
	if (fresh)
		announce_flags(s);   /* before EXISTS: new messages brought new keywords */
	imap_session_untagged(s, "%zu EXISTS", v->n);
	if (!s->rev2)
		imap_session_untagged(s, "%zu RECENT", imap_view_recent(v));
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
	if (uidnext == v->uidnext && hms == v->highestmodseq) {
		if (allow_expunge && v->pending_expunge)
			view_compact(s);
		return;
	}
	/* Only what changed since the view's (uidnext, modseq) is read: after
	 * this session's own STORE that is one row, not the mailbox. */
	size_t live = 0;
	for (size_t i = 0; i < v->n; i++)
		live += !(v->m[i].flags & VIEW_GONE) && v->m[i].uid < v->uidnext;
	struct load_ctx c = { NULL, 0, 0 };
	uint32_t *gone = NULL;
	size_t n_gone = 0;
	bool full = false;
	st = store_imap_changes(s->w->reader, v->id, v->uidnext, v->highestmodseq, live, load_cb, &c, &uidnext, &hms,
				&gone, &n_gone, &full);
	if (st == ST_OK) {
		if (full)
			sync_full(s, allow_expunge, &c);
		else
			sync_delta(s, allow_expunge, &c, gone, n_gone);
		v->uidnext = uidnext;
		v->highestmodseq = hms;
	} else if (st == ST_NOT_FOUND) {
		imap_session_bye(s, "Selected mailbox was deleted");
	}
	msgs_free(c.m, c.n);
	free(gone);
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
	if (strcmp(text, "$") == 0) {   /* SEARCHRES (RFC 5182): the saved result */
		*idx_r = imap_search_saved_resolve(s, n_r);
		return ST_OK;
	}
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
	if (set.n > 0)
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
	char *keywords;               /* space-separated, NULL = none */
	uint32_t *flags_out;
	char **keywords_out;
	uint64_t *modseqs_out;
	uint64_t modseq;
	bool conditional;             /* UNCHANGEDSINCE given */
	uint64_t unchangedsince;
	bool silent;
	bool uid_cmd;
};

static void store_run(struct imap_job *j, struct store *st)
{
	struct store_job *sj = (struct store_job *)j;
	j->status = store_imap_set_flags_cond(st, sj->mailbox_id, sj->uids, sj->n, sj->op, sj->flags,
					      sj->keywords, sj->conditional ? &sj->unchangedsince : NULL,
					      sj->flags_out, sj->keywords_out, sj->modseqs_out, &sj->modseq,
					      &j->error);
}

static void store_done(struct imap_job *j)
{
	struct store_job *sj = (struct store_job *)j;
	struct imap_session *s = j->s;
	if (imap_session_job_finished(s)) {
		struct imap_view *v = s->view;
		if (j->status == ST_OK && v != NULL) {
			/* MODIFIED: UIDs for UID STORE, else sequence numbers, both
			 * ascending because the view is in UID order. */
			uint32_t *modified = xcalloc(sj->n ? sj->n : 1, sizeof(*modified));
			size_t n_modified = 0;
			for (size_t i = 0; i < sj->n; i++) {
				long at = imap_view_find(v, sj->uids[i]);
				if (at < 0 || sj->flags_out[i] == UINT32_MAX)
					continue;
				if (sj->flags_out[i] == STORE_FLAGS_MODIFIED) {
					modified[n_modified++] = sj->uid_cmd ? sj->uids[i] : (uint32_t)at + 1;
					continue;
				}
				v->m[at].flags = sj->flags_out[i] | (v->m[at].flags & VIEW_BITS);
				v->m[at].modseq = sj->modseqs_out[i];
				free(v->m[at].kw);
				v->m[at].kw = sj->keywords_out[i];
				sj->keywords_out[i] = NULL;
				bool changed = sj->modseq != 0 && sj->modseqs_out[i] == sj->modseq;
				if (!sj->silent)
					report_flags(s, (size_t)at + 1, sj->uids[i], v->m[at].flags & ~VIEW_GONE,
						     v->m[at].kw, sj->modseqs_out[i]);
				else if (view_learn(v, v->m[at].kw))
					announce_flags(s);
				else if (s->condstore && changed)
					imap_session_untagged(s, "%ld FETCH (UID %u MODSEQ (%llu))", at + 1, sj->uids[i],
							      (unsigned long long)sj->modseqs_out[i]);
			}
			imap_mailbox_sync(s, sj->uid_cmd);
			if (n_modified > 0) {
				struct buf b = BUF_INIT;
				buf_append_str(&b, "[MODIFIED ");
				uid_set_format(modified, n_modified, &b);
				imap_session_tagged(s, "OK", "%s] Conditional STORE failed for some messages", b.data);
				buf_free(&b);
			} else {
				imap_session_tagged(s, "OK", "STORE completed");
			}
			free(modified);
		} else if (j->status == ST_INVALID) {
			/* the only refusal of valid flags: the keyword limit */
			imap_session_tagged(s, "NO", "[LIMIT] %s", j->error ? j->error : "Too many keywords");
		} else {
			imap_command_reply_status(s, j->status, j->error ? j->error : "STORE failed");
		}
		imap_session_job_end(s);
	}
	free(j->error);
	for (size_t i = 0; i < sj->n; i++)
		free(sj->keywords_out[i]);
	free(sj->keywords_out);
	free(sj->keywords);
	free(sj->uids);
	free(sj->flags_out);
	free(sj->modseqs_out);
	free(sj);
}

bool imap_modseq_parse(const char *p, uint64_t *value_r)
{
	uint64_t v = 0;
	if (*p == '\0' || strlen(p) > 19)
		return false;
	for (; *p; p++) {
		if (*p < '0' || *p > '9')
			return false;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	if (v > INT64_MAX)   /* mod-sequence values are 63-bit (RFC 7162 7) */
		return false;
	*value_r = v;
	return true;
}

bool imap_modifier_number(const struct imap_arg *a, const char *name, uint64_t *value_r)
{
	return a->type == IMAP_ARG_LIST && a->n == 2 && imap_arg_is_atom(&a->list[0], name) &&
	       a->list[1].type == IMAP_ARG_ATOM && imap_modseq_parse(a->list[1].str, value_r);
}

void imap_mailbox_store(struct imap_session *s, struct imap_cmd *cmd)
{
	/* "STORE set (UNCHANGEDSINCE n) item flags" (RFC 7162 3.1.3). */
	uint64_t unchangedsince = 0;
	bool conditional = cmd->n_args >= 4 && cmd->args[1].type == IMAP_ARG_LIST;
	if (conditional && !imap_modifier_number(&cmd->args[1], "UNCHANGEDSINCE", &unchangedsince)) {
		imap_session_bad(s, cmd->tag, "Invalid STORE modifier");
		return;
	}
	size_t a0 = conditional ? 2 : 1;   /* the item's argument */
	if (cmd->n_args < a0 + 2 || cmd->args[0].type != IMAP_ARG_ATOM || cmd->args[a0].type != IMAP_ARG_ATOM) {
		imap_session_bad(s, cmd->tag, "STORE takes a set, an item and flags");
		return;
	}
	const char *item = cmd->args[a0].str;
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
	struct buf kw = BUF_INIT;
	for (size_t i = a0 + 1; i < cmd->n_args; i++) {
		uint32_t f;
		if ((cmd->args[i].type == IMAP_ARG_LIST && cmd->n_args != a0 + 2) ||
		    !imap_flags_parse(&cmd->args[i], &f, &kw)) {
			buf_free(&kw);
			imap_session_bad(s, cmd->tag, "Invalid flags");
			return;
		}
		flags |= f;
	}
	if (s->view->readonly) {
		buf_free(&kw);
		imap_session_tagged(s, "NO", "[READ-ONLY] Mailbox is read-only");
		return;
	}
	size_t *idx, n;
	const char *bad;
	if (imap_mailbox_resolve_set(s, cmd->args[0].str, cmd->uid, &idx, &n, &bad) != ST_OK) {
		buf_free(&kw);
		imap_session_bad(s, cmd->tag, "%s", bad);
		return;
	}
	struct store_job *sj = xcalloc(1, sizeof(*sj));
	sj->uids = chosen_uids(s->view, idx, n, &sj->n);
	free(idx);
	sj->keywords = kw.len > 0 ? buf_steal(&kw) : NULL;
	buf_free(&kw);
	sj->keywords_out = xcalloc(sj->n ? sj->n : 1, sizeof(*sj->keywords_out));
	sj->flags_out = xcalloc(sj->n ? sj->n : 1, sizeof(*sj->flags_out));
	sj->modseqs_out = xcalloc(sj->n ? sj->n : 1, sizeof(*sj->modseqs_out));
	if (conditional)
		s->condstore = true;
	sj->conditional = conditional;
	sj->unchangedsince = unchangedsince;
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
