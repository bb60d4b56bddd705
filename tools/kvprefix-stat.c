/*
 * kvprefix-stat.c - show kvprefixd's statistics (STATS, a JSON object) as a table.
 *
 *   kvprefix-stat [--socket PATH] [--json] [--watch [SECONDS]] [--ascii]
 *
 * --json prints the daemon's object through unchanged (one line). --watch N refreshes
 * every N seconds (--watch alone: every second, as watch(1)) and becomes a live view:
 * the last interval beside the lifetime figures (token hit rate, request hit rate,
 * requests/s), the history of the last HIST_SAMPLES intervals' token hit rate and
 * requests/s as sparklines (sparkline.h; block characters in a UTF-8 locale, ASCII
 * otherwise or with --ascii), the pool as a bar, and the namespaces with the most
 * requests over the interval; --json prints one object per
 * refresh with interval_s, interval_hit_rate and interval_requests_per_s added. The
 * screen is cleared between refreshes only when stdout is a terminal.
 *
 *   history   last 12.0s (a column an interval); hit rate 0-100%, req/s 0-9.5/s
 *   hit rate                                                ▂▄▆█▇▆▅  50.00%
 *   req/s                                                   ▁▃▅▇██▇  8.1/s
 *
 *   pool   [#########=====...................................]  50 columns
 *           cached    pinned  free            (each state that has a block shows)
 *
 * Namespaces over an interval: the daemon lists its top 10 namespaces by lifetime
 * requests; a namespace's interval is its difference from the previous list. One that
 * was not in that list counts from 0 when the list was complete (fewer than 10), and is
 * shown as "-" otherwise (it may have been just outside the top 10).
 *
 * Keys this tool reads (unknown keys are ignored, a missing one is shown as "-"):
 * version mode name block_tokens uptime_s requests lookups lookup_hits
 * request_hit_rate inserts query_tokens hit_tokens hit_rate insert_tokens
 * inserted_blocks insert_full evictions blocks_total blocks_free blocks_cached
 * blocks_pinned tree_nodes leases_active connections connections_total errors
 * ttft_us_p50 ttft_us_p99 lookup_us_p99 namespaces (namespace requests query_tokens
 * hit_tokens hit_rate).
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <langinfo.h>
#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kvprefix.h"
#include "sparkline.h"
#include "util.h"

#define PROG "kvprefix-stat"
#define WATCH_MAX_S 86400.0
#define WATCH_DEFAULT_S 1.0   /* --watch without a value */
#define STAT_TIMEOUT_MS 30000u
#define BAR_COLS 50
#define NS_SHOWN 5            /* namespaces in the table */
#define NS_LISTED 10          /* namespaces the daemon lists (top by requests) */
#define NS_NAME_COLS 28
#define HIST_SAMPLES 60       /* intervals in --watch's history, a column each */

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: kvprefix-stat [--socket PATH] [--server-uid UID] [--json]\n"
		"                     [--watch [SECONDS]] [--ascii]\n"
		"Show kvprefixd's hit rates and block pool state.\n"
		"\n"
		"  -s, --socket PATH      daemon socket (default: the library's default)\n"
		"      --server-uid UID   also trust a kvprefixd that runs as UID (else: root,\n"
		"                         you, the kvprefix user or $KVP_SERVER_UID)\n"
		"  -j, --json             print the daemon's statistics as one JSON object\n"
		"  -w, --watch [SECONDS]  refresh every SECONDS (default 1; e.g. 0.5): a live\n"
		"                         view of the last interval beside the lifetime\n"
		"                         figures, the hit rate and requests/s of the last\n"
		"                         60 intervals as sparklines, the pool as a bar and\n"
		"                         the busiest namespaces; with --json, one object\n"
		"                         per line per refresh\n"
		"      --ascii            draw the sparklines in ASCII (the default outside\n"
		"                         a UTF-8 locale)\n"
		"  -h, --help             show this help\n"
		"\n"
		"Hit rate = hit tokens / query tokens over lookups. Exit status: 0 ok,\n"
		"1 daemon or I/O error, 2 usage error.\n");
}

