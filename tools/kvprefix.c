/*
 * kvprefix.c - the command-line client of kvprefixd (binary: kvprefix).
 *
 *   kvprefix lookup|insert [--socket PATH] (--tokens 1,2,3 | --tokens-file FILE)
 *                          [--pin] [--json]
 *                          (insert:) [--keep SECONDS [--priority N]]
 *   kvprefix generate [--socket PATH] (--tokens 1,2,3 | --tokens-file FILE)
 *                     [--max-new N] [--temperature T] [--top-k K] [--top-p P]
 *                     [--seed S] [--stop ID[,ID...]] [--json] [--logits-out FILE]
 *                     [--keep SECONDS [--priority N]]
 *   kvprefix stats [--socket PATH]
 *   kvprefix ping  [--socket PATH] [--json]
 *   kvprefix admin clear [--socket PATH] [--all | --tenant UID]
 *   kvprefix admin evict|pin|unpin [--socket PATH] [--tenant UID]
 *                                  (--tokens 1,2,3 | --tokens-file FILE)
 *   kvprefix admin config [--socket PATH] [KEY[=VALUE]]
 *   kvprefix [admin] explain [--socket PATH] [--tenant UID] (--tokens 1,2,3 | --tokens-file FILE)
 *
 * Exit status: 0 ok, 1 the daemon answered an error or I/O failed, 2 usage (including
 * bad token input). Arguments are checked before connecting, so bad input never
 * reaches the daemon.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvprefix.h"
#include "util.h"

#define PROG "kvprefix"
#define CLI_TIMEOUT_MS 60000u
#define CLI_GEN_TIMEOUT_MS 600000u   /* generate: the longest wait for each frame */
#define HUMAN_IDS_MAX 32   /* block ids listed in human output */
#define OPT_SERVER_UID 512 /* --server-uid, an option of every command */
#define OPT_KEEP 513       /* --keep, of insert and generate */
#define OPT_PRIORITY 514   /* --priority, with --keep */

static void usage_main(FILE *f)
{
	fprintf(f,
		"Usage: kvprefix COMMAND [OPTIONS]\n"
		"Talk to a running kvprefixd over its Unix socket.\n"
		"\n"
		"Commands:\n"
		"  lookup     which prefix of a token sequence is cached\n"
		"  fleet      which prefix of it each engine of a fleet has cached (a\n"
		"             fleet index: kvprefixd --index-only --kv-events-sub)\n"
		"  insert     register the full blocks of a token sequence as computed\n"
		"  generate   generate tokens after a prompt (a daemon that runs a model)\n"
		"  stats      print the daemon's statistics (JSON)\n"
		"  ping       check that the daemon answers, and show what it serves\n"
		"  admin      clear, evict or pin cached blocks; show or set daemon options\n"
		"             (root or the daemon's admin group)\n"
		"  explain    what became of each block of a prompt: why it missed\n"
		"             (= admin explain: root or the daemon's admin group)\n"
		"\n"
		"Run 'kvprefix COMMAND --help' for a command's options. Every command takes\n"
		"--socket PATH and --server-uid UID (also trust a kvprefixd that runs as UID;\n"
		"else only root, you, the kvprefix user or $KVP_SERVER_UID are trusted).\n"
		"Exit status: 0 ok, 1 daemon or I/O error, 2 usage error.\n");
}

/* --keep and --priority in the help of insert and generate. */
#define KEEP_HELP \
	"      --keep SECONDS      keep the full blocks of the tokens (generate: of the\n" \
	"                          prompt) for SECONDS, 1-604800 (a week): not evicted\n" \
	"                          while blocks nobody keeps can go\n" \
	"      --priority N        with --keep: when nothing else can go, the lowest\n" \
	"                          priority is given up first, 0-4294967295 (default 0)\n"

static void usage_tokens(FILE *f, const char *cmd)
{
	bool ins = strcmp(cmd, "insert") == 0, fleet = strcmp(cmd, "fleet") == 0;

	fprintf(f,
		"Usage: kvprefix %s [--socket PATH] (--tokens LIST | --tokens-file FILE)\n"
		"                %*s [--pin] [--json]%s\n"
		"%s\n"
		"\n"
		"  -s, --socket PATH       daemon socket (default: the library's default)\n"
		"      --server-uid UID    also trust a kvprefixd that runs as UID (else: root,\n"
		"                          you, the kvprefix user or $KVP_SERVER_UID)\n"
		"  -t, --tokens LIST       token ids, comma separated: 1,2,3\n"
		"  -f, --tokens-file FILE  token ids from FILE ('-': stdin), separated by\n"
		"                          whitespace or commas, or a JSON array\n"
		"  -p, --pin               pin the blocks under a lease (released when this\n"
		"                          command exits and its connection closes)\n"
		"%s"
		"  -j, --json              print one JSON object:\n"
		"                          %s\n"
		"  -h, --help              show this help\n",
		cmd, (int)strlen(cmd), "", ins ? " [--keep SECONDS [--priority N]]" : "",
		ins ? "Register the full blocks of the tokens as computed (only full blocks are\n"
		      "cached; the tail shorter than a block is not)."
		: fleet ? "Ask a fleet index (kvprefixd --index-only --kv-events-sub) which prefix\n"
			  "of the tokens each engine it follows has cached, longest first\n"
			  "(--pin does not apply)."
		    : "Ask which prefix of the tokens is cached, in whole blocks.",
		ins ? KEEP_HELP : "",
		ins ? "cached_tokens, prompt_tokens, new_blocks, block_ids, lease"
		: fleet ? "prompt_tokens, instances: [{instance, matched_tokens}]"
		    : "matched_tokens, prompt_tokens, blocks, block_ids, lease");
}

static void usage_simple(FILE *f, const char *cmd)
{
	if (strcmp(cmd, "stats") == 0)
		fprintf(f,
			"Usage: kvprefix stats [--socket PATH]\n"
			"Print the daemon's statistics as a JSON object (kvprefix-stat shows a\n"
			"table).\n"
			"\n"
			"  -s, --socket PATH     daemon socket (default: the library's default)\n"
			"      --server-uid UID  also trust a kvprefixd that runs as UID (else: root,\n"
			"                        you, the kvprefix user or $KVP_SERVER_UID)\n"
			"  -h, --help            show this help\n");
	else
		fprintf(f,
			"Usage: kvprefix ping [--socket PATH] [--json]\n"
			"Exchange HELLO and one PING with the daemon; print what it serves (with a\n"
			"model: its vocabulary and context, from a daemon of protocol version 3 or later)\n"
			"and the round-trip time.\n"
			"\n"
			"  -s, --socket PATH     daemon socket (default: the library's default)\n"
			"      --server-uid UID  also trust a kvprefixd that runs as UID (else: root,\n"
			"                        you, the kvprefix user or $KVP_SERVER_UID)\n"
			"  -j, --json            print one JSON object\n"
			"  -h, --help            show this help\n");
}

