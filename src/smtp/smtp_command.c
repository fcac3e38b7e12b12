/*
 * smtp_command.c - one handler per SMTP verb, and the BDAT chunk replies.
 *
 * Contract: a handler runs for one complete command line, writes exactly
 * one reply (possibly multi-line, possibly held back by the tarpit) and may
 * change the session state (DATA, BDAT, STARTTLS, close).  Handlers never
 * free the session (see smtp_session.h).
 *
 * Reply codes: every reply except the banner and the HELO/EHLO greeting
 * carries an RFC 3463 enhanced status code.  Storage, quota, size and
 * shutdown replies come from core's status table; parse errors from
 * smtp_parser's table; bad message content from smtp_data's.  Sequence
 * errors are 503 5.5.1, unknown commands 500 5.5.2, argument syntax 501 5.5.4.
 *
 * Services: on SUBMISSION/SUBMISSIONS, MAIL needs a successful AUTH
 * (530 5.7.0) and a sender the user owns (smtp_auth.c); AUTH and its
 * EHLO keyword exist only there.  MX behaves as it always has.
 */
#include "smtp_session.h"

#include <stdio.h>
#include <string.h>

#include "metrics.h"

static void reply_perr(struct smtp_session *s, enum smtp_perr e, bool rcpt)
{
	const struct smtp_reply_code *r = smtp_perr_reply(e, rcpt);
	session_reply_error(s, M_SMTP_REJECT_SYNTAX, "%d %s %s", r->code, r->enh, r->text);
}

static void reply_status(struct smtp_session *s, enum status st, int metric)
{
	const struct status_info *si = status_info(st);
	session_reply_error(s, metric, "%d %s %s", si->smtp_code, si->smtp_enh, si->smtp_text);
}

static bool need_helo(struct smtp_session *s)
{
	if (s->helo_seen)
		return true;
	session_reply_error(s, -1, "503 5.5.1 Error: send HELO/EHLO first");
	return false;
}

static bool no_arg(struct smtp_session *s, const struct smtp_cmd *cmd, const char *syntax)
{
	if (cmd->arg_len == 0)
		return true;
	session_reply_error(s, M_SMTP_REJECT_SYNTAX, "501 5.5.4 Syntax: %s", syntax);
	return false;
}

/* Keeps printable ASCII that can appear in a domain or address literal;
 * anything else becomes '?', so the Received: header and logs stay sane. */
static void sanitize_helo(const char *in, size_t len, char *out, size_t cap)
{
	size_t n = 0;
	for (size_t i = 0; i < len && n + 1 < cap; i++) {
		unsigned char c = (unsigned char)in[i];
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
			  c == '.' || c == '-' || c == '_' || c == ':' || c == '[' || c == ']';
		out[n++] = ok ? (char)c : '?';
	}
	out[n] = '\0';
}

static void cmd_helo(struct smtp_session *s, const struct smtp_cmd *cmd, bool ehlo)
{
	if (cmd->arg_len == 0) {
		session_reply_error(s, M_SMTP_REJECT_SYNTAX, "501 5.5.4 Syntax: %s hostname",
				    ehlo ? "EHLO" : "HELO");
		return;
	}
	txn_reset(s, "EHLO/HELO during transaction");
	sanitize_helo(cmd->arg, cmd->arg_len, s->helo, sizeof(s->helo));
	s->helo_seen = true;
	s->esmtp = ehlo;
	if (!ehlo) {
		session_reply(s, "250 %s", s->set->hostname);
		return;
	}
	session_reply(s, "250-%s", s->set->hostname);
	session_reply(s, "250-PIPELINING");
	session_reply(s, "250-SIZE %llu", (unsigned long long)s->set->smtp_max_message_size);
	session_reply(s, "250-8BITMIME");
	session_reply(s, "250-ENHANCEDSTATUSCODES");
	if (s->w != NULL && s->w->tls != NULL && !s->tls)
		session_reply(s, "250-STARTTLS");
	if (auth_offered(s))
		session_reply(s, "250-AUTH PLAIN LOGIN");
	session_reply(s, "250-SMTPUTF8");
	session_reply(s, "250 CHUNKING");
}

