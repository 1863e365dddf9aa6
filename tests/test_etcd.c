/*
 * test_etcd.c - the etcd store against a real etcd on 127.0.0.1: bootstrap, follow (changes
 * written through shardmap_store_write and through etcdctl), consistent bootstrap under
 * writes, racing control planes, compaction, etcd stopped and restarted, failover in a
 * three-member cluster, bad data of every kind, and a storm of stale hints.
 *
 * The shared etcd comes from SHARDMAP_TEST_ETCD (scripts/test starts one); without it the
 * suite starts its own when etcd is installed and skips with a message otherwise. Tests that
 * stop, compact or kill etcd start private members on free ports. Every test uses its own
 * key prefix. Waits are on conditions with generous deadlines, never sleeps.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "etcd_json.h"
#include "etcd_store.h"
#include "map.h"
#include "model.h"
#include "proc_util.h"
#include "shardmap.h"

#define WAIT_MS 30000

/* ---------------------------------------------------------------- etcd processes */

struct etcd_proc {
	pid_t pid;
	int cport, pport;
	char name[16];
	char dir[128];
	char log[160];
};

static char etcd_bin[256];
static char etcdctl_bin[256];
static char shared_etcd[64]; /* host:port of the etcd most tests use */
static struct etcd_proc own_etcd;
/* every member this test process started, killed by the suite's fini even when an
 * assertion ends the test early */
static struct etcd_proc *started[8];
static int n_started;

static int find_bin(const char *name, char *out, size_t cap)
{
	const char *path = getenv("PATH");
	char buf[4096];
	snprintf(buf, sizeof buf, "%s", path ? path : "/usr/bin:/bin");
	for (char *save = NULL, *dir = strtok_r(buf, ":", &save); dir;
	     dir = strtok_r(NULL, ":", &save)) {
		snprintf(out, cap, "%s/%s", dir, name);
		if (access(out, X_OK) == 0)
			return 1;
	}
	return 0;
}

static int healthy(void *ctx)
{
	struct etcd_proc *e = ctx;
	char url[64];
	snprintf(url, sizeof url, "http://127.0.0.1:%d/health", e->cport);
	struct tp_http res;
	int ok = tp_http("GET", url, NULL, NULL, &res) == 0 && res.status == 200 && res.body &&
	         strstr(res.body, "true") != NULL;
	tp_http_free(&res);
	return ok;
}

/* Start argv with stdout and stderr to log. The member dies with this process (even when it
 * crashes, so no member outlives a test run or holds the test runner's pipes open). */
static pid_t spawn_member(char *const argv[], const char *log)
{
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid != 0)
		return pid;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(127); /* the parent died before the line above */
	int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (fd >= 0) {
		dup2(fd, 1);
		dup2(fd, 2);
		close(fd);
	}
	execv(argv[0], argv);
	_exit(127);
}

/* Spawn one member; cluster NULL for a single-member cluster. */
static void etcd_spawn(struct etcd_proc *e, const char *cluster, const char *state)
{
	char curl[64], purl[64], init[512], election[] = "500", hb[] = "50";
	snprintf(curl, sizeof curl, "http://127.0.0.1:%d", e->cport);
	snprintf(purl, sizeof purl, "http://127.0.0.1:%d", e->pport);
	if (cluster == NULL)
		snprintf(init, sizeof init, "%s=%s", e->name, purl);
	else
		snprintf(init, sizeof init, "%s", cluster);
	char token[32];
	snprintf(token, sizeof token, "sm-%d", (int)getpid());
	char *argv[] = {etcd_bin, "--name", e->name, "--data-dir", e->dir,
	                "--listen-client-urls", curl, "--advertise-client-urls", curl,
	                "--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
	                "--initial-cluster", init, "--initial-cluster-state", (char *)state,
	                "--initial-cluster-token", token, "--heartbeat-interval", hb,
	                "--election-timeout", election, NULL};
	e->pid = spawn_member(argv, e->log);
	cr_assert(e->pid > 0, "cannot start %s", etcd_bin);
	int known = 0;
	for (int i = 0; i < n_started; i++)
		known |= started[i] == e;
	if (!known && n_started < 8)
		started[n_started++] = e;
}

static void etcd_start(struct etcd_proc *e, const char *name)
{
	memset(e, 0, sizeof *e);
	snprintf(e->name, sizeof e->name, "%s", name);
	char tmp[128];
	snprintf(e->dir, sizeof e->dir, "%s/data", tp_tempdir(tmp, sizeof tmp));
	snprintf(e->log, sizeof e->log, "%s/etcd.log", tmp);
	e->cport = tp_free_port();
	e->pport = tp_free_port();
	etcd_spawn(e, NULL, "new");
	cr_assert(tp_wait_until(healthy, e, WAIT_MS), "etcd %s did not come up (log %s)", name,
	          e->log);
}

static void etcd_kill(struct etcd_proc *e, int sig)
{
	if (e->pid <= 0)
		return;
	kill(e->pid, sig);
	waitpid(e->pid, NULL, 0);
	e->pid = 0;
}

static void etcd_cleanup(struct etcd_proc *e)
{
	etcd_kill(e, SIGKILL);
	if (e->dir[0]) {
		char *slash = strrchr(e->dir, '/');
		*slash = '\0';
		tp_rmtree(e->dir);
		e->dir[0] = '\0';
	}
}

static void suite_init(void)
{
	if (!find_bin("etcd", etcd_bin, sizeof etcd_bin))
		etcd_bin[0] = '\0';
	if (!find_bin("etcdctl", etcdctl_bin, sizeof etcdctl_bin))
		etcdctl_bin[0] = '\0';
	const char *env = getenv("SHARDMAP_TEST_ETCD");
	if (env != NULL && env[0] != '\0') {
		snprintf(shared_etcd, sizeof shared_etcd, "%s", env);
		return;
	}
	if (etcd_bin[0] == '\0')
		cr_skip_test("SHARDMAP_TEST_ETCD is unset and etcd is not installed "
		             "(apt-get install etcd-server etcd-client): etcd tests skipped");
	etcd_start(&own_etcd, "own");
	snprintf(shared_etcd, sizeof shared_etcd, "127.0.0.1:%d", own_etcd.cport);
}

static void suite_fini(void)
{
	for (int i = 0; i < n_started; i++)
		etcd_cleanup(started[i]);
	n_started = 0;
}

static void need_private_etcd(void)
{
	if (etcd_bin[0] == '\0')
		cr_skip_test("etcd is not installed: this test starts its own members");
}

TestSuite(etcd, .init = suite_init, .fini = suite_fini);

/* ---------------------------------------------------------------- helpers */

/* A key prefix no other test (or run) uses. */
static const char *unique_prefix(const char *test)
{
	static char p[96];
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	snprintf(p, sizeof p, "/shardmap-test/%s-%d-%ld", test, (int)getpid(), (long)ts.tv_nsec);
	return p;
}

static shardmap_store *open_store(const char *endpoints, const char *prefix, const char *opts)
{
	char uri[512];
	snprintf(uri, sizeof uri, "etcd://%s%s%s%s", endpoints, prefix, opts ? "?" : "",
	         opts ? opts : "");
	shardmap_store *s = NULL;
	int rc = shardmap_store_open(uri, &s);
	cr_assert_eq(rc, 0, "open %s: %s", uri, shardmap_strerror(rc));
	return s;
}

