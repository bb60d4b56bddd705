/*
 * generate.c - GENERATE requests on the loop's side: start a job, stream its tokens as
 * the engine thread publishes them, finish it. The request itself is in gen_req.h;
 * blocks as it grows in gen_wait.c; waiting for a prompt another request is computing
 * in gen_follow.c.
 *
 *   GENERATE ──checks──▶ (another request computes this prompt's blocks: follow it,
 *            begin when it releases them) ──▶ gen_req_begin: kvp_cache_seq_begin (pin
 *            the cached prefix, take blocks for the rest of the prompt) ──▶
 *            kvp_gen_submit ──▶ engine thread (gen.c) ──news──▶ gen_notify_cb
 *   gen_notify_cb: per job with news, send its new tokens (if its client is still
 *   there); once its prompt is computed, release its followers; when it waits for
 *   blocks, gen_wait_grow; when done, GENERATE_DONE (or an ERROR), then
 *   kvp_cache_seq_end caches the full blocks it computed and frees the rest.
 *
 * So a generation holds blocks for what it has computed, plus at most one, never for
 * the max_new it may reach.
 *
 * A request is owned by the loop from its start to its finish, never by its
 * connection: a client that goes away only detaches (the job is cancelled at its next
 * step and comes back through the news), so no block an engine is writing is ever
 * freed under it.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "kvp_clock.h"
#include "kvp_engine.h"
#include "kvp_log.h"
#include "gen_req.h"
#include "server.h"

#define NEWS_BATCH 64

static void gen_req_free(struct gen_req *r)
{
	if (!r)
		return;
	srv_free(r->job.tokens);
	srv_free(r->job.logits);
	srv_free(r);
}

/* ---- starting ------------------------------------------------------------------- */

/* The request's own memory: its tokens (prompt, then room for max_new) and logits. */
static struct gen_req *gen_req_alloc(const struct kvp_generate_req *m, uint32_t max_new,
				     uint32_t vocab)
{
	struct gen_req *r = srv_zalloc(sizeof(*r));

	if (!r)
		return NULL;
	r->job.tokens = srv_malloc(((size_t)m->n_tokens + max_new) * sizeof(uint32_t));
	if (!r->job.tokens)
		goto out_free;
	kvp_load_u32s(r->job.tokens, m->tokens, m->n_tokens);
	if (m->flags & KVP_GEN_LOGITS) {
		r->job.logits = srv_malloc((size_t)vocab * sizeof(float));
		if (!r->job.logits)
			goto out_free;
		r->job.want_logits = true;
	}
	return r;

out_free:
	gen_req_free(r);
	return NULL;
}

/* The blocks of the request: its cached prefix pinned, fresh blocks for the rest. */
static struct req_outcome gen_req_blocks(struct conn *c, const struct kvp_frame_hdr *h,
					 struct gen_req *r, uint32_t n_prompt, uint32_t n_positions)
{
	struct server *s = c->srv;
	const uint32_t need = (n_positions + s->cfg->block_tokens - 1) / s->cfg->block_tokens;
	struct kvp_cache_stats st;
	int rc;

	srv_keeps_expire(s);   /* what is due goes before blocks are taken */
	rc = kvp_cache_seq_begin(s->cache, c->root, c->group, r->job.tokens, n_prompt,
				 n_positions, &r->seq);

	if (rc == KVP_EFULL && r->seq.quota_full)
		return req_refuse(c, h, rc,
				  "tenant quota reached: this request needs %u blocks, and its tenant "
				  "holds %zu cached blocks; its quota is %u%% of the pool",
				  need, kvp_cache_group_blocks(s->cache, c->group),
				  s->cfg->tenant_quota_pct);
	if (rc == KVP_EFULL) {
		kvp_cache_get_stats(s->cache, &st);
		return req_refuse(c, h, rc,
				  "pool full of pinned blocks: this request needs %u blocks, %u of %u "
				  "are pinned by running requests and leases",
				  need, st.pool.referenced, st.pool.total);
	}
	if (rc)
		return req_refuse(c, h, KVP_ENOMEM, "out of memory starting a generation");
	return (struct req_outcome){ .later = true };
}

