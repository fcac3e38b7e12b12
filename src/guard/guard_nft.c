/*
 * guard_nft.c - the kernel mirror of the ban list: every ban, with the time
 * it has left, is also an element of an nftables set whose drop rule stops
 * the banned source's packets before any process sees them.
 *
 * Contract: see guard.h (guard_nft_start) and docs/GUARD.md.  The ban
 * table in user space stays the truth: the kernel set is a cache that may
 * lag by a few milliseconds, lose elements to an operator's `nft flush
 * ruleset`, or be missing altogether (no permission, no nft) - user space
 * refuses banned sources all the same.  A full re-sync (the table and its
 * sets recreated, every ban in force added) runs at start, on SIGHUP
 * (guard_set_settings), when the run-time allowlist grows, when the queue
 * overflowed, and 30 s after a failed update.
 *
 * Threads: the ban code (any thread, holding a ban shard lock) calls
 * guard_nft_note, which only appends to a bounded queue under the mirror's
 * own mutex and signals; it never blocks on nft.  When the queue is full
 * the change is dropped and a re-sync is requested instead (the changes
 * coalesce into one re-sync).  One dedicated thread takes the queue and
 * sends requests to the nft helper (guard_nft_helper.c), whose nft runs
 * are bounded in time.  Lock order: ban shard -> mirror mutex; the thread
 * never holds the mirror mutex while it reads the ban table.
 *
 * Script form (guard_nft_script): an element is renewed with "add (1 s
 * timeout) / delete / add (its timeout)" in one nft transaction, because a
 * plain add leaves an existing element's timeout unchanged and a delete of
 * an absent element fails the whole transaction.
 */
#include "guard_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metrics.h"

#define NFT_QUEUE_CAP 4096            /* changes waiting for the thread */
#define NFT_RETRY_MS 30000            /* re-sync after a failed update, at the earliest */
#define NFT_ERROR_LOG_MS 60000        /* one error line a minute at most */

struct nft_item {
	struct guard_addr a;
	uint64_t expires_ms;              /* monotonic; 0: the ban was lifted */
};

struct guard_nft {
	struct guard *g;
	guard_nft_send_fn *send;
	void *send_arg;
	struct guard_nft_helper helper;   /* owned when helper.fd >= 0 */
	char describe[256];               /* "table inet strata, sets ban4 and ban6" */
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t wake, idle;
	struct nft_item *q;               /* ring of cap */
	size_t cap, head, n;
	bool resync, stop, delete_table, busy;
	uint64_t retry_at_ms;             /* a requested re-sync waits until then */
	char reason[256];                 /* why the mirror is not active (under mu) */
	_Atomic int state;                /* enum guard_nft_state */
	_Atomic uint64_t updates, errors;
	bool warned;                      /* thread only */
	uint64_t error_logged_ms;         /* thread only */
};

/* ---- names and scripts --------------------------------------------------------- */

static bool nft_ident_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n >= GUARD_NFT_NAME_MAX || !((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z')))
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'))
			return false;
	}
	return true;
}

static bool nft_add_port(struct guard_nft_names *out, uint64_t port, char **error_r)
{
	if (port == 0 || port > 65535) {
		*error_r = xasprintf("guard.nft.ports: %llu is not a TCP port", (unsigned long long)port);
		return false;
	}
	for (size_t i = 0; i < out->n_ports; i++) {
		if (out->ports[i] == port)
			return true;
	}
	if (out->n_ports == GUARD_NFT_MAX_PORTS) {
		*error_r = xasprintf("guard.nft.ports: more than %d ports", GUARD_NFT_MAX_PORTS);
		return false;
	}
	out->ports[out->n_ports++] = (uint16_t)port;
	return true;
}

static bool nft_parse_ports(const char *list, struct guard_nft_names *out, char **error_r)
{
	char *copy = xstrdup(list), *save = NULL;
	bool ok = true;
	for (char *tok = strtok_r(copy, ",", &save); tok != NULL && ok; tok = strtok_r(NULL, ",", &save)) {
		char *item = str_trim(tok);
		uint64_t port = 0;
		if (*item == '\0')
			continue;
		if (!str_parse_u64(item, &port)) {
			*error_r = xasprintf("guard.nft.ports: '%s' is not a port number", item);
			ok = false;
		} else {
			ok = nft_add_port(out, port, error_r);
		}
	}
	free(copy);
	return ok;
}

