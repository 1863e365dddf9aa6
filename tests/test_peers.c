/*
 * test_peers.c - integration tests of the peer protocol (lib/peers.c, lib/peer_proto.c)
 * over loopback TCP: convergence of two and of fifty nodes on one pool, a thread count that
 * does not depend on the number of known peers, hostile frames from a raw socket (garbage,
 * truncated, oversized, wrong key, missing tag, replayed, unexpected, malformed, invalid
 * deltas), a peer killed mid-stream, a peer that stops reading, a node that fell behind
 * further than the ring (it goes to the store), digests that disagree, and the bounds.
 *
 * Every node listens on 127.0.0.1 port 0 and is found through shardmap_peers_address.
 * Nothing sleeps to synchronise: tests wait for map versions (an observer on every map
 * signals a condition variable) or for sockets (poll), always with a generous deadline.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "codec.h"
#include "map.h"
#include "model.h"
#include "peer_proto.h"
#include "peers.h"
#include "pool.h"

#define DEADLINE_MS 30000

/* ---------------------------------------------------------------- waiting on versions */

static pthread_mutex_t vlock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t vcond = PTHREAD_COND_INITIALIZER;

static void version_changed(void *ctx, const struct shardmap__version *v, const shardmap_delta *d)
{
	pthread_mutex_lock(&vlock);
	pthread_cond_broadcast(&vcond);
	pthread_mutex_unlock(&vlock);
}

static uint64_t now_ms(void)
{
	return shardmap__now_ms();
}

static struct timespec abs_in_ms(uint64_t ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += (time_t)(ms / 1000);
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
}

/* ---------------------------------------------------------------- nodes */

struct node {
	shardmap *m;
	shardmap_peers *ps;
	struct shardmap__observer obs;
};

static shardmap_delta *base_delta(void)
{
	shardmap_delta *d;
	cr_assert_eq(shardmap_delta_new(0, 1, &d), 0);
	const char *ep[] = {"cell-a:9000"};
	cr_assert_eq(shardmap_delta_put_cell(d, "cell-a", ep, 1), 0);
	cr_assert_eq(shardmap_delta_put_stream(d, "orders", SHARDMAP_HASH_XXH3), 0);
	shardmap_shard s = {.id = "shardId-000000000000",
			    .start = {0, 0},
			    .end = {UINT64_MAX, UINT64_MAX},
			    .open = 1,
			    .owner_cell = "cell-a"};
	cr_assert_eq(shardmap_delta_put_shard(d, "orders", &s), 0);
	return d;
}

/* v -> v+1: the cell moves to endpoint "cell-a:<v+1>" plus extra endpoints (to make big
 * deltas). tag distinguishes two different deltas with the same versions. */
static shardmap_delta *step_delta(uint64_t v, size_t extra, const char *tag)
{
	shardmap_delta *d;
	cr_assert_eq(shardmap_delta_new(v, v + 1, &d), 0);
	size_t n = 1 + extra;
	char **eps = calloc(n, sizeof *eps);
	for (size_t i = 0; i < n; i++) {
		eps[i] = malloc(64);
		snprintf(eps[i], 64, "%s%zu-%llu:%u", tag, i, (unsigned long long)v + 1,
			 1000u + (unsigned)(i % 60000));
	}
	cr_assert_eq(shardmap_delta_put_cell(d, "cell-a", (const char *const *)eps, n), 0);
	for (size_t i = 0; i < n; i++)
		free(eps[i]);
	free(eps);
	return d;
}

static void apply_ok(shardmap *m, shardmap_delta *d)
{
	shardmap_error why;
	int rc = shardmap_apply(m, d, &why);
	cr_assert_eq(rc, 0, "apply: %s (%s)", shardmap_strerror(rc), why.message);
	shardmap_delta_free(d);
}

static void node_open(struct node *n)
{
	shardmap_options mo;
	shardmap_options_init(&mo);
	mo.use_arena = 0; /* many maps in one process */
	cr_assert_eq(shardmap_open(&n->m, &mo), 0);
	n->obs = (struct shardmap__observer){.on_publish = version_changed};
	shardmap__observer_add(n->m, &n->obs);
}

static void node_start(struct node *n, shardmap_pool *p, const shardmap_peers_options *o)
{
	shardmap_peers_options def;
	if (o == NULL) {
		shardmap_peers_options_init(&def);
		def.interval_ms = 100; /* quick anti-entropy keeps tests short */
		o = &def;
	}
	int rc = shardmap_peers_start(n->m, p, o, &n->ps);
	cr_assert_eq(rc, 0, "peers_start: %s", shardmap_strerror(rc));
}

/* A node at the common base version 1 (as if bootstrapped from the store). */
/* The two-thread pool most tests run their nodes on. */
static shardmap_pool *open_pool(void)
{
	shardmap_pool *p;
	cr_assert_eq(shardmap_pool_open(2, &p), 0);
	return p;
}

static void node_up(struct node *n, shardmap_pool *p, const shardmap_peers_options *o)
{
	node_open(n);
	apply_ok(n->m, base_delta());
	node_start(n, p, o);
}

static void node_down(struct node *n)
{
	shardmap_peers_stop(n->ps);
	n->ps = NULL;
	shardmap__observer_remove(n->m, &n->obs);
	shardmap_close(n->m);
	n->m = NULL;
}

static void connect_all(struct node *nodes, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		for (size_t j = 0; j < n; j++) {
			if (i != j)
				cr_assert_eq(shardmap_peers_add(
						 nodes[i].ps, shardmap_peers_address(nodes[j].ps)),
					     0);
		}
	}
}

/* Wait until every live node of nodes[0..n) is at version >= v. */
static int wait_versions(struct node *nodes, size_t n, uint64_t v)
{
	struct timespec dl = abs_in_ms(DEADLINE_MS);
	pthread_mutex_lock(&vlock);
	for (;;) {
		size_t at = 0;
		for (size_t i = 0; i < n; i++)
			at += nodes[i].m == NULL || shardmap_version(nodes[i].m) >= v;
		if (at == n)
			break;
		if (pthread_cond_timedwait(&vcond, &vlock, &dl) != 0) {
			pthread_mutex_unlock(&vlock);
			for (size_t i = 0; i < n; i++)
				if (nodes[i].m != NULL && shardmap_version(nodes[i].m) < v)
					fprintf(stderr, "node %zu at version %llu, want %llu\n", i,
						(unsigned long long)shardmap_version(nodes[i].m),
						(unsigned long long)v);
			return 0;
		}
	}
	pthread_mutex_unlock(&vlock);
	return 1;
}

/* Wait until f(arg) is true: for counters that move on pool threads. The poll interval is
 * not synchronisation: the condition decides, the deadline bounds. */
static int wait_for(int (*f)(void *), void *arg)
{
	uint64_t end = now_ms() + DEADLINE_MS;
	while (!f(arg)) {
		if (now_ms() > end)
			return 0;
		struct pollfd none;
		poll(&none, 0, 2);
	}
	return 1;
}

