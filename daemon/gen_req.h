/*
 * gen_req.h - private to kvprefixd's GENERATE path: a request as the event loop holds
 * it, and the files that share it.
 *
 *   generate.c     start (checks, blocks, submit), stream, finish
 *   gen_wait.c     blocks as it grows: pausing and preemption when the pool is short
 *   gen_follow.c   a prompt another request is computing: wait for its blocks
 *
 * Everything here runs on the event loop thread only.
 */
#ifndef KVP_GEN_REQ_H
#define KVP_GEN_REQ_H

#include "kvp_cache.h"
#include "kvp_gen.h"
#include "kvp_proto.h"

struct conn;
struct server;
struct kvp_ns_counters;

/* A GENERATE request from the loop's side: the engine job, its blocks and its client. */
struct gen_req {
	struct kvp_gen_job job;      /* handed to the engine thread */
	struct conn *conn;           /* NULL once the client is gone */
	uint32_t req_id;
	uint8_t version;             /* its header's version: every frame of it carries it */
	uint32_t n_sent;             /* generated tokens already streamed */
	uint32_t cached_report;      /* cached_tokens in the usage frame */
	struct kvp_seq seq;          /* the request's blocks */
	struct kvp_ns_counters *ns;  /* its namespace's counters */
	struct gen_req *next, **pprev;
	/* parked and waiting on the loop: for blocks to grow (starved), or preempted (its
	 * blocks given back, r->seq empty) to take them again */
	enum { REQ_GOING, REQ_STARVED, REQ_PREEMPTED } wait;
	uint32_t need;               /* starved: positions its blocks must cover */
	uint32_t n_valid;            /* preempted: positions whose KV it had computed */
	struct gen_req *next_wait;   /* the server's starved or preempted list */
	/* its request's values (the tokens and stop ids are in job), and max_new clamped
	 * to the context: kept until it begins */
	struct kvp_generate_req req;
	uint32_t max_new;
	/* gen_follow.c: while it waits for another's prompt blocks it has a leader, and
	 * no blocks or job yet; a leader lists its followers until it releases them */
	struct gen_req *leader;
	struct gen_req *followers, *next_follower;
	bool released;               /* its prompt's blocks registered, followers begun */
};

/* generate.c: begin a request that has its memory, tokens checked (a follower once its
 * leader's prefill is over): its blocks, the job, submit. 0, or the status it was
 * refused with (its ERROR sent, r unlinked and freed). */
int gen_req_begin(struct server *s, struct gen_req *r);
/* Free a request that never began (its client gone while it followed). */
void gen_req_drop(struct server *s, struct gen_req *r);
/* A request that waited before it began (for another's prompt, or for blocks read back
 * from a tier): begin it now, or drop it when its client is gone. */
void gen_req_begin_waited(struct server *s, struct gen_req *r);

/* gen_wait.c */
/* r's job waits for blocks to cover need positions: give them, or make it wait. */
void gen_wait_grow(struct server *s, struct gen_req *r, uint32_t need);
/* After news, or a client gone: let go whatever can, preempt or end when nothing runs. */
void gen_wait_unblock(struct server *s);
/* r ends while it waits (the daemon stops): off the lists. */
void gen_wait_forget(struct server *s, struct gen_req *r);

/* gen_follow.c */
/* A running request in c's namespace computing full blocks of tokens[0 .. n) that are
 * not cached yet, the most of them; NULL when none. */
struct gen_req *gen_follow_leader(struct server *s, const struct conn *c, const uint32_t *tokens,
				  uint32_t n);
/* r waits for leader's prompt blocks. */
void gen_follow(struct gen_req *leader, struct gen_req *r);
/* leader computed positions 0 .. n_valid of its prompt (all of it, or it ends): register
 * the full blocks of them and begin its followers. Once. */
void gen_follow_release(struct server *s, struct gen_req *leader, uint32_t n_valid);

#endif
