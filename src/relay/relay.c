/*
 * relay.c - the relay's threads: a scheduler that turns due queue rows
 * into delivery jobs, and relay.threads delivery threads that run them and
 * record the results (see relay.h for the life of a row).
 *
 * Owns: struct relay, the job list, the set of rows in flight (queued or
 * being delivered: a row is in at most one job), the per-destination job
 * counts, back-off and expiry, the per-attempt log lines and the relay
 * metrics.
 *
 * Scheduling: the scheduler wakes on relay_wake (the queue committed new
 * rows), when a job finishes, and at least every RELAY_POLL_MS (so a
 * `strata queue flush` or delete by another process is seen within that).
 * It reads due rows, soonest first, RELAY_SCAN_MAX a page, skips those in
 * flight, and groups the rest by (message, recipient domain), at most
 * RELAY_MAX_RCPTS recipients a job.  A new job is made only while fewer
 * than two per delivery thread wait, and while its domain has fewer than
 * relay.destination_concurrency jobs: the rows left over are taken at a
 * later pass.  While jobs can still be made it reads further pages (up to
 * RELAY_SCAN_PAGES), so rows held back by one busy domain do not block
 * the others.
 *
 * Results (apply_results): sent rows are removed; deferred rows get
 * attempts + 1 and next_attempt = now + min(retry_min * 2^attempts,
 * retry_max), unless the row is older than relay.max_lifetime: then it
 * bounces like a 5xx.  Bounced rows produce one DSN per job (message) for
 * the sender (relay_bounce.c; none for the null sender) and are removed
 * once it is stored.  If the DSN cannot be stored for a temporary reason
 * the rows are deferred and the whole attempt is made again later, until
 * relay.max_lifetime; a DSN that cannot be stored for good (the sender is
 * not local, its mailbox is permanently over quota) or past the lifetime
 * is given up, logged at error level, and the rows removed.  Rows
 * of an interrupted delivery (relay_stop) are left untouched: still due.
 *
 * One log line per recipient and attempt, like Postfix's:
 *   <queue id>: to=<rcpt>, relay=host[ip]:port, delay=S, tries=N, dsn=X.Y.Z,
 *   status=sent|deferred|bounced (reply)
 *
 * Locking: relay.mu guards the job list, the in-flight set, the
 * destination counts and `wake`; it is never held across I/O or a store
 * call.  Each thread has its own store handle (and the delivery threads a
 * reader, for bounces, and a c-ares channel).
 */
#include "relay_int.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "metrics.h"

#define RELAY_POLL_MS 1000
#define RELAY_SCAN_MAX 1000
#define RELAY_SCAN_PAGES 10            /* pages read per pass while jobs can still be made */
#define RELAY_JOBS_PER_THREAD 2
#define RELAY_SCAN_CHUNK (64u * 1024)

/* ---- the set of rows in flight ----------------------------------------------
 * Open addressing with linear probing over row ids (> 0; 0 = empty slot),
 * deletion by backward shift, so no tombstones accumulate. */
struct idset {
	int64_t *k;
	size_t cap, n;                    /* cap: a power of two */
};

static size_t idset_slot(const struct idset *s, int64_t v)
{
	uint64_t x = (uint64_t)v * 0x9E3779B97F4A7C15ull;
	return (size_t)(x >> 20) & (s->cap - 1);
}

static bool idset_has(const struct idset *s, int64_t v)
{
	if (s->cap == 0)
		return false;
	for (size_t i = idset_slot(s, v);; i = (i + 1) & (s->cap - 1)) {
		if (s->k[i] == v)
			return true;
		if (s->k[i] == 0)
			return false;
	}
}

static void idset_put(struct idset *s, int64_t v);

static void idset_grow(struct idset *s)
{
	struct idset old = *s;
	s->cap = old.cap ? old.cap * 2 : 256;
	s->k = xcalloc(s->cap, sizeof(*s->k));
	s->n = 0;
	for (size_t i = 0; i < old.cap; i++) {
		if (old.k[i] != 0)
			idset_put(s, old.k[i]);
	}
	free(old.k);
}

static void idset_put(struct idset *s, int64_t v)
{
	if ((s->n + 1) * 2 > s->cap)
		idset_grow(s);
	size_t i = idset_slot(s, v);
	while (s->k[i] != 0 && s->k[i] != v)
		i = (i + 1) & (s->cap - 1);
	if (s->k[i] == 0) {
		s->k[i] = v;
		s->n++;
	}
}

