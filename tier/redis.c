/*
 * redis.c - the Redis tier (kvp_redis.h): a queue of SETs and fetches, a thread that
 * runs them over one hiredis connection (blocking calls with a timeout, pipelined), and
 * the check of every value fetched.
 *
 *   owner thread                      the tier's thread
 *   put: record encoded, queued  ──▶  SETs, up to 64 in one pipeline
 *   fetch: keys queued (first)   ──▶  n GETs pipelined, 512 KiB of values in flight;
 *                                       each value checked in order and copied to its
 *                                       buffer while good; none asked after a bad one
 *   poll: done(arg, good)  ◀───────   done list, notify()
 *
 * Not connected: (re)connect once the backoff has passed; until then puts are dropped
 * and fetches find nothing. Connection state changes are reported once each through
 * kvp_redis_take_change for the owner's log.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "disk_format.h"
#include "kvp_redis.h"
#include "kvp_status.h"

#define PUT_BATCH 64
#define FETCH_WINDOW_BYTES (512u * 1024)
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define IO_TIMEOUT_S 1

struct rjob {
	bool fetch;
	bool clear;                  /* keys to delete: a namespace's (root), or all (all) */
	bool all;
	struct rjob *next;
	size_t len;                  /* put: value bytes */
	uint8_t *val;
	char key[96];
	/* fetch */
	struct kvp_key root, parent0;
	struct kvp_key *keys;
	uint32_t *tokens;
	void **dst;
	uint32_t n, good;
	void (*done)(void *arg, uint32_t good);
	void *arg;
};

