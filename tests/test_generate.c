/*
 * test_generate.c - the engine behind the real daemon: GENERATE through libkvprefix.
 * Models are random-weight files made by kvprefix-mkmodel.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "daemon_harness.h"
#include "kvp_proto.h"
#include "kvprefix.h"

#define B 16
#define VOCAB 1024

static struct kvp_daemon d;

static const char *small_model(void)
{
	return kvp_test_model("small", "--vocab 1024 --dim 128 --layers 2 --heads 4 --kv-heads 2 "
			      "--ffn 256 --ctx 2048 --dtype f32 --seed 7 --weight-std 0.08");
}

static void start_with(const char *model_path, const char *capacity)
{
	const char *args[] = { "--model", model_path, "--kv-dtype", "f32", "--block-tokens", "16",
			       "--threads", "2", "--capacity-blocks", capacity, NULL };
	cr_assert_eq(kvp_daemon_start(&d, args), 0, "kvprefixd did not start");
}

static void start_small(void)
{
	start_with(small_model(), "4096");
}

/* The daemon must exit 0 on SIGTERM: under sanitizers a report makes it exit non-zero. */
static void stop(void)
{
	if (d.pid > 0) {
		int st = kvp_daemon_stop(&d);
		cr_expect_eq(st, 0, "kvprefixd exited with %d (its log is above)", st);
	}
}

static struct kvp_client *conn(void)
{
	struct kvp_client *c = NULL;
	int rc = kvp_client_connect(d.socket, &c);

