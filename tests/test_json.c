/*
 * test_json.c - JSON import and export (lib/json.c): whole maps survive map -> JSON -> map
 * with equal digests, every invalid document is refused with its JSON path and changes
 * nothing, and Kinesis ListShards / DescribeStream output imports with the right states,
 * lineage and md5 routing.
 */
#include <criterion/criterion.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "delta_gen.h"
#include "json.h"
#include "map.h"

/* ---------------------------------------------------------------- helpers */

static char *export_text(const shardmap_delta *d)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	cr_assert_not_null(f);
	shardmap_error why = {0};
	int rc = shardmap__json_export(d, f, &why);
	fclose(f);
	cr_assert_eq(rc, 0, "export: %s", why.message);
	return buf;
}

static shardmap_delta *canonical(shardmap *m)
{
	shardmap_delta *d = NULL;
	const struct shardmap__version *v = shardmap__pin(m);
	cr_assert_not_null(v);
	cr_assert_eq(shardmap__version_to_delta(v, &d), 0);
	shardmap__unpin(m);
	return d;
}

static uint64_t digest(shardmap *m)
{
	const struct shardmap__version *v = shardmap__pin(m);
	uint64_t dg = v ? v->digest : 0;
	shardmap__unpin(m);
	return dg;
}

static shardmap *map_from(const shardmap_delta *d)
{
	shardmap *m;
	shardmap_error why = {0};
	cr_assert_eq(shardmap_open(&m, NULL), 0);
	int rc = shardmap_apply(m, d, &why);
	cr_assert_eq(rc, 0, "apply: %s", why.message);
	return m;
}

static char *read_data(const char *name, size_t *len)
{
	const char *root = getenv("SHARDMAP_SOURCE_ROOT");
	char path[1024];
	snprintf(path, sizeof path, "%s/tests/data/%s", root ? root : ".", name);
	FILE *f = fopen(path, "rb");
	cr_assert_not_null(f, "cannot open %s (set SHARDMAP_SOURCE_ROOT)", path);
	char *buf = malloc(1 << 20);
	cr_assert_not_null(buf);
	*len = fread(buf, 1, (1 << 20) - 1, f);
	buf[*len] = '\0';
	fclose(f);
	return buf;
}

/* ---------------------------------------------------------------- round trips */

Test(json, round_trip_random_maps)
{
	for (uint64_t seed = 1; seed <= 40; seed++) {
		shardmap_delta *gen = gen_map_delta(seed, 1 + seed * 7, 6, 40);
		cr_assert_not_null(gen);
		shardmap *m1 = map_from(gen);
		shardmap_delta *d1 = canonical(m1);
		char *text1 = export_text(d1);

		shardmap_delta *d2 = NULL;
		shardmap_error why = {0};
		int rc = shardmap__json_import(text1, strlen(text1), &d2, &why);
		cr_assert_eq(rc, 0, "seed %llu: import: %s", (unsigned long long)seed, why.message);
		cr_assert_eq(shardmap_delta_from(d2), 0);
		cr_assert_eq(shardmap_delta_to(d2), shardmap_delta_to(d1));
		cr_assert_eq(shardmap_delta_count(d2), shardmap_delta_count(d1));

		shardmap *m2 = map_from(d2);
		cr_assert_eq(shardmap_version(m2), shardmap_version(m1));
		cr_assert_eq(digest(m2), digest(m1), "seed %llu: digests differ",
			     (unsigned long long)seed);
		shardmap_delta *d3 = canonical(m2);
		cr_assert(gen_delta_equal(d1, d3), "seed %llu: canonical deltas differ",
			  (unsigned long long)seed);
		char *text2 = export_text(d3);
		cr_assert_str_eq(text2, text1);

		free(text1);
		free(text2);
		shardmap_delta_free(d3);
		shardmap_delta_free(d2);
		shardmap_delta_free(d1);
		shardmap_delta_free(gen);
		shardmap_close(m2);
		shardmap_close(m1);
	}
}

