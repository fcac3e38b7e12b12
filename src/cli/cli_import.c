/*
 * cli_import.c - bulk account import: CSV and Dovecot passwd-file parsing,
 * parallel Argon2id hashing, one all-or-nothing store transaction.
 *
 * Interface and formats: cli_import.h.
 *
 * Why the order read -> duplicates -> domains -> hash -> commit: every
 * check that can fail cheaply runs before hashing, which may take minutes
 * for a large file of clear-text passwords; the single transaction at the
 * end means an error at any step leaves the index exactly as it was.
 *
 * Clear-text passwords live only in import_entry.secret until hashed, are
 * wiped with explicit_bzero when replaced or freed, and never appear in an
 * error message (only a hash's scheme is ever echoed).
 */
#include "cli_import.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "auth.h"

#define CSV_MAX_FIELDS 4
#define PASSWD_FIELDS 8

bool import_format_parse(const char *name, enum import_format *out)
{
	if (str_ieq(name, "csv")) {
		*out = IMPORT_CSV;
		return true;
	}
	if (str_ieq(name, "passwd") || str_ieq(name, "passwd-file")) {
		*out = IMPORT_PASSWD;
		return true;
	}
	return false;
}

const char *import_format_name(enum import_format f)
{
	return f == IMPORT_PASSWD ? "passwd" : f == IMPORT_CSV ? "csv" : "auto";
}

enum import_format import_detect(const char *line)
{
	const char *colon = strchr(line, ':'), *comma = strchr(line, ',');
	if (colon != NULL && (comma == NULL || colon < comma))
		return IMPORT_PASSWD;
	return IMPORT_CSV;
}

void import_entry_clear(struct import_entry *e)
{
	if (e->secret) {
		explicit_bzero(e->secret, strlen(e->secret));
		free(e->secret);
	}
	free(e->address);
	memset(e, 0, sizeof(*e));
}

void import_list_free(struct import_list *l)
{
	for (size_t i = 0; i < l->n; i++)
		import_entry_clear(&l->v[i]);
	free(l->v);
	memset(l, 0, sizeof(*l));
}

static enum import_line_kind line_error(char **error_r, const char *fmt, ...) ATTR_PRINTF(2, 3);
static enum import_line_kind line_error(char **error_r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	*error_r = xvasprintf(fmt, ap);
	va_end(ap);
	return IMPORT_LINE_ERROR;
}

/* ---- fields ---------------------------------------------------------------- */

static char *trimmed_copy(const char *s)
{
	char *c = xstrdup(s);
	char *t = str_trim(c);
	memmove(c, t, strlen(t) + 1);
	return c;
}

/*
 * Splits one CSV record (RFC 4180: fields separated by ',', a field that
 * starts with '"' is quoted and "" inside it is one '"').  A quote inside
 * an unquoted field is kept literally, as most CSV writers expect.
 */
static bool csv_split(const char *line, size_t len, char **fields, size_t *n_r, char **error_r)
{
	size_t i = 0, n = 0;
	for (;;) {
		if (n == CSV_MAX_FIELDS) {
			*error_r = xstrdup("too many fields (at most 4: address,password,quota_bytes,"
					   "quota_messages)");
			goto fail;
		}
		struct buf f = BUF_INIT;
		if (i < len && line[i] == '"') {
			i++;
			for (;;) {
				if (i >= len) {
					buf_free(&f);
					*error_r = xstrdup("unterminated quoted field");
					goto fail;
				}
				if (line[i] == '"') {
					if (i + 1 < len && line[i + 1] == '"') {
						buf_append_char(&f, '"');
						i += 2;
						continue;
					}
					i++;
					break;
				}
				buf_append_char(&f, line[i++]);
			}
			if (i < len && line[i] != ',') {
				buf_free(&f);
				*error_r = xasprintf("unexpected text after the closing quote of field %zu", n + 1);
				goto fail;
			}
		} else {
			size_t start = i;
			while (i < len && line[i] != ',')
				i++;
			buf_append(&f, line + start, i - start);
		}
		fields[n++] = buf_steal(&f);
		if (i >= len)
			break;
		i++; /* the ',' */
	}
	*n_r = n;
	return true;
fail:
	for (size_t k = 0; k < n; k++) {
		explicit_bzero(fields[k], strlen(fields[k]));
		free(fields[k]);
	}
	*n_r = 0;
	return false;
}

