/*
 * smtp_parser.c - SMTP command framing and the MAIL/RCPT/BDAT grammars.
 *
 * Contract: see smtp_parser.h.  Everything here is a pure function of its
 * input (plus the line reader's own state); the session decides what a
 * parse result means for the reply, the error counter and relaying.
 *
 * Grammar notes (RFC 5321 4.1.2, RFC 6531 3.3):
 *   Path        = "<" [ A-d-l ":" ] Mailbox ">"     (A-d-l parsed and dropped)
 *   Mailbox     = Local-part "@" ( Domain / address-literal )
 *   Local-part  = Dot-string / Quoted-string
 *   Domain      = sub-domain *("." sub-domain), sub-domain = Let-dig [Ldh-str]
 * Octets >= 0x80 count as atext / qtext / letters (U-labels); whether they
 * are allowed at all (SMTPUTF8) is decided after the whole command is
 * parsed, because MAIL's SMTPUTF8 parameter follows the path.
 * Address literals are checked with inet_pton; the IANA registry has no
 * general-address-literal tag besides IPv6, so no other tag is accepted.
 */
#include "smtp_parser.h"

#include <arpa/inet.h>
#include <string.h>
#include <strings.h>

/* ---- line framing ------------------------------------------------------ */

void smtp_line_init(struct smtp_line_reader *r, size_t max)
{
	memset(r, 0, sizeof(*r));
	if (max < 3)
		panic("smtp_line_init: max %zu too small", max);
	r->max = max;
}

void smtp_line_free(struct smtp_line_reader *r)
{
	buf_free(&r->line);
}

void smtp_line_reset(struct smtp_line_reader *r, size_t max)
{
	if (max < 3)
		panic("smtp_line_reset: max %zu too small", max);
	buf_reset(&r->line);
	r->max = max;
	r->overflow = false;
	r->nul = false;
	r->complete = false;
}

/* Appends data[0..n) (no LF inside) to the line, respecting the limit: the
 * stored bytes plus the LF still to come may not exceed max. */
static void line_store(struct smtp_line_reader *r, const char *data, size_t n)
{
	if (memchr(data, '\0', n) != NULL)
		r->nul = true;
	if (r->overflow)
		return;
	if (r->line.len + n > r->max - 1) {
		r->overflow = true;
		buf_reset(&r->line);
		return;
	}
	buf_append(&r->line, data, n);
}

size_t smtp_line_feed(struct smtp_line_reader *r, const char *data, size_t len,
		      enum smtp_line_status *st)
{
	if (r->complete)
		smtp_line_reset(r, r->max);
	const char *lf = memchr(data, '\n', len);
	if (lf == NULL) {
		line_store(r, data, len);
		*st = SMTP_LINE_PARTIAL;
		return len;
	}
	size_t n = (size_t)(lf - data);
	line_store(r, data, n);
	r->complete = true;
	if (r->overflow) {
		*st = SMTP_LINE_TOO_LONG;
	} else {
		if (r->line.len > 0 && r->line.data[r->line.len - 1] == '\r')
			buf_truncate(&r->line, r->line.len - 1);
		*st = r->nul ? SMTP_LINE_NUL : SMTP_LINE_READY;
	}
	return n + 1;
}

/* ---- verbs ------------------------------------------------------------- */

static const struct {
	const char *name;
	enum smtp_verb verb;
} verbs[] = {
	{ "HELO", SMTP_V_HELO }, { "EHLO", SMTP_V_EHLO }, { "MAIL", SMTP_V_MAIL },
	{ "RCPT", SMTP_V_RCPT }, { "DATA", SMTP_V_DATA }, { "BDAT", SMTP_V_BDAT },
	{ "RSET", SMTP_V_RSET }, { "NOOP", SMTP_V_NOOP }, { "QUIT", SMTP_V_QUIT },
	{ "HELP", SMTP_V_HELP }, { "VRFY", SMTP_V_VRFY }, { "EXPN", SMTP_V_EXPN },
	{ "STARTTLS", SMTP_V_STARTTLS }, { "AUTH", SMTP_V_AUTH },
};

