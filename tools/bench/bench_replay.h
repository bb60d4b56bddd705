/*
 * bench_replay.h - kvprefix-bench replay: its offline mode (bench_replay_offline.c),
 * called by the command (bench_replay.c).
 */
#ifndef KVP_BENCH_REPLAY_H
#define KVP_BENCH_REPLAY_H

#include <stdbool.h>
#include <stddef.h>

struct kvp_trace;

/* A pool size: blocks, or a percentage of the trace's distinct blocks. */
struct offline_cap {
	double value;
	bool percent;
};

/* The trace through the index in process at n pool sizes: leaf-first LRU and the
 * furthest-next-use bound, a table and the JSON line on stdout. 0, or -1 (message
 * printed). */
int bench_replay_offline(const struct kvp_trace *tr, const struct offline_cap *caps, size_t n);

#endif
