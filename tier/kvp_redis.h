/*
 * kvp_redis.h - the Redis tier: KV blocks shared between daemons (machines) through a
 * Redis server, with hiredis, on a thread of the tier's own.
 *
 *   put     a block the engine computed: its record (the disk tier's slot format,
 *           docs/tiers.md) queued and SET by the thread, EX the TTL if one is set;
 *           a full queue, or Redis down, drops it (counted)
 *   fetch   the blocks keys[0 .. n) of a prompt in one pipeline of GETs (512 KiB of
 *           values in flight; none asked after the first bad one);
 *           each value is checked (record header and checksums, tier fingerprint,
 *           key, parent key, namespace root, tokens) and copied into the caller's
 *           buffer; the leading good ones count, a bad one is a miss (counted)
 *
 * Keys: "kvp:1:" FINGERPRINT ":" ROOT ":" KEY in hex, so a namespace (tenant, adapter,
 * salt) and a model never read another's. Redis down: puts are dropped, fetches find
 * nothing, the thread reconnects with backoff (0.1 s doubling to 5 s) and the log
 * says so once each way.
 *
 * Threads: every function but notify belongs to one owner thread; completions come
 * back through kvp_redis_poll after notify (on the tier's thread) says there are some.
 */
#ifndef KVP_REDIS_H
#define KVP_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_disk.h"
#include "kvp_index.h"

struct kvp_redis;

struct kvp_redis_config {
	const char *url;             /* redis://HOST:PORT, or unix:PATH */
	const char *password;        /* AUTH; NULL or "": none */
	uint32_t ttl_s;              /* EX of each SET; 0: none (Redis's memory policy) */
	const char *model;           /* as the disk tier's (tier_fingerprint) */
	uint32_t block_tokens;
	const char *kv_dtype;
	size_t block_bytes;          /* 0: an index's blocks, keys and tokens only */
	size_t queue_bytes;          /* puts queued at once */
	void (*notify)(void *arg);
	void *notify_arg;
};

struct kvp_redis_stats {
	uint64_t writes, write_bytes;   /* blocks SET */
	uint64_t dropped;               /* puts not written: queue full, or Redis down */
	uint64_t fetches;               /* pipelined fetches (round trips) */
	uint64_t fetch_us;              /* their time, summed */
	uint64_t hits, hit_bytes;       /* blocks fetched and good */
	uint64_t verify_failures;       /* values that did not check out */
	uint64_t errors;                /* connection and command errors */
	bool connected;
};

/* KVP_EINVAL with *why when the URL is neither form. Never waits for Redis: the thread
 * connects. */
int kvp_redis_open(const struct kvp_redis_config *cfg, struct kvp_redis **out, char *why,
		   size_t whylen);
/* Writes still queued are given up; fetches in flight complete first. NULL is fine. */
void kvp_redis_close(struct kvp_redis *r);

/* Queue a block's SET (m and kv copied). KVP_OK, KVP_EFULL (queue full: dropped),
 * KVP_ENOMEM. */
int kvp_redis_put(struct kvp_redis *r, const struct kvp_disk_meta *m, const void *kv);

/*
 * Fetch blocks keys[0 .. n): block i's parent is keys[i - 1] (parent0 for i = 0), its
 * tokens tokens[i * block_tokens ..], its KV goes to dst[i] (block_bytes; dst NULL
 * for an index's blocks, which have none). done(arg,
 * good) comes from kvp_redis_poll with good: how many leading blocks are filled and
 * checked. KVP_OK, KVP_ENOMEM (nothing queued).
 */
int kvp_redis_fetch(struct kvp_redis *r, struct kvp_key root, struct kvp_key parent0,
		    const struct kvp_key *keys, const uint32_t *tokens, uint32_t n,
		    void *const *dst, void (*done)(void *arg, uint32_t good), void *arg);

/* Delete every block of namespace *root from Redis, or (root NULL) every block of this
 * tier fingerprint (ADMIN CLEAR), after the writes queued before; on the tier's thread
 * (SCAN and UNLINK). KVP_OK or KVP_ENOMEM. */
int kvp_redis_clear(struct kvp_redis *r, const struct kvp_key *root);

size_t kvp_redis_poll(struct kvp_redis *r);
/* Whether the connection went up or down since the last call (its first state counts
 * as a change): true with a line for the log in msg. */
bool kvp_redis_take_change(struct kvp_redis *r, char *msg, size_t len);
void kvp_redis_get_stats(const struct kvp_redis *r, struct kvp_redis_stats *st);

#endif
