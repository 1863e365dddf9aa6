/*
 * lookup.c - the hot path: route a partition key, a batch of them or an explicit hash key,
 * find a shard by id.
 *
 * For request-routing front-ends, on their own threads, inside a read section. A lookup
 * loads the published version once (shardmap__reader_version: one ck_pr_load_ptr that pairs
 * with publish's fence and store), finds the stream in the version's directory (HAMT by the
 * name's XXH3-64), the open shard whose range holds the hash (shardmap__btree_find, the
 * greatest start <= hash), and the owner cell in the cell table (HAMT by the shard's
 * precomputed cell_hash). It takes no lock, does no atomic read-modify-write and allocates
 * nothing; it writes only the caller's *out and the reader's own memo.
 *
 * The memo (struct shardmap__memo, map_impl.h) remembers the last stream and, by id hash,
 * the owner cells the reader met in the version it reads, so a run of lookups on one stream
 * costs one directory walk, and a cell one table walk per version. The memo holds only what
 * was found in the version the section reads (same publish_seq; emptied otherwise), whose
 * records the section keeps alive. A cell is remembered only when its id hash is its own in
 * that version (shardmap__hamt_get_alone): then a shard's cell_hash names it exactly.
 *
 * A batch (shardmap_route_keys) resolves the stream once, hashes up to
 * SHARDMAP__BTREE_BATCH keys, walks the tree for all of them together
 * (shardmap__btree_find_batch, which prefetches each next node and the shard records), then
 * answers each: on a big stream the walks' cache misses overlap instead of adding up.
 *
 * Every pointer a lookup returns points into records of that version, which the section
 * keeps alive until shardmap_read_end.
 */
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "hashkey.h"
#include "map_impl.h"

/* The public view of shard sh of stream st in version v, owned by cell c. */
static void fill(const struct shardmap__version *v, const struct shardmap__stream *st,
		 const struct shardmap__shard *sh, const struct shardmap__cell *c,
		 shardmap_route *out)
{
	out->version = v->version;
	out->stream = st->name;
	out->shard_id = sh->id;
	out->start = sh->start;
	out->end = sh->end;
	out->open = sh->open;
	out->parent = sh->parent;
	out->adjacent_parent = sh->adjacent_parent;
	out->cell_id = c->id;
	out->endpoints = c->endpoints;
	out->n_endpoints = c->n_endpoints;
}

int shardmap__route_answer(const struct shardmap__version *v, const struct shardmap__stream *st,
			   const struct shardmap__shard *sh, shardmap_route *out)
{
	const struct shardmap__cell_ent *e =
	    shardmap__hamt_get(&v->cells, sh->cell_hash, sh->owner_cell);
	if (e == NULL)
		return SHARDMAP_ENOENT; /* not reached: apply guarantees every owner exists */
	fill(v, st, sh, e->cell, out);
	return SHARDMAP_OK;
}

/* The owner cell of sh in v (the version the memo holds): from the memo, or the cell table
 * (then remembered in its set's first way, the others moving down one). NULL only if the
 * owner is missing, which apply never allows. */
static const struct shardmap__cell *owner_of(shardmap_reader *r, const struct shardmap__version *v,
					     const struct shardmap__shard *sh)
{
	struct shardmap__memo_set *set = &r->memo.set[sh->cell_hash % SHARDMAP__MEMO_SETS];
	unsigned hit = 0;
	for (unsigned w = 0; w < SHARDMAP__MEMO_WAYS; w++)
		hit |= (unsigned)(set->id_hash[w] == sh->cell_hash) << w;
	if (__builtin_expect(hit != 0, 1)) {
		const struct shardmap__cell *c = set->cell[__builtin_ctz(hit)];
		if (c != NULL)
			return c;
	}
	int alone;
	const struct shardmap__cell_ent *e =
	    shardmap__hamt_get_alone(&v->cells, sh->cell_hash, sh->owner_cell, &alone);
	if (e == NULL)
		return NULL;
	if (alone) {
		const size_t keep = SHARDMAP__MEMO_WAYS - 1;
		memmove(set->id_hash + 1, set->id_hash, keep * sizeof set->id_hash[0]);
		memmove(set->cell + 1, set->cell, keep * sizeof set->cell[0]);
		set->id_hash[0] = sh->cell_hash;
		set->cell[0] = e->cell;
	}
	return e->cell;
}

static int answer(shardmap_reader *r, const struct shardmap__version *v,
		  const struct shardmap__stream *st, const struct shardmap__shard *sh,
		  shardmap_route *out)
{
	const struct shardmap__cell *c = owner_of(r, v, sh);
	if (c == NULL)
		return SHARDMAP_ENOENT; /* not reached: apply guarantees every owner exists */
	fill(v, st, sh, c, out);
	return SHARDMAP_OK;
}

/* The version and stream a lookup works on: the memo's stream when it is the one asked for,
 * else the directory's (then remembered). A memo of another version is emptied first. */
