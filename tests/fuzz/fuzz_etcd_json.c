/*
 * fuzz_etcd_json.c - libFuzzer target for lib/etcd_json.c, which turns what the etcd
 * gateway answers (range pages, watch messages, base64 keys and JSON values that operators
 * may edit by hand with etcdctl) into deltas.
 *
 * Every input is used three ways:
 *   - as a gateway answer (if it is JSON): one range page of a bootstrap (snap_take, then
 *     the next page's request if the page says there are more, then snap_finish), and a
 *     watch message whose events are cut into one delta per revision as the follower does;
 *   - as one raw record, "KEY\nVALUE" (the bytes after base64 decoding): the key is parsed
 *     under the prefix; a parsed key is re-made and parses to the same record; the value is
 *     turned into an op directly, and the same record sent as a watch event (put, and
 *     delete) must give the same answer and the same ops (compared as codec bytes);
 *   - as bytes to base64: encoding then decoding gives them back.
 * Refusals must carry one of the documented codes, a message, and leave outputs untouched.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "etcd_json.h"

#define PREFIX	 "/sm"
#define REVISION 7

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* what *out holds before a call: a refusal must leave it there */
static shardmap_delta sentinel;
static shardmap_delta *const untouched = &sentinel;

/* A set of error codes (they are small negative numbers). */
#define CODE(c)	      (1u << -(c))
#define DECODE_ERRORS (CODE(SHARDMAP_ECORRUPT) | CODE(SHARDMAP_ENOMEM))

static void check_refusal(int rc, const shardmap_error *why, unsigned allowed)
{
	if (rc >= 0 || rc < -31 || !(allowed & CODE(rc)))
		abort();
	if (why->code != rc || why->message[0] == '\0')
		abort();
}

/* ---------------------------------------------------------------- gateway answers */

static void range_page(json_t *resp)
{
	struct shardmap__etcd_snap s;
	if (shardmap__etcd_snap_init(&s, PREFIX, 1000) != 0)
		abort();
	shardmap_error why = {0};
	int rc = shardmap__etcd_snap_take(&s, resp, &why);
	if (rc != 0) {
		check_refusal(rc, &why,
			      DECODE_ERRORS | CODE(SHARDMAP_ECONFLICT) | CODE(SHARDMAP_EIO));
		shardmap__etcd_snap_fini(&s);
		return;
	}
	if (s.revision == 0 || s.pages != 1)
		abort();
	if (!s.done) {
		/* the next page is pinned to the revision and starts past the last key */
		json_t *req = shardmap__etcd_snap_request(&s);
		const char *key = json_string_value(json_object_get(req, "key"));
		char *raw = NULL;
		size_t len = 0;
		if (key == NULL || shardmap__etcd_u64(req, "revision") != s.revision ||
		    shardmap__b64_decode(key, &raw, &len) != 0 || len != s.next_len ||
		    memcmp(raw, s.next_key, len) != 0)
			abort();
		free(raw);
		json_decref(req);
	}
	shardmap_delta *d = untouched;
	rc = shardmap__etcd_snap_finish(&s, &d, &why);
	if (rc != 0) {
		check_refusal(rc, &why, DECODE_ERRORS | CODE(SHARDMAP_ECONFLICT));
		if (d != untouched)
			abort();
	} else if (d != NULL) {
		if (shardmap_delta_from(d) != 0 || shardmap_delta_to(d) != s.max_mod ||
		    shardmap_delta_count(d) > s.keys)
			abort();
		shardmap_delta_free(d);
	} else if (s.max_mod != 0) {
		abort(); /* keys were there, yet "empty store" */
	}
	shardmap__etcd_snap_fini(&s);
}

static void watch_message(json_t *msg)
{
	json_t *events = json_object_get(json_object_get(msg, "result"), "events");
	size_t n = json_array_size(events);
	for (size_t i = 0, j; i < n; i = j) {
		uint64_t rev = shardmap__etcd_event_revision(json_array_get(events, i));
		for (j = i + 1; j < n; j++)
			if (shardmap__etcd_event_revision(json_array_get(events, j)) != rev)
				break;
		if (rev == 0)
			continue; /* the follower skips events without a revision */
		shardmap_delta *d = untouched;
		shardmap_error why = {0};
		int rc = shardmap__etcd_events_delta(PREFIX, events, i, j, rev - 1, rev, &d, &why);
		if (rc != 0) {
			check_refusal(rc, &why, DECODE_ERRORS | CODE(SHARDMAP_EIO));
			if (d != untouched)
				abort();
			continue;
		}
		if (shardmap_delta_from(d) != rev - 1 || shardmap_delta_to(d) != rev ||
		    shardmap_delta_count(d) > j - i)
			abort();
		shardmap_delta_free(d);
	}
}

/* ---------------------------------------------------------------- one raw record */

