/*
 * gen.c - the engine thread. See kvp_gen.h for the hand-over between threads and the
 * admission order.
 *
 * One step:
 *
 *   take new jobs (submitted -> waiting, resumed -> running)
 *   end the cancelled ones; admit waiting jobs while fewer than max_seqs run
 *   batch: a decode row of every running job past its prompt (a job whose next
 *          position has no block parks instead), then prompt chunks of the running
 *          jobs still prefilling, oldest first, until max_batch_tokens rows
 *   one kvp_engine_forward_batch over the batch: the weights read once
 *   per job: sample from its own logits row, publish (one lock, one notify)
 *
 * A long prompt therefore delays the streaming jobs by one step of max_batch_tokens
 * rows at most; every decoding job gets a token every step, and the prompts share what
 * the decode rows leave of the budget, oldest first (a job resumed after waiting for
 * blocks goes to the end of the list).
 */
#include "kvp_gen.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvp_clock.h"
#include "kvp_proto.h"

struct kvp_gen {
	struct kvp_engine *e;
	struct kvp_gen_config cfg;
	uint32_t vocab;
	void (*notify)(void *arg);
	void *notify_arg;
	pthread_t thread;
	bool started;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool stopping;
	bool kicked;                                       /* kvp_gen_kick: look again; under mu */
	struct kvp_gen_job *submitted, **submitted_tail;   /* FIFO, under mu */
	struct kvp_gen_job *resumed, **resumed_tail;       /* FIFO, under mu */
	struct kvp_gen_job *parked;                        /* waiting for blocks, under mu */
	struct kvp_gen_job *dirty;                         /* news for the loop, under mu */
	uint32_t n_active;                                 /* submitted, not done; under mu */
	struct kvp_sched_stats st;                         /* under mu */
	/* engine thread only */
	struct kvp_gen_job *waiting, **waiting_tail;       /* by arrival */
	uint32_t n_waiting;
	struct kvp_gen_job *running, **running_tail;       /* admitted, not parked */
	uint32_t n_admitted;                               /* running + parked */
	struct kvp_gen_job **batch_jobs;                   /* (max_seqs) this step's jobs */
	struct kvp_engine_seq *batch;                      /* (max_seqs) */
	struct kvp_gen_job **news;                         /* (max_seqs) to publish */
	float *logits;                                     /* (max_seqs, vocab) */
	void *sample_scratch;
};

/* ---- publishing ---------------------------------------------------------------------- */

/* Under mu: put job on the dirty list once. */
static void mark_dirty(struct kvp_gen *g, struct kvp_gen_job *j)
{
	if (j->priv.dirty)
		return;
	j->priv.dirty = true;
	j->priv.next_dirty = g->dirty;
	g->dirty = j;
}

/* Under mu: publish the engine's progress on j; after a done publish the loop owns j
 * (once mu is released). */
static void publish_locked(struct kvp_gen *g, struct kvp_gen_job *j)
{
	struct kvp_gen_job_private *q = &j->priv;

	q->eng.prefill_us = q->t_prefill_ns / 1000;
	q->eng.decode_us = q->t_decode_ns / 1000;
	q->pub = q->eng;
	if (q->eng.done)
		g->n_active--;
	mark_dirty(g, j);
	/* the figures the loop reads with this news: the lists as they are now */
	g->st.running = g->n_admitted;
	g->st.waiting = g->n_waiting;
}

static void publish(struct kvp_gen *g, struct kvp_gen_job *j)
{
	pthread_mutex_lock(&g->mu);
	publish_locked(g, j);
	pthread_mutex_unlock(&g->mu);
	g->notify(g->notify_arg);
}

/* ---- lists ------------------------------------------------------------------------- */

static void push(struct kvp_gen_job ***tail, struct kvp_gen_job *j)
{
	j->priv.next_q = NULL;
	**tail = j;
	*tail = &j->priv.next_q;
}