/* Report an option error the way every command does; returns KVP_EXIT_USAGE. */
static int bad_option(const char *cmd, char **argv, int opt)
{
	if (opt == '?') {
		if (optopt)
			fprintf(stderr, PROG " %s: unknown option '-%c'\n", cmd, optopt);
		else
			fprintf(stderr, PROG " %s: unknown option '%s'\n", cmd, argv[optind - 1]);
	} else {
		fprintf(stderr, PROG " %s: option '%s' needs a value\n", cmd, argv[optind - 1]);
	}
	fprintf(stderr, "Try '" PROG " %s --help'.\n", cmd);
	return KVP_EXIT_USAGE;
}

static cJSON *ids_array(const uint32_t *ids, uint32_t n)
{
	cJSON *a = cJSON_CreateArray();

	for (uint32_t i = 0; a && i < n; i++) {
		cJSON *v = cJSON_CreateNumber(ids[i]);

		if (!v || !cJSON_AddItemToArray(a, v)) {
			cJSON_Delete(v);
			cJSON_Delete(a);
			return NULL;
		}
	}
	return a;
}

/* Print obj on one line; false when out of memory. Deletes obj. */
static bool print_json(cJSON *obj)
{
	char *s = obj ? cJSON_PrintUnformatted(obj) : NULL;

	cJSON_Delete(obj);
	if (!s)
		return false;
	printf("%s\n", s);
	free(s);
	return true;
}

static bool add_u64(cJSON *o, const char *key, uint64_t v)
{
	char num[24];

	/* A lease is an opaque u64: raw text keeps every bit a double would lose. */
	snprintf(num, sizeof(num), "%" PRIu64, v);
	return cJSON_AddRawToObject(o, key, num) != NULL;
}

static int print_match(bool ins, const struct kvp_match *m, bool json)
{
	if (json) {
		cJSON *o = cJSON_CreateObject();
		cJSON *ids = ids_array(m->block_ids, m->n_blocks);
		bool ok = o && ids;

		ok = ok && cJSON_AddNumberToObject(o, ins ? "cached_tokens" : "matched_tokens",
						   m->matched_tokens);
		ok = ok && cJSON_AddNumberToObject(o, "prompt_tokens", m->prompt_tokens);
		if (ins)
			ok = ok && cJSON_AddNumberToObject(o, "new_blocks", m->new_blocks);
		else
			ok = ok && cJSON_AddNumberToObject(o, "blocks", m->n_blocks);
		if (ok) {
			cJSON_AddItemToObject(o, "block_ids", ids);
			ids = NULL;
		}
		ok = ok && add_u64(o, "lease", m->lease);
		cJSON_Delete(ids);
		if (!ok) {
			cJSON_Delete(o);
			fprintf(stderr, PROG ": out of memory\n");
			return KVP_EXIT_FAIL;
		}
		return print_json(o) ? KVP_EXIT_OK : KVP_EXIT_FAIL;
	}
	if (ins)
		printf("cached %u of %u tokens (%u block%s, %u new)\n", m->matched_tokens,
		       m->prompt_tokens, m->n_blocks, m->n_blocks == 1 ? "" : "s",
		       m->new_blocks);
	else
		printf("matched %u of %u tokens (%u block%s)\n", m->matched_tokens,
		       m->prompt_tokens, m->n_blocks, m->n_blocks == 1 ? "" : "s");
	if (m->n_blocks) {
		printf("block ids:");
		for (uint32_t i = 0; i < m->n_blocks && i < HUMAN_IDS_MAX; i++)
			printf(" %u", m->block_ids[i]);
		if (m->n_blocks > HUMAN_IDS_MAX)
			printf(" ... (%u more)", m->n_blocks - HUMAN_IDS_MAX);
		printf("\n");
	}
	if (m->lease)
		printf("lease %" PRIu64 " (released when this command exits)\n", m->lease);
	return KVP_EXIT_OK;
}

/* s as a JSON string: quotes, backslashes and control bytes escaped. */
static void print_json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '"' || ch == '\\')
			printf("\\%c", ch);
		else if (ch < 0x20)
			printf("\\u%04x", ch);
		else
			putchar(ch);
	}
	putchar('"');
}

/* kvprefix fleet: each engine's cached prefix, longest first, one per line (or JSON). */
static int run_fleet(struct kvp_client *c, const struct kvp_tokvec *toks, bool json)
{
	struct kvp_fleet_match m[64];
	size_t n;
	int rc = kvp_client_fleet(c, toks->v, toks->n, m, 64, &n);

	if (rc < 0) {
		kvp_tool_perror(PROG, "fleet", c, rc);
		return KVP_EXIT_FAIL;
	}
	if (json) {
		printf("{\"prompt_tokens\":%zu,\"instances\":[", toks->n);
		for (size_t i = 0; i < n; i++) {
			printf("%s{\"instance\":", i ? "," : "");
			print_json_str(m[i].name);
			printf(",\"matched_tokens\":%u}", m[i].matched_tokens);
		}
		printf("]}\n");
		return KVP_EXIT_OK;
	}
	if (n == 0)
		printf("no engine is followed yet\n");
	for (size_t i = 0; i < n; i++)
		printf("%-40s %u of %zu tokens\n", m[i].name, m[i].matched_tokens, toks->n);
	return KVP_EXIT_OK;
}

/* What --keep and --priority asked for. */
struct keep_opts {
	uint32_t keep_s, priority;
	bool priority_set;
};

/* --keep or --priority into k; false after printing why it is wrong. */
static bool keep_option(const char *cmd, int opt, struct keep_opts *k)
{
	uint64_t v;

	if (opt == OPT_KEEP) {
		if (!kvp_tool_parse_u64(optarg, 1, KVP_KEEP_MAX_S, &v)) {
			fprintf(stderr, PROG " %s: --keep '%s': want seconds from 1 to %u (a "
				"week)\n", cmd, optarg, KVP_KEEP_MAX_S);
			return false;
		}
		k->keep_s = (uint32_t)v;
		return true;
	}
	if (!kvp_tool_parse_u64(optarg, 0, UINT32_MAX, &v)) {
		fprintf(stderr, PROG " %s: --priority '%s': want an integer from 0 to %u\n", cmd,
			optarg, UINT32_MAX);
		return false;
	}
	k->priority = (uint32_t)v;
	k->priority_set = true;
	return true;
}

