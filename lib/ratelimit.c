/*
 * ratelimit.c - the guards every request to an authoritative store passes through, so that
 * a whole fleet restarting or hinting at once cannot melt etcd: a token bucket (rate and
 * burst), jittered exponential backoff between retries, a circuit breaker that stops
 * hammering a store that keeps failing, and single-flight coalescing of identical requests.
 * Used by the etcd store (lib/store_etcd.c, lib/etcd_follow.c) and by stale hints
 * (lib/hint.c).
 *
 * The token bucket is lock-free: its only shared word is the theoretical arrival time of
 * the next token (GCRA), advanced by compare-and-swap; it guards no other memory, so the
 * atomics are relaxed. The breaker and the single flight take a short mutex: they sit on
 * the path to a network request, never on a lookup.
 */
#include <math.h>

#include "ratelimit.h"
#include "shardmap.h"

/* ---------------------------------------------------------------- token bucket */

int shardmap__bucket_init(struct shardmap__bucket *b, double rate, unsigned burst)
{
	if (b == NULL || !(rate > 0))
		return SHARDMAP_EINVAL;
	if (burst == 0)
		burst = 1;
	b->interval_ns = isinf(rate) ? 0 : (uint64_t)(1e9 / rate);
	if (!isinf(rate) && b->interval_ns == 0)
		b->interval_ns = 1; /* more than 1e9 per second: one per nanosecond */
	b->tolerance_ns = b->interval_ns * (uint64_t)(burst - 1);
	atomic_init(&b->tat_ns, 0);
	return SHARDMAP_OK;
}

int shardmap__gcra_take(_Atomic uint64_t *tat_ns, uint64_t interval_ns, uint64_t tolerance_ns,
                        uint64_t now_ns, uint64_t *wait_ns)
{
	if (interval_ns == 0)
		return 1;
	/* Relaxed: the word is a schedule that orders no other memory; the CAS alone makes sure
	 * no token is handed out twice. */
	uint64_t tat = atomic_load_explicit(tat_ns, memory_order_relaxed);
	for (;;) {
		uint64_t base = tat > now_ns ? tat : now_ns;
		if (base - now_ns > tolerance_ns) {
			if (wait_ns != NULL)
				*wait_ns = base - now_ns - tolerance_ns;
			return 0;
		}
		/* Relaxed on both outcomes, as above; a failed CAS reloads tat and retries. */
		if (atomic_compare_exchange_weak_explicit(tat_ns, &tat, base + interval_ns,
		                                          memory_order_relaxed,
		                                          memory_order_relaxed))
			return 1;
	}
}

int shardmap__bucket_take(struct shardmap__bucket *b, uint64_t now_ns, uint64_t *wait_ns)
{
	return shardmap__gcra_take(&b->tat_ns, b->interval_ns, b->tolerance_ns, now_ns, wait_ns);
}

/* ---------------------------------------------------------------- backoff */

