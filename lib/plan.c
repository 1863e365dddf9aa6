/*
 * plan.c - Kinesis-semantics plan helpers: create a stream with N evenly split shards, split
 * a shard at a hash key, merge two adjacent shards, move a shard to another cell.
 *
 * For control planes (the CLI, tests, a user's tool). A plan reads the current version
 * (pinned under the write lock, so it cannot be retired meanwhile), checks Kinesis's rules,
 * and returns a delta from that version to the next; it changes nothing itself. The delta
 * applies only onto the version it was planned against: if another writer got there first,
 * apply answers SHARDMAP_ESTALE and the caller plans again. The pin is held only while the
 * plan reads the version (create_stream builds its N shards after releasing it).
 *
 * Every refusal has its own message, kept per thread for shardmap_plan_error.
 *
 * Moving a shard to the cell that already owns it is refused (SHARDMAP_ECONFLICT, "already
 * owned"): Kinesis has no move, and a plan that changes nothing would still burn a version.
 * A caller retrying a move can treat that answer as done. Closed shards may be moved: their
 * records stay readable by id and name an owner like open ones.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "map.h"

typedef unsigned __int128 u128;

#define SEQ_LIMIT 1000000000000u /* shardId-NNNNNNNNNNNN: twelve digits */

static _Thread_local char plan_error[1024];

const char *shardmap_plan_error(void)
{
	return plan_error;
}

/* Record why a plan failed; returns code. */
__attribute__((format(printf, 2, 3))) static int refuse(int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(plan_error, sizeof plan_error, fmt, ap);
	va_end(ap);
	return code;
}

static u128 to_u128(shardmap_hash h)
{
	return (u128)h.hi << 64 | h.lo;
}

static shardmap_hash from_u128(u128 v)
{
	return (shardmap_hash){.hi = (uint64_t)(v >> 64), .lo = (uint64_t)v};
}

static void format_shard_id(char out[32], uint64_t seq)
{
	snprintf(out, 32, "shardId-%012" PRIu64, seq);
}

/* The public form of a shard record (pointers into the record). */
static shardmap_shard shard_of(const struct shardmap__shard *r)
{
	return (shardmap_shard){.id = r->id,
				.start = r->start,
				.end = r->end,
				.open = r->open,
				.owner_cell = r->owner_cell,
				.parent = r->parent,
				.adjacent_parent = r->adjacent_parent};
}

/* A plan in progress: the pinned version and the delta being built. */
struct plan {
	const shardmap *m;
	const struct shardmap__version *v; /* NULL before the first publish */
	int pinned;
	shardmap_delta *d;
};

/* Pin the current version and start the delta to the next one. */
static int plan_begin(struct plan *p, const shardmap *m)
{
	p->m = m;
	p->v = shardmap__pin(m);
	p->pinned = 1;
	uint64_t cur = p->v ? p->v->version : 0;
	p->d = NULL;
	if (shardmap_delta_new(cur, cur + 1, &p->d) != 0) {
		shardmap__unpin(m);
		return refuse(SHARDMAP_ENOMEM, "out of memory");
	}
	return SHARDMAP_OK;
}

/* Let the version go: p->v must not be used after this. */
static void plan_unpin(struct plan *p)
{
	if (p->pinned)
		shardmap__unpin(p->m);
	p->pinned = 0;
	p->v = NULL;
}

/* Unpin; hand the delta out when rc is 0, free it otherwise. Returns rc. */
static int plan_end(struct plan *p, int rc, shardmap_delta **out)
{
	plan_unpin(p);
	if (rc != 0) {
		shardmap_delta_free(p->d);
		return rc;
	}
	plan_error[0] = '\0';
	*out = p->d;
	return SHARDMAP_OK;
}

/* Append a put_shard op: on arguments already checked, only memory can fail. */
static int put_shard(struct plan *p, const char *stream, const shardmap_shard *s)
{
	int rc = shardmap_delta_put_shard(p->d, stream, s);
	if (rc == SHARDMAP_EINVAL) /* a record already in the map always passes these checks */
		return refuse(rc, "shard '%s' of stream '%s' cannot be written", s->id, stream);
	return rc ? refuse(rc, "out of memory") : SHARDMAP_OK;
}

