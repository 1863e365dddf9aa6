/*
 * mem.c - where map memory comes from: a private jemalloc arena per map, or the heap.
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
 * Heap memory (scratch of a build, maps without an arena) also goes through jemalloc's own
 * API when the build has it (mallocx/dallocx without an arena: the automatic arenas and the
 * thread cache, as malloc), so that every pointer this file hands out is freed the way it
 * was allocated even in a process whose malloc is not jemalloc's (a host that dlopen()s us).
 * Without jemalloc (sanitizer and valgrind builds) everything is plain malloc/free.
 *
 * Huge pages: a million-shard bootstrap touches about 170 MB of fresh arena memory, and
 * faulting it in 4 KiB at a time costs more than building the map in it (about 3.4 us per
 * page here, a third of the bootstrap). So every arena this file creates gets extent hooks
 * that are jemalloc's own, except that fresh large extents are marked MADV_HUGEPAGE: where the
 * system's transparent huge pages are in "madvise" (or "always") mode, the arena's memory
 * then faults in 2 MiB at a time (and lookups miss the TLB less). Nothing else changes:
 * jemalloc still splits, merges, purges and destroys with its default hooks, and its
 * statistics (the resident-bytes figure) are the same. The large transient buffers of a
 * load (a snapshot read whole, its decoded op array: shardmap__big_alloc) come from one
 * more such arena, shared by the process, which returns freed pages at once.
 *
 * Process-wide counters (all relaxed atomics: they order nothing, tests read them once the
 * threads that allocate have been joined) count allocations and live allocations, and a
 * countdown makes the n-th allocation from now fail, for out-of-memory tests.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef SHARDMAP_HAVE_JEMALLOC
#include <jemalloc/jemalloc.h>
#include <sys/mman.h>
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

#ifdef SHARDMAP_HAVE_JEMALLOC
/* jemalloc's default hooks, copied once (thp_hooks_init), with alloc wrapped. */
static extent_hooks_t thp_hooks;
static extent_alloc_t *default_extent_alloc;
static pthread_once_t thp_hooks_once = PTHREAD_ONCE_INIT;

/* Extents from this size on get the huge-page hint. jemalloc grows an arena's memory in
 * extents of geometrically increasing size (2 MiB, then more), so a small map, which only
 * ever gets the first few, keeps 4 KiB pages and its small footprint (a map of a few shards
 * would otherwise hold a whole 2 MiB page per region it touches), while a big one gets huge
 * pages for nearly all of its memory. */
#define THP_MIN_EXTENT (4u << 20)

/* Heap allocations from this size on (a bootstrap's per-shard scratch arrays, megabytes
 * each) come from the huge-page arena: large enough never to be thread-cached. */
#define HEAP_BIG_MIN (1u << 20)

/* jemalloc's own extent allocation, then the huge-page hint on what it returns. */
static void *thp_extent_alloc(extent_hooks_t *hooks, void *new_addr, size_t size, size_t alignment,
			      bool *zero, bool *commit, unsigned arena_ind)
{
	void *p = default_extent_alloc(hooks, new_addr, size, alignment, zero, commit, arena_ind);
	if (p != NULL && size >= THP_MIN_EXTENT)
		(void)madvise(p, size, MADV_HUGEPAGE); /* a hint: EINVAL without THP is fine */
	return p;
}

static void thp_hooks_init(void)
{
	extent_hooks_t *dflt = NULL;
	size_t len = sizeof dflt;
	/* Arena 0 always exists and uses the default hooks. */
	if (mallctl("arena.0.extent_hooks", &dflt, &len, NULL, 0) != 0 || dflt == NULL ||
	    dflt->alloc == NULL)
		return; /* default_extent_alloc stays NULL: arenas keep the default hooks */
	thp_hooks = *dflt;
	default_extent_alloc = dflt->alloc;
	thp_hooks.alloc = thp_extent_alloc;
}

/* A new arena with the huge-page hooks (the default ones if they cannot be had).
 * Returns 0 or SHARDMAP_ENOMEM. */
static int arena_create(unsigned *arena)
{
	pthread_once(&thp_hooks_once, thp_hooks_init);
	extent_hooks_t *hooks = &thp_hooks;
	size_t len = sizeof *arena;
	if (default_extent_alloc == NULL)
		return mallctl("arenas.create", arena, &len, NULL, 0) == 0 ? 0 : SHARDMAP_ENOMEM;
	return mallctl("arenas.create", arena, &len, &hooks, sizeof hooks) == 0 ? 0
										: SHARDMAP_ENOMEM;
}
#endif

