/*
 * test_lookup.c - the read path: shardmap_route_key, shardmap_route_hash and
 * shardmap_find_shard answers and error codes, range boundaries, reader handles and their
 * recycling, and the lifetime of returned pointers (valid until shardmap_read_end even when
 * the writer replaces the version meanwhile).
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "map.h"
#include "mem.h"

static const shardmap_hash ZERO = {0, 0};
static const shardmap_hash MAXH = {UINT64_MAX, UINT64_MAX};

static shardmap_hash minus1(shardmap_hash h)
{
	h.hi -= h.lo == 0;
	h.lo--;
	return h;
}

static shardmap_hash plus1(shardmap_hash h)
{
	h.lo++;
	h.hi += h.lo == 0;
	return h;
}

static int in_range(shardmap_hash h, const shardmap_route *r)
{
	return shardmap_hash_cmp(r->start, h) <= 0 && shardmap_hash_cmp(h, r->end) <= 0;
}

/* Irregular ranges on purpose: edges that differ in the low word, the high word and both. */
static const shardmap_hash starts[] = {
    {0, 0},
    {0, 2},
    {0, UINT64_MAX},
    {1, 0},
    {0x8000000000000000ull, 5},
    {UINT64_MAX, UINT64_MAX - 1},
};
#define N_SHARDS (sizeof starts / sizeof starts[0])

static shardmap *m;

static void add_shard(shardmap_delta *d, const char *stream, const char *id, shardmap_hash start,
		      shardmap_hash end, int open, const char *owner, const char *parent,
		      const char *adj)
{
	shardmap_shard s = {id, start, end, open, owner, parent, adj};
	cr_assert_eq(shardmap_delta_put_shard(d, stream, &s), 0);
}

/* Version 1: cells a (two endpoints) and b; stream "x" (XXH3) with the shards above, owners
 * alternating, plus a closed shard with lineage; stream "k" (MD5) with one shard. */
static void setup(void)
{
	cr_assert_eq(shardmap_open(&m, NULL), 0);
	shardmap_delta *d;
	cr_assert_eq(shardmap_delta_new(0, 1, &d), 0);
	const char *ea[] = {"a1.example:7000", "a2.example:7001"};
	const char *eb[] = {"b.example:8000"};
	cr_assert_eq(shardmap_delta_put_cell(d, "a", ea, 2), 0);
	cr_assert_eq(shardmap_delta_put_cell(d, "b", eb, 1), 0);
	cr_assert_eq(shardmap_delta_put_stream(d, "x", SHARDMAP_HASH_XXH3), 0);
	for (size_t i = 0; i < N_SHARDS; i++) {
		char id[32];
		snprintf(id, sizeof id, "x-%zu", i);
		add_shard(d, "x", id, starts[i], i + 1 < N_SHARDS ? minus1(starts[i + 1]) : MAXH, 1,
			  i % 2 ? "b" : "a", i == 1 ? "old" : NULL, i == 1 ? "older" : NULL);
	}
	add_shard(d, "x", "old", ZERO, MAXH, 0, "b", NULL, NULL);
	cr_assert_eq(shardmap_delta_put_stream(d, "k", SHARDMAP_HASH_MD5), 0);
	add_shard(d, "k", "only", ZERO, MAXH, 1, "b", NULL, NULL);
	shardmap_error why;
	cr_assert_eq(shardmap_apply(m, d, &why), 0, "%s", why.message);
	shardmap_delta_free(d);
}

static void teardown(void)
{
	shardmap_close(m);
}

TestSuite(lookup, .init = setup, .fini = teardown);

