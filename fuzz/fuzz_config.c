/*
 * fuzz_config.c - libFuzzer target for the configuration file parser (daemon/config.c).
 *
 * The input is a whole kvprefixd.conf: it is written to one memfd (created once,
 * rewritten for each input) and read through kvp_config_reload with
 * --config /proc/self/fd/N, the path SIGHUP takes. Checked, besides "no crash, no
 * sanitizer report, no leak": a refusal comes with a one-line, terminated reason; an
 * accepted file gives values inside the ranges the option table promises, and
 * comparing a result with itself reports no change.
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

#include "kvp_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int memfd = -1;
static char memfd_path[64];

static void write_input(const uint8_t *data, size_t size)
{
	size_t done = 0;

	if (memfd < 0) {
		memfd = memfd_create("fuzz_config", MFD_CLOEXEC);
		if (memfd < 0) {
			perror("fuzz_config: memfd_create");
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

static void changed(void *arg, const char *name, bool live)
{
	fprintf(stderr, "fuzz_config: a config differs from itself in '%s'\n", name);
	abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *argv[] = { "kvprefixd", "--config", memfd_path, NULL };
	struct kvp_config cfg;
	char err[512];

	write_input(data, size);
	memset(err, 'x', sizeof(err));
	if (kvp_config_reload(3, argv, &cfg, err, sizeof(err)) != 0) {
		if (!memchr(err, '\0', sizeof(err)) || err[0] == '\0' || strchr(err, '\n')) {
			fprintf(stderr, "fuzz_config: a refusal without a one-line reason\n");
			abort();
		}
		return 0;
	}
	if (cfg.block_tokens < 1 || cfg.block_tokens > 4096 || cfg.capacity_blocks < 1 ||
	    cfg.max_tokens < 1 || cfg.max_connections < 1 || cfg.max_leases < 1 ||
	    (uint64_t)cfg.max_leases * cfg.max_connections >= UINT32_MAX ||
	    (cfg.index_only && cfg.model_path) || (!cfg.index_only && !cfg.model_path) ||
	    !memchr(cfg.socket_path, '\0', sizeof(cfg.socket_path))) {
		fprintf(stderr, "fuzz_config: an accepted file broke an option's promise\n");
		abort();
	}
	kvp_config_diff(&cfg, &cfg, changed, NULL);
	return 0;
}
