/*
 * model.c - load a llama-family model from GGUF (kvp_model.h): open the file, read what
 * its keys ask (model_config.c), bind its tensors (model_tensors.c); and the questions
 * asked of a loaded model.
 */
#include "kvp_model.h"

#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvp_gguf.h"
#include "model_impl.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
	       "tensors are used in place: a little-endian host is required");

int model_fail(char *err, size_t errlen, int status, const char *fmt, ...)
{
	if (err && errlen) {
		va_list ap;

		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return status;
}

void model_copy_name(char *dst, size_t dstlen, const char *s, size_t n)
{
	size_t k = n < dstlen - 1 ? n : dstlen - 1;

	for (size_t i = 0; i < k; i++) {
		unsigned char ch = (unsigned char)s[i];

		dst[i] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
	}
	dst[k] = '\0';
}

int kvp_model_load(const char *path, struct kvp_model **out, char *err, size_t errlen)
{
	struct kvp_model *m;
	int rc;

	assert(path && out);
	*out = NULL;
	if (err && errlen)
		err[0] = '\0';
	m = KVP_MODEL_CALLOC(1, sizeof(*m));
	if (!m)
		return model_fail(err, errlen, KVP_ENOMEM, "out of memory");
	rc = kvp_gguf_open(path, &m->file, err, errlen);
	if (rc == KVP_OK)
		rc = model_read_config(m, path, err, errlen);
	if (rc == KVP_OK)
		rc = model_bind(m, err, errlen);
	if (rc) {
		kvp_model_free(m);
		return rc;
	}
	*out = m;
	return KVP_OK;
}

void kvp_model_free(struct kvp_model *m)
{
	if (!m)
		return;
	KVP_MODEL_FREE(m->owned);
	KVP_MODEL_FREE(m->layers);
	kvp_gguf_close(m->file);
	KVP_MODEL_FREE(m);
}

int kvp_model_check_tokens(const struct kvp_model *m, const uint32_t *tokens, size_t n,
			   size_t *bad)
{
	const uint32_t vocab = m->cfg.vocab;

	for (size_t i = 0; i < n; i++) {
		if (tokens[i] >= vocab) {
			if (bad)
				*bad = i;
			return KVP_EINVAL;
		}
	}
	return KVP_OK;
}

double kvp_model_rope_freq(const struct kvp_model *m, uint32_t i)
{
	const struct kvp_model_config *c = &m->cfg;
	double f = pow((double)c->rope_base, -2.0 * (double)i / (double)c->rope_dim);

	if (m->rope_freqs)
		f /= (double)m->rope_freqs[i];
	return f / (double)c->rope_scale;
}
