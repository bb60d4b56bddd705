/*
 * bench_chat.c - kvprefix-bench chat: a multi-turn chat against a running kvprefixd
 * in engine mode. N users share one system prompt; each turn's prompt is the previous
 * prompt, the previous answer and new user tokens, so every turn after a user's first
 * should find its whole history cached. Turns go round the users. Prints a row per
 * request (prompt, cached, computed and generated tokens, TTFT), then one JSON line
 * with the totals.
 */
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "util.h"

struct chat_opts {
	const char *sock;
	uint64_t users, turns, sys_n, user_n, max_new, vocab;
};

/* The conversations, one a user, and what each turn reads from. */
struct chat_state {
	struct kvp_tokvec *conv;     /* users */
	struct kvp_tokvec answer;
	uint32_t *sys, *ut;          /* the system prompt, one turn's user tokens */
};

struct chat_totals {
	uint64_t prompt, cached, computed, generated;
	double ttft_first;           /* user 1, turn 1 */
	uint32_t first_cached;
	double ttft_rest;            /* the sum over the others */
	uint32_t n_rest;
	double elapsed_s;
};

static void usage_chat(FILE *f)
{
	fprintf(f,
		"Usage: kvprefix-bench chat [--socket PATH] [--users N] [--turns N]\n"
		"                           [--system-tokens N] [--user-tokens N] [--max-new N]\n"
		"                           [--vocab N]\n"
		"Play a chat against a running kvprefixd in engine mode: N users share one\n"
		"system prompt; each turn's prompt is the previous prompt, the previous answer\n"
		"and new user tokens. Turns go round the users (turn 1 of every user, then\n"
		"turn 2, ...). Prints each request's prompt, cached and computed tokens and\n"
		"TTFT, then one JSON line with the totals.\n"
		"\n"
		"  -s, --socket PATH       daemon socket (default: the library's default)\n"
		"  -u, --users N           users (default 3)\n"
		"  -n, --turns N           turns per user (default 3)\n"
		"      --system-tokens N   tokens of the shared system prompt (default 512)\n"
		"      --user-tokens N     new tokens a user adds each turn (default 48)\n"
		"      --max-new N         tokens each answer has at most (default 32, greedy)\n"
		"      --vocab N           token ids are drawn below N (default 32000, the\n"
		"                          default model's vocabulary)\n"
		"  -h, --help              show this help\n");
}

static int parse_chat(int argc, char **argv, struct chat_opts *o)
{
	enum { O_SYS = 256, O_USER, O_MAXNEW, O_VOCAB };
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "users", required_argument, NULL, 'u' },
		{ "turns", required_argument, NULL, 'n' },
		{ "system-tokens", required_argument, NULL, O_SYS },
		{ "user-tokens", required_argument, NULL, O_USER },
		{ "max-new", required_argument, NULL, O_MAXNEW },
		{ "vocab", required_argument, NULL, O_VOCAB },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int opt;

	*o = (struct chat_opts){
		.users = 3, .turns = 3, .sys_n = 512, .user_n = 48, .max_new = 32, .vocab = 32000,
	};
	optind = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":s:u:n:h", opts, NULL)) != -1) {
		uint64_t *dst = NULL, lo = 1, hi = 1u << 20;
		const char *name = NULL;

		switch (opt) {
		case 's': o->sock = optarg; continue;
		case 'u': dst = &o->users; name = "--users"; hi = 256; break;
		case 'n': dst = &o->turns; name = "--turns"; hi = 256; break;
		case O_SYS: dst = &o->sys_n; name = "--system-tokens"; break;
		case O_USER: dst = &o->user_n; name = "--user-tokens"; break;
		case O_MAXNEW: dst = &o->max_new; name = "--max-new"; lo = 0; hi = 65536; break;
		case O_VOCAB: dst = &o->vocab; name = "--vocab"; lo = 2; hi = 1u << 24; break;
		case 'h': usage_chat(stdout); return KVP_EXIT_OK;
		default: return bench_bad_option("chat", argv, opt);
		}
		if (!bench_parse_u64("chat", name, optarg, lo, hi, dst))
			return KVP_EXIT_USAGE;
	}
	if (optind < argc)
		return bench_usage_error("chat", "unexpected argument '%s'", argv[optind]);
	return BENCH_RUN;
}