struct kvp_redis {
	char url[512], password[256], host[256], path[256];
	int port;
	uint32_t ttl_s, block_tokens;
	size_t block_bytes, head_bytes, queue_bytes;
	uint64_t fingerprint;
	void (*notify)(void *arg);
	void *notify_arg;
	/* under mu */
	pthread_mutex_t mu;
	pthread_cond_t wake;
	pthread_t thread;
	struct rjob *puts, **puts_tail, *fetches, **fetches_tail, *done;
	size_t queued;
	bool stop, changed;
	int state;                   /* -1 not tried yet, 0 down, 1 up */
	char change[768];
	struct kvp_redis_stats st;
	/* the thread's */
	redisContext *ctx;
	uint64_t next_try_ns;
	uint32_t backoff_ms;
	uint32_t *scratch;           /* (block_tokens) */
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void key_text(const struct kvp_redis *r, struct kvp_key root, struct kvp_key key, char *out)
{
	snprintf(out, 96, "kvp:1:%016llx:%016llx%016llx:%016llx%016llx",
		 (unsigned long long)r->fingerprint, (unsigned long long)root.hi,
		 (unsigned long long)root.lo, (unsigned long long)key.hi, (unsigned long long)key.lo);
}

/* "redis://HOST[:PORT]" or "unix:PATH" (also "unix://PATH"). */
static int parse_url(struct kvp_redis *r, const char *url)
{
	const char *hp;

	if (strncmp(url, "unix://", 7) == 0 || strncmp(url, "unix:", 5) == 0) {
		const char *p = url + (url[5] == '/' && url[6] == '/' ? 7 : 5);

		if (!*p || strlen(p) >= sizeof(r->path))
			return KVP_EINVAL;
		snprintf(r->path, sizeof(r->path), "%s", p);
		return KVP_OK;
	}
	if (strncmp(url, "redis://", 8) != 0)
		return KVP_EINVAL;
	hp = url + 8;
	r->port = 6379;
	if (*hp == '\0' || *hp == ':')
		snprintf(r->host, sizeof(r->host), "127.0.0.1");
	else if (strcspn(hp, ":/") < sizeof(r->host))
		snprintf(r->host, sizeof(r->host), "%.*s", (int)strcspn(hp, ":/"), hp);
	else
		return KVP_EINVAL;
	hp += strcspn(hp, ":/");
	if (*hp == ':') {
		char *end;
		long port = strtol(hp + 1, &end, 10);

		if (end == hp + 1 || (*end && *end != '/') || port < 1 || port > 65535)
			return KVP_EINVAL;
		r->port = (int)port;
	}
	return KVP_OK;
}

/* ---- the thread ---------------------------------------------------------------------- */

/* The connection's state for the owner's log, once per change (the first included). */
static void report(struct kvp_redis *r, bool up, const char *detail)
{
	bool changed;

	pthread_mutex_lock(&r->mu);
	changed = r->state != (up ? 1 : 0);
	if (changed) {
		r->state = up ? 1 : 0;
		r->changed = true;
		if (up)
			snprintf(r->change, sizeof(r->change), "redis %s: connected", r->url);
		else
			snprintf(r->change, sizeof(r->change),
				 "redis %s: unreachable (%.100s); serving without it, retrying",
				 r->url, detail);
	}
	r->st.connected = up;
	pthread_mutex_unlock(&r->mu);
	if (changed && r->notify)   /* the owner logs it */
		r->notify(r->notify_arg);
}

static void disconnect(struct kvp_redis *r, const char *why)
{
	char detail[160];

	snprintf(detail, sizeof(detail), "%s", why);
	if (r->ctx)
		redisFree(r->ctx);
	r->ctx = NULL;
	r->backoff_ms = r->backoff_ms ? r->backoff_ms * 2 : BACKOFF_MIN_MS;
	if (r->backoff_ms > BACKOFF_MAX_MS)
		r->backoff_ms = BACKOFF_MAX_MS;
	r->next_try_ns = now_ns() + (uint64_t)r->backoff_ms * 1000000u;
	pthread_mutex_lock(&r->mu);
	r->st.errors++;
	pthread_mutex_unlock(&r->mu);
	report(r, false, detail);
}

/* A connection, made now if the backoff allows; false when there is none. */
static bool connected(struct kvp_redis *r)
{
	const struct timeval tv = { .tv_sec = IO_TIMEOUT_S };
	redisReply *rep;

	if (r->ctx)
		return true;
	if (now_ns() < r->next_try_ns)
		return false;
	r->ctx = r->path[0] ? redisConnectUnixWithTimeout(r->path, tv)
			    : redisConnectWithTimeout(r->host, r->port, tv);
	if (!r->ctx || r->ctx->err) {
		disconnect(r, r->ctx ? r->ctx->errstr : "out of memory");
		return false;
	}
	(void)redisSetTimeout(r->ctx, tv);
	r->ctx->reader->maxbuf = 0;   /* keep the read buffer: values are 100s of KB each */
	if (r->password[0]) {
		rep = redisCommand(r->ctx, "AUTH %s", r->password);
		if (!rep || rep->type == REDIS_REPLY_ERROR) {
			disconnect(r, rep ? rep->str : r->ctx->errstr);
			if (rep)
				freeReplyObject(rep);
			return false;
		}
		freeReplyObject(rep);
	}
	r->backoff_ms = 0;
	report(r, true, NULL);
	return true;
}

/* SET every put of list in one pipeline; they are freed. */
static void run_puts(struct kvp_redis *r, struct rjob *list)
{
	char ttl[16];
	uint32_t sent = 0, ok = 0, n = 0;
	bool up = connected(r);

	snprintf(ttl, sizeof(ttl), "%u", r->ttl_s);
	for (struct rjob *j = list; j; j = j->next, n++) {
		const char *argv[5] = { "SET", j->key, (const char *)j->val, "EX", ttl };
		const size_t lens[5] = { 3, strlen(j->key), j->len, 2, strlen(ttl) };

		if (up && redisAppendCommandArgv(r->ctx, r->ttl_s ? 5 : 3, argv, lens) == REDIS_OK)
			sent++;
	}
	for (uint32_t i = 0; i < sent; i++) {
		redisReply *rep = NULL;

		if (redisGetReply(r->ctx, (void **)&rep) != REDIS_OK) {
			disconnect(r, r->ctx->errstr);
			break;
		}
		ok += rep && rep->type == REDIS_REPLY_STATUS;
		freeReplyObject(rep);
	}
	pthread_mutex_lock(&r->mu);
	r->st.writes += ok;
	r->st.write_bytes += (uint64_t)ok * r->block_bytes;
	r->st.dropped += n - ok;
	pthread_mutex_unlock(&r->mu);
	while (list) {
		struct rjob *next = list->next;

		free(list->val);
		free(list);
		list = next;
	}
}

/* Value v of block i of fetch j: the record it must be. */
static bool value_ok(struct kvp_redis *r, const struct rjob *j, uint32_t i, const redisReply *v)
{
	struct slot_hdr h;

	if (!v || v->type != REDIS_REPLY_STRING || (size_t)v->len != r->head_bytes + r->block_bytes)
		return false;
	return slot_decode((const uint8_t *)v->str, r->block_tokens, r->block_bytes, &h, r->scratch) &&
	       h.fingerprint == r->fingerprint && kvp_key_eq(h.key, j->keys[i]) &&
	       kvp_key_eq(h.parent, i ? j->keys[i - 1] : j->parent0) && kvp_key_eq(h.root, j->root) &&
	       memcmp(r->scratch, j->tokens + (size_t)i * r->block_tokens,
		      r->block_tokens * sizeof(uint32_t)) == 0 &&
	       (r->block_bytes ? kv_checksum(v->str + r->head_bytes, r->block_bytes) : 0) == h.kv_sum;
}

/* GETs of one fetch in flight at once: enough values to cover a network's round trip,
 * few enough that Redis never buffers a whole chain's replies (it builds every reply
 * of a pipeline before writing one, in memory it first has to fault in). */
static uint32_t fetch_window(const struct kvp_redis *r)
{
	size_t w = FETCH_WINDOW_BYTES / (r->head_bytes + r->block_bytes);

	return w < 1 ? 1 : w > UINT32_MAX ? UINT32_MAX : (uint32_t)w;
}

/* Send what the output buffer holds; false (disconnected) on an error. */
static bool flush_out(struct kvp_redis *r)
{
	int done = 0;

	while (!done)
		if (redisBufferWrite(r->ctx, &done) != REDIS_OK) {
			disconnect(r, r->ctx->errstr);
			return false;
		}
	return true;
}

/* The GETs of blocks keys[0 .. n), at most a window in flight; each value is checked in
 * order and copied while good. After the first bad or missing one nothing more is
 * asked, and the GETs in flight are drained. */
static void run_fetch(struct kvp_redis *r, struct rjob *j)
{
	uint64_t t0 = now_ns();
	uint32_t sent = 0, got = 0, bad = 0, window = fetch_window(r);
	bool stopped = false, can_ask = true, up = connected(r);
	char key[96];

	while (up) {
		uint32_t before = sent;
		redisReply *v = NULL;

		while (can_ask && !stopped && sent < j->n && sent - got < window) {
			key_text(r, j->root, j->keys[sent], key);
			if (redisAppendCommand(r->ctx, "GET %s", key) != REDIS_OK) {
				can_ask = false;   /* out of memory: what was sent is still read */
				break;
			}
			sent++;
		}
		if (sent > before && !flush_out(r))
			break;
		if (got == sent)
			break;
		if (redisGetReply(r->ctx, (void **)&v) != REDIS_OK) {
			disconnect(r, r->ctx->errstr);
			break;
		}
		if (!stopped && value_ok(r, j, got, v)) {
			if (r->block_bytes)   /* an index's blocks have no KV */
				memcpy(j->dst[got], v->str + r->head_bytes, r->block_bytes);
			j->good++;
		} else if (!stopped) {
			stopped = true;
			bad += v && v->type != REDIS_REPLY_NIL;
		}
		got++;
		freeReplyObject(v);
	}
	pthread_mutex_lock(&r->mu);
	r->st.fetches += sent > 0;
	r->st.fetch_us += sent ? (now_ns() - t0) / 1000 : 0;
	r->st.hits += j->good;
	r->st.hit_bytes += (uint64_t)j->good * r->block_bytes;
	r->st.verify_failures += bad;
	pthread_mutex_unlock(&r->mu);
}

/* Delete every key of namespace j->root, or of this fingerprint with j->all (SCAN,
 * then UNLINK what each step found); j is freed. */
static void run_clear(struct kvp_redis *r, struct rjob *j)
{
	char pattern[96], cursor[32] = "0";

	if (j->all)
		snprintf(pattern, sizeof(pattern), "kvp:1:%016llx:*",
			 (unsigned long long)r->fingerprint);
	else
		snprintf(pattern, sizeof(pattern), "kvp:1:%016llx:%016llx%016llx:*",
			 (unsigned long long)r->fingerprint, (unsigned long long)j->root.hi,
			 (unsigned long long)j->root.lo);
	free(j);
	if (!connected(r))
		return;
	do {
		redisReply *rep = redisCommand(r->ctx, "SCAN %s MATCH %s COUNT 1000", cursor, pattern);

		if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2) {
			if (rep)
				freeReplyObject(rep);
			else
				disconnect(r, r->ctx->errstr);
			return;
		}
		snprintf(cursor, sizeof(cursor), "%s", rep->element[0]->str);
		for (size_t k = 0; k < rep->element[1]->elements; k++)
			(void)redisAppendCommand(r->ctx, "UNLINK %s", rep->element[1]->element[k]->str);
		for (size_t k = 0; k < rep->element[1]->elements; k++) {
			redisReply *u = NULL;

			if (redisGetReply(r->ctx, (void **)&u) != REDIS_OK) {
				freeReplyObject(rep);
				disconnect(r, r->ctx->errstr);
				return;
			}
			freeReplyObject(u);
		}
		freeReplyObject(rep);
	} while (strcmp(cursor, "0") != 0);
}

