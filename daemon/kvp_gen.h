/*
 * kvp_gen.h - the engine thread: generation jobs in, progress out.
 *
 *   loop thread                         engine thread
 *   ───────────                         ─────────────
 *   kvp_gen_submit(job) ──queue──▶      waiting (by arrival) ──admit──▶ running
 *                                       each step, one batched forward over the
 *                                       running jobs: a decode row of every job past
 *                                       its prompt, then prompt chunks of the oldest
 *                                       prefilling jobs filling the token budget
 *   notify cb ◀──event_active── publishes progress (tokens, done) on the dirty list
 *   kvp_gen_poll() takes dirty jobs with their progress, sends their new tokens,
 *                  finishes done ones
 *
 *   Admission: at most max_seqs jobs run (parked ones included); a free place goes to
 *   the waiting job whose tenant, then whose connection, has the fewest jobs running,
 *   the earliest arrival among equals. So one client with many requests queued takes
 *   turns with a client that has one, and a tenant with many connections with a
 *   tenant that has one.
 *
 *   Blocks as the job grows: a decode step whose position has no block yet parks the
 *   job (progress.need_positions) instead of running; the loop takes more blocks from
 *   the cache, sets job->blocks / n_blocks / positions and calls kvp_gen_resume (or
 *   resumes it with a status, KVP_EFULL, that ends it). A parked job the loop cannot
 *   give blocks to may instead be preempted: the loop returns its blocks to the cache,
 *   later takes the blocks of tokens[0 .. n_valid) again (the cached part matched, the
 *   rest fresh), sets blocks / n_blocks / positions / cached and calls
 *   kvp_gen_resume_recompute; the engine then recomputes the positions from cached to
 *   n_valid as a prompt chunk (no token drawn) and goes on decoding. The engine never
 *   touches a parked job, and the loop never touches a running one's blocks.
 *
 * The event loop never waits on compute: submit and poll only take a mutex for a few
 * pointer moves. Progress is published once per step: the engine copies its own
 * progress into the job's published copy under the mutex, and poll hands the loop a
 * copy of that. A job's tokens array is written by the engine thread before it
 * publishes, and read by the loop after it polls, so the loop sees every token it is
 * told about. Jobs are never dropped: a cancelled job still comes
 * back through poll (done, status KVP_ECLOSED) so its blocks can be returned.
 *
 * Results do not depend on the batch (DESIGN.md invariant 9): a job's rows are computed
 * as the engine computes any batch, and sampling uses the job's own sampler.
 */
#ifndef KVP_GEN_H
#define KVP_GEN_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "kvp_engine.h"
#include "kvp_stats.h"

#define KVP_GEN_STOP_MAX 64

/* How far the engine got with a job: what it publishes, and what the loop reads. */
struct kvp_gen_progress {
	uint32_t n_generated;        /* tokens drawn, in tokens[n_prompt ..] */
	uint32_t n_valid;            /* positions whose KV is in the blocks */
	uint32_t need_positions;     /* waiting for blocks to cover this many positions (0: not) */
	bool done;                   /* the engine is finished with the job */
	int status;                  /* 0, or why the job ended early */
	uint32_t finish;             /* KVP_FINISH_* when done with status 0 */
	uint64_t ttft_us, prefill_us, decode_us;
};

struct kvp_gen_job {
	/* set by the loop before submit; the engine only reads these */
	uint32_t *tokens;            /* (n_prompt + max_new) prompt, then generated tokens */
	uint32_t n_prompt;
	uint32_t max_new;            /* clamped so positions stay within the context */
	bool max_new_is_context;     /* ... and the clamp cut it: reaching it is "context" */
	uint32_t ctx_limit;          /* positions the blocks cover (<= model context) */
	uint32_t cached;             /* leading prompt positions whose KV is in the blocks */
	void *const *blocks;         /* may change while the job waits for blocks (kvp_gen_resume) */
	uint32_t n_blocks;
	uint32_t positions;          /* positions the blocks cover: n_blocks x block size */
	struct kvp_sampler sampler;
	uint32_t stop[KVP_GEN_STOP_MAX];
	uint32_t n_stop;
	bool want_logits;
	float *logits;               /* (vocab) when want_logits: last prompt position */
	uint64_t t_received_ns;      /* CLOCK_MONOTONIC when the request arrived */
	uint64_t fair_tenant;        /* admission turns: the job's tenant, and its */
	uint64_t fair_conn;          /* connection (any values; equal means the same) */
	void *owner;                 /* the loop's; never touched by the engine */
	atomic_bool cancel;          /* set by the loop when the client is gone */

