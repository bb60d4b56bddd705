/*
 * bench_replay.c - kvprefix-bench replay: a Mooncake trace against a running daemon,
 * the way an external engine would use it: per request LOOKUP (no pin), then INSERT of
 * the request's tokens. The tokens of every request are derived from its hash_ids
 * (docs/trace-replay.md) before the clock starts. Progress on stderr; the last line on
 * stdout is one JSON object: requests, input_tokens, hit_tokens, hit_rate, elapsed_s,
 * requests_per_s, tokens_per_s, block_tokens, window, frames.
 *
 * --window N keeps up to N requests in flight on the one connection (the pipelined
 * replay below); --window 1 is the plain one, a LOOKUP round trip then an INSERT round
 * trip through libkvprefix's calls. Both give the same hit tokens, to the token.
 *
 * --insert-only sends the INSERT alone, which is a lookup and an insert in one request:
 * its reply's cached_tokens less new_blocks x B is the prefix that was cached before
 * it, which is what the LOOKUP would have found. The same hit tokens again, with half
 * the frames and bytes.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "bench.h"
#include "bench_replay.h"
#include "kvp_index.h"
#include "kvp_le.h"
#include "trace.h"
#include "util.h"

#define PROGRESS_EVERY 500u

#define WINDOW_DEFAULT 64u
#define WINDOW_MAX 4096u

#define OFFLINE_MAX_CAPS 32

struct replay_opts {
	const char *trace, *sock;
	uint64_t block;           /* 0: take the daemon's */
	uint64_t limit;           /* 0: every request */
	uint64_t window;          /* requests in flight; 1: one round trip at a time */
	bool insert_only;         /* INSERT alone, the hit read from its reply */
	bool offline;             /* in process, at several capacities */
	struct offline_cap caps[OFFLINE_MAX_CAPS];   /* --capacities */
	size_t n_caps;
};

/* The trace and every request's tokens: request i is toks[off[i] .. off[i + 1]). */
struct replay_prompts {
	struct kvp_trace tr;
	uint32_t *toks;
	size_t *off;
	uint32_t max_len;
};

struct replay_result {
	uint64_t hit;
	double elapsed_s;
};

static void usage_replay(FILE *f)
{
	fprintf(f,
		"Usage: kvprefix-bench replay --trace FILE [--socket PATH] [--block-tokens N]\n"
		"                             [--limit N] [--window N] [--insert-only]\n"
		"Replay a Mooncake trace (JSON lines with input_length and hash_ids, one\n"
		"512-token block per hash_id) against a running kvprefixd: per request a\n"
		"LOOKUP, then an INSERT of its tokens. Tokens are derived from the hash_ids\n"
		"(docs/trace-replay.md) before timing starts.\n"
		"\n"
		"  -t, --trace FILE        the trace ('-': stdin)\n"
		"  -s, --socket PATH       daemon socket (default: the library's default)\n"
		"  -b, --block-tokens N    check that the daemon uses N tokens a block\n"
		"                          (default: take the daemon's)\n"
		"  -n, --limit N           replay only the first N requests\n"
		"  -w, --window N          requests in flight on the connection, 1..%u\n"
		"                          (default %u): their frames are written without\n"
		"                          waiting and the replies read back in order; each\n"
		"                          LOOKUP still follows the previous request's INSERT,\n"
		"                          so the hit rate does not change. 1: a LOOKUP round\n"
		"                          trip, then an INSERT round trip, per request\n"
		"      --insert-only       one INSERT a request, no LOOKUP: its reply says what\n"
		"                          was cached before it (cached_tokens - new_blocks x\n"
		"                          block), the same hit tokens with half the traffic\n"
		"      --offline           no daemon: the trace through the index in process at\n"
		"                          several pool sizes, under each --eviction policy (lru,\n"
		"                          reuse), beside the bound no policy can beat (evict the\n"
		"                          leaf used again furthest ahead)\n"
		"      --capacities LIST   --offline's pool sizes: blocks, or N%% of the trace's\n"
		"                          distinct blocks (default 1%%,5%%,10%%,5859,25%%,50%%,100%%)\n"
		"  -h, --help              show this help\n"
		"\n"
		"Progress goes to stderr; the last stdout line is one JSON object: requests,\n"
		"input_tokens, hit_tokens, hit_rate (hit_tokens / input_tokens), elapsed_s,\n"
		"requests_per_s, tokens_per_s, block_tokens, window, frames (a request's:\n"
		"\"lookup+insert\" or \"insert\").\n",
		WINDOW_MAX, WINDOW_DEFAULT);
}

