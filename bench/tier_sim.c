/*
 * tier_sim.c - the tier placement benchmark: a seeded, synthetic mail access
 * model replayed against Strata's placement policy and three references.
 *
 * Owns: nothing in Strata.  It links Strata's tier library and calls the
 * real policy code the way the daemon's mover does (tier_mover.c): per
 * message reference tier_temperature and tier_pin_for, tier_heat_read_days
 * for the promote rule, tier_heat_event for every read, and tier_place for
 * the decision.  No I/O besides the JSON result (--out) and a summary on
 * stdout.  Single-threaded; memory is O(messages + events), about 300 MB at
 * the default scale.  Candidates are handed to tier_place already in
 * temperature order (presort): the plan is the same, the sort much faster.
 *
 * THE MODEL (every number is a parameter; defaults in brackets; -o key=value
 * applies Strata settings such as tier.promote_days).  Times are real unix
 * seconds: the simulation starts at T0 = 2026-01-05 00:00 UTC, mailboxes hold
 * --history-days [365] of mail before T0, and --days [120] are simulated, of
 * which the first --warmup [60] only warm the policies up; the last 60 are
 * measured.
 *
 *  Accounts: --accounts [50000].  A share --idle [0.25] is idle: nobody has
 *   logged in for 90-365 days (uniform), or ever (30% of them); they still
 *   receive mail, at half the base rate, and read nothing.  The others have
 *   an activity factor m ~ lognormal(0, --activity-sigma [1.0]) (median 1,
 *   the top 1% above 10: a few heavy and many light users).  An active
 *   account logs in as a Poisson process of 0.7 m logins a day (a login
 *   sets last_login; IMAP clients open mail only at logins).
 *  Mail: each account receives a Poisson stream of --mail-rate [0.04] x
 *   sqrt(m) messages a day.  The count is scaled down (a real mailbox gets
 *   tens a day) so that a run takes minutes; what is measured are shares,
 *   which depend on each message's access pattern, not on mailbox size.
 *   Of an active account's messages 15% are Sent copies (created \Seen),
 *   20% land in Junk, the rest in INBOX (idle accounts: 30% Junk).
 *   Sizes: log-normal, clamped to 2 KB..2 MB: INBOX and Archive median
 *   20 KB (sigma 1.3, mean about 47 KB), Sent 12 KB (sigma 1.4), Junk 6 KB
 *   (sigma 0.8).
 *  Folders and their roles: INBOX; Sent ("\Sent"); Archive ("\Archive"):
 *   15% of read INBOX mail is filed there, exponentially 10 days after its
 *   first read; Trash ("\Trash"): 25% of read INBOX mail is deleted, 2 days
 *   after its first read on average, and expunged 30 days later; Junk
 *   ("\Junk"): expunged 30 days after arrival, read (at the next login) 3%
 *   of the time.  Nothing is read in Trash.
 *  Reads of INBOX mail (active accounts): read with probability
 *   min(0.97, 0.6 + 0.15 m) at the first login after arrival (\Seen is set
 *   by the first read); 30% are read again in the same session (within 4
 *   hours); then Poisson(1.0) later re-reads, each at the first login after
 *   a delay drawn from a Pareto tail (1 day x (U^(-1/0.8) - 1): median 1.4
 *   days, 10% after 16 days, 1% after 300): re-reads decay with age.  Sent
 *   mail: Poisson(0.3) re-reads with the same delays.
 *  Long tail: every message older than 30 days outside Junk and Trash is
 *   read at a rate of 1 in 2,000 a day (at the account's next login): a
 *   mailbox of 10,000 old messages sees five such reads a day.
 *  Archive searches (bursts): each active account runs Poisson(1 per 365
 *   days) searches; one reads a share U(0.05, 0.3) of the account's mail
 *   older than 30 days in INBOX, Archive and Sent within an hour, and a
 *   quarter of what it found is read again at a login 1-3 days later.
 *
 * PLACEMENT: two tiers, fast and slow.  The fast tier's capacity is --pct
 *  [5,10,20,30] percent of the bytes stored, re-evaluated at every pass.
 *  Every policy starts at T0 from the placement an age-based archive leaves
 *  (the newest mail on the fast tier up to its capacity); new mail lands on
 *  the fast tier, as in Strata (except for Belady, which may write it to the
 *  slow tier directly).
 *  strata   Every --pass-hours [6] (coarser than tier.interval, for speed) a
 *           pass builds one candidate per message exactly as tier_mover.c's
 *           fold_ref does (temperature, pin, promotable from the read days)
 *           and calls tier_place with tier.batch moves at a time, again and
 *           again as the daemon's one-minute passes would, until it plans
 *           nothing or the budget of the interval is spent (tier.batch moves
 *           per tier.interval, tier.move_rate bytes and tier.move_files
 *           files per second).  Pins: tier.pin (none by default).
 *  age      Age-only demotion (Dovecot's altmove, Cyrus's archive_days): at
 *           every pass mail older than N hours leaves the fast tier; reads
 *           never promote.  N is the largest whole number of hours such that
 *           the fast tier is within its capacity after every pass of the
 *           measured window (chosen per capacity, from the trace).
 *  lru      Size-aware LRU on a fixed capacity: every read or delivery makes
 *           the message most recent; a read on the slow tier promotes it; the
 *           least recently used are demoted until the new one fits.  Moves at
 *           once, without budget.
 *  belady   The offline reference: knowing every future read, on a read (or a
 *           delivery) it keeps the message on the fast tier only when room
 *           can be made by demoting messages whose next read is later than
 *           its own, and demotes those with the furthest next read first.
 *           For objects of different sizes optimal placement is NP-hard and
 *           this is a heuristic upper reference, not a proven bound.
 *  variants (named in --policies), to measure proposed changes to src/tier:
 *   strata-size  the real tier_place, fed each candidate's temperature per
 *                20 KB of size (temp x 20 KB / size): a size-aware ranking;
 *   proto        NOT Strata's code: tier_place's rules for two tiers with
 *                one changed (see proto_place): a promotable message may
 *                displace fast messages colder than half its temperature;
 *   strata-seen  the real tier_place with one prior input changed: unread
 *                mail whose owner logged in more than a day after it
 *                arrived is ranked as \Seen (it was listed and skipped);
 *   proto-size   proto and strata-size; proto-all: all three.
 *
 * MEASURES (measured window only): reads served by the fast tier (share of
 *  reads and of bytes read), per read kind (first read, same-day re-read,
 *  later re-read, long tail, burst, burst re-read), and bytes and messages
 *  moved per day in each direction.
 *
 * Usage: tier_sim [--quick] [--accounts N] [--seed S] [--pct 5,10,20,30]
 *        [--policies strata,age,lru,belady (default); also strata-size,
 *        strata-seen, proto, proto-size, proto-all] [--out FILE]
 *        [-o tier.key=value ...]
 * The prototypes are meant to run with -o tier.promote_days=1.
 * Other model options: --days, --warmup, --history-days, --pass-hours,
 * --mail-rate, --idle, --activity-sigma.
 * --quick: 5,000 accounts, 60 days of history, 30 days simulated (15 warm-up).
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "core.h"
#include "tier.h"

#define DAY ((int64_t)TIER_DAY_S)
#define HOUR ((int64_t)3600)
#define T_NEVER INT64_MAX
#define T0 ((int64_t)1767571200) /* 2026-01-05 00:00 UTC, a Monday */
#define MAX_PCT 8
#define MAX_OVERRIDES 32
#define SIZE_REF 20480.0         /* the size variants' unit */

/* ---- parameters --------------------------------------------------------------- */

enum policy { P_STRATA, P_STRATA_SIZE, P_STRATA_SEEN, P_PROTO, P_PROTO_SIZE, P_PROTO_ALL, P_AGE, P_LRU,
	      P_BELADY, P_COUNT };
