/*
 * json.c - JSON import and export of maps, for the CLI (shardmapctl import/export), tests
 * and tools; the schema is docs/json.md.
 *
 * Export walks a whole-map delta (the canonical form shardmap__version_to_delta gives) and
 * writes one record at a time with jansson, so a million-shard map never exists as one JSON
 * tree. Import parses a document with jansson, checks every value and builds a delta with the
 * public shardmap_delta_* calls. Every error message begins with the JSON path of the value
 * at fault, so a person can find it in the file. The Kinesis importer reads the ListShards /
 * DescribeStream shape that the AWS CLI prints and maps it onto one md5 stream.
 * Nothing here touches a map or a store.
 */
#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

static const shardmap_hash hash_max = {UINT64_MAX, UINT64_MAX};

/* ---------------------------------------------------------------- hash key helpers */

static shardmap_hash hash_inc(shardmap_hash h)
{
	h.lo++;
	if (h.lo == 0)
		h.hi++;
	return h;
}

static shardmap_hash hash_dec(shardmap_hash h)
{
	if (h.lo == 0)
		h.hi--;
	h.lo--;
	return h;
}

/* ---------------------------------------------------------------- reading values */

/* "path.key", or "key" at the top level (path ""): JOIN(path) supplies the first two %s. */
#define JOIN(path) (path), ((path)[0] ? "." : "")

/* Why a name is not acceptable, or NULL when it is (the rule of shardmap__check_name). */
static const char *name_problem(const char *s)
{
	if (s[0] == '\0')
		return "empty";
	if (strlen(s) > SHARDMAP__NAME_MAX)
		return "longer than 255 bytes";
	if (shardmap__check_name(s) != 0)
		return "holds a control character";
	return NULL;
}

static const char *type_name(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT:
		return "an object";
	case JSON_ARRAY:
		return "an array";
	case JSON_STRING:
		return "a string";
	case JSON_INTEGER:
	case JSON_REAL:
		return "a number";
	case JSON_TRUE:
	case JSON_FALSE:
		return "a boolean";
	case JSON_NULL:
		return "null";
	}
	return "unknown";
}

/* Member key of obj as a string. Absent or null: *out = NULL, and an error when required.
 * Returns 0 or SHARDMAP_EINVAL. */
static int get_string(const json_t *obj, const char *path, const char *key, int required,
		      const char **out, shardmap_error *why)
{
	const json_t *v = json_object_get(obj, key);
	*out = NULL;
	if (v == NULL || json_is_null(v)) {
		if (!required)
			return SHARDMAP_OK;
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX, "%s%s%s: missing",
					   JOIN(path), key);
	}
	if (!json_is_string(v))
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
					   "%s%s%s: %s, expected a string", JOIN(path), key,
					   type_name(v));
	*out = json_string_value(v);
	return SHARDMAP_OK;
}

/* A name (stream, shard id, cell id): as get_string, and checked like shardmap__check_name. */
static int get_name(const json_t *obj, const char *path, const char *key, int required,
		    const char **out, shardmap_error *why)
{
	int rc = get_string(obj, path, key, required, out, why);
	if (rc != 0 || *out == NULL)
		return rc;
	const char *problem = name_problem(*out);
	if (problem != NULL)
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
					   "%s%s%s: not a valid name (%s)", JOIN(path), key,
					   problem);
	return SHARDMAP_OK;
}

/* A decimal hash key written as a JSON string. */
static int get_hash(const json_t *obj, const char *path, const char *key, shardmap_hash *out,
		    shardmap_error *why)
{
	const json_t *v = json_object_get(obj, key);
	if (v != NULL && json_is_number(v))
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
					   "%s%s%s: not a decimal hash key (a JSON number: write "
					   "hash keys as strings)",
					   JOIN(path), key);
	const char *s;
	int rc = get_string(obj, path, key, 1, &s, why);
	if (rc != 0)
		return rc;
	if (shardmap_hash_parse(s, out) != 0) {
		const char *reason = shardmap_hash_parse_error(s);
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
					   "%s%s%s: not a decimal hash key (%s)", JOIN(path), key,
					   reason ? reason : "invalid");
	}
	return SHARDMAP_OK;
}

/* Member key of obj as an array (required). */
static int get_array(const json_t *obj, const char *path, const char *key, json_t **out,
		     shardmap_error *why)
{
	json_t *v = json_object_get(obj, key);
	if (v == NULL)
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX, "%s%s%s: missing",
					   JOIN(path), key);
	if (!json_is_array(v))
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
					   "%s%s%s: %s, expected an array", JOIN(path), key,
					   type_name(v));
	*out = v;
	return SHARDMAP_OK;
}

static int expect_object(const json_t *v, const char *path, shardmap_error *why)
{
	if (json_is_object(v))
		return SHARDMAP_OK;
	return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX, "%s: %s, expected an object",
				   path, type_name(v));
}

