/*
 * bench_engine_conc.c - kvprefix-bench engine --concurrency: many clients of one
 * kvprefixd at once.
 *
 *   per level C of the list:   CONC_ROUNDS rounds (1 with --quick), each figure the
 *                              median over them, the levels' rounds in turn (round 1
 *                              of each level, then round 2, ...); a round: C threads,
 *                              each its own connection, released together
 *                              by a barrier; each one GENERATE of a fresh random
 *                              CONC_PROMPT-token prompt, greedy, CONC_MAX_NEW tokens;
 *                              the arrival time of every token frame recorded
 *   aggregate decode tokens/s: tokens that arrived while all C streams were decoding
 *                              (from the last first token to the first last token)
 *                              over that window; with C = 1 the whole stream
 *   inter-token latency:       a frame of k tokens after a gap g counts k gaps of g / k;
 *                              over that window (the steady state), and over the whole
 *                              streams (with the steps that took the others' prompts)
 *
 *   mixed:                     CHAT_USERS users over CHAT_SYSTEMS shared system
 *                              prompts, each starting at a random time and playing
 *                              CHAT_TURNS turns (prompt: the previous prompt, its
 *                              answer, new user tokens): throughput, hit rate, TTFT
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "bench_engine.h"
#include "trace.h"
#include "util.h"

#define CHAT_SYSTEM_TOKENS 512u
#define CHAT_USER_TOKENS 32u
#define CHAT_MAX_NEW 32u
#define CHAT_ARRIVAL_MS 150.0   /* mean gap between users' first turns */

/* ---- one level ------------------------------------------------------------------- */

struct conc_client {
	const char *sock;
	uint32_t vocab, max_new;
	uint64_t seed;
	pthread_barrier_t *go;
	/* results */
	int rc;
	uint64_t t0;                   /* released by the barrier */
	uint64_t *t_tok;               /* (max_new) arrival of each token, ns */
	uint32_t n_tok;
	struct kvp_usage u;
};

static void conc_token_cb(void *arg, const uint32_t *tokens, uint32_t n)
{
	struct conc_client *cl = arg;
	uint64_t now = kvp_tool_now_ns();

	(void)tokens;
	for (uint32_t i = 0; i < n && cl->n_tok < cl->max_new; i++)
		cl->t_tok[cl->n_tok++] = now;
}

static void *conc_thread(void *arg)
{
	struct conc_client *cl = arg;
	struct kvp_server_info info;
	struct kvp_generate_params gp;
	struct kvp_client *c = NULL;
	uint32_t prompt[CONC_PROMPT];

	cl->rc = bench_connect_engine(PROG " engine", cl->sock, &c, &info);
	bench_rand_tokens(prompt, CONC_PROMPT, cl->seed, cl->vocab);
	kvp_generate_params_init(&gp);
	gp.max_new = cl->max_new;
	pthread_barrier_wait(cl->go);
	cl->t0 = kvp_tool_now_ns();
	if (cl->rc == 0)
		cl->rc = kvp_client_generate(c, prompt, CONC_PROMPT, &gp, conc_token_cb, cl, &cl->u);
	if (cl->rc < 0 && c)
		fprintf(stderr, PROG " engine: a client's GENERATE: %s: %s\n", kvp_strerror(cl->rc),
			kvp_client_error(c));
	kvp_client_close(c);
	return NULL;
}

/* The quantiles of the gaps of every stream, k gaps of g / k for a frame of k tokens
 * after a gap g; only gaps that begin at or after w0 and end by w1. */
static void itl_quantiles(const struct conc_client *cl, uint32_t n, uint64_t w0, uint64_t w1,
			  double *p50_ms, double *p99_ms)
{
	double *gaps = calloc((size_t)n * CONC_MAX_NEW + 1, sizeof(double));
	size_t n_gap = 0;

	*p50_ms = *p99_ms = NAN;
	if (!gaps)
		return;
	for (uint32_t i = 0; i < n; i++) {
		const struct conc_client *c = &cl[i];

		for (uint32_t k = 1; k < c->n_tok;) {
			uint32_t e = k;

			while (e < c->n_tok && c->t_tok[e] == c->t_tok[k])
				e++;   /* one frame: tokens k .. e-1 */
			if (c->t_tok[k - 1] >= w0 && c->t_tok[k] <= w1)
				for (uint32_t m = k; m < e; m++)
					gaps[n_gap++] = (double)(c->t_tok[k] - c->t_tok[k - 1]) / 1e6 /
							(e - k);
			k = e;
		}
	}
	if (n_gap) {
		bench_sort(gaps, n_gap);
		*p50_ms = bench_quantile_sorted(gaps, n_gap, 0.5);
		*p99_ms = bench_quantile_sorted(gaps, n_gap, 0.99);
	}
	free(gaps);
}

