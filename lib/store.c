/*
 * store.c - the public store API over the store vtables (store.h): opening a store by URI
 * scheme, writing and reading its version, bootstrapping a map from it and attaching a
 * follower. For control planes (write, version) and for maps (bootstrap, follow).
 *
 * Bootstrap is all-or-nothing: the store's deltas are streamed by its load operation into
 * a private builder (map.h); readers keep using the current version throughout; only when
 * every delta applied and validated is the new version published, with one pointer store.
 * On any failure the builder is aborted, the current map keeps serving, and why says what
 * went wrong and where.
 */
#include <string.h>

#include "store.h"

/* Every kind of store this build knows, tried in order by URI prefix. */
static const struct shardmap__store_ops *const store_kinds[] = {
    &shardmap__file_store_ops,
    &shardmap__etcd_store_ops,
};

int shardmap_store_open(const char *uri, shardmap_store **out)
{
	if (uri == NULL || out == NULL)
		return SHARDMAP_EINVAL;
	for (size_t i = 0; i < sizeof store_kinds / sizeof *store_kinds; i++) {
		const struct shardmap__store_ops *ops = store_kinds[i];
		size_t n = strlen(ops->scheme);
		if (strncmp(uri, ops->scheme, n) != 0)
			continue;
		if (ops->abi != SHARDMAP__STORE_ABI)
			return SHARDMAP_ENOTSUP;
		return ops->open(uri + n, out);
	}
	return SHARDMAP_EINVAL; /* unknown scheme */
}

int shardmap_store_write(shardmap_store *s, const shardmap_delta *d)
{
	if (s == NULL || d == NULL)
		return SHARDMAP_EINVAL;
	return s->ops->write(s, d);
}

int shardmap_store_version(shardmap_store *s, uint64_t *out)
{
	if (s == NULL || out == NULL)
		return SHARDMAP_EINVAL;
	return s->ops->version(s, out);
}

void shardmap_store_close(shardmap_store *s)
{
	if (s != NULL)
		s->ops->close(s);
}

/* ---------------------------------------------------------------- bootstrap */

struct bootstrap_ctx {
	struct shardmap__builder *b;
	shardmap_error *why;
};

static int bootstrap_sink(void *ctx, const shardmap_delta *d)
{
	struct bootstrap_ctx *c = ctx;
	return shardmap__builder_apply(c->b, d, c->why);
}

int shardmap__bootstrap_from(shardmap *m, shardmap_store *s, shardmap_error *why)
{
	struct bootstrap_ctx c = {NULL, why};
	if (why != NULL)
		memset(why, 0, sizeof *why);
	int rc = shardmap__builder_start(m, &c.b);
	if (rc != 0)
		return shardmap__error_set(why, rc, SIZE_MAX, "cannot start a private build");
	rc = s->ops->load(s, bootstrap_sink, &c, why);
	if (rc == 0 && shardmap__builder_version(c.b) == 0)
		rc = shardmap__error_set(why, SHARDMAP_ENOENT, SIZE_MAX,
					 "the store is empty (version 0): nothing to bootstrap");
	if (rc == 0 && (rc = shardmap__builder_publish(c.b)) == 0)
		return SHARDMAP_OK;
	if (why != NULL && why->code == 0)
		shardmap__error_set(why, rc, SIZE_MAX, "bootstrap failed: %s",
				    shardmap_strerror(rc));
	shardmap__builder_abort(c.b); /* the current map keeps serving */
	return rc;
}

int shardmap_bootstrap(shardmap *m, shardmap_store *s, shardmap_error *why)
{
	if (m == NULL || s == NULL)
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX, "NULL map or store");
	return shardmap__bootstrap_from(m, s, why);
}

/* ---------------------------------------------------------------- following */

int shardmap_follow(shardmap *m, shardmap_store *s, shardmap_pool *p)
{
	if (m == NULL || s == NULL)
		return SHARDMAP_EINVAL;
	if (s->ops->follow == NULL)
		return SHARDMAP_ENOTSUP;
	struct shardmap__follower *f = NULL;
	int rc = s->ops->follow(s, m, p, &f);
	if (rc != 0)
		return rc;
	rc = shardmap__follower_set(m, f);
	if (rc != 0)
		f->stop(f); /* the map already follows a store: this one never attached */
	return rc;
}

void shardmap_unfollow(shardmap *m)
{
	if (m == NULL)
		return;
	struct shardmap__follower *f = shardmap__follower_take(m);
	if (f != NULL)
		f->stop(f);
}
