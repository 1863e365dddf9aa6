/*
 * hashkey.c - 128-bit hash keys: decimal parse and format, comparison, and the two partition
 * key hashes (XXH3-128, the default, and Kinesis-compatible MD5).
 *
 * For everyone who turns a partition key or a Kinesis decimal hash key (StartingHashKey,
 * ExplicitHashKey ...) into a shardmap_hash: the route path, plans, JSON import/export and
 * the CLI. unsigned __int128 (a GCC/Clang extension) carries the arithmetic; the public type
 * stays two uint64_t.
 *
 * MD5 goes through OpenSSL's low-level MD5_Init/MD5_Update/MD5_Final on a stack context:
 * nothing allocated, nothing shared, no failure. They are deprecated since OpenSSL 3.0 in
 * favour of EVP, but still part of every 3.x, and EVP costs a Kinesis front-end dearly: its
 * EVP_DigestInit_ex2 frees and re-creates the provider's MD5 state on every call
 * (openssl/openssl#16947, #25858) and runs through the provider dispatch, 305 ns per 21-byte
 * key hot against 139 ns here, and 16 us against 3 us on a thread that comes back to it cold
 * (a front-end thread between requests; measured on this machine, 2 ms apart).
 */
#include <stdint.h>
#include <string.h>

/* The MD5_* functions: see above for why not EVP. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/md5.h>
/* Inlined: XXH3 is most of a short key's route, and a call into libxxhash.so (through the
 * PLT, with its dispatch) cost a fifth of a whole lookup at 1,024 shards. */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "hashkey.h"

typedef unsigned __int128 u128;

static u128 to_u128(shardmap_hash h)
{
	return (u128)h.hi << 64 | h.lo;
}

static shardmap_hash from_u128(u128 v)
{
	return (shardmap_hash){.hi = (uint64_t)(v >> 64), .lo = (uint64_t)v};
}

int shardmap_hash_cmp(shardmap_hash a, shardmap_hash b)
{
	if (a.hi != b.hi)
		return a.hi < b.hi ? -1 : 1;
	if (a.lo != b.lo)
		return a.lo < b.lo ? -1 : 1;
	return 0;
}

/* ---------------------------------------------------------------- decimal */

#define DIGITS_MAX (SHARDMAP_HASH_DECIMAL_MAX - 1) /* 39: the digits of 2^128-1 */

/* "not a digit at offset N" for every offset a parse can stop at (0 .. DIGITS_MAX-1). */
/* clang-format off */
#define NOT_DIGIT_(n) "not a digit at offset " #n
#define NOT_DIGIT_TEN_(t) \
	NOT_DIGIT_(t##0), NOT_DIGIT_(t##1), NOT_DIGIT_(t##2), NOT_DIGIT_(t##3), NOT_DIGIT_(t##4), \
	NOT_DIGIT_(t##5), NOT_DIGIT_(t##6), NOT_DIGIT_(t##7), NOT_DIGIT_(t##8), NOT_DIGIT_(t##9)
static const char *const not_digit[DIGITS_MAX] = {
	NOT_DIGIT_(0), NOT_DIGIT_(1), NOT_DIGIT_(2), NOT_DIGIT_(3), NOT_DIGIT_(4),
	NOT_DIGIT_(5), NOT_DIGIT_(6), NOT_DIGIT_(7), NOT_DIGIT_(8), NOT_DIGIT_(9),
	NOT_DIGIT_TEN_(1), NOT_DIGIT_TEN_(2),
	NOT_DIGIT_(30), NOT_DIGIT_(31), NOT_DIGIT_(32), NOT_DIGIT_(33), NOT_DIGIT_(34),
	NOT_DIGIT_(35), NOT_DIGIT_(36), NOT_DIGIT_(37), NOT_DIGIT_(38),
};
/* clang-format on */

static int is_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

static int only_space(const unsigned char *p)
{
	while (is_space(*p))
		p++;
	return *p == '\0';
}

/* Parse s into *out. Returns NULL, or the reason s is not a hash key (static text). The
 * first problem from the left decides, except that from the 40th character on only trailing
 * whitespace is reported as such: anything else there is "more than 39 characters". */
static const char *parse(const char *s, u128 *out)
{
	if (s == NULL)
		return "NULL string";
	const unsigned char *p = (const unsigned char *)s;
	if (*p == '\0')
		return "empty string";
	u128 v = 0;
	for (size_t i = 0; p[i] != '\0'; i++) {
		unsigned char c = p[i];
		if (i == DIGITS_MAX && !only_space(p + i))
			return "more than 39 characters";
		if (is_space(c)) {
			if (i == 0)
				return "leading whitespace";
			return only_space(p + i) ? "trailing whitespace"
						 : "whitespace inside the digits";
		}
		if (i == 0 && (c == '+' || c == '-'))
			return "sign (+ or -) not allowed";
		if (c < '0' || c > '9')
			return not_digit[i];
		unsigned d = c - '0';
		if (v > (~(u128)0 - d) / 10)
			return "value past 2^128-1 (340282366920938463463374607431768211455)";
		v = v * 10 + d;
	}
	*out = v;
	return NULL;
}

int shardmap_hash_parse(const char *decimal, shardmap_hash *out)
{
	u128 v = 0; /* set by a successful parse; initialised for -O3 flow analysis */
	if (out == NULL || parse(decimal, &v) != NULL)
		return SHARDMAP_EINVAL;
	*out = from_u128(v);
	return SHARDMAP_OK;
}

const char *shardmap_hash_parse_error(const char *decimal)
{
	u128 v = 0;
	return parse(decimal, &v);
}

/* Write the 19 digits of v < 10^19 (with leading zeros) to out. */
static void put19(char *out, uint64_t v)
{
	for (int i = 18; i >= 0; i--) {
		out[i] = (char)('0' + v % 10);
		v /= 10;
	}
}

int shardmap_hash_format(shardmap_hash h, char out[SHARDMAP_HASH_DECIMAL_MAX])
{
	/* Three base-10^19 limbs: two 128-bit divisions instead of 38. */
	const uint64_t base = 10000000000000000000u;
	u128 v = to_u128(h);
	char buf[3 * 19];
	put19(buf + 38, (uint64_t)(v % base));
	v /= base;
	put19(buf + 19, (uint64_t)(v % base));
	put19(buf, (uint64_t)(v / base));
	size_t skip = 0;
	while (skip < sizeof buf - 1 && buf[skip] == '0')
		skip++;
	size_t n = sizeof buf - skip;
	memcpy(out, buf + skip, n);
	out[n] = '\0';
	return (int)n;
}

/* ---------------------------------------------------------------- partition key hashes */

static uint64_t load_be64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

void shardmap__hash_md5(const void *key, size_t len, shardmap_hash *out)
{
	unsigned char digest[MD5_DIGEST_LENGTH];
	MD5_CTX ctx;
	MD5_Init(&ctx);
	MD5_Update(&ctx, key, len);
	MD5_Final(digest, &ctx);
	out->hi = load_be64(digest);
	out->lo = load_be64(digest + 8);
}

int shardmap__hash_key(int hash_fn, const void *key, size_t len, shardmap_hash *out)
{
	return shardmap__hash_key_inline(hash_fn, key, len, out);
}

shardmap_hash shardmap_hash_key(int hash_fn, const void *key, size_t len)
{
	shardmap_hash h = {0, 0};
	if (shardmap__hash_key(hash_fn, key, len, &h) != 0)
		return (shardmap_hash){0, 0};
	return h;
}
