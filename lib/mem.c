/*
 * mem.c - where map memory comes from: a private jemalloc arena per map, or malloc.
 *
 * For the persistent structures (txn.c, hamt.c, btree.c) and the records of every map version.
 * With jemalloc and use_arena, each map creates its own arena ("arenas.create") and allocates
 * with mallocx(MALLOCX_ARENA(a) | MALLOCX_TCACHE_NONE). The thread cache is bypassed on
 * purpose: jemalloc's tcache bins are per thread and per size class, not per arena, so a cached
 * object freed by the map could be handed to the host application (and the other way round),
 * which would break both the isolation and the arena's resident-bytes figure. A map allocates
 * on its writer path and frees from epoch callbacks on whatever thread runs them, so an
 * explicit tcache ("tcache.create") could not be used safely either; map writes are rare
 * enough that the arena lock is never contended by readers (readers never allocate).
 * Without jemalloc (sanitizer and valgrind builds) everything is plain malloc/free.
 *
 * Process-wide counters (all relaxed atomics: they order nothing, tests read them once the
 * threads that allocate have been joined) count allocations and live allocations, and a
 * countdown makes the n-th allocation from now fail, for out-of-memory tests.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef SHARDMAP_HAVE_JEMALLOC
#include <jemalloc/jemalloc.h>
#endif

#include "mem.h"
#include "shardmap.h"

/* Relaxed: a statistic; nothing is published through it. */
static atomic_long alloc_count;
/* Relaxed: a statistic (allocations minus frees); read by tests after their threads joined. */
static atomic_long live_count;
/* Relaxed: the test hook's countdown; it orders no other memory. The test sets it on the
 * thread that then allocates, and a compare-exchange makes exactly one allocation fail even if
 * several threads race past it. */
static atomic_long fail_countdown;

void shardmap__mem_fail_after(long n)
{
	atomic_store_explicit(&fail_countdown, n > 0 ? n : 0, memory_order_relaxed);
}

long shardmap__mem_allocs(void)
{
	return atomic_load_explicit(&alloc_count, memory_order_relaxed);
}

long shardmap__mem_live(void)
{
	return atomic_load_explicit(&live_count, memory_order_relaxed);
}

/* Is this the allocation the test hook wants to fail? Costs one relaxed load when disarmed. */
static int injected_failure(void)
{
	long n = atomic_load_explicit(&fail_countdown, memory_order_relaxed);
	while (n > 0) {
		if (atomic_compare_exchange_weak_explicit(
			&fail_countdown, &n, n - 1, memory_order_relaxed, memory_order_relaxed))
			return n == 1;
	}
	return 0;
}

static void *counted(void *p)
{
	if (p != NULL) {
		atomic_fetch_add_explicit(&alloc_count, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&live_count, 1, memory_order_relaxed);
	}
	return p;
}

int shardmap__mem_init(struct shardmap__mem *mem, int use_arena)
{
	memset(mem, 0, sizeof *mem);
#ifdef SHARDMAP_HAVE_JEMALLOC
	if (use_arena) {
		unsigned arena;
		size_t len = sizeof arena;
		if (mallctl("arenas.create", &arena, &len, NULL, 0) != 0)
			return SHARDMAP_ENOMEM;
		mem->arena = arena;
		mem->use_arena = 1;
		mem->flags = MALLOCX_ARENA(arena) | MALLOCX_TCACHE_NONE;
	}
#else
	(void)use_arena; /* no jemalloc in this build: malloc serves every map */
#endif
	return 0;
}

void shardmap__mem_fini(struct shardmap__mem *mem)
{
#ifdef SHARDMAP_HAVE_JEMALLOC
	if (mem->use_arena) {
		char name[64];
		snprintf(name, sizeof name, "arena.%u.destroy", mem->arena);
		(void)mallctl(name, NULL, NULL, NULL, 0); /* fails only for a bad index */
	}
#endif
	memset(mem, 0, sizeof *mem);
}

static void *mem_alloc(struct shardmap__mem *mem, size_t align, size_t size, int zero)
{
	if (injected_failure())
		return NULL;
	if (size == 0)
		size = 1; /* mallocx(0) is undefined */
#ifdef SHARDMAP_HAVE_JEMALLOC
	if (mem->use_arena) {
		int flags =
		    mem->flags | (zero ? MALLOCX_ZERO : 0) | (align > 1 ? MALLOCX_ALIGN(align) : 0);
		return counted(mallocx(size, flags));
	}
#endif
	if (align > 1) {
		void *p;
		if (posix_memalign(&p, align < sizeof(void *) ? sizeof(void *) : align, size) != 0)
			return NULL;
		if (zero)
			memset(p, 0, size);
		return counted(p);
	}
	return counted(zero ? calloc(1, size) : malloc(size));
}

void *shardmap__alloc(struct shardmap__mem *mem, size_t size)
{
	return mem_alloc(mem, 0, size, 0);
}

void *shardmap__calloc(struct shardmap__mem *mem, size_t size)
{
	return mem_alloc(mem, 0, size, 1);
}

void *shardmap__alloc_aligned(struct shardmap__mem *mem, size_t align, size_t size)
{
	return mem_alloc(mem, align, size, 0);
}

void shardmap__free(struct shardmap__mem *mem, void *p)
{
	if (p == NULL)
		return;
	atomic_fetch_sub_explicit(&live_count, 1, memory_order_relaxed);
#ifdef SHARDMAP_HAVE_JEMALLOC
	if (mem->use_arena) {
		dallocx(p, mem->flags);
		return;
	}
#endif
	free(p);
}

uint64_t shardmap__mem_resident(struct shardmap__mem *mem)
{
#ifdef SHARDMAP_HAVE_JEMALLOC
	if (mem->use_arena) {
		/* jemalloc's statistics are snapshots refreshed by writing "epoch". */
		uint64_t epoch = 1;
		size_t len = sizeof epoch;
		if (mallctl("epoch", &epoch, &len, &epoch, len) != 0)
			return 0;
		char name[64];
		size_t resident;
		len = sizeof resident;
		snprintf(name, sizeof name, "stats.arenas.%u.resident", mem->arena);
		if (mallctl(name, &resident, &len, NULL, 0) != 0)
			return 0; /* jemalloc built without statistics */
		return resident;
	}
#endif
	(void)mem;
	return 0;
}
