/*
 * fuzz_smtp_command.c - fuzz target for the SMTP command parsers
 * (src/smtp/smtp_parser.h): line framing, verb recognition, the MAIL FROM
 * and RCPT TO path and parameter grammars, and BDAT's argument.
 *
 * Input: the bytes a client sends in command state, as they would arrive
 * on the socket (seeds are plain SMTP sessions).
 *
 * Properties checked, for two line limits (512, the smallest
 * smtp.max_line_length, and a tiny limit derived from the input so that the
 * over-long path and its resynchronisation are exercised all the time):
 *  - smtp_line_feed gives the same lines, statuses and consumption when fed
 *    the whole input, one octet at a time, and in random pieces, and all
 *    three match an independent reference framing (LF ends a line, one CR
 *    before it is dropped, an over-long line is TOO_LONG and its bytes are
 *    gone, a NUL makes the line NUL).
 *  - smtp_cmd_parse: the argument lies inside the line, has no leading or
 *    trailing blanks, and the verb matches the first word.
 *  - every line's argument through smtp_parse_mail (with and without EHLO)
 *    and smtp_parse_rcpt (with and without SMTPUTF8): accepting without
 *    EHLO / SMTPUTF8 implies accepting with it, the same address; an
 *    accepted address is bounded, has no control octets, is valid UTF-8,
 *    is ASCII unless SMTPUTF8 was given, and is a fixed point (its
 *    canonical form, sent again, parses to itself).
 *  - smtp_parse_bdat agrees with a reference parser of "<digits>[ LAST]".
 *
 * Durability/concurrency: none (pure functions, one thread).
 */
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "smtp_parser.h"

/* Lines recorded per framing run; more are framed but not compared, so a
 * huge input of empty lines cannot make the record unbounded. */
#define MAX_LINES 4096

struct line_rec {
	enum smtp_line_status st;
	size_t end;     /* input offset just past the line's LF */
	size_t off;     /* content in the arena */
	size_t len;
};

struct framing {
	struct line_rec lines[MAX_LINES];
	size_t n;
	struct buf arena;  /* every line's content, back to back */
};

static void framing_add(struct framing *f, enum smtp_line_status st, size_t end, const char *p,
			size_t len)
{
	if (f->n == MAX_LINES)
		return;
	f->lines[f->n] = (struct line_rec){ st, end, f->arena.len, len };
	f->n++;
	buf_append(&f->arena, p, len);
}

/* The reference framing, written from the header's contract alone. */
static void frame_reference(const char *in, size_t len, size_t max, struct framing *f)
{
	size_t start = 0;
	for (;;) {
		const char *lf = memchr(in + start, '\n', len - start);
		if (lf == NULL)
			return;
		size_t end = (size_t)(lf - in);
		size_t raw = end - start;          /* bytes before the LF, CR included */
		if (raw + 1 > max) {
			framing_add(f, SMTP_LINE_TOO_LONG, end + 1, "", 0);
		} else {
			size_t n = raw;
			if (n > 0 && in[start + n - 1] == '\r')
				n--;
			bool nul = memchr(in + start, '\0', raw) != NULL;
			framing_add(f, nul ? SMTP_LINE_NUL : SMTP_LINE_READY, end + 1, in + start, n);
		}
		start = end + 1;
	}
}

/* Records what the reader produced after a feed of in[pos..pos+n) that
 * consumed `used` octets with status st. */
static void frame_record(struct framing *f, const struct smtp_line_reader *r, enum smtp_line_status st,
			 size_t pos, size_t n, size_t used, size_t max)
{
	FUZZ_CHECK(used <= n, "consumed %zu of %zu", used, n);
	if (st == SMTP_LINE_PARTIAL) {
		FUZZ_CHECK(used == n, "PARTIAL consumed %zu of %zu", used, n);
		return;
	}
	FUZZ_CHECK(st == SMTP_LINE_READY || st == SMTP_LINE_TOO_LONG || st == SMTP_LINE_NUL,
		   "status %d", (int)st);
	FUZZ_CHECK(used >= 1, "a finished line consumed nothing");
	FUZZ_CHECK(r->line.len + 1 <= max, "line of %zu octets with max %zu", r->line.len, max);
	if (st == SMTP_LINE_TOO_LONG)
		FUZZ_CHECK(r->line.len == 0, "TOO_LONG kept %zu octets", r->line.len);
	FUZZ_CHECK(r->line.len == 0 || r->line.data[r->line.len] == '\0', "line not NUL-terminated");
	FUZZ_CHECK(r->line.len == 0 || memchr(r->line.data, '\n', r->line.len) == NULL, "LF inside a line");
	framing_add(f, st, pos + used, r->line.data, r->line.len);
}

