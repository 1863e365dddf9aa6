/*
 * stress_readers.c - readers route keys non-stop (one call per key, or every other section
 * one shardmap_route_keys call for all its keys) while one writer publishes a long stream of
 * random Kinesis batches (split, merge, move) plus cell endpoint changes and deletions of
 * closed shards. A plain executable (suite "stress") so it also runs under ThreadSanitizer.
 *
 * Every answer a reader gets must be self-consistent: the shard is open in the version that
 * answered, its range holds the key's hash, its owner cell exists with endpoints that name
 * it, finding the shard by id in the same version gives the same record, and versions never
 * go backwards for a reader. After the writer stops and the readers close, one full grace
 * period must free every retired version, and closing the map must free all map memory.
 *
 * Batches: 100,000 by default, times SHARDMAP_STRESS_SCALE (a positive number) if set.
 * Exit status 0 on success, 1 on any failure (the first failure of each thread is printed).
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "delta_gen.h"
#include "map.h"
#include "mem.h"

#define READERS	    4
#define CELLS	    8
#define STREAM	    "s"
#define MAX_OPEN    512
#define MIN_OPEN    8
#define START_OPEN  320 /* three B+-tree levels: lookups start from the jump table */
#define CLOSED_KEPT 256

static const shardmap_hash MAXH = {UINT64_MAX, UINT64_MAX};

static int hash_le(shardmap_hash a, shardmap_hash b)
{
	return shardmap_hash_cmp(a, b) <= 0;
}

/* ---------------------------------------------------------------- readers */

static shardmap *map;
static atomic_int stop;	   /* release by the writer when done; acquire by readers */
static atomic_int started; /* readers that are running (relaxed: a start signal only) */

struct reader {
	pthread_t thread;
	uint64_t seed;
	long lookups, sections, same_version; /* answers also checked within their version */
	int failed;
	char why[256];
};

#define FAIL(rd, ...)                                                                              \
	do {                                                                                       \
		if (!(rd)->failed++)                                                               \
			snprintf((rd)->why, sizeof(rd)->why, __VA_ARGS__);                         \
	} while (0)

/* Check one answer for key (of len bytes) against itself and the same version. */
static void check_answer(struct reader *rd, shardmap_reader *r, const char *key, size_t len,
			 const shardmap_route *rt, uint64_t *last_version)
{
	shardmap_hash h = shardmap_hash_key(SHARDMAP_HASH_XXH3, key, len);
	if (!rt->open)
		FAIL(rd, "v%llu: routed to closed shard %s", (unsigned long long)rt->version,
		     rt->shard_id);
	if (!hash_le(rt->start, h) || !hash_le(h, rt->end))
		FAIL(rd, "v%llu: shard %s does not hold the key's hash",
		     (unsigned long long)rt->version, rt->shard_id);
	if (rt->version < *last_version)
		FAIL(rd, "version went back from %llu to %llu", (unsigned long long)*last_version,
		     (unsigned long long)rt->version);
	*last_version = rt->version;
	size_t n = strlen(rt->cell_id);
	if (rt->n_endpoints == 0 || strncmp(rt->endpoints[0], rt->cell_id, n) != 0 ||
	    rt->endpoints[0][n] != ':')
		FAIL(rd, "v%llu: cell %s has endpoints that are not its own",
		     (unsigned long long)rt->version, rt->cell_id);
	/* The same version, looked at directly: the shard by id is this very record, open, and
	 * its owner's record is the one the route named. (A public find_shard may already see
	 * a newer version, in which the shard can be closed or deleted.) */
	const struct shardmap__version *v = shardmap__read_version(r);
	if (v->version < rt->version) {
		FAIL(rd, "the map went back from %llu to %llu", (unsigned long long)rt->version,
		     (unsigned long long)v->version);
	} else if (v->version == rt->version) {
		rd->same_version++;
		const struct shardmap__stream *st = shardmap__version_stream(v, STREAM);
		const struct shardmap__shard *sh =
		    st ? shardmap__stream_shard(st, rt->shard_id) : NULL;
		const struct shardmap__cell *c = shardmap__version_cell(v, rt->cell_id);
		if (sh == NULL || sh->id != rt->shard_id || !sh->open)
			FAIL(rd, "v%llu: shard %s by id is not the routed record",
			     (unsigned long long)rt->version, rt->shard_id);
		if (c == NULL || c->endpoints != rt->endpoints)
			FAIL(rd, "v%llu: cell %s is not the routed record",
			     (unsigned long long)rt->version, rt->cell_id);
	}
	shardmap_route by_id;
	int rc = shardmap_find_shard(r, STREAM, rt->shard_id, &by_id);
	if (rc == 0 && by_id.version == rt->version && by_id.shard_id != rt->shard_id)
		FAIL(rd, "v%llu: find_shard %s gave another record",
		     (unsigned long long)rt->version, rt->shard_id);
	else if (rc == 0 && by_id.version < rt->version)
		FAIL(rd, "find_shard saw an older version");
	else if (rc != 0 && rc != SHARDMAP_ENOENT)
		FAIL(rd, "find_shard: %s", shardmap_strerror(rc));
}

