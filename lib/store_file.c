/*
 * store_file.c - the "file:PATH" store, the embedded authoritative store: for control planes
 * (write, version, compaction) on one host and for maps that load and follow it.
 *
 * PATH is a directory (created if missing) holding:
 *   snapshot  one codec record (docs/codec.md): the whole map as a delta from 0 to S;
 *             absent until the first compaction (S = 0).
 *   journal   codec records appended by writers, each from the version the previous one
 *             reached (the first from S). Records with to_version <= S are left over from
 *             a compaction that crashed before it replaced the journal: they are skipped.
 *   lock      the target of flock(2): writers take it exclusively, loaders shared.
 * The store's version is the last journal record's to_version, else S, else 0.
 *
 * Writers. shardmap_store_write encodes the delta, takes the exclusive lock (a pthread
 * mutex first, because flock is per open file description and the handle's threads share
 * one), re-reads whatever other processes appended since it last looked (only the new
 * bytes, checked with shardmap__codec_peek), refuses the delta with SHARDMAP_ECONFLICT
 * unless its from_version is that version, appends it with pwrite and fdatasyncs the
 * journal before releasing the lock. Fsync policy: every successful write is durable when
 * the call returns (one fdatasync per write: it also persists the file's new length); a
 * crash during a write leaves at most a torn last record, which the next opener or writer
 * cuts off, so a write that did not return 0 may or may not survive, and one that did
 * always does. Directory entries are fsynced when the store creates or renames files.
 *
 * Torn tails. A record whose header checks out but whose bytes run past the end of the
 * journal (or a header cut short) can only be a write that died half-way: under the
 * exclusive lock no writer is active, so opening (and every write) truncates it back to the
 * last whole record, fsyncs, and counts it (shardmap__file_store_info: torn_tails,
 * torn_bytes). A complete record that fails its checks is corruption, not a torn tail: it is
 * never cut; loads and writes report it (SHARDMAP_ECORRUPT, with the offset) until an
 * operator repairs the store. This relies on the file system extending a file only with
 * written data (ext4 and xfs in their default modes), and the header check (codec.md) makes
 * sure a corrupt length is not mistaken for a torn tail.
 *
 * Compaction (shardmap__file_store_compact), all under the exclusive lock:
 *   1. build the current map privately from snapshot + journal (version V);
 *   2. write it as one record to a temp file, fsync, rename over "snapshot", fsync the dir;
 *   3. write an empty temp file, fsync, rename over "journal", fsync the dir.
 * A crash before 2's rename leaves the old snapshot and journal (a stale temp file is
 * removed by the next open). Between 2 and 3 the new snapshot says V and every old journal
 * record has to_version <= V, so loading skips them: the store still reads as V. After 3 it
 * is snapshot V plus an empty journal. Both renames are atomic and durable before the next
 * step begins, so every prefix of the sequence reads as the same version V. Files are
 * replaced, never truncated or rewritten in place, so a loader or follower holding the old
 * files' descriptors keeps reading a consistent old pair.
 *
 * Loading opens both files and reads the (small) journal under the shared lock, then reads
 * the snapshot after releasing it (a snapshot is never modified, only replaced), into a
 * huge-page buffer that the snapshot is decoded in place in (codec.h). Opening a store and a
 * follower's passes learn the snapshot's version from its first bytes and its length alone
 * (snapshot_version): the loader checks the whole record's checksum when it decodes it, and
 * writers, compaction and health reports check it before they rely on it, so a million-shard
 * snapshot is read once per bootstrap, not twice.
 *
 * Following: ONE helper thread per follower (documented in shardmap.h; shardmap_follow's
 * pool argument is not used by this store, whose only I/O is local). The thread waits on
 * inotify events for the directory (1 s timeout as a safety net, 100 ms polling when inotify
 * is unavailable) and an eventfd (stop and catch-up requests). Each pass: bootstrap if the
 * map is older than the snapshot (a compaction removed records it needs); when the journal
 * was replaced, drain the old one then continue at offset 0 of the new one; then apply every
 * whole record past the map's version. A record that does not apply (SHARDMAP_EGAP, or any
 * other failure) triggers a bootstrap from the store, retried with backoff if it fails.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "codec.h"
#include "mem.h"
#include "store_file.h"

#define FOLLOW_WAIT_MS	      1000	     /* safety-net wake-up with inotify */
#define FOLLOW_POLL_MS	      100	     /* polling period without inotify */
#define RESYNC_BACKOFF_MIN_NS 100000000ull   /* 100 ms */
#define RESYNC_BACKOFF_MAX_NS 10000000000ull /* 10 s */

/* What identifies one version of a file: replaced files get a new inode (or, if the inode
 * number is reused, a new change time). */
struct file_id {
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec ctime;
};

/* What a handle knows of the snapshot file: which file, its version, and whether its whole
 * record was checked (else only its header, versions and length). */
struct snapshot_seen {
	struct file_id id;
	uint64_t version;
	int verified;
};

struct file_store {
	struct shardmap_store base; /* first: the store interface */
	char *dir, *snapshot, *journal, *lock;
	int lock_fd;
	/* Serialises this handle's users of lock_fd (flock locks belong to the open file
	 * description, which all threads of the handle share) and guards the view below. */
	pthread_mutex_t mu;
	/* The writers' view of the store, trusted only after sync_locked re-validated it
	 * with the exclusive lock held. */
	int journal_fd;		   /* O_RDWR, -1 until opened */
	struct file_id journal_id; /* dev/ino of journal_fd */
	uint64_t journal_end;	   /* end of the last whole record checked */
	int journal_started;	   /* a record past the snapshot has been seen */
	uint64_t version;	   /* the store's version at journal_end */
	struct snapshot_seen snap; /* the snapshot file and its version */
	/* Statistics (relaxed: counters only, no ordering). */
	_Atomic uint64_t torn_tails, torn_bytes;
};

