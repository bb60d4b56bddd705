/*
 * daemon_harness.c - the tests' way of starting kvprefixd: tools/spawn.c with the
 * tests' defaults (KVP_DAEMON_PATH, /tmp/kvp-test-XXXXXX, --log-level info, quiet
 * until a stop finds the daemon failed, then its log on stderr); and the models they
 * serve.
 */
#include "daemon_harness.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define HARNESS_WAIT_MS 10000   /* to accept at start, and to exit on SIGTERM */
#define HARNESS_ARGS_MAX 64

static int start_with(struct kvp_daemon *d, const char *const *args,
		      const struct kvp_spawn_opts *opts)
{
	const char *argv[HARNESS_ARGS_MAX];
	bool model = false;
	int argc = 0;

	if (kvp_spawn_prepare(d, "kvp-test", NULL) < 0)
		return -1;
	for (int i = 0; args && args[i]; i++)
		model |= strcmp(args[i], "--model") == 0;
	argv[argc++] = KVP_DAEMON_PATH;
	if (!model)
		argv[argc++] = "--index-only";
	argv[argc++] = "--socket";
	argv[argc++] = d->socket;
	argv[argc++] = "--log-level";
	argv[argc++] = "info";
	for (int i = 0; args && args[i] && argc < HARNESS_ARGS_MAX - 2; i++)
		argv[argc++] = args[i];
	argv[argc] = NULL;
	return kvp_spawn_start(d, argv, opts) == 0 ? 0 : -1;
}

int kvp_daemon_start(struct kvp_daemon *d, const char *const *args)
{
	static const struct kvp_spawn_opts opts = { .prog = NULL, .wait_ms = HARNESS_WAIT_MS };

	return start_with(d, args, &opts);
}

int kvp_daemon_start_as(struct kvp_daemon *d, const char *const *args, uid_t uid, gid_t gid)
{
	const struct kvp_spawn_opts opts = {
		.prog = NULL, .wait_ms = HARNESS_WAIT_MS, .as_user = true, .uid = uid, .gid = gid,
	};

	return start_with(d, args, &opts);
}

bool kvp_daemon_alive(struct kvp_daemon *d)
{
	return kvp_spawn_alive(d);
}

int kvp_daemon_stop(struct kvp_daemon *d)
{
	int ret = kvp_spawn_stop(d, HARNESS_WAIT_MS, NULL);

	if (d->dir[0]) {
		if (ret != 0) {
			/* show why (a sanitizer report, a crash) before the log goes */
			fprintf(stderr, "--- kvprefixd log:\n");
			if (kvp_spawn_print_log(d, stderr, "") < 0)
				ret = -1;
		}
		if (kvp_spawn_remove(d) < 0)
			ret = -1;
	}
	return ret;
}

int kvp_run_capture(const char *cmd, char *out, size_t cap)
{
	FILE *p = popen(cmd, "r");
	size_t n = 0;
	int st;

	if (!p)
		return -1;
	while (n + 1 < cap) {
		size_t r = fread(out + n, 1, cap - 1 - n, p);
		if (r == 0)
			break;
		n += r;
	}
	out[n] = '\0';
	/* drain the rest so the child does not block on a full pipe */
	for (char sink[4096]; fread(sink, 1, sizeof(sink), p) > 0;)
		;
	st = pclose(p);
	if (st == -1 || !WIFEXITED(st))
		return -1;
	return WEXITSTATUS(st);
}

int kvp_tmpdir_make(char *buf, size_t cap, const char *tag)
{
	char name[64];

	if ((size_t)snprintf(name, sizeof(name), "kvp-%s", tag) >= sizeof(name))
		return -1;
	return kvp_spawn_mkdtemp(buf, cap, name);
}

void kvp_tmpdir_remove(const char *dir)
{
	(void)kvp_spawn_rmdir(dir);
}

#ifdef KVP_MKMODEL_PATH
const char *kvp_test_model(const char *tag, const char *args)
{
	static char path[256];
	char cmd[768], out[1024];
	struct stat st;

	/* keyed by the generator's build, so a changed generator never leaves stale files */
	cr_assert_eq(stat(KVP_MKMODEL_PATH, &st), 0);
	mkdir(KVP_TEST_MODEL_DIR, 0755);
	snprintf(path, sizeof(path), "%s/%s-%lld.gguf", KVP_TEST_MODEL_DIR, tag,
		 (long long)st.st_mtime);
	if (stat(path, &st) == 0)
		return path;
	snprintf(cmd, sizeof(cmd), "'%s' --out '%s' %s --quiet 2>&1", KVP_MKMODEL_PATH, path,
		 args);
	cr_assert_eq(kvp_run_capture(cmd, out, sizeof(out)), 0, "mkmodel failed: %s", out);
	return path;
}
#endif
