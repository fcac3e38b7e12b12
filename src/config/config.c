/*
 * config.c - the settings table and the config file parser.
 *
 * Adding a setting: one field in struct settings (config.h) and one row in
 * `keys` below.  Documentation (docs/CONFIG.md) and `strata config show`
 * are generated from this table, so the row's doc line is the user's doc.
 */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define OFF(f) offsetof(struct settings, f)
#define PATH_MAX_TIER 4096 /* PATH_MAX; a tier path leaves room for <a>/<b>/<id> */

static const char *const log_targets[] = { "stderr", "syslog", NULL };
static const char *const log_levels[] = { "error", "warning", "info", "debug", NULL };
static const char *const vrfy_modes[] = { "cannot", "disabled", NULL };
static const char *const startup_checks[] = { "probe", "quick_check", NULL };
static const char *const bare_lf_modes[] = { "normalize", "reject", NULL };
static const char *const quota_replies[] = { "temporary", "permanent", NULL };
static const char *const relay_tls_levels[] = { "may", "encrypt", NULL };

#define U64MAX UINT64_MAX
static const struct config_key keys[] = {
	{ "hostname", CFG_STRING, "", 0, 0, NULL, false, OFF(hostname),
	  "Name in the SMTP banner and Received: headers; empty means the host name" },
	{ "state_dir", CFG_STRING, "/var/lib/strata", 0, 0, NULL, false, OFF(state_dir),
	  "Directory holding the index, message blobs, TLS material and run-time state" },
	{ "user", CFG_STRING, "strata", 0, 0, NULL, false, OFF(user),
	  "Unprivileged user the daemon switches to after binding its ports when started as root" },
	{ "seccomp", CFG_BOOL, "yes", 0, 0, NULL, false, OFF(seccomp),
	  "Install a system call filter on the daemon after start-up (no exec, ptrace, mounts, namespaces, modules...; see docs/SECURITY.md)" },
	{ "log.target", CFG_ENUM, "stderr", 0, 0, log_targets, false, OFF(log_target),
	  "Where log lines go: stderr or syslog (facility mail)" },
	{ "log.level", CFG_ENUM, "info", 0, 0, log_levels, true, OFF(log_level),
	  "Least severe level logged: error, warning, info or debug" },
	{ "threads", CFG_UINT, "0", 0, 256, NULL, false, OFF(threads),
	  "Network event-loop threads; 0 means one per CPU core" },
	{ "threads.user", CFG_UINT, "0", 0, 256, NULL, false, OFF(threads_user),
	  "Network threads serving only the user-facing listeners (IMAP, POP3, submission), apart from the `threads` ones that serve MX (smtp.listen); 0 means as many as `threads`" },
	{ "threads.mx_nice", CFG_UINT, "5", 0, 19, NULL, false, OFF(threads_mx_nice),
	  "Nice increment of the MX network threads over the rest of the daemon, so interactive users win the CPU from a flood on port 25; 0 means equal" },
	{ "admin.listen", CFG_STRING, "127.0.0.1:9425", 0, 0, NULL, false, OFF(admin_listen),
	  "Admin HTTP endpoint (/metrics, /health), comma-separated host:port list; keep it on loopback" },
	{ "recipient_delimiter", CFG_STRING, "+", 0, 0, NULL, false, OFF(recipient_delimiter),
	  "Characters that start an address extension (user+tag@domain delivers to user@domain); empty disables" },
	{ "smtp.listen", CFG_STRING, "0.0.0.0:25", 0, 0, NULL, false, OFF(smtp_listen),
	  "Inbound SMTP (MX) listeners, comma-separated host:port list ([v6]:port for IPv6)" },
	{ "smtp.max_message_size", CFG_SIZE, "50M", 1024, 2ull << 30, NULL, true, OFF(smtp_max_message_size),
	  "Largest message accepted, in bytes (advertised with SIZE)" },
	{ "smtp.max_recipients", CFG_UINT, "100", 1, 100000, NULL, true, OFF(smtp_max_recipients),
	  "Most RCPT TO accepted in one transaction; more get 452 4.5.3" },
	{ "smtp.max_line_length", CFG_SIZE, "2048", 512, 65536, NULL, true, OFF(smtp_max_line_length),
	  "Longest SMTP command line, in bytes; longer lines get 500 5.5.2" },
	{ "smtp.max_errors", CFG_UINT, "20", 1, 1000, NULL, true, OFF(smtp_max_errors),
	  "Protocol errors in one session before the server hangs up with 421" },
	{ "smtp.max_unknown_recipients", CFG_UINT, "20", 1, 100000, NULL, true, OFF(smtp_max_unknown_recipients),
	  "Unknown recipients in one session before the server hangs up with 421 and bans the client (directory harvest)" },
	{ "smtp.max_commands_before_helo", CFG_UINT, "3", 1, 1000, NULL, true, OFF(smtp_max_commands_before_helo),
	  "Commands a client may send before HELO/EHLO; one more closes the session with 421 and bans the client" },
	{ "smtp.max_commands", CFG_UINT, "10000", 10, 10000000, NULL, true, OFF(smtp_max_commands),
	  "Commands in one session since its last accepted message (SASL lines included); one more closes the session with 421 and bans the client. Each accepted message starts the count again, so a sender that keeps delivering on one connection is never cut" },
	{ "smtp.min_rate", CFG_SIZE, "1k", 0, 1ull << 30, NULL, true, OFF(smtp_min_rate),
	  "Bytes a client must send per smtp.min_rate_window while a command line, DATA or a BDAT chunk is in progress, or it is cut with 421 (slowloris); 0 turns it off" },
	{ "smtp.min_rate_window", CFG_DURATION, "30s", 1000, 3600000, NULL, true, OFF(smtp_min_rate_window_ms),
	  "Period over which smtp.min_rate and smtp.max_session_time are checked" },
	{ "smtp.max_session_time", CFG_DURATION, "1h", 10000, 604800000, NULL, true, OFF(smtp_max_session_time_ms),
	  "Longest an SMTP session may last; it is then cut with 421 (checked every smtp.min_rate_window, never during a commit)" },
	{ "smtp.max_connections", CFG_UINT, "2000", 1, 1000000, NULL, true, OFF(smtp_max_connections),
	  "Concurrent SMTP sessions at most; more are turned away with 421" },
	{ "smtp.timeout.command", CFG_DURATION, "5m", 1000, 3600000, NULL, true, OFF(smtp_timeout_command_ms),
	  "Idle time allowed while waiting for a command (RFC 5321: 5 minutes)" },
	{ "smtp.timeout.data", CFG_DURATION, "3m", 1000, 3600000, NULL, true, OFF(smtp_timeout_data_ms),
	  "Idle time allowed between two reads of message data (RFC 5321: 3 minutes)" },
	{ "smtp.vrfy", CFG_ENUM, "cannot", 0, 0, vrfy_modes, true, OFF(smtp_vrfy),
	  "VRFY answer: cannot (252, never reveals accounts) or disabled (502)" },
	{ "smtp.bare_lf", CFG_ENUM, "normalize", 0, 0, bare_lf_modes, true, OFF(smtp_bare_lf),
	  "Bare LF line ends in DATA: normalize to CRLF (never ends DATA) or reject the message" },
	{ "smtp.error_delay", CFG_DURATION, "0", 0, 60000, NULL, true, OFF(smtp_error_delay_ms),
	  "Delay before each error reply after the third error in a session (tarpit)" },
	{ "submission.require_tls", CFG_BOOL, "yes", 0, 0, NULL, true, OFF(submission_require_tls),
	  "Submission: advertise and accept AUTH only after STARTTLS (implicit TLS on 465 always has it)" },
	{ "submission.sender_login_match", CFG_BOOL, "yes", 0, 0, NULL, true, OFF(submission_sender_login_match),
	  "Submission: MAIL FROM must be the authenticated account's address or an alias reaching it; null sender refused" },
	{ "submission.store_threads", CFG_UINT, "1", 1, 64, NULL, false, OFF(submission_store_threads),
	  "Store threads per SMTP network thread verifying submission AUTH passwords off the event loop" },
	{ "submission.max_connections", CFG_UINT, "2000", 1, 1000000, NULL, true, OFF(submission_max_connections),
	  "Concurrent submission sessions (587 and 465 together) at most, apart from smtp.max_connections; more get 421 4.7.0" },
	{ "imap.listen", CFG_STRING, "", 0, 0, NULL, false, OFF(imap_listen),
	  "IMAP listeners, comma-separated host:port list ([v6]:port for IPv6); empty means no IMAP service" },
	{ "imap.max_line_length", CFG_SIZE, "64k", 1024, 1048576, NULL, true, OFF(imap_max_line_length),
	  "Longest IMAP command, in bytes of text (literals not counted); longer commands get BAD" },
	{ "imap.max_message_size", CFG_SIZE, "50M", 1024, 2ull << 30, NULL, true, OFF(imap_max_message_size),
	  "Largest message APPEND accepts, in bytes; larger literals get NO [TOOBIG]" },
	{ "imap.max_connections", CFG_UINT, "5000", 1, 1000000, NULL, true, OFF(imap_max_connections),
	  "Concurrent IMAP sessions at most; more are turned away with BYE" },
	{ "imap.max_errors", CFG_UINT, "20", 1, 1000, NULL, true, OFF(imap_max_errors),
	  "BAD replies in one session before the server hangs up with BYE" },
	{ "imap.timeout.login", CFG_DURATION, "1m", 1000, 3600000, NULL, true, OFF(imap_timeout_login_ms),
	  "Idle time allowed before a session has logged in" },
	{ "imap.timeout.idle", CFG_DURATION, "30m", 60000, 86400000, NULL, true, OFF(imap_timeout_idle_ms),
	  "Idle time allowed after login, IDLE included (RFC 3501: at least 30 minutes)" },
	{ "imap.store_threads", CFG_UINT, "2", 1, 64, NULL, false, OFF(imap_store_threads),
	  "Threads per network thread that run IMAP's index writes, fsyncs and password checks" },
	{ "imap.flag_fsync", CFG_BOOL, "no", 0, 0, NULL, false, OFF(imap_flag_fsync),
	  "IMAP flag changes (STORE, \\Seen set by FETCH) fsync the index before the reply; no: durable at the next fsynced commit or checkpoint (with store.fsync=yes)" },
	{ "imaps.listen", CFG_STRING, "", 0, 0, NULL, false, OFF(imaps_listen),
	  "IMAP listeners with implicit TLS (port 993, RFC 8314), host:port list; empty means none" },
	{ "pop3.listen", CFG_STRING, "", 0, 0, NULL, false, OFF(pop3_listen),
	  "POP3 listeners, comma-separated host:port list ([v6]:port for IPv6); empty means no POP3 service" },
	{ "pop3s.listen", CFG_STRING, "", 0, 0, NULL, false, OFF(pop3s_listen),
	  "POP3 listeners with implicit TLS (port 995, RFC 8314), host:port list; empty means none" },
	{ "submission.listen", CFG_STRING, "", 0, 0, NULL, false, OFF(submission_listen),
	  "Message submission listeners (port 587, RFC 6409: STARTTLS, then AUTH), host:port list; empty means none" },
	{ "submissions.listen", CFG_STRING, "", 0, 0, NULL, false, OFF(submissions_listen),
	  "Message submission listeners with implicit TLS (port 465, RFC 8314), host:port list; empty means none" },
	{ "pop3.max_connections", CFG_UINT, "2000", 1, 1000000, NULL, true, OFF(pop3_max_connections),
	  "Concurrent POP3 sessions at most; more are turned away with -ERR [SYS/TEMP]" },
	{ "pop3.max_errors", CFG_UINT, "20", 1, 1000, NULL, true, OFF(pop3_max_errors),
	  "Invalid commands and failed logins in one session before the server hangs up" },
	{ "pop3.timeout.login", CFG_DURATION, "1m", 1000, 3600000, NULL, true, OFF(pop3_timeout_login_ms),
	  "Idle time allowed before a session has logged in" },
	{ "pop3.timeout.idle", CFG_DURATION, "10m", 60000, 86400000, NULL, true, OFF(pop3_timeout_idle_ms),
	  "Idle time allowed after login (RFC 1939: at least 10 minutes)" },
	{ "pop3.store_threads", CFG_UINT, "2", 1, 64, NULL, false, OFF(pop3_store_threads),
	  "Threads per network thread that run POP3's password checks, mailbox reads and deletions" },
	{ "auth.cache_ttl", CFG_DURATION, "1h", 0, 86400000, NULL, false, OFF(auth_cache_ttl_ms),
	  "How long a successful IMAP, POP3 or submission password check is remembered (a keyed BLAKE2b tag of stored hash and password, never the password; failures are never remembered; a password change takes effect at once), so reconnecting clients skip SHA512-crypt, bcrypt or Argon2. Trade-off: a dump of the daemon's memory would let an attacker test guesses for the passwords used within this time at BLAKE2b speed instead of the stored scheme's; 0 turns the cache off (see docs/SECURITY.md)" },
	{ "auth.cache_size", CFG_UINT, "65536", 0, 16777216, NULL, false, OFF(auth_cache_size),
	  "Entries of the verified-password cache (40 bytes each, allocated once at start; the oldest entry of a full bucket is replaced); 0 turns the cache off" },
	{ "tls.cert_file", CFG_STRING, "", 0, 0, NULL, false, OFF(tls_cert_file),
	  "PEM certificate chain; empty means <state_dir>/tls/cert.pem, self-signed and made on first start" },
	{ "tls.key_file", CFG_STRING, "", 0, 0, NULL, false, OFF(tls_key_file),
	  "PEM private key; empty means <state_dir>/tls/key.pem" },
	{ "store.index", CFG_STRING, "", 0, 0, NULL, false, OFF(store_index_path),
	  "SQLite index file; empty means <state_dir>/index.db" },
	{ "store.blob_dir", CFG_STRING, "", 0, 0, NULL, false, OFF(store_blob_dir),
	  "Directory of message blob files; empty means <state_dir>/blobs" },
	{ "store.fsync", CFG_BOOL, "yes", 0, 0, NULL, false, OFF(store_fsync),
	  "fsync blobs, directories and the index before replying 250; 'no' keeps ACI but gives up D (benchmarks only)" },
	{ "store.blob_writers", CFG_UINT, "4", 1, 64, NULL, false, OFF(store_blob_writers),
	  "Threads that write and fsync message blobs in parallel" },
	{ "store.commit_batch", CFG_UINT, "512", 1, 100000, NULL, false, OFF(store_commit_batch),
	  "Most deliveries committed to the index in one transaction (group commit)" },
	{ "quota.default_bytes", CFG_SIZE, "0", 0, U64MAX, NULL, true, OFF(quota_default_bytes),
	  "Storage quota for new accounts, in bytes; 0 means unlimited" },
	{ "quota.default_messages", CFG_UINT, "0", 0, U64MAX, NULL, true, OFF(quota_default_messages),
	  "Message-count quota for new accounts; 0 means unlimited" },
	{ "quota.over_quota_reply", CFG_ENUM, "temporary", 0, 0, quota_replies, true, OFF(quota_over_reply),
	  "Reply to mail for a full mailbox: temporary (452 4.2.2) or permanent (552 5.2.2)" },
	{ "guard.enabled", CFG_BOOL, "yes", 0, 0, NULL, true, OFF(guard_enabled),
	  "Apply the connection guard (rates, concurrency, fair shares, bans) to every listener" },
	{ "guard.allow", CFG_STRING, "", 0, 0, NULL, true, OFF(guard_allow),
	  "Comma-separated CIDRs (192.0.2.0/24, 2001:db8::/32, 198.51.100.7) that bypass every guard limit and ban" },
	{ "guard.table_entries", CFG_UINT, "65536", 1024, 16777216, NULL, false, OFF(guard_table_entries),
	  "Tracked sources per class (mx, user): fixed memory, 40 bytes each; idle entries are recycled" },
	{ "guard.ban_entries", CFG_UINT, "16384", 1024, 16777216, NULL, false, OFF(guard_ban_entries),
	  "Room for banned addresses (32 bytes each); a full bucket displaces the ban expiring soonest" },
	{ "guard.ipv4_prefix", CFG_UINT, "24", 8, 32, NULL, false, OFF(guard_ipv4_prefix),
	  "Prefix length that makes an IPv4 network for network limits and fair shares" },
	{ "guard.ipv6_prefix", CFG_UINT, "64", 16, 128, NULL, false, OFF(guard_ipv6_prefix),
	  "Prefix length that makes an IPv6 network (one site's LAN) for network limits and fair shares" },
	{ "guard.ipv6_wide_prefix", CFG_UINT, "48", 16, 128, NULL, false, OFF(guard_ipv6_wide_prefix),
	  "Prefix length of the wider IPv6 network (one customer's allocation) with its own limits" },
	{ "guard.fair_share_above", CFG_UINT, "80", 1, 100, NULL, true, OFF(guard_fair_share_percent),
	  "Percent of a class's max_connections above which a network over its fair share is refused" },
	{ "guard.offence_bans", CFG_STRING, "1m,10m,1h,1d", 0, 0, NULL, true, OFF(guard_offence_bans),
	  "Bans for a client's 1st, 2nd, ... protocol offence (up to 8 durations, each at least the one before; the last repeats)" },
	{ "guard.offence_forget", CFG_DURATION, "7d", 60000, 31536000000, NULL, true, OFF(guard_offence_forget_ms),
	  "How long after its last ban expires a client's offence count is kept (a later offence starts the ladder again)" },
	{ "guard.auth.delay", CFG_DURATION, "250ms", 0, 10000, NULL, true, OFF(guard_auth_delay_ms),
	  "Delay before the reply to a failed IMAP/POP3 login, doubled for each earlier failure of the same source or account (0: none)" },
	{ "guard.auth.max_delay", CFG_DURATION, "8s", 0, 60000, NULL, true, OFF(guard_auth_max_delay_ms),
	  "Longest delay before the reply to a failed login" },
	{ "guard.auth.ban_after", CFG_UINT, "10", 1, 100000, NULL, true, OFF(guard_auth_ban_after),
	  "Failed logins from one address (within guard.auth.window of each other) that ban it, as a protocol offence" },
	{ "guard.auth.window", CFG_DURATION, "15m", 60000, 86400000, NULL, true, OFF(guard_auth_window_ms),
	  "Failed logins of an address or an account are forgotten this long after the last one" },
	{ "guard.mx.proxy_from", CFG_STRING, "", 0, 0, NULL, true, OFF(guard_proxy_from[0]),
	  "Comma-separated CIDRs of load balancers that send a PROXY protocol header (v1 or v2) before inbound SMTP; empty: none" },
	{ "guard.user.proxy_from", CFG_STRING, "", 0, 0, NULL, true, OFF(guard_proxy_from[1]),
	  "Comma-separated CIDRs of load balancers that send a PROXY protocol header (v1 or v2) before IMAP, POP3 and submission; empty: none" },
	{ "guard.proxy_timeout", CFG_DURATION, "5s", 100, 60000, NULL, true, OFF(guard_proxy_timeout_ms),
	  "Time a load balancer has to send the whole PROXY header" },
	{ "guard.smtp.banner_delay", CFG_DURATION, "3s", 0, 60000, NULL, true, OFF(guard_smtp_banner_delay_ms),
	  "Longest wait before the SMTP banner, reached when the mx class is full (0 when idle, in proportion between); a client speaking before the banner is refused and banned; 0 turns it off" },
	{ "guard.nft.enabled", CFG_BOOL, "yes", 0, 0, NULL, false, OFF(guard_nft_enabled),
	  "Mirror every ban into an nftables set with its remaining time, so the kernel drops banned sources' SYNs (needs root or CAP_NET_ADMIN at start)" },
	{ "guard.nft.table", CFG_STRING, "inet strata", 0, 0, NULL, false, OFF(guard_nft_table),
	  "nftables table (family inet) that Strata creates at start, owns, and deletes at a clean shutdown" },
	{ "guard.nft.set4", CFG_STRING, "ban4", 0, 0, NULL, false, OFF(guard_nft_set4),
	  "nftables set of banned IPv4 addresses, in guard.nft.table" },
	{ "guard.nft.set6", CFG_STRING, "ban6", 0, 0, NULL, false, OFF(guard_nft_set6),
	  "nftables set of banned IPv6 addresses, in guard.nft.table" },
	{ "guard.nft.ports", CFG_STRING, "", 0, 0, NULL, false, OFF(guard_nft_ports),
	  "Comma-separated TCP ports the kernel drop rule covers; empty: the ports of every SMTP, IMAP and POP3 listener" },
	{ "guard.good.entries", CFG_UINT, "65536", 1024, 16777216, NULL, false, OFF(guard_good_entries),
	  "Room for remembered good senders (32 bytes each); a full bucket forgets one by clock (second chance)" },
	{ "guard.good.ttl", CFG_DURATION, "7d", 60000, 31536000000, NULL, true, OFF(guard_good_ttl_ms),
	  "How long an address is remembered as a good sender after its last clean delivery or successful login" },
	{ "guard.good.reserve", CFG_UINT, "20", 0, 90, NULL, true, OFF(guard_good_reserve_percent),
	  "Percent of each class's max_connections that only good senders may use; good senders also skip the banner delay" },
	{ "guard.mx.max_connections", CFG_UINT, "2000", 1, 1000000, NULL, true, OFF(guard_max_connections[0]),
	  "Concurrent inbound SMTP connections the guard admits; above guard.fair_share_above percent of it, fair shares apply" },
	{ "guard.mx.addr.burst", CFG_UINT, "30", 1, 10000, NULL, true, OFF(guard_limits[0][0].burst),
	  "inbound SMTP: connections one address may open at once after a quiet spell (token bucket size)" },
	{ "guard.mx.addr.rate", CFG_UINT, "120", 0, 600000, NULL, true, OFF(guard_limits[0][0].rate),
	  "inbound SMTP: sustained new connections per minute from one address (bucket refill); 0 means no rate limit" },
	{ "guard.mx.addr.concurrency", CFG_UINT, "20", 0, 1000000, NULL, true, OFF(guard_limits[0][0].concurrency),
	  "inbound SMTP: connections open at once from one address; 0 means no limit" },
	{ "guard.mx.net.burst", CFG_UINT, "100", 1, 10000, NULL, true, OFF(guard_limits[0][1].burst),
	  "inbound SMTP: connections one network (guard.ipv4_prefix / guard.ipv6_prefix) may open at once after a quiet spell (token bucket size)" },
	{ "guard.mx.net.rate", CFG_UINT, "600", 0, 600000, NULL, true, OFF(guard_limits[0][1].rate),
	  "inbound SMTP: sustained new connections per minute from one network (guard.ipv4_prefix / guard.ipv6_prefix) (bucket refill); 0 means no rate limit" },
	{ "guard.mx.net.concurrency", CFG_UINT, "100", 0, 1000000, NULL, true, OFF(guard_limits[0][1].concurrency),
	  "inbound SMTP: connections open at once from one network (guard.ipv4_prefix / guard.ipv6_prefix); 0 means no limit" },
	{ "guard.mx.wide.burst", CFG_UINT, "300", 1, 10000, NULL, true, OFF(guard_limits[0][2].burst),
	  "inbound SMTP: connections one wide IPv6 network (guard.ipv6_wide_prefix) may open at once after a quiet spell (token bucket size)" },
	{ "guard.mx.wide.rate", CFG_UINT, "2000", 0, 600000, NULL, true, OFF(guard_limits[0][2].rate),
	  "inbound SMTP: sustained new connections per minute from one wide IPv6 network (guard.ipv6_wide_prefix) (bucket refill); 0 means no rate limit" },
	{ "guard.mx.wide.concurrency", CFG_UINT, "300", 0, 1000000, NULL, true, OFF(guard_limits[0][2].concurrency),
	  "inbound SMTP: connections open at once from one wide IPv6 network (guard.ipv6_wide_prefix); 0 means no limit" },
	{ "guard.user.max_connections", CFG_UINT, "5000", 1, 1000000, NULL, true, OFF(guard_max_connections[1]),
	  "Concurrent IMAP, POP3 and submission connections the guard admits; above guard.fair_share_above percent of it, fair shares apply" },
	{ "guard.user.addr.burst", CFG_UINT, "100", 1, 10000, NULL, true, OFF(guard_limits[1][0].burst),
	  "IMAP, POP3 and submission: connections one address may open at once after a quiet spell (token bucket size)" },
	{ "guard.user.addr.rate", CFG_UINT, "600", 0, 600000, NULL, true, OFF(guard_limits[1][0].rate),
	  "IMAP, POP3 and submission: sustained new connections per minute from one address (bucket refill); 0 means no rate limit" },
	{ "guard.user.addr.concurrency", CFG_UINT, "200", 0, 1000000, NULL, true, OFF(guard_limits[1][0].concurrency),
	  "IMAP, POP3 and submission: connections open at once from one address; 0 means no limit" },
	{ "guard.user.net.burst", CFG_UINT, "500", 1, 10000, NULL, true, OFF(guard_limits[1][1].burst),
	  "IMAP, POP3 and submission: connections one network (guard.ipv4_prefix / guard.ipv6_prefix) may open at once after a quiet spell (token bucket size)" },
	{ "guard.user.net.rate", CFG_UINT, "3000", 0, 600000, NULL, true, OFF(guard_limits[1][1].rate),
	  "IMAP, POP3 and submission: sustained new connections per minute from one network (guard.ipv4_prefix / guard.ipv6_prefix) (bucket refill); 0 means no rate limit" },
	{ "guard.user.net.concurrency", CFG_UINT, "1000", 0, 1000000, NULL, true, OFF(guard_limits[1][1].concurrency),
	  "IMAP, POP3 and submission: connections open at once from one network (guard.ipv4_prefix / guard.ipv6_prefix); 0 means no limit" },
	{ "guard.user.wide.burst", CFG_UINT, "1500", 1, 10000, NULL, true, OFF(guard_limits[1][2].burst),
	  "IMAP, POP3 and submission: connections one wide IPv6 network (guard.ipv6_wide_prefix) may open at once after a quiet spell (token bucket size)" },
	{ "guard.user.wide.rate", CFG_UINT, "10000", 0, 600000, NULL, true, OFF(guard_limits[1][2].rate),
	  "IMAP, POP3 and submission: sustained new connections per minute from one wide IPv6 network (guard.ipv6_wide_prefix) (bucket refill); 0 means no rate limit" },
	{ "guard.user.wide.concurrency", CFG_UINT, "3000", 0, 1000000, NULL, true, OFF(guard_limits[1][2].concurrency),
	  "IMAP, POP3 and submission: connections open at once from one wide IPv6 network (guard.ipv6_wide_prefix); 0 means no limit" },
	{ "store.backup_dir", CFG_STRING, "", 0, 0, NULL, false, OFF(store_backup_dir),
	  "Directory of index backups (ideally another disk); empty means <state_dir>/backup" },
	{ "store.backup_interval", CFG_DURATION, "1h", 0, 604800000, NULL, false, OFF(store_backup_interval_ms),
	  "How often the daemon backs up the index online; 0 disables periodic backups" },
	{ "store.startup_check", CFG_ENUM, "probe", 0, 0, startup_checks, false, OFF(store_startup_check),
	  "How the index is checked at start before it is used: probe (the edges of every table, constant time) or quick_check (every page: seconds per GB); every backup runs a full integrity_check either way" },
	{ "store.backup_keep", CFG_UINT, "24", 1, 10000, NULL, false, OFF(store_backup_keep),
	  "Verified index backups kept; older ones are deleted after a new one is verified" },
	{ "store.mime_dict", CFG_BOOL, "yes", 0, 0, NULL, false, OFF(store_mime_dict),
	  "Compress cached MIME rows with zstd dictionaries trained on this index's own mail; 'no' writes raw rows (compressed ones are still read)" },
	{ "store.mime_dict_rows", CFG_UINT, "2000", 10, 1000000, NULL, false, OFF(store_mime_dict_rows),
	  "MIME rows the index holds before its first dictionary is trained (then again at 10x the rows of the newest one)" },
	{ "store.checkpointer", CFG_BOOL, "yes", 0, 0, NULL, false, OFF(store_checkpointer),
	  "Copy the index's write-ahead log into the index (WAL checkpoint) on a thread of its own, so deliveries never wait for it; 'no' leaves it to whichever commit fills the log (SQLite's default)" },
	{ "store.checkpoint_pages", CFG_UINT, "0", 0, 1000000, NULL, false, OFF(store_checkpoint_pages),
	  "Pages (4 KiB) in the index's write-ahead log, not yet copied into index.db, that call for a checkpoint; "
	  "0: automatic (1000 while index.db is under 64 MiB, 256 from then on)" },
	{ "tier.names", CFG_STRING, "", 0, 0, NULL, false, OFF(tier_names),
	  "Storage tiers, fastest first, comma-separated (e.g. fast,standard,archive); empty means one tier 'fast' at store.blob_dir. Per tier: tier.<name>.path, .capacity, .compress (none or zstd) and .compress_level (1-19, default 3)" },
	{ "tier.pin", CFG_STRING, "", 0, 0, NULL, false, OFF(tier_pin),
	  "Placement pins, comma-separated: folder:<name or role>=<tier> or account:<address>=<tier> (e.g. folder:Archive=archive)" },
	{ "tier.half_life", CFG_DURATION, "7d", 3600000, 31536000000ull, NULL, false, OFF(tier_half_life_ms),
	  "Half-life of a message's heat from reads and delivery (exponential decay)" },
	{ "tier.promote_days", CFG_UINT, "1", 1, 30, NULL, false, OFF(tier_promote_days),
	  "Distinct days (of the last 30) a message must be read on before the mover promotes it to a faster tier" },
	{ "tier.move_rate", CFG_SIZE, "20M", 65536, 1ull << 40, NULL, false, OFF(tier_move_bytes_per_s),
	  "Mover I/O budget in bytes per second (token bucket), shared by the daemon's mover and `strata tier move`" },
	{ "tier.move_files", CFG_UINT, "200", 1, 1000000, NULL, false, OFF(tier_move_files_per_s),
	  "Mover budget in files moved per second (token bucket)" },
	{ "tier.interval", CFG_DURATION, "1m", 100, 86400000, NULL, false, OFF(tier_interval_ms),
	  "Time between two placement passes of the daemon's mover; heat is flushed every 2 seconds regardless" },
	{ "tier.batch", CFG_UINT, "1000", 1, 1000000, NULL, false, OFF(tier_batch),
	  "Most moves the mover makes in one placement pass" },
	{ "tier.checkpoint_interval", CFG_DURATION, "10m", 1000, 86400000, NULL, false, OFF(tier_checkpoint_interval_ms),
	  "How often the daemon's mover snapshots the heat table into a checkpoint file on the last tier (the state directory with one tier), for `strata tier rebuild`" },
	{ "relay.threads", CFG_UINT, "2", 1, 64, NULL, false, OFF(relay_threads),
	  "Outbound delivery threads: SMTP client connections to remote hosts at once, at most" },
	{ "relay.retry_min", CFG_DURATION, "5m", 1000, 86400000, NULL, false, OFF(relay_retry_min_ms),
	  "Delay before the first retry of a deferred outbound delivery; it doubles per attempt up to relay.retry_max" },
	{ "relay.retry_max", CFG_DURATION, "1h", 1000, 86400000, NULL, false, OFF(relay_retry_max_ms),
	  "Longest delay between two attempts of a deferred outbound delivery" },
	{ "relay.max_lifetime", CFG_DURATION, "5d", 0, 8640000000ull, NULL, false, OFF(relay_max_lifetime_ms),
	  "How long outbound mail is retried before it is returned to its sender (bounce); 0 bounces at the first temporary failure" },
	{ "relay.connect_timeout", CFG_DURATION, "30s", 100, 600000, NULL, false, OFF(relay_connect_timeout_ms),
	  "Time allowed to open a TCP connection to a remote SMTP server (each address is tried in turn)" },
	{ "relay.command_timeout", CFG_DURATION, "5m", 1000, 3600000, NULL, false, OFF(relay_command_timeout_ms),
	  "Time allowed for each reply of a remote SMTP server (RFC 5321 4.5.3.2: 5 minutes); the reply to the end of data gets twice this" },
	{ "relay.destination_concurrency", CFG_UINT, "20", 1, 1000, NULL, false, OFF(relay_destination_concurrency),
	  "Connections to one destination domain at once, at most" },
	{ "relay.tls", CFG_ENUM, "may", 0, 0, relay_tls_levels, false, OFF(relay_tls),
	  "Outbound TLS: may (STARTTLS when offered, certificate not verified) or encrypt (defer mail to servers without STARTTLS)" },
	{ "relay.helo_name", CFG_STRING, "", 0, 0, NULL, false, OFF(relay_helo_name),
	  "Name the relay gives in EHLO/HELO; empty means the hostname setting" },
	{ "relay.transport", CFG_STRING, "", 0, 0, NULL, false, OFF(relay_transport),
	  "Static routes instead of MX lookups: \"domain=host:port,...\" and \"*=host:port\" for a smarthost; empty means MX lookups for every domain" },
	{ "relay.dns_servers", CFG_STRING, "", 0, 0, NULL, false, OFF(relay_dns_servers),
	  "DNS servers for MX and address lookups, \"ip:port,...\" ([v6]:port); empty means the system resolver (/etc/resolv.conf)" },
};

