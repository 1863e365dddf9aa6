/*
 * delta_gen.h - deterministic random deltas for the codec, store and snapshot tests and the
 * fuzz corpus generator: a whole valid map as a delta from version 0 (cells, streams whose
 * open shards partition the hash space, and closed shards with Kinesis split/merge lineage),
 * small valid follow-up deltas, and a field-by-field delta comparison.
 *
 * Also small map and file helpers (digest, waiting for a version with a deadline, temp
 * directories). Header-only (static functions) so each test executable takes what it uses.
 */
#ifndef SHARDMAP_TESTS_DELTA_GEN_H
#define SHARDMAP_TESTS_DELTA_GEN_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "delta.h"
#include "map.h"

/* xorshift64*: deterministic across runs so a failure names a reproducible seed. */
static inline uint64_t gen_rand(uint64_t *state)
{
	uint64_t x = *state ? *state : 0x9e3779b97f4a7c15ull;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*state = x;
	return x * 0x2545f4914f6cdd1dull;
}

static inline shardmap_hash gen_hash_add(shardmap_hash a, shardmap_hash b)
{
	shardmap_hash r = {a.hi + b.hi, a.lo + b.lo};
	r.hi += r.lo < a.lo;
	return r;
}

static inline shardmap_hash gen_hash_sub(shardmap_hash a, shardmap_hash b)
{
	shardmap_hash r = {a.hi - b.hi, a.lo - b.lo};
	r.hi -= a.lo < b.lo;
	return r;
}

static inline shardmap_hash gen_hash_shr(shardmap_hash a, unsigned k)
{
	if (k == 0)
		return a;
	if (k >= 64)
		return (shardmap_hash){0, k >= 128 ? 0 : a.hi >> (k - 64)};
	return (shardmap_hash){a.hi >> k, a.lo >> k | a.hi << (64 - k)};
}

struct gen_shard {
	char id[24], parent[24], adjacent[24];
	shardmap_hash start, end;
	int open;
	unsigned cell;
};

/* Append one stream's shards to d: start with one shard over the whole space, then do
 * n_changes random Kinesis splits and merges. */
static inline int gen_stream(shardmap_delta *d, uint64_t *rng, const char *stream, unsigned n_cells,
			     unsigned n_changes)
{
	size_t cap = 1 + 2 * (size_t)n_changes, n = 0;
	unsigned seq = 0;
	struct gen_shard *sh = calloc(cap, sizeof *sh);
	if (sh == NULL)
		return SHARDMAP_ENOMEM;
	snprintf(sh[0].id, sizeof sh[0].id, "shardId-%012u", seq++);
	sh[0].start = (shardmap_hash){0, 0};
	sh[0].end = (shardmap_hash){UINT64_MAX, UINT64_MAX};
	sh[0].open = 1;
	sh[0].cell = (unsigned)(gen_rand(rng) % n_cells);
	n = 1;
	for (unsigned c = 0; c < n_changes && n + 2 <= cap; c++) {
		size_t i = gen_rand(rng) % n, j;
		if (!sh[i].open)
			continue;
		if (gen_rand(rng) % 3 != 0) {
			/* split i at p in (start, end]: p = start + 1 + ((width >> k) & random) */
			shardmap_hash w = gen_hash_sub(sh[i].end, sh[i].start);
			if (w.hi == 0 && w.lo == 0)
				continue;
			shardmap_hash off = gen_hash_shr(w, 1 + (unsigned)(gen_rand(rng) % 127));
			off.hi &= gen_rand(rng);
			off.lo &= gen_rand(rng);
			shardmap_hash p =
			    gen_hash_add(gen_hash_add(sh[i].start, off), (shardmap_hash){0, 1});
			for (int k = 0; k < 2; k++) {
				struct gen_shard *ch = &sh[n++];
				snprintf(ch->id, sizeof ch->id, "shardId-%012u", seq++);
				snprintf(ch->parent, sizeof ch->parent, "%s", sh[i].id);
				ch->start = k == 0 ? sh[i].start : p;
				ch->end =
				    k == 0 ? gen_hash_sub(p, (shardmap_hash){0, 1}) : sh[i].end;
				ch->open = 1;
				ch->cell = (unsigned)(gen_rand(rng) % n_cells);
			}
			sh[i].open = 0;
		} else {
			/* merge i with the open shard that starts right after it */
			if (sh[i].end.hi == UINT64_MAX && sh[i].end.lo == UINT64_MAX)
				continue;
			shardmap_hash next = gen_hash_add(sh[i].end, (shardmap_hash){0, 1});
			for (j = 0; j < n; j++)
				if (sh[j].open && shardmap_hash_cmp(sh[j].start, next) == 0)
					break;
			if (j == n)
				continue;
			struct gen_shard *ch = &sh[n++];
			snprintf(ch->id, sizeof ch->id, "shardId-%012u", seq++);
			snprintf(ch->parent, sizeof ch->parent, "%s", sh[i].id);
			snprintf(ch->adjacent, sizeof ch->adjacent, "%s", sh[j].id);
			ch->start = sh[i].start;
			ch->end = sh[j].end;
			ch->open = 1;
			ch->cell = (unsigned)(gen_rand(rng) % n_cells);
			sh[i].open = sh[j].open = 0;
		}
	}
	int rc = 0;
	for (size_t i = 0; i < n && rc == 0; i++) {
		char owner[24];
		snprintf(owner, sizeof owner, "cell-%u", sh[i].cell);
		shardmap_shard s = {
		    .id = sh[i].id,
		    .start = sh[i].start,
		    .end = sh[i].end,
		    .open = sh[i].open,
		    .owner_cell = owner,
		    .parent = sh[i].parent[0] ? sh[i].parent : NULL,
		    .adjacent_parent = sh[i].adjacent[0] ? sh[i].adjacent : NULL,
		};
		rc = shardmap_delta_put_shard(d, stream, &s);
	}
	free(sh);
	return rc;
}

