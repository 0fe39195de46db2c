/* TAP helpers for the C tests.  Not thread-safe: call from the test's main thread. */
#include "tests/lib/tap.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int counter, failed, planned;
static char tmpdir[256];

void tap_plan(int n)
{
	planned = 1;
	printf("1..%d\n", n);
	fflush(stdout);
}

int tap_ok(int cond, const char *fmt, ...)
{
	va_list ap;
	counter++;
	printf("%s %d - ", cond ? "ok" : "not ok", counter);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	if (!cond) failed++;
	return cond;
}

void tap_diag(const char *fmt, ...)
{
	va_list ap;
	printf("# ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

void tap_skip_all(const char *why)
{
	printf("1..0 # SKIP %s\n", why);
	exit(0);
}

const char *tap_tmpdir(void)
{
	if (!tmpdir[0]) {
		const char *base = getenv("TMPDIR");
		snprintf(tmpdir, sizeof tmpdir, "%s/ociblk-test-XXXXXX", base ? base : "/tmp");
		if (!mkdtemp(tmpdir)) {
			perror("mkdtemp");
			exit(1);
		}
	}
	return tmpdir;
}

int tap_done(void)
{
	if (!planned) printf("1..%d\n", counter);
	if (tmpdir[0] && !failed) {
		char cmd[300];
		snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
		if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", tmpdir);
	} else if (tmpdir[0]) {
		tap_diag("kept %s for inspection", tmpdir);
	}
	fflush(stdout);
	return failed ? 1 : 0;
}

uint64_t tap_seed(void)
{
	const char *e = getenv("OCIBLK_SEED");
	uint64_t s = e ? strtoull(e, NULL, 0) : ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid();
	if (!s) s = 1;
	tap_diag("seed %llu (replay with OCIBLK_SEED=%llu)", (unsigned long long)s, (unsigned long long)s);
	return s;
}

uint64_t tap_rand(uint64_t *x)
{
	*x ^= *x >> 12;
	*x ^= *x << 25;
	*x ^= *x >> 27;
	return *x * 0x2545F4914F6CDD1DULL;
}