static shardmap *new_map(void)
{
	shardmap *m = NULL;
	cr_assert_eq(shardmap_open(&m, NULL), 0);
	return m;
}

static uint64_t store_version(shardmap_store *s)
{
	uint64_t v = 0;
	int rc = shardmap_store_version(s, &v);
	cr_assert_eq(rc, 0, "store version: %s", shardmap_strerror(rc));
	return v;
}

/* Bring a control plane's map to the store's current state. */
static void refresh(shardmap *cp, shardmap_store *s)
{
	shardmap_error why;
	int rc = shardmap_bootstrap(cp, s, &why);
	cr_assert(rc == 0, "bootstrap: %s: %s", shardmap_err_name(rc), why.message);
}

/* Write d (freed), then refresh the control plane. Retries while etcd elects a leader. */
static void write_delta(shardmap_store *s, shardmap *cp, shardmap_delta *d)
{
	int rc;
	for (int i = 0; (rc = shardmap_store_write(s, d)) == SHARDMAP_EIO && i < 20; i++)
		;
	cr_assert_eq(rc, 0, "store write: %s", shardmap_err_name(rc));
	shardmap_delta_free(d);
	refresh(cp, s);
}

static const char *const cells[] = {"cell-a", "cell-b", "cell-c"};

/* Three cells and a stream of n shards, written through the store; cp is refreshed. */
static void setup_stream(shardmap_store *s, shardmap *cp, const char *stream, unsigned n)
{
	shardmap_delta *d;
	uint64_t v = shardmap_version(cp);
	cr_assert_eq(shardmap_delta_new(v, v + 1, &d), 0);
	for (int i = 0; i < 3; i++) {
		char ep[32];
		snprintf(ep, sizeof ep, "10.0.0.%d:700%d", i + 1, i);
		const char *eps[] = {ep};
		cr_assert_eq(shardmap_delta_put_cell(d, cells[i], eps, 1), 0);
	}
	write_delta(s, cp, d);
	cr_assert_eq(shardmap_plan_create_stream(cp, stream, SHARDMAP_HASH_XXH3, n, cells, 2, &d),
	             0, "%s", shardmap_plan_error());
	write_delta(s, cp, d);
}

struct version_wait {
	shardmap *m;
	uint64_t v;
};

static int reached(void *ctx)
{
	struct version_wait *w = ctx;
	return shardmap_version(w->m) >= w->v;
}

static void wait_version(shardmap *m, uint64_t v)
{
	struct version_wait w = {m, v};
	cr_assert(tp_wait_until(reached, &w, WAIT_MS), "map stuck at version %" PRIu64
	          ", waiting for %" PRIu64, shardmap_version(m), v);
}

/* The map's owner of a shard ("" if absent) and whether it is open. */
static void shard_info(shardmap *m, const char *stream, const char *id, char *owner, int *open)
{
	shardmap_reader *r;
	cr_assert_eq(shardmap_reader_open(m, &r), 0);
	shardmap_read_begin(r);
	shardmap_route rt;
	owner[0] = '\0';
	*open = -1;
	if (shardmap_find_shard(r, stream, id, &rt) == 0) {
		snprintf(owner, 64, "%s", rt.cell_id);
		*open = rt.open;
	}
	shardmap_read_end(r);
	shardmap_reader_close(r);
}

struct owner_wait {
	shardmap *m;
	const char *stream, *id, *owner;
};

static int owned(void *ctx)
{
	struct owner_wait *w = ctx;
	char owner[64];
	int open;
	shard_info(w->m, w->stream, w->id, owner, &open);
	return strcmp(owner, w->owner) == 0;
}

/* Wait until the map says shard id of stream is owned by owner. */
static void wait_owner(shardmap *m, const char *stream, const char *id, const char *owner)
{
	struct owner_wait w = {m, stream, id, owner};
	cr_assert(tp_wait_until(owned, &w, WAIT_MS), "%s never moved to %s", id, owner);
}

/* Do two maps hold the same version with the same content? */
static void assert_same(shardmap *a, shardmap *b)
{
	const struct shardmap__version *va = shardmap__pin(a);
	uint64_t ver_a = va ? va->version : 0, dig_a = va ? va->digest : 0;
	uint64_t open_a = va ? va->n_open : 0, closed_a = va ? va->n_closed : 0;
	shardmap__unpin(a);
	const struct shardmap__version *vb = shardmap__pin(b);
	uint64_t ver_b = vb ? vb->version : 0, dig_b = vb ? vb->digest : 0;
	uint64_t open_b = vb ? vb->n_open : 0, closed_b = vb ? vb->n_closed : 0;
	shardmap__unpin(b);
	cr_assert_eq(ver_a, ver_b, "versions differ: %" PRIu64 " vs %" PRIu64, ver_a, ver_b);
	cr_assert_eq(open_a, open_b);
	cr_assert_eq(closed_a, closed_b);
	cr_assert_eq(dig_a, dig_b, "same version, different content");
}

/* A fresh bootstrap of the store must equal the follower. */
static void assert_matches_store(shardmap *follower, shardmap_store *s)
{
	shardmap *fresh = new_map();
	refresh(fresh, s);
	assert_same(follower, fresh);
	shardmap_close(fresh);
}

static uint64_t stat_of(shardmap *m, size_t offset)
{
	shardmap_stats st;
	cr_assert_eq(shardmap_stats_get(m, &st), 0);
	return *(uint64_t *)((char *)&st + offset);
}
#define STAT(m, field) stat_of(m, offsetof(shardmap_stats, field))

/* Threads of this process (/proc/self/status). */
static int process_threads(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	int n = -1;
	while (f != NULL && fgets(line, sizeof line, f) != NULL)
		if (sscanf(line, "Threads: %d", &n) == 1)
			break;
	if (f != NULL)
		fclose(f);
	cr_assert_gt(n, 0);
	return n;
}

/* PUT key = value through the gateway (as an operator's tool would). */
static void raw_put(const char *endpoint, const char *key, const char *value)
{
	char *k = shardmap__b64_encode(key, strlen(key));
	char *v = shardmap__b64_encode(value, strlen(value));
	char url[128], body[4096];
	snprintf(url, sizeof url, "http://%s/v3/kv/put", endpoint);
	snprintf(body, sizeof body, "{\"key\":\"%s\",\"value\":\"%s\"}", k, v);
	struct tp_http res;
	cr_assert_eq(tp_http("POST", url, body, NULL, &res), 0);
	cr_assert_eq(res.status, 200, "put %s: %s", key, res.body);
	tp_http_free(&res);
	free(k);
	free(v);
}

static void raw_delete(const char *endpoint, const char *key)
{
	char *k = shardmap__b64_encode(key, strlen(key));
	char url[128], body[1024];
	snprintf(url, sizeof url, "http://%s/v3/kv/deleterange", endpoint);
	snprintf(body, sizeof body, "{\"key\":\"%s\"}", k);
	struct tp_http res;
	cr_assert_eq(tp_http("POST", url, body, NULL, &res), 0);
	cr_assert_eq(res.status, 200);
	tp_http_free(&res);
	free(k);
}

