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
	/* added by etcd: the stale-hint limiter of the map (lib/hint.c). Relaxed atomics that
	 * order nothing, all zero at open: the token bucket's theoretical arrival time, and
	 * the map version and deadline of the last catch-up (hints inside it coalesce). */
	_Atomic uint64_t hint_tat_ns, hint_window_version, hint_window_end_ns;
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

/* ---- added by the map module ---- */

/* Note on shardmap__builder_publish: on SHARDMAP_EINVAL (nothing applied, or an apply
 * failed) b is NOT freed: call shardmap__builder_abort. After a failed
 * shardmap__builder_apply the builder holds a half-applied delta: only abort is left (later
 * applies and publish fail with the same code). */

/* Run the frees whose grace period is over. wait 0: poll (never blocks); wait 1: wait for a
 * full grace period first, so every version retired before the call is freed on return.
 * Returns: the number of retired versions still waiting (0 after wait=1 unless another
 * writer published meanwhile). Thread-safety: MT-safe (takes the write lock).
 * Blocking: wait=1 waits for every reader to leave its current section. Never call it
 * inside a read section or while holding shardmap__pin. */
int shardmap__reclaim(shardmap *m, int wait);

/* The version a reader's section sees (NULL before the first publish), for read-side code
 * outside map.c (iteration). Call inside a read section (asserted in debug builds).
 * Lifetime: until shardmap_read_end. Blocking: never. */
const struct shardmap__version *shardmap__read_version(shardmap_reader *r);

/* Fill *out from shard sh of stream st in version v (pointers into v's records).
 * Returns 0, or SHARDMAP_ENOENT if the owner cell is missing (apply never allows it).
 * Read-side: call inside the section that protects v. Blocking: never. */
int shardmap__route_answer(const struct shardmap__version *v, const struct shardmap__stream *st,
                           const struct shardmap__shard *sh, shardmap_route *out);

/* The options the map was opened with (defaults filled in). Lifetime: the map's. */
const shardmap_options *shardmap__options(const shardmap *m);

/* CLOCK_MONOTONIC in nanoseconds: the clock of shardmap__ext_stats.store_last_contact_ns
 * (stats report stale_ns = now - store_last_contact_ns, 0 while it is 0). */
uint64_t shardmap__monotonic_ns(void);

/* ---- added by etcd (for lib/hint.c) ---- */

/* Ask m's follower for a catch-up: calls f->catch_up with follower_lock held, so that
 * shardmap__follower_take (and the stop that follows it) cannot free the follower
 * meanwhile. Returns 0, or SHARDMAP_ENOTSUP when m follows no store.
 * Thread-safety: MT-safe. Blocking: never (catch_up never blocks; the lock is a leaf).
 * Implemented in map.c next to shardmap__follower_take:
 *	pthread_mutex_lock(&m->follower_lock);
 *	struct shardmap__follower *f = m->follower;
 *	if (f != NULL)
 *		f->catch_up(f);
 *	pthread_mutex_unlock(&m->follower_lock);
 *	return f != NULL ? SHARDMAP_OK : SHARDMAP_ENOTSUP; */
int shardmap__follower_catch_up(shardmap *m);

#endif