/* One snapshot: the parsed object and when it was taken. */
struct snap {
	cJSON *o;
	uint64_t t_ns;
};

/* Number under key, or NAN when missing or not a number. */
static double num(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static const char *str(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* An integer-looking count, a plain number, or "-". */
static const char *fmt_count(char *buf, size_t cap, double v)
{
	if (isnan(v))
		snprintf(buf, cap, "-");
	else if (floor(v) == v && fabs(v) < 1e18)
		snprintf(buf, cap, "%.0f", v);
	else
		snprintf(buf, cap, "%.3f", v);
	return buf;
}

static const char *fmt_pct(char *buf, size_t cap, double v)
{
	if (isnan(v) || isinf(v))
		snprintf(buf, cap, "-");
	else
		snprintf(buf, cap, "%.2f%%", v * 100.0);
	return buf;
}

static const char *fmt_rate(char *buf, size_t cap, double v)
{
	if (isnan(v) || isinf(v))
		snprintf(buf, cap, "-");
	else
		snprintf(buf, cap, "%.1f/s", v);
	return buf;
}

static const char *fmt_uptime(char *buf, size_t cap, double s)
{
	unsigned long long t;

	if (isnan(s) || s < 0) {
		snprintf(buf, cap, "-");
		return buf;
	}
	t = (unsigned long long)s;
	if (t >= 86400)
		snprintf(buf, cap, "%llud %02lluh %02llum %02llus", t / 86400, t / 3600 % 24,
			 t / 60 % 60, t % 60);
	else
		snprintf(buf, cap, "%lluh %02llum %02llus", t / 3600, t / 60 % 60, t % 60);
	return buf;
}

/* a/b with NAN for a missing value or a zero denominator. */
static double ratio(double a, double b)
{
	if (isnan(a) || isnan(b) || b <= 0)
		return NAN;
	return a / b;
}

/* Difference of key between two snapshots (NAN when either lacks it). */
static double delta(const struct snap *cur, const struct snap *prev, const char *key)
{
	return num(cur->o, key) - num(prev->o, key);
}

struct interval {
	bool have;
	double secs, hit_rate, req_hit_rate, req_per_s;
};

static struct interval interval_of(const struct snap *cur, const struct snap *prev)
{
	struct interval iv = { 0 };

	if (!prev || !prev->o)
		return iv;
	iv.have = true;
	iv.secs = (double)(cur->t_ns - prev->t_ns) / 1e9;
	iv.hit_rate = ratio(delta(cur, prev, "hit_tokens"), delta(cur, prev, "query_tokens"));
	iv.req_hit_rate = ratio(delta(cur, prev, "lookup_hits") + delta(cur, prev, "generation_hits"),
				delta(cur, prev, "lookups") + delta(cur, prev, "generations"));
	iv.req_per_s = ratio(delta(cur, prev, "requests"), iv.secs);
	return iv;
}

/* --watch's history: an interval's token hit rate (a gap when it had no queries) and
 * request rate, the last HIST_SAMPLES of each. */
struct history {
	struct kvp_spark hit, rps;
	enum kvp_spark_style style;
};

static void history_add(struct history *h, const struct interval *iv)
{
	if (!iv->have)
		return;
	kvp_spark_push(&h->hit, iv->hit_rate, iv->secs);
	kvp_spark_push(&h->rps, iv->req_per_s, iv->secs);
}

/* Block characters when the locale's character set is UTF-8, else ASCII. Called after
 * setlocale(LC_CTYPE, ""). */
static enum kvp_spark_style style_of_locale(void)
{
	const char *cs = nl_langinfo(CODESET);

	return cs && (strcmp(cs, "UTF-8") == 0 || strcmp(cs, "utf8") == 0) ? KVP_SPARK_UTF8 :
		KVP_SPARK_ASCII;
}

/* The two sparklines, once there is an interval: the hit rate on 0-100%, requests/s
 * from 0 to the highest rate shown; the newest interval on the right. */
static void print_history(const struct history *h)
{
	char line[KVP_SPARK_BUF(HIST_SAMPLES)], span[32], a[32], b[32];

	if (!h || h->hit.n == 0)
		return;
	printf("  %-9s last %s (a column an interval); hit rate 0-100%%, req/s 0-%s\n",
	       "history", kvp_spark_fmt_span(span, sizeof(span), kvp_spark_span(&h->hit)),
	       fmt_rate(a, sizeof(a), kvp_spark_max(&h->rps)));
	kvp_spark_render(&h->hit, HIST_SAMPLES, 0, 1, h->style, line, sizeof(line));
	printf("  %-9s %s  %s\n", "hit rate", line,
	       fmt_pct(b, sizeof(b), kvp_spark_last(&h->hit)));
	kvp_spark_render(&h->rps, HIST_SAMPLES, 0, NAN, h->style, line, sizeof(line));
	printf("  %-9s %s  %s\n", "req/s", line,
	       fmt_rate(b, sizeof(b), kvp_spark_last(&h->rps)));
}

static const char *fmt_us(char *buf, size_t cap, double us)
{
	if (isnan(us) || us < 0)
		snprintf(buf, cap, "-");
	else if (us >= 1e6)
		snprintf(buf, cap, "%.2f s", us / 1e6);
	else if (us >= 1e3)
		snprintf(buf, cap, "%.2f ms", us / 1e3);
	else
		snprintf(buf, cap, "%.1f us", us);
	return buf;
}

/*
 * Split cols columns among n values in proportion (largest remainder), then give each
 * non-zero value at least one column, taken from the widest. Sum of out[] == cols.
 */
static void bar_split(const double *v, int n, int cols, int *out)
{
	double total = 0, rem[8];
	int used = 0;

	for (int i = 0; i < n; i++)
		total += v[i] > 0 ? v[i] : 0;
	for (int i = 0; i < n; i++) {
		double exact = total > 0 && v[i] > 0 ? v[i] / total * cols : 0;

		out[i] = (int)exact;
		rem[i] = exact - out[i];
		used += out[i];
	}
	while (total > 0 && used < cols) {
		int best = 0;

		for (int i = 1; i < n; i++)
			if (rem[i] > rem[best])
				best = i;
		out[best]++;
		rem[best] = -1;
		used++;
	}
	for (int i = 0; i < n; i++) {
		int widest = 0;

		if (!(v[i] > 0) || out[i] > 0)
			continue;
		for (int j = 1; j < n; j++)
			if (out[j] > out[widest])
				widest = j;
		if (out[widest] > 1) {
			out[widest]--;
			out[i]++;
		}
	}
}

/* [#### cached ==== pinned .... free], BAR_COLS wide, with a legend. */
static void print_pool_bar(const cJSON *o)
{
	static const char glyph[3] = { '#', '=', '.' };
	double total = num(o, "blocks_total");
	double v[3] = { num(o, "blocks_cached"), num(o, "blocks_pinned"), num(o, "blocks_free") };
	char bar[BAR_COLS + 1], a[32], b[32], c[32];
	int cols[3], k = 0;

	if (isnan(total) || total <= 0 || isnan(v[0]) || isnan(v[1]) || isnan(v[2]))
		return;
	bar_split(v, 3, BAR_COLS, cols);
	for (int i = 0; i < 3; i++)
		for (int j = 0; j < cols[i] && k < BAR_COLS; j++)
			bar[k++] = glyph[i];
	while (k < BAR_COLS)
		bar[k++] = ' ';
	bar[k] = '\0';
	printf("  pool [%s]\n", bar);
	printf("       # cached %s   = pinned %s   . free %s\n",
	       fmt_pct(a, sizeof(a), v[0] / total), fmt_pct(b, sizeof(b), v[1] / total),
	       fmt_pct(c, sizeof(c), v[2] / total));
}

/* Why query tokens missed (STATS "misses", as shares of the query tokens), and the
 * hit rate a pool 2x and 4x as large would have had. Nothing from a daemon too old to
 * say. */
static void print_misses(const cJSON *o)
{
	static const char *const causes[][2] = {
		{ "new", "new" }, { "evicted (room)", "evicted_pool" },
		{ "evicted (quota)", "evicted_quota" }, { "evicted (admin)", "evicted_admin" },
		{ "other namespace", "other_namespace" }, { "partial block", "partial" },
	};
	const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "misses");
	double q = num(o, "query_tokens");
	char a[32], b[32], c[32];

	if (!cJSON_IsObject(m))
		return;
	printf("\n  tokens missed, by cause (share of query tokens)\n");
	for (size_t i = 0; i < sizeof(causes) / sizeof(causes[0]); i++) {
		double v = num(m, causes[i][1]);

		if (!isnan(v))   /* other_namespace: root and the admin group only */
			printf("  %-18s %14s %10s\n", causes[i][0], fmt_count(a, sizeof(a), v),
			       fmt_pct(b, sizeof(b), ratio(v, q)));
	}
	printf("  hit rate if the pool were 2x %s, 4x %s (estimate; memory %s bytes)\n",
	       fmt_pct(a, sizeof(a), num(o, "hit_rate_if_2x")),
	       fmt_pct(b, sizeof(b), num(o, "hit_rate_if_4x")),
	       fmt_count(c, sizeof(c), num(o, "diagnostics_bytes")));
}

/* The tiers below the pool, each with its option only: what the host RAM and disk
 * tiers hold, what went down and came back, what was refused; Redis's writes, fetches
 * and connection. */
static void print_tiers(const cJSON *o)
{
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "tiers"), *r;
	static const char *const names[2] = { "host", "disk" };
	char a[32], b[32], c[32], e[32], f[32], g[32];

	for (int i = 0; i < 2; i++) {
		const cJSON *d = cJSON_GetObjectItemCaseSensitive(t, names[i]);

		if (!cJSON_IsObject(d))
			continue;
		printf("\n  %s tier (blocks) %*s %10s %10s %10s\n", names[i], 7, "held", "of", "written",
		       "read back");
		printf("  %-18s %7s %10s %10s %10s\n", "", fmt_count(a, sizeof(a), num(d, "blocks")),
		       fmt_count(b, sizeof(b), num(d, "capacity_blocks")),
		       fmt_count(c, sizeof(c), num(d, "demotions")),
		       fmt_count(e, sizeof(e), num(d, "promoted_blocks")));
		printf("  dropped %s, evicted %s, failed checks %s, found at start %s\n",
		       fmt_count(a, sizeof(a), num(d, "dropped")),
		       fmt_count(b, sizeof(b), num(d, "evictions")),
		       fmt_count(c, sizeof(c), num(d, "verify_failures")),
		       fmt_count(e, sizeof(e), num(d, "warm_blocks")));
	}
	r = cJSON_GetObjectItemCaseSensitive(t, "redis");
	if (!cJSON_IsObject(r))
		return;
	printf("\n  redis tier (%s): written %s, dropped %s; %s round trips (%s mean), %s blocks "
	       "used, failed checks %s\n",
	       cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "connected")) ? "connected" : "down",
	       fmt_count(a, sizeof(a), num(r, "writes")), fmt_count(b, sizeof(b), num(r, "dropped")),
	       fmt_count(c, sizeof(c), num(r, "round_trips")),
	       fmt_us(e, sizeof(e), num(r, "fetch_us_mean")),
	       fmt_count(f, sizeof(f), num(r, "promoted_blocks")),
	       fmt_count(g, sizeof(g), num(r, "verify_failures")));
}

