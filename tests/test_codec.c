/*
 * test_codec.c - the delta codec (lib/codec.c, docs/codec.md): round trips of random deltas
 * and of random maps (map -> version_to_delta -> encode -> decode -> apply to a fresh map ->
 * same digest), and every kind of corruption: flipped bytes anywhere, truncation at every
 * offset, wrong magic, future format, hostile lengths and counts with valid checksums. Each
 * must give its own SHARDMAP_ECORRUPT message, never a crash or a large allocation.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <xxhash.h>

#include "codec.h"
#include "delta_gen.h"

/* ---------------------------------------------------------------- helpers */

static uint8_t *encode_ok(const shardmap_delta *d, size_t *len)
{
	uint8_t *buf = NULL;
	cr_assert_eq(shardmap__codec_encode(d, &buf, len), 0);
	cr_assert_not_null(buf);
	return buf;
}

/* The in-place decoder (snapshots) on a copy of buf must give what the copying one gave:
 * the same delta, or the same error and message. */
static void same_in_place(const uint8_t *buf, size_t len, int rc, const shardmap_delta *d,
			  const shardmap_error *why)
{
	uint8_t *copy = malloc(len ? len : 1);
	cr_assert_not_null(copy);
	if (len)
		memcpy(copy, buf, len);
	shardmap_delta *d2 = NULL;
	shardmap_error why2 = {0};
	size_t used2 = 777;
	int rc2 = shardmap__codec_decode_in_place(copy, len, &d2, &used2, &why2);
	cr_assert_eq(rc2, rc, "in place: rc %d (%s), copying decoder %d", rc2, why2.message, rc);
	if (rc == 0) {
		cr_assert(gen_delta_equal(d, d2), "in-place decode differs");
		cr_assert_eq(used2, len);
	} else {
		cr_assert_null(d2);
		cr_assert_str_eq(why2.message, why->message);
	}
	shardmap__codec_borrowed_free(d2);
	free(copy);
}

static shardmap_delta *decode_ok(const uint8_t *buf, size_t len)
{
	shardmap_delta *d = NULL;
	shardmap_error why = {0};
	size_t used = 0;
	int rc = shardmap__codec_decode(buf, len, &d, &used, &why);
	cr_assert_eq(rc, 0, "decode failed: %s", why.message);
	cr_assert_eq(used, len);
	same_in_place(buf, len, rc, d, &why);
	return d;
}

/* Decoding buf must fail with SHARDMAP_ECORRUPT and a message containing expect. */
static void expect_corrupt(const uint8_t *buf, size_t len, const char *expect)
{
	shardmap_delta *d = NULL;
	shardmap_error why = {0};
	size_t used = 12345;
	int rc = shardmap__codec_decode(buf, len, &d, &used, &why);
	cr_assert_eq(rc, SHARDMAP_ECORRUPT, "rc %d (%s), wanted ECORRUPT '%s'", rc, why.message,
		     expect);
	cr_assert_eq(why.code, SHARDMAP_ECORRUPT);
	cr_assert_null(d);
	cr_assert_eq(used, 0);
	cr_assert(strstr(why.message, expect) != NULL, "message '%s' lacks '%s'", why.message,
		  expect);
	same_in_place(buf, len, rc, NULL, &why);
}

/* A hand-made record, for inputs the encoder would never produce. */
struct rec {
	uint8_t b[2048];
	size_t n;
};

static void rec_put(struct rec *r, uint64_t v, int bytes)
{
	for (int i = 0; i < bytes; i++)
		r->b[r->n++] = (uint8_t)(v >> (8 * i));
}

static void rec_str(struct rec *r, const char *s)
{
	size_t n = strlen(s);
	rec_put(r, n, 1);
	memcpy(r->b + r->n, s, n);
	r->n += n;
}

static void rec_begin(struct rec *r, uint64_t from, uint64_t to, uint32_t n_ops)
{
	memset(r, 0, sizeof *r);
	memcpy(r->b, "SMAP", 4);
	r->b[4] = 1;
	r->n = 16;
	rec_put(r, from, 8);
	rec_put(r, to, 8);
	rec_put(r, n_ops, 4);
}