/* ---------------------------------------------------------------- small file helpers */

static int io_error(shardmap_error *why, const char *what, const char *path)
{
	return shardmap__error_set(why, SHARDMAP_EIO, SIZE_MAX, "%s %s: %s", what, path,
				   strerror(errno));
}

static char *path_join(const char *dir, const char *name)
{
	char *p = NULL;
	return asprintf(&p, "%s/%s", dir, name) < 0 ? NULL : p;
}

static int same_file(const struct file_id *a, const struct file_id *b)
{
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	       a->ctime.tv_sec == b->ctime.tv_sec && a->ctime.tv_nsec == b->ctime.tv_nsec;
}

static struct file_id file_id_of(const struct stat *st)
{
	return (struct file_id){st->st_dev, st->st_ino, st->st_size, st->st_ctim};
}

/* fsync the directory holding path (makes creates and renames in it durable). */
static int fsync_parent(const char *path)
{
	char *copy = strdup(path);
	if (copy == NULL)
		return SHARDMAP_ENOMEM;
	int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	free(copy);
	if (fd < 0)
		return SHARDMAP_EIO;
	int rc = fsync(fd) == 0 ? SHARDMAP_OK : SHARDMAP_EIO;
	close(fd);
	return rc;
}

/* Read len bytes at off (fewer only at end of file). Returns the count or -1. */
static ssize_t pread_full(int fd, uint8_t *buf, size_t len, uint64_t off)
{
	size_t got = 0;
	while (got < len) {
		ssize_t n = pread(fd, buf + got, len - got, (off_t)(off + got));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
}

static int pwrite_full(int fd, const uint8_t *buf, size_t len, uint64_t off)
{
	size_t put = 0;
	while (put < len) {
		ssize_t n = pwrite(fd, buf + put, len - put, (off_t)(off + put));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		put += (size_t)n;
	}
	return 0;
}

/* Read fd from offset off to its end into a buffer sized by the file: malloc'ed, or for a
 * snapshot (big) from shardmap__big_alloc (free it with shardmap__big_free). */
static int read_from(int fd, uint64_t off, size_t max, const char *path, int big, uint8_t **buf,
		     size_t *len, shardmap_error *why)
{
	struct stat st;
	if (fstat(fd, &st) != 0)
		return io_error(why, "cannot stat", path);
	uint64_t size = (uint64_t)st.st_size;
	*buf = NULL;
	*len = 0;
	if (size <= off)
		return SHARDMAP_OK;
	if (size - off > max)
		return shardmap__error_set(why, SHARDMAP_ECORRUPT, SIZE_MAX,
					   "%s: %" PRIu64 " bytes, more than a record can hold",
					   path, size - off);
	size_t want = (size_t)(size - off);
	uint8_t *b = big ? shardmap__big_alloc(want) : malloc(want);
	if (b == NULL)
		return shardmap__error_set(why, SHARDMAP_ENOMEM, SIZE_MAX,
					   "out of memory reading %s", path);
	ssize_t n = pread_full(fd, b, want, off);
	if (n < 0) {
		int rc = io_error(why, "cannot read", path);
		if (big)
			shardmap__big_free(b);
		else
			free(b);
		return rc;
	}
	*buf = b;
	*len = (size_t)n;
	return SHARDMAP_OK;
}

static int file_read(const char *path, size_t max, int big, uint8_t **buf, size_t *len,
		     shardmap_error *why)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT)
		return shardmap__error_set(why, SHARDMAP_ENOENT, SIZE_MAX, "%s: no such file",
					   path);
	if (fd < 0)
		return io_error(why, "cannot open", path);
	int rc = read_from(fd, 0, max, path, big, buf, len, why);
	close(fd);
	return rc;
}

int shardmap__file_read(const char *path, size_t max, uint8_t **buf, size_t *len,
			shardmap_error *why)
{
	return file_read(path, max, 0, buf, len, why);
}

int shardmap__snapshot_read(const char *path, uint8_t **buf, size_t *len, shardmap_error *why)
{
	return file_read(path, SHARDMAP__SNAPSHOT_MAX_BYTES, 1, buf, len, why);
}

int shardmap__file_replace(const char *path, const void *buf, size_t len)
{
	char *tmp = NULL;
	if (asprintf(&tmp, "%s.tmp.XXXXXX", path) < 0)
		return SHARDMAP_ENOMEM;
	int fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		free(tmp);
		return SHARDMAP_EIO;
	}
	int ok = fchmod(fd, 0644) == 0 && pwrite_full(fd, buf, len, 0) == 0 && fsync(fd) == 0;
	ok = close(fd) == 0 && ok;
	ok = ok && rename(tmp, path) == 0;
	if (!ok)
		unlink(tmp);
	free(tmp);
	if (!ok)
		return SHARDMAP_EIO;
	return fsync_parent(path);
}

/* ---------------------------------------------------------------- the snapshot file */

/* Check the snapshot at fd (st its stat): the whole record when verify, else only what its
 * first bytes and its length say (a loader checks the rest when it decodes it). */
