/*
 * test_snapshot.c - warm-start snapshots (lib/snapshot.c): save and load round trips of
 * random maps, atomic replacement, and every way a snapshot file can be bad (missing,
 * flipped bytes, truncated, trailing bytes, a delta not from 0, a valid record that breaks
 * an invariant): each is its own error and the map keeps serving what it served.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>

#include "codec.h"
#include "delta_gen.h"
#include "mem.h"
#include "store_file.h"

static shardmap *map_of(uint64_t seed, uint64_t version)
{
	shardmap *m = NULL;
	cr_assert_eq(shardmap_open(&m, NULL), 0);
	shardmap_delta *d = gen_map_delta(seed, version, 4, 50);
	cr_assert_not_null(d);
	shardmap_error why = {0};
	cr_assert_eq(shardmap_apply(m, d, &why), 0, "%s", why.message);
	shardmap_delta_free(d);
	return m;
}

static void write_file(const char *path, const uint8_t *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, buf, len), (ssize_t)len);
	close(fd);
}

static size_t entries(const char *dir)
{
	size_t n = 0;
	DIR *d = opendir(dir);
	cr_assert_not_null(d);
	for (struct dirent *e; (e = readdir(d)) != NULL;)
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

/* Loading path must fail with code and a message containing expect; m stays as it was. */
static void expect_load_fails(shardmap *m, const char *path, int code, const char *expect)
{
	uint64_t v = shardmap_version(m), digest = gen_map_digest(m);
	shardmap_error why = {0};
	int rc = shardmap_snapshot_load(m, path, &why);
	cr_assert_eq(rc, code, "rc %d (%s), wanted %d '%s'", rc, why.message, code, expect);
	cr_assert_eq(why.code, code);
	cr_assert(strstr(why.message, expect) != NULL, "message '%s' lacks '%s'", why.message,
		  expect);
	cr_assert_eq(shardmap_version(m), v);
	cr_assert_eq(gen_map_digest(m), digest);
}

Test(snapshot, save_load_round_trip)
{
	char dir[64], path[96];
	cr_assert_not_null(gen_tmpdir(dir, sizeof dir, "snap"));
	snprintf(path, sizeof path, "%s/warm.snap", dir);
	for (uint64_t seed = 1; seed <= 10; seed++) {
		shardmap *a = map_of(seed, 100 + seed), *b = NULL;
		cr_assert_eq(shardmap_snapshot_save(a, path), 0);
		cr_assert_eq(entries(dir), 1, "temp file left behind");
		cr_assert_eq(shardmap_open(&b, NULL), 0);
		shardmap_error why = {0};
		cr_assert_eq(shardmap_snapshot_load(b, path, &why), 0, "%s", why.message);
		cr_assert_eq(shardmap_version(b), 100 + seed);
		cr_assert_eq(gen_map_digest(b), gen_map_digest(a));
		/* loading replaces whatever b had, whatever its version */
		shardmap *c = map_of(seed + 1000, 5);
		cr_assert_eq(shardmap_snapshot_load(c, path, NULL), 0);
		cr_assert_eq(gen_map_digest(c), gen_map_digest(a));
		shardmap_close(a);
		shardmap_close(b);
		shardmap_close(c);
	}
	gen_rmtree(dir);
}

/* Out of memory at every allocation of a load (the private build's, in the map's memory):
 * each fails with SHARDMAP_ENOMEM, leaks nothing and leaves the map serving; then it loads. */
Test(snapshot, load_fails_cleanly_at_every_allocation)
{
	char dir[64], path[96];
	cr_assert_not_null(gen_tmpdir(dir, sizeof dir, "snap"));
	snprintf(path, sizeof path, "%s/warm.snap", dir);
	shardmap *a = map_of(3, 40), *m = map_of(4, 7);
	cr_assert_eq(shardmap_snapshot_save(a, path), 0);
	uint64_t digest = gen_map_digest(m);
	long live = shardmap__mem_live(), k;
	for (k = 1;; k++) {
		cr_assert_lt(k, 100000, "the load never succeeded");
		shardmap_error why = {0};
		shardmap__mem_fail_after(k);
		int rc = shardmap_snapshot_load(m, path, &why);
		shardmap__mem_fail_after(0);
		if (rc == 0)
			break;
		cr_assert_eq(rc, SHARDMAP_ENOMEM, "k=%ld: %s", k, why.message);
		cr_assert_eq(shardmap__mem_live(), live, "k=%ld: %ld allocations leaked", k,
			     shardmap__mem_live() - live);
		cr_assert_eq(shardmap_version(m), 7);
		cr_assert_eq(gen_map_digest(m), digest);
	}
	cr_assert_gt(k, 100);
	cr_assert_eq(shardmap_version(m), 40);
	cr_assert_eq(gen_map_digest(m), gen_map_digest(a));
	shardmap_close(a);
	shardmap_close(m);
	gen_rmtree(dir);
}

