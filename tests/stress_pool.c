/*
 * stress_pool.c - torture test of the worker pool (lib/pool.c): many client threads churn
 * tasks on one shared pool while the pool's workers run their callbacks. A plain executable
 * (suite "stress") so it also runs under ThreadSanitizer.
 *
 * Each client thread, for many iterations, opens one task of every kind below, drives it
 * from outside, waits (on a condition, with a deadline) until every callback the task is owed
 * has happened, and then closes it, from outside or from inside its own callback:
 *   pipe     watches a pipe; the client writes chunks, stops and restarts the watch halfway;
 *            the callback must read every byte; closed from outside.
 *   eventfd  watches an eventfd the client adds 1..N to; the callback must read the sum,
 *            and wakes its own task from inside after every read that got something.
 *   chain    a timer that re-arms itself from its callback and closes itself from inside
 *            on its CHAIN_FIRES-th expiry: exactly that many TIMER callbacks, nothing else.
 *   wake     woken WAKES times from the client thread: wakes may coalesce, but a callback
 *            must run after the last one; then asked (by a wake) to close itself from inside.
 *   idle     a timer armed an hour ahead, re-armed, disarmed: it must never be called.
 *   doomed   data pending on its pipe, a zero timer and a wake in flight, then closed from
 *            outside at once; more data is written after the close.
 * For every task: no callback with an event it cannot get, and no callback at all once it is
 * closed (after shardmap__task_close returned, or after it closed itself from inside). A
 * callback after that would also be a use after free that ASan or TSan reports.
 *
 * Lock order: a client's lock is taken by callbacks, so a client never holds it while it
 * closes a task from outside (that waits for the task's worker to finish its iteration);
 * it may hold it while it wakes or arms a task (pool.h: the caller's locks come first).
 *
 * Iterations: 2,000 per client by default, times SHARDMAP_STRESS_SCALE (a positive number).
 * Exit status 0 on success, 1 on any failure (the first failure is printed).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "delta_gen.h"
#include "pool.h"

#define CLIENTS		8
#define POOL_THREADS	3
#define BASE_ITERATIONS 2000
#define DEADLINE_S	60
#define CHAIN_FIRES	5
#define WAKES		20
#define PIPE_CHUNKS	16
#define EVENTFD_ADDS	10
#define HOUR_MS		3600000u

#define EV_ALL                                                                                     \
	(SHARDMAP__EV_READ | SHARDMAP__EV_WRITE | SHARDMAP__EV_ERROR | SHARDMAP__EV_TIMER |        \
	 SHARDMAP__EV_WAKE)

/* Reported in tctx.unexpected besides the events themselves. */
#define NO_SUCH_EVENT 0x80000000u /* a callback with no event, or one pool.h does not define */
#define REARM_FAILED  0x40000000u /* shardmap__task_timer failed inside the callback */

enum kind { PIPE_TASK, EVENTFD_TASK, CHAIN_TASK, WAKE_TASK, IDLE_TASK, DOOMED_TASK, KINDS };

static const char *const kind_name[KINDS] = {"pipe", "eventfd", "chain", "wake", "idle", "doomed"};

/* Events each kind may be called with. */
static const uint32_t kind_events[KINDS] = {
    [PIPE_TASK] = SHARDMAP__EV_READ,
    [EVENTFD_TASK] = SHARDMAP__EV_READ | SHARDMAP__EV_WAKE,
    [CHAIN_TASK] = SHARDMAP__EV_TIMER,
    [WAKE_TASK] = SHARDMAP__EV_WAKE,
    [IDLE_TASK] = 0,
    [DOOMED_TASK] = SHARDMAP__EV_READ | SHARDMAP__EV_TIMER | SHARDMAP__EV_WAKE,
};

static shardmap_pool *pool;
static atomic_int failures;	    /* relaxed: read once after every thread has been joined */
static atomic_long total_callbacks; /* relaxed: a statistic */
static pthread_mutex_t first_lock = PTHREAD_MUTEX_INITIALIZER;
static char first_failure[256];

#define FAIL(...)                                                                                  \
	do {                                                                                       \
		if (atomic_fetch_add_explicit(&failures, 1, memory_order_relaxed) == 0) {          \
			pthread_mutex_lock(&first_lock);                                           \
			snprintf(first_failure, sizeof first_failure, __VA_ARGS__);                \
			pthread_mutex_unlock(&first_lock);                                         \
		}                                                                                  \
	} while (0)

struct client;

