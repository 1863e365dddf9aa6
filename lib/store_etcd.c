/* store_etcd.c - not written yet. */
#include "shardmap.h"
