/*
 * hashkey.h - partition key hashing for the route path, with failures reported.
 *
 * The public shardmap_hash_key cannot report an error; MD5 through OpenSSL can fail (a
 * thread's first call allocates its digest context; a provider without MD5). The route path
 * uses shardmap__hash_key so such a failure becomes an error code instead of a wrong route.
 */
#ifndef SHARDMAP_HASHKEY_H
#define SHARDMAP_HASHKEY_H

#include <stddef.h>

#include "shardmap.h"

/* Hash key bytes with SHARDMAP_HASH_MD5 or SHARDMAP_HASH_XXH3 (any other value: XXH3).
 * key may be NULL when len is 0.
 * Returns: 0 (*out set); SHARDMAP_ENOMEM or SHARDMAP_ENOTSUP (MD5 only: out of memory, or
 * OpenSSL offers no MD5), *out unchanged.
 * Thread-safety: MT-safe (MD5 keeps one EVP_MD_CTX per thread, freed at thread exit).
 * Blocking: never (a thread's first MD5 call allocates). */
int shardmap__hash_key(int hash_fn, const void *key, size_t len, shardmap_hash *out);

#endif
