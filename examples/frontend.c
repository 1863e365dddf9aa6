/*
 * frontend.c - the example routing front-end: links shardmap the way a real front-end
 * would. It serves at once from its warm-start snapshot when it has one (flagged stale in
 * /healthz), bootstraps from the authoritative store and follows it, shares updates with
 * peers on a fixed pool, and answers HTTP on a fixed pool of its own (frontend_http.c).
 *
 * Usage: frontend [--config FILE] [--store URI] [--data-dir DIR] [--snapshot PATH]
 *                 [--listen HOST:PORT] [--peers H:P,H:P...] [--peer-listen HOST:PORT]
 *                 [--peer-key-file PATH] [--pool-threads N] [--http-threads N]
 *                 [--stale-after-ms N] [--snapshot-every-ms N]
 * A config file holds the same options as "name = value" lines ('#' starts a comment).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "frontend.h"

struct config {
	char *store, *data_dir, *snapshot, *listen, *peers, *peer_listen, *peer_key_file;
	unsigned pool_threads, http_threads, stale_after_ms, snapshot_every_ms;
};

static pthread_mutex_t keeper_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t keeper_cond = PTHREAD_COND_INITIALIZER;

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("frontend: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

/* Set one option by name. Returns 0, or -1 for an unknown name or a bad value. */
static int config_set(struct config *c, const char *name, const char *value)
{
	struct {
		const char *name;
		char **s;
		unsigned *u;
	} table[] = {
	    {"store", &c->store, NULL},
	    {"data-dir", &c->data_dir, NULL},
	    {"snapshot", &c->snapshot, NULL},
	    {"listen", &c->listen, NULL},
	    {"peers", &c->peers, NULL},
	    {"peer-listen", &c->peer_listen, NULL},
	    {"peer-key-file", &c->peer_key_file, NULL},
	    {"pool-threads", NULL, &c->pool_threads},
	    {"http-threads", NULL, &c->http_threads},
	    {"stale-after-ms", NULL, &c->stale_after_ms},
	    {"snapshot-every-ms", NULL, &c->snapshot_every_ms},
	};
	for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
		if (strcmp(table[i].name, name) != 0)
			continue;
		if (table[i].s) {
			free(*table[i].s);
			*table[i].s = strdup(value);
			return *table[i].s ? 0 : -1;
		}
		char *end;
		errno = 0;
		unsigned long v = strtoul(value, &end, 10);
		if (errno || *end || end == value || v == 0 || v > 1000000)
			return -1;
		*table[i].u = (unsigned)v;
		return 0;
	}
	return -1;
}

static int config_file(struct config *c, const char *path)
{
	FILE *f = fopen(path, "r");
	if (f == NULL) {
		logf_("config %s: %s", path, strerror(errno));
		return -1;
	}
	char line[1024];
	int lineno = 0, rc = 0;
	while (rc == 0 && fgets(line, sizeof line, f)) {
		lineno++;
		char *hash = strchr(line, '#');
		if (hash)
			*hash = '\0';
		char name[128], value[900];
		if (sscanf(line, " %127[^= \t] = %899s", name, value) == 2) {
			if (config_set(c, name, value) != 0) {
				logf_("config %s:%d: bad option '%s'", path, lineno, name);
				rc = -1;
			}
		} else if (strspn(line, " \t\r\n") != strlen(line)) {
			logf_("config %s:%d: expected 'name = value'", path, lineno);
			rc = -1;
		}
	}
	fclose(f);
	return rc;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: frontend [--config FILE] [--store URI] [--data-dir DIR] [--snapshot PATH]\n"
	           "                [--listen HOST:PORT] [--peers H:P,...] [--peer-listen HOST:PORT]\n"
	           "                [--peer-key-file PATH] [--pool-threads N] [--http-threads N]\n"
	           "                [--stale-after-ms N] [--snapshot-every-ms N]\n");
}

