/*
 * blas.c - the CUDA backend's matrix multiply, on cuBLAS opened at run time.
 *
 * kvprefixd is not linked against libcublas: the first kvp_cuda_blas_create opens it
 * with dlopen (libcublas.so.13, then libcublas.so, then the toolkit's library
 * directory of the build) and resolves the five functions used here. The library stays
 * loaded for the life of the process (a CUDA library unloaded while its runtime state
 * lives on is not worth the risk); each engine gets its own handle on its own stream.
 * <cublas_v2.h> is included for its types and constants only.
 *
 * Row-major to cuBLAS's column-major: a row-major (r, c) matrix with leading dimension
 * ld is, to cuBLAS, the column-major (c, r) matrix with the same ld, its transpose. So
 *
 *     C (m, n) = A (m, k) . W (n, k)^T          (row-major, what the engine wants)
 *     C^T (n, m) = W (n, k) . A^T (k, m)        (column-major, what cuBLAS computes)
 *
 * is cublasGemmEx(op(W) = T, op(A) = N, M = n, N = m, K = k, W, ldw, A, lda, C, ldc):
 * cuBLAS sees W as (k, n) and transposes it, sees A as A^T (k, m) and leaves it.
 */
#include "kvp_cuda.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>

typedef cublasStatus_t (*create_fn)(cublasHandle_t *handle);
typedef cublasStatus_t (*destroy_fn)(cublasHandle_t handle);
typedef cublasStatus_t (*set_stream_fn)(cublasHandle_t handle, cudaStream_t stream);
typedef cublasStatus_t (*set_math_mode_fn)(cublasHandle_t handle, cublasMath_t mode);
typedef cublasStatus_t (*gemm_ex_fn)(cublasHandle_t handle, cublasOperation_t transa,
				     cublasOperation_t transb, int m, int n, int k,
				     const void *alpha, const void *a, cudaDataType atype, int lda,
				     const void *b, cudaDataType btype, int ldb, const void *beta,
				     void *c, cudaDataType ctype, int ldc,
				     cublasComputeType_t compute, cublasGemmAlgo_t algo);

/* The library, opened once per process. */
static struct {
	pthread_once_t once;
	void *lib;
	create_fn create;
	destroy_fn destroy;
	set_stream_fn set_stream;
	set_math_mode_fn set_math_mode;
	gemm_ex_fn gemm_ex;
	char why[320];       /* why lib is NULL */
} g_cublas = { .once = PTHREAD_ONCE_INIT };

struct kvp_cuda_blas {
	cublasHandle_t h;
	void *stream;
};

/* dlsym's void * to a function pointer, without the cast ISO C leaves undefined. */
static int resolve(void *lib, const char *name, void *fnp, size_t fn_size)
{
	void *sym = dlsym(lib, name);

	if (!sym)
		return -1;
	memcpy(fnp, &sym, fn_size);
	return 0;
}

static void cublas_open(void)
{
	static const char *const names[] = {
		"libcublas.so.13",
		"libcublas.so",
#ifdef KVP_CUBLAS_DIR
		KVP_CUBLAS_DIR "/libcublas.so.13",
#endif
	};
	const char *bad = NULL;
	size_t used = 0;
	void *lib = NULL;

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]) && !lib; i++) {
		lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
		if (!lib && used < sizeof(g_cublas.why)) {
			int w = snprintf(g_cublas.why + used, sizeof(g_cublas.why) - used, "%s%s",
					 i ? ", " : "cannot load cuBLAS: tried ", names[i]);
			if (w > 0)
				used += (size_t)w;
		}
	}
	if (!lib)
		return;
	if (resolve(lib, "cublasCreate_v2", &g_cublas.create, sizeof(g_cublas.create)))
		bad = "cublasCreate_v2";
	else if (resolve(lib, "cublasDestroy_v2", &g_cublas.destroy, sizeof(g_cublas.destroy)))
		bad = "cublasDestroy_v2";
	else if (resolve(lib, "cublasSetStream_v2", &g_cublas.set_stream,
			 sizeof(g_cublas.set_stream)))
		bad = "cublasSetStream_v2";
	else if (resolve(lib, "cublasSetMathMode", &g_cublas.set_math_mode,
			 sizeof(g_cublas.set_math_mode)))
		bad = "cublasSetMathMode";
	else if (resolve(lib, "cublasGemmEx", &g_cublas.gemm_ex, sizeof(g_cublas.gemm_ex)))
		bad = "cublasGemmEx";
	if (bad) {
		snprintf(g_cublas.why, sizeof(g_cublas.why), "cuBLAS library lacks %s", bad);
		dlclose(lib);
		return;
	}
	g_cublas.lib = lib;
}

