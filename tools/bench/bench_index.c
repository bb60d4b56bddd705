/*
 * bench_index.c - kvprefix-bench index: the index against hashing alone, and the
 * protocol against moving the bytes alone.
 *
 *   (a) in process: kvp_tree_match (hash + lookup) of a fully cached 1k / 32k /
 *       128k-token prompt against one raw XXH3_128bits over the same bytes;
 *   (b) over the socket: LOOKUP round trip of a fully cached 2k-token prompt via
 *       libkvprefix against a bare Unix-socket echo of the same request bytes.
 *
 * Without --socket it starts its own kvprefixd on a temporary socket and stops it at
 * the end, and pins itself, that daemon and the echo to one CPU (--no-pin: don't), so
 * both servers sit equally near the client: on a VM a cross-CPU wake-up costs tens of
 * microseconds, more than the request, and which server the scheduler moves decides
 * the ratio. LOOKUPs and echoes alternate in chunks of SOCKET_CHUNK for the same
 * reason.
 *
 *   timing of one in-process figure:
 *
 *     calibrate: t1 = one call            K = calls per sample (>= 20 us a sample)
 *     | K calls | K calls | ... | K calls |   S samples, S * K * t1 ~ the budget
 *        -> per-call time of each sample -> median and best of the S samples
 */
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <xxhash.h>

#include "bench.h"
#include "kvp_index.h"
#include "trace.h"
#include "util.h"

/* Targets printed beside the figures (DESIGN: the index is cheap next to hashing, the
 * protocol is cheap next to moving the bytes). */
#define TARGET_LOOKUP_32K_RATIO 1.5
#define TARGET_RTT_2K_RATIO 1.3
#define TARGET_META_BYTES 96.0   /* index metadata a cached block, beside its tokens */

#define SOCKET_PROMPT_TOKENS 2048u
#define SOCKET_WARMUP 2000u
#define SOCKET_ITERS_DEFAULT 20000u
#define SOCKET_CHUNK 1000u           /* round trips of one kind in a row */
#define INPROC_BUDGET_S 0.4
#define SAMPLE_MIN_NS 20000.0
#define N_SIZES 3                    /* of the in-process prompts */

/* LOOKUP frame layout (docs/protocol.md): 16-byte header, u32 flags, u32 n_tokens,
 * n_tokens x u32. Only its size and bytes matter to the echo baseline. */
#define FRAME_HDR 16u
#define FRAME_MAGIC 0x3150564Bu
#define FRAME_T_LOOKUP 0x02u
#define FRAME_BYTES (FRAME_HDR + 8 + (size_t)SOCKET_PROMPT_TOKENS * 4)

static const size_t inproc_sizes[N_SIZES] = { 1024, 32768, 131072 };

struct index_opts {
	const char *sock;
	uint64_t block, iters;
	bool echo_process, pin;
};

struct timing {
	double median_ns;
	double best_ns;
};

struct inproc_result {
	size_t tokens;
	size_t blocks;
	struct timing match, xxh3, chain;   /* chain: the block keys alone */
	double ratio, chain_ratio;
	double meta_bytes;   /* the index's memory a block, beside its tokens */
};

struct rtt_result {
	double lookup_med_us, lookup_p99_us, lookup_best_us;
	double echo_med_us, echo_p99_us, echo_best_us;
	double ratio;
	uint32_t daemon_block;
	uint32_t matched;
	size_t request_bytes;
};

/* ---- small helpers ------------------------------------------------------------- */

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

/* ---- (a) in process ------------------------------------------------------------ */

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
	out->median_ns = bench_median(samples, n);
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
	uint32_t block;
	struct kvp_key *keys;    /* (max_nodes) */
};

static void run_match(void *arg)
{
	struct inproc *p = arg;

	bench_sink += kvp_tree_match(p->tree, p->root, p->tokens, p->n_tokens, p->path,
				     p->max_nodes);
}

