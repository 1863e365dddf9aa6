/*
 * common.h - what every shardmap benchmark shares: the command line, clocks, random keys,
 * medians and percentiles, PASS/MISS target checks, the one JSON line each benchmark ends
 * with, and the map shapes (N streams x M shards over a few cells) they measure.
 *
 * Used by bench_lookup and bench_apply, and meant for bench_fleet, bench_bootstrap and
 * bench_etcd too. Every function is static inline: include it from one .c per executable.
 *
 * Conventions scripts/bench relies on (follow them in every bench_*.c):
 *   --quick       a short smoke run (what `meson test --benchmark` runs); small shapes,
 *                 one run, targets reported as SKIP where the shape is not measured
 *   --runs N      repetitions; every figure quoted is the median over the runs (default 5)
 *   --json PATH   also write the final JSON line to PATH (scripts/bench writes
 *                 build/bench/NAME.json)
 *   --seed N      seed of the key generator (default 1)
 * Output: a human-readable table on stdout, then exactly one line of JSON (compact, starts
 * with '{') holding the machine, the parameters, every result and every target.
 * This machine is a noisy shared 2-core VM (see PLATFORM.md): interleave the variants you
 * compare inside each run (A B A B ...) rather than measuring A fully then B.
 */
#ifndef SHARDMAP_BENCH_COMMON_H
#define SHARDMAP_BENCH_COMMON_H

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "shardmap.h"

/* ---------------------------------------------------------------- failing loudly */

/* Benchmarks stop at the first unexpected error: a figure measured after one is worthless. */
static inline void bench_die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static inline void bench_die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("bench: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(2);
}

/* Die with the shardmap error text when rc is not SHARDMAP_OK. */
static inline void bench_check_rc(int rc, const char *what)
{
	if (rc != SHARDMAP_OK)
		bench_die("%s: %s (%s)", what, shardmap_strerror(rc), shardmap_err_name(rc));
}

static inline void *bench_xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (p == NULL)
		bench_die("out of memory (%zu bytes)", n);
	return p;
}

static inline void *bench_xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);
	if (p == NULL)
		bench_die("out of memory (%zu x %zu bytes)", n, size);
	return p;
}

/* ---------------------------------------------------------------- command line */

struct bench_opts {
	int quick;
	unsigned runs;
	uint64_t seed;
	const char *json_path; /* NULL: stdout only */
};

/* A benchmark's own option: return 1 if arg (with value val, which may be NULL) was taken
 * and consumed val, 0 if it was taken alone, -1 if unknown. */
typedef int (*bench_extra_opt_fn)(void *ctx, const char *arg, const char *val);

static inline unsigned long long bench_parse_num(const char *arg, const char *val)
{
	char *end = NULL;
	if (val == NULL || *val == '\0')
		bench_die("%s needs a number", arg);
	errno = 0;
	unsigned long long v = strtoull(val, &end, 10);
	if (errno != 0 || *end != '\0' || val[0] == '-')
		bench_die("%s: not a number: '%s'", arg, val);
	return v;
}

/* Parse the common options (and the benchmark's own through extra, which may be NULL).
 * usage is printed for --help and after an unknown option. */
static inline void bench_parse_args(int argc, char **argv, struct bench_opts *o, const char *usage,
				    bench_extra_opt_fn extra, void *ctx)
{
	o->quick = 0;
	o->runs = 0;
	o->seed = 1;
	o->json_path = NULL;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--quick") == 0) {
			o->quick = 1;
		} else if (strcmp(a, "--runs") == 0) {
			o->runs = (unsigned)bench_parse_num(a, v);
			if (o->runs == 0)
				bench_die("--runs must be at least 1");
			i++;
		} else if (strcmp(a, "--seed") == 0) {
			o->seed = bench_parse_num(a, v);
			i++;
		} else if (strcmp(a, "--json") == 0) {
			if (v == NULL)
				bench_die("--json needs a path");
			o->json_path = v;
			i++;
		} else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			printf("usage: %s [--quick] [--runs N] [--seed N] [--json PATH]%s\n",
			       argv[0], usage ? usage : "");
			exit(0);
		} else {
			int taken = extra ? extra(ctx, a, v) : -1;
			if (taken < 0)
				bench_die("unknown option '%s' (try --help)", a);
			i += taken;
		}
	}
	if (o->runs == 0)
		o->runs = o->quick ? 1 : 5;
}

