/*
 * pool.c - the fixed worker pool: N threads, each an epoll loop with an eventfd for wakes
 * and a binary heap of one-shot task timers. All network work of shardmap (peer
 * connections, accepts, gossip timers, store watches) runs as tasks here, so the number of
 * threads the library owns is the pool size, whatever the size of the fleet.
 *
 * Object model (as libuv's handles): a task is created on the least loaded worker and stays
 * there for life, so its callback never runs on two threads at once and its own state needs
 * no lock. A task watches at most one fd (level-triggered) and has at most one one-shot
 * timer; any thread may wake it, and wakes that arrive before the callback runs coalesce.
 * An fd is watched by one task at a time (epoll keys its interest list by fd: dup() it for
 * a second watcher). Events that arrive together are delivered in one callback
 * (READ|TIMER|WAKE ...). Events may be spurious (a readiness reported just before the task
 * changed fd): callbacks use non-blocking fds and treat EAGAIN as "nothing to do".
 *
 * One worker iteration, all under the worker's lock except the wait and the callbacks:
 *   1. release the tasks other threads closed and free the ones closed on this thread;
 *   2. sleep in epoll_wait until the nearest timer (not at all if tasks are runnable);
 *   3. turn the epoll events and the expired timers into runnable tasks (the run list);
 *   4. run each task that was runnable at that point once, with the lock dropped.
 * Closing a task takes it off epoll, the heap and the run list under the lock, so after
 * step 3 the only references to it left are the ones this iteration still holds: an epoll
 * event already copied out (skipped because the task is marked closed) or its own running
 * callback. Step 1 of the next iteration is past both, which is when a task closed from
 * another thread is handed back to that thread to free, and when one closed from this
 * worker's thread (its own callback or another task's) is freed.
 *
 * Lock order (take in this order, never the reverse):
 *   1. the caller's own locks (a peers node lock ...): callers may hold them while calling
 *      any shardmap__task_* function except a cross-thread shardmap__task_close;
 *   2. worker->lock: the timer heap, the run list, the closing lists and every task field
 *      marked "under w->lock". Nothing else is locked while it is held, and it is never held
 *      while a callback runs, so callbacks may call every task function.
 * shardmap__task_close from a thread other than the task's worker waits for that worker to
 * finish its current iteration. So the closer must not hold a lock that a callback on that
 * worker may wait for, and must not itself be a pool callback whose worker that worker
 * could be waiting on (closing tasks of the own worker never waits).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "pool.h"

#define POOL_DEFAULT_THREADS 2u
#define POOL_MAX_THREADS     256u
#define POOL_EVENTS_PER_WAIT 128
#define NO_DEADLINE	     UINT64_MAX
#define NOT_IN_HEAP	     SIZE_MAX

struct worker;

struct shardmap__task {
	struct worker *w; /* fixed at open */
	shardmap__task_fn fn;
	void *ctx;
	/* under w->lock */
	int fd;		      /* watched fd, -1 none */
	uint32_t watch;	      /* SHARDMAP__EV_READ|WRITE registered for fd */
	uint64_t deadline_ms; /* NO_DEADLINE: timer disarmed */
	size_t heap_index;    /* position in w->heap, NOT_IN_HEAP when disarmed */
	uint32_t ready;	      /* events gathered for the next callback */
	int runnable;	      /* on w's run list */
	int closed;	      /* no callback starts any more */
	int released;	      /* the worker let go of it: the foreign closer may free it */
	struct shardmap__task *run_prev, *run_next;   /* run list */
	struct shardmap__task *live_prev, *live_next; /* every open task of w */
	struct shardmap__task *close_next;	      /* w->closing or w->dead */
};

struct worker {
	shardmap_pool *pool;
	unsigned index;
	pthread_t thread;
	int epfd, evfd;
	/* read without the lock to choose a worker for a new task: a stale count only makes
	 * the choice a little less even (relaxed, pairs with nothing) */
	_Atomic unsigned n_tasks;
	pthread_mutex_t lock;
	pthread_cond_t released; /* broadcast when closing tasks are released */
	/* under lock */
	struct shardmap__task **heap;
	size_t heap_n, heap_cap;
	struct shardmap__task *run_head, *run_tail;
	size_t run_n;
	struct shardmap__task *live;
	struct shardmap__task *closing; /* closed by other threads, waiting for release */
	struct shardmap__task *dead;	/* closed on this worker's thread, freed at step 1 */
	int sleeping;			/* between computing a timeout and waking from epoll */
	int kicked;			/* the eventfd was written and not drained yet */
	int stopping;
	int exited; /* the loop has returned: nothing references tasks */
};

