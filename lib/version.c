/*
 * version.c - the records of a map version: constructors, content hashes, the read-side
 * lookups on a version, the canonical delta of a version, and freeing a version whole.
 *
 * For apply (which builds records inside a transaction), the lookup path, snapshots,
 * exports and peers (which walk a version as one canonical delta), and the map (which frees
 * retired streams and versions after their grace period and the last version at close).
 *
 * Each record is one allocation: struct, strings and endpoint array together. Its content
 * hash is XXH3-64 of its canonical bytes (a tag byte, then each field in a fixed order, every
 * string length-prefixed, optional strings behind a presence byte, hash keys big-endian), and
 * a version's digest is the wrapping sum of its records' hashes: equal content gives an equal
 * digest whatever order the records were written in, and apply keeps it current per op by
 * adding the hash of each new record and subtracting that of each removed one.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "version.h"

/* ---------------------------------------------------------------- canonical bytes */

/* Collects canonical bytes in a small buffer; spills into a streaming state only for records
 * larger than the buffer (cells with many endpoints). XXH3 gives the same value either way. */
struct canon {
	unsigned char buf[1024];
	size_t n;
	int streaming;
	XXH3_state_t state;
};

static void canon_bytes(struct canon *c, const void *p, size_t n)
{
	if (c->n + n > sizeof c->buf) {
		if (!c->streaming) {
			XXH3_64bits_reset(&c->state);
			c->streaming = 1;
		}
		XXH3_64bits_update(&c->state, c->buf, c->n);
		c->n = 0;
		if (n > sizeof c->buf) {
			XXH3_64bits_update(&c->state, p, n);
			return;
		}
	}
	memcpy(c->buf + c->n, p, n);
	c->n += n;
}

static void canon_u8(struct canon *c, unsigned v)
{
	unsigned char b = (unsigned char)v;
	canon_bytes(c, &b, 1);
}

static void canon_u64(struct canon *c, uint64_t v)
{
	unsigned char b[8];
	for (int i = 0; i < 8; i++)
		b[i] = (unsigned char)(v >> (56 - 8 * i));
	canon_bytes(c, b, sizeof b);
}

/* v big-endian at p; returns p + 8. */
static unsigned char *put_be64(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(v >> (56 - 8 * i));
	return p + 8;
}

static void canon_str(struct canon *c, const char *s)
{
	size_t n = strlen(s);
	canon_u64(c, n);
	canon_bytes(c, s, n);
}

static void canon_opt_str(struct canon *c, const char *s)
{
	canon_u8(c, s != NULL);
	if (s != NULL)
		canon_str(c, s);
}

static uint64_t canon_digest(struct canon *c)
{
	if (!c->streaming)
		return XXH3_64bits(c->buf, c->n);
	XXH3_64bits_update(&c->state, c->buf, c->n);
	return XXH3_64bits_digest(&c->state);
}

static uint64_t cell_hash(const char *id, const char *const *endpoints, size_t n)
{
	struct canon c = {.n = 0};
	canon_u8(&c, 'C');
	canon_str(&c, id);
	canon_u64(&c, n);
	for (size_t i = 0; i < n; i++)
		canon_str(&c, endpoints[i]);
	return canon_digest(&c);
}

/* The canonical bytes of shard_hash written straight into a buffer: the shard path of a
 * bootstrap hashes a million of these, and this form costs a third of the general one.
 * Returns 0 when they do not fit (only for strings longer than names may be). */
static uint64_t shard_hash_fast(const char *stream, const shardmap_shard *s, int *ok)
{
	const char *strs[5] = {stream, s->id, s->owner_cell, s->parent, s->adjacent_parent};
	size_t len[5], total = 1 + 32 + 1 + 2;
	for (int i = 0; i < 5; i++) {
		len[i] = strs[i] ? strlen(strs[i]) : 0;
		total += strs[i] ? 8 + len[i] : 0;
	}
	unsigned char buf[1536], *p = buf;
	*ok = total <= sizeof buf;
	if (!*ok)
		return 0;
	uint64_t be[4] = {s->start.hi, s->start.lo, s->end.hi, s->end.lo};
	*p++ = 'H';
	for (int i = 0; i < 5; i++) {
		if (i == 2) { /* the range and the open flag come between id and owner */
			for (int k = 0; k < 4; k++)
				p = put_be64(p, be[k]);
			*p++ = s->open != 0;
		}
		if (i >= 3)
			*p++ = strs[i] != NULL; /* optional strings: a presence byte first */
		if (strs[i] == NULL)
			continue;
		p = put_be64(p, len[i]);
		memcpy(p, strs[i], len[i]);
		p += len[i];
	}
	return XXH3_64bits(buf, (size_t)(p - buf));
}

