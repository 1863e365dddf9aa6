/*
 * hashkey.h - partition key hashing for the route path, with failures reported.
 *
 * The public shardmap_hash_key cannot report an error. Neither hash can fail today (MD5 uses
 * OpenSSL's allocation-free MD5 functions), but the route path goes through
 * shardmap__hash_key, which returns a code, so a hash that could fail would give an error
 * code instead of a wrong route.
 */
#ifndef SHARDMAP_HASHKEY_H
#define SHARDMAP_HASHKEY_H

#include <stddef.h>

#include "shardmap.h"

/* Hash key bytes with SHARDMAP_HASH_MD5 or SHARDMAP_HASH_XXH3 (any other value: XXH3).
 * key may be NULL when len is 0.
 * Returns: 0 (*out set). Thread-safety: MT-safe (no shared state). Blocking: never;
 * allocates nothing. */
int shardmap__hash_key(int hash_fn, const void *key, size_t len, shardmap_hash *out);

/* The Kinesis hash of len bytes at key (not NULL): their MD5 digest read as one big-endian
 * unsigned 128-bit integer (hashkey.c). */
void shardmap__hash_md5(const void *key, size_t len, shardmap_hash *out);

/* shardmap__hash_key itself, inlined into the caller with XXH3 (the route path: a call per
 * key cost a tenth of a route at 1,024 shards); MD5 stays a call. The includer must have
 * included <xxhash.h> with XXH_INLINE_ALL defined. */
#ifdef XXH_INLINE_ALL
static inline int shardmap__hash_key_inline(int hash_fn, const void *key, size_t len,
                                            shardmap_hash *out)
{
	if (len == 0)
		key = ""; /* both hashes accept any pointer for no bytes; give them a real one */
	if (hash_fn == SHARDMAP_HASH_MD5) {
		shardmap__hash_md5(key, len, out);
		return SHARDMAP_OK;
	}
	/* XXH3-128's value is high64 << 64 | low64. Built as one 128-bit integer, gcc keeps the
	 * halves in registers; assigned field by field, gcc 12 vectorises the swap through the
	 * stack and stalls on store forwarding (13 ns instead of 6.5 ns per 24-byte key). */
	XXH128_hash_t x;
#if XXH_VERSION_NUMBER == 801
	/* Partition keys are mostly 17-128 bytes: call that size class of XXH3_128bits
	 * directly (xxhash 0.8.1's internal function, force-inlined), so the loop that hashes a
	 * batch holds the whole hash instead of a call and a size dispatch per key. The same
	 * value: test_hashkey checks every length 0-300 against the library. */
	if (len > 16 && len <= 128)
		x = XXH3_len_17to128_128b((const xxh_u8 *)key, len, XXH3_kSecret,
					  sizeof XXH3_kSecret, 0);
	else
#endif
		x = XXH3_128bits(key, len);
	unsigned __int128 v = (unsigned __int128)x.high64 << 64 | x.low64;
	*out = (shardmap_hash){.hi = (uint64_t)(v >> 64), .lo = (uint64_t)v};
	return SHARDMAP_OK;
}
#endif

#endif
