/*
 * guard.c - the connection guard: settings snapshots, the decision on
 * accept, release, bans, stats.
 *
 * Contract: see guard.h.  Order of a decision (guard_admit):
 *   1. the allowlist: a match is admitted with an empty ticket, whatever
 *      else holds (bans included);
 *   2. the ban list (skipped without a lock while no ban exists);
 *   3. with guard.enabled, each level in turn - address, network, wide
 *      IPv6 network - checks its token bucket then its concurrency, and
 *      takes a token and counts the connection; a refusal at a later level
 *      gives back the connections counted at the earlier ones (tokens are
 *      not given back: a refused attempt is still an attempt);
 *   4. the class cap less guard.good.reserve percent (the whole cap for a
 *      good sender), then, above guard.fair_share_above percent of that
 *      pool, the fair share (not for good senders): a network already holding max_connections /
 *      (active_networks + 1) connections (floored, at least 1) is refused.
 *      The + 1 keeps one share for a network that has no connection yet:
 *      with max_connections / active_networks a flood from a single network
 *      (or from a few) could take the whole cap, and the next legitimate
 *      network would find no room at all.  Networks admitted below the
 *      high-water mark keep what they hold; they only stop growing.
 *
 * Settings: a snapshot (limits, parsed allowlist, refusal lines) is built
 * by guard_new/guard_set_settings and published with one atomic store;
 * deciding threads load it once per decision.  Snapshots replaced by a
 * reload are kept until guard_free (a decision may still be reading one),
 * as server.c keeps old settings: one per SIGHUP, a few hundred bytes.
 * guard_set_settings must not run on two threads at once (the main thread
 * calls it).
 *
 * Bans: a fixed set-associative table like the entry table (guard_table.c)
 * but with one mutex per shard of its own; a full bucket displaces its
 * soonest-expiring entry.  An entry also keeps the address's offence count
 * (guard_offence): after its ban expires it stays, banning nothing, until
 * guard.offence_forget has passed, so a repeat offence bans for the next,
 * longer step of guard.offence_bans.  Entries neither banning nor
 * remembering are removed when met, and are displaced first.
 *
 * Every change of a ban in force (set, lengthened, lifted, displaced) is
 * also handed to the kernel mirror (guard_nft_note, non-blocking, under
 * the ban shard's lock so the queue sees changes in table order); a ban
 * or an offence forgets the address's good-sender record.
 *
 * Refusals never allocate: the lines are prebuilt in the snapshot.
 */
#include "guard_int.h"

#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "metrics.h"

static _Atomic(struct guard *) g_process;

static const char imap_line[] = "* BYE Too many connections\r\n";
static const char pop3_line[] = "-ERR [SYS/TEMP] Too many connections\r\n";

const char *guard_verdict_name(enum guard_verdict v)
{
	switch (v) {
	case GUARD_ADMIT: return "admit";
	case GUARD_REFUSE_RATE: return "rate";
	case GUARD_REFUSE_CONCURRENCY: return "concurrency";
	case GUARD_REFUSE_GLOBAL: return "global";
	case GUARD_REFUSE_BAN: return "ban";
	}
	return "unknown";
}

enum guard_class guard_proto_class(enum guard_proto proto)
{
	return proto == GUARD_PROTO_SMTP ? GUARD_CLASS_MX : GUARD_CLASS_USER;
}

/* ---- settings snapshots ------------------------------------------------------- */

/* guard.offence_bans: "1m, 10m, 1h, 1d" - one to GUARD_OFFENCE_STEPS_MAX
 * durations of at least one second, each at least the one before. */
