/*
 * bench_load.c - kvprefix-bench load: start or find the daemon, fit the mix to what it
 * serves, run N client threads (bench_load_client.c) for S seconds with progress once
 * a second, then add up their histograms and counters, ask the daemon once the clients
 * are gone whether any block stayed pinned and whether its pool adds up, and report a
 * table and one JSON line. The design is in bench_load.h.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "bench.h"
#include "bench_load.h"
#include "trace.h"
#include "util.h"

/* ---- options ------------------------------------------------------------------- */

/* The long options without a short form. */
enum load_long_opt {
	O_MAXNEW = 256, O_PROMPT, O_GENPROMPT, O_PREFIXES, O_SUFFIXES, O_SEED, O_VOCAB,
	O_TIMEOUT, O_MODEL, O_THREADS,
};

/* Parse --mix "lookup=70,stats=5,generate=25" into weights (unnamed kinds: 0). */
static bool load_parse_mix(const char *s, uint32_t w[LM_N])
{
	bool seen[LM_N] = { false };
	const char *p = s;

	memset(w, 0, LM_N * sizeof(w[0]));
	while (*p) {
		const char *eq = strchr(p, '='), *end = strchr(p, ',');
		char val[24];
		uint64_t v;
		size_t kl, vl;
		unsigned m;

		if (!end)
			end = p + strlen(p);
		if (!eq || eq > end) {
			fprintf(stderr, PROG " load: --mix '%s': want KIND=WEIGHT,... (KIND: lookup, "
				"insert, generate, stats)\n", s);
			return false;
		}
		kl = (size_t)(eq - p);
		vl = (size_t)(end - eq - 1);
		for (m = 0; m < LM_N; m++)
			if (strlen(load_mix_name[m]) == kl && strncmp(p, load_mix_name[m], kl) == 0)
				break;
		if (m == LM_N) {
			fprintf(stderr, PROG " load: --mix: unknown kind '%.*s' (want lookup, insert, "
				"generate, stats)\n", (int)kl, p);
			return false;
		}
		if (vl == 0 || vl >= sizeof(val)) {
			fprintf(stderr, PROG " load: --mix: bad weight for %s\n", load_mix_name[m]);
			return false;
		}
		memcpy(val, eq + 1, vl);
		val[vl] = '\0';
		if (!kvp_tool_parse_u64(val, 0, 1000000, &v)) {
			fprintf(stderr, PROG " load: --mix: weight '%s' of %s: want 0..1000000\n", val,
				load_mix_name[m]);
			return false;
		}
		if (seen[m]) {
			fprintf(stderr, PROG " load: --mix: %s given twice\n", load_mix_name[m]);
			return false;
		}
		seen[m] = true;
		w[m] = (uint32_t)v;
		p = *end ? end + 1 : end;
		if (*end && !*p) {
			fprintf(stderr, PROG " load: --mix '%s': trailing comma\n", s);
			return false;
		}
	}
	return true;
}

