/*
 * peers.c - spreading map versions between front-ends over TCP, on the fixed worker pool.
 *
 * For shardmap_peers_start/add/remove/stop users: a fleet of front-ends that share
 * shard-map updates without growing threads, connections or memory with the fleet.
 *
 * Dissemination. An observer of the map (map.h) sees every publish. A new version made by a
 * delta is encoded once (lib/codec.h), kept in a bounded ring of recent deltas, and pushed
 * to `fanout` random connected peers (topped up by connecting lazily to random known peers
 * when fewer are connected), and announced (its version alone) to the node's other
 * connections, so a neighbour the push missed pulls at once rather than at its next
 * anti-entropy round. A receiver applies it if it follows its version
 * (shardmap_apply); its own observer then pushes it on, once, to its own random peers; a
 * duplicate (SHARDMAP_ESTALE) stops there, a gap makes the receiver pull from the sender.
 * Every interval_ms (jittered) each node sends an announce (version and content digest) to
 * one random peer - a connected one, or one round in REWIRE_EVERY a random known one, which
 * keeps the overlay of connections random - and the peer answers with its own announce
 * when it is ahead or its content differs. Whoever is behind pulls ("I have V") and is
 * answered from the ring, or told "too old" when V has left the ring: it then asks its
 * store follower to catch up. Equal versions with different
 * digests are counted and both sides ask their store. A node never bootstraps from peers: at
 * version 0 it neither applies peer deltas nor pulls.
 *
 * Bounds. Outbound connections <= fanout + OUTBOUND_SPARE (least recently used one closed to
 * make room), inbound <= max_inbound (excess accepted and closed at once), each connection's
 * send queue <= send_queue_bytes (when full the oldest frame is dropped, counted, and the
 * peer is marked for the next anti-entropy round), connection attempts to a failing peer
 * back off exponentially with jitter, and a connection must finish its handshake within
 * HANDSHAKE_INTERVALS anti-entropy intervals (at least HANDSHAKE_MIN_MS) or is closed, so a
 * silent client cannot hold an inbound slot. A known peer is a fixed small record (struct
 * peer: no thread, socket or buffer) in a vector and a ck_hs set; all I/O runs as pool
 * tasks: one per node (accepts and the anti-entropy timer) and one per open connection.
 *
 * Security. With a key every frame carries an HMAC-SHA256 tag (peer_proto.h) over the
 * receiver's per-connection hello nonce, the header (with its sequence number) and the
 * payload; a missing or wrong tag, a replayed or out-of-order sequence number, and any
 * malformed, oversized or unexpected frame close that connection and are counted by reason.
 *
 * Threads and locks. A connection's socket, buffers, sequence numbers and handshake state
 * belong to its task (its callback runs on one worker, never twice at once) and need no
 * lock. Everything shared - the peer table, the connection lists, every send queue, the ring
 * and the node's idea of its own version - is under ps->lock. Only a connection's own
 * callback frees it (shardmap__task_close from inside the callback never waits); everyone
 * else asks it to close (conn_shutdown: unlink under the lock, then wake it). Whoever uses a
 * connection found through the lists does so within one hold of ps->lock, and the callback
 * unlinks under the same lock before freeing, so no one reaches a freed connection.
 * Lock order: map write lock (observers run under it) -> ps->lock -> pool worker locks.
 * So shardmap_apply, observer add/remove and the store follower are called with ps->lock
 * released, and shardmap_peers_stop (which waits for the pool) is not for pool threads.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ck_hs.h>
#include <openssl/rand.h>
#include <xxhash.h>

#include "codec.h"
#include "map.h"
#include "peer_proto.h"
#include "peers.h"
#include "pool.h"

#define DEFAULT_FANOUT	     3u
#define DEFAULT_INTERVAL_MS  1000u
#define DEFAULT_RING	     256u
#define DEFAULT_MAX_INBOUND  64u
#define DEFAULT_SEND_QUEUE   (1u << 20)
#define DEFAULT_MAX_FRAME    (16u << 20)
#define MAX_FANOUT	     64u
#define MAX_KNOWN_PEERS	     (1u << 22)
#define OUTBOUND_SPARE	     2u	  /* outbound connections beyond fanout (anti-entropy) */
#define REWIRE_EVERY	     8u	  /* one anti-entropy round in 8 dials a random known peer */
#define BACKOFF_BASE_MS	     100u /* first retry after a failed connection attempt */
#define BACKOFF_MAX_MS	     30000u
#define HANDSHAKE_INTERVALS  10u /* connect + hellos must be done within 10 intervals */
#define HANDSHAKE_MIN_MS     1000u
#define READ_CHUNK	     4096u
#define READS_PER_CALLBACK   64 /* fairness between connections of one worker */
#define ACCEPTS_PER_CALLBACK 64

/* ---------------------------------------------------------------- records */

/* An address in 20 bytes: family, port (network order), IPv4 or IPv6 bytes. */
struct peer_addr {
	uint16_t family;
	uint16_t port;
	uint8_t bytes[16];
};

#define PEER_SELF 0x1u /* this is us (learned from a hello): never chosen */

/* A known peer: all a member of the fleet costs while we are not talking to it. */
struct peer {
	struct peer_addr addr;
	uint8_t failures; /* consecutive failed connection attempts (backoff exponent) */
	uint8_t flags;
	uint32_t index;	      /* position in ps->peers */
	uint64_t retry_at_ms; /* no connection attempt before this (shardmap__now_ms) */
	struct conn *out;     /* our outbound connection to it, NULL when none */
};

/* A frame waiting in a send queue: type and payload; header, sequence number and tag are
 * made when it is written, so dropping a queued frame never leaves a gap in the sequence. */
struct qframe {
	struct qframe *next;
	uint8_t type;
	size_t len;
	uint8_t payload[];
};

enum conn_state {
	CONN_CONNECTING, /* outbound, waiting for connect() to finish */
	CONN_HANDSHAKE,	 /* our hello is going out; nothing else until the peer's arrives */
	CONN_OPEN,	 /* hellos exchanged: queued frames flow */
};

struct conn {
	shardmap_peers *ps;
	struct shardmap__task *task;
	int fd;
	int inbound;
	/* owned by the task (its callback only) */
	enum conn_state state;
	uint8_t nonce[SHARDMAP__NONCE];	     /* ours: the peer tags its frames over it */
	uint8_t peer_nonce[SHARDMAP__NONCE]; /* theirs: we tag our frames over it */
	uint64_t rx_seq, tx_seq;	     /* last received, last sent */
	uint64_t pulled_from;		     /* the version of our last pull on it (no repeats) */
	uint8_t *rbuf;
	size_t rlen, rcap;
	uint8_t *wbuf; /* the frame being written */
	size_t wlen, woff;
	uint32_t watching;
	/* under ps->lock */
	struct peer *peer; /* outbound: the known peer, NULL once unlinked */
	struct qframe *qhead, *qtail;
	size_t qbytes;
	int established;		  /* hellos exchanged: a push target */
	int linked;			  /* on ps->conns: reachable by other threads */
	int closing;			  /* asked to close; its own callback will */
	int needs_ae;			  /* frames were dropped: next anti-entropy prefers it */
	struct conn *prev, *next;	  /* ps->conns */
	struct conn *lru_prev, *lru_next; /* outbound only, most recently used first */
};

/* One recent delta, encoded, for answering pulls. */
struct ring_entry {
	uint64_t from, to;
	uint8_t *rec;
	size_t len;
};