bool guard_nft_names_parse(const struct settings *s, const uint16_t *listener_ports, size_t n_listener_ports,
			   struct guard_nft_names *out, char **error_r)
{
	memset(out, 0, sizeof(*out));
	const char *table = s->guard_nft_table;
	if (strncmp(table, "inet ", 5) == 0)
		table += 5;
	while (*table == ' ')
		table++;
	if (!nft_ident_ok(table)) {
		*error_r = xasprintf("guard.nft.table: '%s' is not 'inet NAME' (NAME: a letter, then letters, "
				     "digits or '_', shorter than %d)", s->guard_nft_table, GUARD_NFT_NAME_MAX);
		return false;
	}
	if (!nft_ident_ok(s->guard_nft_set4) || !nft_ident_ok(s->guard_nft_set6) ||
	    strcmp(s->guard_nft_set4, s->guard_nft_set6) == 0) {
		*error_r = xasprintf("guard.nft.set4 / guard.nft.set6: '%s' and '%s' must be two different names "
				     "(a letter, then letters, digits or '_')", s->guard_nft_set4, s->guard_nft_set6);
		return false;
	}
	snprintf(out->table, sizeof(out->table), "%s", table);
	snprintf(out->set4, sizeof(out->set4), "%s", s->guard_nft_set4);
	snprintf(out->set6, sizeof(out->set6), "%s", s->guard_nft_set6);
	out->set_size = (size_t)s->guard_ban_entries;
	if (!nft_parse_ports(s->guard_nft_ports, out, error_r))
		return false;
	bool from_listeners = out->n_ports == 0;
	for (size_t i = 0; from_listeners && i < n_listener_ports; i++) {
		if (!nft_add_port(out, listener_ports[i], error_r))
			return false;
	}
	if (out->n_ports == 0) {
		*error_r = xstrdup("guard.nft: no port for the drop rule (guard.nft.ports is empty and so are the listeners)");
		return false;
	}
	return true;
}

static void nft_elem_text(const struct guard_nft_elem *e, char *out, size_t outlen)
{
	struct guard_addr a = { .family = e->family };
	memcpy(a.b, e->b, sizeof(a.b));
	guard_addr_format(&a, out, outlen);
}

/* True when a later element of the request names the same address (only
 * the last one counts: nft refuses an element twice in one statement). */
static bool nft_elem_superseded(const struct guard_nft_elem *e, size_t i, size_t n)
{
	for (size_t j = i + 1; j < n; j++) {
		if (e[j].family == e[i].family && memcmp(e[j].b, e[i].b, sizeof(e[i].b)) == 0)
			return true;
	}
	return false;
}

/* "VERB element inet T S { a[ timeout Ns], b... }" for the elements of one
 * family; timeout_s: 0 none, UINT32_MAX each element's own. */
static void nft_statement(const struct guard_nft_names *nm, const char *verb, int family,
			  const struct guard_nft_elem *e, size_t n, uint32_t timeout_s, struct buf *out)
{
	bool any = false;
	for (size_t i = 0; i < n; i++) {
		if (e[i].family != family || nft_elem_superseded(e, i, n))
			continue;
		char text[64];
		nft_elem_text(&e[i], text, sizeof(text));
		if (!any)
			buf_printf(out, "%s element inet %s %s { ", verb, nm->table, family == 4 ? nm->set4 : nm->set6);
		buf_printf(out, "%s%s", any ? ", " : "", text);
		uint32_t t = timeout_s == UINT32_MAX ? e[i].timeout_s : timeout_s;
		if (t > 0)
			buf_printf(out, " timeout %us", (unsigned)t);
		any = true;
	}
	if (any)
		buf_printf(out, " }\n");
}

