/*
 * test_etcd_b64.c - the etcd gateway's base64 (keys and values travel base64-encoded):
 * round trips, and strict refusal of anything that is not canonical base64.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "etcd_json.h"

Test(etcd_b64, round_trips)
{
	const char *samples[] = {"", "a", "ab", "abc", "abcd", "shards/orders/shardId-000000000001",
	                         "\xff\xfe\x00"};
	for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++) {
		size_t n = strlen(samples[i]);
		char *enc = shardmap__b64_encode(samples[i], n);
		cr_assert_not_null(enc);
		char *dec;
		size_t len;
		cr_assert_eq(shardmap__b64_decode(enc, &dec, &len), 0, "%s", enc);
		cr_assert_eq(len, n);
		cr_assert_eq(memcmp(dec, samples[i], n), 0);
		free(dec);
		free(enc);
	}
}

Test(etcd_b64, refuses_what_is_not_base64)
{
	const char *bad[] = {"====", "Q===", "QQ=A", "  QQ==  ", "QQ", "QQ=", "Q Q=", "QQ\n=",
	                     "QUJD!A==", "QU=D"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		char *dec = NULL;
		size_t len;
		cr_expect_eq(shardmap__b64_decode(bad[i], &dec, &len), SHARDMAP_ECORRUPT, "'%s'",
		             bad[i]);
		cr_expect_null(dec);
	}
}
