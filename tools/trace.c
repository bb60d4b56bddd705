/*
 * trace.c - Mooncake trace reader and token derivation; see trace.h.
 *
 *   line:  {"timestamp": T, "input_length": N, "output_length": M, "hash_ids": [h0, h1, ..]}
 *
 *   tokens of the request, N = 1200, hash_ids = [7, 9, 4]:
 *
 *     | block h=7: 512 tokens | block h=9: 512 tokens | h=4: first 176 of 512 |
 *       tok(7,0) .. tok(7,511)  tok(9,0) .. tok(9,511)  tok(4,0) .. tok(4,175)
 *
 *     tok(h, j) = splitmix64(h * 512 + j) % 32000
 *
 * Lines are read one at a time into a buffer bounded by KVP_TRACE_LINE_MAX and parsed
 * with cJSON; the parsed object is freed before the next line, so memory is the
 * result arrays plus one line.
 */
#include "trace.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvp_status.h"

void kvp_trace_req_tokens(const struct kvp_trace *t, const struct kvp_trace_req *r,
			  uint32_t *out)
{
	const uint64_t *h = t->hash_ids + r->hash_off;
	uint32_t left = r->input_length;

	for (uint32_t b = 0; left > 0; b++) {
		uint32_t n = left < KVP_TRACE_BLOCK ? left : KVP_TRACE_BLOCK;

		for (uint32_t j = 0; j < n; j++)
			*out++ = kvp_trace_token(h[b], j);
		left -= n;
	}
}

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

/*
 * Read one line (without its '\n') into *buf. Returns 1 for a line, 0 at end of file,
 * KVP_ETOOBIG for a line longer than KVP_TRACE_LINE_MAX, KVP_EINVAL for a NUL byte,
 * KVP_EIO for a read error, KVP_ENOMEM.
 */
static int read_line(FILE *f, char **buf, size_t *cap, size_t *len)
{
	size_t n = 0;
	int c;

	while ((c = getc_unlocked(f)) != EOF) {
		if (c == '\n')
			break;
		if (c == '\0')
			return KVP_EINVAL;
		if (n >= KVP_TRACE_LINE_MAX)
			return KVP_ETOOBIG;
		if (n + 1 >= *cap) {
			size_t ncap = *cap ? *cap * 2 : 4096;
			char *nb;

			if (ncap > (size_t)KVP_TRACE_LINE_MAX + 1)
				ncap = (size_t)KVP_TRACE_LINE_MAX + 1;
			nb = realloc(*buf, ncap);
			if (!nb)
				return KVP_ENOMEM;
			*buf = nb;
			*cap = ncap;
		}
		(*buf)[n++] = (char)c;
	}
	if (c == EOF && ferror(f))
		return KVP_EIO;
	if (c == EOF && n == 0)
		return 0;
	if (n > 0 && (*buf)[n - 1] == '\r')
		n--;
	if (*cap == 0) {
		*buf = malloc(1);
		if (!*buf)
			return KVP_ENOMEM;
		*cap = 1;
	}
	(*buf)[n] = '\0';
	*len = n;
	return 1;
}

static bool blank(const char *s)
{
	for (; *s; s++)
		if (*s != ' ' && *s != '\t' && *s != '\r')
			return false;
	return true;
}

/* An integer-valued JSON number in [0, max]. */
static bool json_uint(const cJSON *v, double max, double *out)
{
	double d;

	if (!cJSON_IsNumber(v))
		return false;
	d = v->valuedouble;
	if (!(d >= 0 && d <= max) || floor(d) != d)
		return false;
	*out = d;
	return true;
}

static int grow(void **arr, size_t *cap, size_t need, size_t elem)
{
	size_t ncap;
	void *p;

	if (need <= *cap)
		return KVP_OK;
	ncap = *cap ? *cap : 1024;
	while (ncap < need) {
		if (ncap > SIZE_MAX / 2 / elem)
			return KVP_ENOMEM;
		ncap *= 2;
	}
	p = realloc(*arr, ncap * elem);
	if (!p)
		return KVP_ENOMEM;
	*arr = p;
	*cap = ncap;
	return KVP_OK;
}