static const char *const policy_name[P_COUNT] = { "strata", "strata-size", "strata-seen", "proto",
						  "proto-size", "proto-all", "age", "lru", "belady" };

struct params {
	uint64_t seed;
	uint32_t accounts;
	int history_days, days, warmup;
	int pass_hours;
	double idle, activity_sigma, mail_rate;
	double pct[MAX_PCT];
	size_t n_pct;
	bool run[P_COUNT];        /* per enum policy */
	const char *out;
	char *overrides[MAX_OVERRIDES];
	size_t n_over;
};

/* Fixed model constants (documented in the header comment). */
#define LOGIN_RATE 0.7
#define IDLE_NEVER 0.3
#define SENT_SHARE 0.15
#define JUNK_SHARE 0.20
#define IDLE_JUNK_SHARE 0.30
#define P_AGAIN 0.30
#define MU_REREAD 1.0
#define MU_SENT_REREAD 0.3
#define PARETO_ALPHA 0.8
#define P_TRASH 0.25
#define P_ARCHIVE 0.15
#define TRASH_DELAY_D 2.0
#define ARCHIVE_DELAY_D 10.0
#define EXPUNGE_D 30
#define P_JUNK_READ 0.03
#define TAIL_PER_DAY (1.0 / 2000)
#define TAIL_AGE_D 30
#define BURST_PER_DAY (1.0 / 365)
#define P_BURST_REREAD 0.25

/* ---- random numbers: splitmix64 seeding xoshiro256** ---------------------------- */

struct rng { uint64_t s[4]; };

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static void rng_seed(struct rng *r, uint64_t seed, uint64_t stream)
{
	uint64_t x = seed * 0x100000001b3ull ^ stream;
	for (int i = 0; i < 4; i++)
		r->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(struct rng *r)
{
	uint64_t *s = r->s, res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return res;
}

/* Uniform in (0, 1): never 0, so log() is safe. */
static double unif(struct rng *r)
{
	return ((double)(rng_next(r) >> 11) + 0.5) / 9007199254740992.0;
}

static double normal(struct rng *r)
{
	return sqrt(-2.0 * log(unif(r))) * cos(2.0 * M_PI * unif(r));
}

static double lognormal(struct rng *r, double mu, double sigma)
{
	return exp(mu + sigma * normal(r));
}

static double expo(struct rng *r, double mean)
{
	return -log(unif(r)) * mean;
}

/* Poisson by multiplication (Knuth); means here are small, the loop bounded. */
static unsigned poisson(struct rng *r, double mean)
{
	double l = exp(-mean), p = 1.0;
	unsigned k = 0;
	while (k < 1000) {
		p *= unif(r);
		if (p <= l)
			break;
		k++;
	}
	return k;
}

static int64_t uniform_s(struct rng *r, int64_t lo, int64_t hi)
{
	return lo + (int64_t)(unif(r) * (double)(hi - lo));
}

/* ---- the trace -------------------------------------------------------------------- */

enum folder { F_INBOX, F_SENT, F_ARCHIVE, F_TRASH, F_JUNK, F_COUNT };
static const char *const folder_name[F_COUNT] = { "INBOX", "Sent", "Archive", "Trash", "Junk" };
static const char *const folder_use[F_COUNT] = { "", "\\Sent", "\\Archive", "\\Trash", "\\Junk" };

enum read_kind { K_FIRST, K_SAMEDAY, K_REREAD, K_TAIL, K_BURST, K_BURST_REREAD, K_COUNT };
static const char *const kind_name[K_COUNT] = { "first", "same_day", "reread", "tail", "burst",
						 "burst_reread" };

/* Event order within one second: logins, deliveries, reads, expunges. */
enum ev_type { E_LOGIN, E_DELIVER, E_READ, E_EXPUNGE };

struct msg {
	int64_t received, seen_at, move_at, gone_at;
	uint32_t size, account;
	uint8_t folder0, folder1; /* folder before and from move_at */
};

struct event {
	int64_t t;
	uint32_t id;              /* message, or account for E_LOGIN */
	uint8_t type, kind;
};

struct trace {
	struct msg *m;
	size_t n_msg, cap_msg;
	struct event *e;
	size_t n_ev, cap_ev;
	int64_t *last_login0;     /* per account, as of T0; 0 = never */
	char (*addr)[32];         /* per account */
	uint32_t n_acct;
	int64_t t_end, t_measure;
	uint64_t reads, bytes_at_t0;
};

static int64_t msg_folder_at(const struct msg *m, int64_t t)
{
	return t >= m->move_at ? m->folder1 : m->folder0;
}

/* One account's generation state: its logins and its messages so far. */
struct acct_gen {
	struct rng r;
	const struct params *p;
	int64_t t_hist, t_end;
	int64_t *login;
	size_t n_login, cap_login;
	struct msg *m;
	size_t n_m, cap_m;
	struct event *rd;         /* reads; id = local message index */
	size_t n_rd, cap_rd;
	double m_act;
	bool idle;
};

static void *grow(void *p, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap)
		return p;
	size_t c = *cap ? *cap : 64;
	while (c < need)
		c *= 2;
	*cap = c;
	return xreallocarray(p, c, elem);
}

/* The first login at or after t, or T_NEVER. */
static int64_t next_login(const struct acct_gen *g, int64_t t)
{
	size_t lo = 0, hi = g->n_login;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (g->login[mid] < t)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < g->n_login ? g->login[lo] : T_NEVER;
}

static void add_read(struct acct_gen *g, size_t local, int64_t t, enum read_kind k)
{
	if (t >= g->t_end)
		return;
	g->rd = grow(g->rd, &g->cap_rd, g->n_rd + 1, sizeof(*g->rd));
	g->rd[g->n_rd++] = (struct event){ t, (uint32_t)local, E_READ, (uint8_t)k };
}

/* Delay of a later re-read: 1 day x (U^(-1/alpha) - 1), a Pareto tail. */
static int64_t reread_delay(struct rng *r)
{
	double d = pow(unif(r), -1.0 / PARETO_ALPHA) - 1.0;
	return (int64_t)(fmin(d, 4000.0) * (double)DAY) + 60;
}

static uint32_t msg_size(struct rng *r, enum folder f)
{
	double med = f == F_JUNK ? 6144 : f == F_SENT ? 12288 : 20480;
	double sigma = f == F_JUNK ? 0.8 : f == F_SENT ? 1.4 : 1.3;
	double s = lognormal(r, log(med), sigma);
	return (uint32_t)fmax(2048.0, fmin(s, 2097152.0));
}

static void gen_rereads(struct acct_gen *g, size_t i, int64_t from, double mean)
{
	unsigned k = poisson(&g->r, mean);
	for (unsigned j = 0; j < k; j++) {
		int64_t l = next_login(g, from + reread_delay(&g->r));
		if (l != T_NEVER)
			add_read(g, i, l + uniform_s(&g->r, 0, 600), K_REREAD);
	}
}

static void gen_inbox(struct acct_gen *g, size_t i)
{
	struct msg *m = &g->m[i];
	if (g->idle || unif(&g->r) >= fmin(0.97, 0.6 + 0.15 * g->m_act))
		return;
	int64_t l1 = next_login(g, m->received + 60);
	if (l1 == T_NEVER || l1 >= g->t_end)
		return;
	int64_t t1 = l1 + uniform_s(&g->r, 0, 600);
	add_read(g, i, t1, K_FIRST);
	if (unif(&g->r) < P_AGAIN)
		add_read(g, i, t1 + uniform_s(&g->r, 60, 4 * HOUR), K_SAMEDAY);
	gen_rereads(g, i, t1, MU_REREAD);
	double u = unif(&g->r);
	if (u < P_TRASH) {
		m->move_at = t1 + 60 + (int64_t)(expo(&g->r, TRASH_DELAY_D) * (double)DAY);
		m->folder1 = F_TRASH;
		m->gone_at = m->move_at + EXPUNGE_D * DAY;
	} else if (u < P_TRASH + P_ARCHIVE) {
		m->move_at = t1 + 60 + (int64_t)(expo(&g->r, ARCHIVE_DELAY_D) * (double)DAY);
		m->folder1 = F_ARCHIVE;
	}
}

