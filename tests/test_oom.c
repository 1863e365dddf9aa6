/*
 * test_oom.c - out-of-memory at every allocation point of an apply.
 *
 * For representative batches (the first version, creating a stream with many shards, split,
 * merge, move, cells put, replaced and deleted, a stream deleted, and a private build; the
 * batches that create streams also through the bulk path, with its flush at the end of the
 * batch and in the middle, before a delete), the
 * k-th allocation from map memory is made to fail for k = 1, 2, ... until the apply
 * succeeds. Every failure must answer SHARDMAP_ENOMEM, leave the published version, digest
 * and lookups exactly as they were, and leak nothing (shardmap__mem_live counts the map
 * memory allocations still live, with or without jemalloc).
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "apply.h"
#include "map.h"
#include "mem.h"

#define N_KEYS 64

/* What the map answers: version, digest and the route of N_KEYS keys in every stream. */
struct snapshot {
	uint64_t version, digest;
	char answer[2][N_KEYS][96];
};

static const char *const streams[2] = {"s", "t"};

static void take(shardmap *m, struct snapshot *s)
{
	memset(s, 0, sizeof *s);
	s->version = shardmap_version(m);
	const struct shardmap__version *v = shardmap__pin(m);
	s->digest = v ? v->digest : 0;
	shardmap__unpin(m);
	shardmap_reader *r;
	cr_assert_eq(shardmap_reader_open(m, &r), 0);
	shardmap_read_begin(r);
	for (int st = 0; st < 2; st++) {
		for (int i = 0; i < N_KEYS; i++) {
			char key[16];
			snprintf(key, sizeof key, "key-%d", i);
			shardmap_route rt;
			int rc = shardmap_route_key(r, streams[st], key, strlen(key), &rt);
			if (rc == 0)
				snprintf(s->answer[st][i], sizeof s->answer[st][i], "%s@%s:%s",
					 rt.shard_id, rt.cell_id, rt.endpoints[0]);
			else
				snprintf(s->answer[st][i], sizeof s->answer[st][i], "%d", rc);
		}
	}
	shardmap_read_end(r);
	shardmap_reader_close(r);
}

static void same(const struct snapshot *a, const struct snapshot *b, long k)
{
	cr_assert_eq(a->version, b->version, "k=%ld: version changed", k);
	cr_assert_eq(a->digest, b->digest, "k=%ld: digest changed", k);
	for (int st = 0; st < 2; st++)
		for (int i = 0; i < N_KEYS; i++)
			cr_assert_str_eq(a->answer[st][i], b->answer[st][i],
					 "k=%ld: lookup changed", k);
}

/* Fail allocation k = 1, 2, ... of applying d until the apply succeeds. Returns the number
 * of failures (the allocation points the apply went through). Frees d. */
static long fail_each_allocation(shardmap *m, shardmap_delta *d)
{
	struct snapshot before, now;
	take(m, &before);
	long live = shardmap__mem_live(), k;
	for (k = 1;; k++) {
		cr_assert_lt(k, 100000, "the apply never succeeded");
		shardmap_error why;
		shardmap__mem_fail_after(k);
		int rc = shardmap_apply(m, d, &why);
		shardmap__mem_fail_after(0);
		if (rc == 0)
			break;
		cr_assert_eq(rc, SHARDMAP_ENOMEM, "k=%ld: %s: %s", k, shardmap_err_name(rc),
			     why.message);
		cr_assert_eq(why.code, SHARDMAP_ENOMEM);
		cr_assert(strstr(why.message, "out of memory") != NULL, "%s", why.message);
		cr_assert_eq(shardmap__mem_live(), live, "k=%ld: %ld allocations leaked", k,
			     shardmap__mem_live() - live);
		take(m, &now);
		same(&before, &now, k);
	}
	take(m, &now);
	cr_assert_eq(now.version, shardmap_delta_to(d), "the successful apply published");
	shardmap_stats st;
	shardmap_stats_get(m, &st);
	cr_assert_geq(st.rejects_nomem, (uint64_t)(k - 1));
	shardmap_delta_free(d);
	return k - 1;
}

