/*
 * fuzz_mime_row.c - fuzz target for the dictionary-compressed MIME row
 * (src/store/store_mime_dict.c): what the index hands to FETCH when a row
 * is damaged or forged.
 *
 * Input: the bytes of one mime row.  The dictionary is fixed: a raw-content
 * dictionary (zstd accepts any bytes as one) made of the packed row of a
 * fixed message, id 1, rebuilt on every call so no state survives.
 *
 * Properties checked:
 *  - the input taken as a compressed row: store_mime_dict_decode refuses
 *    it or gives at most STORE_MIME_ROW_MAX bytes, which mime_unpack then
 *    refuses or decodes (bounded, never reading past them); a row naming
 *    dictionary 1 is refused as dictionary 2;
 *  - the input taken as a raw packed row: encoded with the dictionary and
 *    decoded again, it comes back byte for byte.
 *
 * Durability/concurrency: none (pure functions, one thread).
 */
#include "fuzz.h"

#include <string.h>

#include "mime.h"
#include "store_internal.h"

static void fixed_dict(struct buf *out)
{
	static const uint8_t parts[] = { 1, '1', 0, 0, 2, 8, 0 };
	mime_pack("(\"Mon, 1 Jan 2024 10:00:00 +0000\" \"Report\" ((\"Alice\" NIL \"alice\" \"example.net\")) "
		  "NIL NIL ((NIL NIL \"bob\" \"example.net\")) NIL NIL NIL \"<1.2@mx.example.net>\")",
		  "(\"text\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"7bit\" 8 1 NIL NIL NIL NIL)",
		  "(\"text\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"7bit\" 8 1)", parts, sizeof(parts), out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct buf dict = BUF_INIT, out = BUF_INIT, row = BUF_INIT;
	fixed_dict(&dict);

	if (store_mime_dict_decode(dict.data, dict.len, 1, data, size, &out)) {
		FUZZ_CHECK(out.len > 0 && out.len <= STORE_MIME_ROW_MAX, "decoded %zu bytes", out.len);
		struct mime_summary sum;
		if (mime_unpack((const uint8_t *)out.data, out.len, &sum))
			mime_summary_free(&sum);
	}
	if (size > 1 && data[0] == STORE_MIME_DICT_MARK && data[1] == 0x01) {
		buf_reset(&out);   /* names id 1 (one LEB128 byte) */
		FUZZ_CHECK(!store_mime_dict_decode(dict.data, dict.len, 2, data, size, &out),
			   "a row naming dictionary 1 decoded as dictionary 2");
	}

	if (size > 0 && size <= STORE_MIME_ROW_MAX) {
		FUZZ_CHECK(store_mime_dict_encode(dict.data, dict.len, 1, data, size, &row),
			   "encoding %zu bytes failed", size);
		FUZZ_CHECK(row.len > 1 && (uint8_t)row.data[0] == STORE_MIME_DICT_MARK, "no row mark");
		buf_reset(&out);
		FUZZ_CHECK(store_mime_dict_decode(dict.data, dict.len, 1, (const uint8_t *)row.data, row.len, &out),
			   "a row just encoded does not decode");
		FUZZ_CHECK(out.len == size && memcmp(out.data, data, size) == 0,
			   "round trip gave %zu bytes for %zu", out.len, size);
	}
	buf_free(&dict);
	buf_free(&out);
	buf_free(&row);
	return 0;
}
