/*
 * test_tier.c - the disk tier behind the real daemon (--disk-cache), on real files:
 *
 *   back_from_disk      a prompt evicted from a small pool comes back from the disk:
 *                       its usage counts it cached, its tokens and logits are the ones
 *                       it got when computed, STATS and kvprefix-stat show the promotion
 *   warm_restart        SIGTERM, start again on the same directory: the next request
 *                       hits and gets the same answer
 *   crash_and_torn      kill -9 after requests, then the KV of three blocks damaged on
 *                       disk: after a start, no wrong answer, the damage counted, the
 *                       rest still hits
 *   other_model_cold    the same directory under another model: a cold start, said in
 *                       the log, and nothing of the first model's served
 *   admin_clear         ADMIN CLEAR of every namespace empties the disk tier too; of one
 *                       namespace, its blocks leave it
 *   admin_pins          an ADMIN pin is saved at stop and pinned again at the next start
 *   keeps               a keep is too, until its time; one that ended while stopped is not
 *   pins_first_layout   a pins file of the first layout (pins only) is still read
 *   host_tier           a host RAM tier between the pool and the disk: blocks go down a
 *                       tier at a time and come back right from either; a stop hands
 *                       what it holds to the disk
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
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include <xxhash.h>

#include "daemon_harness.h"
#include "kvprefix.h"

#define VOCAB 1024
#define NTOK 300
#define MAX_NEW 6

static struct kvp_daemon d;
static char disk_dir[64];

static const char *model_of(int seed)
{
	char args[256];

	snprintf(args, sizeof(args),
		 "--vocab 1024 --dim 128 --layers 2 --heads 4 --kv-heads 2 --ffn 256 --ctx 2048 "
		 "--dtype f32 --seed %d --weight-std 0.08", seed);
	return kvp_test_model(seed == 7 ? "small" : "small-other", args);
}

static void setup(void)
{
	cr_assert_eq(kvp_tmpdir_make(disk_dir, sizeof(disk_dir), "tier"), 0);
}

static void teardown(void)
{
	if (d.pid > 0)
		(void)kvp_daemon_stop(&d);
	kvp_tmpdir_remove(disk_dir);
}

TestSuite(tier, .init = setup, .fini = teardown, .timeout = 300);

/* kvprefixd on a model with a pool of 24 blocks of 16 tokens and the disk tier, and a
 * host tier of host_mb MB when not 0. */
static void start_host(int seed, int host_mb)
{
	char dir[80], mb[16];
	const char *args[] = { "--model", model_of(seed), "--kv-dtype", "f32", "--block-tokens", "16",
			       "--capacity-blocks", "24", "--threads", "2", "--disk-cache", dir,
			       "--disk-cache-gb", "1", host_mb ? "--host-cache-mb" : NULL, mb, NULL };

	snprintf(dir, sizeof(dir), "%s/tier", disk_dir);
	snprintf(mb, sizeof(mb), "%d", host_mb);
	cr_assert_eq(kvp_daemon_start(&d, args), 0, "kvprefixd did not start");
}

static void start(int seed)
{
	start_host(seed, 0);
}

static void stop(void)
{
	int st = kvp_daemon_stop(&d);

	cr_assert_eq(st, 0, "kvprefixd exited with %d (its log is above)", st);
	d.pid = 0;
}

static bool log_has(const char *what)
{
	char buf[65536];
	FILE *f = fopen(d.log, "r");
	size_t n;

	cr_assert_not_null(f);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	return strstr(buf, what) != NULL;
}

struct answer {
	uint32_t tokens[MAX_NEW];
	uint32_t n;
	struct kvp_usage u;
	float logits[VOCAB];
};

static void collect(void *arg, const uint32_t *tokens, uint32_t n)
{
	struct answer *a = arg;

	for (uint32_t i = 0; i < n && a->n < MAX_NEW; i++)
		a->tokens[a->n++] = tokens[i];
}

static void prompt(uint32_t *t, uint32_t seed)
{
	uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;

	for (size_t i = 0; i < NTOK; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		t[i] = (uint32_t)(x % VOCAB);
	}
}

