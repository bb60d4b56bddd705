/*
 * gen_wait.c - blocks as generations grow, when the pool has none to give.
 *
 * A parked generation whose blocks cannot grow (the pool is full of pinned blocks, or
 * its tenant at its quota) waits, starved, until a finishing one frees blocks. When
 * nothing else can free any (every generation the engine has is starved or
 * preempted), the youngest starved one is preempted: the blocks it computed go to the
 * cache as any finished request's do (unpinned: others may take them) and it waits to
 * take blocks for tokens[0 .. n_valid) again, its cached part matched, the rest
 * recomputed. Oldest first, starved before preempted, every time the engine has news.
 * One left alone that still cannot go on ends with EFULL: it needs more than the pool
 * can give it (leases and admin pins hold the rest).
 */
#include "kvp_log.h"
#include "gen_req.h"
#include "server.h"

static void wait_push(struct gen_req **head, struct gen_req *r)
{
	while (*head)
		head = &(*head)->next_wait;
	r->next_wait = NULL;
	*head = r;
}

static uint32_t wait_count(const struct gen_req *r)
{
	uint32_t n = 0;

	for (; r; r = r->next_wait)
		n++;
	return n;
}

/* Take r out of the list at head. */
static void wait_remove(struct gen_req **head, struct gen_req *r)
{
	while (*head != r)
		head = &(*head)->next_wait;
	*head = r->next_wait;
	r->wait = REQ_GOING;
}

void gen_wait_forget(struct server *s, struct gen_req *r)
{
	if (r->wait == REQ_STARVED)
		wait_remove(&s->starved, r);
	else if (r->wait == REQ_PREEMPTED)
		wait_remove(&s->preempted_reqs, r);
}

/* Blocks for r's next positions: 0 and the engine goes on, or the status. */
static int starved_grow(struct server *s, struct gen_req *r)
{
	struct kvp_gen_job *j = &r->job;
	int rc = kvp_cache_seq_grow(s->cache, &r->seq, r->need);

	if (rc == KVP_OK) {
		j->blocks = r->seq.block_data;
		j->n_blocks = r->seq.n_blocks;
		j->positions = r->seq.n_blocks * s->cfg->block_tokens;
	}
	return rc;
}

/* The blocks of a preempted r again: its cached part matched, fresh ones for the rest
 * and its next position. */
static int preempted_restart(struct server *s, struct gen_req *r)
{
	struct kvp_gen_job *j = &r->job;
	const uint32_t b = s->cfg->block_tokens;
	/* match at most --max-tokens of it (a generation may grow past that): the rest is
	 * recomputed */
	const uint32_t match = r->n_valid < s->cfg->max_tokens ? r->n_valid : s->cfg->max_tokens;
	int rc = kvp_cache_seq_begin(s->cache, r->conn->root, r->conn->group, j->tokens, match,
				     r->n_valid + 1, &r->seq);

	if (rc == KVP_OK) {
		j->blocks = r->seq.block_data;
		j->n_blocks = r->seq.n_blocks;
		j->positions = r->seq.n_blocks * b;
		j->cached = r->seq.matched_blocks * b;
		if (j->cached > r->n_valid)
			j->cached = r->n_valid;
	}
	return rc;
}

/* Give r's blocks back (the computed ones cached) and wait to take them again. */
static void preempt(struct server *s, struct gen_req *r)
{
	kvp_debug("GENERATE %u preempted at %u positions: no block for more", r->req_id,
		  r->need - 1);
	r->n_valid = r->need - 1;
	kvp_cache_seq_end(s->cache, &r->seq, r->job.tokens, r->n_valid);
	wait_remove(&s->starved, r);
	r->wait = REQ_PREEMPTED;
	wait_push(&s->preempted_reqs, r);
	s->preempted++;
}

/* Let go on whatever can: starved ones that get their blocks, then preempted ones that
 * get theirs back; a client gone ends its request. Stops at the first that cannot
 * (oldest first). */
static void waiters_retry(struct server *s)
{
	struct gen_req *r, *next;
	int rc;

	/* a client gone: end its request wherever it waits */
	for (int l = 0; l < 2; l++)
		for (r = l ? s->preempted_reqs : s->starved; r; r = next) {
			next = r->next_wait;
			if (r->conn)
				continue;
			wait_remove(l ? &s->preempted_reqs : &s->starved, r);
			kvp_gen_resume(s->gen, &r->job, KVP_ECLOSED);
		}
	while ((r = s->starved)) {
		rc = starved_grow(s, r);
		if (rc == KVP_EFULL)
			break;
		wait_remove(&s->starved, r);
		kvp_gen_resume(s->gen, &r->job, rc);
	}
	while (!s->starved && (r = s->preempted_reqs)) {
		rc = preempted_restart(s, r);
		if (rc == KVP_EFULL)
			break;
		wait_remove(&s->preempted_reqs, r);
		if (rc == KVP_OK)
			kvp_gen_resume_recompute(s->gen, &r->job);
		else
			kvp_gen_resume(s->gen, &r->job, rc);
	}
}

/* Whether a job the engine has, other than the parked ones, will send news: one that
 * runs (its growth or its end), one whose end the loop has not taken yet, or one
 * waiting for a place while a place is not held by a parked job (the engine admits it
 * and runs it). Counted as the loop sees them, not as the engine does now: a job that
 * ended after the loop's last poll still holds its blocks until its news is taken. */
static bool others_bring_news(const struct server *s, uint32_t parked)
{
	return s->n_submitted > parked && parked < s->cfg->max_seqs;
}

/* Nothing the engine runs can free a block: preempt the youngest starved, or end the
 * last one waiting. */
void gen_wait_unblock(struct server *s)
{
	for (;;) {
		uint32_t starved, pre;
		struct gen_req *r, *young = NULL;

		waiters_retry(s);
		starved = wait_count(s->starved);
		pre = wait_count(s->preempted_reqs);
		if (starved + pre == 0 || others_bring_news(s, starved + pre))
			return;
		if (starved + pre >= 2 && starved > 0) {
			for (r = s->starved; r; r = r->next_wait)
				if (!young || r->job.t_received_ns > young->job.t_received_ns)
					young = r;
			preempt(s, young);
			continue;
		}
		/* alone, and the pool still cannot hold it */
		r = s->starved ? s->starved : s->preempted_reqs;
		wait_remove(s->starved ? &s->starved : &s->preempted_reqs, r);
		kvp_gen_resume(s->gen, &r->job, KVP_EFULL);
	}
}

void gen_wait_grow(struct server *s, struct gen_req *r, uint32_t need)
{
	int rc = r->conn ? KVP_OK : KVP_ECLOSED;

	r->need = need;
	if (rc == KVP_OK && !s->starved)
		rc = starved_grow(s, r);
	else if (rc == KVP_OK)
		rc = KVP_EFULL;   /* older ones wait first */
	if (rc == KVP_EFULL) {
		r->wait = REQ_STARVED;
		wait_push(&s->starved, r);
		return;
	}
	kvp_gen_resume(s->gen, &r->job, rc);
}

