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

/* ---- added by bootstrap ---- */

/* The bytes at the start of a record that hold its header and versions. */
#define SHARDMAP__CODEC_HEAD_BYTES 32u

/* Check only the header of the record at buf (magic, format, flags, header check, length
 * limits) and read its versions from the first SHARDMAP__CODEC_HEAD_BYTES bytes, without
 * reading the rest of the record: for a store that wants to know a big snapshot's version
 * without reading it (whoever decodes it later checks its checksum). *total gets the whole
 * record's length. Returns 0, SHARDMAP_ENOENT (fewer than SHARDMAP__CODEC_HEAD_BYTES bytes;
 * *total is set when the header was complete), SHARDMAP_ECORRUPT (why says what). */
int shardmap__codec_peek_head(const uint8_t *buf, size_t len, uint64_t *from, uint64_t *to,
                              size_t *total, shardmap_error *why);

/* Decode one record like shardmap__codec_decode, but without copying its strings: buf
 * (writable, its checksum checked first) is rewritten in place so that every string of the
 * delta is NUL-terminated inside it, and the delta's strings point there. For loaders that
 * read a record into a buffer of their own only to decode it (snapshots: a million-shard
 * snapshot decodes without three million small copies). Same checks, results and errors as
 * shardmap__codec_decode (but buf no longer holds the record afterwards, even on failure).
 * Ownership: *out borrows buf, which must outlive it; free *out with
 * shardmap__codec_borrowed_free, never with shardmap_delta_free. */
int shardmap__codec_decode_in_place(uint8_t *buf, size_t len, shardmap_delta **out,
                                    size_t *consumed, shardmap_error *why);
/* Free a delta made by shardmap__codec_decode_in_place (not its strings). Accepts NULL. */
void shardmap__codec_borrowed_free(shardmap_delta *d);

#endif
