/*
 * test_redis.c - the Redis tier (--redis) with a real redis-server, started on a private
 * Unix socket, and real daemons standing for two machines:
 *
 *   shared            B's first request for a prompt A computed is served from Redis:
 *                     cached in its usage, the same tokens and logits as A's
 *   bad_values        a value with a flipped KV byte, one whose header is another
 *                     block's (valid checksums, wrong key and tokens): recomputed from
 *                     there, counted, the answer right
 *   other_namespace   a request in another namespace (an adapter) finds nothing of A's
 *   redis_down        Redis killed while the daemons run: no client sees an error; Redis
 *                     back on the same socket: the daemon reconnects and writes resume;
 *                     a daemon started with Redis unreachable serves all the same
 *   index_only        two index-only daemons: one's INSERTs reach the other's LOOKUPs
 *   admin_clear       ADMIN CLEAR on one daemon deletes the namespace's blocks in Redis
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <hiredis/hiredis.h>

#include "../tier/disk_format.h"
#include "daemon_harness.h"
#include "kvprefix.h"

#define VOCAB 1024
#define NTOK 300
#define NB (NTOK / 16)
#define LONG_NTOK 1000       /* 62 blocks: more than the fetch window holds at this size */
#define LONG_NB (LONG_NTOK / 16)
#define MAX_NEW 4

static struct kvp_daemon a, b;
static char dir[64], sock[128];
static pid_t redis_pid;

static const char *model(void)
{
	return kvp_test_model("small", "--vocab 1024 --dim 128 --layers 2 --heads 4 --kv-heads 2 "
			      "--ffn 256 --ctx 2048 --dtype f32 --seed 7 --weight-std 0.08");
}

