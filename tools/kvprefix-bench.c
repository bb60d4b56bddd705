/*
 * kvprefix-bench.c - benchmarks of kvprefixd and its index. They print figures; they
 * do not pass or fail on speed (exit 0 unless something broke).
 *
 *   kvprefix-bench replay --trace FILE [--socket PATH] [--block-tokens N] [--limit N]
 *       Replay a Mooncake trace against a running daemon the way an external engine
 *       would: per request LOOKUP (no pin), then INSERT of the request's tokens. Tokens
 *       are derived from hash_ids (docs/trace-replay.md) for every request before the
 *       clock starts. Progress on stderr; the last line on stdout is one JSON object:
 *       requests, input_tokens, hit_tokens, hit_rate, elapsed_s, requests_per_s,
 *       tokens_per_s.
 *
 *   kvprefix-bench index [--block-tokens N] [--socket PATH] [--iterations N]
 *       (a) in process: kvp_tree_match (hash + lookup) of a fully cached 1k / 32k /
 *           128k-token prompt against one raw XXH3_128bits over the same bytes;
 *       (b) over the socket: LOOKUP round trip of a fully cached 2k-token prompt via
 *           libkvprefix against a bare Unix-socket echo of the same request bytes.
 *       Without --socket it starts its own kvprefixd (next to this binary, or in
 *       ../sbin) on a temporary socket and stops it at the end, and pins itself, that
 *       daemon and the echo to one CPU (--no-pin: don't), so both servers sit equally
 *       near the client: on a VM a cross-CPU wake-up costs tens of microseconds, more
 *       than the request, and which server the scheduler moves decides the ratio.
 *       LOOKUPs and echoes alternate in chunks of SOCKET_CHUNK for the same reason.
 *
 *   kvprefix-bench engine [--backend cpu|cuda] [--model FILE] ...
 *       The engine in process (prefill, decode, a cached suffix; on the CPU against its
 *       peak FMA rate, on CUDA against the device's f16 tensor-core peak and with a
 *       TTFT of an 8k prompt 90 % cached vs cold), then TTFT and a shared-prefix
 *       workload through a kvprefixd running the same backend. See usage_engine.
 *
 *   kvprefix-bench load --clients N --duration S [--socket PATH] [--mix ...]
 *       N client threads, each on its own connection, issue a seeded random mix of
 *       LOOKUP (half pinned, then RELEASEd), INSERT (index-only), GENERATE (engine) and
 *       STATS for S seconds; per-kind latency from fixed log-bucket histograms, errors
 *       by status, the daemon's RSS (its pid via SO_PEERCRED with --socket) and its
 *       pool once the clients are gone (blocks_pinned must be 0). See cmd_load.
 *
 *   timing of one in-process figure:
 *
 *     calibrate: t1 = one call            K = calls per sample (>= 20 us a sample)
 *     | K calls | K calls | ... | K calls |   S samples, S * K * t1 ~ the budget
 *        -> per-call time of each sample -> median and best of the S samples
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>

#include "kvp_device.h"
#include "kvp_engine.h"
#include "kvp_index.h"
#include "kvp_model.h"
#include "kvp_store.h"
#include "kvprefix.h"
#include "trace.h"
#include "util.h"

#define PROG "kvprefix-bench"

/* Targets printed beside the figures (DESIGN: the index is cheap next to hashing, the
 * protocol is cheap next to moving the bytes). */
#define TARGET_LOOKUP_32K_RATIO 4.0
#define TARGET_RTT_2K_RATIO 2.0

#define PROGRESS_EVERY 500u
#define SOCKET_PROMPT_TOKENS 2048u
#define SOCKET_WARMUP 2000u
#define SOCKET_ITERS_DEFAULT 20000u
#define SOCKET_CHUNK 1000u           /* round trips of one kind in a row */
#define INPROC_BUDGET_S 0.4
#define SAMPLE_MIN_NS 20000.0
#define DAEMON_WAIT_MS 10000

/* LOOKUP frame layout (docs/protocol.md): 16-byte header, u32 flags, u32 n_tokens,
 * n_tokens x u32. Only its size and bytes matter to the echo baseline. */
#define FRAME_HDR 16u
#define FRAME_MAGIC 0x3150564Bu
#define FRAME_T_LOOKUP 0x02u

static volatile uint64_t g_sink;   /* keeps measured results alive */

/* ---- small helpers ------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median_of(double *v, size_t n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static double quantile_sorted(const double *v, size_t n, double q)
{
	size_t i = (size_t)(q * (double)(n - 1) + 0.5);

	return v[i < n ? i : n - 1];
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static void put_u32le(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

/* Deterministic token-like ids (0..31999) for a synthetic prompt. */
static void synth_tokens(uint32_t *out, size_t n, uint64_t seed)
{
	for (size_t i = 0; i < n; i++)
		out[i] = (uint32_t)(kvp_splitmix64(seed * 0x100000000ull + i) % KVP_TRACE_VOCAB);
}

static bool json_print_line(cJSON *o)
{
	char *s = o ? cJSON_PrintUnformatted(o) : NULL;

	if (!s) {
		fprintf(stderr, PROG ": out of memory printing JSON\n");
		return false;
	}
	printf("%s\n", s);
	fflush(stdout);
	free(s);
	return true;
}

static int bad_option(const char *cmd, char **argv, int opt)
{
	if (opt == ':')
		fprintf(stderr, PROG " %s: option '%s' needs a value\n", cmd, argv[optind - 1]);
	else if (optopt)
		fprintf(stderr, PROG " %s: unknown option '-%c'\n", cmd, optopt);
	else
		fprintf(stderr, PROG " %s: unknown option '%s'\n", cmd, argv[optind - 1]);
	fprintf(stderr, "Try '" PROG " %s --help'.\n", cmd);
	return KVP_EXIT_USAGE;
}

/* ---- replay -------------------------------------------------------------------- */

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
		"  -h, --help              show this help\n"
		"\n"
		"Progress goes to stderr; the last stdout line is one JSON object: requests,\n"
		"input_tokens, hit_tokens, hit_rate (hit_tokens / input_tokens), elapsed_s,\n"
		"requests_per_s, tokens_per_s.\n");
}

static int cmd_replay(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "trace", required_argument, NULL, 't' },
		{ "socket", required_argument, NULL, 's' },
		{ "block-tokens", required_argument, NULL, 'b' },
		{ "limit", required_argument, NULL, 'n' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = NULL, *sock = NULL;
	uint64_t want_block = 0, limit = 0, hit = 0, t0, t1, t_start;
	struct kvp_trace tr = { 0 };
	struct kvp_server_info info;
	struct kvp_client *c = NULL;
	uint32_t *toks = NULL, max_len = 0;
	size_t *off = NULL;
	char err[512];
	cJSON *o = NULL;
	double el;
	int opt, rc, ret = KVP_EXIT_FAIL;

	optind = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":t:s:b:n:h", opts, NULL)) != -1) {
		switch (opt) {
		case 't': path = optarg; break;
		case 's': sock = optarg; break;
		case 'b':
			if (!kvp_tool_parse_u64(optarg, 1, KVP_BLOCK_TOKENS_MAX, &want_block)) {
				fprintf(stderr, PROG " replay: --block-tokens '%s': want 1..%u\n",
					optarg, KVP_BLOCK_TOKENS_MAX);
				return KVP_EXIT_USAGE;
			}
			break;
		case 'n':
			if (!kvp_tool_parse_u64(optarg, 1, SIZE_MAX, &limit)) {
				fprintf(stderr, PROG " replay: --limit '%s': want a positive "
					"number of requests\n", optarg);
				return KVP_EXIT_USAGE;
			}
			break;
		case 'h': usage_replay(stdout); return KVP_EXIT_OK;
		default: return bad_option("replay", argv, opt);
		}
	}
	if (optind < argc || !path) {
		if (optind < argc)
			fprintf(stderr, PROG " replay: unexpected argument '%s'\n", argv[optind]);
		else
			fprintf(stderr, PROG " replay: --trace FILE is required\n");
		fprintf(stderr, "Try '" PROG " replay --help'.\n");
		return KVP_EXIT_USAGE;
	}

	/* Load and derive everything before touching the daemon or the clock. */
	t0 = kvp_tool_now_ns();
	rc = kvp_trace_load(path, (size_t)limit, &tr, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, PROG " replay: %s\n", err);
		return KVP_EXIT_FAIL;
	}
	if (tr.n_reqs == 0) {
		fprintf(stderr, PROG " replay: %s: no requests in the trace\n", path);
		goto out_free;
	}
	if (tr.total_tokens > SIZE_MAX / sizeof(uint32_t) / 2) {
		fprintf(stderr, PROG " replay: %s: %" PRIu64 " tokens in all is too many to "
			"hold; use --limit\n", path, tr.total_tokens);
		goto out_free;
	}
	toks = malloc((size_t)tr.total_tokens * sizeof(*toks));
	off = malloc((tr.n_reqs + 1) * sizeof(*off));
	if (!toks || !off) {
		fprintf(stderr, PROG " replay: cannot allocate %.1f MiB for the tokens of %zu "
			"requests; use --limit\n",
			(double)tr.total_tokens * sizeof(*toks) / 1048576.0, tr.n_reqs);
		goto out_free;
	}
	off[0] = 0;
	for (size_t i = 0; i < tr.n_reqs; i++) {
		kvp_trace_req_tokens(&tr, &tr.reqs[i], toks + off[i]);
		off[i + 1] = off[i] + tr.reqs[i].input_length;
		if (tr.reqs[i].input_length > max_len)
			max_len = tr.reqs[i].input_length;
	}
	t1 = kvp_tool_now_ns();
	fprintf(stderr, "replay: %zu requests, %" PRIu64 " tokens (longest %u), derived in "
		"%.2f s\n", tr.n_reqs, tr.total_tokens, max_len, (double)(t1 - t0) / 1e9);

	if (kvp_tool_connect(PROG " replay", sock, &c) < 0)
		goto out_free;
	memset(&info, 0, sizeof(info));
	rc = kvp_client_hello(c, NULL, NULL, &info);
	if (rc < 0) {
		kvp_tool_perror(PROG " replay", "hello", c, rc);
		goto out_close;
	}
	if (want_block && want_block != info.block_tokens) {
		fprintf(stderr, PROG " replay: --block-tokens %" PRIu64 " but the daemon uses "
			"%u tokens a block; restart it with --block-tokens %" PRIu64 " or drop "
			"the option\n", want_block, info.block_tokens, want_block);
		goto out_close;
	}
	if (info.max_tokens && max_len > info.max_tokens) {
		fprintf(stderr, PROG " replay: the trace has a request of %u tokens but the "
			"daemon accepts at most %u a request\n", max_len, info.max_tokens);
		goto out_close;
	}
	fprintf(stderr, "replay: daemon block %u tokens, capacity %u blocks%s\n",
		info.block_tokens, info.capacity_blocks,
		info.index_only ? ", index-only" : "");

	t_start = kvp_tool_now_ns();
	for (size_t i = 0; i < tr.n_reqs; i++) {
		const struct kvp_trace_req *r = &tr.reqs[i];
		struct kvp_match m;

		rc = kvp_client_lookup(c, toks + off[i], r->input_length, 0, &m);
		if (rc < 0) {
			snprintf(err, sizeof(err), "lookup of request %zu (line %zu)", i + 1,
				 r->line);
			kvp_tool_perror(PROG " replay", err, c, rc);
			goto out_close;
		}
		hit += m.matched_tokens;
		rc = kvp_client_insert(c, toks + off[i], r->input_length, 0, &m);
		if (rc < 0) {
			snprintf(err, sizeof(err), "insert of request %zu (line %zu)", i + 1,
				 r->line);
			kvp_tool_perror(PROG " replay", err, c, rc);
			goto out_close;
		}
		if ((i + 1) % PROGRESS_EVERY == 0 && i + 1 < tr.n_reqs) {
			double s = (double)(kvp_tool_now_ns() - t_start) / 1e9;

			fprintf(stderr, "replay: %zu/%zu requests (%.0f%%), hit rate %.4f, "
				"%.0f requests/s\n", i + 1, tr.n_reqs,
				100.0 * (double)(i + 1) / (double)tr.n_reqs,
				(double)hit / (double)off[i + 1], (double)(i + 1) / s);
		}
	}
	el = (double)(kvp_tool_now_ns() - t_start) / 1e9;
	if (el <= 0)
		el = 1e-9;
	fprintf(stderr, "replay: %zu/%zu requests (100%%), hit rate %.4f, %.0f requests/s\n",
		tr.n_reqs, tr.n_reqs, (double)hit / (double)tr.total_tokens,
		(double)tr.n_reqs / el);

	o = cJSON_CreateObject();
	if (!o || !cJSON_AddNumberToObject(o, "requests", (double)tr.n_reqs) ||
	    !cJSON_AddNumberToObject(o, "input_tokens", (double)tr.total_tokens) ||
	    !cJSON_AddNumberToObject(o, "hit_tokens", (double)hit) ||
	    !cJSON_AddNumberToObject(o, "hit_rate", (double)hit / (double)tr.total_tokens) ||
	    !cJSON_AddNumberToObject(o, "elapsed_s", el) ||
	    !cJSON_AddNumberToObject(o, "requests_per_s", (double)tr.n_reqs / el) ||
	    !cJSON_AddNumberToObject(o, "tokens_per_s", (double)tr.total_tokens / el) ||
	    !cJSON_AddNumberToObject(o, "block_tokens", info.block_tokens)) {
		fprintf(stderr, PROG " replay: out of memory\n");
		goto out_close;
	}
	if (json_print_line(o))
		ret = KVP_EXIT_OK;
out_close:
	cJSON_Delete(o);
	kvp_client_close(c);
out_free:
	free(off);
	free(toks);
	kvp_trace_free(&tr);
	return ret;
}

/* ---- index: in-process --------------------------------------------------------- */

struct timing {
	double median_ns;
	double best_ns;
};

/* Time fn(arg) as described at the top of the file. */
static void measure(void (*fn)(void *), void *arg, double budget_s, struct timing *out)
{
	double t1, *samples;
	size_t k, n;
	uint64_t a, b;

	for (int i = 0; i < 3; i++)
		fn(arg);
	a = kvp_tool_now_ns();
	for (int i = 0; i < 5; i++)
		fn(arg);
	t1 = (double)(kvp_tool_now_ns() - a) / 5.0;
	if (t1 < 1)
		t1 = 1;
	k = (size_t)ceil(SAMPLE_MIN_NS / t1);
	n = (size_t)(budget_s * 1e9 / ((double)k * t1));
	if (n < 15)
		n = 15;
	if (n > 2001)
		n = 2001;
	samples = calloc(n, sizeof(*samples));
	if (!samples) {   /* cannot happen at these sizes; report the calibration */
		out->median_ns = out->best_ns = t1;
		return;
	}
	for (size_t s = 0; s < n; s++) {
		a = kvp_tool_now_ns();
		for (size_t i = 0; i < k; i++)
			fn(arg);
		b = kvp_tool_now_ns();
		samples[s] = (double)(b - a) / (double)k;
	}
	out->median_ns = median_of(samples, n);
	out->best_ns = samples[0];
	free(samples);
}

struct inproc {
	struct kvp_tree *tree;
	struct kvp_key root;
	const uint32_t *tokens;
	size_t n_tokens;
	struct kvp_tree_node **path;
	size_t max_nodes;
};

static void run_match(void *arg)
{
	struct inproc *p = arg;

	g_sink += kvp_tree_match(p->tree, p->root, p->tokens, p->n_tokens, p->path,
				 p->max_nodes);
}

static void run_xxh3(void *arg)
{
	struct inproc *p = arg;
	XXH128_hash_t h = XXH3_128bits(p->tokens, p->n_tokens * sizeof(uint32_t));

	g_sink += h.low64;
}

struct inproc_result {
	size_t tokens;
	size_t blocks;
	struct timing match, xxh3;
	double ratio;
};

/* Build a tree holding every full block of an n-token prompt, then time both. */
static int bench_inproc(uint32_t block, size_t n, uint64_t seed, struct inproc_result *res)
{
	struct inproc p = { 0 };
	struct kvp_key *keys = NULL;
	struct kvp_tree_node *parent = NULL, *node;
	uint32_t *tokens = NULL;
	size_t nb = n / block, got;
	int rc;

	memset(res, 0, sizeof(*res));
	res->tokens = n;
	res->blocks = nb;
	tokens = malloc(n * sizeof(*tokens));
	keys = malloc((nb ? nb : 1) * sizeof(*keys));
	p.path = malloc((nb ? nb : 1) * sizeof(*p.path));
	if (!tokens || !keys || !p.path) {
		fprintf(stderr, PROG " index: out of memory\n");
		rc = KVP_ENOMEM;
		goto out_free;
	}
	synth_tokens(tokens, n, seed);
	rc = kvp_tree_create(block, &p.tree);
	if (rc < 0) {
		fprintf(stderr, PROG " index: kvp_tree_create(%u): %s\n", block,
			kvp_strerror(rc));
		goto out_free;
	}
	p.root = kvp_ns_root("kvprefix-bench", 0, NULL);
	kvp_chain_keys(p.root, tokens, nb, block, keys);
	for (size_t i = 0; i < nb; i++) {
		rc = kvp_tree_insert(p.tree, p.root, parent, keys[i], tokens + i * block,
				     (uint32_t)i, &node);
		if (rc < 0 && rc != KVP_EEXIST) {
			fprintf(stderr, PROG " index: kvp_tree_insert of block %zu: %s\n", i,
				kvp_strerror(rc));
			goto out_destroy;
		}
		parent = node;
	}
	p.tokens = tokens;
	p.n_tokens = n;
	p.max_nodes = nb;
	got = kvp_tree_match(p.tree, p.root, tokens, n, p.path, nb);
	if (got != nb) {
		fprintf(stderr, PROG " index: %zu-token prompt: kvp_tree_match found %zu of %zu "
			"cached blocks\n", n, got, nb);
		rc = KVP_EINTERNAL;
		goto out_destroy;
	}
	measure(run_match, &p, INPROC_BUDGET_S, &res->match);
	measure(run_xxh3, &p, INPROC_BUDGET_S, &res->xxh3);
	res->ratio = res->match.median_ns / res->xxh3.median_ns;
	rc = KVP_OK;
out_destroy:
	kvp_tree_destroy(p.tree);
out_free:
	free(p.path);
	free(keys);
	free(tokens);
	return rc;
}

/* ---- own daemon (index, engine) --------------------------------------------------------- */

struct own_daemon {
	pid_t pid;
	char dir[64];
	char sock[96];
	char log[96];
};

static bool socket_accepts(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool ok;

	if (fd < 0)
		return false;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(fd);
	return ok;
}

/* A tool of this build: beside this binary (build tree), else in ../ALT (installed:
 * kvprefixd in ../sbin, the other tools in ../bin). cmd names the command in messages. */
static int find_tool(const char *cmd, const char *name, const char *alt, char *out, size_t cap)
{
	char exe[PATH_MAX], dir[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	const char *d;

	if (n <= 0) {
		fprintf(stderr, PROG " %s: cannot read /proc/self/exe: %s; cannot find %s\n",
			cmd, strerror(errno), name);
		return -1;
	}
	exe[n] = '\0';
	snprintf(dir, sizeof(dir), "%s", exe);
	d = dirname(dir);
	snprintf(out, cap, "%s/%s", d, name);
	if (access(out, X_OK) == 0)
		return 0;
	snprintf(out, cap, "%s/../%s/%s", d, alt, name);
	if (access(out, X_OK) == 0)
		return 0;
	fprintf(stderr, PROG " %s: cannot find %s in %s or %s/../%s\n", cmd, name, d, d, alt);
	return -1;
}

static void stop_daemon(struct own_daemon *d)
{
	int st;

	if (d->pid > 0) {
		kill(d->pid, SIGTERM);
		for (int i = 0; i < DAEMON_WAIT_MS / 10; i++) {
			if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
				d->pid = 0;
				break;
			}
			sleep_ms(10);
		}
		if (d->pid > 0) {
			fprintf(stderr, PROG ": kvprefixd did not stop on SIGTERM; killing it\n");
			kill(d->pid, SIGKILL);
			waitpid(d->pid, &st, 0);
			d->pid = 0;
		}
	}
	if (d->dir[0]) {
		unlink(d->sock);
		unlink(d->log);
		rmdir(d->dir);
		d->dir[0] = '\0';
	}
}

/*
 * Start kvprefixd (found by find_tool) with args (NULL-terminated) and --socket in a new
 * private directory; wait until it accepts. cmd names the command in messages; wait_ms
 * bounds the wait (a model to load takes longer than an index). On failure the daemon's
 * log is printed and everything is cleaned up.
 */
