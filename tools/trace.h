/*
 * trace.h - Mooncake-format request traces and the tokens the tools derive from them.
 *
 * A trace is JSON Lines, one request per line:
 *
 *   {"timestamp": 0, "input_length": 40160, "output_length": 6, "hash_ids": [0, 1, ...]}
 *
 * Each hash_id stands for one block of KVP_TRACE_BLOCK (512) prompt tokens; equal ids
 * at equal chain positions are shareable blocks. input_length and hash_ids are
 * required; timestamp and output_length are optional numbers. A line is bad when it
 * is not one JSON object, a field has the wrong type or range, input_length is 0, or
 * input_length > 512 * len(hash_ids). hash_ids beyond ceil(input_length / 512) are
 * accepted and ignored. Blank lines are skipped. The loader stops at the first bad
 * line and reports it with its 1-based line number.
 *
 * Token derivation (docs/trace-replay.md), deterministic and machine-independent:
 *
 *   token j (0..511) of the block with hash_id h = splitmix64(h * 512 + j) % 32000
 *
 * with the standard splitmix64 finaliser (x += 0x9E3779B97F4A7C15, then the two
 * xor-shift-multiply rounds, see kvp_splitmix64). A request's tokens are its blocks'
 * tokens concatenated, the last block cut so that the total is input_length.
 *
 * Not thread-safe while loading; a loaded trace is read-only and may be shared.
 */
#ifndef KVP_TOOL_TRACE_H
#define KVP_TOOL_TRACE_H

#include <stddef.h>
#include <stdint.h>

#define KVP_TRACE_BLOCK 512u                  /* tokens per hash_id */
#define KVP_TRACE_VOCAB 32000u                /* derived tokens are 0..31999 */
#define KVP_TRACE_LINE_MAX (64u * 1024u * 1024u)
#define KVP_TRACE_HASH_ID_MAX (1ull << 53)    /* exact in a JSON double */

struct kvp_trace_req {
	double timestamp;        /* as in the file (Mooncake: milliseconds); 0 if absent */
	uint32_t input_length;   /* prompt tokens */
	uint32_t output_length;  /* 0 if absent */
	size_t hash_off;         /* first of its hash ids in kvp_trace.hash_ids */
	uint32_t n_hash;         /* hash ids on the line (>= ceil(input_length / 512)) */
	size_t line;             /* 1-based line number in the file */
};

struct kvp_trace {
	struct kvp_trace_req *reqs;
	size_t n_reqs;
	uint64_t *hash_ids;
	size_t n_hash;
	uint64_t total_tokens;   /* sum of input_length */
	size_t cap_reqs, cap_hash;
};

/*
 * Load up to limit requests (0: all) from path ("-": stdin) into *t (zeroed first).
 * Returns 0; KVP_EIO (cannot open or read), KVP_EINVAL (a bad line), KVP_ETOOBIG (a
 * line over KVP_TRACE_LINE_MAX bytes), KVP_ENOMEM; err gets "path:line: reason" and
 * *t is left empty. An empty trace is not an error (n_reqs == 0).
 */
int kvp_trace_load(const char *path, size_t limit, struct kvp_trace *t, char *err,
		   size_t errcap);
/* Free a loaded trace. NULL is fine. */
void kvp_trace_free(struct kvp_trace *t);

/* The standard splitmix64 output function applied to x. */
static inline uint64_t kvp_splitmix64(uint64_t x)
{
	uint64_t z;

	x += 0x9E3779B97F4A7C15ull;
	z = x;
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

/* Token j (0..511) of the block with hash id h. */
static inline uint32_t kvp_trace_token(uint64_t h, uint32_t j)
{
	return (uint32_t)(kvp_splitmix64(h * KVP_TRACE_BLOCK + j) % KVP_TRACE_VOCAB);
}

/* Write the input_length tokens of request r to out (room for r->input_length). */
void kvp_trace_req_tokens(const struct kvp_trace *t, const struct kvp_trace_req *r,
			  uint32_t *out);

#endif