/* Our own schema is closed: a member it does not define is a typo worth reporting. */
static int check_members(const json_t *obj, const char *path, const char *const *allowed,
			 shardmap_error *why)
{
	const char *key;
	const json_t *v;
	json_object_foreach((json_t *)obj, key, v)
	{
		size_t i = 0;
		while (allowed[i] != NULL && strcmp(allowed[i], key) != 0)
			i++;
		if (allowed[i] == NULL)
			return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
						   "%s%s%s: unknown member", JOIN(path), key);
	}
	return SHARDMAP_OK;
}

/* Remember name in seen (name -> index); a repeat is an error naming both places. */
static int check_unique(json_t *seen, const char *name, size_t index, const char *path,
			const char *key, const char *array_path, shardmap_error *why)
{
	const json_t *prev = json_object_get(seen, name);
	if (prev != NULL)
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
					   "%s.%s: duplicate '%s' (also in %s[%" JSON_INTEGER_FORMAT
					   "])",
					   path, key, name, array_path, json_integer_value(prev));
	if (json_object_set_new(seen, name, json_integer((json_int_t)index)) != 0)
		return shardmap__error_set(why, SHARDMAP_ENOMEM, SIZE_MAX, "%s: out of memory",
					   path);
	return SHARDMAP_OK;
}

static int parse(const char *text, size_t len, json_t **out, shardmap_error *why)
{
	json_error_t err;
	*out = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
	if (*out != NULL)
		return SHARDMAP_OK;
	if (json_error_code(&err) == json_error_out_of_memory)
		return shardmap__error_set(why, SHARDMAP_ENOMEM, SIZE_MAX, "out of memory");
	return shardmap__error_set(why, SHARDMAP_ECORRUPT, SIZE_MAX,
				   "not JSON: line %d column %d: %s", err.line, err.column,
				   err.text);
}

/* ---------------------------------------------------------------- coverage */

/* The open shards of one stream, collected while reading it. */
struct open_range {
	shardmap_hash start, end;
	size_t index; /* position in the shards array */
};

struct ranges {
	struct open_range *v;
	size_t n, cap;
};

static int ranges_push(struct ranges *r, shardmap_hash start, shardmap_hash end, size_t index)
{
	if (r->n == r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 64;
		struct open_range *v = realloc(r->v, cap * sizeof *v);
		if (v == NULL)
			return SHARDMAP_ENOMEM;
		r->v = v;
		r->cap = cap;
	}
	r->v[r->n++] = (struct open_range){start, end, index};
	return SHARDMAP_OK;
}

static int range_cmp(const void *a, const void *b)
{
	const struct open_range *x = a, *y = b;
	return shardmap_hash_cmp(x->start, y->start);
}

static int uncovered(shardmap_error *why, const char *array_path, shardmap_hash from,
		     shardmap_hash to)
{
	char a[SHARDMAP_HASH_DECIMAL_MAX], b[SHARDMAP_HASH_DECIMAL_MAX];
	shardmap_hash_format(from, a);
	shardmap_hash_format(to, b);
	return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
				   "%s: hash keys %s..%s are in no open shard", array_path, a, b);
}

/* The open shards must partition 0 .. 2^128-1: sorted by start, each begins one past the
 * previous end, the first at 0 and the last ends at the maximum. Sorts r. */
static int check_coverage(struct ranges *r, const char *array_path, shardmap_error *why)
{
	if (r->n == 0)
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
					   "%s: no open shard (the open shards of a stream must "
					   "cover every hash key)",
					   array_path);
	qsort(r->v, r->n, sizeof *r->v, range_cmp);
	shardmap_hash zero = {0, 0};
	if (shardmap_hash_cmp(r->v[0].start, zero) != 0)
		return uncovered(why, array_path, zero, hash_dec(r->v[0].start));
	for (size_t i = 1; i < r->n; i++) {
		const struct open_range *prev = &r->v[i - 1], *cur = &r->v[i];
		if (shardmap_hash_cmp(cur->start, prev->end) <= 0)
			return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
						   "%s[%zu]: range overlaps open shard %s[%zu]",
						   array_path, cur->index, array_path, prev->index);
		shardmap_hash next = hash_inc(prev->end);
		if (shardmap_hash_cmp(cur->start, next) != 0)
			return uncovered(why, array_path, next, hash_dec(cur->start));
	}
	const struct open_range *last = &r->v[r->n - 1];
	if (shardmap_hash_cmp(last->end, hash_max) != 0)
		return uncovered(why, array_path, hash_inc(last->end), hash_max);
	return SHARDMAP_OK;
}

/* A delta append that failed after our own checks passed: only memory is left to blame,
 * unless the public checks are stricter than ours. */
static int append_failed(shardmap_error *why, int rc, const char *path)
{
	if (rc == SHARDMAP_ENOMEM)
		return shardmap__error_set(why, rc, SIZE_MAX, "%s: out of memory", path);
	return shardmap__error_set(why, rc, SIZE_MAX, "%s: rejected (%s)", path,
				   shardmap_strerror(rc));
}

