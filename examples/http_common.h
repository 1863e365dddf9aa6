/*
 * http_common.h - what the example front-end and cell share: listening addresses, request
 * bodies, JSON replies and one shardmap reader per HTTP worker thread.
 */
#ifndef SHARDMAP_EXAMPLE_HTTP_COMMON_H
#define SHARDMAP_EXAMPLE_HTTP_COMMON_H

#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <shardmap.h>
#include <stddef.h>

/* Parse "host:port" (IPv4 literal or "localhost") into *out. Returns 0 or -1. */
int ex_parse_hostport(const char *s, struct sockaddr_in *out);

/* A request body gathered across MHD's upload callbacks. */
struct ex_body {
	char *data;
	size_t len, cap, limit;
	int too_large;
};
/* Feed one upload chunk. Returns 0, or -1 when out of memory. */
int ex_body_feed(struct ex_body *b, const char *chunk, size_t n);
void ex_body_free(struct ex_body *b);

/* Reply with a JSON object (which is consumed) / a plain body. Return MHD's result. */
enum MHD_Result ex_reply_json(struct MHD_Connection *c, unsigned status, json_t *obj);
enum MHD_Result ex_reply_error(struct MHD_Connection *c, unsigned status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
enum MHD_Result ex_reply_text(struct MHD_Connection *c, unsigned status, const char *text,
                              const char *content_type);

/* The calling thread's reader of m, created on first use and closed when the thread exits.
 * One map per process. Returns NULL when out of memory. */
shardmap_reader *ex_thread_reader(shardmap *m);

/* A started HTTP daemon on addr with a fixed pool of threads. */
struct MHD_Daemon *ex_http_start(const struct sockaddr_in *addr, unsigned threads,
                                 MHD_AccessHandlerCallback handler, void *ctx,
                                 MHD_RequestCompletedCallback completed);

/* The value of hash key h in decimal as a new JSON string. */
json_t *ex_json_hash(shardmap_hash h);

/* Block SIGINT and SIGTERM in the calling thread and every thread it starts afterwards (call
 * first in main); ex_wait_for_signal then waits for one of them. */
void ex_block_signals(void);
void ex_wait_for_signal(void);

#endif
