/*
 * tier_promote.c - a GENERATE's prompt read back from the tiers before it begins.
 *
 *   pool: the cached prefix (m blocks) ──▶ the host tier's blocks that continue it
 *   ──▶ the disk tier's after those ──▶ Redis asked for all the rest, one pipeline
 *
 * Fresh pool blocks are taken for all of them as a sequence takes them (the prefix
 * pinned); each tier reads into them on its own thread, checking every block; when all
 * are back the leading good ones are registered (kvp_cache_seq_end) and the request
 * begins, its usage counting them as cached. Event loop thread.
 */
#include <stdlib.h>
#include <string.h>

#include "gen_req.h"
#include "kvp_disk.h"
#include "kvp_log.h"
#include "kvp_redis.h"
#include "server.h"

/* A GENERATE's blocks being read back: [first, host_end) from the host tier,
 * [host_end, disk_end) from the disk, then [redis_from, end) from Redis. */
struct promotion {
	struct server *s;
	struct gen_req *r;
	struct kvp_seq seq;
	struct kvp_key *keys;      /* chained keys of the prompt's full blocks */
	uint32_t first, host_end, disk_end, redis_from, end;
	uint32_t pending;          /* reads and fetches not back yet */
	uint32_t redis_good;       /* leading blocks from redis_from that Redis had */
	uint8_t *staging;          /* a GPU pool's blocks are read here, then copied up */
	struct promo_read {
		struct promotion *p;
		int status;
	} *reads;                  /* (disk_end - first): host, then disk */
};

static void promotion_free(struct promotion *p)
{
	free(p->keys);
	free(p->reads);
	srv_free(p->staging);
	free(p);
}

/* Where block i's KV is read to: its pool block, or its place in the staging buffer. */
static void *promotion_dst(struct promotion *p, uint32_t i)
{
	return p->staging ? p->staging + (size_t)(i - p->first) * kvp_cache_block_bytes(p->s->cache)
			  : p->seq.block_data[i];
}

/* Every read is back: the leading good blocks registered, then the request begins. */
static void promotion_finish(struct promotion *p)
{
	struct server *s = p->s;
	struct gen_req *r = p->r;
	const uint32_t bt = s->cfg->block_tokens;
	uint32_t n = p->first, host, disk;

	while (p->reads && n < p->disk_end && p->reads[n - p->first].status == KVP_OK)
		n++;
	host = (n < p->host_end ? n : p->host_end) - p->first;
	disk = n > p->host_end ? n - p->host_end : 0;
	if (n >= p->redis_from)
		n = p->redis_from + p->redis_good;
	for (uint32_t i = p->first; p->staging && i < n; i++)
		if (kvp_cache_block_write(s->cache, p->seq.block_ids[i], promotion_dst(p, i)) != KVP_OK) {
			n = i;
			break;
		}
	s->tier_quiet = true;   /* blocks read back are not written to Redis again */
	kvp_cache_seq_end(s->cache, &p->seq, r->job.tokens, n * bt);
	s->tier_quiet = false;
	host = host < n - p->first ? host : n - p->first;
	disk = disk < n - p->first - host ? disk : n - p->first - host;
	s->host_promoted_blocks += host;
	s->tier_promoted_blocks += disk;
	s->redis_promoted_blocks += n - p->first - host - disk;
	kvp_debug("GENERATE %u: %u blocks read back (host %u, disk %u, Redis %u)", r->req_id,
		  n - p->first, host, disk, n - p->first - host - disk);
	s->n_promoting--;
	promotion_free(p);
	gen_req_begin_waited(s, r);
}

static void promotion_read_done(void *arg, int status)
{
	struct promo_read *rd = arg;
	struct promotion *p = rd->p;

	rd->status = status;
	if (--p->pending == 0)
		promotion_finish(p);
}

static void promotion_fetch_done(void *arg, uint32_t good)
{
	struct promotion *p = arg;

	p->redis_good = good;
	if (--p->pending == 0)
		promotion_finish(p);
}

/* Blocks [from, to) of p's prompt from tier t: one read each. How many were queued;
 * the first that could not be leaves the rest not found. */
static uint32_t promotion_reads(struct server *s, struct promotion *p, struct kvp_disk *t,
				uint32_t from, uint32_t to, struct kvp_key root)
{
	const uint32_t bt = s->cfg->block_tokens;
	uint32_t queued = 0;

	for (uint32_t i = from; i < to; i++) {
		struct promo_read *rd = &p->reads[i - p->first];
		const struct kvp_disk_meta m = {
			.key = p->keys[i], .parent = i ? p->keys[i - 1] : root, .root = root,
			.tokens = p->r->job.tokens + (size_t)i * bt,
		};

		rd->p = p;
		rd->status = KVP_ENOTFOUND;
		if (kvp_disk_fetch(t, &m, promotion_dst(p, i), promotion_read_done, rd) != KVP_OK)
			break;
		queued++;
	}
	return queued;
}

/* Blocks [redis_from, end) in one fetch from Redis. 1 when it was queued, else 0. */
static uint32_t promotion_fetch(struct server *s, struct promotion *p, struct kvp_key root)
{
	const uint32_t n = p->end - p->redis_from;
	void **dst = n ? malloc(n * sizeof(*dst)) : NULL;
	int rc;

	if (!dst)
		return 0;
	for (uint32_t i = 0; i < n; i++)
		dst[i] = promotion_dst(p, p->redis_from + i);
	rc = kvp_redis_fetch(s->redis, root, p->redis_from ? p->keys[p->redis_from - 1] : root,
			     p->keys + p->redis_from,
			     p->r->job.tokens + (size_t)p->redis_from * s->cfg->block_tokens, n, dst,
			     promotion_fetch_done, p);
	free(dst);
	return rc == KVP_OK;
}

