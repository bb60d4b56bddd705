/*
 * bench_replay.c - kvprefix-bench replay: a Mooncake trace against a running daemon,
 * the way an external engine would use it: per request LOOKUP (no pin), then INSERT of
 * the request's tokens. The tokens of every request are derived from its hash_ids
 * (docs/trace-replay.md) before the clock starts. Progress on stderr; the last line on
 * stdout is one JSON object: requests, input_tokens, hit_tokens, hit_rate, elapsed_s,
 * requests_per_s, tokens_per_s, block_tokens.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "bench_replay.h"
#include "kvp_index.h"
#include "trace.h"
#include "util.h"

#define PROGRESS_EVERY 500u

#define OFFLINE_MAX_CAPS 32

struct replay_opts {
	const char *trace, *sock;
	uint64_t block;           /* 0: take the daemon's */
	uint64_t limit;           /* 0: every request */
	bool offline;             /* in process, at several capacities */
	struct offline_cap caps[OFFLINE_MAX_CAPS];   /* --capacities */
	size_t n_caps;
};

/* The trace and every request's tokens: request i is toks[off[i] .. off[i + 1]). */
struct replay_prompts {
	struct kvp_trace tr;
	uint32_t *toks;
	size_t *off;
	uint32_t max_len;
};

struct replay_result {
	uint64_t hit;
	double elapsed_s;
};

static void usage_replay(FILE *f)
{
	fprintf(f,
		"Usage: kvprefix-bench replay --trace FILE [--socket PATH] [--block-tokens N]\n"
		"                             [--limit N]\n"
		"Replay a Mooncake trace (JSON lines with input_length and hash_ids, one\n"
		"512-token block per hash_id) against a running kvprefixd: per request a\n"
		"LOOKUP, then an INSERT of its tokens. Tokens are derived from the hash_ids\n"
		"(docs/trace-replay.md) before timing starts.\n"
		"\n"
		"  -t, --trace FILE        the trace ('-': stdin)\n"
		"  -s, --socket PATH       daemon socket (default: the library's default)\n"
		"  -b, --block-tokens N    check that the daemon uses N tokens a block\n"
		"                          (default: take the daemon's)\n"
		"  -n, --limit N           replay only the first N requests\n"
		"      --offline           no daemon: the trace through the index in process at\n"
		"                          several pool sizes, under each --eviction policy (lru,\n"
		"                          reuse), beside the bound no policy can beat (evict the\n"
		"                          leaf used again furthest ahead)\n"
		"      --capacities LIST   --offline's pool sizes: blocks, or N%% of the trace's\n"
		"                          distinct blocks (default 1%%,5%%,10%%,5859,25%%,50%%,100%%)\n"
		"  -h, --help              show this help\n"
		"\n"
		"Progress goes to stderr; the last stdout line is one JSON object: requests,\n"
		"input_tokens, hit_tokens, hit_rate (hit_tokens / input_tokens), elapsed_s,\n"
		"requests_per_s, tokens_per_s.\n");
}

/* "5859,10%,14.6%": block counts (>= 1), or percentages in (0, 100]. */
static bool parse_caps(const char *arg, struct replay_opts *o)
{
	const char *p = arg;

	o->n_caps = 0;
	while (*p) {
		char *end;
		double v = strtod(p, &end);
		bool pct = end != p && *end == '%';

		end += pct;
		if (end == p || o->n_caps == OFFLINE_MAX_CAPS || (*end != ',' && *end != '\0') ||
		    (pct ? !(v > 0 && v <= 100) : !(v >= 1 && v <= 1e12 && v == (double)(uint64_t)v)))
			return false;
		o->caps[o->n_caps++] = (struct offline_cap){ .value = v, .percent = pct };
		p = *end ? end + 1 : end;
	}
	return o->n_caps > 0;
}

static int parse_replay(int argc, char **argv, struct replay_opts *o)
{
	static const struct option opts[] = {
		{ "trace", required_argument, NULL, 't' },
		{ "socket", required_argument, NULL, 's' },
		{ "block-tokens", required_argument, NULL, 'b' },
		{ "limit", required_argument, NULL, 'n' },
		{ "offline", no_argument, NULL, 'O' },
		{ "capacities", required_argument, NULL, 'C' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int opt;

	memset(o, 0, sizeof(*o));
	(void)parse_caps("1%,5%,10%,5859,25%,50%,100%", o);
	optind = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":t:s:b:n:h", opts, NULL)) != -1) {
		switch (opt) {
		case 't': o->trace = optarg; break;
		case 's': o->sock = optarg; break;
		case 'b':
			if (!bench_parse_u64("replay", "--block-tokens", optarg, 1,
					     KVP_BLOCK_TOKENS_MAX, &o->block))
				return KVP_EXIT_USAGE;
			break;
		case 'n':
			if (!kvp_tool_parse_u64(optarg, 1, SIZE_MAX, &o->limit)) {
				fprintf(stderr, PROG " replay: --limit '%s': want a positive "
					"number of requests\n", optarg);
				return KVP_EXIT_USAGE;
			}
			break;
		case 'O': o->offline = true; break;
		case 'C':
			if (!parse_caps(optarg, o))
				return bench_usage_error("replay", "--capacities '%s': want block "
							 "counts or percentages in (0, 100], comma "
							 "separated (5859,10%%)", optarg);
			break;
		case 'h': usage_replay(stdout); return KVP_EXIT_OK;
		default: return bench_bad_option("replay", argv, opt);
		}
	}
	if (optind < argc)
		return bench_usage_error("replay", "unexpected argument '%s'", argv[optind]);
	if (!o->trace)
		return bench_usage_error("replay", "--trace FILE is required");
	return BENCH_RUN;
}

