/*
 * bench_kernels.c - kvprefix-bench kernels: the CPU matrix kernels on weights in their
 * file form (kvp_cpu_matmul_w, engine/cpu), in process; no model, no daemon.
 *
 *   decode   C (1, N) = A (1, K) . W^T for every weight type, at the default model's FFN
 *            shape (fits the caches) and at one that does not: GB/s of W's bytes, and
 *            the read bandwidth of the same buffer by a plain vector read on the same
 *            threads, one stream a thread (STREAM's) and four (as the kernels read
 *            their rows: more misses in flight), timed in turns with the kernel
 *   prefill  M = 512 rows: GFLOP/s (2 M N K flops a call) against kvp_cpu_peak_gflops,
 *            F32 prepacked and packed per call, F16, Q8_0, Q4_K
 *
 * W is random bytes with sane f16 scales (the values do not change the work done).
 * Every figure is the best of 7 timed batches, each long enough to swamp the clock. Looks inside engine/cpu, as the engine's tests do (tests/check_layout.sh).
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "bench.h"
#include "bench_membw.h"
#include "kvp_cpu.h"
#include "kvp_half.h"
#include "kvp_quant.h"
#include "util.h"

#define PREFILL_M 512

struct kernels_opts {
	uint64_t threads;
	uint64_t rows;          /* rows of A in decode: the sequences of one step */
	const char *isa;
	bool quick;
};

static const struct { int n, k; const char *what; } shapes[] = {
	{ 1536, 512, "FFN of the default model" },
	{ 8192, 4096, "past the caches" },
};

static const uint32_t decode_types[] = {
	KVP_GGML_F32, KVP_GGML_F16, KVP_GGML_BF16, KVP_GGML_Q8_0, KVP_GGML_Q4_0,
	KVP_GGML_Q4_1, KVP_GGML_Q5_0, KVP_GGML_Q5_1, KVP_GGML_Q2_K, KVP_GGML_Q3_K,
	KVP_GGML_Q4_K, KVP_GGML_Q5_K, KVP_GGML_Q6_K,
};
static const uint32_t quick_types[] = { KVP_GGML_F16, KVP_GGML_Q8_0, KVP_GGML_Q4_K };

static void usage_kernels(FILE *f)
{
	fprintf(f,
		"Usage: kvprefix-bench kernels [--threads N] [--rows N] [--isa NAME] [--quick]\n"
		"Time the CPU matrix kernels on weights in their file form (F32, F16, BF16 and\n"
		"the quantized GGUF types), in process:\n"
		"  decode   --rows rows of A against W (N x K) at %d x %d (the default\n"
		"           model's FFN) and %d x %d (past the caches): GB/s of W's bytes\n"
		"           against the read bandwidth of the same buffer on the same\n"
		"           threads, one sequential stream a thread (STREAM's) and four (as\n"
		"           the kernels read; higher where one thread's misses in flight\n"
		"           limit it), timed in turns\n"
		"           (target: >= 70%% for F16 and Q8_0 on 2 threads);\n"
		"  prefill  %d rows of A: GFLOP/s against this machine's peak f32 FMA rate, F32\n"
		"           prepacked and packed per call, F16, Q8_0, Q4_K.\n"
		"\n"
		"  -t, --threads N   compute threads (default: all online CPUs, here %d)\n"
		"  -r, --rows N      rows of A in decode, 1 to 16: a step of N sequences\n"
		"                    (default 1); GB/s is still W's bytes over the time\n"
		"      --isa NAME    the kernels of generic, avx2, avx512 or avx512vnni\n"
		"                    (avx512 with VNNI dot products; default: the best\n"
		"                    this CPU runs)\n"
		"  -q, --quick       the small shapes and F16, Q8_0, Q4_K only\n"
		"  -h, --help        show this help\n"
		"\n"
		"Progress goes to stderr; stdout gets the tables, then one JSON line.\n",
		shapes[0].n, shapes[0].k, shapes[1].n, shapes[1].k, PREFILL_M, bench_online_cpus());
}

