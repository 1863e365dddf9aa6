/*
 * etcd_json.c - the meaning of an etcd store's keys and values, for lib/store_etcd.c and
 * lib/etcd_follow.c: one key per record under the store's prefix, each value a small JSON
 * object an operator can read and fix with etcdctl (docs/etcd.md). Translates deltas into
 * one transaction body, range pages into a bootstrap delta, and watch events into deltas.
 * Bad data is refused with SHARDMAP_ECORRUPT (or SHARDMAP_ECONFLICT for a shard whose stream
 * does not exist) and a message that names the key. No I/O here.
 */
#include <ctype.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "etcd_json.h"

/* ---------------------------------------------------------------- base64 */

char *shardmap__b64_encode(const void *p, size_t n)
{
	char *out = malloc(4 * ((n + 2) / 3) + 1);
	if (out == NULL)
		return NULL;
	EVP_EncodeBlock((unsigned char *)out, p, (int)n);
	return out;
}

int shardmap__b64_decode(const char *s, char **out, size_t *len)
{
	size_t n = strlen(s);
	if (n % 4 != 0 || n > INT32_MAX)
		return SHARDMAP_ECORRUPT;
	/* Strict: only the alphabet, then at most two '=' at the very end (EVP_DecodeBlock
	 * would also accept whitespace and padding in the middle of the last quantum). */
	size_t pad = (n >= 1 && s[n - 1] == '=') + (n >= 2 && s[n - 2] == '=');
	for (size_t i = 0; i < n - pad; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '+' && s[i] != '/')
			return SHARDMAP_ECORRUPT;
	char *buf = malloc(n / 4 * 3 + 1);
	if (buf == NULL)
		return SHARDMAP_ENOMEM;
	int got = n ? EVP_DecodeBlock((unsigned char *)buf, (const unsigned char *)s, (int)n) : 0;
	if (got < 0) {
		free(buf);
		return SHARDMAP_ECORRUPT;
	}
	/* EVP_DecodeBlock counts the padding as zero bytes */
	*len = (size_t)got - pad;
	buf[*len] = '\0';
	*out = buf;
	return SHARDMAP_OK;
}

/* ---------------------------------------------------------------- keys */

/* Append name to buf at *pos with '%' and '/' escaped. buf must have room (3x). */
static void escape_into(char *buf, size_t *pos, const char *name)
{
	static const char hex[] = "0123456789ABCDEF";
	for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
		if (*p == '%' || *p == '/') {
			buf[(*pos)++] = '%';
			buf[(*pos)++] = hex[*p >> 4];
			buf[(*pos)++] = hex[*p & 15];
		} else {
			buf[(*pos)++] = (char)*p;
		}
	}
}

char *shardmap__etcd_key_make(const char *prefix, enum shardmap__etcd_kind kind,
                              const char *stream, const char *id)
{
	size_t cap = strlen(prefix) + 16 + 3 * (stream ? strlen(stream) : 0) +
	             3 * (id ? strlen(id) : 0);
	char *k = malloc(cap);
	if (k == NULL)
		return NULL;
	size_t pos = 0;
	memcpy(k, prefix, strlen(prefix));
	pos = strlen(prefix);
	switch (kind) {
	case SHARDMAP__ETCD_VERSION:
		memcpy(k + pos, "/version", 8);
		pos += 8;
		break;
	case SHARDMAP__ETCD_STREAM:
		memcpy(k + pos, "/streams/", 9);
		pos += 9;
		escape_into(k, &pos, stream);
		break;
	case SHARDMAP__ETCD_SHARD:
		memcpy(k + pos, "/shards/", 8);
		pos += 8;
		escape_into(k, &pos, stream);
		k[pos++] = '/';
		escape_into(k, &pos, id);
		break;
	case SHARDMAP__ETCD_CELL:
		memcpy(k + pos, "/cells/", 7);
		pos += 7;
		escape_into(k, &pos, id);
		break;
	}
	k[pos] = '\0';
	return k;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Decode one escaped segment [p, p + n) into out (SHARDMAP__NAME_MAX + 1 bytes). */
static int unescape(const char *p, size_t n, char *out)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		char c = p[i];
		if (c == '%') {
			if (i + 2 >= n)
				return SHARDMAP_ECORRUPT;
			int hi = hexval(p[i + 1]);
			int lo = hexval(p[i + 2]);
			if (hi < 0 || lo < 0)
				return SHARDMAP_ECORRUPT;
			c = (char)(hi << 4 | lo);
			i += 2;
		} else if (c == '\0') {
			return SHARDMAP_ECORRUPT;
		}
		if (o >= SHARDMAP__NAME_MAX)
			return SHARDMAP_ECORRUPT;
		out[o++] = c;
	}
	out[o] = '\0';
	return shardmap__check_name(out) == 0 ? SHARDMAP_OK : SHARDMAP_ECORRUPT;
}

