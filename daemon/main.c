/*
 * main.c - kvprefixd: command line, then the server. Only main() exits.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <mimalloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvp_cpu.h"
#include "kvp_daemon.h"
#include "kvp_index.h"
#include "kvp_log.h"
#include "kvp_proto.h"

static void usage(FILE *f)
{
	char path[108];

	if (kvp_default_socket_path(path, sizeof(path)))
		snprintf(path, sizeof(path), "(too long)");
	fprintf(f,
"Usage: kvprefixd --index-only [OPTION]...\n"
"       kvprefixd --model FILE [OPTION]...\n"
"\n"
"Cache the KV of token-sequence prefixes and serve lookups over a Unix socket.\n"
"\n"
"Mode (one is required):\n"
"  --index-only            run the block index without an engine: clients ask which\n"
"                          prefix is cached, lease block ids and register blocks\n"
"  --model FILE            load a llama-family GGUF model and serve generation; the\n"
"                          cache then holds real KV and LOOKUP works alongside\n"
"\n"
"Options:\n"
"  --socket PATH           Unix socket to listen on (default %s)\n"
"  --socket-mode OCTAL     permissions of the socket file (default 0660)\n"
"  --index-name NAME       namespace name of the index-only cache (default kvprefix)\n"
"  --block-tokens N        tokens per block, 1..4096 (default 16)\n"
"  --capacity-blocks N     blocks in the pool (default 262144 index-only; with a model\n"
"                          the pool is sized by --pool-mb unless this is given)\n"
"  --pool-mb MB            KV pool size in engine mode (default 1024)\n"
"  --kv-dtype f16|f32      how KV is stored (default f16)\n"
"  --threads N             compute threads of the engine (default: all cores)\n"
"  --max-tokens N          tokens per request (default 1048576)\n"
"  --max-frame-bytes N     payload bytes per frame (default 8388608)\n"
"  --max-connections N     concurrent client connections (default 1024)\n"
"  --max-leases N          leases one connection may hold (default 4096)\n"
"  --max-inflight N        generations one connection may run at once (default 16)\n"
"  --idle-timeout SECONDS  close a connection that sent nothing for this long and has\n"
"                          no generation running; its leases are released (default\n"
"                          600, 0: never)\n"
"  --log-level LEVEL       error, warn, info or debug (default info)\n"
"  -h, --help              show this help and exit\n"
"  -V, --version           show the version and exit\n"
"\n"
"SIGINT or SIGTERM stops the daemon and removes the socket.\n",
		path);
}

static int parse_u32(const char *opt, const char *s, uint32_t min, uint32_t max, int base,
		     uint32_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, base);
	if (errno || end == s || *end || s[0] == '-' || v < min || v > max) {
		fprintf(stderr, "kvprefixd: %s: '%s' is not a number in %u..%u\n", opt, s, min, max);
		return -1;
	}
	*out = (uint32_t)v;
	return 0;
}

enum {
	OPT_SOCKET = 256, OPT_SOCKET_MODE, OPT_INDEX_ONLY, OPT_INDEX_NAME, OPT_MODEL,
	OPT_BLOCK_TOKENS, OPT_CAPACITY, OPT_MAX_TOKENS, OPT_MAX_FRAME, OPT_MAX_CONN,
	OPT_MAX_LEASES, OPT_MAX_INFLIGHT, OPT_IDLE_TIMEOUT, OPT_LOG_LEVEL, OPT_POOL_MB, OPT_KV_DTYPE, OPT_THREADS,
};

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, OPT_SOCKET },
		{ "socket-mode", required_argument, NULL, OPT_SOCKET_MODE },
		{ "index-only", no_argument, NULL, OPT_INDEX_ONLY },
		{ "index-name", required_argument, NULL, OPT_INDEX_NAME },
		{ "model", required_argument, NULL, OPT_MODEL },
		{ "block-tokens", required_argument, NULL, OPT_BLOCK_TOKENS },
		{ "capacity-blocks", required_argument, NULL, OPT_CAPACITY },
		{ "max-tokens", required_argument, NULL, OPT_MAX_TOKENS },
		{ "max-frame-bytes", required_argument, NULL, OPT_MAX_FRAME },
		{ "max-connections", required_argument, NULL, OPT_MAX_CONN },
		{ "max-leases", required_argument, NULL, OPT_MAX_LEASES },
		{ "max-inflight", required_argument, NULL, OPT_MAX_INFLIGHT },
		{ "idle-timeout", required_argument, NULL, OPT_IDLE_TIMEOUT },
		{ "log-level", required_argument, NULL, OPT_LOG_LEVEL },
		{ "pool-mb", required_argument, NULL, OPT_POOL_MB },
		{ "kv-dtype", required_argument, NULL, OPT_KV_DTYPE },
		{ "threads", required_argument, NULL, OPT_THREADS },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	struct kvp_config cfg = {
		.block_tokens = 16,
		.capacity_blocks = 262144,
		.max_tokens = 1048576,
		.max_frame_bytes = 8u << 20,
		.max_connections = 1024,
		.max_leases = 4096,
		.max_inflight = 16,
		.idle_timeout_s = 600,
		.socket_mode = 0660,
		.pool_mb = 1024,
		.kv_dtype = KVP_KV_F16,
	};
	uint32_t threads = 0;
	const char *model = NULL;
	int c, lvl;

	snprintf(cfg.index_name, sizeof(cfg.index_name), "kvprefix");
	while ((c = getopt_long(argc, argv, "hV", opts, NULL)) != -1) {
		int bad = 0;
		switch (c) {
		case OPT_SOCKET:
			if (strlen(optarg) >= sizeof(cfg.socket_path)) {
				fprintf(stderr, "kvprefixd: --socket: path longer than %zu bytes\n",
					sizeof(cfg.socket_path) - 1);
				return 2;
			}
			snprintf(cfg.socket_path, sizeof(cfg.socket_path), "%s", optarg);
			break;
		case OPT_SOCKET_MODE:
			bad = parse_u32("--socket-mode", optarg, 0, 0777, 8, &cfg.socket_mode);
			break;
		case OPT_INDEX_ONLY: cfg.index_only = true; break;
		case OPT_INDEX_NAME:
			if (!optarg[0] || strlen(optarg) > KVP_NAME_MAX) {
				fprintf(stderr, "kvprefixd: --index-name: 1..%u bytes\n", KVP_NAME_MAX);
				return 2;
			}
			snprintf(cfg.index_name, sizeof(cfg.index_name), "%s", optarg);
			break;
		case OPT_MODEL: model = optarg; break;
		case OPT_POOL_MB:
			bad = parse_u32("--pool-mb", optarg, 1, 1u << 24, 10, &cfg.pool_mb);
			break;
		case OPT_KV_DTYPE:
			if (strcmp(optarg, "f16") == 0) {
				cfg.kv_dtype = KVP_KV_F16;
			} else if (strcmp(optarg, "f32") == 0) {
				cfg.kv_dtype = KVP_KV_F32;
			} else {
				fprintf(stderr, "kvprefixd: --kv-dtype: '%s' is not f16 or f32\n", optarg);
				return 2;
			}
			break;
		case OPT_THREADS:
			bad = parse_u32("--threads", optarg, 1, 1024, 10, &threads);
			break;
		case OPT_BLOCK_TOKENS:
			bad = parse_u32("--block-tokens", optarg, 1, KVP_BLOCK_TOKENS_MAX, 10,
					&cfg.block_tokens);
			break;
		case OPT_CAPACITY:
			bad = parse_u32("--capacity-blocks", optarg, 1, 1u << 31, 10,
					&cfg.capacity_blocks);
			cfg.capacity_given = true;
			break;
		case OPT_MAX_TOKENS:
			bad = parse_u32("--max-tokens", optarg, 1, 1u << 28, 10, &cfg.max_tokens);
			break;
		case OPT_MAX_FRAME:
			bad = parse_u32("--max-frame-bytes", optarg, 4096, 1u << 30, 10,
					&cfg.max_frame_bytes);
			break;
		case OPT_MAX_CONN:
			bad = parse_u32("--max-connections", optarg, 1, 1u << 20, 10,
					&cfg.max_connections);
			break;
		case OPT_MAX_LEASES:
			bad = parse_u32("--max-leases", optarg, 1, 1u << 20, 10, &cfg.max_leases);
			break;
		case OPT_MAX_INFLIGHT:
			bad = parse_u32("--max-inflight", optarg, 1, 1u << 16, 10, &cfg.max_inflight);
			break;
		case OPT_IDLE_TIMEOUT:
			bad = parse_u32("--idle-timeout", optarg, 0, 1u << 24, 10, &cfg.idle_timeout_s);
			break;
		case OPT_LOG_LEVEL:
			lvl = kvp_log_parse_level(optarg);
			if (lvl < 0) {
				fprintf(stderr, "kvprefixd: --log-level: '%s' is not one of error, warn, info, debug\n",
					optarg);
				return 2;
			}
			kvp_log_set_level((enum kvp_log_level)lvl);
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("kvprefixd %s (mimalloc %d)\n", KVP_VERSION, mi_version());
			return 0;
		default:
			fprintf(stderr, "Try 'kvprefixd --help'.\n");
			return 2;
		}
		if (bad)
			return 2;
	}
	if (optind < argc) {
		fprintf(stderr, "kvprefixd: unexpected argument '%s'\nTry 'kvprefixd --help'.\n",
			argv[optind]);
		return 2;
	}
	if (model && cfg.index_only) {
		fprintf(stderr, "kvprefixd: --model and --index-only exclude each other\n");
		return 2;
	}
	cfg.model_path = model;
	if (threads == 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		threads = n > 0 ? (uint32_t)n : 1;
	}
	cfg.threads = (int)threads;
	if (!cfg.index_only && !model) {
		fprintf(stderr,
			"kvprefixd: choose a mode:\n"
			"  --index-only   serve the block index alone: an external engine asks which\n"
			"                 prefix is cached, leases block ids and registers new blocks\n"
			"  --model FILE   load a GGUF model and serve generation through the engine\n"
			"Try 'kvprefixd --help'.\n");
		return 2;
	}
	/* the largest request, a GENERATE with every stop id, must fit in a frame */
	if ((uint64_t)cfg.max_tokens * 4 + kvp_generate_req_size(KVP_STOP_MAX, 0) > cfg.max_frame_bytes) {
		fprintf(stderr,
			"kvprefixd: --max-tokens %u needs frames of %llu bytes, over --max-frame-bytes %u\n",
			cfg.max_tokens,
			(unsigned long long)cfg.max_tokens * 4 + kvp_generate_req_size(KVP_STOP_MAX, 0),
			cfg.max_frame_bytes);
		return 2;
	}
	if ((uint64_t)cfg.max_leases * cfg.max_connections >= UINT32_MAX) {
		/* every lease may pin the same block: its pin count must not wrap */
		fprintf(stderr, "kvprefixd: --max-leases x --max-connections must stay below 2^32\n");
		return 2;
	}
	if (!cfg.socket_path[0] && kvp_default_socket_path(cfg.socket_path, sizeof(cfg.socket_path))) {
		fprintf(stderr, "kvprefixd: the default socket path is too long; give --socket\n");
		return 2;
	}
	return kvp_server_run(&cfg);
}
