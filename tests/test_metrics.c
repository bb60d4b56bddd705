/*
 * test_metrics.c - /metrics and the metrics tables.
 *
 * Unit tests drive daemon/stats.c, stats_json.c and metrics.c directly (histograms, the
 * namespace cap, label escaping, the renderer, the STATS keys). Integration tests start the real kvprefixd
 * with --metrics-listen on a Unix socket or a TCP port, talk to it through libkvprefix
 * from two adapters, fetch /metrics with raw HTTP and check it against STATS as
 * kvprefix-stat --json prints it; where promtool is installed it checks the pages.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>

#include "daemon_harness.h"
#include "kvp_metrics.h"
#include "kvp_proto.h"
#include "kvprefix.h"

#define B 16

/* ---- helpers --------------------------------------------------------------- */

static bool have_promtool(void)
{
	return system("command -v promtool >/dev/null 2>&1") == 0;
}

/* Run promtool check metrics on text; its exit status, its output in out. */
static int promtool_check(const char *text, char *out, size_t cap)
{
	char path[] = "/tmp/kvp-metrics-XXXXXX", cmd[256];
	int fd = mkstemp(path), rc;
	size_t n = strlen(text);

	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, text, n), (ssize_t)n);
	close(fd);
	snprintf(cmd, sizeof(cmd), "promtool check metrics < '%s' 2>&1", path);
	rc = kvp_run_capture(cmd, out, cap);
	unlink(path);
	return rc;
}

/* The value of the sample whose name and labels are exactly series; NAN if absent. */
static double sample(const char *text, const char *series)
{
	size_t n = strlen(series);

	for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
		if (strncmp(p, series, n) == 0 && p[n] == ' ')
			return strtod(p + n + 1, NULL);
	}
	return NAN;
}

static char *render_to_string(const struct kvp_metrics_view *v)
{
	struct evbuffer *b = evbuffer_new();
	size_t n;
	char *s;

	cr_assert_not_null(b);
	cr_assert_eq(kvp_metrics_render(v, b), 0);
	n = evbuffer_get_length(b);
	s = malloc(n + 1);
	cr_assert_not_null(s);
	evbuffer_remove(b, s, n);
	s[n] = '\0';
	evbuffer_free(b);
	return s;
}

/* Buckets of one histogram series are non-decreasing, end at +Inf == _count. */
static uint64_t check_hist(const char *text, const char *name, const char *labels)
{
	char prefix[256], count[256];
	double prev = -1, last = NAN;
	int n = 0;

	snprintf(prefix, sizeof(prefix), "%s_bucket{%s%sle=\"", name, labels, labels[0] ? "," : "");
	for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
		const char *sp;

		if (strncmp(p, prefix, strlen(prefix)) != 0)
			continue;
		sp = strchr(p, ' ');
		cr_assert_not_null(sp);
		last = strtod(sp + 1, NULL);
		cr_assert_geq(last, prev, "%s: bucket counts decrease at %.60s", name, p);
		prev = last;
		n++;
		if (strncmp(p + strlen(prefix), "+Inf\"", 5) == 0)
			break;
	}
	cr_assert_gt(n, 1, "%s{%s}: no buckets", name, labels);
	if (labels[0])
		snprintf(count, sizeof(count), "%s_count{%s}", name, labels);
	else
		snprintf(count, sizeof(count), "%s_count", name);
	cr_assert_eq(sample(text, count), last, "%s: +Inf bucket %g != _count %g", name, last,
		     sample(text, count));
	return (uint64_t)last;
}

/* ---- unit: histograms ------------------------------------------------------ */

Test(hist, buckets_are_le_and_cumulative_in_seconds)
{
	static const double bounds[] = { 10, 100, 1000 };
	struct kvp_hist h;
	struct kvp_metrics_view v = { .lookup = &h };
	char *text;

	cr_assert_eq(kvp_hist_init_bounds(&h, bounds, 3), 0);
	kvp_hist_observe(&h, 0);
	kvp_hist_observe(&h, 10);      /* on the bound: that bucket */
	kvp_hist_observe(&h, 10.5);
	kvp_hist_observe(&h, 1000);
	kvp_hist_observe(&h, 5000);    /* +Inf */
	kvp_hist_observe(&h, -3);      /* a clock step: counted as 0 */
	cr_assert_eq(h.count, 6);
	cr_assert_eq(h.buckets[0], 3);
	cr_assert_eq(h.buckets[1], 1);
	cr_assert_eq(h.buckets[2], 1);
	cr_assert_eq(h.buckets[3], 1);
	text = render_to_string(&v);
	cr_assert_eq(sample(text, "kvprefix_lookup_duration_seconds_bucket{op=\"lookup\",le=\"1e-05\"}"), 3);
	cr_assert_eq(sample(text, "kvprefix_lookup_duration_seconds_bucket{op=\"lookup\",le=\"0.0001\"}"), 4);
	cr_assert_eq(sample(text, "kvprefix_lookup_duration_seconds_bucket{op=\"lookup\",le=\"0.001\"}"), 5);
	cr_assert_eq(sample(text, "kvprefix_lookup_duration_seconds_bucket{op=\"lookup\",le=\"+Inf\"}"), 6);
	cr_assert_float_eq(sample(text, "kvprefix_lookup_duration_seconds_sum{op=\"lookup\"}"),
			   (10 + 10.5 + 1000 + 5000) / 1e6, 1e-12);
	cr_assert_eq(check_hist(text, "kvprefix_lookup_duration_seconds", "op=\"lookup\""), 6);
	free(text);
}

Test(hist, quantiles_interpolate_like_histogram_quantile)
{
	static const double bounds[] = { 100, 200, 400 };
	struct kvp_hist h;

	cr_assert_eq(kvp_hist_init_bounds(&h, bounds, 3), 0);
	cr_assert(isnan(kvp_hist_quantile_us(&h, 0.5)), "empty: NAN");
	for (int i = 0; i < 50; i++)
		kvp_hist_observe(&h, 50);    /* (0, 100] */
	for (int i = 0; i < 50; i++)
		kvp_hist_observe(&h, 150);   /* (100, 200] */
	cr_assert_float_eq(kvp_hist_quantile_us(&h, 0.5), 100.0, 1e-9);
	cr_assert_float_eq(kvp_hist_quantile_us(&h, 0.75), 150.0, 1e-9);
	cr_assert_float_eq(kvp_hist_quantile_us(&h, 0.25), 50.0, 1e-9);
	kvp_hist_observe(&h, 1e9);           /* +Inf: the top bound is the answer */
	cr_assert_float_eq(kvp_hist_quantile_us(&h, 1.0), 400.0, 1e-9);
}

Test(hist, bad_bounds_are_refused)
{
	static const double desc[] = { 10, 5 };
	struct kvp_hist h;

	cr_assert_eq(kvp_hist_init_bounds(&h, desc, 2), KVP_EINVAL);
	cr_assert_eq(kvp_hist_init_bounds(&h, desc, 0), KVP_EINVAL);
	kvp_hist_observe(&h, 7);             /* still usable: a single +Inf bucket */
	cr_assert_eq(h.buckets[0], 1);
}