Test(lookup, every_edge_of_every_range)
{
	shardmap_reader *r;
	cr_assert_eq(shardmap_reader_open(m, &r), 0);
	shardmap_read_begin(r);
	for (size_t i = 0; i < N_SHARDS; i++) {
		char id[32];
		snprintf(id, sizeof id, "x-%zu", i);
		shardmap_hash end = i + 1 < N_SHARDS ? minus1(starts[i + 1]) : MAXH;
		shardmap_hash probes[] = {starts[i], end};
		for (int p = 0; p < 2; p++) {
			shardmap_route rt;
			cr_assert_eq(shardmap_route_hash(r, "x", probes[p], &rt), 0);
			cr_assert_str_eq(rt.shard_id, id);
			cr_assert(in_range(probes[p], &rt));
			cr_assert_str_eq(rt.cell_id, i % 2 ? "b" : "a");
			cr_assert_eq(rt.open, 1);
			cr_assert_eq(rt.version, 1);
			cr_assert_str_eq(rt.stream, "x");
		}
		if (i > 0) { /* one below the start belongs to the previous shard */
			shardmap_route rt;
			cr_assert_eq(shardmap_route_hash(r, "x", minus1(starts[i]), &rt), 0);
			snprintf(id, sizeof id, "x-%zu", i - 1);
			cr_assert_str_eq(rt.shard_id, id);
		}
	}
	shardmap_route rt;
	cr_assert_eq(shardmap_route_hash(r, "x", ZERO, &rt), 0);
	cr_assert_str_eq(rt.shard_id, "x-0");
	cr_assert_eq(rt.n_endpoints, 2);
	cr_assert_str_eq(rt.endpoints[0], "a1.example:7000");
	cr_assert_str_eq(rt.endpoints[1], "a2.example:7001");
	cr_assert_null(rt.parent);
	cr_assert_null(rt.adjacent_parent);
	cr_assert_eq(shardmap_route_hash(r, "x", MAXH, &rt), 0);
	cr_assert_str_eq(rt.shard_id, "x-5");
	cr_assert_eq(shardmap_route_hash(r, "x", plus1(ZERO), &rt), 0);
	cr_assert_str_eq(rt.shard_id, "x-0");
	cr_assert_str_eq(rt.parent ? rt.parent : "", "");
	cr_assert_eq(shardmap_route_hash(r, "x", (shardmap_hash){0, 3}, &rt), 0);
	cr_assert_str_eq(rt.shard_id, "x-1");
	cr_assert_str_eq(rt.parent, "old");
	cr_assert_str_eq(rt.adjacent_parent, "older");
	shardmap_read_end(r);
	shardmap_reader_close(r);
}

Test(lookup, route_key_uses_the_stream_hash_function)
{
	shardmap_reader *r;
	cr_assert_eq(shardmap_reader_open(m, &r), 0);
	shardmap_read_begin(r);
	const char *keys[] = {"", "a", "partition-key-1", "\xc3\xa9t\xc3\xa9",
			      "0123456789abcdef0123"};
	for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
		size_t len = strlen(keys[i]);
		shardmap_route rt, by_hash;
		shardmap_hash h = shardmap_hash_key(SHARDMAP_HASH_XXH3, keys[i], len);
		cr_assert_eq(shardmap_route_key(r, "x", keys[i], len, &rt), 0);
		cr_assert(in_range(h, &rt));
		cr_assert_eq(shardmap_route_hash(r, "x", h, &by_hash), 0);
		cr_assert_eq(by_hash.shard_id, rt.shard_id, "the same record");
		shardmap_hash h5 = shardmap_hash_key(SHARDMAP_HASH_MD5, keys[i], len);
		cr_assert_eq(shardmap_route_key(r, "k", keys[i], len, &rt), 0);
		cr_assert(in_range(h5, &rt));
		cr_assert_str_eq(rt.shard_id, "only");
	}
	shardmap_route rt;
	cr_assert_eq(shardmap_route_key(r, "x", NULL, 0, &rt), 0, "NULL key of length 0");
	shardmap_read_end(r);
	shardmap_reader_close(r);
}

