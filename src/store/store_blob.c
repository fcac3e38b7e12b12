/*
 * store_blob.c - blob file names and the self-describing trailer.
 *
 * Owns: the path of a blob (<blob_dir>/<id 0..4>/<id 5..6>/<id>), the
 * trailer grammar (docs/STORAGE.md, "Blob files"), its writer and its
 * parser.  Writing and fsyncing blob files, and creating their directories,
 * is the queue's job; this file only names, formats and reads.
 *
 * The parser is used by rebuild and verify over whatever lies in the blob
 * directory, so it treats every file as hostile: it opens without following
 * symlinks and without blocking (a FIFO), accepts regular files only, reads
 * with bounded preads (the 27-byte tail, then at most STORE_TRAILER_MAX
 * bytes of trailer), and checks every field; any deviation is ST_INVALID,
 * never a crash or an unbounded allocation.
 *
 * Compressed blobs (docs/STORAGE.md, "Compressed blobs"): the message bytes
 * are one zstd frame (with its content checksum and size) and the trailer
 * stays plain text with two more keys, "compress: zstd" and "stored: <n>"
 * (the frame's length), so the trailer reads the same way and a plain
 * reader that does not know the keys rejects the file (its size check
 * fails) instead of serving compressed bytes.  A plain blob is recognised
 * as compressed only by its trailer, never by the message's first bytes
 * (a message may begin with zstd's magic number).  store_blob_unpack and
 * store_blob_repack stream through buffers of PACK_CHUNK bytes: memory
 * stays bounded whatever the message size, and decompression never yields
 * more than the trailer's size (itself at most STORE_BLOB_SIZE_MAX).
 *
 * Thread-safe: no shared state.
 */
#include "store_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#define TRAILER_HEAD "\nSTRATA-META 1\n"
#define TRAILER_END "STRATA-META-END "
/* Bound on a trailer: 100,000 recipients of 318 bytes fit (smtp.max_recipients' ceiling). */
#define STORE_TRAILER_MAX (64u * 1024 * 1024)
#define PACK_CHUNK (128u * 1024)
/* zstd frames need at most 2^24 bytes of window at level <= 19 (less for
 * smaller messages); a frame asking for more is refused, not allocated. */
#define PACK_WINDOW_LOG_MAX 24

/* ---- paths ----------------------------------------------------------------- */

void store_blob_path(const char *blob_dir, const struct msgid *id, char *out, size_t outlen)
{
	char t[MSGID_TEXT_LEN + 1];
	msgid_format(id, t);
	int n = snprintf(out, outlen, "%s/%.5s/%.2s/%s", blob_dir, t, t + 5, t);
	if (n < 0 || (size_t)n >= outlen)
		panic("store_blob_path: buffer of %zu bytes too small", outlen);
}

void store_blob_dir_of(const char *blob_dir, const struct msgid *id, char *out, size_t outlen)
{
	char t[MSGID_TEXT_LEN + 1];
	msgid_format(id, t);
	int n = snprintf(out, outlen, "%s/%.5s/%.2s", blob_dir, t, t + 5);
	if (n < 0 || (size_t)n >= outlen)
		panic("store_blob_dir_of: buffer of %zu bytes too small", outlen);
}

/* ---- writing the trailer ------------------------------------------------ */

static void check_field(const char *what, const char *v)
{
	for (const char *p = v; *p; p++) {
		if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
			panic("store_blob_trailer: %s contains a control or non-ASCII byte", what);
	}
}

/* xtext (RFC 3461 4): '!'..'~' but '+' and '=' as themselves, every other
 * byte as "+XX".  Keeps the trailer printable ASCII whatever an envelope
 * address holds (SMTPUTF8, quoted local parts). */
static void xtext_encode(const char *v, struct buf *out)
{
	static const char hex[] = "0123456789ABCDEF";
	for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
		if (*p >= '!' && *p <= '~' && *p != '+' && *p != '=') {
			buf_append_char(out, (char)*p);
		} else {
			char e[3] = { '+', hex[*p >> 4], hex[*p & 15] };
			buf_append(out, e, 3);
		}
	}
}

