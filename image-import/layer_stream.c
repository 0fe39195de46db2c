/* A layer blob read as a verified tar stream.
 *
 *   fd --(hash: blob digest, count: size)--> outer libarchive reader (raw format + gzip/zstd)
 *      --(hash: diff id)--> inner libarchive reader (tar) --> scan, or ext4_apply_tar
 *
 * Invariants: every byte the outer reader gets from the file, and every byte the inner reader
 * gets from the decompressor, passes through a hash; finish reads whatever the readers left so
 * the digests cover the whole blob; the compressed input is cut off one byte past the size the
 * descriptor claims and the tar at IMAGE_IMPORT_LAYER_TAR_BYTES_MAX, so neither a lying
 * descriptor nor a decompression bomb makes us read forever. */
#define OCIBLK_IMAGE_IMPORT_INTERNAL
#include "image-import/oci.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"

#define LAYER_STREAM_BUF_BYTES (1u << 20)

struct layer_stream {
	int fd;
	enum oci_compression compression;
	char label[256];
	struct layer_stream_progress progress;
	struct archive *outer, *inner;
	struct sha256_ctx *blob_hash, *tar_hash;
	uint64_t compressed_bytes, tar_bytes;
	uint64_t compressed_limit;
	bool fd_eof, outer_eof, outer_failed;
	char outer_error[256];
	char digest[SHA256_DIGEST_STRLEN], diff_id[SHA256_DIGEST_STRLEN];
	unsigned char *fd_buf, *tar_buf;
};

static la_ssize_t outer_read(struct archive *a, void *opaque, const void **buf)
{
	struct layer_stream *ls = opaque;
	*buf = ls->fd_buf;
	if (ls->compressed_bytes > ls->compressed_limit) {
		archive_set_error(a, E2BIG, "blob is larger than its descriptor says");
		return -1;
	}
	for (;;) {
		ssize_t n = read(ls->fd, ls->fd_buf, LAYER_STREAM_BUF_BYTES);
		if (n < 0 && errno == EINTR) continue;
		if (n < 0) {
			archive_set_error(a, errno, "read: %s", strerror(errno));
			return -1;
		}
		if (n == 0) ls->fd_eof = true;
		sha256_ctx_update(ls->blob_hash, ls->fd_buf, (size_t)n);
		ls->compressed_bytes += (uint64_t)n;
		if (ls->progress.fn) ls->progress.fn(ls->progress.opaque, ls->compressed_bytes);
		return n;
	}
}

static la_ssize_t inner_read(struct archive *a, void *opaque, const void **buf)
{
	struct layer_stream *ls = opaque;
	*buf = ls->tar_buf;
	if (ls->outer_eof) return 0;
	la_ssize_t n = archive_read_data(ls->outer, ls->tar_buf, LAYER_STREAM_BUF_BYTES);
	if (n < 0) {
		ls->outer_failed = true;
		snprintf(ls->outer_error, sizeof(ls->outer_error), "%s",
			 archive_error_string(ls->outer) ? archive_error_string(ls->outer) : "decompression failed");
		archive_set_error(a, EIO, "%s", ls->outer_error);
		return -1;
	}
	if (n == 0) {
		ls->outer_eof = true;
		return 0;
	}
	ls->tar_bytes += (uint64_t)n;
	if (ls->tar_bytes > IMAGE_IMPORT_LAYER_TAR_BYTES_MAX) {
		ls->outer_failed = true;
		snprintf(ls->outer_error, sizeof(ls->outer_error), "uncompressed tar larger than %llu bytes",
			 (unsigned long long)IMAGE_IMPORT_LAYER_TAR_BYTES_MAX);
		archive_set_error(a, E2BIG, "%s", ls->outer_error);
		return -1;
	}
	sha256_ctx_update(ls->tar_hash, ls->tar_buf, (size_t)n);
	return n;
}

static const char *compression_name(int code)
{
	switch (code) {
	case ARCHIVE_FILTER_NONE: return "uncompressed";
	case ARCHIVE_FILTER_GZIP: return "gzip";
	case ARCHIVE_FILTER_ZSTD: return "zstd";
	default: return "an unsupported compression";
	}
}