/* Feeds the input in chunks: chunk 0 = everything, 1 = one octet at a time,
 * otherwise random pieces from rng. */
static void frame_feed(const char *in, size_t len, size_t max, int how, struct fuzz_rng *rng,
		       struct framing *f)
{
	struct smtp_line_reader r;
	smtp_line_init(&r, max);
	size_t pos = 0;
	/* Each round consumes at least one octet or feeds a zero-length chunk;
	 * zero-length chunks are capped so the loop is bounded. */
	size_t empty_feeds = 0;
	while (pos < len) {
		size_t n = how == 0 ? len - pos : how == 1 ? 1 : fuzz_rng_chunk(rng, len - pos);
		if (n == 0 && ++empty_feeds > len + 16)
			n = 1;
		size_t off = 0;
		do {
			enum smtp_line_status st;
			size_t used = smtp_line_feed(&r, in + pos + off, n - off, &st);
			frame_record(f, &r, st, pos + off, n - off, used, max);
			off += used;
		} while (off < n);
		pos += n;
	}
	smtp_line_free(&r);
}

static void framing_compare(const char *what, const struct framing *a, const struct framing *b)
{
	if (a->n != b->n)
		fuzz_fail(__FILE__, __LINE__, "same line count", "%s: %zu lines against %zu", what, a->n,
			  b->n);
	for (size_t i = 0; i < a->n; i++) {
		const struct line_rec *x = &a->lines[i], *y = &b->lines[i];
		if (x->st != y->st || x->end != y->end) {
			fuzz_dump("expected line", a->arena.data + x->off, x->len);
			fuzz_dump("got line     ", b->arena.data + y->off, y->len);
			fuzz_fail(__FILE__, __LINE__, "same line", "%s: line %zu: status %d end %zu against "
				  "status %d end %zu", what, i, (int)x->st, x->end, (int)y->st, y->end);
		}
		fuzz_check_same(what, a->arena.data + x->off, x->len, b->arena.data + y->off, y->len);
	}
}

/* ---- commands ------------------------------------------------------------ */

static bool is_blank(char c)
{
	return c == ' ' || c == '\t';
}

static void check_cmd(const char *line, size_t len, const struct smtp_cmd *cmd)
{
	FUZZ_CHECK(cmd->arg != NULL, "NULL argument");
	FUZZ_CHECK(cmd->arg >= line && cmd->arg + cmd->arg_len <= line + len,
		   "argument outside the line");
	FUZZ_CHECK(cmd->arg[cmd->arg_len] == '\0', "argument not NUL-terminated");
	FUZZ_CHECK(smtp_verb_name(cmd->verb) != NULL, "verb %d has no name", (int)cmd->verb);
	if (memchr(line, '\0', len) != NULL)
		return; /* a NUL line: only memory safety is promised */
	FUZZ_CHECK(strlen(cmd->arg) == cmd->arg_len, "arg_len %zu, strlen %zu", cmd->arg_len,
		   strlen(cmd->arg));
	if (cmd->arg_len > 0) {
		FUZZ_CHECK(!is_blank(cmd->arg[0]), "argument starts with a blank");
		FUZZ_CHECK(!is_blank(cmd->arg[cmd->arg_len - 1]), "argument ends with a blank");
	}
	size_t lead = 0;
	while (lead < len && !is_blank(line[lead]))
		lead++;
	bool all_blank = true;
	for (size_t i = 0; i < len; i++)
		all_blank = all_blank && is_blank(line[i]);
	if (all_blank) {
		FUZZ_CHECK(cmd->verb == SMTP_V_EMPTY, "blank line parsed as verb %d", (int)cmd->verb);
	} else if (cmd->verb != SMTP_V_UNKNOWN) {
		const char *name = smtp_verb_name(cmd->verb);
		FUZZ_CHECK(strlen(name) == lead && strncasecmp(line, name, lead) == 0,
			   "verb %s for a line starting with %.*s", name, (int)lead, line);
	}
}

static void check_reply(enum smtp_perr e, bool rcpt)
{
	FUZZ_CHECK((unsigned)e < SMTP_PE__COUNT, "parse error %d out of range", (int)e);
	const struct smtp_reply_code *rc = smtp_perr_reply(e, rcpt);
	FUZZ_CHECK(rc->code >= 250 && rc->code <= 555 && rc->enh != NULL && rc->text != NULL,
		   "reply %d for error %d", rc->code, (int)e);
}