static bool parse_offence_bans(const char *list, struct guard_conf *c, char **error_r)
{
	char *copy = xstrdup(list), *save = NULL;
	bool ok = true;
	c->n_offence_steps = 0;
	for (char *item = strtok_r(copy, ", \t", &save); item != NULL && ok;
	     item = strtok_r(NULL, ", \t", &save)) {
		uint64_t ms = 0;
		if (c->n_offence_steps == GUARD_OFFENCE_STEPS_MAX) {
			*error_r = xasprintf("guard.offence_bans: more than %d durations", GUARD_OFFENCE_STEPS_MAX);
			ok = false;
		} else if (!str_parse_duration_ms(item, &ms) || ms < 1000 || ms > GUARD_OFFENCE_BAN_MAX_MS) {
			*error_r = xasprintf("guard.offence_bans: '%s' is not a duration from 1s to 365d", item);
			ok = false;
		} else if (c->n_offence_steps > 0 && ms / 1000 < c->offence_ban_s[c->n_offence_steps - 1]) {
			*error_r = xasprintf("guard.offence_bans: '%s' is shorter than the ban before it", item);
			ok = false;
		} else {
			c->offence_ban_s[c->n_offence_steps++] = ms / 1000;
		}
	}
	if (ok && c->n_offence_steps == 0) {
		*error_r = xstrdup("guard.offence_bans: at least one duration is needed");
		ok = false;
	}
	free(copy);
	return ok;
}

static void conf_free_one(struct guard_conf *c)
{
	free(c->allow);
	for (int cls = 0; cls < GUARD_CLASS__COUNT; cls++)
		free(c->proxy_from[cls]);
	free(c);
}

static void conf_free_chain(struct guard_conf *c)
{
	while (c != NULL) {
		struct guard_conf *older = c->older;
		conf_free_one(c);
		c = older;
	}
}

static struct guard_conf *conf_build(const struct settings *s, char **error_r)
{
	struct guard_conf *c = xcalloc(1, sizeof(*c));
	if (!guard_cidr_parse_list(s->guard_allow, &c->allow, &c->n_allow, error_r)) {
		free(c);
		return NULL;
	}
	c->enabled = s->guard_enabled;
	c->fair_pct = s->guard_fair_share_percent;
	for (int cls = 0; cls < GUARD_CLASS__COUNT; cls++) {
		c->max_conn[cls] = s->guard_max_connections[cls];
		for (int lv = 0; lv < GUARD_LEVEL__COUNT; lv++) {
			const struct guard_limit_settings *ls = &s->guard_limits[cls][lv];
			c->lim[cls][lv] = (struct guard_limit){ ls->rate, ls->burst, ls->concurrency };
		}
	}
	if (!parse_offence_bans(s->guard_offence_bans, c, error_r)) {
		conf_free_one(c);
		return NULL;
	}
	c->offence_forget_ms = s->guard_offence_forget_ms;
	c->auth_delay_ms = s->guard_auth_delay_ms;
	c->auth_max_delay_ms = s->guard_auth_max_delay_ms;
	c->auth_ban_after = s->guard_auth_ban_after;
	c->auth_window_ms = s->guard_auth_window_ms;
	c->proxy_timeout_ms = s->guard_proxy_timeout_ms;
	c->good_ttl_ms = s->guard_good_ttl_ms;
	c->good_reserve_pct = s->guard_good_reserve_percent;
	for (int cls = 0; cls < GUARD_CLASS__COUNT; cls++) {
		char *err = NULL;
		if (!guard_cidr_parse_list(s->guard_proxy_from[cls], &c->proxy_from[cls], &c->n_proxy_from[cls], &err)) {
			*error_r = xasprintf("guard.%s.proxy_from: %s", cls == 0 ? "mx" : "user", err);
			free(err);
			conf_free_chain(c);
			return NULL;
		}
	}
	int n = snprintf(c->smtp_line, sizeof(c->smtp_line),
			 "421 4.7.0 %.200s Too many connections from your network, try again later\r\n",
			 s->hostname);
	c->smtp_len = n > 0 && (size_t)n < sizeof(c->smtp_line) ? (size_t)n : strlen(c->smtp_line);
	return c;
}