static void gen_message(struct acct_gen *g, int64_t t)
{
	g->m = grow(g->m, &g->cap_m, g->n_m + 1, sizeof(*g->m));
	size_t i = g->n_m++;
	struct msg *m = &g->m[i];
	double u = unif(&g->r);
	enum folder f = g->idle ? (u < IDLE_JUNK_SHARE ? F_JUNK : F_INBOX)
				: (u < SENT_SHARE ? F_SENT : u < SENT_SHARE + JUNK_SHARE ? F_JUNK : F_INBOX);
	*m = (struct msg){ t, T_NEVER, T_NEVER, T_NEVER, msg_size(&g->r, f), 0, (uint8_t)f, (uint8_t)f };
	if (f == F_JUNK) {
		m->gone_at = t + EXPUNGE_D * DAY;
		int64_t l = g->idle ? T_NEVER : next_login(g, t + 60);
		if (l != T_NEVER && unif(&g->r) < P_JUNK_READ)
			add_read(g, i, l + uniform_s(&g->r, 0, 600), K_FIRST);
	} else if (f == F_SENT) {
		m->seen_at = t;
		gen_rereads(g, i, t, MU_SENT_REREAD);
	} else {
		gen_inbox(g, i);
	}
}

/* Readable by a search or a long-tail read at t: exists, not in Junk/Trash. */
static bool old_readable(const struct msg *m, int64_t t)
{
	int64_t f = msg_folder_at(m, t);
	return m->received < t - TAIL_AGE_D * DAY && m->gone_at > t && f != F_JUNK && f != F_TRASH;
}

/* Messages are generated in time order, so those older than `t - 30 days`
 * are a prefix of g->m. */
static size_t old_prefix(const struct acct_gen *g, int64_t t)
{
	size_t n = 0;
	while (n < g->n_m && g->m[n].received < t - TAIL_AGE_D * DAY)
		n++;
	return n;
}

/* Long-tail reads: each message older than 30 days (outside Junk and Trash)
 * is read at TAIL_PER_DAY a day, at the account's next login. */
static void gen_tail(struct acct_gen *g, int64_t t0)
{
	for (size_t i = 0; i < g->n_m; i++) {
		int64_t from = g->m[i].received + TAIL_AGE_D * DAY;
		if (from < t0)
			from = t0;
		if (from >= g->t_end)
			break; /* messages are in time order */
		unsigned k = poisson(&g->r, TAIL_PER_DAY * (double)(g->t_end - from) / (double)DAY);
		for (unsigned j = 0; j < k; j++) {
			int64_t l = next_login(g, uniform_s(&g->r, from, g->t_end));
			if (l != T_NEVER && old_readable(&g->m[i], l))
				add_read(g, i, l + uniform_s(&g->r, 0, 1800), K_TAIL);
		}
	}
}

static void gen_bursts(struct acct_gen *g, int64_t t0)
{
	size_t first = 0;
	while (first < g->n_login && g->login[first] < t0)
		first++;
	if (first == g->n_login)
		return;
	unsigned nb = poisson(&g->r, BURST_PER_DAY * (double)(g->t_end - t0) / (double)DAY);
	for (unsigned b = 0; b < nb; b++) {
		int64_t l = g->login[first + (size_t)(unif(&g->r) * (double)(g->n_login - first))];
		double share = 0.05 + 0.25 * unif(&g->r);
		size_t n = old_prefix(g, l);
		for (size_t i = 0; i < n; i++) {
			if (!old_readable(&g->m[i], l) || unif(&g->r) >= share)
				continue;
			add_read(g, i, l + uniform_s(&g->r, 0, HOUR), K_BURST);
			if (unif(&g->r) < P_BURST_REREAD) {
				int64_t l2 = next_login(g, l + uniform_s(&g->r, DAY, 3 * DAY));
				if (l2 != T_NEVER)
					add_read(g, i, l2 + uniform_s(&g->r, 0, 1800), K_BURST_REREAD);
			}
		}
	}
}

static void trace_push_event(struct trace *tr, int64_t t, uint32_t id, enum ev_type type, uint8_t kind)
{
	tr->e = grow(tr->e, &tr->cap_ev, tr->n_ev + 1, sizeof(*tr->e));
	tr->e[tr->n_ev++] = (struct event){ t, id, (uint8_t)type, kind };
}

/* A read counts when it happens before the message is gone and not in Trash. */
static bool read_happens(const struct msg *m, int64_t t)
{
	return t < m->gone_at && msg_folder_at(m, t) != F_TRASH;
}

/* Moves the account's messages and reads into the trace. */
static void gen_emit(struct acct_gen *g, struct trace *tr, uint32_t a)
{
	uint32_t *gid = xcalloc(g->n_m ? g->n_m : 1, sizeof(uint32_t));
	for (size_t k = 0; k < g->n_rd; k++) {
		struct msg *m = &g->m[g->rd[k].id];
		if (read_happens(m, g->rd[k].t) && g->rd[k].t < m->seen_at)
			m->seen_at = g->rd[k].t;
	}
	for (size_t i = 0; i < g->n_m; i++) {
		struct msg *m = &g->m[i];
		gid[i] = UINT32_MAX;
		if (m->gone_at <= T0 || m->received >= g->t_end)
			continue;
		m->account = a;
		tr->m = grow(tr->m, &tr->cap_msg, tr->n_msg + 1, sizeof(*tr->m));
		gid[i] = (uint32_t)tr->n_msg;
		tr->m[tr->n_msg++] = *m;
		if (m->received >= T0)
			trace_push_event(tr, m->received, gid[i], E_DELIVER, 0);
		else
			tr->bytes_at_t0 += m->size;
		if (m->gone_at < g->t_end)
			trace_push_event(tr, m->gone_at, gid[i], E_EXPUNGE, 0);
	}
	for (size_t k = 0; k < g->n_rd; k++) {
		const struct event *r = &g->rd[k];
		const struct msg *m = &g->m[r->id];
		if (r->t >= T0 && gid[r->id] != UINT32_MAX && read_happens(m, r->t)) {
			trace_push_event(tr, r->t, gid[r->id], E_READ, r->kind);
			tr->reads++;
		}
	}
	int64_t last_day = -1;
	for (size_t k = 0; k < g->n_login; k++) {
		if (g->login[k] < T0) {
			tr->last_login0[a] = g->login[k];
		} else if (g->login[k] / DAY != last_day) { /* one event a day is enough */
			last_day = g->login[k] / DAY;
			trace_push_event(tr, g->login[k], a, E_LOGIN, 0);
		}
	}
	free(gid);
}

static void gen_logins(struct acct_gen *g, struct trace *tr, uint32_t a)
{
	if (g->idle) {
		tr->last_login0[a] = unif(&g->r) < IDLE_NEVER ? 0 : T0 - uniform_s(&g->r, 90 * DAY, 365 * DAY);
		return;
	}
	double rate = LOGIN_RATE * g->m_act / (double)DAY;
	for (int64_t t = g->t_hist + (int64_t)expo(&g->r, 1.0 / rate); t < g->t_end && g->n_login < 1000000;
	     t += (int64_t)expo(&g->r, 1.0 / rate) + 1) {
		g->login = grow(g->login, &g->cap_login, g->n_login + 1, sizeof(int64_t));
		g->login[g->n_login++] = t;
	}
}

