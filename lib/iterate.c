/* iterate.c - visiting streams and shards inside a read section (being written). */
#include "shardmap.h"