struct guard *guard_new(const struct settings *s, char **error_r)
{
	struct guard_conf *c = conf_build(s, error_r);
	if (c == NULL)
		return NULL;
	struct guard *g = xcalloc(1, sizeof(*g));
	atomic_init(&g->conf, c);
	random_bytes(g->hash_key, sizeof(g->hash_key));
	g->prefix[0][GUARD_LEVEL_ADDR] = 32;
	g->prefix[0][GUARD_LEVEL_NET] = (unsigned)s->guard_ipv4_prefix;
	g->prefix[0][GUARD_LEVEL_WIDE] = 0;
	g->prefix[1][GUARD_LEVEL_ADDR] = 128;
	g->prefix[1][GUARD_LEVEL_NET] = (unsigned)s->guard_ipv6_prefix;
	g->prefix[1][GUARD_LEVEL_WIDE] = (unsigned)s->guard_ipv6_wide_prefix;
	for (int cls = 0; cls < GUARD_CLASS__COUNT; cls++)
		guard_table_init(&g->tables[cls], (size_t)s->guard_table_entries);
	g->n_ban_buckets = (size_t)s->guard_ban_entries / GUARD_WAYS;
	if (g->n_ban_buckets < GUARD_SHARDS)
		g->n_ban_buckets = GUARD_SHARDS;
	g->bans = xcalloc(g->n_ban_buckets * GUARD_WAYS, sizeof(*g->bans));
	for (size_t i = 0; i < GUARD_SHARDS; i++) {
		if (pthread_mutex_init(&g->ban_shards[i].mu, NULL) != 0)
			panic("guard: cannot initialise a mutex");
	}
	guard_auth_init(g, (size_t)s->guard_ban_entries);
	guard_good_init(g, (size_t)s->guard_good_entries);
	atomic_init(&g->nft, NULL);
	return g;
}

void guard_free(struct guard **gp)
{
	struct guard *g = *gp;
	if (g == NULL)
		return;
	guard_nft_stop(g, false);   /* reads the ban table: before it goes */
	for (int cls = 0; cls < GUARD_CLASS__COUNT; cls++) {
		if (atomic_load(&g->tables[cls].conns) != 0)
			log_warn("guard: freed with %llu connections not released",
				 (unsigned long long)atomic_load(&g->tables[cls].conns));
		guard_table_destroy(&g->tables[cls]);
	}
	for (size_t i = 0; i < GUARD_SHARDS; i++)
		pthread_mutex_destroy(&g->ban_shards[i].mu);
	free(g->bans);
	guard_auth_destroy(g);
	guard_good_destroy(g);
	free(g->extra);
	free(g->state_dir);
	conf_free_chain(atomic_load(&g->conf));
	if (atomic_load(&g_process) == g)
		atomic_store(&g_process, NULL);
	free(g);
	*gp = NULL;
}

struct guard_conf *guard_conf_with_allow(const struct guard_conf *c, const struct guard_cidr *extra, size_t n)
{
	struct guard_conf *copy = xmalloc(sizeof(*copy));
	*copy = *c;
	copy->older = NULL;
	copy->allow = xreallocarray(NULL, c->n_allow + n + 1, sizeof(*copy->allow));
	if (c->n_allow > 0)
		memcpy(copy->allow, c->allow, c->n_allow * sizeof(*c->allow));
	if (n > 0)
		memcpy(copy->allow + c->n_allow, extra, n * sizeof(*extra));
	copy->n_allow = c->n_allow + n;
	for (int cls = 0; cls < GUARD_CLASS__COUNT; cls++) {
		copy->proxy_from[cls] = NULL;
		if (c->n_proxy_from[cls] > 0) {
			copy->proxy_from[cls] = xreallocarray(NULL, c->n_proxy_from[cls], sizeof(*c->proxy_from[cls]));
			memcpy(copy->proxy_from[cls], c->proxy_from[cls], c->n_proxy_from[cls] * sizeof(*c->proxy_from[cls]));
		}
	}
	return copy;
}

bool guard_set_settings(struct guard *g, const struct settings *s, char **error_r)
{
	struct guard_conf *built = conf_build(s, error_r);
	if (built == NULL)
		return false;
	/* Entries added at run time survive a reload. */
	struct guard_conf *c = guard_conf_with_allow(built, g->extra, g->n_extra);
	conf_free_one(built);
	c->older = atomic_load(&g->conf);
	atomic_store(&g->conf, c);
	/* The allowlist may have changed, and an operator may have flushed the
	 * ruleset: SIGHUP brings the kernel set back in line. */
	guard_nft_resync(g);
	return true;
}

/* ---- the decision --------------------------------------------------------------- */

