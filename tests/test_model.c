/*
 * test_model.c - model-based test of plans, apply and lookups.
 *
 * Thousands of random batches (Kinesis plans: create, split, merge, move; and hand-made
 * put_cell, delete_cell, delete_stream deltas, valid or not) go both to the map and to a
 * deliberately simple reference model written here: plain arrays of ranges, a linear scan to
 * route, Kinesis's rules restated. After every batch the two must agree on the version, on
 * the answer of every plan and apply (code, and nothing changed on refusal), on routing of
 * random keys and hashes and of both ends of every open shard (shard id, range, open flag,
 * lineage, owner, endpoints), on find_shard for every shard id ever issued, and on the stats
 * counts. A failure names the seed and the batch; SHARDMAP_TEST_SEED replays one.
 */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shardmap.h"

typedef unsigned __int128 u128;

static const u128 max128 = ~(u128)0;

static u128 to_u128(shardmap_hash h)
{
	return (u128)h.hi << 64 | h.lo;
}

static shardmap_hash from_u128(u128 v)
{
	return (shardmap_hash){.hi = (uint64_t)(v >> 64), .lo = (uint64_t)v};
}

/* ---------------------------------------------------------------- randomness */

static uint64_t rng_state;

static uint64_t rng(void) /* splitmix64 */
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
	return z ^ (z >> 31);
}

static unsigned below(unsigned n)
{
	return (unsigned)(rng() % n);
}

static u128 rng128(void)
{
	return (u128)rng() << 64 | rng();
}

/* Uniform-ish in [lo, hi]. */
static u128 rng_between(u128 lo, u128 hi)
{
	u128 width = hi - lo;
	return width == max128 ? rng128() : lo + rng128() % (width + 1);
}

/* ---------------------------------------------------------------- the reference model */

#define MAX_CELLS   10
#define MAX_STREAMS 6
#define MAX_EP	    3

struct m_cell {
	int alive;
	char id[24];
	int n_ep;
	char ep[MAX_EP][64];
};

/* A shard's sequence number is its index in its stream's array and its id's number. */
struct m_shard {
	u128 start, end;
	int open;
	int owner;	  /* cell index */
	long parent, adj; /* sequence numbers, -1 = none */
};

struct m_stream {
	int alive;
	char name[24];
	int hash_fn;
	struct m_shard *shards; /* shards[seq] */
	size_t n, cap;		/* n = next_seq */
	size_t ever;		/* ids issued under this name since the test began (max n) */
};

struct model {
	uint64_t version;
	struct m_cell cells[MAX_CELLS];
	struct m_stream streams[MAX_STREAMS];
};

static struct model M;
static shardmap *m;
static shardmap_reader *r;
static uint64_t seed;
static int batch;

/* The message is formatted only on failure: checks run millions of times. */
#define CHECK(cond, ...)                                                                           \
	do {                                                                                       \
		if (!(cond))                                                                       \
			cr_assert_fail("seed %" PRIu64 " batch %d: %s", seed, batch,               \
				       ctx_text(__VA_ARGS__));                                     \
	} while (0)

static char ctx_buf[512];

__attribute__((format(printf, 1, 2))) static const char *ctx_text(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(ctx_buf, sizeof ctx_buf, fmt, ap);
	va_end(ap);
	return ctx_buf;
}

static void seq_id(char out[32], long seq)
{
	snprintf(out, 32, "shardId-%012ld", seq);
}

static struct m_shard *m_add_shard(struct m_stream *st)
{
	if (st->n == st->cap) {
		st->cap = st->cap ? 2 * st->cap : 16;
		st->shards = realloc(st->shards, st->cap * sizeof *st->shards);
		cr_assert_not_null(st->shards);
	}
	struct m_shard *sh = &st->shards[st->n++];
	if (st->n > st->ever)
		st->ever = st->n;
	return sh;
}

static size_t m_open_count(const struct m_stream *st)
{
	size_t n = 0;
	for (size_t i = 0; i < st->n; i++)
		n += st->shards[i].open;
	return n;
}

