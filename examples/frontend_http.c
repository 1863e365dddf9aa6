/*
 * frontend_http.c - the example front-end's HTTP API (libmicrohttpd, fixed thread pool):
 *
 *   GET  /route?stream=S&key=K | &hash=DECIMAL   where a key goes (shard, range, cell, endpoints)
 *   POST /route  {"stream": S, "records": [{"key": K} | {"hash": DECIMAL}, ...]}
 *                                                where each of 1-500 records goes, shaped like
 *                                                a Kinesis PutRecords request; one
 *                                                shardmap_route_keys call routes them all
 *   POST /streams/S/records?key=K                forward the body to the owning cell
 *        (or the partition key in header X-Partition-Key)
 *   GET  /shards?stream=S                        the stream's shards
 *   GET  /healthz                                ready | stale | not ready, with the reason
 *   GET  /metrics                                Prometheus text: the library's and ours
 *   GET  /fixed                                  a constant answer the size of a /route one:
 *                                                the HTTP server's own limit, for
 *                                                bench/bench_frontend.sh (no map lookup)
 *
 * Bad requests get 400 with a JSON error, unknown streams 404, a map not ready 503.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "frontend.h"

#define MAX_BODY (1u << 20)
#define MAX_BATCH 500 /* records in one POST /route: PutRecords' limit */

static const double bucket_bounds[FE_N_BUCKETS - 1] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025,  0.05,    0.1,    0.25,  0.5,    1.0};
static const double lookup_bounds_ns[FE_N_LOOKUP_BUCKETS - 1] = {50,   100,  250,   500,
                                                                    1000, 2500, 10000, 100000};
static const char *const endpoint_names[FE_N] = {"route",   "records", "shards", "healthz",
                                                  "metrics", "fixed",   "other"};

struct request {
	uint64_t start_ns;
	enum fe_endpoint ep;
	unsigned status;
	struct ex_body body;
};

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Count n lookups that took ns together into the lookup histogram (each at ns / n). */
static void count_lookups(struct frontend *fe, size_t n, uint64_t ns)
{
	if (n == 0)
		return;
	double each = (double)ns / (double)n;
	int b = 0;
	while (b < FE_N_LOOKUP_BUCKETS - 1 && each > lookup_bounds_ns[b])
		b++;
	/* Relaxed: statistics only; /metrics reads them without ordering. */
	atomic_fetch_add_explicit(&fe->metrics.lookup_buckets[b], n, memory_order_relaxed);
	atomic_fetch_add_explicit(&fe->metrics.lookup_ns_sum, ns, memory_order_relaxed);
}

int fe_route(struct frontend *fe, shardmap_reader *r, const char *stream, const char *key,
             size_t key_len, shardmap_hash h, shardmap_route *out)
{
	uint64_t t0 = now_ns();
	int rc = key ? shardmap_route_key(r, stream, key, key_len, out)
	             : shardmap_route_hash(r, stream, h, out);
	count_lookups(fe, 1, now_ns() - t0);
	return rc;
}

int fe_route_keys(struct frontend *fe, shardmap_reader *r, const char *stream,
                  const shardmap_key *keys, size_t n, shardmap_route *out)
{
	uint64_t t0 = now_ns();
	int rc = shardmap_route_keys(r, stream, keys, n, out);
	count_lookups(fe, n, now_ns() - t0);
	return rc;
}

static enum fe_endpoint classify(const char *url)
{
	if (strcmp(url, "/route") == 0)
		return FE_ROUTE;
	if (strncmp(url, "/streams/", 9) == 0)
		return FE_RECORDS;
	if (strcmp(url, "/shards") == 0)
		return FE_SHARDS;
	if (strcmp(url, "/healthz") == 0)
		return FE_HEALTHZ;
	if (strcmp(url, "/metrics") == 0)
		return FE_METRICS;
	if (strcmp(url, "/fixed") == 0)
		return FE_FIXED;
	return FE_OTHER;
}

static enum MHD_Result reply(struct request *rq, struct MHD_Connection *c, unsigned status,
                             json_t *obj)
{
	rq->status = status;
	return ex_reply_json(c, status, obj);
}

static enum MHD_Result reply_error(struct request *rq, struct MHD_Connection *c,
                                   unsigned status, const char *msg)
{
	return reply(rq, c, status, json_pack("{s:s, s:i}", "error", msg, "status", status));
}

