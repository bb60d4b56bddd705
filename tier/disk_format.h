/*
 * disk_format.h - private to tier/: the bytes of a block record, as the disk tier's
 * slots and the Redis tier's values hold it, and the disk tier's manifest
 * (docs/tiers.md).
 *
 * A record: a header of KVP_SLOT_HDR bytes, the block's tokens as u32 little-endian, zero
 * up to a 4 KiB boundary, then the KV bytes (a disk slot: zero up to the next one).
 *
 *   off  len  field
 *     0    8  magic "KVPDISK1"
 *     8    4  format version (KVP_DISK_FORMAT)
 *    12    4  block_tokens
 *    16    8  block_bytes (KV bytes)
 *    24   16  key: lo, hi (u64 each)
 *    40   16  parent key
 *    56   16  namespace root
 *    72    8  sequence number of the write (the newest copy of a block wins)
 *    80    8  XXH3-64 of the KV bytes
 *    88    8  the tier fingerprint: what the KV was computed by (tier_fingerprint)
 *    96   24  zero
 *   120    8  XXH3-64 of bytes 0 .. 120 followed by the tokens
 *   128       tokens
 */
#ifndef KVP_DISK_FORMAT_H
#define KVP_DISK_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_index.h"

#define KVP_DISK_FORMAT 1u
#define KVP_SLOT_HDR 128u
#define KVP_DISK_ALIGN 4096u

struct slot_hdr {
	uint32_t block_tokens;
	uint64_t block_bytes;
	struct kvp_key key, parent, root;
	uint64_t seq;
	uint64_t kv_sum;
	uint64_t fingerprint;
};

/* Bytes before the KV bytes (header and tokens, rounded up), and of a whole slot. */
size_t slot_head_bytes(uint32_t block_tokens);
size_t slot_bytes(uint32_t block_tokens, size_t block_bytes);

/* Write the header and tokens into head (slot_head_bytes of it, zeroed here first). */
void slot_encode(uint8_t *head, const struct slot_hdr *h, const uint32_t *tokens);
/* Read them back: false when the magic, version or header checksum does not hold, or
 * the sizes are not block_tokens and block_bytes. tokens: room for block_tokens. */
bool slot_decode(const uint8_t *head, uint32_t block_tokens, uint64_t block_bytes,
		 struct slot_hdr *h, uint32_t *tokens);

uint64_t kv_checksum(const void *kv, size_t n);
/* XXH3-64 of tokens as u32 little-endian (what the index keeps of a block's tokens). */
uint64_t tokens_checksum(const uint32_t *tokens, uint32_t n);

/* XXH3-64 naming what a block's KV depends on: the model (its namespace string, which
 * holds the file's fingerprint), block size, KV dtype and KV bytes. */
uint64_t tier_fingerprint(const char *model, uint32_t block_tokens, const char *kv_dtype,
			  size_t block_bytes);

/* The manifest's text for these values (what open compares line by line). */
int manifest_text(char *out, size_t outlen, const char *model, uint32_t block_tokens,
		  const char *kv_dtype, size_t block_bytes, size_t slot_bytes);

#endif