/* Under mu: j waits for blocks on the parked list. */
static void park(struct kvp_gen *g, struct kvp_gen_job *j)
{
	j->priv.next_park = g->parked;
	if (g->parked)
		g->parked->priv.pprev_park = &j->priv.next_park;
	j->priv.pprev_park = &g->parked;
	g->parked = j;
}

/* Under mu: j is no longer parked. */
static void unpark(struct kvp_gen_job *j)
{
	*j->priv.pprev_park = j->priv.next_park;
	if (j->priv.next_park)
		j->priv.next_park->priv.pprev_park = j->priv.pprev_park;
	j->priv.pprev_park = NULL;
}

/* ---- a job's progress ---------------------------------------------------------------- */

static bool is_stop(const struct kvp_gen_job *j, uint32_t tok)
{
	for (uint32_t i = 0; i < j->n_stop; i++)
		if (j->stop[i] == tok)
			return true;
	return false;
}

/* Draw the next token from logits; returns true when the job is finished. */
static bool take_token(struct kvp_gen *g, struct kvp_gen_job *j, const float *logits)
{
	struct kvp_gen_progress *r = &j->priv.eng;
	uint32_t tok = kvp_sample(&j->sampler, logits, g->vocab, g->sample_scratch);

	j->tokens[j->n_prompt + r->n_generated] = tok;
	r->n_generated++;
	if (is_stop(j, tok)) {
		r->finish = KVP_FINISH_STOP;
		return true;
	}
	if (r->n_generated == j->max_new) {
		/* a max_new cut to the context ends there: the context is what stopped it */
		r->finish = j->max_new_is_context ? KVP_FINISH_CONTEXT : KVP_FINISH_LENGTH;
		return true;
	}
	/* the token just drawn is fed next at position n_prompt + n_generated - 1 */
	if (j->n_prompt + r->n_generated - 1 >= j->ctx_limit) {
		r->finish = KVP_FINISH_CONTEXT;
		return true;
	}
	return false;
}

/* The position j decodes next (only once its prefill is over). */
static uint32_t decode_pos(const struct kvp_gen_job *j)
{
	return j->n_prompt + j->priv.eng.n_generated - 1;
}

static bool prefilling(const struct kvp_gen_job *j)
{
	return j->priv.pos < j->priv.prefill_end;
}

/* A forward over j's rows went through (logits: its last row's, when it asked for
 * them): move its progress on. */
static void job_advance(struct kvp_gen *g, struct kvp_gen_job *j, uint32_t rows,
			const float *logits, uint64_t step_ns)
{
	struct kvp_gen_job_private *q = &j->priv;
	struct kvp_gen_progress *r = &q->eng;

	if (!prefilling(j)) {
		r->n_valid = decode_pos(j) + 1;
		r->done = take_token(g, j, logits);
		q->t_decode_ns += step_ns;
		return;
	}
	q->pos += rows;
	q->t_prefill_ns += step_ns;
	r->n_valid = q->pos > j->cached ? q->pos : j->cached;
	if (q->pos < q->prefill_end || q->recompute)
		return;   /* more prompt to go, or a recompute: the next token is drawn already */
	if (j->want_logits)
		memcpy(j->logits, logits, (size_t)g->vocab * sizeof(float));
	if (j->max_new == 0) {
		r->done = true;
		r->finish = KVP_FINISH_LENGTH;
	} else {
		r->done = take_token(g, j, logits);
	}
	r->ttft_us = (kvp_clock_ns() - j->t_received_ns) / 1000;
}

/* ---- admission ------------------------------------------------------------------------ */

/* Running or parked jobs sharing j's tenant (or, with by_conn, its connection). */
static uint32_t running_like(const struct kvp_gen *g, const struct kvp_gen_job *j, bool by_conn,
			     const struct kvp_gen_job *parked)
{
	uint32_t n = 0;

	for (const struct kvp_gen_job *r = g->running; r; r = r->priv.next_q)
		n += by_conn ? r->fair_conn == j->fair_conn : r->fair_tenant == j->fair_tenant;
	for (const struct kvp_gen_job *r = parked; r; r = r->priv.next_park)
		n += by_conn ? r->fair_conn == j->fair_conn : r->fair_tenant == j->fair_tenant;
	return n;
}

