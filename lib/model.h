/*
 * model.h - the immutable records of a map version and the version itself.
 *
 * A version is a root: the stream directory and the cell table (HAMTs), each stream with
 * its open shards by start (B+-tree) and all its shards by id (HAMT). Records are immutable
 * once published and shared between versions until a delta replaces them.
 */
#ifndef SHARDMAP_MODEL_H
#define SHARDMAP_MODEL_H

#include <ck_epoch.h>
#include <stdint.h>

#include "btree.h"
#include "delta.h"
#include "hamt.h"

struct shardmap__cell {
	uint64_t id_hash;
	size_t n_endpoints;
	const char *const *endpoints; /* into the same allocation */
	const char *id;               /* into the same allocation */
	uint64_t content_hash;        /* added by map: this record's share of the digest */
};

/* A cell-table entry: the record plus how many shards (open or closed) name it as owner. */
struct shardmap__cell_ent {
	const struct shardmap__cell *cell;
	uint64_t refs;
	uint64_t gen;                 /* added by map: the transaction that made this entry */
};

/* A shard: one allocation of 65 bytes plus its strings (a Kinesis id and a short owner make
 * 96 bytes, a jemalloc size class), the strings stored inline from id[] on. Its share of
 * the version's digest is not stored: shardmap__shard_content_hash recomputes it on the
 * rare paths that remove a shard. (Changed by bootstrap: id was a pointer, open an int, and
 * the record carried its content hash, 32 bytes more per shard.) */
struct shardmap__shard {
	shardmap_hash start, end;
	uint64_t cell_hash;            /* shardmap__hamt_hash(owner_cell) for the route path */
	const char *owner_cell;        /* these point into id[], after the id */
	const char *parent;            /* NULL = none */
	const char *adjacent_parent;   /* NULL = none */
	uint8_t open;
	char id[];                     /* the id, then owner_cell, parent, adjacent_parent */
};

struct shardmap__stream {
	uint64_t name_hash;
	int hash_fn;
	uint64_t next_seq;             /* one past the highest shardId-NNNNNNNNNNNN ever seen */
	uint64_t n_open, n_closed;
	struct shardmap__btree open;   /* start -> shard, open shards only */
	struct shardmap__hamt by_id;   /* id -> shard, open and closed */
	const char *name;              /* into the same allocation */
	uint64_t content_hash;         /* added by map: name and hash_fn's share of the digest */
	uint64_t gen;                  /* added by map: the transaction that made this copy (a
	                                  stream's trees change, so a batch copies it once and
	                                  then changes its copy in place) */
};

struct shardmap__version {
	uint64_t version;
	uint64_t digest;               /* sum of the records' content hashes (order-free) */
	struct shardmap__hamt streams; /* name -> struct shardmap__stream */
	struct shardmap__hamt cells;   /* id -> struct shardmap__cell_ent */
	uint64_t n_streams, n_open, n_closed, n_cells;
	uint64_t published_unix_ns;
	uint64_t publish_seq;          /* added by lookup: set by publish, unique per publish of
	                                  a map (1, 2, ...), so a reader's memo can tell this
	                                  version from any other, even one at the same address */
};

/* Iterate a version in canonical order (cells by id, streams by name, shards by id) as one
 * delta from 0 to v->version: the form snapshots, exports and peers use.
 * Returns 0 or SHARDMAP_ENOMEM. Caller frees *out. */
int shardmap__version_to_delta(const struct shardmap__version *v, shardmap_delta **out);

/* Lookups on a version (read path; no locks). NULL when absent. */
const struct shardmap__stream *shardmap__version_stream(const struct shardmap__version *v,
                                                        const char *name);
const struct shardmap__shard *shardmap__stream_shard(const struct shardmap__stream *st,
                                                     const char *shard_id);
const struct shardmap__cell *shardmap__version_cell(const struct shardmap__version *v,
                                                    const char *cell_id);

#endif
