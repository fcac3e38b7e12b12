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
/* The same on an open descriptor (not closed; any offset): a blob from
 * store_blob_open, which may be the memfd of a decompressed blob. */
enum status mime_parse_fd(int fd, uint64_t size, struct mime_summary *out, char **error_r);
void mime_summary_free(struct mime_summary *m);

/* ---- compact form (mime_pack.c) ------------------------------------------
 * The four fields of a summary as one byte string, for the index: BODY is
 * derived from BODYSTRUCTURE, the texts are kept as IMAP tokens with a
 * dictionary of common strings and references to repeated strings and
 * lists (docs/STORAGE.md, "MIME cache").  mime_unpack gives back exactly
 * the texts and part map that were packed. */
/* Appends the packed form to out.  Never fails (a text it cannot tokenise
 * is stored as it is). */
void mime_pack(const char *envelope, const char *bodystructure, const char *body, const uint8_t *parts,
	       size_t parts_len, struct buf *out);
/* Decodes a packed form into out (malloc'd fields: mime_summary_free).
 * False when data is not one (damaged or of an unknown version): out is
 * then empty and needs no free.  Output is bounded by the input size
 * times a constant, and at most 16 MiB per text. */
bool mime_unpack(const uint8_t *data, size_t len, struct mime_summary *out);

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

/* ---- decoding for SEARCH, SORT and THREAD (mime_decode.c) ---------------
 * Streaming decoders: each *_feed takes input in pieces of any size and
 * appends what it can decode to `out`; *_finish flushes what a cut input
 * left.  None of them fails: see mime_decode.c for the lenience rules.
 * Outputs are struct bufs (NUL-terminated past their length). */

/* Unicode simple case folding (CaseFolding.txt C+S) of one code point,
 * for ASCII, Latin-1, Latin Extended-A and Additional, Greek and
 * Cyrillic; any other code point is returned as it is. */
uint32_t mime_fold_char(uint32_t c);
/* Case-folds UTF-8 text.  Invalid bytes are copied unchanged; a sequence
 * cut between two pieces is completed by the next one. */
struct mime_fold {
	unsigned char pend[4];
	size_t n;
};
void mime_fold_init(struct mime_fold *f);
void mime_fold_feed(struct mime_fold *f, const char *in, size_t len, struct buf *out);
void mime_fold_finish(struct mime_fold *f, struct buf *out);
/* One-shot form: folds in[0, len) onto out. */
void mime_fold_str(const char *in, size_t len, struct buf *out);

/* Content-Transfer-Encoding decoders. */
enum mime_cte { MIME_CTE_IDENTITY = 0, MIME_CTE_BASE64, MIME_CTE_QP };
/* "base64" / "quoted-printable" (any case, white space around); anything
 * else is identity (7bit, 8bit, binary, unknown). */
enum mime_cte mime_cte_from_name(const char *name, size_t len);
struct mime_cte_decoder {
	enum mime_cte cte;
	uint32_t bits;            /* base64: bits not yet output */
	unsigned nbits;
	unsigned state;           /* quoted-printable: after "=", "=X", "=\r" */
	unsigned char hex;
};
void mime_cte_init(struct mime_cte_decoder *d, enum mime_cte cte);
void mime_cte_feed(struct mime_cte_decoder *d, const char *in, size_t len, struct buf *out);
void mime_cte_finish(struct mime_cte_decoder *d, struct buf *out);

/* charset -> UTF-8 with iconv.  `name` (len bytes, may be NULL) is a MIME
 * charset name; an RFC 2231 "*language" suffix is ignored.  UTF-8,
 * US-ASCII, a NULL name and any name iconv does not know pass bytes
 * through unchanged.  Never NULL; free with mime_charset_close. */
struct mime_charset;
struct mime_charset *mime_charset_open(const char *name, size_t len);
void mime_charset_feed(struct mime_charset *c, const char *in, size_t len, struct buf *out);
void mime_charset_finish(struct mime_charset *c, struct buf *out);
void mime_charset_close(struct mime_charset **c);

/* RFC 2047: appends header text in[0, len) to out with its encoded words
 * decoded to UTF-8 (B and Q, any iconv charset; white space between two
 * encoded words dropped, adjacent words of one charset converted as one
 * so a character split between them survives), line breaks unfolded and
 * tabs turned into spaces.  Not an encoded word: copied as it is. */
void mime_header_decode(const char *in, size_t len, struct buf *out);

