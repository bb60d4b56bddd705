/*
 * bench_membw.c - the read bandwidth probe of bench_membw.h: each thread of a pool sums
 * its contiguous share of a buffer, 32 bytes a load (AVX2 where the CPU has it), as one
 * sequential stream or as four interleaved ones.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "bench.h"
#include "bench_membw.h"
#include "kvp_cpu.h"

/* Sum n bytes (a multiple of 256) as S interleaved streams, one from each S-th: one
 * sequential stream is what STREAM times; a thread that reads several rows at once,
 * as the kernels do, keeps more misses in flight. */
#if defined(__x86_64__)
__attribute__((target("avx2"), always_inline)) static inline uint64_t
read_avx2(const uint8_t *p, size_t n, const int S)
{
	const size_t q = n / (size_t)S;
	__m256i s[4] = { _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
			 _mm256_setzero_si256() };

	for (size_t i = 0; i < q; i += 64 * (size_t)(5 - S))
		for (int t = 0; t < 4; t++) {
			const __m256i *v = (const __m256i *)(p + (size_t)(t % S) * q + i +
							      64 * (size_t)(t / S));

			s[t] = _mm256_add_epi64(s[t], _mm256_add_epi64(_mm256_load_si256(v),
								       _mm256_load_si256(v + 1)));
		}
	s[0] = _mm256_add_epi64(_mm256_add_epi64(s[0], s[1]), _mm256_add_epi64(s[2], s[3]));
	return (uint64_t)_mm256_extract_epi64(s[0], 0) + (uint64_t)_mm256_extract_epi64(s[0], 3);
}

__attribute__((target("avx2"))) static uint64_t read1_avx2(const uint8_t *p, size_t n)
{
	return read_avx2(p, n, 1);
}

__attribute__((target("avx2"))) static uint64_t read4_avx2(const uint8_t *p, size_t n)
{
	return read_avx2(p, n, 4);
}
#endif

static uint64_t read_plain(const uint8_t *p, size_t n, int S)
{
	const size_t q = n / (size_t)S;
	uint64_t sum[4] = { 0 };

	for (size_t i = 0; i < q; i += 8)
		for (int t = 0; t < S; t++) {
			uint64_t v;

			memcpy(&v, p + (size_t)t * q + i, 8);
			sum[t] += v;
		}
	return sum[0] + sum[1] + sum[2] + sum[3];
}

static void read_worker(void *arg, int ith, int nth)
{
	struct bench_read_job *r = arg;
	size_t units = r->bytes / 256, u0 = units * (size_t)ith / (size_t)nth;
	size_t u1 = units * (size_t)(ith + 1) / (size_t)nth;
	const uint8_t *p = r->p + u0 * 256;
	const size_t n = (u1 - u0) * 256;
	uint64_t s;

#if defined(__x86_64__)
	if (__builtin_cpu_supports("avx2"))
		s = r->streams == 4 ? read4_avx2(p, n) : read1_avx2(p, n);
	else
#endif
		s = read_plain(p, n, r->streams);
	r->sink[ith % 64] += s;
}


void bench_read_pass(struct kvp_threadpool *tp, struct bench_read_job *job)
{
	kvp_threadpool_run(tp, read_worker, job);
}

double bench_read_gbs(struct kvp_threadpool *tp, const void *p, size_t bytes, int streams,
		      int reps)
{
	struct bench_read_job *job = calloc(1, sizeof(*job));
	double best = 0.0;

	if (!job)
		return 0.0;
	*job = (struct bench_read_job){ .p = p, .bytes = bytes, .streams = streams };
	bench_read_pass(tp, job);   /* warm: TLB, page tables */
	for (int i = 0; i < reps; i++) {
		struct timespec t0, t1;
		double s;

		clock_gettime(CLOCK_MONOTONIC, &t0);
		bench_read_pass(tp, job);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
		if (s > 0 && (double)bytes / s / 1e9 > best)
			best = (double)bytes / s / 1e9;
	}
	bench_sink += job->sink[0];
	free(job);
	return best;
}
