/*
 * imap_fetch.c - FETCH and UID FETCH: FLAGS, INTERNALDATE, RFC822.SIZE,
 * UID, RFC822, RFC822.HEADER, RFC822.TEXT, ENVELOPE, BODYSTRUCTURE, BODY,
 * BODY[section]<partial> and BODY.PEEK[...] for every RFC 3501 section:
 * "", HEADER, TEXT, HEADER.FIELDS, HEADER.FIELDS.NOT, each optionally
 * after a part number ("1.2.HEADER"), and <part>.MIME; the FAST, ALL and
 * FULL macros; BINARY[part]<partial>, BINARY.PEEK and BINARY.SIZE (RFC
 * 3516).
 *
 * BINARY: before a message's response starts, a store job (pool thread)
 * locates each BINARY item's part (part map), reads its
 * Content-Transfer-Encoding from its MIME header and makes one streaming
 * decoding pass (imap_binary.c) for the decoded size and whether a
 * literal8 is needed; items naming the same part share it.  An unknown
 * encoding ends the command with NO [UNKNOWN-CTE] before any of that
 * message is sent.  The data is then decoded again on the loop while it is
 * sent, FETCH_CHUNK at a time and only as fast as the client reads, so
 * memory stays bounded whatever the part's size.
 *
 * MIME data: ENVELOPE, BODYSTRUCTURE, BODY and part sections are served
 * from the blob's cached MIME row (store_mime_get on the loop thread's
 * handle: one indexed read per message).  A blob without a row (stored
 * before the cache existed) gets it computed by src/mime in a pool job,
 * FETCH_MIME_BATCH messages at a time, and stored for next time: the loop
 * thread never parses a message.  A part section is a byte range of the
 * blob taken from the part map; a part that does not exist, or HEADER/TEXT
 * of a part that is not message/rfc822, is answered NIL.
 *
 * Output is produced incrementally (imap_fetch_continue): a response is written
 * until the output buffer passes IMAP_OUTPUT_HIGH, then the session waits
 * for the socket to drain (write_cb calls imap_fetch_continue again).  Message
 * bodies are streamed from the blob in FETCH_CHUNK pieces, so memory per
 * session stays bounded whatever the messages' and the set's size.  Blob
 * reads cover [0, size) only: the trailer is never served.
 *
 * Expunges by other sessions: a message's blob is opened once, before any
 * of its response is written, and that descriptor serves all its items.
 * A message whose blob another session's EXPUNGE has already freed is left
 * out, and the command ends "NO [EXPUNGEISSUED]" (RFC 2180 4.1.2, RFC 5530)
 * as Dovecot does; the EXPUNGE itself reaches the client with its next sync.
 *
 * \Seen: a non-PEEK body item first sets \Seen on the messages that lack
 * it, with one store job; those messages' responses then include FLAGS
 * (and MODSEQ once CONDSTORE is on).
 *
 * CONDSTORE (RFC 7162): the MODSEQ item, and the (CHANGEDSINCE n) modifier
 * that keeps only messages whose mod-sequence is above n and implies
 * MODSEQ; either turns CONDSTORE on for the session.  With QRESYNC on,
 * UID FETCH ... (CHANGEDSINCE n VANISHED) first reports the set's UIDs
 * expunged after n as VANISHED (EARLIER).
 *
 * Threads: the loop thread (blob reads are page-cache reads of files that
 * are never written again; no fsync here).
 */
#include "imap_int.h"

#include "mime.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FETCH_CHUNK (64u * 1024u)
#define FETCH_MAX_FIELDS 64
#define FETCH_HEADER_MAX (1u << 20)   /* header bytes kept in memory for HEADER.FIELDS */
#define FETCH_MIME_BATCH 16           /* messages per MIME computing job */
#define FETCH_PART_HEADER_MAX (64u * 1024u) /* a part's MIME header read for its CTE */

enum fitem_kind { FI_FLAGS, FI_INTERNALDATE, FI_SIZE, FI_UID, FI_BODY, FI_ENVELOPE, FI_BODYSTRUCTURE,
		  FI_BODY_STRUCT, FI_MODSEQ, FI_BINARY, FI_BINARY_SIZE };
enum fsection { SEC_ALL, SEC_HEADER, SEC_TEXT, SEC_FIELDS, SEC_FIELDS_NOT, SEC_MIME };

struct fitem {
	enum fitem_kind kind;
	enum fsection section;
	char *part;                  /* "1.2" or NULL for the whole message */
	bool peek;
	char *name;                  /* response name, e.g. "BODY[TEXT]" or "RFC822" */
	bool partial;
	uint64_t p_off, p_len;
	char **fields;               /* HEADER.FIELDS names */
	size_t n_fields;
	size_t same;                 /* BINARY: first item naming the same part */
};

/* BINARY items of the current message, worked out before its response
 * starts (an unknown encoding must fail the command before any of it). */
struct bin_prep {
	bool nil;                    /* no such part */
	enum imap_cte cte;
	uint64_t start, len;         /* the raw (encoded) bytes in the blob */
	uint64_t dsize;              /* decoded size */
	bool has_nul;                /* the decoded data needs literal8 */
};

struct fmsg {
	uint32_t uid;
	size_t seq;
	uint64_t size;
	int64_t received;
	uint64_t modseq;
	struct msgid id;
	bool flags_changed;          /* \Seen set by this FETCH */
	bool loaded;
	bool mime_ready;             /* mime holds the blob's cached row */
	bool gone;                   /* its blob was freed by another session's expunge */
	struct store_mime mime;
};

struct imap_fetch {
	struct fitem *items;
	size_t n_items;
	bool uid_cmd;
	bool set_seen;
	bool want_modseq;            /* MODSEQ item or CHANGEDSINCE */
	struct fmsg *msgs;
	size_t n_msgs;
	size_t pos;                  /* current message */
	size_t item;                 /* next item of it */
	bool started;                /* "* n FETCH (" written */
	bool need_space;             /* an item was written after "(" */
	int fd;                      /* streaming a body range, or -1 */
	int msg_fd;                  /* the current message's blob, or -1 */
	uint64_t s_off, s_left;
	bool failed;                 /* a blob could not be read */
	bool need_body;              /* some item reads the blob */
	bool expunge_issued;         /* messages skipped: expunged by another session */
	bool need_mime;              /* some item needs the MIME row */
	bool job_pending;            /* a MIME job runs: produce nothing */
	bool need_binary;            /* some item is BINARY or BINARY.SIZE */
	bool unknown_cte;            /* a part's encoding cannot be decoded */
	bool bin_ready;              /* prep holds the current message's scans */
	struct bin_prep *prep;       /* per item, for the current message */
	bool decoding;               /* streaming f->fd through f->dec */
	struct imap_decoder dec;
	uint64_t d_skip, d_left;     /* decoded bytes to drop (partial), to send */
	struct buf d_buf;            /* decoded bytes not yet sent */
	size_t d_pos;
};

static void fitem_free(struct fitem *it)
{
	free(it->name);
	free(it->part);
	for (size_t i = 0; i < it->n_fields; i++)
		free(it->fields[i]);
	free(it->fields);
}

void imap_fetch_free(struct imap_fetch **fp)
{
	struct imap_fetch *f = *fp;
	if (f == NULL)
		return;
	for (size_t i = 0; i < f->n_items; i++)
		fitem_free(&f->items[i]);
	free(f->items);
	for (size_t i = 0; i < f->n_msgs; i++)
		store_mime_free(&f->msgs[i].mime);
	free(f->msgs);
	if (f->fd >= 0)
		close(f->fd);
	if (f->msg_fd >= 0)
		close(f->msg_fd);
	free(f->prep);
	buf_free(&f->d_buf);
	free(f);
	*fp = NULL;
}