static int find_stream(const struct plan *p, const char *stream,
		       const struct shardmap__stream **out)
{
	*out = p->v ? shardmap__version_stream(p->v, stream) : NULL;
	if (*out == NULL)
		return refuse(SHARDMAP_ENOENT, "stream '%s' does not exist", stream);
	return SHARDMAP_OK;
}

/* Find shard `id` of st; `role` names it in the message ("shard", "adjacent shard"). */
static int find_shard(const struct shardmap__stream *st, const char *id, const char *role,
		      const struct shardmap__shard **out)
{
	*out = shardmap__stream_shard(st, id);
	if (*out == NULL)
		return refuse(SHARDMAP_ENOENT, "%s '%s' does not exist in stream '%s'", role, id,
			      st->name);
	return SHARDMAP_OK;
}

static int check_open(const struct shardmap__shard *s, const char *role)
{
	if (!s->open)
		return refuse(SHARDMAP_ECONFLICT, "%s '%s' is closed", role, s->id);
	return SHARDMAP_OK;
}

/* The next n shard ids of st must fit in twelve digits. */
static int check_ids_left(const struct shardmap__stream *st, uint64_t n)
{
	if (st->next_seq > SEQ_LIMIT - n)
		return refuse(SHARDMAP_ECONFLICT,
			      "stream '%s' has used every shard id (up to shardId-999999999999)",
			      st->name);
	return SHARDMAP_OK;
}

static int check_stream_arg(const shardmap *m, const char *stream, shardmap_delta **out)
{
	if (m == NULL || out == NULL)
		return refuse(SHARDMAP_EINVAL, "map or out is NULL");
	if (shardmap__check_name(stream) != 0)
		return refuse(SHARDMAP_EINVAL,
			      "stream name is NULL, empty, longer than %d bytes "
			      "or has control characters",
			      SHARDMAP__NAME_MAX);
	return SHARDMAP_OK;
}

static int check_name_arg(const char *name, const char *role)
{
	if (shardmap__check_name(name) != 0)
		return refuse(SHARDMAP_EINVAL,
			      "%s is NULL, empty, longer than %d bytes or has "
			      "control characters",
			      role, SHARDMAP__NAME_MAX);
	return SHARDMAP_OK;
}

/* ---------------------------------------------------------------- create */

static int plan_create(struct plan *p, const char *stream, int hash_fn, unsigned n_shards,
		       const char *const *owners, size_t n_owners)
{
	if (p->v != NULL && shardmap__version_stream(p->v, stream) != NULL)
		return refuse(SHARDMAP_ECONFLICT, "stream '%s' already exists", stream);
	for (size_t i = 0; i < n_owners; i++)
		if (p->v == NULL || shardmap__version_cell(p->v, owners[i]) == NULL)
			return refuse(SHARDMAP_ENOENT, "owner cell '%s' does not exist", owners[i]);
	plan_unpin(p); /* the rest needs only the arguments: let writers go on */
	int rc = shardmap_delta_put_stream(p->d, stream, hash_fn);
	if (rc != 0)
		return refuse(rc, "out of memory");
	/* Kinesis: shard i starts at i * floor(2^128 / N); the last one ends at 2^128-1.
	 * floor(2^128 / N) for N >= 2 is floor((2^128-1) / N), plus one when N divides 2^128. */
	const u128 max = ~(u128)0;
	u128 step = 0;
	if (n_shards > 1)
		step = max / n_shards + (max % n_shards == n_shards - 1u);
	for (unsigned i = 0; i < n_shards; i++) {
		char id[32];
		format_shard_id(id, i);
		u128 start = step * i;
		u128 end = i + 1 < n_shards ? step * (i + 1) - 1 : max;
		shardmap_shard s = {.id = id,
				    .start = from_u128(start),
				    .end = from_u128(end),
				    .open = 1,
				    .owner_cell = owners[i % n_owners]};
		if ((rc = put_shard(p, stream, &s)) != 0)
			return rc;
	}
	return SHARDMAP_OK;
}