/* After the options: --priority needs --keep; false after printing so. */
static bool keep_options_done(const char *cmd, const struct keep_opts *k)
{
	if (k->priority_set && !k->keep_s) {
		fprintf(stderr, PROG " %s: --priority needs --keep SECONDS\n", cmd);
		return false;
	}
	return true;
}

static int cmd_tokens(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "server-uid", required_argument, NULL, OPT_SERVER_UID },
		{ "tokens", required_argument, NULL, 't' },
		{ "tokens-file", required_argument, NULL, 'f' },
		{ "pin", no_argument, NULL, 'p' },
		{ "keep", required_argument, NULL, OPT_KEEP },
		{ "priority", required_argument, NULL, OPT_PRIORITY },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *cmd = argv[0], *sock = NULL, *list = NULL, *file = NULL;
	bool ins = strcmp(cmd, "insert") == 0, json = false;
	struct keep_opts keep = { 0 };
	struct kvp_tokvec toks = { 0 };
	struct kvp_client *c = NULL;
	struct kvp_match m;
	uint32_t flags = 0;
	char err[512];
	int opt, rc, ret = KVP_EXIT_USAGE;

	optind = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":s:t:f:pjh", opts, NULL)) != -1) {
		switch (opt) {
		case 's': sock = optarg; break;
		case 't': list = optarg; break;
		case 'f': file = optarg; break;
		case 'p': flags |= KVP_LOOKUP_PIN; break;
		case 'j': json = true; break;
		case OPT_KEEP: case OPT_PRIORITY:
			if (!ins) {
				fprintf(stderr, PROG " %s: --%s is insert's\n", cmd,
					opt == OPT_KEEP ? "keep" : "priority");
				goto out_usage;
			}
			if (!keep_option(cmd, opt, &keep))
				goto out_usage;
			break;
		case OPT_SERVER_UID:
			if (!kvp_tool_server_uid_option(PROG, optarg))
				goto out_usage;
			break;
		case 'h': usage_tokens(stdout, cmd); return KVP_EXIT_OK;
		default: return bad_option(cmd, argv, opt);
		}
	}
	if (optind < argc) {
		fprintf(stderr, PROG " %s: unexpected argument '%s'\n", cmd, argv[optind]);
		goto out_usage;
	}
	if (!keep_options_done(cmd, &keep))
		goto out_usage;
	if (!list == !file) {
		fprintf(stderr, PROG " %s: give exactly one of --tokens LIST or "
			"--tokens-file FILE\n", cmd);
		goto out_usage;
	}
	rc = list ? kvp_tool_parse_tokens(list, &toks, err, sizeof(err))
		  : kvp_tool_read_tokens_file(file, &toks, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, PROG " %s: %s\n", cmd, err);
		/* A file that cannot be read is an I/O error; bad content is usage. */
		ret = rc == KVP_EIO || rc == KVP_ENOMEM ? KVP_EXIT_FAIL : KVP_EXIT_USAGE;
		goto out_free;
	}
	if (kvp_tool_connect(PROG, sock, &c) < 0) {
		ret = KVP_EXIT_FAIL;
		goto out_free;
	}
	kvp_client_set_timeout_ms(c, CLI_TIMEOUT_MS);
	if (strcmp(cmd, "fleet") == 0 && flags) {
		fprintf(stderr, PROG " fleet: --pin does not apply\n");
		ret = KVP_EXIT_USAGE;
		goto out_close;
	}
	if (strcmp(cmd, "fleet") == 0) {
		ret = run_fleet(c, &toks, json);
		goto out_close;
	}
	if (keep.keep_s)
		rc = kvp_client_insert_keep(c, toks.v, toks.n, flags, keep.keep_s, keep.priority,
					    &m);
	else
		rc = ins ? kvp_client_insert(c, toks.v, toks.n, flags, &m)
			 : kvp_client_lookup(c, toks.v, toks.n, flags, &m);
	if (rc < 0) {
		kvp_tool_perror(PROG, cmd, c, rc);
		ret = KVP_EXIT_FAIL;
		goto out_close;
	}
	ret = print_match(ins, &m, json);
out_close:
	kvp_client_close(c);
out_free:
	kvp_tokvec_free(&toks);
	return ret;
out_usage:
	fprintf(stderr, "Try '" PROG " %s --help'.\n", cmd);
	return KVP_EXIT_USAGE;
}

/* ---- generate ---------------------------------------------------------------------- */

enum {
	OPT_MAX_NEW = 256,
	OPT_TEMPERATURE,
	OPT_TOP_K,
	OPT_TOP_P,
	OPT_SEED,
	OPT_STOP,
	OPT_LOGITS_OUT,
};

static void usage_generate(FILE *f)
{
	fprintf(f,
		"Usage: kvprefix generate [--socket PATH] (--tokens LIST | --tokens-file FILE)\n"
		"                         [--max-new N] [--temperature T] [--top-k K]\n"
		"                         [--top-p P] [--seed S] [--stop ID[,ID...]]\n"
		"                         [--json] [--logits-out FILE]\n"
		"                         [--keep SECONDS [--priority N]]\n"
		"Generate tokens after a prompt of token ids (the daemon must run a model, not\n"
		"--index-only). The cached prefix of the prompt is reused; the rest is computed\n"
		"and cached. Without --json the generated ids are printed as they arrive,\n"
		"space separated on one line, then a line of usage.\n"
		"\n"
		"  -s, --socket PATH       daemon socket (default: the library's default)\n"
		"      --server-uid UID    also trust a kvprefixd that runs as UID (else: root,\n"
		"                          you, the kvprefix user or $KVP_SERVER_UID)\n"
		"  -t, --tokens LIST       prompt token ids, comma separated: 1,2,3\n"
		"  -f, --tokens-file FILE  prompt token ids from FILE ('-': stdin), separated by\n"
		"                          whitespace or commas, or a JSON array\n"
		"      --max-new N         generate at most N tokens, 0-%u (default 16; 0:\n"
		"                          only compute the prompt)\n"
		"      --temperature T     sampling temperature, >= 0 (default 0: greedy)\n"
		"      --top-k K           sample among the K most likely tokens (default 0: off)\n"
		"      --top-p P           nucleus sampling mass, in (0, 1] (default 1: off)\n"
		"      --seed S            sampler seed, 0-18446744073709551615 (default 0)\n"
		"      --stop LIST         stop token ids, comma separated; may be repeated, at\n"
		"                          most %u in all. Generation ends after emitting one\n"
		"                          (it is printed)\n"
		"  -j, --json              print one JSON object: tokens, prompt_tokens,\n"
		"                          cached_tokens, computed_tokens, generated_tokens,\n"
		"                          finish (\"length\", \"stop\" or \"context\"), ttft_us,\n"
		"                          prefill_us, decode_us\n"
		"      --logits-out FILE   ask for the logits of the last prompt position and\n"
		"                          write them to FILE as little-endian float32\n"
		KEEP_HELP
		"  -h, --help              show this help\n"
		"\n"
		"Each frame from the daemon is awaited for at most %u s.\n",
		KVP_GEN_MAX_NEW, KVP_STOP_MAX, CLI_GEN_TIMEOUT_MS / 1000);
}

