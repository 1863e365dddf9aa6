/*
 * codec.h - the one binary codec for deltas: file store snapshot and journal, warm-start
 * snapshots and peer frames all use it. Format: docs/codec.md.
 */
#ifndef SHARDMAP_CODEC_H
#define SHARDMAP_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "delta.h"

/* Encode d as one self-delimiting checksummed record into a malloc'ed buffer.
 * Returns 0 or SHARDMAP_ENOMEM (SHARDMAP_EINVAL for a delta the decoder would refuse: an
 * invalid name or endpoint, no endpoints, an unknown op kind or hash function, start > end,
 * a body over SHARDMAP__CODEC_MAX_BODY). Caller frees *buf. */
int shardmap__codec_encode(const shardmap_delta *d, uint8_t **buf, size_t *len);

/* Decode one record from the start of buf. *consumed gets its length.
 * Returns 0; SHARDMAP_EAGAIN-like "need more bytes" as SHARDMAP_ENOENT with *consumed = the
 * total length needed when known (0 if not even the header is complete);
 * SHARDMAP_ECORRUPT with why set for anything malformed; SHARDMAP_ENOMEM.
 * Never trusts a length, count or offset; never allocates more than the input justifies. */
int shardmap__codec_decode(const uint8_t *buf, size_t len, shardmap_delta **out,
                           size_t *consumed, shardmap_error *why);

/* Framing constants (docs/codec.md): a record is header + body + trailer. */
#define SHARDMAP__CODEC_HEADER_BYTES 16u
#define SHARDMAP__CODEC_TRAILER_BYTES 8u
#define SHARDMAP__CODEC_MAX_BODY (1u << 30) /* bodies above 1 GiB are corrupt by definition */

/* Check one record's framing and checksum and read its versions without building a delta
 * (cheap: no allocation). Same results and *consumed as shardmap__codec_decode; the ops are
 * not validated, so a record that peeks fine can still fail to decode. */
int shardmap__codec_peek(const uint8_t *buf, size_t len, uint64_t *from, uint64_t *to,
                         size_t *consumed, shardmap_error *why);

#endif
