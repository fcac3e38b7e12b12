/*
 * relay_bounce.c - delivery status notifications (RFC 3464) for outbound
 * mail that failed for good, stored in the sender's INBOX.
 *
 * Owns: the DSN text and its local delivery.
 *
 * A DSN is a multipart/report; report-type=delivery-status message
 * (RFC 6522) of three parts: a human-readable explanation, the
 * message/delivery-status part (per-message fields, then one block per
 * failed recipient: Final-Recipient, Action: failed, Status, Remote-MTA,
 * Diagnostic-Code, Last-Attempt-Date), and the original message's header
 * (text/rfc822-headers, at most BOUNCE_HEADER_MAX bytes: a bounce never
 * carries a large body back).  It goes out with the null reverse-path in
 * mind: Auto-Submitted: auto-replied (RFC 3834), and the relay never
 * bounces mail whose sender is null, so bounces cannot loop.
 *
 * Delivery: submission senders are local (an account or an alias reaching
 * one), so the DSN is delivered like inbound mail: the sender's address is
 * resolved through accounts and aliases, the blob is written as the queue
 * writes one (temp file, trailer, fsync, rename, directory fsync) and
 * committed with store_commit_deliveries to each account's INBOX.  On any
 * failure the blob is removed, unless the index commit failed with an I/O
 * error (it may still be replayed from the WAL: queue_commit.c explains).
 * A sender that is not local cannot be reached: ST_NOT_FOUND.
 *
 * Text from remote servers is untrusted: it is cut to RELAY_REPLY_MAX
 * bytes, and every byte outside printable ASCII becomes '?'.
 *
 * Threads: any delivery thread, with its own store handle and reader.
 */
#include "relay_int.h"

#include <errno.h>
#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BOUNCE_HEADER_MAX (64u * 1024)
#define BOUNCE_DIAG_MAX 900            /* a header line stays below 998 bytes */
#define BOUNCE_DIR_MODE 0750

/* Appends text with every byte outside printable ASCII as '?', cut at max. */
static void append_safe(struct buf *out, const char *text, size_t max)
{
	for (size_t i = 0; text[i] != '\0' && i < max; i++) {
		unsigned char c = (unsigned char)text[i];
		buf_append_char(out, c >= 0x20 && c < 0x7f ? (char)c : '?');
	}
}

/* RFC 3464 2.1.2 / RFC 6533: "rfc822; addr" for ASCII, "utf-8; addr" else. */
static void append_address_field(struct buf *out, const char *name, const char *addr)
{
	bool ascii = true;
	for (const char *p = addr; *p; p++)
		ascii = ascii && (unsigned char)*p < 0x80 && (unsigned char)*p >= 0x20;
	buf_printf(out, "%s: %s; ", name, ascii ? "rfc822" : "utf-8");
	if (ascii)
		buf_append_str(out, addr);
	else
		append_safe(out, addr, 320); /* control bytes never reach a header */
	buf_append_str(out, "\r\n");
}

/* The original's header (up to the empty line), at most BOUNCE_HEADER_MAX. */
static void append_original_header(struct buf *out, int fd, uint64_t size)
{
	size_t want = size < BOUNCE_HEADER_MAX ? (size_t)size : BOUNCE_HEADER_MAX;
	char *h = xmalloc(want + 1);
	ssize_t n = want > 0 ? pread(fd, h, want, 0) : 0;
	if (n <= 0) {
		free(h);
		return;
	}
	size_t len = (size_t)n;
	for (size_t i = 0; i + 1 < len; i++) {
		if (h[i] == '\n' && (h[i + 1] == '\n' || (h[i + 1] == '\r' && i + 2 < len && h[i + 2] == '\n'))) {
			len = i + 1;
			break;
		}
	}
	buf_append(out, h, len);
	if (len > 0 && h[len - 1] != '\n')
		buf_append_str(out, "\r\n");
	free(h);
}