static int xtext_hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decodes v[0..len) into out (NUL-terminated, at most outlen - 1 bytes);
 * false on malformed xtext, an encoded NUL, or a result that does not fit. */
static bool xtext_decode(const char *v, size_t len, char *out, size_t outlen)
{
	size_t n = 0;
	for (size_t i = 0; i < len; i++) {
		int c = (unsigned char)v[i];
		if (c == '+') {
			if (i + 2 >= len)
				return false;
			int hi = xtext_hexval(v[i + 1]), lo = xtext_hexval(v[i + 2]);
			if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
				return false;
			c = hi * 16 + lo;
			i += 2;
		} else if (c < '!' || c > '~' || c == '=') {
			return false;
		}
		if (n + 1 >= outlen)
			return false;
		out[n++] = (char)c;
	}
	out[n] = '\0';
	return true;
}

void store_blob_trailer(const struct blob_meta *meta, struct buf *out)
{
	char id[MSGID_TEXT_LEN + 1];
	msgid_format(&meta->id, id);
	check_field("hash", meta->hash_hex);
	size_t start = out->len;
	buf_append_str(out, TRAILER_HEAD);
	buf_printf(out, "id: %s\nreceived: %lld\nsize: %llu\nhash: %s\n", id,
		   (long long)meta->received, (unsigned long long)meta->size, meta->hash_hex);
	for (size_t i = 0; i < meta->n_rcpts; i++) {
		check_field("rcpt", meta->rcpt_addresses[i]);
		buf_printf(out, "rcpt: %s\n", meta->rcpt_addresses[i]);
	}
	if (meta->mailbox[0] != '\0') {
		check_field("mailbox", meta->mailbox);
		buf_printf(out, "mailbox: %s\n", meta->mailbox);
	}
	if (meta->n_remotes > 0) {
		buf_append_str(out, "sender: ");
		xtext_encode(meta->sender, out);
		for (size_t i = 0; i < meta->n_remotes; i++) {
			buf_append_str(out, "\nremote: ");
			xtext_encode(meta->remote_addresses[i], out);
		}
		buf_append_char(out, '\n');
	}
	if (meta->compress == BLOB_COMPRESS_ZSTD)
		buf_printf(out, "compress: zstd\nstored: %llu\n", (unsigned long long)meta->stored_size);
	else if (meta->compress != BLOB_COMPRESS_NONE)
		panic("store_blob_trailer: compression %u", meta->compress);
	size_t len = out->len - start + STORE_TRAILER_TAIL;
	buf_printf(out, TRAILER_END "%010zu\n", len);
}

/* ---- reading the trailer ------------------------------------------------ */

/* Reads exactly len bytes at off.  ST_INVALID when the file is shorter
 * than it said (truncated under us), ST_IO_ERROR on a read error. */