/* "5859,10%,14.6%": block counts (>= 1), or percentages in (0, 100]. */
static bool parse_caps(const char *arg, struct replay_opts *o)
{
	const char *p = arg;

	o->n_caps = 0;
	while (*p) {
		char *end;
		double v = strtod(p, &end);
		bool pct = end != p && *end == '%';

		end += pct;
		if (end == p || o->n_caps == OFFLINE_MAX_CAPS || (*end != ',' && *end != '\0') ||
		    (pct ? !(v > 0 && v <= 100) : !(v >= 1 && v <= 1e12 && v == (double)(uint64_t)v)))
			return false;
		o->caps[o->n_caps++] = (struct offline_cap){ .value = v, .percent = pct };
		p = *end ? end + 1 : end;
	}
	return o->n_caps > 0;
}

static int parse_replay(int argc, char **argv, struct replay_opts *o)
{
	static const struct option opts[] = {
		{ "trace", required_argument, NULL, 't' },
		{ "socket", required_argument, NULL, 's' },
		{ "block-tokens", required_argument, NULL, 'b' },
		{ "limit", required_argument, NULL, 'n' },
		{ "window", required_argument, NULL, 'w' },
		{ "insert-only", no_argument, NULL, 'I' },
		{ "offline", no_argument, NULL, 'O' },
		{ "capacities", required_argument, NULL, 'C' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int opt;

	memset(o, 0, sizeof(*o));
	o->window = WINDOW_DEFAULT;
	(void)parse_caps("1%,5%,10%,5859,25%,50%,100%", o);
	optind = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":t:s:b:n:w:h", opts, NULL)) != -1) {
		switch (opt) {
		case 't': o->trace = optarg; break;
		case 's': o->sock = optarg; break;
		case 'b':
			if (!bench_parse_u64("replay", "--block-tokens", optarg, 1,
					     KVP_BLOCK_TOKENS_MAX, &o->block))
				return KVP_EXIT_USAGE;
			break;
		case 'n':
			if (!kvp_tool_parse_u64(optarg, 1, SIZE_MAX, &o->limit)) {
				fprintf(stderr, PROG " replay: --limit '%s': want a positive "
					"number of requests\n", optarg);
				return KVP_EXIT_USAGE;
			}
			break;
		case 'w':
			if (!bench_parse_u64("replay", "--window", optarg, 1, WINDOW_MAX,
					     &o->window))
				return KVP_EXIT_USAGE;
			break;
		case 'I': o->insert_only = true; break;
		case 'O': o->offline = true; break;
		case 'C':
			if (!parse_caps(optarg, o))
				return bench_usage_error("replay", "--capacities '%s': want block "
							 "counts or percentages in (0, 100], comma "
							 "separated (5859,10%%)", optarg);
			break;
		case 'h': usage_replay(stdout); return KVP_EXIT_OK;
		default: return bench_bad_option("replay", argv, opt);
		}
	}
	if (optind < argc)
		return bench_usage_error("replay", "unexpected argument '%s'", argv[optind]);
	if (!o->trace)
		return bench_usage_error("replay", "--trace FILE is required");
	return BENCH_RUN;
}

static void replay_prompts_free(struct replay_prompts *p)
{
	free(p->off);
	free(p->toks);
	kvp_trace_free(&p->tr);
}