int layer_stream_open(int fd, enum oci_compression compression, uint64_t expect_size, const char *label,
		      const struct layer_stream_progress *progress, struct layer_stream **out)
{
	struct layer_stream *ls = calloc(1, sizeof(*ls));
	struct archive_entry *e;
	int r;
	if (!ls) {
		close(fd);
		return log_error(-ENOMEM, "%s: out of memory", label);
	}
	ls->fd = fd;
	ls->compression = compression;
	ls->compressed_limit = expect_size != UINT64_MAX ? expect_size : IMAGE_IMPORT_BLOB_BYTES_MAX;
	snprintf(ls->label, sizeof(ls->label), "%s", label);
	if (progress) ls->progress = *progress;
	ls->fd_buf = malloc(LAYER_STREAM_BUF_BYTES);
	ls->tar_buf = malloc(LAYER_STREAM_BUF_BYTES);
	if (!ls->fd_buf || !ls->tar_buf || sha256_ctx_new(&ls->blob_hash) < 0 || sha256_ctx_new(&ls->tar_hash) < 0 ||
	    !(ls->outer = archive_read_new()) || !(ls->inner = archive_read_new())) {
		r = log_error(-ENOMEM, "%s: out of memory", label);
		goto fail;
	}
	archive_read_support_format_raw(ls->outer);
	/* Both filters are offered whatever the media type says, so that a mismatch is reported as
	 * one instead of as a corrupt tar. */
	archive_read_support_filter_gzip(ls->outer);
	archive_read_support_filter_zstd(ls->outer);
	if (archive_read_open(ls->outer, ls, NULL, outer_read, NULL) != ARCHIVE_OK ||
	    archive_read_next_header(ls->outer, &e) != ARCHIVE_OK) {
		r = log_error(-EIO, "%s: read blob: %s", label,
			      archive_error_string(ls->outer) ? archive_error_string(ls->outer) : "empty blob");
		goto fail;
	}
	int code = archive_filter_code(ls->outer, 0);
	if (code != ARCHIVE_FILTER_NONE && code != ARCHIVE_FILTER_GZIP && code != ARCHIVE_FILTER_ZSTD) {
		r = log_error(-EINVAL, "%s: unsupported compression %s", label, archive_filter_name(ls->outer, 0));
		goto fail;
	}
	int want = compression == OCI_COMPRESSION_GZIP   ? ARCHIVE_FILTER_GZIP
		   : compression == OCI_COMPRESSION_ZSTD ? ARCHIVE_FILTER_ZSTD
		   : compression == OCI_COMPRESSION_NONE ? ARCHIVE_FILTER_NONE
							 : code;
	if (code != want) {
		r = log_error(-EINVAL, "%s: blob is %s but its media type says %s", label, compression_name(code),
			      compression_name(want));
		goto fail;
	}
	archive_read_support_format_tar(ls->inner);
	archive_read_support_format_empty(ls->inner);
	if (archive_read_open(ls->inner, ls, NULL, inner_read, NULL) != ARCHIVE_OK) {
		r = log_error(-EIO, "%s: open tar: %s", label, archive_error_string(ls->inner));
		goto fail;
	}
	*out = ls;
	return 0;
fail:
	layer_stream_close(ls);
	return r;
}

struct archive *layer_stream_tar(struct layer_stream *ls) { return ls->inner; }

/* An error from the inner reader: say what failed underneath when it was decompression. */
static int tar_error(struct layer_stream *ls, const char *entry, const char *op)
{
	const char *why = ls->outer_failed ? ls->outer_error
		      : archive_error_string(ls->inner) ? archive_error_string(ls->inner) : "corrupt tar";
	if (entry) return log_error(-EIO, "%s entry %s: %s: %s", ls->label, entry, op, why);
	return log_error(-EIO, "%s: %s: %s", ls->label, op, why);
}