Test(json, export_layout)
{
	shardmap_delta *d;
	const char *eps[] = {"10.0.0.1:7000", "10.0.0.2:7000"};
	shardmap_shard s = {.id = "s0",
			    .start = {0, 0},
			    .end = {UINT64_MAX, UINT64_MAX},
			    .open = 1,
			    .owner_cell = "a"};
	cr_assert_eq(shardmap_delta_new(0, 9, &d), 0);
	cr_assert_eq(shardmap_delta_put_cell(d, "a", eps, 2), 0);
	cr_assert_eq(shardmap_delta_put_stream(d, "orders \"eu\"", SHARDMAP_HASH_MD5), 0);
	cr_assert_eq(shardmap_delta_put_shard(d, "orders \"eu\"", &s), 0);
	char *text = export_text(d);
	cr_assert_str_eq(
	    text, "{\n"
		  "  \"format\": \"shardmap\",\n"
		  "  \"format_version\": 1,\n"
		  "  \"version\": 9,\n"
		  "  \"cells\": [\n"
		  "    {\"id\": \"a\", \"endpoints\": [\"10.0.0.1:7000\", \"10.0.0.2:7000\"]}\n"
		  "  ],\n"
		  "  \"streams\": [\n"
		  "    {\"name\": \"orders \\\"eu\\\"\", \"hash\": \"md5\", \"shards\": [\n"
		  "        {\"id\": \"s0\", \"start\": \"0\", \"end\": "
		  "\"340282366920938463463374607431768211455\", \"open\": true, "
		  "\"owner\": \"a\"}\n"
		  "      ]}\n"
		  "  ]\n"
		  "}\n");
	shardmap_delta *back = NULL;
	shardmap_error why = {0};
	cr_assert_eq(shardmap__json_import(text, strlen(text), &back, &why), 0, "%s", why.message);
	cr_assert(gen_delta_equal(d, back));
	free(text);
	shardmap_delta_free(back);
	shardmap_delta_free(d);
}

Test(json, export_empty_map_and_refusals)
{
	shardmap_delta *d;
	cr_assert_eq(shardmap_delta_new(0, 1, &d), 0);
	char *text = export_text(d);
	cr_assert_str_eq(text, "{\n  \"format\": \"shardmap\",\n  \"format_version\": 1,\n"
			       "  \"version\": 1,\n  \"cells\": [],\n  \"streams\": []\n}\n");
	shardmap_delta *back = NULL;
	cr_assert_eq(shardmap__json_import(text, strlen(text), &back, NULL), 0);
	cr_assert_eq(shardmap_delta_count(back), 0);
	free(text);
	shardmap_delta_free(back);

	/* Not a whole map: an op that deletes, a delta not from 0, a shard without stream. */
	shardmap_error why = {0};
	FILE *null = fopen("/dev/null", "w");
	cr_assert_eq(shardmap_delta_delete_cell(d, "x"), 0);
	cr_assert_eq(shardmap__json_export(d, null, &why), SHARDMAP_EINVAL);
	cr_assert(strstr(why.message, "delete_cell is not part of a whole map"), "%s", why.message);
	shardmap_delta_free(d);

	cr_assert_eq(shardmap_delta_new(3, 4, &d), 0);
	cr_assert_eq(shardmap__json_export(d, null, &why), SHARDMAP_EINVAL);
	cr_assert(strstr(why.message, "not 0"), "%s", why.message);
	shardmap_delta_free(d);

	shardmap_shard s = {.id = "x", .end = {1, 1}, .open = 1, .owner_cell = "a"};
	cr_assert_eq(shardmap_delta_new(0, 4, &d), 0);
	cr_assert_eq(shardmap_delta_put_shard(d, "ghost", &s), 0);
	cr_assert_eq(shardmap__json_export(d, null, &why), SHARDMAP_EINVAL);
	cr_assert(strstr(why.message, "stream 'ghost', which is not put"), "%s", why.message);
	shardmap_delta_free(d);

	/* A write error is reported as SHARDMAP_EIO. */
	FILE *full = fopen("/dev/full", "w");
	if (full != NULL) {
		setvbuf(full, NULL, _IONBF, 0);
		cr_assert_eq(shardmap_delta_new(0, 2, &d), 0);
		cr_assert_eq(shardmap__json_export(d, full, &why), SHARDMAP_EIO);
		shardmap_delta_free(d);
		fclose(full);
	}
	fclose(null);
	cr_assert_eq(shardmap__json_export(NULL, stdout, &why), SHARDMAP_EINVAL);
}

/* ---------------------------------------------------------------- invalid documents */

#define MAXKEY "340282366920938463463374607431768211455"
#define HALF   "170141183460469231731687303715884105727"
#define HALF1  "170141183460469231731687303715884105728"

/* A document with the given cells and shards arrays; single quotes become double. */
static char *doc(const char *cells, const char *shards)
{
	char *s = NULL;
	cr_assert(asprintf(&s,
			   "{'format': 'shardmap', 'format_version': 1, 'version': 3, "
			   "'cells': [%s], 'streams': [{'name': 's', 'hash': 'md5', "
			   "'shards': [%s]}]}",
			   cells, shards) > 0);
	for (char *p = s; *p; p++)
		if (*p == '\'')
			*p = '"';
	return s;
}