static void *redis_main(void *arg)
{
	struct kvp_redis *r = arg;

	pthread_mutex_lock(&r->mu);
	while (!r->stop || r->fetches) {
		struct rjob *j = r->fetches, *puts = NULL;

		if (!j && !r->puts) {
			if (r->ctx || r->stop) {
				pthread_cond_wait(&r->wake, &r->mu);
			} else {   /* down: try again when the backoff is over */
				pthread_mutex_unlock(&r->mu);
				if (!connected(r)) {
					uint64_t wait = r->next_try_ns - now_ns();
					struct timespec ts;

					clock_gettime(CLOCK_REALTIME, &ts);
					wait = wait > 1000000000u ? 1000000000u : wait;
					ts.tv_nsec += (long)wait;
					ts.tv_sec += ts.tv_nsec / 1000000000;
					ts.tv_nsec %= 1000000000;
					pthread_mutex_lock(&r->mu);
					if (!r->stop && !r->fetches && !r->puts)
						(void)pthread_cond_timedwait(&r->wake, &r->mu, &ts);
					continue;
				}
				pthread_mutex_lock(&r->mu);
			}
			continue;
		}
		if (j) {
			r->fetches = j->next;
			if (!r->fetches)
				r->fetches_tail = &r->fetches;
		} else {   /* a batch of puts, oldest first; a clear alone, in its turn */
			struct rjob **pp = &r->puts;

			if ((*pp)->clear)
				pp = &(*pp)->next;
			else
				for (int k = 0; *pp && !(*pp)->clear && k < PUT_BATCH; k++)
					pp = &(*pp)->next;
			puts = r->puts;
			r->puts = *pp;
			*pp = NULL;
			if (!r->puts)
				r->puts_tail = &r->puts;
			for (struct rjob *p = puts; p; p = p->next)
				r->queued -= p->len;
		}
		pthread_mutex_unlock(&r->mu);
		if (j)
			run_fetch(r, j);
		else if (puts->clear)
			run_clear(r, puts);
		else
			run_puts(r, puts);
		pthread_mutex_lock(&r->mu);
		if (j) {
			j->next = r->done;
			r->done = j;
			if (r->notify)
				r->notify(r->notify_arg);
		}
	}
	pthread_mutex_unlock(&r->mu);
	return NULL;
}

