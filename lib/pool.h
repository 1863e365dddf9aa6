/*
 * pool.h - tasks on the fixed worker pool.
 *
 * A task is bound to one worker thread for life: its callback never runs on two threads at
 * once, so a task's own state needs no lock. A task watches at most one fd and has at most
 * one one-shot timer; any thread may wake it.
 */
#ifndef SHARDMAP_POOL_H
#define SHARDMAP_POOL_H

#include <stdint.h>

#include "shardmap.h"

#define SHARDMAP__EV_READ 0x1u
#define SHARDMAP__EV_WRITE 0x2u
#define SHARDMAP__EV_ERROR 0x4u  /* EPOLLERR or EPOLLHUP */
#define SHARDMAP__EV_TIMER 0x8u
#define SHARDMAP__EV_WAKE 0x10u

struct shardmap__task;
typedef void (*shardmap__task_fn)(struct shardmap__task *t, void *ctx, uint32_t events);

/* Create a task on the least loaded worker. Returns 0, SHARDMAP_ENOMEM. MT-safe. */
int shardmap__task_open(shardmap_pool *p, shardmap__task_fn fn, void *ctx,
                        struct shardmap__task **out);
/* Watch fd for events (SHARDMAP__EV_READ|WRITE); fd -1 stops watching. Edge or level
 * triggering is level. MT-safe. Returns 0 or SHARDMAP_EIO. */
int shardmap__task_watch(struct shardmap__task *t, int fd, uint32_t events);
/* (Re)arm the one-shot timer to fire after ms milliseconds; UINT64_MAX disarms. MT-safe. */
int shardmap__task_timer(struct shardmap__task *t, uint64_t ms);
/* Run the callback soon with SHARDMAP__EV_WAKE (several wakes may coalesce). MT-safe,
 * never blocks. */
void shardmap__task_wake(struct shardmap__task *t);
/* Stop and free the task. Close (or unwatch, fd -1) the task BEFORE closing the fd it
 * watches: once the fd number is reused, removing a stale registration could remove another
 * task's watch of the new fd. After return the callback is not running and never runs again,
 * except when called from the task's own callback: then it is freed after that callback
 * returns. Does not close the fd. MT-safe. */
void shardmap__task_close(struct shardmap__task *t);
/* Monotonic milliseconds as the pool sees them. */
uint64_t shardmap__now_ms(void);

#endif
