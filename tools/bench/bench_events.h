/*
 * bench_events.h - kvprefix-bench events: the publisher's part (bench_events.c, the
 * command) and the fleet index's (bench_fleet.c).
 */
#ifndef KVP_BENCH_EVENTS_H
#define KVP_BENCH_EVENTS_H

#include <stdint.h>

struct fleet_result {
	uint32_t instances;
	uint64_t blocks;              /* BlockStored blocks indexed */
	double ingest_blocks_per_s;   /* in process: decode and apply, one thread */
	double ingest_events_per_s;   /* the same, events */
	double remove_blocks_per_s;   /* BlockRemoved, in process */
	double bytes_per_block;       /* resident memory grown per block indexed */
	double match_us;              /* kvp_fleet_match, a query of query_tokens */
	double hash_us;               /* the query's chained keys alone */
	uint32_t query_tokens;
	double e2e_blocks_per_s;      /* over ZeroMQ into a real fleet index */
	double fleet_rtt_us;          /* FLEET round trip to it, median */
	double lookup_rtt_us;         /* LOOKUP round trip of the same tokens, median */
};

/* STATS of the daemon on c: obj.key (obj NULL: a top-level key); NAN when absent. */
struct kvp_client;
double events_stat(struct kvp_client *c, const char *obj, const char *key);

/* The fleet index with `instances` engines and `blocks` blocks: in process, then
 * through a kvprefixd --kv-events-sub fed over ipc in dir. 0, or -1 (message). */
int bench_fleet(uint32_t instances, uint64_t blocks, uint32_t query_tokens, const char *dir,
		struct fleet_result *r);

#endif