/* Prompt p (seed) greedily, MAX_NEW tokens, with its last position's logits. */
static struct answer ask(uint32_t p)
{
	struct kvp_client *c = NULL;
	struct kvp_generate_params gp;
	struct answer a = { .n = 0 };
	uint32_t t[NTOK];
	int rc;

	prompt(t, p);
	cr_assert_eq(kvp_client_connect(d.socket, &c), 0);
	cr_assert_eq(kvp_client_set_timeout_ms(c, 120000), 0);
	kvp_generate_params_init(&gp);
	gp.max_new = MAX_NEW;
	gp.flags = KVP_GEN_LOGITS;
	rc = kvp_client_generate(c, t, NTOK, &gp, collect, &a, &a.u);
	cr_assert_eq(rc, 0, "generate: %s: %s", kvp_strerror(rc), kvp_client_error(c));
	memcpy(a.logits, a.u.logits, sizeof(a.logits));
	kvp_client_close(c);
	return a;
}

static void same_answer(const struct answer *got, const struct answer *want, const char *what)
{
	cr_assert_eq(got->n, want->n, "%s: %u tokens, %u before", what, got->n, want->n);
	cr_assert_arr_eq(got->tokens, want->tokens, got->n * sizeof(uint32_t),
			 "%s: other tokens than when computed", what);
	for (int i = 0; i < VOCAB; i++)
		cr_assert(fabsf(got->logits[i] - want->logits[i]) <= 1e-4f,
			  "%s: logit %d is %g, was %g", what, i, got->logits[i], want->logits[i]);
}

/* tiers.<tier>.<key> of STATS, or its top-level <key> with tier NULL. */
static double stat_in(const char *tier, const char *key)
{
	struct kvp_client *c = NULL;
	char *json = NULL;
	cJSON *o, *v;
	double x;

	cr_assert_eq(kvp_client_connect(d.socket, &c), 0);
	cr_assert_eq(kvp_client_stats(c, &json), 0);
	kvp_client_close(c);
	o = cJSON_Parse(json);
	cr_assert_not_null(o);
	v = cJSON_GetObjectItem(tier ? cJSON_GetObjectItem(cJSON_GetObjectItem(o, "tiers"), tier) : o,
				key);
	cr_assert(cJSON_IsNumber(v), "STATS has no %s%s%s: %s", tier ? tier : "", tier ? "." : "",
		  key, json);
	x = v->valuedouble;
	cJSON_Delete(o);
	free(json);
	return x;
}

static double disk_stat(const char *key)
{
	return stat_in("disk", key);
}

static double host_stat(const char *key)
{
	return stat_in("host", key);
}

/* The disk tier's demotions, once the first has landed (up to 2 s): the disk's thread
 * writes a demoted block after the answer that evicted it, and counts it when done. */
static double disk_demotions_landed(void)
{
	double x = disk_stat("demotions");

	for (int i = 0; i < 200 && x == 0; i++) {
		usleep(10000);
		x = disk_stat("demotions");
	}
	return x;
}

/* The disk tier's blocks once those dropped mid-write have landed (up to 2 s): a
 * block's slot counts as held until its write is done, dropped or not. */
static double disk_blocks_settled(void)
{
	double x = disk_stat("blocks");

	for (int i = 0; i < 200 && x != 0; i++) {
		usleep(10000);
		x = disk_stat("blocks");
	}
	return x;
}

#define FULL_BLOCKS (NTOK / 16 * 16)

Test(tier, back_from_disk)
{
	struct answer a0, b0, a1;

	start(7);
	a0 = ask(1);
	cr_assert_eq(a0.u.cached_tokens, 0);
	b0 = ask(2);   /* 19 blocks of a pool of 24: most of the first prompt's evicted */
	cr_assert_eq(b0.u.cached_tokens, 0);
	cr_assert_gt(disk_demotions_landed(), 0, "nothing was written to the disk");
	a1 = ask(1);
	cr_assert_eq(a1.u.cached_tokens, FULL_BLOCKS, "%u of the prompt's %u block tokens cached",
		     a1.u.cached_tokens, FULL_BLOCKS);
	same_answer(&a1, &a0, "read back from the disk");
	cr_assert_gt(disk_stat("promoted_blocks"), 0);
	cr_assert_eq(disk_stat("verify_failures"), 0);
	{   /* kvprefix-stat shows the tier */
		char cmd[512], out[8192];

		snprintf(cmd, sizeof(cmd), "'%s' --socket '%s'", KVP_STAT_PATH, d.socket);
		cr_assert_eq(kvp_run_capture(cmd, out, sizeof(out)), 0);
		cr_assert_not_null(strstr(out, "disk tier (blocks)"), "kvprefix-stat: %s", out);
	}
	stop();
}

