/*
 * kvp_proto.h - the binary frame codec. Pure functions: bytes in, structs out, no I/O,
 * no allocation. Shared by the daemon and the client library; docs/protocol.md is the
 * normative, byte-exact description of everything here.
 *
 * Every frame: a 16-byte header then `len` payload bytes, all integers little-endian.
 *
 *   off size field
 *    0   4   magic    0x3150564B  (the bytes "KVP1")
 *    4   1   version  1 to 4 (KVP_PROTO_VERSION .. KVP_PROTO_VERSION_MAX)
 *    5   1   type     enum kvp_frame_type
 *    6   2   flags    0 (reserved; non-zero is malformed)
 *    8   4   req_id   chosen by the client, echoed in the reply
 *   12   4   len      payload bytes that follow
 *
 * Version 2 is version 1 plus one request, ADMIN: every other type has the same payload
 * in all, and KVP_T_ADMIN / its reply exist only in a header of version 2 or above (in
 * a version-1 header they are unknown types). Version 3 is version 2 plus two fields at
 * the end of a HELLO reply whose version field says 3. Version 4 is version 3 plus one
 * request, FLEET, that exists only in a header of version 4 or above. A reply carries the version of
 * its request's header.
 *
 * A reply has the request's type | 0x80, or KVP_T_ERROR; GENERATE is answered by zero
 * or more KVP_T_GENERATE | KVP_T_REPLY token frames, then KVP_T_GENERATE_DONE (a
 * reply-only type) or KVP_T_ERROR. Decoders check every length
 * against the bytes present before reading; pointers they return point into the input.
 * Payload decoders report the first of: KVP_EPROTO (the fields do not fill exactly n
 * bytes), KVP_EINVAL (a reserved flag bit is set, or a value is out of its range),
 * KVP_ETOOBIG (a string or count over its limit). Output structs may be partly written on error.
 */
#ifndef KVP_PROTO_H
#define KVP_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_sockpath.h"   /* kvp_default_socket_path: daemon and client agree */
#include "kvp_status.h"

#include "kvp_wire.h"

struct kvp_frame_hdr {
	uint8_t version;
	uint8_t type;
	uint16_t flags;
	uint32_t req_id;
	uint32_t len;
};

/* True for the request types a client may send (HELLO..GENERATE, ADMIN); false for
 * every reply type, KVP_T_GENERATE_DONE included. It does not look at versions: ADMIN
 * is a request, valid only in a version-2 header (kvp_frame_type_valid). */
bool kvp_frame_is_request(uint8_t type);
/* True when type, request or reply, exists in a header of this version: every known
 * type in versions 2 and 3; all but KVP_T_ADMIN and its reply in version 1; none in
 * others. */
bool kvp_frame_type_valid(uint8_t version, uint8_t type);

/* Write the header h as is: h->version is sent verbatim, so a reply is encoded with
 * its request's version (KVP_PROTO_VERSION for ordinary frames, KVP_PROTO_VERSION_ADMIN
 * for ADMIN). */
void kvp_hdr_encode(uint8_t out[KVP_HDR_SIZE], const struct kvp_frame_hdr *h);
/* Decode the first KVP_HDR_SIZE bytes of in (n must be >= KVP_HDR_SIZE, else
 * KVP_EINVAL). KVP_EPROTO: bad magic, a type unknown in the header's version, or
 * non-zero flags. KVP_EVERSION: version not in 1 .. KVP_PROTO_VERSION_MAX.
 * KVP_ETOOBIG: len > max_payload. h is filled in all cases but the first, so the
 * caller can echo req_id (and see the version) in its ERROR. */
int kvp_hdr_decode(const uint8_t *in, size_t n, uint32_t max_payload, struct kvp_frame_hdr *h);