static void idset_del(struct idset *s, int64_t v)
{
	if (s->cap == 0)
		return;
	size_t i = idset_slot(s, v);
	while (s->k[i] != v) {
		if (s->k[i] == 0)
			return;
		i = (i + 1) & (s->cap - 1);
	}
	s->k[i] = 0;
	s->n--;
	/* backward shift: move later members of the cluster into the hole */
	for (size_t j = (i + 1) & (s->cap - 1); s->k[j] != 0; j = (j + 1) & (s->cap - 1)) {
		size_t home = idset_slot(s, s->k[j]);
		bool movable = i <= j ? (home <= i || home > j) : (home <= i && home > j);
		if (movable) {
			s->k[i] = s->k[j];
			s->k[j] = 0;
			i = j;
		}
	}
}

/* ---- the relay --------------------------------------------------------------- */

struct job {
	struct job *next;
	int64_t blob_id;
	struct msgid msgid;
	unsigned tier;
	uint64_t size;
	int64_t received;
	char sender[320];
	char domain[RELAY_DOMAIN_MAX + 1];
	size_t n, cap;
	struct store_outbound *rows;
};

struct dest {
	char domain[RELAY_DOMAIN_MAX + 1];
	unsigned jobs;                    /* queued or running */
};

struct worker {
	struct relay *r;
	pthread_t t;
	bool started;
	struct store *st;
	struct store_reader *reader;
	struct relay_dns *dns;
};

struct relay {
	const struct settings *s;
	struct relay_transport transport;
	SSL_CTX *tls;
	atomic_bool stop;

	pthread_mutex_t mu;
	pthread_cond_t sched_cv, work_cv;
	bool wake;
	struct job *head, *tail;
	size_t queued;
	struct idset inflight;
	struct dest *dests;
	size_t n_dests, cap_dests;

	pthread_t sched;
	bool sched_started;
	struct store *sched_st;
	int64_t gauge;                    /* value last added to M_RELAY_QUEUE */
	struct worker *workers;
	size_t n_workers;
};

static int64_t now_s(void)
{
	return (int64_t)(time_wall_ms() / 1000);
}

/* The domain of an address: after the last '@', lower-cased; "" if none. */
static void rcpt_domain(const char *addr, char out[RELAY_DOMAIN_MAX + 1])
{
	const char *at = strrchr(addr, '@');
	snprintf(out, RELAY_DOMAIN_MAX + 1, "%s", at != NULL ? at + 1 : "");
	str_lower(out);
}

/* Under mu. */
static struct dest *dest_get(struct relay *r, const char *domain, bool create)
{
	for (size_t i = 0; i < r->n_dests; i++) {
		if (strcmp(r->dests[i].domain, domain) == 0)
			return &r->dests[i];
	}
	if (!create)
		return NULL;
	if (r->n_dests == r->cap_dests) {
		r->cap_dests = r->cap_dests ? r->cap_dests * 2 : 16;
		r->dests = xreallocarray(r->dests, r->cap_dests, sizeof(*r->dests));
	}
	struct dest *d = &r->dests[r->n_dests++];
	snprintf(d->domain, sizeof(d->domain), "%s", domain);
	d->jobs = 0;
	return d;
}

/* Under mu: a job is over; its domain slot and rows are free again. */
static void dest_release(struct relay *r, const char *domain)
{
	struct dest *d = dest_get(r, domain, false);
	if (d == NULL)
		return;
	if (--d->jobs == 0)
		*d = r->dests[--r->n_dests]; /* the table holds busy domains only */
}

static void job_free(struct job *j)
{
	free(j->rows);
	free(j);
}

static void job_add_row(struct job *j, const struct store_outbound *o)
{
	if (j->n == j->cap) {
		j->cap = j->cap ? j->cap * 2 : 4;
		j->rows = xreallocarray(j->rows, j->cap, sizeof(*j->rows));
	}
	j->rows[j->n++] = *o;
}

static struct job *job_new(const struct store_outbound *o, const char *domain)
{
	struct job *j = xcalloc(1, sizeof(*j));
	j->blob_id = o->blob_id;
	j->msgid = o->msgid;
	j->tier = o->tier;
	j->size = o->size;
	j->received = o->received;
	snprintf(j->sender, sizeof(j->sender), "%s", o->sender);
	snprintf(j->domain, sizeof(j->domain), "%s", domain);
	job_add_row(j, o);
	return j;
}