/* Parse one non-blank line into a new request of t. err gets the reason only. */
static int parse_request(struct kvp_trace *t, const char *line, size_t len, size_t lineno,
			 char *err, size_t errcap)
{
	struct kvp_trace_req r = { .line = lineno, .hash_off = t->n_hash };
	const char *end = NULL;
	cJSON *o, *v, *h;
	size_t n_hash, needed;
	double d;
	int rc = KVP_EINVAL;

	o = cJSON_ParseWithLengthOpts(line, len, &end, 0);
	if (!o) {
		set_err(err, errcap, "not valid JSON");
		return KVP_EINVAL;
	}
	for (; end && end < line + len; end++) {
		if (*end != ' ' && *end != '\t') {
			set_err(err, errcap, "text after the JSON object");
			goto out_delete;
		}
	}
	if (!cJSON_IsObject(o)) {
		set_err(err, errcap, "not a JSON object");
		goto out_delete;
	}
	v = cJSON_GetObjectItemCaseSensitive(o, "timestamp");
	if (v) {
		if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
			set_err(err, errcap, "\"timestamp\" is not a number");
			goto out_delete;
		}
		r.timestamp = v->valuedouble;
	}
	v = cJSON_GetObjectItemCaseSensitive(o, "output_length");
	if (v) {
		if (!json_uint(v, UINT32_MAX, &d)) {
			set_err(err, errcap, "\"output_length\" is not an integer in 0..%u",
				UINT32_MAX);
			goto out_delete;
		}
		r.output_length = (uint32_t)d;
	}
	v = cJSON_GetObjectItemCaseSensitive(o, "input_length");
	if (!v) {
		set_err(err, errcap, "no \"input_length\"");
		goto out_delete;
	}
	if (!json_uint(v, UINT32_MAX, &d) || d < 1) {
		set_err(err, errcap, "\"input_length\" is not an integer in 1..%u", UINT32_MAX);
		goto out_delete;
	}
	r.input_length = (uint32_t)d;
	h = cJSON_GetObjectItemCaseSensitive(o, "hash_ids");
	if (!h) {
		set_err(err, errcap, "no \"hash_ids\"");
		goto out_delete;
	}
	if (!cJSON_IsArray(h)) {
		set_err(err, errcap, "\"hash_ids\" is not an array");
		goto out_delete;
	}
	n_hash = (size_t)cJSON_GetArraySize(h);
	needed = (r.input_length + (size_t)KVP_TRACE_BLOCK - 1) / KVP_TRACE_BLOCK;
	if (n_hash < needed) {
		set_err(err, errcap, "input_length %u needs %zu hash_ids of %u tokens, the "
			"line has %zu", r.input_length, needed, KVP_TRACE_BLOCK, n_hash);
		goto out_delete;
	}
	if (n_hash > UINT32_MAX) {
		set_err(err, errcap, "too many hash_ids");
		goto out_delete;
	}
	r.n_hash = (uint32_t)n_hash;
	rc = grow((void **)&t->hash_ids, &t->cap_hash, t->n_hash + n_hash, sizeof(uint64_t));
	if (rc < 0)
		goto out_nomem;
	rc = grow((void **)&t->reqs, &t->cap_reqs, t->n_reqs + 1, sizeof(*t->reqs));
	if (rc < 0)
		goto out_nomem;
	{
		size_t i = 0;

		cJSON_ArrayForEach(v, h) {
			if (!json_uint(v, (double)KVP_TRACE_HASH_ID_MAX, &d)) {
				set_err(err, errcap, "hash_ids[%zu] is not an integer in 0..2^53",
					i);
				rc = KVP_EINVAL;
				goto out_delete;
			}
			t->hash_ids[t->n_hash + i++] = (uint64_t)d;
		}
	}
	t->n_hash += n_hash;
	t->reqs[t->n_reqs++] = r;
	t->total_tokens += r.input_length;
	rc = KVP_OK;
	goto out_delete;

out_nomem:
	set_err(err, errcap, "out of memory");
out_delete:
	cJSON_Delete(o);
	return rc;
}

int kvp_trace_load(const char *path, size_t limit, struct kvp_trace *t, char *err,
		   size_t errcap)
{
	FILE *f;
	char *buf = NULL, why[256];
	size_t cap = 0, len = 0, lineno = 0;
	int rc = KVP_OK, r;

	memset(t, 0, sizeof(*t));
	f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
	if (!f) {
		set_err(err, errcap, "cannot open %s: %s", path, strerror(errno));
		return KVP_EIO;
	}
	while (limit == 0 || t->n_reqs < limit) {
		r = read_line(f, &buf, &cap, &len);
		lineno++;
		if (r == 0)
			break;
		if (r < 0) {
			rc = r;
			if (r == KVP_ETOOBIG)
				set_err(err, errcap, "%s:%zu: line longer than %u bytes", path,
					lineno, KVP_TRACE_LINE_MAX);
			else if (r == KVP_EINVAL)
				set_err(err, errcap, "%s:%zu: NUL byte in the line", path, lineno);
			else if (r == KVP_EIO)
				set_err(err, errcap, "%s:%zu: read error: %s", path, lineno,
					strerror(errno));
			else
				set_err(err, errcap, "%s:%zu: out of memory", path, lineno);
			goto out_fail;
		}
		if (blank(buf))
			continue;
		rc = parse_request(t, buf, len, lineno, why, sizeof(why));
		if (rc < 0) {
			set_err(err, errcap, "%s:%zu: %s", path, lineno, why);
			goto out_fail;
		}
	}
	free(buf);
	if (f != stdin)
		fclose(f);
	return KVP_OK;

out_fail:
	free(buf);
	if (f != stdin)
		fclose(f);
	kvp_trace_free(t);
	return rc;
}

void kvp_trace_free(struct kvp_trace *t)
{
	if (!t)
		return;
	free(t->reqs);
	free(t->hash_ids);
	memset(t, 0, sizeof(*t));
}