/* ---------------------------------------------------------------- whole-map import */

static int hash_fn_from_name(const char *s)
{
	if (strcmp(s, "xxh3") == 0)
		return SHARDMAP_HASH_XXH3;
	if (strcmp(s, "md5") == 0)
		return SHARDMAP_HASH_MD5;
	return -1;
}

static const char *hash_fn_name(int hash_fn)
{
	return hash_fn == SHARDMAP_HASH_MD5 ? "md5" : "xxh3";
}

static int import_cells(const json_t *cells, json_t *cell_set, shardmap_delta *d,
			shardmap_error *why)
{
	static const char *const members[] = {"id", "endpoints", NULL};
	size_t i;
	const json_t *c;
	json_array_foreach((json_t *)cells, i, c)
	{
		char path[64];
		snprintf(path, sizeof path, "cells[%zu]", i);
		const char *id;
		json_t *eps;
		int rc;
		if ((rc = expect_object(c, path, why)) != 0 ||
		    (rc = check_members(c, path, members, why)) != 0 ||
		    (rc = get_name(c, path, "id", 1, &id, why)) != 0 ||
		    (rc = check_unique(cell_set, id, i, path, "id", "cells", why)) != 0 ||
		    (rc = get_array(c, path, "endpoints", &eps, why)) != 0)
			return rc;
		size_t n = json_array_size(eps);
		if (n == 0)
			return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
						   "%s.endpoints: empty (a cell needs at least one "
						   "endpoint)",
						   path);
		const char **v = calloc(n, sizeof *v);
		if (v == NULL)
			return shardmap__error_set(why, SHARDMAP_ENOMEM, SIZE_MAX, "out of memory");
		for (size_t k = 0; k < n && rc == 0; k++) {
			const json_t *e = json_array_get(eps, k);
			if (!json_is_string(e))
				rc = shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
							 "%s.endpoints[%zu]: %s, expected a string",
							 path, k, type_name(e));
			else if (shardmap__check_endpoint(json_string_value(e)) != 0)
				rc = shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
							 "%s.endpoints[%zu]: '%s' is not host:port "
							 "(port 1..65535)",
							 path, k, json_string_value(e));
			v[k] = json_string_value(e);
		}
		if (rc == 0 && (rc = shardmap_delta_put_cell(d, id, v, n)) != 0)
			rc = append_failed(why, rc, path);
		free(v);
		if (rc != 0)
			return rc;
	}
	return SHARDMAP_OK;
}

static int import_shard(const json_t *sh, const char *path, const char *stream,
			const json_t *cell_set, json_t *id_set, size_t index,
			const char *array_path, struct ranges *open, shardmap_delta *d,
			shardmap_error *why)
{
	static const char *const members[] = {"id",	"start",	   "end", "open", "owner",
					      "parent", "adjacent_parent", NULL};
	shardmap_shard s;
	int rc;
	if ((rc = expect_object(sh, path, why)) != 0 ||
	    (rc = check_members(sh, path, members, why)) != 0 ||
	    (rc = get_name(sh, path, "id", 1, &s.id, why)) != 0 ||
	    (rc = check_unique(id_set, s.id, index, path, "id", array_path, why)) != 0 ||
	    (rc = get_hash(sh, path, "start", &s.start, why)) != 0 ||
	    (rc = get_hash(sh, path, "end", &s.end, why)) != 0)
		return rc;
	if (shardmap_hash_cmp(s.start, s.end) > 0)
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
					   "%s.end: less than start", path);
	const json_t *o = json_object_get(sh, "open");
	if (o == NULL || !json_is_boolean(o))
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX, "%s.open: %s", path,
					   o ? "not a boolean" : "missing");
	s.open = json_is_true(o);
	if ((rc = get_name(sh, path, "owner", 1, &s.owner_cell, why)) != 0 ||
	    (rc = get_name(sh, path, "parent", 0, &s.parent, why)) != 0 ||
	    (rc = get_name(sh, path, "adjacent_parent", 0, &s.adjacent_parent, why)) != 0)
		return rc;
	if (json_object_get(cell_set, s.owner_cell) == NULL)
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
					   "%s.owner: no cell '%s' in cells", path, s.owner_cell);
	if (s.adjacent_parent != NULL && s.parent == NULL)
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
					   "%s.adjacent_parent: set without parent", path);
	if (s.open && (rc = ranges_push(open, s.start, s.end, index)) != 0)
		return shardmap__error_set(why, rc, SIZE_MAX, "out of memory");
	if ((rc = shardmap_delta_put_shard(d, stream, &s)) != 0)
		return append_failed(why, rc, path);
	return SHARDMAP_OK;
}

