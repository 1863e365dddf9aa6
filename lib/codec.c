/*
 * codec.c - the one binary codec for deltas, for the file store (snapshot and journal),
 * warm-start snapshots and peer frames. The format is specified in docs/codec.md: a 16-byte
 * header (magic, format version, flags, body length, header check), a body (versions, op
 * count, ops) and an XXH3-64 trailer over header and body, all integers little-endian.
 *
 * The decoder treats its input as hostile. Every length, count and offset is checked
 * against the bytes that remain before it is used; a count is also bounded by the smallest
 * encoding one item can have, and sizes its array up front only when the record's size
 * vouches for it (else the array grows with what has actually been decoded), so the memory
 * a record can make us allocate is proportional to its real size. Every malformed
 * input gets SHARDMAP_ECORRUPT and a message naming the field and offset; an incomplete one
 * gets the "need more bytes" answer so stream readers (journal, peer sockets) can wait.
 * Encoding is canonical: decode(x) re-encodes to exactly x (the fuzz target checks this).
 *
 * Snapshot loaders, which read a record into a buffer of their own only to decode it, use
 * the same decoder in place (shardmap__codec_decode_in_place): each string is moved one byte
 * down over its length byte and NUL-terminated in the byte its last character left, so the
 * delta points into the buffer instead of holding millions of small copies, and its op array
 * comes from shardmap__big_alloc (huge pages). The checksum is checked before anything moves.
 */
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "codec.h"
#include "mem.h"

static const uint8_t codec_magic[4] = {'S', 'M', 'A', 'P'};
#define CODEC_FORMAT	    1u
#define BODY_FIXED	    20u /* from u64, to u64, n_ops u32 */
#define MIN_OP_BYTES	    3u	/* kind + length + one byte of name: delete_stream/cell */
#define MIN_ENDPOINT_BYTES  4u	/* length + "h:1" */
#define OPS_PER_BODY_BYTE   4u	/* decoded op array bytes a body byte vouches for */
#define SHARD_FLAG_OPEN	    0x1u
#define SHARD_FLAG_PARENT   0x2u
#define SHARD_FLAG_ADJACENT 0x4u
#define SHARD_FLAGS_KNOWN   0x7u

/* ---------------------------------------------------------------- little-endian access */

static void put_u16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void put_u32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get_u16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (unsigned)p[1] << 8);
}

