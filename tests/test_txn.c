/*
 * test_txn.c - the copy-on-write transaction (lib/txn.c) and map memory (lib/mem.c).
 *
 * Generations are unique and never 0; abort frees exactly what was created; commit hands
 * over the retired list; an object created and retired in one transaction is freed exactly
 * once either way; vector growth fails cleanly under out-of-memory injection; the injection
 * hook fails exactly the n-th allocation; the jemalloc arena (when built) reports resident
 * bytes and returns aligned memory.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "mem.h"
#include "shardmap.h"
#include "txn.h"

struct obj {
	struct shardmap__node_hdr hdr;
	char payload[40];
};

/* One timeout for every test: Criterion 2.4.1 leaks in its runner (LeakSanitizer fails the
 * ASan build) when tests with different timeouts run in parallel. */
TestSuite(mem, .timeout = 300);
TestSuite(txn, .timeout = 300);

Test(txn, generations_unique_and_nonzero)
{
	struct shardmap__mem mem;
	cr_assert_eq(shardmap__mem_init(&mem, 0), 0);
	uint64_t prev = 0;
	for (int i = 0; i < 1000; i++) {
		struct shardmap__txn t;
		shardmap__txn_init(&t, &mem);
		cr_assert_neq(t.gen, 0);
		cr_assert_gt(t.gen, prev);
		prev = t.gen;
		shardmap__txn_abort(&t);
	}
	shardmap__mem_fini(&mem);
}

Test(txn, node_ownership)
{
	struct shardmap__mem mem;
	cr_assert_eq(shardmap__mem_init(&mem, 1), 0);
	struct shardmap__txn a, b;
	shardmap__txn_init(&a, &mem);
	struct obj *n = shardmap__txn_node(&a, sizeof *n);
	cr_assert_not_null(n);
	cr_assert_eq(n->hdr.gen, a.gen);
	cr_assert(shardmap__txn_owns(&a, n));
	struct shardmap__ptrvec retired;
	shardmap__txn_commit(&a, &retired);
	shardmap__txn_init(&b, &mem);
	cr_assert(!shardmap__txn_owns(&b, n), "a later txn does not own an earlier node");
	void *al = shardmap__txn_node_aligned(&b, 448, 64);
	cr_assert_not_null(al);
	cr_assert_eq((uintptr_t)al % 64, 0);
	cr_assert(shardmap__txn_owns(&b, al));
	shardmap__txn_abort(&b);
	shardmap__ptrvec_free_all(&mem, &retired);
	shardmap__free(&mem, n);
	shardmap__mem_fini(&mem);
}

Test(txn, abort_frees_created_and_keeps_retired)
{
	struct shardmap__mem mem;
	cr_assert_eq(shardmap__mem_init(&mem, 1), 0);
	long live0 = shardmap__mem_live();
	void *published[50];
	for (int i = 0; i < 50; i++)
		cr_assert_not_null(published[i] = shardmap__alloc(&mem, 24));
	long live1 = shardmap__mem_live();
	cr_assert_eq(live1, live0 + 50);

	struct shardmap__txn t;
	shardmap__txn_init(&t, &mem);
	for (int i = 0; i < 1000; i++)
		cr_assert_not_null(shardmap__txn_alloc(&t, 16 + (size_t)i % 100));
	for (int i = 0; i < 50; i++)
		cr_assert_eq(shardmap__txn_retire(&t, published[i]), 0);
	/* Created and retired in the same txn: on both lists. */
	void *both = shardmap__txn_node(&t, sizeof(struct obj));
	cr_assert_not_null(both);
	cr_assert_eq(shardmap__txn_retire(&t, both), 0);
	shardmap__txn_abort(&t);
	cr_assert_eq(shardmap__mem_live(), live1, "abort frees all created, nothing retired");
	cr_assert_eq(t.created.n, 0);
	cr_assert_eq(t.retired.n, 0);
	/* The published objects are intact: write them, then free them. */
	for (int i = 0; i < 50; i++) {
		memset(published[i], 0xab, 24);
		shardmap__free(&mem, published[i]);
	}
	cr_assert_eq(shardmap__mem_live(), live0);
	shardmap__mem_fini(&mem);
}

Test(txn, commit_hands_over_retired_and_frees_once)
{
	struct shardmap__mem mem;
	cr_assert_eq(shardmap__mem_init(&mem, 1), 0);
	long live0 = shardmap__mem_live();
	void *published[30];
	for (int i = 0; i < 30; i++)
		cr_assert_not_null(published[i] = shardmap__alloc(&mem, 32));

	struct shardmap__txn t;
	shardmap__txn_init(&t, &mem);
	void *kept[20];
	for (int i = 0; i < 20; i++)
		cr_assert_not_null(kept[i] = shardmap__txn_alloc(&t, 32));
	for (int i = 0; i < 30; i++)
		cr_assert_eq(shardmap__txn_retire(&t, published[i]), 0);
	void *both = shardmap__txn_node(&t, sizeof(struct obj));
	cr_assert_eq(shardmap__txn_retire(&t, both), 0);

	struct shardmap__ptrvec retired;
	shardmap__txn_commit(&t, &retired);
	cr_assert_eq(retired.n, 31);
	cr_assert_eq(retired.v[30], both);
	cr_assert_eq(t.created.n, 0);
	cr_assert_eq(t.retired.n, 0);
	shardmap__ptrvec_free_all(&mem, &retired);
	cr_assert_eq(retired.n, 0);
	cr_assert_null(retired.v);
	/* Only the created-and-kept objects remain. */
	cr_assert_eq(shardmap__mem_live(), live0 + 20);
	for (int i = 0; i < 20; i++)
		shardmap__free(&mem, kept[i]);
	cr_assert_eq(shardmap__mem_live(), live0);
	shardmap__mem_fini(&mem);
}

