/*
 * alloc_internal.h - private to index/: the module's allocator (kvp_index_set_allocator's
 * hooks), for the files beside tree.c.
 */
#ifndef KVP_INDEX_ALLOC_INTERNAL_H
#define KVP_INDEX_ALLOC_INTERNAL_H

#include <stddef.h>

void *kvp_index_alloc(size_t size);
void kvp_index_release(void *p);

#endif
