/*
 * btree.c - a persistent B+-tree from 128-bit range start to shard record.
 *
 * For each stream's open shards (btree.h): shardmap__btree_find, "the greatest start <= h",
 * is the innermost loop of every lookup, so the layout serves it first. A node is 16-way and
 * 64-byte aligned; its keys are split into a hi array (one 128-byte pair of cache lines), a
 * pointer array right after it, and a lo array the common search never reads. Slot 0 of an
 * inner node holds the key 0 (it covers everything below its first separator); slot i >= 1
 * holds the exact smallest start of child i; unused slots hold 2^128-1 with a NULL pointer.
 *
 * Search in a node is branch-free: the number of keys whose hi word is below h.hi, from the
 * 16 hi words (stored sign-flipped, so signed compares order them) by four AVX2 compares
 * (chosen once, at load time, when the CPU has AVX2) or by a scalar compare-and-add loop.
 * Only when some key's hi word equals h.hi (rare for a hash; always exact) does a slow path
 * count the full 128-bit keys. Lookups are throughput-bound (a reader's consecutive lookups
 * overlap in the out-of-order window), so the node search is kept to about 20 instructions.
 * Descending, the pointer lines of the next node are prefetched together with its hi lines,
 * so a level costs one memory round trip, not two.
 *
 * Shape: a split makes halves (9 and 8), except at the right edge of the tree when the new
 * key is the largest: there the left node keeps all 16 and the new key starts a node of its
 * own, so a stream built in start order fills its nodes (65,536 starts make 4 full levels).
 * So the nodes on the right edge may be short (at least one entry); every other node holds at
 * least two, and usually half. A delete that leaves a node under half full moves entries
 * from a sibling or merges with it; a short right-edge node with no sibling stays short, or
 * goes when empty. The root shrinks away when it has one child.
 *
 * A bulk build (shardmap__btree_build) makes that same in-order shape bottom-up from sorted
 * starts: full leaves, then full inner levels over them, each node made once.
 *
 * Jump table: a sealed tree of 3 levels or more (and at most 4,096 values) carries a table
 * from the top bits of a hash to the deepest node whose range holds all the hashes with those
 * bits, and searches start there. With an entry per value, most entries name a leaf (even
 * once splits and merges have left leaves half full), so a 1,024-shard lookup does one node
 * search instead of three. Any change drops the table
 * (it names nodes the change replaces); apply seals each tree it changed when the batch is
 * done (shardmap__btree_seal rebuilds the table in one pass over the nodes).
 *
 * Changes are copy-on-write through a transaction (txn.h): the nodes of the root-to-leaf path
 * (and any sibling a delete touches) that the transaction does not own are copied and the
 * originals retired; owned nodes are changed in place. Every step that can fail (allocating,
 * retiring) is done before the first write to a node reachable from the tree, so on
 * SHARDMAP_ENOMEM the tree still holds exactly what it held (the transaction must abort: its
 * retired list may name nodes the tree still uses).
 *
 * Readers (find, get, next, prev, foreach) take no lock and write nothing. A tree is published
 * only as part of a map version, which map.c publishes with one release store and readers
 * load inside an epoch section. A published node is never written again: a writer changes in
 * place only nodes its own transaction created, which no reader can reach before the version
 * holding them is published. Replaced nodes are retired, not freed; the map frees a retired
 * list only after the grace period of the version that still used them, so no reader sees
 * freed memory.
 */
#include <stdlib.h>
#include <string.h>

#include "btree.h"
#include "shardmap.h"

#define BT_WAY	      16
#define BT_MIN	      (BT_WAY / 2)
#define BT_MAX_HEIGHT 64 /* inner nodes off the right edge have >= 2 children */

struct bt_node {
	struct shardmap__node_hdr hdr;
	uint32_t n;    /* entries (leaf) or children (inner) */
	uint32_t leaf; /* 1 for a leaf; the search uses the tree's height instead */
	_Alignas(64) int64_t hib[BT_WAY]; /* hi words with the sign bit flipped (see bias) */
	const void *ptr[BT_WAY];	  /* leaf: values; inner: children */
	uint64_t lo[BT_WAY];
};

static const shardmap_hash key_min = {0, 0};

/* Flipping the sign bit maps unsigned order onto signed order, which is what AVX2 compares
 * (and what a signed scalar compare costs the same as an unsigned one). */
static inline int64_t bias(uint64_t hi)
{
	return (int64_t)(hi ^ 0x8000000000000000ull);
}

static inline shardmap_hash node_key(const struct bt_node *nd, unsigned i)
{
	shardmap_hash k = {(uint64_t)nd->hib[i] ^ 0x8000000000000000ull, nd->lo[i]};
	return k;
}

static inline void put_key(struct bt_node *nd, unsigned i, shardmap_hash k)
{
	nd->hib[i] = bias(k.hi);
	nd->lo[i] = k.lo;
}

static inline void copy_key(struct bt_node *dst, unsigned i, const struct bt_node *src, unsigned j)
{
	dst->hib[i] = src->hib[j];
	dst->lo[i] = src->lo[j];
}

static inline int key_le(shardmap_hash a, shardmap_hash b)
{
	return a.hi < b.hi || (a.hi == b.hi && a.lo <= b.lo);
}

static inline int key_eq(shardmap_hash a, shardmap_hash b)
{
	return a.hi == b.hi && a.lo == b.lo;
}

static inline struct bt_node *child(const struct bt_node *nd, unsigned i)
{
	return (struct bt_node *)nd->ptr[i];
}

/* ------------------------------------------------------------------ searching a node */