/* KV events published (--kv-events) and the fleet index (--kv-events-sub), each with
 * its option only. */
static void print_events(const cJSON *o)
{
	const cJSON *k = cJSON_GetObjectItemCaseSensitive(o, "kv_events");
	const cJSON *f = cJSON_GetObjectItemCaseSensitive(o, "fleet");
	char a[32], b[32], c[32], d[32], e[32];

	if (cJSON_IsObject(k))
		printf("\n  kv events: %s batches (%s events) published, %s dropped; %s replays "
		       "(%s batches)\n",
		       fmt_count(a, sizeof(a), num(k, "batches")),
		       fmt_count(b, sizeof(b), num(k, "events")),
		       fmt_count(c, sizeof(c), num(k, "dropped")),
		       fmt_count(d, sizeof(d), num(k, "replays")),
		       fmt_count(e, sizeof(e), num(k, "replayed")));
	if (!cJSON_IsObject(f))
		return;
	printf("\n  fleet index: %s engines, %s blocks; %s events applied, %s malformed\n",
	       fmt_count(a, sizeof(a), num(f, "instances")),
	       fmt_count(b, sizeof(b), num(f, "blocks")),
	       fmt_count(c, sizeof(c), num(f, "events")),
	       fmt_count(d, sizeof(d), num(f, "malformed")));
	printf("  gaps %s, replays %s (%s batches recovered)\n",
	       fmt_count(a, sizeof(a), num(f, "gaps")),
	       fmt_count(b, sizeof(b), num(f, "replays")),
	       fmt_count(c, sizeof(c), num(f, "replayed")));
}

