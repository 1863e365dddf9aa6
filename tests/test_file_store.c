/*
 * test_file_store.c - the "file:" store (lib/store_file.c) and the store API (lib/store.c):
 * write, version, load and bootstrap; SHARDMAP_ECONFLICT for a stale from_version; a torn
 * journal tail cut at every byte offset of the last record; corrupt snapshots and journals
 * (bootstrap fails with a specific message and the previous map keeps serving); compaction,
 * including a crash between its two renames; following appended records and compactions;
 * and two processes writing to one store at once.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "codec.h"
#include "delta_gen.h"
#include "store_file.h"

/* ---------------------------------------------------------------- helpers */

struct fixture {
	char dir[64];
	char uri[80];
	char snapshot[96], journal[96];
};

static void fixture_init(struct fixture *fx)
{
	cr_assert_not_null(gen_tmpdir(fx->dir, sizeof fx->dir, "store"));
	snprintf(fx->uri, sizeof fx->uri, "file:%s/s", fx->dir);
	snprintf(fx->snapshot, sizeof fx->snapshot, "%s/s/" SHARDMAP__FILE_SNAPSHOT, fx->dir);
	snprintf(fx->journal, sizeof fx->journal, "%s/s/" SHARDMAP__FILE_JOURNAL, fx->dir);
}

static shardmap_store *open_store(const struct fixture *fx)
{
	shardmap_store *s = NULL;
	cr_assert_eq(shardmap_store_open(fx->uri, &s), 0);
	cr_assert_not_null(s);
	return s;
}

static shardmap *open_map(void)
{
	shardmap *m = NULL;
	cr_assert_eq(shardmap_open(&m, NULL), 0);
	return m;
}

static uint64_t store_version(shardmap_store *s)
{
	uint64_t v = 99999;
	cr_assert_eq(shardmap_store_version(s, &v), 0);
	return v;
}

/* The delta that takes the store from v to v+1 in every test: a whole map at 0 -> 1,
 * then small steps. */
static shardmap_delta *delta_at(uint64_t v)
{
	shardmap_delta *d = v == 0 ? gen_map_delta(7, 1, 3, 30) : gen_step_delta(v, v + 1, "t");
	cr_assert_not_null(d);
	return d;
}

static void write_chain(shardmap_store *s, uint64_t from, uint64_t to)
{
	for (uint64_t v = from; v < to; v++) {
		shardmap_delta *d = delta_at(v);
		cr_assert_eq(shardmap_store_write(s, d), 0, "write %llu", (unsigned long long)v);
		shardmap_delta_free(d);
	}
}

/* A fresh store in fx holding versions 0..3 compacted into its snapshot (journal empty). */
static shardmap_store *compacted_store(struct fixture *fx)
{
	fixture_init(fx);
	shardmap_store *s = open_store(fx);
	write_chain(s, 0, 3);
	cr_assert_eq(shardmap__file_store_compact(s, NULL), 0);
	return s;
}

/* The digest of a map made by applying the chain 0 -> to directly. */
static uint64_t expected_digest(uint64_t to)
{
	shardmap *m = open_map();
	for (uint64_t v = 0; v < to; v++) {
		shardmap_delta *d = delta_at(v);
		cr_assert_eq(shardmap_apply(m, d, NULL), 0);
		shardmap_delta_free(d);
	}
	uint64_t digest = gen_map_digest(m);
	shardmap_close(m);
	return digest;
}

static off_t file_size(const char *path)
{
	struct stat st;
	cr_assert_eq(stat(path, &st), 0, "stat %s", path);
	return st.st_size;
}

static void write_file(const char *path, const uint8_t *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, buf, len), (ssize_t)len);
	close(fd);
}

static uint8_t *read_file(const char *path, size_t *len)
{
	uint8_t *buf = NULL;
	cr_assert_eq(shardmap__file_read(path, SIZE_MAX, &buf, len, NULL), 0);
	return buf;
}

