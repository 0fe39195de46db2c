/* Checked arithmetic for values that come from outside (sizes, offsets, counts).
 * Each returns 0 on success or -EOVERFLOW, leaving *out untouched on overflow. */
#ifndef OCIBLK_COMMON_CHECKED_H
#define OCIBLK_COMMON_CHECKED_H

#include <errno.h>
#include <stdint.h>

static inline int ck_add_u64(uint64_t a, uint64_t b, uint64_t *out)
{
	uint64_t r;
	if (__builtin_add_overflow(a, b, &r)) return -EOVERFLOW;
	*out = r;
	return 0;
}

static inline int ck_mul_u64(uint64_t a, uint64_t b, uint64_t *out)
{
	uint64_t r;
	if (__builtin_mul_overflow(a, b, &r)) return -EOVERFLOW;
	*out = r;
	return 0;
}

/* 1 when [off, off+len) lies within [0, limit) without overflow; len 0 is within when off <= limit. */
static inline int ck_range_within(uint64_t off, uint64_t len, uint64_t limit)
{
	return off <= limit && len <= limit - off;
}

#define DIV_ROUND_UP(a, b) (((a) + (b) - 1) / (b))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif
