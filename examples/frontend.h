/*
 * frontend.h - the example routing front-end's shared state: the map it serves from, where
 * the map comes from (store, warm-start snapshot, peers) and its request metrics.
 */
#ifndef SHARDMAP_EXAMPLE_FRONTEND_H
#define SHARDMAP_EXAMPLE_FRONTEND_H

#include <stdatomic.h>
#include <stdint.h>

#include "http_common.h"

/* FE_FIXED is GET /fixed, a constant answer: bench/bench_frontend.sh's baseline. */
enum fe_endpoint {
	FE_ROUTE,
	FE_RECORDS,
	FE_SHARDS,
	FE_HEALTHZ,
	FE_METRICS,
	FE_FIXED,
	FE_OTHER,
	FE_N
};

/* Request latency histogram bounds, seconds (the last bucket is +Inf). */
#define FE_N_BUCKETS 14
/* Lookup (shardmap_route_*) latency histogram bounds, nanoseconds (the last is +Inf). */
#define FE_N_LOOKUP_BUCKETS 9

struct fe_metrics {
	_Atomic uint64_t requests[FE_N][6]; /* by status class: 1xx..5xx, index 0 unused */
	_Atomic uint64_t buckets[FE_N][FE_N_BUCKETS];
	_Atomic uint64_t latency_ns_sum[FE_N];
	_Atomic uint64_t lookup_buckets[FE_N_LOOKUP_BUCKETS];
	_Atomic uint64_t lookup_ns_sum;
	_Atomic uint64_t forwarded, forward_errors, not_my_shard, retries;
};

struct frontend {
	shardmap *map;
	shardmap_store *store;
	shardmap_pool *pool;
	shardmap_peers *peers;
	const char *store_uri, *snapshot_path;
	unsigned stale_after_ms;     /* the store unheard for longer: /healthz says stale */
	_Atomic int following;       /* bootstrapped from the store and following it */
	_Atomic int from_snapshot;   /* serving a warm-start snapshot, store not reached yet */
	_Atomic int stopping;
	struct fe_metrics metrics;
};

/* Route a key or an explicit hash (key NULL) inside the caller's read section, timing the
 * lookup into the metrics (frontend_http.c). */
int fe_route(struct frontend *fe, shardmap_reader *r, const char *stream, const char *key,
             size_t key_len, shardmap_hash h, shardmap_route *out);

/* Route n keys of one stream in one shardmap_route_keys call inside the caller's read
 * section, timing it into the metrics as n lookups (frontend_http.c). */
int fe_route_keys(struct frontend *fe, shardmap_reader *r, const char *stream,
                  const shardmap_key *keys, size_t n, shardmap_route *out);

/* The HTTP side (frontend_http.c). */
struct MHD_Daemon *fe_http_start(struct frontend *fe, const struct sockaddr_in *addr,
                                 unsigned threads);

/* Forward one record to the owner of its shard, retrying once after a stale answer
 * (forward.c). Fills *reply with the JSON answer and returns the HTTP status. */
unsigned fe_forward(struct frontend *fe, const char *stream, const char *key, size_t key_len,
                    const char *body, size_t body_len, json_t **reply);
void fe_forward_global_init(void);

#endif