/* A plain decimal number ("0.7", "1", ".5", "2e-1") that is finite as a float: no sign,
 * no hex, no inf or nan. */
static bool parse_float(const char *s, float *out)
{
	char *end = NULL;
	double v;

	if (!s || !((*s >= '0' && *s <= '9') || *s == '.') || strpbrk(s, "xX"))
		return false;
	errno = 0;
	v = strtod(s, &end);
	if (end == s || *end || (errno && errno != ERANGE) || !isfinite(v) ||
	    !isfinite((float)v))
		return false;
	*out = (float)v;
	return true;
}

static const char *finish_name(uint32_t finish)
{
	switch (finish) {
	case KVP_FINISH_LENGTH: return "length";
	case KVP_FINISH_STOP: return "stop";
	case KVP_FINISH_CONTEXT: return "context";
	}
	return "unknown";
}

/* What the token callback does: print as the tokens arrive, or keep them for --json. */
struct gen_sink {
	bool json;
	struct kvp_tokvec toks;   /* --json: every token, in order */
	int err;                  /* --json: first failure keeping them */
	uint64_t printed;
};

static void on_tokens(void *arg, const uint32_t *t, uint32_t n)
{
	struct gen_sink *g = arg;

	if (g->json) {
		for (uint32_t i = 0; i < n && g->err == 0; i++)
			g->err = kvp_tokvec_push(&g->toks, t[i]);
		return;
	}
	for (uint32_t i = 0; i < n; i++)
		printf(g->printed++ ? " %u" : "%u", t[i]);
	fflush(stdout);
}

static int print_generate_json(const struct gen_sink *g, const struct kvp_usage *u)
{
	cJSON *o = cJSON_CreateObject();
	cJSON *toks = ids_array(g->toks.v, (uint32_t)g->toks.n);
	bool ok = o && toks;

	if (ok) {
		cJSON_AddItemToObject(o, "tokens", toks);
		toks = NULL;
	}
	ok = ok && cJSON_AddNumberToObject(o, "prompt_tokens", u->prompt_tokens);
	ok = ok && cJSON_AddNumberToObject(o, "cached_tokens", u->cached_tokens);
	ok = ok && cJSON_AddNumberToObject(o, "computed_tokens", u->computed_tokens);
	ok = ok && cJSON_AddNumberToObject(o, "generated_tokens", u->generated_tokens);
	ok = ok && cJSON_AddStringToObject(o, "finish", finish_name(u->finish));
	ok = ok && add_u64(o, "ttft_us", u->ttft_us);
	ok = ok && add_u64(o, "prefill_us", u->prefill_us);
	ok = ok && add_u64(o, "decode_us", u->decode_us);
	cJSON_Delete(toks);
	if (!ok) {
		cJSON_Delete(o);
		fprintf(stderr, PROG " generate: out of memory\n");
		return KVP_EXIT_FAIL;
	}
	return print_json(o) ? KVP_EXIT_OK : KVP_EXIT_FAIL;
}

/* Write n floats to f as little-endian float32. */
static bool write_f32le(FILE *f, const float *v, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		uint32_t bits;
		uint8_t b[4];

		memcpy(&bits, &v[i], sizeof(bits));
		b[0] = (uint8_t)bits;
		b[1] = (uint8_t)(bits >> 8);
		b[2] = (uint8_t)(bits >> 16);
		b[3] = (uint8_t)(bits >> 24);
		if (fwrite(b, 1, 4, f) != 4)
			return false;
	}
	return true;
}

/* What kvprefix generate was asked for. */
struct gen_opts {
	const char *sock, *list, *file, *logits_path;
	struct kvp_generate_params gp;
	struct kvp_tokvec stop;
	struct keep_opts keep;
	bool json;
};

/* One option of generate's (not --socket, --tokens, --tokens-file, --json, --help) into
 * o; false after printing why it is wrong. */
static bool generate_option(int opt, struct gen_opts *o)
{
	char err[512];
	uint64_t v;
	int rc;

	switch (opt) {
	case OPT_MAX_NEW:
		if (!kvp_tool_parse_u64(optarg, 0, KVP_GEN_MAX_NEW, &v)) {
			fprintf(stderr, PROG " generate: --max-new '%s': want an integer "
				"from 0 to %u\n", optarg, KVP_GEN_MAX_NEW);
			return false;
		}
		o->gp.max_new = (uint32_t)v;
		return true;
	case OPT_TEMPERATURE:
		if (!parse_float(optarg, &o->gp.temperature)) {
			fprintf(stderr, PROG " generate: --temperature '%s': want a finite "
				"number >= 0, such as 0.7\n", optarg);
			return false;
		}
		return true;
	case OPT_TOP_K:
		if (!kvp_tool_parse_u64(optarg, 0, UINT32_MAX, &v)) {
			fprintf(stderr, PROG " generate: --top-k '%s': want an integer from "
				"0 (off) to %u\n", optarg, UINT32_MAX);
			return false;
		}
		o->gp.top_k = (uint32_t)v;
		return true;
	case OPT_TOP_P:
		if (!parse_float(optarg, &o->gp.top_p) || !(o->gp.top_p > 0.0f) ||
		    !(o->gp.top_p <= 1.0f)) {
			fprintf(stderr, PROG " generate: --top-p '%s': want a number above 0 "
				"and at most 1 (1: off)\n", optarg);
			return false;
		}
		return true;
	case OPT_SEED:
		if (!kvp_tool_parse_u64(optarg, 0, UINT64_MAX, &o->gp.seed)) {
			fprintf(stderr, PROG " generate: --seed '%s': want an integer from 0 "
				"to %" PRIu64 "\n", optarg, UINT64_MAX);
			return false;
		}
		return true;
	case OPT_STOP:
		rc = kvp_tool_parse_tokens(optarg, &o->stop, err, sizeof(err));
		if (rc < 0) {
			/* The parser names the option --tokens; this is --stop. */
			const char *why = rc != KVP_EINVAL ? kvp_strerror(rc)
				: strncmp(err, "--tokens: ", 10) == 0 ? err + 10 : err;

			fprintf(stderr, PROG " generate: --stop: %s\n", why);
			return false;
		}
		if (o->stop.n > KVP_STOP_MAX) {
			fprintf(stderr, PROG " generate: --stop: %zu stop ids, at most %u "
				"are allowed\n", o->stop.n, KVP_STOP_MAX);
			return false;
		}
		return true;
	case OPT_LOGITS_OUT:
		if (!optarg[0]) {
			fprintf(stderr, PROG " generate: --logits-out needs a file name\n");
			return false;
		}
		o->logits_path = optarg;
		return true;
	}
	return false;
}