/* Take the waiting job whose tenant, then connection, runs the fewest jobs (the
 * earliest among equals) out of the waiting queue. parked: the parked list, read under
 * mu by the caller. */
static struct kvp_gen_job *pick_waiting(struct kvp_gen *g, const struct kvp_gen_job *parked)
{
	struct kvp_gen_job **best = NULL, **pp;
	uint32_t best_t = UINT32_MAX, best_c = UINT32_MAX;

	for (pp = &g->waiting; *pp; pp = &(*pp)->priv.next_q) {
		uint32_t t = running_like(g, *pp, false, parked), c;

		if (t > best_t)
			continue;
		c = running_like(g, *pp, true, parked);
		if (t < best_t || c < best_c) {
			best = pp;
			best_t = t;
			best_c = c;
			if (t == 0)
				break;   /* nobody of its tenant runs: it cannot be beaten */
		}
	}
	struct kvp_gen_job *j = *best;

	*best = j->priv.next_q;
	if (!*best)
		g->waiting_tail = best;
	g->n_waiting--;
	return j;
}

/* Under mu: admit waiting jobs while there is room. */
static void admit(struct kvp_gen *g, uint64_t now)
{
	while (g->waiting && g->n_admitted < g->cfg.max_seqs) {
		struct kvp_gen_job *j = pick_waiting(g, g->parked);

		push(&g->running_tail, j);
		g->n_admitted++;
		g->st.admitted++;
		g->st.queue_us += (now - j->priv.t_submit_ns) / 1000;
	}
}

/* ---- the step --------------------------------------------------------------------------- */

enum job_fate { JOB_RUNS, JOB_DONE, JOB_PARKED };

/* End j with status (published by the caller). */
static enum job_fate end_job(struct kvp_gen_job *j, int status)
{
	j->priv.eng.done = true;
	j->priv.eng.status = status;
	return JOB_DONE;
}

/* Before a step: a cancelled or refused job ends, a decoding job whose next position
 * has no block parks. */
static enum job_fate job_check(struct kvp_gen *g, struct kvp_gen_job *j)
{
	if (j->priv.resume_status) {
		int st = j->priv.resume_status;

		j->priv.resume_status = 0;
		return end_job(j, st);
	}
	if (atomic_load_explicit(&j->cancel, memory_order_relaxed))
		return end_job(j, KVP_ECLOSED);
	if (!prefilling(j) && decode_pos(j) >= j->positions) {
		j->priv.eng.need_positions = decode_pos(j) + 1;
		return JOB_PARKED;
	}
	return JOB_RUNS;
}

static unsigned hist_bucket(uint32_t rows);

/* Count a step of rows over seqs sequences (none: no step ran) and publish every job of
 * news (n), parking those marked parked, with one lock and one notify; finished jobs
 * belong to the loop afterwards. */
static void publish_all(struct kvp_gen *g, struct kvp_gen_job **news, uint32_t n,
			uint32_t rows, uint32_t seqs)
{
	if (n == 0)
		return;
	pthread_mutex_lock(&g->mu);
	if (seqs) {
		g->st.steps++;
		g->st.step_rows += rows;
		g->st.step_seqs += seqs;
		g->st.rows_hist[hist_bucket(rows)]++;
	}
	for (uint32_t i = 0; i < n; i++) {
		if (news[i]->priv.eng.need_positions)
			park(g, news[i]);
		publish_locked(g, news[i]);
	}
	pthread_mutex_unlock(&g->mu);
	g->notify(g->notify_arg);
}

/* Drop the jobs that end or park from the running list (news gets them), and fill the
 * batch: decode rows first, then prompt chunks up to the token budget. Returns the
 * batch's sequences; *n_news the jobs to publish without a forward. */