/* Fill in the body length and header check, append the checksum. */
static size_t rec_seal(struct rec *r)
{
	uint32_t blen = (uint32_t)(r->n - 16);
	for (int i = 0; i < 4; i++)
		r->b[8 + i] = (uint8_t)(blen >> (8 * i));
	uint32_t hc = (uint32_t)XXH3_64bits(r->b, 12);
	for (int i = 0; i < 4; i++)
		r->b[12 + i] = (uint8_t)(hc >> (8 * i));
	rec_put(r, XXH3_64bits(r->b, r->n), 8);
	return r->n;
}

/* Re-seal a header after changing its fields (keeps a valid header check). */
static void reseal_header(uint8_t *b)
{
	uint32_t hc = (uint32_t)XXH3_64bits(b, 12);
	for (int i = 0; i < 4; i++)
		b[12 + i] = (uint8_t)(hc >> (8 * i));
}

/* A delta with every op kind and every optional field. */
static shardmap_delta *all_kinds(void)
{
	shardmap_delta *d = NULL;
	cr_assert_eq(shardmap_delta_new(7, 9, &d), 0);
	const char *eps[] = {"a.example:1", "[::1]:65535"};
	shardmap_shard s = {.id = "shardId-000000000002",
			    .start = {1, 2},
			    .end = {UINT64_MAX, UINT64_MAX},
			    .open = 1,
			    .owner_cell = "c1",
			    .parent = "shardId-000000000000",
			    .adjacent_parent = "shardId-000000000001"};
	cr_assert_eq(shardmap_delta_put_cell(d, "c1", eps, 2), 0);
	cr_assert_eq(shardmap_delta_put_stream(d, "orders", SHARDMAP_HASH_MD5), 0);
	cr_assert_eq(shardmap_delta_put_shard(d, "orders", &s), 0);
	s.id = "shardId-000000000003";
	s.open = 0;
	s.adjacent_parent = NULL;
	cr_assert_eq(shardmap_delta_put_shard(d, "orders", &s), 0);
	s.parent = NULL;
	s.start = s.end;
	cr_assert_eq(shardmap_delta_put_shard(d, "orders", &s), 0);
	cr_assert_eq(shardmap_delta_delete_shard(d, "orders", "shardId-000000000009"), 0);
	cr_assert_eq(shardmap_delta_delete_stream(d, "old"), 0);
	cr_assert_eq(shardmap_delta_delete_cell(d, "c0"), 0);
	return d;
}

/* ---------------------------------------------------------------- round trips on deltas */

Test(codec, all_op_kinds_round_trip_canonically)
{
	shardmap_delta *d = all_kinds();
	size_t len;
	uint8_t *buf = encode_ok(d, &len);
	shardmap_delta *back = decode_ok(buf, len);
	cr_assert(gen_delta_equal(d, back));
	size_t len2;
	uint8_t *buf2 = encode_ok(back, &len2);
	cr_assert_eq(len2, len);
	cr_assert_arr_eq(buf2, buf, len);
	uint64_t f = 0, t = 0;
	size_t used = 0;
	cr_assert_eq(shardmap__codec_peek(buf, len, &f, &t, &used, NULL), 0);
	cr_assert_eq(f, 7);
	cr_assert_eq(t, 9);
	cr_assert_eq(used, len);
	free(buf);
	free(buf2);
	shardmap_delta_free(d);
	shardmap_delta_free(back);
}

