/*
 * test_bulk.c - the bulk path of apply (lib/apply.c) against op-by-op apply.
 *
 * A batch that creates a stream builds it in bulk when the batch is large: records queue up
 * and the trees are built once at the end (or before a delete that needs them). That must be
 * invisible: for random whole-map deltas (Kinesis split/merge histories from delta_gen.h) and
 * for mutations of them (shard ops shuffled, ids put twice, shards dropped or stretched,
 * same-start twins, deletes of shards and streams in the middle, missing or deleted owner
 * cells, streams with no open shard), applying with the bulk path forced on and forced off
 * gives the same answer: the same error code, op index and message, or the same version
 * (digest, counts, the canonical delta of the version, every tree passing its own checks),
 * through shardmap_apply and through a private build, and the same map after further
 * op-by-op deltas on top.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "apply.h"
#include "delta_gen.h"
#include "map.h"
#include "mem.h"
#include "version.h"

/* ---------------------------------------------------------------- editing deltas */

/* Append a copy of op to d (through the public builders, which check it again). */
static void add_op(shardmap_delta *d, const struct shardmap__op *op)
{
	int rc = SHARDMAP_EINVAL;
	switch (op->kind) {
	case SHARDMAP__OP_PUT_STREAM:
		rc = shardmap_delta_put_stream(d, op->stream, op->hash_fn);
		break;
	case SHARDMAP__OP_DELETE_STREAM:
		rc = shardmap_delta_delete_stream(d, op->stream);
		break;
	case SHARDMAP__OP_PUT_SHARD: {
		shardmap_shard s = {
		    op->id,	op->start,	    op->end, op->open, op->owner_cell,
		    op->parent, op->adjacent_parent};
		rc = shardmap_delta_put_shard(d, op->stream, &s);
		break;
	}
	case SHARDMAP__OP_DELETE_SHARD:
		rc = shardmap_delta_delete_shard(d, op->stream, op->id);
		break;
	case SHARDMAP__OP_PUT_CELL:
		rc = shardmap_delta_put_cell(d, op->id, (const char *const *)op->endpoints,
					     op->n_endpoints);
		break;
	case SHARDMAP__OP_DELETE_CELL:
		rc = shardmap_delta_delete_cell(d, op->id);
		break;
	}
	cr_assert_eq(rc, 0, "copying a %s op", shardmap__op_name(op->kind));
}

static shardmap_hash hash_inc(shardmap_hash h)
{
	h.lo++;
	h.hi += h.lo == 0;
	return h;
}

enum mutation {
	M_NONE,		 /* the generated map as it is */
	M_SHUFFLE,	 /* each stream's shard ops in random order (starts unsorted) */
	M_PUT_TWICE,	 /* some shards put again later: same record, other owner or range */
	M_DROP,		 /* an open shard left out: a gap */
	M_STRETCH,	 /* an open shard's end moved: an overlap or a gap */
	M_TWIN,		 /* a second open shard at an existing start */
	M_DELETE_SHARD,	 /* delete_shard in the middle of a stream's puts (and maybe back) */
	M_DELETE_STREAM, /* a stream deleted after its puts, maybe made again */
	M_MISSING_OWNER, /* a shard names a cell that does not exist */
	M_DELETE_CELL,	 /* a cell that owns shards deleted (maybe put back later) */
	M_CLOSED_ONLY,	 /* a stream whose shards are all closed */
	M_CELLS_LAST,	 /* cells after the streams that use them */
	N_MUTATIONS
};

static const char *const mutation_name[N_MUTATIONS] = {
    "none",	    "shuffle",	     "put_twice",     "drop",	     "stretch",	    "twin",
    "delete_shard", "delete_stream", "missing_owner", "delete_cell", "closed_only", "cells_last"};