/* The open shard holding h: a linear scan. */
static long m_route(const struct m_stream *st, u128 h)
{
	for (size_t i = 0; i < st->n; i++)
		if (st->shards[i].open && st->shards[i].start <= h && h <= st->shards[i].end)
			return (long)i;
	return -1;
}

static int m_cell_refs(int cell)
{
	int refs = 0;
	for (int s = 0; s < MAX_STREAMS; s++)
		for (size_t i = 0; M.streams[s].alive && i < M.streams[s].n; i++)
			refs += M.streams[s].shards[i].owner == cell;
	return refs;
}

static int u128_cmp(const void *a, const void *b)
{
	u128 x = *(const u128 *)a, y = *(const u128 *)b;
	return x < y ? -1 : x > y;
}

/* The model itself must hold the invariants, or a disagreement would mean nothing. */
static void m_check_self(void)
{
	for (int s = 0; s < MAX_STREAMS; s++) {
		const struct m_stream *st = &M.streams[s];
		if (!st->alive)
			continue;
		size_t n = 0;
		u128 *starts = malloc(2 * st->n * sizeof *starts);
		cr_assert_not_null(starts);
		for (size_t i = 0; i < st->n; i++) {
			if (!st->shards[i].open)
				continue;
			starts[2 * n] = st->shards[i].start;
			starts[2 * n + 1] = st->shards[i].end;
			n++;
		}
		qsort(starts, n, 2 * sizeof *starts, u128_cmp);
		CHECK(n > 0 && starts[0] == 0 && starts[2 * n - 1] == max128, "model coverage");
		for (size_t i = 0; i + 1 < n; i++)
			CHECK(starts[2 * i + 1] + 1 == starts[2 * i + 2], "model gap or overlap");
		free(starts);
	}
}

/* ---------------------------------------------------------------- comparing */

static void expect_same_str(const char *got, const char *want, const char *what)
{
	if (want == NULL)
		CHECK(got == NULL, "%s: expected none, got %s", what, got);
	else
		CHECK(got != NULL && strcmp(got, want) == 0, "%s: expected %s, got %s", what, want,
		      got ? got : "(none)");
}

static void expect_seq_str(const char *got, long seq, const char *what)
{
	char id[32];
	seq_id(id, seq);
	expect_same_str(got, seq < 0 ? NULL : id, what);
}

/* A route answer against model shard seq of stream st. */
static void expect_route(const shardmap_route *rt, const struct m_stream *st, long seq,
			 const char *how)
{
	const struct m_shard *sh = &st->shards[seq];
	const struct m_cell *c = &M.cells[sh->owner];
	CHECK(rt->version == M.version, "%s: version %" PRIu64 " != %" PRIu64, how, rt->version,
	      M.version);
	expect_same_str(rt->stream, st->name, how);
	expect_seq_str(rt->shard_id, seq, how);
	CHECK(to_u128(rt->start) == sh->start && to_u128(rt->end) == sh->end, "%s: range", how);
	CHECK(rt->open == sh->open, "%s: open flag", how);
	expect_seq_str(rt->parent, sh->parent, how);
	expect_seq_str(rt->adjacent_parent, sh->adj, how);
	expect_same_str(rt->cell_id, c->id, how);
	CHECK(rt->n_endpoints == (size_t)c->n_ep, "%s: %zu endpoints, want %d", how,
	      rt->n_endpoints, c->n_ep);
	for (int i = 0; i < c->n_ep; i++)
		expect_same_str(rt->endpoints[i], c->ep[i], how);
}

static void check_route_hash(const struct m_stream *st, u128 h)
{
	shardmap_route rt;
	int rc = shardmap_route_hash(r, st->name, from_u128(h), &rt);
	CHECK(rc == 0, "route_hash %s: %s", st->name, shardmap_strerror(rc));
	long want = m_route(st, h);
	CHECK(want >= 0, "model has no shard for a hash");
	expect_route(&rt, st, want, "route_hash");
}