static int stream_of(shardmap_reader *r, const char *stream, const struct shardmap__version **v,
		     const struct shardmap__stream **st)
{
	const struct shardmap__version *cur = shardmap__reader_version(r);
	if (cur == NULL)
		return SHARDMAP_ENOTREADY;
	*v = cur;
	struct shardmap__memo *m = &r->memo;
	if (__builtin_expect(m->seq != cur->publish_seq, 0)) {
		memset(m, 0, sizeof *m);
		m->seq = cur->publish_seq;
	}
	if (m->stream != NULL && strcmp(m->stream->name, stream) == 0) {
		*st = m->stream;
		return SHARDMAP_OK;
	}
	*st = shardmap__version_stream(cur, stream);
	if (*st == NULL)
		return SHARDMAP_ENOENT;
	m->stream = *st;
	return SHARDMAP_OK;
}

static int route(shardmap_reader *r, const struct shardmap__version *v,
		 const struct shardmap__stream *st, shardmap_hash h, shardmap_route *out)
{
	const struct shardmap__shard *sh = shardmap__btree_find(&st->open, h);
	if (sh == NULL)
		return SHARDMAP_ENOENT; /* not reached: open shards cover the whole space */
	return answer(r, v, st, sh, out);
}

int shardmap_route_hash(shardmap_reader *r, const char *stream, shardmap_hash h,
			shardmap_route *out)
{
	if (r == NULL || stream == NULL || out == NULL)
		return SHARDMAP_EINVAL;
	const struct shardmap__version *v;
	const struct shardmap__stream *st;
	int rc = stream_of(r, stream, &v, &st);
	return rc ? rc : route(r, v, st, h, out);
}

int shardmap_route_key(shardmap_reader *r, const char *stream, const void *key, size_t key_len,
		       shardmap_route *out)
{
	if (r == NULL || stream == NULL || out == NULL || (key == NULL && key_len != 0))
		return SHARDMAP_EINVAL;
	const struct shardmap__version *v;
	const struct shardmap__stream *st;
	int rc = stream_of(r, stream, &v, &st);
	if (rc != 0)
		return rc;
	shardmap_hash h;
	if ((rc = shardmap__hash_key_inline(st->hash_fn, key, key_len, &h)) != 0)
		return rc;
	return route(r, v, st, h, out);
}

/* Route one group of at most SHARDMAP__BTREE_BATCH keys: hash them all (or take their
 * explicit hashes), walk the tree for all of them together, then answer each (its record
 * was prefetched by the walk). */
static int route_group(shardmap_reader *r, const struct shardmap__version *v,
		       const struct shardmap__stream *st, const shardmap_key *keys, size_t n,
		       shardmap_route *out)
{
	shardmap_hash hs[SHARDMAP__BTREE_BATCH];
	const void *found[SHARDMAP__BTREE_BATCH];
	for (size_t i = 0; i < n; i++) {
		if (keys[i].explicit_hash != NULL) {
			hs[i] = *keys[i].explicit_hash;
			continue;
		}
		int rc = shardmap__hash_key_inline(st->hash_fn, keys[i].data, keys[i].len, &hs[i]);
		if (rc != 0)
			return rc;
	}
	shardmap__btree_find_batch(&st->open, hs, n, found);
	for (size_t i = 0; i < n; i++) {
		if (found[i] == NULL)
			return SHARDMAP_ENOENT; /* not reached: open shards cover the whole space */
		int rc = answer(r, v, st, found[i], &out[i]);
		if (rc != 0)
			return rc;
	}
	return SHARDMAP_OK;
}

int shardmap_route_keys(shardmap_reader *r, const char *stream, const shardmap_key *keys,
			size_t n, shardmap_route *out)
{
	if (r == NULL || stream == NULL || (n > 0 && (keys == NULL || out == NULL)))
		return SHARDMAP_EINVAL;
	for (size_t i = 0; i < n; i++)
		if (keys[i].data == NULL && keys[i].len != 0)
			return SHARDMAP_EINVAL;
	const struct shardmap__version *v;
	const struct shardmap__stream *st;
	int rc = stream_of(r, stream, &v, &st);
	for (size_t i = 0; rc == 0 && i < n; i += SHARDMAP__BTREE_BATCH) {
		size_t group = n - i < SHARDMAP__BTREE_BATCH ? n - i : SHARDMAP__BTREE_BATCH;
		rc = route_group(r, v, st, keys + i, group, out + i);
	}
	return rc;
}

int shardmap_find_shard(shardmap_reader *r, const char *stream, const char *shard_id,
			shardmap_route *out)
{
	if (r == NULL || stream == NULL || shard_id == NULL || out == NULL)
		return SHARDMAP_EINVAL;
	const struct shardmap__version *v;
	const struct shardmap__stream *st;
	int rc = stream_of(r, stream, &v, &st);
	if (rc != 0)
		return rc;
	const struct shardmap__shard *sh = shardmap__stream_shard(st, shard_id);
	return sh ? answer(r, v, st, sh, out) : SHARDMAP_ENOENT;
}