/* A route through a reader: proves the map serves (and what). */
static int route_ok(shardmap *m, uint64_t *version)
{
	shardmap_reader *r = NULL;
	shardmap_route route;
	cr_assert_eq(shardmap_reader_open(m, &r), 0);
	shardmap_read_begin(r);
	int rc = shardmap_route_key(r, "stream-0", "key", 3, &route);
	if (rc == 0)
		*version = route.version;
	shardmap_read_end(r);
	shardmap_reader_close(r);
	return rc;
}

/* Bootstrap must fail with code and a message containing expect, and leave m as it was. */
static void expect_bootstrap_fails(shardmap *m, shardmap_store *s, int code, const char *expect)
{
	uint64_t before_v = shardmap_version(m), before_d = gen_map_digest(m), served = 0;
	shardmap_error why = {0};
	int rc = shardmap_bootstrap(m, s, &why);
	cr_assert_eq(rc, code, "rc %d (%s), wanted %d with '%s'", rc, why.message, code, expect);
	cr_assert_eq(why.code, code);
	cr_assert(strstr(why.message, expect) != NULL, "message '%s' lacks '%s'", why.message,
		  expect);
	cr_assert_eq(shardmap_version(m), before_v);
	cr_assert_eq(gen_map_digest(m), before_d);
	if (before_v != 0) {
		cr_assert_eq(route_ok(m, &served), 0);
		cr_assert_eq(served, before_v);
	}
}

/* ---------------------------------------------------------------- opening */

Test(file_store, bad_uris)
{
	struct fixture fx;
	fixture_init(&fx);
	shardmap_store *s = NULL;
	char uri[128];
	cr_assert_eq(shardmap_store_open(NULL, &s), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_store_open("file:", &s), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_store_open("file://host/x", &s), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_store_open("ftp://x", &s), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_store_open("", &s), SHARDMAP_EINVAL);
	snprintf(uri, sizeof uri, "%s/plain", fx.dir);
	write_file(uri, (const uint8_t *)"x", 1);
	snprintf(uri, sizeof uri, "file:%s/plain", fx.dir);
	cr_assert_eq(shardmap_store_open(uri, &s), SHARDMAP_EINVAL); /* not a directory */
	snprintf(uri, sizeof uri, "file:%s/no/such/parent", fx.dir);
	cr_assert_eq(shardmap_store_open(uri, &s), SHARDMAP_EIO);
	cr_assert_null(s);
	/* file:///absolute works */
	snprintf(uri, sizeof uri, "file://%s/abs", fx.dir);
	cr_assert_eq(shardmap_store_open(uri, &s), 0);
	cr_assert_eq(store_version(s), 0);
	shardmap_store_close(s);
	shardmap_store_close(NULL);
	gen_rmtree(fx.dir);
}

Test(file_store, empty_store_bootstraps_nothing)
{
	struct fixture fx;
	fixture_init(&fx);
	shardmap_store *s = open_store(&fx);
	shardmap *m = open_map();
	cr_assert_eq(store_version(s), 0);
	expect_bootstrap_fails(m, s, SHARDMAP_ENOENT, "store is empty");
	cr_assert_eq(shardmap_bootstrap(NULL, s, NULL), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_store_write(s, NULL), SHARDMAP_EINVAL);
	shardmap_close(m);
	shardmap_store_close(s);
	gen_rmtree(fx.dir);
}

/* ---------------------------------------------------------------- write, read, bootstrap */

Test(file_store, write_then_bootstrap)
{
	struct fixture fx;
	fixture_init(&fx);
	shardmap_store *s = open_store(&fx);
	write_chain(s, 0, 6);
	cr_assert_eq(store_version(s), 6);
	shardmap_store_close(s);

	s = open_store(&fx); /* a second opener sees the same store */
	cr_assert_eq(store_version(s), 6);
	shardmap *m = open_map();
	shardmap_error why = {0};
	cr_assert_eq(shardmap_bootstrap(m, s, &why), 0, "%s", why.message);
	cr_assert_eq(shardmap_version(m), 6);
	cr_assert_eq(gen_map_digest(m), expected_digest(6));
	uint64_t served = 0;
	cr_assert_eq(route_ok(m, &served), 0);
	cr_assert_eq(served, 6);
	shardmap_close(m);
	shardmap_store_close(s);
	gen_rmtree(fx.dir);
}

