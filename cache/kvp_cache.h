/*
 * kvp_cache.h - the index and the pool working together, with leases and counters.
 *
 * This is everything kvprefixd does to a request short of I/O, so that tests can drive
 * it directly. It ties each tree node to one pool block:
 *
 *     tree node (key, parent, tokens, block id) ──▶ pool block id
 *     node pinned k times  <=>  pool block REFERENCED with k references
 *     node unpinned        <=>  pool block CACHED (evictable once it is a leaf)
 *
 * lookup  : match the longest verified prefix; with pin, every matched block is pinned
 *           under a new lease that belongs to `owner` (a connection).
 * insert  : match, then add the remaining full blocks, taking free blocks from the pool
 *           and evicting least recently used unpinned leaves when it is empty. When
 *           nothing is evictable, it stops early (what fit is cached) and says so.
 * release : unpin a lease; release_owner unpins every lease of an owner (disconnect).
 *
 * Threading: one owner thread. Memory: a lookup without pin never allocates; a failed
 * allocation returns KVP_ENOMEM with every structure valid: a lookup changes nothing,
 * an insert keeps the blocks it added before the failure (res says how many).
 */
#ifndef KVP_CACHE_H
#define KVP_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_index.h"
#include "kvp_store.h"

struct kvp_cache;

struct kvp_cache_config {
	uint32_t block_tokens;      /* 1..KVP_BLOCK_TOKENS_MAX */
	uint32_t capacity_blocks;   /* pool size */
	uint32_t max_tokens;        /* longest request accepted */
	uint32_t max_leases;        /* leases one owner may hold at once */
	uint32_t tenant_quota;      /* most blocks one namespace may hold; 0: no quota */
	int eviction;               /* enum kvp_evict_policy of the pool's evictions */
};

/* The owner of administrative pins (kvp_cache_admin_pin): never a connection. */
#define KVP_CACHE_ADMIN_OWNER UINT64_MAX
/* The owner of keeps (kvp_cache_keep): never a connection. Owners from here up have no
 * lease limit. */
#define KVP_CACHE_KEEP_OWNER (UINT64_MAX - 1)

/*
 * What became of each block of a query (miss diagnostics). A query's tokens are split
 * by fate: CACHED (matched), then the full blocks after the match, all counted under
 * the fate of the first of them, then the tokens of a last partial block (PARTIAL:
 * never cached, whatever happens). The fate of a block not matched:
 *   POOL, QUOTA, ADMIN  it was cached and left: evicted to make room, evicted because
 *                       its tenant was at its quota, or cleared or evicted by an
 *                       administrator (or a stop's flush). Departures are remembered
 *                       for the last KVP_CACHE_GONE_PER_BLOCK x capacity of them.
 *   OTHER_NS            the same tokens, after the same prefix, are cached in another
 *                       namespace (another tenant, adapter or salt). Only root may be
 *                       told: to the tenant it is NEW, or it would leak across tenants.
 *   NEW                 none of these: never cached, or left too long ago to remember.
 */
enum kvp_fate {
	KVP_FATE_CACHED,
	KVP_FATE_NEW,
	KVP_FATE_POOL,
	KVP_FATE_QUOTA,
	KVP_FATE_ADMIN,
	KVP_FATE_OTHER_NS,
	KVP_FATE_PARTIAL,
	KVP_FATE_N
};
/* "cached", "new", "evicted_pool", "evicted_quota", "evicted_admin", "other_namespace",
 * "partial". Never NULL. */
const char *kvp_fate_name(enum kvp_fate f);

/* Departures remembered, per pool block: enough that the estimate for a pool of 4x the
 * capacity finds the blocks it needs although many departures no longer count (their
 * blocks cached again, or gone again later). */
#define KVP_CACHE_GONE_PER_BLOCK 6u
/* The larger pools a query is scored against: 2x and 4x the capacity. */
#define KVP_CACHE_GHOST_N 2
#define KVP_CACHE_GHOST_MULTIPLES { 2u, 4u }