static void same_key(const struct shardmap__etcd_key *a, const struct shardmap__etcd_key *b)
{
	if (a->kind != b->kind || strcmp(a->stream, b->stream) != 0 || strcmp(a->id, b->id) != 0)
		abort();
}

/* (rc, codec bytes) of a delta, for comparing two ways of building it. */
struct outcome {
	int rc;
	uint8_t *bytes;
	size_t len;
};

static struct outcome outcome_of(int rc, shardmap_delta *d)
{
	struct outcome o = {rc, NULL, 0};
	if (rc == 0 && shardmap__codec_encode(d, &o.bytes, &o.len) != 0)
		abort(); /* an op from etcd that no store or peer could carry */
	shardmap_delta_free(d);
	return o;
}

static void same_outcome(struct outcome a, struct outcome b)
{
	if ((a.rc == 0) != (b.rc == 0) || a.len != b.len ||
	    (a.len && memcmp(a.bytes, b.bytes, a.len) != 0))
		abort();
	free(a.bytes);
	free(b.bytes);
}

/* The record as the gateway sends it in a watch event: one event array. */
static json_t *as_event(const char *key, size_t klen, const char *value, size_t vlen, int del)
{
	char *kb = shardmap__b64_encode(key, klen), *vb = shardmap__b64_encode(value, vlen);
	json_t *ev = NULL;
	if (kb != NULL && vb != NULL)
		ev = json_pack("[{s:s?, s:{s:s, s:s, s:s}}]", "type", del ? "DELETE" : NULL, "kv",
			       "key", kb, "value", vb, "mod_revision", "7");
	free(kb);
	free(vb);
	if (ev == NULL)
		abort();
	return ev;
}

static struct outcome via_event(const char *key, size_t klen, const char *value, size_t vlen,
				int del)
{
	json_t *events = as_event(key, klen, value, vlen, del);
	shardmap_delta *d = untouched;
	shardmap_error why = {0};
	int rc = shardmap__etcd_events_delta(PREFIX, events, 0, 1, 0, REVISION, &d, &why);
	json_decref(events);
	if (rc != 0) {
		check_refusal(rc, &why, DECODE_ERRORS | CODE(SHARDMAP_EIO));
		if (d != untouched)
			abort();
		d = NULL;
	}
	return outcome_of(rc, d);
}

static void raw_record(const uint8_t *data, size_t size)
{
	const uint8_t *nl = memchr(data, '\n', size);
	size_t klen = nl ? (size_t)(nl - data) : size;
	size_t vlen = nl ? size - klen - 1 : 0;
	char *key = malloc(klen + 1), *value = malloc(vlen + 1);
	if (key == NULL || value == NULL)
		abort();
	memcpy(key, data, klen);
	key[klen] = '\0';
	memcpy(value, nl ? nl + 1 : data, vlen);
	value[vlen] = '\0';

	struct shardmap__etcd_key k;
	shardmap_error why = {0};
	int rc = shardmap__etcd_key_parse(PREFIX, key, klen, &k, &why);
	if (rc != 0) {
		check_refusal(rc, &why, DECODE_ERRORS);
		/* the gateway path refuses it too */
		same_outcome(outcome_of(rc, NULL), via_event(key, klen, value, vlen, 0));
		free(key);
		free(value);
		return;
	}
	char *made = shardmap__etcd_key_make(PREFIX, k.kind, k.stream, k.id);
	struct shardmap__etcd_key again;
	if (made == NULL || shardmap__etcd_key_parse(PREFIX, made, strlen(made), &again, NULL) != 0)
		abort();
	same_key(&k, &again);
	free(made);

	shardmap_delta *d = NULL;
	if (shardmap_delta_new(0, REVISION, &d) != 0)
		abort();
	rc = shardmap__etcd_put_op(d, &k, value, vlen, key, &why);
	if (rc != 0)
		check_refusal(rc, &why, DECODE_ERRORS);
	same_outcome(outcome_of(rc, d), via_event(key, klen, value, vlen, 0));

	if (shardmap_delta_new(0, REVISION, &d) != 0)
		abort();
	rc = shardmap__etcd_delete_op(d, &k);
	if (rc != 0)
		abort(); /* a parsed key always names something deletable */
	same_outcome(outcome_of(rc, d), via_event(key, klen, value, vlen, 1));
	free(key);
	free(value);
}

/* ---------------------------------------------------------------- base64 */

static void base64(const uint8_t *data, size_t size)
{
	char *enc = shardmap__b64_encode(data, size);
	char *dec = NULL;
	size_t len = 0;
	if (enc == NULL || shardmap__b64_decode(enc, &dec, &len) != 0 || len != size ||
	    memcmp(dec, data, size) != 0 || dec[len] != '\0')
		abort();
	free(enc);
	free(dec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_t *j = json_loadb((const char *)data, size, 0, NULL);
	if (j != NULL) {
		range_page(j);
		watch_message(j);
		json_decref(j);
	}
	raw_record(data, size);
	base64(data, size);
	return 0;
}
