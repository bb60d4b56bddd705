/*
 * bench_fleet.c - kvprefix-bench events, its fleet-index part: a fleet of engines'
 * BlockStored batches, made with the events library the daemon publishes with,
 * decoded and applied as kvprefixd --kv-events-sub does.
 *
 *   the fleet    prompts of 128 blocks of 16 tokens, each on one engine (round robin),
 *                its first 32 blocks one of 16 shared system prompts; one batch a
 *                prompt, one BlockStored event of its 128 blocks
 *   in process   every batch decoded and applied, one thread: blocks/s, events/s, the
 *                resident memory grown; 1,000 queries of a stored prompt: each engine's
 *                prefix (kvp_fleet_match) against the query's keys alone; then every
 *                block removed (BlockRemoved batches)
 *   end to end   a kvprefixd --index-only --kv-events-sub on an ipc socket; this
 *                process publishes the same batches (topic kv@engine-N@bench) and
 *                waits until STATS says every block is indexed; then FLEET and LOOKUP
 *                round trips of the same queries
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "bench.h"
#include "bench_events.h"
#include "kvp_be.h"
#include "kvp_clock.h"
#include "kvp_events.h"
#include "kvp_fleet.h"
#include "util.h"

#define CMD "events"
#define BT 16u
#define PROMPT_BLOCKS 128u
#define SHARED_BLOCKS 32u
#define N_SYSTEMS 16u
#define N_QUERIES 1000u

struct batch {
	uint8_t *buf;
	size_t len;
	uint32_t inst;
};

struct fleet_work {
	uint32_t instances, n_prompts;
	struct batch *stored, *removed;
	size_t n_events;
};

/* Prompt p's tokens: a shared system prompt, then its own. */
static void prompt_tokens(uint32_t p, uint32_t *t)
{
	bench_rand_tokens(t, SHARED_BLOCKS * BT, 1000 + p % N_SYSTEMS, 1u << 20);
	bench_rand_tokens(t + SHARED_BLOCKS * BT, (PROMPT_BLOCKS - SHARED_BLOCKS) * BT,
			  1000000 + p, 1u << 20);
}

/* Block b of prompt p, as its engine names it. */
static uint64_t block_id(uint32_t p, uint32_t b)
{
	return (uint64_t)p * PROMPT_BLOCKS + b + 1;
}

/* One prompt's batch: its blocks stored (one BlockStored event: each block continues
 * the one before) or removed (one BlockRemoved). */
static int encode_prompt(struct kvp_evbatch *eb, uint32_t p, const uint32_t *t, bool remove,
			 struct batch *out)
{
	int rc = 0;

	for (uint32_t b = 0; b < PROMPT_BLOCKS && rc == 0; b++)
		rc = remove ? kvp_evbatch_removed(eb, block_id(p, b), KVP_EV_GPU)
			    : kvp_evbatch_stored(eb, block_id(p, b), b > 0,
						 b ? block_id(p, b - 1) : 0, t + b * BT, KVP_EV_GPU);
	return rc ? rc : kvp_evbatch_take(eb, 0.0, &out->buf, &out->len);
}

static void work_free(struct fleet_work *w)
{
	for (uint32_t p = 0; p < w->n_prompts; p++) {
		free(w->stored ? w->stored[p].buf : NULL);
		free(w->removed ? w->removed[p].buf : NULL);
	}
	free(w->stored);
	free(w->removed);
}

/* Every prompt's stored and removed batches. */
static int make_work(uint32_t instances, uint64_t blocks, struct fleet_work *w)
{
	uint32_t *t = malloc(PROMPT_BLOCKS * BT * sizeof(*t));
	struct kvp_evbatch *eb = NULL;
	int rc = KVP_ENOMEM;

	memset(w, 0, sizeof(*w));
	w->instances = instances;
	w->n_prompts = (uint32_t)((blocks + PROMPT_BLOCKS - 1) / PROMPT_BLOCKS);
	w->stored = calloc(w->n_prompts, sizeof(*w->stored));
	w->removed = calloc(w->n_prompts, sizeof(*w->removed));
	if (!t || !w->stored || !w->removed || kvp_evbatch_create(KVP_EV_MAP, BT, &eb) != 0)
		goto out;
	for (uint32_t p = 0; p < w->n_prompts; p++) {
		prompt_tokens(p, t);
		w->stored[p].inst = w->removed[p].inst = p % instances;
		rc = encode_prompt(eb, p, t, false, &w->stored[p]);
		if (rc == 0)
			rc = encode_prompt(eb, p, t, true, &w->removed[p]);
		if (rc)
			goto out;
	}
	rc = 0;
out:
	kvp_evbatch_destroy(eb);
	free(t);
	return rc;
}

