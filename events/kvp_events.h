/*
 * kvp_events.h - KV-cache events in the format vLLM publishes and KV-aware routers
 * read (docs/kv-events.md): a batch builder that encodes them (msgpack), and a decoder
 * for another engine's batches.
 *
 * A batch is the msgpack array [timestamp (f64), [event, ...], data_parallel_rank or nil].
 * Events are BlockStored, BlockRemoved and AllBlocksCleared, each either a map with a
 * "type" field (KVP_EV_MAP, the default) or the older array form, the type's name first
 * (KVP_EV_ARRAY). Block hashes are integers: the low 64 bits of the chained keys.
 *
 * Pure: no I/O, no threads. A batch builder is used by one thread at a time (the daemon
 * appends on its loop and hands the builder to the publisher's thread, which packs it).
 * Appending only copies the block into plain arrays; kvp_evbatch_take does the msgpack.
 * Errors: 0 or a negative enum kvp_status (KVP_ENOMEM leaves the builder as it was
 * before the call).
 */
#ifndef KVP_EVENTS_H
#define KVP_EVENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_status.h"

enum kvp_ev_encoding {
	KVP_EV_MAP = 0,     /* events as maps with a "type" field */
	KVP_EV_ARRAY = 1,   /* events as arrays, the type's name first */
};

/* The tier a block is in, as an event's "medium" names it. */
enum kvp_ev_medium {
	KVP_EV_GPU = 0,
	KVP_EV_CPU = 1,
	KVP_EV_DISK = 2,
};
const char *kvp_ev_medium_name(enum kvp_ev_medium m);

/* ---- building batches ------------------------------------------------------------- */

struct kvp_evbatch;

/* A builder for blocks of block_tokens tokens. KVP_EINVAL, KVP_ENOMEM. */
int kvp_evbatch_create(enum kvp_ev_encoding enc, uint32_t block_tokens,
		       struct kvp_evbatch **out);
/* An empty builder with b's encoding and block size. */
int kvp_evbatch_create_like(const struct kvp_evbatch *b, struct kvp_evbatch **out);
void kvp_evbatch_destroy(struct kvp_evbatch *b);

/*
 * Append one event. A stored block whose parent is the last block of the event before
 * it (a BlockStored of the same medium) extends that event, as vLLM's do; so do removals
 * following removals of the same medium. has_parent false: the first block of a prompt
 * (parent_block_hash nil). tokens: block_tokens of them.
 */
int kvp_evbatch_stored(struct kvp_evbatch *b, uint64_t hash, bool has_parent, uint64_t parent,
		       const uint32_t *tokens, enum kvp_ev_medium medium);
int kvp_evbatch_removed(struct kvp_evbatch *b, uint64_t hash, enum kvp_ev_medium medium);
int kvp_evbatch_cleared(struct kvp_evbatch *b);

size_t kvp_evbatch_events(const struct kvp_evbatch *b);   /* events appended so far */
size_t kvp_evbatch_bytes(const struct kvp_evbatch *b);    /* about what take returns */
void kvp_evbatch_reset(struct kvp_evbatch *b);            /* forget what was appended */

/* The batch [ts, events, nil], in a new buffer (the caller frees it with free()); the
 * builder is empty afterwards. KVP_ENOMEM: nothing changed. */
int kvp_evbatch_take(struct kvp_evbatch *b, double ts, uint8_t **buf, size_t *len);

/* ---- reading another engine's batches ----------------------------------------------- */

enum kvp_ev_type {
	KVP_EV_STORED = 1,
	KVP_EV_REMOVED = 2,
	KVP_EV_CLEARED = 3,
};

/* One decoded event; its arrays point into the decoder's memory, valid until the next
 * kvp_evdecode call. token_ids holds n_hashes x block_size tokens for a BlockStored
 * (its block_size is checked against that). */
struct kvp_ev {
	enum kvp_ev_type type;
	const uint64_t *hashes;
	size_t n_hashes;
	bool has_parent;
	uint64_t parent;
	const uint32_t *tokens;
	size_t n_tokens;
	uint32_t block_size;
	enum kvp_ev_medium medium;
	bool has_medium;
};

/* Limits a decoder enforces on what it is handed (docs/kv-events.md). */
#define KVP_EV_MAX_EVENTS 65536u       /* events in one batch */
#define KVP_EV_MAX_TOKENS (1u << 20)   /* token ids in one event */

struct kvp_evdecoder;
int kvp_evdecoder_create(struct kvp_evdecoder **out);
void kvp_evdecoder_destroy(struct kvp_evdecoder *d);

/*
 * Decode a batch (either encoding; 2 or 3 elements) of len bytes. On success returns 0
 * and the events in *events (n of them, valid until the next call). Whatever is not a
 * well-formed batch (bad msgpack, wrong types, an unknown event type, a count over
 * the limits above, trailing bytes) is KVP_EPROTO and nothing of it is returned;
 * KVP_ENOMEM. Never reads past len; allocates no more than a bounded multiple of len.
 */
int kvp_evdecode(struct kvp_evdecoder *d, const uint8_t *buf, size_t len,
		 const struct kvp_ev **events, size_t *n);

#endif
