/*
 * hamt.c - a persistent hash array mapped trie: string key -> record pointer.
 *
 * For the map's stream directory, cell table and per-stream shard-by-id index (hamt.h). A key
 * is found by its 64-bit hash (XXH3-64 unless the trie names another function), five bits per
 * level, in 32-way nodes that store only their present slots, located by a popcount of the
 * node's bitmap. A slot is either an entry (key, value) or a child node (key NULL). Slots do
 * not store hashes (16 bytes, not 24: a third of the index of a million shards): a lookup
 * follows the hash it is given and compares keys in full, and a put recomputes a stored key's
 * hash only when it must push that entry one level down. Keys whose hashes are entirely equal
 * share a collision node, a plain list scanned by key.
 *
 * Canonical form, kept by every change: the root is a bitmap node (or NULL when empty); every
 * other bitmap node holds a child or at least two entries (a lone entry is pulled up into its
 * parent); a collision node holds at least two entries.
 *
 * Changes are copy-on-write through a transaction (txn.h). A node the transaction does not own
 * is copied (exactly sized) and the original retired; an owned node is changed in place, and
 * grows in place while it has spare slots: when it is full it is replaced by a node of twice
 * the size, so puts into a trie the transaction built cost amortised O(1) copying each. Each
 * change does every step that can fail (allocating, retiring) before its first write to a
 * node reachable from h, so on SHARDMAP_ENOMEM h still holds exactly what it held before the
 * call (the transaction must still abort: its retired list may name nodes h uses).
 * A bulk build (shardmap__hamt_build) makes a whole trie at once by radix-partitioning the
 * entries on each level's five bits: every node is allocated once, exactly sized.
 *
 * Readers (get, foreach) take no lock and write nothing. A trie is published only as part of
 * a map version (map.c: one release store, loaded by readers inside an epoch section). A
 * published node is never written again: a writer changes in place only nodes its own
 * transaction created, unreachable until their version is published. Replaced nodes are
 * retired, and the map frees them only after the grace period of the version that used them.
 */
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "hamt.h"
#include "shardmap.h"

#define HAMT_BITS    5
#define HAMT_MASK    31u
#define HAMT_WAY     32u
#define HAMT_CAP_MAX UINT16_MAX /* slots of one node (a collision node can pass 32) */

struct hamt_slot {
	const char *key; /* NULL: value is a child node */
	const void *value;
};

struct hamt_node {
	struct shardmap__node_hdr hdr;
	uint32_t bitmap; /* bit c set: slot for hash chunk c present; 0 marks a collision node */
	uint16_t count;	 /* slots in use */
	uint16_t cap;	 /* slots allocated (more than count only in a node its txn grew) */
	struct hamt_slot slot[];
};

uint64_t shardmap__hamt_hash(const char *key)
{
	return XXH3_64bits(key, strlen(key));
}

static inline uint64_t key_hash(const struct shardmap__hamt *h, const char *key)
{
	return h->hash ? h->hash(key) : shardmap__hamt_hash(key);
}

/* Bitmap nodes only exist at shift <= 60: two hashes that agree on all 64 bits share a
 * collision node instead of a deeper bitmap node. */
static inline uint32_t chunk_bit(uint64_t hash, unsigned shift)
{
	return 1u << ((hash >> shift) & HAMT_MASK);
}

/* Without -mpopcnt, __builtin_popcount is a call into libgcc (it was a tenth of a whole
 * route lookup); this is the same count, inline. */
static inline unsigned popcount32(uint32_t x)
{
#ifdef __POPCNT__
	return (unsigned)__builtin_popcount(x);
#else
	x = x - ((x >> 1) & 0x55555555u);
	x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
	x = (x + (x >> 4)) & 0x0f0f0f0fu;
	return (x * 0x01010101u) >> 24;
#endif
}

static inline unsigned slot_index(uint32_t bitmap, uint32_t bit)
{
	return popcount32(bitmap & (bit - 1));
}

static inline int is_collision(const struct hamt_node *n)
{
	return n->bitmap == 0;
}

static inline int is_entry_for(const struct hamt_slot *s, const char *key)
{
	return s->key != NULL && strcmp(s->key, key) == 0;
}