/* redis-server on dir/redis.sock, nothing saved; returns once it answers PING. */
static void redis_start(void)
{
	redisContext *c = NULL;

	if (access("/usr/bin/redis-server", X_OK) != 0)
		cr_skip_test("redis-server is not installed (scripts/setup.sh installs it)");
	redis_pid = fork();
	cr_assert_geq(redis_pid, 0);
	if (redis_pid == 0) {
		int null = open("/dev/null", O_WRONLY);

		dup2(null, STDOUT_FILENO);   /* its start banner and warnings */
		execl("/usr/bin/redis-server", "redis-server", "--port", "0", "--unixsocket", sock,
		      "--save", "", "--appendonly", "no", "--loglevel", "warning", (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 200; i++) {
		redisReply *r;

		usleep(20000);
		c = redisConnectUnix(sock);
		if (c && !c->err && (r = redisCommand(c, "PING"))) {
			freeReplyObject(r);
			redisFree(c);
			return;
		}
		if (c)
			redisFree(c);
	}
	cr_assert_fail("redis-server did not answer on %s", sock);
}

static void redis_kill(void)
{
	if (redis_pid > 0) {
		kill(redis_pid, SIGKILL);
		waitpid(redis_pid, NULL, 0);
	}
	redis_pid = 0;
	unlink(sock);
}

static void setup(void)
{
	cr_assert_eq(kvp_tmpdir_make(dir, sizeof(dir), "redis"), 0);
	snprintf(sock, sizeof(sock), "%s/redis.sock", dir);
}

static void teardown(void)
{
	if (a.pid > 0)
		(void)kvp_daemon_stop(&a);
	if (b.pid > 0)
		(void)kvp_daemon_stop(&b);
	redis_kill();
	kvp_tmpdir_remove(dir);
}

TestSuite(redis, .init = setup, .fini = teardown, .timeout = 300);

static void start(struct kvp_daemon *d)
{
	char url[160];
	const char *args[] = { "--model", model(), "--kv-dtype", "f32", "--block-tokens", "16",
			       "--threads", "1", "--redis", url, NULL };

	snprintf(url, sizeof(url), "unix:%s", sock);
	cr_assert_eq(kvp_daemon_start(d, args), 0, "kvprefixd did not start");
}

static void stop(struct kvp_daemon *d)
{
	int st = kvp_daemon_stop(d);

	cr_assert_eq(st, 0, "kvprefixd exited with %d (its log is above)", st);
	d->pid = 0;
}

struct answer {
	uint32_t tokens[MAX_NEW], n;
	struct kvp_usage u;
	float logits[VOCAB];
};

static void collect(void *arg, const uint32_t *tokens, uint32_t n)
{
	struct answer *x = arg;

	for (uint32_t i = 0; i < n && x->n < MAX_NEW; i++)
		x->tokens[x->n++] = tokens[i];
}

/* n tokens of prompt seed (a longer one begins as a shorter one does). */
static void prompt_n(uint32_t *t, uint32_t seed, uint32_t n)
{
	uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;

	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		t[i] = (uint32_t)(x % VOCAB);
	}
}

static void prompt(uint32_t *t, uint32_t seed)
{
	prompt_n(t, seed, NTOK);
}

static struct answer ask_n(struct kvp_daemon *d, uint32_t p, uint32_t n, const char *adapter)
{
	struct kvp_client *c = NULL;
	struct kvp_generate_params gp;
	struct answer x = { .n = 0 };
	uint32_t t[LONG_NTOK];
	int rc;

	cr_assert_leq(n, LONG_NTOK);
	prompt_n(t, p, n);
	cr_assert_eq(kvp_client_connect(d->socket, &c), 0);
	cr_assert_eq(kvp_client_set_timeout_ms(c, 120000), 0);
	if (adapter)
		cr_assert_eq(kvp_client_hello(c, adapter, NULL, NULL), 0);
	kvp_generate_params_init(&gp);
	gp.max_new = MAX_NEW;
	gp.flags = KVP_GEN_LOGITS;
	rc = kvp_client_generate(c, t, n, &gp, collect, &x, &x.u);
	cr_assert_eq(rc, 0, "generate: %s: %s", kvp_strerror(rc), kvp_client_error(c));
	memcpy(x.logits, x.u.logits, sizeof(x.logits));
	kvp_client_close(c);
	return x;
}

static struct answer ask(struct kvp_daemon *d, uint32_t p, const char *adapter)
{
	return ask_n(d, p, NTOK, adapter);
}

static void same(const struct answer *got, const struct answer *want, const char *what)
{
	cr_assert_eq(got->n, want->n, "%s", what);
	cr_assert_arr_eq(got->tokens, want->tokens, got->n * sizeof(uint32_t), "%s: other tokens", what);
	for (int i = 0; i < VOCAB; i++)
		cr_assert(fabsf(got->logits[i] - want->logits[i]) <= 1e-4f, "%s: logit %d", what, i);
}

/* tiers.redis.<key> of d's STATS. */
static double redis_stat(struct kvp_daemon *d, const char *key)
{
	struct kvp_client *c = NULL;
	char *json = NULL;
	cJSON *o, *v;
	double x;

	cr_assert_eq(kvp_client_connect(d->socket, &c), 0);
	cr_assert_eq(kvp_client_stats(c, &json), 0);
	kvp_client_close(c);
	o = cJSON_Parse(json);
	cr_assert_not_null(o);
	v = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "tiers"), "redis"), key);
	cr_assert(cJSON_IsNumber(v) || cJSON_IsBool(v), "STATS has no tiers.redis.%s: %s", key, json);
	x = cJSON_IsBool(v) ? cJSON_IsTrue(v) : v->valuedouble;
	cJSON_Delete(o);
	free(json);
	return x;
}

/* Wait until d has written at least n blocks to Redis (its queue drains on its thread). */
static void wait_writes(struct kvp_daemon *d, double n)
{
	for (int i = 0; i < 500 && redis_stat(d, "writes") < n; i++)
		usleep(10000);
	cr_assert_geq(redis_stat(d, "writes"), n, "the blocks were not written to Redis");
}

static void wait_connected(struct kvp_daemon *d)
{
	for (int i = 0; i < 1000 && redis_stat(d, "connected") == 0; i++)
		usleep(10000);
	cr_assert_eq(redis_stat(d, "connected"), 1, "the daemon did not reconnect to Redis");
}

