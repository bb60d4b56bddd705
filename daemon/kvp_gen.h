/*
 * kvp_gen.h - the engine thread: generation jobs in, progress out.
 *
 *   loop thread                         engine thread
 *   ───────────                         ─────────────
 *   kvp_gen_submit(job) ──queue──▶      takes new jobs, then runs one step of each
 *                                       active job in turn (a prefill chunk of at most
 *                                       max_batch rows, or one decode token)
 *   notify cb ◀──event_active── publishes progress (tokens, done) on the dirty list
 *   kvp_gen_poll() takes dirty jobs, sends their new tokens, finishes done ones
 *
 * The event loop never waits on compute: submit and poll only take a mutex for a few
 * pointer moves. A job's tokens array is written by the engine thread before it
 * publishes under the mutex, and read by the loop after it polls, so the loop sees
 * every token it is told about. Jobs are never dropped: a cancelled job still comes
 * back through poll (done, status KVP_ECLOSED) so its blocks can be returned.
 */
#ifndef KVP_GEN_H
#define KVP_GEN_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "kvp_engine.h"

#define KVP_GEN_STOP_MAX 64

struct kvp_gen_job {
	/* set by the loop before submit; the engine only reads these */
	uint32_t *tokens;            /* (n_prompt + max_new) prompt, then generated tokens */
	uint32_t n_prompt;
	uint32_t max_new;            /* clamped so positions stay within the context */
	uint32_t ctx_limit;          /* positions the blocks cover (<= model context) */
	uint32_t cached;             /* leading prompt positions whose KV is in the blocks */
	void *const *blocks;
	uint32_t n_blocks;
	struct kvp_sampler sampler;
	uint32_t stop[KVP_GEN_STOP_MAX];
	uint32_t n_stop;
	bool want_logits;
	float *logits;               /* (vocab) when want_logits: last prompt position */
	uint64_t t_received_ns;      /* CLOCK_MONOTONIC when the request arrived */
	void *owner;                 /* the loop's; never touched by the engine */
	atomic_bool cancel;          /* set by the loop when the client is gone */

	/* a snapshot taken under the gen mutex by kvp_gen_poll; what the loop reads */
	uint32_t n_generated;
	uint32_t n_valid;            /* positions whose KV is in the blocks */
	bool done;                   /* last snapshot: the engine is finished with the job */
	int status;                  /* 0, or why the job ended early */
	uint32_t finish;             /* KVP_FINISH_* when done with status 0 */
	uint64_t ttft_us, prefill_us, decode_us;

	/* private to kvp_gen */
	struct kvp_gen_job_progress {
		uint32_t n_generated, n_valid;
		bool done;
		int status;
		uint32_t finish;
		uint64_t ttft_us, prefill_us, decode_us;
	} eng, pub;                  /* engine's own, and published under the mutex */
	struct kvp_gen_job *next_q;  /* submit queue / active list */
	struct kvp_gen_job *next_dirty;
	bool dirty;
	uint32_t pos;                /* next prompt position to prefill */
	uint64_t t_prefill_ns, t_decode_ns;
};

struct kvp_gen;

/* Start the engine thread. notify(arg) is called from it whenever poll has news; it
 * must be thread-safe (event_active on a loop event is). */
int kvp_gen_start(struct kvp_engine *e, void (*notify)(void *arg), void *arg,
		  struct kvp_gen **out);
/* Cancel every job, finish them (status KVP_ESHUTDOWN unless already done) and join
 * the thread. Afterwards kvp_gen_poll hands back every job not yet polled as done, so
 * the loop can return their blocks; then kvp_gen_free. */
void kvp_gen_stop_thread(struct kvp_gen *g);
void kvp_gen_free(struct kvp_gen *g);
void kvp_gen_submit(struct kvp_gen *g, struct kvp_gen_job *job);
/* Take up to max jobs with news; returns how many. Each one's snapshot fields
 * (n_generated .. decode_us) are refreshed under the mutex and stay as they are until
 * the next poll that returns it. A job whose snapshot says done is never returned
 * again: the loop owns it and frees it. */
size_t kvp_gen_poll(struct kvp_gen *g, struct kvp_gen_job **jobs, size_t max);
/* Jobs submitted and not yet done. */
uint32_t kvp_gen_active(struct kvp_gen *g);

#endif
