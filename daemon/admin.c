/*
 * admin.c - ADMIN requests (protocol version 2): who may send them, and the ops.
 *
 *   ADMIN ──decode──▶ conn_is_admin? ──no──▶ ERROR EPERM (the connection stays)
 *                          │ yes
 *                          ▼
 *        CLEAR / EVICT / PIN / UNPIN ──▶ the cache      CONFIG ──▶ the live options
 *        EXPLAIN ──▶ explain.c
 *
 * Root, and the members of --admin-group (its primary group, or a supplementary one
 * through SO_PEERGROUPS), may; anyone else is refused and logged.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/bufferevent.h>

#include "kvp_log.h"
#include "server.h"

static const char *const op_names[] = {
	"?", "CLEAR", "EVICT", "PIN", "UNPIN", "CONFIG", "EXPLAIN",
};

static const char *op_name(uint32_t op)
{
	return op < sizeof(op_names) / sizeof(op_names[0]) ? op_names[op] : "?";
}

bool conn_is_admin(struct conn *c)
{
	struct server *s = c->srv;
	int fd = bufferevent_getfd(c->bev);
	gid_t small[64], *groups = small;
	socklen_t len = sizeof(small);
	bool found = false;
	int rc;

	if (c->uid == 0)
		return true;
	if (!s->admin_gid_ok)
		return false;
	if (c->gid == s->admin_gid)
		return true;
	rc = getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len);
	if (rc != 0 && errno == ERANGE && len > sizeof(small)) {
		/* more groups than fit: the kernel said how many bytes they take */
		groups = srv_malloc(len);
		if (!groups)
			return false;
		rc = getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len);
	}
	for (size_t i = 0; rc == 0 && i < len / sizeof(gid_t) && !found; i++)
		found = groups[i] == s->admin_gid;
	if (groups != small)
		srv_free(groups);
	return found;
}

/* s without its leading and trailing blanks (cut in place). */
static char *trim_blanks(char *s)
{
	size_t n;

	while (*s == ' ' || *s == '\t')
		s++;
	n = strlen(s);
	while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
		s[--n] = '\0';
	return s;
}

/* ADMIN CONFIG: "" lists every option, "key" shows one, "key = value" sets a live one.
 * Returns 0 with the reply text in out, or a status with the reason in out. */
static int admin_config(struct server *s, struct conn *c, const char *text, size_t n,
			char *out, size_t cap)
{
	char buf[KVP_ADMIN_TEXT_MAX + 1], *key, *val = NULL, *eq;
	int rc;

	if (n > KVP_ADMIN_TEXT_MAX)
		n = KVP_ADMIN_TEXT_MAX;   /* the decoder refused longer ones already */
	memcpy(buf, text, n);
	buf[n] = '\0';
	eq = strchr(buf, '=');
	if (eq) {
		*eq = '\0';
		val = trim_blanks(eq + 1);
	}
	key = trim_blanks(buf);
	if (!*key && !eq)
		return kvp_config_format(s->cfg, NULL, out, cap) == KVP_ENOTFOUND ? KVP_EINTERNAL
										     : KVP_OK;
	if (!*key) {
		snprintf(out, cap, "expected 'key' or 'key = value'");
		return KVP_EINVAL;
	}
	if (!val) {
		if (kvp_config_format(s->cfg, key, out, cap) == KVP_ENOTFOUND) {
			snprintf(out, cap, "%s: no such option", key);
			return KVP_EINVAL;
		}
		return KVP_OK;
	}
	rc = kvp_config_set_live(s->cfg, key, val, out, cap);
	if (rc)
		return rc;
	apply_live(s);
	kvp_info("admin: uid %u set %s = %s", (unsigned)c->uid, key, val);
	(void)kvp_config_format(s->cfg, key, out, cap);
	return KVP_OK;
}

/* Run op m; the blocks it touched in *blocks, its reply text (or why it failed) in
 * text (KVP_ADMIN_REPLY_TEXT_MAX + 1 bytes). 0 or a status. */
