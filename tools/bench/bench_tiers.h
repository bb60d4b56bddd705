/*
 * bench_tiers.h - kvprefix-bench tiers: its Redis part (bench_tiers_redis.c), called by
 * the command (bench_tiers.c).
 */
#ifndef KVP_BENCH_TIERS_H
#define KVP_BENCH_TIERS_H

#include <stdbool.h>
#include <stdint.h>

#define TIERS_MAX_ROUNDS 16

struct tiers_redis_result {
	bool ran;                        /* false: no redis-server here (skipped, said why) */
	double cold_ms[TIERS_MAX_ROUNDS], redis_ms[TIERS_MAX_ROUNDS];
	uint32_t cached[TIERS_MAX_ROUNDS];
	double fetch_gbs;                /* bytes fetched over the fetches' time */
	double bench_gbs;                /* redis-benchmark GET of values of the same size */
	uint64_t value_bytes;
	uint32_t rounds;
};

/* tiers.<tier>.<key> of the STATS of the daemon on c; NAN when absent (bench_tiers.c). */
struct kvp_client;
double tiers_stat(struct kvp_client *c, const char *tier, const char *key);

/* Start redis-server on a socket in dir and two kvprefixd's on model sharing it; per
 * round a new prompt computed by the first (TTFT cold), then asked of the second
 * (TTFT from Redis); then redis-benchmark's GET rate on values of a block's record
 * size, one connection, pipelined as the daemon fetches. 0, or -1 (message printed). */
int bench_tiers_redis(const char *model, const char *dir, uint32_t prompt_tokens,
		      uint32_t rounds, struct tiers_redis_result *res);

#endif