/* Append n tokens to v; the status (KVP_ETOOBIG, KVP_ENOMEM). */
static int push_tokens(struct kvp_tokvec *v, const uint32_t *t, size_t n)
{
	int rc = 0;

	for (size_t i = 0; i < n && rc == 0; i++)
		rc = kvp_tokvec_push(v, t[i]);
	return rc;
}

/* Add one request's usage to the totals. */
static void chat_count(struct chat_totals *tot, uint64_t u, uint64_t t,
		       const struct kvp_usage *us)
{
	tot->prompt += us->prompt_tokens;
	tot->cached += us->cached_tokens;
	tot->computed += us->computed_tokens;
	tot->generated += us->generated_tokens;
	if (t == 0 && u == 0) {
		tot->ttft_first = (double)us->ttft_us;
		tot->first_cached = us->cached_tokens;
	} else {
		tot->ttft_rest += (double)us->ttft_us;
		tot->n_rest++;
	}
}

/*
 * Turn t of user u: (the system prompt on the first turn,) new user tokens, a
 * generation, its row; the answer joins the conversation. 0, or -1 (message printed).
 */
static int chat_turn(struct kvp_client *c, const struct chat_opts *o, struct chat_state *s,
		     uint64_t u, uint64_t t, struct chat_totals *tot)
{
	struct kvp_tokvec *cv = &s->conv[u];
	struct kvp_usage us;
	char what[64];
	int rc = 0;

	if (t == 0)
		rc = push_tokens(cv, s->sys, o->sys_n);
	bench_rand_tokens(s->ut, o->user_n, 0x10000 * (u + 1) + t, (uint32_t)o->vocab);
	if (rc == 0)
		rc = push_tokens(cv, s->ut, o->user_n);
	if (rc < 0)
		goto out_rc;
	s->answer.n = 0;
	snprintf(what, sizeof(what), "user %" PRIu64 " turn %" PRIu64, u + 1, t + 1);
	if (bench_generate(PROG " chat", c, cv->v, cv->n, (uint32_t)o->max_new, &s->answer, &us,
			   what) < 0)
		return -1;
	printf("  %4" PRIu64 " %4" PRIu64 " %8u %8u %9u %9u %7.1f ms\n", u + 1,
	       t + 1, us.prompt_tokens, us.cached_tokens, us.computed_tokens,
	       us.generated_tokens, (double)us.ttft_us / 1e3);
	fflush(stdout);
	chat_count(tot, u, t, &us);
	/* the answer becomes part of the conversation */
	rc = push_tokens(cv, s->answer.v, s->answer.n);
	if (rc == 0)
		return 0;
out_rc:
	kvp_tool_perror(PROG " chat", "tokens", NULL, rc);
	return -1;
}

/* Every turn of every user, the header and the rows printed. */
static int run_chat(struct kvp_client *c, const struct kvp_server_info *info,
		    const struct chat_opts *o, struct chat_state *s, struct chat_totals *tot)
{
	uint64_t t0;

	printf("kvprefix-bench chat: %" PRIu64 " users x %" PRIu64 " turns, system prompt %"
	       PRIu64 " tokens, %" PRIu64 " user tokens a turn, answers of %" PRIu64
	       " tokens\n", o->users, o->turns, o->sys_n, o->user_n, o->max_new);
	printf("daemon: model %s, %u-token blocks\n\n", info->name, info->block_tokens);
	printf("  %4s %4s %8s %8s %9s %9s %10s\n", "user", "turn", "prompt", "cached",
	       "computed", "generated", "TTFT");
	fflush(stdout);
	memset(tot, 0, sizeof(*tot));
	tot->ttft_first = NAN;
	t0 = kvp_tool_now_ns();
	for (uint64_t t = 0; t < o->turns; t++)
		for (uint64_t u = 0; u < o->users; u++)
			if (chat_turn(c, o, s, u, t, tot) < 0)
				return -1;
	tot->elapsed_s = (double)(kvp_tool_now_ns() - t0) / 1e9;
	return 0;
}