static uint64_t xorshift64(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

void shardmap__backoff_init(struct shardmap__backoff *b, uint64_t base_ns, uint64_t max_ns,
                            uint64_t seed)
{
	b->base_ns = base_ns ? base_ns : 1;
	b->max_ns = max_ns < b->base_ns ? b->base_ns : max_ns;
	b->attempt = 0;
	b->rng = seed ? seed : 0x9e3779b97f4a7c15u;
}

uint64_t shardmap__backoff_next(struct shardmap__backoff *b)
{
	uint64_t d = b->base_ns;
	for (unsigned i = 0; i < b->attempt && d < b->max_ns; i++)
		d = d > b->max_ns / 2 ? b->max_ns : d * 2;
	if (d > b->max_ns)
		d = b->max_ns;
	if (b->attempt < 64)
		b->attempt++;
	uint64_t half = d / 2;
	return half + xorshift64(&b->rng) % (d - half + 1);
}

void shardmap__backoff_reset(struct shardmap__backoff *b)
{
	b->attempt = 0;
}

/* ---------------------------------------------------------------- circuit breaker */

void shardmap__breaker_init(struct shardmap__breaker *br, unsigned threshold, uint64_t open_ns)
{
	pthread_mutex_init(&br->lock, NULL);
	br->threshold = threshold ? threshold : 1;
	br->open_ns = open_ns;
	br->state = SHARDMAP__BREAKER_CLOSED;
	br->failures = 0;
	br->until_ns = 0;
	br->trips = 0;
}

void shardmap__breaker_fini(struct shardmap__breaker *br)
{
	pthread_mutex_destroy(&br->lock);
}

int shardmap__breaker_allow(struct shardmap__breaker *br, uint64_t now_ns, uint64_t *wait_ns)
{
	int ok = 1;
	pthread_mutex_lock(&br->lock);
	switch (br->state) {
	case SHARDMAP__BREAKER_CLOSED:
		break;
	case SHARDMAP__BREAKER_OPEN:
	case SHARDMAP__BREAKER_HALF_OPEN:
		/* open and cooled down, or a half-open trial that never reported: one trial */
		if (now_ns >= br->until_ns) {
			br->state = SHARDMAP__BREAKER_HALF_OPEN;
			br->until_ns = now_ns + br->open_ns;
		} else {
			ok = 0;
			if (wait_ns != NULL)
				*wait_ns = br->until_ns - now_ns;
		}
		break;
	}
	pthread_mutex_unlock(&br->lock);
	return ok;
}

void shardmap__breaker_report(struct shardmap__breaker *br, uint64_t now_ns, int ok)
{
	pthread_mutex_lock(&br->lock);
	if (ok) {
		br->state = SHARDMAP__BREAKER_CLOSED;
		br->failures = 0;
	} else if (br->state == SHARDMAP__BREAKER_HALF_OPEN ||
	           (br->state == SHARDMAP__BREAKER_CLOSED && ++br->failures >= br->threshold)) {
		br->state = SHARDMAP__BREAKER_OPEN;
		br->until_ns = now_ns + br->open_ns;
		br->failures = 0;
		br->trips++;
	}
	/* a failure reported while open (a request that left before it opened) changes nothing */
	pthread_mutex_unlock(&br->lock);
}

enum shardmap__breaker_state shardmap__breaker_state(struct shardmap__breaker *br,
                                                     uint64_t now_ns)
{
	pthread_mutex_lock(&br->lock);
	enum shardmap__breaker_state s = br->state;
	if (s == SHARDMAP__BREAKER_OPEN && now_ns >= br->until_ns)
		s = SHARDMAP__BREAKER_HALF_OPEN; /* the next allow lets a trial through */
	pthread_mutex_unlock(&br->lock);
	return s;
}

/* ---------------------------------------------------------------- single flight */

void shardmap__flight_init(struct shardmap__flight *f)
{
	pthread_mutex_init(&f->lock, NULL);
	pthread_cond_init(&f->cond, NULL);
	f->busy = 0;
	f->waiters = f->readers = 0;
	f->gen = 0;
	f->res = (struct shardmap__flight_result){0};
	f->joined = 0;
}

void shardmap__flight_fini(struct shardmap__flight *f)
{
	pthread_cond_destroy(&f->cond);
	pthread_mutex_destroy(&f->lock);
}

int shardmap__flight_join(struct shardmap__flight *f, struct shardmap__flight_result *res)
{
	pthread_mutex_lock(&f->lock);
	/* The previous round's joiners copy its result before a new round may overwrite it. */
	while (!f->busy && f->readers > 0)
		pthread_cond_wait(&f->cond, &f->lock);
	if (!f->busy) {
		f->busy = 1;
		pthread_mutex_unlock(&f->lock);
		return 1;
	}
	f->waiters++;
	f->joined++;
	uint64_t gen = f->gen;
	while (f->gen == gen)
		pthread_cond_wait(&f->cond, &f->lock);
	*res = f->res;
	if (--f->readers == 0)
		pthread_cond_broadcast(&f->cond);
	pthread_mutex_unlock(&f->lock);
	return 0;
}

void shardmap__flight_done(struct shardmap__flight *f, const struct shardmap__flight_result *res,
                           void (*share)(void *obj, unsigned joiners))
{
	pthread_mutex_lock(&f->lock);
	if (share != NULL && f->waiters > 0)
		share(res->obj, f->waiters);
	f->res = *res;
	f->readers = f->waiters;
	f->waiters = 0;
	f->busy = 0;
	f->gen++;
	pthread_cond_broadcast(&f->cond);
	pthread_mutex_unlock(&f->lock);
}