Test(lookup, find_shard_open_and_closed)
{
	shardmap_reader *r;
	cr_assert_eq(shardmap_reader_open(m, &r), 0);
	shardmap_read_begin(r);
	shardmap_route rt;
	cr_assert_eq(shardmap_find_shard(r, "x", "old", &rt), 0);
	cr_assert_eq(rt.open, 0);
	cr_assert_str_eq(rt.cell_id, "b");
	cr_assert(shardmap_hash_cmp(rt.start, ZERO) == 0 && shardmap_hash_cmp(rt.end, MAXH) == 0);
	cr_assert_eq(shardmap_find_shard(r, "x", "x-3", &rt), 0);
	cr_assert_eq(rt.open, 1);
	cr_assert(shardmap_hash_cmp(rt.start, starts[3]) == 0);
	cr_assert_eq(shardmap_find_shard(r, "x", "x-9", &rt), SHARDMAP_ENOENT);
	cr_assert_eq(shardmap_find_shard(r, "k", "x-3", &rt), SHARDMAP_ENOENT);
	cr_assert_eq(shardmap_find_shard(r, "nope", "x-3", &rt), SHARDMAP_ENOENT);
	shardmap_read_end(r);
	shardmap_reader_close(r);
}

Test(lookup, errors)
{
	shardmap_reader *r;
	cr_assert_eq(shardmap_reader_open(NULL, &r), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_reader_open(m, NULL), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_reader_open(m, &r), 0);
	shardmap_read_begin(r);
	shardmap_route rt;
	cr_assert_eq(shardmap_route_hash(NULL, "x", ZERO, &rt), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_route_hash(r, NULL, ZERO, &rt), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_route_hash(r, "x", ZERO, NULL), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_route_key(NULL, "x", "k", 1, &rt), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_route_key(r, NULL, "k", 1, &rt), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_route_key(r, "x", NULL, 1, &rt), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_route_key(r, "x", "k", 1, NULL), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_find_shard(NULL, "x", "old", &rt), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_find_shard(r, NULL, "old", &rt), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_find_shard(r, "x", NULL, &rt), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_find_shard(r, "x", "old", NULL), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_route_hash(r, "nope", ZERO, &rt), SHARDMAP_ENOENT);
	cr_assert_eq(shardmap_route_key(r, "", "k", 1, &rt), SHARDMAP_ENOENT);
	shardmap_read_end(r);
	shardmap_reader_close(r);
	shardmap_reader_close(NULL);
}

Test(not_ready, before_the_first_publish)
{
	shardmap *e;
	cr_assert_eq(shardmap_open(&e, NULL), 0);
	shardmap_reader *r;
	cr_assert_eq(shardmap_reader_open(e, &r), 0);
	shardmap_route rt;
	shardmap_read_begin(r);
	cr_assert_eq(shardmap_route_hash(r, "x", ZERO, &rt), SHARDMAP_ENOTREADY);
	cr_assert_eq(shardmap_route_key(r, "x", "k", 1, &rt), SHARDMAP_ENOTREADY);
	cr_assert_eq(shardmap_find_shard(r, "x", "s", &rt), SHARDMAP_ENOTREADY);
	shardmap_read_end(r);
	shardmap_delta *d; /* an empty first version: ready, but nothing in it */
	cr_assert_eq(shardmap_delta_new(0, 1, &d), 0);
	cr_assert_eq(shardmap_apply(e, d, NULL), 0);
	shardmap_delta_free(d);
	shardmap_read_begin(r);
	cr_assert_eq(shardmap_route_hash(r, "x", ZERO, &rt), SHARDMAP_ENOENT);
	shardmap_read_end(r);
	shardmap_reader_close(r);
	shardmap_close(e);
}

