/*
 * stats.c - the map's statistics as a struct (shardmap_stats_get) and as Prometheus text
 * exposition (shardmap_metrics_text).
 *
 * For operators and the example front-end's /metrics. Any thread, any time, without a read
 * section: the published version's figures are copied under a sequence lock (map.c writes
 * them at each publish), counters are relaxed atomics. Nothing here blocks or allocates.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "map_impl.h"

/* A relaxed statistic: no ordering with anything else. */
#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

int shardmap_stats_get(const shardmap *m, shardmap_stats *out)
{
	if (m == NULL || out == NULL)
		return SHARDMAP_EINVAL;
	memset(out, 0, sizeof *out);
	struct shardmap__published_figures f;
	unsigned seq;
	do {
		/* Pairs with ck_sequence_write_begin/end in map.c's figures_update. */
		seq = ck_sequence_read_begin(&m->figures_seq);
		f.version = ck_pr_load_64(&m->figures.version);
		f.streams = ck_pr_load_64(&m->figures.streams);
		f.open_shards = ck_pr_load_64(&m->figures.open_shards);
		f.closed_shards = ck_pr_load_64(&m->figures.closed_shards);
		f.cells = ck_pr_load_64(&m->figures.cells);
		f.unix_ns = ck_pr_load_64(&m->figures.unix_ns);
	} while (ck_sequence_read_retry(&m->figures_seq, seq));
	out->version = f.version;
	out->streams = f.streams;
	out->open_shards = f.open_shards;
	out->closed_shards = f.closed_shards;
	out->cells = f.cells;
	out->last_update_unix_ns = f.unix_ns;

	out->applies = LOAD(m->applies);
	out->rejects_stale = LOAD(m->rejects_stale);
	out->rejects_gap = LOAD(m->rejects_gap);
	out->rejects_conflict = LOAD(m->rejects_conflict);
	out->rejects_nomem = LOAD(m->rejects_nomem);
	out->rejects_invalid = LOAD(m->rejects_invalid);
	out->readers = LOAD(m->readers);
	/* Two relaxed loads are not one snapshot: a free may run in between, so clamp. */
	out->versions_freed = LOAD(m->versions_freed);
	out->versions_retired = LOAD(m->versions_retired);
	out->reclaim_backlog = out->versions_retired > out->versions_freed
				   ? out->versions_retired - out->versions_freed
				   : 0;
	out->resident_bytes = shardmap__mem_resident((struct shardmap__mem *)&m->mem);

	const struct shardmap__ext_stats *x = &m->ext;
	out->threads = LOAD(x->threads);
	out->store_version = LOAD(x->store_version);
	out->store_requests = LOAD(x->store_requests);
	out->store_errors = LOAD(x->store_errors);
	out->hints = LOAD(x->hints);
	out->hints_coalesced = LOAD(x->hints_coalesced);
	out->hints_dropped = LOAD(x->hints_dropped);
	uint64_t contact = LOAD(x->store_last_contact_ns), now = shardmap__monotonic_ns();
	out->stale_ns = contact != 0 && now > contact ? now - contact : 0;
	out->peers_known = LOAD(x->peers_known);
	out->peers_connected = LOAD(x->peers_connected);
	out->frames_in = LOAD(x->frames_in);
	out->frames_out = LOAD(x->frames_out);
	out->frames_refused = LOAD(x->frames_refused);
	out->peer_queue_drops = LOAD(x->peer_queue_drops);
	out->antientropy_pulls = LOAD(x->antientropy_pulls);
	out->versions_behind = LOAD(x->versions_behind);
	out->digest_mismatches = LOAD(x->digest_mismatches);
	return SHARDMAP_OK;
}

/* ---------------------------------------------------------------- Prometheus text */

enum metric_unit { PLAIN, NS_AS_SECONDS };

/* One sample. Consecutive rows with the same name form one family (one HELP, one TYPE). */
struct metric {
	const char *name;
	const char *type; /* "counter" (name ends in _total) or "gauge" */
	const char *help;
	const char *labels; /* NULL or `key="value"` */
	size_t offset;	    /* into shardmap_stats */
	enum metric_unit unit;
};

#define F(field) offsetof(shardmap_stats, field)

