/*
 * test_plan.c - the Kinesis plan helpers: the exact ops each plan produces (ids, ranges,
 * lineage, owners, versions), that the plans apply, and every refusal with its code, its
 * message and the map left as it was.
 *
 * Ranges of create_stream are checked against decimal strings computed independently
 * (Python's big integers: i * (2**128 // N)), the values Kinesis's CreateStream produces.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "delta.h"
#include "shardmap.h"

typedef unsigned __int128 u128;

static const char *const max_decimal = "340282366920938463463374607431768211455";

static u128 to_u128(shardmap_hash h)
{
	return (u128)h.hi << 64 | h.lo;
}

static shardmap_hash from_u128(u128 v)
{
	return (shardmap_hash){.hi = (uint64_t)(v >> 64), .lo = (uint64_t)v};
}

static u128 dec(const char *s)
{
	shardmap_hash h;
	cr_assert_eq(shardmap_hash_parse(s, &h), 0, "bad decimal in test: %s", s);
	return to_u128(h);
}

static const u128 max128 = ~(u128)0;

static shardmap *m;
static shardmap_reader *r;

static void apply_ok(shardmap_delta *d)
{
	shardmap_error why;
	int rc = shardmap_apply(m, d, &why);
	cr_assert_eq(rc, 0, "apply: %s (%s)", shardmap_strerror(rc), why.message);
	shardmap_delta_free(d);
}

/* A map at version 1 with cells cell-a, cell-b, cell-c. */
static void setup(void)
{
	cr_assert_eq(shardmap_open(&m, NULL), 0);
	cr_assert_eq(shardmap_reader_open(m, &r), 0);
	shardmap_delta *d;
	cr_assert_eq(shardmap_delta_new(0, 1, &d), 0);
	const char *const ep_a[] = {"10.0.0.1:7000"}, *const ep_b[] = {"10.0.0.2:7000"},
			  *const ep_c[] = {"10.0.0.3:7000", "10.0.0.4:7000"};
	cr_assert_eq(shardmap_delta_put_cell(d, "cell-a", ep_a, 1), 0);
	cr_assert_eq(shardmap_delta_put_cell(d, "cell-b", ep_b, 1), 0);
	cr_assert_eq(shardmap_delta_put_cell(d, "cell-c", ep_c, 2), 0);
	apply_ok(d);
}

static void teardown(void)
{
	shardmap_reader_close(r);
	shardmap_close(m);
}

TestSuite(plan, .init = setup, .fini = teardown);

/* Plan must succeed; returns the delta after checking its versions. */
static shardmap_delta *planned(int rc, shardmap_delta **dp)
{
	cr_assert_eq(rc, 0, "plan: %s (%s)", shardmap_strerror(rc), shardmap_plan_error());
	shardmap_delta *d = *dp;
	cr_assert_str_empty(shardmap_plan_error());
	cr_assert_eq(shardmap_delta_from(d), shardmap_version(m));
	cr_assert_eq(shardmap_delta_to(d), shardmap_version(m) + 1);
	return d;
}

static void expect_str(const char *got, const char *want, const char *what)
{
	if (want == NULL)
		cr_assert_null(got, "%s: expected none, got %s", what, got);
	else
		cr_assert(got != NULL && strcmp(got, want) == 0, "%s: expected %s, got %s", what,
			  want, got ? got : "(none)");
}

struct want_shard {
	const char *id;
	u128 start, end;
	int open;
	const char *owner, *parent, *adjacent_parent;
};

/* The record a test expects (NULL parent / adjacent_parent = none). */
static struct want_shard rec(const char *id, u128 start, u128 end, int open, const char *owner,
			     const char *parent, const char *adjacent_parent)
{
	return (struct want_shard){id, start, end, open, owner, parent, adjacent_parent};
}

static void expect_put_shard(const struct shardmap__op *op, const char *stream, struct want_shard w)
{
	cr_assert_eq(op->kind, SHARDMAP__OP_PUT_SHARD);
	expect_str(op->stream, stream, "stream");
	expect_str(op->id, w.id, "id");
	cr_assert(to_u128(op->start) == w.start, "%s: start", w.id);
	cr_assert(to_u128(op->end) == w.end, "%s: end", w.id);
	cr_assert_eq(op->open, w.open, "%s: open", w.id);
	expect_str(op->owner_cell, w.owner, "owner");
	expect_str(op->parent, w.parent, "parent");
	expect_str(op->adjacent_parent, w.adjacent_parent, "adjacent_parent");
}