/* r joins its connection's requests (it counts for --max-inflight from here). */
static void gen_req_link(struct conn *c, struct gen_req *r)
{
	r->conn = c;
	r->next = c->reqs;
	if (r->next)
		r->next->pprev = &r->next;
	r->pprev = &c->reqs;
	c->reqs = r;
	c->n_reqs++;
}

/* r leaves its connection's requests (nothing when the client is gone). */
static void gen_req_unlink(struct gen_req *r)
{
	struct conn *c = r->conn;

	if (!c)
		return;
	*r->pprev = r->next;
	if (r->next)
		r->next->pprev = r->pprev;
	c->n_reqs--;
	r->conn = NULL;
	/* a half-closed client waited for its last generation */
	if (c->peer_eof && c->n_reqs == 0 && c->state == CONN_READING)
		conn_finish(c, "peer closed");
}

/* Fill the engine job from the request and its blocks. */
static void gen_req_prepare(struct server *s, struct gen_req *r)
{
	const struct kvp_generate_req *m = &r->req;
	struct conn *c = r->conn;
	struct kvp_gen_job *j = &r->job;

	j->n_prompt = m->n_tokens;
	j->max_new = r->max_new;
	j->max_new_is_context = r->max_new < m->max_new;
	j->ctx_limit = s->model->cfg.ctx;
	j->cached = r->seq.matched_blocks * s->cfg->block_tokens;
	if (j->cached > m->n_tokens)
		j->cached = m->n_tokens;
	/* a whole cached prompt still runs its last token, for its logits */
	r->cached_report = j->cached < m->n_tokens ? j->cached : m->n_tokens - 1;
	r->ns = kvp_stats_generation_begin(&s->stats, conn_stats_ns(c), m->n_tokens,
					   r->seq.matched_blocks * s->cfg->block_tokens, &r->seq.miss);
	j->blocks = r->seq.block_data;
	j->n_blocks = r->seq.n_blocks;
	j->positions = r->seq.n_blocks * s->cfg->block_tokens;
	kvp_sampler_init(&j->sampler, m->temperature, m->top_k, m->top_p, m->seed);
	j->n_stop = m->n_stop;
	j->fair_tenant = c->group.hi ^ c->group.lo;
	j->fair_conn = c->id;
	j->owner = r;
	atomic_init(&j->cancel, false);
}

int gen_req_begin(struct server *s, struct gen_req *r)
{
	const struct kvp_frame_hdr h = { .version = r->version, .type = KVP_T_GENERATE,
					 .req_id = r->req_id };
	struct req_outcome o;

	if (s->gen_closing) {
		send_error(r->conn, r->version, r->req_id, KVP_ESHUTDOWN,
			   "kvprefixd is stopping: this generation did not start");
		o.status = KVP_ESHUTDOWN;
	} else {
		/* the prompt's blocks now; the generated tokens' as they come (gen_wait.c) */
		o = gen_req_blocks(r->conn, &h, r, r->req.n_tokens, r->req.n_tokens);
	}
	if (!o.later) {
		gen_req_unlink(r);
		gen_req_free(r);
		return o.status ? o.status : KVP_EINTERNAL;
	}
	gen_req_prepare(s, r);
	kvp_debug("conn %llu: GENERATE %u: %u prompt tokens, %u cached, max_new %u",
		  (unsigned long long)r->conn->id, r->req_id, r->req.n_tokens, r->job.cached,
		  r->max_new);
	kvp_gen_submit(s->gen, &r->job);
	s->n_submitted++;
	return KVP_OK;
}

void gen_req_drop(struct server *s, struct gen_req *r)
{
	(void)s;
	gen_req_unlink(r);
	gen_req_free(r);
}

void gen_req_begin_waited(struct server *s, struct gen_req *r)
{
	int rc;

	if (!r->conn) {
		gen_req_drop(s, r);   /* its client is gone */
		return;
	}
	rc = gen_req_begin(s, r);
	if (rc)   /* refused now (its ERROR sent): counted as a refused GENERATE */
		kvp_stats_request(&s->stats, KVP_T_GENERATE, rc);
}

