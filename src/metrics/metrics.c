/*
 * metrics.c - the metric registry and its Prometheus rendering.
 *
 * All updates are relaxed atomic adds: a scrape may see counters a few
 * increments apart from each other, never torn values.  Histograms use
 * fixed bucket bounds chosen per metric.
 */
#include "metrics.h"

#include <stdatomic.h>
#include <string.h>

static const struct { const char *name; const char *help; } counter_meta[M_COUNTER__COUNT] = {
	[M_SMTP_CONNECTIONS_TOTAL] = { "strata_smtp_connections_total", "SMTP connections accepted" },
	[M_SMTP_TRANSACTIONS_TOTAL] = { "strata_smtp_transactions_total", "SMTP transactions started (MAIL accepted)" },
	[M_SMTP_MESSAGES_ACCEPTED] = { "strata_smtp_messages_accepted_total", "Messages accepted with 250 (durably stored)" },
	[M_SMTP_RECIPIENTS_ACCEPTED] = { "strata_smtp_recipients_accepted_total", "Recipients accepted at RCPT" },
	[M_SMTP_REJECT_UNKNOWN_USER] = { "strata_smtp_rejected_total{reason=\"unknown_user\"}", NULL },
	[M_SMTP_REJECT_RELAY] = { "strata_smtp_rejected_total{reason=\"relay_denied\"}", NULL },
	[M_SMTP_REJECT_SIZE] = { "strata_smtp_rejected_total{reason=\"size\"}", NULL },
	[M_SMTP_REJECT_QUOTA] = { "strata_smtp_rejected_total{reason=\"quota\"}", NULL },
	[M_SMTP_REJECT_SYNTAX] = { "strata_smtp_rejected_total{reason=\"syntax\"}", NULL },
	[M_SMTP_REJECT_TOO_MANY_RCPTS] = { "strata_smtp_rejected_total{reason=\"too_many_recipients\"}", NULL },
	[M_SMTP_REJECT_TEMPFAIL] = { "strata_smtp_rejected_total{reason=\"tempfail\"}", NULL },
	[M_SMTP_REJECT_BAD_CONTENT] = { "strata_smtp_rejected_total{reason=\"bad_content\"}", NULL },
	[M_SMTP_REJECT_CONN_LIMIT] = { "strata_smtp_rejected_total{reason=\"connection_limit\"}", NULL },
	[M_SMTP_TIMEOUTS] = { "strata_smtp_timeouts_total", "SMTP sessions closed for idleness" },
	[M_SMTP_CUT_SLOW] = { "strata_smtp_cut_total{reason=\"slow\"}", "SMTP sessions cut by the server, by reason" },
	[M_SMTP_CUT_LIFETIME] = { "strata_smtp_cut_total{reason=\"lifetime\"}", "SMTP sessions cut by the server, by reason" },
	[M_SMTP_TLS_HANDSHAKES] = { "strata_smtp_tls_handshakes_total", "Successful STARTTLS handshakes" },
	[M_SMTP_TLS_FAILURES] = { "strata_smtp_tls_failures_total", "Failed STARTTLS handshakes" },
	[M_STORE_COMMITS] = { "strata_store_commits_total", "Index transactions committed (group commits)" },
	[M_STORE_COMMITTED_DELIVERIES] = { "strata_store_committed_deliveries_total", "Deliveries made durable" },
	[M_STORE_BLOBS_WRITTEN] = { "strata_store_blobs_written_total", "Message blob files written" },
	[M_STORE_BLOB_BYTES_WRITTEN] = { "strata_store_blob_bytes_written_total", "Bytes of message blobs written" },
	[M_STORE_FSYNCS] = { "strata_store_fsyncs_total", "fsync calls on blobs and directories" },
	[M_STORE_COMMIT_FAILURES] = { "strata_store_commit_failures_total", "Group commits that failed (deliveries got 4xx)" },
	[M_GUARD_REFUSED_RATE] = { "strata_guard_refused_total{reason=\"rate\"}", "Connections refused by the connection guard, by reason" },
	[M_GUARD_REFUSED_CONCURRENCY] = { "strata_guard_refused_total{reason=\"concurrency\"}", "Connections refused by the connection guard, by reason" },
	[M_GUARD_REFUSED_GLOBAL] = { "strata_guard_refused_total{reason=\"global\"}", "Connections refused by the connection guard, by reason" },
	[M_GUARD_REFUSED_BAN] = { "strata_guard_refused_total{reason=\"ban\"}", "Connections refused by the connection guard, by reason" },
	[M_GUARD_EVICTIONS] = { "strata_guard_evictions_total", "Guard table entries recycled for a new source while still holding rate state" },
	[M_GUARD_OFFENCE_ERRORS] = { "strata_guard_offences_total{kind=\"errors\"}", "Protocol offences reported to the connection guard, by kind" },
	[M_GUARD_OFFENCE_HARVEST] = { "strata_guard_offences_total{kind=\"harvest\"}", "Protocol offences reported to the connection guard, by kind" },
	[M_GUARD_OFFENCE_PRE_HELO] = { "strata_guard_offences_total{kind=\"pre_helo\"}", "Protocol offences reported to the connection guard, by kind" },
	[M_GUARD_OFFENCE_COMMANDS] = { "strata_guard_offences_total{kind=\"commands\"}", "Protocol offences reported to the connection guard, by kind" },
	[M_GUARD_OFFENCE_EARLY_TALK] = { "strata_guard_offences_total{kind=\"early_talk\"}", "Protocol offences reported to the connection guard, by kind" },
	[M_GUARD_OFFENCE_AUTH] = { "strata_guard_offences_total{kind=\"auth\"}", "Protocol offences reported to the connection guard, by kind" },
	[M_GUARD_AUTH_FAILURES] = { "strata_guard_auth_failures_total", "Failed IMAP/POP3 logins counted by the connection guard" },
	[M_GUARD_AUTH_DELAYED] = { "strata_guard_auth_delayed_total", "Failed logins answered after a brute-force delay" },
	[M_GUARD_PROXY_ACCEPTED] = { "strata_guard_proxy_total{result=\"accepted\"}", "PROXY protocol headers from trusted load balancers, by result" },
	[M_GUARD_PROXY_REFUSED] = { "strata_guard_proxy_total{result=\"refused\"}", "PROXY protocol headers from trusted load balancers, by result" },
	[M_GUARD_ADMIN_BAN] = { "strata_guard_admin_total{action=\"ban\"}", "Operator changes to the connection guard (strata guard), by action" },
	[M_GUARD_ADMIN_UNBAN] = { "strata_guard_admin_total{action=\"unban\"}", "Operator changes to the connection guard (strata guard), by action" },
	[M_GUARD_ADMIN_ALLOW] = { "strata_guard_admin_total{action=\"allow\"}", "Operator changes to the connection guard (strata guard), by action" },
	[M_GUARD_NFT_UPDATES] = { "strata_guard_nft_updates_total", "Elements added to or removed from the kernel ban sets (nftables), and table set-ups" },
	[M_GUARD_NFT_ERRORS] = { "strata_guard_nft_errors_total", "Failed nft runs of the kernel mirror of the bans" },
	[M_GUARD_OFFENCE_BANS] = { "strata_guard_offence_bans_total", "Temporary bans set by the connection guard for protocol offences" },
	[M_TIER_MOVES] = { "strata_tier_moves_total", "Blobs moved between storage tiers" },
	[M_TIER_MOVE_BYTES] = { "strata_tier_move_bytes_total", "Bytes copied by tier moves" },
	[M_TIER_MOVE_FAILURES] = { "strata_tier_move_failures_total", "Tier moves that failed and were rolled back" },
	[M_TIER_HEAT_DROPPED] = { "strata_tier_heat_events_dropped_total", "Access events dropped because the heat ring was full" },
	[M_RELAY_SENT] = { "strata_relay_deliveries_total{status=\"sent\"}", "Outbound deliveries to remote hosts (one per recipient and attempt), by result" },
	[M_RELAY_DEFERRED] = { "strata_relay_deliveries_total{status=\"deferred\"}", "Outbound deliveries to remote hosts (one per recipient and attempt), by result" },
	[M_RELAY_BOUNCED] = { "strata_relay_deliveries_total{status=\"bounced\"}", "Outbound deliveries to remote hosts (one per recipient and attempt), by result" },
	[M_SMTP_AUTH_SUCCESS] = { "strata_smtp_auth_total{result=\"success\"}", "SMTP AUTH exchanges on the submission listeners, by result" },
	[M_SMTP_AUTH_FAILURES] = { "strata_smtp_auth_total{result=\"failure\"}", "SMTP AUTH exchanges on the submission listeners, by result" },
	[M_AUTH_CACHE_HITS] = { "strata_auth_cache_total{result=\"hit\"}", "Password checks of IMAP, POP3 and submission logins, by result: hit (answered by the verified-password cache) or miss (full verification)" },
	[M_AUTH_CACHE_MISSES] = { "strata_auth_cache_total{result=\"miss\"}", "Password checks of IMAP, POP3 and submission logins, by result: hit (answered by the verified-password cache) or miss (full verification)" },
	[M_STORE_CHECKPOINTS] = { "strata_store_checkpoints_total{mode=\"passive\"}", "WAL checkpoints of the index run by the checkpointer thread, by mode (restart: the safety valve for a log that readers kept from being reset)" },
	[M_STORE_CHECKPOINTS_RESTART] = { "strata_store_checkpoints_total{mode=\"restart\"}", "WAL checkpoints of the index run by the checkpointer thread, by mode (restart: the safety valve for a log that readers kept from being reset)" },
};