static int snapshot_check(int fd, const struct stat *st, const char *path, int verify,
			  uint64_t *version, shardmap_error *why)
{
	uint8_t head[SHARDMAP__CODEC_HEAD_BYTES], *buf = NULL;
	size_t len, used = 0;
	uint64_t from = 0, to = 0;
	shardmap_error e = {0};
	int rc;
	if (verify) {
		rc = read_from(fd, 0, SHARDMAP__SNAPSHOT_MAX_BYTES, path, 1, &buf, &len, why);
		if (rc != 0)
			return rc;
		rc = shardmap__codec_peek(buf, len, &from, &to, &used, &e);
		shardmap__big_free(buf);
	} else {
		ssize_t n = pread_full(fd, head, sizeof head, 0);
		if (n < 0)
			return io_error(why, "cannot read", path);
		len = (size_t)st->st_size;
		rc = shardmap__codec_peek_head(head, (size_t)n, &from, &to, &used, &e);
		if (rc == 0 && used > len) /* the record runs past the end of the file */
			rc = shardmap__error_set(&e, SHARDMAP_ENOENT, SIZE_MAX,
						 "incomplete record: %zu of %zu bytes", len, used);
	}
	if (rc == SHARDMAP_ENOENT)
		return shardmap__error_set(why, SHARDMAP_ECORRUPT, SIZE_MAX,
					   "snapshot %s: truncated (%s)", path, e.message);
	if (rc != 0)
		return shardmap__error_set(why, rc, SIZE_MAX, "snapshot %s: %s", path, e.message);
	if (used != len)
		return shardmap__error_set(why, SHARDMAP_ECORRUPT, SIZE_MAX,
					   "snapshot %s: %zu bytes of trailing garbage after the "
					   "record",
					   path, len - used);
	if (from != 0)
		return shardmap__error_set(why, SHARDMAP_ECORRUPT, SIZE_MAX,
					   "snapshot %s: starts at version %" PRIu64 ", not 0",
					   path, from);
	*version = to;
	return SHARDMAP_OK;
}

/* Bring *seen up to date with the snapshot file at path, reading it only if it is another
 * file than the one *seen describes (or, when verify, if that one was not fully checked).
 * A store learns a big snapshot's version from its first bytes (verify 0: opening, a
 * follower's pass); writers, compaction and health reports check the whole record first
 * (verify 1), so that nothing is written onto a store whose snapshot is corrupt. No file:
 * version 0. Returns 0, SHARDMAP_ECORRUPT, SHARDMAP_EIO, SHARDMAP_ENOMEM; on error *seen is
 * left as it was. */
static int snapshot_version(const char *path, struct snapshot_seen *seen, int verify,
			    shardmap_error *why)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT) {
		*seen = (struct snapshot_seen){.verified = 1};
		return SHARDMAP_OK;
	}
	if (fd < 0)
		return io_error(why, "cannot open", path);
	if (fstat(fd, &st) != 0) {
		close(fd);
		return io_error(why, "cannot stat", path);
	}
	struct file_id id = file_id_of(&st);
	int rc = SHARDMAP_OK;
	if (!same_file(&id, &seen->id) || (verify && !seen->verified)) {
		uint64_t version = 0;
		rc = snapshot_check(fd, &st, path, verify, &version, why);
		if (rc == 0)
			*seen = (struct snapshot_seen){id, version, verify};
	}
	close(fd);
	return rc;
}

/* ---------------------------------------------------------------- walking a journal */

/* A walk over journal bytes enforcing the chain rule: skip leading records already folded
 * into the snapshot, then each record must start where the previous one ended. */
struct journal_walk {
	const uint8_t *buf;
	size_t len, at;
	uint64_t base;	   /* file offset of buf[0], for messages */
	uint64_t snapshot; /* the snapshot's version */
	uint64_t version;  /* the version reached so far */
	int started;	   /* a record past the snapshot was accepted */
	const char *path;
};

/* The next record to use: 1 (and *rec, *rec_len); 0 at the end of the whole records
 * (w->at < w->len then means an incomplete last record); or a negative error. */
static int journal_next(struct journal_walk *w, const uint8_t **rec, size_t *rec_len,
			shardmap_error *why)
{
	while (w->at < w->len) {
		uint64_t from = 0, to = 0;
		size_t used = 0;
		shardmap_error e = {0};
		int rc =
		    shardmap__codec_peek(w->buf + w->at, w->len - w->at, &from, &to, &used, &e);
		if (rc == SHARDMAP_ENOENT)
			return 0;
		if (rc != 0)
			return shardmap__error_set(why, rc, SIZE_MAX,
						   "journal %s offset %" PRIu64 ": %s", w->path,
						   w->base + w->at, e.message);
		if (!w->started && to <= w->snapshot) {
			w->at += used; /* already in the snapshot (compaction crashed half-way) */
			continue;
		}
		if (from != w->version)
			return shardmap__error_set(
			    why, SHARDMAP_ECORRUPT, SIZE_MAX,
			    "journal %s offset %" PRIu64 ": record goes from "
			    "version %" PRIu64 " to %" PRIu64 ", but the store "
			    "is at %" PRIu64,
			    w->path, w->base + w->at, from, to, w->version);
		w->started = 1;
		w->version = to;
		*rec = w->buf + w->at;
		*rec_len = used;
		w->at += used;
		return 1;
	}
	return 0;
}

/* ---------------------------------------------------------------- the writers' view */