const struct config_key *config_keys(size_t *count)
{
	*count = ARRAY_LEN(keys);
	return keys;
}

static const struct config_key *find_key(const char *name)
{
	for (size_t i = 0; i < ARRAY_LEN(keys); i++) {
		if (strcmp(keys[i].name, name) == 0)
			return &keys[i];
	}
	return NULL;
}

/* Stores `value` into the field for `k`.  Returns an error text or NULL. */
static char *set_value(struct settings *s, const struct config_key *k, const char *value)
{
	void *field = (char *)s + k->offset;
	uint64_t v = 0;
	bool b;
	switch (k->type) {
	case CFG_STRING:
		free(*(char **)field);
		*(char **)field = xstrdup(value);
		return NULL;
	case CFG_BOOL:
		if (!str_parse_bool(value, &b))
			return xasprintf("%s: '%s' is not yes or no", k->name, value);
		*(bool *)field = b;
		return NULL;
	case CFG_ENUM:
		for (unsigned i = 0; k->choices[i]; i++) {
			if (str_ieq(value, k->choices[i])) {
				*(unsigned *)field = i;
				return NULL;
			}
		}
		{
			struct buf choices = BUF_INIT;
			for (unsigned i = 0; k->choices[i]; i++)
				buf_printf(&choices, "%s%s", i ? ", " : "", k->choices[i]);
			char *e = xasprintf("%s: '%s' is not one of: %s", k->name, value, choices.data);
			buf_free(&choices);
			return e;
		}
	case CFG_UINT:
		if (!str_parse_u64(value, &v))
			return xasprintf("%s: '%s' is not a whole number", k->name, value);
		break;
	case CFG_SIZE:
		if (!str_parse_size(value, &v))
			return xasprintf("%s: '%s' is not a size (e.g. 512k, 50M, 2G)", k->name, value);
		break;
	case CFG_DURATION:
		if (!str_parse_duration_ms(value, &v))
			return xasprintf("%s: '%s' is not a duration (e.g. 250ms, 30s, 5m, 2h)", k->name, value);
		break;
	}
	if (v < k->min || v > k->max)
		return xasprintf("%s: %s is out of range (%llu to %llu)", k->name, value,
				 (unsigned long long)k->min, (unsigned long long)k->max);
	*(uint64_t *)field = v;
	return NULL;
}