static uint64_t shard_hash(const char *stream, const shardmap_shard *s)
{
	int ok;
	uint64_t h = shard_hash_fast(stream, s, &ok);
	if (ok)
		return h;
	struct canon c = {.n = 0};
	canon_u8(&c, 'H');
	canon_str(&c, stream);
	canon_str(&c, s->id);
	canon_u64(&c, s->start.hi);
	canon_u64(&c, s->start.lo);
	canon_u64(&c, s->end.hi);
	canon_u64(&c, s->end.lo);
	canon_u8(&c, s->open != 0);
	canon_str(&c, s->owner_cell);
	canon_opt_str(&c, s->parent);
	canon_opt_str(&c, s->adjacent_parent);
	return canon_digest(&c);
}

/* The public view of a shard record (pointers into the record). */
static shardmap_shard shard_view(const struct shardmap__shard *sh)
{
	return (shardmap_shard){
	    .id = sh->id,
	    .start = sh->start,
	    .end = sh->end,
	    .open = sh->open,
	    .owner_cell = sh->owner_cell,
	    .parent = sh->parent,
	    .adjacent_parent = sh->adjacent_parent,
	};
}

uint64_t shardmap__shard_content_hash(const char *stream, const struct shardmap__shard *sh)
{
	shardmap_shard s = shard_view(sh);
	return shard_hash(stream, &s);
}

uint64_t shardmap__stream_content_hash(const char *name, int hash_fn)
{
	struct canon c = {.n = 0};
	canon_u8(&c, 'S');
	canon_str(&c, name);
	canon_u8(&c, (unsigned)hash_fn);
	return canon_digest(&c);
}

/* ---------------------------------------------------------------- constructors */

/* The bytes s takes with its NUL (0 for NULL). */
static size_t size_of(const char *s)
{
	return s ? strlen(s) + 1 : 0;
}

/* Copy s (NULL stays NULL), whose size_of is size, to *p and advance *p past it. */
static const char *place_n(char **p, const char *s, size_t size)
{
	if (s == NULL)
		return NULL;
	char *dst = memcpy(*p, s, size);
	*p += size;
	return dst;
}

/* Copy s (NULL stays NULL) to *p and advance *p past its NUL. */
static const char *place(char **p, const char *s)
{
	return place_n(p, s, size_of(s));
}

struct shardmap__cell *shardmap__cell_new(struct shardmap__txn *t, const char *id,
					  const char *const *endpoints, size_t n_endpoints)
{
	if (n_endpoints > SIZE_MAX / 1024)
		return NULL; /* endpoints are at most 256 bytes each: this cannot fit */
	size_t size = sizeof(struct shardmap__cell) + n_endpoints * sizeof(char *) + size_of(id);
	for (size_t i = 0; i < n_endpoints; i++)
		size += size_of(endpoints[i]);
	struct shardmap__cell *c = shardmap__txn_alloc(t, size);
	if (c == NULL)
		return NULL;
	const char **eps = (const char **)(c + 1);
	char *p = (char *)(eps + n_endpoints);
	c->id = place(&p, id);
	for (size_t i = 0; i < n_endpoints; i++)
		eps[i] = place(&p, endpoints[i]);
	c->endpoints = eps;
	c->n_endpoints = n_endpoints;
	c->id_hash = shardmap__hamt_hash(id);
	c->content_hash = cell_hash(id, endpoints, n_endpoints);
	return c;
}

struct shardmap__shard *shardmap__shard_new(struct shardmap__txn *t, const char *stream,
					    const shardmap_shard *s)
{
	(void)stream; /* the record no longer carries its content hash */
	size_t n_id = size_of(s->id), n_owner = size_of(s->owner_cell);
	size_t n_parent = size_of(s->parent), n_adjacent = size_of(s->adjacent_parent);
	struct shardmap__shard *sh = shardmap__txn_alloc(
	    t, offsetof(struct shardmap__shard, id) + n_id + n_owner + n_parent + n_adjacent);
	if (sh == NULL)
		return NULL;
	char *p = sh->id;
	place_n(&p, s->id, n_id);
	sh->owner_cell = place_n(&p, s->owner_cell, n_owner);
	sh->parent = place_n(&p, s->parent, n_parent);
	sh->adjacent_parent = place_n(&p, s->adjacent_parent, n_adjacent);
	sh->start = s->start;
	sh->end = s->end;
	sh->open = s->open != 0;
	sh->cell_hash = shardmap__hamt_hash(s->owner_cell);
	return sh;
}