/* Load the trace and derive the tokens of every request. 0, or -1 (message printed;
 * p freed). */
static int load_replay_prompts(const struct replay_opts *o, struct replay_prompts *p)
{
	uint64_t t0 = kvp_tool_now_ns();
	struct kvp_trace *tr = &p->tr;
	char err[512];

	memset(p, 0, sizeof(*p));
	if (kvp_trace_load(o->trace, (size_t)o->limit, tr, err, sizeof(err)) < 0) {
		fprintf(stderr, PROG " replay: %s\n", err);
		return -1;
	}
	if (tr->n_reqs == 0) {
		fprintf(stderr, PROG " replay: %s: no requests in the trace\n", o->trace);
		goto fail;
	}
	if (tr->total_tokens > SIZE_MAX / sizeof(uint32_t) / 2) {
		fprintf(stderr, PROG " replay: %s: %" PRIu64 " tokens in all is too many to "
			"hold; use --limit\n", o->trace, tr->total_tokens);
		goto fail;
	}
	p->toks = malloc((size_t)tr->total_tokens * sizeof(*p->toks));
	p->off = malloc((tr->n_reqs + 1) * sizeof(*p->off));
	if (!p->toks || !p->off) {
		fprintf(stderr, PROG " replay: cannot allocate %.1f MiB for the tokens of %zu "
			"requests; use --limit\n",
			(double)tr->total_tokens * sizeof(*p->toks) / 1048576.0, tr->n_reqs);
		goto fail;
	}
	p->off[0] = 0;
	for (size_t i = 0; i < tr->n_reqs; i++) {
		kvp_trace_req_tokens(tr, &tr->reqs[i], p->toks + p->off[i]);
		p->off[i + 1] = p->off[i] + tr->reqs[i].input_length;
		if (tr->reqs[i].input_length > p->max_len)
			p->max_len = tr->reqs[i].input_length;
	}
	fprintf(stderr, "replay: %zu requests, %" PRIu64 " tokens (longest %u), derived in "
		"%.2f s\n", tr->n_reqs, tr->total_tokens, p->max_len,
		(double)(kvp_tool_now_ns() - t0) / 1e9);
	return 0;
fail:
	replay_prompts_free(p);
	return -1;
}

/* HELLO, and check the daemon's blocks and request limit against the trace. */
static int replay_hello(struct kvp_client *c, const struct replay_opts *o,
			const struct replay_prompts *p, struct kvp_server_info *info)
{
	int rc;

	memset(info, 0, sizeof(*info));
	rc = kvp_client_hello(c, NULL, NULL, info);
	if (rc < 0) {
		kvp_tool_perror(PROG " replay", "hello", c, rc);
		return -1;
	}
	if (o->block && o->block != info->block_tokens) {
		fprintf(stderr, PROG " replay: --block-tokens %" PRIu64 " but the daemon uses "
			"%u tokens a block; restart it with --block-tokens %" PRIu64 " or drop "
			"the option\n", o->block, info->block_tokens, o->block);
		return -1;
	}
	if (info->max_tokens && p->max_len > info->max_tokens) {
		fprintf(stderr, PROG " replay: the trace has a request of %u tokens but the "
			"daemon accepts at most %u a request\n", p->max_len, info->max_tokens);
		return -1;
	}
	fprintf(stderr, "replay: daemon block %u tokens, capacity %u blocks%s\n",
		info->block_tokens, info->capacity_blocks,
		info->index_only ? ", index-only" : "");
	return 0;
}

/* "replay: 500/3993 requests (13%), ..." after every PROGRESS_EVERY answered, but the
 * last (run_replay says when all are done). */
