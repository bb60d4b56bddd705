/*
 * device_cuda.c - kvp_device.h on the CUDA runtime (linked statically: a binary starts on
 * a machine without the NVIDIA driver, and kvp_device_count then says why there is no
 * device instead of the loader refusing to start it).
 *
 * The current device of the CUDA runtime is a per-thread setting, but kvp_device.h
 * promises one device per process usable from any thread: kvp_device_open records the
 * index, and every call below first makes it current on the calling thread (once per
 * thread, remembered in a thread-local). Work another module launches itself (kernels,
 * cuBLAS) runs on whatever device is current on its thread, so a thread that has made
 * any kvp_device_* call since the open is on the right device.
 *
 * Errors: a failed runtime call is remembered per thread for kvp_device_last_error and
 * then cleared from the runtime (cudaGetLastError), so that a kernel launcher checking
 * the runtime's last error afterwards does not see a stale allocation failure.
 */
#include "kvp_device.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include <cuda_runtime_api.h>

/* The device kvp_device_open selected, or -1 (the runtime's default, device 0). */
static atomic_int g_device = -1;
/* The device this thread last made current through bind(), or -1. */
static _Thread_local int t_bound = -1;
/* The last failure of a call made here on this thread. */
static _Thread_local cudaError_t t_err = cudaSuccess;
static _Thread_local char t_msg[192];

static void note(cudaError_t e)
{
	t_err = e;
	(void)cudaGetLastError();   /* clear it: it is recorded here */
}

/* Make the selected device current on this thread. */
static int bind(void)
{
	int d = atomic_load_explicit(&g_device, memory_order_acquire);
	cudaError_t e;

	if (d < 0 || d == t_bound)
		return KVP_OK;
	e = cudaSetDevice(d);
	if (e != cudaSuccess) {
		note(e);
		return KVP_EIO;
	}
	t_bound = d;
	return KVP_OK;
}

static int check(cudaError_t e)
{
	if (e == cudaSuccess)
		return KVP_OK;
	note(e);
	return KVP_EIO;
}

bool kvp_device_built(void)
{
	return true;
}

/* One line saying why cudaGetDeviceCount found nothing. */
static void count_reason(cudaError_t e, char *why, size_t whylen)
{
	int drv = 0;

	if (!why || whylen == 0)
		return;
	switch (e) {
	case cudaErrorNoDevice:
		snprintf(why, whylen, "no CUDA device (the NVIDIA driver reports none)");
		break;
	case cudaErrorInsufficientDriver:
		if (cudaDriverGetVersion(&drv) != cudaSuccess || drv == 0)
			snprintf(why, whylen, "no NVIDIA driver (libcuda.so.1 not found)");
		else
			snprintf(why, whylen,
				 "the NVIDIA driver supports CUDA %d.%d; this build needs %d.%d or newer",
				 drv / 1000, drv % 1000 / 10, CUDART_VERSION / 1000,
				 CUDART_VERSION % 1000 / 10);
		break;
	case cudaErrorSystemDriverMismatch:
		snprintf(why, whylen,
			 "the NVIDIA kernel module and driver library versions differ (reboot or reinstall the driver)");
		break;
	case cudaErrorCompatNotSupportedOnDevice:
		snprintf(why, whylen,
			 "the CUDA forward-compatibility driver does not support this GPU");
		break;
	case cudaErrorDevicesUnavailable:
		snprintf(why, whylen,
			 "every CUDA device is busy or unavailable (compute mode exclusive or prohibited)");
		break;
	case cudaErrorSystemNotReady:
		snprintf(why, whylen, "the GPU system is not ready (is the fabric manager running?)");
		break;
	case cudaErrorNotPermitted:
		snprintf(why, whylen, "not permitted to use the CUDA devices (permissions of /dev/nvidia*)");
		break;
	case cudaErrorInitializationError:
		snprintf(why, whylen, "the CUDA driver failed to initialise (%s)",
			 cudaGetErrorString(e));
		break;
	default:
		snprintf(why, whylen, "CUDA: %s (%s)", cudaGetErrorString(e), cudaGetErrorName(e));
		break;
	}
}

int kvp_device_count(char *why, size_t whylen)
{
	int n = 0;
	cudaError_t e = cudaGetDeviceCount(&n);

	if (e != cudaSuccess) {
		note(e);
		count_reason(e, why, whylen);
		return 0;
	}
	if (n <= 0) {
		count_reason(cudaErrorNoDevice, why, whylen);
		return 0;
	}
	if (why && whylen)
		why[0] = '\0';
	return n;
}

/*
 * Dense F16 tensor-core FMAs (2 FLOP each) per SM per clock with F32 accumulation:
 * sm_80 (A100) 1024, sm_86 / sm_89 512, sm_90 (H100) 2048. A100: 108 SMs x 1.41 GHz x
 * 1024 x 2 = 312 TFLOP/s, its datasheet figure. Other parts: unknown, 0.
 */
static double tensor_fma_per_sm_clock(int major, int minor)
{
	if (major == 8 && minor == 0)
		return 1024;
	if (major == 8 && (minor == 6 || minor == 9))
		return 512;
	if (major == 9 && minor == 0)
		return 2048;
	return 0;
}