/* ---- the scheduler ------------------------------------------------------------ */

static void sched_gauge(struct relay *r)
{
	uint64_t n = 0;
	char *err = NULL;
	if (store_outbound_count(r->sched_st, &n, &err) != ST_OK) {
		log_warn("relay: counting the queue: %s", err);
		free(err);
		return;
	}
	gauge_add(M_RELAY_QUEUE, (int64_t)n - r->gauge);
	r->gauge = (int64_t)n;
}

/* Under mu: groups rows into new jobs (at most `room`) appended to the
 * list; returns how many were made. */
static size_t sched_make_jobs(struct relay *r, const struct store_outbound *rows, size_t n, size_t room)
{
	struct job *fresh = NULL;
	size_t made = 0;
	for (size_t i = 0; i < n; i++) {
		const struct store_outbound *o = &rows[i];
		if (idset_has(&r->inflight, o->id))
			continue;
		char domain[RELAY_DOMAIN_MAX + 1];
		rcpt_domain(o->recipient, domain);
		struct job *j = fresh;
		while (j != NULL && !(j->blob_id == o->blob_id && strcmp(j->domain, domain) == 0 &&
				      j->n < RELAY_MAX_RCPTS))
			j = j->next;
		if (j == NULL) {
			if (made >= room)
				continue;
			/* a domain at its limit has jobs, so no idle entry is left behind */
			struct dest *d = dest_get(r, domain, true);
			if (d->jobs >= r->s->relay_destination_concurrency)
				continue;
			d->jobs++;
			j = job_new(o, domain);
			j->next = fresh;
			fresh = j;
			made++;
		} else {
			job_add_row(j, o);
		}
		idset_put(&r->inflight, o->id);
	}
	while (fresh != NULL) {
		struct job *j = fresh;
		fresh = j->next;
		j->next = NULL;
		if (r->tail != NULL)
			r->tail->next = j;
		else
			r->head = j;
		r->tail = j;
		r->queued++;
	}
	if (made > 0)
		pthread_cond_broadcast(&r->work_cv);
	return made;
}

static void sched_pass(struct relay *r)
{
	pthread_mutex_lock(&r->mu);
	size_t cap = r->n_workers * RELAY_JOBS_PER_THREAD;
	size_t room = r->queued < cap ? cap - r->queued : 0;
	pthread_mutex_unlock(&r->mu);
	sched_gauge(r);
	if (room == 0)
		return;
	/* Rows in flight or held back by their domain's limit are skipped: the
	 * next pages give the other destinations their turn (no head-of-line
	 * blocking behind one slow domain), RELAY_SCAN_PAGES at most. */
	int64_t now = now_s();
	struct store_outbound last;
	bool have_last = false;
	for (int page = 0; page < RELAY_SCAN_PAGES && room > 0; page++) {
		struct store_outbound *rows = NULL;
		size_t n = 0;
		char *err = NULL;
		if (store_outbound_due(r->sched_st, now, have_last ? &last : NULL, RELAY_SCAN_MAX, &rows, &n,
				       &err) != ST_OK) {
			log_warn("relay: reading the queue: %s", err);
			free(err);
			return;
		}
		pthread_mutex_lock(&r->mu);
		size_t made = sched_make_jobs(r, rows, n, room);
		pthread_mutex_unlock(&r->mu);
		room -= made < room ? made : room;
		if (n > 0) {
			last = rows[n - 1];
			have_last = true;
		}
		free(rows);
		if (n < RELAY_SCAN_MAX)
			break;
	}
}

static void *sched_main(void *arg)
{
	struct relay *r = arg;
	pthread_mutex_lock(&r->mu);
	while (!atomic_load(&r->stop)) {
		if (!r->wake) {
			struct timespec ts;
			time_mono_deadline(RELAY_POLL_MS, &ts);
			pthread_cond_timedwait(&r->sched_cv, &r->mu, &ts);
		}
		if (atomic_load(&r->stop))
			break;
		r->wake = false;
		pthread_mutex_unlock(&r->mu);
		sched_pass(r);
		pthread_mutex_lock(&r->mu);
	}
	pthread_mutex_unlock(&r->mu);
	return NULL;
}