static void cmd_mail(struct smtp_session *s, const struct smtp_cmd *cmd)
{
	if (!need_helo(s))
		return;
	if (s->txn.active) {
		session_reply_error(s, -1, "503 5.5.1 Error: nested MAIL command");
		return;
	}
	if (s->service != SMTP_SERVICE_MX && !s->authed) {
		session_reply_error(s, -1, "530 5.7.0 Authentication required");
		return;
	}
	struct smtp_path path;
	struct smtp_mail_params params;
	enum smtp_perr e = smtp_parse_mail(cmd->arg, s->esmtp, &path, &params);
	if (e != SMTP_PE_OK) {
		reply_perr(s, e, false);
		return;
	}
	if (params.auth_given && s->service == SMTP_SERVICE_MX) {
		/* AUTH is not offered on port 25: its parameter is as unknown as ever. */
		reply_perr(s, SMTP_PE_UNSUPPORTED_PARAM, false);
		return;
	}
	if (s->service != SMTP_SERVICE_MX && !auth_sender_allowed(s, &path))
		return;
	if (params.size_given && params.size > s->set->smtp_max_message_size) {
		reply_status(s, ST_TOO_BIG, M_SMTP_REJECT_SIZE);
		return;
	}
	txn_reset(s, NULL);
	s->txn.active = true;
	memcpy(s->txn.from, path.addr, sizeof(s->txn.from));
	s->txn.params = params;
	metric_inc(M_SMTP_TRANSACTIONS_TOTAL);
	session_reply(s, "250 2.1.0 Ok");
}

static void cmd_rcpt(struct smtp_session *s, const struct smtp_cmd *cmd)
{
	if (!need_helo(s))
		return;
	if (!s->txn.active) {
		session_reply_error(s, -1, "503 5.5.1 Error: need MAIL command");
		return;
	}
	if (s->txn.bdat) {
		session_reply_error(s, -1, "503 5.5.1 Error: RCPT after BDAT");
		return;
	}
	s->txn.rcpt_attempts++;
	struct smtp_path path;
	enum smtp_perr e = smtp_parse_rcpt(cmd->arg, s->txn.params.smtputf8, &path);
	if (e != SMTP_PE_OK) {
		reply_perr(s, e, true);
		return;
	}
	txn_rcpt(s, &path);
}

/* Common checks of DATA and BDAT: true if a message may start, else false
 * with the reply for the caller. */
static bool can_start_message(struct smtp_session *s, int *code, const char **enh, const char **text)
{
	*enh = "5.5.1";
	if (!s->helo_seen) {
		*code = 503;
		*text = "Error: send HELO/EHLO first";
	} else if (!s->txn.active) {
		*code = 503;
		*text = "Error: need MAIL command";
	} else if (s->txn.n_rcpts == 0 && s->txn.rcpt_attempts == 0) {
		*code = 503;
		*text = "Error: need RCPT command";
	} else if (s->txn.n_rcpts == 0) {
		*code = 554;
		*text = "Error: no valid recipients";
	} else {
		return true;
	}
	return false;
}

static void cmd_data(struct smtp_session *s, const struct smtp_cmd *cmd)
{
	if (!no_arg(s, cmd, "DATA"))
		return;
	if (s->txn.bdat) {
		session_reply_error(s, -1, "503 5.5.1 Error: DATA after BDAT");
		return;
	}
	int code;
	const char *enh, *text;
	if (!can_start_message(s, &code, &enh, &text)) {
		session_reply_error(s, -1, "%d %s %s", code, enh, text);
		return;
	}
	txn_begin_message(s, SMTP_DATA_DOT);
	s->state = SS_DATA;
	session_set_timeouts(s);
	session_reply(s, "354 End data with <CR><LF>.<CR><LF>");
}

