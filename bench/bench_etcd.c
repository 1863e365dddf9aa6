/*
 * bench_etcd.c - what the etcd store costs: bootstrapping a map of 100,000 shards from etcd,
 * next to the floor of fetching the same keys, and how long a change written to etcd takes
 * to become visible to readers of a following map.
 *
 * Fixture: 16 cells and one stream of N shards (100,000; --quick 10,000) are written under a
 * fresh prefix through shardmap_store_write, in transactions of at most 120 ops (etcd's
 * default --max-txn-ops is 128).
 *
 * Bootstrap, in every run and in rotating order:
 *   shardmap   shardmap_store_open + shardmap_bootstrap into a fresh map (paged range reads
 *              of --page keys pinned to one revision, decode, build, validate, publish)
 *   curl       libcurl fetching the same pages through the same gateway with the same page
 *              size and the same pinned revision, doing nothing with them but find where
 *              the next page starts: the floor of the JSON gateway
 *   etcdctl    `etcdctl get --prefix PREFIX/` (gRPC) into /dev/null
 * Every figure is the median over the runs; the ratio is the median of per-run ratios.
 *
 * Follow latency: a map bootstrapped from the store follows it on a one-thread pool. Each of
 * W writes (1,000; --quick 100) moves a random shard to another cell with one
 * shardmap_store_write; the clock starts before the write and stops when a reader (a read
 * section on the main thread, polling find_shard) sees the new owner. Reported: p50, p99
 * and max of write-to-visible, and for context the p50 of the write's own round trip (etcd's
 * commit, fsync included).
 *
 * etcd: SHARDMAP_TEST_ETCD (scripts/bench starts one); without it the benchmark starts its
 * own member on free loopback ports, or says it is skipped when etcd is not installed.
 */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "common.h"
#include "etcd_json.h"
#include "map.h"
#include "model.h"

#define TXN_OPS 120
#define STREAM "stream-00000"

extern char **environ;

struct params {
	unsigned shards, writes, page;
	const char *prefix; /* --prefix: reuse a fixture left by --keep */
	int keep;           /* --keep: leave the fixture in etcd */
};

static int extra_opt(void *ctx, const char *arg, const char *val)
{
	struct params *p = ctx;
	if (strcmp(arg, "--shards") == 0)
		p->shards = (unsigned)bench_parse_num(arg, val);
	else if (strcmp(arg, "--writes") == 0)
		p->writes = (unsigned)bench_parse_num(arg, val);
	else if (strcmp(arg, "--page") == 0)
		p->page = (unsigned)bench_parse_num(arg, val);
	else if (strcmp(arg, "--prefix") == 0 && val != NULL)
		p->prefix = val;
	else if (strcmp(arg, "--keep") != 0)
		return -1;
	else {
		p->keep = 1;
		return 0;
	}
	return 1;
}

/* ---------------------------------------------------------------- an etcd of our own */

static pid_t own_etcd;
static char own_dir[64];

static int free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t len = sizeof a;
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &len) != 0)
		bench_die("no free port");
	close(fd);
	return ntohs(a.sin_port);
}

static size_t discard(char *p, size_t size, size_t n, void *ctx)
{
	(void)p;
	(void)ctx;
	return size * n;
}

static int etcd_healthy(const char *ep)
{
	char url[96];
	snprintf(url, sizeof url, "http://%s/health", ep);
	CURL *e = curl_easy_init();
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 1000L);
	long code = 0;
	int ok = curl_easy_perform(e) == CURLE_OK &&
	         curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code) == CURLE_OK && code == 200;
	curl_easy_cleanup(e);
	return ok;
}

