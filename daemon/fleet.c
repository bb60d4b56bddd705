/*
 * fleet.c - an index-only kvprefixd as a fleet index (--kv-events-sub; docs/kv-events.md):
 * the engines' events applied by the subscriber thread (fleet_sub.c), and FLEET, which
 * answers for a token sequence how many leading tokens each engine holds, longest
 * first: what a KV-aware router asks before it picks an engine.
 *
 * Keys are chained under one fleet root, the same for every connection: the engines'
 * caches are not a tenant's, and a router of any uid may ask. Event loop thread, but
 * for what fleet.h says the thread shares.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "fleet.h"
#include "kvp_le.h"
#include "kvp_log.h"
#include "server.h"

/* Split a comma-separated list into at most FLEET_MAX_ENDPOINTS strings. */
static int split(const char *list, char **out, unsigned *n, const char *what)
{
	const char *p = list;

	*n = 0;
	while (*p) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);

		if (*n == FLEET_MAX_ENDPOINTS) {
			kvp_err("%s: more than %u endpoints", what, FLEET_MAX_ENDPOINTS);
			return KVP_EINVAL;
		}
		out[*n] = strndup(p, len);
		if (!out[*n])
			return KVP_ENOMEM;
		++*n;
		p += len + (end != NULL);
	}
	return 0;
}

static int endpoints(struct fleet *f, const struct kvp_config *cfg)
{
	char *sub[FLEET_MAX_ENDPOINTS] = { 0 }, *rep[FLEET_MAX_ENDPOINTS] = { 0 };
	unsigned n_rep = 0;
	int rc = split(cfg->kv_events_sub, sub, &f->n_ep, "--kv-events-sub");

	if (rc == 0 && cfg->kv_events_sub_replay)
		rc = split(cfg->kv_events_sub_replay, rep, &n_rep, "--kv-events-sub-replay");
	if (rc == 0 && cfg->kv_events_sub_replay && n_rep != f->n_ep) {
		kvp_err("--kv-events-sub-replay names %u endpoints, --kv-events-sub %u", n_rep,
			  f->n_ep);
		rc = KVP_EINVAL;
	}
	for (unsigned i = 0; i < FLEET_MAX_ENDPOINTS; i++) {
		f->ep[i].endpoint = sub[i];
		if (rep[i] && strcmp(rep[i], "-") != 0 && rep[i][0])
			f->ep[i].replay = rep[i];
		else
			free(rep[i]);
	}
	if (rc == 0 && f->n_ep == 0) {
		kvp_err("--kv-events-sub: no endpoint");
		rc = KVP_EINVAL;
	}
	return rc;
}

static void fleet_free(struct fleet *f)
{
	for (unsigned i = 0; i < FLEET_MAX_ENDPOINTS; i++) {
		if (f->ep[i].sub)
			zmq_close(f->ep[i].sub);
		if (f->ep[i].dealer)
			zmq_close(f->ep[i].dealer);
		free(f->ep[i].endpoint);
		free(f->ep[i].replay);
	}
	if (f->ctx)
		zmq_ctx_term(f->ctx);
	if (f->efd >= 0)
		close(f->efd);
	kvp_evdecoder_destroy(f->dec);
	kvp_fleet_destroy(f->idx);
	pthread_mutex_destroy(&f->mu);
	free(f->keys);
	free(f->reply);
	free(f);
}