static void nft_setup_script(const struct guard_nft_names *nm, struct buf *out)
{
	struct buf ports = BUF_INIT;
	for (size_t i = 0; i < nm->n_ports; i++)
		buf_printf(&ports, "%s%u", i ? ", " : "", (unsigned)nm->ports[i]);
	/* add + delete: idempotent whether or not the table exists; then the
	 * whole table again, in the same transaction. */
	buf_printf(out, "add table inet %s\ndelete table inet %s\n", nm->table, nm->table);
	buf_printf(out,
		   "table inet %s {\n"
		   "\tset %s { type ipv4_addr; flags timeout; size %zu; }\n"
		   "\tset %s { type ipv6_addr; flags timeout; size %zu; }\n"
		   "\tchain input {\n"
		   "\t\ttype filter hook input priority filter - 10; policy accept;\n"
		   "\t\tiif \"lo\" accept\n"
		   "\t\tip saddr @%s tcp dport { %s } counter drop\n"
		   "\t\tip6 saddr @%s tcp dport { %s } counter drop\n"
		   "\t}\n"
		   "}\n",
		   nm->table, nm->set4, nm->set_size, nm->set6, nm->set_size, nm->set4, ports.data, nm->set6,
		   ports.data);
	buf_free(&ports);
}

void guard_nft_script(const struct guard_nft_names *nm, enum guard_nft_op op, const struct guard_nft_elem *e,
		      size_t n, struct buf *out)
{
	switch (op) {
	case GUARD_NFT_SETUP:
		nft_setup_script(nm, out);
		return;
	case GUARD_NFT_DESTROY:
		buf_printf(out, "add table inet %s\ndelete table inet %s\n", nm->table, nm->table);
		return;
	case GUARD_NFT_ADD:
	case GUARD_NFT_DEL:
		for (int fam = 4; fam <= 6; fam += 2) {
			nft_statement(nm, "add", fam, e, n, 1, out);
			nft_statement(nm, "delete", fam, e, n, 0, out);
			if (op == GUARD_NFT_ADD)
				nft_statement(nm, "add", fam, e, n, UINT32_MAX, out);
		}
		return;
	}
}

/* ---- the queue ----------------------------------------------------------------------- */

void guard_nft_note(struct guard *g, const struct guard_addr *a, uint64_t expires_ms)
{
	struct guard_nft *m = atomic_load(&g->nft);
	if (m == NULL || atomic_load(&m->state) == GUARD_NFT_INACTIVE)
		return;   /* not mirrored: a re-sync brings the set up to date if it comes back */
	pthread_mutex_lock(&m->mu);
	if (m->n == m->cap) {
		m->resync = true;   /* coalesced: the re-sync reads the table as it is then */
	} else {
		m->q[(m->head + m->n) % m->cap] = (struct nft_item){ *a, expires_ms };
		m->n++;
	}
	pthread_cond_signal(&m->wake);
	pthread_mutex_unlock(&m->mu);
}

void guard_nft_resync(struct guard *g)
{
	struct guard_nft *m = atomic_load(&g->nft);
	if (m == NULL)
		return;
	pthread_mutex_lock(&m->mu);
	m->resync = true;
	m->retry_at_ms = 0;
	pthread_cond_signal(&m->wake);
	pthread_mutex_unlock(&m->mu);
}

/* ---- the thread ------------------------------------------------------------------------ */

static void nft_count(struct guard_nft *m, bool ok, size_t elements)
{
	if (ok) {
		atomic_fetch_add(&m->updates, elements > 0 ? elements : 1);
		metric_add(M_GUARD_NFT_UPDATES, elements > 0 ? elements : 1);
	} else {
		atomic_fetch_add(&m->errors, 1);
		metric_inc(M_GUARD_NFT_ERRORS);
	}
}

/* Sends one request; on failure logs (at most once a minute) and asks for
 * a re-sync after NFT_RETRY_MS. */
