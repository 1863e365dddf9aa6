/*
 * etcd_json.h - what the keys and values of an etcd store mean: the key layout under the
 * store's prefix, the JSON value of each kind of record, and the translations between
 * deltas and etcd requests, range pages and watch events. Pure data mapping: no I/O.
 * Layout and value formats: docs/etcd.md.
 */
#ifndef SHARDMAP_ETCD_JSON_H
#define SHARDMAP_ETCD_JSON_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "delta.h"

/* Keys under PREFIX (names percent-encoded: only '%' and '/' are escaped). */
enum shardmap__etcd_kind {
	SHARDMAP__ETCD_VERSION = 1, /* PREFIX/version: touched by every shardmap write */
	SHARDMAP__ETCD_STREAM = 2,  /* PREFIX/streams/<name> */
	SHARDMAP__ETCD_SHARD = 3,   /* PREFIX/shards/<stream>/<id> */
	SHARDMAP__ETCD_CELL = 4,    /* PREFIX/cells/<id> */
};

struct shardmap__etcd_key {
	enum shardmap__etcd_kind kind;
	char stream[SHARDMAP__NAME_MAX + 1]; /* stream and shard keys */
	char id[SHARDMAP__NAME_MAX + 1];     /* shard id or cell id */
};

/* Base64 (the gateway's encoding of keys and values) through OpenSSL.
 * encode: a malloc'ed NUL-terminated string, NULL on ENOMEM.
 * decode: a malloc'ed buffer with a NUL after the *len bytes. Returns 0, SHARDMAP_ECORRUPT
 * (not base64), SHARDMAP_ENOMEM. */
char *shardmap__b64_encode(const void *p, size_t n);
int shardmap__b64_decode(const char *s, char **out, size_t *len);

/* The key of a record: malloc'ed, NULL on ENOMEM. stream is used by shard keys only, id by
 * shard and cell keys, name by stream keys (pass it as stream). */
char *shardmap__etcd_key_make(const char *prefix, enum shardmap__etcd_kind kind,
                              const char *stream, const char *id);
/* Parse a raw key (len bytes, need not be NUL-terminated) under prefix.
 * Returns 0 or SHARDMAP_ECORRUPT (why names the key: not under the prefix, unknown layout,
 * a bad escape, an empty or invalid name). */
int shardmap__etcd_key_parse(const char *prefix, const char *key, size_t len,
                             struct shardmap__etcd_key *out, shardmap_error *why);

/* The [key, range_end) pair covering everything under prefix ("PREFIX/" .. "PREFIX0"):
 * base64, malloc'ed. Returns 0 or SHARDMAP_ENOMEM. */
int shardmap__etcd_prefix_range(const char *prefix, char **key_b64, char **end_b64);

/* Append to d the op that storing value under key means (put_stream, put_shard or
 * put_cell; nothing for the version key). key_text is the key for messages.
 * Returns 0, SHARDMAP_ECORRUPT (invalid JSON, a missing, extra or ill-typed field, a bad
 * hash key, an invalid name or endpoint, start > end: why names the key and the reason),
 * SHARDMAP_ENOMEM. */
int shardmap__etcd_put_op(shardmap_delta *d, const struct shardmap__etcd_key *k,
                          const char *value, size_t len, const char *key_text,
                          shardmap_error *why);
/* Append to d the op that deleting key means (nothing for the version key). */
int shardmap__etcd_delete_op(shardmap_delta *d, const struct shardmap__etcd_key *k);

/* The body of the one transaction that writes d: compare that no shardmap write landed
 * after d->from_version (PREFIX/version's mod_revision <= from_version), then the puts and
 * deletes of d's ops (the last op on a key wins; delete_stream also deletes the stream's
 * shard keys) and a put of PREFIX/version with write_id. Returns the body, or NULL with why set: SHARDMAP_EINVAL (a delta etcd cannot
 * take in one transaction: it deletes a stream and also writes one of its shards),
 * SHARDMAP_ENOMEM. */
json_t *shardmap__etcd_txn_body(const char *prefix, const shardmap_delta *d,
                                const char *write_id, shardmap_error *why);

/* ---------------------------------------------------------------- paged snapshot read
 * A consistent read of everything under prefix: range pages of `page` keys, the first at
 * the current revision and every following one pinned to that revision, collected into one
 * delta from 0 (cells, then streams, then shards, so the delta applies in order). */
struct shardmap__etcd_snap {
	char *prefix;
	unsigned page;
	uint64_t revision; /* the pinned revision: 0 until the first page answered */
	uint64_t max_mod;  /* highest mod_revision under the prefix */
	char *next_key;    /* raw key the next page starts at (NULL: the prefix's start) */
	size_t next_len;
	int done;
	size_t pages, keys;
	shardmap_delta *part[3]; /* cells, streams, shards */
	json_t *streams;         /* names of the streams seen (a set) */
};

int shardmap__etcd_snap_init(struct shardmap__etcd_snap *s, const char *prefix, unsigned page);
void shardmap__etcd_snap_fini(struct shardmap__etcd_snap *s);
/* Forget everything read so far (the pinned revision was compacted: start again). */
void shardmap__etcd_snap_reset(struct shardmap__etcd_snap *s);
/* The JSON body of the next range request. NULL on ENOMEM. */
json_t *shardmap__etcd_snap_request(const struct shardmap__etcd_snap *s);
/* Absorb the answer to that request. Returns 0 (s->done set after the last page),
 * SHARDMAP_ECORRUPT / SHARDMAP_ECONFLICT (bad data: why names the key), SHARDMAP_EIO (an
 * answer that is not a range response), SHARDMAP_ENOMEM. */
int shardmap__etcd_snap_take(struct shardmap__etcd_snap *s, json_t *resp, shardmap_error *why);
/* After the last page: the delta from 0 to the snapshot's version, the highest
 * mod_revision under the prefix (*out NULL when the prefix holds no key at all: an empty
 * store). Returns 0, SHARDMAP_ECONFLICT (a shard of an unknown stream: why names the key),
 * SHARDMAP_ENOMEM. The snapshot's parts move into *out. */
int shardmap__etcd_snap_finish(struct shardmap__etcd_snap *s, shardmap_delta **out,
                               shardmap_error *why);

/* ---------------------------------------------------------------- watch events */
/* The revision an event happened at (its kv.mod_revision), 0 if absent. */
uint64_t shardmap__etcd_event_revision(json_t *event);
/* Events [begin, end) of the array, all of revision to, as one delta from -> to.
 * Returns 0, SHARDMAP_ECORRUPT (why names the key), SHARDMAP_ENOMEM. */
int shardmap__etcd_events_delta(const char *prefix, json_t *events, size_t begin, size_t end,
                                uint64_t from, uint64_t to, shardmap_delta **out,
                                shardmap_error *why);

/* An int64 field the gateway sends as a JSON string (or number): 0 when absent or bad. */
uint64_t shardmap__etcd_u64(json_t *obj, const char *field);

#endif