Test(tier, warm_restart)
{
	struct answer a0, b0, a1, b1;

	start(7);
	a0 = ask(1);
	b0 = ask(2);
	stop();
	start(7);
	cr_assert(log_has("warm start"), "the log does not say the start was warm");
	a1 = ask(1);
	b1 = ask(2);
	cr_assert_eq(a1.u.cached_tokens, FULL_BLOCKS);
	cr_assert_eq(b1.u.cached_tokens, FULL_BLOCKS);
	same_answer(&a1, &a0, "after a restart");
	same_answer(&b1, &b0, "after a restart");
	stop();
}

/* Flip a byte of the KV of the first three slots of DIR/blocks (what was demoted
 * first: the deepest blocks of the first prompt); returns how many slots. */
static int damage_slots(void)
{
	char path[128];
	struct stat st;
	int fd, n = 0;
	/* the slot size of this model: 4096 of header and tokens, then the KV (2 layers x
	 * 2 x 64 x 16 tokens x f32 = 16 KiB) */
	const off_t slot = 4096 + 16384;

	snprintf(path, sizeof(path), "%s/tier/blocks", disk_dir);
	fd = open(path, O_RDWR);
	cr_assert_geq(fd, 0);
	cr_assert_eq(fstat(fd, &st), 0);
	for (off_t off = 0; off + slot <= st.st_size && n < 3; off += slot, n++) {
		uint8_t x;

		cr_assert_eq(pread(fd, &x, 1, off + 4096 + 1000), 1);
		x ^= 0x5a;
		cr_assert_eq(pwrite(fd, &x, 1, off + 4096 + 1000), 1);
	}
	close(fd);
	return n;
}

Test(tier, crash_and_torn_blocks)
{
	struct answer a0, b0, a1, b1;
	int status;

	start(7);
	a0 = ask(1);
	b0 = ask(2);
	(void)ask(3);   /* more of the first two on the disk */
	kill(d.pid, SIGKILL);
	cr_assert_eq(waitpid(d.pid, &status, 0), d.pid);
	d.pid = 0;
	cr_assert_eq(kvp_daemon_stop(&d), 0);   /* reaped: only its directory goes */
	damage_slots();
	start(7);
	a1 = ask(1);
	b1 = ask(2);
	same_answer(&a1, &a0, "after a crash and damaged slots");
	same_answer(&b1, &b0, "after a crash and damaged slots");
	cr_assert_gt(disk_stat("verify_failures"), 0, "no damaged block was noticed");
	cr_assert_gt(a1.u.cached_tokens + b1.u.cached_tokens, 0,
		     "nothing undamaged was served from the disk");
	stop();
}

Test(tier, other_model_starts_cold)
{
	struct answer a;

	start(7);
	(void)ask(1);
	(void)ask(2);
	stop();
	start(8);
	cr_assert(log_has("starting cold") && log_has("was written for \"model "),
		  "the log does not say why the start was cold");
	a = ask(1);
	cr_assert_eq(a.u.cached_tokens, 0, "another model's blocks were served");
	cr_assert_eq(disk_stat("promoted_blocks"), 0);
	stop();
}

