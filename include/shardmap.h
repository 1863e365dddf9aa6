/*
 * shardmap.h - the public contract of shardmap.
 *
 * shardmap maps (stream, partition key) to shard, owning cell and endpoints. Readers are
 * lock-free (epoch sections); writers publish immutable versions with one atomic pointer
 * store; deltas are all-or-nothing; all network work runs on a fixed worker pool.
 *
 * Conventions used in every comment below:
 *   Returns:      SHARDMAP_OK (0) or a negative SHARDMAP_E* code.
 *   Thread-safety: "MT-safe" (any thread, any time), "single writer" (serialised internally
 *                 with other writers; readers never wait), "reader thread only" (the thread
 *                 that owns the reader handle), "not thread-safe".
 *   Ownership:    who frees what. Every close/free function accepts NULL.
 *   Lifetime:     how long returned pointers stay valid.
 *   Blocking:     never / may wait for a grace period / does I/O.
 *
 * Error values are pinned: a code, once released, never changes meaning.
 */
#ifndef SHARDMAP_H
#define SHARDMAP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(SHARDMAP_BUILDING) && defined(__GNUC__)
#define SHARDMAP_API __attribute__((visibility("default")))
#else
#define SHARDMAP_API
#endif

#define SHARDMAP_VERSION_MAJOR 0
#define SHARDMAP_VERSION_MINOR 1
#define SHARDMAP_VERSION_PATCH 0
#define SHARDMAP_VERSION_STRING "0.1.0"

/* The runtime version of the library, e.g. "0.1.0". Thread-safety: MT-safe. */
SHARDMAP_API const char *shardmap_library_version(void);

/* ---------------------------------------------------------------- errors */

/* X(name, value, message). Values are pinned forever. */
#define SHARDMAP_ERRNO_MAP(X)                                                            \
	X(EINVAL, -1, "invalid argument")                                                    \
	X(ENOMEM, -2, "out of memory")                                                       \
	X(ENOENT, -3, "no such stream, shard or cell")                                       \
	X(ESTALE, -4, "duplicate delta: version already applied")                            \
	X(EGAP, -5, "missing versions: delta does not follow the current version")           \
	X(ECONFLICT, -6, "invariant violated or concurrent write conflict")                  \
	X(ECORRUPT, -7, "corrupt data: bad checksum or format")                              \
	X(EIO, -8, "input/output error")                                                     \
	X(ENOTREADY, -9, "map not ready: no version published yet")                          \
	X(ETIMEDOUT, -10, "timed out")                                                       \
	X(EBUSY, -11, "resource busy or limit reached")                                      \
	X(ENOTSUP, -12, "operation not supported")

enum {
	SHARDMAP_OK = 0,
#define SHARDMAP_ERRNO_ENUM_(name, value, msg) SHARDMAP_##name = (value),
	SHARDMAP_ERRNO_MAP(SHARDMAP_ERRNO_ENUM_)
#undef SHARDMAP_ERRNO_ENUM_
};

/* Text for an error code ("unknown error" for values not in the table).
 * Thread-safety: MT-safe. Lifetime: static storage. */
SHARDMAP_API const char *shardmap_strerror(int err);
/* The constant's name, e.g. "SHARDMAP_EGAP" ("SHARDMAP_OK" for 0, "unknown" otherwise).
 * Thread-safety: MT-safe. Lifetime: static storage. */
SHARDMAP_API const char *shardmap_err_name(int err);

/* Details of a failed apply, bootstrap or load. */
typedef struct shardmap_error {
	int code;           /* the same negative code the call returned */
	size_t op_index;    /* index of the failing op in the batch, SIZE_MAX when none */
	char message[256];  /* one line, names the op, the record and the reason */
} shardmap_error;

/* ---------------------------------------------------------------- hash keys */

/* An unsigned 128-bit hash key: value = hi * 2^64 + lo. */
typedef struct shardmap_hash {
	uint64_t hi, lo;
} shardmap_hash;

#define SHARDMAP_HASH_XXH3 0 /* XXH3-128 of the key bytes: high64 << 64 | low64 (default) */
#define SHARDMAP_HASH_MD5 1  /* MD5 of the key bytes read big-endian (Amazon Kinesis) */

