/*
 * lookup.c - the hot path: route a partition key or an explicit hash key, find a shard by id.
 *
 * For request-routing front-ends, on their own threads, inside a read section. A lookup
 * loads the published version once (shardmap__reader_version: one ck_pr_load_ptr that pairs
 * with publish's fence and store), finds the stream in the version's directory (HAMT by the
 * name's XXH3-64), the open shard whose range holds the hash (shardmap__btree_find, the
 * greatest start <= hash), and the owner cell in the cell table (HAMT by the shard's
 * precomputed cell_hash). It takes no lock, does no atomic read-modify-write, writes only
 * the caller's *out and allocates nothing. Every pointer it returns points into records of
 * that version, which the section keeps alive until shardmap_read_end.
 */
#include "hashkey.h"
#include "map_impl.h"

int shardmap__route_answer(const struct shardmap__version *v, const struct shardmap__stream *st,
                           const struct shardmap__shard *sh, shardmap_route *out)
{
	const struct shardmap__cell_ent *e =
	    shardmap__hamt_get(&v->cells, sh->cell_hash, sh->owner_cell);
	if (e == NULL)
		return SHARDMAP_ENOENT; /* not reached: apply guarantees every owner exists */
	const struct shardmap__cell *c = e->cell;
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
	return SHARDMAP_OK;
}

/* The version and stream a lookup works on. */
static int stream_of(shardmap_reader *r, const char *stream, const struct shardmap__version **v,
		     const struct shardmap__stream **st)
{
	*v = shardmap__reader_version(r);
	if (*v == NULL)
		return SHARDMAP_ENOTREADY;
	*st = shardmap__version_stream(*v, stream);
	return *st ? SHARDMAP_OK : SHARDMAP_ENOENT;
}

static int route(const struct shardmap__version *v, const struct shardmap__stream *st,
		 shardmap_hash h, shardmap_route *out)
{
	const struct shardmap__shard *sh = shardmap__btree_find(&st->open, h);
	if (sh == NULL)
		return SHARDMAP_ENOENT; /* not reached: open shards cover the whole space */
	return shardmap__route_answer(v, st, sh, out);
}

int shardmap_route_hash(shardmap_reader *r, const char *stream, shardmap_hash h,
			shardmap_route *out)
{
	if (r == NULL || stream == NULL || out == NULL)
		return SHARDMAP_EINVAL;
	const struct shardmap__version *v;
	const struct shardmap__stream *st;
	int rc = stream_of(r, stream, &v, &st);
	return rc ? rc : route(v, st, h, out);
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
	if ((rc = shardmap__hash_key(st->hash_fn, key, key_len, &h)) != 0)
		return rc;
	return route(v, st, h, out);
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
	return sh ? shardmap__route_answer(v, st, sh, out) : SHARDMAP_ENOENT;
}
