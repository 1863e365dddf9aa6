/*
 * test_hamt.c - the persistent HAMT (lib/hamt.c) against a plain array.
 *
 * Random batches of puts and deletes, committed or aborted, under four hash functions: the
 * real XXH3-64, one with only 8 significant bits (many fully equal hashes), one whose low 54
 * bits are zero (deep chains of single-child nodes) and a constant (one big collision node).
 * After each batch: every get, foreach, count and the trie's own invariant checker. Also
 * persistence of the old root after commit, allocation accounting, out-of-memory injection at
 * every allocation of put and del, and hand-made collision cases.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hamt.h"
#include "mem.h"
#include "shardmap.h"
#include "txn.h"

#define POOL	3000
#define KEY_LEN 40

static char pool[POOL][KEY_LEN];

static void pool_init(void)
{
	for (int i = 0; i < POOL; i++) {
		int len = i % 7 == 0 ? 0 : i % 7; /* keys of many lengths, "" included */
		if (i == 0) {
			pool[i][0] = '\0';
			continue;
		}
		snprintf(pool[i], KEY_LEN, "k%d-%.*s", i, len * 4, "xyzzyxyzzyxyzzyxyzzyxyzzyxyz");
	}
}

enum hash_mode { HASH_REAL, HASH_8BIT, HASH_DEEP, HASH_CONST };

static uint64_t hash_8bit(const char *key)
{
	return shardmap__hamt_hash(key) & 0xff;
}

static uint64_t hash_deep(const char *key)
{
	return shardmap__hamt_hash(key) << 54;
}

static uint64_t hash_const(const char *key)
{
	(void)key;
	return 0x5555555555555555ull;
}

/* The trie's hash function for a mode (NULL: the default, XXH3-64). */
static uint64_t (*const mode_fn[])(const char *) = {NULL, hash_8bit, hash_deep, hash_const};

static uint64_t key_hash(enum hash_mode mode, const char *key)
{
	return mode_fn[mode] ? mode_fn[mode](key) : shardmap__hamt_hash(key);
}

/* An empty trie hashing keys as mode says. */
static struct shardmap__hamt empty_trie(enum hash_mode mode)
{
	struct shardmap__hamt h = {0};
	h.hash = mode_fn[mode];
	return h;
}