/* Light syntax check so that a typo fails before minutes of hashing; the
 * store applies the full rules at insert and its errors name the line too. */
static bool address_plausible(const char *a, char **error_r)
{
	const char *at = strrchr(a, '@');
	if (at == NULL || at == a || at[1] == '\0') {
		*error_r = xasprintf("'%.80s' is not an address of the form user@domain", a);
		return false;
	}
	for (const char *p = a; *p; p++) {
		unsigned char ch = (unsigned char)*p;
		if (ch <= 0x20 || ch >= 0x7f || ch == ',' || ch == ':' || ch == '"') {
			char esc[64];
			log_escape(a, strlen(a), esc, sizeof(esc));
			*error_r = xasprintf("address '%s' contains a character not allowed in addresses", esc);
			return false;
		}
	}
	if (strlen(a) > 318) {
		*error_r = xstrdup("address longer than 318 bytes");
		return false;
	}
	return true;
}

static bool set_address(struct import_entry *e, const char *field, char **error_r)
{
	char *a = trimmed_copy(field);
	str_lower(a);
	if (a[0] == '\0') {
		free(a);
		*error_r = xstrdup("empty address");
		return false;
	}
	if (!address_plausible(a, error_r)) {
		free(a);
		return false;
	}
	e->address = a;
	return true;
}

/* A {SCHEME} prefix ("{MD5-CRYPT}") or a modular-crypt string ("$1$salt$..."):
 * something meant as a hash.  Writes the scheme part for messages. */
static bool looks_like_hash(const char *t, char *scheme, size_t scheme_len)
{
	size_t n = strlen(t);
	if (t[0] == '{') {
		const char *close = strchr(t, '}');
		if (close == NULL || close - t < 2 || close - t > 32)
			return false;
		for (const char *p = t + 1; p < close; p++) {
			if (!isalnum((unsigned char)*p) && *p != '-' && *p != '.' && *p != '_')
				return false;
		}
		snprintf(scheme, scheme_len, "%.*s", (int)(close - t + 1), t);
		return true;
	}
	if (t[0] != '$' || n < 13)
		return false;
	size_t id = strspn(t + 1, "abcdefghijklmnopqrstuvwxyz0123456789");
	if (id == 0 || id > 10 || t[1 + id] != '$')
		return false;
	if (strspn(t, "./$=,+-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") != n)
		return false;
	snprintf(scheme, scheme_len, "%.*s", (int)(id + 2), t);
	return true;
}

/* 13 characters of the crypt(3) alphabet: the traditional DES crypt. */
static bool looks_like_des_crypt(const char *t)
{
	return strlen(t) == 13 &&
	       strspn(t, "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") == 13;
}

