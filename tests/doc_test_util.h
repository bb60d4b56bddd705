/*
 * doc_test_util.h - reading docs/protocol.md in tests: its fenced blocks, the hex of
 * its examples. The page is the specification, so tests check their claims against the
 * page itself rather than against a copy.
 *
 * Each helper fails the calling test through criterion's asserts; none returns an error.
 */
#ifndef KVP_DOC_TEST_UTIL_H
#define KVP_DOC_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* The whole of docs/<name> (KVP_DOCS_DIR), NUL-terminated, malloc'd: free() it. */
char *dt_read_doc(const char *name);

/* The body of the first fenced block (```) after the line `marker` (e.g. "<!-- example:
 * hello -->"), malloc'd and NUL-terminated: free() it. */
char *dt_block_after(const char *doc, const char *marker);

/* The bytes spelled by a hex block: each line's hex digits before a '#', in pairs,
 * spaces between. Writes at most cap bytes to out; returns how many. */
size_t dt_hex_bytes(const char *text, uint8_t *out, size_t cap);

/* The bytes of protocol.md's example NAME (`<!-- example: NAME -->`). */
size_t dt_example(const char *doc, const char *name, uint8_t *out, size_t cap);

#endif
