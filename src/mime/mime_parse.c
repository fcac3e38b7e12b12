/*
 * mime_parse.c - the part tree of a raw message: header scan, multipart
 * boundary scan, Content-Type / Content-Disposition / parameter parsing
 * (RFC 2045, 2046, 2183, 2231), and the public entry points.
 *
 * The scanner works on byte offsets of the raw message, so every range it
 * records is exactly what BODY[section] serves.  A multipart's children
 * are found by scanning only the multipart's own body for its own
 * boundary: a child can never extend past an ancestor's boundary, and the
 * work is the message size times the nesting depth at most.
 *
 * Lenience: header lines without a colon are skipped; a missing blank
 * line ends the header at the end of the part; a missing close delimiter
 * ends the last part at the end of the multipart.  Nothing here fails.
 *
 * Threads: no shared state.  mime_parse_file maps the file read-only:
 * blobs are never written again once named by the index.
 */
#include "mime_int.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MIME_MAX_PARAMS 64       /* per header field; the rest is ignored */

#define RELEASE_STEP (1u << 20)  /* mapped bytes scanned before dropping them */

struct builder {
	const char *d;
	size_t len;
	size_t n_parts;
	bool mapped;              /* d is our read-only file mapping */
};

/*
 * Memory: a file is parsed through a read-only private mapping, and every
 * page a scan touches would stay resident (and count in the process's RSS)
 * until the unmap: a 20 MB message would cost 20 MB.  So each long scan
 * drops the pages behind it every RELEASE_STEP bytes (MADV_DONTNEED: the
 * pages were never written, so a later access re-reads them from the page
 * cache).  Header slices kept in the tree stay valid.
 */
static void release_behind(const struct builder *b, size_t *mark, size_t pos)
{
	if (!b->mapped || pos < *mark + RELEASE_STEP)
		return;
	long page = sysconf(_SC_PAGESIZE);
	size_t ps = page > 0 ? (size_t)page : 4096;
	size_t from = (*mark + ps - 1) / ps * ps, to = pos / ps * ps;
	if (to > from)
		madvise((void *)(uintptr_t)(b->d + from), to - from, MADV_DONTNEED);
	*mark = pos;
}

static const char *const hdr_names[MH__COUNT] = {
	[MH_CONTENT_TYPE] = "content-type", [MH_CONTENT_ENCODING] = "content-transfer-encoding",
	[MH_CONTENT_ID] = "content-id", [MH_CONTENT_DESCRIPTION] = "content-description",
	[MH_CONTENT_MD5] = "content-md5", [MH_CONTENT_DISPOSITION] = "content-disposition",
	[MH_CONTENT_LANGUAGE] = "content-language", [MH_CONTENT_LOCATION] = "content-location",
	[MH_DATE] = "date", [MH_SUBJECT] = "subject", [MH_FROM] = "from", [MH_SENDER] = "sender",
	[MH_REPLY_TO] = "reply-to", [MH_TO] = "to", [MH_CC] = "cc", [MH_BCC] = "bcc",
	[MH_IN_REPLY_TO] = "in-reply-to", [MH_MESSAGE_ID] = "message-id",
};

/* ---- small helpers ----------------------------------------------------------- */

/* End of the line starting at i: the index after its LF, or `end`. */
static size_t line_end(const char *d, size_t i, size_t end)
{
	const char *nl = memchr(d + i, '\n', end - i);
	return nl ? (size_t)(nl - d) + 1 : end;
}

static bool is_blank_line(const char *d, size_t i, size_t end)
{
	return (i < end && d[i] == '\n') || (i + 1 < end && d[i] == '\r' && d[i + 1] == '\n');
}

void mime_unfold(const char *p, size_t len, struct buf *out)
{
	size_t start = out->len;
	bool lead = true;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c == '\r' || c == '\n') {
			/* Folding: CRLF followed by WSP is removed; any other
			 * stray line break byte becomes a space. */
			if (c == '\r' && i + 1 < len && p[i + 1] == '\n')
				i++;
			if (i + 1 < len && (p[i + 1] == ' ' || p[i + 1] == '\t'))
				continue;
			c = ' ';
		}
		if (c == '\0')
			continue;
		if (lead && (c == ' ' || c == '\t'))
			continue;
		lead = false;
		buf_append_char(out, (char)c);
	}
	while (out->len > start && (out->data[out->len - 1] == ' ' || out->data[out->len - 1] == '\t'))
		out->len--;
	buf_reserve(out, 1);
	out->data[out->len] = '\0';
}