/* ---- unit: namespaces ------------------------------------------------------ */

Test(ns, capped_at_32_then_other)
{
	static struct kvp_ns_stats_table t;
	struct kvp_ns_counters *first, *c;
	char name[32];

	memset(&t, 0, sizeof(t));
	first = kvp_ns_stats_get(&t, 1000, "");
	cr_assert_eq(kvp_ns_stats_get(&t, 1000, ""), first, "same key, same counters");
	cr_assert_neq(kvp_ns_stats_get(&t, 1001, ""), first, "the tenant is part of the key");
	for (int i = 0; i < 40; i++) {
		snprintf(name, sizeof(name), "lora-%d", i);
		c = kvp_ns_stats_get(&t, 1000, name);
		c->requests++;
		cr_assert_eq(kvp_ns_stats_is_other(&t, c), i >= 30, "namespace %d", i);
	}
	cr_assert_eq(t.n, KVP_NS_TRACKED_MAX);
	cr_assert_eq(t.other.requests, 10);
	/* tracked ones stay tracked */
	cr_assert_not(kvp_ns_stats_is_other(&t, kvp_ns_stats_get(&t, 1000, "lora-0")));
}

Test(ns, unprintable_adapters_are_other)
{
	static struct kvp_ns_stats_table t;
	static const char *const other[] = {
		"esc\x1b[31m", "tab\t", "nl\n", "del\x7f", "c1\xc2\x85", "bad\xff", "cut\xe2\x82",
		"overlong\xc0\xaf", "surrogate\xed\xa0\x80",
	};
	static const char *const tracked[] = { "", "lora-a", "caf\xc3\xa9", "\xe2\x82\xac", "q\"b\\s" };

	memset(&t, 0, sizeof(t));
	for (size_t i = 0; i < sizeof(other) / sizeof(other[0]); i++)
		cr_assert(kvp_ns_stats_is_other(&t, kvp_ns_stats_get(&t, 1, other[i])), "case %zu", i);
	for (size_t i = 0; i < sizeof(tracked) / sizeof(tracked[0]); i++)
		cr_assert_not(kvp_ns_stats_is_other(&t, kvp_ns_stats_get(&t, 1, tracked[i])), "%s",
			      tracked[i]);
	cr_assert_eq(t.n, sizeof(tracked) / sizeof(tracked[0]));
}

Test(ns, long_adapter_is_keyed_by_its_prefix)
{
	static struct kvp_ns_stats_table t;
	char a[400], b[400];

	memset(&t, 0, sizeof(t));
	memset(a, 'x', sizeof(a) - 1);
	a[sizeof(a) - 1] = '\0';
	memcpy(b, a, sizeof(b));
	b[300] = 'y';   /* differs past KVP_NS_ADAPTER_MAX */
	cr_assert_eq(kvp_ns_stats_get(&t, 1, a), kvp_ns_stats_get(&t, 1, b));
	cr_assert_eq(strlen(t.e[0].adapter), KVP_NS_ADAPTER_MAX);
}

/* ---- unit: rendering ------------------------------------------------------- */

