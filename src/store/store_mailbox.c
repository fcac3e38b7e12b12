/*
 * store_mailbox.c - mailboxes: the default set, UIDVALIDITY, listing.
 *
 * Owns: creation of a new account's mailboxes, the UIDVALIDITY counter, and
 * the read functions used by `strata mail` (later IMAP): mailbox list,
 * message list, message blob path.
 *
 * UIDVALIDITY: every mailbox ever created gets the next value of one counter
 * kept in meta('next_uidvalidity'), which started at the unix time the index
 * was created.  A mailbox deleted and created again under the same name
 * (also through a user deleted and added again) therefore never reuses a
 * UIDVALIDITY, so an IMAP client can never confuse its cached UIDs with the
 * new mailbox's.  The counter is 32 bits (RFC 3501); it lasts for more than
 * two billion mailbox creations.
 *
 * A new mailbox has uidnext 1 and highestmodseq 1 (RFC 7162 mod-sequences
 * are positive; each delivery or change increments highestmodseq and takes
 * the new value as the message's modseq).
 *
 * Thread: the writer's.  List callbacks run while a statement is active and
 * must not use the same store handle.
 */
#include "store_internal.h"

#include <stdio.h>
#include <string.h>

static const struct {
	const char *name;
	const char *special_use; /* RFC 6154 attribute, NULL for INBOX */
} default_mailboxes[] = {
	{ "INBOX", NULL },
	{ "Sent", "\\Sent" },
	{ "Drafts", "\\Drafts" },
	{ "Trash", "\\Trash" },
	{ "Junk", "\\Junk" },
	{ "Archive", "\\Archive" },
};

/* Takes `count` consecutive UIDVALIDITY values; the first in *first_r. */
static enum status reserve_uidvalidity(struct store *st, uint32_t count, uint32_t *first_r,
				       char **error_r)
{
	sqlite3_stmt *q = st->q[Q_UIDV_RESERVE];
	sqlite3_bind_int64(q, 1, count);
	int rc = sqlite3_step(q);
	enum status s = ST_OK;
	if (rc == SQLITE_ROW) {
		int64_t first = sqlite3_column_int64(q, 0);
		if (first < 1 || first > (int64_t)UINT32_MAX - count + 1) {
			s = ST_TEMPFAIL;
			if (error_r)
				*error_r = xasprintf("UIDVALIDITY counter exhausted (%lld)", (long long)first);
		} else {
			*first_r = (uint32_t)first;
		}
	} else if (rc == SQLITE_DONE) {
		s = ST_TEMPFAIL;
		if (error_r)
			*error_r = xstrdup("index damaged: meta has no next_uidvalidity");
	} else {
		s = store_db_fail(st->db, rc, "reserving UIDVALIDITY", error_r);
	}
	store_db_reset(q);
	return s;
}

enum status store_mailbox_create_defaults(struct store *st, int64_t account_id, char **error_r)
{
	uint32_t uidv = 0;
	enum status s = reserve_uidvalidity(st, ARRAY_LEN(default_mailboxes), &uidv, error_r);
	sqlite3_stmt *q = st->q[Q_MAILBOX_INSERT];
	for (size_t i = 0; s == ST_OK && i < ARRAY_LEN(default_mailboxes); i++) {
		sqlite3_bind_int64(q, 1, account_id);
		sqlite3_bind_text(q, 2, default_mailboxes[i].name, -1, SQLITE_STATIC);
		if (default_mailboxes[i].special_use)
			sqlite3_bind_text(q, 3, default_mailboxes[i].special_use, -1, SQLITE_STATIC);
		sqlite3_bind_int64(q, 4, (int64_t)uidv + (int64_t)i);
		int rc = sqlite3_step(q);
		if (rc != SQLITE_DONE)
			s = store_db_fail(st->db, rc, "creating mailboxes", error_r);
		store_db_reset(q);
	}
	return s;
}

/* Resolves address and mailbox name to ids.  NULL or any case of "INBOX"
 * names the INBOX; other names are case-sensitive (RFC 3501). */
static enum status mailbox_ids(struct store *st, const char *address, const char *mailbox,
			       int64_t *account_id_r, int64_t *mailbox_id_r)
{
	char addr[STORE_ADDRESS_MAX + 1];
	if (!store_addr_address(address, addr, NULL))
		return ST_INVALID;
	enum status s = store_account_id(st, addr, account_id_r, NULL);
	if (s != ST_OK || mailbox_id_r == NULL)
		return s;
	if (mailbox == NULL || str_ieq(mailbox, "INBOX"))
		mailbox = "INBOX";
	sqlite3_stmt *q = st->q[Q_MAILBOX_ID];
	sqlite3_bind_int64(q, 1, *account_id_r);
	sqlite3_bind_text(q, 2, mailbox, -1, SQLITE_STATIC);
	int rc = sqlite3_step(q);
	if (rc == SQLITE_ROW) {
		*mailbox_id_r = sqlite3_column_int64(q, 0);
	} else if (rc == SQLITE_DONE) {
		s = ST_NOT_FOUND;
	} else {
		log_error("store: mailbox lookup: %s", sqlite3_errmsg(st->db));
		s = store_db_status(rc);
	}
	store_db_reset(q);
	return s;
}