static int start_daemon(struct own_daemon *d, const char *cmd, const char *const *args,
			int wait_ms)
{
	char bin[PATH_MAX], line[1024];
	const char *argv[32];
	size_t na = 0, len = 0;
	int st;

	memset(d, 0, sizeof(*d));
	if (find_tool(cmd, "kvprefixd", "sbin", bin, sizeof(bin)) < 0) {
		fprintf(stderr, PROG " %s: start kvprefixd yourself and pass --socket PATH\n",
			cmd);
		return -1;
	}
	snprintf(d->dir, sizeof(d->dir), "/tmp/kvprefix-bench-XXXXXX");
	if (!mkdtemp(d->dir)) {
		fprintf(stderr, PROG " %s: mkdtemp: %s\n", cmd, strerror(errno));
		d->dir[0] = '\0';
		return -1;
	}
	snprintf(d->sock, sizeof(d->sock), "%s/kvprefixd.sock", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/kvprefixd.log", d->dir);
	argv[na++] = bin;
	for (size_t i = 0; args[i] && na < sizeof(argv) / sizeof(argv[0]) - 3; i++)
		argv[na++] = args[i];
	argv[na++] = "--socket";
	argv[na++] = d->sock;
	argv[na] = NULL;
	line[0] = '\0';
	for (size_t i = 0; i < na && len < sizeof(line); i++)
		len += (size_t)snprintf(line + len, sizeof(line) - len, "%s%s", i ? " " : "",
					argv[i]);
	fflush(NULL);
	d->pid = fork();
	if (d->pid < 0) {
		fprintf(stderr, PROG " %s: fork: %s\n", cmd, strerror(errno));
		goto out_fail;
	}
	if (d->pid == 0) {
		int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);

		if (fd >= 0) {
			dup2(fd, STDOUT_FILENO);
			dup2(fd, STDERR_FILENO);
			close(fd);
		}
		execv(bin, (char *const *)argv);
		fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
		_exit(127);
	}
	for (int i = 0; i < wait_ms / 10; i++) {
		if (socket_accepts(d->sock)) {
			fprintf(stderr, "%s: started %s (pid %d)\n", cmd, line, (int)d->pid);
			return 0;
		}
		if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
			FILE *f = fopen(d->log, "r");

			d->pid = 0;
			fprintf(stderr, PROG " %s: %s exited at start; its log:\n", cmd, bin);
			while (f && fgets(line, sizeof(line), f))
				fprintf(stderr, "  %s", line);
			if (f)
				fclose(f);
			goto out_fail;
		}
		sleep_ms(10);
	}
	fprintf(stderr, PROG " %s: %s did not accept on %s within %d s\n", cmd, bin, d->sock,
		wait_ms / 1000);
out_fail:
	stop_daemon(d);
	return -1;
}

/* ---- index: over the socket ---------------------------------------------------- */

static int write_full(int fd, const void *buf, size_t n)
{
	const uint8_t *p = buf;

	while (n > 0) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* 1: n bytes read; 0: clean end of file before any byte; -1: error or short. */
static int read_full(int fd, void *buf, size_t n)
{
	uint8_t *p = buf;
	size_t got = 0;

	while (got < n) {
		ssize_t r = read(fd, p + got, n - got);

		if (r < 0 && errno == EINTR)
			continue;
		if (r == 0 && got == 0)
			return 0;
		if (r <= 0)
			return -1;
		got += (size_t)r;
	}
	return 1;
}

struct echo {
	int listen_fd;
	size_t n;
	char path[96];
	pthread_t thread;
	bool running;          /* thread mode: the thread is to be joined */
	pid_t pid;             /* process mode: the child to be reaped */
};

/* Accept one connection; echo every n-byte message back until it closes. */
static void *echo_main(void *arg)
{
	struct echo *e = arg;
	uint8_t *buf = malloc(e->n);
	int fd = accept(e->listen_fd, NULL, NULL);

	while (buf && fd >= 0 && read_full(fd, buf, e->n) == 1)
		if (write_full(fd, buf, e->n) < 0)
			break;
	if (fd >= 0)
		close(fd);
	free(buf);
	return NULL;
}

static int echo_start(struct echo *e, const char *dir, size_t n, bool process)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	memset(e, 0, sizeof(*e));
	e->n = n;
	snprintf(e->path, sizeof(e->path), "%s/echo.sock", dir);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", e->path);
	e->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (e->listen_fd < 0 || bind(e->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(e->listen_fd, 1) < 0) {
		fprintf(stderr, PROG " index: echo socket %s: %s\n", e->path, strerror(errno));
		if (e->listen_fd >= 0)
			close(e->listen_fd);
		e->listen_fd = -1;
		return -1;
	}
	if (process) {
		fflush(NULL);
		e->pid = fork();
		if (e->pid == 0) {
			echo_main(e);
			_exit(0);
		}
		if (e->pid > 0)
			return 0;
		fprintf(stderr, PROG " index: cannot fork the echo process: %s\n",
			strerror(errno));
		e->pid = 0;
		close(e->listen_fd);
		unlink(e->path);
		e->listen_fd = -1;
		return -1;
	}
	if (pthread_create(&e->thread, NULL, echo_main, e) != 0) {
		fprintf(stderr, PROG " index: cannot start the echo thread\n");
		close(e->listen_fd);
		unlink(e->path);
		e->listen_fd = -1;
		return -1;
	}
	e->running = true;
	return 0;
}

static void echo_stop(struct echo *e)
{
	if (e->running) {
		/* The client side is closed by now, so a connected thread reads EOF; one
		 * still in accept() is woken by shutting the listening socket down. */
		shutdown(e->listen_fd, SHUT_RDWR);
		pthread_join(e->thread, NULL);
		e->running = false;
	}
	if (e->pid > 0) {
		shutdown(e->listen_fd, SHUT_RDWR);
		waitpid(e->pid, NULL, 0);
		e->pid = 0;
	}
	if (e->listen_fd >= 0)
		close(e->listen_fd);
	e->listen_fd = -1;
	if (e->path[0])
		unlink(e->path);
}

struct rtt_result {
	double lookup_med_us, lookup_p99_us, lookup_best_us;
	double echo_med_us, echo_p99_us, echo_best_us;
	double ratio;
	uint32_t daemon_block;
	uint32_t matched;
	size_t request_bytes;
};

static void summarize(double *v, size_t n, double *med, double *p99, double *best)
{
	*med = median_of(v, n) / 1e3;   /* sorted in place by median_of */
	*p99 = quantile_sorted(v, n, 0.99) / 1e3;
	*best = v[0] / 1e3;
}

static int bench_socket(const char *sock, const char *tmpdir, uint32_t iters,
			bool echo_process, struct rtt_result *res)
{
	const uint32_t n = SOCKET_PROMPT_TOKENS;
	struct kvp_server_info info;
	struct kvp_client *c = NULL;
	struct kvp_match m;
	struct echo e = { .listen_fd = -1 };
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uint32_t tokens[SOCKET_PROMPT_TOKENS];
	uint8_t *frame = NULL, *back = NULL;
	double *tl = NULL, *te = NULL;
	size_t fb = FRAME_HDR + 8 + (size_t)n * 4;
	int fd = -1, rc, ret = -1;

	memset(res, 0, sizeof(*res));
	res->request_bytes = fb;
	synth_tokens(tokens, n, 0xB0B);
	if (kvp_tool_connect(PROG " index", sock, &c) < 0)
		return -1;
	memset(&info, 0, sizeof(info));
	rc = kvp_client_hello(c, NULL, NULL, &info);
	if (rc < 0) {
		kvp_tool_perror(PROG " index", "hello", c, rc);
		goto out;
	}
	res->daemon_block = info.block_tokens;
	rc = kvp_client_insert(c, tokens, n, 0, &m);
	if (rc < 0) {
		kvp_tool_perror(PROG " index", "insert of the 2k-token prompt", c, rc);
		goto out;
	}
	rc = kvp_client_lookup(c, tokens, n, 0, &m);
	if (rc < 0) {
		kvp_tool_perror(PROG " index", "lookup of the 2k-token prompt", c, rc);
		goto out;
	}
	res->matched = m.matched_tokens;
	if (info.block_tokens && m.matched_tokens != n / info.block_tokens * info.block_tokens)
		fprintf(stderr, PROG " index: warning: only %u of %u tokens matched after the "
			"insert (is the pool too small?)\n", m.matched_tokens, n);

	tl = calloc(iters, sizeof(*tl));
	te = calloc(iters, sizeof(*te));
	frame = malloc(fb);
	back = malloc(fb);
	if (!tl || !te || !frame || !back) {
		fprintf(stderr, PROG " index: out of memory\n");
		goto out;
	}

	/* The same request bytes, echoed by a bare server thread. */
	put_u32le(frame, FRAME_MAGIC);
	frame[4] = 1;
	frame[5] = FRAME_T_LOOKUP;
	frame[6] = frame[7] = 0;
	put_u32le(frame + 8, 1);
	put_u32le(frame + 12, (uint32_t)(fb - FRAME_HDR));
	put_u32le(frame + 16, 0);
	put_u32le(frame + 20, n);
	for (uint32_t i = 0; i < n; i++)
		put_u32le(frame + 24 + 4 * (size_t)i, tokens[i]);
	if (echo_start(&e, tmpdir, fb, echo_process) < 0)
		goto out;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", e.path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		fprintf(stderr, PROG " index: connect %s: %s\n", e.path, strerror(errno));
		goto out;
	}

	/*
	 * Alternate chunks of LOOKUPs and echoes, so that both see the same machine
	 * state (CPU placement, frequency, neighbours):
	 *   | warm-up L | warm-up E | L x CHUNK | E x CHUNK | L x CHUNK | E x CHUNK | ...
	 */
	for (uint32_t done = 0, first = 1; done < iters; first = 0) {
		uint32_t k = first ? SOCKET_WARMUP : iters - done;

		if (!first && k > SOCKET_CHUNK)
			k = SOCKET_CHUNK;
		for (uint32_t i = 0; i < k; i++) {
			uint64_t a = kvp_tool_now_ns();

			rc = kvp_client_lookup(c, tokens, n, 0, &m);
			if (rc < 0) {
				kvp_tool_perror(PROG " index", "lookup", c, rc);
				goto out;
			}
			if (!first)
				tl[done + i] = (double)(kvp_tool_now_ns() - a);
		}
		for (uint32_t i = 0; i < k; i++) {
			uint64_t a = kvp_tool_now_ns();

			if (write_full(fd, frame, fb) < 0 || read_full(fd, back, fb) != 1) {
				fprintf(stderr, PROG " index: echo round trip failed: %s\n",
					strerror(errno));
				goto out;
			}
			if (!first)
				te[done + i] = (double)(kvp_tool_now_ns() - a);
		}
		if (!first)
			done += k;
	}
	if (memcmp(frame, back, fb) != 0) {
		fprintf(stderr, PROG " index: the echo returned different bytes\n");
		goto out;
	}
	summarize(tl, iters, &res->lookup_med_us, &res->lookup_p99_us, &res->lookup_best_us);
	summarize(te, iters, &res->echo_med_us, &res->echo_p99_us, &res->echo_best_us);
	res->ratio = res->lookup_med_us / res->echo_med_us;
	ret = 0;
out:
	if (fd >= 0)
		close(fd);
	echo_stop(&e);
	free(back);
	free(frame);
	free(te);
	free(tl);
	kvp_client_close(c);
	return ret;
}

/* Pin the calling thread (and so every thread and child created after) to the CPU it
 * runs on now. Returns the CPU or -1 (message printed). */
static int pin_to_one_cpu(void)
{
	int cpu = sched_getcpu();
	cpu_set_t set;

	if (cpu < 0) {
		fprintf(stderr, PROG " index: sched_getcpu: %s (use --no-pin)\n",
			strerror(errno));
		return -1;
	}
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set) < 0) {
		fprintf(stderr, PROG " index: sched_setaffinity(CPU %d): %s (use --no-pin)\n",
			cpu, strerror(errno));
		return -1;
	}
	return cpu;
}

/* ---- index: command ------------------------------------------------------------ */

static void usage_index(FILE *f)
{
	fprintf(f,
		"Usage: kvprefix-bench index [--block-tokens N] [--socket PATH]\n"
		"                            [--iterations N]\n"
		"Time the index against hashing alone, and the protocol against moving the\n"
		"bytes alone:\n"
		"  (a) in process: kvp_tree_match (hash + lookup) of a fully cached prompt of\n"
		"      1k, 32k and 128k tokens vs one XXH3_128bits over the same bytes\n"
		"      (target at 32k: <= %.0fx);\n"
		"  (b) LOOKUP round trip of a fully cached 2k-token prompt through libkvprefix\n"
		"      vs a bare Unix-socket echo of the same request bytes (target <= %.0fx).\n"
		"\n"
		"  -b, --block-tokens N   tokens a block (default 16); also passed to the\n"
		"                         daemon this command starts\n"
		"  -s, --socket PATH      use this running daemon instead of starting one\n"
		"                         (kvprefixd from this binary's directory or ../sbin)\n"
		"  -i, --iterations N     round trips timed in (b) (default %u, after %u\n"
		"                         warm-up ones), LOOKUPs and echoes alternating in\n"
		"                         chunks of %u so both see the same machine state\n"
		"  -e, --echo MODE        echo server: thread (default) or process\n"
		"      --no-pin           do not pin this bench, the daemon it starts and the\n"
		"                         echo to one CPU (the default pins them when no\n"
		"                         --socket is given, so that the daemon and the echo\n"
		"                         sit equally near the client; a cross-CPU wake-up\n"
		"                         can cost more than the request)\n"
		"  -h, --help             show this help\n"
		"\n"
		"Prints a table, then one JSON line with every figure and ratio.\n",
		TARGET_LOOKUP_32K_RATIO, TARGET_RTT_2K_RATIO, SOCKET_ITERS_DEFAULT,
		SOCKET_WARMUP, SOCKET_CHUNK);
}

static cJSON *timing_json(const struct inproc_result *r)
{
	cJSON *o = cJSON_CreateObject();

	if (!o)
		return NULL;
	cJSON_AddNumberToObject(o, "tokens", (double)r->tokens);
	cJSON_AddNumberToObject(o, "blocks", (double)r->blocks);
	cJSON_AddNumberToObject(o, "lookup_ns_median", r->match.median_ns);
	cJSON_AddNumberToObject(o, "lookup_ns_best", r->match.best_ns);
	cJSON_AddNumberToObject(o, "xxh3_ns_median", r->xxh3.median_ns);
	cJSON_AddNumberToObject(o, "xxh3_ns_best", r->xxh3.best_ns);
	cJSON_AddNumberToObject(o, "ratio", r->ratio);
	return o;
}

static int cmd_index(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "block-tokens", required_argument, NULL, 'b' },
		{ "socket", required_argument, NULL, 's' },
		{ "iterations", required_argument, NULL, 'i' },
		{ "echo", required_argument, NULL, 'e' },
		{ "no-pin", no_argument, NULL, 'P' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static const size_t sizes[] = { 1024, 32768, 131072 };
	struct inproc_result in[sizeof(sizes) / sizeof(sizes[0])];
	struct rtt_result rtt;
	struct own_daemon d = { 0 };
	const char *sock = NULL;
	uint64_t block = 16, iters = SOCKET_ITERS_DEFAULT;
	double r32 = NAN;
	bool echo_process = false, pin = true;
	int pinned_cpu = -1;
	char tmpdir[64] = "";
	cJSON *o = NULL, *arr, *so;
	int opt, ret = KVP_EXIT_FAIL;

	optind = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":b:s:i:e:Ph", opts, NULL)) != -1) {
		switch (opt) {
		case 'b':
			if (!kvp_tool_parse_u64(optarg, 1, KVP_BLOCK_TOKENS_MAX, &block)) {
				fprintf(stderr, PROG " index: --block-tokens '%s': want 1..%u\n",
					optarg, KVP_BLOCK_TOKENS_MAX);
				return KVP_EXIT_USAGE;
			}
			break;
		case 's': sock = optarg; break;
		case 'i':
			if (!kvp_tool_parse_u64(optarg, 1, 10000000, &iters)) {
				fprintf(stderr, PROG " index: --iterations '%s': want "
					"1..10000000\n", optarg);
				return KVP_EXIT_USAGE;
			}
			break;
		case 'e':
			if (strcmp(optarg, "thread") == 0) {
				echo_process = false;
			} else if (strcmp(optarg, "process") == 0) {
				echo_process = true;
			} else {
				fprintf(stderr, PROG " index: --echo '%s': want thread or "
					"process\n", optarg);
				return KVP_EXIT_USAGE;
			}
			break;
		case 'P': pin = false; break;
		case 'h': usage_index(stdout); return KVP_EXIT_OK;
		default: return bad_option("index", argv, opt);
		}
	}
	if (optind < argc) {
		fprintf(stderr, PROG " index: unexpected argument '%s'\n"
			"Try '" PROG " index --help'.\n", argv[optind]);
		return KVP_EXIT_USAGE;
	}

	printf("kvprefix-bench index: block %" PRIu64 " tokens\n\n", block);
	printf("(a) in process: kvp_tree_match of a fully cached prompt vs XXH3_128bits\n");
	printf("  %8s %7s %14s %14s %14s %14s %8s\n", "tokens", "blocks", "lookup med",
	       "lookup best", "xxh3 med", "xxh3 best", "ratio");
	fflush(stdout);
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		if (bench_inproc((uint32_t)block, sizes[i], 1 + i, &in[i]) < 0)
			goto out;
		printf("  %8zu %7zu %11.1f us %11.1f us %11.1f us %11.1f us %7.2fx\n",
		       in[i].tokens, in[i].blocks, in[i].match.median_ns / 1e3,
		       in[i].match.best_ns / 1e3, in[i].xxh3.median_ns / 1e3,
		       in[i].xxh3.best_ns / 1e3, in[i].ratio);
		fflush(stdout);
		if (sizes[i] == 32768)
			r32 = in[i].ratio;
	}
	printf("  32k lookup ratio %.2fx, target <= %.0fx: %s\n\n", r32, TARGET_LOOKUP_32K_RATIO,
	       r32 <= TARGET_LOOKUP_32K_RATIO ? "met" : "MISSED");
	fflush(stdout);

	if (!sock && pin) {
		/* Before the fork: the daemon and the echo inherit the CPU. */
		pinned_cpu = pin_to_one_cpu();
		if (pinned_cpu < 0)
			goto out;
	}
	if (!sock) {
		char bt[16];
		const char *args[] = { "--index-only", "--block-tokens", bt, NULL };

		snprintf(bt, sizeof(bt), "%" PRIu64, block);
		if (start_daemon(&d, "index", args, DAEMON_WAIT_MS) < 0)
			goto out;
		sock = d.sock;
		snprintf(tmpdir, sizeof(tmpdir), "%s", d.dir);
	} else {
		snprintf(tmpdir, sizeof(tmpdir), "/tmp/kvprefix-bench-XXXXXX");
		if (!mkdtemp(tmpdir)) {
			fprintf(stderr, PROG " index: mkdtemp: %s\n", strerror(errno));
			tmpdir[0] = '\0';
			goto out;
		}
	}
	printf("(b) over the socket %s: LOOKUP of a cached %u-token prompt vs echo of the "
	       "same %zu request bytes, %" PRIu64 " round trips\n", sock, SOCKET_PROMPT_TOKENS,
	       (size_t)(FRAME_HDR + 8 + SOCKET_PROMPT_TOKENS * 4), iters);
	fflush(stdout);
	if (bench_socket(sock, tmpdir, (uint32_t)iters, echo_process, &rtt) < 0)
		goto out;
	printf("  %-26s %10s %10s %10s\n", "", "median", "p99", "best");
	printf("  %-26s %7.2f us %7.2f us %7.2f us\n", "LOOKUP via libkvprefix",
	       rtt.lookup_med_us, rtt.lookup_p99_us, rtt.lookup_best_us);
	printf("  %-26s %7.2f us %7.2f us %7.2f us\n", "bare Unix-socket echo",
	       rtt.echo_med_us, rtt.echo_p99_us, rtt.echo_best_us);
	printf("  daemon block %u tokens, matched %u of %u tokens\n", rtt.daemon_block,
	       rtt.matched, SOCKET_PROMPT_TOKENS);
	if (pinned_cpu >= 0)
		printf("  client, daemon and echo all pinned to CPU %d (--no-pin to let them "
		       "move)\n", pinned_cpu);
	else
		printf("  not pinned: the daemon and the echo may sit on other CPUs than the "
		       "client,\n  and a cross-CPU wake-up can cost more than the request "
		       "itself (on VMs tens of us)\n");
	printf("  2k round-trip ratio %.2fx, target <= %.0fx: %s\n\n", rtt.ratio,
	       TARGET_RTT_2K_RATIO, rtt.ratio <= TARGET_RTT_2K_RATIO ? "met" : "MISSED");

	o = cJSON_CreateObject();
	if (!o || !cJSON_AddNumberToObject(o, "block_tokens", (double)block))
		goto out_nomem;
	arr = cJSON_AddArrayToObject(o, "inproc");
	if (!arr)
		goto out_nomem;
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		cJSON *t = timing_json(&in[i]);

		if (!t || !cJSON_AddItemToArray(arr, t)) {
			cJSON_Delete(t);
			goto out_nomem;
		}
	}
	cJSON_AddNumberToObject(o, "lookup_32k_ratio", r32);
	cJSON_AddNumberToObject(o, "lookup_32k_target", TARGET_LOOKUP_32K_RATIO);
	cJSON_AddBoolToObject(o, "lookup_32k_met", r32 <= TARGET_LOOKUP_32K_RATIO);
	so = cJSON_AddObjectToObject(o, "socket");
	if (!so)
		goto out_nomem;
	cJSON_AddNumberToObject(so, "tokens", SOCKET_PROMPT_TOKENS);
	cJSON_AddNumberToObject(so, "request_bytes", (double)rtt.request_bytes);
	cJSON_AddNumberToObject(so, "daemon_block_tokens", rtt.daemon_block);
	cJSON_AddNumberToObject(so, "matched_tokens", rtt.matched);
	cJSON_AddNumberToObject(so, "iterations", (double)iters);
	cJSON_AddNumberToObject(so, "pinned_cpu", pinned_cpu);
	cJSON_AddStringToObject(so, "echo", echo_process ? "process" : "thread");
	cJSON_AddNumberToObject(so, "lookup_us_median", rtt.lookup_med_us);
	cJSON_AddNumberToObject(so, "lookup_us_p99", rtt.lookup_p99_us);
	cJSON_AddNumberToObject(so, "echo_us_median", rtt.echo_med_us);
	cJSON_AddNumberToObject(so, "echo_us_p99", rtt.echo_p99_us);
	cJSON_AddNumberToObject(o, "rtt_2k_ratio", rtt.ratio);
	cJSON_AddNumberToObject(o, "rtt_2k_target", TARGET_RTT_2K_RATIO);
	cJSON_AddBoolToObject(o, "rtt_2k_met", rtt.ratio <= TARGET_RTT_2K_RATIO);
	if (json_print_line(o))
		ret = KVP_EXIT_OK;
	goto out;