static enum status pread_all(int fd, void *buf, size_t len, off_t off)
{
	char *p = buf;
	while (len > 0) {
		ssize_t n = pread(fd, p, len, off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return ST_IO_ERROR;
		if (n == 0)
			return ST_INVALID;
		p += n;
		len -= (size_t)n;
		off += n;
	}
	return ST_OK;
}

/* Strict unsigned decimal: 1..19 digits, no sign, no leading zero. */
static bool parse_dec(const char *s, size_t len, uint64_t *out)
{
	if (len == 0 || len > 19 || (len > 1 && s[0] == '0'))
		return false;
	uint64_t v = 0;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	*out = v;
	return true;
}

static bool parse_tail(const char tail[STORE_TRAILER_TAIL], uint64_t *len)
{
	size_t head = sizeof(TRAILER_END) - 1;
	if (memcmp(tail, TRAILER_END, head) != 0 || tail[STORE_TRAILER_TAIL - 1] != '\n')
		return false;
	uint64_t v = 0;
	for (size_t i = head; i < STORE_TRAILER_TAIL - 1; i++) {
		if (tail[i] < '0' || tail[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(tail[i] - '0');
	}
	*len = v;
	return true;
}

static bool is_hex64(const char *v, size_t len)
{
	if (len != 64)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (!((v[i] >= '0' && v[i] <= '9') || (v[i] >= 'a' && v[i] <= 'f')))
			return false;
	}
	return true;
}

static bool add_rcpt(struct blob_meta *meta, size_t *cap, const char *v, size_t len)
{
	char tmp[STORE_ADDRESS_MAX + 1], norm[STORE_ADDRESS_MAX + 1];
	if (len > STORE_ADDRESS_MAX)
		return false;
	memcpy(tmp, v, len);
	tmp[len] = '\0';
	if (!store_addr_address(tmp, norm, NULL) || strcmp(tmp, norm) != 0)
		return false;
	if (meta->n_rcpts == *cap) {
		*cap = *cap ? *cap * 2 : 4;
		meta->rcpt_addresses = xreallocarray(meta->rcpt_addresses, *cap,
						     sizeof(*meta->rcpt_addresses));
	}
	memcpy(meta->rcpt_addresses[meta->n_rcpts++], norm, len + 1);
	return true;
}

static bool add_remote(struct blob_meta *meta, size_t *cap, const char *v, size_t len)
{
	char addr[sizeof(meta->remote_addresses[0])];
	if (len == 0 || !xtext_decode(v, len, addr, sizeof(addr)))
		return false;
	if (meta->n_remotes == *cap) {
		*cap = *cap ? *cap * 2 : 4;
		meta->remote_addresses = xreallocarray(meta->remote_addresses, *cap,
						       sizeof(*meta->remote_addresses));
	}
	memcpy(meta->remote_addresses[meta->n_remotes++], addr, sizeof(addr));
	return true;
}

enum seen { SEEN_ID = 1, SEEN_RECEIVED = 2, SEEN_SIZE = 4, SEEN_HASH = 8, SEEN_ALL = 15, SEEN_MAILBOX = 16,
	    SEEN_COMPRESS = 32, SEEN_STORED = 64, SEEN_SENDER = 128 };
_Static_assert(sizeof(((struct blob_meta *)0)->mailbox) == STORE_MAILBOX_NAME_MAX + 1,
	       "blob_meta.mailbox holds one mailbox name");

/* One "key: value" line (without its "\n"). */
static bool parse_line(struct blob_meta *meta, size_t *cap, size_t *remote_cap, unsigned *seen,
		       const char *line, size_t len)
{
	const char *colon = memchr(line, ':', len);
	if (colon == NULL || colon == line || (size_t)(colon - line) + 1 >= len || colon[1] != ' ')
		return false;
	size_t klen = (size_t)(colon - line);
	for (size_t i = 0; i < klen; i++) {
		char c = line[i];
		if (!((c >= 'a' && c <= 'z') || (i > 0 && ((c >= '0' && c <= '9') || c == '-'))))
			return false;
	}
	const char *v = colon + 2;
	size_t vlen = len - klen - 2;
	for (size_t i = 0; i < vlen; i++) {
		if ((unsigned char)v[i] < 0x20 || (unsigned char)v[i] > 0x7e)
			return false;
	}
	unsigned bit = 0;
	uint64_t num;
	if (klen == 2 && memcmp(line, "id", 2) == 0) {
		char t[MSGID_TEXT_LEN + 1];
		if (vlen != MSGID_TEXT_LEN)
			return false;
		memcpy(t, v, vlen);
		t[vlen] = '\0';
		if (!msgid_parse(t, &meta->id))
			return false;
		bit = SEEN_ID;
	} else if (klen == 8 && memcmp(line, "received", 8) == 0) {
		if (!parse_dec(v, vlen, &num) || num > (uint64_t)INT64_MAX)
			return false;
		meta->received = (int64_t)num;
		bit = SEEN_RECEIVED;
	} else if (klen == 4 && memcmp(line, "size", 4) == 0) {
		if (!parse_dec(v, vlen, &meta->size))
			return false;
		bit = SEEN_SIZE;
	} else if (klen == 4 && memcmp(line, "hash", 4) == 0) {
		if (!is_hex64(v, vlen))
			return false;
		memcpy(meta->hash_hex, v, 64);
		meta->hash_hex[64] = '\0';
		bit = SEEN_HASH;
	} else if (klen == 4 && memcmp(line, "rcpt", 4) == 0) {
		return add_rcpt(meta, cap, v, vlen);
	} else if (klen == 7 && memcmp(line, "mailbox", 7) == 0) {
		char tmp[STORE_MAILBOX_NAME_MAX + 1], norm[STORE_MAILBOX_NAME_MAX + 1];
		if (vlen > STORE_MAILBOX_NAME_MAX)
			return false;
		memcpy(tmp, v, vlen);
		tmp[vlen] = '\0';
		if (!store_imap_mailbox_name(tmp, norm) || strcmp(tmp, norm) != 0)
			return false;
		memcpy(meta->mailbox, norm, vlen + 1);
		bit = SEEN_MAILBOX;
	} else if (klen == 6 && memcmp(line, "sender", 6) == 0) {
		if (!xtext_decode(v, vlen, meta->sender, sizeof(meta->sender)))
			return false;
		bit = SEEN_SENDER;
	} else if (klen == 6 && memcmp(line, "remote", 6) == 0) {
		return add_remote(meta, remote_cap, v, vlen);
	} else if (klen == 8 && memcmp(line, "compress", 8) == 0) {
		/* An unknown method is not ignored: its bytes would be served as mail. */
		if (vlen != 4 || memcmp(v, "zstd", 4) != 0)
			return false;
		meta->compress = BLOB_COMPRESS_ZSTD;
		bit = SEEN_COMPRESS;
	} else if (klen == 6 && memcmp(line, "stored", 6) == 0) {
		if (!parse_dec(v, vlen, &meta->stored_size))
			return false;
		bit = SEEN_STORED;
	} else {
		return true; /* an unknown key: added by a later writer, ignored */
	}
	if (*seen & bit)
		return false; /* duplicate */
	*seen |= bit;
	return true;
}

/* Parses the whole trailer text t (of length len, tail included). */
static bool parse_trailer(struct blob_meta *meta, const char *t, size_t len, uint64_t body_size)
{
	size_t head = sizeof(TRAILER_HEAD) - 1;
	if (len < head + STORE_TRAILER_TAIL || memcmp(t, TRAILER_HEAD, head) != 0)
		return false;
	size_t end = len - STORE_TRAILER_TAIL, cap = 0, remote_cap = 0;
	unsigned seen = 0;
	for (size_t pos = head; pos < end;) {
		const char *nl = memchr(t + pos, '\n', end - pos);
		if (nl == NULL)
			return false;
		size_t llen = (size_t)(nl - (t + pos));
		if (!parse_line(meta, &cap, &remote_cap, &seen, t + pos, llen))
			return false;
		pos += llen + 1;
	}
	if ((seen & SEEN_ALL) != SEEN_ALL || (meta->n_rcpts == 0 && meta->n_remotes == 0))
		return false;
	if (seen & SEEN_COMPRESS)
		return (seen & SEEN_STORED) && meta->stored_size == body_size && meta->size <= STORE_BLOB_SIZE_MAX;
	if (seen & SEEN_STORED)
		return false; /* "stored" without "compress": not a trailer we wrote */
	meta->stored_size = meta->size;
	return meta->size == body_size;
}

enum status store_blob_read_meta(const char *path, struct blob_meta *meta)
{
	memset(meta, 0, sizeof(*meta));
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
	if (fd < 0) {
		if (errno == ENOENT)
			return ST_NOT_FOUND;
		return errno == ELOOP ? ST_INVALID : ST_IO_ERROR;
	}
	enum status s = store_blob_read_meta_fd(fd, meta);
	close(fd);
	return s;
}

enum status store_blob_read_meta_fd(int fd, struct blob_meta *meta)
{
	memset(meta, 0, sizeof(*meta));
	struct stat sb;
	char tail[STORE_TRAILER_TAIL];
	uint64_t tlen = 0;
	char *text = NULL;
	enum status s = ST_INVALID;
	if (fstat(fd, &sb) != 0) {
		s = ST_IO_ERROR;
		goto out;
	}
	if (!S_ISREG(sb.st_mode) || sb.st_size < STORE_TRAILER_TAIL)
		goto out;
	s = pread_all(fd, tail, sizeof(tail), sb.st_size - STORE_TRAILER_TAIL);
	if (s != ST_OK)
		goto out;
	s = ST_INVALID;
	if (!parse_tail(tail, &tlen) || tlen > (uint64_t)sb.st_size || tlen > STORE_TRAILER_MAX ||
	    tlen < sizeof(TRAILER_HEAD) - 1 + STORE_TRAILER_TAIL)
		goto out;
	text = xmalloc((size_t)tlen);
	s = pread_all(fd, text, (size_t)tlen, sb.st_size - (off_t)tlen);
	if (s != ST_OK)
		goto out;
	if (!parse_trailer(meta, text, (size_t)tlen, (uint64_t)sb.st_size - tlen))
		s = ST_INVALID;
out:
	free(text);
	if (s != ST_OK)
		store_blob_meta_free(meta);
	return s;
}

void store_blob_meta_free(struct blob_meta *meta)
{
	free(meta->rcpt_addresses);
	meta->rcpt_addresses = NULL;
	meta->n_rcpts = 0;
	free(meta->remote_addresses);
	meta->remote_addresses = NULL;
	meta->n_remotes = 0;
}

/* ---- compressed blobs ---------------------------------------------------- */

static const unsigned char zstd_magic[4] = { 0x28, 0xb5, 0x2f, 0xfd };

static enum status pack_fail(enum status s, char **error_r, const char *fmt, ...) ATTR_PRINTF(3, 4);
static enum status pack_fail(enum status s, char **error_r, const char *fmt, ...)
{
	if (error_r) {
		va_list ap;
		va_start(ap, fmt);
		*error_r = xvasprintf(fmt, ap);
		va_end(ap);
	}
	return s;
}

/* Reads up to len bytes at off: *got_r = 0 only at end of file. */
static enum status pread_some(int fd, void *buf, size_t len, off_t off, size_t *got_r, char **error_r)
{
	for (;;) {
		ssize_t n = pread(fd, buf, len, off);
		if (n >= 0) {
			*got_r = (size_t)n;
			return ST_OK;
		}
		if (errno != EINTR)
			return pack_fail(ST_IO_ERROR, error_r, "read: %s", strerror(errno));
	}
}

static enum status write_out(int out, const void *buf, size_t len, char **error_r)
{
	if (out < 0 || len == 0)
		return ST_OK;
	if (!fs_write_all(out, buf, len)) {
		int e = errno;
		return pack_fail(status_from_errno(e), error_r, "write: %s", strerror(e));
	}
	return ST_OK;
}

/* Copies [0, len) of in to out as it is. */
static enum status copy_stored(int in, uint64_t len, int out, char *buf, char **error_r)
{
	for (uint64_t off = 0; off < len;) {
		size_t want = len - off < PACK_CHUNK ? (size_t)(len - off) : PACK_CHUNK, got;
		enum status s = pread_some(in, buf, want, (off_t)off, &got, error_r);
		if (s != ST_OK)
			return s;
		if (got == 0)
			return pack_fail(ST_INVALID, error_r, "blob shorter than its trailer says");
		s = write_out(out, buf, got, error_r);
		if (s != ST_OK)
			return s;
		off += got;
	}
	return ST_OK;
}

struct unpacker {
	ZSTD_DCtx *d;
	int out;
	uint64_t limit, produced;
	char *obuf;
	size_t ret;                 /* last ZSTD_decompressStream result; 0 = frame complete */
};

/* One decompression step over ib; bounded output, error on no progress. */
static enum status unpack_step(struct unpacker *u, ZSTD_inBuffer *ib, char **error_r)
{
	ZSTD_outBuffer ob = { u->obuf, PACK_CHUNK, 0 };
	size_t before = ib->pos;
	u->ret = ZSTD_decompressStream(u->d, &ob, ib);
	if (ZSTD_isError(u->ret))
		return pack_fail(ST_INVALID, error_r, "corrupt compressed blob: %s", ZSTD_getErrorName(u->ret));
	if (ob.pos > u->limit - u->produced)
		return pack_fail(ST_INVALID, error_r, "compressed blob longer than its size %llu",
				 (unsigned long long)u->limit);
	if (ob.pos == 0 && ib->pos == before && u->ret != 0)
		return pack_fail(ST_INVALID, error_r, "compressed blob is truncated");
	u->produced += ob.pos;
	return write_out(u->out, u->obuf, ob.pos, error_r);
}

static enum status unpack_zstd(int in, const struct blob_meta *meta, int out, char *ibuf, char **error_r)
{
	struct unpacker u = { ZSTD_createDCtx(), out, meta->size, 0, xmalloc(PACK_CHUNK), 1 };
	if (u.d == NULL)
		panic("ZSTD_createDCtx: out of memory");
	ZSTD_DCtx_setParameter(u.d, ZSTD_d_windowLogMax, PACK_WINDOW_LOG_MAX);
	enum status s = ST_OK;
	/* Each step consumes input or yields output, and output is bounded by
	 * meta->size: the loops end. */
	for (uint64_t off = 0; s == ST_OK && off < meta->stored_size;) {
		uint64_t left = meta->stored_size - off;
		size_t want = left < PACK_CHUNK ? (size_t)left : PACK_CHUNK, got = 0;
		s = pread_some(in, ibuf, want, (off_t)off, &got, error_r);
		if (s == ST_OK && got == 0)
			s = pack_fail(ST_INVALID, error_r, "compressed blob shorter than its trailer says");
		ZSTD_inBuffer ib = { ibuf, got, 0 };
		while (s == ST_OK && ib.pos < ib.size) {
			if (u.ret == 0)
				s = pack_fail(ST_INVALID, error_r, "data after the compressed frame");
			else
				s = unpack_step(&u, &ib, error_r);
		}
		off += got;
	}
	while (s == ST_OK && u.ret != 0) {
		ZSTD_inBuffer ib = { NULL, 0, 0 };
		s = unpack_step(&u, &ib, error_r);
	}
	if (s == ST_OK && u.produced != meta->size)
		s = pack_fail(ST_INVALID, error_r, "compressed blob holds %llu bytes, its trailer says %llu",
			      (unsigned long long)u.produced, (unsigned long long)meta->size);
	ZSTD_freeDCtx(u.d);
	free(u.obuf);
	return s;
}

enum status store_blob_unpack(int in, const struct blob_meta *meta, int out, char **error_r)
{
	char *buf = xmalloc(PACK_CHUNK);
	enum status s;
	if (meta->compress == BLOB_COMPRESS_ZSTD)
		s = unpack_zstd(in, meta, out, buf, error_r);
	else if (meta->compress == BLOB_COMPRESS_NONE)
		s = copy_stored(in, meta->size, out, buf, error_r);
	else
		s = pack_fail(ST_INVALID, error_r, "unknown compression %u", meta->compress);
	free(buf);
	return s;
}

/* Compresses the plain message bytes [0, meta->size) of in into out. */
static enum status pack_zstd(int in, const struct blob_meta *meta, int out, int level, uint64_t *stored_r,
			     char **error_r)
{
	ZSTD_CCtx *c = ZSTD_createCCtx();
	if (c == NULL)
		panic("ZSTD_createCCtx: out of memory");
	ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level);
	ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1);
	ZSTD_CCtx_setPledgedSrcSize(c, meta->size);
	char *ibuf = xmalloc(PACK_CHUNK), *obuf = xmalloc(PACK_CHUNK);
	enum status s = ST_OK;
	uint64_t off = 0;
	*stored_r = 0;
	bool done = false;
	/* Bounded: each round consumes input, and the final flush ends when
	 * zstd reports nothing left (it emits output on every call until then). */
	while (s == ST_OK && !done) {
		size_t got = 0;
		uint64_t left = meta->size - off;
		if (left > 0) {
			s = pread_some(in, ibuf, left < PACK_CHUNK ? (size_t)left : PACK_CHUNK, (off_t)off, &got, error_r);
			if (s == ST_OK && got == 0)
				s = pack_fail(ST_INVALID, error_r, "blob shorter than its trailer says");
		}
		off += got;
		ZSTD_EndDirective mode = off == meta->size ? ZSTD_e_end : ZSTD_e_continue;
		ZSTD_inBuffer ib = { ibuf, got, 0 };
		for (size_t rem = 1; s == ST_OK && (ib.pos < ib.size || (mode == ZSTD_e_end && rem != 0));) {
			ZSTD_outBuffer ob = { obuf, PACK_CHUNK, 0 };
			size_t before = ib.pos;
			rem = ZSTD_compressStream2(c, &ob, &ib, mode);
			if (ZSTD_isError(rem))
				s = pack_fail(ST_TEMPFAIL, error_r, "zstd: %s", ZSTD_getErrorName(rem));
			else if (ob.pos == 0 && ib.pos == before && rem != 0)
				s = pack_fail(ST_TEMPFAIL, error_r, "zstd made no progress"); /* never: a guard */
			else
				s = write_out(out, obuf, ob.pos, error_r);
			*stored_r += ob.pos;
		}
		done = mode == ZSTD_e_end;
	}
	ZSTD_freeCCtx(c);
	free(ibuf);
	free(obuf);
	return s;
}