/* Run etcdctl with args; stdin_text (may be NULL) is fed to it. Returns its exit status. */
static int etcdctl(const char *endpoint, const char *stdin_text, char *const args[])
{
	cr_assert(etcdctl_bin[0], "etcdctl is not installed");
	char cmd[8192];
	int n = snprintf(cmd, sizeof cmd, "ETCDCTL_API=3 %s --endpoints=http://%s", etcdctl_bin,
	                 endpoint);
	for (int i = 0; args[i]; i++) {
		/* single-quote each argument for the shell */
		n += snprintf(cmd + n, sizeof cmd - (size_t)n, " '");
		for (const char *p = args[i]; *p; p++)
			n += *p == '\'' ? snprintf(cmd + n, sizeof cmd - (size_t)n, "'\\''")
			                : snprintf(cmd + n, sizeof cmd - (size_t)n, "%c", *p);
		n += snprintf(cmd + n, sizeof cmd - (size_t)n, "'");
	}
	n += snprintf(cmd + n, sizeof cmd - (size_t)n, " >/dev/null");
	FILE *p = popen(cmd, "w");
	cr_assert(p != NULL);
	if (stdin_text != NULL)
		fputs(stdin_text, p);
	int st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *shard_value(shardmap_hash start, shardmap_hash end, int open, const char *owner,
                         const char *parent)
{
	char a[40], b[40];
	shardmap_hash_format(start, a);
	shardmap_hash_format(end, b);
	static char v[512];
	int n = snprintf(v, sizeof v, "{\"start\":\"%s\",\"end\":\"%s\",\"open\":%s,\"owner_cell\":\"%s\"",
	                 a, b, open ? "true" : "false", owner);
	if (parent)
		n += snprintf(v + n, sizeof v - (size_t)n, ",\"parent\":\"%s\"", parent);
	snprintf(v + n, sizeof v - (size_t)n, "}");
	return v;
}

static shardmap_route route_of(shardmap *m, const char *stream, const char *id,
                               shardmap_hash *start, shardmap_hash *end)
{
	shardmap_reader *r;
	cr_assert_eq(shardmap_reader_open(m, &r), 0);
	shardmap_read_begin(r);
	shardmap_route rt;
	cr_assert_eq(shardmap_find_shard(r, stream, id, &rt), 0, "no shard %s", id);
	*start = rt.start;
	*end = rt.end;
	shardmap_read_end(r);
	shardmap_reader_close(r);
	return rt;
}

/* Plan moving a shard to the next cell after its current owner. */
static shardmap_delta *plan_move_on(shardmap *cp, const char *stream, const char *id)
{
	char owner[64];
	int open;
	shard_info(cp, stream, id, owner, &open);
	const char *to = cells[0];
	for (int i = 0; i < 3; i++)
		if (strcmp(owner, cells[i]) == 0)
			to = cells[(i + 1) % 3];
	shardmap_delta *d = NULL;
	int rc = shardmap_plan_move(cp, stream, id, to, &d);
	cr_assert_eq(rc, 0, "move %s to %s: %s", id, to, shardmap_plan_error());
	return d;
}

/* ---------------------------------------------------------------- store basics */

Test(etcd, bad_uris_are_refused)
{
	const char *bad[] = {
	    "etcd://",                          "etcd:///p",
	    "etcd://127.0.0.1:2379",            "etcd://127.0.0.1:2379/",
	    "etcd://127.0.0.1/p",               "etcd://127.0.0.1:0/p",
	    "etcd://127.0.0.1:99999/p",         "etcd://127.0.0.1:2379,/p",
	    "etcd://127.0.0.1:2379/p?page=0",   "etcd://127.0.0.1:2379/p?color=red",
	    "etcd://127.0.0.1:2379/p?rate=-1",  "etcd://127.0.0.1:2379/p?page=",
	    "etcd://user@127.0.0.1:2379/p",     "etcd://127.0.0.1:2379/a,b",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		shardmap_store *s = NULL;
		cr_expect_eq(shardmap_store_open(bad[i], &s), SHARDMAP_EINVAL, "%s", bad[i]);
		cr_expect_null(s);
	}
	shardmap_store *s = NULL;
	cr_assert_eq(shardmap_store_open("etcd://127.0.0.1:1,127.0.0.1:2/x/y/?page=5&rate=3&burst=2",
	                                 &s),
	             0);
	cr_assert_str_eq(((struct shardmap__etcd *)s)->prefix, "/x/y");
	cr_assert_eq(((struct shardmap__etcd *)s)->n_endpoints, 2);
	cr_assert_eq(shardmap_follow(NULL, s, NULL), SHARDMAP_EINVAL);
	shardmap *m = new_map();
	cr_assert_eq(shardmap_follow(m, s, NULL), SHARDMAP_EINVAL, "etcd needs a pool");
	shardmap_close(m);
	shardmap_store_close(s);
}

Test(etcd, unreachable_store_fails_with_eio)
{
	char uri[64];
	snprintf(uri, sizeof uri, "etcd://127.0.0.1:%d/nobody", tp_free_port());
	shardmap_store *s;
	cr_assert_eq(shardmap_store_open(uri, &s), 0, "open does no I/O");
	uint64_t v;
	cr_assert_eq(shardmap_store_version(s, &v), SHARDMAP_EIO);
	shardmap *m = new_map();
	shardmap_error why;
	cr_assert_eq(shardmap_bootstrap(m, s, &why), SHARDMAP_EIO);
	cr_assert(strstr(why.message, "/nobody") != NULL, "%s", why.message);
	cr_assert_eq(shardmap_version(m), 0);
	shardmap_close(m);
	shardmap_store_close(s);
}

Test(etcd, empty_store_bootstraps_nothing)
{
	shardmap_store *s = open_store(shared_etcd, unique_prefix("empty"), NULL);
	shardmap *m = new_map();
	shardmap_error why;
	cr_assert_eq(shardmap_bootstrap(m, s, &why), SHARDMAP_ENOENT);
	cr_assert_eq(shardmap_version(m), 0);
	shardmap_close(m);
	shardmap_store_close(s);
}

Test(etcd, bootstrap_of_a_written_map)
{
	const char *prefix = unique_prefix("boot");
	shardmap_store *s = open_store(shared_etcd, prefix, "page=3");
	shardmap *cp = new_map();
	setup_stream(s, cp, "orders", 8);
	uint64_t v = store_version(s);
	cr_assert_eq(shardmap_version(cp), v, "the map's version is the store's revision");

	shardmap *m = new_map();
	refresh(m, s);
	cr_assert_eq(shardmap_version(m), v);
	assert_same(m, cp);
	shardmap_reader *r;
	cr_assert_eq(shardmap_reader_open(m, &r), 0);
	shardmap_read_begin(r);
	shardmap_route rt;
	cr_assert_eq(shardmap_route_key(r, "orders", "customer-42", 11, &rt), 0);
	cr_assert(strcmp(rt.cell_id, "cell-a") == 0 || strcmp(rt.cell_id, "cell-b") == 0);
	cr_assert_eq(rt.n_endpoints, 1);
	shardmap_read_end(r);
	shardmap_reader_close(r);

	/* the values are plain JSON an operator can read */
	char key[256];
	snprintf(key, sizeof key, "%s/streams/orders", prefix);
	char *ctl[] = {"get", key, "--print-value-only", NULL};
	if (etcdctl_bin[0])
		cr_assert_eq(etcdctl(shared_etcd, NULL, ctl), 0);
	shardmap_close(m);
	shardmap_close(cp);
	shardmap_store_close(s);
}

Test(etcd, names_with_slashes_round_trip)
{
	shardmap_store *s = open_store(shared_etcd, unique_prefix("slash"), NULL);
	shardmap *cp = new_map();
	shardmap_delta *d;
	cr_assert_eq(shardmap_delta_new(0, 1, &d), 0);
	const char *eps[] = {"h:1"};
	cr_assert_eq(shardmap_delta_put_cell(d, "cell/with%slash", eps, 1), 0);
	write_delta(s, cp, d);
	const char *owner[] = {"cell/with%slash"};
	cr_assert_eq(shardmap_plan_create_stream(cp, "a/b%2F", SHARDMAP_HASH_MD5, 2, owner, 1, &d),
	             0);
	write_delta(s, cp, d);
	char o[64];
	int open;
	shard_info(cp, "a/b%2F", "shardId-000000000001", o, &open);
	cr_assert_str_eq(o, "cell/with%slash");
	shardmap_close(cp);
	shardmap_store_close(s);
}

/* ---------------------------------------------------------------- follow */

Test(etcd, follow_sees_store_writes_and_etcdctl_edits)
{
	const char *prefix = unique_prefix("follow");
	shardmap_store *s = open_store(shared_etcd, prefix, NULL);
	shardmap *cp = new_map();
	setup_stream(s, cp, "orders", 4);

	shardmap_pool *pool;
	cr_assert_eq(shardmap_pool_open(2, &pool), 0);
	shardmap *m = new_map();
	refresh(m, s);
	int threads = process_threads();
	cr_assert_eq(shardmap_follow(m, s, pool), 0);
	cr_assert_eq(shardmap_follow(m, s, pool), SHARDMAP_EBUSY);
	wait_version(m, shardmap_version(m)); /* (the follower is running) */
	cr_assert_eq(process_threads(), threads, "following adds no thread: it runs on the pool");

	char owner[64];
	int open;
	/* split through the store */
	shardmap_hash start, end;
	route_of(cp, "orders", "shardId-000000000000", &start, &end);
	shardmap_hash mid = {start.hi + (end.hi - start.hi) / 2, 0};
	shardmap_delta *d;
	cr_assert_eq(shardmap_plan_split(cp, "orders", "shardId-000000000000", mid, &d), 0, "%s",
	             shardmap_plan_error());
	write_delta(s, cp, d);
	wait_version(m, store_version(s));
	shard_info(m, "orders", "shardId-000000000000", owner, &open);
	cr_assert_eq(open, 0, "the parent closed");
	shard_info(m, "orders", "shardId-000000000004", owner, &open);
	cr_assert_eq(open, 1);
	shard_info(m, "orders", "shardId-000000000005", owner, &open);
	cr_assert_eq(open, 1);

	/* merge the two children back through the store */
	cr_assert_eq(shardmap_plan_merge(cp, "orders", "shardId-000000000004",
	                                 "shardId-000000000005", &d),
	             0, "%s", shardmap_plan_error());
	write_delta(s, cp, d);
	wait_version(m, store_version(s));
	shard_info(m, "orders", "shardId-000000000006", owner, &open);
	cr_assert_eq(open, 1, "the merged child is open");
	shard_info(m, "orders", "shardId-000000000004", owner, &open);
	cr_assert_eq(open, 0);

	/* move through the store */
	cr_assert_eq(shardmap_plan_move(cp, "orders", "shardId-000000000001", "cell-c", &d), 0);
	write_delta(s, cp, d);
	wait_version(m, store_version(s));
	shard_info(m, "orders", "shardId-000000000001", owner, &open);
	cr_assert_str_eq(owner, "cell-c");
	assert_matches_store(m, s);

	if (etcdctl_bin[0] == '\0') {
		cr_log_warn("etcdctl not installed: the etcdctl half is skipped");
	} else {
		/* a move by hand: etcdctl put of one shard key */
		char key[256];
		route_of(m, "orders", "shardId-000000000002", &start, &end);
		snprintf(key, sizeof key, "%s/shards/orders/shardId-000000000002", prefix);
		char *put[] = {"put", key, shard_value(start, end, 1, "cell-c", NULL), NULL};
		cr_assert_eq(etcdctl(shared_etcd, NULL, put), 0);
		/* a hand edit does not touch PREFIX/version: wait for the change itself */
		wait_owner(m, "orders", "shardId-000000000002", "cell-c");

		/* a split by hand: three keys in one etcdctl txn */
		route_of(m, "orders", "shardId-000000000003", &start, &end);
		shardmap_hash at = {start.hi + (end.hi - start.hi) / 2, 0};
		shardmap_hash before = {at.hi - 1, UINT64_MAX};
		char txn[4096], v1[512], v2[512], v3[512];
		/* etcdctl's txn syntax takes double-quoted values with \" inside */
		const char *vals[3] = {shard_value(start, end, 0, "cell-b", NULL), NULL, NULL};
		char *outv[3] = {v1, v2, v3};
		for (int i = 0; i < 3; i++) {
			if (i == 1)
				vals[1] = shard_value(start, before, 1, "cell-a", "shardId-000000000003");
			if (i == 2)
				vals[2] = shard_value(at, end, 1, "cell-b", "shardId-000000000003");
			char *o = outv[i];
			for (const char *p = vals[i]; *p; p++) {
				if (*p == '"')
					*o++ = '\\';
				*o++ = *p;
			}
			*o = '\0';
		}
		snprintf(txn, sizeof txn,
		         "\nput %s/shards/orders/shardId-000000000003 \"%s\"\n"
		         "put %s/shards/orders/shardId-000000000100 \"%s\"\n"
		         "put %s/shards/orders/shardId-000000000101 \"%s\"\n\n\n",
		         prefix, v1, prefix, v2, prefix, v3);
		char *txn_args[] = {"txn", NULL};
		cr_assert_eq(etcdctl(shared_etcd, txn, txn_args), 0);
		wait_owner(m, "orders", "shardId-000000000100", "cell-a");
		shard_info(m, "orders", "shardId-000000000100", owner, &open);
		cr_assert_eq(open, 1);
		shard_info(m, "orders", "shardId-000000000003", owner, &open);
		cr_assert_eq(open, 0);
		assert_matches_store(m, s);
	}
	cr_assert_eq(STAT(m, store_errors), 0);
	cr_assert_gt(STAT(m, store_requests), 0);
	shardmap_unfollow(m);
	shardmap_close(m);
	shardmap_pool_close(pool);
	shardmap_close(cp);
	shardmap_store_close(s);
}

Test(etcd, follow_from_an_empty_map_and_a_deleted_stream)
{
	const char *prefix = unique_prefix("fromzero");
	shardmap_store *s = open_store(shared_etcd, prefix, NULL);
	shardmap *cp = new_map();
	setup_stream(s, cp, "a", 3);
	setup_stream(s, cp, "b", 2);
	shardmap_pool *pool;
	cr_assert_eq(shardmap_pool_open(1, &pool), 0);
	shardmap *m = new_map();
	cr_assert_eq(shardmap_follow(m, s, pool), 0, "a map at version 0 reads a snapshot first");
	wait_version(m, store_version(s));
	assert_matches_store(m, s);
	/* deleting a stream deletes its shard keys in the same transaction */
	shardmap_delta *d;
	uint64_t v = shardmap_version(cp);
	cr_assert_eq(shardmap_delta_new(v, v + 1, &d), 0);
	cr_assert_eq(shardmap_delta_delete_stream(d, "a"), 0);
	write_delta(s, cp, d);
	wait_version(m, store_version(s));
	char owner[64];
	int open;
	shard_info(m, "a", "shardId-000000000000", owner, &open);
	cr_assert_eq(open, -1, "stream a is gone");
	assert_matches_store(m, s);
	cr_assert_eq(STAT(m, store_errors), 0);
	shardmap_unfollow(m);
	shardmap_close(m);
	shardmap_pool_close(pool);
	shardmap_close(cp);
	shardmap_store_close(s);
}

/* ---------------------------------------------------------------- consistency */

struct churn {
	shardmap_store *s;
	shardmap *cp;
	_Atomic int stop;
	_Atomic int writes;
};

static void *churn_main(void *arg)
{
	struct churn *c = arg;
	/* split then merge shard 0's range over and over: coverage changes on every write */
	while (!atomic_load(&c->stop)) {
		shardmap_reader *r;
		if (shardmap_reader_open(c->cp, &r) != 0)
			break;
		shardmap_read_begin(r);
		shardmap_route rt;
		shardmap_hash h = {1, 0};
		int ok = shardmap_route_hash(r, "orders", h, &rt) == 0;
		char id[64], adj_id[64] = "";
		shardmap_hash start = rt.start, end = rt.end;
		snprintf(id, sizeof id, "%s", ok ? rt.shard_id : "");
		shardmap_hash next = {end.hi, end.lo + 1};
		if (end.lo == UINT64_MAX)
			next.hi++, next.lo = 0;
		if (ok && rt.parent != NULL && shardmap_route_hash(r, "orders", next, &rt) == 0 &&
		    rt.parent != NULL && strcmp(rt.parent, id) != 0)
			snprintf(adj_id, sizeof adj_id, "%s", rt.shard_id);
		shardmap_read_end(r);
		shardmap_reader_close(r);
		if (!ok)
			break;
		shardmap_delta *d = NULL;
		int rc;
		if (adj_id[0] != '\0')
			rc = shardmap_plan_merge(c->cp, "orders", id, adj_id, &d);
		else
			rc = shardmap_plan_split(c->cp, "orders", id,
			                         (shardmap_hash){start.hi + (end.hi - start.hi) / 2, 0},
			                         &d);
		if (rc != 0 || shardmap_store_write(c->s, d) != 0) {
			shardmap_delta_free(d);
			break;
		}
		shardmap_delta_free(d);
		if (shardmap_bootstrap(c->cp, c->s, NULL) != 0)
			break;
		atomic_fetch_add(&c->writes, 1);
	}
	return NULL;
}

Test(etcd, bootstrap_is_consistent_while_a_writer_changes_the_map)
{
	const char *prefix = unique_prefix("consistent");
	shardmap_store *s = open_store(shared_etcd, prefix, NULL);
	shardmap *cp = new_map();
	setup_stream(s, cp, "orders", 16);
	/* a second store with tiny pages: a bootstrap spans many requests */
	shardmap_store *paged = open_store(shared_etcd, prefix, "page=2");
	struct churn c = {.s = s, .cp = cp};
	pthread_t t;
	pthread_create(&t, NULL, churn_main, &c);
	int boots = 0, changed_during = 0, rc = 0;
	shardmap_error why;
	while (rc == 0 && (boots < 20 || (atomic_load(&c.writes) < 10 && boots < 200))) {
		shardmap *m = new_map();
		int before = atomic_load(&c.writes);
		rc = shardmap_bootstrap(m, paged, &why);
		changed_during += atomic_load(&c.writes) != before;
		shardmap_close(m);
		boots++;
	}
	atomic_store(&c.stop, 1);
	pthread_join(t, NULL);
	cr_assert_eq(rc, 0, "bootstrap %d refused: %s", boots, why.message);
	cr_assert_gt(atomic_load(&c.writes), 5, "the writer made progress");
	cr_assert_gt(changed_during, 0, "some bootstraps overlapped writes");
	shardmap_store_close(paged);
	shardmap_close(cp);
	shardmap_store_close(s);
}

struct racer {
	shardmap_store *s;
	shardmap_delta *d;
	pthread_barrier_t *go;
	int rc;
};

static void *race_main(void *arg)
{
	struct racer *r = arg;
	pthread_barrier_wait(r->go);
	r->rc = shardmap_store_write(r->s, r->d);
	return NULL;
}

Test(etcd, racing_control_planes_exactly_one_wins)
{
	const char *prefix = unique_prefix("race");
	shardmap_store *s1 = open_store(shared_etcd, prefix, NULL);
	shardmap_store *s2 = open_store(shared_etcd, prefix, NULL);
	shardmap *cp1 = new_map(), *cp2 = new_map();
	setup_stream(s1, cp1, "orders", 4);
	for (int round = 0; round < 20; round++) {
		refresh(cp1, s1);
		refresh(cp2, s2);
		cr_assert_eq(shardmap_version(cp1), shardmap_version(cp2));
		struct racer r[2] = {{.s = s1}, {.s = s2}};
		r[0].d = plan_move_on(cp1, "orders", "shardId-000000000001");
		r[1].d = plan_move_on(cp2, "orders", "shardId-000000000002");
		pthread_barrier_t go;
		pthread_barrier_init(&go, NULL, 2);
		pthread_t t[2];
		for (int i = 0; i < 2; i++) {
			r[i].go = &go;
			pthread_create(&t[i], NULL, race_main, &r[i]);
		}
		for (int i = 0; i < 2; i++)
			pthread_join(t[i], NULL);
		pthread_barrier_destroy(&go);
		int wins = (r[0].rc == 0) + (r[1].rc == 0);
		cr_assert_eq(wins, 1, "round %d: %s / %s", round, shardmap_err_name(r[0].rc),
		             shardmap_err_name(r[1].rc));
		cr_assert(r[0].rc == SHARDMAP_ECONFLICT || r[1].rc == SHARDMAP_ECONFLICT);
		shardmap_delta_free(r[0].d);
		shardmap_delta_free(r[1].d);
	}
	/* a delta planned against an old version loses even without a race */
	shardmap_delta *stale;
	cr_assert_eq(shardmap_plan_move(cp2, "orders", "shardId-000000000003", "cell-c", &stale),
	             0);
	refresh(cp1, s1);
	shardmap_delta *fresh;
	cr_assert_eq(shardmap_plan_move(cp1, "orders", "shardId-000000000003", "cell-a", &fresh),
	             0);
	if (shardmap_version(cp1) != shardmap_version(cp2)) {
		cr_assert_eq(shardmap_store_write(s1, stale), SHARDMAP_ECONFLICT);
	} else {
		cr_assert_eq(shardmap_store_write(s1, fresh), 0);
		cr_assert_eq(shardmap_store_write(s2, stale), SHARDMAP_ECONFLICT);
	}
	shardmap_delta_free(stale);
	shardmap_delta_free(fresh);
	shardmap_close(cp1);
	shardmap_close(cp2);
	shardmap_store_close(s1);
	shardmap_store_close(s2);
}

Test(etcd, deltas_etcd_cannot_take_are_refused)
{
	const char *prefix = unique_prefix("refused");
	shardmap_store *s = open_store(shared_etcd, prefix, NULL);
	shardmap *cp = new_map();
	setup_stream(s, cp, "orders", 2);
	uint64_t v = store_version(s);
	/* deleting a stream and writing one of its shards in one transaction */
	shardmap_delta *d;
	cr_assert_eq(shardmap_delta_new(v, v + 1, &d), 0);
	cr_assert_eq(shardmap_delta_delete_stream(d, "orders"), 0);
	shardmap_shard sh = {.id = "x", .start = {0, 0}, .end = {UINT64_MAX, UINT64_MAX},
	                     .open = 1, .owner_cell = "cell-a"};
	cr_assert_eq(shardmap_delta_put_shard(d, "orders", &sh), 0);
	cr_assert_eq(shardmap_store_write(s, d), SHARDMAP_EINVAL);
	shardmap_delta_free(d);
	/* more ops than etcd takes in one transaction (--max-txn-ops, 128 by default) */
	cr_assert_eq(shardmap_delta_new(v, v + 1, &d), 0);
	for (int i = 0; i < 200; i++) {
		char id[32];
		snprintf(id, sizeof id, "c%d", i);
		const char *eps[] = {"h:1"};
		cr_assert_eq(shardmap_delta_put_cell(d, id, eps, 1), 0);
	}
	cr_assert_eq(shardmap_store_write(s, d), SHARDMAP_EINVAL);
	shardmap_delta_free(d);
	cr_assert_eq(store_version(s), v, "nothing was written");
	shardmap_close(cp);
	shardmap_store_close(s);
}

/* ---------------------------------------------------------------- failures */

static void compact(const char *endpoint, uint64_t rev)
{
	char url[128], body[128];
	snprintf(url, sizeof url, "http://%s/v3/kv/compaction", endpoint);
	snprintf(body, sizeof body, "{\"revision\":\"%" PRIu64 "\",\"physical\":true}", rev);
	struct tp_http res;
	cr_assert_eq(tp_http("POST", url, body, NULL, &res), 0);
	cr_assert_eq(res.status, 200, "compaction: %s", res.body);
	tp_http_free(&res);
}

Test(etcd, compaction_past_the_follower_forces_a_fresh_snapshot)
{
	need_private_etcd();
	static struct etcd_proc e; /* static: the suite fini may clean it up */
	etcd_start(&e, "compact");
	char ep[64];
	snprintf(ep, sizeof ep, "127.0.0.1:%d", e.cport);
	shardmap_store *s = open_store(ep, "/c", NULL);
	shardmap *cp = new_map();
	setup_stream(s, cp, "orders", 4);
	shardmap_pool *pool;
	cr_assert_eq(shardmap_pool_open(1, &pool), 0);
	shardmap *m = new_map();
	refresh(m, s);
	cr_assert_eq(shardmap_follow(m, s, pool), 0);
	/* the follower stops; the store moves on and compacts away what it would need */
	shardmap_unfollow(m);
	uint64_t before = shardmap_version(m);
	for (int i = 0; i < 5; i++) {
		write_delta(s, cp, plan_move_on(cp, "orders", "shardId-000000000001"));
	}
	uint64_t now = store_version(s);
	compact(ep, now);
	cr_assert_eq(shardmap_version(m), before);
	cr_assert_eq(shardmap_follow(m, s, pool), 0);
	wait_version(m, now);
	assert_matches_store(m, s);
	/* and it keeps following after the fresh snapshot */
	shardmap_delta *d;
	cr_assert_eq(shardmap_plan_move(cp, "orders", "shardId-000000000002", "cell-c", &d), 0);
	write_delta(s, cp, d);
	wait_version(m, store_version(s));
	assert_matches_store(m, s);
	shardmap_unfollow(m);
	shardmap_close(m);
	shardmap_pool_close(pool);
	shardmap_close(cp);
	shardmap_store_close(s);
	etcd_cleanup(&e);
}

struct stale_wait {
	shardmap *m;
	uint64_t ns;
};

static int stale_enough(void *ctx)
{
	struct stale_wait *w = ctx;
	return STAT(w->m, stale_ns) >= w->ns && STAT(w->m, store_errors) > 0;
}

Test(etcd, etcd_stopped_and_restarted_while_following)
{
	need_private_etcd();
	static struct etcd_proc e; /* static: the suite fini may clean it up */
	etcd_start(&e, "restart");
	char ep[64];
	snprintf(ep, sizeof ep, "127.0.0.1:%d", e.cport);
	shardmap_store *s = open_store(ep, "/r", NULL);
	shardmap *cp = new_map();
	setup_stream(s, cp, "orders", 4);
	shardmap_pool *pool;
	cr_assert_eq(shardmap_pool_open(1, &pool), 0);
	shardmap *m = new_map();
	refresh(m, s);
	cr_assert_eq(shardmap_follow(m, s, pool), 0);
	uint64_t v = shardmap_version(m);

	etcd_kill(&e, SIGTERM);
	struct stale_wait w = {m, 500u * 1000000u};
	cr_assert(tp_wait_until(stale_enough, &w, WAIT_MS), "stats show the store is gone");
	/* lookups keep answering from the last map */
	shardmap_reader *r;
	cr_assert_eq(shardmap_reader_open(m, &r), 0);
	for (int i = 0; i < 1000; i++) {
		char key[32];
		snprintf(key, sizeof key, "k%d", i);
		shardmap_read_begin(r);
		shardmap_route rt;
		cr_assert_eq(shardmap_route_key(r, "orders", key, strlen(key), &rt), 0);
		cr_assert_eq(rt.version, v);
		shardmap_read_end(r);
	}
	shardmap_reader_close(r);

	etcd_spawn(&e, NULL, "existing");
	cr_assert(tp_wait_until(healthy, &e, WAIT_MS), "etcd came back");
	for (int i = 0; i < 5; i++) {
		write_delta(s, cp, plan_move_on(cp, "orders", "shardId-000000000000"));
	}
	wait_version(m, store_version(s));
	assert_matches_store(m, s);
	cr_assert_lt(STAT(m, stale_ns), 60ull * 1000000000u);
	shardmap_unfollow(m);
	shardmap_close(m);
	shardmap_pool_close(pool);
	shardmap_close(cp);
	shardmap_store_close(s);
	etcd_cleanup(&e);
}

Test(etcd, three_member_cluster_survives_losing_the_followed_member)
{
	need_private_etcd();
	static struct etcd_proc e[3];
	char cluster[512] = "", eps[256] = "";
	for (int i = 0; i < 3; i++) {
		memset(&e[i], 0, sizeof e[i]);
		snprintf(e[i].name, sizeof e[i].name, "m%d", i);
		char tmp[128];
		snprintf(e[i].dir, sizeof e[i].dir, "%s/data", tp_tempdir(tmp, sizeof tmp));
		snprintf(e[i].log, sizeof e[i].log, "%s/etcd.log", tmp);
		e[i].cport = tp_free_port();
		e[i].pport = tp_free_port();
		size_t n = strlen(cluster);
		snprintf(cluster + n, sizeof cluster - n, "%sm%d=http://127.0.0.1:%d", i ? "," : "",
		         i, e[i].pport);
		n = strlen(eps);
		snprintf(eps + n, sizeof eps - n, "%s127.0.0.1:%d", i ? "," : "", e[i].cport);
	}
	for (int i = 0; i < 3; i++)
		etcd_spawn(&e[i], cluster, "new");
	for (int i = 0; i < 3; i++)
		cr_assert(tp_wait_until(healthy, &e[i], WAIT_MS), "member %d is not healthy", i);

	shardmap_store *s = open_store(eps, "/cluster", NULL);
	shardmap *cp = new_map();
	setup_stream(s, cp, "orders", 4);
	shardmap_pool *pool;
	cr_assert_eq(shardmap_pool_open(1, &pool), 0);
	shardmap_store *fs = open_store(eps, "/cluster", NULL);
	shardmap *m = new_map();
	refresh(m, fs);
	cr_assert_eq(shardmap_follow(m, fs, pool), 0);
	shardmap_delta *d;
	cr_assert_eq(shardmap_plan_move(cp, "orders", "shardId-000000000000", "cell-c", &d), 0);
	write_delta(s, cp, d);
	wait_version(m, store_version(s));

	/* the member the follower watches through is the store's preferred endpoint */
	unsigned used = atomic_load(&((struct shardmap__etcd *)fs)->preferred);
	cr_log_info("killing member %u, the one the follower uses", used);
	etcd_kill(&e[used], SIGKILL);
	for (int i = 0; i < 6; i++) {
		write_delta(s, cp, plan_move_on(cp, "orders", "shardId-000000000001"));
	}
	wait_version(m, store_version(s));
	assert_matches_store(m, s);
	cr_assert_neq(atomic_load(&((struct shardmap__etcd *)fs)->preferred), used,
	              "the follower moved to another member");
	shardmap_unfollow(m);
	shardmap_close(m);
	shardmap_store_close(fs);
	shardmap_pool_close(pool);
	shardmap_close(cp);
	shardmap_store_close(s);
	for (int i = 0; i < 3; i++)
		etcd_cleanup(&e[i]);
}

/* ---------------------------------------------------------------- bad data */

struct error_wait {
	shardmap *m;
	uint64_t errors;
};

static int errors_grew(void *ctx)
{
	struct error_wait *w = ctx;
	return STAT(w->m, store_errors) > w->errors;
}

struct bad_case {
	const char *what;
	const char *key;   /* under the prefix */
	const char *value; /* NULL: delete the key */
	int code;          /* what bootstrap answers */
};

static const struct bad_case bad_cases[] = {
    {"invalid JSON", "/shards/orders/shardId-000000000001", "{\"start\":", SHARDMAP_ECORRUPT},
    {"not an object", "/cells/cell-a", "[1,2]", SHARDMAP_ECORRUPT},
    {"missing field", "/shards/orders/shardId-000000000001",
     "{\"start\":\"0\",\"open\":true,\"owner_cell\":\"cell-a\"}", SHARDMAP_ECORRUPT},
    {"unknown field", "/streams/orders", "{\"hash\":\"xxh3\",\"colour\":\"red\"}",
     SHARDMAP_ECORRUPT},
    {"bad hash key", "/shards/orders/shardId-000000000001",
     "{\"start\":\"-5\",\"end\":\"10\",\"open\":true,\"owner_cell\":\"cell-a\"}",
     SHARDMAP_ECORRUPT},
    {"hash key past 2^128-1", "/shards/orders/shardId-000000000001",
     "{\"start\":\"0\",\"end\":\"340282366920938463463374607431768211456\",\"open\":true,"
     "\"owner_cell\":\"cell-a\"}",
     SHARDMAP_ECORRUPT},
    {"unknown hash function", "/streams/orders", "{\"hash\":\"crc32\"}", SHARDMAP_ECORRUPT},
    {"bad endpoint", "/cells/cell-a", "{\"endpoints\":[\"no-port\"]}", SHARDMAP_ECORRUPT},
    {"unknown key layout", "/misc/thing", "{}", SHARDMAP_ECORRUPT},
    {"bad escape in a name", "/cells/bad%zz", "{\"endpoints\":[]}", SHARDMAP_ECORRUPT},
    {"shard of an unknown stream", "/shards/ghost/shardId-000000000001",
     "{\"start\":\"0\",\"end\":\"10\",\"open\":true,\"owner_cell\":\"cell-a\"}",
     SHARDMAP_ECONFLICT},
    {"coverage broken by hand", "/shards/orders/shardId-000000000099",
     "{\"start\":\"5\",\"end\":\"10\",\"open\":true,\"owner_cell\":\"cell-a\"}",
     SHARDMAP_ECONFLICT},
    {"owner cell deleted by hand", "/cells/cell-a", NULL, SHARDMAP_ECONFLICT},
};

Test(etcd, bad_data_is_refused_naming_the_key)
{
	const char *prefix = unique_prefix("bad");
	shardmap_store *s = open_store(shared_etcd, prefix, NULL);
	shardmap *cp = new_map();
	setup_stream(s, cp, "orders", 4);
	shardmap_pool *pool;
	cr_assert_eq(shardmap_pool_open(1, &pool), 0);
	shardmap *follower = new_map();
	refresh(follower, s);
	cr_assert_eq(shardmap_follow(follower, s, pool), 0);

	/* a map that bootstraps again after each bad write */
	shardmap *good = new_map();
	refresh(good, s);
	for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
		const struct bad_case *c = &bad_cases[i];
		char key[256];
		snprintf(key, sizeof key, "%s%s", prefix, c->key);
		/* the previous case's fix must have reached the follower before we count on v */
		wait_version(follower, shardmap_version(good));
		uint64_t v = shardmap_version(follower);
		uint64_t errors = STAT(follower, store_errors);
		/* keep the original of the key to restore it */
		struct tp_http res;
		char url[128], body[512];
		char *kb = shardmap__b64_encode(key, strlen(key));
		snprintf(url, sizeof url, "http://%s/v3/kv/range", shared_etcd);
		snprintf(body, sizeof body, "{\"key\":\"%s\"}", kb);
		free(kb);
		cr_assert_eq(tp_http("POST", url, body, NULL, &res), 0);
		json_t *j = json_loads(res.body, 0, NULL);
		tp_http_free(&res);
		const char *ob = json_string_value(
		    json_object_get(json_array_get(json_object_get(j, "kvs"), 0), "value"));
		char *orig = NULL;
		size_t olen;
		if (ob != NULL)
			cr_assert_eq(shardmap__b64_decode(ob, &orig, &olen), 0);
		json_decref(j);

		if (c->value != NULL)
			raw_put(shared_etcd, key, c->value);
		else
			raw_delete(shared_etcd, key);

		/* bootstrap refuses, naming the key; the map keeps serving its version */
		uint64_t good_version = shardmap_version(good);
		shardmap_error why;
		int rc = shardmap_bootstrap(good, s, &why);
		cr_expect_eq(rc, c->code, "%s: %s (%s)", c->what, shardmap_err_name(rc), why.message);
		if (c->code == SHARDMAP_ECORRUPT || strstr(c->what, "unknown stream"))
			cr_expect(strstr(why.message, c->key + 1) != NULL ||
			              strstr(why.message, key) != NULL,
			          "%s: the message names the key: %s", c->what, why.message);
		cr_log_info("%s: %s", c->what, why.message);
		cr_assert_eq(shardmap_version(good), good_version, "%s: the map keeps serving",
		             c->what);

		/* the watch refuses the revision; the follower keeps its map */
		struct error_wait we = {follower, errors};
		cr_assert(tp_wait_until(errors_grew, &we, WAIT_MS),
		          "%s: the follower counted the refusal", c->what);
		cr_assert_eq(shardmap_version(follower), v, "%s: the follower keeps serving", c->what);

		/* the operator fixes it: everything is good again */
		if (orig != NULL)
			raw_put(shared_etcd, key, orig);
		else
			raw_delete(shared_etcd, key);
		free(orig);
		refresh(good, s);
	}
	/* after the fixes the follower is back in step with the store */
	refresh(cp, s); /* the hand edits moved the store on: plan from its present */
	shardmap_delta *d;
	cr_assert_eq(shardmap_plan_move(cp, "orders", "shardId-000000000003", "cell-c", &d), 0);
	write_delta(s, cp, d);
	wait_version(follower, store_version(s));
	char owner[64];
	int open;
	shard_info(follower, "orders", "shardId-000000000003", owner, &open);
	cr_assert_str_eq(owner, "cell-c");
	shardmap_unfollow(follower);
	shardmap_close(follower);
	shardmap_close(good);
	shardmap_pool_close(pool);
	shardmap_close(cp);
	shardmap_store_close(s);
}

