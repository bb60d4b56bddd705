/*
 * bench_events.c - kvprefix-bench events: what publishing KV events costs, and how fast
 * the fleet index takes them in (bench_fleet.c).
 *
 *   two index-only kvprefixd's, blocks of 16 tokens and a pool of --pool-blocks:
 *     A  without --kv-events
 *     B  with --kv-events on an ipc socket in a temporary directory
 *   per round, on each (B twice: no subscriber, then one counting every message on a
 *   thread of this process), --inserts INSERTs of new 256-token prompts (each stores 16
 *   blocks and, once the pool is full, evicts 16: events), each followed by a LOOKUP
 *   of a 2,048-token prompt cached at the start (no event): the LOOKUP round trip
 *   under the event load, against A's
 *   then the fleet index: bench_fleet.c
 *
 * Medians over the rounds. Progress on stderr; the table, then one JSON line.
 */
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "bench.h"
#include "bench_events.h"
#include "kvp_clock.h"
#include "util.h"

#define CMD "events"
#define BT 16
#define PROMPT_TOKENS 256
#define LOOKUP_TOKENS 2048
#define MAX_ROUNDS 16

struct events_opts {
	uint32_t inserts, rounds, pool_blocks, instances, query_tokens;
	uint64_t fleet_blocks;
};

/* One run of the insert-and-lookup loop. */
struct run_figures {
	double lookup_us;       /* median LOOKUP round trip */
	double blocks_per_s;    /* blocks stored and removed, over the run's time */
	double events_per_s;    /* events published (B only) */
	double batches_per_s;
	uint64_t received;      /* messages the subscriber counted */
};

struct events_result {
	struct run_figures a[MAX_ROUNDS], nosub[MAX_ROUNDS], sub[MAX_ROUNDS];
	uint32_t rounds;
	struct fleet_result fleet;
};

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: kvprefix-bench events [--inserts N] [--rounds N] [--pool-blocks N]\n"
		"                             [--instances N] [--fleet-blocks N] [--quick]\n"
		"Time a kvprefixd publishing KV events (no subscriber, then one) against one\n"
		"that does not: INSERTs that store and evict blocks, each followed by a\n"
		"LOOKUP whose round trip is compared. Then the fleet index: events decoded and\n"
		"applied per second in process and through a real kvprefixd --kv-events-sub,\n"
		"and each engine's prefix of a query (FLEET) against a LOOKUP.\n"
		"\n"
		"  -n, --inserts N        INSERTs per run, 100..1000000 (default 4000)\n"
		"  -r, --rounds N         rounds, 1..16, medians reported (default 3)\n"
		"  -p, --pool-blocks N    the daemons' pool, 64..1048576 blocks (default 4096)\n"
		"  -i, --instances N      engines of the fleet index, 1..64 (default 16)\n"
		"  -b, --fleet-blocks N   blocks the fleet holds, 1024..16777216 (default\n"
		"                         1000000)\n"
		"  -q, --quick            1 round of 1000 INSERTs, a fleet of 100000 blocks\n"
		"  -h, --help             show this help\n");
}

static int parse_events(int argc, char **argv, struct events_opts *o)
{
	static const struct option longs[] = {
		{ "inserts", required_argument, NULL, 'n' },
		{ "rounds", required_argument, NULL, 'r' },
		{ "pool-blocks", required_argument, NULL, 'p' },
		{ "instances", required_argument, NULL, 'i' },
		{ "fleet-blocks", required_argument, NULL, 'b' },
		{ "quick", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	uint64_t v;
	int opt;

	*o = (struct events_opts){ .inserts = 4000, .rounds = 3, .pool_blocks = 4096,
				   .instances = 16, .fleet_blocks = 1000000,
				   .query_tokens = LOOKUP_TOKENS };
	optind = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":n:r:p:i:b:qh", longs, NULL)) != -1) {
		switch (opt) {
		case 'n':
			if (!bench_parse_u64(CMD, "--inserts", optarg, 100, 1000000, &v))
				return KVP_EXIT_USAGE;
			o->inserts = (uint32_t)v;
			break;
		case 'r':
			if (!bench_parse_u64(CMD, "--rounds", optarg, 1, MAX_ROUNDS, &v))
				return KVP_EXIT_USAGE;
			o->rounds = (uint32_t)v;
			break;
		case 'p':
			if (!bench_parse_u64(CMD, "--pool-blocks", optarg, 64, 1u << 20, &v))
				return KVP_EXIT_USAGE;
			o->pool_blocks = (uint32_t)v;
			break;
		case 'i':
			if (!bench_parse_u64(CMD, "--instances", optarg, 1, 64, &v))
				return KVP_EXIT_USAGE;
			o->instances = (uint32_t)v;
			break;
		case 'b':
			if (!bench_parse_u64(CMD, "--fleet-blocks", optarg, 1024, 1u << 24, &v))
				return KVP_EXIT_USAGE;
			o->fleet_blocks = v;
			break;
		case 'q':
			o->rounds = 1;
			o->inserts = 1000;
			o->fleet_blocks = 100000;
			break;
		case 'h':
			usage(stdout);
			return KVP_EXIT_OK;
		default:
			return bench_bad_option(CMD, argv, opt);
		}
	}
	if (optind < argc)
		return bench_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
	return BENCH_RUN;
}

