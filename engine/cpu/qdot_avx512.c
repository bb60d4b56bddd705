#include "cpu_impl.h"
const struct kvp_cpu_qdot kvp_cpu_qdot_avx512 = { .name = "avx512", .fallback = &kvp_cpu_qdot_avx2 };