/*
 * A query (lookup, seq_begin) diagnosed. tokens[f]: its tokens by fate; they add up to
 * the query's tokens. ghost_tokens[i]: tokens after the match that a pool of
 * KVP_CACHE_GHOST_MULTIPLES[i] x capacity would have matched too: the consecutive
 * blocks after the match that left to make room at most (multiple - 1) x capacity
 * evictions to make room ago. Exact for leaf-first LRU when every eviction is one to
 * make room; an estimate otherwise (docs/eviction.md gives its error on the shared
 * trace).
 */
struct kvp_cache_miss {
	uint32_t tokens[KVP_FATE_N];
	uint32_t ghost_tokens[KVP_CACHE_GHOST_N];
};

struct kvp_cache_result {
	uint32_t matched_tokens;    /* lookup: cached prefix before the call; insert: after */
	uint32_t prompt_tokens;
	uint32_t new_blocks;        /* insert: blocks added */
	uint32_t n_blocks;          /* block ids written to the caller's array */
	uint64_t lease;             /* 0 unless pinned */
	bool pool_full;             /* insert stopped early: nothing left to evict */
	bool quota_full;            /* ... because the namespace is at its quota */
	struct kvp_cache_miss miss; /* lookup: the query diagnosed */
};

/* What the cache did. What clients asked and got (queries, hit tokens, requests) is
 * the daemon's to count (daemon/kvp_stats.h): a lookup made for an administrator is no
 * client's query. */
struct kvp_cache_stats {
	uint64_t inserted_blocks;
	uint64_t insert_full;       /* inserts cut short by a pool full of pinned blocks */
	uint64_t evictions;
	uint64_t quota_evictions;   /* of those, a namespace at its quota giving up its own */
	uint64_t quota_refusals;    /* blocks refused: namespace at quota, nothing of its own
	                               to give up */
	uint64_t leases_active;     /* connections', admin pins and keeps */
	uint64_t leases_total;
	uint64_t keeps_active;      /* kvp_cache_keep's prefixes kept now */
	uint64_t keeps_made;
	uint64_t keeps_expired;     /* let go at their time (kvp_cache_expire) */
	uint64_t keeps_given_up;    /* let go early: nothing else could make room */
	struct kvp_pool_counts pool;
	size_t tree_nodes;
	size_t tree_node_allocs;    /* kvp_tree_node_allocations */
	size_t diag_bytes;          /* kvp_cache_diag_bytes */
};

int kvp_cache_create(const struct kvp_cache_config *cfg, struct kvp_cache **out);
void kvp_cache_destroy(struct kvp_cache *c);
uint32_t kvp_cache_block_tokens(const struct kvp_cache *c);
uint32_t kvp_cache_capacity(const struct kvp_cache *c);
/* A new limit applies to leases taken from now on; held ones stay. 0 is ignored. */
void kvp_cache_set_max_leases(struct kvp_cache *c, uint32_t max_leases);
/*
 * Tenant quota: at most `blocks` blocks per quota group (0: none). The group is what
 * insert and seq_begin are given beside the namespace root: the daemon passes one per
 * tenant, so that a tenant's adapters share its quota; a group of one namespace is the
 * root itself. A group under its quota takes free blocks, then evicts anyone's least
 * recently used; at its quota it only recycles its own, so however much one tenant
 * asks for it never holds more than the quota, and the others keep capacity - quota
 * blocks between them. Running sequences' blocks count too, those of every sequence of
 * the group together, and a sequence that needs more blocks than the quota is refused
 * before the group gives up any. Applies from the next allocation on; a group already
 * over a lowered quota gives up two of its own blocks for each one it takes until it
 * is down to the quota.
 */
void kvp_cache_set_tenant_quota(struct kvp_cache *c, uint32_t blocks);
/* Blocks cached in namespace root; in quota group group. */
size_t kvp_cache_ns_blocks(const struct kvp_cache *c, struct kvp_key root);
size_t kvp_cache_group_blocks(const struct kvp_cache *c, struct kvp_key group);

/*
 * Administration (ADMIN requests). clear: evict every unpinned block of namespace root,
 * or of every namespace when root is NULL; returns how many. evict_prefix: evict the
 * unpinned blocks cached under the prefix of tokens (the subtree below its deepest
 * cached block, then the prefix's own blocks while each is an unpinned leaf).
 * admin_pin: pin the cached prefix of tokens until admin_unpin of the same tokens
 * (held by KVP_CACHE_ADMIN_OWNER, outside any lease limit); *pinned 0 when nothing is
 * cached. admin_unpin: KVP_ENOTFOUND when no pin of that prefix exists.
 */