/* A namespace's name for a terminal: printable ASCII only, cut to fit its column. */
static void ns_display(char *buf, size_t cap, const char *name)
{
	size_t n = 0;

	for (const unsigned char *p = (const unsigned char *)(name ? name : "-");
	     *p && n + 1 < cap; p++)
		buf[n++] = *p >= 0x20 && *p < 0x7f ? (char)*p : '?';
	buf[n] = '\0';
	if (n >= NS_NAME_COLS) {
		buf[NS_NAME_COLS - 3] = '.';
		buf[NS_NAME_COLS - 2] = '.';
		buf[NS_NAME_COLS - 1] = '\0';
	}
}

static const cJSON *ns_find(const cJSON *arr, const char *name)
{
	const cJSON *x;

	cJSON_ArrayForEach(x, arr) {
		const char *n = str(x, "namespace");
		if (n && name && strcmp(n, name) == 0)
			return x;
	}
	return NULL;
}

struct ns_row {
	const cJSON *cur;
	double d_req, d_query, d_hit;   /* over the interval; NAN when unknown */
};

static int ns_row_cmp(const void *a, const void *b)
{
	const struct ns_row *x = a, *y = b;
	double dx = isnan(x->d_req) ? -1 : x->d_req, dy = isnan(y->d_req) ? -1 : y->d_req;

	if (dx != dy)
		return dx < dy ? 1 : -1;
	return num(x->cur, "requests") < num(y->cur, "requests") ? 1 : -1;
}

