/*
 * peers.h - what peers.c shows the rest of the library, its tests and benchmarks beyond the
 * public shardmap_peers_* calls: counters by reason and the shape of a node's connections.
 */
#ifndef SHARDMAP_PEERS_H
#define SHARDMAP_PEERS_H

#include <stdint.h>

#include "shardmap.h"

struct shardmap__peers_counters {
	uint64_t too_old;          /* "too old: go to the store" answers received */
	uint64_t store_asks;       /* catch-ups asked of the store follower (too old, digests) */
	uint64_t inbound_refused;  /* connections accepted and closed at the inbound cap */
	uint64_t connects;         /* outbound connection attempts */
	uint64_t connect_failures; /* attempts that failed before a hello came back */
	uint64_t handshake_timeouts; /* connections closed for not finishing the handshake */
	uint64_t outbound, inbound, established, live; /* connections now */
	uint64_t ring;             /* deltas in the ring */
	uint64_t version;          /* our map's version as the peers module last saw it */
};

/* Connections dropped for reason (enum shardmap__refuse, peer_proto.h); 0 out of range.
 * Thread-safety: MT-safe (a relaxed counter). */
uint64_t shardmap__peers_refused(const shardmap_peers *ps, unsigned reason);
/* A snapshot of the counters above. Thread-safety: MT-safe. Blocking: a short lock. */
void shardmap__peers_counters(const shardmap_peers *ps, struct shardmap__peers_counters *out);

#endif
