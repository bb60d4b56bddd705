/*
 * client_generate.c - libkvprefix's GENERATE (contract: kvprefix.h, kvp_client_generate):
 * the request sent in one gather write, then the answer read frame by frame.
 *
 *   out   | header | fields, stop ids, n_tokens | prompt (the caller's array) | keep |
 *          iov[0]: the stack                      iov[1]                        iov[2]
 *   in    token frames (req_id's), each handed to the callback, then GENERATE_DONE or
 *         ERROR; frames of other requests that timed out are dropped on the way
 *
 * keep (keep_s, priority) is there only with KVP_GEN_KEEP. GENERATE_DONE is checked
 * against what was streamed (done_check) before the usage is handed out; its logits
 * are copied to aligned storage the client owns until the next call.
 *
 * Frame I/O and the client's struct come from client.c (client_internal.h).
 */
#include "kvprefix.h"
#include "kvp_proto.h"
#include "client_internal.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

/* what a u32 payload length holds: the prompt of a GENERATE with every stop id, KEEP */
#define CLIENT_MAX_GEN_TOKENS ((UINT32_MAX - 36u - 4u * KVP_STOP_MAX - KVP_KEEP_SIZE) / 4u)
#define CLIENT_LOGITS_ALIGN 64u

KVP_API void kvp_generate_params_init(struct kvp_generate_params *p)
{
	if (!p)
		return;
	memset(p, 0, sizeof(*p));
	p->max_new = 16;
	p->temperature = 0.0f;
	p->top_k = 0;
	p->top_p = 1.0f;
	p->seed = 0;
	p->stop = NULL;
	p->n_stop = 0;
	p->flags = 0;
	p->keep_s = 0;     /* no keep */
	p->priority = 0;
}

static bool is_stop(const struct kvp_generate_params *p, uint32_t tok)
{
	for (uint32_t i = 0; i < p->n_stop; i++)
		if (p->stop[i] == tok)
			return true;
	return false;
}

/* Copy the DONE frame's logits into aligned storage the client owns. */
static int keep_logits(struct kvp_client *c, const uint8_t *raw, uint32_t n)
{
	if (n > c->logits_cap) {
		size_t bytes = ((size_t)n * sizeof(float) + CLIENT_LOGITS_ALIGN - 1) &
			       ~(size_t)(CLIENT_LOGITS_ALIGN - 1);
		float *l = aligned_alloc(CLIENT_LOGITS_ALIGN, bytes);

		if (!l)
			return KVP_ENOMEM;
		free(c->logits);
		c->logits = l;
		c->logits_cap = bytes / sizeof(float);
	}
	kvp_load_f32s(c->logits, raw, n);
	return 0;
}

static const char *finish_name(uint32_t finish)
{
	switch (finish) {
	case KVP_FINISH_LENGTH: return "length";
	case KVP_FINISH_STOP: return "stop";
	default: return "context";
	}
}

/*
 * The usage must add up with what was streamed (docs/protocol.md, GENERATE_DONE): 0, or
 * KVP_EPROTO saying what does not. finish is checked against the request: "length" is
 * max_new tokens, "context" fewer (the model's context filled first), "stop" a stop id
 * last.
 */
static int done_check(struct kvp_client *c, const struct kvp_generate_done *d,
		      const struct kvp_generate_params *p, size_t n, uint32_t streamed,
		      bool stopped)
{
	if (d->prompt_tokens != n || d->generated_tokens != streamed)
		return kvp_cl_broken(c, "GENERATE_DONE counts %u prompt and %u generated tokens; "
				     "%zu and %u were sent", d->prompt_tokens, d->generated_tokens,
				     n, streamed);
	if ((uint64_t)d->cached_tokens + d->computed_tokens != d->prompt_tokens ||
	    d->computed_tokens == 0)
		return kvp_cl_broken(c, "GENERATE_DONE: %u cached + %u computed tokens are not "
				     "the prompt's %u (with at least 1 computed)",
				     d->cached_tokens, d->computed_tokens, d->prompt_tokens);
	if (d->n_logits && !(p->flags & KVP_GEN_LOGITS))
		return kvp_cl_broken(c, "GENERATE_DONE carries logits that were not asked for");
	if (d->finish == KVP_FINISH_STOP ? stopped
	    : !stopped && (d->finish == KVP_FINISH_LENGTH ? streamed == p->max_new
							  : streamed < p->max_new))
		return 0;
	return kvp_cl_broken(c, "GENERATE_DONE says finish %u (%s) after %u of at most %u "
			     "tokens%s", d->finish, finish_name(d->finish), streamed, p->max_new,
			     stopped ? ", the last a stop id" : ", none a stop id");
}