/* The top namespaces: by interval requests when watching, else by lifetime requests. */
static void print_namespaces(const struct snap *cur, const struct snap *prev,
			     const struct interval *iv)
{
	const cJSON *arr = cJSON_GetObjectItemCaseSensitive(cur->o, "namespaces");
	const cJSON *parr = prev && prev->o ?
		cJSON_GetObjectItemCaseSensitive(prev->o, "namespaces") : NULL;
	bool complete = cJSON_IsArray(parr) && cJSON_GetArraySize(parr) < NS_LISTED;
	struct ns_row rows[NS_LISTED];
	int n = 0;
	const cJSON *x;
	char name[NS_NAME_COLS + 4], a[32], b[32], c[32], d[32];

	if (!cJSON_IsArray(arr))
		return;
	cJSON_ArrayForEach(x, arr) {
		const cJSON *p;

		if (n == NS_LISTED)
			break;
		rows[n] = (struct ns_row){ .cur = x, .d_req = NAN, .d_query = NAN, .d_hit = NAN };
		if (iv->have && cJSON_IsArray(parr)) {
			p = ns_find(parr, str(x, "namespace"));
			if (p || complete) {
				rows[n].d_req = num(x, "requests") - (p ? num(p, "requests") : 0);
				rows[n].d_query = num(x, "query_tokens") - (p ? num(p, "query_tokens") : 0);
				rows[n].d_hit = num(x, "hit_tokens") - (p ? num(p, "hit_tokens") : 0);
			}
		}
		n++;
	}
	if (iv->have)
		qsort(rows, (size_t)n, sizeof(rows[0]), ns_row_cmp);
	printf("\n  %-*s %10s %10s %10s", NS_NAME_COLS, "namespace (uid:adapter)", "requests",
	       "query tok", "hit rate");
	if (iv->have)
		printf(" %10s %10s", "req/s", "hit (last)");
	printf("\n");
	if (n == 0)
		printf("  (none yet)\n");
	for (int i = 0; i < n && i < NS_SHOWN; i++) {
		const cJSON *o = rows[i].cur;

		ns_display(name, sizeof(name), str(o, "namespace"));
		printf("  %-*s %10s %10s %10s", NS_NAME_COLS, name,
		       fmt_count(a, sizeof(a), num(o, "requests")),
		       fmt_count(b, sizeof(b), num(o, "query_tokens")),
		       fmt_pct(c, sizeof(c), ratio(num(o, "hit_tokens"), num(o, "query_tokens"))));
		if (iv->have)
			printf(" %10s %10s", fmt_rate(a, sizeof(a), ratio(rows[i].d_req, iv->secs)),
			       fmt_pct(d, sizeof(d), ratio(rows[i].d_hit, rows[i].d_query)));
		printf("\n");
	}
	if (n > NS_SHOWN)
		printf("  (%d more listed; --json shows them)\n", n - NS_SHOWN);
}

