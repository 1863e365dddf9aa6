/*
 * mem.h - where map memory comes from.
 *
 * Every record and node of a map version is allocated here: from a dedicated jemalloc arena
 * per map (mallocx with MALLOCX_ARENA) when the build has jemalloc and the map asked for it,
 * from the heap otherwise (through jemalloc's own API when the build has it, plain malloc in
 * sanitizer and valgrind builds). Freed versions return to the same arena, and the arena's
 * statistics give the map's resident bytes. Memory from this file is freed through it.
 *
 * A test hook makes the n-th allocation from now fail, so tests can show that every
 * allocation point of an apply leaves the published map unchanged and leaks nothing.
 */
#ifndef SHARDMAP_MEM_H
#define SHARDMAP_MEM_H

#include <stddef.h>
#include <stdint.h>

struct shardmap__mem {
	unsigned arena;   /* jemalloc arena index, valid when use_arena */
	int use_arena;
	int flags;        /* mallocx flags for this arena */
};

/* Set up mem (creates the arena when asked and available). Returns 0 or SHARDMAP_ENOMEM. */
int shardmap__mem_init(struct shardmap__mem *mem, int use_arena);
/* Release the arena (all its allocations must have been freed). */
void shardmap__mem_fini(struct shardmap__mem *mem);

/* NULL on failure (real or injected). Thread-safety: MT-safe. */
void *shardmap__alloc(struct shardmap__mem *mem, size_t size);
void *shardmap__calloc(struct shardmap__mem *mem, size_t size);
/* Accepts NULL. */
void shardmap__free(struct shardmap__mem *mem, void *p);
/* Resident bytes of the map's arena (0 without jemalloc). */
uint64_t shardmap__mem_resident(struct shardmap__mem *mem);

/* Test hook: make the n-th allocation from now fail (1 = the next one); 0 disables.
 * Process-wide (tests run one map at a time). */
void shardmap__mem_fail_after(long n);
/* Allocations made through shardmap__alloc/calloc since the process started. */
long shardmap__mem_allocs(void);

/* Added by the structs module. */
/* Like shardmap__alloc, aligned to align (a power of two, at most 4096): for B+-tree nodes,
 * which must start on a cache line. Freed with shardmap__free. */
void *shardmap__alloc_aligned(struct shardmap__mem *mem, size_t align, size_t size);
/* Allocations currently live (made through this file and not yet freed), all maps of the
 * process together: tests use it to show that nothing leaks. */
long shardmap__mem_live(void);

/* Added by bootstrap. */
/* Large transient buffers that are not map memory (a snapshot read whole, its decoded op
 * array): with jemalloc, from one process-wide arena whose memory is backed by transparent
 * huge pages where the system allows and whose freed pages are returned at once; malloc
 * otherwise. Not counted by shardmap__mem_allocs/live and never failed by the test hook.
 * Free with shardmap__big_free only (never free()). NULL on failure. Thread-safety: MT-safe. */
void *shardmap__big_alloc(size_t size);
/* Like realloc (p NULL: shardmap__big_alloc). NULL on failure, p then untouched. */
void *shardmap__big_realloc(void *p, size_t size);
/* Accepts NULL. */
void shardmap__big_free(void *p);

#endif