/* The checks a GENERATE passes before it takes any memory. */
static struct req_outcome gen_check(struct conn *c, const struct kvp_frame_hdr *h,
				    const struct kvp_generate_req *m, int rc)
{
	struct server *s = c->srv;

	if (rc == KVP_EPROTO || (rc == KVP_EINVAL && (m->flags & ~KVP_GEN_FLAGS_KNOWN)))
		return req_malformed(c, h, rc, "malformed GENERATE: %s", kvp_strerror(rc));
	if (rc == KVP_ETOOBIG)
		return req_refuse(c, h, rc, "%u tokens: over the limit of %u per request",
				  m->n_tokens, s->cfg->max_tokens);
	if (rc)
		return req_refuse(c, h, rc, "GENERATE: a sampling value or count is out of range "
				  "(temperature >= 0, top_p in (0, 1], 1..max tokens, <= %u stop ids, "
				  "KEEP of 1 to %u seconds)", KVP_STOP_MAX, KVP_KEEP_MAX_S);
	if (c->n_reqs >= s->cfg->max_inflight)
		return req_refuse(c, h, KVP_EBUSY,
				  "this connection already runs %u generations (--max-inflight)",
				  c->n_reqs);
	if (!s->engine)
		return req_refuse(c, h, KVP_EUNSUPPORTED,
				  "this daemon runs --index-only: it has no engine to generate with");
	if (m->n_tokens > s->model->cfg.ctx)
		return req_refuse(c, h, KVP_ETOOBIG, "%u prompt tokens: over the model's context of %u",
				  m->n_tokens, s->model->cfg.ctx);
	return (struct req_outcome){ 0 };
}

struct req_outcome handle_generate(struct conn *c, const struct kvp_frame_hdr *h,
				   const uint8_t *p)
{
	struct server *s = c->srv;
	struct kvp_generate_req m;
	const struct kvp_model_config *mc;
	uint32_t max_new;
	struct req_outcome o;
	struct gen_req *r, *leader;
	size_t bad;
	int rc = kvp_generate_req_decode(p, h->len, s->cfg->max_tokens, &m);

	o = gen_check(c, h, &m, rc);
	if (o.status || o.close)
		return o;
	mc = &s->model->cfg;
	max_new = m.max_new;
	if (max_new > mc->ctx - m.n_tokens + 1)
		max_new = mc->ctx - m.n_tokens + 1;   /* the rest would finish "context" anyway */
	r = gen_req_alloc(&m, max_new, mc->vocab);
	if (!r)
		return req_refuse(c, h, KVP_ENOMEM, "out of memory starting a generation");
	if (kvp_model_check_tokens(s->model, r->job.tokens, m.n_tokens, &bad) != KVP_OK) {
		o = req_refuse(c, h, KVP_EINVAL, "token %u at position %zu: the vocabulary has %u",
			       r->job.tokens[bad], bad, mc->vocab);
		gen_req_free(r);
		return o;
	}
	/* the request's values kept until it begins; its stop ids beside its tokens */
	r->req_id = h->req_id;
	r->version = h->version;
	r->req = m;
	r->req.tokens = r->req.stop = NULL;
	r->max_new = max_new;
	kvp_load_u32s(r->job.stop, m.stop, m.n_stop);
	r->job.t_received_ns = kvp_clock_ns();
	gen_req_link(c, r);
	/* a prompt another request is computing right now: wait for its blocks */
	leader = gen_follow_leader(s, c, r->job.tokens, m.n_tokens);
	if (leader) {
		kvp_debug("conn %llu: GENERATE %u waits for GENERATE %u's prompt blocks",
			  (unsigned long long)c->id, h->req_id, leader->req_id);
		gen_follow(leader, r);
		s->n_following++;
		return (struct req_outcome){ .later = true };
	}
	/* blocks of its prompt on the disk: read them back, then begin */
	if (tier_promote(s, r))
		return (struct req_outcome){ .later = true };
	rc = gen_req_begin(s, r);
	return rc ? (struct req_outcome){ .status = rc } : (struct req_outcome){ .later = true };
}

