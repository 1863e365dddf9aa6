/*
 * test_hashkey.c - 128-bit hash keys: decimal parse/format against unsigned __int128
 * arithmetic, every invalid decimal form with its reason, comparison, MD5 routing against a
 * fixture computed by coreutils md5sum (tests/data/md5_keys.txt), XXH3 against the xxhash
 * library called directly, and MD5 from many threads at once.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "hashkey.h"
#include "shardmap.h"

typedef unsigned __int128 u128;

static const char *const max_decimal = "340282366920938463463374607431768211455"; /* 2^128-1 */

static u128 to_u128(shardmap_hash h)
{
	return (u128)h.hi << 64 | h.lo;
}

static shardmap_hash from_u128(u128 v)
{
	return (shardmap_hash){.hi = (uint64_t)(v >> 64), .lo = (uint64_t)v};
}

/* The reference: digit by digit with __int128, most significant first. */
static void ref_format(u128 v, char *out)
{
	char tmp[64];
	size_t n = 0;
	do {
		tmp[n++] = (char)('0' + (int)(v % 10));
		v /= 10;
	} while (v != 0);
	for (size_t i = 0; i < n; i++)
		out[i] = tmp[n - 1 - i];
	out[n] = '\0';
}

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rng(void) /* splitmix64: deterministic across runs */
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
	return z ^ (z >> 31);
}

static void check_round_trip(u128 v, const char *expect)
{
	char buf[SHARDMAP_HASH_DECIMAL_MAX];
	int n = shardmap_hash_format(from_u128(v), buf);
	cr_assert_str_eq(buf, expect);
	cr_assert_eq(n, (int)strlen(expect));
	shardmap_hash back = {1, 1};
	cr_assert_eq(shardmap_hash_parse(expect, &back), SHARDMAP_OK, "%s", expect);
	cr_assert(to_u128(back) == v, "%s", expect);
	cr_assert_null(shardmap_hash_parse_error(expect));
}

Test(hashkey, round_trip_edges)
{
	check_round_trip(0, "0");
	check_round_trip(1, "1");
	check_round_trip(9, "9");
	check_round_trip(10, "10");
	check_round_trip(UINT64_MAX, "18446744073709551615");
	check_round_trip((u128)1 << 64, "18446744073709551616");
	check_round_trip(((u128)1 << 64) + 1, "18446744073709551617");
	check_round_trip((u128)10000000000000000000u, "10000000000000000000"); /* 10^19 limb */
	check_round_trip((u128)10000000000000000000u - 1, "9999999999999999999");
	check_round_trip(~(u128)0 - 1, "340282366920938463463374607431768211454");
	check_round_trip(~(u128)0, max_decimal);
	check_round_trip((u128)1 << 127, "170141183460469231731687303715884105728");
}

Test(hashkey, round_trip_random)
{
	for (int i = 0; i < 100000; i++) {
		/* vary the magnitude so every digit count 1..39 is covered */
		u128 v = (u128)rng() << 64 | rng();
		v >>= rng() % 128;
		char expect[64];
		ref_format(v, expect);
		check_round_trip(v, expect);
	}
}

Test(hashkey, parse_random_digit_strings)
{
	/* Random digit strings of every length 1..39, leading zeros included: the value must be
	 * the __int128 value, and exactly the 39-digit strings above 2^128-1 overflow. */
	for (int i = 0; i < 20000; i++) {
		char s[40];
		size_t len = 1 + (size_t)(rng() % 39);
		for (size_t k = 0; k < len; k++)
			s[k] = (char)('0' + rng() % 10);
		s[len] = '\0';
		int over = len == 39 && strcmp(s, max_decimal) > 0;
		shardmap_hash h = {7, 7};
		int rc = shardmap_hash_parse(s, &h);
		if (over) {
			cr_assert_eq(rc, SHARDMAP_EINVAL, "%s", s);
			cr_assert(h.hi == 7 && h.lo == 7);
			continue;
		}
		cr_assert_eq(rc, SHARDMAP_OK, "%s", s);
		u128 v = 0;
		for (size_t k = 0; k < len; k++)
			v = v * 10 + (u128)(s[k] - '0');
		cr_assert(to_u128(h) == v, "%s", s);
	}
}