static void usage_load(FILE *f)
{
	fprintf(f,
		"Usage: kvprefix-bench load --clients N --duration S [--socket PATH]\n"
		"                           [--mix lookup=70,generate=25,stats=5] [--max-new 8]\n"
		"                           [--prompt-tokens 512] [--gen-prompt-tokens 64]\n"
		"                           [--prefixes 8] [--suffixes 4096] [--seed 1]\n"
		"                           [--vocab N] [--timeout-ms 60000]\n"
		"                           [--model FILE] [--threads N]\n"
		"Load a kvprefixd with N client threads, each on its own connection, for S\n"
		"seconds: a seeded random mix of LOOKUP (half pinned; a client holds up to %u\n"
		"leases, then RELEASEs the oldest), INSERT (index-only daemons only), GENERATE\n"
		"(daemons with a model only) and STATS. Prompts are one of --prefixes shared\n"
		"prefixes (3/4 of the prompt) + one of --suffixes suffixes each, so prefixes\n"
		"hit and repeated prompts hit whole.\n"
		"\n"
		"  -s, --socket PATH         use this running daemon; without it, start one\n"
		"                            (kvprefixd --index-only, or --model FILE) from\n"
		"                            this binary's directory or ../sbin\n"
		"  -c, --clients N           client threads (1..%u)\n"
		"  -d, --duration S          seconds to run (\"0.5\" is fine)\n"
		"  -x, --mix KIND=W,...      weights of lookup, insert, generate, stats; kinds\n"
		"                            the daemon does not serve are left out (with a\n"
		"                            note). Default lookup=70,insert=25,stats=5 for an\n"
		"                            index-only daemon, lookup=70,generate=25,stats=5\n"
		"                            with a model\n"
		"      --max-new N           tokens a GENERATE makes at most (default 8, greedy)\n"
		"      --prompt-tokens N     tokens of a LOOKUP / INSERT prompt (default 512)\n"
		"      --gen-prompt-tokens N tokens of a GENERATE prompt (default 64)\n"
		"      --prefixes N          shared prefixes (default 8, at most 256)\n"
		"      --suffixes N          suffixes per prefix (default 4096)\n"
		"      --seed N              seeds the prompts and every client's mix (default 1)\n"
		"      --vocab N             token ids drawn below N (default: the model's,\n"
		"                            asked of the daemon; %u index-only)\n"
		"      --timeout-ms N        deadline of each reply (default 60000; 0: none)\n"
		"      --model FILE          the daemon this command starts serves FILE\n"
		"      --threads N           and computes with N threads (default: all cores)\n"
		"  -h, --help                show this help\n"
		"\n"
		"Progress (requests/s, errors so far, the daemon's RSS) on stderr once a\n"
		"second. Prints a table, then one JSON line: requests, errors, errors_by_status\n"
		"(kvp_strerror names), requests_per_s, p50_us, p99_us, kinds (count, errors,\n"
		"latencies per kind), rss_start_kb, rss_end_kb, rss_peak_kb (the daemon's\n"
		"VmRSS; its pid from SO_PEERCRED with --socket), and the daemon's pool once\n"
		"the clients are gone: blocks_pinned (should be 0), pool_invariant_ok\n"
		"(free + cached + pinned == total).\n"
		"Exit status 1 when a request failed, blocks stayed pinned or the pool does\n"
		"not add up (the JSON line is printed all the same).\n",
		LOAD_LEASES_HELD, LOAD_CLIENTS_MAX, LOAD_VOCAB_DEFAULT);
}

/* The options that take a number: their name, range and field; false when opt is
 * another one. */
static bool load_number_option(int opt, struct load_opts *o, const char **name,
			       uint64_t *lo, uint64_t *hi, uint64_t **dst)
{
	*lo = 1;
	*hi = 1u << 20;
	switch (opt) {
	case 'c': *dst = &o->clients; *name = "--clients"; *hi = LOAD_CLIENTS_MAX; break;
	case O_MAXNEW: *dst = &o->max_new; *name = "--max-new"; *lo = 0; *hi = 65536; break;
	case O_PROMPT: *dst = &o->prompt; *name = "--prompt-tokens"; *lo = 2; break;
	case O_GENPROMPT: *dst = &o->gen_prompt; *name = "--gen-prompt-tokens"; *lo = 2; break;
	case O_PREFIXES: *dst = &o->prefixes; *name = "--prefixes"; *hi = 256; break;
	case O_SUFFIXES: *dst = &o->suffixes; *name = "--suffixes"; *hi = 1u << 24; break;
	case O_SEED: *dst = &o->seed; *name = "--seed"; *lo = 0; *hi = UINT64_MAX; break;
	case O_VOCAB: *dst = &o->vocab; *name = "--vocab"; *lo = 2; *hi = 1u << 30; break;
	case O_TIMEOUT:
		*dst = &o->timeout_ms; *name = "--timeout-ms"; *lo = 0; *hi = 86400000;
		break;
	case O_THREADS: *dst = &o->threads; *name = "--threads"; *hi = 1024; break;
	default: return false;
	}
	return true;
}

/* The options' combinations: what is required, what goes with what. */
static int check_load(const struct load_opts *o, uint32_t weight[LM_N])
{
	if (!o->clients || o->duration <= 0)
		return bench_usage_error("load", "--clients N and --duration S are required");
	if (o->sock && (o->model || o->threads)) {
		fprintf(stderr, PROG " load: --model and --threads are for the daemon this "
			"command starts; not with --socket\n");
		return KVP_EXIT_USAGE;
	}
	if (o->threads && !o->model) {
		fprintf(stderr, PROG " load: --threads goes with --model\n");
		return KVP_EXIT_USAGE;
	}
	if (o->mix && !load_parse_mix(o->mix, weight))
		return KVP_EXIT_USAGE;
	return BENCH_RUN;
}