Test(tier, admin_clear_all_empties_the_disk)
{
	struct kvp_client *c = NULL;
	struct answer a;
	uint32_t blocks = 0;

	start(7);
	(void)ask(1);
	(void)ask(2);
	cr_assert_gt(disk_stat("blocks"), 0);
	cr_assert_eq(kvp_client_connect(d.socket, &c), 0);
	cr_assert_eq(kvp_client_admin(c, KVP_ADMIN_CLEAR, KVP_ADMIN_F_ALL, 0, NULL, 0, NULL,
				      &blocks, NULL), 0, "%s", kvp_client_error(c));
	kvp_client_close(c);
	cr_assert_eq(disk_blocks_settled(), 0, "ADMIN CLEAR ALL left blocks on the disk");
	a = ask(1);
	cr_assert_eq(a.u.cached_tokens, 0, "a cleared prefix was served");
	stop();
}

static uint32_t admin(uint32_t op, const uint32_t *tokens, size_t n)
{
	struct kvp_client *c = NULL;
	uint32_t blocks = 0;

	cr_assert_eq(kvp_client_connect(d.socket, &c), 0);
	cr_assert_eq(kvp_client_admin(c, op, 0, 0, tokens, n, NULL, &blocks, NULL), 0, "%s",
		     kvp_client_error(c));
	kvp_client_close(c);
	return blocks;
}

Test(tier, admin_pins_survive_a_restart)
{
	uint32_t t[NTOK];

	prompt(t, 1);
	start(7);
	(void)ask(1);
	cr_assert_eq(admin(KVP_ADMIN_PIN, t, 48), 3);
	stop();
	start(7);
	cr_assert(log_has("1 of 1 ADMIN pins restored"), "the log does not say the pin came back");
	cr_assert_eq(stat_in(NULL, "blocks_pinned"), 3);
	(void)ask(2);   /* pool pressure: the pinned blocks stay */
	(void)ask(3);
	cr_assert_eq(stat_in(NULL, "blocks_pinned"), 3);
	cr_assert_eq(admin(KVP_ADMIN_UNPIN, t, 48), 3, "the restored pin is not an ADMIN pin");
	cr_assert_eq(stat_in(NULL, "blocks_pinned"), 0);
	stop();
}

/* A pins file of the first layout (ADMIN pins only, "KVPPINS1") is still read: the
 * one a stop just wrote, rewritten so, pins its prefix again at the next start. */
Test(tier, a_pins_file_of_the_first_layout_is_read)
{
	uint32_t t[NTOK];
	char path[128];
	uint8_t *buf;
	uint64_t sum;
	long len;
	FILE *f;

	prompt(t, 1);
	start(7);
	(void)ask(1);
	cr_assert_eq(admin(KVP_ADMIN_PIN, t, 48), 3);
	stop();
	snprintf(path, sizeof(path), "%s/tier/pins", disk_dir);
	f = fopen(path, "rb");
	cr_assert_not_null(f, "no pins file at %s", path);
	cr_assert_eq(fseek(f, 0, SEEK_END), 0);
	len = ftell(f);
	rewind(f);
	buf = malloc((size_t)len);
	cr_assert_eq(fread(buf, 1, (size_t)len, f), (size_t)len);
	fclose(f);
	cr_assert_eq(memcmp(buf, "KVPPINS2", 8), 0);
	cr_assert_eq(buf[len - 12], 0, "keeps were saved");   /* u32 0 keeps, then the sum */
	buf[7] = '1';
	len -= 12;   /* no keeps section */
	sum = XXH3_64bits(buf, (size_t)len);
	for (int i = 0; i < 8; i++)
		buf[len + i] = (uint8_t)(sum >> (8 * i));
	f = fopen(path, "wb");
	cr_assert_eq(fwrite(buf, 1, (size_t)len + 8, f), (size_t)len + 8);
	fclose(f);
	free(buf);
	start(7);
	cr_assert(log_has("1 of 1 ADMIN pins restored"), "the first layout's pin did not come back");
	cr_assert_eq(stat_in(NULL, "blocks_pinned"), 3);
	stop();
}

/* GENERATE (the prompt alone) with KEEP of tokens[0 .. n) for keep_s s at priority. */
static void keep(const uint32_t *tokens, size_t n, uint32_t keep_s, uint32_t priority)
{
	struct kvp_client *c = NULL;
	struct kvp_generate_params gp;
	struct answer a = { .n = 0 };

	cr_assert_eq(kvp_client_connect(d.socket, &c), 0);
	cr_assert_eq(kvp_client_set_timeout_ms(c, 120000), 0);
	kvp_generate_params_init(&gp);
	gp.max_new = 0;
	gp.keep_s = keep_s;
	gp.priority = priority;
	cr_assert_eq(kvp_client_generate(c, tokens, n, &gp, collect, &a, &a.u), 0, "%s",
		     kvp_client_error(c));
	kvp_client_close(c);
}