/* Parse the command line into c. Returns 0, 1 (help printed) or 2 (usage error). */
static int parse_args(struct config *c, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"config", required_argument, NULL, 'c'},
	    {"store", required_argument, NULL, 0},
	    {"data-dir", required_argument, NULL, 0},
	    {"snapshot", required_argument, NULL, 0},
	    {"listen", required_argument, NULL, 0},
	    {"peers", required_argument, NULL, 0},
	    {"peer-listen", required_argument, NULL, 0},
	    {"peer-key-file", required_argument, NULL, 0},
	    {"pool-threads", required_argument, NULL, 0},
	    {"http-threads", required_argument, NULL, 0},
	    {"stale-after-ms", required_argument, NULL, 0},
	    {"snapshot-every-ms", required_argument, NULL, 0},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0}};
	int o, idx;
	while ((o = getopt_long(argc, argv, "", opts, &idx)) != -1) {
		if (o == 'h') {
			usage(stdout);
			return 1;
		}
		if (o == 'c') {
			if (config_file(c, optarg) != 0)
				return 2;
			continue;
		}
		if (o != 0 || config_set(c, opts[idx].name, optarg) != 0) {
			if (o == 0)
				logf_("bad value for --%s: '%s'", opts[idx].name, optarg);
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	return 0;
}

/* Fill in what the user did not give. Returns 0 or -1. */
static int config_defaults(struct config *c)
{
	char path[4096];
	if (!c->data_dir && config_set(c, "data-dir", "frontend-data") != 0)
		return -1;
	if (!c->store) {
		snprintf(path, sizeof path, "file:%s/store", c->data_dir);
		if (config_set(c, "store", path) != 0)
			return -1;
	}
	if (!c->snapshot) {
		snprintf(path, sizeof path, "%s/map.snapshot", c->data_dir);
		if (config_set(c, "snapshot", path) != 0)
			return -1;
	}
	if (!c->listen && config_set(c, "listen", "127.0.0.1:8080") != 0)
		return -1;
	return 0;
}

static int read_key_file(const char *path, char *key, size_t cap, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return -1;
	*len = fread(key, 1, cap, f);
	fclose(f);
	while (*len && (key[*len - 1] == '\n' || key[*len - 1] == '\r'))
		(*len)--;
	return *len ? 0 : -1;
}

static int start_peers(struct frontend *fe, const struct config *c)
{
	if (!c->peers && !c->peer_listen)
		return 0;
	static char key[256];
	size_t key_len = 0;
	if (c->peer_key_file && read_key_file(c->peer_key_file, key, sizeof key, &key_len) != 0) {
		logf_("peer key file %s: cannot read a key", c->peer_key_file);
		return -1;
	}
	shardmap_peers_options po;
	shardmap_peers_options_init(&po);
	po.listen = c->peer_listen ? c->peer_listen : "127.0.0.1:0";
	if (key_len) {
		po.key = key;
		po.key_len = key_len;
	}
	int rc = shardmap_peers_start(fe->map, fe->pool, &po, &fe->peers);
	if (rc != 0) {
		logf_("peers on %s: %s", po.listen, shardmap_strerror(rc));
		return -1;
	}
	logf_("peers listening on %s", shardmap_peers_address(fe->peers));
	char *list = c->peers ? strdup(c->peers) : NULL, *save = NULL;
	for (char *p = list ? strtok_r(list, ",", &save) : NULL; p; p = strtok_r(NULL, ",", &save))
		if ((rc = shardmap_peers_add(fe->peers, p)) != 0)
			logf_("peer %s: %s", p, shardmap_strerror(rc));
	free(list);
	return 0;
}

/* Sleep up to ms unless asked to stop. Returns nonzero when stopping. */
static int keeper_wait(struct frontend *fe, unsigned ms)
{
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += ms / 1000;
	until.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&keeper_lock);
	while (!atomic_load(&fe->stopping) &&
	       pthread_cond_timedwait(&keeper_cond, &keeper_lock, &until) == 0)
		;
	pthread_mutex_unlock(&keeper_lock);
	return atomic_load(&fe->stopping);
}

/* One attempt to reach the store, bootstrap and follow it. Returns 0 or an error code. */
static int connect_store(struct frontend *fe, shardmap_error *why)
{
	int rc;
	if (fe->store == NULL && (rc = shardmap_store_open(fe->store_uri, &fe->store)) != 0)
		return rc;
	if ((rc = shardmap_bootstrap(fe->map, fe->store, why)) != 0)
		return rc;
	return shardmap_follow(fe->map, fe->store, fe->pool);
}