out_nomem:
	fprintf(stderr, PROG " index: out of memory\n");
out:
	cJSON_Delete(o);
	if (d.pid > 0 || d.dir[0]) {
		stop_daemon(&d);
	} else if (tmpdir[0]) {
		rmdir(tmpdir);
	}
	return ret;
}

/* ---- engine: shared helpers ------------------------------------------------------ */

/* Targets printed beside the engine figures. */
#define TARGET_PEAK_FRACTION 0.60     /* 512-token prefill, f32, 2 threads */
#define TARGET_TTFT_RATIO 20.0        /* cold / cached TTFT of a 2,050-token prompt */
#define ENGINE_MAX_BATCH 512u         /* rows per internal step, as the daemon uses */
#define ENGINE_DAEMON_WAIT_MS 60000   /* a model to load and a pool to allocate */
#define GEN_TIMEOUT_MS 600000u        /* the longest wait for one frame of a generation */
#define TTFT_PREFIX 2000u             /* (b), (c): tokens of a shared prefix */
#define TTFT_SUFFIX 50u               /* (b): tokens after it */
#define WORK_PREFIXES 16u             /* (c) */
#define WORK_REQUESTS 200u
#define WORK_REQUESTS_QUICK 50u
#define WORK_MAX_NEW 8u
#define FIRST_TOKEN_ID 259u           /* after <unk> <s> </s> and the byte tokens */
/* --backend cuda, in process */
#define TARGET_GPU_FRACTION 0.50      /* prefill TFLOP/s of the f16 tensor-core peak */
#define CUDA_N_SIZES 3
#define CUDA_TARGET_SIZE 2            /* the size the target is judged on: 8,192 */
#define CUDA_TTFT_PROMPT 8192u        /* in-process TTFT: this prompt ... */
#define CUDA_TTFT_CACHED_PCT 90u      /* ... with this share of it already in the blocks */
static const uint32_t cuda_prefill_sizes[CUDA_N_SIZES] = { 512, 2048, 8192 };

/* Token ids in [FIRST_TOKEN_ID, vocab) (or [0, vocab) for a tiny vocabulary), a pure
 * function of (seed, i). */
static void rand_tokens(uint32_t *out, size_t n, uint64_t seed, uint32_t vocab)
{
	uint32_t lo = vocab > 2 * FIRST_TOKEN_ID ? FIRST_TOKEN_ID : 0;

	for (size_t i = 0; i < n; i++)
		out[i] = lo + (uint32_t)(kvp_splitmix64(seed * 0x100000000ull + i) % (vocab - lo));
}

static double mean_of(const double *v, size_t n)
{
	double s = 0;

	for (size_t i = 0; i < n; i++)
		s += v[i];
	return n ? s / (double)n : NAN;
}

/* p99 of v (sorted in place); NAN when empty. */
static double p99_of(double *v, size_t n)
{
	if (!n)
		return NAN;
	qsort(v, n, sizeof(*v), cmp_double);
	return quantile_sorted(v, n, 0.99);
}

static double best_of(const double *v, size_t n)   /* the largest (a rate) */
{
	double b = v[0];

	for (size_t i = 1; i < n; i++)
		if (v[i] > b)
			b = v[i];
	return b;
}

static int online_cpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	return n > 0 && n < 1024 ? (int)n : 1;
}

/* Collects the tokens of one generation. */
struct gen_collect {
	struct kvp_tokvec *out;   /* NULL: drop them */
	int status;
};

static void collect_tokens(void *arg, const uint32_t *tokens, uint32_t n)
{
	struct gen_collect *g = arg;

	for (uint32_t i = 0; g->out && i < n && g->status == 0; i++)
		g->status = kvp_tokvec_push(g->out, tokens[i]);
}

/* One greedy generation; prints the error (naming what) on failure. */
static int generate(const char *cmd, struct kvp_client *c, const uint32_t *prompt, size_t n,
		    uint32_t max_new, struct kvp_tokvec *answer, struct kvp_usage *u,
		    const char *what)
{
	struct kvp_generate_params gp;
	struct gen_collect g = { .out = answer };
	char msg[160];
	int rc;

	kvp_generate_params_init(&gp);
	gp.max_new = max_new;
	rc = kvp_client_generate(c, prompt, n, &gp, collect_tokens, &g, u);
	if (rc == 0 && g.status)
		rc = g.status;
	if (rc < 0) {
		snprintf(msg, sizeof(msg), "generate (%s, %zu tokens)", what, n);
		kvp_tool_perror(cmd, msg, c, rc);
	}
	return rc;
}

/* Connect, HELLO, check the daemon runs a model. */
static int connect_engine(const char *cmd, const char *sock, struct kvp_client **out,
			  struct kvp_server_info *info)
{
	struct kvp_client *c = NULL;
	int rc;

	if (kvp_tool_connect(cmd, sock, &c) < 0)
		return -1;
	memset(info, 0, sizeof(*info));
	rc = kvp_client_hello(c, NULL, NULL, info);
	if (rc < 0) {
		kvp_tool_perror(cmd, "hello", c, rc);
		goto fail;
	}
	if (info->index_only) {
		fprintf(stderr, "%s: the daemon at %s runs --index-only; start it with --model "
			"FILE\n", cmd, sock ? sock : "the default socket");
		goto fail;
	}
	rc = kvp_client_set_timeout_ms(c, GEN_TIMEOUT_MS);
	if (rc < 0) {
		kvp_tool_perror(cmd, "set timeout", c, rc);
		goto fail;
	}
	*out = c;
	return 0;
fail:
	kvp_client_close(c);
	return -1;
}

/* ---- engine (a): in process ----------------------------------------------------- */

struct eng_inproc {
	/* model */
	char name[256];
	uint64_t n_params;
	uint32_t vocab, dim, n_layers, n_heads, n_kv_heads, head_dim, ffn;
	const char *isa;
	size_t block_bytes;
	/* figures */
	double peak_gflops;
	int prefill_runs_512, prefill_runs_2048, decode_runs;
	double pf512_best, pf512_med;        /* tokens/s */
	double pf2048_best, pf2048_med;
	double dec_best, dec_med;            /* tokens/s */
	uint32_t decode_prompt, decode_steps;
	double suffix_ms_med;                /* 50 rows after 2,000 cached positions */
	double cold2050_ms;                  /* 2,050 rows cold */
	double flops_512;                    /* FLOPs of one 512-token prefill */
	double gflops_best, gflops_med;
	double frac_best, frac_med;          /* of peak */
};

/* FLOPs of a cold prefill of n tokens (positions 0..n-1) with the last row's logits. */
static double prefill_flops(const struct kvp_model_config *mc, uint32_t n)
{
	double q_dim = (double)mc->n_heads * mc->head_dim;
	double kv_dim = (double)mc->n_kv_heads * mc->head_dim;
	double d = mc->dim, f = mc->ffn, m = n;
	double per_layer = 2 * m * q_dim * d            /* q */
			 + 2 * 2 * m * kv_dim * d       /* k, v */
			 + 2 * m * d * q_dim            /* o */
			 + 2 * 2 * m * f * d            /* gate, up */
			 + 2 * m * d * f;               /* down */
	double pairs = m * (m + 1) / 2;                 /* causal (query, key) pairs */
	double attn = 2.0 * 2.0 * mc->head_dim * mc->n_heads * pairs;   /* QK^T and PV */

	return mc->n_layers * (per_layer + attn) + 2.0 * mc->vocab * d;
}

struct eng_ctx {
	struct kvp_engine *e;
	uint8_t *arena;
	void **blocks;           /* 2 sets of nb_set pointers */
	uint32_t nb_set;
	float *logits;
	void *scratch;
	uint32_t *tokens;        /* room for the longest prompt */
	uint32_t vocab;
};

/*
 * Prefill n tokens cold (write_from 0) runs times after warm warm-up runs, alternating
 * between the two block sets; rates[] gets n / seconds of each timed run. With peaks
 * non-NULL, the peak FMA GFLOP/s of the engine's threads is measured just before and
 * just after each timed run and the higher kept, so that a run and its peak see the
 * same machine (on a shared VM the throughput a core gives moves by 2x from minute to
 * minute) and a neighbour's burst during one peak measurement cannot flatter the run.
 */
static int eng_prefill(struct eng_ctx *x, uint32_t n, int warm, int runs, double *rates,
		       double *peaks, uint64_t seed)
{
	for (int r = -warm; r < runs; r++) {
		void *const *set = x->blocks + (size_t)((r + warm) & 1) * x->nb_set;
		uint64_t a, b;
		int rc;

		if (peaks && r >= 0)
			peaks[r] = kvp_engine_peak_gflops(x->e);
		rand_tokens(x->tokens, n, seed + (uint64_t)(r + warm), x->vocab);
		a = kvp_tool_now_ns();
		rc = kvp_engine_forward(x->e, set, x->nb_set, x->tokens, n, 0, 0, x->logits);
		b = kvp_tool_now_ns();
		if (rc < 0) {
			fprintf(stderr, PROG " engine: forward of %u tokens: %s\n", n,
				kvp_strerror(rc));
			return rc;
		}
		g_sink += (uint64_t)x->logits[0];
		if (r >= 0)
			rates[r] = (double)n / ((double)(b - a) / 1e9);
		if (peaks && r >= 0) {
			double after = kvp_engine_peak_gflops(x->e);

			fprintf(stderr, "engine: prefill %u tokens: %.3f s (peak FMA before %.1f, "
				"after %.1f GFLOP/s)\n", n, (double)(b - a) / 1e9, peaks[r], after);
			if (after > peaks[r])
				peaks[r] = after;
		}
		else
			fprintf(stderr, "engine: prefill %u tokens%s: %.3f s\n", n,
				r < 0 ? " (warm-up)" : "", (double)(b - a) / 1e9);
	}
	return 0;
}

/* Prefill a prompt (untimed), then time steps greedy decode steps. */
static int eng_decode(struct eng_ctx *x, uint32_t prompt, uint32_t steps, double *rate,
		      uint64_t seed)
{
	struct kvp_sampler s;
	uint64_t a, b;
	uint32_t tok;
	int rc;

	kvp_sampler_init(&s, 0, 0, 1, 0);
	rand_tokens(x->tokens, prompt, seed, x->vocab);
	rc = kvp_engine_forward(x->e, x->blocks, x->nb_set, x->tokens, prompt, 0, 0, x->logits);
	if (rc < 0)
		goto fail;
	a = kvp_tool_now_ns();
	for (uint32_t i = 0; i < steps; i++) {
		uint32_t pos = prompt + i;

		tok = kvp_sample(&s, x->logits, x->vocab, x->scratch);
		rc = kvp_engine_forward(x->e, x->blocks, x->nb_set, &tok, 1, pos, pos, x->logits);
		if (rc < 0)
			goto fail;
	}
	b = kvp_tool_now_ns();
	*rate = (double)steps / ((double)(b - a) / 1e9);
	fprintf(stderr, "engine: decode %u steps after %u tokens: %.3f s (%.1f tokens/s)\n",
		steps, prompt, (double)(b - a) / 1e9, *rate);
	return 0;
fail:
	fprintf(stderr, PROG " engine: decode forward: %s\n", kvp_strerror(rc));
	return rc;
}

/* What (b) asks of the daemon, in process: the 50-token suffix after 2,000 positions
 * already in the blocks (write_from 2000), against all 2,050 tokens cold. */
static int eng_suffix(struct eng_ctx *x, int runs, double *suffix_ms, double *cold_ms)
{
	const uint32_t pre = TTFT_PREFIX, n = TTFT_PREFIX + TTFT_SUFFIX;
	double t[8];
	uint64_t a;
	int rc;

	rand_tokens(x->tokens, n, 400, x->vocab);
	a = kvp_tool_now_ns();
	rc = kvp_engine_forward(x->e, x->blocks, x->nb_set, x->tokens, n, 0, 0, x->logits);
	*cold_ms = (double)(kvp_tool_now_ns() - a) / 1e6;
	for (int r = -1; r < runs && rc == 0; r++) {
		a = kvp_tool_now_ns();
		rc = kvp_engine_forward(x->e, x->blocks, x->nb_set, x->tokens + pre, n - pre, pre,
					pre, x->logits);
		if (r >= 0)
			t[r] = (double)(kvp_tool_now_ns() - a) / 1e6;
	}
	if (rc < 0) {
		fprintf(stderr, PROG " engine: forward of the suffix: %s\n", kvp_strerror(rc));
		return rc;
	}
	*suffix_ms = median_of(t, (size_t)runs);
	fprintf(stderr, "engine: %u tokens cold %.1f ms; its last %u after %u cached %.1f ms "
		"(median of %d)\n", n, *cold_ms, n - pre, pre, *suffix_ms, runs);
	return 0;
}

/* Load the bench's model and describe it in res; NULL (reported) when it cannot be
 * loaded or its context is shorter than need_ctx positions (hint ends that message). */
static struct kvp_model *bench_load_model(const char *path, uint32_t need_ctx, const char *hint,
					  struct eng_inproc *res)
{
	struct kvp_model *m = NULL;
	char err[512];

	fprintf(stderr, "engine: loading %s\n", path);
	if (kvp_model_load(path, &m, err, sizeof(err)) < 0) {
		fprintf(stderr, PROG " engine: %s: %s\n", path, err);
		return NULL;
	}
	snprintf(res->name, sizeof(res->name), "%s", m->cfg.name);
	res->n_params = m->cfg.n_params;
	res->vocab = m->cfg.vocab;
	res->dim = m->cfg.dim;
	res->n_layers = m->cfg.n_layers;
	res->n_heads = m->cfg.n_heads;
	res->n_kv_heads = m->cfg.n_kv_heads;
	res->head_dim = m->cfg.head_dim;
	res->ffn = m->cfg.ffn;
	if (m->cfg.ctx < need_ctx) {
		fprintf(stderr, PROG " engine: %s has a context of %u tokens; the bench needs %u%s\n",
			path, m->cfg.ctx, need_ctx, hint);
		kvp_model_free(m);
		return NULL;
	}
	return m;
}

static int bench_engine_inproc(const char *model_path, int threads, enum kvp_kv_dtype dtype,
			       uint32_t block, uint32_t max_batch, bool quick,
			       struct eng_inproc *res)
{
	const uint32_t max_tokens = TTFT_PREFIX + TTFT_SUFFIX;   /* >= 2048 */
	struct kvp_engine_config ec = {
		.threads = threads, .kv_dtype = dtype, .block_tokens = block,
		.max_batch = max_batch,
	};
	struct kvp_model *m = NULL;
	struct eng_ctx x = { 0 };
	double r512[8], p512[8], f512[8], r2048[8], rdec[8];
	size_t bb;
	int rc, ret = -1;

	memset(res, 0, sizeof(*res));
	m = bench_load_model(model_path, max_tokens + 1, "", res);
	if (!m)
		return -1;
	rc = kvp_engine_create(m, &ec, &x.e);
	if (rc < 0) {
		fprintf(stderr, PROG " engine: kvp_engine_create: %s\n", kvp_strerror(rc));
		goto out;
	}
	res->isa = kvp_engine_kernels(x.e);
	bb = kvp_engine_block_bytes(x.e);
	res->block_bytes = bb;
	bb = (bb + 63) / 64 * 64;
	x.vocab = m->cfg.vocab;
	x.nb_set = (max_tokens + block - 1) / block;
	x.arena = aligned_alloc(64, 2 * (size_t)x.nb_set * bb);
	x.blocks = malloc(2 * (size_t)x.nb_set * sizeof(*x.blocks));
	x.logits = aligned_alloc(64, ((size_t)x.vocab * sizeof(float) + 63) / 64 * 64);
	x.scratch = malloc(kvp_sampler_scratch_bytes(x.vocab));
	x.tokens = malloc(max_tokens * sizeof(*x.tokens));
	if (!x.arena || !x.blocks || !x.logits || !x.scratch || !x.tokens) {
		fprintf(stderr, PROG " engine: out of memory for %u KV blocks of %zu bytes\n",
			2 * x.nb_set, bb);
		goto out;
	}
	/* Two sets of blocks, touched once: runs alternate between them so that each
	 * prefill writes KV that is not in the caches, as a cold request does. */
	memset(x.arena, 0, 2 * (size_t)x.nb_set * bb);
	for (size_t i = 0; i < 2 * (size_t)x.nb_set; i++)
		x.blocks[i] = x.arena + i * bb;

	res->prefill_runs_512 = quick ? 2 : 5;
	res->prefill_runs_2048 = quick ? 1 : 3;
	res->decode_runs = quick ? 1 : 3;
	res->decode_prompt = 512;
	res->decode_steps = 128;
	if (eng_prefill(&x, 512, 1, res->prefill_runs_512, r512, p512, 100) < 0 ||
	    eng_prefill(&x, 2048, quick ? 0 : 1, res->prefill_runs_2048, r2048, NULL, 200) < 0)
		goto out;
	for (int i = 0; i < res->decode_runs; i++)
		if (eng_decode(&x, res->decode_prompt, res->decode_steps, &rdec[i],
			       300 + (uint64_t)i) < 0)
			goto out;
	if (eng_suffix(&x, quick ? 3 : 5, &res->suffix_ms_med, &res->cold2050_ms) < 0)
		goto out;
	res->flops_512 = prefill_flops(&m->cfg, 512);
	for (int i = 0; i < res->prefill_runs_512; i++)
		f512[i] = res->flops_512 / (512.0 / r512[i]) / 1e9 / p512[i];
	res->frac_best = best_of(f512, (size_t)res->prefill_runs_512);
	res->frac_med = median_of(f512, (size_t)res->prefill_runs_512);
	res->peak_gflops = median_of(p512, (size_t)res->prefill_runs_512);
	res->pf512_best = best_of(r512, (size_t)res->prefill_runs_512);
	res->pf512_med = median_of(r512, (size_t)res->prefill_runs_512);
	res->pf2048_best = best_of(r2048, (size_t)res->prefill_runs_2048);
	res->pf2048_med = median_of(r2048, (size_t)res->prefill_runs_2048);
	res->dec_best = best_of(rdec, (size_t)res->decode_runs);
	res->dec_med = median_of(rdec, (size_t)res->decode_runs);
	res->gflops_best = res->flops_512 / (512.0 / res->pf512_best) / 1e9;
	res->gflops_med = res->flops_512 / (512.0 / res->pf512_med) / 1e9;
	ret = 0;
out:
	free(x.tokens);
	free(x.scratch);
	free(x.logits);
	free(x.blocks);
	free(x.arena);
	kvp_engine_destroy(x.e);
	kvp_model_free(m);
	return ret;
}

/* ---- engine (a), --backend cuda: in process on the GPU ------------------------- */

struct eng_cuda {
	struct kvp_device_info dev;
	uint32_t max_batch;
	int runs[CUDA_N_SIZES];
	double pf_best[CUDA_N_SIZES], pf_med[CUDA_N_SIZES];         /* tokens/s */
	double flops[CUDA_N_SIZES];                                 /* FLOPs of one prefill */
	double tflops_best[CUDA_N_SIZES], tflops_med[CUDA_N_SIZES];
	double frac_best[CUDA_N_SIZES], frac_med[CUDA_N_SIZES];    /* of dev.f16_tflops */
	int decode_runs;
	uint32_t decode_prompt, decode_steps;
	double dec_best, dec_med;                                   /* tokens/s */
	int ttft_reps;
	uint32_t ttft_prompt, ttft_cached;                          /* tokens */
	double ttft_cold_ms, ttft_cached_ms;                        /* medians */
	double ttft_ratio;               /* median over the repetitions of cold / cached */
	double ttft_logit_diff;          /* max |cold - cached| / max |cold| over the reps */
};

/*
 * TTFT in process: CUDA_TTFT_PROMPT tokens cold (write_from 0), then the same prompt
 * with its first CUDA_TTFT_CACHED_PCT % (whole blocks) already in the blocks (the cold
 * run just wrote them): only the rest is computed, its last row gives the logits. Each
 * call is timed to the logits in host memory. One untimed pair first; the prompt
 * changes every repetition. The two logit vectors must agree (invariant 5): their
 * largest difference is reported.
 */