static void check_stream(const struct m_stream *st)
{
	shardmap_route rt;
	/* every id ever issued under this name, and one past: found only if the stream has it
	 * now (a deleted stream has none; a re-created one starts again from 0) */
	for (size_t i = 0; i <= st->ever; i++) {
		char id[32];
		seq_id(id, (long)i);
		int rc = shardmap_find_shard(r, st->name, id, &rt);
		if (st->alive && i < st->n) {
			CHECK(rc == 0, "find_shard %s %s: %s", st->name, id, shardmap_strerror(rc));
			expect_route(&rt, st, (long)i, "find_shard");
		} else {
			CHECK(rc == SHARDMAP_ENOENT, "find_shard %s %s: %s, want ENOENT", st->name,
			      id, shardmap_strerror(rc));
		}
	}
	if (!st->alive) {
		CHECK(shardmap_route_hash(r, st->name, from_u128(rng128()), &rt) == SHARDMAP_ENOENT,
		      "deleted stream %s still routes", st->name);
		CHECK(shardmap_route_key(r, st->name, "k", 1, &rt) == SHARDMAP_ENOENT,
		      "deleted stream %s still routes keys", st->name);
		return;
	}
	/* both ends of every open shard route to it; no model scan needed */
	for (size_t i = 0; i < st->n; i++) {
		const struct m_shard *sh = &st->shards[i];
		if (!sh->open)
			continue;
		for (int end = 0; end < 2; end++) {
			int rc = shardmap_route_hash(r, st->name,
						     from_u128(end ? sh->end : sh->start), &rt);
			CHECK(rc == 0, "route_hash: %s", shardmap_strerror(rc));
			expect_route(&rt, st, (long)i, end ? "route end" : "route start");
		}
	}
	/* random hashes */
	for (int k = 0; k < 24; k++)
		check_route_hash(st, rng128());
	/* random partition keys, hashed by the map with the stream's function */
	for (int k = 0; k < 24; k++) {
		unsigned char key[40];
		size_t len = below(sizeof key + 1);
		for (size_t i = 0; i < len; i++)
			key[i] = (unsigned char)rng();
		int rc = shardmap_route_key(r, st->name, key, len, &rt);
		CHECK(rc == 0, "route_key: %s", shardmap_strerror(rc));
		u128 h = to_u128(shardmap_hash_key(st->hash_fn, key, len));
		expect_route(&rt, st, m_route(st, h), "route_key");
	}
}

static void check_all(void)
{
	m_check_self();
	CHECK(shardmap_version(m) == M.version, "map version %" PRIu64 ", model %" PRIu64,
	      shardmap_version(m), M.version);
	shardmap_read_begin(r);
	for (int s = 0; s < MAX_STREAMS; s++)
		check_stream(&M.streams[s]);
	shardmap_read_end(r);
	shardmap_stats st;
	cr_assert_eq(shardmap_stats_get(m, &st), 0);
	uint64_t streams = 0, open = 0, closed = 0, cells = 0;
	for (int s = 0; s < MAX_STREAMS; s++) {
		if (!M.streams[s].alive)
			continue;
		streams++;
		size_t o = m_open_count(&M.streams[s]);
		open += o;
		closed += M.streams[s].n - o;
	}
	for (int c = 0; c < MAX_CELLS; c++)
		cells += M.cells[c].alive;
	CHECK(st.version == M.version && st.streams == streams && st.open_shards == open &&
		  st.closed_shards == closed && st.cells == cells,
	      "stats: streams %" PRIu64 "/%" PRIu64 " open %" PRIu64 "/%" PRIu64 " closed %" PRIu64
	      "/%" PRIu64 " cells %" PRIu64 "/%" PRIu64,
	      st.streams, streams, st.open_shards, open, st.closed_shards, closed, st.cells, cells);
}

/* ---------------------------------------------------------------- batches */

enum kind { K_CREATE, K_SPLIT, K_MERGE, K_MOVE, K_PUT_CELL, K_DELETE_CELL, K_DELETE_STREAM, K_N };
static const char *const kind_name[K_N] = {"create",   "split",	      "merge",	      "move",
					   "put_cell", "delete_cell", "delete_stream"};
