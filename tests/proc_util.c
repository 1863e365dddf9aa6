/*
 * proc_util.c - subprocess, HTTP and waiting helpers for integration tests (proc_util.h).
 */
#include "proc_util.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

int tp_free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t len = sizeof a;
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	close(fd);
	return ntohs(a.sin_port);
}

const char *tp_build_path(const char *rel, char *buf, size_t cap)
{
	const char *root = getenv("SHARDMAP_BUILD_ROOT");
	snprintf(buf, cap, "%s/%s", root ? root : ".", rel);
	return buf;
}

pid_t tp_spawn(char *const argv[], const char *log_path)
{
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	if (log_path)
		posix_spawn_file_actions_addopen(&fa, 2, log_path, O_WRONLY | O_CREAT | O_APPEND,
		                                 0644);
	pid_t pid;
	int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	return rc == 0 ? pid : -1;
}

static int reaped(pid_t pid, int *status)
{
	return waitpid(pid, status, WNOHANG) == pid;
}

int tp_stop(pid_t pid)
{
	int status = 0;
	if (pid <= 0)
		return -1;
	kill(pid, SIGTERM);
	struct timespec tick = {0, 10 * 1000 * 1000};
	for (int i = 0; i < 1000; i++) {
		if (reaped(pid, &status))
			return status;
		nanosleep(&tick, NULL);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	return status;
}

static size_t collect(char *p, size_t size, size_t n, void *ctx)
{
	struct tp_http *res = ctx;
	char *b = realloc(res->body, res->len + size * n + 1);
	if (b == NULL)
		return 0;
	memcpy(b + res->len, p, size * n);
	res->len += size * n;
	b[res->len] = '\0';
	res->body = b;
	return size * n;
}

int tp_http(const char *method, const char *url, const char *body, const char *extra_header,
            struct tp_http *res)
{
	memset(res, 0, sizeof *res);
	res->body = calloc(1, 1);
	CURL *c = curl_easy_init();
	if (c == NULL)
		return -1;
	struct curl_slist *hdrs = extra_header ? curl_slist_append(NULL, extra_header) : NULL;
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	if (body) {
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
	}
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, res);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 20000L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	CURLcode cc = curl_easy_perform(c);
	if (cc == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &res->status);
	curl_slist_free_all(hdrs);
	curl_easy_cleanup(c);
	return cc == CURLE_OK ? 0 : -1;
}

void tp_http_free(struct tp_http *res)
{
	free(res->body);
	memset(res, 0, sizeof *res);
}

int tp_wait_until(int (*cond)(void *ctx), void *ctx, int timeout_ms)
{
	struct timespec start, now, tick = {0, 5 * 1000 * 1000};
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (;;) {
		int v = cond(ctx);
		if (v)
			return v;
		clock_gettime(CLOCK_MONOTONIC, &now);
		long ms = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
		if (ms > timeout_ms)
			return 0;
		nanosleep(&tick, NULL);
	}
}

char *tp_tempdir(char *buf, size_t cap)
{
	snprintf(buf, cap, "/tmp/shardmap-test.XXXXXX");
	return mkdtemp(buf);
}

void tp_rmtree(const char *dir)
{
	char cmd[4200];
	if (dir && strncmp(dir, "/tmp/shardmap-test.", 19) == 0) {
		snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", dir);
	}
}
