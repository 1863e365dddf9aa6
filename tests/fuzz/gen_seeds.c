/*
 * gen_seeds.c - writes the generated seeds of three fuzz targets, made with the library's
 * own encoders so that they follow the formats when those change:
 *   CORPUS/peer_frame  every frame type alone, and whole conversations with and without the
 *                      fuzz key (fuzz_peer_key.h), as fuzz_peer_frame reads them;
 *   CORPUS/json        whole-map documents exported from small random maps;
 *   CORPUS/etcd_json   range pages, watch messages and raw "KEY\nVALUE" records made from the
 *                      etcd transaction that writes a small random map.
 * The other seeds (hash keys, Kinesis documents, a few odd cases) are written by hand.
 * Usage: gen_seeds CORPUS (tests/fuzz/corpus); build with -Dfuzz=true:
 * build/fuzz/tests/fuzz/gen_seeds tests/fuzz/corpus.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "delta_gen.h"
#include "etcd_json.h"
#include "fuzz_peer_key.h"
#include "json.h"
#include "peer_proto.h"

static const char *corpus;
static int failed;

static void write_seed(const char *dir, const char *name, const void *buf, size_t len)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%s/%s", corpus, dir, name);
	FILE *f = fopen(path, "wb");
	int bad = f == NULL || fwrite(buf, 1, len, f) != len;
	if (f != NULL && fclose(f) != 0)
		bad = 1;
	if (bad) {
		fprintf(stderr, "gen_seeds: cannot write %s\n", path);
		failed = 1;
	}
}

static void must(int ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "gen_seeds: %s failed\n", what);
		exit(1);
	}
}

/* ---------------------------------------------------------------- peer frames */

/* A growing byte buffer. */
struct bytes {
	uint8_t *p;
	size_t len;
};

static void append(struct bytes *b, const void *p, size_t len)
{
	b->p = realloc(b->p, b->len + len);
	must(b->p != NULL, "realloc");
	memcpy(b->p + b->len, p, len);
	b->len += len;
}

/* Append one frame; with mac, tagged for the fuzz nonce (hello: the zero nonce). */
static void frame(struct bytes *b, const struct shardmap__mac *mac, uint8_t type, uint64_t seq,
		  const void *payload, size_t len)
{
	uint8_t *f;
	size_t flen;
	const uint8_t *nonce = type == SHARDMAP__FRAME_HELLO ? NULL : fuzz_peer_nonce;
	must(shardmap__frame_build(mac, nonce, type, seq, payload, len, &f, &flen) == 0,
	     "frame_build");
	append(b, f, flen);
	free(f);
}

/* hello, announce, delta, pull, too_old as one conversation. */
static void conversation(struct bytes *b, const struct shardmap__mac *mac)
{
	struct shardmap__hello h = {.proto = SHARDMAP__PROTO_VERSION,
				    .features = mac ? SHARDMAP__FEATURE_HMAC : 0,
				    .version = 41};
	memcpy(h.nonce, fuzz_peer_nonce, sizeof h.nonce);
	snprintf(h.node_id, sizeof h.node_id, "127.0.0.1:7001");
	uint8_t p[SHARDMAP__HELLO_MAX];
	frame(b, mac, SHARDMAP__FRAME_HELLO, 0, p, shardmap__hello_encode(&h, p));
	struct shardmap__announce a = {.version = 41, .digest = 0x1234, .flags = 1};
	frame(b, mac, SHARDMAP__FRAME_ANNOUNCE, 1, p, shardmap__announce_encode(&a, p));
	shardmap_delta *d = gen_step_delta(41, 42, "seed");
	uint8_t *rec = NULL;
	size_t rec_len = 0;
	must(d != NULL && shardmap__codec_encode(d, &rec, &rec_len) == 0, "codec_encode");
	frame(b, mac, SHARDMAP__FRAME_DELTA, 2, rec, rec_len);
	free(rec);
	shardmap_delta_free(d);
	frame(b, mac, SHARDMAP__FRAME_PULL, 3, p, shardmap__pull_encode(40, p));
	struct shardmap__too_old t = {.asked = 3, .oldest = 10, .newest = 42};
	frame(b, mac, SHARDMAP__FRAME_TOO_OLD, 4, p, shardmap__too_old_encode(&t, p));
}

static void peer_frame_seeds(void)
{
	struct shardmap__mac *mac;
	must(shardmap__mac_new(fuzz_peer_key, sizeof fuzz_peer_key - 1, &mac) == 0, "mac_new");
	struct bytes plain = {0}, keyed = {0};
	conversation(&plain, NULL);
	conversation(&keyed, mac);
	write_seed("peer_frame", "conversation", plain.p, plain.len);
	write_seed("peer_frame", "conversation-keyed", keyed.p, keyed.len);
	/* each frame of the plain conversation alone */
	static const char *const names[] = {"hello", "announce", "delta", "pull", "too_old"};
	size_t off = 0;
	for (int i = 0; i < 5; i++) {
		struct shardmap__frame_header h;
		size_t len;
		enum shardmap__refuse why;
		must(shardmap__frame_parse(plain.p + off, plain.len - off, 1u << 20, 0, &h, &len,
					   &why) == 0,
		     "frame_parse");
		write_seed("peer_frame", names[i], plain.p + off, len);
		off += len;
	}
	free(plain.p);
	free(keyed.p);
	shardmap__mac_free(mac);
}

