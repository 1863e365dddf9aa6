/*
 * bench_fleet.c - a fleet of front-ends sharing map updates, simulated in one process over
 * loopback: shardmap's peers (every node on ONE pool of 2 threads, at most fanout + 2
 * outbound connections each, epidemic push plus anti-entropy) against the design it
 * replaces, measured in the same run on the same fleet sizes: one OS thread per peer and
 * everyone connected to everyone (each update sent by its origin straight to every peer).
 *
 * For each fleet size (100 and 1,000 nodes; --quick: 20 and 50) and each design:
 *   - convergence: the time from one node applying a delta to every node having published
 *     it (an observer on every map records each publish; no polling), p50 / p99 / max over
 *     --deltas deltas (default 100), each applied at a random node once the previous one
 *     reached everyone;
 *   - frames sent per node per delta (anti-entropy traffic during the deltas included);
 *   - threads and open sockets the fleet adds to the process, resident memory it adds,
 *     and memory per known peer (resident and allocator growth while every node learns
 *     every address);
 *   - for shardmap, the time until 90% of the nodes have a delta: the epidemic push reaches
 *     most of the fleet (~94% with fanout 3) within milliseconds, and the nodes it missed pull
 *     as soon as an informed neighbour announces its new version (the anti-entropy round,
 *     --interval, default 1 s as in the library, is the last resort).
 * Every node starts from the same base version (as if bootstrapped from the store).
 * --key SECRET runs shardmap with HMAC-SHA256 on every frame.
 *
 * The baseline needs N*(N-1) + N threads (an acceptor per node plus a thread per peer):
 * 9,900 + 100 at 100 nodes, 999,000 + 1,000 at 1,000 nodes, more than pid_max (32,768 on
 * this machine). It is not attempted above --baseline-max-threads (default 12,000), so an
 * ordinary run never exhausts the machine's pids; it is reported as not buildable.
 * bench/fleet_cap.sh runs this program under a thread cap (a pids cgroup, or an unprivileged
 * user with prlimit --nproc) with --capped: the baseline is then attempted at every size,
 * fails to create its threads and serves a half-built view, and ours keeps working.
 *
 * Output: a table, the ratios baseline / ours, PASS/MISS against the issue's targets
 * (1,000 nodes converge within 1 s at p99, threads constant, <= 256 bytes per known peer)
 * and one JSON line. Figures are medians over --runs (default 3); both designs alternate
 * inside each run.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>

#ifdef SHARDMAP_HAVE_JEMALLOC
#include <jemalloc/jemalloc.h>
#endif

#include "codec.h"
#include "common.h"
#include "map.h"
#include "model.h"
#include "peers.h"

#define MAX_SIZES		8
#define MAX_RUNS		32
#define CONVERGE_DEADLINE_NS	(60ull * 1000000000ull)
#define BROKEN_VIEW_DEADLINE_NS (5ull * 1000000000ull) /* a half-built view never converges */
#define WARMUP_DELTAS		5

struct params {
	unsigned sizes[MAX_SIZES];
	unsigned n_sizes;
	unsigned deltas;
	unsigned interval_ms;
	unsigned fanout;
	unsigned pool_threads;
	unsigned long baseline_max_threads;
	int capped;
	int skip_baseline, skip_ours;
	const char *key; /* shared HMAC key for ours, NULL = none */
};

/* ---------------------------------------------------------------- the process */

static long count_dir(const char *path)
{
	DIR *d = opendir(path);
	long n = 0;
	if (d == NULL)
		return -1;
	for (struct dirent *e; (e = readdir(d)) != NULL;)
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

static long threads_now(void)
{
	return count_dir("/proc/self/task");
}

static long sockets_now(void)
{
	DIR *d = opendir("/proc/self/fd");
	long n = 0;
	char path[300], link[64];
	if (d == NULL)
		return -1;
	for (struct dirent *e; (e = readdir(d)) != NULL;) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
		ssize_t len = readlink(path, link, sizeof link - 1);
		if (len > 0) {
			link[len] = '\0';
			n += strncmp(link, "socket:", 7) == 0;
		}
	}
	closedir(d);
	return n;
}

