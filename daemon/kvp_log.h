/*
 * kvp_log.h - the daemon's log: one line per event on stderr (journald adds the
 * timestamp under systemd; a terminal gets one from us). Thread-safe: each line is
 * written with a single write(2).
 */
#ifndef KVP_LOG_H
#define KVP_LOG_H

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

#define kvp_err(...) kvp_log(KVP_LOG_ERROR, __VA_ARGS__)
#define kvp_warn(...) kvp_log(KVP_LOG_WARN, __VA_ARGS__)
#define kvp_info(...) kvp_log(KVP_LOG_INFO, __VA_ARGS__)
#define kvp_debug(...) \
	do { if (kvp_log_enabled(KVP_LOG_DEBUG)) kvp_log(KVP_LOG_DEBUG, __VA_ARGS__); } while (0)

#endif