struct shardmap_peers {
	shardmap *map;
	shardmap_pool *pool;
	struct shardmap__ext_stats *ext;
	shardmap_peers_options opt; /* defaults filled in; key points at key_copy */
	uint8_t *key_copy;
	struct shardmap__mac *mac; /* NULL without a key */
	char node_id[SHARDMAP__NAME_MAX + 1];
	char address[INET6_ADDRSTRLEN + 8];
	int listen_fd;
	struct shardmap__task *listener; /* accepts and the anti-entropy timer */
	struct shardmap__observer observer;
	unsigned max_outbound;
	uint64_t handshake_ms;

	pthread_mutex_t lock;
	pthread_cond_t drained; /* n_live reached 0 during stop */
	/* under lock */
	uint64_t version, digest; /* of our map, as last published */
	int seen_publish;
	uint64_t best_seen; /* highest version a peer told us about */
	struct peer **peers;
	size_t n_peers, cap_peers;
	ck_hs_t by_addr;
	struct conn *conns;
	size_t n_live;	   /* connection structs not yet freed (linked or closing) */
	size_t n_needs_ae; /* linked connections with needs_ae set */
	size_t n_out, n_in, n_established;
	struct conn *lru_head, *lru_tail;
	struct ring_entry *ring;
	size_t ring_start, ring_n;
	uint64_t rng;
	int stopping;

	/* statistics beyond shardmap_stats (relaxed atomics: counters only) */
	_Atomic uint64_t refused[SHARDMAP__REFUSE_COUNT];
	_Atomic uint64_t frames_in[SHARDMAP__FRAME_TYPES], frames_out[SHARDMAP__FRAME_TYPES];
	_Atomic uint64_t too_old, store_asks, inbound_refused, connects, connect_failures,
	    handshake_timeouts, antientropy_rounds;
};

/* The connection whose delta this thread is applying: its observer does not push the
 * delta straight back to where it came from. */
static _Thread_local const struct conn *applying_from;

static void count(_Atomic uint64_t *c, uint64_t n)
{
	atomic_fetch_add_explicit(c, n, memory_order_relaxed); /* statistics: no ordering */
}

static void gauge(_Atomic uint64_t *g, uint64_t v)
{
	atomic_store_explicit(g, v, memory_order_relaxed); /* statistics: no ordering */
}

/* xorshift64*: the node's choice of peers and jitter (not security-relevant). Under lock. */
static uint64_t rnd(shardmap_peers *ps)
{
	ps->rng ^= ps->rng >> 12;
	ps->rng ^= ps->rng << 25;
	ps->rng ^= ps->rng >> 27;
	return ps->rng * 0x2545F4914F6CDD1DULL;
}

/* One frame of type in or out: the total in the map's stats and the count by type here. */
static void count_frame(shardmap_peers *ps, _Atomic uint64_t *by_type, unsigned type,
			_Atomic uint64_t *total)
{
	if (type < SHARDMAP__FRAME_TYPES)
		count(&by_type[type], 1);
	count(total, 1);
}

static uint64_t jitter(shardmap_peers *ps, uint64_t ms)
{
	return ms / 2 + rnd(ps) % (ms + 1); /* uniform in [ms/2, 3ms/2] */
}

/* ---------------------------------------------------------------- addresses */

/* Split "host:port" or "[v6]:port". Returns 0 or SHARDMAP_EINVAL. */
static int split_host_port(const char *s, char *host, size_t host_len, unsigned *port,
			   int allow_zero)
{
	if (s == NULL || shardmap__check_name(s) != 0)
		return SHARDMAP_EINVAL;
	const char *colon = strrchr(s, ':');
	if (colon == NULL || colon[1] == '\0')
		return SHARDMAP_EINVAL;
	const char *h = s;
	size_t hl = (size_t)(colon - s);
	if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
		h++;
		hl -= 2;
	}
	if (hl == 0 || hl >= host_len)
		return SHARDMAP_EINVAL;
	memcpy(host, h, hl);
	host[hl] = '\0';
	unsigned long p = 0;
	for (const char *c = colon + 1; *c; c++) {
		if (*c < '0' || *c > '9' || p > 65535)
			return SHARDMAP_EINVAL;
		p = p * 10 + (unsigned long)(*c - '0');
	}
	if (p > 65535 || (p == 0 && !allow_zero))
		return SHARDMAP_EINVAL;
	*port = (unsigned)p;
	return SHARDMAP_OK;
}

/* Resolve "host:port" (numeric, or a name through getaddrinfo: may do I/O). */
static int resolve(const char *s, int allow_zero_port, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[256];
	unsigned port;
	if (split_host_port(s, host, sizeof host, &port, allow_zero_port) != 0)
		return SHARDMAP_EINVAL;
	memset(ss, 0, sizeof *ss);
	struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
		v4->sin_family = AF_INET;
		v4->sin_port = htons((uint16_t)port);
		*len = sizeof *v4;
		return SHARDMAP_OK;
	}
	if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons((uint16_t)port);
		*len = sizeof *v6;
		return SHARDMAP_OK;
	}
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
	struct addrinfo *res = NULL;
	if (getaddrinfo(host, NULL, &hints, &res) != 0 || res == NULL)
		return SHARDMAP_EINVAL;
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	*len = res->ai_addrlen;
	freeaddrinfo(res);
	if (ss->ss_family == AF_INET)
		v4->sin_port = htons((uint16_t)port);
	else if (ss->ss_family == AF_INET6)
		v6->sin6_port = htons((uint16_t)port);
	else
		return SHARDMAP_EINVAL;
	return SHARDMAP_OK;
}

static void addr_pack(const struct sockaddr_storage *ss, struct peer_addr *a)
{
	memset(a, 0, sizeof *a);
	a->family = ss->ss_family;
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *v4 = (const struct sockaddr_in *)ss;
		a->port = v4->sin_port;
		memcpy(a->bytes, &v4->sin_addr, 4);
	} else {
		const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)ss;
		a->port = v6->sin6_port;
		memcpy(a->bytes, &v6->sin6_addr, 16);
	}
}

static socklen_t addr_unpack(const struct peer_addr *a, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof *ss);
	if (a->family == AF_INET) {
		struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
		v4->sin_family = AF_INET;
		v4->sin_port = a->port;
		memcpy(&v4->sin_addr, a->bytes, 4);
		return sizeof *v4;
	}
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
	v6->sin6_family = AF_INET6;
	v6->sin6_port = a->port;
	memcpy(&v6->sin6_addr, a->bytes, 16);
	return sizeof *v6;
}

/* ---------------------------------------------------------------- the peer table (ck_hs) */

static unsigned long peer_hash(const void *obj, unsigned long seed)
{
	const struct peer *p = obj;
	return (unsigned long)XXH3_64bits_withSeed(&p->addr, sizeof p->addr, seed);
}

static bool peer_same(const void *a, const void *b)
{
	return memcmp(&((const struct peer *)a)->addr, &((const struct peer *)b)->addr,
		      sizeof(struct peer_addr)) == 0;
}

static void *hs_malloc(size_t n)
{
	return malloc(n);
}

static void *hs_realloc(void *p, size_t old, size_t n, bool defer)
{
	return realloc(p, n);
}

static void hs_free(void *p, size_t n, bool defer)
{
	free(p); /* the set is only used under ps->lock: nothing reads it concurrently */
}

static struct ck_malloc hs_allocator = {hs_malloc, hs_realloc, hs_free};

static int peer_usable(const struct peer *p, uint64_t now)
{
	return !(p->flags & PEER_SELF) && p->retry_at_ms <= now;
}

/* A random known peer we may talk to now, or NULL (a few draws, not a scan). */
static struct peer *peer_random(shardmap_peers *ps, uint64_t now)
{
	for (int tries = 0; tries < 8 && ps->n_peers > 0; tries++) {
		struct peer *p = ps->peers[rnd(ps) % ps->n_peers];
		if (peer_usable(p, now))
			return p;
	}
	return NULL;
}

