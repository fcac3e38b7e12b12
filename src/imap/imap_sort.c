/*
 * imap_sort.c - SORT and UID SORT (RFC 5256 section 3 "SORT", with the
 * DISPLAYFROM and DISPLAYTO keys of RFC 5957), answered with plain
 * "* SORT n n ..." responses (no ESORT).
 *
 * Keys and what they compare (ties: the next key, finally the sequence
 * number; REVERSE reverses only the key after it):
 *   ARRIVAL      the internal date
 *   DATE         the Date: header as an instant (UTC), the internal date
 *                when it is missing or unparsable (RFC 5256 2.2)
 *   SIZE         RFC822.SIZE
 *   FROM, TO, CC the local part (addr-mailbox) of the first address
 *   DISPLAYFROM, DISPLAYTO  the RFC 2047-decoded display name of the first
 *                address, or its addr-spec when there is none (RFC 5957)
 *   SUBJECT      the base subject (RFC 5256 2.1)
 * Strings compare byte by byte as mime_sort_key makes them: case-folded,
 * accented Latin, Greek and Cyrillic letters decomposed (so "Emile" and
 * "\xC3\x89mile" sort together, before "F"), ASCII letters upper-cased as
 * i;ascii-casemap and i;unicode-casemap do.
 *
 * Speed: the program runs on a store thread (imap_search.c); for each
 * match only the header block is read (ARRIVAL and SIZE read nothing), the
 * keys are extracted once into a compact item, and one qsort orders the
 * items.  Memory: the items, about 40 bytes plus the key strings per match.
 *
 * Threads: parsing and the reply on the loop thread; hit/finish on the
 * store thread that runs the search job.
 */
#include "imap_int.h"

#include "mime.h"

#include <stdlib.h>
#include <string.h>

#define SORT_MAX_KEYS 16
#define SORT_STR_MAX 256        /* bytes of a key string compared */

enum sort_key { SK_ARRIVAL, SK_CC, SK_DATE, SK_FROM, SK_SIZE, SK_SUBJECT, SK_TO, SK_DISPLAYFROM, SK_DISPLAYTO };

static const struct {
	const char *name;
	enum sort_key key;
	bool header;                /* needs the header block */
} sort_names[] = {
	{ "ARRIVAL", SK_ARRIVAL, false }, { "CC", SK_CC, true },     { "DATE", SK_DATE, true },
	{ "FROM", SK_FROM, true },         { "SIZE", SK_SIZE, false }, { "SUBJECT", SK_SUBJECT, true },
	{ "TO", SK_TO, true },             { "DISPLAYFROM", SK_DISPLAYFROM, true },
	{ "DISPLAYTO", SK_DISPLAYTO, true },
};

struct sort_crit {
	enum sort_key key;
	bool reverse;
};

struct sort_item {
	uint32_t id;                /* what the reply names: UID or sequence number */
	uint32_t seq;
	int64_t num[3];             /* the numeric keys (ARRIVAL, DATE, SIZE), in criteria order;
				     * a fourth can only repeat one of them */
	char **str;                 /* one per string key, in criteria order */
};

struct sort_ctx {
	struct sort_crit crit[SORT_MAX_KEYS];
	size_t n_crit;
	size_t n_str;               /* string keys among the criteria */
	struct sort_item *items;
	size_t n, cap;
	bool uid;
};

static bool key_is_string(enum sort_key k)
{
	return k != SK_ARRIVAL && k != SK_DATE && k != SK_SIZE;
}

/* The raw value of the first field `name` of a header block, or NULL. */
static const char *header_field(const char *h, size_t len, const char *name, size_t *vlen)
{
	size_t pos = 0, nl = strlen(name);
	struct mime_field f;
	while (mime_header_next(h, len, &pos, &f)) {
		if (f.name_len == nl && strncasecmp(f.name, name, nl) == 0) {
			*vlen = f.value_len;
			return f.value;
		}
	}
	return NULL;
}

