/*
 * hamt.c - a persistent hash array mapped trie: string key -> record pointer.
 *
 * For the map's stream directory, cell table and per-stream shard-by-id index (hamt.h). A key
 * is found by its 64-bit hash (XXH3-64), five bits per level, in 32-way nodes that store only
 * their present slots, located by a popcount of the node's bitmap. A slot is either an entry
 * (hash, key, value) or a child node (key NULL). Keys whose hashes are entirely equal share a
 * collision node, a plain list scanned by key.
 *
 * Canonical form, kept by every change: the root is a bitmap node (or NULL when empty); every
 * other bitmap node holds a child or at least two entries (a lone entry is pulled up into its
 * parent); a collision node holds at least two entries.
 *
 * Changes are copy-on-write through a transaction (txn.h). A node the transaction does not own
 * is copied and the original retired; an owned node is changed in place. Each change does
 * every step that can fail (allocating, retiring) before its first write to a node reachable
 * from h, so on SHARDMAP_ENOMEM h still holds exactly what it held before the call (the
 * transaction must still abort: its retired list may name nodes h uses).
 *
 * Readers (get, foreach) take no lock and write nothing. A trie is published only as part of
 * a map version (map.c: one release store, loaded by readers inside an epoch section). A
 * published node is never written again: a writer changes in place only nodes its own
 * transaction created, unreachable until their version is published. Replaced nodes are
 * retired, and the map frees them only after the grace period of the version that used them.
 */
#include <string.h>
#include <xxhash.h>

#include "hamt.h"
#include "shardmap.h"

#define HAMT_BITS 5
#define HAMT_MASK 31u

struct hamt_slot {
	uint64_t hash;	 /* entry: the key's hash; child: its collision hash, if it is one */
	const char *key; /* NULL: value is a child node */
	const void *value;
};

struct hamt_node {
	struct shardmap__node_hdr hdr;
	uint32_t bitmap; /* bit c set: slot for hash chunk c present; 0 marks a collision node */
	uint32_t count;	 /* slots in use */
	struct hamt_slot slot[];
};

uint64_t shardmap__hamt_hash(const char *key)
{
	return XXH3_64bits(key, strlen(key));
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

static inline int slot_matches(const struct hamt_slot *s, uint64_t hash, const char *key)
{
	return s->key != NULL && s->hash == hash && strcmp(s->key, key) == 0;
}

const void *shardmap__hamt_get(const struct shardmap__hamt *h, uint64_t hash, const char *key)
{
	const struct hamt_node *n = h->root;
	for (unsigned shift = 0; n != NULL; shift += HAMT_BITS) {
		if (is_collision(n)) {
			for (uint32_t i = 0; i < n->count; i++)
				if (slot_matches(&n->slot[i], hash, key))
					return n->slot[i].value;
			return NULL;
		}
		uint32_t bit = chunk_bit(hash, shift);
		if (!(n->bitmap & bit))
			return NULL;
		const struct hamt_slot *s = &n->slot[slot_index(n->bitmap, bit)];
		if (s->key != NULL)
			return slot_matches(s, hash, key) ? s->value : NULL;
		n = s->value;
	}
	return NULL;
}

static struct hamt_node *node_new(struct shardmap__txn *t, uint32_t bitmap, uint32_t count)
{
	struct hamt_node *n =
	    shardmap__txn_node(t, sizeof *n + (size_t)count * sizeof(struct hamt_slot));
	if (n != NULL) {
		n->bitmap = bitmap;
		n->count = count;
	}
	return n;
}

static struct hamt_slot child_slot(const struct hamt_node *child)
{
	struct hamt_slot s = {is_collision(child) ? child->slot[0].hash : 0, NULL, child};
	return s;
}

/* Replace n by a node of the same shape that the transaction owns: n itself when owned,
 * otherwise a copy (n retired). NULL on failure, with nothing reachable changed. */
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
	struct hamt_node *m = node_new(t, n->bitmap & ~bit, n->count - 1);
	if (m == NULL)
		return NULL;
	memcpy(m->slot, n->slot, i * sizeof n->slot[0]);
	memcpy(&m->slot[i], &n->slot[i + 1], (n->count - i - 1) * sizeof n->slot[0]);
	if (shardmap__txn_retire(t, n) != 0)
		return NULL;
	return m;
}

/* A new node that replaces n with s inserted as slot i (nodes never grow in place). */
static struct hamt_node *with_slot(struct shardmap__txn *t, struct hamt_node *n, unsigned i,
				   uint32_t bit, const struct hamt_slot *s)
{
	struct hamt_node *m = node_new(t, n->bitmap | bit, n->count + 1);
	if (m == NULL)
		return NULL;
	memcpy(m->slot, n->slot, i * sizeof n->slot[0]);
	m->slot[i] = *s;
	memcpy(&m->slot[i + 1], &n->slot[i], (n->count - i) * sizeof n->slot[0]);
	if (shardmap__txn_retire(t, n) != 0)
		return NULL;
	return m;
}

/* The subtree at level shift holding two slots with different hashes a and b (an entry or a
 * collision node each). */
