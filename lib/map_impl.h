/*
 * map_impl.h - the layout of the map and of a reader handle, for the files that implement
 * them (map.c, lookup.c, stats.c). Everyone else goes through map.h.
 */
#ifndef SHARDMAP_MAP_IMPL_H
#define SHARDMAP_MAP_IMPL_H

#include <assert.h>
#include <ck_epoch.h>
#include <ck_pr.h>
#include <ck_sequence.h>
#include <pthread.h>
#include <stdatomic.h>

#include "map.h"
#include "mem.h"
#include "tsan.h"

/* Figures of the published version, written by the publishing writer inside the sequence
 * lock and read by shardmap_stats_get without a section (it may run on any thread). Accessed
 * only through ck_pr loads and stores. */
struct shardmap__published_figures {
	uint64_t version, streams, open_shards, closed_shards, cells, unix_ns;
};

struct shardmap {
	/* The published version: read by every lookup, stored only by publish (write lock
	 * held). The epoch's global counter sits beside it: both are read on every section and
	 * written only by the writer, so they share a line no one else writes. */
	struct shardmap__version *current CK_CC_CACHELINE;
	ck_epoch_t epoch;
	uint64_t version_number; /* current->version, for shardmap_version (ck_pr_*_64) */
	uint64_t publishes;      /* versions published so far (write_lock held; see publish_seq) */

	/* Writers: everything below the lock is touched with it held, unless noted. */
	pthread_mutex_t write_lock CK_CC_CACHELINE;
	ck_epoch_record_t *writer; /* ck_epoch_call/poll/barrier, only under write_lock */
	struct shardmap__mem mem;
	shardmap_options options;
	struct shardmap__observer *observers;

	pthread_mutex_t follower_lock;
	struct shardmap__follower *follower;

	/* Every reader handle ever made, linked for freeing at close (under readers_lock);
	 * their epoch records are recycled, never freed before then. */
	pthread_mutex_t readers_lock;
	struct shardmap_reader *all_readers;

	/* Statistics: relaxed atomics (counters only, no ordering). */
	_Atomic uint64_t readers, applies, rejects_stale, rejects_gap, rejects_conflict,
	    rejects_nomem, rejects_invalid, versions_retired, versions_freed;
	ck_sequence_t figures_seq;
	struct shardmap__published_figures figures;
	struct shardmap__ext_stats ext;
};

/* The reader's memo of cells: sets picked by the cell id's hash, four cells a set (the one
 * found last first), so a few dozen owner cells do not push each other out. */
#define SHARDMAP__MEMO_SETS 64
#define SHARDMAP__MEMO_WAYS 4

/* What a reader's recent lookups found, so that a run of lookups on one stream and a few
 * owner cells skips the stream directory and the cell table (lookup.c). Read and written
 * only by the reader's own thread: nothing shared is written. It holds what was found in
 * the version whose publish_seq is `seq`, and is emptied when a section reads another one,
 * so it is used only while the section keeps those records alive (publish_seq is never
 * reused, so a later version at a recycled address cannot pass for it). */
struct shardmap__memo {
	uint64_t seq; /* 0: empty (publish_seq starts at 1) */
	const struct shardmap__stream *stream; /* NULL: none */
	/* A set is one cache line: the ways' id hashes together, so a probe compares all four
	 * at once and branches only on a miss (cells that share a set would otherwise make the
	 * way a lookup stops at unpredictable). */
	struct shardmap__memo_set {
		uint64_t id_hash[SHARDMAP__MEMO_WAYS];
		const struct shardmap__cell *cell[SHARDMAP__MEMO_WAYS]; /* NULL: empty; else the
									   only cell of id_hash */
	} set[SHARDMAP__MEMO_SETS] CK_CC_CACHELINE;
};

struct shardmap_reader {
	ck_epoch_record_t record; /* first, cache-line aligned: recycled through the epoch */
	shardmap *map;
	struct shardmap_reader *all_next;
#ifndef NDEBUG
	int in_section; /* owner thread only: lets debug builds catch lookups outside one */
#endif
	/* On lines of its own: the writer reads `record` when it polls the epoch, and the
	 * lookups' writes here must not pull that line away from it. */
	struct shardmap__memo memo CK_CC_CACHELINE;
};

/* The version a lookup works on. Call inside a read section (asserted in debug builds).
 * NULL before the first publish. */
static inline const struct shardmap__version *shardmap__reader_version(shardmap_reader *r)
{
#ifndef NDEBUG
	assert(r->in_section && "shardmap lookup outside shardmap_read_begin/end");
#endif
	/* Pairs with ck_pr_fence_store + ck_pr_store_ptr in publish (map.c): the version and
	 * everything reachable from it was written before the fence, and every load below goes
	 * through this pointer (an address dependency, which orders loads on every target ck
	 * supports, as rcu_dereference does), so the lookup sees it all initialised. The section
	 * keeps it from being freed until shardmap_read_end. */
	const struct shardmap__version *v = ck_pr_load_ptr(&r->map->current);
	if (v != NULL)
		SHARDMAP__TSAN_ACQUIRE(v);
	return v;
}

#endif
