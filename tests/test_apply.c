/*
 * test_apply.c - every op and every error path of shardmap_apply, the private builder and
 * the shardmap_delta_* builders: version rules, op semantics, end-of-batch invariants (with
 * the failing op's index and message), reference counts of cells, digests, the canonical
 * delta of a version, observers, stats and the copy-on-write footprint of a small batch.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "map.h"
#include "mem.h"
#include "version.h"

/* ---------------------------------------------------------------- helpers */

static const shardmap_hash ZERO = {0, 0};
static const shardmap_hash MAXH = {UINT64_MAX, UINT64_MAX};

/* i * 2^126: the starts of the base stream's four shards. */
static shardmap_hash quarter(unsigned i)
{
	return (shardmap_hash){(uint64_t)i << 62, 0};
}

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

static shardmap_delta *new_delta(uint64_t from, uint64_t to)
{
	shardmap_delta *d = NULL;
	cr_assert_eq(shardmap_delta_new(from, to, &d), 0);
	return d;
}

static void add_cell(shardmap_delta *d, const char *id, const char *ep)
{
	char buf[128];
	snprintf(buf, sizeof buf, "%s.example:7000", id);
	const char *eps[] = {ep ? ep : buf};
	cr_assert_eq(shardmap_delta_put_cell(d, id, eps, 1), 0);
}

static void add_shard_full(shardmap_delta *d, const char *stream, const char *id,
			   shardmap_hash start, shardmap_hash end, int open, const char *owner,
			   const char *parent, const char *adj)
{
	shardmap_shard s = {id, start, end, open, owner, parent, adj};
	cr_assert_eq(shardmap_delta_put_shard(d, stream, &s), 0, "put_shard %s", id);
}

static void add_shard(shardmap_delta *d, const char *stream, const char *id, shardmap_hash start,
		      shardmap_hash end, int open, const char *owner)
{
	add_shard_full(d, stream, id, start, end, open, owner, NULL, NULL);
}

/* Stream `stream` (XXH3) with four equal open shards shardId-000000000000..3, owned by c1, c2,
 * c1, c2. */
static void add_base_stream(shardmap_delta *d, const char *stream)
{
	cr_assert_eq(shardmap_delta_put_stream(d, stream, SHARDMAP_HASH_XXH3), 0);
	for (unsigned i = 0; i < 4; i++) {
		char id[32];
		snprintf(id, sizeof id, "shardId-%012u", i);
		add_shard(d, stream, id, quarter(i), i == 3 ? MAXH : minus1(quarter(i + 1)), 1,
			  i % 2 ? "c2" : "c1");
	}
}

/* Version 1: cells c1, c2 and stream "s". */
static shardmap_delta *base_delta(void)
{
	shardmap_delta *d = new_delta(0, 1);
	add_cell(d, "c1", NULL);
	add_cell(d, "c2", NULL);
	add_base_stream(d, "s");
	return d;
}

static void apply_ok(shardmap *m, shardmap_delta *d)
{
	shardmap_error why;
	int rc = shardmap_apply(m, d, &why);
	cr_assert_eq(rc, 0, "apply: %s: %s", shardmap_err_name(rc), why.message);
	cr_assert_eq(why.code, 0);
	shardmap_delta_free(d);
}

static shardmap *open_map(void)
{
	shardmap *m = NULL;
	cr_assert_eq(shardmap_open(&m, NULL), 0);
	return m;
}

static shardmap *open_base(void)
{
	shardmap *m = open_map();
	apply_ok(m, base_delta());
	return m;
}

static uint64_t digest_of(shardmap *m)
{
	const struct shardmap__version *v = shardmap__pin(m);
	uint64_t g = v ? v->digest : 0;
	shardmap__unpin(m);
	return g;
}

/* Apply d expecting failure with code at op (SIZE_MAX: none) and text in the message; the
 * map must be unchanged. Frees d. */
static void apply_fails(shardmap *m, shardmap_delta *d, int code, size_t op, const char *text)
{
	uint64_t v0 = shardmap_version(m), g0 = digest_of(m);
	shardmap_error why;
	int rc = shardmap_apply(m, d, &why);
	cr_assert_eq(rc, code, "got %s, want %s: %s", shardmap_err_name(rc),
		     shardmap_err_name(code), why.message);
	cr_assert_eq(why.code, code);
	cr_assert_eq(why.op_index, op, "op_index %zu, want %zu: %s", why.op_index, op, why.message);
	if (text != NULL)
		cr_assert(strstr(why.message, text) != NULL, "message \"%s\" lacks \"%s\"",
			  why.message, text);
	if (op != SIZE_MAX) {
		char prefix[32];
		snprintf(prefix, sizeof prefix, "op %zu ", op);
		cr_assert(strncmp(why.message, prefix, strlen(prefix)) == 0, "message \"%s\"",
			  why.message);
	}
	cr_assert_eq(shardmap_version(m), v0);
	cr_assert_eq(digest_of(m), g0);
	shardmap_delta_free(d);
}

/* What a lookup answered, copied out of its section. */
struct seen {
	int rc;
	uint64_t version;
	char shard[64], cell[64], ep0[128], parent[64], adj[64];
	shardmap_hash start, end;
	int open;
	size_t n_endpoints;
};

static void copy_route(struct seen *s, const shardmap_route *r)
{
	s->version = r->version;
	snprintf(s->shard, sizeof s->shard, "%s", r->shard_id);
	snprintf(s->cell, sizeof s->cell, "%s", r->cell_id);
	snprintf(s->ep0, sizeof s->ep0, "%s", r->n_endpoints ? r->endpoints[0] : "");
	snprintf(s->parent, sizeof s->parent, "%s", r->parent ? r->parent : "-");
	snprintf(s->adj, sizeof s->adj, "%s", r->adjacent_parent ? r->adjacent_parent : "-");
	s->start = r->start;
	s->end = r->end;
	s->open = r->open;
	s->n_endpoints = r->n_endpoints;
}

static struct seen seen_hash(shardmap *m, const char *stream, shardmap_hash h)
{
	struct seen s = {0};
	shardmap_reader *r;
	cr_assert_eq(shardmap_reader_open(m, &r), 0);
	shardmap_route rt;
	shardmap_read_begin(r);
	s.rc = shardmap_route_hash(r, stream, h, &rt);
	if (s.rc == 0)
		copy_route(&s, &rt);
	shardmap_read_end(r);
	shardmap_reader_close(r);
	return s;
}

static struct seen seen_id(shardmap *m, const char *stream, const char *id)
{
	struct seen s = {0};
	shardmap_reader *r;
	cr_assert_eq(shardmap_reader_open(m, &r), 0);
	shardmap_route rt;
	shardmap_read_begin(r);
	s.rc = shardmap_find_shard(r, stream, id, &rt);
	if (s.rc == 0)
		copy_route(&s, &rt);
	shardmap_read_end(r);
	shardmap_reader_close(r);
	return s;
}

static int hash_eq(shardmap_hash a, shardmap_hash b)
{
	return a.hi == b.hi && a.lo == b.lo;
}