/* The number of keys <= h among the node's n keys, comparing all 128 bits. */
static unsigned rank_exact(const struct bt_node *nd, shardmap_hash h)
{
	unsigned c = 0;
	while (c < nd->n && key_le(node_key(nd, c), h))
		c++;
	return c;
}

/* The number of keys < h (for prev). */
static unsigned rank_below(const struct bt_node *nd, shardmap_hash h)
{
	unsigned c = 0;
	while (c < nd->n && !key_le(h, node_key(nd, c)))
		c++;
	return c;
}

/* The fast rank: lt, the number of slots whose hi word is below h.hi, equals rank_exact
 * unless some key's hi word equals h.hi. The keys are sorted and the unused slots (hi =
 * 2^64-1) come last, so such a key would sit exactly at slot lt; when lt is 16 no key can tie,
 * and slot 0 (lt & 15), being below h.hi, does not pretend to. So one load decides, and only a
 * tie (rare for a hash; always exact) takes the slow path, which reads n and the lo words. */
__attribute__((always_inline)) static inline size_t
rank_finish(const struct bt_node *nd, shardmap_hash h, int64_t x, size_t lt)
{
	if (__builtin_expect(nd->hib[lt & (BT_WAY - 1)] == x, 0)) {
		/* Inlined rather than called, so the hot path needs no stack frame. */
		lt = 0;
		while (lt < nd->n && key_le(node_key(nd, lt), h))
			lt++;
	}
	return lt;
}

