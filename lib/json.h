/*
 * json.h - JSON import and export of maps (jansson), for the CLI, tests and tools.
 *
 * Two documents are understood:
 *   - shardmap's own whole-map document (docs/json.md): export writes the canonical
 *     whole-map delta (shardmap__version_to_delta) as one document; import turns a document
 *     back into a delta from version 0 to the document's version.
 *   - the JSON that the Amazon Kinesis ListShards and DescribeStream APIs return (as the AWS
 *     CLI prints it): import turns it into a delta that creates one md5 stream.
 * Import validates every field and fails with a message that starts with the JSON path of
 * the offending value ("streams[2].shards[5].start: not a decimal hash key ...").
 * Nothing here touches a map: the caller applies or writes the delta.
 */
#ifndef SHARDMAP_JSON_H
#define SHARDMAP_JSON_H

#include <stdint.h>
#include <stdio.h>

#include "delta.h"

/* The "format" and "format_version" members of the whole-map document. */
#define SHARDMAP__JSON_FORMAT	      "shardmap"
#define SHARDMAP__JSON_FORMAT_VERSION 1

/* Write d, a whole map as one delta from version 0 (only put_cell, put_stream and put_shard
 * ops, every shard after or before its stream's put_stream), as a whole-map document to out.
 * Records keep the delta's order within cells, streams and each stream's shards.
 * Returns: 0; SHARDMAP_EINVAL (d is not a whole-map delta, a name is not UTF-8, the version
 * does not fit a JSON integer: why says which); SHARDMAP_EIO (writing failed);
 * SHARDMAP_ENOMEM. why may be NULL. Thread-safety: MT-safe. Blocking: does I/O on out. */
int shardmap__json_export(const shardmap_delta *d, FILE *out, shardmap_error *why);

/* Parse a whole-map document (text[0..len), need not be NUL-terminated) into a delta from
 * version 0 to the document's version: put_cell ops, then for each stream its put_stream
 * and its put_shard ops, in document order.
 * Validates types, names, endpoints, hash keys, duplicate ids, owners that name a cell of
 * the document and, per stream, that the open shards cover the hash space exactly.
 * Returns: 0; SHARDMAP_ECORRUPT (not JSON: why gives line and column); SHARDMAP_EINVAL (a
 * value breaks the schema: why->message starts with its JSON path); SHARDMAP_ENOMEM.
 * Ownership: the caller frees *out with shardmap_delta_free; *out is untouched on error.
 * why may be NULL. Thread-safety: MT-safe. Blocking: never. */
int shardmap__json_import(const char *text, size_t len, shardmap_delta **out, shardmap_error *why);

/* A cell to create along with a Kinesis import. */
struct shardmap__json_cell {
	const char *id;
	const char *const *endpoints;
	size_t n_endpoints;
};

struct shardmap__kinesis_import {
	const char *stream;	   /* the stream to create; NULL: DescribeStream's StreamName */
	const char *const *owners; /* shards are given owners[i % n_owners] in document order */
	size_t n_owners;
	const struct shardmap__json_cell *cells; /* put_cell ops to add first (may be none) */
	size_t n_cells;
	uint64_t from_version; /* the delta goes from_version -> from_version + 1 */
};

/* Parse `aws kinesis list-shards` ({"Shards":[...]}) or `aws kinesis describe-stream`
 * ({"StreamDescription":{"StreamName":..., "Shards":[...]}}) output into a delta that puts
 * the cells asked for, one stream with md5 hashing and its shards: ranges from
 * HashKeyRange, closed when SequenceNumberRange has an EndingSequenceNumber, lineage from
 * ParentShardId and AdjacentParentShardId (kept even when the parent is no longer listed).
 * Members the API may add are ignored; a paginated document (NextToken, HasMoreShards true)
 * is refused because it does not hold every shard.
 * Returns: 0; SHARDMAP_ECORRUPT (not JSON); SHARDMAP_EINVAL (bad options or a value that
 * breaks the API's shape: why->message starts with its JSON path); SHARDMAP_ENOMEM.
 * Ownership: as shardmap__json_import. Thread-safety: MT-safe. Blocking: never. */
int shardmap__json_import_kinesis(const char *text, size_t len,
				  const struct shardmap__kinesis_import *opt, shardmap_delta **out,
				  shardmap_error *why);

#endif