void relay_wake(void *arg)
{
	struct relay *r = arg;
	if (r == NULL)
		return;
	pthread_mutex_lock(&r->mu);
	r->wake = true;
	pthread_cond_signal(&r->sched_cv);
	pthread_mutex_unlock(&r->mu);
}

/* ---- results ------------------------------------------------------------------ */

static const char *result_name(enum relay_result res)
{
	switch (res) {
	case RELAY_SENT:
		return "sent";
	case RELAY_DEFER:
		return "deferred";
	case RELAY_BOUNCE:
		return "bounced";
	default:
		return "interrupted";
	}
}

static void log_attempt(const struct job *j, const struct store_outbound *o, const struct relay_rcpt *rc,
			const struct relay_txn *t, int64_t now, const char *note)
{
	char qid[MSGID_TEXT_LEN + 1], to[400], reply[RELAY_REPLY_MAX + 64], relay[RELAY_DOMAIN_MAX + 64];
	msgid_format(&j->msgid, qid);
	log_escape(o->recipient, strlen(o->recipient), to, sizeof(to));
	log_escape(rc->reply, strlen(rc->reply), reply, sizeof(reply));
	if (t->relay_ip[0] != '\0')
		snprintf(relay, sizeof(relay), "%s[%s]:%u", t->relay_host, t->relay_ip, t->relay_port);
	else
		snprintf(relay, sizeof(relay), "none");
	enum log_level lvl = rc->result == RELAY_SENT ? LOG_LVL_INFO : LOG_LVL_WARN;
	char tls[sizeof(t->tls_desc) + 8] = "";
	if (t->tls_used)
		snprintf(tls, sizeof(tls), " tls=%s,", t->tls_desc);
	log_msg(lvl, "%s: to=<%s>, relay=%s, delay=%lld, tries=%u,%s dsn=%s, status=%s%s (%s)", qid, to, relay,
		(long long)(now - o->created), o->attempts + 1, tls, rc->dsn[0] ? rc->dsn : "4.0.0",
		result_name(rc->result), note, reply);
}

/* Seconds until the next attempt after `attempts` failed ones. */
static int64_t backoff_s(const struct settings *s, uint32_t attempts)
{
	uint64_t d = s->relay_retry_min_ms;
	for (uint32_t i = 0; i < attempts && d < s->relay_retry_max_ms; i++)
		d *= 2;
	if (d > s->relay_retry_max_ms)
		d = s->relay_retry_max_ms;
	return (int64_t)((d + 999) / 1000);
}

static void defer_row(struct worker *w, const struct store_outbound *o, int64_t now, const char *why)
{
	char *err = NULL;
	if (store_outbound_defer(w->st, &o->id, 1, now + backoff_s(w->r->s, o->attempts), why, &err) != ST_OK) {
		log_error("relay: recording a deferral of queue entry %lld: %s", (long long)o->id, err);
		free(err);
	}
}

static void remove_rows(struct worker *w, const int64_t *ids, size_t n)
{
	char *err = NULL;
	if (n > 0 && store_outbound_remove(w->st, ids, n, NULL, &err) != ST_OK) {
		/* the rows stay: they are delivered again (at least once) */
		log_error("relay: removing %zu delivered queue entries: %s", n, err);
		free(err);
	}
}