const char *smtp_verb_name(enum smtp_verb v)
{
	for (size_t i = 0; i < ARRAY_LEN(verbs); i++)
		if (verbs[i].verb == v)
			return verbs[i].name;
	return v == SMTP_V_EMPTY ? "(empty)" : "(unknown)";
}

static bool is_blank(char c)
{
	return c == ' ' || c == '\t';
}

void smtp_cmd_parse(char *line, size_t len, struct smtp_cmd *cmd)
{
	size_t end = len;
	while (end > 0 && is_blank(line[end - 1]))
		end--;
	line[end] = '\0';
	size_t v = 0;
	while (v < end && !is_blank(line[v]))
		v++;
	size_t a = v;
	while (a < end && is_blank(line[a]))
		a++;
	cmd->arg = line + a;
	cmd->arg_len = end - a;
	cmd->verb = SMTP_V_UNKNOWN;
	if (end == 0) {
		cmd->verb = SMTP_V_EMPTY;
		return;
	}
	for (size_t i = 0; i < ARRAY_LEN(verbs); i++) {
		if (strlen(verbs[i].name) == v && strncasecmp(line, verbs[i].name, v) == 0) {
			cmd->verb = verbs[i].verb;
			return;
		}
	}
}

/* ---- error replies ----------------------------------------------------- */

static const struct smtp_reply_code perr_mail[SMTP_PE__COUNT] = {
	[SMTP_PE_OK] = { 250, "2.1.0", "Ok" },
	[SMTP_PE_SYNTAX] = { 501, "5.5.4", "Syntax: MAIL FROM:<address>" },
	[SMTP_PE_BAD_ADDRESS] = { 501, "5.1.7", "Bad sender address syntax" },
	[SMTP_PE_TOO_LONG] = { 501, "5.1.7", "Sender address too long" },
	[SMTP_PE_UNQUALIFIED] = { 501, "5.1.7", "Sender address must contain a domain" },
	[SMTP_PE_NULL_RCPT] = { 501, "5.1.7", "Bad sender address syntax" },
	[SMTP_PE_UTF8_REQUIRED] = { 553, "5.6.7", "SMTPUTF8 is required for a non-ASCII sender address" },
	[SMTP_PE_BAD_PARAM] = { 501, "5.5.4", "Bad MAIL parameter syntax" },
	[SMTP_PE_UNSUPPORTED_PARAM] = { 555, "5.5.4", "Unsupported MAIL parameter" },
};
static const struct smtp_reply_code perr_rcpt[SMTP_PE__COUNT] = {
	[SMTP_PE_OK] = { 250, "2.1.5", "Ok" },
	[SMTP_PE_SYNTAX] = { 501, "5.5.4", "Syntax: RCPT TO:<address>" },
	[SMTP_PE_BAD_ADDRESS] = { 501, "5.1.3", "Bad recipient address syntax" },
	[SMTP_PE_TOO_LONG] = { 501, "5.1.3", "Recipient address too long" },
	[SMTP_PE_UNQUALIFIED] = { 501, "5.1.3", "Recipient address must contain a domain" },
	[SMTP_PE_NULL_RCPT] = { 501, "5.1.3", "Bad recipient address syntax" },
	[SMTP_PE_UTF8_REQUIRED] = { 553, "5.6.7", "SMTPUTF8 is required for a non-ASCII recipient address" },
	[SMTP_PE_BAD_PARAM] = { 501, "5.5.4", "Bad RCPT parameter syntax" },
	[SMTP_PE_UNSUPPORTED_PARAM] = { 555, "5.5.4", "Unsupported RCPT parameter" },
};

const struct smtp_reply_code *smtp_perr_reply(enum smtp_perr e, bool rcpt)
{
	if ((unsigned)e >= SMTP_PE__COUNT)
		panic("smtp_perr_reply: bad error %d", (int)e);
	return rcpt ? &perr_rcpt[e] : &perr_mail[e];
}

/* ---- UTF-8 --------------------------------------------------------------- */