/* ---- Tiers ----------------------------------------------------------------
 * tier.<name>.path, .capacity, .compress and .compress_level are not rows of the fixed table
 * (tier names are the administrator's); they are collected as raw lines in
 * settings->tier_defs and resolved by tier_resolve() after the table. */
static const char *const tier_attrs[] = { "path", "capacity", "compress", "compress_level" };

static bool tier_name_ok(const char *n, size_t len)
{
	if (len == 0 || len > CONFIG_TIER_NAME_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = n[i];
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
			return false;
	}
	return true;
}

/* "tier.<name>.<attr>" with a known attr. */
static bool tier_key_is_per_tier(const char *key)
{
	if (strncmp(key, "tier.", 5) != 0)
		return false;
	const char *dot = strrchr(key + 5, '.');
	if (dot == NULL || !tier_name_ok(key + 5, (size_t)(dot - (key + 5))))
		return false;
	for (size_t i = 0; i < ARRAY_LEN(tier_attrs); i++) {
		if (strcmp(dot + 1, tier_attrs[i]) == 0)
			return true;
	}
	return false;
}

static char *tier_def_add(struct settings *s, const char *key, const char *value)
{
	if (strchr(value, '\n') != NULL)
		return xasprintf("%s: value contains a line break", key);
	struct buf b = BUF_INIT;
	buf_append_str(&b, s->tier_defs ? s->tier_defs : "");
	if (b.len > 64 * 1024) {
		buf_free(&b);
		return xasprintf("%s: too many tier settings", key);
	}
	buf_printf(&b, "%s=%s\n", key + 5, value);
	free(s->tier_defs);
	s->tier_defs = buf_steal(&b);
	buf_free(&b);
	return NULL;
}