/* ---------------------------------------------------------------- delta builders */

Test(delta_builders, new_and_accessors)
{
	shardmap_delta *d = NULL;
	cr_assert_eq(shardmap_delta_new(1, 2, NULL), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_new(2, 2, &d), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_new(3, 2, &d), SHARDMAP_EINVAL);
	cr_assert_null(d);
	cr_assert_eq(shardmap_delta_new(4, 9, &d), 0);
	cr_assert_eq(shardmap_delta_from(d), 4);
	cr_assert_eq(shardmap_delta_to(d), 9);
	cr_assert_eq(shardmap_delta_count(d), 0);
	cr_assert_eq(shardmap_delta_from(NULL), 0);
	cr_assert_eq(shardmap_delta_count(NULL), 0);
	shardmap_delta_free(d);
	shardmap_delta_free(NULL);
}

Test(delta_builders, put_cell_rejects_bad_arguments)
{
	shardmap_delta *d = new_delta(0, 1);
	char long_id[300];
	memset(long_id, 'x', sizeof long_id - 1);
	long_id[sizeof long_id - 1] = '\0';
	const char *ok[] = {"h:1"};
	cr_assert_eq(shardmap_delta_put_cell(NULL, "c", ok, 1), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_put_cell(d, NULL, ok, 1), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_put_cell(d, "", ok, 1), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_put_cell(d, long_id, ok, 1), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_put_cell(d, "a\nb", ok, 1), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_put_cell(d, "c", NULL, 1), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_put_cell(d, "c", ok, 0), SHARDMAP_EINVAL);
	const char *bad[] = {"host",  "host:", ":80", "host:0", "host:65536",
			     "h:8x0", "h:-1",  "",    NULL,	"h:99999999999999999999"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		const char *eps[] = {"good:1", bad[i]};
		cr_assert_eq(shardmap_delta_put_cell(d, "c", eps, 2), SHARDMAP_EINVAL,
			     "endpoint %s", bad[i] ? bad[i] : "NULL");
	}
	cr_assert_eq(shardmap_delta_count(d), 0, "a rejected put changes nothing");
	const char *good[] = {"a.b:1", "[::1]:65535"};
	cr_assert_eq(shardmap_delta_put_cell(d, "c", good, 2), 0);
	cr_assert_eq(shardmap_delta_count(d), 1);
	shardmap_delta_free(d);
}

Test(delta_builders, stream_and_cell_deletes_reject_bad_names)
{
	shardmap_delta *d = new_delta(0, 1);
	cr_assert_eq(shardmap_delta_delete_cell(NULL, "c"), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_delete_cell(d, NULL), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_delete_cell(d, ""), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_put_stream(NULL, "s", SHARDMAP_HASH_XXH3), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_put_stream(d, NULL, SHARDMAP_HASH_XXH3), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_put_stream(d, "", SHARDMAP_HASH_XXH3), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_put_stream(d, "s", 2), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_put_stream(d, "s", -1), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_delete_stream(NULL, "s"), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_delete_stream(d, ""), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_delete_stream(d, "a\tb"), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_count(d), 0);
	cr_assert_eq(shardmap_delta_put_stream(d, "s", SHARDMAP_HASH_MD5), 0);
	cr_assert_eq(shardmap_delta_delete_stream(d, "s"), 0);
	cr_assert_eq(shardmap_delta_delete_cell(d, "c"), 0);
	cr_assert_eq(shardmap_delta_count(d), 3);
	shardmap_delta_free(d);
}

Test(delta_builders, shard_ops_reject_bad_arguments)
{
	shardmap_delta *d = new_delta(0, 1);
	shardmap_shard ok = {"id", ZERO, MAXH, 1, "c", NULL, NULL};
	shardmap_shard s;
	cr_assert_eq(shardmap_delta_put_shard(NULL, "s", &ok), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_put_shard(d, "s", NULL), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_put_shard(d, NULL, &ok), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_put_shard(d, "", &ok), SHARDMAP_EINVAL);
	s = ok, s.id = NULL;
	cr_assert_eq(shardmap_delta_put_shard(d, "s", &s), SHARDMAP_EINVAL);
	s = ok, s.id = "";
	cr_assert_eq(shardmap_delta_put_shard(d, "s", &s), SHARDMAP_EINVAL);
	s = ok, s.owner_cell = NULL;
	cr_assert_eq(shardmap_delta_put_shard(d, "s", &s), SHARDMAP_EINVAL);
	s = ok, s.owner_cell = "";
	cr_assert_eq(shardmap_delta_put_shard(d, "s", &s), SHARDMAP_EINVAL);
	s = ok, s.parent = "";
	cr_assert_eq(shardmap_delta_put_shard(d, "s", &s), SHARDMAP_EINVAL);
	s = ok, s.adjacent_parent = "x\x01";
	cr_assert_eq(shardmap_delta_put_shard(d, "s", &s), SHARDMAP_EINVAL);
	s = ok, s.start = plus1(ZERO), s.end = ZERO;
	cr_assert_eq(shardmap_delta_put_shard(d, "s", &s), SHARDMAP_EINVAL, "start > end");
	cr_assert_eq(shardmap_delta_delete_shard(NULL, "s", "id"), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_delete_shard(d, "", "id"), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_delete_shard(d, "s", ""), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_delete_shard(d, "s", NULL), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_count(d), 0);
	s = ok, s.start = s.end = quarter(1); /* a one-key range is fine */
	cr_assert_eq(shardmap_delta_put_shard(d, "s", &s), 0);
	cr_assert_eq(shardmap_delta_delete_shard(d, "s", "id"), 0);
	cr_assert_eq(shardmap_delta_count(d), 2);
	shardmap_delta_free(d);
}

/* ---------------------------------------------------------------- version rules */

Test(version_rules, first_apply_publishes_version)
{
	shardmap *m = open_map();
	cr_assert_eq(shardmap_version(m), 0);
	cr_assert_eq(digest_of(m), 0);
	apply_ok(m, base_delta());
	cr_assert_eq(shardmap_version(m), 1);
	cr_assert_neq(digest_of(m), 0);
	struct seen s = seen_hash(m, "s", quarter(2));
	cr_assert_eq(s.rc, 0);
	cr_assert_str_eq(s.shard, "shardId-000000000002");
	cr_assert_str_eq(s.cell, "c1");
	cr_assert_eq(s.version, 1);
	shardmap_close(m);
}