static shardmap_delta *base_delta(void)
{
	shardmap_delta *d;
	cr_assert_eq(shardmap_delta_new(0, 1, &d), 0);
	const char *e1[] = {"c1.example:7000"}, *e2[] = {"c2.example:7000", "c2b.example:7000"};
	cr_assert_eq(shardmap_delta_put_cell(d, "c1", e1, 1), 0);
	cr_assert_eq(shardmap_delta_put_cell(d, "c2", e2, 2), 0);
	cr_assert_eq(shardmap_delta_put_stream(d, "s", SHARDMAP_HASH_XXH3), 0);
	shardmap_shard sh = {
	    "shardId-000000000000", {0, 0}, {UINT64_MAX, UINT64_MAX}, 1, "c1", NULL, NULL};
	cr_assert_eq(shardmap_delta_put_shard(d, "s", &sh), 0);
	return d;
}

static shardmap *open_base(void)
{
	shardmap *m;
	cr_assert_eq(shardmap_open(&m, NULL), 0);
	shardmap_error why;
	shardmap_delta *d = base_delta();
	cr_assert_eq(shardmap_apply(m, d, &why), 0, "%s", why.message);
	shardmap_delta_free(d);
	return m;
}

/* Stream "t" with 64 shards on c1 and c2. */
static shardmap_delta *create_t(shardmap *m)
{
	const char *owners[] = {"c1", "c2"};
	shardmap_delta *d;
	cr_assert_eq(shardmap_plan_create_stream(m, "t", SHARDMAP_HASH_MD5, 64, owners, 2, &d), 0,
		     "%s", shardmap_plan_error());
	return d;
}

static void close_clean(shardmap *m)
{
	cr_assert_eq(shardmap__reclaim(m, 1), 0);
	shardmap_close(m);
	cr_assert_eq(shardmap__mem_live(), 0, "closing the map freed everything");
}

Test(oom, first_version)
{
	shardmap *m;
	cr_assert_eq(shardmap_open(&m, NULL), 0);
	cr_assert_gt(fail_each_allocation(m, base_delta()), 3);
	close_clean(m);
}

Test(oom, create_stream_with_many_shards)
{
	shardmap *m = open_base();
	cr_assert_gt(fail_each_allocation(m, create_t(m)), 64);
	close_clean(m);
}

Test(oom, split_merge_move)
{
	shardmap *m = open_base();
	shardmap_delta *d = create_t(m);
	cr_assert_eq(shardmap_apply(m, d, NULL), 0);
	shardmap_delta_free(d);

	shardmap_hash at = {(1ull << 58) + 77, 12345}; /* inside shardId-000000000001 of 64 */
	cr_assert_eq(shardmap_plan_split(m, "t", "shardId-000000000001", at, &d), 0, "%s",
		     shardmap_plan_error());
	cr_assert_gt(fail_each_allocation(m, d), 5);

	cr_assert_eq(
	    shardmap_plan_merge(m, "t", "shardId-000000000010", "shardId-000000000011", &d), 0,
	    "%s", shardmap_plan_error());
	cr_assert_gt(fail_each_allocation(m, d), 5);

	cr_assert_eq(shardmap_plan_move(m, "t", "shardId-000000000064", "c1", &d), 0, "%s",
		     shardmap_plan_error());
	cr_assert_gt(fail_each_allocation(m, d), 3);
	close_clean(m);
}

Test(oom, cells_put_replace_delete)
{
	shardmap *m = open_base();
	uint64_t v = shardmap_version(m);
	shardmap_delta *d;
	cr_assert_eq(shardmap_delta_new(v, v + 1, &d), 0);
	const char *e3[] = {"c3.example:1", "c3.example:2", "c3.example:3"};
	const char *e1[] = {"c1-new.example:7000"};
	cr_assert_eq(shardmap_delta_put_cell(d, "c3", e3, 3), 0);
	cr_assert_eq(shardmap_delta_put_cell(d, "c1", e1, 1), 0);
	cr_assert_eq(shardmap_delta_delete_cell(d, "c2"), 0);
	cr_assert_gt(fail_each_allocation(m, d), 3);

	/* move the only shard to c3 and delete c1 in the same batch */
	v = shardmap_version(m);
	cr_assert_eq(shardmap_delta_new(v, v + 1, &d), 0);
	cr_assert_eq(shardmap_delta_delete_cell(d, "c1"), 0);
	shardmap_shard sh = {
	    "shardId-000000000000", {0, 0}, {UINT64_MAX, UINT64_MAX}, 1, "c3", NULL, NULL};
	cr_assert_eq(shardmap_delta_put_shard(d, "s", &sh), 0);
	cr_assert_gt(fail_each_allocation(m, d), 3);
	close_clean(m);
}