static int eng_cuda_ttft(struct eng_ctx *x, uint32_t block, struct eng_cuda *res)
{
	const uint32_t n = CUDA_TTFT_PROMPT;
	const uint32_t pre = n * CUDA_TTFT_CACHED_PCT / 100 / block * block;
	double cold[8], cached[8], ratio[8];
	float *ref = malloc((size_t)x->vocab * sizeof(float));
	int rc = 0;

	if (!ref) {
		fprintf(stderr, PROG " engine: out of memory\n");
		return -1;
	}
	res->ttft_prompt = n;
	res->ttft_cached = pre;
	res->ttft_logit_diff = 0;
	for (int r = -1; r < res->ttft_reps && rc == 0; r++) {
		void *const *set = x->blocks + (size_t)((r + 1) & 1) * x->nb_set;
		uint64_t a, b, c;
		double mx = 0, md = 0;

		rand_tokens(x->tokens, n, 0x8000 + (uint64_t)(r + 1), x->vocab);
		a = kvp_tool_now_ns();
		rc = kvp_engine_forward(x->e, set, x->nb_set, x->tokens, n, 0, 0, ref);
		b = kvp_tool_now_ns();
		if (rc == 0)
			rc = kvp_engine_forward(x->e, set, x->nb_set, x->tokens + pre, n - pre, pre,
						pre, x->logits);
		c = kvp_tool_now_ns();
		if (rc < 0)
			break;
		for (uint32_t i = 0; i < x->vocab; i++) {
			mx = fmax(mx, fabs((double)ref[i]));
			md = fmax(md, fabs((double)ref[i] - (double)x->logits[i]));
		}
		if (mx > 0 && md / mx > res->ttft_logit_diff)
			res->ttft_logit_diff = md / mx;
		fprintf(stderr, "engine: TTFT %u tokens%s: cold %.1f ms, %u cached %.1f ms\n", n,
			r < 0 ? " (warm-up)" : "", (double)(b - a) / 1e6, pre, (double)(c - b) / 1e6);
		if (r >= 0) {
			cold[r] = (double)(b - a) / 1e6;
			cached[r] = (double)(c - b) / 1e6;
			ratio[r] = cold[r] / cached[r];
		}
	}
	free(ref);
	if (rc < 0) {
		fprintf(stderr, PROG " engine: TTFT forward: %s\n", kvp_strerror(rc));
		return rc;
	}
	res->ttft_cold_ms = median_of(cold, (size_t)res->ttft_reps);
	res->ttft_cached_ms = median_of(cached, (size_t)res->ttft_reps);
	res->ttft_ratio = median_of(ratio, (size_t)res->ttft_reps);
	return 0;
}

/*
 * (a) with --backend cuda: the engine on CUDA device 0, KV f16 in device blocks (a pool
 * attached with kvp_pool_attach_device, two sets as on the CPU so that each prefill
 * writes blocks the previous one did not), prefill at cuda_prefill_sizes, decode,
 * TTFT cold vs 90 % cached. Fills a's model fields as bench_engine_inproc does.
 */
static int bench_engine_cuda(const char *model_path, uint32_t block, uint32_t max_batch,
			     bool quick, struct eng_inproc *a, struct eng_cuda *res)
{
	const uint32_t max_tokens = cuda_prefill_sizes[CUDA_N_SIZES - 1] > CUDA_TTFT_PROMPT
					    ? cuda_prefill_sizes[CUDA_N_SIZES - 1]
					    : CUDA_TTFT_PROMPT;
	char err[512] = "", why[256] = "";
	struct kvp_engine_config ec = {
		.backend = KVP_BACKEND_CUDA, .device = 0, .err = err, .errlen = sizeof(err),
		.threads = 1, .kv_dtype = KVP_KV_F16, .block_tokens = block,
		.max_batch = max_batch,
	};
	struct kvp_model *m = NULL;
	struct kvp_pool *pool = NULL;
	struct eng_ctx x = { 0 };
	double rates[8], rdec[8], f[8];
	size_t bb;
	int rc, ret = -1;

	memset(a, 0, sizeof(*a));
	memset(res, 0, sizeof(*res));
	res->max_batch = max_batch;
	if (kvp_device_count(why, sizeof(why)) <= 0) {
		fprintf(stderr, PROG " engine: --backend cuda: no CUDA device: %s\n", why);
		return -1;
	}
	rc = kvp_device_open(0, &res->dev, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, PROG " engine: --backend cuda: device 0: %s\n", err);
		return -1;
	}
	fprintf(stderr, "engine: CUDA device 0: %s (sm_%d%d, %d SMs, %.1f GiB, f16 tensor peak "
		"%.1f TFLOP/s)\n", res->dev.name, res->dev.sm_major, res->dev.sm_minor,
		res->dev.sm_count, (double)res->dev.mem_total / 1073741824.0, res->dev.f16_tflops);
	m = bench_load_model(model_path, max_tokens + 1, " (kvprefix-mkmodel --ctx)", a);
	if (!m)
		return -1;
	a->isa = "cuda";
	err[0] = '\0';
	rc = kvp_engine_create(m, &ec, &x.e);
	if (rc < 0) {
		fprintf(stderr, PROG " engine: kvp_engine_create (cuda): %s%s%s\n", kvp_strerror(rc),
			err[0] ? ": " : "", err);
		goto out;
	}
	bb = kvp_engine_block_bytes(x.e);
	a->block_bytes = bb;
	x.vocab = m->cfg.vocab;
	x.nb_set = (max_tokens + block - 1) / block;
	x.blocks = malloc(2 * (size_t)x.nb_set * sizeof(*x.blocks));
	x.logits = malloc((size_t)x.vocab * sizeof(float));
	x.scratch = malloc(kvp_sampler_scratch_bytes(x.vocab));
	x.tokens = malloc(max_tokens * sizeof(*x.tokens));
	if (!x.blocks || !x.logits || !x.scratch || !x.tokens) {
		fprintf(stderr, PROG " engine: out of memory\n");
		goto out;
	}
	/* the blocks: device memory from a pool, as kvprefixd --backend cuda keeps them */
	rc = kvp_pool_create(2 * x.nb_set, &pool);
	if (rc == 0)
		rc = kvp_pool_attach_device(pool, bb);
	if (rc < 0) {
		fprintf(stderr, PROG " engine: %u KV blocks of %zu bytes on the device: %s (%s)\n",
			2 * x.nb_set, bb, kvp_strerror(rc), kvp_device_last_error());
		goto out;
	}
	for (uint32_t i = 0; i < 2 * x.nb_set; i++) {
		uint32_t id;

		if (kvp_pool_alloc(pool, &id) < 0) {
			fprintf(stderr, PROG " engine: pool: no free block\n");
			goto out;
		}
		x.blocks[i] = kvp_pool_block_data(pool, id);
	}

	for (int si = 0; si < CUDA_N_SIZES; si++) {
		const uint32_t n = cuda_prefill_sizes[si];

		res->runs[si] = quick ? (si == 0 ? 2 : 1) : (si == 0 ? 5 : 3);
		if (eng_prefill(&x, n, 1, res->runs[si], rates, NULL, 100 + 100 * (uint64_t)si) < 0)
			goto out;
		res->flops[si] = prefill_flops(&m->cfg, n);
		for (int r = 0; r < res->runs[si]; r++)
			f[r] = res->flops[si] / ((double)n / rates[r]) / 1e12;
		res->pf_best[si] = best_of(rates, (size_t)res->runs[si]);
		res->pf_med[si] = median_of(rates, (size_t)res->runs[si]);
		res->tflops_best[si] = best_of(f, (size_t)res->runs[si]);
		res->tflops_med[si] = median_of(f, (size_t)res->runs[si]);
		if (res->dev.f16_tflops > 0) {
			res->frac_best[si] = res->tflops_best[si] / res->dev.f16_tflops;
			res->frac_med[si] = res->tflops_med[si] / res->dev.f16_tflops;
		}
	}
	res->decode_runs = quick ? 1 : 3;
	res->decode_prompt = 512;
	res->decode_steps = 128;
	for (int i = 0; i < res->decode_runs; i++)
		if (eng_decode(&x, res->decode_prompt, res->decode_steps, &rdec[i],
			       300 + (uint64_t)i) < 0)
			goto out;
	res->dec_best = best_of(rdec, (size_t)res->decode_runs);
	res->dec_med = median_of(rdec, (size_t)res->decode_runs);
	res->ttft_reps = quick ? 3 : 5;
	if (eng_cuda_ttft(&x, block, res) < 0)
		goto out;
	ret = 0;
out:
	free(x.tokens);
	free(x.scratch);
	free(x.logits);
	free(x.blocks);
	kvp_pool_destroy(pool);
	kvp_engine_destroy(x.e);
	kvp_model_free(m);
	return ret;
}

/* ---- engine (b): TTFT cached vs cold through the daemon ------------------------- */

struct eng_ttft {
	int reps;
	uint32_t prompt, prefix;
	double cached_us[8], cold_us[8], prefix_us[8];
	uint32_t cached_tokens[8], cold_cached_tokens[8];
	double cached_med_us, cold_med_us, prefix_med_us;
	double ratio;            /* median over the repetitions of cold / cached */
	double ratio_of_medians;
	bool cached_ok;          /* every cached request found the whole prefix */
};

static int bench_ttft(struct kvp_client *c, uint32_t vocab, uint32_t block, bool quick,
		      struct eng_ttft *res)
{
	const uint32_t n = TTFT_PREFIX + TTFT_SUFFIX;
	const uint32_t want = TTFT_PREFIX / block * block;
	uint32_t warm[256 + TTFT_SUFFIX], p[TTFT_PREFIX + TTFT_SUFFIX];
	struct kvp_usage u;
	double a[8];

	memset(res, 0, sizeof(*res));
	res->reps = quick ? 3 : 5;
	res->prompt = n;
	res->prefix = TTFT_PREFIX;
	res->cached_ok = true;
	/* warm-up: both kinds of request once (the first of a kind after the daemon
	 * started runs slower: pages of the pool and of the engine touched first) */
	rand_tokens(warm, 256 + TTFT_SUFFIX, 0x77A2, vocab);
	if (generate(PROG " engine", c, warm, 256, 1, NULL, &u, "warm-up") < 0 ||
	    generate(PROG " engine", c, warm, 256 + TTFT_SUFFIX, 1, NULL, &u, "warm-up") < 0)
		return -1;
	for (int r = 0; r < res->reps; r++) {
		/* the prefix alone, so that its 2,000 tokens (full blocks) are cached */
		rand_tokens(p, TTFT_PREFIX, 0x1000 + (uint64_t)r, vocab);
		rand_tokens(p + TTFT_PREFIX, TTFT_SUFFIX, 0x2000 + (uint64_t)r, vocab);
		if (generate(PROG " engine", c, p, TTFT_PREFIX, 1, NULL, &u, "prefix") < 0)
			return -1;
		res->prefix_us[r] = (double)u.ttft_us;
		/* the same prefix and a suffix: only the suffix is computed */
		if (generate(PROG " engine", c, p, n, 1, NULL, &u, "cached prompt") < 0)
			return -1;
		res->cached_us[r] = (double)u.ttft_us;
		res->cached_tokens[r] = u.cached_tokens;
		if (u.cached_tokens < want)
			res->cached_ok = false;
		/* a new random prefix, the same suffix: nothing is cached */
		rand_tokens(p, TTFT_PREFIX, 0x3000 + (uint64_t)r, vocab);
		if (generate(PROG " engine", c, p, n, 1, NULL, &u, "cold prompt") < 0)
			return -1;
		res->cold_us[r] = (double)u.ttft_us;
		res->cold_cached_tokens[r] = u.cached_tokens;
		fprintf(stderr, "engine: TTFT %u tokens: cached %u tokens %.1f ms, cold (%u "
			"cached) %.1f ms: %.1fx\n", n, res->cached_tokens[r],
			res->cached_us[r] / 1e3, res->cold_cached_tokens[r], res->cold_us[r] / 1e3,
			res->cold_us[r] / res->cached_us[r]);
	}
	memcpy(a, res->cached_us, sizeof(a));
	res->cached_med_us = median_of(a, (size_t)res->reps);
	memcpy(a, res->cold_us, sizeof(a));
	res->cold_med_us = median_of(a, (size_t)res->reps);
	memcpy(a, res->prefix_us, sizeof(a));
	res->prefix_med_us = median_of(a, (size_t)res->reps);
	res->ratio_of_medians = res->cold_med_us / res->cached_med_us;
	/* each repetition's pair ran back to back, on the same machine state */
	for (int r = 0; r < res->reps; r++)
		a[r] = res->cold_us[r] / res->cached_us[r];
	res->ratio = median_of(a, (size_t)res->reps);
	return 0;
}

/* ---- engine (c): many shared prefixes, interleaved ------------------------------- */

struct eng_work {
	uint32_t requests, prefixes, prefix;
	uint64_t prompt_tokens, cached_tokens;
	double hit_rate;
	uint32_t after_first, after_first_hit;
	uint32_t n_hit, n_miss;
	double hit_mean_us, hit_p99_us, miss_mean_us, miss_p99_us;
	double elapsed_s;
	double evictions;        /* the daemon's counter at the end, NAN if unknown */
};

static double stats_number(struct kvp_client *c, const char *key)
{
	char *js = NULL;
	double v = NAN;
	cJSON *o, *it;

	if (kvp_client_stats(c, &js) < 0)
		return NAN;
	o = cJSON_Parse(js);
	it = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
	if (cJSON_IsNumber(it))
		v = it->valuedouble;
	cJSON_Delete(o);
	free(js);
	return v;
}

static int bench_workload(struct kvp_client *c, uint32_t vocab, uint32_t block,
			  uint32_t requests, struct eng_work *res)
{
	const uint32_t pl = TTFT_PREFIX, maxs = 50;
	uint32_t *prefixes = malloc((size_t)WORK_PREFIXES * pl * sizeof(uint32_t));
	uint32_t *p = malloc((pl + maxs) * sizeof(uint32_t));
	double *hit = calloc(requests, sizeof(double)), *miss = calloc(requests, sizeof(double));
	uint64_t t0;
	int ret = -1;

	memset(res, 0, sizeof(*res));
	res->requests = requests;
	res->prefixes = WORK_PREFIXES;
	res->prefix = pl;
	if (!prefixes || !p || !hit || !miss) {
		fprintf(stderr, PROG " engine: out of memory\n");
		goto out;
	}
	for (uint32_t k = 0; k < WORK_PREFIXES; k++)
		rand_tokens(prefixes + (size_t)k * pl, pl, 0x5000 + k, vocab);
	t0 = kvp_tool_now_ns();
	for (uint32_t i = 0; i < requests; i++) {
		uint32_t k = i % WORK_PREFIXES;
		uint32_t sl = 10 + (uint32_t)(kvp_splitmix64(0x6000 + i) % 41);   /* 10..50 */
		struct kvp_usage u;
		char what[48];
		bool is_hit;

		memcpy(p, prefixes + (size_t)k * pl, pl * sizeof(uint32_t));
		rand_tokens(p + pl, sl, 0x7000 + i, vocab);
		snprintf(what, sizeof(what), "request %u", i + 1);
		if (generate(PROG " engine", c, p, pl + sl, WORK_MAX_NEW, NULL, &u, what) < 0)
			goto out;
		res->prompt_tokens += u.prompt_tokens;
		res->cached_tokens += u.cached_tokens;
		is_hit = u.cached_tokens + block >= pl;   /* cached >= 2000 - block */
		if (i >= WORK_PREFIXES) {
			res->after_first++;
			res->after_first_hit += is_hit;
		}
		if (is_hit)
			hit[res->n_hit++] = (double)u.ttft_us;
		else
			miss[res->n_miss++] = (double)u.ttft_us;
		if ((i + 1) % 25 == 0 || i + 1 == requests)
			fprintf(stderr, "engine: workload %u/%u requests, hit rate %.3f, %.1f s\n",
				i + 1, requests,
				(double)res->cached_tokens / (double)res->prompt_tokens,
				(double)(kvp_tool_now_ns() - t0) / 1e9);
	}
	res->elapsed_s = (double)(kvp_tool_now_ns() - t0) / 1e9;
	res->hit_rate = (double)res->cached_tokens / (double)res->prompt_tokens;
	res->hit_mean_us = mean_of(hit, res->n_hit);
	res->hit_p99_us = p99_of(hit, res->n_hit);
	res->miss_mean_us = mean_of(miss, res->n_miss);
	res->miss_p99_us = p99_of(miss, res->n_miss);
	res->evictions = stats_number(c, "evictions");
	ret = 0;
out:
	free(miss);
	free(hit);
	free(p);
	free(prefixes);
	return ret;
}

/* ---- engine: command ----------------------------------------------------------- */

static void usage_engine(FILE *f)
{
	fprintf(f,
		"Usage: kvprefix-bench engine [--backend cpu|cuda] [--model FILE] [--threads N]\n"
		"                             [--kv-dtype f32|f16] [--block-tokens N]\n"
		"                             [--max-batch N] [--socket PATH] [--pool-mb MB]\n"
		"                             [--quick]\n"
		"Measure the transformer engine and what the prefix cache saves:\n"
		"  (a) in process (kvp_engine_forward over host blocks): cold prefill tokens/s\n"
		"      at 512 and 2,048 tokens, decode tokens/s (128 steps after 512 tokens),\n"
		"      and the GFLOP/s of the 512-token prefill against this machine's peak FMA\n"
		"      GFLOP/s on the engine's threads, measured around each run (target:\n"
		"      median >= %.0f%% at f32, 2 threads);\n"
		"  (b) through kvprefixd: TTFT of a %u-token prompt whose first %u tokens are\n"
		"      cached vs the same-length prompt cold, back to back (target: median\n"
		"      cold/cached >= %.0fx);\n"
		"  (c) %u distinct %u-token prefixes, %u requests interleaved (request i: prefix\n"
		"      i %% %u + a unique 10-50-token suffix, %u greedy tokens): token hit rate,\n"
		"      whether every request after the first of its prefix hit, and the mean\n"
		"      and p99 TTFT of hits and misses.\n"
		"With --backend cuda, (a) runs the engine on CUDA device 0 with KV f16 in device\n"
		"blocks (kvp_pool_attach_device) instead: cold prefill tokens/s at 512, 2,048 and\n"
		"8,192 tokens and the TFLOP/s each achieves against the device's f16 tensor-core\n"
		"peak (kvp_device_info.f16_tflops; target: median >= %.0f%% at 8,192 tokens),\n"
		"decode tokens/s (128 steps after 512 tokens), and the TTFT of an 8,192-token\n"
		"prompt with %u%% of it cached vs cold; the CPU's peak FMA measurement is not\n"
		"made. FLOPs are counted as 2 per weight of the layer matrices per token, 4 x\n"
		"head_dim per head per causal (query, key) pair for attention, and the output\n"
		"head once (the last row). (b) and (c) start kvprefixd with --backend cuda.\n"
		"\n"
		"  -B, --backend B         cpu (default) or cuda: the engine in process and in\n"
		"                          the daemon this command starts (--backend cuda needs\n"
		"                          a CUDA build and device; KV is f16 on it)\n"
		"  -m, --model FILE        GGUF model (default: make a random model with\n"
		"                          kvprefix-mkmodel in a temporary directory: for cpu the\n"
		"                          default one, f32; for cuda a ~1.2B one, f16, dim 2048,\n"
		"                          16 layers, 32 heads (8 kv), ffn 8192, context 16384)\n"
		"  -t, --threads N         compute threads, in process and in the daemon\n"
		"                          (default: all online CPUs, here %d)\n"
		"  -k, --kv-dtype T        f32 (default) or f16; cuda: f16 only (its default)\n"
		"  -b, --block-tokens N    tokens a block (default 16)\n"
		"      --max-batch N       rows one internal step computes in process (default\n"
		"                          %u, as kvprefixd uses)\n"
		"  -s, --socket PATH       use this running kvprefixd (engine mode) for (b) and\n"
		"                          (c) instead of starting one with the model; it must\n"
		"                          serve the same model, and its own options apply\n"
		"      --pool-mb MB        KV pool of the daemon this command starts (default\n"
		"                          1024; with --backend cuda 4096, on the GPU)\n"
		"  -q, --quick             a smoke run: fewer repetitions, %u requests in (c)\n"
		"  -h, --help              show this help\n"
		"\n"
		"Progress goes to stderr; stdout gets a table, then one JSON line with every\n"
		"figure. With the default model on 2 cores the full run takes about 30 s\n"
		"(longer on a slower machine; under 3 minutes), --quick about 12 s. The default\n"
		"model of --backend cuda takes ~2.4 GB in the temporary directory and ~20 s to\n"
		"write.\n",
		TARGET_PEAK_FRACTION * 100, TTFT_PREFIX + TTFT_SUFFIX, TTFT_PREFIX,
		TARGET_TTFT_RATIO, WORK_PREFIXES, TTFT_PREFIX, WORK_REQUESTS, WORK_PREFIXES,
		WORK_MAX_NEW, TARGET_GPU_FRACTION * 100, CUDA_TTFT_CACHED_PCT, online_cpus(),
		ENGINE_MAX_BATCH, WORK_REQUESTS_QUICK);
}