static enum MHD_Result reply_map_error(struct request *rq, struct MHD_Connection *c, int rc,
                                       const char *stream)
{
	unsigned status = rc == SHARDMAP_ENOENT      ? 404
	                  : rc == SHARDMAP_ENOTREADY ? 503
	                  : rc == SHARDMAP_EINVAL    ? 400
	                                             : 500;
	return reply(rq, c, status,
	             json_pack("{s:s, s:s, s:i}", "error", shardmap_strerror(rc), "stream",
	                       stream ? stream : "", "status", status));
}

static json_t *route_json(const shardmap_route *rt)
{
	json_t *eps = json_array();
	for (size_t i = 0; i < rt->n_endpoints; i++)
		json_array_append_new(eps, json_string(rt->endpoints[i]));
	json_t *o = json_pack("{s:s, s:s, s:o, s:o, s:b, s:s, s:o, s:I}", "stream", rt->stream,
	                      "shard", rt->shard_id, "start", ex_json_hash(rt->start), "end",
	                      ex_json_hash(rt->end), "open", rt->open, "cell", rt->cell_id,
	                      "endpoints", eps, "version", (json_int_t)rt->version);
	if (rt->parent)
		json_object_set_new(o, "parent", json_string(rt->parent));
	if (rt->adjacent_parent)
		json_object_set_new(o, "adjacent_parent", json_string(rt->adjacent_parent));
	return o;
}

static enum MHD_Result get_route(struct frontend *fe, struct request *rq,
                                 struct MHD_Connection *c)
{
	const char *stream = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "stream");
	const char *key = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "key");
	const char *hash = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "hash");
	if (stream == NULL || *stream == '\0')
		return reply_error(rq, c, 400, "missing parameter: stream");
	if ((key == NULL) == (hash == NULL))
		return reply_error(rq, c, 400, "give exactly one of key and hash");
	shardmap_hash h = {0, 0};
	if (hash && shardmap_hash_parse(hash, &h) != 0) {
		char msg[200];
		snprintf(msg, sizeof msg, "hash: %s", shardmap_hash_parse_error(hash));
		return reply_error(rq, c, 400, msg);
	}
	shardmap_reader *r = ex_thread_reader(fe->map);
	if (r == NULL)
		return reply_error(rq, c, 500, "out of memory");
	shardmap_route rt;
	shardmap_read_begin(r);
	int rc = fe_route(fe, r, stream, key, key ? strlen(key) : 0, h, &rt);
	json_t *o = rc == 0 ? route_json(&rt) : NULL;
	shardmap_read_end(r);
	if (rc != 0)
		return reply_map_error(rq, c, rc, stream);
	return reply(rq, c, 200, o);
}

/* Parse a POST /route body into keys[] (pointing into doc) and hashes[]; *n records.
 * Returns NULL, or what is wrong with it (msg may hold the text). */
static const char *parse_batch(json_t *doc, const char **stream, shardmap_key *keys,
                               shardmap_hash *hashes, size_t *n, char *msg, size_t msg_size)
{
	json_t *records = json_object_get(doc, "records");
	*stream = json_string_value(json_object_get(doc, "stream"));
	if (*stream == NULL || **stream == '\0')
		return "missing field: stream";
	if (!json_is_array(records) || json_array_size(records) == 0 ||
	    json_array_size(records) > MAX_BATCH)
		return "records must be an array of 1 to 500 records";
	*n = json_array_size(records);
	for (size_t i = 0; i < *n; i++) {
		json_t *rec = json_array_get(records, i);
		json_t *key = json_object_get(rec, "key"), *hash = json_object_get(rec, "hash");
		if (!json_is_object(rec) || (key == NULL) == (hash == NULL) ||
		    (key && !json_is_string(key)) || (hash && !json_is_string(hash))) {
			snprintf(msg, msg_size, "record %zu: give exactly one of key and hash, "
			         "as strings", i);
			return msg;
		}
		keys[i] = (shardmap_key){.data = key ? json_string_value(key) : NULL,
		                         .len = key ? json_string_length(key) : 0};
		if (hash == NULL)
			continue;
		if (shardmap_hash_parse(json_string_value(hash), &hashes[i]) != 0) {
			snprintf(msg, msg_size, "record %zu: hash: %s", i,
			         shardmap_hash_parse_error(json_string_value(hash)));
			return msg;
		}
		keys[i].explicit_hash = &hashes[i];
	}
	return NULL;
}