Test(txn, oom_in_every_allocation_point)
{
	struct shardmap__mem mem;
	cr_assert_eq(shardmap__mem_init(&mem, 1), 0);
	long live0 = shardmap__mem_live();
	void *published[40];
	for (int i = 0; i < 40; i++)
		cr_assert_not_null(published[i] = shardmap__alloc(&mem, 8));
	long live1 = shardmap__mem_live();
	int failures = 0;
	/* Make the n-th allocation fail, for every n that a sequence of 40 allocs and 40
	 * retires reaches (object allocations and the vectors growing at 16 and 32). */
	for (long n = 1;; n++) {
		struct shardmap__txn t;
		shardmap__txn_init(&t, &mem);
		shardmap__mem_fail_after(n);
		int failed = 0;
		for (int i = 0; i < 40 && !failed; i++) {
			size_t created = t.created.n;
			if (shardmap__txn_alloc(&t, 8) == NULL) {
				cr_assert_eq(t.created.n, created, "failed alloc not recorded");
				failed = 1;
			}
		}
		for (int i = 0; i < 40 && !failed; i++)
			failed = shardmap__txn_retire(&t, published[i]) == SHARDMAP_ENOMEM;
		shardmap__mem_fail_after(0);
		shardmap__txn_abort(&t);
		cr_assert_eq(shardmap__mem_live(), live1, "leak after failure at n=%ld", n);
		if (!failed)
			break;
		failures++;
	}
	/* 40 objects + created vector (16, 32, 64) + retired vector (16, 32, 64). */
	cr_assert_eq(failures, 46);
	for (int i = 0; i < 40; i++)
		shardmap__free(&mem, published[i]);
	cr_assert_eq(shardmap__mem_live(), live0);
	shardmap__mem_fini(&mem);
}

Test(mem, fail_after_fails_exactly_the_nth)
{
	struct shardmap__mem mem;
	cr_assert_eq(shardmap__mem_init(&mem, 0), 0);
	long allocs0 = shardmap__mem_allocs();
	shardmap__mem_fail_after(3);
	void *a = shardmap__alloc(&mem, 10);
	void *b = shardmap__calloc(&mem, 10);
	void *c = shardmap__alloc(&mem, 10);
	void *d = shardmap__alloc_aligned(&mem, 64, 10);
	void *e = shardmap__alloc(&mem, 10);
	cr_assert(a && b && !c && d && e);
	cr_assert_eq(shardmap__mem_allocs(), allocs0 + 4, "failed allocations are not counted");
	cr_assert_eq((uintptr_t)d % 64, 0);
	for (int i = 0; i < 10; i++)
		cr_assert_eq(((unsigned char *)b)[i], 0);
	shardmap__mem_fail_after(1);
	shardmap__mem_fail_after(0); /* disarmed */
	void *f = shardmap__alloc(&mem, 10);
	cr_assert_not_null(f);
	shardmap__free(&mem, NULL);
	void *all[] = {a, b, d, e, f};
	for (int i = 0; i < 5; i++)
		shardmap__free(&mem, all[i]);
	shardmap__mem_fini(&mem);
}

Test(mem, arena_isolation_and_resident_bytes)
{
	struct shardmap__mem m1, m2;
	cr_assert_eq(shardmap__mem_init(&m1, 1), 0);
	cr_assert_eq(shardmap__mem_init(&m2, 1), 0);
	long live0 = shardmap__mem_live();
	enum { N = 4000 };
	static void *p[N];
	for (int i = 0; i < N; i++) {
		p[i] = i % 2 ? shardmap__alloc(&m1, 1000) : shardmap__alloc_aligned(&m1, 64, 448);
		cr_assert_not_null(p[i]);
		memset(p[i], 0x5a, i % 2 ? 1000 : 448);
	}
	void *z = shardmap__calloc(&m2, 5000);
	cr_assert_not_null(z);
	for (int i = 0; i < 5000; i++)
		cr_assert_eq(((unsigned char *)z)[i], 0);
#ifdef SHARDMAP_HAVE_JEMALLOC
	cr_assert(m1.use_arena && m2.use_arena);
	cr_assert_neq(m1.arena, m2.arena, "each map has its own arena");
	uint64_t r1 = shardmap__mem_resident(&m1);
	cr_assert_geq(r1, (uint64_t)N / 2 * 1448, "resident %lu", (unsigned long)r1);
	cr_assert_lt(shardmap__mem_resident(&m2), r1);
#else
	cr_assert_eq(shardmap__mem_resident(&m1), 0);
#endif
	for (int i = 0; i < N; i++)
		shardmap__free(&m1, p[i]);
	shardmap__free(&m2, z);
	cr_assert_eq(shardmap__mem_live(), live0);
	shardmap__mem_fini(&m1);
	shardmap__mem_fini(&m2);
}

Test(txn, ptrvec_push_grows)
{
	struct shardmap__mem mem;
	cr_assert_eq(shardmap__mem_init(&mem, 0), 0);
	long live0 = shardmap__mem_live();
	struct shardmap__ptrvec v = {0};
	for (int i = 0; i < 5000; i++) {
		void *p = shardmap__alloc(&mem, 4);
		cr_assert_not_null(p);
		cr_assert_eq(shardmap__ptrvec_push(&mem, &v, p), 0);
	}
	cr_assert_eq(v.n, 5000);
	cr_assert_geq(v.cap, 5000);
	shardmap__ptrvec_free_all(&mem, &v);
	cr_assert_eq(shardmap__mem_live(), live0);
	shardmap__mem_fini(&mem);
}