static bool set_secret(struct import_entry *e, const char *field, bool passwd_format, char **error_r)
{
	char norm[AUTH_HASH_MAX], scheme[40];
	char *t = trimmed_copy(field);
	bool ok = true;
	if (strncasecmp(t, "{PLAIN}", 7) == 0) {
		/* clear text handed over for migration: hash it like any other */
		e->secret = xstrdup(strchr(field, '}') + 1);
		e->is_hash = false;
	} else if (auth_hash_normalize(t, norm, sizeof(norm))) {
		e->secret = xstrdup(norm);
		e->is_hash = true;
	} else if (looks_like_hash(t, scheme, sizeof(scheme))) {
		*error_r = xasprintf("password hash scheme %s is not supported or the hash is malformed "
				     "(supported: ARGON2ID, ARGON2I, SHA512-CRYPT, SHA256-CRYPT, BLF-CRYPT)",
				     scheme);
		ok = false;
	} else if (passwd_format && looks_like_des_crypt(t)) {
		*error_r = xstrdup("the password field looks like a traditional DES crypt(3) hash, which "
				   "Strata does not support (a clear-text password needs the {PLAIN} prefix "
				   "in a passwd-file)");
		ok = false;
	} else {
		e->secret = xstrdup(field);
		e->is_hash = false;
	}
	explicit_bzero(t, strlen(t));
	free(t);
	if (ok && !e->is_hash) {
		size_t n = strlen(e->secret);
		if (n == 0) {
			*error_r = xstrdup("empty password");
			ok = false;
		} else if (n > IMPORT_PASSWORD_MAX) {
			*error_r = xasprintf("password longer than %d bytes", IMPORT_PASSWORD_MAX);
			ok = false;
		}
	}
	return ok;
}

static bool parse_quota_field(const char *field, bool bytes, bool *has, uint64_t *out, char **error_r)
{
	char *t = trimmed_copy(field);
	bool ok = true;
	if (t[0] != '\0') {
		uint64_t v;
		bool parsed = bytes ? str_parse_size(t, &v) : str_parse_u64(t, &v);
		if (!parsed || v > (uint64_t)INT64_MAX) {
			*error_r = bytes ? xasprintf("quota_bytes '%.40s' is not a size (e.g. 0, 500M, 2G)", t)
					 : xasprintf("quota_messages '%.40s' is not a whole number", t);
			ok = false;
		} else {
			*has = true;
			*out = v;
		}
	}
	free(t);
	return ok;
}

static enum import_line_kind parse_csv(const char *line, size_t len, bool first_record,
				       struct import_entry *out, char **error_r)
{
	char *f[CSV_MAX_FIELDS];
	size_t n;
	if (!csv_split(line, len, f, &n, error_r))
		return IMPORT_LINE_ERROR;
	enum import_line_kind kind = IMPORT_LINE_ENTRY;
	char *first = trimmed_copy(f[0]);
	if (first_record && str_ieq(first, "address")) {
		kind = IMPORT_LINE_SKIP; /* header */
	} else if (n < 2) {
		kind = line_error(error_r, "expected address,password[,quota_bytes[,quota_messages]]");
	} else if (!set_address(out, f[0], error_r) || !set_secret(out, f[1], false, error_r) ||
		   (n > 2 && !parse_quota_field(f[2], true, &out->has_quota_bytes, &out->quota_bytes, error_r)) ||
		   (n > 3 &&
		    !parse_quota_field(f[3], false, &out->has_quota_messages, &out->quota_messages, error_r))) {
		kind = IMPORT_LINE_ERROR;
	}
	free(first);
	for (size_t i = 0; i < n; i++) {
		explicit_bzero(f[i], strlen(f[i]));
		free(f[i]);
	}
	return kind;
}

/* One Dovecot quota limit value: digits and an optional unit (b, k, M, G,
 * T, with optional B/iB); `unit` multiplies a bare number. */
static bool quota_value(const char *v, uint64_t unit, uint64_t *out)
{
	uint64_t n;
	if (str_parse_u64(v, &n))
		return !__builtin_mul_overflow(n, unit, out) && *out <= (uint64_t)INT64_MAX;
	return str_parse_size(v, out) && *out <= (uint64_t)INT64_MAX;
}

