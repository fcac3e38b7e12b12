/*
 * fuzz_imap_command.c - fuzz target for the IMAP command reader and
 * argument parser (src/imap/imap_parser.h): command framing with
 * synchronising and non-synchronising literals, resynchronisation after
 * over-long input, imap_parse_command and sequence sets.
 *
 * Input: the bytes an IMAP client sends.  Two reader configurations run:
 * the smallest imap.max_line_length (1024) with the session's in-memory
 * literal budget (64 KiB), and tiny limits derived from the input so that
 * the discard and refusal paths run all the time.  A literal is answered
 * (memory, stream or refuse) by a function of its size and kind only, so
 * the answers do not depend on how the input is split.
 *
 * Properties checked:
 *  - the reader gives the same events (commands with their bytes, literal
 *    announcements, streamed literal bytes, discarded and refused commands
 *    with their tags) whether fed everything at once, one octet at a time
 *    or in pieces split at points derived from the input;
 *  - it never leaves input unconsumed without an event, streamed bytes lie
 *    inside the input given, and a streamed literal delivers exactly its
 *    announced size;
 *  - memory: the command buffer stays within max_line + max_literal (plus
 *    the CRLF kept before each in-memory literal), as the header promises;
 *  - tags are "*" or 1 to 64 RFC 3501 tag characters;
 *  - every command and every text before a literal goes through
 *    imap_parse_command as the session calls it; a parsed command has a
 *    valid tag and upper-case name, a well-formed argument tree within the
 *    depth and count limits, and written back out in IMAP syntax parses to
 *    the same tree;
 *  - every atom goes through imap_seqset_parse; an accepted set has 1 to
 *    IMAP_SEQSET_MAX_RANGES ranges, contains each range's ends, and
 *    written back out parses to the same ranges.
 *
 * Durability/concurrency: none (pure functions, one thread).
 */
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imap_parser.h"

/* The session's budget for in-memory literals (imap_int.h). */
#define SESSION_LITERAL_MAX (64u * 1024u)
/* Events recorded per run; beyond it the input is still fed and checked. */
#define MAX_LOG (1u << 20)

struct run {
	struct imap_reader r;
	struct buf log;        /* the events, in a canonical text form */
	uint64_t salt;         /* literal answers */
	size_t lits;           /* in-memory literals in the current command */
	bool streaming;        /* a streamed literal is open in the log */
	uint64_t stream_left;  /* its bytes still to come */
};

/* ---- tags and parsed commands ------------------------------------------------ */

/* RFC 3501: tag = 1*<any ASTRING-CHAR except "+">. */
static bool rfc_tag_char(unsigned char c)
{
	return c > 0x20 && c < 0x7f && strchr("(){%*\"\\+", c) == NULL;
}

static void check_tag(const char *tag)
{
	size_t n = strnlen(tag, IMAP_TAG_MAX + 1);
	FUZZ_CHECK(n >= 1 && n <= IMAP_TAG_MAX, "tag of %zu octets", n);
	if (strcmp(tag, "*") == 0)
		return;
	for (size_t i = 0; i < n; i++)
		FUZZ_CHECK(rfc_tag_char((unsigned char)tag[i]), "tag '%s' has octet 0x%02x", tag,
			   (unsigned char)tag[i]);
}