static void replay_progress(const struct replay_prompts *p, size_t done, uint64_t hit,
			    uint64_t t_start)
{
	double s;

	if (done % PROGRESS_EVERY != 0 || done == p->tr.n_reqs)
		return;
	s = (double)(kvp_tool_now_ns() - t_start) / 1e9;
	fprintf(stderr, "replay: %zu/%zu requests (%.0f%%), hit rate %.4f, %.0f requests/s\n",
		done, p->tr.n_reqs, 100.0 * (double)done / (double)p->tr.n_reqs,
		(double)hit / (double)p->off[done], (double)done / s);
}

/* LOOKUP then INSERT of request i (the INSERT alone with insert_only); the tokens
 * cached before it added to *hit. The status (message printed naming the step). */
static int replay_one(struct kvp_client *c, const struct replay_prompts *p, size_t i,
		      bool insert_only, uint32_t block, uint64_t *hit)
{
	const struct kvp_trace_req *r = &p->tr.reqs[i];
	const uint32_t *toks = p->toks + p->off[i];
	const char *step = "lookup";
	struct kvp_match m;
	char what[512];
	int rc = 0;

	if (!insert_only && (rc = kvp_client_lookup(c, toks, r->input_length, 0, &m)) == 0)
		*hit += m.matched_tokens;
	if (rc == 0) {
		step = "insert";
		rc = kvp_client_insert(c, toks, r->input_length, 0, &m);
		if (rc == 0 && insert_only)
			*hit += m.matched_tokens - (uint64_t)m.new_blocks * block;
	}
	if (rc < 0) {
		snprintf(what, sizeof(what), "%s of request %zu (line %zu)", step, i + 1, r->line);
		kvp_tool_perror(PROG " replay", what, c, rc);
	}
	return rc;
}

/* --window 1: one round trip at a time, through libkvprefix's calls. 0 or -1. */
static int replay_plain(struct kvp_client *c, const struct replay_prompts *p,
			bool insert_only, uint32_t block, uint64_t t_start, uint64_t *hit)
{
	for (size_t i = 0; i < p->tr.n_reqs; i++) {
		if (replay_one(c, p, i, insert_only, block, hit) < 0)
			return -1;
		replay_progress(p, i + 1, *hit, t_start);
	}
	return 0;
}

/* ---- the pipelined replay ------------------------------------------------------------ */

/*
 * --window N > 1: the request frames go out on libkvprefix's socket (kvp_client_fd,
 * after its HELLO) without waiting for replies, LOOKUP i then INSERT i, up to N requests
 * ahead of the replies, which are read back in the order sent:
 *
 *   written   L0 I0 L1 I1 L2 I2 L3 I3 L4 I4      window 3: request 4 went out when
 *   answered  L0 I0 L1 I1                       request 1's INSERT was answered
 *
 * The daemon runs the frames of one connection one at a time, in the order they arrive,
 * and answers them in that order (daemon/conn.c: conn_run cuts whole frames from the
 * input and runs each to its end before it looks at the next; past FRAMES_PER_WAKEUP the
 * rest wait for a later turn of the loop, still in order; handlers.c handle_tokens
 * answers a LOOKUP or an INSERT on the spot, none is deferred as a GENERATE is; and
 * send_frame queues a reply behind any not yet written). So LOOKUP i+1 sees INSERT i
 * applied, as in the plain replay, and the hit tokens are the same to the token
 * (tests/test_replay.c compares the two).
 *
 * A send blocks while the daemon is not reading us, and it stops reading a connection
 * whose unread replies pass 16 MiB (conn.c OUTPUT_HIGH_WATER): the largest the replies
 * due could be is kept under PIPE_REPLY_BUDGET, so it never stops while we send.
 *
 * The socket's send buffer is raised to PIPE_SNDBUF (the kernel doubles it, and caps it
 * at twice net.core.wmem_max): with the default 208 KiB, less than two requests of the
 * shared trace, the writer sleeps and is woken for nearly every request, and the daemon
 * often finds its input empty (1.4 times the requests a second with the larger buffer,
 * measured on a 2-core machine).
 */