static void print_table(const struct snap *cur, const struct snap *prev,
			const struct interval *iv, const struct history *h)
{
	static const char *const counts[][2] = {
		{ "requests", "requests" },       { "  lookups", "lookups" },
		{ "  lookup hits", "lookup_hits" }, { "  inserts", "inserts" },
		{ "  generations", "generations" }, { "  generation hits", "generation_hits" },
		{ "computed tokens", "computed_tokens" }, { "generated tokens", "generated_tokens" },
		{ "query tokens", "query_tokens" }, { "hit tokens", "hit_tokens" },
		{ "insert tokens", "insert_tokens" }, { "inserted blocks", "inserted_blocks" },
		{ "insert full", "insert_full" }, { "evictions", "evictions" },
		{ "quota evictions", "quota_evictions" }, { "quota refusals", "quota_refusals" },
		{ "errors", "errors" },
	};
	const cJSON *o = cur->o;
	const char *name = str(o, "name"), *mode = str(o, "mode"), *ver = str(o, "version");
	char a[64], b[64], c[64], d[64];
	double hit = num(o, "hit_rate"), rhit = num(o, "request_hit_rate");
	double up = num(o, "uptime_s");

	if (isnan(hit))
		hit = ratio(num(o, "hit_tokens"), num(o, "query_tokens"));
	if (isnan(rhit))
		rhit = ratio(num(o, "lookup_hits"), num(o, "lookups"));
	if (!ver && cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(o, "version")))
		ver = fmt_count(d, sizeof(d), num(o, "version"));
	printf("kvprefixd %s, %s, name '%s', block %s tokens, up %s\n", ver ? ver : "-",
	       mode ? mode : "-", name ? name : "-",
	       fmt_count(a, sizeof(a), num(o, "block_tokens")), fmt_uptime(b, sizeof(b), up));
	printf("\n");
	if (iv->have) {
		snprintf(c, sizeof(c), "last %.1fs", iv->secs);
		printf("  %-18s %14s %14s\n", "", "lifetime", c);
	} else {
		printf("  %-18s %14s\n", "", "lifetime");
	}
	printf("  %-18s %14s", "token hit rate", fmt_pct(a, sizeof(a), hit));
	if (iv->have)
		printf(" %14s", fmt_pct(b, sizeof(b), iv->hit_rate));
	printf("\n  %-18s %14s", "request hit rate", fmt_pct(a, sizeof(a), rhit));
	if (iv->have)
		printf(" %14s", fmt_pct(b, sizeof(b), iv->req_hit_rate));
	printf("\n  %-18s %14s", "requests/s",
	       fmt_rate(a, sizeof(a), ratio(num(o, "requests"), up)));
	if (iv->have)
		printf(" %14s", fmt_rate(b, sizeof(b), iv->req_per_s));
	printf("\n");
	print_history(h);
	for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++)
		printf("  %-18s %14s\n", counts[i][0],
		       fmt_count(a, sizeof(a), num(o, counts[i][1])));

	printf("  %-18s %14s\n", "TTFT p50", fmt_us(a, sizeof(a), num(o, "ttft_us_p50")));
	printf("  %-18s %14s\n", "TTFT p99", fmt_us(a, sizeof(a), num(o, "ttft_us_p99")));
	printf("  %-18s %14s\n", "lookup p99", fmt_us(a, sizeof(a), num(o, "lookup_us_p99")));

	printf("\n  pool (blocks) %10s %10s %10s %10s\n", "total", "free", "cached", "pinned");
	printf("  %-13s %10s", "", fmt_count(a, sizeof(a), num(o, "blocks_total")));
	printf(" %10s", fmt_count(a, sizeof(a), num(o, "blocks_free")));
	printf(" %10s", fmt_count(a, sizeof(a), num(o, "blocks_cached")));
	printf(" %10s\n", fmt_count(a, sizeof(a), num(o, "blocks_pinned")));
	printf("  tree nodes %s, leases active %s, connections %s",
	       fmt_count(a, sizeof(a), num(o, "tree_nodes")),
	       fmt_count(b, sizeof(b), num(o, "leases_active")),
	       fmt_count(c, sizeof(c), num(o, "connections")));
	printf(" (%s in all)\n", fmt_count(a, sizeof(a), num(o, "connections_total")));
	printf("  keeps %s (ended: %s at their time, %s given up for room)\n",
	       fmt_count(a, sizeof(a), num(o, "keeps_active")),
	       fmt_count(b, sizeof(b), num(o, "keeps_expired")),
	       fmt_count(c, sizeof(c), num(o, "keeps_given_up")));
	print_pool_bar(o);
	print_misses(o);
	print_tiers(o);
	print_events(o);
	print_namespaces(cur, prev, iv);
}

