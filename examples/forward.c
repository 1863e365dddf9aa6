/*
 * forward.c - the example front-end's record path: route the partition key, forward the
 * record to the owning cell over HTTP (libcurl, one handle per HTTP worker thread), and when
 * the cell answers "not my shard", hint the map that it is stale, wait for it to catch up
 * and route once more. Nothing is dropped silently: every failure is an HTTP error to the
 * client naming the cell and the reason.
 */
#include <curl/curl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "frontend.h"

#define MAX_ENDPOINTS 8
#define CATCH_UP_WAIT_MS 3000

struct target {
	char shard[256], cell[256];
	char endpoints[MAX_ENDPOINTS][256];
	size_t n_endpoints;
	uint64_t version;
};

static pthread_key_t curl_key;
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_destroy(void *c)
{
	curl_easy_cleanup(c);
}

static void curl_key_init(void)
{
	pthread_key_create(&curl_key, curl_destroy);
}

void fe_forward_global_init(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
	pthread_once(&curl_once, curl_key_init);
}

/* The calling thread's curl handle (reused: keeps connections to cells alive). */
static CURL *thread_curl(void)
{
	CURL *c = pthread_getspecific(curl_key);
	if (c == NULL && (c = curl_easy_init()) != NULL)
		pthread_setspecific(curl_key, c);
	return c;
}

/* Route the key and copy what forwarding needs out of the read section. */
static int route(struct frontend *fe, const char *stream, const char *key, size_t key_len,
                 struct target *t)
{
	shardmap_reader *r = ex_thread_reader(fe->map);
	if (r == NULL)
		return SHARDMAP_ENOMEM;
	shardmap_route rt;
	shardmap_read_begin(r);
	shardmap_hash unused = {0, 0};
	int rc = fe_route(fe, r, stream, key, key_len, unused, &rt);
	if (rc == 0) {
		snprintf(t->shard, sizeof t->shard, "%s", rt.shard_id);
		snprintf(t->cell, sizeof t->cell, "%s", rt.cell_id);
		t->n_endpoints = rt.n_endpoints < MAX_ENDPOINTS ? rt.n_endpoints : MAX_ENDPOINTS;
		for (size_t i = 0; i < t->n_endpoints; i++)
			snprintf(t->endpoints[i], sizeof t->endpoints[i], "%s", rt.endpoints[i]);
		t->version = rt.version;
	}
	shardmap_read_end(r);
	return rc;
}

static size_t discard(char *p, size_t size, size_t n, void *ctx)
{
	(void)p;
	(void)ctx;
	return size * n;
}

/* POST the record to one endpoint. Returns the curl code; *status gets the HTTP status. */
static CURLcode post(CURL *c, const char *endpoint, const char *stream, const struct target *t,
                     const char *body, size_t body_len, long *status)
{
	char *es = curl_easy_escape(c, stream, 0), *eh = curl_easy_escape(c, t->shard, 0);
	char url[1024];
	snprintf(url, sizeof url, "http://%s/records?stream=%s&shard=%s&version=%" PRIu64,
	         endpoint, es ? es : "", eh ? eh : "", t->version);
	curl_free(es);
	curl_free(eh);
	curl_easy_reset(c);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_POST, 1L);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "");
	curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)body_len);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 1000L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
	CURLcode cc = curl_easy_perform(c);
	*status = 0;
	if (cc == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
	return cc;
}

/* After a stale answer: wait (bounded) until the map is newer than the version that routed. */
static void wait_newer(struct frontend *fe, uint64_t version)
{
	struct timespec tick = {0, 2 * 1000 * 1000};
	for (int waited = 0; shardmap_version(fe->map) <= version && waited < CATCH_UP_WAIT_MS;
	     waited += 2)
		nanosleep(&tick, NULL);
}

static unsigned route_error(int rc, const char *stream, json_t **reply)
{
	unsigned status = rc == SHARDMAP_ENOENT ? 404 : rc == SHARDMAP_ENOTREADY ? 503 : 500;
	*reply = json_pack("{s:s, s:s, s:i}", "error", shardmap_strerror(rc), "stream", stream,
	                   "status", status);
	return status;
}

unsigned fe_forward(struct frontend *fe, const char *stream, const char *key, size_t key_len,
                    const char *body, size_t body_len, json_t **reply)
{
	CURL *c = thread_curl();
	if (c == NULL) {
		*reply = json_pack("{s:s}", "error", "out of memory");
		return 500;
	}
	struct target t;
	for (int attempt = 0; attempt < 2; attempt++) {
		int rc = route(fe, stream, key, key_len, &t);
		if (rc != 0)
			return route_error(rc, stream, reply);
		long status = 0;
		CURLcode cc = CURLE_COULDNT_CONNECT;
		size_t e;
		for (e = 0; e < t.n_endpoints; e++)
			if ((cc = post(c, t.endpoints[e], stream, &t, body, body_len, &status)) ==
			    CURLE_OK)
				break;
		if (cc != CURLE_OK) {
			atomic_fetch_add_explicit(&fe->metrics.forward_errors, 1,
			                          memory_order_relaxed); /* statistics only */
			*reply = json_pack("{s:s, s:s, s:s, s:I, s:i}", "error", curl_easy_strerror(cc),
			                   "cell", t.cell, "shard", t.shard, "version",
			                   (json_int_t)t.version, "status", 502);
			return 502;
		}
		if (status == 200) {
			atomic_fetch_add_explicit(&fe->metrics.forwarded, 1,
			                          memory_order_relaxed); /* statistics only */
			*reply = json_pack("{s:s, s:s, s:s, s:s, s:I, s:i}", "stream", stream, "shard",
			                   t.shard, "cell", t.cell, "endpoint", t.endpoints[e],
			                   "version", (json_int_t)t.version, "attempts", attempt + 1);
			return 200;
		}
		if (status != 409) {
			atomic_fetch_add_explicit(&fe->metrics.forward_errors, 1,
			                          memory_order_relaxed); /* statistics only */
			*reply = json_pack("{s:s, s:s, s:I, s:i}", "error", "cell answered an error",
			                   "cell", t.cell, "cell_status", (json_int_t)status, "status",
			                   502);
			return 502;
		}
		/* "not my shard": our map is older than the cell's. */
		atomic_fetch_add_explicit(&fe->metrics.not_my_shard, 1,
		                          memory_order_relaxed); /* statistics only */
		if (attempt == 0) {
			atomic_fetch_add_explicit(&fe->metrics.retries, 1,
			                          memory_order_relaxed); /* statistics only */
			shardmap_hint_stale(fe->map, stream, t.shard, t.version);
			wait_newer(fe, t.version);
		}
	}
	*reply = json_pack("{s:s, s:s, s:s, s:I, s:i}", "error",
	                   "cell still says not my shard after catching up", "cell", t.cell,
	                   "shard", t.shard, "version", (json_int_t)t.version, "status", 503);
	return 503;
}
