/*
 * http_common.c - helpers shared by the example front-end and cell (see http_common.h).
 */
#include "http_common.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ex_parse_hostport(const char *s, struct sockaddr_in *out)
{
	const char *colon = strrchr(s, ':');
	if (colon == NULL || colon == s)
		return -1;
	char host[64];
	size_t hl = (size_t)(colon - s);
	if (hl >= sizeof host)
		return -1;
	memcpy(host, s, hl);
	host[hl] = '\0';
	char *end;
	long port = strtol(colon + 1, &end, 10);
	if (*end != '\0' || port < 0 || port > 65535)
		return -1;
	memset(out, 0, sizeof *out);
	out->sin_family = AF_INET;
	out->sin_port = htons((uint16_t)port);
	if (strcmp(host, "localhost") == 0)
		strcpy(host, "127.0.0.1");
	return inet_pton(AF_INET, host, &out->sin_addr) == 1 ? 0 : -1;
}

int ex_body_feed(struct ex_body *b, const char *chunk, size_t n)
{
	if (b->too_large || (b->limit && b->len + n > b->limit)) {
		b->too_large = 1;
		return 0;
	}
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 1024;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *p = realloc(b->data, cap);
		if (p == NULL)
			return -1;
		b->data = p;
		b->cap = cap;
	}
	memcpy(b->data + b->len, chunk, n);
	b->len += n;
	b->data[b->len] = '\0';
	return 0;
}

void ex_body_free(struct ex_body *b)
{
	free(b->data);
	memset(b, 0, sizeof *b);
}

enum MHD_Result ex_reply_text(struct MHD_Connection *c, unsigned status, const char *text,
                              const char *content_type)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), (void *)text,
	                                                         MHD_RESPMEM_MUST_COPY);
	if (r == NULL)
		return MHD_NO;
	MHD_add_response_header(r, "Content-Type", content_type);
	enum MHD_Result ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

enum MHD_Result ex_reply_json(struct MHD_Connection *c, unsigned status, json_t *obj)
{
	char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
	json_decref(obj);
	if (text == NULL)
		return ex_reply_text(c, 500, "{\"error\":\"out of memory\"}\n", "application/json");
	struct MHD_Response *r =
	    MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
	if (r == NULL) {
		free(text);
		return MHD_NO;
	}
	MHD_add_response_header(r, "Content-Type", "application/json");
	enum MHD_Result ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

enum MHD_Result ex_reply_error(struct MHD_Connection *c, unsigned status, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	return ex_reply_json(c, status, json_pack("{s:s, s:i}", "error", msg, "status", status));
}

static pthread_key_t reader_key;
static pthread_once_t reader_once = PTHREAD_ONCE_INIT;

static void reader_destroy(void *r)
{
	shardmap_reader_close(r);
}

static void reader_key_init(void)
{
	pthread_key_create(&reader_key, reader_destroy);
}

shardmap_reader *ex_thread_reader(shardmap *m)
{
	pthread_once(&reader_once, reader_key_init);
	shardmap_reader *r = pthread_getspecific(reader_key);
	if (r == NULL && shardmap_reader_open(m, &r) == 0)
		pthread_setspecific(reader_key, r);
	return r;
}

struct MHD_Daemon *ex_http_start(const struct sockaddr_in *addr, unsigned threads,
                                 MHD_AccessHandlerCallback handler, void *ctx,
                                 MHD_RequestCompletedCallback completed)
{
	return MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
	                            MHD_USE_ERROR_LOG,
	                        ntohs(addr->sin_port), NULL, NULL, handler, ctx,
	                        MHD_OPTION_SOCK_ADDR, (const struct sockaddr *)addr,
	                        MHD_OPTION_THREAD_POOL_SIZE, threads ? threads : 2,
	                        MHD_OPTION_CONNECTION_LIMIT, 4096u,
	                        MHD_OPTION_CONNECTION_TIMEOUT, 30u,
	                        MHD_OPTION_NOTIFY_COMPLETED, completed, ctx, MHD_OPTION_END);
}

json_t *ex_json_hash(shardmap_hash h)
{
	char buf[SHARDMAP_HASH_DECIMAL_MAX];
	shardmap_hash_format(h, buf);
	return json_string(buf);
}

static void stop_signals(sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGINT);
	sigaddset(set, SIGTERM);
}

void ex_block_signals(void)
{
	sigset_t set;
	stop_signals(&set);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
}

void ex_wait_for_signal(void)
{
	sigset_t set;
	stop_signals(&set);
	int sig;
	sigwait(&set, &sig);
}
