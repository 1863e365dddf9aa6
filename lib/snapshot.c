/*
 * snapshot.c - warm-start snapshots: a front-end saves its current map to a local file and,
 * after a restart, serves it at once while it catches up from the authoritative store.
 *
 * The file is one codec record (docs/codec.md) holding the map as a delta from version 0,
 * the same form as a file store's snapshot, so `shardmapctl verify` reads both. Saving
 * writes a temp file beside the target, fsyncs it, renames it over the target and fsyncs
 * the directory: a crash leaves the old file or the new one, never a mix. Loading decodes
 * into a private build and publishes it in one step; any error leaves the map serving what
 * it served before, and why says what is wrong with the file.
 */
#include <stdlib.h>

#include "codec.h"
#include "mem.h"
#include "store_file.h"

int shardmap_snapshot_save(shardmap *m, const char *path)
{
	if (m == NULL || path == NULL || path[0] == '\0')
		return SHARDMAP_EINVAL;
	/* pin holds the write lock only while the version is walked, not during the I/O */
	const struct shardmap__version *v = shardmap__pin(m);
	if (v == NULL) {
		shardmap__unpin(m);
		return SHARDMAP_ENOTREADY;
	}
	shardmap_delta *d = NULL;
	int rc = shardmap__version_to_delta(v, &d);
	shardmap__unpin(m);
	if (rc != 0)
		return rc;
	uint8_t *buf = NULL;
	size_t len = 0;
	rc = shardmap__codec_encode(d, &buf, &len);
	shardmap_delta_free(d);
	if (rc == 0)
		rc = shardmap__file_replace(path, buf, len);
	free(buf);
	return rc;
}

int shardmap__snapshot_decode(uint8_t *buf, size_t len, const char *path, shardmap_delta **out,
			      shardmap_error *why)
{
	shardmap_delta *d = NULL;
	shardmap_error e = {0};
	size_t used = 0;
	int rc = shardmap__codec_decode_in_place(buf, len, &d, &used, &e);
	if (rc == SHARDMAP_ENOENT)
		return shardmap__error_set(why, SHARDMAP_ECORRUPT, SIZE_MAX,
					   "snapshot %s: truncated (%s)", path, e.message);
	if (rc != 0)
		return shardmap__error_set(why, rc, e.op_index, "snapshot %s: %s", path, e.message);
	if (used != len || d->from_version != 0) {
		rc = shardmap__error_set(why, SHARDMAP_ECORRUPT, SIZE_MAX,
					 used != len ? "snapshot %s: trailing garbage after the "
						       "record"
						     : "snapshot %s: does not start at version 0",
					 path);
		shardmap__codec_borrowed_free(d);
		return rc;
	}
	*out = d;
	return SHARDMAP_OK;
}

int shardmap_snapshot_load(shardmap *m, const char *path, shardmap_error *why)
{
	if (m == NULL || path == NULL || path[0] == '\0')
		return shardmap__error_set(why, SHARDMAP_EINVAL, SIZE_MAX, "NULL map or path");
	uint8_t *buf = NULL;
	size_t len = 0;
	int rc = shardmap__snapshot_read(path, &buf, &len, why);
	if (rc != 0)
		return rc;
	shardmap_delta *d = NULL;
	struct shardmap__builder *b = NULL;
	if ((rc = shardmap__snapshot_decode(buf, len, path, &d, why)) != 0)
		goto out;
	if ((rc = shardmap__builder_start(m, &b)) != 0) {
		shardmap__error_set(why, rc, SIZE_MAX, "cannot start a private build");
		goto out;
	}
	rc = shardmap__builder_apply(b, d, why);
	/* The delta and the buffer its strings live in are not needed any more: free them
	 * before publishing, so that what is resident right after is the map alone. */
	shardmap__codec_borrowed_free(d);
	d = NULL;
	shardmap__big_free(buf);
	buf = NULL;
	if (rc == 0 && (rc = shardmap__builder_publish(b)) == 0)
		b = NULL;
out:
	shardmap__builder_abort(b); /* on failure the current map keeps serving */
	shardmap__codec_borrowed_free(d);
	shardmap__big_free(buf);
	return rc;
}