#define PIPE_REPLY_BUDGET (4u << 20)
#define PIPE_SNDBUF (1 << 20)
#define PIPE_RECV_MIN (256u << 10)        /* bytes of replies one recv may take */
#define PIPE_TOKENS_HEAD 8u               /* LOOKUP / INSERT: u32 flags, u32 n_tokens */
#define PIPE_BLOCKS_FIXED 24u             /* their replies, before the block ids */
#define PIPE_ERROR_MAX (KVP_HDR_SIZE + 6u + KVP_ERROR_MSG_MAX)

struct pipe {
	int fd;
	const struct replay_prompts *p;
	uint32_t block;           /* the daemon's tokens a block */
	bool insert_only;         /* one frame a request, its INSERT */
	size_t sent, done;        /* requests whose frames went out; whose replies came back */
	bool insert_due;          /* the next reply due is request done's INSERT's */
	uint32_t send_id, due_id; /* req_id of the next frame sent; of the next reply due */
	uint64_t owed;            /* the most bytes the replies due could take */
	uint8_t *buf;             /* replies received, a frame starting at buf[0] */
	size_t have, cap;
	uint64_t hit, t_start;
};

/* The most bytes one reply to a LOOKUP or INSERT of n tokens can take: its blocks, or
 * an ERROR. */
static uint64_t pipe_reply_max(const struct pipe *pp, uint32_t n)
{
	uint64_t blocks = KVP_HDR_SIZE + PIPE_BLOCKS_FIXED + 4ull * (n / pp->block);

	return blocks > PIPE_ERROR_MAX ? blocks : PIPE_ERROR_MAX;
}

static uint32_t pipe_next_id(uint32_t id)
{
	return id == UINT32_MAX ? 1 : id + 1;   /* req_id 0 is the daemon's */
}

/* The wire carries tokens little-endian: the derived tokens are put so in place, once,
 * before the clock starts (nothing to do on a little-endian host). */
static void tokens_to_wire(uint32_t *t, size_t n)
{
	const uint32_t one = 1;

	if (*(const uint8_t *)&one == 1)
		return;
	for (size_t i = 0; i < n; i++)
		kvp_le_put_u32((uint8_t *)&t[i], t[i]);
}

/* Write every byte of iov[0 .. n), blocking. 0, or -1 with errno. */
static int send_iov(int fd, struct iovec *iov, int n)
{
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)n };

	while (mh.msg_iovlen) {
		ssize_t r = sendmsg(fd, &mh, MSG_NOSIGNAL);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		while (mh.msg_iovlen && (size_t)r >= mh.msg_iov->iov_len) {
			r -= (ssize_t)mh.msg_iov->iov_len;
			mh.msg_iov++;
			mh.msg_iovlen--;
		}
		if (mh.msg_iovlen) {
			mh.msg_iov->iov_base = (uint8_t *)mh.msg_iov->iov_base + r;
			mh.msg_iov->iov_len -= (size_t)r;
		}
	}
	return 0;
}

/* Frames a request: LOOKUP and INSERT, or the INSERT alone. */
static int pipe_frames(const struct pipe *pp)
{
	return pp->insert_only ? 1 : 2;
}

/* LOOKUP and INSERT of request pp->sent (or the INSERT alone), in one sendmsg. 0, or -1
 * with errno. */