/* The bounced rows of a job (indices into j->rows): one DSN, then removal. */
static void bounce_rows(struct worker *w, const struct job *j, struct relay_rcpt *rc, const size_t *idx,
			size_t n, const struct relay_txn *t, int fd, int64_t now)
{
	int64_t *ids = xcalloc(n, sizeof(*ids));
	const struct relay_rcpt **failed = xcalloc(n, sizeof(*failed));
	for (size_t i = 0; i < n; i++) {
		ids[i] = j->rows[idx[i]].id;
		failed[i] = &rc[idx[i]];
	}
	char qid[MSGID_TEXT_LEN + 1];
	msgid_format(&j->msgid, qid);
	bool remove = true;
	if (j->sender[0] == '\0') {
		log_info("%s: no bounce for the null sender (%zu recipient(s))", qid, n);
	} else {
		char mta[RELAY_DOMAIN_MAX + 1];
		snprintf(mta, sizeof(mta), "%s", t->relay_host);
		struct relay_bounce_msg m = {
			.id = j->msgid, .received = j->received, .sender = j->sender, .fd = fd, .size = j->size,
			.failed = failed, .n_failed = n, .remote_mta = mta,
		};
		char *err = NULL;
		enum status st = relay_bounce_send(w->r->s, w->st, w->reader, &m, &err);
		char from[400];
		log_escape(j->sender, strlen(j->sender), from, sizeof(from));
		/* a bounce that cannot be stored is retried until the message's
		 * lifetime is over, never longer (a full mailbox must not keep a
		 * queue entry forever) */
		bool expired = true;
		for (size_t i = 0; i < n; i++)
			expired = expired && now - j->rows[idx[i]].created >= (int64_t)(w->r->s->relay_max_lifetime_ms / 1000);
		bool permanent = st == ST_NOT_FOUND || st == ST_INVALID || st == ST_OVER_QUOTA_PERM || st == ST_TOO_BIG;
		if (st == ST_OK) {
			log_info("%s: sender non-delivery notification to <%s> stored", qid, from);
		} else if (permanent || expired) {
			log_error("%s: bounce to <%s> not possible, given up: %s", qid, from, err);
		} else {
			log_warn("%s: bounce to <%s> not stored, retrying later: %s", qid, from, err);
			remove = false;
			for (size_t i = 0; i < n; i++)
				defer_row(w, &j->rows[idx[i]], now, "bounce not stored yet");
		}
		free(err);
	}
	if (remove)
		remove_rows(w, ids, n);
	free(ids);
	free(failed);
}

static void apply_results(struct worker *w, const struct job *j, struct relay_rcpt *rc, const struct relay_txn *t,
			  int fd, int64_t now)
{
	const struct settings *s = w->r->s;
	int64_t *sent = xcalloc(j->n, sizeof(*sent));
	size_t *bounced = xcalloc(j->n, sizeof(*bounced));
	size_t n_sent = 0, n_bounced = 0;
	int64_t lifetime = (int64_t)(s->relay_max_lifetime_ms / 1000);
	for (size_t i = 0; i < j->n; i++) {
		const struct store_outbound *o = &j->rows[i];
		const char *note = "";
		if (rc[i].result == RELAY_DEFER && now - o->created >= lifetime) {
			rc[i].result = RELAY_BOUNCE; /* expired: the last reason is the bounce's */
			note = ", expired";
		}
		log_attempt(j, o, &rc[i], t, now, note);
		switch (rc[i].result) {
		case RELAY_SENT:
			sent[n_sent++] = o->id;
			metric_inc(M_RELAY_SENT);
			break;
		case RELAY_DEFER:
			defer_row(w, o, now, rc[i].reply);
			metric_inc(M_RELAY_DEFERRED);
			break;
		case RELAY_BOUNCE:
			bounced[n_bounced++] = i;
			metric_inc(M_RELAY_BOUNCED);
			break;
		default:
			break; /* interrupted: still due */
		}
	}
	remove_rows(w, sent, n_sent);
	if (n_bounced > 0)
		bounce_rows(w, j, rc, bounced, n_bounced, t, fd, now);
	free(sent);
	free(bounced);
}

/* ---- a delivery ---------------------------------------------------------------- */

/* Whether the message has bytes >= 0x80 (BODY=8BITMIME); reads it once. */
static bool scan_8bit(int fd, uint64_t size)
{
	char *b = xmalloc(RELAY_SCAN_CHUNK);
	bool eight = false;
	for (uint64_t off = 0; !eight && off < size;) {
		size_t want = size - off < RELAY_SCAN_CHUNK ? (size_t)(size - off) : RELAY_SCAN_CHUNK;
		ssize_t n = pread(fd, b, want, (off_t)off);
		if (n <= 0)
			break;
		for (ssize_t i = 0; i < n; i++) {
			if ((unsigned char)b[i] >= 0x80) {
				eight = true;
				break;
			}
		}
		off += (uint64_t)n;
	}
	free(b);
	return eight;
}

/* An envelope address the client may put on the wire: no control bytes,
 * no angle brackets, local@domain with both parts present. */
static bool address_sendable(const char *a, bool may_be_empty)
{
	if (a[0] == '\0')
		return may_be_empty;
	for (const char *p = a; *p; p++) {
		unsigned char c = (unsigned char)*p;
		if (c < 0x20 || c == 0x7f || c == '<' || c == '>')
			return false;
	}
	const char *at = strrchr(a, '@');
	return at != NULL && at != a && at[1] != '\0';
}