static void replay_prompts_free(struct replay_prompts *p)
{
	free(p->off);
	free(p->toks);
	kvp_trace_free(&p->tr);
}

/* Load the trace and derive the tokens of every request. 0, or -1 (message printed;
 * p freed). */
static int load_replay_prompts(const struct replay_opts *o, struct replay_prompts *p)
{
	uint64_t t0 = kvp_tool_now_ns();
	struct kvp_trace *tr = &p->tr;
	char err[512];

	memset(p, 0, sizeof(*p));
	if (kvp_trace_load(o->trace, (size_t)o->limit, tr, err, sizeof(err)) < 0) {
		fprintf(stderr, PROG " replay: %s\n", err);
		return -1;
	}
	if (tr->n_reqs == 0) {
		fprintf(stderr, PROG " replay: %s: no requests in the trace\n", o->trace);
		goto fail;
	}
	if (tr->total_tokens > SIZE_MAX / sizeof(uint32_t) / 2) {
		fprintf(stderr, PROG " replay: %s: %" PRIu64 " tokens in all is too many to "
			"hold; use --limit\n", o->trace, tr->total_tokens);
		goto fail;
	}
	p->toks = malloc((size_t)tr->total_tokens * sizeof(*p->toks));
	p->off = malloc((tr->n_reqs + 1) * sizeof(*p->off));
	if (!p->toks || !p->off) {
		fprintf(stderr, PROG " replay: cannot allocate %.1f MiB for the tokens of %zu "
			"requests; use --limit\n",
			(double)tr->total_tokens * sizeof(*p->toks) / 1048576.0, tr->n_reqs);
		goto fail;
	}
	p->off[0] = 0;
	for (size_t i = 0; i < tr->n_reqs; i++) {
		kvp_trace_req_tokens(tr, &tr->reqs[i], p->toks + p->off[i]);
		p->off[i + 1] = p->off[i] + tr->reqs[i].input_length;
		if (tr->reqs[i].input_length > p->max_len)
			p->max_len = tr->reqs[i].input_length;
	}
	fprintf(stderr, "replay: %zu requests, %" PRIu64 " tokens (longest %u), derived in "
		"%.2f s\n", tr->n_reqs, tr->total_tokens, p->max_len,
		(double)(kvp_tool_now_ns() - t0) / 1e9);
	return 0;
fail:
	replay_prompts_free(p);
	return -1;
}

/* HELLO, and check the daemon's blocks and request limit against the trace. */
static int replay_hello(struct kvp_client *c, const struct replay_opts *o,
			const struct replay_prompts *p, struct kvp_server_info *info)
{
	int rc;

	memset(info, 0, sizeof(*info));
	rc = kvp_client_hello(c, NULL, NULL, info);
	if (rc < 0) {
		kvp_tool_perror(PROG " replay", "hello", c, rc);
		return -1;
	}
	if (o->block && o->block != info->block_tokens) {
		fprintf(stderr, PROG " replay: --block-tokens %" PRIu64 " but the daemon uses "
			"%u tokens a block; restart it with --block-tokens %" PRIu64 " or drop "
			"the option\n", o->block, info->block_tokens, o->block);
		return -1;
	}
	if (info->max_tokens && p->max_len > info->max_tokens) {
		fprintf(stderr, PROG " replay: the trace has a request of %u tokens but the "
			"daemon accepts at most %u a request\n", p->max_len, info->max_tokens);
		return -1;
	}
	fprintf(stderr, "replay: daemon block %u tokens, capacity %u blocks%s\n",
		info->block_tokens, info->capacity_blocks,
		info->index_only ? ", index-only" : "");
	return 0;
}

/* LOOKUP then INSERT of request i; its matched tokens added to *hit. The status
 * (message printed naming the step). */