static uint32_t get_u32(const uint8_t *p)
{
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static uint64_t get_u64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* The header check: the low 32 bits of XXH3-64 over the first 12 header bytes. It lets a
 * reader tell a corrupt length from a record that is merely incomplete (a torn tail). */
static uint32_t header_check(const uint8_t *h)
{
	return (uint32_t)XXH3_64bits(h, 12);
}

/* ---------------------------------------------------------------- encoding */

/* Bytes of a string field, or 0 if s is not a name the decoder would accept (NULL, empty,
 * over 255 bytes, a control character): what encodes always decodes. */
static size_t str_size(const char *s)
{
	return shardmap__check_name(s) == 0 ? 1 + strlen(s) : 0;
}

static size_t endpoint_size(const char *s)
{
	return shardmap__check_endpoint(s) == 0 ? 1 + strlen(s) : 0;
}

/* Encoded size of op, or 0 if it cannot be encoded (or would not decode). */
static size_t op_size(const struct shardmap__op *op)
{
	size_t n = 1, s;
	switch (op->kind) {
	case SHARDMAP__OP_PUT_STREAM:
		if (op->hash_fn != SHARDMAP_HASH_XXH3 && op->hash_fn != SHARDMAP_HASH_MD5)
			return 0;
		return (s = str_size(op->stream)) ? n + s + 1 : 0;
	case SHARDMAP__OP_DELETE_STREAM:
		return (s = str_size(op->stream)) ? n + s : 0;
	case SHARDMAP__OP_DELETE_SHARD:
		if ((s = str_size(op->stream)) == 0)
			return 0;
		n += s;
		return (s = str_size(op->id)) ? n + s : 0;
	case SHARDMAP__OP_DELETE_CELL:
		return (s = str_size(op->id)) ? n + s : 0;
	case SHARDMAP__OP_PUT_SHARD: {
		const char *strs[5] = {op->stream, op->id, op->owner_cell, op->parent,
				       op->adjacent_parent};
		if (shardmap_hash_cmp(op->start, op->end) > 0)
			return 0;
		n += 1 + 32;
		for (int i = 0; i < 5; i++) {
			if (i >= 3 && strs[i] == NULL)
				continue;
			if ((s = str_size(strs[i])) == 0)
				return 0;
			n += s;
		}
		return n;
	}
	case SHARDMAP__OP_PUT_CELL:
		if ((s = str_size(op->id)) == 0 || op->n_endpoints == 0 ||
		    op->n_endpoints > UINT16_MAX)
			return 0;
		n += s + 2;
		for (size_t i = 0; i < op->n_endpoints; i++) {
			if ((s = endpoint_size(op->endpoints[i])) == 0)
				return 0;
			n += s;
		}
		return n;
	}
	return 0;
}

static uint8_t *put_str(uint8_t *p, const char *s)
{
	size_t n = strlen(s);
	*p++ = (uint8_t)n;
	memcpy(p, s, n);
	return p + n;
}

static uint8_t *put_op(uint8_t *p, const struct shardmap__op *op)
{
	*p++ = (uint8_t)op->kind;
	switch (op->kind) {
	case SHARDMAP__OP_PUT_STREAM:
		p = put_str(p, op->stream);
		*p++ = (uint8_t)op->hash_fn;
		break;
	case SHARDMAP__OP_DELETE_STREAM:
		p = put_str(p, op->stream);
		break;
	case SHARDMAP__OP_DELETE_SHARD:
		p = put_str(p, op->stream);
		p = put_str(p, op->id);
		break;
	case SHARDMAP__OP_DELETE_CELL:
		p = put_str(p, op->id);
		break;
	case SHARDMAP__OP_PUT_SHARD:
		p = put_str(p, op->stream);
		p = put_str(p, op->id);
		*p++ = (uint8_t)((op->open ? SHARD_FLAG_OPEN : 0) |
				 (op->parent ? SHARD_FLAG_PARENT : 0) |
				 (op->adjacent_parent ? SHARD_FLAG_ADJACENT : 0));
		put_u64(p, op->start.hi);
		put_u64(p + 8, op->start.lo);
		put_u64(p + 16, op->end.hi);
		put_u64(p + 24, op->end.lo);
		p += 32;
		p = put_str(p, op->owner_cell);
		if (op->parent)
			p = put_str(p, op->parent);
		if (op->adjacent_parent)
			p = put_str(p, op->adjacent_parent);
		break;
	case SHARDMAP__OP_PUT_CELL:
		p = put_str(p, op->id);
		put_u16(p, (uint16_t)op->n_endpoints);
		p += 2;
		for (size_t i = 0; i < op->n_endpoints; i++)
			p = put_str(p, op->endpoints[i]);
		break;
	}
	return p;
}

int shardmap__codec_encode(const shardmap_delta *d, uint8_t **buf, size_t *len)
{
	if (d == NULL || buf == NULL || len == NULL || d->n_ops > UINT32_MAX)
		return SHARDMAP_EINVAL;
	size_t body = BODY_FIXED;
	for (size_t i = 0; i < d->n_ops; i++) {
		size_t n = op_size(&d->ops[i]);
		if (n == 0)
			return SHARDMAP_EINVAL;
		body += n;
		if (body > SHARDMAP__CODEC_MAX_BODY)
			return SHARDMAP_EINVAL;
	}
	size_t total = SHARDMAP__CODEC_HEADER_BYTES + body + SHARDMAP__CODEC_TRAILER_BYTES;
	uint8_t *out = malloc(total);
	if (out == NULL)
		return SHARDMAP_ENOMEM;

	memcpy(out, codec_magic, 4);
	put_u16(out + 4, CODEC_FORMAT);
	put_u16(out + 6, 0);
	put_u32(out + 8, (uint32_t)body);
	put_u32(out + 12, header_check(out));
	uint8_t *p = out + SHARDMAP__CODEC_HEADER_BYTES;
	put_u64(p, d->from_version);
	put_u64(p + 8, d->to_version);
	put_u32(p + 16, (uint32_t)d->n_ops);
	p += BODY_FIXED;
	for (size_t i = 0; i < d->n_ops; i++)
		p = put_op(p, &d->ops[i]);
	put_u64(p, XXH3_64bits(out, (size_t)(p - out)));
	*buf = out;
	*len = total;
	return SHARDMAP_OK;
}

/* ---------------------------------------------------------------- framing */

/* Check the header at buf and the record length it gives: magic, format, flags, header
 * check, length limits. Returns 0 with *total = the record's length (maybe more than len:
 * then the caller decides whether that is "need more bytes" or a truncated file), or
 * ENOENT / ECORRUPT as shardmap__codec_decode. */
static int header_ok(const uint8_t *buf, size_t len, size_t *total, shardmap_error *why)
{
	if (len == 0)
		return shardmap__error_set(why, SHARDMAP_ENOENT, SIZE_MAX,
					   "incomplete record: no bytes yet");
	/* Check what is there even before the header is complete, so that garbage is reported
	 * as soon as possible instead of waiting for bytes that will never make sense. */
	size_t have = len < 4 ? len : 4;
	if (memcmp(buf, codec_magic, have) != 0)
		return shardmap__error_set(why, SHARDMAP_ECORRUPT, SIZE_MAX,
					   "bad magic at offset 0 (not a shardmap record)");
	if (len >= 6 && get_u16(buf + 4) != CODEC_FORMAT)
		return shardmap__error_set(why, SHARDMAP_ECORRUPT, SIZE_MAX,
					   "unsupported format version %u at offset 4 (this build "
					   "reads version %u)",
					   get_u16(buf + 4), CODEC_FORMAT);
	if (len < SHARDMAP__CODEC_HEADER_BYTES)
		return shardmap__error_set(why, SHARDMAP_ENOENT, SIZE_MAX,
					   "incomplete record: %zu of %u header bytes", len,
					   SHARDMAP__CODEC_HEADER_BYTES);
	if (get_u16(buf + 6) != 0)
		return shardmap__error_set(why, SHARDMAP_ECORRUPT, SIZE_MAX,
					   "reserved header flags 0x%04x set at offset 6",
					   get_u16(buf + 6));
	if (get_u32(buf + 12) != header_check(buf))
		return shardmap__error_set(why, SHARDMAP_ECORRUPT, SIZE_MAX,
					   "header check mismatch at offset 12 (corrupt header)");
	uint32_t blen = get_u32(buf + 8);
	if (blen > SHARDMAP__CODEC_MAX_BODY)
		return shardmap__error_set(why, SHARDMAP_ECORRUPT, SIZE_MAX,
					   "body length %u at offset 8 exceeds the limit %u", blen,
					   SHARDMAP__CODEC_MAX_BODY);
	if (blen < BODY_FIXED)
		return shardmap__error_set(why, SHARDMAP_ECORRUPT, SIZE_MAX,
					   "body length %u at offset 8 is below the minimum %u",
					   blen, BODY_FIXED);
	*total = SHARDMAP__CODEC_HEADER_BYTES + blen + SHARDMAP__CODEC_TRAILER_BYTES;
	return SHARDMAP_OK;
}

/* The versions at the start of body b: to must be above from. */
static int versions_ok(const uint8_t *b, shardmap_error *why)
{
	if (get_u64(b + 8) <= get_u64(b))
		return shardmap__error_set(why, SHARDMAP_ECORRUPT, SIZE_MAX,
					   "to_version %llu is not above from_version %llu",
					   (unsigned long long)get_u64(b + 8),
					   (unsigned long long)get_u64(b));
	return SHARDMAP_OK;
}

/* Check the frame at buf: header fields, length limit, completeness, checksum, the fixed
 * body fields. On success *body and *body_len describe the body and *consumed the record. */
static int frame_check(const uint8_t *buf, size_t len, const uint8_t **body, size_t *body_len,
		       size_t *consumed, shardmap_error *why)
{
	size_t total = 0;
	*consumed = 0;
	int rc = header_ok(buf, len, &total, why);
	if (rc != 0)
		return rc;
	if (len < total) {
		*consumed = total;
		return shardmap__error_set(why, SHARDMAP_ENOENT, SIZE_MAX,
					   "incomplete record: %zu of %zu bytes", len, total);
	}
	size_t sum_at = total - SHARDMAP__CODEC_TRAILER_BYTES;
	uint64_t stored = get_u64(buf + sum_at), computed = XXH3_64bits(buf, sum_at);
	if (stored != computed)
		return shardmap__error_set(why, SHARDMAP_ECORRUPT, SIZE_MAX,
					   "checksum mismatch at offset %zu (stored %016llx, "
					   "computed %016llx)",
					   sum_at, (unsigned long long)stored,
					   (unsigned long long)computed);
	const uint8_t *b = buf + SHARDMAP__CODEC_HEADER_BYTES;
	if ((rc = versions_ok(b, why)) != 0)
		return rc;
	*body = b;
	*body_len = sum_at - SHARDMAP__CODEC_HEADER_BYTES;
	*consumed = total;
	return SHARDMAP_OK;
}

int shardmap__codec_peek_head(const uint8_t *buf, size_t len, uint64_t *from, uint64_t *to,
			      size_t *total, shardmap_error *why)
{
	size_t need = 0;
	if (buf == NULL && len > 0)
		return SHARDMAP_EINVAL;
	int rc = header_ok(buf, len, &need, why);
	if (total)
		*total = rc == 0 ? need : 0;
	if (rc != 0)
		return rc;
	if (len < SHARDMAP__CODEC_HEAD_BYTES)
		return shardmap__error_set(why, SHARDMAP_ENOENT, SIZE_MAX,
					   "incomplete record: %zu of the %u bytes up to the "
					   "versions",
					   len, SHARDMAP__CODEC_HEAD_BYTES);
	const uint8_t *b = buf + SHARDMAP__CODEC_HEADER_BYTES;
	if ((rc = versions_ok(b, why)) != 0)
		return rc;
	if (from)
		*from = get_u64(b);
	if (to)
		*to = get_u64(b + 8);
	return SHARDMAP_OK;
}

int shardmap__codec_peek(const uint8_t *buf, size_t len, uint64_t *from, uint64_t *to,
			 size_t *consumed, shardmap_error *why)
{
	const uint8_t *body;
	size_t blen, used;
	if (buf == NULL && len > 0)
		return SHARDMAP_EINVAL;
	int rc = frame_check(buf, len, &body, &blen, &used, why);
	if (consumed)
		*consumed = used;
	if (rc != 0)
		return rc;
	if (from)
		*from = get_u64(body);
	if (to)
		*to = get_u64(body + 8);
	return SHARDMAP_OK;
}

/* ---------------------------------------------------------------- decoding ops */

/* A delta decoded in place: the delta handed out, then the endpoint arrays of its put_cell
 * ops (the only memory of its ops besides the op array), so that freeing it need not walk a
 * million ops to find the few that have any. */
struct borrowed {
	shardmap_delta d; /* first: shardmap__codec_borrowed_free gets &b->d */
	char ***arrays;
	size_t n_arrays, cap_arrays;
};

/* A bounded cursor over the body. Offsets in messages are from the start of the record. */
struct cursor {
	const uint8_t *p, *end, *base;
	size_t op;	     /* index of the op being decoded */
	const char *op_name; /* its kind's name */
	shardmap_error *why;
	int in_place; /* strings are made NUL-terminated inside the (writable) record */
	struct borrowed *borrowed; /* the delta, when in_place */
};

/* Remember an endpoint array of an in-place delta (freed with it). */
static int keep_array(struct borrowed *b, char **array)
{
	if (b->n_arrays == b->cap_arrays) {
		size_t cap = b->cap_arrays ? 2 * b->cap_arrays : 8;
		char ***v = realloc(b->arrays, cap * sizeof *v);
		if (v == NULL)
			return SHARDMAP_ENOMEM;
		b->arrays = v;
		b->cap_arrays = cap;
	}
	b->arrays[b->n_arrays++] = array;
	return 0;
}

static size_t offset(const struct cursor *c)
{
	return (size_t)(c->p - c->base);
}

/* Returns SHARDMAP_ECORRUPT (visibly to the compiler: callers' outputs stay unset). */
static int truncated(struct cursor *c, const char *what)
{
	shardmap__error_set(c->why, SHARDMAP_ECORRUPT, c->op,
			    "op %zu (%s): %s truncated at offset %zu (record ends early)", c->op,
			    c->op_name, what, offset(c));
	return SHARDMAP_ECORRUPT;
}

static int take_u8(struct cursor *c, const char *what, uint8_t *v)
{
	if (c->end - c->p < 1)
		return truncated(c, what);
	*v = *c->p++;
	return 0;
}

static int take_u64(struct cursor *c, const char *what, uint64_t *v)
{
	if (c->end - c->p < 8)
		return truncated(c, what);
	*v = get_u64(c->p);
	c->p += 8;
	return 0;
}

/* Fail a string field whose bytes are not a valid name (or endpoint). */
static int invalid_str(struct cursor *c, const char *what, size_t at, int endpoint)
{
	return shardmap__error_set(
	    c->why, SHARDMAP_ECORRUPT, c->op, "op %zu (%s): invalid %s at offset %zu (%s)", c->op,
	    c->op_name, what, at,
	    endpoint ? "not host:port with a port 1..65535" : "control character or NUL");
}

/* A string field into a fresh heap copy, or in place (c->in_place: its bytes move one byte
 * down over their length byte and a NUL follows them, all inside the field's own bytes):
 * length 1..255, bytes that shardmap__check_name (or, for endpoints,
 * shardmap__check_endpoint) accepts, no embedded NUL. */
static int take_str(struct cursor *c, const char *what, int endpoint, char **out)
{
	size_t at = offset(c);
	uint8_t n;
	if (take_u8(c, what, &n) != 0)
		return SHARDMAP_ECORRUPT;
	if (n == 0)
		return shardmap__error_set(c->why, SHARDMAP_ECORRUPT, c->op,
					   "op %zu (%s): empty %s at offset %zu", c->op, c->op_name,
					   what, at);
	if ((size_t)(c->end - c->p) < n)
		return shardmap__error_set(c->why, SHARDMAP_ECORRUPT, c->op,
					   "op %zu (%s): %s length %u at offset %zu runs past the "
					   "end of the record",
					   c->op, c->op_name, what, n, at);
	/* What shardmap__check_name refuses in a name of 1..255 bytes is a control character
	 * (an embedded NUL among them): one pass over the bytes, before copying them. An
	 * endpoint then gets its own check. */
	unsigned bad = 0;
	for (size_t i = 0; i < n; i++)
		bad |= (c->p[i] < 0x20) | (c->p[i] == 0x7f);
	if (bad)
		return invalid_str(c, what, at, endpoint);
	char *s;
	if (c->in_place) {
		/* The caller handed us the record writable (shardmap__codec_decode_in_place). */
		s = (char *)c->p - 1;
		memmove(s, c->p, n);
	} else if ((s = malloc((size_t)n + 1)) == NULL) {
		return SHARDMAP_ENOMEM;
	} else {
		memcpy(s, c->p, n);
	}
	s[n] = '\0';
	if (endpoint && shardmap__check_endpoint(s) != 0) {
		if (!c->in_place)
			free(s);
		return invalid_str(c, what, at, endpoint);
	}
	c->p += n;
	*out = s;
	return 0;
}

static int take_shard(struct cursor *c, struct shardmap__op *op)
{
	uint8_t flags;
	int rc;
	if ((rc = take_str(c, "stream name", 0, &op->stream)) != 0 ||
	    (rc = take_str(c, "shard id", 0, &op->id)) != 0 ||
	    (rc = take_u8(c, "shard flags", &flags)) != 0)
		return rc;
	if (flags & ~SHARD_FLAGS_KNOWN)
		return shardmap__error_set(c->why, SHARDMAP_ECORRUPT, c->op,
					   "op %zu (put_shard %s): unknown shard flags 0x%02x at "
					   "offset %zu",
					   c->op, op->id, flags, offset(c) - 1);
	op->open = (flags & SHARD_FLAG_OPEN) != 0;
	if ((rc = take_u64(c, "range start", &op->start.hi)) != 0 ||
	    (rc = take_u64(c, "range start", &op->start.lo)) != 0 ||
	    (rc = take_u64(c, "range end", &op->end.hi)) != 0 ||
	    (rc = take_u64(c, "range end", &op->end.lo)) != 0)
		return rc;
	if (shardmap_hash_cmp(op->start, op->end) > 0)
		return shardmap__error_set(c->why, SHARDMAP_ECORRUPT, c->op,
					   "op %zu (put_shard %s): range start is above range end",
					   c->op, op->id);
	if ((rc = take_str(c, "owner cell", 0, &op->owner_cell)) != 0)
		return rc;
	if ((flags & SHARD_FLAG_PARENT) && (rc = take_str(c, "parent", 0, &op->parent)) != 0)
		return rc;
	if ((flags & SHARD_FLAG_ADJACENT) &&
	    (rc = take_str(c, "adjacent parent", 0, &op->adjacent_parent)) != 0)
		return rc;
	return 0;
}

static int take_cell(struct cursor *c, struct shardmap__op *op)
{
	int rc;
	if ((rc = take_str(c, "cell id", 0, &op->id)) != 0)
		return rc;
	size_t at = offset(c);
	if (c->end - c->p < 2)
		return truncated(c, "endpoint count");
	size_t n = get_u16(c->p);
	c->p += 2;
	if (n == 0)
		return shardmap__error_set(c->why, SHARDMAP_ECORRUPT, c->op,
					   "op %zu (put_cell %s): no endpoints (count 0 at offset "
					   "%zu)",
					   c->op, op->id, at);
	if (n > (size_t)(c->end - c->p) / MIN_ENDPOINT_BYTES)
		return shardmap__error_set(c->why, SHARDMAP_ECORRUPT, c->op,
					   "op %zu (put_cell %s): endpoint count %zu at offset %zu "
					   "exceeds what the remaining %zu bytes can hold",
					   c->op, op->id, n, at, (size_t)(c->end - c->p));
	op->endpoints = calloc(n, sizeof *op->endpoints);
	if (op->endpoints == NULL)
		return SHARDMAP_ENOMEM;
	if (c->in_place && keep_array(c->borrowed, op->endpoints) != 0) {
		free(op->endpoints);
		op->endpoints = NULL;
		return SHARDMAP_ENOMEM;
	}
	op->n_endpoints = n; /* unfilled slots are NULL: shardmap_delta_free copes */
	for (size_t i = 0; i < n; i++)
		if ((rc = take_str(c, "endpoint", 1, &op->endpoints[i])) != 0)
			return rc;
	return 0;
}

/* Decode one op into *op (zeroed by the caller; on failure it holds what was copied). */
static int take_op(struct cursor *c, struct shardmap__op *op)
{
	uint8_t kind, hash_fn;
	int rc;
	c->op_name = "op";
	if ((rc = take_u8(c, "op kind", &kind)) != 0)
		return rc;
	if (kind < SHARDMAP__OP_PUT_STREAM || kind > SHARDMAP__OP_DELETE_CELL)
		return shardmap__error_set(c->why, SHARDMAP_ECORRUPT, c->op,
					   "op %zu: unknown op kind %u at offset %zu", c->op, kind,
					   offset(c) - 1);
	op->kind = (enum shardmap__op_kind)kind;
	c->op_name = shardmap__op_name(op->kind);
	switch (op->kind) {
	case SHARDMAP__OP_PUT_STREAM:
		if ((rc = take_str(c, "stream name", 0, &op->stream)) != 0 ||
		    (rc = take_u8(c, "hash function", &hash_fn)) != 0)
			return rc;
		if (hash_fn != SHARDMAP_HASH_XXH3 && hash_fn != SHARDMAP_HASH_MD5)
			return shardmap__error_set(
			    c->why, SHARDMAP_ECORRUPT, c->op,
			    "op %zu (put_stream %s): unknown hash function %u "
			    "at offset %zu",
			    c->op, op->stream, hash_fn, offset(c) - 1);
		op->hash_fn = hash_fn;
		return 0;
	case SHARDMAP__OP_DELETE_STREAM:
		return take_str(c, "stream name", 0, &op->stream);
	case SHARDMAP__OP_PUT_SHARD:
		return take_shard(c, op);
	case SHARDMAP__OP_DELETE_SHARD:
		if ((rc = take_str(c, "stream name", 0, &op->stream)) != 0)
			return rc;
		return take_str(c, "shard id", 0, &op->id);
	case SHARDMAP__OP_PUT_CELL:
		return take_cell(c, op);
	case SHARDMAP__OP_DELETE_CELL:
		return take_str(c, "cell id", 0, &op->id);
	}
	return SHARDMAP_ECORRUPT; /* not reached: kind was range-checked */
}

/* Make room for one more op, growing with what has been decoded (never with the claimed
 * count alone), so a lying count cannot make us allocate. */
static int reserve_op(shardmap_delta *d, size_t claimed, int in_place)
{
	if (d->n_ops < d->cap_ops)
		return 0;
	size_t cap = d->cap_ops ? d->cap_ops * 2 : 16;
	if (cap > claimed)
		cap = claimed;
	struct shardmap__op *ops = in_place ? shardmap__big_realloc(d->ops, cap * sizeof *ops)
					    : realloc(d->ops, cap * sizeof *ops);
	if (ops == NULL)
		return SHARDMAP_ENOMEM;
	d->ops = ops;
	d->cap_ops = cap;
	return 0;
}

void shardmap__codec_borrowed_free(shardmap_delta *d)
{
	if (d == NULL)
		return;
	struct borrowed *b = (struct borrowed *)d; /* d is b's first member */
	for (size_t i = 0; i < b->n_arrays; i++)
		free(b->arrays[i]); /* strings are the record's */
	free(b->arrays);
	shardmap__big_free(d->ops);
	free(b);
}

/* shardmap__codec_decode and shardmap__codec_decode_in_place. */
static int decode(const uint8_t *buf, size_t len, int in_place, shardmap_delta **out,
		  size_t *consumed, shardmap_error *why)
{
	const uint8_t *body;
	size_t blen, used;
	if ((buf == NULL && len > 0) || out == NULL)
		return SHARDMAP_EINVAL;
	int rc = frame_check(buf, len, &body, &blen, &used, why);
	if (consumed)
		*consumed = used;
	if (rc != 0)
		return rc;

	struct borrowed *b = NULL;
	shardmap_delta *d;
	if (in_place)
		d = (b = calloc(1, sizeof *b)) != NULL ? &b->d : NULL;
	else
		d = calloc(1, sizeof *d);
	if (d == NULL)
		return SHARDMAP_ENOMEM;
	d->from_version = get_u64(body);
	d->to_version = get_u64(body + 8);
	size_t n_ops = get_u32(body + 16);
	struct cursor c = {.p = body + BODY_FIXED,
			   .end = body + blen,
			   .base = buf,
			   .why = why,
			   .in_place = in_place,
			   .borrowed = b};
	if (n_ops > blen / MIN_OP_BYTES) {
		rc =
		    shardmap__error_set(why, SHARDMAP_ECORRUPT, SIZE_MAX,
					"op count %zu at offset %u exceeds what the %zu body bytes "
					"can hold",
					n_ops, SHARDMAP__CODEC_HEADER_BYTES + 16, blen);
		goto fail;
	}
	/* When the body's size vouches for the count (OPS_PER_BODY_BYTE: ops averaging at
	 * least a quarter of their decoded size, as every snapshot's put_shard ops do), size the
	 * array once: a million-op snapshot decodes without regrowing it. Otherwise grow it
	 * with what has been decoded (reserve_op). Either way a lying count makes us allocate
	 * at most a few times the bytes the record really has. */
	if (n_ops > 0 && n_ops * sizeof *d->ops <= OPS_PER_BODY_BYTE * (size_t)blen) {
		size_t bytes = n_ops * sizeof *d->ops;
		d->ops = in_place ? shardmap__big_alloc(bytes) : malloc(bytes);
		if (d->ops == NULL) {
			rc = SHARDMAP_ENOMEM;
			goto fail;
		}
		d->cap_ops = n_ops;
	}
	for (c.op = 0; c.op < n_ops; c.op++) {
		if ((rc = reserve_op(d, n_ops, in_place)) != 0)
			goto fail;
		struct shardmap__op *op = &d->ops[d->n_ops++];
		memset(op, 0, sizeof *op);
		if ((rc = take_op(&c, op)) != 0)
			goto fail;
	}
	if (c.p != c.end) {
		rc = shardmap__error_set(
		    why, SHARDMAP_ECORRUPT, SIZE_MAX,
		    "%zu bytes of trailing garbage at offset %zu after the last "
		    "op",
		    (size_t)(c.end - c.p), offset(&c));
		goto fail;
	}
	*out = d;
	return SHARDMAP_OK;
fail:
	if (rc == SHARDMAP_ENOMEM)
		shardmap__error_set(why, rc, c.op, "out of memory decoding op %zu", c.op);
	if (consumed)
		*consumed = 0;
	if (in_place)
		shardmap__codec_borrowed_free(d);
	else
		shardmap_delta_free(d);
	return rc;
}

int shardmap__codec_decode(const uint8_t *buf, size_t len, shardmap_delta **out, size_t *consumed,
			   shardmap_error *why)
{
	return decode(buf, len, 0, out, consumed, why);
}

int shardmap__codec_decode_in_place(uint8_t *buf, size_t len, shardmap_delta **out,
				    size_t *consumed, shardmap_error *why)
{
	return decode(buf, len, 1, out, consumed, why);
}