Test(render, label_values_are_escaped)
{
	static const char *const cases[][2] = {
		{ "plain", "plain" },
		{ "a\"b", "a\\\"b" },
		{ "back\\slash", "back\\\\slash" },
		{ "new\nline", "new\\nline" },
		{ "caf\xc3\xa9", "caf\xc3\xa9" },                 /* valid UTF-8 kept */
		{ "bad\xff" "byte", "bad\xef\xbf\xbd" "byte" },   /* invalid: U+FFFD */
		{ "trunc\xe2\x82", "trunc\xef\xbf\xbd\xef\xbf\xbd" },
		{ "surrogate\xed\xa0\x80", "surrogate\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd" },
		{ "", "" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct evbuffer *b = evbuffer_new();
		char out[128] = { 0 };

		cr_assert_eq(kvp_metrics_escape_label(b, cases[i][0]), 0);
		evbuffer_remove(b, out, sizeof(out) - 1);
		cr_assert_str_eq(out, cases[i][1], "case %zu", i);
		evbuffer_free(b);
	}
}

/* A full page from made-up figures: escaping, the "other" namespace, promtool. */
Test(render, page_with_odd_adapters_and_the_other_namespace)
{
	static struct kvp_ns_stats_table t;
	struct kvp_hist ttft, lookup, insert;
	struct kvp_req_counts req = { 0 };
	struct kvp_metrics_view v = {
		.version = "0.1.0", .mode = "engine", .name = "tiny \"model\"\n",
		.uptime_s = 12.5,
		.totals = { .computed_tokens = 30, .generated_tokens = 20, .generations_done = 2,
			    .errors = 1, .connections_total = 3 },
		.connections = 1,
		.ns = &t, .req = &req, .ttft = &ttft, .lookup = &lookup, .insert = &insert,
	};
	char name[32], *text, out[8192];
	struct kvp_ns_counters *c;

	memset(&t, 0, sizeof(t));
	kvp_hist_init(&ttft, KVP_HIST_TTFT);
	kvp_hist_init(&lookup, KVP_HIST_LATENCY);
	kvp_hist_init(&insert, KVP_HIST_LATENCY);
	kvp_hist_observe(&ttft, 12345);
	kvp_hist_observe(&lookup, 3.5);
	v.totals.lookups = 5;
	v.totals.query_tokens = 100;
	v.totals.hit_tokens = 64;
	v.cache.pool = (struct kvp_pool_counts){ .total = 10, .free = 7, .cached = 2, .referenced = 1 };
	c = kvp_ns_stats_get(&t, 1000, "we\"ird\\adapter");
	c->requests = 7;
	c->query_tokens = 70;
	/* not printable UTF-8: counted in other, never a label of its own */
	kvp_ns_stats_get(&t, 1000, "new\nline")->requests++;
	kvp_ns_stats_get(&t, 1000, "bad\xff")->requests++;
	for (int i = 0; i < 40; i++) {
		snprintf(name, sizeof(name), "a%d", i);
		kvp_ns_stats_get(&t, 2000, name)->requests++;
	}
	kvp_req_count(&req, KVP_T_LOOKUP, 0);
	kvp_req_count(&req, KVP_T_LOOKUP, KVP_ETOOBIG);
	kvp_req_count(&req, KVP_T_GENERATE, -999);   /* a status this build does not know */

	text = render_to_string(&v);
	cr_assert(strstr(text, "kvprefix_namespace_requests_total{namespace=\"1000:we\\\"ird\\\\adapter\","
				"tenant=\"1000\",adapter=\"we\\\"ird\\\\adapter\"} 7\n"),
		  "escaped namespace series missing:\n%s", text);
	cr_assert_eq(sample(text, "kvprefix_namespace_requests_total{namespace=\"other\",tenant=\"\",adapter=\"\"}"),
		     11, "1 + 40 printable namespaces: 32 tracked, 9 in other, with the 2 unprintable");
	cr_assert_null(strstr(text, "new\\nline"));
	cr_assert_null(strstr(text, "\xef\xbf\xbd"));
	cr_assert_eq(sample(text, "kvprefix_namespaces_tracked"), 32);
	cr_assert(strstr(text, "kvprefix_info{version=\"0.1.0\",mode=\"engine\",name=\"tiny \\\"model\\\"\\n\"} 1\n"));
	cr_assert_eq(sample(text, "kvprefix_requests_total{type=\"lookup\",outcome=\"ETOOBIG\"}"), 1);
	cr_assert_eq(sample(text, "kvprefix_requests_total{type=\"lookup\",outcome=\"ok\"}"), 1);
	cr_assert_eq(sample(text, "kvprefix_requests_total{type=\"generate\",outcome=\"EUNKNOWN\"}"), 1);
	cr_assert(isnan(sample(text, "kvprefix_requests_total{type=\"lookup\",outcome=\"EFULL\"}")),
		  "error outcomes appear once they happen");
	cr_assert_eq(sample(text, "kvprefix_pool_blocks{state=\"pinned\"}"), 1);
	cr_assert_eq(sample(text, "kvprefix_hit_tokens_total"), 64);
	cr_assert_eq(check_hist(text, "kvprefix_ttft_seconds", ""), 1);
	cr_assert_eq(check_hist(text, "kvprefix_lookup_duration_seconds", "op=\"lookup\""), 1);
	cr_assert_eq(check_hist(text, "kvprefix_lookup_duration_seconds", "op=\"insert\""), 0);
	/* every family announced once, counters named _total */
	for (const char *p = strstr(text, "# TYPE "); p; p = strstr(p + 1, "# TYPE ")) {
		char fam[128], type[32], again[160];

		cr_assert_eq(sscanf(p, "# TYPE %127s %31s", fam, type), 2);
		snprintf(again, sizeof(again), "# TYPE %s ", fam);
		cr_assert_eq(strstr(p + 1, again), NULL, "%s announced twice", fam);
		if (strcmp(type, "counter") == 0)
			cr_assert(strlen(fam) > 6 && strcmp(fam + strlen(fam) - 6, "_total") == 0,
				  "counter %s does not end in _total", fam);
	}
	if (have_promtool())
		cr_assert_eq(promtool_check(text, out, sizeof(out)), 0, "promtool: %s\n%s", out, text);
	free(text);
}

Test(render, stats_json_top_namespaces_and_percentiles)
{
	static struct kvp_ns_stats_table t;
	struct kvp_hist ttft, lookup;
	cJSON *o = cJSON_CreateObject(), *arr, *x;
	char name[32];
	int i = 0;
	double prev = INFINITY;

	memset(&t, 0, sizeof(t));
	kvp_hist_init(&ttft, KVP_HIST_TTFT);
	kvp_hist_init(&lookup, KVP_HIST_LATENCY);
	kvp_hist_observe(&lookup, 20);
	for (int k = 0; k < 40; k++) {
		struct kvp_ns_counters *c;

		snprintf(name, sizeof(name), "ad%d", k);
		c = kvp_ns_stats_get(&t, 7, name);
		c->requests += (uint64_t)k + 1;    /* 33..40 land in other: 292 requests */
		c->query_tokens += 10;
		c->hit_tokens += 5;
	}
	kvp_stats_json_detail(o, &t, &ttft, &lookup, NULL);
	arr = cJSON_GetObjectItem(o, "namespaces");
	cr_assert(cJSON_IsArray(arr));
	cr_assert_eq(cJSON_GetArraySize(arr), 10);
	x = cJSON_GetArrayItem(arr, 0);
	cr_assert_str_eq(cJSON_GetObjectItem(x, "namespace")->valuestring, "other");
	cr_assert(cJSON_IsNull(cJSON_GetObjectItem(x, "tenant")));
	cr_assert_eq(cJSON_GetObjectItem(x, "requests")->valuedouble, 33 + 34 + 35 + 36 + 37 + 38 + 39 + 40);
	x = cJSON_GetArrayItem(arr, 1);
	cr_assert_str_eq(cJSON_GetObjectItem(x, "namespace")->valuestring, "7:ad31");
	cr_assert_eq(cJSON_GetObjectItem(x, "tenant")->valuedouble, 7);
	cr_assert_str_eq(cJSON_GetObjectItem(x, "adapter")->valuestring, "ad31");
	cr_assert_float_eq(cJSON_GetObjectItem(x, "hit_rate")->valuedouble, 0.5, 1e-12);
	cJSON_ArrayForEach(x, arr) {
		double r = cJSON_GetObjectItem(x, "requests")->valuedouble;
		cr_assert_leq(r, prev, "entry %d out of order", i);
		prev = r;
		i++;
	}
	cr_assert_eq(cJSON_GetObjectItem(o, "namespaces_tracked")->valuedouble, 32);
	cr_assert(cJSON_IsNull(cJSON_GetObjectItem(o, "ttft_us_p50")), "no generations: null");
	cr_assert(cJSON_IsNull(cJSON_GetObjectItem(o, "ttft_us_p99")));
	cr_assert(cJSON_IsNumber(cJSON_GetObjectItem(o, "lookup_us_p99")));
	cr_assert_float_eq(cJSON_GetObjectItem(o, "lookup_us_p99")->valuedouble,
			   10 + 15 * 0.99, 1e-9, "(10, 25] interpolated");
	cJSON_Delete(o);
}

/* ---- the real daemon ------------------------------------------------------- */

static struct kvp_daemon d;
static char mdir[64];          /* holds the metrics socket */
static char msock[108];

static void stop(void)
{
	if (d.pid > 0) {
		int st = kvp_daemon_stop(&d);
		cr_expect_eq(st, 0, "kvprefixd exited with %d (its log is above)", st);
	}
	if (msock[0])
		unlink(msock);
	if (mdir[0])
		rmdir(mdir);
	msock[0] = mdir[0] = '\0';
}

static void start_unix(void)
{
	const char *args[] = { "--block-tokens", "16", "--capacity-blocks", "64",
			       "--max-tokens", "4096", "--metrics-listen", msock, NULL };

	snprintf(mdir, sizeof(mdir), "/tmp/kvp-met-XXXXXX");
	cr_assert_not_null(mkdtemp(mdir));
	snprintf(msock, sizeof(msock), "%s/metrics.sock", mdir);
	cr_assert_eq(kvp_daemon_start(&d, args), 0, "kvprefixd did not start");
}

static struct kvp_client *conn(const char *adapter)
{
	struct kvp_client *c = NULL;
	int rc = kvp_client_connect(d.socket, &c);

	cr_assert_eq(rc, 0, "connect: %s", kvp_strerror(rc));
	cr_assert_eq(kvp_client_set_timeout_ms(c, 120000), 0);
	if (adapter)
		cr_assert_eq(kvp_client_hello(c, adapter, NULL, NULL), 0, "hello %s", adapter);
	return c;
}

static void fill(uint32_t *t, size_t n, uint32_t seed)
{
	for (size_t i = 0; i < n; i++)
		t[i] = (uint32_t)((seed * 2654435761u) ^ (uint32_t)(i * 40503u)) % 1000u;
}

struct http_reply {
	int status;
	char headers[2048];
	char *body;       /* malloc'd */
};

/* One HTTP/1.0 exchange on a connected socket; the reply read to EOF. */
static void http_exchange(int fd, const char *method, const char *path, struct http_reply *r)
{
	char req[256], *buf = NULL, *sep;
	size_t n = 0, cap = 0;
	struct timeval tv = { 10, 0 };

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	snprintf(req, sizeof(req), "%s %s HTTP/1.0\r\nHost: localhost\r\n\r\n", method, path);
	cr_assert_eq(send(fd, req, strlen(req), MSG_NOSIGNAL), (ssize_t)strlen(req));
	for (;;) {
		ssize_t k;

		if (n + 4096 + 1 > cap) {
			cap = cap ? cap * 2 : 65536;
			buf = realloc(buf, cap);
			cr_assert_not_null(buf);
		}
		k = recv(fd, buf + n, cap - n - 1, 0);
		cr_assert_geq(k, 0, "recv: %s", strerror(errno));
		if (k == 0)
			break;
		n += (size_t)k;
	}
	close(fd);
	buf[n] = '\0';
	cr_assert_eq(sscanf(buf, "HTTP/1.%*d %d", &r->status), 1, "not HTTP: %.200s", buf);
	sep = strstr(buf, "\r\n\r\n");
	cr_assert_not_null(sep);
	snprintf(r->headers, sizeof(r->headers), "%.*s", (int)(sep - buf), buf);
	r->body = strdup(sep + 4);
	cr_assert_not_null(r->body);
	free(buf);
}

static void http_unix(const char *path, const char *method, const char *url,
		      struct http_reply *r)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(fd, 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0, "connect %s: %s", path,
		     strerror(errno));
	http_exchange(fd, method, url, r);
}

