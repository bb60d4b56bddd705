/*
 * alloc.c - index/'s allocator: the hooks kvp_index_set_allocator sets (libc by
 * default), through which the tree, its slab and the ghost allocate.
 */
#include <stdlib.h>

#include "alloc_internal.h"
#include "kvp_index.h"

/* ---- module allocator ------------------------------------------------------------ */

void *(*kvp_index_alloc_fn)(size_t) = malloc;
void (*kvp_index_release_fn)(void *) = free;

/* Set the hooks before creating any tree (or keep release able to free what the
 * previous alloc returned): nodes are freed through whatever hook is current. */
void kvp_index_set_allocator(void *(*alloc)(size_t), void (*release)(void *))
{
	kvp_index_alloc_fn = alloc ? alloc : malloc;
	kvp_index_release_fn = release ? release : free;
}

void *kvp_index_alloc(size_t size)
{
	return kvp_index_alloc_fn(size);
}

void kvp_index_release(void *p)
{
	kvp_index_release_fn(p);
}