static shardmap_stats stats_of(struct node *n)
{
	shardmap_stats s;
	cr_assert_eq(shardmap_stats_get(n->m, &s), 0);
	return s;
}

static int count_threads(void)
{
	DIR *d = opendir("/proc/self/task");
	cr_assert_not_null(d);
	int n = 0;
	for (struct dirent *e; (e = readdir(d)) != NULL;)
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

/* ---------------------------------------------------------------- a raw peer */

static int parse_port(const char *addr)
{
	const char *colon = strrchr(addr, ':');
	return atoi(colon + 1);
}

static int raw_connect(const char *addr)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET,
				 .sin_port = htons((uint16_t)parse_port(addr))};
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	return fd;
}

static void raw_send(int fd, const void *buf, size_t len)
{
	cr_assert_eq(send(fd, buf, len, MSG_NOSIGNAL), (ssize_t)len);
}

static void raw_frame(int fd, const struct shardmap__mac *mac, const uint8_t *nonce, uint8_t type,
		      uint64_t seq, const void *payload, size_t len)
{
	uint8_t *f;
	size_t flen;
	cr_assert_eq(shardmap__frame_build(mac, nonce, type, seq, payload, len, &f, &flen), 0);
	raw_send(fd, f, flen);
	free(f);
}

/* Read one whole frame (deadline-bound). Returns its length, 0 on EOF or timeout. */
static size_t raw_read_frame(int fd, uint8_t *buf, size_t cap, struct shardmap__frame_header *h)
{
	size_t have = 0;
	uint64_t end = now_ms() + DEADLINE_MS;
	for (;;) {
		size_t flen;
		enum shardmap__refuse why;
		int rc = shardmap__frame_parse(buf, have, cap, 0, h, &flen, &why);
		cr_assert_geq(rc, 0, "the node sent a bad frame (%s)", shardmap__refuse_name(why));
		if (rc == 0) {
			cr_assert_eq(flen, have, "one frame at a time");
			return flen;
		}
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		if (now_ms() > end || poll(&pfd, 1, 100) < 0)
			return 0;
		if (!(pfd.revents & (POLLIN | POLLHUP | POLLERR)))
			continue;
		/* read no further than the current frame needs: header first */
		size_t want = have < SHARDMAP__FRAME_HEADER ? SHARDMAP__FRAME_HEADER - have : 1;
		if (have >= SHARDMAP__FRAME_HEADER) {
			size_t total =
			    SHARDMAP__FRAME_HEADER + h->length +
			    ((buf[4] & SHARDMAP__FRAME_TAGGED) ? SHARDMAP__FRAME_TAG : 0);
			want = total - have;
		}
		ssize_t n = recv(fd, buf + have, want, 0);
		if (n <= 0)
			return 0;
		have += (size_t)n;
	}
}

/* Read the node's hello; returns its nonce. */
static void raw_expect_hello(int fd, uint8_t nonce[SHARDMAP__NONCE])
{
	uint8_t buf[1024];
	struct shardmap__frame_header h;
	size_t n = raw_read_frame(fd, buf, sizeof buf, &h);
	cr_assert_gt(n, 0, "the node says hello first");
	cr_assert_eq(h.type, SHARDMAP__FRAME_HELLO);
	cr_assert_eq(h.seq, 0);
	struct shardmap__hello hello;
	cr_assert_eq(shardmap__hello_decode(buf + SHARDMAP__FRAME_HEADER, h.length, &hello), 0);
	memcpy(nonce, hello.nonce, SHARDMAP__NONCE);
}

static void raw_hello(int fd, const struct shardmap__mac *mac, const char *id, uint64_t version)
{
	struct shardmap__hello h = {.proto = SHARDMAP__PROTO_VERSION, .version = version};
	snprintf(h.node_id, sizeof h.node_id, "%s", id);
	uint8_t p[SHARDMAP__HELLO_MAX];
	raw_frame(fd, mac, NULL, SHARDMAP__FRAME_HELLO, 0, p, shardmap__hello_encode(&h, p));
}

/* The node closed the connection (EOF or reset), within the deadline. */
static int raw_closed(int fd)
{
	uint64_t end = now_ms() + DEADLINE_MS;
	uint8_t sink[4096];
	while (now_ms() < end) {
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		if (poll(&pfd, 1, 100) <= 0)
			continue;
		ssize_t n = recv(fd, sink, sizeof sink, 0);
		if (n <= 0)
			return 1;
	}
	return 0;
}

/* ---------------------------------------------------------------- convergence */

Test(peers, two_nodes_converge_both_ways)
{
	shardmap_pool *p = open_pool();
	struct node n[2] = {0};
	node_up(&n[0], p, NULL);
	node_up(&n[1], p, NULL);
	connect_all(n, 2);
	uint64_t v = 1;
	for (int i = 0; i < 10; i++, v++) {
		apply_ok(n[i % 2].m, step_delta(v, 0, "e"));
		cr_assert(wait_versions(n, 2, v + 1), "delta %llu spread", (unsigned long long)v);
	}
	shardmap_stats s = stats_of(&n[1]);
	cr_assert_eq(s.threads, 2);
	cr_assert_eq(s.peers_known, 1);
	struct shardmap__peers_counters c;
	shardmap__peers_counters(n[1].ps, &c);
	cr_assert_geq(c.frames_in[SHARDMAP__FRAME_HELLO], 1);
	cr_assert_geq(c.frames_out[SHARDMAP__FRAME_HELLO], 1);
	cr_assert_geq(c.frames_in[SHARDMAP__FRAME_DELTA] + c.frames_out[SHARDMAP__FRAME_DELTA], 10,
		      "ten deltas crossed between the two");
	uint64_t in = 0;
	for (int t = 0; t < SHARDMAP__FRAME_TYPES; t++)
		in += c.frames_in[t];
	cr_assert_geq(in, s.frames_in, "frames by type add up to (at least) the earlier total");
	cr_assert_gt(s.frames_in, 0);
	cr_assert_gt(s.frames_out, 0);
	cr_assert_eq(s.frames_refused, 0);
	node_down(&n[0]);
	node_down(&n[1]);
	shardmap_pool_close(p);
}

static int two_connected(void *arg)
{
	return stats_of(arg).peers_connected == 2;
}

/* A push to fanout peers misses some of a node's neighbours; they get the new version in an
 * announce at once, not at the next anti-entropy round (here: never, it is an hour away). */
