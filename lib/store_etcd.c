/*
 * store_etcd.c - the "etcd://HOST:PORT[,HOST:PORT...]/PREFIX" store: the distributed
 * authoritative store, through etcd's v3 JSON gateway. For control planes (write, version)
 * and for maps (load, follow).
 *
 * Versions are etcd revisions. The version of the data under PREFIX is the revision of its
 * last change. load reads everything under the prefix in pages pinned to one revision and
 * delivers it as one delta from 0 to the highest mod_revision it saw. The follower
 * (etcd_follow.c) applies each revision's events as a delta from the map's version to that
 * revision, so a map's version is always the revision of the last change it has, the same
 * on every front-end. Every write through shardmap also puts PREFIX/version, so after a
 * shardmap write the store's version is that write's revision; version() reads that one
 * key. write is one transaction whose compare asks that PREFIX/version was not written
 * after the delta's from_version: of two control planes that planned from the same version
 * exactly one wins, the other gets SHARDMAP_ECONFLICT. Layout and formats: docs/etcd.md.
 *
 * Concurrent loads (and concurrent version() calls) of one store share one request
 * (single flight); every request passes the store's token bucket and circuit breaker
 * (etcd_http.c). URI options after '?': page=N (keys per range page), rate=R and burst=B
 * (the token bucket), timeout_ms=T (one request).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "etcd_json.h"
#include "etcd_store.h"

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_OK;

static void curl_init(void)
{
	curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---------------------------------------------------------------- open and close */

static void etcd_free(struct shardmap__etcd *s)
{
	for (size_t i = 0; i < s->n_endpoints; i++)
		free(s->endpoints[i]);
	free(s->endpoints);
	free(s->prefix);
	free(s);
}

static void etcd_close(shardmap_store *st)
{
	struct shardmap__etcd *s = (struct shardmap__etcd *)st;
	if (s == NULL)
		return;
	for (unsigned i = 0; i < s->n_idle; i++)
		curl_easy_cleanup(s->idle[i]);
	shardmap__breaker_fini(&s->breaker);
	shardmap__flight_fini(&s->version_flight);
	shardmap__flight_fini(&s->load_flight);
	pthread_mutex_destroy(&s->lock);
	etcd_free(s);
}

/* "page=N&rate=R&burst=B&timeout_ms=T" */
static int parse_options(struct shardmap__etcd *s, const char *q, double *rate, unsigned *burst)
{
	while (q != NULL && *q != '\0') {
		const char *amp = strchr(q, '&');
		size_t n = amp ? (size_t)(amp - q) : strlen(q);
		char opt[64];
		if (n == 0 || n >= sizeof opt)
			return SHARDMAP_EINVAL;
		memcpy(opt, q, n);
		opt[n] = '\0';
		char *eq = strchr(opt, '='), *end = NULL;
		if (eq == NULL || eq[1] == '\0')
			return SHARDMAP_EINVAL;
		*eq = '\0';
		const char *v = eq + 1;
		if (strcmp(opt, "rate") == 0) {
			*rate = strtod(v, &end);
			if (!(*rate > 0))
				return SHARDMAP_EINVAL;
		} else {
			unsigned long x = strtoul(v, &end, 10);
			if (*v < '0' || *v > '9' || x == 0 || x > 1000000)
				return SHARDMAP_EINVAL;
			if (strcmp(opt, "page") == 0)
				s->page = (unsigned)x;
			else if (strcmp(opt, "burst") == 0)
				*burst = (unsigned)x;
			else if (strcmp(opt, "timeout_ms") == 0)
				s->timeout_ms = (long)x;
			else
				return SHARDMAP_EINVAL;
		}
		if (*end != '\0')
			return SHARDMAP_EINVAL;
		q = amp ? amp + 1 : NULL;
	}
	return SHARDMAP_OK;
}

