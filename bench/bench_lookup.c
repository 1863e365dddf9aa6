/*
 * bench_lookup.c - what a lookup costs: shardmap's lock-free read path against the naive
 * limit and against lock-protected maps, on the map shapes of issue 2.
 *
 * For each shape (1 stream x 16 / 1,024 / 65,536 / 1,048,576 shards, and 10,000 streams x
 * 100 shards) and in the same run, it measures ns per lookup of random 16-40 byte keys
 * (precomputed) with these variants:
 *   raw     XXH3-128 of the key, then a branch-free binary search over a plain sorted array
 *           of range starts, unsynchronised: the naive limit. With several streams the
 *           stream is first found in a sorted directory (name hash binary search + strcmp).
 *   same    shardmap's own structures (stream HAMT, B+-tree of starts, cell table) walked
 *           on a pinned version without any epoch section: the map minus synchronisation.
 *   each    shardmap_route_key inside one read section per lookup.
 *   per64   shardmap_route_key, one read section per 64 lookups.
 *   batch   shardmap_route_keys, one read section and one call per 64 lookups (per run of
 *           keys of one stream: with many streams most calls route one key).
 *   rwlock  the raw map (directory + sorted array + owner) behind a pthread_rwlock, one read
 *           lock per lookup.
 *   mutex   the same behind a pthread mutex.
 *   rwsame  shardmap's own structures (as same) behind a pthread_rwlock, one read lock per
 *           lookup: a lock against an epoch section with exactly the same work inside.
 * with 1 and 2 reader threads, and again with a writer publishing 1,000 batches/s: for
 * shardmap (and rwsame) small split / merge / move batches through shardmap_plan_* +
 * shardmap_apply, rwsame applying under the write lock; for rwlock and mutex the same
 * changes made in a spare copy of the stream's arrays and swapped in under the write lock
 * (raw and same cannot run beside a writer).
 *
 * Variants and configurations are interleaved inside every run (the order rotates from run
 * to run) and every figure is the median over the runs; ratios are medians of the per-run
 * ratios. ns/lookup is reader-thread time per lookup. See bench/RESULTS.md.
 */
#include <pthread.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>

#define XXH_INLINE_ALL /* as lib/hashkey.c does: the naive limit gets an inlined XXH3 too */
#include <xxhash.h>

#include "common.h"
#include "hashkey.h"
#include "map.h"
#include "model.h"

#define CHUNK	  64   /* lookups per section in per64, and per clock check / 16 */
#define WRITER_HZ 1000 /* batches per second the writer aims for */

/* ---------------------------------------------------------------- shapes and variants */

struct shape_def {
	const char *name;
	unsigned streams, shards;
};

static const struct shape_def full_shapes[] = {
    {"1x16", 1, 16},	       {"1x1024", 1, 1024},	  {"1x65536", 1, 65536},
    {"1x1048576", 1, 1048576}, {"10000x100", 10000, 100},
};
static const struct shape_def quick_shapes[] = {
    {"1x16", 1, 16},
    {"1x1024", 1, 1024},
    {"1x65536", 1, 65536},
    {"100x100", 100, 100},
};

enum variant {
	V_RAW,
	V_SAME,
	V_EACH,
	V_PER64,
	V_RWLOCK,
	V_MUTEX,
	V_RWSAME,
	V_BATCH,
	N_VARIANTS
};

static const char *const variant_name[N_VARIANTS] = {
    "raw", "same", "each", "per64", "rwlock", "mutex", "rwsame", "batch"};
static const char *const variant_label[N_VARIANTS] = {
    "(a) raw binary search",	   "(a') raw same structure", "(b) section per lookup",
    "(c) section per 64 lookups",  "(d) rwlock map",	      "(e) mutex map",
    "(f) rwlock + same structure", "(g) batch of 64 (route_keys)",
};

/* readers that need a shardmap reader handle */
static int variant_is_shardmap(enum variant v)
{
	return v == V_EACH || v == V_PER64 || v == V_BATCH;
}

/* variants whose writer publishes through shardmap_apply (rwsame's under its rwlock) */
static int variant_writes_shardmap(enum variant v)
{
	return v == V_EACH || v == V_PER64 || v == V_BATCH || v == V_RWSAME;
}

/* raw and same read memory no writer may touch: they only run without one */
static int variant_allows_writer(enum variant v)
{
	return v != V_RAW && v != V_SAME;
}

struct config {
	unsigned readers;
	int writer;
	const char *label;
};

static const struct config configs[] = {
    {1, 0, "1 reader"},
    {2, 0, "2 readers"},
    {1, 1, "1 reader + writer"},
    {2, 1, "2 readers + writer"},
};
#define N_CONFIGS (sizeof configs / sizeof configs[0])

/* ---------------------------------------------------------------- the raw / locked map */

struct u128 {
	uint64_t hi, lo;
};

struct flat_stream {
	uint64_t name_hash;
	const char *name;
	size_t n;		   /* open shards */
	struct u128 *starts;	   /* ascending, starts[0] = 0 */
	uint32_t *owner;	   /* cell index of each shard */
	struct u128 *spare_starts; /* the writer's next copy (room for n + 1) */
	uint32_t *spare_owner;
};

struct flat_map {
	alignas(64) pthread_rwlock_t rw; /* own cache lines: readers write the lock word */
	alignas(64) pthread_mutex_t mu;
	alignas(64) size_t n_streams;
	struct flat_stream *streams; /* sorted by name_hash */
};

/* The index of the last start <= (hi, lo): a branch-free binary search (a conditional move
 * per step) on the high words, then a fix-up walk over the starts that share h's high word
 * and lie above it; that walk runs only when a shard is narrower than 2^64, so it is a
 * well-predicted branch. (gcc 12 compiles a full 128-bit `a.hi < h.hi | (a.hi == h.hi &
 * a.lo <= h.lo)` select into branches, and clang does the same to `?:`: see PLATFORM.md.) */