static void peer_failed(shardmap_peers *ps, struct peer *p)
{
	if (p->failures < 16)
		p->failures++;
	uint64_t delay = (uint64_t)BACKOFF_BASE_MS << (p->failures - 1);
	if (delay > BACKOFF_MAX_MS)
		delay = BACKOFF_MAX_MS;
	p->retry_at_ms = shardmap__now_ms() + jitter(ps, delay);
	count(&ps->connect_failures, 1);
}

/* ---------------------------------------------------------------- statistics */

static void update_gauges(shardmap_peers *ps)
{
	gauge(&ps->ext->peers_known, ps->n_peers);
	gauge(&ps->ext->peers_connected, ps->n_established);
	gauge(&ps->ext->versions_behind,
	      ps->best_seen > ps->version ? ps->best_seen - ps->version : 0);
}

static void note_peer_version(shardmap_peers *ps, uint64_t v)
{
	if (v > ps->best_seen)
		ps->best_seen = v;
	update_gauges(ps);
}

/* Ask the store follower (if the map has one) to catch up: the peers cannot help. Called
 * without ps->lock; counted whether or not the map follows a store. */
static void ask_store(shardmap_peers *ps)
{
	count(&ps->store_asks, 1);
	(void)shardmap__follower_catch_up(ps->map); /* SHARDMAP_ENOTSUP: no follower */
}

/* ---------------------------------------------------------------- connection lists */

static void lru_unlink(shardmap_peers *ps, struct conn *c)
{
	if (c->lru_prev)
		c->lru_prev->lru_next = c->lru_next;
	else
		ps->lru_head = c->lru_next;
	if (c->lru_next)
		c->lru_next->lru_prev = c->lru_prev;
	else
		ps->lru_tail = c->lru_prev;
	c->lru_prev = c->lru_next = NULL;
}

static void lru_touch(shardmap_peers *ps, struct conn *c)
{
	if (c->inbound || ps->lru_head == c)
		return;
	lru_unlink(ps, c);
	c->lru_next = ps->lru_head;
	if (ps->lru_head)
		ps->lru_head->lru_prev = c;
	ps->lru_head = c;
	if (ps->lru_tail == NULL)
		ps->lru_tail = c;
}

static void qframes_free(struct qframe *q)
{
	while (q) {
		struct qframe *next = q->next;
		free(q);
		q = next;
	}
}

/* Take c off every list: after this no other thread can reach it. Under lock. */
static void conn_unlink(shardmap_peers *ps, struct conn *c)
{
	if (!c->linked)
		return;
	c->linked = 0;
	if (c->needs_ae) {
		c->needs_ae = 0;
		ps->n_needs_ae--;
	}
	if (c->prev)
		c->prev->next = c->next;
	else
		ps->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->prev = c->next = NULL;
	if (c->inbound) {
		ps->n_in--;
	} else {
		lru_unlink(ps, c);
		ps->n_out--;
		if (c->peer) {
			if (!c->established && !c->closing)
				peer_failed(ps, c->peer); /* never got a hello through: back off */
			c->peer->out = NULL;
			c->peer = NULL;
		}
	}
	if (c->established) {
		c->established = 0;
		ps->n_established--;
	}
	/* frames that will never be sent: the peer catches up by anti-entropy */
	size_t dropped = 0;
	for (struct qframe *q = c->qhead; q; q = q->next)
		dropped++;
	count(&ps->ext->peer_queue_drops, dropped);
	qframes_free(c->qhead);
	c->qhead = c->qtail = NULL;
	c->qbytes = 0;
	update_gauges(ps);
}

/* Ask c to close (any thread, under lock): it is unlinked now and freed by its callback. */
static void conn_shutdown(shardmap_peers *ps, struct conn *c)
{
	if (c->closing)
		return;
	c->closing = 1; /* first: a deliberate close is not the peer's failure */
	conn_unlink(ps, c);
	shardmap__task_wake(c->task);
}

/* Queue a frame for c (under lock). Full queue: the oldest frames go. Returns 0 or
 * SHARDMAP_ENOMEM. */
static int conn_send(shardmap_peers *ps, struct conn *c, uint8_t type, const void *payload,
		     size_t len)
{
	if (c->closing || !c->linked)
		return SHARDMAP_OK;
	struct qframe *q = malloc(sizeof *q + len);
	if (q == NULL)
		return SHARDMAP_ENOMEM;
	q->next = NULL;
	q->type = type;
	q->len = len;
	memcpy(q->payload, payload, len);
	while (c->qhead != NULL && c->qbytes + len > ps->opt.send_queue_bytes) {
		struct qframe *old = c->qhead;
		c->qhead = old->next;
		if (c->qhead == NULL)
			c->qtail = NULL;
		c->qbytes -= old->len;
		free(old);
		count(&ps->ext->peer_queue_drops, 1);
		if (!c->needs_ae) {
			c->needs_ae = 1; /* the next anti-entropy round goes to this peer */
			ps->n_needs_ae++;
		}
	}
	if (c->qtail)
		c->qtail->next = q;
	else
		c->qhead = q;
	c->qtail = q;
	c->qbytes += len;
	lru_touch(ps, c);
	shardmap__task_wake(c->task);
	return SHARDMAP_OK;
}

static void send_announce(shardmap_peers *ps, struct conn *c, uint8_t flags)
{
	uint8_t buf[17];
	struct shardmap__announce a = {
	    .version = ps->version, .digest = ps->digest, .flags = flags};
	conn_send(ps, c, SHARDMAP__FRAME_ANNOUNCE, buf, shardmap__announce_encode(&a, buf));
}

static void send_pull(shardmap_peers *ps, struct conn *c, uint64_t have)
{
	uint8_t buf[8];
	conn_send(ps, c, SHARDMAP__FRAME_PULL, buf, shardmap__pull_encode(have, buf));
}

/* ---------------------------------------------------------------- connections */

static void conn_cb(struct shardmap__task *t, void *arg, uint32_t events);

/* Put our hello in c's write buffer (the first frame, sequence 0). Under lock. */
static int conn_hello(shardmap_peers *ps, struct conn *c)
{
	struct shardmap__hello h = {.proto = SHARDMAP__PROTO_VERSION,
				    .features = ps->mac ? SHARDMAP__FEATURE_HMAC : 0,
				    .version = ps->version};
	memcpy(h.nonce, c->nonce, sizeof h.nonce);
	snprintf(h.node_id, sizeof h.node_id, "%s", ps->node_id);
	uint8_t payload[SHARDMAP__HELLO_MAX];
	size_t len = shardmap__hello_encode(&h, payload);
	free(c->wbuf);
	c->wbuf = NULL;
	c->wlen = c->woff = 0;
	int rc = shardmap__frame_build(ps->mac, NULL, SHARDMAP__FRAME_HELLO, 0, payload, len,
				       &c->wbuf, &c->wlen);
	if (rc == SHARDMAP_OK)
		count_frame(ps, ps->frames_out, SHARDMAP__FRAME_HELLO, &ps->ext->frames_out);
	return rc;
}

