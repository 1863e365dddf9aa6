/*
 * store_etcd.c - the "etcd://HOST:PORT[,HOST:PORT...]/PREFIX" store: the distributed
 * authoritative store, through etcd's v3 JSON gateway. For control planes (write, version)
 * and for maps (load, follow).
 *
 * Versions are etcd revisions. The version of the data under PREFIX is the revision of its
 * last change: every write through shardmap also puts PREFIX/version, so after a shardmap
 * write it is that write's revision, and the highest mod_revision under the prefix says it
 * (version()). load reads everything under the prefix in pages pinned to one revision and
 * delivers it as one delta from 0 to that version. write is one transaction whose compare
 * asks that no key under the prefix changed after the delta's from_version: of two control
 * planes that planned from the same version exactly one wins, the other gets
 * SHARDMAP_ECONFLICT. The follower (etcd_follow.c) applies each revision's events as a
 * delta from the map's version to that revision, so a follower's version is always the
 * revision of the last change it applied. Layout and formats: docs/etcd.md.
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

/* Read everything under the prefix at one revision. Restarts (a few times) when that
 * revision is compacted away between pages. */
static int read_snapshot(struct shardmap__etcd *s, shardmap_delta **out, shardmap_error *why)
{
	struct shardmap__etcd_snap snap;
	if (shardmap__etcd_snap_init(&snap, s->prefix, s->page) != 0)
		return shardmap__error_set(why, SHARDMAP_ENOMEM, SIZE_MAX, "out of memory");
	int rc = SHARDMAP_OK, restarts = 0;
	while (!snap.done) {
		json_t *req = shardmap__etcd_snap_request(&snap), *resp = NULL;
		char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
		json_decref(req);
		if (body == NULL) {
			rc = shardmap__error_set(why, SHARDMAP_ENOMEM, SIZE_MAX, "out of memory");
			break;
		}
		struct shardmap__etcd_reply rep;
		rc = shardmap__etcd_call(s, "/v3/kv/range", body, &resp, &rep);
		if (rc == SHARDMAP_EINVAL && shardmap__etcd_compacted(&rep) && restarts++ < 5) {
			shardmap__etcd_snap_reset(&snap);
			continue;
		}
		if (rc != 0) {
			rc = shardmap__error_set(why, rc == SHARDMAP_ENOMEM ? rc : SHARDMAP_EIO, SIZE_MAX,
			                         "etcd range of %s/ (page %zu): %s", s->prefix,
			                         snap.pages + 1, rep.msg);
			break;
		}
		rc = shardmap__etcd_snap_take(&snap, resp, why);
		json_decref(resp);
		if (rc != 0)
			break;
	}
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

static int read_version(struct shardmap__etcd *s, uint64_t *out)
{
	char *pk = NULL, *pe = NULL;
	if (shardmap__etcd_prefix_range(s->prefix, &pk, &pe) != 0)
		return SHARDMAP_ENOMEM;
	/* the newest key under the prefix: its mod_revision is the version */
	json_t *req = json_pack("{s:s, s:s, s:b, s:s, s:s, s:i}", "key", pk, "range_end", pe,
	                        "keys_only", 1, "sort_target", "MOD", "sort_order", "DESCEND",
	                        "limit", 1);
	free(pk);
	free(pe);
	char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
	json_decref(req);
	if (body == NULL)
		return SHARDMAP_ENOMEM;
	json_t *resp;
	struct shardmap__etcd_reply rep;
	int rc = shardmap__etcd_call(s, "/v3/kv/range", body, &resp, &rep);
	if (rc != 0) {
		shardmap__etcd_log("version of %s: %s", s->prefix, rep.msg);
		return rc == SHARDMAP_ENOMEM ? rc : SHARDMAP_EIO;
	}
	json_t *kvs = json_object_get(resp, "kvs");
	uint64_t v = json_array_size(kvs) ? shardmap__etcd_u64(json_array_get(kvs, 0),
	                                                         "mod_revision")
	                                  : shardmap__etcd_u64(json_object_get(resp, "header"),
	                                                       "revision");
	json_decref(resp);
	if (v == 0)
		return SHARDMAP_EIO;
	*out = v;
	return SHARDMAP_OK;
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
	if (body == NULL || shardmap__etcd_call(s, "/v3/kv/range", body, &resp, &rep) != 0)
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
	int rc = shardmap__etcd_call(s, "/v3/kv/txn", body, &resp, &rep);
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