static const struct { const char *name; const char *help; } gauge_meta[M_GAUGE__COUNT] = {
	[M_SMTP_SESSIONS_ACTIVE] = { "strata_smtp_sessions_active", "SMTP sessions open now" },
	[M_QUEUE_PENDING] = { "strata_queue_pending", "Deliveries waiting for durable commit" },
	[M_GUARD_ENTRIES] = { "strata_guard_entries", "Connection guard table entries in use" },
	[M_RELAY_QUEUE] = { "strata_relay_queue", "Outbound recipients waiting for delivery to remote hosts" },
	[M_TIER_BYTES_0 + 0] = { "strata_tier_0_bytes", "Bytes of message blobs on tier 0 (position in tier.names)" },
	[M_TIER_BYTES_0 + 1] = { "strata_tier_1_bytes", "Bytes of message blobs on tier 1 (position in tier.names)" },
	[M_TIER_BYTES_0 + 2] = { "strata_tier_2_bytes", "Bytes of message blobs on tier 2 (position in tier.names)" },
	[M_TIER_BYTES_0 + 3] = { "strata_tier_3_bytes", "Bytes of message blobs on tier 3 (position in tier.names)" },
	[M_TIER_BYTES_0 + 4] = { "strata_tier_4_bytes", "Bytes of message blobs on tier 4 (position in tier.names)" },
	[M_TIER_BYTES_0 + 5] = { "strata_tier_5_bytes", "Bytes of message blobs on tier 5 (position in tier.names)" },
	[M_TIER_BYTES_0 + 6] = { "strata_tier_6_bytes", "Bytes of message blobs on tier 6 (position in tier.names)" },
	[M_TIER_BYTES_0 + 7] = { "strata_tier_7_bytes", "Bytes of message blobs on tier 7 (position in tier.names)" },
	[M_TIER_MESSAGES_0 + 0] = { "strata_tier_0_messages", "Message blobs on tier 0 (position in tier.names)" },
	[M_TIER_MESSAGES_0 + 1] = { "strata_tier_1_messages", "Message blobs on tier 1 (position in tier.names)" },
	[M_TIER_MESSAGES_0 + 2] = { "strata_tier_2_messages", "Message blobs on tier 2 (position in tier.names)" },
	[M_TIER_MESSAGES_0 + 3] = { "strata_tier_3_messages", "Message blobs on tier 3 (position in tier.names)" },
	[M_TIER_MESSAGES_0 + 4] = { "strata_tier_4_messages", "Message blobs on tier 4 (position in tier.names)" },
	[M_TIER_MESSAGES_0 + 5] = { "strata_tier_5_messages", "Message blobs on tier 5 (position in tier.names)" },
	[M_TIER_MESSAGES_0 + 6] = { "strata_tier_6_messages", "Message blobs on tier 6 (position in tier.names)" },
	[M_TIER_MESSAGES_0 + 7] = { "strata_tier_7_messages", "Message blobs on tier 7 (position in tier.names)" },
	[M_STORE_WAL_PAGES] = { "strata_store_wal_pages", "Pages in the index's write-ahead log after the checkpointer's last checkpoint" },
};