/* "mask:limit[:limit...]" of a userdb_quota_rule extra field. */
static bool parse_quota_rule(const char *rule, struct import_entry *e, char **error_r)
{
	const char *colon = strchr(rule, ':');
	if (colon == NULL) {
		*error_r = xasprintf("quota rule '%.80s' has no ':'", rule);
		return false;
	}
	size_t mlen = (size_t)(colon - rule);
	if (!(mlen == 1 && (rule[0] == '*' || rule[0] == '?')))
		return true; /* a per-mailbox rule: not an account quota */
	const char *limits = colon + 1;
	if (strcmp(limits, "ignore") == 0) {
		e->has_quota_bytes = e->has_quota_messages = true;
		e->quota_bytes = e->quota_messages = 0;
		return true;
	}
	char *copy = xstrdup(limits), *save = NULL;
	bool ok = true;
	for (char *lim = strtok_r(copy, ":", &save); ok && lim; lim = strtok_r(NULL, ":", &save)) {
		char *eq = strchr(lim, '=');
		if (eq == NULL) {
			*error_r = xasprintf("quota limit '%.80s' is not key=value", lim);
			ok = false;
			break;
		}
		*eq = '\0';
		const char *val = eq + 1;
		uint64_t v;
		if (val[0] == '+' || val[0] == '-' || strchr(val, '%')) {
			*error_r = xasprintf("relative quota limit '%s=%.40s' is not supported in the default rule",
					     lim, val);
			ok = false;
		} else if (strcmp(lim, "storage") == 0 || strcmp(lim, "bytes") == 0) {
			/* Dovecot: storage is in KiB unless a unit is given */
			if (!quota_value(val, strcmp(lim, "storage") == 0 ? 1024 : 1, &v)) {
				*error_r = xasprintf("quota %s '%.40s' is not a size", lim, val);
				ok = false;
			} else {
				e->has_quota_bytes = true;
				e->quota_bytes = v;
			}
		} else if (strcmp(lim, "messages") == 0) {
			if (!quota_value(val, 1, &v)) {
				*error_r = xasprintf("quota messages '%.40s' is not a number", val);
				ok = false;
			} else {
				e->has_quota_messages = true;
				e->quota_messages = v;
			}
		} else {
			*error_r = xasprintf("unknown quota limit '%.40s' (storage, bytes or messages)", lim);
			ok = false;
		}
	}
	free(copy);
	return ok;
}

/* True for "userdb_quota_rule", "quota_rule", and their numbered forms. */
static bool is_quota_rule_key(const char *key, size_t len)
{
	static const char *const names[] = { "userdb_quota_rule", "quota_rule" };
	for (size_t i = 0; i < ARRAY_LEN(names); i++) {
		size_t n = strlen(names[i]);
		if (len >= n && strncmp(key, names[i], n) == 0 && strspn(key + n, "0123456789") == len - n)
			return true;
	}
	return false;
}

static bool parse_extra_fields(const char *extra, struct import_entry *e, char **error_r)
{
	char *copy = xstrdup(extra), *save = NULL;
	bool ok = true;
	for (char *tok = strtok_r(copy, " \t", &save); ok && tok; tok = strtok_r(NULL, " \t", &save)) {
		char *eq = strchr(tok, '=');
		if (eq && is_quota_rule_key(tok, (size_t)(eq - tok)))
			ok = parse_quota_rule(eq + 1, e, error_r);
	}
	free(copy);
	return ok;
}

static enum import_line_kind parse_passwd(const char *line, size_t len, struct import_entry *out,
					  char **error_r)
{
	char *copy = xstrndup(line, len);
	char *f[PASSWD_FIELDS] = { NULL };
	size_t n = 0;
	char *p = copy;
	f[n++] = p;
	while (n < PASSWD_FIELDS && (p = strchr(p, ':')) != NULL) {
		*p++ = '\0';
		f[n++] = p;
	}
	enum import_line_kind kind = IMPORT_LINE_ENTRY;
	if (n < 2)
		kind = line_error(error_r, "expected user@domain:{SCHEME}hash[:uid:gid:gecos:home:shell:extra]");
	else if (f[1][0] == '\0')
		kind = line_error(error_r, "empty password field");
	else if (!set_address(out, f[0], error_r) || !set_secret(out, f[1], true, error_r) ||
		 (n == PASSWD_FIELDS && !parse_extra_fields(f[7], out, error_r)))
		kind = IMPORT_LINE_ERROR;
	explicit_bzero(copy, len);
	free(copy);
	return kind;
}