/* A new connection on fd, linked and watched. Under lock. NULL on failure (fd closed). */
static struct conn *conn_new(shardmap_peers *ps, int fd, int inbound, struct peer *peer)
{
	struct conn *c = calloc(1, sizeof *c);
	if (c != NULL) {
		c->ps = ps;
		c->fd = fd;
		c->inbound = inbound;
		c->state = inbound ? CONN_HANDSHAKE : CONN_CONNECTING;
	}
	/* the task last: closing it again would wait for its worker, under our lock */
	if (c == NULL || RAND_bytes(c->nonce, sizeof c->nonce) != 1 ||
	    (inbound && conn_hello(ps, c) != SHARDMAP_OK) ||
	    shardmap__task_open(ps->pool, conn_cb, c, &c->task) != SHARDMAP_OK) {
		if (c != NULL)
			free(c->wbuf);
		free(c);
		close(fd);
		return NULL;
	}
	c->linked = 1;
	c->next = ps->conns;
	if (ps->conns)
		ps->conns->prev = c;
	ps->conns = c;
	ps->n_live++;
	if (inbound) {
		ps->n_in++;
	} else {
		ps->n_out++;
		c->peer = peer;
		peer->out = c;
		lru_touch(ps, c);
	}
	/* last: from here the callback may run (it waits for our lock) */
	c->watching = SHARDMAP__EV_WRITE;
	if (shardmap__task_timer(c->task, ps->handshake_ms) != SHARDMAP_OK ||
	    shardmap__task_watch(c->task, fd, SHARDMAP__EV_WRITE) != SHARDMAP_OK)
		conn_shutdown(ps, c);
	return c;
}

/* The outbound connection to p, opened if needed (evicting the least recently used one
 * when at the cap). Under lock. NULL when it cannot be opened now. */
static struct conn *conn_to(shardmap_peers *ps, struct peer *p)
{
	if (p->out != NULL) {
		lru_touch(ps, p->out);
		return p->out;
	}
	if (ps->stopping || !peer_usable(p, shardmap__now_ms()))
		return NULL;
	while (ps->n_out >= ps->max_outbound && ps->lru_tail != NULL)
		conn_shutdown(ps, ps->lru_tail);
	struct sockaddr_storage ss;
	socklen_t len = addr_unpack(&p->addr, &ss);
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		peer_failed(ps, p);
		return NULL;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* frames are whole */
	count(&ps->connects, 1);
	if (connect(fd, (struct sockaddr *)&ss, len) != 0 && errno != EINPROGRESS) {
		close(fd);
		peer_failed(ps, p);
		return NULL;
	}
	return conn_new(ps, fd, 0, p);
}

/* Free c: only from its own callback. */
static void conn_destroy(struct conn *c)
{
	shardmap_peers *ps = c->ps;
	pthread_mutex_lock(&ps->lock);
	conn_unlink(ps, c);
	ps->n_live--;
	if (ps->n_live == 0)
		pthread_cond_broadcast(&ps->drained);
	pthread_mutex_unlock(&ps->lock);
	shardmap__task_close(c->task); /* from its own callback: never waits */
	close(c->fd);
	free(c->rbuf);
	free(c->wbuf);
	free(c);
}

/* A frame broke the rules: count the reason, drop the connection. */
static void conn_refuse(struct conn *c, enum shardmap__refuse why)
{
	count(&c->ps->refused[why], 1);
	count(&c->ps->ext->frames_refused, 1);
	conn_destroy(c);
}

/* ---------------------------------------------------------------- frames in */

enum { FRAME_GO_ON = 0, FRAME_STOP = 1 }; /* FRAME_STOP: c was freed */

static int on_hello(shardmap_peers *ps, struct conn *c, const uint8_t *p, size_t len)
{
	struct shardmap__hello h;
	if (c->state == CONN_OPEN) {
		conn_refuse(c, SHARDMAP__REFUSE_UNEXPECTED);
		return FRAME_STOP;
	}
	if (shardmap__hello_decode(p, len, &h) != SHARDMAP_OK) {
		conn_refuse(c, SHARDMAP__REFUSE_MALFORMED);
		return FRAME_STOP;
	}
	if (h.proto != SHARDMAP__PROTO_VERSION) {
		conn_refuse(c, SHARDMAP__REFUSE_VERSION);
		return FRAME_STOP;
	}
	pthread_mutex_lock(&ps->lock);
	if (strcmp(h.node_id, ps->node_id) == 0) {
		/* we dialled ourselves: never again */
		if (c->peer)
			c->peer->flags |= PEER_SELF;
		pthread_mutex_unlock(&ps->lock);
		conn_destroy(c);
		return FRAME_STOP;
	}
	memcpy(c->peer_nonce, h.nonce, sizeof c->peer_nonce);
	c->state = CONN_OPEN;
	if (c->linked) {
		c->established = 1;
		ps->n_established++;
		if (c->peer) {
			c->peer->failures = 0;
			c->peer->retry_at_ms = 0;
		}
	}
	note_peer_version(ps, h.version);
	if (h.version > ps->version && ps->version > 0) {
		c->pulled_from = ps->version;
		send_pull(ps, c, ps->version);
		count(&ps->ext->antientropy_pulls, 1);
	}
	pthread_mutex_unlock(&ps->lock);
	return FRAME_GO_ON;
}

static int on_announce(shardmap_peers *ps, struct conn *c, const uint8_t *p, size_t len)
{
	struct shardmap__announce a;
	if (shardmap__announce_decode(p, len, &a) != SHARDMAP_OK) {
		conn_refuse(c, SHARDMAP__REFUSE_MALFORMED);
		return FRAME_STOP;
	}
	int mismatch = 0;
	pthread_mutex_lock(&ps->lock);
	note_peer_version(ps, a.version);
	if (a.version > ps->version && ps->version > 0) {
		c->pulled_from = ps->version;
		send_pull(ps, c, ps->version);
		count(&ps->ext->antientropy_pulls, 1);
	} else if (a.version == ps->version && a.digest != ps->digest && a.version > 0) {
		mismatch = 1;
	}
	/* answer only when it tells them something: that we are ahead (they will pull) or that
	 * our content differs; when they are ahead we pulled, when we agree silence says so */
	if ((a.flags & SHARDMAP__ANNOUNCE_REPLY) && (ps->version > a.version || mismatch))
		send_announce(ps, c, 0);
	pthread_mutex_unlock(&ps->lock);
	if (mismatch) {
		count(&ps->ext->digest_mismatches, 1);
		ask_store(ps);
	}
	return FRAME_GO_ON;
}

/* Index (from the oldest) of the ring entry starting at version from, or -1. Under lock. */
static long ring_find(shardmap_peers *ps, uint64_t from)
{
	for (size_t i = 0; i < ps->ring_n; i++) {
		if (ps->ring[(ps->ring_start + i) % ps->opt.ring].from == from)
			return (long)i;
	}
	return -1;
}

static int on_pull(shardmap_peers *ps, struct conn *c, const uint8_t *p, size_t len)
{
	uint64_t have;
	if (shardmap__pull_decode(p, len, &have) != SHARDMAP_OK) {
		conn_refuse(c, SHARDMAP__REFUSE_MALFORMED);
		return FRAME_STOP;
	}
	pthread_mutex_lock(&ps->lock);
	note_peer_version(ps, have);
	long first = have < ps->version ? ring_find(ps, have) : -1;
	if (have >= ps->version) {
		send_announce(ps, c, 0); /* nothing to give: say where we are */
	} else if (first < 0) {
		/* gone from the ring (or never in it): only the store can help */
		uint8_t buf[24];
		struct shardmap__too_old t = {.asked = have,
					      .oldest = ps->ring_n ? ps->ring[ps->ring_start].from
								   : ps->version,
					      .newest = ps->version};
		conn_send(ps, c, SHARDMAP__FRAME_TOO_OLD, buf, shardmap__too_old_encode(&t, buf));
	} else {
		/* send the chain, up to half a queue; the announce after it brings the rest */
		size_t budget = ps->opt.send_queue_bytes / 2, sent = 0;
		size_t i = (size_t)first;
		for (; i < ps->ring_n; i++) {
			const struct ring_entry *e = &ps->ring[(ps->ring_start + i) % ps->opt.ring];
			if (sent > 0 && sent + e->len > budget)
				break;
			conn_send(ps, c, SHARDMAP__FRAME_DELTA, e->rec, e->len);
			sent += e->len;
		}
		if (i < ps->ring_n)
			send_announce(ps, c, 0);
	}
	pthread_mutex_unlock(&ps->lock);
	return FRAME_GO_ON;
}