/* Parse generate's command line into o: -1 to go on, else the exit status (--help, a
 * usage error: already printed). */
static int generate_args(int argc, char **argv, struct gen_opts *o)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "server-uid", required_argument, NULL, OPT_SERVER_UID },
		{ "tokens", required_argument, NULL, 't' },
		{ "tokens-file", required_argument, NULL, 'f' },
		{ "max-new", required_argument, NULL, OPT_MAX_NEW },
		{ "temperature", required_argument, NULL, OPT_TEMPERATURE },
		{ "top-k", required_argument, NULL, OPT_TOP_K },
		{ "top-p", required_argument, NULL, OPT_TOP_P },
		{ "seed", required_argument, NULL, OPT_SEED },
		{ "stop", required_argument, NULL, OPT_STOP },
		{ "json", no_argument, NULL, 'j' },
		{ "logits-out", required_argument, NULL, OPT_LOGITS_OUT },
		{ "keep", required_argument, NULL, OPT_KEEP },
		{ "priority", required_argument, NULL, OPT_PRIORITY },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int opt;

	kvp_generate_params_init(&o->gp);
	optind = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":s:t:f:jh", opts, NULL)) != -1) {
		switch (opt) {
		case 's': o->sock = optarg; break;
		case 't': o->list = optarg; break;
		case 'f': o->file = optarg; break;
		case 'j': o->json = true; break;
		case OPT_SERVER_UID:
			if (!kvp_tool_server_uid_option(PROG, optarg))
				goto out_usage;
			break;
		case 'h': usage_generate(stdout); return KVP_EXIT_OK;
		case OPT_MAX_NEW: case OPT_TEMPERATURE: case OPT_TOP_K: case OPT_TOP_P:
		case OPT_SEED: case OPT_STOP: case OPT_LOGITS_OUT:
			if (!generate_option(opt, o))
				goto out_usage;
			break;
		case OPT_KEEP: case OPT_PRIORITY:
			if (!keep_option("generate", opt, &o->keep))
				goto out_usage;
			break;
		default:
			return bad_option("generate", argv, opt);
		}
	}
	if (optind < argc) {
		fprintf(stderr, PROG " generate: unexpected argument '%s'\n", argv[optind]);
		goto out_usage;
	}
	if (!o->list == !o->file) {
		fprintf(stderr, PROG " generate: give exactly one of --tokens LIST or "
			"--tokens-file FILE\n");
		goto out_usage;
	}
	if (!keep_options_done("generate", &o->keep))
		goto out_usage;
	o->gp.stop = o->stop.v;
	o->gp.n_stop = (uint32_t)o->stop.n;
	o->gp.keep_s = o->keep.keep_s;
	o->gp.priority = o->keep.priority;
	return -1;

out_usage:
	fprintf(stderr, "Try '" PROG " generate --help'.\n");
	return KVP_EXIT_USAGE;
}

/* Write the logits of u to lf (and close it); false after printing why not. */
static bool generate_write_logits(FILE *lf, const char *path, const struct kvp_usage *u)
{
	int werr;

	if (u->n_logits == 0) {
		fprintf(stderr, PROG " generate: the daemon returned no logits\n");
		fclose(lf);
		return false;
	}
	werr = !write_f32le(lf, u->logits, u->n_logits) ? errno : 0;
	if (fclose(lf) != 0 && !werr)
		werr = errno ? errno : EIO;
	if (werr) {
		fprintf(stderr, PROG " generate: writing %s: %s\n", path, strerror(werr));
		return false;
	}
	return true;
}

/* Run the generation on the daemon and print it; the exit status. lf: the open logits
 * file, or NULL; closed here. */
static int generate_run(struct gen_opts *o, const struct kvp_tokvec *toks, FILE *lf)
{
	struct gen_sink sink = { .json = o->json };
	struct kvp_client *c = NULL;
	struct kvp_usage u;
	int rc, ret = KVP_EXIT_FAIL;

	if (kvp_tool_connect(PROG, o->sock, &c) < 0)
		goto out_lf;
	kvp_client_set_timeout_ms(c, CLI_GEN_TIMEOUT_MS);
	rc = kvp_client_generate(c, toks->v, toks->n, &o->gp, on_tokens, &sink, &u);
	if (!sink.json && (rc == 0 || sink.printed))
		printf("\n");
	if (rc < 0) {
		fflush(stdout);
		kvp_tool_perror(PROG, "generate", c, rc);
		goto out_close;
	}
	if (sink.err) {
		fprintf(stderr, PROG " generate: keeping the tokens: %s\n", kvp_strerror(sink.err));
		goto out_close;
	}
	if (lf) {
		bool ok = generate_write_logits(lf, o->logits_path, &u);

		lf = NULL;
		if (!ok)
			goto out_close;
	}
	if (sink.json) {
		ret = print_generate_json(&sink, &u);
	} else {
		printf("prompt %u tokens (%u cached, %u computed), generated %u (finish: %s); "
		       "ttft %.3f ms, prefill %.3f ms, decode %.3f ms\n", u.prompt_tokens,
		       u.cached_tokens, u.computed_tokens, u.generated_tokens,
		       finish_name(u.finish), (double)u.ttft_us / 1e3,
		       (double)u.prefill_us / 1e3, (double)u.decode_us / 1e3);
		ret = KVP_EXIT_OK;
	}
out_close:
	kvp_client_close(c);
out_lf:
	if (lf)
		fclose(lf);
	kvp_tokvec_free(&sink.toks);
	return ret;
}