Test(hashkey, leading_zeros)
{
	shardmap_hash h;
	cr_assert_eq(shardmap_hash_parse("007", &h), SHARDMAP_OK);
	cr_assert(h.hi == 0 && h.lo == 7);
	cr_assert_eq(shardmap_hash_parse("000000000000000000000000000000000000000", &h),
		     SHARDMAP_OK);
	cr_assert(h.hi == 0 && h.lo == 0);
	cr_assert_eq(shardmap_hash_parse("000000000000000000018446744073709551616", &h),
		     SHARDMAP_OK);
	cr_assert(h.hi == 1 && h.lo == 0);
}

/* Each invalid form: EINVAL, *out untouched, and the reason text. */
static void check_invalid(const char *s, const char *reason)
{
	shardmap_hash h = {0x1111, 0x2222};
	cr_assert_eq(shardmap_hash_parse(s, &h), SHARDMAP_EINVAL, "%s", s ? s : "(null)");
	cr_assert(h.hi == 0x1111 && h.lo == 0x2222, "out changed for %s", s ? s : "(null)");
	const char *why = shardmap_hash_parse_error(s);
	cr_assert_not_null(why);
	cr_assert_str_eq(why, reason, "input '%s'", s ? s : "(null)");
}

Test(hashkey, invalid_forms)
{
	check_invalid(NULL, "NULL string");
	check_invalid("", "empty string");
	check_invalid("abc", "not a digit at offset 0");
	check_invalid("12a", "not a digit at offset 2");
	check_invalid("1.5", "not a digit at offset 1");
	check_invalid("0x10", "not a digit at offset 1");
	check_invalid("1e9", "not a digit at offset 1");
	check_invalid("12345678901234567890123456789012345678x", "not a digit at offset 38");
	check_invalid("\xc3\xa9", "not a digit at offset 0");
	check_invalid("+1", "sign (+ or -) not allowed");
	check_invalid("-1", "sign (+ or -) not allowed");
	check_invalid("-0", "sign (+ or -) not allowed");
	check_invalid("+", "sign (+ or -) not allowed");
	check_invalid("1-2", "not a digit at offset 1");
	check_invalid(" 1", "leading whitespace");
	check_invalid("\t1", "leading whitespace");
	check_invalid(" ", "leading whitespace");
	check_invalid("1 ", "trailing whitespace");
	check_invalid("1\n", "trailing whitespace");
	check_invalid("1 \r\n", "trailing whitespace");
	check_invalid("1 2", "whitespace inside the digits");
	check_invalid("1\t2 ", "whitespace inside the digits");
	check_invalid("0000000000000000000000000000000000000000", "more than 39 characters");
	check_invalid("3402823669209384634633746074317682114550", "more than 39 characters");
	check_invalid("1234567890123456789012345678901234567890123", "more than 39 characters");
	check_invalid("340282366920938463463374607431768211455 ", "trailing whitespace");
	check_invalid("340282366920938463463374607431768211455\n\n", "trailing whitespace");
	check_invalid("000000000000000000000000000000000000000x", "more than 39 characters");
	check_invalid("000000000000000000000000000000000000000 1", "more than 39 characters");
	const char *past = "value past 2^128-1 (340282366920938463463374607431768211455)";
	check_invalid("340282366920938463463374607431768211456", past);
	check_invalid("340282366920938463463374607431768211460", past);
	check_invalid("999999999999999999999999999999999999999", past);
	check_invalid("400000000000000000000000000000000000000", past);
	/* a NULL out is refused even for a valid string */
	cr_assert_eq(shardmap_hash_parse("1", NULL), SHARDMAP_EINVAL);
}

Test(hashkey, cmp)
{
	shardmap_hash a = {0, UINT64_MAX}, b = {1, 0}, c = {1, 1}, d = {UINT64_MAX, 0};
	cr_assert_lt(shardmap_hash_cmp(a, b), 0); /* hi decides over lo */
	cr_assert_gt(shardmap_hash_cmp(b, a), 0);
	cr_assert_lt(shardmap_hash_cmp(b, c), 0);
	cr_assert_gt(shardmap_hash_cmp(c, b), 0);
	cr_assert_eq(shardmap_hash_cmp(c, c), 0);
	cr_assert_lt(shardmap_hash_cmp(c, d), 0);
	for (int i = 0; i < 10000; i++) {
		u128 x = (u128)rng() << 64 | rng(), y = (u128)rng() << 64 | rng();
		if (i % 3 == 0) /* equal hi words, so lo decides */
			y = (x & ~(u128)UINT64_MAX) | (uint64_t)y;
		int expect = x < y ? -1 : x > y ? 1 : 0;
		int got = shardmap_hash_cmp(from_u128(x), from_u128(y));
		cr_assert_eq((got > 0) - (got < 0), expect);
	}
}

