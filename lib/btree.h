/*
 * btree.h - a persistent B+-tree of a stream's open shards, keyed by range start.
 *
 * The open shards of a stream partition the hash space, so the shard holding hash h is the
 * entry with the greatest start <= h. Nodes are cache-line friendly (16-way, start keys
 * split into hi and lo arrays so the common search touches only the hi words). Changes go
 * through a transaction (txn.h) and copy only the root-to-leaf paths they touch.
 */
#ifndef SHARDMAP_BTREE_H
#define SHARDMAP_BTREE_H

#include <stddef.h>
#include <stdint.h>

#include "shardmap.h"
#include "txn.h"

struct shardmap__btree {
	void *root;      /* NULL when empty */
	unsigned height; /* 0 when empty, 1 = root is a leaf */
	/* Added by lookup: the jump table (shardmap__btree_seal) maps the top 64 - jump_shift
	 * bits of a hash to the deepest node whose range holds every hash with those bits, so
	 * a search starts there instead of at the root: a node pointer with its level (1 = a
	 * leaf) in the low 6 bits (nodes are 64-byte aligned). NULL when there is none: the
	 * tree's size is outside the bounds below, or it changed since it was sealed. */
	unsigned jump_shift;
	const uintptr_t *jump;
	size_t count;
};

/* Trees of at least this many levels and at most this many values get a jump table when
 * sealed. It lets a search skip the levels above the nodes it points to: a 1,024-shard tree
 * goes from three node searches to one. Smaller trees would gain one level for a table of
 * 512 bytes or more. Larger ones get none because a seal rebuilds the whole table in time
 * that grows with the tree (measured: 1 us at 1,024 values, 3.4 us at 4,096, against a
 * one-op apply of about 7 us; bench_apply's 1x4096 shape shows it in an apply), and in their
 * walks the cache misses of the lower levels outweigh the top levels a table would skip;
 * the batched walk overlaps those. */
#define SHARDMAP__BTREE_JUMP_MIN_HEIGHT 3
#define SHARDMAP__BTREE_JUMP_MAX_COUNT	4096

/* The value with the greatest start <= h, NULL if none. Thread-safety: any thread on a
 * published or private tree. Blocking: never; no writes. */
const void *shardmap__btree_find(const struct shardmap__btree *t, shardmap_hash h);
/* Added by lookup: the most hashes one shardmap__btree_find_batch takes. The more walks go
 * down together, the more of their misses overlap: 64 rather than 16 took a batched route
 * from 83 to 72 ns a key at 65,536 shards and from 49 to 41 ns at 1,024 (bench_lookup,
 * medians of 5 alternating runs). The caller's arrays of this many entries live on its
 * stack (about 2 KB). */
#define SHARDMAP__BTREE_BATCH 64
/* values[i] = shardmap__btree_find(t, hs[i]) for i < n (n <= SHARDMAP__BTREE_BATCH). The
 * walks go down level by level together, each next node (and at the end each value's first
 * 128 bytes) prefetched while the others are searched, so n walks that miss the cache wait
 * for memory about as long as one. Thread-safety and blocking: as shardmap__btree_find. */
void shardmap__btree_find_batch(const struct shardmap__btree *t, const shardmap_hash *hs,
                                size_t n, const void **values);
/* The value stored exactly at start, NULL if none. */
const void *shardmap__btree_get(const struct shardmap__btree *t, shardmap_hash start);
/* The entry with the smallest start > key (*next_start set), NULL if none. */
const void *shardmap__btree_next(const struct shardmap__btree *t, shardmap_hash key,
                                 shardmap_hash *next_start);
/* The entry with the greatest start < key (*prev_start set), NULL if none. */
const void *shardmap__btree_prev(const struct shardmap__btree *t, shardmap_hash key,
                                 shardmap_hash *prev_start);

/* Insert or replace the value at start; *old gets the replaced value or NULL.
 * Both put and del first drop the tree's jump table (retired through t: a published
 * version may still read it). Returns 0 or SHARDMAP_ENOMEM. */
int shardmap__btree_put(struct shardmap__txn *t, struct shardmap__btree *tree,
                        shardmap_hash start, const void *value, const void **old);
/* Remove the entry at start. Returns 0, SHARDMAP_ENOENT, SHARDMAP_ENOMEM. */
int shardmap__btree_del(struct shardmap__txn *t, struct shardmap__btree *tree,
                        shardmap_hash start, const void **old);

/* Added by lookup: give a tree of SHARDMAP__BTREE_JUMP_MIN_HEIGHT levels or more and at most
 * SHARDMAP__BTREE_JUMP_MAX_COUNT values that has no jump table one, made by t. Call after a
 * transaction's last change to the tree, before it is published (put and del drop the
 * table again). The table has 2^b entries, b from 6 to 12 (an entry per value, at most
 * 32 KiB), and takes one pass over the nodes whose range holds a whole entry's hashes.
 * Returns 0 (also when nothing needs doing) or SHARDMAP_ENOMEM (tree unchanged).
 * Thread-safety: one writer. */
int shardmap__btree_seal(struct shardmap__txn *t, struct shardmap__btree *tree);

/* In start order, until fn returns nonzero; returns that value. */
int shardmap__btree_foreach(const struct shardmap__btree *t,
                            int (*fn)(void *ctx, shardmap_hash start, const void *value),
                            void *ctx);
void shardmap__btree_free_nodes(struct shardmap__mem *mem, struct shardmap__btree *t);

/* Added by the structs module. Which node search shardmap__btree_find uses: on = 1 picks
 * AVX2 when the CPU has it (the default, chosen once at load time), 0 the portable scalar
 * search. Returns 1 if AVX2 is now in use. For tests and benchmarks: call it before any
 * reader thread starts. */
int shardmap__btree_use_simd(int on);
/* Added by the structs module, for tests: check every structural invariant (order, exact
 * separators, node fill, equal leaf depth, count, alignment, and that a jump table holds
 * exactly what shardmap__btree_seal would make). Returns 0, or the btree.c
 * source line of the first check that failed. */
int shardmap__btree_check(const struct shardmap__btree *t);

/* ---- added by bootstrap ---- */

/* One entry of a bulk build. */
struct shardmap__btree_item {
	shardmap_hash start;
	const void *value;
};

/* Build the empty tree from n items given in strictly increasing start order, bottom-up:
 * every node full except the last one of each level (the shape inserting them in order
 * gives), each node made once and owned by t, none copied or retired.
 * Returns 0; SHARDMAP_EINVAL (tree not empty, or the starts not strictly increasing: tree
 * unchanged); SHARDMAP_ENOMEM (tree left empty; the nodes made so far are on t's created
 * list, so the caller aborts t). Work: O(n); n/16 pointers of temporary heap memory.
 * Thread-safety: one writer. */
int shardmap__btree_build(struct shardmap__txn *t, struct shardmap__btree *tree,
			  const struct shardmap__btree_item *items, size_t n);

#endif
