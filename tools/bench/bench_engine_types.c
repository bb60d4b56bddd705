/*
 * bench_engine_types.c - kvprefix-bench engine --types: the engine in process on the
 * default model in each weight type asked for. Per type, kvprefix-mkmodel writes the
 * model (the same weights, quantized), then a child process of its own (so that its RSS
 * is the type's alone) measures:
 *
 *   - the read bandwidth of this machine's memory on the engine's threads: the best of
 *     passes over a buffer as large as what decode reads per token, once before and once
 *     after the engine's runs (bench_membw.h), the better kept;
 *   - the runs of (a) (bench_engine_cpu): prefill tokens/s at 512 and 2,048, decode
 *     tokens/s over 128 steps after 512 tokens;
 *   - RSS after the model is loaded and the engine made, and at the end (the weights'
 *     pages read in, the KV blocks of the runs written).
 *
 * With --busy N, N child processes spin on the CPU for the length of the engine's runs,
 * the read bandwidth's passes excepted: the engine on a machine shared with other work.
 *
 * Decode reads every matrix once a token but the embedding (one row): decode GB/s is
 * decode tokens/s x those bytes, set against the read bandwidth, for the decode after a
 * 16-token prompt, where the weights are nearly all it reads. After 512 tokens it also
 * reads the K/V of every position so far (512 to 640), reported beside it: on the
 * default model (dim 512) that is 10 to 20 % of the weights' bytes, and attention over
 * it a fifth of the time.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "bench_engine.h"
#include "bench_membw.h"
#include "kvp_cpu.h"
#include "kvp_model.h"
#include "util.h"

struct type_fig {
	char type[16];
	int ok;
	double file_mb;          /* the weights' bytes in the file */
	double read_mb;          /* matrix bytes decode reads per token */
	double kv_mb;            /* K/V bytes decode reads per token, on average */
	double rss_load_mb, rss_end_mb;
	double pf512, pf2048, dec;   /* tokens/s, medians; dec after 512 tokens */
	double dec_short;        /* tokens/s, median, after DECODE_SHORT tokens */
	double read_gbs;         /* the read bandwidth, best of before and after */
	double dec_gbs;          /* dec_short x read_mb */
	double frac;             /* dec_gbs / read_gbs */
};

/* Bytes decode reads a token from m's matrices: all of them once, but the embedding,
 * of which it reads one row (unless the output head is the embedding). */
static double decode_matrix_bytes(const struct kvp_model *m)
{
	const struct kvp_tensor *e = &m->tok_embd;
	double embd = (double)e->rows * (double)e->row_bytes;

	return (double)m->cfg.weight_bytes - (m->cfg.tied_output ? 0.0 : embd);
}

/* The read bandwidth over bytes of memory on threads threads, best of reps passes. */
static double read_bandwidth(int threads, size_t bytes, int reps)
{
	struct kvp_threadpool *tp = NULL;
	size_t n = (bytes + 255) / 256 * 256;
	uint8_t *buf = aligned_alloc(64, n);
	double gbs = 0.0;

	if (buf && kvp_threadpool_create(threads, &tp) == KVP_OK) {
		memset(buf, 1, n);
		gbs = bench_read_gbs(tp, buf, n, 1, reps);
	}
	kvp_threadpool_destroy(tp);
	free(buf);
	return gbs;
}

/* n processes spinning until killed (or until this one dies); their pids in pids. How
 * many started. */
static int busy_start(int n, pid_t *pids)
{
	const pid_t parent = getpid();
	int k = 0;

	fflush(NULL);
	for (; k < n; k++) {
		pids[k] = fork();
		if (pids[k] < 0)
			break;
		if (pids[k] == 0) {
			(void)prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (getppid() != parent)
				_exit(0);   /* the bench died before that */
			for (volatile unsigned long x = 0;; x++)
				;
		}
	}
	return k;
}

static void busy_stop(int n, const pid_t *pids)
{
	for (int k = 0; k < n; k++) {
		kill(pids[k], SIGKILL);
		waitpid(pids[k], NULL, 0);
	}
}

/* The child's work for one type: everything in *f. 0, or -1 (message printed). */
static int measure_type(const char *path, const struct bench_types_opts *o,
			struct type_fig *f)
{
	struct kvp_model *m = NULL;
	struct eng_inproc a;
	char err[512];
	double before, after;
	const int reps = o->quick ? 3 : 8;
	pid_t pids[64];
	int busy, rc;