/* A mutation of the valid whole-map delta g (ops copied; g is not changed). */
static shardmap_delta *mutate(const shardmap_delta *g, enum mutation m, uint64_t *rng)
{
	shardmap_delta *d = NULL;
	cr_assert_eq(shardmap_delta_new(g->from_version, g->to_version, &d), 0);
	size_t n = g->n_ops;
	const struct shardmap__op **order = calloc(n + 1, sizeof *order);
	cr_assert_not_null(order);
	for (size_t i = 0; i < n; i++)
		order[i] = &g->ops[i];
	if (m == M_SHUFFLE) {
		/* Fisher-Yates within each run of shard ops (put_stream stays before them). */
		for (size_t i = 0; i < n;) {
			size_t j = i;
			while (j < n && order[j]->kind == SHARDMAP__OP_PUT_SHARD)
				j++;
			for (size_t k = j; k > i + 1; k--) {
				size_t r = i + gen_rand(rng) % (k - i);
				const struct shardmap__op *t = order[k - 1];
				order[k - 1] = order[r];
				order[r] = t;
			}
			i = j > i ? j : i + 1;
		}
	}
	if (m == M_CELLS_LAST) {
		size_t k = 0;
		for (int pass = 0; pass < 2; pass++)
			for (size_t i = 0; i < n; i++)
				if ((g->ops[i].kind == SHARDMAP__OP_PUT_CELL) == (pass == 1))
					order[k++] = &g->ops[i];
	}
	/* Pick one shard op (an open one for most mutations) to act on. */
	size_t pick = SIZE_MAX, seen = 0;
	for (size_t i = 0; i < n; i++) {
		const struct shardmap__op *op = order[i];
		if (op->kind != SHARDMAP__OP_PUT_SHARD || (!op->open && m != M_PUT_TWICE))
			continue;
		if (gen_rand(rng) % ++seen == 0)
			pick = i;
	}
	const char *stream = pick != SIZE_MAX ? order[pick]->stream : NULL;
	size_t last_of_stream = pick;
	for (size_t i = pick != SIZE_MAX ? pick : n; i < n; i++)
		if (order[i]->kind == SHARDMAP__OP_PUT_SHARD &&
		    strcmp(order[i]->stream, stream) == 0)
			last_of_stream = i;
	for (size_t i = 0; i < n; i++) {
		struct shardmap__op op = *order[i];
		char owner[32];
		if (m == M_CLOSED_ONLY && op.kind == SHARDMAP__OP_PUT_SHARD && stream &&
		    strcmp(op.stream, stream) == 0)
			op.open = 0;
		if (i == pick) {
			switch (m) {
			case M_DROP:
				continue;
			case M_STRETCH:
				if (gen_rand(rng) % 2 &&
				    !(op.end.hi == UINT64_MAX && op.end.lo == UINT64_MAX))
					op.end = hash_inc(op.end);
				else if (shardmap_hash_cmp(op.start, op.end) < 0)
					op.end.lo--, op.end.hi -= op.end.lo == UINT64_MAX;
				break;
			case M_MISSING_OWNER:
				op.owner_cell = "cell-missing";
				break;
			default:
				break;
			}
		}
		add_op(d, &op);
		if (i == pick && m == M_TWIN) {
			struct shardmap__op twin = op;
			twin.id = "shardId-twin";
			add_op(d, &twin);
		}
		if (i == pick && m == M_PUT_TWICE) {
			/* the same id again: identical, or with another owner or range */
			struct shardmap__op again = op;
			unsigned how = (unsigned)(gen_rand(rng) % 3);
			if (how == 1) {
				snprintf(owner, sizeof owner, "cell-0");
				again.owner_cell = owner;
			} else if (how == 2) {
				again.open = !again.open;
			}
			add_op(d, &again);
		}
		if (i == pick && m == M_DELETE_SHARD) {
			struct shardmap__op del = {
			    .kind = SHARDMAP__OP_DELETE_SHARD, .stream = op.stream, .id = op.id};
			add_op(d, &del);
			if (gen_rand(rng) % 2)
				add_op(d, &op); /* and back: the stream is valid again */
		}
		if (i == last_of_stream && m == M_DELETE_STREAM) {
			struct shardmap__op del = {.kind = SHARDMAP__OP_DELETE_STREAM,
						   .stream = op.stream};
			add_op(d, &del);
			if (gen_rand(rng) % 2) { /* made again with one shard over everything */
				struct shardmap__op mk = {.kind = SHARDMAP__OP_PUT_STREAM,
							  .stream = op.stream,
							  .hash_fn = SHARDMAP_HASH_XXH3};
				struct shardmap__op one = {.kind = SHARDMAP__OP_PUT_SHARD,
							   .stream = op.stream,
							   .id = "shardId-again",
							   .start = {0, 0},
							   .end = {UINT64_MAX, UINT64_MAX},
							   .open = 1,
							   .owner_cell = "cell-0"};
				add_op(d, &mk);
				add_op(d, &one);
			}
		}
		if (i == pick && m == M_DELETE_CELL) {
			struct shardmap__op del = {.kind = SHARDMAP__OP_DELETE_CELL,
						   .id = op.owner_cell};
			add_op(d, &del);
		}
	}
	if (m == M_DELETE_CELL && pick != SIZE_MAX && gen_rand(rng) % 2) {
		/* the cell comes back at the end: valid again */
		for (size_t i = 0; i < n; i++)
			if (g->ops[i].kind == SHARDMAP__OP_PUT_CELL &&
			    strcmp(g->ops[i].id, order[pick]->owner_cell) == 0)
				add_op(d, &g->ops[i]);
	}
	free(order);
	return d;
}