int shardmap_plan_create_stream(const shardmap *m, const char *stream, int hash_fn,
				unsigned n_shards, const char *const *owner_cells, size_t n_owners,
				shardmap_delta **out)
{
	int rc = check_stream_arg(m, stream, out);
	if (rc != 0)
		return rc;
	if (hash_fn != SHARDMAP_HASH_XXH3 && hash_fn != SHARDMAP_HASH_MD5)
		return refuse(SHARDMAP_EINVAL, "unknown hash function %d", hash_fn);
	if (n_shards == 0)
		return refuse(SHARDMAP_EINVAL, "a stream needs at least one shard");
	if (owner_cells == NULL || n_owners == 0)
		return refuse(SHARDMAP_EINVAL, "no owner cells given");
	for (size_t i = 0; i < n_owners; i++) {
		char role[48];
		snprintf(role, sizeof role, "owner cell #%zu", i);
		if ((rc = check_name_arg(owner_cells[i], role)) != 0)
			return rc;
	}
	struct plan p;
	if ((rc = plan_begin(&p, m)) != 0)
		return rc;
	return plan_end(&p, plan_create(&p, stream, hash_fn, n_shards, owner_cells, n_owners), out);
}

/* ---------------------------------------------------------------- split */

static int plan_split(struct plan *p, const char *stream, const char *id, shardmap_hash at)
{
	const struct shardmap__stream *st;
	const struct shardmap__shard *parent;
	int rc;
	if ((rc = find_stream(p, stream, &st)) != 0 ||
	    (rc = find_shard(st, id, "shard", &parent)) != 0 ||
	    (rc = check_open(parent, "shard")) != 0)
		return rc;
	/* Kinesis: the new starting hash key must be greater than start + 1 and less than end,
	 * so each child covers at least two hash keys. */
	u128 start = to_u128(parent->start), end = to_u128(parent->end), split = to_u128(at);
	char a[SHARDMAP_HASH_DECIMAL_MAX], b[SHARDMAP_HASH_DECIMAL_MAX];
	shardmap_hash_format(at, a);
	if (split <= start || split - start < 2) {
		shardmap_hash_format(parent->start, b);
		return refuse(SHARDMAP_ECONFLICT,
			      "split point %s must be greater than shard '%s' start %s plus one", a,
			      id, b);
	}
	if (split >= end) {
		shardmap_hash_format(parent->end, b);
		return refuse(SHARDMAP_ECONFLICT,
			      "split point %s must be less than shard '%s' end %s", a, id, b);
	}
	if ((rc = check_ids_left(st, 2)) != 0)
		return rc;
	shardmap_shard closed = shard_of(parent);
	closed.open = 0;
	char left_id[32], right_id[32];
	format_shard_id(left_id, st->next_seq);
	format_shard_id(right_id, st->next_seq + 1);
	shardmap_shard left = {.id = left_id,
			       .start = parent->start,
			       .end = from_u128(split - 1),
			       .open = 1,
			       .owner_cell = parent->owner_cell,
			       .parent = parent->id};
	shardmap_shard right = left;
	right.id = right_id;
	right.start = at;
	right.end = parent->end;
	if ((rc = put_shard(p, stream, &closed)) != 0 || (rc = put_shard(p, stream, &left)) != 0)
		return rc;
	return put_shard(p, stream, &right);
}

int shardmap_plan_split(const shardmap *m, const char *stream, const char *shard_id,
			shardmap_hash new_start, shardmap_delta **out)
{
	int rc = check_stream_arg(m, stream, out);
	if (rc != 0 || (rc = check_name_arg(shard_id, "shard id")) != 0)
		return rc;
	struct plan p;
	if ((rc = plan_begin(&p, m)) != 0)
		return rc;
	return plan_end(&p, plan_split(&p, stream, shard_id, new_start), out);
}

/* ---------------------------------------------------------------- merge */