static unsigned outcomes[K_N][2]; /* [kind][0]: applied, [kind][1]: refused */

static void tally(enum kind k, int rc)
{
	outcomes[k][rc != 0]++;
}

/* Apply a planned (or hand-made) delta; returns the apply code. */
static int apply(shardmap_delta *d)
{
	shardmap_error why;
	int rc = shardmap_apply(m, d, &why);
	shardmap_delta_free(d);
	return rc;
}

/* A plan's answer must be want; on success the delta must apply. Returns 1 if it did. */
static int planned(int rc, shardmap_delta *d, int want, enum kind k)
{
	const char *what = kind_name[k];
	tally(k, rc);
	CHECK(rc == want, "%s: got %s (%s), want %s", what, shardmap_err_name(rc),
	      shardmap_plan_error(), shardmap_err_name(want));
	if (rc != 0) {
		CHECK(shardmap_plan_error()[0] != '\0', "%s: refused without a message", what);
		return 0;
	}
	CHECK(shardmap_plan_error()[0] == '\0', "%s: message after success", what);
	CHECK(shardmap_delta_from(d) == M.version, "%s: planned from the wrong version", what);
	int arc = apply(d);
	CHECK(arc == 0, "%s: planned delta does not apply: %s", what, shardmap_err_name(arc));
	M.version++;
	return 1;
}

/* A random existing cell (any slot when none exists). */
static int random_alive_cell(void)
{
	int alive[MAX_CELLS], n = 0;
	for (int c = 0; c < MAX_CELLS; c++)
		if (M.cells[c].alive)
			alive[n++] = c;
	return n ? alive[below((unsigned)n)] : (int)below(MAX_CELLS);
}

static unsigned n_slots = MAX_STREAMS; /* stream slots a run uses */

/* A random stream slot: existing or not (then the op must answer SHARDMAP_ENOENT). */
static struct m_stream *pick_stream(void)
{
	return &M.streams[below(n_slots)];
}

/* Put cell slot c with fresh random endpoints (new cell or replaced endpoints). */
static void put_cell(int c)
{
	struct m_cell next = {.alive = 1, .n_ep = 1 + (int)below(MAX_EP)};
	snprintf(next.id, sizeof next.id, "cell-%d", c);
	const char *eps[MAX_EP];
	for (int i = 0; i < next.n_ep; i++) {
		snprintf(next.ep[i], sizeof next.ep[i], "10.%d.%u.%d:%u", c, below(256), i,
			 1 + below(65535));
		eps[i] = next.ep[i];
	}
	shardmap_delta *d;
	cr_assert_eq(shardmap_delta_new(M.version, M.version + 1, &d), 0);
	cr_assert_eq(shardmap_delta_put_cell(d, next.id, eps, (size_t)next.n_ep), 0);
	int rc = apply(d);
	tally(K_PUT_CELL, rc);
	CHECK(rc == 0, "put_cell %s: %s", next.id, shardmap_err_name(rc));
	M.cells[c] = next;
	M.version++;
}

static void op_put_cell(void)
{
	put_cell((int)below(MAX_CELLS));
}

static void op_delete_cell(void)
{
	int c = (int)below(MAX_CELLS);
	char id[24];
	snprintf(id, sizeof id, "cell-%d", c);
	shardmap_delta *d;
	cr_assert_eq(shardmap_delta_new(M.version, M.version + 1, &d), 0);
	cr_assert_eq(shardmap_delta_delete_cell(d, id), 0);
	/* a cell can go only when it exists and no shard, open or closed, names it */
	int ok = M.cells[c].alive && m_cell_refs(c) == 0;
	int rc = apply(d);
	tally(K_DELETE_CELL, rc);
	CHECK(rc == (ok ? 0 : SHARDMAP_ECONFLICT), "delete_cell %s: %s", id, shardmap_err_name(rc));
	if (ok) {
		M.cells[c].alive = 0;
		M.version++;
	}
}

