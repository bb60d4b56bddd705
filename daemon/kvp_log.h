/*
 * kvp_log.h - the daemon's log: one line per event on stderr (journald adds the
 * timestamp under systemd; a terminal gets one from us). Thread-safe: each line is
 * written with a single write(2).
 */
#ifndef KVP_LOG_H
#define KVP_LOG_H

#include <stdint.h>

enum kvp_log_level {
	KVP_LOG_ERROR = 0,
	KVP_LOG_WARN = 1,
	KVP_LOG_INFO = 2,
	KVP_LOG_DEBUG = 3,
};

/* Parse "error", "warn", "info", "debug": 0 and the level in *out, or KVP_EINVAL. */
int kvp_log_parse_level(const char *s, enum kvp_log_level *out);
/* The name of a level ("info"); "info" for an out-of-range value. */
const char *kvp_log_level_name(enum kvp_log_level level);
void kvp_log_set_level(enum kvp_log_level level);
int kvp_log_enabled(enum kvp_log_level level);
void kvp_log(enum kvp_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/*
 * A line that a client can make the daemon repeat (a refused connection, a refused
 * request): at most one per KVP_LOG_LIMIT_NS per call site, each static
 * struct kvp_log_limit being one site; the lines held back in between are counted and
 * said at the end of the next line that goes out ("(N more like this suppressed)").
 * Not thread-safe: one thread per limit (the event loop's).
 */
#define KVP_LOG_LIMIT_NS 1000000000ull
struct kvp_log_limit {
	uint64_t next_ns;       /* CLOCK_MONOTONIC before which lines are held back */
	uint64_t suppressed;    /* held back since the last line */
};
void kvp_log_limited(struct kvp_log_limit *lim, enum kvp_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define kvp_err(...) kvp_log(KVP_LOG_ERROR, __VA_ARGS__)
#define kvp_warn(...) kvp_log(KVP_LOG_WARN, __VA_ARGS__)
#define kvp_info(...) kvp_log(KVP_LOG_INFO, __VA_ARGS__)
#define kvp_warn_limited(lim, ...) kvp_log_limited((lim), KVP_LOG_WARN, __VA_ARGS__)
#define kvp_debug(...) \
	do { if (kvp_log_enabled(KVP_LOG_DEBUG)) kvp_log(KVP_LOG_DEBUG, __VA_ARGS__); } while (0)

#endif
