/*
 * etcd_follow.c - keeping a map current from an etcd store (shardmap_follow on an
 * "etcd://" store): a watch on the store's prefix, driven by curl's multi interface on one
 * task of the worker pool. Following adds no thread, per store or per endpoint: the task
 * watches one private epoll descriptor that holds curl's sockets (CURLMOPT_SOCKETFUNCTION
 * adds and removes them) and its one timer serves curl's timeout (CURLMOPT_TIMERFUNCTION),
 * the reconnect backoff and the heartbeat. Everything below runs on that task's callback,
 * one thread at a time, so the follower's state needs no lock; other threads only set the
 * catch-up flag and wake the task.
 *
 * Versions: the map's version is the revision of the last change under the prefix that it
 * applied. The watch starts at the revision after the one the map was read at and
 * delivers the prefix's events; all events of one revision become one delta from the
 * map's current version to that revision, applied all-or-nothing. A revision whose events
 * are bad data or break an invariant is refused: the map keeps serving, the refusal is
 * counted (store_errors) and logged, and the watch goes on. watch_rev, the revision up to
 * which every event has been seen (events and progress notifications advance it), is
 * where a new watch resumes, so nothing is missed and nothing applied twice.
 *
 * Failures: a watch that ends, or a heartbeat probe that fails, moves to the next endpoint
 * after a jittered exponential backoff and resumes from watch_rev + 1; meanwhile the map
 * keeps serving and stats say how long it has not heard from the store. A watch canceled
 * because its start revision was compacted is answered with a fresh snapshot, read page by
 * page on the same task (no worker blocks on it) and published in one step through a
 * builder. Every request takes a token from the store's bucket and passes its circuit
 * breaker; catch-ups (stale hints) are coalesced while a watch is being (re)established.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "etcd_json.h"
#include "etcd_store.h"
#include "pool.h"

#define HEARTBEAT_MS 5000   /* probe the store after this much silence */
#define BAD_DATA_RETRY_MS 10000 /* a snapshot refused as bad data is read again after this */
#define NEVER UINT64_MAX

struct follower {
	struct shardmap__follower base; /* first: what the map holds */
	struct shardmap__etcd *s;
	shardmap *m;
	struct shardmap__ext_stats *x;
	struct shardmap__task *task;
	CURLM *multi;
	int epfd; /* curl's sockets; the task watches it */

	/* set by any thread, consumed by the task */
	_Atomic int catch_up;

	/* the task's own state: only its callback touches it (after follow returns) */
	int started;
	unsigned endpoint;
	struct shardmap__backoff backoff;
	uint64_t watch_rev;     /* every event up to this revision has been seen */
	struct shardmap__etcd_req watch, probe, page;
	int watch_on, watch_created, probe_on, page_on;
	int resync;             /* a snapshot read is in progress (or due) */
	int need_resync;        /* the watch was canceled for compaction */
	struct shardmap__etcd_snap snap;
	uint64_t curl_due, retry_due; /* ms deadlines, NEVER when none */
	uint64_t probe_due;     /* no heartbeat before this (the bucket was empty) */
	uint64_t last_contact_ms;
	char why[200];          /* the reason the last watch ended */
};