int shardmap__etcd_key_parse(const char *prefix, const char *key, size_t len,
                             struct shardmap__etcd_key *out, shardmap_error *why)
{
	size_t pl = strlen(prefix);
	int kl = len > 200 ? 200 : (int)len; /* how much of the key a message shows */
	if (len <= pl || memcmp(key, prefix, pl) != 0 || key[pl] != '/')
		return shardmap__error_set(why, SHARDMAP_ECORRUPT, SIZE_MAX,
		                           "key %.*s: not under prefix %s/", kl, key, prefix);
	const char *r = key + pl + 1;
	size_t n = len - pl - 1;
	const char *bad = "unknown key layout (expected streams/<name>, shards/<stream>/<id>, "
	                  "cells/<id> or version)";
	int rc = SHARDMAP_OK;
	out->stream[0] = out->id[0] = '\0';
	if (n == 7 && memcmp(r, "version", 7) == 0) {
		out->kind = SHARDMAP__ETCD_VERSION;
		return SHARDMAP_OK;
	} else if (n > 8 && memcmp(r, "streams/", 8) == 0) {
		out->kind = SHARDMAP__ETCD_STREAM;
		if (memchr(r + 8, '/', n - 8) != NULL)
			goto layout;
		rc = unescape(r + 8, n - 8, out->stream);
	} else if (n > 6 && memcmp(r, "cells/", 6) == 0) {
		out->kind = SHARDMAP__ETCD_CELL;
		if (memchr(r + 6, '/', n - 6) != NULL)
			goto layout;
		rc = unescape(r + 6, n - 6, out->id);
	} else if (n > 7 && memcmp(r, "shards/", 7) == 0) {
		out->kind = SHARDMAP__ETCD_SHARD;
		const char *s = r + 7;
		size_t sn = n - 7;
		const char *slash = memchr(s, '/', sn);
		if (slash == NULL || slash == s || memchr(slash + 1, '/', sn - (size_t)(slash + 1 - s)))
			goto layout;
		rc = unescape(s, (size_t)(slash - s), out->stream);
		if (rc == 0)
			rc = unescape(slash + 1, sn - (size_t)(slash + 1 - s), out->id);
	} else {
		goto layout;
	}
	if (rc != 0)
		return shardmap__error_set(why, SHARDMAP_ECORRUPT, SIZE_MAX,
		                           "key %.*s: invalid name (empty, too long, a control "
		                           "character or a bad %%-escape)",
		                           kl, key);
	return SHARDMAP_OK;
layout:
	return shardmap__error_set(why, SHARDMAP_ECORRUPT, SIZE_MAX, "key %.*s: %s", kl, key, bad);
}

int shardmap__etcd_prefix_range(const char *prefix, char **key_b64, char **end_b64)
{
	size_t pl = strlen(prefix);
	char *k = malloc(pl + 2);
	if (k == NULL)
		return SHARDMAP_ENOMEM;
	memcpy(k, prefix, pl);
	k[pl] = '/';
	*key_b64 = shardmap__b64_encode(k, pl + 1);
	k[pl] = '/' + 1; /* "PREFIX0": the first key past every "PREFIX/..." */
	*end_b64 = shardmap__b64_encode(k, pl + 1);
	free(k);
	if (*key_b64 == NULL || *end_b64 == NULL) {
		free(*key_b64);
		free(*end_b64);
		return SHARDMAP_ENOMEM;
	}
	return SHARDMAP_OK;
}

/* ---------------------------------------------------------------- values */

static int bad_value(shardmap_error *why, const char *key_text, const char *reason)
{
	return shardmap__error_set(why, SHARDMAP_ECORRUPT, SIZE_MAX, "key %.150s: %s", key_text,
	                           reason);
}