static char *lower_dup(const char *s, size_t n)
{
	char *r = xstrndup(s, n);
	for (char *p = r; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	return r;
}

/* ---- header scan ------------------------------------------------------------- */

/* Scans the header starting at n->hs (bounded by `end`), records the
 * fields we need, and sets n->bs just past the blank line. */
static void scan_header(struct builder *b, struct mnode *n, size_t end)
{
	const char *d = b->d;
	size_t i = (size_t)n->hs;
	int cur = -1;              /* field being continued */
	size_t cur_start = 0;
	size_t mark = i;
	while (i < end) {
		release_behind(b, &mark, i);
		if (is_blank_line(d, i, end)) {
			i = line_end(d, i, end);
			break;
		}
		size_t le = line_end(d, i, end);
		if (d[i] == ' ' || d[i] == '\t') {
			if (cur >= 0)
				n->h[cur].len = le - cur_start;
			i = le;
			continue;
		}
		cur = -1;
		const char *colon = memchr(d + i, ':', le - i);
		if (colon != NULL) {
			size_t nlen = (size_t)(colon - (d + i));
			while (nlen > 0 && (d[i + nlen - 1] == ' ' || d[i + nlen - 1] == '\t'))
				nlen--;
			for (int k = 0; k < MH__COUNT; k++) {
				if (!n->has[k] && strlen(hdr_names[k]) == nlen &&
				    strncasecmp(hdr_names[k], d + i, nlen) == 0) {
					n->has[k] = true;
					cur = k;
					cur_start = (size_t)(colon - d) + 1;
					n->h[k].p = colon + 1;
					n->h[k].len = le - cur_start;
					break;
				}
			}
		}
		i = le;
	}
	n->bs = i;
}

/* ---- RFC 2045 tokens and parameters ----------------------------------------- */

struct lex {
	const char *p, *end;
};

/* Skips white space, line breaks and (nested) comments. */
static void skip_cfws(struct lex *x)
{
	while (x->p < x->end) {
		char c = *x->p;
		if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
			x->p++;
		} else if (c == '(') {
			int depth = 0;
			while (x->p < x->end) {
				if (*x->p == '\\' && x->p + 1 < x->end)
					x->p++;
				else if (*x->p == '(')
					depth++;
				else if (*x->p == ')' && --depth == 0) {
					x->p++;
					break;
				}
				x->p++;
			}
		} else {
			break;
		}
	}
}

static bool is_tspecial(unsigned char c)
{
	return c <= ' ' || c == 0x7f || strchr("()<>@,;:\\\"/[]?=", c) != NULL;
}

/* A token (8-bit bytes tolerated); false when there is none. */
static bool lex_token(struct lex *x, const char **s, size_t *n)
{
	skip_cfws(x);
	const char *start = x->p;
	while (x->p < x->end && !is_tspecial((unsigned char)*x->p))
		x->p++;
	*s = start;
	*n = (size_t)(x->p - start);
	return *n > 0;
}

/* A parameter value: a quoted string (unquoted, unfolded) or a token. */
static bool lex_value(struct lex *x, struct buf *out)
{
	skip_cfws(x);
	if (x->p < x->end && *x->p == '"') {
		x->p++;
		while (x->p < x->end && *x->p != '"') {
			char c = *x->p++;
			if (c == '\\' && x->p < x->end)
				c = *x->p++;
			else if (c == '\r' || c == '\n')
				continue;
			if (c != '\0')
				buf_append_char(out, c);
		}
		if (x->p < x->end)
			x->p++;
		buf_reserve(out, 1);
		out->data[out->len] = '\0';
		return true;
	}
	const char *s;
	size_t n;
	if (!lex_token(x, &s, &n))
		return false;
	buf_append(out, s, n);
	buf_reserve(out, 1);
	out->data[out->len] = '\0';
	return true;
}

/* One raw parameter before RFC 2231 joining. */
struct rawparam {
	char *name;               /* lower case, as sent ("title*1*") */
	char *value;
};

static void add_param(struct mparam **ps, size_t *n, char *name, char *value)
{
	*ps = xreallocarray(*ps, *n + 1, sizeof(**ps));
	(*ps)[*n].name = name;
	(*ps)[*n].value = value;
	(*n)++;
}

/* Splits "base*N" / "base*N*" / "base*": base length, section (-1 if
 * none), extended.  False for a plain name. */