size_t kvp_cache_clear(struct kvp_cache *c, const struct kvp_key *root);
int kvp_cache_evict_prefix(struct kvp_cache *c, struct kvp_key root, const uint32_t *tokens,
			   size_t n_tokens, uint32_t *evicted);
int kvp_cache_admin_pin(struct kvp_cache *c, struct kvp_key root, const uint32_t *tokens,
			size_t n_tokens, uint32_t *pinned);
int kvp_cache_admin_unpin(struct kvp_cache *c, struct kvp_key root, const uint32_t *tokens,
			  size_t n_tokens, uint32_t *unpinned);

/*
 * Keeps: a prefix pinned until a time, with a priority (INSERT and GENERATE with KEEP).
 * keep pins the cached prefix of tokens in namespace root (quota group group) until
 * until_ms (the caller's clock, milliseconds: the daemon's is CLOCK_MONOTONIC, a test's
 * anything); *kept gets its blocks (0: nothing cached, no keep made). The same prefix
 * kept again keeps its one keep, until the later time and at the higher priority. A
 * kept block is never evicted while a block nobody pins can go; when nothing else can
 * (the pool, or a group at its tenant quota, full of pinned blocks), the keep with the
 * lowest priority goes first (the one expiring first among equals; for a group at its
 * quota, one of that group's own keeps), its blocks evicted the usual way. Kept blocks
 * count toward their group's quota. KVP_ETOOBIG (n_tokens > max_tokens), KVP_ENOMEM.
 * O(1) but for the match; giving a keep up is O(keeps).
 *
 * expire lets go of every keep whose time is at or before now_ms (its blocks stay
 * cached, evictable as any other); returns how many. O(1) until the first keep is due,
 * then O(keeps).
 */
int kvp_cache_keep(struct kvp_cache *c, struct kvp_key root, struct kvp_key group,
		   const uint32_t *tokens, size_t n_tokens, uint64_t until_ms, uint32_t priority,
		   uint32_t *kept);
size_t kvp_cache_expire(struct kvp_cache *c, uint64_t now_ms);

/* Every admin pin: fn(arg, root, group, tokens, n_tokens) with its namespace, quota
 * group and prefix (its blocks' tokens end to end; valid during the call). What a stop
 * saves so that the next start pins them again. KVP_OK or KVP_ENOMEM. */
int kvp_cache_admin_pins(const struct kvp_cache *c,
			 void (*fn)(void *arg, struct kvp_key root, struct kvp_key group,
				    const uint32_t *tokens, size_t n_tokens),
			 void *arg);

/* Every keep: fn(arg, k) with its namespace, quota group, prefix (valid during the call),
 * time (the clock kvp_cache_keep was given) and priority. What a stop saves so that the
 * next start keeps them again, until the same time. KVP_OK or KVP_ENOMEM. */
struct kvp_cache_keep_info {
	struct kvp_key root, group;
	const uint32_t *tokens;
	size_t n_tokens;
	uint64_t until_ms;
	uint32_t priority;
};
int kvp_cache_keeps(const struct kvp_cache *c,
		    void (*fn)(void *arg, const struct kvp_cache_keep_info *k), void *arg);
/* Drop every admin pin; returns how many there were. */
size_t kvp_cache_admin_unpin_all(struct kvp_cache *c);

/* block_ids: room for n_tokens / block_tokens ids. owner != 0 is needed for pin.
 * KVP_ETOOBIG when n_tokens > max_tokens, KVP_EBUSY when owner already holds
 * max_leases, KVP_ENOMEM. */
int kvp_cache_lookup(struct kvp_cache *c, struct kvp_key root, const uint32_t *tokens,
		     size_t n_tokens, uint64_t owner, bool pin, uint32_t *block_ids,
		     struct kvp_cache_result *res);
int kvp_cache_insert(struct kvp_cache *c, struct kvp_key root, struct kvp_key group,
		     const uint32_t *tokens,
		     size_t n_tokens, uint64_t owner, bool pin, uint32_t *block_ids,
		     struct kvp_cache_result *res);