static struct shardmap__stream *stream_alloc(struct shardmap__txn *t, const char *name)
{
	struct shardmap__stream *st = shardmap__txn_alloc(t, sizeof *st + size_of(name));
	if (st == NULL)
		return NULL;
	char *p = (char *)(st + 1);
	st->name = place(&p, name);
	return st;
}

struct shardmap__stream *shardmap__stream_new(struct shardmap__txn *t, const char *name,
					      int hash_fn)
{
	struct shardmap__stream *st = stream_alloc(t, name);
	if (st == NULL)
		return NULL;
	const char *kept = st->name;
	memset(st, 0, sizeof *st);
	st->name = kept;
	st->name_hash = shardmap__hamt_hash(name);
	st->hash_fn = hash_fn;
	st->content_hash = shardmap__stream_content_hash(name, hash_fn);
	st->gen = t->gen;
	return st;
}

struct shardmap__stream *shardmap__stream_copy(struct shardmap__txn *t,
					       const struct shardmap__stream *st)
{
	struct shardmap__stream *cp = stream_alloc(t, st->name);
	if (cp == NULL)
		return NULL;
	const char *kept = cp->name;
	*cp = *st;
	cp->name = kept;
	cp->gen = t->gen;
	return cp;
}

struct shardmap__version *shardmap__version_begin(struct shardmap__txn *t,
						  const struct shardmap__version *v)
{
	struct shardmap__version *nv = shardmap__txn_alloc(t, sizeof *nv);
	if (nv == NULL)
		return NULL;
	if (v == NULL) {
		memset(nv, 0, sizeof *nv);
		return nv;
	}
	*nv = *v;
	if (shardmap__txn_retire(t, (void *)v) != 0)
		return NULL; /* nv stays on t's created list: the caller's abort frees it */
	return nv;
}

/* ---------------------------------------------------------------- read-side lookups */

const struct shardmap__stream *shardmap__version_stream(const struct shardmap__version *v,
							const char *name)
{
	return shardmap__hamt_get(&v->streams, shardmap__hamt_hash(name), name);
}

const struct shardmap__shard *shardmap__stream_shard(const struct shardmap__stream *st,
						     const char *shard_id)
{
	return shardmap__hamt_get(&st->by_id, shardmap__hamt_hash(shard_id), shard_id);
}

const struct shardmap__cell *shardmap__version_cell(const struct shardmap__version *v,
						    const char *cell_id)
{
	const struct shardmap__cell_ent *e =
	    shardmap__hamt_get(&v->cells, shardmap__hamt_hash(cell_id), cell_id);
	return e ? e->cell : NULL;
}

/* ---------------------------------------------------------------- canonical delta */

/* The values of a HAMT, gathered for sorting. */
struct gather {
	const void **v;
	size_t n;
};

static int gather_one(void *ctx, const char *key, const void *value)
{
	struct gather *g = ctx;
	g->v[g->n++] = value;
	return 0;
}

/* All values of h in *g (malloc'ed; count h->count). Returns 0 or SHARDMAP_ENOMEM. */
static int gather(const struct shardmap__hamt *h, struct gather *g)
{
	g->n = 0;
	g->v = malloc((h->count ? h->count : 1) * sizeof *g->v);
	if (g->v == NULL)
		return SHARDMAP_ENOMEM;
	shardmap__hamt_foreach(h, gather_one, g);
	return SHARDMAP_OK;
}

static int cmp_cell(const void *a, const void *b)
{
	const struct shardmap__cell_ent *x = *(const void *const *)a, *y = *(const void *const *)b;
	return strcmp(x->cell->id, y->cell->id);
}

static int cmp_stream(const void *a, const void *b)
{
	const struct shardmap__stream *x = *(const void *const *)a, *y = *(const void *const *)b;
	return strcmp(x->name, y->name);
}