Test(peers, a_publish_announces_to_the_connections_it_did_not_push_to)
{
	shardmap_pool *p = open_pool();
	shardmap_peers_options o;
	shardmap_peers_options_init(&o);
	o.fanout = 1;
	o.interval_ms = 3600 * 1000;
	struct node a = {0};
	node_up(&a, p, &o);
	int fd[2];
	for (int i = 0; i < 2; i++) {
		uint8_t nonce[SHARDMAP__NONCE];
		fd[i] = raw_connect(shardmap_peers_address(a.ps));
		raw_expect_hello(fd[i], nonce);
		raw_hello(fd[i], NULL, i ? "raw-1" : "raw-0", 1);
	}
	cr_assert(wait_for(two_connected, &a), "both raw peers finished the handshake");
	apply_ok(a.m, step_delta(1, 0, "e"));
	int deltas = 0, announces = 0;
	for (int i = 0; i < 2; i++) {
		uint8_t buf[64 * 1024];
		struct shardmap__frame_header h;
		cr_assert_gt(raw_read_frame(fd[i], buf, sizeof buf, &h), 0, "peer %d heard", i);
		if (h.type == SHARDMAP__FRAME_DELTA) {
			deltas++;
			continue;
		}
		cr_assert_eq(h.type, SHARDMAP__FRAME_ANNOUNCE, "peer %d: a delta or an announce", i);
		struct shardmap__announce an;
		cr_assert_eq(shardmap__announce_decode(buf + SHARDMAP__FRAME_HEADER, h.length, &an),
			     0);
		cr_assert_eq(an.version, 2, "the new version");
		cr_assert_eq(an.flags & SHARDMAP__ANNOUNCE_REPLY, 0, "asking no reply");
		announces++;
	}
	cr_assert_eq(deltas, 1, "fanout 1: one push");
	cr_assert_eq(announces, 1, "the other connection hears the version");
	close(fd[0]);
	close(fd[1]);
	node_down(&a);
	shardmap_pool_close(p);
}

Test(peers, fifty_nodes_on_one_pool, .timeout = 240)
{
	enum { N = 50, DELTAS = 10 };
	shardmap_pool *p = open_pool();
	int threads = count_threads();
	struct node *n = calloc(N, sizeof *n);
	for (int i = 0; i < N; i++)
		node_up(&n[i], p, NULL);
	connect_all(n, N);
	uint64_t v = 1;
	for (int k = 0; k < DELTAS; k++, v++) {
		apply_ok(n[(k * 7) % N].m, step_delta(v, 0, "f"));
		cr_assert(wait_versions(n, N, v + 1), "delta %d reached all %d nodes", k, N);
	}
	cr_assert_eq(count_threads(), threads, "fifty nodes cost no threads");
	for (int i = 0; i < N; i++) {
		struct shardmap__peers_counters c;
		shardmap__peers_counters(n[i].ps, &c);
		cr_assert_leq(c.outbound, 3 + 2, "node %d: outbound %llu above fanout + 2", i,
			      (unsigned long long)c.outbound);
		cr_assert_leq(c.inbound, 64);
		shardmap_stats s = stats_of(&n[i]);
		cr_assert_eq(s.peers_known, N - 1);
		cr_assert_eq(s.frames_refused, 0);
		cr_assert_eq(s.version, v);
	}
	for (int i = 0; i < N; i++)
		node_down(&n[i]);
	free(n);
	shardmap_pool_close(p);
}

Test(peers, threads_do_not_grow_with_known_peers)
{
	shardmap_pool *p = open_pool();
	struct node a = {0}, b = {0};
	node_up(&a, p, NULL);
	node_up(&b, p, NULL);
	cr_assert_eq(shardmap_peers_add(a.ps, shardmap_peers_address(b.ps)), 0);
	/* nine more that nobody listens on: connection attempts fail and back off */
	char addr[64];
	for (int i = 0; i < 9; i++) {
		snprintf(addr, sizeof addr, "127.0.0.%d:%d", 2 + i, 9);
		cr_assert_eq(shardmap_peers_add(a.ps, addr), 0);
	}
	uint64_t v = 1;
	apply_ok(a.m, step_delta(v++, 0, "t"));
	cr_assert(wait_versions(&b, 1, v));
	int with_10 = count_threads();
	cr_assert_eq(stats_of(&a).peers_known, 10);

	for (int i = 0; i < 1990; i++) {
		snprintf(addr, sizeof addr, "127.0.%d.%d:%d", 1 + i / 200, 1 + i % 200, 9);
		cr_assert_eq(shardmap_peers_add(a.ps, addr), 0);
	}
	cr_assert_eq(shardmap_peers_add(a.ps, "127.0.1.1:9"), 0, "adding twice is harmless");
	cr_assert_eq(stats_of(&a).peers_known, 2000);
	for (int k = 0; k < 5; k++) {
		apply_ok(a.m, step_delta(v++, 0, "t"));
		cr_assert(wait_versions(&b, 1, v), "b still converges with 2,000 known peers");
	}
	cr_assert_eq(count_threads(), with_10, "threads with 2,000 known peers == with 10");
	shardmap_stats s = stats_of(&a);
	cr_assert_eq(s.threads, 2);
	struct shardmap__peers_counters c;
	shardmap__peers_counters(a.ps, &c);
	cr_assert_leq(c.outbound, 5);
	node_down(&a);
	node_down(&b);
	shardmap_pool_close(p);
}

/* ---------------------------------------------------------------- hostile frames */

struct refused_arg {
	struct node *n;
	unsigned reason;
	uint64_t at_least;
};

static int refused_reached(void *arg)
{
	struct refused_arg *r = arg;
	return shardmap__peers_refused(r->n->ps, r->reason) >= r->at_least;
}

static void expect_refused(struct node *n, unsigned reason, uint64_t before)
{
	struct refused_arg r = {n, reason, before + 1};
	cr_assert(wait_for(refused_reached, &r), "refused counter '%s' did not move",
		  shardmap__refuse_name(reason));
}

struct refused_total_arg {
	struct node *n;
	uint64_t at_least;
};

static int refused_total_reached(void *arg)
{
	struct refused_total_arg *r = arg;
	return stats_of(r->n).frames_refused >= r->at_least;
}