/* rest = "HOST:PORT[,HOST:PORT...]/PREFIX[?options]" */
static int parse_uri(struct shardmap__etcd *s, const char *rest, double *rate, unsigned *burst)
{
	const char *slash = strchr(rest, '/');
	if (slash == NULL || slash == rest)
		return SHARDMAP_EINVAL;
	const char *q = strchr(slash, '?');
	size_t plen = q ? (size_t)(q - slash) : strlen(slash);
	while (plen > 1 && slash[plen - 1] == '/')
		plen--;
	if (plen < 2 || plen > 512 || memchr(slash, ',', plen) != NULL)
		return SHARDMAP_EINVAL;
	s->prefix = strndup(slash, plen); /* keeps the leading '/' */
	if (s->prefix == NULL)
		return SHARDMAP_ENOMEM;
	if (shardmap__check_name(s->prefix) != 0)
		return SHARDMAP_EINVAL;
	size_t hlen = (size_t)(slash - rest), n = 1;
	for (size_t i = 0; i < hlen; i++)
		n += rest[i] == ',';
	s->endpoints = calloc(n, sizeof *s->endpoints);
	if (s->endpoints == NULL)
		return SHARDMAP_ENOMEM;
	for (const char *p = rest;;) {
		const char *comma = memchr(p, ',', (size_t)(slash - p));
		const char *e = comma ? comma : slash;
		char *ep = strndup(p, (size_t)(e - p));
		if (ep == NULL)
			return SHARDMAP_ENOMEM;
		s->endpoints[s->n_endpoints++] = ep;
		if (shardmap__check_endpoint(ep) != 0 || strpbrk(ep, "@?#/ ") != NULL)
			return SHARDMAP_EINVAL; /* also an empty one: "a:1,,b:2" */
		if (comma == NULL)
			break;
		p = comma + 1;
	}
	return parse_options(s, q ? q + 1 : NULL, rate, burst);
}

static int etcd_open(const char *rest, shardmap_store **out)
{
	if (rest == NULL || out == NULL)
		return SHARDMAP_EINVAL;
	pthread_once(&curl_once, curl_init);
	if (curl_init_rc != CURLE_OK)
		return SHARDMAP_EIO;
	struct shardmap__etcd *s = calloc(1, sizeof *s);
	if (s == NULL)
		return SHARDMAP_ENOMEM;
	s->base.ops = &shardmap__etcd_store_ops;
	s->page = SHARDMAP__ETCD_PAGE;
	s->timeout_ms = SHARDMAP__ETCD_TIMEOUT_MS;
	double rate = SHARDMAP__ETCD_RATE;
	unsigned burst = SHARDMAP__ETCD_BURST;
	int rc = parse_uri(s, rest, &rate, &burst);
	if (rc != 0) {
		etcd_free(s);
		return rc;
	}
	shardmap__bucket_init(&s->bucket, rate, burst);
	shardmap__breaker_init(&s->breaker, SHARDMAP__ETCD_BREAKER_FAILS,
	                       SHARDMAP__ETCD_BREAKER_OPEN_MS * 1000000u);
	shardmap__flight_init(&s->version_flight);
	shardmap__flight_init(&s->load_flight);
	pthread_mutex_init(&s->lock, NULL);
	*out = &s->base;
	return SHARDMAP_OK;
}

/* ---------------------------------------------------------------- snapshot bookkeeping */

void shardmap__etcd_snap_remember(struct shardmap__etcd *s, uint64_t version, uint64_t revision)
{
	pthread_mutex_lock(&s->lock);
	if (revision >= s->snap_revision) {
		s->snap_version = version;
		s->snap_revision = revision;
	}
	pthread_mutex_unlock(&s->lock);
}

uint64_t shardmap__etcd_snap_revision(struct shardmap__etcd *s, uint64_t version)
{
	pthread_mutex_lock(&s->lock);
	uint64_t rev = s->snap_version == version ? s->snap_revision : version;
	pthread_mutex_unlock(&s->lock);
	return rev;
}

/* ---------------------------------------------------------------- load */

/* One snapshot, shared by every loader that joined the flight. */
struct shared_snap {
	_Atomic unsigned refs;
	int rc;
	shardmap_delta *delta;
	shardmap_error why;
};

static void snap_share(void *obj, unsigned joiners)
{
	struct shared_snap *sh = obj;
	/* Relaxed: the flight's mutex publishes the object to the joiners. */
	if (sh != NULL)
		atomic_fetch_add_explicit(&sh->refs, joiners, memory_order_relaxed);
}