/* Sent date per RFC 5256 2.2: the Date: header, else the internal date. */
int64_t imap_sort_sent_date(const struct imap_search_hit *h)
{
	size_t vl;
	const char *v = header_field(h->header, h->header_len, "date", &vl);
	int64_t t;
	if (v != NULL && mime_date_parse(v, vl, &t, NULL))
		return t;
	return h->received;
}

static char *folded_dup(const char *s, size_t len)
{
	struct buf f = BUF_INIT;
	mime_sort_key(s, len < SORT_STR_MAX ? len : SORT_STR_MAX, &f);
	return buf_steal(&f);
}

static char *address_key(const struct imap_search_hit *h, const char *field, bool display)
{
	size_t vl;
	const char *v = header_field(h->header, h->header_len, field, &vl);
	struct mime_address a = { BUF_INIT, BUF_INIT, BUF_INIT };
	char *r;
	if (v == NULL || !mime_first_address(v, vl, &a)) {
		r = xstrdup("");
	} else if (!display) {
		r = folded_dup(a.mailbox.data, a.mailbox.len);
	} else if (a.display.len > 0) {
		r = folded_dup(a.display.data, a.display.len);
	} else {
		/* No display name: the addr-spec (RFC 5957 section 3). */
		struct buf spec = BUF_INIT;
		buf_append(&spec, a.mailbox.data, a.mailbox.len);
		if (a.host.len > 0) {
			buf_append_char(&spec, '@');
			buf_append(&spec, a.host.data, a.host.len);
		}
		r = folded_dup(spec.data, spec.len);
		buf_free(&spec);
	}
	buf_free(&a.display);
	buf_free(&a.mailbox);
	buf_free(&a.host);
	return r;
}

static char *string_key(const struct imap_search_hit *h, enum sort_key k)
{
	switch (k) {
	case SK_CC: return address_key(h, "cc", false);
	case SK_FROM: return address_key(h, "from", false);
	case SK_TO: return address_key(h, "to", false);
	case SK_DISPLAYFROM: return address_key(h, "from", true);
	case SK_DISPLAYTO: return address_key(h, "to", true);
	default: break;
	}
	size_t vl = 0;
	const char *v = header_field(h->header, h->header_len, "subject", &vl);
	struct buf base = BUF_INIT;
	mime_base_subject(v ? v : "", vl, &base, NULL);
	char *r = folded_dup(base.data, base.len);
	buf_free(&base);
	return r;
}

static int64_t number_key(const struct imap_search_hit *h, enum sort_key k)
{
	if (k == SK_ARRIVAL)
		return h->received;
	if (k == SK_SIZE)
		return (int64_t)h->size;
	return imap_sort_sent_date(h);
}

static void sort_hit(void *arg, const struct imap_search_hit *h)
{
	struct sort_ctx *c = arg;
	if (c->n == c->cap) {
		c->cap = c->cap ? c->cap * 2 : 256;
		c->items = xreallocarray(c->items, c->cap, sizeof(*c->items));
	}
	struct sort_item *it = &c->items[c->n++];
	memset(it, 0, sizeof(*it));
	it->id = c->uid ? h->uid : h->seq;
	it->seq = h->seq;
	if (c->n_str > 0)
		it->str = xcalloc(c->n_str, sizeof(*it->str));
	size_t si = 0, ni = 0;
	for (size_t i = 0; i < c->n_crit; i++) {
		enum sort_key k = c->crit[i].key;
		if (key_is_string(k)) {
			it->str[si++] = string_key(h, k);
		} else if (ni < ARRAY_LEN(it->num)) {
			it->num[ni++] = number_key(h, k);
		}
	}
}

/* qsort has no context argument: the criteria of the sort in progress,
 * one per thread (each store thread sorts one job at a time). */
static _Thread_local const struct sort_ctx *sorting;

static int cmp_i64(int64_t a, int64_t b)
{
	return a < b ? -1 : a > b;
}

