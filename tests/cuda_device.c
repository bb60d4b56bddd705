/*
 * cuda_device.c - device/kvp_device.h and the device side of store/: the device count
 * and its reason when there is none, the build flag, device 0's info, copies, memset and
 * streams (GPU); a pool of device blocks (GPU); and KVP_BACKEND_CUDA refused cleanly
 * where there is no device.
 *
 * One of the files of test_cuda; see cuda_test_util.h.
 */
#include <criterion/criterion.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_test_util.h"
#include "kvp_device.h"
#include "kvp_engine.h"
#include "kvp_model.h"
#include "kvp_store.h"

/* ---- device: runs everywhere -------------------------------------------------------- */

Test(device, count_gives_a_reason_when_zero)
{
	char why[256] = "";
	int n;

	n = kvp_device_count(why, sizeof(why));
	cr_assert_geq(n, 0, "kvp_device_count never fails: %d", n);
	fprintf(stderr, "test_cuda: built with CUDA: %s; devices: %d%s%s\n",
		kvp_device_built() ? "yes" : "no", n, n ? "" : "; why: ", n ? "" : why);
	if (n == 0) {
		cr_assert_neq(why[0], '\0', "no device, and no reason given");
		cr_assert_null(strchr(why, '\n'), "the reason is one line: '%s'", why);
		if (!kvp_device_built())
			cr_assert_not_null(strstr(why, "without CUDA"),
					   "a build without CUDA says so: '%s'", why);
	}
	/* again, and with a small buffer: the same count, the reason cut and terminated */
	char small[8];
	memset(small, 'X', sizeof(small));
	cr_assert_eq(kvp_device_count(small, sizeof(small)), n);
	if (n == 0)
		cr_assert_lt(strnlen(small, sizeof(small)), sizeof(small));
	cr_assert_eq(kvp_device_count(NULL, 0), n, "why may be NULL");
}

/* The compile definition the kernel tests are guarded by matches what was built: a
 * CUDA build whose tests think otherwise would skip every kernel test silently. */
Test(device, build_flag_matches_the_library)
{
	cr_assert_eq(kvp_device_built(), (bool)KVP_TEST_CUDA,
		     "kvp_device_built() is %d but test_cuda was compiled with KVP_TEST_CUDA=%d "
		     "(tests/CMakeLists.txt takes it from KVP_CUDA_ENABLED)",
		     kvp_device_built(), KVP_TEST_CUDA);
	if (!kvp_device_built()) {
		struct kvp_device_info info;
		char err[128] = "";
		cr_assert_eq(kvp_device_open(0, &info, err, sizeof(err)), KVP_EUNSUPPORTED);
		cr_assert_null(kvp_device_alloc(64));
		cr_assert_neq(err[0], '\0');
	}
}

/* ---- device: with a GPU --------------------------------------------------------------- */

