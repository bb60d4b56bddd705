/*
 * test_batch.c - many generations at once behind the real daemon: the batched engine
 * step gives each the answer it gets alone (DESIGN.md invariant 9), a pool too small
 * for all of them pauses and preempts instead of failing them, a connection with many
 * requests queued does not starve one with a single request, and STATS shows the
 * scheduler. Models are random-weight files made by kvprefix-mkmodel.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "daemon_harness.h"
#include "kvp_proto.h"
#include "kvprefix.h"

#define VOCAB 1024
#define MAX_NEW_MAX 192
#define LOGIT_TOL 1e-4f

static struct kvp_daemon d;

static const char *small_model(void)
{
	return kvp_test_model("small", "--vocab 1024 --dim 128 --layers 2 --heads 4 --kv-heads 2 "
			      "--ffn 256 --ctx 2048 --dtype f32 --seed 7 --weight-std 0.08");
}

/* kvprefixd on the small model, block 16, KV f32, with the extra options (NULL-ended). */
static void start(const char *const *extra)
{
	const char *args[24] = { "--model", small_model(), "--kv-dtype", "f32",
				 "--block-tokens", "16", "--threads", "2" };
	size_t n = 8;

	while (extra && *extra && n < 23)
		args[n++] = *extra++;
	args[n] = NULL;
	cr_assert_eq(kvp_daemon_start(&d, args), 0, "kvprefixd did not start");
}

static void stop(void)
{
	if (d.pid > 0) {
		int st = kvp_daemon_stop(&d);
		cr_expect_eq(st, 0, "kvprefixd exited with %d (its log is above)", st);
	}
}

static struct kvp_client *conn(const char *adapter)
{
	struct kvp_client *c = NULL;
	int rc = kvp_client_connect(d.socket, &c);

	cr_assert_eq(rc, 0, "connect: %s", kvp_strerror(rc));
	cr_assert_eq(kvp_client_set_timeout_ms(c, 120000), 0);
	if (adapter)
		cr_assert_eq(kvp_client_hello(c, adapter, NULL, NULL), 0);
	return c;
}

static void prompt(uint32_t *t, size_t n, uint32_t seed)
{
	uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;

	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		t[i] = (uint32_t)(x % VOCAB);
	}
}

/* One generation: what to ask, and what came back. */
struct job {
	uint32_t p[400];
	uint32_t n, max_new;
	float temperature;
	uint64_t seed;
	uint32_t stop;           /* a stop id, or UINT32_MAX: none */
	const char *adapter;
	/* results */
	int rc;
	char err[256];
	uint32_t tokens[MAX_NEW_MAX];
	uint32_t n_tok;
	struct kvp_usage u;
	float logits[VOCAB];
	uint64_t t_done_ns;
};

