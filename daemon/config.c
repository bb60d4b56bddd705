/*
 * config.c - kvprefixd's options: one table for getopt_long and for the config file.
 *
 *   argv ──pass 1──▶ scratch       validate every flag first; --help, --version, where
 *                                   --config points, whether a mode flag was given
 *   defaults ──▶ cfg ──file──▶ cfg ──pass 2 (argv again)──▶ cfg ──finish──▶ checks
 *                      (inih)                                     (resolve threads and
 *                                                                  the socket path)
 *
 * The file is read through inih's stream interface with our own reader, which hands
 * inih one physical line at a time (in pieces when inih's buffer is smaller: inih grows
 * it and asks for the rest). That keeps our line count equal to inih's, so the handler
 * knows the line it is looking at, and lets the reader refuse a [section], a NUL byte
 * or an overlong line before inih sees it:
 *
 *   line 12 "blok-tokens = 8\n" ──reader──▶ inih ──handler("blok-tokens", "8")──▶
 *        unknown option 'blok-tokens' at fc->lineno = 12 ──▶ "PATH:12: unknown ..."
 *
 * The first error wins: either ours (reader or handler, err_line) or inih's own (a line
 * it cannot split into name and value: its return value, a line number).
 */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <ini.h>
#include <mimalloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>
#include <unistd.h>

#include "kvp_config.h"
#include "kvp_engine.h"
#include "kvp_index.h"
#include "kvp_log.h"
#include "kvp_proto.h"

/* The longest config-file line, newline included; inih's buffer may grow to twice it. */
#define CONFIG_LINE_MAX 4096

const char *kvp_config_default_path = KVP_CONFIG_DEFAULT_PATH;
int kvp_config_argc;
char **kvp_config_argv;

void kvp_server_set_argv(int argc, char **argv)
{
	kvp_config_argc = argc;
	kvp_config_argv = argv;
}

/* ---- the table ----------------------------------------------------------------------- */

enum opt_kind {
	KIND_BOOL,       /* bool; no argument on the command line, true/false in a file */
	KIND_U32,        /* uint32_t or int: a number in min..max, in base `base` */
	KIND_TEXT,       /* char[size]: min..max bytes */
	KIND_PATH,       /* const char *, kept by intern(); "" is NULL */
	KIND_LOG_LEVEL,  /* int: enum kvp_log_level */
	KIND_KV_DTYPE,   /* int: enum kvp_kv_dtype */
	KIND_BACKEND,    /* int: enum kvp_daemon_backend */
	KIND_EVICTION,   /* int: enum kvp_evict_policy */
	KIND_CONFIG,     /* the rest: command line only, no field */
	KIND_HELP,
	KIND_VERSION,
};

#define OPT_LIVE      0x1u   /* SIGHUP applies it without a restart */
#define OPT_MODE      0x2u   /* --help lists it under Mode; a mode flag replaces the file's */
#define OPT_CLI_ONLY  0x4u   /* not a config-file key */
#define OPT_GIVEN     0x8u   /* setting it sets capacity_given */
#define OPT_SOCKET    0x10u  /* --help appends the default socket path */
#define OPT_SECRET    0x20u  /* ADMIN CONFIG shows whether it is set, never the value */

struct opt_def {
	const char *name;    /* long option; the config-file key */
	enum opt_kind kind;
	unsigned flags;
	size_t off, size;    /* the field in struct kvp_config */
	uint32_t min, max;   /* KIND_U32: value range; KIND_TEXT: length range */
	int base;            /* KIND_U32: 10 or 8 */
	char short_name;     /* 'h', 'V' or 0 */
	const char *arg;     /* placeholder in --help, NULL for none */
	const char *noun;    /* KIND_TEXT with min 0: "path longer than ..." */
	const char *help;    /* '\n' continues at the help column */
};

#define FIELD(f) .off = offsetof(struct kvp_config, f), .size = sizeof(((struct kvp_config *)0)->f)