/* ---------------------------------------------------------------- clocks */

static inline uint64_t bench_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Sleep until the CLOCK_MONOTONIC instant t_ns (returns at once if it has passed). */
static inline void bench_sleep_until_ns(uint64_t t_ns)
{
	struct timespec ts = {.tv_sec = (time_t)(t_ns / 1000000000u),
			      .tv_nsec = (long)(t_ns % 1000000000u)};
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
	}
}

/* ---------------------------------------------------------------- random numbers */

/* splitmix64: small, fast, good enough to pick keys and shards; one state per thread. */
static inline uint64_t bench_rand(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15u);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
	return z ^ (z >> 31);
}

/* Uniform in [0, n), n > 0 (the bias for n << 2^64 is negligible here). */
static inline uint64_t bench_rand_below(uint64_t *state, uint64_t n)
{
	return bench_rand(state) % n;
}

static inline shardmap_hash bench_rand_hash(uint64_t *state)
{
	shardmap_hash h;
	h.hi = bench_rand(state);
	h.lo = bench_rand(state);
	return h;
}

/* ---------------------------------------------------------------- 128-bit helpers */

static inline int bench_hash_le(shardmap_hash a, shardmap_hash b)
{
	return a.hi < b.hi || (a.hi == b.hi && a.lo <= b.lo);
}

/* a + (b - a) / 2 for a <= b, in two 64-bit halves (the midpoint of a range). */
static inline shardmap_hash bench_hash_mid(shardmap_hash a, shardmap_hash b)
{
	shardmap_hash d, half, r;
	d.lo = b.lo - a.lo;
	d.hi = b.hi - a.hi - (b.lo < a.lo);
	half.lo = (d.lo >> 1) | (d.hi << 63);
	half.hi = d.hi >> 1;
	r.lo = a.lo + half.lo;
	r.hi = a.hi + half.hi + (r.lo < a.lo);
	return r;
}

/* ---------------------------------------------------------------- random keys */

/* n partition keys of 16..40 random printable bytes, packed: key i is
 * blob[off[i] .. off[i+1]). Generated once, before anything is timed. */
struct bench_keys {
	size_t n;
	char *blob;
	uint32_t *off;
};

static inline void bench_keys_make(struct bench_keys *k, size_t n, uint64_t seed)
{
	static const char alphabet[] =
	    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:";
	uint64_t rng = seed;
	k->n = n;
	k->off = bench_xmalloc((n + 1) * sizeof *k->off);
	k->blob = bench_xmalloc(n * 40);
	uint32_t pos = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned len = 16 + (unsigned)bench_rand_below(&rng, 25);
		k->off[i] = pos;
		for (unsigned j = 0; j < len; j++)
			k->blob[pos++] = alphabet[bench_rand_below(&rng, sizeof alphabet - 1)];
	}
	k->off[n] = pos;
}

static inline const char *bench_key(const struct bench_keys *k, size_t i, size_t *len)
{
	*len = k->off[i + 1] - k->off[i];
	return k->blob + k->off[i];
}

static inline void bench_keys_free(struct bench_keys *k)
{
	free(k->blob);
	free(k->off);
	memset(k, 0, sizeof *k);
}

/* ---------------------------------------------------------------- statistics */

static inline int bench_cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static inline int bench_cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

