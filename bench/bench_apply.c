/*
 * bench_apply.c - what publishing costs: batches per second and publish latency (p50, p99,
 * max) of shardmap_apply, on the map shapes of issue 2.
 *
 * Maps: 10,000 streams x 100 shards, 1 stream x 65,536 shards, and 1 stream x 4,096 shards
 * (the largest with a jump table to rebuild on every change). Batches:
 *   move1    one op: a shard moved to another cell (shardmap_plan_move);
 *   split3   three ops: a shard split at its midpoint, then (next batch) its two children
 *            merged back (shardmap_plan_split / shardmap_plan_merge, alternating);
 *   move64   64 ops: 64 distinct random shards moved to other cells, built by hand with
 *            shardmap_delta_put_shard as a store decoder would (on 10000x100 they fall in
 *            up to 64 different streams).
 * Latency is the wall time of shardmap_apply alone (validate, copy-on-write, publish and
 * whatever reclamation apply does); planning and building the delta are not timed.
 * batches/s is batches over the summed apply time; loop/s is the writer's whole loop
 * (plan or build + apply + free). Each configuration runs with no reader and with one reader
 * thread routing keys non-stop (a read section per 64 lookups), which keeps sections open
 * while versions are retired. Kinds are interleaved in every run (order rotating); figures
 * are medians over the runs.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "common.h"

struct shape_def {
	const char *name;
	unsigned streams, shards;
};

/* 1x4096: the largest stream whose B+-tree carries a jump table, which every apply that
 * changes the stream rebuilds (shardmap__btree_seal). */
static const struct shape_def full_shapes[] = {
    {"10000x100", 10000, 100}, {"1x65536", 1, 65536}, {"1x4096", 1, 4096}};
#define MAX_SHAPES 3
static const struct shape_def quick_shapes[] = {{"100x100", 100, 100}, {"1x4096", 1, 4096}};

enum kind { K_MOVE1, K_SPLIT3, K_MOVE64, N_KINDS };
static const char *const kind_name[N_KINDS] = {"move1", "split3", "move64"};
static const char *const kind_label[N_KINDS] = {"move (1 op)", "split/merge (3 ops)",
						"move x64 (64 ops)"};
static const unsigned kind_ops[N_KINDS] = {1, 3, 64};

#define MAX_RUNS    64
#define MAX_READERS 1

/* ---------------------------------------------------------------- the background reader */

struct reader {
	shardmap *m;
	const struct bench_map *bm;
	const struct bench_keys *keys;
	atomic_int stop;
	uint64_t lookups, errors, sum;
};

static void *reader_main(void *arg)
{
	struct reader *rd = arg;
	shardmap_reader *r;
	shardmap_route rt;
	uint64_t rng = 42, sum = 0, lookups = 0;
	size_t i = 0, len;

	bench_check_rc(shardmap_reader_open(rd->m, &r), "reader_open");
	/* relaxed: the flag only ends the loop; pthread_join orders the results */
	while (!atomic_load_explicit(&rd->stop, memory_order_relaxed)) {
		shardmap_read_begin(r);
		for (int k = 0; k < 64; k++) {
			const char *key = bench_key(rd->keys, i, &len);
			const char *stream =
			    rd->bm->stream_names[bench_rand_below(&rng, rd->bm->n_streams)];
			if (shardmap_route_key(r, stream, key, len, &rt) == SHARDMAP_OK)
				sum += (uintptr_t)rt.shard_id;
			else
				rd->errors++;
			if (++i == rd->keys->n)
				i = 0;
		}
		shardmap_read_end(r);
		lookups += 64;
	}
	shardmap_reader_close(r);
	rd->lookups = lookups;
	rd->sum = sum;
	return NULL;
}

/* ---------------------------------------------------------------- making batches */

struct writer {
	struct bench_map *bm;
	shardmap_reader *r; /* the writer's own reader, to find shards */
	uint64_t rng;
	int split_phase; /* split3: 0 = split next, 1 = merge the children back */
	unsigned split_stream;
	shardmap_hash split_start, split_mid;
};

static const char *opt_str(const char *s, int present)
{
	return present ? s : NULL;
}

static unsigned next_cell(const struct bench_map *bm, const char *cell)
{
	for (unsigned c = 0; c < BENCH_CELLS; c++)
		if (strcmp(bm->cell_names[c], cell) == 0)
			return (c + 1) % BENCH_CELLS;
	bench_die("unknown cell '%s'", cell);
}