static int item_cmp(const void *pa, const void *pb)
{
	const struct sort_item *a = pa, *b = pb;
	const struct sort_ctx *c = sorting;
	size_t si = 0, ni = 0;
	for (size_t i = 0; i < c->n_crit; i++) {
		int r;
		if (key_is_string(c->crit[i].key)) {
			r = strcmp(a->str[si], b->str[si]);
			si++;
		} else if (ni < ARRAY_LEN(a->num)) {
			r = cmp_i64(a->num[ni], b->num[ni]);
			ni++;
		} else {
			r = 0;   /* a repeated key: equal, or an earlier one decided */
		}
		r = r < 0 ? -1 : r > 0;
		if (r != 0)
			return c->crit[i].reverse ? -r : r;
	}
	return a->seq < b->seq ? -1 : a->seq > b->seq;
}

static void sort_finish(void *arg)
{
	struct sort_ctx *c = arg;
	if (c->n < 2)
		return;
	sorting = c;
	qsort(c->items, c->n, sizeof(*c->items), item_cmp);
	sorting = NULL;
}

static void sort_reply(struct imap_session *s, void *arg, bool uid)
{
	(void)uid;
	struct sort_ctx *c = arg;
	struct buf line = BUF_INIT;
	buf_append_str(&line, "SORT");
	for (size_t i = 0; i < c->n; i++)
		buf_printf(&line, " %u", c->items[i].id);
	imap_session_untagged(s, "%s", line.data);
	buf_free(&line);
}

static void sort_free(void *arg)
{
	struct sort_ctx *c = arg;
	for (size_t i = 0; i < c->n; i++) {
		for (size_t k = 0; k < c->n_str && c->items[i].str != NULL; k++)
			free(c->items[i].str[k]);
		free(c->items[i].str);
	}
	free(c->items);
	free(c);
}

/* "(REVERSE DATE SUBJECT ...)" into c; false with an error text. */
static bool parse_criteria(const struct imap_arg *l, struct sort_ctx *c, bool *header_r, const char **err)
{
	bool reverse = false;
	*header_r = false;
	for (size_t i = 0; i < l->n; i++) {
		const struct imap_arg *a = &l->list[i];
		if (imap_arg_is_atom(a, "REVERSE")) {
			if (reverse) {
				*err = "REVERSE twice";
				return false;
			}
			reverse = true;
			continue;
		}
		size_t k;
		for (k = 0; k < ARRAY_LEN(sort_names); k++) {
			if (imap_arg_is_atom(a, sort_names[k].name))
				break;
		}
		if (k == ARRAY_LEN(sort_names)) {
			*err = "Unknown sort criterion";
			return false;
		}
		if (c->n_crit == SORT_MAX_KEYS) {
			*err = "Too many sort criteria";
			return false;
		}
		c->crit[c->n_crit].key = sort_names[k].key;
		c->crit[c->n_crit].reverse = reverse;
		c->n_crit++;
		if (key_is_string(sort_names[k].key))
			c->n_str++;
		*header_r = *header_r || sort_names[k].header;
		reverse = false;
	}
	if (reverse || c->n_crit == 0) {
		*err = reverse ? "REVERSE needs a criterion after it" : "Empty sort criteria";
		return false;
	}
	return true;
}

void imap_sort_run(struct imap_session *s, struct imap_cmd *cmd)
{
	if (cmd->n_args < 3 || cmd->args[0].type != IMAP_ARG_LIST) {
		imap_session_bad(s, cmd->tag, "SORT needs (criteria) charset search-keys");
		return;
	}
	struct sort_ctx *c = xcalloc(1, sizeof(*c));
	c->uid = cmd->uid;
	const char *err = NULL;
	bool need_header;
	if (!parse_criteria(&cmd->args[0], c, &need_header, &err)) {
		sort_free(c);
		imap_session_bad(s, cmd->tag, "%s", err);
		return;
	}
	static const struct imap_search_user with_header = {
		"SORT", true, sort_hit, sort_finish, sort_reply, sort_free,
	};
	static const struct imap_search_user without_header = {
		"SORT", false, sort_hit, sort_finish, sort_reply, sort_free,
	};
	imap_search_submit_for(s, cmd, cmd->args + 1, cmd->n_args - 1, need_header ? &with_header : &without_header,
			       c);
}