/* ---------------------------------------------------------------- stale hints */

struct storm {
	shardmap *m;
	uint64_t until_ns; /* hint until then */
	_Atomic int *busy, *ok, *sent;
};

static void *storm_main(void *arg)
{
	struct storm *st = arg;
	for (int i = 0; i < 1000 || shardmap__monotonic_ns() < st->until_ns; i++) {
		atomic_fetch_add(st->sent, 1);
		uint64_t seen = shardmap_version(st->m) + 1; /* a back-end claims a newer map */
		int rc = shardmap_hint_stale(st->m, "orders", "shardId-000000000001", seen);
		if (rc == SHARDMAP_EBUSY)
			atomic_fetch_add(st->busy, 1);
		else if (rc == 0)
			atomic_fetch_add(st->ok, 1);
	}
	return NULL;
}

Test(etcd, a_storm_of_stale_hints_costs_a_bounded_number_of_requests)
{
	shardmap_store *s = open_store(shared_etcd, unique_prefix("hints"), NULL);
	shardmap *cp = new_map();
	setup_stream(s, cp, "orders", 4);
	shardmap_pool *pool;
	cr_assert_eq(shardmap_pool_open(2, &pool), 0);
	shardmap_options opt;
	shardmap_options_init(&opt);
	opt.hint_rate = 20;
	opt.hint_burst = 4;
	shardmap *m = NULL;
	cr_assert_eq(shardmap_open(&m, &opt), 0);
	refresh(m, s);
	cr_assert_eq(shardmap_hint_stale(m, "orders", "x", shardmap_version(m)), SHARDMAP_ENOTSUP,
	             "no follower, no catch-up");
	cr_assert_eq(shardmap_hint_stale(NULL, "orders", "x", 1), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_hint_stale(m, NULL, "x", 1), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_follow(m, s, pool), 0);
	cr_assert_eq(shardmap_hint_stale(m, "orders", "x", shardmap_version(m) - 1), SHARDMAP_ESTALE,
	             "the map is already newer");

	uint64_t req0 = STAT(m, store_requests), hints0 = STAT(m, hints);
	uint64_t t0 = shardmap__monotonic_ns();
	enum { THREADS = 8 };
	_Atomic int busy = 0, ok = 0, sent = 0;
	struct storm st[THREADS];
	pthread_t t[THREADS];
	for (int i = 0; i < THREADS; i++) {
		st[i] = (struct storm){m, t0 + 1000000000u, &busy, &ok, &sent};
		pthread_create(&t[i], NULL, storm_main, &st[i]);
	}
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	/* the map still follows after the storm (and every catch-up asked has been served) */
	shardmap_delta *d;
	cr_assert_eq(shardmap_plan_move(cp, "orders", "shardId-000000000001", "cell-c", &d), 0);
	write_delta(s, cp, d);
	wait_version(m, store_version(s));
	double secs = (double)(shardmap__monotonic_ns() - t0) / 1e9;
	uint64_t requests = STAT(m, store_requests) - req0;
	/* each catch-up costs at most one request; heartbeats (one per 5 s of silence) and the
	 * last write's delivery add a couple */
	double bound = opt.hint_burst + opt.hint_rate * secs + 3 + secs / 5;
	cr_log_info("%d hints in %.3f s: %d ok, %d rate-limited, %" PRIu64 " coalesced, "
	            "%" PRIu64 " store requests (bound %.1f)",
	            atomic_load(&sent), secs, atomic_load(&ok), atomic_load(&busy),
	            STAT(m, hints_coalesced), requests, bound);
	cr_assert_gt(atomic_load(&sent), 5000, "a storm: thousands of hints");
	cr_assert_eq(STAT(m, hints) - hints0, (uint64_t)atomic_load(&sent));
	cr_assert_leq((double)requests, bound);
	cr_assert_gt(requests, 0, "the hints did cause catch-ups");
	cr_assert_gt(STAT(m, hints_coalesced), 0);
	cr_assert_eq(STAT(m, hints_dropped), (uint64_t)atomic_load(&busy));
	shardmap_unfollow(m);
	shardmap_close(m);
	shardmap_pool_close(pool);
	shardmap_close(cp);
	shardmap_store_close(s);
}

