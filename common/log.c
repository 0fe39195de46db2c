/* Logging for ociblk: one line per message on stderr, thread-safe (one fprintf per line).
 * Invariant: log_error returns its err argument unchanged. */
#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>

static _Atomic int level = -1;
static _Atomic int quiet;
static _Atomic unsigned long errors;

static enum log_level level_from_env(void)
{
	const char *e = getenv("OCIBLK_LOG");
	if (!e) return LOG_LEVEL_WARN;
	if (!strcmp(e, "debug")) return LOG_LEVEL_DEBUG;
	if (!strcmp(e, "info")) return LOG_LEVEL_INFO;
	if (!strcmp(e, "error")) return LOG_LEVEL_ERROR;
	return LOG_LEVEL_WARN;
}

enum log_level log_get_level(void)
{
	int l = atomic_load(&level);
	if (l < 0) {
		l = level_from_env();
		atomic_store(&level, l);
	}
	return (enum log_level)l;
}

void log_set_level(enum log_level l) { atomic_store(&level, (int)l); }
void log_set_quiet(int q) { atomic_store(&quiet, q); }
unsigned long log_error_count(void) { return atomic_load(&errors); }

static void emit(enum log_level l, const char *tag, const char *fmt, va_list ap)
{
	char buf[1024];
	if (l > log_get_level() || (atomic_load(&quiet) && l != LOG_LEVEL_DEBUG)) return;
	vsnprintf(buf, sizeof buf, fmt, ap);
	fprintf(stderr, "ociblk: %s%s\n", tag, buf);
}

int log_error(int err, const char *fmt, ...)
{
	va_list ap;
	atomic_fetch_add(&errors, 1);
	va_start(ap, fmt);
	emit(LOG_LEVEL_ERROR, "error: ", fmt, ap);
	va_end(ap);
	return err;
}

#define DEFINE_LOG(name, lvl, tag)                   \
	void name(const char *fmt, ...)              \
	{                                            \
		va_list ap;                          \
		va_start(ap, fmt);                   \
		emit(lvl, tag, fmt, ap);             \
		va_end(ap);                          \
	}
DEFINE_LOG(log_warn, LOG_LEVEL_WARN, "warning: ")
DEFINE_LOG(log_info, LOG_LEVEL_INFO, "")
DEFINE_LOG(log_debug, LOG_LEVEL_DEBUG, "debug: ")