bool smtp_utf8_valid(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0;
	while (i < len) {
		unsigned c = p[i];
		if (c < 0x80) {
			i++;
			continue;
		}
		size_t n;
		unsigned lo = 0x80, hi = 0xbf;
		if (c >= 0xc2 && c <= 0xdf) {
			n = 1;
		} else if (c >= 0xe0 && c <= 0xef) {
			n = 2;
			if (c == 0xe0)
				lo = 0xa0;       /* overlong */
			else if (c == 0xed)
				hi = 0x9f;       /* surrogates */
		} else if (c >= 0xf0 && c <= 0xf4) {
			n = 3;
			if (c == 0xf0)
				lo = 0x90;       /* overlong */
			else if (c == 0xf4)
				hi = 0x8f;       /* > U+10FFFF */
		} else {
			return false;
		}
		if (len - i - 1 < n)
			return false;
		if (p[i + 1] < lo || p[i + 1] > hi)
			return false;
		for (size_t k = 2; k <= n; k++)
			if (p[i + k] < 0x80 || p[i + k] > 0xbf)
				return false;
		i += n + 1;
	}
	return true;
}

/* ---- character classes --------------------------------------------------- */

static bool is_alpha(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

/* RFC 5322 atext, plus UTF8-non-ascii (validity checked separately). */
static bool is_atext(unsigned char c)
{
	if (is_alpha(c) || is_digit(c) || c >= 0x80)
		return true;
	return c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

/* Let-dig, plus U-label octets. */
static bool is_letdig(unsigned char c)
{
	return is_alpha(c) || is_digit(c) || c >= 0x80;
}

/* RFC 5321 qtextSMTP: %d32-33 / %d35-91 / %d93-126, plus UTF8-non-ascii. */
static bool is_qtext(unsigned char c)
{
	return (c >= 32 && c <= 126 && c != '"' && c != '\\') || c >= 0x80;
}

/* True if s[0..n) is a Dot-string: atoms of atext joined by single dots. */
static bool is_dot_string(const char *s, size_t n)
{
	if (n == 0 || s[0] == '.' || s[n - 1] == '.')
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '.') {
			if (s[i + 1] == '.')
				return false;
		} else if (!is_atext(c)) {
			return false;
		}
	}
	return true;
}

/* ---- path grammar ------------------------------------------------------- */

/* Parses a Domain at p.  Returns the end, or NULL on a grammar error. */
static const char *parse_domain_name(const char *p)
{
	for (;;) {
		const char *label = p;
		if (!is_letdig((unsigned char)*p))
			return NULL;
		while (is_letdig((unsigned char)*p) || *p == '-')
			p++;
		if (p[-1] == '-' || p - label > 63)
			return NULL;
		if (*p != '.')
			return p;
		p++;
	}
}

/* Parses an address-literal "[...]" at p (p[0] == '[').  Returns the end
 * (after ']') or NULL. */
static const char *parse_address_literal(const char *p)
{
	const char *start = p + 1;
	const char *close = start;
	while (*close != '\0' && *close != ']' && *close != '[' && *close != '\\')
		close++;
	if (*close != ']')
		return NULL;
	size_t n = (size_t)(close - start);
	char text[SMTP_DOMAIN_MAX + 1];
	if (n == 0 || n >= sizeof(text))
		return NULL;
	memcpy(text, start, n);
	text[n] = '\0';
	unsigned char addr[16];
	if (strncasecmp(text, "IPv6:", 5) == 0) {
		if (inet_pton(AF_INET6, text + 5, addr) != 1)
			return NULL;
	} else if (inet_pton(AF_INET, text, addr) != 1) {
		return NULL;
	}
	return close + 1;
}

/* Parses A-d-l ":" at p (p[0] == '@').  Returns the end or NULL. */
static const char *parse_source_route(const char *p)
{
	for (;;) {
		if (*p != '@')
			return NULL;
		p = parse_domain_name(p + 1);
		if (p == NULL)
			return NULL;
		if (*p == ':')
			return p + 1;
		if (*p != ',')
			return NULL;
		p++;
	}
}

/* Parses a Quoted-string at p (p[0] == '"'), appending its unescaped content
 * to content (capacity cap, always NUL-terminated).  Returns the end or NULL. */