/* Make the default model of the backend into dir/default.gguf with kvprefix-mkmodel. */
static int make_default_model(const char *dir, enum kvp_backend backend, char *out, size_t cap)
{
	char bin[PATH_MAX];
	pid_t pid;
	int st;

	if (find_tool("engine", "kvprefix-mkmodel", "bin", bin, sizeof(bin)) < 0) {
		fprintf(stderr, PROG " engine: or pass --model FILE\n");
		return -1;
	}
	snprintf(out, cap, "%s/default.gguf", dir);
	fprintf(stderr, "engine: %s --out %s (%s)\n", bin, out,
		backend == KVP_BACKEND_CUDA ? "a ~1.2B model, f16, for --backend cuda"
					    : "the default model, f32");
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		fprintf(stderr, PROG " engine: fork: %s\n", strerror(errno));
		return -1;
	}
	if (pid == 0) {
		char *const args[] = { bin, "--out", out, "--dtype", "f32", "--quiet", NULL };
		char *const gpu[] = { bin, "--out", out, "--dim", "2048", "--layers", "16",
				      "--heads", "32", "--kv-heads", "8", "--ffn", "8192",
				      "--ctx", "16384", "--dtype", "f16", "--quiet", NULL };

		dup2(STDERR_FILENO, STDOUT_FILENO);
		execv(bin, backend == KVP_BACKEND_CUDA ? gpu : args);
		fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
		_exit(127);
	}
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, PROG " engine: %s failed\n", bin);
		return -1;
	}
	return 0;
}

/* (a) on the CPU as JSON fields of j. */
static void json_engine_cpu(cJSON *j, const struct eng_inproc *a, bool peak_met)
{
	cJSON_AddNumberToObject(j, "prefill_512_tps_best", a->pf512_best);
	cJSON_AddNumberToObject(j, "prefill_512_tps_median", a->pf512_med);
	cJSON_AddNumberToObject(j, "prefill_2048_tps_best", a->pf2048_best);
	cJSON_AddNumberToObject(j, "prefill_2048_tps_median", a->pf2048_med);
	cJSON_AddNumberToObject(j, "decode_tps_best", a->dec_best);
	cJSON_AddNumberToObject(j, "decode_tps_median", a->dec_med);
	cJSON_AddNumberToObject(j, "decode_prompt_tokens", a->decode_prompt);
	cJSON_AddNumberToObject(j, "decode_steps", a->decode_steps);
	cJSON_AddNumberToObject(j, "suffix_50_after_2000_ms_median", a->suffix_ms_med);
	cJSON_AddNumberToObject(j, "cold_2050_ms", a->cold2050_ms);
	cJSON_AddNumberToObject(j, "prefill_512_gflop", a->flops_512 / 1e9);
	cJSON_AddNumberToObject(j, "prefill_512_gflops_best", a->gflops_best);
	cJSON_AddNumberToObject(j, "prefill_512_gflops_median", a->gflops_med);
	cJSON_AddNumberToObject(j, "peak_gflops", a->peak_gflops);
	cJSON_AddNumberToObject(j, "peak_fraction_best", a->frac_best);
	cJSON_AddNumberToObject(j, "peak_fraction_median", a->frac_med);
	cJSON_AddNumberToObject(j, "peak_fraction_target", TARGET_PEAK_FRACTION);
	cJSON_AddBoolToObject(j, "peak_fraction_met", peak_met);
}

/* (a) on CUDA as JSON fields of j (what memory allows, as cJSON does). */
static void json_engine_cuda(cJSON *j, const struct eng_cuda *cu, bool peak_met)
{
	const int ts = CUDA_TARGET_SIZE;
	cJSON *p, *e;

	cJSON_AddStringToObject(j, "device", cu->dev.name);
	cJSON_AddNumberToObject(j, "sm", cu->dev.sm_major * 10 + cu->dev.sm_minor);
	cJSON_AddNumberToObject(j, "f16_peak_tflops", cu->dev.f16_tflops);
	cJSON_AddNumberToObject(j, "max_batch", cu->max_batch);
	p = cJSON_AddArrayToObject(j, "prefill");
	for (int si = 0; p && si < CUDA_N_SIZES; si++) {
		e = cJSON_CreateObject();
		if (!e || !cJSON_AddItemToArray(p, e)) {
			cJSON_Delete(e);
			break;
		}
		cJSON_AddNumberToObject(e, "tokens", cuda_prefill_sizes[si]);
		cJSON_AddNumberToObject(e, "runs", cu->runs[si]);
		cJSON_AddNumberToObject(e, "tps_best", cu->pf_best[si]);
		cJSON_AddNumberToObject(e, "tps_median", cu->pf_med[si]);
		cJSON_AddNumberToObject(e, "tflop", cu->flops[si] / 1e12);
		cJSON_AddNumberToObject(e, "tflops_best", cu->tflops_best[si]);
		cJSON_AddNumberToObject(e, "tflops_median", cu->tflops_med[si]);
		cJSON_AddNumberToObject(e, "peak_fraction_best", cu->frac_best[si]);
		cJSON_AddNumberToObject(e, "peak_fraction_median", cu->frac_med[si]);
	}
	cJSON_AddNumberToObject(j, "decode_tps_best", cu->dec_best);
	cJSON_AddNumberToObject(j, "decode_tps_median", cu->dec_med);
	cJSON_AddNumberToObject(j, "decode_prompt_tokens", cu->decode_prompt);
	cJSON_AddNumberToObject(j, "decode_steps", cu->decode_steps);
	cJSON_AddNumberToObject(j, "ttft_prompt_tokens", cu->ttft_prompt);
	cJSON_AddNumberToObject(j, "ttft_cached_tokens", cu->ttft_cached);
	cJSON_AddNumberToObject(j, "ttft_reps", cu->ttft_reps);
	cJSON_AddNumberToObject(j, "ttft_cold_ms_median", cu->ttft_cold_ms);
	cJSON_AddNumberToObject(j, "ttft_cached_ms_median", cu->ttft_cached_ms);
	cJSON_AddNumberToObject(j, "ttft_ratio", cu->ttft_ratio);
	cJSON_AddNumberToObject(j, "ttft_logit_diff", cu->ttft_logit_diff);
	cJSON_AddNumberToObject(j, "peak_fraction_target", TARGET_GPU_FRACTION);
	cJSON_AddNumberToObject(j, "peak_fraction_target_tokens", cuda_prefill_sizes[ts]);
	cJSON_AddBoolToObject(j, "peak_fraction_met", peak_met);
}

/* (a) on the CPU, as a table on stdout. */
static void print_engine_cpu(const struct eng_inproc *a, uint64_t threads,
			     enum kvp_kv_dtype dtype, uint64_t block, bool quick, bool peak_met)
{
	printf("kvprefix-bench engine: %s (%.1fM parameters, dim %u, %u layers, %u heads "
	       "(%u kv), ffn %u, vocab %u)\n", a->name, (double)a->n_params / 1e6, a->dim,
	       a->n_layers, a->n_heads, a->n_kv_heads, a->ffn, a->vocab);
	printf("  threads %" PRIu64 ", KV %s, %" PRIu64 "-token blocks (%zu bytes), kernels %s"
	       "%s\n\n", threads, dtype == KVP_KV_F32 ? "f32" : "f16", block, a->block_bytes,
	       a->isa, quick ? ", --quick" : "");
	printf("(a) in process, kvp_engine_forward over host blocks\n");
	printf("  %-34s %12s %12s %5s\n", "", "best", "median", "runs");
	printf("  %-34s %8.0f t/s %8.0f t/s %5d\n", "prefill 512 tokens (cold)",
	       a->pf512_best, a->pf512_med, a->prefill_runs_512);
	printf("  %-34s %8.0f t/s %8.0f t/s %5d\n", "prefill 2048 tokens (cold)",
	       a->pf2048_best, a->pf2048_med, a->prefill_runs_2048);
	printf("  %-34s %8.1f t/s %8.1f t/s %5d\n", "decode 128 steps after 512 tokens",
	       a->dec_best, a->dec_med, a->decode_runs);
	printf("  %-34s %8.1f ms (%u tokens cold: %.1f ms, %.1fx)\n",
	       "50 tokens after 2000 cached", a->suffix_ms_med, TTFT_PREFIX + TTFT_SUFFIX,
	       a->cold2050_ms, a->cold2050_ms / a->suffix_ms_med);
	printf("  512-token prefill: %.2f GFLOP, %.1f GFLOP/s best, %.1f median\n",
	       a->flops_512 / 1e9, a->gflops_best, a->gflops_med);
	printf("  peak FMA of the engine's thread pool (%" PRIu64 "): %.1f GFLOP/s (median; "
	       "measured around each run)\n", threads, a->peak_gflops);
	printf("  run / its peak: %.1f%% best, %.1f%% median; target >= %.0f%% (median, "
	       "f32, 2 threads): %s%s\n\n", a->frac_best * 100, a->frac_med * 100,
	       TARGET_PEAK_FRACTION * 100, peak_met ? "met" : "MISSED",
	       dtype != KVP_KV_F32 || threads != 2 ? " (not the target's setting)" : "");
}

/* (a) on CUDA, as a table on stdout. */
static void print_engine_cuda(const struct eng_inproc *a, const struct eng_cuda *cu,
			      uint64_t block, bool quick, bool peak_met)
{
	const int ts = CUDA_TARGET_SIZE;

	printf("kvprefix-bench engine: %s (%.1fM parameters, dim %u, %u layers, %u heads "
	       "(%u kv), ffn %u, vocab %u)\n", a->name, (double)a->n_params / 1e6, a->dim,
	       a->n_layers, a->n_heads, a->n_kv_heads, a->ffn, a->vocab);
	printf("  backend cuda: %s (sm_%d%d, %d SMs, %.1f GiB), KV f16, %" PRIu64 "-token "
	       "blocks (%zu bytes), max_batch %u%s\n\n", cu->dev.name, cu->dev.sm_major,
	       cu->dev.sm_minor, cu->dev.sm_count, (double)cu->dev.mem_total / 1073741824.0,
	       block, a->block_bytes, cu->max_batch, quick ? ", --quick" : "");
	printf("(a) in process, kvp_engine_forward over device blocks (kvp_pool_attach_device)\n");
	printf("  %-34s %12s %12s %5s %14s %9s\n", "", "best", "median", "runs",
	       "TFLOP/s (med)", "of peak");
	for (int si = 0; si < CUDA_N_SIZES; si++) {
		char what[64];

		snprintf(what, sizeof(what), "prefill %u tokens (cold)", cuda_prefill_sizes[si]);
		printf("  %-34s %8.0f t/s %8.0f t/s %5d %14.1f %8.1f%%\n", what, cu->pf_best[si],
		       cu->pf_med[si], cu->runs[si], cu->tflops_med[si], cu->frac_med[si] * 100);
	}
	printf("  %-34s %8.1f t/s %8.1f t/s %5d\n", "decode 128 steps after 512 tokens",
	       cu->dec_best, cu->dec_med, cu->decode_runs);
	printf("  TTFT, %u-token prompt: cold %.1f ms; %u tokens (%u%%) cached, %u computed "
	       "%.1f ms: %.1fx\n  (medians of %d pairs; cold/cached the median of the pairs' "
	       "ratios; logits of the pair agree within %.2g of max |logit|)\n",
	       cu->ttft_prompt, cu->ttft_cold_ms, cu->ttft_cached, CUDA_TTFT_CACHED_PCT,
	       cu->ttft_prompt - cu->ttft_cached, cu->ttft_cached_ms, cu->ttft_ratio, cu->ttft_reps,
	       cu->ttft_logit_diff);
	printf("  FLOPs counted: 2 per layer-matrix weight per token (q, k, v, o, gate, up, "
	       "down),\n  4 x head_dim per head per causal (query, key) pair (QK^T and PV), the "
	       "output head\n  for the last row; %u tokens: %.2f TFLOP\n",
	       cuda_prefill_sizes[ts], cu->flops[ts] / 1e12);
	printf("  f16 tensor-core peak of the device: %.1f TFLOP/s (kvp_device_info.f16_tflops)\n",
	       cu->dev.f16_tflops);
	if (cu->dev.f16_tflops > 0)
		printf("  prefill %u tokens / peak: %.1f%% best, %.1f%% median; target >= %.0f%% "
		       "(median): %s\n\n", cuda_prefill_sizes[ts], cu->frac_best[ts] * 100,
		       cu->frac_med[ts] * 100, TARGET_GPU_FRACTION * 100,
		       peak_met ? "met" : "MISSED");
	else
		printf("  prefill %u tokens: the peak of sm_%d%d is not in the table; target >= "
		       "%.0f%% of peak: not judged\n\n", cuda_prefill_sizes[ts], cu->dev.sm_major,
		       cu->dev.sm_minor, TARGET_GPU_FRACTION * 100);
}

static int cmd_engine(int argc, char **argv)
{
	enum { O_POOL = 256, O_MAX_BATCH };
	static const struct option opts[] = {
		{ "backend", required_argument, NULL, 'B' },
		{ "model", required_argument, NULL, 'm' },
		{ "threads", required_argument, NULL, 't' },
		{ "kv-dtype", required_argument, NULL, 'k' },
		{ "block-tokens", required_argument, NULL, 'b' },
		{ "socket", required_argument, NULL, 's' },
		{ "pool-mb", required_argument, NULL, O_POOL },
		{ "max-batch", required_argument, NULL, O_MAX_BATCH },
		{ "quick", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *model = NULL, *sock = NULL;
	uint64_t threads = (uint64_t)online_cpus(), block = 16, pool_mb = 1024;
	uint64_t max_batch = ENGINE_MAX_BATCH;
	enum kvp_kv_dtype dtype = KVP_KV_F32;
	enum kvp_backend backend = KVP_BACKEND_CPU;
	bool quick = false, dtype_given = false, pool_given = false, peak_met, ttft_met;
	char tmpdir[64] = "", model_buf[PATH_MAX];
	struct own_daemon d = { 0 };
	struct kvp_server_info info;
	struct kvp_client *c = NULL;
	struct eng_inproc a;
	struct eng_cuda cu;
	struct eng_ttft b;
	struct eng_work w;
	uint64_t t_start = kvp_tool_now_ns();
	cJSON *o = NULL, *j;
	int opt, ret = KVP_EXIT_FAIL;

	optind = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":B:m:t:k:b:s:qh", opts, NULL)) != -1) {
		switch (opt) {
		case 'B':
			if (strcmp(optarg, "cpu") == 0) {
				backend = KVP_BACKEND_CPU;
			} else if (strcmp(optarg, "cuda") == 0) {
				backend = KVP_BACKEND_CUDA;
			} else {
				fprintf(stderr, PROG " engine: --backend '%s': want cpu or cuda\n",
					optarg);
				return KVP_EXIT_USAGE;
			}
			break;
		case 'm': model = optarg; break;
		case 's': sock = optarg; break;
		case 'q': quick = true; break;
		case 't':
			if (!kvp_tool_parse_u64(optarg, 1, 1024, &threads)) {
				fprintf(stderr, PROG " engine: --threads '%s': want 1..1024\n", optarg);
				return KVP_EXIT_USAGE;
			}
			break;
		case 'b':
			if (!kvp_tool_parse_u64(optarg, 1, KVP_BLOCK_TOKENS_MAX, &block)) {
				fprintf(stderr, PROG " engine: --block-tokens '%s': want 1..%u\n",
					optarg, KVP_BLOCK_TOKENS_MAX);
				return KVP_EXIT_USAGE;
			}
			break;
		case O_MAX_BATCH:
			if (!kvp_tool_parse_u64(optarg, 1, 1u << 16, &max_batch)) {
				fprintf(stderr, PROG " engine: --max-batch '%s': want 1..65536\n",
					optarg);
				return KVP_EXIT_USAGE;
			}
			break;
		case O_POOL:
			pool_given = true;
			if (!kvp_tool_parse_u64(optarg, 1, 1u << 24, &pool_mb)) {
				fprintf(stderr, PROG " engine: --pool-mb '%s': want 1..16777216\n",
					optarg);
				return KVP_EXIT_USAGE;
			}
			break;
		case 'k':
			dtype_given = true;
			if (strcmp(optarg, "f32") == 0) {
				dtype = KVP_KV_F32;
			} else if (strcmp(optarg, "f16") == 0) {
				dtype = KVP_KV_F16;
			} else {
				fprintf(stderr, PROG " engine: --kv-dtype '%s': want f32 or f16\n",
					optarg);
				return KVP_EXIT_USAGE;
			}
			break;
		case 'h': usage_engine(stdout); return KVP_EXIT_OK;
		default: return bad_option("engine", argv, opt);
		}
	}
	if (optind < argc) {
		fprintf(stderr, PROG " engine: unexpected argument '%s'\n"
			"Try '" PROG " engine --help'.\n", argv[optind]);
		return KVP_EXIT_USAGE;
	}
	if (backend == KVP_BACKEND_CUDA) {
		if (dtype_given && dtype != KVP_KV_F16) {
			fprintf(stderr, PROG " engine: --backend cuda keeps KV in f16; "
				"--kv-dtype f32 is for the CPU\n");
			return KVP_EXIT_USAGE;
		}
		dtype = KVP_KV_F16;
		/* the default cuda model's blocks are twice the CPU one's: (c)'s prefixes fit */
		if (!pool_given)
			pool_mb = 4096;
	}
	if (!model) {
		snprintf(tmpdir, sizeof(tmpdir), "/tmp/kvprefix-bench-model-XXXXXX");
		if (!mkdtemp(tmpdir)) {
			fprintf(stderr, PROG " engine: mkdtemp: %s\n", strerror(errno));
			tmpdir[0] = '\0';
			goto out;
		}
		if (make_default_model(tmpdir, backend, model_buf, sizeof(model_buf)) < 0)
			goto out;
		model = model_buf;
	}

	/* (a) */
	if (backend == KVP_BACKEND_CUDA) {
		if (bench_engine_cuda(model, (uint32_t)block, (uint32_t)max_batch, quick, &a,
				      &cu) < 0)
			goto out;
		peak_met = cu.frac_med[CUDA_TARGET_SIZE] >= TARGET_GPU_FRACTION;
		print_engine_cuda(&a, &cu, block, quick, peak_met);
	} else {
		if (bench_engine_inproc(model, (int)threads, dtype, (uint32_t)block,
					(uint32_t)max_batch, quick, &a) < 0)
			goto out;
		peak_met = a.frac_med >= TARGET_PEAK_FRACTION;
		print_engine_cpu(&a, threads, dtype, block, quick, peak_met);
	}
	fflush(stdout);

	/* (b), (c): through a daemon */
	if (!sock) {
		char th[16], bt[16], pm[16];
		const char *args[] = { "--model", model, "--backend", kvp_backend_name(backend),
				       "--threads", th, "--block-tokens", bt,
				       "--kv-dtype", dtype == KVP_KV_F32 ? "f32" : "f16",
				       "--pool-mb", pm, NULL };

		snprintf(th, sizeof(th), "%" PRIu64, threads);
		snprintf(bt, sizeof(bt), "%" PRIu64, block);
		snprintf(pm, sizeof(pm), "%" PRIu64, pool_mb);
		if (start_daemon(&d, "engine", args, ENGINE_DAEMON_WAIT_MS) < 0)
			goto out;
		sock = d.sock;
	}
	if (connect_engine(PROG " engine", sock, &c, &info) < 0)
		goto out;
	if (info.block_tokens != block)
		fprintf(stderr, "engine: note: the daemon uses %u-token blocks\n",
			info.block_tokens);
	if (bench_ttft(c, a.vocab, info.block_tokens, quick, &b) < 0)
		goto out;
	ttft_met = b.ratio >= TARGET_TTFT_RATIO;
	printf("(b) through kvprefixd (%s): TTFT of a %u-token prompt, max_new 1\n", sock,
	       b.prompt);
	printf("  %-42s %10.1f ms (cached %u tokens)\n", "first 2000 tokens cached",
	       b.cached_med_us / 1e3, b.cached_tokens[0]);
	printf("  %-42s %10.1f ms (cached %u tokens)\n", "cold (a different prefix)",
	       b.cold_med_us / 1e3, b.cold_cached_tokens[0]);
	printf("  %-42s %10.1f ms\n", "(the 2000-token prefix alone, cold)",
	       b.prefix_med_us / 1e3);
	printf("  medians of %d pairs run back to back; cold/cached %.1fx (median of the pairs' "
	       "ratios;\n  ratio of the medians %.1fx), target >= %.0fx: %s\n\n", b.reps, b.ratio,
	       b.ratio_of_medians, TARGET_TTFT_RATIO,
	       ttft_met && b.cached_ok ? "met" : "MISSED");
	fflush(stdout);

	if (bench_workload(c, a.vocab, info.block_tokens,
			   quick ? WORK_REQUESTS_QUICK : WORK_REQUESTS, &w) < 0)
		goto out;
	printf("(c) %u prefixes of %u tokens, %u requests interleaved (suffix 10-50 tokens, "
	       "max_new %u), %.1f s\n", w.prefixes, w.prefix, w.requests, WORK_MAX_NEW,
	       w.elapsed_s);
	printf("  hit rate %.4f (%" PRIu64 " cached of %" PRIu64 " prompt tokens)\n",
	       w.hit_rate, w.cached_tokens, w.prompt_tokens);
	printf("  requests after the first of their prefix that hit: %u of %u (%s)\n",
	       w.after_first_hit, w.after_first,
	       w.after_first_hit == w.after_first ? "all" : "NOT ALL");
	printf("  %-8s %6s %14s %14s\n", "", "count", "TTFT mean", "TTFT p99");
	printf("  %-8s %6u %11.1f ms %11.1f ms\n", "hits", w.n_hit, w.hit_mean_us / 1e3,
	       w.hit_p99_us / 1e3);
	printf("  %-8s %6u %11.1f ms %11.1f ms\n", "misses", w.n_miss, w.miss_mean_us / 1e3,
	       w.miss_p99_us / 1e3);
	if (!isnan(w.evictions))
		printf("  daemon evictions so far: %.0f\n", w.evictions);
	printf("  total %.1f s\n\n", (double)(kvp_tool_now_ns() - t_start) / 1e9);

	o = cJSON_CreateObject();
	if (!o)
		goto out_nomem;
	cJSON_AddStringToObject(o, "model", a.name);
	cJSON_AddStringToObject(o, "backend", kvp_backend_name(backend));
	cJSON_AddNumberToObject(o, "params", (double)a.n_params);
	cJSON_AddNumberToObject(o, "threads", (double)threads);
	cJSON_AddStringToObject(o, "kv_dtype", dtype == KVP_KV_F32 ? "f32" : "f16");
	cJSON_AddNumberToObject(o, "block_tokens", (double)block);
	cJSON_AddStringToObject(o, "isa", a.isa);
	cJSON_AddBoolToObject(o, "quick", quick);
	j = cJSON_AddObjectToObject(o, "inproc");
	if (!j)
		goto out_nomem;
	if (backend == KVP_BACKEND_CUDA)
		json_engine_cuda(j, &cu, peak_met);
	else
		json_engine_cpu(j, &a, peak_met);
	j = cJSON_AddObjectToObject(o, "ttft");
	if (!j)
		goto out_nomem;
	cJSON_AddNumberToObject(j, "prompt_tokens", b.prompt);
	cJSON_AddNumberToObject(j, "cached_prefix_tokens", b.prefix);
	cJSON_AddNumberToObject(j, "reps", b.reps);
	cJSON_AddNumberToObject(j, "cached_tokens", b.cached_tokens[0]);
	cJSON_AddNumberToObject(j, "cached_us_median", b.cached_med_us);
	cJSON_AddNumberToObject(j, "cold_us_median", b.cold_med_us);
	cJSON_AddNumberToObject(j, "prefix_cold_us_median", b.prefix_med_us);
	cJSON_AddNumberToObject(j, "ratio", b.ratio);
	cJSON_AddNumberToObject(j, "ratio_of_medians", b.ratio_of_medians);
	cJSON_AddNumberToObject(j, "target", TARGET_TTFT_RATIO);
	cJSON_AddBoolToObject(j, "met", ttft_met && b.cached_ok);
	j = cJSON_AddObjectToObject(o, "workload");
	if (!j)
		goto out_nomem;
	cJSON_AddNumberToObject(j, "requests", w.requests);
	cJSON_AddNumberToObject(j, "prefixes", w.prefixes);
	cJSON_AddNumberToObject(j, "prefix_tokens", w.prefix);
	cJSON_AddNumberToObject(j, "prompt_tokens", (double)w.prompt_tokens);
	cJSON_AddNumberToObject(j, "cached_tokens", (double)w.cached_tokens);
	cJSON_AddNumberToObject(j, "hit_rate", w.hit_rate);
	cJSON_AddNumberToObject(j, "after_first", w.after_first);
	cJSON_AddNumberToObject(j, "after_first_hit", w.after_first_hit);
	cJSON_AddBoolToObject(j, "all_hit", w.after_first_hit == w.after_first);
	cJSON_AddNumberToObject(j, "hits", w.n_hit);
	cJSON_AddNumberToObject(j, "misses", w.n_miss);
	cJSON_AddNumberToObject(j, "hit_ttft_us_mean", w.hit_mean_us);
	cJSON_AddNumberToObject(j, "hit_ttft_us_p99", w.hit_p99_us);
	cJSON_AddNumberToObject(j, "miss_ttft_us_mean", w.miss_mean_us);
	cJSON_AddNumberToObject(j, "miss_ttft_us_p99", w.miss_p99_us);
	cJSON_AddNumberToObject(j, "elapsed_s", w.elapsed_s);
	if (!isnan(w.evictions))
		cJSON_AddNumberToObject(j, "daemon_evictions", w.evictions);
	if (json_print_line(o))
		ret = KVP_EXIT_OK;
	goto out;