static const struct opt_def opt_table[] = {
	/* mode */
	{ .name = "index-only", .kind = KIND_BOOL, .flags = OPT_MODE, FIELD(index_only),
	  .help = "run the block index without an engine: clients ask which\n"
		  "prefix is cached, lease block ids and register blocks" },
	{ .name = "model", .kind = KIND_PATH, .flags = OPT_MODE, FIELD(model_path), .arg = "FILE",
	  .help = "load a llama-family GGUF model and serve generation; the\n"
		  "cache then holds real KV and LOOKUP works alongside" },
	/* socket */
	{ .name = "config", .kind = KIND_CONFIG, .flags = OPT_CLI_ONLY, .arg = "PATH",
	  .help = "read options from this file (default\n" KVP_CONFIG_DEFAULT_PATH
		  " if it exists; '' reads\nnone); options given here win over it" },
	{ .name = "socket", .kind = KIND_TEXT, .flags = OPT_SOCKET, FIELD(socket_path),
	  .min = 0, .max = sizeof(((struct kvp_config *)0)->socket_path) - 1, .noun = "path",
	  .arg = "PATH", .help = "Unix socket to listen on" },
	{ .name = "socket-mode", .kind = KIND_U32, FIELD(socket_mode), .min = 0, .max = 0777,
	  .base = 8, .arg = "OCTAL", .help = "permissions of the socket file (default 0660)" },
	/* cache */
	{ .name = "index-name", .kind = KIND_TEXT, FIELD(index_name), .min = 1, .max = KVP_NAME_MAX,
	  .arg = "NAME", .help = "namespace name of the index-only cache (default kvprefix)" },
	{ .name = "block-tokens", .kind = KIND_U32, FIELD(block_tokens), .min = 1,
	  .max = KVP_BLOCK_TOKENS_MAX, .base = 10, .arg = "N",
	  .help = "tokens per block, 1..4096 (default 16)" },
	{ .name = "capacity-blocks", .kind = KIND_U32, .flags = OPT_GIVEN, FIELD(capacity_blocks),
	  .min = 1, .max = 1u << 31, .base = 10, .arg = "N",
	  .help = "blocks in the pool (default 262144 index-only; with a model\n"
		  "the pool is sized by --pool-mb unless this is given)" },
	/* engine */
	{ .name = "pool-mb", .kind = KIND_U32, FIELD(pool_mb), .min = 1, .max = 1u << 24,
	  .base = 10, .arg = "MB", .help = "KV pool size in engine mode (default 1024)" },
	{ .name = "kv-dtype", .kind = KIND_KV_DTYPE, FIELD(kv_dtype), .arg = "f16|f32",
	  .help = "how KV is stored (default f16)" },
	{ .name = "eviction", .kind = KIND_EVICTION, FIELD(eviction), .arg = "lru|reuse",
	  .help = "which cached block the pool gives up for a new one:\n"
		  "lru, the least recently used; reuse, blocks seen once\n"
		  "before blocks used again (docs/eviction.md; default lru)" },
	{ .name = "backend", .kind = KIND_BACKEND, FIELD(backend), .arg = "auto|cpu|cuda",
	  .help = "where the engine runs: cuda keeps the KV pool on the GPU;\n"
		  "auto picks cuda when a CUDA device is present, else the\n"
		  "cpu, and logs which (default auto)" },
	{ .name = "threads", .kind = KIND_U32, FIELD(threads), .min = 0, .max = 1024, .base = 10,
	  .arg = "N", .help = "compute threads of the engine (default 0: all cores)" },
	{ .name = "disk-cache", .kind = KIND_PATH, FIELD(disk_cache), .arg = "DIR",
	  .help = "keep KV blocks evicted from the pool in DIR, read back\n"
		  "instead of recomputed, and there after a restart (with\n"
		  "--model; default none)" },
	{ .name = "disk-cache-gb", .kind = KIND_U32, FIELD(disk_cache_gb), .min = 1,
	  .max = 1u << 20, .base = 10, .arg = "GB",
	  .help = "size of the disk tier in GB (default 10)" },
	{ .name = "host-cache-mb", .kind = KIND_U32, FIELD(host_cache_mb), .min = 0,
	  .max = 1u << 24, .base = 10, .arg = "MB",
	  .help = "a host RAM tier of MB between the pool and the disk tier:\n"
		  "blocks evicted from the pool are copied there first (for\n"
		  "the CUDA backend's GPU pool; default 0: none)" },
	{ .name = "redis", .kind = KIND_PATH, FIELD(redis), .arg = "URL",
	  .help = "share KV blocks through Redis (redis://HOST:PORT or\n"
		  "unix:PATH; with --model; default none): blocks computed\n"
		  "here are written there, and a prompt's blocks found there\n"
		  "are read back instead of computed" },
	{ .name = "redis-password", .kind = KIND_TEXT, .flags = OPT_SECRET, FIELD(redis_password),
	  .min = 0,
	  .max = sizeof(((struct kvp_config *)0)->redis_password) - 1, .noun = "password",
	  .arg = "PASSWORD", .help = "Redis AUTH password (better in the config file)" },
	{ .name = "redis-ttl", .kind = KIND_U32, FIELD(redis_ttl_s), .min = 0, .max = 1u << 30,
	  .base = 10, .arg = "SECONDS",
	  .help = "expiry of each block written to Redis (default 0: none,\n"
		  "Redis's memory policy decides)" },
	{ .name = "kv-events", .kind = KIND_PATH, FIELD(kv_events), .arg = "ENDPOINT",
	  .help = "publish KV-cache events in vLLM's format on a ZeroMQ\n"
		  "PUB socket: bound at tcp://*:PORT or ipc://PATH, connected\n"
		  "to tcp://HOST:PORT (docs/kv-events.md; default none)" },
	{ .name = "kv-events-replay", .kind = KIND_PATH, FIELD(kv_events_replay),
	  .arg = "ENDPOINT",
	  .help = "a ZeroMQ ROUTER socket bound there replays buffered event\n"
		  "batches from a sequence number on (default none)" },
	{ .name = "kv-events-buffer", .kind = KIND_U32, FIELD(kv_events_buffer), .min = 1,
	  .max = 1u << 22, .base = 10, .arg = "N",
	  .help = "event batches kept for replay (default 10000)" },
	{ .name = "kv-events-array", .kind = KIND_BOOL, FIELD(kv_events_array),
	  .help = "encode events as arrays (the older form) instead of maps" },
	{ .name = "instance-id", .kind = KIND_TEXT, FIELD(instance_id), .min = 0,
	  .max = KVP_NAME_MAX, .arg = "ID",
	  .help = "this daemon in the events' topic kv@ID@MODEL (default the\n"
		  "host name)" },
	{ .name = "kv-events-sub", .kind = KIND_PATH, FIELD(kv_events_sub), .arg = "ENDPOINTS",
	  .help = "index-only: index the KV events other engines publish\n"
		  "there (comma-separated; tcp://*:PORT is bound, for engines\n"
		  "that connect; a fleet index, docs/kv-events.md)" },
	{ .name = "kv-events-sub-replay", .kind = KIND_PATH, FIELD(kv_events_sub_replay),
	  .arg = "ENDPOINTS",
	  .help = "their replay endpoints, in the same order (\"-\" for none):\n"
		  "gaps in an engine's sequence are filled from there" },
	{ .name = "max-seqs", .kind = KIND_U32, FIELD(max_seqs), .min = 1, .max = 1024,
	  .base = 10, .arg = "N",
	  .help = "generations the engine runs at once, in one batched step;\n"
		  "more wait their turn (default 16)" },
	{ .name = "max-batch-tokens", .kind = KIND_U32, FIELD(max_batch_tokens), .min = 1,
	  .max = 65536, .base = 10, .arg = "N",
	  .help = "rows of one engine step: a decode token of every running\n"
		  "generation, then prompt chunks filling the rest; at least\n"
		  "--max-seqs; the engine's run state grows with it (default 512)" },
	/* limits */
	{ .name = "max-tokens", .kind = KIND_U32, FIELD(max_tokens), .min = 1, .max = 1u << 28,
	  .base = 10, .arg = "N", .help = "tokens per request (default 1048576)" },
	{ .name = "max-frame-bytes", .kind = KIND_U32, FIELD(max_frame_bytes), .min = 4096,
	  .max = 1u << 30, .base = 10, .arg = "N",
	  .help = "payload bytes per frame (default 8388608)" },
	{ .name = "max-connections", .kind = KIND_U32, .flags = OPT_LIVE, FIELD(max_connections),
	  .min = 1, .max = 1u << 20, .base = 10, .arg = "N",
	  .help = "concurrent client connections (default 1024)" },
	{ .name = "max-leases", .kind = KIND_U32, .flags = OPT_LIVE, FIELD(max_leases), .min = 1,
	  .max = 1u << 20, .base = 10, .arg = "N",
	  .help = "leases one connection may hold (default 4096)" },
	{ .name = "max-inflight", .kind = KIND_U32, .flags = OPT_LIVE, FIELD(max_inflight),
	  .min = 1, .max = 1u << 16, .base = 10, .arg = "N",
	  .help = "generations one connection may run at once (default 16)" },
	{ .name = "idle-timeout", .kind = KIND_U32, .flags = OPT_LIVE, FIELD(idle_timeout_s),
	  .min = 0, .max = 1u << 24, .base = 10, .arg = "SECONDS",
	  .help = "close a connection that sent nothing for this long and has\n"
		  "no generation running; its leases are released (default\n"
		  "600, 0: never)" },
	{ .name = "frame-timeout", .kind = KIND_U32, .flags = OPT_LIVE, FIELD(frame_timeout_s),
	  .min = 1, .max = 3600, .base = 10, .arg = "SECONDS",
	  .help = "a frame must arrive whole this long after its first byte,\n"
		  "else ERROR ETIMEDOUT and the connection is closed (default 10)" },
	{ .name = "max-connections-per-uid", .kind = KIND_U32, .flags = OPT_LIVE,
	  FIELD(max_conns_per_uid), .min = 0, .max = 1u << 20, .base = 10, .arg = "N",
	  .help = "concurrent connections of one uid (default 0: a quarter of\n"
		  "max-connections, at least 1)" },
	{ .name = "max-output-mb", .kind = KIND_U32, .flags = OPT_LIVE, FIELD(max_output_mb),
	  .min = 1, .max = 1u << 20, .base = 10, .arg = "MB",
	  .help = "replies queued for clients that do not read them, all\n"
		  "connections together; over it the connection with the most\n"
		  "unsent bytes is closed (default 256)" },
	{ .name = "max-leased-blocks", .kind = KIND_U32, .flags = OPT_LIVE,
	  FIELD(max_leased_blocks), .min = 1, .max = 1u << 31, .base = 10, .arg = "N",
	  .help = "blocks pinned under the leases of one connection, all its\n"
		  "leases together (default 65536)" },
	{ .name = "max-leased-blocks-per-uid", .kind = KIND_U32, .flags = OPT_LIVE,
	  FIELD(max_leased_blocks_per_uid), .min = 1, .max = 1u << 31, .base = 10, .arg = "N",
	  .help = "the same for all the connections of one uid (default 262144)" },
	{ .name = "stop-timeout", .kind = KIND_U32, .flags = OPT_LIVE, FIELD(stop_timeout_s),
	  .min = 0, .max = 3600, .base = 10, .arg = "SECONDS",
	  .help = "on SIGTERM, wait this long for running generations; those\n"
		  "still running then get ERROR ESHUTDOWN (default 30)" },
	{ .name = "salt-uids", .kind = KIND_TEXT, .flags = OPT_LIVE, FIELD(salt_uids), .min = 0,
	  .max = sizeof(((struct kvp_config *)0)->salt_uids) - 1, .noun = "uid list",
	  .arg = "UID,...",
	  .help = "uids whose connections may set a cache salt in HELLO,\n"
		  "sharing blocks across users that choose the same salt\n"
		  "(default '': nobody)" },
	{ .name = "tenant-quota", .kind = KIND_U32, .flags = OPT_LIVE, FIELD(tenant_quota_pct),
	  .min = 0, .max = 100, .base = 10, .arg = "PERCENT",
	  .help = "most of the pool one tenant (a uid, with all its adapters\n"
		  "and cache salts) may hold; a tenant at its quota\n"
		  "recycles its own blocks and never evicts anyone else's\n"
		  "(default 0: no quota)" },
	{ .name = "admin-group", .kind = KIND_TEXT, .flags = OPT_LIVE, FIELD(admin_group),
	  .min = 0, .max = sizeof(((struct kvp_config *)0)->admin_group) - 1, .noun = "group",
	  .arg = "GROUP",
	  .help = "group (name or gid) whose members may send administrative\n"
		  "requests (clear, evict, pin, config) besides root\n"
		  "(default '': root only)" },
	/* operations */
	{ .name = "metrics-listen", .kind = KIND_TEXT, FIELD(metrics_listen), .min = 0,
	  .max = sizeof(((struct kvp_config *)0)->metrics_listen) - 1, .noun = "address",
	  .arg = "HOST:PORT|PATH",
	  .help = "serve Prometheus metrics over HTTP on a TCP address or a\n"
		  "Unix socket path (default '': off)" },
	{ .name = "log-level", .kind = KIND_LOG_LEVEL, .flags = OPT_LIVE, FIELD(log_level),
	  .arg = "LEVEL", .help = "error, warn, info or debug (default info)" },
	{ .name = "help", .kind = KIND_HELP, .flags = OPT_CLI_ONLY, .short_name = 'h',
	  .help = "show this help and exit" },
	{ .name = "version", .kind = KIND_VERSION, .flags = OPT_CLI_ONLY, .short_name = 'V',
	  .help = "show the version and exit" },
};

