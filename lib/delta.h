/*
 * delta.h - the one currency: a batch of record-level ops from one version to the next.
 *
 * Deltas are built by the public shardmap_delta_* functions (arguments checked there), by
 * the codec's decoder, by store readers and by the Kinesis plan helpers; they are consumed by
 * apply, the codec's encoder, stores and peers. A delta owns copies of all its strings
 * (plain malloc: a delta is not map memory).
 */
#ifndef SHARDMAP_DELTA_H
#define SHARDMAP_DELTA_H

#include "shardmap.h"

#define SHARDMAP__NAME_MAX 255 /* bytes in a stream name, shard id, cell id or endpoint */

enum shardmap__op_kind {
	SHARDMAP__OP_PUT_STREAM = 1,
	SHARDMAP__OP_DELETE_STREAM = 2,
	SHARDMAP__OP_PUT_SHARD = 3,
	SHARDMAP__OP_DELETE_SHARD = 4,
	SHARDMAP__OP_PUT_CELL = 5,
	SHARDMAP__OP_DELETE_CELL = 6,
};

struct shardmap__op {
	enum shardmap__op_kind kind;
	char *stream;          /* stream and shard ops */
	char *id;              /* shard id (shard ops) or cell id (cell ops) */
	int hash_fn;           /* put_stream */
	shardmap_hash start, end;  /* put_shard */
	int open;              /* put_shard */
	char *owner_cell;      /* put_shard */
	char *parent;          /* put_shard, NULL = none */
	char *adjacent_parent; /* put_shard, NULL = none */
	char **endpoints;      /* put_cell */
	size_t n_endpoints;    /* put_cell */
};

struct shardmap_delta {
	uint64_t from_version, to_version;
	struct shardmap__op *ops;
	size_t n_ops, cap_ops;
};

/* "put_stream", "delete_shard", ... */
const char *shardmap__op_name(enum shardmap__op_kind kind);

/* Check a name (stream, shard id, cell id): non-empty, <= SHARDMAP__NAME_MAX bytes, no
 * control characters. Returns 0 or SHARDMAP_EINVAL. */
int shardmap__check_name(const char *s);
/* Check an endpoint "host:port" (port 1..65535). Returns 0 or SHARDMAP_EINVAL. */
int shardmap__check_endpoint(const char *s);

/* Fill *why (may be NULL) with code, op index and a printf-style message. Returns code. */
int shardmap__error_set(shardmap_error *why, int code, size_t op_index, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