static int import_stream(const json_t *st, size_t i, const json_t *cell_set, json_t *stream_set,
			 struct ranges *open, shardmap_delta *d, shardmap_error *why)
{
	static const char *const members[] = {"name", "hash", "shards", NULL};
	char path[64];
	snprintf(path, sizeof path, "streams[%zu]", i);
	const char *name, *hash;
	json_t *shards;
	int rc;
	if ((rc = expect_object(st, path, why)) != 0 ||
	    (rc = check_members(st, path, members, why)) != 0 ||
	    (rc = get_name(st, path, "name", 1, &name, why)) != 0 ||
	    (rc = check_unique(stream_set, name, i, path, "name", "streams", why)) != 0 ||
	    (rc = get_string(st, path, "hash", 1, &hash, why)) != 0 ||
	    (rc = get_array(st, path, "shards", &shards, why)) != 0)
		return rc;
	int hash_fn = hash_fn_from_name(hash);
	if (hash_fn < 0)
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
					   "%s.hash: unknown hash function '%s' (xxh3 or md5)",
					   path, hash);
	if ((rc = shardmap_delta_put_stream(d, name, hash_fn)) != 0)
		return append_failed(why, rc, path);

	char array_path[80];
	snprintf(array_path, sizeof array_path, "%s.shards", path);
	json_t *id_set = json_object();
	if (id_set == NULL)
		return shardmap__error_set(why, SHARDMAP_ENOMEM, SIZE_MAX, "out of memory");
	open->n = 0;
	size_t j;
	const json_t *sh;
	json_array_foreach(shards, j, sh)
	{
		char spath[112];
		snprintf(spath, sizeof spath, "%s[%zu]", array_path, j);
		rc = import_shard(sh, spath, name, cell_set, id_set, j, array_path, open, d, why);
		if (rc != 0)
			break;
	}
	json_decref(id_set);
	if (rc == 0)
		rc = check_coverage(open, array_path, why);
	return rc;
}

static int import_map(const json_t *root, shardmap_delta **out, shardmap_error *why)
{
	static const char *const members[] = {"format", "format_version", "version",
					      "cells",	"streams",	  NULL};
	int rc;
	if ((rc = expect_object(root, "document", why)) != 0 ||
	    (rc = check_members(root, "", members, why)) != 0)
		return rc;
	const char *format;
	if ((rc = get_string(root, "", "format", 1, &format, why)) != 0)
		return rc;
	if (strcmp(format, SHARDMAP__JSON_FORMAT) != 0)
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
					   "format: '%s', expected '" SHARDMAP__JSON_FORMAT
					   "' (for Kinesis output use the Kinesis import)",
					   format);
	const json_t *fv = json_object_get(root, "format_version");
	if (fv == NULL || !json_is_integer(fv))
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX, "format_version: %s",
					   fv ? "not an integer" : "missing");
	if (json_integer_value(fv) != SHARDMAP__JSON_FORMAT_VERSION)
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
					   "format_version: %" JSON_INTEGER_FORMAT
					   " is not supported (this library reads %d)",
					   json_integer_value(fv), SHARDMAP__JSON_FORMAT_VERSION);
	const json_t *ver = json_object_get(root, "version");
	if (ver == NULL || !json_is_integer(ver) || json_integer_value(ver) < 1)
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX, "version: %s",
					   ver == NULL ? "missing"
						       : "not an integer from 1 to 2^63-1");
	json_t *cells, *streams;
	if ((rc = get_array(root, "", "cells", &cells, why)) != 0 ||
	    (rc = get_array(root, "", "streams", &streams, why)) != 0)
		return rc;

	shardmap_delta *d = NULL;
	json_t *cell_set = json_object(), *stream_set = json_object();
	struct ranges open = {0};
	if (cell_set == NULL || stream_set == NULL)
		rc = shardmap__error_set(why, SHARDMAP_ENOMEM, SIZE_MAX, "out of memory");
	else if ((rc = shardmap_delta_new(0, (uint64_t)json_integer_value(ver), &d)) != 0)
		rc = shardmap__error_set(why, rc, SIZE_MAX, "out of memory");
	if (rc == 0)
		rc = import_cells(cells, cell_set, d, why);
	size_t i;
	const json_t *st;
	json_array_foreach(streams, i, st)
	{
		if (rc != 0)
			break;
		rc = import_stream(st, i, cell_set, stream_set, &open, d, why);
	}
	free(open.v);
	json_decref(cell_set);
	json_decref(stream_set);
	if (rc != 0) {
		shardmap_delta_free(d);
		return rc;
	}
	*out = d;
	return SHARDMAP_OK;
}

int shardmap__json_import(const char *text, size_t len, shardmap_delta **out, shardmap_error *why)
{
	if (text == NULL || out == NULL)
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX, "no document");
	json_t *root;
	int rc = parse(text, len, &root, why);
	if (rc != 0)
		return rc;
	rc = import_map(root, out, why);
	json_decref(root);
	return rc;
}

/* ---------------------------------------------------------------- Kinesis import */

/* Sequence numbers are decimal strings (up to 128 bits); only their presence matters. */
static int get_seqno(const json_t *obj, const char *path, const char *key, int required,
		     const char **out, shardmap_error *why)
{
	int rc = get_string(obj, path, key, required, out, why);
	if (rc != 0 || *out == NULL)
		return rc;
	const char *s = *out;
	if (s[0] == '\0' || strspn(s, "0123456789") != strlen(s))
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
					   "%s.%s: not a decimal sequence number", path, key);
	return SHARDMAP_OK;
}

