/*
 * util.c - shared helpers of the kvprefix tools; see util.h for the contracts.
 *
 * Token text grammar (both forms report the 1-based position of the bad token):
 *
 *   --tokens     list  := item ( ',' item )*      item := [ \t]* digits [ \t]*
 *   --tokens-file text := sep* ( id ( sep+ id )* )? sep*
 *                 sep  := whitespace | ','  (but never two commas with no id between)
 *                 json := '[' integer ( ',' integer )* ']'
 *
 * digits are decimal, no sign, value <= 4294967295 (checked while accumulating, so a
 * 40-digit id is an overflow, not a wrap).
 */
#include "util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ITEM_SHOW_MAX 24   /* bytes of a bad item quoted in a message */

static void set_err(char *err, size_t errcap, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errcap, const char *fmt, ...)
{
	va_list ap;

	if (!err || errcap == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errcap, fmt, ap);
	va_end(ap);
}

/* ---- growable token array ------------------------------------------------------ */

int kvp_tokvec_reserve(struct kvp_tokvec *t, size_t n)
{
	size_t cap;
	uint32_t *v;

	if (n <= t->cap)
		return KVP_OK;
	if (n > KVP_TOOL_TOKENS_MAX)
		return KVP_ETOOBIG;
	cap = t->cap ? t->cap : 256;
	while (cap < n)
		cap *= 2;
	if (cap > KVP_TOOL_TOKENS_MAX)
		cap = KVP_TOOL_TOKENS_MAX;
	v = realloc(t->v, cap * sizeof(*v));
	if (!v)
		return KVP_ENOMEM;
	t->v = v;
	t->cap = cap;
	return KVP_OK;
}

int kvp_tokvec_push(struct kvp_tokvec *t, uint32_t tok)
{
	int rc;

	if (t->n == t->cap) {
		rc = kvp_tokvec_reserve(t, t->n + 1);
		if (rc < 0)
			return rc;
	}
	t->v[t->n++] = tok;
	return KVP_OK;
}

void kvp_tokvec_free(struct kvp_tokvec *t)
{
	if (!t)
		return;
	free(t->v);
	t->v = NULL;
	t->n = t->cap = 0;
}

/* ---- token text ---------------------------------------------------------------- */

/* Validate one item of len bytes. NULL and *out set when it is a token id, else the
 * reason it is not. */
static const char *parse_item(const char *p, size_t len, uint32_t *out)
{
	uint64_t v = 0;

	if (len == 0)
		return "empty token (two separators in a row, or one at an end)";
	for (size_t i = 0; i < len; i++) {
		if (p[i] < '0' || p[i] > '9')
			return "not a decimal token id (digits 0-9 only, no sign)";
		v = v * 10 + (uint64_t)(p[i] - '0');
		if (v > UINT32_MAX)
			return "out of range (token ids are 0..4294967295)";
	}
	*out = (uint32_t)v;
	return NULL;
}

/* "'abc'" or "'abcdef...'" for messages. */
static void show_item(char *buf, size_t cap, const char *p, size_t len)
{
	int n = len > ITEM_SHOW_MAX ? ITEM_SHOW_MAX : (int)len;

	snprintf(buf, cap, "'%.*s%s'", n, p, len > ITEM_SHOW_MAX ? "..." : "");
}

static int push_or_report(struct kvp_tokvec *out, uint32_t tok, char *err, size_t errcap)
{
	int rc = kvp_tokvec_push(out, tok);

	if (rc == KVP_ETOOBIG)
		set_err(err, errcap, "too many tokens (at most %u)", KVP_TOOL_TOKENS_MAX);
	else if (rc < 0)
		set_err(err, errcap, "out of memory reading tokens");
	return rc;
}