Test(version_rules, stale_gap_and_straddle_change_nothing)
{
	shardmap *m = open_base();
	apply_fails(m, base_delta(), SHARDMAP_ESTALE, SIZE_MAX, "already applied");
	apply_fails(m, new_delta(2, 3), SHARDMAP_EGAP, SIZE_MAX, "gap");
	apply_fails(m, new_delta(0, 2), SHARDMAP_EGAP, SIZE_MAX, "straddles");
	apply_ok(m, new_delta(1, 5)); /* versions may jump (store revisions) */
	cr_assert_eq(shardmap_version(m), 5);
	apply_fails(m, new_delta(3, 4), SHARDMAP_ESTALE, SIZE_MAX, "already applied");
	apply_fails(m, new_delta(3, 5), SHARDMAP_ESTALE, SIZE_MAX, NULL);
	apply_fails(m, new_delta(4, 6), SHARDMAP_EGAP, SIZE_MAX, "straddles");
	apply_fails(m, new_delta(6, 7), SHARDMAP_EGAP, SIZE_MAX, "needs version 6");
	shardmap_stats st;
	cr_assert_eq(shardmap_stats_get(m, &st), 0);
	cr_assert_eq(st.rejects_stale, 3);
	cr_assert_eq(st.rejects_gap, 4);
	cr_assert_eq(st.applies, 2);
	shardmap_close(m);
}

Test(version_rules, null_arguments)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	shardmap_error why;
	cr_assert_eq(shardmap_apply(NULL, d, &why), SHARDMAP_EINVAL);
	cr_assert_eq(why.op_index, SIZE_MAX);
	cr_assert_eq(shardmap_apply(m, NULL, &why), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_apply(m, d, NULL), 0, "why may be NULL");
	shardmap_stats st;
	shardmap_stats_get(m, &st);
	cr_assert_eq(st.rejects_invalid, 1);
	shardmap_delta_free(d);
	shardmap_close(m);
}

/* ---------------------------------------------------------------- streams */

Test(streams, put_stream_changes_hash_function_and_keeps_shards)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	cr_assert_eq(shardmap_delta_put_stream(d, "s", SHARDMAP_HASH_MD5), 0);
	apply_ok(m, d);
	shardmap_reader *r;
	cr_assert_eq(shardmap_reader_open(m, &r), 0);
	shardmap_read_begin(r);
	for (int i = 0; i < 50; i++) {
		char key[16];
		snprintf(key, sizeof key, "key-%d", i);
		shardmap_hash h = shardmap_hash_key(SHARDMAP_HASH_MD5, key, strlen(key));
		shardmap_route rt;
		cr_assert_eq(shardmap_route_key(r, "s", key, strlen(key), &rt), 0);
		cr_assert(shardmap_hash_cmp(rt.start, h) <= 0 && shardmap_hash_cmp(h, rt.end) <= 0);
	}
	shardmap_read_end(r);
	shardmap_reader_close(r);
	const struct shardmap__version *v = shardmap__pin(m);
	const struct shardmap__stream *st = shardmap__version_stream(v, "s");
	cr_assert_eq(st->hash_fn, SHARDMAP_HASH_MD5);
	cr_assert_eq(st->n_open, 4);
	cr_assert_eq(v->n_open, 4);
	shardmap__unpin(m);
	shardmap_close(m);
}

Test(streams, delete_stream_drops_its_shards_and_their_references)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	cr_assert_eq(shardmap_delta_delete_stream(d, "s"), 0);
	cr_assert_eq(shardmap_delta_delete_cell(d, "c1"), 0);
	cr_assert_eq(shardmap_delta_delete_cell(d, "c2"), 0);
	apply_ok(m, d);
	cr_assert_eq(seen_hash(m, "s", ZERO).rc, SHARDMAP_ENOENT);
	cr_assert_eq(seen_id(m, "s", "shardId-000000000000").rc, SHARDMAP_ENOENT);
	shardmap_stats st;
	shardmap_stats_get(m, &st);
	cr_assert_eq(st.streams, 0);
	cr_assert_eq(st.open_shards, 0);
	cr_assert_eq(st.cells, 0);
	cr_assert_eq(digest_of(m), 0, "an empty map has the empty digest");
	shardmap_close(m);
}

Test(streams, delete_stream_then_recreate_in_one_batch)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	cr_assert_eq(shardmap_delta_delete_stream(d, "s"), 0);
	cr_assert_eq(shardmap_delta_put_stream(d, "s", SHARDMAP_HASH_XXH3), 0);
	add_shard(d, "s", "whole", ZERO, MAXH, 1, "c2");
	apply_ok(m, d);
	struct seen s = seen_hash(m, "s", quarter(1));
	cr_assert_str_eq(s.shard, "whole");
	cr_assert_eq(seen_id(m, "s", "shardId-000000000001").rc, SHARDMAP_ENOENT);
	/* c1 lost its shards with the old stream: it can go now */
	d = new_delta(2, 3);
	cr_assert_eq(shardmap_delta_delete_cell(d, "c1"), 0);
	apply_ok(m, d);
	shardmap_close(m);
}

Test(streams, delete_missing_stream_conflicts)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	add_cell(d, "c3", NULL);
	cr_assert_eq(shardmap_delta_delete_stream(d, "nope"), 0);
	apply_fails(m, d, SHARDMAP_ECONFLICT, 1, "delete_stream: stream \"nope\" does not exist");
	shardmap_close(m);
}

Test(streams, stream_without_open_shards_conflicts)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	cr_assert_eq(shardmap_delta_put_stream(d, "empty", SHARDMAP_HASH_XXH3), 0);
	apply_fails(m, d, SHARDMAP_ECONFLICT, 0, "has no open shards");

	d = new_delta(1, 2); /* close every shard of s */
	for (unsigned i = 0; i < 4; i++) {
		char id[32];
		snprintf(id, sizeof id, "shardId-%012u", i);
		add_shard(d, "s", id, quarter(i), i == 3 ? MAXH : minus1(quarter(i + 1)), 0, "c1");
	}
	apply_fails(m, d, SHARDMAP_ECONFLICT, 3, "has no open shards");

	d = new_delta(1, 2); /* a stream with only closed shards */
	cr_assert_eq(shardmap_delta_put_stream(d, "t", SHARDMAP_HASH_XXH3), 0);
	add_shard(d, "t", "a", ZERO, MAXH, 0, "c1");
	apply_fails(m, d, SHARDMAP_ECONFLICT, 1, "has no open shards");
	shardmap_close(m);
}

/* ---------------------------------------------------------------- shards */

Test(shards, put_shard_needs_its_stream)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	add_shard(d, "nope", "a", ZERO, MAXH, 1, "c1");
	apply_fails(m, d, SHARDMAP_ECONFLICT, 0, "put_shard: stream \"nope\" does not exist");
	d = new_delta(1, 2); /* the stream made later in the batch is too late */
	add_shard(d, "t", "a", ZERO, MAXH, 1, "c1");
	cr_assert_eq(shardmap_delta_put_stream(d, "t", SHARDMAP_HASH_XXH3), 0);
	apply_fails(m, d, SHARDMAP_ECONFLICT, 0, "does not exist");
	shardmap_close(m);
}

Test(shards, delete_shard_needs_stream_and_shard)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	cr_assert_eq(shardmap_delta_delete_shard(d, "nope", "shardId-000000000000"), 0);
	apply_fails(m, d, SHARDMAP_ECONFLICT, 0, "stream \"nope\" does not exist");
	d = new_delta(1, 2);
	cr_assert_eq(shardmap_delta_delete_shard(d, "s", "shardId-000000000009"), 0);
	apply_fails(m, d, SHARDMAP_ECONFLICT, 0, "no shard \"shardId-000000000009\"");
	shardmap_close(m);
}

