/*
 * imap_search.c - SEARCH and UID SEARCH (RFC 3501 6.4.4, RFC 4731 ESEARCH,
 * RFC 5182 SEARCHRES), and the search engine SORT and THREAD run on.
 *
 * Keys: ALL, the flag keys (ANSWERED ... UNSEEN, NEW, OLD, RECENT), KEYWORD
 * and UNKEYWORD (case-insensitive, against the index row), LARGER, SMALLER,
 * BEFORE, ON, SINCE (internal date), SENTBEFORE, SENTON, SENTSINCE (the
 * Date: header's calendar date), FROM, TO, CC, BCC, SUBJECT, HEADER, BODY,
 * TEXT, UID, sequence sets, "$" (the saved result), NOT, OR and
 * parenthesised lists, and MODSEQ (RFC 7162 3.1.5; the optional entry name
 * and type are accepted, the message's one mod-sequence is compared).
 *
 * Text matching is what the reader sees, not the raw bytes:
 *  - header keys match the unfolded, RFC 2047-decoded field values;
 *  - BODY matches the decoded text of the message's parts and TEXT the
 *    decoded header plus that text (mime_text_scan: transfer encodings
 *    and charsets decoded, base64 non-text parts skipped), streamed from
 *    the blob in SEARCH_CHUNK pieces, so a 50 MB attachment costs one
 *    chunk of memory;
 *  - both sides are Unicode simple case folded (mime_fold_*), so "ETE"
 *    finds "ete" with accents, Greek and Cyrillic included.
 * CHARSET UTF-8 and US-ASCII are accepted (the strings are UTF-8 either
 * way); any other is NO [BADCHARSET (UTF-8 US-ASCII)].
 *
 * Results: the SEARCH response, with "(MODSEQ n)" (the highest of the
 * matches) when the program used MODSEQ; or, after RETURN (...), one
 * ESEARCH response (RFC 4731: MIN, MAX, COUNT, ALL; "RETURN ()" is ALL).
 * RETURN (SAVE) keeps the result as the session's "$" (RFC 5182): as the
 * UIDs of the messages, in the view, so expunged messages drop out as
 * they go and "$" means the same messages to FETCH and to UID FETCH.
 * SAVE alone sends no ESEARCH; with MIN and/or MAX alone only those are
 * saved.  A SEARCH with SAVE that fails leaves "$" empty.
 *
 * The program is parsed into a tree (depth bounded by SEARCH_MAX_DEPTH so
 * "NOT NOT NOT ..." cannot recurse without limit), then evaluated per
 * message; a message's file is opened only when a key needs it, its header
 * read once (bounded by SEARCH_HEADER_MAX), and bodies are scanned in
 * chunks, never loaded whole.
 *
 * Threads: programs that only need index data (flags, sizes, dates, sets)
 * run on the loop thread; programs that read headers or bodies, and every
 * SORT and THREAD, run as a store job on a pool thread over a snapshot of
 * the view, so a TEXT search of a large mailbox never stalls the other
 * sessions of the loop.
 */
#include "imap_int.h"

#include "mime.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SEARCH_MAX_DEPTH 32
#define SEARCH_CHUNK (64u * 1024u)
#define SEARCH_HEADER_MAX (1u << 20)
#define SEARCH_HEADER_STEP (16u * 1024u)   /* header read in pieces until its blank line */

enum skey {
	K_ALL, K_FLAG_SET, K_FLAG_UNSET, K_NEW, K_LARGER, K_SMALLER, K_BEFORE, K_ON, K_SINCE,
	K_SENTBEFORE, K_SENTON, K_SENTSINCE, K_HEADER, K_BODY, K_TEXT, K_UID, K_SEQ, K_NOT, K_OR, K_AND,
	K_MODSEQ, K_KEYWORD, K_UNKEYWORD, K_SAVED,
};

struct snode {
	enum skey key;
	uint32_t flag;
	uint64_t num;                /* size, or a day number for dates */
	char *field;                 /* HEADER field name */
	char *str;                   /* case-folded UTF-8 needle (KEYWORD: as given) */
	size_t str_len;
	struct imap_seqset set;
	uint32_t *saved;             /* K_SAVED: the UIDs of "$", ascending */
	size_t n_saved;
	struct snode **kids;
	size_t n_kids;
};

struct sparser {
	const struct imap_arg *a;
	size_t n, i;
	const char *error;
	const struct imap_view *view;   /* for "$" */
};

static void snode_free(struct snode *n)
{
	if (n == NULL)
		return;
	free(n->field);
	free(n->str);
	free(n->saved);
	imap_seqset_free(&n->set);
	for (size_t i = 0; i < n->n_kids; i++)
		snode_free(n->kids[i]);
	free(n->kids);
	free(n);
}

static void add_kid(struct snode *p, struct snode *k)
{
	p->kids = xreallocarray(p->kids, p->n_kids + 1, sizeof(*p->kids));
	p->kids[p->n_kids++] = k;
}

/* Days since 1970-01-01 of a civil date (proleptic Gregorian). */
static int64_t days_from_civil(int y, unsigned m, unsigned d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	unsigned yoe = (unsigned)(y - era * 400);
	unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (int64_t)doe - 719468;
}