/* What the map answers for shard id (route by id). */
static void expect_map_shard(const char *stream, struct want_shard w)
{
	shardmap_route rt;
	shardmap_read_begin(r);
	int rc = shardmap_find_shard(r, stream, w.id, &rt);
	cr_assert_eq(rc, 0, "find %s: %s", w.id, shardmap_strerror(rc));
	cr_assert(to_u128(rt.start) == w.start && to_u128(rt.end) == w.end, "%s range", w.id);
	cr_assert_eq(rt.open, w.open, "%s open", w.id);
	expect_str(rt.cell_id, w.owner, "owner");
	expect_str(rt.parent, w.parent, "parent");
	expect_str(rt.adjacent_parent, w.adjacent_parent, "adjacent_parent");
	shardmap_read_end(r);
}

static const char *const abc[] = {"cell-a", "cell-b", "cell-c"};

/* ---------------------------------------------------------------- create */

static void check_create(unsigned n, const char *const (*want)[2], size_t n_want)
{
	char name[32];
	snprintf(name, sizeof name, "s%u", n);
	shardmap_delta *d;
	d = planned(shardmap_plan_create_stream(m, name, SHARDMAP_HASH_MD5, n, abc, 3, &d), &d);
	cr_assert_eq(d->n_ops, (size_t)n + 1);
	cr_assert_eq(d->ops[0].kind, SHARDMAP__OP_PUT_STREAM);
	expect_str(d->ops[0].stream, name, "stream");
	cr_assert_eq(d->ops[0].hash_fn, SHARDMAP_HASH_MD5);
	/* floor(2^128 / n), computed as floor((2^128 - n) / n) + 1 for n >= 2 */
	u128 step = n > 1 ? (0 - (u128)n) / n + 1 : 0;
	for (unsigned i = 0; i < n; i++) {
		char id[32];
		snprintf(id, sizeof id, "shardId-%012u", i);
		u128 start = step * i, end = i + 1 < n ? step * (i + 1) - 1 : max128;
		expect_put_shard(&d->ops[i + 1], name,
				 rec(id, start, end, 1, abc[i % 3], NULL, NULL));
	}
	for (size_t k = 0; k < n_want; k++) {
		const struct shardmap__op *op = &d->ops[1 + k];
		cr_assert(to_u128(op->start) == dec(want[k][0]), "n=%u shard %zu start", n, k);
		cr_assert(to_u128(op->end) == dec(want[k][1]), "n=%u shard %zu end", n, k);
	}
	apply_ok(d);
	expect_map_shard(name, rec("shardId-000000000000", 0, n > 1 ? step - 1 : max128, 1,
				   "cell-a", NULL, NULL));
}

Test(plan, create_1)
{
	const char *const want[][2] = {{"0", max_decimal}};
	check_create(1, want, 1);
}

Test(plan, create_2)
{
	const char *const want[][2] = {
	    {"0", "170141183460469231731687303715884105727"},
	    {"170141183460469231731687303715884105728", max_decimal},
	};
	check_create(2, want, 2);
}

Test(plan, create_3)
{
	const char *const want[][2] = {
	    {"0", "113427455640312821154458202477256070484"},
	    {"113427455640312821154458202477256070485", "226854911280625642308916404954512140969"},
	    {"226854911280625642308916404954512140970", max_decimal},
	};
	check_create(3, want, 3);
}

Test(plan, create_7)
{
	const char *const want[][2] = {
	    {"0", "48611766702991209066196372490252601635"},
	    {"48611766702991209066196372490252601636", "97223533405982418132392744980505203271"},
	    {"97223533405982418132392744980505203272", "145835300108973627198589117470757804907"},
	    {"145835300108973627198589117470757804908", "194447066811964836264785489961010406543"},
	    {"194447066811964836264785489961010406544", "243058833514956045330981862451263008179"},
	    {"243058833514956045330981862451263008180", "291670600217947254397178234941515609815"},
	    {"291670600217947254397178234941515609816", max_decimal},
	};
	check_create(7, want, 7);
}