/* The lookup behind get and get_alone. A key found in an entry slot is the only key of its
 * hash (keys of one full hash share a collision node), so *alone is 1 there, 0 in a
 * collision node. */
static inline const void *get(const struct shardmap__hamt *h, uint64_t hash, const char *key,
			      int *alone)
{
	const struct hamt_node *n = h->root;
	for (unsigned shift = 0; n != NULL; shift += HAMT_BITS) {
		if (is_collision(n)) {
			/* A key of another hash can meet this node, but is not in it. */
			*alone = 0;
			for (uint32_t i = 0; i < n->count; i++)
				if (strcmp(n->slot[i].key, key) == 0)
					return n->slot[i].value;
			return NULL;
		}
		uint32_t bit = chunk_bit(hash, shift);
		if (!(n->bitmap & bit))
			return NULL;
		const struct hamt_slot *s = &n->slot[slot_index(n->bitmap, bit)];
		if (s->key != NULL) /* equal keys have equal hashes: the key decides */
			return strcmp(s->key, key) == 0 ? s->value : NULL;
		n = s->value;
	}
	return NULL;
}

const void *shardmap__hamt_get(const struct shardmap__hamt *h, uint64_t hash, const char *key)
{
	int alone;
	return get(h, hash, key, &alone);
}

const void *shardmap__hamt_get_alone(const struct shardmap__hamt *h, uint64_t hash,
				     const char *key, int *alone)
{
	*alone = 1;
	return get(h, hash, key, alone);
}

/* ------------------------------------------------------------------ making nodes */

static struct hamt_node *node_alloc(struct shardmap__txn *t, uint32_t bitmap, uint32_t count,
				    uint32_t cap)
{
	struct hamt_node *n =
	    shardmap__txn_node(t, sizeof *n + (size_t)cap * sizeof(struct hamt_slot));
	if (n != NULL) {
		n->bitmap = bitmap;
		n->count = (uint16_t)count;
		n->cap = (uint16_t)cap;
	}
	return n;
}

static struct hamt_node *node_new(struct shardmap__txn *t, uint32_t bitmap, uint32_t count)
{
	return node_alloc(t, bitmap, count, count);
}

static struct hamt_slot child_slot(const struct hamt_node *child)
{
	struct hamt_slot s = {NULL, child};
	return s;
}

static struct hamt_slot entry_slot(const char *key, const void *value)
{
	struct hamt_slot s = {key, value};
	return s;
}

/* Replace n by a node of the same shape that the transaction owns: n itself when owned,
 * otherwise an exactly sized copy (n retired). NULL on failure, with nothing reachable
 * changed. */
static struct hamt_node *writable(struct shardmap__txn *t, struct hamt_node *n)
{
	if (shardmap__txn_owns(t, n))
		return n;
	struct hamt_node *m = node_new(t, n->bitmap, n->count);
	if (m == NULL)
		return NULL;
	memcpy(m->slot, n->slot, n->count * sizeof n->slot[0]);
	if (shardmap__txn_retire(t, n) != 0)
		return NULL; /* m stays on the created list: abort frees it */
	return m;
}

/* A new node that replaces n with slot i removed (in place when owned). */
static struct hamt_node *without_slot(struct shardmap__txn *t, struct hamt_node *n, unsigned i,
				      uint32_t bit)
{
	if (shardmap__txn_owns(t, n)) {
		memmove(&n->slot[i], &n->slot[i + 1], (n->count - i - 1) * sizeof n->slot[0]);
		n->bitmap &= ~bit;
		n->count--;
		return n;
	}
	struct hamt_node *m = node_new(t, n->bitmap & ~bit, n->count - 1u);
	if (m == NULL)
		return NULL;
	memcpy(m->slot, n->slot, i * sizeof n->slot[0]);
	memcpy(&m->slot[i], &n->slot[i + 1], (n->count - i - 1) * sizeof n->slot[0]);
	if (shardmap__txn_retire(t, n) != 0)
		return NULL;
	return m;
}

/* The node that replaces n with s inserted as slot i: n itself when the transaction owns it
 * and it has a spare slot; else a new node, exactly sized when n was published, twice the
 * size when n was the transaction's own (so repeated inserts copy amortised O(1) slots). */