static int month_index(const char *m)
{
	static const char *const mon[] = { "jan", "feb", "mar", "apr", "may", "jun",
					   "jul", "aug", "sep", "oct", "nov", "dec" };
	for (int i = 0; i < 12; i++) {
		if (strncasecmp(m, mon[i], 3) == 0)
			return i + 1;
	}
	return 0;
}

/* "d-Mon-yyyy" (with_time: "dd-Mon-yyyy hh:mm:ss +zzzz") into unix time. */
bool imap_date_parse(const char *s, bool with_time, int64_t *t_r)
{
	int d = 0, y = 0, hh = 0, mm = 0, ss = 0, zone = 0;
	char mon[4] = "";
	int used = 0;
	if (with_time) {
		char sign;
		int zh;
		if (strlen(s) != 26 || sscanf(s, "%2d-%3c-%4d %2d:%2d:%2d %c%4d%n", &d, mon, &y, &hh, &mm, &ss,
					      &sign, &zh, &used) != 8 || used != 26 ||
		    (sign != '+' && sign != '-') || s[0] == '-')
			return false;
		if (s[0] == ' ')
			d = atoi(s + 1);
		zone = (zh / 100 * 60 + zh % 100) * (sign == '-' ? -1 : 1);
		if (zh % 100 > 59 || zh / 100 > 23)
			return false;
	} else {
		if (sscanf(s, "%2d-%3c-%4d%n", &d, mon, &y, &used) != 3 || s[used] != '\0')
			return false;
	}
	mon[3] = '\0';
	int m = month_index(mon);
	if (m == 0 || d < 1 || d > 31 || y < 1970 || y > 9999 || hh > 23 || mm > 59 || ss > 60)
		return false;
	int64_t days = days_from_civil(y, (unsigned)m, (unsigned)d);
	*t_r = days * 86400 + hh * 3600 + mm * 60 + ss - (int64_t)zone * 60;
	return true;
}

static const struct imap_arg *next_arg(struct sparser *p)
{
	if (p->i >= p->n) {
		p->error = "Missing search argument";
		return NULL;
	}
	return &p->a[p->i++];
}

static char *lower_dup(const char *s, size_t len)
{
	char *d = xmalloc(len + 1);
	for (size_t i = 0; i < len; i++)
		d[i] = (char)tolower((unsigned char)s[i]);
	d[len] = '\0';
	return d;
}

static struct snode *parse_key(struct sparser *p, unsigned depth);

/* "$" as a key: the saved UIDs, copied (the job may outlive a change). */
static void saved_copy(const struct imap_view *v, struct snode *k)
{
	k->key = K_SAVED;
	k->n_saved = v != NULL ? v->n_saved : 0;
	k->saved = xcalloc(k->n_saved ? k->n_saved : 1, sizeof(*k->saved));
	if (k->n_saved > 0)
		memcpy(k->saved, v->saved, k->n_saved * sizeof(*k->saved));
}

/* Keys until the end of `a` (a list or the top level) as an AND node. */
static struct snode *parse_keys(const struct imap_arg *a, size_t n, unsigned depth, const struct imap_view *view,
				const char **error)
{
	struct sparser sub = { a, n, 0, NULL, view };
	struct snode *and = xcalloc(1, sizeof(*and));
	and->key = K_AND;
	while (sub.i < sub.n) {
		struct snode *k = parse_key(&sub, depth);
		if (k == NULL) {
			*error = sub.error;
			snode_free(and);
			return NULL;
		}
		add_kid(and, k);
	}
	if (and->n_kids == 0) {
		*error = "Empty search program";
		snode_free(and);
		return NULL;
	}
	return and;
}

static bool want_string(struct sparser *p, struct snode *k)
{
	const struct imap_arg *a = next_arg(p);
	if (a == NULL || !imap_arg_is_string(a)) {
		p->error = "Search key needs a string";
		return false;
	}
	struct buf folded = BUF_INIT;
	mime_fold_str(a->str, a->len, &folded);
	k->str_len = folded.len;
	k->str = buf_steal(&folded);
	return true;
}

static bool want_date(struct sparser *p, struct snode *k)
{
	const struct imap_arg *a = next_arg(p);
	int64_t t;
	if (a == NULL || !imap_arg_is_string(a) || !imap_date_parse(a->str, false, &t)) {
		p->error = "Invalid search date";
		return false;
	}
	k->num = (uint64_t)(t / 86400);
	return true;
}

static bool want_number(struct sparser *p, struct snode *k)
{
	const struct imap_arg *a = next_arg(p);
	if (a == NULL || a->type != IMAP_ARG_ATOM || !str_parse_u64(a->str, &k->num)) {
		p->error = "Invalid number";
		return false;
	}
	return true;
}

static const struct {
	const char *name;
	enum skey key;
	uint32_t flag;
} simple_keys[] = {
	{ "ALL", K_ALL, 0 },
	{ "ANSWERED", K_FLAG_SET, MSG_FLAG_ANSWERED }, { "UNANSWERED", K_FLAG_UNSET, MSG_FLAG_ANSWERED },
	{ "DELETED", K_FLAG_SET, MSG_FLAG_DELETED },   { "UNDELETED", K_FLAG_UNSET, MSG_FLAG_DELETED },
	{ "DRAFT", K_FLAG_SET, MSG_FLAG_DRAFT },       { "UNDRAFT", K_FLAG_UNSET, MSG_FLAG_DRAFT },
	{ "FLAGGED", K_FLAG_SET, MSG_FLAG_FLAGGED },   { "UNFLAGGED", K_FLAG_UNSET, MSG_FLAG_FLAGGED },
	{ "SEEN", K_FLAG_SET, MSG_FLAG_SEEN },         { "UNSEEN", K_FLAG_UNSET, MSG_FLAG_SEEN },
	/* \Recent is the session's VIEW_RECENT bit (never set for IMAP4rev2). */
	{ "RECENT", K_FLAG_SET, VIEW_RECENT }, { "OLD", K_FLAG_UNSET, VIEW_RECENT }, { "NEW", K_NEW, 0 },
};