enum status store_blob_repack(int in, const struct blob_meta *meta, int out, unsigned compress, int level,
			      uint64_t *written_r, char **error_r)
{
	if (compress != BLOB_COMPRESS_NONE && compress != BLOB_COMPRESS_ZSTD)
		panic("store_blob_repack: compression %u", compress);
	struct blob_meta m = *meta;
	enum status s;
	if (compress == meta->compress) {
		char *buf = xmalloc(PACK_CHUNK);
		s = copy_stored(in, meta->stored_size, out, buf, error_r);
		free(buf);
	} else if (compress == BLOB_COMPRESS_NONE) {
		s = store_blob_unpack(in, meta, out, error_r);
		m.stored_size = meta->size;
	} else {
		s = pack_zstd(in, meta, out, level, &m.stored_size, error_r);
	}
	if (s != ST_OK)
		return s;
	m.compress = compress;
	struct buf t = BUF_INIT;
	store_blob_trailer(&m, &t);
	s = write_out(out, t.data, t.len, error_r);
	*written_r = m.stored_size + t.len;
	buf_free(&t);
	return s;
}

static int fd_plain(int fd, bool unpack);

int store_blob_fd_plain(int fd)
{
	return fd_plain(fd, true);
}

int store_blob_fd_plain_nowait(int fd)
{
	return fd_plain(fd, false);
}

