/*
 * proc_util.h - helpers for tests that run the project's programs as subprocesses: free
 * ports, spawning and stopping, HTTP requests (libcurl), waiting on a condition with a
 * deadline (never a sleep as synchronisation: the wait ends as soon as the condition holds).
 */
#ifndef SHARDMAP_TEST_PROC_UTIL_H
#define SHARDMAP_TEST_PROC_UTIL_H

#include <stddef.h>
#include <sys/types.h>

/* A TCP port on 127.0.0.1 that was free a moment ago. */
int tp_free_port(void);
/* Path of a built program, e.g. tp_build_path("examples/cell"). Static buffer per call. */
const char *tp_build_path(const char *rel, char *buf, size_t cap);
/* Start argv[0] with argv; stderr to log_path (NULL: inherit). Returns the pid or -1. */
pid_t tp_spawn(char *const argv[], const char *log_path);
/* SIGTERM, then wait for it to exit (SIGKILL after 10 s). Returns its exit status. */
int tp_stop(pid_t pid);

/* An HTTP answer. */
struct tp_http {
	long status;  /* 0 when the request failed */
	char *body;   /* NUL-terminated, malloc'ed */
	size_t len;
};
/* GET or POST (body non-NULL) url; extra_header may be NULL. Caller frees res->body. */
int tp_http(const char *method, const char *url, const char *body, const char *extra_header,
            struct tp_http *res);
void tp_http_free(struct tp_http *res);

/* Call cond(ctx) until it returns nonzero or timeout_ms passes. Returns its last value. */
int tp_wait_until(int (*cond)(void *ctx), void *ctx, int timeout_ms);

/* A new empty temporary directory (mkdtemp under /tmp). Static buffer per call. */
char *tp_tempdir(char *buf, size_t cap);
void tp_rmtree(const char *dir);

#endif