_Static_assert(sizeof(uint32_t) == sizeof(int), "KIND_U32 fields (uint32_t or int) are 4 bytes");

#define N_OPTS (sizeof(opt_table) / sizeof(opt_table[0]))
#define OPT_VAL_BASE 256   /* getopt_long's val for opt_table[i] is OPT_VAL_BASE + i */

static const struct opt_def *opt_by_name(const char *name)
{
	for (size_t i = 0; i < N_OPTS; i++)
		if (strcmp(opt_table[i].name, name) == 0)
			return &opt_table[i];
	return NULL;
}

static const struct opt_def *opt_by_val(int val)
{
	if (val >= OPT_VAL_BASE && val < OPT_VAL_BASE + (int)N_OPTS)
		return &opt_table[val - OPT_VAL_BASE];
	for (size_t i = 0; i < N_OPTS; i++)
		if (val && opt_table[i].short_name == val)
			return &opt_table[i];
	return NULL;
}

static bool opt_has_field(const struct opt_def *o)
{
	return o->kind < KIND_CONFIG;
}

const char *kvp_config_key(size_t i, bool *live)
{
	for (size_t k = 0; k < N_OPTS; k++) {
		if (opt_table[k].flags & OPT_CLI_ONLY)
			continue;
		if (i-- == 0) {
			if (live)
				*live = opt_table[k].flags & OPT_LIVE;
			return opt_table[k].name;
		}
	}
	return NULL;
}