	cr_assert_eq(rc, 0, "connect: %s", kvp_strerror(rc));
	cr_assert_eq(kvp_client_set_timeout_ms(c, 120000), 0);
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

struct run {
	uint32_t tokens[256];
	uint32_t n;
	struct kvp_usage u;
	float logits[VOCAB];
	uint32_t n_logits;
};

static void collect(void *arg, const uint32_t *tokens, uint32_t n)
{
	struct run *r = arg;

	for (uint32_t i = 0; i < n && r->n < 256; i++)
		r->tokens[r->n++] = tokens[i];
}

static int generate(struct kvp_client *c, const uint32_t *p, size_t n, uint32_t max_new,
		    uint32_t flags, struct run *r)
{
	struct kvp_generate_params gp;
	int rc;

	memset(r, 0, sizeof(*r));
	kvp_generate_params_init(&gp);
	gp.max_new = max_new;
	gp.flags = flags;
	rc = kvp_client_generate(c, p, n, &gp, collect, r, &r->u);
	if (rc == 0 && r->u.n_logits) {
		cr_assert_eq(r->u.n_logits, VOCAB);
		memcpy(r->logits, r->u.logits, sizeof(r->logits));
		r->n_logits = r->u.n_logits;
	}
	return rc;
}

static double stat_of(struct kvp_client *c, const char *key)
{
	char *json = NULL;
	cJSON *o, *v;
	double x;

	cr_assert_eq(kvp_client_stats(c, &json), 0);
	o = cJSON_Parse(json);
	v = cJSON_GetObjectItemCaseSensitive(o, key);
	cr_assert(cJSON_IsNumber(v), "STATS has no number '%s': %s", key, json);
	x = v->valuedouble;
	cJSON_Delete(o);
	free(json);
	return x;
}

static float max_abs_diff(const float *a, const float *b, size_t n)
{
	float m = 0.0f;

	for (size_t i = 0; i < n; i++)
		m = fmaxf(m, fabsf(a[i] - b[i]));
	return m;
}

TestSuite(generate, .init = start_small, .fini = stop, .timeout = 120);

/* HELLO (version 3 and up; libkvprefix offers 4) tells a client the vocabulary and context it must size requests by;
 * kvprefix ping shows them. */
Test(generate, hello_gives_vocabulary_and_context)
{
	struct kvp_client *c = conn();
	struct kvp_server_info info;
	char cmd[512], out[2048];
	int rc;

	memset(&info, 0xAA, sizeof(info));
	cr_assert_eq(kvp_client_hello(c, NULL, NULL, &info), 0);
	cr_assert_eq(info.version, 4);
	cr_assert_eq(info.index_only, 0);
	cr_assert_eq(info.vocab_size, VOCAB);
	cr_assert_eq(info.ctx_tokens, 2048);
	kvp_client_close(c);
	snprintf(cmd, sizeof(cmd), "'%s' ping --json --socket '%s'", KVP_CLI_PATH, d.socket);
	rc = kvp_run_capture(cmd, out, sizeof(out));
	cr_assert_eq(rc, 0, "%s", out);
	cr_assert(strstr(out, "\"vocab_size\":1024,\"ctx_tokens\":2048"), "%s", out);
	snprintf(cmd, sizeof(cmd), "'%s' ping --socket '%s'", KVP_CLI_PATH, d.socket);
	rc = kvp_run_capture(cmd, out, sizeof(out));
	cr_assert_eq(rc, 0, "%s", out);
	cr_assert(strstr(out, "model: vocabulary 1024 tokens, context 2048 tokens"), "%s", out);
}

Test(generate, usage_adds_up)
{
	struct kvp_client *c = conn();
	struct kvp_server_info info;
	uint32_t p[40];
	struct run r;

	cr_assert_eq(kvp_client_hello(c, NULL, NULL, &info), 0);
	cr_assert_eq(info.index_only, 0);
	cr_assert_gt(strlen(info.name), 0, "HELLO names the model");
	prompt(p, 40, 1);
	cr_assert_eq(generate(c, p, 40, 10, 0, &r), 0, "%s", kvp_client_error(c));
	cr_assert_eq(r.n, 10);
	cr_assert_eq(r.u.generated_tokens, 10);
	cr_assert_eq(r.u.prompt_tokens, 40);
	cr_assert_eq(r.u.cached_tokens, 0);
	cr_assert_eq(r.u.computed_tokens, 40);
	cr_assert_eq(r.u.finish, 0, "finish: length");
	for (uint32_t i = 0; i < r.n; i++)
		cr_assert_lt(r.tokens[i], VOCAB);
	cr_assert_gt(r.u.ttft_us, 0);
	cr_assert_leq(r.u.prefill_us, r.u.ttft_us);
	/* 40 prompt + 9 fed tokens = 49 positions: 3 full blocks cached */
	cr_assert_eq(stat_of(c, "blocks_cached"), 3);
	cr_assert_eq(stat_of(c, "blocks_pinned"), 0);
	cr_assert_eq(stat_of(c, "generations_done"), 1);
	cr_assert_eq(stat_of(c, "computed_tokens"), 40, "prompt positions run, as in usage");
	cr_assert_eq(stat_of(c, "generated_tokens"), 10);
	kvp_client_close(c);
}

/* Invariant 5: 0%, partial and 100% cached prompts give the same greedy tokens over 64
 * steps and the same logits, for prompt lengths around block boundaries. */
Test(generate, caching_never_changes_the_answer)
{
	static const uint32_t lens[] = { 1, 4 * B - 1, 4 * B, 4 * B + 1, 7 * B + 5 };
	struct kvp_client *c = conn(), *half = conn();
	uint32_t p[8 * B];

	cr_assert_eq(kvp_client_hello(half, "half", NULL, NULL), 0);
	for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
		uint32_t n = lens[li], h = (n / B / 2) * B;
		struct run cold, warm, part, seed_run;

		prompt(p, n, 100 + (uint32_t)li);
		cr_assert_eq(generate(c, p, n, 64, KVP_GEN_LOGITS, &cold), 0);
		cr_assert_eq(cold.u.cached_tokens, 0);
		cr_assert_eq(generate(c, p, n, 64, KVP_GEN_LOGITS, &warm), 0);
		/* the whole prompt is cached when it ends on a block boundary (then only its
		 * last token is recomputed); otherwise every full block is */
		uint32_t full = n / B * B;
		cr_assert_eq(warm.u.cached_tokens, full == n ? n - 1 : full, "len %u: cached %u", n,
			     warm.u.cached_tokens);
		/* partial: another namespace first sees only the first half */
		if (h > 0) {
			cr_assert_eq(generate(half, p, h, 0, 0, &seed_run), 0);
			cr_assert_eq(generate(half, p, n, 64, KVP_GEN_LOGITS, &part), 0);
			cr_assert_eq(part.u.cached_tokens, h, "len %u: partial cached %u", n,
				     part.u.cached_tokens);
		} else {
			part = cold;
		}
		cr_assert_eq(cold.n, 64);
		cr_assert_arr_eq(warm.tokens, cold.tokens, 64 * sizeof(uint32_t),
				 "len %u: 100%% cached changed the tokens", n);
		cr_assert_arr_eq(part.tokens, cold.tokens, 64 * sizeof(uint32_t),
				 "len %u: partly cached changed the tokens", n);
		cr_assert_leq(max_abs_diff(warm.logits, cold.logits, VOCAB), 1e-4f);
		cr_assert_leq(max_abs_diff(part.logits, cold.logits, VOCAB), 1e-4f);
		/* the next prompt must not reuse this one's blocks in the half namespace */
		cr_assert_eq(kvp_client_hello(half, "half-next", NULL, NULL), 0);
	}
	cr_assert_eq(stat_of(c, "blocks_pinned"), 0);
	kvp_client_close(c);
	kvp_client_close(half);
}

