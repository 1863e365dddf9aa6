/*
 * test_cli.c - shardmapctl as a user runs it: the built binary ($SHARDMAP_BUILD_ROOT/tools/
 * shardmapctl) is run as a subprocess against a temporary file store for every command's
 * success path and its main error paths; each run checks the exit code (0 ok, 1 error,
 * 2 usage), what was printed on stdout and the one line on stderr.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shardmap.h"

/* ---------------------------------------------------------------- running shardmapctl */

static char tmp_dir[256], store_uri[512];

struct run {
	int status; /* exit code, or -1 when killed by a signal */
	char *out, *err;
};

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "rb");
	cr_assert_not_null(f);
	char *buf = NULL;
	size_t len = 0;
	FILE *m = open_memstream(&buf, &len);
	char chunk[4096];
	size_t n;
	while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
		fwrite(chunk, 1, n, m);
	fclose(m);
	fclose(f);
	return buf;
}

static void run_free(struct run *r)
{
	free(r->out);
	free(r->err);
	memset(r, 0, sizeof *r);
}

/* Start shardmapctl with args (NULL-terminated) and stdout/stderr into files tagged tag. */
static pid_t spawn(const char *const *args, const char *tag)
{
	const char *root = getenv("SHARDMAP_BUILD_ROOT");
	char exe[1024], out[600], err[600];
	snprintf(exe, sizeof exe, "%s/tools/shardmapctl", root ? root : ".");
	snprintf(out, sizeof out, "%s/%s.out", tmp_dir, tag);
	snprintf(err, sizeof err, "%s/%s.err", tmp_dir, tag);
	const char *argv[64] = {"shardmapctl"};
	size_t n = 1;
	while (*args && n < 63)
		argv[n++] = *args++;
	argv[n] = NULL;
	pid_t pid = fork();
	cr_assert_neq(pid, -1);
	if (pid == 0) {
		int fo = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		int fe = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		int fi = open("/dev/null", O_RDONLY);
		if (fo < 0 || fe < 0 || fi < 0)
			_exit(127);
		dup2(fi, 0);
		dup2(fo, 1);
		dup2(fe, 2);
		execv(exe, (char *const *)argv);
		_exit(127);
	}
	return pid;
}

static void reap(pid_t pid, const char *tag, struct run *r)
{
	int st;
	char out[600], err[600];
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	r->status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
	cr_assert_neq(r->status, 127, "shardmapctl could not be started (SHARDMAP_BUILD_ROOT?)");
	snprintf(out, sizeof out, "%s/%s.out", tmp_dir, tag);
	snprintf(err, sizeof err, "%s/%s.err", tmp_dir, tag);
	r->out = slurp(out);
	r->err = slurp(err);
}

static struct run ctl_argv(const char *const *args)
{
	struct run r;
	reap(spawn(args, "run"), "run", &r);
	return r;
}

#define CTL(...) ctl_argv((const char *const[]){__VA_ARGS__, NULL})

/* Run, expect exit 0 and an empty stderr; returns stdout (caller frees). */
static char *ok_argv(const char *const *args)
{
	struct run r = ctl_argv(args);
	cr_assert_eq(r.status, 0, "%s %s: exit %d, stderr: %s", args[0], args[1] ? args[1] : "",
		     r.status, r.err);
	cr_assert_str_empty(r.err);
	free(r.err);
	return r.out;
}

#define OK(...) ok_argv((const char *const[]){__VA_ARGS__, NULL})

/* Run, expect the exit code and exactly this one stderr line (or its prefix when the
 * expectation ends with '*'), and nothing on stdout. */
static void fails_argv(int code, const char *line, const char *const *args)
{
	struct run r = ctl_argv(args);
	cr_assert_eq(r.status, code, "%s: exit %d, stderr: %s", args[0], r.status, r.err);
	size_t n = strlen(r.err);
	cr_assert(n > 0 && r.err[n - 1] == '\n' && strchr(r.err, '\n') == r.err + n - 1,
		  "stderr is not one line: '%s'", r.err);
	r.err[n - 1] = '\0';
	size_t k = strlen(line);
	if (line[k - 1] == '*')
		cr_assert(strncmp(r.err, line, k - 1) == 0, "stderr:\n got '%s'\n want '%s'", r.err,
			  line);
	else
		cr_assert_str_eq(r.err, line);
	cr_assert_str_empty(r.out, "stdout after an error: '%s'", r.out);
	run_free(&r);
}