static const char *status_name(cublasStatus_t s)
{
	switch (s) {
	case CUBLAS_STATUS_SUCCESS: return "success";
	case CUBLAS_STATUS_NOT_INITIALIZED: return "not initialized (no usable CUDA device?)";
	case CUBLAS_STATUS_ALLOC_FAILED: return "allocation failed";
	case CUBLAS_STATUS_INVALID_VALUE: return "invalid value";
	case CUBLAS_STATUS_ARCH_MISMATCH: return "architecture mismatch";
	case CUBLAS_STATUS_MAPPING_ERROR: return "mapping error";
	case CUBLAS_STATUS_EXECUTION_FAILED: return "execution failed";
	case CUBLAS_STATUS_INTERNAL_ERROR: return "internal error";
	case CUBLAS_STATUS_NOT_SUPPORTED: return "not supported";
	case CUBLAS_STATUS_LICENSE_ERROR: return "license error";
	default: break;
	}
	return "unknown status";
}

int kvp_cuda_blas_create(void *stream, struct kvp_cuda_blas **out, char *err, size_t errlen)
{
	struct kvp_cuda_blas *b;
	cublasStatus_t s;
	const char *what;

	*out = NULL;
	pthread_once(&g_cublas.once, cublas_open);
	if (!g_cublas.lib) {
		if (err && errlen)
			snprintf(err, errlen, "%s", g_cublas.why);
		return KVP_EUNSUPPORTED;
	}
	b = calloc(1, sizeof(*b));
	if (!b)
		return KVP_ENOMEM;
	what = "cublasCreate";
	s = g_cublas.create(&b->h);
	if (s != CUBLAS_STATUS_SUCCESS)
		goto out_free;
	what = "cublasSetStream";
	s = g_cublas.set_stream(b->h, (cudaStream_t)stream);
	if (s == CUBLAS_STATUS_SUCCESS) {
		/* tensor cores for F16 / BF16 inputs; F32 inputs stay full F32 (no TF32) */
		what = "cublasSetMathMode";
		s = g_cublas.set_math_mode(b->h, CUBLAS_DEFAULT_MATH);
	}
	if (s != CUBLAS_STATUS_SUCCESS)
		goto out_destroy;
	b->stream = stream;
	*out = b;
	return KVP_OK;

out_destroy:
	g_cublas.destroy(b->h);
out_free:
	if (err && errlen)
		snprintf(err, errlen, "%s: %s (cuBLAS status %d)", what, status_name(s), (int)s);
	free(b);
	return KVP_EIO;
}

void kvp_cuda_blas_destroy(struct kvp_cuda_blas *b)
{
	if (!b)
		return;
	g_cublas.destroy(b->h);
	free(b);
}

int kvp_cuda_gemm(struct kvp_cuda_blas *b, const void *a, size_t lda, const void *w, size_t ldw,
		  enum kvp_cuda_dtype t, float *c, size_t ldc, int m, int n, int k,
		  bool accumulate)
{
	const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
	cudaDataType in_t;

	switch (t) {
	case KVP_CUDA_F16: in_t = CUDA_R_16F; break;
	case KVP_CUDA_BF16: in_t = CUDA_R_16BF; break;
	case KVP_CUDA_F32: in_t = CUDA_R_32F; break;
	default: return KVP_EINVAL;
	}
	if (m < 0 || n < 0 || k <= 0 || lda < (size_t)k || ldw < (size_t)k || ldc < (size_t)n ||
	    lda > INT_MAX || ldw > INT_MAX || ldc > INT_MAX || !a || !w || !c)
		return KVP_EINVAL;
	if (m == 0 || n == 0)
		return KVP_OK;
	/* column-major C^T (n, m) = op(W) (n, k) . op(A^T) (k, m): see the top of the file */
	if (g_cublas.gemm_ex(b->h, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w, in_t, (int)ldw,
			     a, in_t, (int)lda, &beta, c, CUDA_R_32F, (int)ldc, CUBLAS_COMPUTE_32F,
			     CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS)
		return KVP_EIO;
	return KVP_OK;
}