static void snap_release(struct shared_snap *sh)
{
	/* acq_rel: the last owner's free must see every other owner's use as finished */
	if (sh != NULL && atomic_fetch_sub_explicit(&sh->refs, 1, memory_order_acq_rel) == 1) {
		shardmap_delta_free(sh->delta);
		free(sh);
	}
}

/* The page after the one being decoded, already requested on a private multi handle that
 * this thread drives, so etcd serves page i + 1 while page i is decoded. */
struct ahead {
	CURLM *multi;
	struct shardmap__etcd_req req;
	int on;            /* a request is in flight */
	char *start;       /* the raw key it starts at (NULL: the prefix's first key) */
	size_t start_len;
	uint64_t revision; /* the revision it is pinned to (0: the first page) */
};

static void ahead_cancel(struct shardmap__etcd *s, struct ahead *a)
{
	if (a->on) {
		curl_multi_remove_handle(a->multi, a->req.easy);
		shardmap__etcd_easy_put(s, shardmap__etcd_req_release(&a->req));
		a->on = 0;
	}
	free(a->start);
	a->start = NULL;
	a->start_len = 0;
}

/* Request the page that starts at at (a snapshot state: its next_key and revision). Takes
 * over at->next_key. Quietly does nothing when it cannot (the caller then fetches the page
 * the ordinary way) or while the circuit breaker is not closed. */
static void ahead_start(struct shardmap__etcd *s, struct ahead *a,
                        const struct shardmap__etcd_snap *at)
{
	ahead_cancel(s, a);
	a->start = at->next_key;
	a->start_len = at->next_len;
	a->revision = at->revision;
	if (shardmap__breaker_state(&s->breaker, shardmap__monotonic_ns()) !=
	    SHARDMAP__BREAKER_CLOSED)
		return;
	json_t *req = shardmap__etcd_snap_request(at);
	char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
	json_decref(req);
	/* Relaxed: the preferred endpoint is a hint. */
	unsigned ep = atomic_load_explicit(&s->preferred, memory_order_relaxed);
	if (body == NULL || shardmap__etcd_req_setup(s, &a->req, shardmap__etcd_easy_get(s), ep,
	                                             "/v3/kv/range", body, NULL, NULL) != 0)
		return;
	if (curl_multi_add_handle(a->multi, a->req.easy) != CURLM_OK) {
		shardmap__etcd_easy_put(s, shardmap__etcd_req_release(&a->req));
		return;
	}
	a->on = 1;
	int running;
	curl_multi_perform(a->multi, &running); /* the request leaves now */
}

static int ahead_is_for(const struct ahead *a, const struct shardmap__etcd_snap *snap)
{
	return a->on && a->revision == snap->revision && a->start_len == snap->next_len &&
	       (a->start_len == 0 || memcmp(a->start, snap->next_key, a->start_len) == 0);
}

/* Wait for the page requested ahead. Returns its text (HTTP 200; *len bytes, the caller
 * frees it) or NULL with *rep saying what went wrong. */
static char *ahead_take(struct shardmap__etcd *s, struct ahead *a, size_t *len,
                        struct shardmap__etcd_reply *rep)
{
	int running = 1;
	CURLcode cc = CURLE_OK;
	while (running) {
		curl_multi_perform(a->multi, &running);
		if (running)
			curl_multi_poll(a->multi, NULL, 0, 1000, NULL);
	}
	CURLMsg *msg;
	int left;
	while ((msg = curl_multi_info_read(a->multi, &left)) != NULL)
		if (msg->msg == CURLMSG_DONE)
			cc = msg->data.result;
	curl_multi_remove_handle(a->multi, a->req.easy);
	a->on = 0;
	shardmap__etcd_req_reply(&a->req, cc, rep, NULL);
	shardmap__breaker_report(&s->breaker, shardmap__monotonic_ns(), rep->transport_ok);
	char *text = NULL;
	if (rep->transport_ok && rep->http == 200) {
		text = a->req.buf ? a->req.buf : strdup("");
		*len = a->req.len;
		a->req.buf = NULL; /* now the caller's */
	}
	shardmap__etcd_easy_put(s, shardmap__etcd_req_release(&a->req));
	return text;
}

/* A guess at where the page after this one starts, from the answer's text before it is
 * decoded: the last "key" field (keys and values are base64, so the pattern cannot occur
 * inside one) and the header's revision. Only a guess: the decode checks it, and a wrong
 * one costs one wasted request. Returns 1 with *next set (its next_key malloc'ed). */