static int fd_plain(int fd, bool unpack)
{
	unsigned char head[sizeof(zstd_magic)];
	size_t got = 0;
	if (pread_some(fd, head, sizeof(head), 0, &got, NULL) != ST_OK) {
		close(fd);
		errno = EIO;
		return -1;
	}
	/* A compressed blob starts with the magic; most plain ones do not. */
	if (got < sizeof(head) || memcmp(head, zstd_magic, sizeof(head)) != 0)
		return fd;
	struct blob_meta meta;
	enum status s = store_blob_read_meta_fd(fd, &meta);
	if (s == ST_OK && meta.compress == BLOB_COMPRESS_NONE) {
		store_blob_meta_free(&meta);
		return fd;
	}
	if (s == ST_INVALID) {
		/* The magic and no valid trailer: plain or compressed cannot be
		 * told, and serving a frame as mail is worse than failing. */
		close(fd);
		log_error("store: blob starting with a zstd frame has no valid trailer");
		errno = EIO;
		return -1;
	}
	if (s == ST_OK && !unpack) {
		store_blob_meta_free(&meta);
		close(fd);
		errno = EWOULDBLOCK;
		return -1;
	}
	int mfd = s == ST_OK ? memfd_create("strata-blob", MFD_CLOEXEC | MFD_ALLOW_SEALING) : -1;
	char *err = NULL;
	if (mfd >= 0)
		s = store_blob_unpack(fd, &meta, mfd, &err);
	int e = s == ST_OK ? errno : (s == ST_INVALID ? EIO : errno);
	if (s == ST_OK && mfd >= 0) {
		/* Read-only from now on, whoever holds it. */
		fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL);
		lseek(mfd, 0, SEEK_SET);
	} else {
		char id[MSGID_TEXT_LEN + 1];
		msgid_format(&meta.id, id);
		log_error("store: compressed blob %s: %s", id, err ? err : strerror(e));
		if (mfd >= 0)
			close(mfd);
		mfd = -1;
	}
	free(err);
	store_blob_meta_free(&meta);
	close(fd);
	if (mfd < 0)
		errno = e ? e : EIO;
	return mfd;
}