	if (kvp_model_load(path, &m, err, sizeof(err)) < 0) {
		fprintf(stderr, PROG " engine: %s: %s\n", path, err);
		return -1;
	}
	f->file_mb = (double)m->cfg.weight_bytes / 1e6;
	f->read_mb = decode_matrix_bytes(m) / 1e6;
	kvp_model_free(m);
	before = read_bandwidth(o->threads, (size_t)(f->read_mb * 1e6), reps);
	busy = busy_start(o->busy, pids);
	if (busy < o->busy) {
		fprintf(stderr, PROG " engine: fork of a busy process: %s\n", strerror(errno));
		busy_stop(busy, pids);
		return -1;
	}
	rc = bench_engine_cpu(path, o->threads, o->kv_dtype, o->block, o->max_batch, o->quick, &a);
	busy_stop(busy, pids);
	if (rc < 0)
		return -1;
	after = read_bandwidth(o->threads, (size_t)(f->read_mb * 1e6), reps);
	f->kv_mb = (double)a.block_bytes / o->block *
		   (a.decode_prompt + a.decode_steps / 2.0) / 1e6;
	f->rss_load_mb = a.rss_load_mb;
	f->rss_end_mb = a.rss_end_mb;
	f->pf512 = a.pf512_med;
	f->pf2048 = a.pf2048_med;
	f->dec = a.dec_med;
	f->dec_short = a.dec_short_med;
	f->read_gbs = before > after ? before : after;
	f->dec_gbs = f->dec_short * f->read_mb / 1e3;
	f->frac = f->read_gbs > 0 ? f->dec_gbs / f->read_gbs : 0.0;
	f->ok = 1;
	return 0;
}

/* measure_type in a child process; its figures come back through a pipe. */
static int measure_in_child(const char *path, const struct bench_types_opts *o,
			    struct type_fig *f)
{
	int fds[2], st;
	pid_t pid;

	if (pipe(fds) < 0) {
		fprintf(stderr, PROG " engine: pipe: %s\n", strerror(errno));
		return -1;
	}
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		fprintf(stderr, PROG " engine: fork: %s\n", strerror(errno));
		close(fds[0]);
		close(fds[1]);
		return -1;
	}
	if (pid == 0) {
		close(fds[0]);
		int rc = measure_type(path, o, f);
		ssize_t w = write(fds[1], f, sizeof(*f));

		fflush(NULL);
		_exit(rc == 0 && w == (ssize_t)sizeof(*f) ? 0 : 1);
	}
	close(fds[1]);
	ssize_t r = read(fds[0], f, sizeof(*f));
	close(fds[0]);
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0 ||
	    r != (ssize_t)sizeof(*f) || !f->ok) {
		fprintf(stderr, PROG " engine: measuring %s failed\n", f->type);
		return -1;
	}
	return 0;
}

static void print_types(const struct bench_types_opts *o, const struct type_fig *f, int n)
{
	printf("engine, in process, per weight type: the default model (kvprefix-mkmodel), %d "
	       "threads, KV %s, %s runs", o->threads, o->kv_dtype == KVP_KV_F16 ? "f16" : "f32",
	       o->quick ? "quick" : "full");
	if (o->busy)
		printf(", %d busy process%s beside the engine", o->busy, o->busy > 1 ? "es" : "");
	printf("\n");
	printf("%-7s %8s %8s %6s %9s %9s %9s %9s %8s %8s %8s %8s %7s\n", "type", "file MB",
	       "dec MB/t", "KV MB/t", "RSS load", "RSS end", "pf 512/s", "pf 2k/s", "dec t/s",
	       "dec16 t/s", "dec GB/s", "read GB/s", "of read");
	for (int i = 0; i < n; i++)
		printf("%-7s %8.1f %8.1f %6.1f %9.1f %9.1f %9.0f %9.0f %8.1f %8.1f %8.2f %8.2f "
		       "%6.0f%%\n",
		       f[i].type, f[i].file_mb, f[i].read_mb, f[i].kv_mb, f[i].rss_load_mb,
		       f[i].rss_end_mb, f[i].pf512, f[i].pf2048, f[i].dec, f[i].dec_short, f[i].dec_gbs,
		       f[i].read_gbs, 100.0 * f[i].frac);
	printf("target: decode >= %.0f%% of the read bandwidth for f16 and q8_0 on 2 threads "
	       "(medians; MB are 10^6 bytes; \"dec t/s\" after 512 tokens, \"dec16 t/s\" after 16, "
	       "whose GB/s are the matrices it reads a token (\"dec MB/t\"); \"KV MB/t\" the K/V "
	       "decode reads besides after 512)\n", TARGET_DECODE_FRACTION * 100);
	fflush(stdout);
}