/* Whether Redis is worth a round trip now. */
static bool redis_up(const struct server *s)
{
	struct kvp_redis_stats st;

	if (!s->redis)
		return false;
	kvp_redis_get_stats(s->redis, &st);
	return st.connected;
}

/* The prompt's blocks from block at on that the tiers may hold: got[0] from the host
 * tier, then got[1] from the disk (both probed), then got[2] to ask Redis for. */
static void promotion_probe(struct server *s, struct promotion *p, struct kvp_key root,
			    uint32_t at, uint32_t nb, uint32_t got[3])
{
	const uint32_t bt = s->cfg->block_tokens;
	struct kvp_disk *const tiers[2] = { s->host, s->disk };

	got[0] = got[1] = got[2] = 0;
	for (int t = 0; t < 2; t++) {
		if (tiers[t] && at < nb)
			got[t] = kvp_disk_probe(tiers[t], root, at ? p->keys[at - 1] : root, p->keys + at,
						p->r->job.tokens + (size_t)at * bt, nb - at);
		at += got[t];
	}
	if (redis_up(s))
		got[2] = nb - at;
}

/* Queue every read of p; how many. The disk's only when the host's were all queued,
 * Redis's only after both: only leading blocks count. */
static uint32_t promotion_queue(struct server *s, struct promotion *p, struct kvp_key root)
{
	uint32_t n = 0, h;

	if (!p->reads || (!p->staging && kvp_cache_on_device(s->cache)))
		return 0;
	h = s->host ? promotion_reads(s, p, s->host, p->first, p->host_end, root) : 0;
	n += h;
	if (h == p->host_end - p->first && s->disk)
		n += promotion_reads(s, p, s->disk, p->host_end, p->disk_end, root);
	if (p->redis_from < p->end)
		n += promotion_fetch(s, p, root);
	return n;
}

/* Whether any tier may hold block m, the first past the pool's prefix: Redis when it is
 * up (only a round trip tells), else the host or disk tier's index. */
static bool may_hold_next(struct server *s, struct promotion *p, struct kvp_key root,
			  uint32_t m)
{
	struct kvp_disk *const tiers[2] = { s->host, s->disk };
	const uint32_t bt = s->cfg->block_tokens;

	if (redis_up(s))
		return true;
	for (int t = 0; t < 2; t++)
		if (tiers[t] && kvp_disk_probe(tiers[t], root, m ? p->keys[m - 1] : root, p->keys + m,
					       p->r->job.tokens + (size_t)m * bt, 1) == 1)
			return true;
	return false;
}

bool tier_promote(struct server *s, struct gen_req *r)
{
	const struct conn *c = r->conn;
	const uint32_t bt = s->cfg->block_tokens, nb = r->req.n_tokens / bt;
	struct kvp_cache_result res;
	struct promotion *p;
	uint32_t got[3];

	if ((!s->host && !s->disk && !s->redis) || nb == 0 ||
	    kvp_cache_lookup(s->cache, c->root, r->job.tokens, r->req.n_tokens, 0, false,
			     s->block_ids, &res) != KVP_OK ||
	    res.matched_tokens / bt >= nb)
		return false;
	p = calloc(1, sizeof(*p));
	if (!p || !(p->keys = malloc(nb * sizeof(*p->keys)))) {
		free(p);
		return false;
	}
	p->s = s;
	p->r = r;
	kvp_chain_keys(c->root, r->job.tokens, nb, bt, p->keys);
	if (!may_hold_next(s, p, c->root, res.matched_tokens / bt)) {
		promotion_free(p);   /* a plain miss: no blocks taken twice for it */
		return false;
	}
	/* the blocks first, the pool's prefix pinned, fresh ones for the rest, as the request
	 * will take them anyway: the evictions this makes (and the demotions they cascade
	 * into) are over before the tiers are probed, so nothing probed goes before it is
	 * read */
	if (kvp_cache_seq_begin(s->cache, c->root, c->group, r->job.tokens, nb * bt, nb * bt,
				&p->seq) != KVP_OK) {
		promotion_free(p);
		return false;   /* the request begins as it is, and says why if it cannot */
	}
	p->first = p->seq.matched_blocks;
	promotion_probe(s, p, c->root, p->first, nb, got);
	if (got[0] + got[1] + got[2] == 0) {
		kvp_cache_seq_end(s->cache, &p->seq, r->job.tokens, p->first * bt);
		promotion_free(p);
		return false;
	}
	p->host_end = p->first + got[0];
	p->disk_end = p->host_end + got[1];
	p->end = p->disk_end + got[2];
	p->redis_from = got[2] ? p->disk_end : p->end;
	p->reads = calloc(p->disk_end - p->first + 1, sizeof(*p->reads));
	for (uint32_t i = 0; p->reads && i < p->disk_end - p->first; i++)
		p->reads[i].status = KVP_ENOTFOUND;   /* until its read says otherwise */
	if (kvp_cache_on_device(s->cache))
		p->staging = srv_malloc_aligned((size_t)(p->end - p->first) *
						kvp_cache_block_bytes(s->cache), 64);
	p->pending = promotion_queue(s, p, c->root);
	s->n_promoting++;
	s->host_promotions += got[0] > 0;
	s->tier_promotions += got[1] > 0;
	s->redis_promotions += got[2] > 0;
	if (p->pending == 0)
		promotion_finish(p);   /* nothing could be queued: the request begins now */
	return true;
}
