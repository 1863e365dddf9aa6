/*
 * shardmapctl - the control plane's command-line tool for a shardmap store.
 *
 * For operators and scripts: it creates stores, creates, splits, merges and moves shards
 * with Kinesis rules, manages cells, lists and routes, imports and exports JSON (our own
 * schema or the AWS CLI's Kinesis output), verifies stores and snapshots, compacts a file
 * store and times a bootstrap. Commands that change the map all work the same way: open the
 * store, bootstrap a private map from it, plan the change with shardmap_plan_* (or build the
 * delta by hand), apply it to the private map to validate it, then write it to the store with
 * shardmap_store_write, which refuses it if another writer got there first.
 *
 * Exit codes: 0 ok, 1 error, 2 usage. Every error is one line on stderr:
 * "shardmapctl: COMMAND: what went wrong". Usage and examples: docs/cli.md.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "json.h"
#include "map.h"
#include "shardmap.h"
#include "store_file.h"

enum { EXIT_OK = 0, EXIT_ERR = 1, EXIT_USAGE = 2 };

/* Options a command may accept (--store and --help are accepted by all). */
enum {
	O_JSON = 1 << 0,
	O_SHARDS = 1 << 1,
	O_OWNER = 1 << 2,
	O_HASH = 1 << 3,
	O_AT = 1 << 4,
	O_KINESIS = 1 << 5,
	O_STREAM = 1 << 6,
	O_CELL = 1 << 7,
	O_SNAPSHOT = 1 << 8,
	O_RUNS = 1 << 9,
};

#define MAX_CELL_FLAGS 64

struct cli {
	const struct command *cmd;
	const char *store_uri;
	int json;
	const char *shards, *owner, *hash, *at, *kinesis, *stream, *snapshot, *runs;
	const char *cells[MAX_CELL_FLAGS];
	size_t n_cells;
	char **args; /* positional arguments after the command */
	int n_args;
};

struct command {
	const char *name;
	int (*run)(struct cli *c);
	unsigned options;
	int min_args, max_args; /* positional arguments; max -1: any number */
	const char *synopsis;
	const char *help;
};

/* ---------------------------------------------------------------- messages */

/* Print "shardmapctl: COMMAND: message" on stderr and return the exit code. */
static int fail(const struct cli *c, int code, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "shardmapctl: %s%s", c && c->cmd ? c->cmd->name : "",
		c && c->cmd ? ": " : "");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return code;
}

static int usage_error(const struct cli *c, const char *what)
{
	return fail(c, EXIT_USAGE, "%s (see shardmapctl %s --help)", what, c->cmd->name);
}

/* The reason of the last plan failure, or the code's text when the plan gave none. */
static const char *plan_reason(int rc)
{
	const char *r = shardmap_plan_error();
	return r != NULL && r[0] != '\0' ? r : shardmap_strerror(rc);
}

static const char *why_text(const shardmap_error *why, int rc)
{
	return why->message[0] != '\0' ? why->message : shardmap_strerror(rc);
}

/* ---------------------------------------------------------------- parsing helpers */

static int parse_count(const char *s, unsigned long max, unsigned long *out)
{
	char *end;
	if (s == NULL || s[0] < '0' || s[0] > '9')
		return -1;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno != 0 || *end != '\0' || v > max)
		return -1;
	*out = v;
	return 0;
}

/* Split "a,b,c" into a NULL-terminated array of pointers into a copy (one free each). */
static char **split_list(const char *s, size_t *n)
{
	size_t count = 1;
	for (const char *p = s; *p; p++)
		count += *p == ',';
	char **v = malloc((count + 1) * sizeof *v + strlen(s) + 1);
	if (v == NULL)
		return NULL;
	char *copy = (char *)(v + count + 1);
	strcpy(copy, s);
	size_t i = 0;
	for (char *tok = copy;; tok++) {
		v[i++] = tok;
		tok = strchr(tok, ',');
		if (tok == NULL)
			break;
		*tok = '\0';
	}
	v[i] = NULL;
	*n = i;
	return v;
}

/* Read a whole file ("-": standard input) into a malloc'ed buffer. -1 with errno set. */
static int read_whole(const char *path, char **out, size_t *len)
{
	FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
	if (f == NULL)
		return -1;
	size_t cap = 1 << 16, n = 0;
	char *buf = malloc(cap);
	int err = buf == NULL ? ENOMEM : 0;
	while (err == 0) {
		n += fread(buf + n, 1, cap - n, f);
		if (n < cap) {
			err = ferror(f) ? (errno ? errno : EIO) : 0;
			break;
		}
		char *bigger = realloc(buf, cap * 2);
		if (bigger == NULL) {
			err = ENOMEM;
		} else {
			buf = bigger;
			cap *= 2;
		}
	}
	if (f != stdin)
		fclose(f);
	if (err != 0) {
		free(buf);
		errno = err;
		return -1;
	}
	*out = buf;
	*len = n;
	return 0;
}

static double now_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---------------------------------------------------------------- store sessions */

/* An open store and a private map bootstrapped from it. */
struct session {
	shardmap_store *store;
	shardmap *map;
	uint64_t version;
};

static void session_close(struct session *s)
{
	shardmap_close(s->map);
	shardmap_store_close(s->store);
	memset(s, 0, sizeof *s);
}

static int require_store(struct cli *c)
{
	if (c->store_uri == NULL || c->store_uri[0] == '\0')
		return usage_error(c, "no store: give --store URI or set SHARDMAP_STORE");
	return EXIT_OK;
}

static int store_open(struct cli *c, shardmap_store **out)
{
	int rc = require_store(c);
	if (rc != EXIT_OK)
		return rc;
	struct stat st;
	if (strncmp(c->store_uri, "file:", 5) == 0 && stat(c->store_uri + 5, &st) != 0)
		return fail(c, EXIT_ERR,
			    "store %s does not exist (create it with shardmapctl init)",
			    c->store_uri);
	rc = shardmap_store_open(c->store_uri, out);
	if (rc == SHARDMAP_EINVAL)
		return fail(c, EXIT_USAGE,
			    "bad store URI '%s' (file:PATH or etcd://HOST:PORT/PREFIX)",
			    c->store_uri);
	if (rc != 0)
		return fail(c, EXIT_ERR, "cannot open store %s: %s", c->store_uri,
			    shardmap_strerror(rc));
	return EXIT_OK;
}

/* Report a store that cannot say its version; a file store can say why. */
static int store_trouble(struct cli *c, shardmap_store *store, int rc)
{
	struct shardmap__file_store_info info;
	shardmap_error why = {0};
	if (strncmp(c->store_uri, "file:", 5) == 0 &&
	    shardmap__file_store_info(store, &info, &why) != 0 && why.message[0] != '\0')
		return fail(c, EXIT_ERR, "store %s: %s", c->store_uri, why.message);
	return fail(c, EXIT_ERR, "cannot read the version of store %s: %s", c->store_uri,
		    shardmap_strerror(rc));
}

/* Open the store and bootstrap a private map from it. An empty store (bootstrap says
 * SHARDMAP_ENOENT) leaves the map at version 0: the first delta goes from 0. */