static void print_chat(const struct chat_opts *o, const struct chat_totals *tot)
{
	printf("\n  %" PRIu64 " requests in %.2f s: %" PRIu64 " prompt tokens, %" PRIu64
	       " cached, %" PRIu64 " computed; hit rate %.3f\n", o->users * o->turns,
	       tot->elapsed_s, tot->prompt, tot->cached, tot->computed,
	       (double)tot->cached / (double)tot->prompt);
	printf("  TTFT: user 1 turn 1 (%u tokens cached) %.1f ms, the others %.1f ms on "
	       "average\n\n", tot->first_cached, tot->ttft_first / 1e3,
	       tot->n_rest ? tot->ttft_rest / tot->n_rest / 1e3 : NAN);
}

/* The JSON line; false (message printed) when out of memory. */
static bool json_chat(const struct chat_opts *o, const struct chat_totals *tot)
{
	cJSON *j = cJSON_CreateObject();

	if (!j) {
		kvp_tool_perror(PROG " chat", "tokens", NULL, KVP_ENOMEM);
		return false;
	}
	cJSON_AddNumberToObject(j, "users", (double)o->users);
	cJSON_AddNumberToObject(j, "turns", (double)o->turns);
	cJSON_AddNumberToObject(j, "requests", (double)(o->users * o->turns));
	cJSON_AddNumberToObject(j, "prompt_tokens", (double)tot->prompt);
	cJSON_AddNumberToObject(j, "cached_tokens", (double)tot->cached);
	cJSON_AddNumberToObject(j, "computed_tokens", (double)tot->computed);
	cJSON_AddNumberToObject(j, "generated_tokens", (double)tot->generated);
	cJSON_AddNumberToObject(j, "hit_rate", (double)tot->cached / (double)tot->prompt);
	cJSON_AddNumberToObject(j, "first_ttft_us", tot->ttft_first);
	cJSON_AddNumberToObject(j, "first_cached_tokens", tot->first_cached);
	if (tot->n_rest)
		cJSON_AddNumberToObject(j, "other_ttft_us_mean", tot->ttft_rest / tot->n_rest);
	cJSON_AddNumberToObject(j, "elapsed_s", tot->elapsed_s);
	return bench_json_finish("chat", j, true);
}

static void chat_state_free(struct chat_state *s, uint64_t users)
{
	for (uint64_t u = 0; s->conv && u < users; u++)
		kvp_tokvec_free(&s->conv[u]);
	kvp_tokvec_free(&s->answer);
	free(s->conv);
	free(s->ut);
	free(s->sys);
}

int bench_cmd_chat(int argc, char **argv)
{
	struct chat_opts o;
	struct chat_state s = { 0 };
	struct chat_totals tot;
	struct kvp_server_info info;
	struct kvp_client *c = NULL;
	int ret = parse_chat(argc, argv, &o);

	if (ret != BENCH_RUN)
		return ret;
	ret = KVP_EXIT_FAIL;
	s.conv = calloc(o.users, sizeof(*s.conv));
	s.sys = malloc(o.sys_n * sizeof(*s.sys));
	s.ut = malloc(o.user_n * sizeof(*s.ut));
	if (!s.conv || !s.sys || !s.ut) {
		fprintf(stderr, PROG " chat: out of memory\n");
		goto out;
	}
	bench_rand_tokens(s.sys, o.sys_n, 0xC4A7, (uint32_t)o.vocab);
	if (bench_connect_engine(PROG " chat", o.sock, &c, &info) < 0 ||
	    run_chat(c, &info, &o, &s, &tot) < 0)
		goto out;
	print_chat(&o, &tot);
	if (json_chat(&o, &tot))
		ret = KVP_EXIT_OK;
out:
	kvp_client_close(c);
	chat_state_free(&s, o.users);
	return ret;
}