static int tier_index(const struct settings *s, const char *name, size_t len)
{
	for (size_t i = 0; i < s->n_tiers; i++) {
		if (strlen(s->tiers[i].name) == len && memcmp(s->tiers[i].name, name, len) == 0)
			return (int)i;
	}
	return -1;
}

static char *tier_parse_names(struct settings *s)
{
	const char *list = s->tier_names[0] ? s->tier_names : "fast";
	char *copy = xstrdup(list), *save = NULL, *err = NULL;
	for (char *tok = strtok_r(copy, ",", &save); tok && !err; tok = strtok_r(NULL, ",", &save)) {
		char *n = str_trim(tok);
		if (!tier_name_ok(n, strlen(n)))
			err = xasprintf("tier.names: '%s' is not a tier name (a-z, 0-9, _ and -, at most %d)",
					n, CONFIG_TIER_NAME_MAX);
		else if (tier_index(s, n, strlen(n)) >= 0)
			err = xasprintf("tier.names: '%s' appears twice", n);
		else if (s->n_tiers == CONFIG_TIER_MAX)
			err = xasprintf("tier.names: more than %d tiers", CONFIG_TIER_MAX);
		else
			strcpy(s->tiers[s->n_tiers++].name, n);
	}
	free(copy);
	if (!err && s->n_tiers == 0)
		err = xstrdup("tier.names: no tier named");
	return err;
}

