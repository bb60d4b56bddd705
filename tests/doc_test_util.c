/*
 * doc_test_util.c - reading docs/protocol.md in tests (doc_test_util.h).
 */
#include "doc_test_util.h"

#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *dt_read_doc(const char *name)
{
	char path[512];
	FILE *f;
	char *s;
	long len;

	snprintf(path, sizeof(path), "%s/%s", KVP_DOCS_DIR, name);
	f = fopen(path, "rb");
	cr_assert(f, "cannot open %s", path);
	fseek(f, 0, SEEK_END);
	len = ftell(f);
	fseek(f, 0, SEEK_SET);
	s = malloc((size_t)len + 1);
	cr_assert(s);
	cr_assert_eq(fread(s, 1, (size_t)len, f), (size_t)len);
	s[len] = '\0';
	fclose(f);
	return s;
}

char *dt_block_after(const char *doc, const char *marker)
{
	const char *p = strstr(doc, marker), *end;
	char *out;

	cr_assert(p, "the page has no \"%s\"", marker);
	p = strstr(p, "```");
	cr_assert(p, "\"%s\": no fenced block after it", marker);
	p = strchr(p, '\n');
	cr_assert(p);
	p++;
	end = strstr(p, "```");
	cr_assert(end, "\"%s\": the block does not end", marker);
	out = malloc((size_t)(end - p) + 1);
	cr_assert(out);
	memcpy(out, p, (size_t)(end - p));
	out[end - p] = '\0';
	return out;
}

size_t dt_hex_bytes(const char *text, uint8_t *out, size_t cap)
{
	size_t n = 0;

	for (const char *p = text; *p;) {
		const char *eol = strchr(p, '\n'), *hash;

		if (!eol)
			eol = p + strlen(p);
		hash = memchr(p, '#', (size_t)(eol - p));
		if (!hash)
			hash = eol;
		for (const char *q = p; q < hash;) {
			unsigned v;

			if (*q == ' ') {
				q++;
				continue;
			}
			cr_assert(hash - q >= 2 && sscanf(q, "%2x", &v) == 1, "bad hex near \"%.10s\"", q);
			cr_assert(n < cap, "more than %zu bytes", cap);
			out[n++] = (uint8_t)v;
			q += 2;
		}
		p = *eol ? eol + 1 : eol;
	}
	return n;
}

size_t dt_example(const char *doc, const char *name, uint8_t *out, size_t cap)
{
	char marker[80];
	char *text;
	size_t n;

	snprintf(marker, sizeof(marker), "<!-- example: %s -->", name);
	text = dt_block_after(doc, marker);
	n = dt_hex_bytes(text, out, cap);
	free(text);
	return n;
}