Test(lookup, pointers_stay_valid_until_read_end)
{
	shardmap_reader *r;
	cr_assert_eq(shardmap_reader_open(m, &r), 0);
	shardmap_read_begin(r);
	shardmap_route before;
	cr_assert_eq(shardmap_route_hash(r, "x", ZERO, &before), 0);
	/* the writer (this thread, outside any lock) deletes the stream and its cell, and
	 * publishes twice: the old version cannot be freed while this section runs */
	shardmap_delta *d;
	cr_assert_eq(shardmap_delta_new(1, 2, &d), 0);
	cr_assert_eq(shardmap_delta_delete_stream(d, "x"), 0);
	cr_assert_eq(shardmap_delta_delete_cell(d, "a"), 0);
	shardmap_error why;
	cr_assert_eq(shardmap_apply(m, d, &why), 0, "%s", why.message);
	shardmap_delta_free(d);
	cr_assert_eq(shardmap_delta_new(2, 3, &d), 0);
	cr_assert_eq(shardmap_apply(m, d, NULL), 0);
	shardmap_delta_free(d);
	cr_assert_eq(shardmap__reclaim(m, 0), 2, "both retired versions wait for this section");
	/* (ASan would report a use after free here if the old version had been freed) */
	cr_assert_str_eq(before.shard_id, "x-0");
	cr_assert_str_eq(before.cell_id, "a");
	cr_assert_str_eq(before.endpoints[1], "a2.example:7001");
	cr_assert_str_eq(before.stream, "x");
	shardmap_route after;
	cr_assert_eq(shardmap_route_hash(r, "x", ZERO, &after), SHARDMAP_ENOENT,
		     "a lookup sees the newest version");
	cr_assert_eq(shardmap_route_hash(r, "k", ZERO, &after), 0);
	cr_assert_eq(after.version, 3);
	shardmap_read_end(r);
	shardmap_reader_close(r);
	cr_assert_eq(shardmap__reclaim(m, 1), 0);
	shardmap_stats st;
	shardmap_stats_get(m, &st);
	cr_assert_eq(st.versions_freed, 2);
}

Test(lookup, readers_are_recycled)
{
	shardmap_reader *r[8];
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < 8; i++)
			cr_assert_eq(shardmap_reader_open(m, &r[i]), 0);
		shardmap_stats st;
		shardmap_stats_get(m, &st);
		cr_assert_eq(st.readers, 8);
		for (int i = 0; i < 8; i++) {
			shardmap_route rt;
			shardmap_read_begin(r[i]);
			cr_assert_eq(shardmap_route_hash(r[i], "x", MAXH, &rt), 0);
			shardmap_read_end(r[i]);
			shardmap_reader_close(r[i]);
		}
	}
	shardmap_reader *again;
	cr_assert_eq(shardmap_reader_open(m, &again), 0);
	int recycled = 0;
	for (int i = 0; i < 8; i++)
		recycled |= again == r[i];
	cr_assert(recycled, "a closed handle's record is reused");
	shardmap_reader_close(again);
	shardmap_stats st;
	shardmap_stats_get(m, &st);
	cr_assert_eq(st.readers, 0);
}

Test(lookup, version_is_a_snapshot)
{
	cr_assert_eq(shardmap_version(m), 1);
	shardmap_delta *d;
	cr_assert_eq(shardmap_delta_new(1, 42, &d), 0);
	cr_assert_eq(shardmap_apply(m, d, NULL), 0);
	shardmap_delta_free(d);
	cr_assert_eq(shardmap_version(m), 42);
	shardmap_reader *r;
	cr_assert_eq(shardmap_reader_open(m, &r), 0);
	shardmap_read_begin(r);
	shardmap_route rt;
	cr_assert_eq(shardmap_find_shard(r, "x", "old", &rt), 0);
	cr_assert_eq(rt.version, 42);
	shardmap_read_end(r);
	shardmap_reader_close(r);
}

#ifndef NDEBUG
Test(lookup, outside_a_section_asserts, .signal = SIGABRT)
{
	shardmap_reader *r;
	cr_assert_eq(shardmap_reader_open(m, &r), 0);
	shardmap_route rt;
	shardmap_route_hash(r, "x", ZERO, &rt);
}
#endif

