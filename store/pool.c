/*
 * pool.c - the block pool: a fixed array of per-block states and reference counts
 * with an intrusive free list threaded through a parallel array of next indices.
 *
 *   id:      0     1     2     3     4     5
 *   state:   REF   FREE  CACH  FREE  REF   FREE
 *   refs:    2     0     0     0     1     0
 *   next:    -     3     -     5     -     NIL       free_head = 1
 *
 * The free list is LIFO so a recently freed block (warm in cache) is reused first.
 * Counters (free, cached, referenced) change with every transition; kvp_pool_check
 * recounts the arrays and compares, which is what the invariant tests call.
 * KV bytes in GPU memory, and copies of a block in and out: pool_device.c.
 */
#include "kvp_store.h"
#include "kvp_device.h"
#include "pool_impl.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#define KVP_POOL_MAX (1u << 31)
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23   /* Linux 5.14; older headers lack it */
#endif

static void *(*store_alloc)(size_t) = malloc;
static void (*store_release)(void *) = free;

void kvp_store_set_allocator(void *(*alloc)(size_t), void (*release)(void *))
{
	store_alloc = alloc ? alloc : malloc;
	store_release = release ? release : free;
}

int kvp_pool_create(uint32_t capacity, struct kvp_pool **out)
{
	struct kvp_pool *p;

	if (capacity == 0 || capacity > KVP_POOL_MAX)
		return KVP_EINVAL;
	p = store_alloc(sizeof(*p));
	if (!p)
		return KVP_ENOMEM;
	p->state = store_alloc((size_t)capacity);
	if (!p->state)
		goto out_free_pool;
	p->refs = store_alloc((size_t)capacity * sizeof(uint32_t));
	if (!p->refs)
		goto out_free_state;
	p->next = store_alloc((size_t)capacity * sizeof(uint32_t));
	if (!p->next)
		goto out_free_refs;

	p->capacity = capacity;
	p->data = NULL;
	p->block_bytes = 0;
	p->data_bytes = 0;
	p->on_device = false;
	p->staging = NULL;
	p->populating = false;
	for (uint32_t i = 0; i < capacity; i++) {
		p->state[i] = KVP_BLOCK_FREE;
		p->refs[i] = 0;
		p->next[i] = i + 1 < capacity ? i + 1 : NIL;
	}
	p->free_head = 0;
	p->n_free = capacity;
	p->n_cached = 0;
	p->n_referenced = 0;
	*out = p;
	return KVP_OK;

out_free_refs:
	store_release(p->refs);
out_free_state:
	store_release(p->state);
out_free_pool:
	store_release(p);
	return KVP_ENOMEM;
}

/*
 * Host memory: an anonymous mapping, page aligned, in huge pages where the kernel allows,
 * made resident (MADV_POPULATE_WRITE) so that a block's first write is not a page fault.
 * Left to fault in, a fresh daemon's first prompts paid for them: ~11 us per 4 KiB page
 * on a virtualised host, 45-60 ms of a 2,000-token prompt's 16 MiB read back from Redis.
 * Up to POOL_RESIDENT_NOW bytes are made resident before attach returns (a machine that
 * cannot give even those refuses the pool); the rest by a thread of the pool's, a chunk at
 * a time from block 0 (the free list hands out the low blocks first), so that a large
 * pool does not hold up the start: on that host 1 GiB took from 50 ms to 1.5 s. That
 * thread runs at the lowest priority (nice 19), a huge page at a time, so that it takes
 * the cores the daemon leaves idle and not the first requests' (at nice 0 it made the
 * first 560-token prompt of a fresh engine daemon 1.2 s instead of 0.2 s on 2 cores). A
 * kernel without MADV_POPULATE_WRITE (before 5.14) faults pages in as they are used.
 */
#define POOL_RESIDENT_NOW KVP_POOL_RESIDENT_AT_ATTACH
#define POOL_RESIDENT_CHUNK (2u << 20)

static void *populate_main(void *arg)
{
	struct kvp_pool *p = arg;

	/* this thread's nice value alone (Linux keeps one per thread); lowering it needs no
	 * privilege, and a failure leaves it at the daemon's */
	(void)setpriority(PRIO_PROCESS, (id_t)gettid(), 19);
	for (size_t off = POOL_RESIDENT_NOW; off < p->data_bytes; off += POOL_RESIDENT_CHUNK) {
		const size_t n = p->data_bytes - off < POOL_RESIDENT_CHUNK ? p->data_bytes - off
									   : POOL_RESIDENT_CHUNK;

		if (atomic_load(&p->stop_populating) ||
		    madvise(p->data + off, n, MADV_POPULATE_WRITE) != 0)
			break;   /* what is left faults in as used */
	}
	return NULL;
}

int kvp_pool_attach_memory(struct kvp_pool *p, size_t block_bytes)
{
	size_t total, now;
	void *m;

	if (p->data || block_bytes == 0 ||
	    __builtin_mul_overflow((size_t)p->capacity, block_bytes, &total))
		return KVP_EINVAL;
	m = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		return KVP_ENOMEM;
	(void)madvise(m, total, MADV_HUGEPAGE);
	now = total < POOL_RESIDENT_NOW ? total : POOL_RESIDENT_NOW;
	if (madvise(m, now, MADV_POPULATE_WRITE) != 0 && errno == ENOMEM) {
		munmap(m, total);
		return KVP_ENOMEM;
	}
	p->data = m;
	p->block_bytes = block_bytes;
	p->data_bytes = total;
	atomic_store(&p->stop_populating, false);
	p->populating = total > now && pthread_create(&p->populator, NULL, populate_main, p) == 0;
	return KVP_OK;
}

