/*
 * test_ratelimit.c - the store's guards on a fake clock (no sleeps): the token bucket's rate
 * and burst, jittered exponential backoff, the circuit breaker's states, and single-flight
 * coalescing.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>

#include "ratelimit.h"
#include "shardmap.h"

#define MS 1000000ull
#define SEC 1000000000ull

/* ---------------------------------------------------------------- token bucket */

Test(bucket, bad_parameters)
{
	struct shardmap__bucket b;
	cr_assert_eq(shardmap__bucket_init(&b, 0, 1), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap__bucket_init(&b, -3, 1), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap__bucket_init(&b, NAN, 1), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap__bucket_init(NULL, 1, 1), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap__bucket_init(&b, INFINITY, 1), 0);
	for (int i = 0; i < 1000; i++)
		cr_assert(shardmap__bucket_take(&b, 0, NULL), "unlimited");
}

Test(bucket, burst_then_rate)
{
	struct shardmap__bucket b;
	cr_assert_eq(shardmap__bucket_init(&b, 10, 5), 0); /* 10/s, bursts of 5 */
	uint64_t now = 100 * SEC, wait = 0;
	for (int i = 0; i < 5; i++)
		cr_assert(shardmap__bucket_take(&b, now, NULL), "burst token %d", i);
	cr_assert_not(shardmap__bucket_take(&b, now, &wait));
	cr_assert_eq(wait, 100 * MS, "the next token comes after one interval");
	cr_assert_not(shardmap__bucket_take(&b, now + 99 * MS, NULL));
	cr_assert(shardmap__bucket_take(&b, now + 100 * MS, NULL));
	/* over ten seconds at most burst + rate * 10 tokens, however hard it is asked */
	int granted = 0;
	for (uint64_t t = now + 100 * MS; t <= now + 10 * SEC + 100 * MS; t += MS / 10)
		granted += shardmap__bucket_take(&b, t, NULL);
	cr_assert_eq(granted, 100, "exactly the rate once the burst is spent");
	/* an idle bucket refills to the burst, never beyond */
	now += 3600 * SEC;
	int burst = 0;
	while (shardmap__bucket_take(&b, now, NULL))
		burst++;
	cr_assert_eq(burst, 5);
}

Test(bucket, burst_zero_means_one)
{
	struct shardmap__bucket b;
	cr_assert_eq(shardmap__bucket_init(&b, 1, 0), 0);
	cr_assert(shardmap__bucket_take(&b, SEC, NULL));
	cr_assert_not(shardmap__bucket_take(&b, SEC, NULL));
}

struct taker {
	struct shardmap__bucket *b;
	_Atomic int *granted;
};

static void *take_main(void *arg)
{
	struct taker *t = arg;
	for (int i = 0; i < 100000; i++)
		if (shardmap__bucket_take(t->b, 42 * SEC, NULL))
			atomic_fetch_add(t->granted, 1);
	return NULL;
}

Test(bucket, concurrent_takers_never_exceed_the_burst)
{
	struct shardmap__bucket b;
	cr_assert_eq(shardmap__bucket_init(&b, 1, 64), 0);
	_Atomic int granted = 0;
	pthread_t t[8];
	struct taker tk = {&b, &granted};
	for (int i = 0; i < 8; i++)
		pthread_create(&t[i], NULL, take_main, &tk);
	for (int i = 0; i < 8; i++)
		pthread_join(t[i], NULL);
	cr_assert_eq(atomic_load(&granted), 64, "one clock instant: exactly the burst");
}

/* ---------------------------------------------------------------- backoff */