Test(shards, replace_by_id_moves_owner)
{
	shardmap *m = open_base();
	uint64_t g0 = digest_of(m);
	shardmap_delta *d = new_delta(1, 2);
	add_shard(d, "s", "shardId-000000000000", ZERO, minus1(quarter(1)), 1, "c2");
	apply_ok(m, d);
	struct seen s = seen_hash(m, "s", ZERO);
	cr_assert_str_eq(s.shard, "shardId-000000000000");
	cr_assert_str_eq(s.cell, "c2");
	cr_assert_str_eq(s.ep0, "c2.example:7000");
	cr_assert_neq(digest_of(m), g0);
	d = new_delta(2, 3); /* and back: the digest is a function of content only */
	add_shard(d, "s", "shardId-000000000000", ZERO, minus1(quarter(1)), 1, "c1");
	apply_ok(m, d);
	cr_assert_eq(digest_of(m), g0);
	shardmap_close(m);
}

Test(shards, split_closes_parent_which_stays_findable)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	shardmap_hash mid = {1ull << 61, 0};
	/* children first: the left child takes the parent's start before the parent closes */
	add_shard_full(d, "s", "shardId-000000000004", ZERO, minus1(mid), 1, "c1",
		       "shardId-000000000000", NULL);
	add_shard_full(d, "s", "shardId-000000000005", mid, minus1(quarter(1)), 1, "c2",
		       "shardId-000000000000", NULL);
	add_shard(d, "s", "shardId-000000000000", ZERO, minus1(quarter(1)), 0, "c1");
	apply_ok(m, d);
	struct seen s = seen_hash(m, "s", minus1(mid));
	cr_assert_str_eq(s.shard, "shardId-000000000004");
	cr_assert_str_eq(s.parent, "shardId-000000000000");
	cr_assert_eq(s.open, 1);
	s = seen_hash(m, "s", mid);
	cr_assert_str_eq(s.shard, "shardId-000000000005");
	cr_assert_str_eq(s.cell, "c2");
	s = seen_id(m, "s", "shardId-000000000000");
	cr_assert_eq(s.rc, 0);
	cr_assert_eq(s.open, 0);
	cr_assert_str_eq(s.cell, "c1");
	cr_assert(hash_eq(s.end, minus1(quarter(1))));
	shardmap_stats st;
	shardmap_stats_get(m, &st);
	cr_assert_eq(st.open_shards, 5);
	cr_assert_eq(st.closed_shards, 1);
	shardmap_close(m);
}

Test(shards, merge_written_child_first)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	add_shard_full(d, "s", "shardId-000000000004", ZERO, minus1(quarter(2)), 1, "c1",
		       "shardId-000000000000", "shardId-000000000001");
	add_shard(d, "s", "shardId-000000000000", ZERO, minus1(quarter(1)), 0, "c1");
	add_shard(d, "s", "shardId-000000000001", quarter(1), minus1(quarter(2)), 0, "c2");
	apply_ok(m, d);
	struct seen s = seen_hash(m, "s", quarter(1));
	cr_assert_str_eq(s.shard, "shardId-000000000004");
	cr_assert_str_eq(s.adj, "shardId-000000000001");
	cr_assert_str_eq(s.parent, "shardId-000000000000");
	cr_assert_eq(seen_id(m, "s", "shardId-000000000001").open, 0);
	shardmap_close(m);
}

Test(shards, pushed_out_shard_returns_when_start_frees)
{
	shardmap *m = open_base();
	uint64_t g0 = digest_of(m);
	shardmap_delta *d = new_delta(1, 2);
	add_shard(d, "s", "intruder", ZERO, minus1(quarter(1)), 1, "c2");
	cr_assert_eq(shardmap_delta_delete_shard(d, "s", "intruder"), 0);
	apply_ok(m, d);
	cr_assert_eq(digest_of(m), g0);
	cr_assert_str_eq(seen_hash(m, "s", ZERO).shard, "shardId-000000000000");
	shardmap_close(m);
}

Test(shards, deleted_shard_is_gone_closed_shard_not_routed)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2); /* merge 2+3 into 9, then delete closed 3 */
	add_shard(d, "s", "shardId-000000000009", quarter(2), MAXH, 1, "c2");
	add_shard(d, "s", "shardId-000000000002", quarter(2), minus1(quarter(3)), 0, "c1");
	add_shard(d, "s", "shardId-000000000003", quarter(3), MAXH, 0, "c2");
	cr_assert_eq(shardmap_delta_delete_shard(d, "s", "shardId-000000000003"), 0);
	apply_ok(m, d);
	cr_assert_eq(seen_id(m, "s", "shardId-000000000003").rc, SHARDMAP_ENOENT);
	cr_assert_str_eq(seen_hash(m, "s", MAXH).shard, "shardId-000000000009");
	cr_assert_str_eq(seen_hash(m, "s", quarter(3)).shard, "shardId-000000000009");
	shardmap_stats st;
	shardmap_stats_get(m, &st);
	cr_assert_eq(st.open_shards, 3);
	cr_assert_eq(st.closed_shards, 1);
	shardmap_close(m);
}

Test(shards, kinesis_sequence_never_decreases)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	add_shard(d, "s", "shardId-000000000041", ZERO, quarter(1), 0, "c1");
	add_shard(d, "s", "shardId-00000000007", ZERO, quarter(1), 0, "c1");   /* 11 digits */
	add_shard(d, "s", "shardId-0000000000999", ZERO, quarter(1), 0, "c1"); /* 13 digits */
	add_shard(d, "s", "other-000000000099", ZERO, quarter(1), 0, "c1");
	apply_ok(m, d);
	const struct shardmap__version *v = shardmap__pin(m);
	cr_assert_eq(shardmap__version_stream(v, "s")->next_seq, 42);
	shardmap__unpin(m);
	d = new_delta(2, 3);
	cr_assert_eq(shardmap_delta_delete_shard(d, "s", "shardId-000000000041"), 0);
	apply_ok(m, d);
	v = shardmap__pin(m);
	cr_assert_eq(shardmap__version_stream(v, "s")->next_seq, 42);
	shardmap__unpin(m);
	shardmap_close(m);
}

/* ---------------------------------------------------------------- coverage */

Test(coverage, gap_between_shards)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	add_cell(d, "c3", NULL);
	add_shard(d, "s", "shardId-000000000001", plus1(quarter(1)), minus1(quarter(2)), 1, "c2");
	apply_fails(m, d, SHARDMAP_ECONFLICT, 1, "gap");
	shardmap_close(m);
}

Test(coverage, overlap_between_shards)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	add_shard(d, "s", "shardId-000000000001", minus1(quarter(1)), minus1(quarter(2)), 1, "c2");
	apply_fails(m, d, SHARDMAP_ECONFLICT, 0, "overlap");
	shardmap_close(m);
}

