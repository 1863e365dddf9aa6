/*
 * map.h - the map object seen from inside the library: publishing, private builds, pinned
 * access for writers, observers of publishes (peers) and the follower slot (stores).
 */
#ifndef SHARDMAP_MAP_H
#define SHARDMAP_MAP_H

#include <pthread.h>
#include <stdatomic.h>

#include "model.h"

/* Called by the writer, with the write lock held, right after a version is published.
 * d is the delta that produced it, or NULL when the map was replaced wholesale (bootstrap,
 * snapshot load). Must not block and must not call back into writer functions. */
struct shardmap__observer {
	void (*on_publish)(void *ctx, const struct shardmap__version *v, const shardmap_delta *d);
	void *ctx;
	struct shardmap__observer *next;
};

/* The store follower attached by shardmap_follow. */
struct shardmap__follower {
	/* stop watching and free the follower; must not be called with the write lock held */
	void (*stop)(struct shardmap__follower *f);
	/* ask for a catch-up soon (coalesced); MT-safe, never blocks */
	void (*catch_up)(struct shardmap__follower *f);
};

/* Counters written by stores and peers (relaxed atomics: statistics only, no ordering). */
struct shardmap__ext_stats {
	_Atomic uint64_t threads;
	_Atomic uint64_t store_version, store_requests, store_errors, hints, hints_coalesced,
	    hints_dropped, store_last_contact_ns;
	_Atomic uint64_t peers_known, peers_connected, frames_in, frames_out, frames_refused,
	    peer_queue_drops, antientropy_pulls, versions_behind, digest_mismatches;
};

/* The extension counters of m (for stores and peers). */
struct shardmap__ext_stats *shardmap__ext(shardmap *m);
/* The map's memory (for modules that build records). */
struct shardmap__mem *shardmap__map_mem(shardmap *m);

/* Writer-side pinned access: takes the write lock and returns the current version (NULL if
 * none). The version cannot be retired until shardmap__unpin. Never call from a read
 * section. Blocking: waits for other writers. */
const struct shardmap__version *shardmap__pin(const shardmap *m);
void shardmap__unpin(const shardmap *m);

/* A private build: a new version made from empty by applying deltas in order (the first
 * from version 0), validated after each, published in one step by builder_publish (which
 * replaces whatever is current, whatever its version: the store is authoritative).
 * Readers keep using the current version throughout. */
struct shardmap__builder;
int shardmap__builder_start(shardmap *m, struct shardmap__builder **out);
int shardmap__builder_apply(struct shardmap__builder *b, const shardmap_delta *d,
                            shardmap_error *why);
uint64_t shardmap__builder_version(const struct shardmap__builder *b);
/* Publishes and frees b. Returns 0 or SHARDMAP_EINVAL if nothing was applied. */
int shardmap__builder_publish(struct shardmap__builder *b);
void shardmap__builder_abort(struct shardmap__builder *b);

/* Observers: add/remove take the write lock. */
void shardmap__observer_add(shardmap *m, struct shardmap__observer *o);
void shardmap__observer_remove(shardmap *m, struct shardmap__observer *o);

/* Follower slot: set by shardmap_follow (fails with SHARDMAP_EBUSY if one is set). */
int shardmap__follower_set(shardmap *m, struct shardmap__follower *f);
struct shardmap__follower *shardmap__follower_take(shardmap *m);

#endif