static int pipe_send(struct pipe *pp)
{
	const size_t i = pp->sent;
	const uint32_t n = pp->p->tr.reqs[i].input_length;
	uint8_t head[2][KVP_HDR_SIZE + PIPE_TOKENS_HEAD];
	struct iovec iov[4];

	for (int k = 2 - pipe_frames(pp); k < 2; k++) {
		uint8_t *h = head[k];

		kvp_le_put_u32(h, KVP_PROTO_MAGIC);
		h[4] = KVP_PROTO_VERSION;
		h[5] = k ? KVP_T_INSERT : KVP_T_LOOKUP;
		kvp_le_put_u16(h + 6, 0);
		kvp_le_put_u32(h + 8, pp->send_id);
		kvp_le_put_u32(h + 12, PIPE_TOKENS_HEAD + 4 * n);
		kvp_le_put_u32(h + 16, 0);   /* flags: no pin */
		kvp_le_put_u32(h + 20, n);
		pp->send_id = pipe_next_id(pp->send_id);
		iov[2 * k] = (struct iovec){ h, sizeof(head[k]) };
		iov[2 * k + 1] = (struct iovec){ pp->p->toks + pp->p->off[i], 4 * (size_t)n };
	}
	if (send_iov(pp->fd, iov + 2 * (2 - pipe_frames(pp)), 2 * pipe_frames(pp)) < 0)
		return -1;
	pp->owed += (uint64_t)pipe_frames(pp) * pipe_reply_max(pp, n);
	pp->sent++;
	return 0;
}

/* What went wrong with the reply due (pp->done < requests): said, naming its request.
 * -1. */
