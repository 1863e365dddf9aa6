/*
 * error.c - error codes to text, and filling a shardmap_error. The table lives in
 * shardmap.h (SHARDMAP_ERRNO_MAP) so codes, names and messages cannot drift apart.
 */
#include <stdarg.h>
#include <stdio.h>

#include "delta.h"

const char *shardmap_library_version(void)
{
	return SHARDMAP_VERSION_STRING;
}

const char *shardmap_strerror(int err)
{
	switch (err) {
	case SHARDMAP_OK:
		return "success";
#define SHARDMAP_STRERROR_CASE_(name, value, msg)                                              \
	case SHARDMAP_##name:                                                                  \
		return msg;
		SHARDMAP_ERRNO_MAP(SHARDMAP_STRERROR_CASE_)
#undef SHARDMAP_STRERROR_CASE_
	}
	return "unknown error";
}

const char *shardmap_err_name(int err)
{
	switch (err) {
	case SHARDMAP_OK:
		return "SHARDMAP_OK";
#define SHARDMAP_ERRNAME_CASE_(name, value, msg)                                               \
	case SHARDMAP_##name:                                                                  \
		return "SHARDMAP_" #name;
		SHARDMAP_ERRNO_MAP(SHARDMAP_ERRNAME_CASE_)
#undef SHARDMAP_ERRNAME_CASE_
	}
	return "unknown";
}

int shardmap__error_set(shardmap_error *why, int code, size_t op_index, const char *fmt, ...)
{
	if (why == NULL)
		return code;
	why->code = code;
	why->op_index = op_index;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why->message, sizeof why->message, fmt, ap);
	va_end(ap);
	return code;
}