Test(codec, empty_delta_and_longest_names)
{
	shardmap_delta *d = NULL;
	cr_assert_eq(shardmap_delta_new(0, UINT64_MAX, &d), 0);
	size_t len;
	uint8_t *buf = encode_ok(d, &len);
	cr_assert_eq(len, SHARDMAP__CODEC_HEADER_BYTES + 20 + SHARDMAP__CODEC_TRAILER_BYTES);
	shardmap_delta *back = decode_ok(buf, len);
	cr_assert(gen_delta_equal(d, back));
	free(buf);
	shardmap_delta_free(back);

	char name[SHARDMAP__NAME_MAX + 1];
	memset(name, 'n', SHARDMAP__NAME_MAX);
	name[SHARDMAP__NAME_MAX] = '\0';
	cr_assert_eq(shardmap_delta_put_stream(d, name, SHARDMAP_HASH_XXH3), 0);
	buf = encode_ok(d, &len);
	back = decode_ok(buf, len);
	cr_assert(gen_delta_equal(d, back));
	free(buf);
	shardmap_delta_free(back);
	shardmap_delta_free(d);
}

Test(codec, random_deltas_round_trip)
{
	for (uint64_t seed = 1; seed <= 200; seed++) {
		shardmap_delta *d = gen_map_delta(seed, seed * 3, 4, 40);
		cr_assert_not_null(d);
		size_t len;
		uint8_t *buf = encode_ok(d, &len);
		shardmap_delta *back = decode_ok(buf, len);
		cr_assert(gen_delta_equal(d, back), "seed %llu", (unsigned long long)seed);
		free(buf);
		shardmap_delta_free(back);
		shardmap_delta_free(d);
	}
}

Test(codec, records_stream_back_to_back)
{
	/* three records in one buffer, read the way a journal or socket reader does */
	uint8_t *bufs[3], *all;
	size_t lens[3], total = 0, at = 0;
	for (int i = 0; i < 3; i++) {
		shardmap_delta *d = gen_step_delta((uint64_t)i, (uint64_t)i + 1, "s");
		bufs[i] = encode_ok(d, &lens[i]);
		total += lens[i];
		shardmap_delta_free(d);
	}
	all = malloc(total);
	for (int i = 0; i < 3; i++) {
		memcpy(all + at, bufs[i], lens[i]);
		at += lens[i];
		free(bufs[i]);
	}
	at = 0;
	for (uint64_t v = 1; v <= 3; v++) {
		shardmap_delta *d = NULL;
		size_t used = 0;
		cr_assert_eq(shardmap__codec_decode(all + at, total - at, &d, &used, NULL), 0);
		cr_assert_eq(shardmap_delta_to(d), v);
		at += used;
		shardmap_delta_free(d);
	}
	cr_assert_eq(at, total);
	free(all);
}

Test(codec, encoder_refuses_what_the_format_cannot_hold)
{
	shardmap_delta *d = NULL;
	uint8_t *buf = NULL;
	size_t len = 0;
	cr_assert_eq(shardmap__codec_encode(NULL, &buf, &len), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_delta_new(1, 2, &d), 0);
	cr_assert_eq(shardmap_delta_delete_cell(d, "c"), 0);
	/* hand-break the op the way a buggy producer could */
	char *saved = d->ops[0].id;
	d->ops[0].id = NULL;
	cr_assert_eq(shardmap__codec_encode(d, &buf, &len), SHARDMAP_EINVAL);
	char long_name[300];
	memset(long_name, 'x', sizeof long_name - 1);
	long_name[sizeof long_name - 1] = '\0';
	d->ops[0].id = long_name;
	cr_assert_eq(shardmap__codec_encode(d, &buf, &len), SHARDMAP_EINVAL);
	d->ops[0].id = saved;
	d->ops[0].kind = (enum shardmap__op_kind)99;
	cr_assert_eq(shardmap__codec_encode(d, &buf, &len), SHARDMAP_EINVAL);
	d->ops[0].kind = SHARDMAP__OP_DELETE_CELL;
	d->ops[0].id = (char *)"tab\there";
	cr_assert_eq(shardmap__codec_encode(d, &buf, &len), SHARDMAP_EINVAL);
	d->ops[0].id = saved;
	cr_assert_null(buf);
	shardmap_delta_free(d);

	/* what encodes must decode: no record the decoder would refuse */
	d = all_kinds();
	d->ops[1].hash_fn = 5; /* put_stream */
	cr_assert_eq(shardmap__codec_encode(d, &buf, &len), SHARDMAP_EINVAL);
	d->ops[1].hash_fn = SHARDMAP_HASH_MD5;
	shardmap_hash start = d->ops[2].start; /* put_shard */
	d->ops[2].start = (shardmap_hash){UINT64_MAX, UINT64_MAX};
	d->ops[2].end = (shardmap_hash){0, 1};
	cr_assert_eq(shardmap__codec_encode(d, &buf, &len), SHARDMAP_EINVAL);
	d->ops[2].end = d->ops[2].start;
	d->ops[2].start = start;
	saved = d->ops[0].endpoints[1]; /* put_cell */
	d->ops[0].endpoints[1] = (char *)"no-port";
	cr_assert_eq(shardmap__codec_encode(d, &buf, &len), SHARDMAP_EINVAL);
	d->ops[0].endpoints[1] = saved;
	cr_assert_eq(shardmap__codec_encode(d, &buf, &len), 0);
	free(buf);
	shardmap_delta_free(d);
}