static char *raw(const char *text)
{
	char *s = strdup(text);
	for (char *p = s; *p; p++)
		if (*p == '\'')
			*p = '"';
	return s;
}

#define CELL_A "{'id': 'a', 'endpoints': ['h:1']}"
#define WHOLE  "{'id': 'x', 'start': '0', 'end': '" MAXKEY "', 'open': true, 'owner': 'a'}"

struct bad_case {
	char *text;
	int code;
	const char *message; /* the whole message, or its prefix when it ends with '*' */
};

static void expect_refused(const struct bad_case *c)
{
	shardmap_delta *sentinel = (shardmap_delta *)0x1, *d = sentinel;
	shardmap_error why = {0};
	int rc = shardmap__json_import(c->text, strlen(c->text), &d, &why);
	cr_expect_eq(rc, c->code, "%s: got %d (%s)", c->text, rc, why.message);
	cr_expect_eq(d, sentinel, "%s: *out changed", c->text);
	size_t n = strlen(c->message);
	if (c->message[n - 1] == '*')
		cr_expect(strncmp(why.message, c->message, n - 1) == 0,
			  "%s:\n got '%s'\n want '%s'", c->text, why.message, c->message);
	else
		cr_expect_str_eq(why.message, c->message, "%s", c->text);
	free(c->text);
}

