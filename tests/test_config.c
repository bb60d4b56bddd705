/*
 * test_config.c - kvprefixd's options: the config file under the command line, bad
 * lines refused with file:line and the reason, SIGHUP's reload and diff, the shipped
 * etc/kvprefixd.conf, and the real daemon refusing a bad file.
 */
#include <criterion/criterion.h>

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kvp_config.h"
#include "kvp_log.h"

static char dir[64];
static char conf[128];    /* dir + "/kvprefixd.conf" */

static void setup(void)
{
	snprintf(dir, sizeof(dir), "/tmp/kvp-config-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	snprintf(conf, sizeof(conf), "%s/kvprefixd.conf", dir);
	/* whatever this machine has in /etc/kvprefix must not leak into the tests */
	kvp_config_default_path = "/nonexistent/kvprefix/kvprefixd.conf";
}

static void teardown(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	cr_assert_eq(system(cmd), 0);
}

TestSuite(config, .init = setup, .fini = teardown);

__attribute__((format(printf, 2, 3)))
static void write_file(const char *path, const char *fmt, ...)
{
	FILE *f = fopen(path, "w");
	va_list ap;

	cr_assert_not_null(f, "%s", path);
	va_start(ap, fmt);
	vfprintf(f, fmt, ap);
	va_end(ap);
	cr_assert_eq(fclose(f), 0);
}

static int count(char **argv)
{
	int n = 0;

	while (argv[n])
		n++;
	return n;
}

/* kvp_config_parse with its stderr captured into err. */
static int parse(char **argv, struct kvp_config *cfg, char *err, size_t cap)
{
	FILE *t = tmpfile();
	int saved, r;
	size_t n;

	cr_assert_not_null(t);
	fflush(stderr);
	saved = dup(STDERR_FILENO);
	dup2(fileno(t), STDERR_FILENO);
	r = kvp_config_parse(count(argv), argv, cfg);
	fflush(stderr);
	dup2(saved, STDERR_FILENO);
	close(saved);
	rewind(t);
	n = fread(err, 1, cap - 1, t);
	err[n] = '\0';
	fclose(t);
	return r;
}

static int reload(char **argv, struct kvp_config *cfg, char *err, size_t cap)
{
	err[0] = '\0';
	return kvp_config_reload(count(argv), argv, cfg, err, cap);
}

/* The config of `--index-only` alone, no file. */
static void baseline(struct kvp_config *cfg)
{
	char *argv[] = { "kvprefixd", "--index-only", NULL };
	char err[512];

	cr_assert_eq(parse(argv, cfg, err, sizeof(err)), 0, "%s", err);
}

/* ---- kvp_config_diff collector ----------------------------------------------------------- */

struct changes {
	int n;
	char names[32][32];
	bool live[32];
};

static void collect(void *arg, const char *name, bool live)
{
	struct changes *c = arg;

	cr_assert_lt(c->n, 32);
	snprintf(c->names[c->n], sizeof(c->names[0]), "%s", name);
	c->live[c->n++] = live;
}

static struct changes diff(const struct kvp_config *a, const struct kvp_config *b)
{
	struct changes c = { 0 };

	kvp_config_diff(a, b, collect, &c);
	return c;
}

static bool expected_live(const char *name)
{
	static const char *const live[] = { "log-level", "idle-timeout", "max-connections",
					     "max-inflight", "max-leases", "salt-uids",
					     "tenant-quota", "admin-group", "frame-timeout",
					     "max-connections-per-uid", "max-output-mb",
					     "max-leased-blocks", "max-leased-blocks-per-uid",
					     "stop-timeout" };

	for (size_t i = 0; i < sizeof(live) / sizeof(live[0]); i++)
		if (strcmp(live[i], name) == 0)
			return true;
	return false;
}

/* ---- defaults, file, flags ----------------------------------------------------------------- */

Test(config, defaults_without_a_file)
{
	struct kvp_config cfg;

	baseline(&cfg);
	cr_assert(cfg.index_only);
	cr_assert_null(cfg.model_path);
	cr_assert_eq(cfg.block_tokens, 16);
	cr_assert_eq(cfg.capacity_blocks, 262144);
	cr_assert(!cfg.capacity_given);
	cr_assert_eq(cfg.max_tokens, 1048576);
	cr_assert_eq(cfg.max_frame_bytes, 8u << 20);
	cr_assert_eq(cfg.max_connections, 1024);
	cr_assert_eq(cfg.max_leases, 4096);
	cr_assert_eq(cfg.max_inflight, 16);
	cr_assert_eq(cfg.idle_timeout_s, 600);
	cr_assert_eq(cfg.socket_mode, 0660);
	cr_assert_eq(cfg.pool_mb, 1024);
	cr_assert_str_eq(cfg.index_name, "kvprefix");
	cr_assert_eq(cfg.log_level, KVP_LOG_INFO);
	cr_assert_geq(cfg.threads, 1);
	cr_assert_str_eq(cfg.config_path, "");
	cr_assert_str_eq(cfg.metrics_listen, "");
	cr_assert_neq(cfg.socket_path[0], '\0', "the default socket path is filled in");
}

Test(config, file_values_applied)
{
	char *argv[] = { "kvprefixd", "--config", conf, NULL };
	struct kvp_config cfg;
	char err[512];

	write_file(conf,
		   "# a comment\n"
		   "; another comment\n"
		   "\n"
		   "index-only = yes\n"
		   "   block-tokens = 8     # indented, with a comment after\n"
		   "max-leases=10 ; no blanks around '='\n"
		   "idle-timeout = 0\r\n"
		   "index-name = tenant-a\n"
		   "socket-mode = 0600\n"
		   "kv-dtype = f32\n"
		   "log-level = debug\n"
		   "metrics-listen = 127.0.0.1:9464\n"
		   "socket = %s/d.sock\n"
		   "capacity-blocks = 1000", dir);
	cr_assert_eq(parse(argv, &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert(cfg.index_only);
	cr_assert_eq(cfg.block_tokens, 8);
	cr_assert_eq(cfg.max_leases, 10);
	cr_assert_eq(cfg.idle_timeout_s, 0);
	cr_assert_str_eq(cfg.index_name, "tenant-a");
	cr_assert_eq(cfg.socket_mode, 0600);
	cr_assert_eq(cfg.kv_dtype, 0 /* KVP_KV_F32 */);
	cr_assert_eq(cfg.log_level, KVP_LOG_DEBUG);
	cr_assert(kvp_log_enabled(KVP_LOG_DEBUG), "parse sets the log level");
	cr_assert_str_eq(cfg.metrics_listen, "127.0.0.1:9464");
	cr_assert(strstr(cfg.socket_path, "/d.sock") != NULL);
	cr_assert_eq(cfg.capacity_blocks, 1000);
	cr_assert(cfg.capacity_given, "capacity-blocks from the file counts as given");
	cr_assert_str_eq(cfg.config_path, conf);
}

Test(config, flags_win_over_the_file)
{
	char *argv[] = { "kvprefixd", "--block-tokens", "32", "--config", conf,
			 "--metrics-listen", "", NULL };
	struct kvp_config cfg;
	char err[512];

	write_file(conf, "index-only = true\nblock-tokens = 8\nmax-inflight = 4\n"
			 "metrics-listen = /run/m.sock\n");
	cr_assert_eq(parse(argv, &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(cfg.block_tokens, 32, "the flag wins, wherever it stands");
	cr_assert_eq(cfg.max_inflight, 4, "the file still sets what no flag gives");
	cr_assert_str_eq(cfg.metrics_listen, "", "an empty flag turns the file's metrics off");
}

Test(config, a_mode_flag_replaces_the_files_mode)
{
	char *idx[] = { "kvprefixd", "--config", conf, "--index-only", NULL };
	char *model[] = { "kvprefixd", "--config", conf, "--model", "/models/b.gguf", NULL };
	char *none[] = { "kvprefixd", "--config", conf, NULL };
	struct kvp_config cfg;
	char err[512];

	write_file(conf, "model = /models/a.gguf\n");
	cr_assert_eq(parse(idx, &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert(cfg.index_only);
	cr_assert_null(cfg.model_path);
	cr_assert_eq(parse(none, &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(cfg.model_path, "/models/a.gguf");

	write_file(conf, "index-only = true\n");
	cr_assert_eq(parse(model, &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert(!cfg.index_only);
	cr_assert_str_eq(cfg.model_path, "/models/b.gguf");

	write_file(conf, "index-only = true\nmodel = /models/a.gguf\n");
	cr_assert_eq(parse(none, &cfg, err, sizeof(err)), 2);
	cr_assert(strstr(err, "exclude each other") != NULL, "%s", err);
}

Test(config, a_long_line_is_read_whole)
{
	char *argv[] = { "kvprefixd", "--config", conf, NULL };
	static char path[3001];
	struct kvp_config cfg;
	char err[512];

	memset(path, 'm', sizeof(path) - 1);
	path[0] = '/';
	write_file(conf, "# first\nmodel = %s\nblock-tokens = 4\n", path);
	cr_assert_eq(parse(argv, &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(cfg.model_path, path);
	cr_assert_eq(cfg.block_tokens, 4, "the line after a long one is its own line");
}

/* ---- refusals ------------------------------------------------------------------------------- */

struct bad_case {
	const char *text;      /* the file: two comment lines come before it */
	const char *expect;    /* what follows "PATH:" in the message */
};

Test(config, each_bad_line_is_refused_with_its_line_and_reason)
{
	static char too_long[5000], long_socket[256];
	char *argv[] = { "kvprefixd", "--index-only", "--config", conf, NULL };
	struct kvp_config cfg;
	char err[1024], want[1200];

	memset(too_long, 'x', sizeof(too_long) - 1);
	snprintf(long_socket, sizeof(long_socket), "socket = /%0200d", 0);
	const struct bad_case cases[] = {
		{ "blok-tokens = 16", "3: unknown option 'blok-tokens'" },
		{ "block-tokens = 0", "3: block-tokens: '0' is not a number in 1..4096" },
		{ "block-tokens = 4097", "3: block-tokens: '4097' is not a number in 1..4096" },
		{ "block-tokens = -1", "3: block-tokens: '-1' is not a number in 1..4096" },
		{ "block-tokens = 0x10", "3: block-tokens: '0x10' is not a number in 1..4096" },
		{ "block-tokens =", "3: block-tokens: '' is not a number in 1..4096" },
		{ "socket-mode = 0999", "3: socket-mode: '0999' is not a number in 0..0777" },
		{ "just some words", "3: not a 'name = value' line" },
		{ "= 16", "3: not a 'name = value' line" },
		{ "[kvprefixd]", "3: [sections] are not used" },
		{ "index-only = maybe", "3: index-only: 'maybe' is not true or false" },
		{ "kv-dtype = f8", "3: kv-dtype: 'f8' is not f16 or f32" },
		{ "log-level = loud", "3: log-level: 'loud' is not one of error, warn, info, debug" },
		{ "index-name =", "3: index-name: 1..255 bytes" },
		{ long_socket, "3: socket: path longer than 107 bytes" },
		{ "max-leases = 8\nmax-leases = 9", "4: max-leases: already set on line 3" },
		{ "config = /etc/other.conf", "3: config: only on the command line" },
		{ "help = yes", "3: unknown option 'help'" },
		{ too_long, "3: line longer than 4096 bytes" },
		{ "block-tokens = 8\nnonsense\nblok = 1", "4: not a 'name = value' line" },
		{ "blok = 1\nnonsense", "3: unknown option 'blok'" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		write_file(conf, "# kvprefixd\n; settings\n%s\nmax-inflight = 2\n", cases[i].text);
		snprintf(want, sizeof(want), "%s:%s", conf, cases[i].expect);
		/* startup: exit code 2, one message naming the line */
		cr_assert_eq(parse(argv, &cfg, err, sizeof(err)), 2, "case %zu", i);
		cr_assert(strncmp(err, "kvprefixd: ", 11) == 0 && strstr(err, want) != NULL,
			  "case %zu: want '%s', got '%s'", i, want, err);
		/* reload: the same reason, as one line, nothing printed */
		cr_assert_eq(reload(argv, &cfg, err, sizeof(err)), KVP_EINVAL);
		cr_assert(strncmp(err, want, strlen(want)) == 0, "case %zu: want '%s', got '%s'", i,
			  want, err);
		cr_assert_null(strchr(err, '\n'));
	}
}

Test(config, cross_checks_run_on_the_merged_options)
{
	char *plain[] = { "kvprefixd", "--config", conf, NULL };
	char *frame[] = { "kvprefixd", "--config", conf, "--max-frame-bytes", "16777216", NULL };
	struct kvp_config cfg;
	char err[1024];

	/* no mode anywhere: the long explanation at start, one line on reload */
	write_file(conf, "block-tokens = 8\n");
	cr_assert_eq(parse(plain, &cfg, err, sizeof(err)), 2);
	cr_assert(strstr(err, "--index-only") && strstr(err, "--model FILE"), "%s", err);
	cr_assert_eq(reload(plain, &cfg, err, sizeof(err)), KVP_EINVAL);
	cr_assert(strstr(err, "choose a mode") != NULL, "%s", err);

	/* max-tokens from the file against the default frame, fixed by a flag */
	write_file(conf, "index-only = true\nmax-tokens = 2097152\n");
	cr_assert_eq(parse(plain, &cfg, err, sizeof(err)), 2);
	cr_assert(strstr(err, "--max-frame-bytes 8388608") != NULL, "%s", err);
	cr_assert_eq(parse(frame, &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(cfg.max_tokens, 2097152);

	write_file(conf, "index-only = true\nmax-leases = 1048576\nmax-connections = 1048576\n");
	cr_assert_eq(parse(plain, &cfg, err, sizeof(err)), 2);
	cr_assert(strstr(err, "below 2^32") != NULL, "%s", err);
}

Test(config, command_line_errors)
{
	struct {
		char *argv[6];
		const char *expect;
	} cases[] = {
		{ { "kvprefixd", "--index-only", "--block-tokens", "0", NULL },
		  "kvprefixd: --block-tokens: '0' is not a number in 1..4096" },
		{ { "kvprefixd", "--index-only", "--nope", NULL }, "'--nope'" },
		{ { "kvprefixd", "--index-only", "--socket", NULL }, "'--socket' requires an argument" },
		{ { "kvprefixd", "--index-only", "--index-only=1", NULL }, "doesn't allow an argument" },
		{ { "kvprefixd", "--index-only", "stray", NULL }, "unexpected argument 'stray'" },
		{ { "kvprefixd", "--index-only", "--kv-dtype", "bf16", NULL },
		  "--kv-dtype: 'bf16' is not f16 or f32" },
		{ { "kvprefixd", "--model", "a.gguf", "--index-only", NULL }, "exclude each other" },
		{ { "kvprefixd", "--index-only", "--max-seqs", "32", "--max-batch-tokens=16", NULL },
		  "--max-batch-tokens 16 is below --max-seqs 32" },
	};
	struct kvp_config cfg;
	char err[1024];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cr_assert_eq(parse(cases[i].argv, &cfg, err, sizeof(err)), 2, "case %zu", i);
		cr_assert(strstr(err, cases[i].expect) != NULL, "case %zu: %s", i, err);
	}
}

Test(config, help_works_even_with_a_bad_file)
{
	char *argv[] = { "kvprefixd", "--config", conf, "--help", NULL };
	struct kvp_config cfg;
	char err[512];
	int saved = dup(STDOUT_FILENO), null = open("/dev/null", 1);

	write_file(conf, "blok-tokens = 1\n");
	fflush(stdout);
	dup2(null, STDOUT_FILENO);
	cr_assert_eq(parse(argv, &cfg, err, sizeof(err)), KVP_CONFIG_DONE);
	fflush(stdout);
	dup2(saved, STDOUT_FILENO);
	close(saved);
	close(null);
	cr_assert_str_eq(err, "");
}

Test(config, an_explicit_missing_file_is_refused)
{
	char *argv[] = { "kvprefixd", "--index-only", "--config", "/nonexistent/x.conf", NULL };
	struct kvp_config cfg;
	char err[512];

	cr_assert_eq(parse(argv, &cfg, err, sizeof(err)), 2);
	cr_assert(strstr(err, "--config: /nonexistent/x.conf: cannot open") != NULL, "%s", err);
	cr_assert_eq(reload(argv, &cfg, err, sizeof(err)), KVP_EINVAL);
}

Test(config, the_default_file_is_read_only_if_it_exists)
{
	char *plain[] = { "kvprefixd", "--index-only", NULL };
	char *none[] = { "kvprefixd", "--index-only", "--config", "", NULL };
	struct kvp_config cfg;
	char err[512];

	cr_assert_eq(parse(plain, &cfg, err, sizeof(err)), 0, "absent: %s", err);
	cr_assert_str_eq(cfg.config_path, "");

	write_file(conf, "block-tokens = 8\n");
	kvp_config_default_path = conf;
	cr_assert_eq(parse(plain, &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(cfg.block_tokens, 8);
	cr_assert_str_eq(cfg.config_path, conf);

	cr_assert_eq(parse(none, &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(cfg.block_tokens, 16, "--config '' reads no file");
	cr_assert_str_eq(cfg.config_path, "");
}

/* ---- SIGHUP: reload and diff ----------------------------------------------------------------- */

Test(config, reload_rereads_a_changed_file)
{
	char *argv[] = { "kvprefixd", "--config", conf, "--max-inflight", "3", NULL };
	struct kvp_config cur, next;
	struct changes c;
	char err[512];
	FILE *t = tmpfile();
	int saved;

	write_file(conf, "index-only = true\nmax-leases = 10\nlog-level = warn\n");
	cr_assert_eq(parse(argv, &cur, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(reload(argv, &next, err, sizeof(err)), 0, "%s", err);
	c = diff(&cur, &next);
	cr_assert_eq(c.n, 0, "nothing changed, nothing reported (first: %s)", c.names[0]);

	write_file(conf, "index-only = true\nmax-leases = 20\nblock-tokens = 32\n"
			 "max-inflight = 9\nlog-level = warn\n");
	kvp_log_set_level(KVP_LOG_INFO);
	fflush(stderr);
	saved = dup(STDERR_FILENO);
	dup2(fileno(t), STDERR_FILENO);
	cr_assert_eq(reload(argv, &next, err, sizeof(err)), 0, "%s", err);
	fflush(stderr);
	dup2(saved, STDERR_FILENO);
	close(saved);
	cr_assert_eq(ftell(t), 0, "reload prints nothing");
	fclose(t);
	cr_assert_eq(next.max_leases, 20);
	cr_assert_eq(next.block_tokens, 32);
	cr_assert_eq(next.max_inflight, 3, "the same flags still win");
	cr_assert(kvp_log_enabled(KVP_LOG_INFO), "reload leaves the log level to its caller");

	c = diff(&cur, &next);
	cr_assert_eq(c.n, 2);
	cr_assert_str_eq(c.names[0], "block-tokens");
	cr_assert(!c.live[0]);
	cr_assert_str_eq(c.names[1], "max-leases");
	cr_assert(c.live[1]);

	write_file(conf, "index-only = true\nmax-leases = twenty\n");
	cr_assert_eq(reload(argv, &next, err, sizeof(err)), KVP_EINVAL);
	snprintf(cur.index_name, sizeof(cur.index_name), "%s:2: max-leases: 'twenty'", conf);
	cr_assert(strncmp(err, cur.index_name, strlen(cur.index_name)) == 0, "%s", err);
}

Test(config, diff_names_each_option_with_its_live_flag)
{
	static const struct {
		const char *key, *value;
	} set[] = {
		{ "socket", "/tmp/kvp-other.sock" }, { "socket-mode", "0600" },
		{ "index-name", "other" }, { "block-tokens", "32" },
		{ "capacity-blocks", "1000" }, { "pool-mb", "64" }, { "kv-dtype", "f32" },
		{ "eviction", "reuse" },
		{ "disk-cache", "/var/cache/kvprefix" }, { "disk-cache-gb", "20" },
		{ "host-cache-mb", "512" },
		{ "redis", "unix:/run/redis/redis.sock" }, { "redis-password", "secret" },
		{ "redis-ttl", "3600" },
		{ "kv-events", "tcp://127.0.0.1:5557" }, { "kv-events-replay", "tcp://127.0.0.1:5558" },
		{ "kv-events-buffer", "100" }, { "kv-events-array", "true" },
		{ "instance-id", "node-7" }, { "kv-events-sub", "tcp://10.0.0.1:5557" },
		{ "kv-events-sub-replay", "tcp://10.0.0.1:5558" },
		{ "threads", "1025" /* replaced below */ }, { "max-seqs", "4" },
		{ "max-batch-tokens", "64" }, { "max-tokens", "1000" },
		{ "max-frame-bytes", "16777216" }, { "max-connections", "10" }, { "max-leases", "10" },
		{ "max-inflight", "2" }, { "idle-timeout", "5" }, { "salt-uids", "0,1000" },
		{ "frame-timeout", "3" }, { "max-connections-per-uid", "4" },
		{ "max-output-mb", "64" }, { "max-leased-blocks", "100" },
		{ "max-leased-blocks-per-uid", "400" }, { "stop-timeout", "5" },
		{ "backend", "cpu" }, { "tenant-quota", "25" }, { "admin-group", "0" },
		{ "metrics-listen", "127.0.0.1:9464" }, { "log-level", "debug" },
	};
	char *argv[] = { "kvprefixd", "--index-only", "--config", conf, NULL };
	struct kvp_config base, cfg;
	size_t keys = 0, seen = 0;
	char err[512];
	bool live;

	baseline(&base);
	for (const char *k; (k = kvp_config_key(keys, &live)); keys++)
		cr_assert_eq(live, expected_live(k), "%s", k);
	cr_assert_eq(keys, sizeof(set) / sizeof(set[0]) + 2, "every key but the mode is here");

	for (size_t i = 0; i < sizeof(set) / sizeof(set[0]); i++) {
		/* an option that needs another: both are set, and both change */
		const char *needs = strcmp(set[i].key, "kv-events-replay") == 0 ? "kv-events = ipc:///x"
				  : strcmp(set[i].key, "kv-events-sub-replay") == 0
				  ? "kv-events-sub = ipc:///y" : NULL;
		struct changes c;
		int k = needs ? 1 : 0;   /* the table lists the one needed first */

		if (strcmp(set[i].key, "threads") == 0)
			write_file(conf, "threads = %d\n", base.threads == 1 ? 2 : 1);
		else
			write_file(conf, "%s\n%s = %s\n", needs ? needs : "", set[i].key, set[i].value);
		cr_assert_eq(parse(argv, &cfg, err, sizeof(err)), 0, "%s: %s", set[i].key, err);
		c = diff(&base, &cfg);
		cr_assert_eq(c.n, needs ? 2 : 1, "%s: %d changes", set[i].key, c.n);
		cr_assert_str_eq(c.names[k], set[i].key);
		cr_assert_eq(c.live[k], expected_live(set[i].key), "%s", set[i].key);
		seen++;
	}
	cr_assert_eq(seen, keys - 2);

	/* the mode: both names, neither live */
	{
		char *model[] = { "kvprefixd", "--model", "/models/a.gguf", NULL };
		struct changes c;

		cr_assert_eq(parse(model, &cfg, err, sizeof(err)), 0, "%s", err);
		c = diff(&base, &cfg);
		cr_assert_eq(c.n, 2);
		cr_assert_str_eq(c.names[0], "index-only");
		cr_assert_str_eq(c.names[1], "model");
		cr_assert(!c.live[0] && !c.live[1]);
	}
}

/* ---- the shipped example --------------------------------------------------------------------- */

/* As shipped it chooses index-only (the service's command line names no mode) and
 * leaves everything else at the default. */
Test(config, the_shipped_example_parses_cleanly)
{
	char *argv[] = { "kvprefixd", "--config", KVP_EXAMPLE_CONFIG, NULL };
	struct kvp_config base, cfg;
	struct changes c;
	char err[512];

	baseline(&base);
	cr_assert_eq(parse(argv, &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert(cfg.index_only);
	c = diff(&base, &cfg);
	cr_assert_eq(c.n, 0, "as shipped it changes nothing else (first: %s)", c.names[0]);
}

Test(config, the_shipped_example_uncommented_lists_every_key_with_its_default)
{
	char *argv[] = { "kvprefixd", "--index-only", "--config", conf, NULL };
	FILE *in = fopen(KVP_EXAMPLE_CONFIG, "r"), *out = fopen(conf, "w");
	struct kvp_config base, cfg;
	bool found[64] = { false }, live_mark = false;
	struct changes c;
	char line[512], err[512];
	const char *k;
	size_t i;

	cr_assert(in && out);
	while (fgets(line, sizeof(line), in)) {
		char name[64];

		if (line[0] == '\n')
			live_mark = false;   /* [live] counts in the comment right above a key */
		if (strstr(line, "[live]"))
			live_mark = true;
		const char *key = line[0] == '#' ? line + 1 : line;

		if (sscanf(key, "%63[a-z-] =", name) == 1 && strstr(key, " =")) {
			bool live = false;

			for (i = 0; (k = kvp_config_key(i, &live)); i++)
				if (strcmp(k, name) == 0)
					break;
			cr_assert_not_null(k, "the example sets an unknown key '%s'", name);
			cr_assert_eq(live_mark, live, "%s: [live] mark", name);
			found[i] = true;
			live_mark = false;
			fputs(key, out);   /* uncommented */
		} else {
			fputs(line, out);
		}
	}
	fclose(in);
	cr_assert_eq(fclose(out), 0);
	for (i = 0; (k = kvp_config_key(i, NULL)); i++)
		cr_assert(found[i], "the example lacks '%s'", k);

	baseline(&base);
	cr_assert_eq(parse(argv, &cfg, err, sizeof(err)), 0, "%s", err);
	c = diff(&base, &cfg);
	/* the values are the defaults; only capacity-blocks, once set, counts as given */
	cr_assert_eq(c.n, 1, "first: %s", c.names[0]);
	cr_assert_str_eq(c.names[0], "capacity-blocks");
	cr_assert_eq(cfg.capacity_blocks, base.capacity_blocks);
}

/* ---- the real daemon ------------------------------------------------------------------------- */

static int run(const char *cmd, char *out, size_t cap)
{
	FILE *p = popen(cmd, "r");
	size_t n;
	int st;

	cr_assert_not_null(p);
	n = fread(out, 1, cap - 1, p);
	out[n] = '\0';
	st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(config, the_daemon_refuses_a_bad_file_naming_the_line)
{
	char cmd[512], out[8192], want[256];

	write_file(conf, "# kvprefixd\nindex-only = true\nblok-tokens = 16\n");
	snprintf(cmd, sizeof(cmd), "%s --config %s --socket %s/d.sock 2>&1", KVP_DAEMON_PATH,
		 conf, dir);
	cr_assert_eq(run(cmd, out, sizeof(out)), 2, "%s", out);
	snprintf(want, sizeof(want), "%s:3: unknown option 'blok-tokens'", conf);
	cr_assert(strstr(out, want) != NULL, "%s", out);

	snprintf(cmd, sizeof(cmd), "%s --index-only --config %s/missing.conf 2>&1",
		 KVP_DAEMON_PATH, dir);
	cr_assert_eq(run(cmd, out, sizeof(out)), 2, "%s", out);
	cr_assert(strstr(out, "missing.conf: cannot open") != NULL, "%s", out);

	snprintf(cmd, sizeof(cmd), "%s --help", KVP_DAEMON_PATH);
	cr_assert_eq(run(cmd, out, sizeof(out)), 0);
	cr_assert(strstr(out, "--config PATH") && strstr(out, "--metrics-listen") &&
		  strstr(out, "SIGHUP"), "%s", out);
}