/* ---------------------------------------------------------------- corruption */

/* Which message a flipped byte at offset i of a record of length len must produce. */
static const char *flip_message(size_t i, size_t len)
{
	if (i < 4)
		return "bad magic";
	if (i < 6)
		return "unsupported format version";
	if (i < 8)
		return "reserved header flags";
	if (i < 16)
		return "header check mismatch";
	(void)len;
	return "checksum mismatch";
}

Test(codec, every_flipped_byte_is_reported_by_region)
{
	shardmap_delta *d = all_kinds();
	size_t len;
	uint8_t *buf = encode_ok(d, &len);
	for (size_t i = 0; i < len; i++) {
		for (int bit = 0; bit < 8; bit += 3) {
			buf[i] ^= (uint8_t)(1u << bit);
			expect_corrupt(buf, len, flip_message(i, len));
			buf[i] ^= (uint8_t)(1u << bit);
		}
	}
	free(buf);
	shardmap_delta_free(d);
}

Test(codec, truncation_at_every_offset_asks_for_more)
{
	shardmap_delta *d = all_kinds();
	size_t len;
	uint8_t *buf = encode_ok(d, &len);
	for (size_t cut = 0; cut < len; cut++) {
		/* a fresh allocation of exactly cut bytes, so ASan sees any over-read */
		uint8_t *part = malloc(cut ? cut : 1);
		memcpy(part, buf, cut);
		shardmap_delta *out = NULL;
		shardmap_error why = {0};
		size_t used = 777;
		int rc = shardmap__codec_decode(part, cut, &out, &used, &why);
		cr_assert_eq(rc, SHARDMAP_ENOENT, "cut %zu: rc %d %s", cut, rc, why.message);
		cr_assert_null(out);
		cr_assert_eq(used, cut < SHARDMAP__CODEC_HEADER_BYTES ? 0 : len, "cut %zu", cut);
		cr_assert(strstr(why.message, "incomplete record") != NULL);
		free(part);
	}
	free(buf);
	shardmap_delta_free(d);
}

Test(codec, wrong_magic_and_future_format)
{
	shardmap_delta *d = all_kinds();
	size_t len;
	uint8_t *buf = encode_ok(d, &len);
	memcpy(buf, "SMAQ", 4);
	expect_corrupt(buf, len, "bad magic");
	expect_corrupt(buf, 4, "bad magic"); /* refused before the header is complete */
	memcpy(buf, "SMAP", 4);
	buf[4] = 2;
	reseal_header(buf);
	expect_corrupt(buf, len, "unsupported format version 2");
	expect_corrupt(buf, 6, "unsupported format version 2"); /* refused before the header */
	buf[4] = 1;
	buf[6] = 1;
	reseal_header(buf);
	expect_corrupt(buf, len, "reserved header flags 0x0001");
	free(buf);
	shardmap_delta_free(d);
}