/* Longest decimal form: 2^128-1 has 39 digits; plus the terminating NUL. */
#define SHARDMAP_HASH_DECIMAL_MAX 40

/* Parse a decimal hash key in 0 .. 2^128-1 (digits only: no sign, no whitespace, no empty
 * string; leading zeros are accepted up to 39 characters in all).
 * Returns: 0; SHARDMAP_EINVAL for NULL, empty, a non-digit, a sign, whitespace, more than
 * 39 characters or a value past 2^128-1 (shardmap_hash_parse_error names which).
 * *out is unchanged on error.
 * Thread-safety: MT-safe. Blocking: never. */
SHARDMAP_API int shardmap_hash_parse(const char *decimal, shardmap_hash *out);

/* The reason the last shardmap_hash_parse with this input failed, as static text
 * ("empty", "not a digit at offset N" ...); NULL when the input parses.
 * Thread-safety: MT-safe. Lifetime: static storage. */
SHARDMAP_API const char *shardmap_hash_parse_error(const char *decimal);

/* Format h in decimal (no leading zeros; "0" for zero) into out, NUL-terminated.
 * Returns: the number of digits written (1..39). Thread-safety: MT-safe. */
SHARDMAP_API int shardmap_hash_format(shardmap_hash h, char out[SHARDMAP_HASH_DECIMAL_MAX]);

/* Compare: negative, zero or positive as a < b, a == b, a > b. Thread-safety: MT-safe. */
SHARDMAP_API int shardmap_hash_cmp(shardmap_hash a, shardmap_hash b);

/* Hash a partition key with SHARDMAP_HASH_XXH3 or SHARDMAP_HASH_MD5 (any other value is
 * treated as XXH3). key may be NULL when len is 0. Thread-safety: MT-safe. Blocking: never. */
SHARDMAP_API shardmap_hash shardmap_hash_key(int hash_fn, const void *key, size_t len);

/* ---------------------------------------------------------------- the map */

typedef struct shardmap shardmap;
typedef struct shardmap_reader shardmap_reader;
typedef struct shardmap_delta shardmap_delta;
typedef struct shardmap_store shardmap_store;
typedef struct shardmap_pool shardmap_pool;
typedef struct shardmap_peers shardmap_peers;

typedef struct shardmap_options {
	size_t size;           /* sizeof(shardmap_options): lets the struct grow */
	int use_arena;         /* nonzero (default): map memory from a dedicated jemalloc arena
	                          when built with jemalloc; ignored otherwise */
	double hint_rate;      /* stale-hint catch-ups per second (default 10) */
	unsigned hint_burst;   /* token-bucket burst for catch-ups (default 5) */
} shardmap_options;

/* Fill *opt with the defaults (and opt->size). Thread-safety: MT-safe. */
SHARDMAP_API void shardmap_options_init(shardmap_options *opt);

/* Create an empty map (version 0, no streams; lookups answer SHARDMAP_ENOTREADY until a
 * first version is published). opt may be NULL for the defaults.
 * Returns: 0, SHARDMAP_EINVAL (bad options), SHARDMAP_ENOMEM.
 * Thread-safety: MT-safe. Ownership: the caller closes *out with shardmap_close. */
SHARDMAP_API int shardmap_open(shardmap **out, const shardmap_options *opt);

/* Free the map and every version. All readers must be closed and all followers and peers
 * stopped first. Accepts NULL. Thread-safety: not thread-safe (last call on m).
 * Blocking: may wait for a grace period. */
SHARDMAP_API void shardmap_close(shardmap *m);

/* The currently published version (0 before the first publish).
 * Thread-safety: MT-safe (a relaxed snapshot: a newer version may be published any time). */
SHARDMAP_API uint64_t shardmap_version(const shardmap *m);

/* ---------------------------------------------------------------- reading */

/* One answer of a lookup. Every pointer stays valid until shardmap_read_end. */
typedef struct shardmap_route {
	uint64_t version;           /* the map version that answered */
	const char *stream;
	const char *shard_id;
	shardmap_hash start, end;   /* inclusive range */
	int open;                   /* 1 open, 0 closed */
	const char *parent;         /* NULL = none */
	const char *adjacent_parent; /* NULL = none */
	const char *cell_id;
	const char *const *endpoints; /* n_endpoints strings "host:port" */
	size_t n_endpoints;
} shardmap_route;

