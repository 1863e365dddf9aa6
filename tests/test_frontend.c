/*
 * test_frontend.c - the example front-end and cells end to end, as subprocesses over HTTP:
 * every endpoint with good and bad input, and records sent while the control plane splits,
 * merges and moves shards: every record lands on the cell that owned its shard at the version
 * that routed it, and none is lost.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <shardmap.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proc_util.h"

#define MAX_VERSIONS 32
#define MAX_SHARDS 64

/* What the control plane knows at one version: each shard's owner and state. */
struct known_shard {
	char id[64], owner[32];
	int open;
};
struct history {
	uint64_t version;
	size_t n;
	struct known_shard shards[MAX_SHARDS];
};

static struct env {
	char dir[256], store_uri[300], fe_url[128];
	int port_a, port_b, port_fe;
	pid_t cell_a, cell_b, frontend;
	shardmap *cp; /* the control plane's copy of the map */
	shardmap_store *store;
	struct history hist[MAX_VERSIONS];
	size_t n_hist;
} E;

static int record_shard(void *ctx, const shardmap_route *rt)
{
	struct history *h = ctx;
	cr_assert(h->n < MAX_SHARDS);
	struct known_shard *k = &h->shards[h->n++];
	snprintf(k->id, sizeof k->id, "%s", rt->shard_id);
	snprintf(k->owner, sizeof k->owner, "%s", rt->cell_id);
	k->open = rt->open;
	return 0;
}

/* Apply d to the control plane's map, write it to the store, remember the new version. */
static void write_delta(shardmap_delta *d)
{
	shardmap_error why = {0};
	cr_assert_eq(shardmap_apply(E.cp, d, &why), 0, "apply: %s", why.message);
	cr_assert_eq(shardmap_store_write(E.store, d), 0);
	shardmap_delta_free(d);
	cr_assert(E.n_hist < MAX_VERSIONS);
	struct history *h = &E.hist[E.n_hist++];
	h->version = shardmap_version(E.cp);
	h->n = 0;
	shardmap_reader *r;
	cr_assert_eq(shardmap_reader_open(E.cp, &r), 0);
	shardmap_read_begin(r);
	int rc = shardmap_foreach_shard(r, "orders", record_shard, h);
	shardmap_read_end(r);
	shardmap_reader_close(r);
	cr_assert(rc == 0 || rc == SHARDMAP_ENOENT);
}

static const struct known_shard *known(uint64_t version, const char *shard)
{
	for (size_t i = 0; i < E.n_hist; i++) {
		if (E.hist[i].version != version)
			continue;
		for (size_t j = 0; j < E.hist[i].n; j++)
			if (strcmp(E.hist[i].shards[j].id, shard) == 0)
				return &E.hist[i].shards[j];
	}
	return NULL;
}

static int http_ok(void *url)
{
	struct tp_http res;
	int ok = tp_http("GET", url, NULL, NULL, &res) == 0 && res.status == 200 &&
	         strstr(res.body, "\"ready\"") != NULL;
	tp_http_free(&res);
	return ok;
}

static int cell_up(void *url)
{
	struct tp_http res;
	int ok = tp_http("GET", url, NULL, NULL, &res) == 0 && res.status == 200;
	tp_http_free(&res);
	return ok;
}

static pid_t start_cell(const char *id, int port)
{
	char bin[512], listen[64], log[400];
	snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
	snprintf(log, sizeof log, "%s/%s.log", E.dir, id);
	char *argv[] = {(char *)tp_build_path("examples/cell", bin, sizeof bin), "--id", (char *)id,
	                "--listen", listen, "--store", E.store_uri, NULL};
	pid_t pid = tp_spawn(argv, log);
	cr_assert(pid > 0);
	char url[128];
	snprintf(url, sizeof url, "http://%s/healthz", listen);
	cr_assert(tp_wait_until(cell_up, url, 20000), "cell %s did not come up", id);
	return pid;
}

