/*
 * alloc_internal.h - private to index/: the module's allocator (kvp_index_set_allocator's
 * hooks, alloc.c), for every file of index/ that allocates.
 */
#ifndef KVP_INDEX_ALLOC_INTERNAL_H
#define KVP_INDEX_ALLOC_INTERNAL_H

#include <stddef.h>

void *kvp_index_alloc(size_t size);
void kvp_index_release(void *p);

/* The hooks themselves, for a call site of its own: tests/test_faults.c tells the sites
 * apart by return address, and a call through kvp_index_alloc has that function's. */
extern void *(*kvp_index_alloc_fn)(size_t);
extern void (*kvp_index_release_fn)(void *);
#define KVP_INDEX_MALLOC(size) (kvp_index_alloc_fn(size))
#define KVP_INDEX_FREE(p) (kvp_index_release_fn(p))

/* A function that allocates, kept as one copy out of line so that its allocation has
 * exactly one call site whatever the optimiser does (tests/test_faults.c counts the
 * sites by return address): no inlining and, with GCC, no specialised clones. */
#if defined(__GNUC__) && !defined(__clang__)
#define KVP_OUT_OF_LINE __attribute__((noinline, noclone))
#else
#define KVP_OUT_OF_LINE __attribute__((noinline))
#endif

#endif
