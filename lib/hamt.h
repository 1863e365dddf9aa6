/*
 * hamt.h - a persistent hash array mapped trie from string keys to record pointers.
 *
 * Serves the stream directory, the cell table and each stream's shard-by-id index. Keys are
 * identified by a 64-bit hash (XXH3-64 of the key bytes, shardmap__hamt_hash, unless the trie
 * names another function) and compared in full; colliding hashes are handled. Changes go
 * through a transaction (txn.h) and copy only the path from the root to the changed entry;
 * a whole trie can also be built at once (shardmap__hamt_build).
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
	/* Added by bootstrap: the hash function of this trie's keys; NULL (what a zeroed struct
	 * holds) means shardmap__hamt_hash. The `hash` argument of every call must be this
	 * function of the key: the trie stores keys without their hashes (an entry is a key and
	 * a value, 16 bytes) and recomputes a stored key's hash only when a put must push that
	 * entry one level down. Tests set it to force collisions. */
	uint64_t (*hash)(const char *key);
};

uint64_t shardmap__hamt_hash(const char *key);

/* The value stored under key, NULL if none. Thread-safety: any thread, on a published or
 * private root. Blocking: never. */
const void *shardmap__hamt_get(const struct shardmap__hamt *h, uint64_t hash, const char *key);

/* As shardmap__hamt_get; when the key is found, *alone says whether it is the only key of
 * that hash in the trie (1), or shares it with others (0). A reader that remembers a value
 * by hash alone (lookup.c's memo of cells) may only do so when it is 1. */
const void *shardmap__hamt_get_alone(const struct shardmap__hamt *h, uint64_t hash,
                                     const char *key, int *alone);

/* Insert or replace. key must stay valid as long as the entry (it normally points into the
 * value record). *old (may be NULL) gets the replaced value or NULL.
 * Returns 0 or SHARDMAP_ENOMEM (h unchanged as seen by the published version).
 * Work: O(depth); a node the transaction owns grows in place or, when full, into one of
 * twice the size, so n puts into a trie the transaction made cost O(n) copying, not O(n^2). */
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

/* ---- added by bootstrap ---- */

/* One entry of a bulk build: a value and the trie's hash of its key (see struct
 * shardmap__hamt). The key itself is key_of(value): 16 bytes an item, not 24, for builds of
 * a million records whose keys live in the records. */
struct shardmap__hamt_item {
	uint64_t hash;
	const void *value;
};

/* Build the empty trie h (its hash function set as wanted) from n items at once, as if each
 * value were put under key_of(value) in array order: for equal keys the item latest in the
 * array wins, and h->count says how many keys are distinct. Every node is made once, exactly
 * sized, owned by t; no node is copied or retired. items is scratch: the call reorders it.
 * Returns 0; SHARDMAP_EINVAL (h not empty); SHARDMAP_ENOMEM (h left empty; the nodes made
 * so far are on t's created list, so the caller aborts t).
 * Work: O(n x depth) (a 32-way radix partition per level) plus a sort of each group of keys
 * with equal hashes; n items of temporary heap memory. Thread-safety: one writer. */
int shardmap__hamt_build(struct shardmap__txn *t, struct shardmap__hamt *h,
			 struct shardmap__hamt_item *items, size_t n,
			 const char *(*key_of)(const void *value));

#endif