/* The keeper: reaches the store (retrying with backoff while it is down) and saves the
 * warm-start snapshot now and then. */
static void *keeper(void *arg)
{
	struct frontend *fe = arg;
	unsigned backoff = 100, saved_every = 0;
	int last_rc = 0;
	while (!atomic_load(&fe->stopping)) {
		if (!atomic_load(&fe->following)) {
			shardmap_error why = {0};
			int rc = connect_store(fe, &why);
			if (rc == 0) {
				atomic_store(&fe->following, 1);
				atomic_store(&fe->from_snapshot, 0);
				logf_("following %s at version %" PRIu64, fe->store_uri,
				      shardmap_version(fe->map));
				backoff = 100;
				continue;
			}
			if (rc != last_rc)
				logf_("store %s: %s %s (retrying)", fe->store_uri, shardmap_strerror(rc),
				      why.message);
			last_rc = rc;
			keeper_wait(fe, backoff);
			backoff = backoff < 5000 ? backoff * 2 : 5000;
			continue;
		}
		if (keeper_wait(fe, 1000))
			break;
		saved_every += 1000;
		if (fe->snapshot_path && saved_every >= fe->stale_after_ms * 2) {
			saved_every = 0;
			shardmap_snapshot_save(fe->map, fe->snapshot_path);
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	struct config c = {.pool_threads = 2, .http_threads = 2, .stale_after_ms = 5000,
	                   .snapshot_every_ms = 10000};
	int rc = parse_args(&c, argc, argv);
	if (rc)
		return rc == 1 ? 0 : 2;
	struct sockaddr_in addr;
	if (config_defaults(&c) != 0 || ex_parse_hostport(c.listen, &addr) != 0) {
		logf_("bad --listen address '%s'", c.listen ? c.listen : "");
		return 2;
	}
	ex_block_signals();
	fe_forward_global_init();
	mkdir(c.data_dir, 0755);

	struct frontend fe = {.store_uri = c.store, .snapshot_path = c.snapshot,
	                      .stale_after_ms = c.stale_after_ms};
	if ((rc = shardmap_open(&fe.map, NULL)) != 0 ||
	    (rc = shardmap_pool_open(c.pool_threads, &fe.pool)) != 0) {
		logf_("start: %s", shardmap_strerror(rc));
		return 1;
	}
	shardmap_error why = {0};
	if (access(c.snapshot, R_OK) == 0) {
		if ((rc = shardmap_snapshot_load(fe.map, c.snapshot, &why)) == 0) {
			atomic_store(&fe.from_snapshot, 1);
			logf_("serving warm-start snapshot %s at version %" PRIu64, c.snapshot,
			      shardmap_version(fe.map));
		} else {
			logf_("snapshot %s unusable: %s %s", c.snapshot, shardmap_strerror(rc),
			      why.message);
		}
	}
	struct MHD_Daemon *http = fe_http_start(&fe, &addr, c.http_threads);
	if (http == NULL) {
		logf_("cannot listen on %s", c.listen);
		return 1;
	}
	if (start_peers(&fe, &c) != 0)
		return 1;
	pthread_t keeper_thread;
	pthread_create(&keeper_thread, NULL, keeper, &fe);
	logf_("listening on %s (store %s, %u pool threads, %u http threads)", c.listen, c.store,
	      c.pool_threads, c.http_threads);

	ex_wait_for_signal();
	logf_("stopping");
	pthread_mutex_lock(&keeper_lock);
	atomic_store(&fe.stopping, 1);
	pthread_cond_broadcast(&keeper_cond);
	pthread_mutex_unlock(&keeper_lock);
	pthread_join(keeper_thread, NULL);
	MHD_stop_daemon(http);
	shardmap_peers_stop(fe.peers);
	shardmap_unfollow(fe.map);
	if (shardmap_version(fe.map) > 0)
		shardmap_snapshot_save(fe.map, c.snapshot);
	shardmap_store_close(fe.store);
	shardmap_pool_close(fe.pool);
	shardmap_close(fe.map);
	return 0;
}
