/*
 * kvprefix.h - libkvprefix, the C client of kvprefixd.
 *
 * A client is one blocking connection to the daemon's Unix socket. Calls send one
 * request and wait for its reply (kvp_client_generate: for its last frame). A client
 * is not thread-safe: use one per thread.
 * Every call returns 0 or a negative enum kvp_status (kvp_strerror() names it); when
 * the daemon answered with an ERROR frame, kvp_client_error() gives its message. A
 * connection is opened only to a daemon run by a user it trusts (kvp_client_open).
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
#include "kvp_wire.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The protocol's constants (frame types, GENERATE flags and limits, finish codes, ADMIN
 * ops and flags) come from kvp_wire.h, installed beside this header. */
#define KVP_LOOKUP_PIN KVP_F_PIN   /* lookup/insert: pin the blocks under a lease */

struct kvp_client;

struct kvp_server_info {
	uint32_t version;          /* protocol version the daemon speaks to this client: 1 to 4 */
	uint32_t block_tokens;
	uint32_t capacity_blocks;
	uint32_t max_tokens;       /* tokens per request the daemon accepts */
	uint32_t index_only;       /* 1 when the daemon runs without an engine */
	uint32_t tenant;           /* the tenant the daemon assigned this connection */
	char name[256];            /* index or model name */
	/* What bounds a GENERATE: token ids below vocab_size, prompt + generated tokens at
	 * most ctx_tokens. 0 in index-only mode, and from a daemon that speaks only
	 * version 1 or 2 (version < 3: unknown). */
	uint32_t vocab_size;
	uint32_t ctx_tokens;
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

/* Sampling and limits of one generation; kvp_generate_params_init() sets the defaults.
 * The library checks them before sending (KVP_EINVAL), as the daemon would. */
struct kvp_generate_params {
	uint32_t max_new;          /* tokens to generate at most, 0 .. KVP_GEN_MAX_NEW */
	float temperature;         /* finite, >= 0; 0: greedy (argmax) */
	uint32_t top_k;            /* keep the k most likely tokens; 0: off */
	float top_p;               /* nucleus mass in (0, 1]; 1: off */
	uint64_t seed;             /* seeds the sampler's random numbers (unused when greedy) */
	const uint32_t *stop;      /* stop token ids; generation ends after emitting one */
	uint32_t n_stop;           /* 0 .. KVP_STOP_MAX */
	uint32_t flags;            /* 0 or KVP_GEN_LOGITS; KVP_GEN_KEEP is set from keep_s */
	/* Keep the full blocks of the prompt cached when it completes for keep_s seconds,
	 * 1 .. KVP_KEEP_MAX_S, at priority (as kvp_client_insert_keep); keep_s 0: no keep,
	 * and priority must be 0. A daemon older than KEEP refuses it (KVP_EINVAL). */
	uint32_t keep_s;
	uint32_t priority;
};

/* max_new 16, greedy (temperature 0), top_k 0, top_p 1, seed 0, no stop ids, flags 0,
 * no keep (keep_s 0, priority 0). */
KVP_API void kvp_generate_params_init(struct kvp_generate_params *p);

/* What a generation cost; see docs/protocol.md (GENERATE_DONE) for the exact meaning. */
struct kvp_usage {
	uint32_t prompt_tokens;    /* tokens of the prompt */
	uint32_t cached_tokens;    /* prompt tokens whose KV came from the cache */
	uint32_t computed_tokens;  /* prompt positions the engine ran: prompt - cached, >= 1 */
	uint32_t generated_tokens; /* tokens handed to the callback */
	uint32_t finish;           /* KVP_FINISH_* */
	uint64_t ttft_us;          /* request received -> first token ready */
	uint64_t prefill_us;       /* engine time on the prompt */
	uint64_t decode_us;        /* engine time on the rest */
	uint32_t n_logits;         /* vocabulary size with KVP_GEN_LOGITS, else 0 */
	const float *logits;       /* n_logits floats, 64-byte aligned; valid until the next call */
};

/* Receives each batch of generated tokens as it arrives (n >= 1 in practice). tokens is
 * valid only during the call. The callback must not call into the same client. */
typedef void (*kvp_token_cb)(void *arg, const uint32_t *tokens, uint32_t n);

/* The default socket path (see kvprefixd --help): $XDG_RUNTIME_DIR/kvprefix/kvprefixd.sock
 * when XDG_RUNTIME_DIR is set, else /run/kvprefix/kvprefixd.sock for root, else
 * /tmp/kvprefix-<uid>/kvprefixd.sock. KVP_ETOOBIG if cap is too small. */
KVP_API int kvp_client_default_socket(char *buf, size_t cap);

/*
 * Whom a client talks to. Right after connecting, the library asks the kernel who
 * serves the socket (SO_PEERCRED: the process that listens on it) and goes on only when
 * it is root, this process's effective uid, the system user "kvprefix" (the packaged
 * service's, when it exists), the uid in the environment variable KVP_SERVER_UID, or
 * the uid given to kvp_client_set_server_uid(). Anyone else could be an impostor
 * waiting for prompts (another user can create /tmp/kvprefix-<uid> first): the
 * connection is closed before a byte is sent, with KVP_EPERM. A KVP_SERVER_UID that is
 * not a decimal uid is KVP_EINVAL. With the default path (path NULL) in /tmp, the
 * directory /tmp/kvprefix-<uid> must belong to this user or root and be writable by no
 * one else, or the call fails with KVP_EPERM before connecting.
 */

/* Connect to path (NULL: the default) in one call: kvp_client_new() then
 * kvp_client_open(). KVP_ENOMEM, KVP_EIO (errno kept), KVP_ETOOBIG for a path longer
 * than a sockaddr_un holds, KVP_EPERM / KVP_EINVAL as above (use kvp_client_new and
 * kvp_client_open to read the reason with kvp_client_error). */
KVP_API int kvp_client_connect(const char *path, struct kvp_client **out);
/* A client not yet connected, to set options on before kvp_client_open(). KVP_ENOMEM.
 * Every request call on it fails with KVP_ECLOSED until it is open. */
KVP_API int kvp_client_new(struct kvp_client **out);
/* Also trust a daemon that runs as uid (besides root, this user, the kvprefix user and
 * KVP_SERVER_UID); call before kvp_client_open. KVP_EINVAL for uid 4294967295. */
KVP_API int kvp_client_set_server_uid(struct kvp_client *c, uint32_t uid);
/* Connect c to path (NULL: the default) and check who serves it. Errors as for
 * kvp_client_connect; on failure kvp_client_error() says why (for KVP_EPERM, the uid
 * found and how to trust it, or what is wrong with the directory) and c can be opened
 * again or closed. KVP_EINVAL when c is already open. */
KVP_API int kvp_client_open(struct kvp_client *c, const char *path);
/* Close the connection; the daemon releases every lease it held. NULL is fine. */
KVP_API void kvp_client_close(struct kvp_client *c);

/* Set a deadline for each reply (0: wait forever, the default). A call past it returns
 * KVP_ETIMEDOUT and the client stays usable: the late reply is read and dropped by a
 * later call. The same ms bounds each stalled write (SO_SNDTIMEO); a request cut off
 * part-way cannot be resumed, and later calls return KVP_EIO. May be set before
 * kvp_client_open. */
KVP_API int kvp_client_set_timeout_ms(struct kvp_client *c, uint32_t ms);

/* Optional first call: checks the protocol version, sets the adapter id and (where the
 * daemon allows it) a cache salt for this connection; info may be NULL. The library
 * offers version 4; a daemon that answers 1 to 3 is fine (info then lacks the model's
 * sizes below 3), but kvp_client_admin after a 1, and kvp_client_fleet after anything
 * below 4, fail at once with KVP_EVERSION (nothing is sent). */
KVP_API int kvp_client_hello(struct kvp_client *c, const char *adapter, const char *salt,
		     struct kvp_server_info *info);

/* Which prefix of tokens is cached. flags: 0 or KVP_LOOKUP_PIN. */
KVP_API int kvp_client_lookup(struct kvp_client *c, const uint32_t *tokens, size_t n_tokens,
		      uint32_t flags, struct kvp_match *out);
/* Register the full blocks of tokens as computed. flags: 0 or KVP_LOOKUP_PIN. */
KVP_API int kvp_client_insert(struct kvp_client *c, const uint32_t *tokens, size_t n_tokens,
		      uint32_t flags, struct kvp_match *out);
/*
 * kvp_client_insert, and keep the full blocks of tokens cached now for keep_s seconds
 * (1 .. KVP_KEEP_MAX_S, a week; else KVP_EINVAL, nothing sent) at priority (when the
 * pool or the tenant's quota has nothing else to give, the lowest priority is given up
 * first). docs/protocol.md (INSERT, KEEP) says what a keep does. flags: as insert's
 * (KVP_F_KEEP is implied). A daemon older than KEEP refuses it as a reserved flag bit
 * (KVP_EINVAL) and closes the connection.
 */
KVP_API int kvp_client_insert_keep(struct kvp_client *c, const uint32_t *tokens,
				   size_t n_tokens, uint32_t flags, uint32_t keep_s,
				   uint32_t priority, struct kvp_match *out);
/* Unpin a lease; *n_blocks (may be NULL) gets how many blocks it held. */
KVP_API int kvp_client_release(struct kvp_client *c, uint64_t lease, uint32_t *n_blocks);
/* The daemon's statistics as a JSON object, NUL-terminated, malloc'd: free() it. */
KVP_API int kvp_client_stats(struct kvp_client *c, char **json);
/* One engine's answer to FLEET: its name, NUL-terminated in the client's memory until
 * the next call, and how many leading tokens of the sequence it has cached. */
struct kvp_fleet_match {
	uint32_t matched_tokens;
	const char *name;
};
/* For a fleet index (kvprefixd --index-only --kv-events-sub): how many leading tokens of
 * tokens each engine it follows has cached, longest first, in out (at most max; 64
 * holds every engine); *n gets how many. KVP_EUNSUPPORTED from a daemon without a fleet
 * index; KVP_EVERSION (nothing sent) after a HELLO that settled below version 4. */
KVP_API int kvp_client_fleet(struct kvp_client *c, const uint32_t *tokens, size_t n_tokens,
			     struct kvp_fleet_match *out, size_t max, size_t *n);
/* Round trip of n opaque bytes, echoed back. */
KVP_API int kvp_client_ping(struct kvp_client *c, const void *data, size_t n);

/*
 * Generate up to p->max_new tokens after prompt[0..n) (n >= 1; p NULL: the defaults).
 * Needs a daemon in engine mode (an index-only daemon answers KVP_EUNSUPPORTED). cb
 * (may be NULL) is called with each token frame as it arrives; the call returns once
 * the daemon's final frame does: 0 with *usage filled (usage may be NULL), or the
 * daemon's ERROR as a negative status (kvp_client_error() has its message; tokens
 * already passed to cb stand, *usage is not written). The timeout, if set, bounds the
 * wait for each frame, not the whole generation; after KVP_ETIMEDOUT the frames still
 * to come for this generation are dropped by later calls. A reply that breaks the protocol
 * (tokens after the end, usage that does not add up, logits not asked for) is
 * KVP_EPROTO.
 */
KVP_API int kvp_client_generate(struct kvp_client *c, const uint32_t *prompt, size_t n,
				const struct kvp_generate_params *p, kvp_token_cb cb, void *arg,
				struct kvp_usage *usage);

/*
 * An administrative request (docs/protocol.md, ADMIN), sent in a version-2 header.
 * op: KVP_ADMIN_*; flags: KVP_ADMIN_F_TENANT (tenant names the namespace's tenant; else
 * tenant must be 0) and, for CLEAR only, KVP_ADMIN_F_ALL. tokens[0..n_tokens): the
 * prefix of EVICT, PIN and UNPIN (at least one token; none for the other ops). text
 * (NULL: empty): CONFIG's "", "key" or "key=value", at most KVP_ADMIN_TEXT_MAX bytes,
 * no byte below 0x20; no text for the other ops.
 *
 * On 0: *blocks (may be NULL) gets the blocks evicted, pinned or unpinned (0 for
 * CONFIG), and *reply_text (may be NULL) a malloc'd NUL-terminated copy of the
 * daemon's text ("" when it sent none): free() it. On failure *reply_text is NULL.
 *
 * Refused before anything is sent: a request the daemon's decoder would refuse
 * (KVP_EINVAL; KVP_ETOOBIG for text over the limit); a daemon that said in HELLO that
 * it speaks only version 1 (KVP_EVERSION). From the daemon: KVP_EPERM unless this
 * process runs as root or in the daemon's admin group (the client stays usable),
 * KVP_ENOTFOUND for an UNPIN with no such pin, KVP_EINVAL / KVP_EUNSUPPORTED for a
 * CONFIG the daemon refuses (kvp_client_error() says why), and KVP_EVERSION from a
 * daemon that speaks only version 1 (it then closes the connection; reconnect).
 */
KVP_API int kvp_client_admin(struct kvp_client *c, uint32_t op, uint32_t flags,
			     uint32_t tenant, const uint32_t *tokens, size_t n_tokens,
			     const char *text, uint32_t *blocks, char **reply_text);

/* The last ERROR message from the daemon; or, for a failure of the library's own, why
 * (a refused server or socket directory, a reply that breaks the protocol: KVP_EPROTO).
 * "" if none. Valid until the next call. */
KVP_API const char *kvp_client_error(const struct kvp_client *c);

/*
 * Non-zero when the daemon refused the connection as a whole: instead of answering, it
 * sent an ERROR with req_id 0 and closed (docs/protocol.md: its connection limit,
 * KVP_EBUSY; a graceful stop in progress, KVP_ESHUTDOWN). The call that met it returned
 * that ERROR's code and kvp_client_error() has its text; later calls return
 * KVP_ECLOSED. Connect again later.
 */
KVP_API int kvp_client_refused(const struct kvp_client *c);

/*
 * The connected socket, for a caller that pipelines requests itself: between two calls
 * on c it may write request frames of its own (kvp_wire.h, docs/protocol.md; any req_id
 * but 0), and it reads every reply to them before the next call, which then finds the
 * stream where the last call left it. The library neither sees nor traces those frames
 * (KVP_TRACE_FRAMES). Returns the descriptor, still c's to close; KVP_EBUSY while the
 * stream is not at a frame boundary the caller can start from (a reply to a request that
 * timed out is still due, or bytes past the last reply returned are buffered); or, when
 * c is not open or no longer usable, the status its calls return (KVP_ECLOSED, ...).
 */
KVP_API int kvp_client_fd(const struct kvp_client *c);

#ifdef __cplusplus
}
#endif
#endif
