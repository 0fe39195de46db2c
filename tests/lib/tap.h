/* Minimal TAP producer for the C tests (prove reads it). */
#ifndef OCIBLK_TESTS_TAP_H
#define OCIBLK_TESTS_TAP_H

#include <stdint.h>

void tap_plan(int n);               /* "1..n"; or call tap_done() at the end instead */
int tap_ok(int cond, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void tap_diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void tap_skip_all(const char *why) __attribute__((noreturn)); /* "1..0 # SKIP why", exit 0 */
int tap_done(void);                 /* prints the plan if none was given; exit status 0/1 */

/* A fresh empty directory under $TMPDIR (removed by tap_done unless a test failed). */
const char *tap_tmpdir(void);

/* Seeded PRNG (xorshift64*). seed from $OCIBLK_SEED when set, else time; printed as a diag line
 * so a failure can be replayed. */
uint64_t tap_seed(void);
uint64_t tap_rand(uint64_t *state);

#define TAP_OK(cond, ...) tap_ok(!!(cond), __VA_ARGS__)
#define TAP_IS(a, b, ...) tap_ok((a) == (b), __VA_ARGS__)

#endif