static int put_stream_op(shardmap_delta *d, const struct shardmap__etcd_key *k, json_t *v,
                         const char *key_text, shardmap_error *why)
{
	const char *hash = NULL;
	json_error_t err;
	if (json_unpack_ex(v, &err, JSON_STRICT, "{s:s}", "hash", &hash) != 0)
		return bad_value(why, key_text, err.text);
	int fn;
	if (strcmp(hash, "xxh3") == 0)
		fn = SHARDMAP_HASH_XXH3;
	else if (strcmp(hash, "md5") == 0)
		fn = SHARDMAP_HASH_MD5;
	else
		return bad_value(why, key_text, "hash must be \"xxh3\" or \"md5\"");
	int rc = shardmap_delta_put_stream(d, k->stream, fn);
	return rc == SHARDMAP_EINVAL ? bad_value(why, key_text, "invalid stream") : rc;
}

static int parse_hash(const char *text, shardmap_hash *h, const char *field, const char *key_text,
                      shardmap_error *why)
{
	if (shardmap_hash_parse(text, h) == 0)
		return SHARDMAP_OK;
	const char *e = shardmap_hash_parse_error(text);
	return shardmap__error_set(why, SHARDMAP_ECORRUPT, SIZE_MAX,
	                           "key %.150s: %s is not a hash key: %s", key_text, field,
	                           e ? e : "invalid");
}

static int put_shard_op(shardmap_delta *d, const struct shardmap__etcd_key *k, json_t *v,
                        const char *key_text, shardmap_error *why)
{
	const char *start = NULL, *end = NULL, *owner = NULL, *parent = NULL, *adj = NULL;
	int open = 0;
	json_error_t err;
	if (json_unpack_ex(v, &err, JSON_STRICT, "{s:s, s:s, s:b, s:s, s?s, s?s}", "start", &start,
	                   "end", &end, "open", &open, "owner_cell", &owner, "parent", &parent,
	                   "adjacent_parent", &adj) != 0)
		return bad_value(why, key_text, err.text);
	shardmap_shard s = {.id = k->id, .open = open, .owner_cell = owner, .parent = parent,
	                    .adjacent_parent = adj};
	int rc = parse_hash(start, &s.start, "start", key_text, why);
	if (rc == 0)
		rc = parse_hash(end, &s.end, "end", key_text, why);
	if (rc != 0)
		return rc;
	if (shardmap_hash_cmp(s.start, s.end) > 0)
		return bad_value(why, key_text, "start > end");
	rc = shardmap_delta_put_shard(d, k->stream, &s);
	return rc == SHARDMAP_EINVAL ? bad_value(why, key_text,
	                                         "invalid owner_cell, parent or adjacent_parent")
	                             : rc;
}

static int put_cell_op(shardmap_delta *d, const struct shardmap__etcd_key *k, json_t *v,
                       const char *key_text, shardmap_error *why)
{
	json_t *eps = NULL;
	json_error_t err;
	if (json_unpack_ex(v, &err, JSON_STRICT, "{s:o}", "endpoints", &eps) != 0)
		return bad_value(why, key_text, err.text);
	if (!json_is_array(eps))
		return bad_value(why, key_text, "endpoints must be an array of \"host:port\"");
	size_t n = json_array_size(eps);
	const char **list = calloc(n ? n : 1, sizeof *list);
	if (list == NULL)
		return SHARDMAP_ENOMEM;
	int rc = SHARDMAP_OK;
	for (size_t i = 0; i < n && rc == 0; i++) {
		list[i] = json_string_value(json_array_get(eps, i));
		if (list[i] == NULL || shardmap__check_endpoint(list[i]) != 0)
			rc = shardmap__error_set(why, SHARDMAP_ECORRUPT, SIZE_MAX,
			                         "key %.150s: endpoint %zu is not \"host:port\"",
			                         key_text, i);
	}
	if (rc == 0) {
		rc = shardmap_delta_put_cell(d, k->id, list, n);
		if (rc == SHARDMAP_EINVAL)
			rc = bad_value(why, key_text, "invalid cell");
	}
	free(list);
	return rc;
}