static struct hamt_node *with_slot(struct shardmap__txn *t, struct hamt_node *n, unsigned i,
				   uint32_t bit, const struct hamt_slot *s)
{
	int owned = shardmap__txn_owns(t, n);
	if (owned && n->count < n->cap) {
		memmove(&n->slot[i + 1], &n->slot[i], (n->count - i) * sizeof n->slot[0]);
		n->slot[i] = *s;
		n->bitmap |= bit;
		n->count++;
		return n;
	}
	uint32_t need = n->count + 1u, cap = need;
	if (need > HAMT_CAP_MAX)
		return NULL; /* 65,535 keys of one 64-bit hash: treated as out of memory */
	if (owned) {
		cap = 2u * n->count;
		if (!is_collision(n) && cap > HAMT_WAY)
			cap = HAMT_WAY;
		if (cap > HAMT_CAP_MAX)
			cap = HAMT_CAP_MAX;
		if (cap < need)
			cap = need;
	}
	struct hamt_node *m = node_alloc(t, n->bitmap | bit, need, cap);
	if (m == NULL)
		return NULL;
	memcpy(m->slot, n->slot, i * sizeof n->slot[0]);
	m->slot[i] = *s;
	memcpy(&m->slot[i + 1], &n->slot[i], (n->count - i) * sizeof n->slot[0]);
	if (shardmap__txn_retire(t, n) != 0)
		return NULL;
	return m;
}

/* The subtree at level shift holding two slots with different hashes ha and hb (an entry or
 * a collision node each). */
static struct hamt_node *make_pair(struct shardmap__txn *t, unsigned shift,
				   const struct hamt_slot *a, uint64_t ha,
				   const struct hamt_slot *b, uint64_t hb)
{
	uint32_t ba = chunk_bit(ha, shift), bb = chunk_bit(hb, shift);
	if (ba == bb) {
		struct hamt_node *sub = make_pair(t, shift + HAMT_BITS, a, ha, b, hb);
		struct hamt_node *n = sub ? node_new(t, ba, 1) : NULL;
		if (n != NULL)
			n->slot[0] = child_slot(sub);
		return n;
	}
	struct hamt_node *n = node_new(t, ba | bb, 2);
	if (n != NULL) {
		n->slot[ba < bb ? 0 : 1] = *a;
		n->slot[ba < bb ? 1 : 0] = *b;
	}
	return n;
}

static struct hamt_node *make_collision(struct shardmap__txn *t, const struct hamt_slot *a,
					const struct hamt_slot *b)
{
	struct hamt_node *n = node_new(t, 0, 2);
	if (n != NULL) {
		n->slot[0] = *a;
		n->slot[1] = *b;
	}
	return n;
}

/* ------------------------------------------------------------------ put */

/* One put: the entry, its hash, and where the replaced value goes. */
struct put {
	struct shardmap__txn *t;
	const struct shardmap__hamt *h;
	struct hamt_slot e;
	uint64_t hash;
	const void **old;
};

static int put_collision(struct put *p, struct hamt_node *n, unsigned shift, struct hamt_node **out)
{
	uint64_t nh = key_hash(p->h, n->slot[0].key);
	if (nh != p->hash) {
		/* A different hash reached this collision node: push it one level down. */
		struct hamt_slot c = child_slot(n);
		*out = make_pair(p->t, shift, &c, nh, &p->e, p->hash);
		return *out ? 0 : SHARDMAP_ENOMEM;
	}
	for (uint32_t i = 0; i < n->count; i++) {
		if (is_entry_for(&n->slot[i], p->e.key)) {
			struct hamt_node *m = writable(p->t, n);
			if (m == NULL)
				return SHARDMAP_ENOMEM;
			*p->old = m->slot[i].value;
			m->slot[i] = p->e;
			*out = m;
			return 0;
		}
	}
	*out = with_slot(p->t, n, n->count, 0, &p->e);
	return *out ? 0 : SHARDMAP_ENOMEM;
}

/* Put p's entry into the subtree n at level shift; *out gets the node that replaces n (n
 * itself when changed in place). */