static void op_delete_stream(void)
{
	struct m_stream *st = pick_stream();
	if (!st->alive)
		return;
	shardmap_delta *d;
	cr_assert_eq(shardmap_delta_new(M.version, M.version + 1, &d), 0);
	cr_assert_eq(shardmap_delta_delete_stream(d, st->name), 0);
	int rc = apply(d);
	tally(K_DELETE_STREAM, rc);
	CHECK(rc == 0, "delete_stream %s: %s", st->name, shardmap_err_name(rc));
	st->alive = 0;
	st->n = 0;
	M.version++;
}

static void op_create(unsigned max_shards)
{
	struct m_stream *st = pick_stream();
	unsigned n = 1 + below(max_shards);
	size_t n_owners = 1 + below(3);
	int owners[3];
	const char *names[3];
	int dead_owner = 0;
	for (size_t i = 0; i < n_owners; i++) {
		owners[i] = below(8) ? random_alive_cell() : (int)below(MAX_CELLS);
		names[i] = M.cells[owners[i]].id; /* every slot has its id, alive or not */
		dead_owner |= !M.cells[owners[i]].alive;
	}
	int hash_fn = below(2) ? SHARDMAP_HASH_XXH3 : SHARDMAP_HASH_MD5;
	int want = st->alive ? SHARDMAP_ECONFLICT : dead_owner ? SHARDMAP_ENOENT : 0;
	shardmap_delta *d = NULL;
	int rc = shardmap_plan_create_stream(m, st->name, hash_fn, n, names, n_owners, &d);
	if (!planned(rc, d, want, K_CREATE))
		return;
	st->alive = 1;
	st->hash_fn = hash_fn;
	st->n = 0;
	u128 step = n > 1 ? (0 - (u128)n) / n + 1 : 0; /* floor(2^128 / n) */
	for (unsigned i = 0; i < n; i++) {
		struct m_shard *sh = m_add_shard(st);
		*sh = (struct m_shard){.start = step * i,
				       .end = i + 1 < n ? step * (i + 1) - 1 : max128,
				       .open = 1,
				       .owner = owners[i % n_owners],
				       .parent = -1,
				       .adj = -1};
	}
}

/* A random shard seq of st: usually an existing one, sometimes one never issued. */
static long pick_shard(const struct m_stream *st, int open_only)
{
	if (st->n == 0 || below(20) == 0)
		return (long)st->n + (long)below(3);
	for (int tries = 0; tries < 64; tries++) {
		long s = (long)below((unsigned)st->n);
		if (!open_only || st->shards[s].open)
			return s;
	}
	return (long)below((unsigned)st->n);
}

static void op_split(size_t max_open)
{
	struct m_stream *st = pick_stream();
	long s = pick_shard(st, below(4) != 0);
	char id[32];
	seq_id(id, s);
	int exists = st->alive && (size_t)s < st->n;
	const struct m_shard *sh = exists ? &st->shards[s] : NULL;
	if (exists && sh->open && m_open_count(st) >= max_open)
		return; /* keep streams small enough to check exhaustively */
	u128 at;
	if (sh == NULL)
		at = rng128();
	else if (sh->end - sh->start >= 3 && below(5) != 0)
		at = rng_between(sh->start + 2, sh->end - 1); /* valid */
	else {
		/* at or around the forbidden edges */
		u128 edges[] = {sh->start,   sh->start + 1, sh->start + 2,
				sh->end - 1, sh->end,	    sh->end + 1,
				0,	     max128};
		at = edges[below(sizeof edges / sizeof edges[0])];
	}
	int want = !st->alive || !exists				      ? SHARDMAP_ENOENT
		   : !sh->open						      ? SHARDMAP_ECONFLICT
		   : !(at > sh->start && at - sh->start >= 2 && at < sh->end) ? SHARDMAP_ECONFLICT
									      : 0;
	shardmap_delta *d = NULL;
	int rc = shardmap_plan_split(m, st->name, id, from_u128(at), &d);
	if (!planned(rc, d, want, K_SPLIT))
		return;
	struct m_shard parent = st->shards[s];
	st->shards[s].open = 0;
	struct m_shard *left = m_add_shard(st);
	*left = (struct m_shard){parent.start, at - 1, 1, parent.owner, s, -1};
	struct m_shard *right = m_add_shard(st);
	*right = (struct m_shard){at, parent.end, 1, parent.owner, s, -1};
}