void relay_bounce_compose(const struct settings *s, const struct relay_bounce_msg *m, int64_t now,
			  struct buf *out)
{
	struct msgid bid;
	msgid_new(&bid);
	char bidtext[MSGID_TEXT_LEN + 1], qid[MSGID_TEXT_LEN + 1], date[64], arrival[64];
	msgid_format(&bid, bidtext);
	msgid_format(&m->id, qid);
	time_rfc5322(now, date, sizeof(date));
	time_rfc5322(m->received, arrival, sizeof(arrival));
	char boundary[64];
	snprintf(boundary, sizeof(boundary), "=_strata-dsn-%s", bidtext);

	buf_printf(out, "From: Mail Delivery System <MAILER-DAEMON@%s>\r\n", s->hostname);
	buf_append_str(out, "To: <");
	append_safe(out, m->sender, 320);
	buf_printf(out, ">\r\nSubject: Undelivered Mail Returned to Sender\r\nDate: %s\r\n"
			"Message-ID: <%s.dsn@%s>\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
			"Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"%s\"\r\n\r\n"
			"This is a MIME-encapsulated message.\r\n\r\n",
		   date, bidtext, s->hostname, boundary);

	/* 1: for people */
	buf_printf(out, "--%s\r\nContent-Description: Notification\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
			"This is the mail system at host %s.\r\n\r\n"
			"Your message %s could not be delivered to one or more recipients.\r\n"
			"It is attached below (its header only).\r\n\r\n",
		   boundary, s->hostname, qid);
	for (size_t i = 0; i < m->n_failed; i++) {
		const struct relay_rcpt *r = m->failed[i];
		buf_append_char(out, '<');
		append_safe(out, r->address, 320);
		buf_append_str(out, ">: ");
		append_safe(out, r->reply, BOUNCE_DIAG_MAX);
		buf_append_str(out, "\r\n\r\n");
	}

	/* 2: for programs (RFC 3464 2.2, 2.3) */
	buf_printf(out, "--%s\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n"
			"Reporting-MTA: dns; %s\r\nX-Strata-Queue-ID: %s\r\nArrival-Date: %s\r\n",
		   boundary, s->hostname, qid, arrival);
	for (size_t i = 0; i < m->n_failed; i++) {
		const struct relay_rcpt *r = m->failed[i];
		buf_append_str(out, "\r\n");
		append_address_field(out, "Final-Recipient", r->address);
		buf_printf(out, "Action: failed\r\nStatus: ");
		append_safe(out, r->dsn[0] != '\0' ? r->dsn : "5.0.0", sizeof(r->dsn));
		buf_append_str(out, "\r\n");
		if (m->remote_mta[0] != '\0' && r->code != 0) {
			buf_append_str(out, "Remote-MTA: dns; ");
			append_safe(out, m->remote_mta, RELAY_DOMAIN_MAX);
			buf_append_str(out, "\r\n");
		}
		buf_append_str(out, r->code != 0 ? "Diagnostic-Code: smtp; " : "Diagnostic-Code: X-Strata; ");
		append_safe(out, r->reply, BOUNCE_DIAG_MAX);
		buf_printf(out, "\r\nLast-Attempt-Date: %s\r\n", date);
	}

	/* 3: the original's header */
	if (m->fd >= 0) {
		buf_printf(out, "\r\n--%s\r\nContent-Description: Undelivered Message Headers\r\n"
				"Content-Type: text/rfc822-headers\r\n\r\n", boundary);
		append_original_header(out, m->fd, m->size);
	}
	buf_printf(out, "\r\n--%s--\r\n", boundary);
}

/* ---- local delivery ---------------------------------------------------------- */

