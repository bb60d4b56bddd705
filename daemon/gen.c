/*
 * gen.c - the engine thread. See kvp_gen.h for the hand-over between threads.
 *
 * Scheduling: round robin over active jobs, one step each: a prefill chunk of at most
 * max_batch prompt rows, or one decode token. A long prompt therefore delays the next
 * token of other requests by one chunk at most, and every request makes progress.
 */
#include "kvp_gen.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvp_clock.h"
#include "kvp_proto.h"

#define PREFILL_CHUNK 512u

struct kvp_gen {
	struct kvp_engine *e;
	void (*notify)(void *arg);
	void *notify_arg;
	pthread_t thread;
	bool started;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool stopping;
	struct kvp_gen_job *submitted, **submitted_tail;   /* FIFO, under mu */
	struct kvp_gen_job *resumed, **resumed_tail;       /* FIFO, under mu */
	struct kvp_gen_job *parked;                        /* waiting for blocks, under mu */
	struct kvp_gen_job *dirty;                         /* news for the loop, under mu */
	uint32_t n_active;                                 /* submitted, not done; under mu */
	/* engine thread only */
	struct kvp_gen_job *active, **active_tail;
	float *logits;                                     /* (vocab) */
	void *sample_scratch;
};

/* Under mu: put job on the dirty list once. */
static void mark_dirty(struct kvp_gen *g, struct kvp_gen_job *j)
{
	if (j->priv.dirty)
		return;
	j->priv.dirty = true;
	j->priv.next_dirty = g->dirty;
	g->dirty = j;
}

static bool is_stop(const struct kvp_gen_job *j, uint32_t tok)
{
	for (uint32_t i = 0; i < j->n_stop; i++)
		if (j->stop[i] == tok)
			return true;
	return false;
}

/* Publish the engine's progress on j; after a done publish the loop owns j. */
static void publish(struct kvp_gen *g, struct kvp_gen_job *j)
{
	struct kvp_gen_job_private *q = &j->priv;

	q->eng.prefill_us = q->t_prefill_ns / 1000;
	q->eng.decode_us = q->t_decode_ns / 1000;
	pthread_mutex_lock(&g->mu);
	q->pub = q->eng;
	if (q->eng.done)
		g->n_active--;
	mark_dirty(g, j);
	pthread_mutex_unlock(&g->mu);
	g->notify(g->notify_arg);
}