static inline size_t flat_search(const struct u128 *a, size_t n, uint64_t hi, uint64_t lo)
{
	const struct u128 *base = a;
	while (n > 1) {
		size_t half = n / 2;
		base = base[half].hi <= hi ? base + half : base;
		n -= half;
	}
	while (base > a && base->hi == hi && base->lo > lo)
		base--;
	return (size_t)(base - a);
}

/* The stream called name (NULL if none): binary search on the name hash, then strcmp. */
static inline const struct flat_stream *flat_find_stream(const struct flat_map *fm,
							 const char *name)
{
	uint64_t h = XXH3_64bits(name, strlen(name));
	const struct flat_stream *base = fm->streams;
	size_t n = fm->n_streams;
	while (n > 1) {
		size_t half = n / 2;
		base = base[half].name_hash <= h ? base + half : base;
		n -= half;
	}
	for (; base >= fm->streams && base->name_hash == h; base--)
		if (strcmp(base->name, name) == 0)
			return base;
	return NULL;
}

/* raw: with one stream the caller's stream is known, so there is no directory step. */
static inline uint64_t flat_lookup_raw(const struct flat_map *fm, const char *name, const char *key,
				       size_t len)
{
	const struct flat_stream *st =
	    fm->n_streams == 1 ? &fm->streams[0] : flat_find_stream(fm, name);
	XXH128_hash_t h = XXH3_128bits(key, len);
	return flat_search(st->starts, st->n, h.high64, h.low64);
}

/* The locked maps answer like a map: the shard and its owner cell. */
static inline uint64_t flat_lookup_owner(const struct flat_map *fm, const char *name,
					 const char *key, size_t len)
{
	const struct flat_stream *st = flat_find_stream(fm, name);
	XXH128_hash_t h = XXH3_128bits(key, len);
	size_t i = flat_search(st->starts, st->n, h.high64, h.low64);
	return i + ((uint64_t)st->owner[i] << 32);
}

static int flat_cmp_stream(const void *a, const void *b)
{
	uint64_t x = ((const struct flat_stream *)a)->name_hash;
	uint64_t y = ((const struct flat_stream *)b)->name_hash;
	return (x > y) - (x < y);
}

static unsigned cell_index(const struct bench_map *bm, const char *cell)
{
	for (unsigned c = 0; c < BENCH_CELLS; c++)
		if (strcmp(bm->cell_names[c], cell) == 0)
			return c;
	bench_die("unknown cell '%s'", cell);
}

/* Copy the shardmap's open shards (walking the ranges through route_hash) into the flat
 * map, so both answer from exactly the same layout. */
static void flat_build(struct flat_map *fm, const struct bench_map *bm)
{
	shardmap_reader *r;
	bench_check_rc(shardmap_reader_open(bm->m, &r), "reader_open");
	pthread_rwlock_init(&fm->rw, NULL);
	pthread_mutex_init(&fm->mu, NULL);
	fm->n_streams = bm->n_streams;
	fm->streams = bench_xcalloc(bm->n_streams, sizeof *fm->streams);
	for (unsigned s = 0; s < bm->n_streams; s++) {
		struct flat_stream *st = &fm->streams[s];
		const char *name = bm->stream_names[s];
		size_t cap = (size_t)bm->n_shards + 1;
		st->name = name;
		st->name_hash = XXH3_64bits(name, strlen(name));
		st->starts = bench_xmalloc(cap * sizeof *st->starts);
		st->owner = bench_xmalloc(cap * sizeof *st->owner);
		st->spare_starts = bench_xmalloc(cap * sizeof *st->spare_starts);
		st->spare_owner = bench_xmalloc(cap * sizeof *st->spare_owner);
		shardmap_hash h = {0, 0};
		for (;;) {
			struct bench_shard sh;
			bench_check_rc(bench_shard_at(r, name, h, &sh), "route_hash (flat build)");
			if (st->n == bm->n_shards)
				bench_die("stream %s has more than %u open shards", name,
					  bm->n_shards);
			st->starts[st->n].hi = sh.start.hi;
			st->starts[st->n].lo = sh.start.lo;
			st->owner[st->n] = cell_index(bm, sh.cell);
			st->n++;
			if (sh.end.hi == UINT64_MAX && sh.end.lo == UINT64_MAX)
				break;
			h.lo = sh.end.lo + 1;
			h.hi = sh.end.hi + (h.lo == 0);
		}
	}
	qsort(fm->streams, fm->n_streams, sizeof *fm->streams, flat_cmp_stream);
	shardmap_reader_close(r);
}

static void flat_free(struct flat_map *fm)
{
	for (size_t s = 0; s < fm->n_streams; s++) {
		free(fm->streams[s].starts);
		free(fm->streams[s].owner);
		free(fm->streams[s].spare_starts);
		free(fm->streams[s].spare_owner);
	}
	free(fm->streams);
	pthread_rwlock_destroy(&fm->rw);
	pthread_mutex_destroy(&fm->mu);
}

/* ---------------------------------------------------------------- one shape under test */

struct shape {
	const struct shape_def *def;
	struct bench_map bm;
	struct flat_map flat;
	struct bench_keys keys;
	uint32_t *key_stream;			/* stream index of each key */
	uint8_t *run_len; /* keys from this one on of its stream, up to the end of its CHUNK */
	const struct shardmap__version *pinned; /* for same: valid while no writer runs */
	/* for rwsame: read and written only under flat.rw (the writer applies and updates it
	 * with the write lock held, so no reader holds the version apply retires) */
	const struct shardmap__version *rw_version;
};