static int on_delta(shardmap_peers *ps, struct conn *c, const uint8_t *p, size_t len)
{
	shardmap_delta *d = NULL;
	size_t used = 0;
	shardmap_error why;
	int rc = shardmap__codec_decode(p, len, &d, &used, &why);
	if (rc == SHARDMAP_ENOMEM)
		return FRAME_GO_ON; /* our problem, not the peer's: anti-entropy repairs it */
	if (rc != SHARDMAP_OK || used != len) {
		shardmap_delta_free(d);
		conn_refuse(c, SHARDMAP__REFUSE_MALFORMED);
		return FRAME_STOP;
	}
	if (shardmap_version(ps->map) == 0) {
		/* never bootstrap from peers: the store or a snapshot gives the first version */
		shardmap_delta_free(d);
		return FRAME_GO_ON;
	}
	applying_from = c;
	rc = shardmap_apply(ps->map, d, &why);
	applying_from = NULL;
	uint64_t from = d->from_version, to = d->to_version;
	shardmap_delta_free(d);
	if (rc == SHARDMAP_EGAP) {
		pthread_mutex_lock(&ps->lock);
		note_peer_version(ps, to);
		if (from > ps->version && ps->version > 0 && c->pulled_from != ps->version) {
			c->pulled_from = ps->version;
			send_pull(ps, c, ps->version);
			count(&ps->ext->antientropy_pulls, 1);
		}
		pthread_mutex_unlock(&ps->lock);
	} else if (rc != SHARDMAP_OK && rc != SHARDMAP_ESTALE && rc != SHARDMAP_ENOMEM) {
		conn_refuse(c, SHARDMAP__REFUSE_BAD_DELTA); /* it breaks the map's invariants */
		return FRAME_STOP;
	}
	/* 0: published (our observer pushed it on); ESTALE: a duplicate; ENOMEM: ours */
	return FRAME_GO_ON;
}

static int on_too_old(shardmap_peers *ps, struct conn *c, const uint8_t *p, size_t len)
{
	struct shardmap__too_old t;
	if (shardmap__too_old_decode(p, len, &t) != SHARDMAP_OK) {
		conn_refuse(c, SHARDMAP__REFUSE_MALFORMED);
		return FRAME_STOP;
	}
	count(&ps->too_old, 1);
	ask_store(ps);
	return FRAME_GO_ON;
}

/* Check and dispatch one whole frame. */
static int on_frame(shardmap_peers *ps, struct conn *c, const struct shardmap__frame_header *h,
		    const uint8_t *frame, size_t frame_len)
{
	int hello = h->type == SHARDMAP__FRAME_HELLO;
	if (ps->mac &&
	    shardmap__frame_verify(ps->mac, hello ? NULL : c->nonce, frame, frame_len) != 0) {
		conn_refuse(c, SHARDMAP__REFUSE_BAD_TAG);
		return FRAME_STOP;
	}
	if (c->state != CONN_OPEN && !hello) {
		conn_refuse(c, SHARDMAP__REFUSE_UNEXPECTED);
		return FRAME_STOP;
	}
	if (h->seq != (hello ? 0 : c->rx_seq + 1)) {
		conn_refuse(c, SHARDMAP__REFUSE_SEQUENCE);
		return FRAME_STOP;
	}
	c->rx_seq = h->seq;
	count_frame(ps, ps->frames_in, h->type, &ps->ext->frames_in);
	const uint8_t *payload = frame + SHARDMAP__FRAME_HEADER;
	switch (h->type) {
	case SHARDMAP__FRAME_HELLO:
		return on_hello(ps, c, payload, h->length);
	case SHARDMAP__FRAME_ANNOUNCE:
		return on_announce(ps, c, payload, h->length);
	case SHARDMAP__FRAME_DELTA:
		return on_delta(ps, c, payload, h->length);
	case SHARDMAP__FRAME_PULL:
		return on_pull(ps, c, payload, h->length);
	default:
		return on_too_old(ps, c, payload, h->length);
	}
}

/* Read what is there and handle every whole frame. Returns FRAME_STOP if c was freed. */
static int conn_read(shardmap_peers *ps, struct conn *c)
{
	size_t frame_max = ps->opt.max_frame_bytes + SHARDMAP__FRAME_HEADER + SHARDMAP__FRAME_TAG;
	for (int reads = 0; reads < READS_PER_CALLBACK; reads++) {
		if (c->rcap - c->rlen < READ_CHUNK) {
			size_t cap = c->rcap ? 2 * c->rcap : READ_CHUNK;
			if (cap > frame_max + READ_CHUNK)
				cap = frame_max + READ_CHUNK;
			if (cap < c->rlen + READ_CHUNK)
				cap = c->rlen + READ_CHUNK;
			uint8_t *nb = realloc(c->rbuf, cap);
			if (nb == NULL)
				return FRAME_GO_ON; /* try again on the next readiness */
			c->rbuf = nb;
			c->rcap = cap;
		}
		ssize_t n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
		if (n == 0) {
			if (c->rlen > 0)
				conn_refuse(c, SHARDMAP__REFUSE_TRUNCATED);
			else
				conn_destroy(c);
			return FRAME_STOP;
		}
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			if (errno == EINTR)
				continue;
			conn_destroy(c); /* reset by the peer */
			return FRAME_STOP;
		}
		c->rlen += (size_t)n;
		size_t off = 0;
		for (;;) {
			struct shardmap__frame_header h;
			size_t flen = 0;
			enum shardmap__refuse why;
			int rc = shardmap__frame_parse(c->rbuf + off, c->rlen - off,
						       ps->opt.max_frame_bytes, ps->mac != NULL, &h,
						       &flen, &why);
			if (rc < 0) {
				conn_refuse(c, why);
				return FRAME_STOP;
			}
			if (rc == SHARDMAP__FRAME_MORE)
				break;
			if (on_frame(ps, c, &h, c->rbuf + off, flen) == FRAME_STOP)
				return FRAME_STOP;
			off += flen;
		}
		memmove(c->rbuf, c->rbuf + off, c->rlen - off);
		c->rlen -= off;
	}
	if (c->rlen == 0 && c->rcap > 16 * READ_CHUNK) {
		free(c->rbuf); /* a big frame passed: do not keep its buffer while idle */
		c->rbuf = NULL;
		c->rcap = 0;
	}
	return FRAME_GO_ON;
}

/* ---------------------------------------------------------------- frames out */

/* Write the current frame and queued ones until the socket is full. Returns FRAME_STOP if c
 * was freed; *blocked says whether output is still pending. */
static int conn_flush(shardmap_peers *ps, struct conn *c, int *blocked)
{
	*blocked = 0;
	for (;;) {
		if (c->woff == c->wlen) {
			if (c->state != CONN_OPEN)
				return FRAME_GO_ON; /* only the hello goes before the peer's hello
						     */
			pthread_mutex_lock(&ps->lock);
			struct qframe *q = c->qhead;
			if (q != NULL) {
				c->qhead = q->next;
				if (c->qhead == NULL)
					c->qtail = NULL;
				c->qbytes -= q->len;
			}
			pthread_mutex_unlock(&ps->lock);
			if (q == NULL)
				return FRAME_GO_ON;
			free(c->wbuf);
			c->wbuf = NULL;
			c->wlen = c->woff = 0;
			uint8_t q_type = q->type;
			int rc =
			    shardmap__frame_build(ps->mac, c->peer_nonce, q->type, c->tx_seq + 1,
						  q->payload, q->len, &c->wbuf, &c->wlen);
			free(q);
			if (rc != SHARDMAP_OK) {
				count(&ps->ext->peer_queue_drops, 1);
				continue;
			}
			c->tx_seq++;
			count_frame(ps, ps->frames_out, q_type, &ps->ext->frames_out);
		}
		ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				*blocked = 1;
				return FRAME_GO_ON;
			}
			if (errno == EINTR)
				continue;
			conn_destroy(c);
			return FRAME_STOP;
		}
		c->woff += (size_t)n;
	}
}