__attribute__((format(printf, 2, 3)))
static int pipe_fail(const struct pipe *pp, const char *fmt, ...)
{
	const size_t i = pp->done;
	va_list ap;

	fprintf(stderr, PROG " replay: %s of request %zu (line %zu): ",
		pp->insert_due ? "insert" : "lookup", i + 1, pp->p->tr.reqs[i].line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return -1;
}

/* The reply due, whole at f: type, id and layout checked, its matched tokens counted.
 * 0, or -1 (message printed). */
static int pipe_take(struct pipe *pp, const uint8_t *f)
{
	const uint8_t type = pp->insert_due ? KVP_T_INSERT : KVP_T_LOOKUP;
	const uint8_t *p = f + KVP_HDR_SIZE;
	const uint32_t len = kvp_le_get_u32(f + 12), id = kvp_le_get_u32(f + 8);

	if (f[5] == KVP_T_ERROR && (id == pp->due_id || id == 0)) {
		/* u32 code, u16 msg_len, msg; id 0: about the connection as a whole (a
		 * refusal, a stop), which the daemon then closes */
		const uint32_t code = len >= 6 ? kvp_le_get_u32(p) : 0;
		const uint16_t mlen = len >= 6 ? kvp_le_get_u16(p + 4) : 0;

		if (len != 6u + mlen || code == 0 || code > INT32_MAX)
			return pipe_fail(pp, "an ERROR frame that does not decode");
		return pipe_fail(pp, "%s%s: %.*s", id ? "" : "kvprefixd closed the connection: ",
				 kvp_strerror(-(int)code), (int)mlen, (const char *)p + 6);
	}
	if (id != pp->due_id || f[5] != (type | KVP_T_REPLY))
		return pipe_fail(pp, "a frame of type 0x%02x for request id %u where the reply "
				 "to id %u was due", f[5], id, pp->due_id);
	if (len < PIPE_BLOCKS_FIXED ||
	    len != PIPE_BLOCKS_FIXED + 4ull * kvp_le_get_u32(p + 20))
		return pipe_fail(pp, "a reply of %u bytes that does not decode", len);
	pp->due_id = pipe_next_id(pp->due_id);
	if (!pp->insert_due) {
		pp->hit += kvp_le_get_u32(p);   /* the LOOKUP's matched_tokens */
		pp->insert_due = true;
		return 0;
	}
	if (pp->insert_only)   /* cached_tokens less what it added: cached before it */
		pp->hit += kvp_le_get_u32(p) - (uint64_t)kvp_le_get_u32(p + 8) * pp->block;
	pp->insert_due = pp->insert_only;   /* the next request's first frame */
	pp->owed -= (uint64_t)pipe_frames(pp) *
		    pipe_reply_max(pp, pp->p->tr.reqs[pp->done].input_length);
	pp->done++;
	replay_progress(pp->p, pp->done, pp->hit, pp->t_start);
	return 0;
}

/* One recv of whatever replies have come (waiting for some), each whole one taken. 0,
 * or -1 (message printed). */
static int pipe_recv(struct pipe *pp)
{
	size_t off = 0;
	ssize_t r;

	do
		r = recv(pp->fd, pp->buf + pp->have, pp->cap - pp->have, 0);
	while (r < 0 && errno == EINTR);
	if (r == 0)
		return pipe_fail(pp, "kvprefixd closed the connection (did it stop?)");
	if (r < 0)
		return pipe_fail(pp, "receiving: %s", strerror(errno));
	pp->have += (size_t)r;
	while (pp->done < pp->p->tr.n_reqs && pp->have - off >= KVP_HDR_SIZE) {
		const uint8_t *f = pp->buf + off;
		const uint32_t len = kvp_le_get_u32(f + 12);

		if (kvp_le_get_u32(f) != KVP_PROTO_MAGIC || f[4] != KVP_PROTO_VERSION ||
		    kvp_le_get_u16(f + 6) != 0)
			return pipe_fail(pp, "a frame header that is not a version-1 reply's");
		if (len > pp->cap - KVP_HDR_SIZE)
			return pipe_fail(pp, "a reply of %u bytes, more than it can be", len);
		if (pp->have - off < KVP_HDR_SIZE + (size_t)len)
			break;
		if (pipe_take(pp, f) < 0)
			return -1;
		off += KVP_HDR_SIZE + (size_t)len;
	}
	pp->have -= off;
	memmove(pp->buf, pp->buf + off, pp->have);
	return 0;
}

/* The pipelined replay of every request, at most window in flight. 0, or -1 (message
 * printed). */
static int replay_pipelined(struct kvp_client *c, const struct replay_prompts *p,
			    uint32_t block, bool insert_only, uint64_t window, uint64_t t_start,
			    uint64_t *hit)
{
	struct pipe pp = { .p = p, .block = block, .insert_only = insert_only,
			   .insert_due = insert_only, .send_id = 1, .due_id = 1,
			   .t_start = t_start };
	const size_t n = p->tr.n_reqs;
	int ret = -1;

	pp.fd = kvp_client_fd(c);
	if (pp.fd < 0) {
		kvp_tool_perror(PROG " replay", "the connection's socket", c, pp.fd);
		return -1;
	}
	/* best effort: a smaller buffer is only slower */
	(void)setsockopt(pp.fd, SOL_SOCKET, SO_SNDBUF, &(int){ PIPE_SNDBUF }, sizeof(int));
	pp.cap = (size_t)pipe_reply_max(&pp, p->max_len);
	pp.cap = pp.cap > PIPE_RECV_MIN ? pp.cap : PIPE_RECV_MIN;
	pp.buf = malloc(pp.cap);
	if (!pp.buf) {
		fprintf(stderr, PROG " replay: out of memory\n");
		return -1;
	}
	while (pp.done < n) {
		while (pp.sent < n && pp.sent - pp.done < window &&
		       (pp.sent == pp.done ||
			pp.owed + (uint64_t)pipe_frames(&pp) *
					  pipe_reply_max(&pp, p->tr.reqs[pp.sent].input_length) <=
				PIPE_REPLY_BUDGET)) {
			if (pipe_send(&pp) == 0)
				continue;
			if (errno != EPIPE && errno != ECONNRESET) {
				fprintf(stderr, PROG " replay: sending request %zu (line %zu): "
					"%s\n", pp.sent + 1, p->tr.reqs[pp.sent].line,
					strerror(errno));
				goto out;
			}
			/* it hung up: what it said before, if anything, is in the replies */
			while (pipe_recv(&pp) == 0)
				;
			goto out;
		}
		if (pipe_recv(&pp) < 0)
			goto out;
	}
	*hit = pp.hit;
	ret = 0;
out:
	free(pp.buf);
	return ret;
}

/* LOOKUP then INSERT of every request, timed: one at a time with window 1, else
 * pipelined. Progress every PROGRESS_EVERY. */
static int run_replay(struct kvp_client *c, const struct replay_prompts *p,
		      const struct replay_opts *o, uint32_t block, struct replay_result *res)
{
	const struct kvp_trace *tr = &p->tr;
	uint64_t t_start = kvp_tool_now_ns();
	int rc;

	res->hit = 0;
	rc = o->window == 1 ? replay_plain(c, p, o->insert_only, block, t_start, &res->hit)
			    : replay_pipelined(c, p, block, o->insert_only, o->window, t_start,
					       &res->hit);
	if (rc < 0)
		return -1;
	res->elapsed_s = (double)(kvp_tool_now_ns() - t_start) / 1e9;
	if (res->elapsed_s <= 0)
		res->elapsed_s = 1e-9;
	fprintf(stderr, "replay: %zu/%zu requests (100%%), hit rate %.4f, %.0f requests/s\n",
		tr->n_reqs, tr->n_reqs, (double)res->hit / (double)tr->total_tokens,
		(double)tr->n_reqs / res->elapsed_s);
	return 0;
}

/* The JSON line; false (message printed) when out of memory. */
static bool json_replay(const struct kvp_trace *tr, const struct replay_result *res,
			uint32_t block_tokens, const struct replay_opts *opt)
{
	const double el = res->elapsed_s, total = (double)tr->total_tokens;
	cJSON *o = cJSON_CreateObject();
	bool built = o && cJSON_AddNumberToObject(o, "requests", (double)tr->n_reqs) &&
		     cJSON_AddNumberToObject(o, "input_tokens", total) &&
		     cJSON_AddNumberToObject(o, "hit_tokens", (double)res->hit) &&
		     cJSON_AddNumberToObject(o, "hit_rate", (double)res->hit / total) &&
		     cJSON_AddNumberToObject(o, "elapsed_s", el) &&
		     cJSON_AddNumberToObject(o, "requests_per_s", (double)tr->n_reqs / el) &&
		     cJSON_AddNumberToObject(o, "tokens_per_s", total / el) &&
		     cJSON_AddNumberToObject(o, "block_tokens", block_tokens) &&
		     cJSON_AddNumberToObject(o, "window", (double)opt->window) &&
		     cJSON_AddStringToObject(o, "frames",
					     opt->insert_only ? "insert" : "lookup+insert");

	return bench_json_finish("replay", o, built);
}

int bench_cmd_replay(int argc, char **argv)
{
	struct replay_opts o;
	struct replay_prompts p;
	struct replay_result res;
	struct kvp_server_info info;
	struct kvp_client *c = NULL;
	int ret = parse_replay(argc, argv, &o);

	if (ret != BENCH_RUN)
		return ret;
	if (o.offline) {
		char err[512];

		if (kvp_trace_load(o.trace, (size_t)o.limit, &p.tr, err, sizeof(err)) < 0) {
			fprintf(stderr, PROG " replay: %s\n", err);
			return KVP_EXIT_FAIL;
		}
		ret = bench_replay_offline(&p.tr, o.caps, o.n_caps) == 0 ? KVP_EXIT_OK
									  : KVP_EXIT_FAIL;
		kvp_trace_free(&p.tr);
		return ret;
	}
	/* Load and derive everything before touching the daemon or the clock. */
	if (load_replay_prompts(&o, &p) < 0)
		return KVP_EXIT_FAIL;
	if (o.window > 1)   /* the pipelined replay writes them to the socket as they are */
		tokens_to_wire(p.toks, (size_t)p.tr.total_tokens);
	ret = KVP_EXIT_FAIL;
	if (kvp_tool_connect(PROG " replay", o.sock, &c) < 0)
		goto out_free;
	if (replay_hello(c, &o, &p, &info) == 0 &&
	    run_replay(c, &p, &o, info.block_tokens, &res) == 0 &&
	    json_replay(&p.tr, &res, info.block_tokens, &o))
		ret = KVP_EXIT_OK;
	kvp_client_close(c);
out_free:
	replay_prompts_free(&p);
	return ret;
}
