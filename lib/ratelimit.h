/*
 * ratelimit.h - protecting the authoritative store from the fleet: a token bucket, jittered
 * exponential backoff, a circuit breaker and single-flight coalescing.
 *
 * Every function that needs the time takes it as an argument (now_ns, monotonic
 * nanoseconds: shardmap__monotonic_ns() from map.h in production), so tests drive a fake
 * clock and never sleep.
 */
#ifndef SHARDMAP_RATELIMIT_H
#define SHARDMAP_RATELIMIT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

/* ---------------------------------------------------------------- token bucket
 * rate tokens per second, at most burst of them at once. Kept in the "virtual scheduling"
 * form of the generic cell rate algorithm: one atomic word, the theoretical arrival time of
 * the next token, so taking a token is one compare-and-swap and needs no lock. */
struct shardmap__bucket {
	uint64_t interval_ns;    /* 1e9 / rate; 0 = unlimited */
	uint64_t tolerance_ns;   /* interval_ns * (burst - 1): how far the schedule may run ahead */
	_Atomic uint64_t tat_ns; /* theoretical arrival time; 0 = full bucket */
};

/* rate > 0 tokens per second (INFINITY = unlimited), burst >= 1 (0 is taken as 1).
 * Returns 0 or SHARDMAP_EINVAL (rate not positive, or NaN). The bucket starts full. */
int shardmap__bucket_init(struct shardmap__bucket *b, double rate, unsigned burst);
/* Take one token at now_ns. Returns 1 (granted) or 0 (empty: *wait_ns, when not NULL, gets
 * the time until one is available). Thread-safety: MT-safe, lock-free. Blocking: never. */
int shardmap__bucket_take(struct shardmap__bucket *b, uint64_t now_ns, uint64_t *wait_ns);
/* The same on a bare arrival-time word kept elsewhere (all zero is a full bucket), with
 * the parameters computed by the caller as shardmap__bucket_init does. */
int shardmap__gcra_take(_Atomic uint64_t *tat_ns, uint64_t interval_ns, uint64_t tolerance_ns,
                        uint64_t now_ns, uint64_t *wait_ns);

/* ---------------------------------------------------------------- backoff
 * Exponential backoff with "equal jitter": the n-th consecutive failure waits a uniformly
 * random time in [d/2, d] where d = min(max, base * 2^n). Owned by one caller (not
 * thread-safe); the random state is a seed the owner picks (tests fix it). */
struct shardmap__backoff {
	uint64_t base_ns, max_ns;
	unsigned attempt;  /* consecutive failures so far */
	uint64_t rng;      /* xorshift state, never 0 */
};

void shardmap__backoff_init(struct shardmap__backoff *b, uint64_t base_ns, uint64_t max_ns,
                            uint64_t seed);
/* The delay before the next attempt after one more failure (attempt is incremented). */
uint64_t shardmap__backoff_next(struct shardmap__backoff *b);
/* A success: the next failure starts again from base. */
void shardmap__backoff_reset(struct shardmap__backoff *b);

/* ---------------------------------------------------------------- circuit breaker
 * closed: requests flow; threshold consecutive failures open it. open: requests are refused
 * for open_ns. Then half-open: one trial request is let through; its success closes the
 * breaker, its failure opens it again (a trial that never reports back is replaced after
 * another open_ns). */
enum shardmap__breaker_state {
	SHARDMAP__BREAKER_CLOSED = 0,
	SHARDMAP__BREAKER_OPEN = 1,
	SHARDMAP__BREAKER_HALF_OPEN = 2,
};

struct shardmap__breaker {
	pthread_mutex_t lock;
	unsigned threshold;
	uint64_t open_ns;
	enum shardmap__breaker_state state;
	unsigned failures;    /* consecutive, while closed */
	uint64_t until_ns;    /* open: refuse until then; half-open: the trial's deadline */
	uint64_t trips;       /* times it opened (statistics) */
};

void shardmap__breaker_init(struct shardmap__breaker *br, unsigned threshold, uint64_t open_ns);
void shardmap__breaker_fini(struct shardmap__breaker *br);
/* May a request go out at now_ns? Returns 1 (go, and report the outcome with
 * shardmap__breaker_report) or 0 (refused: *wait_ns, when not NULL, gets the time until a
 * trial may go). Thread-safety: MT-safe. Blocking: never (a short internal lock). */
int shardmap__breaker_allow(struct shardmap__breaker *br, uint64_t now_ns, uint64_t *wait_ns);
/* The outcome of a request that allow let through (ok: the store answered). */
void shardmap__breaker_report(struct shardmap__breaker *br, uint64_t now_ns, int ok);
enum shardmap__breaker_state shardmap__breaker_state(struct shardmap__breaker *br,
                                                     uint64_t now_ns);

/* ---------------------------------------------------------------- single flight
 * Concurrent needs for the same data become one request: the first caller leads and does
 * the work; callers arriving while it works wait and receive the leader's result. */
struct shardmap__flight_result {
	int rc;
	uint64_t value;
	void *obj; /* shared by the leader and every joiner: see share in flight_done */
};

struct shardmap__flight {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int busy;          /* a leader is working */
	unsigned waiters;  /* joiners of the current round */
	unsigned readers;  /* joiners of the finished round that have not copied the result */
	uint64_t gen;      /* finished rounds */
	struct shardmap__flight_result res;
	uint64_t joined;   /* callers that were served by another's request (statistics) */
};

void shardmap__flight_init(struct shardmap__flight *f);
void shardmap__flight_fini(struct shardmap__flight *f);
/* Returns 1: the caller leads; it must do the work and call shardmap__flight_done.
 * Returns 0: another caller led; *res holds its result. Thread-safety: MT-safe.
 * Blocking: a joiner waits for the leader's request. */
int shardmap__flight_join(struct shardmap__flight *f, struct shardmap__flight_result *res);
/* The leader's result. share (may be NULL) is called, before any joiner wakes, with the
 * number of joiners that will receive res->obj, so the leader can take a reference for each. */
void shardmap__flight_done(struct shardmap__flight *f, const struct shardmap__flight_result *res,
                           void (*share)(void *obj, unsigned joiners));

#endif