/* HELLO request: u32 version, u32 flags, u16 adapter_len, adapter, u16 salt_len, salt. */
struct kvp_hello {
	uint32_t version;
	uint32_t flags;
	const char *adapter;   /* not NUL-terminated; adapter_len bytes, <= KVP_NAME_MAX */
	uint16_t adapter_len;
	const char *salt;      /* explicit cache salt (tenant override); may be empty */
	uint16_t salt_len;
};
size_t kvp_hello_size(const struct kvp_hello *m);
/* Encoders return the bytes written, or 0 when cap is too small or a field is over
 * its limit. */
size_t kvp_hello_encode(uint8_t *out, size_t cap, const struct kvp_hello *m);
int kvp_hello_decode(const uint8_t *p, size_t n, struct kvp_hello *m);

/* HELLO reply: u32 version, u32 block_tokens, u32 capacity_blocks, u32 max_tokens,
 * u32 flags, u32 tenant, u16 name_len, name; then, when version >= 3
 * (KVP_PROTO_VERSION_SIZES), u32 vocab_size and u32 ctx_tokens. The layout follows the
 * reply's own version field, the version negotiated: a reply of version 1 or 2 is
 * byte for byte what it was before version 3. */
struct kvp_hello_reply {
	uint32_t version;
	uint32_t block_tokens;
	uint32_t capacity_blocks;
	uint32_t max_tokens;
	uint32_t flags;
	uint32_t tenant;
	const char *name;      /* index or model name, name_len bytes */
	uint16_t name_len;
	uint32_t vocab_size;   /* version >= 3: the model's vocabulary; 0 index-only */
	uint32_t ctx_tokens;   /* version >= 3: the model's context length; 0 index-only */
};
size_t kvp_hello_reply_size(const struct kvp_hello_reply *m);
size_t kvp_hello_reply_encode(uint8_t *out, size_t cap, const struct kvp_hello_reply *m);
int kvp_hello_reply_decode(const uint8_t *p, size_t n, struct kvp_hello_reply *m);

/*
 * LOOKUP and INSERT requests:
 *
 *   off    size  field
 *    0      4    flags      KVP_F_PIN; INSERT also KVP_F_KEEP; other bits reserved
 *    4      4    n_tokens   T
 *    8     4T    tokens
 *    8+4T   4    keep_s     with KVP_F_KEEP only: 1 .. KVP_KEEP_MAX_S
 *   12+4T   4    priority   with KVP_F_KEEP only: any value
 *
 * Size 8 + 4T, or 16 + 4T with KVP_F_KEEP. Decode: KVP_EPROTO unless n is the size the
 * flags say (a LOOKUP's KVP_F_KEEP is a reserved bit, so its layout is 8 + 4T); then
 * KVP_EINVAL for reserved flag bits; then KVP_EINVAL for keep_s 0 or over
 * KVP_KEEP_MAX_S; then KVP_ETOOBIG when T > max_tokens. Whenever the layout is sound
 * every field is filled (keep_s and priority 0 without KVP_F_KEEP), so the daemon can
 * tell reserved bits (m->flags & ~KVP_INSERT_FLAGS_KNOWN) from a keep_s out of range.
 * tokens points at little-endian bytes inside the input.
 */
#define KVP_LOOKUP_FLAGS_KNOWN KVP_F_PIN                   /* LOOKUP's flags (and FLEET's: none) */
#define KVP_INSERT_FLAGS_KNOWN (KVP_F_PIN | KVP_F_KEEP)    /* INSERT's */
#define KVP_KEEP_SIZE 8u                                  /* bytes of keep_s and priority */
struct kvp_tokens_req {
	uint32_t flags;
	uint32_t n_tokens;
	const uint8_t *tokens;
	uint32_t keep_s;     /* KVP_F_KEEP: seconds to keep the blocks for; else 0 */
	uint32_t priority;   /* KVP_F_KEEP: the lowest is given up first; else 0 */
};
/* The size of a request without KVP_F_KEEP, 8 + 4T; of any, by its flags. */
size_t kvp_tokens_req_size(uint32_t n_tokens);
size_t kvp_tokens_req_size_flags(uint32_t n_tokens, uint32_t flags);
/* A LOOKUP (or an INSERT without KEEP): 0 for flags other than KVP_F_PIN, or a short
 * cap. */