static enum MHD_Result post_route(struct frontend *fe, struct request *rq,
                                  struct MHD_Connection *c)
{
	if (rq->body.too_large)
		return reply_error(rq, c, 413, "body larger than 1 MiB");
	json_error_t jerr;
	json_t *doc = json_loadb(rq->body.data ? rq->body.data : "", rq->body.len, 0, &jerr);
	if (doc == NULL) {
		char msg[240];
		snprintf(msg, sizeof msg, "body is not JSON: %s", jerr.text);
		return reply_error(rq, c, 400, msg);
	}
	static _Thread_local shardmap_key keys[MAX_BATCH];
	static _Thread_local shardmap_hash hashes[MAX_BATCH];
	static _Thread_local shardmap_route routes[MAX_BATCH];
	const char *stream;
	size_t n = 0;
	char msg[240];
	const char *bad = parse_batch(doc, &stream, keys, hashes, &n, msg, sizeof msg);
	if (bad != NULL) {
		enum MHD_Result ret = reply_error(rq, c, 400, bad);
		json_decref(doc);
		return ret;
	}
	shardmap_reader *r = ex_thread_reader(fe->map);
	int rc = r ? 0 : SHARDMAP_ENOMEM;
	json_t *out = NULL;
	if (r != NULL) {
		shardmap_read_begin(r);
		rc = fe_route_keys(fe, r, stream, keys, n, routes);
		if (rc == 0) {
			json_t *arr = json_array();
			for (size_t i = 0; i < n; i++)
				json_array_append_new(arr, route_json(&routes[i]));
			out = json_pack("{s:s, s:I, s:o}", "stream", stream, "version",
			                (json_int_t)routes[0].version, "routes", arr);
		}
		shardmap_read_end(r);
	}
	enum MHD_Result ret = rc == 0 ? reply(rq, c, 200, out) : reply_map_error(rq, c, rc, stream);
	json_decref(doc);
	return ret;
}

/* The shape and size of a /route answer, built and serialised like one, without the map. */
static enum MHD_Result get_fixed(struct request *rq, struct MHD_Connection *c)
{
	return reply(rq, c, 200,
	             json_pack("{s:s, s:s, s:s, s:s, s:b, s:s, s:[s], s:I}", "stream", "fixed",
	                       "shard", "shardId-000000000008", "start",
	                       "170141183460469231731687303715884105728", "end",
	                       "191408831393027885698148216680369618943", "open", 1, "cell",
	                       "cell-a", "endpoints", "127.0.0.1:40000", "version",
	                       (json_int_t)2));
}

static int add_shard(void *ctx, const shardmap_route *rt)
{
	return json_array_append_new(ctx, route_json(rt)) == 0 ? 0 : SHARDMAP_ENOMEM;
}

static enum MHD_Result get_shards(struct frontend *fe, struct request *rq,
                                  struct MHD_Connection *c)
{
	const char *stream = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "stream");
	if (stream == NULL || *stream == '\0')
		return reply_error(rq, c, 400, "missing parameter: stream");
	shardmap_reader *r = ex_thread_reader(fe->map);
	if (r == NULL)
		return reply_error(rq, c, 500, "out of memory");
	json_t *shards = json_array();
	shardmap_read_begin(r);
	uint64_t version = shardmap_version(fe->map);
	int rc = shardmap_foreach_shard(r, stream, add_shard, shards);
	shardmap_read_end(r);
	if (rc != 0) {
		json_decref(shards);
		return reply_map_error(rq, c, rc, stream);
	}
	return reply(rq, c, 200,
	             json_pack("{s:s, s:I, s:o}", "stream", stream, "version", (json_int_t)version,
	                       "shards", shards));
}

static enum MHD_Result post_records(struct frontend *fe, struct request *rq,
                                    struct MHD_Connection *c, const char *url)
{
	const char *stream = url + strlen("/streams/");
	const char *slash = strchr(stream, '/');
	if (slash == NULL || strcmp(slash, "/records") != 0 || slash == stream)
		return reply_error(rq, c, 404, "no such resource");
	char name[256];
	size_t n = (size_t)(slash - stream);
	if (n >= sizeof name)
		return reply_error(rq, c, 400, "stream name too long");
	memcpy(name, stream, n);
	name[n] = '\0';
	if (rq->body.too_large)
		return reply_error(rq, c, 413, "record larger than 1 MiB");
	const char *key = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "key");
	if (key == NULL)
		key = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Partition-Key");
	if (key == NULL)
		return reply_error(rq, c, 400, "missing partition key (key=... or X-Partition-Key)");
	json_t *answer = NULL;
	unsigned status =
	    fe_forward(fe, name, key, strlen(key), rq->body.data, rq->body.len, &answer);
	return reply(rq, c, status, answer);
}