Test(redis, shared_between_two_daemons)
{
	struct answer x, y;

	redis_start();
	start(&a);
	start(&b);
	wait_connected(&a);
	wait_connected(&b);
	x = ask(&a, 1, NULL);
	cr_assert_eq(x.u.cached_tokens, 0);
	wait_writes(&a, NB);
	y = ask(&b, 1, NULL);
	cr_assert_eq(y.u.cached_tokens, NB * 16, "B found %u tokens in Redis", y.u.cached_tokens);
	same(&y, &x, "served from Redis");
	cr_assert_eq(redis_stat(&b, "promoted_blocks"), NB);
	cr_assert_eq(redis_stat(&b, "round_trips"), 1, "more than one round trip for one prompt");
	cr_assert_eq(redis_stat(&b, "verify_failures"), 0);
	{   /* kvprefix-stat shows the tier */
		char cmd[512], out[8192];

		snprintf(cmd, sizeof(cmd), "'%s' --socket '%s'", KVP_STAT_PATH, b.socket);
		cr_assert_eq(kvp_run_capture(cmd, out, sizeof(out)), 0);
		cr_assert_not_null(strstr(out, "redis tier (connected): written 0"), "%s", out);
	}
	stop(&a);
	stop(&b);
}

/* Redis's value of the block of prompt p whose tokens start at block index i, by a scan
 * of every value: its key in key (cap 128), the value malloc'd in *val (*len). */
static bool find_value(redisContext *c, uint32_t p, uint32_t i, char *key, char **val, size_t *len)
{
	uint32_t t[NTOK];
	redisReply *keys = redisCommand(c, "KEYS kvp:1:*");
	bool found = false;

	prompt(t, p);
	cr_assert_not_null(keys);
	for (size_t k = 0; k < keys->elements && !found; k++) {
		redisReply *v = redisCommand(c, "GET %s", keys->element[k]->str);
		uint32_t tok[16];
		struct slot_hdr h;

		if (v && v->type == REDIS_REPLY_STRING && (size_t)v->len > slot_head_bytes(16) &&
		    slot_decode((const uint8_t *)v->str, 16, (uint64_t)v->len - slot_head_bytes(16), &h,
				tok) &&
		    memcmp(tok, t + 16 * i, sizeof(tok)) == 0) {
			snprintf(key, 128, "%s", keys->element[k]->str);
			*len = (size_t)v->len;
			*val = malloc(*len);
			memcpy(*val, v->str, *len);
			found = true;
		}
		freeReplyObject(v);
	}
	freeReplyObject(keys);
	return found;
}

/* Block i of prompt p, its KV damaged in Redis (one bit of a byte near the end): its
 * header and key still hold, its checksum no longer does. */
static void damage_kv(redisContext *c, uint32_t p, uint32_t i)
{
	char key[128], *val;
	size_t len;
	redisReply *r;

	cr_assert(find_value(c, p, i, key, &val, &len), "block %u of prompt %u is not in Redis", i,
		  p);
	val[len - 100] ^= 0x20;
	r = redisCommand(c, "SET %s %b", key, val, len);
	freeReplyObject(r);
	free(val);
}

Test(redis, bad_values_are_misses)
{
	struct answer x1, x2, y1, y2;
	redisContext *c;
	char key[128], key0[128], *val, *val1;
	size_t len, len1;
	redisReply *r;

	redis_start();
	start(&a);
	wait_connected(&a);
	x1 = ask(&a, 1, NULL);
	x2 = ask(&a, 2, NULL);
	wait_writes(&a, 2 * NB);
	c = redisConnectUnix(sock);
	cr_assert(c && !c->err);
	damage_kv(c, 1, 5);   /* prompt 1: block 5's KV */
	/* prompt 2: block 0's value replaced by block 1's (checksums hold; key and tokens are
	 * another block's) */
	cr_assert(find_value(c, 2, 0, key0, &val, &len));
	cr_assert(find_value(c, 2, 1, key, &val1, &len1));
	r = redisCommand(c, "SET %s %b", key0, val1, len1);
	freeReplyObject(r);
	free(val);
	free(val1);
	redisFree(c);
	start(&b);
	wait_connected(&b);
	y1 = ask(&b, 1, NULL);
	cr_assert_eq(y1.u.cached_tokens, 5 * 16, "the blocks before the damaged one: %u tokens",
		     y1.u.cached_tokens);
	same(&y1, &x1, "with a damaged block in Redis");
	y2 = ask(&b, 2, NULL);
	cr_assert_eq(y2.u.cached_tokens, 0, "a block with another's header was used");
	same(&y2, &x2, "with a crafted block in Redis");
	cr_assert_eq(redis_stat(&b, "verify_failures"), 2);
	stop(&a);
	stop(&b);
}