int shardmap__etcd_put_op(shardmap_delta *d, const struct shardmap__etcd_key *k,
                          const char *value, size_t len, const char *key_text,
                          shardmap_error *why)
{
	if (k->kind == SHARDMAP__ETCD_VERSION)
		return SHARDMAP_OK; /* bookkeeping of writers, not a record */
	json_error_t err;
	json_t *v = json_loadb(value, len, JSON_REJECT_DUPLICATES, &err);
	if (v == NULL) {
		char msg[200];
		snprintf(msg, sizeof msg, "value is not valid JSON: %s", err.text);
		return bad_value(why, key_text, msg);
	}
	int rc;
	if (!json_is_object(v))
		rc = bad_value(why, key_text, "value is not a JSON object");
	else if (k->kind == SHARDMAP__ETCD_STREAM)
		rc = put_stream_op(d, k, v, key_text, why);
	else if (k->kind == SHARDMAP__ETCD_SHARD)
		rc = put_shard_op(d, k, v, key_text, why);
	else
		rc = put_cell_op(d, k, v, key_text, why);
	json_decref(v);
	return rc;
}

int shardmap__etcd_delete_op(shardmap_delta *d, const struct shardmap__etcd_key *k)
{
	switch (k->kind) {
	case SHARDMAP__ETCD_STREAM:
		return shardmap_delta_delete_stream(d, k->stream);
	case SHARDMAP__ETCD_SHARD:
		return shardmap_delta_delete_shard(d, k->stream, k->id);
	case SHARDMAP__ETCD_CELL:
		return shardmap_delta_delete_cell(d, k->id);
	case SHARDMAP__ETCD_VERSION:
		break;
	}
	return SHARDMAP_OK;
}

/* The JSON text of a put op's value (malloc'ed). NULL on ENOMEM. */
static char *value_text(const struct shardmap__op *op)
{
	json_t *v = NULL;
	if (op->kind == SHARDMAP__OP_PUT_STREAM) {
		v = json_pack("{s:s}", "hash", op->hash_fn == SHARDMAP_HASH_MD5 ? "md5" : "xxh3");
	} else if (op->kind == SHARDMAP__OP_PUT_CELL) {
		json_t *eps = json_array();
		for (size_t i = 0; eps != NULL && i < op->n_endpoints; i++)
			if (json_array_append_new(eps, json_string(op->endpoints[i])) != 0) {
				json_decref(eps);
				eps = NULL;
			}
		v = eps ? json_pack("{s:o}", "endpoints", eps) : NULL;
	} else {
		char start[SHARDMAP_HASH_DECIMAL_MAX], end[SHARDMAP_HASH_DECIMAL_MAX];
		shardmap_hash_format(op->start, start);
		shardmap_hash_format(op->end, end);
		v = json_pack("{s:s, s:s, s:b, s:s}", "start", start, "end", end, "open", op->open,
		              "owner_cell", op->owner_cell);
		if (v != NULL && op->parent != NULL)
			json_object_set_new(v, "parent", json_string(op->parent));
		if (v != NULL && op->adjacent_parent != NULL)
			json_object_set_new(v, "adjacent_parent", json_string(op->adjacent_parent));
	}
	char *text = v ? json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
	json_decref(v);
	return text;
}

/* ---------------------------------------------------------------- transactions */

static char *op_key(const char *prefix, const struct shardmap__op *op)
{
	switch (op->kind) {
	case SHARDMAP__OP_PUT_STREAM:
	case SHARDMAP__OP_DELETE_STREAM:
		return shardmap__etcd_key_make(prefix, SHARDMAP__ETCD_STREAM, op->stream, NULL);
	case SHARDMAP__OP_PUT_SHARD:
	case SHARDMAP__OP_DELETE_SHARD:
		return shardmap__etcd_key_make(prefix, SHARDMAP__ETCD_SHARD, op->stream, op->id);
	case SHARDMAP__OP_PUT_CELL:
	case SHARDMAP__OP_DELETE_CELL:
		return shardmap__etcd_key_make(prefix, SHARDMAP__ETCD_CELL, NULL, op->id);
	}
	return NULL;
}

/* {"request_put":{...}} or {"request_delete_range":{...}} with raw key text, value text. */
static json_t *request_put(const char *key, const char *value)
{
	char *k = shardmap__b64_encode(key, strlen(key));
	char *v = shardmap__b64_encode(value, strlen(value));
	json_t *r = k && v ? json_pack("{s:{s:s, s:s}}", "request_put", "key", k, "value", v)
	                   : NULL;
	free(k);
	free(v);
	return r;
}