/* The chained block keys alone (each block's key hashes its parent's): what any lookup
 * must compute before it can look at the tree. */
static void run_chain(void *arg)
{
	struct inproc *p = arg;

	kvp_chain_keys(p->root, p->tokens, p->max_nodes, p->block, p->keys);
	bench_sink += p->keys[p->max_nodes ? p->max_nodes - 1 : 0].lo;
}

static void run_xxh3(void *arg)
{
	struct inproc *p = arg;
	XXH128_hash_t h = XXH3_128bits(p->tokens, p->n_tokens * sizeof(uint32_t));

	bench_sink += h.low64;
}

/* Insert the chain of keys of every full block of tokens into p->tree. */
static int fill_tree(struct inproc *p, const struct kvp_key *keys, size_t nb, uint32_t block)
{
	struct kvp_tree_node *parent = NULL, *node;
	int rc;

	for (size_t i = 0; i < nb; i++) {
		rc = kvp_tree_insert(p->tree, p->root, parent, keys[i], p->tokens + i * block,
				     (uint32_t)i, &node);
		if (rc < 0 && rc != KVP_EEXIST) {
			fprintf(stderr, PROG " index: kvp_tree_insert of block %zu: %s\n", i,
				kvp_strerror(rc));
			return rc;
		}
		parent = node;
	}
	return KVP_OK;
}

/* What index/ holds from the allocator (usable sizes, so its overhead counts). */
static size_t index_bytes;

static void *count_alloc(size_t n)
{
	void *p = malloc(n);

	if (p)
		index_bytes += malloc_usable_size(p);
	return p;
}

static void count_free(void *p)
{
	if (p)
		index_bytes -= malloc_usable_size(p);
	free(p);
}

/* Build a tree holding every full block of an n-token prompt, then time both. */
static int bench_inproc(uint32_t block, size_t n, uint64_t seed, struct inproc_result *res)
{
	struct inproc p = { 0 };
	struct kvp_key *keys = NULL;
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
	index_bytes = 0;
	rc = kvp_tree_create(block, &p.tree);
	if (rc < 0) {
		fprintf(stderr, PROG " index: kvp_tree_create(%u): %s\n", block,
			kvp_strerror(rc));
		goto out_free;
	}
	p.root = kvp_ns_root("kvprefix-bench", 0, NULL);
	kvp_chain_keys(p.root, tokens, nb, block, keys);
	p.tokens = tokens;
	p.n_tokens = n;
	p.max_nodes = nb;
	rc = fill_tree(&p, keys, nb, block);
	if (rc < 0)
		goto out_destroy;
	res->meta_bytes = nb ? ((double)index_bytes - (double)nb * block * sizeof(uint32_t)) /
				       (double)nb : NAN;
	got = kvp_tree_match(p.tree, p.root, tokens, n, p.path, nb);
	if (got != nb) {
		fprintf(stderr, PROG " index: %zu-token prompt: kvp_tree_match found %zu of %zu "
			"cached blocks\n", n, got, nb);
		rc = KVP_EINTERNAL;
		goto out_destroy;
	}
	p.block = block;
	p.keys = keys;
	measure(run_match, &p, INPROC_BUDGET_S, &res->match);
	measure(run_xxh3, &p, INPROC_BUDGET_S, &res->xxh3);
	measure(run_chain, &p, INPROC_BUDGET_S, &res->chain);
	res->ratio = res->match.median_ns / res->xxh3.median_ns;
	res->chain_ratio = res->chain.median_ns / res->xxh3.median_ns;
	rc = KVP_OK;
out_destroy:
	kvp_tree_destroy(p.tree);
out_free:
	free(p.path);
	free(keys);
	free(tokens);
	return rc;
}

/* ---- (b) over the socket: the echo baseline ------------------------------------ */

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

