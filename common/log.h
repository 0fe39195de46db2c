/* Logging that returns -errno: log once at the origin, return the error up unchanged.
 * Messages are lowercase, operation first: log_error(-EIO, "open layer %s: %s", d, strerror(EIO)). */
#ifndef OCIBLK_COMMON_LOG_H
#define OCIBLK_COMMON_LOG_H

enum log_level { LOG_LEVEL_ERROR = 0, LOG_LEVEL_WARN = 1, LOG_LEVEL_INFO = 2, LOG_LEVEL_DEBUG = 3 };

/* Messages above this level are dropped.  Default LOG_LEVEL_WARN; $OCIBLK_LOG=debug|info|warn|error
 * sets it at first use. */
void log_set_level(enum log_level level);
enum log_level log_get_level(void);

/* Prints "ociblk: error: <msg>" to stderr and returns err (a negative errno) so callers can write
 * `return log_error(-EINVAL, "...")`. */
int log_error(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Tests that provoke errors on purpose silence them with this; the count of error lines logged
 * since start still increases, so a test can assert that an error was reported. */
void log_set_quiet(int quiet);
unsigned long log_error_count(void);

#endif
