/*
 * kvp_disk.h - the disk tier: KV blocks evicted from the pool kept in one file of
 * fixed-size slots, found again by their chained key, and still there after a restart.
 *
 *   DIR/manifest   what the slots were written for: format version, the model (its
 *                  namespace string, fingerprint included), block size, KV dtype and
 *                  bytes a block. Anything different at open: every slot is dropped
 *                  (a cold start, and *why says what differed).
 *   DIR/blocks     slot i at i * slot_bytes: a header (magic, version, key, parent key,
 *                  namespace root, a sequence number, the checksums), the block's
 *                  tokens, then its KV bytes. docs/tiers.md gives the byte layout.
 *
 * A block is found by its key and accepted only when its parent key, namespace root
 * and tokens are the ones asked for, and, when read, the header's and the KV bytes'
 * XXH3-64 checksums hold: a torn, stale or crafted slot costs a miss, never wrong KV.
 *
 * Capacity: a fixed number of slots. When none is free, the least recently used block
 * that no other block on disk continues (leaf first, as the tree evicts) makes room;
 * a block being written or read is never the one.
 *
 * Threads: every function but the notify callback belongs to one owner thread (the
 * daemon's event loop). Writes and reads run on a thread of the tier's own; their
 * completions come back through kvp_disk_poll on the owner thread, after notify (if
 * set) is called on the tier's thread to say there is something to poll. Nothing the
 * owner calls waits for the disk, except kvp_disk_open (the scan of a warm start) and
 * kvp_disk_close / kvp_disk_drain (which finish the queued writes).
 *
 * Memory: written blocks are copied into a bounded staging area first; when it is
 * full the block is not kept (kvp_disk_put says so and it is counted).
 *
 * Memory mode (dir NULL): the same tier with its slots in host memory instead of a
 * file: the host RAM tier under a GPU pool. Nothing survives the process; a block it
 * drops to make room goes to evicted (the disk tier below it) instead of away.
 */
#ifndef KVP_DISK_H
#define KVP_DISK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_index.h"

struct kvp_disk;
struct kvp_disk_meta;

struct kvp_disk_config {
	const char *dir;             /* created if missing (one level); NULL: memory mode */
	uint64_t capacity_bytes;     /* slots = capacity_bytes / slot bytes, at least 1 */
	const char *model;           /* the namespace string: name@fingerprint */
	uint32_t block_tokens;
	const char *kv_dtype;        /* "f32" or "f16" */
	size_t block_bytes;          /* KV bytes of one block */
	size_t staging_bytes;        /* writes queued at once (at least one block's) */
	void (*notify)(void *arg);   /* on the tier's thread: completions to poll */
	void *notify_arg;
	/* called (owner thread) with each block dropped to make room, before its slot is
	 * reused: kv valid for the call (memory mode only; the next tier down keeps it) */
	void (*evicted)(void *arg, const struct kvp_disk_meta *m, const void *kv);
	void *evicted_arg;
	/* called (owner thread) with each block once probes can find it (added: a put, or a
	 * block found at a warm open; m->tokens valid) and with each one as it leaves the
	 * index, whatever the reason (added false; m->tokens NULL). NULL: none */
	void (*watch)(void *arg, const struct kvp_disk_meta *m, bool added);
	void *watch_arg;
};

/* What a block is: its key, its parent's key (the namespace root for the first block
 * of a prompt), the root, and its block_tokens tokens. */
struct kvp_disk_meta {
	struct kvp_key key;
	struct kvp_key parent;
	struct kvp_key root;
	const uint32_t *tokens;
};

struct kvp_disk_stats {
	uint64_t slots, used;        /* capacity and blocks held (written or being written) */
	uint64_t slot_bytes;
	uint64_t writes, write_bytes, write_errors;
	uint64_t dropped;            /* puts refused: staging full, or no slot to take */
	uint64_t evictions;          /* blocks dropped to make room */
	uint64_t reads, read_bytes;
	uint64_t verify_failures;    /* reads whose header, tokens or checksum did not hold */
	uint64_t read_errors;
	uint64_t warm_blocks;        /* blocks found at open */
};

/*
 * Open (or create) the tier. KVP_OK with *out; *why (if non-NULL) is then "" for a warm
 * start or says why it started cold. KVP_EINVAL (a size of 0, block_tokens out of
 * range), KVP_EIO (the directory or a file cannot be made or read: why says which and
 * errno's words), KVP_ENOMEM.
 */
int kvp_disk_open(const struct kvp_disk_config *cfg, struct kvp_disk **out, char *why,
		  size_t whylen);
/* Finish the queued writes, stop the thread, close the files. NULL is fine. Blocks
 * being read are abandoned (their completions never come). */
void kvp_disk_close(struct kvp_disk *d);
/* Wait until every queued write is on the file (SIGTERM's flush). */
void kvp_disk_drain(struct kvp_disk *d);

/* Keep a block: its metadata and KV bytes are copied, the write queued. KVP_OK;
 * KVP_EFULL when the staging area is full or every slot is busy (the block is not
 * kept, counted as dropped); KVP_EEXIST when the same block is already held (nothing
 * to do). kv must hold block_bytes. */
int kvp_disk_put(struct kvp_disk *d, const struct kvp_disk_meta *m, const void *kv);

/*
 * How many of the blocks keys[0 .. n) follow one another on disk: block i's key is
 * keys[i], its parent keys[i - 1] (parent0 for i = 0), its root root and its tokens
 * tokens[i * block_tokens ..]. Stops at the first that is missing. A block still being
 * written counts: a fetch of it runs after its write (the thread keeps their order).
 * Counts as use for the LRU. Never allocates.
 */
uint32_t kvp_disk_probe(struct kvp_disk *d, struct kvp_key root, struct kvp_key parent0,
			const struct kvp_key *keys, const uint32_t *tokens, uint32_t n);

/*
 * Read block m (found by kvp_disk_probe) into dst (block_bytes) on the tier's thread.
 * done(arg, status) comes from kvp_disk_poll: KVP_OK with dst filled; KVP_ENOTFOUND
 * when the slot no longer holds that block or a checksum fails (dst unspecified; the
 * slot is dropped, counted in verify_failures); KVP_EIO. Returns KVP_ENOTFOUND at once
 * when the block is not held (nothing queued), KVP_ENOMEM.
 */
int kvp_disk_fetch(struct kvp_disk *d, const struct kvp_disk_meta *m, void *dst,
		   void (*done)(void *arg, int status), void *arg);

/* Handle what the tier's thread finished: writes become readable, fetches call their
 * done. Returns how many completions it handled. */
size_t kvp_disk_poll(struct kvp_disk *d);

/* Drop every block (ADMIN CLEAR of everything). Blocks being read are dropped when
 * their read completes. */
void kvp_disk_clear(struct kvp_disk *d);

/* Up to max blocks out, least recently used leaf first, each through evicted (memory
 * mode: a stop hands the host tier's blocks to the disk). Returns how many: 0 once
 * none is left that is not being read or written. */
size_t kvp_disk_evict_some(struct kvp_disk *d, size_t max);

/* Drop every block of namespace root (ADMIN CLEAR of one namespace), their slots'
 * headers erased too so that a restart does not find them. Returns how many. O(slots). */
size_t kvp_disk_clear_ns(struct kvp_disk *d, struct kvp_key root);

void kvp_disk_get_stats(const struct kvp_disk *d, struct kvp_disk_stats *st);
/* Index, LRU and slot accounting consistent: 0 or KVP_EINTERNAL. O(slots^2): for
 * tests, on small tiers. */
int kvp_disk_check(const struct kvp_disk *d);

#endif