static size_t check_arg(const struct imap_arg *a, unsigned depth, bool stream_tail)
{
	FUZZ_CHECK(depth <= IMAP_MAX_DEPTH + 1, "argument at depth %u", depth);
	switch (a->type) {
	case IMAP_ARG_ATOM:
		FUZZ_CHECK(a->str != NULL && a->len > 0 && strlen(a->str) == a->len, "bad atom");
		FUZZ_CHECK(a->str[0] != '{' && a->str[0] != '"' && a->str[0] != '(',
			   "atom '%s' starts with a special", a->str);
		FUZZ_CHECK(imap_arg_is_string(a), "atom is not a string");
		break;
	case IMAP_ARG_QUOTED:
		FUZZ_CHECK(a->str != NULL && a->str[a->len] == '\0', "bad quoted string");
		FUZZ_CHECK(memchr(a->str, '\r', a->len) == NULL && memchr(a->str, '\n', a->len) == NULL &&
			   memchr(a->str, '\0', a->len) == NULL, "CR, LF or NUL in a quoted string");
		break;
	case IMAP_ARG_LITERAL:
		/* Several streamed literals may come in one command
		 * (MULTIAPPEND): each is a top-level argument. */
		if (a->str == NULL)
			FUZZ_CHECK(stream_tail && depth == 0, "streamed literal inside a list");
		else
			FUZZ_CHECK(a->str[a->len] == '\0', "literal not NUL-terminated");
		break;
	case IMAP_ARG_LIST:
		FUZZ_CHECK(a->str == NULL && (a->n == 0 || a->list != NULL), "bad list");
		FUZZ_CHECK(!imap_arg_is_string(a), "list is a string");
		break;
	default:
		fuzz_fail(__FILE__, __LINE__, "argument type", "type %d", (int)a->type);
	}
	size_t total = 1;
	for (size_t i = 0; i < a->n; i++)
		total += check_arg(&a->list[i], depth + 1, stream_tail);
	return total;
}

static void write_arg(const struct imap_arg *a, struct buf *out)
{
	switch (a->type) {
	case IMAP_ARG_ATOM:
		buf_append(out, a->str, a->len);
		break;
	case IMAP_ARG_QUOTED:
		buf_append_char(out, '"');
		for (size_t i = 0; i < a->len; i++) {
			if (a->str[i] == '"' || a->str[i] == '\\')
				buf_append_char(out, '\\');
			buf_append_char(out, a->str[i]);
		}
		buf_append_char(out, '"');
		break;
	case IMAP_ARG_LITERAL:
		buf_printf(out, "%s{%zu}", a->literal8 ? "~" : "", a->len);
		if (a->str != NULL) {
			buf_append(out, "\r\n", 2);
			buf_append(out, a->str, a->len);
		}
		break;
	case IMAP_ARG_LIST:
		buf_append_char(out, '(');
		for (size_t i = 0; i < a->n; i++) {
			if (i > 0)
				buf_append_char(out, ' ');
			write_arg(&a->list[i], out);
		}
		buf_append_char(out, ')');
		break;
	}
}

static bool same_arg(const struct imap_arg *a, const struct imap_arg *b)
{
	if (a->type != b->type || a->len != b->len || a->n != b->n || (a->str == NULL) != (b->str == NULL))
		return false;
	if (a->str != NULL && memcmp(a->str, b->str, a->len) != 0)
		return false;
	for (size_t i = 0; i < a->n; i++)
		if (!same_arg(&a->list[i], &b->list[i]))
			return false;
	return true;
}

static void check_seqsets(const struct imap_arg *a)
{
	if (a->type == IMAP_ARG_LIST) {
		for (size_t i = 0; i < a->n; i++)
			check_seqsets(&a->list[i]);
		return;
	}
	if (a->type != IMAP_ARG_ATOM)
		return;
	struct imap_seqset set;
	if (imap_seqset_parse(a->str, &set) != ST_OK) {
		FUZZ_CHECK(set.n == 0 && set.r == NULL, "failed sequence set kept ranges");
		return;
	}
	FUZZ_CHECK(strspn(a->str, "0123456789:,*") == a->len, "sequence set '%s' accepted", a->str);
	FUZZ_CHECK(set.n >= 1 && set.n <= IMAP_SEQSET_MAX_RANGES, "%zu ranges", set.n);
	struct buf text = BUF_INIT;
	for (size_t i = 0; i < set.n; i++) {
		uint32_t lo = set.r[i].lo, hi = set.r[i].hi;
		uint32_t max = 1000;
		FUZZ_CHECK(imap_seqset_contains(&set, lo ? lo : max, max) &&
			   imap_seqset_contains(&set, hi ? hi : max, max),
			   "'%s' does not contain its range %u:%u", a->str, lo, hi);
		if (i > 0)
			buf_append_char(&text, ',');
		if (lo)
			buf_printf(&text, "%u", lo);
		else
			buf_append_char(&text, '*');
		if (hi != lo)
			buf_printf(&text, hi ? ":%u" : ":*", hi);
	}
	struct imap_seqset again;
	FUZZ_CHECK(imap_seqset_parse(text.data, &again) == ST_OK && again.n == set.n &&
		   memcmp(again.r, set.r, set.n * sizeof(*set.r)) == 0,
		   "'%s' written as '%s' does not parse back", a->str, text.data);
	imap_seqset_free(&again);
	imap_seqset_free(&set);
	FUZZ_CHECK(set.r == NULL && set.n == 0, "imap_seqset_free left ranges");
	buf_free(&text);
}