/* Register the calling thread as a reader of m.
 * Returns: 0, SHARDMAP_EINVAL, SHARDMAP_ENOMEM.
 * Thread-safety: MT-safe. Ownership: the handle belongs to the calling thread only; close it
 * with shardmap_reader_close before shardmap_close. Reader records are recycled. A handle
 * takes about 4 KiB: it remembers the stream and owner cells its lookups found last. */
SHARDMAP_API int shardmap_reader_open(shardmap *m, shardmap_reader **out);
/* Unregister. Must not be inside a section. Accepts NULL.
 * Thread-safety: reader thread only. */
SHARDMAP_API void shardmap_reader_close(shardmap_reader *r);

/* Enter / leave a read section. Lookups are only valid inside one; pointers they return stay
 * valid until shardmap_read_end. Sections do not nest. Keep sections short: old versions
 * are reclaimed only after every reader has left the sections that could see them.
 * Thread-safety: reader thread only. Blocking: never (no lock, no atomic read-modify-write). */
SHARDMAP_API void shardmap_read_begin(shardmap_reader *r);
SHARDMAP_API void shardmap_read_end(shardmap_reader *r);

/* Route a partition key: hash it with the stream's hash function, find the open shard whose
 * range holds the hash. Call inside a read section.
 * Returns: 0, SHARDMAP_ENOTREADY (nothing published), SHARDMAP_ENOENT (unknown stream),
 * SHARDMAP_EINVAL (NULL arguments). Lifetime: *out valid until shardmap_read_end.
 * Thread-safety: reader thread only. Blocking: never. */
SHARDMAP_API int shardmap_route_key(shardmap_reader *r, const char *stream, const void *key,
                                    size_t key_len, shardmap_route *out);
/* One record of a batch, as a Kinesis PutRecords entry names it: a partition key of len
 * bytes at data (data may be NULL only when len is 0), and optionally an explicit hash key
 * that overrides the key's hash (ExplicitHashKey; NULL: hash the key). */
typedef struct shardmap_key {
	const void *data;
	size_t len;
	const shardmap_hash *explicit_hash;
} shardmap_key;

/* Route n partition keys of one stream at once (a Kinesis PutRecords batch): out[i] gets
 * exactly what shardmap_route_key would give for keys[i] in this section. On big streams it
 * is several times faster per key than n single calls: the keys' tree walks go down
 * together, so their cache misses overlap instead of adding up. A key with an explicit
 * hash routes as shardmap_route_hash would route that hash. Call inside a read section.
 * Returns: 0 (out[0..n-1] filled); SHARDMAP_EINVAL (r or stream NULL, keys or out NULL with
 * n > 0, or a key with NULL data and len > 0: out untouched); SHARDMAP_ENOTREADY;
 * SHARDMAP_ENOENT (unknown stream: out untouched). With n = 0 nothing is routed and the
 * stream is still checked.
 * Lifetime: out[i] valid until shardmap_read_end. Thread-safety: reader thread only.
 * Blocking: never. */
SHARDMAP_API int shardmap_route_keys(shardmap_reader *r, const char *stream,
                                     const shardmap_key *keys, size_t n, shardmap_route *out);
/* Route an explicit hash key (Kinesis ExplicitHashKey). As shardmap_route_key. */
SHARDMAP_API int shardmap_route_hash(shardmap_reader *r, const char *stream, shardmap_hash h,
                                     shardmap_route *out);
/* Find a shard by id, open or closed. As shardmap_route_key; SHARDMAP_ENOENT also for an
 * unknown shard. */
SHARDMAP_API int shardmap_find_shard(shardmap_reader *r, const char *stream,
                                     const char *shard_id, shardmap_route *out);

/* Visit a stream's shards: the open ones in range order, then the closed ones (in no
 * particular order), until fn returns nonzero. Call inside a read section.
 * Returns: 0, fn's nonzero value, SHARDMAP_ENOTREADY, SHARDMAP_ENOENT, SHARDMAP_EINVAL.
 * Lifetime: *rt valid until shardmap_read_end. Thread-safety: reader thread only.
 * Blocking: never. Work: visits every shard of the stream. */
