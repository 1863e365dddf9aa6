/*
 * bench_bootstrap.c - what a cold or warm start costs: shardmap_bootstrap from a file store
 * and shardmap_snapshot_load from a warm-start snapshot, against the I/O limit of reading the
 * same bytes, with readers serving the old map beside the bootstrap.
 *
 * For each shape (1 stream x 1,048,576 shards and 10,000 streams x 100 shards; --quick:
 * 1 x 65,536 and 100 x 100) it builds the map once through the plan + apply path, writes it
 * to a fresh file store (compacted to a snapshot, then 16 move deltas in the journal, as a
 * store looks in service) and saves a warm-start snapshot. Then, in every run and in this
 * order (rotated from run to run):
 *   read-store     read the store's files (snapshot + journal) into memory: the I/O limit
 *   bootstrap      shardmap_store_open + shardmap_bootstrap into a fresh map
 *   read-snapshot  read the warm-start snapshot file into memory
 *   load-snapshot  shardmap_snapshot_load into a fresh map
 * each with a warm page cache and again cold (the benchmark's own files evicted with
 * posix_fadvise(DONTNEED) first, so other tenants' caches are left alone). Every figure is
 * the median over the runs; ratios are medians of the per-run ratios. Resident bytes per
 * shard come from shardmap_stats.resident_bytes (the map's jemalloc arena) right after the
 * bootstrap.
 * Readers: a map already serving the shape has a reader thread routing random keys, one read
 * section per lookup, timing each lookup; in each run its p99 is taken over an idle window
 * and over the window in which the main thread bootstraps that same map from the store.
 */
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/stat.h>

#ifdef SHARDMAP_HAVE_JEMALLOC
#include <jemalloc/jemalloc.h>
#endif

#include "common.h"
#include "map.h"
#include "mem.h"
#include "store_file.h"

#define JOURNAL_DELTAS 16
#define IDLE_WINDOW_NS 300000000u /* reader-only window per run */
#define HIST_LINEAR    4096	  /* 1 ns buckets below this, then powers of two */
#define HIST_BUCKETS   (HIST_LINEAR + 64)

struct shape_def {
	const char *name;
	unsigned streams, shards;
};

static const struct shape_def full_shapes[] = {{"1x1048576", 1, 1048576},
					       {"10000x100", 10000, 100}};
static const struct shape_def quick_shapes[] = {{"1x65536", 1, 65536}, {"100x100", 100, 100}};

/* ---------------------------------------------------------------- the fixture on disk */

struct fixture {
	char dir[512], store_dir[600], store_uri[640], snap[600];
	char store_files[2][700];
	unsigned n_streams;
	char (*names)[BENCH_NAME_LEN];
	uint64_t shards, version;
	uint64_t store_bytes, snap_bytes;
};

