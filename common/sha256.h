/* SHA-256 over OpenSSL's EVP interface, and the "sha256:<hex>" digest strings OCI and the layer
 * store use. */
#ifndef OCIBLK_COMMON_SHA256_H
#define OCIBLK_COMMON_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define SHA256_BYTES 32
#define SHA256_HEX_LEN 64
/* "sha256:" + 64 hex + NUL */
#define SHA256_DIGEST_STRLEN (7 + SHA256_HEX_LEN + 1)

struct sha256_ctx; /* opaque */

/* 0 or -ENOMEM. */
int sha256_ctx_new(struct sha256_ctx **out);
void sha256_ctx_update(struct sha256_ctx *ctx, const void *data, size_t len);
/* Finishes and resets the context for reuse. */
void sha256_ctx_final(struct sha256_ctx *ctx, uint8_t out[SHA256_BYTES]);
void sha256_ctx_free(struct sha256_ctx *ctx);

void sha256_buffer(const void *data, size_t len, uint8_t out[SHA256_BYTES]);
/* Writes "sha256:<64 lowercase hex>" into out (SHA256_DIGEST_STRLEN bytes). */
void sha256_format_digest(const uint8_t bin[SHA256_BYTES], char out[SHA256_DIGEST_STRLEN]);
/* Parses "sha256:<64 lowercase hex>" exactly; 0 or -EINVAL.  bin may be NULL to only validate. */
int sha256_parse_digest(const char *s, uint8_t bin[SHA256_BYTES]);
/* Hashes a whole file by path; 0 or -errno. */
int sha256_file(const char *path, uint8_t out[SHA256_BYTES]);

#endif
