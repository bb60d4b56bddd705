/*
 * bench_tiers.c - kvprefix-bench tiers: what the disk tier saves, through a kvprefixd
 * this command starts with --disk-cache in a temporary directory and a pool of one
 * prompt's blocks.
 *
 *   per round, two new prompts A and B of --prompt-tokens tokens:
 *     A cold          TTFT computing the whole prompt
 *     A again         TTFT from the pool
 *     B               evicts A's blocks to the disk (written by the tier's thread)
 *     (DIR/blocks synced and dropped from the page cache: posix_fadvise DONTNEED)
 *     A a third time  TTFT from the disk tier: its blocks read back, then one step
 *   then the same bytes of DIR/blocks read front to back with plain read(2), after
 *   dropping them from the page cache the same way: the file's sequential read rate,
 *   against the promotion rate (A's KV bytes over the third TTFT less the second).
 *
 * Medians over the rounds. Progress on stderr; the table, then one JSON line.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "bench_engine.h"
#include "bench_tiers.h"
#include "spawn.h"
#include "util.h"

#define CMD "tiers"

struct tiers_opts {
	const char *model;
	uint32_t prompt_tokens;
	uint32_t rounds;
};

struct tiers_result {
	double cold_ms[TIERS_MAX_ROUNDS], pool_ms[TIERS_MAX_ROUNDS], disk_ms[TIERS_MAX_ROUNDS];
	uint32_t disk_cached[TIERS_MAX_ROUNDS];
	double promote_gbs[TIERS_MAX_ROUNDS];
	double read_gbs;
	uint64_t block_kv_bytes;
	uint32_t rounds;
	struct tiers_redis_result redis;
};

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: kvprefix-bench tiers [--model FILE] [--prompt-tokens N] [--rounds N]\n"
		"                            [--quick]\n"
		"Start kvprefixd with --disk-cache in a temporary directory and a pool of one\n"
		"prompt's blocks, and time a prompt's first token computed cold, from the pool,\n"
		"and from the disk tier after another prompt evicted it (the file dropped from\n"
		"the page cache first); then the disk tier's promotion rate against a plain\n"
		"sequential read of the same bytes of its file.\n"
		"\n"
		"  -m, --model FILE        GGUF model (default: the default model, made with\n"
		"                          kvprefix-mkmodel in the temporary directory)\n"
		"  -n, --prompt-tokens N   tokens of each prompt, 64..65536 (default 2000)\n"
		"  -r, --rounds N          rounds, 1..16, medians reported (default 3)\n"
		"  -q, --quick             one round of 1000-token prompts\n"
		"  -h, --help              show this help\n");
}

static int parse_tiers(int argc, char **argv, struct tiers_opts *o)
{
	static const struct option longs[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "prompt-tokens", required_argument, NULL, 'n' },
		{ "rounds", required_argument, NULL, 'r' },
		{ "quick", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	uint64_t v;
	int opt;

	*o = (struct tiers_opts){ .prompt_tokens = 2000, .rounds = 3 };
	optind = 1;
	while ((opt = getopt_long(argc, argv, ":m:n:r:qh", longs, NULL)) != -1) {
		switch (opt) {
		case 'm': o->model = optarg; break;
		case 'n':
			if (!bench_parse_u64(CMD, "--prompt-tokens", optarg, 64, 65536, &v))
				return KVP_EXIT_USAGE;
			o->prompt_tokens = (uint32_t)v;
			break;
		case 'r':
			if (!bench_parse_u64(CMD, "--rounds", optarg, 1, TIERS_MAX_ROUNDS, &v))
				return KVP_EXIT_USAGE;
			o->rounds = (uint32_t)v;
			break;
		case 'q': o->prompt_tokens = 1000; o->rounds = 1; break;
		case 'h': usage(stdout); return KVP_EXIT_OK;
		default: return bench_bad_option(CMD, argv, opt);
		}
	}
	if (optind < argc)
		return bench_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
	return BENCH_RUN;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double tiers_stat(struct kvp_client *c, const char *tier, const char *key)
{
	char *json = NULL;
	cJSON *o;
	double x = NAN;

	if (kvp_client_stats(c, &json) != 0)
		return NAN;
	o = cJSON_Parse(json);
	if (o)
		x = bench_json_number(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "tiers"), tier), key);
	cJSON_Delete(o);
	free(json);
	return x;
}

static double disk_stat(struct kvp_client *c, const char *key)
{
	return tiers_stat(c, "disk", key);
}

/* Wait until the disk tier's writes stop growing (the evictions' writes are done). */
static void settle_writes(struct kvp_client *c)
{
	double last = -1;

	for (int i = 0; i < 200; i++) {
		double w = disk_stat(c, "demotions");

		if (w == last)
			return;
		last = w;
		bench_sleep_ms(50);
	}
}