/* Writes the blob durably at its final path; false with errno. */
static bool bounce_write_blob(const struct settings *s, const struct msgid *id, const struct buf *msg,
			      const struct rcpt_resolution *res, int64_t now, char *final, size_t final_len)
{
	char tmpdir[PATH_MAX], tmp[PATH_MAX], dir[PATH_MAX];
	snprintf(tmpdir, sizeof(tmpdir), "%s/tmp", s->store_blob_dir);
	if (!fs_mkdir_p(tmpdir, BOUNCE_DIR_MODE))
		return false;
	int fd = fs_open_temp(tmpdir, tmp, sizeof(tmp));
	if (fd < 0)
		return false;
	uint8_t h[32];
	crypto_generichash(h, sizeof(h), (const unsigned char *)msg->data, msg->len, NULL, 0);
	struct blob_meta meta;
	memset(&meta, 0, sizeof(meta));
	meta.id = *id;
	meta.received = now;
	meta.size = msg->len;
	sodium_bin2hex(meta.hash_hex, sizeof(meta.hash_hex), h, sizeof(h));
	meta.n_rcpts = res->n;
	meta.rcpt_addresses = (char (*)[320])res->addresses;
	struct buf t = BUF_INIT;
	store_blob_trailer(&meta, &t);
	bool ok = fs_write_all(fd, msg->data, msg->len) && fs_write_all(fd, t.data, t.len) &&
		  (!s->store_fsync || fs_fsync(fd));
	buf_free(&t);
	int e = errno;
	if (!fs_close(fd) && ok) {
		ok = false;
		e = errno;
	}
	store_blob_dir_of(s->store_blob_dir, id, dir, sizeof(dir));
	store_blob_path(s->store_blob_dir, id, final, final_len);
	if (ok && !fs_mkdir_p(dir, BOUNCE_DIR_MODE)) {
		ok = false;
		e = errno;
	}
	if (ok && (s->store_fsync ? !fs_rename_durable(tmp, final) : rename(tmp, final) != 0)) {
		ok = false;
		e = errno;
		unlink(final); /* a rename that happened before its directory fsync failed */
	}
	if (!ok) {
		unlink(tmp);
		errno = e;
	}
	return ok;
}

enum status relay_bounce_send(const struct settings *s, struct store *st, struct store_reader *reader,
			      const struct relay_bounce_msg *m, char **error_r)
{
	char addr[320];
	snprintf(addr, sizeof(addr), "%s", m->sender);
	str_lower(addr);
	struct rcpt_resolution *res = xcalloc(1, sizeof(*res));
	enum status rs = store_resolve_rcpt(reader, addr, 0, res);
	if (rs != ST_OK) {
		free(res);
		*error_r = xasprintf("sender <%s> is not a local address (%s)", addr, status_info(rs)->name);
		return rs == ST_NOT_FOUND || rs == ST_INVALID ? ST_NOT_FOUND : rs;
	}
	int64_t now = (int64_t)(time_wall_ms() / 1000);
	struct buf msg = BUF_INIT;
	relay_bounce_compose(s, m, now, &msg);
	struct msgid id;
	msgid_new(&id);
	char final[PATH_MAX];
	if (!bounce_write_blob(s, &id, &msg, res, now, final, sizeof(final))) {
		int e = errno;
		buf_free(&msg);
		free(res);
		*error_r = xasprintf("writing the bounce: %s", strerror(e));
		return status_from_errno(e) != ST_OK ? status_from_errno(e) : ST_IO_ERROR;
	}
	uint32_t uids[STORE_MAX_EXPANSION];
	struct store_delivery d = {
		.id = id,
		.received = now,
		.size = msg.len,
		.n_accounts = res->n,
		.account_ids = res->account_ids,
		.status = ST_OK,
		.uids = uids,
	};
	struct store_delivery *dp = &d;
	enum status ret = store_commit_deliveries(st, &dp, 1);
	enum status out = ret != ST_OK ? ret : d.status;
	if (out != ST_OK) {
		if (ret != ST_IO_ERROR && unlink(final) != 0 && errno != ENOENT)
			log_error("relay: cannot remove unused bounce blob %s: %s", final, strerror(errno));
		*error_r = xasprintf("storing the bounce: %s", status_info(out)->name);
	}
	buf_free(&msg);
	free(res);
	return out;
}