static shardmap_delta *make_move1(struct writer *w)
{
	struct bench_map *bm = w->bm;
	const char *stream = bm->stream_names[bench_rand_below(&w->rng, bm->n_streams)];
	struct bench_shard sh;
	shardmap_delta *d;

	bench_check_rc(bench_shard_at(w->r, stream, bench_rand_hash(&w->rng), &sh), "route_hash");
	int rc =
	    shardmap_plan_move(bm->m, stream, sh.id, bm->cell_names[next_cell(bm, sh.cell)], &d);
	if (rc != SHARDMAP_OK)
		bench_die("plan_move: %s", shardmap_plan_error());
	return d;
}

static shardmap_delta *make_split3(struct writer *w)
{
	struct bench_map *bm = w->bm;
	struct bench_shard a, b;
	shardmap_delta *d;
	int rc;

	if (w->split_phase == 0) {
		w->split_stream = (unsigned)bench_rand_below(&w->rng, bm->n_streams);
		const char *stream = bm->stream_names[w->split_stream];
		bench_check_rc(bench_shard_at(w->r, stream, bench_rand_hash(&w->rng), &a),
			       "route_hash");
		w->split_start = a.start;
		w->split_mid = bench_hash_mid(a.start, a.end);
		rc = shardmap_plan_split(bm->m, stream, a.id, w->split_mid, &d);
	} else {
		const char *stream = bm->stream_names[w->split_stream];
		bench_check_rc(bench_shard_at(w->r, stream, w->split_start, &a), "route_hash");
		bench_check_rc(bench_shard_at(w->r, stream, w->split_mid, &b), "route_hash");
		rc = shardmap_plan_merge(bm->m, stream, a.id, b.id, &d);
	}
	if (rc != SHARDMAP_OK)
		bench_die("plan split/merge: %s", shardmap_plan_error());
	w->split_phase ^= 1;
	return d;
}

static shardmap_delta *make_move64(struct writer *w)
{
	struct bench_map *bm = w->bm;
	uint64_t v = shardmap_version(bm->m);
	unsigned picked_stream[64];
	char picked_id[64][256];
	shardmap_delta *d;

	bench_check_rc(shardmap_delta_new(v, v + 1, &d), "delta_new");
	for (unsigned n = 0; n < 64;) {
		unsigned s = (unsigned)bench_rand_below(&w->rng, bm->n_streams);
		struct bench_shard sh;
		bench_check_rc(
		    bench_shard_at(w->r, bm->stream_names[s], bench_rand_hash(&w->rng), &sh),
		    "route_hash");
		int dup = 0;
		for (unsigned k = 0; k < n && !dup; k++)
			dup = picked_stream[k] == s && strcmp(picked_id[k], sh.id) == 0;
		if (dup)
			continue;
		picked_stream[n] = s;
		memcpy(picked_id[n], sh.id, sizeof sh.id);
		shardmap_shard rec = {
		    .id = sh.id,
		    .start = sh.start,
		    .end = sh.end,
		    .open = 1,
		    .owner_cell = bm->cell_names[next_cell(bm, sh.cell)],
		    .parent = opt_str(sh.parent, sh.has_parent),
		    .adjacent_parent = opt_str(sh.adjacent, sh.has_adjacent),
		};
		bench_check_rc(shardmap_delta_put_shard(d, bm->stream_names[s], &rec), "put_shard");
		n++;
	}
	return d;
}

static shardmap_delta *make_batch(struct writer *w, enum kind k)
{
	switch (k) {
	case K_MOVE1:
		return make_move1(w);
	case K_SPLIT3:
		return make_split3(w);
	default:
		return make_move64(w);
	}
}

/* ---------------------------------------------------------------- one measurement */

struct sample {
	double batches_per_s, loop_per_s;
	uint64_t p50_ns, p99_ns, max_ns;
};

static struct sample measure(struct writer *w, enum kind k, unsigned n_batches, uint64_t *lat)
{
	struct sample out;
	uint64_t apply_ns = 0, t_loop = bench_now_ns();
	shardmap_error why;

