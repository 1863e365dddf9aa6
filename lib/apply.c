/*
 * apply.c - the apply engine: a batch of record-level ops applied in order to a private
 * copy-on-write version, then the invariants checked, all-or-nothing.
 *
 * For shardmap_apply (one delta onto the published version) and the private builder (a
 * series of deltas onto an empty version); map.c owns the version rules' outcome,
 * committing and publishing. Nothing here touches the published version: every change goes
 * through the transaction (txn.h), which copies what it changes and retires the originals,
 * so an error at any point, out-of-memory included, is undone by aborting the transaction.
 *
 * Op semantics: put_stream creates a stream or changes its hash function (its shards stay);
 * delete_stream drops a stream and all its shards; put_shard inserts or replaces a shard by
 * id (its stream must exist at that point of the batch); delete_shard and delete_cell need
 * the record to exist; put_cell inserts or replaces a cell (endpoints replaced).
 *
 * Invariants are checked once, at the end of the batch, so the ops of a batch may come in
 * any order (a store's watch delivers them in key order): every shard's owner cell exists,
 * and the open shards of every stream the batch touched partition 0 .. 2^128-1 exactly. The
 * coverage check is incremental; see check_stream for why looking only around the starts a
 * batch changed is enough. A violation names the lowest op index among those that caused
 * one, so the report does not depend on hash order.
 *
 * Bulk path: a stream that a large batch creates (a snapshot, a bootstrap, a big
 * create-stream) is not built op by op. Its put_shard ops make their records and do their
 * accounting (counts, digest, owner references) at once, but the records only queue up; at
 * the end of the batch (or before an op that must see the stream's trees: delete_shard or
 * delete_stream on it) the queue is flushed: the by-id index is built in one radix pass
 * (shardmap__hamt_build, later puts of an id winning as they would op by op), the open
 * shards are sorted by start (usually a no-op check: snapshots list them in start order)
 * and the B+-tree is built bottom-up with full nodes (shardmap__btree_build), and coverage
 * is checked in one linear pass over the sorted starts, attributing each violation to the
 * op the incremental check would name. The result is the version op-by-op apply would
 * build (tests/test_bulk.c compares the two paths' answers), in a fraction of the time and
 * without copying or retiring a node. Only contrived batches that are refused either way
 * (several open shards put at one start and some of them replaced, a shard replaced while
 * its owner cell is missing) can have another op of theirs named.
 *
 * Bookkeeping for the checks (touched streams, changed starts, references to missing cells)
 * lives in a scratch transaction that is always aborted, and the bulk queue and a flush's
 * arrays are freed before the apply returns. All of it is counted and failed by the
 * out-of-memory tests like map memory, but comes from the heap rather than the map's arena,
 * so that transient megabytes do not linger in the arena's resident pages after a bootstrap.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "apply.h"
#include "version.h"

#define NO_OP SIZE_MAX

/* A growable array in scratch memory (old arrays stay in the scratch transaction until its
 * abort: at most twice the final size). */
struct vec {
	void *v;
	size_t n, cap;
};

/* A start in a stream's open tree that this batch inserted, replaced or removed. */
struct dirty {
	shardmap_hash start;
	size_t op;
};

/* An open shard pushed out of the open tree by another open shard with the same start. */
struct displaced {
	const struct shardmap__shard *shard;
	size_t op;
};

/* A record a bulk stream's put_shard made, waiting for the flush: an entry of the batch's
 * queue (apply_ctx.pend), linked to the next entry of the same stream. Ops are numbered in
 * 32 bits (larger batches are not bulk). */
#define NO_PEND UINT32_MAX
struct pending {
	const struct shardmap__shard *shard;
	uint32_t op;
	uint32_t next; /* NO_PEND: the stream's last */
};

/* An open record of a bulk stream during its flush, sorted by start. (The transient arrays
 * of a flush are kept small: a million-shard bootstrap touches every byte of them, and
 * fresh pages cost more than the work done in them.) */
struct open_rec {
	const struct shardmap__shard *shard;
	uint32_t op;
	uint32_t gone; /* replaced by a later put of the same id */
};

/* A stream this batch changed. */
struct touched {
	const char *name;     /* the op's copy: valid for the whole apply */
	size_t last_op;	      /* the last op that changed the stream */
	struct vec dirty;     /* struct dirty */
	struct vec displaced; /* struct displaced */
	int bulk;	      /* created by this (large) batch: put_shard queues its records */
	int checked;	      /* coverage already checked (by the end-of-batch flush) */
	uint32_t head, tail;  /* its queued records in the batch's queue, in op order */
	size_t n_pending;
	struct touched *next;
};

/* References to a cell that does not exist at this point of the batch: shards that named a
 * missing owner, or still named a cell when it was deleted. Must be zero at the end. */
struct orphans {
	const char *cell_id;
	uint64_t count;
	size_t op;		    /* the op that made the first of them */
	int deleted_cell;	    /* 1: left by delete_cell; 0: named by put_shard */
	const char *shard, *stream; /* the first shard that named the missing cell */
	struct orphans *next;
};

struct apply_ctx {
	struct shardmap__txn *t;       /* the version's transaction */
	struct shardmap__version *v;   /* the private version */
	struct shardmap__ptrvec *dead; /* streams deleted by the batch */
	const shardmap_delta *d;
	size_t op;		   /* index of the op being applied */
	int bulk_ok;		   /* the batch is large: streams it creates go bulk */
	struct shardmap__mem heap; /* plain heap memory for the scratch */
	struct pending *pend;	   /* the queue of bulk records (heap; d->n_ops entries) */
	size_t n_pend;
	struct shardmap__txn scratch; /* bookkeeping, always aborted */
	/* The stream the last shard op named (consecutive ops mostly name the same one):
	 * name points into the record; reset by every stream op. */
	const char *last_name;
	struct shardmap__stream *last_st;
	struct touched *last_tc;
	struct shardmap__hamt touched; /* stream name -> struct touched (scratch) */
	struct shardmap__hamt orphans; /* cell id -> struct orphans (scratch) */
	struct touched *touched_list;
	struct orphans *orphans_list;
	shardmap_error *why;
	shardmap_error violation; /* the end-of-batch violation with the lowest op index */
};

