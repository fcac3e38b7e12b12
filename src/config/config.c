/*
 * config.c - the settings table and the config file parser.
 *
 * Adding a setting: one field in struct settings (config.h) and one row in
 * `keys` below.  Documentation (docs/CONFIG.md) and `strata config show`
 * are generated from this table, so the row's doc line is the user's doc.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define OFF(f) offsetof(struct settings, f)

static const char *const log_targets[] = { "stderr", "syslog", NULL };
static const char *const log_levels[] = { "error", "warning", "info", "debug", NULL };
static const char *const vrfy_modes[] = { "cannot", "disabled", NULL };
static const char *const bare_lf_modes[] = { "normalize", "reject", NULL };
static const char *const quota_replies[] = { "temporary", "permanent", NULL };

#define U64MAX UINT64_MAX
static const struct config_key keys[] = {
	{ "hostname", CFG_STRING, "", 0, 0, NULL, false, OFF(hostname),
	  "Name in the SMTP banner and Received: headers; empty means the host name" },
	{ "state_dir", CFG_STRING, "/var/lib/strata", 0, 0, NULL, false, OFF(state_dir),
	  "Directory holding the index, message blobs, TLS material and run-time state" },
	{ "user", CFG_STRING, "strata", 0, 0, NULL, false, OFF(user),
	  "Unprivileged user the daemon switches to after binding its ports when started as root" },
	{ "log.target", CFG_ENUM, "stderr", 0, 0, log_targets, false, OFF(log_target),
	  "Where log lines go: stderr or syslog (facility mail)" },
	{ "log.level", CFG_ENUM, "info", 0, 0, log_levels, true, OFF(log_level),
	  "Least severe level logged: error, warning, info or debug" },
	{ "threads", CFG_UINT, "0", 0, 256, NULL, false, OFF(threads),
	  "Network event-loop threads; 0 means one per CPU core" },
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
	};
	for (size_t i = 0; i < ARRAY_LEN(derived); i++) {
		if ((*derived[i].field)[0] == '\0') {
			free(*derived[i].field);
			*derived[i].field = xasprintf("%s/%s", s->state_dir, derived[i].suffix);
		}
	}
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
	if (err) {
		*error_r = err;
		config_free(&s);
		return NULL;
	}
	resolve_derived(s);
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
