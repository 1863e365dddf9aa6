/*
 * stress_peers.c - torture test of peer dissemination (lib/peers.c on lib/pool.c): a fleet of
 * nodes on one small pool in one process, reader threads routing keys on every node while a
 * writer applies a long run of Kinesis plans (split, merge, move) and cell endpoint changes at
 * one node, and a churn thread keeps forgetting and re-learning peers. A plain executable
 * (suite "stress") so it also runs under ThreadSanitizer.
 *
 * Every node listens on 127.0.0.1 port 0 (found through shardmap_peers_address), knows
 * every other node, and starts from the same base version (as if bootstrapped from one
 * store). The writer applies its deltas in rounds; after each round every node must reach
 * the writer's version before a generous deadline (waited on with a condition variable that
 * an observer of every map signals: no sleeps). Then:
 *   - every reader answer was self-consistent: the shard is open, its range holds the key's
 *     hash, its cell's endpoints name that cell, the shard found by id in the same version
 *     is the same record, and versions never went backwards for a reader on a node;
 *   - every node holds the same content as the writer's (a sum of hashes of every shard row
 *     with its owner's endpoints, order-free); no frame was refused for any reason but
 *     "truncated" (the churn closes connections, which may cut a frame), no digest mismatch
 *     was counted and no delta from a peer was refused as conflicting;
 *   - everything shuts down cleanly: readers close, peers stop, maps close, the pool closes.
 * The whole run happens twice: without a key, and with an HMAC key (fewer rounds).
 *
 * Deltas: 40 rounds of 60 by default, half as many rounds with the key (times
 * SHARDMAP_STRESS_SCALE, a positive number).
 * Exit status 0 on success, 1 on any failure (the first failure of each thread is printed).
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "delta_gen.h"
#include "map.h"
#include "peers.h"

#define NODES	     12
#define POOL_THREADS 2
#define READERS	     3
#define CELLS	     6
#define STREAM	     "s"
#define BASE_SHARDS  16
#define MIN_OPEN     8
#define MAX_OPEN     64
#define ROUNDS	     40
#define PER_ROUND    60
#define DEADLINE_S   90
#define INTERVAL_MS  50

static const shardmap_hash MAXH = {UINT64_MAX, UINT64_MAX};

/* start + (end - start) / 2 */
static shardmap_hash midpoint(shardmap_hash start, shardmap_hash end)
{
	return gen_hash_add(start, gen_hash_shr(gen_hash_sub(end, start), 1));
}

/* ---------------------------------------------------------------- nodes */

struct node {
	shardmap *m;
	shardmap_peers *ps;
	struct shardmap__observer obs;
	char addr[64];
};

static struct node nodes[NODES];
static shardmap_pool *pool;

/* Signalled by every publish on every node (observers run under the map's write lock and
 * must not block: a broadcast under a leaf lock is fine). */
static pthread_mutex_t vlock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t vcond;

static void on_publish(void *ctx, const struct shardmap__version *v, const shardmap_delta *d)
{
	pthread_mutex_lock(&vlock);
	pthread_cond_broadcast(&vcond);
	pthread_mutex_unlock(&vlock);
}

/* Wait until every node is at version >= v. Returns 1, or 0 after the deadline. */
static int wait_all(uint64_t v)
{
	struct timespec dl;
	clock_gettime(CLOCK_MONOTONIC, &dl);
	dl.tv_sec += DEADLINE_S;
	pthread_mutex_lock(&vlock);
	for (;;) {
		int behind = 0;
		for (int i = 0; i < NODES; i++)
			behind += shardmap_version(nodes[i].m) < v;
		if (behind == 0)
			break;
		if (pthread_cond_timedwait(&vcond, &vlock, &dl) != 0) {
			pthread_mutex_unlock(&vlock);
			for (int i = 0; i < NODES; i++)
				fprintf(stderr,
					"stress_peers: node %d at version %llu, want %llu\n", i,
					(unsigned long long)shardmap_version(nodes[i].m),
					(unsigned long long)v);
			return 0;
		}
	}
	pthread_mutex_unlock(&vlock);
	return 1;
}

static void must(int rc, const char *what)
{
	if (rc != 0) {
		fprintf(stderr, "stress_peers: %s: %s\n", what, shardmap_strerror(rc));
		exit(1);
	}
}