static void cmd_bdat(struct smtp_session *s, const struct smtp_cmd *cmd)
{
	uint64_t size;
	bool last;
	if (!smtp_parse_bdat(cmd->arg, &size, &last)) {
		/* The chunk length is unknown: no way to find the next command. */
		metric_inc(M_SMTP_REJECT_SYNTAX);
		session_close_with(s, "bad BDAT syntax", "501 5.5.4 Syntax: BDAT <size> [LAST]");
		return;
	}
	s->bdat_left = size;
	s->bdat_size = size;
	s->bdat_last = last;
	s->bdat_discard = false;
	int code;
	const char *enh, *text;
	if (!can_start_message(s, &code, &enh, &text)) {
		s->bdat_discard = true;
		s->bdat_err_code = code;
		s->bdat_err_enh = enh;
		s->bdat_err_text = text;
	} else if (!s->txn.bdat) {
		txn_begin_message(s, SMTP_DATA_BDAT);
		s->txn.bdat = true;
	}
	s->state = SS_BDAT;
	session_set_timeouts(s);
	if (size == 0)
		command_bdat_chunk_done(s);
}

void command_bdat_chunk_done(struct smtp_session *s)
{
	s->state = SS_CMD;
	session_set_timeouts(s);
	if (s->bdat_discard) {
		s->bdat_discard = false;
		session_reply_error(s, -1, "%d %s %s", s->bdat_err_code, s->bdat_err_enh, s->bdat_err_text);
		return;
	}
	if (s->bdat_last) {
		txn_end_message(s);
		return;
	}
	int code, metric;
	const char *enh, *text;
	if (txn_failed(s, &code, &enh, &text, &metric)) {
		/* Tell the client now rather than after gigabytes more; the
		 * transaction is over (RFC 3030: the client must RSET). */
		txn_reject_message(s, code, enh, text);
		session_reply_error(s, metric, "%d %s %s", code, enh, text);
		return;
	}
	session_reply(s, "250 2.0.0 %llu octets received", (unsigned long long)s->bdat_size);
}

static void cmd_rset(struct smtp_session *s, const struct smtp_cmd *cmd)
{
	if (!no_arg(s, cmd, "RSET"))
		return;
	txn_reset(s, "RSET");
	session_reply(s, "250 2.0.0 Ok");
}

static void cmd_vrfy(struct smtp_session *s, const struct smtp_cmd *cmd)
{
	if (s->set->smtp_vrfy == VRFY_DISABLED) {
		session_reply_error(s, -1, "502 5.5.1 VRFY command is disabled");
		return;
	}
	if (cmd->arg_len == 0) {
		session_reply_error(s, M_SMTP_REJECT_SYNTAX, "501 5.5.4 Syntax: VRFY address");
		return;
	}
	session_reply(s, "252 2.5.0 Cannot VRFY user; try RCPT to attempt delivery");
}

static void cmd_starttls(struct smtp_session *s, const struct smtp_cmd *cmd)
{
	if (s->w == NULL || s->w->tls == NULL) {
		session_reply_error(s, -1, "502 5.5.1 Error: command not implemented");
		return;
	}
	if (!no_arg(s, cmd, "STARTTLS"))
		return;
	if (s->tls) {
		session_reply_error(s, -1, "503 5.5.1 Error: TLS already active");
		return;
	}
	if (s->txn.active) {
		session_reply_error(s, -1, "503 5.5.1 Error: MAIL transaction in progress");
		return;
	}
	session_reply(s, "220 2.0.0 Ready to start TLS");
	session_starttls(s);
}

static void cmd_quit(struct smtp_session *s)
{
	if (s->txn.active || s->txn.msg != NULL)
		txn_reset(s, "QUIT during transaction");
	session_reply(s, "221 2.0.0 Bye");
	session_close_after_flush(s);
}

