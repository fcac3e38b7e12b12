/*
 * fuzz_import.c - fuzz target for `strata user import` parsing
 * (src/cli/cli_import.h): CSV and Dovecot passwd-file lines, format
 * detection, password-hash recognition (auth_hash_normalize) and quota
 * rules.  Hashing and the store are not involved: import_read and
 * import_parse_line are pure.
 *
 * Input: an import file.  It is read with import_read in each of the three
 * format settings (auto, csv, passwd), and every line also goes through
 * import_parse_line on its own.
 *
 * Properties checked:
 *  - import_read either succeeds with no error, or fails with an error
 *    naming the file and line ("name:line: ...") and an empty list;
 *  - every entry it returns is well formed: a lower-case address with one
 *    plausible '@' and no blank, control, ',', ':' or '"' octet, at most
 *    318 octets; a secret that is either a hash auth_hash_is_supported
 *    accepts or a clear-text password of 1 to IMPORT_PASSWORD_MAX octets;
 *    quotas only when given, never above INT64_MAX; its line number within
 *    the file;
 *  - the list equals, entry for entry, what import_parse_line gives for
 *    each line with the detected format, and no entry comes from a line
 *    that is blank or a comment;
 *  - import_check_duplicates fails exactly when two entries share an
 *    address.
 *
 * Durability/concurrency: in-memory streams (fmemopen); one thread.
 */
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "cli_import.h"

#define FUZZ_NAME "fuzz.csv"

static void check_entry(const struct import_entry *e)
{
	FUZZ_CHECK(e->address != NULL && e->secret != NULL, "entry without address or secret");
	const char *a = e->address;
	size_t n = strlen(a);
	FUZZ_CHECK(n > 0 && n <= 318, "address of %zu octets", n);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)a[i];
		FUZZ_CHECK(c > 0x20 && c < 0x7f && !(c >= 'A' && c <= 'Z') && c != ',' && c != ':' && c != '"',
			   "address '%s' has octet 0x%02x", a, c);
	}
	const char *at = strrchr(a, '@');
	FUZZ_CHECK(at != NULL && at != a && at[1] != '\0', "address '%s'", a);
	size_t sl = strlen(e->secret);
	if (e->is_hash)
		FUZZ_CHECK(auth_hash_is_supported(e->secret), "unsupported hash accepted for %s", a);
	else
		FUZZ_CHECK(sl > 0 && sl <= IMPORT_PASSWORD_MAX, "clear-text password of %zu octets for %s",
			   sl, a);
	FUZZ_CHECK(e->has_quota_bytes || e->quota_bytes == 0, "quota_bytes without has_quota_bytes");
	FUZZ_CHECK(e->has_quota_messages || e->quota_messages == 0, "quota_messages without has_quota_messages");
	FUZZ_CHECK(e->quota_bytes <= (uint64_t)INT64_MAX && e->quota_messages <= (uint64_t)INT64_MAX,
		   "quota above INT64_MAX for %s", a);
}

static bool same_entry(const struct import_entry *a, const struct import_entry *b)
{
	return strcmp(a->address, b->address) == 0 && strcmp(a->secret, b->secret) == 0 &&
	       a->is_hash == b->is_hash && a->has_quota_bytes == b->has_quota_bytes &&
	       a->has_quota_messages == b->has_quota_messages && a->quota_bytes == b->quota_bytes &&
	       a->quota_messages == b->quota_messages;
}

/* What import_read treats as a blank or comment line (the header: "blank
 * lines and lines whose first non-blank character is '#' are skipped"). */