/* A whole valid map as a delta from 0 to version: 1..5 cells, 1..n_streams streams, each
 * with up to max_changes splits and merges. */
static inline shardmap_delta *gen_map_delta(uint64_t seed, uint64_t version, unsigned n_streams,
					    unsigned max_changes)
{
	uint64_t rng = seed * 0x9e3779b97f4a7c15ull + 1;
	shardmap_delta *d = NULL;
	if (shardmap_delta_new(0, version, &d) != 0)
		return NULL;
	unsigned n_cells = 1 + (unsigned)(gen_rand(&rng) % 5);
	int rc = 0;
	for (unsigned c = 0; c < n_cells && rc == 0; c++) {
		char id[24], e[3][32];
		const char *eps[3] = {e[0], e[1], e[2]};
		unsigned n_eps = 1 + (unsigned)(gen_rand(&rng) % 3);
		snprintf(id, sizeof id, "cell-%u", c);
		for (unsigned k = 0; k < n_eps; k++)
			snprintf(e[k], sizeof e[k], "10.0.%u.%u:%u", c, k,
				 1 + (unsigned)(gen_rand(&rng) % 65535));
		rc = shardmap_delta_put_cell(d, id, eps, n_eps);
	}
	unsigned ns = 1 + (unsigned)(gen_rand(&rng) % (n_streams ? n_streams : 1));
	for (unsigned s = 0; s < ns && rc == 0; s++) {
		char name[32];
		snprintf(name, sizeof name, "stream-%u", s);
		rc = shardmap_delta_put_stream(d, name, (int)(gen_rand(&rng) % 2));
		if (rc == 0)
			rc = gen_stream(d, &rng, name, n_cells,
					(unsigned)(gen_rand(&rng) % (max_changes + 1)));
	}
	if (rc != 0) {
		shardmap_delta_free(d);
		return NULL;
	}
	return d;
}

/* Put cells "c0" .. "c<n-1>" into d, each with the one endpoint "cK:7000" (an endpoint
 * that names its cell: the stress checks rely on it); names[k] gets cell k's id and
 * owners[k] points at it. Returns 0 or the first put's error. */