static int session_open(struct cli *c, struct session *s)
{
	memset(s, 0, sizeof *s);
	int rc = store_open(c, &s->store);
	if (rc != EXIT_OK)
		return rc;
	if ((rc = shardmap_open(&s->map, NULL)) != 0) {
		session_close(s);
		return fail(c, EXIT_ERR, "cannot create a map: %s", shardmap_strerror(rc));
	}
	shardmap_error why = {0};
	rc = shardmap_bootstrap(s->map, s->store, &why);
	if (rc != 0 && rc != SHARDMAP_ENOENT) {
		session_close(s);
		return fail(c, EXIT_ERR, "store %s: %s", c->store_uri, why_text(&why, rc));
	}
	s->version = shardmap_version(s->map);
	return EXIT_OK;
}

/* Validate d on the private map, then write it to the store. Takes ownership of d. */
static int session_commit(struct cli *c, struct session *s, shardmap_delta *d)
{
	shardmap_error why = {0};
	int rc = shardmap_apply(s->map, d, &why);
	if (rc != 0) {
		shardmap_delta_free(d);
		return fail(c, EXIT_ERR, "%s", why_text(&why, rc));
	}
	rc = shardmap_store_write(s->store, d);
	shardmap_delta_free(d);
	if (rc == SHARDMAP_ECONFLICT)
		return fail(c, EXIT_ERR,
			    "another writer got there first (the store is past version %" PRIu64
			    "); nothing was written, run the command again",
			    s->version);
	if (rc != 0)
		return fail(c, EXIT_ERR, "writing to store %s failed: %s", c->store_uri,
			    shardmap_strerror(rc));
	/* The store's version after the write: the delta's for a file store, the write's
	 * revision for etcd (which numbers versions by its own revisions). */
	uint64_t v;
	s->version = shardmap_store_version(s->store, &v) == 0 ? v : shardmap_version(s->map);
	return EXIT_OK;
}

/* The private map's whole content as one canonical delta (NULL for an empty map). */
static int session_snapshot(struct cli *c, struct session *s, shardmap_delta **out)
{
	*out = NULL;
	const struct shardmap__version *v = shardmap__pin(s->map);
	int rc = v != NULL ? shardmap__version_to_delta(v, out) : 0;
	shardmap__unpin(s->map);
	if (rc != 0)
		return fail(c, EXIT_ERR, "cannot list the map: %s", shardmap_strerror(rc));
	return EXIT_OK;
}

/* ---------------------------------------------------------------- hash keys */

static void print_hash(FILE *f, shardmap_hash h)
{
	char buf[SHARDMAP_HASH_DECIMAL_MAX];
	shardmap_hash_format(h, buf);
	fputs(buf, f);
}

static int parse_hash_arg(struct cli *c, const char *flag, const char *s, shardmap_hash *out)
{
	if (shardmap_hash_parse(s, out) == 0)
		return EXIT_OK;
	const char *reason = shardmap_hash_parse_error(s);
	char msg[160];
	snprintf(msg, sizeof msg, "%s '%.60s': not a decimal hash key (%s)", flag, s,
		 reason ? reason : "invalid");
	return usage_error(c, msg);
}

/* start + (end - start) / 2 + 1: the split point that halves [start, end]. */
static shardmap_hash midpoint(shardmap_hash start, shardmap_hash end)
{
	uint64_t dlo = end.lo - start.lo;
	uint64_t dhi = end.hi - start.hi - (end.lo < start.lo);
	uint64_t hlo = (dlo >> 1) | (dhi << 63), hhi = dhi >> 1;
	shardmap_hash m;
	m.lo = start.lo + hlo;
	m.hi = start.hi + hhi + (m.lo < hlo);
	m.lo++;
	m.hi += m.lo == 0;
	return m;
}

/* ---------------------------------------------------------------- commands */

static int cmd_init(struct cli *c)
{
	int rc = require_store(c);
	if (rc != EXIT_OK)
		return rc;
	if (strncmp(c->store_uri, "file:", 5) == 0 && mkdir(c->store_uri + 5, 0777) != 0 &&
	    errno != EEXIST)
		return fail(c, EXIT_ERR, "cannot create %s: %s", c->store_uri + 5, strerror(errno));
	struct session s;
	if ((rc = session_open(c, &s)) != EXIT_OK)
		return rc;
	if (s.version > 0)
		rc = fail(c, EXIT_ERR, "store %s already holds version %" PRIu64, c->store_uri,
			  s.version);
	else
		printf("initialised %s (empty, version 0)\n", c->store_uri);
	session_close(&s);
	return rc;
}

static int cmd_create_stream(struct cli *c)
{
	unsigned long n;
	int hash_fn = SHARDMAP_HASH_XXH3;
	if (c->shards == NULL || parse_count(c->shards, UINT32_MAX, &n) != 0 || n == 0)
		return usage_error(c, c->shards ? "--shards: not a count from 1 to 4294967295"
						: "missing --shards N");
	if (c->owner == NULL)
		return usage_error(c, "missing --owner CELL[,CELL...]");
	if (c->hash != NULL && strcmp(c->hash, "md5") == 0)
		hash_fn = SHARDMAP_HASH_MD5;
	else if (c->hash != NULL && strcmp(c->hash, "xxh3") != 0)
		return usage_error(c, "--hash: xxh3 or md5");
	size_t n_owners;
	char **owners = split_list(c->owner, &n_owners);
	if (owners == NULL)
		return fail(c, EXIT_ERR, "out of memory");
	struct session s;
	int rc = session_open(c, &s);
	if (rc == EXIT_OK) {
		shardmap_delta *d;
		int err = shardmap_plan_create_stream(s.map, c->args[0], hash_fn, (unsigned)n,
						      (const char *const *)owners, n_owners, &d);
		if (err != 0)
			rc = fail(c, EXIT_ERR, "%s", plan_reason(err));
		else if ((rc = session_commit(c, &s, d)) == EXIT_OK)
			printf("created stream %s (%s) with %lu shards over %zu cell%s; version "
			       "%" PRIu64 "\n",
			       c->args[0], hash_fn == SHARDMAP_HASH_MD5 ? "md5" : "xxh3", n,
			       n_owners, n_owners == 1 ? "" : "s", s.version);
	}
	free(owners);
	session_close(&s);
	return rc;
}

/* The ids of the open shards a plan creates: "a and b" or "a". */
static void describe_children(const shardmap_delta *d, char *buf, size_t cap)
{
	size_t used = 0;
	buf[0] = '\0';
	for (size_t i = 0; i < d->n_ops && used < cap; i++) {
		const struct shardmap__op *op = &d->ops[i];
		if (op->kind == SHARDMAP__OP_PUT_SHARD && op->open) {
			int n =
			    snprintf(buf + used, cap - used, "%s%s", used ? " and " : "", op->id);
			used += n > 0 ? (size_t)n : 0;
		}
	}
}

