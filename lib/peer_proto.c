/*
 * peer_proto.c - encoding and decoding of peer protocol frames (layout in peer_proto.h) and
 * their HMAC-SHA256 tags, for peers.c and for tests that play a hostile peer.
 *
 * Parsing treats the bytes as hostile: a header is judged as soon as the bytes that decide
 * it are there (garbage is refused at its first two bytes rather than waited on), a length
 * is checked against the cap before anything is buffered for it, and payload decoders
 * insist on exact lengths. Tags go through OpenSSL's EVP_MAC (HMAC, SHA256): the key is set
 * once on a template context, each tag is computed on a copy of it, and tags are compared
 * with CRYPTO_memcmp (constant time).
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "peer_proto.h"

static const uint8_t frame_magic[2] = {'S', 'P'};
static const uint8_t zero_nonce[SHARDMAP__NONCE];

const char *shardmap__refuse_name(unsigned reason)
{
	static const char *const names[SHARDMAP__REFUSE_COUNT] = {
	    [SHARDMAP__REFUSE_GARBAGE] = "garbage",
	    [SHARDMAP__REFUSE_VERSION] = "version",
	    [SHARDMAP__REFUSE_OVERSIZED] = "oversized",
	    [SHARDMAP__REFUSE_TRUNCATED] = "truncated",
	    [SHARDMAP__REFUSE_MISSING_TAG] = "missing_tag",
	    [SHARDMAP__REFUSE_BAD_TAG] = "bad_tag",
	    [SHARDMAP__REFUSE_SEQUENCE] = "sequence",
	    [SHARDMAP__REFUSE_UNEXPECTED] = "unexpected",
	    [SHARDMAP__REFUSE_MALFORMED] = "malformed",
	    [SHARDMAP__REFUSE_BAD_DELTA] = "bad_delta",
	};
	return reason < SHARDMAP__REFUSE_COUNT ? names[reason] : "unknown";
}

/* ---------------------------------------------------------------- little-endian */