Test(snapshot, bad_arguments_and_empty_map)
{
	shardmap *m = NULL;
	cr_assert_eq(shardmap_open(&m, NULL), 0);
	cr_assert_eq(shardmap_snapshot_save(m, "/tmp/never-written"), SHARDMAP_ENOTREADY);
	cr_assert_eq(shardmap_snapshot_save(NULL, "/tmp/x"), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_snapshot_save(m, ""), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_snapshot_load(m, NULL, NULL), SHARDMAP_EINVAL);
	expect_load_fails(m, "/nonexistent/dir/snap", SHARDMAP_ENOENT, "no such file");
	shardmap *full = map_of(3, 9);
	cr_assert_eq(shardmap_snapshot_save(full, "/nonexistent/dir/snap"), SHARDMAP_EIO);
	shardmap_close(full);
	shardmap_close(m);
}

Test(snapshot, bad_files_leave_the_map_serving)
{
	char dir[64], path[96], bad[96];
	cr_assert_not_null(gen_tmpdir(dir, sizeof dir, "snap"));
	snprintf(path, sizeof path, "%s/good", dir);
	snprintf(bad, sizeof bad, "%s/bad", dir);
	shardmap *src = map_of(11, 40), *m = map_of(12, 7);
	cr_assert_eq(shardmap_snapshot_save(src, path), 0);
	uint8_t *buf = NULL;
	size_t len = 0;
	cr_assert_eq(shardmap__file_read(path, SIZE_MAX, &buf, &len, NULL), 0);

	for (size_t at = 0; at < len; at += len / 37 + 1) {
		buf[at] ^= 0x10;
		write_file(bad, buf, len);
		expect_load_fails(m, bad, SHARDMAP_ECORRUPT, bad);
		buf[at] ^= 0x10;
	}
	buf[len - 1] ^= 1;
	write_file(bad, buf, len);
	expect_load_fails(m, bad, SHARDMAP_ECORRUPT, "checksum mismatch");
	buf[len - 1] ^= 1;
	for (size_t cut = 0; cut < len; cut += len / 29 + 1) {
		write_file(bad, buf, cut);
		expect_load_fails(m, bad, SHARDMAP_ECORRUPT, "truncated");
	}
	uint8_t *longer = malloc(len + 1);
	memcpy(longer, buf, len);
	longer[len] = 'S';
	write_file(bad, longer, len + 1);
	expect_load_fails(m, bad, SHARDMAP_ECORRUPT, "trailing garbage");
	free(longer);

	/* a valid record that is not a whole map */
	shardmap_delta *d = gen_step_delta(3, 4, "x");
	uint8_t *rec;
	size_t rec_len;
	cr_assert_eq(shardmap__codec_encode(d, &rec, &rec_len), 0);
	write_file(bad, rec, rec_len);
	expect_load_fails(m, bad, SHARDMAP_ECORRUPT, "does not start at version 0");
	free(rec);
	shardmap_delta_free(d);

	/* a whole map that breaks an invariant (a shard owned by a cell that does not exist) */
	cr_assert_eq(shardmap_delta_new(0, 2, &d), 0);
	cr_assert_eq(shardmap_delta_put_stream(d, "s", SHARDMAP_HASH_XXH3), 0);
	shardmap_shard sh = {.id = "shardId-000000000000",
			     .start = {0, 0},
			     .end = {UINT64_MAX, UINT64_MAX},
			     .open = 1,
			     .owner_cell = "ghost"};
	cr_assert_eq(shardmap_delta_put_shard(d, "s", &sh), 0);
	cr_assert_eq(shardmap__codec_encode(d, &rec, &rec_len), 0);
	write_file(bad, rec, rec_len);
	shardmap_error why = {0};
	uint64_t v = shardmap_version(m), digest = gen_map_digest(m);
	cr_assert_eq(shardmap_snapshot_load(m, bad, &why), SHARDMAP_ECONFLICT, "%s", why.message);
	cr_assert(strstr(why.message, "ghost") != NULL, "%s", why.message);
	cr_assert_eq(shardmap_version(m), v);
	cr_assert_eq(gen_map_digest(m), digest);
	free(rec);
	shardmap_delta_free(d);

	/* and the good file still loads */
	cr_assert_eq(shardmap_snapshot_load(m, path, NULL), 0);
	cr_assert_eq(gen_map_digest(m), gen_map_digest(src));
	free(buf);
	shardmap_close(src);
	shardmap_close(m);
	gen_rmtree(dir);
}
