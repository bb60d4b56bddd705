/*
 * qdot_avx512vnni.c - qdot_avx512.c's kernels with AVX512-VNNI's dot instructions
 * (built with -mavx512vnni besides qdot_avx512.c's flags, called only when the CPU has
 * it): the table kvp_cpu_qdot_avx512vnni, whose types without a kernel here fall back
 * to kvp_cpu_qdot_avx512.
 */
#define KVP_QDOT_VNNI 1
#include "qdot_avx512.c"