Test(oom, delete_stream)
{
	shardmap *m = open_base();
	shardmap_delta *d = create_t(m);
	cr_assert_eq(shardmap_apply(m, d, NULL), 0);
	shardmap_delta_free(d);
	uint64_t v = shardmap_version(m);
	cr_assert_eq(shardmap_delta_new(v, v + 1, &d), 0);
	cr_assert_eq(shardmap_delta_delete_stream(d, "t"), 0);
	cr_assert_eq(shardmap_delta_delete_stream(d, "s"), 0);
	cr_assert_eq(shardmap_delta_delete_cell(d, "c1"), 0);
	cr_assert_eq(shardmap_delta_delete_cell(d, "c2"), 0);
	cr_assert_gt(fail_each_allocation(m, d), 2);
	close_clean(m);
}

/* A private build of the base version and stream "t", every allocation failing in turn: each
 * failure leaves the published map exactly as it was and leaks nothing. */
static void private_build_each_allocation(void)
{
	shardmap *m = open_base();
	struct snapshot before, now;
	take(m, &before);
	/* d2 is planned against m's version 1, which has d1's content */
	shardmap_delta *d1 = base_delta(), *d2 = create_t(m);
	long live = shardmap__mem_live(), failures = 0;
	for (long k = 1;; k++) {
		cr_assert_lt(k, 100000);
		struct shardmap__builder *b = NULL;
		shardmap__mem_fail_after(k);
		int rc = shardmap__builder_start(m, &b);
		if (rc == 0 && (rc = shardmap__builder_apply(b, d1, NULL)) == 0)
			rc = shardmap__builder_apply(b, d2, NULL);
		shardmap__mem_fail_after(0);
		if (rc == 0) {
			cr_assert_eq(shardmap__builder_publish(b), 0);
			break;
		}
		cr_assert_eq(rc, SHARDMAP_ENOMEM, "k=%ld: %s", k, shardmap_err_name(rc));
		shardmap__builder_abort(b);
		failures++;
		cr_assert_eq(shardmap__mem_live(), live, "k=%ld: leaked", k);
		take(m, &now);
		same(&before, &now, k);
	}
	cr_assert_gt(failures, 64);
	cr_assert_eq(shardmap_version(m), 2);
	shardmap_delta_free(d1);
	shardmap_delta_free(d2);
	close_clean(m);
}

Test(oom, private_build)
{
	private_build_each_allocation();
}

/* ---------------------------------------------------------------- the bulk path */

/* Every test below runs its batches through the bulk path (apply.c), whatever their size. */
static void bulk_always(void)
{
	shardmap__apply_set_bulk_min_ops(0);
}

Test(oom, bulk_create_stream, .init = bulk_always)
{
	shardmap *m = open_base();
	cr_assert_gt(fail_each_allocation(m, create_t(m)), 64);
	close_clean(m);
}

/* A batch whose new stream is flushed in the middle: a delete_shard and a delete_stream
 * need its trees, and the batch goes on op by op. */
Test(oom, bulk_flush_before_deletes, .init = bulk_always)
{
	shardmap *m = open_base();
	shardmap_delta *d = create_t(m);
	shardmap_shard extra = {"extra", {1, 0}, {1, 0}, 0, "c2", NULL, NULL};
	cr_assert_eq(shardmap_delta_put_shard(d, "t", &extra), 0);
	cr_assert_eq(shardmap_delta_delete_shard(d, "t", "extra"), 0);
	cr_assert_eq(shardmap_delta_put_stream(d, "u", SHARDMAP_HASH_XXH3), 0);
	shardmap_shard u = {"u-0", {0, 0}, {UINT64_MAX, UINT64_MAX}, 1, "c1", NULL, NULL};
	cr_assert_eq(shardmap_delta_put_shard(d, "u", &u), 0);
	cr_assert_eq(shardmap_delta_delete_stream(d, "u"), 0);
	cr_assert_gt(fail_each_allocation(m, d), 64);
	close_clean(m);
}

Test(oom, bulk_private_build, .init = bulk_always)
{
	private_build_each_allocation();
}