/* Turn 2 of a chat hits on turn 1's prompt and answer. */
Test(generate, multi_turn_hits_previous_answer)
{
	struct kvp_client *c = conn();
	uint32_t p[200];
	struct run t1, t2;

	prompt(p, 100, 5);
	cr_assert_eq(generate(c, p, 100, 40, 0, &t1), 0);
	memcpy(p + 100, t1.tokens, 40 * sizeof(uint32_t));
	prompt(p + 140, 20, 6);
	cr_assert_eq(generate(c, p, 160, 8, 0, &t2), 0);
	/* turn 1 left KV for 100 + 39 positions: 8 full blocks */
	cr_assert_eq(t2.u.cached_tokens, 8 * B, "turn 2 cached %u", t2.u.cached_tokens);
	cr_assert_eq(t2.u.computed_tokens, 160 - 8 * B);
	kvp_client_close(c);
}

Test(generate, stop_token_ends_generation)
{
	struct kvp_client *c = conn();
	struct kvp_generate_params gp;
	uint32_t p[30];
	struct run first, r;

	prompt(p, 30, 9);
	cr_assert_eq(generate(c, p, 30, 5, 0, &first), 0);
	kvp_generate_params_init(&gp);
	gp.max_new = 20;
	gp.stop = &first.tokens[2];
	gp.n_stop = 1;
	memset(&r, 0, sizeof(r));
	cr_assert_eq(kvp_client_generate(c, p, 30, &gp, collect, &r, &r.u), 0);
	cr_assert_eq(r.u.finish, 1, "finish: stop");
	cr_assert_leq(r.n, 3);
	cr_assert_eq(r.tokens[r.n - 1], first.tokens[2]);
	kvp_client_close(c);
}

Test(generate, sampling_is_seeded)
{
	struct kvp_client *c = conn();
	struct kvp_generate_params gp;
	uint32_t p[24];
	struct run a, b2, other;

	prompt(p, 24, 11);
	kvp_generate_params_init(&gp);
	gp.max_new = 32;
	gp.temperature = 1.5f;
	gp.top_k = 50;
	gp.top_p = 0.95f;
	gp.seed = 42;
	memset(&a, 0, sizeof(a));
	memset(&b2, 0, sizeof(b2));
	memset(&other, 0, sizeof(other));
	cr_assert_eq(kvp_client_generate(c, p, 24, &gp, collect, &a, &a.u), 0);
	cr_assert_eq(kvp_client_generate(c, p, 24, &gp, collect, &b2, &b2.u), 0);
	gp.seed = 43;
	cr_assert_eq(kvp_client_generate(c, p, 24, &gp, collect, &other, &other.u), 0);
	cr_assert_arr_eq(a.tokens, b2.tokens, 32 * sizeof(uint32_t), "same seed, same tokens");
	cr_assert(memcmp(a.tokens, other.tokens, 32 * sizeof(uint32_t)) != 0,
		  "another seed should differ somewhere in 32 tokens at temperature 1.5");
	kvp_client_close(c);
}