static void bump(_Atomic uint64_t *c)
{
	/* Relaxed: a statistics counter. */
	atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

static void contact(struct follower *f)
{
	f->last_contact_ms = shardmap__now_ms();
	/* Relaxed: statistics (stale_ns); orders nothing. */
	atomic_store_explicit(&f->x->store_last_contact_ns, shardmap__monotonic_ns(),
	                      memory_order_relaxed);
}

static void seen_version(struct follower *f, uint64_t v)
{
	/* Relaxed: statistics. Only this task writes it. */
	if (v > atomic_load_explicit(&f->x->store_version, memory_order_relaxed))
		atomic_store_explicit(&f->x->store_version, v, memory_order_relaxed);
}

/* A request may go now? Takes a token and passes the breaker; otherwise sets retry_due. */
static int may_request(struct follower *f)
{
	uint64_t wait = 0, now = shardmap__monotonic_ns();
	if (shardmap__bucket_take(&f->s->bucket, now, &wait) &&
	    shardmap__breaker_allow(&f->s->breaker, now, &wait))
		return 1;
	f->retry_due = shardmap__now_ms() + wait / 1000000u + 1;
	return 0;
}

/* Start one request on the multi handle. body is taken over. */
static int start(struct follower *f, struct shardmap__etcd_req *r, const char *path, char *body,
                 int (*line_fn)(void *ctx, char *line, size_t len))
{
	if (shardmap__etcd_req_setup(f->s, r, shardmap__etcd_easy_get(f->s), f->endpoint, path,
	                             body, line_fn, f) != 0)
		return SHARDMAP_ENOMEM;
	if (curl_multi_add_handle(f->multi, r->easy) != CURLM_OK) {
		shardmap__etcd_easy_put(f->s, shardmap__etcd_req_release(r));
		return SHARDMAP_ENOMEM;
	}
	bump(&f->x->store_requests);
	return SHARDMAP_OK;
}

static void finish(struct follower *f, struct shardmap__etcd_req *r)
{
	curl_multi_remove_handle(f->multi, r->easy);
	shardmap__etcd_easy_put(f->s, shardmap__etcd_req_release(r));
}

/* Try again after a backoff, on the next endpoint. */
static void retry_later(struct follower *f, const char *what)
{
	bump(&f->x->store_errors);
	unsigned from = f->endpoint;
	f->endpoint = (f->endpoint + 1) % (unsigned)f->s->n_endpoints;
	uint64_t delay = shardmap__backoff_next(&f->backoff) / 1000000u;
	f->retry_due = shardmap__now_ms() + delay;
	shardmap__etcd_log("%s %s on %s: %s; retrying on %s in %" PRIu64 " ms", f->s->prefix,
	                   what, f->s->endpoints[from], f->why, f->s->endpoints[f->endpoint],
	                   delay);
}

/* ---------------------------------------------------------------- applying events */

static void apply_revision(struct follower *f, json_t *events, size_t begin, size_t end,
                           uint64_t rev)
{
	seen_version(f, rev);
	for (int tries = 0; tries < 2; tries++) {
		uint64_t from = shardmap_version(f->m);
		if (from >= rev)
			return; /* the map has it already (a peer was faster) */
		shardmap_delta *d = NULL;
		shardmap_error why = {0};
		int rc = shardmap__etcd_events_delta(f->s->prefix, events, begin, end, from, rev,
		                                     &d, &why);
		if (rc == 0)
			rc = shardmap_apply(f->m, d, &why);
		shardmap_delta_free(d);
		if (rc == 0 || rc == SHARDMAP_ESTALE)
			return;
		if (rc == SHARDMAP_EGAP)
			continue; /* another writer published between our read and apply */
		bump(&f->x->store_errors);
		shardmap__etcd_log("%s: revision %" PRIu64 " refused, the map stays at version "
		                   "%" PRIu64 ": %s: %s",
		                   f->s->prefix, rev, from, shardmap_err_name(rc), why.message);
		return;
	}
}

static void apply_events(struct follower *f, json_t *events)
{
	size_t n = json_array_size(events);
	for (size_t i = 0, j; i < n; i = j) {
		uint64_t rev = shardmap__etcd_event_revision(json_array_get(events, i));
		for (j = i + 1; j < n; j++)
			if (shardmap__etcd_event_revision(json_array_get(events, j)) != rev)
				break;
		if (rev == 0 || rev <= f->watch_rev)
			continue; /* already seen (a resumed watch overlaps by design) */
		apply_revision(f, events, i, j, rev);
		f->watch_rev = rev;
	}
}

/* One message of the watch stream. Nonzero ends the stream. */
static int on_watch_line(void *ctx, char *line, size_t len)
{
	struct follower *f = ctx;
	json_error_t err;
	json_t *msg = json_loadb(line, len, 0, &err);
	json_t *res = json_object_get(msg, "result");
	int stop = 0;
	if (!json_is_object(res)) {
		const char *e = json_string_value(json_object_get(msg, "error"));
		snprintf(f->why, sizeof f->why, "watch stream: %s", e ? e : "not a watch response");
		stop = 1;
	} else if (json_is_true(json_object_get(res, "canceled"))) {
		uint64_t compact = shardmap__etcd_u64(res, "compact_revision");
		const char *reason = json_string_value(json_object_get(res, "cancel_reason"));
		snprintf(f->why, sizeof f->why, "watch canceled%s%s", reason ? ": " : "",
		         reason ? reason : "");
		if (compact > 0) {
			snprintf(f->why, sizeof f->why, "revision %" PRIu64 " compacted (now %" PRIu64
			         ")", f->watch_rev + 1, compact);
			f->need_resync = 1;
		}
		stop = 1;
	} else {
		contact(f);
		json_t *events = json_object_get(res, "events");
		if (json_is_true(json_object_get(res, "created"))) {
			f->watch_created = 1;
			shardmap__backoff_reset(&f->backoff);
			shardmap__breaker_report(&f->s->breaker, shardmap__monotonic_ns(), 1);
			/* Relaxed: the preferred endpoint is a hint. */
			atomic_store_explicit(&f->s->preferred, f->endpoint, memory_order_relaxed);
		} else if (json_array_size(events) == 0) {
			/* a progress notification: every event up to its revision was sent */
			uint64_t rev = shardmap__etcd_u64(json_object_get(res, "header"), "revision");
			if (rev > f->watch_rev)
				f->watch_rev = rev;
		}
		apply_events(f, events);
	}
	json_decref(msg);
	return stop;
}

/* ---------------------------------------------------------------- the three requests */

static void watch_start(struct follower *f)
{
	if (!may_request(f))
		return;
	char *pk = NULL, *pe = NULL, rev[24];
	snprintf(rev, sizeof rev, "%" PRIu64, f->watch_rev + 1);
	json_t *req = NULL;
	if (shardmap__etcd_prefix_range(f->s->prefix, &pk, &pe) == 0)
		req = json_pack("{s:{s:s, s:s, s:s, s:b}}", "create_request", "key", pk, "range_end",
		                pe, "start_revision", rev, "progress_notify", 1);
	char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
	json_decref(req);
	free(pk);
	free(pe);
	f->watch_created = 0;
	f->need_resync = 0;
	f->why[0] = '\0';
	if (body == NULL || start(f, &f->watch, "/v3/watch", body, on_watch_line) != 0) {
		shardmap__breaker_report(&f->s->breaker, shardmap__monotonic_ns(), 1);
		snprintf(f->why, sizeof f->why, "out of memory");
		retry_later(f, "watch");
		return;
	}
	f->watch_on = 1;
}

static void watch_done(struct follower *f, CURLcode cc)
{
	struct shardmap__etcd_reply rep;
	int created = f->watch_created;
	if (f->why[0] == '\0') {
		shardmap__etcd_req_reply(&f->watch, cc, &rep, NULL);
		snprintf(f->why, sizeof f->why, "%s",
		         rep.msg[0] ? rep.msg : "the stream ended");
	}
	finish(f, &f->watch);
	f->watch_on = 0;
	f->watch_created = 0;
	if (f->probe_on)
		finish(f, &f->probe), f->probe_on = 0;
	if (f->need_resync) {
		shardmap__etcd_log("%s: %s: reading a fresh snapshot", f->s->prefix, f->why);
		f->resync = 1;
		f->retry_due = 0;
		return;
	}
	if (!created) /* a watch that never started: the endpoint is failing */
		shardmap__breaker_report(&f->s->breaker, shardmap__monotonic_ns(), 0);
	retry_later(f, "watch");
}

static void probe_start(struct follower *f)
{
	uint64_t wait = 0;
	if (!shardmap__bucket_take(&f->s->bucket, shardmap__monotonic_ns(), &wait)) {
		f->probe_due = shardmap__now_ms() + wait / 1000000u + 1;
		return;
	}
	char *key = shardmap__etcd_key_make(f->s->prefix, SHARDMAP__ETCD_VERSION, NULL, NULL);
	char *kb = key ? shardmap__b64_encode(key, strlen(key)) : NULL;
	json_t *req = kb ? json_pack("{s:s, s:b}", "key", kb, "keys_only", 1) : NULL;
	char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
	json_decref(req);
	free(kb);
	free(key);
	if (body != NULL && start(f, &f->probe, "/v3/kv/range", body, NULL) == 0)
		f->probe_on = 1;
}

static void probe_done(struct follower *f, CURLcode cc)
{
	struct shardmap__etcd_reply rep;
	json_t *j = NULL;
	shardmap__etcd_req_reply(&f->probe, cc, &rep, &j);
	finish(f, &f->probe);
	f->probe_on = 0;
	if (rep.transport_ok) {
		contact(f);
		json_decref(j);
		return;
	}
	/* the endpoint does not answer: the watch on it is as good as dead */
	snprintf(f->why, sizeof f->why, "heartbeat: %s", rep.msg);
	if (f->watch_on) {
		finish(f, &f->watch);
		f->watch_on = 0;
		f->watch_created = 0;
		shardmap__breaker_report(&f->s->breaker, shardmap__monotonic_ns(), 0);
		retry_later(f, "watch");
	}
}

static void page_start(struct follower *f)
{
	if (f->snap.pages == 0 && !may_request(f)) /* one token per snapshot, not per page */
		return;
	json_t *req = shardmap__etcd_snap_request(&f->snap);
	char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
	json_decref(req);
	if (body == NULL || start(f, &f->page, "/v3/kv/range", body, NULL) != 0) {
		snprintf(f->why, sizeof f->why, "out of memory");
		retry_later(f, "snapshot");
		return;
	}
	f->page_on = 1;
}

/* The snapshot is complete: publish it in one step. */
static int snapshot_publish(struct follower *f, shardmap_error *why)
{
	shardmap_delta *d = NULL;
	uint64_t revision = f->snap.revision;
	int rc = shardmap__etcd_snap_finish(&f->snap, &d, why);
	struct shardmap__builder *b = NULL;
	if (rc == 0 && d == NULL) { /* an empty store: nothing to publish, watch from here */
		f->watch_rev = revision;
		return SHARDMAP_OK;
	}
	if (rc == 0)
		rc = shardmap__builder_start(f->m, &b);
	if (rc == 0)
		rc = shardmap__builder_apply(b, d, why);
	if (rc == 0)
		rc = shardmap__builder_publish(b);
	if (rc != 0 && b != NULL)
		shardmap__builder_abort(b);
	if (rc == 0) {
		seen_version(f, shardmap_delta_to(d));
		f->watch_rev = revision;
		shardmap__etcd_snap_remember(f->s, shardmap_delta_to(d), revision);
	}
	shardmap_delta_free(d);
	return rc;
}

static void page_done(struct follower *f, CURLcode cc)
{
	struct shardmap__etcd_reply rep;
	json_t *j = NULL;
	shardmap__etcd_req_reply(&f->page, cc, &rep, &j);
	finish(f, &f->page);
	f->page_on = 0;
	shardmap__breaker_report(&f->s->breaker, shardmap__monotonic_ns(), rep.transport_ok);
	if (!rep.transport_ok || (rep.http != 200 && !shardmap__etcd_compacted(&rep))) {
		snprintf(f->why, sizeof f->why, "%s", rep.msg);
		json_decref(j);
		retry_later(f, "snapshot page"); /* the snapshot goes on from the same page */
		return;
	}
	contact(f);
	if (rep.http != 200) { /* the pinned revision was compacted: start over */
		shardmap__etcd_snap_reset(&f->snap);
		f->retry_due = 0;
		return;
	}
	shardmap_error why = {0};
	int rc = shardmap__etcd_snap_take(&f->snap, j, &why);
	json_decref(j);
	if (rc == 0 && !f->snap.done) {
		f->retry_due = 0; /* next page */
		return;
	}
	if (rc == 0)
		rc = snapshot_publish(f, &why);
	shardmap__etcd_snap_reset(&f->snap);
	if (rc != 0) {
		bump(&f->x->store_errors);
		shardmap__etcd_log("%s: snapshot refused, the map stays at version %" PRIu64
		                   ": %s: %s",
		                   f->s->prefix, shardmap_version(f->m), shardmap_err_name(rc),
		                   why.message);
		f->retry_due = shardmap__now_ms() + BAD_DATA_RETRY_MS;
		return;
	}
	f->resync = 0;
	shardmap__backoff_reset(&f->backoff);
	f->retry_due = 0; /* watch from the snapshot's revision */
}

/* ---------------------------------------------------------------- curl on the task */

static int on_socket(CURL *e, curl_socket_t fd, int what, void *ctx, void *sockp)
{
	struct follower *f = ctx;
	(void)e;
	if (what == CURL_POLL_REMOVE) {
		epoll_ctl(f->epfd, EPOLL_CTL_DEL, fd, NULL);
		curl_multi_assign(f->multi, fd, NULL);
		return 0;
	}
	struct epoll_event ev = {.data.fd = fd};
	ev.events = (what & CURL_POLL_IN ? EPOLLIN : 0u) | (what & CURL_POLL_OUT ? EPOLLOUT : 0u);
	if (epoll_ctl(f->epfd, sockp ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev) != 0 &&
	    epoll_ctl(f->epfd, sockp ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &ev) != 0)
		return -1;
	curl_multi_assign(f->multi, fd, (void *)1);
	return 0;
}

static int on_curl_timer(CURLM *multi, long ms, void *ctx)
{
	struct follower *f = ctx;
	(void)multi;
	f->curl_due = ms < 0 ? NEVER : shardmap__now_ms() + (uint64_t)ms;
	return 0;
}

static void run_curl(struct follower *f, uint32_t events)
{
	int running;
	if (events & (SHARDMAP__EV_READ | SHARDMAP__EV_ERROR)) {
		struct epoll_event evs[16];
		int n = epoll_wait(f->epfd, evs, 16, 0);
		for (int i = 0; i < n; i++) {
			int mask = (evs[i].events & EPOLLIN ? CURL_CSELECT_IN : 0) |
			           (evs[i].events & EPOLLOUT ? CURL_CSELECT_OUT : 0) |
			           (evs[i].events & (EPOLLERR | EPOLLHUP) ? CURL_CSELECT_ERR : 0);
			curl_multi_socket_action(f->multi, evs[i].data.fd, mask, &running);
		}
	}
	for (int i = 0; i < 8 && f->curl_due <= shardmap__now_ms(); i++) {
		f->curl_due = NEVER;
		curl_multi_socket_action(f->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	}
	CURLMsg *msg;
	int left;
	while ((msg = curl_multi_info_read(f->multi, &left)) != NULL) {
		if (msg->msg != CURLMSG_DONE)
			continue;
		CURL *e = msg->easy_handle;
		CURLcode cc = msg->data.result;
		if (f->watch_on && e == f->watch.easy)
			watch_done(f, cc);
		else if (f->probe_on && e == f->probe.easy)
			probe_done(f, cc);
		else if (f->page_on && e == f->page.easy)
			page_done(f, cc);
	}
}

/* A catch-up: make sure the map hears of every change up to now, soon. */
static void catch_up_now(struct follower *f)
{
	if (f->page_on || (f->watch_on && !f->watch_created))
		return; /* a snapshot or a new watch is on its way: it covers this */
	if (f->watch_on) {
		/* a fresh watch from watch_rev + 1 re-reads anything a stuck stream holds back */
		finish(f, &f->watch);
		f->watch_on = 0;
		if (f->probe_on)
			finish(f, &f->probe), f->probe_on = 0;
	}
	f->retry_due = 0; /* also cuts a pending backoff short; the bucket still applies */
}

static uint64_t heartbeat_due(const struct follower *f)
{
	uint64_t due = f->last_contact_ms + HEARTBEAT_MS;
	return due > f->probe_due ? due : f->probe_due;
}

static void on_task(struct shardmap__task *t, void *ctx, uint32_t events)
{
	struct follower *f = ctx;
	(void)t;
	if (!f->started) {
		f->started = 1;
		uint64_t v = shardmap_version(f->m);
		f->resync = v == 0;
		f->watch_rev = shardmap__etcd_snap_revision(f->s, v);
		f->retry_due = 0;
	}
	run_curl(f, events);
	/* Relaxed: the flag carries no data. follower_catch_up sets it before task_wake, whose
	 * worker lock orders it before this callback; a set that races past still stays set
	 * for the next run. */
	if (atomic_exchange_explicit(&f->catch_up, 0, memory_order_relaxed))
		catch_up_now(f);
	uint64_t now = shardmap__now_ms();
	if (f->retry_due <= now && !f->watch_on && !f->page_on) {
		f->retry_due = NEVER;
		if (f->resync)
			page_start(f);
		else
			watch_start(f);
		run_curl(f, 0);
	}
	if (f->watch_created && !f->probe_on && now >= heartbeat_due(f))
		probe_start(f);
	/* one timer: the nearest of curl's timeout, the retry and the heartbeat */
	uint64_t due = f->curl_due < f->retry_due ? f->curl_due : f->retry_due;
	if (f->watch_created && !f->probe_on && heartbeat_due(f) < due)
		due = heartbeat_due(f);
	now = shardmap__now_ms();
	shardmap__task_timer(f->task, due == NEVER ? NEVER : due > now ? due - now : 0);
}

/* ---------------------------------------------------------------- the follower object */

static void follower_catch_up(struct shardmap__follower *base)
{
	struct follower *f = (struct follower *)base;
	/* Relaxed: see on_task. */
	atomic_store_explicit(&f->catch_up, 1, memory_order_relaxed);
	shardmap__task_wake(f->task);
}

static void follower_free(struct follower *f)
{
	if (f->multi != NULL) {
		if (f->watch_on)
			finish(f, &f->watch);
		if (f->probe_on)
			finish(f, &f->probe);
		if (f->page_on)
			finish(f, &f->page);
		curl_multi_cleanup(f->multi);
	}
	if (f->epfd >= 0)
		close(f->epfd);
	shardmap__etcd_snap_fini(&f->snap);
	free(f);
}

static void follower_stop(struct shardmap__follower *base)
{
	struct follower *f = (struct follower *)base;
	/* after this the callback is not running and never runs again: the state is ours */
	shardmap__task_close(f->task);
	follower_free(f);
}

int shardmap__etcd_follow(shardmap_store *store, shardmap *m, shardmap_pool *p,
                          struct shardmap__follower **out)
{
	struct shardmap__etcd *s = (struct shardmap__etcd *)store;
	if (s == NULL || m == NULL || p == NULL || out == NULL)
		return SHARDMAP_EINVAL; /* the watch runs on a pool */
	struct follower *f = calloc(1, sizeof *f);
	if (f == NULL)
		return SHARDMAP_ENOMEM;
	f->base.stop = follower_stop;
	f->base.catch_up = follower_catch_up;
	f->s = s;
	f->m = m;
	f->x = shardmap__ext(m);
	f->epfd = epoll_create1(EPOLL_CLOEXEC);
	f->multi = curl_multi_init();
	f->curl_due = f->retry_due = NEVER;
	/* Relaxed: a hint. */
	f->endpoint = atomic_load_explicit(&s->preferred, memory_order_relaxed);
	shardmap__backoff_init(&f->backoff, SHARDMAP__ETCD_BACKOFF_BASE_MS * 1000000u,
	                       SHARDMAP__ETCD_BACKOFF_MAX_MS * 1000000u,
	                       shardmap__monotonic_ns() ^ (uintptr_t)f);
	int rc = f->epfd < 0 ? SHARDMAP_EIO : f->multi == NULL ? SHARDMAP_ENOMEM : SHARDMAP_OK;
	if (rc == 0)
		rc = shardmap__etcd_snap_init(&f->snap, s->prefix, s->page);
	if (rc != 0) {
		follower_free(f);
		return rc;
	}
	curl_multi_setopt(f->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
	curl_multi_setopt(f->multi, CURLMOPT_SOCKETDATA, f);
	curl_multi_setopt(f->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
	curl_multi_setopt(f->multi, CURLMOPT_TIMERDATA, f);
	contact(f);
	rc = shardmap__task_open(p, on_task, f, &f->task);
	if (rc == 0 && shardmap__task_watch(f->task, f->epfd, SHARDMAP__EV_READ) != 0) {
		shardmap__task_close(f->task);
		rc = SHARDMAP_EIO;
	}
	if (rc != 0) {
		follower_free(f);
		return rc;
	}
	shardmap__task_wake(f->task);
	*out = &f->base;
	return SHARDMAP_OK;
}
