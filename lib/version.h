/*
 * version.h - making and freeing the records of a version (for apply and the map).
 *
 * Each record (cell, shard, stream) is one allocation from the map's memory through a
 * transaction: the struct, its strings and (for a cell) its endpoint array together, so a
 * record is freed with one shardmap__free. Each record has a content hash, its share of the
 * version's order-free digest (XXH3-64 of the record's canonical bytes): cells and streams
 * carry it, shards (a million of them in a big stream) have it recomputed when needed.
 */
#ifndef SHARDMAP_VERSION_H
#define SHARDMAP_VERSION_H

#include "model.h"

/* A new cell record (owned by t). NULL on allocation failure. */
struct shardmap__cell *shardmap__cell_new(struct shardmap__txn *t, const char *id,
					  const char *const *endpoints, size_t n_endpoints);
/* A new shard record of stream `stream` (owned by t). NULL on allocation failure. The
 * record's digest share is shardmap__shard_content_hash(stream, record). */
struct shardmap__shard *shardmap__shard_new(struct shardmap__txn *t, const char *stream,
					    const shardmap_shard *s);
/* A new empty stream (owned by t, gen = t->gen). NULL on allocation failure. */
struct shardmap__stream *shardmap__stream_new(struct shardmap__txn *t, const char *name,
					      int hash_fn);
/* A private copy of st for t to change (same trees, gen = t->gen). NULL on failure. */
struct shardmap__stream *shardmap__stream_copy(struct shardmap__txn *t,
					       const struct shardmap__stream *st);
/* Content hash of a stream's own fields (name, hash function). */
uint64_t shardmap__stream_content_hash(const char *name, int hash_fn);
/* Added by bootstrap: content hash of shard record sh of stream `stream`, its share of the
 * version's digest (records do not store it: it is needed only when one is added or goes). */
uint64_t shardmap__shard_content_hash(const char *stream, const struct shardmap__shard *sh);

/* A private copy of v (or an empty version when v is NULL) for t to change; v itself is
 * queued on t's retired list. NULL on failure (nothing changed). */
struct shardmap__version *shardmap__version_begin(struct shardmap__txn *t,
						  const struct shardmap__version *v);

/* Free a stream whole: its shard records, both trees' nodes and the stream record. Only for
 * a stream no version reaches any more (after its grace period) or at close. */
void shardmap__stream_free(struct shardmap__mem *mem, struct shardmap__stream *st);
/* Free a version whole: every stream, cell, entry and node, and the version itself. Only for
 * a version nobody can reach any more (after its grace period, or at close). Accepts NULL. */
void shardmap__version_free(struct shardmap__mem *mem, struct shardmap__version *v);

#endif
