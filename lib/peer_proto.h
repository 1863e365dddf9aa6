/*
 * peer_proto.h - the frames of the peer protocol: layout, encoding, decoding and the
 * optional HMAC-SHA256 tag. No sockets here (peers.c moves the bytes); tests build raw
 * frames with these functions.
 *
 * A frame is a fixed header, a payload and, when the sender has a key, a 32-byte tag:
 *
 *   offset size field
 *        0    2 magic "SP"
 *        2    1 protocol version (SHARDMAP__PROTO_VERSION)
 *        3    1 type (enum shardmap__frame_type)
 *        4    1 flags: bit 0 (SHARDMAP__FRAME_TAGGED) a tag follows the payload
 *        5    3 reserved, zero
 *        8    4 payload length (u32, little-endian, at most the receiver's frame cap)
 *       12    8 sequence number (u64): 0 for hello, then 1, 2, ... per direction
 *       20    n payload
 *     20+n   32 tag (tagged frames): HMAC-SHA256(key, nonce || header || payload)
 *
 * nonce is the receiver's 16-byte hello nonce (all zero for the hello itself, which is sent
 * before the peer's nonce is known). Because the tag covers the sequence number and a nonce
 * the receiver picked for this connection, a recorded frame replayed on the same connection
 * fails the sequence check and one replayed on another connection fails the tag.
 *
 * Payloads (little-endian, exact lengths):
 *   hello     u16 protocol version, u32 features, u64 map version, 16-byte nonce,
 *             u8 n (1..255) + n bytes node id
 *   announce  u64 version, u64 digest (struct shardmap__version.digest), u8 flags
 *             (bit 0: please answer with your announce)
 *   delta     one codec record (lib/codec.h), nothing after it
 *   pull      u64 version the sender has ("send what follows")
 *   too_old   u64 the version asked for, u64 the oldest version the ring starts at,
 *             u64 the sender's version ("go to the store")
 */
#ifndef SHARDMAP_PEER_PROTO_H
#define SHARDMAP_PEER_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "shardmap.h"

#define SHARDMAP__PROTO_VERSION	 1u
#define SHARDMAP__FRAME_HEADER	 20u
#define SHARDMAP__FRAME_TAG	 32u
#define SHARDMAP__NONCE		 16u
#define SHARDMAP__FRAME_TAGGED	 0x1u
#define SHARDMAP__FEATURE_HMAC	 0x1u
#define SHARDMAP__ANNOUNCE_REPLY 0x1u
/* The largest hello payload: 2 + 4 + 8 + 16 + 1 + 255. */
#define SHARDMAP__HELLO_MAX 286u

enum shardmap__frame_type {
	SHARDMAP__FRAME_HELLO = 1,
	SHARDMAP__FRAME_ANNOUNCE = 2,
	SHARDMAP__FRAME_DELTA = 3,
	SHARDMAP__FRAME_PULL = 4,
	SHARDMAP__FRAME_TOO_OLD = 5,
};
#define SHARDMAP__FRAME_TYPES 6 /* array size for counts indexed by type (0 unused) */

/* Why a connection was dropped. Counted per reason by peers.c. */
enum shardmap__refuse {
	SHARDMAP__REFUSE_GARBAGE,     /* bad magic, reserved bits, unknown type */
	SHARDMAP__REFUSE_VERSION,     /* a protocol version we do not speak */
	SHARDMAP__REFUSE_OVERSIZED,   /* payload length above the frame cap */
	SHARDMAP__REFUSE_TRUNCATED,   /* the connection ended inside a frame */
	SHARDMAP__REFUSE_MISSING_TAG, /* we have a key and the frame has no tag */
	SHARDMAP__REFUSE_BAD_TAG,     /* the tag does not match */
	SHARDMAP__REFUSE_SEQUENCE,    /* replayed or out-of-order sequence number */
	SHARDMAP__REFUSE_UNEXPECTED,  /* not allowed now: anything before hello, a second hello */
	SHARDMAP__REFUSE_MALFORMED,   /* the payload does not decode */
	SHARDMAP__REFUSE_BAD_DELTA,   /* a delta that decodes but breaks the map's invariants */
	SHARDMAP__REFUSE_COUNT
};