size_t kvp_tokens_req_encode(uint8_t *out, size_t cap, uint32_t flags, const uint32_t *tokens,
			     uint32_t n_tokens);
/* An INSERT: flags of KVP_INSERT_FLAGS_KNOWN; with KVP_F_KEEP, keep_s and priority
 * follow the tokens. 0 (nothing usable written) for a reserved flag bit, keep_s out of
 * range with KVP_F_KEEP, keep_s or priority not 0 without it, or a short cap. */
size_t kvp_tokens_req_encode_keep(uint8_t *out, size_t cap, uint32_t flags,
				  const uint32_t *tokens, uint32_t n_tokens, uint32_t keep_s,
				  uint32_t priority);
/* LOOKUP's decoder (FLEET's too): KVP_F_KEEP is a reserved bit. */
int kvp_tokens_req_decode(const uint8_t *p, size_t n, uint32_t max_tokens,
			  struct kvp_tokens_req *m);
/* INSERT's decoder: KVP_F_PIN and KVP_F_KEEP. */
int kvp_tokens_req_decode_insert(const uint8_t *p, size_t n, uint32_t max_tokens,
				 struct kvp_tokens_req *m);

/* FLEET (version 4) takes a LOOKUP's request. Its reply: u32 prompt_tokens, u32 n, then
 * n x {u32 matched_tokens, u32 name_len (<= KVP_NAME_MAX), name bytes}, one per engine
 * the fleet index follows, longest match first. Encode: 0 when cap is short. Decode:
 * KVP_EPROTO for a bad layout or more than max entries; names point into p. */
struct kvp_fleet_entry {
	uint32_t matched_tokens;
	uint32_t name_len;
	const char *name;
};
size_t kvp_fleet_reply_size(const struct kvp_fleet_entry *e, uint32_t n);
size_t kvp_fleet_reply_encode(uint8_t *out, size_t cap, uint32_t prompt_tokens,
			      const struct kvp_fleet_entry *e, uint32_t n);
int kvp_fleet_reply_decode(const uint8_t *p, size_t n, uint32_t *prompt_tokens,
			   struct kvp_fleet_entry *e, uint32_t max, uint32_t *n_entries);

/* LOOKUP and INSERT replies: u32 matched_tokens (INSERT: cached_tokens), u32
 * prompt_tokens, u32 new_blocks (LOOKUP: 0), u64 lease (0 = none), u32 n_blocks,
 * n_blocks x u32 block id (the blocks of the cached prefix, root first). */
struct kvp_blocks_reply {
	uint32_t matched_tokens;
	uint32_t prompt_tokens;
	uint32_t new_blocks;
	uint64_t lease;
	uint32_t n_blocks;
	const uint8_t *block_ids;   /* decode: little-endian bytes inside the input */
};
size_t kvp_blocks_reply_size(uint32_t n_blocks);
size_t kvp_blocks_reply_encode(uint8_t *out, size_t cap, const struct kvp_blocks_reply *m,
			       const uint32_t *block_ids);
int kvp_blocks_reply_decode(const uint8_t *p, size_t n, struct kvp_blocks_reply *m);

/* RELEASE request: u64 lease. Reply: u32 blocks released. */
size_t kvp_release_encode(uint8_t *out, size_t cap, uint64_t lease);
int kvp_release_decode(const uint8_t *p, size_t n, uint64_t *lease);
size_t kvp_u32_encode(uint8_t *out, size_t cap, uint32_t v);
int kvp_u32_decode(const uint8_t *p, size_t n, uint32_t *v);

/* ERROR: u32 code (a positive kvp_status, i.e. -status), u16 msg_len, msg (UTF-8,
 * <= KVP_ERROR_MSG_MAX; longer text is cut by the encoder, at a UTF-8 character
 * boundary). Encode: status negative (a positive value is taken as the code itself),
 * msg NULL means empty; status 0 returns 0. Where the cut backs off, the frame is up
 * to 3 bytes shorter than kvp_error_size() says.
 * Decode: KVP_EPROTO also for code 0 or code > INT32_MAX. */