static int cmd_split(struct cli *c)
{
	const char *stream = c->args[0], *shard = c->args[1];
	shardmap_hash at = {0, 0};
	int rc;
	if (c->at != NULL && (rc = parse_hash_arg(c, "--at", c->at, &at)) != EXIT_OK)
		return rc;
	struct session s;
	if ((rc = session_open(c, &s)) != EXIT_OK)
		return rc;
	if (c->at == NULL) {
		/* Halve the shard; when it is not found the plan below says why. */
		shardmap_reader *r;
		shardmap_route rt;
		if (shardmap_reader_open(s.map, &r) == 0) {
			shardmap_read_begin(r);
			if (shardmap_find_shard(r, stream, shard, &rt) == 0)
				at = midpoint(rt.start, rt.end);
			shardmap_read_end(r);
			shardmap_reader_close(r);
		}
	}
	shardmap_delta *d;
	int err = shardmap_plan_split(s.map, stream, shard, at, &d);
	if (err != 0) {
		rc = fail(c, EXIT_ERR, "%s", plan_reason(err));
	} else {
		char children[2 * SHARDMAP__NAME_MAX + 8];
		describe_children(d, children, sizeof children);
		if ((rc = session_commit(c, &s, d)) == EXIT_OK) {
			printf("split %s at ", shard);
			print_hash(stdout, at);
			printf(" into %s; version %" PRIu64 "\n", children, s.version);
		}
	}
	session_close(&s);
	return rc;
}

static int cmd_merge(struct cli *c)
{
	struct session s;
	int rc = session_open(c, &s);
	if (rc != EXIT_OK)
		return rc;
	shardmap_delta *d;
	int err = shardmap_plan_merge(s.map, c->args[0], c->args[1], c->args[2], &d);
	if (err != 0) {
		rc = fail(c, EXIT_ERR, "%s", plan_reason(err));
	} else {
		char child[2 * SHARDMAP__NAME_MAX + 8];
		describe_children(d, child, sizeof child);
		if ((rc = session_commit(c, &s, d)) == EXIT_OK)
			printf("merged %s and %s into %s; version %" PRIu64 "\n", c->args[1],
			       c->args[2], child, s.version);
	}
	session_close(&s);
	return rc;
}

static int cmd_move(struct cli *c)
{
	struct session s;
	int rc = session_open(c, &s);
	if (rc != EXIT_OK)
		return rc;
	shardmap_delta *d;
	int err = shardmap_plan_move(s.map, c->args[0], c->args[1], c->args[2], &d);
	if (err != 0)
		rc = fail(c, EXIT_ERR, "%s", plan_reason(err));
	else if ((rc = session_commit(c, &s, d)) == EXIT_OK)
		printf("moved %s of %s to cell %s; version %" PRIu64 "\n", c->args[1], c->args[0],
		       c->args[2], s.version);
	session_close(&s);
	return rc;
}

/* A hand-built one-op delta on top of the session's version. */
static int one_op_delta(struct cli *c, struct session *s, shardmap_delta **d)
{
	int rc = shardmap_delta_new(s->version, s->version + 1, d);
	return rc == 0 ? EXIT_OK : fail(c, EXIT_ERR, "%s", shardmap_strerror(rc));
}

static int cmd_put_cell(struct cli *c)
{
	const char *cell = c->args[0];
	if (shardmap__check_name(cell) != 0)
		return usage_error(c, "CELL: not a valid id (1..255 bytes, no control characters)");
	for (int i = 1; i < c->n_args; i++) {
		if (shardmap__check_endpoint(c->args[i]) != 0) {
			char msg[320];
			snprintf(msg, sizeof msg,
				 "endpoint '%.255s' is not host:port (port 1..65535)", c->args[i]);
			return usage_error(c, msg);
		}
	}
	struct session s;
	int rc = session_open(c, &s);
	if (rc != EXIT_OK)
		return rc;
	shardmap_delta *d;
	if ((rc = one_op_delta(c, &s, &d)) == EXIT_OK) {
		int err = shardmap_delta_put_cell(d, cell, (const char *const *)c->args + 1,
						  (size_t)c->n_args - 1);
		if (err != 0) {
			shardmap_delta_free(d);
			rc = fail(c, EXIT_ERR, "%s", shardmap_strerror(err));
		} else if ((rc = session_commit(c, &s, d)) == EXIT_OK) {
			printf("put cell %s (%d endpoint%s); version %" PRIu64 "\n", cell,
			       c->n_args - 1, c->n_args == 2 ? "" : "s", s.version);
		}
	}
	session_close(&s);
	return rc;
}

static int cmd_delete_cell(struct cli *c)
{
	const char *cell = c->args[0];
	struct session s;
	int rc = session_open(c, &s);
	if (rc != EXIT_OK)
		return rc;
	const struct shardmap__version *v = shardmap__pin(s.map);
	const struct shardmap__cell *found = v ? shardmap__version_cell(v, cell) : NULL;
	shardmap__unpin(s.map);
	shardmap_delta *d, *all = NULL;
	size_t owned = 0;
	if (found != NULL && (rc = session_snapshot(c, &s, &all)) == EXIT_OK)
		for (size_t i = 0; all && i < all->n_ops; i++)
			owned += all->ops[i].kind == SHARDMAP__OP_PUT_SHARD &&
				 strcmp(all->ops[i].owner_cell, cell) == 0;
	shardmap_delta_free(all);
	if (rc != EXIT_OK)
		;
	else if (found == NULL)
		rc = fail(c, EXIT_ERR, "no cell '%s'", cell);
	else if (owned > 0)
		rc = fail(c, EXIT_ERR, "cell '%s' still owns %zu shard%s; move them first", cell,
			  owned, owned == 1 ? "" : "s");
	else if ((rc = one_op_delta(c, &s, &d)) == EXIT_OK) {
		int err = shardmap_delta_delete_cell(d, cell);
		if (err != 0) {
			shardmap_delta_free(d);
			rc = fail(c, EXIT_ERR, "%s", shardmap_strerror(err));
		} else if ((rc = session_commit(c, &s, d)) == EXIT_OK) {
			printf("deleted cell %s; version %" PRIu64 "\n", cell, s.version);
		}
	}
	session_close(&s);
	return rc;
}

/* ---------------------------------------------------------------- list */

static const char *hash_fn_name(int hash_fn)
{
	return hash_fn == SHARDMAP_HASH_MD5 ? "md5" : "xxh3";
}

static int dump_json(json_t *v)
{
	int rc = v != NULL && json_dumpf(v, stdout, JSON_INDENT(2)) == 0 ? 0 : -1;
	json_decref(v);
	putchar('\n');
	return rc;
}

static int shard_count(const shardmap_delta *d, const char *stream, int open)
{
	int n = 0;
	for (size_t i = 0; i < d->n_ops; i++)
		n += d->ops[i].kind == SHARDMAP__OP_PUT_SHARD && d->ops[i].open == open &&
		     strcmp(d->ops[i].stream, stream) == 0;
	return n;
}

static void list_streams(const struct cli *c, const shardmap_delta *d, json_t *arr)
{
	int w = 6;
	for (size_t i = 0; i < d->n_ops; i++)
		if (d->ops[i].kind == SHARDMAP__OP_PUT_STREAM && (int)strlen(d->ops[i].stream) > w)
			w = (int)strlen(d->ops[i].stream);
	if (arr == NULL)
		printf("%-*s  %-4s  %10s  %10s\n", w, "STREAM", "HASH", "OPEN", "CLOSED");
	/* Shard ops follow their stream in canonical order, but count by name to be safe. */
	for (size_t i = 0; i < d->n_ops; i++) {
		const struct shardmap__op *op = &d->ops[i];
		if (op->kind != SHARDMAP__OP_PUT_STREAM)
			continue;
		int open = shard_count(d, op->stream, 1), closed = shard_count(d, op->stream, 0);
		if (arr != NULL)
			json_array_append_new(
			    arr, json_pack("{s:s, s:s, s:i, s:i}", "name", op->stream, "hash",
					   hash_fn_name(op->hash_fn), "open_shards", open,
					   "closed_shards", closed));
		else
			printf("%-*s  %-4s  %10d  %10d\n", w, op->stream, hash_fn_name(op->hash_fn),
			       open, closed);
	}
	(void)c;
}

