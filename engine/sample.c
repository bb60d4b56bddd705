/*
 * sample.c - next-token choice: greedy, or temperature with top-k and top-p.
 *
 * Order of operations: logits / temperature -> keep the top_k largest -> softmax over
 * what is kept -> keep the smallest prefix (by probability, descending) whose mass
 * reaches top_p -> draw with the request's own generator (splitmix64), so the same
 * seed and logits always give the same token.
 */
#include "kvp_engine.h"

#include <math.h>
#include <stdlib.h>

struct cand {
	float p;
	uint32_t id;
};

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ull);

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

void kvp_sampler_init(struct kvp_sampler *s, float temperature, uint32_t top_k, float top_p,
		      uint64_t seed)
{
	s->temperature = temperature;
	s->top_k = top_k;
	s->top_p = top_p;
	s->rng = seed;
}

size_t kvp_sampler_scratch_bytes(uint32_t vocab)
{
	return (size_t)vocab * sizeof(struct cand);
}

static uint32_t argmax(const float *x, uint32_t n)
{
	uint32_t best = 0;

	for (uint32_t i = 1; i < n; i++)
		if (x[i] > x[best])
			best = i;
	return best;
}

/* descending by probability, then ascending id: a total order, so results are stable */
static int cand_cmp(const void *a, const void *b)
{
	const struct cand *x = a, *y = b;

	if (x->p != y->p)
		return x->p < y->p ? 1 : -1;
	return x->id < y->id ? -1 : (x->id > y->id);
}

/* Sift-down for a min-heap on (p, -id): the root is the weakest kept candidate. */
static int weaker(const struct cand *a, const struct cand *b)
{
	return a->p < b->p || (a->p == b->p && a->id > b->id);
}

static void heap_down(struct cand *h, uint32_t n, uint32_t i)
{
	for (;;) {
		uint32_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < n && weaker(&h[l], &h[m]))
			m = l;
		if (r < n && weaker(&h[r], &h[m]))
			m = r;
		if (m == i)
			return;
		struct cand t = h[i];
		h[i] = h[m];
		h[m] = t;
		i = m;
	}
}

uint32_t kvp_sample(struct kvp_sampler *s, const float *logits, uint32_t vocab, void *scratch)
{
	struct cand *c = scratch;
	uint32_t n = vocab;
	double sum = 0.0, r, acc;

	if (s->temperature <= 0.0f || s->top_k == 1)
		return argmax(logits, vocab);

	if (s->top_k > 0 && s->top_k < vocab) {
		/* keep the top_k largest logits with a min-heap of size top_k */
		n = s->top_k;
		for (uint32_t i = 0; i < n; i++)
			c[i] = (struct cand){ logits[i], i };
		for (uint32_t i = n / 2; i-- > 0;)
			heap_down(c, n, i);
		for (uint32_t i = n; i < vocab; i++) {
			struct cand x = { logits[i], i };
			if (weaker(&c[0], &x)) {
				c[0] = x;
				heap_down(c, n, 0);
			}
		}
	} else {
		for (uint32_t i = 0; i < vocab; i++)
			c[i] = (struct cand){ logits[i], i };
	}

	/* softmax at temperature over the kept candidates */
	float mx = c[0].p;
	for (uint32_t i = 1; i < n; i++)
		if (c[i].p > mx)
			mx = c[i].p;
	for (uint32_t i = 0; i < n; i++) {
		c[i].p = expf((c[i].p - mx) / s->temperature);
		sum += c[i].p;
	}

	if (s->top_p < 1.0f || s->top_k > 0) {
		/* sorted order makes the draw independent of how candidates were gathered */
		qsort(c, n, sizeof(*c), cand_cmp);
		if (s->top_p < 1.0f) {
			double keep = 0.0;
			uint32_t k = 0;
			while (k < n && keep < s->top_p * sum)
				keep += c[k++].p;
			n = k ? k : 1;
			sum = keep > 0.0 ? keep : c[0].p;
		}
	}
	r = (double)(splitmix64(&s->rng) >> 11) * (1.0 / 9007199254740992.0) * sum;
	acc = 0.0;
	for (uint32_t i = 0; i < n; i++) {
		acc += c[i].p;
		if (r < acc)
			return c[i].id;
	}
	return c[n - 1].id;
}
