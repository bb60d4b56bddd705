/*
 * kvprefix.h - libkvprefix, the C client of kvprefixd.
 *
 * A client is one blocking connection to the daemon's Unix socket. Calls send one
 * request and wait for its reply. A client is not thread-safe: use one per thread.
 * Every call returns 0 or a negative enum kvp_status (kvp_strerror() names it); when
 * the daemon answered with an ERROR frame, kvp_client_error() gives its message.
 * KVP_ECLOSED / KVP_EIO / KVP_EPROTO leave the client unusable: close it. So does
 * KVP_ENOMEM when it comes from growing the reply buffer (replies over 256 MiB are
 * refused with KVP_EPROTO).
 *
 * Link with `pkg-config --libs kvprefix`.
 */
#ifndef KVPREFIX_H
#define KVPREFIX_H

#include <stddef.h>
#include <stdint.h>

#include "kvp_status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KVP_LOOKUP_PIN 0x1u   /* lookup/insert: pin the blocks under a lease */

struct kvp_client;

struct kvp_server_info {
	uint32_t version;
	uint32_t block_tokens;
	uint32_t capacity_blocks;
	uint32_t max_tokens;       /* tokens per request the daemon accepts */
	uint32_t index_only;       /* 1 when the daemon runs without an engine */
	uint32_t tenant;           /* the tenant the daemon assigned this connection */
	char name[256];            /* index or model name */
};

/* Result of lookup / insert. block_ids points into the client and stays valid until
 * the next call on it. */
struct kvp_match {
	uint32_t matched_tokens;   /* lookup: cached prefix; insert: now cached */
	uint32_t prompt_tokens;
	uint32_t new_blocks;       /* insert: blocks added by this call */
	uint64_t lease;            /* non-zero when KVP_LOOKUP_PIN was given */
	uint32_t n_blocks;
	const uint32_t *block_ids;
};

/* The default socket path (see kvprefixd --help). KVP_ETOOBIG if cap is too small. */
KVP_API int kvp_client_default_socket(char *buf, size_t cap);

/* Connect to path (NULL: the default). KVP_ENOMEM, KVP_EIO (errno kept), KVP_ETOOBIG
 * for a path longer than a sockaddr_un holds. */
KVP_API int kvp_client_connect(const char *path, struct kvp_client **out);
/* Close the connection; the daemon releases every lease it held. NULL is fine. */
KVP_API void kvp_client_close(struct kvp_client *c);

/* Set a deadline for each reply (0: wait forever, the default). A call past it returns
 * KVP_ETIMEDOUT and the client stays usable: the late reply is read and dropped by a
 * later call. The same ms bounds each stalled write (SO_SNDTIMEO); a request cut off
 * part-way cannot be resumed, and later calls return KVP_EIO. */
KVP_API int kvp_client_set_timeout_ms(struct kvp_client *c, uint32_t ms);

/* Optional first call: checks the protocol version, sets the adapter id and (where the
 * daemon allows it) a cache salt for this connection; info may be NULL. */
KVP_API int kvp_client_hello(struct kvp_client *c, const char *adapter, const char *salt,
		     struct kvp_server_info *info);

/* Which prefix of tokens is cached. flags: 0 or KVP_LOOKUP_PIN. */
KVP_API int kvp_client_lookup(struct kvp_client *c, const uint32_t *tokens, size_t n_tokens,
		      uint32_t flags, struct kvp_match *out);
/* Register the full blocks of tokens as computed. flags: 0 or KVP_LOOKUP_PIN. */
KVP_API int kvp_client_insert(struct kvp_client *c, const uint32_t *tokens, size_t n_tokens,
		      uint32_t flags, struct kvp_match *out);
/* Unpin a lease; *n_blocks (may be NULL) gets how many blocks it held. */
KVP_API int kvp_client_release(struct kvp_client *c, uint64_t lease, uint32_t *n_blocks);
/* The daemon's statistics as a JSON object, NUL-terminated, malloc'd: free() it. */
KVP_API int kvp_client_stats(struct kvp_client *c, char **json);
/* Round trip of n opaque bytes, echoed back. */
KVP_API int kvp_client_ping(struct kvp_client *c, const void *data, size_t n);

/* The last ERROR message from the daemon ("" if none). Valid until the next call. */
KVP_API const char *kvp_client_error(const struct kvp_client *c);

#ifdef __cplusplus
}
#endif
#endif