/* KVP_ENOTFOUND unless the lease exists and belongs to owner. */
int kvp_cache_release(struct kvp_cache *c, uint64_t owner, uint64_t lease, uint32_t *n_blocks);
/* Release every lease of owner; returns how many. */
size_t kvp_cache_release_owner(struct kvp_cache *c, uint64_t owner);

/*
 * Sequences: the blocks of one generation request. seq_begin matches the longest
 * cached prefix of the prompt (pinned for the request's life, read-only), then takes
 * fresh blocks (evicting if needed) so that positions 0 .. n_positions-1 all have a
 * block; seq_grow takes more as the generation goes on. seq_end registers the full blocks of tokens[0 .. n_valid) whose KV the
 * request computed, adopting its own blocks (where another request cached the same
 * block meanwhile, ours is freed and theirs kept), unpins the prefix and frees every
 * other block. A sequence is owned by its request, never by a connection, so a
 * client that goes away cannot free blocks an engine is still writing.
 */
struct kvp_cache_ns;

struct kvp_seq {
	struct kvp_key root;
	struct kvp_key group;         /* its quota group */
	struct kvp_cache_ns *ns;      /* its group's tally of running sequences */
	uint32_t n_blocks;            /* blocks held: cover n_positions */
	uint32_t matched_blocks;      /* leading blocks from the cache (pinned, read-only) */
	uint32_t *block_ids;          /* (n_blocks) */
	void **block_data;            /* (n_blocks) KV bytes of each block */
	struct kvp_tree_node **nodes; /* (matched_blocks) pinned prefix */
	bool quota_full;              /* after a KVP_EFULL: the namespace's quota, not the pool */
	struct kvp_cache_miss miss;   /* the prompt diagnosed at its match */
};

/* Give the pool's blocks block_bytes of host memory each (engine mode). */
int kvp_cache_attach_memory(struct kvp_cache *c, size_t block_bytes);
/* The same in GPU memory (the CUDA backend): block_data are device addresses. */
int kvp_cache_attach_device(struct kvp_cache *c, size_t block_bytes);
/* KVP_ETOOBIG (n_prompt > max_tokens), KVP_EFULL (not enough free or evictable
 * blocks: the message-worthy "pool full of pinned blocks"), KVP_ENOMEM. Nothing is
 * held after a failure. */
int kvp_cache_seq_begin(struct kvp_cache *c, struct kvp_key root, struct kvp_key group,
			const uint32_t *tokens,
			uint32_t n_prompt, uint32_t n_positions, struct kvp_seq *seq);
/* More blocks for a running sequence, so that positions 0 .. n_positions-1 all have
 * one (nothing to do when they already have). The new blocks are taken as seq_begin
 * takes them, under the same tenant quota. KVP_EFULL (seq->quota_full when the quota
 * is why), KVP_ENOMEM: the sequence keeps what it had, whole. block_ids and block_data
 * may move: take them from seq again after a success. */
int kvp_cache_seq_grow(struct kvp_cache *c, struct kvp_seq *seq, uint32_t n_positions);
/* Register the full blocks of tokens[0 .. n_valid) that the sequence computed (beyond
 * its matched prefix) now, while it runs: other requests match them from here on. The
 * sequence keeps them pinned and read-only, as its matched prefix (matched_blocks
 * grows), so its KV there must be final: positions below n_valid are never written
 * again. Stops at a block another request cached meanwhile, or without memory; seq_end
 * handles the rest as usual. Returns the blocks registered. Only block_ids / block_data
 * of seq are read: an engine may be reading them meanwhile. */
uint32_t kvp_cache_seq_publish(struct kvp_cache *c, struct kvp_seq *seq, const uint32_t *tokens,
			       uint32_t n_valid);
void kvp_cache_seq_end(struct kvp_cache *c, struct kvp_seq *seq, const uint32_t *tokens,
		       uint32_t n_valid);

/*
 * A lower tier under the pool. demote(arg, b) is called with each cached block about
 * to leave the pool to make room (evictions by pool pressure or a tenant's quota, not
 * an administrator's clear or evict), and with the blocks kvp_cache_demote_some takes
 * out, before its memory is reused: b's fields stay valid for the
 * call only, and the block's KV can be read then with kvp_cache_block_read. demote
 * must not call into the cache. NULL demote: none.
 */
