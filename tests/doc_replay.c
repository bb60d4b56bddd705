/*
 * doc_replay.c - docs/protocol.md §9.1 replayed: the commands on the page, run as they
 * are with the shipped tools (kvprefix-mkmodel, kvprefixd, kvprefix) in an empty
 * directory, must give the frames and the output on the page. The frames come from
 * libkvprefix's trace (KVP_TRACE_FRAMES, on the page too). What the page says varies is
 * left out: the tenant (the uid running the test), the times in GENERATE_DONE, how the
 * tokens are spread over token frames, and the logits' last bits.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon_harness.h"
#include "doc_test_util.h"
#include "kvp_le.h"
#include "kvp_proto.h"

#define MAX_FRAMES 32
#define FRAME_MAX 512

struct frame {
	bool sent;          /* by the client */
	uint8_t b[FRAME_MAX];
	size_t n;
};

/* The frames of a trace: "# kvprefix > kvprefixd: ..." (or the other way) lines, each
 * followed by its hex lines. Other lines are ignored. */
static int parse_trace(const char *trace, struct frame *f, int max)
{
	int n = -1;

	for (const char *p = trace; *p;) {
		const char *eol = strchr(p, '\n');
		char line[256];

		if (!eol)
			eol = p + strlen(p);
		snprintf(line, sizeof(line), "%.*s", (int)(eol - p), p);
		p = *eol ? eol + 1 : eol;
		if (strncmp(line, "# kvprefix > kvprefixd:", 23) == 0 ||
		    strncmp(line, "# kvprefixd > kvprefix:", 23) == 0) {
			cr_assert_lt(n + 1, max, "too many frames");
			n++;
			f[n].sent = line[11] == '>';   /* "# kvprefix >" */
			f[n].n = 0;
		} else if (n >= 0 && line[0] && strspn(line, "0123456789abcdef ") == strlen(line)) {
			f[n].n += dt_hex_bytes(line, f[n].b + f[n].n, FRAME_MAX - f[n].n);
		}
	}
	return n + 1;
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "rb");
	char *s = calloc(1, 1 << 20);
	size_t n;

	cr_assert(f, "cannot read %s", path);
	cr_assert(s);
	n = fread(s, 1, (1 << 20) - 1, f);
	s[n] = '\0';
	fclose(f);
	return s;
}

/* Run the page's commands in dir, with the tools on PATH; stdout and stderr (the
 * trace) into dir/out and dir/trace. */
