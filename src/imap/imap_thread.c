/*
 * imap_thread.c - THREAD and UID THREAD (RFC 5256 section 3):
 * ORDEREDSUBJECT and REFERENCES.
 *
 * ORDEREDSUBJECT: matches grouped by base subject (RFC 5256 2.1); in each
 * group the earliest message (sent date, RFC 5256 2.2; then sequence
 * number) is the parent of all the others, which follow in date order;
 * threads are ordered by their first message's date.
 *
 * REFERENCES: the algorithm of RFC 5256 section 3, step by step:
 *  1. containers by Message-ID (compared case-sensitively; a missing,
 *     invalid or repeated Message-ID makes the message a container of its
 *     own); the References ids (or, without any, the first In-Reply-To id)
 *     linked parent to child where no link exists and none would make a
 *     loop; the message then made the child of its last reference (the old
 *     link broken), or a root when it has none;
 *  2. the parentless containers under one root;
 *  3. dummies pruned: without children deleted, otherwise their children
 *     promoted, except at the top level when there is more than one;
 *  4. the top level sorted by sent date (a dummy by its first child's);
 *  5. top-level threads with the same base subject gathered (the subject
 *     table and merge rules of step 5, reply/forward per 2.1);
 *  6. every set of siblings sorted by sent date, deepest first.
 * Ties in every date order go to the lower sequence number.
 *
 * Bounds: the last THREAD_REFS_MAX ids of a References field are used
 * (the parent is the last one); the trees are walked with explicit stacks,
 * never by recursion, so a chain of 100,000 replies costs memory, not
 * stack; loop checks walk at most the number of containers.
 *
 * Threads: parsing and the reply on the loop thread; hit and finish (the
 * whole algorithm) on the store thread that runs the search job.
 */
#include "imap_int.h"

#include "mime.h"

#include <stdlib.h>
#include <string.h>

#define THREAD_REFS_MAX 128
#define NONE (-1)
#define ROOT 0

enum thread_alg { TA_ORDEREDSUBJECT, TA_REFERENCES };

struct tmsg {
	uint32_t id;                /* UID or sequence number, as the reply names it */
	uint32_t seq;
	int64_t date;
	char *msgid;                /* NULL: none or invalid */
	char **refs;
	size_t n_refs;
	char *subject;              /* base subject, case-folded */
	bool reply;
};

struct tnode {
	int32_t msg;                /* index into msgs, NONE for a dummy */
	int32_t parent, first, last, prev, next;
};

/* Message-ID -> node; keys are owned by the messages. */
struct hmap {
	const char **keys;
	int32_t *vals;
	size_t cap, n;
};

struct thread_ctx {
	enum thread_alg alg;
	bool uid;
	struct tmsg *msgs;
	size_t n_msgs, cap_msgs;
	struct tnode *nodes;
	size_t n_nodes, cap_nodes;
	struct buf out;             /* the response, built on the store thread */
};

/* ---- the message-id map -------------------------------------------------------------- */

static uint64_t str_hash(const char *s)
{
	uint64_t h = 1469598103934665603ull;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ull;
	return h;
}

static size_t hmap_slot(const struct hmap *m, const char *key)
{
	size_t i = (size_t)str_hash(key) & (m->cap - 1);
	/* Bounded: the map is never more than half full. */
	while (m->keys[i] != NULL && strcmp(m->keys[i], key) != 0)
		i = (i + 1) & (m->cap - 1);
	return i;
}

static int32_t hmap_get(const struct hmap *m, const char *key)
{
	if (m->cap == 0)
		return NONE;
	size_t i = hmap_slot(m, key);
	return m->keys[i] != NULL ? m->vals[i] : NONE;
}

