/*
 * bench.h - what the kvprefix-bench commands share (bench_util.c): statistics of
 * timing samples, synthetic prompts, option errors, the JSON line, the daemon a command
 * starts for itself, and a client of an engine daemon. One file a command:
 * bench_replay.c, bench_index.c, bench_engine*.c, bench_kernels.c, bench_chat.c,
 * bench_load*.c, bench_tiers.c, bench_events.c; main.c dispatches.
 *
 * Conventions of every command: progress and errors on stderr, each error prefixed
 * with "kvprefix-bench COMMAND: "; figures on stdout, ending with one JSON line. A
 * command is parse_* (options into a struct; BENCH_RUN, or the exit status when it is
 * done: --help, a usage error), then run_* and print_* / json_*. Single-threaded except
 * where bench_load_client.c says otherwise.
 */
#ifndef KVP_BENCH_H
#define KVP_BENCH_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvprefix.h"
#include "spawn.h"

#define PROG "kvprefix-bench"

#define DAEMON_WAIT_MS 10000          /* an index-only daemon to accept; any to stop */
#define ENGINE_DAEMON_WAIT_MS 60000   /* a model to load and a pool to allocate */
#define GEN_TIMEOUT_MS 600000u        /* the longest wait for one frame of a generation */
#define FIRST_TOKEN_ID 259u           /* after <unk> <s> </s> and the byte tokens */

/* What a parse_* function returns when the command is to run (else: the exit status). */
#define BENCH_RUN (-1)

/* Measured results are added here so that the compiler keeps the work that made them. */
extern volatile uint64_t bench_sink;

/* ---- statistics ---------------------------------------------------------------- */

/* Sort v[0..n) ascending, in place. */
void bench_sort(double *v, size_t n);
/* Median of v[0..n) (n >= 1); sorts v in place. */
double bench_median(double *v, size_t n);
/* Value at quantile q of sorted v[0..n) (n >= 1), rounded to the nearest rank. */
double bench_quantile_sorted(const double *v, size_t n, double q);
/* Mean; NAN when n is 0. */
double bench_mean(const double *v, size_t n);
/* p99 of v (sorted in place); NAN when n is 0. */
double bench_p99(double *v, size_t n);
/* The largest of v[0..n) (n >= 1): the best of a set of rates. */
double bench_best(const double *v, size_t n);

void bench_sleep_ms(long ms);
/* Online CPUs (1 when unknown). */
int bench_online_cpus(void);
/* This process's /proc/self/status field ("VmRSS", "VmHWM") in MB (10^6 bytes), or -1. */
double bench_rss_mb(const char *field);

/* Token ids in [FIRST_TOKEN_ID, vocab) (or [0, vocab) for a tiny vocabulary), a pure
 * function of (seed, i). */
void bench_rand_tokens(uint32_t *out, size_t n, uint64_t seed, uint32_t vocab);

/* ---- options and output -------------------------------------------------------- */

/* "kvprefix-bench CMD: <message>" and "Try 'kvprefix-bench CMD --help'." on stderr;
 * returns KVP_EXIT_USAGE. */
int bench_usage_error(const char *cmd, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* The getopt_long error opt (':' a missing value, '?' an unknown option), reported
 * as bench_usage_error does. */
int bench_bad_option(const char *cmd, char **argv, int opt);
/* arg as one of two names: 0 for a, 1 for b; -1 (message "CMD: NAME 'ARG': want A or
 * B" printed) for anything else. */
int bench_parse_choice(const char *cmd, const char *name, const char *arg, const char *a,
		       const char *b);
/* Parse arg as an integer in [lo, hi] into *out; false (message "CMD: NAME 'ARG':
 * want LO..HI" printed) when it is not one. */
bool bench_parse_u64(const char *cmd, const char *name, const char *arg, uint64_t lo,
		     uint64_t hi, uint64_t *out);

/* Print o as one line on stdout and flush; false (message printed) when out of memory
 * (o NULL counts as that). */
bool bench_json_print_line(cJSON *o);
/* End a command's JSON line: print o as bench_json_print_line does when it was built
 * whole, else say "kvprefix-bench CMD: out of memory" (building it ran out); delete o
 * either way. true when the line was printed. */
bool bench_json_finish(const char *cmd, cJSON *o, bool built);
/* The number o[key], NAN when it is missing or not a number. */
double bench_json_number(const cJSON *o, const char *key);

/* ---- tools and the daemon a command starts --------------------------------------- */

/* A tool of this build: beside this binary (build tree), else in ../ALT (installed:
 * kvprefixd in ../sbin, the other tools in ../bin), into out. 0, or -1 (message
 * printed naming cmd). */
int bench_find_tool(const char *cmd, const char *name, const char *alt, char *out,
		    size_t cap);
/* A private directory /tmp/<name>-XXXXXX into buf. 0, or -1 (message naming cmd). */
int bench_tmpdir(const char *cmd, char *buf, size_t cap, const char *name);
/*
 * Start kvprefixd (found by bench_find_tool) with args (NULL-terminated, at most 28)
 * and --socket in a new private directory /tmp/kvprefix-bench-XXXXXX; wait up to wait_ms
 * until it accepts (a model to load takes longer than an index). Its stdout and stderr
 * go to d->log. 0, or -1: the daemon's log printed if it exited, everything cleaned up.
 */
int bench_daemon_start(struct kvp_daemon *d, const char *cmd, const char *const *args,
		       int wait_ms);
/* Stop it (SIGTERM, up to DAEMON_WAIT_MS, then SIGKILL) and remove its directory. A
 * zeroed or already stopped d is fine. */
void bench_daemon_stop(struct kvp_daemon *d);

/* ---- a daemon running a model (engine, chat) ------------------------------------- */

struct kvp_tokvec;

/* Connect (sock NULL: the default socket), HELLO into *info, check the daemon runs a
 * model, set GEN_TIMEOUT_MS. 0, or -1 (message printed with prog). */
int bench_connect_engine(const char *prog, const char *sock, struct kvp_client **out,
			 struct kvp_server_info *info);
/* One greedy generation of at most max_new tokens; the tokens appended to answer
 * (NULL: dropped), the usage in *u. 0, or the status (message naming what). */
int bench_generate(const char *prog, struct kvp_client *c, const uint32_t *prompt,
		   size_t n, uint32_t max_new, struct kvp_tokvec *answer, struct kvp_usage *u,
		   const char *what);

/* ---- the commands (main.c) --------------------------------------------------------- */

int bench_cmd_replay(int argc, char **argv);
int bench_cmd_index(int argc, char **argv);
int bench_cmd_engine(int argc, char **argv);
int bench_cmd_kernels(int argc, char **argv);
int bench_cmd_chat(int argc, char **argv);
int bench_cmd_load(int argc, char **argv);
int bench_cmd_tiers(int argc, char **argv);
int bench_cmd_events(int argc, char **argv);

#endif