Test(backoff, grows_jittered_and_capped)
{
	struct shardmap__backoff bo;
	shardmap__backoff_init(&bo, 50 * MS, 2000 * MS, 12345);
	uint64_t expect = 50 * MS;
	for (int i = 0; i < 12; i++) {
		uint64_t d = shardmap__backoff_next(&bo);
		cr_assert_geq(d, expect / 2, "attempt %d: %llu", i, (unsigned long long)d);
		cr_assert_leq(d, expect, "attempt %d: %llu", i, (unsigned long long)d);
		expect = expect * 2 > 2000 * MS ? 2000 * MS : expect * 2;
	}
	shardmap__backoff_reset(&bo);
	uint64_t d = shardmap__backoff_next(&bo);
	cr_assert(d >= 25 * MS && d <= 50 * MS, "reset starts from base again");
}

Test(backoff, jitter_spreads_clients)
{
	/* two clients failing in lock step do not retry in lock step */
	int differ = 0;
	for (uint64_t seed = 1; seed <= 20; seed++) {
		struct shardmap__backoff a, b;
		shardmap__backoff_init(&a, 100 * MS, 10 * SEC, seed);
		shardmap__backoff_init(&b, 100 * MS, 10 * SEC, seed * 7919);
		for (int i = 0; i < 5; i++)
			differ += shardmap__backoff_next(&a) != shardmap__backoff_next(&b);
	}
	cr_assert_gt(differ, 90);
}

Test(backoff, huge_attempt_counts_do_not_overflow)
{
	struct shardmap__backoff bo;
	shardmap__backoff_init(&bo, 1, UINT64_MAX / 4, 9);
	for (int i = 0; i < 200; i++)
		cr_assert_leq(shardmap__backoff_next(&bo), UINT64_MAX / 4);
}

/* ---------------------------------------------------------------- breaker */

Test(breaker, opens_after_threshold_and_half_opens)
{
	struct shardmap__breaker br;
	shardmap__breaker_init(&br, 3, 1 * SEC);
	uint64_t now = 10 * SEC, wait = 0;
	for (int i = 0; i < 2; i++) {
		cr_assert(shardmap__breaker_allow(&br, now, NULL));
		shardmap__breaker_report(&br, now, 0);
	}
	cr_assert_eq(shardmap__breaker_state(&br, now), SHARDMAP__BREAKER_CLOSED);
	cr_assert(shardmap__breaker_allow(&br, now, NULL));
	shardmap__breaker_report(&br, now, 0);
	cr_assert_eq(shardmap__breaker_state(&br, now), SHARDMAP__BREAKER_OPEN);
	cr_assert_not(shardmap__breaker_allow(&br, now + 500 * MS, &wait));
	cr_assert_eq(wait, 500 * MS);
	/* cooled down: exactly one trial goes */
	cr_assert(shardmap__breaker_allow(&br, now + SEC, NULL));
	cr_assert_not(shardmap__breaker_allow(&br, now + SEC, NULL), "one trial at a time");
	/* the trial fails: open again for a full period */
	shardmap__breaker_report(&br, now + SEC, 0);
	cr_assert_not(shardmap__breaker_allow(&br, now + SEC + 999 * MS, NULL));
	cr_assert(shardmap__breaker_allow(&br, now + 2 * SEC, NULL));
	/* the next trial succeeds: closed */
	shardmap__breaker_report(&br, now + 2 * SEC, 1);
	cr_assert_eq(shardmap__breaker_state(&br, now + 2 * SEC), SHARDMAP__BREAKER_CLOSED);
	for (int i = 0; i < 10; i++)
		cr_assert(shardmap__breaker_allow(&br, now + 2 * SEC, NULL));
	cr_assert_eq(br.trips, 2);
	shardmap__breaker_fini(&br);
}

Test(breaker, success_resets_the_failure_count)
{
	struct shardmap__breaker br;
	shardmap__breaker_init(&br, 2, SEC);
	for (int i = 0; i < 10; i++) {
		shardmap__breaker_report(&br, 0, 0);
		shardmap__breaker_report(&br, 0, 1);
	}
	cr_assert_eq(shardmap__breaker_state(&br, 0), SHARDMAP__BREAKER_CLOSED);
	shardmap__breaker_fini(&br);
}