	for (unsigned b = 0; b < n_batches; b++) {
		shardmap_delta *d = make_batch(w, k);
		if (shardmap_delta_count(d) != kind_ops[k])
			bench_die("%s: batch of %zu ops, expected %u", kind_name[k],
				  shardmap_delta_count(d), kind_ops[k]);
		uint64_t t0 = bench_now_ns();
		int rc = shardmap_apply(w->bm->m, d, &why);
		uint64_t t1 = bench_now_ns();
		if (rc != SHARDMAP_OK)
			bench_die("apply %s: %s: %s", kind_name[k], shardmap_err_name(rc),
				  why.message);
		shardmap_delta_free(d);
		lat[b] = t1 - t0;
		apply_ns += t1 - t0;
	}
	/* split3 must leave the map as it found it (every split merged back) */
	if (k == K_SPLIT3 && w->split_phase != 0) {
		shardmap_delta *d = make_split3(w);
		bench_map_apply(w->bm->m, d, "merge back");
	}
	out.loop_per_s = (double)n_batches * 1e9 / (double)(bench_now_ns() - t_loop);
	out.batches_per_s = (double)n_batches * 1e9 / (double)apply_ns;
	qsort(lat, n_batches, sizeof *lat, bench_cmp_u64);
	out.p50_ns = bench_percentile_sorted(lat, n_batches, 50);
	out.p99_ns = bench_percentile_sorted(lat, n_batches, 99);
	out.max_ns = lat[n_batches - 1];
	return out;
}

/* ---------------------------------------------------------------- results */

struct cell {
	struct sample run[MAX_RUNS];
	unsigned n;
};

static double cell_median(const struct cell *c, int field)
{
	double v[MAX_RUNS];
	for (unsigned r = 0; r < c->n; r++) {
		const struct sample *s = &c->run[r];
		v[r] = field == 0   ? s->batches_per_s
		       : field == 1 ? s->loop_per_s
		       : field == 2 ? (double)s->p50_ns
				    : (double)s->p99_ns;
	}
	return bench_median(v, c->n);
}

static uint64_t cell_max(const struct cell *c)
{
	uint64_t m = 0;
	for (unsigned r = 0; r < c->n; r++)
		m = c->run[r].max_ns > m ? c->run[r].max_ns : m;
	return m;
}

struct apply_opts {
	const char *only_shape;
};

static int extra_opt(void *ctx, const char *arg, const char *val)
{
	struct apply_opts *ao = ctx;
	if (strcmp(arg, "--shape") == 0) {
		if (val == NULL)
			bench_die("--shape needs a name");
		ao->only_shape = val;
		return 1;
	}
	return -1;
}