/* ---- the owner's calls --------------------------------------------------------------------- */

int kvp_redis_open(const struct kvp_redis_config *cfg, struct kvp_redis **out, char *why,
		   size_t whylen)
{
	struct kvp_redis *r = calloc(1, sizeof(*r));

	if (!r)
		return KVP_ENOMEM;
	snprintf(r->url, sizeof(r->url), "%s", cfg->url);
	if (parse_url(r, cfg->url) != KVP_OK) {
		snprintf(why, whylen, "'%s' is not redis://HOST[:PORT] or unix:PATH", cfg->url);
		free(r);
		return KVP_EINVAL;
	}
	snprintf(r->password, sizeof(r->password), "%s", cfg->password ? cfg->password : "");
	r->ttl_s = cfg->ttl_s;
	r->block_tokens = cfg->block_tokens;
	r->block_bytes = cfg->block_bytes;
	r->head_bytes = slot_head_bytes(cfg->block_tokens);
	r->queue_bytes = cfg->queue_bytes;
	r->fingerprint = tier_fingerprint(cfg->model, cfg->block_tokens, cfg->kv_dtype,
					  cfg->block_bytes);
	r->notify = cfg->notify;
	r->notify_arg = cfg->notify_arg;
	r->puts_tail = &r->puts;
	r->fetches_tail = &r->fetches;
	r->state = -1;
	r->scratch = calloc(cfg->block_tokens, sizeof(*r->scratch));
	if (!r->scratch || pthread_mutex_init(&r->mu, NULL) != 0) {
		free(r->scratch);
		free(r);
		return KVP_ENOMEM;
	}
	if (pthread_cond_init(&r->wake, NULL) != 0 ||
	    pthread_create(&r->thread, NULL, redis_main, r) != 0) {
		pthread_mutex_destroy(&r->mu);
		free(r->scratch);
		free(r);
		return KVP_ENOMEM;
	}
	*out = r;
	return KVP_OK;
}

