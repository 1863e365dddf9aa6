/*
 * hamt.h - a persistent hash array mapped trie from string keys to record pointers.
 *
 * Serves the stream directory, the cell table and each stream's shard-by-id index. Keys are
 * identified by a 64-bit hash (XXH3-64 of the key bytes, shardmap__hamt_hash) and compared
 * in full; colliding hashes are handled. Changes go through a transaction (txn.h) and copy
 * only the path from the root to the changed entry.
 *
 * Readers: shardmap__hamt_get takes no lock and writes nothing; call it on a version a read
 * section protects.
 */
#ifndef SHARDMAP_HAMT_H
#define SHARDMAP_HAMT_H

#include <stddef.h>
#include <stdint.h>

#include "txn.h"

struct shardmap__hamt {
	void *root;   /* NULL when empty */
	size_t count;
};

uint64_t shardmap__hamt_hash(const char *key);

/* The value stored under key, NULL if none. Thread-safety: any thread, on a published or
 * private root. Blocking: never. */
const void *shardmap__hamt_get(const struct shardmap__hamt *h, uint64_t hash, const char *key);

/* Insert or replace. key must stay valid as long as the entry (it normally points into the
 * value record). *old (may be NULL) gets the replaced value or NULL.
 * Returns 0 or SHARDMAP_ENOMEM (h unchanged as seen by the published version). */
int shardmap__hamt_put(struct shardmap__txn *t, struct shardmap__hamt *h, uint64_t hash,
                       const char *key, const void *value, const void **old);
/* Remove. Returns 0, SHARDMAP_ENOENT (absent), SHARDMAP_ENOMEM. *old gets the value. */
int shardmap__hamt_del(struct shardmap__txn *t, struct shardmap__hamt *h, uint64_t hash,
                       const char *key, const void **old);

/* Call fn for each entry (unspecified order) until it returns nonzero; returns that value. */
int shardmap__hamt_foreach(const struct shardmap__hamt *h,
                           int (*fn)(void *ctx, const char *key, const void *value), void *ctx);

/* Free every node (not the values): for closing a map's last version. */
void shardmap__hamt_free_nodes(struct shardmap__mem *mem, struct shardmap__hamt *h);

/* Added by the structs module, for tests: check every structural invariant (bitmaps match
 * slot counts, each entry sits where its hash leads, canonical form, count). Returns 0, or
 * the hamt.c source line of the first check that failed. */
int shardmap__hamt_check(const struct shardmap__hamt *h);

#endif