static int replay_one(struct kvp_client *c, const struct replay_prompts *p, size_t i,
		      uint64_t *hit)
{
	const struct kvp_trace_req *r = &p->tr.reqs[i];
	const uint32_t *toks = p->toks + p->off[i];
	const char *step = "lookup";
	struct kvp_match m;
	char what[512];
	int rc = kvp_client_lookup(c, toks, r->input_length, 0, &m);

	if (rc == 0) {
		*hit += m.matched_tokens;
		step = "insert";
		rc = kvp_client_insert(c, toks, r->input_length, 0, &m);
	}
	if (rc < 0) {
		snprintf(what, sizeof(what), "%s of request %zu (line %zu)", step, i + 1, r->line);
		kvp_tool_perror(PROG " replay", what, c, rc);
	}
	return rc;
}

/* LOOKUP then INSERT of every request, timed; progress every PROGRESS_EVERY. */
static int run_replay(struct kvp_client *c, const struct replay_prompts *p,
		      struct replay_result *res)
{
	const struct kvp_trace *tr = &p->tr;
	uint64_t t_start = kvp_tool_now_ns();

	res->hit = 0;
	for (size_t i = 0; i < tr->n_reqs; i++) {
		if (replay_one(c, p, i, &res->hit) < 0)
			return -1;
		if ((i + 1) % PROGRESS_EVERY == 0 && i + 1 < tr->n_reqs) {
			double s = (double)(kvp_tool_now_ns() - t_start) / 1e9;

			fprintf(stderr, "replay: %zu/%zu requests (%.0f%%), hit rate %.4f, "
				"%.0f requests/s\n", i + 1, tr->n_reqs,
				100.0 * (double)(i + 1) / (double)tr->n_reqs,
				(double)res->hit / (double)p->off[i + 1], (double)(i + 1) / s);
		}
	}
	res->elapsed_s = (double)(kvp_tool_now_ns() - t_start) / 1e9;
	if (res->elapsed_s <= 0)
		res->elapsed_s = 1e-9;
	fprintf(stderr, "replay: %zu/%zu requests (100%%), hit rate %.4f, %.0f requests/s\n",
		tr->n_reqs, tr->n_reqs, (double)res->hit / (double)tr->total_tokens,
		(double)tr->n_reqs / res->elapsed_s);
	return 0;
}

/* The JSON line; false (message printed) when out of memory. */
static bool json_replay(const struct kvp_trace *tr, const struct replay_result *res,
			uint32_t block_tokens)
{
	const double el = res->elapsed_s, total = (double)tr->total_tokens;
	cJSON *o = cJSON_CreateObject();
	bool built = o && cJSON_AddNumberToObject(o, "requests", (double)tr->n_reqs) &&
		     cJSON_AddNumberToObject(o, "input_tokens", total) &&
		     cJSON_AddNumberToObject(o, "hit_tokens", (double)res->hit) &&
		     cJSON_AddNumberToObject(o, "hit_rate", (double)res->hit / total) &&
		     cJSON_AddNumberToObject(o, "elapsed_s", el) &&
		     cJSON_AddNumberToObject(o, "requests_per_s", (double)tr->n_reqs / el) &&
		     cJSON_AddNumberToObject(o, "tokens_per_s", total / el) &&
		     cJSON_AddNumberToObject(o, "block_tokens", block_tokens);

	return bench_json_finish("replay", o, built);
}

int bench_cmd_replay(int argc, char **argv)
{
	struct replay_opts o;
	struct replay_prompts p;
	struct replay_result res;
	struct kvp_server_info info;
	struct kvp_client *c = NULL;
	int ret = parse_replay(argc, argv, &o);

	if (ret != BENCH_RUN)
		return ret;
	if (o.offline) {
		char err[512];

		if (kvp_trace_load(o.trace, (size_t)o.limit, &p.tr, err, sizeof(err)) < 0) {
			fprintf(stderr, PROG " replay: %s\n", err);
			return KVP_EXIT_FAIL;
		}
		ret = bench_replay_offline(&p.tr, o.caps, o.n_caps) == 0 ? KVP_EXIT_OK
									  : KVP_EXIT_FAIL;
		kvp_trace_free(&p.tr);
		return ret;
	}
	/* Load and derive everything before touching the daemon or the clock. */
	if (load_replay_prompts(&o, &p) < 0)
		return KVP_EXIT_FAIL;
	ret = KVP_EXIT_FAIL;
	if (kvp_tool_connect(PROG " replay", o.sock, &c) < 0)
		goto out_free;
	if (replay_hello(c, &o, &p, &info) == 0 && run_replay(c, &p, &res) == 0 &&
	    json_replay(&p.tr, &res, info.block_tokens))
		ret = KVP_EXIT_OK;
	kvp_client_close(c);
out_free:
	replay_prompts_free(&p);
	return ret;
}
