/*
 * gen_follow.c - a prompt another request is computing right now is computed once.
 *
 *   GENERATE B arrives ──▶ gen_follow_leader: a running request A of the same
 *     namespace whose prompt starts with the same full blocks as B's, beyond what A
 *     found cached, and whose prompt is not computed yet
 *   found: B follows A (linked to its connection, no blocks, no job yet)
 *   A's news says its prompt is computed (or A ends) ──▶ gen_follow_release:
 *     kvp_cache_seq_publish registers A's full prompt blocks now (A keeps them pinned,
 *     read-only), then each follower begins as any request does: kvp_cache_seq_begin
 *     matches A's blocks, and its usage counts them as cached
 *
 * A follower whose client went away meanwhile is dropped when released. A leader that
 * ends early (an error, its client gone) releases what it computed; its followers
 * compute the rest themselves. Event loop thread only.
 */
#include <string.h>

#include "gen_req.h"
#include "kvp_log.h"
#include "server.h"

/* Leading full blocks of a[0 .. na) and b[0 .. nb) that are equal. */
static uint32_t common_blocks(const uint32_t *a, uint32_t na, const uint32_t *b, uint32_t nb,
			      uint32_t bt)
{
	uint32_t n = na < nb ? na : nb, k = 0;

	while ((k + 1) * bt <= n && memcmp(a + (size_t)k * bt, b + (size_t)k * bt,
					   bt * sizeof(uint32_t)) == 0)
		k++;
	return k;
}

/* Can r lead: it began (blocks, a job), computes its prompt now, follows nobody. */
static bool may_lead(const struct gen_req *r)
{
	return r->seq.ns && !r->released && !r->leader && r->wait == REQ_GOING;
}

struct gen_req *gen_follow_leader(struct server *s, const struct conn *c, const uint32_t *tokens,
				  uint32_t n)
{
	const uint32_t bt = s->cfg->block_tokens;
	struct gen_req *best = NULL;
	uint32_t best_blocks = 0;

	for (const struct conn *o = s->conns; o; o = o->next) {
		if (!kvp_key_eq(o->root, c->root))
			continue;
		for (struct gen_req *r = o->reqs; r; r = r->next) {
			uint32_t k;

			if (!may_lead(r))
				continue;
			k = common_blocks(tokens, n, r->job.tokens, r->job.n_prompt, bt);
			/* worth waiting for: blocks it computes that the cache did not have */
			if (k > r->job.cached / bt && k > best_blocks) {
				best = r;
				best_blocks = k;
			}
		}
	}
	return best;
}

void gen_follow(struct gen_req *leader, struct gen_req *r)
{
	struct gen_req **pp = &leader->followers;

	while (*pp)
		pp = &(*pp)->next_follower;
	r->leader = leader;
	r->next_follower = NULL;
	*pp = r;
}

void gen_follow_release(struct server *s, struct gen_req *leader, uint32_t n_valid)
{
	struct gen_req *f = leader->followers, *next;
	uint32_t n;

	leader->released = true;
	leader->followers = NULL;
	if (leader->seq.ns && f) {
		n = kvp_cache_seq_publish(s->cache, &leader->seq, leader->job.tokens, n_valid);
		kvp_debug("GENERATE %u: %u prompt blocks registered for those waiting for them",
			  leader->req_id, n);
	}
	for (; f; f = next) {
		next = f->next_follower;
		f->leader = NULL;
		s->n_following--;
		gen_req_begin_waited(s, f);
	}
}
