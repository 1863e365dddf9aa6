/*
 * etcd_http.c - requests to etcd's v3 JSON gateway (POST /v3/kv/range, /v3/kv/txn,
 * /v3/watch) for the etcd store and its follower: libcurl easy handles (kept between calls
 * for their open connections), answers classified into "etcd answered", "etcd refused"
 * (an HTTP error carrying a gRPC code) and "no answer" (a transport failure), and the
 * blocking call with failover used by load, write and version: every attempt takes a token
 * from the store's bucket and passes its circuit breaker, and failed attempts move to the
 * next endpoint after a jittered exponential backoff.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "etcd_store.h"

void shardmap__etcd_log(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	fprintf(stderr, "shardmap etcd: %s\n", line);
}

/* ---------------------------------------------------------------- easy handles */

CURL *shardmap__etcd_easy_get(struct shardmap__etcd *s)
{
	CURL *e = NULL;
	pthread_mutex_lock(&s->lock);
	if (s->n_idle > 0)
		e = s->idle[--s->n_idle];
	pthread_mutex_unlock(&s->lock);
	return e;
}

void shardmap__etcd_easy_put(struct shardmap__etcd *s, CURL *easy)
{
	if (easy == NULL)
		return;
	pthread_mutex_lock(&s->lock);
	if (s->n_idle < sizeof s->idle / sizeof s->idle[0]) {
		s->idle[s->n_idle++] = easy;
		easy = NULL;
	}
	pthread_mutex_unlock(&s->lock);
	if (easy != NULL)
		curl_easy_cleanup(easy);
}

/* ---------------------------------------------------------------- one request */

static int grow(struct shardmap__etcd_req *r, size_t more)
{
	if (r->len + more + 1 <= r->cap)
		return 0;
	size_t cap = r->cap ? r->cap : 16384;
	while (cap < r->len + more + 1)
		cap *= 2;
	char *b = realloc(r->buf, cap);
	if (b == NULL)
		return -1;
	r->buf = b;
	r->cap = cap;
	return 0;
}

static size_t on_data(char *p, size_t size, size_t n, void *ctx)
{
	struct shardmap__etcd_req *r = ctx;
	size_t bytes = size * n;
	if (grow(r, bytes) != 0)
		return 0; /* aborts the transfer: CURLE_WRITE_ERROR */
	memcpy(r->buf + r->len, p, bytes);
	r->len += bytes;
	r->buf[r->len] = '\0';
	if (r->on_line == NULL)
		return bytes;
	/* a stream: hand over every complete line, keep the partial tail */
	size_t start = 0;
	for (;;) {
		char *nl = memchr(r->buf + start, '\n', r->len - start);
		if (nl == NULL)
			break;
		*nl = '\0';
		size_t line_len = (size_t)(nl - (r->buf + start));
		if (line_len > 0 && r->on_line(r->ctx, r->buf + start, line_len) != 0)
			return 0;
		start += line_len + 1;
	}
	memmove(r->buf, r->buf + start, r->len - start);
	r->len -= start;
	r->buf[r->len] = '\0';
	return bytes;
}

int shardmap__etcd_req_setup(struct shardmap__etcd *s, struct shardmap__etcd_req *r, CURL *easy,
                             unsigned endpoint, const char *path, char *body,
                             int (*stream_fn)(void *ctx, char *line, size_t len), void *ctx)
{
	memset(r, 0, sizeof *r);
	r->body = body;
	r->endpoint = endpoint % (unsigned)s->n_endpoints;
	r->on_line = stream_fn;
	r->ctx = ctx;
	if (easy != NULL)
		curl_easy_reset(easy); /* keeps its open connections */
	r->easy = easy ? easy : curl_easy_init();
	r->headers = curl_slist_append(NULL, "Content-Type: application/json");
	struct curl_slist *h2 = r->headers ? curl_slist_append(r->headers, "Expect:") : NULL;
	char url[600];
	snprintf(url, sizeof url, "http://%s%s", s->endpoints[r->endpoint], path);
	if (r->easy == NULL || h2 == NULL || body == NULL) {
		shardmap__etcd_easy_put(s, shardmap__etcd_req_release(r));
		return SHARDMAP_ENOMEM;
	}
	r->headers = h2;
	CURL *e = r->easy;
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
	curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(r->body));
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->err);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)SHARDMAP__ETCD_CONNECT_MS);
	curl_easy_setopt(e, CURLOPT_PRIVATE, r);
	curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
	if (stream_fn != NULL) {
		/* a watch is silent while nothing changes: keepalive finds a dead peer */
		curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
		curl_easy_setopt(e, CURLOPT_TCP_KEEPIDLE, 5L);
		curl_easy_setopt(e, CURLOPT_TCP_KEEPINTVL, 2L);
	} else {
		curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, s->timeout_ms);
	}
	return SHARDMAP_OK;
}

CURL *shardmap__etcd_req_release(struct shardmap__etcd_req *r)
{
	CURL *e = r->easy;
	curl_slist_free_all(r->headers);
	free(r->body);
	free(r->buf);
	memset(r, 0, sizeof *r);
	return e;
}

