/*
 * delta.c - building deltas: the public shardmap_delta_* functions. Arguments are checked
 * here, when the caller can still fix them; invariants that need the map (coverage, owners,
 * existence) are checked by apply. Every append is all-or-nothing.
 */
#include <stdlib.h>
#include <string.h>

#include "delta.h"

const char *shardmap__op_name(enum shardmap__op_kind kind)
{
	switch (kind) {
	case SHARDMAP__OP_PUT_STREAM:
		return "put_stream";
	case SHARDMAP__OP_DELETE_STREAM:
		return "delete_stream";
	case SHARDMAP__OP_PUT_SHARD:
		return "put_shard";
	case SHARDMAP__OP_DELETE_SHARD:
		return "delete_shard";
	case SHARDMAP__OP_PUT_CELL:
		return "put_cell";
	case SHARDMAP__OP_DELETE_CELL:
		return "delete_cell";
	}
	return "unknown_op";
}

int shardmap__check_name(const char *s)
{
	if (s == NULL || s[0] == '\0')
		return SHARDMAP_EINVAL;
	size_t n = 0;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++, n++) {
		if (*p < 0x20 || *p == 0x7f || n >= SHARDMAP__NAME_MAX)
			return SHARDMAP_EINVAL;
	}
	return SHARDMAP_OK;
}

int shardmap__check_endpoint(const char *s)
{
	if (shardmap__check_name(s) != 0)
		return SHARDMAP_EINVAL;
	const char *colon = strrchr(s, ':');
	if (colon == NULL || colon == s || colon[1] == '\0')
		return SHARDMAP_EINVAL;
	unsigned long port = 0;
	for (const char *p = colon + 1; *p; p++) {
		if (*p < '0' || *p > '9')
			return SHARDMAP_EINVAL;
		port = port * 10 + (unsigned long)(*p - '0');
		if (port > 65535)
			return SHARDMAP_EINVAL;
	}
	return port == 0 ? SHARDMAP_EINVAL : SHARDMAP_OK;
}

int shardmap_delta_new(uint64_t from_version, uint64_t to_version, shardmap_delta **out)
{
	if (out == NULL || to_version <= from_version)
		return SHARDMAP_EINVAL;
	shardmap_delta *d = calloc(1, sizeof *d);
	if (d == NULL)
		return SHARDMAP_ENOMEM;
	d->from_version = from_version;
	d->to_version = to_version;
	*out = d;
	return SHARDMAP_OK;
}

uint64_t shardmap_delta_from(const shardmap_delta *d)
{
	return d ? d->from_version : 0;
}

uint64_t shardmap_delta_to(const shardmap_delta *d)
{
	return d ? d->to_version : 0;
}

size_t shardmap_delta_count(const shardmap_delta *d)
{
	return d ? d->n_ops : 0;
}

static void op_free(struct shardmap__op *op)
{
	free(op->stream);
	free(op->id);
	free(op->owner_cell);
	free(op->parent);
	free(op->adjacent_parent);
	for (size_t i = 0; i < op->n_endpoints; i++)
		free(op->endpoints[i]);
	free(op->endpoints);
}

void shardmap_delta_free(shardmap_delta *d)
{
	if (d == NULL)
		return;
	for (size_t i = 0; i < d->n_ops; i++)
		op_free(&d->ops[i]);
	free(d->ops);
	free(d);
}

/* Copy s into *dst (NULL stays NULL). Returns 0 or SHARDMAP_ENOMEM. */
static int dup_opt(char **dst, const char *s)
{
	*dst = NULL;
	if (s == NULL)
		return SHARDMAP_OK;
	*dst = strdup(s);
	return *dst ? SHARDMAP_OK : SHARDMAP_ENOMEM;
}

/* Append op (whose strings the delta takes over on success; freed on failure). */
static int push_op(shardmap_delta *d, struct shardmap__op *op)
{
	if (d->n_ops == d->cap_ops) {
		size_t cap = d->cap_ops ? d->cap_ops * 2 : 8;
		struct shardmap__op *ops = realloc(d->ops, cap * sizeof *ops);
		if (ops == NULL) {
			op_free(op);
			return SHARDMAP_ENOMEM;
		}
		d->ops = ops;
		d->cap_ops = cap;
	}
	d->ops[d->n_ops++] = *op;
	return SHARDMAP_OK;
}

/* Fill op's common fields; on failure frees what it copied. */
static int op_init(struct shardmap__op *op, enum shardmap__op_kind kind, const char *stream,
                   const char *id)
{
	memset(op, 0, sizeof *op);
	op->kind = kind;
	if (dup_opt(&op->stream, stream) != 0 || dup_opt(&op->id, id) != 0) {
		op_free(op);
		return SHARDMAP_ENOMEM;
	}
	return SHARDMAP_OK;
}