/* ---- references ----------------------------------------------------------- */

enum status store_blob_decref(struct store *st, int64_t blob_id, struct store_unlink_list *ul,
			      char **error_r)
{
	sqlite3_stmt *q = st->q[Q_BLOB_DECREF];
	sqlite3_bind_int64(q, 1, blob_id);
	sqlite3_bind_int64(q, 2, 1);
	int rc = sqlite3_step(q);
	if (rc != SQLITE_ROW) {
		enum status s = rc == SQLITE_DONE ? ST_OK : store_db_fail(st->db, rc, "blob reference", error_r);
		store_db_reset(q);
		return s;
	}
	int64_t refs = sqlite3_column_int64(q, 0);
	const void *b = sqlite3_column_blob(q, 1);
	bool have_id = b != NULL && sqlite3_column_bytes(q, 1) == MSGID_BYTES;
	struct msgid id = { { 0 } };
	if (have_id)
		memcpy(id.b, b, MSGID_BYTES);
	store_db_reset(q);
	if (refs > 0)
		return ST_OK;
	q = st->q[Q_BLOB_DELETE];
	sqlite3_bind_int64(q, 1, blob_id);
	rc = store_db_run(q);
	if (rc != SQLITE_DONE)
		return store_db_fail(st->db, rc, "blob row", error_r);
	if (have_id) {
		if (ul->n == ul->cap) {
			ul->cap = ul->cap ? ul->cap * 2 : 16;
			ul->ids = xreallocarray(ul->ids, ul->cap, sizeof(*ul->ids));
		}
		ul->ids[ul->n++] = id;
	}
	return ST_OK;
}

void store_unlink_after_commit(struct store *st, struct store_unlink_list *ul)
{
	for (size_t i = 0; i < ul->n; i++) {
		int e = store_blob_unlink(st->s, &ul->ids[i]); /* every tier */
		if (e != 0) {
			char text[MSGID_TEXT_LEN + 1];
			msgid_format(&ul->ids[i], text);
			log_error("store: cannot remove blob %s: %s", text, strerror(e));
		}
	}
	free(ul->ids);
	ul->ids = NULL;
	ul->n = ul->cap = 0;
}
