/*
 * kvp_be.h - big-endian u64 in byte buffers: the sequence numbers of KV event messages
 * (docs/kv-events.md). Byte by byte, any alignment, any host; nothing is checked.
 */
#ifndef KVP_BE_H
#define KVP_BE_H

#include <stdint.h>

static inline uint64_t kvp_be_get_u64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

static inline void kvp_be_put_u64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

#endif