struct gen_thread {
	uint32_t p[300];
	const uint32_t *big;     /* used instead of p when set */
	uint32_t n;
	uint32_t max_new;        /* 0: 48 */
	struct run r;
	int rc;
	const char *adapter;
};

static void *gen_main(void *arg)
{
	struct gen_thread *g = arg;
	struct kvp_client *c = NULL;

	g->rc = kvp_client_connect(d.socket, &c);
	if (g->rc == 0 && g->adapter)
		g->rc = kvp_client_hello(c, g->adapter, NULL, NULL);
	if (g->rc == 0)
		g->rc = generate(c, g->big ? g->big : g->p, g->n, g->max_new ? g->max_new : 48,
				 KVP_GEN_LOGITS, &g->r);
	kvp_client_close(c);
	return NULL;
}

Test(generate, two_generations_at_once_are_both_right)
{
	struct gen_thread g[2];
	struct run seq[2];
	pthread_t th[2];
	struct kvp_client *c = conn();

	cr_assert_eq(kvp_client_hello(c, "sequential", NULL, NULL), 0);
	for (int i = 0; i < 2; i++) {
		g[i] = (struct gen_thread){ .n = 250 + 20 * (uint32_t)i };
		prompt(g[i].p, g[i].n, 20 + (uint32_t)i);
		int rc = generate(c, g[i].p, g[i].n, 48, KVP_GEN_LOGITS, &seq[i]);
		cr_assert_eq(rc, 0, "%s: %s", kvp_strerror(rc), kvp_client_error(c));
	}
	for (int i = 0; i < 2; i++)
		cr_assert_eq(pthread_create(&th[i], NULL, gen_main, &g[i]), 0);
	for (int i = 0; i < 2; i++) {
		pthread_join(th[i], NULL);
		cr_assert_eq(g[i].rc, 0);
		cr_assert_eq(g[i].r.n, 48);
		cr_assert_arr_eq(g[i].r.tokens, seq[i].tokens, 48 * sizeof(uint32_t),
				 "request %d: concurrent tokens differ from sequential ones", i);
		cr_assert_leq(max_abs_diff(g[i].r.logits, seq[i].logits, VOCAB), 1e-4f);
	}
	kvp_client_close(c);
}

Test(generate, errors_that_keep_the_connection)
{
	struct kvp_client *c = conn();
	struct kvp_match m;
	uint32_t p[8] = { 1, 2, 3, 4, 5, 6, 7, VOCAB + 5 };
	struct run r;

	cr_assert_eq(generate(c, p, 8, 4, 0, &r), KVP_EINVAL, "a token outside the vocabulary");
	cr_assert(strstr(kvp_client_error(c), "vocabulary") != NULL, "%s", kvp_client_error(c));
	cr_assert_eq(kvp_client_insert(c, p, 7, 0, &m), KVP_EUNSUPPORTED,
		     "INSERT has no KV to register in engine mode");
	p[7] = 8;
	cr_assert_eq(generate(c, p, 8, 4, 0, &r), 0, "the connection is still usable");
	cr_assert_eq(kvp_client_lookup(c, p, 8, 0, &m), 0, "LOOKUP works in engine mode");
	kvp_client_close(c);
}

static void exit_after_five(void *arg, const uint32_t *tokens, uint32_t n)
{
	int *seen = arg;

	*seen += (int)n;
	if (*seen >= 5)
		_exit(0);   /* the client dies mid-generation, its socket closed by the kernel */
}