struct shardmap_pool {
	unsigned n;
	struct worker *workers;
};

uint64_t shardmap__now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int on_worker_thread(const struct worker *w)
{
	return pthread_equal(pthread_self(), w->thread);
}

/* Make the worker's epoll_wait return. Call with w->lock held; writes at most once until
 * the worker drains the eventfd. */
static void kick_locked(struct worker *w)
{
	if (w->kicked || !w->sleeping)
		return;
	uint64_t one = 1;
	/* cannot block: an eventfd counter only fails to accept a write at 2^64-2 */
	if (write(w->evfd, &one, sizeof one) == (ssize_t)sizeof one)
		w->kicked = 1;
}

/* ---------------------------------------------------------------- timer heap (under lock) */

static int heap_less(const struct shardmap__task *a, const struct shardmap__task *b)
{
	return a->deadline_ms < b->deadline_ms;
}

static void heap_set(struct worker *w, size_t i, struct shardmap__task *t)
{
	w->heap[i] = t;
	t->heap_index = i;
}

static void heap_sift_up(struct worker *w, size_t i)
{
	struct shardmap__task *t = w->heap[i];
	while (i > 0) {
		size_t parent = (i - 1) / 2;
		if (!heap_less(t, w->heap[parent]))
			break;
		heap_set(w, i, w->heap[parent]);
		i = parent;
	}
	heap_set(w, i, t);
}

static void heap_sift_down(struct worker *w, size_t i)
{
	struct shardmap__task *t = w->heap[i];
	for (;;) {
		size_t child = 2 * i + 1;
		if (child >= w->heap_n)
			break;
		if (child + 1 < w->heap_n && heap_less(w->heap[child + 1], w->heap[child]))
			child++;
		if (!heap_less(w->heap[child], t))
			break;
		heap_set(w, i, w->heap[child]);
		i = child;
	}
	heap_set(w, i, t);
}

static void heap_remove(struct worker *w, struct shardmap__task *t)
{
	size_t i = t->heap_index;
	if (i == NOT_IN_HEAP)
		return;
	t->heap_index = NOT_IN_HEAP;
	struct shardmap__task *last = w->heap[--w->heap_n];
	if (last == t)
		return;
	heap_set(w, i, last);
	heap_sift_up(w, i);
	heap_sift_down(w, last->heap_index);
}

static int heap_insert(struct worker *w, struct shardmap__task *t)
{
	if (w->heap_n == w->heap_cap) {
		size_t cap = w->heap_cap ? 2 * w->heap_cap : 64;
		struct shardmap__task **heap = realloc(w->heap, cap * sizeof *heap);
		if (heap == NULL)
			return SHARDMAP_ENOMEM;
		w->heap = heap;
		w->heap_cap = cap;
	}
	heap_set(w, w->heap_n++, t);
	heap_sift_up(w, t->heap_index);
	return SHARDMAP_OK;
}

/* ---------------------------------------------------------------- run list (under lock) */

static void run_push(struct worker *w, struct shardmap__task *t, uint32_t events)
{
	t->ready |= events;
	if (t->runnable)
		return;
	t->runnable = 1;
	w->run_n++;
	t->run_next = NULL;
	t->run_prev = w->run_tail;
	if (w->run_tail)
		w->run_tail->run_next = t;
	else
		w->run_head = t;
	w->run_tail = t;
}

static void run_remove(struct worker *w, struct shardmap__task *t)
{
	if (!t->runnable)
		return;
	t->runnable = 0;
	w->run_n--;
	if (t->run_prev)
		t->run_prev->run_next = t->run_next;
	else
		w->run_head = t->run_next;
	if (t->run_next)
		t->run_next->run_prev = t->run_prev;
	else
		w->run_tail = t->run_prev;
	t->run_prev = t->run_next = NULL;
}