static struct hamt_node *make_pair(struct shardmap__txn *t, unsigned shift,
				   const struct hamt_slot *a, const struct hamt_slot *b)
{
	uint32_t ba = chunk_bit(a->hash, shift), bb = chunk_bit(b->hash, shift);
	if (ba == bb) {
		struct hamt_node *sub = make_pair(t, shift + HAMT_BITS, a, b);
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

static int put_collision(struct shardmap__txn *t, struct hamt_node *n, unsigned shift,
			 const struct hamt_slot *e, const void **old, struct hamt_node **out)
{
	if (n->slot[0].hash != e->hash) {
		/* A different hash reached this collision node: push it one level down. */
		struct hamt_slot c = child_slot(n);
		*out = make_pair(t, shift, &c, e);
		return *out ? 0 : SHARDMAP_ENOMEM;
	}
	for (uint32_t i = 0; i < n->count; i++) {
		if (slot_matches(&n->slot[i], e->hash, e->key)) {
			struct hamt_node *m = writable(t, n);
			if (m == NULL)
				return SHARDMAP_ENOMEM;
			*old = m->slot[i].value;
			m->slot[i] = *e;
			*out = m;
			return 0;
		}
	}
	*out = with_slot(t, n, n->count, 0, e);
	return *out ? 0 : SHARDMAP_ENOMEM;
}

/* Put e into the subtree n at level shift; *out gets the node that replaces n (n itself when
 * changed in place). */
static int put_rec(struct shardmap__txn *t, struct hamt_node *n, unsigned shift,
		   const struct hamt_slot *e, const void **old, struct hamt_node **out)
{
	if (is_collision(n))
		return put_collision(t, n, shift, e, old, out);
	uint32_t bit = chunk_bit(e->hash, shift);
	unsigned i = slot_index(n->bitmap, bit);
	if (!(n->bitmap & bit)) {
		*out = with_slot(t, n, i, bit, e);
		return *out ? 0 : SHARDMAP_ENOMEM;
	}
	const struct hamt_slot *s = &n->slot[i];
	struct hamt_slot repl;
	if (s->key == NULL) {
		struct hamt_node *child = (struct hamt_node *)s->value, *nc;
		int rc = put_rec(t, child, shift + HAMT_BITS, e, old, &nc);
		if (rc != 0)
			return rc;
		if (nc == child) { /* changed in place, so n is owned too */
			*out = n;
			return 0;
		}
		repl = child_slot(nc);
	} else if (s->hash == e->hash && strcmp(s->key, e->key) == 0) {
		*old = s->value;
		repl = *e;
	} else {
		struct hamt_node *sub = s->hash == e->hash ? make_collision(t, s, e)
							   : make_pair(t, shift + HAMT_BITS, s, e);
		if (sub == NULL)
			return SHARDMAP_ENOMEM;
		repl = child_slot(sub);
	}
	struct hamt_node *m = writable(t, n);
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
	struct hamt_slot e = {hash, key, value};
	struct hamt_node *root;
	if (h->root == NULL) {
		root = node_new(t, chunk_bit(hash, 0), 1);
		if (root == NULL)
			return SHARDMAP_ENOMEM;
		root->slot[0] = e;
	} else {
		int rc = put_rec(t, h->root, 0, &e, &replaced, &root);
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

static int del_collision(struct shardmap__txn *t, struct hamt_node *n, uint64_t hash,
			 const char *key, const void **old, struct del_result *r)
{
	for (unsigned i = 0; i < n->count; i++) {
		if (!slot_matches(&n->slot[i], hash, key))
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
		return del_collision(t, n, hash, key, old, r);
	uint32_t bit = chunk_bit(hash, shift);
	if (!(n->bitmap & bit))
		return SHARDMAP_ENOENT;
	unsigned i = slot_index(n->bitmap, bit);
	const struct hamt_slot *s = &n->slot[i];
	if (s->key != NULL) {
		if (!slot_matches(s, hash, key))
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
	struct del_result r;
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
static int check_rec(const struct hamt_node *n, unsigned shift, uint64_t prefix, int is_root,
		     size_t *count)
{
	uint64_t low = shift >= 64 ? UINT64_MAX : ((uint64_t)1 << shift) - 1;
	if (is_collision(n)) {
		HAMT_CHECK(!is_root && n->count >= 2);
		for (uint32_t i = 0; i < n->count; i++) {
			HAMT_CHECK(n->slot[i].key != NULL);
			HAMT_CHECK(n->slot[i].hash == n->slot[0].hash);
			HAMT_CHECK((n->slot[i].hash & low) == prefix);
			for (uint32_t j = 0; j < i; j++)
				HAMT_CHECK(strcmp(n->slot[i].key, n->slot[j].key) != 0);
		}
		*count += n->count;
		return 0;
	}
	HAMT_CHECK(shift < 64);
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
			HAMT_CHECK((s->hash & mask) == sub_prefix);
			(*count)++;
			continue;
		}
		has_child = 1;
		const struct hamt_node *ch = s->value;
		HAMT_CHECK(ch != NULL);
		HAMT_CHECK(!is_collision(ch) || s->hash == ch->slot[0].hash);
		int rc = check_rec(ch, shift + HAMT_BITS, sub_prefix, 0, count);
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
	int rc = check_rec(h->root, 0, 0, 1, &count);
	if (rc != 0)
		return rc;
	HAMT_CHECK(count == h->count);
	return 0;
}