/* ---------------------------------------------------------------- MD5 fixture */

struct fixture_key {
	char decimal[48];
	unsigned char *bytes;
	size_t len;
};

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Load tests/data/md5_keys.txt from SHARDMAP_SOURCE_ROOT. */
static struct fixture_key *load_fixture(size_t *n_out)
{
	const char *root = getenv("SHARDMAP_SOURCE_ROOT");
	char path[4096];
	snprintf(path, sizeof path, "%s/tests/data/md5_keys.txt", root ? root : ".");
	FILE *f = fopen(path, "r");
	cr_assert_not_null(f, "cannot open %s (set SHARDMAP_SOURCE_ROOT)", path);
	struct fixture_key *keys = NULL;
	size_t n = 0, cap = 0;
	char *line = NULL;
	size_t line_cap = 0;
	ssize_t got;
	while ((got = getline(&line, &line_cap, f)) > 0) {
		if (line[0] == '#')
			continue;
		if (line[got - 1] == '\n')
			line[--got] = '\0';
		if (n == cap) {
			cap = cap ? 2 * cap : 64;
			keys = realloc(keys, cap * sizeof *keys);
			cr_assert_not_null(keys);
		}
		struct fixture_key *k = &keys[n++];
		char *sp = strchr(line, ' ');
		const char *hex = sp ? sp + 1 : "";
		if (sp)
			*sp = '\0';
		cr_assert_lt(strlen(line), sizeof k->decimal);
		strcpy(k->decimal, line);
		k->len = strlen(hex) / 2;
		k->bytes = malloc(k->len + 1);
		cr_assert_not_null(k->bytes);
		for (size_t i = 0; i < k->len; i++) {
			int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);
			cr_assert(hi >= 0 && lo >= 0, "bad hex in fixture: %s", hex);
			k->bytes[i] = (unsigned char)(hi << 4 | lo);
		}
	}
	free(line);
	fclose(f);
	*n_out = n;
	return keys;
}

static void free_fixture(struct fixture_key *keys, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(keys[i].bytes);
	free(keys);
}

Test(hashkey, md5_matches_md5sum_fixture)
{
	size_t n;
	struct fixture_key *keys = load_fixture(&n);
	cr_assert_geq(n, 400, "fixture has only %zu keys", n);
	size_t empty = 0, binary = 0, utf8 = 0, longest = 0;
	for (size_t i = 0; i < n; i++) {
		shardmap_hash h = shardmap_hash_key(SHARDMAP_HASH_MD5, keys[i].bytes, keys[i].len);
		char got[SHARDMAP_HASH_DECIMAL_MAX];
		shardmap_hash_format(h, got);
		cr_assert_str_eq(got, keys[i].decimal, "key %zu (%zu bytes)", i, keys[i].len);
		shardmap_hash parsed;
		cr_assert_eq(shardmap_hash_parse(keys[i].decimal, &parsed), SHARDMAP_OK);
		cr_assert_eq(shardmap_hash_cmp(parsed, h), 0);
		shardmap_hash checked;
		cr_assert_eq(
		    shardmap__hash_key(SHARDMAP_HASH_MD5, keys[i].bytes, keys[i].len, &checked),
		    SHARDMAP_OK);
		cr_assert_eq(shardmap_hash_cmp(checked, h), 0);
		empty += keys[i].len == 0;
		binary += memchr(keys[i].bytes, 0, keys[i].len) != NULL;
		utf8 += keys[i].len > 1 && keys[i].bytes[0] >= 0xc2 && keys[i].bytes[0] < 0xf5;
		longest = keys[i].len > longest ? keys[i].len : longest;
	}
	/* the fixture really covers what it claims */
	cr_assert_eq(empty, 1);
	cr_assert_geq(binary, 3);
	cr_assert_geq(utf8, 3);
	cr_assert_geq(longest, 4096);
	free_fixture(keys, n);
}