KVP_API int kvp_client_generate(struct kvp_client *c, const uint32_t *prompt, size_t n,
				const struct kvp_generate_params *p, kvp_token_cb cb, void *arg,
				struct kvp_usage *usage)
{
	uint8_t head[KVP_HDR_SIZE + 36 + 4 * KVP_STOP_MAX], tail[KVP_KEEP_SIZE];
	struct iovec iov[3] = { { head, 0 }, { NULL, 0 }, { tail, 0 } };
	struct kvp_generate_params defaults;
	struct kvp_generate_req m;
	struct kvp_generate_done d;
	struct kvp_frame_hdr h;
	int64_t deadline = 0;
	uint32_t id, streamed = 0;
	bool stopped = false;
	size_t hn, tn;
	int rc;

	if ((rc = kvp_cl_check(c)) < 0)
		return rc;
	if (!p) {
		kvp_generate_params_init(&defaults);
		p = &defaults;
	}
	if (n == 0 || !prompt || (p->n_stop && !p->stop))
		return KVP_EINVAL;
	if (n > CLIENT_MAX_GEN_TOKENS)
		return KVP_ETOOBIG;
	m = (struct kvp_generate_req){
		.flags = p->flags | (p->keep_s ? KVP_GEN_KEEP : 0),
		.max_new = p->max_new,
		.temperature = p->temperature,
		.top_k = p->top_k,
		.top_p = p->top_p,
		.seed = p->seed,
		.n_stop = p->n_stop,
		.n_tokens = (uint32_t)n,
		.keep_s = p->keep_s,
		.priority = p->priority,
	};
	/* The encoder refuses exactly what the daemon's decoder would (but max_tokens), and
	 * a priority without keep_s. */
	hn = kvp_generate_req_encode_head(head + KVP_HDR_SIZE, sizeof(head) - KVP_HDR_SIZE, &m,
					  p->stop);
	if (hn == 0)
		return KVP_EINVAL;
	iov[0].iov_len = KVP_HDR_SIZE + hn;
	if ((rc = kvp_cl_tokens_iov(c, prompt, n, &iov[1])) < 0)
		return rc;
	tn = kvp_generate_req_encode_tail(tail, sizeof(tail), &m);
	iov[2].iov_len = tn;

	if (c->timeout_ms)
		deadline = kvp_cl_now_ms() + c->timeout_ms;
	rc = kvp_cl_send(c, KVP_PROTO_VERSION, KVP_T_GENERATE, iov, tn ? 3 : 2, hn + n * 4 + tn,
			 &id);
	if (rc < 0)
		return rc;
	for (;;) {
		const uint8_t *payload;
		struct kvp_token_chunk chunk;
		const uint32_t *ids;

		if ((rc = kvp_cl_next_frame(c, id, KVP_PROTO_VERSION, deadline, &h)) < 0) {
			if (rc == KVP_ETIMEDOUT)
				kvp_cl_owe(c, id);
			return rc;
		}
		payload = c->buf + KVP_HDR_SIZE;
		if (h.type == KVP_T_ERROR)
			return kvp_cl_take_error(c, payload, h.len);
		if (h.type == KVP_T_GENERATE_DONE)
			break;
		if (h.type != (KVP_T_GENERATE | KVP_T_REPLY))
			return kvp_cl_broken(c, "a frame of type 0x%02x in a GENERATE's answer",
					     h.type);
		if (kvp_token_chunk_decode(payload, h.len, &chunk) < 0)
			return kvp_cl_broken(c, "a GENERATE token frame that does not decode");
		if (chunk.n > p->max_new - streamed)
			return kvp_cl_broken(c, "%u tokens after %u, over max_new %u", chunk.n,
					     streamed, p->max_new);
		ids = kvp_cl_host_ids(chunk.ids, chunk.n);
		/* A stop id ends the generation: it can only be the last token. */
		for (uint32_t i = 0; i < chunk.n; i++) {
			if (stopped)
				return kvp_cl_broken(c, "token %u after a stop id", ids[i]);
			stopped = p->n_stop && is_stop(p, ids[i]);
		}
		streamed += chunk.n;
		if (cb && chunk.n)
			cb(arg, ids, chunk.n);
		if (c->timeout_ms)
			deadline = kvp_cl_now_ms() + c->timeout_ms;
	}
	if (kvp_generate_done_decode(c->buf + KVP_HDR_SIZE, h.len, &d) < 0)
		return kvp_cl_broken(c, "a GENERATE_DONE that does not decode");
	if ((rc = done_check(c, &d, p, n, streamed, stopped)) < 0)
		return rc;
	if (d.n_logits && (rc = keep_logits(c, d.logits, d.n_logits)) < 0)
		return rc;
	if (usage) {
		usage->prompt_tokens = d.prompt_tokens;
		usage->cached_tokens = d.cached_tokens;
		usage->computed_tokens = d.computed_tokens;
		usage->generated_tokens = d.generated_tokens;
		usage->finish = d.finish;
		usage->ttft_us = d.ttft_us;
		usage->prefill_us = d.prefill_us;
		usage->decode_us = d.decode_us;
		usage->n_logits = d.n_logits;
		usage->logits = d.n_logits ? c->logits : NULL;
	}
	return 0;
}