int shardmap_delta_put_cell(shardmap_delta *d, const char *cell_id,
                            const char *const *endpoints, size_t n_endpoints)
{
	if (d == NULL || shardmap__check_name(cell_id) != 0 || n_endpoints == 0 ||
	    endpoints == NULL)
		return SHARDMAP_EINVAL;
	for (size_t i = 0; i < n_endpoints; i++)
		if (shardmap__check_endpoint(endpoints[i]) != 0)
			return SHARDMAP_EINVAL;
	struct shardmap__op op;
	if (op_init(&op, SHARDMAP__OP_PUT_CELL, NULL, cell_id) != 0)
		return SHARDMAP_ENOMEM;
	op.endpoints = calloc(n_endpoints, sizeof *op.endpoints);
	if (op.endpoints == NULL) {
		op_free(&op);
		return SHARDMAP_ENOMEM;
	}
	for (size_t i = 0; i < n_endpoints; i++) {
		op.n_endpoints = i;
		if (dup_opt(&op.endpoints[i], endpoints[i]) != 0) {
			op_free(&op);
			return SHARDMAP_ENOMEM;
		}
	}
	op.n_endpoints = n_endpoints;
	return push_op(d, &op);
}

int shardmap_delta_delete_cell(shardmap_delta *d, const char *cell_id)
{
	if (d == NULL || shardmap__check_name(cell_id) != 0)
		return SHARDMAP_EINVAL;
	struct shardmap__op op;
	if (op_init(&op, SHARDMAP__OP_DELETE_CELL, NULL, cell_id) != 0)
		return SHARDMAP_ENOMEM;
	return push_op(d, &op);
}

int shardmap_delta_put_stream(shardmap_delta *d, const char *stream, int hash_fn)
{
	if (d == NULL || shardmap__check_name(stream) != 0 ||
	    (hash_fn != SHARDMAP_HASH_XXH3 && hash_fn != SHARDMAP_HASH_MD5))
		return SHARDMAP_EINVAL;
	struct shardmap__op op;
	if (op_init(&op, SHARDMAP__OP_PUT_STREAM, stream, NULL) != 0)
		return SHARDMAP_ENOMEM;
	op.hash_fn = hash_fn;
	return push_op(d, &op);
}

int shardmap_delta_delete_stream(shardmap_delta *d, const char *stream)
{
	if (d == NULL || shardmap__check_name(stream) != 0)
		return SHARDMAP_EINVAL;
	struct shardmap__op op;
	if (op_init(&op, SHARDMAP__OP_DELETE_STREAM, stream, NULL) != 0)
		return SHARDMAP_ENOMEM;
	return push_op(d, &op);
}

int shardmap_delta_put_shard(shardmap_delta *d, const char *stream, const shardmap_shard *s)
{
	if (d == NULL || s == NULL || shardmap__check_name(stream) != 0 ||
	    shardmap__check_name(s->id) != 0 || shardmap__check_name(s->owner_cell) != 0 ||
	    (s->parent != NULL && shardmap__check_name(s->parent) != 0) ||
	    (s->adjacent_parent != NULL && shardmap__check_name(s->adjacent_parent) != 0) ||
	    shardmap_hash_cmp(s->start, s->end) > 0)
		return SHARDMAP_EINVAL;
	struct shardmap__op op;
	if (op_init(&op, SHARDMAP__OP_PUT_SHARD, stream, s->id) != 0)
		return SHARDMAP_ENOMEM;
	op.start = s->start;
	op.end = s->end;
	op.open = s->open != 0;
	if (dup_opt(&op.owner_cell, s->owner_cell) != 0 || dup_opt(&op.parent, s->parent) != 0 ||
	    dup_opt(&op.adjacent_parent, s->adjacent_parent) != 0) {
		op_free(&op);
		return SHARDMAP_ENOMEM;
	}
	return push_op(d, &op);
}

int shardmap_delta_delete_shard(shardmap_delta *d, const char *stream, const char *shard_id)
{
	if (d == NULL || shardmap__check_name(stream) != 0 || shardmap__check_name(shard_id) != 0)
		return SHARDMAP_EINVAL;
	struct shardmap__op op;
	if (op_init(&op, SHARDMAP__OP_DELETE_SHARD, stream, shard_id) != 0)
		return SHARDMAP_ENOMEM;
	return push_op(d, &op);
}
