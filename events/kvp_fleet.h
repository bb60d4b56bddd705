/*
 * kvp_fleet.h - the fleet index: which blocks each engine of a fleet holds, rebuilt
 * from the KV events they publish, and for a token sequence the prefix each of them
 * has cached (docs/kv-events.md).
 *
 * An engine's block hashes are opaque ids: each stored block's own key is computed
 * here, chained from its parent's (or from the fleet's root for a first block) over its
 * token ids, as kvprefixd keys its own blocks. So a lookup hashes the query once and
 * answers for every engine together: one table maps a key to the set of engines that
 * hold it (a 64-bit mask), so the cost does not grow with the number of engines.
 *
 *   BlockStored   parent id ──engine's map──▶ parent key ──kvp_block_key──▶ key
 *                 engine's map[id] = key; key's mask |= engine
 *   BlockRemoved  engine's map[id] gone; key's mask &= ~engine (unless it holds
 *                 the key under another id too)
 *   AllBlocksCleared  every id of the engine, as above
 *
 * A stored block whose parent id the engine never stored (events missed) cannot be
 * keyed; it is skipped and counted. An engine's ids are per medium (a block in the pool
 * and on its disk is held until both are removed; a parent is looked for in the block's
 * own medium, then in the others). At most KVP_FLEET_MAX_INSTANCES engines.
 *
 * Not thread-safe: the caller serialises every call. Errors: 0 or a negative enum
 * kvp_status; KVP_ENOMEM leaves the index consistent (the event applied in part: the
 * blocks before the failure).
 */
#ifndef KVP_FLEET_H
#define KVP_FLEET_H

#include <stddef.h>
#include <stdint.h>

#include "kvp_events.h"
#include "kvp_index.h"

#define KVP_FLEET_MAX_INSTANCES 64u
#define KVP_FLEET_NAME_MAX 255u

struct kvp_fleet;

/* An index of blocks of block_tokens tokens, keyed under root. */
int kvp_fleet_create(uint32_t block_tokens, struct kvp_key root, struct kvp_fleet **out);
void kvp_fleet_destroy(struct kvp_fleet *f);

/* The engine named name (created at first sight): 0..63, KVP_EFULL when 64 others
 * are known, KVP_ENOMEM. */
int kvp_fleet_instance(struct kvp_fleet *f, const char *name);
size_t kvp_fleet_instances(const struct kvp_fleet *f);
const char *kvp_fleet_instance_name(const struct kvp_fleet *f, unsigned inst);
size_t kvp_fleet_instance_blocks(const struct kvp_fleet *f, unsigned inst);
size_t kvp_fleet_blocks(const struct kvp_fleet *f);   /* blocks held, all engines */

/* Apply one decoded event of engine inst. KVP_OK (a removal of ids the engine does not
 * hold counts them in *skipped, and is no error); KVP_EINVAL when a BlockStored was
 * skipped (a block size other than the index's, an unknown parent: *skipped says how
 * many blocks); KVP_ENOMEM. */
int kvp_fleet_apply(struct kvp_fleet *f, unsigned inst, const struct kvp_ev *ev,
		    size_t *skipped);

/* For each engine, how many leading full blocks of tokens it holds. out[i] is for
 * engine i; room for kvp_fleet_instances of them. keys: scratch for n_tokens /
 * block_tokens keys. */
void kvp_fleet_match(const struct kvp_fleet *f, const uint32_t *tokens, size_t n_tokens,
		     struct kvp_key *keys, uint32_t *out);

/* Every invariant: each engine's ids against the masks. 0 or KVP_EINTERNAL. O(size). */
int kvp_fleet_check(const struct kvp_fleet *f);

#endif
