#include "kvp_clock.h"
#include "kvp_log.h"
#include "kvp_status.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum kvp_log_level log_level = KVP_LOG_INFO;
static const char *const level_names[] = { "error", "warn", "info", "debug" };

static bool getenv_journal(void)
{
	static int cached = -1;

	if (cached < 0)
		cached = getenv("JOURNAL_STREAM") != NULL;
	return cached;
}

int kvp_log_parse_level(const char *s, enum kvp_log_level *out)
{
	for (int i = 0; i < 4; i++) {
		if (strcmp(s, level_names[i]) == 0) {
			*out = (enum kvp_log_level)i;
			return KVP_OK;
		}
	}
	return KVP_EINVAL;
}

const char *kvp_log_level_name(enum kvp_log_level level)
{
	return (unsigned)level < 4 ? level_names[level] : "info";
}

void kvp_log_set_level(enum kvp_log_level level)
{
	log_level = level;
}

int kvp_log_enabled(enum kvp_log_level level)
{
	return level <= log_level;
}

/* Write one line: the level's prefix, fmt, then tail (may be ""). */
static void log_line(enum kvp_log_level level, const char *tail, const char *fmt, va_list ap)
{
	char line[1024];
	size_t n = 0;
	int r;

	/* Under systemd (JOURNAL_STREAM set) journald stamps lines; use its priority prefix. */
	if (getenv_journal()) {
		static const int prio[] = { 3, 4, 6, 7 };
		n = (size_t)snprintf(line, sizeof(line), "<%d>", prio[level]);
	} else {
		struct timespec ts;
		struct tm tm;
		clock_gettime(CLOCK_REALTIME, &ts);
		localtime_r(&ts.tv_sec, &tm);
		n = strftime(line, sizeof(line), "%Y-%m-%d %H:%M:%S", &tm);
		n += (size_t)snprintf(line + n, sizeof(line) - n, ".%03ld %s: ",
				      ts.tv_nsec / 1000000, level_names[level]);
	}
	r = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
	if (r < 0)
		return;
	n += (size_t)r;
	if (n < sizeof(line) - 2)
		n += (size_t)snprintf(line + n, sizeof(line) - n - 1, "%s", tail);
	if (n > sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	/* A failed log write (full disk, closed stderr) must never take the daemon down. */
	if (write(STDERR_FILENO, line, n) < 0)
		return;
}

void kvp_log(enum kvp_log_level level, const char *fmt, ...)
{
	va_list ap;

	if (!kvp_log_enabled(level))
		return;
	va_start(ap, fmt);
	log_line(level, "", fmt, ap);
	va_end(ap);
}

void kvp_log_limited(struct kvp_log_limit *lim, enum kvp_log_level level, const char *fmt, ...)
{
	uint64_t now;
	char tail[64] = "";
	va_list ap;

	if (!kvp_log_enabled(level))
		return;
	now = kvp_clock_ns();
	if (now < lim->next_ns) {
		lim->suppressed++;
		return;
	}
	if (lim->suppressed)
		snprintf(tail, sizeof(tail), " (%llu more like this suppressed)",
			 (unsigned long long)lim->suppressed);
	lim->suppressed = 0;
	lim->next_ns = now + KVP_LOG_LIMIT_NS;
	va_start(ap, fmt);
	log_line(level, tail, fmt, ap);
	va_end(ap);
}