static bool split_2231(const char *name, size_t *base_len, long *section, bool *ext)
{
	const char *star = strchr(name, '*');
	if (star == NULL || star == name)
		return false;
	*base_len = (size_t)(star - name);
	const char *p = star + 1;
	if (*p == '\0') {
		*section = -1;
		*ext = true;
		return true;
	}
	if (!isdigit((unsigned char)*p) || (*p == '0' && isdigit((unsigned char)p[1])))
		return false;
	long v = 0;
	while (isdigit((unsigned char)*p) && v < 100000)
		v = v * 10 + (*p++ - '0');
	if (*p == '*' && p[1] == '\0')
		*ext = true;
	else if (*p == '\0')
		*ext = false;
	else
		return false;
	*section = v;
	return true;
}

/* Appends a plain piece to an extended value, %-encoding what RFC 2231's
 * attribute-char excludes. */
static void append_pct(struct buf *out, const char *s)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c > ' ' && c < 0x7f && !is_tspecial(c) && c != '*' && c != '\'' && c != '%')
			buf_append_char(out, (char)c);
		else
			buf_printf(out, "%%%02X", c);
	}
}

/* Joins RFC 2231 continuations: name*0, name*1*, ... become one parameter
 * at the place of the first piece (see mime.h).  Each name is split once;
 * the work is quadratic in the (bounded) number of parameters. */
static void join_params(struct rawparam *raw, size_t n_raw, struct mparam **ps, size_t *n)
{
	struct split {
		bool is_2231;
		size_t base_len;
		long section;
		bool ext;
		bool used;
	} *sp = xcalloc(n_raw ? n_raw : 1, sizeof(*sp));
	for (size_t i = 0; i < n_raw; i++)
		sp[i].is_2231 = split_2231(raw[i].name, &sp[i].base_len, &sp[i].section, &sp[i].ext);
	for (size_t i = 0; i < n_raw; i++) {
		if (sp[i].used)
			continue;
		bool keep = !sp[i].is_2231 || sp[i].section < 0;
		if (!keep && sp[i].section > 0) {
			/* A later piece waits for its piece 0, wherever that is;
			 * without one it is kept as sent. */
			keep = true;
			for (size_t k = 0; k < n_raw && keep; k++)
				keep = !(sp[k].is_2231 && sp[k].section == 0 && sp[k].base_len == sp[i].base_len &&
					 strncmp(raw[k].name, raw[i].name, sp[i].base_len) == 0);
			if (!keep)
				continue;
		}
		if (keep) {
			/* A plain parameter, "name*" or a piece without piece 0. */
			sp[i].used = true;
			add_param(ps, n, xstrdup(raw[i].name), xstrdup(raw[i].value));
			continue;
		}
		/* Pieces 0, 1, 2 ... in order; the value is extended when any
		 * piece is.  Extended pieces are kept as sent (%XX), plain ones
		 * are %-encoded, and a plain piece 0 gets an empty
		 * charset'language' prefix (as Dovecot does). */
		size_t *order = xcalloc(n_raw, sizeof(*order));
		size_t n_order = 0;
		order[n_order++] = i;
		sp[i].used = true;
		bool ext = sp[i].ext;
		for (long want = 1; want < (long)n_raw; want++) {
			size_t found = SIZE_MAX;
			for (size_t k = 0; k < n_raw && found == SIZE_MAX; k++) {
				if (!sp[k].used && sp[k].is_2231 && sp[k].section == want &&
				    sp[k].base_len == sp[i].base_len &&
				    strncmp(raw[k].name, raw[i].name, sp[i].base_len) == 0)
					found = k;
			}
			if (found == SIZE_MAX)
				break;
			sp[found].used = true;
			ext = ext || sp[found].ext;
			order[n_order++] = found;
		}
		struct buf v = BUF_INIT;
		if (ext && !sp[i].ext)
			buf_append_str(&v, "''");
		for (size_t k = 0; k < n_order; k++) {
			if (ext && !sp[order[k]].ext)
				append_pct(&v, raw[order[k]].value);
			else
				buf_append_str(&v, raw[order[k]].value);
		}
		free(order);
		char *name = xasprintf("%.*s%s", (int)sp[i].base_len, raw[i].name, ext ? "*" : "");
		add_param(ps, n, name, v.data ? buf_steal(&v) : xstrdup(""));
	}
	/* Pieces after a gap in the numbering: kept as sent. */
	for (size_t i = 0; i < n_raw; i++) {
		if (!sp[i].used)
			add_param(ps, n, xstrdup(raw[i].name), xstrdup(raw[i].value));
	}
	free(sp);
}