/* ---- item parsing ------------------------------------------------------------------- */

static struct fitem *add_item(struct imap_fetch *f, enum fitem_kind kind)
{
	f->items = xreallocarray(f->items, f->n_items + 1, sizeof(*f->items));
	struct fitem *it = &f->items[f->n_items++];
	memset(it, 0, sizeof(*it));
	it->kind = kind;
	return it;
}

/* Splits "(From To)" into field names (atoms or quoted, space separated). */
static bool parse_fields(const char *p, const char *end, struct fitem *it)
{
	while (p < end && *p == ' ')
		p++;
	if (p >= end || *p != '(' || end[-1] != ')')
		return false;
	p++;
	end--;
	while (p < end) {
		const char *start = p;
		if (*p == '"') {
			start = ++p;
			while (p < end && *p != '"')
				p++;
			if (p >= end)
				return false;
		} else {
			while (p < end && *p != ' ')
				p++;
		}
		size_t len = (size_t)(p - start);
		if (*p == '"')
			p++;
		if (len == 0 || len > 128 || it->n_fields == FETCH_MAX_FIELDS)
			return false;
		for (size_t i = 0; i < len; i++) {
			unsigned char c = (unsigned char)start[i];
			if (c <= 0x20 || c >= 0x7f || c == ':')
				return false;
		}
		it->fields = xreallocarray(it->fields, it->n_fields + 1, sizeof(*it->fields));
		it->fields[it->n_fields++] = xstrndup(start, len);
		if (p < end && *p != ' ')
			return false;
		while (p < end && *p == ' ')
			p++;
	}
	return it->n_fields > 0;
}

/* The numeric part of a section ("1.2."): its length in *part_len (0 if
 * none); *rest_r points past it and its final dot.  False when malformed. */
static bool parse_section_part(const char *sec, const char *end, size_t *part_len, const char **rest_r)
{
	const char *p = sec;
	*part_len = 0;
	/* Bounded: each pass consumes a number and a dot, or stops. */
	while (p < end && *p >= '0' && *p <= '9') {
		const char *num = p;
		if (*p == '0')
			return false;                /* nz-number */
		while (p < end && *p >= '0' && *p <= '9')
			p++;
		if (p - num > 9)
			return false;
		*part_len = (size_t)(p - sec);
		if (p == end)
			break;
		if (*p != '.' || p + 1 == end)
			return false;
		p++;
	}
	*rest_r = p;
	return *part_len <= MIME_SECTION_MAX;
}

/* "<offset.length>" after a section; *tail points past "]". */
static bool parse_partial(const char *tail, struct fitem *it, const char **why_r)
{
	if (*tail == '\0')
		return true;
	if (*tail != '<') {
		*why_r = "Invalid FETCH item";
		return false;
	}
	char *e1, *e2;
	errno = 0;
	unsigned long long o = strtoull(tail + 1, &e1, 10);
	if (e1 == tail + 1 || *e1 != '.' || errno != 0) {
		*why_r = "Invalid partial";
		return false;
	}
	unsigned long long n = strtoull(e1 + 1, &e2, 10);
	if (e2 == e1 + 1 || *e2 != '>' || e2[1] != '\0' || errno != 0 || n == 0 || tail[1] == '-' ||
	    e1[1] == '-') {
		*why_r = "Invalid partial";
		return false;
	}
	it->partial = true;
	it->p_off = o;
	it->p_len = n;
	return true;
}

/* BODY[...]<o.n> / BODY.PEEK[...]<o.n>; *why_r set on failure. */
static bool parse_body(struct imap_fetch *f, const char *atom, bool peek, const char **why_r)
{
	const char *lb = strchr(atom, '[');
	const char *rb = strrchr(atom, ']');
	if (lb == NULL || rb == NULL || rb < lb) {
		*why_r = "Invalid BODY item";
		return false;
	}
	struct fitem *it = add_item(f, FI_BODY);
	it->peek = peek;
	const char *sec = lb + 1;
	size_t sec_len = (size_t)(rb - sec);
	size_t part_len;
	const char *rest;
	if (!parse_section_part(sec, rb, &part_len, &rest)) {
		*why_r = "Invalid section part number";
		return false;
	}
	if (part_len > 0) {
		it->part = xstrndup(sec, part_len);
		f->need_mime = true;
	}
	size_t rest_len = (size_t)(rb - rest);
	if (rest_len == 0)
		it->section = SEC_ALL;
	else if (rest_len == 4 && part_len > 0 && strncasecmp(rest, "MIME", 4) == 0)
		it->section = SEC_MIME;
	else if (rest_len == 6 && strncasecmp(rest, "HEADER", 6) == 0)
		it->section = SEC_HEADER;
	else if (rest_len == 4 && strncasecmp(rest, "TEXT", 4) == 0)
		it->section = SEC_TEXT;
	else if (rest_len > 18 && strncasecmp(rest, "HEADER.FIELDS.NOT ", 18) == 0) {
		it->section = SEC_FIELDS_NOT;
		if (!parse_fields(rest + 17, rb, it)) {
			*why_r = "Invalid HEADER.FIELDS.NOT list";
			return false;
		}
	} else if (rest_len > 14 && strncasecmp(rest, "HEADER.FIELDS ", 14) == 0) {
		it->section = SEC_FIELDS;
		if (!parse_fields(rest + 13, rb, it)) {
			*why_r = "Invalid HEADER.FIELDS list";
			return false;
		}
	} else {
		*why_r = "Invalid section";
		return false;
	}
	if (!parse_partial(rb + 1, it, why_r))
		return false;
	/* The response names the section without PEEK and without the
	 * partial's length: BODY[HEADER]<0>. */
	it->name = xasprintf("BODY[%.*s]", (int)sec_len, sec);
	return true;
}

/* BINARY[part]<o.n>, BINARY.PEEK[part]<o.n>, BINARY.SIZE[part] (RFC 3516):
 * the section is a part number or empty, nothing else. */
static bool parse_binary(struct imap_fetch *f, const char *atom, enum fitem_kind kind, bool peek,
			 const char **why_r)
{
	const char *lb = strchr(atom, '[');
	const char *rb = lb ? strchr(lb, ']') : NULL;
	size_t part_len;
	const char *rest;
	if (lb == NULL || rb == NULL || !parse_section_part(lb + 1, rb, &part_len, &rest) || rest != rb) {
		*why_r = "Invalid BINARY section";
		return false;
	}
	struct fitem *it = add_item(f, kind);
	it->peek = peek || kind == FI_BINARY_SIZE;
	if (part_len > 0) {
		it->part = xstrndup(lb + 1, part_len);
		f->need_mime = true;
	}
	if (kind == FI_BINARY_SIZE && rb[1] != '\0') {
		*why_r = "BINARY.SIZE takes no partial";
		return false;
	}
	if (!parse_partial(rb + 1, it, why_r))
		return false;
	it->name = xasprintf("%s[%.*s]", kind == FI_BINARY ? "BINARY" : "BINARY.SIZE", (int)part_len, lb + 1);
	f->need_binary = true;
	return true;
}