/* ---------------------------------------------------------------- errors */

static const char *op_name(const struct apply_ctx *c, size_t op)
{
	return shardmap__op_name(c->d->ops[op].kind);
}

/* Fail the op being applied: "op N kind: <message>". Returns code. */
static int fail(struct apply_ctx *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(struct apply_ctx *c, int code, const char *fmt, ...)
{
	char msg[sizeof c->why->message];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	return shardmap__error_set(c->why, code, c->op, "op %zu %s: %s", c->op, op_name(c, c->op),
				   msg);
}

static int nomem(struct apply_ctx *c)
{
	return fail(c, SHARDMAP_ENOMEM, "out of memory");
}

/* Record an end-of-batch violation caused by op; keeps the one with the lowest op index. */
static void violation(struct apply_ctx *c, size_t op, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void violation(struct apply_ctx *c, size_t op, const char *fmt, ...)
{
	if (c->violation.code != 0 && c->violation.op_index <= op)
		return;
	char msg[sizeof c->violation.message];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	shardmap__error_set(&c->violation, SHARDMAP_ECONFLICT, op, "op %zu %s: %s", op,
			    op_name(c, op), msg);
}

/* ---------------------------------------------------------------- 128-bit helpers */

static const shardmap_hash HASH_MAX = {UINT64_MAX, UINT64_MAX};

static int hash_eq(shardmap_hash a, shardmap_hash b)
{
	return a.hi == b.hi && a.lo == b.lo;
}

static shardmap_hash hash_inc(shardmap_hash h)
{
	h.lo++;
	h.hi += h.lo == 0;
	return h;
}

static shardmap_hash hash_dec(shardmap_hash h)
{
	h.hi -= h.lo == 0;
	h.lo--;
	return h;
}

/* Decimal text of h in a caller's buffer (for messages). */
static const char *dec(shardmap_hash h, char buf[SHARDMAP_HASH_DECIMAL_MAX])
{
	shardmap_hash_format(h, buf);
	return buf;
}

/* ---------------------------------------------------------------- scratch bookkeeping */

static int vec_push(struct apply_ctx *c, struct vec *v, const void *item, size_t size)
{
	if (v->n == v->cap) {
		size_t cap = v->cap ? v->cap * 2 : 8;
		void *nv = shardmap__txn_alloc(&c->scratch, cap * size);
		if (nv == NULL)
			return SHARDMAP_ENOMEM;
		if (v->n)
			memcpy(nv, v->v, v->n * size);
		v->v = nv;
		v->cap = cap;
	}
	memcpy((char *)v->v + v->n * size, item, size);
	v->n++;
	return SHARDMAP_OK;
}

/* The touched entry of stream `name` (created on first use). NULL when out of memory. */
static struct touched *touch(struct apply_ctx *c, const char *name, uint64_t hash)
{
	struct touched *tc = (struct touched *)shardmap__hamt_get(&c->touched, hash, name);
	if (tc == NULL) {
		tc = shardmap__txn_alloc(&c->scratch, sizeof *tc);
		if (tc == NULL)
			return NULL;
		memset(tc, 0, sizeof *tc);
		tc->name = name;
		if (shardmap__hamt_put(&c->scratch, &c->touched, hash, name, tc, NULL) != 0)
			return NULL;
		tc->next = c->touched_list;
		c->touched_list = tc;
	}
	tc->last_op = c->op;
	return tc;
}

static int dirty_at(struct apply_ctx *c, struct touched *tc, shardmap_hash start, size_t op)
{
	struct dirty d = {start, op};
	return vec_push(c, &tc->dirty, &d, sizeof d);
}

static int mark_dirty(struct apply_ctx *c, struct touched *tc, shardmap_hash start)
{
	return dirty_at(c, tc, start, c->op);
}

/* The orphans entry of cell `id` (created with count 0 on first use). NULL when out of
 * memory. */
static struct orphans *orphans_of(struct apply_ctx *c, const char *id, uint64_t hash)
{
	struct orphans *o = (struct orphans *)shardmap__hamt_get(&c->orphans, hash, id);
	if (o == NULL) {
		o = shardmap__txn_alloc(&c->scratch, sizeof *o);
		if (o == NULL)
			return NULL;
		memset(o, 0, sizeof *o);
		o->cell_id = id;
		if (shardmap__hamt_put(&c->scratch, &c->orphans, hash, id, o, NULL) != 0)
			return NULL;
		o->next = c->orphans_list;
		c->orphans_list = o;
	}
	return o;
}

/* ---------------------------------------------------------------- copy on write */

/* The stream `name` of the private version, copied for this transaction if it is still
 * shared with the published one; *out NULL when there is no such stream. */
static int stream_for_write(struct apply_ctx *c, const char *name, uint64_t hash,
			    struct shardmap__stream **out)
{
	const struct shardmap__stream *st = shardmap__hamt_get(&c->v->streams, hash, name);
	*out = NULL;
	if (st == NULL)
		return SHARDMAP_OK;
	if (st->gen == c->t->gen) {
		*out = (struct shardmap__stream *)st;
		return SHARDMAP_OK;
	}
	struct shardmap__stream *cp = shardmap__stream_copy(c->t, st);
	if (cp == NULL || shardmap__hamt_put(c->t, &c->v->streams, hash, cp->name, cp, NULL) != 0 ||
	    shardmap__txn_retire(c->t, (void *)st) != 0)
		return nomem(c);
	*out = cp;
	return SHARDMAP_OK;
}

/* A private copy of cell entry e (or e itself if this transaction made it). */
static struct shardmap__cell_ent *ent_for_write(struct apply_ctx *c,
						const struct shardmap__cell_ent *e)
{
	if (e->gen == c->t->gen)
		return (struct shardmap__cell_ent *)e;
	struct shardmap__cell_ent *w = shardmap__txn_alloc(c->t, sizeof *w);
	if (w == NULL || shardmap__txn_retire(c->t, (void *)e) != 0)
		return NULL;
	*w = *e;
	w->gen = c->t->gen;
	return w;
}

/* Add delta (+1 or -1) to the number of shards naming cell `id` as owner. */
static int cell_ref(struct apply_ctx *c, const char *id, uint64_t hash, int delta,
		    const char *stream, const char *shard)
{
	const struct shardmap__cell_ent *e = shardmap__hamt_get(&c->v->cells, hash, id);
	if (e != NULL) {
		struct shardmap__cell_ent *w = ent_for_write(c, e);
		if (w == NULL)
			return nomem(c);
		if (w != e &&
		    shardmap__hamt_put(c->t, &c->v->cells, hash, w->cell->id, w, NULL) != 0)
			return nomem(c);
		w->refs += (uint64_t)(int64_t)delta;
		return SHARDMAP_OK;
	}
	struct orphans *o = orphans_of(c, id, hash);
	if (o == NULL)
		return nomem(c);
	if (o->count == 0 && delta > 0) {
		o->op = c->op;
		o->deleted_cell = 0;
		o->shard = shard;
		o->stream = stream;
	}
	o->count += (uint64_t)(int64_t)delta;
	return SHARDMAP_OK;
}

/* ---------------------------------------------------------------- shards */

/* Put back an open shard that another shard with the same start had pushed out of the open
 * tree, now that the start is free again (the batch may write its ops in any order). */
static int restore_displaced(struct apply_ctx *c, struct shardmap__stream *st, struct touched *tc,
			     shardmap_hash start)
{
	struct displaced *dp = tc->displaced.v;
	for (size_t i = 0; i < tc->displaced.n; i++) {
		const struct shardmap__shard *sh = dp[i].shard;
		if (!hash_eq(sh->start, start) || shardmap__stream_shard(st, sh->id) != sh)
			continue;
		dp[i] = dp[--tc->displaced.n];
		if (shardmap__btree_put(c->t, &st->open, start, sh, NULL) != 0)
			return nomem(c);
		return SHARDMAP_OK;
	}
	return SHARDMAP_OK;
}

/* Undo the digest share and owner reference of shard `old` and retire it. */
static int shard_retire(struct apply_ctx *c, struct shardmap__stream *st,
			const struct shardmap__shard *old)
{
	c->v->digest -= shardmap__shard_content_hash(st->name, old);
	int rc = cell_ref(c, old->owner_cell, old->cell_hash, -1, st->name, old->id);
	if (rc != 0)
		return rc;
	if (shardmap__txn_retire(c->t, (void *)old) != 0)
		return nomem(c);
	return SHARDMAP_OK;
}

/* Undo what shard `old` contributed to its stream and version (its trees aside). */
static int shard_uncount(struct apply_ctx *c, struct shardmap__stream *st,
			 const struct shardmap__shard *old)
{
	if (old->open) {
		st->n_open--;
		c->v->n_open--;
	} else {
		st->n_closed--;
		c->v->n_closed--;
	}
	return shard_retire(c, st, old);
}

/* Undo what shard `old` contributed (it was just replaced or removed in by_id). */
static int shard_gone(struct apply_ctx *c, struct shardmap__stream *st, struct touched *tc,
		      const struct shardmap__shard *old)
{
	int rc;
	if (old->open && shardmap__btree_get(&st->open, old->start) == old) {
		if (shardmap__btree_del(c->t, &st->open, old->start, NULL) != 0 ||
		    mark_dirty(c, tc, old->start) != 0)
			return nomem(c);
		if ((rc = restore_displaced(c, st, tc, old->start)) != 0)
			return rc;
	}
	return shard_uncount(c, st, old);
}

/* The N of a Kinesis-style id "shardId-NNNNNNNNNNNN" (12 digits), or -1. */
static int64_t kinesis_seq(const char *id)
{
	static const char prefix[] = "shardId-";
	if (strncmp(id, prefix, sizeof prefix - 1) != 0)
		return -1;
	int64_t n = 0;
	const char *p = id + sizeof prefix - 1;
	for (int i = 0; i < 12; i++, p++) {
		if (*p < '0' || *p > '9')
			return -1;
		n = n * 10 + (*p - '0');
	}
	return *p == '\0' ? n : -1;
}

/* Does name name the stream of the last shard op (which exists)? */
static int is_last_stream(const struct apply_ctx *c, const char *name)
{
	return c->last_st != NULL && strcmp(c->last_name, name) == 0;
}

/* The stream of a shard op, copied for writing, and its touched entry (last_op updated).
 * Consecutive ops naming the same stream reuse the previous op's answer. */
static int shard_stream(struct apply_ctx *c, const char *name, struct shardmap__stream **st,
			struct touched **tc)
{
	if (is_last_stream(c, name)) {
		*st = c->last_st;
		*tc = c->last_tc;
		(*tc)->last_op = c->op;
		return SHARDMAP_OK;
	}
	uint64_t hash = shardmap__hamt_hash(name);
	int rc = stream_for_write(c, name, hash, st);
	if (rc != 0)
		return rc;
	if (*st == NULL)
		return fail(c, SHARDMAP_ECONFLICT, "stream \"%s\" does not exist", name);
	if ((*tc = touch(c, name, hash)) == NULL)
		return nomem(c);
	c->last_name = (*st)->name;
	c->last_st = *st;
	c->last_tc = *tc;
	return SHARDMAP_OK;
}

/* What a new shard record adds to its stream and version, by-id and open tree aside. */
static int shard_added(struct apply_ctx *c, struct shardmap__stream *st,
		       const struct shardmap__shard *sh)
{
	if (sh->open) {
		st->n_open++;
		c->v->n_open++;
	} else {
		st->n_closed++;
		c->v->n_closed++;
	}
	c->v->digest += shardmap__shard_content_hash(st->name, sh);
	int64_t seq = kinesis_seq(sh->id);
	if (seq >= 0 && (uint64_t)seq + 1 > st->next_seq)
		st->next_seq = (uint64_t)seq + 1;
	return cell_ref(c, sh->owner_cell, sh->cell_hash, +1, st->name, sh->id);
}

/* Put sh into the stream's by-id index and open tree, op by op. */
static int shard_insert(struct apply_ctx *c, struct shardmap__stream *st, struct touched *tc,
			const struct shardmap__shard *sh)
{
	const void *old = NULL;
	int rc;
	if (shardmap__hamt_put(c->t, &st->by_id, shardmap__hamt_hash(sh->id), sh->id, sh, &old) !=
	    0)
		return nomem(c);
	if (old != NULL && (rc = shard_gone(c, st, tc, old)) != 0)
		return rc;
	if (sh->open) {
		const void *prev = NULL;
		if (shardmap__btree_put(c->t, &st->open, sh->start, sh, &prev) != 0 ||
		    mark_dirty(c, tc, sh->start) != 0)
			return nomem(c);
		struct displaced dp = {prev, c->op};
		if (prev != NULL && vec_push(c, &tc->displaced, &dp, sizeof dp) != 0)
			return nomem(c);
	}
	return SHARDMAP_OK;
}

/* Queue sh of bulk stream tc (the queue holds every put of the batch at most). */
static int enqueue(struct apply_ctx *c, struct touched *tc, const struct shardmap__shard *sh)
{
	if (c->pend == NULL &&
	    (c->pend = shardmap__alloc(&c->heap, c->d->n_ops * sizeof *c->pend)) == NULL)
		return nomem(c);
	uint32_t i = (uint32_t)c->n_pend++;
	c->pend[i] = (struct pending){sh, (uint32_t)c->op, NO_PEND};
	if (tc->n_pending++ == 0)
		tc->head = i;
	else
		c->pend[tc->tail].next = i;
	tc->tail = i;
	return SHARDMAP_OK;
}

static int op_put_shard(struct apply_ctx *c, const struct shardmap__op *op)
{
	struct shardmap__stream *st;
	struct touched *tc;
	int rc = shard_stream(c, op->stream, &st, &tc);
	if (rc != 0)
		return rc;
	shardmap_shard s = {
	    .id = op->id,
	    .start = op->start,
	    .end = op->end,
	    .open = op->open,
	    .owner_cell = op->owner_cell,
	    .parent = op->parent,
	    .adjacent_parent = op->adjacent_parent,
	};
	struct shardmap__shard *sh = shardmap__shard_new(c->t, st->name, &s);
	if (sh == NULL)
		return nomem(c);
	if (tc->bulk) {
		/* sh stays on the transaction's created list: an abort frees it */
		if ((rc = enqueue(c, tc, sh)) != 0)
			return rc;
	} else if ((rc = shard_insert(c, st, tc, sh)) != 0) {
		return rc;
	}
	return shard_added(c, st, sh);
}

static int flush(struct apply_ctx *c, struct shardmap__stream *st, struct touched *tc, int at_end);

static int op_delete_shard(struct apply_ctx *c, const struct shardmap__op *op)
{
	struct shardmap__stream *st;
	struct touched *tc;
	int rc = shard_stream(c, op->stream, &st, &tc);
	if (rc != 0)
		return rc;
	if (tc->bulk && (rc = flush(c, st, tc, 0)) != 0)
		return rc;
	uint64_t id_hash = shardmap__hamt_hash(op->id);
	const struct shardmap__shard *old = shardmap__hamt_get(&st->by_id, id_hash, op->id);
	if (old == NULL)
		return fail(c, SHARDMAP_ECONFLICT, "no shard \"%s\" in stream \"%s\"", op->id,
			    op->stream);
	if (shardmap__hamt_del(c->t, &st->by_id, id_hash, op->id, NULL) != 0)
		return nomem(c);
	return shard_gone(c, st, tc, old);
}

/* ---------------------------------------------------------------- streams */

static int op_put_stream(struct apply_ctx *c, const struct shardmap__op *op)
{
	uint64_t hash = shardmap__hamt_hash(op->stream);
	struct shardmap__stream *st;
	c->last_st = NULL;
	int rc = stream_for_write(c, op->stream, hash, &st);
	if (rc != 0)
		return rc;
	int created = st == NULL;
	if (created) {
		st = shardmap__stream_new(c->t, op->stream, op->hash_fn);
		if (st == NULL ||
		    shardmap__hamt_put(c->t, &c->v->streams, hash, st->name, st, NULL) != 0)
			return nomem(c);
		c->v->n_streams++;
	} else {
		c->v->digest -= st->content_hash;
		st->hash_fn = op->hash_fn;
		st->content_hash = shardmap__stream_content_hash(st->name, op->hash_fn);
	}
	c->v->digest += st->content_hash;
	struct touched *tc = touch(c, op->stream, hash);
	if (tc == NULL)
		return nomem(c);
	if (created && c->bulk_ok) {
		tc->bulk = 1;
		tc->n_pending = 0;
	}
	return SHARDMAP_OK;
}

struct drop_ctx {
	struct apply_ctx *c;
	const struct shardmap__stream *st;
};

static int drop_shard(void *ctx, const char *key, const void *value)
{
	struct drop_ctx *dc = ctx;
	const struct shardmap__shard *sh = value;
	(void)key;
	dc->c->v->digest -= shardmap__shard_content_hash(dc->st->name, sh);
	return cell_ref(dc->c, sh->owner_cell, sh->cell_hash, -1, dc->st->name, sh->id);
}

static int op_delete_stream(struct apply_ctx *c, const struct shardmap__op *op)
{
	uint64_t hash = shardmap__hamt_hash(op->stream);
	c->last_st = NULL;
	const struct shardmap__stream *st = shardmap__hamt_get(&c->v->streams, hash, op->stream);
	if (st == NULL)
		return fail(c, SHARDMAP_ECONFLICT, "stream \"%s\" does not exist", op->stream);
	struct touched *tc = touch(c, op->stream, hash);
	if (tc == NULL)
		return nomem(c);
	int rc;
	/* A bulk stream was made by this batch (so st is its own) and has its records queued:
	 * build its trees first, so that it is freed whole like any other. */
	if (tc->bulk && (rc = flush(c, (struct shardmap__stream *)st, tc, 0)) != 0)
		return rc;
	struct drop_ctx dc = {c, st};
	rc = shardmap__hamt_foreach(&st->by_id, drop_shard, &dc);
	if (rc != 0)
		return rc;
	/* The whole stream (record, trees, shards) is freed after the grace period; what the
	 * batch had already copied of it is in there too, and its originals are retired. */
	if (shardmap__ptrvec_push(c->t->mem, c->dead, (void *)st) != 0 ||
	    shardmap__hamt_del(c->t, &c->v->streams, hash, op->stream, NULL) != 0)
		return nomem(c);
	c->v->digest -= st->content_hash;
	c->v->n_open -= st->n_open;
	c->v->n_closed -= st->n_closed;
	c->v->n_streams--;
	tc->dirty.n = 0; /* a stream made again under this name starts from nothing */
	tc->displaced.n = 0;
	return SHARDMAP_OK;
}

/* ---------------------------------------------------------------- cells */

static int op_put_cell(struct apply_ctx *c, const struct shardmap__op *op)
{
	uint64_t hash = shardmap__hamt_hash(op->id);
	struct shardmap__cell *cell =
	    shardmap__cell_new(c->t, op->id, (const char *const *)op->endpoints, op->n_endpoints);
	if (cell == NULL)
		return nomem(c);
	const struct shardmap__cell_ent *e = shardmap__hamt_get(&c->v->cells, hash, op->id);
	struct shardmap__cell_ent *w;
	if (e != NULL) {
		if ((w = ent_for_write(c, e)) == NULL ||
		    shardmap__txn_retire(c->t, (void *)e->cell) != 0)
			return nomem(c);
		c->v->digest -= e->cell->content_hash;
	} else {
		if ((w = shardmap__txn_alloc(c->t, sizeof *w)) == NULL)
			return nomem(c);
		w->refs = 0;
		w->gen = c->t->gen;
		/* shards that named this cell while it was missing now reference it */
		struct orphans *o = (struct orphans *)shardmap__hamt_get(&c->orphans, hash, op->id);
		if (o != NULL) {
			w->refs = o->count;
			o->count = 0;
		}
		c->v->n_cells++;
	}
	w->cell = cell;
	/* put even when w is unchanged: the entry's key must now point into the new record */
	if (shardmap__hamt_put(c->t, &c->v->cells, hash, cell->id, w, NULL) != 0)
		return nomem(c);
	c->v->digest += cell->content_hash;
	return SHARDMAP_OK;
}

static int op_delete_cell(struct apply_ctx *c, const struct shardmap__op *op)
{
	uint64_t hash = shardmap__hamt_hash(op->id);
	const struct shardmap__cell_ent *e = shardmap__hamt_get(&c->v->cells, hash, op->id);
	if (e == NULL)
		return fail(c, SHARDMAP_ECONFLICT, "cell \"%s\" does not exist", op->id);
	if (shardmap__hamt_del(c->t, &c->v->cells, hash, op->id, NULL) != 0 ||
	    shardmap__txn_retire(c->t, (void *)e->cell) != 0 ||
	    shardmap__txn_retire(c->t, (void *)e) != 0)
		return nomem(c);
	c->v->digest -= e->cell->content_hash;
	c->v->n_cells--;
	if (e->refs > 0) {
		/* allowed for now: the batch may still move or delete those shards */
		struct orphans *o = orphans_of(c, op->id, hash);
		if (o == NULL)
			return nomem(c);
		o->count = e->refs;
		o->op = c->op;
		o->deleted_cell = 1;
	}
	return SHARDMAP_OK;
}

/* ---------------------------------------------------------------- one op */

/* Arguments a decoder may have let through (the shardmap_delta_* builders check them too). */
static int check_op(struct apply_ctx *c, const struct shardmap__op *op)
{
	switch (op->kind) {
	case SHARDMAP__OP_PUT_STREAM:
		if (op->hash_fn != SHARDMAP_HASH_XXH3 && op->hash_fn != SHARDMAP_HASH_MD5)
			return fail(c, SHARDMAP_EINVAL, "unknown hash function %d", op->hash_fn);
		/* fallthrough */
	case SHARDMAP__OP_DELETE_STREAM:
		if (shardmap__check_name(op->stream) != 0)
			return fail(c, SHARDMAP_EINVAL, "invalid stream name");
		return SHARDMAP_OK;
	case SHARDMAP__OP_PUT_SHARD:
		if (shardmap__check_name(op->owner_cell) != 0 ||
		    (op->parent && shardmap__check_name(op->parent) != 0) ||
		    (op->adjacent_parent && shardmap__check_name(op->adjacent_parent) != 0))
			return fail(c, SHARDMAP_EINVAL, "invalid owner or parent id");
		if (shardmap_hash_cmp(op->start, op->end) > 0)
			return fail(c, SHARDMAP_EINVAL, "shard \"%s\" starts after it ends",
				    op->id ? op->id : "");
		/* fallthrough */
	case SHARDMAP__OP_DELETE_SHARD:
		/* The stream of the last shard op exists, so its name was checked already. */
		if ((!is_last_stream(c, op->stream) && shardmap__check_name(op->stream) != 0) ||
		    shardmap__check_name(op->id) != 0)
			return fail(c, SHARDMAP_EINVAL, "invalid stream name or shard id");
		return SHARDMAP_OK;
	case SHARDMAP__OP_PUT_CELL:
		if (op->n_endpoints == 0 || op->endpoints == NULL)
			return fail(c, SHARDMAP_EINVAL, "cell has no endpoints");
		for (size_t i = 0; i < op->n_endpoints; i++)
			if (shardmap__check_endpoint(op->endpoints[i]) != 0)
				return fail(c, SHARDMAP_EINVAL, "endpoint %zu is not host:port", i);
		/* fallthrough */
	case SHARDMAP__OP_DELETE_CELL:
		if (shardmap__check_name(op->id) != 0)
			return fail(c, SHARDMAP_EINVAL, "invalid cell id");
		return SHARDMAP_OK;
	}
	return fail(c, SHARDMAP_EINVAL, "unknown op kind %d", (int)op->kind);
}

static int apply_op(struct apply_ctx *c, const struct shardmap__op *op)
{
	int rc = check_op(c, op);
	if (rc != 0)
		return rc;
	switch (op->kind) {
	case SHARDMAP__OP_PUT_STREAM:
		return op_put_stream(c, op);
	case SHARDMAP__OP_DELETE_STREAM:
		return op_delete_stream(c, op);
	case SHARDMAP__OP_PUT_SHARD:
		return op_put_shard(c, op);
	case SHARDMAP__OP_DELETE_SHARD:
		return op_delete_shard(c, op);
	case SHARDMAP__OP_PUT_CELL:
		return op_put_cell(c, op);
	case SHARDMAP__OP_DELETE_CELL:
		return op_delete_cell(c, op);
	}
	return SHARDMAP_EINVAL; /* not reached: check_op rejects unknown kinds */
}

/* ---------------------------------------------------------------- end of batch */

/* Check that a and b, consecutive in the open tree, join exactly. a NULL: b is the first
 * open shard; b NULL: a is the last. */
static void check_join(struct apply_ctx *c, const struct shardmap__stream *st, size_t op,
		       const struct shardmap__shard *a, const struct shardmap__shard *b)
{
	char x[SHARDMAP_HASH_DECIMAL_MAX], y[SHARDMAP_HASH_DECIMAL_MAX];
	if (a == NULL && b == NULL)
		return;
	if (a == NULL) {
		if (b->start.hi != 0 || b->start.lo != 0)
			violation(c, op,
				  "stream \"%s\": gap: hash keys 0..%s are not covered (the first "
				  "open shard \"%s\" starts at %s)",
				  st->name, dec(hash_dec(b->start), x), b->id, dec(b->start, y));
		return;
	}
	if (b == NULL) {
		if (!hash_eq(a->end, HASH_MAX))
			violation(c, op,
				  "stream \"%s\": gap: hash keys %s..2^128-1 are not covered (the "
				  "last open shard \"%s\" ends at %s)",
				  st->name, dec(hash_inc(a->end), x), a->id, dec(a->end, y));
		return;
	}
	int cmp = shardmap_hash_cmp(a->end, b->start);
	if (cmp >= 0)
		violation(c, op,
			  "stream \"%s\": overlap: open shard \"%s\" ends at %s, open shard \"%s\" "
			  "starts at %s",
			  st->name, a->id, dec(a->end, x), b->id, dec(b->start, y));
	else if (!hash_eq(hash_inc(a->end), b->start))
		violation(c, op,
			  "stream \"%s\": gap: hash keys %s..%s between open shards \"%s\" "
			  "and \"%s\" are not covered",
			  st->name, dec(hash_inc(a->end), x), dec(hash_dec(b->start), y), a->id,
			  b->id);
}

/* Two open shards start at the same key: sh was pushed out of the open tree by op. */
static void same_start(struct apply_ctx *c, const struct shardmap__stream *st, size_t op,
		       const struct shardmap__shard *sh, const struct shardmap__shard *other)
{
	char x[SHARDMAP_HASH_DECIMAL_MAX];
	violation(c, op, "stream \"%s\": overlap: open shards \"%s\" and \"%s\" both start at %s",
		  st->name, sh->id, other ? other->id : "?", dec(sh->start, x));
}

/*
 * The coverage check of one stream, incremental.
 *
 * The open shards partition 0..2^128-1 exactly if and only if, in start order, the first
 * starts at 0, the last ends at 2^128-1, and every consecutive pair (a, b) joins:
 * a.end + 1 == b.start (which also rules out overlaps, since a.start <= a.end). Every
 * condition is about one element or one consecutive pair of the final open tree.
 *
 * The stream was valid before the batch (or did not exist). Take any consecutive pair (a, b)
 * of the final tree. If the batch changed neither start (no dirty entry at a.start or
 * b.start), both records are the ones the previous version had there, and they were
 * consecutive then too unless a start between them was removed, and a removed start is
 * dirty: its check below joins its final predecessor and successor, which are exactly a and
 * b. Otherwise a or b is dirty, and the check of a dirty start that is still present joins
 * it with both its final neighbours. So every pair not already known to join is checked;
 * the same argument with "no predecessor"/"no successor" covers the first and the last.
 * Shards at the same start cannot both sit in the tree: the one pushed out is remembered as
 * displaced and, if still open at the end, is an overlap. A new stream has every start
 * dirty, so it is checked whole.
 *
 * Work: three tree lookups per dirty start, O(changed x log(open shards)).
 */
static void check_stream(struct apply_ctx *c, const struct touched *tc)
{
	const struct shardmap__stream *st = shardmap__version_stream(c->v, tc->name);
	if (st == NULL || tc->checked)
		return; /* deleted by the batch, or checked whole by its bulk flush */
	if (st->open.count == 0) {
		violation(c, tc->last_op, "stream \"%s\" has no open shards", st->name);
		return;
	}
	const struct dirty *d = tc->dirty.v;
	for (size_t i = 0; i < tc->dirty.n; i++) {
		shardmap_hash ps, ns;
		const struct shardmap__shard *e = shardmap__btree_get(&st->open, d[i].start);
		const struct shardmap__shard *p = shardmap__btree_prev(&st->open, d[i].start, &ps);
		const struct shardmap__shard *n = shardmap__btree_next(&st->open, d[i].start, &ns);
		if (e != NULL) {
			check_join(c, st, d[i].op, p, e);
			check_join(c, st, d[i].op, e, n);
		} else {
			check_join(c, st, d[i].op, p, n);
		}
	}
	const struct displaced *dp = tc->displaced.v;
	for (size_t i = 0; i < tc->displaced.n; i++) {
		const struct shardmap__shard *sh = dp[i].shard;
		if (shardmap__stream_shard(st, sh->id) != sh)
			continue; /* replaced or deleted since */
		same_start(c, st, dp[i].op, sh, shardmap__btree_get(&st->open, sh->start));
	}
}

/* ---------------------------------------------------------------- bulk streams */

static size_t min_op(size_t a, size_t b)
{
	return a < b ? a : b;
}

/* Open records by start, then by op (a stable order for records at the same start). */
static int cmp_open(const void *a, const void *b)
{
	const struct open_rec *x = a, *y = b;
	int c = shardmap_hash_cmp(x->shard->start, y->shard->start);
	return c ? c : (x->op > y->op) - (x->op < y->op);
}

/* The key of a shard in the by-id index, for its bulk build. */
static const char *shard_key(const void *value)
{
	return ((const struct shardmap__shard *)value)->id;
}

/*
 * The open tree of a bulk stream from its queued open records o[0..n) (sorted by start, then
 * op), and its coverage: at the end of the batch checked here in one pass; before an op that
 * needs the trees (at_end 0), handed on as op-by-op apply would have left it (every start
 * dirty with the op that put it, same-start losers displaced) for check_stream.
 *
 * Per start, the latest surviving record goes in the tree and any other survivor there is an
 * overlap, attributed to the next put at that start (the one that pushed it out). A pair of
 * consecutive tree records (a, b) is attributed as check_stream would: to the lowest op that
 * put a record at a's start, at b's, or at a start between them whose records all went (a
 * start check_stream finds dirty and joins across); likewise the first and last records with
 * the hash space's ends. starts is scratch for n items.
 */
static int flush_open(struct apply_ctx *c, struct shardmap__stream *st, struct touched *tc,
		      const struct open_rec *o, size_t n, struct shardmap__btree_item *starts,
		      int at_end)
{
	size_t k = 0, prev_min = 0, gap_min = SIZE_MAX;
	const struct shardmap__shard *prev = NULL;
	for (size_t i = 0, j; i < n; i = j) {
		size_t top = SIZE_MAX, group_min = o[i].op;
		for (j = i; j < n && hash_eq(o[j].shard->start, o[i].shard->start); j++)
			if (!o[j].gone)
				top = j;
		if (top == SIZE_MAX) { /* every record at this start went */
			gap_min = min_op(gap_min, group_min);
			continue;
		}
		const struct shardmap__shard *cur = o[top].shard;
		for (size_t x = i; x < top; x++) {
			if (o[x].gone)
				continue;
			struct displaced dp = {o[x].shard, o[x + 1].op};
			if (at_end)
				same_start(c, st, dp.op, dp.shard, cur);
			else if (vec_push(c, &tc->displaced, &dp, sizeof dp) != 0)
				return nomem(c);
		}
		starts[k++] = (struct shardmap__btree_item){cur->start, cur};
		if (at_end)
			check_join(c, st,
				   min_op(min_op(group_min, gap_min), prev ? prev_min : SIZE_MAX),
				   prev, cur);
		prev = cur;
		prev_min = group_min;
		gap_min = SIZE_MAX;
	}
	/* The starts are strictly increasing: only memory can fail. */
	if (shardmap__btree_build(c->t, &st->open, starts, k) != 0)
		return nomem(c);
	if (at_end) {
		if (prev == NULL)
			violation(c, tc->last_op, "stream \"%s\" has no open shards", st->name);
		else
			check_join(c, st, min_op(prev_min, gap_min), prev, NULL);
		tc->checked = 1;
		return SHARDMAP_OK;
	}
	for (size_t i = 0; i < n; i++)
		if (dirty_at(c, tc, o[i].shard->start, o[i].op) != 0)
			return nomem(c);
	return SHARDMAP_OK;
}

/* The open records of the queue (each record read once, in allocation order), sorted by
 * start; the ones a later put of the same id replaced are marked gone and uncounted (only
 * when by_id holds fewer records than were queued). */
static int collect_open(struct apply_ctx *c, struct shardmap__stream *st, const struct touched *tc,
			size_t n, struct open_rec *o, size_t *n_open)
{
	int dups = st->by_id.count < n, sorted = 1, rc;
	size_t k = 0;
	for (uint32_t i = n ? tc->head : NO_PEND; i != NO_PEND; i = c->pend[i].next) {
		const struct shardmap__shard *sh = c->pend[i].shard;
		int gone = dups && shardmap__stream_shard(st, sh->id) != sh;
		if (gone && (rc = shard_uncount(c, st, sh)) != 0)
			return rc;
		if (!sh->open)
			continue;
		o[k] = (struct open_rec){sh, c->pend[i].op, (uint32_t)gone};
		sorted &= k == 0 || shardmap_hash_cmp(o[k - 1].shard->start, sh->start) <= 0;
		k++;
	}
	if (!sorted)
		qsort(o, k, sizeof *o, cmp_open);
	*n_open = k;
	return SHARDMAP_OK;
}

/* Build the trees of bulk stream st from its queue (see the top of the file): the by-id
 * index in one build, the later put of an id winning; then the open tree (flush_open).
 * at_end: the batch's ops are all applied, so check coverage now. The stream is no longer
 * bulk afterwards, even on failure (the batch then aborts). */
static int flush(struct apply_ctx *c, struct shardmap__stream *st, struct touched *tc, int at_end)
{
	size_t n = tc->n_pending, n_open = 0;
	tc->bulk = 0;
	tc->n_pending = 0;
	/* One array serves the by-id build's items, then the open records (both 16 bytes a
	 * record); the open tree's items need their own. */
	size_t one = n ? n : 1;
	_Static_assert(sizeof(struct open_rec) <= sizeof(struct shardmap__hamt_item),
		       "the open records reuse the by-id items");
	struct shardmap__hamt_item *items = shardmap__alloc(&c->heap, one * sizeof *items);
	struct shardmap__btree_item *starts = shardmap__alloc(&c->heap, one * sizeof *starts);
	int rc = items && starts ? SHARDMAP_OK : nomem(c);
	if (rc == 0 && n > 0) {
		size_t k = 0;
		for (uint32_t i = tc->head; i != NO_PEND; i = c->pend[i].next, k++) {
			const struct shardmap__shard *sh = c->pend[i].shard;
			items[k] = (struct shardmap__hamt_item){shardmap__hamt_hash(sh->id), sh};
		}
		if (shardmap__hamt_build(c->t, &st->by_id, items, n, shard_key) != 0)
			rc = nomem(c);
	}
	struct open_rec *o = (struct open_rec *)items;
	if (rc == 0)
		rc = collect_open(c, st, tc, n, o, &n_open);
	if (rc == 0)
		rc = flush_open(c, st, tc, o, n_open, starts, at_end);
	shardmap__free(&c->heap, starts);
	shardmap__free(&c->heap, items);
	return rc;
}

static void check_orphans(struct apply_ctx *c)
{
	for (const struct orphans *o = c->orphans_list; o != NULL; o = o->next) {
		if (o->count == 0)
			continue;
		if (o->deleted_cell)
			violation(c, o->op,
				  "cell \"%s\" is still the owner of %" PRIu64 " shard(s)",
				  o->cell_id, o->count);
		else
			violation(
			    c, o->op,
			    "owner cell \"%s\" of shard \"%s\" in stream \"%s\" does not exist",
			    o->cell_id, o->shard, o->stream);
	}
}

/* ---------------------------------------------------------------- entry points */

int shardmap__apply_check_version(uint64_t cur, const shardmap_delta *d, shardmap_error *why)
{
	uint64_t from = d->from_version, to = d->to_version;
	if (to <= from)
		return shardmap__error_set(why, SHARDMAP_EINVAL, NO_OP,
					   "delta %" PRIu64 "->%" PRIu64 " does not move forward",
					   from, to);
	if (to <= cur)
		return shardmap__error_set(why, SHARDMAP_ESTALE, NO_OP,
					   "duplicate: delta %" PRIu64 "->%" PRIu64
					   " is already applied (the map is at version %" PRIu64
					   ")",
					   from, to, cur);
	if (from > cur)
		return shardmap__error_set(why, SHARDMAP_EGAP, NO_OP,
					   "gap: delta %" PRIu64 "->%" PRIu64
					   " needs version %" PRIu64 " but the map is at %" PRIu64,
					   from, to, from, cur);
	if (from < cur)
		return shardmap__error_set(why, SHARDMAP_EGAP, NO_OP,
					   "gap: delta %" PRIu64 "->%" PRIu64
					   " straddles the current version %" PRIu64,
					   from, to, cur);
	return SHARDMAP_OK;
}

/* Batches of at least this many ops build the streams they create in bulk. Relaxed: a
 * tuning knob that tests set before they apply anything; it orders no other memory. */
static atomic_size_t bulk_min_ops = SHARDMAP__APPLY_BULK_MIN_OPS;

void shardmap__apply_set_bulk_min_ops(size_t n)
{
	atomic_store_explicit(&bulk_min_ops, n, memory_order_relaxed);
}

/* Give each stream the batch changed the jump table of its open tree (the change dropped
 * the old one; see shardmap__btree_seal), now that the tree is final. */
static int seal_touched(struct apply_ctx *c)
{
	for (const struct touched *tc = c->touched_list; tc != NULL; tc = tc->next) {
		struct shardmap__stream *st =
		    (struct shardmap__stream *)shardmap__version_stream(c->v, tc->name);
		if (st == NULL || st->gen != c->t->gen)
			continue; /* deleted, or never copied: its tree did not change */
		c->op = tc->last_op; /* what an out-of-memory message names */
		if (shardmap__btree_seal(c->t, &st->open) != 0)
			return nomem(c);
	}
	return SHARDMAP_OK;
}

/* Flush every stream still queued, check the end-of-batch invariants, then seal. */
static int end_of_batch(struct apply_ctx *c)
{
	for (struct touched *tc = c->touched_list; tc != NULL; tc = tc->next) {
		if (!tc->bulk)
			continue;
		/* Bulk streams are the batch's own: not deleted (a delete flushes first). */
		struct shardmap__stream *st =
		    (struct shardmap__stream *)shardmap__version_stream(c->v, tc->name);
		c->op = tc->last_op; /* what an out-of-memory message names */
		int rc = flush(c, st, tc, 1);
		if (rc != 0)
			return rc;
	}
	for (const struct touched *tc = c->touched_list; tc != NULL; tc = tc->next)
		check_stream(c, tc);
	check_orphans(c);
	if (c->violation.code != 0 && c->why != NULL)
		*c->why = c->violation;
	return c->violation.code ? c->violation.code : seal_touched(c);
}

int shardmap__apply_ops(struct shardmap__txn *t, struct shardmap__version *v,
			const shardmap_delta *d, struct shardmap__ptrvec *dead, shardmap_error *why)
{
	struct apply_ctx c = {.t = t, .v = v, .dead = dead, .d = d, .why = why};
	c.bulk_ok = d->n_ops >= atomic_load_explicit(&bulk_min_ops, memory_order_relaxed) &&
		    d->n_ops < NO_PEND;
	shardmap__mem_init(&c.heap, 0); /* plain heap: cannot fail */
	shardmap__txn_init(&c.scratch, &c.heap);
	int rc = SHARDMAP_OK;
	for (c.op = 0; c.op < d->n_ops && rc == 0; c.op++)
		rc = apply_op(&c, &d->ops[c.op]);
	if (rc == 0)
		rc = end_of_batch(&c);
	shardmap__free(&c.heap, c.pend);
	shardmap__txn_abort(&c.scratch);
	shardmap__mem_fini(&c.heap);
	return rc;
}