static void ticket_clear(struct guard_ticket *t)
{
	t->g = NULL;
	for (int lv = 0; lv < GUARD_LEVEL__COUNT; lv++)
		t->idx[lv] = GUARD_NO_ENTRY;
	t->cls = 0;
}

static bool allowed(const struct guard_conf *c, const struct guard_addr *a)
{
	for (size_t i = 0; i < c->n_allow; i++) {
		if (guard_cidr_match(&c->allow[i], a))
			return true;
	}
	return false;
}

/* Gives back the connections counted at the levels below `upto`. */
static void undo_levels(struct guard_table *t, struct guard_ticket *tk, int upto)
{
	for (int lv = 0; lv < upto; lv++) {
		if (tk->idx[lv] != GUARD_NO_ENTRY)
			guard_table_put(t, tk->idx[lv]);
		tk->idx[lv] = GUARD_NO_ENTRY;
	}
}

/* The class cap and the fair share; counts the connection when it passes.
 * guard.good.reserve percent of the cap is for good senders only: others
 * stop at the rest (the general pool), and the fair share is reckoned on
 * that pool.  A good sender may fill the whole cap and skips the fair
 * share, whose purpose - room for a network not seen yet - the reserve
 * serves for it. */
static enum guard_verdict check_global(const struct guard_conf *c, struct guard_table *t, int cls,
				       uint32_t net_conns_before, bool good)
{
	uint64_t cap = c->max_conn[cls];
	uint64_t reserved = cap * c->good_reserve_pct / 100;
	uint64_t total = atomic_fetch_add(&t->conns, 1) + 1;
	if (!good)
		cap -= reserved;
	bool ok = total <= cap;
	if (ok && !good && total * 100 > cap * c->fair_pct) {
		uint64_t share = cap / (atomic_load(&t->active_nets) + 1);
		if (share == 0)
			share = 1;
		ok = net_conns_before < share;
	}
	if (!ok)
		atomic_fetch_sub(&t->conns, 1);
	return ok ? GUARD_ADMIT : GUARD_REFUSE_GLOBAL;
}

static void count_refusal(enum guard_verdict v)
{
	static const enum metric_counter by_verdict[] = {
		[GUARD_REFUSE_RATE] = M_GUARD_REFUSED_RATE,
		[GUARD_REFUSE_CONCURRENCY] = M_GUARD_REFUSED_CONCURRENCY,
		[GUARD_REFUSE_GLOBAL] = M_GUARD_REFUSED_GLOBAL,
		[GUARD_REFUSE_BAN] = M_GUARD_REFUSED_BAN,
	};
	if (v != GUARD_ADMIT)
		metric_inc(by_verdict[v]);
}

/* Steps 3 and 4 of the file comment. */
static enum guard_verdict admit_limits(struct guard *g, const struct guard_conf *c, int cls,
				       const struct guard_addr *a, uint64_t now, struct guard_ticket *tk)
{
	struct guard_table *t = &g->tables[cls];
	int fam = a->family == 4 ? 0 : 1;
	uint32_t net_before = 0;
	for (int lv = 0; lv < GUARD_LEVEL__COUNT; lv++) {
		unsigned prefix = g->prefix[fam][lv];
		if (prefix == 0)
			continue;
		struct guard_key k;
		guard_key_make(a, (unsigned)lv, prefix, &k);
		struct guard_step st;
		guard_table_step(t, guard_key_hash(&k, g->hash_key), &k, c->lim[cls], now, &st);
		if (st.verdict != GUARD_ADMIT) {
			undo_levels(t, tk, lv);
			return st.verdict;
		}
		tk->idx[lv] = st.idx;
		if (lv == GUARD_LEVEL_NET)
			net_before = st.conns_before;
	}
	bool good = c->good_reserve_pct > 0 && guard_is_good(g, a, now);
	enum guard_verdict v = check_global(c, t, cls, net_before, good);
	if (v != GUARD_ADMIT)
		undo_levels(t, tk, GUARD_LEVEL__COUNT);
	return v;
}