static enum MHD_Result get_healthz(struct frontend *fe, struct request *rq,
                                   struct MHD_Connection *c)
{
	shardmap_stats st;
	shardmap_stats_get(fe->map, &st);
	char reason[256];
	const char *status = "ready";
	unsigned code = 200;
	if (st.version == 0) {
		status = "not ready";
		code = 503;
		snprintf(reason, sizeof reason, "no map yet: bootstrap from %s has not succeeded",
		         fe->store_uri);
	} else if (atomic_load(&fe->from_snapshot) && !atomic_load(&fe->following)) {
		status = "stale";
		snprintf(reason, sizeof reason,
		         "serving warm-start snapshot version %" PRIu64 "; store %s not reached",
		         st.version, fe->store_uri);
	} else if (st.stale_ns / 1000000u > fe->stale_after_ms) {
		status = "stale";
		snprintf(reason, sizeof reason, "store %s unheard for %" PRIu64 " ms", fe->store_uri,
		         st.stale_ns / 1000000u);
	} else {
		snprintf(reason, sizeof reason, "following %s", fe->store_uri);
	}
	return reply(rq, c, code,
	             json_pack("{s:s, s:s, s:I, s:I}", "status", status, "reason", reason,
	                       "version", (json_int_t)st.version, "threads",
	                       (json_int_t)st.threads));
}

/* Our own metrics, in Prometheus text format, into a new string (NULL when out of memory). */
static char *frontend_metrics(struct frontend *fe)
{
	char *buf = NULL;
	size_t size = 0;
	FILE *f = open_memstream(&buf, &size);
	if (f == NULL)
		return NULL;
	struct fe_metrics *mt = &fe->metrics;
	fprintf(f, "# HELP frontend_requests_total HTTP requests by endpoint and status class.\n"
	           "# TYPE frontend_requests_total counter\n");
	for (int e = 0; e < FE_N; e++)
		for (int k = 1; k <= 5; k++)
			fprintf(f, "frontend_requests_total{endpoint=\"%s\",code=\"%dxx\"} %" PRIu64 "\n",
			        endpoint_names[e], k, atomic_load(&mt->requests[e][k]));
	fprintf(f, "# HELP frontend_request_seconds Request latency.\n"
	           "# TYPE frontend_request_seconds histogram\n");
	for (int e = 0; e < FE_N; e++) {
		uint64_t cum = 0;
		for (int b = 0; b < FE_N_BUCKETS; b++) {
			cum += atomic_load(&mt->buckets[e][b]);
			if (b < FE_N_BUCKETS - 1)
				fprintf(f, "frontend_request_seconds_bucket{endpoint=\"%s\",le=\"%g\"} %" PRIu64 "\n",
				        endpoint_names[e], bucket_bounds[b], cum);
			else
				fprintf(f, "frontend_request_seconds_bucket{endpoint=\"%s\",le=\"+Inf\"} %" PRIu64 "\n",
				        endpoint_names[e], cum);
		}
		fprintf(f, "frontend_request_seconds_sum{endpoint=\"%s\"} %.9f\n", endpoint_names[e],
		        (double)atomic_load(&mt->latency_ns_sum[e]) / 1e9);
		fprintf(f, "frontend_request_seconds_count{endpoint=\"%s\"} %" PRIu64 "\n",
		        endpoint_names[e], cum);
	}
	fprintf(f, "# HELP frontend_lookup_seconds Time spent in shardmap_route_* per lookup.\n"
	           "# TYPE frontend_lookup_seconds histogram\n");
	uint64_t cum = 0;
	for (int b = 0; b < FE_N_LOOKUP_BUCKETS; b++) {
		cum += atomic_load(&mt->lookup_buckets[b]);
		if (b < FE_N_LOOKUP_BUCKETS - 1)
			fprintf(f, "frontend_lookup_seconds_bucket{le=\"%g\"} %" PRIu64 "\n",
			        lookup_bounds_ns[b] / 1e9, cum);
		else
			fprintf(f, "frontend_lookup_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n", cum);
	}
	fprintf(f, "frontend_lookup_seconds_sum %.9f\nfrontend_lookup_seconds_count %" PRIu64 "\n",
	        (double)atomic_load(&mt->lookup_ns_sum) / 1e9, cum);
	fprintf(f,
	        "# TYPE frontend_forwarded_total counter\nfrontend_forwarded_total %" PRIu64 "\n"
	        "# TYPE frontend_forward_errors_total counter\nfrontend_forward_errors_total %" PRIu64 "\n"
	        "# TYPE frontend_not_my_shard_total counter\nfrontend_not_my_shard_total %" PRIu64 "\n"
	        "# TYPE frontend_retries_total counter\nfrontend_retries_total %" PRIu64 "\n",
	        atomic_load(&mt->forwarded), atomic_load(&mt->forward_errors),
	        atomic_load(&mt->not_my_shard), atomic_load(&mt->retries));
	fclose(f);
	return buf;
}