Test(codec, peek_checks_framing_but_not_ops)
{
	struct rec r;
	uint64_t f = 0, t = 0;
	size_t used = 0;
	rec_begin(&r, 4, 6, 1);
	rec_put(&r, 9, 1); /* unknown op kind: peek does not look at ops */
	rec_seal(&r);
	cr_assert_eq(shardmap__codec_peek(r.b, r.n, &f, &t, &used, NULL), 0);
	cr_assert_eq(f, 4);
	cr_assert_eq(t, 6);
	cr_assert_eq(used, r.n);
	expect_corrupt(r.b, r.n, "unknown op kind 9");
	r.b[20] ^= 1;
	shardmap_error why = {0};
	cr_assert_eq(shardmap__codec_peek(r.b, r.n, &f, &t, &used, &why), SHARDMAP_ECORRUPT);
	cr_assert(strstr(why.message, "checksum mismatch") != NULL);
	cr_assert_eq(shardmap__codec_peek(r.b, 20, &f, &t, &used, NULL), SHARDMAP_ENOENT);
	cr_assert_eq(used, r.n);
}

Test(codec, peek_head_reads_versions_from_the_first_bytes)
{
	shardmap_delta *d = all_kinds();
	size_t len, total = 0;
	uint8_t *buf = encode_ok(d, &len);
	uint64_t f = 0, t = 0;
	shardmap_error why = {0};
	cr_assert_eq(
	    shardmap__codec_peek_head(buf, SHARDMAP__CODEC_HEAD_BYTES, &f, &t, &total, NULL), 0);
	cr_assert_eq(f, 7);
	cr_assert_eq(t, 9);
	cr_assert_eq(total, len);
	/* the body past the versions and the checksum are not looked at */
	buf[len - 1] ^= 1;
	buf[SHARDMAP__CODEC_HEAD_BYTES] ^= 1;
	cr_assert_eq(shardmap__codec_peek_head(buf, len, &f, &t, &total, NULL), 0);
	buf[len - 1] ^= 1;
	buf[SHARDMAP__CODEC_HEAD_BYTES] ^= 1;
	/* too few bytes: need more, with the length once the header is whole */
	cr_assert_eq(
	    shardmap__codec_peek_head(buf, SHARDMAP__CODEC_HEAD_BYTES - 1, &f, &t, &total, NULL),
	    SHARDMAP_ENOENT);
	cr_assert_eq(total, len);
	cr_assert_eq(shardmap__codec_peek_head(buf, 10, &f, &t, &total, NULL), SHARDMAP_ENOENT);
	cr_assert_eq(total, 0);
	/* a corrupt header, bad magic, versions that do not go up */
	buf[9] ^= 1;
	cr_assert_eq(shardmap__codec_peek_head(buf, len, &f, &t, &total, &why), SHARDMAP_ECORRUPT);
	cr_assert(strstr(why.message, "header check mismatch") != NULL, "%s", why.message);
	buf[9] ^= 1;
	buf[0] = 'X';
	cr_assert_eq(shardmap__codec_peek_head(buf, len, &f, &t, &total, &why), SHARDMAP_ECORRUPT);
	cr_assert(strstr(why.message, "bad magic") != NULL, "%s", why.message);
	buf[0] = 'S';
	buf[16 + 8] = 7, buf[16 + 9] = 0; /* to_version 7 = from_version */
	for (int i = 2; i < 8; i++)
		buf[16 + 8 + i] = 0;
	cr_assert_eq(shardmap__codec_peek_head(buf, len, &f, &t, &total, &why), SHARDMAP_ECORRUPT);
	cr_assert(strstr(why.message, "not above") != NULL, "%s", why.message);
	cr_assert_eq(shardmap__codec_peek_head(NULL, 4, &f, &t, &total, NULL), SHARDMAP_EINVAL);
	free(buf);
	shardmap_delta_free(d);
}