static void hmap_put(struct hmap *m, const char *key, int32_t val)
{
	if ((m->n + 1) * 2 > m->cap) {
		struct hmap g = { NULL, NULL, m->cap ? m->cap * 2 : 1024, 0 };
		g.keys = xcalloc(g.cap, sizeof(*g.keys));
		g.vals = xcalloc(g.cap, sizeof(*g.vals));
		for (size_t i = 0; i < m->cap; i++) {
			if (m->keys[i] != NULL) {
				size_t k = hmap_slot(&g, m->keys[i]);
				g.keys[k] = m->keys[i];
				g.vals[k] = m->vals[i];
				g.n++;
			}
		}
		free(m->keys);
		free(m->vals);
		*m = g;
	}
	size_t i = hmap_slot(m, key);
	if (m->keys[i] == NULL)
		m->n++;
	m->keys[i] = key;
	m->vals[i] = val;
}

static void hmap_free(struct hmap *m)
{
	free(m->keys);
	free(m->vals);
	memset(m, 0, sizeof(*m));
}

/* ---- messages ---------------------------------------------------------------------------- */

static const char *field(const struct imap_search_hit *h, const char *name, size_t *vlen)
{
	size_t pos = 0, nl = strlen(name);
	struct mime_field f;
	while (mime_header_next(h->header, h->header_len, &pos, &f)) {
		if (f.name_len == nl && strncasecmp(f.name, name, nl) == 0) {
			*vlen = f.value_len;
			return f.value;
		}
	}
	return NULL;
}

static void read_refs(struct tmsg *m, const struct imap_search_hit *h)
{
	size_t vl, pos = 0;
	struct buf id = BUF_INIT;
	const char *v = field(h, "message-id", &vl);
	if (v != NULL && mime_msgid_next(v, vl, &pos, &id))
		m->msgid = xstrndup(id.data, id.len);
	v = field(h, "references", &vl);
	pos = 0;
	/* Bounded: each id moves pos forward; only the last THREAD_REFS_MAX kept. */
	while (v != NULL && mime_msgid_next(v, vl, &pos, &id)) {
		if (m->n_refs == THREAD_REFS_MAX) {
			free(m->refs[0]);
			memmove(m->refs, m->refs + 1, (THREAD_REFS_MAX - 1) * sizeof(*m->refs));
			m->n_refs--;
		}
		if (m->refs == NULL)
			m->refs = xcalloc(THREAD_REFS_MAX, sizeof(*m->refs));
		m->refs[m->n_refs++] = xstrndup(id.data, id.len);
	}
	if (m->n_refs == 0) {
		v = field(h, "in-reply-to", &vl);
		pos = 0;
		if (v != NULL && mime_msgid_next(v, vl, &pos, &id)) {
			m->refs = xcalloc(1, sizeof(*m->refs));
			m->refs[m->n_refs++] = xstrndup(id.data, id.len);
		}
	}
	buf_free(&id);
}

static void thread_hit(void *arg, const struct imap_search_hit *h)
{
	struct thread_ctx *c = arg;
	if (c->n_msgs == c->cap_msgs) {
		c->cap_msgs = c->cap_msgs ? c->cap_msgs * 2 : 256;
		c->msgs = xreallocarray(c->msgs, c->cap_msgs, sizeof(*c->msgs));
	}
	struct tmsg *m = &c->msgs[c->n_msgs++];
	memset(m, 0, sizeof(*m));
	m->id = c->uid ? h->uid : h->seq;
	m->seq = h->seq;
	m->date = imap_sort_sent_date(h);
	size_t vl = 0;
	const char *v = field(h, "subject", &vl);
	struct buf base = BUF_INIT, folded = BUF_INIT;
	mime_base_subject(v ? v : "", vl, &base, &m->reply);
	mime_fold_str(base.data, base.len, &folded);
	m->subject = buf_steal(&folded);
	buf_free(&base);
	if (c->alg == TA_REFERENCES)
		read_refs(m, h);
}

/* ---- the tree ---------------------------------------------------------------------------- */

static int32_t node_new(struct thread_ctx *c, int32_t msg)
{
	if (c->n_nodes == c->cap_nodes) {
		c->cap_nodes = c->cap_nodes ? c->cap_nodes * 2 : 256;
		c->nodes = xreallocarray(c->nodes, c->cap_nodes, sizeof(*c->nodes));
	}
	struct tnode *n = &c->nodes[c->n_nodes];
	n->msg = msg;
	n->parent = n->first = n->last = n->prev = n->next = NONE;
	return (int32_t)c->n_nodes++;
}