static const char *parse_quoted(const char *p, char *content, size_t cap, size_t *clen)
{
	size_t n = 0;
	p++;
	for (;;) {
		unsigned char c = (unsigned char)*p;
		if (c == '"')
			break;
		if (c == '\\') {
			unsigned char e = (unsigned char)p[1];
			if (e < 32 || e > 126)
				return NULL;
			c = e;
			p++;
		} else if (!is_qtext(c)) {
			return NULL;
		}
		/* Past the buffer the scan goes on without storing: the local
		 * part is then longer than SMTP_LOCAL_MAX and rejected as such. */
		if (n + 1 < cap)
			content[n++] = (char)c;
		p++;
	}
	content[n] = '\0';
	*clen = n;
	return p + 1;
}

/* Writes the canonical local part into out (capacity cap): the dot-atom as
 * is, or a quoted string re-quoted with only '"' and '\\' escaped, or
 * unquoted when its content is itself a dot-string. */
static void canonical_local(const char *raw, size_t raw_len, bool quoted, const char *content,
			    size_t clen, struct buf *out)
{
	if (!quoted) {
		buf_append(out, raw, raw_len);
		return;
	}
	if (is_dot_string(content, clen)) {
		buf_append(out, content, clen);
		return;
	}
	buf_append_char(out, '"');
	for (size_t i = 0; i < clen; i++) {
		if (content[i] == '"' || content[i] == '\\')
			buf_append_char(out, '\\');
		buf_append_char(out, content[i]);
	}
	buf_append_char(out, '"');
}

struct path_scan {
	const char *local;      /* raw local part */
	size_t local_len;
	bool quoted;
	char content[SMTP_PATH_MAX + 1];
	size_t clen;
	const char *domain;     /* raw domain, NULL when absent */
	size_t domain_len;
	bool literal;
};

/* Scans "<...>" at p (p[0] == '<') into sc.  Returns the end or NULL with
 * *err set. */
static const char *scan_path(const char *p, struct path_scan *sc, enum smtp_perr *err)
{
	const char *q = p + 1;
	*err = SMTP_PE_BAD_ADDRESS;
	if (*q == '@') {
		q = parse_source_route(q);
		if (q == NULL)
			return NULL;
	}
	sc->local = q;
	if (*q == '"') {
		sc->quoted = true;
		q = parse_quoted(q, sc->content, sizeof(sc->content), &sc->clen);
		if (q == NULL)
			return NULL;
	} else {
		while (is_atext((unsigned char)*q) || *q == '.')
			q++;
		if (!is_dot_string(sc->local, (size_t)(q - sc->local)))
			return NULL;
	}
	sc->local_len = (size_t)(q - sc->local);
	if (*q == '@') {
		q++;
		sc->domain = q;
		if (*q == '[') {
			sc->literal = true;
			q = parse_address_literal(q);
		} else {
			q = parse_domain_name(q);
		}
		if (q == NULL)
			return NULL;
		sc->domain_len = (size_t)(q - sc->domain);
	}
	if (*q != '>')
		return NULL;
	q++;
	if ((size_t)(q - p) > SMTP_PATH_MAX || sc->local_len > SMTP_LOCAL_MAX ||
	    sc->domain_len > SMTP_DOMAIN_MAX) {
		*err = SMTP_PE_TOO_LONG;
		return NULL;
	}
	if (!smtp_utf8_valid(p, (size_t)(q - p)))
		return NULL;
	*err = SMTP_PE_OK;
	return q;
}

static bool has_non_ascii(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] >= 0x80)
			return true;
	return false;
}