Test(codec, in_place_strings_live_in_the_buffer)
{
	shardmap_delta *d = all_kinds();
	size_t len, used = 0;
	uint8_t *buf = encode_ok(d, &len);
	shardmap_delta *back = NULL;
	cr_assert_eq(shardmap__codec_decode_in_place(buf, len, &back, &used, NULL), 0);
	cr_assert_eq(used, len);
	cr_assert(gen_delta_equal(d, back));
	for (size_t i = 0; i < back->n_ops; i++) {
		const struct shardmap__op *op = &back->ops[i];
		const char *strs[5] = {op->stream, op->id, op->owner_cell, op->parent,
				       op->adjacent_parent};
		for (int k = 0; k < 5; k++)
			cr_assert(strs[k] == NULL || ((const uint8_t *)strs[k] >= buf &&
						      (const uint8_t *)strs[k] < buf + len),
				  "op %zu string %d is not inside the record", i, k);
		for (size_t e = 0; e < op->n_endpoints; e++)
			cr_assert((const uint8_t *)op->endpoints[e] >= buf &&
				  (const uint8_t *)op->endpoints[e] < buf + len);
	}
	shardmap__codec_borrowed_free(back);
	shardmap__codec_borrowed_free(NULL);
	free(buf);
	shardmap_delta_free(d);
}

Test(codec, two_bytes_of_magic_are_not_yet_wrong)
{
	/* "SM" is a valid prefix: the reader must wait, not refuse */
	const uint8_t b[2] = {'S', 'M'};
	shardmap_delta *d = NULL;
	size_t used = 9;
	cr_assert_eq(shardmap__codec_decode(b, 2, &d, &used, NULL), SHARDMAP_ENOENT);
	cr_assert_eq(used, 0);
	cr_assert_eq(shardmap__codec_decode(NULL, 0, &d, &used, NULL), SHARDMAP_ENOENT);
}

Test(codec, hostile_lengths_and_counts)
{
	struct rec r;
	/* body length beyond the limit, with a valid header check */
	rec_begin(&r, 0, 1, 0);
	rec_seal(&r);
	r.b[8] = 0xff, r.b[9] = 0xff, r.b[10] = 0xff, r.b[11] = 0xff;
	reseal_header(r.b);
	expect_corrupt(r.b, r.n, "exceeds the limit");
	/* body length below the fixed fields */
	rec_begin(&r, 0, 1, 0);
	r.n = 16 + 4;
	rec_seal(&r);
	expect_corrupt(r.b, r.n, "below the minimum");
	/* a huge op count */
	rec_begin(&r, 0, 1, UINT32_MAX);
	rec_seal(&r);
	expect_corrupt(r.b, r.n, "op count 4294967295");
	/* an op count the body could hold, but the ops are not there */
	rec_begin(&r, 0, 1, 3);
	rec_put(&r, SHARDMAP__OP_DELETE_CELL, 1);
	rec_str(&r, "c");
	rec_put(&r, 0, 4);
	rec_seal(&r);
	expect_corrupt(r.b, r.n, "op 1");
	/* a string length running past the end */
	rec_begin(&r, 0, 1, 1);
	rec_put(&r, SHARDMAP__OP_DELETE_CELL, 1);
	rec_put(&r, 255, 1);
	rec_str(&r, "short");
	rec_seal(&r);
	expect_corrupt(r.b, r.n, "cell id length 255");
	/* an endpoint count the remaining bytes cannot hold */
	rec_begin(&r, 0, 1, 1);
	rec_put(&r, SHARDMAP__OP_PUT_CELL, 1);
	rec_str(&r, "c");
	rec_put(&r, 65535, 2);
	rec_str(&r, "h:1");
	rec_seal(&r);
	expect_corrupt(r.b, r.n, "endpoint count 65535");
	/* a record that claims more ops than were written: count too small */
	rec_begin(&r, 0, 1, 1);
	rec_put(&r, SHARDMAP__OP_DELETE_CELL, 1);
	rec_str(&r, "c");
	rec_put(&r, SHARDMAP__OP_DELETE_CELL, 1);
	rec_str(&r, "d");
	rec_seal(&r);
	expect_corrupt(r.b, r.n, "3 bytes of trailing garbage");
}