/* The GETs Redis has answered since its statistics were last reset. */
static long redis_gets(redisContext *c)
{
	redisReply *r = redisCommand(c, "INFO commandstats");
	const char *at;
	long n = 0;

	cr_assert(r && r->type == REDIS_REPLY_STRING, "INFO commandstats failed");
	at = strstr(r->str, "cmdstat_get:calls=");
	if (at)
		n = strtol(at + strlen("cmdstat_get:calls="), NULL, 10);
	freeReplyObject(r);
	return n;
}

/* A chain longer than the GETs one fetch keeps in flight: they slide along it, every
 * block comes back; with a bad value early in a chain, nothing after it is asked for
 * beyond what was already in flight. */
Test(redis, long_chain_fetched_through_a_window)
{
	struct answer x1, x2, y1, y2;
	redisContext *c;
	redisReply *r;
	long gets;

	redis_start();
	start(&a);
	wait_connected(&a);
	x1 = ask_n(&a, 5, LONG_NTOK, NULL);
	x2 = ask_n(&a, 6, LONG_NTOK, NULL);
	wait_writes(&a, 2 * LONG_NB);
	c = redisConnectUnix(sock);
	cr_assert(c && !c->err);
	damage_kv(c, 6, 3);
	start(&b);
	wait_connected(&b);
	y1 = ask_n(&b, 5, LONG_NTOK, NULL);
	cr_assert_eq(y1.u.cached_tokens, LONG_NB * 16, "B found %u tokens in Redis",
		     y1.u.cached_tokens);
	same(&y1, &x1, "a long chain served from Redis");
	cr_assert_eq(redis_stat(&b, "round_trips"), 1);
	r = redisCommand(c, "CONFIG RESETSTAT");
	freeReplyObject(r);
	y2 = ask_n(&b, 6, LONG_NTOK, NULL);
	cr_assert_eq(y2.u.cached_tokens, 3 * 16, "the blocks before the damaged one: %u tokens",
		     y2.u.cached_tokens);
	same(&y2, &x2, "a long chain with a damaged block in Redis");
	gets = redis_gets(c);
	cr_assert(gets >= 4 && gets < LONG_NB,
		  "%ld GETs for a chain of %d whose block 3 is bad: the rest was asked for too",
		  gets, LONG_NB);
	redisFree(c);
	stop(&a);
	stop(&b);
}

Test(redis, another_namespace_finds_nothing)
{
	struct answer x, y;

	redis_start();
	start(&a);
	start(&b);
	wait_connected(&a);
	wait_connected(&b);
	x = ask(&a, 1, "lora-a");
	wait_writes(&a, NB);
	y = ask(&b, 1, "lora-b");
	cr_assert_eq(y.u.cached_tokens, 0, "another namespace's blocks were served");
	cr_assert_eq(redis_stat(&b, "verify_failures"), 0, "they were not even found");
	y = ask(&b, 1, "lora-a");
	cr_assert_eq(y.u.cached_tokens, NB * 16);
	same(&y, &x, "the same namespace on another daemon");
	stop(&a);
	stop(&b);
}

Test(redis, redis_down_then_back)
{
	struct answer x;
	double w;

	start(&a);   /* Redis not there yet: it starts and serves all the same */
	x = ask(&a, 1, NULL);
	cr_assert_eq(x.n, MAX_NEW);
	cr_assert_eq(redis_stat(&a, "connected"), 0);
	redis_start();
	wait_connected(&a);
	x = ask(&a, 2, NULL);
	wait_writes(&a, NB);
	redis_kill();
	x = ask(&a, 3, NULL);   /* no error while Redis is gone */
	cr_assert_eq(x.n, MAX_NEW);
	start(&b);
	x = ask(&b, 2, NULL);   /* nothing shared now, and no error */
	cr_assert_eq(x.u.cached_tokens, 0);
	w = redis_stat(&a, "writes");
	redis_start();
	wait_connected(&a);
	x = ask(&a, 4, NULL);
	wait_writes(&a, w + NB);   /* writes resume */
	stop(&a);
	stop(&b);
}