enum guard_verdict guard_admit(struct guard *g, enum guard_class cls, const struct guard_addr *a,
			       uint64_t now_ms, struct guard_ticket *ticket_r)
{
	ticket_clear(ticket_r);
	if ((unsigned)cls >= GUARD_CLASS__COUNT || (a->family != 4 && a->family != 6))
		panic("guard_admit: bad class %d or address family %d", (int)cls, (int)a->family);
	const struct guard_conf *c = atomic_load(&g->conf);
	if (allowed(c, a))
		return GUARD_ADMIT;
	enum guard_verdict v = GUARD_ADMIT;
	if (guard_is_banned(g, a, now_ms))
		v = GUARD_REFUSE_BAN;
	else if (c->enabled)
		v = admit_limits(g, c, (int)cls, a, now_ms, ticket_r);
	if (v != GUARD_ADMIT) {
		ticket_clear(ticket_r);
		count_refusal(v);
		return v;
	}
	if (c->enabled) {
		ticket_r->g = g;
		ticket_r->cls = (uint8_t)cls;
	}
	return GUARD_ADMIT;
}

void guard_release(struct guard_ticket *t)
{
	if (t == NULL || t->g == NULL)
		return;
	struct guard_table *tab = &t->g->tables[t->cls];
	undo_levels(tab, t, GUARD_LEVEL__COUNT);
	if (atomic_fetch_sub(&tab->conns, 1) == 0)
		panic("guard: class connection count released below zero");
	ticket_clear(t);
}