/* Print one JSON line: the daemon's object, plus the interval figures when watching. */
static int print_json(struct snap *cur, const struct interval *iv)
{
	char *s;

	if (iv->have) {
		cJSON_DeleteItemFromObjectCaseSensitive(cur->o, "interval_s");
		cJSON_DeleteItemFromObjectCaseSensitive(cur->o, "interval_hit_rate");
		cJSON_DeleteItemFromObjectCaseSensitive(cur->o, "interval_requests_per_s");
		cJSON_AddNumberToObject(cur->o, "interval_s", iv->secs);
		if (isnan(iv->hit_rate))
			cJSON_AddNullToObject(cur->o, "interval_hit_rate");
		else
			cJSON_AddNumberToObject(cur->o, "interval_hit_rate", iv->hit_rate);
		if (isnan(iv->req_per_s))
			cJSON_AddNullToObject(cur->o, "interval_requests_per_s");
		else
			cJSON_AddNumberToObject(cur->o, "interval_requests_per_s", iv->req_per_s);
	}
	s = cJSON_PrintUnformatted(cur->o);
	if (!s) {
		fprintf(stderr, PROG ": out of memory\n");
		return -1;
	}
	printf("%s\n", s);
	free(s);
	return 0;
}

/* Fetch and parse one snapshot. 0 or -1 (message printed). */
static int fetch(struct kvp_client *c, struct snap *s)
{
	char *text = NULL;
	int rc;

	rc = kvp_client_stats(c, &text);
	if (rc < 0) {
		kvp_tool_perror(PROG, "stats", c, rc);
		return -1;
	}
	s->t_ns = kvp_tool_now_ns();
	s->o = cJSON_Parse(text);
	free(text);
	if (!cJSON_IsObject(s->o)) {
		cJSON_Delete(s->o);
		s->o = NULL;
		fprintf(stderr, PROG ": the daemon's STATS reply is not a JSON object\n");
		return -1;
	}
	return 0;
}

/*
 * --watch's value: optarg (--watch=N, -wN), else the next argument when it starts like a
 * number (--watch N, -w N, taken from argv), else WATCH_DEFAULT_S, as watch(1) does.
 * false after printing why the value is bad.
 */
