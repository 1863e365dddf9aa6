/*
 * fuzz_hash_parse.c - libFuzzer target for the decimal hash keys of lib/hashkey.c
 * (shardmap_hash_parse, shardmap_hash_parse_error, shardmap_hash_format, shardmap_hash_cmp):
 * the parser every Kinesis document, JSON import, etcd value and CLI argument goes through.
 *
 * Each input is checked three ways against a reference written differently from the
 * library (unsigned __int128 arithmetic, with range checked by comparing digit strings
 * instead of dividing):
 *   - as text (up to its first NUL byte): parse accepts exactly the strings the reference
 *     accepts (1 to 39 ASCII digits, at most 2^128-1), gives the reference's value, and then
 *     formats back to the same digits without leading zeros; a refused string leaves *out
 *     unchanged and has a reason, and "not a digit at offset N" names the right offset;
 *   - its first 16 bytes as a value: format writes the reference's digits and parse reads
 *     them back to the same value;
 *   - its first 32 bytes as two values: shardmap_hash_cmp orders them as __int128 does.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "shardmap.h"

typedef unsigned __int128 u128;

#define MAX_DIGITS 39
static const char max_text[] = "340282366920938463463374607431768211455"; /* 2^128-1 */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static u128 to_u128(shardmap_hash h)
{
	return (u128)h.hi << 64 | h.lo;
}

/* Reference parse: 1 if s is a hash key (value in *out), 0 if not. */
static int ref_parse(const char *s, u128 *out)
{
	size_t n = strlen(s);
	if (n == 0 || n > MAX_DIGITS || strspn(s, "0123456789") != n)
		return 0;
	const char *sig = s + strspn(s, "0"); /* the significant digits */
	size_t sig_n = strlen(sig);
	if (sig_n == MAX_DIGITS && strcmp(sig, max_text) > 0)
		return 0;
	u128 v = 0;
	for (size_t i = 0; i < sig_n; i++)
		v = v * 10 + (u128)(sig[i] - '0');
	*out = v;
	return 1;
}

/* Reference format: the digits of v without leading zeros ("0" for zero). */
static void ref_format(u128 v, char out[SHARDMAP_HASH_DECIMAL_MAX])
{
	char rev[SHARDMAP_HASH_DECIMAL_MAX];
	size_t n = 0;
	do {
		rev[n++] = (char)('0' + (unsigned)(v % 10));
		v /= 10;
	} while (v != 0);
	for (size_t i = 0; i < n; i++)
		out[i] = rev[n - 1 - i];
	out[n] = '\0';
}

static shardmap_hash load_hash(const uint8_t *data, size_t size)
{
	uint8_t b[16] = {0};
	memcpy(b, data, size < 16 ? size : 16);
	shardmap_hash h = {0, 0};
	for (int i = 0; i < 8; i++) {
		h.hi = h.hi << 8 | b[i];
		h.lo = h.lo << 8 | b[8 + i];
	}
	return h;
}

static void check_text(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);
	if (s == NULL)
		return;
	memcpy(s, data, size);
	s[size] = '\0';

	u128 want = 0;
	int ok = ref_parse(s, &want);
	const shardmap_hash untouched = {0x0123456789abcdefull, 0xfedcba9876543210ull};
	shardmap_hash h = untouched;
	int rc = shardmap_hash_parse(s, &h);
	const char *reason = shardmap_hash_parse_error(s);
	if (ok) {
		if (rc != 0 || reason != NULL || to_u128(h) != want)
			abort();
		char got[SHARDMAP_HASH_DECIMAL_MAX], ref[SHARDMAP_HASH_DECIMAL_MAX];
		int n = shardmap_hash_format(h, got);
		ref_format(want, ref);
		if (n != (int)strlen(got) || strcmp(got, ref) != 0)
			abort();
	} else {
		if (rc != SHARDMAP_EINVAL || reason == NULL || reason[0] == '\0' ||
		    memcmp(&h, &untouched, sizeof h) != 0)
			abort();
		static const char not_digit[] = "not a digit at offset ";
		if (strncmp(reason, not_digit, sizeof not_digit - 1) == 0) {
			size_t at = strtoul(reason + sizeof not_digit - 1, NULL, 10);
			if (at >= strlen(s) || (s[at] >= '0' && s[at] <= '9') ||
			    strspn(s, "0123456789") != at)
				abort();
		}
	}
	free(s);
}

static void check_value(const uint8_t *data, size_t size)
{
	shardmap_hash h = load_hash(data, size);
	char got[SHARDMAP_HASH_DECIMAL_MAX], ref[SHARDMAP_HASH_DECIMAL_MAX];
	int n = shardmap_hash_format(h, got);
	ref_format(to_u128(h), ref);
	if (n < 1 || n > MAX_DIGITS || n != (int)strlen(got) || strcmp(got, ref) != 0)
		abort();
	shardmap_hash back;
	if (shardmap_hash_parse(got, &back) != 0 || back.hi != h.hi || back.lo != h.lo)
		abort();
}

static void check_cmp(const uint8_t *data, size_t size)
{
	shardmap_hash a = load_hash(data, size);
	shardmap_hash b = size > 16 ? load_hash(data + 16, size - 16) : a;
	u128 x = to_u128(a), y = to_u128(b);
	int want = x < y ? -1 : x > y;
	int got = shardmap_hash_cmp(a, b);
	if ((got < 0 ? -1 : got > 0) != want)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	check_text(data, size);
	check_value(data, size);
	check_cmp(data, size);
	return 0;
}