/* ---------------------------------------------------------------- outcomes */

/* What applying a delta gave: the error, or the version's content. */
struct outcome {
	int rc;
	shardmap_error why;
	uint64_t version, digest, n_streams, n_open, n_closed, n_cells;
	shardmap_delta *canon; /* the version as its canonical delta (NULL on failure) */
};

static int check_stream_trees(void *ctx, const char *key, const void *value)
{
	const struct shardmap__stream *st = value;
	(void)key, (void)ctx;
	int rc = shardmap__btree_check(&st->open);
	cr_assert_eq(rc, 0, "stream %s: open tree broken at btree.c:%d", st->name, rc);
	rc = shardmap__hamt_check(&st->by_id);
	cr_assert_eq(rc, 0, "stream %s: id index broken at hamt.c:%d", st->name, rc);
	cr_assert_eq(st->open.count, st->n_open, "stream %s: open count", st->name);
	cr_assert_eq(st->by_id.count, st->n_open + st->n_closed, "stream %s: id count", st->name);
	return 0;
}

/* m's published version, checked and captured. */
static void capture(shardmap *m, struct outcome *o)
{
	const struct shardmap__version *v = shardmap__pin(m);
	cr_assert_not_null(v);
	o->version = v->version;
	o->digest = v->digest;
	o->n_streams = v->n_streams;
	o->n_open = v->n_open;
	o->n_closed = v->n_closed;
	o->n_cells = v->n_cells;
	shardmap__hamt_foreach(&v->streams, check_stream_trees, NULL);
	cr_assert_eq(shardmap__version_to_delta(v, &o->canon), 0);
	shardmap__unpin(m);
}

/* Apply d to a fresh map with the bulk path on or off: through shardmap_apply, or through a
 * private build; then (when it worked) each delta of after[] through shardmap_apply. */
static shardmap *run(const shardmap_delta *d, int bulk, int builder, struct outcome *o)
{
	shardmap *m;
	memset(o, 0, sizeof *o);
	shardmap__apply_set_bulk_min_ops(bulk ? 0 : SIZE_MAX);
	cr_assert_eq(shardmap_open(&m, NULL), 0);
	if (builder) {
		struct shardmap__builder *b;
		cr_assert_eq(shardmap__builder_start(m, &b), 0);
		o->rc = shardmap__builder_apply(b, d, &o->why);
		if (o->rc == 0)
			cr_assert_eq(shardmap__builder_publish(b), 0);
		else
			shardmap__builder_abort(b);
	} else {
		o->rc = shardmap_apply(m, d, &o->why);
	}
	if (o->rc == 0)
		capture(m, o);
	return m;
}