/* Start an etcd member; returns 0 when etcd is not installed. */
static int start_own_etcd(char *ep, size_t cap)
{
	int cport = free_port(), pport = free_port();
	char curl_url[64], purl[64], init[96], log[96];
	snprintf(own_dir, sizeof own_dir, "/tmp/shardmap-bench-etcd.XXXXXX");
	if (mkdtemp(own_dir) == NULL)
		bench_die("mkdtemp");
	snprintf(curl_url, sizeof curl_url, "http://127.0.0.1:%d", cport);
	snprintf(purl, sizeof purl, "http://127.0.0.1:%d", pport);
	snprintf(init, sizeof init, "b=%s", purl);
	snprintf(log, sizeof log, "%s.log", own_dir);
	char *argv[] = {"etcd", "--name", "b", "--data-dir", own_dir, "--listen-client-urls",
	                curl_url, "--advertise-client-urls", curl_url, "--listen-peer-urls", purl,
	                "--initial-advertise-peer-urls", purl, "--initial-cluster", init, NULL};
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	posix_spawn_file_actions_addopen(&fa, 2, log, O_WRONLY | O_CREAT | O_APPEND, 0644);
	int rc = posix_spawnp(&own_etcd, "etcd", &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (rc != 0)
		return 0;
	snprintf(ep, cap, "127.0.0.1:%d", cport);
	for (int i = 0; i < 300 && !etcd_healthy(ep); i++)
		bench_sleep_until_ns(bench_now_ns() + 100000000u);
	if (!etcd_healthy(ep))
		bench_die("etcd did not come up (log %s)", log);
	return 1;
}

static void stop_own_etcd(void)
{
	if (own_etcd <= 0)
		return;
	kill(own_etcd, SIGTERM);
	waitpid(own_etcd, NULL, 0);
	char cmd[160];
	snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s.log'", own_dir, own_dir);
	if (system(cmd) != 0)
		fprintf(stderr, "bench: could not remove %s\n", own_dir);
}

/* ---------------------------------------------------------------- the fixture */

static uint64_t store_version(shardmap_store *s)
{
	uint64_t v;
	bench_check_rc(shardmap_store_version(s, &v), "shardmap_store_version");
	return v;
}

/* Re-add op to d through the public calls. */
static void copy_op(shardmap_delta *d, const struct shardmap__op *op)
{
	int rc = SHARDMAP_EINVAL;
	if (op->kind == SHARDMAP__OP_PUT_CELL) {
		rc = shardmap_delta_put_cell(d, op->id, (const char *const *)op->endpoints,
		                             op->n_endpoints);
	} else if (op->kind == SHARDMAP__OP_PUT_STREAM) {
		rc = shardmap_delta_put_stream(d, op->stream, op->hash_fn);
	} else if (op->kind == SHARDMAP__OP_PUT_SHARD) {
		shardmap_shard sh = {op->id,         op->start,  op->end,           op->open,
		                     op->owner_cell, op->parent, op->adjacent_parent};
		rc = shardmap_delta_put_shard(d, op->stream, &sh);
	}
	bench_check_rc(rc, "copy op");
}

/* Write the map of bm under s in transactions of TXN_OPS ops. */
static void populate(shardmap_store *s, struct bench_map *bm)
{
	shardmap_delta *all;
	const struct shardmap__version *v = shardmap__pin(bm->m);
	bench_check_rc(shardmap__version_to_delta(v, &all), "version_to_delta");
	shardmap__unpin(bm->m);
	uint64_t ver = 0; /* an empty prefix: version 0 is the one to compare against */
	for (size_t i = 0; i < all->n_ops; i += TXN_OPS) {
		shardmap_delta *d;
		bench_check_rc(shardmap_delta_new(ver, ver + 1, &d), "delta_new");
		for (size_t j = i; j < all->n_ops && j < i + TXN_OPS; j++)
			copy_op(d, &all->ops[j]);
		bench_check_rc(shardmap_store_write(s, d), "shardmap_store_write");
		shardmap_delta_free(d);
		ver = store_version(s);
	}
	shardmap_delta_free(all);
}

/* ---------------------------------------------------------------- the three readers */

static double boot_shardmap(const char *uri, unsigned shards)
{
	shardmap_store *s;
	shardmap *m;
	shardmap_error why;
	bench_check_rc(shardmap_open(&m, NULL), "shardmap_open");
	uint64_t t0 = bench_now_ns();
	bench_check_rc(shardmap_store_open(uri, &s), "shardmap_store_open");
	int rc = shardmap_bootstrap(m, s, &why);
	uint64_t t1 = bench_now_ns();
	if (rc != 0)
		bench_die("bootstrap: %s: %s", shardmap_err_name(rc), why.message);
	shardmap_stats st;
	shardmap_stats_get(m, &st);
	if (st.open_shards != shards)
		bench_die("bootstrap found %" PRIu64 " open shards, expected %u", st.open_shards,
		          shards);
	shardmap_close(m);
	shardmap_store_close(s);
	return (double)(t1 - t0) / 1e9;
}

struct buf {
	char *p;
	size_t len, cap;
};

static size_t collect(char *p, size_t size, size_t n, void *ctx)
{
	struct buf *b = ctx;
	size_t k = size * n;
	if (b->len + k + 1 > b->cap) {
		b->cap = (b->len + k + 1) * 2;
		b->p = realloc(b->p, b->cap);
		if (b->p == NULL)
			bench_die("out of memory");
	}
	memcpy(b->p + b->len, p, k);
	b->len += k;
	b->p[b->len] = '\0';
	return k;
}

/* The same pages as a bootstrap, through libcurl, parsing only where the next page starts. */
static double boot_curl(const char *ep, const char *prefix, unsigned page, unsigned shards)
{
	char url[96], *pk, *pe;
	snprintf(url, sizeof url, "http://%s/v3/kv/range", ep);
	if (shardmap__etcd_prefix_range(prefix, &pk, &pe) != 0)
		bench_die("out of memory");
	struct buf b = {0};
	struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
	uint64_t t0 = bench_now_ns();
	CURL *e = curl_easy_init();
	char *start = strdup(pk), rev[32] = "";
	size_t keys = 0;
	for (;;) {
		char body[1024];
		snprintf(body, sizeof body, "{\"key\":\"%s\",\"range_end\":\"%s\",\"limit\":%u%s%s%s}",
		         start, pe, page, rev[0] ? ",\"revision\":\"" : "", rev, rev[0] ? "\"" : "");
		b.len = 0;
		curl_easy_setopt(e, CURLOPT_URL, url);
		curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, collect);
		curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
		if (curl_easy_perform(e) != CURLE_OK)
			bench_die("curl baseline: request failed");
		if (rev[0] == '\0') { /* pin every following page to the first page's revision */
			char *r = strstr(b.p, "\"revision\":\"");
			if (r == NULL)
				bench_die("curl baseline: no revision");
			snprintf(rev, sizeof rev, "%.*s", (int)strcspn(r + 12, "\""), r + 12);
		}
		for (char *k = b.p; (k = strstr(k, "\"key\":\"")) != NULL; k += 7)
			keys++;
		if (strstr(b.p, "\"more\":true") == NULL)
			break;
		/* the next page starts just past the last key: its bytes plus a NUL */
		char *last = NULL, *k = b.p;
		while ((k = strstr(k, "\"key\":\"")) != NULL)
			last = k += 7;
		char *kb = strndup(last, strcspn(last, "\""));
		char *raw;
		size_t len;
		if (shardmap__b64_decode(kb, &raw, &len) != 0)
			bench_die("curl baseline: bad key");
		free(start);
		start = shardmap__b64_encode(raw, len + 1);
		free(raw);
		free(kb);
	}
	curl_easy_cleanup(e);
	uint64_t t1 = bench_now_ns();
	if (keys < shards)
		bench_die("curl baseline saw %zu keys, expected at least %u", keys, shards);
	curl_slist_free_all(h);
	free(b.p);
	free(start);
	free(pk);
	free(pe);
	return (double)(t1 - t0) / 1e9;
}