/* Close and unlink the listening socket of an echo that did not start. */
static int echo_abandon(struct echo *e)
{
	close(e->listen_fd);
	unlink(e->path);
	e->listen_fd = -1;
	return -1;
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
		return echo_abandon(e);
	}
	if (pthread_create(&e->thread, NULL, echo_main, e) != 0) {
		fprintf(stderr, PROG " index: cannot start the echo thread\n");
		return echo_abandon(e);
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

/* ---- (b) over the socket: the round trips -------------------------------------- */

static void summarize(double *v, size_t n, double *med, double *p99, double *best)
{
	*med = bench_median(v, n) / 1e3;   /* sorted in place by bench_median */
	*p99 = bench_quantile_sorted(v, n, 0.99) / 1e3;
	*best = v[0] / 1e3;
}

/* Connect, insert the prompt and look it up once: from then on it is fully cached. */
static int rtt_prepare(const char *sock, const uint32_t *tokens, struct kvp_client **out,
		       struct rtt_result *res)
{
	const uint32_t n = SOCKET_PROMPT_TOKENS;
	struct kvp_server_info info;
	struct kvp_client *c = NULL;
	struct kvp_match m;
	int rc;

	if (kvp_tool_connect(PROG " index", sock, &c) < 0)
		return -1;
	*out = c;
	memset(&info, 0, sizeof(info));
	rc = kvp_client_hello(c, NULL, NULL, &info);
	if (rc < 0) {
		kvp_tool_perror(PROG " index", "hello", c, rc);
		return -1;
	}
	res->daemon_block = info.block_tokens;
	rc = kvp_client_insert(c, tokens, n, 0, &m);
	if (rc < 0) {
		kvp_tool_perror(PROG " index", "insert of the 2k-token prompt", c, rc);
		return -1;
	}
	rc = kvp_client_lookup(c, tokens, n, 0, &m);
	if (rc < 0) {
		kvp_tool_perror(PROG " index", "lookup of the 2k-token prompt", c, rc);
		return -1;
	}
	res->matched = m.matched_tokens;
	if (info.block_tokens && m.matched_tokens != n / info.block_tokens * info.block_tokens)
		fprintf(stderr, PROG " index: warning: only %u of %u tokens matched after the "
			"insert (is the pool too small?)\n", m.matched_tokens, n);
	return 0;
}

/* The LOOKUP frame of tokens, as the client library sends it: the echo's request. */
static void build_lookup_frame(uint8_t *frame, const uint32_t *tokens, uint32_t n)
{
	put_u32le(frame, FRAME_MAGIC);
	frame[4] = 1;
	frame[5] = FRAME_T_LOOKUP;
	frame[6] = frame[7] = 0;
	put_u32le(frame + 8, 1);
	put_u32le(frame + 12, 8 + 4 * n);   /* the payload: flags, n_tokens, tokens */
	put_u32le(frame + 16, 0);
	put_u32le(frame + 20, n);
	for (uint32_t i = 0; i < n; i++)
		put_u32le(frame + 24 + 4 * (size_t)i, tokens[i]);
}

/* Where the round trips of bench_socket go. */
struct rtt_run {
	struct kvp_client *c;
	const uint32_t *tokens;
	int echo_fd;
	const uint8_t *frame;
	uint8_t *back;
	double *tl, *te;          /* iters times each, ns */
};

/*
 * Alternate chunks of LOOKUPs and echoes, so that both see the same machine state (CPU
 * placement, frequency, neighbours):
 *   | warm-up L | warm-up E | L x CHUNK | E x CHUNK | L x CHUNK | E x CHUNK | ...
 */
static int rtt_alternate(struct rtt_run *r, uint32_t iters)
{
	const uint32_t n = SOCKET_PROMPT_TOKENS;
	struct kvp_match m;
	int rc;

	for (uint32_t done = 0, first = 1; done < iters; first = 0) {
		uint32_t k = first ? SOCKET_WARMUP : iters - done;

		if (!first && k > SOCKET_CHUNK)
			k = SOCKET_CHUNK;
		for (uint32_t i = 0; i < k; i++) {
			uint64_t a = kvp_tool_now_ns();

			rc = kvp_client_lookup(r->c, r->tokens, n, 0, &m);
			if (rc < 0) {
				kvp_tool_perror(PROG " index", "lookup", r->c, rc);
				return -1;
			}
			if (!first)
				r->tl[done + i] = (double)(kvp_tool_now_ns() - a);
		}
		for (uint32_t i = 0; i < k; i++) {
			uint64_t a = kvp_tool_now_ns();

			if (write_full(r->echo_fd, r->frame, FRAME_BYTES) < 0 ||
			    read_full(r->echo_fd, r->back, FRAME_BYTES) != 1) {
				fprintf(stderr, PROG " index: echo round trip failed: %s\n",
					strerror(errno));
				return -1;
			}
			if (!first)
				r->te[done + i] = (double)(kvp_tool_now_ns() - a);
		}
		if (!first)
			done += k;
	}
	return 0;
}

/* A client connection to the echo at path; -1 (message printed) on failure. */
static int echo_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		fprintf(stderr, PROG " index: connect %s: %s\n", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

static int bench_socket(const char *sock, const char *tmpdir, uint32_t iters,
			bool echo_process, struct rtt_result *res)
{
	uint32_t tokens[SOCKET_PROMPT_TOKENS];
	struct echo e = { .listen_fd = -1 };
	struct rtt_run r = { .tokens = tokens, .echo_fd = -1 };
	uint8_t *frame = NULL;
	int ret = -1;

	memset(res, 0, sizeof(*res));
	res->request_bytes = FRAME_BYTES;
	synth_tokens(tokens, SOCKET_PROMPT_TOKENS, 0xB0B);
	if (rtt_prepare(sock, tokens, &r.c, res) < 0)
		goto out;
	r.tl = calloc(iters, sizeof(*r.tl));
	r.te = calloc(iters, sizeof(*r.te));
	frame = malloc(FRAME_BYTES);
	r.back = malloc(FRAME_BYTES);
	if (!r.tl || !r.te || !frame || !r.back) {
		fprintf(stderr, PROG " index: out of memory\n");
		goto out;
	}
	/* The same request bytes, echoed by a bare server thread. */
	build_lookup_frame(frame, tokens, SOCKET_PROMPT_TOKENS);
	r.frame = frame;
	if (echo_start(&e, tmpdir, FRAME_BYTES, echo_process) < 0)
		goto out;
	r.echo_fd = echo_connect(e.path);
	if (r.echo_fd < 0 || rtt_alternate(&r, iters) < 0)
		goto out;
	if (memcmp(frame, r.back, FRAME_BYTES) != 0) {
		fprintf(stderr, PROG " index: the echo returned different bytes\n");
		goto out;
	}
	summarize(r.tl, iters, &res->lookup_med_us, &res->lookup_p99_us, &res->lookup_best_us);
	summarize(r.te, iters, &res->echo_med_us, &res->echo_p99_us, &res->echo_best_us);
	res->ratio = res->lookup_med_us / res->echo_med_us;
	ret = 0;
out:
	if (r.echo_fd >= 0)
		close(r.echo_fd);
	echo_stop(&e);
	free(r.back);
	free(frame);
	free(r.te);
	free(r.tl);
	kvp_client_close(r.c);
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

/* ---- the command --------------------------------------------------------------- */

static void usage_index(FILE *f)
{
	fprintf(f,
		"Usage: kvprefix-bench index [--block-tokens N] [--socket PATH]\n"
		"                            [--iterations N]\n"
		"Time the index against hashing alone, and the protocol against moving the\n"
		"bytes alone:\n"
		"  (a) in process: kvp_tree_match (hash + lookup) of a fully cached prompt of\n"
		"      1k, 32k and 128k tokens vs one XXH3_128bits over the same bytes\n"
		"      (target at 32k: <= %.1fx);\n"
		"  (b) LOOKUP round trip of a fully cached 2k-token prompt through libkvprefix\n"
		"      vs a bare Unix-socket echo of the same request bytes (target <= %.1fx).\n"
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

static int parse_index(int argc, char **argv, struct index_opts *o)
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
	int opt, choice;

	*o = (struct index_opts){ .block = 16, .iters = SOCKET_ITERS_DEFAULT, .pin = true };
	optind = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":b:s:i:e:Ph", opts, NULL)) != -1) {
		switch (opt) {
		case 'b':
			if (!bench_parse_u64("index", "--block-tokens", optarg, 1,
					     KVP_BLOCK_TOKENS_MAX, &o->block))
				return KVP_EXIT_USAGE;
			break;
		case 's': o->sock = optarg; break;
		case 'i':
			if (!bench_parse_u64("index", "--iterations", optarg, 1, 10000000,
					     &o->iters))
				return KVP_EXIT_USAGE;
			break;
		case 'e':
			choice = bench_parse_choice("index", "--echo", optarg, "thread",
						    "process");
			if (choice < 0)
				return KVP_EXIT_USAGE;
			o->echo_process = choice == 1;
			break;
		case 'P': o->pin = false; break;
		case 'h': usage_index(stdout); return KVP_EXIT_OK;
		default: return bench_bad_option("index", argv, opt);
		}
	}
	if (optind < argc)
		return bench_usage_error("index", "unexpected argument '%s'", argv[optind]);
	return BENCH_RUN;
}

/* (a) for every size, printed as a table; the 32k ratio in *r32. */
static int run_index_inproc(uint64_t block, struct inproc_result in[N_SIZES], double *r32)
{
	double chain32 = NAN;

	printf("kvprefix-bench index: block %" PRIu64 " tokens\n\n", block);
	printf("(a) in process: kvp_tree_match of a fully cached prompt vs XXH3_128bits\n");
	printf("  %8s %7s %14s %14s %14s %14s %8s %14s %8s\n", "tokens", "blocks", "lookup med",
	       "lookup best", "xxh3 med", "xxh3 best", "ratio", "keys alone", "ratio");
	fflush(stdout);
	*r32 = NAN;
	kvp_index_set_allocator(count_alloc, count_free);   /* the trees' memory, counted */
	for (size_t i = 0; i < N_SIZES; i++) {
		if (bench_inproc((uint32_t)block, inproc_sizes[i], 1 + i, &in[i]) < 0)
			return -1;
		printf("  %8zu %7zu %11.1f us %11.1f us %11.1f us %11.1f us %7.2fx %11.1f us %7.2fx\n",
		       in[i].tokens, in[i].blocks, in[i].match.median_ns / 1e3,
		       in[i].match.best_ns / 1e3, in[i].xxh3.median_ns / 1e3,
		       in[i].xxh3.best_ns / 1e3, in[i].ratio, in[i].chain.median_ns / 1e3,
		       in[i].chain_ratio);
		fflush(stdout);
		if (inproc_sizes[i] == 32768) {
			*r32 = in[i].ratio;
			chain32 = in[i].chain_ratio;
		}
	}
	kvp_index_set_allocator(NULL, NULL);
	printf("  32k lookup ratio %.2fx, target <= %.1fx: %s (the chained keys alone, medians: "
	       "%.2fx)\n", *r32, TARGET_LOOKUP_32K_RATIO,
	       *r32 <= TARGET_LOOKUP_32K_RATIO ? "met" : "MISSED", chain32);
	printf("  index metadata: %.0f bytes a block beside its %" PRIu64 " tokens' %" PRIu64
	       " bytes (%zu blocks: nodes, hash table, allocator overhead), target <= %.0f: %s\n\n",
	       in[N_SIZES - 1].meta_bytes, block, block * 4, in[N_SIZES - 1].blocks,
	       TARGET_META_BYTES, in[N_SIZES - 1].meta_bytes <= TARGET_META_BYTES ? "met" : "MISSED");
	fflush(stdout);
	return 0;
}

/*
 * The daemon (b) talks to and a directory for the echo's socket: with --socket, that
 * daemon and a directory of our own; else our own daemon (pinned with this process
 * to one CPU unless --no-pin) and its directory. *sock and tmpdir set; 0 or -1.
 */
static int index_daemon(const struct index_opts *o, struct kvp_daemon *d, const char **sock,
			char *tmpdir, size_t cap, int *pinned_cpu)
{
	char bt[16];
	const char *args[] = { "--index-only", "--block-tokens", bt, NULL };

	*pinned_cpu = -1;
	if (o->sock) {
		*sock = o->sock;
		return bench_tmpdir("index", tmpdir, cap, "kvprefix-bench");
	}
	if (o->pin) {
		/* Before the fork: the daemon and the echo inherit the CPU. */
		*pinned_cpu = pin_to_one_cpu();
		if (*pinned_cpu < 0)
			return -1;
	}
	snprintf(bt, sizeof(bt), "%" PRIu64, o->block);
	if (bench_daemon_start(d, "index", args, DAEMON_WAIT_MS) < 0)
		return -1;
	*sock = d->socket;
	snprintf(tmpdir, cap, "%s", d->dir);
	return 0;
}

static void print_index_socket(const struct rtt_result *rtt, int pinned_cpu)
{
	printf("  %-26s %10s %10s %10s\n", "", "median", "p99", "best");
	printf("  %-26s %7.2f us %7.2f us %7.2f us\n", "LOOKUP via libkvprefix",
	       rtt->lookup_med_us, rtt->lookup_p99_us, rtt->lookup_best_us);
	printf("  %-26s %7.2f us %7.2f us %7.2f us\n", "bare Unix-socket echo",
	       rtt->echo_med_us, rtt->echo_p99_us, rtt->echo_best_us);
	printf("  daemon block %u tokens, matched %u of %u tokens\n", rtt->daemon_block,
	       rtt->matched, SOCKET_PROMPT_TOKENS);
	if (pinned_cpu >= 0)
		printf("  client, daemon and echo all pinned to CPU %d (--no-pin to let them "
		       "move)\n", pinned_cpu);
	else
		printf("  not pinned: the daemon and the echo may sit on other CPUs than the "
		       "client,\n  and a cross-CPU wake-up can cost more than the request "
		       "itself (on VMs tens of us)\n");
	printf("  2k round-trip ratio %.2fx, target <= %.1fx: %s\n\n", rtt->ratio,
	       TARGET_RTT_2K_RATIO, rtt->ratio <= TARGET_RTT_2K_RATIO ? "met" : "MISSED");
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
	cJSON_AddNumberToObject(o, "keys_ns_median", r->chain.median_ns);
	cJSON_AddNumberToObject(o, "keys_ratio", r->chain_ratio);
	return o;
}

/* (b)'s figures into so. */
static void json_index_socket(cJSON *so, const struct index_opts *o,
			      const struct rtt_result *rtt, int pinned_cpu)
{
	cJSON_AddNumberToObject(so, "tokens", SOCKET_PROMPT_TOKENS);
	cJSON_AddNumberToObject(so, "request_bytes", (double)rtt->request_bytes);
	cJSON_AddNumberToObject(so, "daemon_block_tokens", rtt->daemon_block);
	cJSON_AddNumberToObject(so, "matched_tokens", rtt->matched);
	cJSON_AddNumberToObject(so, "iterations", (double)o->iters);
	cJSON_AddNumberToObject(so, "pinned_cpu", pinned_cpu);
	cJSON_AddStringToObject(so, "echo", o->echo_process ? "process" : "thread");
	cJSON_AddNumberToObject(so, "lookup_us_median", rtt->lookup_med_us);
	cJSON_AddNumberToObject(so, "lookup_us_p99", rtt->lookup_p99_us);
	cJSON_AddNumberToObject(so, "echo_us_median", rtt->echo_med_us);
	cJSON_AddNumberToObject(so, "echo_us_p99", rtt->echo_p99_us);
}

/* Every figure into j; false when out of memory. */
static bool json_index_fields(cJSON *j, const struct index_opts *o,
			      const struct inproc_result in[N_SIZES], double r32,
			      const struct rtt_result *rtt, int pinned_cpu)
{
	cJSON *arr, *so;

	if (!cJSON_AddNumberToObject(j, "block_tokens", (double)o->block))
		return false;
	arr = cJSON_AddArrayToObject(j, "inproc");
	if (!arr)
		return false;
	for (size_t i = 0; i < N_SIZES; i++) {
		cJSON *t = timing_json(&in[i]);

		if (!t || !cJSON_AddItemToArray(arr, t)) {
			cJSON_Delete(t);
			return false;
		}
	}
	cJSON_AddNumberToObject(j, "lookup_32k_ratio", r32);
	cJSON_AddNumberToObject(j, "meta_bytes_per_block", in[N_SIZES - 1].meta_bytes);
	cJSON_AddNumberToObject(j, "meta_bytes_target", TARGET_META_BYTES);
	cJSON_AddNumberToObject(j, "lookup_32k_target", TARGET_LOOKUP_32K_RATIO);
	cJSON_AddBoolToObject(j, "lookup_32k_met", r32 <= TARGET_LOOKUP_32K_RATIO);
	so = cJSON_AddObjectToObject(j, "socket");
	if (!so)
		return false;
	json_index_socket(so, o, rtt, pinned_cpu);
	cJSON_AddNumberToObject(j, "rtt_2k_ratio", rtt->ratio);
	cJSON_AddNumberToObject(j, "rtt_2k_target", TARGET_RTT_2K_RATIO);
	cJSON_AddBoolToObject(j, "rtt_2k_met", rtt->ratio <= TARGET_RTT_2K_RATIO);
	return true;
}

/* The JSON line; false (message printed) when out of memory. */
static bool json_index(const struct index_opts *o, const struct inproc_result in[N_SIZES],
		       double r32, const struct rtt_result *rtt, int pinned_cpu)
{
	cJSON *j = cJSON_CreateObject();

	return bench_json_finish("index", j,
				 j && json_index_fields(j, o, in, r32, rtt, pinned_cpu));
}

int bench_cmd_index(int argc, char **argv)
{
	struct index_opts o;
	struct inproc_result in[N_SIZES];
	struct rtt_result rtt;
	struct kvp_daemon d = { 0 };
	const char *sock = NULL;
	char tmpdir[64] = "";
	int pinned_cpu = -1, ret = parse_index(argc, argv, &o);
	double r32;

	if (ret != BENCH_RUN)
		return ret;
	ret = KVP_EXIT_FAIL;
	if (run_index_inproc(o.block, in, &r32) < 0 ||
	    index_daemon(&o, &d, &sock, tmpdir, sizeof(tmpdir), &pinned_cpu) < 0)
		goto out;
	printf("(b) over the socket %s: LOOKUP of a cached %u-token prompt vs echo of the "
	       "same %zu request bytes, %" PRIu64 " round trips\n", sock, SOCKET_PROMPT_TOKENS,
	       FRAME_BYTES, o.iters);
	fflush(stdout);
	if (bench_socket(sock, tmpdir, (uint32_t)o.iters, o.echo_process, &rtt) < 0)
		goto out;
	print_index_socket(&rtt, pinned_cpu);
	if (json_index(&o, in, r32, &rtt, pinned_cpu))
		ret = KVP_EXIT_OK;
out:
	bench_daemon_stop(&d);   /* with its directory, the echo's when it started one */
	if (o.sock && tmpdir[0])
		rmdir(tmpdir);
	return ret;
}