Test(coverage, overlap_by_nesting)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	add_shard(d, "s", "inner", plus1(quarter(1)), minus1(minus1(quarter(2))), 1, "c2");
	apply_fails(m, d, SHARDMAP_ECONFLICT, 0, "overlap");
	shardmap_close(m);
}

Test(coverage, same_start_is_overlap)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	add_shard(d, "s", "twin", ZERO, minus1(quarter(1)), 1, "c2");
	apply_fails(m, d, SHARDMAP_ECONFLICT, 0, "both start at 0");
	shardmap_close(m);
}

Test(coverage, must_start_at_zero)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	add_shard(d, "s", "shardId-000000000000", plus1(ZERO), minus1(quarter(1)), 1, "c1");
	apply_fails(m, d, SHARDMAP_ECONFLICT, 0, "hash keys 0..0 are not covered");
	d = new_delta(1, 2); /* removing the first shard without a replacement */
	cr_assert_eq(shardmap_delta_delete_shard(d, "s", "shardId-000000000000"), 0);
	apply_fails(m, d, SHARDMAP_ECONFLICT, 0, "first open shard \"shardId-000000000001\"");
	shardmap_close(m);
}

Test(coverage, must_end_at_max)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	add_shard(d, "s", "shardId-000000000003", quarter(3), minus1(MAXH), 1, "c2");
	apply_fails(m, d, SHARDMAP_ECONFLICT, 0, "..2^128-1 are not covered");
	d = new_delta(1, 2);
	cr_assert_eq(shardmap_delta_delete_shard(d, "s", "shardId-000000000003"), 0);
	apply_fails(m, d, SHARDMAP_ECONFLICT, 0, "last open shard \"shardId-000000000002\"");
	shardmap_close(m);
}

Test(coverage, removed_middle_shard_leaves_gap)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	add_cell(d, "c3", NULL);
	add_cell(d, "c4", NULL);
	cr_assert_eq(shardmap_delta_delete_shard(d, "s", "shardId-000000000001"), 0);
	apply_fails(m, d, SHARDMAP_ECONFLICT, 2, "between open shards \"shardId-000000000000\"");
	shardmap_close(m);
}

Test(coverage, new_stream_checked_whole)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	cr_assert_eq(shardmap_delta_put_stream(d, "t", SHARDMAP_HASH_MD5), 0);
	add_shard(d, "t", "a", ZERO, quarter(1), 1, "c1");
	add_shard(d, "t", "b", plus1(quarter(2)), MAXH, 1, "c1");
	apply_fails(m, d, SHARDMAP_ECONFLICT, 1, "gap");
	d = new_delta(1, 2); /* a single shard over everything, and the boundary keys */
	cr_assert_eq(shardmap_delta_put_stream(d, "t", SHARDMAP_HASH_MD5), 0);
	add_shard(d, "t", "a", ZERO, MAXH, 1, "c1");
	apply_ok(m, d);
	cr_assert_str_eq(seen_hash(m, "t", MAXH).shard, "a");
	shardmap_close(m);
}

Test(coverage, lowest_op_index_is_reported)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	add_shard(d, "s", "shardId-000000000003", quarter(3), minus1(MAXH), 1, "c2");	 /* op 0 */
	add_shard(d, "s", "shardId-000000000000", ZERO, minus1(quarter(1)), 1, "ghost"); /* 1 */
	apply_fails(m, d, SHARDMAP_ECONFLICT, 0, "not covered");
	d = new_delta(1, 2);
	add_shard(d, "s", "shardId-000000000000", ZERO, minus1(quarter(1)), 1, "ghost"); /* 0 */
	add_shard(d, "s", "shardId-000000000003", quarter(3), minus1(MAXH), 1, "c2");	 /* 1 */
	apply_fails(m, d, SHARDMAP_ECONFLICT, 0, "owner cell \"ghost\"");
	shardmap_close(m);
}

/* ---------------------------------------------------------------- cells */

Test(cells, owner_must_exist)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	add_cell(d, "c3", NULL);
	add_shard(d, "s", "shardId-000000000002", quarter(2), minus1(quarter(3)), 1, "ghost");
	apply_fails(m, d, SHARDMAP_ECONFLICT, 1,
		    "owner cell \"ghost\" of shard \"shardId-000000000002\" in stream \"s\" does "
		    "not exist");
	shardmap_close(m);
}

Test(cells, owner_may_come_later_in_the_batch)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	add_shard(d, "s", "shardId-000000000002", quarter(2), minus1(quarter(3)), 1, "c3");
	add_cell(d, "c3", "c3-new:9000");
	apply_ok(m, d);
	struct seen s = seen_hash(m, "s", quarter(2));
	cr_assert_str_eq(s.cell, "c3");
	cr_assert_str_eq(s.ep0, "c3-new:9000");
	d = new_delta(2, 3); /* and c3 now counts that shard */
	cr_assert_eq(shardmap_delta_delete_cell(d, "c3"), 0);
	apply_fails(m, d, SHARDMAP_ECONFLICT, 0, "still the owner of 1 shard(s)");
	shardmap_close(m);
}

Test(cells, put_cell_replaces_endpoints)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	const char *eps[] = {"a:1", "b:2", "c:3"};
	cr_assert_eq(shardmap_delta_put_cell(d, "c1", eps, 3), 0);
	apply_ok(m, d);
	struct seen s = seen_hash(m, "s", ZERO);
	cr_assert_str_eq(s.ep0, "a:1");
	cr_assert_eq(s.n_endpoints, 3);
	shardmap_stats st;
	shardmap_stats_get(m, &st);
	cr_assert_eq(st.cells, 2);
	shardmap_close(m);
}

Test(cells, delete_missing_cell_conflicts)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	cr_assert_eq(shardmap_delta_delete_cell(d, "ghost"), 0);
	apply_fails(m, d, SHARDMAP_ECONFLICT, 0, "cell \"ghost\" does not exist");
	shardmap_close(m);
}

Test(cells, delete_referenced_cell_conflicts)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	add_cell(d, "c3", NULL);
	cr_assert_eq(shardmap_delta_delete_cell(d, "c1"), 0);
	apply_fails(m, d, SHARDMAP_ECONFLICT, 1, "cell \"c1\" is still the owner of 2 shard(s)");
	shardmap_close(m);
}

Test(cells, delete_then_put_keeps_references)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	cr_assert_eq(shardmap_delta_delete_cell(d, "c1"), 0);
	add_cell(d, "c1", "moved:80");
	apply_ok(m, d);
	cr_assert_str_eq(seen_hash(m, "s", ZERO).ep0, "moved:80");
	d = new_delta(2, 3);
	cr_assert_eq(shardmap_delta_delete_cell(d, "c1"), 0);
	apply_fails(m, d, SHARDMAP_ECONFLICT, 0, "still the owner of 2 shard(s)");
	shardmap_close(m);
}