/* A keyed node, a keyed honest peer, and a stream of bad connections against the node. */
Test(peers, hostile_frames_are_refused_and_counted, .timeout = 120)
{
	static const char key[] = "fleet secret";
	static const char wrong[] = "not the secret";
	shardmap_pool *p = open_pool();
	shardmap_peers_options o;
	shardmap_peers_options_init(&o);
	o.interval_ms = 100;
	o.key = key;
	o.key_len = sizeof key - 1;
	o.max_frame_bytes = 64 * 1024;
	struct node n[2] = {0};
	node_up(&n[0], p, &o);
	node_up(&n[1], p, &o);
	connect_all(n, 2);
	struct node *target = &n[0];
	const char *addr = shardmap_peers_address(target->ps);
	struct shardmap__mac *mac, *bad_mac;
	cr_assert_eq(shardmap__mac_new(key, sizeof key - 1, &mac), 0);
	cr_assert_eq(shardmap__mac_new(wrong, sizeof wrong - 1, &bad_mac), 0);
	uint8_t nonce[SHARDMAP__NONCE];
	uint64_t before, refused_total = stats_of(target).frames_refused;
	int fd;

	/* garbage */
	before = shardmap__peers_refused(target->ps, SHARDMAP__REFUSE_GARBAGE);
	fd = raw_connect(addr);
	raw_send(fd, "GET / HTTP/1.1\r\n\r\n", 18);
	cr_assert(raw_closed(fd), "garbage: connection dropped");
	close(fd);
	expect_refused(target, SHARDMAP__REFUSE_GARBAGE, before);

	/* truncated: half a hello, then the writer goes away */
	before = shardmap__peers_refused(target->ps, SHARDMAP__REFUSE_TRUNCATED);
	fd = raw_connect(addr);
	{
		struct shardmap__hello h = {.proto = SHARDMAP__PROTO_VERSION, .version = 1};
		snprintf(h.node_id, sizeof h.node_id, "raw");
		uint8_t pl[SHARDMAP__HELLO_MAX], *f;
		size_t flen;
		cr_assert_eq(shardmap__frame_build(mac, NULL, SHARDMAP__FRAME_HELLO, 0, pl,
						   shardmap__hello_encode(&h, pl), &f, &flen),
			     0);
		raw_send(fd, f, flen / 2);
		free(f);
		shutdown(fd, SHUT_WR);
	}
	cr_assert(raw_closed(fd), "truncated: connection dropped");
	close(fd);
	expect_refused(target, SHARDMAP__REFUSE_TRUNCATED, before);

	/* oversized: a header announcing more than the cap */
	before = shardmap__peers_refused(target->ps, SHARDMAP__REFUSE_OVERSIZED);
	fd = raw_connect(addr);
	{
		uint8_t hdr[SHARDMAP__FRAME_HEADER] = {'S', 'P', SHARDMAP__PROTO_VERSION,
						       SHARDMAP__FRAME_DELTA,
						       SHARDMAP__FRAME_TAGGED};
		uint32_t len = 1u << 30;
		for (int i = 0; i < 4; i++)
			hdr[8 + i] = (uint8_t)(len >> (8 * i));
		raw_send(fd, hdr, sizeof hdr);
	}
	cr_assert(raw_closed(fd), "oversized: connection dropped");
	close(fd);
	expect_refused(target, SHARDMAP__REFUSE_OVERSIZED, before);

	/* wrong key */
	before = shardmap__peers_refused(target->ps, SHARDMAP__REFUSE_BAD_TAG);
	fd = raw_connect(addr);
	raw_expect_hello(fd, nonce);
	raw_hello(fd, bad_mac, "intruder", 1);
	cr_assert(raw_closed(fd), "wrong key: connection dropped");
	close(fd);
	expect_refused(target, SHARDMAP__REFUSE_BAD_TAG, before);

	/* no tag at all */
	before = shardmap__peers_refused(target->ps, SHARDMAP__REFUSE_MISSING_TAG);
	fd = raw_connect(addr);
	raw_hello(fd, NULL, "intruder", 1);
	cr_assert(raw_closed(fd), "missing tag: connection dropped");
	close(fd);
	expect_refused(target, SHARDMAP__REFUSE_MISSING_TAG, before);

	/* anything before hello */
	before = shardmap__peers_refused(target->ps, SHARDMAP__REFUSE_UNEXPECTED);
	fd = raw_connect(addr);
	raw_expect_hello(fd, nonce);
	{
		uint8_t pl[8];
		raw_frame(fd, mac, nonce, SHARDMAP__FRAME_PULL, 1, pl,
			  shardmap__pull_encode(1, pl));
	}
	cr_assert(raw_closed(fd), "pull before hello: connection dropped");
	close(fd);
	expect_refused(target, SHARDMAP__REFUSE_UNEXPECTED, before);

	/* malformed payload: an announce one byte short */
	before = shardmap__peers_refused(target->ps, SHARDMAP__REFUSE_MALFORMED);
	fd = raw_connect(addr);
	raw_expect_hello(fd, nonce);
	raw_hello(fd, mac, "raw", 1);
	{
		uint8_t pl[17] = {0};
		raw_frame(fd, mac, nonce, SHARDMAP__FRAME_ANNOUNCE, 1, pl, 16);
	}
	cr_assert(raw_closed(fd), "malformed: connection dropped");
	close(fd);
	expect_refused(target, SHARDMAP__REFUSE_MALFORMED, before);

	/* replay on the same connection: a valid announce, then the same bytes again */
	before = shardmap__peers_refused(target->ps, SHARDMAP__REFUSE_SEQUENCE);
	uint8_t *recorded;
	size_t recorded_len;
	fd = raw_connect(addr);
	raw_expect_hello(fd, nonce);
	raw_hello(fd, mac, "raw", 1);
	{
		struct shardmap__announce a = {.version = 1};
		uint8_t pl[17];
		cr_assert_eq(shardmap__frame_build(mac, nonce, SHARDMAP__FRAME_ANNOUNCE, 1, pl,
						   shardmap__announce_encode(&a, pl), &recorded,
						   &recorded_len),
			     0);
	}
	raw_send(fd, recorded, recorded_len);
	raw_send(fd, recorded, recorded_len);
	cr_assert(raw_closed(fd), "replay: connection dropped");
	close(fd);
	expect_refused(target, SHARDMAP__REFUSE_SEQUENCE, before);

	/* replay on a new connection: the node picked a new nonce, so the tag fails */
	before = shardmap__peers_refused(target->ps, SHARDMAP__REFUSE_BAD_TAG);
	fd = raw_connect(addr);
	raw_expect_hello(fd, nonce);
	raw_hello(fd, mac, "raw", 1);
	raw_send(fd, recorded, recorded_len);
	cr_assert(raw_closed(fd), "cross-connection replay: connection dropped");
	close(fd);
	free(recorded);
	expect_refused(target, SHARDMAP__REFUSE_BAD_TAG, before);

	/* a well-formed delta that breaks the map's invariants (owner cell does not exist) */
	before = shardmap__peers_refused(target->ps, SHARDMAP__REFUSE_BAD_DELTA);
	fd = raw_connect(addr);
	raw_expect_hello(fd, nonce);
	raw_hello(fd, mac, "raw", 1);
	{
		shardmap_delta *d;
		uint64_t cur = shardmap_version(target->m);
		cr_assert_eq(shardmap_delta_new(cur, cur + 1, &d), 0);
		shardmap_shard s = {.id = "shardId-000000000000",
				    .start = {0, 0},
				    .end = {UINT64_MAX, UINT64_MAX},
				    .open = 1,
				    .owner_cell = "no-such-cell"};
		cr_assert_eq(shardmap_delta_put_shard(d, "orders", &s), 0);
		uint8_t *rec;
		size_t len;
		cr_assert_eq(shardmap__codec_encode(d, &rec, &len), 0);
		raw_frame(fd, mac, nonce, SHARDMAP__FRAME_DELTA, 1, rec, len);
		free(rec);
		shardmap_delta_free(d);
	}
	cr_assert(raw_closed(fd), "bad delta: connection dropped");
	close(fd);
	expect_refused(target, SHARDMAP__REFUSE_BAD_DELTA, before);

	/* a delta frame whose payload is not a codec record */
	before = shardmap__peers_refused(target->ps, SHARDMAP__REFUSE_MALFORMED);
	fd = raw_connect(addr);
	raw_expect_hello(fd, nonce);
	raw_hello(fd, mac, "raw", 1);
	raw_frame(fd, mac, nonce, SHARDMAP__FRAME_DELTA, 1, "SMAPjunkjunkjunkjunkjunk", 24);
	cr_assert(raw_closed(fd), "undecodable delta: connection dropped");
	close(fd);
	expect_refused(target, SHARDMAP__REFUSE_MALFORMED, before);

	struct refused_total_arg rt = {target, refused_total + 11};
	cr_assert(wait_for(refused_total_reached, &rt),
		  "every refusal is in the public counter too");
	cr_assert_eq(shardmap_version(target->m), 1, "no hostile frame changed the map");

	/* the node still converges with its honest peer, both ways */
	for (uint64_t v = 1; v < 5; v++) {
		apply_ok(n[v % 2].m, step_delta(v, 0, "h"));
		cr_assert(wait_versions(n, 2, v + 1));
	}
	shardmap__mac_free(mac);
	shardmap__mac_free(bad_mac);
	node_down(&n[0]);
	node_down(&n[1]);
	shardmap_pool_close(p);
}