int main(int argc, char **argv)
{
	struct bench_opts o;
	struct apply_opts ao = {NULL};
	bench_parse_args(argc, argv, &o, " [--shape NAME]", extra_opt, &ao);
	if (o.runs > MAX_RUNS)
		bench_die("--runs: at most %d", MAX_RUNS);
	const struct shape_def *defs = o.quick ? quick_shapes : full_shapes;
	size_t n_defs = o.quick ? 2 : sizeof full_shapes / sizeof full_shapes[0];
	unsigned n_batches[N_KINDS] = {2000, 2000, 300};
	if (o.quick) {
		n_batches[K_MOVE1] = n_batches[K_SPLIT3] = 100;
		n_batches[K_MOVE64] = 20;
	}
	uint64_t *lat = bench_xmalloc(2000 * sizeof *lat);
	struct bench_keys keys;
	bench_keys_make(&keys, (size_t)1 << 16, o.seed);

	json_t *doc = bench_json_new("apply", &o);
	json_t *nb = bench_json_or_die(json_object());
	for (unsigned k = 0; k < N_KINDS; k++)
		bench_json_int(nb, kind_name[k], n_batches[k]);
	json_object_set_new(doc, "batches_per_run", nb);

	double p99_move1[MAX_SHAPES][MAX_READERS + 1];
	for (size_t si = 0; si < MAX_SHAPES; si++)
		for (unsigned readers = 0; readers <= MAX_READERS; readers++)
			p99_move1[si][readers] = -1;
	for (size_t si = 0; si < n_defs; si++) {
		const struct shape_def *def = &defs[si];
		if (ao.only_shape && strcmp(ao.only_shape, def->name) != 0)
			continue;
		struct bench_map bm;
		struct cell cells[MAX_READERS + 1][N_KINDS];
		struct writer w = {.bm = &bm, .rng = o.seed * 7919 + si};
		uint64_t t0 = bench_now_ns();

		memset(cells, 0, sizeof cells);
		bench_map_build(&bm, def->streams, def->shards);
		bench_check_rc(shardmap_reader_open(bm.m, &w.r), "reader_open");
		printf("# %s: built in %.2f s\n", def->name, (double)(bench_now_ns() - t0) / 1e9);
		fflush(stdout);
		for (unsigned k = 0; k < N_KINDS; k++) /* warm-up */
			measure(&w, (enum kind)k, n_batches[k] / 10 + 1, lat);

		for (unsigned run = 0; run < o.runs; run++) {
			for (unsigned readers = 0; readers <= MAX_READERS; readers++) {
				struct reader rd = {.m = bm.m, .bm = &bm, .keys = &keys};
				pthread_t rt;
				atomic_init(&rd.stop, 0);
				if (readers && pthread_create(&rt, NULL, reader_main, &rd) != 0)
					bench_die("pthread_create");
				for (unsigned i = 0; i < N_KINDS; i++) {
					enum kind k = (enum kind)((i + run) % N_KINDS);
					struct cell *c = &cells[readers][k];
					c->run[c->n++] = measure(&w, k, n_batches[k], lat);
				}
				if (readers) {
					/* relaxed: see reader_main */
					atomic_store_explicit(&rd.stop, 1, memory_order_relaxed);
					pthread_join(rt, NULL);
					if (rd.errors)
						bench_die("reader: %" PRIu64 " lookups failed",
							  rd.errors);
				}
			}
		}

		printf("\n== %s (%u stream%s x %u shards): medians of %u runs\n", def->name,
		       def->streams, def->streams > 1 ? "s" : "", def->shards, o.runs);
		printf("%-22s %-8s %12s %12s %10s %10s %10s\n", "batch", "readers", "batches/s",
		       "loop/s", "p50 us", "p99 us", "max us");
		for (unsigned readers = 0; readers <= MAX_READERS; readers++) {
			for (unsigned k = 0; k < N_KINDS; k++) {
				const struct cell *c = &cells[readers][k];
				double p50 = cell_median(c, 2) / 1e3, p99 = cell_median(c, 3) / 1e3;
				double mx = (double)cell_max(c) / 1e3;
				printf("%-22s %-8u %12.0f %12.0f %10.1f %10.1f %10.1f\n",
				       kind_label[k], readers, cell_median(c, 0), cell_median(c, 1),
				       p50, p99, mx);
				json_t *j = bench_json_or_die(json_object());
				bench_json_str(j, "shape", def->name);
				bench_json_int(j, "streams", def->streams);
				bench_json_int(j, "shards", def->shards);
				bench_json_str(j, "kind", kind_name[k]);
				bench_json_int(j, "ops", kind_ops[k]);
				bench_json_int(j, "readers", readers);
				bench_json_num(j, "batches_per_s", cell_median(c, 0));
				bench_json_num(j, "loop_batches_per_s", cell_median(c, 1));
				bench_json_num(j, "p50_us", p50);
				bench_json_num(j, "p99_us", p99);
				bench_json_num(j, "max_us", mx);
				json_t *arr = bench_json_or_die(json_array());
				for (unsigned r = 0; r < c->n; r++)
					json_array_append_new(
					    arr, json_real((double)c->run[r].p99_ns / 1e3));
				json_object_set_new(j, "runs_p99_us", arr);
				bench_json_result(doc, j);
				if (k == K_MOVE1)
					p99_move1[si][readers] = p99;
			}
		}
		fflush(stdout);
		shardmap_reader_close(w.r);
		bench_map_free(&bm);
	}

	printf("\ntargets (medians over runs):\n");
	for (size_t i = 0; i < n_defs; i++) {
		for (unsigned readers = 0; readers <= MAX_READERS; readers++) {
			char name[128];
			snprintf(name, sizeof name, "%s: 1-op batch publish p99, %u reader%s",
				 defs[i].name, readers, readers == 1 ? "" : "s");
			bench_target(doc, name, p99_move1[i][readers], "<=", 1000, "us");
		}
	}
	bench_keys_free(&keys);
	free(lat);
	return bench_json_emit(doc, &o);
}