/* ---------------------------------------------------------------- the loop */

static uint32_t events_from_epoll(uint32_t e)
{
	uint32_t out = 0;
	if (e & (EPOLLIN | EPOLLRDHUP))
		out |= SHARDMAP__EV_READ;
	if (e & EPOLLOUT)
		out |= SHARDMAP__EV_WRITE;
	if (e & (EPOLLERR | EPOLLHUP))
		out |= SHARDMAP__EV_ERROR;
	return out;
}

/* Step 1: free what this thread closed, hand back what other threads closed. */
static void reap_locked(struct worker *w)
{
	while (w->dead) {
		struct shardmap__task *t = w->dead;
		w->dead = t->close_next;
		free(t);
	}
	if (w->closing) {
		for (struct shardmap__task *t = w->closing; t; t = t->close_next)
			t->released = 1;
		w->closing = NULL;
		pthread_cond_broadcast(&w->released);
	}
}

static int timeout_locked(struct worker *w, uint64_t now)
{
	if (w->run_head)
		return 0;
	if (w->heap_n == 0)
		return -1;
	uint64_t due = w->heap[0]->deadline_ms;
	if (due <= now)
		return 0;
	uint64_t ms = due - now;
	return ms > (uint64_t)INT32_MAX ? INT32_MAX : (int)ms;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct epoll_event evs[POOL_EVENTS_PER_WAIT];
	char name[16];
	snprintf(name, sizeof name, "shardmap-pool%u", w->index);
	pthread_setname_np(pthread_self(), name);

	pthread_mutex_lock(&w->lock);
	for (;;) {
		reap_locked(w);
		if (w->stopping)
			break;
		int timeout = timeout_locked(w, shardmap__now_ms());
		w->sleeping = timeout != 0;
		pthread_mutex_unlock(&w->lock);

		int n = epoll_wait(w->epfd, evs, POOL_EVENTS_PER_WAIT, timeout);

		pthread_mutex_lock(&w->lock);
		w->sleeping = 0;
		for (int i = 0; i < n; i++) {
			struct shardmap__task *t = evs[i].data.ptr;
			if (t == NULL) {
				uint64_t count;
				/* non-blocking eventfd: EAGAIN when a kick was already drained */
				if (read(w->evfd, &count, sizeof count) < 0 && errno != EAGAIN)
					perror("shardmap pool: eventfd read");
				w->kicked = 0;
			} else if (!t->closed) {
				run_push(w, t, events_from_epoll(evs[i].events));
			}
		}
		uint64_t now = shardmap__now_ms();
		while (w->heap_n > 0 && w->heap[0]->deadline_ms <= now) {
			struct shardmap__task *t = w->heap[0];
			heap_remove(w, t);
			t->deadline_ms = NO_DEADLINE;
			run_push(w, t, SHARDMAP__EV_TIMER);
		}

		/* Step 4: run what is runnable now, at most once each; tasks made runnable by
		 * these callbacks wait for the next iteration, so a task that wakes itself cannot
		 * starve epoll. (A task closed meanwhile left the list: we then run one more of
		 * the newer ones, which is harmless.) */
		for (size_t budget = w->run_n; budget > 0 && w->run_head != NULL; budget--) {
			struct shardmap__task *t = w->run_head;
			run_remove(w, t);
			uint32_t events = t->ready;
			t->ready = 0;
			pthread_mutex_unlock(&w->lock);
			t->fn(t, t->ctx, events);
			pthread_mutex_lock(&w->lock);
		}
	}
	w->exited = 1;
	reap_locked(w);
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

/* ---------------------------------------------------------------- pool */

static void worker_destroy(struct worker *w)
{
	if (w->epfd >= 0)
		close(w->epfd);
	if (w->evfd >= 0)
		close(w->evfd);
	pthread_mutex_destroy(&w->lock);
	pthread_cond_destroy(&w->released);
	free(w->heap);
}

static int worker_init(shardmap_pool *p, struct worker *w, unsigned index)
{
	w->pool = p;
	w->index = index;
	w->epfd = epoll_create1(EPOLL_CLOEXEC);
	w->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	pthread_mutex_init(&w->lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&w->released, &ca);
	pthread_condattr_destroy(&ca);
	if (w->epfd < 0 || w->evfd < 0)
		return SHARDMAP_EIO;
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->evfd, &ev) != 0)
		return SHARDMAP_EIO;
	return SHARDMAP_OK;
}