void shardmap__etcd_req_reply(struct shardmap__etcd_req *r, CURLcode cc,
                              struct shardmap__etcd_reply *rep, json_t **json)
{
	memset(rep, 0, sizeof *rep);
	if (json != NULL)
		*json = NULL;
	/* only a refused or unresolvable connection proves the request never left */
	rep->sent = cc != CURLE_COULDNT_CONNECT && cc != CURLE_COULDNT_RESOLVE_HOST;
	if (cc != CURLE_OK) {
		snprintf(rep->msg, sizeof rep->msg, "%.60s: %.90s", curl_easy_strerror(cc),
		         r->err[0] ? r->err : "no detail");
		return;
	}
	curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &rep->http);
	if (rep->http == 200 && json == NULL) { /* the caller decodes the text itself */
		rep->transport_ok = 1;
		return;
	}
	json_error_t err;
	json_t *j = r->len ? json_loadb(r->buf, r->len, 0, &err) : NULL;
	if (rep->http >= 500 || (rep->http != 200 && !json_is_object(j))) {
		snprintf(rep->msg, sizeof rep->msg, "HTTP %ld from the gateway", rep->http);
		json_decref(j);
		return;
	}
	if (rep->http != 200) {
		rep->transport_ok = 1;
		rep->code = (int)json_integer_value(json_object_get(j, "code"));
		const char *m = json_string_value(json_object_get(j, "message"));
		snprintf(rep->msg, sizeof rep->msg, "%s", m ? m : "refused");
		json_decref(j);
		return;
	}
	if (!json_is_object(j)) {
		snprintf(rep->msg, sizeof rep->msg, "the gateway's answer is not JSON");
		json_decref(j);
		return;
	}
	rep->transport_ok = 1;
	if (json != NULL)
		*json = j;
	else
		json_decref(j);
}

int shardmap__etcd_compacted(const struct shardmap__etcd_reply *rep)
{
	return rep->code == SHARDMAP__GRPC_OUT_OF_RANGE && strstr(rep->msg, "compacted") != NULL;
}

/* ---------------------------------------------------------------- the blocking call */

void shardmap__etcd_sleep_ns(uint64_t ns)
{
	struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u),
	                      .tv_nsec = (long)(ns % 1000000000u)};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

int shardmap__etcd_call(struct shardmap__etcd *s, const char *path, char *body, int continued,
                        json_t **json, struct shardmap__etcd_reply *rep)
{
	struct shardmap__backoff bo;
	shardmap__backoff_init(&bo, SHARDMAP__ETCD_BACKOFF_BASE_MS * 1000000u,
	                       SHARDMAP__ETCD_BACKOFF_MAX_MS * 1000000u,
	                       shardmap__monotonic_ns() ^ (uintptr_t)&bo);
	/* two rounds over the endpoints, at least three attempts */
	unsigned attempts = (unsigned)(2 * s->n_endpoints < 3 ? 3 : 2 * s->n_endpoints);
	/* Relaxed: the preferred endpoint is a hint; a stale one costs a failover, no more. */
	unsigned ep = atomic_load_explicit(&s->preferred, memory_order_relaxed);
	int ambiguous = 0;
	memset(rep, 0, sizeof *rep);
	*json = NULL;
	for (unsigned a = 0; a < attempts; a++) {
		uint64_t wait = 0;
		/* the bucket spaces operations out (a snapshot takes one token, not one per
		 * page); waiting for a token is not a failed attempt */
		while ((a > 0 || !continued) &&
		       !shardmap__bucket_take(&s->bucket, shardmap__monotonic_ns(), &wait))
			shardmap__etcd_sleep_ns(wait);
		if (!shardmap__breaker_allow(&s->breaker, shardmap__monotonic_ns(), &wait)) {
			snprintf(rep->msg, sizeof rep->msg, "circuit breaker open after repeated failures");
			shardmap__etcd_sleep_ns(wait < SHARDMAP__ETCD_BACKOFF_MAX_MS * 1000000u
			             ? wait
			             : SHARDMAP__ETCD_BACKOFF_MAX_MS * 1000000u);
			continue;
		}
		struct shardmap__etcd_req r;
		char *copy = strdup(body);
		if (copy == NULL || shardmap__etcd_req_setup(s, &r, shardmap__etcd_easy_get(s), ep,
		                                             path, copy, NULL, NULL) != 0) {
			shardmap__breaker_report(&s->breaker, shardmap__monotonic_ns(), 1);
			free(body);
			return SHARDMAP_ENOMEM;
		}
		CURLcode cc = curl_easy_perform(r.easy);
		shardmap__etcd_req_reply(&r, cc, rep, json);
		shardmap__etcd_easy_put(s, shardmap__etcd_req_release(&r));
		shardmap__breaker_report(&s->breaker, shardmap__monotonic_ns(), rep->transport_ok);
		if (rep->transport_ok) {
			rep->ambiguous = ambiguous;
			/* Relaxed: see above. */
			atomic_store_explicit(&s->preferred, ep, memory_order_relaxed);
			free(body);
			return rep->http == 200 ? SHARDMAP_OK : SHARDMAP_EINVAL;
		}
		ambiguous |= rep->sent;
		ep = (ep + 1) % (unsigned)s->n_endpoints;
		if (a + 1 < attempts)
			shardmap__etcd_sleep_ns(shardmap__backoff_next(&bo));
	}
	rep->ambiguous = ambiguous;
	free(body);
	return SHARDMAP_EIO;
}
