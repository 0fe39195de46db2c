/* Unit tests for common/: sha256 digests, checked arithmetic, atomic file writes. */
#include "common/checked.h"
#include "common/sha256.h"
#include "common/vfs.h"
#include "tests/lib/tap.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void)
{
	uint8_t bin[SHA256_BYTES], back[SHA256_BYTES];
	char hex[SHA256_DIGEST_STRLEN], path[512];
	uint64_t v = 0;
	char *data = NULL;
	size_t len = 0;

	sha256_buffer("abc", 3, bin);
	sha256_format_digest(bin, hex);
	TAP_OK(!strcmp(hex, "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"), "sha256(abc) matches FIPS 180-2 vector");
	TAP_IS(sha256_parse_digest(hex, back), 0, "digest parses");
	TAP_OK(!memcmp(bin, back, SHA256_BYTES), "digest round-trips");
	TAP_IS(sha256_parse_digest("sha256:BA7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", NULL), -EINVAL, "uppercase hex rejected");
	TAP_IS(sha256_parse_digest("sha256:ba78", NULL), -EINVAL, "short digest rejected");
	TAP_IS(sha256_parse_digest("sha512:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", NULL), -EINVAL, "other algorithm rejected");

	TAP_IS(ck_add_u64(UINT64_MAX, 1, &v), -EOVERFLOW, "add overflow detected");
	TAP_IS(ck_mul_u64(1ull << 40, 1ull << 30, &v), -EOVERFLOW, "mul overflow detected");
	TAP_OK(ck_add_u64(2, 3, &v) == 0 && v == 5, "add ok");
	TAP_OK(!ck_range_within(UINT64_MAX - 10, 20, UINT64_MAX), "range wrapping past 2^64 is outside");
	TAP_OK(ck_range_within(4096, 4096, 8192), "range at the end is inside");
	TAP_OK(!ck_range_within(4096, 4097, 8192), "range one past the end is outside");

	snprintf(path, sizeof path, "%s/f", tap_tmpdir());
	TAP_IS(vfs_write_file_atomic(path, "hello", 5), 0, "atomic write");
	TAP_IS(vfs_write_file_atomic(path, "world!", 6), 0, "atomic replace");
	TAP_OK(vfs_read_file(path, 100, &data, &len) == 0 && len == 6 && !strcmp(data, "world!"), "read back the replacement");
	free(data);
	TAP_IS(vfs_read_file(path, 3, &data, &len), -EFBIG, "read_file enforces its limit");
	return tap_done();
}