/* ---- the subscriber ------------------------------------------------------------------ */

struct subscriber {
	void *ctx, *sub;
	pthread_t thread;
	atomic_bool stop;
	atomic_uint_fast64_t received;
};

static void *sub_run(void *arg)
{
	struct subscriber *s = arg;
	zmq_msg_t m;

	zmq_msg_init(&m);
	while (!atomic_load(&s->stop)) {
		int more = 0;
		size_t sz = sizeof(more);

		if (zmq_msg_recv(&m, s->sub, 0) < 0)
			continue;   /* the 100 ms receive timeout: look at stop again */
		zmq_getsockopt(s->sub, ZMQ_RCVMORE, &more, &sz);
		if (!more)
			atomic_fetch_add(&s->received, 1);
	}
	zmq_msg_close(&m);
	return NULL;
}

static int sub_start(struct subscriber *s, const char *endpoint)
{
	int timeout = 100, hwm = 0;

	memset(s, 0, sizeof(*s));
	s->ctx = zmq_ctx_new();
	s->sub = s->ctx ? zmq_socket(s->ctx, ZMQ_SUB) : NULL;
	if (!s->sub)
		return -1;
	zmq_setsockopt(s->sub, ZMQ_RCVTIMEO, &timeout, sizeof(timeout));
	zmq_setsockopt(s->sub, ZMQ_RCVHWM, &hwm, sizeof(hwm));
	zmq_setsockopt(s->sub, ZMQ_SUBSCRIBE, "", 0);
	if (zmq_connect(s->sub, endpoint) != 0 ||
	    pthread_create(&s->thread, NULL, sub_run, s) != 0) {
		zmq_close(s->sub);
		zmq_ctx_term(s->ctx);
		return -1;
	}
	bench_sleep_ms(200);   /* the subscription reaches the publisher */
	return 0;
}

static void sub_stop(struct subscriber *s)
{
	atomic_store(&s->stop, true);
	pthread_join(s->thread, NULL);
	zmq_close(s->sub);
	zmq_ctx_term(s->ctx);
}

/* ---- one run ------------------------------------------------------------------------- */

double events_stat(struct kvp_client *c, const char *obj, const char *key)
{
	char *json = NULL;
	cJSON *o, *x;
	double v = NAN;

	if (kvp_client_stats(c, &json) < 0)
		return NAN;
	o = cJSON_Parse(json);
	free(json);
	x = obj ? cJSON_GetObjectItemCaseSensitive(o, obj) : o;
	v = bench_json_number(x, key);
	cJSON_Delete(o);
	return v;
}

/* --inserts new prompts (seeded by seed), a LOOKUP of the cached long prompt after each. */
static int run_once(const char *sock, const struct events_opts *o, uint64_t seed,
		    struct run_figures *f)
{
	uint32_t prompt[PROMPT_TOKENS], *longp = malloc(LOOKUP_TOKENS * sizeof(*longp));
	double *rtt = malloc(o->inserts * sizeof(*rtt));
	double blocks0, blocks1, ev0, ev1, b0, b1;
	struct kvp_client *c = NULL;
	struct kvp_match m;
	uint64_t t0, t1;
	int rc = -1;

