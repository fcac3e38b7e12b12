/*
 * core_status.c - the single table from internal status to client replies.
 *
 * A full disk is 452 4.3.1 in SMTP and NO [UNAVAILABLE] in IMAP because this
 * table says so; no protocol module invents its own codes for these cases.
 */
#include "core.h"

#include <errno.h>

static const struct status_info table[ST__COUNT] = {
	[ST_OK] = { "ok", 250, "2.0.0", "OK", NULL },
	[ST_TEMPFAIL] = { "tempfail", 451, "4.3.0", "Local error in processing, try again later", "UNAVAILABLE" },
	[ST_NO_SPACE] = { "no_space", 452, "4.3.1", "Insufficient system storage, try again later", "UNAVAILABLE" },
	[ST_IO_ERROR] = { "io_error", 451, "4.3.0", "Local I/O error, try again later", "UNAVAILABLE" },
	[ST_OVER_QUOTA_TEMP] = { "over_quota", 452, "4.2.2", "Mailbox full, try again later", "OVERQUOTA" },
	[ST_OVER_QUOTA_PERM] = { "over_quota", 552, "5.2.2", "Mailbox full", "OVERQUOTA" },
	[ST_TOO_BIG] = { "too_big", 552, "5.3.4", "Message size exceeds fixed limit", "TOOBIG" },
	[ST_NOT_FOUND] = { "not_found", 550, "5.1.1", "No such user here", "NONEXISTENT" },
	[ST_EXISTS] = { "exists", 550, "5.0.0", "Already exists", "ALREADYEXISTS" },
	[ST_INVALID] = { "invalid", 501, "5.5.4", "Invalid arguments", "CLIENTBUG" },
	[ST_SHUTDOWN] = { "shutdown", 421, "4.3.2", "Service shutting down, try again later", "UNAVAILABLE" },
	[ST_DB_BUSY] = { "db_busy", 451, "4.3.0", "Index busy, try again later", "INUSE" },
};

const struct status_info *status_info(enum status st)
{
	if ((unsigned)st >= ST__COUNT)
		panic("status_info: bad status %d", (int)st);
	return &table[st];
}

enum status status_from_errno(int err)
{
	switch (err) {
	case 0:
		return ST_OK;
	case ENOSPC:
	case EDQUOT:
		return ST_NO_SPACE;
	case EIO:
	case EROFS:
		return ST_IO_ERROR;
	default:
		return ST_TEMPFAIL;
	}
}
