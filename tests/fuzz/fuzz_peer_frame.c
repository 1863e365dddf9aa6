/*
 * fuzz_peer_frame.c - libFuzzer target for the peer protocol's frame parser and payload
 * decoders (lib/peer_proto.c): the first code to read bytes that another host sent.
 *
 * The input is a byte stream as a connection delivers it. It is read the way peers.c reads
 * one (frame after frame until the bytes end or a frame is refused), three times: by a
 * receiver without a key; by a receiver with a key, as given (random bytes never carry a
 * valid tag, so this exercises refusals); and by a receiver with a key after every whole
 * tagged frame has been "resealed" with a correct tag (so the decoders behind the tag check
 * are reached). For every frame:
 *   - the parse of every prefix of the bytes agrees with the parse of all of them: "more"
 *     until the frame is whole, or the same refusal as soon as the bytes prove it bad; never
 *     a different verdict (peers.c parses whatever has arrived so far);
 *   - an accepted header is exactly what shardmap__frame_build writes for its fields, its
 *     length is under the cap and the frame fits in the bytes given;
 *   - with a key: a resealed frame's tag verifies with the nonce it was made for (the
 *     receiver's nonce, all zero for a hello) and fails with the other one;
 *   - a payload that decodes re-encodes to exactly its bytes (every payload format is
 *     canonical), a delta payload is one whole codec record, and a refused payload is
 *     refused with SHARDMAP_ECORRUPT only.
 * ASan, UBSan and libFuzzer's -malloc_limit_mb check that nothing reads out of bounds, leaks
 * or allocates from a lying length.
 */
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "fuzz_peer_key.h"
#include "peer_proto.h"

/* A small cap, so that both oversized and whole frames are within the fuzzer's reach. */
#define MAX_PAYLOAD 2048

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct shardmap__mac *fuzz_mac(void)
{
	static struct shardmap__mac *mac;
	if (mac == NULL &&
	    shardmap__mac_new(fuzz_peer_key, sizeof fuzz_peer_key - 1, &mac) != SHARDMAP_OK)
		abort();
	return mac;
}

struct verdict {
	int rc; /* 0, SHARDMAP__FRAME_MORE or -1 */
	struct shardmap__frame_header h;
	size_t len;
	enum shardmap__refuse why;
};

static struct verdict parse(const uint8_t *buf, size_t avail, int keyed)
{
	struct verdict v;
	memset(&v, 0, sizeof v);
	v.rc = shardmap__frame_parse(buf, avail, MAX_PAYLOAD, keyed, &v.h, &v.len, &v.why);
	if (v.rc != 0 && v.rc != SHARDMAP__FRAME_MORE && v.rc != -1)
		abort();
	if (v.rc == -1 && v.why >= SHARDMAP__REFUSE_COUNT)
		abort();
	return v;
}

/* The parse of buf[0..k) for every k must be consistent with the parse of all avail bytes. */
static void check_prefixes(const uint8_t *buf, size_t avail, int keyed, const struct verdict *all)
{
	size_t upto = all->rc == 0 ? all->len : avail;
	for (size_t k = 0; k < upto; k++) {
		/* past the header only the frame's length decides: check the two ends of it */
		if (k > SHARDMAP__FRAME_HEADER + 1 && k + 1 < upto)
			k = upto - 1;
		struct verdict p = parse(buf, k, keyed);
		if (all->rc == 0 && p.rc != SHARDMAP__FRAME_MORE)
			abort(); /* a prefix of a good frame is only ever "more" */
		if (all->rc == -1 && p.rc == 0)
			abort();
		if (all->rc == -1 && p.rc == -1 && p.why != all->why)
			abort(); /* refused early, but for another reason */
		if (all->rc == SHARDMAP__FRAME_MORE && p.rc != SHARDMAP__FRAME_MORE)
			abort();
	}
}

