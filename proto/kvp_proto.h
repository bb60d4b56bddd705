/*
 * kvp_proto.h - the binary frame codec. Pure functions: bytes in, structs out, no I/O,
 * no allocation. Shared by the daemon and the client library; docs/protocol.md is the
 * normative, byte-exact description of everything here.
 *
 * Every frame: a 16-byte header then `len` payload bytes, all integers little-endian.
 *
 *   off size field
 *    0   4   magic    0x3150564B  (the bytes "KVP1")
 *    4   1   version  1
 *    5   1   type     enum kvp_frame_type
 *    6   2   flags    0 (reserved; non-zero is malformed)
 *    8   4   req_id   chosen by the client, echoed in the reply
 *   12   4   len      payload bytes that follow
 *
 * A reply has the request's type | 0x80, or KVP_T_ERROR. Decoders check every length
 * against the bytes present before reading; pointers they return point into the input.
 * Payload decoders report the first of: KVP_EPROTO (the fields do not fill exactly n
 * bytes), KVP_EINVAL (a reserved flag bit is set), KVP_ETOOBIG (a string or count over
 * its limit). Output structs may be partly written on error.
 */
#ifndef KVP_PROTO_H
#define KVP_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_status.h"

#define KVP_PROTO_MAGIC 0x3150564Bu
#define KVP_PROTO_VERSION 1u
#define KVP_HDR_SIZE 16u
#define KVP_ERROR_MSG_MAX 1024u   /* longest ERROR message text */
#define KVP_NAME_MAX 255u         /* longest adapter / salt / model name */

enum kvp_frame_type {
	KVP_T_HELLO = 0x01,
	KVP_T_LOOKUP = 0x02,
	KVP_T_INSERT = 0x03,
	KVP_T_RELEASE = 0x04,
	KVP_T_STATS = 0x05,
	KVP_T_PING = 0x06,
	KVP_T_REPLY = 0x80,   /* or-ed into a request type */
	KVP_T_ERROR = 0xFF,
};

/* LOOKUP / INSERT request flags. */
#define KVP_F_PIN 0x1u     /* pin the resulting blocks under a new lease */
/* HELLO reply flags. */
#define KVP_HELLO_INDEX_ONLY 0x1u

struct kvp_frame_hdr {
	uint8_t version;
	uint8_t type;
	uint16_t flags;
	uint32_t req_id;
	uint32_t len;
};

/* True for the request types a client may send (HELLO..PING). */
bool kvp_frame_is_request(uint8_t type);

void kvp_hdr_encode(uint8_t out[KVP_HDR_SIZE], const struct kvp_frame_hdr *h);
/* Decode the first KVP_HDR_SIZE bytes of in (n must be >= KVP_HDR_SIZE, else
 * KVP_EINVAL). KVP_EPROTO: bad magic, unknown type or non-zero flags. KVP_EVERSION:
 * version != 1. KVP_ETOOBIG: len > max_payload. h is filled in all cases but the first,
 * so the caller can echo req_id in its ERROR. */
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
 * u32 flags, u32 tenant, u16 name_len, name. */
struct kvp_hello_reply {
	uint32_t version;
	uint32_t block_tokens;
	uint32_t capacity_blocks;
	uint32_t max_tokens;
	uint32_t flags;
	uint32_t tenant;
	const char *name;      /* index or model name, name_len bytes */
	uint16_t name_len;
};
size_t kvp_hello_reply_size(const struct kvp_hello_reply *m);
size_t kvp_hello_reply_encode(uint8_t *out, size_t cap, const struct kvp_hello_reply *m);
int kvp_hello_reply_decode(const uint8_t *p, size_t n, struct kvp_hello_reply *m);

/* LOOKUP and INSERT requests: u32 flags, u32 n_tokens, n_tokens x u32 token.
 * Decode: KVP_EPROTO unless n == 8 + 4 * n_tokens, KVP_ETOOBIG when n_tokens >
 * max_tokens, KVP_EINVAL for unknown flags. tokens points at little-endian bytes. */
struct kvp_tokens_req {
	uint32_t flags;
	uint32_t n_tokens;
	const uint8_t *tokens;
};
size_t kvp_tokens_req_size(uint32_t n_tokens);
size_t kvp_tokens_req_encode(uint8_t *out, size_t cap, uint32_t flags, const uint32_t *tokens,
			     uint32_t n_tokens);
int kvp_tokens_req_decode(const uint8_t *p, size_t n, uint32_t max_tokens,
			  struct kvp_tokens_req *m);

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

/* Copy n little-endian u32 values from src (any alignment) to dst (host order). */
void kvp_load_u32s(uint32_t *dst, const uint8_t *src, size_t n);
/* And back. */
void kvp_store_u32s(uint8_t *dst, const uint32_t *src, size_t n);

/*
 * The default socket path, written to buf: $XDG_RUNTIME_DIR/kvprefix/kvprefixd.sock
 * when XDG_RUNTIME_DIR is set, else /run/kvprefix/kvprefixd.sock for root, else
 * /tmp/kvprefix-<uid>/kvprefixd.sock. Returns KVP_ETOOBIG if it does not fit.
 * XDG_RUNTIME_DIR counts only when absolute (an empty or relative value is ignored);
 * uid is the effective uid. Creates nothing.
 */
int kvp_default_socket_path(char *buf, size_t cap);

#endif