static json_t *request_delete(const char *key, int whole_dir)
{
	size_t n = strlen(key);
	char *k = shardmap__b64_encode(key, n);
	json_t *r = NULL;
	if (k != NULL && !whole_dir) {
		r = json_pack("{s:{s:s}}", "request_delete_range", "key", k);
	} else if (k != NULL) {
		/* key ends with '/': the range [key, key with '/' + 1) is everything below it */
		char *end = strdup(key);
		char *e = end ? (end[n - 1] = '/' + 1, shardmap__b64_encode(end, n)) : NULL;
		if (e != NULL)
			r = json_pack("{s:{s:s, s:s}}", "request_delete_range", "key", k, "range_end",
			              e);
		free(e);
		free(end);
	}
	free(k);
	return r;
}

/* Does the delta delete stream `name` (at any index)? */
static int deletes_stream(const shardmap_delta *d, const char *name)
{
	for (size_t i = 0; i < d->n_ops; i++)
		if (d->ops[i].kind == SHARDMAP__OP_DELETE_STREAM && strcmp(d->ops[i].stream, name) == 0)
			return 1;
	return 0;
}

/* Append the requests of op i to success (unless a later op on the same key replaces it). */
static int txn_add_op(json_t *success, json_t *last_of, const char *prefix,
                      const shardmap_delta *d, size_t i, shardmap_error *why)
{
	const struct shardmap__op *op = &d->ops[i];
	char *key = op_key(prefix, op);
	if (key == NULL)
		return SHARDMAP_ENOMEM;
	int rc = SHARDMAP_OK;
	json_t *req = NULL, *req2 = NULL;
	if ((size_t)json_integer_value(json_object_get(last_of, key)) != i)
		goto out; /* a later op on the same key wins */
	if (op->kind == SHARDMAP__OP_DELETE_STREAM) {
		char *dir = shardmap__etcd_key_make(prefix, SHARDMAP__ETCD_SHARD, op->stream, "x");
		if (dir == NULL) {
			rc = SHARDMAP_ENOMEM;
			goto out;
		}
		dir[strlen(dir) - 1] = '\0'; /* "PREFIX/shards/<stream>/" */
		req = request_delete(dir, 1);
		req2 = request_delete(key, 0);
		free(dir);
	} else if (op->kind == SHARDMAP__OP_DELETE_SHARD || op->kind == SHARDMAP__OP_DELETE_CELL) {
		if (op->kind == SHARDMAP__OP_DELETE_SHARD && deletes_stream(d, op->stream))
			goto out; /* the stream's deletion removes it */
		req = request_delete(key, 0);
	} else {
		if ((op->kind == SHARDMAP__OP_PUT_SHARD || op->kind == SHARDMAP__OP_PUT_STREAM) &&
		    deletes_stream(d, op->stream)) {
			rc = shardmap__error_set(why, SHARDMAP_EINVAL, i,
			                         "op %zu (%s): the delta also deletes stream %.100s; "
			                         "one etcd transaction cannot do both",
			                         i, shardmap__op_name(op->kind), op->stream);
			goto out;
		}
		char *text = value_text(op);
		req = text ? request_put(key, text) : NULL;
		free(text);
	}
	if (req == NULL || json_array_append_new(success, req) != 0 ||
	    (req2 != NULL && json_array_append_new(success, req2) != 0))
		rc = SHARDMAP_ENOMEM;
	req = NULL;
	if (op->kind == SHARDMAP__OP_DELETE_STREAM && req2 == NULL)
		rc = SHARDMAP_ENOMEM;
	req2 = NULL;
out:
	json_decref(req);
	json_decref(req2);
	free(key);
	return rc;
}