static void free_jobs(struct rjob *j)
{
	while (j) {
		struct rjob *next = j->next;

		free(j->val);
		free(j->keys);
		free(j->tokens);
		free(j->dst);
		free(j);
		j = next;
	}
}

void kvp_redis_close(struct kvp_redis *r)
{
	if (!r)
		return;
	pthread_mutex_lock(&r->mu);
	r->stop = true;
	free_jobs(r->puts);   /* given up: a stop does not wait for a slow Redis */
	r->puts = NULL;
	r->puts_tail = &r->puts;
	pthread_cond_signal(&r->wake);
	pthread_mutex_unlock(&r->mu);
	pthread_join(r->thread, NULL);
	free_jobs(r->done);
	if (r->ctx)
		redisFree(r->ctx);
	pthread_cond_destroy(&r->wake);
	pthread_mutex_destroy(&r->mu);
	free(r->scratch);
	free(r);
}

static void enqueue(struct kvp_redis *r, struct rjob *j, struct rjob ***tail)
{
	j->next = NULL;
	**tail = j;
	*tail = &j->next;
	pthread_cond_signal(&r->wake);
}

int kvp_redis_put(struct kvp_redis *r, const struct kvp_disk_meta *m, const void *kv)
{
	const size_t len = r->head_bytes + r->block_bytes;
	struct slot_hdr h = { .block_tokens = r->block_tokens, .block_bytes = r->block_bytes,
			      .key = m->key, .parent = m->parent, .root = m->root,
			      .kv_sum = r->block_bytes ? kv_checksum(kv, r->block_bytes) : 0,
			      .fingerprint = r->fingerprint };
	struct rjob *j;

	pthread_mutex_lock(&r->mu);
	if (r->queued + len > r->queue_bytes || !r->st.connected) {
		r->st.dropped++;
		pthread_mutex_unlock(&r->mu);
		return KVP_EFULL;
	}
	pthread_mutex_unlock(&r->mu);
	j = calloc(1, sizeof(*j));
	if (!j || !(j->val = malloc(len))) {
		free(j);
		return KVP_ENOMEM;
	}
	slot_encode(j->val, &h, m->tokens);
	if (r->block_bytes)
		memcpy(j->val + r->head_bytes, kv, r->block_bytes);
	j->len = len;
	key_text(r, m->root, m->key, j->key);
	pthread_mutex_lock(&r->mu);
	r->queued += len;
	enqueue(r, j, &r->puts_tail);
	pthread_mutex_unlock(&r->mu);
	return KVP_OK;
}