static int peek_next(const char *text, size_t len, const struct shardmap__etcd_snap *snap,
                     struct shardmap__etcd_snap *next)
{
	static const char pat[] = "\"key\":\"";
	const size_t pl = sizeof pat - 1;
	if (strstr(text, "\"more\":true") == NULL || len < pl)
		return 0;
	const char *last = NULL;
	for (const char *p = text + len - pl; p >= text && last == NULL; p--)
		if (memcmp(p, pat, pl) == 0)
			last = p + pl;
	const char *rev = strstr(text, "\"revision\":\"");
	if (last == NULL || rev == NULL)
		return 0;
	char *kb = strndup(last, strcspn(last, "\""));
	char *raw = NULL;
	size_t raw_len;
	int ok = kb != NULL && shardmap__b64_decode(kb, &raw, &raw_len) == 0;
	free(kb);
	if (!ok)
		return 0;
	*next = *snap; /* only the request's fields matter */
	next->next_key = raw; /* its NUL makes len + 1 bytes the successor key */
	next->next_len = raw_len + 1;
	if (next->revision == 0)
		next->revision = strtoull(rev + 12, NULL, 10);
	return 1;
}

/* Read everything under the prefix at one revision, page by page, each page requested
 * while the previous one is decoded. A page the read-ahead could not get is fetched with
 * failover and backoff (shardmap__etcd_call). Restarts (a few times) when the pinned
 * revision is compacted away between pages. */
static int read_snapshot(struct shardmap__etcd *s, shardmap_delta **out, shardmap_error *why)
{
	struct shardmap__etcd_snap snap;
	struct ahead a = {.multi = curl_multi_init()};
	if (a.multi == NULL || shardmap__etcd_snap_init(&snap, s->prefix, s->page) != 0) {
		if (a.multi != NULL)
			curl_multi_cleanup(a.multi);
		return shardmap__error_set(why, SHARDMAP_ENOMEM, SIZE_MAX, "out of memory");
	}
	/* the whole snapshot takes one token: its pages continue one operation */
	uint64_t wait = 0;
	while (!shardmap__bucket_take(&s->bucket, shardmap__monotonic_ns(), &wait))
		shardmap__etcd_sleep_ns(wait);
	int rc = SHARDMAP_OK, restarts = 0;
	while (!snap.done) {
		if (!ahead_is_for(&a, &snap)) { /* nothing ahead, or a wrong guess */
			struct shardmap__etcd_snap at = snap;
			at.next_key = NULL;
			if (snap.next_key != NULL && (at.next_key = malloc(snap.next_len)) != NULL)
				memcpy(at.next_key, snap.next_key, snap.next_len);
			if (snap.next_key == NULL || at.next_key != NULL)
				ahead_start(s, &a, &at);
		}
		struct shardmap__etcd_reply rep = {0};
		json_t *resp = NULL;
		size_t len = 0;
		char *text = a.on ? ahead_take(s, &a, &len, &rep) : NULL;
		if (text != NULL) {
			struct shardmap__etcd_snap next;
			if (peek_next(text, len, &snap, &next))
				ahead_start(s, &a, &next);
			resp = json_loadb(text, len, 0, NULL);
			free(text);
		}
		if (resp == NULL && !shardmap__etcd_compacted(&rep)) {
			/* the ordinary way: failover, backoff, the breaker */
			json_t *req = shardmap__etcd_snap_request(&snap);
			char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
			json_decref(req);
			if (body == NULL) {
				rc = shardmap__error_set(why, SHARDMAP_ENOMEM, SIZE_MAX, "out of memory");
				break;
			}
			rc = shardmap__etcd_call(s, "/v3/kv/range", body, 1, &resp, &rep);
			if (rc != 0 && !shardmap__etcd_compacted(&rep)) {
				rc = shardmap__error_set(why, rc == SHARDMAP_ENOMEM ? rc : SHARDMAP_EIO,
				                         SIZE_MAX, "etcd range of %s/ (page %zu): %s",
				                         s->prefix, snap.pages + 1, rep.msg);
				break;
			}
		}
		if (resp == NULL) { /* compacted: start again at the current revision */
			if (restarts++ == 5) {
				rc = shardmap__error_set(why, SHARDMAP_EIO, SIZE_MAX,
				                         "etcd range of %s/: %s, five times", s->prefix,
				                         rep.msg);
				break;
			}
			ahead_cancel(s, &a);
			shardmap__etcd_snap_reset(&snap);
			rc = SHARDMAP_OK;
			continue;
		}
		rc = shardmap__etcd_snap_take(&snap, resp, why);
		json_decref(resp);
		if (rc != 0)
			break;
	}
	ahead_cancel(s, &a);
	curl_multi_cleanup(a.multi);
	uint64_t revision = snap.revision;
	if (rc == 0)
		rc = shardmap__etcd_snap_finish(&snap, out, why);
	if (rc == 0 && *out != NULL)
		shardmap__etcd_snap_remember(s, shardmap_delta_to(*out), revision);
	shardmap__etcd_snap_fini(&snap);
	return rc;
}

