/*
 * test_replay.c - the tools end to end against the real daemon.
 *
 * replay: kvprefix-bench replay of the shared Mooncake trace must reach exactly the
 * trace's maximum hit rate for full-block reuse, computed here independently of the
 * tools and the daemon:
 *
 *   chains: (parent chain id, hash_id) -> chain id        (root chain id = 0)
 *
 *   for each request, in order:
 *     full = floor(input_length / 512)  (== len(hash_ids), or len - 1 when the last
 *                                         block is cut; checked for every line)
 *     hit += 512 * (leading full blocks whose chain is already in the map)
 *     add the chains of all its full blocks
 *   hit_rate = sum hit / sum input_length        (0.6504 for the shared trace)
 *
 * and the daemon's own counters (kvprefix-stat --json) must agree to the token. The
 * replay pipelines its requests (--window, default 64 in flight); the plain replay
 * (--window 1, a round trip at a time) must hit the very same tokens, here and where
 * the pool is too small for the trace and the order of every LOOKUP and INSERT shows
 * in the hit rate. Also: the token derivation against docs/trace-replay.md, the kvprefix CLI's JSON
 * output and its exit codes, and the replay tool's report of a bad trace line.
 */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon_harness.h"

#define TRACE_BLOCK 512u
#define EXPECTED_HIT_RATE 0.6504
#define OUT_CAP (1u << 20)

/* ---- helpers ------------------------------------------------------------------- */

static char *out_buf(void)
{
	char *b = malloc(OUT_CAP);

	cr_assert_not_null(b);
	b[0] = '\0';
	return b;
}

/* The last non-empty line of s, parsed as a JSON object (caller deletes). */
static cJSON *last_json_line(char *s)
{
	size_t n = strlen(s);
	char *line;
	cJSON *o;

	while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r'))
		s[--n] = '\0';
	line = strrchr(s, '\n');
	line = line ? line + 1 : s;
	o = cJSON_Parse(line);
	cr_assert(cJSON_IsObject(o), "last output line is not a JSON object: '%s'", line);
	return o;
}

static double jnum(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	cr_assert(cJSON_IsNumber(v), "no number \"%s\" in the JSON output", key);
	return v->valuedouble;
}

static const char *jstr(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	cr_assert(cJSON_IsString(v), "no string \"%s\" in the JSON output", key);
	return v->valuestring;
}

static void dump_file(const char *path)
{
	char line[1024];
	FILE *f = fopen(path, "r");

	while (f && fgets(line, sizeof(line), f))
		cr_log_info("  %s", line);
	if (f)
		fclose(f);
}