/* Options into o, --mix into weight. */
static int parse_load(int argc, char **argv, struct load_opts *o, uint32_t weight[LM_N])
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "clients", required_argument, NULL, 'c' },
		{ "duration", required_argument, NULL, 'd' },
		{ "mix", required_argument, NULL, 'x' },
		{ "max-new", required_argument, NULL, O_MAXNEW },
		{ "prompt-tokens", required_argument, NULL, O_PROMPT },
		{ "gen-prompt-tokens", required_argument, NULL, O_GENPROMPT },
		{ "prefixes", required_argument, NULL, O_PREFIXES },
		{ "suffixes", required_argument, NULL, O_SUFFIXES },
		{ "seed", required_argument, NULL, O_SEED },
		{ "vocab", required_argument, NULL, O_VOCAB },
		{ "timeout-ms", required_argument, NULL, O_TIMEOUT },
		{ "model", required_argument, NULL, O_MODEL },
		{ "threads", required_argument, NULL, O_THREADS },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int opt;

	*o = (struct load_opts){
		.max_new = 8, .prompt = 512, .gen_prompt = 64, .prefixes = 8, .suffixes = 4096,
		.seed = 1, .timeout_ms = 60000,
	};
	optind = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":s:c:d:x:h", opts, NULL)) != -1) {
		uint64_t *dst, lo, hi;
		const char *name;

		switch (opt) {
		case 's': o->sock = optarg; continue;
		case 'x': o->mix = optarg; continue;
		case O_MODEL: o->model = optarg; continue;
		case 'd':
			if (!kvp_tool_parse_seconds(optarg, LOAD_DURATION_MAX_S, &o->duration)) {
				fprintf(stderr, PROG " load: --duration '%s': want seconds, > 0 and "
					"<= %.0f\n", optarg, LOAD_DURATION_MAX_S);
				return KVP_EXIT_USAGE;
			}
			continue;
		case 'h': usage_load(stdout); return KVP_EXIT_OK;
		}
		if (!load_number_option(opt, o, &name, &lo, &hi, &dst))
			return bench_bad_option("load", argv, opt);
		if (!bench_parse_u64("load", name, optarg, lo, hi, dst))
			return KVP_EXIT_USAGE;
	}
	if (optind < argc)
		return bench_usage_error("load", "unexpected argument '%s'", argv[optind]);
	return check_load(o, weight);
}

/* ---- the daemon ---------------------------------------------------------------- */

/* "VmRSS" etc. from /proc/PID/status in kB; -1 if unreadable. */
static long proc_status_kb(pid_t pid, const char *key)
{
	char path[64], line[256];
	size_t kl = strlen(key);
	long v = -1;
	FILE *f;

	if (pid <= 0)
		return -1;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "r");
	while (f && fgets(line, sizeof(line), f))
		if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
			v = strtol(line + kl + 1, NULL, 10);
			break;
		}
	if (f)
		fclose(f);
	return v;
}

/* The pid of the process serving path, from SO_PEERCRED on a connection of our own
 * (libkvprefix does not show its descriptor). -1 (message printed) on failure. */