Test(generate, client_gone_mid_generation_frees_its_blocks)
{
	struct kvp_client *obs = conn();
	uint32_t p[300];
	pid_t pid;
	int st;

	prompt(p, 300, 31);
	pid = fork();
	if (pid == 0) {
		struct kvp_client *c = NULL;
		struct kvp_generate_params gp;
		struct kvp_usage u;
		int seen = 0;

		if (kvp_client_connect(d.socket, &c) != 0)
			_exit(3);
		kvp_generate_params_init(&gp);
		gp.max_new = 1500;
		kvp_client_generate(c, p, 300, &gp, exit_after_five, &seen, &u);
		_exit(4);   /* finished: the daemon never noticed the hang-up */
	}
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "client status %d", st);
	for (int i = 0; i < 500 && stat_of(obs, "generations_active") > 0; i++)
		usleep(10000);
	cr_assert_eq(stat_of(obs, "generations_active"), 0);
	cr_assert_lt(stat_of(obs, "generated_tokens"), 1500, "the request was cut short");
	cr_assert_eq(stat_of(obs, "blocks_pinned"), 0, "a cancelled request holds no block");
	double total = stat_of(obs, "blocks_total"), f = stat_of(obs, "blocks_free");
	cr_assert_eq(f + stat_of(obs, "blocks_cached"), total);
	cr_assert(kvp_daemon_alive(&d));
	kvp_client_close(obs);
}

/* ---- other daemon set-ups ------------------------------------------------- */

Test(engine_limits, pool_full_of_pinned_blocks_is_a_clear_error, .fini = stop, .timeout = 120)
{
	struct kvp_client *c;
	uint32_t p[200];
	struct run r;

	start_with(small_model(), "8");
	c = conn();
	prompt(p, 200, 41);
	cr_assert_eq(generate(c, p, 200, 4, 0, &r), KVP_EFULL);
	cr_assert(strstr(kvp_client_error(c), "pool full") != NULL, "%s", kvp_client_error(c));
	cr_assert_eq(generate(c, p, 40, 4, 0, &r), 0, "a request that fits still runs");
	kvp_client_close(c);
}

/* --tenant-quota: a GENERATE that needs more blocks than its tenant may hold gets a
 * clear ERROR naming the quota; one within it runs, and so does the connection. */
Test(engine_limits, over_the_tenant_quota_is_a_clear_error, .fini = stop, .timeout = 120)
{
	const char *args[] = { "--model", small_model(), "--kv-dtype", "f32", "--block-tokens", "16",
			       "--threads", "2", "--capacity-blocks", "100", "--tenant-quota", "10",
			       NULL };
	struct kvp_client *c;
	uint32_t p[200];
	struct run r;

	cr_assert_eq(kvp_daemon_start(&d, args), 0);
	c = conn();
	prompt(p, 200, 43);
	cr_assert_eq(generate(c, p, 200, 4, 0, &r), KVP_EFULL, "13 blocks, quota 10");
	cr_assert(strstr(kvp_client_error(c), "tenant quota") != NULL, "%s", kvp_client_error(c));
	cr_assert_eq(generate(c, p, 100, 4, 0, &r), 0, "7 blocks fit the quota");
	cr_assert_eq(stat_of(c, "quota_refusals"), 1);
	kvp_client_close(c);
}

/* Invariant 7: the event loop never waits on compute. */
Test(engine_limits, lookups_answered_during_a_long_prefill, .fini = stop, .timeout = 300)
{
	static uint32_t big[4000];
	static struct gen_thread g;
	pthread_t th;
	struct kvp_client *c;
	struct kvp_match m;
	const char *mp = kvp_test_model("medium", "--vocab 1024 --dim 256 --layers 6 --heads 8 "
				"--kv-heads 4 --ffn 1024 --ctx 4096 --dtype f32 --seed 3");
	const char *args[] = { "--model", mp, "--kv-dtype", "f32", "--threads", "2", NULL };
	int answered_during = 0;

	cr_assert_eq(kvp_daemon_start(&d, args), 0);
	c = conn();
	prompt(big, 4000, 51);
	g = (struct gen_thread){ .big = big, .n = 4000, .max_new = 16 };
	cr_assert_eq(pthread_create(&th, NULL, gen_main, &g), 0);
	for (int i = 0; i < 1000 && stat_of(c, "generations_active") == 0; i++)
		usleep(2000);
	/* while the engine is busy, LOOKUP and STATS are answered straight away */
	for (int i = 0; i < 20; i++) {
		cr_assert_eq(kvp_client_lookup(c, big, 64, 0, &m), 0);
		if (stat_of(c, "generations_active") == 1)
			answered_during++;
	}
	pthread_join(th, NULL);
	cr_assert_eq(g.rc, 0);
	cr_assert_eq(g.r.n, 16);
	cr_assert_eq(answered_during, 20, "only %d of 20 lookups came back during the prefill",
		     answered_during);
	kvp_client_close(c);
}