static struct snode *parse_key(struct sparser *p, unsigned depth)
{
	if (depth > SEARCH_MAX_DEPTH) {
		p->error = "Search program too deeply nested";
		return NULL;
	}
	const struct imap_arg *a = next_arg(p);
	if (a == NULL)
		return NULL;
	if (a->type == IMAP_ARG_LIST) {
		if (a->n == 0) {
			p->error = "Empty search list";
			return NULL;
		}
		const char *err = NULL;
		struct snode *k = parse_keys(a->list, a->n, depth + 1, p->view, &err);
		if (k == NULL)
			p->error = err;
		return k;
	}
	if (a->type != IMAP_ARG_ATOM) {
		p->error = "Invalid search key";
		return NULL;
	}
	struct snode *k = xcalloc(1, sizeof(*k));
	const char *w = a->str;
	bool ok = true;
	for (size_t i = 0; i < ARRAY_LEN(simple_keys); i++) {
		if (str_ieq(w, simple_keys[i].name)) {
			k->key = simple_keys[i].key;
			k->flag = simple_keys[i].flag;
			return k;
		}
	}
	if (str_ieq(w, "KEYWORD") || str_ieq(w, "UNKEYWORD")) {
		k->key = str_ieq(w, "KEYWORD") ? K_KEYWORD : K_UNKEYWORD;
		const struct imap_arg *f = next_arg(p);
		ok = f != NULL && f->type == IMAP_ARG_ATOM;
		if (ok)
			k->str = xstrdup(f->str);
		else if (p->error == NULL)
			p->error = "KEYWORD needs a flag keyword";
	} else if (str_ieq(w, "LARGER") || str_ieq(w, "SMALLER")) {
		k->key = str_ieq(w, "LARGER") ? K_LARGER : K_SMALLER;
		ok = want_number(p, k);
	} else if (str_ieq(w, "BEFORE") || str_ieq(w, "ON") || str_ieq(w, "SINCE")) {
		k->key = str_ieq(w, "BEFORE") ? K_BEFORE : str_ieq(w, "ON") ? K_ON : K_SINCE;
		ok = want_date(p, k);
	} else if (str_ieq(w, "SENTBEFORE") || str_ieq(w, "SENTON") || str_ieq(w, "SENTSINCE")) {
		k->key = str_ieq(w, "SENTBEFORE") ? K_SENTBEFORE : str_ieq(w, "SENTON") ? K_SENTON : K_SENTSINCE;
		ok = want_date(p, k);
	} else if (str_ieq(w, "FROM") || str_ieq(w, "TO") || str_ieq(w, "CC") || str_ieq(w, "BCC") ||
		   str_ieq(w, "SUBJECT")) {
		k->key = K_HEADER;
		k->field = lower_dup(w, strlen(w));
		ok = want_string(p, k);
	} else if (str_ieq(w, "HEADER")) {
		k->key = K_HEADER;
		const struct imap_arg *f = next_arg(p);
		ok = f != NULL && imap_arg_is_string(f) && f->len > 0 && strlen(f->str) == f->len;
		if (ok) {
			k->field = lower_dup(f->str, f->len);
			ok = want_string(p, k);
		} else if (p->error == NULL) {
			p->error = "HEADER needs a field name";
		}
	} else if (str_ieq(w, "BODY") || str_ieq(w, "TEXT")) {
		k->key = str_ieq(w, "BODY") ? K_BODY : K_TEXT;
		ok = want_string(p, k);
	} else if (str_ieq(w, "UID")) {
		k->key = K_UID;
		const struct imap_arg *s = next_arg(p);
		if (s != NULL && imap_arg_is_atom(s, "$"))
			saved_copy(p->view, k);
		else
			ok = s != NULL && s->type == IMAP_ARG_ATOM && imap_seqset_parse(s->str, &k->set) == ST_OK;
		if (!ok && p->error == NULL)
			p->error = "Invalid UID set";
	} else if (str_ieq(w, "MODSEQ")) {
		/* MODSEQ [entry-name entry-type-req] mod-sequence-valzer */
		k->key = K_MODSEQ;
		if (p->i < p->n && imap_arg_is_string(&p->a[p->i]) && p->a[p->i].type != IMAP_ARG_ATOM) {
			next_arg(p);
			const struct imap_arg *t = next_arg(p);
			ok = t != NULL && (imap_arg_is_atom(t, "all") || imap_arg_is_atom(t, "shared") ||
					   imap_arg_is_atom(t, "priv"));
			if (!ok)
				p->error = "Invalid MODSEQ entry type";
		}
		ok = ok && want_number(p, k);
	} else if (str_ieq(w, "NOT")) {
		k->key = K_NOT;
		struct snode *c = parse_key(p, depth + 1);
		ok = c != NULL;
		if (ok)
			add_kid(k, c);
	} else if (str_ieq(w, "OR")) {
		k->key = K_OR;
		for (int i = 0; i < 2 && ok; i++) {
			struct snode *c = parse_key(p, depth + 1);
			ok = c != NULL;
			if (ok)
				add_kid(k, c);
		}
	} else if (strcmp(w, "$") == 0) {
		saved_copy(p->view, k);
	} else if ((isdigit((unsigned char)w[0]) || w[0] == '*') && imap_seqset_parse(w, &k->set) == ST_OK) {
		k->key = K_SEQ;
	} else {
		p->error = "Unknown search key";
		ok = false;
	}
	if (!ok) {
		snode_free(k);
		return NULL;
	}
	return k;
}