static inline int gen_named_cells(shardmap_delta *d, unsigned n, char (*names)[8],
				  const char **owners)
{
	for (unsigned c = 0; c < n; c++) {
		char ep[24];
		const char *eps[1] = {ep};
		snprintf(names[c], 8, "c%u", c);
		snprintf(ep, sizeof ep, "c%u:7000", c);
		int rc = shardmap_delta_put_cell(d, names[c], eps, 1);
		if (rc != 0)
			return rc;
		owners[c] = names[c];
	}
	return 0;
}

/* A small valid follow-up delta from -> to: puts a cell named after to_version (so every
 * delta of a chain is distinguishable) with the writer tag in its endpoint host. */
static inline shardmap_delta *gen_step_delta(uint64_t from, uint64_t to, const char *tag)
{
	shardmap_delta *d = NULL;
	char id[64], ep[96];
	const char *eps[1] = {ep};
	if (shardmap_delta_new(from, to, &d) != 0)
		return NULL;
	snprintf(id, sizeof id, "step-%llu", (unsigned long long)to);
	snprintf(ep, sizeof ep, "%s.example:%llu", tag ? tag : "w",
		 (unsigned long long)(to % 65535 + 1));
	if (shardmap_delta_put_cell(d, id, eps, 1) != 0) {
		shardmap_delta_free(d);
		return NULL;
	}
	return d;
}

static inline int gen_str_eq(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

/* 1 when a and b hold the same versions and ops, field by field. */
static inline int gen_delta_equal(const shardmap_delta *a, const shardmap_delta *b)
{
	if (a->from_version != b->from_version || a->to_version != b->to_version ||
	    a->n_ops != b->n_ops)
		return 0;
	for (size_t i = 0; i < a->n_ops; i++) {
		const struct shardmap__op *x = &a->ops[i], *y = &b->ops[i];
		if (x->kind != y->kind || !gen_str_eq(x->stream, y->stream) ||
		    !gen_str_eq(x->id, y->id) || !gen_str_eq(x->owner_cell, y->owner_cell) ||
		    !gen_str_eq(x->parent, y->parent) ||
		    !gen_str_eq(x->adjacent_parent, y->adjacent_parent) ||
		    x->n_endpoints != y->n_endpoints)
			return 0;
		if (x->kind == SHARDMAP__OP_PUT_STREAM && x->hash_fn != y->hash_fn)
			return 0;
		if (x->kind == SHARDMAP__OP_PUT_SHARD &&
		    (shardmap_hash_cmp(x->start, y->start) != 0 ||
		     shardmap_hash_cmp(x->end, y->end) != 0 || x->open != y->open))
			return 0;
		for (size_t k = 0; k < x->n_endpoints; k++)
			if (!gen_str_eq(x->endpoints[k], y->endpoints[k]))
				return 0;
	}
	return 1;
}

/* ---------------------------------------------------------------- map and file helpers
 * (for the tests that have a map; unused static inline functions cost nothing elsewhere) */
/* The digest of m's published version (0 when nothing is published). */
static inline uint64_t gen_map_digest(shardmap *m)
{
	const struct shardmap__version *v = shardmap__pin(m);
	uint64_t digest = v ? v->digest : 0;
	shardmap__unpin(m);
	return digest;
}

/* Wait until m reaches version v or the deadline passes: 1 when it did. Checks every
 * millisecond: a wait on a condition, not a sleep standing in for synchronisation. */
static inline int gen_wait_version(shardmap *m, uint64_t v, unsigned seconds)
{
	struct timespec start, now, tick = {0, 1000000};
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (;;) {
		if (shardmap_version(m) >= v)
			return 1;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec - start.tv_sec > (time_t)seconds)
			return 0;
		nanosleep(&tick, NULL);
	}
}

/* A fresh directory under /tmp (path into buf). Returns buf or NULL. */
static inline char *gen_tmpdir(char *buf, size_t len, const char *tag)
{
	snprintf(buf, len, "/tmp/shardmap-%s-XXXXXX", tag);
	return mkdtemp(buf);
}

static inline int gen_rm_one(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	(void)st, (void)flag, (void)f;
	return remove(path);
}

/* rm -rf path */
static inline void gen_rmtree(const char *path)
{
	nftw(path, gen_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

#endif