static void start_frontend(void)
{
	char bin[512], listen[64], data[300], log[400];
	snprintf(listen, sizeof listen, "127.0.0.1:%d", E.port_fe);
	snprintf(data, sizeof data, "%s/fe", E.dir);
	snprintf(log, sizeof log, "%s/frontend.log", E.dir);
	char *argv[] = {(char *)tp_build_path("examples/frontend", bin, sizeof bin), "--store",
	                E.store_uri, "--data-dir", data, "--listen", listen, NULL};
	E.frontend = tp_spawn(argv, log);
	cr_assert(E.frontend > 0);
	snprintf(E.fe_url, sizeof E.fe_url, "http://%s", listen);
}

static void setup(void)
{
	memset(&E, 0, sizeof E);
	cr_assert_not_null(tp_tempdir(E.dir, sizeof E.dir));
	snprintf(E.store_uri, sizeof E.store_uri, "file:%s/store", E.dir);
	E.port_a = tp_free_port();
	E.port_b = tp_free_port();
	E.port_fe = tp_free_port();
	cr_assert_eq(shardmap_open(&E.cp, NULL), 0);
	cr_assert_eq(shardmap_store_open(E.store_uri, &E.store), 0);

	char ea[64], eb[64];
	snprintf(ea, sizeof ea, "127.0.0.1:%d", E.port_a);
	snprintf(eb, sizeof eb, "127.0.0.1:%d", E.port_b);
	const char *eas[] = {ea}, *ebs[] = {eb};
	shardmap_delta *d;
	cr_assert_eq(shardmap_delta_new(0, 1, &d), 0);
	cr_assert_eq(shardmap_delta_put_cell(d, "cell-a", eas, 1), 0);
	cr_assert_eq(shardmap_delta_put_cell(d, "cell-b", ebs, 1), 0);
	write_delta(d);
	const char *owners[] = {"cell-a", "cell-b"};
	cr_assert_eq(shardmap_plan_create_stream(E.cp, "orders", SHARDMAP_HASH_MD5, 4, owners, 2, &d),
	             0);
	write_delta(d);

	E.cell_a = start_cell("cell-a", E.port_a);
	E.cell_b = start_cell("cell-b", E.port_b);
	start_frontend();
	char url[256];
	snprintf(url, sizeof url, "%s/healthz", E.fe_url);
	cr_assert(tp_wait_until(http_ok, url, 20000), "front-end did not become ready");
}

static void teardown(void)
{
	tp_stop(E.frontend);
	tp_stop(E.cell_a);
	tp_stop(E.cell_b);
	shardmap_store_close(E.store);
	shardmap_close(E.cp);
	tp_rmtree(E.dir);
}

/* GET path on the front-end; returns the status, parses the body into *json if asked. */
static long fe_get(const char *path, json_t **json)
{
	char url[512];
	snprintf(url, sizeof url, "%s%s", E.fe_url, path);
	struct tp_http res;
	cr_assert_eq(tp_http("GET", url, NULL, NULL, &res), 0, "GET %s failed", path);
	long status = res.status;
	if (json) {
		*json = json_loads(res.body, 0, NULL);
		cr_assert_not_null(*json, "GET %s: not JSON: %s", path, res.body);
	}
	tp_http_free(&res);
	return status;
}

static long fe_post(const char *path, const char *body, const char *header, json_t **json)
{
	char url[512];
	snprintf(url, sizeof url, "%s%s", E.fe_url, path);
	struct tp_http res;
	cr_assert_eq(tp_http("POST", url, body, header, &res), 0, "POST %s failed", path);
	long status = res.status;
	*json = json_loads(res.body, 0, NULL);
	cr_assert_not_null(*json, "POST %s: not JSON: %s", path, res.body);
	tp_http_free(&res);
	return status;
}

TestSuite(frontend, .init = setup, .fini = teardown, .timeout = 120);