static void shape_build(struct shape *s, const struct shape_def *def, size_t n_keys, uint64_t seed)
{
	uint64_t t0 = bench_now_ns(), rng = seed ^ 0x5eedu;
	memset(s, 0, sizeof *s);
	s->def = def;
	bench_map_build(&s->bm, def->streams, def->shards);
	flat_build(&s->flat, &s->bm);
	bench_keys_make(&s->keys, n_keys, seed);
	s->key_stream = bench_xmalloc(n_keys * sizeof *s->key_stream);
	for (size_t i = 0; i < n_keys; i++)
		s->key_stream[i] = (uint32_t)bench_rand_below(&rng, def->streams);
	s->run_len = bench_xmalloc(n_keys);
	for (size_t i = n_keys; i-- > 0;) {
		int joins = (i + 1) % CHUNK != 0 && s->key_stream[i + 1] == s->key_stream[i];
		s->run_len[i] = (uint8_t)(joins ? s->run_len[i + 1] + 1 : 1);
	}
	printf("# %s: built in %.2f s\n", def->name, (double)(bench_now_ns() - t0) / 1e9);
	fflush(stdout);
}

static void shape_free(struct shape *s)
{
	flat_free(&s->flat);
	bench_map_free(&s->bm);
	bench_keys_free(&s->keys);
	free(s->key_stream);
	free(s->run_len);
}

/* ---------------------------------------------------------------- same structure, no section */

/* What shardmap_route_key does (lib/lookup.c: stream_of, route, answer), on a version the
 * caller keeps alive by other means, with no epoch section: stream directory (HAMT), hash,
 * B+-tree of starts, cell table (HAMT). */
static int same_route(const struct shardmap__version *v, const char *stream, const void *key,
		      size_t len, shardmap_route *out)
{
	const struct shardmap__stream *st = shardmap__version_stream(v, stream);
	if (st == NULL)
		return SHARDMAP_ENOENT;
	shardmap_hash h;
	int rc = shardmap__hash_key(st->hash_fn, key, len, &h);
	if (rc != 0)
		return rc;
	const struct shardmap__shard *sh = shardmap__btree_find(&st->open, h);
	if (sh == NULL)
		return SHARDMAP_ENOENT;
	const struct shardmap__cell_ent *ce =
	    shardmap__hamt_get(&v->cells, sh->cell_hash, sh->owner_cell);
	if (ce == NULL)
		return SHARDMAP_ENOENT;
	out->version = v->version;
	out->stream = st->name;
	out->shard_id = sh->id;
	out->start = sh->start;
	out->end = sh->end;
	out->open = sh->open;
	out->parent = sh->parent;
	out->adjacent_parent = sh->adjacent_parent;
	out->cell_id = ce->cell->id;
	out->endpoints = ce->cell->endpoints;
	out->n_endpoints = ce->cell->n_endpoints;
	return SHARDMAP_OK;
}

/* Called through this pointer so that, like shardmap_route_key, it is an out-of-line call
 * per lookup: same then differs from the real lookup only by what synchronisation adds
 * (volatile: the compiler may not see through it and inline the walk into the loop). */
static int (*volatile same_route_fn)(const struct shardmap__version *, const char *, const void *,
				     size_t, shardmap_route *) = same_route;

/* ---------------------------------------------------------------- readers */

struct reader {
	struct shape *s;
	enum variant var;
	size_t first_key; /* where this thread starts in the key pool */
	int cpu;	  /* the CPU it runs on (pin_to_cpu), -1: anywhere */
	uint64_t duration_ns;
	pthread_barrier_t *go;
	shardmap_reader *r;
	/* results */
	uint64_t lookups, elapsed_ns, sum, errors;
};

static uint64_t route_sum(int rc, const shardmap_route *rt, uint64_t *errors)
{
	if (rc != SHARDMAP_OK) {
		(*errors)++;
		return 0;
	}
	return (uint64_t)(uintptr_t)rt->shard_id + rt->n_endpoints;
}

/* The CHUNK keys from i0 through shardmap_route_keys, one call per run of keys of one stream
 * (inside the caller's section). The runs were found when the shape was built. */
static uint64_t run_batches(struct reader *rd, size_t i0)
{
	struct shape *s = rd->s;
	char(*names)[BENCH_NAME_LEN] = s->bm.stream_names;
	shardmap_key keys[CHUNK];
	shardmap_route rt[CHUNK];
	uint64_t sum = 0;
	for (size_t i = 0; i < CHUNK; i++) {
		keys[i].data = bench_key(&s->keys, i0 + i, &keys[i].len);
		keys[i].explicit_hash = NULL;
	}
	for (size_t run = 0, end; run < CHUNK; run = end) {
		end = run + s->run_len[i0 + run];
		if (shardmap_route_keys(rd->r, names[s->key_stream[i0 + run]], keys + run, end - run,
					rt + run) != SHARDMAP_OK) {
			rd->errors++;
			continue;
		}
		for (size_t i = run; i < end; i++)
			sum += (uintptr_t)rt[i].shard_id + rt[i].n_endpoints;
	}
	return sum;
}