static void gen_account(struct acct_gen *g, struct trace *tr, uint32_t a)
{
	const struct params *p = g->p;
	g->n_login = g->n_m = g->n_rd = 0;
	rng_seed(&g->r, p->seed, a);
	g->idle = unif(&g->r) < p->idle;
	g->m_act = g->idle ? 0 : lognormal(&g->r, 0, p->activity_sigma);
	snprintf(tr->addr[a], sizeof(tr->addr[a]), "u%06" PRIu32 "@example.net", a);
	gen_logins(g, tr, a);
	double rate = (g->idle ? 0.5 * p->mail_rate : p->mail_rate * sqrt(g->m_act)) / (double)DAY;
	for (int64_t t = g->t_hist + (int64_t)expo(&g->r, 1.0 / rate); t < g->t_end && g->n_m < 1000000;
	     t += (int64_t)expo(&g->r, 1.0 / rate) + 1)
		gen_message(g, t);
	if (!g->idle) {
		gen_tail(g, T0);
		gen_bursts(g, T0);
	}
	gen_emit(g, tr, a);
}

static int ev_cmp(const void *a, const void *b)
{
	const struct event *x = a, *y = b;
	if (x->t != y->t)
		return x->t < y->t ? -1 : 1;
	if (x->type != y->type)
		return x->type < y->type ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

static void trace_build(struct trace *tr, const struct params *p)
{
	memset(tr, 0, sizeof(*tr));
	tr->n_acct = p->accounts;
	tr->t_end = T0 + p->days * DAY;
	tr->t_measure = T0 + p->warmup * DAY;
	tr->last_login0 = xcalloc(p->accounts, sizeof(int64_t));
	tr->addr = xcalloc(p->accounts, sizeof(*tr->addr));
	struct acct_gen g = { .p = p, .t_hist = T0 - p->history_days * DAY, .t_end = tr->t_end };
	for (uint32_t a = 0; a < p->accounts; a++)
		gen_account(&g, tr, a);
	free(g.login);
	free(g.m);
	free(g.rd);
	qsort(tr->e, tr->n_ev, sizeof(*tr->e), ev_cmp);
}

static void trace_free(struct trace *tr)
{
	free(tr->m);
	free(tr->e);
	free(tr->last_login0);
	free(tr->addr);
}

/* next[i]: for a read or a delivery, the time of the message's next read
 * after event i (T_NEVER if none); first[m]: its first read at or after T0. */
static int64_t *trace_next_use(const struct trace *tr, int64_t **first_r)
{
	int64_t *next = xcalloc(tr->n_ev ? tr->n_ev : 1, sizeof(int64_t));
	int64_t *after = xcalloc(tr->n_msg ? tr->n_msg : 1, sizeof(int64_t));
	for (size_t i = 0; i < tr->n_msg; i++)
		after[i] = T_NEVER;
	for (size_t i = tr->n_ev; i-- > 0;) {
		const struct event *e = &tr->e[i];
		if (e->type == E_READ || e->type == E_DELIVER)
			next[i] = after[e->id];
		if (e->type == E_READ)
			after[e->id] = e->t;
	}
	*first_r = after;
	return next;
}

/* ---- the replay ----------------------------------------------------------------- */


struct result {
	uint64_t reads, hits, bytes_read, bytes_hit;
	uint64_t kind_reads[K_COUNT], kind_hits[K_COUNT];
	uint64_t up_n, up_bytes, down_n, down_bytes;
	double fast_share_sum;    /* fast bytes / stored bytes, summed over measured passes */
	uint64_t passes;
	double secs;
	int64_t age_hours;        /* age: the N used */
};

struct heap_ent { int64_t key; uint32_t id; };
struct temp_key { uint64_t key; uint32_t cand; };

struct sim {
	const struct trace *tr;
	const struct params *p;
	const struct settings *s;
	enum policy pol;
	double pct;
	uint8_t *fast;            /* per message: on the fast tier */
	uint8_t *present;
	uint64_t fast_bytes, stored, cap;
	int64_t now;
	struct result res;
	/* strata */
	struct store_heat *heat;
	int64_t *last_login;
	struct tier_cand *cand;
	struct tier_plan *plan;
	size_t *order;            /* proto_place's work array */
	struct tier_cand *cand2;  /* presort's */
	struct temp_key *keys;    /* presort's, 2n */
	size_t *radix;            /* presort's digit counts, 65537 */
	/* age */
	int64_t age_s;
	/* lru: doubly linked, head = most recent */
	uint32_t *prev, *next, head, tail;
	/* belady */
	const int64_t *ev_next;
	int64_t *key;             /* current next use of a fast message */
	struct heap_ent *heap;
	size_t n_heap, cap_heap;
	struct heap_ent *victims;
	size_t cap_victims;
};

#define NIL UINT32_MAX

static bool measuring(const struct sim *x)
{
	return x->now >= x->tr->t_measure;
}

static void move_msg(struct sim *x, uint32_t id, bool to_fast)
{
	uint32_t size = x->tr->m[id].size;
	if (to_fast == (x->fast[id] != 0))
		return;
	x->fast[id] = to_fast;
	if (to_fast)
		x->fast_bytes += size;
	else
		x->fast_bytes -= size;
	if (!measuring(x))
		return;
	if (to_fast) {
		x->res.up_n++;
		x->res.up_bytes += size;
	} else {
		x->res.down_n++;
		x->res.down_bytes += size;
	}
}

/* ---- lru ---- */

static void lru_unlink(struct sim *x, uint32_t id)
{
	uint32_t p = x->prev[id], n = x->next[id];
	if (p != NIL)
		x->next[p] = n;
	else
		x->head = n;
	if (n != NIL)
		x->prev[n] = p;
	else
		x->tail = p;
	x->prev[id] = x->next[id] = NIL;
}

static void lru_push_head(struct sim *x, uint32_t id)
{
	x->prev[id] = NIL;
	x->next[id] = x->head;
	if (x->head != NIL)
		x->prev[x->head] = id;
	x->head = id;
	if (x->tail == NIL)
		x->tail = id;
}

static void lru_evict_to(struct sim *x, uint64_t limit)
{
	while (x->fast_bytes > limit && x->tail != NIL) {
		uint32_t v = x->tail;
		lru_unlink(x, v);
		move_msg(x, v, false);
	}
}

/* Makes id the most recent fast message (promoting it when needed). */
static void lru_touch(struct sim *x, uint32_t id, bool delivery)
{
	uint32_t size = x->tr->m[id].size;
	if (x->fast[id]) {
		lru_unlink(x, id);
		lru_push_head(x, id);
		return;
	}
	if (size > x->cap)
		return;
	lru_evict_to(x, x->cap - size);
	if (delivery) {
		x->fast[id] = 1;
		x->fast_bytes += size;
	} else {
		move_msg(x, id, true);
	}
	lru_push_head(x, id);
}

/* ---- belady: a max-heap of (next use, message), entries checked lazily ---- */

static void heap_push(struct sim *x, int64_t key, uint32_t id)
{
	x->heap = grow(x->heap, &x->cap_heap, x->n_heap + 1, sizeof(*x->heap));
	size_t i = x->n_heap++;
	while (i > 0 && x->heap[(i - 1) / 2].key < key) {
		x->heap[i] = x->heap[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	x->heap[i] = (struct heap_ent){ key, id };
}

static struct heap_ent heap_pop(struct sim *x)
{
	struct heap_ent top = x->heap[0], last = x->heap[--x->n_heap];
	size_t i = 0, n = x->n_heap;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= n)
			break;
		if (c + 1 < n && x->heap[c + 1].key > x->heap[c].key)
			c++;
		if (x->heap[c].key <= last.key)
			break;
		x->heap[i] = x->heap[c];
		i = c;
	}
	if (n > 0)
		x->heap[i] = last;
	return top;
}

/* Drops stale entries from the top; false when the heap is empty. */
static bool heap_top_valid(struct sim *x)
{
	while (x->n_heap > 0) {
		const struct heap_ent *h = &x->heap[0];
		if (x->fast[h->id] && x->key[h->id] == h->key)
			return true;
		heap_pop(x);
	}
	return false;
}

static void belady_evict_to(struct sim *x, uint64_t limit)
{
	while (x->fast_bytes > limit && heap_top_valid(x)) {
		struct heap_ent h = heap_pop(x);
		move_msg(x, h.id, false);
	}
}

/* Keeps (or brings) id on the fast tier when room can be made by demoting
 * messages read later than `next_use`. */
static void belady_offer(struct sim *x, uint32_t id, int64_t next_use, bool delivery)
{
	uint32_t size = x->tr->m[id].size;
	if (x->fast[id]) {
		x->key[id] = next_use;
		heap_push(x, next_use, id);
		return;
	}
	if (next_use == T_NEVER || size > x->cap)
		return;
	uint64_t room = x->cap > x->fast_bytes ? x->cap - x->fast_bytes : 0;
	size_t nv = 0;
	while (room < size && heap_top_valid(x) && x->heap[0].key > next_use) {
		x->victims = grow(x->victims, &x->cap_victims, nv + 1, sizeof(*x->victims));
		x->victims[nv] = heap_pop(x);
		room += x->tr->m[x->victims[nv++].id].size;
	}
	if (room < size) {
		for (size_t i = 0; i < nv; i++)
			heap_push(x, x->victims[i].key, x->victims[i].id);
		return;
	}
	for (size_t i = 0; i < nv; i++)
		move_msg(x, x->victims[i].id, false);
	if (delivery) {
		x->fast[id] = 1;
		x->fast_bytes += size;
	} else {
		move_msg(x, id, true);
	}
	x->key[id] = next_use;
	heap_push(x, next_use, id);
}

/* ---- strata: candidates exactly as tier_mover.c's fold_ref builds them ---- */

static void presort(struct sim *x, size_t n)
{
	/* temperatures are >= 0, so their IEEE bits order like the values:
	 * an LSD radix sort on the complemented bits sorts descending */
	struct temp_key *a = x->keys, *b = x->keys + n;
	for (size_t i = 0; i < n; i++) {
		uint64_t bits;
		memcpy(&bits, &x->cand[i].temp, sizeof(bits));
		a[i] = (struct temp_key){ ~bits, (uint32_t)i };
	}
	for (int shift = 0; shift < 64; shift += 16) {
		size_t *count = x->radix;
		memset(count, 0, 65537 * sizeof(*count));
		for (size_t i = 0; i < n; i++)
			count[((a[i].key >> shift) & 0xffff) + 1]++;
		for (size_t d = 1; d <= 65536; d++)
			count[d] += count[d - 1];
		for (size_t i = 0; i < n; i++)
			b[count[(a[i].key >> shift) & 0xffff]++] = a[i];
		struct temp_key *t = a;
		a = b;
		b = t;
	}
	for (size_t i = 0; i < n; i++)
		x->cand2[i] = x->cand[a[i].cand];
	struct tier_cand *t = x->cand;
	x->cand = x->cand2;
	x->cand2 = t;
}

static size_t strata_candidates(struct sim *x)
{
	const struct trace *tr = x->tr;
	uint64_t half_life = x->s->tier_half_life_ms / 1000;
	size_t n = 0;
	for (uint32_t id = 0; id < tr->n_msg; id++) {
		if (!x->present[id])
			continue;
		const struct msg *m = &tr->m[id];
		int f = (int)msg_folder_at(m, x->now);
		const struct store_heat *h = &x->heat[id];
		struct store_tier_ref r = {
			.blob_id = id, .tier = x->fast[id] ? 0 : 1, .size = m->size, .received = m->received,
			.mailbox = folder_name[f], .special_use = folder_use[f], .account = tr->addr[m->account],
			.last_login = x->last_login[m->account],
			.flags = m->seen_at <= x->now ? MSG_FLAG_SEEN : 0,
			.heat = h->score, .heat_updated = h->updated, .reads_days = h->reads_days,
		};
		/* the seen variants: mail the account's owner has logged in over a
		 * day after it arrived without opening it ranks as \Seen */
		if ((x->pol == P_STRATA_SEEN || x->pol == P_PROTO_ALL) && r.last_login > m->received + DAY)
			r.flags |= MSG_FLAG_SEEN;
		struct tier_cand *c = &x->cand[n++];
		c->blob_id = r.blob_id;
		memset(&c->id, 0, sizeof(c->id));
		c->tier = r.tier;
		c->size = r.size;
		c->temp = tier_temperature(&r, x->now, half_life);
		/* Strata's own policies rank as tier_mover.c does; the size
		 * variants below scale the plain temperature their own way */
		if (x->pol == P_STRATA || x->pol == P_STRATA_SEEN)
			c->temp = tier_rank(c->temp, r.size);
		c->pin = tier_pin_for(x->s, r.mailbox, r.special_use, r.account);
		c->promotable = r.heat_updated != 0 &&
				tier_heat_read_days(r.reads_days, r.heat_updated, x->now) >= x->s->tier_promote_days;
		/* the size variants: temperature per SIZE_REF bytes */
		if (x->pol == P_STRATA_SIZE || x->pol == P_PROTO_SIZE || x->pol == P_PROTO_ALL)
			c->temp *= SIZE_REF / (double)r.size;
	}
	presort(x, n);
	return n;
}

/* ---- the prototype placement (policies proto, proto-size) ----
 * NOT Strata's code: tier_place's rules for two tiers (no pins to move:
 * the benchmark has none) with one rule changed, to measure a proposed
 * change to src/tier/tier_place.c: a promotable blob that does not fit
 * displaces fast blobs colder than half its temperature, coldest first
 * (tier_place only promotes into free room, and its demotion puts blobs
 * back up to the target, so in steady state there is none).  Demotion is
 * tier_place's: coldest first down to the low-water mark, then the hottest
 * of those put back while they fit under the target.  Plans at most max
 * moves; returns the count. */
static int proto_by_temp_desc(const void *a, const void *b, void *ctx)
{
	const struct tier_cand *c = ctx;
	double x = c[*(const size_t *)a].temp, y = c[*(const size_t *)b].temp;
	return x < y ? 1 : x > y ? -1 : 0;
}

static size_t proto_place(struct tier_cand *c, size_t n, uint64_t cap, size_t max, struct tier_plan *out,
			  size_t *order)
{
	uint64_t used = 0, goal = cap / 100 * TIER_LOW_WATER;
	size_t count = 0;
	for (size_t i = 0; i < n; i++) {
		order[i] = i;
		if (c[i].tier == 0)
			used += c[i].size;
	}
	qsort_r(order, n, sizeof(size_t), proto_by_temp_desc, c);
	size_t cold = n; /* order[cold..n) are planned off the fast tier or slow */
	if (used > cap) {
		while (cold > 0 && used > goal && count < max) {
			size_t i = order[--cold];
			if (c[i].tier != 0 || c[i].pin >= 0)
				continue;
			out[count++] = (struct tier_plan){ i, 1 };
			used -= c[i].size;
		}
		for (size_t k = count; k-- > 0;) { /* put back the hottest that fit */
			size_t i = out[k].cand;
			if (used + c[i].size <= cap) {
				used += c[i].size;
				out[k] = out[--count];
			}
		}
	}
	for (size_t k = 0; k < n && count < max; k++) {
		size_t i = order[k];
		if (k >= cold || c[i].tier == 0 || !c[i].promotable || c[i].pin >= 0)
			continue;
		while (used + c[i].size > cap && cold > k + 1 && count + 1 < max) {
			size_t v = order[cold - 1];
			if (c[v].temp * 2 >= c[i].temp)
				break;
			cold--;
			if (c[v].tier == 0 && c[v].pin < 0) {
				out[count++] = (struct tier_plan){ v, 1 };
				used -= c[v].size;
			}
		}
		if (used + c[i].size <= cap) {
			out[count++] = (struct tier_plan){ i, 0 };
			used += c[i].size;
		}
	}
	return count;
}

/* One coarse pass = pass_hours of the daemon's tier.interval passes: plans of
 * tier.batch moves until nothing is planned or the interval's budget is
 * spent.  Moves apply at once (the budget only bounds how many). */
static void strata_pass(struct sim *x)
{
	const struct settings *s = x->s;
	double secs = (double)x->p->pass_hours * 3600.0;
	uint64_t passes = (uint64_t)(secs * 1000.0 / (double)s->tier_interval_ms);
	double bytes_budget = (double)s->tier_move_bytes_per_s * secs;
	double files_budget = (double)s->tier_move_files_per_s * secs;
	size_t n = strata_candidates(x);
	uint64_t cap[2] = { x->cap ? x->cap : 1, 0 };
	for (uint64_t k = 0; k < passes && passes > 0; k++) {
		size_t np = x->pol == P_PROTO || x->pol == P_PROTO_SIZE || x->pol == P_PROTO_ALL
				    ? proto_place(x->cand, n, cap[0], s->tier_batch, x->plan, x->order)
				    : tier_place(x->cand, n, cap, 2, s->tier_batch, x->plan);
		for (size_t i = 0; i < np; i++) {
			struct tier_cand *c = &x->cand[x->plan[i].cand];
			if (bytes_budget < (double)c->size || files_budget < 1.0)
				return;
			bytes_budget -= (double)c->size;
			files_budget -= 1.0;
			move_msg(x, (uint32_t)c->blob_id, x->plan[i].to == 0);
			c->tier = x->plan[i].to;
		}
		if (np < s->tier_batch)
			break;
	}
}

static void age_pass(struct sim *x)
{
	int64_t limit = x->now - x->age_s;
	for (uint32_t id = 0; id < x->tr->n_msg; id++) {
		if (x->present[id] && x->fast[id] && x->tr->m[id].received < limit)
			move_msg(x, id, false);
	}
}

/* A pass: capacity re-evaluated, then the policy's periodic work. */
static void sim_pass(struct sim *x)
{
	x->cap = (uint64_t)((double)x->stored * x->pct / 100.0);
	switch (x->pol) {
	case P_AGE:
		age_pass(x);
		break;
	case P_LRU:
		lru_evict_to(x, x->cap);
		break;
	case P_BELADY:
		belady_evict_to(x, x->cap);
		break;
	default:
		strata_pass(x);
		break;
	}
	if (measuring(x) && x->stored) {
		x->res.fast_share_sum += (double)x->fast_bytes / (double)x->stored;
		x->res.passes++;
	}
}

static void sim_read(struct sim *x, const struct event *e, int64_t next_use)
{
	const struct msg *m = &x->tr->m[e->id];
	bool hit = x->fast[e->id] != 0;
	if (measuring(x)) {
		x->res.reads++;
		x->res.bytes_read += m->size;
		x->res.kind_reads[e->kind]++;
		if (hit) {
			x->res.hits++;
			x->res.bytes_hit += m->size;
			x->res.kind_hits[e->kind]++;
		}
	}
	switch (x->pol) {
	case P_LRU:
		lru_touch(x, e->id, false);
		break;
	case P_BELADY:
		belady_offer(x, e->id, next_use, false);
		break;
	case P_AGE:
		break;
	default:
		x->last_login[m->account] = e->t;
		tier_heat_event(&x->heat[e->id], e->t, TIER_EVENT_READ, x->s->tier_half_life_ms / 1000);
		break;
	}
}

static void sim_deliver(struct sim *x, uint32_t id, int64_t next_use)
{
	x->present[id] = 1;
	x->stored += x->tr->m[id].size;
	if (x->pol == P_LRU) {
		lru_touch(x, id, true);
	} else if (x->pol == P_BELADY) {
		belady_offer(x, id, next_use, true);
	} else {
		x->fast[id] = 1;
		x->fast_bytes += x->tr->m[id].size;
	}
}

static void sim_expunge(struct sim *x, uint32_t id)
{
	uint32_t size = x->tr->m[id].size;
	x->present[id] = 0;
	x->stored -= size;
	if (!x->fast[id])
		return;
	if (x->pol == P_LRU)
		lru_unlink(x, id);
	x->fast[id] = 0;
	x->fast_bytes -= size;
}


static int by_received(const void *a, const void *b, void *ctx)
{
	const struct msg *m = ctx;
	int64_t x = m[*(const uint32_t *)a].received, y = m[*(const uint32_t *)b].received;
	return x < y ? -1 : x > y;
}

/* Every message id, oldest first. */
static uint32_t *order_by_received(const struct trace *tr)
{
	uint32_t *ord = xcalloc(tr->n_msg ? tr->n_msg : 1, sizeof(uint32_t));
	for (uint32_t id = 0; id < tr->n_msg; id++)
		ord[id] = id;
	qsort_r(ord, tr->n_msg, sizeof(uint32_t), by_received, tr->m);
	return ord;
}

/* The placement an age-based archive leaves at T0: the newest mail on the
 * fast tier up to its capacity. */
static void sim_initial(struct sim *x, const uint32_t *ord, const int64_t *first_use)
{
	const struct trace *tr = x->tr;
	x->stored = tr->bytes_at_t0;
	x->cap = (uint64_t)((double)x->stored * x->pct / 100.0);
	bool full = false;
	for (size_t k = tr->n_msg; k-- > 0;) {
		uint32_t id = ord[k];
		const struct msg *m = &tr->m[id];
		if (m->received >= T0)
			continue;
		x->present[id] = 1;
		if (full || x->fast_bytes + m->size > x->cap) {
			full = true;
			continue;
		}
		x->fast[id] = 1;
		x->fast_bytes += m->size;
		if (x->pol == P_LRU) { /* newest first: append at the least recent end */
			x->prev[id] = x->tail;
			x->next[id] = NIL;
			if (x->tail != NIL)
				x->next[x->tail] = id;
			else
				x->head = id;
			x->tail = id;
		} else if (x->pol == P_BELADY) {
			x->key[id] = first_use[id];
			heap_push(x, first_use[id], id);
		}
	}
}

static void sim_event(struct sim *x, const struct event *e, int64_t next_use)
{
	x->now = e->t;
	switch (e->type) {
	case E_LOGIN:
		if (x->last_login)
			x->last_login[e->id] = e->t;
		break;
	case E_DELIVER:
		sim_deliver(x, e->id, next_use);
		break;
	case E_READ:
		sim_read(x, e, next_use);
		break;
	default:
		sim_expunge(x, e->id);
		break;
	}
}

static void sim_init(struct sim *x, const struct trace *tr, const struct params *p, const struct settings *s,
		     enum policy pol, double pct)
{
	memset(x, 0, sizeof(*x));
	x->tr = tr;
	x->p = p;
	x->s = s;
	x->pol = pol;
	x->pct = pct;
	size_t n = tr->n_msg ? tr->n_msg : 1;
	x->fast = xcalloc(n, 1);
	x->present = xcalloc(n, 1);
	x->head = x->tail = NIL;
	if (pol == P_LRU) {
		x->prev = xcalloc(n, sizeof(uint32_t));
		x->next = xcalloc(n, sizeof(uint32_t));
		memset(x->prev, 0xff, n * sizeof(uint32_t));
		memset(x->next, 0xff, n * sizeof(uint32_t));
	} else if (pol == P_BELADY) {
		x->key = xcalloc(n, sizeof(int64_t));
	} else if (pol != P_AGE) {
		x->heat = xcalloc(n, sizeof(*x->heat));
		x->last_login = xcalloc(tr->n_acct ? tr->n_acct : 1, sizeof(int64_t));
		memcpy(x->last_login, tr->last_login0, tr->n_acct * sizeof(int64_t));
		x->cand = xcalloc(n, sizeof(*x->cand));
		x->cand2 = xcalloc(n, sizeof(*x->cand2));
		x->keys = xcalloc(n, 2 * sizeof(*x->keys));
		x->radix = xcalloc(65537, sizeof(*x->radix));
		x->plan = xcalloc(s->tier_batch, sizeof(*x->plan));
		if (pol == P_PROTO || pol == P_PROTO_SIZE || pol == P_PROTO_ALL)
			x->order = xcalloc(n, sizeof(size_t));
	}
}

static void sim_free(struct sim *x)
{
	free(x->fast);
	free(x->present);
	free(x->prev);
	free(x->next);
	free(x->key);
	free(x->heap);
	free(x->victims);
	free(x->heat);
	free(x->last_login);
	free(x->cand);
	free(x->plan);
	free(x->order);
	free(x->cand2);
	free(x->keys);
	free(x->radix);
}

static void sim_run(struct sim *x, const uint32_t *ord, const int64_t *ev_next, const int64_t *first_use)
{
	const struct trace *tr = x->tr;
	int64_t step = x->p->pass_hours * HOUR, tick = T0;
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	sim_initial(x, ord, first_use);
	for (size_t i = 0; i < tr->n_ev; i++) {
		for (; tick <= tr->e[i].t; tick += step) {
			x->now = tick;
			sim_pass(x);
		}
		sim_event(x, &tr->e[i], ev_next[i]);
	}
	for (; tick < tr->t_end; tick += step) {
		x->now = tick;
		sim_pass(x);
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	x->res.secs = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
}

/* Age-only's N (seconds, whole hours): the largest that keeps the fast tier
 * within its capacity after every pass of the measured window.  At a pass at
 * time tau the fast tier holds exactly the stored mail received after
 * tau - N, and stored mail is what was delivered and not expunged before tau
 * (passes run before the events of their second). */
static int64_t age_choose(const struct trace *tr, const struct params *p, const uint32_t *ord, double pct)
{
	int64_t step = p->pass_hours * HOUR, best = INT64_MAX;
	uint64_t stored = tr->bytes_at_t0;
	size_t ev = 0, newest = 0;
	for (int64_t tau = T0; tau < tr->t_end; tau += step) {
		for (; ev < tr->n_ev && tr->e[ev].t < tau; ev++) {
			if (tr->e[ev].type == E_DELIVER)
				stored += tr->m[tr->e[ev].id].size;
			else if (tr->e[ev].type == E_EXPUNGE)
				stored -= tr->m[tr->e[ev].id].size;
		}
		while (newest < tr->n_msg && tr->m[ord[newest]].received < tau)
			newest++;
		if (tau < tr->t_measure)
			continue;
		uint64_t cap = (uint64_t)((double)stored * pct / 100.0), acc = 0;
		for (size_t k = newest; k-- > 0;) {
			const struct msg *m = &tr->m[ord[k]];
			if (m->gone_at < tau)
				continue;
			if (acc + m->size > cap) {
				int64_t n = (tau - m->received - 1) / HOUR * HOUR;
				if (n < best)
					best = n;
				break;
			}
			acc += m->size;
		}
	}
	return best == INT64_MAX ? (int64_t)(p->history_days + p->days) * DAY : best;
}

/* ---- output ------------------------------------------------------------------------ */

static double share(uint64_t a, uint64_t b)
{
	return b ? (double)a / (double)b : 0.0;
}

static void json_run(FILE *f, const struct sim *x, int measured_days, bool first)
{
	const struct result *r = &x->res;
	double d = measured_days > 0 ? measured_days : 1;
	fprintf(f, "%s\n    {\"policy\": \"%s\", \"fast_pct\": %g, \"read_share\": %.6f, \"byte_share\": %.6f,\n",
		first ? "" : ",", policy_name[x->pol], x->pct, share(r->hits, r->reads), share(r->bytes_hit, r->bytes_read));
	fprintf(f, "     \"reads\": %" PRIu64 ", \"hits\": %" PRIu64 ", \"bytes_read\": %" PRIu64 ", \"bytes_hit\": %" PRIu64
		   ",\n", r->reads, r->hits, r->bytes_read, r->bytes_hit);
	fprintf(f, "     \"kinds\": {");
	for (int k = 0; k < K_COUNT; k++)
		fprintf(f, "%s\"%s\": {\"reads\": %" PRIu64 ", \"hits\": %" PRIu64 "}", k ? ", " : "", kind_name[k],
			r->kind_reads[k], r->kind_hits[k]);
	fprintf(f, "},\n     \"per_day\": {\"promoted_msgs\": %.1f, \"promoted_bytes\": %.0f, \"demoted_msgs\": %.1f, "
		   "\"demoted_bytes\": %.0f},\n",
		(double)r->up_n / d, (double)r->up_bytes / d, (double)r->down_n / d, (double)r->down_bytes / d);
	fprintf(f, "     \"fast_data_share_mean\": %.4f, \"age_hours\": %" PRId64 ", \"seconds\": %.1f}",
		r->passes ? r->fast_share_sum / (double)r->passes : 0.0, x->pol == P_AGE ? x->age_s / HOUR : -1,
		r->secs);
}

static void json_head(FILE *f, const struct params *p, const struct settings *s, const struct trace *tr,
		      const char *cmdline)
{
	time_t now = time(NULL);
	struct tm tm;
	char date[32];
	gmtime_r(&now, &tm);
	strftime(date, sizeof(date), "%Y-%m-%d %H:%M UTC", &tm);
	fprintf(f, "{\n  \"benchmark\": \"tier-sim\",\n  \"date\": \"%s\",\n  \"command\": \"%s\",\n", date, cmdline);
	fprintf(f, "  \"model\": {\"seed\": %" PRIu64 ", \"accounts\": %" PRIu32 ", \"idle\": %g, \"activity_sigma\": %g, "
		   "\"mail_rate\": %g, \"history_days\": %d, \"days\": %d, \"warmup_days\": %d, \"pass_hours\": %d},\n",
		p->seed, p->accounts, p->idle, p->activity_sigma, p->mail_rate, p->history_days, p->days, p->warmup,
		p->pass_hours);
	fprintf(f, "  \"settings\": {\"tier.half_life_s\": %" PRIu64 ", \"tier.promote_days\": %" PRIu64
		   ", \"tier.interval_ms\": %" PRIu64 ", \"tier.batch\": %" PRIu64 ", \"tier.move_rate\": %" PRIu64
		   ", \"tier.move_files\": %" PRIu64 ", \"tier.pin\": \"%s\"},\n",
		s->tier_half_life_ms / 1000, s->tier_promote_days, s->tier_interval_ms, s->tier_batch,
		s->tier_move_bytes_per_s, s->tier_move_files_per_s, s->tier_pin ? s->tier_pin : "");
	fprintf(f, "  \"trace\": {\"messages\": %zu, \"events\": %zu, \"reads\": %" PRIu64 ", \"bytes_at_t0\": %" PRIu64
		   "},\n  \"runs\": [",
		tr->n_msg, tr->n_ev, tr->reads, tr->bytes_at_t0);
}

static void print_run(const struct sim *x)
{
	const struct result *r = &x->res;
	int days = x->p->days - x->p->warmup;
	double d = days > 0 ? days : 1;
	printf("%-15s %4g%%  reads %6.2f%%  bytes %6.2f%%  moved/day %9.1f MB up %9.1f MB down", policy_name[x->pol],
	       x->pct, 100 * share(r->hits, r->reads), 100 * share(r->bytes_hit, r->bytes_read),
	       (double)r->up_bytes / d / 1e6, (double)r->down_bytes / d / 1e6);
	if (x->pol == P_AGE)
		printf("  N=%" PRId64 "h", x->age_s / HOUR);
	printf("  (%.1fs)\n   by kind:", r->secs);
	for (int k = 0; k < K_COUNT; k++)
		printf(" %s %.1f%% of %" PRIu64 ";", kind_name[k], 100 * share(r->kind_hits[k], r->kind_reads[k]),
		       r->kind_reads[k]);
	printf("\n");
	fflush(stdout);
}

/* ---- command line --------------------------------------------------------------------- */

static void usage(void)
{
	fprintf(stderr, "usage: tier_sim [--quick] [--accounts N] [--seed S] [--days D] [--warmup W]\n"
			"                [--history-days H] [--pass-hours P] [--mail-rate R] [--idle F]\n"
			"                [--pct 5,10,20,30] [--policies strata,age,lru,belady,...]\n"
			"                [--out FILE.json] [-o tier.key=value ...]\n");
	exit(2);
}

static double parse_num(const char *s, double lo, double hi, const char *what)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || !(v >= lo && v <= hi)) {
		fprintf(stderr, "tier_sim: %s: '%s' is not a number in [%g, %g]\n", what, s, lo, hi);
		exit(2);
	}
	return v;
}