static void conn_cb(struct shardmap__task *t, void *arg, uint32_t events)
{
	struct conn *c = arg;
	shardmap_peers *ps = c->ps;

	pthread_mutex_lock(&ps->lock);
	int closing = c->closing;
	pthread_mutex_unlock(&ps->lock);
	if (closing) {
		conn_destroy(c);
		return;
	}
	if ((events & SHARDMAP__EV_TIMER) && c->state != CONN_OPEN) {
		count(&ps->handshake_timeouts, 1); /* a silent peer must not hold a slot */
		conn_destroy(c);
		return;
	}
	if (c->state == CONN_CONNECTING) {
		if (!(events & (SHARDMAP__EV_WRITE | SHARDMAP__EV_ERROR)))
			return;
		int err = 0;
		socklen_t elen = sizeof err;
		if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0 || err != 0) {
			conn_destroy(c); /* refused or unreachable: conn_unlink backs off */
			return;
		}
		pthread_mutex_lock(&ps->lock);
		int rc = conn_hello(ps, c);
		pthread_mutex_unlock(&ps->lock);
		if (rc != SHARDMAP_OK) {
			conn_destroy(c);
			return;
		}
		c->state = CONN_HANDSHAKE;
	} else if ((events & (SHARDMAP__EV_READ | SHARDMAP__EV_ERROR)) &&
		   conn_read(ps, c) == FRAME_STOP) {
		return; /* (a wake or a timer alone has nothing to read) */
	}
	int blocked;
	if (conn_flush(ps, c, &blocked) == FRAME_STOP)
		return;
	uint32_t want = SHARDMAP__EV_READ | (blocked ? SHARDMAP__EV_WRITE : 0);
	if (want != c->watching && shardmap__task_watch(t, c->fd, want) == SHARDMAP_OK)
		c->watching = want;
}

/* ---------------------------------------------------------------- publishing */

/* Choose up to fanout push targets (under lock): random connected peers first, topped up
 * with random known peers (connected lazily). */
static size_t push_targets(shardmap_peers *ps, struct conn **out, size_t want)
{
	size_t n = 0, seen = 0;
	for (struct conn *c = ps->conns; c; c = c->next) {
		if (!c->established || c == applying_from)
			continue;
		seen++;
		if (n < want) {
			out[n++] = c;
		} else {
			size_t j = rnd(ps) % seen; /* reservoir sampling */
			if (j < want)
				out[j] = c;
		}
	}
	uint64_t now = shardmap__now_ms();
	for (int tries = 0; n < want && tries < (int)(2 * want); tries++) {
		struct peer *p = peer_random(ps, now);
		if (p == NULL)
			break;
		if (p->out != NULL && (p->out->established || p->out == applying_from))
			continue; /* already considered */
		struct conn *c = conn_to(ps, p);
		int dup = c == NULL;
		for (size_t k = 0; k < n && !dup; k++)
			dup = out[k] == c;
		if (!dup)
			out[n++] = c;
	}
	return n;
}

/* Tell every other established connection our new version (under lock): a neighbour the
 * push missed pulls at once instead of waiting for anti-entropy. An epidemic push that each
 * node passes on once, to fanout peers, misses about e^-fanout of the fleet (5% at 3), and
 * at the default 1 s anti-entropy interval those nodes set the fleet's p99 (1.5 s for 1,000
 * nodes); a missed node with one informed neighbour now pulls within a round trip. The
 * announce asks no reply: a neighbour at this version stays silent. */
static void announce_to_the_rest(shardmap_peers *ps, struct conn *const *pushed, size_t n)
{
	for (struct conn *c = ps->conns; c; c = c->next) {
		int was_pushed = !c->established || c == applying_from;
		for (size_t i = 0; i < n && !was_pushed; i++)
			was_pushed = pushed[i] == c;
		if (!was_pushed)
			send_announce(ps, c, 0);
	}
}

static void ring_push(shardmap_peers *ps, uint64_t from, uint64_t to, uint8_t *rec, size_t len)
{
	if (ps->ring_n == ps->opt.ring) {
		free(ps->ring[ps->ring_start].rec);
		ps->ring_start = (ps->ring_start + 1) % ps->opt.ring;
		ps->ring_n--;
	}
	struct ring_entry *e = &ps->ring[(ps->ring_start + ps->ring_n) % ps->opt.ring];
	*e = (struct ring_entry){.from = from, .to = to, .rec = rec, .len = len};
	ps->ring_n++;
}

static void ring_clear(shardmap_peers *ps)
{
	for (size_t i = 0; i < ps->ring_n; i++)
		free(ps->ring[(ps->ring_start + i) % ps->opt.ring].rec);
	ps->ring_start = ps->ring_n = 0;
}

/* The map's observer: runs with the map's write lock held, on whatever thread published. */
static void on_publish(void *ctx, const struct shardmap__version *v, const shardmap_delta *d)
{
	shardmap_peers *ps = ctx;
	uint8_t *rec = NULL;
	size_t len = 0;
	int have_rec = d != NULL && shardmap__codec_encode(d, &rec, &len) == SHARDMAP_OK;
	if (have_rec && len > ps->opt.max_frame_bytes) {
		free(rec); /* peers would refuse it: they will get it from the store */
		have_rec = 0;
	}
	pthread_mutex_lock(&ps->lock);
	ps->seen_publish = 1;
	ps->version = v->version;
	ps->digest = v->digest;
	update_gauges(ps);
	if (!have_rec) {
		/* replaced wholesale (bootstrap, snapshot) or not encodable: the chain of recent
		 * deltas is broken, peers catch up by anti-entropy or from the store */
		ring_clear(ps);
		pthread_mutex_unlock(&ps->lock);
		return;
	}
	struct conn *targets[MAX_FANOUT];
	size_t n = ps->stopping ? 0 : push_targets(ps, targets, ps->opt.fanout);
	for (size_t i = 0; i < n; i++)
		conn_send(ps, targets[i], SHARDMAP__FRAME_DELTA, rec, len);
	if (!ps->stopping)
		announce_to_the_rest(ps, targets, n);
	if (ps->ring_n > 0 &&
	    ps->ring[(ps->ring_start + ps->ring_n - 1) % ps->opt.ring].to != d->from_version)
		ring_clear(ps);
	ring_push(ps, d->from_version, d->to_version, rec, len);
	pthread_mutex_unlock(&ps->lock);
}

/* ---------------------------------------------------------------- accepts and the timer */