static bool nft_send(struct guard_nft *m, enum guard_nft_op op, const struct guard_nft_elem *e, size_t n)
{
	char *err = NULL;
	bool ok = m->send(m->send_arg, op, e, n, &err);
	nft_count(m, ok, n);
	if (!ok && op != GUARD_NFT_SETUP) {
		uint64_t now = time_mono_ms();
		if (m->error_logged_ms == 0 || now - m->error_logged_ms >= NFT_ERROR_LOG_MS) {
			m->error_logged_ms = now;
			log_warn("guard: nftables update failed (%s); the kernel set is re-synced in %d s, bans stay "
				 "in force in user space", err ? err : "unknown error", NFT_RETRY_MS / 1000);
		}
		pthread_mutex_lock(&m->mu);
		m->resync = true;
		m->retry_at_ms = now + NFT_RETRY_MS;
		pthread_mutex_unlock(&m->mu);
	}
	if (!ok && op == GUARD_NFT_SETUP) {
		pthread_mutex_lock(&m->mu);
		snprintf(m->reason, sizeof(m->reason), "%s", err ? err : "unknown error");
		pthread_mutex_unlock(&m->mu);
	}
	free(err);
	return ok;
}

/* The element for a ban until expires_ms, false when it is not to be in
 * the kernel (expired, or allowlisted: the allowlist beats bans). */
static bool nft_elem_for(struct guard *g, const struct guard_addr *a, uint64_t expires_ms, uint64_t now,
			 struct guard_nft_elem *e)
{
	if (expires_ms <= now || guard_is_allowed(g, a))
		return false;
	uint64_t left = (expires_ms - now + 999) / 1000;
	memset(e, 0, sizeof(*e));
	e->family = a->family;
	memcpy(e->b, a->b, sizeof(e->b));
	e->timeout_s = (uint32_t)(left > GUARD_NFT_MAX_TIMEOUT_S ? GUARD_NFT_MAX_TIMEOUT_S : left);
	return true;
}

/* Applies queued changes in order: each run of additions or removals is one
 * request (at most GUARD_NFT_BATCH elements). */
static void nft_apply(struct guard_nft *m, const struct nft_item *items, size_t n, struct guard_nft_elem *elems)
{
	uint64_t now = time_mono_ms();
	size_t k = 0;
	enum guard_nft_op run = GUARD_NFT_ADD;
	for (size_t i = 0; i <= n; i++) {
		struct guard_nft_elem e;
		enum guard_nft_op op = GUARD_NFT_DEL;
		if (i < n && nft_elem_for(m->g, &items[i].a, items[i].expires_ms, now, &e))
			op = GUARD_NFT_ADD;
		if (k > 0 && (i == n || op != run || k == GUARD_NFT_BATCH)) {
			if (!nft_send(m, run, elems, k))
				return;   /* the re-sync will put things right */
			k = 0;
		}
		if (i == n)
			break;
		if (op == GUARD_NFT_DEL) {
			memset(&e, 0, sizeof(e));
			e.family = items[i].a.family;
			memcpy(e.b, items[i].a.b, sizeof(e.b));
		}
		run = op;
		elems[k++] = e;
	}
}

struct nft_collect {
	struct guard *g;
	uint64_t now;
	struct guard_nft_elem *e;
	size_t n, cap;
};

static void nft_collect_cb(void *arg, const struct guard_addr *a, uint64_t expires_ms, unsigned strikes)
{
	(void)strikes;
	struct nft_collect *x = arg;
	struct guard_nft_elem e;
	if (!nft_elem_for(x->g, a, expires_ms, x->now, &e))
		return;
	if (x->n == x->cap) {
		x->cap = x->cap ? x->cap * 2 : 256;
		x->e = xreallocarray(x->e, x->cap, sizeof(*x->e));
	}
	x->e[x->n++] = e;
}

static void nft_set_state(struct guard_nft *m, enum guard_nft_state st)
{
	int old = atomic_exchange(&m->state, (int)st);
	if (st == GUARD_NFT_ACTIVE && old != GUARD_NFT_ACTIVE)
		log_info("guard: bans are mirrored into nftables (%s)", m->describe);
	if (st == GUARD_NFT_INACTIVE && !m->warned) {
		m->warned = true;
		pthread_mutex_lock(&m->mu);
		log_warn("guard: cannot mirror bans into nftables (%s): %s; bans are enforced in user space only "
			 "(the kernel mirror needs root or CAP_NET_ADMIN at start, and the nftables package)",
			 m->describe, m->reason);
		pthread_mutex_unlock(&m->mu);
	}
}