Test(device, info_copies_and_streams)
{
	char err[256];
	uint64_t s = 1;

	ct_need_gpu();
	fprintf(stderr, "test_cuda: device 0: %s, sm_%d%d, %d SMs at %d MHz, %.1f of %.1f GiB "
		"free, f16 tensor peak %.1f TFLOP/s\n", ct_info.name, ct_info.sm_major,
		ct_info.sm_minor, ct_info.sm_count, ct_info.clock_khz / 1000,
		(double)ct_info.mem_free / (1u << 30), (double)ct_info.mem_total / (1u << 30),
		ct_info.f16_tflops);
	cr_assert(kvp_device_built());
	cr_assert_neq(ct_info.name[0], '\0');
	cr_assert_eq(ct_info.index, 0);
	cr_assert_gt(ct_info.sm_major, 0);
	cr_assert_gt(ct_info.sm_count, 0);
	cr_assert_gt(ct_info.clock_khz, 0);
	cr_assert_gt(ct_info.mem_total, 0);
	cr_assert_leq(ct_info.mem_free, ct_info.mem_total);
	/* the documented table, in dense f16 FMAs (2 FLOP) per SM per clock: an A100 gives
	 * 108 SMs x 1.41 GHz x 1024 x 2 = 312 TFLOP/s, its datasheet figure */
	int cc = ct_info.sm_major * 10 + ct_info.sm_minor;
	double per = cc == 80 ? 1024 : cc == 86 || cc == 89 ? 512 : cc == 90 ? 2048 : 0;
	double want = 2.0 * (double)ct_info.sm_count * ct_info.clock_khz * 1e3 * per / 1e12;
	cr_assert(fabs(ct_info.f16_tflops - want) <= 0.01 * want + 1e-9,
		  "f16_tflops %.2f, want %.2f (sm_%d, %d SMs at %d kHz)", ct_info.f16_tflops, want,
		  cc, ct_info.sm_count, ct_info.clock_khz);

	/* synchronous copies, odd sizes, memset, device to device */
	const size_t n = (1u << 20) + 13;
	unsigned char *a = ct_xmalloc(n), *b = ct_xmalloc(n);
	for (size_t i = 0; i < n; i++)
		a[i] = (unsigned char)ct_splitmix(&s);
	void *d1 = ct_dev_from(a, n), *d2 = ct_dev_alloc(n);
	cr_assert_eq(kvp_device_copy(d2, d1, n), 0);
	memset(b, 0, n);
	ct_dev_to(b, d2, n);
	cr_assert(memcmp(a, b, n) == 0, "upload, copy, download round trip");
	ct_dev_fill((char *)d2 + 7, 0xA5, 1000);
	ct_dev_to(b, d2, n);
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(b[i], i >= 7 && i < 1007 ? 0xA5 : a[i], "memset: byte %zu", i);

	/* asynchronous copies on a stream, through page-locked memory */
	unsigned char *h = kvp_device_host_alloc(n);
	cr_assert_not_null(h);
	memcpy(h, a, n);
	void *st = ct_stream();
	cr_assert_eq(kvp_device_upload_async(d2, h, n, st), 0);
	memset(b, 0, n);
	cr_assert_eq(kvp_device_stream_sync(st), 0);
	memset(h, 0, n);
	cr_assert_eq(kvp_device_download_async(h, d2, n, st), 0);
	cr_assert_eq(kvp_device_stream_sync(st), 0);
	cr_assert(memcmp(a, h, n) == 0, "async round trip");
	kvp_device_host_free(h);

	/* an index past the last device: KVP_ENOTFOUND, and device 0 still works */
	int cnt = kvp_device_count(NULL, 0);
	err[0] = '\0';
	cr_assert_eq(kvp_device_open(cnt, NULL, err, sizeof(err)), KVP_ENOTFOUND,
		     "device %d of %d", cnt, cnt);
	cr_assert_eq(kvp_device_open(0, NULL, err, sizeof(err)), 0, "%s", err);
	ct_dev_to(b, d1, n);
	cr_assert(memcmp(a, b, n) == 0);
	free(a);
	free(b);
}

/* ---- pool: device blocks -------------------------------------------------------------- */

Test(pool, device_blocks_in_and_out)
{
	const uint32_t cap = 9;
	const size_t bb = 4096 + 96;   /* not a power of two */
	struct kvp_pool *p;
	uint32_t id[9];
	unsigned char *in = ct_xmalloc(bb), *out = ct_xmalloc(bb);

	ct_need_gpu();
	cr_assert_eq(kvp_pool_create(cap, &p), 0);
	cr_assert_not(kvp_pool_on_device(p));
	cr_assert_eq(kvp_pool_block_read(p, 0, out), KVP_EINVAL, "no memory attached yet");
	cr_assert_eq(kvp_pool_attach_device(p, 0), KVP_EINVAL);
	cr_assert_eq(kvp_pool_attach_device(p, bb), 0, "%s", kvp_device_last_error());
	cr_assert(kvp_pool_on_device(p));
	cr_assert_eq(kvp_pool_attach_device(p, bb), KVP_EINVAL, "attach once");
	cr_assert_eq(kvp_pool_attach_memory(p, bb), KVP_EINVAL, "device or host, not both");
	cr_assert_eq(kvp_pool_block_bytes(p), bb);
	char *base = kvp_pool_block_data(p, 0);
	cr_assert_not_null(base);
	for (uint32_t i = 0; i < cap; i++) {
		cr_assert_eq(kvp_pool_alloc(p, &id[i]), 0);
		cr_assert_eq((char *)kvp_pool_block_data(p, id[i]), base + (size_t)id[i] * bb,
			     "block %u at base + id * block_bytes", id[i]);
	}
	cr_assert_null(kvp_pool_block_data(p, cap));
	/* a fresh device pool reads back zeroed, as a host pool does */
	memset(out, 0xAB, bb);
	cr_assert_eq(kvp_pool_block_read(p, id[cap - 1], out), 0, "%s", kvp_device_last_error());
	for (size_t b = 0; b < bb; b++)
		cr_assert_eq(out[b], 0, "fresh block byte %zu is %u", b, out[b]);
	/* each block its own pattern; then read all back */
	for (uint32_t i = 0; i < cap; i++) {
		memset(in, (int)(0x10 + i), bb);
		in[0] = (unsigned char)i;
		in[bb - 1] = (unsigned char)(0xF0 + i);
		cr_assert_eq(kvp_pool_block_write(p, id[i], in), 0, "%s", kvp_device_last_error());
	}
	for (uint32_t i = 0; i < cap; i++) {
		memset(out, 0, bb);
		cr_assert_eq(kvp_pool_block_read(p, id[i], out), 0, "%s", kvp_device_last_error());
		cr_assert_eq(out[0], (unsigned char)i);
		cr_assert_eq(out[bb - 1], (unsigned char)(0xF0 + i));
		for (size_t b = 1; b + 1 < bb; b++)
			cr_assert_eq(out[b], (unsigned char)(0x10 + i), "block %u byte %zu", id[i], b);
	}
	/* and the bytes are where block_data says: a download of the raw address */
	ct_dev_to(out, base + (size_t)id[3] * bb, bb);
	cr_assert_eq(out[0], 3);
	cr_assert_eq(kvp_pool_block_read(p, cap, out), KVP_EINVAL);
	cr_assert_eq(kvp_pool_block_write(p, cap, in), KVP_EINVAL);
	cr_assert_eq(kvp_pool_check(p), 0);
	kvp_pool_destroy(p);
	free(in);
	free(out);
}