/* Parses ";" attribute "=" value ... into *ps. */
static void parse_params(struct lex *x, struct mparam **ps, size_t *n)
{
	struct rawparam *raw = NULL;
	size_t n_raw = 0;
	/* Bounded: every pass consumes input or stops. */
	while (x->p < x->end && n_raw < MIME_MAX_PARAMS) {
		skip_cfws(x);
		if (x->p >= x->end)
			break;
		if (*x->p != ';') {
			/* Garbage: resynchronise at the next ';'. */
			const char *semi = memchr(x->p, ';', (size_t)(x->end - x->p));
			if (semi == NULL)
				break;
			x->p = semi;
		}
		x->p++;
		const char *an;
		size_t al;
		if (!lex_token(x, &an, &al))
			continue;
		skip_cfws(x);
		if (x->p >= x->end || *x->p != '=')
			continue;
		x->p++;
		struct buf v = BUF_INIT;
		if (!lex_value(x, &v)) {
			buf_free(&v);
			continue;
		}
		raw = xreallocarray(raw, n_raw + 1, sizeof(*raw));
		raw[n_raw].name = lower_dup(an, al);
		raw[n_raw].value = v.data ? buf_steal(&v) : xstrdup("");
		n_raw++;
	}
	join_params(raw, n_raw, ps, n);
	for (size_t i = 0; i < n_raw; i++) {
		free(raw[i].name);
		free(raw[i].value);
	}
	free(raw);
}

static const char *param_get(const struct mnode *n, const char *name)
{
	for (size_t i = 0; i < n->n_params; i++) {
		if (strcmp(n->params[i].name, name) == 0)
			return n->params[i].value;
	}
	return NULL;
}

static void set_default_type(struct mnode *n, bool digest_child)
{
	n->type = xstrdup(digest_child ? "message" : "text");
	n->subtype = xstrdup(digest_child ? "rfc822" : "plain");
	if (!digest_child)
		add_param(&n->params, &n->n_params, xstrdup("charset"), xstrdup("us-ascii"));
}

static void parse_content_type(struct mnode *n, bool digest_child)
{
	if (!n->has[MH_CONTENT_TYPE]) {
		set_default_type(n, digest_child);
		return;
	}
	struct lex x = { n->h[MH_CONTENT_TYPE].p, n->h[MH_CONTENT_TYPE].p + n->h[MH_CONTENT_TYPE].len };
	const char *t, *s;
	size_t tl, sl;
	if (!lex_token(&x, &t, &tl)) {
		set_default_type(n, false);
		return;
	}
	skip_cfws(&x);
	if (x.p >= x.end || *x.p != '/') {
		set_default_type(n, false);
		return;
	}
	x.p++;
	if (!lex_token(&x, &s, &sl)) {
		set_default_type(n, false);
		return;
	}
	n->type = lower_dup(t, tl);
	n->subtype = lower_dup(s, sl);
	parse_params(&x, &n->params, &n->n_params);
}

static void parse_disposition(struct mnode *n)
{
	if (!n->has[MH_CONTENT_DISPOSITION])
		return;
	struct lex x = { n->h[MH_CONTENT_DISPOSITION].p,
			 n->h[MH_CONTENT_DISPOSITION].p + n->h[MH_CONTENT_DISPOSITION].len };
	const char *t;
	size_t tl;
	if (!lex_token(&x, &t, &tl))
		return;
	n->disp = lower_dup(t, tl);
	parse_params(&x, &n->dparams, &n->n_dparams);
}

static void free_params(struct mparam *ps, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(ps[i].name);
		free(ps[i].value);
	}
	free(ps);
}

/* The Content-Transfer-Encoding token, lower case, or "7bit". */
static bool encoding_is_identity(const struct mnode *n)
{
	if (!n->has[MH_CONTENT_ENCODING])
		return true;
	struct lex x = { n->h[MH_CONTENT_ENCODING].p, n->h[MH_CONTENT_ENCODING].p + n->h[MH_CONTENT_ENCODING].len };
	const char *t;
	size_t tl;
	if (!lex_token(&x, &t, &tl))
		return true;
	return (tl == 4 && (strncasecmp(t, "7bit", 4) == 0 || strncasecmp(t, "8bit", 4) == 0)) ||
	       (tl == 6 && strncasecmp(t, "binary", 6) == 0);
}