static void op_merge(void)
{
	struct m_stream *st = pick_stream();
	long a = pick_shard(st, below(6) != 0), b;
	int exists_a = st->alive && (size_t)a < st->n;
	/* the partner: usually a neighbour of a, else anything */
	b = -1;
	if (exists_a && below(4) != 0) {
		const struct m_shard *sa = &st->shards[a];
		for (size_t i = 0; i < st->n; i++) {
			const struct m_shard *x = &st->shards[i];
			if (x->open && ((sa->end != max128 && x->start == sa->end + 1) ||
					(x->end != max128 && x->end + 1 == sa->start))) {
				b = (long)i;
				if (below(2))
					break;
			}
		}
	}
	if (b < 0)
		b = below(10) == 0 && exists_a ? a : pick_shard(st, 0);
	int exists_b = st->alive && (size_t)b < st->n;
	int want;
	if (!st->alive || !exists_a || !exists_b) {
		want = SHARDMAP_ENOENT;
	} else {
		const struct m_shard *sa = &st->shards[a], *sb = &st->shards[b];
		int adjacent = (sa->end != max128 && sa->end + 1 == sb->start) ||
			       (sb->end != max128 && sb->end + 1 == sa->start);
		want = a == b || !sa->open || !sb->open || !adjacent ? SHARDMAP_ECONFLICT : 0;
	}
	char ida[32], idb[32];
	seq_id(ida, a);
	seq_id(idb, b);
	shardmap_delta *d = NULL;
	int rc = shardmap_plan_merge(m, st->name, ida, idb, &d);
	if (!planned(rc, d, want, K_MERGE))
		return;
	struct m_shard sa = st->shards[a], sb = st->shards[b];
	st->shards[a].open = 0;
	st->shards[b].open = 0;
	struct m_shard *child = m_add_shard(st);
	*child = (struct m_shard){sa.start < sb.start ? sa.start : sb.start,
				  sa.end > sb.end ? sa.end : sb.end,
				  1,
				  sa.owner,
				  a,
				  b};
}

static void op_move(void)
{
	struct m_stream *st = pick_stream();
	long s = pick_shard(st, 0);
	int c = below(6) ? random_alive_cell() : (int)below(MAX_CELLS);
	char id[32], cell[24];
	seq_id(id, s);
	snprintf(cell, sizeof cell, "cell-%d", c);
	int exists = st->alive && (size_t)s < st->n;
	int want = !exists		      ? SHARDMAP_ENOENT
		   : !M.cells[c].alive	      ? SHARDMAP_ENOENT
		   : st->shards[s].owner == c ? SHARDMAP_ECONFLICT
					      : 0;
	shardmap_delta *d = NULL;
	int rc = shardmap_plan_move(m, st->name, id, cell, &d);
	if (!planned(rc, d, want, K_MOVE))
		return;
	st->shards[s].owner = c;
}

/* ---------------------------------------------------------------- runs */

static void model_init(void)
{
	const char *env = getenv("SHARDMAP_TEST_SEED");
	seed = env ? strtoull(env, NULL, 0) : seed;
	rng_state = seed;
	memset(&M, 0, sizeof M);
	for (int s = 0; s < MAX_STREAMS; s++)
		snprintf(M.streams[s].name, sizeof M.streams[s].name, "stream-%d", s);
	for (int c = 0; c < MAX_CELLS; c++)
		snprintf(M.cells[c].id, sizeof M.cells[c].id, "cell-%d", c);
	cr_assert_eq(shardmap_open(&m, NULL), 0);
	cr_assert_eq(shardmap_reader_open(m, &r), 0);
	batch = 0;
	for (int c = 0; c < 4; c++) /* cells 0 .. 3 to start with */
		put_cell(c);
}