json_t *shardmap__etcd_txn_body(const char *prefix, const shardmap_delta *d,
                                const char *write_id, shardmap_error *why)
{
	json_t *body = NULL, *success = json_array(), *last_of = json_object();
	char *vkey = NULL, *vtext = NULL;
	int rc = SHARDMAP_ENOMEM;
	if (success == NULL || last_of == NULL)
		goto out;
	/* a delete_stream after a put_stream of the same stream leaves the key's last op a
	 * delete, which subsumes the put; the reverse order is refused in txn_add_op */
	for (size_t i = 0; i < d->n_ops; i++) {
		char *key = op_key(prefix, &d->ops[i]);
		if (key == NULL || json_object_set_new(last_of, key, json_integer((json_int_t)i))) {
			free(key);
			goto out;
		}
		free(key);
	}
	for (size_t i = 0; i < d->n_ops; i++) {
		rc = txn_add_op(success, last_of, prefix, d, i, why);
		if (rc != 0)
			goto out;
	}
	rc = SHARDMAP_ENOMEM;
	vkey = shardmap__etcd_key_make(prefix, SHARDMAP__ETCD_VERSION, NULL, NULL);
	json_t *vv = json_pack("{s:s}", "write_id", write_id);
	vtext = vv ? json_dumps(vv, JSON_COMPACT) : NULL;
	json_decref(vv);
	json_t *vreq = vkey && vtext ? request_put(vkey, vtext) : NULL;
	if (vreq == NULL || json_array_append_new(success, vreq) != 0)
		goto out;
	char *vk = shardmap__b64_encode(vkey, strlen(vkey));
	if (vk == NULL)
		goto out;
	char rev[24];
	snprintf(rev, sizeof rev, "%" PRIu64, d->from_version + 1);
	/* No shardmap write landed after from_version: PREFIX/version, which every shardmap
	 * write puts, has mod_revision < from_version + 1 (0 when it does not exist yet). One
	 * key, so the compare costs the same whatever the size of the map. */
	body = json_pack("{s:[{s:s, s:s, s:s, s:s}], s:O}", "compare", "key", vk, "target", "MOD",
	                 "result", "LESS", "mod_revision", rev, "success", success);
	free(vk);
	rc = body ? SHARDMAP_OK : SHARDMAP_ENOMEM;
out:
	if (rc == SHARDMAP_ENOMEM)
		shardmap__error_set(why, rc, SIZE_MAX, "out of memory building the transaction");
	json_decref(success);
	json_decref(last_of);
	free(vkey);
	free(vtext);
	return rc == 0 ? body : NULL;
}

/* ---------------------------------------------------------------- int64 fields */

uint64_t shardmap__etcd_u64(json_t *obj, const char *field)
{
	json_t *v = json_object_get(obj, field);
	if (json_is_integer(v))
		return json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
	const char *s = json_string_value(v);
	if (s == NULL || *s < '0' || *s > '9')
		return 0;
	char *end;
	unsigned long long x = strtoull(s, &end, 10);
	return *end == '\0' ? (uint64_t)x : 0;
}

/* ---------------------------------------------------------------- one key-value */

/* Decode kv ({"key":b64,"value":b64,...}) and append its op (a put, or a delete when del)
 * to the delta pick chooses for the record's kind. */
static int kv_op(const char *prefix, json_t *kv, int del, shardmap_delta *(*pick)(void *, int),
                 void *pick_ctx, shardmap_error *why)
{
	const char *kb = json_string_value(json_object_get(kv, "key"));
	if (kb == NULL)
		return shardmap__error_set(why, SHARDMAP_EIO, SIZE_MAX,
		                           "etcd answered a key-value without a key");
	char *key = NULL, *value = NULL;
	size_t klen, vlen = 0;
	int rc = shardmap__b64_decode(kb, &key, &klen);
	if (rc != 0)
		return shardmap__error_set(why, rc == SHARDMAP_ENOMEM ? rc : SHARDMAP_EIO, SIZE_MAX,
		                           "etcd answered a key that is not base64");
	struct shardmap__etcd_key k;
	rc = shardmap__etcd_key_parse(prefix, key, klen, &k, why);
	if (rc != 0)
		goto out;
	shardmap_delta *d = pick(pick_ctx, k.kind);
	if (del) {
		rc = shardmap__etcd_delete_op(d, &k);
		goto out;
	}
	/* the gateway omits an empty value */
	const char *vb = json_string_value(json_object_get(kv, "value"));
	rc = shardmap__b64_decode(vb ? vb : "", &value, &vlen);
	if (rc == SHARDMAP_ECORRUPT)
		rc = bad_value(why, key, "value is not base64");
	if (rc == 0)
		rc = shardmap__etcd_put_op(d, &k, value, vlen, key, why);
out:
	if (rc == SHARDMAP_ENOMEM)
		shardmap__error_set(why, rc, SIZE_MAX, "out of memory decoding key %.150s", key);
	free(key);
	free(value);
	return rc;
}

/* ---------------------------------------------------------------- snapshot pages */

