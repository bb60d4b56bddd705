/*
 * kvp_clock.h - CLOCK_MONOTONIC in nanoseconds, for timing, deadlines and rate limits.
 * Any thread; never fails on Linux.
 */
#ifndef KVP_CLOCK_H
#define KVP_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t kvp_clock_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#endif
