/*
 * loadgen.c - steady record traffic for the demo and the fleet scenario: THREADS workers
 * POST records with random partition keys to the given front-ends (round-robin) at a fixed
 * total rate, print one line per second, and a JSON summary at the end:
 *   {"sent":N, "ok":N, "errors":N, "by_status":{...}, "by_cell":{...}}
 *
 * Usage: loadgen --url http://HOST:PORT [--url ...] [--stream S] [--rate PER_SEC]
 *                [--duration SECONDS] [--threads N] [--quiet]
 * Stops after the duration, or at SIGINT/SIGTERM.
 */
#include <curl/curl.h>
#include <getopt.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_URLS 64
#define MAX_CELLS 32

static struct {
	const char *urls[MAX_URLS];
	int n_urls;
	const char *stream;
	double rate;
	int duration, threads, quiet;
	_Atomic int stop;
	_Atomic unsigned long sent, ok, errors;
	pthread_mutex_t lock;
	json_t *by_status, *by_cell;
} G = {.stream = "orders", .rate = 200, .duration = 10, .threads = 4,
       .lock = PTHREAD_MUTEX_INITIALIZER};

struct answer {
	char buf[4096];
	size_t len;
};

static size_t collect(char *p, size_t size, size_t n, void *ctx)
{
	struct answer *a = ctx;
	size_t k = size * n;
	if (a->len + k < sizeof a->buf) {
		memcpy(a->buf + a->len, p, k);
		a->len += k;
		a->buf[a->len] = '\0';
	}
	return k;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void count(json_t *obj, const char *key)
{
	json_t *n = json_object_get(obj, key);
	json_object_set_new(obj, key, json_integer(n ? json_integer_value(n) + 1 : 1));
}

static void *worker(void *arg)
{
	long id = (long)arg;
	CURL *c = curl_easy_init();
	unsigned seed = (unsigned)(id * 7919 + time(NULL));
	double interval = G.threads / G.rate, next = now_s();
	for (unsigned long i = 0; !atomic_load(&G.stop); i++) {
		char url[512], key[64], body[96];
		snprintf(key, sizeof key, "user-%u", (unsigned)rand_r(&seed));
		snprintf(url, sizeof url, "%s/streams/%s/records?key=%s",
		         G.urls[(id + (long)i) % G.n_urls], G.stream, key);
		snprintf(body, sizeof body, "{\"worker\":%ld,\"seq\":%lu}", id, i);
		struct answer a = {.len = 0};
		curl_easy_reset(c);
		curl_easy_setopt(c, CURLOPT_URL, url);
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
		curl_easy_setopt(c, CURLOPT_WRITEDATA, &a);
		curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
		curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
		long status = 0;
		if (curl_easy_perform(c) == CURLE_OK)
			curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
		atomic_fetch_add(&G.sent, 1);
		atomic_fetch_add(status == 200 ? &G.ok : &G.errors, 1);
		json_t *j = json_loads(a.buf, 0, NULL);
		const char *cell = json_string_value(json_object_get(j, "cell"));
		char st[16];
		snprintf(st, sizeof st, "%ld", status);
		pthread_mutex_lock(&G.lock);
		count(G.by_status, st);
		if (status == 200 && cell)
			count(G.by_cell, cell);
		else if (!G.quiet)
			fprintf(stderr, "loadgen: HTTP %ld: %s\n", status, a.buf);
		pthread_mutex_unlock(&G.lock);
		json_decref(j);
		next += interval;
		double wait = next - now_s();
		if (wait > 0) {
			struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
			nanosleep(&ts, NULL);
		}
	}
	curl_easy_cleanup(c);
	return NULL;
}

static void on_signal(int sig)
{
	(void)sig;
	atomic_store(&G.stop, 1);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"url", required_argument, NULL, 'u'},      {"stream", required_argument, NULL, 's'},
	    {"rate", required_argument, NULL, 'r'},     {"duration", required_argument, NULL, 'd'},
	    {"threads", required_argument, NULL, 't'},  {"quiet", no_argument, NULL, 'q'},
	    {NULL, 0, NULL, 0}};
	int o;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 'u':
			if (G.n_urls < MAX_URLS)
				G.urls[G.n_urls++] = optarg;
			break;
		case 's': G.stream = optarg; break;
		case 'r': G.rate = atof(optarg); break;
		case 'd': G.duration = atoi(optarg); break;
		case 't': G.threads = atoi(optarg); break;
		case 'q': G.quiet = 1; break;
		default:
			fprintf(stderr, "usage: loadgen --url URL [--url ...] [--stream S] [--rate N] "
			                "[--duration S] [--threads N] [--quiet]\n");
			return 2;
		}
	}
	if (G.n_urls == 0 || G.rate <= 0 || G.threads <= 0 || G.duration <= 0) {
		fprintf(stderr, "loadgen: need --url, and positive --rate, --threads, --duration\n");
		return 2;
	}
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	curl_global_init(CURL_GLOBAL_DEFAULT);
	G.by_status = json_object();
	G.by_cell = json_object();
	pthread_t *tids = calloc((size_t)G.threads, sizeof *tids);
	for (long i = 0; i < G.threads; i++)
		pthread_create(&tids[i], NULL, worker, (void *)i);
	unsigned long last_sent = 0, last_err = 0;
	for (int s = 1; s <= G.duration && !atomic_load(&G.stop); s++) {
		struct timespec one = {1, 0};
		nanosleep(&one, NULL);
		unsigned long sent = atomic_load(&G.sent), err = atomic_load(&G.errors);
		if (!G.quiet)
			fprintf(stderr, "loadgen: t=%2ds sent=%lu (+%lu) errors=%lu (+%lu)\n", s, sent,
			        sent - last_sent, err, err - last_err);
		last_sent = sent;
		last_err = err;
	}
	atomic_store(&G.stop, 1);
	for (int i = 0; i < G.threads; i++)
		pthread_join(tids[i], NULL);
	json_t *sum = json_pack("{s:I, s:I, s:I, s:O, s:O}", "sent", (json_int_t)G.sent, "ok",
	                        (json_int_t)G.ok, "errors", (json_int_t)G.errors, "by_status",
	                        G.by_status, "by_cell", G.by_cell);
	char *text = json_dumps(sum, JSON_COMPACT | JSON_SORT_KEYS);
	printf("%s\n", text);
	free(text);
	json_decref(sum);
	json_decref(G.by_status);
	json_decref(G.by_cell);
	free(tids);
	curl_global_cleanup();
	return G.errors ? 1 : 0;
}