Test(file_store, stale_from_version_conflicts)
{
	struct fixture fx;
	fixture_init(&fx);
	shardmap_store *s = open_store(&fx);
	shardmap_store *other = open_store(&fx);
	write_chain(s, 0, 2);
	off_t size = file_size(fx.journal);
	shardmap_delta *d = delta_at(0);
	cr_assert_eq(shardmap_store_write(s, d), SHARDMAP_ECONFLICT); /* behind */
	shardmap_delta_free(d);
	d = delta_at(5);
	cr_assert_eq(shardmap_store_write(other, d), SHARDMAP_ECONFLICT); /* ahead */
	shardmap_delta_free(d);
	d = delta_at(1); /* what a second control plane planned from 1 */
	cr_assert_eq(shardmap_store_write(other, d), SHARDMAP_ECONFLICT);
	shardmap_delta_free(d);
	cr_assert_eq(file_size(fx.journal), size);
	cr_assert_eq(store_version(other), 2);
	d = delta_at(2); /* the other handle sees the first one's writes */
	cr_assert_eq(shardmap_store_write(other, d), 0);
	shardmap_delta_free(d);
	cr_assert_eq(store_version(s), 3);
	shardmap_store_close(s);
	shardmap_store_close(other);
	gen_rmtree(fx.dir);
}

Test(file_store, invalid_batch_in_store_leaves_map_serving)
{
	/* the store accepts any well-formed delta; one that breaks an invariant fails at
	 * bootstrap with the op named, and the map keeps what it had */
	struct fixture fx;
	fixture_init(&fx);
	shardmap_store *s = open_store(&fx);
	write_chain(s, 0, 2);
	shardmap *m = open_map();
	cr_assert_eq(shardmap_bootstrap(m, s, NULL), 0);
	shardmap_delta *d = NULL;
	cr_assert_eq(shardmap_delta_new(2, 3, &d), 0);
	cr_assert_eq(shardmap_delta_delete_stream(d, "no-such-stream"), 0);
	cr_assert_eq(shardmap_store_write(s, d), 0);
	shardmap_delta_free(d);
	uint64_t v = shardmap_version(m), digest = gen_map_digest(m);
	shardmap_error why = {0};
	int rc = shardmap_bootstrap(m, s, &why);
	cr_assert_neq(rc, 0);
	cr_assert_neq(why.message[0], '\0');
	cr_assert_eq(shardmap_version(m), v);
	cr_assert_eq(gen_map_digest(m), digest);
	shardmap_close(m);
	shardmap_store_close(s);
	gen_rmtree(fx.dir);
}

/* ---------------------------------------------------------------- torn tails */

Test(file_store, torn_tail_cut_at_every_offset_recovers)
{
	struct fixture fx;
	fixture_init(&fx);
	shardmap_store *s = open_store(&fx);
	write_chain(s, 0, 3);
	off_t last_start = file_size(fx.journal);
	write_chain(s, 3, 4);
	shardmap_store_close(s);
	size_t len;
	uint8_t *journal = read_file(fx.journal, &len);
	cr_assert_gt(len, (size_t)last_start);
	uint64_t want = expected_digest(3);

	for (size_t cut = (size_t)last_start; cut < len; cut++) {
		write_file(fx.journal, journal, cut);
		s = open_store(&fx); /* recovery happens here */
		cr_assert_eq(file_size(fx.journal), last_start, "cut %zu", cut);
		struct shardmap__file_store_info info;
		cr_assert_eq(shardmap__file_store_info(s, &info, NULL), 0);
		cr_assert_eq(info.version, 3, "cut %zu", cut);
		cr_assert_eq(info.torn_tails, cut > (size_t)last_start ? 1 : 0, "cut %zu", cut);
		cr_assert_eq(info.torn_bytes, cut - (size_t)last_start);
		shardmap *m = open_map();
		cr_assert_eq(shardmap_bootstrap(m, s, NULL), 0, "cut %zu", cut);
		cr_assert_eq(shardmap_version(m), 3);
		cr_assert_eq(gen_map_digest(m), want);
		shardmap_close(m);
		/* and the store takes the lost write again */
		write_chain(s, 3, 4);
		cr_assert_eq(file_size(fx.journal), (off_t)len);
		shardmap_store_close(s);
	}
	free(journal);
	gen_rmtree(fx.dir);
}

