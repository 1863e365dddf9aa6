/* hashkey.c - 128-bit hash keys (being written). */
#include "shardmap.h"

int shardmap_hash_cmp(shardmap_hash a, shardmap_hash b)
{
	if (a.hi != b.hi)
		return a.hi < b.hi ? -1 : 1;
	if (a.lo != b.lo)
		return a.lo < b.lo ? -1 : 1;
	return 0;
}