/* ---- streaming and finishing ------------------------------------------------------- */

/* Send the tokens generated since the last call. */
static void gen_req_send_tokens(struct gen_req *r, const struct kvp_gen_progress *p)
{
	uint8_t small[4 + 4 * 64];
	uint32_t n = p->n_generated - r->n_sent;
	size_t cap = kvp_token_chunk_size(n), len;
	uint8_t *buf = cap <= sizeof(small) ? small : srv_malloc(cap);

	len = buf ? kvp_token_chunk_encode(buf, cap, r->job.tokens + r->job.n_prompt + r->n_sent,
					   n) : 0;
	if (len)
		(void)send_frame(r->conn, r->version, KVP_T_GENERATE | KVP_T_REPLY, r->req_id, buf,
				 len);
	if (buf != small)
		srv_free(buf);
	r->n_sent = p->n_generated;
}

/* The last frame of a finished request: GENERATE_DONE with the usage, or an ERROR. */
static void gen_req_send_done(struct gen_req *r, const struct kvp_gen_progress *p)
{
	const struct kvp_gen_job *j = &r->job;
	struct kvp_generate_done d = {
		.prompt_tokens = j->n_prompt,
		.cached_tokens = r->cached_report,
		.computed_tokens = j->n_prompt - r->cached_report,
		.generated_tokens = p->n_generated,
		.finish = p->finish,
		.ttft_us = p->ttft_us,
		.prefill_us = p->prefill_us,
		.decode_us = p->decode_us,
		.n_logits = j->want_logits ? r->conn->srv->model->cfg.vocab : 0,
	};
	size_t cap, len;
	uint8_t *buf;

	if (p->status == KVP_EFULL) {
		send_error(r->conn, r->version, r->req_id, p->status,
			   "%s: no block for the next tokens, after %u generated; the tokens sent "
			   "stand", r->seq.quota_full ? "tenant quota reached" :
			   "pool full of pinned blocks", p->n_generated);
		return;
	}
	if (p->status) {
		send_error(r->conn, r->version, r->req_id, p->status, "generation failed: %s",
			   kvp_strerror(p->status));
		return;
	}
	cap = kvp_generate_done_size(d.n_logits);
	buf = srv_malloc(cap);
	len = buf ? kvp_generate_done_encode(buf, cap, &d, j->logits) : 0;
	if (len)
		(void)send_frame(r->conn, r->version, KVP_T_GENERATE_DONE, r->req_id, buf, len);
	else
		send_error(r->conn, r->version, r->req_id, KVP_ENOMEM, "out of memory sending usage");
	srv_free(buf);
}

/* A request is over: cache the blocks it computed, free the rest, count it. */
static void gen_req_finish(struct server *s, struct gen_req *r, const struct kvp_gen_progress *p)
{
	const struct kvp_gen_job *j = &r->job;
	/* prompt positions the engine ran, as in the usage frame (decode steps are
	 * generated_tokens); a request cut short mid-prefill counts what it got through */
	uint32_t computed = p->n_valid >= j->n_prompt ? j->n_prompt - r->cached_report
			    : p->n_valid > j->cached ? p->n_valid - j->cached : 0;

	gen_wait_forget(s, r);
	s->n_submitted--;
	if (r->seq.ns) {   /* a preempted request gave its blocks back already */
		const struct kvp_key root = r->seq.root, group = r->seq.group;

		kvp_cache_seq_end(s->cache, &r->seq, j->tokens, p->n_valid);
		if (r->req.flags & KVP_GEN_KEEP)   /* what of its prompt is cached now */
			srv_keep(s, root, group, j->tokens, j->n_prompt, r->req.keep_s,
				 r->req.priority);
	}
	kvp_stats_generation_end(&s->stats, r->ns, p->status, computed, p->n_generated,
				 p->ttft_us);
	gen_req_unlink(r);
	gen_req_free(r);
}