struct kvp_error {
	uint32_t code;
	const char *msg;
	uint16_t msg_len;
};
size_t kvp_error_size(size_t msg_len);
size_t kvp_error_encode(uint8_t *out, size_t cap, int status, const char *msg);
int kvp_error_decode(const uint8_t *p, size_t n, struct kvp_error *m);

/*
 * GENERATE request:
 *
 *   off    size  field
 *    0      4    flags        KVP_GEN_LOGITS, KVP_GEN_KEEP; other bits reserved
 *    4      4    max_new      0 .. KVP_GEN_MAX_NEW
 *    8      4    temperature  f32 (IEEE-754 bits), finite and >= 0; 0 = greedy
 *   12      4    top_k        0 = off
 *   16      4    top_p        f32 in (0, 1]; 1 = off
 *   20      8    seed
 *   28      4    n_stop       S <= KVP_STOP_MAX
 *   32     4S    stop         stop token ids
 *   32+4S   4    n_tokens     T, 1 .. max_tokens
 *   36+4S  4T    tokens       prompt token ids
 *   36+4S+4T 4   keep_s       with KVP_GEN_KEEP only: 1 .. KVP_KEEP_MAX_S
 *   40+4S+4T 4   priority     with KVP_GEN_KEEP only: any value
 *
 * Decode: KVP_EPROTO unless n == 36 + 4 * (S + T), plus KVP_KEEP_SIZE with
 * KVP_GEN_KEEP; then KVP_EINVAL for reserved flag bits, then KVP_EINVAL for a value out
 * of range (max_new, temperature, top_p, n_stop, n_tokens 0, keep_s 0 or over
 * KVP_KEEP_MAX_S), then KVP_ETOOBIG when T > max_tokens. Whenever the layout is sound
 * every field is filled (keep_s and priority 0 without KVP_GEN_KEEP), so the daemon can
 * name the count it refuses (and tell flags, m->flags & ~KVP_GEN_FLAGS_KNOWN, from
 * other values). stop and tokens point at little-endian bytes inside the input.
 */
struct kvp_generate_req {
	uint32_t flags;
	uint32_t max_new;
	float temperature;
	uint32_t top_k;
	float top_p;
	uint64_t seed;
	uint32_t n_stop;
	const uint8_t *stop;
	uint32_t n_tokens;
	const uint8_t *tokens;
	uint32_t keep_s;     /* KVP_GEN_KEEP: seconds to keep the prompt's blocks for; else 0 */
	uint32_t priority;   /* KVP_GEN_KEEP: the lowest is given up first; else 0 */
};
/* The size of a request without KVP_GEN_KEEP; of any, by its flags. */
size_t kvp_generate_req_size(uint32_t n_stop, uint32_t n_tokens);
size_t kvp_generate_req_size_flags(uint32_t n_stop, uint32_t n_tokens, uint32_t flags);
/* Encoders refuse (0) whatever the decoder refuses, except T > max_tokens, which they
 * cannot know, and keep_s or priority not 0 without KVP_GEN_KEEP. m->stop and
 * m->tokens are ignored: the ids come from stop / tokens. */
size_t kvp_generate_req_encode(uint8_t *out, size_t cap, const struct kvp_generate_req *m,
			       const uint32_t *stop, const uint32_t *tokens);
/*
 * For a sender that gathers the prompt tokens from elsewhere (writev), the payload in
 * three parts: the head, everything before the tokens (36 + 4 * S bytes: the fields,
 * the stop ids and n_tokens); the T tokens, 4 * T bytes; the tail, everything after
 * them: keep_s and priority with KVP_GEN_KEEP (KVP_KEEP_SIZE bytes), else nothing.
 * encode_head refuses what kvp_generate_req_encode refuses (but a short cap for the
 * tokens and tail). encode_tail returns the tail's bytes, kvp_generate_req_tail_size(m):
 * 0 without KVP_GEN_KEEP; KVP_KEEP_SIZE with it, or 0 when cap is short.
 */