static void collect(void *arg, const uint32_t *tokens, uint32_t n)
{
	struct job *j = arg;

	for (uint32_t i = 0; i < n && j->n_tok < MAX_NEW_MAX; i++)
		j->tokens[j->n_tok++] = tokens[i];
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Run j on c; the results into j. */
static void run_on(struct kvp_client *c, struct job *j)
{
	struct kvp_generate_params gp;

	kvp_generate_params_init(&gp);
	gp.max_new = j->max_new;
	gp.temperature = j->temperature;
	gp.seed = j->seed;
	gp.flags = KVP_GEN_LOGITS;
	if (j->stop != UINT32_MAX) {
		gp.stop = &j->stop;
		gp.n_stop = 1;
	}
	j->n_tok = 0;
	j->rc = kvp_client_generate(c, j->p, j->n, &gp, collect, j, &j->u);
	snprintf(j->err, sizeof(j->err), "%s", kvp_client_error(c));
	if (j->rc == 0)
		memcpy(j->logits, j->u.logits, sizeof(j->logits));
	j->t_done_ns = now_ns();
}

static void *job_main(void *arg)
{
	struct job *j = arg;
	struct kvp_client *c = NULL;

	j->rc = kvp_client_connect(d.socket, &c);
	if (j->rc == 0)
		j->rc = kvp_client_set_timeout_ms(c, 120000);
	if (j->rc == 0 && j->adapter)
		j->rc = kvp_client_hello(c, j->adapter, NULL, NULL);
	if (j->rc == 0)
		run_on(c, j);
	kvp_client_close(c);
	return NULL;
}

/* Every job of js at once, each on a connection of its own. */
static void run_together(struct job *js, size_t n)
{
	pthread_t th[16];

	cr_assert_leq(n, 16);
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(pthread_create(&th[i], NULL, job_main, &js[i]), 0);
	for (size_t i = 0; i < n; i++)
		pthread_join(th[i], NULL);
}

static float max_abs_diff(const float *a, const float *b, size_t n)
{
	float m = 0.0f;

	for (size_t i = 0; i < n; i++)
		m = fmaxf(m, fabsf(a[i] - b[i]));
	return m;
}

/* The number at path "obj.key" (or "key") of a STATS reply. */
static double stat_of(struct kvp_client *c, const char *obj, const char *key)
{
	char *json = NULL;
	cJSON *o, *v;
	double x;

	cr_assert_eq(kvp_client_stats(c, &json), 0);
	o = cJSON_Parse(json);
	cr_assert_not_null(o);
	v = obj ? cJSON_GetObjectItem(cJSON_GetObjectItem(o, obj), key)
		: cJSON_GetObjectItem(o, key);
	cr_assert(cJSON_IsNumber(v), "STATS has no number %s%s%s: %s", obj ? obj : "",
		  obj ? "." : "", key, json);
	x = v->valuedouble;
	cJSON_Delete(o);
	free(json);
	return x;
}

/* j's results against the same request run alone (ref). */
static void expect_same(const struct job *j, const struct job *ref, int i)
{
	cr_assert_eq(j->rc, 0, "request %d: %s: %s", i, kvp_strerror(j->rc), j->err);
	cr_assert_eq(j->n_tok, ref->n_tok, "request %d: %u tokens together, %u alone", i,
		     j->n_tok, ref->n_tok);
	cr_assert_arr_eq(j->tokens, ref->tokens, j->n_tok * sizeof(uint32_t),
			 "request %d: the tokens differ from the ones it got alone", i);
	cr_assert_eq(j->u.finish, ref->u.finish, "request %d: another finish", i);
	cr_assert_leq(max_abs_diff(j->logits, ref->logits, VOCAB), LOGIT_TOL,
		      "request %d: the last prompt position's logits differ", i);
}

/* ---- batched equals unbatched ------------------------------------------------------- */

#define MIX 8

/* Prompts of mixed lengths (block boundaries: 16, 32, 17 tokens; up to 300), two of
 * them sampled with seeds, one ending on a stop id, run once each alone (a namespace of
 * their own) and then all at once in another namespace where three of them are cached
 * beforehand: the same tokens, finish and logits within LOGIT_TOL. */
Test(batch, together_equals_alone, .fini = stop, .timeout = 240)
{
	static const uint32_t len[MIX] = { 16, 32, 17, 100, 300, 47, 64, 5 };
	static struct job alone[MIX], together[MIX];
	const char *extra[] = { "--max-seqs", "8", "--max-batch-tokens", "128", NULL };
	struct kvp_client *c;

	start(extra);
	c = conn("alone");
	for (int i = 0; i < MIX; i++) {
		struct job *j = &alone[i];

		*j = (struct job){ .n = len[i], .max_new = 24 + 4 * (uint32_t)i,
				   .stop = UINT32_MAX };
		prompt(j->p, j->n, 100 + (uint32_t)i);
		if (i == 2 || i == 5) {
			j->temperature = 0.9f;
			j->seed = 7 + (uint64_t)i;
		}
		run_on(c, j);
		cr_assert_eq(j->rc, 0, "alone %d: %s", i, j->err);
	}
	/* request 3 ends on the id it drew tenth when alone */
	alone[3].stop = alone[3].tokens[9];
	run_on(c, &alone[3]);
	cr_assert_eq(alone[3].u.finish, KVP_FINISH_STOP);
	kvp_client_close(c);

	c = conn("together");
	for (int i = 0; i < 3; i++) {
		struct job warm = alone[i];

		run_on(c, &warm);   /* cached in this namespace before the batch */
	}
	kvp_client_close(c);
	for (int i = 0; i < MIX; i++) {
		together[i] = alone[i];
		together[i].adapter = "together";
	}
	run_together(together, MIX);
	for (int i = 0; i < MIX; i++)
		expect_same(&together[i], &alone[i], i);
	c = conn("together");
	cr_assert_gt(stat_of(c, "scheduler", "seqs_per_step_mean"), 1.0,
		     "no step ran more than one sequence");
	cr_assert_geq(stat_of(c, "scheduler", "admitted"), 2 * MIX + 1 + 3);
	kvp_client_close(c);
}

/* ---- a pool too small for all of them ----------------------------------------------------- */

#define PRE 4
#define PRE_NEW 180   /* 40 + 180 tokens: 14 blocks, more than half the pool */

/* A daemon with a 24-block pool and max_seqs places; four generations that need 14
 * blocks each, run alone (each fits) and then at once in another namespace (nothing of
 * theirs cached): each at once gets the tokens it got alone, and afterwards nothing is
 * pinned, the pool adds up and STATS counts nobody running. Each needing more than half
 * the pool, two that run side by side for most of their length cannot both fit, even
 * when the machine lets some clients send their requests late. Returns a client for
 * more STATS checks. */
static struct kvp_client *four_in_a_small_pool(const char *max_seqs, uint32_t seed)
{
	static struct job alone[PRE], together[PRE];
	const char *extra[] = { "--capacity-blocks", "24", "--max-seqs", max_seqs, NULL };
	struct kvp_client *c;

	start(extra);
	c = conn(NULL);
	for (int i = 0; i < PRE; i++) {
		alone[i] = (struct job){ .n = 40, .max_new = PRE_NEW, .stop = UINT32_MAX };
		prompt(alone[i].p, 40, seed + (uint32_t)i);
		run_on(c, &alone[i]);
		cr_assert_eq(alone[i].rc, 0, "alone %d: %s", i, alone[i].err);
		cr_assert_eq(alone[i].n_tok, PRE_NEW);
	}
	memcpy(together, alone, sizeof(together));
	for (int i = 0; i < PRE; i++)
		together[i].adapter = "together";
	run_together(together, PRE);
	for (int i = 0; i < PRE; i++)
		expect_same(&together[i], &alone[i], i);
	cr_assert_eq(stat_of(c, NULL, "blocks_pinned"), 0, "a block stayed pinned");
	cr_assert_eq(stat_of(c, NULL, "blocks_free") + stat_of(c, NULL, "blocks_cached"),
		     stat_of(c, NULL, "blocks_total"), "the pool does not add up");
	cr_assert_eq(stat_of(c, "scheduler", "running"), 0, "STATS still counts one running");
	cr_assert_eq(stat_of(c, "scheduler", "waiting"), 0);
	return c;
}

/* Four places for the four: at once they cannot all grow, so the scheduler pauses them
 * and preempts the youngest (its blocks given back, recomputed later). */
Test(batch, preempted_requests_finish_right_and_leave_nothing_pinned, .fini = stop,
     .timeout = 240)
{
	struct kvp_client *c = four_in_a_small_pool("4", 300);

	cr_assert_geq(stat_of(c, "scheduler", "preempted"), 1,
		      "56 blocks wanted of 24: someone must have been preempted");
	cr_assert_geq(stat_of(c, "scheduler", "recomputes"),
		      stat_of(c, "scheduler", "preempted"));
	kvp_client_close(c);
}

/* Two places for the four: the two waiting for a place hold their prompts' blocks, so
 * the two admitted run out; the youngest of those is preempted (not stuck behind the
 * waiting ones), and all four finish right. */
Test(batch, preemption_with_requests_waiting_for_a_place, .fini = stop, .timeout = 240)
{
	struct kvp_client *c = four_in_a_small_pool("2", 400);

	cr_assert_geq(stat_of(c, "scheduler", "preempted"), 1);
	kvp_client_close(c);
}

/* ---- fairness -------------------------------------------------------------------------- */

struct busy_conn {
	int fd;
	uint32_t n_req;
	uint64_t done_ns[16];    /* when each GENERATE_DONE arrived */
	struct kvp_generate_done usage[16];   /* by req_id - 1 */
	uint32_t n_done;
	bool failed;
};

/* Connect b to the daemon and send n GENERATEs in one write, req_id 1 .. n, request i
 * prompt[i] (len[i] tokens), max_new each. */
static void send_pipelined(struct busy_conn *b, const uint32_t *const *prompt,
			   const uint32_t *len, uint32_t n, uint32_t max_new)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	static uint8_t out[64 * 1024];
	size_t off = 0;

	b->n_req = n;
	for (uint32_t id = 1; id <= n; id++) {
		struct kvp_generate_req m = { .max_new = max_new, .temperature = 0.0f,
					      .top_p = 1.0f, .n_tokens = len[id - 1] };
		struct kvp_frame_hdr h = { .version = 1, .type = KVP_T_GENERATE, .req_id = id };
		size_t sz = kvp_generate_req_encode(out + off + KVP_HDR_SIZE, sizeof(out) - off, &m,
						    NULL, prompt[id - 1]);
		cr_assert_gt(sz, 0);
		h.len = (uint32_t)sz;
		kvp_hdr_encode(out + off, &h);
		off += KVP_HDR_SIZE + sz;
	}
	b->fd = socket(AF_UNIX, SOCK_STREAM, 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", d.socket);
	cr_assert_eq(connect(b->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(send(b->fd, out, off, MSG_NOSIGNAL), (ssize_t)off);
}

/* Read frames until every request of b is done (or an error). */
static void *busy_reader(void *arg)
{
	struct busy_conn *b = arg;
	static uint8_t in[1 << 16];

	while (b->n_done < b->n_req) {
		uint8_t hb[KVP_HDR_SIZE];
		struct kvp_frame_hdr h;
		size_t got = 0;

		while (got < KVP_HDR_SIZE) {
			ssize_t r = recv(b->fd, hb + got, KVP_HDR_SIZE - got, 0);
			if (r <= 0)
				goto fail;
			got += (size_t)r;
		}
		if (kvp_hdr_decode(hb, KVP_HDR_SIZE, sizeof(in), &h) != 0)
			goto fail;
		for (got = 0; got < h.len;) {
			ssize_t r = recv(b->fd, in + got, h.len - got, 0);
			if (r <= 0)
				goto fail;
			got += (size_t)r;
		}
		if (h.type == KVP_T_ERROR)
			goto fail;
		if (h.type == KVP_T_GENERATE_DONE) {
			if (h.req_id < 1 || h.req_id > 16 ||
			    kvp_generate_done_decode(in, h.len, &b->usage[h.req_id - 1]) != 0)
				goto fail;
			b->done_ns[b->n_done++] = now_ns();
		}
	}
	return NULL;
fail:
	b->failed = true;
	return NULL;
}

/* Connection A pipelines 6 generations on one connection with two places in the engine;
 * B then sends one. Arrival order would run B after A's fifth; the scheduler gives the
 * next free place to the connection with the fewest running, so B is done before A's
 * third (A's first two run when B arrives; B takes the place the first one frees). */
Test(batch, one_request_is_not_starved_by_a_busy_connection, .fini = stop, .timeout = 240)
{
	const char *extra[] = { "--max-seqs", "2", "--max-batch-tokens", "64", NULL };
	struct busy_conn a = { 0 };
	struct job lone = { .n = 30, .max_new = 8, .stop = UINT32_MAX };
	struct kvp_client *c;
	pthread_t th;
	uint32_t p[100], before = 0, len[6];
	const uint32_t *ps[6];

	start(extra);
	prompt(p, 100, 71);
	for (int i = 0; i < 6; i++) {
		ps[i] = p;
		len[i] = 100;
	}
	send_pipelined(&a, ps, len, 6, 96);
	cr_assert_eq(pthread_create(&th, NULL, busy_reader, &a), 0);
	c = conn(NULL);
	/* B goes once all six of A's are in the daemon: two running, four waiting */
	for (int tries = 0; stat_of(c, "scheduler", "waiting") < 4; tries++) {
		cr_assert_lt(tries, 2000, "A's requests never queued");
		usleep(1000);
	}
	prompt(lone.p, lone.n, 72);
	run_on(c, &lone);
	cr_assert_eq(lone.rc, 0, "%s", lone.err);
	pthread_join(th, NULL);
	cr_assert(!a.failed, "connection A failed");
	for (uint32_t i = 0; i < a.n_done; i++)
		before += a.done_ns[i] < lone.t_done_ns;
	cr_assert_leq(before, 2, "B finished after %u of A's 6 requests", before);
	close(a.fd);
	kvp_client_close(c);
}

/* ---- a prefix in flight is computed once ---------------------------------------------- */

/* Six requests arrive together (in one write), each a 1,000-token prefix nobody has
 * cached and a suffix of its own: the first computes the prefix, the other five wait
 * for its blocks and compute only their suffix. Usage and STATS say so. */
Test(batch, a_prefix_in_flight_is_computed_once, .fini = stop, .timeout = 240)
{
	static uint32_t p[6][1020];
	struct busy_conn a = { 0 };
	const uint32_t *ps[6];
	uint32_t len[6], computed = 0, hits = 0;
	struct kvp_client *c;

	start(NULL);
	for (int i = 0; i < 6; i++) {
		prompt(p[i], 1000, 90);
		prompt(p[i] + 1000, 20, 91 + (uint32_t)i);
		ps[i] = p[i];
		len[i] = 1020;
	}
	send_pipelined(&a, ps, len, 6, 4);
	busy_reader(&a);
	cr_assert(!a.failed, "a request failed");
	for (int i = 0; i < 6; i++) {
		computed += a.usage[i].computed_tokens;
		hits += a.usage[i].cached_tokens >= 992;   /* 62 full blocks of the prefix */
	}
	cr_assert_eq(a.usage[0].cached_tokens, 0, "the first found the prefix cached");
	cr_assert_eq(hits, 5, "%u of the five later requests counted the prefix as cached",
		     hits);
	cr_assert_eq(computed, 1020 + 5 * 28, "%u prompt positions computed", computed);
	c = conn(NULL);
	cr_assert_eq(stat_of(c, NULL, "computed_tokens"), 1020 + 5 * 28);
	cr_assert_eq(stat_of(c, NULL, "blocks_pinned"), 0, "a block stayed pinned");
	kvp_client_close(c);
	close(a.fd);
}
