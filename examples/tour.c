/*
 * tour.c - a first look at shardmap through its public API only: create a stream with four
 * shards on two cells, route some keys, split a shard, merge two, move one to another cell,
 * and route the same keys again. Everything happens in memory; scripts/demo runs it until
 * the example front-end takes over the demo.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <shardmap.h>

static void die(const char *what, int rc)
{
	fprintf(stderr, "tour: %s: %s (%s)\n", what, shardmap_strerror(rc), shardmap_plan_error());
	exit(1);
}

static void apply_or_die(shardmap *m, shardmap_delta *d, const char *what)
{
	shardmap_error why;
	int rc = shardmap_apply(m, d, &why);
	shardmap_delta_free(d);
	if (rc != 0) {
		fprintf(stderr, "tour: %s: %s\n", what, why.message);
		exit(1);
	}
	printf("-- %s: map is now at version %" PRIu64 "\n", what, shardmap_version(m));
}

/* Route a handful of keys the way a PutRecords batch is routed: all in one call. */
static void route_keys(shardmap *m, shardmap_reader *r)
{
	static const char *const names[] = {"alice", "bob", "carol", "dave", "erin", "frank"};
	enum { N = sizeof names / sizeof names[0] };
	shardmap_key keys[N];
	shardmap_route rt[N];
	for (size_t i = 0; i < N; i++)
		keys[i] = (shardmap_key){.data = names[i], .len = strlen(names[i])};
	shardmap_read_begin(r);
	int rc = shardmap_route_keys(r, "orders", keys, N, rt);
	if (rc != 0)
		die("route", rc);
	for (size_t i = 0; i < N; i++)
		printf("   %-6s -> %s on %s (%s)\n", names[i], rt[i].shard_id, rt[i].cell_id,
		       rt[i].endpoints[0]);
	shardmap_read_end(r); /* rt's pointers are valid until here */
	(void)m;
}

int main(void)
{
	shardmap *m;
	shardmap_reader *r;
	shardmap_delta *d;
	int rc;

	if ((rc = shardmap_open(&m, NULL)) != 0)
		die("open", rc);
	if ((rc = shardmap_reader_open(m, &r)) != 0)
		die("reader", rc);

	/* Cells are written as a delta like everything else. */
	const char *a_eps[] = {"127.0.0.1:7001"}, *b_eps[] = {"127.0.0.1:7002"};
	if ((rc = shardmap_delta_new(0, 1, &d)) != 0 ||
	    (rc = shardmap_delta_put_cell(d, "cell-a", a_eps, 1)) != 0 ||
	    (rc = shardmap_delta_put_cell(d, "cell-b", b_eps, 1)) != 0)
		die("cells", rc);
	apply_or_die(m, d, "put cells cell-a, cell-b");

	const char *owners[] = {"cell-a", "cell-b"};
	if ((rc = shardmap_plan_create_stream(m, "orders", SHARDMAP_HASH_MD5, 4, owners, 2, &d)))
		die("plan create", rc);
	apply_or_die(m, d, "create stream orders with 4 shards (md5, Kinesis ranges)");
	route_keys(m, r);

	/* Split shard 0 in the middle of its range: 2^126 / 2 = 2^125. */
	shardmap_hash mid = {.hi = UINT64_C(1) << 61, .lo = 0};
	if ((rc = shardmap_plan_split(m, "orders", "shardId-000000000000", mid, &d)))
		die("plan split", rc);
	apply_or_die(m, d, "split shardId-000000000000 at 2^125");
	route_keys(m, r);

	if ((rc = shardmap_plan_merge(m, "orders", "shardId-000000000002",
	                              "shardId-000000000003", &d)))
		die("plan merge", rc);
	apply_or_die(m, d, "merge shardId-000000000002 with shardId-000000000003");

	if ((rc = shardmap_plan_move(m, "orders", "shardId-000000000001", "cell-a", &d)))
		die("plan move", rc);
	apply_or_die(m, d, "move shardId-000000000001 to cell-a");
	route_keys(m, r);

	shardmap_stats st;
	shardmap_stats_get(m, &st);
	printf("-- stats: version %" PRIu64 ", %" PRIu64 " open and %" PRIu64
	       " closed shards, %" PRIu64 " cells, %" PRIu64 " applies\n",
	       st.version, st.open_shards, st.closed_shards, st.cells, st.applies);

	shardmap_reader_close(r);
	shardmap_close(m);
	return 0;
}
