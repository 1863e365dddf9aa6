/*
 * fuzz_json.c - libFuzzer target for the JSON importers of lib/json.c: shardmap's own
 * whole-map document (shardmapctl import) and the Kinesis ListShards / DescribeStream
 * output (shardmapctl import --kinesis). Documents come from files people edit by hand.
 *
 * Every input is given to both importers. A refusal must carry its code (SHARDMAP_ECORRUPT
 * for text that is not JSON, SHARDMAP_EINVAL for a schema violation) and a message, and
 * leave the output untouched. An accepted document must mean what the importer promises:
 *   - whole map: a delta from version 0 that the codec can store, whose export imports
 *     back to the same delta (compared as codec bytes, which are canonical), and which an
 *     empty map applies (the importer checks everything the map checks);
 *   - Kinesis: a delta from 0 to 1 with the cells asked for, one md5 stream and one shard op
 *     per listed shard, which an empty map applies.
 * The importers and the codec are instrumented; the map (apply) is linked from the
 * library.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* what *out holds before an import: a refusal must leave it there */
static shardmap_delta sentinel;
static shardmap_delta *const untouched = &sentinel;

static void check_refusal(int rc, const shardmap_delta *d, const shardmap_error *why)
{
	if (rc != SHARDMAP_ECORRUPT && rc != SHARDMAP_EINVAL && rc != SHARDMAP_ENOMEM)
		abort();
	if (why->code != rc || why->message[0] == '\0' || d != untouched)
		abort();
}

static uint8_t *encode(const shardmap_delta *d, size_t *len)
{
	uint8_t *buf = NULL;
	if (shardmap__codec_encode(d, &buf, len) != 0)
		abort(); /* an imported map the stores could not keep */
	return buf;
}

static void check_applies(const shardmap_delta *d)
{
	shardmap_options o;
	shardmap_options_init(&o);
	o.use_arena = 0;
	shardmap *m = NULL;
	if (shardmap_open(&m, &o) != 0)
		abort();
	shardmap_error why;
	if (shardmap_apply(m, d, &why) != 0)
		abort(); /* the importer accepted what the map refuses: why.message says what */
	shardmap_close(m);
}

static void whole_map(const char *text, size_t len)
{
	shardmap_delta *d = untouched;
	shardmap_error why = {0};
	int rc = shardmap__json_import(text, len, &d, &why);
	if (rc != 0) {
		check_refusal(rc, d, &why);
		return;
	}
	if (shardmap_delta_from(d) != 0 || shardmap_delta_to(d) == 0)
		abort();

	char *out = NULL;
	size_t out_len = 0;
	FILE *f = open_memstream(&out, &out_len);
	if (f == NULL)
		abort();
	rc = shardmap__json_export(d, f, &why);
	if (fclose(f) != 0 || rc != 0)
		abort(); /* what imports must export */
	shardmap_delta *again = NULL;
	if (shardmap__json_import(out, out_len, &again, &why) != 0)
		abort();
	size_t a_len, b_len;
	uint8_t *a = encode(d, &a_len), *b = encode(again, &b_len);
	if (a_len != b_len || memcmp(a, b, a_len) != 0)
		abort(); /* export then import changed the map */
	free(a);
	free(b);
	free(out);
	shardmap_delta_free(again);
	check_applies(d);
	shardmap_delta_free(d);
}

static void kinesis(const char *text, size_t len)
{
	static const char *const eps_a[] = {"10.0.0.1:7000"}, *const eps_b[] = {"10.0.0.2:7000"};
	static const struct shardmap__json_cell cells[] = {{"cell-a", eps_a, 1},
							   {"cell-b", eps_b, 1}};
	static const char *const owners[] = {"cell-a", "cell-b"};
	/* list-shards output names no stream: give one unless the document can */
	int described = memmem(text, len, "StreamDescription", 17) != NULL;
	struct shardmap__kinesis_import opt = {.stream = described ? NULL : "fuzzed-stream",
					       .owners = owners,
					       .n_owners = 2,
					       .cells = cells,
					       .n_cells = 2,
					       .from_version = 0};
	shardmap_delta *d = untouched;
	shardmap_error why = {0};
	int rc = shardmap__json_import_kinesis(text, len, &opt, &d, &why);
	if (rc != 0) {
		check_refusal(rc, d, &why);
		return;
	}
	if (shardmap_delta_from(d) != 0 || shardmap_delta_to(d) != 1 || shardmap_delta_count(d) < 4)
		abort();
	for (size_t i = 0; i < shardmap_delta_count(d); i++) {
		const struct shardmap__op *op = &d->ops[i];
		enum shardmap__op_kind want = i < 2    ? SHARDMAP__OP_PUT_CELL
					      : i == 2 ? SHARDMAP__OP_PUT_STREAM
						       : SHARDMAP__OP_PUT_SHARD;
		if (op->kind != want || (i == 2 && op->hash_fn != SHARDMAP_HASH_MD5))
			abort();
	}
	size_t n;
	free(encode(d, &n));
	check_applies(d);
	shardmap_delta_free(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	whole_map((const char *)data, size);
	kinesis((const char *)data, size);
	return 0;
}