/* The enhanced status a routing error starts with ("4.4.3 ..."). */
static void dsn_of(const char *text, char out[16], const char *fallback)
{
	size_t n = strcspn(text, " ");
	if (n < 5 || n > 11 || !(text[0] == '4' || text[0] == '5') || text[1] != '.') {
		snprintf(out, 16, "%s", fallback);
		return;
	}
	memcpy(out, text, n);
	out[n] = '\0';
}

static void deliver_job(struct worker *w, struct job *j)
{
	struct relay *r = w->r;
	int64_t now = now_s();
	struct relay_rcpt *rc = xcalloc(j->n, sizeof(*rc));
	struct relay_txn t;
	memset(&t, 0, sizeof(t));
	t.s = r->s;
	t.tls = r->tls;
	t.stop = &r->stop;
	t.sender = j->sender;
	t.size = j->size;
	t.fd = -1;
	/* sendable recipients first (the transaction takes a contiguous run) */
	size_t *order = xcalloc(j->n, sizeof(*order));
	struct relay_rcpt *send = xcalloc(j->n, sizeof(*send));
	size_t n_send = 0;
	for (size_t i = 0; i < j->n; i++) {
		rc[i].address = j->rows[i].recipient;
		if (address_sendable(j->rows[i].recipient, false) && address_sendable(j->sender, true)) {
			order[n_send] = i;
			send[n_send++].address = j->rows[i].recipient;
		} else {
			relay_rcpts_set(&rc[i], 1, RELAY_BOUNCE, 0, "5.1.3", "5.1.3 bad address syntax");
		}
	}
	int fd = -1;
	if (n_send > 0) {
		fd = store_blob_open(r->s, j->tier, &j->msgid, NULL);
		if (fd < 0) {
			char why[RELAY_REPLY_MAX];
			snprintf(why, sizeof(why), "4.3.0 local: cannot open the message: %s", strerror(errno));
			relay_rcpts_set(send, n_send, RELAY_DEFER, 0, "4.3.0", why);
		} else {
			t.fd = fd;
			t.eight_bit = scan_8bit(fd, j->size);
			t.rcpts = send;
			t.n_rcpts = n_send;
			struct relay_hops *hops = xcalloc(1, sizeof(*hops));
			char *err = NULL;
			enum relay_result res = relay_route(w->dns, &r->transport, j->domain, hops, &err);
			if (res == RELAY_SENT) {
				relay_smtp_deliver(&t, hops);
			} else {
				char dsn[16];
				dsn_of(err, dsn, res == RELAY_BOUNCE ? "5.0.0" : "4.0.0");
				if (atomic_load(&r->stop))
					res = RELAY_ABORTED;
				relay_rcpts_set(send, n_send, res, 0, dsn, err);
			}
			free(err);
			free(hops);
		}
		for (size_t k = 0; k < n_send; k++) {
			send[k].address = rc[order[k]].address;
			rc[order[k]] = send[k];
		}
	}
	apply_results(w, j, rc, &t, fd, now);
	if (fd >= 0)
		close(fd);
	free(order);
	free(send);
	free(rc);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct relay *r = w->r;
	pthread_mutex_lock(&r->mu);
	for (;;) {
		while (!atomic_load(&r->stop) && r->head == NULL)
			pthread_cond_wait(&r->work_cv, &r->mu);
		if (atomic_load(&r->stop))
			break;
		struct job *j = r->head;
		r->head = j->next;
		if (r->head == NULL)
			r->tail = NULL;
		r->queued--;
		pthread_mutex_unlock(&r->mu);
		deliver_job(w, j);
		pthread_mutex_lock(&r->mu);
		for (size_t i = 0; i < j->n; i++)
			idset_del(&r->inflight, j->rows[i].id);
		dest_release(r, j->domain);
		job_free(j);
		r->wake = true;
		pthread_cond_signal(&r->sched_cv);
	}
	pthread_mutex_unlock(&r->mu);
	return NULL;
}

/* ---- start / stop ------------------------------------------------------------- */

static bool thread_start(pthread_t *t, void *(*fn)(void *), void *arg, const char *name, char **error_r)
{
	sigset_t set, old;
	sigfillset(&set);
	sigdelset(&set, SIGSEGV);
	sigdelset(&set, SIGBUS);
	sigdelset(&set, SIGFPE);
	sigdelset(&set, SIGILL);
	sigdelset(&set, SIGABRT);
	pthread_sigmask(SIG_SETMASK, &set, &old);
	int rc = pthread_create(t, NULL, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		*error_r = xasprintf("cannot start %s thread: %s", name, strerror(rc));
		return false;
	}
	pthread_setname_np(*t, name);
	return true;
}