static void parse_pct(struct params *p, const char *list)
{
	char *copy = xstrdup(list), *save = NULL;
	p->n_pct = 0;
	for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		if (p->n_pct == MAX_PCT)
			usage();
		p->pct[p->n_pct++] = parse_num(t, 0.1, 99, "--pct");
	}
	free(copy);
	if (p->n_pct == 0)
		usage();
}

static void parse_policies(struct params *p, const char *list)
{
	char *copy = xstrdup(list), *save = NULL;
	memset(p->run, 0, sizeof(p->run));
	for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		int k = 0;
		while (k < P_COUNT && strcmp(t, policy_name[k]) != 0)
			k++;
		if (k == P_COUNT)
			usage();
		p->run[k] = true;
	}
	free(copy);
}

static void parse_args(struct params *p, int argc, char **argv)
{
	*p = (struct params){ .seed = 1, .accounts = 50000, .history_days = 365, .days = 120, .warmup = 60,
			      .pass_hours = 6, .idle = 0.25, .activity_sigma = 1.0, .mail_rate = 0.04,
			      .pct = { 5, 10, 20, 30 }, .n_pct = 4,
			      .run = { [P_STRATA] = true, [P_AGE] = true, [P_LRU] = true, [P_BELADY] = true } };
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--quick") == 0) {
			p->accounts = 5000;
			p->history_days = 60;
			p->days = 30;
			p->warmup = 15;
			continue;
		}
		if (v == NULL)
			usage();
		i++;
		if (strcmp(a, "--accounts") == 0)
			p->accounts = (uint32_t)parse_num(v, 1, 2000000, a);
		else if (strcmp(a, "--seed") == 0)
			p->seed = (uint64_t)parse_num(v, 0, 1e15, a);
		else if (strcmp(a, "--days") == 0)
			p->days = (int)parse_num(v, 2, 3650, a);
		else if (strcmp(a, "--warmup") == 0)
			p->warmup = (int)parse_num(v, 0, 3650, a);
		else if (strcmp(a, "--history-days") == 0)
			p->history_days = (int)parse_num(v, 0, 3650, a);
		else if (strcmp(a, "--pass-hours") == 0)
			p->pass_hours = (int)parse_num(v, 1, 24, a);
		else if (strcmp(a, "--mail-rate") == 0)
			p->mail_rate = parse_num(v, 0.001, 100, a);
		else if (strcmp(a, "--idle") == 0)
			p->idle = parse_num(v, 0, 1, a);
		else if (strcmp(a, "--activity-sigma") == 0)
			p->activity_sigma = parse_num(v, 0, 3, a);
		else if (strcmp(a, "--pct") == 0)
			parse_pct(p, v);
		else if (strcmp(a, "--policies") == 0)
			parse_policies(p, v);
		else if (strcmp(a, "--out") == 0)
			p->out = v;
		else if (strcmp(a, "-o") == 0 && p->n_over < MAX_OVERRIDES)
			p->overrides[p->n_over++] = (char *)v;
		else
			usage();
	}
	if (p->warmup >= p->days)
		usage();
}

