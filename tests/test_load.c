/*
 * test_load.c - kvprefix-bench load against the real daemon: many clients at once,
 * a random mix of requests, then the daemon must hold no pinned block and its pool
 * must add up.
 *
 *   index_only: kvprefixd --index-only; 16 clients, 3 s of LOOKUP (pinned and not,
 *               RELEASE), INSERT and STATS
 *   engine:     kvprefixd --model <tiny model> --threads 2; 16 clients, 3 s of LOOKUP,
 *               RELEASE, GENERATE and STATS
 *
 * Both check the bench's JSON line (no error, requests made, blocks_pinned 0 once the
 * clients are gone, free + cached + pinned == total) and then ask the daemon again
 * themselves through libkvprefix, and that it stops cleanly (exit 0: under ASan, no
 * report). Each takes about 4 s (the model is tiny).
 */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon_harness.h"
#include "kvprefix.h"

#define OUT_CAP (1u << 20)
#define CLIENTS 16
#define DURATION_S 3

/* ---- helpers ------------------------------------------------------------------- */

/* The last non-empty line of s, parsed as a JSON object (caller deletes). */
static cJSON *last_json_line(char *s)
{
	size_t n = strlen(s);
	char *line;
	cJSON *o;

	while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r'))
		s[--n] = '\0';
	line = strrchr(s, '\n');
	line = line ? line + 1 : s;
	o = cJSON_Parse(line);
	cr_assert(cJSON_IsObject(o), "last output line is not a JSON object: '%s'", line);
	return o;
}

static double jnum(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	cr_assert(cJSON_IsNumber(v), "no number \"%s\" in the JSON output", key);
	return v->valuedouble;
}

/* kinds.<kind>.count, 0 when the kind is absent (nothing of it was sent). */
static double kind_count(const cJSON *o, const char *kind)
{
	const cJSON *k = cJSON_GetObjectItemCaseSensitive(o, "kinds");
	const cJSON *e = cJSON_GetObjectItemCaseSensitive(k, kind);

	cr_assert(cJSON_IsObject(k), "no \"kinds\" object");
	return e ? jnum(e, "count") : 0;
}

static void dump_file(const char *path)
{
	char line[1024];
	FILE *f = fopen(path, "r");

	while (f && fgets(line, sizeof(line), f))
		cr_log_info("  %s", line);
	if (f)
		fclose(f);
}

/* Run the bench against d (its stderr into d's directory, shown on failure) and return
 * its parsed JSON line; *status gets its exit status. */
static cJSON *run_load(struct kvp_daemon *d, const char *extra, char *out, int *status)
{
	char cmd[1024], err[128];

	snprintf(err, sizeof(err), "%s/load.err", d->dir);
	snprintf(cmd, sizeof(cmd), "'%s' load --socket '%s' --clients %d --duration %d %s 2>'%s'",
		 KVP_BENCH_PATH, d->socket, CLIENTS, DURATION_S, extra, err);
	*status = kvp_run_capture(cmd, out, OUT_CAP);
	if (*status != 0 || !strrchr(out, '{')) {
		cr_log_error("%s exited %d; its stdout:\n%s\nits stderr:", cmd, *status, out);
		dump_file(err);
	}
	return last_json_line(out);
}

/* What the JSON line says about the end state, checked the same way in both modes. */
static void check_common(const cJSON *o, const struct kvp_daemon *d, int status)
{
	const cJSON *inv = cJSON_GetObjectItemCaseSensitive(o, "pool_invariant_ok");
	double total = jnum(o, "blocks_total"), fr = jnum(o, "blocks_free");
	double ca = jnum(o, "blocks_cached"), pi = jnum(o, "blocks_pinned");
	const cJSON *fe = cJSON_GetObjectItemCaseSensitive(o, "first_error");

	cr_expect_eq(jnum(o, "errors"), 0, "errors: %.0f (first: %s)", jnum(o, "errors"),
		     cJSON_IsString(fe) ? fe->valuestring : "-");
	cr_expect_gt(jnum(o, "requests"), 0);
	cr_expect_gt(jnum(o, "requests_per_s"), 0);
	cr_expect_gt(jnum(o, "p50_us"), 0);
	cr_expect_geq(jnum(o, "p99_us"), jnum(o, "p50_us"));
	cr_expect_eq(jnum(o, "clients"), CLIENTS);
	/* every pinned LOOKUP's lease was released; the daemon agrees (below) */
	cr_expect_eq(pi, 0, "blocks_pinned %.0f after every client closed", pi);
	cr_expect_eq(jnum(o, "leases_active"), 0);
	cr_expect(cJSON_IsTrue(inv), "pool_invariant_ok is not true");
	cr_expect_eq(fr + ca + pi, total, "free %.0f + cached %.0f + pinned %.0f != total %.0f",
		     fr, ca, pi, total);
	cr_expect_gt(total, 0);
	/* the pid came from SO_PEERCRED, the RSS from its /proc/PID/status */
	cr_expect_eq(jnum(o, "daemon_pid"), d->pid);
	cr_expect_gt(jnum(o, "rss_start_kb"), 0);
	cr_expect_gt(jnum(o, "rss_end_kb"), 0);
	/* lookups were pinned and released, and the daemon counted what was sent */
	cr_expect_gt(kind_count(o, "lookup"), 0);
	cr_expect_gt(kind_count(o, "lookup_pin"), 0);
	cr_expect_gt(kind_count(o, "release"), 0);
	cr_expect_gt(kind_count(o, "stats"), 0);
	cr_expect_eq(jnum(o, "daemon_requests"), kind_count(o, "lookup") +
		     kind_count(o, "lookup_pin") + kind_count(o, "insert") +
		     kind_count(o, "generate"));
	cr_expect_eq(jnum(o, "daemon_errors"), 0);
	cr_expect_eq(status, 0, "kvprefix-bench load exited %d", status);
}