Test(cells, delete_after_moving_its_shards_away)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	cr_assert_eq(shardmap_delta_delete_cell(d, "c1"), 0); /* before the moves: order-free */
	add_shard(d, "s", "shardId-000000000000", ZERO, minus1(quarter(1)), 1, "c2");
	add_shard(d, "s", "shardId-000000000002", quarter(2), minus1(quarter(3)), 1, "c2");
	apply_ok(m, d);
	shardmap_stats st;
	shardmap_stats_get(m, &st);
	cr_assert_eq(st.cells, 1);
	cr_assert_str_eq(seen_hash(m, "s", ZERO).cell, "c2");
	shardmap_close(m);
}

Test(cells, closed_shards_keep_their_owner_referenced)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2); /* split 0 with both children on c2 */
	add_shard(d, "s", "shardId-000000000000", ZERO, minus1(quarter(1)), 0, "c1");
	const shardmap_hash eighth = {1ull << 61, 0};
	add_shard(d, "s", "shardId-000000000004", ZERO, minus1(eighth), 1, "c2");
	add_shard(d, "s", "shardId-000000000005", eighth, minus1(quarter(1)), 1, "c2");
	add_shard(d, "s", "shardId-000000000002", quarter(2), minus1(quarter(3)), 1, "c2");
	apply_ok(m, d);
	d = new_delta(2, 3);
	cr_assert_eq(shardmap_delta_delete_cell(d, "c1"), 0);
	apply_fails(m, d, SHARDMAP_ECONFLICT, 0, "still the owner of 1 shard(s)");
	d = new_delta(2, 3);
	cr_assert_eq(shardmap_delta_delete_shard(d, "s", "shardId-000000000000"), 0);
	cr_assert_eq(shardmap_delta_delete_cell(d, "c1"), 0);
	apply_ok(m, d);
	shardmap_close(m);
}

/* ---------------------------------------------------------------- malformed ops */

Test(malformed, ops_a_decoder_let_through_are_invalid)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	add_cell(d, "c3", NULL);
	add_shard(d, "s", "shardId-000000000000", ZERO, minus1(quarter(1)), 1, "c1");
	d->ops[1].start = quarter(2); /* start > end */
	apply_fails(m, d, SHARDMAP_EINVAL, 1, "starts after it ends");

	d = new_delta(1, 2);
	cr_assert_eq(shardmap_delta_put_stream(d, "t", SHARDMAP_HASH_XXH3), 0);
	d->ops[0].hash_fn = 7;
	apply_fails(m, d, SHARDMAP_EINVAL, 0, "unknown hash function 7");

	d = new_delta(1, 2);
	add_cell(d, "c3", NULL);
	d->ops[0].kind = (enum shardmap__op_kind)42;
	apply_fails(m, d, SHARDMAP_EINVAL, 0, "unknown op kind 42");

	d = new_delta(1, 2);
	add_cell(d, "c3", NULL);
	d->ops[0].endpoints[0][0] = '\0';
	apply_fails(m, d, SHARDMAP_EINVAL, 0, "endpoint 0");

	d = new_delta(1, 2);
	cr_assert_eq(shardmap_delta_delete_shard(d, "s", "x"), 0);
	d->ops[0].id[0] = '\0';
	apply_fails(m, d, SHARDMAP_EINVAL, 0, "invalid");

	shardmap_stats st;
	shardmap_stats_get(m, &st);
	cr_assert_eq(st.rejects_invalid, 5);
	shardmap_close(m);
}

/* ---------------------------------------------------------------- digests and canonical form */

Test(digest, same_content_in_any_order)
{
	shardmap *a = open_base();
	shardmap *b = open_map();
	shardmap_delta *d = new_delta(0, 1); /* stream first, shards reversed, cells last */
	cr_assert_eq(shardmap_delta_put_stream(d, "s", SHARDMAP_HASH_XXH3), 0);
	for (int i = 3; i >= 0; i--) {
		char id[32];
		snprintf(id, sizeof id, "shardId-%012d", i);
		add_shard(d, "s", id, quarter((unsigned)i),
			  i == 3 ? MAXH : minus1(quarter((unsigned)i + 1)), 1, i % 2 ? "c2" : "c1");
	}
	add_cell(d, "c2", NULL);
	add_cell(d, "c1", NULL);
	apply_ok(b, d);
	cr_assert_eq(digest_of(a), digest_of(b));
	cr_assert_neq(digest_of(a), 0);

	d = new_delta(1, 2); /* a different endpoint is different content */
	add_cell(d, "c1", "other:7000");
	apply_ok(b, d);
	cr_assert_neq(digest_of(a), digest_of(b));
	shardmap_close(a);
	shardmap_close(b);
}

/* A richer map: two streams, splits, a merge, closed shards, cells with several endpoints. */
static shardmap *open_rich(void)
{
	shardmap *m = open_base();
	shardmap_delta *d = new_delta(1, 2);
	const char *eps[] = {"c3a:1", "c3b:2", "c3c:3"};
	cr_assert_eq(shardmap_delta_put_cell(d, "c3", eps, 3), 0);
	add_base_stream(d, "alpha");
	cr_assert_eq(shardmap_delta_put_stream(d, "alpha", SHARDMAP_HASH_MD5), 0);
	apply_ok(m, d);
	d = NULL;
	cr_assert_eq(
	    shardmap_plan_split(m, "s", "shardId-000000000001", plus1(plus1(quarter(1))), &d), 0,
	    "%s", shardmap_plan_error());
	apply_ok(m, d);
	cr_assert_eq(
	    shardmap_plan_merge(m, "alpha", "shardId-000000000002", "shardId-000000000003", &d), 0,
	    "%s", shardmap_plan_error());
	apply_ok(m, d);
	cr_assert_eq(shardmap_plan_move(m, "alpha", "shardId-000000000004", "c3", &d), 0, "%s",
		     shardmap_plan_error());
	apply_ok(m, d);
	return m;
}

