/*
 * sparkline.h - a one-line history of a figure: the last samples in a ring, drawn as
 * a row of block characters, one column a sample, oldest on the left.
 *
 *   ring (cap 6, 8 pushed)          drawn (width 8, lo 0, hi auto = 7)
 *   v: [ 6  7  2  3  4  5 ]         "  ▃▄▅▆▇█"  (UTF-8)
 *            ^head: next slot        "  -=+*%#"  (ASCII)
 *   oldest held = v[head] = 2        the newest sample is always the last column;
 *                                    fewer samples than width: spaces on the left
 *
 * A sample's level is round((v - lo) / (hi - lo) * 7), 0..7, clamped: the lowest glyph
 * is lo (or below it), the highest is hi (or above). hi may be NAN: then it is the
 * largest sample held, so the tallest sample reaches the top. A flat series (hi <= lo)
 * is drawn at the lowest level. A NAN sample (no figure for that interval, e.g. a hit
 * rate with no queries) is a gap: a space.
 *
 * Pure functions on caller-owned memory: no allocation, no I/O, no global state (the
 * locale is the caller's business: kvp_spark_render takes the style). Not thread-safe
 * for one ring; separate rings are independent.
 */
#ifndef KVP_TOOL_SPARKLINE_H
#define KVP_TOOL_SPARKLINE_H

#include <stdbool.h>
#include <stddef.h>

#define KVP_SPARK_MAX 240   /* samples a ring can keep */
#define KVP_SPARK_LEVELS 8

/* Bytes render needs for width columns, terminator included (a glyph is <= 3 bytes). */
#define KVP_SPARK_BUF(width) ((size_t)(width) * 3 + 1)

enum kvp_spark_style {
	KVP_SPARK_UTF8,    /* ▁▂▃▄▅▆▇█ (U+2581..U+2588) */
	KVP_SPARK_ASCII,   /* _.-=+*%# */
};

/* The last cap samples and the interval each covers; kvp_spark_init before use. */
struct kvp_spark {
	double v[KVP_SPARK_MAX];
	double dt[KVP_SPARK_MAX];   /* seconds each sample covers */
	int cap;                    /* samples kept, 1..KVP_SPARK_MAX */
	int n;                      /* samples held, <= cap */
	int head;                   /* the slot the next push writes */
};

/* An empty ring keeping the last cap samples (clamped to 1..KVP_SPARK_MAX). */
void kvp_spark_init(struct kvp_spark *s, int cap);

/* Add a sample covering dt seconds (NAN v: a gap), dropping the oldest when full. */
void kvp_spark_push(struct kvp_spark *s, double v, double dt);

/* The i-th sample held, 0 the oldest, n-1 the newest; NAN outside 0..n-1. */
double kvp_spark_at(const struct kvp_spark *s, int i);

/* The newest sample (NAN when empty or a gap). */
double kvp_spark_last(const struct kvp_spark *s);

/* The largest sample held, ignoring gaps; NAN when there is none. */
double kvp_spark_max(const struct kvp_spark *s);

/* Seconds the held samples cover together (0 when empty). */
double kvp_spark_span(const struct kvp_spark *s);

/*
 * Draw the newest min(n, width) samples right-aligned in width columns (spaces to the
 * left) into buf, NUL-terminated, scaled between lo and hi (NAN: the largest sample
 * held). cap must be at least KVP_SPARK_BUF(width); width >= 0. Returns the bytes
 * written, terminator not counted; an empty ring draws width spaces.
 */
size_t kvp_spark_render(const struct kvp_spark *s, int width, double lo, double hi,
			enum kvp_spark_style style, char *buf, size_t cap);

/* A span of seconds for a label: "0.6s", "45s", "1m00s", "2h05m". Returns buf. */
const char *kvp_spark_fmt_span(char *buf, size_t cap, double secs);

#endif