static void worker_stop(struct worker *w)
{
	pthread_mutex_lock(&w->lock);
	w->stopping = 1;
	w->sleeping = 1; /* force the kick even if the worker is between checks */
	kick_locked(w);
	pthread_mutex_unlock(&w->lock);
	pthread_join(w->thread, NULL);
}

int shardmap_pool_open(unsigned threads, shardmap_pool **out)
{
	if (out == NULL || threads > POOL_MAX_THREADS)
		return SHARDMAP_EINVAL;
	if (threads == 0)
		threads = POOL_DEFAULT_THREADS;
	shardmap_pool *p = calloc(1, sizeof *p);
	struct worker *ws = calloc(threads, sizeof *ws);
	if (p == NULL || ws == NULL) {
		free(p);
		free(ws);
		return SHARDMAP_ENOMEM;
	}
	p->workers = ws;
	for (unsigned i = 0; i < threads; i++)
		ws[i].epfd = ws[i].evfd = -1;

	/* Library threads take no process signals: the application decides who handles them. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int rc = SHARDMAP_OK;
	unsigned started = 0;
	for (; started < threads; started++) {
		rc = worker_init(p, &ws[started], started);
		if (rc == SHARDMAP_OK &&
		    pthread_create(&ws[started].thread, NULL, worker_main, &ws[started]) != 0)
			rc = SHARDMAP_ENOMEM; /* EAGAIN: the thread limit; nothing else is likely */
		if (rc != SHARDMAP_OK)
			break;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != SHARDMAP_OK) {
		for (unsigned i = 0; i < started; i++)
			worker_stop(&ws[i]);
		for (unsigned i = 0; i <= started && i < threads; i++)
			worker_destroy(&ws[i]);
		free(ws);
		free(p);
		return rc;
	}
	p->n = threads;
	*out = p;
	return SHARDMAP_OK;
}

unsigned shardmap_pool_threads(const shardmap_pool *p)
{
	return p ? p->n : 0;
}

void shardmap_pool_close(shardmap_pool *p)
{
	if (p == NULL)
		return;
	for (unsigned i = 0; i < p->n; i++)
		worker_stop(&p->workers[i]);
	for (unsigned i = 0; i < p->n; i++) {
		struct worker *w = &p->workers[i];
		/* Tasks still open belong to users that did not stop first: free them without
		 * calling back (their fds are theirs). */
		while (w->live) {
			struct shardmap__task *t = w->live;
			w->live = t->live_next;
			free(t);
		}
		worker_destroy(w);
	}
	free(p->workers);
	free(p);
}

/* ---------------------------------------------------------------- tasks */

int shardmap__task_open(shardmap_pool *p, shardmap__task_fn fn, void *ctx,
			struct shardmap__task **out)
{
	if (p == NULL || fn == NULL || out == NULL)
		return SHARDMAP_EINVAL;
	struct worker *w = &p->workers[0];
	for (unsigned i = 1; i < p->n; i++) {
		/* relaxed: only balances load, see n_tasks */
		if (atomic_load_explicit(&p->workers[i].n_tasks, memory_order_relaxed) <
		    atomic_load_explicit(&w->n_tasks, memory_order_relaxed))
			w = &p->workers[i];
	}
	struct shardmap__task *t = calloc(1, sizeof *t);
	if (t == NULL)
		return SHARDMAP_ENOMEM;
	t->w = w;
	t->fn = fn;
	t->ctx = ctx;
	t->fd = -1;
	t->deadline_ms = NO_DEADLINE;
	t->heap_index = NOT_IN_HEAP;
	pthread_mutex_lock(&w->lock);
	t->live_next = w->live;
	if (w->live)
		w->live->live_prev = t;
	w->live = t;
	atomic_fetch_add_explicit(&w->n_tasks, 1, memory_order_relaxed); /* load balance only */
	pthread_mutex_unlock(&w->lock);
	*out = t;
	return SHARDMAP_OK;
}