static void run_session(const char *doc, const char *dir)
{
	static const char *const tools[][2] = {
		{ KVP_CLI_PATH, "kvprefix" }, { KVP_DAEMON_PATH, "kvprefixd" },
		{ KVP_MKMODEL_PATH, "kvprefix-mkmodel" },
	};
	char *cmds = dt_block_after(doc, "<!-- replay: tiny-session -->");
	char path[256], cmd[1024], out[256];
	FILE *f;

	for (size_t i = 0; i < sizeof(tools) / sizeof(tools[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, tools[i][1]);
		cr_assert_eq(symlink(tools[i][0], path), 0);
	}
	snprintf(path, sizeof(path), "%s/session.sh", dir);
	f = fopen(path, "w");
	cr_assert(f);
	fputs(cmds, f);
	fclose(f);
	free(cmds);
	snprintf(cmd, sizeof(cmd), "cd '%s' && env -u KVP_TRACE_FRAMES PATH=\"$PWD:$PATH\" "
		 "sh session.sh >out 2>trace; echo $?", dir);
	cr_assert_geq(kvp_run_capture(cmd, out, sizeof(out)), 0);
}

/* The frames the page shows, as they came: HELLO and its reply, GENERATE, its first
 * token frame, DONE and the last ERROR. Compare, leaving out what varies. */
static void check_frames(const char *doc, const struct frame *f, int n)
{
	uint8_t want[FRAME_MAX];
	size_t wn;
	int g = -1, done = -1;

	cr_assert_geq(n, 10, "%d frames in the trace", n);
	wn = dt_example(doc, "hello_v4", want, sizeof(want));
	cr_assert(f[0].sent && f[0].n == wn && memcmp(f[0].b, want, wn) == 0, "HELLO differs");
	wn = dt_example(doc, "hello_reply_engine", want, sizeof(want));
	kvp_le_put_u32(want + KVP_HDR_SIZE + 20, (uint32_t)getuid());   /* the tenant */
	cr_assert(!f[1].sent && f[1].n == wn && memcmp(f[1].b, want, wn) == 0,
		  "HELLO reply differs");
	/* the GENERATE of the page: the third command's */
	wn = dt_example(doc, "generate", want, sizeof(want));
	for (int i = 0; i < n && g < 0; i++)
		if (f[i].sent && f[i].n == wn && memcmp(f[i].b, want, wn) == 0)
			g = i;
	cr_assert_geq(g, 0, "no GENERATE as on the page");
	/* the page's first token frame carries one token; a daemon may put the next ones in
	 * the same frame when its loop comes to it late (§4.10): the header but for len, and
	 * the first token, are the page's */
	wn = dt_example(doc, "generate_tokens", want, sizeof(want));
	cr_assert(f[g + 1].n >= wn && memcmp(f[g + 1].b, want, 12) == 0 &&
		  kvp_le_get_u32(f[g + 1].b + 12) == f[g + 1].n - KVP_HDR_SIZE &&
		  kvp_le_get_u32(f[g + 1].b + KVP_HDR_SIZE) == (f[g + 1].n - KVP_HDR_SIZE - 4) / 4 &&
		  memcmp(f[g + 1].b + KVP_HDR_SIZE + 4, want + KVP_HDR_SIZE + 4, 4) == 0,
		  "first token frame");
	for (int i = g + 1; i < n && done < 0; i++)
		if (f[i].b[5] == KVP_T_GENERATE_DONE)
			done = i;
	cr_assert_geq(done, 0, "no GENERATE_DONE");
	wn = dt_example(doc, "generate_done", want, sizeof(want));
	cr_assert_eq(f[done].n, wn);
	/* the counts and finish; the times vary; the logits, within float noise */
	cr_assert(memcmp(f[done].b, want, KVP_HDR_SIZE + 24) == 0, "GENERATE_DONE's counts");
	cr_assert(memcmp(f[done].b + KVP_HDR_SIZE + 48, want + KVP_HDR_SIZE + 48, 4) == 0);
	for (int i = 0; i < 8; i++) {
		float a = kvp_le_get_f32(f[done].b + KVP_HDR_SIZE + 52 + 4 * i);
		float b = kvp_le_get_f32(want + KVP_HDR_SIZE + 52 + 4 * i);

		cr_assert(fabsf(a - b) <= 1e-4f * fmaxf(1.0f, fabsf(b)), "logit %d: %.9g, the page "
			  "says %.9g", i, (double)a, (double)b);
	}
	wn = dt_example(doc, "generate_error", want, sizeof(want));
	cr_assert(!f[n - 1].sent && f[n - 1].n == wn && memcmp(f[n - 1].b, want, wn) == 0,
		  "the last frame is not the page's ERROR");
}

/* A "key":value of a JSON line, as text up to the next comma (or the closing brace). */
static void json_field(const char *json, const char *key, char *out, size_t cap)
{
	char pat[64];
	const char *p, *end;

	snprintf(pat, sizeof(pat), "\"%s\":", key);
	p = strstr(json, pat);
	cr_assert(p, "no %s in %s", key, json);
	p += strlen(pat);
	end = *p == '[' ? strchr(p, ']') + 1 : p + strcspn(p, ",}");
	snprintf(out, cap, "%.*s", (int)(end - p), p);
}

/* The --json line the page shows, but for the times. */
static void check_output(const char *doc, const char *out)
{
	static const char *const keys[] = { "tokens", "prompt_tokens", "cached_tokens",
					    "computed_tokens", "generated_tokens", "finish" };
	char *want = dt_block_after(doc, "<!-- replay-output: generate -->");
	const char *line = strstr(out, "{\"tokens\"");
	char a[128], b[128];

	cr_assert(line, "no JSON line in the output:\n%s", out);
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		json_field(line, keys[i], a, sizeof(a));
		json_field(want, keys[i], b, sizeof(b));
		cr_assert_str_eq(a, b, "%s: %s, the page says %s", keys[i], a, b);
	}
	free(want);
}

Test(replay, generating_session_of_section_9_1, .timeout = 120)
{
	char dir[64], path[128], *doc = dt_read_doc("protocol.md"), *trace, *out;
	struct frame f[MAX_FRAMES];
	int n;

	cr_assert_eq(kvp_tmpdir_make(dir, sizeof(dir), "replay"), 0);
	run_session(doc, dir);
	snprintf(path, sizeof(path), "%s/trace", dir);
	trace = slurp(path);
	snprintf(path, sizeof(path), "%s/out", dir);
	out = slurp(path);
	n = parse_trace(trace, f, MAX_FRAMES);
	check_frames(doc, f, n);
	check_output(doc, out);
	cr_assert(strstr(trace, "kvprefix: generate: invalid argument: token 9 at position 6: "
			 "the vocabulary has 8"), "%s", trace);
	free(trace);
	free(out);
	free(doc);
	/* the session's files: the model, logits.bin, the links, out, trace, the script */
	kvp_tmpdir_remove(dir);
}