Test(plan, create_1000)
{
	const char *const want[][2] = {
	    {"0", "340282366920938463463374607431768210"},
	    {"340282366920938463463374607431768211", "680564733841876926926749214863536421"},
	};
	check_create(1000, want, 2);
	shardmap_route rt;
	shardmap_read_begin(r);
	cr_assert_eq(shardmap_find_shard(r, "s1000", "shardId-000000000999", &rt), 0);
	cr_assert(to_u128(rt.start) == dec("339942084554017524999911232824336442789"));
	cr_assert(to_u128(rt.end) == max128);
	expect_str(rt.cell_id, "cell-a", "owner of shard 999"); /* 999 % 3 == 0 */
	cr_assert_eq(shardmap_route_hash(r, "s1000",
					 from_u128(dec("170141183460469231731687303715884105500")),
					 &rt),
		     0);
	expect_str(rt.shard_id, "shardId-000000000500", "route to the start of shard 500");
	shardmap_read_end(r);
}

Test(plan, create_owners_round_robin_and_version)
{
	const char *const two[] = {"cell-c", "cell-a"};
	shardmap_delta *d;
	d = planned(shardmap_plan_create_stream(m, "rr", SHARDMAP_HASH_XXH3, 5, two, 2, &d), &d);
	cr_assert_eq(d->ops[0].hash_fn, SHARDMAP_HASH_XXH3);
	const char *want[] = {"cell-c", "cell-a", "cell-c", "cell-a", "cell-c"};
	for (int i = 0; i < 5; i++)
		expect_str(d->ops[1 + i].owner_cell, want[i], "owner");
	cr_assert_eq(shardmap_delta_from(d), 1);
	cr_assert_eq(shardmap_delta_to(d), 2);
	cr_assert_eq(shardmap_version(m), 1, "a plan changes nothing");
	apply_ok(d);
	cr_assert_eq(shardmap_version(m), 2);
}

/* ---------------------------------------------------------------- split */

static void create(const char *stream, unsigned n)
{
	shardmap_delta *d;
	apply_ok(
	    planned(shardmap_plan_create_stream(m, stream, SHARDMAP_HASH_XXH3, n, abc, 3, &d), &d));
}

Test(plan, split_output)
{
	create("s", 1);
	shardmap_delta *d;
	u128 half = (u128)1 << 127;
	d = planned(shardmap_plan_split(m, "s", "shardId-000000000000", from_u128(half), &d), &d);
	cr_assert_eq(d->n_ops, 3);
	expect_put_shard(&d->ops[0], "s",
			 rec("shardId-000000000000", 0, max128, 0, "cell-a", NULL, NULL));
	expect_put_shard(
	    &d->ops[1], "s",
	    rec("shardId-000000000001", 0, half - 1, 1, "cell-a", "shardId-000000000000", NULL));
	expect_put_shard(
	    &d->ops[2], "s",
	    rec("shardId-000000000002", half, max128, 1, "cell-a", "shardId-000000000000", NULL));
	apply_ok(d);
	/* the next split takes the next two ids and keeps the parent's owner */
	d = planned(shardmap_plan_move(m, "s", "shardId-000000000002", "cell-b", &d), &d);
	apply_ok(d);
	u128 at = half + 12345;
	d = planned(shardmap_plan_split(m, "s", "shardId-000000000002", from_u128(at), &d), &d);
	expect_put_shard(
	    &d->ops[0], "s",
	    rec("shardId-000000000002", half, max128, 0, "cell-b", "shardId-000000000000", NULL));
	expect_put_shard(
	    &d->ops[1], "s",
	    rec("shardId-000000000003", half, at - 1, 1, "cell-b", "shardId-000000000002", NULL));
	expect_put_shard(
	    &d->ops[2], "s",
	    rec("shardId-000000000004", at, max128, 1, "cell-b", "shardId-000000000002", NULL));
	apply_ok(d);
	expect_map_shard("s", rec("shardId-000000000002", half, max128, 0, "cell-b",
				  "shardId-000000000000", NULL));
	expect_map_shard("s", rec("shardId-000000000004", at, max128, 1, "cell-b",
				  "shardId-000000000002", NULL));
}