static int parse_kernels(int argc, char **argv, struct kernels_opts *o)
{
	enum { O_ISA = 256 };
	static const struct option opts[] = {
		{ "threads", required_argument, NULL, 't' },
		{ "rows", required_argument, NULL, 'r' },
		{ "isa", required_argument, NULL, O_ISA },
		{ "quick", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int opt;

	*o = (struct kernels_opts){ .threads = (uint64_t)bench_online_cpus(), .rows = 1 };
	optind = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":t:r:qh", opts, NULL)) != -1) {
		switch (opt) {
		case 't':
			if (!bench_parse_u64("kernels", "--threads", optarg, 1, 1024, &o->threads))
				return KVP_EXIT_USAGE;
			break;
		case 'r':
			if (!bench_parse_u64("kernels", "--rows", optarg, 1, 16, &o->rows))
				return KVP_EXIT_USAGE;
			break;
		case O_ISA: o->isa = optarg; break;
		case 'q': o->quick = true; break;
		case 'h': usage_kernels(stdout); return KVP_EXIT_OK;
		default: return bench_bad_option("kernels", argv, opt);
		}
	}
	if (optind < argc)
		return bench_usage_error("kernels", "unexpected argument '%s'", argv[optind]);
	return BENCH_RUN;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- weights ------------------------------------------------------------------------------ */

/* byte offsets of a block's f16 scales (-1: none) */
static void scale_offsets(uint32_t type, int off[2])
{
	off[0] = off[1] = -1;
	switch (type) {
	case KVP_GGML_Q4_0: case KVP_GGML_Q5_0: case KVP_GGML_Q8_0: off[0] = 0; break;
	case KVP_GGML_Q4_1: case KVP_GGML_Q5_1: case KVP_GGML_Q4_K: case KVP_GGML_Q5_K:
		off[0] = 0;
		off[1] = 2;
		break;
	case KVP_GGML_Q2_K: off[0] = 80; off[1] = 82; break;
	case KVP_GGML_Q3_K: off[0] = 108; break;
	case KVP_GGML_Q6_K: off[0] = 208; break;
	}
}

/* W (n, k) of type: random quant bits, f16 scales around 1/64, or floats in [-1, 1). */
static int make_weight(uint32_t type, int n, int k, struct kvp_cpu_weight *w)
{
	const struct kvp_ggml_type_info *t = kvp_ggml_type(type);
	size_t rb = kvp_ggml_row_bytes(type, (uint64_t)k), bytes = rb * (size_t)n;
	uint8_t *p = aligned_alloc(64, (bytes + 63) / 64 * 64);
	uint64_t s = 0x9e3779b97f4a7c15ull;
	int off[2];

	if (!p)
		return -1;
	for (size_t i = 0; i < bytes; i++) {
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		p[i] = (uint8_t)(s >> 56);
	}
	scale_offsets(type, off);
	for (size_t i = 0; i < bytes / t->block_bytes; i++) {
		uint8_t *b = p + i * t->block_bytes;
		float v = (float)((i * 2654435761u) % 2000) / 1000.0f - 1.0f;
		uint16_t h = type == KVP_GGML_BF16 ? kvp_f32_to_bf16(v) : kvp_f32_to_f16(v);

		if (type == KVP_GGML_F32)
			memcpy(b, &v, sizeof(v));
		else if (t->block_elems == 1)
			memcpy(b, &h, sizeof(h));
		for (int j = 0; j < 2; j++)
			if (off[j] >= 0) {
				h = kvp_f32_to_f16((v + (v < 0 ? -1.0f : 1.0f)) / 128.0f);
				memcpy(b + off[j], &h, sizeof(h));
			}
	}
	*w = (struct kvp_cpu_weight){ p, type, n, k, rb };
	return 0;
}

/* ---- timing ----------------------------------------------------------------------------- */

struct call {
	struct kvp_threadpool *tp;
	const float *a;
	const struct kvp_cpu_weight *w;
	const struct kvp_packed_w *pw;   /* set: kvp_cpu_matmul_packed */
	struct bench_read_job *read;     /* set: the read probe */
	float *c;
	int m;
};