bool guard_accept(struct guard *g, enum guard_proto proto, int fd, const struct sockaddr *peer,
		  socklen_t peer_len, struct guard_ticket *ticket_r)
{
	ticket_clear(ticket_r);
	struct guard_addr a;
	if (g == NULL || !guard_addr_from_sockaddr(peer, peer_len, &a))
		return true;   /* no guard, or not an IP peer: nothing to account */
	enum guard_verdict v = guard_admit(g, guard_proto_class(proto), &a, time_mono_ms(), ticket_r);
	if (v == GUARD_ADMIT)
		return true;
	const struct guard_conf *c = atomic_load(&g->conf);
	const char *line = c->smtp_line;
	size_t len = c->smtp_len;
	if (proto == GUARD_PROTO_IMAP) {
		line = imap_line;
		len = sizeof(imap_line) - 1;
	} else if (proto == GUARD_PROTO_POP3) {
		line = pop3_line;
		len = sizeof(pop3_line) - 1;
	}
	if (proto != GUARD_PROTO_IMAPS && proto != GUARD_PROTO_POP3S) {
		ssize_t n = send(fd, line, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		(void)n;   /* best effort: the client may be gone, or its window full */
	}
	close(fd);
	if (log_get_level() >= LOG_LVL_DEBUG) {
		char text[INET6_ADDRSTRLEN + 1];
		guard_addr_format(&a, text, sizeof(text));
		log_debug("guard: refused %s (%s)", text, guard_verdict_name(v));
	}
	return false;
}

/* ---- bans ---------------------------------------------------------------------- */

static size_t ban_bucket(struct guard *g, const struct guard_addr *a)
{
	struct guard_key k;
	guard_key_make(a, GUARD_KEY_BAN, a->family == 4 ? 32 : 128, &k);
	return (size_t)(guard_key_hash(&k, g->hash_key) % g->n_ban_buckets);
}

static bool ban_match(const struct guard_ban *b, const struct guard_addr *a)
{
	return b->family == a->family && memcmp(b->b, a->b, sizeof(b->b)) == 0;
}

static void ban_clear(struct guard *g, struct guard_ban *b)
{
	memset(b, 0, sizeof(*b));
	atomic_fetch_sub(&g->n_bans, 1);
}

/* True when the entry neither bans nor remembers anything any more: its ban
 * has expired and so has its offence record (guard.offence_forget after
 * the expiry). */
static bool ban_stale(const struct guard_ban *b, uint64_t now_ms, uint64_t forget_ms)
{
	if (b->expires_ms > now_ms)
		return false;
	return b->strikes == 0 || b->expires_ms + forget_ms <= now_ms ||
	       b->expires_ms > UINT64_MAX - forget_ms;
}

/* The entry of `a` in its bucket (locked by the caller), taking one when it
 * has none: a free or stale way, else the way expiring soonest (offence
 * records of expired bans go before live bans). */
static struct guard_ban *ban_slot(struct guard *g, struct guard_ban *ways, const struct guard_addr *a,
				  uint64_t now_ms, uint64_t forget_ms)
{
	for (int w = 0; w < GUARD_WAYS; w++) {
		if (ways[w].family != 0 && ban_match(&ways[w], a))
			return &ways[w];
	}
	struct guard_ban *slot = NULL;
	for (int w = 0; w < GUARD_WAYS && slot == NULL; w++) {
		if (ways[w].family != 0 && ban_stale(&ways[w], now_ms, forget_ms))
			ban_clear(g, &ways[w]);
		if (ways[w].family == 0)
			slot = &ways[w];
	}
	if (slot == NULL) {
		slot = &ways[0];
		for (int w = 1; w < GUARD_WAYS; w++) {
			if (ways[w].expires_ms < slot->expires_ms)
				slot = &ways[w];
		}
		if (slot->expires_ms > now_ms) {   /* a ban in force leaves the kernel set too */
			struct guard_addr gone = { .family = slot->family };
			memcpy(gone.b, slot->b, sizeof(gone.b));
			guard_nft_note(g, &gone, 0);
		}
		ban_clear(g, slot);
	}
	atomic_fetch_add(&g->n_bans, 1);
	memcpy(slot->b, a->b, sizeof(slot->b));
	slot->family = a->family;
	slot->expires_ms = 0;
	slot->strikes = 0;
	return slot;
}

static uint64_t expiry_after(uint64_t now_ms, uint64_t seconds)
{
	return seconds > (UINT64_MAX - now_ms) / 1000 ? UINT64_MAX : now_ms + seconds * 1000;
}

void guard_ban(struct guard *g, const struct guard_addr *a, uint64_t seconds, uint64_t now_ms)
{
	const struct guard_conf *c = atomic_load(&g->conf);
	size_t bucket = ban_bucket(g, a);
	pthread_mutex_t *mu = &g->ban_shards[bucket % GUARD_SHARDS].mu;
	pthread_mutex_lock(mu);
	struct guard_ban *slot = ban_slot(g, &g->bans[bucket * GUARD_WAYS], a, now_ms, c->offence_forget_ms);
	slot->expires_ms = expiry_after(now_ms, seconds);
	if (!allowed(c, a))
		guard_nft_note(g, a, slot->expires_ms);
	pthread_mutex_unlock(mu);
	guard_good_forget(g, a);
}

uint64_t guard_offence(struct guard *g, const struct guard_addr *a, enum guard_offence kind, uint64_t now_ms)
{
	static const enum metric_counter by_kind[] = {
		[GUARD_OFFENCE_ERRORS] = M_GUARD_OFFENCE_ERRORS,
		[GUARD_OFFENCE_HARVEST] = M_GUARD_OFFENCE_HARVEST,
		[GUARD_OFFENCE_PRE_HELO] = M_GUARD_OFFENCE_PRE_HELO,
		[GUARD_OFFENCE_COMMANDS] = M_GUARD_OFFENCE_COMMANDS,
		[GUARD_OFFENCE_EARLY_TALK] = M_GUARD_OFFENCE_EARLY_TALK,
		[GUARD_OFFENCE_AUTH] = M_GUARD_OFFENCE_AUTH,
	};
	if ((unsigned)kind < ARRAY_LEN(by_kind))
		metric_inc(by_kind[kind]);
	const struct guard_conf *c = atomic_load(&g->conf);
	if (allowed(c, a))
		return 0;
	size_t bucket = ban_bucket(g, a);
	pthread_mutex_t *mu = &g->ban_shards[bucket % GUARD_SHARDS].mu;
	pthread_mutex_lock(mu);
	struct guard_ban *slot = ban_slot(g, &g->bans[bucket * GUARD_WAYS], a, now_ms, c->offence_forget_ms);
	if (slot->strikes > 0 && ban_stale(slot, now_ms, c->offence_forget_ms))
		slot->strikes = 0;   /* its record has been forgotten: a first offence again */
	if (slot->strikes < UINT8_MAX)
		slot->strikes++;
	size_t step = slot->strikes <= c->n_offence_steps ? slot->strikes - 1u : c->n_offence_steps - 1u;
	uint64_t seconds = c->offence_ban_s[step];
	uint64_t expires = expiry_after(now_ms, seconds);
	if (expires > slot->expires_ms) {
		slot->expires_ms = expires;   /* never shortens a longer ban already in force */
		guard_nft_note(g, a, expires);
	}
	unsigned strikes = slot->strikes;
	pthread_mutex_unlock(mu);
	guard_good_forget(g, a);   /* an offender is no good sender */
	metric_inc(M_GUARD_OFFENCE_BANS);
	char text[64];
	guard_addr_format(a, text, sizeof(text));
	log_info("guard: %s from %s: banned for %llus (offence %u)", guard_offence_name(kind), text,
		 (unsigned long long)seconds, strikes);
	return seconds;
}

unsigned guard_offences(struct guard *g, const struct guard_addr *a, uint64_t now_ms)
{
	if (atomic_load(&g->n_bans) == 0)
		return 0;
	const struct guard_conf *c = atomic_load(&g->conf);
	size_t bucket = ban_bucket(g, a);
	struct guard_ban *ways = &g->bans[bucket * GUARD_WAYS];
	pthread_mutex_t *mu = &g->ban_shards[bucket % GUARD_SHARDS].mu;
	unsigned strikes = 0;
	pthread_mutex_lock(mu);
	for (int w = 0; w < GUARD_WAYS; w++) {
		if (ways[w].family != 0 && ban_match(&ways[w], a) &&
		    !ban_stale(&ways[w], now_ms, c->offence_forget_ms))
			strikes = ways[w].strikes;
	}
	pthread_mutex_unlock(mu);
	return strikes;
}

const char *guard_offence_name(enum guard_offence kind)
{
	switch (kind) {
	case GUARD_OFFENCE_ERRORS: return "too many errors";
	case GUARD_OFFENCE_HARVEST: return "too many unknown recipients";
	case GUARD_OFFENCE_PRE_HELO: return "too many commands before HELO/EHLO";
	case GUARD_OFFENCE_COMMANDS: return "too many commands";
	case GUARD_OFFENCE_EARLY_TALK: return "spoke before the banner";
	case GUARD_OFFENCE_AUTH: return "too many failed logins";
	}
	return "offence";
}

void guard_ban_restore(struct guard *g, const struct guard_addr *a, uint64_t expires_ms, unsigned strikes,
		       uint64_t now_ms)
{
	const struct guard_conf *c = atomic_load(&g->conf);
	size_t bucket = ban_bucket(g, a);
	pthread_mutex_t *mu = &g->ban_shards[bucket % GUARD_SHARDS].mu;
	pthread_mutex_lock(mu);
	struct guard_ban *slot = ban_slot(g, &g->bans[bucket * GUARD_WAYS], a, now_ms, c->offence_forget_ms);
	slot->expires_ms = expires_ms;
	slot->strikes = (uint8_t)(strikes < UINT8_MAX ? strikes : UINT8_MAX);
	if (ban_stale(slot, now_ms, c->offence_forget_ms))
		ban_clear(g, slot);   /* nothing left to remember */
	pthread_mutex_unlock(mu);
}

void guard_ban_foreach(struct guard *g, uint64_t now_ms, guard_ban_cb *cb, void *arg)
{
	if (atomic_load(&g->n_bans) == 0)
		return;
	const struct guard_conf *c = atomic_load(&g->conf);
	for (size_t bucket = 0; bucket < g->n_ban_buckets; bucket++) {
		struct guard_ban *ways = &g->bans[bucket * GUARD_WAYS];
		pthread_mutex_t *mu = &g->ban_shards[bucket % GUARD_SHARDS].mu;
		pthread_mutex_lock(mu);
		for (int w = 0; w < GUARD_WAYS; w++) {
			if (ways[w].family == 0 || ban_stale(&ways[w], now_ms, c->offence_forget_ms))
				continue;
			struct guard_addr a = { .family = ways[w].family };
			memcpy(a.b, ways[w].b, sizeof(a.b));
			cb(arg, &a, ways[w].expires_ms, ways[w].strikes);
		}
		pthread_mutex_unlock(mu);
	}
}

/* Finds (and, with `lift`, removes) the entry of a.  Without `lift`, true
 * while its ban is in force; an expired entry is removed once stale.  With
 * `lift`, true when any entry (ban or offence record) was removed. */
static bool ban_lookup(struct guard *g, const struct guard_addr *a, uint64_t now_ms, bool lift)
{
	if (atomic_load(&g->n_bans) == 0)
		return false;
	const struct guard_conf *c = atomic_load(&g->conf);
	size_t bucket = ban_bucket(g, a);
	struct guard_ban *ways = &g->bans[bucket * GUARD_WAYS];
	pthread_mutex_t *mu = &g->ban_shards[bucket % GUARD_SHARDS].mu;
	bool found = false;
	pthread_mutex_lock(mu);
	for (int w = 0; w < GUARD_WAYS; w++) {
		if (ways[w].family == 0 || !ban_match(&ways[w], a))
			continue;
		if (lift) {
			if (ways[w].expires_ms > now_ms)
				guard_nft_note(g, a, 0);
			ban_clear(g, &ways[w]);
			found = true;
		} else if (ways[w].expires_ms > now_ms) {
			found = true;
		} else if (ban_stale(&ways[w], now_ms, c->offence_forget_ms)) {
			ban_clear(g, &ways[w]);
		}
		break;
	}
	pthread_mutex_unlock(mu);
	return found;
}

bool guard_unban(struct guard *g, const struct guard_addr *a)
{
	return ban_lookup(g, a, 0, true);
}

bool guard_is_banned(struct guard *g, const struct guard_addr *a, uint64_t now_ms)
{
	return ban_lookup(g, a, now_ms, false);
}

bool guard_is_allowed(struct guard *g, const struct guard_addr *a)
{
	return allowed(atomic_load(&g->conf), a);
}

/* ---- figures and the daemon's guard ------------------------------------------------ */

bool guard_proxy_trusted(struct guard *g, enum guard_class cls, const struct sockaddr *peer, socklen_t len)
{
	const struct guard_conf *c = atomic_load(&g->conf);
	struct guard_addr a;
	if (c->n_proxy_from[cls] == 0 || !guard_addr_from_sockaddr(peer, len, &a))
		return false;
	for (size_t i = 0; i < c->n_proxy_from[cls]; i++) {
		if (guard_cidr_match(&c->proxy_from[cls][i], &a))
			return true;
	}
	return false;
}

uint64_t guard_proxy_timeout_ms(struct guard *g)
{
	return atomic_load(&g->conf)->proxy_timeout_ms;
}

unsigned guard_load_permille(struct guard *g, enum guard_class cls)
{
	const struct guard_conf *c = atomic_load(&g->conf);
	uint64_t conns = atomic_load(&g->tables[cls].conns), cap = c->max_conn[cls];
	if (cap == 0 || conns >= cap)
		return 1000;
	return (unsigned)(conns * 1000 / cap);
}

void guard_stats(struct guard *g, enum guard_class cls, struct guard_stats *out)
{
	struct guard_table *t = &g->tables[cls];
	out->capacity = guard_table_capacity(t);
	out->used = atomic_load(&t->used);
	out->live = atomic_load(&t->live);
	out->connections = atomic_load(&t->conns);
	out->active_networks = atomic_load(&t->active_nets);
	out->evictions = atomic_load(&t->evictions);
	out->bytes = guard_table_bytes(t);
}

uint32_t guard_connections(struct guard *g, enum guard_class cls, enum guard_level level,
			   const struct guard_addr *a)
{
	unsigned prefix = g->prefix[a->family == 4 ? 0 : 1][level];
	if (prefix == 0)
		return 0;
	struct guard_key k;
	guard_key_make(a, (unsigned)level, prefix, &k);
	return guard_table_peek(&g->tables[cls], guard_key_hash(&k, g->hash_key), &k);
}

void guard_process_set(struct guard *g)
{
	atomic_store(&g_process, g);
}

struct guard *guard_process(void)
{
	return atomic_load(&g_process);
}
