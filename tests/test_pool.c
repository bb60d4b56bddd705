/*
 * test_pool.c - the block pool against a trivial model (an array of states and
 * reference counts), with the invariant checked after every operation.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "kvp_store.h"

static uint64_t rng_state = 0x1234567887654321ull;

static uint32_t rnd(uint32_t n)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (uint32_t)(rng_state % n);
}

Test(pool, rejects_bad_capacity)
{
	struct kvp_pool *p;

	cr_assert_eq(kvp_pool_create(0, &p), KVP_EINVAL);
	cr_assert_eq(kvp_pool_create((1u << 31) + 1, &p), KVP_EINVAL);
}

Test(pool, lifecycle_and_illegal_transitions)
{
	struct kvp_pool *p;
	uint32_t a, b;

	cr_assert_eq(kvp_pool_create(2, &p), KVP_OK);
	cr_assert_eq(kvp_pool_alloc(p, &a), KVP_OK);
	cr_assert_eq(kvp_pool_alloc(p, &b), KVP_OK);
	cr_assert_neq(a, b);
	cr_assert_eq(kvp_pool_alloc(p, &b), KVP_EFULL);
	cr_assert_eq(kvp_pool_evict(p, a), KVP_EINVAL, "a referenced block cannot be evicted");
	cr_assert_eq(kvp_pool_unref(p, a), KVP_OK);
	cr_assert_eq(kvp_pool_state(p, a), KVP_BLOCK_CACHED);
	cr_assert_eq(kvp_pool_unref(p, a), KVP_EINVAL, "no reference left to drop");
	cr_assert_eq(kvp_pool_ref(p, a), KVP_OK);
	cr_assert_eq(kvp_pool_ref(p, a), KVP_OK);
	cr_assert_eq(kvp_pool_refs(p, a), 2);
	cr_assert_eq(kvp_pool_put(p, a), KVP_EINVAL, "put needs exactly one reference");
	cr_assert_eq(kvp_pool_unref(p, a), KVP_OK);
	cr_assert_eq(kvp_pool_unref(p, a), KVP_OK);
	cr_assert_eq(kvp_pool_evict(p, a), KVP_OK);
	cr_assert_eq(kvp_pool_ref(p, a), KVP_EINVAL, "a free block cannot be referenced");
	cr_assert_eq(kvp_pool_put(p, b), KVP_OK);
	cr_assert_eq(kvp_pool_ref(p, 7), KVP_EINVAL, "out of range id");
	struct kvp_pool_counts n = kvp_pool_counts(p);
	cr_assert_eq(n.free, 2);
	cr_assert_eq(kvp_pool_check(p), KVP_OK);
	kvp_pool_destroy(p);
}

Test(pool, random_operations_match_model)
{
	enum { CAP = 97, STEPS = 200000 };
	struct kvp_pool *p;
	uint8_t state[CAP] = { 0 };
	uint32_t refs[CAP] = { 0 };

	cr_assert_eq(kvp_pool_create(CAP, &p), KVP_OK);
	for (int step = 0; step < STEPS; step++) {
		uint32_t id = rnd(CAP), got;
		int rc, expect;

		switch (rnd(5)) {
		case 0: {
			int any_free = 0;
			for (int i = 0; i < CAP; i++)
				any_free |= state[i] == KVP_BLOCK_FREE;
			rc = kvp_pool_alloc(p, &got);
			cr_assert_eq(rc, any_free ? KVP_OK : KVP_EFULL);
			if (rc == KVP_OK) {
				cr_assert_eq(state[got], KVP_BLOCK_FREE, "alloc gave a busy block");
				state[got] = KVP_BLOCK_REFERENCED;
				refs[got] = 1;
			}
			break;
		}
		case 1:
			expect = state[id] == KVP_BLOCK_FREE ? KVP_EINVAL : KVP_OK;
			cr_assert_eq(kvp_pool_ref(p, id), expect);
			if (expect == KVP_OK) {
				state[id] = KVP_BLOCK_REFERENCED;
				refs[id]++;
			}
			break;
		case 2:
			expect = state[id] == KVP_BLOCK_REFERENCED ? KVP_OK : KVP_EINVAL;
			cr_assert_eq(kvp_pool_unref(p, id), expect);
			if (expect == KVP_OK && --refs[id] == 0)
				state[id] = KVP_BLOCK_CACHED;
			break;
		case 3:
			expect = state[id] == KVP_BLOCK_REFERENCED && refs[id] == 1 ? KVP_OK : KVP_EINVAL;
			cr_assert_eq(kvp_pool_put(p, id), expect);
			if (expect == KVP_OK) {
				state[id] = KVP_BLOCK_FREE;
				refs[id] = 0;
			}
			break;
		case 4:
			expect = state[id] == KVP_BLOCK_CACHED ? KVP_OK : KVP_EINVAL;
			cr_assert_eq(kvp_pool_evict(p, id), expect);
			if (expect == KVP_OK)
				state[id] = KVP_BLOCK_FREE;
			break;
		}
		cr_assert_eq(kvp_pool_check(p), KVP_OK, "invariant broken at step %d", step);
		cr_assert_eq(kvp_pool_state(p, id), state[id]);
		cr_assert_eq(kvp_pool_refs(p, id), refs[id]);
	}
	kvp_pool_destroy(p);
}

Test(pool, attached_memory_is_per_block_and_stable)
{
	struct kvp_pool *p;
	uint32_t a, b;

	cr_assert_eq(kvp_pool_create(8, &p), KVP_OK);
	cr_assert_null(kvp_pool_block_data(p, 0), "index-only pools have no bytes");
	cr_assert_eq(kvp_pool_attach_memory(p, 4096 + 64), KVP_OK);
	cr_assert_eq(kvp_pool_attach_memory(p, 64), KVP_EINVAL, "attach once");
	cr_assert_eq(kvp_pool_block_bytes(p), 4096 + 64);
	cr_assert_eq(kvp_pool_alloc(p, &a), KVP_OK);
	cr_assert_eq(kvp_pool_alloc(p, &b), KVP_OK);
	uint8_t *da = kvp_pool_block_data(p, a), *db = kvp_pool_block_data(p, b);
	cr_assert_eq((uintptr_t)da % 64, 0);
	cr_assert_geq((size_t)(db > da ? db - da : da - db), 4096 + 64, "blocks do not overlap");
	memset(da, 0xAB, 4096 + 64);
	memset(db, 0xCD, 4096 + 64);
	cr_assert_eq(da[4096 + 63], 0xAB);
	cr_assert_null(kvp_pool_block_data(p, 8), "out of range");
	kvp_pool_destroy(p);
}