/* The median of v[0..n) (v is reordered). 0 for n == 0. */
static inline double bench_median(double *v, size_t n)
{
	if (n == 0)
		return 0;
	qsort(v, n, sizeof *v, bench_cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Nearest-rank percentile p (0..100] of v[0..n), which must be sorted ascending. */
static inline uint64_t bench_percentile_sorted(const uint64_t *v, size_t n, double p)
{
	if (n == 0)
		return 0;
	size_t rank = (size_t)((p / 100.0) * (double)n + 0.999999);
	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	return v[rank - 1];
}

/* ---------------------------------------------------------------- JSON and targets */

static inline json_t *bench_json_or_die(json_t *j)
{
	if (j == NULL)
		bench_die("out of memory building JSON");
	return j;
}

/* Set key to a number, a string or an integer on a JSON object (dies on failure). */
static inline void bench_json_num(json_t *obj, const char *key, double v)
{
	json_object_set_new(obj, key, bench_json_or_die(json_real(v)));
}

static inline void bench_json_int(json_t *obj, const char *key, long long v)
{
	json_object_set_new(obj, key, bench_json_or_die(json_integer(v)));
}

static inline void bench_json_str(json_t *obj, const char *key, const char *v)
{
	json_object_set_new(obj, key, bench_json_or_die(json_string(v)));
}

/* The first line of path whose text starts with prefix, after "prefix<spaces>:<spaces>";
 * "" when absent. For /proc/cpuinfo's "model name". */
static inline void bench_read_field(const char *path, const char *prefix, char *out, size_t len)
{
	char line[512];
	FILE *f = fopen(path, "r");
	out[0] = '\0';
	if (f == NULL)
		return;
	while (fgets(line, sizeof line, f)) {
		if (strncmp(line, prefix, strlen(prefix)) != 0)
			continue;
		const char *p = strchr(line, ':');
		if (p == NULL)
			continue;
		for (p++; *p == ' ' || *p == '\t'; p++) {
		}
		snprintf(out, len, "%s", p);
		out[strcspn(out, "\n")] = '\0';
		break;
	}
	fclose(f);
}

/* The 1-minute load average (recorded; it still counts a run that ended a minute ago). */
static inline double bench_loadavg(void)
{
	double l = -1;
	FILE *f = fopen("/proc/loadavg", "r");
	if (f != NULL) {
		if (fscanf(f, "%lf", &l) != 1)
			l = -1;
		fclose(f);
	}
	return l;
}

/* The fraction (0..1) of all CPUs' time spent busy during the next ms milliseconds (from
 * /proc/stat; -1 if unreadable). Unlike the load average it forgets a finished run at once,
 * so it tells whether someone else is using the machine right now. */
static inline double bench_cpu_busy(unsigned ms)
{
	unsigned long long v[2][8];
	for (int k = 0; k < 2; k++) {
		FILE *f = fopen("/proc/stat", "r");
		int n =
		    f ? fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[k][0], &v[k][1],
			       &v[k][2], &v[k][3], &v[k][4], &v[k][5], &v[k][6], &v[k][7])
		      : 0;
		if (f != NULL)
			fclose(f);
		if (n != 8)
			return -1;
		if (k == 0)
			bench_sleep_until_ns(bench_now_ns() + (uint64_t)ms * 1000000u);
	}
	unsigned long long total = 0, idle = (v[1][3] + v[1][4]) - (v[0][3] + v[0][4]);
	for (int i = 0; i < 8; i++)
		total += v[1][i] - v[0][i];
	return total ? 1.0 - (double)idle / (double)total : -1;
}

/* A result document: {"bench": name, "quick", "runs", "seed", "machine": {...},
 * "results": [], "targets": []}. Add parameters and results, then bench_json_emit. */
static inline json_t *bench_json_new(const char *name, const struct bench_opts *o)
{
	json_t *doc = bench_json_or_die(json_object());
	json_t *m = bench_json_or_die(json_object());
	struct utsname u;
	char cpu[256];

	bench_json_str(doc, "bench", name);
	json_object_set_new(doc, "quick", json_boolean(o->quick));
	bench_json_int(doc, "runs", o->runs);
	bench_json_int(doc, "seed", (long long)o->seed);
	bench_json_str(doc, "shardmap", shardmap_library_version());

	bench_read_field("/proc/cpuinfo", "model name", cpu, sizeof cpu);
	bench_json_str(m, "cpu", cpu);
	bench_json_int(m, "cpus", sysconf(_SC_NPROCESSORS_ONLN));
	if (uname(&u) == 0) {
		bench_json_str(m, "kernel", u.release);
		bench_json_str(m, "arch", u.machine);
	}
#ifdef __VERSION__
	bench_json_str(m, "compiler", __VERSION__);
#endif
#ifdef __OPTIMIZE__
	json_object_set_new(m, "optimized", json_true());
#else
	json_object_set_new(m, "optimized", json_false());
#endif
	double busy = bench_cpu_busy(500);
	bench_json_num(m, "loadavg_start", bench_loadavg());
	bench_json_num(m, "cpu_busy_start", busy);
	json_object_set_new(doc, "machine", m);
	json_object_set_new(doc, "results", bench_json_or_die(json_array()));
	json_object_set_new(doc, "targets", bench_json_or_die(json_array()));

	printf("# %s: cpu \"%s\", %ld cpus, %.0f%% busy before the start, %s build, runs %u%s\n",
	       name, cpu, sysconf(_SC_NPROCESSORS_ONLN), busy * 100,
#ifdef __OPTIMIZE__
	       "optimized",
#else
	       "UNOPTIMIZED",
#endif
	       o->runs, o->quick ? " (quick: smoke run, figures indicative only)" : "");
	if (busy > 0.1)
		printf("# warning: the CPUs were %.0f%% busy before the start (someone else is "
		       "running): figures will be noisy\n",
		       busy * 100);
	return doc;
}

/* Append a result object (takes the reference). */
static inline void bench_json_result(json_t *doc, json_t *result)
{
	json_array_append_new(json_object_get(doc, "results"), result);
}

/* Check a target and say so: "PASS"/"MISS" (or "SKIP" when value < 0: not measured in
 * this run). op is "<=" or ">=". Prints one line and appends it to doc's targets. */
static inline int bench_target(json_t *doc, const char *name, double value, const char *op,
			       double limit, const char *unit)
{
	const char *verdict;
	if (value < 0)
		verdict = "SKIP";
	else if (strcmp(op, "<=") == 0)
		verdict = value <= limit ? "PASS" : "MISS";
	else
		verdict = value >= limit ? "PASS" : "MISS";
	if (value < 0)
		printf("  %-4s  %-62s  (not measured)    target %s %.2f%s\n", verdict, name, op,
		       limit, unit);
	else
		printf("  %-4s  %-62s  %10.3f%-6s  target %s %.2f%s\n", verdict, name, value, unit,
		       op, limit, unit);
	json_t *t = bench_json_or_die(json_object());
	bench_json_str(t, "name", name);
	if (value >= 0)
		bench_json_num(t, "value", value);
	else
		json_object_set_new(t, "value", json_null());
	bench_json_str(t, "op", op);
	bench_json_num(t, "limit", limit);
	bench_json_str(t, "unit", unit);
	bench_json_str(t, "verdict", verdict);
	json_array_append_new(json_object_get(doc, "targets"), t);
	return strcmp(verdict, "MISS") != 0;
}

/* Print doc as one compact JSON line on stdout, write it to o->json_path too, free it.
 * Returns 0, or 1 when the file could not be written. */
static inline int bench_json_emit(json_t *doc, const struct bench_opts *o)
{
	bench_json_num(json_object_get(doc, "machine"), "loadavg_end", bench_loadavg());
	bench_json_num(json_object_get(doc, "machine"), "cpu_busy_end", bench_cpu_busy(500));
	char *line = json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(6));
	int rc = 0;
	if (line == NULL)
		bench_die("cannot serialise the JSON result");
	printf("%s\n", line);
	if (o->json_path != NULL) {
		FILE *f = fopen(o->json_path, "w");
		if (f == NULL || fprintf(f, "%s\n", line) < 0 || fclose(f) != 0) {
			fprintf(stderr, "bench: cannot write %s: %s\n", o->json_path,
				strerror(errno));
			rc = 1;
		}
	}
	free(line);
	json_decref(doc);
	return rc;
}