static const struct metric metrics[] = {
    {"shardmap_version", "gauge", "Version of the published map.", NULL, F(version), PLAIN},
    {"shardmap_streams", "gauge", "Streams in the published map.", NULL, F(streams), PLAIN},
    {"shardmap_shards", "gauge", "Shards in the published map, by state.", "state=\"open\"",
     F(open_shards), PLAIN},
    {"shardmap_shards", "gauge", NULL, "state=\"closed\"", F(closed_shards), PLAIN},
    {"shardmap_cells", "gauge", "Cells in the published map.", NULL, F(cells), PLAIN},
    {"shardmap_applies_total", "counter", "Deltas published.", NULL, F(applies), PLAIN},
    {"shardmap_rejects_total", "counter", "Deltas rejected, by reason.", "reason=\"stale\"",
     F(rejects_stale), PLAIN},
    {"shardmap_rejects_total", "counter", NULL, "reason=\"gap\"", F(rejects_gap), PLAIN},
    {"shardmap_rejects_total", "counter", NULL, "reason=\"conflict\"", F(rejects_conflict), PLAIN},
    {"shardmap_rejects_total", "counter", NULL, "reason=\"nomem\"", F(rejects_nomem), PLAIN},
    {"shardmap_rejects_total", "counter", NULL, "reason=\"invalid\"", F(rejects_invalid), PLAIN},
    {"shardmap_readers", "gauge", "Registered reader handles.", NULL, F(readers), PLAIN},
    {"shardmap_versions_retired_total", "counter", "Versions replaced and queued for reclamation.",
     NULL, F(versions_retired), PLAIN},
    {"shardmap_versions_freed_total", "counter", "Retired versions freed after their grace period.",
     NULL, F(versions_freed), PLAIN},
    {"shardmap_reclaim_backlog", "gauge", "Retired versions not yet freed.", NULL,
     F(reclaim_backlog), PLAIN},
    {"shardmap_last_update_timestamp_seconds", "gauge",
     "Wall-clock time of the last publish (0 if none).", NULL, F(last_update_unix_ns),
     NS_AS_SECONDS},
    {"shardmap_resident_bytes", "gauge", "Resident bytes of the map's memory arena.", NULL,
     F(resident_bytes), PLAIN},
    {"shardmap_threads", "gauge", "Threads the library owns for this map.", NULL, F(threads),
     PLAIN},
    {"shardmap_store_version", "gauge", "Last version seen in the store.", NULL, F(store_version),
     PLAIN},
    {"shardmap_store_requests_total", "counter", "Requests made to the store.", NULL,
     F(store_requests), PLAIN},
    {"shardmap_store_errors_total", "counter", "Failed store requests.", NULL, F(store_errors),
     PLAIN},
    {"shardmap_hints_total", "counter", "Stale hints received.", NULL, F(hints), PLAIN},
    {"shardmap_hints_coalesced_total", "counter", "Stale hints merged into a pending catch-up.",
     NULL, F(hints_coalesced), PLAIN},
    {"shardmap_hints_dropped_total", "counter", "Stale hints dropped by the rate limit.", NULL,
     F(hints_dropped), PLAIN},
    {"shardmap_stale_seconds", "gauge", "Time since the follower last heard from its store.", NULL,
     F(stale_ns), NS_AS_SECONDS},
    {"shardmap_peers_known", "gauge", "Peers known.", NULL, F(peers_known), PLAIN},
    {"shardmap_peers_connected", "gauge", "Peers with an open connection.", NULL,
     F(peers_connected), PLAIN},
    {"shardmap_frames_in_total", "counter", "Peer frames received.", NULL, F(frames_in), PLAIN},
    {"shardmap_frames_out_total", "counter", "Peer frames sent.", NULL, F(frames_out), PLAIN},
    {"shardmap_frames_refused_total", "counter", "Peer frames refused (bad HMAC, size, format).",
     NULL, F(frames_refused), PLAIN},
    {"shardmap_peer_queue_drops_total", "counter", "Entries dropped from full peer queues.", NULL,
     F(peer_queue_drops), PLAIN},
    {"shardmap_antientropy_pulls_total", "counter", "Anti-entropy pulls made.", NULL,
     F(antientropy_pulls), PLAIN},
    {"shardmap_versions_behind", "gauge", "Versions this map is behind its newest peer.", NULL,
     F(versions_behind), PLAIN},
    {"shardmap_digest_mismatches_total", "counter",
     "Peers found at the same version with a different digest.", NULL, F(digest_mismatches), PLAIN},
};

#undef F

struct text {
	char *buf;
	size_t len, pos;
	int full;
};

static void put(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct text *t, const char *fmt, ...)
{
	if (t->full)
		return;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(t->buf + t->pos, t->len - t->pos, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= t->len - t->pos) {
		t->full = 1; /* vsnprintf left a NUL-terminated prefix */
		return;
	}
	t->pos += (size_t)n;
}

int shardmap_metrics_text(const shardmap *m, char *buf, size_t len)
{
	if (m == NULL || buf == NULL || len == 0)
		return SHARDMAP_EINVAL;
	shardmap_stats s;
	shardmap_stats_get(m, &s);
	struct text t = {buf, len, 0, 0};
	buf[0] = '\0';
	for (size_t i = 0; i < sizeof metrics / sizeof metrics[0]; i++) {
		const struct metric *mt = &metrics[i];
		uint64_t v;
		memcpy(&v, (const char *)&s + mt->offset, sizeof v);
		if (mt->help != NULL)
			put(&t, "# HELP %s %s\n# TYPE %s %s\n", mt->name, mt->help, mt->name,
			    mt->type);
		put(&t, "%s", mt->name);
		if (mt->labels != NULL)
			put(&t, "{%s}", mt->labels);
		if (mt->unit == NS_AS_SECONDS)
			put(&t, " %" PRIu64 ".%09" PRIu64 "\n", v / 1000000000u, v % 1000000000u);
		else
			put(&t, " %" PRIu64 "\n", v);
	}
	return t.full ? SHARDMAP_ENOMEM : (int)t.pos;
}