/* ---- errors ---------------------------------------------------------------------------- */

enum cerr_kind {
	CERR_OTHER,    /* "kvprefixd: MSG" */
	CERR_USAGE,    /* ... plus "Try 'kvprefixd --help'." */
	CERR_NO_MODE,  /* the long explanation of both modes */
};

struct cerr {
	enum cerr_kind kind;
	char msg[640];
};

__attribute__((format(printf, 3, 4)))
static int fail(struct cerr *e, enum cerr_kind kind, const char *fmt, ...)
{
	va_list ap;

	e->kind = kind;
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	va_end(ap);
	return KVP_EINVAL;
}

/* ---- values ---------------------------------------------------------------------------- */

/* Paths read for --model / `model =`: each distinct one is kept until exit, so a config
 * filled on SIGHUP can point at it as long as the daemon runs. */
struct interned {
	struct interned *next;
	char s[];
};
static struct interned *interned_head;

static const char *intern(const char *s)
{
	struct interned *n;
	size_t len = strlen(s);

	for (n = interned_head; n; n = n->next)
		if (strcmp(n->s, s) == 0)
			return n->s;
	n = malloc(sizeof(*n) + len + 1);
	if (!n)
		return NULL;
	memcpy(n->s, s, len + 1);
	n->next = interned_head;
	interned_head = n;
	return n->s;
}

static int parse_bool(const char *s, bool *out)
{
	static const char *const yes[] = { "true", "yes", "on", "1" };
	static const char *const no[] = { "false", "no", "off", "0" };

	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		if (strcasecmp(s, yes[i]) == 0) {
			*out = true;
			return 0;
		}
		if (strcasecmp(s, no[i]) == 0) {
			*out = false;
			return 0;
		}
	}
	return KVP_EINVAL;
}

/* Only plain digits: no sign, no blank, no 0x. */
static int parse_u32(const char *s, int base, uint32_t min, uint32_t max, uint32_t *out)
{
	unsigned long long v;
	char *end;

	if (s[0] < '0' || s[0] > '9')
		return KVP_EINVAL;
	errno = 0;
	v = strtoull(s, &end, base);
	if (errno || *end || v < min || v > max)
		return KVP_EINVAL;
	*out = (uint32_t)v;
	return 0;
}

/* Set o's field in cfg from val (NULL: a KIND_BOOL flag on the command line). 0, or
 * KVP_EINVAL (KVP_ENOMEM) with the reason in why (without the option's name). */
static int opt_store(const struct opt_def *o, const char *val, struct kvp_config *cfg,
		     char *why, size_t whylen)
{
	char *field = (char *)cfg + o->off;
	uint32_t u;
	bool b;
	int i;

	switch (o->kind) {
	case KIND_BOOL:
		b = true;
		if (val && parse_bool(val, &b) < 0) {
			snprintf(why, whylen, "'%s' is not true or false", val);
			return KVP_EINVAL;
		}
		memcpy(field, &b, sizeof(b));
		break;
	case KIND_U32:
		if (parse_u32(val, o->base, o->min, o->max, &u) < 0) {
			if (o->base == 8)
				snprintf(why, whylen, "'%s' is not a number in %#o..%#o", val,
					 o->min, o->max);
			else
				snprintf(why, whylen, "'%s' is not a number in %u..%u", val, o->min,
					 o->max);
			return KVP_EINVAL;
		}
		memcpy(field, &u, sizeof(u));
		break;
	case KIND_TEXT: {
		size_t len = strlen(val);

		if (len < o->min || len > o->max || len >= o->size) {
			if (o->min)
				snprintf(why, whylen, "%u..%u bytes", o->min, o->max);
			else
				snprintf(why, whylen, "%s longer than %u bytes", o->noun, o->max);
			return KVP_EINVAL;
		}
		memcpy(field, val, len + 1);
		break;
	}
	case KIND_PATH: {
		const char *p = NULL;

		if (val[0] && !(p = intern(val))) {
			snprintf(why, whylen, "out of memory");
			return KVP_ENOMEM;
		}
		memcpy(field, &p, sizeof(p));
		break;
	}
	case KIND_LOG_LEVEL:
		if (kvp_log_parse_level(val, (enum kvp_log_level *)&i) != KVP_OK) {
			snprintf(why, whylen, "'%s' is not one of error, warn, info, debug", val);
			return KVP_EINVAL;
		}
		memcpy(field, &i, sizeof(i));
		break;
	case KIND_KV_DTYPE:
		if (strcmp(val, "f16") == 0) {
			i = KVP_KV_F16;
		} else if (strcmp(val, "f32") == 0) {
			i = KVP_KV_F32;
		} else {
			snprintf(why, whylen, "'%s' is not f16 or f32", val);
			return KVP_EINVAL;
		}
		memcpy(field, &i, sizeof(i));
		break;
	case KIND_EVICTION:
		if (strcmp(val, "lru") == 0) {
			i = KVP_EVICT_LRU;
		} else if (strcmp(val, "reuse") == 0) {
			i = KVP_EVICT_REUSE;
		} else {
			snprintf(why, whylen, "'%s' is not lru or reuse", val);
			return KVP_EINVAL;
		}
		memcpy(field, &i, sizeof(i));
		break;
	case KIND_BACKEND:
		if (strcmp(val, "auto") == 0) {
			i = KVP_DAEMON_BACKEND_AUTO;
		} else if (strcmp(val, "cpu") == 0) {
			i = KVP_DAEMON_BACKEND_CPU;
		} else if (strcmp(val, "cuda") == 0) {
			i = KVP_DAEMON_BACKEND_CUDA;
		} else {
			snprintf(why, whylen, "'%s' is not auto, cpu or cuda", val);
			return KVP_EINVAL;
		}
		memcpy(field, &i, sizeof(i));
		break;
	default:
		return 0;
	}
	if (o->flags & OPT_GIVEN)
		cfg->capacity_given = true;
	return 0;
}