static void *reader_main(void *arg)
{
	struct reader *rd = arg;
	shardmap_reader *r;
	if (shardmap_reader_open(map, &r) != 0) {
		FAIL(rd, "reader_open failed");
		atomic_fetch_add_explicit(&started, 1, memory_order_relaxed);
		return NULL;
	}
	atomic_fetch_add_explicit(&started, 1, memory_order_relaxed);
	uint64_t last_version = 0;
	while (!atomic_load_explicit(&stop, memory_order_acquire)) {
		int n = 1 + (int)(gen_rand(&rd->seed) % 32); /* lookups in this section */
		/* every other section routes its keys in one shardmap_route_keys call */
		int batched = rd->sections % 2 == 1;
		char keys[32][32];
		shardmap_key batch[32];
		shardmap_route rts[32];
		for (int i = 0; i < n; i++) {
			int len = snprintf(keys[i], sizeof keys[i], "k%llx",
					   (unsigned long long)gen_rand(&rd->seed));
			batch[i] = (shardmap_key){.data = keys[i], .len = (size_t)len};
		}
		shardmap_read_begin(r);
		int rc = batched ? shardmap_route_keys(r, STREAM, batch, (size_t)n, rts) : 0;
		if (rc != 0)
			FAIL(rd, "route_keys: %s", shardmap_strerror(rc));
		for (int i = 0; rc == 0 && i < n; i++) {
			if (!batched &&
			    (rc = shardmap_route_key(r, STREAM, keys[i], batch[i].len, &rts[i])) != 0)
				FAIL(rd, "route_key: %s", shardmap_strerror(rc));
			else
				check_answer(rd, r, keys[i], batch[i].len, &rts[i], &last_version);
			rd->lookups++;
		}
		shardmap_read_end(r);
		rd->sections++;
	}
	shardmap_reader_close(r);
	return NULL;
}

/* ---------------------------------------------------------------- the writer */

struct writer {
	uint64_t seed;
	shardmap_reader *r; /* to pick shards */
	long open, splits, merges, moves, cells, deletes;
	char closed[CLOSED_KEPT][32]; /* closed shard ids, oldest first (a ring) */
	unsigned closed_head, closed_n;
	char why[256];
};

/* A random open shard: id copied to id, range to *start, *end. */
static void pick(struct writer *w, shardmap_hash h, char id[32], shardmap_hash *start,
		 shardmap_hash *end, char owner[32])
{
	shardmap_route rt;
	shardmap_read_begin(w->r);
	if (shardmap_route_hash(w->r, STREAM, h, &rt) != 0) {
		shardmap_read_end(w->r);
		fprintf(stderr, "writer: route_hash failed\n");
		exit(1);
	}
	snprintf(id, 32, "%s", rt.shard_id);
	if (owner != NULL)
		snprintf(owner, 32, "%s", rt.cell_id);
	*start = rt.start;
	*end = rt.end;
	shardmap_read_end(w->r);
}

static shardmap_hash random_hash(struct writer *w)
{
	shardmap_hash h = {gen_rand(&w->seed), gen_rand(&w->seed)};
	return h;
}

static void remember_closed(struct writer *w, const char *id)
{
	unsigned slot = (w->closed_head + w->closed_n) % CLOSED_KEPT;
	if (w->closed_n == CLOSED_KEPT)
		w->closed_head = (w->closed_head + 1) % CLOSED_KEPT; /* forget the oldest */
	else
		w->closed_n++;
	snprintf(w->closed[slot], sizeof w->closed[slot], "%s", id);
}