size_t kvp_generate_req_encode_head(uint8_t *out, size_t cap, const struct kvp_generate_req *m,
				    const uint32_t *stop);
size_t kvp_generate_req_tail_size(const struct kvp_generate_req *m);
size_t kvp_generate_req_encode_tail(uint8_t *out, size_t cap, const struct kvp_generate_req *m);
int kvp_generate_req_decode(const uint8_t *p, size_t n, uint32_t max_tokens,
			    struct kvp_generate_req *m);

/* GENERATE token frame (type KVP_T_GENERATE | KVP_T_REPLY): u32 n, n x u32 token ids,
 * the next tokens generated. n is normally >= 1; 0 is well-formed and carries nothing. */
struct kvp_token_chunk {
	uint32_t n;
	const uint8_t *ids;   /* decode: little-endian bytes inside the input */
};
size_t kvp_token_chunk_size(uint32_t n);
size_t kvp_token_chunk_encode(uint8_t *out, size_t cap, const uint32_t *ids, uint32_t n);
int kvp_token_chunk_decode(const uint8_t *p, size_t n, struct kvp_token_chunk *m);

/*
 * GENERATE_DONE (type KVP_T_GENERATE_DONE): the usage of a finished GENERATE.
 *
 *   off  size  field
 *    0    4    prompt_tokens     n_tokens of the request
 *    4    4    cached_tokens     prompt tokens whose KV came from the cache
 *    8    4    computed_tokens   prompt positions the engine ran (prompt - cached, >= 1)
 *   12    4    generated_tokens  tokens sent in the token frames
 *   16    4    finish            KVP_FINISH_*
 *   20    4    reserved          0
 *   24    8    ttft_us           request received -> first token ready
 *   32    8    prefill_us        engine time on the prompt
 *   40    8    decode_us         engine time on the rest
 *   48    4    n_logits          L (0 unless KVP_GEN_LOGITS was asked for)
 *   52   4L    logits            f32 each
 *
 * Decode: KVP_EPROTO unless n == 52 + 4 * L; KVP_EINVAL for reserved != 0 or an
 * unknown finish code.
 */
struct kvp_generate_done {
	uint32_t prompt_tokens;
	uint32_t cached_tokens;
	uint32_t computed_tokens;
	uint32_t generated_tokens;
	uint32_t finish;
	uint64_t ttft_us;
	uint64_t prefill_us;
	uint64_t decode_us;
	uint32_t n_logits;
	const uint8_t *logits;   /* decode: little-endian f32 bytes inside the input */
};
size_t kvp_generate_done_size(uint32_t n_logits);
/* m->logits is ignored: the values come from logits (n_logits of them). */
size_t kvp_generate_done_encode(uint8_t *out, size_t cap, const struct kvp_generate_done *m,
				const float *logits);
int kvp_generate_done_decode(const uint8_t *p, size_t n, struct kvp_generate_done *m);

/*
 * ADMIN request (type KVP_T_ADMIN, version-2 header only):
 *
 *   off    size  field
 *    0      4    op         KVP_ADMIN_*; the decoder takes any value (the daemon answers
 *                           an unknown op with KVP_EINVAL)
 *    4      4    flags      KVP_ADMIN_F_TENANT, KVP_ADMIN_F_ALL; other bits reserved
 *    8      4    tenant     the namespace's tenant with KVP_ADMIN_F_TENANT, else 0
 *   12      4    n_tokens   T
 *   16     4T    tokens     a prefix of token ids (EVICT, PIN, UNPIN, EXPLAIN)
 *   16+4T   2    text_len   X, 0 .. KVP_ADMIN_TEXT_MAX
 *   18+4T   X    text       CONFIG's argument; no byte below 0x20
 *
 * Size 18 + 4T + X. Decode: KVP_EPROTO unless n == 18 + 4T + X; then KVP_EINVAL for
 * reserved flag bits; then KVP_EINVAL for a value out of range (kvp_admin_req_check);
 * then KVP_ETOOBIG for X > KVP_ADMIN_TEXT_MAX or T > max_tokens. Whenever the layout is
 * sound every field is filled, so the daemon can tell reserved bits (m->flags &
 * ~KVP_ADMIN_FLAGS_KNOWN: the connection is closed) from the other refusals (it stays
 * usable). tokens points at little-endian bytes inside the input, text too.
 */