static bool opt_differs(const struct opt_def *o, const struct kvp_config *a,
			const struct kvp_config *b)
{
	const char *fa = (const char *)a + o->off, *fb = (const char *)b + o->off;

	if ((o->flags & OPT_GIVEN) && a->capacity_given != b->capacity_given)
		return true;
	switch (o->kind) {
	case KIND_TEXT:
		return strcmp(fa, fb) != 0;
	case KIND_PATH: {
		const char *pa, *pb;

		memcpy(&pa, fa, sizeof(pa));
		memcpy(&pb, fb, sizeof(pb));
		if (!pa || !pb)
			return pa != pb;
		return strcmp(pa, pb) != 0;
	}
	default:
		return memcmp(fa, fb, o->size) != 0;
	}
}

void kvp_config_diff(const struct kvp_config *a, const struct kvp_config *b,
		     void (*fn)(void *arg, const char *name, bool live), void *arg)
{
	for (size_t i = 0; i < N_OPTS; i++) {
		const struct opt_def *o = &opt_table[i];

		if (opt_has_field(o) && opt_differs(o, a, b))
			fn(arg, o->name, o->flags & OPT_LIVE);
	}
}

void kvp_config_copy_live(struct kvp_config *dst, const struct kvp_config *src)
{
	for (size_t i = 0; i < N_OPTS; i++) {
		const struct opt_def *o = &opt_table[i];

		if (opt_has_field(o) && (o->flags & OPT_LIVE))
			memcpy((char *)dst + o->off, (const char *)src + o->off, o->size);
	}
}

static void set_defaults(struct kvp_config *cfg)
{
	*cfg = (struct kvp_config){
		.block_tokens = 16,
		.capacity_blocks = 262144,
		.max_tokens = 1048576,
		.max_frame_bytes = 8u << 20,
		.max_connections = 1024,
		.max_leases = 4096,
		.max_inflight = 16,
		.max_seqs = 16,
		.max_batch_tokens = 512,
		.idle_timeout_s = 600,
		.frame_timeout_s = 10,
		.max_output_mb = 256,
		.max_leased_blocks = 65536,
		.max_leased_blocks_per_uid = 262144,
		.stop_timeout_s = 30,
		.socket_mode = 0660,
		.pool_mb = 1024,
		.disk_cache_gb = 10,
		.kv_events_buffer = 10000,
		.kv_dtype = KVP_KV_F16,
		.threads = 0,            /* finish(): all cores */
		.log_level = KVP_LOG_INFO,
	};
	snprintf(cfg->index_name, sizeof(cfg->index_name), "kvprefix");
}

/* ---- --help ---------------------------------------------------------------------------- */

#define HELP_COL 26

static void usage_option(FILE *f, const struct opt_def *o, const char *socket_default)
{
	char left[64];
	int n;

	if (o->short_name)
		n = snprintf(left, sizeof(left), "-%c, --%s", o->short_name, o->name);
	else
		n = snprintf(left, sizeof(left), "--%s%s%s", o->name, o->arg ? " " : "",
			     o->arg ? o->arg : "");
	if (n <= HELP_COL - 4)
		fprintf(f, "  %-*s  ", HELP_COL - 4, left);
	else
		fprintf(f, "  %s\n%*s", left, HELP_COL, "");
	for (const char *p = o->help; *p; p++) {
		if (*p == '\n')
			fprintf(f, "\n%*s", HELP_COL, "");
		else
			fputc(*p, f);
	}
	if (o->flags & OPT_SOCKET)
		fprintf(f, " (default %s)", socket_default);
	fputc('\n', f);
}

static void usage(FILE *f)
{
	char path[108];
	const char *sep = "";
	int col = 2;

	if (kvp_default_socket_path(path, sizeof(path)))
		snprintf(path, sizeof(path), "(too long)");
	fprintf(f,
"Usage: kvprefixd --index-only [OPTION]...\n"
"       kvprefixd --model FILE [OPTION]...\n"
"\n"
"Cache the KV of token-sequence prefixes and serve lookups over a Unix socket.\n"
"\n"
"Mode (one is required):\n");
	for (size_t i = 0; i < N_OPTS; i++)
		if (opt_table[i].flags & OPT_MODE)
			usage_option(f, &opt_table[i], path);
	fprintf(f, "\nOptions:\n");
	for (size_t i = 0; i < N_OPTS; i++)
		if (!(opt_table[i].flags & OPT_MODE))
			usage_option(f, &opt_table[i], path);
	fprintf(f,
"\n"
"The config file takes every option but --config, --help and --version, one\n"
"'name = value' line each, named without the dashes (block-tokens = 16,\n"
"index-only = true); '#' and ';' start comments. Command-line options win.\n"
"\n"
"SIGHUP re-reads the config file. These change at once:\n  ");
	for (size_t i = 0; i < N_OPTS; i++) {
		if (!(opt_table[i].flags & OPT_LIVE))
			continue;
		if (col + strlen(sep) + strlen(opt_table[i].name) > 78) {
			fprintf(f, ",\n  ");
			sep = "";
			col = 2;
		}
		col += fprintf(f, "%s%s", sep, opt_table[i].name);
		sep = ", ";
	}
	fprintf(f,
";\n"
"any other change is logged and waits for a restart.\n"
"SIGINT or SIGTERM stops the daemon and removes the socket.\n");
}

/* ---- the command line ------------------------------------------------------------------ */

struct cli_info {
	const char *config;    /* --config's argument */
	bool config_given;
	bool mode_given;       /* --model or --index-only */
};

/* One getopt_long pass over argv, applying each option to cfg. interactive: print and
 * stop at --help / --version (returns KVP_CONFIG_DONE); otherwise they are skipped.
 * 0, KVP_CONFIG_DONE, or KVP_EINVAL with the message in e. */