#define MAX_BUCKETS 16
static const double latency_bounds[] = { 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 };
static const double batch_bounds[] = { 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024 };

static const struct {
	const char *name;
	const char *help;
	const double *bounds;
	size_t n_bounds;
} hist_meta[M_HISTOGRAM__COUNT] = {
	[M_H_SMTP_ACCEPT_LATENCY] = { "strata_smtp_accept_latency_seconds",
				      "Time from end of message data to the 250 reply", latency_bounds,
				      ARRAY_LEN(latency_bounds) },
	[M_H_COMMIT_BATCH_SIZE] = { "strata_store_commit_batch_size", "Deliveries per group commit",
				    batch_bounds, ARRAY_LEN(batch_bounds) },
	[M_H_COMMIT_DURATION] = { "strata_store_commit_duration_seconds",
				  "Duration of one group commit (directory fsyncs and index transaction)",
				  latency_bounds, ARRAY_LEN(latency_bounds) },
	[M_H_CHECKPOINT_DURATION] = { "strata_store_checkpoint_duration_seconds",
				      "Duration of one WAL checkpoint of the index (copy into index.db and its fsync)",
				      latency_bounds, ARRAY_LEN(latency_bounds) },
};

struct histogram {
	_Atomic uint64_t buckets[MAX_BUCKETS + 1]; /* last = +Inf */
	_Atomic uint64_t count;
	_Atomic uint64_t sum_micro;                 /* sum * 1e6 */
};