/* ---------------------------------------------------------------- batches and the memo */

static void assert_same_route(const shardmap_route *a, const shardmap_route *b)
{
	cr_assert_eq(a->version, b->version);
	cr_assert_eq(a->stream, b->stream, "the same record");
	cr_assert_eq(a->shard_id, b->shard_id, "the same record");
	cr_assert(shardmap_hash_cmp(a->start, b->start) == 0);
	cr_assert(shardmap_hash_cmp(a->end, b->end) == 0);
	cr_assert_eq(a->open, b->open);
	cr_assert_eq(a->parent, b->parent);
	cr_assert_eq(a->adjacent_parent, b->adjacent_parent);
	cr_assert_eq(a->cell_id, b->cell_id, "the same cell record");
	cr_assert_eq(a->endpoints, b->endpoints);
	cr_assert_eq(a->n_endpoints, b->n_endpoints);
}

#define BATCH_KEYS 100 /* more than one group of 16, and not a multiple of it */

/* keys of 0 .. 99 bytes: "", "k", "kk", ... with a varying tail */
static void make_keys(char buf[BATCH_KEYS][BATCH_KEYS], shardmap_key *keys)
{
	for (size_t i = 0; i < BATCH_KEYS; i++) {
		memset(buf[i], 'k', i);
		if (i > 0)
			buf[i][i - 1] = (char)('0' + i % 10);
		keys[i] = (shardmap_key){.data = i ? buf[i] : NULL, .len = i};
	}
}

/* Every key of a batch routes exactly as shardmap_route_key routes it, on stream `stream`. */
static void check_batch(shardmap *map, const char *stream)
{
	static char buf[BATCH_KEYS][BATCH_KEYS];
	shardmap_key keys[BATCH_KEYS];
	shardmap_route batch[BATCH_KEYS], one;
	make_keys(buf, keys);
	shardmap_reader *r;
	cr_assert_eq(shardmap_reader_open(map, &r), 0);
	shardmap_read_begin(r);
	for (size_t n = 0; n <= BATCH_KEYS; n += n < 20 ? 1 : 40) {
		cr_assert_eq(shardmap_route_keys(r, stream, keys, n, batch), 0);
		for (size_t i = 0; i < n; i++) {
			cr_assert_eq(shardmap_route_key(r, stream, keys[i].data, keys[i].len, &one),
				     0);
			assert_same_route(&batch[i], &one);
		}
	}
	shardmap_read_end(r);
	shardmap_reader_close(r);
}

Test(lookup, route_keys_answers_as_route_key)
{
	check_batch(m, "x");
	check_batch(m, "k"); /* MD5 */
}

Test(lookup, route_keys_takes_explicit_hashes)
{
	shardmap_reader *r;
	cr_assert_eq(shardmap_reader_open(m, &r), 0);
	shardmap_read_begin(r);
	/* every range edge, each behind a key whose own hash would route elsewhere or not */
	shardmap_hash hs[2 * N_SHARDS];
	shardmap_key keys[2 * N_SHARDS];
	shardmap_route out[2 * N_SHARDS], one;
	for (size_t i = 0; i < N_SHARDS; i++) {
		hs[2 * i] = starts[i];
		hs[2 * i + 1] = i + 1 < N_SHARDS ? minus1(starts[i + 1]) : MAXH;
	}
	for (size_t i = 0; i < 2 * N_SHARDS; i++)
		keys[i] = (shardmap_key){"same-key", 8, i % 3 ? &hs[i] : NULL};
	cr_assert_eq(shardmap_route_keys(r, "x", keys, 2 * N_SHARDS, out), 0);
	for (size_t i = 0; i < 2 * N_SHARDS; i++) {
		if (keys[i].explicit_hash != NULL) {
			cr_assert_eq(shardmap_route_hash(r, "x", hs[i], &one), 0);
			cr_assert(in_range(hs[i], &out[i]), "key %zu routes by its explicit hash", i);
		} else {
			cr_assert_eq(shardmap_route_key(r, "x", "same-key", 8, &one), 0);
		}
		assert_same_route(&out[i], &one);
	}
	shardmap_read_end(r);
	shardmap_reader_close(r);
}

