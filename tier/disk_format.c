/*
 * disk_format.c - the disk tier's slot header and manifest (disk_format.h).
 */
#include <stdio.h>
#include <string.h>

#define XXH_STATIC_LINKING_ONLY   /* XXH3_state_t on the stack */
#include <xxhash.h>

#include "disk_format.h"
#include "kvp_le.h"
#include "kvp_status.h"

static const char slot_magic[8] = { 'K', 'V', 'P', 'D', 'I', 'S', 'K', '1' };

static size_t round_up(size_t n)
{
	return (n + KVP_DISK_ALIGN - 1) / KVP_DISK_ALIGN * KVP_DISK_ALIGN;
}

size_t slot_head_bytes(uint32_t block_tokens)
{
	return round_up(KVP_SLOT_HDR + 4 * (size_t)block_tokens);
}

size_t slot_bytes(uint32_t block_tokens, size_t block_bytes)
{
	return slot_head_bytes(block_tokens) + round_up(block_bytes);
}

static void put_key(uint8_t *p, struct kvp_key k)
{
	kvp_le_put_u64(p, k.lo);
	kvp_le_put_u64(p + 8, k.hi);
}

static struct kvp_key get_key(const uint8_t *p)
{
	return (struct kvp_key){ .lo = kvp_le_get_u64(p), .hi = kvp_le_get_u64(p + 8) };
}

/* XXH3-64 of the header's first 120 bytes and the tokens after it. */
static uint64_t head_checksum(const uint8_t *head, uint32_t block_tokens)
{
	XXH3_state_t st;

	XXH3_64bits_reset(&st);
	XXH3_64bits_update(&st, head, 120);
	XXH3_64bits_update(&st, head + KVP_SLOT_HDR, 4 * (size_t)block_tokens);
	return XXH3_64bits_digest(&st);
}

void slot_encode(uint8_t *head, const struct slot_hdr *h, const uint32_t *tokens)
{
	memset(head, 0, slot_head_bytes(h->block_tokens));
	memcpy(head, slot_magic, sizeof(slot_magic));
	kvp_le_put_u32(head + 8, KVP_DISK_FORMAT);
	kvp_le_put_u32(head + 12, h->block_tokens);
	kvp_le_put_u64(head + 16, h->block_bytes);
	put_key(head + 24, h->key);
	put_key(head + 40, h->parent);
	put_key(head + 56, h->root);
	kvp_le_put_u64(head + 72, h->seq);
	kvp_le_put_u64(head + 80, h->kv_sum);
	kvp_le_put_u64(head + 88, h->fingerprint);
	for (uint32_t i = 0; i < h->block_tokens; i++)
		kvp_le_put_u32(head + KVP_SLOT_HDR + 4 * (size_t)i, tokens[i]);
	kvp_le_put_u64(head + 120, head_checksum(head, h->block_tokens));
}

bool slot_decode(const uint8_t *head, uint32_t block_tokens, uint64_t block_bytes,
		 struct slot_hdr *h, uint32_t *tokens)
{
	if (memcmp(head, slot_magic, sizeof(slot_magic)) != 0 ||
	    kvp_le_get_u32(head + 8) != KVP_DISK_FORMAT ||
	    kvp_le_get_u32(head + 12) != block_tokens || kvp_le_get_u64(head + 16) != block_bytes ||
	    kvp_le_get_u64(head + 120) != head_checksum(head, block_tokens))
		return false;
	h->block_tokens = block_tokens;
	h->block_bytes = block_bytes;
	h->key = get_key(head + 24);
	h->parent = get_key(head + 40);
	h->root = get_key(head + 56);
	h->seq = kvp_le_get_u64(head + 72);
	h->kv_sum = kvp_le_get_u64(head + 80);
	h->fingerprint = kvp_le_get_u64(head + 88);
	for (uint32_t i = 0; i < block_tokens; i++)
		tokens[i] = kvp_le_get_u32(head + KVP_SLOT_HDR + 4 * (size_t)i);
	return true;
}

uint64_t kv_checksum(const void *kv, size_t n)
{
	return XXH3_64bits(kv, n);
}

uint64_t tokens_checksum(const uint32_t *tokens, uint32_t n)
{
	XXH3_state_t st;
	uint8_t buf[256 * 4];

	XXH3_64bits_reset(&st);
	for (uint32_t i = 0; i < n;) {
		uint32_t k = n - i < 256 ? n - i : 256;

		for (uint32_t j = 0; j < k; j++)
			kvp_le_put_u32(buf + 4 * (size_t)j, tokens[i + j]);
		XXH3_64bits_update(&st, buf, 4 * (size_t)k);
		i += k;
	}
	return XXH3_64bits_digest(&st);
}

uint64_t tier_fingerprint(const char *model, uint32_t block_tokens, const char *kv_dtype,
			  size_t block_bytes)
{
	char text[1024];
	int n = snprintf(text, sizeof(text), "kvprefix tier %u\n%s\n%u\n%s\n%zu\n", KVP_DISK_FORMAT,
			 model, block_tokens, kv_dtype, block_bytes);

	return XXH3_64bits(text, n < 0 ? 0 : (size_t)n < sizeof(text) ? (size_t)n : sizeof(text) - 1);
}

int manifest_text(char *out, size_t outlen, const char *model, uint32_t block_tokens,
		  const char *kv_dtype, size_t block_bytes, size_t slot_len)
{
	int n = snprintf(out, outlen,
			 "kvprefix disk tier\n"
			 "format %u\n"
			 "model %s\n"
			 "block_tokens %u\n"
			 "kv_dtype %s\n"
			 "block_bytes %zu\n"
			 "slot_bytes %zu\n",
			 KVP_DISK_FORMAT, model, block_tokens, kv_dtype, block_bytes, slot_len);

	return n < 0 || (size_t)n >= outlen ? KVP_ETOOBIG : KVP_OK;
}