/* The properties of an accepted path. */
static void check_path(const struct smtp_path *p, bool utf8_allowed, const char *arg)
{
	size_t n = strnlen(p->addr, sizeof(p->addr));
	FUZZ_CHECK(n < sizeof(p->addr), "address not NUL-terminated");
	if (p->null) {
		FUZZ_CHECK(n == 0, "null path with address '%s'", p->addr);
		return;
	}
	FUZZ_CHECK(n > 0, "empty address for '%s'", arg);
	FUZZ_CHECK(n <= SMTP_PATH_MAX - 2, "address of %zu octets", n);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p->addr[i];
		FUZZ_CHECK(c >= 0x20 && c != 0x7f, "control octet 0x%02x in '%s'", c, p->addr);
		if (c >= 0x80)
			FUZZ_CHECK(utf8_allowed && p->utf8, "non-ASCII address '%s' accepted without SMTPUTF8",
				   p->addr);
	}
	FUZZ_CHECK(smtp_utf8_valid(p->addr, n), "invalid UTF-8 address accepted from '%s'", arg);
	FUZZ_CHECK(p->local_len > 0 && p->local_len <= SMTP_LOCAL_MAX && p->local_len <= n,
		   "local_len %zu for '%s'", p->local_len, p->addr);
	if (p->postmaster) {
		FUZZ_CHECK(strcmp(p->addr, "postmaster") == 0, "postmaster path '%s'", p->addr);
		return;
	}
	FUZZ_CHECK(p->addr[p->local_len] == '@', "no '@' at local_len %zu in '%s'", p->local_len, p->addr);
	size_t dlen = n - p->local_len - 1;
	FUZZ_CHECK(dlen > 0 && dlen <= SMTP_DOMAIN_MAX, "domain of %zu octets in '%s'", dlen, p->addr);
	const char *dom = p->addr + p->local_len + 1;
	if (p->domain_literal)
		FUZZ_CHECK(dom[0] == '[' && dom[dlen - 1] == ']', "literal domain '%s'", dom);
	else
		FUZZ_CHECK(memchr(dom, '[', dlen) == NULL && memchr(dom, '@', dlen) == NULL,
			   "domain '%s'", dom);
}

/* The canonical address sent again must parse to itself. */
static void check_fixed_point(const struct smtp_path *p, bool rcpt)
{
	if (p->null)
		return;
	char arg[SMTP_PATH_MAX + 32];
	int n = snprintf(arg, sizeof(arg), rcpt ? "TO:<%s>" : "FROM:<%s> SMTPUTF8", p->addr);
	FUZZ_CHECK(n > 0 && (size_t)n < sizeof(arg), "address of %zu octets", strlen(p->addr));
	struct smtp_path again;
	struct smtp_mail_params mp;
	enum smtp_perr e = rcpt ? smtp_parse_rcpt(arg, true, &again) : smtp_parse_mail(arg, true, &again, &mp);
	FUZZ_CHECK(e == SMTP_PE_OK, "canonical '%s' does not parse again (error %d)", arg, (int)e);
	FUZZ_CHECK(strcmp(again.addr, p->addr) == 0 && again.local_len == p->local_len &&
		   again.domain_literal == p->domain_literal && again.postmaster == p->postmaster,
		   "canonical '%s' parses to '%s' (local_len %zu, was %zu)", p->addr, again.addr,
		   again.local_len, p->local_len);
}

static bool same_path(const struct smtp_path *a, const struct smtp_path *b)
{
	return a->null == b->null && a->postmaster == b->postmaster &&
	       a->domain_literal == b->domain_literal && a->utf8 == b->utf8 &&
	       a->local_len == b->local_len && strcmp(a->addr, b->addr) == 0;
}

static void check_mail(const char *arg)
{
	struct smtp_path p_helo, p_ehlo;
	struct smtp_mail_params mp_helo, mp_ehlo;
	enum smtp_perr e_helo = smtp_parse_mail(arg, false, &p_helo, &mp_helo);
	enum smtp_perr e_ehlo = smtp_parse_mail(arg, true, &p_ehlo, &mp_ehlo);
	check_reply(e_helo, false);
	check_reply(e_ehlo, false);
	if (e_helo == SMTP_PE_OK) {
		/* without EHLO no parameter was accepted, so with it the result is the same */
		FUZZ_CHECK(e_ehlo == SMTP_PE_OK && same_path(&p_helo, &p_ehlo),
			   "'%s' accepted after HELO but not after EHLO (%d)", arg, (int)e_ehlo);
		FUZZ_CHECK(!mp_helo.size_given && mp_helo.body == SMTP_BODY_NONE && !mp_helo.smtputf8,
			   "parameters accepted without EHLO in '%s'", arg);
		check_path(&p_helo, false, arg);
	}
	if (e_ehlo == SMTP_PE_OK) {
		FUZZ_CHECK(!p_ehlo.postmaster, "MAIL path marked postmaster: '%s'", arg);
		FUZZ_CHECK(mp_ehlo.body <= SMTP_BODY_8BITMIME, "body %d", (int)mp_ehlo.body);
		check_path(&p_ehlo, mp_ehlo.smtputf8, arg);
		check_fixed_point(&p_ehlo, false);
	}
}