out_nomem:
	fprintf(stderr, PROG " engine: out of memory\n");
out:
	cJSON_Delete(o);
	kvp_client_close(c);
	if (d.pid > 0 || d.dir[0])
		stop_daemon(&d);
	if (tmpdir[0]) {
		if (model == model_buf)
			unlink(model_buf);
		rmdir(tmpdir);
	}
	return ret;
}

/* ---- chat: a multi-turn chat workload with a shared system prompt ----------------- */

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

static int cmd_chat(int argc, char **argv)
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
	const char *sock = NULL;
	uint64_t users = 3, turns = 3, sys_n = 512, user_n = 48, max_new = 32, vocab = 32000;
	uint64_t sum_prompt = 0, sum_cached = 0, sum_computed = 0, sum_gen = 0;
	struct kvp_tokvec *conv = NULL, answer = { 0 };
	struct kvp_server_info info;
	struct kvp_client *c = NULL;
	double ttft_first = NAN, ttft_rest = 0, elapsed;
	uint32_t n_rest = 0, first_cached = 0, *sys = NULL, *ut = NULL;
	uint64_t t0;
	cJSON *o = NULL;
	int opt, rc, ret = KVP_EXIT_FAIL;

	optind = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":s:u:n:h", opts, NULL)) != -1) {
		uint64_t *dst = NULL, lo = 1, hi = 1u << 20;
		const char *name = NULL;

		switch (opt) {
		case 's': sock = optarg; continue;
		case 'u': dst = &users; name = "--users"; hi = 256; break;
		case 'n': dst = &turns; name = "--turns"; hi = 256; break;
		case O_SYS: dst = &sys_n; name = "--system-tokens"; break;
		case O_USER: dst = &user_n; name = "--user-tokens"; break;
		case O_MAXNEW: dst = &max_new; name = "--max-new"; lo = 0; hi = 65536; break;
		case O_VOCAB: dst = &vocab; name = "--vocab"; lo = 2; hi = 1u << 24; break;
		case 'h': usage_chat(stdout); return KVP_EXIT_OK;
		default: return bad_option("chat", argv, opt);
		}
		if (!kvp_tool_parse_u64(optarg, lo, hi, dst)) {
			fprintf(stderr, PROG " chat: %s '%s': want %" PRIu64 "..%" PRIu64 "\n",
				name, optarg, lo, hi);
			return KVP_EXIT_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, PROG " chat: unexpected argument '%s'\n"
			"Try '" PROG " chat --help'.\n", argv[optind]);
		return KVP_EXIT_USAGE;
	}
	conv = calloc(users, sizeof(*conv));
	sys = malloc(sys_n * sizeof(*sys));
	ut = malloc(user_n * sizeof(*ut));
	if (!conv || !sys || !ut) {
		fprintf(stderr, PROG " chat: out of memory\n");
		goto out;
	}
	rand_tokens(sys, sys_n, 0xC4A7, (uint32_t)vocab);
	if (connect_engine(PROG " chat", sock, &c, &info) < 0)
		goto out;
	printf("kvprefix-bench chat: %" PRIu64 " users x %" PRIu64 " turns, system prompt %"
	       PRIu64 " tokens, %" PRIu64 " user tokens a turn, answers of %" PRIu64
	       " tokens\n", users, turns, sys_n, user_n, max_new);
	printf("daemon: model %s, %u-token blocks\n\n", info.name, info.block_tokens);
	printf("  %4s %4s %8s %8s %9s %9s %10s\n", "user", "turn", "prompt", "cached",
	       "computed", "generated", "TTFT");
	fflush(stdout);
	t0 = kvp_tool_now_ns();
	for (uint64_t t = 0; t < turns; t++) {
		for (uint64_t u = 0; u < users; u++) {
			struct kvp_tokvec *cv = &conv[u];
			struct kvp_usage us;
			char what[64];

			if (t == 0)
				for (uint64_t i = 0; i < sys_n; i++)
					if ((rc = kvp_tokvec_push(cv, sys[i])) < 0)
						goto out_rc;
			rand_tokens(ut, user_n, 0x10000 * (u + 1) + t, (uint32_t)vocab);
			for (uint64_t i = 0; i < user_n; i++)
				if ((rc = kvp_tokvec_push(cv, ut[i])) < 0)
					goto out_rc;
			answer.n = 0;
			snprintf(what, sizeof(what), "user %" PRIu64 " turn %" PRIu64, u + 1, t + 1);
			if (generate(PROG " chat", c, cv->v, cv->n, (uint32_t)max_new, &answer, &us,
				     what) < 0)
				goto out;
			printf("  %4" PRIu64 " %4" PRIu64 " %8u %8u %9u %9u %7.1f ms\n", u + 1,
			       t + 1, us.prompt_tokens, us.cached_tokens, us.computed_tokens,
			       us.generated_tokens, (double)us.ttft_us / 1e3);
			fflush(stdout);
			sum_prompt += us.prompt_tokens;
			sum_cached += us.cached_tokens;
			sum_computed += us.computed_tokens;
			sum_gen += us.generated_tokens;
			if (t == 0 && u == 0) {
				ttft_first = (double)us.ttft_us;
				first_cached = us.cached_tokens;
			} else {
				ttft_rest += (double)us.ttft_us;
				n_rest++;
			}
			/* the answer becomes part of the conversation */
			for (size_t i = 0; i < answer.n; i++)
				if ((rc = kvp_tokvec_push(cv, answer.v[i])) < 0)
					goto out_rc;
		}
	}
	elapsed = (double)(kvp_tool_now_ns() - t0) / 1e9;
	printf("\n  %" PRIu64 " requests in %.2f s: %" PRIu64 " prompt tokens, %" PRIu64
	       " cached, %" PRIu64 " computed; hit rate %.3f\n", users * turns, elapsed,
	       sum_prompt, sum_cached, sum_computed, (double)sum_cached / (double)sum_prompt);
	printf("  TTFT: user 1 turn 1 (%u tokens cached) %.1f ms, the others %.1f ms on "
	       "average\n\n", first_cached, ttft_first / 1e3,
	       n_rest ? ttft_rest / n_rest / 1e3 : NAN);
	o = cJSON_CreateObject();
	if (!o) {
		rc = KVP_ENOMEM;
		goto out_rc;
	}
	cJSON_AddNumberToObject(o, "users", (double)users);
	cJSON_AddNumberToObject(o, "turns", (double)turns);
	cJSON_AddNumberToObject(o, "requests", (double)(users * turns));
	cJSON_AddNumberToObject(o, "prompt_tokens", (double)sum_prompt);
	cJSON_AddNumberToObject(o, "cached_tokens", (double)sum_cached);
	cJSON_AddNumberToObject(o, "computed_tokens", (double)sum_computed);
	cJSON_AddNumberToObject(o, "generated_tokens", (double)sum_gen);
	cJSON_AddNumberToObject(o, "hit_rate", (double)sum_cached / (double)sum_prompt);
	cJSON_AddNumberToObject(o, "first_ttft_us", ttft_first);
	cJSON_AddNumberToObject(o, "first_cached_tokens", first_cached);
	if (n_rest)
		cJSON_AddNumberToObject(o, "other_ttft_us_mean", ttft_rest / n_rest);
	cJSON_AddNumberToObject(o, "elapsed_s", elapsed);
	if (json_print_line(o))
		ret = KVP_EXIT_OK;
	goto out;
out_rc:
	kvp_tool_perror(PROG " chat", "tokens", NULL, rc);
out:
	cJSON_Delete(o);
	kvp_client_close(c);
	for (uint64_t u = 0; conv && u < users; u++)
		kvp_tokvec_free(&conv[u]);
	kvp_tokvec_free(&answer);
	free(conv);
	free(ut);
	free(sys);
	return ret;
}

/* ---- load: many clients, a random mix of requests, for a while -------------------- */

/*
 * N client threads, each with its own connection, issue a seeded random mix of LOOKUP
 * (half of them pinned: the lease is held for a few requests, then RELEASEd), INSERT
 * (index-only daemons), GENERATE (engine daemons) and STATS for S seconds.
 *
 * Prompts: --prefixes shared prefixes (3/4 of the prompt) + one of --suffixes suffixes
 * per prefix (the rest), so that prefixes hit, whole prompts hit once they were seen,
 * and the distinct suffix blocks (8 x 4096 x 8 = 262,144 by default) roughly fill the
 * default pool. GENERATE prompts are the first --gen-prompt-tokens of the same
 * prompts (the same shape), so LOOKUPs hit what the engine cached.
 *
 *   thread i:  connect + HELLO | barrier | loop until S s: pick kind, time it, bucket it
 *   main:      barrier | every second: requests/s, errors, the daemon's RSS | join
 *              | STATS until the clients' connections are gone | report
 *
 * Latencies go into per-thread, per-kind log-bucket histograms (32 sub-buckets per
 * power of two: ~3% resolution), allocated once with the thread: no allocation per
 * request on the bench's side.
 */

#define LOAD_CLIENTS_MAX 1000u
#define LOAD_DURATION_MAX_S 86400.0
#define LOAD_LEASES_HELD 4u           /* a client's pinned leases before it releases */
#define LOAD_SETTLE_MS 5000           /* waiting for the daemon to see the clients go */
#define LOAD_CONNECT_RETRY_MS 100
#define LOAD_VOCAB_DEFAULT 32000u
#define LOAD_ERR_SLOTS 18             /* -status 0..16, then one for a failed check */
#define LOAD_ERR_CHECK (LOAD_ERR_SLOTS - 1)

#define HIST_SUB_BITS 5u
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_BUCKETS ((64u - HIST_SUB_BITS + 1u) * HIST_SUB)

enum load_kind { LK_LOOKUP, LK_PIN, LK_RELEASE, LK_INSERT, LK_GENERATE, LK_STATS, LK_N };
static const char *const load_kind_name[LK_N] = {
	"lookup", "lookup_pin", "release", "insert", "generate", "stats",
};

/* What --mix weighs: a LOOKUP is pinned (and later released) half of the time. */
enum load_mix { LM_LOOKUP, LM_INSERT, LM_GENERATE, LM_STATS, LM_N };
static const char *const load_mix_name[LM_N] = { "lookup", "insert", "generate", "stats" };

/* Latencies in ns: exact below HIST_SUB, then HIST_SUB buckets per power of two. */
struct load_hist {
	uint64_t b[HIST_BUCKETS];
	uint64_t n, sum_ns, max_ns;
};

static unsigned hist_index(uint64_t v)
{
	unsigned msb;

	if (v < HIST_SUB)
		return (unsigned)v;
	msb = 63u - (unsigned)__builtin_clzll(v);
	return (msb - HIST_SUB_BITS + 1u) * HIST_SUB +
	       (unsigned)((v >> (msb - HIST_SUB_BITS)) & (HIST_SUB - 1u));
}

/* The smallest value of bucket i, and its width. */
static void hist_bucket(unsigned i, uint64_t *lo, uint64_t *width)
{
	unsigned e = i / HIST_SUB, s = i % HIST_SUB;

	if (e == 0) {
		*lo = i;
		*width = 1;
		return;
	}
	*lo = (uint64_t)(HIST_SUB + s) << (e - 1u);
	*width = (uint64_t)1 << (e - 1u);
}

static inline void hist_add(struct load_hist *h, uint64_t ns)
{
	h->b[hist_index(ns)]++;
	h->n++;
	h->sum_ns += ns;
	if (ns > h->max_ns)
		h->max_ns = ns;
}

static void hist_merge(struct load_hist *dst, const struct load_hist *src)
{
	for (unsigned i = 0; i < HIST_BUCKETS; i++)
		dst->b[i] += src->b[i];
	dst->n += src->n;
	dst->sum_ns += src->sum_ns;
	if (src->max_ns > dst->max_ns)
		dst->max_ns = src->max_ns;
}

/* Quantile q in microseconds: the middle of the bucket holding rank ceil(q * n), at
 * most the largest value seen. 0 when empty. */
static double hist_quantile_us(const struct load_hist *h, double q)
{
	uint64_t rank, cum = 0, lo, w;
	double v;

	if (!h->n)
		return 0;
	rank = (uint64_t)ceil(q * (double)h->n);
	if (rank < 1)
		rank = 1;
	for (unsigned i = 0; i < HIST_BUCKETS; i++) {
		cum += h->b[i];
		if (cum < rank)
			continue;
		hist_bucket(i, &lo, &w);
		v = (double)lo + (double)(w - 1) / 2;
		if (v > (double)h->max_ns)
			v = (double)h->max_ns;
		return v / 1e3;
	}
	return (double)h->max_ns / 1e3;
}

/* What every client reads; written by main before the threads start. */
struct load_shared {
	const char *sock;
	double duration_s;
	uint32_t weight[LM_N], weight_sum;
	uint32_t prompt_tokens, prefix_tokens;          /* LOOKUP / INSERT prompts */
	uint32_t gen_prompt_tokens, gen_prefix_tokens;  /* GENERATE prompts */
	uint32_t n_prefixes, n_suffixes, vocab, max_new, timeout_ms;
	uint64_t seed;
	const uint32_t *prefixes;    /* n_prefixes x prefix_tokens */
	/* start: every client connects, then waits for go (1: run, -1: give up) */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	uint32_t ready;
	int go;
};

struct load_lease {
	uint64_t id;
	uint32_t n_blocks;
};

struct load_worker {
	/* read by the progress loop while the thread runs: on a line of their own */
	_Alignas(64) _Atomic uint64_t live_requests;
	_Atomic uint64_t live_errors;
	_Alignas(64) pthread_t th;
	uint32_t idx;
	struct load_shared *sh;
	struct kvp_client *c;
	uint64_t rng;
	uint32_t *prompt;            /* room for max(prompt_tokens, gen_prompt_tokens) */
	struct load_lease leases[LOAD_LEASES_HELD];
	uint32_t n_leases;
	uint64_t requests, errors, reconnects;
	uint64_t count[LK_N], kind_errors[LK_N];
	uint64_t err_by_status[LOAD_ERR_SLOTS];
	uint64_t query_tokens, hit_tokens;              /* LOOKUP */
	uint64_t gen_prompt, gen_cached, gen_tokens;    /* GENERATE */
	uint32_t gen_bad_tokens;                        /* set by the token callback */
	char first_error[256];
	struct load_hist hist[LK_N];
};

static uint64_t load_rand(struct load_worker *w)
{
	/* xorshift64* */
	uint64_t x = w->rng;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	w->rng = x;
	return x * 0x2545F4914F6CDD1Dull;
}

/* Count a failed call (status < 0) or a failed check (status 0, why set). */
static void load_error(struct load_worker *w, enum load_kind k, int status, const char *why)
{
	unsigned slot = status < 0 && -status < LOAD_ERR_CHECK ? (unsigned)-status
							       : LOAD_ERR_CHECK;

	w->errors++;
	if (k < LK_N)
		w->kind_errors[k]++;
	w->err_by_status[slot]++;
	atomic_store_explicit(&w->live_errors, w->errors, memory_order_relaxed);
	if (!w->first_error[0])
		snprintf(w->first_error, sizeof(w->first_error), "client %u, %s: %s%s%s",
			 w->idx, k < LK_N ? load_kind_name[k] : "connect",
			 status < 0 ? kvp_strerror(status) : why,
			 w->c && status < 0 && kvp_client_error(w->c)[0] ? ": " : "",
			 w->c && status < 0 ? kvp_client_error(w->c) : "");
}

static const char *load_err_name(unsigned slot)
{
	return slot == LOAD_ERR_CHECK ? "failed check" : kvp_strerror(-(int)slot);
}

/* Statuses after which a client cannot be used any more (kvprefix.h). */
static bool load_fatal(int rc)
{
	return rc == KVP_ECLOSED || rc == KVP_EIO || rc == KVP_EPROTO || rc == KVP_ENOMEM;
}

static int load_connect(struct load_worker *w)
{
	struct kvp_server_info info;
	int rc;

	rc = kvp_client_connect(w->sh->sock, &w->c);
	if (rc == 0)
		rc = kvp_client_hello(w->c, NULL, NULL, &info);
	if (rc == 0)
		rc = kvp_client_set_timeout_ms(w->c, w->sh->timeout_ms);
	if (rc < 0) {
		load_error(w, LK_N, rc, NULL);
		kvp_client_close(w->c);
		w->c = NULL;
	}
	return rc;
}

/* n tokens of prompt (prefix p, suffix s) into out: prefix p's first prefix_n tokens,
 * then n - prefix_n suffix tokens, a pure function of (seed, p, s). rand_tokens keeps
 * the low 32 bits of its seed: (p << 24) + s is distinct for p < 256, s < 2^24 (the
 * limits of --prefixes and --suffixes). */
static void load_prompt(const struct load_shared *sh, uint32_t p, uint32_t s, uint32_t *out,
			uint32_t n, uint32_t prefix_n)
{
	memcpy(out, sh->prefixes + (size_t)p * sh->prefix_tokens, prefix_n * sizeof(uint32_t));
	rand_tokens(out + prefix_n, n - prefix_n,
		    kvp_splitmix64(sh->seed ^ 0x5EED5u) + ((uint64_t)p << 24) + s, sh->vocab);
}

