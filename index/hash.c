/*
 * hash.c - namespace roots and chained XXH3-128 block keys (index/).
 *
 * The byte layouts are the contract of docs/hashing.md; change neither without the
 * other (and the known-answer vectors in tests/test_hash.c).
 *
 *   namespace root   XXH3-128( "kvprefix/ns/v1" | u32le len(model) | model |
 *                              u32le tenant | u32le len(adapter) | adapter )
 *
 *   block key        XXH3-128( canon(parent) | t_0 | t_1 | ... | t_{n-1} )
 *                              16 bytes:       u32 little-endian each
 *                              hi64 BE, lo64 BE
 *
 * Both use XXH3-128 with seed 0 and the default secret, so two daemons on two machines
 * compute the same keys. The block key itself is inline code in hash_internal.h, shared
 * with tree.c's match loop. Nothing here allocates.
 */
#include <assert.h>
#include <string.h>

#include "hash_internal.h"
#include "kvp_index.h"

static const char kvp_ns_magic[] = "kvprefix/ns/v1"; /* hashed without its NUL */

static void ns_update_str(XXH3_state_t *st, const char *s)
{
	unsigned char len[4];
	size_t n = s ? strlen(s) : 0;

	assert(n <= UINT32_MAX);
	kvp_hash_put_u32le(len, (uint32_t)n);
	XXH3_128bits_update(st, len, sizeof(len));
	if (n)
		XXH3_128bits_update(st, s, n);
}

struct kvp_key kvp_ns_root(const char *model, uint32_t tenant, const char *adapter)
{
	XXH3_state_t st;
	unsigned char t[4];

	/* Not a hot path (once per request at most); the streaming state keeps it free
	 * of allocation whatever the string lengths, with the one-shot call's digest. */
	XXH3_INITSTATE(&st);
	XXH3_128bits_reset(&st);
	XXH3_128bits_update(&st, kvp_ns_magic, sizeof(kvp_ns_magic) - 1);
	ns_update_str(&st, model);
	kvp_hash_put_u32le(t, tenant);
	XXH3_128bits_update(&st, t, sizeof(t));
	ns_update_str(&st, adapter);
	return kvp_hash_from_xxh(XXH3_128bits_digest(&st));
}

__attribute__((noinline)) struct kvp_key
kvp_hash_block_long(struct kvp_key parent, const uint32_t *tokens, uint32_t n)
{
	unsigned char buf[KVP_HASH_LONG_BYTES];

	assert(n <= KVP_BLOCK_TOKENS_MAX);
#if KVP_HASH_LE
	if (n >= KVP_HASH_STREAM_TOKENS) {
		XXH3_state_t st;

		XXH3_INITSTATE(&st);
		XXH3_128bits_reset(&st);
		kvp_hash_put_canon(buf, parent);
		XXH3_128bits_update(&st, buf, 16);
		XXH3_128bits_update(&st, tokens, 4u * (size_t)n);
		return kvp_hash_from_xxh(XXH3_128bits_digest(&st));
	}
#endif
	kvp_hash_put_canon(buf, parent);
	kvp_hash_put_tokens(buf + 16, tokens, n);
	return kvp_hash_from_xxh(XXH3_128bits(buf, 16u + 4u * (size_t)n));
}

struct kvp_key kvp_block_key(struct kvp_key parent, const uint32_t *tokens, uint32_t n)
{
	struct kvp_key k;

	assert(n <= KVP_BLOCK_TOKENS_MAX);
	assert(n == 0 || tokens);
	KVP_HASH_SPECIALISE(n, k = kvp_hash_block(parent, tokens, kvp_b_));
	return k;
}

void kvp_chain_keys(struct kvp_key root, const uint32_t *tokens, size_t n_blocks,
		    uint32_t b, struct kvp_key *out)
{
	struct kvp_key k = root;

	assert(b >= 1 && b <= KVP_BLOCK_TOKENS_MAX);
	KVP_HASH_SPECIALISE(b,
		for (size_t i = 0; i < n_blocks; i++) {
			k = kvp_hash_block(k, tokens + i * kvp_b_, kvp_b_);
			out[i] = k;
		});
}