static _Atomic uint64_t g_counters[M_COUNTER__COUNT];
static _Atomic int64_t g_gauges[M_GAUGE__COUNT];
static struct histogram g_hists[M_HISTOGRAM__COUNT];

void metric_inc(enum metric_counter c) { atomic_fetch_add_explicit(&g_counters[c], 1, memory_order_relaxed); }
void metric_add(enum metric_counter c, uint64_t n) { atomic_fetch_add_explicit(&g_counters[c], n, memory_order_relaxed); }
uint64_t metric_get(enum metric_counter c) { return atomic_load_explicit(&g_counters[c], memory_order_relaxed); }
void gauge_add(enum metric_gauge g, int64_t d) { atomic_fetch_add_explicit(&g_gauges[g], d, memory_order_relaxed); }
int64_t gauge_get(enum metric_gauge g) { return atomic_load_explicit(&g_gauges[g], memory_order_relaxed); }

void histogram_observe(enum metric_histogram h, double value)
{
	struct histogram *hg = &g_hists[h];
	size_t i = 0;
	while (i < hist_meta[h].n_bounds && value > hist_meta[h].bounds[i])
		i++;
	atomic_fetch_add_explicit(&hg->buckets[i], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&hg->count, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&hg->sum_micro, (uint64_t)(value * 1e6), memory_order_relaxed);
}

double histogram_quantile(enum metric_histogram h, double q)
{
	struct histogram *hg = &g_hists[h];
	uint64_t total = atomic_load(&hg->count);
	if (total == 0)
		return 0;
	uint64_t rank = (uint64_t)(q * (double)total + 0.5), seen = 0;
	if (rank == 0)
		rank = 1;
	for (size_t i = 0; i <= hist_meta[h].n_bounds; i++) {
		seen += atomic_load(&hg->buckets[i]);
		if (seen >= rank)
			return i < hist_meta[h].n_bounds ? hist_meta[h].bounds[i]
							 : hist_meta[h].bounds[hist_meta[h].n_bounds - 1];
	}
	return hist_meta[h].bounds[hist_meta[h].n_bounds - 1];
}

/* Name without labels, for HELP/TYPE lines. */
static void base_name(const char *name, char *out, size_t outlen)
{
	size_t n = strcspn(name, "{");
	if (n >= outlen)
		n = outlen - 1;
	memcpy(out, name, n);
	out[n] = '\0';
}

void metrics_render(struct buf *out)
{
	char base[128], last[128] = "";
	for (int c = 0; c < M_COUNTER__COUNT; c++) {
		base_name(counter_meta[c].name, base, sizeof(base));
		if (strcmp(base, last) != 0) {
			const char *help = counter_meta[c].help ? counter_meta[c].help : "SMTP commands or messages rejected, by reason";
			buf_printf(out, "# HELP %s %s\n# TYPE %s counter\n", base, help, base);
			memcpy(last, base, sizeof(last));
		}
		buf_printf(out, "%s %llu\n", counter_meta[c].name, (unsigned long long)metric_get(c));
	}
	for (int g = 0; g < M_GAUGE__COUNT; g++) {
		buf_printf(out, "# HELP %s %s\n# TYPE %s gauge\n%s %lld\n", gauge_meta[g].name,
			   gauge_meta[g].help, gauge_meta[g].name, gauge_meta[g].name,
			   (long long)gauge_get(g));
	}
	for (int h = 0; h < M_HISTOGRAM__COUNT; h++) {
		const char *n = hist_meta[h].name;
		struct histogram *hg = &g_hists[h];
		buf_printf(out, "# HELP %s %s\n# TYPE %s histogram\n", n, hist_meta[h].help, n);
		uint64_t cum = 0;
		for (size_t i = 0; i < hist_meta[h].n_bounds; i++) {
			cum += atomic_load(&hg->buckets[i]);
			buf_printf(out, "%s_bucket{le=\"%g\"} %llu\n", n, hist_meta[h].bounds[i], (unsigned long long)cum);
		}
		cum += atomic_load(&hg->buckets[hist_meta[h].n_bounds]);
		buf_printf(out, "%s_bucket{le=\"+Inf\"} %llu\n", n, (unsigned long long)cum);
		buf_printf(out, "%s_sum %.6f\n%s_count %llu\n", n, (double)atomic_load(&hg->sum_micro) / 1e6, n,
			   (unsigned long long)atomic_load(&hg->count));
	}
}