struct booter {
	shardmap *m;
	shardmap_store *s;
	int rc;
};

static void *boot_main(void *arg)
{
	struct booter *b = arg;
	b->rc = shardmap_bootstrap(b->m, b->s, NULL);
	return NULL;
}

Test(etcd, concurrent_loads_share_one_snapshot)
{
	const char *prefix = unique_prefix("coalesce");
	shardmap_store *s = open_store(shared_etcd, prefix, "page=2");
	shardmap *cp = new_map();
	setup_stream(s, cp, "orders", 32);
	struct shardmap__etcd *e = (struct shardmap__etcd *)s;
	uint64_t joined0 = e->load_flight.joined;
	enum { N = 8 };
	pthread_t t[N];
	struct booter b[N];
	for (int round = 0; round < 20 && e->load_flight.joined == joined0; round++) {
		for (int i = 0; i < N; i++) {
			b[i] = (struct booter){new_map(), s, -1};
			pthread_create(&t[i], NULL, boot_main, &b[i]);
		}
		for (int i = 0; i < N; i++) {
			pthread_join(t[i], NULL);
			cr_assert_eq(b[i].rc, 0);
			assert_same(b[i].m, cp);
			shardmap_close(b[i].m);
		}
	}
	cr_assert_gt(e->load_flight.joined, joined0, "some loads joined another's snapshot");
	shardmap_close(cp);
	shardmap_store_close(s);
}