static void outcome_free(struct outcome *o)
{
	shardmap_delta_free(o->canon);
	o->canon = NULL;
}

static void same_outcome(const struct outcome *a, const struct outcome *b, const char *what)
{
	cr_assert_eq(a->rc, b->rc, "%s: op by op %s (%s), bulk %s (%s)", what,
		     shardmap_err_name(a->rc), a->why.message, shardmap_err_name(b->rc),
		     b->why.message);
	if (a->rc != 0) {
		cr_assert_eq(a->why.code, b->why.code, "%s", what);
		cr_assert_eq(a->why.op_index, b->why.op_index,
			     "%s: op by op says '%s', bulk says '%s'", what, a->why.message,
			     b->why.message);
		cr_assert_str_eq(a->why.message, b->why.message, "%s", what);
		return;
	}
	cr_assert_eq(a->version, b->version, "%s", what);
	cr_assert_eq(a->digest, b->digest, "%s: digest", what);
	cr_assert(a->n_streams == b->n_streams && a->n_open == b->n_open &&
		      a->n_closed == b->n_closed && a->n_cells == b->n_cells,
		  "%s: counts", what);
	cr_assert(gen_delta_equal(a->canon, b->canon), "%s: the versions differ", what);
}

/* A follow-up delta on the published map: split, merge or move through the plan helpers,
 * whichever applies to the first open shard found; NULL when none does. */
static shardmap_delta *follow_up(shardmap *m, uint64_t *rng)
{
	const struct shardmap__version *v = shardmap__pin(m);
	const struct shardmap__stream *st = shardmap__version_stream(v, "stream-0");
	const struct shardmap__shard *sh = NULL;
	if (st != NULL) {
		shardmap_hash h = {gen_rand(rng), gen_rand(rng)};
		sh = shardmap__btree_find(&st->open, h);
	}
	char id[64];
	snprintf(id, sizeof id, "%s", sh ? sh->id : "");
	shardmap_hash mid = sh ? sh->start : (shardmap_hash){0, 0};
	int splittable = sh && shardmap_hash_cmp(sh->start, sh->end) < 0;
	shardmap__unpin(m);
	if (sh == NULL)
		return NULL;
	shardmap_delta *d = NULL;
	if (splittable && gen_rand(rng) % 2) {
		mid = hash_inc(mid);
		if (shardmap_plan_split(m, "stream-0", id, mid, &d) == 0)
			return d;
	}
	if (shardmap_plan_move(m, "stream-0", id, "cell-0", &d) == 0)
		return d;
	return NULL;
}

/* One delta, both paths, both entry points, then follow-ups on the maps that worked. */
static void compare(const shardmap_delta *d, const char *what, uint64_t seed)
{
	for (int builder = 0; builder < 2; builder++) {
		struct outcome a, b;
		char label[160];
		snprintf(label, sizeof label, "%s seed %llu %s", what, (unsigned long long)seed,
			 builder ? "(private build)" : "(apply)");
		shardmap *ma = run(d, 0, builder, &a);
		shardmap *mb = run(d, 1, builder, &b);
		same_outcome(&a, &b, label);
		if (a.rc == 0) {
			uint64_t ra = seed, rb = seed;
			for (int k = 0; k < 3; k++) {
				shardmap_delta *fa = follow_up(ma, &ra), *fb = follow_up(mb, &rb);
				cr_assert((fa == NULL) == (fb == NULL), "%s: follow-up", label);
				if (fa == NULL)
					break;
				cr_assert(gen_delta_equal(fa, fb), "%s: plans differ", label);
				cr_assert_eq(shardmap_apply(ma, fa, NULL), 0, "%s", label);
				cr_assert_eq(shardmap_apply(mb, fb, NULL), 0, "%s", label);
				shardmap_delta_free(fa);
				shardmap_delta_free(fb);
			}
			outcome_free(&a);
			outcome_free(&b);
			capture(ma, &a);
			capture(mb, &b);
			same_outcome(&a, &b, label);
		}
		outcome_free(&a);
		outcome_free(&b);
		shardmap_close(ma);
		shardmap_close(mb);
	}
}

