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
 * Bookkeeping for the checks (touched streams, changed starts, references to missing cells)
 * lives in a scratch transaction that is always aborted: it is freed in one step and, being
 * map memory, is covered by the out-of-memory tests like everything else.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
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

/* A stream this batch changed. */
struct touched {
	const char *name;     /* the op's copy: valid for the whole apply */
	size_t last_op;	      /* the last op that changed the stream */
	struct vec dirty;     /* struct dirty */
	struct vec displaced; /* struct displaced */
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
	size_t op;		       /* index of the op being applied */
	struct shardmap__txn scratch;  /* bookkeeping, always aborted */
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

static int mark_dirty(struct apply_ctx *c, struct touched *tc, shardmap_hash start)
{
	struct dirty d = {start, c->op};
	return vec_push(c, &tc->dirty, &d, sizeof d);
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

/* Undo what shard `old` contributed (it was just replaced or removed in by_id). */
static int shard_gone(struct apply_ctx *c, struct shardmap__stream *st, struct touched *tc,
		      const struct shardmap__shard *old)
{
	int rc;
	if (old->open) {
		if (shardmap__btree_get(&st->open, old->start) == old) {
			if (shardmap__btree_del(c->t, &st->open, old->start, NULL) != 0 ||
			    mark_dirty(c, tc, old->start) != 0)
				return nomem(c);
			if ((rc = restore_displaced(c, st, tc, old->start)) != 0)
				return rc;
		}
		st->n_open--;
		c->v->n_open--;
	} else {
		st->n_closed--;
		c->v->n_closed--;
	}
	c->v->digest -= old->content_hash;
	if ((rc = cell_ref(c, old->owner_cell, old->cell_hash, -1, st->name, old->id)) != 0)
		return rc;
	if (shardmap__txn_retire(c->t, (void *)old) != 0)
		return nomem(c);
	return SHARDMAP_OK;
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

static int op_put_shard(struct apply_ctx *c, const struct shardmap__op *op)
{
	uint64_t sh_hash = shardmap__hamt_hash(op->stream);
	struct shardmap__stream *st;
	int rc = stream_for_write(c, op->stream, sh_hash, &st);
	if (rc != 0)
		return rc;
	if (st == NULL)
		return fail(c, SHARDMAP_ECONFLICT, "stream \"%s\" does not exist", op->stream);
	struct touched *tc = touch(c, op->stream, sh_hash);
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
	const void *old = NULL;
	if (tc == NULL || sh == NULL ||
	    shardmap__hamt_put(c->t, &st->by_id, shardmap__hamt_hash(sh->id), sh->id, sh, &old) !=
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
		st->n_open++;
		c->v->n_open++;
	} else {
		st->n_closed++;
		c->v->n_closed++;
	}
	c->v->digest += sh->content_hash;
	int64_t seq = kinesis_seq(sh->id);
	if (seq >= 0 && (uint64_t)seq + 1 > st->next_seq)
		st->next_seq = (uint64_t)seq + 1;
	return cell_ref(c, sh->owner_cell, sh->cell_hash, +1, st->name, sh->id);
}

static int op_delete_shard(struct apply_ctx *c, const struct shardmap__op *op)
{
	uint64_t st_hash = shardmap__hamt_hash(op->stream);
	struct shardmap__stream *st;
	int rc = stream_for_write(c, op->stream, st_hash, &st);
	if (rc != 0)
		return rc;
	if (st == NULL)
		return fail(c, SHARDMAP_ECONFLICT, "stream \"%s\" does not exist", op->stream);
	uint64_t id_hash = shardmap__hamt_hash(op->id);
	const struct shardmap__shard *old = shardmap__hamt_get(&st->by_id, id_hash, op->id);
	if (old == NULL)
		return fail(c, SHARDMAP_ECONFLICT, "no shard \"%s\" in stream \"%s\"", op->id,
			    op->stream);
	struct touched *tc = touch(c, op->stream, st_hash);
	if (tc == NULL || shardmap__hamt_del(c->t, &st->by_id, id_hash, op->id, NULL) != 0)
		return nomem(c);
	return shard_gone(c, st, tc, old);
}

/* ---------------------------------------------------------------- streams */

static int op_put_stream(struct apply_ctx *c, const struct shardmap__op *op)
{
	uint64_t hash = shardmap__hamt_hash(op->stream);
	struct shardmap__stream *st;
	int rc = stream_for_write(c, op->stream, hash, &st);
	if (rc != 0)
		return rc;
	if (st == NULL) {
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
	return touch(c, op->stream, hash) ? SHARDMAP_OK : nomem(c);
}

struct drop_ctx {
	struct apply_ctx *c;
	const struct shardmap__stream *st;
};

static int drop_shard(void *ctx, const char *key, const void *value)
{
	struct drop_ctx *dc = ctx;
	const struct shardmap__shard *sh = value;
	dc->c->v->digest -= sh->content_hash;
	return cell_ref(dc->c, sh->owner_cell, sh->cell_hash, -1, dc->st->name, sh->id);
}

static int op_delete_stream(struct apply_ctx *c, const struct shardmap__op *op)
{
	uint64_t hash = shardmap__hamt_hash(op->stream);
	const struct shardmap__stream *st = shardmap__hamt_get(&c->v->streams, hash, op->stream);
	if (st == NULL)
		return fail(c, SHARDMAP_ECONFLICT, "stream \"%s\" does not exist", op->stream);
	struct touched *tc = touch(c, op->stream, hash);
	if (tc == NULL)
		return nomem(c);
	struct drop_ctx dc = {c, st};
	int rc = shardmap__hamt_foreach(&st->by_id, drop_shard, &dc);
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
		if (shardmap__check_name(op->stream) != 0 || shardmap__check_name(op->id) != 0)
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
	if (st == NULL)
		return; /* deleted by the batch */
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
		const struct shardmap__shard *other = shardmap__btree_get(&st->open, sh->start);
		char x[SHARDMAP_HASH_DECIMAL_MAX];
		violation(c, dp[i].op,
			  "stream \"%s\": overlap: open shards \"%s\" and \"%s\" both start at %s",
			  st->name, sh->id, other ? other->id : "?", dec(sh->start, x));
	}
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

int shardmap__apply_ops(struct shardmap__txn *t, struct shardmap__version *v,
			const shardmap_delta *d, struct shardmap__ptrvec *dead, shardmap_error *why)
{
	struct apply_ctx c = {.t = t, .v = v, .dead = dead, .d = d, .why = why};
	shardmap__txn_init(&c.scratch, t->mem);
	int rc = SHARDMAP_OK;
	for (c.op = 0; c.op < d->n_ops && rc == 0; c.op++)
		rc = apply_op(&c, &d->ops[c.op]);
	if (rc == 0) {
		for (const struct touched *tc = c.touched_list; tc != NULL; tc = tc->next)
			check_stream(&c, tc);
		check_orphans(&c);
		if (c.violation.code != 0) {
			rc = c.violation.code;
			if (why != NULL)
				*why = c.violation;
		}
	}
	shardmap__txn_abort(&c.scratch);
	return rc;
}
