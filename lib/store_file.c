/* store_file.c - not written yet. */
#include "shardmap.h"