Test(codec, invalid_fields_with_valid_checksums)
{
	struct rec r;
	rec_begin(&r, 5, 5, 0);
	rec_seal(&r);
	expect_corrupt(r.b, r.n, "to_version 5 is not above from_version 5");

	rec_begin(&r, 0, 1, 1);
	rec_put(&r, 7, 1);
	rec_seal(&r);
	expect_corrupt(r.b, r.n, "unknown op kind 7");
	rec_begin(&r, 0, 1, 1);
	rec_put(&r, 0, 1);
	rec_str(&r, "x");
	rec_seal(&r);
	expect_corrupt(r.b, r.n, "unknown op kind 0");

	rec_begin(&r, 0, 1, 1);
	rec_put(&r, SHARDMAP__OP_PUT_STREAM, 1);
	rec_str(&r, "s");
	rec_put(&r, 2, 1);
	rec_seal(&r);
	expect_corrupt(r.b, r.n, "unknown hash function 2");

	rec_begin(&r, 0, 1, 1);
	rec_put(&r, SHARDMAP__OP_DELETE_STREAM, 1);
	rec_str(&r, "bad\tname");
	rec_seal(&r);
	expect_corrupt(r.b, r.n, "invalid stream name");

	rec_begin(&r, 0, 1, 1);
	rec_put(&r, SHARDMAP__OP_DELETE_STREAM, 1);
	rec_put(&r, 3, 1);
	rec_put(&r, 'a', 1);
	rec_put(&r, 0, 1);
	rec_put(&r, 'b', 1);
	rec_seal(&r);
	expect_corrupt(r.b, r.n, "invalid stream name");

	rec_begin(&r, 0, 1, 1);
	rec_put(&r, SHARDMAP__OP_DELETE_CELL, 1);
	rec_put(&r, 0, 1);
	rec_seal(&r);
	expect_corrupt(r.b, r.n, "empty cell id");

	const char *bad_eps[] = {"nohost", "h:0", "h:65536", ":80", "h:8x"};
	for (size_t i = 0; i < sizeof bad_eps / sizeof *bad_eps; i++) {
		rec_begin(&r, 0, 1, 1);
		rec_put(&r, SHARDMAP__OP_PUT_CELL, 1);
		rec_str(&r, "c");
		rec_put(&r, 1, 2);
		rec_str(&r, bad_eps[i]);
		rec_seal(&r);
		expect_corrupt(r.b, r.n, "invalid endpoint");
	}
	rec_begin(&r, 0, 1, 1);
	rec_put(&r, SHARDMAP__OP_PUT_CELL, 1);
	rec_str(&r, "c");
	rec_put(&r, 0, 2);
	rec_seal(&r);
	expect_corrupt(r.b, r.n, "no endpoints");

	/* put_shard: start above end, unknown flags, missing optional parent */
	for (int which = 0; which < 3; which++) {
		rec_begin(&r, 0, 1, 1);
		rec_put(&r, SHARDMAP__OP_PUT_SHARD, 1);
		rec_str(&r, "s");
		rec_str(&r, "shardId-000000000001");
		rec_put(&r, which == 1 ? 0x9 : which == 2 ? 0x3 : 0x1, 1);
		rec_put(&r, 0, 8);
		rec_put(&r, which == 0 ? 10 : 1, 8); /* start */
		rec_put(&r, 0, 8);
		rec_put(&r, 5, 8); /* end */
		rec_str(&r, "c");
		rec_seal(&r);
		expect_corrupt(r.b, r.n,
			       which == 0   ? "range start is above range end"
			       : which == 1 ? "unknown shard flags 0x09"
					    : "parent truncated");
	}
}

/* Hostile records must not make the decoder allocate beyond what the input justifies: run
 * them under a data limit of 64 MiB above the current use (plain builds only: sanitizers
 * reserve large shadow mappings of their own). */
