/*
 * fuzz_peer_key.h - the HMAC key and receiver nonce shared by fuzz_peer_frame.c and the seed
 * generator gen_seeds.c, so that the committed keyed seeds carry tags the target accepts.
 */
#ifndef SHARDMAP_FUZZ_PEER_KEY_H
#define SHARDMAP_FUZZ_PEER_KEY_H

#include <stdint.h>

#include "peer_proto.h"

static const char fuzz_peer_key[] = "fuzz-peer-key";
static const uint8_t fuzz_peer_nonce[SHARDMAP__NONCE] = {1, 2,	3,  4,	5,  6,	7,  8,
							 9, 10, 11, 12, 13, 14, 15, 16};

#endif