static int kinesis_shard(const json_t *sh, const char *path, size_t index, const char *array_path,
			 const char *stream, const char *owner, json_t *id_set, struct ranges *open,
			 shardmap_delta *d, shardmap_error *why)
{
	shardmap_shard s = {.owner_cell = owner};
	const json_t *hkr, *snr;
	const char *start_seq, *end_seq;
	char hpath[160], spath[160];
	snprintf(hpath, sizeof hpath, "%s.HashKeyRange", path);
	snprintf(spath, sizeof spath, "%s.SequenceNumberRange", path);
	int rc;
	if ((rc = expect_object(sh, path, why)) != 0 ||
	    (rc = get_name(sh, path, "ShardId", 1, &s.id, why)) != 0 ||
	    (rc = check_unique(id_set, s.id, index, path, "ShardId", array_path, why)) != 0 ||
	    (rc = get_name(sh, path, "ParentShardId", 0, &s.parent, why)) != 0 ||
	    (rc = get_name(sh, path, "AdjacentParentShardId", 0, &s.adjacent_parent, why)) != 0)
		return rc;
	hkr = json_object_get(sh, "HashKeyRange");
	snr = json_object_get(sh, "SequenceNumberRange");
	if (hkr == NULL || snr == NULL)
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX, "%s.%s: missing", path,
					   hkr == NULL ? "HashKeyRange" : "SequenceNumberRange");
	if ((rc = expect_object(hkr, hpath, why)) != 0 ||
	    (rc = get_hash(hkr, hpath, "StartingHashKey", &s.start, why)) != 0 ||
	    (rc = get_hash(hkr, hpath, "EndingHashKey", &s.end, why)) != 0 ||
	    (rc = expect_object(snr, spath, why)) != 0 ||
	    (rc = get_seqno(snr, spath, "StartingSequenceNumber", 1, &start_seq, why)) != 0 ||
	    (rc = get_seqno(snr, spath, "EndingSequenceNumber", 0, &end_seq, why)) != 0)
		return rc;
	if (shardmap_hash_cmp(s.start, s.end) > 0)
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
					   "%s.EndingHashKey: less than StartingHashKey", hpath);
	if (s.adjacent_parent != NULL && s.parent == NULL)
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
					   "%s.AdjacentParentShardId: set without ParentShardId",
					   path);
	s.open = end_seq == NULL;
	if (s.open && (rc = ranges_push(open, s.start, s.end, index)) != 0)
		return shardmap__error_set(why, rc, SIZE_MAX, "out of memory");
	if ((rc = shardmap_delta_put_shard(d, stream, &s)) != 0)
		return append_failed(why, rc, path);
	return SHARDMAP_OK;
}

static int kinesis_options_check(const struct shardmap__kinesis_import *opt, shardmap_error *why)
{
	if (opt == NULL || opt->n_owners == 0 || opt->owners == NULL)
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
					   "no owner cell given for the imported shards");
	if (opt->from_version == UINT64_MAX)
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
					   "version %" PRIu64 " has no successor",
					   opt->from_version);
	if (opt->stream != NULL && name_problem(opt->stream) != NULL)
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
					   "stream name: not a valid name (%s)",
					   name_problem(opt->stream));
	for (size_t i = 0; i < opt->n_owners; i++)
		if (opt->owners[i] == NULL || name_problem(opt->owners[i]) != NULL)
			return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
						   "owner %zu: not a valid cell id", i + 1);
	for (size_t i = 0; i < opt->n_cells; i++) {
		const struct shardmap__json_cell *c = &opt->cells[i];
		if (c->id == NULL || name_problem(c->id) != NULL)
			return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
						   "cell %zu: not a valid cell id", i + 1);
		if (c->n_endpoints == 0)
			return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
						   "cell '%s': no endpoint", c->id);
		for (size_t k = 0; k < c->n_endpoints; k++)
			if (shardmap__check_endpoint(c->endpoints[k]) != 0)
				return shardmap__error_set(
				    why, SHARDMAP_EINVAL, SIZE_MAX,
				    "cell '%s': endpoint '%s' is not host:port "
				    "(port 1..65535)",
				    c->id, c->endpoints[k]);
	}
	return SHARDMAP_OK;
}