/* The figures of one level from its clients. */
static void conc_summarize(const struct conc_client *cl, uint32_t n, struct eng_conc_level *lv)
{
	uint64_t w0 = 0, w1 = UINT64_MAX, in_window = 0;
	size_t n_ttft = 0;
	double ttft[CONC_MAX_LEVEL];

	for (uint32_t i = 0; i < n; i++) {
		const struct conc_client *c = &cl[i];

		if (c->n_tok == 0)
			continue;
		w0 = c->t_tok[0] > w0 ? c->t_tok[0] : w0;
		w1 = c->t_tok[c->n_tok - 1] < w1 ? c->t_tok[c->n_tok - 1] : w1;
		ttft[n_ttft++] = (double)(c->t_tok[0] - c->t0) / 1e6;
	}
	for (uint32_t i = 0; i < n; i++)
		for (uint32_t k = 1; k < cl[i].n_tok; k++)
			in_window += cl[i].t_tok[k] > w0 && cl[i].t_tok[k] <= w1;
	lv->window_s = w1 > w0 ? (double)(w1 - w0) / 1e9 : 0;
	lv->decode_tps = lv->window_s > 0 ? (double)in_window / lv->window_s : NAN;
	if (n_ttft) {
		bench_sort(ttft, n_ttft);
		lv->ttft_p50_ms = bench_quantile_sorted(ttft, n_ttft, 0.5);
		lv->ttft_p99_ms = bench_quantile_sorted(ttft, n_ttft, 0.99);
	}
	/* while every stream decodes; and over whole streams, the prompts of the others
	 * arriving in the steps between their tokens included */
	itl_quantiles(cl, n, w0, w1, &lv->itl_p50_ms, &lv->itl_p99_ms);
	itl_quantiles(cl, n, 0, UINT64_MAX, &lv->itl_all_p50_ms, &lv->itl_all_p99_ms);
}

/* Level lv->clients: every client at once. 0, or -1 (message printed). */
static int conc_level(const char *sock, uint32_t vocab, uint32_t max_new, uint32_t run,
		      struct eng_conc_level *lv)
{
	const uint32_t n = lv->clients;
	struct conc_client *cl = calloc(n, sizeof(*cl));
	pthread_t *th = calloc(n, sizeof(*th));
	pthread_barrier_t go;
	bool mem = cl && th;
	int ret = 0;

	for (uint32_t i = 0; mem && i < n; i++) {
		cl[i] = (struct conc_client){ .sock = sock, .vocab = vocab, .max_new = max_new,
					      .seed = 0xC0C0000ull + run * 1000 + i, .go = &go };
		mem = (cl[i].t_tok = calloc(max_new, sizeof(uint64_t))) != NULL;
	}
	if (!mem || pthread_barrier_init(&go, NULL, n) != 0) {
		fprintf(stderr, PROG " engine: out of memory for %u clients\n", n);
		ret = -1;
		goto out;
	}
	for (uint32_t i = 0; i < n; i++)
		if (pthread_create(&th[i], NULL, conc_thread, &cl[i]) != 0) {
			/* those started wait at the barrier for the rest: no way back */
			fprintf(stderr, PROG " engine: cannot start %u client threads\n", n);
			abort();
		}
	for (uint32_t i = 0; i < n; i++) {
		pthread_join(th[i], NULL);
		if (cl[i].rc < 0)
			ret = -1;
	}
	pthread_barrier_destroy(&go);
	if (ret == 0)
		conc_summarize(cl, n, lv);
out:
	for (uint32_t i = 0; cl && i < n; i++)
		free(cl[i].t_tok);
	free(cl);
	free(th);
	return ret;
}