int kvp_tool_parse_tokens(const char *s, struct kvp_tokvec *out, char *err, size_t errcap)
{
	size_t old_n = out->n, pos = 1;
	const char *p = s;
	int rc;

	for (;;) {
		const char *end = strchr(p, ',');
		const char *a = p, *b = end ? end : p + strlen(p);
		const char *why;
		char shown[ITEM_SHOW_MAX + 8];
		uint32_t tok;

		while (a < b && (*a == ' ' || *a == '\t'))
			a++;
		while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
			b--;
		why = parse_item(a, (size_t)(b - a), &tok);
		if (why) {
			show_item(shown, sizeof(shown), a, (size_t)(b - a));
			if (b == a)
				set_err(err, errcap, "--tokens: token %zu: %s", pos, why);
			else
				set_err(err, errcap, "--tokens: token %zu (%s): %s", pos, shown, why);
			rc = KVP_EINVAL;
			goto out_restore;
		}
		rc = push_or_report(out, tok, err, errcap);
		if (rc < 0)
			goto out_restore;
		if (!end)
			break;
		p = end + 1;
		pos++;
	}
	return KVP_OK;

out_restore:
	out->n = old_n;
	return rc;
}

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Read the whole of path ("-": stdin) into a malloc'd NUL-terminated buffer. */
static int slurp(const char *path, char **buf, size_t *len, char *err, size_t errcap)
{
	FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
	size_t cap = 0, n = 0;
	char *b = NULL, *nb;
	int rc;

	if (!f) {
		set_err(err, errcap, "cannot open %s: %s", path, strerror(errno));
		return KVP_EIO;
	}
	for (;;) {
		size_t r;

		if (n + 1 >= cap) {
			size_t ncap = cap ? cap * 2 : 65536;

			if (ncap > (size_t)KVP_TOOL_FILE_MAX + 2)
				ncap = (size_t)KVP_TOOL_FILE_MAX + 2;
			if (ncap <= n + 1) {
				set_err(err, errcap, "%s: larger than %u bytes", path,
					KVP_TOOL_FILE_MAX);
				rc = KVP_ETOOBIG;
				goto out_free;
			}
			nb = realloc(b, ncap);
			if (!nb) {
				set_err(err, errcap, "%s: out of memory", path);
				rc = KVP_ENOMEM;
				goto out_free;
			}
			b = nb;
			cap = ncap;
		}
		r = fread(b + n, 1, cap - 1 - n, f);
		n += r;
		if (r == 0)
			break;
	}
	if (ferror(f)) {
		set_err(err, errcap, "cannot read %s: %s", path, strerror(errno));
		rc = KVP_EIO;
		goto out_free;
	}
	if (n > KVP_TOOL_FILE_MAX) {
		set_err(err, errcap, "%s: larger than %u bytes", path, KVP_TOOL_FILE_MAX);
		rc = KVP_ETOOBIG;
		goto out_free;
	}
	b[n] = '\0';
	if (f != stdin)
		fclose(f);
	*buf = b;
	*len = n;
	return KVP_OK;

out_free:
	free(b);
	if (f != stdin)
		fclose(f);
	return rc;
}

static size_t line_of(const char *buf, const char *at)
{
	size_t line = 1;

	for (const char *p = buf; p < at; p++)
		line += *p == '\n';
	return line;
}

static int parse_json_tokens(const char *path, const char *buf, size_t len,
			     struct kvp_tokvec *out, char *err, size_t errcap)
{
	const char *end = NULL;
	cJSON *arr, *it;
	size_t pos = 0;
	int rc = KVP_OK;