/* One chunk of CHUNK lookups starting at key i; returns a checksum the compiler must keep. */
static uint64_t run_chunk(struct reader *rd, size_t i0)
{
	struct shape *s = rd->s;
	char(*names)[BENCH_NAME_LEN] = s->bm.stream_names;
	uint64_t sum = 0;
	shardmap_route rt;
	size_t len;
	const char *key;

	switch (rd->var) {
	case V_RAW:
		for (size_t i = i0; i < i0 + CHUNK; i++) {
			key = bench_key(&s->keys, i, &len);
			sum += flat_lookup_raw(&s->flat, names[s->key_stream[i]], key, len);
		}
		break;
	case V_SAME:
		for (size_t i = i0; i < i0 + CHUNK; i++) {
			key = bench_key(&s->keys, i, &len);
			int rc = same_route_fn(s->pinned, names[s->key_stream[i]], key, len, &rt);
			sum += route_sum(rc, &rt, &rd->errors);
		}
		break;
	case V_EACH:
		for (size_t i = i0; i < i0 + CHUNK; i++) {
			key = bench_key(&s->keys, i, &len);
			shardmap_read_begin(rd->r);
			int rc = shardmap_route_key(rd->r, names[s->key_stream[i]], key, len, &rt);
			sum += route_sum(rc, &rt, &rd->errors);
			shardmap_read_end(rd->r);
		}
		break;
	case V_PER64:
		shardmap_read_begin(rd->r);
		for (size_t i = i0; i < i0 + CHUNK; i++) {
			key = bench_key(&s->keys, i, &len);
			int rc = shardmap_route_key(rd->r, names[s->key_stream[i]], key, len, &rt);
			sum += route_sum(rc, &rt, &rd->errors);
		}
		shardmap_read_end(rd->r);
		break;
	case V_BATCH:
		shardmap_read_begin(rd->r);
		sum += run_batches(rd, i0);
		shardmap_read_end(rd->r);
		break;
	case V_RWLOCK:
		for (size_t i = i0; i < i0 + CHUNK; i++) {
			key = bench_key(&s->keys, i, &len);
			pthread_rwlock_rdlock(&s->flat.rw);
			sum += flat_lookup_owner(&s->flat, names[s->key_stream[i]], key, len);
			pthread_rwlock_unlock(&s->flat.rw);
		}
		break;
	case V_RWSAME:
		for (size_t i = i0; i < i0 + CHUNK; i++) {
			key = bench_key(&s->keys, i, &len);
			pthread_rwlock_rdlock(&s->flat.rw);
			int rc =
			    same_route_fn(s->rw_version, names[s->key_stream[i]], key, len, &rt);
			sum += route_sum(rc, &rt, &rd->errors);
			pthread_rwlock_unlock(&s->flat.rw);
		}
		break;
	case V_MUTEX:
		for (size_t i = i0; i < i0 + CHUNK; i++) {
			key = bench_key(&s->keys, i, &len);
			pthread_mutex_lock(&s->flat.mu);
			sum += flat_lookup_owner(&s->flat, names[s->key_stream[i]], key, len);
			pthread_mutex_unlock(&s->flat.mu);
		}
		break;
	case N_VARIANTS:
		break;
	}
	return sum;
}

/* The CPU reader number t runs on: the (t + 1)-th the process may use, counting round.
 * Readers stay on one CPU each, so a measurement does not depend on where the scheduler
 * happens to put (and move) them: every variant gets the same placement. -1 if unknown. */
static int reader_cpu(unsigned t)
{
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof set, &set) != 0 || CPU_COUNT(&set) == 0)
		return -1;
	int want = (int)(t + 1) % CPU_COUNT(&set);
	for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
		if (CPU_ISSET(cpu, &set) && want-- == 0)
			return cpu;
	return -1;
}

static void pin_to_cpu(int cpu)
{
	if (cpu < 0)
		return;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	(void)pthread_setaffinity_np(pthread_self(), sizeof set, &set); /* best effort */
}

static void *reader_main(void *arg)
{
	struct reader *rd = arg;
	size_t n_keys = rd->s->keys.n, i = rd->first_key;
	uint64_t lookups = 0, sum = 0;

	pin_to_cpu(rd->cpu);
	if (variant_is_shardmap(rd->var))
		bench_check_rc(shardmap_reader_open(rd->s->bm.m, &rd->r), "reader_open");
	pthread_barrier_wait(rd->go);
	uint64_t t0 = bench_now_ns(), t;
	do {
		for (int k = 0; k < 16; k++) {
			sum += run_chunk(rd, i);
			i += CHUNK;
			if (i >= n_keys)
				i = 0;
		}
		lookups += 16 * CHUNK;
		t = bench_now_ns();
	} while (t - t0 < rd->duration_ns);
	rd->lookups = lookups;
	rd->elapsed_ns = t - t0;
	rd->sum = sum;
	shardmap_reader_close(rd->r);
	rd->r = NULL;
	return NULL;
}

/* ---------------------------------------------------------------- writers */

struct writer {
	struct shape *s;
	enum variant var; /* which map it writes: shardmap, rwlock or mutex */
	pthread_barrier_t *go;
	atomic_int stop; /* set by main after the readers are done */
	uint64_t rng;
	/* the split -> merge -> move cycle in progress */
	int phase;
	unsigned stream;
	size_t idx;		  /* flat: shard index being split/merged/moved */
	shardmap_hash start, mid; /* shardmap: range start and split point */
	shardmap_reader *r;
	/* results */
	uint64_t batches, errors, elapsed_ns;
};

static void sm_writer_fail(struct writer *w, const char *what, int rc)
{
	if (w->errors++ == 0)
		fprintf(stderr, "bench: writer %s: %s (%s)\n", what, shardmap_err_name(rc),
			shardmap_plan_error());
}

/* One shardmap batch: split a random shard in two, merge the children back, move the
 * merged shard to another cell, round and round. */
