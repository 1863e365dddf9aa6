/*
 * apply.h - the apply engine shared by shardmap_apply and the private builder (map.h).
 *
 * The engine knows nothing of publishing: it changes a private version inside a
 * transaction and says whether the result is valid. The caller commits and publishes, or
 * aborts the transaction, which leaves the published map exactly as it was.
 */
#ifndef SHARDMAP_APPLY_H
#define SHARDMAP_APPLY_H

#include "model.h"

/* Check d's versions against the current version cur (DESIGN.md's rules).
 * Returns: 0 (d->from_version == cur); SHARDMAP_ESTALE (to_version <= cur: a duplicate);
 * SHARDMAP_EGAP (from_version > cur, or from < cur < to); SHARDMAP_EINVAL (to <= from).
 * why (may be NULL) says which, with op_index SIZE_MAX. */
int shardmap__apply_check_version(uint64_t cur, const shardmap_delta *d, shardmap_error *why);

/* Apply d's ops in order to v, a version private to t (shardmap__version_begin), then check
 * the end-of-batch invariants incrementally (only around what the batch changed). Streams
 * the batch deletes are pushed on *dead: after a commit they must be freed whole
 * (shardmap__stream_free) once no reader can see the old version; after an abort only the
 * vector's array is freed. v->version is left for the caller to set.
 * Returns: 0; SHARDMAP_EINVAL (a malformed op), SHARDMAP_ECONFLICT (an op or an invariant
 * failed), SHARDMAP_ENOMEM, each with why's op_index and message set. After an error the
 * caller must abort t.
 * Work: O(ops x log(size)) plus, per deleted stream, O(its shards); a stream the batch
 * creates is built in bulk when the batch is large (SHARDMAP__APPLY_BULK_MIN_OPS): O(its
 * shards) plus a sort when its open shards come out of start order, and transient heap
 * memory of about 72 bytes per shard. */
int shardmap__apply_ops(struct shardmap__txn *t, struct shardmap__version *v,
			const shardmap_delta *d, struct shardmap__ptrvec *dead,
			shardmap_error *why);

/* ---- added by bootstrap ---- */

/* Batches of at least this many ops build each stream they create in bulk (apply.c): its
 * records queue up and its trees are built in one pass at the end (or before an op that
 * needs them), with the same result as applying op by op. */
#define SHARDMAP__APPLY_BULK_MIN_OPS 256

/* Test hook: the batch size from which the bulk path is taken (0: every batch; SIZE_MAX:
 * never), process-wide. Thread-safety: call before applying anything (a relaxed store). */
void shardmap__apply_set_bulk_min_ops(size_t n);

#endif