Test(engine_limits, index_only_daemon_refuses_generate, .fini = stop)
{
	struct kvp_client *c;
	uint32_t p[4] = { 1, 2, 3, 4 };
	struct run r;

	cr_assert_eq(kvp_daemon_start(&d, NULL), 0);
	c = conn();
	cr_assert_eq(generate(c, p, 4, 4, 0, &r), KVP_EUNSUPPORTED);
	cr_assert(strstr(kvp_client_error(c), "index-only") != NULL, "%s", kvp_client_error(c));
	kvp_client_close(c);
}

Test(engine_limits, bad_model_file_is_refused_with_a_reason)
{
	char dir[] = "/tmp/kvp-badmodel-XXXXXX", path[128], cmd[512], out[4096];
	FILE *f;

	cr_assert_not_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/bad.gguf", dir);
	f = fopen(path, "w");
	fputs("GGUF\x03\x00\x00\x00 this is not a model", f);
	fclose(f);
	snprintf(cmd, sizeof(cmd), "timeout 20 %s --model %s --socket %s/s.sock 2>&1",
		 KVP_DAEMON_PATH, path, dir);
	cr_assert_eq(kvp_run_capture(cmd, out, sizeof(out)), 1);
	cr_assert(strstr(out, "cannot load model") != NULL, "%s", out);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	cr_assert_eq(kvp_run_capture(cmd, out, sizeof(out)), 0);
}

/* --max-inflight: a connection pipelining more generations than allowed gets EBUSY for
 * the extra ones; the others run to the end. */
Test(engine_limits, generations_in_flight_per_connection_are_bounded, .fini = stop,
     .timeout = 120)
{
	const char *args[] = { "--model", small_model(), "--threads", "2", "--max-inflight", "2",
			       NULL };
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	static uint8_t out[3 * 2048], in[1 << 16];
	uint32_t p[100];
	size_t off = 0;
	int fd, done = 0, busy = 0;

	cr_assert_eq(kvp_daemon_start(&d, args), 0);
	prompt(p, 100, 61);
	for (uint32_t id = 1; id <= 3; id++) {
		struct kvp_generate_req m = { .max_new = 64, .temperature = 0.0f, .top_p = 1.0f,
					      .n_tokens = 100 };
		struct kvp_frame_hdr h = { .version = 1, .type = KVP_T_GENERATE, .req_id = id };
		size_t n = kvp_generate_req_encode(out + off + KVP_HDR_SIZE, sizeof(out) - off, &m,
						   NULL, p);
		cr_assert_gt(n, 0);
		h.len = (uint32_t)n;
		kvp_hdr_encode(out + off, &h);
		off += KVP_HDR_SIZE + n;
	}
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", d.socket);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(send(fd, out, off, MSG_NOSIGNAL), (ssize_t)off);
	while (done + busy < 3) {
		uint8_t hb[KVP_HDR_SIZE];
		struct kvp_frame_hdr h;
		size_t got = 0;

		while (got < KVP_HDR_SIZE) {
			ssize_t r = recv(fd, hb + got, KVP_HDR_SIZE - got, 0);
			cr_assert_gt(r, 0);
			got += (size_t)r;
		}
		cr_assert_eq(kvp_hdr_decode(hb, KVP_HDR_SIZE, sizeof(in), &h), 0);
		for (got = 0; got < h.len;) {
			ssize_t r = recv(fd, in + got, h.len - got, 0);
			cr_assert_gt(r, 0);
			got += (size_t)r;
		}
		if (h.type == KVP_T_ERROR) {
			struct kvp_error e;
			cr_assert_eq(kvp_error_decode(in, h.len, &e), 0);
			cr_assert_eq(e.code, (uint32_t)-KVP_EBUSY);
			cr_assert_eq(h.req_id, 3, "the third request is the one refused");
			busy++;
		} else if (h.type == KVP_T_GENERATE_DONE) {
			cr_assert_neq(h.req_id, 3);
			done++;
		}
	}
	cr_assert_eq(done, 2);
	cr_assert_eq(busy, 1);
	close(fd);
}