/* ---------------------------------------------------------------- whole-map JSON */

static void json_seeds(void)
{
	for (uint64_t seed = 1; seed <= 3; seed++) {
		shardmap_delta *d = gen_map_delta(seed, 10 * seed, 2, 3);
		char *text = NULL;
		size_t len = 0;
		FILE *f = open_memstream(&text, &len);
		must(d != NULL && f != NULL, "gen_map_delta");
		int rc = shardmap__json_export(d, f, NULL);
		must(fclose(f) == 0 && rc == 0, "json_export");
		char name[32];
		snprintf(name, sizeof name, "map-%llu.json", (unsigned long long)seed);
		write_seed("json", name, text, len);
		free(text);
		shardmap_delta_free(d);
	}
}

/* ---------------------------------------------------------------- etcd */

static void write_json(const char *name, json_t *j)
{
	char *text = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
	must(text != NULL, "json_dumps");
	write_seed("etcd_json", name, text, strlen(text));
	free(text);
	json_decref(j);
}

/* The kvs etcd would hold after the transaction that writes a small map, at revision 12. */
static json_t *map_kvs(void)
{
	shardmap_delta *d = gen_map_delta(7, 12, 2, 2);
	json_t *body = d ? shardmap__etcd_txn_body("/sm", d, "seed-writer", NULL) : NULL;
	must(body != NULL, "etcd_txn_body");
	json_t *kvs = json_array(), *req;
	size_t i;
	json_array_foreach(json_object_get(body, "success"), i, req)
	{
		json_t *put = json_object_get(req, "request_put");
		if (put != NULL)
			json_array_append_new(kvs, json_pack("{s:O, s:O, s:s, s:s, s:s}", "key",
							     json_object_get(put, "key"), "value",
							     json_object_get(put, "value"),
							     "create_revision", "12",
							     "mod_revision", "12", "version", "1"));
	}
	json_decref(body);
	shardmap_delta_free(d);
	return kvs;
}

static void etcd_seeds(void)
{
	json_t *kvs = map_kvs();
	size_t n = json_array_size(kvs);
#define HEADER(rev)                                                                                \
	json_pack("{s:s, s:s, s:s, s:s}", "cluster_id", "14841639068965178418", "member_id",       \
		  "10276657743932975437", "revision", rev, "raft_term", "2")
	/* the whole map in one page, and its first half as a page that says "more" */
	write_json("range-page", json_pack("{s:o, s:O, s:I}", "header", HEADER("12"), "kvs", kvs,
					   "count", (json_int_t)n));
	json_t *half = json_array();
	for (size_t i = 0; i < n / 2; i++)
		json_array_append(half, json_array_get(kvs, i));
	write_json("range-page-more", json_pack("{s:o, s:o, s:b, s:I}", "header", HEADER("12"),
						"kvs", half, "more", 1, "count", (json_int_t)n));
	/* watch messages: created, two revisions with a put and a delete, canceled */
	write_json("watch-created",
		   json_pack("{s:{s:o, s:b}}", "result", "header", HEADER("12"), "created", 1));
	json_t *put = json_deep_copy(json_array_get(kvs, 0));
	json_t *del = json_deep_copy(json_array_get(kvs, 1));
	json_object_set_new(put, "mod_revision", json_string("13"));
	json_object_del(del, "value");
	json_object_set_new(del, "mod_revision", json_string("14"));
	write_json("watch-events",
		   json_pack("{s:{s:o, s:[{s:o}, {s:s, s:o}]}}", "result", "header", HEADER("14"),
			     "events", "kv", put, "type", "DELETE", "kv", del));
	write_json("watch-canceled",
		   json_pack("{s:{s:o, s:b, s:s, s:s}}", "result", "header", HEADER("20"),
			     "canceled", 1, "compact_revision", "18", "cancel_reason",
			     "mvcc: required revision has been compacted"));
#undef HEADER
	/* raw records: the first key of each kind, "KEY\nVALUE" */
	int seen[5] = {0};
	for (size_t i = 0; i < n; i++) {
		char *key = NULL, *value = NULL;
		size_t klen = 0, vlen = 0;
		json_t *kv = json_array_get(kvs, i);
		must(shardmap__b64_decode(json_string_value(json_object_get(kv, "key")), &key,
					  &klen) == 0 &&
			 shardmap__b64_decode(json_string_value(json_object_get(kv, "value")),
					      &value, &vlen) == 0,
		     "b64_decode");
		struct shardmap__etcd_key k;
		must(shardmap__etcd_key_parse("/sm", key, klen, &k, NULL) == 0, "key_parse");
		if (!seen[k.kind]++) {
			static const char *const kinds[] = {"", "version", "stream", "shard",
							    "cell"};
			char name[32];
			struct bytes rec = {0};
			append(&rec, key, klen);
			append(&rec, "\n", 1);
			append(&rec, value, vlen);
			snprintf(name, sizeof name, "record-%s", kinds[k.kind]);
			write_seed("etcd_json", name, rec.p, rec.len);
			free(rec.p);
		}
		free(key);
		free(value);
	}
	json_decref(kvs);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s CORPUS\n", argv[0]);
		return 2;
	}
	corpus = argv[1];
	peer_frame_seeds();
	json_seeds();
	etcd_seeds();
	return failed;
}