static void check_rcpt(const char *arg)
{
	struct smtp_path p_ascii, p_utf8;
	enum smtp_perr e_ascii = smtp_parse_rcpt(arg, false, &p_ascii);
	enum smtp_perr e_utf8 = smtp_parse_rcpt(arg, true, &p_utf8);
	check_reply(e_ascii, true);
	check_reply(e_utf8, true);
	if (e_ascii == SMTP_PE_OK) {
		FUZZ_CHECK(e_utf8 == SMTP_PE_OK && same_path(&p_ascii, &p_utf8),
			   "'%s' accepted without SMTPUTF8 but not with it (%d)", arg, (int)e_utf8);
		check_path(&p_ascii, false, arg);
	}
	if (e_utf8 == SMTP_PE_OK) {
		FUZZ_CHECK(!p_utf8.null, "null RCPT path accepted: '%s'", arg);
		check_path(&p_utf8, true, arg);
		check_fixed_point(&p_utf8, true);
		/* SMTPUTF8 only matters for non-ASCII paths */
		if (!p_utf8.utf8)
			FUZZ_CHECK(e_ascii == SMTP_PE_OK, "ASCII '%s' refused without SMTPUTF8 (%d)", arg,
				   (int)e_ascii);
	}
}

/* Reference for BDAT's argument: 1*DIGIT [1*SP "LAST"], no overflow. */
static bool bdat_reference(const char *arg, uint64_t *size, bool *last)
{
	const char *p = arg;
	uint64_t v = 0;
	if (*p < '0' || *p > '9')
		return false;
	while (*p >= '0' && *p <= '9') {
		uint64_t d = (uint64_t)(*p - '0');
		if (v > UINT64_MAX / 10 || v * 10 > UINT64_MAX - d)
			return false;
		v = v * 10 + d;
		p++;
	}
	*last = false;
	if (*p == ' ') {
		while (*p == ' ')
			p++;
		if (strcasecmp(p, "LAST") != 0)
			return false;
		*last = true;
		p += 4;
	}
	*size = v;
	return *p == '\0';
}

static void check_bdat(const char *arg)
{
	uint64_t size = 0, rsize = 0;
	bool last = false, rlast = false;
	bool ok = smtp_parse_bdat(arg, &size, &last);
	bool rok = bdat_reference(arg, &rsize, &rlast);
	FUZZ_CHECK(ok == rok, "BDAT '%s': parser says %d, reference %d", arg, ok, rok);
	if (ok)
		FUZZ_CHECK(size == rsize && last == rlast, "BDAT '%s': %llu/%d against %llu/%d", arg,
			   (unsigned long long)size, last, (unsigned long long)rsize, rlast);
}

static void check_line(const char *content, size_t len)
{
	/* An exact-size copy, NUL-terminated as struct buf is: ASan sees any
	 * read past the terminator. */
	char *line = xmalloc(len + 1);
	memcpy(line, content, len);
	line[len] = '\0';
	struct smtp_cmd cmd;
	smtp_cmd_parse(line, len, &cmd);
	check_cmd(line, len, &cmd);
	/* Every grammar sees every argument, whatever the verb: the grammars
	 * must hold for any text, and the fuzzer gets to them sooner. */
	check_mail(cmd.arg);
	check_rcpt(cmd.arg);
	check_bdat(cmd.arg);
	free(line);
}

static void run_limit(const char *in, size_t len, size_t max, bool parse)
{
	struct framing *ref = xcalloc(1, sizeof(*ref));
	struct framing *got = xcalloc(1, sizeof(*got));
	frame_reference(in, len, max, ref);
	static const char *const names[] = { "whole feed", "octet at a time", "random split" };
	for (int how = 0; how < 3; how++) {
		struct fuzz_rng rng;
		fuzz_rng_init(&rng, in, len, max);
		got->n = 0;
		buf_reset(&got->arena);
		frame_feed(in, len, max, how, &rng, got);
		framing_compare(names[how], ref, got);
	}
	if (parse) {
		for (size_t i = 0; i < ref->n; i++) {
			const struct line_rec *l = &ref->lines[i];
			if (l->st != SMTP_LINE_TOO_LONG)
				check_line(ref->arena.data + l->off, l->len);
		}
	}
	buf_free(&ref->arena);
	buf_free(&got->arena);
	free(ref);
	free(got);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *in = (const char *)data;
	struct fuzz_rng rng;
	fuzz_rng_init(&rng, data, size, 0);
	run_limit(in, size, 512, true);
	run_limit(in, size, 3 + (size_t)(fuzz_rng_next(&rng) % 62), false);
	return 0;
}