/* ---- --backend ------------------------------------------------------------------------ */

/* --backend cuda on a machine without a CUDA device: exit 1 with a message that says so
 * (before the model is read). */
Test(backend, cuda_without_a_device_exits_with_a_clear_message, .timeout = 60)
{
	char dir[64], cmd[768], out[4096];
	int rc;

	cr_assert_eq(kvp_tmpdir_make(dir, sizeof(dir), "backend"), 0);
	snprintf(cmd, sizeof(cmd), "timeout 20 %s --model %s --backend cuda --socket %s/s.sock 2>&1",
		 KVP_DAEMON_PATH, small_model(), dir);
	rc = kvp_run_capture(cmd, out, sizeof(out));
	kvp_tmpdir_remove(dir);
	if (rc == 124 && strstr(out, "backend cuda"))
		cr_skip_test("a CUDA device is present: kvprefixd ran on it");
	cr_assert_eq(rc, 1, "exit %d: %s", rc, out);
	cr_assert(strstr(out, "--backend cuda: no CUDA device found: ") != NULL, "%s", out);
	cr_assert(strstr(out, "cannot load model") == NULL, "%s", out);
}

/* --backend auto without a device: the CPU engine, said in the log, and it generates. */
Test(backend, auto_falls_back_to_the_cpu_and_says_so, .fini = stop, .timeout = 60)
{
	const char *args[] = { "--model", small_model(), "--backend", "auto", "--threads", "2",
			       "--capacity-blocks", "256", NULL };
	char cmd[512], log[8192];
	struct kvp_client *c;
	static struct run r;
	uint32_t t[40];

	cr_assert_eq(kvp_daemon_start(&d, args), 0);
	snprintf(cmd, sizeof(cmd), "cat %s", d.log);
	cr_assert_eq(kvp_run_capture(cmd, log, sizeof(log)), 0);
	if (strstr(log, "backend cuda"))
		cr_skip_test("a CUDA device is present: auto picked it");
	cr_assert(strstr(log, "no CUDA device found (") != NULL &&
		  strstr(log, "): using the CPU backend") != NULL, "%s", log);
	cr_assert(strstr(log, "backend cpu, 2 threads") != NULL, "%s", log);
	c = conn();
	prompt(t, 40, 3);
	cr_assert_eq(generate(c, t, 40, 4, 0, &r), 0);
	cr_assert_eq(r.n, 4);
	kvp_client_close(c);
}

/* --backend auto with f32 KV (which only the CPU stores) takes the CPU on any machine. */
Test(backend, auto_with_f32_kv_takes_the_cpu, .fini = stop, .timeout = 60)
{
	const char *args[] = { "--model", small_model(), "--backend", "auto", "--kv-dtype", "f32",
			       "--threads", "2", "--capacity-blocks", "256", NULL };
	char cmd[512], log[8192];

	cr_assert_eq(kvp_daemon_start(&d, args), 0);
	snprintf(cmd, sizeof(cmd), "cat %s", d.log);
	cr_assert_eq(kvp_run_capture(cmd, log, sizeof(log)), 0);
	cr_assert(strstr(log, "--kv-dtype f32: using the CPU backend") != NULL, "%s", log);
	cr_assert(strstr(log, "backend cpu, 2 threads") != NULL, "%s", log);
	cr_assert(strstr(log, "no CUDA device") == NULL, "the device was not even probed: %s", log);
}