/* "80%" or a size. */
static char *tier_parse_capacity(struct tier_setting *t, const char *v)
{
	size_t len = strlen(v);
	uint64_t n;
	if (len > 1 && v[len - 1] == '%') {
		char num[8];
		if (len - 1 >= sizeof(num))
			return xasprintf("tier.%s.capacity: '%s' is not a percentage", t->name, v);
		memcpy(num, v, len - 1);
		num[len - 1] = '\0';
		if (!str_parse_u64(num, &n) || n < 1 || n > 100)
			return xasprintf("tier.%s.capacity: '%s' is not 1%% to 100%%", t->name, v);
		t->capacity_percent = (unsigned)n;
		t->capacity_bytes = 0;
		return NULL;
	}
	if (!str_parse_size(v, &n))
		return xasprintf("tier.%s.capacity: '%s' is not a size or a percentage", t->name, v);
	t->capacity_bytes = n;
	t->capacity_percent = 0;
	return NULL;
}

/* "none" or "zstd"; the level 1..TIER_COMPRESS_LEVEL_MAX. */
static char *tier_parse_compress(struct tier_setting *t, const char *attr, const char *v)
{
	if (strcmp(attr, "compress") == 0) {
		if (strcmp(v, "none") == 0)
			t->compress = TIER_COMPRESS_NONE;
		else if (strcmp(v, "zstd") == 0)
			t->compress = TIER_COMPRESS_ZSTD;
		else
			return xasprintf("tier.%s.compress: '%s' is not none or zstd", t->name, v);
		return NULL;
	}
	uint64_t n;
	if (!str_parse_u64(v, &n) || n < 1 || n > TIER_COMPRESS_LEVEL_MAX)
		return xasprintf("tier.%s.compress_level: '%s' is not 1 to %d", t->name, v, TIER_COMPRESS_LEVEL_MAX);
	t->compress_level = (int)n;
	return NULL;
}

