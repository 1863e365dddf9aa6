/*
 * peers.h - what peers.c shows the rest of the library, its tests and benchmarks beyond the
 * public shardmap_peers_* calls: counters by reason and the shape of a node's connections.
 */
#ifndef SHARDMAP_PEERS_H
#define SHARDMAP_PEERS_H

#include <stdint.h>

#include "peer_proto.h"
#include "shardmap.h"

struct shardmap__peers_counters {
	/* "too old: go to the store" answers received */
	uint64_t too_old;
	/* catch-ups asked of the store follower (too old, digest mismatches) */
	uint64_t store_asks;
	/* connections accepted and closed at once at the inbound cap */
	uint64_t inbound_refused;
	/* outbound connection attempts, and those that failed before a hello came back */
	uint64_t connects, connect_failures;
	/* connections closed for not finishing the handshake in time */
	uint64_t handshake_timeouts;
	/* anti-entropy rounds run */
	uint64_t antientropy_rounds;
	/* connections now: outbound, inbound, hellos exchanged, not yet freed */
	uint64_t outbound, inbound, established, live;
	/* deltas in the ring; our map's version as the peers module last saw it */
	uint64_t ring, version;
	/* frames by enum shardmap__frame_type (index 0 unused) */
	uint64_t frames_in[SHARDMAP__FRAME_TYPES], frames_out[SHARDMAP__FRAME_TYPES];
};

/* Connections dropped for reason (enum shardmap__refuse, peer_proto.h); 0 out of range.
 * Thread-safety: MT-safe (a relaxed counter). */
uint64_t shardmap__peers_refused(const shardmap_peers *ps, unsigned reason);
/* A snapshot of the counters above. Thread-safety: MT-safe. Blocking: a short lock. */
void shardmap__peers_counters(const shardmap_peers *ps, struct shardmap__peers_counters *out);

#endif