static json_t *shard_json(const struct shardmap__op *op)
{
	char start[SHARDMAP_HASH_DECIMAL_MAX], end[SHARDMAP_HASH_DECIMAL_MAX];
	shardmap_hash_format(op->start, start);
	shardmap_hash_format(op->end, end);
	return json_pack("{s:s, s:s, s:s, s:s, s:b, s:s, s:s*, s:s*}", "stream", op->stream, "id",
			 op->id, "start", start, "end", end, "open", op->open, "owner",
			 op->owner_cell, "parent", op->parent, "adjacent_parent",
			 op->adjacent_parent);
}

static int list_shards(const struct cli *c, const shardmap_delta *d, json_t *arr)
{
	const char *stream = c->n_args > 1 ? c->args[1] : NULL;
	int known = stream == NULL;
	int wid = 5, wst = 6, wown = 5;
	for (size_t i = 0; i < d->n_ops; i++) {
		const struct shardmap__op *op = &d->ops[i];
		if (op->kind == SHARDMAP__OP_PUT_STREAM && stream &&
		    strcmp(op->stream, stream) == 0)
			known = 1;
		if (op->kind != SHARDMAP__OP_PUT_SHARD ||
		    (stream && strcmp(op->stream, stream) != 0))
			continue;
		if ((int)strlen(op->id) > wid)
			wid = (int)strlen(op->id);
		if ((int)strlen(op->stream) > wst)
			wst = (int)strlen(op->stream);
		if ((int)strlen(op->owner_cell) > wown)
			wown = (int)strlen(op->owner_cell);
	}
	if (!known)
		return fail(c, EXIT_ERR, "no stream '%s'", stream);
	if (arr == NULL)
		printf("%-*s  %-*s  %-6s  %-*s  %-39s  %-39s  %s\n", wst, "STREAM", wid, "SHARD",
		       "STATE", wown, "OWNER", "START", "END", "PARENTS");
	for (size_t i = 0; i < d->n_ops; i++) {
		const struct shardmap__op *op = &d->ops[i];
		if (op->kind != SHARDMAP__OP_PUT_SHARD ||
		    (stream && strcmp(op->stream, stream) != 0))
			continue;
		if (arr != NULL) {
			json_array_append_new(arr, shard_json(op));
			continue;
		}
		char start[SHARDMAP_HASH_DECIMAL_MAX], end[SHARDMAP_HASH_DECIMAL_MAX];
		shardmap_hash_format(op->start, start);
		shardmap_hash_format(op->end, end);
		printf("%-*s  %-*s  %-6s  %-*s  %-39s  %-39s  %s%s%s\n", wst, op->stream, wid,
		       op->id, op->open ? "open" : "closed", wown, op->owner_cell, start, end,
		       op->parent ? op->parent : "-", op->adjacent_parent ? "," : "",
		       op->adjacent_parent ? op->adjacent_parent : "");
	}
	return EXIT_OK;
}

static void list_cells(const shardmap_delta *d, json_t *arr)
{
	int w = 4;
	for (size_t i = 0; i < d->n_ops; i++)
		if (d->ops[i].kind == SHARDMAP__OP_PUT_CELL && (int)strlen(d->ops[i].id) > w)
			w = (int)strlen(d->ops[i].id);
	if (arr == NULL)
		printf("%-*s  %10s  %s\n", w, "CELL", "SHARDS", "ENDPOINTS");
	for (size_t i = 0; i < d->n_ops; i++) {
		const struct shardmap__op *op = &d->ops[i];
		if (op->kind != SHARDMAP__OP_PUT_CELL)
			continue;
		int owned = 0;
		for (size_t k = 0; k < d->n_ops; k++)
			owned += d->ops[k].kind == SHARDMAP__OP_PUT_SHARD &&
				 strcmp(d->ops[k].owner_cell, op->id) == 0;
		if (arr != NULL) {
			json_t *eps = json_array();
			for (size_t k = 0; k < op->n_endpoints; k++)
				json_array_append_new(eps, json_string(op->endpoints[k]));
			json_array_append_new(arr, json_pack("{s:s, s:o, s:i}", "id", op->id,
							     "endpoints", eps, "shards", owned));
			continue;
		}
		printf("%-*s  %10d  ", w, op->id, owned);
		for (size_t k = 0; k < op->n_endpoints; k++)
			printf("%s%s", k ? "," : "", op->endpoints[k]);
		putchar('\n');
	}
}

static int cmd_list(struct cli *c)
{
	const char *what = c->args[0];
	int kind = strcmp(what, "streams") == 0	 ? 0
		   : strcmp(what, "shards") == 0 ? 1
		   : strcmp(what, "cells") == 0	 ? 2
						 : -1;
	if (kind < 0)
		return usage_error(c, "list what? streams, shards [STREAM] or cells");
	if (kind != 1 && c->n_args > 1)
		return usage_error(c, "too many arguments");
	struct session s;
	int rc = session_open(c, &s);
	if (rc != EXIT_OK)
		return rc;
	shardmap_delta *d = NULL, empty = {0};
	if ((rc = session_snapshot(c, &s, &d)) == EXIT_OK) {
		json_t *arr = c->json ? json_array() : NULL;
		const shardmap_delta *all = d ? d : &empty;
		if (kind == 0)
			list_streams(c, all, arr);
		else if (kind == 1)
			rc = list_shards(c, all, arr);
		else
			list_cells(all, arr);
		if (arr != NULL && rc == EXIT_OK && dump_json(arr) != 0)
			rc = fail(c, EXIT_ERR, "cannot print JSON");
		else if (arr != NULL && rc != EXIT_OK)
			json_decref(arr);
	}
	shardmap_delta_free(d);
	session_close(&s);
	return rc;
}

/* ---------------------------------------------------------------- route */

static void print_route(const struct cli *c, const shardmap_route *rt, const char *key,
			shardmap_hash h)
{
	char hs[SHARDMAP_HASH_DECIMAL_MAX], start[SHARDMAP_HASH_DECIMAL_MAX],
	    end[SHARDMAP_HASH_DECIMAL_MAX];
	shardmap_hash_format(h, hs);
	shardmap_hash_format(rt->start, start);
	shardmap_hash_format(rt->end, end);
	if (c->json) {
		json_t *eps = json_array();
		for (size_t i = 0; i < rt->n_endpoints; i++)
			json_array_append_new(eps, json_string(rt->endpoints[i]));
		dump_json(json_pack("{s:s, s:s*, s:s, s:s, s:s, s:s, s:s, s:o, s:I}", "stream",
				    rt->stream, "key", key, "hash", hs, "shard", rt->shard_id,
				    "start", start, "end", end, "cell", rt->cell_id, "endpoints",
				    eps, "version", (json_int_t)rt->version));
		return;
	}
	printf("stream     %s\n", rt->stream);
	if (key != NULL)
		printf("key        %s\n", key);
	printf("hash       %s\nshard      %s\nrange      %s..%s\ncell       %s\nendpoints  ", hs,
	       rt->shard_id, start, end, rt->cell_id);
	for (size_t i = 0; i < rt->n_endpoints; i++)
		printf("%s%s", i ? "," : "", rt->endpoints[i]);
	printf("\nversion    %" PRIu64 "\n", rt->version);
}