/* A keep is saved at stop and kept again at the next start until the same time; one
 * whose time passes while the daemon is down is not. */
Test(tier, keeps_survive_a_restart)
{
	uint32_t t1[NTOK], t4[NTOK];
	struct timespec t0, now;

	prompt(t1, 1);
	prompt(t4, 4);
	start(7);
	(void)ask(1);
	(void)ask(4);
	keep(t1, 48, 3600, 5);   /* 3 blocks for an hour */
	clock_gettime(CLOCK_MONOTONIC, &t0);
	keep(t4, 32, 2, 9);      /* 2 blocks for 2 s */
	cr_assert_eq(stat_in(NULL, "keeps_active"), 2);
	stop();
	do {   /* until the short keep's time has passed */
		usleep(50000);
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while ((now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000 < 2200);
	start(7);
	cr_assert(log_has("1 of 2 keeps restored (1 had ended while stopped)"),
		  "the log does not say the hour's keep came back and the other did not");
	cr_assert_eq(stat_in(NULL, "keeps_active"), 1);
	cr_assert_eq(stat_in(NULL, "blocks_pinned"), 3);
	(void)ask(2);   /* pool pressure: the kept blocks stay */
	(void)ask(3);
	cr_assert_eq(stat_in(NULL, "blocks_pinned"), 3);
	cr_assert_eq(stat_in(NULL, "keeps_given_up"), 0);
	stop();
}

/* Pool (24 blocks) over a host tier (1 MB: 48 blocks of this model) over the disk:
 * blocks go down one tier at a time and come back from either, right; a restart finds
 * what the host tier held on the disk. */
Test(tier, host_tier_between_pool_and_disk)
{
	struct answer first[6], again;

	start_host(7, 1);
	cr_assert(log_has("host tier: 48 blocks"), "the log does not size the host tier");
	for (uint32_t p = 1; p <= 5; p++)
		first[p] = ask(p);
	cr_assert_gt(host_stat("evictions"), 0, "the host tier never passed a block down");
	cr_assert_gt(disk_demotions_landed(), 0);
	for (uint32_t p = 1; p <= 4; p++) {
		again = ask(p);
		cr_assert_eq(again.u.cached_tokens, FULL_BLOCKS, "prompt %u: %u tokens cached", p,
			     again.u.cached_tokens);
		same_answer(&again, &first[p], "read back through the tiers");
	}
	cr_assert_gt(host_stat("promoted_blocks"), 0, "nothing came back from the host tier");
	cr_assert_gt(disk_stat("promoted_blocks"), 0, "nothing came back from the disk");
	cr_assert_eq(host_stat("verify_failures") + disk_stat("verify_failures"), 0);
	stop();
	start_host(7, 1);
	for (uint32_t p = 1; p <= 5; p++) {
		again = ask(p);
		cr_assert_eq(again.u.cached_tokens, FULL_BLOCKS, "after a restart, prompt %u", p);
		same_answer(&again, &first[p], "after a restart");
	}
	stop();
}

/* ADMIN CLEAR of the connection's namespace: its blocks leave the disk tier too. */
Test(tier, admin_clear_of_a_namespace_reaches_the_disk)
{
	struct answer a;

	start(7);
	(void)ask(1);
	(void)ask(2);   /* most of the first on the disk now */
	cr_assert_gt(disk_stat("blocks"), 0);
	(void)admin(KVP_ADMIN_CLEAR, NULL, 0);   /* asserts the CLEAR succeeded */
	cr_assert_eq(disk_blocks_settled(), 0, "ADMIN CLEAR of the namespace left blocks on disk");
	a = ask(1);
	cr_assert_eq(a.u.cached_tokens, 0, "a cleared prefix came back from the disk");
	stop();
}
