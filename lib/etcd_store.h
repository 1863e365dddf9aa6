/*
 * etcd_store.h - the etcd store object, shared by its three files:
 *   etcd_http.c    requests to etcd's v3 JSON gateway: easy handles, endpoints, failover,
 *                  the token bucket, backoff and circuit breaker every request goes through;
 *   store_etcd.c   the store vtable: open, close, load (paged pinned snapshot), write (one
 *                  compare-and-swap transaction), version;
 *   etcd_follow.c  the follower: a watch driven by curl's multi interface on the pool.
 */
#ifndef SHARDMAP_ETCD_STORE_H
#define SHARDMAP_ETCD_STORE_H

#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>

#include "ratelimit.h"
#include "store.h"

#define SHARDMAP__ETCD_PAGE 10000       /* keys per range page (URI option page=) */
#define SHARDMAP__ETCD_RATE 100.0       /* requests per second per store (rate=) */
#define SHARDMAP__ETCD_BURST 50         /* (burst=) */
#define SHARDMAP__ETCD_TIMEOUT_MS 10000 /* one unary request (timeout_ms=) */
#define SHARDMAP__ETCD_CONNECT_MS 1000  /* connecting to one endpoint */
#define SHARDMAP__ETCD_BREAKER_FAILS 5  /* consecutive failures that open the breaker */
#define SHARDMAP__ETCD_BREAKER_OPEN_MS 1000
#define SHARDMAP__ETCD_BACKOFF_BASE_MS 50
#define SHARDMAP__ETCD_BACKOFF_MAX_MS 2000

struct shardmap__etcd {
	struct shardmap_store base; /* first: the vtable */
	char *prefix;               /* "/a/b": no trailing slash */
	char **endpoints;           /* "host:port" */
	size_t n_endpoints;
	/* the endpoint that answered last: where the next request starts. Relaxed: a hint
	 * only; any value is a valid index */
	_Atomic unsigned preferred;
	unsigned page;
	long timeout_ms;
	struct shardmap__bucket bucket;
	struct shardmap__breaker breaker;
	struct shardmap__flight version_flight; /* concurrent version() calls share one request */
	struct shardmap__flight load_flight;    /* concurrent loads share one snapshot */
	pthread_mutex_t lock;  /* guards the fields below */
	uint64_t snap_version; /* the last snapshot's version and the revision it was read at, */
	uint64_t snap_revision; /* so a follower starting at that version watches from there */
	CURL *idle[4];         /* easy handles kept for their open connections */
	unsigned n_idle;
};

/* One HTTP request to the gateway and its answer. */
struct shardmap__etcd_req {
	CURL *easy;
	struct curl_slist *headers;
	char *body;           /* request body (JSON text) */
	char *buf;            /* the answer, or for a stream the bytes not yet consumed */
	size_t len, cap;
	unsigned endpoint;    /* index into endpoints */
	char err[CURL_ERROR_SIZE];
	/* streams (the watch): each complete line is handed over; nonzero aborts the transfer */
	int (*on_line)(void *ctx, char *line, size_t len);
	void *ctx;
};

/* The outcome of a finished request. */
struct shardmap__etcd_reply {
	int transport_ok;   /* etcd answered (any HTTP status) */
	int sent;           /* the request may have reached etcd (a failure is then ambiguous) */
	int ambiguous;      /* shardmap__etcd_call: a failed attempt may have reached etcd */
	long http;          /* HTTP status, 0 if none */
	int code;           /* etcd's gRPC error code when http != 200, else 0 */
	char msg[160];      /* etcd's error message or the transport error */
};

/* gRPC codes the gateway reports in "code" */
#define SHARDMAP__GRPC_INVALID_ARGUMENT 3
#define SHARDMAP__GRPC_OUT_OF_RANGE 11 /* compacted or future revision */

/* Set up r for POST http://<endpoint><path> with body (taken over: r frees it).
 * stream_fn non-NULL makes it a stream (no overall timeout; TCP keepalive). easy may be
 * NULL (a new handle) or a handle to reuse. Returns 0 or SHARDMAP_ENOMEM. */
int shardmap__etcd_req_setup(struct shardmap__etcd *s, struct shardmap__etcd_req *r, CURL *easy,
                             unsigned endpoint, const char *path, char *body,
                             int (*stream_fn)(void *ctx, char *line, size_t len), void *ctx);
/* Classify a finished transfer; for HTTP 200 parse the answer into *json (unary only; with
 * json NULL an HTTP 200 answer is left undecoded in r->buf). */
void shardmap__etcd_req_reply(struct shardmap__etcd_req *r, CURLcode cc,
                              struct shardmap__etcd_reply *rep, json_t **json);
/* Free r's buffers; the easy handle is returned (the caller keeps or cleans it up). */
CURL *shardmap__etcd_req_release(struct shardmap__etcd_req *r);

/* A unary request with failover (blocking): starts at the preferred endpoint, moves to the
 * next on a transport failure, retries with jittered backoff, each attempt through the
 * circuit breaker and, unless it continues an operation that already took one (a further
 * page of a snapshot: continued != 0), the token bucket. body is taken over.
 * Returns 0 with *json the answer (HTTP 200); SHARDMAP_EINVAL when etcd refused the request
 * (rep->code and rep->msg say why); SHARDMAP_EIO when every attempt failed; ENOMEM. */
int shardmap__etcd_call(struct shardmap__etcd *s, const char *path, char *body, int continued,
                        json_t **json, struct shardmap__etcd_reply *rep);

/* Sleep (a blocking call waiting for a token or a backoff). */
void shardmap__etcd_sleep_ns(uint64_t ns);

/* Is the refusal "required revision has been compacted"? */
int shardmap__etcd_compacted(const struct shardmap__etcd_reply *rep);

/* Pop a kept easy handle (NULL if none) / keep one (cleans it up when the cache is full). */
CURL *shardmap__etcd_easy_get(struct shardmap__etcd *s);
void shardmap__etcd_easy_put(struct shardmap__etcd *s, CURL *easy);

/* One line on stderr, "shardmap etcd: ..." */
void shardmap__etcd_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* store_etcd.c: the snapshot a follower starts from when the map is at that version. */
void shardmap__etcd_snap_remember(struct shardmap__etcd *s, uint64_t version, uint64_t revision);
uint64_t shardmap__etcd_snap_revision(struct shardmap__etcd *s, uint64_t version);

/* etcd_follow.c: the store's follow operation. */
int shardmap__etcd_follow(shardmap_store *store, shardmap *m, shardmap_pool *p,
                          struct shardmap__follower **out);

#endif
