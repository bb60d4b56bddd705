/*
 * stats.c - the daemon's counters (kvp_stats.h): histograms, the per-namespace table,
 * requests by type and outcome, and the reports the request handlers make.
 *
 *   histogram (bounds in µs)            exposed (seconds, cumulative)
 *   buckets[0] : v <= b0          ──▶   _bucket{le="b0"}   = buckets[0]
 *   buckets[1] : b0 < v <= b1     ──▶   _bucket{le="b1"}   = buckets[0] + buckets[1]
 *   ...                                 ...
 *   buckets[n] : v > b(n-1)       ──▶   _bucket{le="+Inf"} = count
 *                                       _sum = sum_us / 1e6, _count = count
 *
 *   namespace table: e[0..n) tracked in order of first sight, then "other"
 *   ┌──────────────┬──────────────┬─────┬──────────────┐   ┌───────┐
 *   │ 1000 ""      │ 1000 "lora-a"│ ... │ e[31]        │   │ other │ ◀─ the 33rd and later,
 *   └──────────────┴──────────────┴─────┴──────────────┘   └───────┘    and names that are
 *                                                                       not printable UTF-8
 */
#include <math.h>
#include <string.h>
#include <time.h>

#include "kvp_wire.h"
#include "kvp_stats.h"
#include "kvp_utf8.h"

/* ---- histograms ------------------------------------------------------------ */

static const double latency_bounds_us[] = {
	1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000,
	100000, 250000, 1000000,
};
static const double ttft_bounds_us[] = {
	250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000,
	5000000, 10000000, 25000000, 60000000,
};

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

int kvp_hist_init_bounds(struct kvp_hist *h, const double *bounds_us, uint32_t n_bounds)
{
	memset(h, 0, sizeof(*h));
	if (!bounds_us || n_bounds == 0 || n_bounds > KVP_HIST_MAX_BOUNDS)
		return KVP_EINVAL;
	for (uint32_t i = 0; i < n_bounds; i++)
		if (!isfinite(bounds_us[i]) || (i && bounds_us[i] <= bounds_us[i - 1]))
			return KVP_EINVAL;
	h->bounds_us = bounds_us;
	h->n_bounds = n_bounds;
	return KVP_OK;
}

void kvp_hist_init(struct kvp_hist *h, enum kvp_hist_kind kind)
{
	if (kind == KVP_HIST_TTFT)
		(void)kvp_hist_init_bounds(h, ttft_bounds_us, NELEM(ttft_bounds_us));
	else
		(void)kvp_hist_init_bounds(h, latency_bounds_us, NELEM(latency_bounds_us));
}

void kvp_hist_observe(struct kvp_hist *h, double us)
{
	uint32_t i = 0;

	if (!(us >= 0))
		us = 0;   /* a clock step or a NAN: count it, in the lowest bucket */
	while (i < h->n_bounds && us > h->bounds_us[i])
		i++;
	h->buckets[i]++;
	h->count++;
	h->sum_us += us;
}

double kvp_hist_quantile_us(const struct kvp_hist *h, double q)
{
	double rank, below = 0;

	if (h->count == 0 || isnan(q))
		return NAN;
	if (q < 0)
		q = 0;
	if (q > 1)
		q = 1;
	rank = q * (double)h->count;
	for (uint32_t i = 0; i <= h->n_bounds; i++) {
		double in = (double)h->buckets[i];

		if (in > 0 && below + in >= rank) {
			double lo = i ? h->bounds_us[i - 1] : 0;

			if (i == h->n_bounds)   /* +Inf: nothing better than the last bound */
				return h->n_bounds ? h->bounds_us[h->n_bounds - 1] : 0;
			return lo + (h->bounds_us[i] - lo) * ((rank - below) / in);
		}
		below += in;
	}
	return h->n_bounds ? h->bounds_us[h->n_bounds - 1] : 0;
}

/* ---- namespaces ------------------------------------------------------------ */

struct kvp_ns_counters *kvp_ns_stats_get(struct kvp_ns_stats_table *t, uint32_t tenant,
					 const char *adapter)
{
	size_t len = strnlen(adapter, KVP_NS_ADAPTER_MAX);
	struct kvp_ns_entry *e;

	for (uint32_t i = 0; i < t->n; i++) {
		e = &t->e[i];
		if (e->tenant == tenant && strncmp(e->adapter, adapter, len) == 0 &&
		    e->adapter[len] == '\0')
			return &e->c;
	}
	/* labels must stay distinct and printable: a name the renderer would have to
	 * alter (U+FFFD) could collide with another one, so it is not tracked */
	if (t->n == KVP_NS_TRACKED_MAX || !kvp_utf8_printable(adapter, len)) {
		t->overflowed++;
		return &t->other;
	}
	e = &t->e[t->n++];
	memset(e, 0, sizeof(*e));
	e->tenant = tenant;
	memcpy(e->adapter, adapter, len);
	e->adapter[len] = '\0';
	return &e->c;
}

bool kvp_ns_stats_is_other(const struct kvp_ns_stats_table *t, const struct kvp_ns_counters *c)
{
	return c == &t->other;
}

/* ---- requests by outcome --------------------------------------------------- */