static int lock_store(struct file_store *fs, int how)
{
	pthread_mutex_lock(&fs->mu);
	while (flock(fs->lock_fd, how) != 0) {
		if (errno == EINTR)
			continue;
		pthread_mutex_unlock(&fs->mu);
		return SHARDMAP_EIO;
	}
	return SHARDMAP_OK;
}

static void unlock_store(struct file_store *fs)
{
	flock(fs->lock_fd, LOCK_UN);
	pthread_mutex_unlock(&fs->mu);
}

static void forget_journal(struct file_store *fs)
{
	if (fs->journal_fd >= 0)
		close(fs->journal_fd);
	fs->journal_fd = -1;
	memset(&fs->journal_id, 0, sizeof fs->journal_id);
}

/* Bring the view up to date with the files. Exclusive lock held. Cuts a torn tail.
 * verify: check the whole snapshot record (snapshot_version), not only its first bytes. */
static int sync_locked(struct file_store *fs, int verify, shardmap_error *why)
{
	struct snapshot_seen before = fs->snap;
	int rc = snapshot_version(fs->snapshot, &fs->snap, verify, why);
	if (rc != 0)
		return rc;
	int rescan = !same_file(&before.id, &fs->snap.id) || before.version != fs->snap.version;

	struct stat st;
	int exists = stat(fs->journal, &st) == 0;
	if (!exists && errno != ENOENT)
		return io_error(why, "cannot stat", fs->journal);
	if (fs->journal_fd < 0 || !exists || st.st_dev != fs->journal_id.dev ||
	    st.st_ino != fs->journal_id.ino) {
		forget_journal(fs);
		int fd = open(fs->journal, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
		if (fd < 0 || fstat(fd, &st) != 0) {
			rc = io_error(why, "cannot open", fs->journal);
			if (fd >= 0)
				close(fd);
			return rc;
		}
		if (!exists && fsync_parent(fs->journal) != 0) {
			close(fd);
			return io_error(why, "cannot fsync the directory of", fs->journal);
		}
		fs->journal_fd = fd;
		fs->journal_id = file_id_of(&st);
		rescan = 1;
	}
	if (fstat(fs->journal_fd, &st) != 0)
		return io_error(why, "cannot stat", fs->journal);
	if (rescan || (uint64_t)st.st_size < fs->journal_end) {
		fs->journal_end = 0;
		fs->journal_started = 0;
		fs->version = fs->snap.version;
	}
	if ((uint64_t)st.st_size == fs->journal_end)
		return SHARDMAP_OK;

	uint8_t *buf;
	size_t len;
	rc = read_from(fs->journal_fd, fs->journal_end, SIZE_MAX, fs->journal, 0, &buf, &len, why);
	if (rc != 0)
		return rc;
	struct journal_walk w = {.buf = buf,
				 .len = len,
				 .base = fs->journal_end,
				 .snapshot = fs->snap.version,
				 .version = fs->version,
				 .started = fs->journal_started,
				 .path = fs->journal};
	const uint8_t *rec;
	size_t rec_len;
	while ((rc = journal_next(&w, &rec, &rec_len, why)) > 0)
		;
	/* Keep what was checked, even when a later record is corrupt. */
	fs->journal_end += w.at;
	fs->version = w.version;
	fs->journal_started = w.started;
	free(buf);
	if (rc < 0)
		return rc;
	if (w.at < len) {
		/* A torn tail: a writer died mid-append (no writer is active: we hold the
		 * exclusive lock). Cut it off so the next record starts at a boundary. */
		if (ftruncate(fs->journal_fd, (off_t)fs->journal_end) != 0 ||
		    fdatasync(fs->journal_fd) != 0)
			return io_error(why, "cannot cut the torn tail of", fs->journal);
		atomic_fetch_add_explicit(&fs->torn_tails, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&fs->torn_bytes, len - w.at, memory_order_relaxed);
	}
	return SHARDMAP_OK;
}

/* Append one encoded record at the end of the journal, durably. Exclusive lock held. */
static int append_locked(struct file_store *fs, const uint8_t *buf, size_t len)
{
	if (pwrite_full(fs->journal_fd, buf, len, fs->journal_end) != 0 ||
	    fdatasync(fs->journal_fd) != 0) {
		/* Take the partial record back; if even that fails, the next sync cuts it
		 * as a torn tail. After a failed fdatasync the page cache state is unknown:
		 * forget the view so the next call re-reads the file. */
		if (ftruncate(fs->journal_fd, (off_t)fs->journal_end) == 0)
			(void)fdatasync(fs->journal_fd);
		forget_journal(fs);
		return SHARDMAP_EIO;
	}
	fs->journal_end += len;
	return SHARDMAP_OK;
}

/* ---------------------------------------------------------------- open and close */

/* Remove temp files a crashed compaction left behind. Exclusive lock held. */
static void remove_stale_temps(struct file_store *fs)
{
	DIR *d = opendir(fs->dir);
	if (d == NULL)
		return;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (strncmp(e->d_name, SHARDMAP__FILE_SNAPSHOT ".tmp.", 13) == 0 ||
		    strncmp(e->d_name, SHARDMAP__FILE_JOURNAL ".tmp.", 12) == 0)
			unlinkat(dirfd(d), e->d_name, 0);
	}
	closedir(d);
}

static void file_close(shardmap_store *s)
{
	struct file_store *fs = (struct file_store *)s;
	if (fs == NULL)
		return;
	forget_journal(fs);
	if (fs->lock_fd >= 0)
		close(fs->lock_fd);
	pthread_mutex_destroy(&fs->mu);
	free(fs->dir);
	free(fs->snapshot);
	free(fs->journal);
	free(fs->lock);
	free(fs);
}