/* The published tree of stream has a jump table, and it is the one its nodes call for. */
static void check_jump_table(shardmap *map, const char *stream)
{
	const struct shardmap__version *v = shardmap__pin(map);
	const struct shardmap__stream *st = shardmap__version_stream(v, stream);
	cr_assert_not_null(st);
	cr_assert_not_null(st->open.jump, "a tree of %u levels is sealed", st->open.height);
	cr_assert_eq(shardmap__btree_check(&st->open), 0);
	shardmap__unpin(map);
}

Test(big, route_keys_on_a_tall_tree)
{
	/* 70,000 shards: a B+-tree of five levels, so the batched walk descends through inner
	 * levels together; owners over three cells. */
	shardmap *big;
	cr_assert_eq(shardmap_open(&big, NULL), 0);
	shardmap_delta *d;
	cr_assert_eq(shardmap_delta_new(0, 1, &d), 0);
	const char *eps[] = {"h:1"};
	const char *owners[] = {"c0", "c1", "c2"};
	for (int i = 0; i < 3; i++)
		cr_assert_eq(shardmap_delta_put_cell(d, owners[i], eps, 1), 0);
	cr_assert_eq(shardmap_apply(big, d, NULL), 0);
	shardmap_delta_free(d);
	cr_assert_eq(shardmap_plan_create_stream(big, "s", SHARDMAP_HASH_XXH3, 70000, owners, 3, &d),
		     0);
	cr_assert_eq(shardmap_apply(big, d, NULL), 0);
	shardmap_delta_free(d);
	check_batch(big, "s");

	/* 4,000 shards: three levels under a jump table, which the next version's table
	 * replaces when a split changes a leaf. */
	cr_assert_eq(shardmap_plan_create_stream(big, "j", SHARDMAP_HASH_XXH3, 4000, owners, 3, &d),
		     0);
	cr_assert_eq(shardmap_apply(big, d, NULL), 0);
	shardmap_delta_free(d);
	check_jump_table(big, "j");
	check_batch(big, "j");
	shardmap_hash mid = {UINT64_MAX / 4000 / 2, 0};
	cr_assert_eq(shardmap_plan_split(big, "j", "shardId-000000000000", mid, &d), 0);
	cr_assert_eq(shardmap_apply(big, d, NULL), 0);
	shardmap_delta_free(d);
	check_jump_table(big, "j");
	check_batch(big, "j");
	shardmap_close(big);
}

Test(lookup, route_keys_errors_change_nothing)
{
	shardmap_reader *r;
	cr_assert_eq(shardmap_reader_open(m, &r), 0);
	shardmap_read_begin(r);
	shardmap_key keys[2] = {{.data = "a", .len = 1}, {.data = "b", .len = 1}};
	shardmap_route out[2], before;
	memset(out, 0x5a, sizeof out);
	memcpy(&before, &out[0], sizeof before);
	cr_assert_eq(shardmap_route_keys(NULL, "x", keys, 2, out), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_route_keys(r, NULL, keys, 2, out), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_route_keys(r, "x", NULL, 2, out), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_route_keys(r, "x", keys, 2, NULL), SHARDMAP_EINVAL);
	shardmap_key bad[2] = {{.data = "a", .len = 1}, {.data = NULL, .len = 3}};
	cr_assert_eq(shardmap_route_keys(r, "x", bad, 2, out), SHARDMAP_EINVAL,
		     "NULL data with a length");
	cr_assert_eq(shardmap_route_keys(r, "nope", keys, 2, out), SHARDMAP_ENOENT);
	cr_assert_eq(memcmp(&out[0], &before, sizeof before), 0, "out untouched");
	cr_assert_eq(memcmp(&out[1], &before, sizeof before), 0, "out untouched");
	cr_assert_eq(shardmap_route_keys(r, "x", NULL, 0, NULL), 0, "nothing to route");
	cr_assert_eq(shardmap_route_keys(r, "nope", NULL, 0, NULL), SHARDMAP_ENOENT,
		     "the stream is still checked");
	shardmap_read_end(r);
	shardmap_reader_close(r);

	shardmap *e;
	cr_assert_eq(shardmap_open(&e, NULL), 0);
	cr_assert_eq(shardmap_reader_open(e, &r), 0);
	shardmap_read_begin(r);
	cr_assert_eq(shardmap_route_keys(r, "x", keys, 2, out), SHARDMAP_ENOTREADY);
	shardmap_read_end(r);
	shardmap_reader_close(r);
	shardmap_close(e);
}

