/*
 * test_btree.c - the persistent B+-tree of range starts (lib/btree.c) against a sorted array.
 *
 * Random batches of puts and deletes, committed or aborted, checked after each batch with
 * every query (find, get, next, prev, foreach, both node searches) and the tree's own
 * invariant checker; persistence of the old root after commit; allocation accounting;
 * out-of-memory injection at every allocation of put and del; keys that tie on the high word;
 * the extreme keys 0 and 2^128-1; height growth and shrink.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "btree.h"
#include "mem.h"
#include "txn.h"

static const shardmap_hash hash_max = {UINT64_MAX, UINT64_MAX};

/* ------------------------------------------------------------------ helpers */

static uint64_t rng_next(uint64_t *s)
{
	/* splitmix64 */
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static int cmp(shardmap_hash a, shardmap_hash b)
{
	if (a.hi != b.hi)
		return a.hi < b.hi ? -1 : 1;
	return a.lo < b.lo ? -1 : a.lo > b.lo;
}

static int eq(shardmap_hash a, shardmap_hash b)
{
	return cmp(a, b) == 0;
}

static shardmap_hash hplus(shardmap_hash a, int d)
{
	shardmap_hash r = a;
	if (d > 0) {
		r.lo++;
		r.hi += r.lo == 0;
	} else {
		r.hi -= r.lo == 0;
		r.lo--;
	}
	return r;
}

/* Keys that exercise ties: a fifth share a few hi words, some sit at the extremes. */
static shardmap_hash rand_key(uint64_t *s)
{
	static const uint64_t few_hi[] = {0,	     1, 42, 0x8000000000000000ull, UINT64_MAX - 1,
					  UINT64_MAX};
	uint64_t r = rng_next(s);
	shardmap_hash k = {rng_next(s), rng_next(s)};
	switch (r % 10) {
	case 0:
	case 1:
		k.hi = few_hi[(r >> 8) % 6];
		break;
	case 2:
		k.lo = (r >> 8) % 3 == 0 ? 0 : (r >> 8) % 3 == 1 ? UINT64_MAX : k.lo % 8;
		k.hi = few_hi[(r >> 16) % 6];
		break;
	default:
		break;
	}
	return k;
}

/* The reference: a sorted array of (start, value). */
struct ref {
	size_t n, cap;
	shardmap_hash *k;
	const void **v;
};

static void ref_copy(struct ref *dst, const struct ref *src)
{
	dst->n = src->n;
	dst->cap = src->cap > 0 ? src->cap : 1;
	dst->k = malloc(dst->cap * sizeof *dst->k);
	dst->v = malloc(dst->cap * sizeof *dst->v);
	cr_assert(dst->k && dst->v);
	if (src->n > 0) {
		memcpy(dst->k, src->k, src->n * sizeof *dst->k);
		memcpy(dst->v, src->v, src->n * sizeof *dst->v);
	}
}

static void ref_free(struct ref *r)
{
	free(r->k);
	free(r->v);
	memset(r, 0, sizeof *r);
}

/* Number of keys <= h. */
static size_t ref_rank(const struct ref *r, shardmap_hash h)
{
	size_t lo = 0, hi = r->n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (cmp(r->k[mid], h) <= 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static const void *ref_put(struct ref *r, shardmap_hash k, const void *v)
{
	size_t i = ref_rank(r, k);
	if (i > 0 && eq(r->k[i - 1], k)) {
		const void *old = r->v[i - 1];
		r->v[i - 1] = v;
		return old;
	}
	if (r->n == r->cap) {
		r->cap = r->cap ? 2 * r->cap : 64;
		r->k = realloc(r->k, r->cap * sizeof *r->k);
		r->v = realloc(r->v, r->cap * sizeof *r->v);
		cr_assert(r->k && r->v);
	}
	memmove(&r->k[i + 1], &r->k[i], (r->n - i) * sizeof *r->k);
	memmove(&r->v[i + 1], &r->v[i], (r->n - i) * sizeof *r->v);
	r->k[i] = k;
	r->v[i] = v;
	r->n++;
	return NULL;
}

static const void *ref_del(struct ref *r, shardmap_hash k)
{
	size_t i = ref_rank(r, k);
	if (i == 0 || !eq(r->k[i - 1], k))
		return NULL;
	const void *old = r->v[i - 1];
	memmove(&r->k[i - 1], &r->k[i], (r->n - i) * sizeof *r->k);
	memmove(&r->v[i - 1], &r->v[i], (r->n - i) * sizeof *r->v);
	r->n--;
	return old;
}

struct walk {
	const struct ref *r;
	size_t i;
	int bad;
};

static int walk_fn(void *ctx, shardmap_hash start, const void *value)
{
	struct walk *w = ctx;
	if (w->i >= w->r->n || !eq(w->r->k[w->i], start) || w->r->v[w->i] != value)
		w->bad = 1;
	w->i++;
	return 0;
}

static int stop_fn(void *ctx, shardmap_hash start, const void *value)
{
	(void)start;
	(void)value;
	return ++*(int *)ctx == 3 ? 77 : 0;
}

/* Every query at h agrees with the reference (find with both node searches). */
static void check_probe(const struct shardmap__btree *t, const struct ref *r, shardmap_hash h)
{
	size_t i = ref_rank(r, h);
	const void *want = i ? r->v[i - 1] : NULL;
	shardmap__btree_use_simd(0);
	const void *scalar = shardmap__btree_find(t, h);
	shardmap__btree_use_simd(1);
	const void *simd = shardmap__btree_find(t, h);
	cr_assert_eq(scalar, want, "scalar find %016lx:%016lx", (unsigned long)h.hi,
		     (unsigned long)h.lo);
	cr_assert_eq(simd, want, "simd find %016lx:%016lx", (unsigned long)h.hi,
		     (unsigned long)h.lo);

	int exact = i > 0 && eq(r->k[i - 1], h);
	cr_assert_eq(shardmap__btree_get(t, h), exact ? r->v[i - 1] : NULL);

	shardmap_hash got = {7, 7};
	const void *nv = shardmap__btree_next(t, h, &got);
	cr_assert_eq(nv, i < r->n ? r->v[i] : NULL);
	if (nv)
		cr_assert(eq(got, r->k[i]));

	size_t below = exact ? i - 1 : i; /* keys < h */
	const void *pv = shardmap__btree_prev(t, h, &got);
	cr_assert_eq(pv, below ? r->v[below - 1] : NULL);
	if (pv)
		cr_assert(eq(got, r->k[below - 1]));
}

/* shardmap__btree_find_batch agrees with the reference on batches of every size, of keys,
 * their neighbours and random hashes mixed (so walks that start at different levels of the
 * jump table go down together), with both node searches. */
static void check_batches(const struct shardmap__btree *t, const struct ref *r, uint64_t *s)
{
	shardmap_hash hs[SHARDMAP__BTREE_BATCH];
	const void *got[SHARDMAP__BTREE_BATCH];
	for (size_t n = 0; n <= SHARDMAP__BTREE_BATCH; n += 1 + n / 4) {
		for (size_t i = 0; i < n; i++) {
			uint64_t pick = rng_next(s);
			hs[i] = r->n == 0 || pick % 3 == 0 ? rand_key(s) : r->k[pick % r->n];
			if (pick % 3 == 1 && !eq(hs[i], hash_max))
				hs[i] = hplus(hs[i], 1);
		}
		for (int simd = 0; simd <= 1; simd++) {
			shardmap__btree_use_simd(simd);
			memset(got, 0x5a, sizeof got);
			shardmap__btree_find_batch(t, hs, n, got);
			for (size_t i = 0; i < n; i++) {
				size_t rank = ref_rank(r, hs[i]);
				cr_assert_eq(got[i], rank ? r->v[rank - 1] : NULL,
					     "batch of %zu, key %zu, simd %d", n, i, simd);
			}
		}
	}
	shardmap__btree_use_simd(1);
}

static void check_tree(const struct shardmap__btree *t, const struct ref *r, uint64_t *s,
		       int probes)
{
	cr_assert_eq(shardmap__btree_check(t), 0, "invariant broken at btree.c:%d",
		     shardmap__btree_check(t));
	cr_assert_eq(t->count, r->n);
	struct walk w = {r, 0, 0};
	cr_assert_eq(shardmap__btree_foreach(t, walk_fn, &w), 0);
	cr_assert(!w.bad && w.i == r->n, "foreach disagrees");
	for (size_t i = 0; i < r->n; i++) {
		check_probe(t, r, r->k[i]);
		if (!eq(r->k[i], hash_max))
			check_probe(t, r, hplus(r->k[i], 1));
		if (!eq(r->k[i], (shardmap_hash){0, 0}))
			check_probe(t, r, hplus(r->k[i], -1));
	}
	for (int i = 0; i < probes; i++)
		check_probe(t, r, rand_key(s));
	check_probe(t, r, (shardmap_hash){0, 0});
	check_probe(t, r, hash_max);
	check_batches(t, r, s);
}

static const void *value_of(uint64_t serial)
{
	return (const void *)(uintptr_t)(16 * serial + 16);
}

struct fixture {
	struct shardmap__mem mem;
	long live0;
};

static void fx_init(struct fixture *f)
{
	cr_assert_eq(shardmap__mem_init(&f->mem, 1), 0);
	f->live0 = shardmap__mem_live();
}

static void fx_fini(struct fixture *f, struct shardmap__btree *t)
{
	shardmap__btree_free_nodes(&f->mem, t);
	cr_assert_eq(t->root, NULL);
	cr_assert_eq(shardmap__mem_live(), f->live0, "leaked %ld allocations",
		     shardmap__mem_live() - f->live0);
	shardmap__mem_fini(&f->mem);
}

/* Commit t's txn and free the retired list. */
static void commit_and_reclaim(struct fixture *f, struct shardmap__txn *tx)
{
	struct shardmap__ptrvec retired;
	shardmap__txn_commit(tx, &retired);
	shardmap__ptrvec_free_all(&f->mem, &retired);
}

/* Insert keys (in the given order) in one committed transaction. */
static void build(struct fixture *f, struct shardmap__btree *t, struct ref *r,
		  const shardmap_hash *keys, size_t n, uint64_t *serial)
{
	struct shardmap__txn tx;
	shardmap__txn_init(&tx, &f->mem);
	for (size_t i = 0; i < n; i++) {
		const void *v = value_of((*serial)++), *old = (const void *)1;
		cr_assert_eq(shardmap__btree_put(&tx, t, keys[i], v, &old), 0);
		cr_assert_eq(old, ref_put(r, keys[i], v));
	}
	commit_and_reclaim(f, &tx);
}

/* ------------------------------------------------------------------ tests */

/* One timeout for every test: Criterion 2.4.1 leaks in its runner (LeakSanitizer fails the
 * ASan build) when tests with different timeouts run in parallel. */
TestSuite(btree, .timeout = 300);

Test(btree, empty_tree)
{
	struct fixture f;
	fx_init(&f);
	struct shardmap__btree t = {0};
	struct ref r = {0};
	uint64_t s = 1;
	shardmap_hash k = {5, 5}, out;
	check_tree(&t, &r, &s, 10);
	cr_assert_null(shardmap__btree_next(&t, k, &out));
	cr_assert_null(shardmap__btree_prev(&t, k, &out));

	struct shardmap__txn tx;
	shardmap__txn_init(&tx, &f.mem);
	const void *old = (const void *)1;
	cr_assert_eq(shardmap__btree_del(&tx, &t, k, &old), SHARDMAP_ENOENT);
	cr_assert_eq(old, (const void *)1, "a failed del does not touch *old");
	cr_assert_eq(shardmap__btree_put(&tx, &t, k, value_of(1), NULL), 0);
	cr_assert_eq(shardmap__btree_del(&tx, &t, (shardmap_hash){5, 6}, NULL), SHARDMAP_ENOENT);
	cr_assert_eq(shardmap__btree_del(&tx, &t, (shardmap_hash){4, 5}, NULL), SHARDMAP_ENOENT);
	cr_assert_eq(shardmap__btree_del(&tx, &t, k, &old), 0);
	cr_assert_eq(old, value_of(1));
	cr_assert_eq(t.root, NULL);
	cr_assert_eq(t.height, 0);
	commit_and_reclaim(&f, &tx);
	fx_fini(&f, &t);
	ref_free(&r);
}

Test(btree, random_batches_against_reference)
{
	struct fixture f;
	fx_init(&f);
	struct shardmap__btree committed = {0};
	struct ref ref = {0};
	uint64_t s = 12345, serial = 0;
	int commits = 0, aborts = 0, sealed = 0;
	long total_ops = 0;

	for (int batch = 0; batch < 300; batch++) {
		struct shardmap__btree work = committed;
		struct ref wref;
		ref_copy(&wref, &ref);
		struct shardmap__txn tx;
		shardmap__txn_init(&tx, &f.mem);
		long live_before = shardmap__mem_live();

		/* Grow towards ~3000 keys, then hover; every so often delete in a burst. */
		int ops = 1 + (int)(rng_next(&s) % 200);
		unsigned put_pct = wref.n < 3000 ? 70 : 45;
		if (batch % 25 == 24)
			put_pct = 10;
		for (int i = 0; i < ops; i++, total_ops++) {
			uint64_t r = rng_next(&s);
			shardmap_hash k;
			if (r % 64 == 0 && wref.n > 0 && wref.k[wref.n - 1].hi < UINT64_MAX / 2) {
				/* A run of appends above the largest key: the right edge fills. */
				k = wref.k[wref.n - 1];
				for (int j = 0; j < 40; j++) {
					k.hi += 1 + rng_next(&s) % 1000;
					const void *v = value_of(serial++);
					cr_assert_eq(shardmap__btree_put(&tx, &work, k, v, NULL),
						     0);
					ref_put(&wref, k, v);
				}
			} else if (r % 64 == 1 && wref.n > 0) {
				/* Remove the largest key: short right-edge nodes empty. */
				k = wref.k[wref.n - 1];
				const void *want = ref_del(&wref, k), *old = NULL;
				cr_assert_eq(shardmap__btree_del(&tx, &work, k, &old), 0);
				cr_assert_eq(old, want);
			} else if (r % 100 < put_pct || wref.n == 0) {
				k = (r >> 32) % 8 == 0 && wref.n ? wref.k[(r >> 8) % wref.n]
								 : rand_key(&s);
				const void *v = value_of(serial++), *old = (const void *)1;
				cr_assert_eq(shardmap__btree_put(&tx, &work, k, v, &old), 0);
				cr_assert_eq(old, ref_put(&wref, k, v));
			} else {
				k = (r >> 32) % 10 == 0 ? rand_key(&s) : wref.k[(r >> 8) % wref.n];
				const void *want = ref_del(&wref, k), *old = NULL;
				int rc = shardmap__btree_del(&tx, &work, k, &old);
				cr_assert_eq(rc, want ? 0 : SHARDMAP_ENOENT);
				cr_assert_eq(old, want);
			}
		}
		/* Most batches end as apply ends them: sealed, with a jump table from 3 levels. */
		if (rng_next(&s) % 4 != 0) {
			cr_assert_eq(shardmap__btree_seal(&tx, &work), 0);
			cr_assert_eq(work.jump != NULL, work.height >= SHARDMAP__BTREE_JUMP_MIN_HEIGHT);
			sealed += work.jump != NULL;
		}
		check_tree(&work, &wref, &s, 50);

		if (rng_next(&s) % 4 != 0) {
			struct shardmap__ptrvec retired;
			shardmap__txn_commit(&tx, &retired);
			/* Until the retired list is freed, the old root answers as before. */
			check_tree(&committed, &ref, &s, 20);
			shardmap__ptrvec_free_all(&f.mem, &retired);
			committed = work;
			ref_free(&ref);
			ref = wref;
			commits++;
		} else {
			shardmap__txn_abort(&tx);
			cr_assert_eq(shardmap__mem_live(), live_before,
				     "abort frees what the txn created");
			check_tree(&committed, &ref, &s, 20);
			ref_free(&wref);
			aborts++;
		}
	}
	cr_assert(commits > 100 && aborts > 30);
	cr_assert(sealed > 100, "only %d batches ended with a jump table", sealed);
	cr_assert(total_ops > 20000);
	fx_fini(&f, &committed);
	ref_free(&ref);
}

Test(btree, commit_keeps_old_root_and_abort_frees)
{
	struct fixture f;
	fx_init(&f);
	struct shardmap__btree t = {0};
	struct ref r = {0};
	uint64_t s = 99, serial = 0;
	shardmap_hash keys[2000];
	for (int i = 0; i < 2000; i++)
		keys[i] = rand_key(&s);
	build(&f, &t, &r, keys, 2000, &serial);
	check_tree(&t, &r, &s, 100);

	/* Abort: everything the transaction allocated goes, the tree is as before. */
	long live = shardmap__mem_live();
	struct shardmap__btree work = t;
	struct shardmap__txn tx;
	shardmap__txn_init(&tx, &f.mem);
	for (int i = 0; i < 500; i++) {
		cr_assert_eq(
		    shardmap__btree_put(&tx, &work, rand_key(&s), value_of(serial++), NULL), 0);
		shardmap__btree_del(&tx, &work, r.k[rng_next(&s) % r.n], NULL);
	}
	cr_assert_gt(shardmap__mem_live(), live);
	shardmap__txn_abort(&tx);
	cr_assert_eq(shardmap__mem_live(), live);
	check_tree(&t, &r, &s, 100);

	/* Commit: the new tree has the changes, the old root still answers as before. */
	struct ref nr;
	ref_copy(&nr, &r);
	work = t;
	shardmap__txn_init(&tx, &f.mem);
	for (int i = 0; i < 1500; i++) {
		shardmap_hash k = nr.k[rng_next(&s) % nr.n];
		cr_assert_eq(shardmap__btree_del(&tx, &work, k, NULL), 0);
		ref_del(&nr, k);
	}
	struct shardmap__ptrvec retired;
	shardmap__txn_commit(&tx, &retired);
	cr_assert_gt(retired.n, 0);
	check_tree(&t, &r, &s, 100);
	check_tree(&work, &nr, &s, 100);
	cr_assert_lt(work.height, t.height + 1);
	shardmap__ptrvec_free_all(&f.mem, &retired);
	check_tree(&work, &nr, &s, 100);
	fx_fini(&f, &work);
	ref_free(&r);
	ref_free(&nr);
}

/* Run op under injected failure of its 1st, 2nd, ... allocation until it succeeds. Each
 * failure must return ENOMEM and leave the tree as it was; abort must free everything. When
 * prelim is set, a first op in the same transaction makes part of the tree owned. */
static void oom_op(struct fixture *f, struct shardmap__btree *committed, struct ref *ref,
		   shardmap_hash k, int is_put, int prelim, uint64_t *s, uint64_t *serial)
{
	for (long n = 1;; n++) {
		cr_assert_lt(n, 100, "an op needs fewer than 100 allocations");
		long live = shardmap__mem_live();
		struct shardmap__btree work = *committed;
		struct ref wref;
		ref_copy(&wref, ref);
		struct shardmap__txn tx;
		shardmap__txn_init(&tx, &f->mem);
		if (prelim) {
			shardmap_hash pk = rand_key(s);
			const void *v = value_of((*serial)++);
			cr_assert_eq(shardmap__btree_put(&tx, &work, pk, v, NULL), 0);
			ref_put(&wref, pk, v);
		}
		struct shardmap__btree before = work;
		const void *v = value_of((*serial)++), *old = NULL;
		shardmap__mem_fail_after(n);
		int rc = is_put ? shardmap__btree_put(&tx, &work, k, v, &old)
				: shardmap__btree_del(&tx, &work, k, &old);
		shardmap__mem_fail_after(0);
		if (rc == 0) {
			const void *want = is_put ? ref_put(&wref, k, v) : ref_del(&wref, k);
			cr_assert_eq(old, want);
			commit_and_reclaim(f, &tx);
			*committed = work;
			ref_free(ref);
			*ref = wref;
			cr_assert_eq(shardmap__btree_check(committed), 0);
			return;
		}
		cr_assert_eq(rc, SHARDMAP_ENOMEM);
		cr_assert(memcmp(&before, &work, sizeof work) == 0, "failed op changed the tree");
		if (n % 4 == 1 || work.count < 64)
			check_tree(&work, &wref, s, 0);
		shardmap__txn_abort(&tx);
		cr_assert_eq(shardmap__mem_live(), live, "abort after ENOMEM leaks");
		if (n % 4 == 1 || committed->count < 64)
			check_tree(committed, ref, s, 0);
		ref_free(&wref);
	}
}

Test(btree, oom_injection_put_then_del)
{
	struct fixture f;
	fx_init(&f);
	struct shardmap__btree t = {0};
	struct ref r = {0};
	uint64_t s = 4242, serial = 0;
	/* Puts from empty to ~700 keys (heights 1 to 3, root splits included), some of them
	 * replacing, half after a first op in the same transaction. */
	for (int i = 0; i < 700; i++) {
		shardmap_hash k = i % 10 == 9 && r.n ? r.k[rng_next(&s) % r.n] : rand_key(&s);
		oom_op(&f, &t, &r, k, 1, i % 2, &s, &serial);
	}
	cr_assert_geq(t.height, 3);
	/* Deletes down to empty: borrows, merges, the root shrinking away; some after a first
	 * op in the same transaction. */
	for (int i = 0; r.n > 0; i++) {
		shardmap_hash k = r.k[rng_next(&s) % r.n];
		oom_op(&f, &t, &r, k, 0, i % 3 == 0 && r.n > 100, &s, &serial);
	}
	cr_assert_eq(t.height, 0);
	fx_fini(&f, &t);
	ref_free(&r);
}

/* Trees built in start order end in short right-edge nodes (down to a chain of single-child
 * nodes above a one-key leaf); removing keys from either end empties and merges them. */
Test(btree, right_edge_after_ascending_build)
{
	static const size_t sizes[] = {16, 17, 18, 256, 257, 272, 4096, 4097, 4113};
	for (size_t z = 0; z < sizeof sizes / sizeof sizes[0]; z++) {
		for (int from_top = 0; from_top < 2; from_top++) {
			struct fixture f;
			fx_init(&f);
			struct shardmap__btree t = {0};
			struct ref r = {0};
			uint64_t s = 21, serial = 0;
			size_t n = sizes[z];
			shardmap_hash *keys = malloc(n * sizeof *keys);
			cr_assert(keys);
			for (size_t i = 0; i < n; i++)
				keys[i] = (shardmap_hash){i << 8, i};
			build(&f, &t, &r, keys, n, &serial);
			unsigned h = 1;
			for (size_t cap = 16; cap < n; cap *= 16)
				h++;
			cr_assert_eq(t.height, h, "%zu keys in start order: height %u, want %u", n,
				     t.height, h);
			check_tree(&t, &r, &s, 50);
			for (size_t i = 0; i < n; i++) {
				shardmap_hash k = from_top ? keys[n - 1 - i] : keys[i];
				struct shardmap__txn tx;
				shardmap__txn_init(&tx, &f.mem);
				cr_assert_eq(shardmap__btree_del(&tx, &t, k, NULL), 0);
				commit_and_reclaim(&f, &tx);
				ref_del(&r, k);
				int rc = shardmap__btree_check(&t);
				cr_assert_eq(rc, 0, "n=%zu del %zu: btree.c:%d", n, i, rc);
				if (i % 97 == 0 || r.n < 40)
					check_tree(&t, &r, &s, 5);
			}
			cr_assert_eq(t.height, 0);
			free(keys);
			fx_fini(&f, &t);
			ref_free(&r);
		}
	}
}

Test(btree, oom_injection_on_the_right_edge)
{
	struct fixture f;
	fx_init(&f);
	struct shardmap__btree t = {0};
	struct ref r = {0};
	uint64_t s = 31, serial = 0;
	shardmap_hash keys[300];
	for (int i = 0; i < 300; i++)
		keys[i] = (shardmap_hash){(uint64_t)i << 40, 0};
	build(&f, &t, &r, keys, 273, &serial); /* 256 + 16 + 1: a chain ends the right edge */
	for (int i = 273; i < 300; i++)	       /* appends, some splitting at the right edge */
		oom_op(&f, &t, &r, keys[i], 1, 0, &s, &serial);
	while (r.n > 0) /* remove the largest, then sometimes the smallest */
		oom_op(&f, &t, &r, r.k[r.n % 5 == 0 ? 0 : r.n - 1], 0, 0, &s, &serial);
	cr_assert_eq(t.height, 0);
	fx_fini(&f, &t);
	ref_free(&r);
}

Test(btree, equal_hi_words_differ_in_lo)
{
	struct fixture f;
	fx_init(&f);
	struct shardmap__btree t = {0};
	struct ref r = {0};
	uint64_t s = 7, serial = 0;
	/* 600 keys on only three hi words, so whole nodes tie on hi. */
	static const uint64_t his[] = {0x1234, 0x8000000000000000ull, UINT64_MAX};
	shardmap_hash keys[600];
	for (int i = 0; i < 600; i++)
		keys[i] = (shardmap_hash){his[i % 3], rng_next(&s) | 1};
	build(&f, &t, &r, keys, 600, &serial);
	check_tree(&t, &r, &s, 200);
	for (int i = 0; i < 3000; i++) {
		shardmap_hash h = {his[i % 3], rng_next(&s)};
		check_probe(&t, &r, h);
		h.lo = i % 2 ? 0 : UINT64_MAX;
		check_probe(&t, &r, h);
		h.hi += 1;
		check_probe(&t, &r, h);
	}
	fx_fini(&f, &t);
	ref_free(&r);
}

Test(btree, extreme_keys)
{
	struct fixture f;
	fx_init(&f);
	struct shardmap__btree t = {0};
	struct ref r = {0};
	uint64_t s = 3, serial = 0;
	shardmap_hash keys[] = {hash_max,	 {0, 0}, {UINT64_MAX, 0},
				{0, UINT64_MAX}, {0, 1}, {UINT64_MAX, UINT64_MAX - 1},
				{1, 0}};
	build(&f, &t, &r, keys, 2, &serial); /* only 0 and 2^128-1 */
	check_tree(&t, &r, &s, 50);
	cr_assert_eq(shardmap__btree_find(&t, hash_max), r.v[1]);
	cr_assert_eq(shardmap__btree_find(&t, hplus(hash_max, -1)), r.v[0]);
	build(&f, &t, &r, keys + 2, 5, &serial);
	/* A partition of the whole space by many shards, as a stream has. */
	shardmap_hash more[400];
	for (int i = 0; i < 400; i++)
		more[i] = (shardmap_hash){(uint64_t)i * (UINT64_MAX / 400), 0};
	more[0] = (shardmap_hash){0, 2};
	build(&f, &t, &r, more, 400, &serial);
	check_tree(&t, &r, &s, 500);
	fx_fini(&f, &t);
	ref_free(&r);
}

static void grow_and_shrink(size_t n, int order)
{
	struct fixture f;
	fx_init(&f);
	struct shardmap__btree t = {0};
	struct ref r = {0};
	uint64_t s = 11 + (uint64_t)order, serial = 0;
	shardmap_hash *keys = malloc(n * sizeof *keys);
	cr_assert(keys);
	for (size_t i = 0; i < n; i++) {
		uint64_t x = order == 0 ? i : order == 1 ? n - i : rng_next(&s);
		keys[i] =
		    order == 2 ? (shardmap_hash){x, rng_next(&s)} : (shardmap_hash){x << 20, 0};
	}
	/* One txn per 1000 keys. */
	for (size_t done = 0; done < n; done += 1000) {
		size_t m = n - done < 1000 ? n - done : 1000;
		build(&f, &t, &r, keys + done, m, &serial);
		cr_assert_eq(shardmap__btree_check(&t), 0);
	}
	check_tree(&t, &r, &s, 200);
	/* Ascending inserts fill nodes: h levels hold 16^h entries. */
	if (order == 0) {
		size_t cap = 16;
		unsigned h = 1;
		while (cap < n)
			cap *= 16, h++;
		cr_assert_leq(t.height, h, "ascending build has height %u, want <= %u", t.height,
			      h);
	}
	unsigned max_height = t.height;
	cr_assert_geq(max_height, 4);
	/* Delete everything, in random order, a txn per 500 keys; the height comes down. */
	for (size_t i = n; i > 1; i--) {
		size_t j = rng_next(&s) % i;
		shardmap_hash tmp = keys[i - 1];
		keys[i - 1] = keys[j];
		keys[j] = tmp;
	}
	struct shardmap__txn tx;
	for (size_t i = 0; i < n; i++) {
		if (i % 500 == 0)
			shardmap__txn_init(&tx, &f.mem);
		cr_assert_eq(shardmap__btree_del(&tx, &t, keys[i], NULL), 0);
		ref_del(&r, keys[i]);
		if (i % 500 == 499 || i == n - 1) {
			commit_and_reclaim(&f, &tx);
			cr_assert_eq(shardmap__btree_check(&t), 0);
			if (r.n < 100)
				check_tree(&t, &r, &s, 10);
		}
	}
	cr_assert_eq(t.height, 0);
	cr_assert_eq(t.count, 0);
	free(keys);
	fx_fini(&f, &t);
	ref_free(&r);
}

Test(btree, height_grows_and_shrinks_ascending)
{
	grow_and_shrink(60000, 0);
}

Test(btree, height_grows_and_shrinks_descending)
{
	grow_and_shrink(30000, 1);
}

Test(btree, height_grows_and_shrinks_random)
{
	grow_and_shrink(30000, 2);
}

Test(btree, foreach_stops_and_returns_value)
{
	struct fixture f;
	fx_init(&f);
	struct shardmap__btree t = {0};
	struct ref r = {0};
	uint64_t s = 5, serial = 0;
	shardmap_hash keys[50];
	for (int i = 0; i < 50; i++)
		keys[i] = rand_key(&s);
	build(&f, &t, &r, keys, 50, &serial);
	int calls = 0;
	cr_assert_eq(shardmap__btree_foreach(&t, stop_fn, &calls), 77);
	cr_assert_eq(calls, 3);
	fx_fini(&f, &t);
	ref_free(&r);
}

Test(btree, scalar_and_simd_agree_on_random_hashes)
{
	struct fixture f;
	fx_init(&f);
	struct shardmap__btree t = {0};
	struct ref r = {0};
	uint64_t s = 77, serial = 0;
	shardmap_hash *keys = malloc(20000 * sizeof *keys);
	cr_assert(keys);
	for (int i = 0; i < 20000; i++)
		keys[i] = (shardmap_hash){rng_next(&s), rng_next(&s)};
	build(&f, &t, &r, keys, 20000, &serial);
	for (int i = 0; i < 100000; i++)
		check_probe(&t, &r, (shardmap_hash){rng_next(&s), rng_next(&s)});
	free(keys);
	fx_fini(&f, &t);
	ref_free(&r);
}

/* ------------------------------------------------------------------ bulk builds */

/* n sorted random starts (ties on the hi word included) as build items; the reference
 * holds the same. */
static int cmp_item(const void *a, const void *b)
{
	return cmp(((const struct shardmap__btree_item *)a)->start,
		   ((const struct shardmap__btree_item *)b)->start);
}

static struct shardmap__btree_item *sorted_items(size_t n, uint64_t *s, uint64_t *serial,
						 struct ref *r)
{
	struct shardmap__btree_item *items = malloc((n ? n : 1) * sizeof *items);
	cr_assert(items);
	size_t k = 0;
	while (k < n) { /* random keys, sorted, duplicates dropped, until there are n */
		while (k < n)
			items[k++].start = rand_key(s);
		qsort(items, k, sizeof *items, cmp_item);
		size_t u = 0;
		for (size_t i = 0; i < k; i++)
			if (u == 0 || !eq(items[u - 1].start, items[i].start))
				items[u++] = items[i];
		k = u;
	}
	r->n = r->cap = n;
	r->k = malloc((n ? n : 1) * sizeof *r->k);
	r->v = malloc((n ? n : 1) * sizeof *r->v);
	cr_assert(r->k && r->v);
	for (size_t i = 0; i < n; i++) {
		items[i].value = value_of((*serial)++);
		r->k[i] = items[i].start;
		r->v[i] = items[i].value;
	}
	return items;
}

/* A bulk build has the shape of in-order inserts (full nodes but the right edge), answers
 * every query like the reference, and then takes ordinary puts and deletes down to empty. */
Test(btree, bulk_build_matches_in_order_inserts)
{
	static const size_t sizes[] = {0,   1,	 2,   15,   16,	  17,	255,
				       256, 257, 272, 4096, 4097, 4113, 70000};
	for (size_t z = 0; z < sizeof sizes / sizeof sizes[0]; z++) {
		struct fixture f;
		fx_init(&f);
		struct shardmap__btree bulk = {0}, inorder = {0};
		struct ref r = {0}, r2 = {0};
		uint64_t s = 40 + z, serial = 0;
		size_t n = sizes[z];
		struct shardmap__btree_item *items = sorted_items(n, &s, &serial, &r);
		struct shardmap__txn tx;
		shardmap__txn_init(&tx, &f.mem);
		long allocs = shardmap__mem_allocs();
		cr_assert_eq(shardmap__btree_build(&tx, &bulk, items, n), 0);
		allocs = shardmap__mem_allocs() - allocs;
		cr_assert_eq(tx.retired.n, 0, "a build retires nothing");
		commit_and_reclaim(&f, &tx);
		shardmap_hash *keys = malloc((n ? n : 1) * sizeof *keys);
		cr_assert(keys);
		for (size_t i = 0; i < n; i++)
			keys[i] = items[i].start;
		build(&f, &inorder, &r2, keys, n, &serial);
		cr_assert_eq(bulk.height, inorder.height, "n=%zu: height %u, in order %u", n,
			     bulk.height, inorder.height);
		size_t nodes = 0;
		for (size_t w = n; w > 0; w = w > 1 ? (w + 15) / 16 : 0)
			nodes += (w + 15) / 16;
		/* one allocation per node, plus the level list and the created list's growth */
		cr_assert_leq((size_t)allocs, nodes + 24, "n=%zu: %ld allocations, %zu nodes", n,
			      allocs, nodes);
		check_tree(&bulk, &r, &s, 20);
		/* Ordinary changes on top of the built tree: random puts, then deletes. */
		shardmap__txn_init(&tx, &f.mem);
		for (int i = 0; i < 200; i++) {
			shardmap_hash k = rand_key(&s);
			const void *v = value_of(serial++), *old = (const void *)1;
			cr_assert_eq(shardmap__btree_put(&tx, &bulk, k, v, &old), 0);
			cr_assert_eq(old, ref_put(&r, k, v));
		}
		commit_and_reclaim(&f, &tx);
		check_tree(&bulk, &r, &s, 20);
		/* Deletes down to empty (the big tree: a few hundred, then its check). */
		size_t stop = n > 5000 ? r.n - 500 : 0;
		while (r.n > stop) {
			shardmap_hash k = r.k[rng_next(&s) % r.n];
			shardmap__txn_init(&tx, &f.mem);
			cr_assert_eq(shardmap__btree_del(&tx, &bulk, k, NULL), 0);
			commit_and_reclaim(&f, &tx);
			ref_del(&r, k);
			int rc = r.n % 37 == 0 || r.n < 300 ? shardmap__btree_check(&bulk) : 0;
			cr_assert_eq(rc, 0, "n=%zu: btree.c:%d after a delete", n, rc);
			if (r.n % 1009 == 0 || r.n < 20)
				check_tree(&bulk, &r, &s, 3);
		}
		if (stop == 0)
			cr_assert_eq(bulk.height, 0);
		else
			check_tree(&bulk, &r, &s, 3);
		free(keys);
		free(items);
		shardmap__btree_free_nodes(&f.mem, &inorder);
		fx_fini(&f, &bulk);
		ref_free(&r);
		ref_free(&r2);
	}
}

Test(btree, bulk_build_refuses_bad_input)
{
	struct fixture f;
	fx_init(&f);
	struct shardmap__btree t = {0};
	struct shardmap__txn tx;
	shardmap__txn_init(&tx, &f.mem);
	struct shardmap__btree_item unsorted[3] = {
	    {{0, 5}, value_of(1)}, {{0, 9}, value_of(2)}, {{0, 7}, value_of(3)}};
	struct shardmap__btree_item dup[2] = {{{3, 0}, value_of(1)}, {{3, 0}, value_of(2)}};
	long live = shardmap__mem_live();
	cr_assert_eq(shardmap__btree_build(&tx, &t, unsorted, 3), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap__btree_build(&tx, &t, dup, 2), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap__btree_build(&tx, &t, NULL, 2), SHARDMAP_EINVAL);
	cr_assert(t.root == NULL && t.count == 0 && t.height == 0);
	cr_assert_eq(shardmap__mem_live(), live, "a refused build allocates nothing");
	cr_assert_eq(shardmap__btree_put(&tx, &t, (shardmap_hash){1, 1}, value_of(4), NULL), 0);
	struct shardmap__btree before = t;
	cr_assert_eq(shardmap__btree_build(&tx, &t, dup, 1), SHARDMAP_EINVAL, "not empty");
	cr_assert(memcmp(&before, &t, sizeof t) == 0);
	commit_and_reclaim(&f, &tx);
	fx_fini(&f, &t);
}

/* Every allocation of a build fails in turn: ENOMEM, the tree stays empty, abort frees
 * what the build made. */
Test(btree, bulk_build_out_of_memory)
{
	struct fixture f;
	fx_init(&f);
	struct shardmap__btree t = {0};
	struct ref r = {0};
	uint64_t s = 99, serial = 0;
	struct shardmap__btree_item *items = sorted_items(4113, &s, &serial, &r);
	long k;
	for (k = 1;; k++) {
		cr_assert_lt(k, 1000, "the build never succeeded");
		long live = shardmap__mem_live();
		struct shardmap__txn tx;
		shardmap__txn_init(&tx, &f.mem);
		shardmap__mem_fail_after(k);
		int rc = shardmap__btree_build(&tx, &t, items, 4113);
		shardmap__mem_fail_after(0);
		if (rc == 0) {
			commit_and_reclaim(&f, &tx);
			break;
		}
		cr_assert_eq(rc, SHARDMAP_ENOMEM, "k=%ld", k);
		cr_assert(t.root == NULL && t.count == 0 && t.height == 0, "k=%ld: tree changed",
			  k);
		shardmap__txn_abort(&tx);
		cr_assert_eq(shardmap__mem_live(), live, "k=%ld: abort after ENOMEM leaks", k);
	}
	cr_assert_gt(k, 250, "every node is an allocation point");
	check_tree(&t, &r, &s, 20);
	free(items);
	fx_fini(&f, &t);
	ref_free(&r);
}

/* n evenly spaced keys (the shape of a stream Kinesis splits evenly), in a committed tree. */
static void build_even(struct fixture *f, struct shardmap__btree *t, struct ref *r, size_t n,
		       uint64_t *serial)
{
	shardmap_hash *keys = malloc(n * sizeof *keys);
	cr_assert_not_null(keys);
	for (size_t i = 0; i < n; i++)
		keys[i] = (shardmap_hash){(UINT64_MAX / n + 1) * i, 0}; /* exact for n = 2^k */
	build(f, t, r, keys, n, serial);
	free(keys);
}

/* Seal a tree of n evenly spaced keys: it gets no jump table. Returns the tree's height. */
static unsigned seal_makes_nothing(struct fixture *f, size_t n, uint64_t *serial)
{
	struct shardmap__btree t = {0};
	struct ref r = {0};
	struct shardmap__txn tx;
	build_even(f, &t, &r, n, serial);
	shardmap__txn_init(&tx, &f->mem);
	cr_assert_eq(shardmap__btree_seal(&tx, &t), 0);
	cr_assert_null(t.jump);
	shardmap__txn_abort(&tx);
	unsigned height = t.height;
	shardmap__btree_free_nodes(&f->mem, &t);
	ref_free(&r);
	return height;
}

Test(btree, jump_table_follows_the_tree)
{
	struct fixture f;
	fx_init(&f);
	struct shardmap__btree t = {0};
	struct ref r = {0};
	uint64_t s = 77, serial = 0;
	struct shardmap__txn tx;

	/* Two levels, and past SHARDMAP__BTREE_JUMP_MAX_COUNT values: sealing makes nothing. */
	cr_assert_eq(seal_makes_nothing(&f, 200, &serial), 2);
	seal_makes_nothing(&f, 2 * SHARDMAP__BTREE_JUMP_MAX_COUNT, &serial);

	/* Three levels of evenly spaced keys: 2^10 entries, each a leaf. */
	build_even(&f, &t, &r, 1024, &serial);
	cr_assert_eq(t.height, 3);
	long live = shardmap__mem_live();
	shardmap__txn_init(&tx, &f.mem);
	shardmap__mem_fail_after(1);
	cr_assert_eq(shardmap__btree_seal(&tx, &t), SHARDMAP_ENOMEM);
	shardmap__mem_fail_after(0);
	cr_assert_null(t.jump, "a failed seal leaves the tree as it was");
	shardmap__txn_abort(&tx);
	cr_assert_eq(shardmap__mem_live(), live);
	shardmap__txn_init(&tx, &f.mem);
	cr_assert_eq(shardmap__btree_seal(&tx, &t), 0);
	commit_and_reclaim(&f, &tx);
	cr_assert_not_null(t.jump);
	cr_assert_eq(t.jump_shift, 64 - 10);
	for (size_t e = 0; e < 1024; e++)
		cr_assert_eq(t.jump[e] & 63, 1, "entry %zu is a leaf", e);
	check_tree(&t, &r, &s, 200);

	/* The checker catches a table that no longer matches. */
	uintptr_t *jump = (uintptr_t *)t.jump, saved = jump[7];
	jump[7] = jump[200];
	cr_assert_neq(shardmap__btree_check(&t), 0);
	jump[7] = saved;
	cr_assert_eq(shardmap__btree_check(&t), 0);

	/* A put that fails keeps the table; one that succeeds drops it (retired: the committed
	 * tree still answers through it until the retired list is freed). */
	struct shardmap__btree work;
	shardmap_hash k = {UINT64_MAX / 3, 12345};
	for (long n = 1;; n++) {
		work = t;
		shardmap__txn_init(&tx, &f.mem);
		shardmap__mem_fail_after(n);
		int rc = shardmap__btree_put(&tx, &work, k, value_of(serial), NULL);
		shardmap__mem_fail_after(0);
		if (rc == 0)
			break;
		cr_assert_eq(rc, SHARDMAP_ENOMEM);
		cr_assert_eq(work.jump, t.jump);
		shardmap__txn_abort(&tx);
	}
	cr_assert_null(work.jump);
	struct ref wref;
	ref_copy(&wref, &r);
	ref_put(&wref, k, value_of(serial++));
	check_tree(&work, &wref, &s, 50);
	cr_assert_eq(shardmap__btree_seal(&tx, &work), 0);
	check_tree(&work, &wref, &s, 50);
	struct shardmap__ptrvec retired;
	shardmap__txn_commit(&tx, &retired);
	check_tree(&t, &r, &s, 50);
	shardmap__ptrvec_free_all(&f.mem, &retired);

	/* Deleting keys of one leaf until it merges: the table follows again. */
	shardmap__txn_init(&tx, &f.mem);
	for (int i = 0; i < 12; i++) {
		shardmap_hash d = wref.k[100 + i];
		ref_del(&wref, d);
		cr_assert_eq(shardmap__btree_del(&tx, &work, d, NULL), 0);
		cr_assert_null(work.jump);
	}
	cr_assert_eq(shardmap__btree_seal(&tx, &work), 0);
	commit_and_reclaim(&f, &tx);
	check_tree(&work, &wref, &s, 50);
	fx_fini(&f, &work);
	ref_free(&r);
	ref_free(&wref);
}
