/* SHA-256 via OpenSSL libcrypto (EVP), plus OCI digest-string formatting and strict parsing.
 * Parsing accepts only lowercase hex so that one digest has exactly one spelling (file names). */
#include "common/sha256.h"
#include "common/cleanup.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <openssl/evp.h>

struct sha256_ctx {
	EVP_MD_CTX *md;
};

int sha256_ctx_new(struct sha256_ctx **out)
{
	struct sha256_ctx *c = calloc(1, sizeof *c);
	if (!c) return -ENOMEM;
	c->md = EVP_MD_CTX_new();
	if (!c->md || EVP_DigestInit_ex(c->md, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(c->md);
		free(c);
		return -ENOMEM;
	}
	*out = c;
	return 0;
}

void sha256_ctx_update(struct sha256_ctx *c, const void *data, size_t len)
{
	EVP_DigestUpdate(c->md, data, len);
}

void sha256_ctx_final(struct sha256_ctx *c, uint8_t out[SHA256_BYTES])
{
	unsigned int n = 0;
	EVP_DigestFinal_ex(c->md, out, &n);
	EVP_DigestInit_ex(c->md, EVP_sha256(), NULL);
}

void sha256_ctx_free(struct sha256_ctx *c)
{
	if (!c) return;
	EVP_MD_CTX_free(c->md);
	free(c);
}

void sha256_buffer(const void *data, size_t len, uint8_t out[SHA256_BYTES])
{
	unsigned int n = 0;
	EVP_Digest(data, len, out, &n, EVP_sha256(), NULL);
}

void sha256_format_digest(const uint8_t bin[SHA256_BYTES], char out[SHA256_DIGEST_STRLEN])
{
	static const char hex[] = "0123456789abcdef";
	memcpy(out, "sha256:", 7);
	for (int i = 0; i < SHA256_BYTES; i++) {
		out[7 + 2 * i] = hex[bin[i] >> 4];
		out[8 + 2 * i] = hex[bin[i] & 15];
	}
	out[7 + SHA256_HEX_LEN] = 0;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9') return c - '0';
	if (c >= 'a' && c <= 'f') return c - 'a' + 10;
	return -1;
}

int sha256_parse_digest(const char *s, uint8_t bin[SHA256_BYTES])
{
	if (!s || strncmp(s, "sha256:", 7) != 0 || strlen(s) != 7 + SHA256_HEX_LEN) return -EINVAL;
	for (int i = 0; i < SHA256_BYTES; i++) {
		int hi = hexval(s[7 + 2 * i]), lo = hexval(s[8 + 2 * i]);
		if (hi < 0 || lo < 0) return -EINVAL;
		if (bin) bin[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

int sha256_file(const char *path, uint8_t out[SHA256_BYTES])
{
	CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct sha256_ctx *c = NULL;
	static __thread uint8_t buf[1 << 16];
	int r;
	if (fd < 0) return -errno;
	if ((r = sha256_ctx_new(&c)) < 0) return r;
	for (;;) {
		ssize_t n = read(fd, buf, sizeof buf);
		if (n < 0) {
			if (errno == EINTR) continue;
			r = -errno;
			sha256_ctx_free(c);
			return r;
		}
		if (n == 0) break;
		sha256_ctx_update(c, buf, (size_t)n);
	}
	sha256_ctx_final(c, out);
	sha256_ctx_free(c);
	return 0;
}
