/*
 * kvp_le.h - little-endian scalars in byte buffers, for every format kvprefix reads or
 * writes (wire frames, GGUF files). Byte by byte, so any alignment and any host byte
 * order works; compilers turn each into one load or store on little-endian hosts.
 *
 * The caller has checked that the bytes are there: these read and write exactly
 * 2, 4 or 8 bytes at p and check nothing.
 */
#ifndef KVP_LE_H
#define KVP_LE_H

#include <stdint.h>
#include <string.h>

static inline uint16_t kvp_le_get_u16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (uint16_t)p[1] << 8);
}

static inline uint32_t kvp_le_get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static inline uint64_t kvp_le_get_u64(const uint8_t *p)
{
	return (uint64_t)kvp_le_get_u32(p) | (uint64_t)kvp_le_get_u32(p + 4) << 32;
}

static inline float kvp_le_get_f32(const uint8_t *p)
{
	uint32_t bits = kvp_le_get_u32(p);
	float v;

	memcpy(&v, &bits, sizeof(v));
	return v;
}

static inline void kvp_le_put_u16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static inline void kvp_le_put_u32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static inline void kvp_le_put_u64(uint8_t *p, uint64_t v)
{
	kvp_le_put_u32(p, (uint32_t)v);
	kvp_le_put_u32(p + 4, (uint32_t)(v >> 32));
}

static inline void kvp_le_put_f32(uint8_t *p, float v)
{
	uint32_t bits;

	memcpy(&bits, &v, sizeof(bits));
	kvp_le_put_u32(p, bits);
}

#endif