/* Find the shard array and the stream name in list-shards or describe-stream output. */
static int kinesis_locate(const json_t *root, const char *opt_stream, const json_t **shards,
			  const char **array_path, const char **stream, shardmap_error *why)
{
	int rc;
	if ((rc = expect_object(root, "document", why)) != 0)
		return rc;
	const json_t *desc = json_object_get(root, "StreamDescription");
	const char *name = NULL;
	if (desc != NULL) {
		if ((rc = expect_object(desc, "StreamDescription", why)) != 0 ||
		    (rc = get_name(desc, "StreamDescription", "StreamName", 0, &name, why)) != 0 ||
		    (rc = get_array(desc, "StreamDescription", "Shards", (json_t **)shards, why)) !=
			0)
			return rc;
		const json_t *more = json_object_get(desc, "HasMoreShards");
		if (more != NULL && json_is_true(more))
			return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
						   "StreamDescription.HasMoreShards: true: the "
						   "document does not list every shard");
		*array_path = "StreamDescription.Shards";
	} else {
		if (json_object_get(root, "Shards") == NULL)
			return shardmap__error_set(
			    why, SHARDMAP_EINVAL, SIZE_MAX,
			    "document: neither Shards nor "
			    "StreamDescription.Shards (expected the output of "
			    "aws kinesis list-shards or describe-stream)");
		if ((rc = get_array(root, "", "Shards", (json_t **)shards, why)) != 0)
			return rc;
		const json_t *token = json_object_get(root, "NextToken");
		if (token != NULL && !json_is_null(token))
			return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
						   "NextToken: the document is one page of a "
						   "paginated listing; import the whole listing");
		*array_path = "Shards";
	}
	*stream = opt_stream != NULL ? opt_stream : name;
	if (*stream == NULL)
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
					   "document: no StreamName (list-shards output does not "
					   "carry one): give the stream name");
	return SHARDMAP_OK;
}

static int kinesis_build(const json_t *root, const struct shardmap__kinesis_import *opt,
			 shardmap_delta *d, shardmap_error *why)
{
	const json_t *shards = NULL;
	const char *array_path = "Shards", *stream = NULL;
	int rc = kinesis_locate(root, opt->stream, &shards, &array_path, &stream, why);
	if (rc != 0)
		return rc;
	for (size_t i = 0; i < opt->n_cells && rc == 0; i++) {
		const struct shardmap__json_cell *c = &opt->cells[i];
		rc = shardmap_delta_put_cell(d, c->id, c->endpoints, c->n_endpoints);
		if (rc != 0)
			rc = append_failed(why, rc, c->id);
	}
	if (rc == 0 && (rc = shardmap_delta_put_stream(d, stream, SHARDMAP_HASH_MD5)) != 0)
		return append_failed(why, rc, stream);
	json_t *id_set = json_object();
	struct ranges open = {0};
	if (id_set == NULL)
		rc = shardmap__error_set(why, SHARDMAP_ENOMEM, SIZE_MAX, "out of memory");
	size_t j;
	const json_t *sh;
	json_array_foreach((json_t *)shards, j, sh)
	{
		if (rc != 0)
			break;
		char path[96];
		snprintf(path, sizeof path, "%s[%zu]", array_path, j);
		rc = kinesis_shard(sh, path, j, array_path, stream, opt->owners[j % opt->n_owners],
				   id_set, &open, d, why);
	}
	if (rc == 0)
		rc = check_coverage(&open, array_path, why);
	free(open.v);
	json_decref(id_set);
	return rc;
}

int shardmap__json_import_kinesis(const char *text, size_t len,
				  const struct shardmap__kinesis_import *opt, shardmap_delta **out,
				  shardmap_error *why)
{
	int rc;
	if (text == NULL || out == NULL)
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX, "no document");
	if ((rc = kinesis_options_check(opt, why)) != 0)
		return rc;
	json_t *root;
	if ((rc = parse(text, len, &root, why)) != 0)
		return rc;
	shardmap_delta *d;
	if ((rc = shardmap_delta_new(opt->from_version, opt->from_version + 1, &d)) != 0) {
		json_decref(root);
		return shardmap__error_set(why, rc, SIZE_MAX, "out of memory");
	}
	rc = kinesis_build(root, opt, d, why);
	json_decref(root);
	if (rc != 0) {
		shardmap_delta_free(d);
		return rc;
	}
	*out = d;
	return SHARDMAP_OK;
}

/* ---------------------------------------------------------------- export */

/* json_string refuses invalid UTF-8 and fails on memory alike; tell the two apart. */
static int set_string(json_t *obj, const char *key, const char *value)
{
	json_t *s = json_string(value);
	if (s == NULL) {
		s = json_string_nocheck(value);
		json_decref(s);
		return s != NULL ? SHARDMAP_EINVAL : SHARDMAP_ENOMEM;
	}
	return json_object_set_new(obj, key, s) == 0 ? SHARDMAP_OK : SHARDMAP_ENOMEM;
}

/* Dump one record (an object) on its own line, with the given indent and separator. */
static int dump_record(FILE *out, const char *indent, json_t *obj, int last)
{
	if (fputs(indent, out) == EOF || json_dumpf(obj, out, 0) != 0 ||
	    fputs(last ? "\n" : ",\n", out) == EOF)
		return SHARDMAP_EIO;
	return SHARDMAP_OK;
}