static char *command_line(int argc, char **argv)
{
	struct buf b = BUF_INIT;
	buf_append_str(&b, "tier_sim");
	for (int i = 1; i < argc; i++) {
		buf_append_char(&b, ' ');
		for (const char *c = argv[i]; *c; c++) {
			if (*c == '"' || *c == '\\')
				buf_append_char(&b, '\\');
			buf_append_char(&b, *c);
		}
	}
	return buf_steal(&b);
}

static void run_all(const struct params *p, const struct settings *s, const struct trace *tr, FILE *out)
{
	enum policy list[P_COUNT];
	size_t n = 0;
	for (int k = 0; k < P_COUNT; k++) {
		if (p->run[k])
			list[n++] = (enum policy)k;
	}
	int64_t *first_use;
	int64_t *ev_next = trace_next_use(tr, &first_use);
	uint32_t *ord = order_by_received(tr);
	bool first = true;
	for (size_t k = 0; k < p->n_pct; k++) {
		for (size_t i = 0; i < n; i++) {
			struct sim x;
			sim_init(&x, tr, p, s, list[i], p->pct[k]);
			if (list[i] == P_AGE)
				x.age_s = age_choose(tr, p, ord, p->pct[k]);
			sim_run(&x, ord, ev_next, first_use);
			x.res.age_hours = x.age_s / HOUR;
			print_run(&x);
			if (out)
				json_run(out, &x, p->days - p->warmup, first);
			first = false;
			sim_free(&x);
		}
	}
	free(ord);
	free(ev_next);
	free(first_use);
}