static double stat_of(const char *js, const char *key)
{
	cJSON *o = cJSON_Parse(js);
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	double x;

	cr_assert(cJSON_IsNumber(v), "no \"%s\" in STATS", key);
	x = v->valuedouble;
	cJSON_Delete(o);
	return x;
}

/* Ask the daemon itself, on a connection of the test's own. */
static void check_daemon(struct kvp_daemon *d)
{
	struct kvp_client *c = NULL;
	char *js = NULL;

	cr_assert(kvp_daemon_alive(d), "kvprefixd died under load");
	cr_assert_eq(kvp_client_connect(d->socket, &c), 0);
	/* the bench's last connection may still be on its way out */
	for (int i = 0; i < 200; i++) {
		cr_assert_eq(kvp_client_stats(c, &js), 0);
		if (stat_of(js, "connections") == 1)
			break;
		free(js);
		js = NULL;
		usleep(10000);
	}
	cr_assert_not_null(js, "the bench's connections stayed open");
	cr_expect_eq(stat_of(js, "blocks_pinned"), 0);
	cr_expect_eq(stat_of(js, "leases_active"), 0);
	cr_expect_eq(stat_of(js, "blocks_free") + stat_of(js, "blocks_cached") +
		     stat_of(js, "blocks_pinned"), stat_of(js, "blocks_total"));
	free(js);
	kvp_client_close(c);
}

/* ---- tests ----------------------------------------------------------------------- */

Test(load, index_only, .timeout = 60)
{
	struct kvp_daemon d;
	char *out = malloc(OUT_CAP);
	int status;
	cJSON *o;

	cr_assert_not_null(out);
	cr_assert_eq(kvp_daemon_start(&d, NULL), 0, "kvprefixd did not start");
	o = run_load(&d, "", out, &status);
	check_common(o, &d, status);
	cr_expect_gt(kind_count(o, "insert"), 0);
	cr_expect_eq(kind_count(o, "generate"), 0);
	/* shared prefixes: 3/4 of every lookup can hit once inserted */
	cr_expect_gt(jnum(o, "lookup_hit_rate"), 0.5);
	check_daemon(&d);
	cJSON_Delete(o);
	free(out);
	cr_expect_eq(kvp_daemon_stop(&d), 0, "kvprefixd did not exit cleanly");
}

Test(load, engine, .timeout = 120)
{
	char dir[] = "/tmp/kvp-load-model-XXXXXX", model[128], cmd[512], *out = malloc(OUT_CAP);
	const char *args[] = { "--model", model, "--threads", "2", NULL };
	struct kvp_daemon d;
	int status;
	cJSON *o;

	cr_assert_not_null(out);
	cr_assert_not_null(mkdtemp(dir));
	snprintf(model, sizeof(model), "%s/tiny.gguf", dir);
	snprintf(cmd, sizeof(cmd), "'%s' --out '%s' --vocab 512 --dim 64 --layers 2 --heads 4 "
		 "--kv-heads 2 --ffn 128 --ctx 1024 --quiet 2>&1", KVP_MKMODEL_PATH, model);
	cr_assert_eq(kvp_run_capture(cmd, out, OUT_CAP), 0, "mkmodel failed: %s", out);
	cr_assert_eq(kvp_daemon_start(&d, args), 0, "kvprefixd --model did not start");

	o = run_load(&d, "--mix lookup=70,stats=5,generate=25 --max-new 8", out, &status);
	check_common(o, &d, status);
	cr_expect_gt(kind_count(o, "generate"), 0);
	cr_expect_eq(kind_count(o, "insert"), 0);
	cr_expect_eq(jnum(o, "vocab"), 512, "the model's vocabulary, asked of the daemon");
	cr_expect_gt(jnum(o, "generated_tokens"), 0);
	/* shared prefixes: generations find earlier ones' blocks */
	cr_expect_gt(jnum(o, "generate_cached_tokens"), 0);
	check_daemon(&d);
	cJSON_Delete(o);
	free(out);
	cr_expect_eq(kvp_daemon_stop(&d), 0, "kvprefixd did not exit cleanly");
	unlink(model);
	rmdir(dir);
}
