/*
 * test_pool.c - unit tests of the worker pool (lib/pool.c): fd readiness, one-shot timers,
 * coalescing wakes, closing a task from its own callback, from a neighbour's and from other
 * threads while events are flowing, and many tasks sharing one small pool.
 *
 * No sleeps are used as synchronisation and nothing asserts on elapsed time: every wait is
 * on a condition with a generous deadline, and "did not happen" is only asserted where an
 * ordering guarantee of the pool makes it certain.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "pool.h"

#define DEADLINE_S 20

/* A counter threads can wait on. */
struct waiter {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	long count;
};

static void waiter_init(struct waiter *w)
{
	pthread_mutex_init(&w->lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&w->cond, &ca);
	w->count = 0;
}

static void waiter_add(struct waiter *w, long n)
{
	pthread_mutex_lock(&w->lock);
	w->count += n;
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

static long waiter_get(struct waiter *w)
{
	pthread_mutex_lock(&w->lock);
	long n = w->count;
	pthread_mutex_unlock(&w->lock);
	return n;
}

/* Wait until count >= target or the deadline passes; returns the count. */
static long waiter_wait(struct waiter *w, long target)
{
	struct timespec dl;
	clock_gettime(CLOCK_MONOTONIC, &dl);
	dl.tv_sec += DEADLINE_S;
	pthread_mutex_lock(&w->lock);
	while (w->count < target) {
		if (pthread_cond_timedwait(&w->cond, &w->lock, &dl) != 0)
			break;
	}
	long n = w->count;
	pthread_mutex_unlock(&w->lock);
	return n;
}

static int count_threads(void)
{
	DIR *d = opendir("/proc/self/task");
	cr_assert_not_null(d);
	int n = 0;
	for (struct dirent *e; (e = readdir(d)) != NULL;)
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

/* ---------------------------------------------------------------- open and close */

Test(pool, open_arguments)
{
	shardmap_pool *p = NULL;
	cr_assert_eq(shardmap_pool_open(2, NULL), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_pool_open(100000, &p), SHARDMAP_EINVAL);
	cr_assert_null(p);
	shardmap_pool_close(NULL);
	cr_assert_eq(shardmap_pool_threads(NULL), 0);
	cr_assert_eq(shardmap__task_open(NULL, NULL, NULL, NULL), SHARDMAP_EINVAL);
}

Test(pool, owns_exactly_its_threads)
{
	int before = count_threads();
	shardmap_pool *p;
	cr_assert_eq(shardmap_pool_open(0, &p), 0);
	cr_assert_eq(shardmap_pool_threads(p), 2, "0 means the default of 2");
	cr_assert_eq(count_threads(), before + 2);
	shardmap_pool_close(p);
	cr_assert_eq(count_threads(), before);

	cr_assert_eq(shardmap_pool_open(5, &p), 0);
	cr_assert_eq(shardmap_pool_threads(p), 5);
	cr_assert_eq(count_threads(), before + 5);
	shardmap_pool_close(p);
	cr_assert_eq(count_threads(), before);
}

/* ---------------------------------------------------------------- fd readiness */

struct fd_ctx {
	int fd;
	struct waiter seen;
	_Atomic uint32_t events;
};

static void read_one(struct shardmap__task *t, void *arg, uint32_t events)
{
	struct fd_ctx *c = arg;
	atomic_fetch_or(&c->events, events);
	if (events & SHARDMAP__EV_READ) {
		char b;
		if (read(c->fd, &b, 1) == 1)
			waiter_add(&c->seen, 1);
	}
	if (events & SHARDMAP__EV_WRITE) {
		shardmap__task_watch(t, c->fd, SHARDMAP__EV_READ); /* once is enough */
		waiter_add(&c->seen, 1);
	}
}

Test(pool, fd_readiness)
{
	shardmap_pool *p;
	cr_assert_eq(shardmap_pool_open(2, &p), 0);
	int fds[2];
	cr_assert_eq(pipe(fds), 0);
	struct fd_ctx c = {.fd = fds[0]};
	waiter_init(&c.seen);
	struct shardmap__task *t;
	cr_assert_eq(shardmap__task_open(p, read_one, &c, &t), 0);
	cr_assert_eq(shardmap__task_watch(t, fds[0], SHARDMAP__EV_READ), 0);
	for (int i = 1; i <= 100; i++) {
		cr_assert_eq(write(fds[1], "x", 1), 1);
		cr_assert_eq(waiter_wait(&c.seen, i), i, "byte %d was not seen", i);
	}
	cr_assert_eq(shardmap__task_watch(t, 12345, SHARDMAP__EV_READ), SHARDMAP_EIO,
		     "watching a closed fd fails");
	shardmap__task_close(t);
	close(fds[0]);
	close(fds[1]);
	shardmap_pool_close(p);
}

Test(pool, write_readiness_and_switching_fds)
{
	shardmap_pool *p;
	cr_assert_eq(shardmap_pool_open(1, &p), 0);
	int sv[2];
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
	struct fd_ctx c = {.fd = sv[0]};
	waiter_init(&c.seen);
	struct shardmap__task *t;
	cr_assert_eq(shardmap__task_open(p, read_one, &c, &t), 0);
	cr_assert_eq(shardmap__task_watch(t, sv[0], SHARDMAP__EV_WRITE), 0);
	cr_assert_eq(waiter_wait(&c.seen, 1), 1, "a fresh socket is writable");
	cr_assert(atomic_load(&c.events) & SHARDMAP__EV_WRITE);

	/* move the task to another fd: readiness follows */
	int fds[2];
	cr_assert_eq(pipe(fds), 0);
	cr_assert_eq(shardmap__task_watch(t, -1, 0), 0);
	c.fd = fds[0]; /* the callback runs only after the watch below (happens-before: lock) */
	cr_assert_eq(shardmap__task_watch(t, fds[0], SHARDMAP__EV_READ), 0);
	cr_assert_eq(write(fds[1], "y", 1), 1);
	cr_assert_eq(waiter_wait(&c.seen, 2), 2);
	shardmap__task_close(t);
	close(sv[0]);
	close(sv[1]);
	close(fds[0]);
	close(fds[1]);
	shardmap_pool_close(p);
}

/* A level-triggered readable pipe reports READ in every iteration; after watch(-1) a wake
 * comes alone. */
struct events_ctx {
	struct waiter calls;
	_Atomic uint32_t last;
};

static void record_events(struct shardmap__task *t, void *arg, uint32_t events)
{
	struct events_ctx *c = arg;
	atomic_store(&c->last, events);
	waiter_add(&c->calls, 1);
}

Test(pool, unwatch_stops_events)
{
	shardmap_pool *p;
	cr_assert_eq(shardmap_pool_open(1, &p), 0);
	int fds[2];
	cr_assert_eq(pipe(fds), 0);
	cr_assert_eq(write(fds[1], "z", 1), 1); /* stays unread: always readable */
	struct events_ctx c = {0};
	waiter_init(&c.calls);
	struct shardmap__task *t;
	cr_assert_eq(shardmap__task_open(p, record_events, &c, &t), 0);
	cr_assert_eq(shardmap__task_watch(t, fds[0], SHARDMAP__EV_READ), 0);
	cr_assert_geq(waiter_wait(&c.calls, 3), 3, "level-triggered: READ keeps coming");
	cr_assert_eq(shardmap__task_watch(t, -1, 0), 0);
	/* whatever callback was in flight, the next wake is delivered without READ */
	long n = waiter_get(&c.calls);
	shardmap__task_wake(t);
	cr_assert_geq(waiter_wait(&c.calls, n + 1), n + 1);
	for (int i = 0; i < 3; i++) {
		n = waiter_get(&c.calls);
		shardmap__task_wake(t);
		cr_assert_geq(waiter_wait(&c.calls, n + 1), n + 1);
		cr_assert_eq(atomic_load(&c.last), SHARDMAP__EV_WAKE);
	}
	shardmap__task_close(t);
	close(fds[0]);
	close(fds[1]);
	shardmap_pool_close(p);
}

/* ---------------------------------------------------------------- timers */

struct timer_ctx {
	int id;
	struct waiter *fired;
	int *order; /* written by the (single) worker, read after the waiter says done */
	_Atomic int *next;
	_Atomic int count;
};

static void on_timer(struct shardmap__task *t, void *arg, uint32_t events)
{
	struct timer_ctx *c = arg;
	if (!(events & SHARDMAP__EV_TIMER))
		return;
	atomic_fetch_add(&c->count, 1);
	if (c->order)
		c->order[atomic_fetch_add(c->next, 1)] = c->id;
	waiter_add(c->fired, 1);
}

/* Task "blocker" holds the only worker inside its callback until released. */
struct blocker {
	struct waiter entered;
	struct waiter release;
};

static void block_in_callback(struct shardmap__task *t, void *arg, uint32_t events)
{
	struct blocker *b = arg;
	waiter_add(&b->entered, 1);
	waiter_wait(&b->release, waiter_get(&b->entered));
}

static void blocker_init(struct blocker *b)
{
	waiter_init(&b->entered);
	waiter_init(&b->release);
}

Test(pool, timers_fire_once_in_deadline_order)
{
	enum { N = 20 };
	shardmap_pool *p;
	cr_assert_eq(shardmap_pool_open(1, &p), 0); /* one worker: one heap, one order */
	struct blocker b;
	blocker_init(&b);
	struct shardmap__task *tb;
	cr_assert_eq(shardmap__task_open(p, block_in_callback, &b, &tb), 0);
	struct waiter fired;
	waiter_init(&fired);
	int order[N + 1];
	_Atomic int next = 0;
	struct timer_ctx ctx[N + 1];
	struct shardmap__task *t[N + 1];
	for (int i = 0; i <= N; i++) {
		ctx[i] =
		    (struct timer_ctx){.id = i, .fired = &fired, .order = order, .next = &next};
		cr_assert_eq(shardmap__task_open(p, on_timer, &ctx[i], &t[i]), 0);
	}
	/* Arm everything while the worker is held, so no timer can fire before all are set. */
	shardmap__task_wake(tb);
	cr_assert_eq(waiter_wait(&b.entered, 1), 1);
	/* armed in reverse: task i fires at 5*(N - i) + 5 ms, so N-1 first and 0 last */
	for (int i = N - 1; i >= 0; i--)
		cr_assert_eq(shardmap__task_timer(t[i], 5u * (unsigned)(N - i) + 5), 0);
	/* task N is armed earliest and then disarmed: it must never fire */
	cr_assert_eq(shardmap__task_timer(t[N], 0), 0);
	cr_assert_eq(shardmap__task_timer(t[N], UINT64_MAX), 0);
	/* task 1 is re-armed later than everything: it fires last */
	cr_assert_eq(shardmap__task_timer(t[1], 5u * N + 50), 0);
	waiter_add(&b.release, 1);

	cr_assert_eq(waiter_wait(&fired, N), N);
	int expect[N];
	for (int k = 0, id = N - 1; id >= 0; id--) {
		if (id != 1)
			expect[k++] = id;
	}
	expect[N - 1] = 1;
	for (int k = 0; k < N; k++)
		cr_assert_eq(order[k], expect[k], "position %d fired task %d, expected %d", k,
			     order[k], expect[k]);
	cr_assert_eq(atomic_load(&ctx[N].count), 0, "a disarmed timer never fires");
	for (int i = 0; i < N; i++)
		cr_assert_eq(atomic_load(&ctx[i].count), 1, "one-shot: task %d", i);
	for (int i = 0; i <= N; i++)
		shardmap__task_close(t[i]);
	shardmap__task_close(tb);
	shardmap_pool_close(p);
}

/* A timer armed from the task's own callback (a periodic tick). */
static void rearm(struct shardmap__task *t, void *arg, uint32_t events)
{
	struct timer_ctx *c = arg;
	if (atomic_fetch_add(&c->count, 1) + 1 < 50)
		shardmap__task_timer(t, 1);
	waiter_add(c->fired, 1);
}

Test(pool, timer_rearmed_from_callback)
{
	shardmap_pool *p;
	cr_assert_eq(shardmap_pool_open(2, &p), 0);
	struct waiter fired;
	waiter_init(&fired);
	struct timer_ctx c = {.fired = &fired};
	struct shardmap__task *t;
	cr_assert_eq(shardmap__task_open(p, rearm, &c, &t), 0);
	cr_assert_eq(shardmap__task_timer(t, 0), 0);
	cr_assert_eq(waiter_wait(&fired, 50), 50);
	shardmap__task_close(t);
	cr_assert_eq(atomic_load(&c.count), 50);
	shardmap_pool_close(p);
}

/* ---------------------------------------------------------------- wakes */

Test(pool, wakes_coalesce)
{
	shardmap_pool *p;
	cr_assert_eq(shardmap_pool_open(1, &p), 0);
	struct blocker b;
	blocker_init(&b);
	struct events_ctx c = {0};
	waiter_init(&c.calls);
	struct shardmap__task *tb, *tc;
	cr_assert_eq(shardmap__task_open(p, block_in_callback, &b, &tb), 0);
	cr_assert_eq(shardmap__task_open(p, record_events, &c, &tc), 0);

	shardmap__task_wake(tb);
	cr_assert_eq(waiter_wait(&b.entered, 1), 1);
	/* the worker is busy: a thousand wakes from several threads become one callback */
	for (int i = 0; i < 1000; i++)
		shardmap__task_wake(tc);
	waiter_add(&b.release, 1);
	cr_assert_eq(waiter_wait(&c.calls, 1), 1);

	/* a wake after that callback is a new callback: wake tb, then tc, and wait for tb's
	 * second callback; tc's must have run in the same iteration or before */
	shardmap__task_wake(tc);
	cr_assert_eq(waiter_wait(&c.calls, 2), 2);
	shardmap__task_wake(tb);
	cr_assert_eq(waiter_wait(&b.entered, 2), 2);
	cr_assert_eq(waiter_get(&c.calls), 2, "the thousand wakes were delivered once");
	cr_assert_eq(atomic_load(&c.last), SHARDMAP__EV_WAKE);
	waiter_add(&b.release, 1);
	shardmap__task_close(tb);
	shardmap__task_close(tc);
	shardmap_pool_close(p);
}

/* ---------------------------------------------------------------- closing */

/* Closing a neighbour from a callback on the same worker: it must not run afterwards. */
struct neighbour_ctx {
	struct shardmap__task *victim;
	struct waiter done;
	_Atomic int victim_calls;
};

static void close_neighbour(struct shardmap__task *t, void *arg, uint32_t events)
{
	struct neighbour_ctx *c = arg;
	shardmap__task_close(c->victim);
	waiter_add(&c->done, 1);
}

static void victim(struct shardmap__task *t, void *arg, uint32_t events)
{
	struct neighbour_ctx *c = arg;
	atomic_fetch_add(&c->victim_calls, 1);
}

Test(pool, close_neighbour_from_callback)
{
	shardmap_pool *p;
	cr_assert_eq(shardmap_pool_open(1, &p), 0);
	struct blocker b;
	blocker_init(&b);
	struct neighbour_ctx c = {0};
	waiter_init(&c.done);
	struct shardmap__task *tb, *closer;
	cr_assert_eq(shardmap__task_open(p, block_in_callback, &b, &tb), 0);
	cr_assert_eq(shardmap__task_open(p, close_neighbour, &c, &closer), 0);
	cr_assert_eq(shardmap__task_open(p, victim, &c, &c.victim), 0);
	shardmap__task_wake(tb);
	cr_assert_eq(waiter_wait(&b.entered, 1), 1);
	/* queued in this order behind the blocker: closer runs first and closes victim */
	shardmap__task_wake(closer);
	shardmap__task_wake(c.victim);
	cr_assert_eq(shardmap__task_timer(c.victim, 0), 0);
	waiter_add(&b.release, 1);
	cr_assert_eq(waiter_wait(&c.done, 1), 1);
	/* one more full iteration: wake the blocker again and wait for it */
	shardmap__task_wake(tb);
	cr_assert_eq(waiter_wait(&b.entered, 2), 2);
	cr_assert_eq(atomic_load(&c.victim_calls), 0, "a closed task never runs");
	waiter_add(&b.release, 1);
	shardmap__task_close(tb);
	shardmap__task_close(closer);
	shardmap_pool_close(p);
}

/* Churn: each context is a task fed by an always-readable fd, a re-armed timer and wakes
 * from other threads; it closes itself from its callback after some calls, or is closed by
 * its owner thread. Either way no callback may start after the close, and none may be
 * running when a foreign close returns. */
struct churn_ctx {
	struct shardmap__task *task;
	int self_close_after; /* 0: the owner closes it */
	int timer_seen;	      /* callback-owned */
	_Atomic int calls;
	_Atomic int in_callback;
	_Atomic int closed;
	_Atomic int violations;
	struct waiter gone; /* self-closed */
};

static void churn_cb(struct shardmap__task *t, void *arg, uint32_t events)
{
	struct churn_ctx *c = arg;
	if (atomic_exchange(&c->in_callback, 1) != 0 || atomic_load(&c->closed))
		atomic_fetch_add(&c->violations, 1);
	int n = atomic_fetch_add(&c->calls, 1) + 1;
	if (events & SHARDMAP__EV_TIMER) {
		c->timer_seen = 1;
		shardmap__task_timer(t, 0);
	}
	/* the owner's last touch of the task is arming the timer: only then may it go */
	if (c->self_close_after && c->timer_seen && n >= c->self_close_after) {
		atomic_store(&c->closed, 1);
		shardmap__task_close(t);
		shardmap__task_wake(t); /* after close: must be ignored */
		atomic_store(&c->in_callback, 0);
		waiter_add(&c->gone, 1);
		return;
	}
	atomic_store(&c->in_callback, 0);
}

struct churn_thread {
	shardmap_pool *pool;
	int rfd;
	int iterations;
	int seed;
	_Atomic int *violations;
	_Atomic long *calls;
};

static void *churn_main(void *arg)
{
	struct churn_thread *ct = arg;
	unsigned seed = (unsigned)ct->seed;
	for (int i = 0; i < ct->iterations; i++) {
		struct churn_ctx *c = calloc(1, sizeof *c);
		cr_assert_not_null(c);
		waiter_init(&c->gone);
		c->self_close_after = (rand_r(&seed) % 2) ? 1 + rand_r(&seed) % 8 : 0;
		cr_assert_eq(shardmap__task_open(ct->pool, churn_cb, c, &c->task), 0);
		/* one fd per task: epoll watches an fd once per worker */
		int fd = dup(ct->rfd);
		cr_assert_geq(fd, 0);
		cr_assert_eq(shardmap__task_watch(c->task, fd, SHARDMAP__EV_READ), 0);
		for (int k = 0; k < 4; k++)
			shardmap__task_wake(c->task);
		shardmap__task_timer(c->task, 0);
		if (c->self_close_after) {
			cr_assert_eq(waiter_wait(&c->gone, 1), 1);
		} else {
			int target = 1 + rand_r(&seed) % 4;
			while (atomic_load(&c->calls) < target)
				sched_yield();
			shardmap__task_close(c->task);
			if (atomic_load(&c->in_callback))
				atomic_fetch_add(&c->violations, 1);
			atomic_store(&c->closed, 1);
		}
		close(fd);
		int calls_at_close = atomic_load(&c->calls);
		/* let the pool run more iterations: other tasks keep the workers busy */
		*ct->calls += calls_at_close;
		atomic_fetch_add(ct->violations, atomic_load(&c->violations));
		/* a late callback would write to freed memory: ASan builds catch it */
		pthread_mutex_destroy(&c->gone.lock);
		pthread_cond_destroy(&c->gone.cond);
		free(c);
	}
	return NULL;
}

Test(pool, close_inside_and_outside_while_events_flow, .timeout = 240)
{
	enum { THREADS = 8, ITERATIONS = 300 };
	shardmap_pool *p;
	cr_assert_eq(shardmap_pool_open(2, &p), 0);
	int efd = eventfd(1, EFD_NONBLOCK); /* never read: readable forever */
	cr_assert_geq(efd, 0);
	_Atomic int violations = 0;
	_Atomic long calls[THREADS];
	pthread_t th[THREADS];
	struct churn_thread ct[THREADS];
	for (int i = 0; i < THREADS; i++) {
		atomic_init(&calls[i], 0);
		ct[i] = (struct churn_thread){.pool = p,
					      .rfd = efd,
					      .iterations = ITERATIONS,
					      .seed = i + 1,
					      .violations = &violations,
					      .calls = &calls[i]};
		cr_assert_eq(pthread_create(&th[i], NULL, churn_main, &ct[i]), 0);
	}
	long total = 0;
	for (int i = 0; i < THREADS; i++) {
		pthread_join(th[i], NULL);
		total += atomic_load(&calls[i]);
	}
	cr_assert_eq(atomic_load(&violations), 0,
		     "a callback ran after close or concurrently with itself");
	cr_assert_geq(total, THREADS * ITERATIONS, "every task ran at least once");
	close(efd);
	shardmap_pool_close(p);
}

/* ---------------------------------------------------------------- sharing */

struct shared_ctx {
	struct waiter *done;
	_Atomic int in_callback;
	_Atomic int violations;
	_Atomic int timers, wakes;
	_Atomic pthread_t thread;
	_Atomic int thread_changes;
};

static void shared_cb(struct shardmap__task *t, void *arg, uint32_t events)
{
	struct shared_ctx *c = arg;
	if (atomic_exchange(&c->in_callback, 1) != 0)
		atomic_fetch_add(&c->violations, 1);
	pthread_t self = pthread_self();
	pthread_t prev = atomic_exchange(&c->thread, self);
	if (prev != 0 && !pthread_equal(prev, self))
		atomic_fetch_add(&c->thread_changes, 1);
	if (events & SHARDMAP__EV_WAKE)
		atomic_fetch_add(&c->wakes, 1);
	if (events & SHARDMAP__EV_TIMER) {
		if (atomic_fetch_add(&c->timers, 1) + 1 < 5)
			shardmap__task_timer(t, 1);
		else
			waiter_add(c->done, 1);
	}
	atomic_store(&c->in_callback, 0);
}

Test(pool, one_pool_many_tasks)
{
	enum { TASKS = 2000 };
	int before = count_threads();
	shardmap_pool *p;
	cr_assert_eq(shardmap_pool_open(2, &p), 0);
	struct waiter done;
	waiter_init(&done);
	struct shared_ctx *c = calloc(TASKS, sizeof *c);
	struct shardmap__task **t = calloc(TASKS, sizeof *t);
	for (int i = 0; i < TASKS; i++) {
		c[i].done = &done;
		cr_assert_eq(shardmap__task_open(p, shared_cb, &c[i], &t[i]), 0);
		cr_assert_eq(shardmap__task_timer(t[i], (unsigned)(i % 7)), 0);
		shardmap__task_wake(t[i]);
	}
	cr_assert_eq(count_threads(), before + 2, "tasks cost no threads");
	cr_assert_eq(waiter_wait(&done, TASKS), TASKS);
	pthread_t first = atomic_load(&c[0].thread);
	int on_other = 0;
	for (int i = 0; i < TASKS; i++) {
		cr_assert_eq(atomic_load(&c[i].violations), 0, "task %d ran concurrently", i);
		cr_assert_eq(atomic_load(&c[i].thread_changes), 0, "task %d changed thread", i);
		cr_assert_geq(atomic_load(&c[i].wakes), 1);
		on_other += !pthread_equal(atomic_load(&c[i].thread), first);
	}
	cr_assert(on_other > TASKS / 4 && on_other < 3 * TASKS / 4,
		  "tasks are spread over both workers (%d of %d on the other)", on_other, TASKS);
	for (int i = 0; i < TASKS; i++)
		shardmap__task_close(t[i]);
	shardmap_pool_close(p);
	free(c);
	free(t);
}

/* A pool closed with tasks still open frees them without calling back. */
Test(pool, close_with_open_tasks)
{
	shardmap_pool *p;
	cr_assert_eq(shardmap_pool_open(2, &p), 0);
	struct events_ctx c = {0};
	waiter_init(&c.calls);
	struct shardmap__task *t[10];
	for (int i = 0; i < 10; i++) {
		cr_assert_eq(shardmap__task_open(p, record_events, &c, &t[i]), 0);
		shardmap__task_timer(t[i], 100000);
	}
	shardmap_pool_close(p);
	cr_assert_eq(waiter_get(&c.calls), 0);
}
