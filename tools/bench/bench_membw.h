/*
 * bench_membw.h - the read bandwidth of memory, as the kernels could read it: a pass of
 * a thread pool's threads over a buffer, summing it (bench_membw.c). kvprefix-bench
 * kernels and engine compare decode's bytes per second with it.
 */
#ifndef KVP_BENCH_MEMBW_H
#define KVP_BENCH_MEMBW_H

#include <stddef.h>
#include <stdint.h>

struct kvp_threadpool;

struct bench_read_job {
	const uint8_t *p;       /* 64-byte aligned */
	size_t bytes;           /* read in whole 256-byte units; a tail is left */
	int streams;            /* 1: STREAM's sequential read; 4: as the kernels read */
	uint64_t sink[64];      /* the sums, so the reads are not optimised away */
};

/* One pass of every thread of tp over its share of job's bytes. */
void bench_read_pass(struct kvp_threadpool *tp, struct bench_read_job *job);

/* GB/s of the best of reps passes over bytes at p (64-byte aligned) on tp's threads. */
double bench_read_gbs(struct kvp_threadpool *tp, const void *p, size_t bytes, int streams,
		      int reps);

#endif