int layer_stream_scan(struct layer_stream *ls)
{
	struct archive_entry *e;
	char last[512] = "(start of layer)";
	for (uint64_t count = 0;; count++) {
		int h = archive_read_next_header(ls->inner, &e);
		if (h == ARCHIVE_EOF) return 0;
		if (h != ARCHIVE_OK && h != ARCHIVE_WARN) {
			char after[560];
			snprintf(after, sizeof(after), "after %s", last);
			return tar_error(ls, after, "read tar header");
		}
		if (count >= IMAGE_IMPORT_LAYER_ENTRIES_MAX)
			return log_error(-E2BIG, "%s: more than %u entries", ls->label, IMAGE_IMPORT_LAYER_ENTRIES_MAX);
		const char *name = archive_entry_pathname(e);
		if (!name || !name[0]) return log_error(-EINVAL, "%s: entry %llu has no usable name", ls->label,
							(unsigned long long)count);
		snprintf(last, sizeof(last), "%s", name);
		if (strlen(name) >= 4096)
			return log_error(-ENAMETOOLONG, "%s entry %.200s...: name longer than 4095 bytes", ls->label, name);
		if (oci_path_check(name) < 0)
			return log_error(-EINVAL, "%s entry %s: unsafe path (absolute or with \"..\")", ls->label, name);
		const char *hl = archive_entry_hardlink(e);
		if (hl && (oci_path_check(hl) < 0 || !hl[0]))
			return log_error(-EINVAL, "%s entry %s: hard link to unsafe path %s", ls->label, name, hl);
		if (archive_entry_size_is_set(e) && archive_entry_size(e) < 0)
			return log_error(-EINVAL, "%s entry %s: negative size", ls->label, name);
		if (archive_read_data_skip(ls->inner) != ARCHIVE_OK) return tar_error(ls, name, "read data");
	}
}

int layer_stream_finish(struct layer_stream *ls, const char *expect_digest, uint64_t expect_size,
			const char *expect_diff_id)
{
	uint8_t bin[SHA256_BYTES];
	/* The tar's end-of-archive blocks and any padding after them belong to the diff id. */
	while (!ls->outer_eof) {
		const void *p;
		la_ssize_t n = inner_read(ls->inner, ls, &p);
		if (n < 0) return log_error(-EIO, "%s: read blob: %s", ls->label, ls->outer_error);
	}
	/* Bytes after the compressed stream (or never requested) belong to the blob digest. */
	while (!ls->fd_eof) {
		const void *p;
		if (outer_read(ls->outer, ls, &p) < 0)
			return log_error(-EIO, "%s: read blob: %s", ls->label, archive_error_string(ls->outer));
	}
	sha256_ctx_final(ls->blob_hash, bin);
	sha256_format_digest(bin, ls->digest);
	sha256_ctx_final(ls->tar_hash, bin);
	sha256_format_digest(bin, ls->diff_id);
	if (expect_size != UINT64_MAX && ls->compressed_bytes != expect_size)
		return log_error(-EINVAL, "%s: blob size is %llu bytes, descriptor says %llu", ls->label,
				 (unsigned long long)ls->compressed_bytes, (unsigned long long)expect_size);
	if (expect_digest && strcmp(expect_digest, ls->digest) != 0)
		return log_error(-EINVAL, "%s: digest mismatch: blob is %s, descriptor says %s", ls->label, ls->digest,
				 expect_digest);
	if (expect_diff_id && strcmp(expect_diff_id, ls->diff_id) != 0)
		return log_error(-EINVAL, "%s: diff id mismatch: uncompressed tar is %s, config says %s", ls->label,
				 ls->diff_id, expect_diff_id);
	return 0;
}

void layer_stream_close(struct layer_stream *ls)
{
	if (!ls) return;
	if (ls->inner) archive_read_free(ls->inner);
	if (ls->outer) archive_read_free(ls->outer);
	sha256_ctx_free(ls->blob_hash);
	sha256_ctx_free(ls->tar_hash);
	free(ls->fd_buf);
	free(ls->tar_buf);
	if (ls->fd >= 0) close(ls->fd);
	free(ls);
}

const char *layer_stream_digest(const struct layer_stream *ls) { return ls->digest; }
const char *layer_stream_diff_id(const struct layer_stream *ls) { return ls->diff_id; }
uint64_t layer_stream_compressed_bytes(const struct layer_stream *ls) { return ls->compressed_bytes; }