/* The table recreated, then every ban in force added. */
static void nft_resync(struct guard_nft *m)
{
	if (!nft_send(m, GUARD_NFT_SETUP, NULL, 0)) {
		nft_set_state(m, GUARD_NFT_INACTIVE);
		return;
	}
	nft_set_state(m, GUARD_NFT_ACTIVE);
	struct nft_collect x = { m->g, time_mono_ms(), NULL, 0, 0 };
	guard_ban_foreach(m->g, x.now, nft_collect_cb, &x);
	for (size_t off = 0; off < x.n; off += GUARD_NFT_BATCH) {
		size_t k = x.n - off < GUARD_NFT_BATCH ? x.n - off : GUARD_NFT_BATCH;
		if (!nft_send(m, GUARD_NFT_ADD, x.e + off, k))
			break;
	}
	free(x.e);
}

/* Under mu: a change is waiting, or a re-sync is due. */
static bool nft_work_due(const struct guard_nft *m, uint64_t now)
{
	return m->n > 0 || (m->resync && now >= m->retry_at_ms);
}

static void nft_wait(struct guard_nft *m)
{
	if (m->resync) {
		uint64_t now = time_mono_ms(), wait = m->retry_at_ms > now ? m->retry_at_ms - now : 0;
		struct timespec ts;
		time_mono_deadline(wait, &ts);   /* the condition variable's clock */
		pthread_cond_timedwait(&m->wake, &m->mu, &ts);
	} else {
		pthread_cond_wait(&m->wake, &m->mu);
	}
}

static void *nft_thread(void *arg)
{
	struct guard_nft *m = arg;
	struct nft_item *items = xcalloc(m->cap, sizeof(*items));
	struct guard_nft_elem *elems = xcalloc(GUARD_NFT_BATCH, sizeof(*elems));
	pthread_mutex_lock(&m->mu);
	while (!m->stop) {
		if (!nft_work_due(m, time_mono_ms())) {
			nft_wait(m);
			continue;
		}
		bool resync = m->resync && time_mono_ms() >= m->retry_at_ms;
		if (resync)
			m->resync = false;
		size_t n = 0;
		for (; m->n > 0; m->n--, m->head = (m->head + 1) % m->cap)
			items[n++] = m->q[m->head];
		m->busy = true;
		pthread_mutex_unlock(&m->mu);
		if (resync)
			nft_resync(m);   /* reads the ban table after the queued changes were made */
		else if (atomic_load(&m->state) == GUARD_NFT_ACTIVE)
			nft_apply(m, items, n, elems);
		pthread_mutex_lock(&m->mu);
		m->busy = false;
		pthread_cond_broadcast(&m->idle);
	}
	bool destroy = m->delete_table && atomic_load(&m->state) == GUARD_NFT_ACTIVE;
	pthread_mutex_unlock(&m->mu);
	if (destroy && nft_send(m, GUARD_NFT_DESTROY, NULL, 0))
		log_info("guard: nftables table removed (%s)", m->describe);
	free(elems);
	free(items);
	return NULL;
}

void guard_nft_wait_idle(struct guard *g)
{
	struct guard_nft *m = atomic_load(&g->nft);
	if (m == NULL)
		return;
	pthread_mutex_lock(&m->mu);
	while (m->busy || nft_work_due(m, time_mono_ms()))
		pthread_cond_wait(&m->idle, &m->mu);
	pthread_mutex_unlock(&m->mu);
}

/* ---- life cycle ------------------------------------------------------------------------ */