/* Each figure of lv: its median over the rounds. */
static void conc_median(const struct eng_conc_level *round, uint32_t n, struct eng_conc_level *lv)
{
	double v[CONC_ROUNDS];

#define MEDIAN_OF(f)                                         \
	do {                                                 \
		for (uint32_t k = 0; k < n; k++)             \
			v[k] = round[k].f;                   \
		lv->f = bench_median(v, n);                  \
	} while (0)
	lv->clients = round[0].clients;
	MEDIAN_OF(decode_tps);
	MEDIAN_OF(window_s);
	MEDIAN_OF(ttft_p50_ms);
	MEDIAN_OF(ttft_p99_ms);
	MEDIAN_OF(itl_p50_ms);
	MEDIAN_OF(itl_p99_ms);
	MEDIAN_OF(itl_all_p50_ms);
	MEDIAN_OF(itl_all_p99_ms);
#undef MEDIAN_OF
}

/* ---- the mixed chat workload ------------------------------------------------------ */

struct chat_user {
	const char *sock;
	uint32_t vocab, id;
	uint64_t t_start_ns;           /* when its first turn goes */
	const uint32_t *system;        /* its system prompt, CHAT_SYSTEM_TOKENS */
	int rc;
	uint64_t prompt_tokens, cached_tokens, generated;
	double ttft_us[CHAT_TURNS];
};

/* Append n tokens to t. 0, or KVP_ENOMEM / KVP_ETOOBIG. */
static int push_all(struct kvp_tokvec *t, const uint32_t *v, size_t n)
{
	int rc = kvp_tokvec_reserve(t, t->n + n);

	for (size_t i = 0; i < n && rc == 0; i++)
		rc = kvp_tokvec_push(t, v[i]);
	return rc;
}

static void *chat_thread(void *arg)
{
	struct chat_user *cu = arg;
	struct kvp_server_info info;
	struct kvp_client *c = NULL;
	struct kvp_tokvec conv = { 0 };
	uint32_t fresh[CHAT_USER_TOKENS];

	cu->rc = bench_connect_engine(PROG " engine", cu->sock, &c, &info);
	if (cu->rc == 0 && push_all(&conv, cu->system, CHAT_SYSTEM_TOKENS) < 0)
		cu->rc = KVP_ENOMEM;
	while (cu->rc == 0 && kvp_tool_now_ns() < cu->t_start_ns)
		bench_sleep_ms(1);
	for (uint32_t t = 0; t < CHAT_TURNS && cu->rc == 0; t++) {
		struct kvp_usage u;

		bench_rand_tokens(fresh, CHAT_USER_TOKENS, 0xCA700000ull + cu->id * 100 + t,
				  cu->vocab);
		if (push_all(&conv, fresh, CHAT_USER_TOKENS) < 0) {
			cu->rc = KVP_ENOMEM;
			break;
		}
		cu->rc = bench_generate(PROG " engine", c, conv.v, conv.n, CHAT_MAX_NEW, &conv, &u,
					"chat turn");
		if (cu->rc < 0)
			break;
		cu->prompt_tokens += u.prompt_tokens;
		cu->cached_tokens += u.cached_tokens;
		cu->generated += u.generated_tokens;
		cu->ttft_us[t] = (double)u.ttft_us;
	}
	kvp_tokvec_free(&conv);
	kvp_client_close(c);
	return NULL;
}

