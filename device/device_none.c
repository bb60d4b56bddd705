/*
 * device_none.c - kvp_device.h in a build without CUDA (KVP_CUDA=OFF, or AUTO without
 * nvcc): no device is ever there, allocations return NULL and every other call fails
 * with KVP_EUNSUPPORTED, so callers need no #ifdef of their own.
 */
#include "kvp_device.h"

#include <stdio.h>

#define NO_CUDA "built without CUDA (configure with -DKVP_CUDA=ON)"

bool kvp_device_built(void)
{
	return false;
}

int kvp_device_count(char *why, size_t whylen)
{
	if (why && whylen)
		snprintf(why, whylen, "%s", NO_CUDA);
	return 0;
}

int kvp_device_open(int index, struct kvp_device_info *info, char *err, size_t errlen)
{
	if (err && errlen)
		snprintf(err, errlen, "no CUDA device %d: %s", index, NO_CUDA);
	return KVP_EUNSUPPORTED;
}

void *kvp_device_alloc(size_t bytes)
{
	return NULL;
}

void kvp_device_free(void *dptr)
{
}

void *kvp_device_host_alloc(size_t bytes)
{
	return NULL;
}

void kvp_device_host_free(void *hptr)
{
}

int kvp_device_upload(void *dst, const void *src, size_t bytes)
{
	return KVP_EUNSUPPORTED;
}

int kvp_device_download(void *dst, const void *src, size_t bytes)
{
	return KVP_EUNSUPPORTED;
}

int kvp_device_copy(void *dst, const void *src, size_t bytes)
{
	return KVP_EUNSUPPORTED;
}

int kvp_device_memset(void *dst, int byte, size_t bytes)
{
	return KVP_EUNSUPPORTED;
}

int kvp_device_stream_create(void **stream)
{
	*stream = NULL;
	return KVP_EUNSUPPORTED;
}

void kvp_device_stream_destroy(void *stream)
{
}

int kvp_device_upload_async(void *dst, const void *src, size_t bytes, void *stream)
{
	return KVP_EUNSUPPORTED;
}

int kvp_device_download_async(void *dst, const void *src, size_t bytes, void *stream)
{
	return KVP_EUNSUPPORTED;
}

int kvp_device_stream_sync(void *stream)
{
	return KVP_EUNSUPPORTED;
}

const char *kvp_device_last_error(void)
{
	return NO_CUDA;
}
