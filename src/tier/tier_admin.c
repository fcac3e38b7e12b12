/*
 * tier_admin.c - what the daemon's admin endpoint says about tiering: the
 * body of GET /tier/status (read shares per tier) and the tier lines of
 * /metrics, and the parser `strata tier status` uses for that body.
 *
 * The body is line-oriented text, one record per line, unknown records
 * ignored by the parser (so an older CLI reads a newer daemon):
 *   strata-tier-status 1
 *   reads <tier #> <name> <reads last hour> <reads last day> <reads since start>
 *   mover <budget factor> <latency us> <baseline us> <samples> <halvings>
 * Names come from the settings the mover was started with
 * (tier_admin_settings); before that, or without a mover, tiers are named
 * by number.
 *
 * Threads: the admin endpoint's (the event loop); reads only the
 * mutex-guarded counters of tier_access.c and an atomic settings pointer.
 */
#include "tier.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STATUS_MAGIC "strata-tier-status 1"

static _Atomic(const struct settings *) admin_settings;

void tier_admin_settings(const struct settings *s)
{
	atomic_store_explicit(&admin_settings, s, memory_order_release);
}

static size_t tier_names(const struct settings *s, char names[CONFIG_TIER_MAX][CONFIG_TIER_NAME_MAX + 1])
{
	size_t n = s ? s->n_tiers : CONFIG_TIER_MAX;
	for (size_t t = 0; t < n; t++) {
		if (s)
			snprintf(names[t], sizeof(names[t]), "%s", s->tiers[t].name);
		else
			snprintf(names[t], sizeof(names[t]), "%zu", t);
	}
	return n;
}

void tier_admin_status(struct buf *out, uint64_t now_ms)
{
	const struct settings *s = atomic_load_explicit(&admin_settings, memory_order_acquire);
	char names[CONFIG_TIER_MAX][CONFIG_TIER_NAME_MAX + 1];
	size_t n = tier_names(s, names);
	struct tier_reads r;
	tier_reads_get(&r, now_ms);
	buf_append_str(out, STATUS_MAGIC "\n");
	for (size_t t = 0; t < n; t++)
		buf_printf(out, "reads %zu %s %llu %llu %llu\n", t, names[t], (unsigned long long)r.hour[t],
			   (unsigned long long)r.day[t], (unsigned long long)r.total[t]);
	struct tier_backoff b;
	tier_backoff_get(&b);
	buf_printf(out, "mover %.4f %.0f %.0f %llu %llu\n", b.factor, b.lat_us, b.base_us,
		   (unsigned long long)b.samples, (unsigned long long)b.halvings);
}

void tier_admin_metrics(struct buf *out)
{
	const struct settings *s = atomic_load_explicit(&admin_settings, memory_order_acquire);
	char names[CONFIG_TIER_MAX][CONFIG_TIER_NAME_MAX + 1];
	size_t n = tier_names(s, names);
	struct tier_reads r;
	tier_reads_get(&r, time_mono_ms());
	buf_append_str(out, "# HELP strata_tier_reads_total Body reads (IMAP FETCH of a body, POP3 RETR/TOP) served"
			    " per tier since start\n# TYPE strata_tier_reads_total counter\n");
	for (size_t t = 0; t < n; t++)
		buf_printf(out, "strata_tier_reads_total{tier=\"%s\"} %llu\n", names[t], (unsigned long long)r.total[t]);
}

/* "mover <factor> <latency us> <baseline us> <samples> <halvings>" */
static bool parse_mover(const char *line, struct tier_backoff *b)
{
	unsigned long long samples, halvings;
	if (sscanf(line, "mover %lf %lf %lf %llu %llu", &b->factor, &b->lat_us, &b->base_us, &samples, &halvings) != 5 ||
	    !(b->factor >= 0 && b->factor <= 1))
		return false;
	b->samples = samples;
	b->halvings = halvings;
	return true;
}

/* "reads <t> <name> <h> <d> <total>" into r (names are the CLI's own). */
static bool parse_reads(const char *line, struct tier_reads *r)
{
	unsigned t;
	unsigned long long h, d, tot;
	char name[CONFIG_TIER_NAME_MAX + 1];
	if (sscanf(line, "reads %u %31s %llu %llu %llu", &t, name, &h, &d, &tot) != 5 || t >= CONFIG_TIER_MAX)
		return false;
	r->hour[t] = h;
	r->day[t] = d;
	r->total[t] = tot;
	return true;
}

bool tier_admin_parse(const char *body, size_t len, struct tier_admin_view *out)
{
	memset(out, 0, sizeof(*out));
	size_t ml = strlen(STATUS_MAGIC);
	if (len < ml || memcmp(body, STATUS_MAGIC, ml) != 0 || (len > ml && body[ml] != '\n'))
		return false;
	char line[256];
	for (size_t pos = 0; pos < len;) {
		const char *nl = memchr(body + pos, '\n', len - pos);
		size_t ll = nl ? (size_t)(nl - (body + pos)) : len - pos;
		if (ll < sizeof(line)) {
			memcpy(line, body + pos, ll);
			line[ll] = '\0';
			if (parse_reads(line, &out->reads))
				out->have_reads = true;
			else if (parse_mover(line, &out->mover))
				out->have_mover = true;
		}
		pos += ll + 1;
	}
	return true;
}