/* ---- tree ---------------------------------------------------------------------- */

static uint64_t count_lines(const struct builder *b, uint64_t s, uint64_t e)
{
	const char *d = b->d;
	uint64_t n = 0;
	size_t mark = (size_t)s;
	for (size_t i = (size_t)s; i < (size_t)e;) {
		size_t step = (size_t)e - i < RELEASE_STEP ? (size_t)e - i : RELEASE_STEP;
		for (const char *p = d + i, *end = d + i + step; p < end;) {
			const char *nl = memchr(p, '\n', (size_t)(end - p));
			if (nl == NULL)
				break;
			n++;
			p = nl + 1;
		}
		i += step;
		release_behind(b, &mark, i);
	}
	if (e > s && d[e - 1] != '\n')
		n++;
	return n;
}

static void build_part(struct builder *b, struct mnode *n, unsigned depth, bool digest_child);

/* A line at i that is "--boundary" or "--boundary--", then optional
 * white space, then the line end.  0: no, 1: delimiter, 2: close. */
static int boundary_kind(const char *d, size_t i, size_t le, const char *bd, size_t bl)
{
	if (le - i < 2 + bl || d[i] != '-' || d[i + 1] != '-' || memcmp(d + i + 2, bd, bl) != 0)
		return 0;
	size_t j = i + 2 + bl;
	int kind = 1;
	if (j + 1 < le && d[j] == '-' && d[j + 1] == '-') {
		kind = 2;
		j += 2;
	}
	while (j < le && (d[j] == ' ' || d[j] == '\t' || d[j] == '\r' || d[j] == '\n'))
		j++;
	return j == le ? kind : 0;
}

static struct mnode *new_child(struct builder *b, struct mnode *parent, struct mnode **tail, uint64_t start,
			       uint64_t end)
{
	struct mnode *c = xcalloc(1, sizeof(*c));
	c->hs = start;
	c->be = end;
	if (*tail)
		(*tail)->next = c;
	else
		parent->children = c;
	*tail = c;
	b->n_parts++;
	return c;
}

static void build_multipart(struct builder *b, struct mnode *n, const char *bd, unsigned depth)
{
	const char *d = b->d;
	size_t bl = strlen(bd);
	bool digest = strcmp(n->subtype, "digest") == 0;
	struct mnode *tail = NULL;
	bool in_part = false;
	size_t part_start = 0;
	size_t i = (size_t)n->bs, end = (size_t)n->be;
	size_t mark = i;
	while (i < end) {
		release_behind(b, &mark, i);
		size_t le = line_end(d, i, end);
		int k = boundary_kind(d, i, le, bd, bl);
		if (k != 0) {
			if (in_part) {
				/* The line break before the boundary is the boundary's. */
				size_t pe = i;
				if (pe > part_start && d[pe - 1] == '\n') {
					pe--;
					if (pe > part_start && d[pe - 1] == '\r')
						pe--;
				}
				struct mnode *c = new_child(b, n, &tail, part_start, pe);
				build_part(b, c, depth + 1, digest);
			}
			in_part = false;
			if (k == 2 || b->n_parts >= MIME_MAX_PARTS)
				break;
			in_part = true;
			part_start = le;
		}
		i = le;
	}
	if (in_part) {
		struct mnode *c = new_child(b, n, &tail, part_start, end);
		build_part(b, c, depth + 1, digest);
	}
	if (n->children == NULL) {
		/* The grammar needs one part: an empty text/plain one. */
		struct mnode *c = new_child(b, n, &tail, n->bs, n->bs);
		c->bs = c->hs;
		set_default_type(c, false);
		c->kind = MK_TEXT;
	}
}