static int cli_pass(int argc, char **argv, struct kvp_config *cfg, struct cli_info *info,
		    bool interactive, struct cerr *e)
{
	struct option longopts[N_OPTS + 1];
	char why[256];
	int c;

	for (size_t i = 0; i < N_OPTS; i++) {
		const struct opt_def *o = &opt_table[i];
		bool flag = o->kind == KIND_BOOL || o->kind == KIND_HELP || o->kind == KIND_VERSION;

		longopts[i] = (struct option){ o->name, flag ? no_argument : required_argument, NULL,
					       o->short_name ? o->short_name
							     : OPT_VAL_BASE + (int)i };
	}
	longopts[N_OPTS] = (struct option){ NULL, 0, NULL, 0 };

	*info = (struct cli_info){ 0 };
	optind = 0;    /* glibc: a full re-initialisation, as for a fresh argv */
	opterr = 0;    /* every message is ours, so that a reload prints nothing */
	/* '+': stop at the first non-option (no permuting of argv: a reload sees the same) */
	while ((c = getopt_long(argc, argv, "+:hV", longopts, NULL)) != -1) {
		const struct opt_def *o;

		if (c == ':') {
			o = opt_by_val(optopt);
			return fail(e, CERR_USAGE, "option '--%s' requires an argument",
				    o ? o->name : "?");
		}
		if (c == '?') {
			o = opt_by_val(optopt);
			if (o)
				return fail(e, CERR_USAGE, "option '--%s' doesn't allow an argument",
					    o->name);
			if (optopt)
				return fail(e, CERR_USAGE, "invalid option -- '%c'", optopt);
			return fail(e, CERR_USAGE, "unrecognized or ambiguous option '%s'",
				    argv[optind - 1]);
		}
		o = opt_by_val(c);
		switch (o->kind) {
		case KIND_HELP:
			if (!interactive)
				continue;
			usage(stdout);
			return KVP_CONFIG_DONE;
		case KIND_VERSION:
			if (!interactive)
				continue;
			printf("kvprefixd %s (mimalloc %d)\n", KVP_VERSION, mi_version());
			return KVP_CONFIG_DONE;
		case KIND_CONFIG:
			info->config = optarg;
			info->config_given = true;
			continue;
		default:
			break;
		}
		if (o->flags & OPT_MODE)
			info->mode_given = true;
		if (opt_store(o, o->kind == KIND_BOOL ? NULL : optarg, cfg, why, sizeof(why)) != KVP_OK)
			return fail(e, CERR_OTHER, "--%s: %s", o->name, why);
	}
	if (optind < argc)
		return fail(e, CERR_USAGE, "unexpected argument '%s'", argv[optind]);
	return 0;
}

/* ---- the config file ------------------------------------------------------------------- */

struct file_ctx {
	const char *path;
	FILE *f;
	struct kvp_config *cfg;
	char *line;             /* the current physical line (getline) */
	size_t cap, len, pos;   /* pos: bytes of it already handed to inih */
	int lineno;
	int io_errno;           /* a read error: no line to blame */
	int err_line;           /* our first error, 0 if none */
	char err[320];
	int seen[N_OPTS];       /* line each key was set on, 0 if not yet */
};

__attribute__((format(printf, 2, 3)))
static void file_error(struct file_ctx *fc, const char *fmt, ...)
{
	va_list ap;

	if (fc->err_line)
		return;
	fc->err_line = fc->lineno;
	va_start(ap, fmt);
	vsnprintf(fc->err, sizeof(fc->err), fmt, ap);
	va_end(ap);
}

/* inih's fgets: the next piece of the current line, or the next line. NULL ends the
 * parse: at the end of the file, on a read error, or after our first error. */
static char *file_reader(char *str, int num, void *stream)
{
	struct file_ctx *fc = stream;
	size_t n;

	if (fc->pos >= fc->len) {
		const char *p;
		ssize_t r;

		if (fc->err_line)
			return NULL;
		errno = 0;
		r = getline(&fc->line, &fc->cap, fc->f);
		if (r < 0) {
			fc->io_errno = errno;   /* 0 at the end of the file */
			return NULL;
		}
		fc->lineno++;
		fc->len = (size_t)r;
		fc->pos = 0;
		if (memchr(fc->line, '\0', fc->len)) {
			file_error(fc, "a NUL byte: not a text file");
			return NULL;
		}
		if (fc->len > CONFIG_LINE_MAX) {
			file_error(fc, "line longer than %d bytes", CONFIG_LINE_MAX);
			return NULL;
		}
		for (p = fc->line; *p == ' ' || *p == '\t'; p++)
			;
		if (*p == '[') {
			file_error(fc, "[sections] are not used: write 'name = value' lines");
			return NULL;
		}
	}
	if (num < 2)
		return NULL;
	n = fc->len - fc->pos;
	if (n > (size_t)num - 1)
		n = (size_t)num - 1;
	memcpy(str, fc->line + fc->pos, n);
	str[n] = '\0';
	fc->pos += n;
	return str;
}

/* inih's handler: one `name = value` of line fc->lineno. 1 to go on, 0 on an error. */
static int file_handler(void *user, const char *section, const char *name, const char *value)
{
	struct file_ctx *fc = user;
	const struct opt_def *o;
	char why[256];
	size_t i;

	if (fc->err_line)
		return 1;   /* already refused: the reader ends the parse at the next line */
	if (section[0]) {
		file_error(fc, "[sections] are not used: write 'name = value' lines");
		return 0;
	}
	if (!name[0] || !value) {
		file_error(fc, "not a 'name = value' line");
		return 0;
	}
	o = opt_by_name(name);
	if (!o || o->kind == KIND_HELP || o->kind == KIND_VERSION) {
		file_error(fc, "unknown option '%s'", name);
		return 0;
	}
	if (o->kind == KIND_CONFIG) {
		file_error(fc, "config: only on the command line (--config PATH)");
		return 0;
	}
	i = (size_t)(o - opt_table);
	if (fc->seen[i]) {
		file_error(fc, "%s: already set on line %d", name, fc->seen[i]);
		return 0;
	}
	fc->seen[i] = fc->lineno;
	if (opt_store(o, value, fc->cfg, why, sizeof(why)) != KVP_OK) {
		file_error(fc, "%s: %s", name, why);
		return 0;
	}
	return 1;
}

/* inih's behaviour, set before each parse. Debian's libinih exports these as variables
 * (upstream inih has them as compile-time macros only). */