Test(codec, hostile_records_fit_in_a_small_heap)
{
#if !defined(__SANITIZE_ADDRESS__)
	struct rlimit rl;
	cr_assert_eq(getrlimit(RLIMIT_DATA, &rl), 0);
	FILE *f = fopen("/proc/self/status", "r");
	cr_assert_not_null(f);
	char line[256];
	unsigned long vmdata_kb = 0;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "VmData: %lu kB", &vmdata_kb) == 1)
			break;
	fclose(f);
	cr_assert_gt(vmdata_kb, 0);
	rl.rlim_cur = (rlim_t)vmdata_kb * 1024 + (64u << 20);
	cr_assert_eq(setrlimit(RLIMIT_DATA, &rl), 0);
#endif
	/* a 1 MiB body of claimed ops: 349525 delete_cells would be ~40 MiB of op structs if
	 * the count were trusted; it is followed by garbage after the first op */
	size_t blen = 1u << 20, n = 16 + blen + 8;
	uint8_t *b = calloc(1, n);
	memcpy(b, "SMAP", 4);
	b[4] = 1;
	for (int i = 0; i < 4; i++)
		b[8 + i] = (uint8_t)(blen >> (8 * i));
	reseal_header(b);
	uint32_t n_ops = (uint32_t)(blen / 3);
	for (int i = 0; i < 8; i++)
		b[16 + 8 + i] = (uint8_t)((uint64_t)1 >> (8 * i));
	for (int i = 0; i < 4; i++)
		b[16 + 16 + i] = (uint8_t)(n_ops >> (8 * i));
	b[36] = SHARDMAP__OP_DELETE_CELL;
	b[37] = 1;
	b[38] = 'c';
	/* the rest is zeros: op 1 has kind 0 */
	uint64_t sum = XXH3_64bits(b, 16 + blen);
	for (int i = 0; i < 8; i++)
		b[16 + blen + i] = (uint8_t)(sum >> (8 * i));
	expect_corrupt(b, n, "op 1: unknown op kind 0");
	free(b);
}

/* ---------------------------------------------------------------- map round trips */

static shardmap_delta *map_to_delta(shardmap *m)
{
	shardmap_delta *d = NULL;
	const struct shardmap__version *v = shardmap__pin(m);
	cr_assert_not_null(v);
	cr_assert_eq(shardmap__version_to_delta(v, &d), 0);
	shardmap__unpin(m);
	return d;
}

Test(codec, random_maps_survive_encode_decode_apply)
{
	for (uint64_t seed = 1; seed <= 40; seed++) {
		shardmap *a = NULL, *b = NULL;
		shardmap_error why = {0};
		cr_assert_eq(shardmap_open(&a, NULL), 0);
		cr_assert_eq(shardmap_open(&b, NULL), 0);
		shardmap_delta *d = gen_map_delta(seed, 10 + seed, 5, 60);
		cr_assert_eq(shardmap_apply(a, d, &why), 0, "seed %llu: %s",
			     (unsigned long long)seed, why.message);
		shardmap_delta_free(d);

		shardmap_delta *full = map_to_delta(a);
		size_t len;
		uint8_t *buf = encode_ok(full, &len);
		shardmap_delta *back = decode_ok(buf, len);
		cr_assert(gen_delta_equal(full, back));
		cr_assert_eq(shardmap_apply(b, back, &why), 0, "%s", why.message);
		cr_assert_eq(shardmap_version(b), 10 + seed);
		cr_assert_eq(gen_map_digest(a), gen_map_digest(b), "seed %llu",
			     (unsigned long long)seed);

		/* canonical: the copy exports exactly the same bytes */
		shardmap_delta *again = map_to_delta(b);
		size_t len2;
		uint8_t *buf2 = encode_ok(again, &len2);
		cr_assert_eq(len2, len);
		cr_assert_arr_eq(buf2, buf, len);

		free(buf);
		free(buf2);
		shardmap_delta_free(full);
		shardmap_delta_free(back);
		shardmap_delta_free(again);
		shardmap_close(a);
		shardmap_close(b);
	}
}