Test(frontend, route_answers_and_rejects_bad_requests)
{
	json_t *j;
	cr_assert_eq(fe_get("/route?stream=orders&key=alice", &j), 200);
	char shard[64];
	cr_assert_not_null(json_string_value(json_object_get(j, "shard")));
	snprintf(shard, sizeof shard, "%s", json_string_value(json_object_get(j, "shard")));
	/* md5("alice") must fall in the answered range, and the range in the map's. */
	shardmap_hash h = shardmap_hash_key(SHARDMAP_HASH_MD5, "alice", 5), s, e;
	cr_assert_eq(shardmap_hash_parse(json_string_value(json_object_get(j, "start")), &s), 0);
	cr_assert_eq(shardmap_hash_parse(json_string_value(json_object_get(j, "end")), &e), 0);
	cr_assert(shardmap_hash_cmp(s, h) <= 0 && shardmap_hash_cmp(h, e) <= 0);
	cr_assert_eq(json_integer_value(json_object_get(j, "version")), 2);
	cr_assert_eq(json_array_size(json_object_get(j, "endpoints")), 1);
	json_decref(j);

	char path[200], dec[SHARDMAP_HASH_DECIMAL_MAX];
	shardmap_hash_format(h, dec);
	snprintf(path, sizeof path, "/route?stream=orders&hash=%s", dec);
	cr_assert_eq(fe_get(path, &j), 200);
	cr_assert_str_eq(json_string_value(json_object_get(j, "shard")), shard);
	json_decref(j);

	cr_assert_eq(fe_get("/route?key=alice", &j), 400);
	json_decref(j);
	cr_assert_eq(fe_get("/route?stream=orders", &j), 400);
	json_decref(j);
	cr_assert_eq(fe_get("/route?stream=orders&key=a&hash=1", &j), 400);
	json_decref(j);
	cr_assert_eq(fe_get("/route?stream=orders&hash=-1", &j), 400);
	cr_assert_not_null(strstr(json_string_value(json_object_get(j, "error")), "hash"));
	json_decref(j);
	cr_assert_eq(fe_get("/route?stream=orders&hash=340282366920938463463374607431768211456",
	                    &j), 400);
	json_decref(j);
	cr_assert_eq(fe_get("/route?stream=nosuch&key=a", &j), 404);
	json_decref(j);
	cr_assert_eq(fe_post("/streams/orders/nosuch", "x", NULL, &j), 404);
	json_decref(j);
	cr_assert_eq(fe_get("/streams/orders/records", &j), 405);
	json_decref(j);
	cr_assert_eq(fe_get("/nosuch", &j), 404);
	json_decref(j);
}

/* POST /route: a PutRecords-shaped batch routed by one shardmap_route_keys call. */
Test(frontend, batch_route_answers_as_single_routes)
{
	shardmap_hash h = shardmap_hash_key(SHARDMAP_HASH_MD5, "carol", 5);
	char dec[SHARDMAP_HASH_DECIMAL_MAX], body[512];
	shardmap_hash_format(h, dec);
	snprintf(body, sizeof body,
	         "{\"stream\": \"orders\", \"records\": [{\"key\": \"alice\"}, "
	         "{\"key\": \"bob\"}, {\"hash\": \"%s\"}, {\"key\": \"\"}]}", dec);
	json_t *j, *one;
	cr_assert_eq(fe_post("/route", body, NULL, &j), 200);
	json_t *routes = json_object_get(j, "routes");
	cr_assert_eq(json_array_size(routes), 4);
	cr_assert_eq(json_integer_value(json_object_get(j, "version")), 2);
	const char *paths[] = {"/route?stream=orders&key=alice", "/route?stream=orders&key=bob",
	                       "/route?stream=orders&key=carol", "/route?stream=orders&key="};
	for (size_t i = 0; i < 4; i++) {
		cr_assert_eq(fe_get(paths[i], &one), 200);
		json_t *rt = json_array_get(routes, i);
		cr_assert_str_eq(json_string_value(json_object_get(rt, "shard")),
		                 json_string_value(json_object_get(one, "shard")),
		                 "record %zu routes as %s", i, paths[i]);
		cr_assert_str_eq(json_string_value(json_object_get(rt, "cell")),
		                 json_string_value(json_object_get(one, "cell")));
		json_decref(one);
	}
	json_decref(j);
}