/* ---- evaluation ------------------------------------------------------------------------ */

struct smsg {
	const struct store_imap_msg *row;
	size_t seq;
	uint32_t flags;              /* MSG_FLAG_* and VIEW_RECENT */
	uint32_t max_uid, max_seq;
	const struct settings *set;  /* blob files on any tier (store_blob_open) */
	int fd;                      /* the blob, opened on first need; -1 */
	bool open_failed;
	bool header_read;
	bool header_ok;
	struct buf header;          /* the raw header block, bounded */
};

static bool blob_fd(struct smsg *m)
{
	if (m->fd >= 0)
		return true;
	if (m->open_failed)
		return false;
	m->fd = store_blob_open(m->set, 0, &m->row->id, NULL);
	m->open_failed = m->fd < 0;
	return !m->open_failed;
}

/* End of the header block in h[0, len) (after its blank line), or 0
 * when it has not been seen yet.  at_start: h is the message's start, where
 * a blank line alone is an empty header. */
static size_t header_end(const char *h, size_t len, bool at_start)
{
	if (at_start && len >= 1 && h[0] == '\n')
		return 1;
	if (at_start && len >= 2 && h[0] == '\r' && h[1] == '\n')
		return 2;
	for (const char *p = h; (p = memchr(p, '\n', (size_t)(h + len - p))) != NULL; p++) {
		size_t i = (size_t)(p - h) + 1;
		if (i < len && h[i] == '\n')
			return i + 1;
		if (i + 1 < len && h[i] == '\r' && h[i + 1] == '\n')
			return i + 2;
	}
	return 0;
}

/* Reads the header in SEARCH_HEADER_STEP pieces up to its blank line (or
 * SEARCH_HEADER_MAX, or the end of the message). */