static bool parse_item(struct imap_fetch *f, const struct imap_arg *a, const char **why_r)
{
	if (a->type != IMAP_ARG_ATOM) {
		*why_r = "Invalid FETCH item";
		return false;
	}
	const char *s = a->str;
	struct fitem *it;
	if (str_ieq(s, "FLAGS")) {
		add_item(f, FI_FLAGS);
	} else if (str_ieq(s, "INTERNALDATE")) {
		add_item(f, FI_INTERNALDATE);
	} else if (str_ieq(s, "RFC822.SIZE")) {
		add_item(f, FI_SIZE);
	} else if (str_ieq(s, "UID")) {
		add_item(f, FI_UID);
	} else if (str_ieq(s, "MODSEQ")) {
		if (!f->want_modseq)
			add_item(f, FI_MODSEQ);
		f->want_modseq = true;
	} else if (str_ieq(s, "RFC822") || str_ieq(s, "RFC822.HEADER") || str_ieq(s, "RFC822.TEXT")) {
		it = add_item(f, FI_BODY);
		it->section = str_ieq(s, "RFC822") ? SEC_ALL : str_ieq(s, "RFC822.HEADER") ? SEC_HEADER : SEC_TEXT;
		it->peek = it->section == SEC_HEADER;
		it->name = xstrdup(it->section == SEC_ALL ? "RFC822" : it->section == SEC_HEADER ? "RFC822.HEADER"
											 : "RFC822.TEXT");
	} else if (str_istarts(s, "BINARY.PEEK[")) {
		return parse_binary(f, s, FI_BINARY, true, why_r);
	} else if (str_istarts(s, "BINARY.SIZE[")) {
		return parse_binary(f, s, FI_BINARY_SIZE, true, why_r);
	} else if (str_istarts(s, "BINARY[")) {
		return parse_binary(f, s, FI_BINARY, false, why_r);
	} else if (str_istarts(s, "BODY.PEEK[")) {
		return parse_body(f, s, true, why_r);
	} else if (str_istarts(s, "BODY[")) {
		return parse_body(f, s, false, why_r);
	} else if (str_ieq(s, "ENVELOPE")) {
		add_item(f, FI_ENVELOPE);
		f->need_mime = true;
	} else if (str_ieq(s, "BODYSTRUCTURE")) {
		add_item(f, FI_BODYSTRUCTURE);
		f->need_mime = true;
	} else if (str_ieq(s, "BODY")) {
		add_item(f, FI_BODY_STRUCT);
		f->need_mime = true;
	} else {
		*why_r = "Unknown FETCH item";
		return false;
	}
	return true;
}

/* BINARY items naming the same part share one scan per message (a
 * hostile list of thousands of BINARY.SIZE[1] costs one).  Once per
 * command. */
static void binary_link(struct imap_fetch *f)
{
	for (size_t i = 0; i < f->n_items; i++) {
		struct fitem *it = &f->items[i];
		it->same = i;
		if (it->kind != FI_BINARY && it->kind != FI_BINARY_SIZE)
			continue;
		for (size_t k = 0; k < i; k++) {
			const struct fitem *o = &f->items[k];
			if ((o->kind == FI_BINARY || o->kind == FI_BINARY_SIZE) && o->same == k &&
			    (it->part == NULL ? o->part == NULL : o->part != NULL && strcmp(it->part, o->part) == 0)) {
				it->same = k;
				break;
			}
		}
	}
}

static bool parse_items(struct imap_fetch *f, const struct imap_arg *a, const char **why_r)
{
	/* The macros stand alone, never inside a list (RFC 3501 6.4.5). */
	if (a->type == IMAP_ARG_ATOM &&
	    (str_ieq(a->str, "FAST") || str_ieq(a->str, "ALL") || str_ieq(a->str, "FULL"))) {
		add_item(f, FI_FLAGS);
		add_item(f, FI_INTERNALDATE);
		add_item(f, FI_SIZE);
		if (!str_ieq(a->str, "FAST")) {
			add_item(f, FI_ENVELOPE);
			f->need_mime = true;
		}
		if (str_ieq(a->str, "FULL"))
			add_item(f, FI_BODY_STRUCT);
		return true;
	}
	if (a->type != IMAP_ARG_LIST)
		return parse_item(f, a, why_r);
	if (a->n == 0) {
		*why_r = "Empty FETCH item list";
		return false;
	}
	for (size_t i = 0; i < a->n; i++) {
		if (!parse_item(f, &a->list[i], why_r))
			return false;
	}
	if (f->need_binary)
		binary_link(f);
	return true;
}

/* ---- blob reading ---------------------------------------------------------------------- */

static bool blob_pread(int fd, const char *path, uint64_t off, uint64_t len, struct buf *out)
{
	buf_reserve(out, (size_t)len);
	uint64_t done = 0;
	while (done < len) {
		ssize_t n = pread(fd, out->data + out->len, (size_t)(len - done), (off_t)(off + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			log_error("imap: cannot read %s: %s", path, n < 0 ? strerror(errno) : "short file");
			return false;
		}
		out->len += (size_t)n;
		done += (uint64_t)n;
	}
	out->data[out->len] = '\0';
	return true;
}

bool imap_blob_read(const char *path, uint64_t off, uint64_t len, struct buf *out)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		log_error("imap: cannot open %s: %s", path, strerror(errno));
		return false;
	}
	bool ok = blob_pread(fd, path, off, len, out);
	close(fd);
	return ok;
}

/* Length of the header including its blank line (the whole message when
 * there is no body).  Reads in chunks up to the blank line. */