static void sm_writer_step(struct writer *w)
{
	struct bench_map *bm = &w->s->bm;
	struct bench_shard a, b;
	shardmap_delta *d = NULL;
	shardmap_error why;
	int rc;

	if (w->phase == 0)
		w->stream = (unsigned)bench_rand_below(&w->rng, bm->n_streams);
	const char *stream = bm->stream_names[w->stream];
	switch (w->phase) {
	case 0:
		rc = bench_shard_at(w->r, stream, bench_rand_hash(&w->rng), &a);
		if (rc == 0) {
			w->start = a.start;
			w->mid = bench_hash_mid(a.start, a.end);
			rc = shardmap_plan_split(bm->m, stream, a.id, w->mid, &d);
		}
		break;
	case 1:
		rc = bench_shard_at(w->r, stream, w->start, &a);
		if (rc == 0)
			rc = bench_shard_at(w->r, stream, w->mid, &b);
		if (rc == 0)
			rc = shardmap_plan_merge(bm->m, stream, a.id, b.id, &d);
		break;
	default:
		rc = bench_shard_at(w->r, stream, w->start, &a);
		if (rc == 0) {
			unsigned c = (cell_index(bm, a.cell) + 1) % BENCH_CELLS;
			rc = shardmap_plan_move(bm->m, stream, a.id, bm->cell_names[c], &d);
		}
		break;
	}
	w->phase = (w->phase + 1) % 3;
	if (rc != 0) {
		sm_writer_fail(w, "plan", rc);
		w->phase = 0;
		return;
	}
	if (w->var == V_RWSAME)
		pthread_rwlock_wrlock(&w->s->flat.rw);
	rc = shardmap_apply(bm->m, d, &why);
	if (w->var == V_RWSAME) {
		w->s->rw_version = shardmap__pin(bm->m);
		shardmap__unpin(bm->m);
		pthread_rwlock_unlock(&w->s->flat.rw);
	}
	shardmap_delta_free(d);
	if (rc != 0) {
		sm_writer_fail(w, why.message, rc);
		w->phase = 0;
		return;
	}
	w->batches++;
}

/* One flat-map batch, the same cycle: the change is made in the stream's spare arrays, which
 * are swapped in under the write lock; after the unlock no reader can be in the old ones. */
static void flat_writer_step(struct writer *w)
{
	struct flat_map *fm = &w->s->flat;
	if (w->phase == 0)
		w->stream = (unsigned)bench_rand_below(&w->rng, fm->n_streams);
	struct flat_stream *st = &fm->streams[w->stream];
	size_t n = st->n, i;
	struct u128 *ns = st->spare_starts;
	uint32_t *no = st->spare_owner;

	switch (w->phase) {
	case 0: { /* split shard idx at its midpoint: n + 1 shards */
		i = w->idx = (size_t)bench_rand_below(&w->rng, n - 1);
		shardmap_hash lo = {st->starts[i].hi, st->starts[i].lo};
		shardmap_hash hi = {st->starts[i + 1].hi, st->starts[i + 1].lo};
		shardmap_hash mid = bench_hash_mid(lo, hi);
		memcpy(ns, st->starts, (i + 1) * sizeof *ns);
		memcpy(no, st->owner, (i + 1) * sizeof *no);
		ns[i + 1].hi = mid.hi;
		ns[i + 1].lo = mid.lo;
		no[i + 1] = st->owner[i];
		memcpy(ns + i + 2, st->starts + i + 1, (n - i - 1) * sizeof *ns);
		memcpy(no + i + 2, st->owner + i + 1, (n - i - 1) * sizeof *no);
		n++;
		break;
	}
	case 1: /* merge idx and idx + 1 back: n - 1 shards */
		i = w->idx;
		memcpy(ns, st->starts, (i + 1) * sizeof *ns);
		memcpy(no, st->owner, (i + 1) * sizeof *no);
		memcpy(ns + i + 1, st->starts + i + 2, (n - i - 2) * sizeof *ns);
		memcpy(no + i + 1, st->owner + i + 2, (n - i - 2) * sizeof *no);
		n--;
		break;
	default: /* move idx to the next cell */
		i = w->idx;
		memcpy(ns, st->starts, n * sizeof *ns);
		memcpy(no, st->owner, n * sizeof *no);
		no[i] = (no[i] + 1) % BENCH_CELLS;
		break;
	}
	w->phase = (w->phase + 1) % 3;

	if (w->var == V_RWLOCK)
		pthread_rwlock_wrlock(&fm->rw);
	else
		pthread_mutex_lock(&fm->mu);
	st->spare_starts = st->starts;
	st->spare_owner = st->owner;
	st->starts = ns;
	st->owner = no;
	st->n = n;
	if (w->var == V_RWLOCK)
		pthread_rwlock_unlock(&fm->rw);
	else
		pthread_mutex_unlock(&fm->mu);
	w->batches++;
}

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	const uint64_t period = 1000000000u / WRITER_HZ;

	if (variant_writes_shardmap(w->var))
		bench_check_rc(shardmap_reader_open(w->s->bm.m, &w->r), "writer reader_open");
	pthread_barrier_wait(w->go);
	uint64_t t0 = bench_now_ns(), next = t0;
	/* relaxed: the flag only ends the loop; the main thread joins us before reading results */
	while (!atomic_load_explicit(&w->stop, memory_order_relaxed)) {
		if (variant_writes_shardmap(w->var))
			sm_writer_step(w);
		else
			flat_writer_step(w);
		next += period;
		uint64_t now = bench_now_ns();
		if (next + 10 * period < now)
			next = now; /* fell far behind (busy machine): do not burst to catch up */
		bench_sleep_until_ns(next);
	}
	w->elapsed_ns = bench_now_ns() - t0;
	/* finish the cycle, so every measurement starts from a map of the shape's size (and the
	 * flat arrays, sized for one split, never see two) */
	uint64_t counted = w->batches;
	while (w->phase != 0) {
		if (variant_writes_shardmap(w->var))
			sm_writer_step(w);
		else
			flat_writer_step(w);
	}
	w->batches = counted;
	shardmap_reader_close(w->r);
	w->r = NULL;
	return NULL;
}

/* ---------------------------------------------------------------- one measurement */

struct sample {
	double ns;    /* reader-thread ns per lookup */
	double mops;  /* all readers together, million lookups per second */
	double wrate; /* writer batches per second achieved (0 without a writer) */
	uint64_t werrors;
};