Test(hashkey, md5_empty_key_accepts_null)
{
	char got[SHARDMAP_HASH_DECIMAL_MAX];
	shardmap_hash_format(shardmap_hash_key(SHARDMAP_HASH_MD5, NULL, 0), got);
	/* d41d8cd98f00b204e9800998ecf8427e */
	cr_assert_str_eq(got, "281949768489412648962353822266799178366");
}

struct md5_thread {
	const struct fixture_key *keys;
	size_t n;
	size_t mismatches;
};

static void *md5_worker(void *arg)
{
	struct md5_thread *t = arg;
	for (int round = 0; round < 20; round++) {
		for (size_t i = 0; i < t->n; i++) {
			shardmap_hash h =
			    shardmap_hash_key(SHARDMAP_HASH_MD5, t->keys[i].bytes, t->keys[i].len);
			char got[SHARDMAP_HASH_DECIMAL_MAX];
			shardmap_hash_format(h, got);
			t->mismatches += strcmp(got, t->keys[i].decimal) != 0;
		}
	}
	return NULL;
}

Test(hashkey, md5_from_many_threads)
{
	/* Each thread has its own digest context: concurrent hashing must not mix states, and
	 * threads that exit free theirs (ASan's leak check sees the rest). */
	size_t n;
	struct fixture_key *keys = load_fixture(&n);
	enum { THREADS = 8 };
	pthread_t tid[THREADS];
	struct md5_thread work[THREADS];
	for (int i = 0; i < THREADS; i++) {
		work[i] = (struct md5_thread){.keys = keys, .n = n};
		cr_assert_eq(pthread_create(&tid[i], NULL, md5_worker, &work[i]), 0);
	}
	for (int i = 0; i < THREADS; i++) {
		cr_assert_eq(pthread_join(tid[i], NULL), 0);
		cr_assert_eq(work[i].mismatches, 0, "thread %d: %zu wrong hashes", i,
			     work[i].mismatches);
	}
	free_fixture(keys, n);
}

/* ---------------------------------------------------------------- XXH3 */

Test(hashkey, xxh3_matches_library)
{
	unsigned char buf[1024];
	for (size_t i = 0; i < sizeof buf; i++)
		buf[i] = (unsigned char)rng();
	/* every length up to 300 crosses all of XXH3's size classes; then some long ones */
	for (size_t len = 0; len <= sizeof buf; len += len < 300 ? 1 : 97) {
		XXH128_hash_t want = XXH3_128bits(buf, len);
		shardmap_hash got = shardmap_hash_key(SHARDMAP_HASH_XXH3, buf, len);
		cr_assert(got.hi == want.high64 && got.lo == want.low64, "len %zu", len);
		shardmap_hash checked;
		cr_assert_eq(shardmap__hash_key(SHARDMAP_HASH_XXH3, buf, len, &checked), 0);
		cr_assert_eq(shardmap_hash_cmp(checked, got), 0);
	}
}

Test(hashkey, xxh3_known_values)
{
	/* XXH3-128 of the empty input, seed 0 (xxhash's own sanity vector) */
	shardmap_hash h = shardmap_hash_key(SHARDMAP_HASH_XXH3, NULL, 0);
	cr_assert_eq(h.hi, 0x99aa06d3014798d8u);
	cr_assert_eq(h.lo, 0x6001c324468d497fu);
	/* value = high64 << 64 | low64, in decimal as Kinesis would print it */
	XXH128_hash_t want = XXH3_128bits("partitionKey", 12);
	char expect[64], got[SHARDMAP_HASH_DECIMAL_MAX];
	ref_format((u128)want.high64 << 64 | want.low64, expect);
	shardmap_hash_format(shardmap_hash_key(SHARDMAP_HASH_XXH3, "partitionKey", 12), got);
	cr_assert_str_eq(got, expect);
	/* an unknown hash function is XXH3 */
	shardmap_hash u = shardmap_hash_key(42, "partitionKey", 12);
	cr_assert(u.hi == want.high64 && u.lo == want.low64);
}