#define FAILS(code, line, ...) fails_argv(code, line, (const char *const[]){__VA_ARGS__, NULL})

/* The text from ": version" to the end of the first line (the summary without its source). */
static char *summary_of(const char *verify_out)
{
	const char *p = strstr(verify_out, ": version");
	cr_assert_not_null(p, "%s", verify_out);
	return strndup(p, strcspn(p, "\n"));
}

static long file_len(const char *path)
{
	struct stat st;
	cr_assert_eq(stat(path, &st), 0, "%s", path);
	return (long)st.st_size;
}

static int count_lines(const char *s)
{
	int n = 0;
	for (; *s; s++)
		n += *s == '\n';
	return n;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void setup(void)
{
	snprintf(tmp_dir, sizeof tmp_dir, "/tmp/shardmap-cli-XXXXXX");
	cr_assert_not_null(mkdtemp(tmp_dir));
	snprintf(store_uri, sizeof store_uri, "file:%s/store", tmp_dir);
	setenv("SHARDMAP_STORE", store_uri, 1);
}

static void teardown(void)
{
	nftw(tmp_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* init + two cells + a 4-shard stream "orders" owned round-robin by a and b: version 3. */
static void populate(void)
{
	free(OK("init"));
	free(OK("put-cell", "a", "10.0.0.1:7000", "10.0.0.2:7000"));
	free(OK("put-cell", "b", "10.0.1.1:7000"));
	free(OK("create-stream", "orders", "--shards", "4", "--owner", "a,b"));
}

TestSuite(cli, .init = setup, .fini = teardown, .timeout = 120);

/* ---------------------------------------------------------------- usage */

Test(cli, usage_and_help)
{
	struct run r = CTL("--help");
	cr_assert_eq(r.status, 0);
	cr_assert(strstr(r.out, "usage: shardmapctl COMMAND"));
	run_free(&r);

	static const char *const commands[] = {
	    "init", "create-stream", "split",  "merge",	 "move",   "put-cell", "delete-cell",
	    "list", "route",	     "import", "export", "verify", "compact",  "bench-bootstrap"};
	for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
		char *out = OK(commands[i], "--help");
		char want[2048];
		snprintf(want, sizeof want, "usage: shardmapctl %s", commands[i]);
		cr_assert(strncmp(out, want, strlen(want)) == 0, "%s", out);
		cr_assert(strstr(out, "Example"), "%s --help has no example", commands[i]);
		free(out);
	}

	r = CTL(NULL);
	cr_assert_eq(r.status, 2);
	run_free(&r);
	FAILS(2, "shardmapctl: unknown command 'frobnicate' (see shardmapctl --help)",
	      "frobnicate");
	FAILS(2, "shardmapctl: list: unknown option --frob (see shardmapctl list --help)", "list",
	      "streams", "--frob");
	FAILS(2,
	      "shardmapctl: split: option --json does not apply here (see shardmapctl split "
	      "--help)",
	      "split", "orders", "x", "--json");
	FAILS(2,
	      "shardmapctl: split: missing arguments: shardmapctl split STREAM SHARD [--at HASH] "
	      "(see shardmapctl split --help)",
	      "split", "orders");
	FAILS(2, "shardmapctl: move: too many arguments (see shardmapctl move --help)", "move", "a",
	      "b", "c", "d");
	FAILS(2, "shardmapctl: list: option --store needs a value (see shardmapctl list --help)",
	      "list", "streams", "--store");
	FAILS(2,
	      "shardmapctl: list: list what? streams, shards [STREAM] or cells (see shardmapctl "
	      "list --help)",
	      "list", "everything");

	unsetenv("SHARDMAP_STORE");
	FAILS(2,
	      "shardmapctl: list: no store: give --store URI or set SHARDMAP_STORE (see "
	      "shardmapctl list --help)",
	      "list", "streams");
	FAILS(2,
	      "shardmapctl: list: bad store URI 'ftp://x' (file:PATH or "
	      "etcd://HOST:PORT/PREFIX)",
	      "list", "streams", "--store", "ftp://x");
}

/* ---------------------------------------------------------------- init, cells */

Test(cli, init_and_cells)
{
	char missing[600];
	snprintf(missing, sizeof missing,
		 "shardmapctl: list: store %s does not exist (create it with shardmapctl init)",
		 store_uri);
	FAILS(1, missing, "list", "cells");

	char *out = OK("init");
	char want[2048];
	snprintf(want, sizeof want, "initialised %s (empty, version 0)\n", store_uri);
	cr_assert_str_eq(out, want);
	free(out);

	out = OK("list", "cells");
	cr_assert_str_eq(out, "CELL      SHARDS  ENDPOINTS\n");
	free(out);

	out = OK("put-cell", "a", "10.0.0.1:7000", "10.0.0.2:7000");
	cr_assert_str_eq(out, "put cell a (2 endpoints); version 1\n");
	free(out);
	out = OK("put-cell", "--store", store_uri, "b", "db.example:9000");
	cr_assert_str_eq(out, "put cell b (1 endpoint); version 2\n");
	free(out);
	FAILS(2,
	      "shardmapctl: put-cell: endpoint 'nope' is not host:port (port 1..65535) (see "
	      "shardmapctl put-cell --help)",
	      "put-cell", "c", "nope");
	FAILS(2, "shardmapctl: put-cell: missing arguments: *", "put-cell", "c");

	out = OK("list", "cells");
	cr_assert_str_eq(out, "CELL      SHARDS  ENDPOINTS\n"
			      "a              0  10.0.0.1:7000,10.0.0.2:7000\n"
			      "b              0  db.example:9000\n");
	free(out);

	snprintf(want, sizeof want, "shardmapctl: init: store %s already holds version 2",
		 store_uri);
	FAILS(1, want, "init");

	out = OK("delete-cell", "b");
	cr_assert_str_eq(out, "deleted cell b; version 3\n");
	free(out);
	FAILS(1, "shardmapctl: delete-cell: no cell 'b'", "delete-cell", "b");
}

/* ---------------------------------------------------------------- streams and shards */

Test(cli, create_stream_list_route)
{
	free(OK("init"));
	free(OK("put-cell", "a", "10.0.0.1:7000"));
	FAILS(1, "shardmapctl: create-stream: owner cell 'ghost' does not exist", "create-stream",
	      "orders", "--shards", "4", "--owner", "ghost");
	FAILS(2,
	      "shardmapctl: create-stream: missing --shards N (see shardmapctl create-stream "
	      "--help)",
	      "create-stream", "orders", "--owner", "a");
	FAILS(2,
	      "shardmapctl: create-stream: --shards: not a count from 1 to 4294967295 (see "
	      "shardmapctl create-stream --help)",
	      "create-stream", "orders", "--shards", "0", "--owner", "a");
	FAILS(2,
	      "shardmapctl: create-stream: --hash: xxh3 or md5 (see shardmapctl create-stream "
	      "--help)",
	      "create-stream", "orders", "--shards", "2", "--owner", "a", "--hash", "crc");

	char *out = OK("create-stream", "orders", "--shards", "4", "--owner", "a");
	cr_assert_str_eq(out,
			 "created stream orders (xxh3) with 4 shards over 1 cell; version 2\n");
	free(out);
	out = OK("create-stream", "clicks", "--shards", "1", "--owner", "a", "--hash", "md5");
	free(out);
	FAILS(1, "shardmapctl: create-stream: stream 'orders' already exists", "create-stream",
	      "orders", "--shards", "2", "--owner", "a");

	out = OK("list", "streams");
	cr_assert_str_eq(out, "STREAM  HASH        OPEN      CLOSED\n"
			      "clicks  md5            1           0\n"
			      "orders  xxh3           4           0\n");
	free(out);
	out = OK("list", "shards", "orders");
	cr_assert_eq(count_lines(out), 5);
	cr_assert(strstr(out, "orders  shardId-000000000000  open    a      0  "));
	free(out);
	FAILS(1, "shardmapctl: list: no stream 'nope'", "list", "shards", "nope");

	/* --json list output parses and carries the ranges as decimal strings. */
	out = OK("list", "shards", "--json");
	json_error_t jerr;
	json_t *arr = json_loads(out, 0, &jerr);
	cr_assert_not_null(arr, "%s", jerr.text);
	cr_assert_eq(json_array_size(arr), 5);
	cr_assert_str_eq(json_string_value(json_object_get(json_array_get(arr, 1), "start")), "0");
	json_decref(arr);
	free(out);

	/* route by explicit hash key and by partition key */
	out = OK("route", "orders", "--hash", "0");
	cr_assert_str_eq(out, "stream     orders\n"
			      "hash       0\n"
			      "shard      shardId-000000000000\n"
			      "range      0..85070591730234615865843651857942052863\n"
			      "cell       a\n"
			      "endpoints  10.0.0.1:7000\n"
			      "version    3\n");
	free(out);
	out = OK("route", "orders", "user-42", "--json");
	json_t *o = json_loads(out, 0, &jerr);
	cr_assert_not_null(o);
	shardmap_hash h;
	cr_assert_eq(shardmap_hash_parse(json_string_value(json_object_get(o, "hash")), &h), 0);
	shardmap_hash want = shardmap_hash_key(SHARDMAP_HASH_XXH3, "user-42", 7);
	cr_assert_eq(shardmap_hash_cmp(h, want), 0);
	cr_assert_str_eq(json_string_value(json_object_get(o, "key")), "user-42");
	cr_assert_str_eq(json_string_value(json_object_get(o, "cell")), "a");
	json_decref(o);
	free(out);

	FAILS(1, "shardmapctl: route: no stream 'nope'", "route", "nope", "k");
	FAILS(2,
	      "shardmapctl: route: give either KEY or --hash DECIMAL (see shardmapctl route "
	      "--help)",
	      "route", "orders", "k", "--hash", "1");
	FAILS(2, "shardmapctl: route: --hash '-1': not a decimal hash key (*", "route", "orders",
	      "--hash", "-1");
}

Test(cli, split_merge_move)
{
	populate();
	char *out = OK("split", "orders", "shardId-000000000000");
	cr_assert_str_eq(out,
			 "split shardId-000000000000 at 42535295865117307932921825928971026432 "
			 "into shardId-000000000004 and shardId-000000000005; version 4\n");
	free(out);
	FAILS(1, "shardmapctl: split: shard 'shardId-000000000000' is closed", "split", "orders",
	      "shardId-000000000000");
	out = OK("split", "orders", "shardId-000000000001", "--at",
		 "100000000000000000000000000000000000000");
	cr_assert(strstr(out, "into shardId-000000000006 and shardId-000000000007; version 5"));
	free(out);
	FAILS(1, "shardmapctl: split: split point 0 must be greater than *", "split", "orders",
	      "shardId-000000000002", "--at", "0");
	FAILS(1,
	      "shardmapctl: split: shard 'shardId-000000000099' does not exist in stream 'orders'",
	      "split", "orders", "shardId-000000000099");
	FAILS(1, "shardmapctl: split: stream 'nope' does not exist", "split", "nope",
	      "shardId-000000000001");
	FAILS(2, "shardmapctl: split: --at 'x': not a decimal hash key (*", "split", "orders",
	      "shardId-000000000002", "--at", "x");

	out = OK("merge", "orders", "shardId-000000000004", "shardId-000000000005");
	cr_assert_str_eq(out, "merged shardId-000000000004 and shardId-000000000005 into "
			      "shardId-000000000008; version 6\n");
	free(out);
	FAILS(1,
	      "shardmapctl: merge: shards 'shardId-000000000008' and 'shardId-000000000003' are "
	      "not adjacent",
	      "merge", "orders", "shardId-000000000008", "shardId-000000000003");

	out = OK("move", "orders", "shardId-000000000008", "b");
	cr_assert_str_eq(out, "moved shardId-000000000008 of orders to cell b; version 7\n");
	free(out);
	FAILS(1, "shardmapctl: move: cell 'ghost' does not exist", "move", "orders",
	      "shardId-000000000008", "ghost");

	/* A cell that still owns shards cannot go. */
	FAILS(1, "shardmapctl: delete-cell: cell 'b' still owns 5 shards; move them first",
	      "delete-cell", "b");

	out = OK("route", "orders", "--hash", "1");
	cr_assert(strstr(out, "shard      shardId-000000000008\n"));
	cr_assert(strstr(out, "cell       b\n"));
	free(out);
	out = OK("list", "shards", "orders");
	cr_assert_eq(count_lines(out), 1 + 9);
	cr_assert(strstr(out, "shardId-000000000008  open    b "));
	cr_assert(strstr(out, "shardId-000000000004,shardId-000000000005\n"));
	free(out);
}

/* ---------------------------------------------------------------- import, export, verify */

Test(cli, export_import_verify)
{
	populate();
	free(OK("split", "orders", "shardId-000000000002"));
	FAILS(1, "shardmapctl: export: cannot write /nonexistent/dir/map.json: *", "export",
	      "/nonexistent/dir/map.json");
	char *json_out = OK("export");
	char path[600], copy_dir[600], copy_uri[700];
	snprintf(path, sizeof path, "%s/map.json", tmp_dir);
	char *out = OK("export", path);
	char want[2048];
	snprintf(want, sizeof want, "exported version 4 to %s\n", path);
	cr_assert_str_eq(out, want);
	free(out);
	FILE *f = fopen(path, "r");
	cr_assert_not_null(f);
	fclose(f);

	snprintf(copy_dir, sizeof copy_dir, "%s/copy", tmp_dir);
	snprintf(copy_uri, sizeof copy_uri, "file:%s", copy_dir);
	free(OK("init", "--store", copy_uri));
	out = OK("import", path, "--store", copy_uri);
	snprintf(want, sizeof want, "imported %s: 2 cells, 1 streams, 6 shards; version 4\n", path);
	cr_assert_str_eq(out, want);
	free(out);
	/* The copy lists and exports exactly like the original. */
	char *again = OK("export", "--store", copy_uri);
	cr_assert_str_eq(again, json_out);
	free(again);
	char *v1 = OK("verify");
	char *v2 = OK("verify", "--store", copy_uri);
	cr_assert(strncmp(v1, "ok: ", 4) == 0, "%s", v1);
	char *s1 = summary_of(v1), *s2 = summary_of(v2);
	cr_assert_str_eq(s1, s2);
	cr_assert(strstr(v1, "\n  file store: snapshot at version "), "%s", v1);
	free(s1);
	free(s2);
	free(v1);
	free(v2);
	free(json_out);

	snprintf(want, sizeof want,
		 "shardmapctl: import: store %s already holds version 4; a whole map imports into "
		 "an empty store only",
		 copy_uri);
	FAILS(1, want, "import", path, "--store", copy_uri);

	/* A broken document names the JSON path; the store is unchanged. */
	char bad[600], empty_uri[700];
	snprintf(bad, sizeof bad, "%s/bad.json", tmp_dir);
	f = fopen(bad, "w");
	fputs("{\"format\": \"shardmap\", \"format_version\": 1, \"version\": 2, \"cells\": [], "
	      "\"streams\": [{\"name\": \"s\", \"hash\": \"md5\", \"shards\": [{\"id\": \"x\", "
	      "\"start\": \"zero\"}]}]}",
	      f);
	fclose(f);
	snprintf(empty_uri, sizeof empty_uri, "file:%s/empty", tmp_dir);
	free(OK("init", "--store", empty_uri));
	snprintf(want, sizeof want,
		 "shardmapctl: import: %s: streams[0].shards[0].start: not a decimal hash key (*",
		 bad);
	FAILS(1, want, "import", bad, "--store", empty_uri);
	out = OK("verify", "--store", empty_uri);
	snprintf(want, sizeof want, "ok: %s: empty (version 0)\n", empty_uri);
	cr_assert(strncmp(out, want, strlen(want)) == 0, "%s", out);
	free(out);
	snprintf(want, sizeof want, "shardmapctl: import: cannot read %s/none.json: *", tmp_dir);
	char none[600];
	snprintf(none, sizeof none, "%s/none.json", tmp_dir);
	FAILS(1, want, "import", none);
	snprintf(want, sizeof want,
		 "shardmapctl: export: store %s is empty (version 0): nothing to "
		 "export",
		 empty_uri);
	FAILS(1, want, "export", "--store", empty_uri);
}

Test(cli, import_kinesis)
{
	free(OK("init"));
	char doc[1024];
	const char *src = getenv("SHARDMAP_SOURCE_ROOT");
	snprintf(doc, sizeof doc, "%s/tests/data/kinesis_list_shards.json", src ? src : ".");
	FAILS(2,
	      "shardmapctl: import: --kinesis needs --owner CELL[,CELL...] (see shardmapctl "
	      "import --help)",
	      "import", "--kinesis", doc, "--stream", "orders");
	FAILS(1,
	      "shardmapctl: import: owner cell 'a' does not exist (create it with put-cell or "
	      "--cell)",
	      "import", "--kinesis", doc, "--stream", "orders", "--owner", "a");
	FAILS(2,
	      "shardmapctl: import: --cell: expected ID=HOST:PORT[,HOST:PORT...] (see shardmapctl "
	      "import --help)",
	      "import", "--kinesis", doc, "--stream", "orders", "--owner", "a", "--cell", "a");
	FAILS(2,
	      "shardmapctl: import: --owner, --stream and --cell go with --kinesis (see "
	      "shardmapctl import --help)",
	      "import", doc, "--owner", "a");

	char *out = OK("import", "--kinesis", doc, "--stream", "orders", "--owner", "a,b", "--cell",
		       "a=10.0.0.1:7000", "--cell", "b=10.0.1.1:7000,10.0.1.2:7000");
	char want[2048];
	snprintf(want, sizeof want,
		 "imported stream orders (md5) with 6 shards from %s; version 1\n", doc);
	cr_assert_str_eq(out, want);
	free(out);
	snprintf(want, sizeof want, "shardmapctl: import: stream 'orders' already exists");
	FAILS(1, want, "import", "--kinesis", doc, "--stream", "orders", "--owner", "a");

	out = OK("list", "streams");
	cr_assert(strstr(out, "orders  md5            3           3\n"), "%s", out);
	free(out);
	out = OK("list", "cells");
	cr_assert(strstr(out, "b              3  10.0.1.1:7000,10.0.1.2:7000\n"), "%s", out);
	free(out);
	out = OK("route", "orders", "--hash", "340282366920938463463374607431768211455");
	cr_assert(strstr(out, "shard      shardId-000000000005\n"), "%s", out);
	free(out);

	snprintf(doc, sizeof doc, "%s/tests/data/kinesis_describe_stream.json", src ? src : ".");
	out = OK("import", "--kinesis", doc, "--owner", "b");
	cr_assert(strstr(out, "imported stream clicks (md5) with 2 shards"), "%s", out);
	free(out);
}

Test(cli, verify_snapshot_and_corruption)
{
	populate();
	char snap[600];
	snprintf(snap, sizeof snap, "%s/warm.snap", tmp_dir);
	/* Make a warm-start snapshot of the store with the library itself. */
	shardmap *m;
	shardmap_store *s;
	cr_assert_eq(shardmap_open(&m, NULL), 0);
	cr_assert_eq(shardmap_store_open(store_uri, &s), 0);
	cr_assert_eq(shardmap_bootstrap(m, s, NULL), 0);
	cr_assert_eq(shardmap_snapshot_save(m, snap), 0);
	shardmap_store_close(s);
	shardmap_close(m);

	char *out = OK("verify", "--snapshot", snap);
	char want[2048];
	snprintf(want, sizeof want,
		 "ok: %s: version 3, 1 streams, 4 open shards, 0 closed shards, "
		 "2 cells, digest ",
		 snap);
	cr_assert(strncmp(out, want, strlen(want)) == 0, "%s", out);
	char *store_ok = OK("verify");
	char *s1 = summary_of(store_ok), *s2 = summary_of(out);
	cr_assert_str_eq(s1, s2);
	free(s1);
	free(s2);
	free(store_ok);
	free(out);

	/* Flip a byte in the middle of the snapshot: verify says what is wrong. */
	FILE *f = fopen(snap, "r+b");
	cr_assert_not_null(f);
	fseek(f, 0, SEEK_END);
	long size = ftell(f);
	fseek(f, size / 2, SEEK_SET);
	int c = fgetc(f);
	fseek(f, size / 2, SEEK_SET);
	fputc(c ^ 0x5a, f);
	fclose(f);
	snprintf(want, sizeof want, "shardmapctl: verify: %s: *", snap);
	FAILS(1, want, "verify", "--snapshot", snap);

	/* A torn journal tail is recovered and reported; a flipped byte is named. */
	char journal[600];
	snprintf(journal, sizeof journal, "%s/store/journal", tmp_dir);
	cr_assert_eq(truncate(journal, (off_t)(size = (long)file_len(journal)) - 3), 0);
	out = OK("verify");
	cr_assert(strstr(out, ": version 2, 0 streams, 0 open shards, 0 closed shards, 2 cells"),
		  "%s", out);
	cr_assert(strstr(out, "\n  recovered: a torn journal tail of "), "%s", out);
	free(out);
	f = fopen(journal, "r+b");
	cr_assert_not_null(f);
	fseek(f, 20, SEEK_SET);
	c = fgetc(f);
	fseek(f, 20, SEEK_SET);
	fputc(c ^ 0x5a, f);
	fclose(f);
	snprintf(want, sizeof want, "shardmapctl: verify: store %s: journal %s offset *", store_uri,
		 journal);
	FAILS(1, want, "verify");
	snprintf(want, sizeof want, "shardmapctl: list: store %s: journal %s offset *", store_uri,
		 journal);
	FAILS(1, want, "list", "streams");

	snprintf(want, sizeof want, "shardmapctl: verify: %s/none: *", tmp_dir);
	char none[600];
	snprintf(none, sizeof none, "%s/none", tmp_dir);
	FAILS(1, want, "verify", "--snapshot", none);
}

Test(cli, compact_and_bench)
{
	populate();
	free(OK("split", "orders", "shardId-000000000001"));
	char *before = OK("export");
	char *out = OK("compact");
	char want[2048];
	snprintf(want, sizeof want, "compacted %s: snapshot at version 4, journal empty\n",
		 store_uri);
	cr_assert_str_eq(out, want);
	free(out);
	char *after = OK("export");
	cr_assert_str_eq(after, before);
	free(after);
	free(before);
	free(OK("move", "orders", "shardId-000000000000", "b"));
	out = OK("verify");
	cr_assert(strstr(out, ": version 5, "), "%s", out);
	free(out);
	FAILS(1, "shardmapctl: compact: compact works on file: stores only (etcd compacts itself)",
	      "compact", "--store", "etcd://127.0.0.1:1/x");

	out = OK("bench-bootstrap", "--runs", "2");
	cr_assert(strstr(out, "shards/s"), "%s", out);
	cr_assert(strstr(out, "6 shards in 1 streams"), "%s", out);
	free(out);
	out = OK("bench-bootstrap", "--runs", "1", "--json");
	json_error_t jerr;
	json_t *o = json_loads(out, 0, &jerr);
	cr_assert_not_null(o, "%s", out);
	cr_assert_eq(json_integer_value(json_object_get(o, "shards")), 6);
	cr_assert_eq(json_integer_value(json_object_get(o, "version")), 5);
	json_decref(o);
	free(out);
	FAILS(2,
	      "shardmapctl: bench-bootstrap: --runs: a count from 1 to 1000 (see shardmapctl "
	      "bench-bootstrap --help)",
	      "bench-bootstrap", "--runs", "0");
}

/* ---------------------------------------------------------------- concurrent writers */

/* N control planes put a cell each at once: every one either wrote or was told that
 * another writer got there first and wrote nothing; no write is lost. */
static void concurrent_writers(const char *store)
{
	enum { N = 6 };
	char *before = OK("list", "cells", "--store", store);
	int lines_before = count_lines(before);
	free(before);
	pid_t pids[N];
	char tags[N][16], cells[N][16];
	for (int i = 0; i < N; i++) {
		snprintf(tags[i], sizeof tags[i], "w%d", i);
		snprintf(cells[i], sizeof cells[i], "cell-%d", i);
		pids[i] = spawn((const char *const[]){"put-cell", cells[i], "10.0.0.1:7000",
						      "--store", store, NULL},
				tags[i]);
	}
	int ok = 0;
	for (int i = 0; i < N; i++) {
		struct run r;
		reap(pids[i], tags[i], &r);
		if (r.status == 0) {
			ok++;
			cr_assert_str_empty(r.err);
		} else {
			cr_assert_eq(r.status, 1, "%s", r.err);
			cr_assert(
			    strstr(r.err, "shardmapctl: put-cell: another writer got there first"),
			    "%s", r.err);
			cr_assert_str_empty(r.out);
		}
		run_free(&r);
	}
	cr_assert_geq(ok, 1);
	char *out = OK("list", "cells", "--store", store);
	cr_assert_eq(count_lines(out), lines_before + ok, "%d writers succeeded:\n%s", ok, out);
	free(out);
}

Test(cli, concurrent_writers_never_lose_a_write)
{
	free(OK("init"));
	concurrent_writers(store_uri);
	char *out = OK("verify");
	cr_assert(strstr(out, ": version "), "%s", out);
	free(out);
}

/* ---------------------------------------------------------------- etcd */

Test(cli, etcd_store)
{
	const char *etcd = getenv("SHARDMAP_TEST_ETCD");
	if (etcd == NULL || etcd[0] == '\0') {
		teardown(); /* a skipped test does not reach .fini */
		cr_skip_test("SHARDMAP_TEST_ETCD is not set (scripts/test starts etcd)");
	}
	char uri[512];
	snprintf(uri, sizeof uri, "etcd://%s/shardmapctl-test-%d", etcd, (int)getpid());
	setenv("SHARDMAP_STORE", uri, 1);

	char *out = OK("init");
	char want[2048];
	snprintf(want, sizeof want, "initialised %s (empty, version 0)\n", uri);
	cr_assert_str_eq(out, want);
	free(out);
	free(OK("put-cell", "a", "10.0.0.1:7000"));
	free(OK("put-cell", "b", "10.0.1.1:7000"));
	out = OK("create-stream", "orders", "--shards", "4", "--owner", "a,b");
	cr_assert(strstr(out, "created stream orders (xxh3) with 4 shards over 2 cells; version "));
	free(out);
	free(OK("split", "orders", "shardId-000000000000"));
	FAILS(1, "shardmapctl: split: shard 'shardId-000000000000' is closed", "split", "orders",
	      "shardId-000000000000");
	free(OK("move", "orders", "shardId-000000000004", "b"));
	out = OK("list", "streams");
	cr_assert_str_eq(out, "STREAM  HASH        OPEN      CLOSED\n"
			      "orders  xxh3           5           1\n");
	free(out);
	out = OK("route", "orders", "--hash", "0");
	cr_assert(strstr(out, "shard      shardId-000000000004\n"), "%s", out);
	cr_assert(strstr(out, "cell       b\n"), "%s", out);
	free(out);
	snprintf(want, sizeof want, "shardmapctl: init: store %s already holds version *", uri);
	FAILS(1, want, "init");

	/* etcd -> JSON -> file store: the same map (the version is etcd's revision). */
	char path[600], copy_uri[700];
	snprintf(path, sizeof path, "%s/map.json", tmp_dir);
	free(OK("export", path));
	char *v1 = OK("verify");
	snprintf(copy_uri, sizeof copy_uri, "file:%s/copy", tmp_dir);
	free(OK("init", "--store", copy_uri));
	free(OK("import", path, "--store", copy_uri));
	char *v2 = OK("verify", "--store", copy_uri);
	char *s1 = summary_of(v1), *s2 = summary_of(v2);
	cr_assert_str_eq(s1, s2);
	free(s1);
	free(s2);
	free(v1);
	free(v2);

	concurrent_writers(uri);
}