int shardmap__mem_init(struct shardmap__mem *mem, int use_arena)
{
	memset(mem, 0, sizeof *mem);
#ifdef SHARDMAP_HAVE_JEMALLOC
	if (use_arena) {
		unsigned arena;
		if (arena_create(&arena) != 0)
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

/* ---------------------------------------------------------------- big transient buffers */

#ifdef SHARDMAP_HAVE_JEMALLOC
/* The process-wide arena of shardmap__big_alloc; big_flags is 0 when it could not be made
 * (then malloc serves). Both are set once, by big_init under pthread_once, before any
 * shardmap__big_* call reads them (pthread_once orders the stores before its return). */
static pthread_once_t big_once = PTHREAD_ONCE_INIT;
static int big_flags;

static void big_init(void)
{
	unsigned arena;
	if (arena_create(&arena) != 0)
		return;
	/* Return freed pages at once (the buffers are hundreds of MB, freed after each load):
	 * what jemalloc's huge-allocation arena does too. */
	ssize_t zero = 0;
	char name[64];
	snprintf(name, sizeof name, "arena.%u.dirty_decay_ms", arena);
	(void)mallctl(name, NULL, NULL, &zero, sizeof zero); /* else: pages linger 10 s */
	snprintf(name, sizeof name, "arena.%u.muzzy_decay_ms", arena);
	(void)mallctl(name, NULL, NULL, &zero, sizeof zero);
	big_flags = MALLOCX_ARENA(arena) | MALLOCX_TCACHE_NONE;
}
#endif

void *shardmap__big_alloc(size_t size)
{
#ifdef SHARDMAP_HAVE_JEMALLOC
	pthread_once(&big_once, big_init);
	if (big_flags != 0)
		return mallocx(size ? size : 1, big_flags);
#endif
	return malloc(size ? size : 1);
}

void *shardmap__big_realloc(void *p, size_t size)
{
	if (p == NULL)
		return shardmap__big_alloc(size);
#ifdef SHARDMAP_HAVE_JEMALLOC
	if (big_flags != 0) /* set before p was allocated (big_alloc ran big_init) */
		return rallocx(p, size ? size : 1, big_flags);
#endif
	return realloc(p, size ? size : 1);
}

void shardmap__big_free(void *p)
{
	if (p == NULL)
		return;
#ifdef SHARDMAP_HAVE_JEMALLOC
	if (big_flags != 0) {
		dallocx(p, MALLOCX_TCACHE_NONE);
		return;
	}
#endif
	free(p);
}

/* ---------------------------------------------------------------- map memory */

static void *mem_alloc(struct shardmap__mem *mem, size_t align, size_t size, int zero)
{
	if (injected_failure())
		return NULL;
	if (size == 0)
		size = 1; /* mallocx(0) is undefined */
#ifdef SHARDMAP_HAVE_JEMALLOC
	int flags = (zero ? MALLOCX_ZERO : 0) | (align > 1 ? MALLOCX_ALIGN(align) : 0);
	if (mem->use_arena)
		return counted(mallocx(size, mem->flags | flags));
	/* Heap memory (a build's scratch arrays, maps without an arena): jemalloc's automatic
	 * arenas and thread cache, like malloc, except that large arrays come from the
	 * huge-page arena of shardmap__big_alloc. Always through jemalloc's own API, so that
	 * shardmap__free can give any of it back with dallocx even where the process's malloc
	 * is not jemalloc's. */
	if (size >= HEAP_BIG_MIN) {
		pthread_once(&big_once, big_init);
		flags |= big_flags;
	}
	return counted(mallocx(size, flags));
#else
	if (align > 1) {
		void *p;
		if (posix_memalign(&p, align < sizeof(void *) ? sizeof(void *) : align, size) != 0)
			return NULL;
		if (zero)
			memset(p, 0, size);
		return counted(p);
	}
	return counted(zero ? calloc(1, size) : malloc(size));
#endif
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
	/* Heap memory: flags 0 return a small object to the thread cache as free() would, and
	 * a large one (never cached) to the arena it came from. */
	dallocx(p, mem->use_arena ? mem->flags : 0);
#else
	(void)mem;
	free(p);
#endif
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