/* Decode and apply batches[0..n); the events in *n_events. 0 or -1. */
static int ingest(struct kvp_fleet *f, struct kvp_evdecoder *d, const struct batch *b,
		  uint32_t n, size_t *n_events)
{
	*n_events = 0;
	for (uint32_t i = 0; i < n; i++) {
		const struct kvp_ev *ev;
		size_t ne, skipped;

		if (kvp_evdecode(d, b[i].buf, b[i].len, &ev, &ne) != 0)
			return -1;
		for (size_t k = 0; k < ne; k++)
			if (kvp_fleet_apply(f, b[i].inst, &ev[k], &skipped) != 0)
				return -1;
		*n_events += ne;
	}
	return 0;
}

/* Each engine's prefix of N_QUERIES stored prompts, and their keys alone: mean us. */
static void time_queries(const struct kvp_fleet *f, uint32_t n_prompts, uint32_t query_tokens,
			 struct fleet_result *r)
{
	uint32_t *t = malloc(PROMPT_BLOCKS * BT * sizeof(*t)), out[KVP_FLEET_MAX_INSTANCES];
	struct kvp_key *keys = malloc(PROMPT_BLOCKS * sizeof(*keys));
	uint64_t match_ns = 0, hash_ns = 0, s;

	if (!t || !keys) {
		free(t);
		free(keys);
		return;
	}
	for (uint32_t q = 0; q < N_QUERIES; q++) {
		prompt_tokens((q * 7919u) % n_prompts, t);
		s = kvp_clock_ns();
		kvp_fleet_match(f, t, query_tokens, keys, out);
		match_ns += kvp_clock_ns() - s;
		bench_sink += out[0];
		s = kvp_clock_ns();
		kvp_chain_keys(kvp_ns_root("kvprefix/fleet", 0, NULL), t, query_tokens / BT, BT,
			       keys);
		hash_ns += kvp_clock_ns() - s;
		bench_sink += keys[0].lo;
	}
	r->match_us = (double)match_ns / 1e3 / N_QUERIES;
	r->hash_us = (double)hash_ns / 1e3 / N_QUERIES;
	free(t);
	free(keys);
}

static int in_process(const struct fleet_work *w, uint32_t query_tokens, struct fleet_result *r)
{
	struct kvp_fleet *f = NULL;
	struct kvp_evdecoder *d = NULL;
	double rss0 = bench_rss_mb("VmRSS");
	size_t n_events;
	uint64_t t0;
	int rc = -1;
	char name[32];

	if (kvp_fleet_create(BT, kvp_ns_root("kvprefix/fleet", 0, NULL), &f) != 0 ||
	    kvp_evdecoder_create(&d) != 0)
		goto out;
	for (uint32_t i = 0; i < w->instances; i++) {
		snprintf(name, sizeof(name), "engine-%u", i);
		kvp_fleet_instance(f, name);
	}
	t0 = kvp_clock_ns();
	if (ingest(f, d, w->stored, w->n_prompts, &n_events) < 0)
		goto out;
	r->ingest_blocks_per_s = (double)kvp_fleet_blocks(f) / ((double)(kvp_clock_ns() - t0) / 1e9);
	r->ingest_events_per_s = (double)n_events / ((double)(kvp_clock_ns() - t0) / 1e9);
	r->blocks = kvp_fleet_blocks(f);
	r->bytes_per_block = (bench_rss_mb("VmRSS") - rss0) * 1e6 / (double)r->blocks;
	time_queries(f, w->n_prompts, query_tokens, r);
	t0 = kvp_clock_ns();
	if (ingest(f, d, w->removed, w->n_prompts, &n_events) < 0 || kvp_fleet_blocks(f) != 0)
		goto out;
	r->remove_blocks_per_s = (double)r->blocks / ((double)(kvp_clock_ns() - t0) / 1e9);
	rc = 0;
out:
	if (rc)
		fprintf(stderr, PROG " " CMD ": the fleet index refused a batch\n");
	kvp_evdecoder_destroy(d);
	kvp_fleet_destroy(f);
	return rc;
}

/* ---- end to end ------------------------------------------------------------------------ */

static int publish(void *pub, uint32_t inst, uint64_t seq, const uint8_t *buf, size_t len)
{
	char topic[48];
	uint8_t s8[8];

	snprintf(topic, sizeof(topic), "kv@engine-%u@bench", inst);
	kvp_be_put_u64(s8, seq);
	return zmq_send(pub, topic, strlen(topic), ZMQ_SNDMORE) < 0 ||
	       zmq_send(pub, s8, 8, ZMQ_SNDMORE) < 0 || zmq_send(pub, buf, len, 0) < 0 ? -1 : 0;
}