static void http_tcp(int port, const char *method, const char *url, struct http_reply *r)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(fd, 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0, "connect :%d: %s", port,
		     strerror(errno));
	http_exchange(fd, method, url, r);
}

static char *scrape(void)
{
	struct http_reply r;

	http_unix(msock, "GET", "/metrics", &r);
	cr_assert_eq(r.status, 200, "GET /metrics: %d\n%s", r.status, r.headers);
	cr_assert(strstr(r.headers, "Content-Type: text/plain; version=0.0.4"), "%s", r.headers);
	return r.body;
}

/* STATS as the real kvprefix-stat --json prints it. */
static cJSON *stat_json(void)
{
	char cmd[512], out[16384];
	cJSON *o;

	snprintf(cmd, sizeof(cmd), "'%s' --json --socket '%s'", KVP_STAT_PATH, d.socket);
	cr_assert_eq(kvp_run_capture(cmd, out, sizeof(out)), 0, "kvprefix-stat failed: %s", out);
	o = cJSON_Parse(out);
	cr_assert(cJSON_IsObject(o), "kvprefix-stat --json: %s", out);
	return o;
}

static double jnum(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	cr_assert(cJSON_IsNumber(v), "STATS has no number %s", key);
	return v->valuedouble;
}

static const cJSON *jns(const cJSON *o, const char *ns)
{
	const cJSON *x, *arr = cJSON_GetObjectItemCaseSensitive(o, "namespaces");

	cr_assert(cJSON_IsArray(arr), "STATS has no namespaces array");
	cJSON_ArrayForEach(x, arr) {
		const cJSON *n = cJSON_GetObjectItemCaseSensitive(x, "namespace");
		if (cJSON_IsString(n) && strcmp(n->valuestring, ns) == 0)
			return x;
	}
	cr_assert_fail("namespace %s not in STATS", ns);
	return NULL;
}