static bool json_types(const struct bench_types_opts *o, const struct type_fig *f, int n)
{
	cJSON *j = cJSON_CreateObject(), *arr = cJSON_CreateArray();
	bool built = j && arr;

	if (built) {
		cJSON_AddStringToObject(j, "bench", "engine-types");
		cJSON_AddNumberToObject(j, "threads", o->threads);
		cJSON_AddNumberToObject(j, "busy", o->busy);
		cJSON_AddStringToObject(j, "kv_dtype", o->kv_dtype == KVP_KV_F16 ? "f16" : "f32");
		cJSON_AddNumberToObject(j, "decode_fraction_target", TARGET_DECODE_FRACTION);
		cJSON_AddItemToObject(j, "types", arr);
		for (int i = 0; i < n; i++) {
			cJSON *t = cJSON_CreateObject();

			if (!t) {
				built = false;
				break;
			}
			cJSON_AddItemToArray(arr, t);
			cJSON_AddStringToObject(t, "type", f[i].type);
			cJSON_AddNumberToObject(t, "file_mb", f[i].file_mb);
			cJSON_AddNumberToObject(t, "decode_read_mb_per_token", f[i].read_mb);
			cJSON_AddNumberToObject(t, "decode_kv_mb_per_token", f[i].kv_mb);
			cJSON_AddNumberToObject(t, "rss_after_load_mb", f[i].rss_load_mb);
			cJSON_AddNumberToObject(t, "rss_end_mb", f[i].rss_end_mb);
			cJSON_AddNumberToObject(t, "prefill_512_tps_median", f[i].pf512);
			cJSON_AddNumberToObject(t, "prefill_2048_tps_median", f[i].pf2048);
			cJSON_AddNumberToObject(t, "decode_tps_median", f[i].dec);
			cJSON_AddNumberToObject(t, "decode_after_16_tps_median", f[i].dec_short);
			cJSON_AddNumberToObject(t, "decode_gbs", f[i].dec_gbs);
			cJSON_AddNumberToObject(t, "read_gbs", f[i].read_gbs);
			cJSON_AddNumberToObject(t, "decode_fraction_of_read", f[i].frac);
		}
	} else {
		cJSON_Delete(arr);
	}
	return bench_json_finish("engine", j, built);
}

/* "f16,q8_0" into names (at most cap), each a --dtype of kvprefix-mkmodel. The count,
 * or -1 (message printed). */
static int split_types(const char *list, char names[][16], int cap)
{
	int n = 0;

	for (const char *p = list; *p;) {
		size_t len = strcspn(p, ",");

		if (len == 0 || len >= 16 || n == cap) {
			fprintf(stderr, PROG " engine: --types: '%s' is not a list of up to %d "
				"types (f32,f16,bf16,q8_0,q4_0,q4_1,q5_0,q5_1,q2_k,q3_k,q4_k,q5_k,"
				"q6_k,q4_k_m)\n", list, cap);
			return -1;
		}
		memcpy(names[n], p, len);
		names[n++][len] = '\0';
		p += len + (p[len] == ',');
	}
	return n;
}

int bench_engine_types(const struct bench_types_opts *o, const char *dir)
{
	char names[16][16], path[PATH_MAX];
	struct type_fig figs[16];
	int n = split_types(o->types, names, 16);

	if (n <= 0)
		return n < 0 ? KVP_EXIT_USAGE : KVP_EXIT_FAIL;
	for (int i = 0; i < n; i++) {
		memset(&figs[i], 0, sizeof(figs[i]));
		memcpy(figs[i].type, names[i], sizeof(figs[i].type));   /* both 16, terminated */
		if (bench_make_model(dir, KVP_BACKEND_CPU, names[i], path, sizeof(path)) < 0 ||
		    measure_in_child(path, o, &figs[i]) < 0)
			return KVP_EXIT_FAIL;
		fprintf(stderr, "engine: %s: decode %.1f tokens/s after 16 tokens, %.2f GB/s of "
			"%.2f GB/s read\n", names[i], figs[i].dec_short, figs[i].dec_gbs,
			figs[i].read_gbs);
		(void)unlink(path);
	}
	print_types(o, figs, n);
	return json_types(o, figs, n) ? KVP_EXIT_OK : KVP_EXIT_FAIL;
}