static int file_open(const char *rest, shardmap_store **out)
{
	/* "file:PATH" or "file:///ABSOLUTE" */
	if (strncmp(rest, "//", 2) == 0) {
		if (rest[2] != '/')
			return SHARDMAP_EINVAL; /* file://host/... is not a local path */
		rest += 2;
	}
	if (rest[0] == '\0')
		return SHARDMAP_EINVAL;
	struct file_store *fs = calloc(1, sizeof *fs);
	if (fs == NULL)
		return SHARDMAP_ENOMEM;
	fs->base.ops = &shardmap__file_store_ops;
	fs->lock_fd = fs->journal_fd = -1;
	pthread_mutex_init(&fs->mu, NULL);
	fs->dir = strdup(rest);
	if (fs->dir == NULL)
		goto nomem;
	for (size_t n = strlen(fs->dir); n > 1 && fs->dir[n - 1] == '/'; n--)
		fs->dir[n - 1] = '\0';
	fs->snapshot = path_join(fs->dir, SHARDMAP__FILE_SNAPSHOT);
	fs->journal = path_join(fs->dir, SHARDMAP__FILE_JOURNAL);
	fs->lock = path_join(fs->dir, SHARDMAP__FILE_LOCK);
	if (fs->snapshot == NULL || fs->journal == NULL || fs->lock == NULL)
		goto nomem;

	int rc = SHARDMAP_EIO;
	struct stat st;
	if (mkdir(fs->dir, 0777) == 0) {
		if (fsync_parent(fs->dir) != 0)
			goto fail;
	} else if (errno != EEXIST) {
		goto fail;
	}
	if (stat(fs->dir, &st) != 0)
		goto fail;
	if (!S_ISDIR(st.st_mode)) {
		rc = SHARDMAP_EINVAL;
		goto fail;
	}
	fs->lock_fd = open(fs->lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fs->lock_fd < 0)
		goto fail;
	if ((rc = lock_store(fs, LOCK_EX)) != 0)
		goto fail;
	remove_stale_temps(fs);
	/* Recover a torn tail now. A corrupt store still opens: loads and writes report
	 * the corruption with its location (and shardmapctl verify can say what is wrong). */
	rc = sync_locked(fs, 0, NULL);
	unlock_store(fs);
	if (rc != 0 && rc != SHARDMAP_ECORRUPT)
		goto fail;
	*out = &fs->base;
	return SHARDMAP_OK;
nomem:
	rc = SHARDMAP_ENOMEM;
fail:
	file_close(&fs->base);
	return rc;
}

/* ---------------------------------------------------------------- write and version */

static int file_write(shardmap_store *s, const shardmap_delta *d)
{
	struct file_store *fs = (struct file_store *)s;
	uint8_t *buf = NULL;
	size_t len = 0;
	int rc = shardmap__codec_encode(d, &buf, &len);
	if (rc != 0)
		return rc;
	if ((rc = lock_store(fs, LOCK_EX)) == 0) {
		rc = sync_locked(fs, 1, NULL);
		if (rc == 0 && d->from_version != fs->version)
			rc = SHARDMAP_ECONFLICT;
		if (rc == 0 && (rc = append_locked(fs, buf, len)) == 0) {
			fs->version = d->to_version;
			fs->journal_started = 1;
		}
		unlock_store(fs);
	}
	free(buf);
	return rc;
}

static int file_version(shardmap_store *s, uint64_t *out)
{
	struct file_store *fs = (struct file_store *)s;
	int rc = lock_store(fs, LOCK_EX);
	if (rc != 0)
		return rc;
	rc = sync_locked(fs, 1, NULL);
	if (rc == 0)
		*out = fs->version;
	unlock_store(fs);
	return rc;
}

int shardmap__file_store_info(shardmap_store *s, struct shardmap__file_store_info *out,
			      shardmap_error *why)
{
	if (s == NULL || out == NULL || s->ops != &shardmap__file_store_ops)
		return SHARDMAP_EINVAL;
	struct file_store *fs = (struct file_store *)s;
	int rc = lock_store(fs, LOCK_EX);
	if (rc != 0)
		return shardmap__error_set(why, rc, SIZE_MAX, "cannot lock %s", fs->lock);
	rc = sync_locked(fs, 1, why);
	out->version = fs->version;
	out->snapshot_version = fs->snap.version;
	out->journal_bytes = fs->journal_end;
	unlock_store(fs);
	out->torn_tails = atomic_load_explicit(&fs->torn_tails, memory_order_relaxed);
	out->torn_bytes = atomic_load_explicit(&fs->torn_bytes, memory_order_relaxed);
	return rc;
}

/* ---------------------------------------------------------------- load */

typedef int (*delta_sink)(void *ctx, const shardmap_delta *d);

/* Decode one journal record for load; messages name the file and offset. */
static int decode_journal_record(struct file_store *fs, const uint8_t *rec, size_t len,
				 uint64_t offset, shardmap_delta **d, shardmap_error *why)
{
	shardmap_error e = {0};
	size_t used;
	int rc = shardmap__codec_decode(rec, len, d, &used, &e);
	if (rc != 0)
		return shardmap__error_set(why, rc, e.op_index, "journal %s offset %" PRIu64 ": %s",
					   fs->journal, offset, e.message);
	return SHARDMAP_OK;
}

