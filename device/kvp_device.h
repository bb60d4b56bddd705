/*
 * kvp_device.h - the GPU runtime as the rest of kvprefix sees it: whether a CUDA device
 * is there, device memory, pinned host memory, copies and streams. No CUDA type appears
 * here; a stream is a void *. Built from device/device_cuda.c when KVP_CUDA is on (CUDA
 * runtime, linked statically, so binaries start on machines without a driver), else
 * from device/device_none.c, where every call fails with KVP_EUNSUPPORTED and
 * kvp_device_count reports "built without CUDA".
 *
 * Threading: the calls may be made from any thread; device memory and streams belong
 * to the device selected by kvp_device_open (one device per process).
 */
#ifndef KVP_DEVICE_H
#define KVP_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_status.h"

/* Whether this build has the CUDA backend at all. */
bool kvp_device_built(void);

/* Number of usable CUDA devices (> 0), or 0 with a one-line reason in why (no device,
 * no driver, driver too old for this runtime, built without CUDA). Never fails
 * otherwise; safe to call more than once. */
int kvp_device_count(char *why, size_t whylen);

struct kvp_device_info {
	int index;
	char name[128];
	int sm_major, sm_minor;      /* compute capability */
	int sm_count;                /* multiprocessors */
	int clock_khz;               /* peak SM clock */
	size_t mem_total, mem_free;  /* bytes */
	/* dense F16 tensor-core peak with F32 accumulation, TFLOP/s: 2 FLOP per FMA x
	 * FMAs per SM per clock (sm_80 1024, sm_86/89 512, sm_90 2048; 0 when unknown) x
	 * SMs x clock. An A100 (108 SMs, 1.41 GHz) comes out at 312. */
	double f16_tflops;
};

/* Select device index for this process and fill info (may be NULL). KVP_EUNSUPPORTED
 * (built without CUDA), KVP_ENOTFOUND (no such device), KVP_EIO with err set. */
int kvp_device_open(int index, struct kvp_device_info *info, char *err, size_t errlen);

/* Device memory. NULL on failure. */
void *kvp_device_alloc(size_t bytes);
void kvp_device_free(void *dptr);
/* Page-locked host memory, for staging copies. NULL on failure. */
void *kvp_device_host_alloc(size_t bytes);
void kvp_device_host_free(void *hptr);

/* Synchronous copies and fill (they wait for the copy). KVP_EIO on a CUDA error. */
int kvp_device_upload(void *dst, const void *src, size_t bytes);
int kvp_device_download(void *dst, const void *src, size_t bytes);
int kvp_device_copy(void *dst, const void *src, size_t bytes);   /* device to device */
int kvp_device_memset(void *dst, int byte, size_t bytes);

/* Streams: asynchronous copies (host side page-locked for them to overlap). */
int kvp_device_stream_create(void **stream);
void kvp_device_stream_destroy(void *stream);
int kvp_device_upload_async(void *dst, const void *src, size_t bytes, void *stream);
int kvp_device_download_async(void *dst, const void *src, size_t bytes, void *stream);
/* Wait for the stream; KVP_EIO (and the CUDA error string in the log of the caller,
 * via kvp_device_last_error) if a kernel on it failed. */
int kvp_device_stream_sync(void *stream);
/* The last CUDA error of this thread as a string ("no error" when none). */
const char *kvp_device_last_error(void);

#endif