/* The value of parameter `name` (case-insensitive) of a Content-Type or
 * Content-Disposition field value ("text/plain; charset=utf-8"): quoted
 * strings unquoted, RFC 2231 "name*" and "name*0", "name*1*" ... joined
 * and %-decoded (the charset'language' prefix dropped).  Appends it to
 * out; false when there is no such parameter. */
bool mime_param_get(const char *value, size_t len, const char *name, struct buf *out);

/* Header fields of a header block h[0, len): the next field at or after
 * *pos (advanced past it).  The value is raw (folded, with its line end).
 * Lines without a colon are skipped. */
struct mime_field {
	const char *name, *value;
	size_t name_len, value_len;
};
bool mime_header_next(const char *h, size_t len, size_t *pos, struct mime_field *f);

/* Streaming text extraction: raw message bytes in (any piece sizes), the
 * decoded UTF-8 text of its parts out through `fn`: the header of an
 * embedded message/rfc822 (decoded fields, one per line), text parts
 * (transfer encoding and charset decoded), and other parts that are not
 * base64 (as raw bytes); not multipart preambles and epilogues nor base64
 * non-text parts.  With MIME_TEXT_HEADER the message's own header comes
 * first.  fn(ctx, NULL, 0) marks the end of each header or part, so a
 * match never spans two of them.  Memory: MIME_SCAN_LINE_MAX +
 * MIME_SCAN_HEADER_MAX + the decoded output of one fed piece. */
#define MIME_TEXT_HEADER 1u
#define MIME_SCAN_LINE_MAX 1024u
#define MIME_SCAN_HEADER_MAX (64u * 1024u)
typedef void mime_text_fn(void *ctx, const char *utf8, size_t len);
struct mime_text_scan;
struct mime_text_scan *mime_text_scan_new(unsigned flags, mime_text_fn *fn, void *ctx);
void mime_text_scan_feed(struct mime_text_scan *s, const char *data, size_t len);
void mime_text_scan_finish(struct mime_text_scan *s);
void mime_text_scan_free(struct mime_text_scan **s);

/* RFC 5322 date-time ("[Day, ] DD Mon YYYY hh:mm[:ss] zone", with the
 * obsolete forms: two-digit years, named and military zones, comments):
 * the instant as unix time and the zone offset in minutes (the local
 * calendar date is (utc + zone * 60) / 86400).  A missing time is
 * midnight, a missing or unknown zone +0000.  False when there is no
 * day, month and year. */
bool mime_date_parse(const char *value, size_t len, int64_t *utc_r, int *zone_r);

/* RFC 5256 section 2.1 base subject of a raw Subject value: RFC 2047
 * decoded, white space collapsed, "Re:", "Fw:", "Fwd:" (with [blob]s),
 * "(fwd)" trailers, leading [blob]s and "[fwd: ...]" removed.  Appends it
 * to out; *is_reply_r (may be NULL) tells whether a reply or forward
 * marker was removed (THREAD REFERENCES step 5). */
void mime_base_subject(const char *raw, size_t len, struct buf *out, bool *is_reply_r);

/* The first mailbox of an RFC 5322 address list (groups are looked into;
 * comments dropped, quoted strings unquoted): its display name (RFC 2047
 * decoded, "" when none), local part and domain ("" when none).  The
 * caller initialises the bufs (BUF_INIT) and frees them; they are reset
 * first.  False when the list has no mailbox. */
struct mime_address {
	struct buf display, mailbox, host;
};
bool mime_first_address(const char *value, size_t len, struct mime_address *out);

/* The next "<id>" of a Message-ID, References or In-Reply-To value at or
 * after *pos: the id without its brackets and white space into out (reset
 * first).  Empty ids and ids longer than MIME_MSGID_MAX are skipped. */
#define MIME_MSGID_MAX 998u
bool mime_msgid_next(const char *value, size_t len, size_t *pos, struct buf *out);

/* A key for sorting text the way RFC 5051's i;unicode-casemap orders it,
 * compared byte by byte: simple case folding, the canonical decomposition
 * of precomposed Latin-1, Latin Extended-A, Greek and Cyrillic letters
 * ("\xC3\xA9" becomes "E" U+0301), and ASCII letters in upper case (the
 * titlecase of i;unicode-casemap, the upper case of i;ascii-casemap).
 * Appends it to out. */
void mime_sort_key(const char *in, size_t len, struct buf *out);

#endif
