/*
 * sparkline.c - the ring of samples and its one-line drawing (sparkline.h).
 *
 * The ring is two parallel arrays indexed by slot; head is the slot the next push
 * writes, so while the ring is not full the samples are slots 0..n-1, and once it is,
 * the oldest is at head and the order wraps:
 *
 *   not full (cap 5, n 3)     [ a  b  c  .  . ]   oldest slot 0, head 3
 *   full, wrapped (n 5)       [ f  g  c  d  e ]   oldest slot head = 2: c d e f g
 *                                   ^head
 */
#include "sparkline.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *const glyph_utf8[KVP_SPARK_LEVELS] = {
	"\xe2\x96\x81", "\xe2\x96\x82", "\xe2\x96\x83", "\xe2\x96\x84",
	"\xe2\x96\x85", "\xe2\x96\x86", "\xe2\x96\x87", "\xe2\x96\x88",
};
static const char glyph_ascii[KVP_SPARK_LEVELS] = { '_', '.', '-', '=', '+', '*', '%', '#' };

void kvp_spark_init(struct kvp_spark *s, int cap)
{
	assert(s);
	if (cap < 1)
		cap = 1;
	if (cap > KVP_SPARK_MAX)
		cap = KVP_SPARK_MAX;
	s->cap = cap;
	s->n = 0;
	s->head = 0;
}

void kvp_spark_push(struct kvp_spark *s, double v, double dt)
{
	assert(s && s->cap >= 1 && s->cap <= KVP_SPARK_MAX);
	s->v[s->head] = v;
	s->dt[s->head] = isfinite(dt) && dt > 0 ? dt : 0;
	s->head = (s->head + 1) % s->cap;
	if (s->n < s->cap)
		s->n++;
}

/* The slot of the i-th sample held, 0 the oldest. */
static int slot_of(const struct kvp_spark *s, int i)
{
	int oldest = s->n < s->cap ? 0 : s->head;

	return (oldest + i) % s->cap;
}

double kvp_spark_at(const struct kvp_spark *s, int i)
{
	assert(s);
	if (i < 0 || i >= s->n)
		return NAN;
	return s->v[slot_of(s, i)];
}

double kvp_spark_last(const struct kvp_spark *s)
{
	assert(s);
	return kvp_spark_at(s, s->n - 1);
}

double kvp_spark_max(const struct kvp_spark *s)
{
	double m = NAN;

	assert(s);
	for (int i = 0; i < s->n; i++) {
		double v = s->v[slot_of(s, i)];

		if (!isnan(v) && (isnan(m) || v > m))
			m = v;
	}
	return m;
}

double kvp_spark_span(const struct kvp_spark *s)
{
	double t = 0;

	assert(s);
	for (int i = 0; i < s->n; i++)
		t += s->dt[slot_of(s, i)];
	return t;
}

/* The level of v between lo and hi, 0..KVP_SPARK_LEVELS-1; -1 for a gap. */
static int level_of(double v, double lo, double hi)
{
	double f;

	if (isnan(v))
		return -1;
	if (!(hi > lo))
		return 0;   /* flat: nothing to tell apart */
	f = (v - lo) / (hi - lo);
	if (!(f > 0))
		return 0;
	if (f >= 1)
		return KVP_SPARK_LEVELS - 1;
	return (int)lround(f * (KVP_SPARK_LEVELS - 1));
}

size_t kvp_spark_render(const struct kvp_spark *s, int width, double lo, double hi,
			enum kvp_spark_style style, char *buf, size_t cap)
{
	int shown, pad;
	size_t k = 0;

	assert(s && buf && width >= 0 && cap >= KVP_SPARK_BUF(width));
	if (isnan(hi))
		hi = kvp_spark_max(s);
	shown = s->n < width ? s->n : width;
	pad = width - shown;
	for (int i = 0; i < pad; i++)
		buf[k++] = ' ';
	for (int i = s->n - shown; i < s->n; i++) {
		int lv = level_of(s->v[slot_of(s, i)], lo, hi);

		if (lv < 0) {
			buf[k++] = ' ';
		} else if (style == KVP_SPARK_UTF8) {
			memcpy(buf + k, glyph_utf8[lv], 3);
			k += 3;
		} else {
			buf[k++] = glyph_ascii[lv];
		}
	}
	buf[k] = '\0';
	return k;
}

const char *kvp_spark_fmt_span(char *buf, size_t cap, double secs)
{
	unsigned long long t;

	if (!(secs >= 0) || !isfinite(secs))
		secs = 0;
	if (secs < 10) {
		snprintf(buf, cap, "%.1fs", secs);
		return buf;
	}
	t = (unsigned long long)llround(secs);
	if (t < 60)
		snprintf(buf, cap, "%llus", t);
	else if (t < 3600)
		snprintf(buf, cap, "%llum%02llus", t / 60, t % 60);
	else
		snprintf(buf, cap, "%lluh%02llum", t / 3600, t / 60 % 60);
	return buf;
}