static bool is_blank_or_comment(const char *line, size_t len)
{
	size_t i = 0;
	while (i < len && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r'))
		i++;
	return i == len || line[i] == '#';
}

/* Replays the list line by line with import_parse_line. */
static void check_lines(const char *in, size_t len, const struct import_list *l)
{
	size_t k = 0;
	unsigned long lineno = 0;
	bool seen_record = false;
	for (size_t pos = 0; pos < len;) {
		const char *nl = memchr(in + pos, '\n', len - pos);
		size_t end = nl ? (size_t)(nl - in) : len;
		const char *line = in + pos;
		size_t n = end - pos;
		lineno++;
		struct import_entry e;
		char *err = NULL;
		enum import_line_kind kind = import_parse_line(l->format, line, n, !seen_record, &e, &err);
		FUZZ_CHECK(kind != IMPORT_LINE_ERROR, "line %lu fails alone but not in the file: %s", lineno,
			   err);
		if (!is_blank_or_comment(line, n))
			seen_record = true;
		if (kind == IMPORT_LINE_ENTRY) {
			/* import_read itself calls such a line a comment (format
			 * detection, header) and so must the parser */
			FUZZ_CHECK(!is_blank_or_comment(line, n), "line %lu is blank or a comment but gave "
				   "an account", lineno);
			FUZZ_CHECK(k < l->n, "line %lu is an entry alone but not in the file", lineno);
			FUZZ_CHECK(l->v[k].line == lineno, "entry %zu on line %lu, expected %lu", k, l->v[k].line,
				   lineno);
			FUZZ_CHECK(same_entry(&l->v[k], &e), "line %lu parses differently alone", lineno);
			k++;
		}
		import_entry_clear(&e);
		pos = end + 1;
	}
	FUZZ_CHECK(k == l->n, "%zu entries, %zu from single lines", l->n, k);
}

static void check_duplicates(const struct import_list *l)
{
	bool dup = false;
	for (size_t i = 0; i < l->n && !dup; i++)
		for (size_t j = i + 1; j < l->n && !dup; j++)
			dup = strcmp(l->v[i].address, l->v[j].address) == 0;
	char *err = NULL;
	bool ok = import_check_duplicates(l, FUZZ_NAME, &err);
	FUZZ_CHECK(ok == !dup, "import_check_duplicates says %d, %s duplicate", ok, dup ? "a" : "no");
	FUZZ_CHECK(ok == (err == NULL), "error '%s' with result %d", err ? err : "(none)", ok);
	free(err);
}

static void check_format(const char *in, size_t len, enum import_format fmt)
{
	/* fmemopen cannot open an empty buffer on every libc: read an empty
	 * file from a one-octet buffer of size 0 worth of content instead. */
	FILE *fp = len > 0 ? fmemopen((void *)in, len, "r") : fmemopen((void *)"\n", 1, "r");
	FUZZ_CHECK(fp != NULL, "fmemopen failed");
	struct import_list l;
	char *err = NULL;
	bool ok = import_read(fp, FUZZ_NAME, fmt, &l, &err);
	fclose(fp);
	if (!ok) {
		FUZZ_CHECK(err != NULL, "failure without an error");
		size_t name_len = strlen(FUZZ_NAME ":");
		bool named = strncmp(err, FUZZ_NAME ":", name_len) == 0;
		size_t digits = named ? strspn(err + name_len, "0123456789") : 0;
		FUZZ_CHECK(digits > 0 && err[name_len + digits] == ':',
			   "error '%s' does not name the file and line", err);
		FUZZ_CHECK(l.n == 0 && l.v == NULL, "failed read kept %zu entries", l.n);
		free(err);
		return;
	}
	FUZZ_CHECK(err == NULL, "success with error '%s'", err);
	FUZZ_CHECK(l.format == IMPORT_CSV || l.format == IMPORT_PASSWD, "format %d", (int)l.format);
	if (fmt != IMPORT_AUTO)
		FUZZ_CHECK(l.format == fmt, "format %d read as %d", (int)fmt, (int)l.format);
	FUZZ_CHECK(l.n <= l.cap, "n %zu > cap %zu", l.n, l.cap);
	for (size_t i = 0; i < l.n; i++)
		check_entry(&l.v[i]);
	/* Lines longer than IMPORT_LINE_MAX fail the read, so every line of a
	 * file that was read fits; an empty input was read as "\n". */
	if (len > 0)
		check_lines(in, len, &l);
	check_duplicates(&l);
	import_list_free(&l);
	FUZZ_CHECK(l.v == NULL && l.n == 0, "import_list_free left entries");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *in = (const char *)data;
	check_format(in, size, IMPORT_AUTO);
	check_format(in, size, IMPORT_CSV);
	check_format(in, size, IMPORT_PASSWD);
	return 0;
}