static int etcd_load(shardmap_store *st, int (*sink)(void *ctx, const shardmap_delta *d),
                     void *ctx, shardmap_error *why)
{
	struct shardmap__etcd *s = (struct shardmap__etcd *)st;
	if (s == NULL || sink == NULL)
		return SHARDMAP_EINVAL;
	struct shardmap__flight_result res;
	if (shardmap__flight_join(&s->load_flight, &res)) {
		struct shared_snap *sh = calloc(1, sizeof *sh);
		res = (struct shardmap__flight_result){.rc = SHARDMAP_ENOMEM, .obj = sh};
		if (sh != NULL) {
			atomic_init(&sh->refs, 1);
			sh->rc = res.rc = read_snapshot(s, &sh->delta, &sh->why);
		}
		shardmap__flight_done(&s->load_flight, &res, snap_share);
	}
	struct shared_snap *sh = res.obj;
	int rc = res.rc;
	if (rc == 0 && sh->delta != NULL) /* an empty store delivers nothing */
		rc = sink(ctx, sh->delta);
	else if (sh != NULL && why != NULL)
		*why = sh->why;
	else
		shardmap__error_set(why, rc, SIZE_MAX, "out of memory");
	snap_release(sh);
	return rc;
}

/* ---------------------------------------------------------------- version */

/* The mod_revision of the first key of a range (0 when the range is empty). */
static int first_mod(struct shardmap__etcd *s, json_t *req, uint64_t *out)
{
	char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
	json_decref(req);
	if (body == NULL)
		return SHARDMAP_ENOMEM;
	json_t *resp;
	struct shardmap__etcd_reply rep;
	int rc = shardmap__etcd_call(s, "/v3/kv/range", body, 0, &resp, &rep);
	if (rc != 0) {
		shardmap__etcd_log("version of %s: %s", s->prefix, rep.msg);
		return rc == SHARDMAP_ENOMEM ? rc : SHARDMAP_EIO;
	}
	*out = shardmap__etcd_u64(json_array_get(json_object_get(resp, "kvs"), 0), "mod_revision");
	json_decref(resp);
	return SHARDMAP_OK;
}

static int read_version(struct shardmap__etcd *s, uint64_t *out)
{
	/* PREFIX/version: the revision of the last shardmap write, one key */
	char *key = shardmap__etcd_key_make(s->prefix, SHARDMAP__ETCD_VERSION, NULL, NULL);
	char *kb = key ? shardmap__b64_encode(key, strlen(key)) : NULL;
	free(key);
	if (kb == NULL)
		return SHARDMAP_ENOMEM;
	int rc = first_mod(s, json_pack("{s:s, s:b}", "key", kb, "keys_only", 1), out);
	free(kb);
	if (rc != 0 || *out != 0)
		return rc;
	/* no shardmap write yet (a map entered by hand, or nothing): the newest key */
	char *pk = NULL, *pe = NULL;
	if (shardmap__etcd_prefix_range(s->prefix, &pk, &pe) != 0)
		return SHARDMAP_ENOMEM;
	rc = first_mod(s,
	               json_pack("{s:s, s:s, s:b, s:s, s:s, s:i}", "key", pk, "range_end", pe,
	                         "keys_only", 1, "sort_target", "MOD", "sort_order", "DESCEND",
	                         "limit", 1),
	               out);
	free(pk);
	free(pe);
	return rc;
}