static void apply_must(shardmap *m, shardmap_delta *d)
{
	shardmap_error why;
	int rc = shardmap_apply(m, d, &why);
	if (rc != 0) {
		fprintf(stderr, "stress_peers: apply: %s: %s\n", shardmap_err_name(rc),
			why.message);
		exit(1);
	}
}

/* Open every map at the same base version: CELLS cells "cN" with endpoint "cN:7000" and a
 * stream of BASE_SHARDS shards, planned on node 0 and applied everywhere. */
static void nodes_open(void)
{
	shardmap_options mo;
	shardmap_options_init(&mo);
	mo.use_arena = 0; /* many maps in one process */
	for (int i = 0; i < NODES; i++) {
		must(shardmap_open(&nodes[i].m, &mo), "open");
		nodes[i].obs = (struct shardmap__observer){.on_publish = on_publish};
		shardmap__observer_add(nodes[i].m, &nodes[i].obs);
	}
	shardmap_delta *cells, *stream;
	must(shardmap_delta_new(0, 1, &cells), "delta_new");
	const char *owners[CELLS];
	char names[CELLS][8];
	must(gen_named_cells(cells, CELLS, names, owners), "put_cell");
	apply_must(nodes[0].m, cells);
	must(shardmap_plan_create_stream(nodes[0].m, STREAM, SHARDMAP_HASH_XXH3, BASE_SHARDS,
					 owners, CELLS, &stream),
	     "plan_create_stream");
	apply_must(nodes[0].m, stream);
	for (int i = 1; i < NODES; i++) {
		apply_must(nodes[i].m, cells);
		apply_must(nodes[i].m, stream);
	}
	shardmap_delta_free(cells);
	shardmap_delta_free(stream);
}

static void peers_start(const char *key, unsigned ring)
{
	for (int i = 0; i < NODES; i++) {
		shardmap_peers_options o;
		shardmap_peers_options_init(&o);
		o.interval_ms = INTERVAL_MS; /* quick anti-entropy keeps the run short */
		o.ring = ring;		     /* nobody falls behind the ring: there is no store */
		o.key = key;
		o.key_len = key ? strlen(key) : 0;
		must(shardmap_peers_start(nodes[i].m, pool, &o, &nodes[i].ps), "peers_start");
		snprintf(nodes[i].addr, sizeof nodes[i].addr, "%s",
			 shardmap_peers_address(nodes[i].ps));
	}
	for (int i = 0; i < NODES; i++)
		for (int j = 0; j < NODES; j++)
			if (i != j)
				must(shardmap_peers_add(nodes[i].ps, nodes[j].addr), "peers_add");
}

static void nodes_close(void)
{
	for (int i = 0; i < NODES; i++) {
		shardmap_peers_stop(nodes[i].ps);
		nodes[i].ps = NULL;
	}
	for (int i = 0; i < NODES; i++) {
		shardmap__observer_remove(nodes[i].m, &nodes[i].obs);
		shardmap_close(nodes[i].m);
		nodes[i].m = NULL;
	}
}

/* ---------------------------------------------------------------- readers */

static atomic_int stop; /* release by main when done; acquire by readers and the churner */

struct reader {
	pthread_t thread;
	uint64_t seed;
	long lookups;
	int failed;
	char why[256];
};

#define FAIL(rd, ...)                                                                              \
	do {                                                                                       \
		if (!(rd)->failed++)                                                               \
			snprintf((rd)->why, sizeof(rd)->why, __VA_ARGS__);                         \
	} while (0)

static int hash_in(shardmap_hash h, const shardmap_route *rt)
{
	return shardmap_hash_cmp(rt->start, h) <= 0 && shardmap_hash_cmp(h, rt->end) <= 0;
}

