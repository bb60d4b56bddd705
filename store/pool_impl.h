/*
 * pool_impl.h - private to store/: the block pool's layout, shared by pool.c (states,
 * free list, host memory) and pool_device.c (device memory, block copies).
 */
#ifndef KVP_POOL_IMPL_H
#define KVP_POOL_IMPL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NIL UINT32_MAX

struct kvp_pool {
	uint32_t capacity;
	uint32_t free_head;
	uint32_t n_free;
	uint32_t n_cached;
	uint32_t n_referenced;
	uint8_t *state;       /* (capacity) enum kvp_block_state */
	uint32_t *refs;       /* (capacity) reference counts */
	uint32_t *next;       /* (capacity) free list links, NIL-terminated */
	uint8_t *data;        /* (capacity, block_bytes) KV bytes, or NULL (index-only);
	                         device memory when on_device */
	size_t block_bytes;
	size_t data_bytes;    /* mapping (or device allocation) length */
	bool on_device;       /* data is one kvp_device_alloc */
	void *staging;        /* (block_bytes) page-locked host buffer of a device pool */
	/* a host pool too large to make resident at attach: the thread that does it */
	pthread_t populator;
	bool populating;      /* populator started (joined by destroy) */
	_Atomic bool stop_populating;
};

#endif