static bool watch_option(int argc, char **argv, double *out)
{
	const char *v = optarg;

	if (!v && optind < argc &&
	    ((argv[optind][0] >= '0' && argv[optind][0] <= '9') || argv[optind][0] == '.'))
		v = argv[optind++];
	if (!v) {
		*out = WATCH_DEFAULT_S;
		return true;
	}
	if (!kvp_tool_parse_seconds(v, WATCH_MAX_S, out)) {
		fprintf(stderr, PROG ": --watch '%s': want a number of seconds > 0 and <= %.0f\n",
			v, WATCH_MAX_S);
		return false;
	}
	return true;
}

static void sleep_s(double s)
{
	struct timespec ts = { (time_t)s, (long)((s - floor(s)) * 1e9) };

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "server-uid", required_argument, NULL, 'U' },
		{ "json", no_argument, NULL, 'j' },
		{ "watch", optional_argument, NULL, 'w' },
		{ "ascii", no_argument, NULL, 'a' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *sock = NULL;
	struct snap cur = { 0 }, prev = { 0 };
	struct kvp_client *c = NULL;
	static struct history hist;   /* two rings of doubles: not on the stack */
	bool json = false, ascii = false, tty;
	double watch = 0;
	int opt, ret = KVP_EXIT_FAIL;

	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":s:jw::h", opts, NULL)) != -1) {
		switch (opt) {
		case 's': sock = optarg; break;
		case 'U':
			if (!kvp_tool_server_uid_option(PROG, optarg))
				goto out_usage;
			break;
		case 'j': json = true; break;
		case 'a': ascii = true; break;
		case 'w':
			if (!watch_option(argc, argv, &watch))
				return KVP_EXIT_USAGE;
			break;
		case 'h': usage(stdout); return KVP_EXIT_OK;
		case ':':
			fprintf(stderr, PROG ": option '%s' needs a value\n", argv[optind - 1]);
			goto out_usage;
		default:
			if (optopt)
				fprintf(stderr, PROG ": unknown option '-%c'\n", optopt);
			else
				fprintf(stderr, PROG ": unknown option '%s'\n", argv[optind - 1]);
			goto out_usage;
		}
	}
	if (optind < argc) {
		fprintf(stderr, PROG ": unexpected argument '%s'\n", argv[optind]);
		goto out_usage;
	}
	if (kvp_tool_connect(PROG, sock, &c) < 0)
		return KVP_EXIT_FAIL;
	kvp_client_set_timeout_ms(c, STAT_TIMEOUT_MS);
	tty = isatty(STDOUT_FILENO);
	setlocale(LC_CTYPE, "");   /* the character set only: numbers stay in the C locale */
	kvp_spark_init(&hist.hit, HIST_SAMPLES);
	kvp_spark_init(&hist.rps, HIST_SAMPLES);
	hist.style = ascii ? KVP_SPARK_ASCII : style_of_locale();
	for (bool first = true;; first = false) {
		struct interval iv;

		if (fetch(c, &cur) < 0)
			goto out_close;
		iv = interval_of(&cur, first ? NULL : &prev);
		if (json) {
			if (print_json(&cur, &iv) < 0)
				goto out_close;
		} else {
			if (watch > 0 && tty)
				printf("\033[H\033[2J");
			else if (!first)
				printf("\n");
			if (watch > 0)
				history_add(&hist, &iv);
			print_table(&cur, first ? NULL : &prev, &iv, watch > 0 ? &hist : NULL);
		}
		fflush(stdout);
		cJSON_Delete(prev.o);
		prev = cur;
		cur.o = NULL;
		if (watch <= 0)
			break;
		sleep_s(watch);
	}
	ret = KVP_EXIT_OK;
out_close:
	cJSON_Delete(prev.o);
	cJSON_Delete(cur.o);
	kvp_client_close(c);
	return ret;
out_usage:
	fprintf(stderr, "Try '" PROG " --help'.\n");
	return KVP_EXIT_USAGE;
}
