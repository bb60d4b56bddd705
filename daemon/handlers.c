/*
 * handlers.c - what a request frame does: dispatch by type, and the handlers of HELLO,
 * LOOKUP / INSERT, RELEASE, STATS and PING (ADMIN is admin.c's, GENERATE generate.c's).
 *
 * Every handler returns a struct req_outcome: the reply went out (req_reply), the
 * request was refused with an ERROR and the connection stays (req_refuse), or the frame
 * was malformed, ERROR and then close (req_malformed). The read loop counts the outcome
 * (kvp_stats_request) and closes when told to. Every reply carries its request's
 * header version.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "kvp_clock.h"
#include "kvp_log.h"
#include "kvp_model.h"
#include "server.h"

/* ---- outcomes ------------------------------------------------------------------ */

struct req_outcome req_sent(int send_status)
{
	return (struct req_outcome){ .status = send_status, .close = send_status != KVP_OK };
}

struct req_outcome req_refuse(struct conn *c, const struct kvp_frame_hdr *h, int status,
			      const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	status = send_verror(c, h->version, h->req_id, status, fmt, ap);
	va_end(ap);
	return (struct req_outcome){ .status = status };
}

struct req_outcome req_malformed(struct conn *c, const struct kvp_frame_hdr *h, int status,
				 const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	status = send_verror(c, h->version, h->req_id, status, fmt, ap);
	va_end(ap);
	return (struct req_outcome){ .status = status, .close = true };
}

struct req_outcome req_reply(struct conn *c, const struct kvp_frame_hdr *h, const void *payload,
			     size_t len)
{
	return req_sent(send_frame(c, h->version, h->type | KVP_T_REPLY, h->req_id, payload, len));
}

double server_uptime_s(const struct server *s)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - s->started.tv_sec) +
	       (double)(now.tv_nsec - s->started.tv_nsec) / 1e9;
}

struct kvp_stats_ns conn_stats_ns(const struct conn *c)
{
	return (struct kvp_stats_ns){ .tenant = (uint32_t)c->uid, .adapter = c->adapter };
}

/* ---- HELLO ----------------------------------------------------------------------- */

/* A name from the wire must be printable: no NUL, no control byte (0x1e separates
 * adapter and salt in a salted namespace). True with the first bad byte's position in
 * *at when it is not. */
static bool has_control_byte(const char *s, uint16_t n, uint16_t *at)
{
	for (uint16_t i = 0; i < n; i++) {
		if ((uint8_t)s[i] < 0x20) {
			*at = i;
			return true;
		}
	}
	return false;
}

/* Put c in the namespace HELLO asked for: its uid's, or a salted one shared by every
 * connection allowed the same salt (and adapter); docs/hashing.md. Its quota group
 * stays its uid's. */
static void conn_set_namespace(struct conn *c, const struct kvp_hello *m)
{
	const char *ns = c->srv->ns_name;

	memcpy(c->adapter, m->adapter, m->adapter_len);
	c->adapter[m->adapter_len] = '\0';
	if (m->salt_len) {
		char joined[2 * KVP_NAME_MAX + 2];

		snprintf(joined, sizeof(joined), "%s\x1e%.*s", c->adapter, (int)m->salt_len, m->salt);
		c->tenant = KVP_TENANT_SALTED;
		c->root = kvp_ns_root(ns, KVP_TENANT_SALTED, joined);
	} else {
		c->tenant = (uint32_t)c->uid;
		c->root = kvp_ns_root(ns, (uint32_t)c->uid, c->adapter);
	}
	/* the quota is the uid's, whatever it names: all its adapters and all its salts
	 * together, so that no namespace it opens adds to its share of the pool */
	c->group = kvp_ns_root(ns, (uint32_t)c->uid, "");
}