Test(digest, version_to_delta_round_trip)
{
	shardmap *m = open_rich();
	shardmap_delta *d = NULL;
	const struct shardmap__version *v = shardmap__pin(m);
	cr_assert_eq(shardmap__version_to_delta(v, &d), 0);
	shardmap__unpin(m);
	cr_assert_eq(shardmap_delta_from(d), 0);
	cr_assert_eq(shardmap_delta_to(d), shardmap_version(m));
	/* canonical order: cells by id, then each stream (by name) followed by its shards by id */
	cr_assert_eq(d->ops[0].kind, SHARDMAP__OP_PUT_CELL);
	cr_assert_str_eq(d->ops[0].id, "c1");
	cr_assert_str_eq(d->ops[2].id, "c3");
	cr_assert_eq(d->ops[3].kind, SHARDMAP__OP_PUT_STREAM);
	cr_assert_str_eq(d->ops[3].stream, "alpha");
	for (size_t i = 4; i < d->n_ops; i++) {
		const struct shardmap__op *a = &d->ops[i - 1], *b = &d->ops[i];
		if (b->kind == SHARDMAP__OP_PUT_STREAM)
			cr_assert(strcmp(d->ops[3].stream, b->stream) < 0, "streams by name");
		else if (a->kind == SHARDMAP__OP_PUT_SHARD)
			cr_assert(strcmp(a->id, b->id) < 0, "shards by id: %s, %s", a->id, b->id);
	}

	shardmap *copy = open_map();
	shardmap_error why;
	cr_assert_eq(shardmap_apply(copy, d, &why), 0, "%s", why.message);
	cr_assert_eq(shardmap_version(copy), shardmap_version(m));
	cr_assert_eq(digest_of(copy), digest_of(m));
	/* and the copy's canonical delta is the same ops */
	shardmap_delta *d2 = NULL;
	v = shardmap__pin(copy);
	cr_assert_eq(shardmap__version_to_delta(v, &d2), 0);
	shardmap__unpin(copy);
	cr_assert_eq(d2->n_ops, d->n_ops);
	for (size_t i = 0; i < d->n_ops; i++) {
		cr_assert_eq(d2->ops[i].kind, d->ops[i].kind);
		cr_assert_str_eq(d2->ops[i].id ? d2->ops[i].id : "",
				 d->ops[i].id ? d->ops[i].id : "");
	}
	struct seen s = seen_id(copy, "s", "shardId-000000000001");
	cr_assert_eq(s.open, 0);
	s = seen_id(copy, "alpha", "shardId-000000000004");
	cr_assert_str_eq(s.adj, "shardId-000000000003");
	cr_assert_str_eq(s.cell, "c3");
	shardmap_delta_free(d);
	shardmap_delta_free(d2);
	cr_assert_eq(shardmap__version_to_delta(NULL, &d), SHARDMAP_EINVAL);
	shardmap_close(copy);
	shardmap_close(m);
}

/* ---------------------------------------------------------------- builder */

Test(builder, series_of_deltas)
{
	shardmap *m = open_map();
	struct shardmap__builder *b = NULL;
	cr_assert_eq(shardmap__builder_start(m, &b), 0);
	shardmap_delta *d1 = base_delta(), *d2 = new_delta(1, 3), *gap = new_delta(5, 6);
	add_cell(d2, "c3", NULL);
	add_shard(d2, "s", "shardId-000000000000", ZERO, minus1(quarter(1)), 1, "c3");
	shardmap_error why;
	cr_assert_eq(shardmap__builder_apply(b, gap, &why), SHARDMAP_EGAP);
	cr_assert_eq(shardmap__builder_apply(b, d1, &why), 0, "%s", why.message);
	cr_assert_eq(shardmap__builder_apply(b, d1, &why), SHARDMAP_ESTALE);
	cr_assert_eq(shardmap__builder_apply(b, d2, &why), 0, "%s", why.message);
	cr_assert_eq(shardmap__builder_version(b), 3);
	cr_assert_eq(shardmap_version(m), 0, "nothing published while building");
	cr_assert_eq(seen_hash(m, "s", ZERO).rc, SHARDMAP_ENOTREADY);
	cr_assert_eq(shardmap__builder_publish(b), 0);
	cr_assert_eq(shardmap_version(m), 3);
	cr_assert_str_eq(seen_hash(m, "s", ZERO).cell, "c3");
	shardmap_stats st;
	shardmap_stats_get(m, &st);
	cr_assert_eq(st.applies, 2);
	shardmap_delta_free(d1);
	shardmap_delta_free(d2);
	shardmap_delta_free(gap);
	shardmap_close(m);
}

Test(builder, replaces_current_whatever_its_version)
{
	shardmap *m = open_base();
	uint64_t g1 = digest_of(m);
	shardmap_delta *d = new_delta(1, 7);
	add_shard(d, "s", "shardId-000000000000", ZERO, minus1(quarter(1)), 1, "c2");
	apply_ok(m, d);
	struct shardmap__builder *b = NULL;
	cr_assert_eq(shardmap__builder_start(m, &b), 0);
	d = base_delta();
	cr_assert_eq(shardmap__builder_apply(b, d, NULL), 0);
	shardmap_delta_free(d);
	cr_assert_eq(shardmap__builder_publish(b), 0);
	cr_assert_eq(shardmap_version(m), 1);
	cr_assert_eq(digest_of(m), g1);
	cr_assert_eq(shardmap__reclaim(m, 1), 0);
	shardmap_stats st;
	shardmap_stats_get(m, &st);
	cr_assert_eq(st.versions_retired, 2);
	cr_assert_eq(st.versions_freed, 2);
	shardmap_close(m);
}

Test(builder, failed_build_can_only_be_aborted_and_leaks_nothing)
{
	shardmap *m = open_base();
	long live = shardmap__mem_live();
	struct shardmap__builder *b = NULL;
	cr_assert_eq(shardmap__builder_start(m, &b), 0);
	cr_assert_eq(shardmap__builder_publish(b), SHARDMAP_EINVAL, "nothing applied");
	shardmap_delta *d = base_delta();
	add_shard(d, "s", "shardId-000000000000", ZERO, minus1(quarter(1)), 1, "ghost");
	shardmap_error why;
	cr_assert_eq(shardmap__builder_apply(b, d, &why), SHARDMAP_ECONFLICT);
	cr_assert(strstr(why.message, "ghost") != NULL);
	shardmap_delta_free(d);
	d = base_delta();
	cr_assert_eq(shardmap__builder_apply(b, d, &why), SHARDMAP_ECONFLICT);
	cr_assert(strstr(why.message, "only be aborted") != NULL);
	shardmap_delta_free(d);
	cr_assert_eq(shardmap__builder_publish(b), SHARDMAP_EINVAL);
	shardmap__builder_abort(b);
	cr_assert_eq(shardmap__mem_live(), live);
	cr_assert_eq(shardmap_version(m), 1);
	cr_assert_eq(shardmap__builder_start(NULL, &b), SHARDMAP_EINVAL);
	shardmap__builder_abort(NULL);
	shardmap_close(m);
}

/* ---------------------------------------------------------------- observers */

struct calls {
	int n;
	uint64_t version;
	const shardmap_delta *d;
};

static void on_publish(void *ctx, const struct shardmap__version *v, const shardmap_delta *d)
{
	struct calls *c = ctx;
	c->n++;
	c->version = v->version;
	c->d = d;
}

Test(observers, called_after_each_publish)
{
	shardmap *m = open_map();
	struct calls c = {0};
	struct shardmap__observer o = {on_publish, &c, NULL};
	shardmap__observer_add(m, &o);
	shardmap_delta *d = base_delta();
	cr_assert_eq(shardmap_apply(m, d, NULL), 0);
	cr_assert_eq(c.n, 1);
	cr_assert_eq(c.version, 1);
	cr_assert_eq(c.d, d);
	cr_assert_eq(shardmap_apply(m, d, NULL), SHARDMAP_ESTALE);
	cr_assert_eq(c.n, 1, "not called for a rejected delta");
	struct shardmap__builder *b;
	cr_assert_eq(shardmap__builder_start(m, &b), 0);
	cr_assert_eq(shardmap__builder_apply(b, d, NULL), 0);
	cr_assert_eq(shardmap__builder_publish(b), 0);
	cr_assert_eq(c.n, 2);
	cr_assert_null(c.d, "a wholesale replacement has no delta");
	shardmap__observer_remove(m, &o);
	shardmap_delta_free(d);
	d = new_delta(1, 2);
	apply_ok(m, d);
	cr_assert_eq(c.n, 2);
	shardmap_close(m);
}