/* Deliver the snapshot (from snap_fd, -1 if none) and the journal bytes. The caller has
 * read the journal under the shared or exclusive lock. */
static int load_files(struct file_store *fs, int snap_fd, const uint8_t *journal,
		      size_t journal_len, delta_sink sink, void *ctx, shardmap_error *why)
{
	uint64_t base = 0;
	int rc;
	if (snap_fd >= 0) {
		uint8_t *buf;
		size_t len;
		shardmap_delta *d = NULL;
		rc = read_from(snap_fd, 0, SHARDMAP__SNAPSHOT_MAX_BYTES, fs->snapshot, 1, &buf,
			       &len, why);
		if (rc != 0)
			return rc;
		/* In place: the delta's strings live in buf until the sink is done with it. */
		rc = shardmap__snapshot_decode(buf, len, fs->snapshot, &d, why);
		if (rc == 0) {
			base = d->to_version;
			rc = sink(ctx, d);
		}
		shardmap__codec_borrowed_free(d);
		shardmap__big_free(buf);
		if (rc != 0)
			return rc;
	}
	struct journal_walk w = {.buf = journal,
				 .len = journal_len,
				 .snapshot = base,
				 .version = base,
				 .path = fs->journal};
	const uint8_t *rec;
	size_t rec_len;
	while ((rc = journal_next(&w, &rec, &rec_len, why)) > 0) {
		shardmap_delta *d = NULL;
		rc = decode_journal_record(fs, rec, rec_len, (uint64_t)(rec - journal), &d, why);
		if (rc != 0)
			return rc;
		rc = sink(ctx, d);
		shardmap_delta_free(d);
		if (rc != 0)
			return rc;
	}
	/* rc 0: the end, or an incomplete last record (torn or being written): ignored. */
	return rc;
}

/* Open the snapshot and read the journal; the caller holds the lock. */
static int open_files(struct file_store *fs, int *snap_fd, uint8_t **journal, size_t *len,
		      shardmap_error *why)
{
	*snap_fd = open(fs->snapshot, O_RDONLY | O_CLOEXEC);
	if (*snap_fd < 0 && errno != ENOENT)
		return io_error(why, "cannot open", fs->snapshot);
	int rc = shardmap__file_read(fs->journal, SIZE_MAX, journal, len, why);
	if (rc == SHARDMAP_ENOENT) {
		*journal = NULL;
		*len = 0;
		rc = SHARDMAP_OK;
	}
	if (rc != 0 && *snap_fd >= 0) {
		close(*snap_fd);
		*snap_fd = -1;
	}
	return rc;
}

static int file_load(shardmap_store *s, delta_sink sink, void *ctx, shardmap_error *why)
{
	struct file_store *fs = (struct file_store *)s;
	int snap_fd = -1;
	uint8_t *journal = NULL;
	size_t len = 0;
	int rc = lock_store(fs, LOCK_SH);
	if (rc != 0)
		return shardmap__error_set(why, rc, SIZE_MAX, "cannot lock %s", fs->lock);
	rc = open_files(fs, &snap_fd, &journal, &len, why);
	unlock_store(fs);
	if (rc == 0)
		rc = load_files(fs, snap_fd, journal, len, sink, ctx, why);
	if (snap_fd >= 0)
		close(snap_fd);
	free(journal);
	return rc;
}

/* ---------------------------------------------------------------- compaction */

struct build_ctx {
	struct shardmap__builder *b;
	shardmap_error *why;
};

static int builder_sink(void *ctx, const shardmap_delta *d)
{
	struct build_ctx *c = ctx;
	return shardmap__builder_apply(c->b, d, c->why);
}

/* Build the store's map privately and encode it as one snapshot record. Lock held. */
static int fold_locked(struct file_store *fs, uint8_t **buf, size_t *len, shardmap_error *why)
{
	shardmap *tmp = NULL;
	shardmap_options opt;
	shardmap_options_init(&opt);
	opt.use_arena = 0; /* a short-lived map: no arena of its own */
	int rc = shardmap_open(&tmp, &opt);
	if (rc != 0)
		return shardmap__error_set(why, rc, SIZE_MAX, "cannot open a map to fold into");
	struct build_ctx c = {NULL, why};
	int snap_fd = -1;
	uint8_t *journal = NULL;
	size_t jlen = 0;
	shardmap_delta *d = NULL;
	if ((rc = shardmap__builder_start(tmp, &c.b)) != 0)
		goto out;
	if ((rc = open_files(fs, &snap_fd, &journal, &jlen, why)) == 0)
		rc = load_files(fs, snap_fd, journal, jlen, builder_sink, &c, why);
	if (rc == 0 && (rc = shardmap__builder_publish(c.b)) == 0)
		c.b = NULL;
	if (rc != 0)
		goto out;
	const struct shardmap__version *v = shardmap__pin(tmp);
	rc = shardmap__version_to_delta(v, &d);
	shardmap__unpin(tmp);
	if (rc == 0)
		rc = shardmap__codec_encode(d, buf, len);
	if (rc != 0)
		shardmap__error_set(why, rc, SIZE_MAX, "cannot encode the folded map");
out:
	shardmap__builder_abort(c.b);
	shardmap_delta_free(d);
	if (snap_fd >= 0)
		close(snap_fd);
	free(journal);
	shardmap_close(tmp);
	return rc;
}