/* Split a random open shard at a random point Kinesis allows. NULL if it is too small. */
static shardmap_delta *plan_split(struct writer *w)
{
	char id[32];
	shardmap_hash start, end, off;
	pick(w, random_hash(w), id, &start, &end, NULL);
	shardmap_hash span = gen_hash_sub(end, start);
	if (span.hi > 0) {
		off.hi = gen_rand(&w->seed) % span.hi; /* < span, and >= 2 from the low word */
		off.lo = gen_rand(&w->seed) | 2;
	} else if (span.lo >= 3) {
		off.hi = 0;
		off.lo = 2 + gen_rand(&w->seed) % (span.lo - 2);
	} else {
		return NULL;
	}
	shardmap_delta *d = NULL;
	if (shardmap_plan_split(map, STREAM, id, gen_hash_add(start, off), &d) != 0) {
		fprintf(stderr, "writer: split %s: %s\n", id, shardmap_plan_error());
		exit(1);
	}
	remember_closed(w, id);
	w->splits++;
	w->open++;
	return d;
}

/* Merge a random open shard with its right neighbour (in either argument order). */
static shardmap_delta *plan_merge(struct writer *w)
{
	char a[32], b[32];
	shardmap_hash start, end, s2, e2;
	pick(w, random_hash(w), a, &start, &end, NULL);
	if (shardmap_hash_cmp(end, MAXH) == 0)
		return NULL;
	pick(w, gen_hash_add(end, (shardmap_hash){0, 1}), b, &s2, &e2, NULL);
	int swap = gen_rand(&w->seed) & 1;
	shardmap_delta *d = NULL;
	if (shardmap_plan_merge(map, STREAM, swap ? b : a, swap ? a : b, &d) != 0) {
		fprintf(stderr, "writer: merge %s %s: %s\n", a, b, shardmap_plan_error());
		exit(1);
	}
	remember_closed(w, a);
	remember_closed(w, b);
	w->merges++;
	w->open--;
	return d;
}

static shardmap_delta *plan_move(struct writer *w)
{
	char id[32], owner[32], cell[16];
	shardmap_hash start, end;
	pick(w, random_hash(w), id, &start, &end, owner);
	do
		snprintf(cell, sizeof cell, "c%d", (int)(gen_rand(&w->seed) % CELLS));
	while (strcmp(cell, owner) == 0);
	shardmap_delta *d = NULL;
	if (shardmap_plan_move(map, STREAM, id, cell, &d) != 0) {
		fprintf(stderr, "writer: move %s: %s\n", id, shardmap_plan_error());
		exit(1);
	}
	w->moves++;
	return d;
}

static void must(int rc, const char *what)
{
	if (rc != 0) {
		fprintf(stderr, "writer: %s: %s\n", what, shardmap_strerror(rc));
		exit(1);
	}
}

/* New endpoints for a random cell (each endpoint names its cell). */
static shardmap_delta *new_endpoints(struct writer *w)
{
	uint64_t v = shardmap_version(map);
	shardmap_delta *d;
	must(shardmap_delta_new(v, v + 1, &d), "delta_new");
	char cell[16], ep[2][48];
	int c = (int)(gen_rand(&w->seed) % CELLS);
	snprintf(cell, sizeof cell, "c%d", c);
	for (int i = 0; i < 2; i++)
		snprintf(ep[i], sizeof ep[i], "c%d:%d", c, 1 + (int)(gen_rand(&w->seed) % 65535));
	const char *eps[] = {ep[0], ep[1]};
	must(shardmap_delta_put_cell(d, cell, eps, 1 + (gen_rand(&w->seed) & 1)), "put_cell");
	w->cells++;
	return d;
}

/* Delete the oldest remembered closed shard. NULL if none. */
static shardmap_delta *delete_closed(struct writer *w)
{
	if (w->closed_n == 0)
		return NULL;
	uint64_t v = shardmap_version(map);
	shardmap_delta *d;
	must(shardmap_delta_new(v, v + 1, &d), "delta_new");
	must(shardmap_delta_delete_shard(d, STREAM, w->closed[w->closed_head]), "delete_shard");
	w->closed_head = (w->closed_head + 1) % CLOSED_KEPT;
	w->closed_n--;
	w->deletes++;
	return d;
}

static shardmap_delta *next_batch(struct writer *w)
{
	shardmap_delta *d = NULL;
	while (d == NULL) {
		unsigned op = (unsigned)(gen_rand(&w->seed) % 100);
		if (op < 35 && w->open < MAX_OPEN)
			d = plan_split(w);
		else if (op < 70 && w->open > MIN_OPEN)
			d = plan_merge(w);
		else if (op < 90)
			d = plan_move(w);
		else if (op < 95)
			d = new_endpoints(w);
		else
			d = delete_closed(w);
	}
	return d;
}