static enum status finish_list(struct store *st, sqlite3_stmt *q, int rc, const char *what)
{
	enum status s = ST_OK;
	if (rc != SQLITE_DONE) {
		log_error("store: %s: %s", what, sqlite3_errmsg(st->db));
		s = store_db_status(rc);
	}
	store_db_reset(q);
	return s;
}

enum status store_mailbox_list(struct store *st, const char *address, store_mailbox_cb *cb, void *ctx)
{
	int64_t account_id;
	enum status s = mailbox_ids(st, address, NULL, &account_id, NULL);
	if (s != ST_OK)
		return s;
	sqlite3_stmt *q = st->q[Q_MAILBOX_LIST];
	sqlite3_bind_int64(q, 1, account_id);
	int rc;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		const unsigned char *name = sqlite3_column_text(q, 0);
		const unsigned char *special = sqlite3_column_text(q, 1);
		cb(ctx, name ? (const char *)name : "", (const char *)special,
		   (uint32_t)sqlite3_column_int64(q, 2), (uint32_t)sqlite3_column_int64(q, 3),
		   store_db_column_u64(q, 4));
	}
	return finish_list(st, q, rc, "listing mailboxes");
}

static bool column_msgid(sqlite3_stmt *q, int col, struct msgid *id)
{
	const void *b = sqlite3_column_blob(q, col);
	if (b == NULL || sqlite3_column_bytes(q, col) != MSGID_BYTES)
		return false;
	memcpy(id->b, b, MSGID_BYTES);
	return true;
}

enum status store_mailbox_list_messages(struct store *st, const char *address, const char *mailbox,
					store_message_cb *cb, void *ctx)
{
	int64_t account_id, mailbox_id;
	enum status s = mailbox_ids(st, address, mailbox, &account_id, &mailbox_id);
	if (s != ST_OK)
		return s;
	sqlite3_stmt *q = st->q[Q_MESSAGE_LIST];
	sqlite3_bind_int64(q, 1, mailbox_id);
	int rc;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		struct message_row m = { .mailbox_id = mailbox_id };
		m.uid = (uint32_t)sqlite3_column_int64(q, 0);
		if (!column_msgid(q, 1, &m.id))
			continue; /* impossible by the CHECK constraint; never hand out garbage */
		m.size = store_db_column_u64(q, 2);
		m.received = sqlite3_column_int64(q, 3);
		m.flags = (uint32_t)sqlite3_column_int64(q, 4);
		m.modseq = store_db_column_u64(q, 5);
		cb(ctx, &m);
	}
	return finish_list(st, q, rc, "listing messages");
}

enum status store_message_path(struct store *st, const char *address, const char *mailbox,
			       uint32_t uid, char *path, size_t pathlen, uint64_t *size_r)
{
	int64_t account_id, mailbox_id;
	enum status s = mailbox_ids(st, address, mailbox, &account_id, &mailbox_id);
	if (s != ST_OK)
		return s;
	sqlite3_stmt *q = st->q[Q_MESSAGE_BLOB];
	sqlite3_bind_int64(q, 1, mailbox_id);
	sqlite3_bind_int64(q, 2, uid);
	int rc = sqlite3_step(q);
	struct msgid id;
	if (rc == SQLITE_ROW) {
		int64_t tier = sqlite3_column_int64(q, 2);
		if (!column_msgid(q, 0, &id) || tier < 0 || (uint64_t)tier >= st->s->n_tiers) {
			log_error("store: message %u of %s has a blob on tier %lld, which is not configured",
				  uid, address, (long long)tier);
			s = ST_TEMPFAIL;
		} else {
			if (size_r)
				*size_r = store_db_column_u64(q, 1);
			/* The copy that exists now (a move may be in flight). */
			store_blob_find(st->s, (unsigned)tier, &id, path, pathlen);
		}
	} else if (rc == SQLITE_DONE) {
		s = ST_NOT_FOUND;
	} else {
		log_error("store: message lookup: %s", sqlite3_errmsg(st->db));
		s = store_db_status(rc);
	}
	store_db_reset(q);
	return s;
}