static int admin_run(struct conn *c, const struct kvp_admin_req *m, uint32_t *blocks,
		     char *text)
{
	struct server *s = c->srv;
	struct kvp_key root = c->root;
	const size_t cap = KVP_ADMIN_REPLY_TEXT_MAX + 1;
	int rc = KVP_OK;

	if (m->flags & KVP_ADMIN_F_TENANT)
		root = kvp_ns_root(s->ns_name, m->tenant, c->adapter);
	if (m->n_tokens)
		kvp_load_u32s(s->tokens, m->tokens, m->n_tokens);
	switch (m->op) {
	case KVP_ADMIN_CLEAR:
		if (m->flags & KVP_ADMIN_F_ALL)
			kv_events_clear_begin(s);
		*blocks = (uint32_t)kvp_cache_clear(s->cache,
						    (m->flags & KVP_ADMIN_F_ALL) ? NULL : &root);
		tier_clear(s, (m->flags & KVP_ADMIN_F_ALL) ? NULL : &root);   /* not in *blocks */
		if (m->flags & KVP_ADMIN_F_ALL)
			kv_events_clear_end(s);
		break;
	case KVP_ADMIN_EVICT:
		rc = kvp_cache_evict_prefix(s->cache, root, s->tokens, m->n_tokens, blocks);
		break;
	case KVP_ADMIN_PIN:
		rc = kvp_cache_admin_pin(s->cache, root, s->tokens, m->n_tokens, blocks);
		break;
	case KVP_ADMIN_UNPIN:
		rc = kvp_cache_admin_unpin(s->cache, root, s->tokens, m->n_tokens, blocks);
		if (rc == KVP_ENOTFOUND)
			snprintf(text, cap, "no PIN of that prefix");
		break;
	case KVP_ADMIN_CONFIG:
		rc = admin_config(s, c, m->text, m->text_len, text, cap);
		break;
	case KVP_ADMIN_EXPLAIN:
		rc = admin_explain(s, root, s->tokens, m->n_tokens, blocks, text, cap);
		break;
	default:
		rc = KVP_EINVAL;
		snprintf(text, cap, "unknown ADMIN op %u", m->op);
		break;
	}
	return rc;
}

/* The ADMIN reply: op, blocks and text. */
static struct req_outcome admin_reply(struct conn *c, const struct kvp_frame_hdr *h,
				      uint32_t op, uint32_t blocks, const char *text)
{
	struct kvp_admin_reply r = {
		.op = op,
		.blocks = blocks,
		.text_len = (uint32_t)strnlen(text, KVP_ADMIN_REPLY_TEXT_MAX),
		.text = text,
	};
	size_t cap = kvp_admin_reply_size(&r), n;
	uint8_t *buf = srv_malloc(cap);
	struct req_outcome o;

	n = buf ? kvp_admin_reply_encode(buf, cap, &r) : 0;
	if (n)
		o = req_reply(c, h, buf, n);
	else
		o = req_refuse(c, h, KVP_ENOMEM, "out of memory");
	srv_free(buf);
	return o;
}

struct req_outcome handle_admin(struct conn *c, const struct kvp_frame_hdr *h, const uint8_t *p)
{
	struct server *s = c->srv;
	struct kvp_admin_req m;
	struct req_outcome o;
	uint32_t blocks = 0;
	char *text;
	int rc = kvp_admin_req_decode(p, h->len, s->cfg->max_tokens, &m);

	if (rc == KVP_EPROTO || (rc == KVP_EINVAL && (m.flags & ~KVP_ADMIN_FLAGS_KNOWN)))
		return req_malformed(c, h, rc, "malformed ADMIN: %s", kvp_strerror(rc));
	if (rc)
		return req_refuse(c, h, rc, "ADMIN refused: %s", kvp_strerror(rc));
	if (!conn_is_admin(c)) {
		kvp_warn("admin: %s refused for uid %u", op_name(m.op), (unsigned)c->uid);
		return req_refuse(c, h, KVP_EPERM,
				  "administrative requests need root%s%s; this is uid %u",
				  s->admin_gid_ok ? " or group " : "",
				  s->admin_gid_ok ? s->cfg->admin_group : "", (unsigned)c->uid);
	}
	s->stats.t.admin_requests++;
	text = srv_malloc(KVP_ADMIN_REPLY_TEXT_MAX + 1);
	if (!text)
		return req_refuse(c, h, KVP_ENOMEM, "out of memory");
	text[0] = '\0';
	rc = admin_run(c, &m, &blocks, text);
	if (rc) {
		o = req_refuse(c, h, rc, "%s", text[0] ? text : kvp_strerror(rc));
	} else {
		if (m.op != KVP_ADMIN_CONFIG && m.op != KVP_ADMIN_EXPLAIN)
			kvp_info("admin: uid %u %s%s: %u blocks", (unsigned)c->uid, op_name(m.op),
				 (m.flags & KVP_ADMIN_F_ALL) ? " (all namespaces)" : "", blocks);
		o = admin_reply(c, h, m.op, blocks, text);
	}
	srv_free(text);
	return o;
}
