/*
 * txn.h - a copy-on-write transaction over the persistent structures of one map version.
 *
 * A writer derives version N+1 from N by path copying: a node or record of N that must change
 * is copied into memory owned by the transaction and the original is put on the retired list.
 * Nodes created by this transaction carry its generation and are changed in place when touched
 * again, so a 64-op batch copies each path once.
 *
 *   commit: the created objects are live in the new version; the retired ones are handed to
 *           epoch reclamation together with the old version (shardmap__txn_take_retired).
 *   abort:  the created objects are freed now; the retired list is dropped (those objects
 *           still belong to the published version).
 * An object created and retired in the same transaction sits on both lists; either outcome
 * frees it exactly once.
 */
#ifndef SHARDMAP_TXN_H
#define SHARDMAP_TXN_H

#include <stddef.h>
#include <stdint.h>

#include "mem.h"

struct shardmap__ptrvec {
	void **v;
	size_t n, cap;
};

struct shardmap__txn {
	struct shardmap__mem *mem;
	uint64_t gen;                     /* unique per transaction, never 0 */
	struct shardmap__ptrvec created;
	struct shardmap__ptrvec retired;
};

/* Every node of a persistent structure starts with this header. Records (shards, cells,
 * streams) do not: they are immutable once created. */
struct shardmap__node_hdr {
	uint64_t gen; /* the transaction that created the node */
};

void shardmap__txn_init(struct shardmap__txn *t, struct shardmap__mem *mem);
/* Allocate an object owned by the transaction (freed on abort). NULL on failure. */
void *shardmap__txn_alloc(struct shardmap__txn *t, size_t size);
/* Allocate a node: like txn_alloc and stamps hdr->gen = t->gen. */
void *shardmap__txn_node(struct shardmap__txn *t, size_t size);
/* Is this node private to the transaction (may be changed in place)? */
static inline int shardmap__txn_owns(const struct shardmap__txn *t, const void *node)
{
	return ((const struct shardmap__node_hdr *)node)->gen == t->gen;
}
/* Queue an object of the published version for freeing after commit's grace period.
 * Returns 0 or SHARDMAP_ENOMEM (the transaction must then abort). */
int shardmap__txn_retire(struct shardmap__txn *t, void *obj);
/* Abort: free everything created, forget the retired list. */
void shardmap__txn_abort(struct shardmap__txn *t);
/* Commit: forget the created list, move the retired list to *out (caller frees it later
 * with shardmap__ptrvec_free_all). */
void shardmap__txn_commit(struct shardmap__txn *t, struct shardmap__ptrvec *out);
/* Free every object of the vector and the vector itself. */
void shardmap__ptrvec_free_all(struct shardmap__mem *mem, struct shardmap__ptrvec *v);
int shardmap__ptrvec_push(struct shardmap__mem *mem, struct shardmap__ptrvec *v, void *p);

/* Added by the structs module: shardmap__txn_node aligned to align (a power of two), for
 * B+-tree nodes that must start on a cache line. NULL on failure. */
void *shardmap__txn_node_aligned(struct shardmap__txn *t, size_t size, size_t align);

#endif