SHARDMAP_API int shardmap_foreach_shard(shardmap_reader *r, const char *stream,
                                        int (*fn)(void *ctx, const shardmap_route *rt),
                                        void *ctx);
/* Visit every stream (in no particular order) with its hash function, until fn returns
 * nonzero. As shardmap_foreach_shard. */
SHARDMAP_API int shardmap_foreach_stream(shardmap_reader *r,
                                         int (*fn)(void *ctx, const char *stream, int hash_fn),
                                         void *ctx);

/* ---------------------------------------------------------------- deltas */

/* A shard record as written into a delta. */
typedef struct shardmap_shard {
	const char *id;
	shardmap_hash start, end;   /* inclusive, start <= end */
	int open;                   /* 1 open, 0 closed */
	const char *owner_cell;
	const char *parent;          /* NULL = none */
	const char *adjacent_parent; /* NULL = none */
} shardmap_shard;

/* A new empty delta from_version -> to_version (to_version > from_version).
 * Returns: 0, SHARDMAP_EINVAL, SHARDMAP_ENOMEM.
 * Thread-safety: MT-safe; a delta itself is not thread-safe while being built and may be
 * read by many threads once built. Ownership: free with shardmap_delta_free. */
SHARDMAP_API int shardmap_delta_new(uint64_t from_version, uint64_t to_version,
                                    shardmap_delta **out);
/* Append ops. Strings are copied. Arguments are checked now (SHARDMAP_EINVAL: NULL or empty
 * name, id or endpoint, an endpoint without ":port", an unknown hash function, start > end,
 * names longer than 255 bytes); invariants are checked when the delta is applied.
 * Returns: 0, SHARDMAP_EINVAL, SHARDMAP_ENOMEM (the delta is unchanged on error).
 * Thread-safety: not thread-safe on one delta. */
SHARDMAP_API int shardmap_delta_put_cell(shardmap_delta *d, const char *cell_id,
                                         const char *const *endpoints, size_t n_endpoints);
SHARDMAP_API int shardmap_delta_delete_cell(shardmap_delta *d, const char *cell_id);
SHARDMAP_API int shardmap_delta_put_stream(shardmap_delta *d, const char *stream, int hash_fn);
SHARDMAP_API int shardmap_delta_delete_stream(shardmap_delta *d, const char *stream);
SHARDMAP_API int shardmap_delta_put_shard(shardmap_delta *d, const char *stream,
                                          const shardmap_shard *s);
SHARDMAP_API int shardmap_delta_delete_shard(shardmap_delta *d, const char *stream,
                                             const char *shard_id);
/* Accessors. Thread-safety: MT-safe on a delta nobody is modifying. */
SHARDMAP_API uint64_t shardmap_delta_from(const shardmap_delta *d);
SHARDMAP_API uint64_t shardmap_delta_to(const shardmap_delta *d);
SHARDMAP_API size_t shardmap_delta_count(const shardmap_delta *d);
/* Free a delta and its copies of strings. Accepts NULL. */
SHARDMAP_API void shardmap_delta_free(shardmap_delta *d);

/* ---------------------------------------------------------------- writing */

/* Apply a delta all-or-nothing: from_version must equal the current version.
 * Returns: 0 (published); SHARDMAP_ESTALE (to_version <= current: duplicate, nothing
 * changes); SHARDMAP_EGAP (from_version > current, or from_version < current < to_version);
 * SHARDMAP_ECONFLICT (an invariant broke: why names the op index and reason);
 * SHARDMAP_ENOMEM. On any error the published map is exactly as before.
 * why may be NULL. Thread-safety: single writer. Blocking: never waits for readers. */
SHARDMAP_API int shardmap_apply(shardmap *m, const shardmap_delta *d, shardmap_error *why);