static uint32_t epoll_mask(uint32_t events)
{
	return ((events & SHARDMAP__EV_READ) ? EPOLLIN | EPOLLRDHUP : 0) |
	       ((events & SHARDMAP__EV_WRITE) ? EPOLLOUT : 0);
}

int shardmap__task_watch(struct shardmap__task *t, int fd, uint32_t events)
{
	struct worker *w = t->w;
	int rc = SHARDMAP_OK;
	events &= SHARDMAP__EV_READ | SHARDMAP__EV_WRITE;
	pthread_mutex_lock(&w->lock);
	if (t->closed) {
		pthread_mutex_unlock(&w->lock);
		return SHARDMAP_EINVAL;
	}
	struct epoll_event ev = {.events = epoll_mask(events), .data.ptr = t};
	if (fd != t->fd) {
		/* the old fd may already be closed (epoll then forgot it): ignore that error */
		if (t->fd >= 0)
			(void)epoll_ctl(w->epfd, EPOLL_CTL_DEL, t->fd, NULL);
		t->fd = -1;
		if (fd >= 0) {
			if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) == 0)
				t->fd = fd;
			else
				rc = SHARDMAP_EIO;
		}
	} else if (fd >= 0 && events != t->watch) {
		if (epoll_ctl(w->epfd, EPOLL_CTL_MOD, fd, &ev) != 0)
			rc = SHARDMAP_EIO;
	}
	if (rc == SHARDMAP_OK)
		t->watch = events;
	pthread_mutex_unlock(&w->lock);
	return rc;
}

int shardmap__task_timer(struct shardmap__task *t, uint64_t ms)
{
	struct worker *w = t->w;
	int rc = SHARDMAP_OK;
	pthread_mutex_lock(&w->lock);
	if (t->closed) {
		pthread_mutex_unlock(&w->lock);
		return SHARDMAP_EINVAL;
	}
	heap_remove(w, t);
	t->deadline_ms = NO_DEADLINE;
	if (ms != UINT64_MAX) {
		uint64_t now = shardmap__now_ms();
		t->deadline_ms = ms > NO_DEADLINE - 1 - now ? NO_DEADLINE - 1 : now + ms;
		rc = heap_insert(w, t);
		if (rc != SHARDMAP_OK)
			t->deadline_ms = NO_DEADLINE;
		else if (w->heap[0] == t)
			kick_locked(w); /* the worker may be sleeping towards a later deadline */
	}
	pthread_mutex_unlock(&w->lock);
	return rc;
}

void shardmap__task_wake(struct shardmap__task *t)
{
	struct worker *w = t->w;
	pthread_mutex_lock(&w->lock);
	if (!t->closed) {
		run_push(w, t, SHARDMAP__EV_WAKE);
		kick_locked(w);
	}
	pthread_mutex_unlock(&w->lock);
}

void shardmap__task_close(struct shardmap__task *t)
{
	if (t == NULL)
		return;
	struct worker *w = t->w;
	pthread_mutex_lock(&w->lock);
	t->closed = 1;
	run_remove(w, t);
	heap_remove(w, t);
	if (t->fd >= 0)
		(void)epoll_ctl(w->epfd, EPOLL_CTL_DEL, t->fd, NULL); /* fd may be closed already */
	t->fd = -1;
	if (t->live_prev)
		t->live_prev->live_next = t->live_next;
	else
		w->live = t->live_next;
	if (t->live_next)
		t->live_next->live_prev = t->live_prev;
	atomic_fetch_sub_explicit(&w->n_tasks, 1, memory_order_relaxed); /* load balance only */

	if (on_worker_thread(w)) {
		/* Its own callback or a neighbour's: freed at the start of the next iteration,
		 * after the callback that called us has returned. */
		t->close_next = w->dead;
		w->dead = t;
		pthread_mutex_unlock(&w->lock);
		return;
	}
	if (!w->exited) {
		t->close_next = w->closing;
		w->closing = t;
		kick_locked(w);
		while (!t->released)
			pthread_cond_wait(&w->released, &w->lock);
	}
	pthread_mutex_unlock(&w->lock);
	free(t);
}