static const char *const status_names[KVP_REQ_NSTATUS + 1] = {
	"ok", "ENOMEM", "EINVAL", "EPROTO", "ETOOBIG", "EFULL", "ENOTFOUND", "EVERSION",
	"EIO", "ECLOSED", "ETIMEDOUT", "EBUSY", "EPERM", "EUNSUPPORTED", "ESHUTDOWN",
	"EEXIST", "EINTERNAL",
};

static const char *const req_type_names[KVP_REQ_NTYPES] = {
	"hello", "lookup", "insert", "release", "stats", "generate", "ping", "other",
};

static unsigned outcome_index(int status)
{
	if (status > 0)
		status = -status;
	if (status < -KVP_REQ_NSTATUS)
		return KVP_REQ_NOUTCOMES - 1;
	return (unsigned)-status;
}

const char *kvp_req_outcome_name(unsigned k)
{
	return k <= KVP_REQ_NSTATUS ? status_names[k] : "EUNKNOWN";
}

const char *kvp_req_type_name(enum kvp_req_type t)
{
	return (unsigned)t < KVP_REQ_NTYPES ? req_type_names[t] : "other";
}

static enum kvp_req_type req_type_of(uint8_t frame_type)
{
	switch (frame_type) {
	case KVP_T_HELLO: return KVP_REQ_HELLO;
	case KVP_T_LOOKUP: return KVP_REQ_LOOKUP;
	case KVP_T_INSERT: return KVP_REQ_INSERT;
	case KVP_T_RELEASE: return KVP_REQ_RELEASE;
	case KVP_T_STATS: return KVP_REQ_STATS;
	case KVP_T_GENERATE: return KVP_REQ_GENERATE;
	case KVP_T_PING: return KVP_REQ_PING;
	}
	return KVP_REQ_OTHER;
}

void kvp_req_count(struct kvp_req_counts *rc, uint8_t frame_type, int status)
{
	rc->n[req_type_of(frame_type)][outcome_index(status)]++;
}

/* ---- the daemon's counters ------------------------------------------------------- */

void kvp_stats_init(struct kvp_stats *s)
{
	memset(s, 0, sizeof(*s));
	kvp_hist_init(&s->ttft, KVP_HIST_TTFT);
	kvp_hist_init(&s->lookup, KVP_HIST_LATENCY);
	kvp_hist_init(&s->insert, KVP_HIST_LATENCY);
}

/* A query against the cache, in the totals and in its namespace's counters. */
static struct kvp_ns_counters *count_query(struct kvp_stats *s, struct kvp_stats_ns ns,
					   uint32_t query_tokens, uint32_t hit_tokens,
					   const struct kvp_cache_miss *miss)
{
	struct kvp_ns_counters *c = kvp_ns_stats_get(&s->ns, ns.tenant, ns.adapter);

	s->t.query_tokens += query_tokens;
	s->t.hit_tokens += hit_tokens;
	c->requests++;
	c->queries++;
	c->query_tokens += query_tokens;
	c->hit_tokens += hit_tokens;
	for (int f = 0; f < KVP_FATE_N; f++) {
		s->t.fate_tokens[f] += miss->tokens[f];
		c->fate_tokens[f] += miss->tokens[f];
	}
	for (int k = 0; k < KVP_CACHE_GHOST_N; k++)
		s->t.ghost_tokens[k] += miss->ghost_tokens[k];
	return c;
}

void kvp_stats_lookup(struct kvp_stats *s, struct kvp_stats_ns ns, uint32_t query_tokens,
		      uint32_t hit_tokens, const struct kvp_cache_miss *miss)
{
	s->t.lookups++;
	s->t.lookup_hits += hit_tokens > 0;
	(void)count_query(s, ns, query_tokens, hit_tokens, miss);
}

void kvp_stats_insert(struct kvp_stats *s, struct kvp_stats_ns ns, uint32_t tokens)
{
	s->t.inserts++;
	s->t.insert_tokens += tokens;
	kvp_ns_stats_get(&s->ns, ns.tenant, ns.adapter)->requests++;
}

void kvp_stats_index_latency(struct kvp_stats *s, bool insert, double us)
{
	kvp_hist_observe(insert ? &s->insert : &s->lookup, us);
}

struct kvp_ns_counters *kvp_stats_generation_begin(struct kvp_stats *s, struct kvp_stats_ns ns,
						   uint32_t prompt_tokens, uint32_t hit_tokens,
						   const struct kvp_cache_miss *miss)
{
	s->t.generations++;
	s->t.generation_hits += hit_tokens > 0;
	return count_query(s, ns, prompt_tokens, hit_tokens, miss);
}

void kvp_stats_generation_end(struct kvp_stats *s, struct kvp_ns_counters *ns, int status,
			      uint32_t computed, uint32_t generated, uint64_t ttft_us)
{
	s->t.generations_done++;
	s->t.generated_tokens += generated;
	s->t.computed_tokens += computed;
	ns->computed_tokens += computed;
	ns->generated_tokens += generated;
	kvp_req_count(&s->req, KVP_T_GENERATE, status);
	if (status == 0)
		kvp_hist_observe(&s->ttft, (double)ttft_us);
}

void kvp_stats_request(struct kvp_stats *s, uint8_t type, int status)
{
	kvp_req_count(&s->req, type, status);
}

void kvp_stats_error(struct kvp_stats *s)
{
	s->t.errors++;
}

double kvp_stats_hit_rate(const struct kvp_stats *s)
{
	return s->t.query_tokens ? (double)s->t.hit_tokens / (double)s->t.query_tokens : 0.0;
}