	if (!longp || !rtt || kvp_client_connect(sock, &c) < 0) {
		fprintf(stderr, PROG " " CMD ": cannot connect to %s\n", sock);
		goto out;
	}
	bench_rand_tokens(longp, LOOKUP_TOKENS, 7, 1u << 20);
	if (kvp_client_insert(c, longp, LOOKUP_TOKENS, KVP_LOOKUP_PIN, &m) < 0)
		goto out;   /* pinned: the pool's churn never takes it */
	blocks0 = events_stat(c, NULL, "inserted_blocks") + events_stat(c, NULL, "evictions");
	ev0 = events_stat(c, "kv_events", "events");
	b0 = events_stat(c, "kv_events", "batches");
	t0 = kvp_clock_ns();
	for (uint32_t i = 0; i < o->inserts; i++) {
		uint64_t s;

		bench_rand_tokens(prompt, PROMPT_TOKENS, seed * 1000003u + i, 1u << 20);
		if (kvp_client_insert(c, prompt, PROMPT_TOKENS, 0, &m) < 0)
			goto out;
		s = kvp_clock_ns();
		if (kvp_client_lookup(c, longp, LOOKUP_TOKENS, 0, &m) < 0 ||
		    m.matched_tokens != LOOKUP_TOKENS)
			goto out;
		rtt[i] = (double)(kvp_clock_ns() - s) / 1e3;
	}
	t1 = kvp_clock_ns();
	blocks1 = events_stat(c, NULL, "inserted_blocks") + events_stat(c, NULL, "evictions");
	ev1 = events_stat(c, "kv_events", "events");
	b1 = events_stat(c, "kv_events", "batches");
	f->lookup_us = bench_median(rtt, o->inserts);
	f->blocks_per_s = (blocks1 - blocks0) / ((double)(t1 - t0) / 1e9);
	f->events_per_s = (ev1 - ev0) / ((double)(t1 - t0) / 1e9);
	f->batches_per_s = (b1 - b0) / ((double)(t1 - t0) / 1e9);
	rc = 0;
out:
	if (rc)
		fprintf(stderr, PROG " " CMD ": a request failed\n");
	kvp_client_close(c);
	free(longp);
	free(rtt);
	return rc;
}

static int run_events(const struct events_opts *o, struct events_result *r)
{
	char dir[64], ev[160], pool[16];
	const char *args_a[] = { "--index-only", "--block-tokens", "16", "--capacity-blocks",
				 pool, "--log-level", "warn", NULL };
	const char *args_b[] = { "--index-only", "--block-tokens", "16", "--capacity-blocks",
				 pool, "--log-level", "warn", "--kv-events", ev, NULL };
	struct kvp_daemon a, b;
	struct subscriber sub;
	int rc = -1;

	if (bench_tmpdir(CMD, dir, sizeof(dir), "kvprefix-bench-events") < 0)
		return -1;
	snprintf(ev, sizeof(ev), "ipc://%s/ev.ipc", dir);
	snprintf(pool, sizeof(pool), "%u", o->pool_blocks);
	if (bench_daemon_start(&a, CMD, args_a, DAEMON_WAIT_MS) < 0)
		goto out_dir;
	if (bench_daemon_start(&b, CMD, args_b, DAEMON_WAIT_MS) < 0)
		goto out_a;
	for (uint32_t k = 0; k < o->rounds; k++) {
		fprintf(stderr, "%s: round %u of %u\n", CMD, k + 1, o->rounds);
		if (run_once(a.socket, o, 3 * k + 1, &r->a[k]) < 0 ||
		    run_once(b.socket, o, 3 * k + 2, &r->nosub[k]) < 0)
			goto out_b;
		if (sub_start(&sub, ev) < 0) {
			fprintf(stderr, PROG " " CMD ": cannot subscribe to %s\n", ev);
			goto out_b;
		}
		rc = run_once(b.socket, o, 3 * k + 3, &r->sub[k]);
		bench_sleep_ms(200);
		r->sub[k].received = atomic_load(&sub.received);
		sub_stop(&sub);
		if (rc < 0)
			goto out_b;
		rc = -1;
		r->rounds = k + 1;
	}
	fprintf(stderr, "%s: the fleet index, %u engines, %llu blocks\n", CMD, o->instances,
		(unsigned long long)o->fleet_blocks);
	rc = bench_fleet(o->instances, o->fleet_blocks, o->query_tokens, dir, &r->fleet);
out_b:
	bench_daemon_stop(&b);
out_a:
	bench_daemon_stop(&a);
out_dir:
	kvp_spawn_rmdir(dir);
	return rc;
}

/* ---- output -------------------------------------------------------------------------- */

static double med(const struct run_figures *f, uint32_t n, size_t off)
{
	double v[MAX_ROUNDS];

	for (uint32_t i = 0; i < n; i++)
		v[i] = *(const double *)((const char *)&f[i] + off);
	return bench_median(v, n);
}

#define MED(arr, field) med((arr), r->rounds, offsetof(struct run_figures, field))

