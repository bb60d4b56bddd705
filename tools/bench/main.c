/*
 * main.c - kvprefix-bench: benchmarks of kvprefixd and its index. They print figures;
 * they do not pass or fail on speed (exit 0 unless something broke). Picks the
 * command; each lives in a file of its own (bench.h lists them).
 *
 *   replay   a Mooncake trace against a running daemon (bench_replay.c)
 *   index    the index vs raw hashing, LOOKUP vs a socket echo (bench_index.c)
 *   engine   the engine in process, TTFT cached vs cold, a shared-prefix workload
 *            through kvprefixd, on the CPU or CUDA (bench_engine*.c)
 *   kernels  the CPU matrix kernels on weights in their file form (bench_kernels.c)
 *   chat     a multi-user chat with a shared system prompt (bench_chat.c)
 *   load     N clients, a random mix of requests for S seconds (bench_load*.c)
 *   tiers    TTFT cold, from the pool, from the disk tier; promotion rate (bench_tiers.c)
 *   events   KV events: publishing's cost, the fleet index's ingest (bench_events.c)
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "bench.h"
#include "util.h"

static void usage_main(FILE *f)
{
	fprintf(f,
		"Usage: kvprefix-bench COMMAND [OPTIONS]\n"
		"\n"
		"Commands:\n"
		"  replay   replay a Mooncake trace against a running kvprefixd\n"
		"  index    time the index vs raw hashing, and LOOKUP vs a socket echo\n"
		"  engine   time the engine in process, TTFT cached vs cold, a shared-prefix\n"
		"           workload through kvprefixd; on the CPU or, with --backend cuda,\n"
		"           on a CUDA GPU (TFLOP/s against its f16 tensor-core peak)\n"
		"  kernels  time the CPU matrix kernels on F32, F16 and quantized weights:\n"
		"           decode GB/s against the read bandwidth, prefill GFLOP/s\n"
		"  chat     play a multi-user chat with a shared system prompt against a\n"
		"           running kvprefixd and show what each turn found cached\n"
		"  load     N clients issue a random mix of requests for S seconds; latency,\n"
		"           errors, the daemon's RSS and pinned blocks at the end\n"
		"  events   what publishing KV events costs a LOOKUP; the fleet index's ingest\n"
		"           rate and FLEET's latency\n"
		"  tiers    TTFT of a prompt cold, from the pool and from the disk tier; the\n"
		"           disk tier's promotion rate against a sequential read of its file\n"
		"\n"
		"Run 'kvprefix-bench COMMAND --help' for a command's options.\n"
		"Exit status: 0 ok, 1 daemon, I/O or input error, 2 usage error.\n");
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		int (*run)(int argc, char **argv);
	} cmds[] = {
		{ "replay", bench_cmd_replay },
		{ "index", bench_cmd_index },
		{ "engine", bench_cmd_engine },
		{ "kernels", bench_cmd_kernels },
		{ "chat", bench_cmd_chat },
		{ "load", bench_cmd_load },
		{ "tiers", bench_cmd_tiers },
		{ "events", bench_cmd_events },
	};
	const char *cmd;

	signal(SIGPIPE, SIG_IGN);
	if (argc < 2) {
		usage_main(stderr);
		return KVP_EXIT_USAGE;
	}
	cmd = argv[1];
	if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
		usage_main(stdout);
		return KVP_EXIT_OK;
	}
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (strcmp(cmd, cmds[i].name) == 0)
			return cmds[i].run(argc - 1, argv + 1);
	fprintf(stderr, PROG ": unknown command '%s'\n", cmd);
	usage_main(stderr);
	return KVP_EXIT_USAGE;
}