static int put_rec(struct put *p, struct hamt_node *n, unsigned shift, struct hamt_node **out)
{
	if (is_collision(n))
		return put_collision(p, n, shift, out);
	uint32_t bit = chunk_bit(p->hash, shift);
	unsigned i = slot_index(n->bitmap, bit);
	if (!(n->bitmap & bit)) {
		*out = with_slot(p->t, n, i, bit, &p->e);
		return *out ? 0 : SHARDMAP_ENOMEM;
	}
	const struct hamt_slot *s = &n->slot[i];
	struct hamt_slot repl;
	if (s->key == NULL) {
		struct hamt_node *child = (struct hamt_node *)s->value, *nc;
		int rc = put_rec(p, child, shift + HAMT_BITS, &nc);
		if (rc != 0)
			return rc;
		if (nc == child) { /* changed in place, so n is owned too */
			*out = n;
			return 0;
		}
		repl = child_slot(nc);
	} else if (strcmp(s->key, p->e.key) == 0) {
		*p->old = s->value;
		repl = p->e;
	} else {
		uint64_t sh = key_hash(p->h, s->key);
		struct hamt_node *sub =
		    sh == p->hash ? make_collision(p->t, s, &p->e)
				  : make_pair(p->t, shift + HAMT_BITS, s, sh, &p->e, p->hash);
		if (sub == NULL)
			return SHARDMAP_ENOMEM;
		repl = child_slot(sub);
	}
	struct hamt_node *m = writable(p->t, n);
	if (m == NULL)
		return SHARDMAP_ENOMEM;
	m->slot[i] = repl;
	*out = m;
	return 0;
}

int shardmap__hamt_put(struct shardmap__txn *t, struct shardmap__hamt *h, uint64_t hash,
		       const char *key, const void *value, const void **old)
{
	static const char absent; /* marks "no entry was replaced" even for NULL values */
	const void *replaced = &absent;
	struct put p = {t, h, entry_slot(key, value), hash, &replaced};
	struct hamt_node *root;
	if (h->root == NULL) {
		root = node_new(t, chunk_bit(hash, 0), 1);
		if (root == NULL)
			return SHARDMAP_ENOMEM;
		root->slot[0] = p.e;
	} else {
		int rc = put_rec(&p, h->root, 0, &root);
		if (rc != 0)
			return rc;
	}
	h->root = root;
	if (replaced == &absent) {
		h->count++;
		replaced = NULL;
	}
	if (old != NULL)
		*old = replaced;
	return 0;
}

/* ------------------------------------------------------------------ del */

enum del_kind { DEL_NODE, DEL_ENTRY, DEL_EMPTY };

/* What replaces a subtree after a removal: a node, a lone entry to pull up, or nothing. */
struct del_result {
	enum del_kind kind;
	struct hamt_node *node;
	struct hamt_slot entry;
};

static int retire_for_entry(struct shardmap__txn *t, struct hamt_node *n, const struct hamt_slot *e,
			    struct del_result *r)
{
	if (shardmap__txn_retire(t, n) != 0)
		return SHARDMAP_ENOMEM;
	r->kind = DEL_ENTRY;
	r->entry = *e;
	return 0;
}

static int node_result(struct hamt_node *m, struct del_result *r)
{
	if (m == NULL)
		return SHARDMAP_ENOMEM;
	r->kind = DEL_NODE;
	r->node = m;
	return 0;
}

static int del_collision(struct shardmap__txn *t, struct hamt_node *n, const char *key,
			 const void **old, struct del_result *r)
{
	for (unsigned i = 0; i < n->count; i++) {
		if (!is_entry_for(&n->slot[i], key))
			continue;
		*old = n->slot[i].value;
		if (n->count == 2)
			return retire_for_entry(t, n, &n->slot[1 - i], r);
		return node_result(without_slot(t, n, i, 0), r);
	}
	return SHARDMAP_ENOENT;
}

