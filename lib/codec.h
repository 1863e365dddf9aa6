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
 * Returns 0 or SHARDMAP_ENOMEM. Caller frees *buf. */
int shardmap__codec_encode(const shardmap_delta *d, uint8_t **buf, size_t *len);

/* Decode one record from the start of buf. *consumed gets its length.
 * Returns 0; SHARDMAP_EAGAIN-like "need more bytes" as SHARDMAP_ENOENT with *consumed = the
 * total length needed when known (0 if not even the header is complete);
 * SHARDMAP_ECORRUPT with why set for anything malformed; SHARDMAP_ENOMEM.
 * Never trusts a length, count or offset; never allocates more than the input justifies. */
int shardmap__codec_decode(const uint8_t *buf, size_t len, shardmap_delta **out,
                           size_t *consumed, shardmap_error *why);

#endif