static void setup(struct writer *w)
{
	must(shardmap_open(&map, NULL), "open");
	shardmap_delta *d;
	must(shardmap_delta_new(0, 1, &d), "delta_new");
	const char *cells[CELLS];
	char names[CELLS][8];
	must(gen_named_cells(d, CELLS, names, cells), "put_cell");
	shardmap_error why;
	must(shardmap_apply(map, d, &why), why.message);
	shardmap_delta_free(d);
	must(shardmap_plan_create_stream(map, STREAM, SHARDMAP_HASH_XXH3, START_OPEN, cells, CELLS,
					 &d),
	     "plan_create_stream");
	must(shardmap_apply(map, d, &why), why.message);
	shardmap_delta_free(d);
	w->open = START_OPEN;
	must(shardmap_reader_open(map, &w->r), "reader_open");
}

int main(void)
{
	double scale = 1.0;
	const char *env = getenv("SHARDMAP_STRESS_SCALE");
	if (env != NULL && (scale = strtod(env, NULL)) <= 0)
		scale = 1.0;
	long batches = (long)(100000 * scale);
	if (batches < 1)
		batches = 1;

	static struct writer w = {.seed = 0x5eed5eed5eedull};
	setup(&w);
	struct reader rd[READERS];
	memset(rd, 0, sizeof rd);
	for (int i = 0; i < READERS; i++) {
		rd[i].seed = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
		if (pthread_create(&rd[i].thread, NULL, reader_main, &rd[i]) != 0) {
			fprintf(stderr, "pthread_create failed\n");
			return 1;
		}
	}
	while (atomic_load_explicit(&started, memory_order_relaxed) < READERS)
		sched_yield(); /* wait for the readers to run before writing */

	for (long b = 0; b < batches; b++) {
		shardmap_delta *d = next_batch(&w);
		shardmap_error why;
		int rc = shardmap_apply(map, d, &why);
		if (rc != 0) {
			fprintf(stderr, "batch %ld: %s: %s\n", b, shardmap_err_name(rc),
				why.message);
			return 1;
		}
		shardmap_delta_free(d);
	}
	atomic_store_explicit(&stop, 1, memory_order_release);
	shardmap_stats before;
	shardmap_stats_get(map, &before); /* polling alone keeps the backlog small: reported */

	int failed = 0;
	long lookups = 0, same_version = 0;
	for (int i = 0; i < READERS; i++) {
		pthread_join(rd[i].thread, NULL);
		lookups += rd[i].lookups;
		same_version += rd[i].same_version;
		if (rd[i].failed) {
			fprintf(stderr, "reader %d: %d failures, first: %s\n", i, rd[i].failed,
				rd[i].why);
			failed = 1;
		}
		if (rd[i].same_version == 0) {
			fprintf(stderr, "reader %d never checked an answer in its version\n", i);
			failed = 1;
		}
	}
	shardmap_reader_close(w.r);

	int backlog = shardmap__reclaim(map, 1);
	shardmap_stats st;
	shardmap_stats_get(map, &st);
	if (backlog != 0 || st.versions_freed != st.versions_retired || st.reclaim_backlog != 0) {
		fprintf(stderr, "reclaim: retired %llu, freed %llu, backlog %d\n",
			(unsigned long long)st.versions_retired,
			(unsigned long long)st.versions_freed, backlog);
		failed = 1;
	}
	if (st.versions_retired != (uint64_t)batches + 1 || st.readers != 0) {
		fprintf(stderr, "stats: retired %llu for %ld batches, %llu readers open\n",
			(unsigned long long)st.versions_retired, batches,
			(unsigned long long)st.readers);
		failed = 1;
	}
	printf("backlog when the writer stopped: %llu of %llu retired versions\n",
	       (unsigned long long)before.reclaim_backlog,
	       (unsigned long long)before.versions_retired);
	printf("%ld batches (%ld splits, %ld merges, %ld moves, %ld cell changes, %ld deletes), "
	       "%ld lookups by %d readers (%ld checked within their version), version %llu, "
	       "%llu open shards\n",
	       batches, w.splits, w.merges, w.moves, w.cells, w.deletes, lookups, READERS,
	       same_version, (unsigned long long)st.version, (unsigned long long)st.open_shards);
	shardmap_close(map);
	if (shardmap__mem_live() != 0) {
		fprintf(stderr, "%ld map allocations still live after close\n",
			shardmap__mem_live());
		failed = 1;
	}
	printf("%s\n", failed ? "FAILED" : "ok");
	return failed;
}