static uint64_t rss_bytes(void)
{
	unsigned long size = 0, resident = 0;
	FILE *f = fopen("/proc/self/statm", "r");
	if (f != NULL) {
		if (fscanf(f, "%lu %lu", &size, &resident) != 2)
			resident = 0;
		fclose(f);
	}
	return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* Bytes the allocator has handed out (jemalloc's stats.allocated; mallinfo2 otherwise): the
 * exact heap cost of what we allocate, where resident memory also shows reuse and slack. */
static uint64_t heap_bytes(void)
{
#ifdef SHARDMAP_HAVE_JEMALLOC
	uint64_t epoch = 1;
	size_t allocated = 0, len = sizeof epoch;
	if (mallctl("epoch", &epoch, &len, &epoch, len) != 0)
		return 0;
	len = sizeof allocated;
	if (mallctl("stats.allocated", &allocated, &len, NULL, 0) != 0)
		return 0;
	return allocated;
#else
	struct mallinfo2 mi = mallinfo2();
	return mi.uordblks + mi.hblkhd;
#endif
}

/* ---------------------------------------------------------------- convergence tracking */

/* Every map of the fleet has this observer: it counts the nodes that published target. */
static struct tracker {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint64_t target;
	size_t reached, n, n90;
	uint64_t last_ns, t90_ns; /* when the last node, and 90% of them, published target */
} trk = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 0, 0};

static void on_publish(void *ctx, const struct shardmap__version *v, const shardmap_delta *d)
{
	pthread_mutex_lock(&trk.lock);
	if (v->version == trk.target) {
		trk.reached++;
		if (trk.reached == trk.n90)
			trk.t90_ns = bench_now_ns();
		if (trk.reached == trk.n) {
			trk.last_ns = bench_now_ns();
			pthread_cond_broadcast(&trk.cond);
		}
	}
	pthread_mutex_unlock(&trk.lock);
}

static void track(uint64_t target, size_t n)
{
	pthread_mutex_lock(&trk.lock);
	trk.target = target;
	trk.reached = 0;
	trk.n = n;
	trk.n90 = (n * 90 + 99) / 100;
	trk.last_ns = trk.t90_ns = 0;
	pthread_mutex_unlock(&trk.lock);
}

/* Wait until every node published the target. Returns the time the last one did, 0 on
 * timeout (*reached gets how many made it, *t90 when 90% had). */
static uint64_t wait_converged(uint64_t deadline_ns, size_t *reached, uint64_t *t90)
{
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	uint64_t left = deadline_ns - bench_now_ns();
	dl.tv_sec += (time_t)(left / 1000000000u);
	dl.tv_nsec += (long)(left % 1000000000u);
	if (dl.tv_nsec >= 1000000000L) {
		dl.tv_sec++;
		dl.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&trk.lock);
	while (trk.reached < trk.n) {
		if (pthread_cond_timedwait(&trk.cond, &trk.lock, &dl) != 0)
			break;
	}
	uint64_t t = trk.reached == trk.n ? trk.last_ns : 0;
	*reached = trk.reached;
	*t90 = trk.t90_ns;
	pthread_mutex_unlock(&trk.lock);
	return t;
}

/* ---------------------------------------------------------------- deltas */

static shardmap_delta *base_delta(void)
{
	shardmap_delta *d;
	bench_check_rc(shardmap_delta_new(0, 1, &d), "delta_new");
	const char *ep[] = {"cell-a:9000"};
	bench_check_rc(shardmap_delta_put_cell(d, "cell-a", ep, 1), "put_cell");
	bench_check_rc(shardmap_delta_put_cell(d, "cell-b", ep, 1), "put_cell");
	bench_check_rc(shardmap_delta_put_stream(d, "orders", SHARDMAP_HASH_XXH3), "put_stream");
	shardmap_shard s = {.id = "shardId-000000000000",
			    .start = {0, 0},
			    .end = {UINT64_MAX, UINT64_MAX},
			    .open = 1,
			    .owner_cell = "cell-a"};
	bench_check_rc(shardmap_delta_put_shard(d, "orders", &s), "put_shard");
	return d;
}

/* v -> v+1: the stream's shard moves between the two cells (a typical one-op update). */
static shardmap_delta *move_delta(uint64_t v)
{
	shardmap_delta *d;
	bench_check_rc(shardmap_delta_new(v, v + 1, &d), "delta_new");
	shardmap_shard s = {.id = "shardId-000000000000",
			    .start = {0, 0},
			    .end = {UINT64_MAX, UINT64_MAX},
			    .open = 1,
			    .owner_cell = v % 2 ? "cell-b" : "cell-a"};
	bench_check_rc(shardmap_delta_put_shard(d, "orders", &s), "put_shard");
	return d;
}

static shardmap *map_new(struct shardmap__observer *obs)
{
	shardmap_options mo;
	shardmap_options_init(&mo);
	mo.use_arena = 0; /* a thousand maps: one arena each would dwarf what we measure */
	shardmap *m;
	bench_check_rc(shardmap_open(&m, &mo), "shardmap_open");
	shardmap_delta *d = base_delta();
	bench_map_apply(m, d, "base");
	*obs = (struct shardmap__observer){.on_publish = on_publish};
	shardmap__observer_add(m, obs);
	return m;
}

/* ---------------------------------------------------------------- results */

struct result {
	int attempted;	       /* 0: not buildable under the limits (see note) */
	int view_complete;     /* every node connected to what its design needs */
	size_t nodes_complete; /* nodes with a complete view */
	uint64_t links_up, links_needed;
	int converged;	    /* every delta reached every node */
	size_t min_reached; /* fewest nodes a delta reached */
	double p50_ms, p99_ms, max_ms;
	double p50_90_ms; /* median time until 90% of the nodes had a delta */
	double frames_per_node_delta;
	long threads, sockets; /* added to the process by the fleet */
	double rss_mb;	       /* added resident memory */
	double bytes_per_peer; /* ours: resident growth per known peer */
	double heap_per_peer;  /* ours: allocator growth per known peer */
	char note[160];
};

static void latency_summary(uint64_t *lat, uint64_t *lat90, size_t n, struct result *r)
{
	qsort(lat90, n, sizeof *lat90, bench_cmp_u64);
	r->p50_90_ms = (double)bench_percentile_sorted(lat90, n, 50) / 1e6;
	qsort(lat, n, sizeof *lat, bench_cmp_u64);
	r->p50_ms = (double)bench_percentile_sorted(lat, n, 50) / 1e6;
	r->p99_ms = (double)bench_percentile_sorted(lat, n, 99) / 1e6;
	r->max_ms = n ? (double)lat[n - 1] / 1e6 : 0;
}

/* Apply deltas at random nodes one after the other; each must reach all n nodes. */
static void run_deltas(shardmap **maps, size_t n, unsigned count, uint64_t deadline_ns, uint64_t *v,
		       uint64_t *rng, uint64_t *lat, uint64_t *lat90, struct result *r,
		       void (*after_apply)(void *ctx, size_t origin, const shardmap_delta *d),
		       void *ctx)
{
	r->converged = 1;
	r->min_reached = n;
	for (unsigned k = 0; k < count; k++) {
		size_t origin = bench_rand_below(rng, n);
		shardmap_delta *d = move_delta(*v);
		track(*v + 1, n);
		uint64_t t0 = bench_now_ns();
		shardmap_error why;
		int rc = shardmap_apply(maps[origin], d, &why);
		if (rc != SHARDMAP_OK)
			bench_die("apply at node %zu: %s (%s)", origin, shardmap_strerror(rc),
				  why.message);
		if (after_apply)
			after_apply(ctx, origin, d);
		shardmap_delta_free(d);
		size_t reached = 0;
		uint64_t t90 = 0;
		uint64_t t1 = wait_converged(t0 + deadline_ns, &reached, &t90);
		if (lat90)
			lat90[k] = t90 ? t90 - t0 : deadline_ns;
		if (reached < r->min_reached)
			r->min_reached = reached;
		if (t1 == 0) {
			r->converged = 0;
			/* the fleet is split: the next delta can only follow where this one went,
			 * so stop here and report what we saw */
			if (lat)
				lat[k] = deadline_ns;
			(*v)++;
			return;
		}
		if (lat)
			lat[k] = t1 - t0;
		(*v)++;
	}
}

/* ---------------------------------------------------------------- ours */

struct fnode {
	shardmap *m;
	shardmap_peers *ps;
	struct shardmap__observer obs;
};

static uint64_t fleet_frames_out(struct fnode *f, size_t n)
{
	uint64_t sum = 0;
	for (size_t i = 0; i < n; i++) {
		shardmap_stats s;
		shardmap_stats_get(f[i].m, &s);
		sum += s.frames_out;
	}
	return sum;
}

static void run_ours(const struct params *pa, unsigned n, uint64_t seed, struct result *r)
{
	memset(r, 0, sizeof *r);
	r->attempted = 1;
	long threads0 = threads_now(), sockets0 = sockets_now();
	uint64_t rss0 = rss_bytes(), rng = seed;
	shardmap_pool *pool;
	bench_check_rc(shardmap_pool_open(pa->pool_threads, &pool), "pool_open");
	struct fnode *f = bench_xcalloc(n, sizeof *f);
	shardmap **maps = bench_xcalloc(n, sizeof *maps);
	shardmap_peers_options o;
	shardmap_peers_options_init(&o);
	o.interval_ms = pa->interval_ms;
	o.fanout = pa->fanout;
	if (pa->key != NULL) {
		o.key = pa->key;
		o.key_len = strlen(pa->key);
	}
	for (unsigned i = 0; i < n; i++) {
		f[i].m = maps[i] = map_new(&f[i].obs);
		bench_check_rc(shardmap_peers_start(f[i].m, pool, &o, &f[i].ps), "peers_start");
	}
	/* memory per known peer: what learning every address adds */
	uint64_t rss_nodes = rss_bytes(), heap_nodes = heap_bytes();
	for (unsigned i = 0; i < n; i++)
		for (unsigned j = 0; j < n; j++)
			if (i != j)
				bench_check_rc(
				    shardmap_peers_add(f[i].ps, shardmap_peers_address(f[j].ps)),
				    "peers_add");
	uint64_t rss_peers = rss_bytes(), heap_peers = heap_bytes();
	r->bytes_per_peer = ((double)rss_peers - (double)rss_nodes) / ((double)n * (n - 1));
	r->heap_per_peer = ((double)heap_peers - (double)heap_nodes) / ((double)n * (n - 1));
	r->links_needed = (uint64_t)n * (n - 1);
	r->links_up = r->links_needed; /* ours needs no link per peer: every address is known */
	r->nodes_complete = n;
	r->view_complete = 1;

	uint64_t v = 1;
	struct result warm = {0};
	run_deltas(maps, n, WARMUP_DELTAS, CONVERGE_DEADLINE_NS, &v, &rng, NULL, NULL, &warm, NULL,
		   NULL);
	uint64_t *lat = bench_xcalloc(pa->deltas, sizeof *lat);
	uint64_t *lat90 = bench_xcalloc(pa->deltas, sizeof *lat90);
	uint64_t frames0 = fleet_frames_out(f, n);
	run_deltas(maps, n, pa->deltas, CONVERGE_DEADLINE_NS, &v, &rng, lat, lat90, r, NULL, NULL);
	uint64_t frames1 = fleet_frames_out(f, n);
	r->converged = r->converged && warm.converged;
	latency_summary(lat, lat90, pa->deltas, r);
	r->frames_per_node_delta = (double)(frames1 - frames0) / ((double)n * pa->deltas);
	r->threads = threads_now() - threads0;
	r->sockets = sockets_now() - sockets0;
	r->rss_mb = ((double)rss_bytes() - (double)rss0) / 1048576.0;
	shardmap_stats st;
	shardmap_stats_get(f[0].m, &st);
	if (st.threads != pa->pool_threads)
		bench_die("stats report %llu threads, the pool has %u",
			  (unsigned long long)st.threads, pa->pool_threads);

	for (unsigned i = 0; i < n; i++) {
		shardmap_peers_stop(f[i].ps);
		shardmap__observer_remove(f[i].m, &f[i].obs);
		shardmap_close(f[i].m);
	}
	shardmap_pool_close(pool);
	free(lat);
	free(lat90);
	free(maps);
	free(f);
}

/* ---------------------------------------------------------------- the baseline */

/* One node of the design we replace: an acceptor thread and a thread per peer connection,
 * each blocked in read() on its socket, applying what arrives. Updates are written by the
 * origin to every peer's socket. */
struct bnode;

struct blink {
	struct bnode *node;
	int fd;
	pthread_t thread;
	pthread_mutex_t wlock;
	struct blink *next;
};

struct bnode {
	unsigned index;
	shardmap *m;
	struct shardmap__observer obs;
	int lfd;
	uint16_t port;
	pthread_t acceptor;
	int acceptor_up;
	pthread_mutex_t lock;
	struct blink *links; /* under lock */
	unsigned links_up, links_failed;
};

static _Atomic unsigned long baseline_thread_failures;

static int read_full(int fd, void *buf, size_t len)
{
	uint8_t *p = buf;
	while (len > 0) {
		ssize_t n = recv(fd, p, len, 0);
		if (n <= 0) {
			if (n < 0 && errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int write_full_fd(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n <= 0) {
			if (n < 0 && errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int write_full(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n <= 0) {
			if (n < 0 && errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static void *link_main(void *arg)
{
	struct blink *l = arg;
	for (;;) {
		uint32_t len;
		if (read_full(l->fd, &len, sizeof len) != 0 || len > (1u << 24))
			break;
		uint8_t *buf = malloc(len);
		if (buf == NULL || read_full(l->fd, buf, len) != 0) {
			free(buf);
			break;
		}
		shardmap_delta *d = NULL;
		size_t used;
		shardmap_error why;
		if (shardmap__codec_decode(buf, len, &d, &used, &why) == SHARDMAP_OK) {
			shardmap_apply(l->node->m, d, NULL);
			shardmap_delta_free(d);
		}
		free(buf);
	}
	return NULL;
}

/* Give the connection fd its own thread; on failure (the thread limit) the peer is simply
 * missing from this node's view, as in the outage. */
static void link_add(struct bnode *b, int fd)
{
	struct blink *l = bench_xcalloc(1, sizeof *l);
	l->node = b;
	l->fd = fd;
	pthread_mutex_init(&l->wlock, NULL);
	int rc = pthread_create(&l->thread, NULL, link_main, l);
	pthread_mutex_lock(&b->lock);
	if (rc == 0) {
		l->next = b->links;
		b->links = l;
		b->links_up++;
	} else {
		b->links_failed++;
	}
	pthread_mutex_unlock(&b->lock);
	if (rc != 0) {
		atomic_fetch_add(&baseline_thread_failures, 1); /* a counter only */
		close(fd);
		free(l);
	}
}

static void *acceptor_main(void *arg)
{
	struct bnode *b = arg;
	for (;;) {
		int fd = accept4(b->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			    errno == ENOMEM)
				continue;
			break; /* shut down */
		}
		link_add(b, fd);
	}
	return NULL;
}

/* The origin sends the delta to every peer it has a thread for. */
static void baseline_broadcast(void *ctx, size_t origin, const shardmap_delta *d)
{
	struct bnode *nodes = ctx;
	struct bnode *b = &nodes[origin];
	uint8_t *rec;
	size_t len;
	bench_check_rc(shardmap__codec_encode(d, &rec, &len), "codec_encode");
	uint32_t len32 = (uint32_t)len;
	pthread_mutex_lock(&b->lock);
	for (struct blink *l = b->links; l; l = l->next) {
		pthread_mutex_lock(&l->wlock);
		if (write_full(l->fd, &len32, sizeof len32) == 0)
			write_full(l->fd, rec, len);
		pthread_mutex_unlock(&l->wlock);
	}
	pthread_mutex_unlock(&b->lock);
	free(rec);
}

static void run_baseline(const struct params *pa, unsigned n, uint64_t seed, struct result *r)
{
	memset(r, 0, sizeof *r);
	unsigned long needed = (unsigned long)n * (n - 1) + n;
	r->links_needed = (uint64_t)n * (n - 1);
	if (!pa->capped && needed > pa->baseline_max_threads) {
		long pid_max = 0;
		FILE *pm = fopen("/proc/sys/kernel/pid_max", "r");
		if (pm != NULL) {
			if (fscanf(pm, "%ld", &pid_max) != 1)
				pid_max = 0;
			fclose(pm);
		}
		snprintf(r->note, sizeof r->note,
			 "not attempted: needs %lu threads (limit %lu, pid_max %ld)", needed,
			 pa->baseline_max_threads, pid_max);
		return;
	}
	r->attempted = 1;
	long threads0 = threads_now(), sockets0 = sockets_now();
	uint64_t rss0 = rss_bytes(), rng = seed;
	atomic_store(&baseline_thread_failures, 0);
	struct bnode *b = bench_xcalloc(n, sizeof *b);
	shardmap **maps = bench_xcalloc(n, sizeof *maps);
	for (unsigned i = 0; i < n; i++) {
		b[i].index = i;
		b[i].m = maps[i] = map_new(&b[i].obs);
		pthread_mutex_init(&b[i].lock, NULL);
		b[i].lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		struct sockaddr_in sa = {.sin_family = AF_INET};
		inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
		socklen_t sl = sizeof sa;
		if (b[i].lfd < 0 || bind(b[i].lfd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
		    listen(b[i].lfd, 4096) != 0 ||
		    getsockname(b[i].lfd, (struct sockaddr *)&sa, &sl) != 0)
			bench_die("baseline listen: %s", strerror(errno));
		b[i].port = ntohs(sa.sin_port);
		b[i].acceptor_up = pthread_create(&b[i].acceptor, NULL, acceptor_main, &b[i]) == 0;
		if (!b[i].acceptor_up)
			atomic_fetch_add(&baseline_thread_failures, 1);
	}
	/* everyone to everyone: node i dials every j > i; both ends get a thread */
	for (unsigned i = 0; i < n; i++) {
		for (unsigned j = i + 1; j < n; j++) {
			int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
			struct sockaddr_in sa = {.sin_family = AF_INET,
						 .sin_port = htons(b[j].port)};
			inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
			if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
				if (fd >= 0)
					close(fd);
				for (unsigned e = 0; e < 2; e++) { /* both ends are missing */
					struct bnode *end = e ? &b[j] : &b[i];
					pthread_mutex_lock(&end->lock);
					end->links_failed++;
					pthread_mutex_unlock(&end->lock);
				}
				continue;
			}
			int one = 1;
			setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
			link_add(&b[i], fd);
		}
	}
	/* a node without an acceptor thread never takes its j inbound connections */
	for (unsigned j = 0; j < n; j++) {
		if (!b[j].acceptor_up) {
			pthread_mutex_lock(&b[j].lock);
			b[j].links_failed += j;
			pthread_mutex_unlock(&b[j].lock);
		}
	}
	/* wait (bounded) for the acceptors to take every connection */
	uint64_t end = bench_now_ns() + 20ull * 1000000000ull;
	for (;;) {
		uint64_t accounted = 0;
		for (unsigned i = 0; i < n; i++) {
			pthread_mutex_lock(&b[i].lock);
			accounted += b[i].links_up + b[i].links_failed;
			pthread_mutex_unlock(&b[i].lock);
		}
		if (accounted >= r->links_needed || bench_now_ns() > end)
			break;
		bench_sleep_until_ns(bench_now_ns() + 10000000u); /* pacing a poll, not a sync */
	}
	for (unsigned i = 0; i < n; i++) {
		r->links_up += b[i].links_up;
		r->nodes_complete += b[i].links_up == n - 1;
	}
	r->view_complete = r->nodes_complete == n;
	r->threads = threads_now() - threads0;
	r->sockets = sockets_now() - sockets0;

	uint64_t v = 1;
	struct result warm = {0};
	uint64_t deadline = r->view_complete ? CONVERGE_DEADLINE_NS : BROKEN_VIEW_DEADLINE_NS;
	run_deltas(maps, n, WARMUP_DELTAS, deadline, &v, &rng, NULL, NULL, &warm,
		   baseline_broadcast, b);
	uint64_t *lat = bench_xcalloc(pa->deltas, sizeof *lat);
	uint64_t *lat90 = bench_xcalloc(pa->deltas, sizeof *lat90);
	if (warm.converged) {
		run_deltas(maps, n, pa->deltas, deadline, &v, &rng, lat, lat90, r,
			   baseline_broadcast, b);
		latency_summary(lat, lat90, pa->deltas, r);
	} else {
		r->converged = 0;
		r->min_reached = warm.min_reached;
	}
	/* all-to-all: the origin sends one frame to each peer, nobody forwards */
	r->frames_per_node_delta = (double)(n - 1) / n;
	r->rss_mb = ((double)rss_bytes() - (double)rss0) / 1048576.0;
	unsigned long failures = atomic_load(&baseline_thread_failures);
	if (failures)
		snprintf(r->note, sizeof r->note,
			 "%lu thread creations failed: %zu of %u nodes have a complete view",
			 failures, r->nodes_complete, n);

	for (unsigned i = 0; i < n; i++) {
		shutdown(b[i].lfd, SHUT_RDWR);
		pthread_mutex_lock(&b[i].lock);
		for (struct blink *l = b[i].links; l; l = l->next)
			shutdown(l->fd, SHUT_RDWR);
		pthread_mutex_unlock(&b[i].lock);
	}
	for (unsigned i = 0; i < n; i++) {
		if (b[i].acceptor_up)
			pthread_join(b[i].acceptor, NULL);
		while (b[i].links) {
			struct blink *l = b[i].links;
			b[i].links = l->next;
			pthread_join(l->thread, NULL);
			close(l->fd);
			pthread_mutex_destroy(&l->wlock);
			free(l);
		}
		close(b[i].lfd);
		shardmap__observer_remove(b[i].m, &b[i].obs);
		shardmap_close(b[i].m);
		pthread_mutex_destroy(&b[i].lock);
	}
	free(lat);
	free(lat90);
	free(maps);
	free(b);
}

/* ---------------------------------------------------------------- isolation */

/* Run one design at one size in a child process, so that its threads, sockets and memory
 * are measured from a clean start and nothing it leaves behind (a heap grown by the
 * previous run, threads still exiting) skews the next. The result comes back through a
 * pipe; a child that dies is reported as such. */
static void run_isolated(void (*fn)(const struct params *, unsigned, uint64_t, struct result *),
			 const struct params *pa, unsigned n, uint64_t seed, struct result *r)
{
	int pfd[2];
	memset(r, 0, sizeof *r);
	fflush(NULL);
	if (pipe(pfd) != 0)
		bench_die("pipe: %s", strerror(errno));
	pid_t pid = fork();
	if (pid < 0)
		bench_die("fork: %s", strerror(errno));
	if (pid == 0) {
		close(pfd[0]);
		struct result child;
		fn(pa, n, seed, &child);
		_exit(write_full_fd(pfd[1], &child, sizeof child) == 0 ? 0 : 3);
	}
	close(pfd[1]);
	size_t got = 0;
	while (got < sizeof *r) {
		ssize_t k = read(pfd[0], (char *)r + got, sizeof *r - got);
		if (k <= 0) {
			if (k < 0 && errno == EINTR)
				continue;
			break;
		}
		got += (size_t)k;
	}
	close(pfd[0]);
	int status = 0;
	waitpid(pid, &status, 0);
	if (got != sizeof *r) {
		memset(r, 0, sizeof *r);
		r->attempted = 1;
		snprintf(r->note, sizeof r->note, "the run died (%s %d)",
			 WIFSIGNALED(status) ? "signal" : "exit status",
			 WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
	}
}

/* ---------------------------------------------------------------- driver */

static int parse_extra(void *ctx, const char *arg, const char *val)
{
	struct params *pa = ctx;
	if (strcmp(arg, "--sizes") == 0) {
		if (val == NULL)
			bench_die("--sizes needs a list, e.g. 100,1000");
		pa->n_sizes = 0;
		char buf[256];
		snprintf(buf, sizeof buf, "%s", val);
		for (char *save = NULL, *t = strtok_r(buf, ",", &save); t;
		     t = strtok_r(NULL, ",", &save)) {
			if (pa->n_sizes == MAX_SIZES)
				bench_die("at most %d sizes", MAX_SIZES);
			pa->sizes[pa->n_sizes] = (unsigned)bench_parse_num(arg, t);
			if (pa->sizes[pa->n_sizes] < 2)
				bench_die("a fleet has at least 2 nodes");
			pa->n_sizes++;
		}
		return 1;
	}
	if (strcmp(arg, "--deltas") == 0) {
		pa->deltas = (unsigned)bench_parse_num(arg, val);
		if (pa->deltas == 0)
			bench_die("--deltas must be at least 1");
		return 1;
	}
	if (strcmp(arg, "--interval") == 0) {
		pa->interval_ms = (unsigned)bench_parse_num(arg, val);
		return 1;
	}
	if (strcmp(arg, "--fanout") == 0) {
		pa->fanout = (unsigned)bench_parse_num(arg, val);
		return 1;
	}
	if (strcmp(arg, "--pool-threads") == 0) {
		pa->pool_threads = (unsigned)bench_parse_num(arg, val);
		return 1;
	}
	if (strcmp(arg, "--baseline-max-threads") == 0) {
		pa->baseline_max_threads = bench_parse_num(arg, val);
		return 1;
	}
	if (strcmp(arg, "--key") == 0) {
		if (val == NULL || *val == '\0')
			bench_die("--key needs a secret");
		pa->key = val;
		return 1;
	}
	if (strcmp(arg, "--capped") == 0) {
		pa->capped = 1;
		return 0;
	}
	if (strcmp(arg, "--no-baseline") == 0) {
		pa->skip_baseline = 1;
		return 0;
	}
	if (strcmp(arg, "--no-ours") == 0) {
		pa->skip_ours = 1;
		return 0;
	}
	return -1;
}

static double median_of(const struct result *rs, size_t n, size_t offset)
{
	double v[MAX_RUNS];
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		v[k++] = *(const double *)((const char *)&rs[i] + offset);
	return bench_median(v, k);
}

static long median_long(const struct result *rs, size_t n, size_t offset)
{
	double v[MAX_RUNS];
	for (size_t i = 0; i < n; i++)
		v[i] = (double)*(const long *)((const char *)&rs[i] + offset);
	return (long)bench_median(v, n);
}

/* The median run's figures, with the worst convergence verdict of all runs. */
static struct result summarise(const struct result *rs, size_t n)
{
	struct result s = rs[0];
	if (!s.attempted)
		return s;
	s.p50_ms = median_of(rs, n, offsetof(struct result, p50_ms));
	s.p99_ms = median_of(rs, n, offsetof(struct result, p99_ms));
	s.max_ms = median_of(rs, n, offsetof(struct result, max_ms));
	s.p50_90_ms = median_of(rs, n, offsetof(struct result, p50_90_ms));
	s.frames_per_node_delta = median_of(rs, n, offsetof(struct result, frames_per_node_delta));
	s.rss_mb = median_of(rs, n, offsetof(struct result, rss_mb));
	s.bytes_per_peer = median_of(rs, n, offsetof(struct result, bytes_per_peer));
	s.heap_per_peer = median_of(rs, n, offsetof(struct result, heap_per_peer));
	s.threads = median_long(rs, n, offsetof(struct result, threads));
	s.sockets = median_long(rs, n, offsetof(struct result, sockets));
	for (size_t i = 1; i < n; i++) {
		s.converged &= rs[i].converged;
		s.view_complete &= rs[i].view_complete;
		if (rs[i].min_reached < s.min_reached)
			s.min_reached = rs[i].min_reached;
		if (rs[i].nodes_complete < s.nodes_complete)
			s.nodes_complete = rs[i].nodes_complete;
	}
	return s;
}

static void print_row(const char *design, unsigned n, const struct result *r)
{
	if (!r->attempted) {
		printf("  %-9s %6u  %s\n", design, n, r->note);
		return;
	}
	if (r->converged)
		printf("  %-9s %6u  %7s  %9.1f %9.1f %9.1f  %8.2f  %8ld %8ld %9.1f  %s\n", design,
		       n, "yes", r->p50_ms, r->p99_ms, r->max_ms, r->frames_per_node_delta,
		       r->threads, r->sockets, r->rss_mb, r->note);
	else
		printf("  %-9s %6u  %7s  %9s %9s %9s  %8.2f  %8ld %8ld %9.1f  %s\n", design, n,
		       "NO", "-", "-", "-", r->frames_per_node_delta, r->threads, r->sockets,
		       r->rss_mb, r->note);
	if (!r->converged)
		printf(
		    "  %-9s %6s  a delta reached only %zu of %u nodes; %zu nodes have a complete "
		    "view\n",
		    "", "", r->min_reached, n, r->nodes_complete);
}

static json_t *result_json(const char *design, unsigned n, const struct result *r)
{
	json_t *j = bench_json_or_die(json_object());
	bench_json_str(j, "design", design);
	bench_json_int(j, "nodes", n);
	json_object_set_new(j, "attempted", json_boolean(r->attempted));
	if (r->note[0])
		bench_json_str(j, "note", r->note);
	if (!r->attempted)
		return j;
	json_object_set_new(j, "view_complete", json_boolean(r->view_complete));
	bench_json_int(j, "nodes_with_complete_view", (long long)r->nodes_complete);
	bench_json_int(j, "links_up", (long long)r->links_up);
	bench_json_int(j, "links_needed", (long long)r->links_needed);
	json_object_set_new(j, "converged", json_boolean(r->converged));
	bench_json_int(j, "min_nodes_reached", (long long)r->min_reached);
	bench_json_num(j, "converge_p50_ms", r->p50_ms);
	bench_json_num(j, "converge_p99_ms", r->p99_ms);
	bench_json_num(j, "converge_max_ms", r->max_ms);
	bench_json_num(j, "reach_90pct_p50_ms", r->p50_90_ms);
	bench_json_num(j, "frames_per_node_per_delta", r->frames_per_node_delta);
	bench_json_int(j, "threads", r->threads);
	bench_json_int(j, "sockets", r->sockets);
	bench_json_num(j, "rss_mb", r->rss_mb);
	if (r->bytes_per_peer > 0 || r->heap_per_peer > 0) {
		bench_json_num(j, "bytes_per_known_peer_rss", r->bytes_per_peer);
		bench_json_num(j, "bytes_per_known_peer_heap", r->heap_per_peer);
	}
	return j;
}

int main(int argc, char **argv)
{
	struct params pa = {.deltas = 0,
			    .interval_ms = 1000,
			    .fanout = 3,
			    .pool_threads = 2,
			    .baseline_max_threads = 12000};
	struct bench_opts o;
	bench_parse_args(argc, argv, &o,
			 " [--sizes 100,1000] [--deltas N] [--interval MS] [--fanout N]"
			 " [--pool-threads N] [--baseline-max-threads N] [--key SECRET] [--capped]"
			 " [--no-baseline] [--no-ours]",
			 parse_extra, &pa);
	int runs_given = 0;
	for (int i = 1; i < argc; i++)
		runs_given |= strcmp(argv[i], "--runs") == 0;
	if (!runs_given && !o.quick)
		o.runs = 3;
	if (o.runs > MAX_RUNS)
		bench_die("at most %d runs", MAX_RUNS);
	if (pa.n_sizes == 0) {
		pa.n_sizes = 2;
		pa.sizes[0] = o.quick ? 20 : 100;
		pa.sizes[1] = o.quick ? 50 : 1000;
	}
	if (pa.deltas == 0)
		pa.deltas = o.quick ? 10 : 100;

	/* a 1,000-node fleet has ~11,000 sockets open at once */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}

	json_t *doc = bench_json_new("fleet", &o);
	json_t *params = bench_json_or_die(json_object());
	bench_json_int(params, "deltas", pa.deltas);
	bench_json_int(params, "interval_ms", pa.interval_ms);
	bench_json_int(params, "fanout", pa.fanout);
	bench_json_int(params, "pool_threads", pa.pool_threads);
	bench_json_int(params, "baseline_max_threads", (long long)pa.baseline_max_threads);
	json_object_set_new(params, "capped", json_boolean(pa.capped));
	json_object_set_new(params, "hmac", json_boolean(pa.key != NULL));
	if (getenv("SHARDMAP_CAP_METHOD") != NULL)
		bench_json_str(params, "cap_method", getenv("SHARDMAP_CAP_METHOD"));
	if (getrlimit(RLIMIT_NPROC, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
		bench_json_int(params, "rlimit_nproc", (long long)rl.rlim_cur);
	json_object_set_new(doc, "params", params);
	printf(
	    "# %u deltas per fleet, anti-entropy every %u ms, fanout %u, pool of %u threads%s%s\n",
	    pa.deltas, pa.interval_ms, pa.fanout, pa.pool_threads,
	    pa.key ? ", HMAC-SHA256 on every frame" : "", pa.capped ? ", UNDER A THREAD CAP" : "");

	static struct result ours[MAX_SIZES][MAX_RUNS], base[MAX_SIZES][MAX_RUNS];
	for (unsigned run = 0; run < o.runs; run++) {
		for (unsigned s = 0; s < pa.n_sizes; s++) {
			unsigned n = pa.sizes[s];
			uint64_t seed = o.seed * 1000003u + run * 31u + s;
			/* alternate which design goes first */
			for (int k = 0; k < 2; k++) {
				int do_ours = (k == 0) == (run % 2 == 0);
				if (do_ours && !pa.skip_ours) {
					run_isolated(run_ours, &pa, n, seed, &ours[s][run]);
					fprintf(stderr, "run %u: ours %u nodes p99 %.1f ms\n", run,
						n, ours[s][run].p99_ms);
				} else if (!do_ours && !pa.skip_baseline) {
					run_isolated(run_baseline, &pa, n, seed, &base[s][run]);
					fprintf(stderr, "run %u: baseline %u nodes %s\n", run, n,
						base[s][run].attempted ? "done" : "skipped");
				}
			}
		}
	}

	printf("\n  %-9s %6s  %7s  %9s %9s %9s  %8s  %8s %8s %9s\n", "design", "nodes", "conv",
	       "p50 ms", "p99 ms", "max ms", "fr/n/d", "threads", "sockets", "rss MB");
	struct result so[MAX_SIZES], sb[MAX_SIZES];
	for (unsigned s = 0; s < pa.n_sizes; s++) {
		unsigned n = pa.sizes[s];
		if (!pa.skip_ours) {
			so[s] = summarise(ours[s], o.runs);
			print_row("shardmap", n, &so[s]);
			json_t *j = result_json("shardmap", n, &so[s]);
			bench_json_result(doc, j);
		}
		if (!pa.skip_baseline) {
			sb[s] = summarise(base[s], o.runs);
			print_row("baseline", n, &sb[s]);
			bench_json_result(doc, result_json("thread_per_peer", n, &sb[s]));
		}
	}

	printf("\n");
	int ok = 1;
	if (!pa.skip_ours) {
		for (unsigned s = 0; s < pa.n_sizes; s++)
			printf(
			    "  shardmap %u nodes: 90%% of nodes have a delta after %.1f ms (p50), "
			    "all "
			    "after %.1f ms; per known peer %.0f bytes resident, %.0f allocated\n",
			    pa.sizes[s], so[s].p50_90_ms, so[s].p50_ms, so[s].bytes_per_peer,
			    so[s].heap_per_peer);
		if (!pa.skip_baseline) {
			for (unsigned s = 0; s < pa.n_sizes; s++) {
				if (!sb[s].attempted || !so[s].attempted)
					continue;
				json_t *ratio = bench_json_or_die(json_object());
				bench_json_str(ratio, "ratio", "baseline/shardmap");
				bench_json_int(ratio, "nodes", pa.sizes[s]);
				double tr =
				    so[s].threads ? (double)sb[s].threads / so[s].threads : 0;
				double mr = so[s].rss_mb > 0 && sb[s].rss_mb > 0
						? sb[s].rss_mb / so[s].rss_mb
						: 0;
				double sr =
				    so[s].sockets ? (double)sb[s].sockets / so[s].sockets : 0;
				double pr = so[s].p50_ms > 0 && sb[s].converged && so[s].converged
						? sb[s].p50_ms / so[s].p50_ms
						: -1;
				printf(
				    "  %u nodes, baseline / shardmap: threads x%.0f, memory x%.1f, "
				    "sockets x%.1f, ",
				    pa.sizes[s], tr, mr, sr);
				if (pr >= 0)
					printf("convergence p50 x%.2f\n", pr);
				else
					printf("convergence: the baseline did not converge\n");
				bench_json_num(ratio, "threads", tr);
				bench_json_num(ratio, "memory", mr);
				bench_json_num(ratio, "sockets", sr);
				if (pr >= 0)
					bench_json_num(ratio, "converge_p50", pr);
				bench_json_result(doc, ratio);
			}
		}
		printf("\n");
		unsigned last = pa.n_sizes - 1;
		int big = pa.sizes[last] >= 1000;
		char name[96];
		snprintf(name, sizeof name, "%u nodes converge, p99 (ms)", pa.sizes[last]);
		ok &= bench_target(doc, name, big ? so[last].p99_ms : -1, "<=", 1000, "ms");
		long tmin = so[0].threads, tmax = so[0].threads;
		for (unsigned s = 1; s < pa.n_sizes; s++) {
			tmin = so[s].threads < tmin ? so[s].threads : tmin;
			tmax = so[s].threads > tmax ? so[s].threads : tmax;
		}
		ok &= bench_target(doc, "threads added by the fleet, largest - smallest size",
				   (double)(tmax - tmin), "<=", 0, "");
		ok &= bench_target(doc, "threads added == pool size", (double)tmax,
				   "<=", pa.pool_threads, "");
		double per_peer = so[last].bytes_per_peer > so[last].heap_per_peer
				      ? so[last].bytes_per_peer
				      : so[last].heap_per_peer;
		ok &= bench_target(doc, "memory per known peer, max(resident, allocated) (bytes)",
				   per_peer, "<=", 256, "B");
		int all_converged = 1;
		for (unsigned s = 0; s < pa.n_sizes; s++)
			all_converged &= so[s].converged;
		ok &= bench_target(doc, "every delta reached every node (1 = yes)", all_converged,
				   ">=", 1, "");
	}
	if (pa.capped && !pa.skip_baseline) {
		int failed = 0;
		for (unsigned s = 0; s < pa.n_sizes; s++)
			failed |= !sb[s].view_complete || !sb[s].converged;
		printf("  under the cap the baseline %s\n",
		       failed ? "FAILED to build its view (as in the outage)"
			      : "still built its view: raise the fleet or lower the cap");
		bench_json_num(doc, "capped_baseline_failed", failed);
	}
	int rc = bench_json_emit(doc, &o);
	return rc ? rc : (ok ? 0 : 1);
}