/* ---------------------------------------------------------------- tests */

TestSuite(bulk, .timeout = 300);

Test(bulk, whole_maps_match_op_by_op)
{
	for (uint64_t seed = 1; seed <= 40; seed++) {
		shardmap_delta *g = gen_map_delta(seed, 1 + seed, 3, 200);
		cr_assert_not_null(g);
		compare(g, "valid map", seed);
		shardmap_delta_free(g);
	}
}

Test(bulk, mutations_match_op_by_op)
{
	for (uint64_t seed = 1; seed <= 60; seed++) {
		shardmap_delta *g = gen_map_delta(seed * 7, 1, 3, 120);
		cr_assert_not_null(g);
		for (int m = M_SHUFFLE; m < N_MUTATIONS; m++) {
			uint64_t rng = seed * 131 + (uint64_t)m;
			shardmap_delta *d = mutate(g, (enum mutation)m, &rng);
			compare(d, mutation_name[m], seed);
			shardmap_delta_free(d);
		}
		shardmap_delta_free(g);
	}
}

/* The bulk path builds what op by op builds, on top of a published version too: a large
 * batch creating a stream beside existing ones. */
Test(bulk, new_stream_beside_published_ones)
{
	for (uint64_t seed = 1; seed <= 10; seed++) {
		shardmap *m[2];
		struct outcome o[2];
		shardmap_delta *g = gen_map_delta(seed, 1, 2, 50);
		for (int bulk = 0; bulk < 2; bulk++) {
			m[bulk] = run(g, bulk, 0, &o[bulk]);
			cr_assert_eq(o[bulk].rc, 0, "%s", o[bulk].why.message);
			outcome_free(&o[bulk]);
			const char *owners[] = {"cell-0"};
			shardmap_delta *c;
			cr_assert_eq(shardmap_plan_create_stream(m[bulk], "big", SHARDMAP_HASH_MD5,
								 300 + 40 * (unsigned)seed, owners,
								 1, &c),
				     0);
			cr_assert_eq(shardmap_apply(m[bulk], c, &o[bulk].why), 0, "%s",
				     o[bulk].why.message);
			shardmap_delta_free(c);
			capture(m[bulk], &o[bulk]);
		}
		same_outcome(&o[0], &o[1], "create stream");
		for (int bulk = 0; bulk < 2; bulk++) {
			outcome_free(&o[bulk]);
			shardmap_close(m[bulk]);
		}
		shardmap_delta_free(g);
	}
}

/* The default threshold: small batches go op by op, large ones in bulk; both give the
 * same version (the bulk one copies and retires no node while building). */
Test(bulk, default_threshold)
{
	shardmap__apply_set_bulk_min_ops(SHARDMAP__APPLY_BULK_MIN_OPS);
	shardmap *m;
	cr_assert_eq(shardmap_open(&m, NULL), 0);
	shardmap_delta *g = gen_map_delta(5, 1, 1, 0);
	cr_assert_eq(shardmap_apply(m, g, NULL), 0);
	shardmap_delta_free(g);
	const char *owners[] = {"cell-0"};
	shardmap_delta *c;
	cr_assert_eq(shardmap_plan_create_stream(m, "big", SHARDMAP_HASH_XXH3, 5000, owners, 1, &c),
		     0);
	cr_assert_geq(shardmap_delta_count(c), SHARDMAP__APPLY_BULK_MIN_OPS);
	shardmap_error why;
	cr_assert_eq(shardmap_apply(m, c, &why), 0, "%s", why.message);
	shardmap_delta_free(c);
	struct outcome o;
	capture(m, &o);
	cr_assert_eq(o.n_open, 5001);
	outcome_free(&o);
	shardmap_close(m);
}