/* One task and what its callback saw. Fields below `lock` are under client->lock. */
struct tctx {
	struct client *c;
	struct shardmap__task *t;
	enum kind kind;
	int rfd, wfd; /* pipe ends, or the eventfd in both; -1 none */
	/* the last wake generation the client published before waking (release by the client,
	 * acquire by the callback: the callback then sees at least that generation) */
	atomic_int wake_gen;
	/* under client->lock */
	long calls, bytes, fires;
	int wake_seen;	     /* highest wake generation a callback saw */
	int want_close;	     /* the client asks the callback to close the task */
	int gone;	     /* the task closed itself (set in its last callback) */
	int closed;	     /* closed from outside: shardmap__task_close has returned */
	long late;	     /* callbacks after gone or closed */
	uint32_t unexpected; /* events the kind cannot get */
};

struct client {
	pthread_t thread;
	int index;
	uint64_t rng;
	long iterations;
	pthread_mutex_t lock;
	pthread_cond_t cond; /* broadcast by callbacks after every change */
	struct tctx tasks[KINDS];
};

/* ---------------------------------------------------------------- callbacks */

/* Read everything the fd has now (non-blocking). Returns the bytes read, or for an eventfd
 * the counter's value. */
static long drain(const struct tctx *x)
{
	long got = 0;
	if (x->kind == EVENTFD_TASK) {
		uint64_t v;
		if (read(x->rfd, &v, sizeof v) == (ssize_t)sizeof v)
			got = (long)v;
		return got; /* EAGAIN: a wake-up whose value another callback already read */
	}
	char buf[512];
	for (;;) {
		ssize_t n = read(x->rfd, buf, sizeof buf);
		if (n > 0) {
			got += n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		return got; /* EAGAIN: drained */
	}
}

static void on_event(struct shardmap__task *t, void *arg, uint32_t events)
{
	struct tctx *x = arg;
	struct client *c = x->c;
	long got = (events & SHARDMAP__EV_READ) && x->rfd >= 0 ? drain(x) : 0;
	/* acquire: pairs with the client's release store before its task_wake */
	int gen = atomic_load_explicit(&x->wake_gen, memory_order_acquire);
	atomic_fetch_add_explicit(&total_callbacks, 1, memory_order_relaxed);
	if (x->kind == DOOMED_TASK)
		sched_yield(); /* widen the window in which a close from outside meets us */

	pthread_mutex_lock(&c->lock);
	x->calls++;
	if (x->gone || x->closed)
		x->late++;
	x->unexpected |= events & ~kind_events[x->kind];
	if (events == 0 || (events & ~EV_ALL))
		x->unexpected |= NO_SUCH_EVENT;
	x->bytes += got;
	if (x->kind == EVENTFD_TASK && got > 0)
		shardmap__task_wake(t); /* from inside: runs again in a later worker iteration */
	if (gen > x->wake_seen)
		x->wake_seen = gen;
	if (events & SHARDMAP__EV_TIMER) {
		x->fires++;
		if (x->kind == CHAIN_TASK && x->fires < CHAIN_FIRES) {
			/* re-arm from inside: 0 or 1 ms */
			if (shardmap__task_timer(t, (uint64_t)(x->fires % 2)) != 0)
				x->unexpected |= REARM_FAILED;
		}
	}
	int close_now = !x->gone && ((x->kind == CHAIN_TASK && x->fires == CHAIN_FIRES) ||
				     (x->kind == WAKE_TASK && x->want_close));
	if (close_now) {
		/* from the task's own callback: never waits; the task is freed after we return */
		shardmap__task_close(t);
		x->gone = 1;
	}
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
}

/* ---------------------------------------------------------------- the client side */

/* Wait until pred(x) holds (under c->lock). Exits on the deadline: the test has failed and
 * tasks may be stuck, so there is nothing safe left to clean up. */
static void wait_until(struct client *c, struct tctx *x, int (*pred)(const struct tctx *),
		       const char *what)
{
	struct timespec dl;
	clock_gettime(CLOCK_MONOTONIC, &dl);
	dl.tv_sec += DEADLINE_S;
	pthread_mutex_lock(&c->lock);
	while (!pred(x)) {
		if (pthread_cond_timedwait(&c->cond, &c->lock, &dl) == ETIMEDOUT && !pred(x)) {
			fprintf(stderr,
				"stress_pool: client %d, iteration %ld: %s task: no %s after %d s "
				"(calls %ld, bytes %ld, fires %ld, wake %d)\n",
				c->index, c->iterations, kind_name[x->kind], what, DEADLINE_S,
				x->calls, x->bytes, x->fires, x->wake_seen);
			exit(1);
		}
	}
	pthread_mutex_unlock(&c->lock);
}

static long expected_bytes[CLIENTS]; /* bytes written to the pipe task this iteration */

static int pipe_done(const struct tctx *x)
{
	return x->bytes == expected_bytes[x->c->index];
}

static int eventfd_done(const struct tctx *x)
{
	return x->bytes == EVENTFD_ADDS * (EVENTFD_ADDS + 1) / 2;
}

static int is_gone(const struct tctx *x)
{
	return x->gone;
}

static int saw_last_wake(const struct tctx *x)
{
	return x->wake_seen == WAKES;
}

static void must(int rc, struct client *c, const char *what)
{
	if (rc != 0) {
		fprintf(stderr, "stress_pool: client %d: %s failed (%d)\n", c->index, what, rc);
		exit(1);
	}
}

static void write_all(int fd, const void *p, size_t n)
{
	/* at most a few KiB into an empty pipe or an eventfd: never blocks, never short */
	if (write(fd, p, n) != (ssize_t)n) {
		perror("stress_pool: write");
		exit(1);
	}
}

static void open_task(struct client *c, enum kind k)
{
	struct tctx *x = &c->tasks[k];
	memset(x, 0, sizeof *x);
	x->c = c;
	x->kind = k;
	x->rfd = x->wfd = -1;
	atomic_init(&x->wake_gen, 0);
	if (k == PIPE_TASK || k == DOOMED_TASK) {
		int fds[2];
		must(pipe2(fds, O_NONBLOCK | O_CLOEXEC), c, "pipe2");
		x->rfd = fds[0];
		x->wfd = fds[1];
	} else if (k == EVENTFD_TASK) {
		x->rfd = x->wfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		must(x->rfd < 0, c, "eventfd");
	}
	must(shardmap__task_open(pool, on_event, x, &x->t), c, "task_open");
	if (x->rfd >= 0)
		must(shardmap__task_watch(x->t, x->rfd, SHARDMAP__EV_READ), c, "task_watch");
}

/* Close from outside; afterwards no callback may run. */
static void close_outside(struct client *c, struct tctx *x)
{
	shardmap__task_close(x->t); /* without c->lock: see the lock order above */
	pthread_mutex_lock(&c->lock);
	x->closed = 1;
	pthread_mutex_unlock(&c->lock);
}

static void close_fds(struct tctx *x)
{
	if (x->rfd >= 0)
		close(x->rfd);
	if (x->wfd >= 0 && x->wfd != x->rfd)
		close(x->wfd);
	x->rfd = x->wfd = -1;
}

static void drive_pipe(struct client *c, struct tctx *x)
{
	char buf[64];
	memset(buf, 'p', sizeof buf);
	long total = 0;
	for (int i = 0; i < PIPE_CHUNKS; i++) {
		if (i == PIPE_CHUNKS / 2)
			must(shardmap__task_watch(x->t, -1, 0), c, "unwatch");
		size_t n = 1 + gen_rand(&c->rng) % sizeof buf;
		write_all(x->wfd, buf, n);
		total += (long)n;
		if (i == PIPE_CHUNKS / 2)
			must(shardmap__task_watch(x->t, x->rfd, SHARDMAP__EV_READ), c, "rewatch");
	}
	pthread_mutex_lock(&c->lock);
	expected_bytes[c->index] = total;
	pthread_mutex_unlock(&c->lock);
}

static void wake(struct tctx *x, int gen)
{
	/* release: pairs with the acquire load in on_event */
	atomic_store_explicit(&x->wake_gen, gen, memory_order_release);
	shardmap__task_wake(x->t);
}

static void iteration(struct client *c)
{
	for (int k = 0; k < KINDS; k++)
		open_task(c, (enum kind)k);
	struct tctx *pipe_t = &c->tasks[PIPE_TASK], *efd = &c->tasks[EVENTFD_TASK],
		    *chain = &c->tasks[CHAIN_TASK], *wk = &c->tasks[WAKE_TASK],
		    *idle = &c->tasks[IDLE_TASK], *doomed = &c->tasks[DOOMED_TASK];

	/* the doomed task: events in flight, closed at once, provoked again after */
	write_all(doomed->wfd, "x", 1);
	must(shardmap__task_timer(doomed->t, 0), c, "doomed timer");
	wake(doomed, 1);
	if (gen_rand(&c->rng) & 1)
		sched_yield(); /* sometimes let a callback start first (timing only, not a wait) */
	close_outside(c, doomed);
	write_all(doomed->wfd, "y", 1);

	/* drive the others */
	must(shardmap__task_timer(idle->t, HOUR_MS), c, "idle timer");
	must(shardmap__task_timer(chain->t, 0), c, "chain timer");
	drive_pipe(c, pipe_t);
	for (uint64_t v = 1; v <= EVENTFD_ADDS; v++)
		write_all(efd->wfd, &v, sizeof v);
	for (int g = 1; g <= WAKES; g++)
		wake(wk, g);
	must(shardmap__task_timer(idle->t, 2 * HOUR_MS), c, "idle re-arm");

	/* every callback owed */
	wait_until(c, pipe_t, pipe_done, "bytes");
	wait_until(c, efd, eventfd_done, "eventfd sum");
	wait_until(c, chain, is_gone, "self-close");
	wait_until(c, wk, saw_last_wake, "last wake");

	/* close: the wake task from inside, the rest from outside. The wake goes out under
	 * c->lock: a callback still pending from the earlier wakes could otherwise see
	 * want_close and free the task before our wake reaches it. */
	pthread_mutex_lock(&c->lock);
	wk->want_close = 1;
	wake(wk, WAKES);
	pthread_mutex_unlock(&c->lock);
	wait_until(c, wk, is_gone, "self-close");
	must(shardmap__task_timer(idle->t, UINT64_MAX), c, "idle disarm");
	close_outside(c, idle);
	close_outside(c, pipe_t);
	close_outside(c, efd);
	write_all(pipe_t->wfd, "z", 1); /* readable again: nobody may be called for it */

	pthread_mutex_lock(&c->lock);
	for (int k = 0; k < KINDS; k++) {
		const struct tctx *x = &c->tasks[k];
		if (x->late)
			FAIL("client %d: %s task called %ld times after it was closed", c->index,
			     kind_name[k], x->late);
		if (x->unexpected)
			FAIL("client %d: %s task called with events 0x%x", c->index, kind_name[k],
			     x->unexpected);
	}
	if (chain->fires != CHAIN_FIRES || chain->calls != CHAIN_FIRES)
		FAIL("client %d: chain timer fired %ld times in %ld calls, want %d", c->index,
		     chain->fires, chain->calls, CHAIN_FIRES);
	if (wk->calls < 2 || wk->calls > WAKES + 1)
		FAIL("client %d: %ld wake callbacks for %d wakes", c->index, wk->calls, WAKES + 1);
	if (idle->calls != 0)
		FAIL("client %d: the idle task was called %ld times", c->index, idle->calls);
	pthread_mutex_unlock(&c->lock);
	for (int k = 0; k < KINDS; k++)
		close_fds(&c->tasks[k]);
}

static void *client_main(void *arg)
{
	struct client *c = arg;
	long n = c->iterations;
	for (c->iterations = 0; c->iterations < n; c->iterations++)
		iteration(c);
	return NULL;
}

int main(void)
{
	double scale = 1.0;
	const char *env = getenv("SHARDMAP_STRESS_SCALE");
	if (env != NULL && (scale = strtod(env, NULL)) <= 0)
		scale = 1.0;
	long iterations = (long)(BASE_ITERATIONS * scale);
	if (iterations < 1)
		iterations = 1;

	if (shardmap_pool_open(POOL_THREADS, &pool) != 0) {
		fprintf(stderr, "stress_pool: pool_open failed\n");
		return 1;
	}
	static struct client clients[CLIENTS];
	for (int i = 0; i < CLIENTS; i++) {
		struct client *c = &clients[i];
		c->index = i;
		c->rng = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
		c->iterations = iterations;
		pthread_mutex_init(&c->lock, NULL);
		pthread_condattr_t ca;
		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&c->cond, &ca);
		pthread_condattr_destroy(&ca);
		if (pthread_create(&c->thread, NULL, client_main, c) != 0) {
			fprintf(stderr, "stress_pool: pthread_create failed\n");
			return 1;
		}
	}
	for (int i = 0; i < CLIENTS; i++)
		pthread_join(clients[i].thread, NULL);
	shardmap_pool_close(pool);
	for (int i = 0; i < CLIENTS; i++) {
		pthread_mutex_destroy(&clients[i].lock);
		pthread_cond_destroy(&clients[i].cond);
	}

	int failed = atomic_load_explicit(&failures, memory_order_relaxed);
	long tasks = (long)CLIENTS * iterations * KINDS;
	printf("stress_pool: %d clients x %ld iterations on %d pool threads: %ld tasks, %ld "
	       "callbacks, %d failures\n",
	       CLIENTS, iterations, POOL_THREADS, tasks,
	       atomic_load_explicit(&total_callbacks, memory_order_relaxed), failed);
	if (failed) {
		fprintf(stderr, "stress_pool: FAILED: %s\n", first_failure);
		return 1;
	}
	return 0;
}
