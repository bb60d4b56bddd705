/*
 * test_sparkline.c - tools/sparkline.c: the ring and its drawing, on known series.
 *
 * Each test names what it draws: a ramp scaled to its own maximum and to a fixed range,
 * a flat series, an empty ring, gaps, the ring wrapping around more than once, and the
 * ASCII style; the span labels.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "sparkline.h"

#define W 8

/* The eight levels, lowest first, in each style. */
#define U1 "\xe2\x96\x81"
#define U2 "\xe2\x96\x82"
#define U3 "\xe2\x96\x83"
#define U4 "\xe2\x96\x84"
#define U5 "\xe2\x96\x85"
#define U6 "\xe2\x96\x86"
#define U7 "\xe2\x96\x87"
#define U8 "\xe2\x96\x88"

static char buf[KVP_SPARK_BUF(KVP_SPARK_MAX)];

static const char *draw(const struct kvp_spark *s, int width, double lo, double hi,
			enum kvp_spark_style style)
{
	size_t n = kvp_spark_render(s, width, lo, hi, style, buf, sizeof(buf));

	cr_assert_eq(n, strlen(buf), "the length returned is the string's");
	return buf;
}

static void push_all(struct kvp_spark *s, const double *v, int n)
{
	for (int i = 0; i < n; i++)
		kvp_spark_push(s, v[i], 0.5);
}

Test(spark, ramp_reaches_every_level_scaled_to_its_maximum)
{
	static const double v[] = { 0, 1, 2, 3, 4, 5, 6, 7 };
	struct kvp_spark s;

	kvp_spark_init(&s, W);
	push_all(&s, v, 8);
	cr_assert_str_eq(draw(&s, W, 0, NAN, KVP_SPARK_UTF8), U1 U2 U3 U4 U5 U6 U7 U8);
	/* scaled by 10: the same drawing, only the maximum decides */
	kvp_spark_init(&s, W);
	for (int i = 0; i < 8; i++)
		kvp_spark_push(&s, v[i] * 10, 1);
	cr_assert_str_eq(draw(&s, W, 0, NAN, KVP_SPARK_UTF8), U1 U2 U3 U4 U5 U6 U7 U8);
	cr_assert_float_eq(kvp_spark_max(&s), 70, 1e-12);
	cr_assert_float_eq(kvp_spark_last(&s), 70, 1e-12);
}

Test(spark, fixed_range_rounds_to_the_nearest_level_and_clamps)
{
	/* on 0..1 a level is 1/7: 0.5 is 3.5 levels, rounded away from zero to 4 (U5);
	 * below lo and above hi clamp to the ends */
	static const double v[] = { 0, 0.07, 0.08, 0.5, 0.93, 1, -3, 9 };
	struct kvp_spark s;

	kvp_spark_init(&s, W);
	push_all(&s, v, 8);
	cr_assert_str_eq(draw(&s, W, 0, 1, KVP_SPARK_UTF8), U1 U1 U2 U5 U8 U8 U1 U8);
	cr_assert_float_eq(kvp_spark_max(&s), 9, 1e-12);
}

Test(spark, flat_series_is_drawn_at_the_lowest_level_or_its_top)
{
	static const double zero[] = { 0, 0, 0, 0 }, five[] = { 5, 5, 5, 5 };
	struct kvp_spark s;

	/* all at lo with an automatic top: nothing to tell apart, the lowest level */
	kvp_spark_init(&s, W);
	push_all(&s, zero, 4);
	cr_assert_str_eq(draw(&s, 4, 0, NAN, KVP_SPARK_UTF8), U1 U1 U1 U1);
	/* above lo, the automatic top is the series itself: full */
	kvp_spark_init(&s, W);
	push_all(&s, five, 4);
	cr_assert_str_eq(draw(&s, 4, 0, NAN, KVP_SPARK_UTF8), U8 U8 U8 U8);
	/* a range that is not one (hi <= lo): the lowest level */
	cr_assert_str_eq(draw(&s, 4, 5, 5, KVP_SPARK_UTF8), U1 U1 U1 U1);
	cr_assert_str_eq(draw(&s, 4, 7, 2, KVP_SPARK_ASCII), "____");
}

Test(spark, empty_history_is_blank_and_has_no_figures)
{
	struct kvp_spark s;

	kvp_spark_init(&s, 60);
	cr_assert_str_eq(draw(&s, W, 0, NAN, KVP_SPARK_UTF8), "        ");
	cr_assert_str_eq(draw(&s, 0, 0, 1, KVP_SPARK_UTF8), "");
	cr_assert(isnan(kvp_spark_last(&s)));
	cr_assert(isnan(kvp_spark_max(&s)));
	cr_assert(isnan(kvp_spark_at(&s, 0)));
	cr_assert_float_eq(kvp_spark_span(&s), 0, 1e-12);
}