/* ---------------------------------------------------------------- map shapes */

#define BENCH_CELLS    16
#define BENCH_NAME_LEN 24 /* room for "stream-%05u" of any unsigned */

/* A map of n_streams streams ("stream-00000" ...) of n_shards evenly split shards each
 * (Kinesis layout, XXH3), owned round-robin by BENCH_CELLS cells ("cell-00" ..., two
 * endpoints each), built through the public plan + apply path. */
struct bench_map {
	shardmap *m;
	unsigned n_streams, n_shards;
	char (*stream_names)[BENCH_NAME_LEN];
	char cell_names[BENCH_CELLS][8];
};

static inline void bench_map_apply(shardmap *m, shardmap_delta *d, const char *what)
{
	shardmap_error why;
	int rc = shardmap_apply(m, d, &why);
	if (rc != SHARDMAP_OK)
		bench_die("%s: %s: %s", what, shardmap_err_name(rc), why.message);
	shardmap_delta_free(d);
}

static inline void bench_map_build(struct bench_map *bm, unsigned n_streams, unsigned n_shards)
{
	const char *cells[BENCH_CELLS];
	shardmap_delta *d;

	bm->n_streams = n_streams;
	bm->n_shards = n_shards;
	bm->stream_names = bench_xcalloc(n_streams, sizeof *bm->stream_names);
	bench_check_rc(shardmap_open(&bm->m, NULL), "shardmap_open");

	bench_check_rc(shardmap_delta_new(0, 1, &d), "shardmap_delta_new");
	for (unsigned c = 0; c < BENCH_CELLS; c++) {
		char ep[2][24];
		const char *eps[2] = {ep[0], ep[1]};
		snprintf(bm->cell_names[c], sizeof bm->cell_names[c], "cell-%02u", c);
		snprintf(ep[0], sizeof ep[0], "10.0.%u.1:7000", c);
		snprintf(ep[1], sizeof ep[1], "10.0.%u.2:7000", c);
		cells[c] = bm->cell_names[c];
		bench_check_rc(shardmap_delta_put_cell(d, cells[c], eps, 2), "put_cell");
	}
	bench_map_apply(bm->m, d, "cells");

	for (unsigned s = 0; s < n_streams; s++) {
		snprintf(bm->stream_names[s], sizeof bm->stream_names[s], "stream-%05u", s);
		int rc = shardmap_plan_create_stream(bm->m, bm->stream_names[s], SHARDMAP_HASH_XXH3,
						     n_shards, cells, BENCH_CELLS, &d);
		if (rc != SHARDMAP_OK)
			bench_die("plan_create_stream %s: %s", bm->stream_names[s],
				  shardmap_plan_error());
		bench_map_apply(bm->m, d, "create stream");
	}
}