static struct guard_nft *nft_create(struct guard *g, guard_nft_send_fn *send, void *arg, size_t queue_cap,
				    const char *describe)
{
	if (atomic_load(&g->nft) != NULL)
		panic("guard: the nftables mirror is started twice");
	struct guard_nft *m = xcalloc(1, sizeof(*m));
	m->g = g;
	m->send = send;
	m->send_arg = arg;
	m->helper.fd = -1;
	m->helper.pid = -1;
	snprintf(m->describe, sizeof(m->describe), "%s", describe);
	m->cap = queue_cap > 0 ? queue_cap : NFT_QUEUE_CAP;
	m->q = xcalloc(m->cap, sizeof(*m->q));
	m->resync = true;   /* the first thing the thread does */
	snprintf(m->reason, sizeof(m->reason), "starting");
	atomic_init(&m->state, GUARD_NFT_STARTING);
	atomic_init(&m->updates, 0);
	atomic_init(&m->errors, 0);
	pthread_condattr_t ca;
	if (pthread_condattr_init(&ca) != 0 || pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0 ||
	    pthread_mutex_init(&m->mu, NULL) != 0 || pthread_cond_init(&m->wake, &ca) != 0 ||
	    pthread_cond_init(&m->idle, NULL) != 0)
		panic("guard: cannot initialise the nftables mirror's locks");
	pthread_condattr_destroy(&ca);
	return m;
}

static void nft_launch(struct guard *g, struct guard_nft *m)
{
	atomic_store(&g->nft, m);
	int rc = pthread_create(&m->thread, NULL, nft_thread, m);
	if (rc != 0)
		panic("guard: cannot start the nftables thread: %s", strerror(rc));
}

void guard_nft_attach(struct guard *g, guard_nft_send_fn *send, void *arg, size_t queue_cap, const char *describe)
{
	nft_launch(g, nft_create(g, send, arg, queue_cap, describe));
}

static bool nft_helper_send(void *arg, enum guard_nft_op op, const struct guard_nft_elem *e, size_t n,
			    char **error_r)
{
	struct guard_nft *m = arg;
	return guard_nft_helper_call(&m->helper, op, e, n, error_r);
}

void guard_nft_start(struct guard *g, struct guard_nft_helper *h)
{
	if (h->fd < 0)
		return;
	char describe[256];
	snprintf(describe, sizeof(describe), "table inet %s, sets %s and %s", h->names.table, h->names.set4,
		 h->names.set6);
	struct guard_nft *m = nft_create(g, nft_helper_send, NULL, 0, describe);
	m->send_arg = m;
	m->helper = *h;          /* taken over */
	h->fd = -1;
	h->pid = -1;
	nft_launch(g, m);
}

void guard_nft_stop(struct guard *g, bool delete_table)
{
	struct guard_nft *m = atomic_load(&g->nft);
	if (m == NULL)
		return;
	pthread_mutex_lock(&m->mu);
	m->stop = true;
	m->delete_table = delete_table;
	pthread_cond_signal(&m->wake);
	pthread_mutex_unlock(&m->mu);
	pthread_join(m->thread, NULL);
	atomic_store(&g->nft, NULL);
	guard_nft_helper_stop(&m->helper);
	pthread_cond_destroy(&m->wake);
	pthread_cond_destroy(&m->idle);
	pthread_mutex_destroy(&m->mu);
	free(m->q);
	free(m);
}

enum guard_nft_state guard_nft_status(struct guard *g, struct guard_nft_report *out)
{
	struct guard_nft *m = atomic_load(&g->nft);
	memset(out, 0, sizeof(*out));
	if (m == NULL) {
		out->state = GUARD_NFT_OFF;
		return out->state;
	}
	out->state = (enum guard_nft_state)atomic_load(&m->state);
	out->updates = atomic_load(&m->updates);
	out->errors = atomic_load(&m->errors);
	snprintf(out->describe, sizeof(out->describe), "%s", m->describe);
	pthread_mutex_lock(&m->mu);
	snprintf(out->reason, sizeof(out->reason), "%s", m->reason);
	pthread_mutex_unlock(&m->mu);
	return out->state;
}

const char *guard_nft_state_name(enum guard_nft_state st)
{
	switch (st) {
	case GUARD_NFT_OFF: return "off";
	case GUARD_NFT_STARTING: return "starting";
	case GUARD_NFT_ACTIVE: return "active";
	case GUARD_NFT_INACTIVE: return "inactive";
	}
	return "unknown";
}