int kvp_redis_clear(struct kvp_redis *r, const struct kvp_key *root)
{
	struct rjob *j = calloc(1, sizeof(*j));

	if (!j)
		return KVP_ENOMEM;
	j->clear = true;
	j->all = !root;
	if (root)
		j->root = *root;
	pthread_mutex_lock(&r->mu);
	enqueue(r, j, &r->puts_tail);   /* after the writes queued before it */
	pthread_mutex_unlock(&r->mu);
	return KVP_OK;
}

int kvp_redis_fetch(struct kvp_redis *r, struct kvp_key root, struct kvp_key parent0,
		    const struct kvp_key *keys, const uint32_t *tokens, uint32_t n,
		    void *const *dst, void (*done)(void *arg, uint32_t good), void *arg)
{
	struct rjob *j = calloc(1, sizeof(*j));

	if (!j || !(j->keys = malloc(n * sizeof(*keys))) ||
	    !(j->tokens = malloc((size_t)n * r->block_tokens * sizeof(*tokens))) ||
	    !(j->dst = calloc(n, sizeof(*dst)))) {
		free_jobs(j);
		return KVP_ENOMEM;
	}
	j->fetch = true;
	j->root = root;
	j->parent0 = parent0;
	j->n = n;
	j->done = done;
	j->arg = arg;
	memcpy(j->keys, keys, n * sizeof(*keys));
	memcpy(j->tokens, tokens, (size_t)n * r->block_tokens * sizeof(*tokens));
	if (dst)
		memcpy(j->dst, dst, n * sizeof(*dst));
	pthread_mutex_lock(&r->mu);
	enqueue(r, j, &r->fetches_tail);
	pthread_mutex_unlock(&r->mu);
	return KVP_OK;
}

size_t kvp_redis_poll(struct kvp_redis *r)
{
	struct rjob *list, *rev = NULL;
	size_t n = 0;

	pthread_mutex_lock(&r->mu);
	list = r->done;
	r->done = NULL;
	pthread_mutex_unlock(&r->mu);
	while (list) {
		struct rjob *next = list->next;

		list->next = rev;
		rev = list;
		list = next;
	}
	while (rev) {
		struct rjob *next = rev->next;

		rev->next = NULL;
		rev->done(rev->arg, rev->good);
		free_jobs(rev);
		rev = next;
		n++;
	}
	return n;
}

bool kvp_redis_take_change(struct kvp_redis *r, char *msg, size_t len)
{
	bool changed;

	pthread_mutex_lock(&r->mu);
	changed = r->changed;
	if (changed)
		snprintf(msg, len, "%s", r->change);
	r->changed = false;
	pthread_mutex_unlock(&r->mu);
	return changed;
}

void kvp_redis_get_stats(const struct kvp_redis *r, struct kvp_redis_stats *st)
{
	pthread_mutex_lock((pthread_mutex_t *)&r->mu);
	*st = r->st;
	pthread_mutex_unlock((pthread_mutex_t *)&r->mu);
}