/* Kinesis-semantics plans against the current version: each returns a delta from the current
 * version to the next (current + 1) that the caller applies or writes to a store; they change
 * nothing themselves. Each refusal's message names the violated rule (shardmap_plan_error).
 * Moving a shard to the cell that already owns it is refused (SHARDMAP_ECONFLICT: nothing to
 * do); closed shards may be moved.
 * Returns: 0, SHARDMAP_EINVAL (bad arguments: n_shards 0, no owners...), SHARDMAP_ENOENT
 * (unknown stream, shard or cell), SHARDMAP_ECONFLICT (a Kinesis rule forbids it: stream
 * exists, shard closed, split point out of range, shards not adjacent, shard ids used up),
 * SHARDMAP_ENOMEM. *out is unchanged on error.
 * Thread-safety: MT-safe. Ownership: caller frees *out with shardmap_delta_free.
 * Blocking: waits for other writers while it reads the current version; never for readers. */
SHARDMAP_API int shardmap_plan_create_stream(const shardmap *m, const char *stream, int hash_fn,
                                             unsigned n_shards, const char *const *owner_cells,
                                             size_t n_owners, shardmap_delta **out);
SHARDMAP_API int shardmap_plan_split(const shardmap *m, const char *stream,
                                     const char *shard_id, shardmap_hash new_start,
                                     shardmap_delta **out);
SHARDMAP_API int shardmap_plan_merge(const shardmap *m, const char *stream,
                                     const char *shard_id, const char *adjacent_shard_id,
                                     shardmap_delta **out);
SHARDMAP_API int shardmap_plan_move(const shardmap *m, const char *stream, const char *shard_id,
                                    const char *cell_id, shardmap_delta **out);
/* The reason text of the last plan failure on this thread (static or thread-local storage),
 * "" after a success. Thread-safety: MT-safe (per thread). */
SHARDMAP_API const char *shardmap_plan_error(void);

/* ---------------------------------------------------------------- stores */

/* Open a store: "file:PATH" (a directory: snapshot + journal, the embedded default; created
 * if missing, one level) or "etcd://HOST:PORT[,HOST:PORT...]/PREFIX" (docs/etcd.md).
 * A corrupt file store opens; the corruption is reported by bootstrap and refused writes.
 * Returns: 0, SHARDMAP_EINVAL (NULL, unknown scheme, malformed URI, a path that is not a
 * directory), SHARDMAP_EIO (the OS refused), SHARDMAP_ENOMEM.
 * Thread-safety: MT-safe. Ownership: close with shardmap_store_close. Blocking: does I/O. */
SHARDMAP_API int shardmap_store_open(const char *uri, shardmap_store **out);
/* Append a delta (control plane). Its from_version must be the store's current version.
 * The file store fdatasyncs before returning; etcd commits one transaction.
 * Returns: 0, SHARDMAP_ECONFLICT (another writer got there first: re-plan and retry),
 * SHARDMAP_EINVAL (NULL, or a delta the codec refuses), SHARDMAP_ECORRUPT (the store is
 * corrupt: nothing is appended), SHARDMAP_EIO, SHARDMAP_ETIMEDOUT, SHARDMAP_ENOMEM.
 * Thread-safety: MT-safe (several processes too). Ownership: d stays the caller's.
 * Blocking: does I/O. */
SHARDMAP_API int shardmap_store_write(shardmap_store *s, const shardmap_delta *d);
/* The store's current version. Blocking: does I/O. */
SHARDMAP_API int shardmap_store_version(shardmap_store *s, uint64_t *out);
/* Close. Stop followers first. Accepts NULL. */
SHARDMAP_API void shardmap_store_close(shardmap_store *s);

/* Read the whole store into a private version, validate, publish in one step (whatever the
 * current version: the store is authoritative). On failure the current map keeps serving
 * and why says what is wrong. Readers never wait for it.
 * Returns: 0, SHARDMAP_ENOENT (the store is empty), SHARDMAP_ECORRUPT (bad record; why names
 * the file and offset, or the etcd key), SHARDMAP_ECONFLICT (the data breaks an invariant),
 * SHARDMAP_EIO, SHARDMAP_ETIMEDOUT, SHARDMAP_ENOMEM.
 * Thread-safety: single writer. Blocking: does I/O. */
SHARDMAP_API int shardmap_bootstrap(shardmap *m, shardmap_store *s, shardmap_error *why);
/* Keep m current from s (watch + apply) on pool p (p may be NULL for stores that need no
 * network: the file store then uses one documented helper thread).
 * Thread-safety: MT-safe. Ownership: stop with shardmap_unfollow before closing m or s. */