/* ---- engine: KVP_BACKEND_CUDA where there is no device --------------------------------- */

Test(engine, cuda_backend_without_a_device_fails_cleanly)
{
	char path[256], err[256], why[256] = "";
	struct kvp_model *m;
	struct kvp_engine *e = NULL;
	int n = kvp_device_count(why, sizeof(why)), rc;

	if (n > 0)
		cr_skip_test("a CUDA device is present (%d): the model and cache tests create the "
			     "CUDA engine", n);
	cr_assert_str_eq(kvp_backend_name(KVP_BACKEND_CPU), "cpu");
	cr_assert_str_eq(kvp_backend_name(KVP_BACKEND_CUDA), "cuda");
	ct_mkmodel("e.gguf", "--vocab 300 --dim 64 --layers 1 --heads 2 --kv-heads 1 --ffn 64 "
			     "--ctx 64 --dtype f16", path, sizeof(path));
	cr_assert_eq(kvp_model_load(path, &m, err, sizeof(err)), 0, "%s", err);

	struct kvp_engine_config cfg = {
		.backend = KVP_BACKEND_CUDA, .device = 0, .err = err, .errlen = sizeof(err),
		.threads = 1, .kv_dtype = KVP_KV_F16, .block_tokens = 16, .max_batch = 64,
	};
	err[0] = '\0';
	rc = kvp_engine_create(m, &cfg, &e);
	fprintf(stderr, "test_cuda: CUDA engine without a device: %s: %s\n", kvp_strerror(rc),
		err);
	cr_assert_lt(rc, 0, "the CUDA engine was created with no device (%s)", why);
	cr_assert_null(e, "*out set by a failed create");
	cr_assert_neq(err[0], '\0', "no reason in cfg.err");
	cr_assert_null(strchr(err, '\n'), "the reason is one line: '%s'", err);
	if (!kvp_device_built())
		cr_assert_eq(rc, KVP_EUNSUPPORTED, "built without CUDA: %s", kvp_strerror(rc));

	/* err is optional; a short one is cut, not overrun */
	cfg.err = NULL;
	cfg.errlen = 0;
	cr_assert_lt(kvp_engine_create(m, &cfg, &e), 0);
	cr_assert_null(e);
	char tiny[6];
	memset(tiny, 'X', sizeof(tiny));
	cfg.err = tiny;
	cfg.errlen = 4;
	cr_assert_lt(kvp_engine_create(m, &cfg, &e), 0);
	cr_assert_lt(strnlen(tiny, 4), 4, "err terminated within errlen");
	cr_assert_eq(tiny[4], 'X', "err written past errlen");

	/* the CPU backend from the same model and config still works */
	cfg.backend = KVP_BACKEND_CPU;
	cfg.err = err;
	cfg.errlen = sizeof(err);
	cr_assert_eq(kvp_engine_create(m, &cfg, &e), 0, "%s", err);
	cr_assert_eq(kvp_engine_backend(e), KVP_BACKEND_CPU);
	kvp_engine_destroy(e);
	kvp_model_free(m);
}
