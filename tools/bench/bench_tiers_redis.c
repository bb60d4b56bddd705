/*
 * bench_tiers_redis.c - kvprefix-bench tiers, the Redis part: two daemons standing for
 * two machines share blocks through a redis-server on a private Unix socket.
 *
 *   per round, a new prompt: daemon A computes it (TTFT cold) and writes its blocks to
 *   Redis; daemon B, which never saw it, asks for it (TTFT from Redis: one pipelined
 *   round trip, every value checked, then the last token's step)
 *   then: B's fetch rate (KV bytes used over the fetches' time) against redis-benchmark
 *   GET on values of a block record's size over the same socket, one connection,
 *   pipelined as B fetches
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "bench_tiers.h"
#include "spawn.h"
#include "util.h"

#define CMD "tiers"
#define REDIS_SERVER "/usr/bin/redis-server"
#define REDIS_BENCHMARK "/usr/bin/redis-benchmark"

static double redis_stat(struct kvp_client *c, const char *key)
{
	return tiers_stat(c, "redis", key);
}

static pid_t redis_start(const char *sock)
{
	pid_t pid = fork();

	if (pid == 0) {
		int null = open("/dev/null", O_WRONLY);

		dup2(null, STDOUT_FILENO);
		execl(REDIS_SERVER, "redis-server", "--port", "0", "--unixsocket", sock, "--save", "",
		      "--appendonly", "no", "--loglevel", "warning", (char *)NULL);
		_exit(127);
	}
	for (int i = 0; pid > 0 && i < 250 && access(sock, F_OK) != 0; i++)
		bench_sleep_ms(20);
	return pid;
}

/* redis-benchmark GET of size-byte values: GB/s, NAN when it cannot be run. */
static double redis_benchmark(const char *sock, uint64_t size, uint32_t pipeline)
{
	char cmd[PATH_MAX + 256], out[4096];
	double rps = NAN;
	char *p;

	FILE *f;
	size_t n;

	/* SET first: GET of a missing key would time nil replies */
	snprintf(cmd, sizeof(cmd), "%s -s '%s' -t set,get -d %llu -n 2000 -c 1 -P %u -q 2>/dev/null",
		 REDIS_BENCHMARK, sock, (unsigned long long)size, pipeline);
	if (access(REDIS_BENCHMARK, X_OK) != 0 || !(f = popen(cmd, "r")))
		return NAN;
	n = fread(out, 1, sizeof(out) - 1, f);
	out[n] = '\0';
	/* progress lines end in \r; the result is "GET: N requests per second" */
	if (pclose(f) != 0 || !(p = strstr(out, "GET: ")))
		return NAN;
	for (char *q = p; (q = strstr(q + 1, "GET: "));)
		p = q;
	rps = strtod(p + 5, NULL);
	return rps * (double)size / 1e9;
}

/* Wait until the daemon on c has written at least n blocks to Redis. */
static void wait_writes(struct kvp_client *c, double n)
{
	for (int i = 0; i < 1000 && !(redis_stat(c, "writes") >= n); i++)
		bench_sleep_ms(10);
}

static int ttft_of(struct kvp_client *c, const uint32_t *p, uint32_t n, const char *what,
		   double *ms, uint32_t *cached)
{
	struct kvp_usage u;

	if (bench_generate(PROG " " CMD, c, p, n, 1, NULL, &u, what) != 0)
		return -1;
	*ms = (double)u.ttft_us / 1e3;
	*cached = u.cached_tokens;
	return 0;
}

static int run_rounds(struct kvp_client *ca, struct kvp_client *cb, uint32_t vocab,
		      uint32_t n, struct tiers_redis_result *res)
{
	uint32_t *p = malloc(n * sizeof(*p)), c0;
	double hb0 = redis_stat(cb, "hit_bytes");
	double us0 = redis_stat(cb, "fetch_us_mean") * redis_stat(cb, "round_trips");
	int rc = -1;

	if (!p)
		return -1;
	for (uint32_t r = 0; r < res->rounds; r++) {
		bench_rand_tokens(p, n, 5000 + r, vocab);
		if (ttft_of(ca, p, n, "cold on A", &res->cold_ms[r], &c0))
			goto out;
		wait_writes(ca, (double)(r + 1) * (n / 16));
		if (ttft_of(cb, p, n, "from Redis on B", &res->redis_ms[r], &res->cached[r]))
			goto out;
		fprintf(stderr, CMD ": redis round %u: TTFT cold %.1f ms on A, %.1f ms on B from "
			"Redis (%u of %u tokens cached)\n", r + 1, res->cold_ms[r], res->redis_ms[r],
			res->cached[r], n);
	}
	res->fetch_gbs = (redis_stat(cb, "hit_bytes") - hb0) /
			 (redis_stat(cb, "fetch_us_mean") * redis_stat(cb, "round_trips") - us0) / 1e3;
	rc = 0;
out:
	free(p);
	return rc;
}

int bench_tiers_redis(const char *model, const char *dir, uint32_t prompt_tokens,
		      uint32_t rounds, struct tiers_redis_result *res)
{
	char sock[PATH_MAX], url[PATH_MAX + 8];
	const char *args[] = { "--model", model, "--block-tokens", "16", "--redis", url, NULL };
	struct kvp_daemon a = { 0 }, b = { 0 };
	struct kvp_client *ca = NULL, *cb = NULL;
	struct kvp_server_info info;
	pid_t redis;
	int rc = -1;

	res->rounds = rounds;
	if (access(REDIS_SERVER, X_OK) != 0) {
		fprintf(stderr, CMD ": no %s (scripts/setup.sh installs it): Redis part skipped\n",
			REDIS_SERVER);
		return 0;
	}
	snprintf(sock, sizeof(sock), "%s/redis.sock", dir);
	snprintf(url, sizeof(url), "unix:%s", sock);
	redis = redis_start(sock);
	if (redis <= 0) {
		fprintf(stderr, PROG " " CMD ": cannot start %s: %s\n", REDIS_SERVER, strerror(errno));
		return -1;
	}
	if (bench_daemon_start(&a, CMD, args, ENGINE_DAEMON_WAIT_MS) ||
	    bench_daemon_start(&b, CMD, args, ENGINE_DAEMON_WAIT_MS) ||
	    bench_connect_engine(PROG " " CMD, a.socket, &ca, &info) ||
	    bench_connect_engine(PROG " " CMD, b.socket, &cb, &info))
		goto out;
	for (int i = 0; i < 300 && redis_stat(ca, "connected") != 1; i++)
		bench_sleep_ms(10);
	if (run_rounds(ca, cb, info.vocab_size, prompt_tokens, res) == 0) {
		res->value_bytes = (uint64_t)(redis_stat(ca, "write_bytes") / redis_stat(ca, "writes"));
		/* a record is the KV and 4 KiB of header and tokens */
		res->bench_gbs = redis_benchmark(sock, res->value_bytes + 4096, prompt_tokens / 16);
		res->ran = true;
		rc = 0;
	}
out:
	kvp_client_close(ca);
	kvp_client_close(cb);
	bench_daemon_stop(&a);
	bench_daemon_stop(&b);
	kill(redis, SIGKILL);
	waitpid(redis, NULL, 0);
	unlink(sock);
	return rc;
}