/* Parses text as the session does and checks the result. */
static void check_parse(const char *text, size_t len, bool stream_tail)
{
	struct imap_cmd cmd;
	char *err = NULL;
	enum status st = imap_parse_command(text, len, stream_tail, &cmd, &err);
	if (st != ST_OK) {
		FUZZ_CHECK(st == ST_INVALID, "status %s", status_info(st)->name);
		FUZZ_CHECK(err != NULL && err[0] != '\0', "ST_INVALID without an error");
		FUZZ_CHECK(cmd.args == NULL && cmd.n_args == 0, "failed parse kept arguments");
		FUZZ_CHECK(cmd.tag[0] == '\0' || strnlen(cmd.tag, sizeof(cmd.tag)) < sizeof(cmd.tag),
			   "tag not terminated");
		free(err);
		return;
	}
	FUZZ_CHECK(err == NULL, "ST_OK with error '%s'", err);
	check_tag(cmd.tag);
	FUZZ_CHECK(strcmp(cmd.tag, "*") != 0, "command accepted with tag '*'");
	size_t nl = strnlen(cmd.name, sizeof(cmd.name));
	FUZZ_CHECK(nl >= 1 && nl < sizeof(cmd.name), "name of %zu octets", nl);
	for (size_t i = 0; i < nl; i++)
		FUZZ_CHECK(cmd.name[i] >= 'A' && cmd.name[i] <= 'Z', "name '%s'", cmd.name);
	FUZZ_CHECK(cmd.n_args == 0 || cmd.args != NULL, "arguments missing");
	size_t total = 0;
	for (size_t i = 0; i < cmd.n_args; i++)
		total += check_arg(&cmd.args[i], 0, stream_tail);
	FUZZ_CHECK(total == cmd.total_args && total <= IMAP_MAX_ARGS, "%zu arguments, total_args %zu",
		   total, cmd.total_args);
	for (size_t i = 0; i < cmd.n_args; i++)
		check_seqsets(&cmd.args[i]);

	/* Written back out, the command parses to the same tree. */
	struct buf out = BUF_INIT;
	buf_printf(&out, "%s %s%s", cmd.tag, cmd.uid ? "UID " : "", cmd.name);
	for (size_t i = 0; i < cmd.n_args; i++) {
		buf_append_char(&out, ' ');
		write_arg(&cmd.args[i], &out);
	}
	struct imap_cmd again;
	char *err2 = NULL;
	st = imap_parse_command(out.data, out.len, stream_tail, &again, &err2);
	if (st != ST_OK) {
		fuzz_dump("parsed from", text, len);
		fuzz_dump("written as ", out.data, out.len);
		fuzz_fail(__FILE__, __LINE__, "round trip", "written command does not parse: %s", err2);
	}
	bool same = strcmp(cmd.tag, again.tag) == 0 && strcmp(cmd.name, again.name) == 0 &&
		    cmd.uid == again.uid && cmd.n_args == again.n_args && cmd.total_args == again.total_args;
	for (size_t i = 0; same && i < cmd.n_args; i++)
		same = same_arg(&cmd.args[i], &again.args[i]);
	if (!same) {
		fuzz_dump("parsed from", text, len);
		fuzz_dump("written as ", out.data, out.len);
		fuzz_fail(__FILE__, __LINE__, "round trip", "written command parses differently");
	}
	imap_cmd_free(&again);
	imap_cmd_free(&cmd);
	FUZZ_CHECK(cmd.args == NULL && cmd.n_args == 0, "imap_cmd_free left arguments");
	buf_free(&out);
}

/* ---- the reader ------------------------------------------------------------------ */

