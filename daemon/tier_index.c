/*
 * tier_index.c - an index-only kvprefixd sharing its index through Redis (--redis):
 *
 *   INSERT     each new block's record (keys and tokens, no KV) written to Redis by the
 *              stored hook (tier.c), as an engine's blocks are
 *   LOOKUP     answered from this index at once, never waiting; when it found less than
 *              the request's full blocks, Redis is asked for the rest in the background
 *              and the leading blocks that check out are registered here, so that the
 *              next LOOKUP of that prefix finds them
 *
 * At most TIER_INDEX_INFLIGHT such fetches at once (more misses meanwhile are not
 * looked up there). Event loop thread.
 */
#include <stdlib.h>
#include <string.h>

#include "kvp_log.h"
#include "kvp_redis.h"
#include "server.h"

#define TIER_INDEX_INFLIGHT 64

struct index_fetch {
	struct server *s;
	struct kvp_key root, group;
	uint32_t *tokens;           /* the request's full blocks */
	uint32_t first, n;          /* blocks [first, first + n) asked for */
};

static void index_fetch_done(void *arg, uint32_t good)
{
	struct index_fetch *f = arg;
	struct server *s = f->s;
	struct kvp_cache_result res;
	uint32_t *ids;

	s->n_index_fetches--;
	ids = good ? malloc((f->first + good) * sizeof(*ids)) : NULL;
	if (ids) {
		s->tier_quiet = true;   /* they came from Redis: not written back */
		(void)kvp_cache_insert(s->cache, f->root, f->group, f->tokens,
				       (size_t)(f->first + good) * s->cfg->block_tokens, 0, false, ids,
				       &res);
		s->tier_quiet = false;
		s->redis_promoted_blocks += res.new_blocks;
		kvp_debug("index: %u blocks from Redis, %u new here", good, res.new_blocks);
	}
	free(ids);
	free(f->tokens);
	free(f);
}

void tier_index_lookup(struct server *s, const struct conn *c, const uint32_t *tokens,
		       uint32_t n_tokens, uint32_t matched)
{
	const uint32_t bt = s->cfg->block_tokens, nb = n_tokens / bt, first = matched / bt;
	struct kvp_redis_stats st;
	struct index_fetch *f;
	struct kvp_key *keys;

	if (s->engine || !s->redis || first >= nb || s->n_index_fetches >= TIER_INDEX_INFLIGHT)
		return;
	kvp_redis_get_stats(s->redis, &st);
	if (!st.connected)
		return;
	f = calloc(1, sizeof(*f));
	keys = malloc(nb * sizeof(*keys));
	if (!f || !keys || !(f->tokens = malloc((size_t)nb * bt * sizeof(*tokens)))) {
		free(keys);
		free(f);
		return;
	}
	memcpy(f->tokens, tokens, (size_t)nb * bt * sizeof(*tokens));
	kvp_chain_keys(c->root, tokens, nb, bt, keys);
	*f = (struct index_fetch){ .s = s, .root = c->root, .group = c->group,
				   .tokens = f->tokens, .first = first, .n = nb - first };
	if (kvp_redis_fetch(s->redis, c->root, first ? keys[first - 1] : c->root, keys + first,
			    tokens + (size_t)first * bt, f->n, NULL, index_fetch_done, f) == KVP_OK) {
		s->n_index_fetches++;
		s->redis_promotions++;
	} else {
		free(f->tokens);
		free(f);
	}
	free(keys);
}