static inline void bench_map_free(struct bench_map *bm)
{
	shardmap_close(bm->m);
	free(bm->stream_names);
	memset(bm, 0, sizeof *bm);
}

/* The open shard of stream that holds h, copied out of the read section (copy_route). */
struct bench_shard {
	char id[256], cell[256], parent[256], adjacent[256];
	shardmap_hash start, end;
	int has_parent, has_adjacent;
};

static inline void bench_copy_str(char *dst, const char *src)
{
	snprintf(dst, 256, "%s", src ? src : "");
}

/* Look up the shard holding h in stream with reader r (opens and closes a section).
 * Returns the shardmap_route_hash result. */
static inline int bench_shard_at(shardmap_reader *r, const char *stream, shardmap_hash h,
				 struct bench_shard *out)
{
	shardmap_route rt;
	shardmap_read_begin(r);
	int rc = shardmap_route_hash(r, stream, h, &rt);
	if (rc == SHARDMAP_OK) {
		bench_copy_str(out->id, rt.shard_id);
		bench_copy_str(out->cell, rt.cell_id);
		bench_copy_str(out->parent, rt.parent);
		bench_copy_str(out->adjacent, rt.adjacent_parent);
		out->has_parent = rt.parent != NULL;
		out->has_adjacent = rt.adjacent_parent != NULL;
		out->start = rt.start;
		out->end = rt.end;
	}
	shardmap_read_end(r);
	return rc;
}

#endif