static int cmp_shard(const void *a, const void *b)
{
	const struct shardmap__shard *x = *(const void *const *)a, *y = *(const void *const *)b;
	return strcmp(x->id, y->id);
}

static int put_stream_ops(shardmap_delta *d, const struct shardmap__stream *st)
{
	int rc = shardmap_delta_put_stream(d, st->name, st->hash_fn);
	if (rc != 0)
		return rc;
	struct gather g;
	if ((rc = gather(&st->by_id, &g)) != 0)
		return rc;
	qsort(g.v, g.n, sizeof *g.v, cmp_shard);
	for (size_t i = 0; i < g.n && rc == 0; i++) {
		shardmap_shard s = shard_view(g.v[i]);
		rc = shardmap_delta_put_shard(d, st->name, &s);
	}
	free(g.v);
	return rc;
}

static int version_ops(shardmap_delta *d, const struct shardmap__version *v)
{
	struct gather g;
	int rc = gather(&v->cells, &g);
	if (rc != 0)
		return rc;
	qsort(g.v, g.n, sizeof *g.v, cmp_cell);
	for (size_t i = 0; i < g.n && rc == 0; i++) {
		const struct shardmap__cell *c = ((const struct shardmap__cell_ent *)g.v[i])->cell;
		rc = shardmap_delta_put_cell(d, c->id, c->endpoints, c->n_endpoints);
	}
	free(g.v);
	if (rc != 0)
		return rc;
	if ((rc = gather(&v->streams, &g)) != 0)
		return rc;
	qsort(g.v, g.n, sizeof *g.v, cmp_stream);
	for (size_t i = 0; i < g.n && rc == 0; i++)
		rc = put_stream_ops(d, g.v[i]);
	free(g.v);
	return rc;
}

int shardmap__version_to_delta(const struct shardmap__version *v, shardmap_delta **out)
{
	if (v == NULL || out == NULL || v->version == 0)
		return SHARDMAP_EINVAL;
	shardmap_delta *d;
	int rc = shardmap_delta_new(0, v->version, &d);
	if (rc != 0)
		return rc;
	/* The records were validated when they were applied, so the builders can only fail
	 * for memory. */
	if ((rc = version_ops(d, v)) != 0) {
		shardmap_delta_free(d);
		return rc == SHARDMAP_EINVAL ? SHARDMAP_ECORRUPT : rc;
	}
	*out = d;
	return SHARDMAP_OK;
}

/* ---------------------------------------------------------------- freeing whole */

/* Frees each value as the walk reaches it: a walk hands each entry to fn once and never
 * looks at that entry's key (which points into the record) again afterwards. */
struct free_walk {
	struct shardmap__mem *mem;
	void (*free_one)(struct shardmap__mem *mem, void *value);
};

static int free_walk_one(void *ctx, const char *key, const void *value)
{
	struct free_walk *w = ctx;
	w->free_one(w->mem, (void *)value);
	return 0;
}

static void free_values(struct shardmap__mem *mem, const struct shardmap__hamt *h,
			void (*free_one)(struct shardmap__mem *mem, void *value))
{
	struct free_walk w = {mem, free_one};
	shardmap__hamt_foreach(h, free_walk_one, &w);
}

static void free_record(struct shardmap__mem *mem, void *value)
{
	shardmap__free(mem, value);
}

static void free_cell_ent(struct shardmap__mem *mem, void *value)
{
	struct shardmap__cell_ent *e = value;
	shardmap__free(mem, (void *)e->cell);
	shardmap__free(mem, e);
}

static void free_stream(struct shardmap__mem *mem, void *value)
{
	shardmap__stream_free(mem, value);
}

void shardmap__stream_free(struct shardmap__mem *mem, struct shardmap__stream *st)
{
	free_values(mem, &st->by_id, free_record);
	shardmap__btree_free_nodes(mem, &st->open);
	shardmap__hamt_free_nodes(mem, &st->by_id);
	shardmap__free(mem, st);
}

void shardmap__version_free(struct shardmap__mem *mem, struct shardmap__version *v)
{
	if (v == NULL)
		return;
	free_values(mem, &v->streams, free_stream);
	shardmap__hamt_free_nodes(mem, &v->streams);
	free_values(mem, &v->cells, free_cell_ent);
	shardmap__hamt_free_nodes(mem, &v->cells);
	shardmap__free(mem, v);
}