struct load_gen_check {
	uint32_t vocab, bad, n;
};

static void load_gen_cb(void *arg, const uint32_t *tokens, uint32_t n)
{
	struct load_gen_check *g = arg;

	for (uint32_t i = 0; i < n; i++)
		g->bad += tokens[i] >= g->vocab;
	g->n += n;
}

/* Release the oldest held lease. */
static int load_release_one(struct load_worker *w)
{
	struct load_lease l = w->leases[0];
	uint32_t got = 0;
	int rc;

	memmove(w->leases, w->leases + 1, (w->n_leases - 1) * sizeof(w->leases[0]));
	w->n_leases--;
	rc = kvp_client_release(w->c, l.id, &got);
	if (rc == 0 && got != l.n_blocks) {
		load_error(w, LK_RELEASE, 0, "a lease released a different number of blocks "
			   "than it pinned");
		return 0;
	}
	return rc;
}

/* One request of kind *k (LK_LOOKUP may turn into LK_PIN); its status. */
static int load_one(struct load_worker *w, enum load_mix m, enum load_kind *k)
{
	const struct load_shared *sh = w->sh;
	uint32_t p = (uint32_t)(load_rand(w) % sh->n_prefixes);
	uint32_t s = (uint32_t)(load_rand(w) % sh->n_suffixes);
	struct kvp_match mt;
	int rc;

	switch (m) {
	case LM_LOOKUP: {
		bool pin = load_rand(w) & 1;

		*k = pin ? LK_PIN : LK_LOOKUP;
		load_prompt(sh, p, s, w->prompt, sh->prompt_tokens, sh->prefix_tokens);
		rc = kvp_client_lookup(w->c, w->prompt, sh->prompt_tokens,
				       pin ? KVP_LOOKUP_PIN : 0, &mt);
		if (rc < 0)
			return rc;
		w->query_tokens += sh->prompt_tokens;
		w->hit_tokens += mt.matched_tokens;
		/* docs/protocol.md §8: a lease exactly when PIN was given and a block matched */
		if ((mt.lease != 0) != (pin && mt.n_blocks > 0))
			load_error(w, *k, 0, "a LOOKUP's lease does not match its PIN flag and "
				   "blocks");
		if (mt.lease) {
			w->leases[w->n_leases].id = mt.lease;
			w->leases[w->n_leases].n_blocks = mt.n_blocks;
			w->n_leases++;
		}
		return 0;
	}
	case LM_INSERT:
		*k = LK_INSERT;
		load_prompt(sh, p, s, w->prompt, sh->prompt_tokens, sh->prefix_tokens);
		return kvp_client_insert(w->c, w->prompt, sh->prompt_tokens, 0, &mt);
	case LM_GENERATE: {
		struct kvp_generate_params gp;
		struct load_gen_check g = { .vocab = sh->vocab };
		struct kvp_usage u;

		*k = LK_GENERATE;
		load_prompt(sh, p, s, w->prompt, sh->gen_prompt_tokens, sh->gen_prefix_tokens);
		kvp_generate_params_init(&gp);
		gp.max_new = sh->max_new;
		rc = kvp_client_generate(w->c, w->prompt, sh->gen_prompt_tokens, &gp, load_gen_cb,
					 &g, &u);
		if (rc < 0)
			return rc;
		w->gen_prompt += u.prompt_tokens;
		w->gen_cached += u.cached_tokens;
		w->gen_tokens += g.n;
		if (g.bad || g.n != u.generated_tokens || u.generated_tokens > sh->max_new ||
		    u.prompt_tokens != sh->gen_prompt_tokens)
			load_error(w, LK_GENERATE, 0, "a generation's tokens or usage do not add up");
		return 0;
	}
	case LM_STATS:
	default: {
		char *js = NULL;

		*k = LK_STATS;
		rc = kvp_client_stats(w->c, &js);
		free(js);
		return rc;
	}
	}
}

static enum load_mix load_pick(struct load_worker *w)
{
	uint32_t r = (uint32_t)(load_rand(w) % w->sh->weight_sum);
	unsigned m = 0;

	while (r >= w->sh->weight[m]) {
		r -= w->sh->weight[m];
		m++;
	}
	return (enum load_mix)m;
}

static void load_record(struct load_worker *w, enum load_kind k, int rc, uint64_t ns)
{
	w->requests++;
	w->count[k]++;
	hist_add(&w->hist[k], ns);
	if (rc < 0)
		load_error(w, k, rc, NULL);
	atomic_store_explicit(&w->live_requests, w->requests, memory_order_relaxed);
}

static void *load_worker_main(void *arg)
{
	struct load_worker *w = arg;
	uint64_t deadline;
	int rc;

	int go;

	load_connect(w);
	pthread_mutex_lock(&w->sh->mu);
	w->sh->ready++;
	pthread_cond_broadcast(&w->sh->cv);
	while (!w->sh->go)
		pthread_cond_wait(&w->sh->cv, &w->sh->mu);
	go = w->sh->go;
	pthread_mutex_unlock(&w->sh->mu);
	if (go < 0) {
		kvp_client_close(w->c);
		w->c = NULL;
		return NULL;
	}
	deadline = kvp_tool_now_ns() + (uint64_t)(w->sh->duration_s * 1e9);
	while (kvp_tool_now_ns() < deadline) {
		enum load_kind k;
		uint64_t t0;

		if (!w->c) {
			sleep_ms(LOAD_CONNECT_RETRY_MS);
			if (load_connect(w) == 0)
				w->reconnects++;
			continue;
		}
		t0 = kvp_tool_now_ns();
		rc = load_one(w, load_pick(w), &k);
		load_record(w, k, rc, kvp_tool_now_ns() - t0);
		while (rc == 0 && w->n_leases == LOAD_LEASES_HELD) {
			t0 = kvp_tool_now_ns();
			rc = load_release_one(w);
			load_record(w, LK_RELEASE, rc, kvp_tool_now_ns() - t0);
		}
		if (load_fatal(rc)) {
			/* the daemon released this connection's leases when it went */
			kvp_client_close(w->c);
			w->c = NULL;
			w->n_leases = 0;
		}
	}
	while (w->c && w->n_leases) {
		uint64_t t0 = kvp_tool_now_ns();

		rc = load_release_one(w);
		load_record(w, LK_RELEASE, rc, kvp_tool_now_ns() - t0);
		if (load_fatal(rc))
			break;
	}
	kvp_client_close(w->c);
	w->c = NULL;
	return NULL;
}

/* "VmRSS" etc. from /proc/PID/status in kB; -1 if unreadable. */
static long proc_status_kb(pid_t pid, const char *key)
{
	char path[64], line[256];
	size_t kl = strlen(key);
	long v = -1;
	FILE *f;

	if (pid <= 0)
		return -1;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "r");
	while (f && fgets(line, sizeof(line), f))
		if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
			v = strtol(line + kl + 1, NULL, 10);
			break;
		}
	if (f)
		fclose(f);
	return v;
}

/* The pid of the process serving path, from SO_PEERCRED on a connection of our own
 * (libkvprefix does not show its descriptor). -1 (message printed) on failure. */
static pid_t socket_peer_pid(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct ucred cr = { 0 };
	socklen_t len = sizeof(cr);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	pid_t pid = -1;

	if (fd < 0 || strlen(path) >= sizeof(sa.sun_path)) {
		fprintf(stderr, PROG " load: cannot ask %s for its pid\n", path);
		if (fd >= 0)
			close(fd);
		return -1;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		fprintf(stderr, PROG " load: connect %s (for SO_PEERCRED): %s\n", path,
			strerror(errno));
	else if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
		fprintf(stderr, PROG " load: SO_PEERCRED on %s: %s\n", path, strerror(errno));
	else if (cr.pid > 0)
		pid = cr.pid;
	else
		fprintf(stderr, PROG " load: SO_PEERCRED on %s gave no pid (another pid "
			"namespace?)\n", path);
	close(fd);
	return pid;
}

/* The daemon's counters that load reports. */
struct load_dstats {
	double connections, generations_active, blocks_total, blocks_free, blocks_cached,
		blocks_pinned, leases_active, errors, evictions, requests;
};

static double json_num(const cJSON *o, const char *key)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);

	return cJSON_IsNumber(it) ? it->valuedouble : NAN;
}

static int load_dstats(struct kvp_client *c, struct load_dstats *d)
{
	char *js = NULL;
	cJSON *o;
	int rc = kvp_client_stats(c, &js);

	if (rc < 0)
		return rc;
	o = cJSON_Parse(js);
	free(js);
	if (!cJSON_IsObject(o)) {
		cJSON_Delete(o);
		return KVP_EPROTO;
	}
	d->connections = json_num(o, "connections");
	d->generations_active = json_num(o, "generations_active");
	d->blocks_total = json_num(o, "blocks_total");
	d->blocks_free = json_num(o, "blocks_free");
	d->blocks_cached = json_num(o, "blocks_cached");
	d->blocks_pinned = json_num(o, "blocks_pinned");
	d->leases_active = json_num(o, "leases_active");
	d->errors = json_num(o, "errors");
	d->evictions = json_num(o, "evictions");
	d->requests = json_num(o, "requests");
	cJSON_Delete(o);
	return 0;
}

/* Parse --mix "lookup=70,stats=5,generate=25" into weights (unnamed kinds: 0). */
static bool load_parse_mix(const char *s, uint32_t w[LM_N])
{
	bool seen[LM_N] = { false };
	const char *p = s;

	memset(w, 0, LM_N * sizeof(w[0]));
	while (*p) {
		const char *eq = strchr(p, '='), *end = strchr(p, ',');
		char val[24];
		uint64_t v;
		size_t kl, vl;
		unsigned m;

		if (!end)
			end = p + strlen(p);
		if (!eq || eq > end) {
			fprintf(stderr, PROG " load: --mix '%s': want KIND=WEIGHT,... (KIND: lookup, "
				"insert, generate, stats)\n", s);
			return false;
		}
		kl = (size_t)(eq - p);
		vl = (size_t)(end - eq - 1);
		for (m = 0; m < LM_N; m++)
			if (strlen(load_mix_name[m]) == kl && strncmp(p, load_mix_name[m], kl) == 0)
				break;
		if (m == LM_N) {
			fprintf(stderr, PROG " load: --mix: unknown kind '%.*s' (want lookup, insert, "
				"generate, stats)\n", (int)kl, p);
			return false;
		}
		if (vl == 0 || vl >= sizeof(val)) {
			fprintf(stderr, PROG " load: --mix: bad weight for %s\n", load_mix_name[m]);
			return false;
		}
		memcpy(val, eq + 1, vl);
		val[vl] = '\0';
		if (!kvp_tool_parse_u64(val, 0, 1000000, &v)) {
			fprintf(stderr, PROG " load: --mix: weight '%s' of %s: want 0..1000000\n", val,
				load_mix_name[m]);
			return false;
		}
		if (seen[m]) {
			fprintf(stderr, PROG " load: --mix: %s given twice\n", load_mix_name[m]);
			return false;
		}
		seen[m] = true;
		w[m] = (uint32_t)v;
		p = *end ? end + 1 : end;
		if (*end && !*p) {
			fprintf(stderr, PROG " load: --mix '%s': trailing comma\n", s);
			return false;
		}
	}
	return true;
}

/* The model's vocabulary: one GENERATE of max_new 0 with KVP_GEN_LOGITS. 0 on failure. */
static uint32_t load_probe_vocab(struct kvp_client *c)
{
	struct kvp_generate_params gp;
	struct kvp_usage u;
	const uint32_t tok = 1;

	kvp_generate_params_init(&gp);
	gp.max_new = 0;
	gp.flags = KVP_GEN_LOGITS;
	if (kvp_client_generate(c, &tok, 1, &gp, NULL, NULL, &u) < 0)
		return 0;
	return u.n_logits;
}

static void usage_load(FILE *f)
{
	fprintf(f,
		"Usage: kvprefix-bench load --clients N --duration S [--socket PATH]\n"
		"                           [--mix lookup=70,generate=25,stats=5] [--max-new 8]\n"
		"                           [--prompt-tokens 512] [--gen-prompt-tokens 64]\n"
		"                           [--prefixes 8] [--suffixes 4096] [--seed 1]\n"
		"                           [--vocab N] [--timeout-ms 60000]\n"
		"                           [--model FILE] [--threads N]\n"
		"Load a kvprefixd with N client threads, each on its own connection, for S\n"
		"seconds: a seeded random mix of LOOKUP (half pinned; a client holds up to %u\n"
		"leases, then RELEASEs the oldest), INSERT (index-only daemons only), GENERATE\n"
		"(daemons with a model only) and STATS. Prompts are one of --prefixes shared\n"
		"prefixes (3/4 of the prompt) + one of --suffixes suffixes each, so prefixes\n"
		"hit and repeated prompts hit whole.\n"
		"\n"
		"  -s, --socket PATH         use this running daemon; without it, start one\n"
		"                            (kvprefixd --index-only, or --model FILE) from\n"
		"                            this binary's directory or ../sbin\n"
		"  -c, --clients N           client threads (1..%u)\n"
		"  -d, --duration S          seconds to run (\"0.5\" is fine)\n"
		"  -x, --mix KIND=W,...      weights of lookup, insert, generate, stats; kinds\n"
		"                            the daemon does not serve are left out (with a\n"
		"                            note). Default lookup=70,insert=25,stats=5 for an\n"
		"                            index-only daemon, lookup=70,generate=25,stats=5\n"
		"                            with a model\n"
		"      --max-new N           tokens a GENERATE makes at most (default 8, greedy)\n"
		"      --prompt-tokens N     tokens of a LOOKUP / INSERT prompt (default 512)\n"
		"      --gen-prompt-tokens N tokens of a GENERATE prompt (default 64)\n"
		"      --prefixes N          shared prefixes (default 8, at most 256)\n"
		"      --suffixes N          suffixes per prefix (default 4096)\n"
		"      --seed N              seeds the prompts and every client's mix (default 1)\n"
		"      --vocab N             token ids drawn below N (default: the model's,\n"
		"                            asked of the daemon; %u index-only)\n"
		"      --timeout-ms N        deadline of each reply (default 60000; 0: none)\n"
		"      --model FILE          the daemon this command starts serves FILE\n"
		"      --threads N           and computes with N threads (default: all cores)\n"
		"  -h, --help                show this help\n"
		"\n"
		"Progress (requests/s, errors so far, the daemon's RSS) on stderr once a\n"
		"second. Prints a table, then one JSON line: requests, errors, errors_by_status\n"
		"(kvp_strerror names), requests_per_s, p50_us, p99_us, kinds (count, errors,\n"
		"latencies per kind), rss_start_kb, rss_end_kb, rss_peak_kb (the daemon's\n"
		"VmRSS; its pid from SO_PEERCRED with --socket), and the daemon's pool once\n"
		"the clients are gone: blocks_pinned (should be 0), pool_invariant_ok\n"
		"(free + cached + pinned == total).\n"
		"Exit status 1 when a request failed, blocks stayed pinned or the pool does\n"
		"not add up (the JSON line is printed all the same).\n",
		LOAD_LEASES_HELD, LOAD_CLIENTS_MAX, LOAD_VOCAB_DEFAULT);
}

static cJSON *load_kind_json(const struct load_hist *h, uint64_t count, uint64_t errors)
{
	cJSON *o = cJSON_CreateObject();

	if (!o)
		return NULL;
	cJSON_AddNumberToObject(o, "count", (double)count);
	cJSON_AddNumberToObject(o, "errors", (double)errors);
	cJSON_AddNumberToObject(o, "mean_us", h->n ? (double)h->sum_ns / (double)h->n / 1e3 : 0);
	cJSON_AddNumberToObject(o, "p50_us", hist_quantile_us(h, 0.50));
	cJSON_AddNumberToObject(o, "p99_us", hist_quantile_us(h, 0.99));
	cJSON_AddNumberToObject(o, "p999_us", hist_quantile_us(h, 0.999));
	cJSON_AddNumberToObject(o, "max_us", (double)h->max_ns / 1e3);
	return o;
}

static void json_add_kb(cJSON *o, const char *key, long kb)
{
	if (kb >= 0)
		cJSON_AddNumberToObject(o, key, (double)kb);
	else
		cJSON_AddNullToObject(o, key);
}