static void accept_all(shardmap_peers *ps)
{
	for (int i = 0; i < ACCEPTS_PER_CALLBACK; i++) {
		int fd = accept4(ps->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return; /* EAGAIN, or an error the next readiness retries (EMFILE ...) */
		pthread_mutex_lock(&ps->lock);
		if (ps->stopping || ps->n_in >= ps->opt.max_inbound) {
			pthread_mutex_unlock(&ps->lock);
			close(fd);
			count(&ps->inbound_refused, 1);
			continue;
		}
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		conn_new(ps, fd, 1, NULL);
		pthread_mutex_unlock(&ps->lock);
	}
}

/* A random established connection, or NULL. Under lock. */
static struct conn *conn_random(shardmap_peers *ps)
{
	if (ps->n_established == 0)
		return NULL;
	size_t k = rnd(ps) % ps->n_established;
	for (struct conn *c = ps->conns; c; c = c->next) {
		if (c->established && k-- == 0)
			return c;
	}
	return NULL;
}

/* One anti-entropy round (under lock): announce, asking for the peer's announce back, to a
 * connection that lost frames if any; else, one round in REWIRE_EVERY (or when nothing is
 * connected), to a random known peer, connecting to it - this keeps the overlay random;
 * else to a random connected peer, which costs no new connection. */
static void antientropy(shardmap_peers *ps)
{
	struct conn *target = NULL;
	count(&ps->antientropy_rounds, 1);
	for (struct conn *c = ps->conns; c && !target && ps->n_needs_ae > 0; c = c->next) {
		if (c->needs_ae) {
			c->needs_ae = 0;
			ps->n_needs_ae--;
			target = c;
		}
	}
	if (target == NULL && (ps->n_established == 0 || rnd(ps) % REWIRE_EVERY == 0)) {
		struct peer *p = peer_random(ps, shardmap__now_ms());
		if (p != NULL)
			target = conn_to(ps, p);
	}
	if (target == NULL)
		target = conn_random(ps);
	if (target != NULL)
		send_announce(ps, target, SHARDMAP__ANNOUNCE_REPLY);
}

static void listener_cb(struct shardmap__task *t, void *arg, uint32_t events)
{
	shardmap_peers *ps = arg;
	if (events & SHARDMAP__EV_READ)
		accept_all(ps);
	if (events & SHARDMAP__EV_TIMER) {
		pthread_mutex_lock(&ps->lock);
		antientropy(ps);
		uint64_t next = jitter(ps, ps->opt.interval_ms);
		pthread_mutex_unlock(&ps->lock);
		shardmap__task_timer(t, next);
	}
}

/* ---------------------------------------------------------------- public */

void shardmap_peers_options_init(shardmap_peers_options *o)
{
	if (o == NULL)
		return;
	memset(o, 0, sizeof *o);
	o->size = sizeof *o;
	o->listen = "127.0.0.1:0";
	o->fanout = DEFAULT_FANOUT;
	o->interval_ms = DEFAULT_INTERVAL_MS;
	o->ring = DEFAULT_RING;
	o->max_inbound = DEFAULT_MAX_INBOUND;
	o->send_queue_bytes = DEFAULT_SEND_QUEUE;
	o->max_frame_bytes = DEFAULT_MAX_FRAME;
}

/* Copy the caller's options (as many bytes as its size says) and fill in defaults. */
static int options_take(shardmap_peers_options *dst, const shardmap_peers_options *src)
{
	shardmap_peers_options_init(dst);
	if (src != NULL) {
		if (src->size < offsetof(shardmap_peers_options, fanout) || src->size > sizeof *src)
			return SHARDMAP_EINVAL;
		memcpy(dst, src, src->size);
		dst->size = sizeof *dst;
	}
	if (dst->listen == NULL)
		dst->listen = "127.0.0.1:0";
	if (dst->fanout == 0)
		dst->fanout = DEFAULT_FANOUT;
	if (dst->interval_ms == 0)
		dst->interval_ms = DEFAULT_INTERVAL_MS;
	if (dst->ring == 0)
		dst->ring = DEFAULT_RING;
	if (dst->max_inbound == 0)
		dst->max_inbound = DEFAULT_MAX_INBOUND;
	if (dst->send_queue_bytes == 0)
		dst->send_queue_bytes = DEFAULT_SEND_QUEUE;
	if (dst->max_frame_bytes == 0)
		dst->max_frame_bytes = DEFAULT_MAX_FRAME;
	if (dst->fanout > MAX_FANOUT || dst->max_frame_bytes > UINT32_MAX ||
	    (dst->key != NULL && dst->key_len == 0) || (dst->key == NULL && dst->key_len != 0) ||
	    (dst->node_id != NULL && shardmap__check_name(dst->node_id) != 0))
		return SHARDMAP_EINVAL;
	return SHARDMAP_OK;
}

static int listen_on(shardmap_peers *ps)
{
	struct sockaddr_storage ss;
	socklen_t len;
	if (resolve(ps->opt.listen, 1, &ss, &len) != SHARDMAP_OK)
		return SHARDMAP_EINVAL;
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return SHARDMAP_EIO;
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 512) != 0) {
		close(fd);
		return SHARDMAP_EIO;
	}
	len = sizeof ss;
	getsockname(fd, (struct sockaddr *)&ss, &len);
	char host[INET6_ADDRSTRLEN];
	if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *v4 = (const struct sockaddr_in *)&ss;
		inet_ntop(AF_INET, &v4->sin_addr, host, sizeof host);
		snprintf(ps->address, sizeof ps->address, "%s:%u", host, ntohs(v4->sin_port));
	} else {
		const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)&ss;
		inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof host);
		snprintf(ps->address, sizeof ps->address, "[%s]:%u", host, ntohs(v6->sin6_port));
	}
	ps->listen_fd = fd;
	return SHARDMAP_OK;
}

static void peers_free(shardmap_peers *ps)
{
	if (ps->listen_fd >= 0)
		close(ps->listen_fd);
	for (size_t i = 0; i < ps->n_peers; i++)
		free(ps->peers[i]);
	free(ps->peers);
	if (ps->by_addr.map != NULL)
		ck_hs_destroy(&ps->by_addr);
	if (ps->ring != NULL)
		ring_clear(ps);
	free(ps->ring);
	shardmap__mac_free(ps->mac);
	free(ps->key_copy);
	pthread_mutex_destroy(&ps->lock);
	pthread_cond_destroy(&ps->drained);
	free(ps);
}