	/* private to kvp_gen */
	struct kvp_gen_job_private {
		struct kvp_gen_progress eng;   /* the engine thread's own, moved by each step */
		struct kvp_gen_progress pub;   /* the last published, under the gen mutex */
		struct kvp_gen_job *next_q;    /* submit queue / active list / resumed queue */
		struct kvp_gen_job *next_park, **pprev_park;   /* waiting for blocks, under mu */
		int resume_status;             /* set by kvp_gen_resume: 0, or why it must end */
		struct kvp_gen_job *next_dirty;
		bool dirty;
		uint32_t pos;                  /* next position to prefill */
		uint32_t prefill_end;          /* prefill runs to here: n_prompt, or n_valid
		                                  after a preemption (then draws no token) */
		bool recompute;                /* kvp_gen_resume_recompute was called */
		uint64_t t_prefill_ns, t_decode_ns, t_submit_ns;
	} priv;
};

/* One piece of news from kvp_gen_poll: a job and its progress as last published. */
struct kvp_gen_news {
	struct kvp_gen_job *job;
	struct kvp_gen_progress p;
};

struct kvp_gen;

struct kvp_gen_config {
	uint32_t max_seqs;           /* jobs running at once, >= 1 */
	uint32_t max_batch_tokens;   /* rows of one step, >= max_seqs; at most the
	                                engine's max_batch for one pass of the weights */
};

/* Start the engine thread. notify(arg) is called from it whenever poll has news; it
 * must be thread-safe (event_active on a loop event is). KVP_EINVAL for a config out
 * of range, KVP_ENOMEM. */
int kvp_gen_start(struct kvp_engine *e, const struct kvp_gen_config *cfg,
		  void (*notify)(void *arg), void *arg, struct kvp_gen **out);
/* Cancel every job, finish them (status KVP_ESHUTDOWN unless already done) and join
 * the thread. Afterwards kvp_gen_poll hands back every job not yet polled as done, so
 * the loop can return their blocks; then kvp_gen_free. */
void kvp_gen_stop_thread(struct kvp_gen *g);
void kvp_gen_free(struct kvp_gen *g);
void kvp_gen_submit(struct kvp_gen *g, struct kvp_gen_job *job);
/* Take up to max jobs with news, each with a copy of its progress as published;
 * returns how many. A job whose progress says done is never returned again: the loop
 * owns it and frees it. */
size_t kvp_gen_poll(struct kvp_gen *g, struct kvp_gen_news *news, size_t max);
/* A job parked for blocks may go on: its blocks now cover job->positions (set by the
 * caller before this call), or, with status != 0, it ends with that status. Only for a
 * job whose last news had need_positions set; once per park. */
void kvp_gen_resume(struct kvp_gen *g, struct kvp_gen_job *job, int status);
/* A parked job was preempted (its blocks given back) and has blocks again: job->blocks,
 * n_blocks, positions and cached are set for tokens[0 .. n_valid of its last news) plus
 * the next position. The engine recomputes what is not cached, then decodes on. */
void kvp_gen_resume_recompute(struct kvp_gen *g, struct kvp_gen_job *job);
/* Jobs submitted and not yet done. */
uint32_t kvp_gen_active(struct kvp_gen *g);
/* Make the engine thread look at its jobs again (one was cancelled while all it runs
 * are parked). */
void kvp_gen_kick(struct kvp_gen *g);
/* What the scheduler did, for STATS and /metrics (all but preempted, which the loop
 * counts). */
void kvp_gen_get_stats(struct kvp_gen *g, struct kvp_sched_stats *st);

#endif