static int run_call(const struct call *x)
{
	if (x->read) {
		bench_read_pass(x->tp, x->read);
		return 0;
	}
	if (x->pw) {
		kvp_cpu_matmul_packed(x->tp, x->a, (size_t)x->w->k, x->pw, x->c, (size_t)x->w->n, x->m,
				      false);
		return 0;
	}
	return kvp_cpu_matmul_w(x->tp, x->a, (size_t)x->w->k, x->w, x->c, (size_t)x->w->n, x->m,
				false);
}

/* Seconds a call of each of c[0..n), the best of 7 batches of about batch_s each, the
 * batches of the calls in turn: on a machine whose bandwidth varies from second to
 * second (a VM beside others), a kernel and the read probes it is compared with see
 * the same conditions. -1 on an error. */
static int time_calls(const struct call *const *c, int n, double batch_s, double *t)
{
	long reps[4];

	for (int i = 0; i < n; i++) {
		double t0, dt;

		if (run_call(c[i]) < 0)
			return -1;
		t0 = now_s();
		run_call(c[i]);
		dt = now_s() - t0;
		reps[i] = dt > 0 ? (long)(batch_s / dt) + 1 : 1;
		t[i] = INFINITY;
	}
	for (int b = 0; b < 7; b++)
		for (int i = 0; i < n; i++) {
			double t0 = now_s(), dt;

			for (long r = 0; r < reps[i]; r++)
				run_call(c[i]);
			dt = (now_s() - t0) / (double)reps[i];
			t[i] = dt < t[i] ? dt : t[i];
		}
	return 0;
}

/* ---- decode ----------------------------------------------------------------------------- */

struct decode_fig {
	uint32_t type;
	int n, k;
	double mb, gbps, read1_gbps, read4_gbps;
};

static int run_decode(struct kvp_threadpool *tp, uint32_t type, int rows, int n, int k,
		      double batch_s, struct decode_fig *f)
{
	struct kvp_cpu_weight w;
	float *a = malloc((size_t)rows * k * sizeof(float));
	float *c = malloc((size_t)rows * n * sizeof(float));
	struct bench_read_job *rj = calloc(2, sizeof(*rj));
	int rc = -1;

	if (!a || !c || !rj || make_weight(type, n, k, &w) < 0)
		goto out_free;
	for (size_t i = 0; i < (size_t)rows * k; i++)
		a[i] = (float)((i * 7919) % 2001) / 1000.0f - 1.0f;
	rj[0] = (struct bench_read_job){ .p = w.data, .bytes = w.row_bytes * (size_t)n, .streams = 1 };
	rj[1] = (struct bench_read_job){ .p = w.data, .bytes = w.row_bytes * (size_t)n, .streams = 4 };
	const struct call mv = { .tp = tp, .a = a, .w = &w, .c = c, .m = rows };
	const struct call r1 = { .tp = tp, .read = &rj[0] }, r4 = { .tp = tp, .read = &rj[1] };
	const struct call *calls[3] = { &mv, &r1, &r4 };
	const double bytes = (double)rj[0].bytes;
	double t[3];

	if (time_calls(calls, 3, batch_s, t) == 0 && t[0] > 0 && t[1] > 0 && t[2] > 0) {
		*f = (struct decode_fig){ type, n, k, bytes / 1e6, bytes / t[0] / 1e9,
					  bytes / t[1] / 1e9, bytes / t[2] / 1e9 };
		rc = 0;
	}
	bench_sink += rj[0].sink[0] + rj[1].sink[0] + (uint64_t)(c[0] != 0);
	free((void *)w.data);
out_free:
	free(a);
	free(c);
	free(rj);
	return rc;
}

/* ---- prefill ---------------------------------------------------------------------------- */

struct prefill_fig {
	const char *what;
	int n, k;
	double gflops;
};

