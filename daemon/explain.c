/*
 * explain.c - ADMIN EXPLAIN: what became of each block of a prompt, as text.
 *
 *   tokens ──kvp_cache_explain──▶ a fate (and an age) per block ──▶ one line per run of
 *                                                                   blocks of one fate
 *
 * The reply's lines (docs/protocol.md §4.12 gives them whole):
 *   blocks A-B tokens X-Y: FATE
 *   blocks A-B tokens X-Y: evicted_pool age N-M (a pool K.KKx as large would hold them)
 *   tokens X-Y: partial
 * An explain touches nothing: no block counts as used.
 */
#include <stdarg.h>
#include <stdio.h>

#include "server.h"

struct explain_text {
	char *out;
	size_t cap, len;
	bool cut;
};

static void put(struct explain_text *t, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (t->cut)
		return;
	va_start(ap, fmt);
	n = vsnprintf(t->out + t->len, t->cap - t->len, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= t->cap - t->len - 4) {   /* room for the "...\n" */
		t->out[t->len] = '\0';
		snprintf(t->out + t->len, t->cap - t->len, "...\n");
		t->cut = true;
		return;
	}
	t->len += (size_t)n;
}

/* The line of the run of blocks [a, e) of one fate, whole or not at all. */
static void put_run(struct explain_text *t, uint32_t bt, uint32_t capacity, const uint8_t *fates,
		    const uint64_t *ages, size_t a, size_t e)
{
	uint64_t lo = UINT64_MAX, hi = 0;
	char age[128] = "";

	if (fates[a] == KVP_FATE_POOL) {
		for (size_t i = a; i < e; i++) {
			lo = ages[i] < lo ? ages[i] : lo;
			hi = ages[i] > hi ? ages[i] : hi;
		}
		snprintf(age, sizeof(age), " age %llu-%llu (a pool %.2fx as large would hold them)",
			 (unsigned long long)lo, (unsigned long long)hi,
			 ((double)capacity + (double)hi + 1.0) / (double)capacity);
	}
	put(t, "blocks %zu-%zu tokens %zu-%zu: %s%s\n", a, e - 1, a * bt, e * bt - 1,
	    kvp_fate_name((enum kvp_fate)fates[a]), age);
}

int admin_explain(struct server *s, struct kvp_key root, const uint32_t *tokens, size_t n,
		  uint32_t *cached, char *out, size_t cap)
{
	const uint32_t bt = s->cfg->block_tokens;
	const size_t room = n / bt + 1;
	uint8_t *fates = srv_malloc(room);
	uint64_t *ages = srv_malloc(room * sizeof(*ages));
	struct explain_text t = { .out = out, .cap = cap };
	size_t got = 0, a;
	int rc = KVP_ENOMEM;

	*cached = 0;
	out[0] = '\0';
	if (!fates || !ages)
		goto out;
	rc = kvp_cache_explain(s->cache, root, tokens, n, fates, ages, &got);
	if (rc)
		goto out;
	for (a = 0; a < got && fates[a] != KVP_FATE_PARTIAL;) {
		size_t e = a + 1;

		while (e < got && fates[e] == fates[a])
			e++;
		put_run(&t, bt, kvp_cache_capacity(s->cache), fates, ages, a, e);
		if (fates[a] == KVP_FATE_CACHED)
			*cached = (uint32_t)(e - a);
		a = e;
	}
	if (a < got)
		put(&t, "tokens %zu-%zu: partial\n", a * bt, n - 1);
out:
	srv_free(fates);
	srv_free(ages);
	return rc;
}