Test(file_store, writer_cuts_a_torn_tail_left_while_open)
{
	/* a writer that died mid-append while this handle was open */
	struct fixture fx;
	fixture_init(&fx);
	shardmap_store *s = open_store(&fx);
	write_chain(s, 0, 2);
	size_t len;
	uint8_t *journal = read_file(fx.journal, &len);
	int fd = open(fx.journal, O_WRONLY | O_APPEND);
	cr_assert_eq(write(fd, journal, 10), 10); /* half a header */
	close(fd);
	write_chain(s, 2, 3);
	cr_assert_eq(store_version(s), 3);
	shardmap *m = open_map();
	cr_assert_eq(shardmap_bootstrap(m, s, NULL), 0);
	cr_assert_eq(shardmap_version(m), 3);
	shardmap_close(m);
	free(journal);
	shardmap_store_close(s);
	gen_rmtree(fx.dir);
}

/* ---------------------------------------------------------------- corruption */

Test(file_store, corrupt_journal_fails_bootstrap_and_keeps_map)
{
	struct fixture fx;
	fixture_init(&fx);
	shardmap_store *s = open_store(&fx);
	write_chain(s, 0, 2);
	off_t second = file_size(fx.journal);
	write_chain(s, 2, 4);
	shardmap *m = open_map();
	cr_assert_eq(shardmap_bootstrap(m, s, NULL), 0);
	cr_assert_eq(shardmap_version(m), 4);
	shardmap_store_close(s);

	size_t len;
	uint8_t *journal = read_file(fx.journal, &len);
	struct {
		off_t at;
		const char *expect;
	} cases[] = {
	    {second + 0, "bad magic"},
	    {second + 4, "unsupported format version"},
	    {second + 9, "header check mismatch"},
	    {second + 30, "checksum mismatch"},
	    {(off_t)len - 1, "checksum mismatch"}, /* the last record's checksum */
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		journal[cases[i].at] ^= 0x40;
		write_file(fx.journal, journal, len);
		s = open_store(&fx); /* opens: corruption is not a torn tail, nothing is cut */
		cr_assert_eq(file_size(fx.journal), (off_t)len);
		expect_bootstrap_fails(m, s, SHARDMAP_ECORRUPT, cases[i].expect);
		expect_bootstrap_fails(m, s, SHARDMAP_ECORRUPT, "journal");
		/* a corrupt store refuses writes */
		shardmap_delta *d = delta_at(4);
		cr_assert_eq(shardmap_store_write(s, d), SHARDMAP_ECORRUPT);
		shardmap_delta_free(d);
		shardmap_store_close(s);
		journal[cases[i].at] ^= 0x40;
	}
	/* a record out of order: the journal's records swapped */
	write_file(fx.journal, journal + second, len - (size_t)second);
	s = open_store(&fx);
	expect_bootstrap_fails(m, s, SHARDMAP_ECORRUPT,
			       "goes from version 2 to 3, but the store is at 0");
	shardmap_store_close(s);
	free(journal);
	shardmap_close(m);
	gen_rmtree(fx.dir);
}

