/*
 * store.h - the store interface: a vtable per kind of authoritative store ("file:",
 * "etcd://"), in the way liburcu flavors are vtables, so several kinds coexist.
 */
#ifndef SHARDMAP_STORE_H
#define SHARDMAP_STORE_H

#include "map.h"

struct shardmap__store_ops {
	unsigned abi;        /* SHARDMAP__STORE_ABI */
	const char *scheme;  /* "file:" or "etcd://" (the URI prefix) */
	/* rest is the URI after the scheme */
	int (*open)(const char *rest, shardmap_store **out);
	void (*close)(shardmap_store *s);
	/* Deliver the whole store as deltas in order (the first from version 0, each following
	 * the previous) to sink; stop at the first sink error and return it. */
	int (*load)(shardmap_store *s, int (*sink)(void *ctx, const shardmap_delta *d), void *ctx,
	            shardmap_error *why);
	int (*write)(shardmap_store *s, const shardmap_delta *d);
	int (*version)(shardmap_store *s, uint64_t *out);
	/* Start keeping m current; p may be NULL where the store supports it. */
	int (*follow)(shardmap_store *s, shardmap *m, shardmap_pool *p,
	              struct shardmap__follower **out);
};

#define SHARDMAP__STORE_ABI 1

/* Every store implementation begins with this. */
struct shardmap_store {
	const struct shardmap__store_ops *ops;
};

extern const struct shardmap__store_ops shardmap__file_store_ops;
extern const struct shardmap__store_ops shardmap__etcd_store_ops;

/* Bootstrap m from s into a builder (shared by shardmap_bootstrap and followers' resyncs). */
int shardmap__bootstrap_from(shardmap *m, shardmap_store *s, shardmap_error *why);

#endif