/* Parses the path at p into out.  Returns the end or NULL with *err. */
static const char *parse_path(const char *p, bool rcpt, struct smtp_path *out, enum smtp_perr *err)
{
	memset(out, 0, sizeof(*out));
	if (*p != '<') {
		*err = SMTP_PE_SYNTAX;
		return NULL;
	}
	if (p[1] == '>') {
		*err = rcpt ? SMTP_PE_NULL_RCPT : SMTP_PE_OK;
		out->null = true;
		return rcpt ? NULL : p + 2;
	}
	struct path_scan sc;
	memset(&sc, 0, sizeof(sc));
	const char *end = scan_path(p, &sc, err);
	if (end == NULL)
		return NULL;
	struct buf canon = BUF_INIT;
	canonical_local(sc.local, sc.local_len, sc.quoted, sc.content, sc.clen, &canon);
	if (sc.domain == NULL) {
		bool pm = rcpt && str_ieq(canon.data, "postmaster");
		buf_free(&canon);
		if (!pm) {
			*err = SMTP_PE_UNQUALIFIED;
			return NULL;
		}
		out->postmaster = true;
		memcpy(out->addr, "postmaster", sizeof("postmaster"));
		out->local_len = strlen(out->addr);
		return end;
	}
	out->local_len = canon.len;
	buf_append_char(&canon, '@');
	buf_append(&canon, sc.domain, sc.domain_len);
	/* The canonical form is never longer than the path as sent. */
	if (canon.len >= sizeof(out->addr))
		panic("smtp parse_path: canonical address longer than the path");
	memcpy(out->addr, canon.data, canon.len + 1);
	buf_free(&canon);
	out->domain_literal = sc.literal;
	out->utf8 = has_non_ascii(p, (size_t)(end - p));
	return end;
}

/* Skips the "FROM:" / "TO:" keyword and the blanks Postfix tolerates after it. */
static const char *skip_keyword(const char *arg, const char *kw)
{
	size_t n = strlen(kw);
	if (strncasecmp(arg, kw, n) != 0)
		return NULL;
	arg += n;
	while (*arg == ' ')
		arg++;
	return arg;
}

/* ---- ESMTP parameters --------------------------------------------------- */

struct esmtp_param {
	const char *key;
	size_t key_len;
	const char *value;  /* NULL when absent */
	size_t value_len;
};

/* Scans one "keyword[=value]" at p.  Returns the end or NULL. */
static const char *scan_param(const char *p, struct esmtp_param *pa)
{
	memset(pa, 0, sizeof(*pa));
	pa->key = p;
	if (!is_alpha((unsigned char)*p) && !is_digit((unsigned char)*p))
		return NULL;
	while (is_alpha((unsigned char)*p) || is_digit((unsigned char)*p) || *p == '-')
		p++;
	pa->key_len = (size_t)(p - pa->key);
	if (*p == '=') {
		p++;
		pa->value = p;
		while ((unsigned char)*p >= 33 && (unsigned char)*p <= 126 && *p != '=')
			p++;
		pa->value_len = (size_t)(p - pa->value);
		if (pa->value_len == 0)
			return NULL;
	}
	if (*p != '\0' && *p != ' ')
		return NULL;
	return p;
}

static bool key_is(const struct esmtp_param *pa, const char *name)
{
	return pa->key_len == strlen(name) && strncasecmp(pa->key, name, pa->key_len) == 0;
}

static bool value_is(const struct esmtp_param *pa, const char *v)
{
	return pa->value_len == strlen(v) && strncasecmp(pa->value, v, pa->value_len) == 0;
}

static enum smtp_perr apply_size(const struct esmtp_param *pa, struct smtp_mail_params *mp)
{
	if (mp->size_given || pa->value == NULL || pa->value_len > 40)
		return SMTP_PE_BAD_PARAM;
	uint64_t v = 0;
	for (size_t i = 0; i < pa->value_len; i++) {
		unsigned char c = (unsigned char)pa->value[i];
		if (!is_digit(c))
			return SMTP_PE_BAD_PARAM;
		if (v > (UINT64_MAX - (c - '0')) / 10)
			v = UINT64_MAX;
		else if (v != UINT64_MAX)
			v = v * 10 + (c - '0');
	}
	mp->size_given = true;
	mp->size = v;
	return SMTP_PE_OK;
}

static bool is_upper_hex(unsigned char c)
{
	return is_digit(c) || (c >= 'A' && c <= 'F');
}

/* RFC 3461 4: xtext, "+" only as "+XX" (two upper-case hex digits); the
 * scanner already keeps "=" and blanks out of a value. */
static bool xtext_valid(const char *v, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		if (v[i] != '+')
			continue;
		if (i + 2 >= len || !is_upper_hex((unsigned char)v[i + 1]) ||
		    !is_upper_hex((unsigned char)v[i + 2]))
			return false;
		i += 2;
	}
	return true;
}

