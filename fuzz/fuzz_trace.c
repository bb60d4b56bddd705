/*
 * fuzz_trace.c - libFuzzer target for the Mooncake trace reader (tools/trace.h).
 *
 * The per-line parser of tools/trace.c is static, so the input is a whole trace file:
 * it is written to one memfd (created once, rewritten for each input) and loaded
 * through /proc/self/fd/N with kvp_trace_load, which reads it line by line.
 *
 * Checked, besides "no crash, no sanitizer report, no leak":
 *   - on failure the trace is left empty and err holds a terminated message;
 *   - on success every request keeps the documented invariants (input_length >= 1,
 *     enough hash ids, hash ranges inside the array and in file order, hash ids
 *     <= 2^53, total_tokens the sum of input_length), and the token derivation of
 *     small requests stays inside the vocabulary;
 *   - the same input loaded with a limit of 1 gives the first request only.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE   /* memfd_create; CMake defines it for the whole project */
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "trace.h"

#define TOKENS_MAX 4096u   /* derive the tokens of requests up to this long */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int memfd = -1;
static char memfd_path[64];
static volatile uint64_t sink;

static void write_input(const uint8_t *data, size_t size)
{
	size_t done = 0;

	if (memfd < 0) {
		memfd = memfd_create("fuzz_trace", MFD_CLOEXEC);
		if (memfd < 0) {
			perror("fuzz_trace: memfd_create");
			abort();
		}
		snprintf(memfd_path, sizeof(memfd_path), "/proc/self/fd/%d", memfd);
	}
	if (ftruncate(memfd, 0) != 0)
		abort();
	while (done < size) {
		ssize_t w = pwrite(memfd, data + done, size - done, (off_t)done);

		if (w <= 0)
			abort();
		done += (size_t)w;
	}
}

static void bad(const char *what)
{
	fprintf(stderr, "fuzz_trace: %s\n", what);
	abort();
}

static void check_trace(const struct kvp_trace *t)
{
	static uint32_t toks[TOKENS_MAX];
	uint64_t total = 0;
	size_t next = 0;

	for (size_t i = 0; i < t->n_reqs; i++) {
		const struct kvp_trace_req *r = &t->reqs[i];

		if (r->input_length == 0)
			bad("input_length 0 accepted");
		if ((uint64_t)r->n_hash * KVP_TRACE_BLOCK < r->input_length)
			bad("too few hash ids accepted");
		if (r->hash_off != next || r->hash_off + r->n_hash > t->n_hash)
			bad("hash range out of order or outside the array");
		if (i > 0 && r->line <= t->reqs[i - 1].line)
			bad("line numbers not increasing");
		next = r->hash_off + r->n_hash;
		total += r->input_length;
		for (uint32_t j = 0; j < r->n_hash; j++)
			if (t->hash_ids[r->hash_off + j] > KVP_TRACE_HASH_ID_MAX)
				bad("hash id over 2^53 accepted");
		if (r->input_length <= TOKENS_MAX) {
			kvp_trace_req_tokens(t, r, toks);
			for (uint32_t j = 0; j < r->input_length; j++)
				if (toks[j] >= KVP_TRACE_VOCAB)
					bad("token outside the vocabulary");
			sink += toks[r->input_length - 1];
		}
	}
	if (next != t->n_hash || total != t->total_tokens)
		bad("n_hash or total_tokens do not add up");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kvp_trace t, one;
	char err[512];
	int rc, rc1;

	write_input(data, size);

	err[0] = '\0';
	rc = kvp_trace_load(memfd_path, 0, &t, err, sizeof(err));
	if (rc == 0) {
		check_trace(&t);
	} else {
		if (t.n_reqs || t.reqs || t.hash_ids || t.n_hash || t.total_tokens)
			bad("failed load left a non-empty trace");
		if (strnlen(err, sizeof(err)) == 0 || strnlen(err, sizeof(err)) == sizeof(err))
			bad("failed load without a terminated message");
	}

	/* limit 1: stops after the first request, so it fails only where the full load
	 * failed on or before that request's line */
	rc1 = kvp_trace_load(memfd_path, 1, &one, err, sizeof(err));
	if (rc1 == 0) {
		check_trace(&one);
		if (one.n_reqs > 1)
			bad("limit 1 gave more than one request");
		if (rc == 0 && (one.n_reqs != (t.n_reqs ? 1u : 0u) ||
				(one.n_reqs && (one.reqs[0].input_length != t.reqs[0].input_length ||
						one.reqs[0].n_hash != t.reqs[0].n_hash))))
			bad("limit 1 disagrees with the full load");
	} else if (rc == 0) {
		bad("limit 1 failed where the full load succeeded");
	}
	kvp_trace_free(&one);
	if (rc == 0)
		kvp_trace_free(&t);
	return 0;
}
