/* ratelimit.c - not written yet. */
#include "shardmap.h"