static void node_unlink(struct thread_ctx *c, int32_t x)
{
	struct tnode *n = &c->nodes[x];
	if (n->parent == NONE)
		return;
	struct tnode *p = &c->nodes[n->parent];
	if (n->prev != NONE)
		c->nodes[n->prev].next = n->next;
	else
		p->first = n->next;
	if (n->next != NONE)
		c->nodes[n->next].prev = n->prev;
	else
		p->last = n->prev;
	n->parent = n->prev = n->next = NONE;
}

/* Makes x (without a parent) the last child of p. */
static void node_append(struct thread_ctx *c, int32_t x, int32_t p)
{
	struct tnode *n = &c->nodes[x], *pn = &c->nodes[p];
	n->parent = p;
	n->next = NONE;
	n->prev = pn->last;
	if (pn->last != NONE)
		c->nodes[pn->last].next = x;
	else
		pn->first = x;
	pn->last = x;
}

/* Puts x (without a parent) just before `before`, a child of p. */
static void node_insert_before(struct thread_ctx *c, int32_t x, int32_t before)
{
	struct tnode *n = &c->nodes[x], *b = &c->nodes[before];
	n->parent = b->parent;
	n->next = before;
	n->prev = b->prev;
	if (b->prev != NONE)
		c->nodes[b->prev].next = x;
	else
		c->nodes[b->parent].first = x;
	b->prev = x;
}

/* Would making p the parent of x close a loop (p is x or below x)? */
static bool would_loop(const struct thread_ctx *c, int32_t p, int32_t x)
{
	if (c->nodes[x].first == NONE)
		return p == x;   /* nothing below x: the usual case, O(1) */
	size_t steps = 0;
	for (int32_t a = p; a != NONE && steps <= c->n_nodes; a = c->nodes[a].parent, steps++) {
		if (a == x)
			return true;
	}
	return false;
}

static size_t child_count(const struct thread_ctx *c, int32_t x)
{
	size_t n = 0;
	for (int32_t k = c->nodes[x].first; k != NONE; k = c->nodes[k].next)
		n++;
	return n;
}

/* The nodes under `top` in post-order (children before parents), top last. */
static int32_t *post_order(const struct thread_ctx *c, int32_t top, size_t *n_r)
{
	int32_t *order = xcalloc(c->n_nodes, sizeof(*order));
	int32_t *stack = xcalloc(c->n_nodes, sizeof(*stack));
	size_t n = 0, sp = 0;
	/* Reverse post-order is a pre-order that visits children last to
	 * first: push, and emit in reverse at the end. */
	stack[sp++] = top;
	while (sp > 0) {
		int32_t x = stack[--sp];
		order[n++] = x;
		for (int32_t k = c->nodes[x].first; k != NONE; k = c->nodes[k].next)
			stack[sp++] = k;
	}
	free(stack);
	for (size_t i = 0; i < n / 2; i++) {
		int32_t t = order[i];
		order[i] = order[n - 1 - i];
		order[n - 1 - i] = t;
	}
	*n_r = n;
	return order;
}

/* The message a node sorts by: its own, or its first child's (dummies). */
static const struct tmsg *sort_msg(const struct thread_ctx *c, int32_t x)
{
	size_t steps = 0;
	while (c->nodes[x].msg == NONE && c->nodes[x].first != NONE && steps++ <= c->n_nodes)
		x = c->nodes[x].first;
	return c->nodes[x].msg == NONE ? NULL : &c->msgs[c->nodes[x].msg];
}

struct sort_ent {
	int32_t node;
	int64_t date;
	uint32_t seq;
};

static int ent_cmp(const void *pa, const void *pb)
{
	const struct sort_ent *a = pa, *b = pb;
	if (a->date != b->date)
		return a->date < b->date ? -1 : 1;
	return a->seq < b->seq ? -1 : a->seq > b->seq;
}