/* Apply one delta from the current version to the next. */
static void apply_next(shardmap_delta *d)
{
	shardmap_error why;
	cr_assert_eq(shardmap_apply(m, d, &why), 0, "%s", why.message);
	shardmap_delta_free(d);
}

Test(lookup, memo_never_answers_from_an_older_version)
{
	shardmap_reader *r;
	cr_assert_eq(shardmap_reader_open(m, &r), 0);
	shardmap_route rt;
	shardmap_key key = {.data = "", .len = 0};
	shardmap_read_begin(r);
	cr_assert_eq(shardmap_route_hash(r, "x", ZERO, &rt), 0);
	cr_assert_str_eq(rt.cell_id, "a");
	cr_assert_eq(rt.n_endpoints, 2);
	cr_assert_eq(shardmap_route_hash(r, "k", ZERO, &rt), 0, "the memo swaps streams");
	cr_assert_str_eq(rt.shard_id, "only");
	cr_assert_eq(shardmap_route_hash(r, "x", ZERO, &rt), 0);
	cr_assert_str_eq(rt.shard_id, "x-0");

	/* Cell a gets new endpoints, published while the section runs: the next lookup reads
	 * the new version, so neither the memo's cell nor its stream may answer. */
	shardmap_delta *d;
	cr_assert_eq(shardmap_delta_new(1, 2, &d), 0);
	const char *ea[] = {"a9.example:9000"};
	cr_assert_eq(shardmap_delta_put_cell(d, "a", ea, 1), 0);
	apply_next(d);
	cr_assert_eq(shardmap_route_hash(r, "x", ZERO, &rt), 0);
	cr_assert_eq(rt.version, 2);
	cr_assert_eq(rt.n_endpoints, 1);
	cr_assert_str_eq(rt.endpoints[0], "a9.example:9000");
	shardmap_read_end(r);

	/* Stream x is replaced by one of the same name with one shard owned by b. */
	cr_assert_eq(shardmap_delta_new(2, 3, &d), 0);
	cr_assert_eq(shardmap_delta_delete_stream(d, "x"), 0);
	cr_assert_eq(shardmap_delta_put_stream(d, "x", SHARDMAP_HASH_XXH3), 0);
	add_shard(d, "x", "fresh", ZERO, MAXH, 1, "b", NULL, NULL);
	apply_next(d);
	shardmap_read_begin(r);
	shardmap_route batch[1];
	cr_assert_eq(shardmap_route_keys(r, "x", &key, 1, batch), 0);
	cr_assert_str_eq(batch[0].shard_id, "fresh");
	cr_assert_str_eq(batch[0].cell_id, "b");
	cr_assert_eq(shardmap_route_key(r, "x", "any", 3, &rt), 0);
	cr_assert_str_eq(rt.shard_id, "fresh");
	shardmap_read_end(r);
	shardmap_reader_close(r);
}
