/*
 * imap_search.c - SEARCH and UID SEARCH (RFC 3501 6.4.4).
 *
 * Keys: ALL, the flag keys (ANSWERED ... UNSEEN, NEW, OLD, RECENT), KEYWORD
 * and UNKEYWORD (case-insensitive, against the index row), LARGER, SMALLER, BEFORE, ON,
 * SINCE (internal date), SENTBEFORE, SENTON, SENTSINCE (the Date: header's
 * calendar date), FROM, TO, CC, BCC, SUBJECT, HEADER (substring of the
 * unfolded field values), BODY and TEXT (substring of the body / the whole
 * message), UID, sequence sets, NOT, OR and parenthesised lists, and
 * MODSEQ (RFC 7162 3.1.5; the optional entry name and type are accepted,
 * the message's one mod-sequence is compared).  CHARSET US-ASCII and UTF-8
 * are accepted; matching is ASCII case-insensitive.
 *
 * Results: the SEARCH response, with "(MODSEQ n)" (the highest of the
 * matches) when the program used MODSEQ; or, after RETURN (...), one
 * ESEARCH response (RFC 4731: MIN, MAX, COUNT, ALL; "RETURN ()" is ALL).
 *
 * The program is parsed into a tree (depth bounded by SEARCH_MAX_DEPTH so
 * "NOT NOT NOT ..." cannot recurse without limit), then evaluated per
 * message; headers and bodies are read from the blob only when a key needs
 * them, and bodies are scanned in chunks, never loaded whole.
 *
 * Threads: programs that only need index data (flags, sizes, dates, sets)
 * run on the loop thread; programs that read headers or bodies run as a
 * store job on a pool thread, over a snapshot of the view, so a TEXT search
 * of a large mailbox never stalls the other sessions of the loop.
 */
#include "imap_int.h"

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

enum skey {
	K_ALL, K_FLAG_SET, K_FLAG_UNSET, K_NONE, K_LARGER, K_SMALLER, K_BEFORE, K_ON, K_SINCE,
	K_SENTBEFORE, K_SENTON, K_SENTSINCE, K_HEADER, K_BODY, K_TEXT, K_UID, K_SEQ, K_NOT, K_OR, K_AND,
	K_MODSEQ, K_KEYWORD, K_UNKEYWORD,
};

struct snode {
	enum skey key;
	uint32_t flag;
	uint64_t num;                /* size, or a day number for dates */
	char *field;                 /* HEADER field name */
	char *str;                   /* lower-cased needle */
	struct imap_seqset set;
	struct snode **kids;
	size_t n_kids;
};

struct sparser {
	const struct imap_arg *a;
	size_t n, i;
	const char *error;
};

