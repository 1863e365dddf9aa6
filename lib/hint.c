/*
 * hint.c - stale hints: a back-end answered "not my shard", so the front-end's map may be
 * behind the store. shardmap_hint_stale turns a storm of such hints into a bounded number
 * of catch-ups through the map's follower (lib/map.h shardmap__follower_catch_up):
 *
 *   - a hint that the map is already newer than is ignored (SHARDMAP_ESTALE);
 *   - hints that arrive while a catch-up asked at the same map version is still within its
 *     window (one token interval, 1 / hint_rate) are coalesced into it;
 *   - otherwise a catch-up takes a token from the map's bucket (hint_rate per second, bursts
 *     of hint_burst; hint_rate 0 turns catch-ups off); without a token the hint is dropped
 *     (SHARDMAP_EBUSY).
 * So a storm of any size costs the store at most hint_burst + hint_rate * seconds catch-ups,
 * and each catch-up is itself coalesced and limited again by the follower and its store.
 *
 * The limiter's state is three words in the map's extension stats (map.h), all relaxed
 * atomics: they order no other memory. The window's version and deadline are two words
 * written one after the other; a hint that reads them torn merely fails to coalesce and
 * takes a token instead, which the bucket still bounds.
 */
#include "map.h"
#include "ratelimit.h"

static void bump(_Atomic uint64_t *c)
{
	/* Relaxed: a statistics counter. */
	atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

int shardmap_hint_stale(shardmap *m, const char *stream, const char *shard_id,
                        uint64_t seen_version)
{
	if (m == NULL || stream == NULL || shard_id == NULL)
		return SHARDMAP_EINVAL;
	struct shardmap__ext_stats *x = shardmap__ext(m);
	bump(&x->hints);
	uint64_t v = shardmap_version(m);
	if (v > seen_version)
		return SHARDMAP_ESTALE;

	const shardmap_options *opt = shardmap__options(m);
	uint64_t now = shardmap__monotonic_ns();
	uint64_t interval = opt->hint_rate > 0 ? (uint64_t)(1e9 / opt->hint_rate) : UINT64_MAX;
	if (interval == 0)
		interval = 1;
	/* Relaxed: see the file comment. */
	if (atomic_load_explicit(&x->hint_window_version, memory_order_relaxed) == v &&
	    now < atomic_load_explicit(&x->hint_window_end_ns, memory_order_relaxed)) {
		bump(&x->hints_coalesced);
		return SHARDMAP_OK;
	}
	unsigned burst = opt->hint_burst ? opt->hint_burst : 1;
	if (interval == UINT64_MAX ||
	    !shardmap__gcra_take(&x->hint_tat_ns, interval, interval * (burst - 1), now, NULL)) {
		bump(&x->hints_dropped);
		return SHARDMAP_EBUSY;
	}
	int rc = shardmap__follower_catch_up(m);
	if (rc != 0)
		return rc;
	/* Relaxed: see the file comment. Deadline first, so a hint that sees the new version
	 * usually sees the new deadline too. */
	atomic_store_explicit(&x->hint_window_end_ns, now + interval, memory_order_relaxed);
	atomic_store_explicit(&x->hint_window_version, v, memory_order_relaxed);
	return SHARDMAP_OK;
}