static int cmd_load(int argc, char **argv)
{
	enum { O_MAXNEW = 256, O_PROMPT, O_GENPROMPT, O_PREFIXES, O_SUFFIXES, O_SEED, O_VOCAB,
	       O_TIMEOUT, O_MODEL, O_THREADS };
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "clients", required_argument, NULL, 'c' },
		{ "duration", required_argument, NULL, 'd' },
		{ "mix", required_argument, NULL, 'x' },
		{ "max-new", required_argument, NULL, O_MAXNEW },
		{ "prompt-tokens", required_argument, NULL, O_PROMPT },
		{ "gen-prompt-tokens", required_argument, NULL, O_GENPROMPT },
		{ "prefixes", required_argument, NULL, O_PREFIXES },
		{ "suffixes", required_argument, NULL, O_SUFFIXES },
		{ "seed", required_argument, NULL, O_SEED },
		{ "vocab", required_argument, NULL, O_VOCAB },
		{ "timeout-ms", required_argument, NULL, O_TIMEOUT },
		{ "model", required_argument, NULL, O_MODEL },
		{ "threads", required_argument, NULL, O_THREADS },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	uint64_t clients = 0, max_new = 8, prompt = 512, gen_prompt = 64, prefixes = 8;
	uint64_t suffixes = 4096, seed = 1, vocab = 0, timeout_ms = 60000, threads = 0;
	double duration = 0;
	const char *sock = NULL, *mix = NULL, *model = NULL;
	struct load_shared sh = { 0 };
	struct load_worker *ws = NULL;
	struct own_daemon d = { 0 };
	struct kvp_server_info info;
	struct kvp_client *c = NULL;
	struct load_dstats ds0 = { 0 }, ds1 = { 0 };
	struct load_hist *all = NULL, *kinds = NULL;
	uint64_t count[LK_N] = { 0 }, kind_err[LK_N] = { 0 }, by_status[LOAD_ERR_SLOTS] = { 0 };
	uint64_t requests = 0, errors = 0, reconnects = 0, qt = 0, ht = 0, gp = 0, gc = 0, gt = 0;
	uint64_t t_start, t_end, last_req = 0, t_last;
	long rss_start, rss_end, rss_peak, hwm;
	pid_t dpid;
	bool sync = false, invariant_ok, dstats_ok = false;
	uint32_t started = 0;
	double elapsed, settle_ms = 0;
	const char *first_error = NULL;
	uint32_t *prefix_buf = NULL;
	cJSON *o = NULL, *j;
	int opt, rc, ret = KVP_EXIT_FAIL;

	optind = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":s:c:d:x:h", opts, NULL)) != -1) {
		uint64_t *dst = NULL, lo = 1, hi = 1u << 20;
		const char *name = NULL;

		switch (opt) {
		case 's': sock = optarg; continue;
		case 'x': mix = optarg; continue;
		case O_MODEL: model = optarg; continue;
		case 'd':
			if (!kvp_tool_parse_seconds(optarg, LOAD_DURATION_MAX_S, &duration)) {
				fprintf(stderr, PROG " load: --duration '%s': want seconds, > 0 and "
					"<= %.0f\n", optarg, LOAD_DURATION_MAX_S);
				return KVP_EXIT_USAGE;
			}
			continue;
		case 'c': dst = &clients; name = "--clients"; hi = LOAD_CLIENTS_MAX; break;
		case O_MAXNEW: dst = &max_new; name = "--max-new"; lo = 0; hi = 65536; break;
		case O_PROMPT: dst = &prompt; name = "--prompt-tokens"; lo = 2; break;
		case O_GENPROMPT: dst = &gen_prompt; name = "--gen-prompt-tokens"; lo = 2; break;
		case O_PREFIXES: dst = &prefixes; name = "--prefixes"; hi = 256; break;
		case O_SUFFIXES: dst = &suffixes; name = "--suffixes"; hi = 1u << 24; break;
		case O_SEED: dst = &seed; name = "--seed"; lo = 0; hi = UINT64_MAX; break;
		case O_VOCAB: dst = &vocab; name = "--vocab"; lo = 2; hi = 1u << 30; break;
		case O_TIMEOUT: dst = &timeout_ms; name = "--timeout-ms"; lo = 0; hi = 86400000;
			break;
		case O_THREADS: dst = &threads; name = "--threads"; hi = 1024; break;
		case 'h': usage_load(stdout); return KVP_EXIT_OK;
		default: return bad_option("load", argv, opt);
		}
		if (!kvp_tool_parse_u64(optarg, lo, hi, dst)) {
			fprintf(stderr, PROG " load: %s '%s': want %" PRIu64 "..%" PRIu64 "\n", name,
				optarg, lo, hi);
			return KVP_EXIT_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, PROG " load: unexpected argument '%s'\n"
			"Try '" PROG " load --help'.\n", argv[optind]);
		return KVP_EXIT_USAGE;
	}
	if (!clients || duration <= 0) {
		fprintf(stderr, PROG " load: --clients N and --duration S are required\n"
			"Try '" PROG " load --help'.\n");
		return KVP_EXIT_USAGE;
	}
	if (sock && (model || threads)) {
		fprintf(stderr, PROG " load: --model and --threads are for the daemon this "
			"command starts; not with --socket\n");
		return KVP_EXIT_USAGE;
	}
	if (threads && !model) {
		fprintf(stderr, PROG " load: --threads goes with --model\n");
		return KVP_EXIT_USAGE;
	}
	if (mix && !load_parse_mix(mix, sh.weight))
		return KVP_EXIT_USAGE;

	/* the daemon */
	if (!sock) {
		char th[24];
		const char *idx_args[] = { "--index-only", NULL };
		const char *mod_args[] = { "--model", model, "--threads", th, NULL };

		snprintf(th, sizeof(th), "%" PRIu64, threads ? threads : (uint64_t)online_cpus());
		if (start_daemon(&d, "load", model ? mod_args : idx_args,
				 model ? ENGINE_DAEMON_WAIT_MS : DAEMON_WAIT_MS) < 0)
			goto out;
		sock = d.sock;
		dpid = d.pid;
	} else {
		dpid = socket_peer_pid(sock);
	}
	if (kvp_tool_connect(PROG " load", sock, &c) < 0)
		goto out;
	memset(&info, 0, sizeof(info));
	rc = kvp_client_hello(c, NULL, NULL, &info);
	if (rc < 0) {
		kvp_tool_perror(PROG " load", "hello", c, rc);
		goto out;
	}
	if (!mix) {
		sh.weight[LM_LOOKUP] = 70;
		sh.weight[info.index_only ? LM_INSERT : LM_GENERATE] = 25;
		sh.weight[LM_STATS] = 5;
	}
	if (info.index_only && sh.weight[LM_GENERATE]) {
		fprintf(stderr, "load: note: the daemon runs --index-only: no GENERATE\n");
		sh.weight[LM_GENERATE] = 0;
	}
	if (!info.index_only && sh.weight[LM_INSERT]) {
		fprintf(stderr, "load: note: the daemon runs a model and refuses INSERT: no "
			"INSERT\n");
		sh.weight[LM_INSERT] = 0;
	}
	for (unsigned m = 0; m < LM_N; m++)
		sh.weight_sum += sh.weight[m];
	if (!sh.weight_sum) {
		fprintf(stderr, PROG " load: nothing left in the mix for this daemon\n");
		ret = KVP_EXIT_USAGE;
		goto out;
	}
	if (!vocab && !info.index_only) {
		vocab = load_probe_vocab(c);
		if (!vocab) {
			kvp_tool_perror(PROG " load", "asking the model's vocabulary (pass --vocab)",
					c, KVP_EPROTO);
			goto out;
		}
	}
	if (!vocab)
		vocab = LOAD_VOCAB_DEFAULT;
	rc = load_dstats(c, &ds0);   /* after the probe: the deltas are the clients' alone */
	if (rc < 0) {
		kvp_tool_perror(PROG " load", "stats", c, rc);
		goto out;
	}
	if (prompt > info.max_tokens || gen_prompt > info.max_tokens) {
		fprintf(stderr, PROG " load: the daemon takes at most %u tokens a request\n",
			info.max_tokens);
		ret = KVP_EXIT_USAGE;
		goto out;
	}
	rss_start = proc_status_kb(dpid, "VmRSS");
	rss_peak = rss_start;
	if (rss_start < 0)
		fprintf(stderr, "load: note: cannot read the daemon's RSS (pid %d)\n", (int)dpid);
	kvp_client_close(c);   /* an idle connection could time out in a long run */
	c = NULL;

	/* the prompts */
	sh.sock = sock;
	sh.duration_s = duration;
	sh.prompt_tokens = (uint32_t)prompt;
	sh.prefix_tokens = (uint32_t)(prompt * 3 / 4);
	sh.gen_prompt_tokens = (uint32_t)gen_prompt;
	sh.gen_prefix_tokens = (uint32_t)(gen_prompt * 3 / 4);
	if (sh.gen_prefix_tokens > sh.prefix_tokens)
		sh.gen_prefix_tokens = sh.prefix_tokens;
	sh.n_prefixes = (uint32_t)prefixes;
	sh.n_suffixes = (uint32_t)suffixes;
	sh.vocab = (uint32_t)vocab;
	sh.max_new = (uint32_t)max_new;
	sh.timeout_ms = (uint32_t)timeout_ms;
	sh.seed = seed;
	prefix_buf = malloc(prefixes * sh.prefix_tokens * sizeof(uint32_t) + 1);
	ws = aligned_alloc(_Alignof(struct load_worker), clients * sizeof(*ws));
	if (ws)
		memset(ws, 0, clients * sizeof(*ws));
	all = calloc(1, sizeof(*all));
	kinds = calloc(LK_N, sizeof(*kinds));
	if (!prefix_buf || !ws || !all || !kinds)
		goto out_nomem;
	for (uint32_t p = 0; p < prefixes; p++)
		rand_tokens(prefix_buf + (size_t)p * sh.prefix_tokens, sh.prefix_tokens,
			    kvp_splitmix64(seed) + p, sh.vocab);
	sh.prefixes = prefix_buf;

	fprintf(stderr, "load: %" PRIu64 " clients for %.1f s against %s (%s, pid %d), mix "
		"lookup=%u insert=%u generate=%u stats=%u, prompts %u tokens (generate %u, "
		"max_new %u), vocab %u\n", clients, duration, sock,
		info.index_only ? "index-only" : info.name, (int)dpid, sh.weight[LM_LOOKUP],
		sh.weight[LM_INSERT], sh.weight[LM_GENERATE], sh.weight[LM_STATS],
		sh.prompt_tokens, sh.gen_prompt_tokens, sh.max_new, sh.vocab);
	if (pthread_mutex_init(&sh.mu, NULL) != 0)
		goto out_nomem;
	if (pthread_cond_init(&sh.cv, NULL) != 0) {
		pthread_mutex_destroy(&sh.mu);
		goto out_nomem;
	}
	sync = true;
	for (uint32_t i = 0; i < clients; i++) {
		struct load_worker *w = &ws[i];

		w->idx = i;
		w->sh = &sh;
		w->rng = kvp_splitmix64(seed * 0x9E3779B97F4A7C15ull + i + 1) | 1;
		w->prompt = malloc((prompt > gen_prompt ? prompt : gen_prompt) * sizeof(uint32_t));
		if (!w->prompt)
			goto out_nomem;
	}
	for (uint32_t i = 0; i < clients; i++) {
		rc = pthread_create(&ws[i].th, NULL, load_worker_main, &ws[i]);
		if (rc != 0) {
			fprintf(stderr, PROG " load: pthread_create (client %u): %s\n", i + 1,
				strerror(rc));
			break;
		}
		started++;
	}
	pthread_mutex_lock(&sh.mu);
	while (sh.ready < started)
		pthread_cond_wait(&sh.cv, &sh.mu);
	sh.go = started == clients ? 1 : -1;
	pthread_cond_broadcast(&sh.cv);
	pthread_mutex_unlock(&sh.mu);
	if (started < clients) {
		for (uint32_t i = 0; i < started; i++)
			pthread_join(ws[i].th, NULL);
		goto out;
	}
	t_start = kvp_tool_now_ns();
	t_last = t_start;

	/* progress, once a second, until the clients are done */
	for (uint32_t sec = 1;; sec++) {
		uint64_t target = t_start + (uint64_t)sec * 1000000000ull, now, req = 0, err = 0;
		long rss;

		if (target >= t_start + (uint64_t)(duration * 1e9))
			break;
		while ((now = kvp_tool_now_ns()) < target) {
			uint64_t ms = (target - now) / 1000000 + 1;

			sleep_ms(ms > 100 ? 100 : (long)ms);
		}
		for (uint32_t i = 0; i < clients; i++) {
			req += atomic_load_explicit(&ws[i].live_requests, memory_order_relaxed);
			err += atomic_load_explicit(&ws[i].live_errors, memory_order_relaxed);
		}
		rss = proc_status_kb(dpid, "VmRSS");
		if (rss > rss_peak)
			rss_peak = rss;
		fprintf(stderr, "load: %u s: %.0f requests/s, %" PRIu64 " requests, %" PRIu64
			" errors, daemon RSS %ld kB\n", sec,
			(double)(req - last_req) / ((double)(now - t_last) / 1e9), req, err, rss);
		last_req = req;
		t_last = now;
	}
	for (uint32_t i = 0; i < clients; i++)
		pthread_join(ws[i].th, NULL);
	t_end = kvp_tool_now_ns();
	elapsed = (double)(t_end - t_start) / 1e9;

	/* totals */
	for (uint32_t i = 0; i < clients; i++) {
		const struct load_worker *w = &ws[i];

		requests += w->requests;
		errors += w->errors;
		reconnects += w->reconnects;
		qt += w->query_tokens;
		ht += w->hit_tokens;
		gp += w->gen_prompt;
		gc += w->gen_cached;
		gt += w->gen_tokens;
		for (unsigned k = 0; k < LK_N; k++) {
			count[k] += w->count[k];
			kind_err[k] += w->kind_errors[k];
			hist_merge(&kinds[k], &w->hist[k]);
		}
		for (unsigned s = 0; s < LOAD_ERR_SLOTS; s++)
			by_status[s] += w->err_by_status[s];
		if (!first_error && w->first_error[0])
			first_error = w->first_error;
	}
	for (unsigned k = 0; k < LK_N; k++)
		hist_merge(all, &kinds[k]);

	/* the daemon once every client has gone: the connections it still counts are
	 * others' (and this one) */
	{
		uint64_t t0 = kvp_tool_now_ns();

		rc = kvp_tool_connect(PROG " load", sock, &c);
		while (rc == 0) {
			rc = load_dstats(c, &ds1);
			if (rc < 0)
				break;
			dstats_ok = true;
			settle_ms = (double)(kvp_tool_now_ns() - t0) / 1e6;
			if ((ds1.connections <= ds0.connections && ds1.generations_active == 0) ||
			    settle_ms >= LOAD_SETTLE_MS)
				break;
			sleep_ms(10);
		}
		if (rc < 0) {
			kvp_tool_perror(PROG " load", "stats at the end", c, rc);
			dstats_ok = false;
		}
	}
	rss_end = proc_status_kb(dpid, "VmRSS");
	hwm = proc_status_kb(dpid, "VmHWM");
	if (rss_end > rss_peak)
		rss_peak = rss_end;
	invariant_ok = dstats_ok && ds1.blocks_free + ds1.blocks_cached + ds1.blocks_pinned ==
					    ds1.blocks_total;

	/* the table */
	printf("kvprefix-bench load: %" PRIu64 " clients, %.1f s, %s daemon (pid %d), seed %"
	       PRIu64 "\n", clients, elapsed, info.index_only ? "index-only" : "engine",
	       (int)dpid, seed);
	printf("  mix lookup=%u (half pinned) insert=%u generate=%u stats=%u; prompts %u "
	       "tokens (%u shared), generate %u (max_new %u)\n\n", sh.weight[LM_LOOKUP],
	       sh.weight[LM_INSERT], sh.weight[LM_GENERATE], sh.weight[LM_STATS],
	       sh.prompt_tokens, sh.prefix_tokens, sh.gen_prompt_tokens, sh.max_new);
	printf("  %-10s %10s %7s %10s %10s %10s %10s\n", "kind", "count", "errors", "mean",
	       "p50", "p99", "max");
	for (unsigned k = 0; k < LK_N; k++) {
		const struct load_hist *h = &kinds[k];

		if (!count[k])
			continue;
		printf("  %-10s %10" PRIu64 " %7" PRIu64 " %7.1f us %7.1f us %7.1f us %7.1f us\n",
		       load_kind_name[k], count[k], kind_err[k],
		       (double)h->sum_ns / (double)h->n / 1e3, hist_quantile_us(h, 0.5),
		       hist_quantile_us(h, 0.99), (double)h->max_ns / 1e3);
	}
	printf("  %-10s %10" PRIu64 " %7" PRIu64 " %10s %7.1f us %7.1f us %7.1f us\n", "all",
	       requests, errors, "", hist_quantile_us(all, 0.5), hist_quantile_us(all, 0.99),
	       (double)all->max_ns / 1e3);
	printf("\n  %.0f requests/s; %" PRIu64 " errors", (double)requests / elapsed, errors);
	for (unsigned s = 0, first = 1; s < LOAD_ERR_SLOTS; s++)
		if (by_status[s]) {
			printf("%s%s %" PRIu64, first ? ": " : ", ", load_err_name(s), by_status[s]);
			first = 0;
		}
	printf("%s\n", reconnects ? " (clients reconnected)" : "");
	if (first_error)
		printf("  first error: %s\n", first_error);
	if (qt)
		printf("  lookup hit rate %.3f (%" PRIu64 " of %" PRIu64 " tokens)\n",
		       (double)ht / (double)qt, ht, qt);
	if (gp)
		printf("  generate: %" PRIu64 " of %" PRIu64 " prompt tokens cached (%.3f), %"
		       PRIu64 " tokens generated\n", gc, gp, (double)gc / (double)gp, gt);
	printf("  daemon RSS %ld kB at the start, %ld kB at the end (%+ld kB), %ld kB peak "
	       "(of the samples), VmHWM %ld kB\n", rss_start, rss_end,
	       rss_start >= 0 && rss_end >= 0 ? rss_end - rss_start : 0, rss_peak, hwm);
	if (dstats_ok)
		printf("  daemon after the clients left (%.0f ms): blocks %.0f total, %.0f free, "
		       "%.0f cached, %.0f pinned (%s), leases %.0f, pool %s\n\n", settle_ms,
		       ds1.blocks_total, ds1.blocks_free, ds1.blocks_cached, ds1.blocks_pinned,
		       ds1.blocks_pinned == 0 ? "ok" : "SHOULD BE 0", ds1.leases_active,
		       invariant_ok ? "adds up" : "DOES NOT ADD UP");
	fflush(stdout);

	/* the JSON line */
	o = cJSON_CreateObject();
	if (!o)
		goto out_nomem;
	cJSON_AddStringToObject(o, "mode", info.index_only ? "index-only" : "engine");
	cJSON_AddNumberToObject(o, "clients", (double)clients);
	cJSON_AddNumberToObject(o, "duration_s", duration);
	cJSON_AddNumberToObject(o, "elapsed_s", elapsed);
	cJSON_AddNumberToObject(o, "seed", (double)seed);
	j = cJSON_AddObjectToObject(o, "mix");
	if (!j)
		goto out_nomem;
	for (unsigned m = 0; m < LM_N; m++)
		cJSON_AddNumberToObject(j, load_mix_name[m], sh.weight[m]);
	cJSON_AddNumberToObject(o, "prompt_tokens", sh.prompt_tokens);
	cJSON_AddNumberToObject(o, "gen_prompt_tokens", sh.gen_prompt_tokens);
	cJSON_AddNumberToObject(o, "max_new", sh.max_new);
	cJSON_AddNumberToObject(o, "vocab", sh.vocab);
	cJSON_AddNumberToObject(o, "requests", (double)requests);
	cJSON_AddNumberToObject(o, "errors", (double)errors);
	j = cJSON_AddObjectToObject(o, "errors_by_status");
	if (!j)
		goto out_nomem;
	for (unsigned s = 0; s < LOAD_ERR_SLOTS; s++)
		if (by_status[s])
			cJSON_AddNumberToObject(j, load_err_name(s), (double)by_status[s]);
	if (first_error)
		cJSON_AddStringToObject(o, "first_error", first_error);
	cJSON_AddNumberToObject(o, "reconnects", (double)reconnects);
	cJSON_AddNumberToObject(o, "requests_per_s", (double)requests / elapsed);
	cJSON_AddNumberToObject(o, "p50_us", hist_quantile_us(all, 0.5));
	cJSON_AddNumberToObject(o, "p99_us", hist_quantile_us(all, 0.99));
	cJSON_AddNumberToObject(o, "p999_us", hist_quantile_us(all, 0.999));
	cJSON_AddNumberToObject(o, "max_us", (double)all->max_ns / 1e3);
	j = cJSON_AddObjectToObject(o, "kinds");
	if (!j)
		goto out_nomem;
	for (unsigned k = 0; k < LK_N; k++) {
		cJSON *kj;

		if (!count[k])
			continue;
		kj = load_kind_json(&kinds[k], count[k], kind_err[k]);
		if (!kj || !cJSON_AddItemToObject(j, load_kind_name[k], kj)) {
			cJSON_Delete(kj);
			goto out_nomem;
		}
	}
	cJSON_AddNumberToObject(o, "lookup_query_tokens", (double)qt);
	cJSON_AddNumberToObject(o, "lookup_hit_tokens", (double)ht);
	cJSON_AddNumberToObject(o, "lookup_hit_rate", qt ? (double)ht / (double)qt : 0);
	cJSON_AddNumberToObject(o, "generate_prompt_tokens", (double)gp);
	cJSON_AddNumberToObject(o, "generate_cached_tokens", (double)gc);
	cJSON_AddNumberToObject(o, "generated_tokens", (double)gt);
	cJSON_AddNumberToObject(o, "daemon_pid", (double)dpid);
	json_add_kb(o, "rss_start_kb", rss_start);
	json_add_kb(o, "rss_end_kb", rss_end);
	json_add_kb(o, "rss_peak_kb", rss_peak);
	json_add_kb(o, "vmhwm_kb", hwm);
	if (rss_start >= 0 && rss_end >= 0)
		cJSON_AddNumberToObject(o, "rss_growth_kb", (double)(rss_end - rss_start));
	if (dstats_ok) {
		cJSON_AddNumberToObject(o, "settle_ms", settle_ms);
		cJSON_AddNumberToObject(o, "connections_end", ds1.connections);
		cJSON_AddNumberToObject(o, "blocks_total", ds1.blocks_total);
		cJSON_AddNumberToObject(o, "blocks_free", ds1.blocks_free);
		cJSON_AddNumberToObject(o, "blocks_cached", ds1.blocks_cached);
		cJSON_AddNumberToObject(o, "blocks_pinned", ds1.blocks_pinned);
		cJSON_AddNumberToObject(o, "leases_active", ds1.leases_active);
		cJSON_AddNumberToObject(o, "evictions", ds1.evictions - ds0.evictions);
		cJSON_AddNumberToObject(o, "daemon_errors", ds1.errors - ds0.errors);
		cJSON_AddNumberToObject(o, "daemon_requests", ds1.requests - ds0.requests);
	}
	cJSON_AddBoolToObject(o, "pool_invariant_ok", invariant_ok);
	if (!json_print_line(o))
		goto out;
	ret = errors == 0 && dstats_ok && ds1.blocks_pinned == 0 && invariant_ok
		      ? KVP_EXIT_OK : KVP_EXIT_FAIL;
	goto out;

out_nomem:
	fprintf(stderr, PROG " load: out of memory\n");
out:
	cJSON_Delete(o);
	kvp_client_close(c);
	for (uint32_t i = 0; ws && i < clients; i++)
		free(ws[i].prompt);
	if (sync) {
		pthread_cond_destroy(&sh.cv);
		pthread_mutex_destroy(&sh.mu);
	}
	free(ws);
	free(all);
	free(kinds);
	free(prefix_buf);
	if (d.pid > 0 || d.dir[0])
		stop_daemon(&d);
	return ret;
}

/* ---- main ---------------------------------------------------------------------- */

static void usage_main(FILE *f)
{
	fprintf(f,
		"Usage: kvprefix-bench COMMAND [OPTIONS]\n"
		"\n"
		"Commands:\n"
		"  replay   replay a Mooncake trace against a running kvprefixd\n"
		"  index    time the index vs raw hashing, and LOOKUP vs a socket echo\n"
		"  engine   time the engine in process, TTFT cached vs cold, a shared-prefix\n"
		"           workload through kvprefixd; on the CPU or, with --backend cuda,\n"
		"           on a CUDA GPU (TFLOP/s against its f16 tensor-core peak)\n"
		"  chat     play a multi-user chat with a shared system prompt against a\n"
		"           running kvprefixd and show what each turn found cached\n"
		"  load     N clients issue a random mix of requests for S seconds; latency,\n"
		"           errors, the daemon's RSS and pinned blocks at the end\n"
		"\n"
		"Run 'kvprefix-bench COMMAND --help' for a command's options.\n"
		"Exit status: 0 ok, 1 daemon, I/O or input error, 2 usage error.\n");
}

int main(int argc, char **argv)
{
	const char *cmd;

	signal(SIGPIPE, SIG_IGN);
	if (argc < 2) {
		usage_main(stderr);
		return KVP_EXIT_USAGE;
	}
	cmd = argv[1];
	if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
		usage_main(stdout);
		return KVP_EXIT_OK;
	}
	if (strcmp(cmd, "replay") == 0)
		return cmd_replay(argc - 1, argv + 1);
	if (strcmp(cmd, "index") == 0)
		return cmd_index(argc - 1, argv + 1);
	if (strcmp(cmd, "engine") == 0)
		return cmd_engine(argc - 1, argv + 1);
	if (strcmp(cmd, "chat") == 0)
		return cmd_chat(argc - 1, argv + 1);
	if (strcmp(cmd, "load") == 0)
		return cmd_load(argc - 1, argv + 1);
	fprintf(stderr, PROG ": unknown command '%s'\n", cmd);
	usage_main(stderr);
	return KVP_EXIT_USAGE;
}