static void check_answer(struct reader *rd, shardmap_reader *r, int node, shardmap_hash h,
			 const shardmap_route *rt, uint64_t *last)
{
	unsigned long long v = (unsigned long long)rt->version;
	if (!rt->open)
		FAIL(rd, "node %d v%llu: routed to closed shard %s", node, v, rt->shard_id);
	if (!hash_in(h, rt))
		FAIL(rd, "node %d v%llu: shard %s does not hold the hash", node, v, rt->shard_id);
	if (rt->version < *last)
		FAIL(rd, "node %d: version went back from %llu to %llu", node,
		     (unsigned long long)*last, v);
	*last = rt->version;
	size_t n = strlen(rt->cell_id);
	if (rt->n_endpoints == 0 || strncmp(rt->endpoints[0], rt->cell_id, n) != 0 ||
	    rt->endpoints[0][n] != ':')
		FAIL(rd, "node %d v%llu: cell %s has endpoints that are not its own", node, v,
		     rt->cell_id);
	shardmap_route by_id;
	int rc = shardmap_find_shard(r, STREAM, rt->shard_id, &by_id);
	if (rc == 0 && by_id.version < rt->version)
		FAIL(rd, "node %d: find_shard saw an older version", node);
	else if (rc == 0 && by_id.version == rt->version &&
		 (shardmap_hash_cmp(by_id.start, rt->start) != 0 ||
		  shardmap_hash_cmp(by_id.end, rt->end) != 0 || !by_id.open ||
		  strcmp(by_id.cell_id, rt->cell_id) != 0))
		FAIL(rd, "node %d v%llu: shard %s by id is another record", node, v, rt->shard_id);
	else if (rc != 0 && rc != SHARDMAP_ENOENT)
		FAIL(rd, "node %d: find_shard: %s", node, shardmap_strerror(rc));
}

static void *reader_main(void *arg)
{
	struct reader *rd = arg;
	shardmap_reader *r[NODES];
	uint64_t last[NODES] = {0};
	for (int i = 0; i < NODES; i++)
		must(shardmap_reader_open(nodes[i].m, &r[i]), "reader_open");
	while (!atomic_load_explicit(&stop, memory_order_acquire)) {
		int node = (int)(gen_rand(&rd->seed) % NODES);
		shardmap_read_begin(r[node]);
		for (int k = 0; k < 16; k++) {
			char key[32];
			int len = snprintf(key, sizeof key, "k%llx",
					   (unsigned long long)gen_rand(&rd->seed));
			shardmap_hash h = shardmap_hash_key(SHARDMAP_HASH_XXH3, key, (size_t)len);
			shardmap_route rt;
			int rc = shardmap_route_key(r[node], STREAM, key, (size_t)len, &rt);
			if (rc != 0)
				FAIL(rd, "node %d: route_key: %s", node, shardmap_strerror(rc));
			else
				check_answer(rd, r[node], node, h, &rt, &last[node]);
			rd->lookups++;
		}
		shardmap_read_end(r[node]);
		sched_yield(); /* share the two cores with the pool (fairness, not a wait) */
	}
	for (int i = 0; i < NODES; i++)
		shardmap_reader_close(r[i]);
	return NULL;
}

/* ---------------------------------------------------------------- membership churn */

static atomic_long churns; /* relaxed: a statistic read after the join */

/* Forget a random peer of a random node and learn it again, until stopped. */
static void *churn_main(void *arg)
{
	uint64_t seed = 0xc0ffee;
	while (!atomic_load_explicit(&stop, memory_order_acquire)) {
		int i = (int)(gen_rand(&seed) % NODES);
		int j = (int)((i + 1 + gen_rand(&seed) % (NODES - 1)) % NODES);
		must(shardmap_peers_remove(nodes[i].ps, nodes[j].addr), "peers_remove");
		must(shardmap_peers_add(nodes[i].ps, nodes[j].addr), "peers_add");
		atomic_fetch_add_explicit(&churns, 1, memory_order_relaxed);
		sched_yield();
	}
	return NULL;
}

/* ---------------------------------------------------------------- the writer (node 0) */

struct writer {
	uint64_t seed;
	shardmap_reader *r;
	int open;
	long splits, merges, moves, endpoints;
};

/* The open shard holding h on node 0. */
static shardmap_route pick(struct writer *w, shardmap_hash h, char id[32], char cell[16])
{
	shardmap_route rt;
	shardmap_read_begin(w->r);
	must(shardmap_route_hash(w->r, STREAM, h, &rt), "writer route_hash");
	snprintf(id, 32, "%s", rt.shard_id);
	snprintf(cell, 16, "%s", rt.cell_id);
	shardmap_read_end(w->r);
	return rt; /* only its ranges are used after the section */
}