static int chat_mixed(const char *sock, uint32_t vocab, struct eng_conc_mixed *mx)
{
	static uint32_t systems[CHAT_SYSTEMS][CHAT_SYSTEM_TOKENS];
	struct chat_user users[CHAT_USERS];
	pthread_t th[CHAT_USERS];
	double ttft[CHAT_USERS * CHAT_TURNS];
	const uint64_t rng = 0x5EED0000ull;
	uint64_t t0 = kvp_tool_now_ns(), at = t0;
	size_t n_ttft = 0;
	int ret = 0;

	for (uint32_t s = 0; s < CHAT_SYSTEMS; s++)
		bench_rand_tokens(systems[s], CHAT_SYSTEM_TOKENS, 0x5757 + s, vocab);
	mx->users = CHAT_USERS;
	mx->systems = CHAT_SYSTEMS;
	mx->turns = CHAT_TURNS;
	for (uint32_t i = 0; i < CHAT_USERS; i++) {
		/* exponential gaps: arrivals at random, CHAT_ARRIVAL_MS apart on average */
		double u = (double)((kvp_splitmix64(rng + i) >> 11) + 1) / 9007199254740993.0;

		at += (uint64_t)(-log(u) * CHAT_ARRIVAL_MS * 1e6);
		users[i] = (struct chat_user){ .sock = sock, .vocab = vocab, .id = i,
					       .t_start_ns = at,
					       .system = systems[i % CHAT_SYSTEMS] };
	}
	for (uint32_t i = 0; i < CHAT_USERS; i++)
		if (pthread_create(&th[i], NULL, chat_thread, &users[i]) != 0) {
			fprintf(stderr, PROG " engine: cannot start the chat threads\n");
			abort();
		}
	for (uint32_t i = 0; i < CHAT_USERS; i++) {
		pthread_join(th[i], NULL);
		if (users[i].rc < 0)
			ret = -1;
		mx->prompt_tokens += users[i].prompt_tokens;
		mx->cached_tokens += users[i].cached_tokens;
		mx->generated += users[i].generated;
		for (uint32_t t = 0; t < CHAT_TURNS; t++)
			if (users[i].ttft_us[t] > 0)
				ttft[n_ttft++] = users[i].ttft_us[t];
	}
	mx->elapsed_s = (double)(kvp_tool_now_ns() - t0) / 1e9;
	mx->requests = (uint32_t)n_ttft;
	mx->hit_rate = mx->prompt_tokens ? (double)mx->cached_tokens / mx->prompt_tokens : 0;
	mx->generated_tps = mx->generated / mx->elapsed_s;
	mx->prompt_tps = mx->prompt_tokens / mx->elapsed_s;
	if (n_ttft) {
		bench_sort(ttft, n_ttft);
		mx->ttft_p50_ms = bench_quantile_sorted(ttft, n_ttft, 0.5) / 1e3;
		mx->ttft_p99_ms = bench_quantile_sorted(ttft, n_ttft, 0.99) / 1e3;
	}
	return ret;
}

/* ---- the engine alone ---------------------------------------------------------------- */

/* C sequences' decode in process, without a daemon or clients beside it: each a 64-token
 * prompt prefilled in one batch, then CONC_MAX_NEW (or the quick count) steps of one
 * batch of C rows. Tokens/s into *tps. 0, or -1 (message printed). */
static int inproc_level(struct kvp_engine *e, uint32_t vocab, uint32_t c, uint32_t steps,
			double *tps)
{
	const uint32_t bt = 16, n_pos = CONC_PROMPT + steps, nb = (n_pos + bt - 1) / bt;
	const size_t bb = (kvp_engine_block_bytes(e) + 63) / 64 * 64;
	struct kvp_engine_seq *q = calloc(c, sizeof(*q));
	void **blocks = calloc((size_t)c * nb, sizeof(void *));
	uint32_t *tok = calloc((size_t)c * n_pos, sizeof(uint32_t));
	float *lg = malloc((size_t)c * vocab * sizeof(float));
	char *arena = aligned_alloc(64, (size_t)c * nb * bb);
	int ret = -1;

	if (!q || !blocks || !tok || !lg || !arena) {
		fprintf(stderr, PROG " engine: out of memory for %u sequences in process\n", c);
		goto out;
	}
	for (size_t i = 0; i < (size_t)c * nb; i++)
		blocks[i] = arena + i * bb;
	for (uint32_t s = 0; s < c; s++) {
		bench_rand_tokens(tok + (size_t)s * n_pos, n_pos, 0x1C0000ull + s, vocab);
		q[s] = (struct kvp_engine_seq){ .blocks = blocks + (size_t)s * nb, .n_blocks = nb,
						.tokens = tok + (size_t)s * n_pos, .n = CONC_PROMPT,
						.logits = lg + (size_t)s * vocab };
	}
	if (kvp_engine_forward_batch(e, q, c) < 0)
		goto fail;
	uint64_t t0 = kvp_tool_now_ns();

	for (uint32_t st = 0; st < steps; st++) {
		for (uint32_t s = 0; s < c; s++) {
			q[s].pos0 = CONC_PROMPT + st;
			q[s].n = 1;
			q[s].tokens = tok + (size_t)s * n_pos + CONC_PROMPT + st;
			q[s].kv_write_from = 0;
		}
		if (kvp_engine_forward_batch(e, q, c) < 0)
			goto fail;
	}
	*tps = (double)c * steps / ((double)(kvp_tool_now_ns() - t0) / 1e9);
	ret = 0;
	goto out;
fail:
	fprintf(stderr, PROG " engine: a batched forward in process failed\n");
out:
	free(q);
	free(blocks);
	free(tok);
	free(lg);
	free(arena);
	return ret;
}