struct kvp_cache_block_info {
	struct kvp_key root;
	struct kvp_key parent;        /* the root for the first block of a prompt */
	struct kvp_key key;
	const uint32_t *tokens;       /* block_tokens of them */
	uint32_t block_id;
};
void kvp_cache_set_demote(struct kvp_cache *c,
			  void (*demote)(void *arg, const struct kvp_cache_block_info *b), void *arg);
/* A tier beside the pool: stored(arg, b) is called with each block a sequence or an
 * insert registers (kvp_cache_seq_publish, kvp_cache_seq_end: the KV an engine computed,
 * or read back from a tier; kvp_cache_insert: an index's block) once it is in the tree,
 * as demote is. NULL: none. */
void kvp_cache_set_stored(struct kvp_cache *c,
			  void (*stored)(void *arg, const struct kvp_cache_block_info *b), void *arg);
/* What the tree holds, as it changes: watch(arg, b, true) with every block once it is
 * cached (whoever registered it), watch(arg, b, false) with every cached block about to
 * go, whatever the reason (pool pressure, a quota, a clear, an administrator's evict).
 * A block's parent is reported cached before it and gone after it. b is valid for the
 * call only; b->block_id is meaningless in an index. watch must not call into the
 * cache. NULL: none. */
void kvp_cache_set_watch(struct kvp_cache *c,
			 void (*watch)(void *arg, const struct kvp_cache_block_info *b, bool added),
			 void *arg);
/* Up to max unpinned blocks out of the pool, least recently used leaf first, each
 * through demote (a stop's flush to a lower tier, in batches). Returns how many: 0
 * once none is left. */
size_t kvp_cache_demote_some(struct kvp_cache *c, size_t max);
/* A block's KV bytes (kvp_cache_block_bytes of them) to or from host memory, through a
 * staging buffer when the pool is on the GPU. KVP_EINVAL (no such block, or no
 * memory attached), KVP_EIO. */
int kvp_cache_block_read(const struct kvp_cache *c, uint32_t id, void *dst);
/* A block's KV bytes in place when the pool is in host memory (valid while the block is
 * neither freed nor written); NULL for a GPU pool, an index or a bad id. */
const void *kvp_cache_block_host(const struct kvp_cache *c, uint32_t id);
int kvp_cache_block_write(struct kvp_cache *c, uint32_t id, const void *src);
size_t kvp_cache_block_bytes(const struct kvp_cache *c);
bool kvp_cache_on_device(const struct kvp_cache *c);

/*
 * The fate of every block of tokens in namespace root, as a query would be diagnosed,
 * but touching nothing (no block counts as used): fates[i] and ages[i] for block i of
 * the n_tokens / block_tokens full blocks, then one more for a last partial block when
 * there is one (KVP_FATE_PARTIAL); *n_out: how many were written (room for
 * n_tokens / block_tokens + 1). ages[i]: for POOL, the evictions to make room since
 * the block left (a pool of capacity + age + 1 would have kept it under LRU); else 0.
 * Every block is diagnosed on its own (a block after one that left may be NEW).
 * OTHER_NS is reported: this is for an administrator. KVP_ETOOBIG (n_tokens >
 * max_tokens).
 */
int kvp_cache_explain(const struct kvp_cache *c, struct kvp_key root, const uint32_t *tokens,
		      size_t n_tokens, uint8_t *fates, uint64_t *ages, size_t *n_out);
/* Bytes the miss diagnostics take (departures, and the table of blocks' contents that
 * finds OTHER_NS): about 56 bytes a pool block (docs/eviction.md). */
size_t kvp_cache_diag_bytes(const struct kvp_cache *c);

void kvp_cache_get_stats(const struct kvp_cache *c, struct kvp_cache_stats *st);
/* Pool invariant, tree invariants, and node pins == pool references for every node;
 * only meaningful while no sequence is running.
 * 0, KVP_EINTERNAL, or KVP_ENOMEM for its O(capacity) scratch array. */
int kvp_cache_check(const struct kvp_cache *c);

#endif