Test(file_store, corrupt_snapshot_fails_bootstrap_and_keeps_map)
{
	struct fixture fx;
	shardmap_store *s = compacted_store(&fx);
	shardmap *m = open_map();
	cr_assert_eq(shardmap_bootstrap(m, s, NULL), 0);
	shardmap_store_close(s);
	size_t len;
	uint8_t *snap = read_file(fx.snapshot, &len);

	snap[0] = 'X';
	write_file(fx.snapshot, snap, len);
	s = open_store(&fx);
	expect_bootstrap_fails(m, s, SHARDMAP_ECORRUPT, "bad magic");
	expect_bootstrap_fails(m, s, SHARDMAP_ECORRUPT, "snapshot");
	shardmap_store_close(s);
	snap[0] = 'S';

	snap[4] = 9;
	write_file(fx.snapshot, snap, len);
	s = open_store(&fx);
	expect_bootstrap_fails(m, s, SHARDMAP_ECORRUPT, "unsupported format version 9");
	shardmap_store_close(s);
	snap[4] = 1;

	snap[len / 2] ^= 1;
	write_file(fx.snapshot, snap, len);
	s = open_store(&fx);
	expect_bootstrap_fails(m, s, SHARDMAP_ECORRUPT, "checksum mismatch");
	shardmap_store_close(s);
	snap[len / 2] ^= 1;

	write_file(fx.snapshot, snap, len - 5);
	s = open_store(&fx);
	expect_bootstrap_fails(m, s, SHARDMAP_ECORRUPT, "truncated");
	shardmap_store_close(s);

	uint8_t *longer = malloc(len + 3);
	memcpy(longer, snap, len);
	memcpy(longer + len, "abc", 3);
	write_file(fx.snapshot, longer, len + 3);
	s = open_store(&fx);
	expect_bootstrap_fails(m, s, SHARDMAP_ECORRUPT, "trailing garbage");
	shardmap_store_close(s);

	/* intact again: bootstrap works */
	write_file(fx.snapshot, snap, len);
	s = open_store(&fx);
	cr_assert_eq(shardmap_bootstrap(m, s, NULL), 0);
	shardmap_store_close(s);
	free(longer);
	free(snap);
	shardmap_close(m);
	gen_rmtree(fx.dir);
}

/* Opening reads only the snapshot's first bytes (its version); a body that does not check
 * out is found by whatever reads the whole record, and nothing is written onto it. */
Test(file_store, corrupt_snapshot_body_refuses_writes_after_a_cheap_open)
{
	struct fixture fx;
	shardmap_store *s = compacted_store(&fx);
	shardmap_store_close(s);
	size_t len, jlen = (size_t)file_size(fx.journal);
	uint8_t *snap = read_file(fx.snapshot, &len);
	snap[len / 2] ^= 1;
	write_file(fx.snapshot, snap, len);

	s = open_store(&fx);
	shardmap *m = open_map();
	expect_bootstrap_fails(m, s, SHARDMAP_ECORRUPT, "checksum mismatch");
	uint64_t v = 0;
	cr_assert_eq(shardmap_store_version(s, &v), SHARDMAP_ECORRUPT);
	shardmap_delta *d = delta_at(3);
	cr_assert_eq(shardmap_store_write(s, d), SHARDMAP_ECORRUPT);
	cr_assert_eq((size_t)file_size(fx.journal), jlen); /* nothing was appended */
	struct shardmap__file_store_info info;
	shardmap_error why = {0};
	cr_assert_eq(shardmap__file_store_info(s, &info, &why), SHARDMAP_ECORRUPT);
	cr_assert(strstr(why.message, "checksum mismatch") != NULL, "%s", why.message);
	shardmap_store_close(s);

	/* repaired: the same handle kind writes and bootstraps again */
	snap[len / 2] ^= 1;
	write_file(fx.snapshot, snap, len);
	s = open_store(&fx);
	cr_assert_eq(shardmap_store_write(s, d), 0);
	cr_assert_eq(store_version(s), 4);
	cr_assert_eq(shardmap_bootstrap(m, s, NULL), 0);
	cr_assert_eq(shardmap_version(m), 4);
	shardmap_store_close(s);

	/* a snapshot cut short or followed by garbage is seen from its length alone */
	write_file(fx.snapshot, snap, len - 3);
	s = open_store(&fx);
	cr_assert_eq(shardmap__file_store_info(s, &info, &why), SHARDMAP_ECORRUPT);
	cr_assert(strstr(why.message, "truncated") != NULL, "%s", why.message);
	expect_bootstrap_fails(m, s, SHARDMAP_ECORRUPT, "truncated");
	shardmap_store_close(s);
	shardmap_delta_free(d);
	free(snap);
	shardmap_close(m);
	gen_rmtree(fx.dir);
}

/* ---------------------------------------------------------------- compaction */