/* Median FLEET and LOOKUP round trips of stored prompts. */
static int time_round_trips(struct kvp_client *c, const struct fleet_work *w,
			    uint32_t query_tokens, struct fleet_result *r)
{
	uint32_t *t = malloc(PROMPT_BLOCKS * BT * sizeof(*t));
	double *fl = malloc(N_QUERIES * sizeof(*fl)), *lk = malloc(N_QUERIES * sizeof(*lk));
	struct kvp_fleet_match m[KVP_FLEET_MAX_INSTANCES];
	struct kvp_match lm;
	int rc = -1;

	for (uint32_t q = 0; t && fl && lk && q < N_QUERIES; q++) {
		uint64_t s;
		size_t n;

		prompt_tokens((q * 7919u) % w->n_prompts, t);
		s = kvp_clock_ns();
		if (kvp_client_fleet(c, t, query_tokens, m, KVP_FLEET_MAX_INSTANCES, &n) < 0 ||
		    n != w->instances || m[0].matched_tokens != query_tokens)
			goto out;
		fl[q] = (double)(kvp_clock_ns() - s) / 1e3;
		s = kvp_clock_ns();
		if (kvp_client_lookup(c, t, query_tokens, 0, &lm) < 0)
			goto out;
		lk[q] = (double)(kvp_clock_ns() - s) / 1e3;
	}
	r->fleet_rtt_us = bench_median(fl, N_QUERIES);
	r->lookup_rtt_us = bench_median(lk, N_QUERIES);
	rc = 0;
out:
	if (rc)
		fprintf(stderr, PROG " " CMD ": FLEET failed or answered wrong\n");
	free(t);
	free(fl);
	free(lk);
	return rc;
}

static int end_to_end(const struct fleet_work *w, uint32_t query_tokens, const char *dir,
		      struct fleet_result *r)
{
	char ep[160];
	const char *args[] = { "--index-only", "--block-tokens", "16", "--log-level", "warn",
			       "--kv-events-sub", ep, NULL };
	uint64_t *seq = calloc(w->instances, sizeof(*seq)), t0;
	struct kvp_client *c = NULL;
	struct kvp_daemon d;
	void *ctx = zmq_ctx_new(), *pub = ctx ? zmq_socket(ctx, ZMQ_PUB) : NULL;
	int hwm = 0, rc = -1, linger = 0;
	uint8_t *clear = NULL;
	size_t clear_len = 0;
	struct kvp_evbatch *eb = NULL;

	snprintf(ep, sizeof(ep), "ipc://%s/fleet.ipc", dir);
	if (!seq || !pub || zmq_setsockopt(pub, ZMQ_SNDHWM, &hwm, sizeof(hwm)) != 0 ||
	    zmq_setsockopt(pub, ZMQ_LINGER, &linger, sizeof(linger)) != 0 ||
	    zmq_bind(pub, ep) != 0 || kvp_evbatch_create(KVP_EV_MAP, BT, &eb) != 0 ||
	    kvp_evbatch_cleared(eb) != 0 || kvp_evbatch_take(eb, 0.0, &clear, &clear_len) != 0)
		goto out_zmq;
	if (bench_daemon_start(&d, CMD, args, DAEMON_WAIT_MS) < 0)
		goto out_zmq;
	if (kvp_client_connect(d.socket, &c) < 0 || kvp_client_hello(c, NULL, NULL, NULL) < 0)
		goto out;
	/* the subscription takes a moment: announce every engine until it sees them all */
	for (int k = 0; k < 500 && events_stat(c, "fleet", "instances") < w->instances; k++) {
		for (uint32_t i = 0; i < w->instances; i++)
			publish(pub, i, seq[i]++, clear, clear_len);
		bench_sleep_ms(10);
	}
	t0 = kvp_clock_ns();
	for (uint32_t p = 0; p < w->n_prompts; p++)
		if (publish(pub, w->stored[p].inst, seq[w->stored[p].inst]++, w->stored[p].buf,
			    w->stored[p].len) < 0)
			goto out;
	while (events_stat(c, "fleet", "blocks") < (double)r->blocks) {
		if ((kvp_clock_ns() - t0) > 120 * 1000000000ull) {
			fprintf(stderr, PROG " " CMD ": the fleet index took in %.0f of %llu blocks\n",
				events_stat(c, "fleet", "blocks"), (unsigned long long)r->blocks);
			goto out;
		}
		bench_sleep_ms(2);
	}
	r->e2e_blocks_per_s = (double)r->blocks / ((double)(kvp_clock_ns() - t0) / 1e9);
	rc = time_round_trips(c, w, query_tokens, r);
out:
	kvp_client_close(c);
	bench_daemon_stop(&d);
out_zmq:
	if (rc)
		fprintf(stderr, PROG " " CMD ": the fleet index end to end failed\n");
	kvp_evbatch_destroy(eb);
	free(clear);
	free(seq);
	if (pub)
		zmq_close(pub);
	if (ctx)
		zmq_ctx_term(ctx);
	return rc;
}

int bench_fleet(uint32_t instances, uint64_t blocks, uint32_t query_tokens, const char *dir,
		struct fleet_result *r)
{
	struct fleet_work w;
	int rc;

	memset(r, 0, sizeof(*r));
	r->instances = instances;
	r->query_tokens = query_tokens;
	fprintf(stderr, "%s: encoding the fleet's batches\n", CMD);
	rc = make_work(instances, blocks, &w);
	if (rc == 0)
		rc = in_process(&w, query_tokens, r);
	if (rc == 0) {
		fprintf(stderr, "%s: the same through kvprefixd --kv-events-sub\n", CMD);
		rc = end_to_end(&w, query_tokens, dir, r);
	}
	work_free(&w);
	return rc ? -1 : 0;
}