/* Expect a refusal: code, a message containing `text`, *out untouched, map unchanged. */
#define EXPECT_REFUSED(call, code, text)                                                           \
	do {                                                                                       \
		uint64_t v_before = shardmap_version(m);                                           \
		shardmap_delta *sentinel = (shardmap_delta *)&v_before, *d_ = sentinel;            \
		int rc_ = (call);                                                                  \
		cr_assert_eq(rc_, (code), "%s: got %s (%s)", #call, shardmap_err_name(rc_),        \
			     shardmap_plan_error());                                               \
		cr_assert(d_ == sentinel, "out changed on error");                                 \
		cr_assert(strstr(shardmap_plan_error(), (text)) != NULL,                           \
			  "message '%s' lacks '%s'", shardmap_plan_error(), (text));               \
		cr_assert_eq(shardmap_version(m), v_before);                                       \
	} while (0)

Test(plan, split_bounds)
{
	/* shard 1 of 3: [s, e] with s = floor(2^128/3), e = 2s - 1 */
	create("s", 3);
	u128 s = dec("113427455640312821154458202477256070485");
	u128 e = dec("226854911280625642308916404954512140969");
	const char *id = "shardId-000000000001";
	EXPECT_REFUSED(shardmap_plan_split(m, "s", id, from_u128(s), &d_), SHARDMAP_ECONFLICT,
		       "must be greater than shard 'shardId-000000000001' start "
		       "113427455640312821154458202477256070485 plus one");
	EXPECT_REFUSED(shardmap_plan_split(m, "s", id, from_u128(s + 1), &d_), SHARDMAP_ECONFLICT,
		       "must be greater than");
	EXPECT_REFUSED(shardmap_plan_split(m, "s", id, from_u128(s - 1), &d_), SHARDMAP_ECONFLICT,
		       "must be greater than");
	EXPECT_REFUSED(shardmap_plan_split(m, "s", id, from_u128(0), &d_), SHARDMAP_ECONFLICT,
		       "must be greater than");
	EXPECT_REFUSED(shardmap_plan_split(m, "s", id, from_u128(e), &d_), SHARDMAP_ECONFLICT,
		       "split point 226854911280625642308916404954512140969 must be less than "
		       "shard 'shardId-000000000001' end 226854911280625642308916404954512140969");
	EXPECT_REFUSED(shardmap_plan_split(m, "s", id, from_u128(e + 1), &d_), SHARDMAP_ECONFLICT,
		       "must be less than");
	EXPECT_REFUSED(shardmap_plan_split(m, "s", id, from_u128(max128), &d_), SHARDMAP_ECONFLICT,
		       "must be less than");
	/* the tightest allowed points: s + 2 and e - 1 */
	shardmap_delta *d;
	d = planned(shardmap_plan_split(m, "s", id, from_u128(s + 2), &d), &d);
	cr_assert(to_u128(d->ops[1].end) == s + 1 && to_u128(d->ops[2].start) == s + 2);
	shardmap_delta_free(d);
	d = planned(shardmap_plan_split(m, "s", id, from_u128(e - 1), &d), &d);
	cr_assert(to_u128(d->ops[1].end) == e - 2 && to_u128(d->ops[2].start) == e - 1);
	apply_ok(d);
	/* the first shard starts at 0 and the last ends at 2^128-1: no wrap-around */
	EXPECT_REFUSED(shardmap_plan_split(m, "s", "shardId-000000000000", from_u128(1), &d_),
		       SHARDMAP_ECONFLICT, "must be greater than");
	EXPECT_REFUSED(shardmap_plan_split(m, "s", "shardId-000000000002", from_u128(max128), &d_),
		       SHARDMAP_ECONFLICT, "must be less than");
	d = planned(shardmap_plan_split(m, "s", "shardId-000000000000", from_u128(2), &d), &d);
	shardmap_delta_free(d);
}