int shardmap__file_store_compact(shardmap_store *s, shardmap_error *why)
{
	if (s == NULL || s->ops != &shardmap__file_store_ops)
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX, "not a file: store");
	struct file_store *fs = (struct file_store *)s;
	int rc = lock_store(fs, LOCK_EX);
	if (rc != 0)
		return shardmap__error_set(why, rc, SIZE_MAX, "cannot lock %s", fs->lock);
	uint8_t *buf = NULL;
	size_t len = 0;
	if ((rc = sync_locked(fs, 1, why)) != 0 || fs->journal_end == 0)
		goto out; /* corrupt, or nothing to fold */
	if (fs->version != fs->snap.version) {
		if ((rc = fold_locked(fs, &buf, &len, why)) != 0)
			goto out;
		if ((rc = shardmap__file_replace(fs->snapshot, buf, len)) != 0) {
			io_error(why, "cannot replace", fs->snapshot);
			goto out;
		}
	}
	/* The snapshot now holds every journal record: replace the journal with an empty one
	 * (a new file: holders of the old one's descriptor keep a consistent view). */
	if ((rc = shardmap__file_replace(fs->journal, "", 0)) != 0) {
		io_error(why, "cannot replace", fs->journal);
		goto out;
	}
	rc = sync_locked(fs, 1, why);
out:
	unlock_store(fs);
	free(buf);
	return rc;
}

/* ---------------------------------------------------------------- following */

struct file_follower {
	struct shardmap__follower base; /* first: the follower interface */
	struct file_store *fs;
	shardmap *m;
	pthread_t thread;
	int wake_fd;	  /* eventfd: stop and catch-up requests */
	int inotify_fd;	  /* -1: poll instead */
	atomic_bool stop; /* set by stop, read by the helper thread */
	/* The helper thread's own state: */
	int journal_fd;
	struct file_id journal_id;
	uint64_t offset; /* end of the last whole record consumed from journal_fd */
	struct snapshot_seen snap;
	uint64_t backoff_ns, resync_not_before_ns;
};

static void note_store_version(struct file_follower *f, uint64_t v)
{
	struct shardmap__ext_stats *ext = shardmap__ext(f->m);
	/* Only this thread writes the field for this map: load + store need no RMW. */
	if (v > atomic_load_explicit(&ext->store_version, memory_order_relaxed))
		atomic_store_explicit(&ext->store_version, v, memory_order_relaxed);
}

static void count_error(struct file_follower *f)
{
	atomic_fetch_add_explicit(&shardmap__ext(f->m)->store_errors, 1, memory_order_relaxed);
}

/* Bootstrap the map from the store (with backoff after failures). Returns 0 if it did. */
static int resync(struct file_follower *f)
{
	uint64_t now = shardmap__monotonic_ns();
	if (now < f->resync_not_before_ns)
		return SHARDMAP_EBUSY;
	shardmap_error why = {0};
	int rc = shardmap__bootstrap_from(f->m, &f->fs->base, &why);
	if (rc == 0) {
		f->backoff_ns = 0;
		return 0;
	}
	count_error(f);
	f->backoff_ns = f->backoff_ns ? f->backoff_ns * 2 : RESYNC_BACKOFF_MIN_NS;
	if (f->backoff_ns > RESYNC_BACKOFF_MAX_NS)
		f->backoff_ns = RESYNC_BACKOFF_MAX_NS;
	f->resync_not_before_ns = now + f->backoff_ns;
	return rc;
}

/* Apply the whole records of journal_fd past f->offset. Returns 0, or an error after which
 * the pass stops (the same records are read again next time). */
static int follow_journal(struct file_follower *f)
{
	uint8_t *buf;
	size_t len, at = 0;
	shardmap_error why = {0};
	struct stat st;
	if (fstat(f->journal_fd, &st) == 0 && (uint64_t)st.st_size < f->offset)
		f->offset = 0; /* cannot happen with replace-only compaction; start over */
	int rc = read_from(f->journal_fd, f->offset, SIZE_MAX, f->fs->journal, 0, &buf, &len, &why);
	if (rc != 0)
		return rc;
	int resynced = 0;
	while (at < len) {
		uint64_t from, to;
		size_t used;
		rc = shardmap__codec_peek(buf + at, len - at, &from, &to, &used, NULL);
		if (rc == SHARDMAP_ENOENT) {
			rc = 0; /* the rest is being written: wait for it */
			break;
		}
		if (rc != 0)
			break;
		note_store_version(f, to);
		if (to > shardmap_version(f->m)) {
			shardmap_delta *d = NULL;
			if ((rc = shardmap__codec_decode(buf + at, used, &d, &used, NULL)) != 0)
				break;
			rc = shardmap_apply(f->m, d, NULL);
			shardmap_delta_free(d);
			if (rc != 0 && rc != SHARDMAP_ESTALE) {
				/* A gap (or a record that does not apply to this map): the store
				 * is authoritative, rebuild from it once, then look again. */
				if (resynced || (rc = resync(f)) != 0)
					break;
				resynced = 1;
				continue;
			}
			rc = 0;
		}
		at += used;
	}
	f->offset += at;
	free(buf);
	return rc;
}