static enum smtp_perr apply_mail_param(const struct esmtp_param *pa, struct smtp_mail_params *mp)
{
	if (key_is(pa, "SIZE"))
		return apply_size(pa, mp);
	if (key_is(pa, "BODY")) {
		if (mp->body != SMTP_BODY_NONE || pa->value == NULL)
			return SMTP_PE_BAD_PARAM;
		if (value_is(pa, "7BIT"))
			mp->body = SMTP_BODY_7BIT;
		else if (value_is(pa, "8BITMIME"))
			mp->body = SMTP_BODY_8BITMIME;
		else
			return SMTP_PE_UNSUPPORTED_PARAM;
		return SMTP_PE_OK;
	}
	if (key_is(pa, "SMTPUTF8")) {
		if (mp->smtputf8 || pa->value != NULL)
			return SMTP_PE_BAD_PARAM;
		mp->smtputf8 = true;
		return SMTP_PE_OK;
	}
	if (key_is(pa, "AUTH")) {
		if (mp->auth_given || pa->value == NULL || !xtext_valid(pa->value, pa->value_len))
			return SMTP_PE_BAD_PARAM;
		mp->auth_given = true;
		return SMTP_PE_OK;
	}
	return SMTP_PE_UNSUPPORTED_PARAM;
}

/* Parses the parameter list at p (after the path).  Syntax errors win over
 * unsupported keywords so that the reply names the first real problem. */
static enum smtp_perr parse_params(const char *p, bool allow, struct smtp_mail_params *mp)
{
	if (*p != '\0' && *p != ' ')
		return SMTP_PE_SYNTAX;
	for (;;) {
		while (*p == ' ')
			p++;
		if (*p == '\0')
			return SMTP_PE_OK;
		struct esmtp_param pa;
		const char *end = scan_param(p, &pa);
		if (end == NULL)
			return SMTP_PE_BAD_PARAM;
		if (!allow || mp == NULL)
			return SMTP_PE_UNSUPPORTED_PARAM;
		enum smtp_perr e = apply_mail_param(&pa, mp);
		if (e != SMTP_PE_OK)
			return e;
		p = end;
	}
}

enum smtp_perr smtp_parse_mail(const char *arg, bool esmtp, struct smtp_path *path,
			       struct smtp_mail_params *params)
{
	memset(params, 0, sizeof(*params));
	memset(path, 0, sizeof(*path));
	const char *p = skip_keyword(arg, "FROM:");
	if (p == NULL)
		return SMTP_PE_SYNTAX;
	enum smtp_perr err;
	const char *end = parse_path(p, false, path, &err);
	if (end == NULL)
		return err;
	err = parse_params(end, esmtp, params);
	if (err != SMTP_PE_OK)
		return err;
	if (path->utf8 && !params->smtputf8)
		return SMTP_PE_UTF8_REQUIRED;
	return SMTP_PE_OK;
}

enum smtp_perr smtp_parse_rcpt(const char *arg, bool smtputf8, struct smtp_path *path)
{
	memset(path, 0, sizeof(*path));
	const char *p = skip_keyword(arg, "TO:");
	if (p == NULL)
		return SMTP_PE_SYNTAX;
	enum smtp_perr err;
	const char *end = parse_path(p, true, path, &err);
	if (end == NULL)
		return err;
	/* No RCPT parameter is advertised (no DSN), so any is unsupported. */
	err = parse_params(end, false, NULL);
	if (err != SMTP_PE_OK)
		return err;
	if (path->utf8 && !smtputf8)
		return SMTP_PE_UTF8_REQUIRED;
	return SMTP_PE_OK;
}

/* ---- BDAT --------------------------------------------------------------- */

bool smtp_parse_bdat(const char *arg, uint64_t *size, bool *last)
{
	const char *p = arg;
	uint64_t v = 0;
	if (!is_digit((unsigned char)*p))
		return false;
	for (; is_digit((unsigned char)*p); p++) {
		unsigned d = (unsigned)(*p - '0');
		if (v > (UINT64_MAX - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*last = false;
	if (*p == ' ') {
		while (*p == ' ')
			p++;
		if (strncasecmp(p, "LAST", 4) != 0)
			return false;
		p += 4;
		*last = true;
	}
	if (*p != '\0')
		return false;
	*size = v;
	return true;
}