static uint32_t build_batch(struct kvp_gen *g, uint32_t *n_news)
{
	uint32_t n = 0, budget = g->cfg.max_batch_tokens, nn = 0;
	struct kvp_gen_job **pp;

	/* a client gone while its job waited: no need to wait for a place to end it */
	for (pp = &g->waiting; *pp;) {
		struct kvp_gen_job *j = *pp;

		if (!atomic_load_explicit(&j->cancel, memory_order_relaxed)) {
			pp = &j->priv.next_q;
			continue;
		}
		*pp = j->priv.next_q;
		g->n_waiting--;
		(void)end_job(j, KVP_ECLOSED);
		publish(g, j);
	}
	g->waiting_tail = pp;
	for (pp = &g->running; *pp;) {
		struct kvp_gen_job *j = *pp;
		enum job_fate f = job_check(g, j);

		if (f == JOB_RUNS) {
			pp = &j->priv.next_q;
			continue;
		}
		*pp = j->priv.next_q;
		if (f == JOB_DONE)
			g->n_admitted--;
		g->news[nn++] = j;
	}
	g->running_tail = pp;
	for (int pass = 0; pass < 2; pass++) {
		for (struct kvp_gen_job *j = g->running; j && budget; j = j->priv.next_q) {
			struct kvp_gen_job_private *q = &j->priv;
			uint32_t p, rows;

			if (prefilling(j) != (pass == 1))
				continue;   /* decode rows first, prompt chunks second */
			p = pass == 0 ? decode_pos(j) : q->pos;
			rows = pass == 0 ? 1 : q->prefill_end - q->pos;
			if (rows > budget)
				rows = budget;
			g->batch_jobs[n] = j;
			g->batch[n] = (struct kvp_engine_seq){
				.blocks = j->blocks, .n_blocks = j->n_blocks,
				.tokens = j->tokens + p, .n = rows, .pos0 = p,
				.kv_write_from = j->cached,
				/* logits where a token is drawn: decode, a prompt's last chunk */
				.logits = pass == 0 || (p + rows == q->prefill_end && !q->recompute)
						  ? g->logits + (size_t)n * g->vocab : NULL,
			};
			budget -= rows;
			n++;
		}
	}
	*n_news = nn;
	return n;
}

static unsigned hist_bucket(uint32_t rows)
{
	unsigned b = 0;

	while (b < KVP_SCHED_HIST_BUCKETS - 1 && rows > (1u << b))
		b++;
	return b;
}

/* One step over every running job. */
static void step(struct kvp_gen *g)
{
	uint32_t n_news, n = build_batch(g, &n_news), rows = 0;
	struct kvp_gen_job **pp;
	uint64_t t0 = kvp_clock_ns(), dt;
	int rc = n ? kvp_engine_forward_batch(g->e, g->batch, n) : KVP_OK;

	dt = kvp_clock_ns() - t0;
	for (uint32_t i = 0; i < n; i++) {
		struct kvp_gen_job *j = g->batch_jobs[i];

		rows += g->batch[i].n;
		if (rc)
			(void)end_job(j, rc);
		else
			job_advance(g, j, g->batch[i].n, g->batch[i].logits, dt);
		g->news[n_news++] = j;
	}
	/* the finished ones leave the running list before they are published */
	for (pp = &g->running; *pp;) {
		if ((*pp)->priv.eng.done) {
			*pp = (*pp)->priv.next_q;
			g->n_admitted--;
		} else {
			pp = &(*pp)->priv.next_q;
		}
	}
	g->running_tail = pp;
	publish_all(g, g->news, n_news, rows, n);
}

/* Under mu: submitted jobs join the waiting queue, resumed ones the running list. */
static void take_new(struct kvp_gen *g, uint64_t now)
{
	while (g->submitted) {
		struct kvp_gen_job *j = g->submitted;

		g->submitted = j->priv.next_q;
		j->priv.t_submit_ns = now;
		push(&g->waiting_tail, j);
		g->n_waiting++;
	}
	g->submitted_tail = &g->submitted;
	while (g->resumed) {
		struct kvp_gen_job *j = g->resumed;

		g->resumed = j->priv.next_q;
		push(&g->running_tail, j);
	}
	g->resumed_tail = &g->resumed;
}