static char *tier_apply_def(struct settings *s, char *line, bool *blob_dir_set)
{
	char *eq = strchr(line, '=');
	char *dot = strchr(line, '.');
	if (eq == NULL || dot == NULL || dot > eq)
		panic("tier_defs line without name.attr=value");
	*eq = '\0';
	const char *attr = dot + 1, *v = eq + 1;
	int i = tier_index(s, line, (size_t)(dot - line));
	if (i < 0) {
		*dot = '\0';
		return xasprintf("tier.%s.%s: '%s' is not in tier.names", line, attr, line);
	}
	struct tier_setting *t = &s->tiers[i];
	if (strcmp(attr, "capacity") == 0)
		return tier_parse_capacity(t, v);
	if (strncmp(attr, "compress", 8) == 0)
		return tier_parse_compress(t, attr, v);
	if (v[0] == '\0' || strlen(v) + 64 >= PATH_MAX_TIER)
		return xasprintf("tier.%s.path: empty or too long", t->name);
	free(t->path);
	t->path = xstrdup(v);
	if (i == 0)
		*blob_dir_set = true;
	return NULL;
}

static char *tier_parse_pins(struct settings *s)
{
	char *copy = xstrdup(s->tier_pin), *save = NULL, *err = NULL;
	for (char *tok = strtok_r(copy, ",", &save); tok && !err; tok = strtok_r(NULL, ",", &save)) {
		char *item = str_trim(tok);
		if (*item == '\0')
			continue;
		char *colon = strchr(item, ':'), *eq = strrchr(item, '=');
		unsigned kind;
		if (colon && (size_t)(colon - item) == 6 && strncmp(item, "folder", 6) == 0)
			kind = TIER_PIN_FOLDER;
		else if (colon && (size_t)(colon - item) == 7 && strncmp(item, "account", 7) == 0)
			kind = TIER_PIN_ACCOUNT;
		else {
			err = xasprintf("tier.pin: '%s' does not start with folder: or account:", item);
			break;
		}
		if (eq == NULL || eq < colon + 2 || eq[1] == '\0') {
			err = xasprintf("tier.pin: '%s' is not <kind>:<match>=<tier>", item);
			break;
		}
		int t = tier_index(s, eq + 1, strlen(eq + 1));
		if (t < 0)
			err = xasprintf("tier.pin: '%s' names a tier not in tier.names", item);
		else if (s->n_tier_pins == CONFIG_TIER_PIN_MAX)
			err = xasprintf("tier.pin: more than %d pins", CONFIG_TIER_PIN_MAX);
		else {
			struct tier_pin_setting *p = &s->tier_pins[s->n_tier_pins++];
			p->kind = kind;
			p->match = xstrndup(colon + 1, (size_t)(eq - colon - 1));
			p->tier = (unsigned)t;
		}
	}
	free(copy);
	return err;
}