static int cmd_generate(int argc, char **argv)
{
	struct gen_opts o = { 0 };
	struct kvp_tokvec toks = { 0 };
	FILE *lf = NULL;
	char err[512];
	int rc, ret = generate_args(argc, argv, &o);

	if (ret >= 0)
		goto out_free;
	rc = o.list ? kvp_tool_parse_tokens(o.list, &toks, err, sizeof(err))
		    : kvp_tool_read_tokens_file(o.file, &toks, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, PROG " generate: %s\n", err);
		ret = rc == KVP_EIO || rc == KVP_ENOMEM ? KVP_EXIT_FAIL : KVP_EXIT_USAGE;
		goto out_free;
	}
	if (o.logits_path) {
		o.gp.flags |= KVP_GEN_LOGITS;
		/* Opened before the work starts, so that a bad path costs no generation. */
		lf = fopen(o.logits_path, "wb");
		if (!lf) {
			fprintf(stderr, PROG " generate: cannot write %s: %s\n", o.logits_path,
				strerror(errno));
			ret = KVP_EXIT_FAIL;
			goto out_free;
		}
	}
	ret = generate_run(&o, &toks, lf);
	if (o.logits_path && ret != KVP_EXIT_OK)
		remove(o.logits_path);   /* no empty or partial logits file behind a failure */
out_free:
	kvp_tokvec_free(&o.stop);
	kvp_tokvec_free(&toks);
	return ret;
}

static int cmd_stats(const char *sock)
{
	struct kvp_client *c = NULL;
	char *text = NULL, *out = NULL;
	cJSON *o = NULL;
	int rc, ret = KVP_EXIT_FAIL;

	if (kvp_tool_connect(PROG, sock, &c) < 0)
		return KVP_EXIT_FAIL;
	kvp_client_set_timeout_ms(c, CLI_TIMEOUT_MS);
	rc = kvp_client_stats(c, &text);
	if (rc < 0) {
		kvp_tool_perror(PROG, "stats", c, rc);
		goto out_close;
	}
	o = cJSON_Parse(text);
	if (!cJSON_IsObject(o)) {
		fprintf(stderr, PROG " stats: the daemon sent something that is not a JSON "
			"object\n");
		goto out_free;
	}
	out = cJSON_Print(o);
	if (!out) {
		fprintf(stderr, PROG " stats: out of memory\n");
		goto out_free;
	}
	printf("%s\n", out);
	ret = KVP_EXIT_OK;
out_free:
	free(out);
	cJSON_Delete(o);
	free(text);
out_close:
	kvp_client_close(c);
	return ret;
}

static int cmd_ping(const char *sock, bool json)
{
	static const char payload[64] = "kvprefix ping";
	struct kvp_server_info info;
	struct kvp_client *c = NULL;
	char def[256];
	uint64_t t0, t1;
	int rc, ret = KVP_EXIT_FAIL;

	if (kvp_tool_connect(PROG, sock, &c) < 0)
		return KVP_EXIT_FAIL;
	/* shown, not used: the library picks the default itself, checking its directory */
	if (!sock && kvp_client_default_socket(def, sizeof(def)) == KVP_OK)
		sock = def;
	kvp_client_set_timeout_ms(c, CLI_TIMEOUT_MS);
	memset(&info, 0, sizeof(info));
	rc = kvp_client_hello(c, NULL, NULL, &info);
	if (rc < 0) {
		kvp_tool_perror(PROG, "hello", c, rc);
		goto out_close;
	}
	t0 = kvp_tool_now_ns();
	rc = kvp_client_ping(c, payload, sizeof(payload));
	t1 = kvp_tool_now_ns();
	if (rc < 0) {
		kvp_tool_perror(PROG, "ping", c, rc);
		goto out_close;
	}
	info.name[sizeof(info.name) - 1] = '\0';
	if (json) {
		cJSON *o = cJSON_CreateObject();
		bool ok = o != NULL;

		ok = ok && cJSON_AddStringToObject(o, "socket", sock ? sock : "");
		ok = ok && cJSON_AddNumberToObject(o, "version", info.version);
		ok = ok && cJSON_AddStringToObject(o, "mode",
						   info.index_only ? "index-only" : "engine");
		ok = ok && cJSON_AddStringToObject(o, "name", info.name);
		ok = ok && cJSON_AddNumberToObject(o, "block_tokens", info.block_tokens);
		ok = ok && cJSON_AddNumberToObject(o, "capacity_blocks", info.capacity_blocks);
		ok = ok && cJSON_AddNumberToObject(o, "max_tokens", info.max_tokens);
		ok = ok && cJSON_AddNumberToObject(o, "tenant", info.tenant);
		ok = ok && cJSON_AddNumberToObject(o, "vocab_size", info.vocab_size);
		ok = ok && cJSON_AddNumberToObject(o, "ctx_tokens", info.ctx_tokens);
		ok = ok && cJSON_AddNumberToObject(o, "rtt_us", (double)(t1 - t0) / 1e3);
		if (!ok) {
			cJSON_Delete(o);
			fprintf(stderr, PROG " ping: out of memory\n");
			goto out_close;
		}
		if (!print_json(o))
			goto out_close;
	} else {
		printf("kvprefixd at %s: protocol %u, %s, name '%s'\n", sock ? sock : "?",
		       info.version, info.index_only ? "index-only" : "engine", info.name);
		printf("block %u tokens, capacity %u blocks, at most %u tokens a request, "
		       "tenant %u\n", info.block_tokens, info.capacity_blocks, info.max_tokens,
		       info.tenant);
		if (info.vocab_size)
			printf("model: vocabulary %u tokens, context %u tokens\n", info.vocab_size,
			       info.ctx_tokens);
		printf("ping round trip %.1f us\n", (double)(t1 - t0) / 1e3);
	}
	ret = KVP_EXIT_OK;
out_close:
	kvp_client_close(c);
	return ret;
}

static int cmd_simple(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "server-uid", required_argument, NULL, OPT_SERVER_UID },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *cmd = argv[0], *sock = NULL;
	bool ping = strcmp(cmd, "ping") == 0, json = false;
	int opt;

	optind = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":s:jh", opts, NULL)) != -1) {
		switch (opt) {
		case 's': sock = optarg; break;
		case 'j': json = true; break;   /* stats always prints JSON */
		case OPT_SERVER_UID:
			if (!kvp_tool_server_uid_option(PROG, optarg)) {
				fprintf(stderr, "Try '" PROG " %s --help'.\n", cmd);
				return KVP_EXIT_USAGE;
			}
			break;
		case 'h': usage_simple(stdout, cmd); return KVP_EXIT_OK;
		default: return bad_option(cmd, argv, opt);
		}
	}
	if (optind < argc) {
		fprintf(stderr, PROG " %s: unexpected argument '%s'\n"
			"Try '" PROG " %s --help'.\n", cmd, argv[optind], cmd);
		return KVP_EXIT_USAGE;
	}
	return ping ? cmd_ping(sock, json) : cmd_stats(sock);
}