static struct req_outcome handle_hello(struct conn *c, const struct kvp_frame_hdr *h,
				       const uint8_t *p)
{
	const struct kvp_config *cfg = c->srv->cfg;
	struct kvp_hello m;
	struct kvp_hello_reply r;
	uint8_t buf[64 + KVP_NAME_MAX];
	bool salt_ok = false;
	uint16_t bad;
	int rc = kvp_hello_decode(p, h->len, &m);

	if (rc)
		return req_malformed(c, h, rc, "malformed HELLO: %s", kvp_strerror(rc));
	if (m.version < 1)
		return req_malformed(c, h, KVP_EVERSION,
				     "protocol version %u: this daemon speaks 1 to %u", m.version,
				     KVP_PROTO_VERSION_MAX);
	if (has_control_byte(m.adapter, m.adapter_len, &bad))
		return req_refuse(c, h, KVP_EINVAL, "adapter id contains a control byte (0x%02x) at %u",
				  (uint8_t)m.adapter[bad], bad);
	if (has_control_byte(m.salt, m.salt_len, &bad))
		return req_refuse(c, h, KVP_EINVAL, "cache salt contains a control byte at %u", bad);
	if (m.salt_len && (kvp_config_uid_listed(cfg->salt_uids, (uint32_t)c->uid, &salt_ok) ||
			   !salt_ok))
		return req_refuse(c, h, KVP_EPERM,
				  "a cache salt is allowed only for the uids in salt-uids; this is uid %u",
				  (unsigned)c->uid);
	conn_set_namespace(c, &m);
	r = (struct kvp_hello_reply){
		/* the highest version both sides speak */
		.version = m.version < KVP_PROTO_VERSION_MAX ? m.version : KVP_PROTO_VERSION_MAX,
		.block_tokens = cfg->block_tokens,
		.capacity_blocks = kvp_cache_capacity(c->srv->cache),
		.max_tokens = cfg->max_tokens,
		.flags = cfg->index_only ? KVP_HELLO_INDEX_ONLY : 0,
		.tenant = c->tenant,
		.name = c->srv->name,
		.name_len = (uint16_t)strlen(c->srv->name),
		/* what a client needs to size requests; a version-3 reply carries them */
		.vocab_size = c->srv->model ? c->srv->model->cfg.vocab : 0,
		.ctx_tokens = c->srv->model ? c->srv->model->cfg.ctx : 0,
	};
	return req_reply(c, h, buf, kvp_hello_reply_encode(buf, sizeof(buf), &r));
}

/* ---- keeps ------------------------------------------------------------------------- */

void srv_keeps_expire(struct server *s)
{
	(void)kvp_cache_expire(s->cache, kvp_clock_ns() / 1000000u);
}

void srv_keep(struct server *s, struct kvp_key root, struct kvp_key group,
	      const uint32_t *tokens, uint32_t n_tokens, uint32_t keep_s, uint32_t priority)
{
	static struct kvp_log_limit lim;
	uint32_t kept;

	if (kvp_cache_keep(s->cache, root, group, tokens, n_tokens,
			   kvp_clock_ns() / 1000000u + (uint64_t)keep_s * 1000u, priority,
			   &kept) != KVP_OK)
		kvp_warn_limited(&lim, "out of memory keeping a prefix of %u tokens for %u s",
				 n_tokens, keep_s);
}

/* ---- LOOKUP / INSERT --------------------------------------------------------------- */

/* The cache call itself, timed for the latency histograms. */
static int tokens_run(struct conn *c, bool insert, bool pin, const uint32_t *tokens,
		      uint32_t n_tokens, struct kvp_cache_result *res)
{
	struct server *s = c->srv;
	uint64_t t0 = kvp_clock_ns();
	int rc;

	if (insert)
		rc = kvp_cache_insert(s->cache, c->root, c->group, tokens, n_tokens, c->id, pin,
				      s->block_ids, res);
	else
		rc = kvp_cache_lookup(s->cache, c->root, tokens, n_tokens, c->id, pin,
				      s->block_ids, res);
	kvp_stats_index_latency(&s->stats, insert, (double)(kvp_clock_ns() - t0) / 1e3);
	return rc;
}

/* The blocks a lease pinned or released, on the connection's and its uid's tally. */
static void lease_account(struct conn *c, bool pinned, uint32_t n)
{
	struct uid_entry *u = uid_table_find(&c->srv->uids, c->uid);

	if (pinned) {
		c->leased += n;
		if (u)
			u->leased += n;
	} else {
		c->leased -= n;
		if (u)
			u->leased -= n;
	}
}