/* Sorts the children of x by sent date (RFC 5256 2.2), then sequence. */
static void sort_children(struct thread_ctx *c, int32_t x)
{
	size_t n = child_count(c, x);
	if (n < 2)
		return;
	struct sort_ent *e = xcalloc(n, sizeof(*e));
	size_t i = 0;
	for (int32_t k = c->nodes[x].first; k != NONE; k = c->nodes[k].next, i++) {
		const struct tmsg *m = sort_msg(c, k);
		e[i].node = k;
		e[i].date = m ? m->date : INT64_MAX;
		e[i].seq = m ? m->seq : UINT32_MAX;
	}
	qsort(e, n, sizeof(*e), ent_cmp);
	c->nodes[x].first = c->nodes[x].last = NONE;
	for (i = 0; i < n; i++) {
		c->nodes[e[i].node].parent = NONE;
		node_append(c, e[i].node, x);
	}
	free(e);
}

static void sort_all(struct thread_ctx *c)
{
	size_t n;
	int32_t *order = post_order(c, ROOT, &n);
	for (size_t i = 0; i < n; i++)
		sort_children(c, order[i]);
	free(order);
}

/* ---- REFERENCES ------------------------------------------------------------------------- */

static int32_t id_node(struct thread_ctx *c, struct hmap *ids, const char *id)
{
	int32_t x = hmap_get(ids, id);
	if (x == NONE) {
		x = node_new(c, NONE);
		hmap_put(ids, id, x);
	}
	return x;
}

/* Step 1: containers and links. */
static void link_messages(struct thread_ctx *c, struct hmap *ids)
{
	for (size_t i = 0; i < c->n_msgs; i++) {
		struct tmsg *m = &c->msgs[i];
		int32_t self = m->msgid ? hmap_get(ids, m->msgid) : NONE;
		if (self != NONE && c->nodes[self].msg == NONE) {
			c->nodes[self].msg = (int32_t)i;
		} else {
			/* No id, or a duplicate: a container of its own. */
			bool fresh = m->msgid != NULL && self == NONE;
			self = node_new(c, (int32_t)i);
			if (fresh)
				hmap_put(ids, m->msgid, self);
		}
		/* 1.A: each reference the parent of the next, where free. */
		for (size_t r = 0; r + 1 < m->n_refs; r++) {
			int32_t p = id_node(c, ids, m->refs[r]);
			int32_t k = id_node(c, ids, m->refs[r + 1]);
			if (c->nodes[k].parent == NONE && !would_loop(c, p, k))
				node_append(c, k, p);
		}
		/* 1.B: the last reference is the parent. */
		int32_t p = m->n_refs > 0 ? id_node(c, ids, m->refs[m->n_refs - 1]) : NONE;
		if (c->nodes[self].parent != p) {
			node_unlink(c, self);
			if (p != NONE && !would_loop(c, p, self))
				node_append(c, self, p);
		}
	}
}

/* Step 3: dummies pruned, children first. */
static void prune(struct thread_ctx *c)
{
	size_t n;
	int32_t *order = post_order(c, ROOT, &n);
	for (size_t i = 0; i < n; i++) {
		int32_t x = order[i];
		if (x == ROOT || c->nodes[x].msg != NONE)
			continue;
		int32_t p = c->nodes[x].parent;
		if (c->nodes[x].first == NONE) {
			node_unlink(c, x);
			continue;
		}
		if (p == ROOT && child_count(c, x) > 1)
			continue;
		/* Promote the children to x's place. */
		while (c->nodes[x].first != NONE) {
			int32_t k = c->nodes[x].first;
			node_unlink(c, k);
			node_insert_before(c, k, x);
		}
		node_unlink(c, x);
	}
	free(order);
}

static const struct tmsg *thread_subject_msg(const struct thread_ctx *c, int32_t x)
{
	if (c->nodes[x].msg != NONE)
		return &c->msgs[c->nodes[x].msg];
	int32_t k = c->nodes[x].first;
	return k != NONE && c->nodes[k].msg != NONE ? &c->msgs[c->nodes[k].msg] : NULL;
}

static bool is_dummy(const struct thread_ctx *c, int32_t x)
{
	return c->nodes[x].msg == NONE;
}

