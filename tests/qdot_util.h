/*
 * qdot_util.h - what the weight-kernel tests (tests/qdot_*.c, test_qdot) share: random
 * numbers, valid random weight rows of every type, and the double-precision reference
 * of kvp_cpu_matmul_w with its stated error bound.
 */
#ifndef KVP_QDOT_UTIL_H
#define KVP_QDOT_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_cpu.h"
#include "kvp_quant.h"

/* The types kvp_cpu_matmul_w computes with, and the instruction sets to try. */
extern const uint32_t qt_types[];
extern const int qt_n_types;
extern const char *const qt_isas[];
extern const int qt_n_isas;

uint64_t qt_rand(void);
/* uniform in [-1, 1) */
float qt_frand(void);
/* n random floats in [-1, 1) (malloc'd; never NULL) */
float *qt_rand_floats(size_t n);
/* malloc or fail the test */
void *qt_alloc(size_t bytes);
/* Switch the kernels to isa; false when this CPU lacks it. */
bool qt_use_isa(const char *isa);

/* A weight matrix (n, k) of type with row_bytes + pad bytes a row: random quant bits,
 * finite random f16 scales (grid: scales from {0.5, 1, 2} and the rows of A integers,
 * so that every kernel's sum is exact). The caller frees w->data. */
void qt_rand_weight(struct kvp_cpu_weight *w, uint32_t type, int n, int k, size_t pad,
		    bool grid);

/* Rows of A for the grid weights: integers in [-31, 31], each activation block of the
 * type holding one +-127, so that it quantizes without rounding (d = 1). */
float *qt_grid_rows(uint32_t type, int m, int k, size_t lda);

/* The reference of C[r][j] = A_r . W_j: dequantized W (kvp_dequant_row) and a dot in
 * double, with the bound kvp_cpu.h states for the path M rows take. */
struct qt_ref {
	double *c;              /* (m, n) */
	double *tol;            /* (m, n) */
};
void qt_reference(const struct kvp_cpu_weight *w, const float *a, size_t lda, int m,
		  struct qt_ref *ref);
void qt_ref_free(struct qt_ref *ref);

/* The dequantized rows of W, (n, k) floats (malloc'd). */
float *qt_dequant_all(const struct kvp_cpu_weight *w);

#endif