static shardmap_delta *next_delta(struct writer *w)
{
	shardmap *m = nodes[0].m;
	shardmap_delta *d = NULL;
	char id[32], cell[16], id2[32], cell2[16];
	shardmap_hash h = {gen_rand(&w->seed), gen_rand(&w->seed)};
	shardmap_route rt = pick(w, h, id, cell);
	unsigned op = (unsigned)(gen_rand(&w->seed) % 100);
	if (op < 35 && w->open < MAX_OPEN) {
		must(shardmap_plan_split(m, STREAM, id, midpoint(rt.start, rt.end), &d), "split");
		w->open++;
		w->splits++;
	} else if (op < 70 && w->open > MIN_OPEN && shardmap_hash_cmp(rt.end, MAXH) != 0) {
		pick(w, gen_hash_add(rt.end, (shardmap_hash){0, 1}), id2, cell2);
		must(shardmap_plan_merge(m, STREAM, id, id2, &d), "merge");
		w->open--;
		w->merges++;
	} else if (op < 90) {
		char to[16];
		do
			snprintf(to, sizeof to, "c%d", (int)(gen_rand(&w->seed) % CELLS));
		while (strcmp(to, cell) == 0);
		must(shardmap_plan_move(m, STREAM, id, to, &d), "move");
		w->moves++;
	} else {
		uint64_t v = shardmap_version(m);
		int c = (int)(gen_rand(&w->seed) % CELLS);
		char name[16], ep[2][32];
		snprintf(name, sizeof name, "c%d", c);
		for (int k = 0; k < 2; k++)
			snprintf(ep[k], sizeof ep[k], "c%d:%d", c,
				 1 + (int)(gen_rand(&w->seed) % 65535));
		const char *eps[] = {ep[0], ep[1]};
		must(shardmap_delta_new(v, v + 1, &d), "delta_new");
		must(shardmap_delta_put_cell(d, name, eps, 1 + (gen_rand(&w->seed) & 1)),
		     "put_cell");
		w->endpoints++;
	}
	return d;
}

/* ---------------------------------------------------------------- content */

struct content {
	uint64_t sum_hi, sum_lo, rows;
};

static int add_row(void *ctx, const shardmap_route *rt)
{
	struct content *c = ctx;
	char row[1024], a[SHARDMAP_HASH_DECIMAL_MAX], b[SHARDMAP_HASH_DECIMAL_MAX];
	shardmap_hash_format(rt->start, a);
	shardmap_hash_format(rt->end, b);
	int n = snprintf(row, sizeof row, "%s|%s|%s|%d|%s|%s|%s", rt->shard_id, a, b, rt->open,
			 rt->cell_id, rt->parent ? rt->parent : "-",
			 rt->adjacent_parent ? rt->adjacent_parent : "-");
	for (size_t i = 0; i < rt->n_endpoints && n < (int)sizeof row; i++)
		n += snprintf(row + n, sizeof row - (size_t)n, "|%s", rt->endpoints[i]);
	shardmap_hash h = shardmap_hash_key(SHARDMAP_HASH_XXH3, row, strlen(row));
	c->sum_hi += h.hi; /* order-free: closed shards come in no particular order */
	c->sum_lo += h.lo;
	c->rows++;
	return 0;
}

static struct content content_of(shardmap *m)
{
	struct content c = {0, 0, 0};
	shardmap_reader *r;
	must(shardmap_reader_open(m, &r), "reader_open");
	shardmap_read_begin(r);
	must(shardmap_foreach_shard(r, STREAM, add_row, &c), "foreach_shard");
	shardmap_read_end(r);
	shardmap_reader_close(r);
	return c;
}

/* ---------------------------------------------------------------- one run */