Test(daemon, counters_agree_with_stats, .init = start_unix, .fini = stop)
{
	struct kvp_client *a = conn("lora-a"), *b = conn("lora-b");
	uint32_t t[4 * B];
	struct kvp_match m;
	uint64_t lookups = 0, inserts = 0, qa = 0, ha = 0, qb = 0, hb = 0;
	char ns_a[64], ns_b[64], series[256], out[8192];
	char *text;
	cJSON *st;
	uid_t uid = getuid();

	/* a: insert 3 blocks, look up a longer prompt twice; b: same tokens, own namespace */
	fill(t, 4 * B, 1);
	cr_assert_eq(kvp_client_insert(a, t, 3 * B, 0, &m), 0);
	inserts++;
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(kvp_client_lookup(a, t, 4 * B, 0, &m), 0);
		cr_assert_eq(m.matched_tokens, 3 * B);
		lookups++, qa += 4 * B, ha += m.matched_tokens;
	}
	cr_assert_eq(kvp_client_lookup(b, t, 4 * B, 0, &m), 0);
	cr_assert_eq(m.matched_tokens, 0, "adapters do not share blocks");
	lookups++, qb += 4 * B, hb += m.matched_tokens;
	cr_assert_eq(kvp_client_insert(b, t, B, 0, &m), 0);
	inserts++;
	cr_assert_eq(kvp_client_lookup(b, t, 2 * B, KVP_LOOKUP_PIN, &m), 0);
	lookups++, qb += 2 * B, hb += m.matched_tokens;
	cr_assert_eq(m.matched_tokens, B);
	/* refused: over --max-tokens, and an unknown lease */
	{
		static uint32_t big[5000];
		cr_assert_eq(kvp_client_lookup(b, big, 5000, 0, &m), KVP_ETOOBIG);
		cr_assert_eq(kvp_client_release(b, 999999, NULL), KVP_ENOTFOUND);
	}

	text = scrape();
	st = stat_json();
	snprintf(ns_a, sizeof(ns_a), "%u:lora-a", (unsigned)uid);
	snprintf(ns_b, sizeof(ns_b), "%u:lora-b", (unsigned)uid);

	/* the same figures both ways */
	cr_assert_eq(sample(text, "kvprefix_hit_tokens_total"), jnum(st, "hit_tokens"));
	cr_assert_eq(sample(text, "kvprefix_query_tokens_total"), jnum(st, "query_tokens"));
	cr_assert_eq(sample(text, "kvprefix_queries_total{kind=\"lookup\"}"), jnum(st, "lookups"));
	cr_assert_eq(sample(text, "kvprefix_inserts_total"), jnum(st, "inserts"));
	cr_assert_eq(sample(text, "kvprefix_evictions_total"), jnum(st, "evictions"));
	cr_assert_eq(sample(text, "kvprefix_errors_total"), jnum(st, "errors"));
	cr_assert_eq(sample(text, "kvprefix_pool_blocks{state=\"cached\"}"), jnum(st, "blocks_cached"));
	cr_assert_eq(sample(text, "kvprefix_pool_blocks{state=\"pinned\"}"), jnum(st, "blocks_pinned"));
	cr_assert_eq(sample(text, "kvprefix_pool_blocks{state=\"free\"}"), jnum(st, "blocks_free"));
	{
		static const char *const causes[] = { "new", "evicted_pool", "evicted_quota",
						      "evicted_admin", "other_namespace", "partial" };
		const cJSON *mi = cJSON_GetObjectItemCaseSensitive(st, "misses");
		double missed = 0;
		char name[96];

		for (size_t i = 0; i < sizeof(causes) / sizeof(causes[0]); i++) {
			snprintf(name, sizeof(name), "kvprefix_miss_tokens_total{cause=\"%s\"}",
				 causes[i]);
			cr_assert_eq(sample(text, name), jnum(mi, causes[i]), "%s", name);
			missed += jnum(mi, causes[i]);
		}
		cr_assert_eq(missed + jnum(st, "hit_tokens"), jnum(st, "query_tokens"),
			     "the causes and the hits add up to the query tokens");
		cr_assert_float_eq(sample(text, "kvprefix_larger_pool_hit_tokens_total{pool=\"2x\"}") /
				   jnum(st, "query_tokens"), jnum(st, "hit_rate_if_2x"), 1e-9);
		cr_assert_float_eq(sample(text, "kvprefix_larger_pool_hit_tokens_total{pool=\"4x\"}") /
				   jnum(st, "query_tokens"), jnum(st, "hit_rate_if_4x"), 1e-9);
		cr_assert_eq(sample(text, "kvprefix_diagnostics_bytes"), jnum(st, "diagnostics_bytes"));
	}
	/* and what the test did */
	cr_assert_eq(jnum(st, "lookups"), lookups);
	cr_assert_eq(jnum(st, "inserts"), inserts);
	cr_assert_eq(jnum(st, "query_tokens"), qa + qb);
	cr_assert_eq(jnum(st, "hit_tokens"), ha + hb);
	cr_assert_eq(sample(text, "kvprefix_pool_blocks{state=\"pinned\"}"), 1);

	/* per namespace, in /metrics and in STATS */
	snprintf(series, sizeof(series),
		 "kvprefix_namespace_query_tokens_total{namespace=\"%s\",tenant=\"%u\",adapter=\"lora-a\"}",
		 ns_a, (unsigned)uid);
	cr_assert_eq(sample(text, series), qa, "%s", series);
	snprintf(series, sizeof(series),
		 "kvprefix_namespace_hit_tokens_total{namespace=\"%s\",tenant=\"%u\",adapter=\"lora-a\"}",
		 ns_a, (unsigned)uid);
	cr_assert_eq(sample(text, series), ha);
	snprintf(series, sizeof(series),
		 "kvprefix_namespace_requests_total{namespace=\"%s\",tenant=\"%u\",adapter=\"lora-b\"}",
		 ns_b, (unsigned)uid);
	cr_assert_eq(sample(text, series), 3, "b: 2 lookups + 1 insert (refusals not counted)");
	cr_assert_eq(jnum(jns(st, ns_a), "requests"), 3);
	cr_assert_eq(jnum(jns(st, ns_a), "query_tokens"), qa);
	cr_assert_eq(jnum(jns(st, ns_a), "hit_tokens"), ha);
	cr_assert_float_eq(jnum(jns(st, ns_a), "hit_rate"), (double)ha / (double)qa, 1e-12);
	cr_assert_eq(jnum(jns(st, ns_b), "query_tokens"), qb);
	cr_assert_eq(jnum(jns(st, ns_b), "hit_tokens"), hb);
	cr_assert_eq(jnum(jns(st, ns_a), "requests") + jnum(jns(st, ns_b), "requests"),
		     jnum(st, "requests"));

	/* requests by outcome */
	cr_assert_eq(sample(text, "kvprefix_requests_total{type=\"lookup\",outcome=\"ok\"}"), lookups);
	cr_assert_eq(sample(text, "kvprefix_requests_total{type=\"insert\",outcome=\"ok\"}"), inserts);
	cr_assert_eq(sample(text, "kvprefix_requests_total{type=\"hello\",outcome=\"ok\"}"), 2);
	cr_assert_eq(sample(text, "kvprefix_requests_total{type=\"lookup\",outcome=\"ETOOBIG\"}"), 1);
	cr_assert_eq(sample(text, "kvprefix_requests_total{type=\"release\",outcome=\"ENOTFOUND\"}"), 1);
	cr_assert_eq(sample(text, "kvprefix_errors_total"), 2);

	/* histograms: one observation per lookup and per insert that reached the index */
	cr_assert_eq(check_hist(text, "kvprefix_lookup_duration_seconds", "op=\"lookup\""), lookups);
	cr_assert_eq(check_hist(text, "kvprefix_lookup_duration_seconds", "op=\"insert\""), inserts);
	cr_assert(isnan(sample(text, "kvprefix_ttft_seconds_count")), "no TTFT without an engine");
	cr_assert(cJSON_IsNumber(cJSON_GetObjectItem(st, "lookup_us_p99")));
	cr_assert(cJSON_IsNull(cJSON_GetObjectItem(st, "ttft_us_p50")));

	if (have_promtool())
		cr_assert_eq(promtool_check(text, out, sizeof(out)), 0, "promtool: %s", out);
	cJSON_Delete(st);
	free(text);
	kvp_client_close(a);
	kvp_client_close(b);
}

Test(daemon, promtool_accepts_the_page, .fini = stop)
{
	struct kvp_client *a;
	uint32_t t[2 * B];
	struct kvp_match m;
	char out[8192], *text;

	/* before the daemon starts: criterion runs no .fini after a skip */
	if (!have_promtool())
		cr_skip("promtool is not installed (Debian package prometheus; scripts/setup.sh "
			"installs it where apt has it): the exposition format is not checked");
	start_unix();
	a = conn("x\"y\\z");
	fill(t, 2 * B, 3);
	cr_assert_eq(kvp_client_insert(a, t, 2 * B, 0, &m), 0);
	cr_assert_eq(kvp_client_lookup(a, t, 2 * B, 0, &m), 0);
	text = scrape();
	cr_assert(strstr(text, "adapter=\"x\\\"y\\\\z\""), "escaped adapter missing:\n%s", text);
	cr_assert_eq(promtool_check(text, out, sizeof(out)), 0, "promtool: %s\n%s", out, text);
	free(text);
	kvp_client_close(a);
}