static void put_le(uint8_t *p, uint64_t v, unsigned bytes)
{
	for (unsigned i = 0; i < bytes; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, unsigned bytes)
{
	uint64_t v = 0;
	for (unsigned i = 0; i < bytes; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

/* ---------------------------------------------------------------- tags */

struct shardmap__mac {
	EVP_MAC *mac;
	EVP_MAC_CTX *keyed; /* initialised with the key; only ever copied */
};

int shardmap__mac_new(const void *key, size_t len, struct shardmap__mac **out)
{
	if (key == NULL || len == 0 || out == NULL)
		return SHARDMAP_EINVAL;
	struct shardmap__mac *m = calloc(1, sizeof *m);
	if (m == NULL)
		return SHARDMAP_ENOMEM;
	char digest[] = "SHA256";
	OSSL_PARAM params[] = {
	    OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
	    OSSL_PARAM_construct_end(),
	};
	m->mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	m->keyed = m->mac ? EVP_MAC_CTX_new(m->mac) : NULL;
	if (m->keyed == NULL || !EVP_MAC_init(m->keyed, key, len, params)) {
		shardmap__mac_free(m);
		return SHARDMAP_ENOMEM;
	}
	*out = m;
	return SHARDMAP_OK;
}

void shardmap__mac_free(struct shardmap__mac *m)
{
	if (m == NULL)
		return;
	EVP_MAC_CTX_free(m->keyed);
	EVP_MAC_free(m->mac);
	free(m);
}

/* tag = HMAC(key, nonce || header || payload); frame points at the header. */
static int compute_tag(const struct shardmap__mac *m, const uint8_t *nonce, const uint8_t *frame,
		       size_t header_and_payload, uint8_t tag[SHARDMAP__FRAME_TAG])
{
	EVP_MAC_CTX *c = EVP_MAC_CTX_dup(m->keyed);
	size_t n = 0;
	int ok = c != NULL && EVP_MAC_update(c, nonce ? nonce : zero_nonce, SHARDMAP__NONCE) &&
		 EVP_MAC_update(c, frame, header_and_payload) &&
		 EVP_MAC_final(c, tag, &n, SHARDMAP__FRAME_TAG) && n == SHARDMAP__FRAME_TAG;
	EVP_MAC_CTX_free(c);
	return ok ? SHARDMAP_OK : SHARDMAP_ENOMEM;
}

/* ---------------------------------------------------------------- frames */

int shardmap__frame_build(const struct shardmap__mac *mac, const uint8_t *nonce, uint8_t type,
			  uint64_t seq, const void *payload, size_t len, uint8_t **out,
			  size_t *out_len)
{
	if (len > UINT32_MAX)
		return SHARDMAP_EINVAL;
	size_t total = SHARDMAP__FRAME_HEADER + len + (mac ? SHARDMAP__FRAME_TAG : 0);
	uint8_t *f = malloc(total);
	if (f == NULL)
		return SHARDMAP_ENOMEM;
	memcpy(f, frame_magic, 2);
	f[2] = SHARDMAP__PROTO_VERSION;
	f[3] = type;
	f[4] = mac ? SHARDMAP__FRAME_TAGGED : 0;
	memset(f + 5, 0, 3);
	put_le(f + 8, len, 4);
	put_le(f + 12, seq, 8);
	if (len)
		memcpy(f + SHARDMAP__FRAME_HEADER, payload, len);
	if (mac && compute_tag(mac, nonce, f, SHARDMAP__FRAME_HEADER + len,
			       f + SHARDMAP__FRAME_HEADER + len) != SHARDMAP_OK) {
		free(f);
		return SHARDMAP_ENOMEM;
	}
	*out = f;
	*out_len = total;
	return SHARDMAP_OK;
}

static int refuse(enum shardmap__refuse *why, enum shardmap__refuse reason)
{
	*why = reason;
	return -1;
}

int shardmap__frame_parse(const uint8_t *buf, size_t avail, size_t max_payload, int keyed,
			  struct shardmap__frame_header *h, size_t *frame_len,
			  enum shardmap__refuse *why)
{
	/* judge each byte as soon as it is there */
	for (size_t i = 0; i < avail && i < 2; i++) {
		if (buf[i] != frame_magic[i])
			return refuse(why, SHARDMAP__REFUSE_GARBAGE);
	}
	if (avail > 2 && buf[2] != SHARDMAP__PROTO_VERSION)
		return refuse(why, SHARDMAP__REFUSE_VERSION);
	if (avail > 3 && (buf[3] < SHARDMAP__FRAME_HELLO || buf[3] > SHARDMAP__FRAME_TOO_OLD))
		return refuse(why, SHARDMAP__REFUSE_GARBAGE);
	if (avail > 4 && (buf[4] & ~SHARDMAP__FRAME_TAGGED) != 0)
		return refuse(why, SHARDMAP__REFUSE_GARBAGE);
	for (size_t i = 5; i < avail && i < 8; i++) {
		if (buf[i] != 0)
			return refuse(why, SHARDMAP__REFUSE_GARBAGE);
	}
	if (avail < SHARDMAP__FRAME_HEADER)
		return SHARDMAP__FRAME_MORE;
	h->type = buf[3];
	h->flags = buf[4];
	h->length = (uint32_t)get_le(buf + 8, 4);
	h->seq = get_le(buf + 12, 8);
	if (h->length > max_payload)
		return refuse(why, SHARDMAP__REFUSE_OVERSIZED);
	if (keyed && !(h->flags & SHARDMAP__FRAME_TAGGED))
		return refuse(why, SHARDMAP__REFUSE_MISSING_TAG);
	size_t total = SHARDMAP__FRAME_HEADER + (size_t)h->length +
		       ((h->flags & SHARDMAP__FRAME_TAGGED) ? SHARDMAP__FRAME_TAG : 0);
	if (avail < total)
		return SHARDMAP__FRAME_MORE;
	*frame_len = total;
	return SHARDMAP_OK;
}

int shardmap__frame_verify(const struct shardmap__mac *mac, const uint8_t *nonce,
			   const uint8_t *frame, size_t frame_len)
{
	if (frame_len < SHARDMAP__FRAME_HEADER + SHARDMAP__FRAME_TAG)
		return -1;
	uint8_t tag[SHARDMAP__FRAME_TAG];
	size_t signed_len = frame_len - SHARDMAP__FRAME_TAG;
	if (compute_tag(mac, nonce, frame, signed_len, tag) != SHARDMAP_OK)
		return -1;
	return CRYPTO_memcmp(tag, frame + signed_len, SHARDMAP__FRAME_TAG) == 0 ? 0 : -1;
}

/* ---------------------------------------------------------------- payloads */

size_t shardmap__hello_encode(const struct shardmap__hello *h, uint8_t *out)
{
	size_t id_len = strnlen(h->node_id, 255);
	put_le(out, h->proto, 2);
	put_le(out + 2, h->features, 4);
	put_le(out + 6, h->version, 8);
	memcpy(out + 14, h->nonce, SHARDMAP__NONCE);
	out[30] = (uint8_t)id_len;
	memcpy(out + 31, h->node_id, id_len);
	return 31 + id_len;
}

int shardmap__hello_decode(const uint8_t *p, size_t len, struct shardmap__hello *h)
{
	if (len < 32 || len != 31u + p[30] || p[30] == 0)
		return SHARDMAP_ECORRUPT;
	for (size_t i = 31; i < len; i++) {
		if (p[i] < 0x20 || p[i] == 0x7f)
			return SHARDMAP_ECORRUPT; /* node ids are printable names */
	}
	h->proto = (uint16_t)get_le(p, 2);
	h->features = (uint32_t)get_le(p + 2, 4);
	h->version = get_le(p + 6, 8);
	memcpy(h->nonce, p + 14, SHARDMAP__NONCE);
	memcpy(h->node_id, p + 31, p[30]);
	h->node_id[p[30]] = '\0';
	return SHARDMAP_OK;
}

size_t shardmap__announce_encode(const struct shardmap__announce *a, uint8_t *out)
{
	put_le(out, a->version, 8);
	put_le(out + 8, a->digest, 8);
	out[16] = a->flags;
	return 17;
}

int shardmap__announce_decode(const uint8_t *p, size_t len, struct shardmap__announce *a)
{
	if (len != 17 || (p[16] & ~SHARDMAP__ANNOUNCE_REPLY) != 0)
		return SHARDMAP_ECORRUPT;
	a->version = get_le(p, 8);
	a->digest = get_le(p + 8, 8);
	a->flags = p[16];
	return SHARDMAP_OK;
}

size_t shardmap__pull_encode(uint64_t have, uint8_t *out)
{
	put_le(out, have, 8);
	return 8;
}

int shardmap__pull_decode(const uint8_t *p, size_t len, uint64_t *have)
{
	if (len != 8)
		return SHARDMAP_ECORRUPT;
	*have = get_le(p, 8);
	return SHARDMAP_OK;
}

size_t shardmap__too_old_encode(const struct shardmap__too_old *t, uint8_t *out)
{
	put_le(out, t->asked, 8);
	put_le(out + 8, t->oldest, 8);
	put_le(out + 16, t->newest, 8);
	return 24;
}

int shardmap__too_old_decode(const uint8_t *p, size_t len, struct shardmap__too_old *t)
{
	if (len != 24)
		return SHARDMAP_ECORRUPT;
	t->asked = get_le(p, 8);
	t->oldest = get_le(p + 8, 8);
	t->newest = get_le(p + 16, 8);
	return SHARDMAP_OK;
}