static int run_prefill(struct kvp_threadpool *tp, uint32_t type, bool prepacked, int n, int k,
		       double batch_s, struct prefill_fig *f)
{
	struct kvp_cpu_weight w;
	struct kvp_packed_w *pw = NULL;
	float *a = malloc((size_t)PREFILL_M * k * sizeof(float));
	float *c = malloc((size_t)PREFILL_M * n * sizeof(float));
	char buf[16];
	int rc = -1;

	if (!a || !c || make_weight(type, n, k, &w) < 0)
		goto out_free;
	for (size_t i = 0; i < (size_t)PREFILL_M * k; i++)
		a[i] = (float)((i * 7919) % 2001) / 1000.0f - 1.0f;
	if (prepacked && kvp_cpu_pack_w(w.data, (size_t)k, n, k, &pw) < 0)
		goto out_weight;
	const struct call x = { .tp = tp, .a = a, .w = &w, .pw = pw, .c = c, .m = PREFILL_M };
	const struct call *calls[1] = { &x };
	double t;

	if (time_calls(calls, 1, batch_s, &t) == 0 && t > 0) {
		f->what = prepacked ? "F32 prepacked" : kvp_ggml_type_name(type, buf, sizeof(buf));
		f->n = n;
		f->k = k;
		f->gflops = 2.0 * PREFILL_M * n * k / t / 1e9;
		rc = 0;
	}
	kvp_cpu_packed_free(pw);
out_weight:
	free((void *)w.data);
out_free:
	free(a);
	free(c);
	return rc;
}

/* ---- the command --------------------------------------------------------------------------- */

#define MAX_DECODE (2 * sizeof(decode_types) / sizeof(decode_types[0]))
#define MAX_PREFILL 10

struct kernels_figs {
	struct decode_fig dec[MAX_DECODE];
	struct prefill_fig pre[MAX_PREFILL];
	int n_dec, n_pre;
	double peak;
};

static int run_kernels(const struct kernels_opts *o, struct kvp_threadpool *tp,
		       struct kernels_figs *fg)
{
	const uint32_t *types = o->quick ? quick_types : decode_types;
	const size_t nt = o->quick ? sizeof(quick_types) / sizeof(quick_types[0])
				   : sizeof(decode_types) / sizeof(decode_types[0]);
	const int n_shapes = o->quick ? 1 : 2;
	const double batch = o->quick ? 0.02 : 0.06;
	static const uint32_t pre_types[] = { KVP_GGML_F32, KVP_GGML_F32, KVP_GGML_F16,
					      KVP_GGML_Q8_0, KVP_GGML_Q4_K };
	char buf[16];

	fg->peak = kvp_cpu_peak_gflops(tp);
	for (int s = 0; s < n_shapes; s++)
		for (size_t t = 0; t < nt; t++) {
			fprintf(stderr, "kernels: decode %s %d x %d\n",
				kvp_ggml_type_name(types[t], buf, sizeof(buf)), shapes[s].n, shapes[s].k);
			if (run_decode(tp, types[t], (int)o->rows, shapes[s].n, shapes[s].k, batch,
				       &fg->dec[fg->n_dec]) < 0)
				return -1;
			fg->n_dec++;
		}
	for (int s = 0; s < n_shapes; s++)
		for (int t = 0; t < 5; t++) {
			fprintf(stderr, "kernels: prefill %s %d x %d\n",
				t == 0 ? "F32 prepacked" : kvp_ggml_type_name(pre_types[t], buf, sizeof(buf)),
				shapes[s].n, shapes[s].k);
			if (run_prefill(tp, pre_types[t], t == 0, shapes[s].n, shapes[s].k, batch,
					&fg->pre[fg->n_pre]) < 0)
				return -1;
			fg->n_pre++;
		}
	return 0;
}

static void print_kernels(const struct kernels_opts *o, const struct kernels_figs *fg)
{
	char buf[16];

	printf("CPU kernels on weights in their file form: %s, %d thread%s\n\n", kvp_cpu_isa(),
	       (int)o->threads, o->threads == 1 ? "" : "s");
	printf("decode, %2d row%s of A %23s  %-19s %s\n", (int)o->rows, o->rows == 1 ? " " : "s",
	       "kernel", "read, 1 stream a", "read, 4 streams a");
	printf("  %-10s %6s %6s %8s %8s  %-19s %s\n", "type", "N", "K", "W MB", "GB/s",
	       "thread: GB/s (%)", "thread: GB/s (%)");
	for (int i = 0; i < fg->n_dec; i++) {
		const struct decode_fig *d = &fg->dec[i];

		printf("  %-10s %6d %6d %8.1f %8.1f  %11.1f (%3.0f%%) %11.1f (%3.0f%%)\n",
		       kvp_ggml_type_name(d->type, buf, sizeof(buf)), d->n, d->k, d->mb, d->gbps,
		       d->read1_gbps, 100.0 * d->gbps / d->read1_gbps, d->read4_gbps,
		       100.0 * d->gbps / d->read4_gbps);
	}
	printf("\nprefill, %d rows of A, against a peak of %.1f GFLOP/s\n", PREFILL_M, fg->peak);
	printf("  %-15s %6s %6s %8s %8s\n", "type", "N", "K", "GFLOP/s", "of peak");
	for (int i = 0; i < fg->n_pre; i++) {
		const struct prefill_fig *p = &fg->pre[i];

		printf("  %-15s %6d %6d %8.1f %7.0f%%\n", p->what, p->n, p->k, p->gflops,
		       100.0 * p->gflops / fg->peak);
	}
	printf("\n");
}