static int del_rec(struct shardmap__txn *t, struct hamt_node *n, unsigned shift, uint64_t hash,
		   const char *key, int is_root, const void **old, struct del_result *r)
{
	if (is_collision(n))
		return del_collision(t, n, key, old, r);
	uint32_t bit = chunk_bit(hash, shift);
	if (!(n->bitmap & bit))
		return SHARDMAP_ENOENT;
	unsigned i = slot_index(n->bitmap, bit);
	const struct hamt_slot *s = &n->slot[i];
	if (s->key != NULL) {
		if (strcmp(s->key, key) != 0)
			return SHARDMAP_ENOENT;
		*old = s->value;
		if (n->count == 1) { /* only the root can hold a single entry */
			if (shardmap__txn_retire(t, n) != 0)
				return SHARDMAP_ENOMEM;
			r->kind = DEL_EMPTY;
			return 0;
		}
		if (n->count == 2 && !is_root && n->slot[1 - i].key != NULL)
			return retire_for_entry(t, n, &n->slot[1 - i], r);
		return node_result(without_slot(t, n, i, bit), r);
	}
	struct del_result cr;
	struct hamt_node *child = (struct hamt_node *)s->value;
	int rc = del_rec(t, child, shift + HAMT_BITS, hash, key, 0, old, &cr);
	if (rc != 0)
		return rc;
	struct hamt_slot repl;
	if (cr.kind == DEL_NODE) {
		if (cr.node == child) /* changed in place, so n is owned too */
			return node_result(n, r);
		repl = child_slot(cr.node);
	} else {
		/* A child is never left empty: it held a child or two entries. */
		repl = cr.entry;
		if (n->count == 1 && !is_root)
			return retire_for_entry(t, n, &repl, r);
	}
	struct hamt_node *m = writable(t, n);
	if (m != NULL)
		m->slot[i] = repl;
	return node_result(m, r);
}

int shardmap__hamt_del(struct shardmap__txn *t, struct shardmap__hamt *h, uint64_t hash,
		       const char *key, const void **old)
{
	const void *removed = NULL;
	struct del_result r = {DEL_EMPTY, NULL, {NULL, NULL}};
	if (h->root == NULL)
		return SHARDMAP_ENOENT;
	int rc = del_rec(t, h->root, 0, hash, key, 1, &removed, &r);
	if (rc != 0)
		return rc;
	h->root = r.kind == DEL_EMPTY ? NULL : r.node;
	h->count--;
	if (old != NULL)
		*old = removed;
	return 0;
}

/* ------------------------------------------------------------------ bulk build */

struct build {
	struct shardmap__txn *t;
	const char *(*key_of)(const void *value);
	size_t count; /* distinct keys placed so far */
};

static struct hamt_slot item_slot(const struct build *bd, const struct shardmap__hamt_item *it)
{
	return entry_slot(bd->key_of(it->value), it->value);
}

/* Order a group of equal hashes by key, then by position in the input (kept in .hash while
 * the group is sorted: the group's hash is known). */
static int cmp_key_pos(const void *a, const void *b, void *ctx)
{
	const struct build *bd = ctx;
	const struct shardmap__hamt_item *x = a, *y = b;
	int c = strcmp(bd->key_of(x->value), bd->key_of(y->value));
	return c ? c : (x->hash > y->hash) - (x->hash < y->hash);
}

/* The slot for a[0..n), n >= 2 items of one hash: the latest item of each key survives; one
 * survivor is an entry, more share a collision node. */
static int build_collision(struct build *bd, struct shardmap__hamt_item *a, size_t n,
			   struct hamt_slot *out)
{
	uint64_t hash = a[0].hash;
	for (size_t i = 0; i < n; i++)
		a[i].hash = i;
	qsort_r(a, n, sizeof *a, cmp_key_pos, bd);
	size_t u = 0;
	for (size_t i = 0; i < n; i++) {
		if (i + 1 < n && strcmp(bd->key_of(a[i].value), bd->key_of(a[i + 1].value)) == 0)
			continue; /* a later item has this key */
		a[u++] = a[i];
	}
	for (size_t i = 0; i < u; i++)
		a[i].hash = hash;
	bd->count += u;
	if (u == 1) {
		*out = item_slot(bd, &a[0]);
		return 0;
	}
	if (u > HAMT_CAP_MAX)
		return SHARDMAP_ENOMEM; /* as with_slot: more keys of one hash than a node holds */
	struct hamt_node *c = node_new(bd->t, 0, (uint32_t)u);
	if (c == NULL)
		return SHARDMAP_ENOMEM;
	for (size_t i = 0; i < u; i++)
		c->slot[i] = item_slot(bd, &a[i]);
	*out = child_slot(c);
	return 0;
}

static int build_node(struct build *bd, struct shardmap__hamt_item *a,
		      struct shardmap__hamt_item *b, size_t n, unsigned shift,
		      struct hamt_node **out);

/* The slot for a[0..n) (n >= 1 items that agree on the hash bits below shift); b is scratch
 * of the same length. */