/* Stopping: every job not done, waiting, running or parked, ends with KVP_ESHUTDOWN. */
static void end_all(struct kvp_gen *g)
{
	struct kvp_gen_job *all = NULL, **tail = &all;

	pthread_mutex_lock(&g->mu);
	take_new(g, kvp_clock_ns());
	while (g->parked) {
		struct kvp_gen_job *j = g->parked;

		unpark(j);
		push(&tail, j);
	}
	pthread_mutex_unlock(&g->mu);
	*tail = g->running;
	while (*tail)
		tail = &(*tail)->priv.next_q;
	*tail = g->waiting;
	for (struct kvp_gen_job *j = all, *next; j; j = next) {
		next = j->priv.next_q;
		(void)end_job(j, KVP_ESHUTDOWN);
		publish(g, j);
	}
	g->running = g->waiting = NULL;
	g->running_tail = &g->running;
	g->waiting_tail = &g->waiting;
	g->n_admitted = g->n_waiting = 0;
	pthread_mutex_lock(&g->mu);
	g->st.running = g->st.waiting = 0;
	pthread_mutex_unlock(&g->mu);
}

static void *engine_main(void *arg)
{
	struct kvp_gen *g = arg;

	for (;;) {
		bool stopping;

		pthread_mutex_lock(&g->mu);
		while (!g->submitted && !g->resumed && !g->running && !g->stopping && !g->kicked &&
		       !(g->waiting && g->n_admitted < g->cfg.max_seqs))
			pthread_cond_wait(&g->cv, &g->mu);
		g->kicked = false;
		take_new(g, kvp_clock_ns());
		stopping = g->stopping;
		if (!stopping)
			admit(g, kvp_clock_ns());
		g->st.running = g->n_admitted;
		g->st.waiting = g->n_waiting;
		pthread_mutex_unlock(&g->mu);

		if (stopping) {
			end_all(g);
			return NULL;
		}
		step(g);
	}
}

/* ---- the loop's side ------------------------------------------------------------------- */

int kvp_gen_start(struct kvp_engine *e, const struct kvp_gen_config *cfg,
		  void (*notify)(void *arg), void *arg, struct kvp_gen **out)
{
	const uint32_t vocab = kvp_engine_model(e)->cfg.vocab;
	struct kvp_gen *g;

	if (cfg->max_seqs < 1 || cfg->max_batch_tokens < cfg->max_seqs)
		return KVP_EINVAL;
	g = calloc(1, sizeof(*g));
	if (!g)
		return KVP_ENOMEM;
	g->e = e;
	g->cfg = *cfg;
	g->vocab = vocab;
	g->notify = notify;
	g->notify_arg = arg;
	g->submitted_tail = &g->submitted;
	g->resumed_tail = &g->resumed;
	g->waiting_tail = &g->waiting;
	g->running_tail = &g->running;
	g->batch_jobs = calloc(cfg->max_seqs, sizeof(*g->batch_jobs));
	g->batch = calloc(cfg->max_seqs, sizeof(*g->batch));
	g->news = calloc(cfg->max_seqs, sizeof(*g->news));
	g->logits = malloc((size_t)cfg->max_seqs * vocab * sizeof(float));
	g->sample_scratch = malloc(kvp_sampler_scratch_bytes(vocab));
	if (!g->batch_jobs || !g->batch || !g->news || !g->logits || !g->sample_scratch)
		goto out_free;
	pthread_mutex_init(&g->mu, NULL);
	pthread_cond_init(&g->cv, NULL);
	if (pthread_create(&g->thread, NULL, engine_main, g) != 0)
		goto out_sync;
	g->started = true;
	*out = g;
	return KVP_OK;

out_sync:
	pthread_cond_destroy(&g->cv);
	pthread_mutex_destroy(&g->mu);
out_free:
	free(g->batch_jobs);
	free(g->batch);
	free(g->news);
	free(g->logits);
	free(g->sample_scratch);
	free(g);
	return KVP_ENOMEM;
}