int shardmap__etcd_snap_init(struct shardmap__etcd_snap *s, const char *prefix, unsigned page)
{
	memset(s, 0, sizeof *s);
	s->prefix = strdup(prefix);
	s->page = page ? page : 1000;
	s->streams = json_object();
	if (s->prefix == NULL || s->streams == NULL) {
		shardmap__etcd_snap_fini(s);
		return SHARDMAP_ENOMEM;
	}
	return SHARDMAP_OK;
}

static void snap_clear(struct shardmap__etcd_snap *s)
{
	for (int i = 0; i < 3; i++) {
		shardmap_delta_free(s->part[i]);
		s->part[i] = NULL;
	}
	free(s->next_key);
	s->next_key = NULL;
	s->next_len = 0;
	s->revision = s->max_mod = 0;
	s->done = 0;
	s->pages = s->keys = 0;
	if (s->streams != NULL)
		json_object_clear(s->streams);
}

void shardmap__etcd_snap_fini(struct shardmap__etcd_snap *s)
{
	snap_clear(s);
	json_decref(s->streams);
	s->streams = NULL;
	free(s->prefix);
	s->prefix = NULL;
}

void shardmap__etcd_snap_reset(struct shardmap__etcd_snap *s)
{
	snap_clear(s);
}

json_t *shardmap__etcd_snap_request(const struct shardmap__etcd_snap *s)
{
	char *pk = NULL, *pe = NULL, *start = NULL;
	if (shardmap__etcd_prefix_range(s->prefix, &pk, &pe) != 0)
		return NULL;
	if (s->next_key != NULL)
		start = shardmap__b64_encode(s->next_key, s->next_len);
	json_t *body = NULL;
	if (s->next_key == NULL || start != NULL)
		body = json_pack("{s:s, s:s, s:I}", "key", start ? start : pk, "range_end", pe,
		                 "limit", (json_int_t)s->page);
	if (body != NULL && s->revision != 0) {
		char rev[24];
		snprintf(rev, sizeof rev, "%" PRIu64, s->revision);
		if (json_object_set_new(body, "revision", json_string(rev)) != 0) {
			json_decref(body);
			body = NULL;
		}
	}
	free(pk);
	free(pe);
	free(start);
	return body;
}

static shardmap_delta *snap_part(void *ctx, int kind)
{
	struct shardmap__etcd_snap *s = ctx;
	int i = kind == SHARDMAP__ETCD_CELL ? 0 : kind == SHARDMAP__ETCD_STREAM ? 1 : 2;
	return s->part[i];
}

int shardmap__etcd_snap_take(struct shardmap__etcd_snap *s, json_t *resp, shardmap_error *why)
{
	json_t *header = json_object_get(resp, "header");
	uint64_t rev = shardmap__etcd_u64(header, "revision");
	if (rev == 0)
		return shardmap__error_set(why, SHARDMAP_EIO, SIZE_MAX,
		                           "etcd answered a range without a revision");
	for (int i = 0; i < 3; i++)
		if (s->part[i] == NULL && shardmap_delta_new(0, 1, &s->part[i]) != 0)
			return shardmap__error_set(why, SHARDMAP_ENOMEM, SIZE_MAX, "out of memory");
	/* the first page fixes the revision; a pinned page's header carries the current one */
	if (s->revision == 0)
		s->revision = rev;
	json_t *kvs = json_object_get(resp, "kvs");
	size_t n = json_array_size(kvs);
	for (size_t i = 0; i < n; i++) {
		json_t *kv = json_array_get(kvs, i);
		uint64_t mod = shardmap__etcd_u64(kv, "mod_revision");
		if (mod > s->max_mod)
			s->max_mod = mod;
		size_t before = s->part[1]->n_ops;
		int rc = kv_op(s->prefix, kv, 0, snap_part, s, why);
		if (rc != 0)
			return rc;
		if (s->part[1]->n_ops > before &&
		    json_object_set_new(s->streams, s->part[1]->ops[before].stream, json_true()))
			return shardmap__error_set(why, SHARDMAP_ENOMEM, SIZE_MAX, "out of memory");
	}
	s->pages++;
	s->keys += n;
	if (json_is_true(json_object_get(resp, "more")) && n > 0) {
		/* the next page starts just past the last key: the same bytes plus a NUL */
		char *last = NULL;
		size_t len;
		int rc = shardmap__b64_decode(
		    json_string_value(json_object_get(json_array_get(kvs, n - 1), "key")), &last,
		    &len);
		if (rc != 0)
			return shardmap__error_set(why, rc, SIZE_MAX, "bad last key in a page");
		free(s->next_key);
		s->next_key = last; /* decode left a NUL after the bytes: len + 1 is the successor */
		s->next_len = len + 1;
	} else {
		s->done = 1;
	}
	return SHARDMAP_OK;
}