static void model_fini(void)
{
	shardmap_reader_close(r);
	shardmap_close(m);
	for (int s = 0; s < MAX_STREAMS; s++)
		free(M.streams[s].shards);
}

struct mix {
	unsigned create, split, merge, move, put_cell, delete_cell, delete_stream;
	unsigned max_create; /* shards per created stream */
	size_t max_open;     /* splits stop at this many open shards in a stream */
	unsigned slots;	     /* stream slots in use (1 .. MAX_STREAMS) */
};

static void run(const struct mix *mx, int batches)
{
	unsigned total = mx->create + mx->split + mx->merge + mx->move + mx->put_cell +
			 mx->delete_cell + mx->delete_stream;
	n_slots = mx->slots;
	for (batch = 1; batch <= batches; batch++) {
		unsigned x = below(total);
		if (x < mx->create)
			op_create(mx->max_create);
		else if ((x -= mx->create) < mx->split)
			op_split(mx->max_open);
		else if ((x -= mx->split) < mx->merge)
			op_merge();
		else if ((x -= mx->merge) < mx->move)
			op_move();
		else if ((x -= mx->move) < mx->put_cell)
			op_put_cell();
		else if ((x -= mx->put_cell) < mx->delete_cell)
			op_delete_cell();
		else
			op_delete_stream();
		check_all();
	}
	/* the mix really exercised what it claims: every kind applied, every plan refused */
	const unsigned weight[K_N] = {mx->create,   mx->split,	     mx->merge,	       mx->move,
				      mx->put_cell, mx->delete_cell, mx->delete_stream};
	for (int k = 0; k < K_N; k++) {
		cr_log_info("%-13s applied %5u refused %5u", kind_name[k], outcomes[k][0],
			    outcomes[k][1]);
		if (weight[k] == 0)
			continue;
		cr_expect_gt(outcomes[k][0], 0, "no %s was applied", kind_name[k]);
		if (k <= K_MOVE || k == K_DELETE_CELL)
			cr_expect_gt(outcomes[k][1], 0, "no %s was refused", kind_name[k]);
	}
}

Test(model, many_small_streams)
{
	/* six streams come and go; every kind of op, valid and not */
	seed = 0x5eed0001;
	model_init();
	struct mix mx = {.create = 8,
			 .split = 30,
			 .merge = 25,
			 .move = 15,
			 .put_cell = 6,
			 .delete_cell = 6,
			 .delete_stream = 2,
			 .max_create = 8,
			 .max_open = 48,
			 .slots = MAX_STREAMS};
	run(&mx, 3000);
	model_fini();
}

Test(model, one_large_stream)
{
	/* a stream of hundreds of open shards: deep trees, splits and merges everywhere */
	seed = 0x5eed0002;
	model_init();
	shardmap_delta *d = NULL;
	const char *const owners[] = {"cell-0", "cell-1", "cell-2", "cell-3"};
	int rc = shardmap_plan_create_stream(m, "stream-0", SHARDMAP_HASH_XXH3, 700, owners, 4, &d);
	cr_assert_eq(rc, 0, "%s", shardmap_plan_error());
	cr_assert_eq(apply(d), 0);
	M.version++;
	struct m_stream *st = &M.streams[0];
	st->alive = 1;
	st->hash_fn = SHARDMAP_HASH_XXH3;
	u128 step = (0 - (u128)700) / 700 + 1;
	for (unsigned i = 0; i < 700; i++) {
		struct m_shard *sh = m_add_shard(st);
		*sh = (struct m_shard){
		    step * i, i + 1 < 700 ? step * (i + 1) - 1 : max128, 1, (int)(i % 4), -1, -1};
	}
	check_all();
	struct mix mx = {.split = 40, .merge = 45, .move = 15, .max_open = 900, .slots = 1};
	run(&mx, 1500);
	model_fini();
}