Test(file_store, compaction_folds_the_journal)
{
	struct fixture fx;
	fixture_init(&fx);
	shardmap_store *s = open_store(&fx);
	cr_assert_eq(shardmap__file_store_compact(s, NULL), 0); /* empty: nothing to do */
	write_chain(s, 0, 5);
	shardmap_error why = {0};
	cr_assert_eq(shardmap__file_store_compact(s, &why), 0, "%s", why.message);
	cr_assert_eq(file_size(fx.journal), 0);
	cr_assert_gt(file_size(fx.snapshot), 0);
	cr_assert_eq(store_version(s), 5);
	struct shardmap__file_store_info info;
	cr_assert_eq(shardmap__file_store_info(s, &info, NULL), 0);
	cr_assert_eq(info.snapshot_version, 5);

	shardmap *m = open_map();
	cr_assert_eq(shardmap_bootstrap(m, s, NULL), 0);
	cr_assert_eq(shardmap_version(m), 5);
	cr_assert_eq(gen_map_digest(m), expected_digest(5));
	shardmap_close(m);

	/* writes go on from the snapshot's version, and compact again */
	shardmap_delta *d = delta_at(4);
	cr_assert_eq(shardmap_store_write(s, d), SHARDMAP_ECONFLICT);
	shardmap_delta_free(d);
	write_chain(s, 5, 8);
	cr_assert_eq(shardmap__file_store_compact(s, NULL), 0);
	write_chain(s, 8, 9);
	m = open_map();
	cr_assert_eq(shardmap_bootstrap(m, s, NULL), 0);
	cr_assert_eq(shardmap_version(m), 9);
	cr_assert_eq(gen_map_digest(m), expected_digest(9));
	shardmap_close(m);
	shardmap_store_close(s);
	gen_rmtree(fx.dir);
}

Test(file_store, compaction_crash_between_renames_reads_the_same)
{
	/* a crash after the snapshot's rename and before the journal's: the old journal's
	 * records are all inside the new snapshot and must be skipped */
	struct fixture fx;
	fixture_init(&fx);
	shardmap_store *s = open_store(&fx);
	write_chain(s, 0, 4);
	size_t len;
	uint8_t *old_journal = read_file(fx.journal, &len);
	cr_assert_eq(shardmap__file_store_compact(s, NULL), 0);
	shardmap_store_close(s);
	write_file(fx.journal, old_journal, len);
	/* and a temp file the crashed compaction left */
	char tmp[128];
	snprintf(tmp, sizeof tmp, "%s.tmp.AbC123", fx.snapshot);
	write_file(tmp, (const uint8_t *)"junk", 4);

	s = open_store(&fx);
	cr_assert_eq(access(tmp, F_OK), -1, "stale temp file left behind");
	cr_assert_eq(store_version(s), 4);
	shardmap *m = open_map();
	cr_assert_eq(shardmap_bootstrap(m, s, NULL), 0);
	cr_assert_eq(shardmap_version(m), 4);
	cr_assert_eq(gen_map_digest(m), expected_digest(4));
	write_chain(s, 4, 6);
	cr_assert_eq(shardmap_bootstrap(m, s, NULL), 0);
	cr_assert_eq(shardmap_version(m), 6);
	cr_assert_eq(gen_map_digest(m), expected_digest(6));
	/* compaction with only stale records left replaces the journal too */
	cr_assert_eq(shardmap__file_store_compact(s, NULL), 0);
	cr_assert_eq(file_size(fx.journal), 0);
	cr_assert_eq(store_version(s), 6);
	shardmap_close(m);
	free(old_journal);
	shardmap_store_close(s);
	gen_rmtree(fx.dir);
}

Test(file_store, compact_refuses_other_stores_and_corrupt_ones)
{
	struct fixture fx;
	fixture_init(&fx);
	shardmap_error why = {0};
	cr_assert_eq(shardmap__file_store_compact(NULL, &why), SHARDMAP_EINVAL);
	shardmap_store *s = open_store(&fx);
	write_chain(s, 0, 3);
	size_t len;
	uint8_t *journal = read_file(fx.journal, &len);
	journal[len - 2] ^= 1;
	write_file(fx.journal, journal, len);
	cr_assert_eq(shardmap__file_store_compact(s, &why), SHARDMAP_ECORRUPT);
	cr_assert(strstr(why.message, "checksum mismatch") != NULL, "%s", why.message);
	cr_assert_eq(access(fx.snapshot, F_OK), -1); /* nothing was written */
	free(journal);
	shardmap_store_close(s);
	gen_rmtree(fx.dir);
}