Test(breaker, a_lost_trial_is_replaced)
{
	struct shardmap__breaker br;
	shardmap__breaker_init(&br, 1, SEC);
	shardmap__breaker_report(&br, 0, 0);
	cr_assert(shardmap__breaker_allow(&br, SEC, NULL)); /* the trial never reports */
	cr_assert_not(shardmap__breaker_allow(&br, SEC + 10 * MS, NULL));
	cr_assert(shardmap__breaker_allow(&br, 2 * SEC, NULL), "another trial after a period");
	shardmap__breaker_fini(&br);
}

/* ---------------------------------------------------------------- single flight */

struct flight_case {
	struct shardmap__flight f;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int release; /* the leader finishes only when told */
	_Atomic int leaders, joined, waiting;
	_Atomic uint64_t sum;
};

static void *flight_main(void *arg)
{
	struct flight_case *c = arg;
	struct shardmap__flight_result res;
	atomic_fetch_add(&c->waiting, 1);
	if (shardmap__flight_join(&c->f, &res)) {
		atomic_fetch_add(&c->leaders, 1);
		pthread_mutex_lock(&c->lock);
		while (!c->release)
			pthread_cond_wait(&c->cond, &c->lock);
		pthread_mutex_unlock(&c->lock);
		res = (struct shardmap__flight_result){.rc = 0, .value = 77};
		shardmap__flight_done(&c->f, &res, NULL);
	} else {
		atomic_fetch_add(&c->joined, 1);
	}
	atomic_fetch_add(&c->sum, res.value);
	return NULL;
}

static int all_joined(struct flight_case *c, int n)
{
	pthread_mutex_lock(&c->f.lock);
	int ok = c->f.busy && c->f.waiters == (unsigned)n - 1;
	pthread_mutex_unlock(&c->f.lock);
	return ok;
}

Test(flight, concurrent_callers_share_one_request)
{
	struct flight_case c = {0};
	shardmap__flight_init(&c.f);
	pthread_mutex_init(&c.lock, NULL);
	pthread_cond_init(&c.cond, NULL);
	enum { N = 16 };
	pthread_t t[N];
	for (int i = 0; i < N; i++)
		pthread_create(&t[i], NULL, flight_main, &c);
	/* wait (on a condition) until everyone is inside: one leader, N-1 joiners */
	while (!all_joined(&c, N))
		sched_yield();
	pthread_mutex_lock(&c.lock);
	c.release = 1;
	pthread_cond_broadcast(&c.cond);
	pthread_mutex_unlock(&c.lock);
	for (int i = 0; i < N; i++)
		pthread_join(t[i], NULL);
	cr_assert_eq(atomic_load(&c.leaders), 1);
	cr_assert_eq(atomic_load(&c.joined), N - 1);
	cr_assert_eq(atomic_load(&c.sum), 77u * N, "everyone got the leader's result");
	cr_assert_eq(c.f.joined, N - 1);
	/* the next caller leads a new round */
	struct shardmap__flight_result res;
	cr_assert_eq(shardmap__flight_join(&c.f, &res), 1);
	shardmap__flight_done(&c.f, &res, NULL);
	shardmap__flight_fini(&c.f);
}

static _Atomic unsigned shared_refs;

static void count_share(void *obj, unsigned joiners)
{
	cr_assert_eq(obj, (void *)&shared_refs);
	atomic_fetch_add(&shared_refs, joiners);
}

Test(flight, share_counts_every_joiner)
{
	struct shardmap__flight f;
	shardmap__flight_init(&f);
	struct shardmap__flight_result res = {.obj = (void *)&shared_refs};
	cr_assert_eq(shardmap__flight_join(&f, &res), 1);
	shardmap__flight_done(&f, &res, count_share);
	cr_assert_eq(atomic_load(&shared_refs), 0, "no joiner, no extra reference");
	shardmap__flight_fini(&f);
}
