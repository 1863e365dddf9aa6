/*
 * txn.c - the copy-on-write transaction that derives one map version from the previous one.
 *
 * For apply.c (through hamt.c and btree.c): every object a transaction allocates is recorded
 * on its created list and stamped, if it is a node, with the transaction's generation; every
 * object of the published version it replaces goes on its retired list. Abort frees the
 * created list; commit hands the retired list to the caller, who frees it once no reader can
 * see the old version any more. Both vectors grow through shardmap__alloc, so out-of-memory
 * injection reaches them too; a failed push changes nothing and the caller aborts. The
 * created list's array comes from the plain heap, not the map's arena: it lives only as long
 * as the transaction (a bootstrap's holds a pointer per record, 8 MB for a million shards),
 * and in the arena its pages would stay resident after the commit freed it.
 *
 * Not thread-safe: one transaction belongs to one writer.
 */
#include <stdatomic.h>
#include <string.h>

#include "shardmap.h"
#include "txn.h"

/* Where created lists' arrays come from (no arena: plain, counted heap memory). */
static struct shardmap__mem heap;

/* Relaxed: generations need only be unique, which the atomic increment guarantees; nothing is
 * published through this counter. It starts the sequence at 1, so no transaction has gen 0. */
static atomic_uint_fast64_t last_gen;

void shardmap__txn_init(struct shardmap__txn *t, struct shardmap__mem *mem)
{
	memset(t, 0, sizeof *t);
	t->mem = mem;
	t->gen = atomic_fetch_add_explicit(&last_gen, 1, memory_order_relaxed) + 1;
}

int shardmap__ptrvec_push(struct shardmap__mem *mem, struct shardmap__ptrvec *v, void *p)
{
	if (v->n == v->cap) {
		size_t cap = v->cap ? 2 * v->cap : 16;
		void **nv = shardmap__alloc(mem, cap * sizeof *nv);
		if (nv == NULL)
			return SHARDMAP_ENOMEM;
		if (v->n)
			memcpy(nv, v->v, v->n * sizeof *nv);
		shardmap__free(mem, v->v);
		v->v = nv;
		v->cap = cap;
	}
	v->v[v->n++] = p;
	return 0;
}

/* Free the vector's array, not its objects. */
static void ptrvec_release(struct shardmap__mem *mem, struct shardmap__ptrvec *v)
{
	shardmap__free(mem, v->v);
	memset(v, 0, sizeof *v);
}

void shardmap__ptrvec_free_all(struct shardmap__mem *mem, struct shardmap__ptrvec *v)
{
	for (size_t i = 0; i < v->n; i++)
		shardmap__free(mem, v->v[i]);
	ptrvec_release(mem, v);
}

/* Record a fresh allocation on the created list, or free it if the list cannot grow. */
static void *created(struct shardmap__txn *t, void *p)
{
	if (p != NULL && shardmap__ptrvec_push(&heap, &t->created, p) != 0) {
		shardmap__free(t->mem, p);
		return NULL;
	}
	return p;
}

void *shardmap__txn_alloc(struct shardmap__txn *t, size_t size)
{
	return created(t, shardmap__alloc(t->mem, size));
}

void *shardmap__txn_node(struct shardmap__txn *t, size_t size)
{
	struct shardmap__node_hdr *n = shardmap__txn_alloc(t, size);
	if (n != NULL)
		n->gen = t->gen;
	return n;
}

void *shardmap__txn_node_aligned(struct shardmap__txn *t, size_t size, size_t align)
{
	struct shardmap__node_hdr *n = created(t, shardmap__alloc_aligned(t->mem, align, size));
	if (n != NULL)
		n->gen = t->gen;
	return n;
}

int shardmap__txn_retire(struct shardmap__txn *t, void *obj)
{
	return shardmap__ptrvec_push(t->mem, &t->retired, obj);
}

void shardmap__txn_abort(struct shardmap__txn *t)
{
	/* Objects created and retired here are freed once, through the created list; every
	 * other retired object still belongs to the published version. */
	for (size_t i = 0; i < t->created.n; i++)
		shardmap__free(t->mem, t->created.v[i]);
	ptrvec_release(&heap, &t->created);
	ptrvec_release(t->mem, &t->retired);
}

void shardmap__txn_commit(struct shardmap__txn *t, struct shardmap__ptrvec *out)
{
	/* Objects created and retired here are freed once, later, through the retired list. */
	ptrvec_release(&heap, &t->created);
	*out = t->retired;
	memset(&t->retired, 0, sizeof t->retired);
}
