/*
 * cell.c - a tiny back-end cell for the examples and end-to-end tests. It accepts records
 * the front-end forwards, checks that it owns their shard (following the same store as the
 * front-end), counts them per shard, and answers "not my shard" (409) otherwise, the way a
 * real back-end tells a front-end that its map is stale.
 *
 *   POST /records?stream=S&shard=ID&version=V   the body is the record
 *   GET  /counts                                 {"cell", "accepted", "rejected", "shards"}
 *   GET  /healthz
 *
 * Usage: cell --id CELL --listen HOST:PORT [--store URI] [--threads N]
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http_common.h"

#define CATCH_UP_WAIT_MS 3000

struct cell {
	const char *id;
	shardmap *map; /* NULL without --store: accept everything */
	pthread_mutex_t lock;
	json_t *counts; /* "stream/shard" -> accepted records */
	unsigned long accepted, rejected;
};

/* Wait (bounded) until the cell's map has caught up with the version that routed the record. */
static void wait_for_version(shardmap *m, uint64_t version)
{
	struct timespec tick = {0, 2 * 1000 * 1000};
	for (int waited = 0; shardmap_version(m) < version && waited < CATCH_UP_WAIT_MS; waited += 2)
		nanosleep(&tick, NULL);
}

/* Is this cell the owner of the open shard? Fills *why_not otherwise. */
static int owns(struct cell *c, const char *stream, const char *shard, char *why_not, size_t n)
{
	if (c->map == NULL)
		return 1;
	shardmap_reader *r = ex_thread_reader(c->map);
	if (r == NULL) {
		snprintf(why_not, n, "out of memory");
		return 0;
	}
	shardmap_route rt;
	shardmap_read_begin(r);
	int rc = shardmap_find_shard(r, stream, shard, &rt);
	int ok = rc == 0 && rt.open && strcmp(rt.cell_id, c->id) == 0;
	if (rc != 0)
		snprintf(why_not, n, "%s", shardmap_strerror(rc));
	else if (!rt.open)
		snprintf(why_not, n, "shard is closed at version %llu",
		         (unsigned long long)rt.version);
	else if (!ok)
		snprintf(why_not, n, "owned by %s at version %llu", rt.cell_id,
		         (unsigned long long)rt.version);
	shardmap_read_end(r);
	return ok;
}

static enum MHD_Result post_record(struct cell *c, struct MHD_Connection *conn)
{
	const char *stream = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "stream");
	const char *shard = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "shard");
	const char *ver = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "version");
	if (stream == NULL || shard == NULL || ver == NULL)
		return ex_reply_error(conn, 400, "stream, shard and version are required");
	char *end;
	errno = 0;
	unsigned long long version = strtoull(ver, &end, 10);
	if (errno || *end || end == ver)
		return ex_reply_error(conn, 400, "version is not a number");
	if (c->map)
		wait_for_version(c->map, version);
	char why_not[200];
	if (!owns(c, stream, shard, why_not, sizeof why_not)) {
		pthread_mutex_lock(&c->lock);
		c->rejected++;
		pthread_mutex_unlock(&c->lock);
		return ex_reply_json(conn, 409,
		                     json_pack("{s:s, s:s, s:I}", "error", "not my shard", "reason",
		                               why_not, "version",
		                               (json_int_t)(c->map ? shardmap_version(c->map) : 0)));
	}
	char key[600];
	snprintf(key, sizeof key, "%s/%s", stream, shard);
	pthread_mutex_lock(&c->lock);
	json_t *n = json_object_get(c->counts, key);
	json_object_set_new(c->counts, key, json_integer(n ? json_integer_value(n) + 1 : 1));
	c->accepted++;
	pthread_mutex_unlock(&c->lock);
	return ex_reply_json(conn, 200, json_pack("{s:b, s:s}", "accepted", 1, "cell", c->id));
}

static enum MHD_Result get_counts(struct cell *c, struct MHD_Connection *conn)
{
	pthread_mutex_lock(&c->lock);
	json_t *o = json_pack("{s:s, s:I, s:I, s:O}", "cell", c->id, "accepted",
	                      (json_int_t)c->accepted, "rejected", (json_int_t)c->rejected,
	                      "shards", c->counts);
	pthread_mutex_unlock(&c->lock);
	return ex_reply_json(conn, 200, o);
}

static enum MHD_Result handle(void *ctx, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **req)
{
	struct cell *c = ctx;
	(void)version;
	if (strcmp(method, "POST") == 0) {
		/* The body is only counted, not kept: swallow it chunk by chunk. */
		if (*req == NULL) {
			*req = c;
			return MHD_YES;
		}
		if (*upload_size) {
			*upload_size = 0;
			return MHD_YES;
		}
		if (strcmp(url, "/records") == 0)
			return post_record(c, conn);
		return ex_reply_error(conn, 404, "no such resource: %s", url);
	}
	if (strcmp(method, "GET") != 0)
		return ex_reply_error(conn, 405, "method %s not allowed", method);
	if (strcmp(url, "/counts") == 0)
		return get_counts(c, conn);
	if (strcmp(url, "/healthz") == 0)
		return ex_reply_json(conn, 200, json_pack("{s:s, s:s}", "status", "ok", "cell", c->id));
	return ex_reply_error(conn, 404, "no such resource: %s", url);
}

static void usage(FILE *f)
{
	fprintf(f, "usage: cell --id CELL --listen HOST:PORT [--store URI] [--threads N]\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"id", required_argument, NULL, 'i'},     {"listen", required_argument, NULL, 'l'},
	    {"store", required_argument, NULL, 's'},  {"threads", required_argument, NULL, 't'},
	    {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};
	struct cell c = {.lock = PTHREAD_MUTEX_INITIALIZER};
	const char *listen = NULL, *store_uri = NULL;
	unsigned threads = 2;
	int o;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 'i': c.id = optarg; break;
		case 'l': listen = optarg; break;
		case 's': store_uri = optarg; break;
		case 't': threads = (unsigned)atoi(optarg); break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	struct sockaddr_in addr;
	if (c.id == NULL || listen == NULL || ex_parse_hostport(listen, &addr) != 0 ||
	    threads == 0) {
		usage(stderr);
		return 2;
	}
	ex_block_signals();
	c.counts = json_object();

	shardmap_store *store = NULL;
	shardmap_pool *pool = NULL;
	if (store_uri) {
		shardmap_error why = {0};
		int rc;
		if ((rc = shardmap_open(&c.map, NULL)) || (rc = shardmap_pool_open(1, &pool)) ||
		    (rc = shardmap_store_open(store_uri, &store)) ||
		    (rc = shardmap_bootstrap(c.map, store, &why)) ||
		    (rc = shardmap_follow(c.map, store, pool))) {
			fprintf(stderr, "cell %s: %s: %s %s\n", c.id, store_uri, shardmap_strerror(rc),
			        why.message);
			return 1;
		}
	}
	struct MHD_Daemon *d = ex_http_start(&addr, threads, handle, &c, NULL);
	if (d == NULL) {
		fprintf(stderr, "cell %s: cannot listen on %s\n", c.id, listen);
		return 1;
	}
	fprintf(stderr, "cell %s: listening on %s\n", c.id, listen);
	ex_wait_for_signal();
	MHD_stop_daemon(d);
	if (c.map) {
		shardmap_unfollow(c.map);
		shardmap_store_close(store);
		shardmap_pool_close(pool);
		shardmap_close(c.map);
	}
	json_decref(c.counts);
	return 0;
}
