/*
 * test_iterate.c - shardmap_foreach_shard and shardmap_foreach_stream: what they visit, in
 * which order, early stops, and their errors.
 */
#include <criterion/criterion.h>
#include <shardmap.h>
#include <stdio.h>
#include <string.h>

static shardmap *m;
static shardmap_reader *r;

static void apply_ok(shardmap_delta *d)
{
	shardmap_error why = {0};
	cr_assert_eq(shardmap_apply(m, d, &why), 0, "%s", why.message);
	shardmap_delta_free(d);
}

static void setup(void)
{
	cr_assert_eq(shardmap_open(&m, NULL), 0);
	cr_assert_eq(shardmap_reader_open(m, &r), 0);
}

static void teardown(void)
{
	shardmap_reader_close(r);
	shardmap_close(m);
}

/* Cells, two streams ("a" with 4 shards, "b" with 1), then a split of a's first shard. */
static void populate(void)
{
	shardmap_delta *d;
	const char *eps[] = {"127.0.0.1:1"};
	cr_assert_eq(shardmap_delta_new(0, 1, &d), 0);
	cr_assert_eq(shardmap_delta_put_cell(d, "c", eps, 1), 0);
	apply_ok(d);
	const char *owners[] = {"c"};
	cr_assert_eq(shardmap_plan_create_stream(m, "a", SHARDMAP_HASH_XXH3, 4, owners, 1, &d), 0);
	apply_ok(d);
	cr_assert_eq(shardmap_plan_create_stream(m, "b", SHARDMAP_HASH_MD5, 1, owners, 1, &d), 0);
	apply_ok(d);
	shardmap_hash at = {.hi = UINT64_C(1) << 60, .lo = 0};
	cr_assert_eq(shardmap_plan_split(m, "a", "shardId-000000000000", at, &d), 0);
	apply_ok(d);
}

struct seen {
	int n, n_open, stop_at;
	int closed_after_open; /* 0 until a closed shard is seen; then no open may follow */
	int order_broken;
	shardmap_hash last_start;
	char ids[16][32];
};

static int collect(void *ctx, const shardmap_route *rt)
{
	struct seen *s = ctx;
	if (rt->open) {
		if (s->closed_after_open)
			s->order_broken = 1;
		if (s->n_open > 0 && shardmap_hash_cmp(rt->start, s->last_start) <= 0)
			s->order_broken = 1;
		s->last_start = rt->start;
		s->n_open++;
		cr_assert_eq(rt->n_endpoints, 1);
		cr_assert_str_eq(rt->cell_id, "c");
	} else {
		s->closed_after_open = 1;
	}
	cr_assert_eq(rt->version, 4);
	snprintf(s->ids[s->n], sizeof s->ids[0], "%s", rt->shard_id);
	s->n++;
	return s->stop_at && s->n == s->stop_at ? 42 : 0;
}

TestSuite(iterate, .init = setup, .fini = teardown);

Test(iterate, open_shards_in_range_order_then_closed)
{
	populate();
	struct seen s = {0};
	shardmap_read_begin(r);
	cr_assert_eq(shardmap_foreach_shard(r, "a", collect, &s), 0);
	shardmap_read_end(r);
	cr_assert_eq(s.n, 6);      /* 5 open after the split, 1 closed parent */
	cr_assert_eq(s.n_open, 5);
	cr_assert_not(s.order_broken);
	cr_assert_str_eq(s.ids[0], "shardId-000000000004"); /* the low child starts at 0 */
	cr_assert_str_eq(s.ids[5], "shardId-000000000000"); /* the closed parent comes last */
}

Test(iterate, early_stop_returns_the_callbacks_value)
{
	populate();
	struct seen s = {.stop_at = 2};
	shardmap_read_begin(r);
	cr_assert_eq(shardmap_foreach_shard(r, "a", collect, &s), 42);
	shardmap_read_end(r);
	cr_assert_eq(s.n, 2);
}

static int count_streams(void *ctx, const char *stream, int hash_fn)
{
	int *mask = ctx;
	if (strcmp(stream, "a") == 0 && hash_fn == SHARDMAP_HASH_XXH3)
		*mask |= 1;
	else if (strcmp(stream, "b") == 0 && hash_fn == SHARDMAP_HASH_MD5)
		*mask |= 2;
	else
		*mask |= 4;
	return 0;
}

Test(iterate, streams)
{
	populate();
	int mask = 0;
	shardmap_read_begin(r);
	cr_assert_eq(shardmap_foreach_stream(r, count_streams, &mask), 0);
	shardmap_read_end(r);
	cr_assert_eq(mask, 3);
}

static int never(void *ctx, const shardmap_route *rt)
{
	(void)ctx;
	(void)rt;
	cr_assert_fail("called");
	return 0;
}

Test(iterate, errors)
{
	shardmap_read_begin(r);
	cr_assert_eq(shardmap_foreach_shard(r, "a", never, NULL), SHARDMAP_ENOTREADY);
	cr_assert_eq(shardmap_foreach_stream(r, count_streams, NULL), SHARDMAP_ENOTREADY);
	shardmap_read_end(r);
	populate();
	shardmap_read_begin(r);
	cr_assert_eq(shardmap_foreach_shard(r, "nosuch", never, NULL), SHARDMAP_ENOENT);
	cr_assert_eq(shardmap_foreach_shard(NULL, "a", never, NULL), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_foreach_shard(r, NULL, never, NULL), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_foreach_shard(r, "a", NULL, NULL), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_foreach_stream(r, NULL, NULL), SHARDMAP_EINVAL);
	shardmap_read_end(r);
}