Test(plan, split_refusals)
{
	create("s", 2);
	shardmap_hash mid = from_u128((u128)1 << 126);
	EXPECT_REFUSED(shardmap_plan_split(m, "nope", "shardId-000000000000", mid, &d_),
		       SHARDMAP_ENOENT, "stream 'nope' does not exist");
	EXPECT_REFUSED(shardmap_plan_split(m, "s", "shardId-000000000009", mid, &d_),
		       SHARDMAP_ENOENT,
		       "shard 'shardId-000000000009' does not exist in stream 's'");
	shardmap_delta *d;
	apply_ok(planned(shardmap_plan_split(m, "s", "shardId-000000000000", mid, &d), &d));
	EXPECT_REFUSED(shardmap_plan_split(m, "s", "shardId-000000000000", mid, &d_),
		       SHARDMAP_ECONFLICT, "shard 'shardId-000000000000' is closed");
	EXPECT_REFUSED(shardmap_plan_split(NULL, "s", "shardId-000000000001", mid, &d_),
		       SHARDMAP_EINVAL, "map or out is NULL");
	EXPECT_REFUSED(shardmap_plan_split(m, "s", "shardId-000000000001", mid, NULL),
		       SHARDMAP_EINVAL, "map or out is NULL");
	EXPECT_REFUSED(shardmap_plan_split(m, NULL, "shardId-000000000001", mid, &d_),
		       SHARDMAP_EINVAL, "stream name is NULL, empty");
	EXPECT_REFUSED(shardmap_plan_split(m, "", "shardId-000000000001", mid, &d_),
		       SHARDMAP_EINVAL, "stream name is NULL, empty");
	EXPECT_REFUSED(shardmap_plan_split(m, "s", NULL, mid, &d_), SHARDMAP_EINVAL,
		       "shard id is NULL, empty");
	EXPECT_REFUSED(shardmap_plan_split(m, "s", "bad\nid", mid, &d_), SHARDMAP_EINVAL,
		       "shard id is NULL, empty");
}

/* ---------------------------------------------------------------- merge */

Test(plan, merge_output_both_orders)
{
	create("s", 4);
	u128 step = (u128)1 << 126;
	shardmap_delta *d;
	/* make the owners differ: the child takes the first-named shard's owner */
	apply_ok(planned(shardmap_plan_move(m, "s", "shardId-000000000001", "cell-c", &d), &d));
	d = planned(shardmap_plan_merge(m, "s", "shardId-000000000000", "shardId-000000000001", &d),
		    &d);
	cr_assert_eq(d->n_ops, 3);
	expect_put_shard(&d->ops[0], "s",
			 rec("shardId-000000000000", 0, step - 1, 0, "cell-a", NULL, NULL));
	expect_put_shard(&d->ops[1], "s",
			 rec("shardId-000000000001", step, 2 * step - 1, 0, "cell-c", NULL, NULL));
	expect_put_shard(&d->ops[2], "s",
			 rec("shardId-000000000004", 0, 2 * step - 1, 1, "cell-a",
			     "shardId-000000000000", "shardId-000000000001"));
	apply_ok(d);
	/* reversed: shard 3 (the last) with its left neighbour 2 */
	d = planned(shardmap_plan_merge(m, "s", "shardId-000000000003", "shardId-000000000002", &d),
		    &d);
	expect_put_shard(&d->ops[0], "s",
			 rec("shardId-000000000003", 3 * step, max128, 0, "cell-a", NULL, NULL));
	expect_put_shard(
	    &d->ops[1], "s",
	    rec("shardId-000000000002", 2 * step, 3 * step - 1, 0, "cell-c", NULL, NULL));
	expect_put_shard(&d->ops[2], "s",
			 rec("shardId-000000000005", 2 * step, max128, 1, "cell-a",
			     "shardId-000000000003", "shardId-000000000002"));
	apply_ok(d);
	/* the two children merge back into one shard covering everything */
	d = planned(shardmap_plan_merge(m, "s", "shardId-000000000004", "shardId-000000000005", &d),
		    &d);
	expect_put_shard(&d->ops[2], "s",
			 rec("shardId-000000000006", 0, max128, 1, "cell-a", "shardId-000000000004",
			     "shardId-000000000005"));
	apply_ok(d);
	expect_map_shard("s", rec("shardId-000000000006", 0, max128, 1, "cell-a",
				  "shardId-000000000004", "shardId-000000000005"));
	expect_map_shard(
	    "s", rec("shardId-000000000002", 2 * step, 3 * step - 1, 0, "cell-c", NULL, NULL));
}