/* ---------------------------------------------------------------- following */

Test(file_store, follow_applies_appended_records_and_compactions)
{
	struct fixture fx;
	fixture_init(&fx);
	shardmap_store *writer = open_store(&fx), *watched = open_store(&fx);
	shardmap *m = open_map();
	write_chain(writer, 0, 2);
	cr_assert_eq(shardmap_follow(m, watched, NULL), 0);
	cr_assert_eq(shardmap_follow(m, watched, NULL), SHARDMAP_EBUSY);
	cr_assert(gen_wait_version(m, 2, 30), "follower never reached 2");

	write_chain(writer, 2, 5);
	cr_assert(gen_wait_version(m, 5, 30), "follower never reached 5");
	cr_assert_eq(gen_map_digest(m), expected_digest(5));

	/* a compaction replaces both files; the follower carries on */
	cr_assert_eq(shardmap__file_store_compact(writer, NULL), 0);
	write_chain(writer, 5, 7);
	cr_assert(gen_wait_version(m, 7, 30), "follower lost after compaction");
	cr_assert_eq(gen_map_digest(m), expected_digest(7));

	struct shardmap__ext_stats *ext = shardmap__ext(m);
	cr_assert_eq(atomic_load(&ext->threads), 1);
	cr_assert_geq(atomic_load(&ext->store_version), 7);
	cr_assert_gt(atomic_load(&ext->store_requests), 0);
	cr_assert_gt(atomic_load(&ext->store_last_contact_ns), 0);
	shardmap_unfollow(m);
	cr_assert_eq(atomic_load(&ext->threads), 0);
	shardmap_unfollow(m); /* nothing attached: no-op */

	/* records the map needs are compacted away while it is not following: it must
	 * bootstrap from the snapshot when it follows again */
	write_chain(writer, 7, 10);
	cr_assert_eq(shardmap__file_store_compact(writer, NULL), 0);
	cr_assert_eq(shardmap_follow(m, watched, NULL), 0);
	cr_assert(gen_wait_version(m, 10, 30), "follower did not re-bootstrap");
	cr_assert_eq(gen_map_digest(m), expected_digest(10));
	shardmap_unfollow(m);
	shardmap_close(m);
	shardmap_store_close(writer);
	shardmap_store_close(watched);
	gen_rmtree(fx.dir);
}

Test(file_store, follow_catch_up_and_close_stop_the_helper)
{
	struct fixture fx;
	fixture_init(&fx);
	shardmap_store *s = open_store(&fx);
	shardmap *m = open_map();
	write_chain(s, 0, 1);
	cr_assert_eq(shardmap_follow(m, s, NULL), 0);
	cr_assert(gen_wait_version(m, 1, 30));
	cr_assert_eq(shardmap_hint_stale(m, "stream-0", "x", 0), SHARDMAP_ESTALE);
	cr_assert_eq(shardmap_hint_stale(m, "stream-0", "x", 1), 0); /* wakes the helper */
	write_chain(s, 1, 2);
	cr_assert(gen_wait_version(m, 2, 30));
	shardmap_close(m); /* stops the follower itself */
	shardmap_store_close(s);
	gen_rmtree(fx.dir);
}

/* ---------------------------------------------------------------- two processes */

#define WRITES_PER_PROCESS 60

/* One writer process: append WRITES_PER_PROCESS deltas, each planned from the version it
 * last saw, retrying from the new version after every SHARDMAP_ECONFLICT. */