static void log_printf(struct run *ru, const char *fmt, ...) ATTR_PRINTF(2, 3);
static void log_printf(struct run *ru, const char *fmt, ...)
{
	if (ru->log.len > MAX_LOG)
		return;
	va_list ap;
	va_start(ap, fmt);
	buf_vprintf(&ru->log, fmt, ap);
	va_end(ap);
}

static void log_bytes(struct run *ru, const char *p, size_t n)
{
	if (ru->log.len <= MAX_LOG)
		buf_append(&ru->log, p, n);
}

static void check_memory(const struct run *ru)
{
	const struct imap_reader *r = &ru->r;
	FUZZ_CHECK(r->literal_bytes <= r->max_literal, "%zu in-memory literal octets, max %zu",
		   r->literal_bytes, r->max_literal);
	FUZZ_CHECK(r->buf.len <= r->max_line + r->max_literal + 2 * ru->lits,
		   "command buffer of %zu octets with max_line %zu, max_literal %zu, %zu literals",
		   r->buf.len, r->max_line, r->max_literal, ru->lits);
}

static enum imap_lit_mode literal_answer(const struct run *ru)
{
	uint64_t h = (ru->r.lit_size * 2 + ru->r.lit_sync) ^ ru->salt;
	h *= 0x9e3779b97f4a7c15ull;
	switch ((h >> 32) % 4) {
	case 0:
		return IMAP_LIT_STREAM;
	case 1:
		return IMAP_LIT_REFUSE;
	default:
		return IMAP_LIT_MEMORY;
	}
}

static void on_event(struct run *ru, enum imap_rd_event ev, const char *chunk, size_t chunk_len,
		     const char *d, size_t dl)
{
	struct imap_reader *r = &ru->r;
	switch (ev) {
	case IMAP_RD_NEED_MORE:
		return;
	case IMAP_RD_COMMAND: {
		FUZZ_CHECK(!ru->streaming, "command while a streamed literal is open");
		FUZZ_CHECK(r->len == r->buf.len && r->buf.data != NULL, "command of %zu octets in a buffer of %zu",
			   r->len, r->buf.len);
		/* The whole command is parsed, streamed literals included (they
		 * stand in the buffer as "{n}" with no data), as the session does. */
		FUZZ_CHECK(!r->streamed || r->stream_at <= r->len, "stream_at %zu past the command's %zu octets",
			   r->stream_at, r->len);
		log_printf(ru, "C%d:%zu:%zu:", r->streamed, r->stream_at, r->len);
		log_bytes(ru, r->buf.data, r->len);
		check_parse(r->buf.data, r->len, r->streamed);
		imap_reader_reset(r);
		ru->lits = 0;
		return;
	}
	case IMAP_RD_LITERAL: {
		FUZZ_CHECK(r->buf.data != NULL && r->len == r->buf.len, "literal announced in an empty buffer");
		check_parse(r->buf.data, r->len, true);
		imap_reader_take_tag(r);
		check_tag(r->tag);
		enum imap_lit_mode mode = literal_answer(ru);
		bool sync = r->lit_sync;
		uint64_t size = r->lit_size;
		bool ended = imap_reader_literal(r, mode);
		log_printf(ru, "L%llu:%d:%d:%d:%d;", (unsigned long long)size, sync, (int)mode, ended,
			   r->lit_refused);
		if (ended) {
			FUZZ_CHECK(sync && (mode == IMAP_LIT_REFUSE || mode == IMAP_LIT_MEMORY),
				   "command ended by a %s literal answered %d", sync ? "sync" : "non-sync",
				   (int)mode);
			check_tag(r->tag);
			log_printf(ru, "E%s;", r->tag);
			ru->lits = 0;
		} else if (mode == IMAP_LIT_MEMORY && !r->lit_refused) {
			ru->lits++;
		} else if (mode == IMAP_LIT_STREAM) {
			FUZZ_CHECK(r->streamed && r->stream_at == r->buf.len, "stream_at %zu, buffer %zu",
				   r->stream_at, r->buf.len);
			ru->streaming = true;
			ru->stream_left = size;
			log_printf(ru, "S{");
		}
		return;
	}
	case IMAP_RD_STREAM:
		FUZZ_CHECK(ru->streaming, "stream data without a streamed literal");
		FUZZ_CHECK(dl == 0 || (d >= chunk && d + dl <= chunk + chunk_len),
			   "stream data outside the input given");
		FUZZ_CHECK(dl <= ru->stream_left, "%zu stream octets with %llu left", dl,
			   (unsigned long long)ru->stream_left);
		ru->stream_left -= dl;
		FUZZ_CHECK(r->lit_left == ru->stream_left, "lit_left %llu, expected %llu",
			   (unsigned long long)r->lit_left, (unsigned long long)ru->stream_left);
		log_bytes(ru, d, dl);
		if (ru->stream_left == 0) {
			ru->streaming = false;
			log_printf(ru, "}");
		}
		return;
	case IMAP_RD_TOO_LONG:
	case IMAP_RD_REFUSED:
		FUZZ_CHECK(!ru->streaming, "command discarded while a streamed literal is open");
		check_tag(r->tag);
		FUZZ_CHECK(r->buf.len == 0 && r->state == RD_LINE, "reader not reset after a discard");
		log_printf(ru, "%c%s;", ev == IMAP_RD_TOO_LONG ? 'T' : 'R', r->tag);
		ru->lits = 0;
		return;
	}
	fuzz_fail(__FILE__, __LINE__, "event", "event %d", (int)ev);
}