int main(int argc, char **argv)
{
	struct params p;
	parse_args(&p, argc, argv);
	char *err = NULL;
	struct settings *s = config_load("/dev/null", p.overrides, p.n_over, &err);
	if (s == NULL) {
		fprintf(stderr, "tier_sim: %s\n", err);
		free(err);
		return 2;
	}
	FILE *out = NULL;
	if (p.out && (out = fopen(p.out, "w")) == NULL) {
		fprintf(stderr, "tier_sim: %s: %s\n", p.out, strerror(errno));
		config_free(&s);
		return 1;
	}
	struct trace tr;
	trace_build(&tr, &p);
	printf("tier_sim: %" PRIu32 " accounts, %zu messages (%.1f GB at T0), %zu events, %" PRIu64
	       " reads; fast tier at", p.accounts, tr.n_msg, (double)tr.bytes_at_t0 / 1e9, tr.n_ev, tr.reads);
	for (size_t k = 0; k < p.n_pct; k++)
		printf(" %g%%", p.pct[k]);
	printf(" of the data\n");
	char *cmd = command_line(argc, argv);
	if (out)
		json_head(out, &p, s, &tr, cmd);
	run_all(&p, s, &tr, out);
	int rc = 0;
	if (out) {
		fprintf(out, "\n  ]\n}\n");
		if (fclose(out) != 0) {
			fprintf(stderr, "tier_sim: %s: %s\n", p.out, strerror(errno));
			rc = 1;
		}
	}
	free(cmd);
	trace_free(&tr);
	config_free(&s);
	return rc;
}