static bool load_header(struct smsg *m)
{
	if (m->header_read)
		return m->header_ok;
	m->header_read = true;
	if (!blob_fd(m))
		return false;
	uint64_t size = m->row->size;
	size_t end = 0;
	/* Bounded: every pass reads more, up to SEARCH_HEADER_MAX. */
	while (end == 0 && m->header.len < size && m->header.len < SEARCH_HEADER_MAX) {
		size_t want = SEARCH_HEADER_STEP;
		if (size - m->header.len < want)
			want = (size_t)(size - m->header.len);
		buf_reserve(&m->header, want);
		ssize_t n = pread(m->fd, m->header.data + m->header.len, want, (off_t)m->header.len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		size_t from = m->header.len > 2 ? m->header.len - 2 : 0;
		m->header.len += (size_t)n;
		m->header.data[m->header.len] = '\0';
		size_t e = header_end(m->header.data + from, m->header.len - from, from == 0);
		if (e > 0)
			end = from + e;
	}
	if (end == 0)
		end = m->header.len;   /* no body, or a header beyond SEARCH_HEADER_MAX */
	buf_truncate(&m->header, end);
	if (m->header.data == NULL)
		buf_reserve(&m->header, 1);
	m->header_ok = true;
	return true;
}

/* Substring in the decoded values of the fields named `field`; an empty
 * needle matches when the field exists. */
static bool header_match(struct smsg *m, const char *field, const char *needle, size_t nl)
{
	if (!load_header(m))
		return false;
	size_t pos = 0, flen = strlen(field);
	struct mime_field f;
	struct buf value = BUF_INIT, folded = BUF_INIT;
	bool found = false;
	while (!found && mime_header_next(m->header.data, m->header.len, &pos, &f)) {
		if (f.name_len != flen || strncasecmp(f.name, field, flen) != 0)
			continue;
		if (nl == 0) {
			found = true;
			break;
		}
		buf_reset(&value);
		buf_reset(&folded);
		mime_header_decode(f.value, f.value_len, &value);
		mime_fold_str(value.data, value.len, &folded);
		found = memmem(folded.data, folded.len, needle, nl) != NULL;
	}
	buf_free(&value);
	buf_free(&folded);
	return found;
}

/* A case-folded substring search over decoded text fed in pieces; a
 * match never spans two parts (the scanner's NULL marks). */
struct text_match {
	const char *needle;
	size_t nl;
	struct mime_fold fold;
	struct buf window;           /* the last nl - 1 folded bytes, then new text */
	bool found;
};

static void text_match_fn(void *ctx, const char *utf8, size_t len)
{
	struct text_match *t = ctx;
	if (t->found)
		return;
	if (utf8 == NULL) {
		buf_reset(&t->window);
		mime_fold_init(&t->fold);
		return;
	}
	mime_fold_feed(&t->fold, utf8, len, &t->window);
	if (memmem(t->window.data, t->window.len, t->needle, t->nl) != NULL) {
		t->found = true;
		return;
	}
	size_t keep = t->nl - 1;
	if (t->window.len > keep) {
		memmove(t->window.data, t->window.data + t->window.len - keep, keep);
		buf_truncate(&t->window, keep);
	}
}

/* BODY (with_header false) or TEXT: streams the blob through the MIME
 * text scanner until the needle is found. */
static bool text_contains(struct smsg *m, const char *needle, size_t nl, bool with_header)
{
	if (nl == 0)
		return true;
	if (!blob_fd(m))
		return false;
	struct text_match t = { needle, nl, { { 0 }, 0 }, BUF_INIT, false };
	struct mime_text_scan *scan = mime_text_scan_new(with_header ? MIME_TEXT_HEADER : 0, text_match_fn, &t);
	char *chunk = xmalloc(SEARCH_CHUNK);
	uint64_t off = 0, size = m->row->size;
	/* Bounded: every pass reads forward or stops. */
	while (off < size && !t.found) {
		size_t want = size - off < SEARCH_CHUNK ? (size_t)(size - off) : SEARCH_CHUNK;
		ssize_t n = pread(m->fd, chunk, want, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		mime_text_scan_feed(scan, chunk, (size_t)n);
		off += (uint64_t)n;
	}
	if (!t.found)
		mime_text_scan_finish(scan);
	mime_text_scan_free(&scan);
	free(chunk);
	buf_free(&t.window);
	return t.found;
}

/* Calendar day of the Date: header ("[Day, ]DD Mon YYYY ..."), or -1. */
static int64_t sent_day(struct smsg *m)
{
	if (!load_header(m))
		return -1;
	size_t pos = 0;
	struct mime_field f;
	while (mime_header_next(m->header.data, m->header.len, &pos, &f)) {
		if (f.name_len != 4 || strncasecmp(f.name, "date", 4) != 0)
			continue;
		int64_t t;
		int zone;
		if (!mime_date_parse(f.value, f.value_len, &t, &zone))
			return -1;
		t += (int64_t)zone * 60;   /* the sender's calendar day (RFC 3501 SENTON) */
		return t >= 0 ? t / 86400 : (t - 86399) / 86400;
	}
	return -1;
}

static bool saved_has(const struct snode *k, uint32_t uid)
{
	size_t lo = 0, hi = k->n_saved;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (k->saved[mid] == uid)
			return true;
		if (k->saved[mid] < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return false;
}

static bool eval(struct snode *k, struct smsg *m)
{
	int64_t day;
	switch (k->key) {
	case K_ALL: return true;
	case K_NEW: return (m->flags & VIEW_RECENT) && !(m->flags & MSG_FLAG_SEEN);
	case K_FLAG_SET: return (m->flags & k->flag) != 0;
	case K_FLAG_UNSET: return (m->flags & k->flag) == 0;
	case K_LARGER: return m->row->size > k->num;
	case K_SMALLER: return m->row->size < k->num;
	case K_BEFORE: return m->row->received / 86400 < (int64_t)k->num;
	case K_ON: return m->row->received / 86400 == (int64_t)k->num;
	case K_SINCE: return m->row->received / 86400 >= (int64_t)k->num;
	case K_SENTBEFORE: return (day = sent_day(m)) >= 0 && day < (int64_t)k->num;
	case K_SENTON: return (day = sent_day(m)) >= 0 && day == (int64_t)k->num;
	case K_SENTSINCE: return (day = sent_day(m)) >= 0 && day >= (int64_t)k->num;
	case K_HEADER: return header_match(m, k->field, k->str, k->str_len);
	case K_BODY: return text_contains(m, k->str, k->str_len, false);
	case K_TEXT: return text_contains(m, k->str, k->str_len, true);
	case K_SAVED: return saved_has(k, m->row->uid);
	case K_UID: return imap_seqset_contains(&k->set, m->row->uid, m->max_uid);
	case K_SEQ: return imap_seqset_contains(&k->set, (uint32_t)m->seq, m->max_seq);
	case K_MODSEQ: return m->row->modseq >= k->num;
	case K_KEYWORD: return imap_keywords_have(m->row->keywords, k->str);
	case K_UNKEYWORD: return !imap_keywords_have(m->row->keywords, k->str);
	case K_NOT: return !eval(k->kids[0], m);
	case K_OR: return eval(k->kids[0], m) || eval(k->kids[1], m);
	case K_AND:
		for (size_t i = 0; i < k->n_kids; i++) {
			if (!eval(k->kids[i], m))
				return false;
		}
		return true;
	}
	return false;
}

/* True when the program has a MODSEQ key (the reply then names a modseq). */
static bool uses_modseq(const struct snode *k)
{
	if (k->key == K_MODSEQ)
		return true;
	for (size_t i = 0; i < k->n_kids; i++) {
		if (uses_modseq(k->kids[i]))
			return true;
	}
	return false;
}

/* True when evaluating the program reads message files. */
static bool needs_blob(const struct snode *k)
{
	switch (k->key) {
	case K_SENTBEFORE: case K_SENTON: case K_SENTSINCE: case K_HEADER: case K_BODY: case K_TEXT:
		return true;
	default:
		for (size_t i = 0; i < k->n_kids; i++) {
			if (needs_blob(k->kids[i]))
				return true;
		}
		return false;
	}
}

/* One evaluation over a snapshot of the view: on the loop, or on a pool
 * thread when the program reads message files (or SORT/THREAD asked). */
struct run_ctx {
	struct snode *prog;
	const struct view_msg *m;   /* view snapshot, UID order */
	size_t n;
	const struct settings *set;
	bool uid;                   /* report UIDs (UID SEARCH) */
	size_t view_pos;
	uint32_t *hits;             /* matching UIDs or sequence numbers, ascending */
	size_t n_hits, cap_hits;
	uint64_t max_modseq;        /* highest mod-sequence among the hits */
	const struct imap_search_user *user;   /* SORT, THREAD: hits go there */
	void *user_ctx;
};

static void hit_push(struct run_ctx *c, uint32_t v)
{
	if (c->n_hits == c->cap_hits) {
		c->cap_hits = c->cap_hits ? c->cap_hits * 2 : 64;
		c->hits = xreallocarray(c->hits, c->cap_hits, sizeof(*c->hits));
	}
	c->hits[c->n_hits++] = v;
}

static void user_hit(struct run_ctx *c, struct smsg *m)
{
	struct imap_search_hit h = { 0 };
	h.uid = m->row->uid;
	h.seq = (uint32_t)m->seq;
	h.size = m->row->size;
	h.received = m->row->received;
	if (c->user->need_header && load_header(m)) {
		h.header = m->header.data;
		h.header_len = m->header.len;
	} else {
		h.header = "";
	}
	c->user->hit(c->user_ctx, &h);
}

static void run_cb(void *arg, const struct store_imap_msg *row)
{
	struct run_ctx *c = arg;
	while (c->view_pos < c->n && c->m[c->view_pos].uid < row->uid)
		c->view_pos++;
	if (c->view_pos >= c->n || c->m[c->view_pos].uid != row->uid || (c->m[c->view_pos].flags & VIEW_GONE))
		return;   /* not in this session's view (yet) */
	struct smsg m = { 0 };
	m.row = row;
	m.seq = c->view_pos + 1;
	m.flags = c->m[c->view_pos].flags & ~VIEW_GONE;
	m.max_uid = c->n ? c->m[c->n - 1].uid : 0;
	m.max_seq = (uint32_t)c->n;
	m.set = c->set;
	m.fd = -1;
	if (eval(c->prog, &m)) {
		if (c->user != NULL) {
			user_hit(c, &m);
		} else {
			hit_push(c, c->uid ? row->uid : (uint32_t)m.seq);
			if (row->modseq > c->max_modseq)
				c->max_modseq = row->modseq;
		}
	}
	if (m.fd >= 0)
		close(m.fd);
	buf_free(&m.header);
}

static enum status run_search(struct store *st, int64_t mailbox_id, struct run_ctx *c)
{
	if (c->n == 0)
		return ST_OK;
	return store_imap_messages(st, mailbox_id, c->m[0].uid, run_cb, c);
}

/* ESEARCH result options (RFC 4731, RFC 5182): RET_* bits; 0 = classic SEARCH. */
#define RET_MIN   (1u << 0)
#define RET_MAX   (1u << 1)
#define RET_ALL   (1u << 2)
#define RET_COUNT (1u << 3)
#define RET_ESEARCH (1u << 4)   /* RETURN given: answer with ESEARCH */
#define RET_SAVE  (1u << 5)     /* RFC 5182: keep the result as "$" */

/* hits (ascending) as a compact sequence set: "1:3,7,9:10". */
static void hits_format_set(const uint32_t *hits, size_t n, struct buf *out)
{
	for (size_t i = 0; i < n;) {
		size_t j = i;
		while (j + 1 < n && hits[j + 1] == hits[j] + 1)
			j++;
		if (i > 0)
			buf_append_char(out, ',');
		if (j > i)
			buf_printf(out, "%u:%u", hits[i], hits[j]);
		else
			buf_printf(out, "%u", hits[i]);
		i = j + 1;
	}
}

/* ---- SEARCHRES (RFC 5182) ------------------------------------------------------------ */

static void saved_set(struct imap_view *v, uint32_t *uids, size_t n)
{
	free(v->saved);
	v->saved = uids;
	v->n_saved = n;
}

/* Keeps the result as "$": UIDs, ascending.  With MIN and/or MAX but
 * neither ALL nor COUNT, only those (RFC 5182 2.1). */
static void saved_store(struct imap_session *s, const struct run_ctx *c, unsigned ret)
{
	size_t n = c->n_hits;
	uint32_t *uids = xcalloc(n ? n : 1, sizeof(*uids));
	for (size_t i = 0; i < n; i++)
		uids[i] = c->uid ? c->hits[i] : c->m[c->hits[i] - 1].uid;
	bool only_edges = (ret & (RET_MIN | RET_MAX)) && !(ret & (RET_ALL | RET_COUNT));
	if (only_edges && n > 0) {
		uint32_t lo = uids[0], hi = uids[n - 1];
		n = 0;
		if (ret & RET_MIN)
			uids[n++] = lo;
		if ((ret & RET_MAX) && (n == 0 || hi != lo))
			uids[n++] = hi;
	}
	saved_set(s->view, uids, n);
}

size_t *imap_search_saved_resolve(struct imap_session *s, size_t *n_r)
{
	const struct imap_view *v = s->view;
	size_t *idx = xcalloc(v->n_saved ? v->n_saved : 1, sizeof(*idx));
	size_t n = 0;
	for (size_t i = 0; i < v->n_saved; i++) {
		long k = imap_view_find(v, v->saved[i]);
		if (k >= 0)
			idx[n++] = (size_t)k;   /* ascending: the view is in UID order */
	}
	*n_r = n;
	return idx;
}

/* ---- replies ---------------------------------------------------------------------------- */

/* "* ESEARCH (TAG "t") [UID] MIN .. MAX .. ALL .. COUNT .. [MODSEQ ..]"
 * (RFC 4731; also the IMAP4rev2 form of every SEARCH reply). */
static void reply_esearch(struct imap_session *s, const struct run_ctx *c, unsigned ret, struct buf *line)
{
	buf_append_str(line, "ESEARCH (TAG ");
	imap_quote(line, s->tag);
	buf_append_char(line, ')');
	if (c->uid)
		buf_append_str(line, " UID");
	if ((ret & RET_MIN) && c->n_hits > 0)
		buf_printf(line, " MIN %u", c->hits[0]);
	if ((ret & RET_MAX) && c->n_hits > 0)
		buf_printf(line, " MAX %u", c->hits[c->n_hits - 1]);
	if ((ret & RET_ALL) && c->n_hits > 0) {
		buf_append_str(line, " ALL ");
		hits_format_set(c->hits, c->n_hits, line);
	}
	if (ret & RET_COUNT)
		buf_printf(line, " COUNT %zu", c->n_hits);
	if (uses_modseq(c->prog) && c->n_hits > 0)
		buf_printf(line, " MODSEQ %llu", (unsigned long long)c->max_modseq);
}

/* "* SEARCH n n n [(MODSEQ m)]" (RFC 3501). */
static void reply_search(const struct run_ctx *c, struct buf *line)
{
	buf_append_str(line, "SEARCH");
	for (size_t i = 0; i < c->n_hits; i++)
		buf_printf(line, " %u", c->hits[i]);
	if (uses_modseq(c->prog) && c->n_hits > 0)
		buf_printf(line, " (MODSEQ %llu)", (unsigned long long)c->max_modseq);
}

static void search_reply(struct imap_session *s, enum status st, const struct run_ctx *c, unsigned ret)
{
	if (st != ST_OK) {
		if (ret & RET_SAVE)
			saved_set(s->view, NULL, 0);
		imap_command_reply_status(s, st, "Cannot search the mailbox");
		return;
	}
	if (ret & RET_SAVE)
		saved_store(s, c, ret);
	struct buf line = BUF_INIT;
	if (ret & RET_ESEARCH) {
		/* RETURN (SAVE) alone answers nothing but OK (RFC 5182 2.1). */
		if (ret & (RET_MIN | RET_MAX | RET_ALL | RET_COUNT))
			reply_esearch(s, c, ret, &line);
	} else {
		reply_search(c, &line);
	}
	if (line.len > 0)
		imap_session_untagged(s, "%s", line.data);
	buf_free(&line);
	imap_mailbox_sync(s, c->uid);
	imap_session_tagged(s, "OK", "SEARCH completed");
}

/* "RETURN (opts)" at the start of the program (RFC 4731 3.1).  Consumes
 * it from the arguments; false (error text) for an unknown or malformed option. */
static bool parse_return(const struct imap_arg **a, size_t *n, unsigned *ret_r, const char **err)
{
	*ret_r = 0;
	if (*n < 1 || !imap_arg_is_atom(&(*a)[0], "RETURN"))
		return true;
	if (*n < 2 || (*a)[1].type != IMAP_ARG_LIST) {
		*err = "RETURN needs a list of options";
		return false;
	}
	const struct imap_arg *l = &(*a)[1];
	unsigned ret = RET_ESEARCH;
	for (size_t i = 0; i < l->n; i++) {
		const struct imap_arg *o = &l->list[i];
		if (imap_arg_is_atom(o, "MIN")) ret |= RET_MIN;
		else if (imap_arg_is_atom(o, "MAX")) ret |= RET_MAX;
		else if (imap_arg_is_atom(o, "ALL")) ret |= RET_ALL;
		else if (imap_arg_is_atom(o, "COUNT")) ret |= RET_COUNT;
		else if (imap_arg_is_atom(o, "SAVE")) ret |= RET_SAVE;
		else {
			*err = "Unknown RETURN option";
			return false;
		}
	}
	if (l->n == 0)
		ret |= RET_ALL;   /* "RETURN ()" means ALL */
	*ret_r = ret;
	*a += 2;
	*n -= 2;
	return true;
}

/* "CHARSET name": UTF-8 and US-ASCII only.  False after replying. */
static bool charset_ok(struct imap_session *s, const struct imap_cmd *cmd, const struct imap_arg *a)
{
	if (!imap_arg_is_string(a)) {
		imap_session_bad(s, cmd->tag, "Invalid CHARSET");
		return false;
	}
	if (!str_ieq(a->str, "US-ASCII") && !str_ieq(a->str, "UTF-8")) {
		imap_session_tagged(s, "NO", "[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset");
		return false;
	}
	return true;
}

/* ---- jobs ------------------------------------------------------------------------------- */

struct search_job {
	struct imap_job j;
	int64_t mailbox_id;
	unsigned ret;
	const char *name;           /* of the command, for its OK */
	struct run_ctx c;
	struct view_msg *snapshot;
};

static void search_job_run(struct imap_job *j, struct store *st)
{
	struct search_job *sj = (struct search_job *)j;
	j->status = run_search(st, sj->mailbox_id, &sj->c);
	if (j->status == ST_OK && sj->c.user != NULL && sj->c.user->finish != NULL)
		sj->c.user->finish(sj->c.user_ctx);
}

static void user_reply(struct imap_session *s, enum status st, struct search_job *sj)
{
	if (st != ST_OK) {
		imap_command_reply_status(s, st, "Cannot search the mailbox");
		return;
	}
	sj->c.user->reply(s, sj->c.user_ctx, sj->c.uid);
	imap_mailbox_sync(s, sj->c.uid);
	imap_session_tagged(s, "OK", "%s completed", sj->name);
}

static void search_job_done(struct imap_job *j)
{
	struct search_job *sj = (struct search_job *)j;
	struct imap_session *s = j->s;
	if (imap_session_job_finished(s)) {
		if (s->view == NULL)
			imap_session_tagged(s, "NO", "Mailbox closed");
		else if (sj->c.user != NULL)
			user_reply(s, j->status, sj);
		else
			search_reply(s, j->status, &sj->c, sj->ret);
		imap_session_job_end(s);
	}
	if (sj->c.user != NULL)
		sj->c.user->free(sj->c.user_ctx);
	snode_free(sj->c.prog);
	free(sj->c.hits);
	free(sj->snapshot);
	free(sj);
}

/* Runs c over a snapshot of the view on a store thread; replies when done. */
static void submit_job(struct imap_session *s, const char *name, struct run_ctx *c, unsigned ret)
{
	/* The session waits, so the view cannot change meanwhile, but the
	 * job owns its memory. */
	struct imap_view *v = s->view;
	struct search_job *sj = xcalloc(1, sizeof(*sj));
	sj->snapshot = xcalloc(v->n ? v->n : 1, sizeof(*sj->snapshot));
	if (v->n > 0)
		memcpy(sj->snapshot, v->m, v->n * sizeof(*v->m));
	for (size_t i = 0; i < v->n; i++)
		sj->snapshot[i].kw = NULL;   /* the job reads keywords from the index rows */
	c->m = sj->snapshot;
	sj->c = *c;
	sj->ret = ret;
	sj->name = name;
	sj->mailbox_id = v->id;
	sj->j.run = search_job_run;
	sj->j.done = search_job_done;
	imap_session_submit(s, &sj->j);
}

void imap_search_run(struct imap_session *s, struct imap_cmd *cmd)
{
	const struct imap_arg *a = cmd->args;
	size_t n = cmd->n_args;
	unsigned ret;
	const char *rerr = NULL;
	if (!parse_return(&a, &n, &ret, &rerr)) {
		imap_session_bad(s, cmd->tag, "%s", rerr);
		return;
	}
	if (n >= 2 && imap_arg_is_atom(&a[0], "CHARSET")) {
		if (!charset_ok(s, cmd, &a[1])) {
			if (ret & RET_SAVE)
				saved_set(s->view, NULL, 0);
			return;
		}
		a += 2;
		n -= 2;
	}
	const char *err = NULL;
	struct snode *prog = parse_keys(a, n, 0, s->view, &err);
	if (prog == NULL) {
		if (ret & RET_SAVE)
			saved_set(s->view, NULL, 0);
		imap_session_bad(s, cmd->tag, "%s", err ? err : "Invalid search program");
		return;
	}
	if (uses_modseq(prog))
		s->condstore = true;   /* a CONDSTORE enabling command (RFC 7162 3.1) */
	struct imap_view *v = s->view;
	struct run_ctx c = { .prog = prog, .m = v->m, .n = v->n, .set = s->set, .uid = cmd->uid };
	if (!needs_blob(prog)) {
		/* Flags, sizes, dates, sets: index data only, answered here. */
		enum status st = run_search(s->w->reader, v->id, &c);
		search_reply(s, st, &c, ret);
		snode_free(prog);
		free(c.hits);
		return;
	}
	submit_job(s, "SEARCH", &c, ret);
}

void imap_search_submit_for(struct imap_session *s, struct imap_cmd *cmd, const struct imap_arg *a, size_t n,
			    const struct imap_search_user *u, void *ctx)
{
	if (n < 2) {
		u->free(ctx);
		imap_session_bad(s, cmd->tag, "Missing charset or search criteria");
		return;
	}
	if (!charset_ok(s, cmd, &a[0])) {
		u->free(ctx);
		return;
	}
	const char *err = NULL;
	struct snode *prog = parse_keys(a + 1, n - 1, 0, s->view, &err);
	if (prog == NULL) {
		u->free(ctx);
		imap_session_bad(s, cmd->tag, "%s", err ? err : "Invalid search program");
		return;
	}
	if (uses_modseq(prog))
		s->condstore = true;
	struct run_ctx c = { .prog = prog, .n = s->view->n, .set = s->set, .uid = cmd->uid,
			     .user = u, .user_ctx = ctx };
	submit_job(s, u->name, &c, 0);
}