Test(plan, merge_refusals)
{
	create("s", 4);
	const char *s0 = "shardId-000000000000", *s1 = "shardId-000000000001",
		   *s2 = "shardId-000000000002", *s3 = "shardId-000000000003";
	EXPECT_REFUSED(shardmap_plan_merge(m, "s", s0, s2, &d_), SHARDMAP_ECONFLICT,
		       "shards 'shardId-000000000000' and 'shardId-000000000002' are not adjacent");
	/* the last and the first shard are not adjacent (no wrap-around past 2^128-1) */
	EXPECT_REFUSED(shardmap_plan_merge(m, "s", s3, s0, &d_), SHARDMAP_ECONFLICT,
		       "are not adjacent");
	EXPECT_REFUSED(shardmap_plan_merge(m, "s", s1, s1, &d_), SHARDMAP_ECONFLICT,
		       "shard 'shardId-000000000001' cannot be merged with itself");
	EXPECT_REFUSED(shardmap_plan_merge(m, "nope", s0, s1, &d_), SHARDMAP_ENOENT,
		       "stream 'nope' does not exist");
	EXPECT_REFUSED(shardmap_plan_merge(m, "s", "x", s1, &d_), SHARDMAP_ENOENT,
		       "shard 'x' does not exist in stream 's'");
	EXPECT_REFUSED(shardmap_plan_merge(m, "s", s0, "y", &d_), SHARDMAP_ENOENT,
		       "adjacent shard 'y' does not exist in stream 's'");
	shardmap_delta *d;
	apply_ok(planned(shardmap_plan_merge(m, "s", s0, s1, &d), &d)); /* 0, 1 closed; 4 open */
	EXPECT_REFUSED(shardmap_plan_merge(m, "s", s1, s2, &d_), SHARDMAP_ECONFLICT,
		       "shard 'shardId-000000000001' is closed");
	EXPECT_REFUSED(shardmap_plan_merge(m, "s", s2, s1, &d_), SHARDMAP_ECONFLICT,
		       "adjacent shard 'shardId-000000000001' is closed");
	EXPECT_REFUSED(shardmap_plan_merge(m, "s", NULL, s1, &d_), SHARDMAP_EINVAL,
		       "shard id is NULL");
	EXPECT_REFUSED(shardmap_plan_merge(m, "s", s1, "", &d_), SHARDMAP_EINVAL,
		       "adjacent shard id is NULL, empty");
	EXPECT_REFUSED(shardmap_plan_merge(m, "s", s1, s2, NULL), SHARDMAP_EINVAL,
		       "map or out is NULL");
	/* after the refusals, a valid merge of the new child with its neighbour still plans */
	apply_ok(planned(shardmap_plan_merge(m, "s", "shardId-000000000004", s2, &d), &d));
}

/* ---------------------------------------------------------------- move */

Test(plan, move_output)
{
	create("s", 2);
	shardmap_delta *d;
	d = planned(shardmap_plan_move(m, "s", "shardId-000000000001", "cell-c", &d), &d);
	cr_assert_eq(d->n_ops, 1);
	u128 half = (u128)1 << 127;
	expect_put_shard(&d->ops[0], "s",
			 rec("shardId-000000000001", half, max128, 1, "cell-c", NULL, NULL));
	apply_ok(d);
	shardmap_route rt;
	shardmap_read_begin(r);
	cr_assert_eq(shardmap_route_hash(r, "s", from_u128(max128), &rt), 0);
	expect_str(rt.cell_id, "cell-c", "owner after move");
	cr_assert_eq(rt.n_endpoints, 2);
	expect_str(rt.endpoints[1], "10.0.0.4:7000", "endpoint");
	shardmap_read_end(r);
	/* a moved child keeps its lineage; a closed shard can be moved too */
	apply_ok(
	    planned(shardmap_plan_split(m, "s", "shardId-000000000000", from_u128(99), &d), &d));
	d = planned(shardmap_plan_move(m, "s", "shardId-000000000003", "cell-b", &d), &d);
	expect_put_shard(
	    &d->ops[0], "s",
	    rec("shardId-000000000003", 99, half - 1, 1, "cell-b", "shardId-000000000000", NULL));
	shardmap_delta_free(d);
	d = planned(shardmap_plan_move(m, "s", "shardId-000000000000", "cell-b", &d), &d);
	expect_put_shard(&d->ops[0], "s",
			 rec("shardId-000000000000", 0, half - 1, 0, "cell-b", NULL, NULL));
	apply_ok(d);
}