static int export_error(shardmap_error *why, int rc, size_t op_index, const char *what)
{
	if (rc == SHARDMAP_EINVAL)
		return shardmap__error_set(why, rc, op_index, "op %zu: %s is not valid UTF-8",
					   op_index, what);
	if (rc == SHARDMAP_EIO)
		return shardmap__error_set(why, rc, SIZE_MAX, "writing the document failed");
	return shardmap__error_set(why, rc, op_index, "out of memory");
}

static int export_cell(FILE *out, const struct shardmap__op *op, size_t i, int last,
		       shardmap_error *why)
{
	json_t *obj = json_object(), *eps = json_array();
	int rc = (obj && eps) ? set_string(obj, "id", op->id) : SHARDMAP_ENOMEM;
	for (size_t k = 0; rc == 0 && k < op->n_endpoints; k++) {
		json_t *e = json_string(op->endpoints[k]);
		rc =
		    e != NULL && json_array_append_new(eps, e) == 0 ? SHARDMAP_OK : SHARDMAP_EINVAL;
	}
	if (rc == 0) {
		rc = json_object_set(obj, "endpoints", eps) == 0 ? SHARDMAP_OK : SHARDMAP_ENOMEM;
		if (rc == 0)
			rc = dump_record(out, "    ", obj, last);
	}
	json_decref(eps);
	json_decref(obj);
	return rc ? export_error(why, rc, i, "a cell id or endpoint") : SHARDMAP_OK;
}

static int export_shard(FILE *out, const struct shardmap__op *op, size_t i, int last,
			shardmap_error *why)
{
	char start[SHARDMAP_HASH_DECIMAL_MAX], end[SHARDMAP_HASH_DECIMAL_MAX];
	shardmap_hash_format(op->start, start);
	shardmap_hash_format(op->end, end);
	json_t *obj = json_object();
	int rc = obj ? set_string(obj, "id", op->id) : SHARDMAP_ENOMEM;
	if (rc == 0)
		rc = set_string(obj, "start", start);
	if (rc == 0)
		rc = set_string(obj, "end", end);
	if (rc == 0)
		rc = json_object_set_new(obj, "open", json_boolean(op->open)) == 0
			 ? SHARDMAP_OK
			 : SHARDMAP_ENOMEM;
	if (rc == 0)
		rc = set_string(obj, "owner", op->owner_cell);
	if (rc == 0 && op->parent != NULL)
		rc = set_string(obj, "parent", op->parent);
	if (rc == 0 && op->adjacent_parent != NULL)
		rc = set_string(obj, "adjacent_parent", op->adjacent_parent);
	if (rc == 0)
		rc = dump_record(out, "        ", obj, last);
	json_decref(obj);
	return rc ? export_error(why, rc, i, "a shard id, owner or parent") : SHARDMAP_OK;
}

/* The ops of a whole-map delta sorted into cells, streams and each stream's shards. */
struct export_plan {
	size_t *cells, n_cells;
	size_t *streams, n_streams;
	size_t *shards; /* op indices, grouped by stream in stream order */
	size_t *first;	/* first[k] .. first[k+1]: stream k's shards in shards[] */
};

static void export_plan_free(struct export_plan *p)
{
	free(p->cells);
	free(p->streams);
	free(p->shards);
	free(p->first);
}

static int export_plan_make(const shardmap_delta *d, struct export_plan *p, shardmap_error *why)
{
	memset(p, 0, sizeof *p);
	size_t n = d->n_ops;
	size_t *ordinal = calloc(n ? n : 1, sizeof *ordinal); /* put_shard op -> stream index */
	json_t *by_name = json_object();
	p->cells = calloc(n ? n : 1, sizeof *p->cells);
	p->streams = calloc(n ? n : 1, sizeof *p->streams);
	p->shards = calloc(n ? n : 1, sizeof *p->shards);
	p->first = calloc(n + 2, sizeof *p->first);
	int rc = SHARDMAP_OK;
	if (!ordinal || !by_name || !p->cells || !p->streams || !p->shards || !p->first)
		rc = shardmap__error_set(why, SHARDMAP_ENOMEM, SIZE_MAX, "out of memory");
	for (size_t i = 0; rc == 0 && i < n; i++) {
		const struct shardmap__op *op = &d->ops[i];
		if (op->kind == SHARDMAP__OP_PUT_CELL) {
			p->cells[p->n_cells++] = i;
		} else if (op->kind == SHARDMAP__OP_PUT_STREAM) {
			if (json_object_get(by_name, op->stream) != NULL)
				rc = shardmap__error_set(why, SHARDMAP_EINVAL, i,
							 "op %zu: stream '%s' put twice", i,
							 op->stream);
			else if (json_object_set_new(by_name, op->stream,
						     json_integer((json_int_t)p->n_streams)) != 0)
				rc = shardmap__error_set(why, SHARDMAP_ENOMEM, i, "out of memory");
			else
				p->streams[p->n_streams++] = i;
		} else if (op->kind != SHARDMAP__OP_PUT_SHARD) {
			rc = shardmap__error_set(why, SHARDMAP_EINVAL, i,
						 "op %zu: %s is not part of a whole map", i,
						 shardmap__op_name(op->kind));
		}
	}
	/* Counting sort of the shard ops by their stream's position, keeping delta order. */
	for (size_t i = 0; rc == 0 && i < n; i++) {
		const struct shardmap__op *op = &d->ops[i];
		if (op->kind != SHARDMAP__OP_PUT_SHARD)
			continue;
		const json_t *k = json_object_get(by_name, op->stream);
		if (k == NULL) {
			rc = shardmap__error_set(
			    why, SHARDMAP_EINVAL, i,
			    "op %zu: shard '%s' of stream '%s', which is not put", i, op->id,
			    op->stream);
			break;
		}
		ordinal[i] = (size_t)json_integer_value(k);
		p->first[ordinal[i] + 1]++;
	}
	for (size_t k = 0; rc == 0 && k < p->n_streams; k++)
		p->first[k + 1] += p->first[k];
	size_t *fill = rc == 0 ? calloc(p->n_streams + 1, sizeof *fill) : NULL;
	if (rc == 0 && fill == NULL)
		rc = shardmap__error_set(why, SHARDMAP_ENOMEM, SIZE_MAX, "out of memory");
	for (size_t i = 0; rc == 0 && i < n; i++) {
		if (d->ops[i].kind == SHARDMAP__OP_PUT_SHARD) {
			size_t k = ordinal[i];
			p->shards[p->first[k] + fill[k]++] = i;
		}
	}
	free(fill);
	free(ordinal);
	json_decref(by_name);
	if (rc != 0)
		export_plan_free(p);
	return rc;
}