static struct sample measure(struct shape *s, enum variant var, const struct config *cfg,
			     uint64_t duration_ns, uint64_t *rng)
{
	struct reader rd[2];
	struct writer w;
	pthread_t rt[2], wt;
	pthread_barrier_t go;
	struct sample out = {0, 0, 0, 0};
	unsigned n_threads = cfg->readers + (cfg->writer ? 1 : 0);

	if (var == V_SAME || var == V_RWSAME) {
		/* pin only to read the current version: no writer runs yet, so it stays current
		 * (and alive) until the next apply (for rwsame, which that writer makes under
		 * flat.rw, then replaces rw_version before unlocking) */
		s->pinned = shardmap__pin(s->bm.m);
		shardmap__unpin(s->bm.m);
		s->rw_version = s->pinned;
	}
	pthread_barrier_init(&go, NULL, n_threads + 1);
	memset(&w, 0, sizeof w);
	if (cfg->writer) {
		w.s = s;
		w.var = var;
		w.go = &go;
		w.rng = bench_rand(rng);
		atomic_init(&w.stop, 0);
		if (pthread_create(&wt, NULL, writer_main, &w) != 0)
			bench_die("pthread_create");
	}
	for (unsigned t = 0; t < cfg->readers; t++) {
		memset(&rd[t], 0, sizeof rd[t]);
		rd[t].s = s;
		rd[t].var = var;
		rd[t].duration_ns = duration_ns;
		rd[t].go = &go;
		/* different places in the key pool, CHUNK-aligned */
		rd[t].first_key = (size_t)bench_rand_below(rng, s->keys.n / CHUNK) * CHUNK;
		rd[t].cpu = reader_cpu(t);
		if (pthread_create(&rt[t], NULL, reader_main, &rd[t]) != 0)
			bench_die("pthread_create");
	}
	pthread_barrier_wait(&go);
	uint64_t thread_ns = 0, lookups = 0;
	for (unsigned t = 0; t < cfg->readers; t++) {
		pthread_join(rt[t], NULL);
		if (rd[t].errors != 0)
			bench_die("%s/%s: %" PRIu64 " lookups failed", s->def->name,
				  variant_name[var], rd[t].errors);
		thread_ns += rd[t].elapsed_ns;
		lookups += rd[t].lookups;
		out.mops += (double)rd[t].lookups * 1e3 / (double)rd[t].elapsed_ns;
	}
	if (cfg->writer) {
		/* relaxed: see writer_main; pthread_join orders everything else */
		atomic_store_explicit(&w.stop, 1, memory_order_relaxed);
		pthread_join(wt, NULL);
		out.wrate = (double)w.batches * 1e9 / (double)w.elapsed_ns;
		out.werrors = w.errors;
	}
	pthread_barrier_destroy(&go);
	s->pinned = NULL;
	s->rw_version = NULL;
	out.ns = (double)thread_ns / (double)lookups;
	return out;
}

/* ---------------------------------------------------------------- results */

struct cell {
	struct sample run[64];
	unsigned n;
};

struct shape_results {
	struct cell c[N_CONFIGS][N_VARIANTS];
};

static int measured(const struct cell *c)
{
	return c->n > 0;
}

/* median over runs of a field */
static double median_of(const struct cell *c, int field)
{
	double v[64];
	for (unsigned r = 0; r < c->n; r++)
		v[r] = field == 0 ? c->run[r].ns : field == 1 ? c->run[r].mops : c->run[r].wrate;
	return bench_median(v, c->n);
}

/* median over runs of num[r].ns / den[r].ns (both measured in the same run); -1 if either
 * was not measured */
static double ratio_of(const struct cell *num, const struct cell *den)
{
	double v[64];
	unsigned n = num->n < den->n ? num->n : den->n;
	if (n == 0)
		return -1;
	for (unsigned r = 0; r < n; r++)
		v[r] = num->run[r].ns / den->run[r].ns;
	return bench_median(v, n);
}

/* the same as a throughput ratio: median of num mops / den mops */
static double speedup_of(const struct cell *num, const struct cell *den)
{
	double v[64];
	unsigned n = num->n < den->n ? num->n : den->n;
	if (n == 0)
		return -1;
	for (unsigned r = 0; r < n; r++)
		v[r] = num->run[r].mops / den->run[r].mops;
	return bench_median(v, n);
}

/* the baseline cell for ratios "x raw" / "x same": same number of readers, no writer */
static const struct cell *unsync_base(const struct shape_results *res, unsigned ci,
				      enum variant base)
{
	for (unsigned k = 0; k < N_CONFIGS; k++)
		if (configs[k].readers == configs[ci].readers && !configs[k].writer)
			return &res->c[k][base];
	return NULL;
}