	arr = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
	if (!arr) {
		const char *at = cJSON_GetErrorPtr();

		if (at < buf || at > buf + len)
			at = buf;
		set_err(err, errcap, "%s:%zu: malformed JSON array of token ids", path,
			line_of(buf, at));
		return KVP_EINVAL;
	}
	if (!cJSON_IsArray(arr)) {
		set_err(err, errcap, "%s: JSON input must be an array of token ids", path);
		rc = KVP_EINVAL;
		goto out_delete;
	}
	for (const char *p = end; p && p < buf + len; p++) {
		if (!is_space(*p)) {
			set_err(err, errcap, "%s:%zu: text after the JSON array", path,
				line_of(buf, p));
			rc = KVP_EINVAL;
			goto out_delete;
		}
	}
	cJSON_ArrayForEach(it, arr) {
		double v;

		pos++;
		if (!cJSON_IsNumber(it)) {
			set_err(err, errcap, "%s: token %zu: not a number", path, pos);
			rc = KVP_EINVAL;
			goto out_delete;
		}
		v = it->valuedouble;
		if (!(v >= 0 && v <= (double)UINT32_MAX) || floor(v) != v) {
			set_err(err, errcap,
				"%s: token %zu (%.17g): not an integer in 0..4294967295", path,
				pos, v);
			rc = KVP_EINVAL;
			goto out_delete;
		}
		rc = push_or_report(out, (uint32_t)v, err, errcap);
		if (rc < 0)
			goto out_delete;
	}
out_delete:
	cJSON_Delete(arr);
	return rc;
}

static int parse_text_tokens(const char *path, const char *buf, size_t len,
			     struct kvp_tokvec *out, char *err, size_t errcap)
{
	const char *p = buf, *e = buf + len;
	size_t line = 1, pos = 0;
	bool comma = false;   /* a comma seen since the last id */
	int rc;

	for (;;) {
		const char *a, *why;
		char shown[ITEM_SHOW_MAX + 8];
		uint32_t tok;

		while (p < e && (is_space(*p) || *p == ',')) {
			if (*p == ',') {
				if (comma || pos == 0) {
					set_err(err, errcap, "%s:%zu: token %zu: %s", path, line,
						pos + 1, "empty token (two commas in a row, or a "
						"comma before the first id)");
					return KVP_EINVAL;
				}
				comma = true;
			}
			line += *p == '\n';
			p++;
		}
		if (p == e)
			break;
		a = p;
		while (p < e && !is_space(*p) && *p != ',')
			p++;
		pos++;
		why = parse_item(a, (size_t)(p - a), &tok);
		if (why) {
			show_item(shown, sizeof(shown), a, (size_t)(p - a));
			set_err(err, errcap, "%s:%zu: token %zu (%s): %s", path, line, pos,
				shown, why);
			return KVP_EINVAL;
		}
		rc = push_or_report(out, tok, err, errcap);
		if (rc < 0)
			return rc;
		comma = false;
	}
	if (comma) {
		set_err(err, errcap, "%s:%zu: trailing comma after token %zu", path, line, pos);
		return KVP_EINVAL;
	}
	return KVP_OK;
}

int kvp_tool_read_tokens_file(const char *path, struct kvp_tokvec *out, char *err,
			      size_t errcap)
{
	size_t old_n = out->n, len = 0;
	const char *p;
	char *buf = NULL;
	int rc;

	rc = slurp(path, &buf, &len, err, errcap);
	if (rc < 0)
		return rc;
	if (strlen(buf) != len) {
		set_err(err, errcap, "%s: binary data (a NUL byte) in a token file", path);
		rc = KVP_EINVAL;
		goto out_free;
	}
	for (p = buf; *p && is_space(*p); p++)
		;
	if (*p == '[')
		rc = parse_json_tokens(path, buf, len, out, err, errcap);
	else
		rc = parse_text_tokens(path, buf, len, out, err, errcap);
	if (rc == KVP_OK && out->n == old_n) {
		set_err(err, errcap, "%s: no token ids in the file", path);
		rc = KVP_EINVAL;
	}
out_free:
	if (rc < 0)
		out->n = old_n;
	free(buf);
	return rc;
}

/* ---- the daemon ---------------------------------------------------------------- */

static uint32_t tool_server_uid;
static bool tool_server_uid_set;

bool kvp_tool_server_uid_option(const char *prog, const char *value)
{
	uint64_t v;

	if (!kvp_tool_parse_u64(value, 0, UINT32_MAX - 1u, &v)) {
		fprintf(stderr, "%s: --server-uid '%s': want a uid from 0 to %u\n", prog, value,
			UINT32_MAX - 1u);
		return false;
	}
	tool_server_uid = (uint32_t)v;
	tool_server_uid_set = true;
	return true;
}