static enum MHD_Result get_metrics(struct frontend *fe, struct request *rq,
                                   struct MHD_Connection *c)
{
	size_t cap = 16384;
	char *buf = NULL;
	int n;
	for (;;) {
		char *p = realloc(buf, cap);
		if (p == NULL) {
			free(buf);
			return reply_error(rq, c, 500, "out of memory");
		}
		buf = p;
		n = shardmap_metrics_text(fe->map, buf, cap);
		if (n >= 0)
			break;
		cap *= 2;
		if (cap > (64u << 20)) {
			free(buf);
			return reply_error(rq, c, 500, shardmap_strerror(n));
		}
	}
	char *ours = frontend_metrics(fe);
	char *all = ours ? malloc((size_t)n + strlen(ours) + 1) : NULL;
	if (all == NULL) {
		free(buf);
		free(ours);
		return reply_error(rq, c, 500, "out of memory");
	}
	memcpy(all, buf, (size_t)n);
	strcpy(all + n, ours);
	free(buf);
	free(ours);
	rq->status = 200;
	enum MHD_Result ret = ex_reply_text(c, 200, all, "text/plain; version=0.0.4");
	free(all);
	return ret;
}

static enum MHD_Result handle(void *ctx, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **req)
{
	struct frontend *fe = ctx;
	struct request *rq = *req;
	(void)version;
	if (rq == NULL) {
		if ((rq = calloc(1, sizeof *rq)) == NULL)
			return MHD_NO;
		rq->start_ns = now_ns();
		rq->ep = classify(url);
		rq->body.limit = MAX_BODY;
		*req = rq;
		return MHD_YES;
	}
	if (*upload_size) {
		if (ex_body_feed(&rq->body, upload, *upload_size) != 0)
			return MHD_NO;
		*upload_size = 0;
		return MHD_YES;
	}
	int get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0;
	switch (rq->ep) {
	case FE_ROUTE:
		return get ? get_route(fe, rq, c)
		           : post ? post_route(fe, rq, c) : reply_error(rq, c, 405, "use GET or POST");
	case FE_RECORDS:
		return post ? post_records(fe, rq, c, url) : reply_error(rq, c, 405, "use POST");
	case FE_SHARDS:
		return get ? get_shards(fe, rq, c) : reply_error(rq, c, 405, "use GET");
	case FE_HEALTHZ:
		return get ? get_healthz(fe, rq, c) : reply_error(rq, c, 405, "use GET");
	case FE_METRICS:
		return get ? get_metrics(fe, rq, c) : reply_error(rq, c, 405, "use GET");
	case FE_FIXED:
		return get ? get_fixed(rq, c) : reply_error(rq, c, 405, "use GET");
	default:
		return reply_error(rq, c, 404, "no such resource");
	}
}

static void completed(void *ctx, struct MHD_Connection *c, void **req,
                      enum MHD_RequestTerminationCode toe)
{
	struct frontend *fe = ctx;
	struct request *rq = *req;
	(void)c;
	(void)toe;
	if (rq == NULL)
		return;
	double secs = (double)(now_ns() - rq->start_ns) / 1e9;
	int b = 0;
	while (b < FE_N_BUCKETS - 1 && secs > bucket_bounds[b])
		b++;
	unsigned cls = rq->status / 100;
	/* Relaxed: statistics only; /metrics reads them without ordering. */
	if (cls >= 1 && cls <= 5)
		atomic_fetch_add_explicit(&fe->metrics.requests[rq->ep][cls], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&fe->metrics.buckets[rq->ep][b], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&fe->metrics.latency_ns_sum[rq->ep], now_ns() - rq->start_ns,
	                          memory_order_relaxed);
	ex_body_free(&rq->body);
	free(rq);
	*req = NULL;
}

struct MHD_Daemon *fe_http_start(struct frontend *fe, const struct sockaddr_in *addr,
                                 unsigned threads)
{
	return ex_http_start(addr, threads, handle, fe, completed);
}