/* Sync the file and drop its pages from the page cache. 0 or -1. */
static int drop_cache(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), rc;

	if (fd < 0)
		return -1;
	rc = fdatasync(fd) == 0 && posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0 ? 0 : -1;
	close(fd);
	return rc;
}

/* The first bytes of path read front to back after dropping them: GB/s, NAN on error. */
static double sequential_read(const char *path, uint64_t bytes)
{
	const size_t chunk = 1u << 20;
	char *buf = malloc(chunk);
	uint64_t done = 0;
	double t0;
	int fd;

	if (!buf || drop_cache(path) || (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
		free(buf);
		return NAN;
	}
	t0 = now_s();
	while (done < bytes) {
		ssize_t r = read(fd, buf, bytes - done < chunk ? (size_t)(bytes - done) : chunk);

		if (r <= 0)
			break;
		done += (uint64_t)r;
		bench_sink += (uint8_t)buf[0];
	}
	t0 = now_s() - t0;
	close(fd);
	free(buf);
	return done ? (double)done / t0 / 1e9 : NAN;
}

/* One generation of one token: its TTFT in ms and cached tokens. 0 or -1. */
static int ttft(struct kvp_client *c, const uint32_t *p, uint32_t n, const char *what,
		double *ms, uint32_t *cached)
{
	struct kvp_usage u;

	if (bench_generate(PROG " " CMD, c, p, n, 1, NULL, &u, what) != 0)
		return -1;
	*ms = (double)u.ttft_us / 1e3;
	if (cached)
		*cached = u.cached_tokens;
	return 0;
}

static int run_round(struct kvp_client *c, const struct tiers_opts *o, const char *blocks,
		     uint32_t r, uint32_t vocab, struct tiers_result *res)
{
	const uint32_t n = o->prompt_tokens;
	uint32_t *a = malloc(n * sizeof(*a)), *b = malloc(n * sizeof(*b));
	double bytes0, bytes1;
	int rc = -1;

	if (!a || !b)
		goto out;
	bench_rand_tokens(a, n, 1000 + 2 * r, vocab);
	bench_rand_tokens(b, n, 1001 + 2 * r, vocab);
	if (ttft(c, a, n, "cold", &res->cold_ms[r], NULL) ||
	    ttft(c, a, n, "from the pool", &res->pool_ms[r], NULL) ||
	    ttft(c, b, n, "another prompt", &(double){ 0 }, NULL))
		goto out;
	settle_writes(c);
	if (drop_cache(blocks)) {
		fprintf(stderr, PROG " " CMD ": cannot drop %s from the page cache: %s\n", blocks,
			strerror(errno));
		goto out;
	}
	bytes0 = disk_stat(c, "promotion_bytes");
	if (ttft(c, a, n, "from the disk", &res->disk_ms[r], &res->disk_cached[r]))
		goto out;
	bytes1 = disk_stat(c, "promotion_bytes");
	res->promote_gbs[r] = res->disk_ms[r] > res->pool_ms[r]
				      ? (bytes1 - bytes0) / ((res->disk_ms[r] - res->pool_ms[r]) / 1e3) / 1e9
				      : NAN;
	fprintf(stderr, CMD ": round %u: TTFT cold %.1f ms, pool %.1f ms, disk %.1f ms (%u of %u "
		"tokens cached)\n", r + 1, res->cold_ms[r], res->pool_ms[r], res->disk_ms[r],
		res->disk_cached[r], n);
	rc = 0;
out:
	free(a);
	free(b);
	return rc;
}

/* The daemon: the model, its disk tier in dir, a pool of one prompt's blocks. */
static int start_daemon(const struct tiers_opts *o, const char *model, const char *dir,
			struct kvp_daemon *d)
{
	char disk[PATH_MAX], cap[16];
	const char *args[] = { "--model", model, "--block-tokens", "16", "--capacity-blocks", cap,
			       "--disk-cache", disk, "--disk-cache-gb", "4", NULL };

	snprintf(disk, sizeof(disk), "%s/disk", dir);
	snprintf(cap, sizeof(cap), "%u", o->prompt_tokens / 16 + 1);
	return bench_daemon_start(d, CMD, args, ENGINE_DAEMON_WAIT_MS);
}

static int run_tiers(const struct tiers_opts *o, const char *model, const char *dir,
		     struct tiers_result *res)
{
	char blocks[PATH_MAX];
	struct kvp_daemon d = { 0 };
	struct kvp_server_info info;
	struct kvp_client *c = NULL;
	int rc = -1;

	snprintf(blocks, sizeof(blocks), "%s/disk/blocks", dir);
	if (start_daemon(o, model, dir, &d) || bench_connect_engine(PROG " " CMD, d.socket, &c, &info))
		goto out;
	res->rounds = o->rounds;
	for (uint32_t r = 0; r < o->rounds; r++)
		if (run_round(c, o, blocks, r, info.vocab_size, res))
			goto out;
	res->block_kv_bytes = (uint64_t)(disk_stat(c, "demotion_bytes") / disk_stat(c, "demotions"));
	/* the same bytes the rounds wrote: the slots from the first on */
	res->read_gbs = sequential_read(blocks, (uint64_t)(disk_stat(c, "bytes")));
	rc = 0;
out:
	kvp_client_close(c);
	bench_daemon_stop(&d);
	return rc;
}

/* The median of the rounds whose promotion rate could be measured (a round whose disk
 * TTFT was no longer than its pool one has none); NAN when none could. */
static double promotion_median(const double *gbs, size_t n)
{
	double v[TIERS_MAX_ROUNDS];
	size_t k = 0;

	for (size_t i = 0; i < n; i++)
		if (isfinite(gbs[i]))
			v[k++] = gbs[i];
	return k ? bench_median(v, k) : NAN;
}

static void print_tiers(const struct tiers_opts *o, struct tiers_result *r)
{
	const size_t n = r->rounds;
	double cold = bench_median(r->cold_ms, n), pool = bench_median(r->pool_ms, n);
	double disk = bench_median(r->disk_ms, n), prom = promotion_median(r->promote_gbs, n);
	cJSON *j = cJSON_CreateObject();
	bool built = j != NULL;

	printf("kvprefixd with --disk-cache, a %u-token prompt, a pool of its blocks; medians of "
	       "%zu rounds\n", o->prompt_tokens, n);
	printf("  TTFT computed cold      %10.1f ms\n", cold);
	printf("  TTFT from the pool      %10.1f ms   (%.1fx faster than cold)\n", pool, cold / pool);
	printf("  TTFT from the disk tier %10.1f ms   (%.1fx faster than cold; %u tokens read back)\n",
	       disk, cold / disk, r->disk_cached[0]);
	printf("  disk promotion          %10.2f GB/s (blocks of %llu KV bytes) against a sequential "
	       "read of the same file at %.2f GB/s (%.0f%%)\n", prom,
	       (unsigned long long)r->block_kv_bytes, r->read_gbs, 100.0 * prom / r->read_gbs);
	if (r->redis.ran) {
		const struct tiers_redis_result *x = &r->redis;
		double rc = bench_median(r->redis.cold_ms, n), rr = bench_median(r->redis.redis_ms, n);

		printf("  Redis: two daemons, one Redis on a Unix socket; the second asks for a prompt "
		       "the first computed\n");
		printf("  TTFT computed cold      %10.1f ms\n", rc);
		printf("  TTFT from Redis         %10.1f ms   (%.1fx faster than cold; target 5x; %u "
		       "tokens read back)\n", rr, rc / rr, x->cached[0]);
		printf("  Redis fetch             %10.2f GB/s against redis-benchmark GET of %llu-byte "
		       "values at %.2f GB/s (one connection, pipelined)\n", x->fetch_gbs,
		       (unsigned long long)x->value_bytes + 4096, x->bench_gbs);
		built = built && cJSON_AddNumberToObject(j, "redis_ttft_cold_ms", rc) &&
			cJSON_AddNumberToObject(j, "redis_ttft_ms", rr) &&
			cJSON_AddNumberToObject(j, "cold_over_redis", rc / rr) &&
			cJSON_AddNumberToObject(j, "redis_fetch_gbs", x->fetch_gbs) &&
			cJSON_AddNumberToObject(j, "redis_benchmark_get_gbs", x->bench_gbs);
	}
	built = built && cJSON_AddStringToObject(j, "bench", "tiers") &&
		cJSON_AddNumberToObject(j, "prompt_tokens", o->prompt_tokens) &&
		cJSON_AddNumberToObject(j, "rounds", (double)n) &&
		cJSON_AddNumberToObject(j, "ttft_cold_ms", cold) &&
		cJSON_AddNumberToObject(j, "ttft_pool_ms", pool) &&
		cJSON_AddNumberToObject(j, "ttft_disk_ms", disk) &&
		cJSON_AddNumberToObject(j, "cold_over_disk", cold / disk) &&
		cJSON_AddNumberToObject(j, "promotion_gbs", prom) &&
		cJSON_AddNumberToObject(j, "sequential_read_gbs", r->read_gbs);
	bench_json_finish(CMD, j, built);
}

/* The temporary directory: the disk tier's files and folder, then the rest. */
static void remove_dir(const char *dir)
{
	static const char *const files[] = { "disk/blocks", "disk/manifest", "disk/manifest.tmp" };
	char p[PATH_MAX];

	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		snprintf(p, sizeof(p), "%s/%s", dir, files[i]);
		(void)unlink(p);
	}
	snprintf(p, sizeof(p), "%s/disk", dir);
	(void)rmdir(p);
	(void)kvp_spawn_rmdir(dir);   /* and the default model in it */
}

int bench_cmd_tiers(int argc, char **argv)
{
	struct tiers_opts o;
	struct tiers_result *res;
	char dir[64], model[PATH_MAX];
	int rc = parse_tiers(argc, argv, &o);

	if (rc != BENCH_RUN)
		return rc;
	res = calloc(1, sizeof(*res));
	if (!res || bench_tmpdir(CMD, dir, sizeof(dir), "kvprefix-bench-tiers") < 0) {
		free(res);
		return KVP_EXIT_FAIL;
	}
	if (o.model)
		snprintf(model, sizeof(model), "%s", o.model);
	else if (bench_make_model(dir, KVP_BACKEND_CPU, "f32", model, sizeof(model)))
		rc = -1;
	if (rc == BENCH_RUN)
		rc = run_tiers(&o, model, dir, res);
	if (rc == 0)
		rc = bench_tiers_redis(model, dir, o.prompt_tokens, o.rounds, &res->redis);
	if (rc == 0)
		print_tiers(&o, res);
	remove_dir(dir);
	free(res);
	return rc == 0 ? KVP_EXIT_OK : KVP_EXIT_FAIL;
}