Test(daemon, namespaces_beyond_32_are_other, .init = start_unix, .fini = stop)
{
	uint32_t t[B];
	struct kvp_match m;
	char name[32], *text;
	cJSON *st;

	fill(t, B, 5);
	for (int i = 0; i < KVP_NS_TRACKED_MAX + 3; i++) {
		struct kvp_client *c;

		snprintf(name, sizeof(name), "adapter-%02d", i);
		c = conn(name);
		cr_assert_eq(kvp_client_lookup(c, t, B, 0, &m), 0);
		kvp_client_close(c);
	}
	text = scrape();
	cr_assert_eq(sample(text, "kvprefix_namespaces_tracked"), KVP_NS_TRACKED_MAX);
	cr_assert_eq(sample(text, "kvprefix_namespace_requests_total{namespace=\"other\",tenant=\"\",adapter=\"\"}"), 3);
	st = stat_json();
	cr_assert_eq(jnum(st, "namespaces_tracked"), KVP_NS_TRACKED_MAX);
	cr_assert_eq(jnum(jns(st, "other"), "requests"), 3, "other leads the top 10 with 3");
	cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(st, "namespaces")), 10);
	cJSON_Delete(st);
	free(text);
}

Test(daemon, http_status_codes, .init = start_unix, .fini = stop)
{
	struct http_reply r;

	http_unix(msock, "GET", "/", &r);
	cr_assert_eq(r.status, 404);
	free(r.body);
	http_unix(msock, "GET", "/metricsx", &r);
	cr_assert_eq(r.status, 404);
	free(r.body);
	http_unix(msock, "POST", "/metrics", &r);
	cr_assert_eq(r.status, 405);
	cr_assert(strstr(r.headers, "Allow: GET, HEAD"), "%s", r.headers);
	free(r.body);
	http_unix(msock, "DELETE", "/metrics", &r);
	cr_assert_eq(r.status, 405);
	free(r.body);
	http_unix(msock, "HEAD", "/metrics", &r);
	cr_assert_eq(r.status, 200);
	cr_assert_str_eq(r.body, "", "HEAD has no body");
	free(r.body);
	http_unix(msock, "GET", "/metrics?x=1", &r);
	cr_assert_eq(r.status, 200);
	cr_assert(strstr(r.body, "# TYPE kvprefix_hit_tokens_total counter\n"));
	free(r.body);
}

Test(daemon, unix_socket_removed_on_exit, .init = start_unix, .fini = stop)
{
	struct stat st;

	cr_assert_eq(stat(msock, &st), 0);
	cr_assert(S_ISSOCK(st.st_mode));
	cr_assert_eq(st.st_mode & 0777, 0660);
	cr_assert_eq(kvp_daemon_stop(&d), 0);
	cr_assert_neq(lstat(msock, &st), 0, "the metrics socket outlived the daemon");
}

/* A free TCP port: bind port 0, read it back, close (the daemon binds it next). */
static int free_port(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t sl = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port;

	cr_assert_geq(fd, 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
	port = ntohs(sa.sin_port);
	close(fd);
	return port;
}

Test(daemon, tcp_listen, .fini = stop)
{
	char listen_on[64];
	const char *args[] = { "--block-tokens", "16", "--capacity-blocks", "64",
			       "--metrics-listen", listen_on, NULL };
	struct kvp_client *c;
	struct http_reply r;
	uint32_t t[B];
	struct kvp_match m;
	int port = 0, tries;

	/* another process may take the port between our close and the daemon's bind */
	for (tries = 0; tries < 5; tries++) {
		port = free_port();
		snprintf(listen_on, sizeof(listen_on), "127.0.0.1:%d", port);
		if (kvp_daemon_start(&d, args) == 0)
			break;
		(void)kvp_daemon_stop(&d);
	}
	cr_assert_lt(tries, 5, "kvprefixd did not start with --metrics-listen %s", listen_on);
	c = conn(NULL);
	fill(t, B, 9);
	cr_assert_eq(kvp_client_lookup(c, t, B, 0, &m), 0);
	http_tcp(port, "GET", "/metrics", &r);
	cr_assert_eq(r.status, 200);
	cr_assert_eq(sample(r.body, "kvprefix_queries_total{kind=\"lookup\"}"), 1);
	cr_assert_eq(sample(r.body, "kvprefix_query_tokens_total"), B);
	free(r.body);
	kvp_client_close(c);
}

Test(daemon, bad_listen_address_is_refused)
{
	static const char *const bad[] = { "nonsense", "127.0.0.1:99999", "::1:80", "host:" };

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const char *args[] = { "--metrics-listen", bad[i], NULL };

		cr_assert_neq(kvp_daemon_start(&d, args), 0, "started with --metrics-listen %s", bad[i]);
		cr_assert_neq(kvp_daemon_stop(&d), 0);
	}
}

/* kvprefix-stat --watch: a live view with the pool bar and the namespaces. */
Test(daemon, stat_watch_live_view, .init = start_unix, .fini = stop)
{
	struct kvp_client *a = conn("chat");
	uint32_t t[4 * B];
	struct kvp_match m;
	char cmd[512], out[65536], *bar, *end;
	int rc;

	fill(t, 4 * B, 11);
	cr_assert_eq(kvp_client_insert(a, t, 4 * B, 0, &m), 0);
	cr_assert_eq(kvp_client_lookup(a, t, 4 * B, KVP_LOOKUP_PIN, &m), 0);
	snprintf(cmd, sizeof(cmd), "timeout -s INT 1.2 '%s' --watch 0.3 --socket '%s'",
		 KVP_STAT_PATH, d.socket);
	rc = kvp_run_capture(cmd, out, sizeof(out));
	cr_assert(rc == 124 || rc == 130 || rc == 0, "kvprefix-stat --watch: %d\n%s", rc, out);
	cr_assert_null(strstr(out, "\033["), "no escape codes when stdout is not a terminal");
	cr_assert(strstr(out, "last 0."), "no interval column:\n%s", out);
	bar = strstr(out, "pool [");
	cr_assert_not_null(bar, "no pool bar:\n%s", out);
	bar += strlen("pool [");
	end = strchr(bar, ']');
	cr_assert_not_null(end);
	cr_assert_eq(end - bar, 50, "the bar is 50 columns: %.60s", bar);
	/* 4 of 64 blocks cached and pinned by the lease: '=' shows, then '.' */
	cr_assert_eq(bar[0], '=', "%.60s", bar);
	cr_assert_eq(end[-1], '.', "%.60s", bar);
	cr_assert(strstr(out, ":chat "), "namespace missing:\n%s", out);
	cr_assert(strstr(out, "req/s"), "%s", out);
	kvp_client_close(a);
}

/* Sparkline columns of the line at s: block characters (U+2581..U+2588) counted, with
 * how many are the lowest and the highest. */
struct spark_cols {
	int n, low, high;
};

static struct spark_cols spark_count(const char *s)
{
	struct spark_cols c = { 0 };

	for (; *s && *s != '\n'; s++) {
		if ((unsigned char)s[0] == 0xe2 && (unsigned char)s[1] == 0x96 &&
		    (unsigned char)s[2] >= 0x81 && (unsigned char)s[2] <= 0x88) {
			c.n++;
			c.low += (unsigned char)s[2] == 0x81;
			c.high += (unsigned char)s[2] == 0x88;
			s += 2;
		}
	}
	return c;
}