static pid_t socket_peer_pid(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct ucred cr = { 0 };
	socklen_t len = sizeof(cr);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	pid_t pid = -1;

	if (fd < 0 || strlen(path) >= sizeof(sa.sun_path)) {
		fprintf(stderr, PROG " load: cannot ask %s for its pid\n", path);
		if (fd >= 0)
			close(fd);
		return -1;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		fprintf(stderr, PROG " load: connect %s (for SO_PEERCRED): %s\n", path,
			strerror(errno));
	else if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
		fprintf(stderr, PROG " load: SO_PEERCRED on %s: %s\n", path, strerror(errno));
	else if (cr.pid > 0)
		pid = cr.pid;
	else
		fprintf(stderr, PROG " load: SO_PEERCRED on %s gave no pid (another pid "
			"namespace?)\n", path);
	close(fd);
	return pid;
}

/* The daemon's STATS into d: the status. */
static int load_dstats(struct kvp_client *c, struct load_dstats *d)
{
	char *js = NULL;
	cJSON *o;
	int rc = kvp_client_stats(c, &js);

	if (rc < 0)
		return rc;
	o = cJSON_Parse(js);
	free(js);
	if (!cJSON_IsObject(o)) {
		cJSON_Delete(o);
		return KVP_EPROTO;
	}
	d->connections = bench_json_number(o, "connections");
	d->generations_active = bench_json_number(o, "generations_active");
	d->blocks_total = bench_json_number(o, "blocks_total");
	d->blocks_free = bench_json_number(o, "blocks_free");
	d->blocks_cached = bench_json_number(o, "blocks_cached");
	d->blocks_pinned = bench_json_number(o, "blocks_pinned");
	d->leases_active = bench_json_number(o, "leases_active");
	d->errors = bench_json_number(o, "errors");
	d->evictions = bench_json_number(o, "evictions");
	d->requests = bench_json_number(o, "requests");
	cJSON_Delete(o);
	return 0;
}

/* The model's vocabulary: one GENERATE of max_new 0 with KVP_GEN_LOGITS. 0 on failure. */
static uint32_t load_probe_vocab(struct kvp_client *c)
{
	struct kvp_generate_params gp;
	struct kvp_usage u;
	const uint32_t tok = 1;

	kvp_generate_params_init(&gp);
	gp.max_new = 0;
	gp.flags = KVP_GEN_LOGITS;
	if (kvp_client_generate(c, &tok, 1, &gp, NULL, NULL, &u) < 0)
		return 0;
	return u.n_logits;
}

/* Our own daemon (--index-only, or --model FILE), or the pid of the one at --socket. */
static int load_daemon(const struct load_opts *o, struct kvp_daemon *d, const char **sock,
		       pid_t *pid)
{
	char th[24];
	const char *idx_args[] = { "--index-only", NULL };
	const char *mod_args[] = { "--model", o->model, "--threads", th, NULL };

	if (o->sock) {
		*sock = o->sock;
		*pid = socket_peer_pid(o->sock);
		return 0;
	}
	snprintf(th, sizeof(th), "%" PRIu64,
		 o->threads ? o->threads : (uint64_t)bench_online_cpus());
	if (bench_daemon_start(d, "load", o->model ? mod_args : idx_args,
			       o->model ? ENGINE_DAEMON_WAIT_MS : DAEMON_WAIT_MS) < 0)
		return -1;
	*sock = d->socket;
	*pid = d->pid;
	return 0;
}

/* The default mix for the daemon's mode, without what it does not serve. false
 * (message printed) when nothing is left. */
static bool load_fit_mix(struct load_shared *sh, bool mix_given,
			 const struct kvp_server_info *info)
{
	if (!mix_given) {
		sh->weight[LM_LOOKUP] = 70;
		sh->weight[info->index_only ? LM_INSERT : LM_GENERATE] = 25;
		sh->weight[LM_STATS] = 5;
	}
	if (info->index_only && sh->weight[LM_GENERATE]) {
		fprintf(stderr, "load: note: the daemon runs --index-only: no GENERATE\n");
		sh->weight[LM_GENERATE] = 0;
	}
	if (!info->index_only && sh->weight[LM_INSERT]) {
		fprintf(stderr, "load: note: the daemon runs a model and refuses INSERT: no "
			"INSERT\n");
		sh->weight[LM_INSERT] = 0;
	}
	for (unsigned m = 0; m < LM_N; m++)
		sh->weight_sum += sh->weight[m];
	if (!sh->weight_sum) {
		fprintf(stderr, PROG " load: nothing left in the mix for this daemon\n");
		return false;
	}
	return true;
}

/*
 * Before the clients: HELLO, fit the mix, the vocabulary (asked of a model), the
 * daemon's counters and RSS. BENCH_RUN, or the exit status (message printed).
 */
static int load_prepare(struct load_opts *o, const char *sock, struct load_shared *sh,
			struct kvp_server_info *info, struct load_daemon_report *rep)
{
	struct kvp_client *c = NULL;
	int rc, ret = KVP_EXIT_FAIL;

	if (kvp_tool_connect(PROG " load", sock, &c) < 0)
		return KVP_EXIT_FAIL;
	memset(info, 0, sizeof(*info));
	rc = kvp_client_hello(c, NULL, NULL, info);
	if (rc < 0) {
		kvp_tool_perror(PROG " load", "hello", c, rc);
		goto out;
	}
	if (!load_fit_mix(sh, o->mix != NULL, info)) {
		ret = KVP_EXIT_USAGE;
		goto out;
	}
	if (!o->vocab && !info->index_only) {
		o->vocab = load_probe_vocab(c);
		if (!o->vocab) {
			kvp_tool_perror(PROG " load", "asking the model's vocabulary (pass --vocab)",
					c, KVP_EPROTO);
			goto out;
		}
	}
	if (!o->vocab)
		o->vocab = LOAD_VOCAB_DEFAULT;
	rc = load_dstats(c, &rep->ds0);   /* after the probe: the deltas are the clients' alone */
	if (rc < 0) {
		kvp_tool_perror(PROG " load", "stats", c, rc);
		goto out;
	}
	if (o->prompt > info->max_tokens || o->gen_prompt > info->max_tokens) {
		fprintf(stderr, PROG " load: the daemon takes at most %u tokens a request\n",
			info->max_tokens);
		ret = KVP_EXIT_USAGE;
		goto out;
	}
	rep->rss_start = proc_status_kb(rep->pid, "VmRSS");
	rep->rss_peak = rep->rss_start;
	if (rep->rss_start < 0)
		fprintf(stderr, "load: note: cannot read the daemon's RSS (pid %d)\n",
			(int)rep->pid);
	ret = BENCH_RUN;
out:
	kvp_client_close(c);   /* an idle connection could time out in a long run */
	return ret;
}

/* ---- the clients --------------------------------------------------------------- */

/* The shared prompts and everything else the clients read; 0, or -1 out of memory. */
static int load_share(const struct load_opts *o, const char *sock, struct load_shared *sh,
		      uint32_t **prefix_buf)
{
	sh->sock = sock;
	sh->duration_s = o->duration;
	sh->prompt_tokens = (uint32_t)o->prompt;
	sh->prefix_tokens = (uint32_t)(o->prompt * 3 / 4);
	sh->gen_prompt_tokens = (uint32_t)o->gen_prompt;
	sh->gen_prefix_tokens = (uint32_t)(o->gen_prompt * 3 / 4);
	if (sh->gen_prefix_tokens > sh->prefix_tokens)
		sh->gen_prefix_tokens = sh->prefix_tokens;
	sh->n_prefixes = (uint32_t)o->prefixes;
	sh->n_suffixes = (uint32_t)o->suffixes;
	sh->vocab = (uint32_t)o->vocab;
	sh->max_new = (uint32_t)o->max_new;
	sh->timeout_ms = (uint32_t)o->timeout_ms;
	sh->seed = o->seed;
	*prefix_buf = malloc(o->prefixes * sh->prefix_tokens * sizeof(uint32_t) + 1);
	if (!*prefix_buf)
		return -1;
	for (uint32_t p = 0; p < o->prefixes; p++)
		bench_rand_tokens(*prefix_buf + (size_t)p * sh->prefix_tokens, sh->prefix_tokens,
				  kvp_splitmix64(o->seed) + p, sh->vocab);
	sh->prefixes = *prefix_buf;
	return 0;
}

/* The workers' own parts: index, seed of the mix, prompt buffer. 0, or -1 out of
 * memory. */
static int load_workers_init(const struct load_opts *o, struct load_shared *sh,
			     struct load_worker *ws)
{
	for (uint32_t i = 0; i < o->clients; i++) {
		struct load_worker *w = &ws[i];

		w->idx = i;
		w->sh = sh;
		w->rng = kvp_splitmix64(o->seed * 0x9E3779B97F4A7C15ull + i + 1) | 1;
		w->prompt = malloc((o->prompt > o->gen_prompt ? o->prompt : o->gen_prompt) *
				   sizeof(uint32_t));
		if (!w->prompt)
			return -1;
	}
	return 0;
}

/* Start every client and let them go once all have connected. 0, or -1 when a thread
 * could not be started (the others are told to give up and joined). */
static int load_start_clients(const struct load_opts *o, struct load_shared *sh,
			      struct load_worker *ws)
{
	uint32_t started = 0;
	int rc;

	for (uint32_t i = 0; i < o->clients; i++) {
		rc = pthread_create(&ws[i].th, NULL, load_worker_main, &ws[i]);
		if (rc != 0) {
			fprintf(stderr, PROG " load: pthread_create (client %u): %s\n", i + 1,
				strerror(rc));
			break;
		}
		started++;
	}
	pthread_mutex_lock(&sh->mu);
	while (sh->ready < started)
		pthread_cond_wait(&sh->cv, &sh->mu);
	sh->go = started == o->clients ? 1 : -1;
	pthread_cond_broadcast(&sh->cv);
	pthread_mutex_unlock(&sh->mu);
	if (started == o->clients)
		return 0;
	for (uint32_t i = 0; i < started; i++)
		pthread_join(ws[i].th, NULL);
	return -1;
}

/* Once a second until the duration has passed: requests/s, errors and the daemon's
 * RSS on stderr (its peak kept in rep). Then join the clients; the seconds they ran. */
static double load_progress(const struct load_opts *o, struct load_worker *ws,
			    struct load_daemon_report *rep)
{
	uint64_t t_start = kvp_tool_now_ns(), t_last = t_start, last_req = 0;

	for (uint32_t sec = 1;; sec++) {
		uint64_t target = t_start + (uint64_t)sec * 1000000000ull, now, req = 0, err = 0;
		long rss;

		if (target >= t_start + (uint64_t)(o->duration * 1e9))
			break;
		while ((now = kvp_tool_now_ns()) < target) {
			uint64_t ms = (target - now) / 1000000 + 1;

			bench_sleep_ms(ms > 100 ? 100 : (long)ms);
		}
		for (uint32_t i = 0; i < o->clients; i++) {
			req += atomic_load_explicit(&ws[i].live_requests, memory_order_relaxed);
			err += atomic_load_explicit(&ws[i].live_errors, memory_order_relaxed);
		}
		rss = proc_status_kb(rep->pid, "VmRSS");
		if (rss > rep->rss_peak)
			rep->rss_peak = rss;
		fprintf(stderr, "load: %u s: %.0f requests/s, %" PRIu64 " requests, %" PRIu64
			" errors, daemon RSS %ld kB\n", sec,
			(double)(req - last_req) / ((double)(now - t_last) / 1e9), req, err, rss);
		last_req = req;
		t_last = now;
	}
	for (uint32_t i = 0; i < o->clients; i++)
		pthread_join(ws[i].th, NULL);
	return (double)(kvp_tool_now_ns() - t_start) / 1e9;
}

/* The workers' counters and histograms into t. */
static void load_add_up(const struct load_worker *ws, uint64_t clients, struct load_totals *t)
{
	for (uint32_t i = 0; i < clients; i++) {
		const struct load_worker *w = &ws[i];

		t->requests += w->requests;
		t->errors += w->errors;
		t->reconnects += w->reconnects;
		t->qt += w->query_tokens;
		t->ht += w->hit_tokens;
		t->gp += w->gen_prompt;
		t->gc += w->gen_cached;
		t->gt += w->gen_tokens;
		for (unsigned k = 0; k < LK_N; k++) {
			t->count[k] += w->count[k];
			t->kind_err[k] += w->kind_errors[k];
			load_hist_merge(&t->kinds[k], &w->hist[k]);
		}
		for (unsigned s = 0; s < LOAD_ERR_SLOTS; s++)
			t->by_status[s] += w->err_by_status[s];
		if (!t->first_error && w->first_error[0])
			t->first_error = w->first_error;
	}
	for (unsigned k = 0; k < LK_N; k++)
		load_hist_merge(&t->all, &t->kinds[k]);
}

/* The daemon once every client has gone (the connections it still counts are others'
 * and this one), and its RSS at the end. */
static void load_settle(const char *sock, struct load_daemon_report *rep)
{
	struct kvp_client *c = NULL;
	uint64_t t0 = kvp_tool_now_ns();
	struct load_dstats *ds1 = &rep->ds1;
	int rc = kvp_tool_connect(PROG " load", sock, &c);

	while (rc == 0) {
		rc = load_dstats(c, ds1);
		if (rc < 0)
			break;
		rep->dstats_ok = true;
		rep->settle_ms = (double)(kvp_tool_now_ns() - t0) / 1e6;
		if ((ds1->connections <= rep->ds0.connections && ds1->generations_active == 0) ||
		    rep->settle_ms >= LOAD_SETTLE_MS)
			break;
		bench_sleep_ms(10);
	}
	if (rc < 0) {
		kvp_tool_perror(PROG " load", "stats at the end", c, rc);
		rep->dstats_ok = false;
	}
	kvp_client_close(c);
	rep->rss_end = proc_status_kb(rep->pid, "VmRSS");
	rep->hwm = proc_status_kb(rep->pid, "VmHWM");
	if (rep->rss_end > rep->rss_peak)
		rep->rss_peak = rep->rss_end;
	rep->invariant_ok = rep->dstats_ok && ds1->blocks_free + ds1->blocks_cached +
					      ds1->blocks_pinned == ds1->blocks_total;
}

/* ---- the command --------------------------------------------------------------- */

/* Everything a run allocates, for one cleanup. */
struct load_run {
	struct load_shared sh;
	bool sync;                   /* sh.mu and sh.cv initialised */
	struct load_worker *ws;      /* clients */
	struct load_totals *t;
	uint32_t *prefix_buf;
};

/* The shared prompts, the workers and their start barrier; 0, or -1 out of memory. */
static int load_setup(const struct load_opts *o, const char *sock,
		      const struct kvp_server_info *info, pid_t pid, struct load_run *r)
{
	struct load_shared *sh = &r->sh;

	r->ws = aligned_alloc(_Alignof(struct load_worker), o->clients * sizeof(*r->ws));
	if (r->ws)
		memset(r->ws, 0, o->clients * sizeof(*r->ws));
	r->t = calloc(1, sizeof(*r->t));
	if (load_share(o, sock, sh, &r->prefix_buf) < 0 || !r->ws || !r->t)
		return -1;
	fprintf(stderr, "load: %" PRIu64 " clients for %.1f s against %s (%s, pid %d), mix "
		"lookup=%u insert=%u generate=%u stats=%u, prompts %u tokens (generate %u, "
		"max_new %u), vocab %u\n", o->clients, o->duration, sock,
		info->index_only ? "index-only" : info->name, (int)pid, sh->weight[LM_LOOKUP],
		sh->weight[LM_INSERT], sh->weight[LM_GENERATE], sh->weight[LM_STATS],
		sh->prompt_tokens, sh->gen_prompt_tokens, sh->max_new, sh->vocab);
	if (pthread_mutex_init(&sh->mu, NULL) != 0)
		return -1;
	if (pthread_cond_init(&sh->cv, NULL) != 0) {
		pthread_mutex_destroy(&sh->mu);
		return -1;
	}
	r->sync = true;
	return load_workers_init(o, sh, r->ws);
}

static void load_run_free(struct load_run *r, uint64_t clients)
{
	for (uint32_t i = 0; r->ws && i < clients; i++)
		free(r->ws[i].prompt);
	if (r->sync) {
		pthread_cond_destroy(&r->sh.cv);
		pthread_mutex_destroy(&r->sh.mu);
	}
	free(r->ws);
	free(r->t);
	free(r->prefix_buf);
}

int bench_cmd_load(int argc, char **argv)
{
	struct load_opts o;
	struct load_run r = { 0 };
	struct load_daemon_report rep = { 0 };
	struct kvp_daemon d = { 0 };
	struct kvp_server_info info;
	const char *sock;
	int ret = parse_load(argc, argv, &o, r.sh.weight);

	if (ret != BENCH_RUN)
		return ret;
	ret = KVP_EXIT_FAIL;
	if (load_daemon(&o, &d, &sock, &rep.pid) < 0)
		goto out;
	ret = load_prepare(&o, sock, &r.sh, &info, &rep);
	if (ret != BENCH_RUN)
		goto out;
	ret = KVP_EXIT_FAIL;
	if (load_setup(&o, sock, &info, rep.pid, &r) < 0) {
		fprintf(stderr, PROG " load: out of memory\n");
		goto out;
	}
	if (load_start_clients(&o, &r.sh, r.ws) < 0)
		goto out;
	r.t->elapsed = load_progress(&o, r.ws, &rep);
	load_add_up(r.ws, o.clients, r.t);
	load_settle(sock, &rep);
	print_load(&o, &r.sh, &info, r.t, &rep);
	if (json_load(&o, &r.sh, &info, r.t, &rep))
		ret = r.t->errors == 0 && rep.dstats_ok && rep.ds1.blocks_pinned == 0 &&
		      rep.invariant_ok ? KVP_EXIT_OK : KVP_EXIT_FAIL;
out:
	load_run_free(&r, o.clients);
	bench_daemon_stop(&d);
	return ret;
}
