/* lookup.c - not written yet. */
#include "shardmap.h"