/* ---------------------------------------------------------------- failing peers */

Test(peers, peer_killed_mid_stream, .timeout = 120)
{
	enum { N = 6 };
	shardmap_pool *p = open_pool();
	struct node n[N] = {0};
	for (int i = 0; i < N; i++)
		node_up(&n[i], p, NULL);
	connect_all(n, N);
	uint64_t v = 1;
	for (int k = 0; k < 40; k++, v++) {
		apply_ok(n[0].m, step_delta(v, 0, "k"));
		if (k == 15) {
			node_down(&n[3]); /* in the middle of the stream, with frames in flight */
			cr_assert_null(n[3].m);
		}
	}
	cr_assert(wait_versions(n, N, v), "the survivors converge");

	/* a raw peer that dies in the middle of a frame */
	uint64_t before = shardmap__peers_refused(n[1].ps, SHARDMAP__REFUSE_TRUNCATED);
	int fd = raw_connect(shardmap_peers_address(n[1].ps));
	uint8_t nonce[SHARDMAP__NONCE];
	raw_expect_hello(fd, nonce);
	raw_hello(fd, NULL, "dying", 1);
	{
		shardmap_delta *d = step_delta(v, 50, "k");
		uint8_t *rec, *f;
		size_t len, flen;
		cr_assert_eq(shardmap__codec_encode(d, &rec, &len), 0);
		cr_assert_eq(shardmap__frame_build(NULL, nonce, SHARDMAP__FRAME_DELTA, 1, rec, len,
						   &f, &flen),
			     0);
		raw_send(fd, f, flen - 10);
		free(rec);
		free(f);
		shardmap_delta_free(d);
	}
	close(fd);
	expect_refused(&n[1], SHARDMAP__REFUSE_TRUNCATED, before);
	apply_ok(n[2].m, step_delta(v, 0, "k"));
	v++;
	cr_assert(wait_versions(n, N, v), "still converging after the truncated frame");
	for (int i = 0; i < N; i++)
		if (n[i].m)
			node_down(&n[i]);
	shardmap_pool_close(p);
}

struct drops_arg {
	struct node *n;
	uint64_t at_least;
};

static int drops_reached(void *arg)
{
	struct drops_arg *d = arg;
	return stats_of(d->n).peer_queue_drops >= d->at_least;
}

/* A peer that says hello and then never reads: its queue fills, the oldest frames go,
 * nothing blocks, and the node keeps converging with an honest peer. */
