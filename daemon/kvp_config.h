/*
 * kvp_config.h - kvprefixd's options: one table, read from the command line and from a
 * config file, merged as
 *
 *     defaults  <  config file  <  command line
 *
 * The file (default KVP_CONFIG_DEFAULT_PATH, read only if it exists; --config PATH
 * names another, which must exist; --config '' reads none) holds `name = value` lines
 * whose names are the long options without the dashes:
 *
 *     # comment            ; comment too
 *     block-tokens = 16
 *     index-only = true    # booleans: true/false, yes/no, on/off, 1/0
 *
 * A line that is not `name = value`, an unknown name, a name given twice, a [section] or
 * a bad value refuses the whole file with "PATH:LINE: reason". The mode is one choice:
 * --model or --index-only on the command line replaces both `model` and `index-only`
 * of the file. The cross-option checks (a mode is required, --model excludes
 * --index-only, a full GENERATE fits in --max-frame-bytes, leases x connections stays
 * below 2^32) run on the merged result.
 *
 * Each option is live (SIGHUP applies it at once: the table's OPT_LIVE entries, which
 * --help lists) or needs a restart (all others); kvp_config_diff says which.
 *
 * Threading: the main thread only (getopt's and inih's globals). Memory: a model path
 * read from a file is kept by this module until the process exits (each distinct path
 * once), so cfg->model_path stays valid in every config it filled.
 */
#ifndef KVP_CONFIG_H
#define KVP_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "kvp_status.h"

#include "kvp_daemon.h"

#ifndef KVP_CONFIG_DEFAULT_PATH   /* the build sets it from the install's sysconfdir */
#define KVP_CONFIG_DEFAULT_PATH "/etc/kvprefix/kvprefixd.conf"
#endif

/* The file read when --config is not given; tests point it elsewhere. */
extern const char *kvp_config_default_path;

/* Startup, for main(): fill cfg from the defaults, the config file and argv, print
 * nothing, set the log level (kvp_log_set_level) and return 0 to run. Otherwise cfg is
 * not filled and everything is already printed, and the return value is main's to
 * act on: KVP_CONFIG_DONE after --help (stdout) or --version, where the process exits
 * 0; KVP_CONFIG_USAGE after a usage or configuration error (one message on stderr),
 * the process's exit code. */
#define KVP_CONFIG_DONE 1
#define KVP_CONFIG_USAGE 2
int kvp_config_parse(int argc, char **argv, struct kvp_config *cfg);

/* SIGHUP: the same as kvp_config_parse with the same argv (same file, same flags) into
 * out, but silent: returns 0, or KVP_EINVAL (KVP_ENOMEM) with a one-line reason in err
 * ("PATH:LINE: reason" for the file). Never exits, never changes the log level;
 * --help/--version are ignored. out is only meaningful on 0. Resets getopt
 * (optind = 0). */
int kvp_config_reload(int argc, char **argv, struct kvp_config *out, char *err,
		      size_t errlen);

/* For each option whose value differs between a and b, in table order: fn(arg, name,
 * live), name being the long option without dashes ("max-leases"). */
void kvp_config_diff(const struct kvp_config *a, const struct kvp_config *b,
		     void (*fn)(void *arg, const char *name, bool live), void *arg);

/* Copy every live option (the ones SIGHUP applies) from src into dst, the others
 * untouched: the option table says which. */
void kvp_config_copy_live(struct kvp_config *dst, const struct kvp_config *src);

/* The i-th key the config file accepts (0-based), NULL past the last; *live (may be
 * NULL) says whether SIGHUP applies it without a restart. */
const char *kvp_config_key(size_t i, bool *live);

/* Is uid in list, a comma-separated list of uids like cfg->salt_uids ("" is empty)?
 * 0 with the answer in *listed (may be NULL: only check the list); KVP_EINVAL when list
 * is malformed (anything but digits and single commas, or a value of 2^32-1 or more). */
int kvp_config_uid_listed(const char *list, uint32_t uid, bool *listed);

/* Is name a group (a name known to the system, or a numeric gid)? 0 and *gid (may be
 * NULL), or KVP_ENOTFOUND. Looks the name up (NSS): not for the event loop's hot path. */
int kvp_config_resolve_group(const char *name, gid_t *gid);

/* "key = value" lines, as the config file spells them: every option with a field when
 * key is NULL, else that one. 0; KVP_ETOOBIG when buf was too small (cut);
 * KVP_ENOTFOUND for an unknown key. */
int kvp_config_format(const struct kvp_config *cfg, const char *key, char *buf, size_t len);

/* Set one live option in cfg from its config-file spelling, with the checks a whole
 * configuration gets: 0; KVP_EUNSUPPORTED when the option needs a restart (cfg
 * unchanged); KVP_EINVAL for an unknown option or a bad value. err: one line. The next SIGHUP reload replaces it with
 * what the file and flags say. */
int kvp_config_set_live(struct kvp_config *cfg, const char *key, const char *val, char *err,
			size_t errlen);

/* The argv the daemon was started with, for kvp_config_reload on SIGHUP: main() calls
 * kvp_server_set_argv(argc, argv) before kvp_server_run; argv must outlive the server. */
extern int kvp_config_argc;
extern char **kvp_config_argv;
void kvp_server_set_argv(int argc, char **argv);

#endif