Test(json, invalid_top_level)
{
	const struct bad_case cases[] = {
	    {raw("{'format': "), SHARDMAP_ECORRUPT, "not JSON: line 1 column *"},
	    {raw(""), SHARDMAP_ECORRUPT, "not JSON: *"},
	    {raw("{'a': 1, 'a': 2}"), SHARDMAP_ECORRUPT, "not JSON: *"},
	    {raw("[]"), SHARDMAP_EINVAL, "document: an array, expected an object"},
	    {raw("{'format_version': 1, 'version': 1, 'cells': [], 'streams': []}"),
	     SHARDMAP_EINVAL, "format: missing"},
	    {raw("{'format': 7, 'format_version': 1, 'version': 1, 'cells': [], 'streams': []}"),
	     SHARDMAP_EINVAL, "format: a number, expected a string"},
	    {raw("{'format': 'kinesis', 'format_version': 1, 'version': 1, 'cells': [], "
		 "'streams': []}"),
	     SHARDMAP_EINVAL, "format: 'kinesis', expected 'shardmap' *"},
	    {raw("{'format': 'shardmap', 'version': 1, 'cells': [], 'streams': []}"),
	     SHARDMAP_EINVAL, "format_version: missing"},
	    {raw("{'format': 'shardmap', 'format_version': 2, 'version': 1, 'cells': [], "
		 "'streams': []}"),
	     SHARDMAP_EINVAL, "format_version: 2 is not supported (this library reads 1)"},
	    {raw("{'format': 'shardmap', 'format_version': 1, 'version': 0, 'cells': [], "
		 "'streams': []}"),
	     SHARDMAP_EINVAL, "version: not an integer from 1 to 2^63-1"},
	    {raw("{'format': 'shardmap', 'format_version': 1, 'version': '5', 'cells': [], "
		 "'streams': []}"),
	     SHARDMAP_EINVAL, "version: not an integer from 1 to 2^63-1"},
	    {raw("{'format': 'shardmap', 'format_version': 1, 'cells': [], 'streams': []}"),
	     SHARDMAP_EINVAL, "version: missing"},
	    {raw("{'format': 'shardmap', 'format_version': 1, 'version': 1, 'streams': []}"),
	     SHARDMAP_EINVAL, "cells: missing"},
	    {raw("{'format': 'shardmap', 'format_version': 1, 'version': 1, 'cells': {}, "
		 "'streams': []}"),
	     SHARDMAP_EINVAL, "cells: an object, expected an array"},
	    {raw("{'format': 'shardmap', 'format_version': 1, 'version': 1, 'cells': [], "
		 "'streams': [], 'comment': 'x'}"),
	     SHARDMAP_EINVAL, "comment: unknown member"},
	    {raw("{'format': 'shardmap', 'format_version': 1, 'version': 1, 'cells': [], "
		 "'streams': [7]}"),
	     SHARDMAP_EINVAL, "streams[0]: a number, expected an object"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		expect_refused(&cases[i]);
}

Test(json, invalid_cells)
{
	const struct bad_case cases[] = {
	    {doc("{'id': '', 'endpoints': ['h:1']}", WHOLE), SHARDMAP_EINVAL,
	     "cells[0].id: not a valid name (empty)"},
	    {doc("{'id': 'a\\u0001', 'endpoints': ['h:1']}", WHOLE), SHARDMAP_EINVAL,
	     "cells[0].id: not a valid name (holds a control character)"},
	    {doc("{'endpoints': ['h:1']}", WHOLE), SHARDMAP_EINVAL, "cells[0].id: missing"},
	    {doc(CELL_A ", " CELL_A, WHOLE), SHARDMAP_EINVAL,
	     "cells[1].id: duplicate 'a' (also in cells[0])"},
	    {doc("{'id': 'a', 'endpoints': []}", WHOLE), SHARDMAP_EINVAL,
	     "cells[0].endpoints: empty (a cell needs at least one endpoint)"},
	    {doc("{'id': 'a'}", WHOLE), SHARDMAP_EINVAL, "cells[0].endpoints: missing"},
	    {doc("{'id': 'a', 'endpoints': ['h:1', 'nope']}", WHOLE), SHARDMAP_EINVAL,
	     "cells[0].endpoints[1]: 'nope' is not host:port (port 1..65535)"},
	    {doc("{'id': 'a', 'endpoints': ['h:70000']}", WHOLE), SHARDMAP_EINVAL,
	     "cells[0].endpoints[0]: 'h:70000' is not host:port (port 1..65535)"},
	    {doc("{'id': 'a', 'endpoints': [1]}", WHOLE), SHARDMAP_EINVAL,
	     "cells[0].endpoints[0]: a number, expected a string"},
	    {doc("{'id': 'a', 'endpoints': ['h:1'], 'weight': 2}", WHOLE), SHARDMAP_EINVAL,
	     "cells[0].weight: unknown member"},
	    {doc("'a'", WHOLE), SHARDMAP_EINVAL, "cells[0]: a string, expected an object"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		expect_refused(&cases[i]);
}

Test(json, invalid_streams_and_shards)
{
	const struct bad_case cases[] = {
	    {raw("{'format': 'shardmap', 'format_version': 1, 'version': 1, 'cells': [], "
		 "'streams': [{'name': 's', 'hash': 'sha1', 'shards': []}]}"),
	     SHARDMAP_EINVAL, "streams[0].hash: unknown hash function 'sha1' (xxh3 or md5)"},
	    {raw("{'format': 'shardmap', 'format_version': 1, 'version': 1, 'cells': [], "
		 "'streams': [{'hash': 'md5', 'shards': []}]}"),
	     SHARDMAP_EINVAL, "streams[0].name: missing"},
	    {raw("{'format': 'shardmap', 'format_version': 1, 'version': 1, 'cells': [], "
		 "'streams': [{'name': 's', 'hash': 'md5'}]}"),
	     SHARDMAP_EINVAL, "streams[0].shards: missing"},
	    {raw("{'format': 'shardmap', 'format_version': 1, 'version': 1, 'cells': [" CELL_A
		 "], 'streams': [{'name': 's', 'hash': 'md5', 'shards': [" WHOLE "]}, "
		 "{'name': 's', 'hash': 'xxh3', 'shards': [" WHOLE "]}]}"),
	     SHARDMAP_EINVAL, "streams[1].name: duplicate 's' (also in streams[0])"},
	    {doc(CELL_A,
		 "{'id': 'x', 'start': '0x0', 'end': '" MAXKEY "', 'open': true, 'owner': 'a'}"),
	     SHARDMAP_EINVAL, "streams[0].shards[0].start: not a decimal hash key (*"},
	    {doc(CELL_A,
		 "{'id': 'x', 'start': 0, 'end': '" MAXKEY "', 'open': true, 'owner': 'a'}"),
	     SHARDMAP_EINVAL,
	     "streams[0].shards[0].start: not a decimal hash key (a JSON number: write hash keys "
	     "as strings)"},
	    {doc(CELL_A,
		 "{'id': 'x', 'start': '0', 'end': '340282366920938463463374607431768211456'"
		 ", 'open': true, 'owner': 'a'}"),
	     SHARDMAP_EINVAL, "streams[0].shards[0].end: not a decimal hash key (*"},
	    {doc(CELL_A, "{'id': 'x', 'start': '0', 'open': true, 'owner': 'a'}"), SHARDMAP_EINVAL,
	     "streams[0].shards[0].end: missing"},
	    {doc(CELL_A, "{'id': 'x', 'start': '5', 'end': '4', 'open': true, 'owner': 'a'}"),
	     SHARDMAP_EINVAL, "streams[0].shards[0].end: less than start"},
	    {doc(CELL_A, "{'id': 'x', 'start': '0', 'end': '" MAXKEY "', 'owner': 'a'}"),
	     SHARDMAP_EINVAL, "streams[0].shards[0].open: missing"},
	    {doc(CELL_A, "{'id': 'x', 'start': '0', 'end': '" MAXKEY "', 'open': 1, 'owner': 'a'}"),
	     SHARDMAP_EINVAL, "streams[0].shards[0].open: not a boolean"},
	    {doc(CELL_A, "{'id': 'x', 'start': '0', 'end': '" MAXKEY "', 'open': true}"),
	     SHARDMAP_EINVAL, "streams[0].shards[0].owner: missing"},
	    {doc(CELL_A,
		 "{'id': 'x', 'start': '0', 'end': '" MAXKEY "', 'open': true, 'owner': 'zz'}"),
	     SHARDMAP_EINVAL, "streams[0].shards[0].owner: no cell 'zz' in cells"},
	    {doc(CELL_A, WHOLE ", " WHOLE), SHARDMAP_EINVAL,
	     "streams[0].shards[1].id: duplicate 'x' (also in streams[0].shards[0])"},
	    {doc(CELL_A, "{'id': 'x', 'start': '0', 'end': '" MAXKEY
			 "', 'open': true, 'owner': 'a', 'adjacent_parent': 'p'}"),
	     SHARDMAP_EINVAL, "streams[0].shards[0].adjacent_parent: set without parent"},
	    {doc(CELL_A, "{'id': 'x', 'start': '0', 'end': '" MAXKEY
			 "', 'open': true, 'owner': 'a', 'parent': 3}"),
	     SHARDMAP_EINVAL, "streams[0].shards[0].parent: a number, expected a string"},
	    {doc(CELL_A, "{'id': 'x', 'start': '0', 'end': '" MAXKEY
			 "', 'open': true, 'owner': 'a', 'owner_cell': 'a'}"),
	     SHARDMAP_EINVAL, "streams[0].shards[0].owner_cell: unknown member"},
	    /* Coverage of the open shards. */
	    {doc(CELL_A,
		 "{'id': 'x', 'start': '0', 'end': '" MAXKEY "', 'open': false, 'owner': 'a'}"),
	     SHARDMAP_EINVAL,
	     "streams[0].shards: no open shard (the open shards of a stream must cover every "
	     "hash key)"},
	    {doc(CELL_A,
		 "{'id': 'x', 'start': '100', 'end': '" MAXKEY "', 'open': true, 'owner': 'a'}"),
	     SHARDMAP_EINVAL, "streams[0].shards: hash keys 0..99 are in no open shard"},
	    {doc(CELL_A,
		 "{'id': 'x', 'start': '0', 'end': '" HALF "', 'open': true, 'owner': 'a'}"),
	     SHARDMAP_EINVAL,
	     "streams[0].shards: hash keys " HALF1 ".." MAXKEY " are in no open shard"},
	    {doc(CELL_A,
		 "{'id': 'x', 'start': '0', 'end': '10', 'open': true, 'owner': 'a'}, "
		 "{'id': 'y', 'start': '20', 'end': '" MAXKEY "', 'open': true, 'owner': 'a'}"),
	     SHARDMAP_EINVAL, "streams[0].shards: hash keys 11..19 are in no open shard"},
	    {doc(CELL_A,
		 "{'id': 'y', 'start': '10', 'end': '" MAXKEY "', 'open': true, 'owner': 'a'}, "
		 "{'id': 'x', 'start': '0', 'end': '10', 'open': true, 'owner': 'a'}"),
	     SHARDMAP_EINVAL,
	     "streams[0].shards[0]: range overlaps open shard streams[0].shards[1]"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		expect_refused(&cases[i]);
}

Test(json, closed_shards_may_overlap_and_parents_need_not_exist)
{
	char *text = doc(CELL_A, "{'id': 'old', 'start': '0', 'end': '" MAXKEY
				 "', 'open': false, 'owner': 'a', 'parent': 'gone'}, "
				 "{'id': 'x', 'start': '0', 'end': '" HALF
				 "', 'open': true, 'owner': 'a', 'parent': 'old'}, "
				 "{'id': 'y', 'start': '" HALF1 "', 'end': '" MAXKEY
				 "', 'open': true, 'owner': 'a', 'parent': 'old', "
				 "'adjacent_parent': null}");
	shardmap_delta *d = NULL;
	shardmap_error why = {0};
	cr_assert_eq(shardmap__json_import(text, strlen(text), &d, &why), 0, "%s", why.message);
	cr_assert_eq(shardmap_delta_count(d), 5); /* cell, stream, three shards */
	shardmap *m = map_from(d);
	cr_assert_eq(shardmap_version(m), 3);
	shardmap_close(m);
	shardmap_delta_free(d);
	free(text);
}

/* ---------------------------------------------------------------- Kinesis */

static shardmap_hash md5_of(const char *key)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0;
	cr_assert_eq(EVP_Digest(key, strlen(key), md, &n, EVP_md5(), NULL), 1);
	cr_assert_eq(n, 16);
	shardmap_hash h = {0, 0};
	for (int i = 0; i < 8; i++) {
		h.hi = h.hi << 8 | md[i];
		h.lo = h.lo << 8 | md[8 + i];
	}
	return h;
}

static shardmap_delta *kinesis(const char *file, const char *stream, shardmap_error *why)
{
	size_t len;
	char *text = read_data(file, &len);
	static const char *const owners[] = {"a", "b"};
	static const char *const eps_a[] = {"10.0.0.1:7000"}, *const eps_b[] = {"10.0.0.2:7000"};
	const struct shardmap__json_cell cells[] = {{"a", eps_a, 1}, {"b", eps_b, 1}};
	struct shardmap__kinesis_import opt = {
	    .stream = stream, .owners = owners, .n_owners = 2, .cells = cells, .n_cells = 2};
	shardmap_delta *d = NULL;
	int rc = shardmap__json_import_kinesis(text, len, &opt, &d, why);
	free(text);
	return rc == 0 ? d : NULL;
}

struct want_shard {
	const char *id;
	int open;
	const char *parent, *adjacent, *owner;
};

static void expect_shard(shardmap_reader *r, const char *stream, const struct want_shard *w)
{
	shardmap_route rt;
	cr_assert_eq(shardmap_find_shard(r, stream, w->id, &rt), 0, "%s missing", w->id);
	cr_expect_eq(rt.open, w->open, "%s open", w->id);
	cr_expect(gen_str_eq(rt.parent, w->parent), "%s parent %s", w->id,
		  rt.parent ? rt.parent : "(none)");
	cr_expect(gen_str_eq(rt.adjacent_parent, w->adjacent), "%s adjacent parent", w->id);
	cr_expect_str_eq(rt.cell_id, w->owner, "%s owner", w->id);
}

Test(json, kinesis_list_shards_lineage_and_md5_routing)
{
	shardmap_error why = {0};
	shardmap_delta *d = kinesis("kinesis_list_shards.json", "orders", &why);
	cr_assert_not_null(d, "import: %s", why.message);
	cr_assert_eq(shardmap_delta_from(d), 0);
	cr_assert_eq(shardmap_delta_to(d), 1);
	cr_assert_eq(shardmap_delta_count(d), 2 + 1 + 6);
	shardmap *m = map_from(d);

	/* The three original shards closed by one split and one merge; owners round-robin. */
	static const struct want_shard want[] = {
	    {"shardId-000000000000", 0, NULL, NULL, "a"},
	    {"shardId-000000000001", 0, NULL, NULL, "b"},
	    {"shardId-000000000002", 0, NULL, NULL, "a"},
	    {"shardId-000000000003", 1, "shardId-000000000000", NULL, "b"},
	    {"shardId-000000000004", 1, "shardId-000000000000", NULL, "a"},
	    {"shardId-000000000005", 1, "shardId-000000000001", "shardId-000000000002", "b"},
	};
	shardmap_reader *r;
	cr_assert_eq(shardmap_reader_open(m, &r), 0);
	shardmap_read_begin(r);
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
		expect_shard(r, "orders", &want[i]);

	/* md5 routing: every sample key lands on the open shard whose range holds MD5(key),
	 * found here by scanning the document's own open ranges. */
	int hits[6] = {0};
	for (int k = 0; k < 2000; k++) {
		char key[32];
		snprintf(key, sizeof key, "partition-key-%d", k);
		shardmap_hash h = md5_of(key);
		const char *expect = NULL;
		for (size_t i = 0; i < d->n_ops; i++) {
			const struct shardmap__op *op = &d->ops[i];
			if (op->kind == SHARDMAP__OP_PUT_SHARD && op->open &&
			    shardmap_hash_cmp(op->start, h) <= 0 &&
			    shardmap_hash_cmp(h, op->end) <= 0)
				expect = op->id;
		}
		cr_assert_not_null(expect);
		shardmap_route rt;
		cr_assert_eq(shardmap_route_key(r, "orders", key, strlen(key), &rt), 0);
		cr_assert_str_eq(rt.shard_id, expect, "key %s", key);
		cr_assert_eq(
		    shardmap_hash_cmp(shardmap_hash_key(SHARDMAP_HASH_MD5, key, strlen(key)), h),
		    0);
		hits[expect[strlen(expect) - 1] - '0']++;
	}
	cr_expect(hits[3] > 0 && hits[4] > 0 && hits[5] > 0, "every open shard is hit");
	shardmap_read_end(r);
	shardmap_reader_close(r);
	shardmap_close(m);
	shardmap_delta_free(d);
}

Test(json, kinesis_describe_stream)
{
	shardmap_error why = {0};
	shardmap_delta *d = kinesis("kinesis_describe_stream.json", NULL, &why);
	cr_assert_not_null(d, "import: %s", why.message);
	shardmap *m = map_from(d);
	shardmap_reader *r;
	cr_assert_eq(shardmap_reader_open(m, &r), 0);
	shardmap_read_begin(r);
	/* The stream takes the document's name; a parent past retention is kept as lineage. */
	struct want_shard w = {"shardId-000000000007", 1, "shardId-000000000006", NULL, "a"};
	expect_shard(r, "clicks", &w);
	shardmap_route rt;
	cr_assert_eq(shardmap_find_shard(r, "clicks", "shardId-000000000006", &rt),
		     SHARDMAP_ENOENT);
	shardmap_read_end(r);
	shardmap_reader_close(r);
	shardmap_close(m);
	shardmap_delta_free(d);

	/* --stream overrides StreamName. */
	d = kinesis("kinesis_describe_stream.json", "renamed", &why);
	cr_assert_not_null(d);
	cr_assert_str_eq(d->ops[2].stream, "renamed");
	cr_assert_eq(d->ops[2].hash_fn, SHARDMAP_HASH_MD5);
	shardmap_delta_free(d);
}

static void expect_kinesis_refused(const char *text, const char *stream, size_t n_owners, int code,
				   const char *message)
{
	static const char *const owners[] = {"a"};
	struct shardmap__kinesis_import opt = {
	    .stream = stream, .owners = owners, .n_owners = n_owners, .from_version = 4};
	char *t = raw(text);
	shardmap_delta *sentinel = (shardmap_delta *)0x1, *d = sentinel;
	shardmap_error why = {0};
	int rc = shardmap__json_import_kinesis(t, strlen(t), &opt, &d, &why);
	cr_expect_eq(rc, code, "%s: got %d (%s)", t, rc, why.message);
	cr_expect_eq(d, sentinel);
	size_t n = strlen(message);
	if (message[n - 1] == '*')
		cr_expect(strncmp(why.message, message, n - 1) == 0, "%s:\n got '%s'\n want '%s'",
			  t, why.message, message);
	else
		cr_expect_str_eq(why.message, message, "%s", t);
	free(t);
}

#define KSHARD(id, start, end, extra)                                                              \
	"{'ShardId': '" id "', 'HashKeyRange': {'StartingHashKey': '" start                        \
	"', 'EndingHashKey': '" end "'}, 'SequenceNumberRange': {'StartingSequenceNumber': "       \
	"'1'" extra "}}"

Test(json, kinesis_invalid)
{
	expect_kinesis_refused("{'Shards': [" KSHARD("s0", "0", MAXKEY, "") "]}", "x", 0,
			       SHARDMAP_EINVAL, "no owner cell given for the imported shards");
	expect_kinesis_refused("{'Shards': [" KSHARD("s0", "0", MAXKEY, "") "]}", NULL, 1,
			       SHARDMAP_EINVAL, "document: no StreamName *");
	expect_kinesis_refused("{'Shards': [" KSHARD("s0", "0", MAXKEY, "") "]", "x", 1,
			       SHARDMAP_ECORRUPT, "not JSON: *");
	expect_kinesis_refused("{'Streams': []}", "x", 1, SHARDMAP_EINVAL,
			       "document: neither Shards nor StreamDescription.Shards *");
	expect_kinesis_refused(
	    "{'Shards': [" KSHARD("s0", "0", MAXKEY, "") "], 'NextToken': 'AAA'}", "x", 1,
	    SHARDMAP_EINVAL, "NextToken: the document is one page *");
	expect_kinesis_refused("{'StreamDescription': {'StreamName': 'x', 'HasMoreShards': true, "
			       "'Shards': [" KSHARD("s0", "0", MAXKEY, "") "]}}",
			       NULL, 1, SHARDMAP_EINVAL, "StreamDescription.HasMoreShards: true*");
	expect_kinesis_refused("{'StreamDescription': {'StreamName': 'x'}}", NULL, 1,
			       SHARDMAP_EINVAL, "StreamDescription.Shards: missing");
	expect_kinesis_refused("{'Shards': [" KSHARD("s0", "0", "12x", "") "]}", "x", 1,
			       SHARDMAP_EINVAL,
			       "Shards[0].HashKeyRange.EndingHashKey: not a decimal hash key (*");
	expect_kinesis_refused("{'Shards': [{'ShardId': 's0', 'SequenceNumberRange': "
			       "{'StartingSequenceNumber': '1'}}]}",
			       "x", 1, SHARDMAP_EINVAL, "Shards[0].HashKeyRange: missing");
	expect_kinesis_refused("{'Shards': [{'ShardId': 's0', 'HashKeyRange': {'StartingHashKey': "
			       "'0', 'EndingHashKey': '1'}, 'SequenceNumberRange': {}}]}",
			       "x", 1, SHARDMAP_EINVAL,
			       "Shards[0].SequenceNumberRange.StartingSequenceNumber: missing");
	expect_kinesis_refused(
	    "{'Shards': [" KSHARD("s0", "0", MAXKEY, ", 'EndingSequenceNumber': 'soon'") "]}", "x",
	    1, SHARDMAP_EINVAL,
	    "Shards[0].SequenceNumberRange.EndingSequenceNumber: not a decimal "
	    "sequence number");
	expect_kinesis_refused("{'Shards': [" KSHARD("s0", "0", MAXKEY, "") ", " KSHARD(
				   "s0", "0", MAXKEY, ", 'EndingSequenceNumber': '2'") "]}",
			       "x", 1, SHARDMAP_EINVAL,
			       "Shards[1].ShardId: duplicate 's0' (also in Shards[0])");
	expect_kinesis_refused("{'Shards': [" KSHARD("s0", "0", "99", "") "]}", "x", 1,
			       SHARDMAP_EINVAL,
			       "Shards: hash keys 100.." MAXKEY " are in no open shard");
	expect_kinesis_refused(
	    "{'Shards': [" KSHARD("s0", "0", MAXKEY, ", 'EndingSequenceNumber': '2'") "]}", "x", 1,
	    SHARDMAP_EINVAL, "Shards: no open shard *");
	expect_kinesis_refused("{'Shards': [{'ShardId': '', 'HashKeyRange': {}}]}", "x", 1,
			       SHARDMAP_EINVAL, "Shards[0].ShardId: not a valid name (empty)");
	expect_kinesis_refused("{'Shards': [" KSHARD("s0", "0", MAXKEY, "") "]}", "", 1,
			       SHARDMAP_EINVAL, "stream name: not a valid name (empty)");
}

Test(json, kinesis_version_and_cells)
{
	const char *text = "{\"Shards\": [{\"ShardId\": \"s0\", \"HashKeyRange\": "
			   "{\"StartingHashKey\": \"0\", \"EndingHashKey\": \"" MAXKEY "\"}, "
			   "\"SequenceNumberRange\": {\"StartingSequenceNumber\": \"1\"}}]}";
	static const char *const owners[] = {"c"};
	struct shardmap__kinesis_import opt = {
	    .stream = "x", .owners = owners, .n_owners = 1, .from_version = 41};
	shardmap_delta *d = NULL;
	cr_assert_eq(shardmap__json_import_kinesis(text, strlen(text), &opt, &d, NULL), 0);
	cr_assert_eq(shardmap_delta_from(d), 41);
	cr_assert_eq(shardmap_delta_to(d), 42);
	cr_assert_eq(shardmap_delta_count(d), 2); /* put_stream, put_shard: no cells asked */
	cr_assert_eq(d->ops[1].open, 1);
	cr_assert_str_eq(d->ops[1].owner_cell, "c");
	shardmap_delta_free(d);

	static const char *const bad_eps[] = {"no-port"};
	const struct shardmap__json_cell cells[] = {{"c", bad_eps, 1}};
	opt.cells = cells;
	opt.n_cells = 1;
	shardmap_error why = {0};
	cr_assert_eq(shardmap__json_import_kinesis(text, strlen(text), &opt, &d, &why),
		     SHARDMAP_EINVAL);
	cr_assert_str_eq(why.message,
			 "cell 'c': endpoint 'no-port' is not host:port (port 1..65535)");
	opt.n_cells = 0;
	opt.from_version = UINT64_MAX;
	cr_assert_eq(shardmap__json_import_kinesis(text, strlen(text), &opt, &d, &why),
		     SHARDMAP_EINVAL);
}