static int cmd_route(struct cli *c)
{
	const char *stream = c->args[0], *key = c->n_args > 1 ? c->args[1] : NULL;
	shardmap_hash h = {0, 0};
	int rc;
	if ((key == NULL) == (c->hash == NULL))
		return usage_error(c, "give either KEY or --hash DECIMAL");
	if (c->hash != NULL && (rc = parse_hash_arg(c, "--hash", c->hash, &h)) != EXIT_OK)
		return rc;
	struct session s;
	if ((rc = session_open(c, &s)) != EXIT_OK)
		return rc;
	/* The stream's hash function, to show the key's hash next to the answer. */
	const struct shardmap__version *v = shardmap__pin(s.map);
	const struct shardmap__stream *st = v ? shardmap__version_stream(v, stream) : NULL;
	int hash_fn = st ? st->hash_fn : SHARDMAP_HASH_XXH3;
	shardmap__unpin(s.map);
	if (st == NULL) {
		session_close(&s);
		return fail(c, EXIT_ERR, "no stream '%s'", stream);
	}
	if (key != NULL)
		h = shardmap_hash_key(hash_fn, key, strlen(key));
	shardmap_reader *r;
	int err = shardmap_reader_open(s.map, &r);
	if (err == 0) {
		shardmap_route rt;
		shardmap_read_begin(r);
		err = key ? shardmap_route_key(r, stream, key, strlen(key), &rt)
			  : shardmap_route_hash(r, stream, h, &rt);
		if (err == 0)
			print_route(c, &rt, key, h);
		shardmap_read_end(r);
		shardmap_reader_close(r);
	}
	if (err != 0)
		rc = fail(c, EXIT_ERR, "%s", shardmap_strerror(err));
	session_close(&s);
	return rc;
}

/* ---------------------------------------------------------------- import / export */

static void count_ops(const shardmap_delta *d, size_t *cells, size_t *streams, size_t *shards)
{
	*cells = *streams = *shards = 0;
	for (size_t i = 0; i < d->n_ops; i++) {
		*cells += d->ops[i].kind == SHARDMAP__OP_PUT_CELL;
		*streams += d->ops[i].kind == SHARDMAP__OP_PUT_STREAM;
		*shards += d->ops[i].kind == SHARDMAP__OP_PUT_SHARD;
	}
}

static int read_input(struct cli *c, const char *path, char **buf, size_t *len)
{
	if (read_whole(path, buf, len) != 0)
		return fail(c, EXIT_ERR, "cannot read %s: %s", path, strerror(errno));
	return EXIT_OK;
}

/* --cell ID=HOST:PORT[,HOST:PORT...] flags as cells for the Kinesis import. */
static int parse_cell_flags(struct cli *c, struct shardmap__json_cell *cells, char ***lists)
{
	for (size_t i = 0; i < c->n_cells; i++) {
		const char *eq = strchr(c->cells[i], '=');
		if (eq == NULL || eq == c->cells[i] || eq[1] == '\0')
			return usage_error(c, "--cell: expected ID=HOST:PORT[,HOST:PORT...]");
		size_t n;
		lists[i] = split_list(c->cells[i], &n); /* "ID=EP1", "EP2", ... */
		if (lists[i] == NULL)
			return fail(c, EXIT_ERR, "out of memory");
		char **v = lists[i];
		char *sep = strchr(v[0], '=');
		*sep = '\0';
		cells[i].id = v[0];
		v[0] = sep + 1; /* the first endpoint */
		cells[i].endpoints = (const char *const *)v;
		cells[i].n_endpoints = n;
	}
	return EXIT_OK;
}

static int import_kinesis(struct cli *c, struct session *s)
{
	if (c->owner == NULL)
		return usage_error(c, "--kinesis needs --owner CELL[,CELL...]");
	struct shardmap__json_cell cells[MAX_CELL_FLAGS];
	char **lists[MAX_CELL_FLAGS] = {0};
	size_t n_owners = 0;
	char **owners = split_list(c->owner, &n_owners);
	char *text = NULL;
	size_t len = 0;
	int rc = owners ? parse_cell_flags(c, cells, lists) : fail(c, EXIT_ERR, "out of memory");
	if (rc == EXIT_OK)
		rc = read_input(c, c->kinesis, &text, &len);
	if (rc == EXIT_OK)
		rc = session_open(c, s);
	if (rc == EXIT_OK) {
		struct shardmap__kinesis_import opt = {
		    .stream = c->stream,
		    .owners = (const char *const *)owners,
		    .n_owners = n_owners,
		    .cells = cells,
		    .n_cells = c->n_cells,
		    .from_version = s->version,
		};
		shardmap_delta *d = NULL;
		shardmap_error why = {0};
		int err = shardmap__json_import_kinesis(text, len, &opt, &d, &why);
		const char *stream = NULL;
		for (size_t i = 0; d && i < d->n_ops && !stream; i++)
			if (d->ops[i].kind == SHARDMAP__OP_PUT_STREAM)
				stream = d->ops[i].stream;
		const struct shardmap__version *v = shardmap__pin(s->map);
		int exists = stream && v && shardmap__version_stream(v, stream) != NULL;
		const char *missing = NULL;
		for (size_t i = 0; i < n_owners && !missing; i++) {
			int known = v && shardmap__version_cell(v, owners[i]) != NULL;
			for (size_t k = 0; k < c->n_cells && !known; k++)
				known = strcmp(cells[k].id, owners[i]) == 0;
			if (!known)
				missing = owners[i];
		}
		shardmap__unpin(s->map);
		size_t nc, ns, nsh;
		if (err != 0) {
			rc = fail(c, EXIT_ERR, "%s: %s", c->kinesis, why_text(&why, err));
		} else if (exists || missing) {
			if (exists)
				rc = fail(c, EXIT_ERR, "stream '%s' already exists", stream);
			else
				rc = fail(
				    c, EXIT_ERR,
				    "owner cell '%s' does not exist (create it with put-cell or "
				    "--cell)",
				    missing);
			shardmap_delta_free(d);
		} else {
			char name[SHARDMAP__NAME_MAX + 1];
			snprintf(name, sizeof name, "%s",
				 stream); /* d and its strings go in commit */
			count_ops(d, &nc, &ns, &nsh);
			if ((rc = session_commit(c, s, d)) == EXIT_OK)
				printf("imported stream %s (md5) with %zu shards from %s; version "
				       "%" PRIu64 "\n",
				       name, nsh, c->kinesis, s->version);
		}
	}
	free(text);
	free(owners);
	for (size_t i = 0; i < c->n_cells; i++)
		free(lists[i]);
	return rc;
}