/* Does a end right before b starts? */
static int ends_before(const struct shardmap__shard *a, const struct shardmap__shard *b)
{
	return to_u128(a->end) != ~(u128)0 && to_u128(a->end) + 1 == to_u128(b->start);
}

static int plan_merge(struct plan *p, const char *stream, const char *id, const char *adj_id)
{
	const struct shardmap__stream *st;
	const struct shardmap__shard *shard, *adj;
	int rc;
	if ((rc = find_stream(p, stream, &st)) != 0 ||
	    (rc = find_shard(st, id, "shard", &shard)) != 0 ||
	    (rc = find_shard(st, adj_id, "adjacent shard", &adj)) != 0)
		return rc;
	if (shard == adj)
		return refuse(SHARDMAP_ECONFLICT, "shard '%s' cannot be merged with itself", id);
	if ((rc = check_open(shard, "shard")) != 0 || (rc = check_open(adj, "adjacent shard")) != 0)
		return rc;
	int shard_first = ends_before(shard, adj);
	if (!shard_first && !ends_before(adj, shard))
		return refuse(SHARDMAP_ECONFLICT, "shards '%s' and '%s' are not adjacent", id,
			      adj_id);
	if ((rc = check_ids_left(st, 1)) != 0)
		return rc;
	shardmap_shard closed_shard = shard_of(shard), closed_adj = shard_of(adj);
	closed_shard.open = 0;
	closed_adj.open = 0;
	char child_id[32];
	format_shard_id(child_id, st->next_seq);
	shardmap_shard child = {.id = child_id,
				.start = shard_first ? shard->start : adj->start,
				.end = shard_first ? adj->end : shard->end,
				.open = 1,
				.owner_cell = shard->owner_cell,
				.parent = shard->id,
				.adjacent_parent = adj->id};
	if ((rc = put_shard(p, stream, &closed_shard)) != 0 ||
	    (rc = put_shard(p, stream, &closed_adj)) != 0)
		return rc;
	return put_shard(p, stream, &child);
}

int shardmap_plan_merge(const shardmap *m, const char *stream, const char *shard_id,
			const char *adjacent_shard_id, shardmap_delta **out)
{
	int rc = check_stream_arg(m, stream, out);
	if (rc != 0 || (rc = check_name_arg(shard_id, "shard id")) != 0 ||
	    (rc = check_name_arg(adjacent_shard_id, "adjacent shard id")) != 0)
		return rc;
	struct plan p;
	if ((rc = plan_begin(&p, m)) != 0)
		return rc;
	return plan_end(&p, plan_merge(&p, stream, shard_id, adjacent_shard_id), out);
}

/* ---------------------------------------------------------------- move */

static int plan_move(struct plan *p, const char *stream, const char *id, const char *cell)
{
	const struct shardmap__stream *st;
	const struct shardmap__shard *shard;
	int rc;
	if ((rc = find_stream(p, stream, &st)) != 0 ||
	    (rc = find_shard(st, id, "shard", &shard)) != 0)
		return rc;
	if (shardmap__version_cell(p->v, cell) == NULL)
		return refuse(SHARDMAP_ENOENT, "cell '%s' does not exist", cell);
	if (strcmp(shard->owner_cell, cell) == 0)
		return refuse(SHARDMAP_ECONFLICT, "shard '%s' is already owned by cell '%s'", id,
			      cell);
	shardmap_shard moved = shard_of(shard);
	moved.owner_cell = cell;
	return put_shard(p, stream, &moved);
}

int shardmap_plan_move(const shardmap *m, const char *stream, const char *shard_id,
		       const char *cell_id, shardmap_delta **out)
{
	int rc = check_stream_arg(m, stream, out);
	if (rc != 0 || (rc = check_name_arg(shard_id, "shard id")) != 0 ||
	    (rc = check_name_arg(cell_id, "cell id")) != 0)
		return rc;
	struct plan p;
	if ((rc = plan_begin(&p, m)) != 0)
		return rc;
	return plan_end(&p, plan_move(&p, stream, shard_id, cell_id), out);
}