/* One pass: catch up with the snapshot and the journal. */
static void follow_pass(struct file_follower *f)
{
	struct shardmap__ext_stats *ext = shardmap__ext(f->m);
	atomic_fetch_add_explicit(&ext->store_requests, 1, memory_order_relaxed);
	shardmap_error why = {0};
	int rc = snapshot_version(f->fs->snapshot, &f->snap, 0, &why);
	if (rc != 0) {
		count_error(f);
		return;
	}
	note_store_version(f, f->snap.version);
	/* Records the map needs were folded into the snapshot: only a bootstrap has them. */
	if (shardmap_version(f->m) < f->snap.version && resync(f) != 0)
		return;

	struct stat st;
	int exists = stat(f->fs->journal, &st) == 0;
	if (f->journal_fd >= 0 &&
	    (!exists || st.st_dev != f->journal_id.dev || st.st_ino != f->journal_id.ino)) {
		/* Replaced by a compaction: finish the old file, then start on the new one. */
		if (follow_journal(f) != 0)
			count_error(f);
		close(f->journal_fd);
		f->journal_fd = -1;
	}
	if (f->journal_fd < 0 && exists) {
		f->journal_fd = open(f->fs->journal, O_RDONLY | O_CLOEXEC);
		if (f->journal_fd < 0 || fstat(f->journal_fd, &st) != 0) {
			count_error(f);
			return;
		}
		f->journal_id = file_id_of(&st);
		f->offset = 0;
	}
	if (f->journal_fd >= 0 && follow_journal(f) != 0) {
		count_error(f);
		return;
	}
	atomic_store_explicit(&ext->store_last_contact_ns, shardmap__monotonic_ns(),
			      memory_order_relaxed);
}

/* Sleep until the directory changes, a request arrives or the safety-net timeout. */
static void follow_wait(struct file_follower *f)
{
	struct pollfd p[2] = {{.fd = f->wake_fd, .events = POLLIN},
			      {.fd = f->inotify_fd, .events = POLLIN}};
	nfds_t n = f->inotify_fd >= 0 ? 2 : 1;
	(void)poll(p, n, f->inotify_fd >= 0 ? FOLLOW_WAIT_MS : FOLLOW_POLL_MS);
	uint64_t count;
	if (read(f->wake_fd, &count, sizeof count) < 0) {
		/* EAGAIN: no request pending */
	}
	char events[4096];
	while (f->inotify_fd >= 0 && read(f->inotify_fd, events, sizeof events) > 0)
		; /* the pass re-reads everything it needs: the events themselves do not matter */
}

static void *follow_main(void *arg)
{
	struct file_follower *f = arg;
	/* Pairs with the release store in follower_stop: after seeing stop, the thread
	 * touches nothing the stopper frees (it frees only after pthread_join anyway). */
	while (!atomic_load_explicit(&f->stop, memory_order_acquire)) {
		follow_pass(f);
		follow_wait(f);
	}
	return NULL;
}

static void wake(struct file_follower *f)
{
	uint64_t one = 1;
	if (write(f->wake_fd, &one, sizeof one) < 0) {
		/* EAGAIN: the counter is already non-zero, a wake-up is pending */
	}
}

static void follower_catch_up(struct shardmap__follower *base)
{
	wake((struct file_follower *)base);
}

static void follower_free(struct file_follower *f)
{
	if (f->wake_fd >= 0)
		close(f->wake_fd);
	if (f->inotify_fd >= 0)
		close(f->inotify_fd);
	if (f->journal_fd >= 0)
		close(f->journal_fd);
	free(f);
}

static void follower_stop(struct shardmap__follower *base)
{
	struct file_follower *f = (struct file_follower *)base;
	/* Pairs with the acquire load in follow_main. */
	atomic_store_explicit(&f->stop, true, memory_order_release);
	wake(f);
	pthread_join(f->thread, NULL);
	atomic_fetch_sub_explicit(&shardmap__ext(f->m)->threads, 1, memory_order_relaxed);
	follower_free(f);
}

static int file_follow(shardmap_store *s, shardmap *m, shardmap_pool *p,
		       struct shardmap__follower **out)
{
	(void)p; /* local files need no network: one helper thread (see the top comment) */
	struct file_follower *f = calloc(1, sizeof *f);
	if (f == NULL)
		return SHARDMAP_ENOMEM;
	f->base.stop = follower_stop;
	f->base.catch_up = follower_catch_up;
	f->fs = (struct file_store *)s;
	f->m = m;
	f->journal_fd = -1;
	atomic_init(&f->stop, false);
	f->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	f->inotify_fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
	if (f->inotify_fd >= 0 && inotify_add_watch(f->inotify_fd, f->fs->dir,
						    IN_MODIFY | IN_CLOSE_WRITE | IN_CREATE |
							IN_MOVED_TO | IN_DELETE) < 0) {
		close(f->inotify_fd);
		f->inotify_fd = -1; /* poll instead */
	}
	if (f->wake_fd < 0) {
		follower_free(f);
		return SHARDMAP_EIO;
	}
	/* The helper takes no signals: the host's handlers run on the host's threads. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	atomic_fetch_add_explicit(&shardmap__ext(m)->threads, 1, memory_order_relaxed);
	int rc = pthread_create(&f->thread, NULL, follow_main, f);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		atomic_fetch_sub_explicit(&shardmap__ext(m)->threads, 1, memory_order_relaxed);
		follower_free(f);
		return SHARDMAP_ENOMEM;
	}
	*out = &f->base;
	return SHARDMAP_OK;
}

const struct shardmap__store_ops shardmap__file_store_ops = {
    .abi = SHARDMAP__STORE_ABI,
    .scheme = "file:",
    .open = file_open,
    .close = file_close,
    .load = file_load,
    .write = file_write,
    .version = file_version,
    .follow = file_follow,
};