void kvp_gen_submit(struct kvp_gen *g, struct kvp_gen_job *j)
{
	struct kvp_gen_job_private *q = &j->priv;

	memset(q, 0, sizeof(*q));
	q->pos = j->cached < j->n_prompt ? j->cached : j->n_prompt - 1;
	q->prefill_end = j->n_prompt;
	q->eng.n_valid = j->cached;
	q->pub = q->eng;
	pthread_mutex_lock(&g->mu);
	*g->submitted_tail = j;
	g->submitted_tail = &q->next_q;
	q->next_q = NULL;
	g->n_active++;
	pthread_cond_signal(&g->cv);
	pthread_mutex_unlock(&g->mu);
}

size_t kvp_gen_poll(struct kvp_gen *g, struct kvp_gen_news *news, size_t max)
{
	size_t n = 0;

	pthread_mutex_lock(&g->mu);
	while (g->dirty && n < max) {
		struct kvp_gen_job *j = g->dirty;

		g->dirty = j->priv.next_dirty;
		j->priv.dirty = false;
		news[n].job = j;
		news[n].p = j->priv.pub;
		n++;
	}
	pthread_mutex_unlock(&g->mu);
	return n;
}

/* Under mu: j leaves the parked list for the resumed queue. */
static void resume_locked(struct kvp_gen *g, struct kvp_gen_job *j)
{
	unpark(j);
	j->priv.eng.need_positions = 0;
	j->priv.next_q = NULL;
	*g->resumed_tail = j;
	g->resumed_tail = &j->priv.next_q;
	pthread_cond_signal(&g->cv);
}

void kvp_gen_resume(struct kvp_gen *g, struct kvp_gen_job *j, int status)
{
	pthread_mutex_lock(&g->mu);
	j->priv.resume_status = status;
	resume_locked(g, j);
	pthread_mutex_unlock(&g->mu);
}

void kvp_gen_resume_recompute(struct kvp_gen *g, struct kvp_gen_job *j)
{
	struct kvp_gen_job_private *q = &j->priv;

	pthread_mutex_lock(&g->mu);
	/* positions cached .. n_valid-1 again, as a prompt chunk; then decode goes on */
	q->prefill_end = q->eng.n_valid;
	q->pos = j->cached < q->prefill_end ? j->cached : q->prefill_end;
	q->recompute = true;
	q->eng.n_valid = q->pos;
	g->st.recomputes++;
	resume_locked(g, j);
	pthread_mutex_unlock(&g->mu);
}

void kvp_gen_kick(struct kvp_gen *g)
{
	pthread_mutex_lock(&g->mu);
	g->kicked = true;
	pthread_cond_signal(&g->cv);
	pthread_mutex_unlock(&g->mu);
}

uint32_t kvp_gen_active(struct kvp_gen *g)
{
	uint32_t n;

	pthread_mutex_lock(&g->mu);
	n = g->n_active;
	pthread_mutex_unlock(&g->mu);
	return n;
}

void kvp_gen_get_stats(struct kvp_gen *g, struct kvp_sched_stats *st)
{
	uint32_t parked = 0;

	pthread_mutex_lock(&g->mu);
	*st = g->st;
	for (const struct kvp_gen_job *j = g->parked; j; j = j->priv.next_park)
		parked++;
	pthread_mutex_unlock(&g->mu);
	st->parked = parked;
	st->present = true;
}

void kvp_gen_stop_thread(struct kvp_gen *g)
{
	if (!g || !g->started)
		return;
	pthread_mutex_lock(&g->mu);
	g->stopping = true;   /* the thread ends every job not done, wherever it is */
	pthread_cond_signal(&g->cv);
	pthread_mutex_unlock(&g->mu);
	pthread_join(g->thread, NULL);
	g->started = false;
}

void kvp_gen_free(struct kvp_gen *g)
{
	if (!g)
		return;
	kvp_gen_stop_thread(g);
	pthread_cond_destroy(&g->cv);
	pthread_mutex_destroy(&g->mu);
	free(g->batch_jobs);
	free(g->batch);
	free(g->news);
	free(g->logits);
	free(g->sample_scratch);
	free(g);
}