int shardmap__etcd_snap_finish(struct shardmap__etcd_snap *s, shardmap_delta **out,
                               shardmap_error *why)
{
	for (int i = 0; i < 3; i++)
		if (s->part[i] == NULL && shardmap_delta_new(0, 1, &s->part[i]) != 0)
			return shardmap__error_set(why, SHARDMAP_ENOMEM, SIZE_MAX, "out of memory");
	shardmap_delta *shards = s->part[2];
	for (size_t i = 0; i < shards->n_ops; i++) {
		const struct shardmap__op *op = &shards->ops[i];
		if (json_object_get(s->streams, op->stream) != NULL)
			continue;
		char *key = shardmap__etcd_key_make(s->prefix, SHARDMAP__ETCD_SHARD, op->stream,
		                                    op->id);
		shardmap__error_set(why, SHARDMAP_ECONFLICT, SIZE_MAX,
		                    "key %.150s: shard of unknown stream %.60s (no key %s/streams/%.60s)",
		                    key ? key : op->id, op->stream, s->prefix, op->stream);
		free(key);
		return SHARDMAP_ECONFLICT;
	}
	if (s->max_mod == 0) { /* no key at all under the prefix: an empty store */
		*out = NULL;
		return SHARDMAP_OK;
	}
	shardmap_delta *d;
	if (shardmap_delta_new(0, s->max_mod, &d) != 0)
		return shardmap__error_set(why, SHARDMAP_ENOMEM, SIZE_MAX, "out of memory");
	size_t total = 0;
	for (int i = 0; i < 3; i++)
		total += s->part[i]->n_ops;
	d->ops = malloc((total ? total : 1) * sizeof *d->ops);
	if (d->ops == NULL) {
		shardmap_delta_free(d);
		return shardmap__error_set(why, SHARDMAP_ENOMEM, SIZE_MAX, "out of memory");
	}
	d->cap_ops = total ? total : 1;
	/* the ops (and the strings they own) move; the emptied parts are freed */
	for (int i = 0; i < 3; i++) {
		if (s->part[i]->n_ops > 0) /* ops is NULL in an empty part */
			memcpy(d->ops + d->n_ops, s->part[i]->ops,
			       s->part[i]->n_ops * sizeof *d->ops);
		d->n_ops += s->part[i]->n_ops;
		s->part[i]->n_ops = 0;
		shardmap_delta_free(s->part[i]);
		s->part[i] = NULL;
	}
	*out = d;
	return SHARDMAP_OK;
}

/* ---------------------------------------------------------------- watch events */

uint64_t shardmap__etcd_event_revision(json_t *event)
{
	return shardmap__etcd_u64(json_object_get(event, "kv"), "mod_revision");
}

static shardmap_delta *single_part(void *ctx, int kind)
{
	(void)kind;
	return ctx;
}

int shardmap__etcd_events_delta(const char *prefix, json_t *events, size_t begin, size_t end,
                                uint64_t from, uint64_t to, shardmap_delta **out,
                                shardmap_error *why)
{
	shardmap_delta *d;
	if (shardmap_delta_new(from, to, &d) != 0)
		return shardmap__error_set(why, SHARDMAP_ENOMEM, SIZE_MAX, "out of memory");
	for (size_t i = begin; i < end; i++) {
		json_t *ev = json_array_get(events, i);
		const char *type = json_string_value(json_object_get(ev, "type"));
		/* the gateway omits the default type, PUT */
		int del = type != NULL && strcmp(type, "DELETE") == 0;
		int rc = kv_op(prefix, json_object_get(ev, "kv"), del, single_part, d, why);
		if (rc != 0) {
			if (why != NULL)
				why->op_index = SIZE_MAX;
			shardmap_delta_free(d);
			return rc;
		}
	}
	*out = d;
	return SHARDMAP_OK;
}