static double boot_etcdctl(const char *ep, const char *prefix)
{
	char endpoints[96], dir[300];
	snprintf(endpoints, sizeof endpoints, "--endpoints=http://%s", ep);
	snprintf(dir, sizeof dir, "%s/", prefix);
	char *argv[] = {"etcdctl", endpoints, "get", "--prefix", dir, NULL};
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	setenv("ETCDCTL_API", "3", 1);
	pid_t pid;
	uint64_t t0 = bench_now_ns();
	int rc = posix_spawnp(&pid, "etcdctl", &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (rc != 0)
		return -1; /* not installed */
	int st;
	waitpid(pid, &st, 0);
	uint64_t t1 = bench_now_ns();
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		bench_die("etcdctl get failed");
	return (double)(t1 - t0) / 1e9;
}

/* ---------------------------------------------------------------- follow latency */

static void follow_latency(const char *uri, unsigned shards, unsigned writes, uint64_t seed,
                           json_t *doc)
{
	shardmap_store *s;
	shardmap *m;
	shardmap_pool *pool;
	shardmap_error why;
	bench_check_rc(shardmap_store_open(uri, &s), "shardmap_store_open");
	bench_check_rc(shardmap_open(&m, NULL), "shardmap_open");
	int rc = shardmap_bootstrap(m, s, &why);
	if (rc != 0)
		bench_die("bootstrap: %s", why.message);
	bench_check_rc(shardmap_pool_open(1, &pool), "shardmap_pool_open");
	bench_check_rc(shardmap_follow(m, s, pool), "shardmap_follow");
	shardmap_reader *r;
	bench_check_rc(shardmap_reader_open(m, &r), "shardmap_reader_open");

	uint64_t *lat = bench_xcalloc(writes, sizeof *lat), *ack = bench_xcalloc(writes,
	                                                                          sizeof *ack);
	uint64_t rng = seed;
	for (unsigned i = 0; i < writes; i++) {
		char id[32], owner[16];
		snprintf(id, sizeof id, "shardId-%012u", (unsigned)bench_rand_below(&rng, shards));
		shardmap_read_begin(r);
		shardmap_route rt;
		bench_check_rc(shardmap_find_shard(r, STREAM, id, &rt), "find_shard");
		unsigned cell = (unsigned)atoi(rt.cell_id + 5);
		snprintf(owner, sizeof owner, "cell-%02u", (cell + 1) % BENCH_CELLS);
		shardmap_shard sh = {id, rt.start, rt.end, rt.open, owner, rt.parent,
		                     rt.adjacent_parent};
		uint64_t v = shardmap_version(m);
		shardmap_delta *d;
		bench_check_rc(shardmap_delta_new(v, v + 1, &d), "delta_new");
		bench_check_rc(shardmap_delta_put_shard(d, STREAM, &sh), "put_shard");
		shardmap_read_end(r);

		uint64_t t0 = bench_now_ns();
		bench_check_rc(shardmap_store_write(s, d), "shardmap_store_write");
		uint64_t t_ack = bench_now_ns();
		shardmap_delta_free(d);
		for (;;) {
			shardmap_read_begin(r);
			int seen = shardmap_find_shard(r, STREAM, id, &rt) == 0 &&
			           strcmp(rt.cell_id, owner) == 0;
			shardmap_read_end(r);
			if (seen)
				break;
			if (bench_now_ns() - t0 > 30 * 1000000000ull)
				bench_die("write %u not visible after 30 s", i);
		}
		uint64_t t1 = bench_now_ns();
		lat[i] = t1 - t0;
		ack[i] = t_ack - t0;
	}
	qsort(lat, writes, sizeof *lat, bench_cmp_u64);
	qsort(ack, writes, sizeof *ack, bench_cmp_u64);
	double p50 = (double)bench_percentile_sorted(lat, writes, 50) / 1e6;
	double p99 = (double)bench_percentile_sorted(lat, writes, 99) / 1e6;
	double max = (double)lat[writes - 1] / 1e6;
	double ack50 = (double)bench_percentile_sorted(ack, writes, 50) / 1e6;
	shardmap_stats st;
	shardmap_stats_get(m, &st);
	printf("follow: %u writes: write-to-visible p50 %.2f ms, p99 %.2f ms, max %.2f ms; "
	       "the write's own round trip p50 %.2f ms; store errors %" PRIu64 "\n",
	       writes, p50, p99, max, ack50, st.store_errors);
	json_t *res = bench_json_or_die(json_object());
	bench_json_str(res, "name", "follow_latency");
	bench_json_int(res, "writes", writes);
	bench_json_num(res, "p50_ms", p50);
	bench_json_num(res, "p99_ms", p99);
	bench_json_num(res, "max_ms", max);
	bench_json_num(res, "write_round_trip_p50_ms", ack50);
	bench_json_result(doc, res);
	bench_target(doc, "follow: write to visible, p99", p99, "<=", 50, " ms");
	free(lat);
	free(ack);
	shardmap_reader_close(r);
	shardmap_unfollow(m);
	shardmap_close(m);
	shardmap_pool_close(pool);
	shardmap_store_close(s);
}

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv)
{
	struct bench_opts o;
	struct params p = {0};
	bench_parse_args(argc, argv, &o,
	                 " [--shards N] [--writes N] [--page N] [--keep] [--prefix P]\n"
	                 "  --keep leaves the fixture in etcd and prints its prefix; --prefix P\n"
	                 "  measures a fixture left so (same --shards) instead of writing one\n"
	                 "  needs etcd: SHARDMAP_TEST_ETCD=host:port, or etcd installed",
	                 extra_opt, &p);
	if (p.shards == 0)
		p.shards = o.quick ? 10000 : 100000;
	if (p.writes == 0)
		p.writes = o.quick ? 100 : 1000;
	if (p.page == 0)
		p.page = 10000; /* the store's default */
	curl_global_init(CURL_GLOBAL_DEFAULT);

	char ep[64];
	const char *env = getenv("SHARDMAP_TEST_ETCD");
	if (env != NULL && env[0] != '\0') {
		snprintf(ep, sizeof ep, "%s", env);
	} else if (!start_own_etcd(ep, sizeof ep)) {
		printf("# bench_etcd: skipped: SHARDMAP_TEST_ETCD is unset and etcd is not "
		       "installed\n");
		return 0;
	}

	json_t *doc = bench_json_new("bench_etcd", &o);
	bench_json_int(doc, "shards", p.shards);
	bench_json_int(doc, "writes", p.writes);
	bench_json_int(doc, "page", p.page);
	char prefix[96], uri[256];
	if (p.prefix != NULL)
		snprintf(prefix, sizeof prefix, "%s", p.prefix);
	else
		snprintf(prefix, sizeof prefix, "/shardmap-bench/%d-%" PRIu64, (int)getpid(),
		         bench_now_ns());
	snprintf(uri, sizeof uri, "etcd://%s%s?page=%u", ep, prefix, p.page);

	shardmap_store *s;
	bench_check_rc(shardmap_store_open(uri, &s), "shardmap_store_open");
	if (p.prefix == NULL) {
		struct bench_map bm;
		bench_map_build(&bm, 1, p.shards);
		uint64_t t0 = bench_now_ns();
		populate(s, &bm);
		printf("fixture: %u cells + 1 stream x %u shards under %s written in %.2f s "
		       "(%u-op transactions)\n",
		       BENCH_CELLS, p.shards, prefix, (double)(bench_now_ns() - t0) / 1e9, TXN_OPS);
		bench_map_free(&bm);
	}

	double *a = bench_xcalloc(o.runs, sizeof *a), *b = bench_xcalloc(o.runs, sizeof *b);
	double *c = bench_xcalloc(o.runs, sizeof *c), *ratio = bench_xcalloc(o.runs, sizeof *ratio);
	printf("%-4s %12s %12s %12s %10s\n", "run", "shardmap s", "curl s", "etcdctl s",
	       "shardmap/curl");
	for (unsigned run = 0; run < o.runs; run++) {
		for (unsigned k = 0; k < 3; k++) {
			switch ((run + k) % 3) {
			case 0:
				a[run] = boot_shardmap(uri, p.shards);
				break;
			case 1:
				b[run] = boot_curl(ep, prefix, p.page, p.shards);
				break;
			default:
				c[run] = boot_etcdctl(ep, prefix);
				break;
			}
		}
		ratio[run] = a[run] / b[run];
		printf("%-4u %12.3f %12.3f %12.3f %10.2f\n", run, a[run], b[run], c[run], ratio[run]);
	}
	double ma = bench_median(a, o.runs), mb = bench_median(b, o.runs);
	double mc = bench_median(c, o.runs), mr = bench_median(ratio, o.runs);
	printf("bootstrap of %u shards, page %u (medians): shardmap %.3f s, curl %.3f s, "
	       "etcdctl %.3f s; shardmap/curl %.2fx\n",
	       p.shards, p.page, ma, mb, mc, mr);
	json_t *res = bench_json_or_die(json_object());
	bench_json_str(res, "name", "bootstrap");
	bench_json_num(res, "shardmap_s", ma);
	bench_json_num(res, "curl_s", mb);
	bench_json_num(res, "etcdctl_s", mc);
	bench_json_num(res, "shardmap_over_curl", mr);
	bench_json_result(doc, res);
	bench_target(doc, "bootstrap from etcd / curl fetching the same pages", o.quick ? -1 : mr,
	             "<=", 1.5, "x");

	follow_latency(uri, p.shards, p.writes, o.seed, doc);

	/* leave the shared etcd as we found it */
	char *pk, *pe, url[96], body[512];
	if (!p.keep && p.prefix == NULL && shardmap__etcd_prefix_range(prefix, &pk, &pe) == 0) {
		snprintf(url, sizeof url, "http://%s/v3/kv/deleterange", ep);
		snprintf(body, sizeof body, "{\"key\":\"%s\",\"range_end\":\"%s\"}", pk, pe);
		CURL *e = curl_easy_init();
		curl_easy_setopt(e, CURLOPT_URL, url);
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
		curl_easy_perform(e);
		curl_easy_cleanup(e);
		free(pk);
		free(pe);
	}
	shardmap_store_close(s);
	stop_own_etcd();
	free(a);
	free(b);
	free(c);
	free(ratio);
	return bench_json_emit(doc, &o);
}