int fleet_open(struct server *s)
{
	const struct kvp_config *cfg = s->cfg;
	struct fleet *f;
	int rc;

	if (!cfg->kv_events_sub)
		return 0;
	f = calloc(1, sizeof(*f));
	if (!f)
		return KVP_ENOMEM;
	pthread_mutex_init(&f->mu, NULL);
	f->efd = -1;
	f->reply_cap = 8 + KVP_FLEET_MAX_INSTANCES * (8 + KVP_FLEET_NAME_MAX);
	f->reply = malloc(f->reply_cap);
	f->keys = malloc((cfg->max_tokens / cfg->block_tokens + 1) * sizeof(*f->keys));
	rc = f->reply && f->keys ? endpoints(f, cfg) : KVP_ENOMEM;
	if (rc == 0)
		rc = kvp_fleet_create(cfg->block_tokens, kvp_ns_root("kvprefix/fleet", 0, NULL),
				      &f->idx);
	if (rc == 0)
		rc = fleet_sub_start(f);
	if (rc) {
		fleet_free(f);
		return rc;
	}
	s->fleet = f;
	kvp_info("fleet index: following %u endpoint%s (%s), blocks of %u tokens", f->n_ep,
		 f->n_ep == 1 ? "" : "s", cfg->kv_events_sub, cfg->block_tokens);
	return 0;
}

void fleet_close(struct server *s)
{
	if (!s->fleet)
		return;
	fleet_sub_stop(s->fleet);
	fleet_free(s->fleet);
	s->fleet = NULL;
}

void fleet_view(const struct server *s, struct kvp_events_view *v)
{
	struct fleet *f = s->fleet;

	if (!f)
		return;
	pthread_mutex_lock(&f->mu);
	v->fleet_present = true;
	v->instances = (uint32_t)kvp_fleet_instances(f->idx);
	v->fleet_blocks = kvp_fleet_blocks(f->idx);
	v->fleet_batches = f->batches;
	v->fleet_events = f->events;
	v->fleet_malformed = f->malformed;
	v->fleet_gaps = f->gaps;
	v->fleet_replays = f->replays;
	v->fleet_replayed = f->replayed;
	pthread_mutex_unlock(&f->mu);
}

/* Longest first; equal lengths by name. */
static int by_match(const void *a, const void *b)
{
	const struct kvp_fleet_entry *x = a, *y = b;

	if (x->matched_tokens != y->matched_tokens)
		return x->matched_tokens > y->matched_tokens ? -1 : 1;
	return strcmp(x->name, y->name);
}

struct req_outcome handle_fleet(struct conn *c, const struct kvp_frame_hdr *h, const uint8_t *p)
{
	struct server *s = c->srv;
	struct fleet *f = s->fleet;
	struct kvp_fleet_entry e[KVP_FLEET_MAX_INSTANCES];
	uint32_t match[KVP_FLEET_MAX_INSTANCES];
	struct kvp_tokens_req m;
	size_t n;
	int rc;

	/* the payload first, as every request: a bad frame is bad whoever receives it */
	rc = kvp_tokens_req_decode(p, h->len, s->cfg->max_tokens, &m);
	if (rc == KVP_ETOOBIG)
		return req_refuse(c, h, rc, "%u tokens: over the limit of %u per request",
				  m.n_tokens, s->cfg->max_tokens);
	if (rc == 0 && m.flags != 0)
		rc = KVP_EINVAL;
	if (rc)
		return req_malformed(c, h, rc, "malformed FLEET: %s", kvp_strerror(rc));
	if (!f)
		return req_refuse(c, h, KVP_EUNSUPPORTED,
				  "FLEET needs a fleet index: kvprefixd --index-only --kv-events-sub "
				  "ENDPOINT");
	kvp_load_u32s(s->tokens, m.tokens, m.n_tokens);
	pthread_mutex_lock(&f->mu);
	n = kvp_fleet_instances(f->idx);
	kvp_fleet_match(f->idx, s->tokens, m.n_tokens, f->keys, match);
	for (size_t i = 0; i < n; i++) {
		e[i].name = kvp_fleet_instance_name(f->idx, (unsigned)i);   /* never freed */
		e[i].name_len = (uint32_t)strlen(e[i].name);
		e[i].matched_tokens = match[i] * s->cfg->block_tokens;
	}
	pthread_mutex_unlock(&f->mu);
	qsort(e, n, sizeof(e[0]), by_match);
	return req_reply(c, h, f->reply,
			 kvp_fleet_reply_encode(f->reply, f->reply_cap, m.n_tokens, e, (uint32_t)n));
}