static bool is_reply(const struct thread_ctx *c, int32_t x)
{
	return !is_dummy(c, x) && c->msgs[c->nodes[x].msg].reply;
}

/* Step 5: top-level threads with one base subject gathered. */
static void gather_subjects(struct thread_ctx *c)
{
	size_t n = child_count(c, ROOT);
	int32_t *top = xcalloc(n ? n : 1, sizeof(*top));
	size_t i = 0;
	for (int32_t k = c->nodes[ROOT].first; k != NONE; k = c->nodes[k].next)
		top[i++] = k;
	struct hmap table = { NULL, NULL, 0, 0 };
	/* 5.B: one message per subject. */
	for (i = 0; i < n; i++) {
		const struct tmsg *sm = thread_subject_msg(c, top[i]);
		if (sm == NULL || sm->subject[0] == '\0')
			continue;
		int32_t t = hmap_get(&table, sm->subject);
		if (t == NONE)
			hmap_put(&table, sm->subject, top[i]);
		else if (!is_dummy(c, t) && (is_dummy(c, top[i]) || (is_reply(c, t) && !is_reply(c, top[i]))))
			hmap_put(&table, sm->subject, top[i]);
	}
	/* 5.C: merges. */
	for (i = 0; i < n; i++) {
		int32_t x = top[i];
		if (c->nodes[x].parent != ROOT)
			continue;   /* merged already */
		const struct tmsg *sm = thread_subject_msg(c, x);
		if (sm == NULL || sm->subject[0] == '\0')
			continue;
		int32_t t = hmap_get(&table, sm->subject);
		if (t == x || t == NONE)
			continue;
		if (is_dummy(c, t) && is_dummy(c, x)) {
			while (c->nodes[x].first != NONE) {
				int32_t k = c->nodes[x].first;
				node_unlink(c, k);
				node_append(c, k, t);
			}
			node_unlink(c, x);
		} else if (is_dummy(c, t) || (is_reply(c, x) && !is_reply(c, t))) {
			node_unlink(c, x);
			node_append(c, x, t);
		} else {
			int32_t d = node_new(c, NONE);
			node_insert_before(c, d, t);
			node_unlink(c, t);
			node_unlink(c, x);
			node_append(c, t, d);
			node_append(c, x, d);
			hmap_put(&table, sm->subject, d);
		}
	}
	hmap_free(&table);
	free(top);
}

static void thread_references(struct thread_ctx *c)
{
	struct hmap ids = { NULL, NULL, 0, 0 };
	node_new(c, NONE);   /* ROOT */
	link_messages(c, &ids);
	hmap_free(&ids);
	for (size_t x = 1; x < c->n_nodes; x++) {   /* step 2 */
		if (c->nodes[x].parent == NONE)
			node_append(c, (int32_t)x, ROOT);
	}
	prune(c);
	for (int32_t k = c->nodes[ROOT].first; k != NONE; k = c->nodes[k].next) {   /* step 4 */
		if (is_dummy(c, k))
			sort_children(c, k);
	}
	sort_children(c, ROOT);
	gather_subjects(c);
	sort_all(c);   /* step 6 */
}

/* ---- ORDEREDSUBJECT ---------------------------------------------------------------------- */

static int subject_cmp(const void *pa, const void *pb)
{
	const struct tmsg *a = pa, *b = pb;
	int r = strcmp(a->subject, b->subject);
	if (r != 0)
		return r;
	if (a->date != b->date)
		return a->date < b->date ? -1 : 1;
	return a->seq < b->seq ? -1 : a->seq > b->seq;
}

static void thread_orderedsubject(struct thread_ctx *c)
{
	if (c->n_msgs > 1)
		qsort(c->msgs, c->n_msgs, sizeof(*c->msgs), subject_cmp);
	node_new(c, NONE);   /* ROOT */
	int32_t head = NONE;
	for (size_t i = 0; i < c->n_msgs; i++) {
		int32_t x = node_new(c, (int32_t)i);
		if (head != NONE && strcmp(c->msgs[c->nodes[head].msg].subject, c->msgs[i].subject) == 0) {
			node_append(c, x, head);
		} else {
			node_append(c, x, ROOT);
			head = x;
		}
	}
	sort_children(c, ROOT);
}

