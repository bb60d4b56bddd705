/*
 * bench_util.c - what the kvprefix-bench commands share: statistics, synthetic tokens,
 * option errors, the JSON line, finding this build's tools, the daemon a command
 * starts for itself (through tools/spawn.c) and a client of an engine daemon. See
 * bench.h for the contracts.
 */
#include "bench.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "trace.h"
#include "util.h"

#define DAEMON_ARGS_MAX 32   /* kvprefixd's argv: the binary, args, --socket PATH, NULL */

volatile uint64_t bench_sink;

/* ---- statistics ---------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

void bench_sort(double *v, size_t n)
{
	qsort(v, n, sizeof(*v), cmp_double);
}

double bench_median(double *v, size_t n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double bench_quantile_sorted(const double *v, size_t n, double q)
{
	size_t i = (size_t)(q * (double)(n - 1) + 0.5);

	return v[i < n ? i : n - 1];
}

double bench_mean(const double *v, size_t n)
{
	double s = 0;

	for (size_t i = 0; i < n; i++)
		s += v[i];
	return n ? s / (double)n : NAN;
}

double bench_p99(double *v, size_t n)
{
	if (!n)
		return NAN;
	qsort(v, n, sizeof(*v), cmp_double);
	return bench_quantile_sorted(v, n, 0.99);
}

double bench_best(const double *v, size_t n)
{
	double b = v[0];

	for (size_t i = 1; i < n; i++)
		if (v[i] > b)
			b = v[i];
	return b;
}

void bench_sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

int bench_online_cpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	return n > 0 && n < 1024 ? (int)n : 1;
}

double bench_rss_mb(const char *field)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	size_t len = strlen(field);
	double mb = -1.0;

	if (!f)
		return -1.0;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, field, len) == 0 && line[len] == ':') {
			mb = strtod(line + len + 1, NULL) * 1024.0 / 1e6;   /* kB */
			break;
		}
	fclose(f);
	return mb;
}

void bench_rand_tokens(uint32_t *out, size_t n, uint64_t seed, uint32_t vocab)
{
	uint32_t lo = vocab > 2 * FIRST_TOKEN_ID ? FIRST_TOKEN_ID : 0;

	for (size_t i = 0; i < n; i++)
		out[i] = lo + (uint32_t)(kvp_splitmix64(seed * 0x100000000ull + i) % (vocab - lo));
}

/* ---- options and output -------------------------------------------------------- */

int bench_usage_error(const char *cmd, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, PROG " %s: ", cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry '" PROG " %s --help'.\n", cmd);
	return KVP_EXIT_USAGE;
}

int bench_bad_option(const char *cmd, char **argv, int opt)
{
	if (opt == ':')
		return bench_usage_error(cmd, "option '%s' needs a value", argv[optind - 1]);
	if (optopt)
		return bench_usage_error(cmd, "unknown option '-%c'", optopt);
	return bench_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
}

int bench_parse_choice(const char *cmd, const char *name, const char *arg, const char *a,
		       const char *b)
{
	if (strcmp(arg, a) == 0)
		return 0;
	if (strcmp(arg, b) == 0)
		return 1;
	fprintf(stderr, PROG " %s: %s '%s': want %s or %s\n", cmd, name, arg, a, b);
	return -1;
}

bool bench_parse_u64(const char *cmd, const char *name, const char *arg, uint64_t lo,
		     uint64_t hi, uint64_t *out)
{
	if (kvp_tool_parse_u64(arg, lo, hi, out))
		return true;
	fprintf(stderr, PROG " %s: %s '%s': want %" PRIu64 "..%" PRIu64 "\n", cmd, name, arg,
		lo, hi);
	return false;
}

bool bench_json_print_line(cJSON *o)
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

bool bench_json_finish(const char *cmd, cJSON *o, bool built)
{
	bool ok = false;

	if (built)
		ok = bench_json_print_line(o);
	else
		fprintf(stderr, PROG " %s: out of memory\n", cmd);
	cJSON_Delete(o);
	return ok;
}