/* Say why connecting failed, in words that tell what to do. */
static void connect_perror(const char *prog, const char *path, const struct kvp_client *c,
			   int rc, int saved)
{
	const char *msg = c ? kvp_client_error(c) : "";
	char def[256];
	const char *shown = path;

	if (!shown)
		shown = kvp_client_default_socket(def, sizeof(def)) == KVP_OK ? def
									     : "(default socket)";
	if (msg[0])   /* the library's own reason: an untrusted server or directory */
		fprintf(stderr, "%s: %s\n", prog, msg);
	else if (rc == KVP_EIO && (saved == EACCES || saved == EPERM))
		fprintf(stderr, "%s: cannot connect to %s: %s — the daemon runs, but this user "
			"may not use its socket (join the socket's group, e.g. kvprefix-clients)\n",
			prog, shown, strerror(saved));
	else if (rc == KVP_EIO)
		fprintf(stderr, "%s: cannot connect to %s: %s — is kvprefixd running? "
			"(--socket PATH)\n", prog, shown, strerror(saved));
	else if (rc == KVP_ETOOBIG)
		fprintf(stderr, "%s: cannot connect to %s: path too long for a Unix socket\n",
			prog, shown);
	else
		fprintf(stderr, "%s: cannot connect to %s: %s\n", prog, shown, kvp_strerror(rc));
}

int kvp_tool_connect(const char *prog, const char *path, struct kvp_client **out)
{
	struct kvp_client *c = NULL;
	int rc, saved;

	*out = NULL;
	rc = kvp_client_new(&c);
	if (rc == KVP_OK && tool_server_uid_set)
		rc = kvp_client_set_server_uid(c, tool_server_uid);
	if (rc == KVP_OK)
		rc = kvp_client_open(c, path);
	if (rc == KVP_OK) {
		*out = c;
		return KVP_OK;
	}
	saved = errno;
	connect_perror(prog, path, c, rc, saved);
	kvp_client_close(c);
	return rc;
}

void kvp_tool_perror(const char *prog, const char *what, const struct kvp_client *c,
		     int status)
{
	const char *msg = c ? kvp_client_error(c) : "";
	int saved = errno;

	if (c && kvp_client_refused(c))
		fprintf(stderr, "%s: %s: kvprefixd refused the connection (%s)%s%s\n", prog, what,
			kvp_strerror(status), msg[0] ? ": " : "", msg);
	else if (msg && msg[0])
		fprintf(stderr, "%s: %s: %s: %s\n", prog, what, kvp_strerror(status), msg);
	else if (status == KVP_EIO)
		fprintf(stderr, "%s: %s: %s: %s\n", prog, what, kvp_strerror(status),
			strerror(saved));
	else if (status == KVP_ECLOSED)
		fprintf(stderr, "%s: %s: %s (did kvprefixd stop?)\n", prog, what,
			kvp_strerror(status));
	else
		fprintf(stderr, "%s: %s: %s\n", prog, what, kvp_strerror(status));
}

/* ---- numbers and time ---------------------------------------------------------- */

bool kvp_tool_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;

	if (!s || !*s)
		return false;
	for (const char *p = s; *p; p++) {
		if (*p < '0' || *p > '9')
			return false;
		if (v > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
			return false;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	if (v < min || v > max)
		return false;
	*out = v;
	return true;
}

bool kvp_tool_parse_seconds(const char *s, double max, double *out)
{
	char *end = NULL;
	double v;

	if (!s || !*s || !((*s >= '0' && *s <= '9') || *s == '.'))
		return false;
	errno = 0;
	v = strtod(s, &end);
	if (errno || *end || !(v > 0) || !(v <= max))
		return false;
	*out = v;
	return true;
}

uint64_t kvp_tool_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