static SSL_CTX *tls_client_new(char **error_r)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (ctx == NULL) {
		*error_r = xstrdup("relay: cannot create the TLS client context");
		return NULL;
	}
	/* Opportunistic TLS (RFC 7435): encryption without authentication,
	 * as MX hosts' certificates are rarely verifiable by name. */
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	return ctx;
}

static void relay_free(struct relay *r)
{
	for (size_t i = 0; i < r->n_workers; i++) {
		store_close(&r->workers[i].st);
		store_reader_close(&r->workers[i].reader);
		relay_dns_free(&r->workers[i].dns);
	}
	free(r->workers);
	store_close(&r->sched_st);
	while (r->head != NULL) {
		struct job *j = r->head;
		r->head = j->next;
		job_free(j);
	}
	gauge_add(M_RELAY_QUEUE, -r->gauge);
	free(r->inflight.k);
	free(r->dests);
	relay_transport_free(&r->transport);
	if (r->tls != NULL)
		SSL_CTX_free(r->tls);
	pthread_mutex_destroy(&r->mu);
	pthread_cond_destroy(&r->sched_cv);
	pthread_cond_destroy(&r->work_cv);
	free(r);
}

static void relay_join(struct relay *r)
{
	pthread_mutex_lock(&r->mu);
	atomic_store(&r->stop, true);
	pthread_cond_broadcast(&r->sched_cv);
	pthread_cond_broadcast(&r->work_cv);
	pthread_mutex_unlock(&r->mu);
	if (r->sched_started)
		pthread_join(r->sched, NULL);
	r->sched_started = false;
	for (size_t i = 0; i < r->n_workers; i++) {
		if (r->workers[i].started)
			pthread_join(r->workers[i].t, NULL);
		r->workers[i].started = false;
	}
}

static bool worker_open(struct relay *r, struct worker *w, char **error_r)
{
	w->r = r;
	w->st = store_open(r->s, false, error_r);
	if (w->st == NULL)
		return false;
	w->reader = store_reader_open(r->s, error_r);
	if (w->reader == NULL)
		return false;
	w->dns = relay_dns_new(r->s->relay_dns_servers, &r->stop, error_r);
	return w->dns != NULL;
}

struct relay *relay_start(const struct settings *s, char **error_r)
{
	struct relay *r = xcalloc(1, sizeof(*r));
	r->s = s;
	atomic_init(&r->stop, false);
	pthread_mutex_init(&r->mu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&r->sched_cv, &ca);
	pthread_condattr_destroy(&ca);
	pthread_cond_init(&r->work_cv, NULL);
	r->n_workers = s->relay_threads > 0 ? (size_t)s->relay_threads : 1;
	r->workers = xcalloc(r->n_workers, sizeof(*r->workers));
	if (!relay_transport_parse(s->relay_transport, &r->transport, error_r))
		goto fail;
	if ((r->tls = tls_client_new(error_r)) == NULL)
		goto fail;
	if ((r->sched_st = store_open(s, false, error_r)) == NULL)
		goto fail;
	for (size_t i = 0; i < r->n_workers; i++) {
		if (!worker_open(r, &r->workers[i], error_r))
			goto fail;
	}
	if (!thread_start(&r->sched, sched_main, r, "strata-relayq", error_r))
		goto fail;
	r->sched_started = true;
	for (size_t i = 0; i < r->n_workers; i++) {
		if (!thread_start(&r->workers[i].t, worker_main, &r->workers[i], "strata-relay", error_r))
			goto fail;
		r->workers[i].started = true;
	}
	log_info("relay: started %zu delivery thread(s)%s%s", r->n_workers,
		 r->transport.n > 0 ? ", routes from relay.transport" : "",
		 s->relay_tls == RELAY_TLS_ENCRYPT ? ", TLS required" : "");
	relay_wake(r);
	return r;
fail:
	relay_join(r);
	relay_free(r);
	return NULL;
}

void relay_stop(struct relay **rp)
{
	struct relay *r = *rp;
	if (r == NULL)
		return;
	*rp = NULL;
	relay_join(r);
	relay_free(r);
	log_info("relay: stopped");
}