Test(spark, short_history_is_right_aligned_and_gaps_are_spaces)
{
	static const double v[] = { 1, NAN, 0.5 };
	struct kvp_spark s;

	kvp_spark_init(&s, 60);
	push_all(&s, v, 3);
	cr_assert_str_eq(draw(&s, 6, 0, 1, KVP_SPARK_UTF8), "   " U8 " " U5);
	cr_assert_str_eq(draw(&s, 6, 0, 1, KVP_SPARK_ASCII), "   # +");
	/* a gap is not the maximum, and the newest sample is what last gives */
	cr_assert_float_eq(kvp_spark_max(&s), 1, 1e-12);
	cr_assert_float_eq(kvp_spark_last(&s), 0.5, 1e-12);
	kvp_spark_push(&s, NAN, 0.5);
	cr_assert(isnan(kvp_spark_last(&s)), "a gap is the newest");
}

Test(spark, ring_wraps_around_keeping_the_newest_in_order)
{
	struct kvp_spark s;

	/* 6 slots, 0..7 pushed: 2..7 held, oldest at head */
	kvp_spark_init(&s, 6);
	for (int i = 0; i < 8; i++)
		kvp_spark_push(&s, i, 1);
	cr_assert_eq(s.n, 6);
	for (int i = 0; i < 6; i++)
		cr_assert_float_eq(kvp_spark_at(&s, i), i + 2, 1e-12, "sample %d", i);
	cr_assert(isnan(kvp_spark_at(&s, 6)));
	cr_assert(isnan(kvp_spark_at(&s, -1)));
	cr_assert_str_eq(draw(&s, W, 0, NAN, KVP_SPARK_UTF8), "  " U3 U4 U5 U6 U7 U8);
	cr_assert_str_eq(draw(&s, W, 0, NAN, KVP_SPARK_ASCII), "  -=+*%#");
	/* narrower than the ring: the newest samples only */
	cr_assert_str_eq(draw(&s, 3, 0, 7, KVP_SPARK_ASCII), "*%#");
	cr_assert_float_eq(kvp_spark_span(&s), 6, 1e-12, "only the held samples count");

	/* many times around: still the last cap, in order */
	for (int i = 8; i < 6 * 40 + 3; i++)
		kvp_spark_push(&s, i, 1);
	for (int i = 0; i < 6; i++)
		cr_assert_float_eq(kvp_spark_at(&s, i), 6 * 40 + 3 - 6 + i, 1e-12);
	cr_assert_float_eq(kvp_spark_last(&s), 6 * 40 + 2, 1e-12);
}

Test(spark, ring_of_one_and_capacity_clamped)
{
	struct kvp_spark s;

	kvp_spark_init(&s, 0);
	cr_assert_eq(s.cap, 1);
	kvp_spark_push(&s, 3, 1);
	kvp_spark_push(&s, 4, 1);
	cr_assert_eq(s.n, 1);
	cr_assert_float_eq(kvp_spark_last(&s), 4, 1e-12);
	kvp_spark_init(&s, KVP_SPARK_MAX + 100);
	cr_assert_eq(s.cap, KVP_SPARK_MAX);
	for (int i = 0; i < KVP_SPARK_MAX + 5; i++)
		kvp_spark_push(&s, i % 8, 1);
	cr_assert_eq(strlen(draw(&s, KVP_SPARK_MAX, 0, 7, KVP_SPARK_UTF8)),
		     (size_t)KVP_SPARK_MAX * 3, "every column a three-byte glyph");
}

Test(spark, span_sums_the_intervals_and_reads_as_a_duration)
{
	struct kvp_spark s;
	char b[32];

	kvp_spark_init(&s, 60);
	for (int i = 0; i < 60; i++)
		kvp_spark_push(&s, i, 1.0);
	kvp_spark_push(&s, 1, 0.5);   /* the oldest (1.0 s) drops out */
	kvp_spark_push(&s, 1, NAN);   /* an interval of no known length counts 0 */
	cr_assert_float_eq(kvp_spark_span(&s), 58.5, 1e-9);
	cr_assert_str_eq(kvp_spark_fmt_span(b, sizeof(b), 0.6), "0.6s");
	cr_assert_str_eq(kvp_spark_fmt_span(b, sizeof(b), 45), "45s");
	cr_assert_str_eq(kvp_spark_fmt_span(b, sizeof(b), 60), "1m00s");
	cr_assert_str_eq(kvp_spark_fmt_span(b, sizeof(b), 125.4), "2m05s");
	cr_assert_str_eq(kvp_spark_fmt_span(b, sizeof(b), 7500), "2h05m");
	cr_assert_str_eq(kvp_spark_fmt_span(b, sizeof(b), NAN), "0.0s");
}