/* ---- admin ----------------------------------------------------------------------------- */

struct admin_sub {
	const char *name;
	uint32_t op;
	const char *done;   /* "evicted", "pinned", ...; NULL: print the daemon's text */
	bool tokens;        /* takes a token prefix */
};

static const struct admin_sub admin_subs[] = {
	{ "clear", KVP_ADMIN_CLEAR, "evicted", false },
	{ "evict", KVP_ADMIN_EVICT, "evicted", true },
	{ "pin", KVP_ADMIN_PIN, "pinned", true },
	{ "unpin", KVP_ADMIN_UNPIN, "unpinned", true },
	{ "config", KVP_ADMIN_CONFIG, NULL, false },
	{ "explain", KVP_ADMIN_EXPLAIN, NULL, true },
};

static void usage_admin(FILE *f)
{
	fprintf(f,
		"Usage: kvprefix admin clear  [--socket PATH] [--all | --tenant UID]\n"
		"       kvprefix admin evict  [--socket PATH] [--tenant UID]\n"
		"                             (--tokens LIST | --tokens-file FILE)\n"
		"       kvprefix admin pin    (the same options as evict)\n"
		"       kvprefix admin unpin  (the same options as evict)\n"
		"       kvprefix admin config [--socket PATH] [KEY[=VALUE]]\n"
		"       kvprefix admin explain (the same options as evict; also 'kvprefix explain')\n"
		"Administrative requests (protocol version 2). The daemon accepts them only from\n"
		"root and from the members of its admin-group.\n"
		"\n"
		"  clear    evict every cached block that nothing pins, in this user's namespace\n"
		"           (--tenant: UID's; --all: every namespace)\n"
		"  evict    evict the cached blocks of a token prefix and every block cached\n"
		"           below them, but those still pinned or shared with another prompt\n"
		"  pin      pin the cached blocks of a token prefix until 'admin unpin' with the\n"
		"           same tokens, or until the daemon stops (it outlives this command)\n"
		"  unpin    undo one 'admin pin' of the same tokens\n"
		"  config   no argument: list the daemon's options; KEY: show one;\n"
		"           KEY=VALUE: set an option that can change while the daemon runs\n"
		"           (several words are joined with spaces: 'KEY = VALUE' works too)\n"
		"  explain  what became of each block of a prompt: cached, new, evicted (to\n"
		"           make room, by the tenant's quota, by an administrator), the same\n"
		"           tokens cached in another namespace, or a partial last block; one\n"
		"           line per run of blocks (docs/eviction.md). Changes nothing.\n"
		"\n"
		"  -s, --socket PATH       daemon socket (default: the library's default)\n"
		"      --server-uid UID    also trust a kvprefixd that runs as UID (else: root,\n"
		"                          you, the kvprefix user or $KVP_SERVER_UID)\n"
		"  -T, --tenant UID        act on the namespace of tenant UID (a uid, 0-%u),\n"
		"                          with no adapter, instead of this user's\n"
		"  -a, --all               clear: every namespace\n"
		"  -t, --tokens LIST       token ids, comma separated: 1,2,3\n"
		"  -f, --tokens-file FILE  token ids from FILE ('-': stdin), separated by\n"
		"                          whitespace or commas, or a JSON array\n"
		"  -h, --help              show this help\n",
		UINT32_MAX);
}

/* config: the words after the options, joined with single spaces, checked as the
 * daemon's decoder would check them. NULL after printing why. */
static char *admin_config_text(int argc, char **argv)
{
	size_t len = 0;
	char *text, *p;

	for (int i = 0; i < argc; i++)
		len += strlen(argv[i]) + 1;
	text = malloc(len + 1);
	if (!text) {
		fprintf(stderr, PROG " admin config: out of memory\n");
		return NULL;
	}
	p = text;
	*p = '\0';
	for (int i = 0; i < argc; i++)
		p += sprintf(p, "%s%s", i ? " " : "", argv[i]);
	if (strlen(text) > KVP_ADMIN_TEXT_MAX) {
		fprintf(stderr, PROG " admin config: the argument is %zu bytes, at most %u are "
			"allowed\n", strlen(text), KVP_ADMIN_TEXT_MAX);
		free(text);
		return NULL;
	}
	for (p = text; *p; p++) {
		if ((unsigned char)*p < 0x20) {
			fprintf(stderr, PROG " admin config: the argument contains a control "
				"character (0x%02x)\n", (unsigned char)*p);
			free(text);
			return NULL;
		}
	}
	return text;
}

/* Report a failed ADMIN; the two statuses a user most needs explained get a sentence. */
static void admin_perror(const char *what, const struct kvp_client *c, int rc)
{
	const char *msg = kvp_client_error(c);

	if (rc == KVP_EPERM)
		fprintf(stderr, PROG " %s: not allowed: administrative requests need root or the "
			"daemon's admin group%s%s\n", what, msg[0] ? ": " : "", msg);
	else if (rc == KVP_EVERSION)
		fprintf(stderr, PROG " %s: the daemon speaks only protocol version 1, which has "
			"no administrative requests%s%s\n", what, msg[0] ? ": " : "", msg);
	else
		kvp_tool_perror(PROG, what, c, rc);
}