/* ---------------------------------------------------------------- copy on write */

Test(cow, small_batch_copies_only_paths)
{
	shardmap *m = open_map();
	shardmap_delta *d = new_delta(0, 1);
	add_cell(d, "c1", NULL);
	add_cell(d, "c2", NULL);
	add_base_stream(d, "other");
	apply_ok(m, d);
	const char *owners[] = {"c1", "c2"};
	cr_assert_eq(
	    shardmap_plan_create_stream(m, "big", SHARDMAP_HASH_XXH3, 65536, owners, 2, &d), 0);
	apply_ok(m, d);
	const struct shardmap__version *v = shardmap__pin(m);
	const void *other = shardmap__version_stream(v, "other");
	shardmap__unpin(m);
	cr_assert_eq(shardmap_plan_move(m, "big", "shardId-000000032769", "c1", &d), 0, "%s",
		     shardmap_plan_error());
	long before = shardmap__mem_allocs();
	apply_ok(m, d);
	long used = shardmap__mem_allocs() - before;
	/* version, stream copy, shard record, tree paths (~4 HAMT + ~4 B+-tree levels), two cell
	 * entries, bookkeeping: a few dozen at most, against 65,536 shards */
	cr_assert_lt(used, 64, "a 1-op batch made %ld allocations", used);
	v = shardmap__pin(m);
	cr_assert_eq(shardmap__version_stream(v, "other"), other, "untouched stream shared");
	cr_assert_eq(v->n_open, 65540);
	shardmap__unpin(m);
	cr_assert_str_eq(seen_id(m, "big", "shardId-000000032769").cell, "c1");
	shardmap_close(m);
}

/* ---------------------------------------------------------------- stats */

Test(stats, counts_and_prometheus_text)
{
	shardmap *m = open_rich();
	apply_fails(m, new_delta(0, 1), SHARDMAP_ESTALE, SIZE_MAX, NULL);
	shardmap_delta *d = new_delta(shardmap_version(m), shardmap_version(m) + 1);
	cr_assert_eq(shardmap_delta_delete_cell(d, "c1"), 0);
	apply_fails(m, d, SHARDMAP_ECONFLICT, 0, NULL);
	shardmap_stats st;
	cr_assert_eq(shardmap_stats_get(NULL, &st), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_stats_get(m, NULL), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_stats_get(m, &st), 0);
	cr_assert_eq(st.version, 5);
	cr_assert_eq(st.streams, 2);
	cr_assert_eq(st.cells, 3);
	cr_assert_eq(st.open_shards, 4 + 1 + 3);
	cr_assert_eq(st.closed_shards, 1 + 2);
	cr_assert_eq(st.applies, 5);
	cr_assert_eq(st.rejects_stale, 1);
	cr_assert_eq(st.rejects_conflict, 1);
	cr_assert_neq(st.last_update_unix_ns, 0);
	cr_assert_eq(st.readers, 0);

	char buf[8192];
	int n = shardmap_metrics_text(m, buf, sizeof buf);
	cr_assert_gt(n, 0);
	cr_assert_eq((size_t)n, strlen(buf));
	cr_assert(strstr(buf, "# HELP shardmap_applies_total ") != NULL);
	cr_assert(strstr(buf, "# TYPE shardmap_applies_total counter\nshardmap_applies_total 5\n"));
	cr_assert(strstr(buf, "# TYPE shardmap_version gauge\nshardmap_version 5\n"));
	cr_assert(strstr(buf, "shardmap_rejects_total{reason=\"stale\"} 1\n"));
	cr_assert(strstr(buf, "shardmap_rejects_total{reason=\"conflict\"} 1\n"));
	cr_assert(strstr(buf, "shardmap_shards{state=\"closed\"} 3\n"));
	/* one HELP/TYPE per family */
	const char *first = strstr(buf, "# TYPE shardmap_rejects_total");
	cr_assert(first && !strstr(first + 1, "# TYPE shardmap_rejects_total"));

	char small[64];
	cr_assert_eq(shardmap_metrics_text(m, small, sizeof small), SHARDMAP_ENOMEM);
	cr_assert_lt(strlen(small), sizeof small);
	cr_assert(strncmp(small, buf, strlen(small)) == 0, "a prefix of the full text");
	cr_assert_eq(shardmap_metrics_text(m, NULL, 10), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_metrics_text(m, small, 0), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_metrics_text(NULL, small, sizeof small), SHARDMAP_EINVAL);
	shardmap_close(m);
}

Test(stats, reclaim_frees_every_retired_version)
{
	shardmap *m = open_base();
	for (uint64_t v = 1; v < 20; v++)
		apply_ok(m, new_delta(v, v + 1));
	cr_assert_eq(shardmap__reclaim(m, 1), 0);
	shardmap_stats st;
	shardmap_stats_get(m, &st);
	cr_assert_eq(st.versions_retired, 19);
	cr_assert_eq(st.versions_freed, 19);
	cr_assert_eq(st.reclaim_backlog, 0);
	cr_assert_eq(shardmap__reclaim(NULL, 0), SHARDMAP_EINVAL);
	shardmap_close(m);
	cr_assert_eq(shardmap__mem_live(), 0, "close frees every allocation of the map");
}

Test(options, defaults_and_validation)
{
	shardmap_options o;
	shardmap_options_init(&o);
	cr_assert_eq(o.size, sizeof o);
	cr_assert_eq(o.use_arena, 1);
	cr_assert_float_eq(o.hint_rate, 10.0, 1e-9);
	cr_assert_eq(o.hint_burst, 5);
	shardmap *m = NULL;
	cr_assert_eq(shardmap_open(NULL, &o), SHARDMAP_EINVAL);
	o.size = 3;
	cr_assert_eq(shardmap_open(&m, &o), SHARDMAP_EINVAL);
	o.size = sizeof o + 8;
	cr_assert_eq(shardmap_open(&m, &o), SHARDMAP_EINVAL);
	shardmap_options_init(&o);
	o.hint_rate = -1;
	cr_assert_eq(shardmap_open(&m, &o), SHARDMAP_EINVAL);
	cr_assert_null(m);
	shardmap_options_init(&o);
	o.use_arena = 0;
	o.hint_burst = 9;
	cr_assert_eq(shardmap_open(&m, &o), 0);
	cr_assert_eq(shardmap__options(m)->hint_burst, 9);
	cr_assert_eq(shardmap__options(m)->use_arena, 0);
	shardmap_close(m);
	shardmap_close(NULL);
	cr_assert_eq(shardmap_version(NULL), 0);
}