/* The payload decoders: what decodes must re-encode to the same bytes. */
static void check_payload(uint8_t type, const uint8_t *p, size_t len)
{
	uint8_t out[SHARDMAP__HELLO_MAX];
	size_t n = 0;
	int rc;
	switch (type) {
	case SHARDMAP__FRAME_HELLO: {
		struct shardmap__hello h;
		rc = shardmap__hello_decode(p, len, &h);
		if (rc == 0) {
			if (strlen(h.node_id) != p[30])
				abort();
			n = shardmap__hello_encode(&h, out);
		}
		break;
	}
	case SHARDMAP__FRAME_ANNOUNCE: {
		struct shardmap__announce a;
		rc = shardmap__announce_decode(p, len, &a);
		if (rc == 0)
			n = shardmap__announce_encode(&a, out);
		break;
	}
	case SHARDMAP__FRAME_PULL: {
		uint64_t have;
		rc = shardmap__pull_decode(p, len, &have);
		if (rc == 0)
			n = shardmap__pull_encode(have, out);
		break;
	}
	case SHARDMAP__FRAME_TOO_OLD: {
		struct shardmap__too_old t;
		rc = shardmap__too_old_decode(p, len, &t);
		if (rc == 0)
			n = shardmap__too_old_encode(&t, out);
		break;
	}
	case SHARDMAP__FRAME_DELTA: {
		shardmap_delta *d = NULL;
		size_t used = 0;
		shardmap_error why;
		rc = shardmap__codec_decode(p, len, &d, &used, &why);
		if (rc == 0) {
			uint8_t *enc = NULL;
			size_t enc_len = 0;
			if (used > len || shardmap__codec_encode(d, &enc, &enc_len) != 0 ||
			    enc_len != used || memcmp(enc, p, used) != 0)
				abort();
			free(enc);
			shardmap_delta_free(d);
		} else if (rc != SHARDMAP_ENOENT && rc != SHARDMAP_ECORRUPT &&
			   rc != SHARDMAP_ENOMEM) {
			abort();
		}
		return;
	}
	default:
		abort(); /* the parser let an unknown type through */
	}
	if (rc != 0 && rc != SHARDMAP_ECORRUPT)
		abort();
	if (rc == 0 && (n != len || memcmp(out, p, len) != 0))
		abort();
}

/* Read buf as a connection does. keyed: the receiver has the fuzz key; resealed: every
 * tagged frame carries a correct tag. */
static void receive(const uint8_t *buf, size_t size, int keyed, int resealed)
{
	for (size_t off = 0; off < size;) {
		const uint8_t *f = buf + off;
		struct verdict v = parse(f, size - off, keyed);
		check_prefixes(f, size - off, keyed, &v);
		if (v.rc != 0)
			return;
		int tagged = (v.h.flags & SHARDMAP__FRAME_TAGGED) != 0;
		if (v.h.length > MAX_PAYLOAD || v.len > size - off ||
		    v.len !=
			SHARDMAP__FRAME_HEADER + v.h.length + (tagged ? SHARDMAP__FRAME_TAG : 0) ||
		    (keyed && !tagged))
			abort();

		/* the header is exactly what the builder writes for these fields */
		uint8_t *built = NULL;
		size_t built_len = 0;
		if (shardmap__frame_build(NULL, NULL, v.h.type, v.h.seq, f + SHARDMAP__FRAME_HEADER,
					  v.h.length, &built, &built_len) != 0)
			abort();
		if (memcmp(built + 5, f + 5, SHARDMAP__FRAME_HEADER - 5) != 0 ||
		    memcmp(built, f, 4) != 0 || (f[4] & ~SHARDMAP__FRAME_TAGGED) != 0)
			abort();
		free(built);

		if (keyed) {
			const uint8_t *nonce =
			    v.h.type == SHARDMAP__FRAME_HELLO ? NULL : fuzz_peer_nonce;
			const uint8_t *other =
			    v.h.type == SHARDMAP__FRAME_HELLO ? fuzz_peer_nonce : NULL;
			int ok = shardmap__frame_verify(fuzz_mac(), nonce, f, v.len) == 0;
			if (resealed &&
			    (!ok || shardmap__frame_verify(fuzz_mac(), other, f, v.len) == 0))
				abort();
			if (!ok)
				return; /* peers.c refuses the frame: bad_tag */
		}
		check_payload(v.h.type, f + SHARDMAP__FRAME_HEADER, v.h.length);
		off += v.len;
	}
}

/* A copy of buf in which every whole tagged frame (as an unkeyed receiver delimits them)
 * carries a correct tag; the walk stops where that receiver would. */
static uint8_t *reseal(const uint8_t *buf, size_t size)
{
	uint8_t *copy = malloc(size ? size : 1);
	if (copy == NULL)
		return NULL;
	memcpy(copy, buf, size);
	for (size_t off = 0; off < size;) {
		struct verdict v = parse(copy + off, size - off, 0);
		if (v.rc != 0)
			break;
		if (v.h.flags & SHARDMAP__FRAME_TAGGED) {
			uint8_t *f = NULL;
			size_t len = 0;
			const uint8_t *nonce =
			    v.h.type == SHARDMAP__FRAME_HELLO ? NULL : fuzz_peer_nonce;
			if (shardmap__frame_build(fuzz_mac(), nonce, v.h.type, v.h.seq,
						  copy + off + SHARDMAP__FRAME_HEADER, v.h.length,
						  &f, &len) != 0 ||
			    len != v.len)
				abort();
			memcpy(copy + off, f, len);
			free(f);
		}
		off += v.len;
	}
	return copy;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	receive(data, size, 0, 0);
	receive(data, size, 1, 0);
	uint8_t *sealed = reseal(data, size);
	if (sealed != NULL) {
		receive(sealed, size, 1, 1);
		free(sealed);
	}
	return 0;
}