int kvp_device_open(int index, struct kvp_device_info *info, char *err, size_t errlen)
{
	char why[160];
	struct cudaDeviceProp prop;
	size_t mfree = 0, mtotal = 0;
	int n, clock_khz = 0;
	cudaError_t e;

	if (err && errlen)
		err[0] = '\0';
	n = kvp_device_count(why, sizeof(why));
	if (index < 0 || index >= n) {
		if (err && errlen) {
			if (n == 0)
				snprintf(err, errlen, "no CUDA device %d: %s", index, why);
			else
				snprintf(err, errlen, "no CUDA device %d (this machine has %d)", index, n);
		}
		return KVP_ENOTFOUND;
	}
	/* CUDA 12 and later create the device's primary context here, so a device that
	 * cannot be used fails now rather than at the first allocation. */
	e = cudaSetDevice(index);
	if (e != cudaSuccess) {
		note(e);
		if (err && errlen)
			snprintf(err, errlen, "CUDA device %d: cudaSetDevice: %s", index,
				 cudaGetErrorString(e));
		return KVP_EIO;
	}
	atomic_store_explicit(&g_device, index, memory_order_release);
	t_bound = index;
	if (!info)
		return KVP_OK;

	memset(info, 0, sizeof(*info));
	e = cudaGetDeviceProperties(&prop, index);
	if (e == cudaSuccess)
		/* cudaDeviceProp.clockRate is gone in CUDA 13; the attribute remains */
		e = cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, index);
	if (e == cudaSuccess)
		e = cudaMemGetInfo(&mfree, &mtotal);
	if (e != cudaSuccess) {
		note(e);
		if (err && errlen)
			snprintf(err, errlen, "CUDA device %d: reading its properties: %s", index,
				 cudaGetErrorString(e));
		return KVP_EIO;
	}
	info->index = index;
	{
		size_t len = strnlen(prop.name, sizeof(prop.name));
		if (len >= sizeof(info->name))
			len = sizeof(info->name) - 1;
		memcpy(info->name, prop.name, len);
		info->name[len] = '\0';
	}
	info->sm_major = prop.major;
	info->sm_minor = prop.minor;
	info->sm_count = prop.multiProcessorCount;
	info->clock_khz = clock_khz;
	info->mem_total = mtotal;
	info->mem_free = mfree;
	info->f16_tflops = 2.0 * tensor_fma_per_sm_clock(prop.major, prop.minor) *
			   prop.multiProcessorCount * (clock_khz * 1e3) / 1e12;
	return KVP_OK;
}

void *kvp_device_alloc(size_t bytes)
{
	void *p = NULL;

	if (bytes == 0 || bind())
		return NULL;
	if (check(cudaMalloc(&p, bytes)))
		return NULL;
	return p;
}

void kvp_device_free(void *dptr)
{
	if (!dptr || bind())
		return;
	(void)check(cudaFree(dptr));
}

void *kvp_device_host_alloc(size_t bytes)
{
	void *p = NULL;

	if (bytes == 0 || bind())
		return NULL;
	if (check(cudaHostAlloc(&p, bytes, cudaHostAllocPortable)))
		return NULL;
	return p;
}

void kvp_device_host_free(void *hptr)
{
	if (!hptr || bind())
		return;
	(void)check(cudaFreeHost(hptr));
}

/*
 * The synchronous calls use the legacy default stream, which waits for the work already
 * queued on every blocking stream (kvp_device_stream_create makes only those) and is
 * then waited for: a copy sees what the engine wrote before it, and its bytes are in
 * place when the call returns (cudaMemcpy alone returns early for device-to-device
 * copies, memsets and pageable uploads).
 */
static int finish(cudaError_t e)
{
	if (e == cudaSuccess)
		e = cudaStreamSynchronize(0);
	return check(e);
}

int kvp_device_upload(void *dst, const void *src, size_t bytes)
{
	if (bytes == 0)
		return KVP_OK;
	if (bind())
		return KVP_EIO;
	return finish(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

int kvp_device_download(void *dst, const void *src, size_t bytes)
{
	if (bytes == 0)
		return KVP_OK;
	if (bind())
		return KVP_EIO;
	return finish(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

int kvp_device_copy(void *dst, const void *src, size_t bytes)
{
	if (bytes == 0)
		return KVP_OK;
	if (bind())
		return KVP_EIO;
	return finish(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
}

int kvp_device_memset(void *dst, int byte, size_t bytes)
{
	if (bytes == 0)
		return KVP_OK;
	if (bind())
		return KVP_EIO;
	return finish(cudaMemset(dst, byte, bytes));
}

int kvp_device_stream_create(void **stream)
{
	cudaStream_t s = NULL;

	*stream = NULL;
	if (bind())
		return KVP_EIO;
	/* a blocking stream: ordered with the legacy default stream (see finish) */
	if (check(cudaStreamCreateWithFlags(&s, cudaStreamDefault)))
		return KVP_EIO;
	*stream = s;
	return KVP_OK;
}

void kvp_device_stream_destroy(void *stream)
{
	if (!stream || bind())
		return;
	(void)check(cudaStreamDestroy((cudaStream_t)stream));
}

int kvp_device_upload_async(void *dst, const void *src, size_t bytes, void *stream)
{
	if (bytes == 0)
		return KVP_OK;
	if (bind())
		return KVP_EIO;
	return check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice,
				     (cudaStream_t)stream));
}

int kvp_device_download_async(void *dst, const void *src, size_t bytes, void *stream)
{
	if (bytes == 0)
		return KVP_OK;
	if (bind())
		return KVP_EIO;
	return check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost,
				     (cudaStream_t)stream));
}

int kvp_device_stream_sync(void *stream)
{
	if (bind())
		return KVP_EIO;
	return check(cudaStreamSynchronize((cudaStream_t)stream));
}

const char *kvp_device_last_error(void)
{
	/* a launch error another module left pending is newer than t_err (note() clears
	 * the runtime's error whenever it records one), so it comes first */
	cudaError_t e = cudaPeekAtLastError();

	if (e == cudaSuccess)
		e = t_err;
	if (e == cudaSuccess)
		return "no error";
	snprintf(t_msg, sizeof(t_msg), "%s (%s)", cudaGetErrorString(e), cudaGetErrorName(e));
	return t_msg;
}