Test(plan, move_refusals)
{
	create("s", 2);
	const char *s1 = "shardId-000000000001";
	EXPECT_REFUSED(shardmap_plan_move(m, "s", s1, "cell-b", &d_), SHARDMAP_ECONFLICT,
		       "shard 'shardId-000000000001' is already owned by cell 'cell-b'");
	EXPECT_REFUSED(shardmap_plan_move(m, "s", s1, "cell-z", &d_), SHARDMAP_ENOENT,
		       "cell 'cell-z' does not exist");
	EXPECT_REFUSED(shardmap_plan_move(m, "s", "x", "cell-a", &d_), SHARDMAP_ENOENT,
		       "shard 'x' does not exist in stream 's'");
	EXPECT_REFUSED(shardmap_plan_move(m, "t", s1, "cell-a", &d_), SHARDMAP_ENOENT,
		       "stream 't' does not exist");
	EXPECT_REFUSED(shardmap_plan_move(m, "s", s1, NULL, &d_), SHARDMAP_EINVAL,
		       "cell id is NULL, empty");
	EXPECT_REFUSED(shardmap_plan_move(m, "s", "", "cell-a", &d_), SHARDMAP_EINVAL,
		       "shard id is NULL, empty");
	EXPECT_REFUSED(shardmap_plan_move(NULL, "s", s1, "cell-a", &d_), SHARDMAP_EINVAL,
		       "map or out is NULL");
}

/* ---------------------------------------------------------------- create refusals */

Test(plan, create_refusals)
{
	create("s", 1);
	EXPECT_REFUSED(shardmap_plan_create_stream(m, "s", SHARDMAP_HASH_XXH3, 2, abc, 3, &d_),
		       SHARDMAP_ECONFLICT, "stream 's' already exists");
	EXPECT_REFUSED(shardmap_plan_create_stream(m, "t", SHARDMAP_HASH_XXH3, 0, abc, 3, &d_),
		       SHARDMAP_EINVAL, "a stream needs at least one shard");
	EXPECT_REFUSED(shardmap_plan_create_stream(m, "t", SHARDMAP_HASH_XXH3, 2, abc, 0, &d_),
		       SHARDMAP_EINVAL, "no owner cells given");
	EXPECT_REFUSED(shardmap_plan_create_stream(m, "t", SHARDMAP_HASH_XXH3, 2, NULL, 3, &d_),
		       SHARDMAP_EINVAL, "no owner cells given");
	const char *const with_unknown[] = {"cell-a", "cell-q"};
	EXPECT_REFUSED(
	    shardmap_plan_create_stream(m, "t", SHARDMAP_HASH_XXH3, 2, with_unknown, 2, &d_),
	    SHARDMAP_ENOENT, "owner cell 'cell-q' does not exist");
	const char *const with_bad[] = {"cell-a", ""};
	EXPECT_REFUSED(shardmap_plan_create_stream(m, "t", SHARDMAP_HASH_XXH3, 2, with_bad, 2, &d_),
		       SHARDMAP_EINVAL, "owner cell #1 is NULL, empty");
	EXPECT_REFUSED(shardmap_plan_create_stream(m, "t", 7, 2, abc, 3, &d_), SHARDMAP_EINVAL,
		       "unknown hash function 7");
	EXPECT_REFUSED(shardmap_plan_create_stream(m, "", SHARDMAP_HASH_XXH3, 2, abc, 3, &d_),
		       SHARDMAP_EINVAL, "stream name is NULL, empty");
	char long_name[300];
	memset(long_name, 'n', sizeof long_name - 1);
	long_name[sizeof long_name - 1] = '\0';
	EXPECT_REFUSED(
	    shardmap_plan_create_stream(m, long_name, SHARDMAP_HASH_XXH3, 2, abc, 3, &d_),
	    SHARDMAP_EINVAL, "longer than 255 bytes");
	EXPECT_REFUSED(shardmap_plan_create_stream(m, "t", SHARDMAP_HASH_XXH3, 2, abc, 3, NULL),
		       SHARDMAP_EINVAL, "map or out is NULL");
}

