/*
 * cache_gone.c - the ring of departures (cache/gone.c) against a plain model: random
 * adds, forgets and finds over few keys, so the ring wraps, keys depart again, and the
 * index's probe chains collide and are shifted back on every delete.
 *
 * One of the files of test_tree and test_tree_collide; see tree_test_util.h.
 */
#include <criterion/criterion.h>

#include <stdint.h>
#include <stdlib.h>

#include "gone_internal.h"

#define MODEL_MAX 4096

/* Every departure in order; indexed: the one a find of its key returns. */
struct model_dep {
	uint64_t key;
	enum kvp_gone_why why;
	bool live, indexed;
};

struct model {
	struct model_dep d[MODEL_MAX];
	size_t n, limit;
};

static struct model_dep *model_indexed(struct model *m, uint64_t key)
{
	size_t from = m->n > m->limit ? m->n - m->limit : 0;

	for (size_t i = from; i < m->n; i++)
		if (m->d[i].indexed && m->d[i].key == key)
			return &m->d[i];
	return NULL;
}

static void model_add(struct model *m, uint64_t key, enum kvp_gone_why why)
{
	struct model_dep *old = model_indexed(m, key);

	if (old)
		old->live = old->indexed = false;
	m->d[m->n++] = (struct model_dep){ key, why, why == KVP_GONE_POOL, true };
}

static void model_forget(struct model *m, uint64_t key)
{
	struct model_dep *old = model_indexed(m, key);

	if (old)
		old->live = old->indexed = false;
}

static bool model_find(struct model *m, uint64_t key, enum kvp_gone_why *why, uint64_t *age)
{
	struct model_dep *x = model_indexed(m, key);

	if (!x)
		return false;
	*why = x->why;
	*age = 0;
	for (struct model_dep *y = x + 1; y < m->d + m->n; y++)
		*age += y->live;
	return true;
}

static void run(size_t limit, uint64_t keys, unsigned seed)
{
	struct kvp_gone *g = kvp_gone_create(limit);
	struct model *m = calloc(1, sizeof(*m));

	cr_assert(g && m);
	m->limit = limit;
	srand(seed);
	while (m->n < MODEL_MAX) {
		uint64_t key = (uint64_t)(rand() % (int)keys) * 0x100000001b3ull;   /* spread */
		int op = rand() % 8;

		if (op < 4) {
			enum kvp_gone_why why = (enum kvp_gone_why)(op < 2 ? KVP_GONE_POOL : op - 1);

			kvp_gone_add(g, key, why);
			model_add(m, key, why);
		} else if (op == 4) {
			kvp_gone_forget(g, key);
			model_forget(m, key);
		}
		for (uint64_t k = 0; k < keys; k++) {
			uint64_t kk = k * 0x100000001b3ull, age = 0, mage = 0;
			enum kvp_gone_why why = KVP_GONE_POOL, mwhy = KVP_GONE_POOL;
			bool got = kvp_gone_find(g, kk, &why, &age);

			cr_assert_eq(got, model_find(m, kk, &mwhy, &mage), "key %llu after %zu",
				     (unsigned long long)k, m->n);
			if (got) {
				cr_assert_eq(why, mwhy, "key %llu after %zu", (unsigned long long)k, m->n);
				cr_assert_eq(age, mage, "key %llu after %zu: age %llu, model %llu",
					     (unsigned long long)k, m->n, (unsigned long long)age,
					     (unsigned long long)mage);
			}
		}
	}
	cr_assert_gt(kvp_gone_bytes(g), limit * 20);
	kvp_gone_destroy(g);
	free(m);
}

Test(gone, against_a_model)
{
	run(1, 3, 1);
	run(7, 5, 2);
	run(37, 64, 3);
	run(37, 20, 4);
	run(200, 300, 5);
}

Test(gone, refuses_sizes_it_cannot_hold)
{
	cr_assert_null(kvp_gone_create(0));
	cr_assert_null(kvp_gone_create((size_t)1 << 32));
}
