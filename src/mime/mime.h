/*
 * mime.h - the MIME structure of a stored message, in IMAP's terms.
 *
 * Owns: turning the raw bytes of one message (RFC 5322 + MIME, as kept in
 * a blob) into what IMAP FETCH serves without looking at the message again:
 *   - the ENVELOPE text, e.g. ("Sat, 28 Nov ..." "subject" ((...)) ...),
 *   - the BODYSTRUCTURE text (with extension data),
 *   - the BODY text (the non-extensible form),
 *   - a part map: for every part, its section number ("1", "1.2", ...) and
 *     the byte offsets of its MIME header, body start and body end in the
 *     raw message, so BODY[1.2], BODY[1.2.MIME], BODY[2.HEADER] and
 *     BODY[2.TEXT] are byte ranges of the blob.
 * The texts are complete IMAP syntax (RFC 3501 section 9 / RFC 9051),
 * ready to be written after "ENVELOPE ", "BODYSTRUCTURE " or "BODY ".
 *
 * Semantics (RFC 3501 7.4.2, with Dovecot's choices where it is silent):
 *  - ENVELOPE strings are the raw header text, unfolded and trimmed; RFC
 *    2047 encoded words are passed through, not decoded.  Sender and
 *    Reply-To default to From.  Address names keep their encoded words;
 *    a mailbox without a domain gets host "MISSING_DOMAIN", groups are
 *    (NIL NIL "name" NIL) ... (NIL NIL NIL NIL).
 *  - BODYSTRUCTURE parameters are given as in the header (values
 *    unquoted), except RFC 2231 continuations (name*0, name*1*, ...) which
 *    are joined into one parameter, as Dovecot does: named "name*" with the
 *    charset'language'%XX value when any piece was extended (plain pieces
 *    %-encoded, a plain piece 0 prefixed with "''"), "name" otherwise.
 *    Pieces without a piece 0 or after a gap are kept as sent.  Tokens
 *    (types, subtypes, parameter names, encoding, disposition type) are
 *    lower-cased.
 *  - A part without Content-Type is text/plain ("charset" "us-ascii") (or
 *    message/rfc822 inside multipart/digest); an unparsable Content-Type,
 *    a multipart without a boundary parameter, or one nested deeper than
 *    MIME_MAX_DEPTH is text/plain too.  A multipart whose boundary never
 *    appears has one empty text/plain part (the grammar needs one).
 *  - Sizes are octets of the raw body; the line ending before a boundary
 *    belongs to the boundary.  Lines = LF count, plus one for a final
 *    line without LF (so a part "Hi" before its boundary has 1 line;
 *    Dovecot, counting LFs only, says 0).
 *  - Extension data is always complete: md5, disposition, language (one
 *    tag as a string, several as a list), location.
 *  - Header bytes are sanitised for IMAP strings: NUL dropped, bare CR/LF
 *    become spaces; 8-bit text is sent as a literal.
 *
 * Limits: MIME_MAX_DEPTH nesting levels, MIME_MAX_PARTS parts; any input,
 * however broken, gives a structure (never an error) and the work is
 * linear in the message size times the nesting depth.
 *
 * Threads: no shared state; every function may run on any thread.  The
 * work is CPU only except mime_parse_file (one mmap of the file).
 */
#ifndef STRATA_MIME_H
#define STRATA_MIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"

#define MIME_MAX_DEPTH 32
#define MIME_MAX_PARTS 2000
#define MIME_SECTION_MAX 128      /* longest section text "1.2.3..." */

/* The computed summary of one message.  Every field is malloc'd and owned
 * by the struct; texts are NUL-terminated and contain no NUL. */
struct mime_summary {
	char *envelope;
	char *bodystructure;
	char *body;
	uint8_t *parts;           /* encoded part map (mime_part_find reads it) */
	size_t parts_len;
};

/* Parses `len` bytes of a message in memory.  Never fails. */
void mime_parse_mem(const char *data, size_t len, struct mime_summary *out);
/* Parses the first `size` bytes of a file (a blob: its trailer is past
 * `size`).  ST_IO_ERROR / ST_NOT_FOUND when the file cannot be mapped;
 * *error_r then describes it. */
enum status mime_parse_file(const char *path, uint64_t size, struct mime_summary *out, char **error_r);
void mime_summary_free(struct mime_summary *m);

/* One entry of the part map.  Ranges are [start, end) of the raw message. */
struct mime_part {
	uint64_t header_start;    /* the part's MIME header (BODY[n.MIME]) */
	uint64_t body_start;      /* = header end; the part's body (BODY[n]) */
	uint64_t body_end;
	bool is_message;          /* message/rfc822: n.HEADER and n.TEXT exist */
	uint64_t text_start;      /* is_message: the embedded message's body
				   * start (its header is [body_start, text_start)) */
};
/* Looks up `section` ("1", "2.1", ...: the numeric part only) in an encoded
 * part map.  False when there is no such part or the map is damaged. */
bool mime_part_find(const uint8_t *parts, size_t len, const char *section, struct mime_part *out);

#endif