static void report_shape(json_t *doc, const struct shape *s, const struct shape_results *res,
			 unsigned runs)
{
	printf("\n== %s (%u stream%s x %u shards): ns/lookup, median of %u runs "
	       "[x raw | x rwlock]\n",
	       s->def->name, s->def->streams, s->def->streams > 1 ? "s" : "", s->def->shards, runs);
	printf(
	    "   (x raw: against raw with as many readers and no writer; x rwlock: against rwlock "
	    "in the same configuration)\n");
	printf("%-28s", "variant");
	for (unsigned ci = 0; ci < N_CONFIGS; ci++)
		printf("  %-22s", configs[ci].label);
	printf("\n");
	for (unsigned v = 0; v < N_VARIANTS; v++) {
		printf("%-28s", variant_label[v]);
		for (unsigned ci = 0; ci < N_CONFIGS; ci++) {
			const struct cell *c = &res->c[ci][v];
			if (!measured(c)) {
				printf("  %-22s", "      -");
				continue;
			}
			double xa = ratio_of(c, unsync_base(res, ci, V_RAW));
			double xd = ratio_of(c, &res->c[ci][V_RWLOCK]);
			char ra[16] = "    -", rd[16] = "    -";
			if (xa >= 0)
				snprintf(ra, sizeof ra, "%5.2f", xa);
			if (xd >= 0)
				snprintf(rd, sizeof rd, "%5.2f", xd);
			printf("  %7.1f [%s|%s]  ", median_of(c, 0), ra, rd);

			json_t *j = bench_json_or_die(json_object());
			bench_json_str(j, "shape", s->def->name);
			bench_json_int(j, "streams", s->def->streams);
			bench_json_int(j, "shards", s->def->shards);
			bench_json_str(j, "variant", variant_name[v]);
			bench_json_int(j, "readers", configs[ci].readers);
			json_object_set_new(j, "writer", json_boolean(configs[ci].writer));
			bench_json_num(j, "ns_per_lookup", median_of(c, 0));
			bench_json_num(j, "mlookups_per_s", median_of(c, 1));
			bench_json_num(j, "vs_raw", xa);
			bench_json_num(j, "vs_same", ratio_of(c, unsync_base(res, ci, V_SAME)));
			bench_json_num(j, "vs_rwlock", xd);
			if (configs[ci].writer) {
				uint64_t werr = 0;
				for (unsigned r = 0; r < c->n; r++)
					werr += c->run[r].werrors;
				bench_json_num(j, "writer_batches_per_s", median_of(c, 2));
				bench_json_int(j, "writer_errors", (long long)werr);
			}
			json_t *arr = bench_json_or_die(json_array());
			for (unsigned r = 0; r < c->n; r++)
				json_array_append_new(arr, json_real(c->run[r].ns));
			json_object_set_new(j, "runs_ns", arr);
			bench_json_result(doc, j);
		}
		printf("\n");
	}
	printf("writer batches/s achieved (median):");
	for (unsigned ci = 0; ci < N_CONFIGS; ci++) {
		if (!configs[ci].writer)
			continue;
		printf("  %s:", configs[ci].label);
		for (unsigned v = 0; v < N_VARIANTS; v++)
			if (measured(&res->c[ci][v]) && variant_allows_writer(v))
				printf(" %s %.0f", variant_name[v], median_of(&res->c[ci][v], 2));
	}
	printf("\n");
	fflush(stdout);
}

/* ---------------------------------------------------------------- targets */

struct target_inputs {
	const struct shape_results *r1024, *r65536, *r1m, *r10k;
};

static unsigned cfg_index(unsigned readers, int writer)
{
	for (unsigned k = 0; k < N_CONFIGS; k++)
		if (configs[k].readers == readers && configs[k].writer == writer)
			return k;
	bench_die("no configuration %u readers writer %d", readers, writer);
}

/* The five targets for one shardmap variant (per64: single calls, batch: one
 * shardmap_route_keys call per 64 keys), each against the same run's baseline. */
static void report_variant_targets(json_t *doc, const struct target_inputs *t, enum variant v)
{
	unsigned c1 = cfg_index(1, 0), c2w = cfg_index(2, 1);
	char label[160];
	snprintf(label, sizeof label, "1x1024: %s / raw binary search", variant_name[v]);
	bench_target(doc, label, t->r1024 ? ratio_of(&t->r1024->c[c1][v], &t->r1024->c[c1][V_RAW]) : -1,
		     "<=", 1.1, "x");
	snprintf(label, sizeof label, "1x65536: raw binary search / %s (speedup)", variant_name[v]);
	bench_target(doc, label,
		     t->r65536 ? ratio_of(&t->r65536->c[c1][V_RAW], &t->r65536->c[c1][v]) : -1,
		     ">=", 2.0, "x");
	snprintf(label, sizeof label, "1x1048576: raw binary search / %s (speedup)",
		 variant_name[v]);
	bench_target(doc, label, t->r1m ? ratio_of(&t->r1m->c[c1][V_RAW], &t->r1m->c[c1][v]) : -1,
		     ">=", 3.0, "x");
	snprintf(label, sizeof label, "10000x100: %s / raw same structure", variant_name[v]);
	bench_target(doc, label, t->r10k ? ratio_of(&t->r10k->c[c1][v], &t->r10k->c[c1][V_SAME]) : -1,
		     "<=", 1.1, "x");
	snprintf(label, sizeof label, "1x1024, 2 readers + writer: %s / rwlock (thrpt)",
		 variant_name[v]);
	bench_target(doc, label,
		     t->r1024 ? speedup_of(&t->r1024->c[c2w][v], &t->r1024->c[c2w][V_RWLOCK]) : -1,
		     ">=", 4.0, "x");
}

static void report_targets(json_t *doc, const struct target_inputs *t)
{
	unsigned c1 = cfg_index(1, 0), c2 = cfg_index(2, 0), c2w = cfg_index(2, 1);
	printf("\ntargets (1 reader, no writer unless stated; medians of per-run ratios):\n");
	report_variant_targets(doc, t, V_PER64);
	report_variant_targets(doc, t, V_BATCH);
	/* What the 2r+w target allows at all on this machine in this run: the throughput of the
	 * raw lookup (no synchronisation, no writer: as fast as a lookup gets) against the
	 * rwlock map's. Whether the rwlock's lock word bounces between cores or stays in one
	 * core's cache (two vCPUs on one core) moves it between ~2.5x and ~6x. */
	double ceiling =
	    t->r1024 ? speedup_of(&t->r1024->c[c2][V_RAW], &t->r1024->c[c2w][V_RWLOCK]) : -1;
	printf("  info  1x1024, 2 readers: raw (no writer) / rwlock + writer (thrpt) %.2fx: the "
	       "most any lookup could reach in this run\n",
	       ceiling);
	bench_json_num(doc, "ceiling_1x1024_2rw_raw_vs_rwlock", ceiling);
	printf("  info  1x1024, 2 readers + writer, throughput against rwlock + same structure "
	       "(the same work under a lock): section per lookup %.2fx, per 64 %.2fx\n",
	       t->r1024 ? speedup_of(&t->r1024->c[c2w][V_EACH], &t->r1024->c[c2w][V_RWSAME]) : -1,
	       t->r1024 ? speedup_of(&t->r1024->c[c2w][V_PER64], &t->r1024->c[c2w][V_RWSAME]) : -1);
	printf("  info  section per lookup / raw at 1x1024: %.3fx; speedups per lookup at "
	       "65536: %.2fx, 1048576: %.2fx; 10000x100 per lookup / same: %.3fx; 1x1024, "
	       "2 readers + writer, per lookup / rwlock (thrpt) %.2fx\n",
	       t->r1024 ? ratio_of(&t->r1024->c[c1][V_EACH], &t->r1024->c[c1][V_RAW]) : -1,
	       t->r65536 ? ratio_of(&t->r65536->c[c1][V_RAW], &t->r65536->c[c1][V_EACH]) : -1,
	       t->r1m ? ratio_of(&t->r1m->c[c1][V_RAW], &t->r1m->c[c1][V_EACH]) : -1,
	       t->r10k ? ratio_of(&t->r10k->c[c1][V_EACH], &t->r10k->c[c1][V_SAME]) : -1,
	       t->r1024 ? speedup_of(&t->r1024->c[c2w][V_EACH], &t->r1024->c[c2w][V_RWLOCK])
			: -1);
}