/* Two index-only daemons: what one INSERTs, the other's LOOKUP finds once it has asked
 * Redis (a LOOKUP never waits for it: the first one answers from its own index). */
Test(redis, index_only_daemons_share_their_index)
{
	char url[160];
	const char *args[] = { "--index-only", "--block-tokens", "16", "--redis", url, NULL };
	struct kvp_client *ca = NULL, *cb = NULL;
	struct kvp_match got;
	uint32_t t[NTOK];

	snprintf(url, sizeof(url), "unix:%s", sock);
	redis_start();
	cr_assert_eq(kvp_daemon_start(&a, args), 0);
	cr_assert_eq(kvp_daemon_start(&b, args), 0);
	wait_connected(&a);
	wait_connected(&b);
	prompt(t, 9);
	cr_assert_eq(kvp_client_connect(a.socket, &ca), 0);
	cr_assert_eq(kvp_client_connect(b.socket, &cb), 0);
	cr_assert_eq(kvp_client_insert(ca, t, NTOK, 0, &got), 0);
	wait_writes(&a, NB);
	cr_assert_eq(kvp_client_lookup(cb, t, NTOK, 0, &got), 0);
	cr_assert_eq(got.matched_tokens, 0, "the first LOOKUP waited for Redis");
	for (int i = 0; i < 500 && got.matched_tokens == 0; i++) {
		usleep(10000);
		cr_assert_eq(kvp_client_lookup(cb, t, NTOK, 0, &got), 0);
	}
	cr_assert_eq(got.matched_tokens, NB * 16, "B's index never learned A's blocks");
	/* another namespace (an adapter) finds nothing of them */
	kvp_client_close(cb);
	cr_assert_eq(kvp_client_connect(b.socket, &cb), 0);
	cr_assert_eq(kvp_client_hello(cb, "other", NULL, NULL), 0);
	for (int i = 0; i < 20; i++) {
		cr_assert_eq(kvp_client_lookup(cb, t, NTOK, 0, &got), 0);
		cr_assert_eq(got.matched_tokens, 0, "another namespace's index blocks were served");
		usleep(5000);
	}
	kvp_client_close(ca);
	kvp_client_close(cb);
	stop(&a);
	stop(&b);
}

/* ADMIN CLEAR on one daemon deletes the namespace's blocks from Redis: the other finds
 * nothing of them. */
Test(redis, admin_clear_reaches_redis)
{
	struct kvp_client *c = NULL;
	struct answer y;
	uint32_t blocks = 0;
	redisContext *rc;
	redisReply *k;

	redis_start();
	start(&a);
	start(&b);
	wait_connected(&a);
	wait_connected(&b);
	(void)ask(&a, 1, NULL);
	wait_writes(&a, NB);
	cr_assert_eq(kvp_client_connect(a.socket, &c), 0);
	cr_assert_eq(kvp_client_admin(c, KVP_ADMIN_CLEAR, 0, 0, NULL, 0, NULL, &blocks, NULL), 0,
		     "%s", kvp_client_error(c));
	kvp_client_close(c);
	rc = redisConnectUnix(sock);
	cr_assert(rc && !rc->err);
	for (int i = 0; i < 500; i++) {   /* the tier's thread deletes them */
		k = redisCommand(rc, "KEYS kvp:1:*");
		cr_assert_not_null(k);
		if (k->elements == 0) {
			freeReplyObject(k);
			break;
		}
		freeReplyObject(k);
		usleep(10000);
	}
	k = redisCommand(rc, "KEYS kvp:1:*");
	cr_assert_eq(k->elements, 0, "ADMIN CLEAR left %zu keys in Redis", k->elements);
	freeReplyObject(k);
	redisFree(rc);
	y = ask(&b, 1, NULL);
	cr_assert_eq(y.u.cached_tokens, 0, "a cleared namespace's blocks were served from Redis");
	stop(&a);
	stop(&b);
}