void *kvp_pool_block_data(const struct kvp_pool *p, uint32_t id)
{
	if (!p->data || id >= p->capacity)
		return NULL;
	return p->data + (size_t)id * p->block_bytes;
}

size_t kvp_pool_block_bytes(const struct kvp_pool *p)
{
	return p->block_bytes;
}

void kvp_pool_destroy(struct kvp_pool *p)
{
	if (!p)
		return;
	if (p->on_device) {
		kvp_device_free(p->data);
		kvp_device_host_free(p->staging);
	} else if (p->data) {
		if (p->populating) {
			atomic_store(&p->stop_populating, true);
			pthread_join(p->populator, NULL);
		}
		munmap(p->data, p->data_bytes);
	}
	store_release(p->next);
	store_release(p->refs);
	store_release(p->state);
	store_release(p);
}

int kvp_pool_alloc(struct kvp_pool *p, uint32_t *id)
{
	uint32_t b = p->free_head;

	if (b == NIL)
		return KVP_EFULL;
	assert(p->state[b] == KVP_BLOCK_FREE);
	p->free_head = p->next[b];
	p->next[b] = NIL;
	p->state[b] = KVP_BLOCK_REFERENCED;
	p->refs[b] = 1;
	p->n_free--;
	p->n_referenced++;
	*id = b;
	return KVP_OK;
}

int kvp_pool_ref(struct kvp_pool *p, uint32_t id)
{
	if (id >= p->capacity || p->state[id] == KVP_BLOCK_FREE)
		return KVP_EINVAL;
	if (p->state[id] == KVP_BLOCK_CACHED) {
		p->state[id] = KVP_BLOCK_REFERENCED;
		p->n_cached--;
		p->n_referenced++;
	}
	p->refs[id]++;
	return KVP_OK;
}

int kvp_pool_unref(struct kvp_pool *p, uint32_t id)
{
	if (id >= p->capacity || p->state[id] != KVP_BLOCK_REFERENCED)
		return KVP_EINVAL;
	if (--p->refs[id] == 0) {
		p->state[id] = KVP_BLOCK_CACHED;
		p->n_referenced--;
		p->n_cached++;
	}
	return KVP_OK;
}

static void push_free(struct kvp_pool *p, uint32_t id)
{
	p->state[id] = KVP_BLOCK_FREE;
	p->refs[id] = 0;
	p->next[id] = p->free_head;
	p->free_head = id;
	p->n_free++;
}

int kvp_pool_put(struct kvp_pool *p, uint32_t id)
{
	if (id >= p->capacity || p->state[id] != KVP_BLOCK_REFERENCED || p->refs[id] != 1)
		return KVP_EINVAL;
	p->n_referenced--;
	push_free(p, id);
	return KVP_OK;
}

int kvp_pool_evict(struct kvp_pool *p, uint32_t id)
{
	if (id >= p->capacity || p->state[id] != KVP_BLOCK_CACHED)
		return KVP_EINVAL;
	p->n_cached--;
	push_free(p, id);
	return KVP_OK;
}

enum kvp_block_state kvp_pool_state(const struct kvp_pool *p, uint32_t id)
{
	return id < p->capacity ? (enum kvp_block_state)p->state[id] : KVP_BLOCK_FREE;
}

uint32_t kvp_pool_refs(const struct kvp_pool *p, uint32_t id)
{
	return id < p->capacity ? p->refs[id] : 0;
}

struct kvp_pool_counts kvp_pool_counts(const struct kvp_pool *p)
{
	return (struct kvp_pool_counts){
		.total = p->capacity,
		.free = p->n_free,
		.cached = p->n_cached,
		.referenced = p->n_referenced,
	};
}

int kvp_pool_check(const struct kvp_pool *p)
{
	uint32_t n[3] = { 0, 0, 0 };
	uint32_t on_list = 0;

	for (uint32_t i = 0; i < p->capacity; i++) {
		uint8_t s = p->state[i];
		if (s > KVP_BLOCK_REFERENCED)
			return KVP_EINTERNAL;
		if ((s == KVP_BLOCK_REFERENCED) != (p->refs[i] > 0))
			return KVP_EINTERNAL;
		n[s]++;
	}
	/* The free list must hold exactly the FREE blocks: walk at most capacity links. */
	for (uint32_t b = p->free_head; b != NIL; b = p->next[b]) {
		if (b >= p->capacity || p->state[b] != KVP_BLOCK_FREE || ++on_list > p->capacity)
			return KVP_EINTERNAL;
	}
	if (n[KVP_BLOCK_FREE] != p->n_free || on_list != p->n_free ||
	    n[KVP_BLOCK_CACHED] != p->n_cached || n[KVP_BLOCK_REFERENCED] != p->n_referenced)
		return KVP_EINTERNAL;
	if ((uint64_t)p->n_free + p->n_cached + p->n_referenced != p->capacity)
		return KVP_EINTERNAL;
	return KVP_OK;
}