/* Blank lines and '#' comments, with the same notion of blank everywhere
 * (a stray CR counts as blank, as it does at the end of a line). */
static bool is_blank_or_comment(const char *line, size_t len)
{
	size_t i = 0;
	while (i < len && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r'))
		i++;
	return i == len || line[i] == '#';
}

enum import_line_kind import_parse_line(enum import_format fmt, const char *line, size_t len,
					bool first_record, struct import_entry *out, char **error_r)
{
	memset(out, 0, sizeof(*out));
	if (len > 0 && line[len - 1] == '\r')
		len--;
	if (memchr(line, '\0', len) != NULL)
		return line_error(error_r, "line contains a NUL byte");
	if (is_blank_or_comment(line, len))
		return IMPORT_LINE_SKIP;
	if (fmt == IMPORT_AUTO) {
		char *t = xstrndup(line, len);
		fmt = import_detect(t);
		free(t);
	}
	enum import_line_kind kind = fmt == IMPORT_PASSWD ? parse_passwd(line, len, out, error_r)
							   : parse_csv(line, len, first_record, out, error_r);
	if (kind != IMPORT_LINE_ENTRY)
		import_entry_clear(out);
	return kind;
}

/* ---- reading --------------------------------------------------------------- */

/* Reads one line of at most max bytes into buf (NUL-terminated, without
 * '\n').  Returns 1, 0 at EOF, -1 for an over-long line, -2 on a read error. */
static int read_line(FILE *fp, char *buf, size_t max, size_t *len_r)
{
	size_t n = 0;
	int ch = EOF;
	while ((ch = getc(fp)) != EOF && ch != '\n') {
		if (n == max)
			return -1;
		buf[n++] = (char)ch;
	}
	buf[n] = '\0';
	*len_r = n;
	if (ch == EOF) {
		if (ferror(fp))
			return -2;
		if (n == 0)
			return 0;
	}
	return 1;
}

bool import_read(FILE *fp, const char *name, enum import_format fmt, struct import_list *out,
		 char **error_r)
{
	memset(out, 0, sizeof(*out));
	char *line = xmalloc(IMPORT_LINE_MAX + 1);
	unsigned long lineno = 0;
	bool seen_record = false, ok = true;
	for (;;) {
		size_t len;
		int r = read_line(fp, line, IMPORT_LINE_MAX, &len);
		if (r == 0)
			break;
		lineno++;
		if (r == -1) {
			*error_r = xasprintf("%s:%lu: line longer than %d bytes", name, lineno, IMPORT_LINE_MAX);
			ok = false;
			break;
		}
		if (r == -2) {
			*error_r = xasprintf("%s:%lu: read error: %s", name, lineno, strerror(errno));
			ok = false;
			break;
		}
		if (!seen_record && !is_blank_or_comment(line, len) && fmt == IMPORT_AUTO)
			fmt = import_detect(line);
		struct import_entry e;
		char *err = NULL;
		enum import_line_kind k = import_parse_line(fmt, line, len, !seen_record, &e, &err);
		if (k == IMPORT_LINE_ERROR) {
			*error_r = xasprintf("%s:%lu: %s", name, lineno, err);
			free(err);
			ok = false;
			break;
		}
		if (!is_blank_or_comment(line, len))
			seen_record = true;
		if (k == IMPORT_LINE_SKIP)
			continue;
		if (out->n == IMPORT_MAX_ENTRIES) {
			import_entry_clear(&e);
			*error_r = xasprintf("%s:%lu: more than %d accounts in one file; split it", name, lineno,
					     IMPORT_MAX_ENTRIES);
			ok = false;
			break;
		}
		if (out->n == out->cap) {
			out->cap = out->cap ? out->cap * 2 : 256;
			out->v = xreallocarray(out->v, out->cap, sizeof(*out->v));
		}
		e.line = lineno;
		out->v[out->n++] = e;
	}
	explicit_bzero(line, IMPORT_LINE_MAX + 1);
	free(line);
	out->format = fmt == IMPORT_AUTO ? IMPORT_CSV : fmt;
	if (!ok)
		import_list_free(out);
	return ok;
}

/* ---- checks ----------------------------------------------------------------- */

static const struct import_list *sort_list; /* qsort has no context argument */

static int cmp_by_address(const void *a, const void *b)
{
	const struct import_entry *x = &sort_list->v[*(const size_t *)a];
	const struct import_entry *y = &sort_list->v[*(const size_t *)b];
	int c = strcmp(x->address, y->address);
	if (c != 0)
		return c;
	return x->line < y->line ? -1 : x->line > y->line;
}

bool import_check_duplicates(const struct import_list *l, const char *name, char **error_r)
{
	if (l->n < 2)
		return true;
	size_t *idx = xreallocarray(NULL, l->n, sizeof(*idx));
	for (size_t i = 0; i < l->n; i++)
		idx[i] = i;
	sort_list = l;
	if (l->n > 0)
		qsort(idx, l->n, sizeof(*idx), cmp_by_address);
	sort_list = NULL;
	bool ok = true;
	for (size_t i = 1; i < l->n && ok; i++) {
		const struct import_entry *a = &l->v[idx[i - 1]], *b = &l->v[idx[i]];
		if (strcmp(a->address, b->address) == 0) {
			*error_r = xasprintf("%s:%lu: duplicate address %s (first on line %lu)", name, b->line,
					     b->address, a->line);
			ok = false;
		}
	}
	free(idx);
	return ok;
}

/* ---- hashing ----------------------------------------------------------------- */

struct hash_job {
	struct import_list *l;
	const size_t *todo;      /* indices of clear-text entries */
	size_t n;
	_Atomic size_t next;
	_Atomic size_t done;
	_Atomic bool failed;
	_Atomic size_t failed_entry;
	_Atomic size_t workers_left;
};

static void *hash_worker(void *arg)
{
	struct hash_job *j = arg;
	char out[AUTH_HASH_MAX];
	for (;;) {
		size_t k = atomic_fetch_add(&j->next, 1);
		if (k >= j->n || atomic_load(&j->failed))
			break;
		struct import_entry *e = &j->l->v[j->todo[k]];
		if (!auth_hash_password(e->secret, out, sizeof(out))) {
			bool expected = false;
			if (atomic_compare_exchange_strong(&j->failed, &expected, true))
				atomic_store(&j->failed_entry, j->todo[k]);
			break;
		}
		explicit_bzero(e->secret, strlen(e->secret));
		free(e->secret);
		e->secret = xstrdup(out);
		e->is_hash = true;
		atomic_fetch_add(&j->done, 1);
	}
	atomic_fetch_sub(&j->workers_left, 1);
	return NULL;
}

/* Waits for the workers, reporting progress every 10 s. */
static void hash_wait(struct hash_job *j, FILE *progress)
{
	uint64_t next_report = time_mono_ms() + 10000;
	while (atomic_load(&j->workers_left) > 0) {
		struct timespec ts = { 0, 100 * 1000 * 1000 };
		nanosleep(&ts, NULL);
		if (progress && time_mono_ms() >= next_report) {
			fprintf(progress, "strata: hashed %zu of %zu passwords\n", atomic_load(&j->done), j->n);
			fflush(progress);
			next_report += 10000;
		}
	}
}

bool import_hash_passwords(struct import_list *l, const char *name, unsigned threads, FILE *progress,
			   struct import_hash_stats *stats, char **error_r)
{
	size_t *todo = xreallocarray(NULL, l->n ? l->n : 1, sizeof(*todo));
	size_t n = 0;
	for (size_t i = 0; i < l->n; i++) {
		if (!l->v[i].is_hash)
			todo[n++] = i;
	}
	memset(stats, 0, sizeof(*stats));
	if (n == 0) {
		free(todo);
		return true;
	}
	if (threads == 0)
		threads = 1;
	if (threads > n)
		threads = (unsigned)n;
	struct hash_job job = { .l = l, .todo = todo, .n = n };
	atomic_init(&job.next, 0);
	atomic_init(&job.done, 0);
	atomic_init(&job.failed, false);
	atomic_init(&job.failed_entry, 0);
	atomic_init(&job.workers_left, threads);
	pthread_t *tids = xcalloc(threads, sizeof(*tids));
	uint64_t t0 = time_mono_us();
	unsigned started = 0;
	for (unsigned i = 0; i < threads; i++) {
		if (pthread_create(&tids[i], NULL, hash_worker, &job) != 0)
			break;
		started++;
	}
	/* slots of threads that could not be created are not waited for */
	atomic_fetch_sub(&job.workers_left, threads - started);
	if (started == 0) {
		atomic_store(&job.workers_left, 1);
		hash_worker(&job); /* no thread to be had: hash on this one */
	}
	hash_wait(&job, progress);
	for (unsigned i = 0; i < started; i++)
		pthread_join(tids[i], NULL);
	free(tids);
	free(todo);
	stats->threads = started ? started : 1;
	stats->seconds = (double)(time_mono_us() - t0) / 1e6;
	stats->hashed = n;
	if (atomic_load(&job.failed)) {
		*error_r = xasprintf("%s:%lu: cannot hash the password (Argon2id needs 64 MiB per thread)",
				     name, l->v[atomic_load(&job.failed_entry)].line);
		return false;
	}
	return true;
}

/* ---- domains and the transaction ---------------------------------------------- */

struct name_list {
	char **v;
	size_t n, cap;
};

static void collect_name(void *ctx, const char *name)
{
	struct name_list *nl = ctx;
	if (nl->n == nl->cap) {
		nl->cap = nl->cap ? nl->cap * 2 : 16;
		nl->v = xreallocarray(nl->v, nl->cap, sizeof(*nl->v));
	}
	nl->v[nl->n] = xstrdup(name);
	str_lower(nl->v[nl->n]);
	nl->n++;
}

static void name_list_free(struct name_list *nl)
{
	for (size_t i = 0; i < nl->n; i++)
		free(nl->v[i]);
	free(nl->v);
	memset(nl, 0, sizeof(*nl));
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static const char *domain_of(const struct import_entry *e)
{
	return strrchr(e->address, '@') + 1;
}

struct domain_use {
	const char *domain;
	unsigned long line;
};

static int cmp_domain_use(const void *a, const void *b)
{
	const struct domain_use *x = a, *y = b;
	int c = strcmp(x->domain, y->domain);
	if (c != 0)
		return c;
	return x->line < y->line ? -1 : x->line > y->line;
}

/* The domains the list uses that the store does not know, each once, in
 * name order, with the first line that uses it (O(n log n)). */
static enum status missing_domains(struct store *st, const struct import_list *l, struct name_list *miss,
				   unsigned long **lines_r, char **error_r)
{
	struct name_list have = { 0 };
	memset(miss, 0, sizeof(*miss));
	*lines_r = NULL;
	enum status s = store_domain_list(st, collect_name, &have);
	if (s != ST_OK) {
		*error_r = xasprintf("cannot list domains: %s", status_info(s)->smtp_text);
		name_list_free(&have);
		return s;
	}
	if (have.n > 1)
		qsort(have.v, have.n, sizeof(*have.v), cmp_str);
	struct domain_use *uses = xreallocarray(NULL, l->n ? l->n : 1, sizeof(*uses));
	for (size_t i = 0; i < l->n; i++)
		uses[i] = (struct domain_use){ domain_of(&l->v[i]), l->v[i].line };
	if (l->n > 0)
		qsort(uses, l->n, sizeof(*uses), cmp_domain_use);
	unsigned long *lines = NULL;
	for (size_t i = 0; i < l->n; i++) {
		if (i > 0 && strcmp(uses[i].domain, uses[i - 1].domain) == 0)
			continue;
		if (have.n && bsearch(&uses[i].domain, have.v, have.n, sizeof(*have.v), cmp_str))
			continue;
		collect_name(miss, uses[i].domain);
		lines = xreallocarray(lines, miss->cap, sizeof(*lines));
		lines[miss->n - 1] = uses[i].line;
	}
	free(uses);
	name_list_free(&have);
	*lines_r = lines;
	return ST_OK;
}

bool import_check_domains(struct store *st, const struct import_list *l, const char *name,
			  bool create_domains, size_t *missing_r, char **error_r)
{
	struct name_list miss;
	unsigned long *lines = NULL;
	*missing_r = 0;
	if (missing_domains(st, l, &miss, &lines, error_r) != ST_OK)
		return false;
	bool ok = true;
	if (miss.n > 0 && !create_domains) {
		*error_r = xasprintf("%s:%lu: %s is not a local domain (add it with `strata domain add %s`, "
				     "or import with --create-domains)",
				     name, lines[0], miss.v[0], miss.v[0]);
		ok = false;
	}
	*missing_r = miss.n;
	free(lines);
	name_list_free(&miss);
	return ok;
}

static void undo_domains(struct store *st, const struct name_list *created, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char *err = NULL;
		if (store_domain_del(st, created->v[i], &err) != ST_OK)
			log_warn("could not remove domain %s created by the failed import: %s", created->v[i],
				 err ? err : "unknown error");
		free(err);
	}
}

enum status import_commit(struct store *st, const struct settings *s, const struct import_list *l,
			  const char *name, bool create_domains, struct import_result *res,
			  char **error_r)
{
	memset(res, 0, sizeof(*res));
	for (size_t i = 0; i < l->n; i++) {
		if (!l->v[i].is_hash)
			panic("import_commit: line %lu has no hash", l->v[i].line);
	}
	struct name_list miss;
	unsigned long *lines = NULL;
	enum status st_ = missing_domains(st, l, &miss, &lines, error_r);
	if (st_ != ST_OK)
		return st_;
	size_t created = 0;
	if (miss.n > 0 && !create_domains) {
		*error_r = xasprintf("%s:%lu: %s is not a local domain", name, lines[0], miss.v[0]);
		st_ = ST_NOT_FOUND;
	}
	for (size_t i = 0; st_ == ST_OK && i < miss.n; i++) {
		char *err = NULL;
		st_ = store_domain_add(st, miss.v[i], &err);
		if (st_ == ST_OK) {
			created++;
		} else {
			*error_r = xasprintf("%s:%lu: cannot add domain %s: %s", name, lines[i], miss.v[i],
					     err ? err : status_info(st_)->smtp_text);
		}
		free(err);
	}
	if (st_ == ST_OK) {
		struct user_spec *specs = xreallocarray(NULL, l->n ? l->n : 1, sizeof(*specs));
		for (size_t i = 0; i < l->n; i++) {
			const struct import_entry *e = &l->v[i];
			specs[i] = (struct user_spec){
				.address = e->address,
				.pwhash = e->secret,
				.quota_bytes = e->has_quota_bytes ? e->quota_bytes : s->quota_default_bytes,
				.quota_messages = e->has_quota_messages ? e->quota_messages
									: s->quota_default_messages,
			};
		}
		size_t failed = 0;
		char *err = NULL;
		st_ = store_user_add_many(st, specs, l->n, &failed, &err);
		if (st_ != ST_OK) {
			const char *why = err ? err : status_info(st_)->smtp_text;
			if (failed < l->n)
				*error_r = xasprintf("%s:%lu: %s", name, l->v[failed].line, why);
			else
				*error_r = xasprintf("%s: the import transaction failed: %s", name, why);
		}
		free(err);
		free(specs);
	}
	if (st_ != ST_OK) {
		undo_domains(st, &miss, created);
	} else {
		res->accounts = l->n;
		res->domains_created = created;
	}
	free(lines);
	name_list_free(&miss);
	return st_;
}