/* splitmix64 and the token rule, written out again from docs/trace-replay.md. */
static uint64_t sm64(uint64_t x)
{
	uint64_t z;

	x += 0x9E3779B97F4A7C15ull;
	z = x;
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static uint32_t doc_token(uint64_t h, uint32_t j)
{
	return (uint32_t)(sm64(h * TRACE_BLOCK + j) % 32000u);
}

/* ---- the independent hit-rate model -------------------------------------------- */

struct chain_map {
	uint64_t *parent, *hash, *id;   /* id 0: empty slot */
	size_t cap, n;
	uint64_t next_id;
};

static size_t slot_of(uint64_t parent, uint64_t hash, size_t cap)
{
	uint64_t x = sm64(parent * 0x9E3779B97F4A7C15ull ^ sm64(hash));

	return (size_t)x & (cap - 1);
}

static void map_init(struct chain_map *m, size_t cap)
{
	m->cap = cap;
	m->n = 0;
	m->next_id = 1;
	m->parent = calloc(cap, sizeof(uint64_t));
	m->hash = calloc(cap, sizeof(uint64_t));
	m->id = calloc(cap, sizeof(uint64_t));
	cr_assert(m->parent && m->hash && m->id);
}

static void map_free(struct chain_map *m)
{
	free(m->parent);
	free(m->hash);
	free(m->id);
}

static uint64_t map_get(const struct chain_map *m, uint64_t parent, uint64_t hash)
{
	for (size_t i = slot_of(parent, hash, m->cap);; i = (i + 1) & (m->cap - 1)) {
		if (m->id[i] == 0)
			return 0;
		if (m->parent[i] == parent && m->hash[i] == hash)
			return m->id[i];
	}
}

static void map_put_raw(struct chain_map *m, uint64_t parent, uint64_t hash, uint64_t id)
{
	size_t i = slot_of(parent, hash, m->cap);

	while (m->id[i] != 0)
		i = (i + 1) & (m->cap - 1);
	m->parent[i] = parent;
	m->hash[i] = hash;
	m->id[i] = id;
	m->n++;
}

static uint64_t map_add(struct chain_map *m, uint64_t parent, uint64_t hash)
{
	uint64_t id = map_get(m, parent, hash);

	if (id)
		return id;
	if ((m->n + 1) * 2 > m->cap) {
		struct chain_map g;

		map_init(&g, m->cap * 2);
		g.next_id = m->next_id;
		for (size_t i = 0; i < m->cap; i++)
			if (m->id[i])
				map_put_raw(&g, m->parent[i], m->hash[i], m->id[i]);
		map_free(m);
		*m = g;
	}
	id = m->next_id++;
	map_put_raw(m, parent, hash, id);
	return id;
}

struct expected {
	uint64_t requests, input_tokens, hit_tokens, chains;
};

static void expected_from_trace(const char *path, struct expected *e)
{
	struct chain_map m;
	FILE *f = fopen(path, "r");
	char *line = NULL;
	size_t cap = 0, lineno = 0;
	ssize_t len;

	cr_assert_not_null(f, "cannot open %s: %s", path, strerror(errno));
	memset(e, 0, sizeof(*e));
	map_init(&m, 1024);
	while ((len = getline(&line, &cap, f)) >= 0) {
		cJSON *o, *il, *ids, *it;
		uint64_t *h, parent = 0, k = 0, n_ids, full, input;
		size_t i = 0;

		lineno++;
		if (len <= 1)
			continue;
		o = cJSON_Parse(line);
		cr_assert(cJSON_IsObject(o), "%s:%zu: not a JSON object", path, lineno);
		il = cJSON_GetObjectItemCaseSensitive(o, "input_length");
		ids = cJSON_GetObjectItemCaseSensitive(o, "hash_ids");
		cr_assert(cJSON_IsNumber(il) && cJSON_IsArray(ids), "%s:%zu: bad line", path,
			  lineno);
		input = (uint64_t)il->valuedouble;
		n_ids = (uint64_t)cJSON_GetArraySize(ids);
		cr_assert(n_ids == (input + TRACE_BLOCK - 1) / TRACE_BLOCK,
			  "%s:%zu: %llu hash_ids for %llu tokens", path, lineno,
			  (unsigned long long)n_ids, (unsigned long long)input);
		/* the last block is full only if input_length == 512 * len(hash_ids) */
		full = input == TRACE_BLOCK * n_ids ? n_ids : n_ids - 1;
		h = calloc(n_ids ? n_ids : 1, sizeof(*h));
		cr_assert_not_null(h);
		cJSON_ArrayForEach(it, ids)
			h[i++] = (uint64_t)it->valuedouble;
		for (k = 0; k < full; k++) {
			uint64_t id = map_get(&m, parent, h[k]);

			if (!id)
				break;
			parent = id;
		}
		e->hit_tokens += TRACE_BLOCK * k;
		parent = 0;
		for (uint64_t b = 0; b < full; b++)
			parent = map_add(&m, parent, h[b]);
		e->input_tokens += input;
		e->requests++;
		free(h);
		cJSON_Delete(o);
	}
	e->chains = m.n;
	free(line);
	fclose(f);
	map_free(&m);
}

/* ---- replay of the shared trace ------------------------------------------------ */

/* The JSON line (caller deletes) of kvprefix-bench replay of the shared trace with the
 * options opts, against a daemon of its own started with args. */
static cJSON *daemon_replay(const char *const *args, const char *opts, char *out)
{
	struct kvp_daemon d;
	char cmd[1024];
	cJSON *r;

	cr_assert_eq(kvp_daemon_start(&d, args), 0, "kvprefixd did not start");
	snprintf(cmd, sizeof(cmd), "'%s' replay --trace '%s' --socket '%s' %s 2>/dev/null",
		 KVP_BENCH_PATH, KVP_TRACE_FILE, d.socket, opts);
	cr_assert_eq(kvp_run_capture(cmd, out, OUT_CAP), 0, "kvprefix-bench replay %s failed",
		     opts);
	r = last_json_line(out);
	cr_assert_eq(kvp_daemon_stop(&d), 0);
	return r;
}

Test(replay, shared_trace_reaches_max_full_block_hit_rate, .timeout = 300)
{
	static const char *const args[] = { "--block-tokens", "512", "--capacity-blocks",
					     "131072", NULL };
	struct kvp_daemon d;
	struct expected e;
	char cmd[1024], errlog[256];
	char *out = out_buf();
	cJSON *r, *s;
	double rate;
	int st;

	if (access(KVP_TRACE_FILE, R_OK) != 0)
		cr_skip("trace file %s is missing: %s", KVP_TRACE_FILE, strerror(errno));

	expected_from_trace(KVP_TRACE_FILE, &e);
	rate = (double)e.hit_tokens / (double)e.input_tokens;
	cr_log_info("independent model: %llu requests, %llu tokens, %llu hit, rate %.6f, "
		    "%llu chains", (unsigned long long)e.requests,
		    (unsigned long long)e.input_tokens, (unsigned long long)e.hit_tokens, rate,
		    (unsigned long long)e.chains);
	cr_assert(e.chains < 131072, "the pool is too small for the trace");
	cr_assert(rate > EXPECTED_HIT_RATE - 0.0001 && rate < EXPECTED_HIT_RATE + 0.0001,
		  "independent hit rate %.6f is not 0.6504 +- 0.0001", rate);

	cr_assert_eq(kvp_daemon_start(&d, args), 0, "kvprefixd did not start");
	snprintf(errlog, sizeof(errlog), "%s/bench.err", d.dir);
	snprintf(cmd, sizeof(cmd), "'%s' replay --trace '%s' --socket '%s' --block-tokens 512 "
		 "2>'%s'", KVP_BENCH_PATH, KVP_TRACE_FILE, d.socket, errlog);
	st = kvp_run_capture(cmd, out, OUT_CAP);
	if (st != 0) {
		cr_log_error("replay exited %d; its stderr:", st);
		dump_file(errlog);
		cr_log_error("daemon log:");
		dump_file(d.log);
	}
	cr_assert_eq(st, 0, "kvprefix-bench replay failed");
	r = last_json_line(out);
	cr_log_info("replay: %.0f requests/s, %.0f tokens/s, hit rate %.6f",
		    jnum(r, "requests_per_s"), jnum(r, "tokens_per_s"), jnum(r, "hit_rate"));
	cr_assert(jnum(r, "window") > 1, "the replay is not pipelined: window %.0f",
		  jnum(r, "window"));
	cr_assert_eq((uint64_t)jnum(r, "requests"), e.requests);
	cr_assert_eq((uint64_t)jnum(r, "input_tokens"), e.input_tokens);
	cr_assert_eq((uint64_t)jnum(r, "hit_tokens"), e.hit_tokens,
		     "tool hit_tokens %.0f, expected %llu", jnum(r, "hit_tokens"),
		     (unsigned long long)e.hit_tokens);
	cr_assert_float_eq(jnum(r, "hit_rate"), rate, 1e-9 * rate);

	/* The daemon's own counters say the same. */
	snprintf(cmd, sizeof(cmd), "'%s' --json --socket '%s'", KVP_STAT_PATH, d.socket);
	cr_assert_eq(kvp_run_capture(cmd, out, OUT_CAP), 0, "kvprefix-stat --json failed");
	s = last_json_line(out);
	cr_assert_eq((uint64_t)jnum(s, "hit_tokens"), e.hit_tokens);
	cr_assert_eq((uint64_t)jnum(s, "query_tokens"), e.input_tokens);
	cr_assert_eq((uint64_t)jnum(s, "lookups"), e.requests);
	cr_assert_eq((uint64_t)jnum(s, "inserts"), e.requests);
	cr_assert_float_eq(jnum(s, "hit_rate"), rate, 1e-9 * rate);
	cr_assert_eq((uint64_t)jnum(s, "evictions"), 0);
	cr_assert_eq((uint64_t)jnum(s, "blocks_cached"), e.chains);
	cJSON_Delete(s);
	cJSON_Delete(r);
	cr_assert_eq(kvp_daemon_stop(&d), 0, "kvprefixd did not exit cleanly");

	/* One round trip at a time: the same tokens hit. */
	r = daemon_replay(args, "--window 1", out);
	cr_log_info("replay --window 1: %.0f requests/s", jnum(r, "requests_per_s"));
	cr_assert_eq(jnum(r, "window"), 1);
	cr_assert_eq((uint64_t)jnum(r, "hit_tokens"), e.hit_tokens,
		     "--window 1 hit_tokens %.0f, expected %llu", jnum(r, "hit_tokens"),
		     (unsigned long long)e.hit_tokens);
	cJSON_Delete(r);

	/* The INSERT alone, its reply read for what was cached before it: the same. */
	r = daemon_replay(args, "--insert-only", out);
	cr_log_info("replay --insert-only: %.0f requests/s", jnum(r, "requests_per_s"));
	cr_assert_str_eq(jstr(r, "frames"), "insert");
	cr_assert_eq((uint64_t)jnum(r, "hit_tokens"), e.hit_tokens,
		     "--insert-only hit_tokens %.0f, expected %llu", jnum(r, "hit_tokens"),
		     (unsigned long long)e.hit_tokens);
	cJSON_Delete(r);
	free(out);
}

/* ---- the offline replay ------------------------------------------------------------ */

/* replay --offline runs the daemon's own tree in process: at a pool of 2,000 blocks (the
 * trace overflows it) its LRU and reuse hit rates are the daemon's under each --eviction,
 * to the token; reuse is no worse than LRU, the bound above both at every size, and it
 * reaches the unbounded rate with room for every block. */
/* The hit rate of the shared trace replayed against a daemon started with args, by the
 * pipelined replay; the plain one (--window 1), on a daemon of its own, hits the same
 * tokens: with evictions, a LOOKUP run before the INSERT ahead of it, or any other
 * order, would show. With insert_only_same, so does --insert-only (pipelined, and plain
 * on a daemon of its own): LRU's order is the same whether a request's blocks were
 * matched once or twice, where reuse's clock counts the matches. */
static double daemon_replay_rate(const char *const *args, bool insert_only_same, char *out)
{
	cJSON *piped = daemon_replay(args, "", out);
	cJSON *plain = daemon_replay(args, "--window 1", out);
	double rate = jnum(piped, "hit_rate");

	cr_assert(jnum(piped, "window") > 1 && jnum(plain, "window") == 1);
	cr_assert_eq((uint64_t)jnum(piped, "hit_tokens"), (uint64_t)jnum(plain, "hit_tokens"),
		     "pipelined replay hit %.0f tokens, plain %.0f", jnum(piped, "hit_tokens"),
		     jnum(plain, "hit_tokens"));
	if (insert_only_same) {
		static const char *const opts[] = { "--insert-only", "--insert-only --window 1" };

		for (size_t i = 0; i < 2; i++) {
			cJSON *ins = daemon_replay(args, opts[i], out);

			cr_assert_eq((uint64_t)jnum(ins, "hit_tokens"),
				     (uint64_t)jnum(piped, "hit_tokens"),
				     "replay %s hit %.0f tokens, LOOKUP then INSERT %.0f",
				     opts[i], jnum(ins, "hit_tokens"), jnum(piped, "hit_tokens"));
			cJSON_Delete(ins);
		}
	}
	cJSON_Delete(plain);
	cJSON_Delete(piped);
	return rate;
}

Test(replay, offline_lru_is_the_daemons_and_the_bound_is_above_it, .timeout = 300)
{
	static const char *const args[] = { "--block-tokens", "512", "--capacity-blocks",
					     "2000", NULL };
	static const char *const args_reuse[] = { "--block-tokens", "512", "--capacity-blocks",
						  "2000", "--eviction", "reuse", NULL };
	char cmd[1024];
	char *out = out_buf();
	cJSON *r, *caps, *x;
	double daemon_rate, reuse_rate, prev_bound = 0;
	int i = 0;

	if (access(KVP_TRACE_FILE, R_OK) != 0)
		cr_skip("trace file %s is missing: %s", KVP_TRACE_FILE, strerror(errno));
	daemon_rate = daemon_replay_rate(args, true, out);
	reuse_rate = daemon_replay_rate(args_reuse, false, out);
	cr_assert(daemon_rate > 0.05 && daemon_rate < 0.6, "daemon hit rate %f", daemon_rate);

	snprintf(cmd, sizeof(cmd), "'%s' replay --offline --trace '%s' --capacities "
		 "300,2000,25%%,100%% 2>&1", KVP_BENCH_PATH, KVP_TRACE_FILE);
	cr_assert_eq(kvp_run_capture(cmd, out, OUT_CAP), 0, "replay --offline failed: %s", out);
	cr_assert(strstr(out, "furthest-use bound"), "%s", out);
	r = last_json_line(out);
	caps = cJSON_GetObjectItemCaseSensitive(r, "capacities");
	cr_assert_eq(cJSON_GetArraySize(caps), 4);
	cJSON_ArrayForEach(x, caps) {
		double lru = jnum(x, "lru"), bound = jnum(x, "bound"), reuse = jnum(x, "reuse");

		cr_assert(bound >= lru && bound >= reuse, "capacity %.0f: bound %f below LRU %f "
			  "or reuse %f", jnum(x, "blocks"), bound, lru, reuse);
		cr_assert(reuse >= lru, "capacity %.0f: reuse %f below LRU %f", jnum(x, "blocks"),
			  reuse, lru);
		cr_assert(bound >= prev_bound, "the bound must grow with the pool");
		prev_bound = bound;
		if (i == 1) {
			cr_assert_eq(jnum(x, "blocks"), 2000);
			cr_assert_float_eq(lru, daemon_rate, 1e-12, "offline %f, daemon %f", lru,
					   daemon_rate);
			cr_assert_float_eq(reuse, reuse_rate, 1e-12, "reuse offline %f, daemon %f",
					   reuse, reuse_rate);
			cr_assert(reuse > lru, "reuse %f must beat LRU %f here", reuse, lru);
		}
		if (i == 3) {
			cr_assert_float_eq(bound, jnum(r, "unbounded"), 1e-12);
			cr_assert_float_eq(lru, bound, 1e-12, "room for every block: no eviction");
		}
		i++;
	}
	cr_assert_float_eq(jnum(r, "unbounded"), EXPECTED_HIT_RATE, 0.0001);
	cJSON_Delete(r);
	snprintf(cmd, sizeof(cmd), "'%s' replay --offline --trace '%s' --capacities 0%% 2>&1",
		 KVP_BENCH_PATH, KVP_TRACE_FILE);
	cr_assert_eq(kvp_run_capture(cmd, out, OUT_CAP), 2, "a capacity of 0%% is a usage error");
	free(out);
}

/* ---- the token derivation ------------------------------------------------------ */

static void write_tokens(const char *path, const uint32_t *t, size_t n)
{
	FILE *f = fopen(path, "w");

	cr_assert_not_null(f);
	for (size_t i = 0; i < n; i++)
		fprintf(f, "%u%c", t[i], i % 16 == 15 ? '\n' : ' ');
	cr_assert_eq(fclose(f), 0);
}

Test(replay, derivation_matches_the_documented_rule, .timeout = 60)
{
	static const char *const args[] = { "--block-tokens", "512", NULL };
	static const uint64_t ids[] = { 7, 9, 4 };
	struct kvp_daemon d;
	uint32_t toks[1200];
	char trace[256], tokfile[256], cmd[1024];
	char *out = out_buf();
	cJSON *o;
	FILE *f;

	/* known answers from docs/trace-replay.md */
	cr_assert_eq(sm64(0), 0xe220a8397b1dcdafull);
	cr_assert_eq(doc_token(0, 0), 15535u);
	cr_assert_eq(doc_token(0, 1), 22465u);
	cr_assert_eq(doc_token(0, 511), 28382u);
	cr_assert_eq(doc_token(1, 0), 19302u);
	cr_assert_eq(doc_token(79, 5), 9743u);
	cr_assert_eq(doc_token(43923, 511), 20095u);

	cr_assert_eq(kvp_daemon_start(&d, args), 0, "kvprefixd did not start");
	snprintf(trace, sizeof(trace), "%s/one.jsonl", d.dir);
	snprintf(tokfile, sizeof(tokfile), "%s/tokens.txt", d.dir);
	f = fopen(trace, "w");
	cr_assert_not_null(f);
	fprintf(f, "{\"timestamp\": 0, \"input_length\": 1200, \"output_length\": 1, "
		"\"hash_ids\": [7, 9, 4]}\n");
	cr_assert_eq(fclose(f), 0);
	snprintf(cmd, sizeof(cmd), "'%s' replay --trace '%s' --socket '%s' 2>/dev/null",
		 KVP_BENCH_PATH, trace, d.socket);
	cr_assert_eq(kvp_run_capture(cmd, out, OUT_CAP), 0);
	o = last_json_line(out);
	cr_assert_eq((uint64_t)jnum(o, "input_tokens"), 1200);
	cr_assert_eq((uint64_t)jnum(o, "hit_tokens"), 0);
	cJSON_Delete(o);

	/* The daemon now holds blocks 7 and 9 as the tool derived them: our own
	 * derivation of the same tokens must match both full blocks. */
	for (uint32_t i = 0; i < 1200; i++)
		toks[i] = doc_token(ids[i / TRACE_BLOCK], i % TRACE_BLOCK);
	write_tokens(tokfile, toks, 1200);
	snprintf(cmd, sizeof(cmd), "'%s' lookup --json --socket '%s' --tokens-file '%s'",
		 KVP_CLI_PATH, d.socket, tokfile);
	cr_assert_eq(kvp_run_capture(cmd, out, OUT_CAP), 0);
	o = last_json_line(out);
	cr_assert_eq((uint64_t)jnum(o, "matched_tokens"), 1024);
	cr_assert_eq((uint64_t)jnum(o, "prompt_tokens"), 1200);
	cJSON_Delete(o);

	/* One token off in the second block: only the first block matches. */
	toks[512 + 300] = (toks[512 + 300] + 1) % 32000u;
	write_tokens(tokfile, toks, 1200);
	cr_assert_eq(kvp_run_capture(cmd, out, OUT_CAP), 0);
	o = last_json_line(out);
	cr_assert_eq((uint64_t)jnum(o, "matched_tokens"), 512);
	cJSON_Delete(o);

	free(out);
	cr_assert_eq(kvp_daemon_stop(&d), 0);
}

Test(replay, bad_trace_line_is_reported_with_its_number, .timeout = 60)
{
	char dir[] = "/tmp/kvp-replay-XXXXXX", trace[128], cmd[1024];
	char *out = out_buf();
	FILE *f;
	int st;

	cr_assert_not_null(mkdtemp(dir));
	snprintf(trace, sizeof(trace), "%s/bad.jsonl", dir);
	f = fopen(trace, "w");
	cr_assert_not_null(f);
	fprintf(f, "{\"input_length\": 10, \"hash_ids\": [1]}\n\n"
		"{\"input_length\": 1025, \"hash_ids\": [1, 2]}\n");
	cr_assert_eq(fclose(f), 0);
	/* No daemon needed: the trace is checked before connecting. */
	snprintf(cmd, sizeof(cmd), "'%s' replay --trace '%s' --socket '%s/none.sock' 2>&1",
		 KVP_BENCH_PATH, trace, dir);
	st = kvp_run_capture(cmd, out, OUT_CAP);
	cr_assert_eq(st, 1, "exit %d: %s", st, out);
	cr_assert(strstr(out, "bad.jsonl:3:") != NULL, "no line number in: %s", out);
	cr_assert(strstr(out, "hash_ids") != NULL, "no reason in: %s", out);

	snprintf(cmd, sizeof(cmd), "'%s' replay --socket '%s/none.sock' 2>&1", KVP_BENCH_PATH,
		 dir);
	cr_assert_eq(kvp_run_capture(cmd, out, OUT_CAP), 2, "no --trace must be usage: %s",
		     out);
	snprintf(cmd, sizeof(cmd), "'%s' replay --trace '%s' --window 0 2>&1", KVP_BENCH_PATH,
		 trace);
	cr_assert_eq(kvp_run_capture(cmd, out, OUT_CAP), 2, "--window 0 must be usage: %s", out);
	cr_assert(strstr(out, "--window") != NULL, "no option named in: %s", out);
	unlink(trace);
	rmdir(dir);
	free(out);
}

/* ---- the kvprefix CLI ---------------------------------------------------------- */

Test(cli, lookup_and_insert_json, .timeout = 60)
{
	static const char *const args[] = { "--block-tokens", "4", NULL };
	const char *toks = "1,2,3,4,5,6,7,8,9,10";
	struct kvp_daemon d;
	char cmd[1024];
	char *out = out_buf();
	cJSON *o, *ids;

	cr_assert_eq(kvp_daemon_start(&d, args), 0, "kvprefixd did not start");

	snprintf(cmd, sizeof(cmd), "'%s' lookup --socket '%s' --tokens %s --json",
		 KVP_CLI_PATH, d.socket, toks);
	cr_assert_eq(kvp_run_capture(cmd, out, OUT_CAP), 0);
	o = last_json_line(out);
	cr_assert_eq((uint64_t)jnum(o, "matched_tokens"), 0);
	cr_assert_eq((uint64_t)jnum(o, "prompt_tokens"), 10);
	cr_assert_eq((uint64_t)jnum(o, "blocks"), 0);
	cr_assert_eq((uint64_t)jnum(o, "lease"), 0);
	cJSON_Delete(o);

	snprintf(cmd, sizeof(cmd), "'%s' insert --socket '%s' --tokens %s --json",
		 KVP_CLI_PATH, d.socket, toks);
	cr_assert_eq(kvp_run_capture(cmd, out, OUT_CAP), 0);
	o = last_json_line(out);
	cr_assert_eq((uint64_t)jnum(o, "cached_tokens"), 8);
	cr_assert_eq((uint64_t)jnum(o, "prompt_tokens"), 10);
	cr_assert_eq((uint64_t)jnum(o, "new_blocks"), 2);
	ids = cJSON_GetObjectItemCaseSensitive(o, "block_ids");
	cr_assert(cJSON_IsArray(ids) && cJSON_GetArraySize(ids) == 2);
	cJSON_Delete(o);

	snprintf(cmd, sizeof(cmd), "'%s' lookup --socket '%s' --tokens %s --pin --json",
		 KVP_CLI_PATH, d.socket, toks);
	cr_assert_eq(kvp_run_capture(cmd, out, OUT_CAP), 0);
	o = last_json_line(out);
	cr_assert_eq((uint64_t)jnum(o, "matched_tokens"), 8);
	cr_assert_eq((uint64_t)jnum(o, "blocks"), 2);
	cr_assert(jnum(o, "lease") > 0, "--pin gave no lease");
	cJSON_Delete(o);

	/* human output, and a JSON-array tokens file */
	snprintf(cmd, sizeof(cmd), "'%s' lookup --socket '%s' --tokens '1, 2,3,4,5'",
		 KVP_CLI_PATH, d.socket);
	cr_assert_eq(kvp_run_capture(cmd, out, OUT_CAP), 0);
	cr_assert(strstr(out, "matched 4 of 5 tokens (1 block)") != NULL, "got: %s", out);
	snprintf(cmd, sizeof(cmd), "echo '[1,2,3,4,5,6,7,8,9]' | '%s' lookup --socket '%s' "
		 "--tokens-file - --json", KVP_CLI_PATH, d.socket);
	cr_assert_eq(kvp_run_capture(cmd, out, OUT_CAP), 0);
	o = last_json_line(out);
	cr_assert_eq((uint64_t)jnum(o, "matched_tokens"), 8);
	cJSON_Delete(o);

	snprintf(cmd, sizeof(cmd), "'%s' stats --socket '%s'", KVP_CLI_PATH, d.socket);
	cr_assert_eq(kvp_run_capture(cmd, out, OUT_CAP), 0);
	o = cJSON_Parse(out);
	cr_assert(cJSON_IsObject(o), "stats is not JSON: %s", out);
	cr_assert_eq((uint64_t)jnum(o, "lookups"), 4);
	cJSON_Delete(o);

	snprintf(cmd, sizeof(cmd), "'%s' --socket '%s'", KVP_STAT_PATH, d.socket);
	cr_assert_eq(kvp_run_capture(cmd, out, OUT_CAP), 0);
	cr_assert(strstr(out, "token hit rate") != NULL, "no table: %s", out);

	snprintf(cmd, sizeof(cmd), "'%s' ping --socket '%s'", KVP_CLI_PATH, d.socket);
	cr_assert_eq(kvp_run_capture(cmd, out, OUT_CAP), 0);
	cr_assert(strstr(out, "block 4 tokens") != NULL, "got: %s", out);

	free(out);
	cr_assert_eq(kvp_daemon_stop(&d), 0);
}

/* Each bad --tokens value: exit status 2 and a message naming the position. */
Test(cli, bad_tokens_exit_2_with_position)
{
	static const struct {
		const char *arg, *want;
	} cases[] = {
		{ "'1,x,3'", "token 2" },
		{ "'1,2,4294967296'", "token 3" },
		{ "''", "token 1" },
		{ "'1,,3'", "token 2" },
		{ "'1,2,'", "token 3" },
		{ "'-1'", "token 1" },
		{ "'7 8'", "token 1" },
	};
	char cmd[1024];
	char *out = out_buf();

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int st;

		snprintf(cmd, sizeof(cmd), "'%s' lookup --socket /nonexistent/kvp.sock "
			 "--tokens %s 2>&1", KVP_CLI_PATH, cases[i].arg);
		st = kvp_run_capture(cmd, out, OUT_CAP);
		cr_expect_eq(st, 2, "--tokens %s: exit %d: %s", cases[i].arg, st, out);
		cr_expect(strstr(out, cases[i].want) != NULL, "--tokens %s: no '%s' in: %s",
			  cases[i].arg, cases[i].want, out);
	}
	snprintf(cmd, sizeof(cmd), "'%s' lookup --tokens 1 --bogus 2>&1", KVP_CLI_PATH);
	cr_expect_eq(kvp_run_capture(cmd, out, OUT_CAP), 2, "unknown option: %s", out);
	snprintf(cmd, sizeof(cmd), "'%s' lookup 2>&1", KVP_CLI_PATH);
	cr_expect_eq(kvp_run_capture(cmd, out, OUT_CAP), 2, "no tokens: %s", out);
	snprintf(cmd, sizeof(cmd), "'%s' frobnicate 2>&1", KVP_CLI_PATH);
	cr_expect_eq(kvp_run_capture(cmd, out, OUT_CAP), 2, "unknown command: %s", out);
	snprintf(cmd, sizeof(cmd), "'%s' lookup --help", KVP_CLI_PATH);
	cr_expect_eq(kvp_run_capture(cmd, out, OUT_CAP), 0);
	cr_expect(strstr(out, "--tokens-file") != NULL);
	free(out);
}

Test(cli, no_daemon_says_so_and_exits_1)
{
	char cmd[1024];
	char *out = out_buf();

	snprintf(cmd, sizeof(cmd), "'%s' lookup --socket /nonexistent/kvp.sock --tokens 1,2 "
		 "2>&1", KVP_CLI_PATH);
	cr_assert_eq(kvp_run_capture(cmd, out, OUT_CAP), 1, "got: %s", out);
	cr_assert(strstr(out, "cannot connect to /nonexistent/kvp.sock") != NULL, "got: %s",
		  out);
	cr_assert(strstr(out, "is kvprefixd running?") != NULL, "got: %s", out);
	snprintf(cmd, sizeof(cmd), "'%s' --socket /nonexistent/kvp.sock 2>&1", KVP_STAT_PATH);
	cr_assert_eq(kvp_run_capture(cmd, out, OUT_CAP), 1, "got: %s", out);
	cr_assert(strstr(out, "is kvprefixd running?") != NULL, "got: %s", out);
	free(out);
}