static void build_part(struct builder *b, struct mnode *n, unsigned depth, bool digest_child)
{
	scan_header(b, n, (size_t)n->be);
	parse_content_type(n, digest_child);
	parse_disposition(n);
	const char *bd = param_get(n, "boundary");
	bool deep = depth >= MIME_MAX_DEPTH || b->n_parts >= MIME_MAX_PARTS;
	if (strcmp(n->type, "multipart") == 0) {
		if (bd == NULL || bd[0] == '\0' || strlen(bd) > 200 || deep) {
			free(n->type);
			free(n->subtype);
			free_params(n->params, n->n_params);
			n->params = NULL;
			n->n_params = 0;
			set_default_type(n, false);
			n->kind = MK_TEXT;
		} else {
			n->kind = MK_MULTIPART;
			build_multipart(b, n, bd, depth);
			return;
		}
	} else if (strcmp(n->type, "message") == 0 && strcmp(n->subtype, "rfc822") == 0 &&
		   encoding_is_identity(n) && !deep) {
		n->kind = MK_MESSAGE;
		n->msg = xcalloc(1, sizeof(*n->msg));
		n->msg->hs = n->bs;
		n->msg->be = n->be;
		b->n_parts++;
		build_part(b, n->msg, depth + 1, false);
	} else {
		n->kind = strcmp(n->type, "text") == 0 ? MK_TEXT : MK_BASIC;
	}
	if (n->kind == MK_TEXT || n->kind == MK_MESSAGE)
		n->lines = count_lines(b, n->bs, n->be);
}

struct mnode *mime_tree_build(const char *data, size_t len, bool mapped)
{
	struct builder b = { data, len, 1, mapped };
	struct mnode *top = xcalloc(1, sizeof(*top));
	top->be = len;
	build_part(&b, top, 0, false);
	return top;
}

void mime_tree_free(struct mnode *n)
{
	/* Siblings iteratively, depth recursively (bounded by MIME_MAX_DEPTH). */
	while (n != NULL) {
		struct mnode *next = n->next;
		mime_tree_free(n->children);
		mime_tree_free(n->msg);
		free(n->type);
		free(n->subtype);
		free_params(n->params, n->n_params);
		free(n->disp);
		free_params(n->dparams, n->n_dparams);
		free(n);
		n = next;
	}
}

/* ---- entry points ---------------------------------------------------------------- */

static void parse(const char *data, size_t len, bool mapped, struct mime_summary *out)
{
	static const char empty[1] = "";
	if (data == NULL)
		data = empty;
	struct mnode *top = mime_tree_build(data, len, mapped);
	struct buf b = BUF_INIT;
	mime_write_envelope(&b, top);
	out->envelope = buf_steal(&b);
	mime_write_structure(&b, top, true);
	out->bodystructure = buf_steal(&b);
	mime_write_structure(&b, top, false);
	out->body = buf_steal(&b);
	mime_parts_encode(top, &b);
	out->parts_len = b.len;
	out->parts = (uint8_t *)buf_steal(&b);
	mime_tree_free(top);
}

void mime_parse_mem(const char *data, size_t len, struct mime_summary *out)
{
	parse(data, len, false, out);
}

enum status mime_parse_file(const char *path, uint64_t size, struct mime_summary *out, char **error_r)
{
	memset(out, 0, sizeof(*out));
	if (size > (uint64_t)SIZE_MAX / 2) {
		*error_r = xasprintf("%s: message too large to map", path);
		return ST_INVALID;
	}
	if (size == 0) {
		mime_parse_mem(NULL, 0, out);
		return ST_OK;
	}
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int err = errno;
		*error_r = xasprintf("cannot open %s: %s", path, strerror(err));
		return err == ENOENT ? ST_NOT_FOUND : ST_IO_ERROR;
	}
	enum status st = mime_parse_fd(fd, size, out, error_r);
	close(fd);
	return st;
}

enum status mime_parse_fd(int fd, uint64_t size, struct mime_summary *out, char **error_r)
{
	memset(out, 0, sizeof(*out));
	if (size > (uint64_t)SIZE_MAX / 2) {
		*error_r = xstrdup("message too large to map");
		return ST_INVALID;
	}
	if (size == 0) {
		mime_parse_mem(NULL, 0, out);
		return ST_OK;
	}
	struct stat sb;
	if (fstat(fd, &sb) != 0 || (uint64_t)sb.st_size < size) {
		*error_r = xasprintf("shorter than its %llu message bytes", (unsigned long long)size);
		return ST_IO_ERROR;
	}
	void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
	int err = errno;
	if (map == MAP_FAILED) {
		*error_r = xasprintf("cannot map: %s", strerror(err));
		return ST_IO_ERROR;
	}
	madvise(map, (size_t)size, MADV_SEQUENTIAL);
	parse(map, (size_t)size, true, out);
	munmap(map, (size_t)size);
	return ST_OK;
}

void mime_summary_free(struct mime_summary *m)
{
	if (m == NULL)
		return;
	xfree(&m->envelope);
	xfree(&m->bodystructure);
	xfree(&m->body);
	xfree(&m->parts);
	m->parts_len = 0;
}