/* A pinned request may add up to n blocks to the connection's leases and its uid's:
 * refused (EBUSY) when that could take either over its limit. */
static bool lease_over_limit(struct conn *c, const struct kvp_frame_hdr *h, uint32_t n,
			     struct req_outcome *o)
{
	const struct kvp_config *cfg = c->srv->cfg;
	const struct uid_entry *u = uid_table_find(&c->srv->uids, c->uid);
	const uint64_t uid_leased = u ? u->leased : 0;

	if (c->leased + n > cfg->max_leased_blocks) {
		*o = req_refuse(c, h, KVP_EBUSY, "this connection holds %llu blocks under leases and "
				"this request may pin %u more: over --max-leased-blocks %u",
				(unsigned long long)c->leased, n, cfg->max_leased_blocks);
		return true;
	}
	if (uid_leased + n > cfg->max_leased_blocks_per_uid) {
		*o = req_refuse(c, h, KVP_EBUSY, "uid %u holds %llu blocks under leases and this "
				"request may pin %u more: over --max-leased-blocks-per-uid %u",
				(unsigned)c->uid, (unsigned long long)uid_leased, n,
				cfg->max_leased_blocks_per_uid);
		return true;
	}
	return false;
}

static struct req_outcome handle_tokens(struct conn *c, const struct kvp_frame_hdr *h,
					const uint8_t *p)
{
	struct server *s = c->srv;
	const bool insert = h->type == KVP_T_INSERT;
	struct kvp_tokens_req m;
	struct kvp_cache_result res;
	struct kvp_blocks_reply r;
	struct req_outcome o;
	const uint32_t *tokens;
	const uint32_t known = insert ? KVP_INSERT_FLAGS_KNOWN : KVP_LOOKUP_FLAGS_KNOWN;
	int rc = insert ? kvp_tokens_req_decode_insert(p, h->len, s->cfg->max_tokens, &m)
			: kvp_tokens_req_decode(p, h->len, s->cfg->max_tokens, &m);

	if (rc == KVP_ETOOBIG)   /* well-formed but over the limit: the connection stays */
		return req_refuse(c, h, rc, "%u tokens: over the limit of %u per request",
				  m.n_tokens, s->cfg->max_tokens);
	if (rc == KVP_EINVAL && !(m.flags & ~known))   /* a value, not the layout: it stays */
		return req_refuse(c, h, rc, "INSERT KEEP of %u seconds: from 1 to %u", m.keep_s,
				  KVP_KEEP_MAX_S);
	if (rc)
		return req_malformed(c, h, rc, "malformed %s: %s", insert ? "INSERT" : "LOOKUP",
				     kvp_strerror(rc));
	if (insert && !s->cfg->index_only)   /* foreign blocks would have no KV */
		return req_refuse(c, h, KVP_EUNSUPPORTED,
				  "INSERT registers externally computed blocks: index-only mode only; "
				  "in engine mode GENERATE caches the blocks it computes");
	if ((m.flags & KVP_F_PIN) &&
	    lease_over_limit(c, h, m.n_tokens / s->cfg->block_tokens, &o))
		return o;
	tokens = kvp_view_u32s(s->tokens, m.tokens, m.n_tokens);   /* in the frame: no copy */
	if (insert)
		srv_keeps_expire(s);   /* what is due goes before blocks are taken */
	rc = tokens_run(c, insert, m.flags & KVP_F_PIN, tokens, m.n_tokens, &res);
	if (rc == KVP_EBUSY)
		return req_refuse(c, h, rc, "this connection already holds %u leases",
				  s->cfg->max_leases);
	if (rc && !(insert && rc == KVP_ENOMEM && res.n_blocks))
		return req_refuse(c, h, rc, "%s failed: %s", insert ? "INSERT" : "LOOKUP",
				  kvp_strerror(rc));
	if (res.lease)
		lease_account(c, true, res.n_blocks);
	if (insert && (m.flags & KVP_F_KEEP))
		srv_keep(s, c->root, c->group, tokens, m.n_tokens, m.keep_s, m.priority);
	if (insert)
		kvp_stats_insert(&s->stats, conn_stats_ns(c), m.n_tokens);
	else
		kvp_stats_lookup(&s->stats, conn_stats_ns(c), m.n_tokens, res.matched_tokens,
				 &res.miss);
	if (!insert)   /* an index's miss: Redis is asked in the background */
		tier_index_lookup(s, c, tokens, m.n_tokens, res.matched_tokens);
	if (res.pool_full)
		kvp_debug("conn %llu: pool full of pinned blocks; cached %u of %u tokens",
			  (unsigned long long)c->id, res.matched_tokens, m.n_tokens);
	r = (struct kvp_blocks_reply){
		.matched_tokens = res.matched_tokens,
		.prompt_tokens = res.prompt_tokens,
		.new_blocks = res.new_blocks,
		.lease = res.lease,
		.n_blocks = res.n_blocks,
	};
	return req_reply(c, h, s->reply, kvp_blocks_reply_encode(s->reply, s->reply_cap, &r,
								 s->block_ids));
}

