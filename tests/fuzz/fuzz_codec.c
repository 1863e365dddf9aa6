/*
 * fuzz_codec.c - libFuzzer target for the delta decoder (lib/codec.c), the one parser that
 * reads bytes from disk and from peers.
 *
 * For every input: decode must not crash, leak or allocate beyond the input's size (ASan,
 * UBSan and libFuzzer's -malloc_limit_mb watch); its answer must be consistent with
 * shardmap__codec_peek; a "need more bytes" answer must ask for more than was given; and a
 * record that decodes must re-encode to exactly the bytes it was decoded from (the format
 * is canonical), then decode again to an equal delta. The in-place decoder (snapshots) must
 * give the same answer on a copy, and what it decodes must re-encode to the same bytes.
 *
 * Random mutations almost never keep the header check and the XXH3 checksum right, which
 * would leave the op parser unexplored. So each input is tried twice: as given (exercises
 * the framing checks) and "resealed", with both checks recomputed over the mutated bytes
 * (exercises everything behind them).
 */
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The in-place decoder on a copy of data: the same rc and length as the copying one. */
static void check_in_place(const uint8_t *data, size_t size, int rc, size_t used)
{
	uint8_t *w = malloc(size ? size : 1);
	if (w == NULL)
		return;
	if (size)
		memcpy(w, data, size);
	shardmap_delta *d = NULL;
	size_t wused = 0;
	int wrc = shardmap__codec_decode_in_place(w, size, &d, &wused, NULL);
	if (wrc != rc || wused != used || (wrc != 0) != (d == NULL))
		abort();
	uint8_t *buf = NULL;
	size_t len = 0;
	if (wrc == 0 && (shardmap__codec_encode(d, &buf, &len) != 0 || len != used ||
			 memcmp(buf, data, len) != 0))
		abort();
	free(buf);
	shardmap__codec_borrowed_free(d);
	free(w);
}

static void check_one(const uint8_t *data, size_t size)
{
	shardmap_delta *d = NULL;
	shardmap_error why = {0};
	size_t used = 0, peek_used = 0;
	uint64_t from = 0, to = 0;
	int rc = shardmap__codec_decode(data, size, &d, &used, &why);
	int prc = shardmap__codec_peek(data, size, &from, &to, &peek_used, NULL);
	check_in_place(data, size, rc, used);

	if (rc == SHARDMAP_ENOENT) {
		/* incomplete: peek agrees, and asks for more than it has (or does not know) */
		if (prc != SHARDMAP_ENOENT || used != peek_used || (used != 0 && used <= size))
			abort();
		return;
	}
	if (rc != 0) {
		/* refused: with a message, and peek refuses too unless only the ops are bad */
		if (rc != SHARDMAP_ECORRUPT && rc != SHARDMAP_ENOMEM)
			abort();
		if (why.code != rc || why.message[0] == '\0' || d != NULL || used != 0)
			abort();
		if (prc == SHARDMAP_ENOENT)
			abort();
		return;
	}
	if (prc != 0 || used != peek_used || used > size || from != d->from_version ||
	    to != d->to_version)
		abort();

	uint8_t *buf = NULL;
	size_t len = 0;
	if (shardmap__codec_encode(d, &buf, &len) != 0 || len != used ||
	    memcmp(buf, data, len) != 0)
		abort();
	shardmap_delta *again = NULL;
	if (shardmap__codec_decode(buf, len, &again, &used, NULL) != 0 || used != len ||
	    shardmap_delta_count(again) != shardmap_delta_count(d))
		abort();
	free(buf);
	shardmap_delta_free(again);
	shardmap_delta_free(d);
}

static void put_le(uint8_t *p, uint64_t v, int bytes)
{
	for (int i = 0; i < bytes; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	check_one(data, size);
	if (size < SHARDMAP__CODEC_HEADER_BYTES)
		return 0;
	uint8_t *copy = malloc(size);
	if (copy == NULL)
		return 0;
	memcpy(copy, data, size);
	put_le(copy + 12, (uint32_t)XXH3_64bits(copy, 12), 4);
	size_t blen = (size_t)copy[8] | (size_t)copy[9] << 8 | (size_t)copy[10] << 16 |
		      (size_t)copy[11] << 24;
	size_t at = SHARDMAP__CODEC_HEADER_BYTES + blen;
	if (blen <= size && at + SHARDMAP__CODEC_TRAILER_BYTES <= size)
		put_le(copy + at, XXH3_64bits(copy, at), 8);
	check_one(copy, size);
	free(copy);
	return 0;
}