static int build_slot(struct build *bd, struct shardmap__hamt_item *a,
		      struct shardmap__hamt_item *b, size_t n, unsigned shift,
		      struct hamt_slot *out)
{
	if (n == 1) {
		bd->count++;
		*out = item_slot(bd, &a[0]);
		return 0;
	}
	size_t same = 1;
	while (same < n && a[same].hash == a[0].hash)
		same++;
	if (same == n)
		return build_collision(bd, a, n, out);
	struct hamt_node *child;
	int rc = build_node(bd, a, b, n, shift, &child);
	if (rc == 0)
		*out = child_slot(child);
	return rc;
}

static inline unsigned chunk_of(const struct shardmap__hamt_item *it, unsigned shift)
{
	return (unsigned)(it->hash >> shift) & HAMT_MASK;
}

/* Groups at most this big are ordered by an insertion sort in place (most nodes of a big
 * trie are small: a counting sort's per-node setup would cost more than the sorting). */
#define BUILD_SMALL 24

/* The bitmap node at level shift for a[0..n): the items ordered by their chunk at shift,
 * stably (so equal keys keep their input order), then one slot per chunk present. A large
 * group is partitioned into b by a counting sort and its slots built from there, with a as
 * their scratch; a small one is sorted in place. */
static int build_node(struct build *bd, struct shardmap__hamt_item *a,
		      struct shardmap__hamt_item *b, size_t n, unsigned shift,
		      struct hamt_node **out)
{
	struct shardmap__hamt_item *src = a, *scratch = b;
	if (n <= BUILD_SMALL) {
		for (size_t i = 1; i < n; i++) {
			struct shardmap__hamt_item x = a[i];
			size_t j = i;
			for (; j > 0 && chunk_of(&a[j - 1], shift) > chunk_of(&x, shift); j--)
				a[j] = a[j - 1];
			a[j] = x;
		}
	} else {
		size_t at[HAMT_WAY + 1] = {0};
		for (size_t i = 0; i < n; i++)
			at[chunk_of(&a[i], shift) + 1]++;
		for (unsigned c = 0; c < HAMT_WAY; c++)
			at[c + 1] += at[c];
		for (size_t i = 0; i < n; i++)
			b[at[chunk_of(&a[i], shift)]++] = a[i];
		src = b;
		scratch = a;
	}
	uint32_t bitmap = 0;
	for (size_t i = 0; i < n; i++)
		bitmap |= 1u << chunk_of(&src[i], shift);
	struct hamt_node *nd = node_new(bd->t, bitmap, popcount32(bitmap));
	if (nd == NULL)
		return SHARDMAP_ENOMEM;
	unsigned k = 0;
	for (size_t i = 0, j; i < n; i = j) {
		unsigned c = chunk_of(&src[i], shift);
		for (j = i + 1; j < n && chunk_of(&src[j], shift) == c; j++)
			;
		int rc =
		    build_slot(bd, src + i, scratch + i, j - i, shift + HAMT_BITS, &nd->slot[k++]);
		if (rc != 0)
			return rc;
	}
	*out = nd;
	return 0;
}

int shardmap__hamt_build(struct shardmap__txn *t, struct shardmap__hamt *h,
			 struct shardmap__hamt_item *items, size_t n,
			 const char *(*key_of)(const void *value))
{
	if (h->root != NULL || h->count != 0 || (n > 0 && items == NULL) || key_of == NULL)
		return SHARDMAP_EINVAL;
	if (n == 0)
		return 0;
	/* The partition's other half: transient, so plain heap memory (still counted, and
	 * failed by the out-of-memory test hook), not the map's arena. */
	struct shardmap__mem heap;
	shardmap__mem_init(&heap, 0);
	struct shardmap__hamt_item *tmp =
	    n <= SIZE_MAX / sizeof *tmp ? shardmap__alloc(&heap, n * sizeof *tmp) : NULL;
	if (tmp == NULL)
		return SHARDMAP_ENOMEM;
	struct build bd = {t, key_of, 0};
	struct hamt_node *root;
	int rc = build_node(&bd, items, tmp, n, 0, &root);
	shardmap__free(&heap, tmp);
	shardmap__mem_fini(&heap);
	if (rc != 0)
		return rc;
	h->root = root;
	h->count = bd.count;
	return 0;
}