Test(peers, peer_that_stops_reading, .timeout = 180)
{
	shardmap_pool *p = open_pool();
	shardmap_peers_options o;
	shardmap_peers_options_init(&o);
	o.interval_ms = 100;
	o.send_queue_bytes = 64 * 1024;
	struct node n[2] = {0};
	node_up(&n[0], p, &o);
	node_up(&n[1], p, &o);
	connect_all(n, 2);

	/* the stuck peer: a listening socket with a tiny receive buffer */
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int small = 4096;
	setsockopt(lfd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
	struct sockaddr_in sa = {.sin_family = AF_INET};
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	cr_assert_eq(bind(lfd, (struct sockaddr *)&sa, sizeof sa), 0);
	cr_assert_eq(listen(lfd, 4), 0);
	socklen_t slen = sizeof sa;
	getsockname(lfd, (struct sockaddr *)&sa, &slen);
	char addr[64];
	snprintf(addr, sizeof addr, "127.0.0.1:%u", ntohs(sa.sin_port));
	cr_assert_eq(shardmap_peers_add(n[0].ps, addr), 0);

	/* make n[0] dial it: publish until it connects (it is one of two known peers) */
	uint64_t v = 1;
	int cfd = -1;
	uint64_t end = now_ms() + DEADLINE_MS;
	while (cfd < 0 && now_ms() < end) {
		apply_ok(n[0].m, step_delta(v++, 0, "s"));
		struct pollfd pfd = {.fd = lfd, .events = POLLIN};
		if (poll(&pfd, 1, 50) == 1)
			cfd = accept(lfd, NULL, NULL);
	}
	cr_assert_geq(cfd, 0, "the node connected to the stuck peer");
	uint8_t nonce[SHARDMAP__NONCE];
	raw_expect_hello(cfd, nonce);
	raw_hello(cfd, NULL, "stuck", 1);
	/* from now on cfd is never read */

	struct drops_arg da = {&n[0], stats_of(&n[0]).peer_queue_drops + 1};
	uint64_t t0 = now_ms();
	int k = 0;
	for (; k < 2000 && !drops_reached(&da); k++) {
		apply_ok(n[0].m, step_delta(v++, 400, "s")); /* ~8 KiB each */
		cr_assert(wait_versions(&n[1], 1, v), "the honest peer keeps up");
	}
	cr_assert(drops_reached(&da), "the stuck peer's queue overflowed after %d deltas", k);
	cr_assert_lt(now_ms() - t0, (uint64_t)DEADLINE_MS * 4, "publishing never blocked");
	struct shardmap__peers_counters c;
	shardmap__peers_counters(n[0].ps, &c);
	cr_assert_geq(c.established, 1);
	close(cfd);
	close(lfd);
	node_down(&n[0]);
	node_down(&n[1]);
	shardmap_pool_close(p);
}

/* ---------------------------------------------------------------- the store, not the peers */

struct fake_follower {
	struct shardmap__follower f;
	_Atomic int catch_ups;
};

static void fake_stop(struct shardmap__follower *f)
{
}

static void fake_catch_up(struct shardmap__follower *f)
{
	atomic_fetch_add(&((struct fake_follower *)f)->catch_ups, 1);
}

static int caught_up(void *arg)
{
	return atomic_load(&((struct fake_follower *)arg)->catch_ups) > 0;
}

Test(peers, fell_behind_the_ring_goes_to_the_store, .timeout = 120)
{
	shardmap_pool *p = open_pool();
	shardmap_peers_options o;
	shardmap_peers_options_init(&o);
	o.interval_ms = 50;
	o.ring = 4;
	struct node a = {0}, b = {0};
	node_up(&a, p, &o);
	node_up(&b, p, &o);
	struct fake_follower ff = {.f = {.stop = fake_stop, .catch_up = fake_catch_up}};
	cr_assert_eq(shardmap__follower_set(b.m, &ff.f), 0);

	/* a moves ten versions ahead while nobody listens to it */
	for (uint64_t v = 1; v <= 10; v++)
		apply_ok(a.m, step_delta(v, 0, "r"));
	struct shardmap__peers_counters c;
	shardmap__peers_counters(a.ps, &c);
	cr_assert_eq(c.ring, 4, "the ring is bounded");

	/* now b learns of a: anti-entropy, pull from 1, "too old" */
	cr_assert_eq(shardmap_peers_add(b.ps, shardmap_peers_address(a.ps)), 0);
	cr_assert(wait_for(caught_up, &ff), "b asked its store to catch up");
	shardmap__peers_counters(b.ps, &c);
	cr_assert_geq(c.too_old, 1);
	cr_assert_geq(c.store_asks, 1);
	cr_assert_eq(shardmap_version(b.m), 1, "nothing was taken from the peer");
	cr_assert_geq(stats_of(&b).antientropy_pulls, 1);

	cr_assert_eq(shardmap__follower_take(b.m), &ff.f);
	node_down(&a);
	node_down(&b);
	shardmap_pool_close(p);
}

Test(peers, never_bootstraps_from_peers, .timeout = 60)
{
	shardmap_pool *p = open_pool();
	struct node a = {0}, empty = {0};
	node_up(&a, p, NULL);
	node_open(&empty);
	node_start(&empty, p, NULL);
	cr_assert_eq(shardmap_peers_add(a.ps, shardmap_peers_address(empty.ps)), 0);
	cr_assert_eq(shardmap_peers_add(empty.ps, shardmap_peers_address(a.ps)), 0);
	/* a third node that does follow proves frames flowed meanwhile */
	struct node c = {0};
	node_up(&c, p, NULL);
	cr_assert_eq(shardmap_peers_add(a.ps, shardmap_peers_address(c.ps)), 0);
	cr_assert_eq(shardmap_peers_add(c.ps, shardmap_peers_address(empty.ps)), 0);
	/* publish until the empty node has been offered deltas (pushes pick random peers) */
	struct shardmap__peers_counters ec = {0};
	uint64_t v = 1, end = now_ms() + DEADLINE_MS;
	while (ec.frames_in[SHARDMAP__FRAME_DELTA] < 3 && now_ms() < end) {
		apply_ok(a.m, step_delta(v, 0, "b"));
		v++;
		cr_assert(wait_versions(&c, 1, v));
		shardmap__peers_counters(empty.ps, &ec);
	}
	cr_assert_geq(ec.frames_in[SHARDMAP__FRAME_DELTA], 3, "the empty node was offered deltas");
	cr_assert_eq(shardmap_version(empty.m), 0, "an empty map takes nothing from peers");
	cr_assert_eq(ec.frames_out[SHARDMAP__FRAME_PULL], 0, "nor asks for anything");
	cr_assert_eq(stats_of(&empty).frames_refused, 0, "offers are not refused: just not taken");
	node_down(&a);
	node_down(&empty);
	node_down(&c);
	shardmap_pool_close(p);
}

static int mismatch_seen(void *arg)
{
	struct node *n = arg;
	return stats_of(&n[0]).digest_mismatches > 0 && stats_of(&n[1]).digest_mismatches > 0;
}

Test(peers, same_version_different_content_is_noticed, .timeout = 60)
{
	shardmap_pool *p = open_pool();
	struct node n[2] = {0};
	node_up(&n[0], p, NULL);
	node_up(&n[1], p, NULL);
	struct fake_follower ff[2] = {{.f = {.stop = fake_stop, .catch_up = fake_catch_up}},
				      {.f = {.stop = fake_stop, .catch_up = fake_catch_up}}};
	cr_assert_eq(shardmap__follower_set(n[0].m, &ff[0].f), 0);
	cr_assert_eq(shardmap__follower_set(n[1].m, &ff[1].f), 0);
	apply_ok(n[0].m, step_delta(1, 0, "left"));
	apply_ok(n[1].m, step_delta(1, 0, "right"));
	connect_all(n, 2);
	cr_assert(wait_for(mismatch_seen, n), "both nodes counted the mismatch");
	cr_assert(wait_for(caught_up, &ff[0]));
	cr_assert(wait_for(caught_up, &ff[1]));
	cr_assert_eq(shardmap_version(n[0].m), 2);
	cr_assert_eq(shardmap_version(n[1].m), 2);
	shardmap__follower_take(n[0].m);
	shardmap__follower_take(n[1].m);
	node_down(&n[0]);
	node_down(&n[1]);
	shardmap_pool_close(p);
}

/* ---------------------------------------------------------------- bounds and arguments */

struct inbound_arg {
	struct node *n;
	uint64_t want;
};

static int inbound_refused(void *arg)
{
	struct inbound_arg *a = arg;
	struct shardmap__peers_counters c;
	shardmap__peers_counters(a->n->ps, &c);
	return c.inbound_refused >= a->want;
}

Test(peers, inbound_connections_are_capped)
{
	shardmap_pool *p = open_pool();
	shardmap_peers_options o;
	shardmap_peers_options_init(&o);
	o.max_inbound = 2;
	struct node a = {0};
	node_up(&a, p, &o);
	int fds[5];
	for (int i = 0; i < 5; i++)
		fds[i] = raw_connect(shardmap_peers_address(a.ps));
	struct inbound_arg ia = {&a, 3};
	cr_assert(wait_for(inbound_refused, &ia), "three connections over the cap refused");
	uint8_t nonce[SHARDMAP__NONCE];
	raw_expect_hello(fds[0], nonce); /* the first two were taken */
	raw_expect_hello(fds[1], nonce);
	for (int i = 2; i < 5; i++)
		cr_assert(raw_closed(fds[i]), "connection %d over the cap was closed", i);
	struct shardmap__peers_counters c;
	shardmap__peers_counters(a.ps, &c);
	cr_assert_eq(c.inbound, 2);
	for (int i = 0; i < 5; i++)
		close(fds[i]);
	node_down(&a);
	shardmap_pool_close(p);
}

struct timeout_arg {
	struct node *n;
};

static int handshake_timed_out(void *arg)
{
	struct shardmap__peers_counters c;
	shardmap__peers_counters(((struct timeout_arg *)arg)->n->ps, &c);
	return c.handshake_timeouts >= 1 && c.inbound == 0;
}

/* A client that connects and says nothing loses its slot after the handshake deadline. */
Test(peers, silent_client_is_dropped)
{
	shardmap_pool *p = open_pool();
	shardmap_peers_options o;
	shardmap_peers_options_init(&o);
	o.interval_ms = 50; /* handshake deadline: max(10 intervals, 1 s) */
	struct node a = {0};
	node_up(&a, p, &o);
	int fd = raw_connect(shardmap_peers_address(a.ps));
	struct timeout_arg ta = {&a};
	cr_assert(wait_for(handshake_timed_out, &ta), "the silent connection was closed");
	cr_assert(raw_closed(fd));
	close(fd);
	node_down(&a);
	shardmap_pool_close(p);
}

Test(peers, bad_arguments)
{
	shardmap_pool *p;
	cr_assert_eq(shardmap_pool_open(1, &p), 0);
	struct node a = {0};
	node_open(&a);
	shardmap_peers *ps = NULL;
	shardmap_peers_options o;

	cr_assert_eq(shardmap_peers_start(NULL, p, NULL, &ps), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_peers_start(a.m, NULL, NULL, &ps), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_peers_start(a.m, p, NULL, NULL), SHARDMAP_EINVAL);
	shardmap_peers_options_init(&o);
	o.fanout = 1000;
	cr_assert_eq(shardmap_peers_start(a.m, p, &o, &ps), SHARDMAP_EINVAL, "fanout too large");
	shardmap_peers_options_init(&o);
	o.key = "k";
	o.key_len = 0;
	cr_assert_eq(shardmap_peers_start(a.m, p, &o, &ps), SHARDMAP_EINVAL, "key without length");
	shardmap_peers_options_init(&o);
	o.listen = "not an address";
	cr_assert_eq(shardmap_peers_start(a.m, p, &o, &ps), SHARDMAP_EINVAL);
	o.listen = "127.0.0.1:99999";
	cr_assert_eq(shardmap_peers_start(a.m, p, &o, &ps), SHARDMAP_EINVAL);
	shardmap_peers_options_init(&o);
	o.node_id = "bad\nid";
	cr_assert_eq(shardmap_peers_start(a.m, p, &o, &ps), SHARDMAP_EINVAL);
	shardmap_peers_options_init(&o);
	o.size = 3;
	cr_assert_eq(shardmap_peers_start(a.m, p, &o, &ps), SHARDMAP_EINVAL, "bad options size");
	cr_assert_null(ps);

	/* a port in use */
	shardmap_peers_options_init(&o);
	cr_assert_eq(shardmap_peers_start(a.m, p, &o, &a.ps), 0);
	const char *addr = shardmap_peers_address(a.ps);
	cr_assert(strncmp(addr, "127.0.0.1:", 10) == 0 && parse_port(addr) > 0, "%s", addr);
	struct node b = {0};
	node_open(&b);
	o.listen = addr;
	cr_assert_eq(shardmap_peers_start(b.m, p, &o, &ps), SHARDMAP_EIO, "port in use");

	const char *bad[] = {"",    "host",	"1.2.3.4:0",  "1.2.3.4:99999",
			     ":80", "1.2.3.4:", "1.2.3.4:8x", "bad\thost:80",
			     NULL};
	for (int i = 0; bad[i]; i++)
		cr_assert_eq(shardmap_peers_add(a.ps, bad[i]), SHARDMAP_EINVAL, "'%s'", bad[i]);
	cr_assert_eq(shardmap_peers_add(a.ps, NULL), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_peers_add(NULL, "1.2.3.4:5"), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_peers_add(a.ps, "1.2.3.4:5"), 0);
	cr_assert_eq(shardmap_peers_add(a.ps, "[::1]:5"), 0);
	cr_assert_eq(shardmap_peers_add(a.ps, "1.2.3.4:5"), 0, "again: nothing changes");
	cr_assert_eq(stats_of(&a).peers_known, 2);
	cr_assert_eq(shardmap_peers_remove(a.ps, "1.2.3.4:6"), SHARDMAP_ENOENT);
	cr_assert_eq(shardmap_peers_remove(a.ps, "nonsense"), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap_peers_remove(a.ps, "1.2.3.4:5"), 0);
	cr_assert_eq(shardmap_peers_remove(a.ps, "1.2.3.4:5"), SHARDMAP_ENOENT);
	cr_assert_eq(stats_of(&a).peers_known, 1);
	cr_assert_null(shardmap_peers_address(NULL));
	shardmap_peers_stop(NULL);

	node_down(&a);
	shardmap__observer_remove(b.m, &b.obs);
	shardmap_close(b.m);
	shardmap_pool_close(p);
}

struct backoff_arg {
	struct node *n;
	uint64_t rounds;
};

static int rounds_done(void *arg)
{
	struct backoff_arg *b = arg;
	struct shardmap__peers_counters c;
	shardmap__peers_counters(b->n->ps, &c);
	return c.antientropy_rounds >= b->rounds;
}

/* A known peer that refuses connections is retried with exponential backoff, not every
 * round: 200 anti-entropy rounds (each of which wants to dial it, the only peer) cost a
 * handful of attempts (100 ms doubling up to 30 s: about log2 of the elapsed time). */
Test(peers, dead_peer_backs_off, .timeout = 240)
{
	shardmap_pool *p;
	cr_assert_eq(shardmap_pool_open(1, &p), 0);
	shardmap_peers_options o;
	shardmap_peers_options_init(&o);
	o.interval_ms = 10;
	struct node a = {0};
	node_up(&a, p, &o);
	/* a port that was free a moment ago: connecting to it is refused */
	int probe = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET};
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	socklen_t sl = sizeof sa;
	cr_assert_eq(bind(probe, (struct sockaddr *)&sa, sizeof sa), 0);
	getsockname(probe, (struct sockaddr *)&sa, &sl);
	close(probe);
	char addr[64];
	snprintf(addr, sizeof addr, "127.0.0.1:%u", ntohs(sa.sin_port));
	cr_assert_eq(shardmap_peers_add(a.ps, addr), 0);
	struct backoff_arg ba = {&a, 200};
	cr_assert(wait_for(rounds_done, &ba));
	struct shardmap__peers_counters c;
	shardmap__peers_counters(a.ps, &c);
	cr_assert_geq(c.connects, 1, "it was tried");
	cr_assert_leq(c.connects, 20, "%llu attempts in %llu rounds: no backoff",
		      (unsigned long long)c.connects, (unsigned long long)c.antientropy_rounds);
	cr_assert(c.connect_failures + 1 >= c.connects && c.connect_failures <= c.connects,
		  "every attempt but one in flight failed");
	node_down(&a);
	shardmap_pool_close(p);
}