/* Builds settings->tiers and ->tier_pins; runs after resolve_derived. */
static char *tier_resolve(struct settings *s, bool blob_dir_explicit)
{
	char *err = tier_parse_names(s);
	bool first_path = false;
	char *defs = xstrdup(s->tier_defs ? s->tier_defs : ""), *save = NULL;
	for (char *line = strtok_r(defs, "\n", &save); line && !err; line = strtok_r(NULL, "\n", &save))
		err = tier_apply_def(s, line, &first_path);
	free(defs);
	if (err)
		return err;
	if (first_path) {
		if (blob_dir_explicit && strcmp(s->store_blob_dir, s->tiers[0].path) != 0)
			return xasprintf("tier.%s.path and store.blob_dir differ: the first tier is the blob directory",
					 s->tiers[0].name);
		free(s->store_blob_dir);
		s->store_blob_dir = xstrdup(s->tiers[0].path);
	} else {
		s->tiers[0].path = xstrdup(s->store_blob_dir);
	}
	for (size_t i = 0; i < s->n_tiers; i++) {
		struct tier_setting *t = &s->tiers[i];
		if (t->compress_level != 0 && t->compress != TIER_COMPRESS_ZSTD)
			return xasprintf("tier.%s.compress_level needs tier.%s.compress = zstd", t->name, t->name);
		if (t->compress_level == 0)
			t->compress_level = TIER_COMPRESS_LEVEL_DEFAULT;
	}
	for (size_t i = 1; i < s->n_tiers; i++) {
		if (s->tiers[i].path == NULL)
			return xasprintf("tier.%s.path is not set", s->tiers[i].name);
		for (size_t j = 0; j < i; j++) {
			if (strcmp(s->tiers[i].path, s->tiers[j].path) == 0)
				return xasprintf("tier.%s.path and tier.%s.path are the same directory",
						 s->tiers[j].name, s->tiers[i].name);
		}
	}
	return tier_parse_pins(s);
}

static void tier_free(struct settings *s)
{
	free(s->tier_defs);
	for (size_t i = 0; i < CONFIG_TIER_MAX; i++)
		free(s->tiers[i].path);
	for (size_t i = 0; i < s->n_tier_pins; i++)
		free(s->tier_pins[i].match);
}

/* Parses one "key = value" text (file line or -o).  Returns error or NULL. */
static char *apply_assignment(struct settings *s, char *line)
{
	char *eq = strchr(line, '=');
	if (eq == NULL)
		return xasprintf("expected 'key = value', got '%s'", line);
	*eq = '\0';
	char *name = str_trim(line);
	char *value = str_trim(eq + 1);
	size_t vlen = strlen(value);
	if (vlen >= 2 && value[0] == '"' && value[vlen - 1] == '"') {
		value[vlen - 1] = '\0';
		value++;
	}
	const struct config_key *k = find_key(name);
	if (k == NULL && tier_key_is_per_tier(name))
		return tier_def_add(s, name, value);
	if (k == NULL)
		return xasprintf("unknown setting '%s' (see `strata config show`)", name);
	return set_value(s, k, value);
}

/* Cuts the line at the first '#' that is not inside double quotes. */
static void strip_comment(char *line)
{
	bool quoted = false;
	for (char *p = line; *p; p++) {
		if (*p == '"')
			quoted = !quoted;
		else if (*p == '#' && !quoted) {
			*p = '\0';
			return;
		}
	}
}

static char *parse_file(struct settings *s, const char *path)
{
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return xasprintf("%s: %s", path, strerror(errno));
	char *line = NULL;
	size_t cap = 0;
	unsigned lineno = 0;
	char *err = NULL;
	while (err == NULL && getline(&line, &cap, f) >= 0) {
		lineno++;
		strip_comment(line);
		char *t = str_trim(line);
		if (*t == '\0')
			continue;
		char *e = apply_assignment(s, t);
		if (e) {
			err = xasprintf("%s:%u: %s", path, lineno, e);
			free(e);
		}
	}
	free(line);
	fclose(f);
	return err;
}