Test(plan, create_on_empty_map)
{
	/* nothing published yet: the plan goes from version 0, and no cell exists */
	shardmap *fresh;
	cr_assert_eq(shardmap_open(&fresh, NULL), 0);
	shardmap_delta *d = NULL;
	cr_assert_eq(shardmap_plan_create_stream(fresh, "s", SHARDMAP_HASH_XXH3, 1, abc, 1, &d),
		     SHARDMAP_ENOENT);
	cr_assert_str_eq(shardmap_plan_error(), "owner cell 'cell-a' does not exist");
	cr_assert_null(d);
	cr_assert_eq(shardmap_plan_split(fresh, "s", "shardId-000000000000", from_u128(5), &d),
		     SHARDMAP_ENOENT);
	cr_assert_str_eq(shardmap_plan_error(), "stream 's' does not exist");
	shardmap_close(fresh);
}

/* ---------------------------------------------------------------- ids */

/* A stream whose highest issued id is shardId-<last>: one open shard over everything. */
static void stream_with_last_id(const char *stream, const char *last)
{
	shardmap_delta *d;
	uint64_t v = shardmap_version(m);
	cr_assert_eq(shardmap_delta_new(v, v + 1, &d), 0);
	cr_assert_eq(shardmap_delta_put_stream(d, stream, SHARDMAP_HASH_XXH3), 0);
	shardmap_shard s = {.id = last,
			    .start = {0, 0},
			    .end = from_u128(max128),
			    .open = 1,
			    .owner_cell = "cell-a"};
	cr_assert_eq(shardmap_delta_put_shard(d, stream, &s), 0);
	apply_ok(d);
}

Test(plan, ids_follow_the_highest_issued)
{
	/* ids are never reused: the next id is one past the highest ever issued */
	stream_with_last_id("s", "shardId-000000000041");
	shardmap_delta *d;
	d = planned(shardmap_plan_split(m, "s", "shardId-000000000041", from_u128(1000), &d), &d);
	expect_str(d->ops[1].id, "shardId-000000000042", "left child");
	expect_str(d->ops[2].id, "shardId-000000000043", "right child");
	apply_ok(d);
	d = planned(shardmap_plan_merge(m, "s", "shardId-000000000043", "shardId-000000000042", &d),
		    &d);
	expect_str(d->ops[2].id, "shardId-000000000044", "merged child");
	shardmap_delta_free(d);
}

Test(plan, ids_exhausted)
{
	stream_with_last_id("s", "shardId-999999999998");
	/* one id left: a split needs two, a merge one */
	EXPECT_REFUSED(
	    shardmap_plan_split(m, "s", "shardId-999999999998", from_u128((u128)1 << 127), &d_),
	    SHARDMAP_ECONFLICT, "stream 's' has used every shard id");
	stream_with_last_id("t", "shardId-999999999999");
	EXPECT_REFUSED(
	    shardmap_plan_split(m, "t", "shardId-999999999999", from_u128((u128)1 << 127), &d_),
	    SHARDMAP_ECONFLICT, "stream 't' has used every shard id");
}

/* ---------------------------------------------------------------- the message */

static void *fail_in_thread(void *arg)
{
	shardmap_delta *d = NULL;
	int rc = shardmap_plan_move(m, "other-thread", "x", "cell-a", &d);
	return (void *)(intptr_t)(rc == SHARDMAP_ENOENT &&
				  strcmp(shardmap_plan_error(),
					 "stream 'other-thread' does not exist") == 0);
}

Test(plan, error_text_is_per_thread)
{
	shardmap_delta *d = NULL;
	cr_assert_eq(shardmap_plan_move(m, "mine", "x", "cell-a", &d), SHARDMAP_ENOENT);
	pthread_t t;
	void *ok;
	cr_assert_eq(pthread_create(&t, NULL, fail_in_thread, NULL), 0);
	cr_assert_eq(pthread_join(t, &ok), 0);
	cr_assert(ok != NULL, "the other thread saw its own message");
	cr_assert_str_eq(shardmap_plan_error(), "stream 'mine' does not exist");
	create("s", 1); /* a success clears it */
	cr_assert_str_empty(shardmap_plan_error());
}