/* ------------------------------------------------------------------ walking */

static int foreach_rec(const struct hamt_node *n,
		       int (*fn)(void *ctx, const char *key, const void *value), void *ctx)
{
	for (uint32_t i = 0; i < n->count; i++) {
		const struct hamt_slot *s = &n->slot[i];
		int rc = s->key ? fn(ctx, s->key, s->value) : foreach_rec(s->value, fn, ctx);
		if (rc != 0)
			return rc;
	}
	return 0;
}

int shardmap__hamt_foreach(const struct shardmap__hamt *h,
			   int (*fn)(void *ctx, const char *key, const void *value), void *ctx)
{
	return h->root ? foreach_rec(h->root, fn, ctx) : 0;
}

static void free_rec(struct shardmap__mem *mem, struct hamt_node *n)
{
	for (uint32_t i = 0; i < n->count; i++)
		if (n->slot[i].key == NULL)
			free_rec(mem, (struct hamt_node *)n->slot[i].value);
	shardmap__free(mem, n);
}

void shardmap__hamt_free_nodes(struct shardmap__mem *mem, struct shardmap__hamt *h)
{
	if (h->root != NULL)
		free_rec(mem, h->root);
	h->root = NULL;
	h->count = 0;
}

/* ------------------------------------------------------------------ checking (tests) */

#define HAMT_CHECK(cond)                                                                           \
	do {                                                                                       \
		if (!(cond))                                                                       \
			return __LINE__;                                                           \
	} while (0)

/* Check the subtree n reached through hash prefix `prefix` (its low `shift` bits). */
static int check_rec(const struct shardmap__hamt *h, const struct hamt_node *n, unsigned shift,
		     uint64_t prefix, int is_root, size_t *count)
{
	uint64_t low = shift >= 64 ? UINT64_MAX : ((uint64_t)1 << shift) - 1;
	HAMT_CHECK(n->count <= n->cap);
	if (is_collision(n)) {
		HAMT_CHECK(!is_root && n->count >= 2);
		uint64_t hash = key_hash(h, n->slot[0].key);
		for (uint32_t i = 0; i < n->count; i++) {
			HAMT_CHECK(n->slot[i].key != NULL);
			HAMT_CHECK(key_hash(h, n->slot[i].key) == hash);
			HAMT_CHECK((hash & low) == prefix);
			for (uint32_t j = 0; j < i; j++)
				HAMT_CHECK(strcmp(n->slot[i].key, n->slot[j].key) != 0);
		}
		*count += n->count;
		return 0;
	}
	HAMT_CHECK(shift < 64);
	HAMT_CHECK(n->cap <= HAMT_WAY);
	HAMT_CHECK(popcount32(n->bitmap) == n->count);
	int has_child = 0;
	uint32_t bits = n->bitmap;
	for (uint32_t i = 0; i < n->count; i++, bits &= bits - 1) {
		const struct hamt_slot *s = &n->slot[i];
		uint64_t c = (uint64_t)__builtin_ctz(bits);
		uint64_t sub_prefix = prefix | c << shift;
		if (s->key != NULL) {
			uint64_t mask = shift + HAMT_BITS >= 64
					    ? UINT64_MAX
					    : ((uint64_t)1 << (shift + HAMT_BITS)) - 1;
			HAMT_CHECK((key_hash(h, s->key) & mask) == sub_prefix);
			(*count)++;
			continue;
		}
		has_child = 1;
		const struct hamt_node *ch = s->value;
		HAMT_CHECK(ch != NULL);
		int rc = check_rec(h, ch, shift + HAMT_BITS, sub_prefix, 0, count);
		if (rc != 0)
			return rc;
	}
	/* Canonical form: a lone entry below the root would have been pulled up. */
	HAMT_CHECK(is_root || has_child || n->count >= 2);
	return 0;
}

int shardmap__hamt_check(const struct shardmap__hamt *h)
{
	size_t count = 0;
	if (h->root == NULL) {
		HAMT_CHECK(h->count == 0);
		return 0;
	}
	int rc = check_rec(h, h->root, 0, 0, 1, &count);
	if (rc != 0)
		return rc;
	HAMT_CHECK(count == h->count);
	return 0;
}
