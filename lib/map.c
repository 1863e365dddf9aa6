/*
 * map.c - the map object: opening and closing, reader registration and read sections,
 * applying deltas, private builds, publishing and epoch reclamation.
 *
 * For every user of the library (the public shardmap_* map, reader and apply calls) and for
 * the modules that write maps (stores, snapshots, peers: map.h).
 *
 * What is published: a pointer to an immutable version (model.h), m->current. Who publishes:
 * the writer holding m->write_lock (shardmap_apply or a builder's publish), with one
 * ck_pr_store_ptr after a store fence, so a reader that loads the pointer sees the version
 * and everything it reaches fully built. How readers find it: shardmap__reader_version
 * (map_impl.h) loads m->current inside an epoch section (ck_epoch_begin/end on the reader's
 * own record, NULL section: no reference counting on the hot path).
 *
 * When it is reclaimed: publishing version N+1 hands what N+1 no longer reaches (the old
 * version struct, the nodes and records the batch copied or replaced, the streams it
 * deleted, or for a builder the whole old version) to ck_epoch_call on the writer's own
 * record, then runs ck_epoch_poll, which frees whatever has already passed a grace period.
 * The writer never waits for readers; shardmap__reclaim(m, 1) and shardmap_close wait with
 * ck_epoch_barrier.
 *
 * Why no reader can see freed memory: an object is retired only after the store that makes
 * it unreachable from m->current. A reader can hold it only if it loaded the old pointer
 * inside a section that began before that store; ck_epoch dispatches the callback only
 * after every record active at the time of ck_epoch_call has been seen outside that
 * section (two epoch ticks), so the reader's section has ended. Records are one per reader
 * handle, registered once and recycled through the epoch's free list (ck_epoch_recycle),
 * never freed before the map closes, so a scan never reads a freed record.
 *
 * Lock order: follower_lock and readers_lock are leaves; write_lock is never taken inside a
 * read section. Observers run with write_lock held.
 */
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "apply.h"
#include "map_impl.h"
#include "version.h"

#define NO_OP SIZE_MAX

/* What a publish hands to the epoch: everything the new version no longer reaches. */
struct retired {
	ck_epoch_entry_t entry;
	shardmap *map;
	struct shardmap__ptrvec objs;	 /* single objects: the transaction's retired list */
	struct shardmap__ptrvec streams; /* deleted streams, freed whole */
	struct shardmap__version *whole; /* a version replaced by a builder, freed whole */
	int counts_version;		 /* it retires a published version (stats) */
};

CK_EPOCH_CONTAINER(struct retired, entry, retired_of)

struct shardmap__builder {
	shardmap *map;
	struct shardmap__txn txn;
	struct shardmap__version *v;
	struct retired *retired;
	int failed;	/* the code of a failed apply: only abort is left */
	size_t applied; /* deltas applied */
};

/* ---------------------------------------------------------------- small helpers */