static void inih_setup(void)
{
	ini_allow_multiline = false;          /* an indented line is a line, not a continuation */
	ini_allow_inline_comments = true;     /* "value  # comment" */
	ini_inline_comment_prefixes = (char *)";#";
	ini_start_comment_prefixes = (char *)";#";
	ini_allow_no_value = false;
	ini_stop_on_first_error = false;
	ini_use_stack = false;                /* a heap buffer that grows to a long line */
	ini_allow_realloc = true;
	ini_max_line = 2 * CONFIG_LINE_MAX + 3;
}

/* Read `path` into cfg. explicit: --config named it (it must exist); otherwise a missing
 * file is no file. 0, or KVP_EINVAL with the message in e. */
static int file_load(const char *path, bool explicit, struct kvp_config *cfg, struct cerr *e)
{
	struct file_ctx *fc;
	int r, rc = KVP_EINVAL;

	if (!path || !path[0])
		return 0;
	if (strlen(path) >= sizeof(cfg->config_path))
		return fail(e, CERR_OTHER, "--config: path longer than %zu bytes",
			    sizeof(cfg->config_path) - 1);
	fc = calloc(1, sizeof(*fc));
	if (!fc)
		return fail(e, CERR_OTHER, "%s: out of memory", path);
	fc->path = path;
	fc->cfg = cfg;
	fc->f = fopen(path, "re");
	if (!fc->f) {
		if (!explicit && errno == ENOENT)
			rc = 0;
		else
			fail(e, CERR_OTHER, "%s%s: cannot open: %s", explicit ? "--config: " : "",
			     path, strerror(errno));
		goto out_free_ctx;
	}
	snprintf(cfg->config_path, sizeof(cfg->config_path), "%s", path);

	inih_setup();
	r = ini_parse_stream(file_reader, fc, file_handler, fc);
	if (r > 0 && (!fc->err_line || r < fc->err_line))
		fail(e, CERR_OTHER, "%s:%d: not a 'name = value' line", path, r);
	else if (fc->err_line)
		fail(e, CERR_OTHER, "%s:%d: %s", path, fc->err_line, fc->err);
	else if (fc->io_errno)
		fail(e, CERR_OTHER, "%s: cannot read: %s", path, strerror(fc->io_errno));
	else if (r < 0)
		fail(e, CERR_OTHER, "%s: out of memory", path);
	else
		rc = 0;

	fclose(fc->f);
out_free_ctx:
	free(fc->line);
	free(fc);
	return rc;
}

/* ---- merging and checks ---------------------------------------------------------------- */

static int finish(struct kvp_config *cfg, struct cerr *e)
{
	uint64_t frame_need;

	if (cfg->model_path && cfg->index_only)
		return fail(e, CERR_OTHER, "--model and --index-only exclude each other");
	if (cfg->threads == 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		cfg->threads = n > 0 ? (int)n : 1;
	}
	if (!cfg->index_only && !cfg->model_path)
		return fail(e, CERR_NO_MODE, "choose a mode: --index-only or --model FILE");
	/* the largest request, a GENERATE with every stop id and a KEEP, must fit in a frame */
	frame_need = (uint64_t)cfg->max_tokens * 4 +
		     kvp_generate_req_size_flags(KVP_STOP_MAX, 0, KVP_GEN_KEEP);
	if (frame_need > cfg->max_frame_bytes)
		return fail(e, CERR_OTHER,
			    "--max-tokens %u needs frames of %llu bytes, over --max-frame-bytes %u",
			    cfg->max_tokens, (unsigned long long)frame_need, cfg->max_frame_bytes);
	if (cfg->max_batch_tokens < cfg->max_seqs)
		return fail(e, CERR_OTHER,
			    "--max-batch-tokens %u is below --max-seqs %u: every running "
			    "generation's decode token must fit in a step",
			    cfg->max_batch_tokens, cfg->max_seqs);
	if (cfg->kv_events_sub && !cfg->index_only)
		return fail(e, CERR_OTHER, "--kv-events-sub needs --index-only");
	if (cfg->kv_events_replay && !cfg->kv_events)
		return fail(e, CERR_OTHER, "--kv-events-replay needs --kv-events");
	if (cfg->kv_events_sub_replay && !cfg->kv_events_sub)
		return fail(e, CERR_OTHER, "--kv-events-sub-replay needs --kv-events-sub");
	if (cfg->admin_group[0] && kvp_config_resolve_group(cfg->admin_group, NULL) != KVP_OK)
		return fail(e, CERR_OTHER, "--admin-group '%s': no such group", cfg->admin_group);
	if (kvp_config_uid_listed(cfg->salt_uids, 0, NULL) != KVP_OK)
		return fail(e, CERR_OTHER,
			    "--salt-uids '%s' is not a comma-separated list of uids", cfg->salt_uids);
	/* every lease may pin the same block: its pin count must not wrap */
	if ((uint64_t)cfg->max_leases * cfg->max_connections >= UINT32_MAX)
		return fail(e, CERR_OTHER,
			    "--max-leases x --max-connections must stay below 2^32");
	if (!cfg->socket_path[0] &&
	    kvp_default_socket_path(cfg->socket_path, sizeof(cfg->socket_path)))
		return fail(e, CERR_OTHER, "the default socket path is too long; give --socket");
	return 0;
}

/* The whole parse. 0: cfg is ready; KVP_CONFIG_DONE: --help/--version done (interactive
 * only); KVP_EINVAL with the message in e. */
static int load(int argc, char **argv, struct kvp_config *cfg, bool interactive,
		struct cerr *e)
{
	struct kvp_config scratch;
	struct cli_info info;
	int r;

	/* pass 1: every flag is valid before the file is read */
	set_defaults(&scratch);
	r = cli_pass(argc, argv, &scratch, &info, interactive, e);
	if (r)
		return r;

	set_defaults(cfg);
	r = file_load(info.config_given ? info.config : kvp_config_default_path,
		      info.config_given, cfg, e);
	if (r)
		return r;
	if (info.mode_given) {
		/* the mode is one choice: the command line's replaces the file's */
		cfg->model_path = NULL;
		cfg->index_only = false;
	}
	/* pass 2: the flags again, over the file */
	r = cli_pass(argc, argv, cfg, &info, false, e);
	if (r)
		return r;
	return finish(cfg, e);
}