static void print_events(const struct events_result *r)
{
	const struct fleet_result *f = &r->fleet;
	double la = MED(r->a, lookup_us), ln = MED(r->nosub, lookup_us),
	       ls = MED(r->sub, lookup_us);

	printf("publishing (medians of %u rounds)     no events   events, no sub   events, 1 sub\n",
	       r->rounds);
	printf("  blocks stored+removed /s       %10.0f   %14.0f   %13.0f\n",
	       MED(r->a, blocks_per_s), MED(r->nosub, blocks_per_s), MED(r->sub, blocks_per_s));
	printf("  events published /s            %10s   %14.0f   %13.0f\n", "-",
	       MED(r->nosub, events_per_s), MED(r->sub, events_per_s));
	printf("  batches published /s           %10s   %14.0f   %13.0f\n", "-",
	       MED(r->nosub, batches_per_s), MED(r->sub, batches_per_s));
	printf("  LOOKUP round trip, us (2k tok) %10.1f   %14.1f   %13.1f\n", la, ln, ls);
	printf("  ... against no events                       %6.3fx        %6.3fx  (target <= 1.05x)\n",
	       ln / la, ls / la);
	printf("fleet index: %u engines, %llu blocks\n", f->instances,
	       (unsigned long long)f->blocks);
	printf("  ingest, in process (decode + apply, 1 thread)  %12.0f blocks/s  %10.0f events/s"
	       "  (target >= 1000000 blocks/s)\n", f->ingest_blocks_per_s, f->ingest_events_per_s);
	printf("  removals, in process                           %12.0f blocks/s\n",
	       f->remove_blocks_per_s);
	printf("  ingest over ZeroMQ into kvprefixd              %12.0f blocks/s\n",
	       f->e2e_blocks_per_s);
	printf("  memory                                         %12.0f bytes/block\n",
	       f->bytes_per_block);
	printf("  a %u-token query: every engine's prefix %.2f us in process (its keys alone %.2f us)\n",
	       f->query_tokens, f->match_us, f->hash_us);
	printf("  FLEET round trip %.1f us, LOOKUP of the same tokens %.1f us (%.2fx)\n",
	       f->fleet_rtt_us, f->lookup_rtt_us, f->fleet_rtt_us / f->lookup_rtt_us);
}

static void json_events(const struct events_result *r)
{
	const struct fleet_result *f = &r->fleet;
	cJSON *o = cJSON_CreateObject();
	bool built = o != NULL;
	double la = MED(r->a, lookup_us);

	built = built && cJSON_AddStringToObject(o, "bench", CMD);
	built = built && cJSON_AddNumberToObject(o, "rounds", r->rounds);
	built = built && cJSON_AddNumberToObject(o, "lookup_us_no_events", la);
	built = built && cJSON_AddNumberToObject(o, "lookup_us_events_no_sub", MED(r->nosub, lookup_us));
	built = built && cJSON_AddNumberToObject(o, "lookup_us_events_sub", MED(r->sub, lookup_us));
	built = built && cJSON_AddNumberToObject(o, "lookup_ratio_sub", MED(r->sub, lookup_us) / la);
	built = built && cJSON_AddNumberToObject(o, "events_per_s_no_sub", MED(r->nosub, events_per_s));
	built = built && cJSON_AddNumberToObject(o, "events_per_s_sub", MED(r->sub, events_per_s));
	built = built && cJSON_AddNumberToObject(o, "blocks_per_s_sub", MED(r->sub, blocks_per_s));
	built = built && cJSON_AddNumberToObject(o, "fleet_instances", f->instances);
	built = built && cJSON_AddNumberToObject(o, "fleet_blocks", (double)f->blocks);
	built = built && cJSON_AddNumberToObject(o, "fleet_ingest_blocks_per_s", f->ingest_blocks_per_s);
	built = built && cJSON_AddNumberToObject(o, "fleet_e2e_blocks_per_s", f->e2e_blocks_per_s);
	built = built && cJSON_AddNumberToObject(o, "fleet_bytes_per_block", f->bytes_per_block);
	built = built && cJSON_AddNumberToObject(o, "fleet_match_us", f->match_us);
	built = built && cJSON_AddNumberToObject(o, "fleet_rtt_us", f->fleet_rtt_us);
	built = built && cJSON_AddNumberToObject(o, "lookup_rtt_us", f->lookup_rtt_us);
	bench_json_finish(CMD, o, built);
}

int bench_cmd_events(int argc, char **argv)
{
	struct events_opts o;
	struct events_result *r;
	int rc = parse_events(argc, argv, &o);

	if (rc != BENCH_RUN)
		return rc;
	r = calloc(1, sizeof(*r));
	if (!r)
		return KVP_EXIT_FAIL;
	rc = run_events(&o, r);
	if (rc == 0) {
		print_events(r);
		json_events(r);
	}
	free(r);
	return rc == 0 ? KVP_EXIT_OK : KVP_EXIT_FAIL;
}
