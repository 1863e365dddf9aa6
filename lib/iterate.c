/*
 * iterate.c - visiting a version's streams and a stream's shards, for tools and front-ends
 * that list what a map holds (the example front-end's /shards). Read-side code: it runs
 * inside the caller's read section on the version that section sees, takes no lock and
 * writes nothing shared; every shardmap_route it hands out points into that version.
 */
#include "map.h"

struct shard_visit {
	const struct shardmap__version *v;
	const struct shardmap__stream *st;
	int (*fn)(void *ctx, const shardmap_route *rt);
	void *ctx;
	int closed_pass; /* 0: open shards from the tree; 1: closed ones from the id index */
};

static int visit(struct shard_visit *sv, const struct shardmap__shard *sh)
{
	shardmap_route rt;
	int rc = shardmap__route_answer(sv->v, sv->st, sh, &rt);
	return rc ? rc : sv->fn(sv->ctx, &rt);
}

static int visit_open(void *ctx, shardmap_hash start, const void *value)
{
	(void)start;
	return visit(ctx, value);
}

static int visit_closed(void *ctx, const char *key, const void *value)
{
	const struct shardmap__shard *sh = value;
	(void)key;
	return sh->open ? 0 : visit(ctx, sh);
}

int shardmap_foreach_shard(shardmap_reader *r, const char *stream,
                           int (*fn)(void *ctx, const shardmap_route *rt), void *ctx)
{
	if (r == NULL || stream == NULL || fn == NULL)
		return SHARDMAP_EINVAL;
	struct shard_visit sv = {.v = shardmap__read_version(r), .fn = fn, .ctx = ctx};
	if (sv.v == NULL)
		return SHARDMAP_ENOTREADY;
	if ((sv.st = shardmap__version_stream(sv.v, stream)) == NULL)
		return SHARDMAP_ENOENT;
	int rc = shardmap__btree_foreach(&sv.st->open, visit_open, &sv);
	return rc ? rc : shardmap__hamt_foreach(&sv.st->by_id, visit_closed, &sv);
}

struct stream_visit {
	int (*fn)(void *ctx, const char *stream, int hash_fn);
	void *ctx;
};

static int visit_stream(void *ctx, const char *key, const void *value)
{
	struct stream_visit *sv = ctx;
	const struct shardmap__stream *st = value;
	(void)key;
	return sv->fn(sv->ctx, st->name, st->hash_fn);
}

int shardmap_foreach_stream(shardmap_reader *r,
                            int (*fn)(void *ctx, const char *stream, int hash_fn), void *ctx)
{
	if (r == NULL || fn == NULL)
		return SHARDMAP_EINVAL;
	const struct shardmap__version *v = shardmap__read_version(r);
	if (v == NULL)
		return SHARDMAP_ENOTREADY;
	struct stream_visit sv = {.fn = fn, .ctx = ctx};
	return shardmap__hamt_foreach(&v->streams, visit_stream, &sv);
}