static bool json_kernels(const struct kernels_opts *o, const struct kernels_figs *fg)
{
	cJSON *j = cJSON_CreateObject(), *dec = cJSON_AddArrayToObject(j, "decode");
	cJSON *pre = cJSON_AddArrayToObject(j, "prefill");
	bool built = j && dec && pre;
	char buf[16];

	built = built && cJSON_AddStringToObject(j, "isa", kvp_cpu_isa()) &&
		cJSON_AddNumberToObject(j, "threads", (double)o->threads) &&
		cJSON_AddNumberToObject(j, "rows", (double)o->rows) &&
		cJSON_AddNumberToObject(j, "peak_gflops", fg->peak);
	for (int i = 0; built && i < fg->n_dec; i++) {
		const struct decode_fig *d = &fg->dec[i];
		cJSON *e = cJSON_CreateObject();

		built = e && cJSON_AddItemToArray(dec, e) &&
			cJSON_AddStringToObject(e, "type", kvp_ggml_type_name(d->type, buf, sizeof(buf))) &&
			cJSON_AddNumberToObject(e, "n", d->n) && cJSON_AddNumberToObject(e, "k", d->k) &&
			cJSON_AddNumberToObject(e, "gbps", d->gbps) &&
			cJSON_AddNumberToObject(e, "read_gbps", d->read1_gbps) &&
			cJSON_AddNumberToObject(e, "read4_gbps", d->read4_gbps);
	}
	for (int i = 0; built && i < fg->n_pre; i++) {
		const struct prefill_fig *p = &fg->pre[i];
		cJSON *e = cJSON_CreateObject();

		built = e && cJSON_AddItemToArray(pre, e) && cJSON_AddStringToObject(e, "type", p->what) &&
			cJSON_AddNumberToObject(e, "n", p->n) && cJSON_AddNumberToObject(e, "k", p->k) &&
			cJSON_AddNumberToObject(e, "m", PREFILL_M) &&
			cJSON_AddNumberToObject(e, "gflops", p->gflops);
	}
	return bench_json_finish("kernels", j, built);
}

int bench_cmd_kernels(int argc, char **argv)
{
	struct kernels_opts o;
	struct kernels_figs *fg;
	struct kvp_threadpool *tp;
	int rc = parse_kernels(argc, argv, &o);

	if (rc != BENCH_RUN)
		return rc;
	if (o.isa && kvp_cpu_force_isa(o.isa) < 0) {
		fprintf(stderr, PROG " kernels: this CPU does not run the %s kernels\n", o.isa);
		return KVP_EXIT_USAGE;
	}
	fg = calloc(1, sizeof(*fg));
	if (!fg || kvp_threadpool_create((int)o.threads, &tp) < 0) {
		fprintf(stderr, PROG " kernels: out of memory\n");
		free(fg);
		return KVP_EXIT_FAIL;
	}
	rc = KVP_EXIT_FAIL;
	if (run_kernels(&o, tp, fg) < 0) {
		fprintf(stderr, PROG " kernels: out of memory\n");
	} else {
		print_kernels(&o, fg);
		rc = json_kernels(&o, fg) ? KVP_EXIT_OK : KVP_EXIT_FAIL;
	}
	kvp_threadpool_destroy(tp);
	free(fg);
	return rc;
}