/* Sample after a forward; returns true when the job is finished. */
static bool take_token(struct kvp_gen *g, struct kvp_gen_job *j)
{
	struct kvp_gen_progress *r = &j->priv.eng;
	const uint32_t vocab = kvp_engine_model(g->e)->cfg.vocab;
	uint32_t tok = kvp_sample(&j->sampler, g->logits, vocab, g->sample_scratch);

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

enum step_result {
	STEP_GOING,     /* still active */
	STEP_DONE,      /* finished: the loop owns the job now, do not touch it */
	STEP_PARKED,    /* waiting for blocks: the loop has it until kvp_gen_resume */
};

/* End j with status and publish it. */
static enum step_result end_job(struct kvp_gen *g, struct kvp_gen_job *j, int status)
{
	j->priv.eng.done = true;
	j->priv.eng.status = status;
	publish(g, j);
	return STEP_DONE;
}

/* j's next decode position has no block: ask the loop for one, and wait. */
static enum step_result park_for_blocks(struct kvp_gen *g, struct kvp_gen_job *j, uint32_t pos)
{
	j->priv.eng.need_positions = pos + 1;
	pthread_mutex_lock(&g->mu);
	park(g, j);
	pthread_mutex_unlock(&g->mu);
	publish(g, j);
	return STEP_PARKED;
}

/* One step of job j. */
static enum step_result step(struct kvp_gen *g, struct kvp_gen_job *j)
{
	struct kvp_gen_progress *r = &j->priv.eng;
	uint64_t t0 = kvp_clock_ns();
	bool done;
	int rc;

	if (atomic_load_explicit(&j->cancel, memory_order_relaxed))
		return end_job(g, j, KVP_ECLOSED);
	if (j->priv.pos >= j->n_prompt && j->n_prompt + r->n_generated - 1 >= j->positions)
		return park_for_blocks(g, j, j->n_prompt + r->n_generated - 1);
	if (j->priv.pos < j->n_prompt) {
		/* prefill: the uncached suffix, or just the last token of a cached prompt */
		uint32_t rows = j->n_prompt - j->priv.pos;
		bool last;

		if (rows > PREFILL_CHUNK)
			rows = PREFILL_CHUNK;
		last = j->priv.pos + rows == j->n_prompt;
		rc = kvp_engine_forward(g->e, j->blocks, j->n_blocks, j->tokens + j->priv.pos, rows,
					j->priv.pos, j->cached, last ? g->logits : NULL);
		j->priv.pos += rows;
		if (rc) {
			r->done = true;
			r->status = rc;
		} else if (last) {
			r->n_valid = j->n_prompt;
			if (j->want_logits)
				memcpy(j->logits, g->logits,
				       kvp_engine_model(g->e)->cfg.vocab * sizeof(float));
			if (j->max_new == 0) {
				r->done = true;
				r->finish = KVP_FINISH_LENGTH;
			} else {
				r->done = take_token(g, j);
			}
			r->ttft_us = (kvp_clock_ns() - j->t_received_ns) / 1000;
		} else {
			r->n_valid = j->priv.pos > j->cached ? j->priv.pos : j->cached;
		}
		j->priv.t_prefill_ns += kvp_clock_ns() - t0;
	} else {
		/* decode: feed the last token drawn */
		uint32_t p = j->n_prompt + r->n_generated - 1;

		rc = kvp_engine_forward(g->e, j->blocks, j->n_blocks, j->tokens + p, 1, p, j->cached,
					g->logits);
		if (rc) {
			r->done = true;
			r->status = rc;
		} else {
			r->n_valid = p + 1;
			r->done = take_token(g, j);
		}
		j->priv.t_decode_ns += kvp_clock_ns() - t0;
	}
	done = r->done;   /* read before publishing: a finished job may be freed at once */
	publish(g, j);
	return done ? STEP_DONE : STEP_GOING;
}

/* Under mu: take the submitted and resumed jobs into the active list. */
static void take_new(struct kvp_gen *g)
{
	if (g->submitted) {
		*g->active_tail = g->submitted;
		g->active_tail = g->submitted_tail;
		g->submitted = NULL;
		g->submitted_tail = &g->submitted;
	}
	if (g->resumed) {
		*g->active_tail = g->resumed;
		g->active_tail = g->resumed_tail;
		g->resumed = NULL;
		g->resumed_tail = &g->resumed;
	}
}

/* Stopping: every job not done, active or parked, ends with KVP_ESHUTDOWN. */
static void end_all(struct kvp_gen *g)
{
	pthread_mutex_lock(&g->mu);
	take_new(g);
	while (g->parked) {
		struct kvp_gen_job *j = g->parked;

		unpark(j);
		j->priv.next_q = NULL;
		*g->active_tail = j;
		g->active_tail = &j->priv.next_q;
	}
	pthread_mutex_unlock(&g->mu);
	for (struct kvp_gen_job *j = g->active, *next; j; j = next) {
		next = j->priv.next_q;
		(void)end_job(g, j, KVP_ESHUTDOWN);
	}
	g->active = NULL;
	g->active_tail = &g->active;
}

static void *engine_main(void *arg)
{
	struct kvp_gen *g = arg;

	for (;;) {
		struct kvp_gen_job **pp;
		bool stopping;

		pthread_mutex_lock(&g->mu);
		while (!g->submitted && !g->resumed && !g->active && !g->stopping)
			pthread_cond_wait(&g->cv, &g->mu);
		take_new(g);
		stopping = g->stopping;
		pthread_mutex_unlock(&g->mu);

		if (stopping) {
			end_all(g);
			return NULL;
		}
		/* one step of every active job, dropping the finished and the parked ones */
		for (pp = &g->active; *pp;) {
			struct kvp_gen_job *j = *pp, *next = j->priv.next_q;

			if (j->priv.resume_status) {
				int st = j->priv.resume_status;

				j->priv.resume_status = 0;
				(void)end_job(g, j, st);
			} else if (step(g, j) == STEP_GOING) {
				pp = &j->priv.next_q;
				continue;
			}
			*pp = next;
			if (!next)
				g->active_tail = pp;
		}
	}
}

int kvp_gen_start(struct kvp_engine *e, void (*notify)(void *arg), void *arg,
		  struct kvp_gen **out)
{
	const uint32_t vocab = kvp_engine_model(e)->cfg.vocab;
	struct kvp_gen *g = calloc(1, sizeof(*g));

	if (!g)
		return KVP_ENOMEM;
	g->e = e;
	g->notify = notify;
	g->notify_arg = arg;
	g->submitted_tail = &g->submitted;
	g->resumed_tail = &g->resumed;
	g->active_tail = &g->active;
	g->logits = malloc((size_t)vocab * sizeof(float));
	g->sample_scratch = malloc(kvp_sampler_scratch_bytes(vocab));
	if (!g->logits || !g->sample_scratch)
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
	q->eng.n_valid = j->cached;
	q->pub = q->eng;
	pthread_mutex_lock(&g->mu);
	*g->submitted_tail = j;
	g->submitted_tail = &q->next_q;
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

void kvp_gen_resume(struct kvp_gen *g, struct kvp_gen_job *j, int status)
{
	pthread_mutex_lock(&g->mu);
	unpark(j);
	j->priv.eng.need_positions = 0;
	j->priv.resume_status = status;
	j->priv.next_q = NULL;
	*g->resumed_tail = j;
	g->resumed_tail = &j->priv.next_q;
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

void kvp_gen_stop_thread(struct kvp_gen *g)
{
	if (!g || !g->started)
		return;
	pthread_mutex_lock(&g->mu);
	g->stopping = true;   /* the thread moves jobs never started to active and ends them */
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
	free(g->logits);
	free(g->sample_scratch);
	free(g);
}
