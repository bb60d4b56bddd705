/*
 * qdot_avx512_emulated.c - engine/cpu/qdot_avx512.c built on SIMDe's portable AVX-512
 * (KVP_QDOT_EMULATE), as kvp_cpu_qdot_avx512_emulated: test_qdot_emulated runs it on
 * CPUs without AVX-512.
 */
#define KVP_QDOT_EMULATE 1
#include "qdot_avx512.c"