struct kvp_admin_req {
	uint32_t op;
	uint32_t flags;
	uint32_t tenant;
	uint32_t n_tokens;
	const uint8_t *tokens;   /* decode: little-endian bytes inside the input */
	uint16_t text_len;
	const char *text;        /* not NUL-terminated; text_len bytes */
};
size_t kvp_admin_req_size(const struct kvp_admin_req *m);
/*
 * The checks of an ADMIN request that are not about its layout or max_tokens, in the
 * decoder's order: KVP_EINVAL for reserved flag bits; KVP_EINVAL for a value out of
 * range: tenant != 0 without KVP_ADMIN_F_TENANT, a text byte below 0x20, and for the
 * known ops a field the op does not take (ALL but with CLEAR; ALL with TENANT; tokens
 * with CLEAR or CONFIG; T == 0 with EVICT, PIN, UNPIN or EXPLAIN; text but with CONFIG; flags
 * with CONFIG); KVP_ETOOBIG for text_len > KVP_ADMIN_TEXT_MAX. 0 when none applies.
 * Reads m->text (text_len bytes), not m->tokens. Lets a sender learn what the
 * encoder's 0 means.
 */
int kvp_admin_req_check(const struct kvp_admin_req *m);
/* Refuses (0) whatever kvp_admin_req_check refuses, or a short cap. m->tokens is
 * ignored: the ids come from tokens (m->n_tokens of them). */
size_t kvp_admin_req_encode(uint8_t *out, size_t cap, const struct kvp_admin_req *m,
			    const uint32_t *tokens);
int kvp_admin_req_decode(const uint8_t *p, size_t n, uint32_t max_tokens,
			 struct kvp_admin_req *m);

/* ADMIN reply (type KVP_T_ADMIN | KVP_T_REPLY, version-2 header only): u32 op (the
 * request's), u32 blocks (evicted, pinned or unpinned; 0 for CONFIG), u32 text_len
 * (0 .. KVP_ADMIN_REPLY_TEXT_MAX), text (UTF-8, not NUL-terminated). Size 12 + X.
 * Decode: KVP_EPROTO unless n == 12 + X, then KVP_ETOOBIG for X over the limit. */
struct kvp_admin_reply {
	uint32_t op;
	uint32_t blocks;
	uint32_t text_len;
	const char *text;
};
size_t kvp_admin_reply_size(const struct kvp_admin_reply *m);
/* 0 for text_len over the limit or a short cap. */
size_t kvp_admin_reply_encode(uint8_t *out, size_t cap, const struct kvp_admin_reply *m);
int kvp_admin_reply_decode(const uint8_t *p, size_t n, struct kvp_admin_reply *m);

/* Copy n little-endian u32 values from src (any alignment) to dst (host order). */
void kvp_load_u32s(uint32_t *dst, const uint8_t *src, size_t n);
/* src's n values as host u32s: src itself where it is already that (a little-endian
 * host, src 4-byte aligned: no copy), else copied into scratch (room for n), which is
 * returned. The result lives as long as src or scratch. */
const uint32_t *kvp_view_u32s(uint32_t *scratch, const uint8_t *src, size_t n);
/* And back. */
void kvp_store_u32s(uint8_t *dst, const uint32_t *src, size_t n);
/* The same for f32: IEEE-754 bits, little-endian, copied exactly (NaN payloads too). */
void kvp_load_f32s(float *dst, const uint8_t *src, size_t n);
void kvp_store_f32s(uint8_t *dst, const float *src, size_t n);

#endif