static int writer_process(const char *uri, const char *tag, int go_fd, int result_fd)
{
	char c;
	if (read(go_fd, &c, 1) != 1) /* start together */
		return 10;
	shardmap_store *s = NULL;
	if (shardmap_store_open(uri, &s) != 0)
		return 11;
	unsigned done = 0, conflicts = 0;
	while (done < WRITES_PER_PROCESS) {
		uint64_t v;
		if (shardmap_store_version(s, &v) != 0)
			return 12;
		/* the first delta of the store must be a whole map: both race for it */
		shardmap_delta *d =
		    v == 0 ? gen_map_delta(3, 1, 1, 2) : gen_step_delta(v, v + 1, tag);
		int rc = shardmap_store_write(s, d);
		shardmap_delta_free(d);
		if (rc == SHARDMAP_ECONFLICT) {
			conflicts++;
			continue;
		}
		if (rc != 0)
			return 13;
		if (v > 0)
			done++;
	}
	shardmap_store_close(s);
	return write(result_fd, &conflicts, sizeof conflicts) == sizeof conflicts ? 0 : 14;
}

struct collected {
	uint64_t next; /* the version the next delta must start from */
	unsigned per_tag[2];
	unsigned switches; /* consecutive deltas from different writers */
	int last, bad;
};

static int collect(void *ctx, const shardmap_delta *d)
{
	struct collected *c = ctx;
	if (d->from_version != c->next)
		c->bad = 1;
	c->next = d->to_version;
	if (d->from_version > 0) {
		if (d->n_ops != 1 || d->ops[0].kind != SHARDMAP__OP_PUT_CELL) {
			c->bad = 1;
			return 0;
		}
		int tag = d->ops[0].endpoints[0][0] - 'a';
		if (tag != 0 && tag != 1) {
			c->bad = 1;
			return 0;
		}
		c->per_tag[tag]++;
		c->switches += c->last >= 0 && tag != c->last;
		c->last = tag;
	}
	return 0;
}

Test(file_store, two_processes_write_one_store)
{
	struct fixture fx;
	fixture_init(&fx);
	int go[2], results[2];
	cr_assert_eq(pipe(go), 0);
	cr_assert_eq(pipe(results), 0);
	pid_t pids[2];
	const char *tags[2] = {"a", "b"};
	for (int i = 0; i < 2; i++) {
		pids[i] = fork();
		cr_assert_geq(pids[i], 0);
		if (pids[i] == 0) {
			close(go[1]);
			_exit(writer_process(fx.uri, tags[i], go[0], results[1]));
		}
	}
	close(go[0]);
	cr_assert_eq(write(go[1], "go", 2), 2);
	close(go[1]);
	for (int i = 0; i < 2; i++) {
		int status = 0;
		cr_assert_eq(waitpid(pids[i], &status, 0), pids[i]);
		cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "writer %d: status %d", i,
			  status);
	}
	unsigned conflicts[2] = {0, 0};
	cr_assert_eq(read(results[0], conflicts, sizeof conflicts), (ssize_t)sizeof conflicts);
	close(results[0]);
	close(results[1]);
	cr_log_info("conflicts retried: %u and %u", conflicts[0], conflicts[1]);
	shardmap_store *s = open_store(&fx);
	struct shardmap__file_store_info info;
	cr_assert_eq(shardmap__file_store_info(s, &info, NULL), 0);
	cr_assert_eq(info.torn_tails, 0);
	cr_assert_eq(info.version, 1 + 2 * WRITES_PER_PROCESS);
	struct collected c = {.last = -1};
	shardmap_error why = {0};
	cr_assert_eq(s->ops->load(s, collect, &c, &why), 0, "%s", why.message);
	cr_assert_eq(c.bad, 0);
	cr_assert_eq(c.next, 1 + 2 * WRITES_PER_PROCESS);
	cr_assert_eq(c.per_tag[0], WRITES_PER_PROCESS);
	cr_assert_eq(c.per_tag[1], WRITES_PER_PROCESS);
	cr_log_info("the writers took turns %u times", c.switches);
	shardmap *m = open_map();
	cr_assert_eq(shardmap_bootstrap(m, s, &why), 0, "%s", why.message);
	cr_assert_eq(shardmap_version(m), 1 + 2 * WRITES_PER_PROCESS);
	shardmap_close(m);
	shardmap_store_close(s);
	gen_rmtree(fx.dir);
}