/* "garbage", "bad_tag", ... (static text; "unknown" out of range). */
const char *shardmap__refuse_name(unsigned reason);

struct shardmap__frame_header {
	uint8_t type;
	uint8_t flags;
	uint32_t length;
	uint64_t seq;
};

struct shardmap__hello {
	uint16_t proto;
	uint32_t features;
	uint64_t version;
	uint8_t nonce[SHARDMAP__NONCE];
	char node_id[256]; /* NUL-terminated, 1..255 bytes */
};

struct shardmap__announce {
	uint64_t version, digest;
	uint8_t flags;
};

struct shardmap__too_old {
	uint64_t asked, oldest, newest;
};

/* ---------------------------------------------------------------- the tag key */

/* A keyed HMAC-SHA256 template; frames are tagged and checked with copies of it, so one key
 * object serves every thread. */
struct shardmap__mac;
/* Returns 0, SHARDMAP_EINVAL (empty key), SHARDMAP_ENOMEM. */
int shardmap__mac_new(const void *key, size_t len, struct shardmap__mac **out);
/* Accepts NULL. */
void shardmap__mac_free(struct shardmap__mac *mac);

/* ---------------------------------------------------------------- whole frames */

/* Build one frame (header, payload, and a tag when mac is not NULL) into a malloc'ed buffer.
 * nonce: the receiver's nonce, NULL for all zero. Returns 0, SHARDMAP_EINVAL (payload above
 * 4 GiB), SHARDMAP_ENOMEM. Thread-safety: MT-safe. */
int shardmap__frame_build(const struct shardmap__mac *mac, const uint8_t *nonce, uint8_t type,
			  uint64_t seq, const void *payload, size_t len, uint8_t **out,
			  size_t *out_len);

#define SHARDMAP__FRAME_MORE 1 /* shardmap__frame_parse: not enough bytes yet */

/* Look at the bytes at the start of buf. Returns 0 when a whole frame is there (*h filled,
 * *frame_len = header + payload + tag), SHARDMAP__FRAME_MORE when more bytes are needed, or
 * -1 with *why set (garbage, version, oversized, missing_tag) as soon as the bytes seen
 * prove the frame bad. keyed: the receiver has a key (a frame without a tag is refused).
 * The tag itself is checked by shardmap__frame_verify. Thread-safety: MT-safe. */
int shardmap__frame_parse(const uint8_t *buf, size_t avail, size_t max_payload, int keyed,
			  struct shardmap__frame_header *h, size_t *frame_len,
			  enum shardmap__refuse *why);

/* Check the tag of a whole tagged frame against nonce (the receiver's own, NULL for zero),
 * in constant time. Returns 0 or -1. */
int shardmap__frame_verify(const struct shardmap__mac *mac, const uint8_t *nonce,
			   const uint8_t *frame, size_t frame_len);

/* ---------------------------------------------------------------- payloads */

/* Encoders write into out (large enough: SHARDMAP__HELLO_MAX, 17, 8, 24) and return the
 * length. Decoders return 0 or SHARDMAP_ECORRUPT (wrong length, bad node id, unknown
 * announce flags). */
size_t shardmap__hello_encode(const struct shardmap__hello *h, uint8_t *out);
int shardmap__hello_decode(const uint8_t *p, size_t len, struct shardmap__hello *h);
size_t shardmap__announce_encode(const struct shardmap__announce *a, uint8_t *out);
int shardmap__announce_decode(const uint8_t *p, size_t len, struct shardmap__announce *a);
size_t shardmap__pull_encode(uint64_t have, uint8_t *out);
int shardmap__pull_decode(const uint8_t *p, size_t len, uint64_t *have);
size_t shardmap__too_old_encode(const struct shardmap__too_old *t, uint8_t *out);
int shardmap__too_old_decode(const uint8_t *p, size_t len, struct shardmap__too_old *t);

#endif