static int cmd_import(struct cli *c)
{
	struct session s = {0};
	int rc;
	if (c->kinesis != NULL) {
		if (c->n_args != 0)
			return usage_error(c, "give the Kinesis document with --kinesis FILE only");
		rc = import_kinesis(c, &s);
		session_close(&s);
		return rc;
	}
	if (c->n_args != 1)
		return usage_error(c, "missing FILE");
	if (c->owner || c->stream || c->n_cells)
		return usage_error(c, "--owner, --stream and --cell go with --kinesis");
	char *text = NULL;
	size_t len = 0;
	if ((rc = read_input(c, c->args[0], &text, &len)) != EXIT_OK)
		return rc;
	rc = session_open(c, &s);
	if (rc == EXIT_OK && s.version != 0)
		rc = fail(c, EXIT_ERR,
			  "store %s already holds version %" PRIu64
			  "; a whole map imports into an empty store only",
			  c->store_uri, s.version);
	if (rc == EXIT_OK) {
		shardmap_delta *d;
		shardmap_error why = {0};
		int err = shardmap__json_import(text, len, &d, &why);
		if (err != 0) {
			rc = fail(c, EXIT_ERR, "%s: %s", c->args[0], why_text(&why, err));
		} else {
			size_t nc, ns, nsh;
			count_ops(d, &nc, &ns, &nsh);
			if ((rc = session_commit(c, &s, d)) == EXIT_OK)
				printf("imported %s: %zu cells, %zu streams, %zu shards; version "
				       "%" PRIu64 "\n",
				       c->args[0], nc, ns, nsh, s.version);
		}
	}
	free(text);
	session_close(&s);
	return rc;
}

static int cmd_export(struct cli *c)
{
	const char *path = c->n_args > 0 ? c->args[0] : "-";
	struct session s;
	int rc = session_open(c, &s);
	if (rc != EXIT_OK)
		return rc;
	shardmap_delta *d = NULL;
	if (s.version == 0)
		rc = fail(c, EXIT_ERR, "store %s is empty (version 0): nothing to export",
			  c->store_uri);
	else
		rc = session_snapshot(c, &s, &d);
	FILE *out = NULL;
	if (rc == EXIT_OK) {
		out = strcmp(path, "-") == 0 ? stdout : fopen(path, "w");
		if (out == NULL)
			rc = fail(c, EXIT_ERR, "cannot write %s: %s", path, strerror(errno));
	}
	if (rc == EXIT_OK) {
		shardmap_error why = {0};
		int err = shardmap__json_export(d, out, &why);
		if (out != stdout && fclose(out) != 0 && err == 0)
			err = SHARDMAP_EIO;
		if (err != 0) {
			rc = fail(c, EXIT_ERR, "%s: %s", path, why_text(&why, err));
			if (out != stdout)
				remove(path);
		} else if (out != stdout) {
			printf("exported version %" PRIu64 " to %s\n", s.version, path);
		}
	}
	shardmap_delta_free(d);
	session_close(&s);
	return rc;
}

/* ---------------------------------------------------------------- verify, compact, bench */

static void print_summary(const char *what, shardmap *m)
{
	shardmap_stats st;
	shardmap_stats_get(m, &st);
	const struct shardmap__version *v = shardmap__pin(m);
	uint64_t digest = v ? v->digest : 0;
	shardmap__unpin(m);
	printf("ok: %s: version %" PRIu64 ", %" PRIu64 " streams, %" PRIu64 " open shards, %" PRIu64
	       " closed shards, %" PRIu64 " cells, digest %016" PRIx64 "\n",
	       what, st.version, st.streams, st.open_shards, st.closed_shards, st.cells, digest);
}

static int cmd_verify(struct cli *c)
{
	int rc;
	if (c->snapshot != NULL) {
		shardmap *m;
		if ((rc = shardmap_open(&m, NULL)) != 0)
			return fail(c, EXIT_ERR, "cannot create a map: %s", shardmap_strerror(rc));
		shardmap_error why = {0};
		int err = shardmap_snapshot_load(m, c->snapshot, &why);
		if (err != 0)
			rc = fail(c, EXIT_ERR, "%s: %s", c->snapshot, why_text(&why, err));
		else
			print_summary(c->snapshot, m);
		shardmap_close(m);
		return rc ? EXIT_ERR : EXIT_OK;
	}
	struct session s;
	if ((rc = session_open(c, &s)) != EXIT_OK)
		return rc;
	uint64_t sv = 0;
	int err = shardmap_store_version(s.store, &sv);
	if (err != 0)
		rc = store_trouble(c, s.store, err);
	else if (s.version != 0 && sv != s.version)
		rc =
		    fail(c, EXIT_ERR,
			 "store %s says version %" PRIu64 " but its records build version %" PRIu64,
			 c->store_uri, sv, s.version);
	else if (s.version == 0)
		printf("ok: %s: empty (version 0)\n", c->store_uri);
	else
		print_summary(c->store_uri, s.map);
	if (rc == EXIT_OK && strncmp(c->store_uri, "file:", 5) == 0) {
		struct shardmap__file_store_info info;
		shardmap_error why = {0};
		err = shardmap__file_store_info(s.store, &info, &why);
		if (err != 0)
			rc = fail(c, EXIT_ERR, "%s: %s", c->store_uri, why_text(&why, err));
		else
			printf("  file store: snapshot at version %" PRIu64 ", journal %" PRIu64
			       " bytes\n",
			       info.snapshot_version, info.journal_bytes);
		if (err == 0 && info.torn_tails)
			printf("  recovered: a torn journal tail of %" PRIu64
			       " bytes (a write cut short by a crash) was cut off\n",
			       info.torn_bytes);
	}
	session_close(&s);
	return rc;
}