Test(frontend, batch_route_rejects_bad_batches)
{
	static const struct {
		const char *body;
		long status;
		const char *says;
	} cases[] = {
	    {"x", 400, "not JSON"},
	    {"", 400, "not JSON"},
	    {"{\"records\": [{\"key\": \"a\"}]}", 400, "stream"},
	    {"{\"stream\": \"orders\"}", 400, "1 to 500"},
	    {"{\"stream\": \"orders\", \"records\": []}", 400, "1 to 500"},
	    {"{\"stream\": \"orders\", \"records\": {}}", 400, "1 to 500"},
	    {"{\"stream\": \"orders\", \"records\": [{\"key\": \"a\"}, {\"key\": \"b\", "
	     "\"hash\": \"1\"}]}",
	     400, "record 1"},
	    {"{\"stream\": \"orders\", \"records\": [{}]}", 400, "record 0"},
	    {"{\"stream\": \"orders\", \"records\": [{\"key\": 7}]}", 400, "record 0"},
	    {"{\"stream\": \"orders\", \"records\": [\"a\"]}", 400, "record 0"},
	    {"{\"stream\": \"orders\", \"records\": [{\"hash\": \"-1\"}]}", 400,
	     "record 0: hash"},
	    {"{\"stream\": \"nosuch\", \"records\": [{\"key\": \"a\"}]}", 404, "nosuch"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		json_t *j;
		cr_assert_eq(fe_post("/route", cases[i].body, NULL, &j), cases[i].status, "case %zu",
		             i);
		json_t *err = json_object_get(j, "error"), *st = json_object_get(j, "stream");
		const char *text = json_string_value(err);
		cr_assert(text != NULL, "case %zu: an error message", i);
		cr_assert(strstr(text, cases[i].says) != NULL ||
		              (st && strstr(json_string_value(st), cases[i].says) != NULL),
		          "case %zu: '%s' should say '%s'", i, text, cases[i].says);
		json_decref(j);
	}
	/* 501 records: one over PutRecords' limit */
	size_t cap = 32 + 501 * 12;
	char *big = malloc(cap);
	cr_assert_not_null(big);
	size_t n = (size_t)snprintf(big, cap, "{\"stream\": \"orders\", \"records\": [");
	for (int i = 0; i < 501; i++)
		n += (size_t)snprintf(big + n, cap - n, "%s{\"key\":\"k\"}", i ? "," : "");
	snprintf(big + n, cap - n, "]}");
	json_t *j;
	cr_assert_eq(fe_post("/route", big, NULL, &j), 400);
	json_decref(j);
	free(big);
}

Test(frontend, shards_healthz_metrics)
{
	json_t *j;
	cr_assert_eq(fe_get("/shards?stream=orders", &j), 200);
	cr_assert_eq(json_array_size(json_object_get(j, "shards")), 4);
	json_decref(j);
	cr_assert_eq(fe_get("/shards?stream=nosuch", &j), 404);
	json_decref(j);
	cr_assert_eq(fe_get("/shards", &j), 400);
	json_decref(j);

	cr_assert_eq(fe_get("/healthz", &j), 200);
	cr_assert_str_eq(json_string_value(json_object_get(j, "status")), "ready");
	json_decref(j);

	char url[256];
	snprintf(url, sizeof url, "%s/metrics", E.fe_url);
	struct tp_http res;
	cr_assert_eq(tp_http("GET", url, NULL, NULL, &res), 0);
	cr_assert_eq(res.status, 200);
	cr_assert_not_null(strstr(res.body, "shardmap_"));
	cr_assert_not_null(strstr(res.body, "frontend_requests_total{endpoint=\"healthz\",code=\"2xx\"}"));
	cr_assert_not_null(strstr(res.body, "frontend_request_seconds_bucket"));
	tp_http_free(&res);
}

Test(frontend, records_bad_input)
{
	json_t *j;
	cr_assert_eq(fe_post("/streams/orders/records", "x", NULL, &j), 400); /* no key */
	json_decref(j);
	cr_assert_eq(fe_post("/streams/nosuch/records?key=k", "x", NULL, &j), 404);
	json_decref(j);
	cr_assert_eq(fe_post("/streams/orders/nothing?key=k", "x", NULL, &j), 404);
	json_decref(j);
	cr_assert_eq(fe_get("/streams/orders/records?key=k", &j), 405);
	json_decref(j);
	cr_assert_eq(fe_post("/streams/orders/records", "x", "X-Partition-Key: k", &j), 200);
	json_decref(j);
}

Test(frontend, cell_down_is_a_clear_502)
{
	tp_stop(E.cell_a);
	tp_stop(E.cell_b);
	E.cell_a = E.cell_b = 0;
	json_t *j;
	cr_assert_eq(fe_post("/streams/orders/records?key=k", "x", NULL, &j), 502);
	cr_assert_not_null(json_object_get(j, "cell"));
	cr_assert_not_null(json_object_get(j, "error"));
	json_decref(j);
}

/* Send one record; check where it went against the control plane's history. */
static void send_and_check(int i, long counts[2])
{
	char path[128], body[64];
	snprintf(path, sizeof path, "/streams/orders/records?key=key-%d", i);
	snprintf(body, sizeof body, "record %d", i);
	json_t *j;
	long status = fe_post(path, body, NULL, &j);
	cr_assert_eq(status, 200, "record %d: HTTP %ld %s", i, status,
	             json_string_value(json_object_get(j, "error")));
	const char *shard = json_string_value(json_object_get(j, "shard"));
	const char *cell = json_string_value(json_object_get(j, "cell"));
	uint64_t version = (uint64_t)json_integer_value(json_object_get(j, "version"));
	const struct known_shard *k = known(version, shard);
	cr_assert_not_null(k, "record %d: shard %s unknown at version %llu", i, shard,
	                   (unsigned long long)version);
	cr_assert(k->open, "record %d routed to closed shard %s", i, shard);
	cr_assert_str_eq(k->owner, cell, "record %d: %s owned by %s at v%llu, went to %s", i, shard,
	                 k->owner, (unsigned long long)version, cell);
	counts[strcmp(cell, "cell-a") == 0 ? 0 : 1]++;
	json_decref(j);
}

static long cell_accepted(int port)
{
	char url[128];
	snprintf(url, sizeof url, "http://127.0.0.1:%d/counts", port);
	struct tp_http res;
	cr_assert_eq(tp_http("GET", url, NULL, NULL, &res), 0);
	json_t *j = json_loads(res.body, 0, NULL);
	cr_assert_not_null(j);
	long n = (long)json_integer_value(json_object_get(j, "accepted"));
	json_decref(j);
	tp_http_free(&res);
	return n;
}

Test(frontend, records_land_on_the_owner_through_split_merge_move)
{
	long counts[2] = {0, 0};
	int i = 0;
	shardmap_delta *d;
	for (; i < 50; i++)
		send_and_check(i, counts);
	shardmap_hash mid = {.hi = UINT64_C(1) << 61, .lo = 0};
	cr_assert_eq(shardmap_plan_split(E.cp, "orders", "shardId-000000000000", mid, &d), 0);
	write_delta(d);
	for (; i < 100; i++)
		send_and_check(i, counts);
	cr_assert_eq(shardmap_plan_merge(E.cp, "orders", "shardId-000000000002",
	                                 "shardId-000000000003", &d), 0);
	write_delta(d);
	for (; i < 150; i++)
		send_and_check(i, counts);
	cr_assert_eq(shardmap_plan_move(E.cp, "orders", "shardId-000000000001", "cell-a", &d), 0);
	write_delta(d);
	for (; i < 200; i++)
		send_and_check(i, counts);
	/* Nothing lost: the cells accepted exactly what the front-end said it delivered. */
	cr_assert_eq(cell_accepted(E.port_a), counts[0]);
	cr_assert_eq(cell_accepted(E.port_b), counts[1]);
	cr_assert_eq(counts[0] + counts[1], 200);
}