static void resolve_derived(struct settings *s)
{
	if (s->hostname[0] == '\0') {
		char host[256] = "localhost";
		gethostname(host, sizeof(host) - 1);
		host[sizeof(host) - 1] = '\0';
		free(s->hostname);
		s->hostname = xstrdup(host);
	}
	if (s->threads == 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		s->threads = n > 0 ? (uint64_t)n : 1;
	}
	struct { char **field; const char *suffix; } derived[] = {
		{ &s->tls_cert_file, "tls/cert.pem" },
		{ &s->tls_key_file, "tls/key.pem" },
		{ &s->store_index_path, "index.db" },
		{ &s->store_blob_dir, "blobs" },
		{ &s->store_backup_dir, "backup" },
	};
	for (size_t i = 0; i < ARRAY_LEN(derived); i++) {
		if ((*derived[i].field)[0] == '\0') {
			free(*derived[i].field);
			*derived[i].field = xasprintf("%s/%s", s->state_dir, derived[i].suffix);
		}
	}
}

/* Checks one "address[/prefix]" item of a CIDR list (guard.allow). */
static bool cidr_item_ok(const char *item)
{
	char addr[64];
	const char *slash = strchr(item, '/');
	size_t alen = slash ? (size_t)(slash - item) : strlen(item);
	if (alen == 0 || alen >= sizeof(addr))
		return false;
	memcpy(addr, item, alen);
	addr[alen] = '\0';
	unsigned char bin[16];
	unsigned max_bits;
	if (inet_pton(AF_INET, addr, bin) == 1)
		max_bits = 32;
	else if (inet_pton(AF_INET6, addr, bin) == 1)
		max_bits = 128;
	else
		return false;
	if (slash == NULL)
		return true;
	uint64_t bits;
	return slash[1] != '\0' && strlen(slash + 1) <= 3 && str_parse_u64(slash + 1, &bits) &&
	       bits <= max_bits;
}

/* Cross-key checks and list syntax that a single row cannot express. */
static char *check_settings(const struct settings *s)
{
	if (s->guard_ipv6_wide_prefix > s->guard_ipv6_prefix)
		return xasprintf("guard.ipv6_wide_prefix (%llu) must not be longer than guard.ipv6_prefix (%llu)",
				 (unsigned long long)s->guard_ipv6_wide_prefix,
				 (unsigned long long)s->guard_ipv6_prefix);
	char *list = xstrdup(s->guard_allow), *save = NULL, *err = NULL;
	size_t n = 0;
	for (char *tok = strtok_r(list, ",", &save); tok != NULL && err == NULL;
	     tok = strtok_r(NULL, ",", &save)) {
		char *item = str_trim(tok);
		if (*item == '\0')
			continue;
		if (++n > CONFIG_MAX_ALLOW)
			err = xasprintf("guard.allow: more than %d entries", CONFIG_MAX_ALLOW);
		else if (!cidr_item_ok(item))
			err = xasprintf("guard.allow: '%s' is not an address or address/prefix", item);
	}
	free(list);
	return err;
}

const char *config_effective_path(const char *path)
{
	if (path)
		return path;
	return access(CONFIG_DEFAULT_PATH, F_OK) == 0 ? CONFIG_DEFAULT_PATH : NULL;
}

struct settings *config_load(const char *path, char *const *overrides, size_t n_over, char **error_r)
{
	struct settings *s = xcalloc(1, sizeof(*s));
	for (size_t i = 0; i < ARRAY_LEN(keys); i++) {
		char *e = set_value(s, &keys[i], keys[i].def);
		if (e)
			panic("bad built-in default: %s", e);
	}
	char *err = NULL;
	const char *eff = config_effective_path(path);
	if (eff)
		err = parse_file(s, eff);
	for (size_t i = 0; err == NULL && i < n_over; i++) {
		char *copy = xstrdup(overrides[i]);
		char *e = apply_assignment(s, copy);
		free(copy);
		if (e) {
			err = xasprintf("-o %s: %s", overrides[i], e);
			free(e);
		}
	}
	if (err == NULL)
		err = check_settings(s);
	bool blob_dir_explicit = s->store_blob_dir[0] != '\0';
	if (err == NULL)
		resolve_derived(s);
	if (err == NULL)
		err = tier_resolve(s, blob_dir_explicit);
	if (err) {
		*error_r = err;
		config_free(&s);
		return NULL;
	}
	return s;
}

void config_free(struct settings **sp)
{
	struct settings *s = *sp;
	if (s == NULL)
		return;
	for (size_t i = 0; i < ARRAY_LEN(keys); i++) {
		if (keys[i].type == CFG_STRING)
			free(*(char **)((char *)s + keys[i].offset));
	}
	tier_free(s);
	free(s);
	*sp = NULL;
}

void config_value_text(const struct settings *s, const struct config_key *k, struct buf *out)
{
	const void *field = (const char *)s + k->offset;
	switch (k->type) {
	case CFG_STRING:
		buf_append_str(out, *(char *const *)field);
		break;
	case CFG_BOOL:
		buf_append_str(out, *(const bool *)field ? "yes" : "no");
		break;
	case CFG_ENUM:
		buf_append_str(out, k->choices[*(const unsigned *)field]);
		break;
	case CFG_DURATION: {
		uint64_t ms = *(const uint64_t *)field;
		if (ms % 1000 != 0)
			buf_printf(out, "%llums", (unsigned long long)ms);
		else if (ms % 60000 == 0 && ms != 0)
			buf_printf(out, "%llum", (unsigned long long)(ms / 60000));
		else
			buf_printf(out, "%llus", (unsigned long long)(ms / 1000));
		break;
	}
	case CFG_UINT:
	case CFG_SIZE:
		buf_printf(out, "%llu", (unsigned long long)*(const uint64_t *)field);
		break;
	}
}

bool config_needs_restart(const struct settings *a, const struct settings *b, char **which_r)
{
	struct buf names = BUF_INIT, va = BUF_INIT, vb = BUF_INIT;
	for (size_t i = 0; i < ARRAY_LEN(keys); i++) {
		if (keys[i].reloadable)
			continue;
		buf_reset(&va);
		buf_reset(&vb);
		config_value_text(a, &keys[i], &va);
		config_value_text(b, &keys[i], &vb);
		if (strcmp(va.data, vb.data) != 0)
			buf_printf(&names, "%s%s", names.len ? ", " : "", keys[i].name);
	}
	buf_free(&va);
	buf_free(&vb);
	bool differ = names.len > 0;
	*which_r = differ ? buf_steal(&names) : NULL;
	buf_free(&names);
	return differ;
}