double bench_json_number(const cJSON *o, const char *key)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);

	return cJSON_IsNumber(it) ? it->valuedouble : NAN;
}

/* ---- tools and the daemon a command starts --------------------------------------- */

int bench_find_tool(const char *cmd, const char *name, const char *alt, char *out,
		    size_t cap)
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

int bench_tmpdir(const char *cmd, char *buf, size_t cap, const char *name)
{
	if (kvp_spawn_mkdtemp(buf, cap, name) == 0)
		return 0;
	fprintf(stderr, PROG " %s: mkdtemp: %s\n", cmd, strerror(errno));
	return -1;
}

/* argv joined by spaces into line (cut at cap), for the message that names it. */
static void join_args(const char *const *argv, char *line, size_t cap)
{
	size_t len = 0;

	line[0] = '\0';
	for (size_t i = 0; argv[i] && len < cap; i++)
		len += (size_t)snprintf(line + len, cap - len, "%s%s", i ? " " : "", argv[i]);
}

int bench_daemon_start(struct kvp_daemon *d, const char *cmd, const char *const *args,
		       int wait_ms)
{
	char bin[PATH_MAX], prog[64], line[1024];
	const char *argv[DAEMON_ARGS_MAX];
	const struct kvp_spawn_opts opts = {
		.prog = prog, .wait_ms = wait_ms, .log_stdout = true,
	};
	size_t na = 0;

	memset(d, 0, sizeof(*d));
	if (bench_find_tool(cmd, "kvprefixd", "sbin", bin, sizeof(bin)) < 0) {
		fprintf(stderr, PROG " %s: start kvprefixd yourself and pass --socket PATH\n",
			cmd);
		return -1;
	}
	snprintf(prog, sizeof(prog), PROG " %s", cmd);
	if (kvp_spawn_prepare(d, "kvprefix-bench", prog) < 0)
		return -1;
	argv[na++] = bin;
	for (size_t i = 0; args[i] && na < DAEMON_ARGS_MAX - 3; i++)
		argv[na++] = args[i];
	argv[na++] = "--socket";
	argv[na++] = d->socket;
	argv[na] = NULL;
	join_args(argv, line, sizeof(line));
	if (kvp_spawn_start(d, argv, &opts) < 0) {
		bench_daemon_stop(d);
		return -1;
	}
	fprintf(stderr, "%s: started %s (pid %d)\n", cmd, line, (int)d->pid);
	return 0;
}

void bench_daemon_stop(struct kvp_daemon *d)
{
	(void)kvp_spawn_stop(d, DAEMON_WAIT_MS, PROG);
	(void)kvp_spawn_remove(d);
}

/* ---- a daemon running a model (engine, chat) ------------------------------------- */

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

int bench_generate(const char *prog, struct kvp_client *c, const uint32_t *prompt,
		   size_t n, uint32_t max_new, struct kvp_tokvec *answer, struct kvp_usage *u,
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
		kvp_tool_perror(prog, msg, c, rc);
	}
	return rc;
}

int bench_connect_engine(const char *prog, const char *sock, struct kvp_client **out,
			 struct kvp_server_info *info)
{
	struct kvp_client *c = NULL;
	int rc;

	if (kvp_tool_connect(prog, sock, &c) < 0)
		return -1;
	memset(info, 0, sizeof(*info));
	rc = kvp_client_hello(c, NULL, NULL, info);
	if (rc < 0) {
		kvp_tool_perror(prog, "hello", c, rc);
		goto fail;
	}
	if (info->index_only) {
		fprintf(stderr, "%s: the daemon at %s runs --index-only; start it with --model "
			"FILE\n", prog, sock ? sock : "the default socket");
		goto fail;
	}
	rc = kvp_client_set_timeout_ms(c, GEN_TIMEOUT_MS);
	if (rc < 0) {
		kvp_tool_perror(prog, "set timeout", c, rc);
		goto fail;
	}
	*out = c;
	return 0;
fail:
	kvp_client_close(c);
	return -1;
}