/* The first refresh of kvprefix-stat's table at or after s: its "kvprefixd VERSION"
 * line; NULL if none. */
static const char *refresh_at(const char *out, const char *s)
{
	for (; (s = strstr(s, "kvprefixd ")); s++)
		if (s == out || s[-1] == '\n')
			return s;
	return NULL;
}

/* The line after the one at s, or NULL. */
static const char *next_line(const char *s)
{
	s = s ? strchr(s, '\n') : NULL;
	return s ? s + 1 : NULL;
}

/* kvprefix-stat --watch 0.2 in a UTF-8 locale while this test looks prefixes up: 4
 * intervals of hits, then 4 of misses. Each refresh after the first shows the history:
 * a column per interval so far, the hit rate full, then at the bottom. */
Test(daemon, stat_watch_history_sparklines, .init = start_unix, .fini = stop, .timeout = 60)
{
	enum { REFRESHES = 9, CAP = 1 << 18 };
	struct kvp_client *a = conn("chat");
	uint32_t t[4 * B], miss[4 * B];
	struct kvp_match m;
	char *out = malloc(CAP);
	size_t len = 0;
	int fds[2], st, seen = 0, seed = 100;
	pid_t pid;

	cr_assert_not_null(out);
	fill(t, 4 * B, 11);
	cr_assert_eq(kvp_client_insert(a, t, 4 * B, 0, &m), 0);
	cr_assert_eq(pipe(fds), 0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		dup2(fds[1], STDOUT_FILENO);
		close(fds[0]);
		close(fds[1]);
		setenv("LC_ALL", "C.UTF-8", 1);
		execl(KVP_STAT_PATH, KVP_STAT_PATH, "--watch", "0.2", "--socket", d.socket,
		      (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	/* a lookup every 10 ms; which kind by the refreshes printed so far */
	while (seen < REFRESHES) {
		struct pollfd pf = { .fd = fds[0], .events = POLLIN };
		ssize_t n;

		if (poll(&pf, 1, 10) > 0) {
			n = read(fds[0], out + len, CAP - 1 - len);
			cr_assert_gt(n, 0, "kvprefix-stat ended early:\n%.*s", (int)len, out);
			len += (size_t)n;
			out[len] = '\0';
			seen = 0;
			for (const char *p = out; (p = refresh_at(out, p)); p++)
				seen++;
		}
		if (seen <= 4) {
			cr_assert_eq(kvp_client_lookup(a, t, 4 * B, 0, &m), 0);
		} else {
			fill(miss, 4 * B, (uint32_t)seed++);
			miss[0] = 5000;   /* fill() stays below 1000: never t's first block */
			cr_assert_eq(kvp_client_lookup(a, miss, 4 * B, 0, &m), 0);
		}
	}
	kill(pid, SIGINT);
	for (ssize_t n; len < CAP - 1 && (n = read(fds[0], out + len, CAP - 1 - len)) > 0;)
		len += (size_t)n;
	out[len] = '\0';
	close(fds[0]);
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFSIGNALED(st) || WIFEXITED(st), "%d", st);

	/* refresh k (from 0) shows k columns: none in the first, then one more each time */
	{
		const char *p = out;
		int k = 0;

		for (; (p = refresh_at(out, p)) && k < REFRESHES; p++, k++) {
			const char *end = refresh_at(out, p + 1);
			const char *h = strstr(p, "\n  history   last ");

			if (k == 0) {
				cr_assert(!h || (end && h > end), "history before an interval:\n%s", out);
				continue;
			}
			cr_assert(h && (!end || h < end), "refresh %d has no history:\n%s", k, out);
			h = next_line(h + 1);
			cr_assert(h && strncmp(h, "  hit rate ", 11) == 0, "%.200s", h);
			cr_assert_leq(spark_count(h).n, k, "%.300s", h);
			h = next_line(h);
			cr_assert(h && strncmp(h, "  req/s ", 8) == 0, "%.200s", h);
			cr_assert_eq(spark_count(h).n, k, "refresh %d:\n%.300s", k, h);
		}
		cr_assert_eq(k, REFRESHES, "%s", out);
	}
	/* the last history: 8 intervals of 0.2 s and a little more each; hits drawn full,
	 * misses at the bottom */
	{
		const char *last = NULL, *h;
		struct spark_cols hit;
		double span;

		for (const char *p = out; (p = strstr(p, "\n  history   last ")); p++)
			last = p;
		cr_assert_not_null(last);
		span = strtod(last + strlen("\n  history   last "), NULL);
		cr_assert(span >= 1.6 && span < 8, "%.100s", last);
		h = next_line(last + 1);
		hit = spark_count(h);
		cr_assert_geq(hit.high, 1, "no interval of hits drawn full:\n%.300s", h);
		cr_assert_geq(hit.low, 1, "no interval of misses at the bottom:\n%.300s", h);
	}
	free(out);
	kvp_client_close(a);
}

/* Outside a UTF-8 locale, and with --ascii, the history is drawn in ASCII. */
Test(daemon, stat_watch_history_in_ascii, .init = start_unix, .fini = stop)
{
	static const char *const how[][2] = { { "LC_ALL=C.UTF-8", "--ascii" }, { "LC_ALL=C", "" } };
	char cmd[512], out[65536];

	for (size_t i = 0; i < sizeof(how) / sizeof(how[0]); i++) {
		const char *h;
		int rc;

		snprintf(cmd, sizeof(cmd), "%s timeout -s INT 1.1 '%s' --watch 0.2 --socket '%s' %s",
			 how[i][0], KVP_STAT_PATH, d.socket, how[i][1]);
		rc = kvp_run_capture(cmd, out, sizeof(out));
		cr_assert(rc == 124 || rc == 130 || rc == 0, "%s: %d\n%s", cmd, rc, out);
		for (const char *p = out; *p; p++)
			cr_assert_lt((unsigned char)*p, 0x80, "%s: a byte not ASCII:\n%s", cmd, out);
		h = strstr(out, "\n  history   last ");
		cr_assert_not_null(h, "%s: no history:\n%s", cmd, out);
		h = next_line(next_line(h + 1));
		/* no requests: every interval at the bottom */
		cr_assert(h && strncmp(h, "  req/s ", 8) == 0 && strstr(h, "_  0.0/s"),
			  "%s:\n%.300s", cmd, h ? h : out);
	}
}

/* The interval_s of each line of kvprefix-stat --json --watch output; how many lines. */
static int watch_intervals(const char *out, double *iv, int cap)
{
	int n = 0;

	for (const char *p = out; (p = strstr(p, "\"interval_s\":")) && n < cap; p++)
		iv[n++] = strtod(p + strlen("\"interval_s\":"), NULL);
	return n;
}

/* --watch without a value refreshes every second, as watch(1) does; with one, as asked. */
Test(daemon, stat_watch_without_a_value_refreshes_every_second, .init = start_unix,
     .fini = stop)
{
	static const char *const forms[] = { "--watch", "-w", "--watch 0.3", "-w 0.3",
					     "--watch=0.3" };
	char cmd[512], out[16384];
	double iv[16];
	int rc, n;

	for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
		bool dflt = strchr(forms[i], '3') == NULL;

		/* the option last, where a value-taking --watch would find none */
		snprintf(cmd, sizeof(cmd), "timeout -s INT %s '%s' --json --socket '%s' %s 2>&1",
			 dflt ? "2.5" : "1.1", KVP_STAT_PATH, d.socket, forms[i]);
		rc = kvp_run_capture(cmd, out, sizeof(out));
		cr_assert(rc == 124 || rc == 130 || rc == 0, "kvprefix-stat %s: exit %d\n%s",
			  forms[i], rc, out);
		n = watch_intervals(out, iv, 16);
		cr_assert_geq(n, 1, "kvprefix-stat %s: no second refresh\n%s", forms[i], out);
		for (int k = 0; k < n; k++)
			cr_assert(dflt ? iv[k] > 0.9 && iv[k] < 1.5 : iv[k] > 0.2 && iv[k] < 0.6,
				  "kvprefix-stat %s: refreshed after %.3f s\n%s", forms[i], iv[k], out);
	}
	/* a value that is not a number of seconds is still refused */
	snprintf(cmd, sizeof(cmd), "'%s' --socket '%s' --watch 0 2>&1", KVP_STAT_PATH, d.socket);
	cr_assert_eq(kvp_run_capture(cmd, out, sizeof(out)), 2, "%s", out);
	cr_assert(strstr(out, "--watch '0'"), "%s", out);
}

/* ---- engine mode: TTFT ----------------------------------------------------- */

static const char *small_model(void)
{
	return kvp_test_model("small", "--vocab 1024 --dim 128 --layers 2 --heads 4 --kv-heads 2 "
			      "--ffn 256 --ctx 2048 --dtype f32 --seed 7 --weight-std 0.08");
}

Test(engine, ttft_and_generation_counters, .fini = stop, .timeout = 300)
{
	const char *args[] = { "--model", small_model(), "--kv-dtype", "f32", "--block-tokens", "16",
			       "--threads", "2", "--capacity-blocks", "256", "--metrics-listen", msock,
			       NULL };
	struct kvp_generate_params p;
	struct kvp_usage u;
	uint64_t generated = 0, cached = 0;
	uint32_t t[3 * B];
	char *text, series[256], out[8192];
	cJSON *st;
	int runs = 0;

	snprintf(mdir, sizeof(mdir), "/tmp/kvp-met-XXXXXX");
	cr_assert_not_null(mkdtemp(mdir));
	snprintf(msock, sizeof(msock), "%s/metrics.sock", mdir);
	cr_assert_eq(kvp_daemon_start(&d, args), 0, "kvprefixd did not start");
	kvp_generate_params_init(&p);
	p.max_new = 4;
	fill(t, 3 * B, 21);
	for (int k = 0; k < 2; k++) {
		struct kvp_client *c = conn(k ? "lora-b" : "lora-a");

		for (int i = 0; i < 2; i++) {
			cr_assert_eq(kvp_client_generate(c, t, 3 * B, &p, NULL, NULL, &u), 0,
				     "generate: %s", kvp_client_error(c));
			generated += u.generated_tokens;
			cached += u.cached_tokens;
			runs++;
		}
		kvp_client_close(c);
	}
	text = scrape();
	st = stat_json();
	cr_assert_eq(check_hist(text, "kvprefix_ttft_seconds", ""), (uint64_t)runs);
	cr_assert_eq(sample(text, "kvprefix_requests_total{type=\"generate\",outcome=\"ok\"}"), runs);
	cr_assert_eq(sample(text, "kvprefix_queries_total{kind=\"generate\"}"), runs);
	cr_assert_eq(sample(text, "kvprefix_generated_tokens_total"), generated);
	cr_assert_eq(sample(text, "kvprefix_generated_tokens_total"), jnum(st, "generated_tokens"));
	cr_assert_eq(sample(text, "kvprefix_computed_tokens_total"), jnum(st, "computed_tokens"));
	cr_assert_gt(cached, 0, "the second run of each adapter hits the cache");
	snprintf(series, sizeof(series),
		 "kvprefix_namespace_generated_tokens_total{namespace=\"%u:lora-b\",tenant=\"%u\",adapter=\"lora-b\"}",
		 (unsigned)getuid(), (unsigned)getuid());
	cr_assert_eq(sample(text, series), generated / 2, "%s", series);
	/* namespaces add up to the totals */
	{
		double sum_c = 0, sum_q = 0;
		const char *fam = "kvprefix_namespace_computed_tokens_total{";
		const char *famq = "kvprefix_namespace_query_tokens_total{";

		for (const char *q = text; q && *q; q = strchr(q, '\n') ? strchr(q, '\n') + 1 : NULL) {
			if (strncmp(q, fam, strlen(fam)) == 0)
				sum_c += strtod(strchr(q, '}') + 2, NULL);
			if (strncmp(q, famq, strlen(famq)) == 0)
				sum_q += strtod(strchr(q, '}') + 2, NULL);
		}
		cr_assert_eq(sum_c, jnum(st, "computed_tokens"));
		cr_assert_eq(sum_q, jnum(st, "query_tokens"));
	}
	/* the scheduler: every generation admitted, every step in the histogram, as STATS */
	{
		const cJSON *sc = cJSON_GetObjectItem(st, "scheduler");
		uint64_t steps = check_hist(text, "kvprefix_step_rows", "");

		cr_assert_not_null(sc, "STATS has no scheduler in engine mode");
		cr_assert_eq(sample(text, "kvprefix_admitted_total"), runs);
		cr_assert_eq(jnum(sc, "admitted"), runs);
		cr_assert_geq(steps, (uint64_t)runs, "at least a step per generation");
		cr_assert_leq((double)steps, jnum(sc, "steps"), "STATS read later, not fewer");
		cr_assert_eq(sample(text, "kvprefix_sequences{state=\"waiting\"}"), 0);
		cr_assert_eq(sample(text, "kvprefix_preemptions_total"), 0);
	}
	cr_assert(cJSON_IsNumber(cJSON_GetObjectItem(st, "ttft_us_p50")), "ttft_us_p50 after runs");
	cr_assert(cJSON_IsNumber(cJSON_GetObjectItem(st, "ttft_us_p99")));
	cr_assert_geq(jnum(st, "ttft_us_p99"), jnum(st, "ttft_us_p50"));
	if (have_promtool())
		cr_assert_eq(promtool_check(text, out, sizeof(out)), 0, "promtool: %s", out);
	cJSON_Delete(st);
	free(text);
}