static bool header_length(int fd, uint64_t size, uint64_t *len_r)
{
	char chunk[8192 + 4];
	uint64_t off = 0;
	size_t carry = 0; /* last bytes of the previous chunk */
	/* An empty header: the message starts with its blank line. */
	char first[2];
	ssize_t got = size >= 1 ? pread(fd, first, size >= 2 ? 2 : 1, 0) : 0;
	if (got >= 1 && first[0] == '\n') {
		*len_r = 1;
		return true;
	}
	if (got == 2 && first[0] == '\r' && first[1] == '\n') {
		*len_r = 2;
		return true;
	}
	while (off < size) {
		size_t want = size - off < 8192 ? (size_t)(size - off) : 8192;
		ssize_t n = pread(fd, chunk + carry, want, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return false;
		size_t total = carry + (size_t)n;
		for (size_t i = 0; i < total; i++) {
			if (chunk[i] != '\n')
				continue;
			if (i + 1 < total && chunk[i + 1] == '\n') {
				*len_r = off - carry + i + 2;
				return true;
			}
			if (i + 2 < total && chunk[i + 1] == '\r' && chunk[i + 2] == '\n') {
				*len_r = off - carry + i + 3;
				return true;
			}
		}
		off += (uint64_t)n;
		carry = total < 2 ? total : 2;
		memmove(chunk, chunk + total - carry, carry);
	}
	*len_r = size;
	return true;
}

/* Keeps (or drops, `not`) the header fields named in it->fields. */
static void filter_fields(const struct fitem *it, const char *hdr, size_t len, struct buf *out)
{
	size_t i = 0;
	bool keep = false;
	while (i < len) {
		const char *line = hdr + i;
		const char *nl = memchr(line, '\n', len - i);
		size_t ll = nl ? (size_t)(nl - line) + 1 : len - i;
		if (ll <= 2 && (line[0] == '\n' || (line[0] == '\r' && ll == 2)))
			break; /* the blank line */
		if (line[0] != ' ' && line[0] != '\t') {
			const char *colon = memchr(line, ':', ll);
			bool named = false;
			if (colon != NULL) {
				size_t nlen = (size_t)(colon - line);
				while (nlen > 0 && (line[nlen - 1] == ' ' || line[nlen - 1] == '\t'))
					nlen--;
				for (size_t k = 0; k < it->n_fields && !named; k++)
					named = strlen(it->fields[k]) == nlen &&
						strncasecmp(it->fields[k], line, nlen) == 0;
			}
			keep = it->section == SEC_FIELDS ? named : !named;
		}
		if (keep)
			buf_append(out, line, ll);
		i += ll;
	}
	buf_append(out, "\r\n", 2);
}

/* ---- output ---------------------------------------------------------------------------- */

void imap_date_format(int64_t t, char out[32])
{
	static const char *const mon[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
					   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	time_t tt = (time_t)t;
	struct tm tm;
	gmtime_r(&tt, &tm);
	snprintf(out, 32, "%02d-%s-%04d %02d:%02d:%02d +0000", tm.tm_mday, mon[tm.tm_mon], tm.tm_year + 1900,
		 tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* The byte ranges an item names: the content [start, start+len), or for
 * HEADER.FIELDS(.NOT) the header [start, start+len) to filter.  False when
 * the section does not exist (NIL). */
static bool part_range(const struct fitem *it, const struct fmsg *m, uint64_t *start, uint64_t *len)
{
	struct mime_part mp;
	if (!mime_part_find(m->mime.parts, m->mime.parts_len, it->part, &mp) || mp.body_end > m->size ||
	    mp.header_start > mp.body_start || mp.body_start > mp.body_end)
		return false;
	switch (it->section) {
	case SEC_ALL:
		*start = mp.body_start;
		*len = mp.body_end - mp.body_start;
		return true;
	case SEC_MIME:
		*start = mp.header_start;
		*len = mp.body_start - mp.header_start;
		return true;
	case SEC_HEADER:
	case SEC_FIELDS:
	case SEC_FIELDS_NOT:
		*start = mp.body_start;
		*len = mp.text_start - mp.body_start;
		return mp.is_message;
	case SEC_TEXT:
		*start = mp.text_start;
		*len = mp.body_end - mp.text_start;
		return mp.is_message;
	}
	return false;
}

/* Writes one body item; may leave f->fd set to stream the literal. */
static bool emit_body(struct imap_session *s, struct imap_fetch *f, const struct fitem *it,
		      const struct fmsg *m, struct buf *b)
{
	char path[PATH_MAX];
	store_blob_path(s->set->store_blob_dir, &m->id, path, sizeof(path)); /* for the log */
	uint64_t start = 0, len = m->size;
	if (it->part != NULL && !part_range(it, m, &start, &len)) {
		if (it->partial)
			buf_printf(b, "%s<%llu> NIL", it->name, (unsigned long long)it->p_off);
		else
			buf_printf(b, "%s NIL", it->name);
		return true;
	}
	int fd = f->msg_fd >= 0 ? fcntl(f->msg_fd, F_DUPFD_CLOEXEC, 0) : -1;
	if (fd < 0) {
		log_error("imap: cannot open %s: %s", path, strerror(errno));
		return false;
	}
	if (it->part != NULL || it->section == SEC_ALL || it->section == SEC_TEXT)
		store_access_note(&m->id); /* a body read (headers alone are not) */
	struct buf mem = BUF_INIT;
	bool in_memory = false;
	if (it->part == NULL && it->section != SEC_ALL) {
		uint64_t hdr = 0;
		if (!header_length(fd, m->size, &hdr)) {
			close(fd);
			return false;
		}
		if (it->section == SEC_TEXT) {
			start = hdr;
			len = m->size - hdr;
		} else {
			len = hdr;
		}
	}
	if (it->section == SEC_FIELDS || it->section == SEC_FIELDS_NOT) {
		struct buf h = BUF_INIT;
		uint64_t hl = len < FETCH_HEADER_MAX ? len : FETCH_HEADER_MAX;
		if (!blob_pread(fd, path, start, hl, &h)) {
			buf_free(&h);
			close(fd);
			return false;
		}
		filter_fields(it, h.data ? h.data : "", h.len, &mem);
		buf_free(&h);
		in_memory = true;
		start = 0;
		len = mem.len;
	}
	uint64_t off = 0;
	if (it->partial) {
		off = it->p_off < len ? it->p_off : len;
		uint64_t rest = len - off;
		len = it->p_len < rest ? it->p_len : rest;
		buf_printf(b, "%s<%llu> ", it->name, (unsigned long long)it->p_off);
	} else {
		buf_printf(b, "%s ", it->name);
	}
	buf_printf(b, "{%llu}\r\n", (unsigned long long)len);
	if (in_memory) {
		buf_append(b, mem.data + off, (size_t)len);
		buf_free(&mem);
		close(fd);
		return true;
	}
	f->fd = fd;
	f->s_off = start + off;
	f->s_left = len;
	return true;
}

/* ---- BINARY (RFC 3516) ------------------------------------------------------------- */

/* One streaming pass over a part's encoded bytes: its decoded size and
 * whether it holds NUL (literal8 then).  Bounded memory: one chunk. */
static bool binary_scan(int fd, const char *path, struct bin_prep *p)
{
	char chunk[FETCH_CHUNK];
	struct buf out = BUF_INIT;
	struct imap_decoder d;
	imap_decoder_init(&d, p->cte);
	p->dsize = 0;
	p->has_nul = false;
	uint64_t off = p->start, left = p->len;
	while (left > 0) {
		size_t want = left < FETCH_CHUNK ? (size_t)left : FETCH_CHUNK;
		ssize_t n = pread(fd, chunk, want, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			log_error("imap: cannot read %s: %s", path, n < 0 ? strerror(errno) : "short file");
			buf_free(&out);
			return false;
		}
		buf_reset(&out);
		imap_decoder_feed(&d, chunk, (size_t)n, &out);
		p->dsize += out.len;
		p->has_nul = p->has_nul || (out.len > 0 && memchr(out.data, '\0', out.len) != NULL);
		off += (uint64_t)n;
		left -= (uint64_t)n;
	}
	buf_reset(&out);
	imap_decoder_finish(&d, &out);
	p->dsize += out.len;
	p->has_nul = p->has_nul || (out.len > 0 && memchr(out.data, '\0', out.len) != NULL);
	buf_free(&out);
	return true;
}

/* The part's raw range and encoding; nil when it does not exist. */
static bool binary_locate(int fd, const char *path, const struct fitem *it, const struct fmsg *m,
			  struct bin_prep *p)
{
	memset(p, 0, sizeof(*p));
	if (it->part == NULL) {
		/* BINARY[]: the whole message as it is (no encoding applies). */
		p->start = 0;
		p->len = m->size;
		return true;
	}
	struct mime_part mp;
	if (!mime_part_find(m->mime.parts, m->mime.parts_len, it->part, &mp) || mp.body_end > m->size ||
	    mp.header_start > mp.body_start || mp.body_start > mp.body_end) {
		p->nil = true;
		return true;
	}
	p->start = mp.body_start;
	p->len = mp.body_end - mp.body_start;
	struct buf h = BUF_INIT;
	uint64_t hl = mp.body_start - mp.header_start;
	if (!blob_pread(fd, path, mp.header_start, hl < FETCH_PART_HEADER_MAX ? hl : FETCH_PART_HEADER_MAX, &h)) {
		buf_free(&h);
		return false;
	}
	p->cte = imap_binary_cte(h.data ? h.data : "", h.len);
	buf_free(&h);
	return true;
}

/* Works out the BINARY items of message m into prep[] (n_items entries):
 * on a pool thread, reading the blob through fd.  *unknown_r when a part's
 * encoding cannot be decoded; false on a read error. */
static bool binary_compute(const struct fitem *items, size_t n_items, const struct fmsg *m, int fd,
			   const char *path, struct bin_prep *prep, bool *unknown_r)
{
	for (size_t i = 0; i < n_items; i++) {
		const struct fitem *it = &items[i];
		struct bin_prep *p = &prep[i];
		if (it->kind != FI_BINARY && it->kind != FI_BINARY_SIZE)
			continue;
		if (it->same != i) {
			*p = prep[it->same];   /* the part was worked out already */
			continue;
		}
		if (!binary_locate(fd, path, it, m, p))
			return false;
		if (!p->nil && p->cte == IMAP_CTE_UNKNOWN) {
			*unknown_r = true;
			return true;
		}
		if (!p->nil && !binary_scan(fd, path, p))
			return false;
	}
	return true;
}

/*
 * The scans run as a store job, one message at a time: decoding a 50 MB
 * base64 part takes a while, and the loop thread serves other sessions
 * meanwhile.  While the job runs the session waits (f->job_pending, input
 * paused), so the FETCH state it reads - items, the message's part map -
 * cannot change or be freed; it writes only its own prep array and fd.
 */
struct binary_job {
	struct imap_job j;
	const struct imap_fetch *f;     /* read-only while the job runs */
	size_t pos;                     /* the message, in f->msgs */
	int fd;                         /* a duplicate of its blob descriptor */
	char path[PATH_MAX];            /* for logs */
	struct bin_prep *prep;
	bool ok, unknown;
};

static void binary_job_run(struct imap_job *j, struct store *st)
{
	(void)st;
	struct binary_job *bj = (struct binary_job *)j;
	bj->ok = binary_compute(bj->f->items, bj->f->n_items, &bj->f->msgs[bj->pos], bj->fd, bj->path, bj->prep,
				&bj->unknown);
	j->status = ST_OK;
}

static void binary_job_done(struct imap_job *j)
{
	struct binary_job *bj = (struct binary_job *)j;
	struct imap_session *s = j->s;
	if (imap_session_job_finished(s)) {
		struct imap_fetch *f = s->fetch;
		if (f != NULL) {
			if (f != bj->f || f->pos != bj->pos)
				panic("imap: FETCH changed under a BINARY job");
			free(f->prep);
			f->prep = bj->prep;
			bj->prep = NULL;
			f->bin_ready = true;
			f->failed = f->failed || !bj->ok;
			f->unknown_cte = bj->unknown;
			f->job_pending = false;
			imap_fetch_continue(s);
		}
		imap_session_job_end(s);
	}
	close(bj->fd);
	free(bj->prep);
	free(j->error);
	free(bj);
}

/* Starts the BINARY scans of the current message (its blob is open). */
static void binary_submit(struct imap_session *s, struct imap_fetch *f, const struct fmsg *m)
{
	int fd = fcntl(f->msg_fd, F_DUPFD_CLOEXEC, 0);
	if (fd < 0) {
		log_error("imap: cannot duplicate a blob descriptor: %s", strerror(errno));
		f->failed = true;
		return;
	}
	struct binary_job *bj = xcalloc(1, sizeof(*bj));
	bj->f = f;
	bj->pos = f->pos;
	bj->fd = fd;
	store_blob_path(s->set->store_blob_dir, &m->id, bj->path, sizeof(bj->path));
	bj->prep = xcalloc(f->n_items, sizeof(*bj->prep));
	bj->j.run = binary_job_run;
	bj->j.done = binary_job_done;
	f->job_pending = true;
	imap_session_submit(s, &bj->j);
}

/* Writes one BINARY or BINARY.SIZE item; may leave f->fd set to stream. */
static bool emit_binary(struct imap_fetch *f, const struct fitem *it, const struct fmsg *m, struct buf *b)
{
	const struct bin_prep *p = &f->prep[it - f->items];
	if (it->kind == FI_BINARY_SIZE) {
		buf_printf(b, "%s %llu", it->name, (unsigned long long)(p->nil ? 0 : p->dsize));
		return true;
	}
	if (it->partial)
		buf_printf(b, "%s<%llu> ", it->name, (unsigned long long)it->p_off);
	else
		buf_printf(b, "%s ", it->name);
	if (p->nil) {
		buf_append_str(b, "NIL");
		return true;
	}
	uint64_t off = 0, len = p->dsize;
	if (it->partial) {
		off = it->p_off < len ? it->p_off : len;
		len = it->p_len < len - off ? it->p_len : len - off;
	}
	/* literal8 only when needed: clients parse a plain literal more easily. */
	buf_printf(b, "%s{%llu}\r\n", p->has_nul ? "~" : "", (unsigned long long)len);
	if (len == 0)
		return true;
	int fd = fcntl(f->msg_fd, F_DUPFD_CLOEXEC, 0);
	if (fd < 0) {
		log_error("imap: cannot duplicate a blob descriptor: %s", strerror(errno));
		return false;
	}
	if (it->part != NULL)
		store_access_note(&m->id); /* a body read */
	f->fd = fd;
	if (p->cte == IMAP_CTE_IDENTITY) {
		f->s_off = p->start + off;
		f->s_left = len;
		return true;
	}
	f->decoding = true;
	imap_decoder_init(&f->dec, p->cte);
	f->s_off = p->start;
	f->s_left = p->len;
	f->d_skip = off;
	f->d_left = len;
	buf_reset(&f->d_buf);
	f->d_pos = 0;
	return true;
}

/* Sends decoded bytes held in f->d_buf, dropping the partial's prefix. */
static void decoded_send(struct imap_session *s, struct imap_fetch *f)
{
	size_t avail = f->d_buf.len - f->d_pos;
	size_t skip = f->d_skip < avail ? (size_t)f->d_skip : avail;
	f->d_pos += skip;
	f->d_skip -= skip;
	avail -= skip;
	size_t n = f->d_left < avail ? (size_t)f->d_left : avail;
	imap_session_write(s, f->d_buf.data + f->d_pos, n);
	f->d_pos += n;
	f->d_left -= n;
	if (f->d_pos == f->d_buf.len) {
		buf_reset(&f->d_buf);
		f->d_pos = 0;
	}
}

/* Streams a decoded BINARY item; true when it is complete. */
static bool stream_decoded(struct imap_session *s, struct imap_fetch *f)
{
	char chunk[FETCH_CHUNK];
	/* Bounded: each pass reads a chunk or ends the raw input. */
	while (f->d_left > 0 && !imap_session_output_full(s)) {
		if (f->d_pos < f->d_buf.len) {
			decoded_send(s, f);
			continue;
		}
		if (f->s_left == 0) {
			imap_decoder_finish(&f->dec, &f->d_buf);
			decoded_send(s, f);
			if (f->d_left > 0) {
				/* Fewer bytes than the literal promised: the blob
				 * changed under us; the stream cannot be repaired. */
				log_error("imap: BINARY decoding came out short for %s", s->client);
				f->failed = true;
				return true;
			}
			break;
		}
		size_t want = f->s_left < FETCH_CHUNK ? (size_t)f->s_left : FETCH_CHUNK;
		ssize_t n = pread(f->fd, chunk, want, (off_t)f->s_off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			log_error("imap: blob read failed during FETCH for %s: %s", s->client,
				  n < 0 ? strerror(errno) : "short file");
			f->failed = true;
			return true;
		}
		f->s_off += (uint64_t)n;
		f->s_left -= (uint64_t)n;
		imap_decoder_feed(&f->dec, chunk, (size_t)n, &f->d_buf);
		decoded_send(s, f);
	}
	if (f->d_left > 0)
		return false;
	close(f->fd);
	f->fd = -1;
	f->decoding = false;
	buf_reset(&f->d_buf);
	f->d_pos = 0;
	return true;
}

/* Streams the current body range; true when it is complete. */
static bool stream_body(struct imap_session *s, struct imap_fetch *f)
{
	if (f->decoding)
		return stream_decoded(s, f);
	while (f->s_left > 0 && !imap_session_output_full(s)) {
		size_t want = f->s_left < FETCH_CHUNK ? (size_t)f->s_left : FETCH_CHUNK;
		if (s->bev == NULL || s->close == IC_NOW)
			return false;   /* the connection is going: nothing more is sent */
		ssize_t n = imap_session_write_pread(s, f->fd, f->s_off, want);
		if (n <= 0) {
			/* The literal length is promised: the stream cannot be
			 * repaired, so the connection must end. */
			log_error("imap: blob read failed during FETCH for %s: %s", s->client,
				  n < 0 ? strerror(errno) : "short file");
			f->failed = true;
			return true;
		}
		f->s_off += (uint64_t)n;
		f->s_left -= (uint64_t)n;
	}
	if (f->s_left > 0)
		return false;
	close(f->fd);
	f->fd = -1;
	return true;
}

static void emit_item(struct imap_session *s, struct imap_fetch *f, const struct fitem *it,
		      const struct fmsg *m, struct buf *b)
{
	char date[32];
	switch (it->kind) {
	case FI_FLAGS: {
		long at = -1;
		for (size_t lo = 0, hi = s->view->n; lo < hi;) {
			size_t mid = lo + (hi - lo) / 2;
			if (s->view->m[mid].uid < m->uid) {
				lo = mid + 1;
			} else {
				if (s->view->m[mid].uid == m->uid)
					at = (long)mid;
				hi = mid;
			}
		}
		buf_append_str(b, "FLAGS ");
		imap_flags_format(at >= 0 ? s->view->m[at].flags & ~VIEW_GONE : 0, at >= 0 ? s->view->m[at].kw : NULL,
				  b);
		break;
	}
	case FI_INTERNALDATE:
		imap_date_format(m->received, date);
		buf_printf(b, "INTERNALDATE \"%s\"", date);
		break;
	case FI_SIZE:
		buf_printf(b, "RFC822.SIZE %llu", (unsigned long long)m->size);
		break;
	case FI_UID:
		buf_printf(b, "UID %u", m->uid);
		break;
	case FI_MODSEQ:
		buf_printf(b, "MODSEQ (%llu)", (unsigned long long)m->modseq);
		break;
	case FI_BODY:
		if (!emit_body(s, f, it, m, b))
			f->failed = true;
		break;
	case FI_BINARY:
	case FI_BINARY_SIZE:
		if (!emit_binary(f, it, m, b))
			f->failed = true;
		break;
	case FI_ENVELOPE:
		buf_append_str(b, "ENVELOPE ");
		buf_append_str(b, m->mime.envelope);
		break;
	case FI_BODYSTRUCTURE:
		buf_append_str(b, "BODYSTRUCTURE ");
		buf_append_str(b, m->mime.bodystructure);
		break;
	case FI_BODY_STRUCT:
		buf_append_str(b, "BODY ");
		buf_append_str(b, m->mime.body);
		break;
	}
}

static void fetch_finish(struct imap_session *s)
{
	struct imap_fetch *f = s->fetch;
	bool failed = f->failed;
	bool uid_cmd = f->uid_cmd;
	bool expunge_issued = f->expunge_issued;
	bool unknown_cte = f->unknown_cte;
	imap_fetch_free(&s->fetch);
	imap_session_resume(s, IP_FETCH);
	if (failed) {
		imap_session_bye(s, "Internal error reading a message");
		return;
	}
	imap_mailbox_sync(s, uid_cmd);
	/* RFC 2180 4.1.2 and RFC 5530: what another session expunged is
	 * left out, and the client is told why. */
	if (unknown_cte)
		imap_session_tagged(s, "NO", "[UNKNOWN-CTE] Cannot decode a part's content-transfer-encoding");
	else if (expunge_issued)
		imap_session_tagged(s, "NO", "[EXPUNGEISSUED] Some of the requested messages no longer exist");
	else
		imap_session_tagged(s, "OK", "FETCH completed");
}

/* ---- MIME rows ------------------------------------------------------------------------ */

/* Computes the MIME rows of blobs that have none, on a pool thread, and
 * stores them in the index for the next FETCH. */
struct mime_job {
	struct imap_job j;
	const struct settings *set;  /* settings live until exit */
	size_t n;
	struct mime_job_msg {
		size_t idx;              /* in f->msgs */
		uint32_t uid;
		struct msgid id;
		uint64_t size;
		bool ok;
		bool gone;
		struct store_mime row;
	} m[FETCH_MIME_BATCH];
};

static void mime_job_run(struct imap_job *j, struct store *st)
{
	struct mime_job *mj = (struct mime_job *)j;
	j->status = ST_OK;
	for (size_t i = 0; i < mj->n; i++) {
		struct mime_job_msg *x = &mj->m[i];
		char path[PATH_MAX];
		store_blob_path(mj->set->store_blob_dir, &x->id, path, sizeof(path)); /* for the log */
		int fd = store_blob_open(mj->set, 0, &x->id, NULL); /* any tier; decompressed */
		if (fd < 0) {
			if (errno == ENOENT)
				x->gone = true;   /* expunged by another session */
			else
				log_error("imap: cannot open %s: %s", path, strerror(errno));
			continue;
		}
		struct mime_summary sum;
		char *err = NULL;
		enum status ps = mime_parse_fd(fd, x->size, &sum, &err);
		close(fd);
		if (ps != ST_OK) {
			log_error("imap: MIME structure of %s: %s", path, err);
			free(err);
			continue;
		}
		x->row = (struct store_mime){ sum.envelope, sum.bodystructure, sum.body, sum.parts, sum.parts_len };
		x->ok = true;
		/* Only a cache: a failure to store it is logged, not fatal. */
		if (store_mime_put(st, &x->id, &x->row, &err) != ST_OK) {
			log_warn("imap: caching the MIME structure of %s: %s", path, err);
			free(err);
		}
	}
}

static void mime_job_done(struct imap_job *j)
{
	struct mime_job *mj = (struct mime_job *)j;
	struct imap_session *s = j->s;
	if (imap_session_job_finished(s)) {
		struct imap_fetch *f = s->fetch;
		if (f != NULL) {
			for (size_t i = 0; i < mj->n; i++) {
				struct mime_job_msg *x = &mj->m[i];
				if (x->idx >= f->n_msgs || f->msgs[x->idx].uid != x->uid)
					panic("imap: FETCH messages changed under a MIME job");
				struct fmsg *m = &f->msgs[x->idx];
				if (x->gone) {
					m->gone = true;
					continue;
				}
				if (!x->ok) {
					f->failed = true;
					continue;
				}
				m->mime = x->row;
				m->mime_ready = true;
				memset(&x->row, 0, sizeof(x->row));
			}
			f->job_pending = false;
			imap_fetch_continue(s);
		}
		imap_session_job_end(s);
	}
	for (size_t i = 0; i < mj->n; i++)
		store_mime_free(&mj->m[i].row);
	free(j->error);
	free(mj);
}

/* Makes the current message's MIME row ready.  False when a job was
 * submitted (it also computes up to FETCH_MIME_BATCH - 1 following
 * messages without a row): imap_fetch_continue runs again when it ends.
 * At most FETCH_MIME_BATCH rows are held ahead of the output. */
static bool mime_ready(struct imap_session *s, struct imap_fetch *f)
{
	struct fmsg *cur = &f->msgs[f->pos];
	if (cur->mime_ready || cur->gone)
		return true;
	if (store_mime_get(s->w->reader, &cur->id, &cur->mime) == ST_OK) {
		cur->mime_ready = true;
		return true;
	}
	struct mime_job *mj = xcalloc(1, sizeof(*mj));
	mj->set = s->set;
	for (size_t i = f->pos; i < f->n_msgs && i < f->pos + FETCH_MIME_BATCH; i++) {
		struct fmsg *m = &f->msgs[i];
		if (m->mime_ready || m->gone)
			continue;
		if (i > f->pos && store_mime_get(s->w->reader, &m->id, &m->mime) == ST_OK) {
			m->mime_ready = true;
			continue;
		}
		struct mime_job_msg *x = &mj->m[mj->n++];
		x->idx = i;
		x->uid = m->uid;
		x->id = m->id;
		x->size = m->size;
	}
	mj->j.run = mime_job_run;
	mj->j.done = mime_job_done;
	f->job_pending = true;
	imap_session_submit(s, &mj->j);
	return false;
}

/* A blob on a compressed tier is opened (decompressed) on a store thread:
 * that takes CPU time in proportion to the message, never the loop's. */
struct open_job {
	struct imap_job j;
	const struct settings *set;  /* settings live until exit */
	struct msgid id;
	uint32_t uid;
	int fd;
	int err;
};

static void open_job_run(struct imap_job *j, struct store *st)
{
	(void)st;
	struct open_job *oj = (struct open_job *)j;
	oj->fd = store_blob_open(oj->set, 0, &oj->id, NULL);   /* any tier, moves included */
	oj->err = errno;
	j->status = ST_OK;
}

static void open_failed(struct imap_fetch *f, struct fmsg *m, const struct settings *set, int err)
{
	if (err == ENOENT) {
		m->gone = true;   /* expunged by another session meanwhile */
		return;
	}
	char path[PATH_MAX];
	store_blob_path(set->store_blob_dir, &m->id, path, sizeof(path));
	log_error("imap: cannot open %s: %s", path, strerror(err));
	f->failed = true;
}

static void open_job_done(struct imap_job *j)
{
	struct open_job *oj = (struct open_job *)j;
	struct imap_session *s = j->s;
	if (imap_session_job_finished(s)) {
		struct imap_fetch *f = s->fetch;
		if (f != NULL) {
			struct fmsg *m = &f->msgs[f->pos];
			if (m->uid != oj->uid)
				panic("imap: FETCH messages changed under an open job");
			if (oj->fd >= 0) {
				f->msg_fd = oj->fd;
				oj->fd = -1;
			} else {
				open_failed(f, m, s->set, oj->err);
			}
			f->job_pending = false;
			imap_fetch_continue(s);
		}
		imap_session_job_end(s);
	}
	if (oj->fd >= 0)
		close(oj->fd);
	free(j->error);
	free(oj);
}

enum msg_open { MO_OK, MO_SKIP, MO_WAIT };

/* Opens the message's blob once for all its body items, before anything
 * of its response is written: an open descriptor keeps the bytes readable
 * whatever another session expunges or the tier mover moves meanwhile.
 * MO_SKIP when the message cannot be sent: f->failed is set on a real
 * error, not when the blob is gone because another session expunged it.
 * MO_WAIT when a store thread opens it: imap_fetch_continue runs again. */
static enum msg_open message_open(struct imap_session *s, struct imap_fetch *f, struct fmsg *m)
{
	if (m->gone)
		return MO_SKIP;
	if (!f->need_body || f->msg_fd >= 0)
		return MO_OK;   /* nothing to open, or opened by a job */
	f->msg_fd = store_blob_open_nowait(s->set, 0, &m->id, NULL); /* any tier, moves included */
	if (f->msg_fd >= 0)
		return MO_OK;
	int err = errno;
	if (err == EWOULDBLOCK) {
		struct open_job *oj = xcalloc(1, sizeof(*oj));
		oj->set = s->set;
		oj->id = m->id;
		oj->uid = m->uid;
		oj->fd = -1;
		oj->j.run = open_job_run;
		oj->j.done = open_job_done;
		f->job_pending = true;
		imap_session_submit(s, &oj->j);
		return MO_WAIT;
	}
	open_failed(f, m, s->set, err);
	return MO_SKIP;
}

void imap_fetch_continue(struct imap_session *s)
{
	struct imap_fetch *f = s->fetch;
	if (f == NULL || f->job_pending)
		return;
	struct buf b = BUF_INIT;
	/* The batch's MIME rows come from one read transaction (store.h). */
	bool rtx = f->need_mime && store_read_begin(s->w->reader);
	/* Bounded: each pass writes output or advances item/message; it stops
	 * when the output buffer is full. */
	while (f != NULL && !imap_session_output_full(s) && s->close == IC_NONE) {
		if (f->fd >= 0) {
			if (!stream_body(s, f))
				break;
			if (f->failed)
				break;
			continue;
		}
		if (f->failed || f->pos == f->n_msgs)
			break;
		struct fmsg *m = &f->msgs[f->pos];
		if (!f->started && f->need_mime && !mime_ready(s, f))
			break;
		enum msg_open mo = f->started ? MO_OK : message_open(s, f, m);
		if (mo == MO_WAIT)
			break;
		if (mo == MO_SKIP) {
			if (f->failed)
				break;
			f->expunge_issued = true;   /* nothing of it is sent */
			store_mime_free(&m->mime);
			m->mime_ready = false;
			f->pos++;
			continue;
		}
		if (!f->started && f->need_binary && !f->bin_ready) {
			binary_submit(s, f, m);   /* imap_fetch_continue runs again when it ends */
			break;
		}
		if (!f->started && (f->failed || f->unknown_cte))
			break;   /* the command ends: nothing of this message is sent */
		buf_reset(&b);
		if (!f->started) {
			f->started = true;
			f->item = 0;
			f->need_space = false;
			buf_printf(&b, "* %zu FETCH (", m->seq);
			if (f->uid_cmd) {
				buf_printf(&b, "UID %u", m->uid);
				f->need_space = true;
			}
			if (m->flags_changed) {
				struct fitem flags_item = { .kind = FI_FLAGS };
				if (f->need_space)
					buf_append_char(&b, ' ');
				emit_item(s, f, &flags_item, m, &b);
				f->need_space = true;
				if (s->condstore && !f->want_modseq) {
					struct fitem modseq_item = { .kind = FI_MODSEQ };
					buf_append_char(&b, ' ');
					emit_item(s, f, &modseq_item, m, &b);
				}
			}
		}
		if (f->item < f->n_items) {
			const struct fitem *it = &f->items[f->item++];
			bool skip = (it->kind == FI_UID && f->uid_cmd) || (it->kind == FI_FLAGS && m->flags_changed);
			if (!skip) {
				if (f->need_space)
					buf_append_char(&b, ' ');
				emit_item(s, f, it, m, &b);
				f->need_space = true;
			}
			imap_session_write(s, b.data, b.len);
			continue;
		}
		buf_append_str(&b, ")\r\n");
		imap_session_write(s, b.data, b.len);
		f->started = false;
		f->bin_ready = false;
		if (f->msg_fd >= 0) {
			close(f->msg_fd);
			f->msg_fd = -1;
		}
		store_mime_free(&m->mime);
		m->mime_ready = false;
		f->pos++;
	}
	buf_free(&b);
	store_read_end(s->w->reader, rtx);
	if (f != NULL && !f->job_pending && (f->failed || f->unknown_cte || (f->pos == f->n_msgs && f->fd < 0)))
		fetch_finish(s);
}

/* ---- start ----------------------------------------------------------------------------- */

struct load_ctx {
	struct imap_fetch *f;
	size_t next;
};

static void load_cb(void *arg, const struct store_imap_msg *msg)
{
	struct load_ctx *c = arg;
	struct imap_fetch *f = c->f;
	while (c->next < f->n_msgs && f->msgs[c->next].uid < msg->uid)
		c->next++;
	if (c->next < f->n_msgs && f->msgs[c->next].uid == msg->uid) {
		struct fmsg *m = &f->msgs[c->next];
		m->size = msg->size;
		m->received = msg->received;
		m->modseq = msg->modseq;
		m->id = msg->id;
		m->loaded = true;
	}
}

/* Drops messages that are gone from the index since the view was built,
 * and with CHANGEDSINCE those not changed after it. */
static void drop_unloaded(struct imap_fetch *f, bool changedsince, uint64_t since)
{
	size_t k = 0;
	for (size_t i = 0; i < f->n_msgs; i++) {
		if (f->msgs[i].loaded && (!changedsince || f->msgs[i].modseq > since))
			f->msgs[k++] = f->msgs[i];
	}
	f->n_msgs = k;
}

struct seen_job {
	struct imap_job j;
	int64_t mailbox_id;
	uint32_t *uids;
	uint32_t *flags_out;
	uint64_t *modseqs_out;
	size_t n;
	uint64_t modseq;
};

static void seen_run(struct imap_job *j, struct store *st)
{
	struct seen_job *sj = (struct seen_job *)j;
	j->status = store_imap_set_flags_cond(st, sj->mailbox_id, sj->uids, sj->n, STORE_FLAGS_ADD,
					      MSG_FLAG_SEEN, NULL, NULL, sj->flags_out, NULL, sj->modseqs_out,
					      &sj->modseq, &j->error);
}

static void seen_done(struct imap_job *j)
{
	struct seen_job *sj = (struct seen_job *)j;
	struct imap_session *s = j->s;
	if (imap_session_job_finished(s)) {
		struct imap_fetch *f = s->fetch;
		if (j->status != ST_OK || f == NULL || s->view == NULL) {
			imap_fetch_free(&s->fetch);
			imap_session_resume(s, IP_FETCH);
			imap_command_reply_status(s, j->status, j->error ? j->error : "FETCH failed");
		} else {
			size_t k = 0;
			for (size_t i = 0; i < sj->n; i++) {
				if (sj->flags_out[i] == UINT32_MAX)
					continue;
				while (k < f->n_msgs && f->msgs[k].uid < sj->uids[i])
					k++;
				if (k < f->n_msgs && f->msgs[k].uid == sj->uids[i]) {
					f->msgs[k].flags_changed = true;
					f->msgs[k].modseq = sj->modseqs_out[i];
					struct view_msg *vm = &s->view->m[f->msgs[k].seq - 1];
					vm->flags = sj->flags_out[i] | (vm->flags & VIEW_BITS);
					vm->modseq = sj->modseqs_out[i];
				}
			}
			imap_fetch_continue(s);
		}
		imap_session_job_end(s);
	}
	free(j->error);
	free(sj->uids);
	free(sj->flags_out);
	free(sj->modseqs_out);
	free(sj);
}

/* The modifier list: CHANGEDSINCE n (required once), VANISHED. */
static bool fetch_modifiers(const struct imap_arg *a, bool *changedsince_r, uint64_t *since_r, bool *vanished_r)
{
	if (a->type != IMAP_ARG_LIST || a->n == 0)
		return false;
	for (size_t i = 0; i < a->n; i++) {
		const struct imap_arg *m = &a->list[i];
		if (imap_arg_is_atom(m, "CHANGEDSINCE") && !*changedsince_r && i + 1 < a->n &&
		    a->list[i + 1].type == IMAP_ARG_ATOM && imap_modseq_parse(a->list[i + 1].str, since_r)) {
			*changedsince_r = true;
			i++;
		} else if (imap_arg_is_atom(m, "VANISHED") && !*vanished_r) {
			*vanished_r = true;
		} else {
			return false;
		}
	}
	return *changedsince_r;
}

void imap_fetch_start(struct imap_session *s, struct imap_cmd *cmd)
{
	/* "FETCH set items (CHANGEDSINCE n [VANISHED])" (RFC 7162 3.1.4, 3.2.6). */
	uint64_t since = 0;
	bool changedsince = false, vanished = false;
	if ((cmd->n_args != 2 && cmd->n_args != 3) || cmd->args[0].type != IMAP_ARG_ATOM ||
	    (cmd->n_args == 3 && !fetch_modifiers(&cmd->args[2], &changedsince, &since, &vanished))) {
		imap_session_bad(s, cmd->tag, "FETCH takes a set, items and optional (CHANGEDSINCE n [VANISHED])");
		return;
	}
	if (vanished && (!cmd->uid || !changedsince || !s->qresync)) {
		imap_session_bad(s, cmd->tag, "VANISHED needs UID FETCH, CHANGEDSINCE and QRESYNC enabled");
		return;
	}
	struct imap_fetch *f = xcalloc(1, sizeof(*f));
	f->fd = -1;
	f->msg_fd = -1;
	f->uid_cmd = cmd->uid;
	const char *why = NULL;
	if (!parse_items(f, &cmd->args[1], &why)) {
		imap_fetch_free(&f);
		imap_session_bad(s, cmd->tag, "%s", why);
		return;
	}
	if (changedsince && !f->want_modseq) {
		add_item(f, FI_MODSEQ);
		f->want_modseq = true;
	}
	if (f->want_modseq)
		s->condstore = true;
	size_t *idx, n;
	const char *bad;
	if (imap_mailbox_resolve_set(s, cmd->args[0].str, cmd->uid, &idx, &n, &bad) != ST_OK) {
		imap_fetch_free(&f);
		imap_session_bad(s, cmd->tag, "%s", bad);
		return;
	}
	struct imap_view *v = s->view;
	f->msgs = xcalloc(n ? n : 1, sizeof(*f->msgs));
	for (size_t i = 0; i < n; i++) {
		if (v->m[idx[i]].flags & VIEW_GONE)
			continue;   /* expunged meanwhile: nothing left to send */
		f->msgs[f->n_msgs].uid = v->m[idx[i]].uid;
		f->msgs[f->n_msgs].seq = idx[i] + 1;
		f->n_msgs++;
	}
	free(idx);
	for (size_t i = 0; i < f->n_items; i++) {
		bool body = f->items[i].kind == FI_BODY || f->items[i].kind == FI_BINARY ||
			    f->items[i].kind == FI_BINARY_SIZE;
		if (body && !f->items[i].peek && !v->readonly)
			f->set_seen = true;
		if (body)
			f->need_body = true;
	}
	if (f->n_msgs > 0) {
		struct load_ctx c = { f, 0 };
		enum status st = store_imap_messages(s->w->reader, v->id, f->msgs[0].uid, load_cb, &c);
		if (st != ST_OK) {
			imap_fetch_free(&f);
			imap_command_reply_status(s, st, "Cannot read the mailbox");
			return;
		}
		drop_unloaded(f, changedsince, since);
	}
	if (vanished) {
		struct imap_seqset set;
		if (imap_seqset_parse(cmd->args[0].str, &set) == ST_OK) {   /* resolved above: valid */
			imap_mailbox_vanished_earlier(s, since, &set);
			imap_seqset_free(&set);
		}
	}
	s->fetch = f;
	imap_session_pause(s, IP_FETCH);
	size_t unseen = 0;
	for (size_t i = 0; f->set_seen && i < f->n_msgs; i++) {
		if (!(v->m[f->msgs[i].seq - 1].flags & MSG_FLAG_SEEN))
			unseen++;
	}
	if (unseen == 0) {
		imap_fetch_continue(s);
		return;
	}
	struct seen_job *sj = xcalloc(1, sizeof(*sj));
	sj->uids = xcalloc(unseen, sizeof(*sj->uids));
	sj->flags_out = xcalloc(unseen, sizeof(*sj->flags_out));
	sj->modseqs_out = xcalloc(unseen, sizeof(*sj->modseqs_out));
	for (size_t i = 0; i < f->n_msgs; i++) {
		if (!(v->m[f->msgs[i].seq - 1].flags & MSG_FLAG_SEEN))
			sj->uids[sj->n++] = f->msgs[i].uid;
	}
	sj->mailbox_id = v->id;
	sj->j.run = seen_run;
	sj->j.done = seen_done;
	imap_session_submit(s, &sj->j);
}