static int cmd_compact(struct cli *c)
{
	int rc = require_store(c);
	if (rc != EXIT_OK)
		return rc;
	if (strncmp(c->store_uri, "file:", 5) != 0)
		return fail(c, EXIT_ERR,
			    "compact works on file: stores only (etcd compacts itself)");
	shardmap_store *s;
	if ((rc = store_open(c, &s)) != EXIT_OK)
		return rc;
	shardmap_error why = {0};
	int err = shardmap__file_store_compact(s, &why);
	uint64_t v = 0;
	if (err == 0)
		err = shardmap_store_version(s, &v);
	shardmap_store_close(s);
	if (err != 0)
		return fail(c, EXIT_ERR, "%s: %s", c->store_uri, why_text(&why, err));
	printf("compacted %s: snapshot at version %" PRIu64 ", journal empty\n", c->store_uri, v);
	return EXIT_OK;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static int cmd_bench_bootstrap(struct cli *c)
{
	unsigned long runs = 5;
	if (c->runs != NULL && (parse_count(c->runs, 1000, &runs) != 0 || runs == 0))
		return usage_error(c, "--runs: a count from 1 to 1000");
	shardmap_store *store = NULL;
	int rc;
	if (c->snapshot == NULL && (rc = store_open(c, &store)) != EXIT_OK)
		return rc;
	double secs[1000];
	shardmap_stats st = {0};
	rc = EXIT_OK;
	for (unsigned long i = 0; i < runs && rc == EXIT_OK; i++) {
		shardmap *m;
		shardmap_error why = {0};
		int err = shardmap_open(&m, NULL);
		double t0 = now_seconds();
		if (err == 0)
			err = c->snapshot ? shardmap_snapshot_load(m, c->snapshot, &why)
					  : shardmap_bootstrap(m, store, &why);
		secs[i] = now_seconds() - t0;
		if (err == 0)
			shardmap_stats_get(m, &st);
		shardmap_close(m);
		if (err != 0)
			rc = fail(c, EXIT_ERR, "%s: %s", c->snapshot ? c->snapshot : c->store_uri,
				  why_text(&why, err));
	}
	shardmap_store_close(store);
	if (rc != EXIT_OK)
		return rc;
	qsort(secs, runs, sizeof secs[0], cmp_double);
	double median = secs[runs / 2];
	uint64_t shards = st.open_shards + st.closed_shards;
	double per_shard = shards ? (double)st.resident_bytes / (double)shards : 0;
	const char *source = c->snapshot ? c->snapshot : c->store_uri;
	if (c->json) {
		printf("{\"source\":\"%s\",\"version\":%" PRIu64 ",\"shards\":%" PRIu64
		       ",\"runs\":%lu,\"median_s\":%.6f,\"min_s\":%.6f,\"max_s\":%.6f,"
		       "\"shards_per_s\":%.0f,\"resident_bytes\":%" PRIu64
		       ",\"resident_bytes_per_shard\":%.1f}\n",
		       c->snapshot ? "snapshot" : "store", st.version, shards, runs, median,
		       secs[0], secs[runs - 1], median > 0 ? (double)shards / median : 0,
		       st.resident_bytes, per_shard);
		return EXIT_OK;
	}
	printf("bootstrap from %s: version %" PRIu64 ", %" PRIu64 " shards in %" PRIu64
	       " streams\n",
	       source, st.version, shards, st.streams);
	printf("  %lu runs: median %.4f s (min %.4f, max %.4f), %.0f shards/s\n", runs, median,
	       secs[0], secs[runs - 1], median > 0 ? (double)shards / median : 0);
	printf("  resident %" PRIu64 " bytes, %.1f bytes per shard%s\n", st.resident_bytes,
	       per_shard, st.resident_bytes ? "" : " (built without jemalloc: not measured)");
	return EXIT_OK;
}

/* ---------------------------------------------------------------- the command table */

#define STORE_OPT "  --store URI        the store (default: $SHARDMAP_STORE)\n"
#define HELP_OPT  "  -h, --help         show this help\n"

static const struct command commands[] = {
    {"init", cmd_init, 0, 0, 0, "init",
     "Create an empty store (for file:PATH, the directory PATH) and check that it holds\n"
     "nothing yet.\n\nOptions:\n" STORE_OPT HELP_OPT
     "\nExample:\n  shardmapctl init --store file:/var/lib/shardmap\n"},
    {"create-stream", cmd_create_stream, O_SHARDS | O_OWNER | O_HASH, 1, 1,
     "create-stream STREAM --shards N --owner CELL[,CELL...] [--hash xxh3|md5]",
     "Create a stream of N open shards that split the hash space evenly (Kinesis\n"
     "CreateStream), owned round-robin by the given cells, which must exist.\n\nOptions:\n"
     "  --shards N         number of shards (1..4294967295)\n"
     "  --owner LIST       owner cells, comma-separated, assigned round-robin\n"
     "  --hash FN          the stream's key hash: xxh3 (default) or md5 (Kinesis)\n" STORE_OPT
	 HELP_OPT "\nExample:\n  shardmapctl create-stream orders --shards 4 --owner a,b\n"},
    {"split", cmd_split, O_AT, 2, 2, "split STREAM SHARD [--at HASH]",
     "Split an open shard in two (Kinesis SplitShard): the shard closes and two new open\n"
     "shards take its range, the second starting at HASH. Without --at the range is halved.\n"
     "\nOptions:\n"
     "  --at HASH          first hash key of the second child (decimal)\n" STORE_OPT HELP_OPT
     "\nExample:\n  shardmapctl split orders shardId-000000000000\n"},
    {"merge", cmd_merge, 0, 3, 3, "merge STREAM SHARD ADJACENT_SHARD",
     "Merge two adjacent open shards (Kinesis MergeShards): both close and one new open\n"
     "shard covers both ranges, with SHARD as parent and ADJACENT_SHARD as adjacent\n"
     "parent.\n\nOptions:\n" STORE_OPT HELP_OPT
     "\nExample:\n  shardmapctl merge orders shardId-000000000001 shardId-000000000002\n"},
    {"move", cmd_move, 0, 3, 3, "move STREAM SHARD CELL",
     "Give a shard to another cell (the cell must exist).\n\nOptions:\n" STORE_OPT HELP_OPT
     "\nExample:\n  shardmapctl move orders shardId-000000000003 b\n"},
    {"put-cell", cmd_put_cell, 0, 2, -1, "put-cell CELL HOST:PORT...",
     "Create a cell or replace its endpoints.\n\nOptions:\n" STORE_OPT HELP_OPT
     "\nExample:\n  shardmapctl put-cell a 10.0.0.1:7000 10.0.0.2:7000\n"},
    {"delete-cell", cmd_delete_cell, 0, 1, 1, "delete-cell CELL",
     "Delete a cell. Refused while any shard, open or closed, names it as owner.\n"
     "\nOptions:\n" STORE_OPT HELP_OPT "\nExample:\n  shardmapctl delete-cell b\n"},
    {"list", cmd_list, O_JSON, 1, 2, "list streams|shards [STREAM]|cells [--json]",
     "List the streams (with their hash function and shard counts), the shards of one or\n"
     "every stream (state, owner, range, parents) or the cells (shards owned, endpoints).\n"
     "\nOptions:\n"
     "  --json             print a JSON array instead of a table\n" STORE_OPT HELP_OPT
     "\nExample:\n  shardmapctl list shards orders\n"},
    {"route", cmd_route, O_JSON | O_HASH, 1, 2, "route STREAM KEY | route STREAM --hash DECIMAL",
     "Show where a partition key (or an explicit hash key) goes: its hash, the open shard\n"
     "whose range holds it, the owning cell and its endpoints.\n\nOptions:\n"
     "  --hash DECIMAL     route this hash key instead of hashing a KEY\n"
     "  --json             print a JSON object\n" STORE_OPT HELP_OPT
     "\nExample:\n  shardmapctl route orders user-42\n"},
    {"import", cmd_import, O_KINESIS | O_STREAM | O_OWNER | O_CELL, 0, 1,
     "import FILE | import --kinesis FILE [--stream NAME] --owner CELL[,CELL...] "
     "[--cell ID=HOST:PORT[,HOST:PORT...]]...",
     "Import a whole map written by export (docs/json.md) into an empty store, or create\n"
     "one md5 stream from the output of `aws kinesis list-shards` or `describe-stream`.\n"
     "FILE may be - for standard input.\n\nOptions:\n"
     "  --kinesis FILE     the AWS CLI's Kinesis output to import\n"
     "  --stream NAME      the stream to create (default: the document's StreamName)\n"
     "  --owner LIST       owner cells for the shards, round-robin in document order\n"
     "  --cell ID=EPS      also create cell ID with these endpoints (repeatable)\n" STORE_OPT
	 HELP_OPT "\nExamples:\n  shardmapctl import map.json\n"
     "  shardmapctl import --kinesis shards.json --stream orders --owner a,b\n"},
    {"export", cmd_export, 0, 0, 1, "export [FILE]",
     "Write the whole map as JSON (docs/json.md) to FILE or standard "
     "output.\n\nOptions:\n" STORE_OPT HELP_OPT "\nExample:\n  shardmapctl export map.json\n"},
    {"verify", cmd_verify, O_SNAPSHOT, 0, 0, "verify [--snapshot FILE]",
     "Read the whole store (or a warm-start snapshot file) into a private map, validate\n"
     "every record and invariant, and say what is wrong, or print a summary and digest.\n"
     "\nOptions:\n"
     "  --snapshot FILE    check this snapshot file instead of the store\n" STORE_OPT HELP_OPT
     "\nExample:\n  shardmapctl verify\n"},
    {"compact", cmd_compact, 0, 0, 0, "compact",
     "Fold a file store's journal into a new snapshot (atomically).\n\nOptions:\n" STORE_OPT
	 HELP_OPT "\nExample:\n  shardmapctl compact --store file:/var/lib/shardmap\n"},
    {"bench-bootstrap", cmd_bench_bootstrap, O_RUNS | O_SNAPSHOT | O_JSON, 0, 0,
     "bench-bootstrap [--runs N] [--snapshot FILE] [--json]",
     "Time a bootstrap of a fresh map from the store (or a snapshot load) N times and\n"
     "print the median seconds, shards per second and resident bytes per shard.\n"
     "\nOptions:\n"
     "  --runs N           number of runs (default 5)\n"
     "  --snapshot FILE    time loading this snapshot instead\n"
     "  --json             print one JSON line\n" STORE_OPT HELP_OPT
     "\nExample:\n  shardmapctl bench-bootstrap --runs 3\n"},
};

#define N_COMMANDS (sizeof commands / sizeof commands[0])

static void print_usage(FILE *f)
{
	fprintf(f, "usage: shardmapctl COMMAND [ARGS] [--store URI] [--help]\n\ncommands:\n");
	for (size_t i = 0; i < N_COMMANDS; i++)
		fprintf(f, "  %s\n", commands[i].synopsis);
	fprintf(f, "\nThe store URI is file:PATH or etcd://HOST:PORT[,HOST:PORT...]/PREFIX, from\n"
		   "--store or the environment variable SHARDMAP_STORE.\n"
		   "Exit status: 0 ok, 1 error, 2 usage. See docs/cli.md.\n");
}

enum {
	OPT_STORE = 256,
	OPT_JSON,
	OPT_SHARDS,
	OPT_OWNER,
	OPT_HASH,
	OPT_AT,
	OPT_KINESIS,
	OPT_STREAM,
	OPT_CELL,
	OPT_SNAPSHOT,
	OPT_RUNS
};

static const struct option long_options[] = {
    {"store", required_argument, NULL, OPT_STORE},
    {"help", no_argument, NULL, 'h'},
    {"json", no_argument, NULL, OPT_JSON},
    {"shards", required_argument, NULL, OPT_SHARDS},
    {"owner", required_argument, NULL, OPT_OWNER},
    {"hash", required_argument, NULL, OPT_HASH},
    {"at", required_argument, NULL, OPT_AT},
    {"kinesis", required_argument, NULL, OPT_KINESIS},
    {"stream", required_argument, NULL, OPT_STREAM},
    {"cell", required_argument, NULL, OPT_CELL},
    {"snapshot", required_argument, NULL, OPT_SNAPSHOT},
    {"runs", required_argument, NULL, OPT_RUNS},
    {NULL, 0, NULL, 0},
};

/* Store an option's value if the command accepts it. Returns 0 or an exit code. */
static int take_option(struct cli *c, int opt, const char *arg)
{
	static const struct {
		int opt;
		unsigned bit;
	} bits[] = {{OPT_JSON, O_JSON},	    {OPT_SHARDS, O_SHARDS}, {OPT_OWNER, O_OWNER},
		    {OPT_HASH, O_HASH},	    {OPT_AT, O_AT},	    {OPT_KINESIS, O_KINESIS},
		    {OPT_STREAM, O_STREAM}, {OPT_CELL, O_CELL},	    {OPT_SNAPSHOT, O_SNAPSHOT},
		    {OPT_RUNS, O_RUNS}};
	for (size_t i = 0; i < sizeof bits / sizeof bits[0]; i++) {
		if (bits[i].opt != opt)
			continue;
		if (!(c->cmd->options & bits[i].bit)) {
			const char *name = "?";
			for (const struct option *o = long_options; o->name; o++)
				if (o->val == opt)
					name = o->name;
			char msg[80];
			snprintf(msg, sizeof msg, "option --%s does not apply here", name);
			return usage_error(c, msg);
		}
	}
	switch (opt) {
	case OPT_STORE:
		c->store_uri = arg;
		break;
	case OPT_JSON:
		c->json = 1;
		break;
	case OPT_SHARDS:
		c->shards = arg;
		break;
	case OPT_OWNER:
		c->owner = arg;
		break;
	case OPT_HASH:
		c->hash = arg;
		break;
	case OPT_AT:
		c->at = arg;
		break;
	case OPT_KINESIS:
		c->kinesis = arg;
		break;
	case OPT_STREAM:
		c->stream = arg;
		break;
	case OPT_CELL:
		if (c->n_cells == MAX_CELL_FLAGS)
			return usage_error(c, "too many --cell options");
		c->cells[c->n_cells++] = arg;
		break;
	case OPT_SNAPSHOT:
		c->snapshot = arg;
		break;
	case OPT_RUNS:
		c->runs = arg;
		break;
	}
	return EXIT_OK;
}

int main(int argc, char **argv)
{
	struct cli c = {0};
	if (argc < 2) {
		print_usage(stderr);
		return EXIT_USAGE;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		print_usage(stdout);
		return EXIT_OK;
	}
	if (strcmp(argv[1], "--version") == 0) {
		printf("shardmapctl %s\n", shardmap_library_version());
		return EXIT_OK;
	}
	for (size_t i = 0; i < N_COMMANDS; i++)
		if (strcmp(argv[1], commands[i].name) == 0)
			c.cmd = &commands[i];
	if (c.cmd == NULL)
		return fail(NULL, EXIT_USAGE, "unknown command '%s' (see shardmapctl --help)",
			    argv[1]);
	c.store_uri = getenv("SHARDMAP_STORE");

	/* Parse the command's own arguments; "+" would stop at the first positional, GNU
	 * permutation lets options follow them. */
	opterr = 0;
	int sub_argc = argc - 1, opt;
	char **sub_argv = argv + 1;
	while ((opt = getopt_long(sub_argc, sub_argv, ":h", long_options, NULL)) != -1) {
		if (opt == 'h') {
			printf("usage: shardmapctl %s [--store URI]\n\n%s", c.cmd->synopsis,
			       c.cmd->help);
			return EXIT_OK;
		}
		if (opt == '?' || opt == ':') {
			char msg[160];
			const char *bad = sub_argv[optind - 1];
			snprintf(msg, sizeof msg,
				 opt == ':' ? "option %.80s needs a value" : "unknown option %.80s",
				 bad);
			return usage_error(&c, msg);
		}
		int rc = take_option(&c, opt, optarg);
		if (rc != EXIT_OK)
			return rc;
	}
	c.args = sub_argv + optind;
	c.n_args = sub_argc - optind;
	if (c.n_args < c.cmd->min_args) {
		char msg[200];
		snprintf(msg, sizeof msg, "missing arguments: shardmapctl %s", c.cmd->synopsis);
		return usage_error(&c, msg);
	}
	if (c.cmd->max_args >= 0 && c.n_args > c.cmd->max_args)
		return usage_error(&c, "too many arguments");
	return c.cmd->run(&c);
}