int shardmap_peers_start(shardmap *m, shardmap_pool *p, const shardmap_peers_options *o,
			 shardmap_peers **out)
{
	if (m == NULL || p == NULL || out == NULL)
		return SHARDMAP_EINVAL;
	shardmap_peers *ps = calloc(1, sizeof *ps);
	if (ps == NULL)
		return SHARDMAP_ENOMEM;
	ps->listen_fd = -1;
	pthread_mutex_init(&ps->lock, NULL);
	pthread_cond_init(&ps->drained, NULL);
	int rc = options_take(&ps->opt, o);
	if (rc != SHARDMAP_OK) {
		peers_free(ps);
		return rc;
	}
	ps->map = m;
	ps->pool = p;
	ps->ext = shardmap__ext(m);
	ps->max_outbound = ps->opt.fanout + OUTBOUND_SPARE;
	ps->handshake_ms = (uint64_t)ps->opt.interval_ms * HANDSHAKE_INTERVALS;
	if (ps->handshake_ms < HANDSHAKE_MIN_MS)
		ps->handshake_ms = HANDSHAKE_MIN_MS;
	if (ps->opt.key != NULL) {
		ps->key_copy = malloc(ps->opt.key_len);
		if (ps->key_copy == NULL) {
			peers_free(ps);
			return SHARDMAP_ENOMEM;
		}
		memcpy(ps->key_copy, ps->opt.key, ps->opt.key_len);
		ps->opt.key = ps->key_copy;
		rc = shardmap__mac_new(ps->key_copy, ps->opt.key_len, &ps->mac);
	}
	ps->ring = calloc(ps->opt.ring, sizeof *ps->ring);
	if (rc == SHARDMAP_OK && ps->ring == NULL)
		rc = SHARDMAP_ENOMEM;
	if (rc == SHARDMAP_OK && !ck_hs_init(&ps->by_addr, CK_HS_MODE_OBJECT | CK_HS_MODE_SPMC,
					     peer_hash, peer_same, &hs_allocator, 64, 0x5eed))
		rc = SHARDMAP_ENOMEM;
	if (rc == SHARDMAP_OK && RAND_bytes((unsigned char *)&ps->rng, sizeof ps->rng) != 1)
		rc = SHARDMAP_ENOMEM;
	ps->rng |= 1; /* xorshift state is never 0 */
	if (rc == SHARDMAP_OK)
		rc = listen_on(ps);
	if (rc != SHARDMAP_OK) {
		peers_free(ps);
		return rc;
	}
	snprintf(ps->node_id, sizeof ps->node_id, "%s",
		 ps->opt.node_id ? ps->opt.node_id : ps->address);
	ps->opt.node_id = ps->node_id;
	ps->opt.listen = ps->address;

	/* Observe first, then read the current version: a publish in between is not lost. */
	ps->observer = (struct shardmap__observer){.on_publish = on_publish, .ctx = ps};
	shardmap__observer_add(m, &ps->observer);
	const struct shardmap__version *v = shardmap__pin(m);
	pthread_mutex_lock(&ps->lock);
	if (!ps->seen_publish && v != NULL) {
		ps->version = v->version;
		ps->digest = v->digest;
	}
	pthread_mutex_unlock(&ps->lock);
	shardmap__unpin(m);

	rc = shardmap__task_open(p, listener_cb, ps, &ps->listener);
	if (rc == SHARDMAP_OK &&
	    shardmap__task_watch(ps->listener, ps->listen_fd, SHARDMAP__EV_READ) != SHARDMAP_OK)
		rc = SHARDMAP_EIO;
	if (rc != SHARDMAP_OK) {
		shardmap__observer_remove(m, &ps->observer);
		shardmap__task_close(ps->listener);
		peers_free(ps);
		return rc;
	}
	pthread_mutex_lock(&ps->lock);
	uint64_t first = jitter(ps, ps->opt.interval_ms);
	update_gauges(ps);
	pthread_mutex_unlock(&ps->lock);
	gauge(&ps->ext->threads, shardmap_pool_threads(p));
	shardmap__task_timer(ps->listener, first);
	*out = ps;
	return SHARDMAP_OK;
}

const char *shardmap_peers_address(const shardmap_peers *ps)
{
	return ps ? ps->address : NULL;
}

int shardmap_peers_add(shardmap_peers *ps, const char *host_port)
{
	struct sockaddr_storage ss;
	socklen_t len;
	if (ps == NULL || resolve(host_port, 0, &ss, &len) != SHARDMAP_OK)
		return SHARDMAP_EINVAL;
	struct peer *p = calloc(1, sizeof *p);
	if (p == NULL)
		return SHARDMAP_ENOMEM;
	addr_pack(&ss, &p->addr);
	int rc = SHARDMAP_OK;
	pthread_mutex_lock(&ps->lock);
	unsigned long h = CK_HS_HASH(&ps->by_addr, peer_hash, p);
	if (ck_hs_get(&ps->by_addr, h, p) != NULL) {
		free(p); /* already known: nothing changes */
		p = NULL;
	} else if (ps->n_peers >= MAX_KNOWN_PEERS) {
		rc = SHARDMAP_EBUSY;
	} else if (ps->n_peers == ps->cap_peers) {
		size_t cap = ps->cap_peers ? 2 * ps->cap_peers : 16;
		struct peer **v = realloc(ps->peers, cap * sizeof *v);
		if (v == NULL) {
			rc = SHARDMAP_ENOMEM;
		} else {
			ps->peers = v;
			ps->cap_peers = cap;
		}
	}
	if (rc == SHARDMAP_OK && p != NULL) {
		if (ck_hs_put(&ps->by_addr, h, p)) {
			p->index = (uint32_t)ps->n_peers;
			ps->peers[ps->n_peers++] = p;
			p = NULL;
			update_gauges(ps);
		} else {
			rc = SHARDMAP_ENOMEM;
		}
	}
	pthread_mutex_unlock(&ps->lock);
	free(p);
	return rc;
}

int shardmap_peers_remove(shardmap_peers *ps, const char *host_port)
{
	struct sockaddr_storage ss;
	socklen_t len;
	if (ps == NULL || resolve(host_port, 0, &ss, &len) != SHARDMAP_OK)
		return SHARDMAP_EINVAL;
	struct peer key;
	addr_pack(&ss, &key.addr);
	pthread_mutex_lock(&ps->lock);
	struct peer *p =
	    ck_hs_remove(&ps->by_addr, CK_HS_HASH(&ps->by_addr, peer_hash, &key), &key);
	if (p == NULL) {
		pthread_mutex_unlock(&ps->lock);
		return SHARDMAP_ENOENT;
	}
	if (p->out != NULL)
		conn_shutdown(ps, p->out);
	struct peer *last = ps->peers[--ps->n_peers];
	ps->peers[p->index] = last;
	last->index = p->index;
	update_gauges(ps);
	pthread_mutex_unlock(&ps->lock);
	free(p);
	return SHARDMAP_OK;
}

void shardmap_peers_stop(shardmap_peers *ps)
{
	if (ps == NULL)
		return;
	/* No publish reaches us after this, and no accept or timer after the next. */
	shardmap__observer_remove(ps->map, &ps->observer);
	shardmap__task_close(ps->listener);
	pthread_mutex_lock(&ps->lock);
	ps->stopping = 1;
	while (ps->conns != NULL)
		conn_shutdown(ps, ps->conns);
	while (ps->n_live > 0)
		pthread_cond_wait(&ps->drained, &ps->lock);
	ps->n_established = ps->n_in = ps->n_out = 0;
	gauge(&ps->ext->peers_connected, 0);
	pthread_mutex_unlock(&ps->lock);
	peers_free(ps);
}

/* ---------------------------------------------------------------- for tests and benches */

uint64_t shardmap__peers_refused(const shardmap_peers *ps, unsigned reason)
{
	if (ps == NULL || reason >= SHARDMAP__REFUSE_COUNT)
		return 0;
	return atomic_load_explicit(&ps->refused[reason], memory_order_relaxed); /* a counter */
}

void shardmap__peers_counters(const shardmap_peers *ps, struct shardmap__peers_counters *out)
{
	memset(out, 0, sizeof *out);
	if (ps == NULL)
		return;
	/* relaxed: counters only */
	out->too_old = atomic_load_explicit(&ps->too_old, memory_order_relaxed);
	out->store_asks = atomic_load_explicit(&ps->store_asks, memory_order_relaxed);
	out->inbound_refused = atomic_load_explicit(&ps->inbound_refused, memory_order_relaxed);
	out->connects = atomic_load_explicit(&ps->connects, memory_order_relaxed);
	out->connect_failures = atomic_load_explicit(&ps->connect_failures, memory_order_relaxed);
	for (unsigned t = 0; t < SHARDMAP__FRAME_TYPES; t++) {
		out->frames_in[t] = atomic_load_explicit(&ps->frames_in[t], memory_order_relaxed);
		out->frames_out[t] = atomic_load_explicit(&ps->frames_out[t], memory_order_relaxed);
	}
	out->antientropy_rounds =
	    atomic_load_explicit(&ps->antientropy_rounds, memory_order_relaxed);
	out->handshake_timeouts =
	    atomic_load_explicit(&ps->handshake_timeouts, memory_order_relaxed);
	pthread_mutex_t *lock = (pthread_mutex_t *)&ps->lock;
	pthread_mutex_lock(lock);
	out->outbound = ps->n_out;
	out->inbound = ps->n_in;
	out->established = ps->n_established;
	out->live = ps->n_live;
	out->ring = ps->ring_n;
	out->version = ps->version;
	pthread_mutex_unlock(lock);
}