static int etcd_version(shardmap_store *st, uint64_t *out)
{
	struct shardmap__etcd *s = (struct shardmap__etcd *)st;
	if (s == NULL || out == NULL)
		return SHARDMAP_EINVAL;
	struct shardmap__flight_result res;
	if (shardmap__flight_join(&s->version_flight, &res)) {
		res = (struct shardmap__flight_result){0};
		res.rc = read_version(s, &res.value);
		shardmap__flight_done(&s->version_flight, &res, NULL);
	}
	if (res.rc == 0)
		*out = res.value;
	return res.rc;
}

/* ---------------------------------------------------------------- write */

/* After an attempt that may or may not have landed: is PREFIX/version ours? */
static int write_landed(struct shardmap__etcd *s, const char *write_id)
{
	char *key = shardmap__etcd_key_make(s->prefix, SHARDMAP__ETCD_VERSION, NULL, NULL);
	char *kb = key ? shardmap__b64_encode(key, strlen(key)) : NULL;
	json_t *req = kb ? json_pack("{s:s}", "key", kb) : NULL;
	char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
	json_decref(req);
	free(kb);
	free(key);
	json_t *resp = NULL;
	struct shardmap__etcd_reply rep;
	if (body == NULL || shardmap__etcd_call(s, "/v3/kv/range", body, 0, &resp, &rep) != 0)
		return 0;
	const char *vb = json_string_value(
	    json_object_get(json_array_get(json_object_get(resp, "kvs"), 0), "value"));
	char *value = NULL;
	size_t len;
	int ours = vb != NULL && shardmap__b64_decode(vb, &value, &len) == 0 &&
	           strstr(value, write_id) != NULL;
	free(value);
	json_decref(resp);
	return ours;
}

static int etcd_write(shardmap_store *st, const shardmap_delta *d)
{
	struct shardmap__etcd *s = (struct shardmap__etcd *)st;
	if (s == NULL || d == NULL)
		return SHARDMAP_EINVAL;
	uint64_t rnd[2];
	if (getrandom(rnd, sizeof rnd, 0) != sizeof rnd)
		rnd[0] = shardmap__monotonic_ns(), rnd[1] = (uintptr_t)d;
	char write_id[40];
	snprintf(write_id, sizeof write_id, "%016" PRIx64 "%016" PRIx64, rnd[0], rnd[1]);
	shardmap_error why;
	json_t *txn = shardmap__etcd_txn_body(s->prefix, d, write_id, &why);
	if (txn == NULL) {
		shardmap__etcd_log("write to %s refused: %s", s->prefix, why.message);
		return why.code;
	}
	char *body = json_dumps(txn, JSON_COMPACT);
	json_decref(txn);
	if (body == NULL)
		return SHARDMAP_ENOMEM;
	json_t *resp = NULL;
	struct shardmap__etcd_reply rep;
	int rc = shardmap__etcd_call(s, "/v3/kv/txn", body, 0, &resp, &rep);
	if (rc == SHARDMAP_EINVAL) {
		/* e.g. more ops than etcd's --max-txn-ops, or a request over --max-request-bytes */
		shardmap__etcd_log("etcd refused the transaction on %s (%zu ops): %s", s->prefix,
		                   d->n_ops, rep.msg);
		return SHARDMAP_EINVAL;
	}
	if (rc == SHARDMAP_EIO && rep.ambiguous && write_landed(s, write_id))
		return SHARDMAP_OK;
	if (rc != 0) {
		shardmap__etcd_log("write to %s: %s", s->prefix, rep.msg);
		return rc;
	}
	int won = json_is_true(json_object_get(resp, "succeeded")); /* omitted when false */
	json_decref(resp);
	if (won || (rep.ambiguous && write_landed(s, write_id)))
		return SHARDMAP_OK;
	return SHARDMAP_ECONFLICT;
}

const struct shardmap__store_ops shardmap__etcd_store_ops = {
    .abi = SHARDMAP__STORE_ABI,
    .scheme = "etcd://",
    .open = etcd_open,
    .close = etcd_close,
    .load = etcd_load,
    .write = etcd_write,
    .version = etcd_version,
    .follow = shardmap__etcd_follow,
};