__attribute__((always_inline)) static inline size_t rank_scalar(const struct bt_node *nd,
								shardmap_hash h)
{
	int64_t x = bias(h.hi);
	size_t lt = 0;
	for (unsigned i = 0; i < BT_WAY; i++)
		lt += nd->hib[i] < x;
	return rank_finish(nd, h, x, lt);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define BT_HAVE_AVX2 1
/* As rank_scalar, four hi words per compare: the 16 all-ones-or-zero lanes are packed down
 * to bytes (each key becomes two) and counted. */
__attribute__((target("avx2,popcnt"), always_inline)) static inline size_t
rank_avx2(const struct bt_node *nd, shardmap_hash h)
{
	int64_t xs = bias(h.hi);
	const __m256i x = _mm256_set1_epi64x(xs);
	const __m256i *p = (const __m256i *)nd->hib;
	__m256i l0 = _mm256_cmpgt_epi64(x, _mm256_load_si256(p));
	__m256i l1 = _mm256_cmpgt_epi64(x, _mm256_load_si256(p + 1));
	__m256i l2 = _mm256_cmpgt_epi64(x, _mm256_load_si256(p + 2));
	__m256i l3 = _mm256_cmpgt_epi64(x, _mm256_load_si256(p + 3));
	__m256i b = _mm256_packs_epi16(_mm256_packs_epi32(l0, l1), _mm256_packs_epi32(l2, l3));
	size_t lt = (size_t)__builtin_popcount((unsigned)_mm256_movemask_epi8(b)) / 2;
	return rank_finish(nd, h, xs, lt);
}
#endif

/* ------------------------------------------------------------------ the jump table */

#define BT_LEVEL_MASK ((uintptr_t)63) /* a jump entry's level, below the node's alignment */

/* Where a search for h starts: the jump table's node for h's top bits and that node's level
 * (1 = leaf), or the root and the tree's height. Returns 0 for an empty tree. Plain loads, as
 * for the nodes: a published tree's table was written before the version holding it was
 * published (map.c's fence and pointer store) and is never written again. */
__attribute__((always_inline)) static inline int walk_start(const struct shardmap__btree *t,
							    shardmap_hash h,
							    const struct bt_node **nd,
							    unsigned *level)
{
	if (t->jump != NULL) {
		uintptr_t e = t->jump[h.hi >> t->jump_shift];
		*nd = (const struct bt_node *)(e & ~BT_LEVEL_MASK);
		*level = (unsigned)(e & BT_LEVEL_MASK);
		return 1;
	}
	*nd = t->root;
	*level = t->height;
	return *nd != NULL;
}

/* The descent of find, instantiated once per node search. From the starting node's level
 * and the invariants (slot 0 of an inner node is 0, separators are exact) the rank in an
 * inner node is at least 1, and in a leaf it is 0 only below the tree's smallest start. */
#define BT_DEFINE_FIND(name, rank, attr)                                                           \
	attr static const void *name(const struct shardmap__btree *t, shardmap_hash h)             \
	{                                                                                          \
		const struct bt_node *nd;                                                          \
		unsigned level;                                                                    \
		if (!walk_start(t, h, &nd, &level))                                                \
			return NULL;                                                               \
		for (; level > 1; level--) {                                                       \
			nd = nd->ptr[rank(nd, h) - 1];                                             \
			__builtin_prefetch(&nd->ptr[0]);                                           \
			__builtin_prefetch(&nd->ptr[BT_WAY / 2]);                                  \
		}                                                                                  \
		size_t c = rank(nd, h);                                                            \
		return c ? nd->ptr[c - 1] : NULL;                                                  \
	}

/* The node lines a search reads: the hi words, and the pointers it follows. */
static inline void prefetch_node(const struct bt_node *nd)
{
	__builtin_prefetch(&nd->hib[0]);
	__builtin_prefetch(&nd->hib[BT_WAY / 2]);
	__builtin_prefetch(&nd->ptr[0]);
	__builtin_prefetch(&nd->ptr[BT_WAY / 2]);
}

/* The batched descent (shardmap__btree_find_batch): one level of every walk at a time. With a
 * jump table each walk joins in at the level its entry starts it (usually all at one level).
 * The values are prefetched too: the caller reads each one next (a shard record; 128 bytes
 * cover what a route reads of it wherever it starts within a line). */
#define BT_DEFINE_FIND_BATCH(name, rank, attr)                                                     \
	attr static void name(const struct shardmap__btree *t, const shardmap_hash *hs, size_t n,  \
			      const void **values)                                                 \
	{                                                                                          \
		const struct bt_node *nd[SHARDMAP__BTREE_BATCH];                                   \
		if (t->root == NULL) {                                                             \
			for (size_t i = 0; i < n; i++)                                             \
				values[i] = NULL;                                                  \
			return;                                                                    \
		}                                                                                  \
		if (t->jump == NULL) { /* all from the root, each next node prefetched */          \
			for (size_t i = 0; i < n; i++)                                             \
				nd[i] = t->root;                                                   \
			for (unsigned level = t->height; level > 1; level--)                       \
				for (size_t i = 0; i < n; i++) {                                   \
					nd[i] = nd[i]->ptr[rank(nd[i], hs[i]) - 1];                \
					prefetch_node(nd[i]);                                      \
				}                                                                  \
		} else { /* from the entries' nodes, prefetched too (L2 -> L1: measured faster) */ \
			unsigned char lv[SHARDMAP__BTREE_BATCH];                                   \
			unsigned top = 0;                                                          \
			for (size_t i = 0; i < n; i++) {                                           \
				unsigned level;                                                    \
				walk_start(t, hs[i], &nd[i], &level);                              \
				prefetch_node(nd[i]);                                              \
				lv[i] = (unsigned char)level;                                      \
				top = level > top ? level : top;                                   \
			}                                                                          \
			for (unsigned level = top; level > 1; level--)                             \
				for (size_t i = 0; i < n; i++) {                                   \
					if (lv[i] < level)                                         \
						continue;                                          \
					nd[i] = nd[i]->ptr[rank(nd[i], hs[i]) - 1];                \
					prefetch_node(nd[i]);                                      \
				}                                                                  \
		}                                                                                  \
		for (size_t i = 0; i < n; i++) {                                                   \
			size_t c = rank(nd[i], hs[i]);                                             \
			values[i] = c ? nd[i]->ptr[c - 1] : NULL;                                  \
			if (values[i] != NULL) {                                                   \
				__builtin_prefetch(values[i]);                                     \
				__builtin_prefetch((const char *)values[i] + 64);                  \
			}                                                                          \
		}                                                                                  \
	}

BT_DEFINE_FIND(find_scalar, rank_scalar, )
BT_DEFINE_FIND_BATCH(find_batch_scalar, rank_scalar, )
#ifdef BT_HAVE_AVX2
BT_DEFINE_FIND(find_avx2, rank_avx2, __attribute__((target("avx2,popcnt"))))
BT_DEFINE_FIND_BATCH(find_batch_avx2, rank_avx2, __attribute__((target("avx2,popcnt"))))
#endif

/* Chosen once, before main, from the CPU's features; written again only by the test hook. */
static const void *(*find_impl)(const struct shardmap__btree *, shardmap_hash) = find_scalar;
static void (*find_batch_impl)(const struct shardmap__btree *, const shardmap_hash *, size_t,
			       const void **) = find_batch_scalar;

__attribute__((constructor)) static void btree_select_search(void)
{
	shardmap__btree_use_simd(1);
}

int shardmap__btree_use_simd(int on)
{
	find_impl = find_scalar;
	find_batch_impl = find_batch_scalar;
#ifdef BT_HAVE_AVX2
	__builtin_cpu_init();
	if (on && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) {
		find_impl = find_avx2;
		find_batch_impl = find_batch_avx2;
		return 1;
	}
#endif
	return 0;
}

const void *shardmap__btree_find(const struct shardmap__btree *t, shardmap_hash h)
{
	return find_impl(t, h);
}

void shardmap__btree_find_batch(const struct shardmap__btree *t, const shardmap_hash *hs,
				size_t n, const void **values)
{
	find_batch_impl(t, hs, n, values);
}

/* ------------------------------------------------------------------ paths */

/* A root-to-leaf path: node[0] is the root, idx[l] the slot taken at level l (in the leaf:
 * the slot of the key, or where it would go). */
struct bt_path {
	unsigned height;
	struct bt_node *node[BT_MAX_HEIGHT];
	unsigned idx[BT_MAX_HEIGHT];
};

/* Descend towards key, taking in each inner node the child whose range holds key (or, with
 * below, the child holding the greatest start < key). Leaves idx[leaf] = rank. */
static void descend(const struct shardmap__btree *t, shardmap_hash key, int below,
		    struct bt_path *p)
{
	struct bt_node *nd = t->root;
	p->height = t->height;
	for (unsigned l = 0; l < t->height; l++) {
		unsigned r = below ? rank_below(nd, key) : rank_exact(nd, key);
		p->node[l] = nd;
		p->idx[l] = r;
		if (l + 1 < t->height) {
			p->idx[l] = r ? r - 1 : 0;
			nd = child(nd, p->idx[l]);
		}
	}
}

/* Step the path's leaf to the next (dir = 1) or previous (dir = -1) leaf. 0 at the edge. */
static int step_leaf(struct bt_path *p, int dir)
{
	unsigned leaf = p->height - 1, l = leaf;
	while (l > 0) {
		struct bt_node *up = p->node[l - 1];
		unsigned i = p->idx[l - 1];
		if (dir > 0 ? i + 1 < up->n : i > 0)
			break;
		l--;
	}
	if (l == 0)
		return 0;
	p->idx[l - 1] += dir;
	for (; l <= leaf; l++) {
		struct bt_node *nd = child(p->node[l - 1], p->idx[l - 1]);
		p->node[l] = nd;
		p->idx[l] = dir > 0 ? 0 : nd->n - 1;
	}
	return 1;
}

const void *shardmap__btree_get(const struct shardmap__btree *t, shardmap_hash start)
{
	const struct bt_node *nd = t->root;
	if (nd == NULL)
		return NULL;
	for (unsigned level = t->height; level > 1; level--)
		nd = child(nd, rank_exact(nd, start) - 1);
	unsigned c = rank_exact(nd, start);
	return c && key_eq(node_key(nd, c - 1), start) ? nd->ptr[c - 1] : NULL;
}

const void *shardmap__btree_next(const struct shardmap__btree *t, shardmap_hash key,
				 shardmap_hash *next_start)
{
	struct bt_path p;
	if (t->root == NULL)
		return NULL;
	descend(t, key, 0, &p);
	struct bt_node *leaf = p.node[p.height - 1];
	unsigned i = p.idx[p.height - 1];
	if (i >= leaf->n) {
		if (!step_leaf(&p, 1))
			return NULL;
		leaf = p.node[p.height - 1];
		i = 0;
	}
	*next_start = node_key(leaf, i);
	return leaf->ptr[i];
}

const void *shardmap__btree_prev(const struct shardmap__btree *t, shardmap_hash key,
				 shardmap_hash *prev_start)
{
	struct bt_path p;
	if (t->root == NULL)
		return NULL;
	descend(t, key, 1, &p);
	struct bt_node *leaf = p.node[p.height - 1];
	unsigned i = p.idx[p.height - 1];
	if (i == 0) {
		if (!step_leaf(&p, -1))
			return NULL;
		leaf = p.node[p.height - 1];
		i = leaf->n;
	}
	*prev_start = node_key(leaf, i - 1);
	return leaf->ptr[i - 1];
}

/* ------------------------------------------------------------------ changing nodes */

static void clear_slots(struct bt_node *nd, unsigned from)
{
	for (unsigned i = from; i < BT_WAY; i++) {
		put_key(nd, i, (shardmap_hash){UINT64_MAX, UINT64_MAX});
		nd->ptr[i] = NULL;
	}
}

static struct bt_node *node_new(struct shardmap__txn *t, int leaf)
{
	struct bt_node *nd = shardmap__txn_node_aligned(t, sizeof *nd, _Alignof(struct bt_node));
	if (nd != NULL) {
		nd->n = 0;
		nd->leaf = (uint32_t)leaf;
		clear_slots(nd, 0);
	}
	return nd;
}

static inline void set_slot(struct bt_node *nd, unsigned i, shardmap_hash k, const void *ptr)
{
	put_key(nd, i, k);
	nd->ptr[i] = ptr;
}

/* Move slots [from, from + count) of src to dst starting at slot to (regions may overlap). */
static void move_slots(struct bt_node *dst, unsigned to, const struct bt_node *src, unsigned from,
		       unsigned count)
{
	memmove(&dst->hib[to], &src->hib[from], count * sizeof dst->hib[0]);
	memmove(&dst->lo[to], &src->lo[from], count * sizeof dst->lo[0]);
	memmove(&dst->ptr[to], &src->ptr[from], count * sizeof dst->ptr[0]);
}

static void insert_slot(struct bt_node *nd, unsigned i, shardmap_hash k, const void *ptr)
{
	move_slots(nd, i + 1, nd, i, nd->n - i);
	set_slot(nd, i, k, ptr);
	nd->n++;
}

static void remove_slot(struct bt_node *nd, unsigned i)
{
	move_slots(nd, i, nd, i + 1, nd->n - i - 1);
	nd->n--;
	clear_slots(nd, nd->n);
}

/* Split the full node x while inserting (k, ptr) at slot i: x keeps the first m of the 17
 * entries (all 16 old ones when appending at the right edge), the empty node r gets the rest.
 * Returns the smallest key under r. */
static shardmap_hash split_insert(struct bt_node *x, struct bt_node *r, unsigned i, shardmap_hash k,
				  const void *ptr, int append)
{
	unsigned m = append ? BT_WAY : BT_WAY / 2 + 1;
	if (i < m) {
		move_slots(r, 0, x, m - 1, BT_WAY - (m - 1));
		r->n = BT_WAY - (m - 1);
		x->n = m - 1;
		clear_slots(x, x->n);
		insert_slot(x, i, k, ptr);
	} else {
		move_slots(r, 0, x, m, BT_WAY - m);
		r->n = BT_WAY - m;
		x->n = m;
		clear_slots(x, x->n);
		insert_slot(r, i - m, k, ptr);
	}
	shardmap_hash sep = node_key(r, 0);
	if (!r->leaf)
		put_key(r, 0, key_min);
	return sep;
}

/* ------------------------------------------------------------------ copy-on-write */

/* Copies of the path's nodes the transaction does not own (NULL where owned). Owned nodes
 * form a prefix of the path (a node is created only together with its parent's copy). */
struct bt_copies {
	struct bt_node *node[BT_MAX_HEIGHT];
};

static struct bt_node *copy_node(struct shardmap__txn *t, const struct bt_node *nd)
{
	struct bt_node *c = shardmap__txn_node_aligned(t, sizeof *c, _Alignof(struct bt_node));
	if (c == NULL)
		return NULL;
	uint64_t gen = c->hdr.gen;
	memcpy(c, nd, sizeof *c);
	c->hdr.gen = gen;
	if (shardmap__txn_retire(t, (void *)nd) != 0)
		return NULL; /* c stays on the created list: abort frees it */
	return c;
}

/* The fallible half of owning the path: copy what is not owned, retire the originals. */
static int copy_path(struct shardmap__txn *t, const struct bt_path *p, struct bt_copies *c)
{
	for (unsigned l = 0; l < p->height; l++) {
		c->node[l] = NULL;
		if (!shardmap__txn_owns(t, p->node[l]) &&
		    (c->node[l] = copy_node(t, p->node[l])) == NULL)
			return SHARDMAP_ENOMEM;
	}
	return 0;
}

/* The infallible half: link the copies in place of the originals. */
static void link_path(struct shardmap__btree *tree, struct bt_path *p, const struct bt_copies *c)
{
	for (unsigned l = 0; l < p->height; l++) {
		if (c->node[l] == NULL)
			continue;
		p->node[l] = c->node[l];
		if (l == 0)
			tree->root = c->node[0];
		else
			p->node[l - 1]->ptr[p->idx[l - 1]] = c->node[l];
	}
}

/* ------------------------------------------------------------------ jump table upkeep */

/* A change drops the table: it names nodes the change copies or moves keys out of. The
 * fallible half, last among a change's fallible steps: retire it (a published version may
 * still be reading it). The other half, once nothing can fail, is tree->jump = NULL. */
static int retire_jump(struct shardmap__txn *t, const struct shardmap__btree *tree)
{
	if (tree->jump == NULL || shardmap__txn_retire(t, (void *)tree->jump) == 0)
		return 0;
	return SHARDMAP_ENOMEM;
}

/* Entry indices of the jump table with shift s: the first entry all of whose hashes are >=
 * lo, and one past the last entry all of whose hashes are <= hi. */
static uint64_t entry_from(shardmap_hash lo, unsigned s)
{
	uint64_t low_bits = lo.hi & ((UINT64_C(1) << s) - 1);
	return (lo.hi >> s) + ((low_bits | lo.lo) != 0);
}

static uint64_t entry_to(shardmap_hash hi, unsigned s)
{
	uint64_t mask = (UINT64_C(1) << s) - 1;
	return (hi.hi >> s) + ((hi.hi & mask) == mask && hi.lo == UINT64_MAX);
}

/* Point every entry whose hashes all lie in [lo, hi], the range of nd (at level), at the
 * deepest node holding all its hashes: the children of nd take the entries that lie wholly
 * in their ranges, nd the rest (those that straddle a separator). A search from that node
 * meets the nodes the search from the root would meet below it, since the nodes of one
 * level partition the hash space by the same separators. Each entry is written once. */
static void jump_fill(uintptr_t *jump, unsigned s, const struct bt_node *nd, unsigned level,
		      shardmap_hash lo, shardmap_hash hi)
{
	uint64_t e = entry_from(lo, s), end = entry_to(hi, s);
	for (unsigned i = 0; level > 1 && i < nd->n; i++) {
		shardmap_hash clo = i == 0 ? lo : node_key(nd, i), chi = hi;
		if (i + 1 < nd->n) { /* one below the next separator (never 0: it is exact) */
			chi = node_key(nd, i + 1);
			chi.hi -= chi.lo == 0;
			chi.lo--;
		}
		uint64_t ce = entry_from(clo, s), cend = entry_to(chi, s);
		if (ce >= cend)
			continue;
		for (; e < ce; e++)
			jump[e] = (uintptr_t)nd | level;
		if (level == 2) /* a leaf takes all its entries: no call needed */
			for (; e < cend; e++)
				jump[e] = (uintptr_t)child(nd, i) | 1;
		else
			jump_fill(jump, s, child(nd, i), level - 1, clo, chi);
		e = cend;
	}
	for (; e < end; e++)
		jump[e] = (uintptr_t)nd | level;
}

/* The table's shift for a tree of count values: an entry per value, 2^6 to 2^12 entries
 * (SHARDMAP__BTREE_JUMP_MAX_COUNT). Entries much narrower than a leaf keep most of them
 * inside one leaf even after splits and merges have left leaves half full with their
 * boundaries anywhere (with an entry per 4 values, a 1,024-shard stream that a writer had
 * worked on sent three lookups in four through two nodes instead of one). */
static unsigned jump_shift_for(size_t count)
{
	unsigned bits = 6;
	while (bits < 12 && ((size_t)1 << bits) < count)
		bits++;
	return 64 - bits;
}

static void jump_make(uintptr_t *jump, unsigned s, const struct shardmap__btree *tree)
{
	const shardmap_hash all = {UINT64_MAX, UINT64_MAX};
	jump_fill(jump, s, tree->root, tree->height, key_min, all);
}

int shardmap__btree_seal(struct shardmap__txn *t, struct shardmap__btree *tree)
{
	if (tree->jump != NULL || tree->height < SHARDMAP__BTREE_JUMP_MIN_HEIGHT ||
	    tree->count > SHARDMAP__BTREE_JUMP_MAX_COUNT)
		return 0;
	unsigned s = jump_shift_for(tree->count);
	uintptr_t *jump = shardmap__txn_alloc(t, sizeof *jump << (64 - s));
	if (jump == NULL)
		return SHARDMAP_ENOMEM;
	jump_make(jump, s, tree);
	tree->jump_shift = s;
	tree->jump = jump;
	return 0;
}

/* ------------------------------------------------------------------ put */

int shardmap__btree_put(struct shardmap__txn *t, struct shardmap__btree *tree, shardmap_hash start,
			const void *value, const void **old)
{
	struct bt_path p;
	struct bt_copies c;
	struct bt_node *fresh[BT_MAX_HEIGHT + 1];

	if (tree->root == NULL) { /* (an empty tree has no jump table) */
		struct bt_node *leaf = node_new(t, 1);
		if (leaf == NULL)
			return SHARDMAP_ENOMEM;
		insert_slot(leaf, 0, start, value);
		tree->root = leaf;
		tree->height = 1;
		tree->count = 1;
		if (old != NULL)
			*old = NULL;
		return 0;
	}

	descend(tree, start, 0, &p);
	unsigned leaf = p.height - 1, pos = p.idx[leaf];
	int found = pos > 0 && key_eq(node_key(p.node[leaf], pos - 1), start);

	/* Everything that can fail: path copies, then one new node per split. */
	unsigned splits = 0;
	if (!found)
		while (splits < p.height && p.node[leaf - splits]->n == BT_WAY)
			splits++;
	if (copy_path(t, &p, &c) != 0)
		return SHARDMAP_ENOMEM;
	for (unsigned s = 0; s < splits + (splits == p.height); s++)
		if ((fresh[s] = node_new(t, s == 0)) == NULL)
			return SHARDMAP_ENOMEM;
	if (retire_jump(t, tree) != 0)
		return SHARDMAP_ENOMEM;
	tree->jump = NULL;

	link_path(tree, &p, &c);
	if (found) {
		if (old != NULL)
			*old = p.node[leaf]->ptr[pos - 1];
		p.node[leaf]->ptr[pos - 1] = value;
		return 0;
	}
	if (old != NULL)
		*old = NULL;

	/* The new entry goes in at the leaf; each split sends (sep, new node) one level up. */
	shardmap_hash k = start;
	const void *ptr = value;
	unsigned i = pos;
	int right_edge = 1; /* is the path at level l the tree's right edge? */
	for (unsigned l = 0; l < leaf; l++)
		right_edge &= p.idx[l] + 1 == p.node[l]->n;
	for (unsigned s = 0;; s++) {
		struct bt_node *x = p.node[leaf - s];
		if (s == splits) {
			insert_slot(x, i, k, ptr);
			break;
		}
		k = split_insert(x, fresh[s], i, k, ptr, right_edge && i == BT_WAY);
		ptr = fresh[s];
		if (s + 1 == p.height) { /* the root split: grow a level */
			struct bt_node *root = fresh[s + 1];
			set_slot(root, 0, key_min, x);
			set_slot(root, 1, k, ptr);
			root->n = 2;
			tree->root = root;
			tree->height++;
			break;
		}
		i = p.idx[leaf - s - 1] + 1;
	}
	tree->count++;
	return 0;
}

/* ------------------------------------------------------------------ del */

/* How a level under half full is repaired, decided before anything changes. */
struct bt_fix {
	enum { FIX_BORROW, FIX_MERGE, FIX_DROP } kind; /* DROP: an emptied node, no sibling */
	struct bt_node *sib;	     /* the sibling (its owned copy when it survives) */
	struct bt_node *sib_copy_of; /* the original sib replaced, NULL if none */
	unsigned sib_idx;
};

/* Move entries from s into x until they are balanced (x under half full, s with extra). */
static void borrow(struct bt_node *parent, unsigned xi, struct bt_node *x, unsigned si,
		   struct bt_node *s)
{
	unsigned k = (s->n - x->n) / 2;
	if (x->leaf) {
		if (si < xi) {
			move_slots(x, k, x, 0, x->n);
			move_slots(x, 0, s, s->n - k, k);
			x->n += k;
			s->n -= k;
			clear_slots(s, s->n);
			copy_key(parent, xi, x, 0);
		} else {
			move_slots(x, x->n, s, 0, k);
			x->n += k;
			move_slots(s, 0, s, k, s->n - k);
			s->n -= k;
			clear_slots(s, s->n);
			copy_key(parent, si, s, 0);
		}
		return;
	}
	/* Inner nodes rotate one child at a time through the parent's separator. */
	for (; k > 0; k--) {
		if (si < xi) {
			unsigned last = s->n - 1;
			copy_key(x, 0, parent, xi);
			insert_slot(x, 0, key_min, s->ptr[last]);
			copy_key(parent, xi, s, last);
			remove_slot(s, last);
		} else {
			insert_slot(x, x->n, node_key(parent, si), s->ptr[0]);
			copy_key(parent, si, s, 1);
			remove_slot(s, 0);
			put_key(s, 0, key_min);
		}
	}
}

/* Append r to its left neighbour l; sep is r's separator in the parent. (An emptied node is
 * always the right one: only the right edge holds nodes short enough to empty.) */
static void merge_into(struct bt_node *l, struct bt_node *r, shardmap_hash sep)
{
	unsigned at = l->n;
	move_slots(l, at, r, 0, r->n);
	l->n += r->n;
	if (!l->leaf && r->n > 0 && at > 0)
		put_key(l, at, sep);
}

int shardmap__btree_del(struct shardmap__txn *t, struct shardmap__btree *tree, shardmap_hash start,
			const void **old)
{
	struct bt_path p;
	struct bt_copies c;
	struct bt_fix fix[BT_MAX_HEIGHT];

	if (tree->root == NULL)
		return SHARDMAP_ENOENT;
	descend(tree, start, 0, &p);
	unsigned leaf = p.height - 1, pos = p.idx[leaf];
	if (pos == 0 || !key_eq(node_key(p.node[leaf], pos - 1), start))
		return SHARDMAP_ENOENT;
	pos--;

	/* Everything that can fail: path copies, sibling copies, retiring what goes away. */
	if (copy_path(t, &p, &c) != 0)
		return SHARDMAP_ENOMEM;
	unsigned l = leaf, cnt = p.node[leaf]->n - 1, nfix = 0;
	for (; l > 0 && cnt < BT_MIN; l--) {
		struct bt_node *up = p.node[l - 1], *x = c.node[l] ? c.node[l] : p.node[l];
		unsigned xi = p.idx[l - 1], si = xi > 0 ? xi - 1 : xi + 1;
		struct bt_fix *f = &fix[l];
		f->sib_copy_of = NULL;
		if (up->n == 1) {
			/* No sibling: x is on the right edge, where an append split left it
			 * short. It stays short, or goes when empty (its parent then empties). */
			if (cnt > 0)
				break;
			if (shardmap__txn_retire(t, x) != 0)
				return SHARDMAP_ENOMEM;
			f->kind = FIX_DROP;
			nfix++;
			continue;
		}
		f->sib_idx = si;
		f->sib = child(up, si);
		f->kind = cnt + f->sib->n <= BT_WAY ? FIX_MERGE : FIX_BORROW;
		if (f->kind == FIX_MERGE && si > xi) {
			/* The sibling goes away: retire it, no need to copy. */
			if (shardmap__txn_retire(t, f->sib) != 0)
				return SHARDMAP_ENOMEM;
		} else {
			if (!shardmap__txn_owns(t, f->sib)) {
				f->sib_copy_of = f->sib;
				if ((f->sib = copy_node(t, f->sib)) == NULL)
					return SHARDMAP_ENOMEM;
			}
			if (f->kind == FIX_MERGE && shardmap__txn_retire(t, x) != 0)
				return SHARDMAP_ENOMEM;
		}
		nfix++;
		if (f->kind == FIX_BORROW)
			break;
		cnt = up->n - 1;
	}
	int shrink = 0; /* the root goes: it became empty (a leaf) or has one child */
	if (l == 0 && cnt <= (leaf == 0 ? 0u : 1u)) {
		struct bt_node *root = c.node[0] ? c.node[0] : p.node[0];
		if (shardmap__txn_retire(t, root) != 0)
			return SHARDMAP_ENOMEM;
		shrink = 1;
	}
	if (retire_jump(t, tree) != 0)
		return SHARDMAP_ENOMEM;

	/* From here on nothing fails. */
	tree->jump = NULL;
	link_path(tree, &p, &c);
	struct bt_node *x = p.node[leaf];
	if (old != NULL)
		*old = x->ptr[pos];
	if (pos == 0) {
		/* start may be the separator of an ancestor: the leaf's next key replaces it. (A
		 * leaf with no next key empties, and the separator goes with it.) */
		for (unsigned a = leaf; a-- > 0;) {
			if (p.idx[a] > 0) {
				copy_key(p.node[a], p.idx[a], x, 1);
				break;
			}
		}
	}
	remove_slot(x, pos);
	for (unsigned lv = leaf; lv > leaf - nfix; lv--) {
		struct bt_node *up = p.node[lv - 1];
		const struct bt_fix *f = &fix[lv];
		unsigned xi = p.idx[lv - 1];
		x = p.node[lv];
		if (f->kind == FIX_DROP) {
			remove_slot(up, xi);
			continue;
		}
		if (f->sib_copy_of != NULL)
			up->ptr[f->sib_idx] = f->sib;
		if (f->kind == FIX_BORROW) {
			borrow(up, xi, x, f->sib_idx, f->sib);
			break;
		}
		unsigned ri = f->sib_idx > xi ? f->sib_idx : xi;
		struct bt_node *lnode = ri == xi ? f->sib : x, *rnode = ri == xi ? x : f->sib;
		merge_into(lnode, rnode, node_key(up, ri));
		remove_slot(up, ri);
	}
	if (shrink) {
		struct bt_node *root = tree->root;
		tree->root = root->leaf ? NULL : child(root, 0);
		tree->height--;
	}
	tree->count--;
	return 0;
}

/* ------------------------------------------------------------------ bulk build */

/* A node of the level being built, and the smallest start under it. */
struct bt_level_ent {
	shardmap_hash min;
	struct bt_node *node;
};

int shardmap__btree_build(struct shardmap__txn *t, struct shardmap__btree *tree,
			  const struct shardmap__btree_item *items, size_t n)
{
	if (tree->root != NULL || tree->count != 0 || (n > 0 && items == NULL))
		return SHARDMAP_EINVAL;
	for (size_t i = 1; i < n; i++)
		if (key_le(items[i].start, items[i - 1].start))
			return SHARDMAP_EINVAL;
	if (n == 0)
		return 0;
	/* The list of one level's nodes: transient, so plain heap memory (still counted, and
	 * failed by the out-of-memory test hook), not the map's arena. Each level is written
	 * over the one below it: level l + 1 has at most a sixteenth of its entries. */
	size_t width = (n + BT_WAY - 1) / BT_WAY;
	struct shardmap__mem heap;
	shardmap__mem_init(&heap, 0);
	struct bt_level_ent *lv = shardmap__alloc(&heap, width * sizeof *lv);
	int rc = lv ? 0 : SHARDMAP_ENOMEM;
	for (size_t i = 0; i < width && rc == 0; i++) {
		struct bt_node *leaf = node_new(t, 1);
		if (leaf == NULL) {
			rc = SHARDMAP_ENOMEM;
			break;
		}
		size_t at = i * BT_WAY, k = n - at < BT_WAY ? n - at : BT_WAY;
		for (unsigned j = 0; j < k; j++)
			set_slot(leaf, j, items[at + j].start, items[at + j].value);
		leaf->n = (uint32_t)k;
		lv[i] = (struct bt_level_ent){items[at].start, leaf};
	}
	unsigned height = 1;
	while (rc == 0 && width > 1) {
		size_t up = (width + BT_WAY - 1) / BT_WAY;
		for (size_t i = 0; i < up; i++) {
			struct bt_node *inner = node_new(t, 0);
			if (inner == NULL) {
				rc = SHARDMAP_ENOMEM;
				break;
			}
			size_t at = i * BT_WAY, k = width - at < BT_WAY ? width - at : BT_WAY;
			shardmap_hash min = lv[at].min;
			for (unsigned j = 0; j < k; j++)
				set_slot(inner, j, j ? lv[at + j].min : key_min, lv[at + j].node);
			inner->n = (uint32_t)k;
			lv[i] = (struct bt_level_ent){min, inner};
		}
		width = up;
		height++;
	}
	if (rc == 0) {
		tree->root = lv[0].node;
		tree->height = height;
		tree->count = n;
	}
	shardmap__free(&heap, lv);
	shardmap__mem_fini(&heap);
	return rc;
}

/* ------------------------------------------------------------------ walking */

static int foreach_rec(const struct bt_node *nd,
		       int (*fn)(void *ctx, shardmap_hash start, const void *value), void *ctx)
{
	for (unsigned i = 0; i < nd->n; i++) {
		int rc = nd->leaf ? fn(ctx, node_key(nd, i), nd->ptr[i])
				  : foreach_rec(child(nd, i), fn, ctx);
		if (rc != 0)
			return rc;
	}
	return 0;
}

int shardmap__btree_foreach(const struct shardmap__btree *t,
			    int (*fn)(void *ctx, shardmap_hash start, const void *value), void *ctx)
{
	return t->root ? foreach_rec(t->root, fn, ctx) : 0;
}

static void free_rec(struct shardmap__mem *mem, struct bt_node *nd)
{
	if (!nd->leaf)
		for (unsigned i = 0; i < nd->n; i++)
			free_rec(mem, child(nd, i));
	shardmap__free(mem, nd);
}

void shardmap__btree_free_nodes(struct shardmap__mem *mem, struct shardmap__btree *t)
{
	if (t->root != NULL)
		free_rec(mem, t->root);
	shardmap__free(mem, (void *)t->jump);
	t->jump = NULL;
	t->root = NULL;
	t->height = 0;
	t->count = 0;
}

/* ------------------------------------------------------------------ checking (tests) */

struct bt_check {
	int have_prev;
	shardmap_hash prev;
	size_t count;
};

#define BT_CHECK(cond)                                                                             \
	do {                                                                                       \
		if (!(cond))                                                                       \
			return __LINE__;                                                           \
	} while (0)

/* Check the subtree nd at depth levels above the leaves; *min gets its smallest key. */
static int check_rec(const struct bt_node *nd, unsigned levels, int is_root, int right_edge,
		     struct bt_check *c, shardmap_hash *min)
{
	BT_CHECK(((uintptr_t)nd & 63) == 0);
	BT_CHECK(nd->leaf == (levels == 1));
	BT_CHECK(nd->n <= BT_WAY);
	BT_CHECK(nd->n >= (is_root && !nd->leaf ? 2u : 1u));
	BT_CHECK(nd->n >= 2 || is_root || right_edge); /* only the right edge may be short */
	for (unsigned i = nd->n; i < BT_WAY; i++)
		BT_CHECK(key_eq(node_key(nd, i), (shardmap_hash){UINT64_MAX, UINT64_MAX}) &&
			 nd->ptr[i] == NULL);
	if (nd->leaf) {
		for (unsigned i = 0; i < nd->n; i++) {
			shardmap_hash k = node_key(nd, i);
			BT_CHECK(!c->have_prev || !key_le(k, c->prev));
			c->have_prev = 1;
			c->prev = k;
		}
		c->count += nd->n;
		*min = node_key(nd, 0);
		return 0;
	}
	BT_CHECK(key_eq(node_key(nd, 0), key_min));
	for (unsigned i = 0; i < nd->n; i++) {
		shardmap_hash sub_min;
		BT_CHECK(nd->ptr[i] != NULL);
		int rc = check_rec(child(nd, i), levels - 1, 0, right_edge && i + 1 == nd->n, c,
				   &sub_min);
		if (rc != 0)
			return rc;
		if (i == 0)
			*min = sub_min;
		else
			BT_CHECK(key_eq(node_key(nd, i), sub_min));
	}
	return 0;
}

/* The jump table is what shardmap__btree_seal makes of the tree as it is now. */
static int check_jump(const struct shardmap__btree *t)
{
	BT_CHECK(t->height >= SHARDMAP__BTREE_JUMP_MIN_HEIGHT &&
		 t->count <= SHARDMAP__BTREE_JUMP_MAX_COUNT);
	BT_CHECK(t->jump_shift == jump_shift_for(t->count));
	size_t n = (size_t)1 << (64 - t->jump_shift);
	uintptr_t *want = malloc(n * sizeof *want);
	BT_CHECK(want != NULL);
	jump_make(want, t->jump_shift, t);
	int same = memcmp(want, t->jump, n * sizeof *want) == 0;
	free(want);
	BT_CHECK(same);
	return 0;
}

int shardmap__btree_check(const struct shardmap__btree *t)
{
	struct bt_check c = {0, {0, 0}, 0};
	shardmap_hash min;
	if (t->root == NULL) {
		BT_CHECK(t->height == 0 && t->count == 0 && t->jump == NULL);
		return 0;
	}
	BT_CHECK(t->height > 0 && t->height <= BT_MAX_HEIGHT);
	int rc = check_rec(t->root, t->height, 1, 1, &c, &min);
	if (rc != 0)
		return rc;
	BT_CHECK(c.count == t->count);
	return t->jump ? check_jump(t) : 0;
}