/* Take the engine thread's news, as many rounds as it has. */
static void gen_take_news(struct server *s)
{
	struct kvp_gen_news news[NEWS_BATCH];
	size_t n;

	while ((n = kvp_gen_poll(s->gen, news, NEWS_BATCH)) > 0) {
		for (size_t i = 0; i < n; i++) {
			struct gen_req *r = news[i].job->owner;
			const struct kvp_gen_progress *p = &news[i].p;

			if (r->conn && r->conn->state == CONN_READING) {
				if (p->n_generated > r->n_sent)
					gen_req_send_tokens(r, p);
				if (p->done)
					gen_req_send_done(r, p);
			}
			/* its prompt computed, or it ends: those waiting for its blocks go */
			if (!r->released && (p->n_valid >= r->job.n_prompt || p->done))
				gen_follow_release(s, r, p->n_valid < r->job.n_prompt ? p->n_valid
							 : r->job.n_prompt);
			if (p->done)
				gen_req_finish(s, r, p);
			else if (p->need_positions)
				gen_wait_grow(s, r, p->need_positions);
		}
	}
	if (s->starved || s->preempted_reqs)
		gen_wait_unblock(s);
}

static void gen_notify_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *s = arg;

	gen_take_news(s);
	maybe_finish_stop(s);
}

/* Called from the engine thread. */
static void gen_notify(void *arg)
{
	struct server *s = arg;

	event_active(s->gen_notify, EV_READ, 0);
}

void generate_detach(struct conn *c)
{
	struct server *s = c->srv;

	for (struct gen_req *r = c->reqs; r; r = r->next) {
		atomic_store(&r->job.cancel, true);
		r->conn = NULL;
	}
	c->reqs = NULL;
	c->n_reqs = 0;
	/* those waiting for blocks get no news from the engine: end them now; and the
	 * engine ends a cancelled job still waiting for a place even if all it runs wait */
	if (s->gen && (s->starved || s->preempted_reqs))
		gen_wait_unblock(s);
	if (s->gen)
		kvp_gen_kick(s->gen);
}

void generate_cut_short(struct server *s)
{
	if (!s->gen)
		return;
	gen_take_news(s);   /* what was generated so far still goes out */
	for (struct conn *c = s->conns; c; c = c->next) {
		if (c->state != CONN_READING)
			continue;
		for (struct gen_req *r = c->reqs; r; r = r->next)
			send_error(c, r->version, r->req_id, KVP_ESHUTDOWN,
				   "kvprefixd is stopping: this generation was cut short after %u "
				   "tokens", r->n_sent);
		generate_detach(c);
	}
}

/* ---- the engine thread ------------------------------------------------------------ */

int generate_start(struct server *s)
{
	s->gen_notify = event_new(s->base, -1, 0, gen_notify_cb, s);
	const struct kvp_gen_config gc = {
		.max_seqs = s->cfg->max_seqs,
		.max_batch_tokens = s->cfg->max_batch_tokens,
	};

	if (!s->gen_notify || kvp_gen_start(s->engine, &gc, gen_notify, s, &s->gen) != KVP_OK) {
		kvp_err("cannot start the engine thread");
		return KVP_ENOMEM;
	}
	return KVP_OK;
}

void generate_stop(struct server *s)
{
	s->gen_closing = true;   /* a follower released from here on does not begin */
	if (s->gen) {
		/* every job comes back done; return its blocks before the cache goes */
		kvp_gen_stop_thread(s->gen);
		gen_take_news(s);
		kvp_gen_free(s->gen);
		s->gen = NULL;
	}
	if (s->gen_notify)
		event_free(s->gen_notify);
	s->gen_notify = NULL;
}

uint32_t generate_active(const struct server *s)
{
	return (s->gen ? kvp_gen_active(s->gen) : 0) + s->n_following + s->n_promoting;
}

void generate_sched_stats(const struct server *s, struct kvp_sched_stats *out)
{
	memset(out, 0, sizeof(*out));
	if (!s->gen)
		return;
	kvp_gen_get_stats(s->gen, out);
	out->preempted = s->preempted;
}
