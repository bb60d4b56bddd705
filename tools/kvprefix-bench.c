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

#include "kvp_index.h"
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

/* ---- index: own daemon --------------------------------------------------------- */

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

/* kvprefixd beside this binary (build tree), else in ../sbin (installed). */
static int find_daemon(char *out, size_t cap)
{
	char exe[PATH_MAX], dir[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	const char *d;

	if (n <= 0) {
		fprintf(stderr, PROG " index: cannot read /proc/self/exe: %s; start kvprefixd "
			"yourself and pass --socket PATH\n", strerror(errno));
		return -1;
	}
	exe[n] = '\0';
	snprintf(dir, sizeof(dir), "%s", exe);
	d = dirname(dir);
	snprintf(out, cap, "%s/kvprefixd", d);
	if (access(out, X_OK) == 0)
		return 0;
	snprintf(out, cap, "%s/../sbin/kvprefixd", d);
	if (access(out, X_OK) == 0)
		return 0;
	fprintf(stderr, PROG " index: cannot find kvprefixd in %s or %s/../sbin; start "
		"one and pass --socket PATH\n", d, d);
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

static int start_daemon(struct own_daemon *d, uint32_t block)
{
	char bin[PATH_MAX], bt[16];
	int st;

	memset(d, 0, sizeof(*d));
	if (find_daemon(bin, sizeof(bin)) < 0)
		return -1;
	snprintf(d->dir, sizeof(d->dir), "/tmp/kvprefix-bench-XXXXXX");
	if (!mkdtemp(d->dir)) {
		fprintf(stderr, PROG " index: mkdtemp: %s\n", strerror(errno));
		d->dir[0] = '\0';
		return -1;
	}
	snprintf(d->sock, sizeof(d->sock), "%s/kvprefixd.sock", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/kvprefixd.log", d->dir);
	snprintf(bt, sizeof(bt), "%u", block);
	fflush(NULL);
	d->pid = fork();
	if (d->pid < 0) {
		fprintf(stderr, PROG " index: fork: %s\n", strerror(errno));
		goto out_fail;
	}
	if (d->pid == 0) {
		char *const args[] = { bin, "--index-only", "--socket", d->sock,
				       "--block-tokens", bt, NULL };
		int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);

		if (fd >= 0) {
			dup2(fd, STDOUT_FILENO);
			dup2(fd, STDERR_FILENO);
			close(fd);
		}
		execv(bin, args);
		fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
		_exit(127);
	}
	for (int i = 0; i < DAEMON_WAIT_MS / 10; i++) {
		if (socket_accepts(d->sock)) {
			fprintf(stderr, "index: started %s --index-only --socket %s "
				"--block-tokens %u (pid %d)\n", bin, d->sock, block, (int)d->pid);
			return 0;
		}
		if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
			char line[512];
			FILE *f = fopen(d->log, "r");

			d->pid = 0;
			fprintf(stderr, PROG " index: %s exited at start; its log:\n", bin);
			while (f && fgets(line, sizeof(line), f))
				fprintf(stderr, "  %s", line);
			if (f)
				fclose(f);
			goto out_fail;
		}
		sleep_ms(10);
	}
	fprintf(stderr, PROG " index: %s did not accept on %s within %d s\n", bin, d->sock,
		DAEMON_WAIT_MS / 1000);
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
		if (start_daemon(&d, (uint32_t)block) < 0)
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

/* ---- main ---------------------------------------------------------------------- */

static void usage_main(FILE *f)
{
	fprintf(f,
		"Usage: kvprefix-bench COMMAND [OPTIONS]\n"
		"\n"
		"Commands:\n"
		"  replay   replay a Mooncake trace against a running kvprefixd\n"
		"  index    time the index vs raw hashing, and LOOKUP vs a socket echo\n"
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
	fprintf(stderr, PROG ": unknown command '%s'\n", cmd);
	usage_main(stderr);
	return KVP_EXIT_USAGE;
}