static uint64_t rng_next(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static const void *value_of(uint64_t serial)
{
	return (const void *)(uintptr_t)(16 * serial + 16);
}

/* The reference: the value of each pool key, NULL when absent. */
struct ref {
	const void *v[POOL];
	size_t n;
};

struct walk {
	const struct ref *r;
	unsigned char seen[POOL];
	int bad;
	size_t calls;
};

static int walk_fn(void *ctx, const char *key, const void *value)
{
	struct walk *w = ctx;
	ptrdiff_t off = key - &pool[0][0];
	size_t i = (size_t)off / KEY_LEN;
	if (off < 0 || off % KEY_LEN != 0 || i >= POOL || w->seen[i] || w->r->v[i] != value)
		w->bad = 1;
	else
		w->seen[i] = 1;
	w->calls++;
	return 0;
}

static void check_trie(const struct shardmap__hamt *h, const struct ref *r, enum hash_mode mode)
{
	int rc = shardmap__hamt_check(h);
	cr_assert_eq(rc, 0, "invariant broken at hamt.c:%d", rc);
	cr_assert_eq(h->count, r->n);
	for (int i = 0; i < POOL; i++)
		cr_assert_eq(shardmap__hamt_get(h, key_hash(mode, pool[i]), pool[i]), r->v[i],
			     "get %s", pool[i]);
	/* A key not in the pool, with an existing key's hash, is absent. */
	cr_assert_null(shardmap__hamt_get(h, key_hash(mode, pool[1]), "not-a-key"));
	static struct walk w;
	memset(&w, 0, sizeof w);
	w.r = r;
	cr_assert_eq(shardmap__hamt_foreach(h, walk_fn, &w), 0);
	cr_assert(!w.bad && w.calls == r->n, "foreach disagrees");
}

struct fixture {
	struct shardmap__mem mem;
	long live0;
};

static void fx_init(struct fixture *f)
{
	pool_init();
	cr_assert_eq(shardmap__mem_init(&f->mem, 1), 0);
	f->live0 = shardmap__mem_live();
}

static void fx_fini(struct fixture *f, struct shardmap__hamt *h)
{
	shardmap__hamt_free_nodes(&f->mem, h);
	cr_assert_null(h->root);
	cr_assert_eq(shardmap__mem_live(), f->live0, "leaked %ld allocations",
		     shardmap__mem_live() - f->live0);
	shardmap__mem_fini(&f->mem);
}

static void commit_and_reclaim(struct fixture *f, struct shardmap__txn *tx)
{
	struct shardmap__ptrvec retired;
	shardmap__txn_commit(tx, &retired);
	shardmap__ptrvec_free_all(&f->mem, &retired);
}

/* One random put or delete on both the trie and the reference. */
static void random_op(struct shardmap__txn *tx, struct shardmap__hamt *h, struct ref *r,
		      enum hash_mode mode, unsigned put_pct, uint64_t *s, uint64_t *serial)
{
	uint64_t x = rng_next(s);
	int i = (int)((x >> 16) % POOL);
	uint64_t hash = key_hash(mode, pool[i]);
	const void *old = (const void *)1;
	if (x % 100 < put_pct) {
		const void *v = value_of((*serial)++);
		cr_assert_eq(shardmap__hamt_put(tx, h, hash, pool[i], v, &old), 0);
		cr_assert_eq(old, r->v[i]);
		r->n += r->v[i] == NULL;
		r->v[i] = v;
	} else {
		int rc = shardmap__hamt_del(tx, h, hash, pool[i], &old);
		cr_assert_eq(rc, r->v[i] ? 0 : SHARDMAP_ENOENT);
		if (rc == 0) {
			cr_assert_eq(old, r->v[i]);
			r->v[i] = NULL;
			r->n--;
		}
	}
}

static void random_batches(enum hash_mode mode, int batches)
{
	struct fixture f;
	fx_init(&f);
	struct shardmap__hamt committed = empty_trie(mode);
	static struct ref ref, wref;
	memset(&ref, 0, sizeof ref);
	uint64_t s = 1000 + (uint64_t)mode, serial = 0;
	int commits = 0, aborts = 0;
	for (int b = 0; b < batches; b++) {
		struct shardmap__hamt work = committed;
		wref = ref;
		struct shardmap__txn tx;
		shardmap__txn_init(&tx, &f.mem);
		long live = shardmap__mem_live();
		int ops = 1 + (int)(rng_next(&s) % 300);
		unsigned put_pct = b % 10 == 9 ? 15 : wref.n < POOL / 2 ? 70 : 45;
		for (int i = 0; i < ops; i++)
			random_op(&tx, &work, &wref, mode, put_pct, &s, &serial);
		check_trie(&work, &wref, mode);
		if (rng_next(&s) % 4 != 0) {
			struct shardmap__ptrvec retired;
			shardmap__txn_commit(&tx, &retired);
			check_trie(&committed, &ref, mode); /* the old root, until reclaimed */
			shardmap__ptrvec_free_all(&f.mem, &retired);
			committed = work;
			ref = wref;
			commits++;
		} else {
			shardmap__txn_abort(&tx);
			cr_assert_eq(shardmap__mem_live(), live,
				     "abort frees what the txn created");
			check_trie(&committed, &ref, mode);
			aborts++;
		}
	}
	cr_assert(commits > batches / 2 && aborts > batches / 8);
	fx_fini(&f, &committed);
}

/* One timeout for every test: Criterion 2.4.1 leaks in its runner (LeakSanitizer fails the
 * ASan build) when tests with different timeouts run in parallel. */
TestSuite(hamt, .timeout = 300);

Test(hamt, random_batches_real_hash)
{
	random_batches(HASH_REAL, 150);
}

Test(hamt, random_batches_8bit_hash_collisions)
{
	random_batches(HASH_8BIT, 100);
}

Test(hamt, random_batches_deep_trees)
{
	random_batches(HASH_DEEP, 100);
}

Test(hamt, random_batches_one_collision_node)
{
	random_batches(HASH_CONST, 30);
}

#define FORCED_H 0x0123456789abcdefull
/* Same low 60 bits as FORCED_H, different top nibble: shares every level down to the last. */
#define FORCED_H2 (FORCED_H ^ 0xf000000000000000ull)

/* "a", "b" and "c" share one hash; "d" shares all but its top four bits. */
static uint64_t forced_hash(const char *key)
{
	return strcmp(key, "d") == 0 ? FORCED_H2 : FORCED_H;
}

Test(hamt, forced_equal_hashes)
{
	struct fixture f;
	fx_init(&f);
	struct shardmap__hamt h = {0};
	h.hash = forced_hash;
	struct shardmap__txn tx;
	const uint64_t H = FORCED_H, H2 = FORCED_H2;
	const void *old;

	shardmap__txn_init(&tx, &f.mem);
	cr_assert_eq(shardmap__hamt_put(&tx, &h, H, "a", value_of(1), NULL), 0);
	cr_assert_eq(shardmap__hamt_put(&tx, &h, H, "b", value_of(2), NULL), 0);
	cr_assert_eq(shardmap__hamt_put(&tx, &h, H, "c", value_of(3), NULL), 0);
	commit_and_reclaim(&f, &tx);
	cr_assert_eq(shardmap__hamt_check(&h), 0);
	cr_assert_eq(h.count, 3);
	cr_assert_eq(shardmap__hamt_get(&h, H, "a"), value_of(1));
	cr_assert_eq(shardmap__hamt_get(&h, H, "b"), value_of(2));
	cr_assert_eq(shardmap__hamt_get(&h, H, "c"), value_of(3));
	cr_assert_null(shardmap__hamt_get(&h, H, "d"));
	cr_assert_null(shardmap__hamt_get(&h, H2, "d"), "another hash meets the collision node");
	int alone = -1;
	cr_assert_eq(shardmap__hamt_get_alone(&h, H, "b", &alone), value_of(2));
	cr_assert_eq(alone, 0, "b shares its hash with a and c");

	/* A different hash reaching the collision node pushes it down; then remove again. */
	shardmap__txn_init(&tx, &f.mem);
	cr_assert_eq(shardmap__hamt_put(&tx, &h, H2, "d", value_of(4), NULL), 0);
	cr_assert_eq(shardmap__hamt_check(&h), 0);
	cr_assert_eq(shardmap__hamt_put(&tx, &h, H, "b", value_of(5), &old), 0);
	cr_assert_eq(old, value_of(2));
	cr_assert_eq(shardmap__hamt_get(&h, H2, "d"), value_of(4));
	cr_assert_eq(shardmap__hamt_get(&h, H, "b"), value_of(5));
	cr_assert_eq(shardmap__hamt_get_alone(&h, H2, "d", &alone), value_of(4));
	cr_assert_eq(alone, 1, "d's hash differs from every other key's");
	cr_assert_eq(shardmap__hamt_del(&tx, &h, H, "d", NULL), SHARDMAP_ENOENT);
	cr_assert_eq(shardmap__hamt_del(&tx, &h, H2, "a", NULL), SHARDMAP_ENOENT);
	cr_assert_eq(shardmap__hamt_del(&tx, &h, H, "a", &old), 0);
	cr_assert_eq(old, value_of(1));
	cr_assert_eq(shardmap__hamt_del(&tx, &h, H, "c", &old), 0);
	cr_assert_eq(shardmap__hamt_check(&h), 0, "lone collision entry pulled up");
	cr_assert_eq(shardmap__hamt_del(&tx, &h, H2, "d", &old), 0);
	cr_assert_eq(old, value_of(4));
	cr_assert_eq(shardmap__hamt_check(&h), 0, "deep chain collapses");
	cr_assert_eq(h.count, 1);
	cr_assert_eq(shardmap__hamt_get(&h, H, "b"), value_of(5));
	cr_assert_eq(shardmap__hamt_get_alone(&h, H, "b", &alone), value_of(5));
	cr_assert_eq(alone, 1, "the last key of the collision is alone again");
	cr_assert_eq(shardmap__hamt_del(&tx, &h, H, "b", NULL), 0);
	cr_assert_null(h.root);
	cr_assert_eq(shardmap__hamt_del(&tx, &h, H, "b", NULL), SHARDMAP_ENOENT);
	commit_and_reclaim(&f, &tx);
	fx_fini(&f, &h);
}

/* Run one op under injected failure of its 1st, 2nd, ... allocation until it succeeds; each
 * failure returns ENOMEM and leaves the trie as it was, and abort frees everything. */
static void oom_op(struct fixture *f, struct shardmap__hamt *committed, struct ref *ref,
		   enum hash_mode mode, int i, int is_put, int prelim, uint64_t *s,
		   uint64_t *serial)
{
	static struct ref wref;
	for (long n = 1;; n++) {
		cr_assert_lt(n, 100);
		long live = shardmap__mem_live();
		struct shardmap__hamt work = *committed;
		wref = *ref;
		struct shardmap__txn tx;
		shardmap__txn_init(&tx, &f->mem);
		if (prelim)
			random_op(&tx, &work, &wref, mode, 60, s, serial);
		struct shardmap__hamt before = work;
		uint64_t hash = key_hash(mode, pool[i]);
		const void *v = value_of((*serial)++), *old = NULL;
		shardmap__mem_fail_after(n);
		int rc = is_put ? shardmap__hamt_put(&tx, &work, hash, pool[i], v, &old)
				: shardmap__hamt_del(&tx, &work, hash, pool[i], &old);
		shardmap__mem_fail_after(0);
		if (rc == 0 || rc == SHARDMAP_ENOENT) {
			cr_assert_eq(rc, wref.v[i] || is_put ? 0 : SHARDMAP_ENOENT);
			if (rc == 0) {
				cr_assert_eq(old, wref.v[i]);
				wref.n += is_put ? wref.v[i] == NULL : -1;
				wref.v[i] = is_put ? v : NULL;
			}
			commit_and_reclaim(f, &tx);
			*committed = work;
			*ref = wref;
			cr_assert_eq(shardmap__hamt_check(committed), 0);
			return;
		}
		cr_assert_eq(rc, SHARDMAP_ENOMEM);
		cr_assert(memcmp(&before, &work, sizeof work) == 0, "failed op changed the trie");
		if (n % 3 == 1)
			check_trie(&work, &wref, mode);
		shardmap__txn_abort(&tx);
		cr_assert_eq(shardmap__mem_live(), live, "abort after ENOMEM leaks");
		if (n % 3 == 1)
			check_trie(committed, ref, mode);
	}
}

static void oom_injection(enum hash_mode mode, int puts)
{
	struct fixture f;
	fx_init(&f);
	struct shardmap__hamt h = empty_trie(mode);
	static struct ref ref;
	memset(&ref, 0, sizeof ref);
	uint64_t s = 77 + (uint64_t)mode, serial = 0;
	for (int k = 0; k < puts; k++)
		oom_op(&f, &h, &ref, mode, (int)(rng_next(&s) % POOL), 1, k % 2, &s, &serial);
	cr_assert_gt(h.count, (size_t)puts / 2);
	for (int i = 0; i < POOL; i++)
		if (ref.v[i] != NULL)
			oom_op(&f, &h, &ref, mode, i, 0, i % 3 == 0, &s, &serial);
	while (ref.n > 0) /* what the preliminary ops put back */
		for (int i = 0; i < POOL; i++)
			if (ref.v[i] != NULL)
				oom_op(&f, &h, &ref, mode, i, 0, 0, &s, &serial);
	cr_assert_null(h.root);
	fx_fini(&f, &h);
}

Test(hamt, oom_injection_real_hash)
{
	oom_injection(HASH_REAL, 400);
}

Test(hamt, oom_injection_collisions_and_depth)
{
	oom_injection(HASH_8BIT, 250);
	oom_injection(HASH_DEEP, 250);
}

static int stop_fn(void *ctx, const char *key, const void *value)
{
	(void)key;
	(void)value;
	return ++*(int *)ctx == 5 ? -9 : 0;
}

Test(hamt, foreach_stops_and_empty_trie)
{
	struct fixture f;
	fx_init(&f);
	struct shardmap__hamt h = {0};
	int calls = 0;
	cr_assert_eq(shardmap__hamt_foreach(&h, stop_fn, &calls), 0);
	cr_assert_eq(calls, 0);
	cr_assert_null(shardmap__hamt_get(&h, 1, "x"));
	struct shardmap__txn tx;
	shardmap__txn_init(&tx, &f.mem);
	cr_assert_eq(shardmap__hamt_del(&tx, &h, 1, "x", NULL), SHARDMAP_ENOENT);
	for (int i = 0; i < 100; i++)
		cr_assert_eq(shardmap__hamt_put(&tx, &h, shardmap__hamt_hash(pool[i]), pool[i],
						value_of((uint64_t)i), NULL),
			     0);
	commit_and_reclaim(&f, &tx);
	cr_assert_eq(shardmap__hamt_foreach(&h, stop_fn, &calls), -9);
	cr_assert_eq(calls, 5);
	fx_fini(&f, &h);
}

Test(hamt, hash_is_xxh3_64_of_the_key_bytes)
{
	/* XXH3-64 reference values (xxhsum -H3 of the bytes, no newline). */
	cr_assert_eq(shardmap__hamt_hash(""), 0x2d06800538d394c2ull);
	cr_assert_eq(shardmap__hamt_hash("abc"), 0x78af5f94892f3950ull);
	cr_assert_neq(shardmap__hamt_hash("a"), shardmap__hamt_hash("b"));
}

/* ------------------------------------------------------------------ bulk builds */

/* A value of a bulk build: a record holding its key, as shard records do. */
struct rec {
	const char *key;
};

static const char *rec_key(const void *value)
{
	return ((const struct rec *)value)->key;
}

/* n random items over the pool (keys repeat), each a fresh record of recs (n of them); ref
 * gets what puts in array order would leave. */
static struct shardmap__hamt_item *random_items(enum hash_mode mode, size_t n, uint64_t *s,
						struct rec *recs, struct ref *ref)
{
	struct shardmap__hamt_item *items = calloc(n ? n : 1, sizeof *items);
	cr_assert_not_null(items);
	memset(ref, 0, sizeof *ref);
	for (size_t i = 0; i < n; i++) {
		int k = (int)(rng_next(s) % POOL);
		recs[i].key = pool[k];
		items[i] = (struct shardmap__hamt_item){key_hash(mode, pool[k]), &recs[i]};
		ref->n += ref->v[k] == NULL;
		ref->v[k] = &recs[i];
	}
	return items;
}

/* A bulk build answers like puts in array order, is canonical, copies nothing, and then
 * takes ordinary puts and deletes in the same transaction and in later ones. */
static void bulk_build(enum hash_mode mode, size_t n, uint64_t seed)
{
	struct fixture f;
	fx_init(&f);
	static struct ref ref;
	uint64_t s = seed, serial = 0;
	struct rec *recs = calloc(n ? n : 1, sizeof *recs);
	cr_assert_not_null(recs);
	struct shardmap__hamt_item *items = random_items(mode, n, &s, recs, &ref);
	struct shardmap__hamt h = empty_trie(mode);
	struct shardmap__txn tx;
	shardmap__txn_init(&tx, &f.mem);
	cr_assert_eq(shardmap__hamt_build(&tx, &h, items, n, rec_key), 0);
	free(items);
	check_trie(&h, &ref, mode);
	cr_assert_eq(tx.retired.n, 0, "a build retires nothing");
	for (int i = 0; i < 300; i++)
		random_op(&tx, &h, &ref, mode, 50, &s, &serial);
	check_trie(&h, &ref, mode);
	commit_and_reclaim(&f, &tx);
	shardmap__txn_init(&tx, &f.mem);
	for (int i = 0; i < 300; i++)
		random_op(&tx, &h, &ref, mode, 50, &s, &serial);
	check_trie(&h, &ref, mode);
	commit_and_reclaim(&f, &tx);
	fx_fini(&f, &h);
	free(recs);
}

Test(hamt, bulk_build_matches_puts_in_order)
{
	static const size_t sizes[] = {0, 1, 2, 3, 40, 700, 6000};
	for (int mode = HASH_REAL; mode <= HASH_CONST; mode++)
		for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
			if (mode != HASH_CONST || sizes[i] <= 700) /* O(n^2) checks of one list */
				bulk_build((enum hash_mode)mode, sizes[i], 31 * (uint64_t)mode + i);
}

Test(hamt, bulk_build_refuses_a_non_empty_trie)
{
	struct fixture f;
	fx_init(&f);
	struct shardmap__hamt h = {0};
	struct shardmap__txn tx;
	shardmap__txn_init(&tx, &f.mem);
	cr_assert_eq(shardmap__hamt_put(&tx, &h, shardmap__hamt_hash("a"), "a", value_of(1), NULL),
		     0);
	static struct rec b = {"b"};
	struct shardmap__hamt_item one = {shardmap__hamt_hash("b"), &b};
	struct shardmap__hamt before = h;
	cr_assert_eq(shardmap__hamt_build(&tx, &h, &one, 1, rec_key), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap__hamt_build(&tx, &h, &one, 1, NULL), SHARDMAP_EINVAL);
	cr_assert(memcmp(&before, &h, sizeof h) == 0, "a refused build changed the trie");
	commit_and_reclaim(&f, &tx);
	fx_fini(&f, &h);
}

/* Every allocation of a build fails in turn: ENOMEM, the trie stays empty, abort frees
 * everything the build made (its heap scratch included). */
Test(hamt, bulk_build_out_of_memory)
{
	for (int mode = HASH_REAL; mode <= HASH_DEEP; mode++) {
		struct fixture f;
		fx_init(&f);
		static struct ref ref;
		struct shardmap__hamt h = empty_trie((enum hash_mode)mode);
		long k;
		for (k = 1;; k++) {
			cr_assert_lt(k, 5000, "the build never succeeded");
			uint64_t s = 5 + (uint64_t)mode;
			static struct rec recs[400];
			struct shardmap__hamt_item *items =
			    random_items((enum hash_mode)mode, 400, &s, recs, &ref);
			long live = shardmap__mem_live();
			struct shardmap__txn tx;
			shardmap__txn_init(&tx, &f.mem);
			shardmap__mem_fail_after(k);
			int rc = shardmap__hamt_build(&tx, &h, items, 400, rec_key);
			shardmap__mem_fail_after(0);
			free(items);
			if (rc == 0) {
				check_trie(&h, &ref, (enum hash_mode)mode);
				commit_and_reclaim(&f, &tx);
				break;
			}
			cr_assert_eq(rc, SHARDMAP_ENOMEM, "k=%ld", k);
			cr_assert(h.root == NULL && h.count == 0,
				  "k=%ld: a failed build left nodes", k);
			shardmap__txn_abort(&tx);
			cr_assert_eq(shardmap__mem_live(), live, "k=%ld: abort after ENOMEM leaks",
				     k);
		}
		cr_assert_gt(k, 10, "the build went through its allocation points");
		fx_fini(&f, &h);
	}
}

/* Puts into nodes the transaction owns grow them in place or into nodes twice the size:
 * far fewer allocations than one node copy per put (what a published trie costs). */
Test(hamt, puts_into_owned_nodes_are_amortised)
{
	struct fixture f;
	fx_init(&f);
	struct shardmap__hamt h = {0};
	struct shardmap__txn tx;
	shardmap__txn_init(&tx, &f.mem);
	long allocs = shardmap__mem_allocs();
	for (int i = 0; i < POOL; i++)
		cr_assert_eq(shardmap__hamt_put(&tx, &h, shardmap__hamt_hash(pool[i]), pool[i],
						value_of((uint64_t)i), NULL),
			     0);
	allocs = shardmap__mem_allocs() - allocs;
	cr_assert_eq(shardmap__hamt_check(&h), 0);
	cr_assert_lt(allocs, POOL, "%ld allocations for %d puts", allocs, POOL);
	commit_and_reclaim(&f, &tx);
	fx_fini(&f, &h);
}