/* Feeds one chunk until it is consumed. */
static void feed_chunk(struct run *ru, const char *chunk, size_t n)
{
	size_t off = 0;
	unsigned idle = 0;  /* events in a row that consumed nothing */
	do {
		enum imap_rd_event ev = IMAP_RD_NEED_MORE;
		const char *d = NULL;
		size_t dl = 0;
		size_t used = imap_reader_feed(&ru->r, chunk + off, n - off, &ev, &d, &dl);
		FUZZ_CHECK(used <= n - off, "consumed %zu of %zu", used, n - off);
		FUZZ_CHECK(used > 0 || ev != IMAP_RD_NEED_MORE || n - off == 0,
			   "%zu octets left unconsumed without an event", n - off);
		on_event(ru, ev, chunk + off, n - off, d, dl);
		check_memory(ru);
		off += used;
		idle = used == 0 ? idle + 1 : 0;
		FUZZ_CHECK(idle <= 4, "reader makes no progress");
	} while (off < n);
}

static void run_reader(const char *in, size_t len, size_t max_line, size_t max_literal, int how,
		       uint64_t salt, struct buf *log_out)
{
	struct run ru;
	memset(&ru, 0, sizeof(ru));
	ru.salt = salt;
	imap_reader_init(&ru.r, max_line, max_literal);
	struct fuzz_rng rng;
	fuzz_rng_init(&rng, in, len, salt ^ 0x1111);
	size_t pos = 0, empty_feeds = 0;
	while (pos < len) {
		size_t n = how == 0 ? len - pos : how == 1 ? 1 : fuzz_rng_chunk(&rng, len - pos);
		if (n == 0 && ++empty_feeds > len + 16)
			n = 1;
		feed_chunk(&ru, in + pos, n);
		pos += n;
	}
	imap_reader_free(&ru.r);
	*log_out = ru.log;
}

static void check_limits(const char *in, size_t len, size_t max_line, size_t max_literal, uint64_t salt)
{
	static const char *const names[] = { "whole feed", "octet at a time", "random split" };
	struct buf want;
	run_reader(in, len, max_line, max_literal, 0, salt, &want);
	for (int how = 1; how < 3; how++) {
		struct buf got;
		run_reader(in, len, max_line, max_literal, how, salt, &got);
		fuzz_check_same(names[how], want.data, want.len, got.data, got.len);
		buf_free(&got);
	}
	buf_free(&want);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *in = (const char *)data;
	struct fuzz_rng rng;
	fuzz_rng_init(&rng, data, size, 0);
	uint64_t salt = fuzz_rng_next(&rng);
	check_limits(in, size, 1024, SESSION_LITERAL_MAX, salt);
	uint64_t v = fuzz_rng_next(&rng);
	check_limits(in, size, 8 + (size_t)(v % 56), (size_t)((v >> 8) % 128), salt);
	return 0;
}