int kvp_config_parse(int argc, char **argv, struct kvp_config *cfg)
{
	struct cerr e = { 0 };
	int r = load(argc, argv, cfg, true, &e);

	if (r == KVP_CONFIG_DONE)
		return KVP_CONFIG_DONE;
	if (r) {
		switch (e.kind) {
		case CERR_USAGE:
			fprintf(stderr, "kvprefixd: %s\nTry 'kvprefixd --help'.\n", e.msg);
			break;
		case CERR_NO_MODE:
			fprintf(stderr,
				"kvprefixd: choose a mode:\n"
				"  --index-only   serve the block index alone: an external engine asks which\n"
				"                 prefix is cached, leases block ids and registers new blocks\n"
				"  --model FILE   load a GGUF model and serve generation through the engine\n"
				"Try 'kvprefixd --help'.\n");
			break;
		default:
			fprintf(stderr, "kvprefixd: %s\n", e.msg);
			break;
		}
		return KVP_CONFIG_USAGE;
	}
	kvp_log_set_level((enum kvp_log_level)cfg->log_level);
	return 0;
}

int kvp_config_reload(int argc, char **argv, struct kvp_config *out, char *err, size_t errlen)
{
	struct cerr e = { 0 };

	int r = load(argc, argv, out, false, &e);

	if (r) {
		if (err && errlen)
			snprintf(err, errlen, "%s", e.msg);
		return r;
	}
	return KVP_OK;
}

int kvp_config_uid_listed(const char *list, uint32_t uid, bool *listed)
{
	const char *p = list;
	bool found = false;

	if (listed)
		*listed = false;
	if (!*p)
		return KVP_OK;
	for (;;) {
		uint64_t v = 0;
		const char *start = p;

		while (*p >= '0' && *p <= '9' && v <= UINT32_MAX)
			v = v * 10 + (uint64_t)(*p++ - '0');
		if (p == start || v >= UINT32_MAX)
			return KVP_EINVAL;
		found |= v == uid;
		if (*p == '\0')
			break;
		if (*p++ != ',')
			return KVP_EINVAL;
	}
	if (listed)
		*listed = found;
	return KVP_OK;
}

int kvp_config_resolve_group(const char *name, gid_t *gid)
{
	uint32_t v;
	struct group *g;

	if (parse_u32(name, 10, 0, UINT32_MAX - 1, &v) == KVP_OK) {
		if (gid)
			*gid = (gid_t)v;
		return KVP_OK;
	}
	g = getgrnam(name);
	if (!g)
		return KVP_ENOTFOUND;
	if (gid)
		*gid = g->gr_gid;
	return 0;
}

/* The value of o in cfg as the config file would spell it. */
static void opt_format(const struct opt_def *o, const struct kvp_config *cfg, char *buf,
		       size_t len)
{
	const char *field = (const char *)cfg + o->off;
	uint32_t u;
	bool b;
	int i;

	switch (o->kind) {
	case KIND_BOOL:
		memcpy(&b, field, sizeof(b));
		snprintf(buf, len, "%s", b ? "true" : "false");
		break;
	case KIND_U32:
		memcpy(&u, field, sizeof(u));
		snprintf(buf, len, o->base == 8 ? "0%o" : "%u", u);
		break;
	case KIND_TEXT:
		snprintf(buf, len, "%s", field);
		break;
	case KIND_PATH: {
		const char *p;

		memcpy(&p, field, sizeof(p));
		snprintf(buf, len, "%s", p ? p : "");
		break;
	}
	case KIND_LOG_LEVEL:
		memcpy(&i, field, sizeof(i));
		snprintf(buf, len, "%s", kvp_log_level_name((enum kvp_log_level)i));
		break;
	case KIND_KV_DTYPE:
		memcpy(&i, field, sizeof(i));
		snprintf(buf, len, "%s", i == KVP_KV_F32 ? "f32" : "f16");
		break;
	case KIND_EVICTION:
		memcpy(&i, field, sizeof(i));
		snprintf(buf, len, "%s", i == KVP_EVICT_REUSE ? "reuse" : "lru");
		break;
	case KIND_BACKEND:
		memcpy(&i, field, sizeof(i));
		snprintf(buf, len, "%s", i == KVP_DAEMON_BACKEND_CPU ? "cpu" :
			 i == KVP_DAEMON_BACKEND_CUDA ? "cuda" : "auto");
		break;
	default:
		buf[0] = '\0';
		break;
	}
}

int kvp_config_format(const struct kvp_config *cfg, const char *key, char *buf, size_t len)
{
	size_t used = 0;
	bool found = false;

	if (len)
		buf[0] = '\0';
	for (size_t i = 0; i < N_OPTS; i++) {
		const struct opt_def *o = &opt_table[i];
		char val[512];
		int n;

		if (!opt_has_field(o) || (key && strcmp(key, o->name) != 0))
			continue;
		found = true;
		opt_format(o, cfg, val, sizeof(val));
		if (o->flags & OPT_SECRET && val[0])
			snprintf(val, sizeof(val), "(set, not shown)");
		n = snprintf(buf + used, used < len ? len - used : 0, "%s = %s\n", o->name, val);
		if (n > 0)
			used += (size_t)n;
	}
	if (!found)
		return KVP_ENOTFOUND;
	return used < len ? KVP_OK : KVP_ETOOBIG;
}

int kvp_config_set_live(struct kvp_config *cfg, const char *key, const char *val, char *err,
			size_t errlen)
{
	const struct opt_def *o = opt_by_name(key);
	struct kvp_config next = *cfg;
	struct cerr e = { 0 };
	char why[256];

	if (!o || !opt_has_field(o)) {
		snprintf(err, errlen, "%s: no such option", key);
		return KVP_EINVAL;
	}
	if (!(o->flags & OPT_LIVE)) {
		snprintf(err, errlen, "%s needs a restart to change", key);
		return KVP_EUNSUPPORTED;
	}
	if (opt_store(o, val, &next, why, sizeof(why)) != KVP_OK) {
		snprintf(err, errlen, "%s: %s", key, why);
		return KVP_EINVAL;
	}
	/* the same checks as a whole configuration gets */
	if (finish(&next, &e) != KVP_OK) {
		snprintf(err, errlen, "%s", e.msg);
		return KVP_EINVAL;
	}
	*cfg = next;
	return KVP_OK;
}