static int run(const char *key, int rounds, int per_round)
{
	int failed = 0;
	must(shardmap_pool_open(POOL_THREADS, &pool), "pool_open");
	nodes_open();
	peers_start(key, (unsigned)(rounds * per_round + 64));
	atomic_store_explicit(&stop, 0, memory_order_relaxed); /* no thread runs yet */

	struct reader rd[READERS];
	memset(rd, 0, sizeof rd);
	pthread_t churner;
	for (int i = 0; i < READERS; i++) {
		rd[i].seed = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
		if (pthread_create(&rd[i].thread, NULL, reader_main, &rd[i]) != 0)
			must(SHARDMAP_ENOMEM, "pthread_create");
	}
	if (pthread_create(&churner, NULL, churn_main, NULL) != 0)
		must(SHARDMAP_ENOMEM, "pthread_create");

	struct writer w = {.seed = 0x5eed5eedull, .open = BASE_SHARDS};
	must(shardmap_reader_open(nodes[0].m, &w.r), "reader_open");
	int converged = 1;
	for (int round = 0; round < rounds && converged; round++) {
		for (int i = 0; i < per_round; i++) {
			shardmap_delta *d = next_delta(&w);
			apply_must(nodes[0].m, d);
			shardmap_delta_free(d);
		}
		converged = wait_all(shardmap_version(nodes[0].m));
	}
	shardmap_reader_close(w.r);
	atomic_store_explicit(&stop, 1, memory_order_release);
	for (int i = 0; i < READERS; i++)
		pthread_join(rd[i].thread, NULL);
	pthread_join(churner, NULL);

	long lookups = 0;
	for (int i = 0; i < READERS; i++) {
		lookups += rd[i].lookups;
		if (rd[i].failed) {
			fprintf(stderr, "stress_peers: reader %d: %d failures, first: %s\n", i,
				rd[i].failed, rd[i].why);
			failed = 1;
		}
	}
	if (!converged) {
		fprintf(stderr, "stress_peers: the nodes did not converge within %d s\n",
			DEADLINE_S);
		failed = 1;
	}
	uint64_t target = shardmap_version(nodes[0].m);
	struct content want = content_of(nodes[0].m);
	uint64_t frames_in = 0, frames_out = 0, pulls = 0;
	for (int i = 0; i < NODES; i++) {
		shardmap_stats st;
		must(shardmap_stats_get(nodes[i].m, &st), "stats_get");
		frames_in += st.frames_in;
		frames_out += st.frames_out;
		pulls += st.antientropy_pulls;
		struct content got = content_of(nodes[i].m);
		if (converged && (st.version != target || got.rows != want.rows ||
				  got.sum_hi != want.sum_hi || got.sum_lo != want.sum_lo)) {
			fprintf(stderr,
				"stress_peers: node %d at v%llu holds other content than "
				"node 0 at v%llu\n",
				i, (unsigned long long)st.version, (unsigned long long)target);
			failed = 1;
		}
		if (st.digest_mismatches || st.rejects_conflict) {
			fprintf(
			    stderr,
			    "stress_peers: node %d: %llu digest mismatches, %llu deltas refused "
			    "as conflicting\n",
			    i, (unsigned long long)st.digest_mismatches,
			    (unsigned long long)st.rejects_conflict);
			failed = 1;
		}
		/* A connection closed by the churn may end inside a frame (truncated); any
		 * other refusal means a node sent something wrong. */
		for (unsigned why = 0; why < SHARDMAP__REFUSE_COUNT; why++) {
			uint64_t n = shardmap__peers_refused(nodes[i].ps, why);
			if (why != SHARDMAP__REFUSE_TRUNCATED && n != 0) {
				fprintf(stderr, "stress_peers: node %d refused %llu frames: %s\n",
					i, (unsigned long long)n, shardmap__refuse_name(why));
				failed = 1;
			}
		}
	}
	nodes_close();
	shardmap_pool_close(pool);
	pool = NULL;
	printf("stress_peers (%s): %d nodes on %d pool threads, %ld deltas at node 0 (%ld splits, "
	       "%ld merges, %ld moves, %ld endpoint changes) to v%llu, %ld lookups, %ld peer "
	       "churns, frames in %llu out %llu, %llu anti-entropy pulls: %s\n",
	       key ? "hmac" : "plain", NODES, POOL_THREADS,
	       w.splits + w.merges + w.moves + w.endpoints, w.splits, w.merges, w.moves,
	       w.endpoints, (unsigned long long)target, lookups,
	       atomic_exchange_explicit(&churns, 0, memory_order_relaxed),
	       (unsigned long long)frames_in, (unsigned long long)frames_out,
	       (unsigned long long)pulls, failed ? "FAILED" : "ok");
	return failed;
}

int main(void)
{
	double scale = 1.0;
	const char *env = getenv("SHARDMAP_STRESS_SCALE");
	if (env != NULL && (scale = strtod(env, NULL)) <= 0)
		scale = 1.0;
	int per_round = (int)(PER_ROUND * scale);
	if (per_round < 1)
		per_round = 1;

	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&vcond, &ca);
	pthread_condattr_destroy(&ca);

	int failed = run(NULL, ROUNDS, per_round);
	failed |= run("stress-peers-shared-key", ROUNDS / 2, per_round);
	pthread_cond_destroy(&vcond);
	return failed;
}