static uint64_t file_size(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

static void write_delta(shardmap_store *s, const shardmap_delta *d)
{
	bench_check_rc(shardmap_store_write(s, d), "shardmap_store_write");
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st, (void)flag, (void)ftw;
	return remove(path);
}

/* The fixture directory on disk, removed at exit even when the benchmark dies. */
static char fixture_dir[512];

static void remove_fixture_dir(void)
{
	if (fixture_dir[0] != '\0')
		nftw(fixture_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	fixture_dir[0] = '\0';
}

static void fixture_make(struct fixture *f, const struct shape_def *shape, const char *base)
{
	struct bench_map bm;
	memset(f, 0, sizeof *f);
	snprintf(f->dir, sizeof f->dir, "%s/shardmap-bench-bootstrap-XXXXXX", base);
	if (mkdtemp(f->dir) == NULL)
		bench_die("mkdtemp %s: %s", f->dir, strerror(errno));
	snprintf(fixture_dir, sizeof fixture_dir, "%s", f->dir);
	snprintf(f->store_dir, sizeof f->store_dir, "%s/store", f->dir);
	snprintf(f->store_uri, sizeof f->store_uri, "file:%s", f->store_dir);
	snprintf(f->snap, sizeof f->snap, "%s/warm.snap", f->dir);
	snprintf(f->store_files[0], sizeof f->store_files[0], "%s/" SHARDMAP__FILE_SNAPSHOT,
		 f->store_dir);
	snprintf(f->store_files[1], sizeof f->store_files[1], "%s/" SHARDMAP__FILE_JOURNAL,
		 f->store_dir);
	if (mkdir(f->store_dir, 0777) != 0)
		bench_die("mkdir %s: %s", f->store_dir, strerror(errno));

	bench_map_build(&bm, shape->streams, shape->shards);
	shardmap_store *s;
	bench_check_rc(shardmap_store_open(f->store_uri, &s), "shardmap_store_open");

	/* The whole map as one delta from 0, folded into the store's snapshot. */
	shardmap_delta *whole = NULL;
	const struct shardmap__version *v = shardmap__pin(bm.m);
	int rc = shardmap__version_to_delta(v, &whole);
	shardmap__unpin(bm.m);
	bench_check_rc(rc, "version_to_delta");
	write_delta(s, whole);
	shardmap_delta_free(whole);
	shardmap_error why = {0};
	if (shardmap__file_store_compact(s, &why) != 0)
		bench_die("compact: %s", why.message);

	/* A journal tail of small deltas, as a store in service has. */
	for (unsigned i = 0; i < JOURNAL_DELTAS; i++) {
		char id[32];
		shardmap_delta *d;
		snprintf(id, sizeof id, "shardId-%012u", i);
		rc = shardmap_plan_move(bm.m, bm.stream_names[0], id, bm.cell_names[(i + 1) % 2],
					&d);
		if (rc != 0)
			bench_die("plan_move %s: %s", id, shardmap_plan_error());
		write_delta(s, d);
		bench_map_apply(bm.m, d, "move");
	}
	shardmap_store_close(s);
	bench_check_rc(shardmap_snapshot_save(bm.m, f->snap), "shardmap_snapshot_save");

	f->version = shardmap_version(bm.m);
	f->shards = (uint64_t)shape->streams * shape->shards;
	f->n_streams = shape->streams;
	f->names = bm.stream_names; /* kept: bench_map_free must not free it */
	bm.stream_names = NULL;
	f->store_bytes = file_size(f->store_files[0]) + file_size(f->store_files[1]);
	f->snap_bytes = file_size(f->snap);
	bench_map_free(&bm);
}

static void fixture_free(struct fixture *f)
{
	remove_fixture_dir();
	free(f->names);
}

/* ---------------------------------------------------------------- the timed variants */

/* Drop our own files from the page cache (clean pages only: flush first). */
static void evict(const char *path)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return;
	fdatasync(fd);
	posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	close(fd);
}

static void evict_fixture(const struct fixture *f)
{
	evict(f->store_files[0]);
	evict(f->store_files[1]);
	evict(f->snap);
}

/* The I/O limit: read the files whole into memory, as a loader must. Returns seconds. */
static double read_files(const char *const *paths, size_t n)
{
	uint64_t t0 = bench_now_ns();
	for (size_t i = 0; i < n; i++) {
		int fd = open(paths[i], O_RDONLY);
		if (fd < 0)
			bench_die("open %s: %s", paths[i], strerror(errno));
		struct stat st;
		if (fstat(fd, &st) != 0)
			bench_die("fstat %s", paths[i]);
		char *buf = bench_xmalloc((size_t)st.st_size);
		size_t got = 0;
		while (got < (size_t)st.st_size) {
			ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
			if (r <= 0)
				bench_die("read %s: %s", paths[i], strerror(errno));
			got += (size_t)r;
		}
		close(fd);
		free(buf);
	}
	return (double)(bench_now_ns() - t0) / 1e9;
}

/* The map's resident bytes once what the build left behind is gone: retired versions and
 * nodes freed after their grace period (shardmap__reclaim), and the arena's freed pages
 * returned (jemalloc would do it itself within its decay time, 10 s by default). */
static uint64_t steady_resident(shardmap *m)
{
	shardmap__reclaim(m, 1);
#ifdef SHARDMAP_HAVE_JEMALLOC
	struct shardmap__mem *mem = shardmap__map_mem(m);
	if (mem->use_arena) {
		char name[64];
		snprintf(name, sizeof name, "arena.%u.purge", mem->arena);
		(void)mallctl(name, NULL, NULL, NULL, 0); /* a figure, not a correctness matter */
	}
#endif
	shardmap_stats st;
	bench_check_rc(shardmap_stats_get(m, &st), "stats");
	return st.resident_bytes;
}

/* Bootstrap (or load the snapshot) into a fresh map. Returns seconds; *resident gets the
 * resident bytes right after, *steady those once the build's garbage is freed. */
static double build_fresh(const struct fixture *f, int snapshot, uint64_t *resident,
			  uint64_t *steady)
{
	shardmap *m;
	shardmap_store *s = NULL;
	shardmap_error why = {0};
	bench_check_rc(shardmap_open(&m, NULL), "shardmap_open");
	uint64_t t0 = bench_now_ns();
	int rc;
	if (snapshot) {
		rc = shardmap_snapshot_load(m, f->snap, &why);
	} else {
		rc = shardmap_store_open(f->store_uri, &s);
		if (rc == 0)
			rc = shardmap_bootstrap(m, s, &why);
	}
	double secs = (double)(bench_now_ns() - t0) / 1e9;
	if (rc != 0)
		bench_die("%s: %s: %s", snapshot ? "snapshot_load" : "bootstrap",
			  shardmap_err_name(rc), why.message);
	shardmap_stats st;
	bench_check_rc(shardmap_stats_get(m, &st), "stats");
	if (st.version != f->version || st.open_shards + st.closed_shards != f->shards)
		bench_die("bootstrap built version %" PRIu64 " with %" PRIu64 " shards", st.version,
			  st.open_shards + st.closed_shards);
	*resident = st.resident_bytes;
	*steady = steady_resident(m);
	shardmap_store_close(s);
	shardmap_close(m);
	return secs;
}

enum { V_READ_STORE, V_BOOTSTRAP, V_READ_SNAP, V_LOAD_SNAP, N_VARIANTS };
static const char *const variant_name[N_VARIANTS] = {"read-store", "bootstrap", "read-snapshot",
						     "load-snapshot"};

/* ---------------------------------------------------------------- readers beside */

enum { PH_IDLE, PH_BOOT, PH_OFF, PH_STOP };

struct readers {
	shardmap *m;
	const struct fixture *f;
	struct bench_keys keys;
	_Atomic int phase;		/* set by the main thread */
	_Atomic int ack;		/* the phase the reader last saw; -1 before it runs */
	uint64_t hist[2][HIST_BUCKETS]; /* written by the reader thread only */
	uint64_t errors;
	int first_error;
	const char *first_error_stream;
	pthread_t thread;
};

static unsigned bucket_of(uint64_t ns)
{
	if (ns < HIST_LINEAR)
		return (unsigned)ns;
	unsigned log2 = 0;
	for (uint64_t v = ns; v > 1; v >>= 1)
		log2++;
	unsigned b = HIST_LINEAR + log2 - 12;
	return b < HIST_BUCKETS ? b : HIST_BUCKETS - 1;
}

static uint64_t bucket_ns(unsigned b)
{
	return b < HIST_LINEAR ? b : (uint64_t)1 << (b - HIST_LINEAR + 12);
}

static uint64_t hist_p99(const uint64_t *h)
{
	uint64_t total = 0, seen = 0;
	for (unsigned b = 0; b < HIST_BUCKETS; b++)
		total += h[b];
	for (unsigned b = 0; b < HIST_BUCKETS; b++) {
		seen += h[b];
		if (total && seen * 100 >= total * 99)
			return bucket_ns(b);
	}
	return 0;
}

static uint64_t hist_count(const uint64_t *h)
{
	uint64_t n = 0;
	for (unsigned b = 0; b < HIST_BUCKETS; b++)
		n += h[b];
	return n;
}

static void *reader_main(void *arg)
{
	struct readers *rd = arg;
	shardmap_reader *r;
	bench_check_rc(shardmap_reader_open(rd->m, &r), "shardmap_reader_open");
	uint64_t rng = 7;
	int last = -1;
	for (;;) {
		/* Acquire pairs with set_phase's release store: a new window's cleared histogram
		 * is visible before we count into it. */
		int ph = atomic_load_explicit(&rd->phase, memory_order_acquire);
		if (ph != last) {
			/* Release pairs with set_phase's acquire wait: every count we made in the
			 * previous phase is visible to the main thread once it sees the ack. */
			atomic_store_explicit(&rd->ack, ph, memory_order_release);
			last = ph;
		}
		if (ph == PH_STOP)
			break;
		size_t i = bench_rand_below(&rng, rd->keys.n), len;
		const char *key = bench_key(&rd->keys, i, &len);
		const char *stream = rd->f->names[i % rd->f->n_streams];
		shardmap_route rt;
		uint64_t t0 = bench_now_ns();
		shardmap_read_begin(r);
		int rc = shardmap_route_key(r, stream, key, len, &rt);
		shardmap_read_end(r);
		uint64_t dt = bench_now_ns() - t0;
		if (rc != 0 && rd->errors++ == 0) {
			rd->first_error = rc;
			rd->first_error_stream = stream;
		}
		if (ph == PH_IDLE || ph == PH_BOOT)
			rd->hist[ph][bucket_of(dt)]++;
	}
	shardmap_reader_close(r);
	return NULL;
}

/* Switch the reader to phase ph and wait until it has seen the switch (it checks before
 * every lookup, so this takes one lookup). After it returns for PH_OFF, the reader no longer
 * touches the histograms. */
static void set_phase(struct readers *rd, int ph)
{
	atomic_store_explicit(&rd->phase, ph, memory_order_release);
	while (atomic_load_explicit(&rd->ack, memory_order_acquire) != ph)
		sched_yield();
}

static void readers_start(struct readers *rd, const struct fixture *f, uint64_t seed)
{
	memset(rd, 0, sizeof *rd);
	rd->f = f;
	bench_keys_make(&rd->keys, 1 << 16, seed);
	bench_check_rc(shardmap_open(&rd->m, NULL), "shardmap_open");
	shardmap_store *s;
	shardmap_error why = {0};
	bench_check_rc(shardmap_store_open(f->store_uri, &s), "shardmap_store_open");
	if (shardmap_bootstrap(rd->m, s, &why) != 0)
		bench_die("bootstrap: %s", why.message);
	shardmap_store_close(s);
	atomic_init(&rd->phase, PH_OFF);
	atomic_init(&rd->ack, -1);
	if (pthread_create(&rd->thread, NULL, reader_main, rd) != 0)
		bench_die("pthread_create");
	set_phase(rd, PH_OFF);
}

/* One run's reader windows: idle, then the same map bootstrapped under the reader.
 * Returns the p99s (ns) of this run; *boot_s gets the bootstrap's seconds. */
static void readers_window(struct readers *rd, uint64_t *p99_idle, uint64_t *p99_boot,
			   double *boot_s)
{
	memset(rd->hist, 0, sizeof rd->hist); /* the reader is in PH_OFF: it counts nothing */
	set_phase(rd, PH_IDLE);
	bench_sleep_until_ns(bench_now_ns() + IDLE_WINDOW_NS);
	shardmap_store *s;
	shardmap_error why = {0};
	bench_check_rc(shardmap_store_open(rd->f->store_uri, &s), "shardmap_store_open");
	set_phase(rd, PH_BOOT);
	uint64_t t0 = bench_now_ns();
	int rc = shardmap_bootstrap(rd->m, s, &why);
	*boot_s = (double)(bench_now_ns() - t0) / 1e9;
	set_phase(rd, PH_OFF);
	shardmap_store_close(s);
	if (rc != 0)
		bench_die("bootstrap under readers: %s", why.message);
	*p99_idle = hist_p99(rd->hist[PH_IDLE]);
	*p99_boot = hist_p99(rd->hist[PH_BOOT]);
}

static void readers_stop(struct readers *rd)
{
	set_phase(rd, PH_STOP);
	pthread_join(rd->thread, NULL);
	if (rd->errors)
		bench_die("readers saw %" PRIu64 " failed lookups (the first: %s in stream %s)",
			  rd->errors, shardmap_err_name(rd->first_error), rd->first_error_stream);
	shardmap_close(rd->m);
	bench_keys_free(&rd->keys);
}

/* ---------------------------------------------------------------- one shape */

struct shape_result {
	double secs[2][N_VARIANTS];	  /* [cold][variant] medians */
	double ratio[2][2];		  /* [cold][store, snapshot] median of per-run ratios */
	double bytes_per_shard[2];	  /* [store, snapshot], right after the build */
	double steady_bytes_per_shard[2]; /* [store, snapshot], once its garbage is freed */
	double p99_idle, p99_boot, p99_ratio, boot_under_readers;
	uint64_t lookups_idle, lookups_boot;
};

static double median_of(double *v, unsigned n)
{
	double tmp[256];
	memcpy(tmp, v, n * sizeof *v);
	return bench_median(tmp, n);
}

static void measure_shape(const struct fixture *f, const struct bench_opts *o,
			  struct shape_result *res)
{
	unsigned runs = o->runs > 256 ? 256 : o->runs;
	double secs[2][N_VARIANTS][256], ratio[2][2][256], bps[2][256], bps_steady[2][256];
	double p99i[256], p99b[256], p99r[256], bur[256];
	const char *store_paths[2] = {f->store_files[0], f->store_files[1]};
	const char *snap_paths[1] = {f->snap};

	for (unsigned run = 0; run < runs; run++) {
		for (unsigned k = 0; k < 2; k++) {
			/* Rotate warm/cold and store/snapshot from run to run. */
			int cold = (int)((k + run) % 2);
			for (unsigned p = 0; p < 2; p++) {
				int snapshot = (int)((p + run / 2) % 2);
				uint64_t resident = 0, steady = 0;
				double rd, bt;
				if (cold)
					evict_fixture(f);
				rd = snapshot ? read_files(snap_paths, 1)
					      : read_files(store_paths, 2);
				if (cold)
					evict_fixture(f);
				bt = build_fresh(f, snapshot, &resident, &steady);
				secs[cold][snapshot ? V_READ_SNAP : V_READ_STORE][run] = rd;
				secs[cold][snapshot ? V_LOAD_SNAP : V_BOOTSTRAP][run] = bt;
				ratio[cold][snapshot][run] = bt / rd;
				if (!cold) {
					bps[snapshot][run] = (double)resident / (double)f->shards;
					bps_steady[snapshot][run] =
					    (double)steady / (double)f->shards;
				}
			}
		}
	}

	struct readers rd;
	readers_start(&rd, f, o->seed);
	for (unsigned run = 0; run < runs; run++) {
		uint64_t a, b;
		readers_window(&rd, &a, &b, &bur[run]);
		p99i[run] = (double)a;
		p99b[run] = (double)b;
		p99r[run] = a ? (double)b / (double)a : 0;
		res->lookups_idle += hist_count(rd.hist[PH_IDLE]);
		res->lookups_boot += hist_count(rd.hist[PH_BOOT]);
	}
	readers_stop(&rd);

	for (int cold = 0; cold < 2; cold++) {
		for (int v = 0; v < N_VARIANTS; v++)
			res->secs[cold][v] = median_of(secs[cold][v], runs);
		for (int p = 0; p < 2; p++)
			res->ratio[cold][p] = median_of(ratio[cold][p], runs);
	}
	for (int p = 0; p < 2; p++) {
		res->bytes_per_shard[p] = median_of(bps[p], runs);
		res->steady_bytes_per_shard[p] = median_of(bps_steady[p], runs);
	}
	res->p99_idle = median_of(p99i, runs);
	res->p99_boot = median_of(p99b, runs);
	res->p99_ratio = median_of(p99r, runs);
	res->boot_under_readers = median_of(bur, runs);
}

static void report_shape(json_t *doc, const struct shape_def *shape, const struct fixture *f,
			 const struct shape_result *r)
{
	printf("\n%s: %" PRIu64 " shards, version %" PRIu64 "; store %.1f MB (snapshot + %d "
	       "journal deltas), warm-start snapshot %.1f MB\n",
	       shape->name, f->shards, f->version, (double)f->store_bytes / 1e6, JOURNAL_DELTAS,
	       (double)f->snap_bytes / 1e6);
	printf("  %-14s %-5s %10s %14s %12s %14s\n", "variant", "cache", "median s", "shards/s",
	       "x baseline", "B/shard after / steady");
	json_t *res = bench_json_or_die(json_object());
	bench_json_str(res, "shape", shape->name);
	bench_json_int(res, "shards", (long long)f->shards);
	bench_json_int(res, "store_bytes", (long long)f->store_bytes);
	bench_json_int(res, "snapshot_bytes", (long long)f->snap_bytes);
	for (int cold = 0; cold < 2; cold++) {
		for (int v = 0; v < N_VARIANTS; v++) {
			int built = v == V_BOOTSTRAP || v == V_LOAD_SNAP, snap = v >= V_READ_SNAP;
			double s = r->secs[cold][v];
			char key[64];
			printf("  %-14s %-5s %10.4f %14.0f", variant_name[v],
			       cold ? "cold" : "warm", s, (double)f->shards / s);
			if (built)
				printf(" %11.2fx", r->ratio[cold][snap]);
			if (built && !cold) /* measured on the warm builds */
				printf(" %14.1f / %.1f", r->bytes_per_shard[snap],
				       r->steady_bytes_per_shard[snap]);
			putchar('\n');
			snprintf(key, sizeof key, "%s_%s_s", variant_name[v],
				 cold ? "cold" : "warm");
			bench_json_num(res, key, s);
			if (built) {
				snprintf(key, sizeof key, "%s_%s_ratio", variant_name[v],
					 cold ? "cold" : "warm");
				bench_json_num(res, key, r->ratio[cold][snap]);
				snprintf(key, sizeof key, "%s_%s_shards_per_s", variant_name[v],
					 cold ? "cold" : "warm");
				bench_json_num(res, key, (double)f->shards / s);
			}
		}
	}
	bench_json_num(res, "bootstrap_bytes_per_shard", r->bytes_per_shard[0]);
	bench_json_num(res, "load_snapshot_bytes_per_shard", r->bytes_per_shard[1]);
	bench_json_num(res, "bootstrap_steady_bytes_per_shard", r->steady_bytes_per_shard[0]);
	bench_json_num(res, "load_snapshot_steady_bytes_per_shard", r->steady_bytes_per_shard[1]);
	printf("  readers beside a bootstrap of the map they read (%.3f s): p99 lookup %.0f ns "
	       "idle, %.0f ns during (%.2fx); %" PRIu64 " + %" PRIu64 " lookups timed\n",
	       r->boot_under_readers, r->p99_idle, r->p99_boot, r->p99_ratio, r->lookups_idle,
	       r->lookups_boot);
	bench_json_num(res, "reader_p99_idle_ns", r->p99_idle);
	bench_json_num(res, "reader_p99_during_bootstrap_ns", r->p99_boot);
	bench_json_num(res, "reader_p99_ratio", r->p99_ratio);
	bench_json_num(res, "bootstrap_under_readers_s", r->boot_under_readers);
	bench_json_result(doc, res);
}

static void targets(json_t *doc, const struct shape_def *shape, const struct shape_result *r,
		    int measured)
{
	char name[128];
	double na = -1;
	snprintf(name, sizeof name, "%s bootstrap from file store (warm cache)", shape->name);
	bench_target(doc, name, measured ? r->secs[0][V_BOOTSTRAP] : na, "<=", 1.0, " s");
	snprintf(name, sizeof name, "%s bootstrap from file store (cold cache)", shape->name);
	bench_target(doc, name, measured ? r->secs[1][V_BOOTSTRAP] : na, "<=", 1.0, " s");
	snprintf(name, sizeof name, "%s snapshot load (warm cache)", shape->name);
	bench_target(doc, name, measured ? r->secs[0][V_LOAD_SNAP] : na, "<=", 1.0, " s");
	snprintf(name, sizeof name, "%s bootstrap / read-only baseline (cold cache)", shape->name);
	bench_target(doc, name, measured ? r->ratio[1][0] : na, "<=", 2.0, "x");
	snprintf(name, sizeof name, "%s snapshot load / read-only baseline (cold cache)",
		 shape->name);
	bench_target(doc, name, measured ? r->ratio[1][1] : na, "<=", 2.0, "x");
	snprintf(name, sizeof name, "%s resident bytes per shard (steady: build garbage freed)",
		 shape->name);
	bench_target(doc, name, measured ? r->steady_bytes_per_shard[0] : na, "<=", 160.0, " B");
	snprintf(name, sizeof name, "%s resident bytes per shard right after the bootstrap",
		 shape->name);
	bench_target(doc, name, measured ? r->bytes_per_shard[0] : na, "<=", 160.0, " B");
}

/* ---------------------------------------------------------------- main */

static int extra_opt(void *ctx, const char *arg, const char *val)
{
	if (strcmp(arg, "--dir") != 0)
		return -1;
	if (val == NULL)
		bench_die("--dir needs a path");
	*(const char **)ctx = val;
	return 1;
}

int main(int argc, char **argv)
{
	struct bench_opts o;
	const char *base = "/var/tmp";
	bench_parse_args(argc, argv, &o, " [--dir PATH (where the stores go, default /var/tmp)]",
			 extra_opt, &base);
	atexit(remove_fixture_dir);
	json_t *doc = bench_json_new("bootstrap", &o);
	bench_json_str(doc, "dir", base);
	const struct shape_def *shapes = o.quick ? quick_shapes : full_shapes;
	size_t n_shapes = 2;
	for (size_t i = 0; i < n_shapes; i++) {
		struct fixture f;
		struct shape_result r = {0};
		printf("# building %s ...\n", shapes[i].name);
		fflush(stdout);
		fixture_make(&f, &shapes[i], base);
		measure_shape(&f, &o, &r);
		report_shape(doc, &shapes[i], &f, &r);
		if (i == 0) {
			printf("\ntargets (1 stream x 1,048,576 shards):\n");
			targets(doc, &full_shapes[0], &r, !o.quick);
		}
		fixture_free(&f);
	}
	return bench_json_emit(doc, &o);
}