static uint64_t clock_ns(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t shardmap__monotonic_ns(void)
{
	return clock_ns(CLOCK_MONOTONIC);
}

static void count(_Atomic uint64_t *c)
{
	atomic_fetch_add_explicit(c, 1, memory_order_relaxed); /* a statistic: no ordering */
}

/* Epoch records are cache-line aligned (CK_CC_CACHELINE) and must not share lines. */
static void *alloc_lines(size_t size)
{
	size_t line = CK_MD_CACHELINE;
	void *p = aligned_alloc(line, (size + line - 1) / line * line);
	if (p != NULL)
		memset(p, 0, size);
	return p;
}

static void clear_error(shardmap_error *why)
{
	if (why != NULL) {
		why->code = 0;
		why->op_index = NO_OP;
		why->message[0] = '\0';
	}
}

static void count_reject(shardmap *m, int rc)
{
	switch (rc) {
	case SHARDMAP_ESTALE:
		count(&m->rejects_stale);
		break;
	case SHARDMAP_EGAP:
		count(&m->rejects_gap);
		break;
	case SHARDMAP_ECONFLICT:
		count(&m->rejects_conflict);
		break;
	case SHARDMAP_ENOMEM:
		count(&m->rejects_nomem);
		break;
	default:
		count(&m->rejects_invalid);
		break;
	}
}

/* ---------------------------------------------------------------- open and close */

void shardmap_options_init(shardmap_options *opt)
{
	if (opt == NULL)
		return;
	memset(opt, 0, sizeof *opt);
	opt->size = sizeof *opt;
	opt->use_arena = 1;
	opt->hint_rate = 10.0;
	opt->hint_burst = 5;
}

/* Copy the fields the caller's struct has (its size says how many); defaults for the rest. */
static int options_copy(shardmap_options *dst, const shardmap_options *src)
{
	shardmap_options_init(dst);
	if (src == NULL)
		return SHARDMAP_OK;
	if (src->size < offsetof(shardmap_options, use_arena) + sizeof src->use_arena ||
	    src->size > sizeof *src)
		return SHARDMAP_EINVAL;
	memcpy(dst, src, src->size);
	dst->size = sizeof *dst;
	if (isnan(dst->hint_rate) || dst->hint_rate < 0)
		return SHARDMAP_EINVAL;
	return SHARDMAP_OK;
}

int shardmap_open(shardmap **out, const shardmap_options *opt)
{
	if (out == NULL)
		return SHARDMAP_EINVAL;
	shardmap *m = alloc_lines(sizeof *m);
	if (m == NULL)
		return SHARDMAP_ENOMEM;
	int rc = options_copy(&m->options, opt);
	if (rc == 0)
		rc = shardmap__mem_init(&m->mem, m->options.use_arena);
	if (rc == 0 && (m->writer = alloc_lines(sizeof *m->writer)) == NULL) {
		shardmap__mem_fini(&m->mem);
		rc = SHARDMAP_ENOMEM;
	}
	if (rc != 0) {
		free(m);
		return rc;
	}
	ck_epoch_init(&m->epoch);
	ck_epoch_register(&m->epoch, m->writer, NULL);
	ck_sequence_init(&m->figures_seq);
	pthread_mutex_init(&m->write_lock, NULL);
	pthread_mutex_init(&m->follower_lock, NULL);
	pthread_mutex_init(&m->readers_lock, NULL);
	*out = m;
	return SHARDMAP_OK;
}

void shardmap_close(shardmap *m)
{
	if (m == NULL)
		return;
	/* A follower still attached would keep applying: stop it (never with write_lock). */
	struct shardmap__follower *f = shardmap__follower_take(m);
	if (f != NULL)
		f->stop(f);
	pthread_mutex_lock(&m->write_lock);
	/* All readers are closed: the barrier runs every pending free at once. */
	ck_epoch_barrier(m->writer);
	shardmap__version_free(&m->mem, m->current);
	m->current = NULL;
	pthread_mutex_unlock(&m->write_lock);
	for (shardmap_reader *r = m->all_readers, *next; r != NULL; r = next) {
		next = r->all_next;
		free(r);
	}
	free(m->writer);
	shardmap__mem_fini(&m->mem);
	pthread_mutex_destroy(&m->write_lock);
	pthread_mutex_destroy(&m->follower_lock);
	pthread_mutex_destroy(&m->readers_lock);
	free(m);
}

uint64_t shardmap_version(const shardmap *m)
{
	if (m == NULL)
		return 0;
	/* Pairs with the ck_pr_store_64 in publish. A relaxed snapshot by contract: a stale
	 * value only means a newer version was published meanwhile; nothing is dereferenced. */
	return ck_pr_load_64(&m->version_number);
}

const shardmap_options *shardmap__options(const shardmap *m)
{
	return &m->options;
}

struct shardmap__ext_stats *shardmap__ext(shardmap *m)
{
	return &m->ext;
}

struct shardmap__mem *shardmap__map_mem(shardmap *m)
{
	return &m->mem;
}

/* ---------------------------------------------------------------- readers */

int shardmap_reader_open(shardmap *m, shardmap_reader **out)
{
	if (m == NULL || out == NULL)
		return SHARDMAP_EINVAL;
	/* A record another handle gave back (MT-safe: ck's free list is lock-free). */
	ck_epoch_record_t *rec = ck_epoch_recycle(&m->epoch, NULL);
	shardmap_reader *r;
	if (rec != NULL) {
		r = (shardmap_reader *)((char *)rec - offsetof(shardmap_reader, record));
	} else {
		r = alloc_lines(sizeof *r);
		if (r == NULL)
			return SHARDMAP_ENOMEM;
		r->map = m;
		pthread_mutex_lock(&m->readers_lock);
		r->all_next = m->all_readers;
		m->all_readers = r;
		pthread_mutex_unlock(&m->readers_lock);
		ck_epoch_register(&m->epoch, &r->record, NULL);
	}
	/* A recycled handle's memo is tagged with publish_seqs and so harmless, but start clean. */
	memset(&r->memo, 0, sizeof r->memo);
#ifndef NDEBUG
	r->in_section = 0;
#endif
	count(&m->readers);
	*out = r;
	return SHARDMAP_OK;
}

void shardmap_reader_close(shardmap_reader *r)
{
	if (r == NULL)
		return;
#ifndef NDEBUG
	assert(!r->in_section && "shardmap_reader_close inside a read section");
#endif
	/* A statistic: no ordering. */
	atomic_fetch_sub_explicit(&r->map->readers, 1, memory_order_relaxed);
	/* From here another thread may recycle the record: r is not touched again. */
	ck_epoch_unregister(&r->record);
}

void shardmap_read_begin(shardmap_reader *r)
{
	/* NULL section: no out-of-line reference counting (sections do not nest). */
	ck_epoch_begin(&r->record, NULL);
#ifndef NDEBUG
	r->in_section = 1;
#endif
}

void shardmap_read_end(shardmap_reader *r)
{
#ifndef NDEBUG
	r->in_section = 0;
#endif
	/* TSan cannot see the epoch protocol: everything this section read happens before the
	 * frees a later grace period allows (acquired in run_retired). */
	SHARDMAP__TSAN_RELEASE(&r->map->epoch);
	ck_epoch_end(&r->record, NULL);
}

const struct shardmap__version *shardmap__read_version(shardmap_reader *r)
{
	return shardmap__reader_version(r);
}

/* ---------------------------------------------------------------- publish and reclaim */

static struct retired *retired_new(shardmap *m)
{
	struct retired *rt = shardmap__calloc(&m->mem, sizeof *rt);
	if (rt != NULL)
		rt->map = m;
	return rt;
}

/* Free rt and, if its version was committed (and its grace period is over), everything it
 * holds; if not committed, only its arrays (the objects belong to the published version or
 * were freed by the transaction's abort). */
static void retired_free(struct retired *rt, int committed)
{
	struct shardmap__mem *mem = &rt->map->mem;
	if (committed) {
		shardmap__ptrvec_free_all(mem, &rt->objs);
		for (size_t i = 0; i < rt->streams.n; i++)
			shardmap__stream_free(mem, rt->streams.v[i]);
		shardmap__version_free(mem, rt->whole);
		if (rt->counts_version)
			count(&rt->map->versions_freed);
	}
	shardmap__free(mem, rt->streams.v);
	shardmap__free(mem, rt);
}

/* The epoch callback: runs on the thread that polls the writer record, with write_lock
 * held, once no section that could see these objects is still running. */
static void run_retired(ck_epoch_entry_t *e)
{
	struct retired *rt = retired_of(e);
	/* Pairs with the release in shardmap_read_end: the sections that could see these
	 * objects all ended before this grace period did. */
	SHARDMAP__TSAN_ACQUIRE(&rt->map->epoch);
	retired_free(rt, 1);
}

static void figures_update(shardmap *m, const struct shardmap__version *v)
{
	struct shardmap__published_figures *f = &m->figures;
	/* Pairs with ck_sequence_read_begin/retry in shardmap_stats_get: a reader that sees the
	 * same even sequence before and after its loads got one version's figures. */
	ck_sequence_write_begin(&m->figures_seq);
	ck_pr_store_64(&f->version, v->version);
	ck_pr_store_64(&f->streams, v->n_streams);
	ck_pr_store_64(&f->open_shards, v->n_open);
	ck_pr_store_64(&f->closed_shards, v->n_closed);
	ck_pr_store_64(&f->cells, v->n_cells);
	ck_pr_store_64(&f->unix_ns, v->published_unix_ns);
	ck_sequence_write_end(&m->figures_seq);
}

/* Make nv (made from n_deltas deltas) current and hand rt, what nv no longer reaches, to the
 * epoch. write_lock held. */
static void publish(shardmap *m, struct shardmap__version *nv, struct retired *rt,
		    const shardmap_delta *d, uint64_t n_deltas)
{
	/* Only writers store m->current, and we hold write_lock: a plain read is exact. */
	struct shardmap__version *old = m->current;
	nv->published_unix_ns = clock_ns(CLOCK_REALTIME);
	/* Plain: m->publishes is only touched under write_lock, and readers read publish_seq
	 * through the pointer stored below, after the fence (lookup.c's memo keys on it). */
	nv->publish_seq = ++m->publishes;
	SHARDMAP__TSAN_RELEASE(nv);
	/* Orders every store that built nv (its records, nodes and the struct itself) before
	 * the pointer store; pairs with the ck_pr_load_ptr in shardmap__reader_version, whose
	 * later loads all depend on the loaded address. */
	ck_pr_fence_store();
	ck_pr_store_ptr(&m->current, nv);
	/* No fence: shardmap_version reads this number alone and dereferences nothing. */
	ck_pr_store_64(&m->version_number, nv->version);
	figures_update(m, nv);
	atomic_fetch_add_explicit(&m->applies, n_deltas, memory_order_relaxed); /* a statistic */
	rt->counts_version = old != NULL;
	if (old != NULL)
		count(&m->versions_retired);
	/* Readers that loaded the old pointer before the store above may still use what rt
	 * holds: the epoch runs run_retired only after their sections end. ck_epoch_call on
	 * our own record (the writer record is only used with write_lock held). */
	ck_epoch_call(m->writer, &rt->entry, run_retired);
	for (struct shardmap__observer *o = m->observers; o != NULL; o = o->next)
		o->on_publish(o->ctx, nv, d);
	/* Free what earlier publishes retired, if their grace period is over; never waits. */
	ck_epoch_poll(m->writer);
}

int shardmap__reclaim(shardmap *m, int wait)
{
	if (m == NULL)
		return SHARDMAP_EINVAL;
	pthread_mutex_lock(&m->write_lock);
	if (wait)
		ck_epoch_barrier(m->writer);
	else
		ck_epoch_poll(m->writer);
	pthread_mutex_unlock(&m->write_lock);
	/* Relaxed statistics, read after the lock is released: another writer may publish
	 * meanwhile, so clamp rather than trust the two loads to be one snapshot. */
	uint64_t freed = atomic_load_explicit(&m->versions_freed, memory_order_relaxed);
	uint64_t retired = atomic_load_explicit(&m->versions_retired, memory_order_relaxed);
	uint64_t backlog = retired > freed ? retired - freed : 0;
	return backlog > INT_MAX ? INT_MAX : (int)backlog;
}

/* ---------------------------------------------------------------- apply */

/* Derive a new version from cur with d's ops and publish it. write_lock held. */
static int apply_locked(shardmap *m, struct shardmap__version *cur, const shardmap_delta *d,
			shardmap_error *why)
{
	struct retired *rt = retired_new(m);
	if (rt == NULL)
		return shardmap__error_set(why, SHARDMAP_ENOMEM, NO_OP, "out of memory");
	struct shardmap__txn t;
	shardmap__txn_init(&t, &m->mem);
	struct shardmap__version *nv = shardmap__version_begin(&t, cur);
	int rc = nv ? shardmap__apply_ops(&t, nv, d, &rt->streams, why)
		    : shardmap__error_set(why, SHARDMAP_ENOMEM, NO_OP, "out of memory");
	if (rc != 0) {
		shardmap__txn_abort(&t);
		retired_free(rt, 0);
		return rc;
	}
	nv->version = d->to_version;
	shardmap__txn_commit(&t, &rt->objs);
	publish(m, nv, rt, d, 1);
	return SHARDMAP_OK;
}

int shardmap_apply(shardmap *m, const shardmap_delta *d, shardmap_error *why)
{
	clear_error(why);
	if (m == NULL || d == NULL) {
		if (m != NULL)
			count(&m->rejects_invalid);
		return shardmap__error_set(why, SHARDMAP_EINVAL, NO_OP, "NULL map or delta");
	}
	pthread_mutex_lock(&m->write_lock);
	struct shardmap__version *cur = m->current;
	int rc = shardmap__apply_check_version(cur ? cur->version : 0, d, why);
	if (rc == 0)
		rc = apply_locked(m, cur, d, why);
	if (rc != 0)
		count_reject(m, rc);
	pthread_mutex_unlock(&m->write_lock);
	return rc;
}

/* ---------------------------------------------------------------- private builds */

int shardmap__builder_start(shardmap *m, struct shardmap__builder **out)
{
	if (m == NULL || out == NULL)
		return SHARDMAP_EINVAL;
	struct shardmap__builder *b = calloc(1, sizeof *b);
	if (b == NULL)
		return SHARDMAP_ENOMEM;
	b->map = m;
	shardmap__txn_init(&b->txn, &m->mem);
	b->retired = retired_new(m);
	b->v = shardmap__version_begin(&b->txn, NULL);
	if (b->retired == NULL || b->v == NULL) {
		shardmap__builder_abort(b);
		return SHARDMAP_ENOMEM;
	}
	*out = b;
	return SHARDMAP_OK;
}

int shardmap__builder_apply(struct shardmap__builder *b, const shardmap_delta *d,
			    shardmap_error *why)
{
	clear_error(why);
	if (b == NULL || d == NULL)
		return shardmap__error_set(why, SHARDMAP_EINVAL, NO_OP, "NULL builder or delta");
	if (b->failed)
		return shardmap__error_set(
		    why, b->failed, NO_OP,
		    "an earlier delta failed: the build can only be aborted");
	int rc = shardmap__apply_check_version(b->v->version, d, why);
	if (rc != 0)
		return rc; /* nothing was changed: the build goes on */
	rc = shardmap__apply_ops(&b->txn, b->v, d, &b->retired->streams, why);
	if (rc != 0) {
		b->failed = rc;
		return rc;
	}
	b->v->version = d->to_version;
	b->applied++;
	return SHARDMAP_OK;
}

uint64_t shardmap__builder_version(const struct shardmap__builder *b)
{
	return b ? b->v->version : 0;
}

int shardmap__builder_publish(struct shardmap__builder *b)
{
	if (b == NULL || b->applied == 0 || b->failed)
		return SHARDMAP_EINVAL;
	shardmap *m = b->map;
	pthread_mutex_lock(&m->write_lock);
	shardmap__txn_commit(&b->txn, &b->retired->objs);
	b->retired->whole = m->current; /* replaced whatever its version: freed whole */
	publish(m, b->v, b->retired, NULL, b->applied);
	pthread_mutex_unlock(&m->write_lock);
	free(b);
	return SHARDMAP_OK;
}

void shardmap__builder_abort(struct shardmap__builder *b)
{
	if (b == NULL)
		return;
	shardmap__txn_abort(&b->txn);
	if (b->retired != NULL)
		retired_free(b->retired, 0);
	free(b);
}

/* ---------------------------------------------------------------- writers' access */

const struct shardmap__version *shardmap__pin(const shardmap *m)
{
	shardmap *w = (shardmap *)m; /* the lock is mutable state of a const map */
	pthread_mutex_lock(&w->write_lock);
	/* write_lock held: no writer can store or retire m->current until unpin. */
	return w->current;
}

void shardmap__unpin(const shardmap *m)
{
	pthread_mutex_unlock(&((shardmap *)m)->write_lock);
}

void shardmap__observer_add(shardmap *m, struct shardmap__observer *o)
{
	pthread_mutex_lock(&m->write_lock);
	o->next = m->observers;
	m->observers = o;
	pthread_mutex_unlock(&m->write_lock);
}

void shardmap__observer_remove(shardmap *m, struct shardmap__observer *o)
{
	pthread_mutex_lock(&m->write_lock);
	for (struct shardmap__observer **p = &m->observers; *p != NULL; p = &(*p)->next) {
		if (*p == o) {
			*p = o->next;
			break;
		}
	}
	pthread_mutex_unlock(&m->write_lock);
}

int shardmap__follower_set(shardmap *m, struct shardmap__follower *f)
{
	pthread_mutex_lock(&m->follower_lock);
	int rc = m->follower != NULL ? SHARDMAP_EBUSY : SHARDMAP_OK;
	if (rc == 0)
		m->follower = f;
	pthread_mutex_unlock(&m->follower_lock);
	return rc;
}

struct shardmap__follower *shardmap__follower_take(shardmap *m)
{
	pthread_mutex_lock(&m->follower_lock);
	struct shardmap__follower *f = m->follower;
	m->follower = NULL;
	pthread_mutex_unlock(&m->follower_lock);
	return f;
}

int shardmap__follower_catch_up(shardmap *m)
{
	/* Under follower_lock so that shardmap__follower_take (and the stop after it) cannot
	 * free the follower meanwhile; catch_up never blocks, so the leaf lock is held briefly. */
	pthread_mutex_lock(&m->follower_lock);
	struct shardmap__follower *f = m->follower;
	if (f != NULL)
		f->catch_up(f);
	pthread_mutex_unlock(&m->follower_lock);
	return f != NULL ? SHARDMAP_OK : SHARDMAP_ENOTSUP;
}
