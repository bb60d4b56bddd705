/*
 * util.h - helpers shared by the kvprefix tools (kvprefix, kvprefix-stat,
 * kvprefix-bench): token lists from the command line or a file, connecting to the
 * daemon with a message a user can act on, and printing a status error.
 *
 * Everything here is for single-threaded command-line programs: functions that fail
 * return 0 or a negative enum kvp_status and, where they take err/errcap, write a
 * one-line message (no program name, no newline) that main() prints before it exits.
 * Only main() exits. Out of memory is reported as KVP_ENOMEM, never an abort.
 */
#ifndef KVP_TOOL_UTIL_H
#define KVP_TOOL_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvprefix.h"

/* Exit codes of every tool. */
enum {
	KVP_EXIT_OK = 0,
	KVP_EXIT_FAIL = 1,    /* the daemon answered an error, or an I/O error */
	KVP_EXIT_USAGE = 2,   /* bad command line or bad input the user typed */
};

/* Upper bounds on what a tool reads, so a bad file cannot eat the machine. */
#define KVP_TOOL_TOKENS_MAX (16u * 1024u * 1024u)     /* tokens in one list */
#define KVP_TOOL_FILE_MAX (256u * 1024u * 1024u)      /* bytes in a --tokens-file */

/* A growable array of token ids. Zero-initialise ({0}) before use. */
struct kvp_tokvec {
	uint32_t *v;
	size_t n;
	size_t cap;
};

/* Append one token, growing geometrically. KVP_ETOOBIG past KVP_TOOL_TOKENS_MAX,
 * KVP_ENOMEM; the vector is unchanged on failure. */
int kvp_tokvec_push(struct kvp_tokvec *t, uint32_t tok);
/* Make room for at least n tokens in total. KVP_ETOOBIG, KVP_ENOMEM. */
int kvp_tokvec_reserve(struct kvp_tokvec *t, size_t n);
/* Free the storage and reset to empty. NULL is fine. */
void kvp_tokvec_free(struct kvp_tokvec *t);

/*
 * Parse a strict comma-separated list of decimal token ids ("1,2,3") and append it to
 * out. Spaces around an id are allowed; anything else is an error naming the 1-based
 * position of the bad token: an empty item ("1,,2", a trailing comma, an empty
 * string), a sign, a non-digit, or a value above 4294967295. KVP_EINVAL with err set,
 * KVP_ETOOBIG, KVP_ENOMEM. On failure out keeps what it had before the call.
 */
int kvp_tool_parse_tokens(const char *s, struct kvp_tokvec *out, char *err, size_t errcap);

/*
 * Read token ids from a file ("-": standard input) and append them to out. Two forms:
 * decimal ids separated by whitespace and/or single commas, or (when the first
 * non-blank byte is '[') a JSON array of integers. Errors name the file, the line
 * (text form) and the 1-based token position. At most KVP_TOOL_FILE_MAX bytes and
 * KVP_TOOL_TOKENS_MAX tokens. An empty list is an error. KVP_EINVAL, KVP_EIO,
 * KVP_ETOOBIG, KVP_ENOMEM; err set for all of them.
 */
int kvp_tool_read_tokens_file(const char *path, struct kvp_tokvec *out, char *err,
			      size_t errcap);

/*
 * Connect to the daemon at path (NULL: the library's default socket), trusting the uid
 * of --server-uid too (kvp_tool_server_uid_option). On failure prints why to stderr,
 * with what to do: "<prog>: cannot connect to PATH: <reason> — is kvprefixd running?
 * (--socket PATH)", or the library's reason for refusing the server or its directory
 * (kvp_client_open), and returns the status. *out owned by the caller
 * (kvp_client_close).
 */
int kvp_tool_connect(const char *prog, const char *path, struct kvp_client **out);

/* --server-uid UID, an option of every tool: kvp_tool_connect also trusts a daemon
 * running as UID (kvp_client_set_server_uid). false after printing why value is not a
 * uid. One value per process: the tools are single-threaded. */
bool kvp_tool_server_uid_option(const char *prog, const char *value);

/* Print "<prog>: <what>: <kvp_strerror(status)>[: <daemon message>]" to stderr; for
 * KVP_EIO the errno text is added; a connection the daemon refused as a whole
 * (kvp_client_refused) is said to be one. c may be NULL. */
void kvp_tool_perror(const char *prog, const char *what, const struct kvp_client *c,
		     int status);

/* Parse a strict non-negative decimal integer in [min, max]. false on any junk. */
bool kvp_tool_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out);
/* Parse a strict positive decimal number of seconds ("2", "0.5"), > 0 and <= max. */
bool kvp_tool_parse_seconds(const char *s, double max, double *out);

/* Monotonic clock in nanoseconds. */
uint64_t kvp_tool_now_ns(void);

#endif