static void dispatch(struct smtp_session *s, const struct smtp_cmd *cmd)
{
	switch (cmd->verb) {
	case SMTP_V_HELO: cmd_helo(s, cmd, false); break;
	case SMTP_V_EHLO: cmd_helo(s, cmd, true); break;
	case SMTP_V_MAIL: cmd_mail(s, cmd); break;
	case SMTP_V_RCPT: cmd_rcpt(s, cmd); break;
	case SMTP_V_DATA: cmd_data(s, cmd); break;
	case SMTP_V_BDAT: cmd_bdat(s, cmd); break;
	case SMTP_V_RSET: cmd_rset(s, cmd); break;
	case SMTP_V_NOOP: session_reply(s, "250 2.0.0 Ok"); break;
	case SMTP_V_QUIT: cmd_quit(s); break;
	case SMTP_V_HELP:
		session_reply(s, "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY%s%s",
			      s->w != NULL && s->w->tls != NULL && !s->tls ? " STARTTLS" : "",
			      auth_offered(s) ? " AUTH" : "");
		break;
	case SMTP_V_VRFY: cmd_vrfy(s, cmd); break;
	case SMTP_V_EXPN: session_reply_error(s, -1, "502 5.5.1 EXPN command is not supported"); break;
	case SMTP_V_STARTTLS: cmd_starttls(s, cmd); break;
	case SMTP_V_AUTH:
		if (s->service == SMTP_SERVICE_MX) {   /* no AUTH on port 25: as unknown as ever */
			session_reply_error(s, M_SMTP_REJECT_SYNTAX, "500 5.5.2 Error: command not recognized");
			break;
		}
		auth_command(s, cmd);
		break;
	case SMTP_V_EMPTY:
		session_reply_error(s, M_SMTP_REJECT_SYNTAX, "500 5.5.2 Error: bad syntax");
		break;
	case SMTP_V_UNKNOWN:
		session_reply_error(s, M_SMTP_REJECT_SYNTAX, "500 5.5.2 Error: command not recognized");
		break;
	}
}

void command_line(struct smtp_session *s, enum smtp_line_status st)
{
	if (s->sasl != SASL_NONE) {
		/* A SASL response, not a command; it still counts against
		 * smtp.max_commands. */
		s->commands++;
		if (++s->commands_budget > s->set->smtp_max_commands) {
			session_offence(s, GUARD_OFFENCE_COMMANDS);
			return;
		}
		auth_response(s, st);
		return;
	}
	if (st == SMTP_LINE_TOO_LONG) {
		session_reply_error(s, M_SMTP_REJECT_SYNTAX, "500 5.5.2 Line too long");
		return;
	}
	if (st == SMTP_LINE_NUL) {
		session_reply_error(s, M_SMTP_REJECT_SYNTAX, "500 5.5.2 Error: NUL character in command");
		return;
	}
	if (s->lr.line.data == NULL)
		buf_append(&s->lr.line, "", 0);   /* an empty line has no storage yet */
	if (s->commands == 0 && s->lr.line.len >= 6 && memcmp(s->lr.line.data, "PROXY ", 6) == 0) {
		/* A PROXY protocol header from an address not in
		 * guard.mx.proxy_from: a misconfigured balancer, or a client
		 * trying to choose its own address.  A protocol error. */
		session_close_with(s, "PROXY header from an untrusted address",
				   "421 4.7.0 %s Error: PROXY protocol not accepted from your address", s->set->hostname);
		return;
	}
	struct smtp_cmd cmd;
	smtp_cmd_parse(s->lr.line.data, s->lr.line.len, &cmd);
	s->commands++;
	if (++s->commands_budget > s->set->smtp_max_commands) {
		session_offence(s, GUARD_OFFENCE_COMMANDS);
		return;
	}
	if (!s->helo_seen && cmd.verb != SMTP_V_HELO && cmd.verb != SMTP_V_EHLO && cmd.verb != SMTP_V_QUIT &&
	    ++s->pre_helo > s->set->smtp_max_commands_before_helo) {
		session_offence(s, GUARD_OFFENCE_PRE_HELO);
		return;
	}
	dispatch(s, &cmd);
}
