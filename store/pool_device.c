/*
 * pool_device.c - a pool's KV bytes in GPU memory, and copies of one block in and out
 * of host memory for either kind of pool.
 *
 *   host pool:    data ──mmap──▶ [ block 0 | block 1 | ... ]       read/write: memcpy
 *   device pool:  data ──cudaMalloc──▶ [ block 0 | block 1 | ... ] (device addresses)
 *                 staging ──▶ [ one block, page-locked ]
 *                 read:  block ──download──▶ staging ──memcpy──▶ dst
 *                 write: src ──memcpy──▶ staging ──upload──▶ block
 *
 * Block i sits at data + i * block_bytes in both, so kvp_pool_block_data is the same
 * arithmetic; for a device pool it is a device address, which only the CUDA engine
 * dereferences. The copies go through the one staging buffer, so like the rest of the
 * metadata they belong to the pool's owner thread. Device memory and the staging buffer
 * come from kvp_device.h (device/device_cuda.c or device_none.c), never from the
 * allocation hook of kvp_store_set_allocator, which covers the metadata.
 */
#include "kvp_store.h"
#include "kvp_device.h"
#include "pool_impl.h"

#include <string.h>

int kvp_pool_attach_device(struct kvp_pool *p, size_t block_bytes)
{
	size_t total;
	void *dev, *staging;

	if (!kvp_device_built())
		return KVP_EUNSUPPORTED;
	if (p->data || block_bytes == 0 ||
	    __builtin_mul_overflow((size_t)p->capacity, block_bytes, &total))
		return KVP_EINVAL;
	dev = kvp_device_alloc(total);
	if (!dev)
		return KVP_ENOMEM;
	/* zeroed, as a host pool's fresh pages are: a block reads back the same way from
	 * either kind before anything is written to it */
	if (kvp_device_memset(dev, 0, total))
		goto out_free_dev;
	staging = kvp_device_host_alloc(block_bytes);
	if (!staging)
		goto out_free_dev;
	p->data = dev;
	p->block_bytes = block_bytes;
	p->data_bytes = total;
	p->on_device = true;
	p->staging = staging;
	return KVP_OK;

out_free_dev:
	kvp_device_free(dev);
	return KVP_ENOMEM;
}

bool kvp_pool_on_device(const struct kvp_pool *p)
{
	return p->on_device;
}

int kvp_pool_block_read(const struct kvp_pool *p, uint32_t id, void *dst)
{
	const uint8_t *src;

	if (!p->data || id >= p->capacity)
		return KVP_EINVAL;
	src = p->data + (size_t)id * p->block_bytes;
	if (!p->on_device) {
		memcpy(dst, src, p->block_bytes);
		return KVP_OK;
	}
	if (kvp_device_download(p->staging, src, p->block_bytes))
		return KVP_EIO;
	memcpy(dst, p->staging, p->block_bytes);
	return KVP_OK;
}

int kvp_pool_block_write(struct kvp_pool *p, uint32_t id, const void *src)
{
	uint8_t *dst;

	if (!p->data || id >= p->capacity)
		return KVP_EINVAL;
	dst = p->data + (size_t)id * p->block_bytes;
	if (!p->on_device) {
		memcpy(dst, src, p->block_bytes);
		return KVP_OK;
	}
	memcpy(p->staging, src, p->block_bytes);
	if (kvp_device_upload(dst, p->staging, p->block_bytes))
		return KVP_EIO;
	return KVP_OK;
}