static void snode_free(struct snode *n)
{
	if (n == NULL)
		return;
	free(n->field);
	free(n->str);
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

/* Keys until the end of `a` (a list or the top level) as an AND node. */
static struct snode *parse_keys(const struct imap_arg *a, size_t n, unsigned depth, const char **error)
{
	struct sparser sub = { a, n, 0, NULL };
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
	k->str = lower_dup(a->str, a->len);
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
	/* No \Recent in this store: NEW and RECENT match nothing, OLD all. */
	{ "NEW", K_NONE, 0 }, { "RECENT", K_NONE, 0 }, { "OLD", K_ALL, 0 },
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
		struct snode *k = parse_keys(a->list, a->n, depth + 1, &err);
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
	uint32_t flags;
	uint32_t max_uid, max_seq;
	const struct settings *set;  /* blob files on any tier (store_blob_find) */
	bool header_read;
	bool header_ok;
	struct buf header;          /* lower-cased, bounded */
	uint64_t header_len;        /* in the file */
};

static bool load_header(struct smsg *m)
{
	if (m->header_read)
		return m->header_ok;
	m->header_read = true;
	char path[PATH_MAX];
	store_blob_find(m->set, 0, &m->row->id, path, sizeof(path));
	uint64_t len = m->row->size < SEARCH_HEADER_MAX ? m->row->size : SEARCH_HEADER_MAX;
	if (!imap_blob_read(path, 0, len, &m->header))
		return false;
	/* Cut at the blank line. */
	const char *h = m->header.data ? m->header.data : "";
	size_t end = m->header.len;
	if (h[0] == '\n' || (h[0] == '\r' && h[1] == '\n'))
		end = 0;   /* an empty header */
	for (size_t i = 0; end != 0 && i + 1 < m->header.len; i++) {
		if (h[i] == '\n' && (h[i + 1] == '\n' || (h[i + 1] == '\r' && i + 2 < m->header.len && h[i + 2] == '\n'))) {
			end = i + 1;
			break;
		}
	}
	m->header_len = end == m->header.len ? m->row->size : end + (h[end] == '\r' ? 2 : 1);
	buf_truncate(&m->header, end);
	for (size_t i = 0; i < m->header.len; i++)
		m->header.data[i] = (char)tolower((unsigned char)m->header.data[i]);
	m->header_ok = true;
	return true;
}

/* Substring in the unfolded values of the fields named `field`; an empty
 * needle matches when the field exists. */
static bool header_match(struct smsg *m, const char *field, const char *needle)
{
	if (!load_header(m))
		return false;
	const char *h = m->header.data ? m->header.data : "";
	size_t len = m->header.len, flen = strlen(field);
	struct buf value = BUF_INIT;
	bool found = false;
	for (size_t i = 0; i < len && !found;) {
		const char *line = h + i;
		const char *nl = memchr(line, '\n', len - i);
		size_t ll = nl ? (size_t)(nl - line) + 1 : len - i;
		i += ll;
		if (line[0] == ' ' || line[0] == '\t' || ll <= flen || strncmp(line, field, flen) != 0 ||
		    line[flen] != ':')
			continue;
		buf_reset(&value);
		buf_append(&value, line + flen + 1, ll - flen - 1);
		/* continuation lines */
		while (i < len && (h[i] == ' ' || h[i] == '\t')) {
			const char *c = h + i;
			const char *cnl = memchr(c, '\n', len - i);
			size_t cl = cnl ? (size_t)(cnl - c) + 1 : len - i;
			buf_append(&value, c, cl);
			i += cl;
		}
		for (size_t k = 0; k < value.len; k++) {
			if (value.data[k] == '\r' || value.data[k] == '\n')
				value.data[k] = ' ';
		}
		found = needle[0] == '\0' || strstr(value.data, needle) != NULL;
	}
	buf_free(&value);
	return found;
}

/* Case-insensitive substring over [off, size) of the blob, in chunks that
 * overlap by len(needle) - 1. */
static bool body_contains(struct smsg *m, uint64_t off, const char *needle)
{
	size_t nl = strlen(needle);
	if (nl == 0)
		return true;
	int fd = store_blob_open(m->set, 0, &m->row->id, NULL);
	if (fd < 0)
		return false;
	char *chunk = xmalloc(SEARCH_CHUNK + nl + 1);
	size_t carry = 0;
	bool found = false;
	uint64_t size = m->row->size;
	while (off < size && !found) {
		size_t want = size - off < SEARCH_CHUNK ? (size_t)(size - off) : SEARCH_CHUNK;
		ssize_t n = pread(fd, chunk + carry, want, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		size_t total = carry + (size_t)n;
		for (size_t i = carry; i < total; i++)
			chunk[i] = (char)tolower((unsigned char)chunk[i]);
		chunk[total] = '\0';
		found = memmem(chunk, total, needle, nl) != NULL;
		off += (uint64_t)n;
		carry = total < nl - 1 ? total : nl - 1;
		memmove(chunk, chunk + total - carry, carry);
	}
	free(chunk);
	close(fd);
	return found;
}

/* Calendar day of the Date: header ("[Day, ]DD Mon YYYY ..."), or -1. */
static int64_t sent_day(struct smsg *m)
{
	if (!load_header(m))
		return -1;
	const char *h = m->header.data ? m->header.data : "";
	const char *p = h;
	while ((p = strstr(p, "date:")) != NULL) {
		if (p == h || p[-1] == '\n')
			break;
		p += 5;
	}
	if (p == NULL)
		return -1;
	p += 5;
	const char *comma = strchr(p, ',');
	const char *nl = strchr(p, '\n');
	if (comma && (!nl || comma < nl))
		p = comma + 1;
	int d, y;
	char mon[4];
	if (sscanf(p, " %2d %3s %4d", &d, mon, &y) != 3)
		return -1;
	int mi = month_index(mon);
	if (mi == 0 || d < 1 || d > 31 || y < 1900)
		return -1;
	return days_from_civil(y, (unsigned)mi, (unsigned)d);
}

static bool eval(struct snode *k, struct smsg *m)
{
	int64_t day;
	switch (k->key) {
	case K_ALL: return true;
	case K_NONE: return false;
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
	case K_HEADER: return header_match(m, k->field, k->str);
	case K_BODY: return load_header(m) && body_contains(m, m->header_len, k->str);
	case K_TEXT: return body_contains(m, 0, k->str);
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
 * thread when the program reads message files. */
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
};

static void hit_push(struct run_ctx *c, uint32_t v)
{
	if (c->n_hits == c->cap_hits) {
		c->cap_hits = c->cap_hits ? c->cap_hits * 2 : 64;
		c->hits = xreallocarray(c->hits, c->cap_hits, sizeof(*c->hits));
	}
	c->hits[c->n_hits++] = v;
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
	if (eval(c->prog, &m)) {
		hit_push(c, c->uid ? row->uid : (uint32_t)m.seq);
		if (row->modseq > c->max_modseq)
			c->max_modseq = row->modseq;
	}
	buf_free(&m.header);
}

static enum status run_search(struct store *st, int64_t mailbox_id, struct run_ctx *c)
{
	if (c->n == 0)
		return ST_OK;
	return store_imap_messages(st, mailbox_id, c->m[0].uid, run_cb, c);
}

/* ESEARCH result options (RFC 4731): RET_* bits; 0 = classic SEARCH. */
#define RET_MIN   (1u << 0)
#define RET_MAX   (1u << 1)
#define RET_ALL   (1u << 2)
#define RET_COUNT (1u << 3)
#define RET_ESEARCH (1u << 4)   /* RETURN given: answer with ESEARCH */

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

static void search_reply(struct imap_session *s, enum status st, const struct run_ctx *c, unsigned ret)
{
	if (st != ST_OK) {
		imap_command_reply_status(s, st, "Cannot search the mailbox");
		return;
	}
	struct buf line = BUF_INIT;
	if (ret & RET_ESEARCH) {
		buf_append_str(&line, "ESEARCH (TAG ");
		imap_quote(&line, s->tag);
		buf_append_char(&line, ')');
		if (c->uid)
			buf_append_str(&line, " UID");
		if ((ret & RET_MIN) && c->n_hits > 0)
			buf_printf(&line, " MIN %u", c->hits[0]);
		if ((ret & RET_MAX) && c->n_hits > 0)
			buf_printf(&line, " MAX %u", c->hits[c->n_hits - 1]);
		if ((ret & RET_ALL) && c->n_hits > 0) {
			buf_append_str(&line, " ALL ");
			hits_format_set(c->hits, c->n_hits, &line);
		}
		if (ret & RET_COUNT)
			buf_printf(&line, " COUNT %zu", c->n_hits);
		if (uses_modseq(c->prog) && c->n_hits > 0)
			buf_printf(&line, " MODSEQ %llu", (unsigned long long)c->max_modseq);
	} else {
		buf_append_str(&line, "SEARCH");
		for (size_t i = 0; i < c->n_hits; i++)
			buf_printf(&line, " %u", c->hits[i]);
		if (uses_modseq(c->prog) && c->n_hits > 0)
			buf_printf(&line, " (MODSEQ %llu)", (unsigned long long)c->max_modseq);
	}
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

struct search_job {
	struct imap_job j;
	int64_t mailbox_id;
	unsigned ret;
	struct run_ctx c;
	struct view_msg *snapshot;
};

static void search_job_run(struct imap_job *j, struct store *st)
{
	struct search_job *sj = (struct search_job *)j;
	j->status = run_search(st, sj->mailbox_id, &sj->c);
}

static void search_job_done(struct imap_job *j)
{
	struct search_job *sj = (struct search_job *)j;
	struct imap_session *s = j->s;
	if (imap_session_job_finished(s)) {
		if (s->view != NULL)
			search_reply(s, j->status, &sj->c, sj->ret);
		else
			imap_session_tagged(s, "NO", "Mailbox closed");
		imap_session_job_end(s);
	}
	snode_free(sj->c.prog);
	free(sj->c.hits);
	free(sj->snapshot);
	free(sj);
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
		if (!imap_arg_is_string(&a[1])) {
			imap_session_bad(s, cmd->tag, "Invalid CHARSET");
			return;
		}
		if (!str_ieq(a[1].str, "US-ASCII") && !str_ieq(a[1].str, "UTF-8")) {
			imap_session_tagged(s, "NO", "[BADCHARSET (US-ASCII UTF-8)] Unsupported charset");
			return;
		}
		a += 2;
		n -= 2;
	}
	const char *err = NULL;
	struct snode *prog = parse_keys(a, n, 0, &err);
	if (prog == NULL) {
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
	/* Headers and bodies are read on a store thread, from a snapshot of
	 * the view (the session waits, so the view cannot change meanwhile,
	 * but it owns its memory). */
	struct search_job *sj = xcalloc(1, sizeof(*sj));
	sj->snapshot = xcalloc(v->n ? v->n : 1, sizeof(*sj->snapshot));
	memcpy(sj->snapshot, v->m, v->n * sizeof(*v->m));
	for (size_t i = 0; i < v->n; i++)
		sj->snapshot[i].kw = NULL;   /* the job reads keywords from the index rows */
	c.m = sj->snapshot;
	sj->c = c;
	sj->ret = ret;
	sj->mailbox_id = v->id;
	sj->j.run = search_job_run;
	sj->j.done = search_job_done;
	imap_session_submit(s, &sj->j);
}