/* ---- the response ---------------------------------------------------------------------- */

/* thread-list per RFC 5256 section 4, with an explicit stack: a node
 * with one child continues its list ("1 2 3"), one with several opens a
 * list per child ("1 (2)(3 4)"); a top-level dummy has no number. */
static void format_threads(struct thread_ctx *c)
{
	enum { OPEN = -2, CLOSE = -3 };
	int32_t *stack = xcalloc(c->n_nodes * 3 + 3, sizeof(*stack));
	size_t sp = 0;
	buf_append_str(&c->out, "THREAD");
	size_t n_top = child_count(c, ROOT);
	if (n_top > 0)
		buf_append_char(&c->out, ' ');
	/* Top-level threads, pushed last to first. */
	for (int32_t k = c->nodes[ROOT].last; k != NONE; k = c->nodes[k].prev) {
		stack[sp++] = CLOSE;
		stack[sp++] = k;
		stack[sp++] = OPEN;
	}
	while (sp > 0) {
		int32_t x = stack[--sp];
		if (x == OPEN || x == CLOSE) {
			buf_append_char(&c->out, x == OPEN ? '(' : ')');
			continue;
		}
		const struct tnode *n = &c->nodes[x];
		if (n->msg != NONE)
			buf_printf(&c->out, "%u", c->msgs[n->msg].id);
		size_t kids = child_count(c, x);
		if (kids == 0)
			continue;
		if (n->msg != NONE)
			buf_append_char(&c->out, ' ');
		if (kids == 1) {
			stack[sp++] = n->first;
			continue;
		}
		for (int32_t k = n->last; k != NONE; k = c->nodes[k].prev) {
			stack[sp++] = CLOSE;
			stack[sp++] = k;
			stack[sp++] = OPEN;
		}
	}
	free(stack);
}

static void thread_finish(void *arg)
{
	struct thread_ctx *c = arg;
	if (c->alg == TA_REFERENCES)
		thread_references(c);
	else
		thread_orderedsubject(c);
	format_threads(c);
}

static void thread_reply(struct imap_session *s, void *arg, bool uid)
{
	(void)uid;
	struct thread_ctx *c = arg;
	if (c->out.len == 0)
		buf_append_str(&c->out, "THREAD");   /* finish did not run: nothing matched */
	imap_session_untagged(s, "%s", c->out.data);
}

static void thread_free(void *arg)
{
	struct thread_ctx *c = arg;
	for (size_t i = 0; i < c->n_msgs; i++) {
		struct tmsg *m = &c->msgs[i];
		free(m->msgid);
		for (size_t r = 0; r < m->n_refs; r++)
			free(m->refs[r]);
		free(m->refs);
		free(m->subject);
	}
	free(c->msgs);
	free(c->nodes);
	buf_free(&c->out);
	free(c);
}

void imap_thread_run(struct imap_session *s, struct imap_cmd *cmd)
{
	if (cmd->n_args < 3 || cmd->args[0].type != IMAP_ARG_ATOM) {
		imap_session_bad(s, cmd->tag, "THREAD needs algorithm charset search-keys");
		return;
	}
	enum thread_alg alg;
	if (str_ieq(cmd->args[0].str, "REFERENCES")) {
		alg = TA_REFERENCES;
	} else if (str_ieq(cmd->args[0].str, "ORDEREDSUBJECT")) {
		alg = TA_ORDEREDSUBJECT;
	} else {
		imap_session_bad(s, cmd->tag, "Unknown threading algorithm");
		return;
	}
	struct thread_ctx *c = xcalloc(1, sizeof(*c));
	c->alg = alg;
	c->uid = cmd->uid;
	static const struct imap_search_user user = {
		"THREAD", true, thread_hit, thread_finish, thread_reply, thread_free,
	};
	imap_search_submit_for(s, cmd, cmd->args + 1, cmd->n_args - 1, &user, c);
}