static int cmd_admin(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "server-uid", required_argument, NULL, OPT_SERVER_UID },
		{ "tenant", required_argument, NULL, 'T' },
		{ "all", no_argument, NULL, 'a' },
		{ "tokens", required_argument, NULL, 't' },
		{ "tokens-file", required_argument, NULL, 'f' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const struct admin_sub *sub = NULL;
	const char *sock = NULL, *list = NULL, *file = NULL;
	struct kvp_tokvec toks = { 0 };
	struct kvp_server_info info;
	struct kvp_client *c = NULL;
	uint32_t flags = 0, tenant = 0, blocks = 0;
	char what[32], err[512], *text = NULL, *reply = NULL;
	bool takes_tokens;
	uint64_t v;
	int opt, rc, ret = KVP_EXIT_USAGE;

	if (argc < 2) {
		fprintf(stderr, PROG " admin: which request? clear, evict, pin, unpin, config or "
			"explain\n"
			"Try '" PROG " admin --help'.\n");
		return KVP_EXIT_USAGE;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		usage_admin(stdout);
		return KVP_EXIT_OK;
	}
	for (size_t i = 0; i < sizeof(admin_subs) / sizeof(admin_subs[0]); i++)
		if (strcmp(argv[1], admin_subs[i].name) == 0)
			sub = &admin_subs[i];
	if (!sub) {
		fprintf(stderr, PROG " admin: unknown request '%s' (clear, evict, pin, unpin, "
			"config or explain)\nTry '" PROG " admin --help'.\n", argv[1]);
		return KVP_EXIT_USAGE;
	}
	snprintf(what, sizeof(what), "admin %s", sub->name);
	takes_tokens = sub->tokens;

	argc--;
	argv++;
	optind = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":s:T:at:f:h", opts, NULL)) != -1) {
		switch (opt) {
		case 's': sock = optarg; break;
		case 'T':
			if (!kvp_tool_parse_u64(optarg, 0, UINT32_MAX, &v)) {
				fprintf(stderr, PROG " %s: --tenant '%s': want a uid from 0 "
					"to %u\n", what, optarg, UINT32_MAX);
				goto out_usage;
			}
			flags |= KVP_ADMIN_F_TENANT;
			tenant = (uint32_t)v;
			break;
		case 'a': flags |= KVP_ADMIN_F_ALL; break;
		case 't': list = optarg; break;
		case 'f': file = optarg; break;
		case OPT_SERVER_UID:
			if (!kvp_tool_server_uid_option(PROG, optarg))
				goto out_usage;
			break;
		case 'h': usage_admin(stdout); return KVP_EXIT_OK;
		default: return bad_option(what, argv, opt);
		}
	}
	if ((flags & KVP_ADMIN_F_ALL) && sub->op != KVP_ADMIN_CLEAR) {
		fprintf(stderr, PROG " %s: --all is for 'admin clear' only\n", what);
		goto out_usage;
	}
	if ((flags & KVP_ADMIN_F_ALL) && (flags & KVP_ADMIN_F_TENANT)) {
		fprintf(stderr, PROG " %s: give --all or --tenant, not both\n", what);
		goto out_usage;
	}
	if ((flags & KVP_ADMIN_F_TENANT) && sub->op == KVP_ADMIN_CONFIG) {
		fprintf(stderr, PROG " %s: the daemon's options are not per tenant: no "
			"--tenant\n", what);
		goto out_usage;
	}
	if (!takes_tokens && (list || file)) {
		fprintf(stderr, PROG " %s: takes no tokens\n", what);
		goto out_usage;
	}
	if (takes_tokens && !list == !file) {
		fprintf(stderr, PROG " %s: give exactly one of --tokens LIST or --tokens-file "
			"FILE\n", what);
		goto out_usage;
	}
	if (sub->op != KVP_ADMIN_CONFIG && optind < argc) {
		fprintf(stderr, PROG " %s: unexpected argument '%s'\n", what, argv[optind]);
		goto out_usage;
	}
	if (sub->op == KVP_ADMIN_CONFIG &&
	    !(text = admin_config_text(argc - optind, argv + optind)))
		return KVP_EXIT_USAGE;
	if (takes_tokens) {
		rc = list ? kvp_tool_parse_tokens(list, &toks, err, sizeof(err))
			  : kvp_tool_read_tokens_file(file, &toks, err, sizeof(err));
		if (rc < 0) {
			fprintf(stderr, PROG " %s: %s\n", what, err);
			ret = rc == KVP_EIO || rc == KVP_ENOMEM ? KVP_EXIT_FAIL : KVP_EXIT_USAGE;
			goto out_free;
		}
		if (toks.n == 0) {
			fprintf(stderr, PROG " %s: no tokens given\n", what);
			goto out_usage;
		}
	}

	ret = KVP_EXIT_FAIL;
	if (kvp_tool_connect(PROG, sock, &c) < 0)
		goto out_free;
	kvp_client_set_timeout_ms(c, CLI_TIMEOUT_MS);
	/* HELLO first: a daemon that speaks only version 1 is told apart without a refusal
	 * that would close the connection. */
	rc = kvp_client_hello(c, NULL, NULL, &info);
	if (rc < 0) {
		kvp_tool_perror(PROG, "hello", c, rc);
		goto out_close;
	}
	rc = kvp_client_admin(c, sub->op, flags, tenant, toks.v, toks.n, text, &blocks, &reply);
	if (rc < 0) {
		admin_perror(what, c, rc);
		goto out_close;
	}
	if (sub->done)
		printf("%s %u block%s\n", sub->done, blocks, blocks == 1 ? "" : "s");
	if (reply[0]) {
		size_t len = strlen(reply);

		fputs(reply, stdout);
		if (reply[len - 1] != '\n')
			putchar('\n');
	}
	ret = KVP_EXIT_OK;
out_close:
	kvp_client_close(c);
out_free:
	free(reply);
	free(text);
	kvp_tokvec_free(&toks);
	return ret;
out_usage:
	fprintf(stderr, "Try '" PROG " admin --help'.\n");
	ret = KVP_EXIT_USAGE;
	goto out_free;
}

int main(int argc, char **argv)
{
	const char *cmd;

	if (argc < 2) {
		usage_main(stderr);
		return KVP_EXIT_USAGE;
	}
	cmd = argv[1];
	if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
		usage_main(stdout);
		return KVP_EXIT_OK;
	}
	if (strcmp(cmd, "--version") == 0) {
		printf("kvprefix %s\n", KVP_VERSION);
		return KVP_EXIT_OK;
	}
	if (strcmp(cmd, "lookup") == 0 || strcmp(cmd, "insert") == 0 || strcmp(cmd, "fleet") == 0)
		return cmd_tokens(argc - 1, argv + 1);
	if (strcmp(cmd, "generate") == 0)
		return cmd_generate(argc - 1, argv + 1);
	if (strcmp(cmd, "stats") == 0 || strcmp(cmd, "ping") == 0)
		return cmd_simple(argc - 1, argv + 1);
	if (strcmp(cmd, "admin") == 0)
		return cmd_admin(argc - 1, argv + 1);
	if (strcmp(cmd, "explain") == 0)   /* kvprefix explain = kvprefix admin explain */
		return cmd_admin(argc, argv);
	fprintf(stderr, PROG ": unknown command '%s'\n", cmd);
	usage_main(stderr);
	return KVP_EXIT_USAGE;
}