static int export_stream(FILE *out, const shardmap_delta *d, const struct export_plan *p, size_t k,
			 shardmap_error *why)
{
	size_t si = p->streams[k];
	const struct shardmap__op *st = &d->ops[si];
	json_t *name = json_string(st->stream);
	if (name == NULL)
		return export_error(why, SHARDMAP_EINVAL, si, "a stream name");
	int ok = fputs("    {\"name\": ", out) != EOF &&
		 json_dumpf(name, out, JSON_ENCODE_ANY) == 0 &&
		 fprintf(out, ", \"hash\": \"%s\", \"shards\": [%s", hash_fn_name(st->hash_fn),
			 p->first[k] == p->first[k + 1] ? "" : "\n") > 0;
	json_decref(name);
	if (!ok)
		return export_error(why, SHARDMAP_EIO, si, "");
	for (size_t j = p->first[k]; j < p->first[k + 1]; j++) {
		int rc = export_shard(out, &d->ops[p->shards[j]], p->shards[j],
				      j + 1 == p->first[k + 1], why);
		if (rc != 0)
			return rc;
	}
	const char *close = p->first[k] == p->first[k + 1] ? "]}" : "      ]}";
	if (fprintf(out, "%s%s\n", close, k + 1 == p->n_streams ? "" : ",") < 0)
		return export_error(why, SHARDMAP_EIO, si, "");
	return SHARDMAP_OK;
}

int shardmap__json_export(const shardmap_delta *d, FILE *out, shardmap_error *why)
{
	if (d == NULL || out == NULL)
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX, "no delta or no output");
	if (d->from_version != 0)
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
					   "the delta starts at version %" PRIu64
					   ", not 0: not a whole map",
					   d->from_version);
	if (d->to_version > (uint64_t)INT64_MAX)
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX,
					   "version %" PRIu64 " does not fit a JSON integer",
					   d->to_version);
	struct export_plan p;
	int rc = export_plan_make(d, &p, why);
	if (rc != 0)
		return rc;
	if (fprintf(out,
		    "{\n  \"format\": \"" SHARDMAP__JSON_FORMAT "\",\n  \"format_version\": %d,\n"
		    "  \"version\": %" PRIu64 ",\n  \"cells\": [%s",
		    SHARDMAP__JSON_FORMAT_VERSION, d->to_version, p.n_cells ? "\n" : "") < 0)
		rc = export_error(why, SHARDMAP_EIO, SIZE_MAX, "");
	for (size_t i = 0; rc == 0 && i < p.n_cells; i++)
		rc = export_cell(out, &d->ops[p.cells[i]], p.cells[i], i + 1 == p.n_cells, why);
	if (rc == 0 && fprintf(out, "%s],\n  \"streams\": [%s", p.n_cells ? "  " : "",
			       p.n_streams ? "\n" : "") < 0)
		rc = export_error(why, SHARDMAP_EIO, SIZE_MAX, "");
	for (size_t k = 0; rc == 0 && k < p.n_streams; k++)
		rc = export_stream(out, d, &p, k, why);
	if (rc == 0 && (fprintf(out, "%s]\n}\n", p.n_streams ? "  " : "") < 0 || fflush(out) != 0 ||
			ferror(out)))
		rc = export_error(why, SHARDMAP_EIO, SIZE_MAX, "");
	export_plan_free(&p);
	return rc;
}