int bench_concurrency_inproc(const char *model_path, int threads, enum kvp_kv_dtype dtype,
			     bool quick, struct eng_conc *res)
{
	const uint32_t steps = quick ? CONC_MAX_NEW_QUICK : CONC_MAX_NEW;
	struct kvp_engine_config ec = { .threads = threads, .kv_dtype = dtype, .block_tokens = 16,
					.max_batch = ENGINE_MAX_BATCH };
	struct kvp_model *m = NULL;
	struct kvp_engine *e = NULL;
	char err[512];
	int ret = -1;

	if (kvp_model_load(model_path, &m, err, sizeof(err)) < 0) {
		fprintf(stderr, PROG " engine: %s: %s\n", model_path, err);
		return -1;
	}
	ec.err = err;
	ec.errlen = sizeof(err);
	if (kvp_engine_create(m, &ec, &e) < 0) {
		fprintf(stderr, PROG " engine: kvp_engine_create: %s\n", err);
		goto out;
	}
	for (uint32_t i = 0; i < res->n_levels; i++) {
		struct eng_conc_level *lv = &res->levels[i];

		if (inproc_level(e, m->cfg.vocab, lv->clients, steps, &lv->inproc_tps) < 0)
			goto out;
		fprintf(stderr, "engine: in process, %u sequences: %.1f decode tokens/s\n",
			lv->clients, lv->inproc_tps);
	}
	res->inproc = true;
	ret = 0;
out:
	kvp_engine_destroy(e);
	kvp_model_free(m);
	return ret;
}

/* ---- the whole run ------------------------------------------------------------------ */

int bench_concurrency(const char *sock, uint32_t vocab, const uint32_t *levels,
		      uint32_t n_levels, bool quick, struct eng_conc *res)
{
	const uint32_t max_new = quick ? CONC_MAX_NEW_QUICK : CONC_MAX_NEW;

	const uint32_t rounds = quick ? 1 : CONC_ROUNDS;
	struct eng_conc_level round[CONC_MAX_LEVELS][CONC_ROUNDS];

	memset(res, 0, sizeof(*res));
	res->prompt = CONC_PROMPT;
	res->max_new = max_new;
	res->n_levels = n_levels;
	/* round k of every level before round k + 1 of any: each level's median comes from
	 * the same stretches of the machine's time as the others', so the ratios between
	 * levels do not follow what the machine's other tenants did in between */
	for (uint32_t k = 0; k < rounds; k++)
		for (uint32_t i = 0; i < n_levels; i++) {
			fprintf(stderr, "engine: round %u of %u: %u concurrent clients, %u tokens "
				"each ...\n", k + 1, rounds, levels[i], max_new);
			round[i][k].clients = levels[i];
			if (conc_level(sock, vocab, max_new, i * CONC_ROUNDS + k, &round[i][k]) < 0)
				return -1;
		}
	for (uint32_t i = 0; i < n_levels; i++) {
		struct eng_conc_level *lv = &res->levels[i];

		conc_median(round[i], rounds, lv);
		fprintf(stderr, "engine: %u clients: %.1f decode tokens/s together, TTFT p50 "
			"%.1f ms, inter-token p99 %.1f ms\n", lv->clients, lv->decode_tps,
			lv->ttft_p50_ms, lv->itl_p99_ms);
	}
	fprintf(stderr, "engine: mixed chat: %u users over %u system prompts, %u turns ...\n",
		CHAT_USERS, CHAT_SYSTEMS, CHAT_TURNS);
	return chat_mixed(sock, vocab, &res->mixed);
}