SHARDMAP_API int shardmap_follow(shardmap *m, shardmap_store *s, shardmap_pool *p);
SHARDMAP_API void shardmap_unfollow(shardmap *m);

/* Warm start: save the current map to path atomically (write, fsync, rename, fsync the
 * directory); load replaces the map with the file's in one step, or changes nothing.
 * Returns (save): 0, SHARDMAP_ENOTREADY (nothing published yet), SHARDMAP_EIO,
 * SHARDMAP_ENOMEM. Returns (load): 0, SHARDMAP_ENOENT (no such file), SHARDMAP_ECORRUPT (bad
 * file), SHARDMAP_ECONFLICT (its contents break an invariant), SHARDMAP_EIO, SHARDMAP_ENOMEM.
 * Thread-safety: save MT-safe, load single writer. Blocking: does I/O. */
SHARDMAP_API int shardmap_snapshot_save(shardmap *m, const char *path);
SHARDMAP_API int shardmap_snapshot_load(shardmap *m, const char *path, shardmap_error *why);

/* ---------------------------------------------------------------- pool and peers */

/* A fixed pool of worker threads (epoll loops with timers) for all network work: the
 * library's threads are exactly these, whatever the number of peers or maps using the pool.
 * threads 0 means the default (2); at most 256.
 * Returns: 0, SHARDMAP_EINVAL (out NULL, threads > 256), SHARDMAP_ENOMEM (memory, or the
 * system refused a thread), SHARDMAP_EIO (epoll or eventfd failed).
 * Thread-safety: MT-safe. Ownership: the caller closes *out with shardmap_pool_close. */
SHARDMAP_API int shardmap_pool_open(unsigned threads, shardmap_pool **out);
/* Stop and join the threads and free the pool. Every peers object and follower using it
 * must have been stopped first. Accepts NULL. Thread-safety: not thread-safe (last call on
 * p); never from one of p's own threads. Blocking: joins the threads. */
SHARDMAP_API void shardmap_pool_close(shardmap_pool *p);
/* The number of threads of p (0 for NULL). Thread-safety: MT-safe. */
SHARDMAP_API unsigned shardmap_pool_threads(const shardmap_pool *p);

typedef struct shardmap_peers_options {
	size_t size;             /* sizeof(shardmap_peers_options) */
	const char *listen;      /* "host:port" to accept peers on; port 0 picks a free one */
	const char *node_id;     /* NULL: derived from the listen address */
	unsigned fanout;         /* push targets per new version (default 3) */
	unsigned interval_ms;    /* anti-entropy period (default 1000) */
	unsigned ring;           /* recent deltas kept for pulls (default 256) */
	unsigned max_inbound;    /* inbound connection cap (default 64) */
	size_t send_queue_bytes; /* per-peer send queue cap (default 1 MiB) */
	size_t max_frame_bytes;  /* frame size cap (default 16 MiB) */
	const void *key;         /* shared HMAC-SHA256 key; NULL = no authentication */
	size_t key_len;
} shardmap_peers_options;

/* Fill *o with the defaults (listen "127.0.0.1:0", and the defaults above) and o->size.
 * Thread-safety: MT-safe. */
SHARDMAP_API void shardmap_peers_options_init(shardmap_peers_options *o);
/* Start sharing m's versions with peers on pool p: listen, observe m's publishes, push new
 * deltas to fanout random peers and announce each new version to the other connected ones
 * (a peer behind pulls), run anti-entropy every interval_ms. Never bootstraps m
 * from peers (an empty map takes nothing from them); a gap older than the ring asks m's
 * store follower to catch up. o may be NULL for the defaults (zero fields take defaults).
 * Returns: 0; SHARDMAP_EINVAL (NULL m, p or out, bad options size, fanout > 64, a key
 * without a length or a length without a key, a bad node id or listen address);
 * SHARDMAP_EIO (cannot bind or listen); SHARDMAP_ENOMEM.
 * Thread-safety: MT-safe; one peers object per map. Ownership: stop with
 * shardmap_peers_stop before closing m or p. The key is copied. Blocking: may resolve the
 * listen host name. */
SHARDMAP_API int shardmap_peers_start(shardmap *m, shardmap_pool *p,
                                      const shardmap_peers_options *o, shardmap_peers **out);