/* ---- RELEASE, STATS, PING ------------------------------------------------------------ */

static struct req_outcome handle_release(struct conn *c, const struct kvp_frame_hdr *h,
					 const uint8_t *p)
{
	uint64_t lease;
	uint32_t n = 0;
	uint8_t buf[4];
	int rc = kvp_release_decode(p, h->len, &lease);

	if (rc)
		return req_malformed(c, h, rc, "malformed RELEASE: %s", kvp_strerror(rc));
	rc = kvp_cache_release(c->srv->cache, c->id, lease, &n);
	if (rc)
		return req_refuse(c, h, rc, "no lease %llu on this connection",
				  (unsigned long long)lease);
	lease_account(c, false, n);
	kvp_u32_encode(buf, sizeof(buf), n);
	return req_reply(c, h, buf, sizeof(buf));
}

static struct req_outcome handle_stats(struct conn *c, const struct kvp_frame_hdr *h)
{
	struct server *s = c->srv;
	struct kvp_stats_view v = {
		.version = KVP_VERSION,
		.mode = s->cfg->index_only ? "index-only" : "engine",
		.name = s->name,
		.block_tokens = s->cfg->block_tokens,
		.uptime_s = server_uptime_s(s),
		.generations_active = generate_active(s),
		.connections = s->n_conns,
	};
	const uint32_t uid = (uint32_t)c->uid;
	struct req_outcome o;
	char *txt;

	if (h->len)
		return req_malformed(c, h, KVP_EPROTO, "STATS takes no payload");
	/* every tenant's detail is for root and the admin group; others see their own */
	generate_sched_stats(s, &v.sched);
	if (!conn_is_admin(c))
		v.tenant = &uid;
	kvp_cache_get_stats(s->cache, &v.cache);
	tier_view(s, &v.tier);
	kv_events_view(s, &v.events);
	fleet_view(s, &v.events);
	txt = kvp_stats_json(&s->stats, &v);
	if (!txt)
		return req_refuse(c, h, KVP_ENOMEM, "out of memory building STATS");
	o = req_reply(c, h, txt, strlen(txt));
	cJSON_free(txt);
	return o;
}

/* ---- dispatch ------------------------------------------------------------------------ */

struct req_outcome dispatch_frame(struct conn *c, const struct kvp_frame_hdr *h,
				  const uint8_t *p)
{
	if (c->srv->stopping && h->type != KVP_T_STATS && h->type != KVP_T_PING &&
	    h->type != KVP_T_RELEASE)
		return req_refuse(c, h, KVP_ESHUTDOWN,
				  "kvprefixd is shutting down: running requests finish, new ones are "
				  "refused");
	switch (h->type) {
	case KVP_T_HELLO: return handle_hello(c, h, p);
	case KVP_T_LOOKUP:
	case KVP_T_INSERT: return handle_tokens(c, h, p);
	case KVP_T_RELEASE: return handle_release(c, h, p);
	case KVP_T_STATS: return handle_stats(c, h);
	case KVP_T_GENERATE: return handle_generate(c, h, p);
	case KVP_T_ADMIN: return handle_admin(c, h, p);
	case KVP_T_FLEET: return handle_fleet(c, h, p);
	case KVP_T_PING: return req_reply(c, h, p, h->len);
	}
	return req_malformed(c, h, KVP_EPROTO, "frame type 0x%02x is not a request", h->type);
}