/* ---------------------------------------------------------------- main */

struct lookup_opts {
	const char *only_shape; /* --shape NAME */
	unsigned variants;	/* --variants a,b,...: bit per enum variant (0 = all) */
	unsigned duration_ms;	/* --duration-ms N */
	int no_writer;		/* --no-writer */
};

static int extra_opt(void *ctx, const char *arg, const char *val)
{
	struct lookup_opts *lo = ctx;
	if (strcmp(arg, "--shape") == 0) {
		if (val == NULL)
			bench_die("--shape needs a name");
		lo->only_shape = val;
		return 1;
	}
	if (strcmp(arg, "--variants") == 0) {
		char buf[128];
		if (val == NULL)
			bench_die("--variants needs a list");
		snprintf(buf, sizeof buf, "%s", val);
		for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
		     tok = strtok_r(NULL, ",", &save)) {
			int v = 0;
			while (v < N_VARIANTS && strcmp(tok, variant_name[v]) != 0)
				v++;
			if (v == N_VARIANTS)
				bench_die("--variants: a list of raw same each per64 rwlock mutex "
					  "rwsame");
			lo->variants |= 1u << v;
		}
		return 1;
	}
	if (strcmp(arg, "--duration-ms") == 0) {
		lo->duration_ms = (unsigned)bench_parse_num(arg, val);
		return 1;
	}
	if (strcmp(arg, "--no-writer") == 0) {
		lo->no_writer = 1;
		return 0;
	}
	return -1;
}

int main(int argc, char **argv)
{
	struct bench_opts o;
	struct lookup_opts lo = {NULL, 0, 0, 0};
	bench_parse_args(argc, argv, &o,
			 " [--shape NAME] [--variants raw,same,...] [--duration-ms N]"
			 " [--no-writer]",
			 extra_opt, &lo);
	if (o.runs > 64)
		bench_die("--runs: at most 64");
	if (lo.variants == 0)
		lo.variants = (1u << N_VARIANTS) - 1;
	const struct shape_def *defs = o.quick ? quick_shapes : full_shapes;
	size_t n_defs = o.quick ? sizeof quick_shapes / sizeof quick_shapes[0]
				: sizeof full_shapes / sizeof full_shapes[0];
	uint64_t duration_ns = (uint64_t)(lo.duration_ms ? lo.duration_ms
					  : o.quick	 ? 20
							 : 200) *
			       1000000u;
	size_t n_keys = o.quick ? (size_t)1 << 16 : (size_t)1 << 20;
	uint64_t rng = o.seed;

	json_t *doc = bench_json_new("lookup", &o);
	bench_json_int(doc, "duration_ms", (long long)(duration_ns / 1000000u));
	bench_json_int(doc, "keys", (long long)n_keys);
	bench_json_int(doc, "writer_hz", WRITER_HZ);
	printf("# %zu random keys of 16-40 bytes; %.0f ms per measurement; writer aims at %d "
	       "batches/s\n",
	       n_keys, (double)duration_ns / 1e6, WRITER_HZ);

	struct shape_results *all = bench_xcalloc(n_defs, sizeof *all);
	struct target_inputs ti = {NULL, NULL, NULL, NULL};
	for (size_t si = 0; si < n_defs; si++) {
		const struct shape_def *def = &defs[si];
		if (lo.only_shape && strcmp(lo.only_shape, def->name) != 0)
			continue;
		struct shape s;
		struct shape_results *res = &all[si];
		shape_build(&s, def, n_keys, o.seed + si);

		/* warm-up: one untimed pass of each variant */
		for (unsigned v = 0; v < N_VARIANTS; v++)
			if (lo.variants & (1u << v))
				measure(&s, v, &configs[0], duration_ns / 4, &rng);
		for (unsigned run = 0; run < o.runs; run++) {
			for (unsigned ci = 0; ci < N_CONFIGS; ci++) {
				if (configs[ci].writer && lo.no_writer)
					continue;
				for (unsigned k = 0; k < N_VARIANTS; k++) {
					enum variant v =
					    (k + run) % N_VARIANTS; /* rotate the order */
					if (!(lo.variants & (1u << v)))
						continue;
					if (configs[ci].writer && !variant_allows_writer(v))
						continue;
					struct cell *c = &res->c[ci][v];
					c->run[c->n++] =
					    measure(&s, v, &configs[ci], duration_ns, &rng);
				}
			}
		}
		report_shape(doc, &s, res, o.runs);
		if (def->streams == 1 && def->shards == 1024)
			ti.r1024 = res;
		else if (def->streams == 1 && def->shards == 65536)
			ti.r65536 = res;
		else if (def->streams == 1 && def->shards == 1048576)
			ti.r1m = res;
		else if (def->streams == 10000 && def->shards == 100)
			ti.r10k = res;
		shape_free(&s);
	}
	report_targets(doc, &ti);
	free(all);
	return bench_json_emit(doc, &o);
}