/* The bound listen address ("127.0.0.1:PORT", "[::1]:PORT"), NULL for NULL.
 * Thread-safety: MT-safe. Lifetime: until shardmap_peers_stop. */
SHARDMAP_API const char *shardmap_peers_address(const shardmap_peers *ps);
/* Add a known peer "host:port" (IPv4, [IPv6] or a host name, port 1..65535). A known peer
 * costs a small fixed record: connections are opened only to the few peers chosen for a
 * push or an anti-entropy round. Adding a known peer again changes nothing.
 * Returns: 0, SHARDMAP_EINVAL (NULL or malformed address, unknown host), SHARDMAP_EBUSY
 * (more than 4,194,304 known peers), SHARDMAP_ENOMEM.
 * Thread-safety: MT-safe. Blocking: may resolve a host name. */
SHARDMAP_API int shardmap_peers_add(shardmap_peers *ps, const char *host_port);
/* Forget a known peer (its connection, if any, is closed).
 * Returns: 0, SHARDMAP_EINVAL (malformed address), SHARDMAP_ENOENT (not known).
 * Thread-safety: MT-safe. Blocking: may resolve a host name. */
SHARDMAP_API int shardmap_peers_remove(shardmap_peers *ps, const char *host_port);
/* Stop: no more publishes are observed, every connection is closed, ps is freed. Accepts
 * NULL. Thread-safety: not thread-safe (last call on ps); never from a pool thread.
 * Blocking: waits for the pool to finish with ps's connections. */
SHARDMAP_API void shardmap_peers_stop(shardmap_peers *ps);

/* A back-end said "not my shard": ask for a coalesced, rate-limited catch-up from the store
 * the map follows; ignored when the map is already newer than seen_version.
 * Returns: 0 (queued or coalesced), SHARDMAP_ESTALE (map already newer: nothing to do),
 * SHARDMAP_EBUSY (rate-limited), SHARDMAP_ENOTSUP (map follows no store).
 * Thread-safety: MT-safe. Blocking: never. */
SHARDMAP_API int shardmap_hint_stale(shardmap *m, const char *stream, const char *shard_id,
                                     uint64_t seen_version);

/* ---------------------------------------------------------------- observability */

typedef struct shardmap_stats {
	uint64_t version;
	uint64_t streams, open_shards, closed_shards, cells;
	uint64_t applies;              /* deltas published */
	uint64_t rejects_stale, rejects_gap, rejects_conflict, rejects_nomem, rejects_invalid;
	uint64_t readers;              /* registered reader handles */
	uint64_t versions_retired;     /* versions replaced and queued for reclamation */
	uint64_t versions_freed;       /* of those, freed after their grace period */
	uint64_t reclaim_backlog;      /* retired - freed */
	uint64_t last_update_unix_ns;  /* wall clock of the last publish, 0 if none */
	uint64_t resident_bytes;       /* the map arena's resident bytes (0 without jemalloc) */
	uint64_t threads;              /* threads the library owns for this map */
	/* store follower */
	uint64_t store_version;        /* last version seen in the store */
	uint64_t store_requests, store_errors, hints, hints_coalesced, hints_dropped;
	uint64_t stale_ns;             /* time since the follower last heard from its store */
	/* peers */
	uint64_t peers_known, peers_connected, frames_in, frames_out, frames_refused,
	    peer_queue_drops, antientropy_pulls, versions_behind, digest_mismatches;
} shardmap_stats;

/* Fill *out (fields appended in later versions; never removed).
 * Returns: 0, SHARDMAP_EINVAL. Thread-safety: MT-safe. Blocking: never. */
SHARDMAP_API int shardmap_stats_get(const shardmap *m, shardmap_stats *out);
/* Write the stats in Prometheus text exposition format (names shardmap_*) into buf.
 * Returns: bytes written (excluding the NUL); SHARDMAP_EINVAL for NULL or len 0;
 * SHARDMAP_ENOMEM when len is too small (buf then holds a NUL-terminated prefix: retry with
 * a larger buffer). Thread-safety: MT-safe. Blocking: never. */
SHARDMAP_API int shardmap_metrics_text(const shardmap *m, char *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
