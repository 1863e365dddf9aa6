/*
 * store_file.h - what the "file:" store offers beyond the store vtable: compaction (called by
 * shardmapctl compact), a health report (shardmapctl verify, tests), and the whole-file
 * helpers warm-start snapshots share with it.
 */
#ifndef SHARDMAP_STORE_FILE_H
#define SHARDMAP_STORE_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "store.h"

/* File names inside a store directory. */
#define SHARDMAP__FILE_SNAPSHOT "snapshot" /* one codec record: the map as a delta from 0 */
#define SHARDMAP__FILE_JOURNAL	"journal"  /* codec records, each from the previous version */
#define SHARDMAP__FILE_LOCK	"lock"	   /* flock(2) target serialising writers */

/* Fold the journal into a new snapshot atomically (docs in store_file.c): under the store's
 * exclusive lock, build the current map privately, write it as the new snapshot (temp,
 * fsync, rename, fsync dir), then replace the journal with an empty one the same way.
 * Crash-safe at every step. A store whose journal is already empty is left alone.
 * Returns: 0; SHARDMAP_EINVAL (s is not a file store); SHARDMAP_ECORRUPT or
 * SHARDMAP_ECONFLICT (the store cannot be folded: why says where); SHARDMAP_EIO;
 * SHARDMAP_ENOMEM. Thread-safety: MT-safe. Blocking: does I/O, holds the store lock. */
int shardmap__file_store_compact(shardmap_store *s, shardmap_error *why);

/* A file store's state as seen under its lock. */
struct shardmap__file_store_info {
	uint64_t version;	   /* the store's current version */
	uint64_t snapshot_version; /* the snapshot's version (0: no snapshot) */
	uint64_t journal_bytes;	   /* length of the journal's whole records */
	uint64_t torn_tails;	   /* torn journal tails cut off by this handle */
	uint64_t torn_bytes;	   /* bytes they held */
};

/* Fill *out (refreshing from disk under the lock; cuts a torn tail like a write would).
 * Returns: 0, SHARDMAP_EINVAL (not a file store), SHARDMAP_ECORRUPT (why says where),
 * SHARDMAP_EIO. Thread-safety: MT-safe. Blocking: does I/O. */
int shardmap__file_store_info(shardmap_store *s, struct shardmap__file_store_info *out,
			      shardmap_error *why);

/* The largest file that can hold one record (a snapshot). */
#define SHARDMAP__SNAPSHOT_MAX_BYTES                                                               \
	((size_t)SHARDMAP__CODEC_HEADER_BYTES + SHARDMAP__CODEC_MAX_BODY +                         \
	 SHARDMAP__CODEC_TRAILER_BYTES)

/* Decode the contents of a snapshot file (a store's or a warm-start one): exactly one
 * record, from version 0. Errors (SHARDMAP_ECORRUPT, SHARDMAP_ENOMEM) name path.
 * Decodes in place (shardmap__codec_decode_in_place): buf is rewritten, *out borrows its
 * strings from it. Caller frees *out with shardmap__codec_borrowed_free, then buf.
 * (snapshot.c) */
int shardmap__snapshot_decode(uint8_t *buf, size_t len, const char *path, shardmap_delta **out,
			      shardmap_error *why);

/* Read a whole file into a malloc'ed buffer (sized by the file, never more than max bytes:
 * a longer file is SHARDMAP_ECORRUPT). Returns 0, SHARDMAP_ENOENT (no such file),
 * SHARDMAP_ECORRUPT, SHARDMAP_EIO, SHARDMAP_ENOMEM; why names the path. */
int shardmap__file_read(const char *path, size_t max, uint8_t **buf, size_t *len,
			shardmap_error *why);

/* Read a snapshot file whole (at most SHARDMAP__SNAPSHOT_MAX_BYTES) into a buffer from
 * shardmap__big_alloc: free it with shardmap__big_free. Results as shardmap__file_read. */
int shardmap__snapshot_read(const char *path, uint8_t **buf, size_t *len, shardmap_error *why);

/* Replace path atomically with buf: write a temp file beside it, fsync it, rename it over
 * path, fsync the directory. A crash leaves the old or the new content, never a mix.
 * Returns 0 or SHARDMAP_EIO (the temp file is removed). Blocking: does I/O. */
int shardmap__file_replace(const char *path, const void *buf, size_t len);

#endif
