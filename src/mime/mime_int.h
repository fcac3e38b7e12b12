/*
 * mime_int.h - private to src/mime: the part tree shared by
 *   mime_parse.c     header scan, boundary scan, Content-* field parsing
 *   mime_envelope.c  ENVELOPE and RFC 5322 address lists, IMAP strings
 *   mime_write.c     BODYSTRUCTURE / BODY text and the part map
 *
 * The tree points into the raw message (slices), which must outlive it.
 * Every node is freed by mime_tree_free.
 */
#ifndef STRATA_MIME_INT_H
#define STRATA_MIME_INT_H

#include "mime.h"

/* A slice of the raw message (a header value with its folding). */
struct mslice {
	const char *p;
	size_t len;
};

/* The header fields this subsystem reads: first occurrence of each. */
enum mhdr {
	MH_CONTENT_TYPE, MH_CONTENT_ENCODING, MH_CONTENT_ID, MH_CONTENT_DESCRIPTION,
	MH_CONTENT_MD5, MH_CONTENT_DISPOSITION, MH_CONTENT_LANGUAGE, MH_CONTENT_LOCATION,
	MH_DATE, MH_SUBJECT, MH_FROM, MH_SENDER, MH_REPLY_TO, MH_TO, MH_CC, MH_BCC,
	MH_IN_REPLY_TO, MH_MESSAGE_ID,
	MH__COUNT
};

struct mparam {
	char *name;               /* lower case */
	char *value;              /* as sent (quoted strings unquoted) */
};

enum mkind { MK_BASIC, MK_TEXT, MK_MESSAGE, MK_MULTIPART };

struct mnode {
	uint64_t hs, bs, be;      /* header start, body start (= header end), body end */
	struct mslice h[MH__COUNT];
	bool has[MH__COUNT];
	enum mkind kind;
	char *type, *subtype;     /* lower case */
	struct mparam *params;
	size_t n_params;
	char *disp;               /* disposition type or NULL */
	struct mparam *dparams;
	size_t n_dparams;
	uint64_t lines;           /* MK_TEXT and MK_MESSAGE */
	struct mnode *children;   /* MK_MULTIPART: first child */
	struct mnode *next;       /* next sibling */
	struct mnode *msg;        /* MK_MESSAGE: the embedded message */
};

/* mime_parse.c */
/* Builds the tree of the message data[0, len); `mapped` when data is a
 * read-only file mapping whose pages may be dropped behind each scan. */
struct mnode *mime_tree_build(const char *data, size_t len, bool mapped);
void mime_tree_free(struct mnode *n);
/* Unfolds and trims a header value and sanitises it for IMAP (no NUL, no
 * CR/LF).  Appends to out (a NUL-terminated C string). */
void mime_unfold(const char *p, size_t len, struct buf *out);

/* mime_envelope.c */
/* Appends an IMAP nstring: NIL for NULL, a quoted string when safe, else
 * a literal. */
void mime_write_nstring(struct buf *out, const char *s, size_t len);
void mime_write_envelope(struct buf *out, const struct mnode *msg);

/* mime_write.c */
void mime_write_structure(struct buf *out, const struct mnode *n, bool extended);
void mime_parts_encode(const struct mnode *top, struct buf *out);

#endif