/* Two nodes over IPv6 loopback (skipped where the host has no ::1). */
Test(peers, ipv6_nodes)
{
	int probe = socket(AF_INET6, SOCK_STREAM, 0);
	struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
	int have_v6 = probe >= 0 && bind(probe, (struct sockaddr *)&sa, sizeof sa) == 0;
	if (probe >= 0)
		close(probe);
	if (!have_v6)
		cr_skip_test("no IPv6 loopback here");
	shardmap_pool *p;
	cr_assert_eq(shardmap_pool_open(1, &p), 0);
	shardmap_peers_options o;
	shardmap_peers_options_init(&o);
	o.listen = "[::1]:0";
	o.interval_ms = 100;
	struct node n[2] = {0};
	node_up(&n[0], p, &o);
	node_up(&n[1], p, &o);
	cr_assert(strncmp(shardmap_peers_address(n[0].ps), "[::1]:", 6) == 0, "%s",
		  shardmap_peers_address(n[0].ps));
	connect_all(n, 2);
	apply_ok(n[0].m, step_delta(1, 0, "six"));
	cr_assert(wait_versions(n, 2, 2));
	node_down(&n[0]);
	node_down(&n[1]);
	shardmap_pool_close(p);
}

/* The frame codec itself: every field is checked. */
Test(peers, frame_parsing)
{
	struct shardmap__mac *mac;
	cr_assert_eq(shardmap__mac_new("k", 0, &mac), SHARDMAP_EINVAL);
	cr_assert_eq(shardmap__mac_new("k", 1, &mac), 0);
	uint8_t nonce[SHARDMAP__NONCE] = {1, 2, 3};
	uint8_t *f;
	size_t flen, got;
	struct shardmap__frame_header h;
	enum shardmap__refuse why;
	cr_assert_eq(
	    shardmap__frame_build(mac, nonce, SHARDMAP__FRAME_PULL, 7, "12345678", 8, &f, &flen),
	    0);
	cr_assert_eq(flen, SHARDMAP__FRAME_HEADER + 8 + SHARDMAP__FRAME_TAG);
	for (size_t i = 0; i < flen; i++)
		cr_assert_eq(shardmap__frame_parse(f, i, 100, 1, &h, &got, &why),
			     SHARDMAP__FRAME_MORE, "prefix %zu", i);
	cr_assert_eq(shardmap__frame_parse(f, flen, 100, 1, &h, &got, &why), 0);
	cr_assert_eq(got, flen);
	cr_assert_eq(h.type, SHARDMAP__FRAME_PULL);
	cr_assert_eq(h.seq, 7);
	cr_assert_eq(h.length, 8);
	cr_assert_eq(shardmap__frame_verify(mac, nonce, f, flen), 0);
	uint8_t other[SHARDMAP__NONCE] = {9};
	cr_assert_eq(shardmap__frame_verify(mac, other, f, flen), -1, "another nonce");
	for (size_t i = 0; i < flen; i++) {
		f[i] ^= 0x40;
		int bad = shardmap__frame_parse(f, flen, 100, 1, &h, &got, &why) != 0 ||
			  shardmap__frame_verify(mac, nonce, f, flen) != 0;
		cr_assert(bad, "a flipped bit at %zu went unnoticed", i);
		f[i] ^= 0x40;
	}
	cr_assert_eq(shardmap__frame_parse(f, flen, 7, 1, &h, &got, &why), -1);
	cr_assert_eq(why, SHARDMAP__REFUSE_OVERSIZED);
	f[2] = 9;
	cr_assert_eq(shardmap__frame_parse(f, 3, 100, 1, &h, &got, &why), -1);
	cr_assert_eq(why, SHARDMAP__REFUSE_VERSION);
	f[0] = 'X';
	cr_assert_eq(shardmap__frame_parse(f, 1, 100, 1, &h, &got, &why), -1,
		     "garbage is refused at its first byte");
	cr_assert_eq(why, SHARDMAP__REFUSE_GARBAGE);
	free(f);
	cr_assert_eq(
	    shardmap__frame_build(NULL, NULL, SHARDMAP__FRAME_PULL, 1, "12345678", 8, &f, &flen),
	    0);
	cr_assert_eq(shardmap__frame_parse(f, flen, 100, 1, &h, &got, &why), -1);
	cr_assert_eq(why, SHARDMAP__REFUSE_MISSING_TAG);
	cr_assert_eq(shardmap__frame_parse(f, flen, 100, 0, &h, &got, &why), 0);
	free(f);

	struct shardmap__hello hello = {.proto = 1, .features = 1, .version = 42}, back;
	memset(hello.nonce, 7, sizeof hello.nonce);
	strcpy(hello.node_id, "node-1");
	uint8_t buf[SHARDMAP__HELLO_MAX];
	size_t n = shardmap__hello_encode(&hello, buf);
	cr_assert_eq(shardmap__hello_decode(buf, n, &back), 0);
	cr_assert_str_eq(back.node_id, "node-1");
	cr_assert_eq(back.version, 42);
	cr_assert_eq(memcmp(back.nonce, hello.nonce, sizeof back.nonce), 0);
	cr_assert_eq(shardmap__hello_decode(buf, n - 1, &back), SHARDMAP_ECORRUPT);
	buf[31] = '\n';
	cr_assert_eq(shardmap__hello_decode(buf, n, &back), SHARDMAP_ECORRUPT);
	struct shardmap__announce a = {.version = 5, .digest = 6, .flags = 1}, ab;
	n = shardmap__announce_encode(&a, buf);
	cr_assert_eq(shardmap__announce_decode(buf, n, &ab), 0);
	cr_assert_eq(ab.digest, 6);
	buf[16] = 0x80;
	cr_assert_eq(shardmap__announce_decode(buf, n, &ab), SHARDMAP_ECORRUPT);
	uint64_t have;
	cr_assert_eq(shardmap__pull_decode(buf, 7, &have), SHARDMAP_ECORRUPT);
	struct shardmap__too_old t = {1, 2, 3}, tb;
	n = shardmap__too_old_encode(&t, buf);
	cr_assert_eq(shardmap__too_old_decode(buf, n, &tb), 0);
	cr_assert_eq(tb.newest, 3);
	cr_assert_eq(shardmap__too_old_decode(buf, n + 1, &tb), SHARDMAP_ECORRUPT);
	cr_assert_str_eq(shardmap__refuse_name(SHARDMAP__REFUSE_BAD_TAG), "bad_tag");
	cr_assert_str_eq(shardmap__refuse_name(999), "unknown");
	shardmap__mac_free(mac);
}
