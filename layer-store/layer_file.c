/* Layer files v1: the reader (open, validate, read and decode chunks) and the writer.
 *
 * Invariants:
 *  - A layer file is untrusted input.  layer_open_path validates the header, its checksum, the
 *    index checksum and every index entry (sorted, non-overlapping, inside the virtual size,
 *    every chunk inside the data area) before anything else sees it; after that, struct layer's
 *    arrays are trusted (asserted, not re-checked).
 *  - Every chunk is checked against its XXH3-64 on every decode; a mismatch or a zstd failure
 *    is -EIO with a log line naming the layer and the extent, and the output is never used.
 *  - layer_decode_extent allocates nothing on the hot path: one zstd DCtx and one scratch
 *    buffer per thread, created at first use.
 *  - The writer writes chunks as data arrives into a temp file of the store; a DATA chunk never
 *    crosses a multiple of chunk_blocks, so the same content fed in any call pattern yields the
 *    same file, hence the same digest.  Every durable write goes through common/vfs.h. */
#include "layer-store/layer_store_private.h"

#include "common/checked.h"
#include "common/log.h"
#include "common/vfs.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

struct layer {
	struct layer_info info;
	char name[OCIBLK_PATH_MAX];     /* for log lines: the digest, else the path */
	int fd;
	uint32_t chunk_blocks;
	uint64_t data_offset, data_length;
	struct layer_extent *extents;
	uint64_t *checksums;            /* per extent; 0 for ZERO */
};

/* ---------------------------------------------------------------- per-thread decode state -- */

struct decode_tls {
	ZSTD_DCtx *dctx;
	uint8_t *scratch;               /* LAYER_CHUNK_BLOCKS_MAX blocks, for layer_read_extent */
};

static pthread_key_t tls_key;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;
static __thread struct decode_tls *tls_state;

static void tls_free(void *p)
{
	struct decode_tls *t = p;
	if (!t) return;
	ZSTD_freeDCtx(t->dctx);
	free(t->scratch);
	free(t);
}

static void tls_init_key(void) { (void)pthread_key_create(&tls_key, tls_free); }

static struct decode_tls *tls_get(void)
{
	struct decode_tls *t = tls_state;
	if (t) return t;
	pthread_once(&tls_once, tls_init_key);
	t = calloc(1, sizeof *t);
	if (!t) return NULL;
	t->dctx = ZSTD_createDCtx();
	if (!t->dctx) {
		free(t);
		return NULL;
	}
	pthread_setspecific(tls_key, t);
	tls_state = t;
	return t;
}

/* ---------------------------------------------------------------- reader ------------------ */

static int bad(const char *name, const char *what)
{
	return log_error(-EIO, "open layer %s: corrupt: %s", name, what);
}

static int hex64_basename(const char *path, char out[SHA256_DIGEST_STRLEN])
{
	const char *b = strrchr(path, '/');
	b = b ? b + 1 : path;
	if (!ls_is_hex64(b)) return 0;
	snprintf(out, SHA256_DIGEST_STRLEN, "sha256:%s", b);
	return 1;
}

static int hash_fd(int fd, uint64_t size, uint8_t out[SHA256_BYTES])
{
	struct sha256_ctx *ctx = NULL;
	size_t buf_len = 1u << 20;
	uint8_t *buf = malloc(buf_len);
	uint64_t off = 0;
	int r = sha256_ctx_new(&ctx);
	if (r || !buf) {
		r = r ? r : -ENOMEM;
		goto out;
	}
	while (off < size) {
		size_t n = size - off < buf_len ? (size_t)(size - off) : buf_len;
		r = vfs_pread_full(fd, buf, n, off);
		if (r) goto out;
		sha256_ctx_update(ctx, buf, n);
		off += n;
	}
	sha256_ctx_final(ctx, out);
out:
	sha256_ctx_free(ctx);
	free(buf);
	return r;
}

static int parse_header(struct layer *l, const uint8_t *h, uint64_t file_size,
			uint64_t *index_offset, uint64_t *index_length, uint64_t *index_checksum)
{
	const char *n = l->name;
	uint64_t vsize, flags, count, data_end, want_len;
	uint32_t chunk_blocks;

	if (memcmp(h + LFH_MAGIC, LF_MAGIC, 8)) return bad(n, "bad magic");
	if (le_get64(h + LFH_HEADER_CHECKSUM) != XXH3_64bits(h, LFH_HEADER_CHECKSUM))
		return bad(n, "header checksum mismatch");
	if (le_get32(h + LFH_VERSION) != LF_VERSION) return bad(n, "unsupported version");
	if (le_get32(h + LFH_HEADER_BYTES) != LF_HEADER_BYTES) return bad(n, "bad header size");
	if (le_get32(h + LFH_BLOCK_SIZE) != LAYER_BLOCK_SIZE) return bad(n, "bad block size");
	chunk_blocks = le_get32(h + LFH_CHUNK_BLOCKS);
	if (chunk_blocks < 1 || chunk_blocks > LAYER_CHUNK_BLOCKS_MAX) return bad(n, "bad chunk_blocks");
	vsize = le_get64(h + LFH_VIRTUAL_SIZE);
	if (!vsize || vsize % LAYER_BLOCK_SIZE || vsize > LAYER_VIRTUAL_SIZE_MAX) return bad(n, "bad virtual size");
	flags = le_get64(h + LFH_FLAGS);
	if (flags & ~LF_FLAG_HAS_PARENT) return bad(n, "unknown flags");
	if (le_get32(h + LFH_COMPRESSION) > LF_COMPRESSION_ZSTD) return bad(n, "unknown compression");
	if (le_get32(h + LFH_CHECKSUM_TYPE) != LF_CHECKSUM_XXH3_64) return bad(n, "unknown checksum type");
	count = le_get64(h + LFH_EXTENT_COUNT);
	if (count > LAYER_EXTENTS_MAX) return bad(n, "too many extents");
	if (le_get64(h + LFH_DATA_OFFSET) != LF_HEADER_BYTES) return bad(n, "bad data offset");
	l->data_offset = LF_HEADER_BYTES;
	l->data_length = le_get64(h + LFH_DATA_LENGTH);
	if (ck_add_u64(l->data_offset, l->data_length, &data_end)) return bad(n, "data length overflows");
	*index_offset = le_get64(h + LFH_INDEX_OFFSET);
	*index_length = le_get64(h + LFH_INDEX_LENGTH);
	*index_checksum = le_get64(h + LFH_INDEX_CHECKSUM);
	if (*index_offset != data_end) return bad(n, "index does not follow the data area");
	want_len = count * LF_INDEX_ENTRY_BYTES; /* cannot overflow: count <= LAYER_EXTENTS_MAX */
	if (*index_length != want_len) return bad(n, "index length does not match extent count");
	if (!ck_range_within(*index_offset, *index_length, file_size) || *index_offset + *index_length != file_size)
		return bad(n, "file size does not match header");
	for (unsigned i = LFH_RESERVED; i < LFH_HEADER_CHECKSUM; i++)
		if (h[i]) return bad(n, "reserved header bytes not zero");
	if (flags & LF_FLAG_HAS_PARENT) {
		sha256_format_digest(h + LFH_PARENT, l->info.parent_digest);
	} else {
		for (unsigned i = 0; i < SHA256_BYTES; i++)
			if (h[LFH_PARENT + i]) return bad(n, "parent bytes set without the parent flag");
		l->info.parent_digest[0] = 0;
	}
	l->chunk_blocks = chunk_blocks;
	l->info.virtual_size_bytes = vsize;
	l->info.file_size_bytes = file_size;
	l->info.extent_count = count;
	return 0;
}

static int parse_index(struct layer *l, const uint8_t *idx)
{
	const char *n = l->name;
	uint64_t vblocks = l->info.virtual_size_bytes / LAYER_BLOCK_SIZE, next_block = 0;
	uint64_t count = l->info.extent_count;
	char what[128];

	for (uint64_t i = 0; i < count; i++) {
		const uint8_t *e = idx + i * LF_INDEX_ENTRY_BYTES;
		struct layer_extent *x = &l->extents[i];
		x->block_index = le_get64(e + LFE_BLOCK_INDEX);
		x->block_count = le_get32(e + LFE_BLOCK_COUNT);
		x->kind = e[LFE_KIND];
		x->compressed = e[LFE_COMPRESSED];
		x->offset_bytes = le_get64(e + LFE_OFFSET);
		x->stored_bytes = le_get32(e + LFE_STORED);
		l->checksums[i] = le_get64(e + LFE_CHECKSUM);
		snprintf(what, sizeof what, "extent %llu: ", (unsigned long long)i);
		if (le_get16(e + LFE_RESERVED16) || le_get32(e + LFE_RESERVED32))
			return log_error(-EIO, "open layer %s: corrupt: %sreserved bytes not zero", n, what);
		if (x->block_count == 0)
			return log_error(-EIO, "open layer %s: corrupt: %sempty", n, what);
		if (x->block_index < next_block)
			return log_error(-EIO, "open layer %s: corrupt: %sunsorted or overlapping", n, what);
		if (!ck_range_within(x->block_index, x->block_count, vblocks))
			return log_error(-EIO, "open layer %s: corrupt: %sbeyond the virtual size", n, what);
		next_block = x->block_index + x->block_count;
		if (x->kind == LAYER_EXTENT_ZERO) {
			if (x->compressed || x->offset_bytes || x->stored_bytes || l->checksums[i])
				return log_error(-EIO, "open layer %s: corrupt: %szero extent with data fields", n, what);
			l->info.zero_blocks += x->block_count;
		} else if (x->kind == LAYER_EXTENT_DATA) {
			uint64_t raw = (uint64_t)x->block_count * LAYER_BLOCK_SIZE;
			if (x->block_count > l->chunk_blocks)
				return log_error(-EIO, "open layer %s: corrupt: %schunk larger than chunk_blocks", n, what);
			if (x->compressed > 1)
				return log_error(-EIO, "open layer %s: corrupt: %sbad compression flag", n, what);
			if (x->compressed ? (x->stored_bytes == 0 || x->stored_bytes >= raw) : x->stored_bytes != raw)
				return log_error(-EIO, "open layer %s: corrupt: %sbad stored length", n, what);
			if (x->offset_bytes < l->data_offset ||
			    !ck_range_within(x->offset_bytes - l->data_offset, x->stored_bytes, l->data_length))
				return log_error(-EIO, "open layer %s: corrupt: %schunk outside the data area", n, what);
			l->info.data_blocks += x->block_count;
		} else {
			return log_error(-EIO, "open layer %s: corrupt: %sunknown kind %u", n, what, x->kind);
		}
	}
	return 0;
}

int layer_open_path(const char *path, const char *digest_or_null, bool verify_digest, struct layer **out)
{
	struct layer *l;
	uint8_t *hdr = NULL, *idx = NULL;
	uint64_t size = 0, index_offset = 0, index_length = 0, index_checksum = 0;
	int r;

	*out = NULL;
	if (digest_or_null && sha256_parse_digest(digest_or_null, NULL))
		return log_error(-EINVAL, "open layer %s: bad digest \"%s\"", path, digest_or_null);
	l = calloc(1, sizeof *l);
	if (!l) return -ENOMEM;
	l->fd = -1;
	if (digest_or_null) snprintf(l->info.digest, sizeof l->info.digest, "%s", digest_or_null);
	else hex64_basename(path, l->info.digest);
	snprintf(l->name, sizeof l->name, "%s", l->info.digest[0] ? l->info.digest : path);

	r = vfs_open(path, O_RDONLY, 0);
	if (r < 0) {
		r = log_error(r, "open layer %s: %s", l->name, strerror(-r));
		goto out;
	}
	l->fd = r;
	/* the pin: gc leaves a layer alone while anyone has it open */
	r = ls_hold_fd(l->fd);
	if (r) {
		r = log_error(r, "open layer %s: %s", l->name, r == -ENOENT ? "removed by gc meanwhile" : strerror(-r));
		goto out;
	}
	r = vfs_size(l->fd, &size);
	if (r) {
		r = log_error(r, "open layer %s: size: %s", l->name, strerror(-r));
		goto out;
	}
	if (size < LF_HEADER_BYTES) {
		r = bad(l->name, "file shorter than the header");
		goto out;
	}
	hdr = malloc(LF_HEADER_BYTES);
	if (!hdr) {
		r = -ENOMEM;
		goto out;
	}
	r = vfs_pread_full(l->fd, hdr, LF_HEADER_BYTES, 0);
	if (r) {
		r = log_error(r == -ENODATA ? -EIO : r, "open layer %s: read header: %s", l->name, strerror(-r));
		goto out;
	}
	r = parse_header(l, hdr, size, &index_offset, &index_length, &index_checksum);
	if (r) goto out;
	/* index_length <= file size (checked), so this allocation is bounded by the real file. */
	idx = malloc(index_length ? index_length : 1);
	l->extents = calloc(l->info.extent_count ? l->info.extent_count : 1, sizeof *l->extents);
	l->checksums = calloc(l->info.extent_count ? l->info.extent_count : 1, sizeof *l->checksums);
	if (!idx || !l->extents || !l->checksums) {
		r = log_error(-ENOMEM, "open layer %s: no memory for %llu extents", l->name,
			      (unsigned long long)l->info.extent_count);
		goto out;
	}
	r = vfs_pread_full(l->fd, idx, index_length, index_offset);
	if (r) {
		r = log_error(r == -ENODATA ? -EIO : r, "open layer %s: read index: %s", l->name, strerror(-r));
		goto out;
	}
	if (XXH3_64bits(idx, index_length) != index_checksum) {
		r = bad(l->name, "index checksum mismatch");
		goto out;
	}
	r = parse_index(l, idx);
	if (r) goto out;
	if (verify_digest) {
		uint8_t bin[SHA256_BYTES];
		char got[SHA256_DIGEST_STRLEN];
		r = hash_fd(l->fd, size, bin);
		if (r) {
			r = log_error(r == -ENODATA ? -EIO : r, "open layer %s: hash: %s", l->name, strerror(-r));
			goto out;
		}
		sha256_format_digest(bin, got);
		if (digest_or_null && strcmp(got, digest_or_null)) {
			r = log_error(-EIO, "open layer %s: content hashes to %s (file swapped or corrupt)", l->name, got);
			goto out;
		}
		if (!digest_or_null && l->info.digest[0] && strcmp(got, l->info.digest)) {
			r = log_error(-EIO, "open layer %s: content hashes to %s (file swapped or corrupt)", l->name, got);
			goto out;
		}
		memcpy(l->info.digest, got, sizeof got);
	}
	*out = l;
	l = NULL;
out:
	free(hdr);
	free(idx);
	if (l) layer_close(l);
	return r;
}

int layer_remote_index_range(const void *header, uint64_t file_size, uint64_t *index_offset, uint64_t *index_length)
{
	struct layer *l = calloc(1, sizeof *l);
	uint64_t checksum;
	int r;
	if (!l) return -ENOMEM;
	l->fd = -1;
	snprintf(l->name, sizeof l->name, "(remote)");
	r = file_size < LF_HEADER_BYTES ? bad(l->name, "file shorter than the header")
					: parse_header(l, header, file_size, index_offset, index_length, &checksum);
	layer_close(l);
	return r;
}

int layer_open_remote(const void *header, const void *index, uint64_t file_size, const char *digest_or_null,
		      struct layer **out)
{
	struct layer *l;
	uint64_t index_offset = 0, index_length = 0, index_checksum = 0;
	int r;

	*out = NULL;
	if (digest_or_null && sha256_parse_digest(digest_or_null, NULL))
		return log_error(-EINVAL, "open remote layer: bad digest \"%s\"", digest_or_null);
	l = calloc(1, sizeof *l);
	if (!l) return -ENOMEM;
	l->fd = -1;
	if (digest_or_null) snprintf(l->info.digest, sizeof l->info.digest, "%s", digest_or_null);
	snprintf(l->name, sizeof l->name, "%s", digest_or_null ? digest_or_null : "(remote)");
	if (file_size < LF_HEADER_BYTES) {
		r = bad(l->name, "file shorter than the header");
		goto out;
	}
	r = parse_header(l, header, file_size, &index_offset, &index_length, &index_checksum);
	if (r) goto out;
	if (XXH3_64bits(index, index_length) != index_checksum) {
		r = bad(l->name, "index checksum mismatch");
		goto out;
	}
	l->extents = calloc(l->info.extent_count ? l->info.extent_count : 1, sizeof *l->extents);
	l->checksums = calloc(l->info.extent_count ? l->info.extent_count : 1, sizeof *l->checksums);
	if (!l->extents || !l->checksums) {
		r = log_error(-ENOMEM, "open layer %s: no memory", l->name);
		goto out;
	}
	r = parse_index(l, index);
	if (r) goto out;
	*out = l;
	l = NULL;
out:
	if (l) layer_close(l);
	return r;
}

int layer_open(struct layer_store *store, const char *digest, bool verify_digest, struct layer **out)
{
	char path[OCIBLK_PATH_MAX];
	int r;
	*out = NULL;
	r = layer_store_layer_path(store, digest, path, sizeof path);
	if (r) return r;
	return layer_open_path(path, digest, verify_digest, out);
}

void layer_close(struct layer *l)
{
	if (!l) return;
	if (l->fd >= 0) vfs_close(l->fd);
	free(l->extents);
	free(l->checksums);
	free(l);
}

const struct layer_info *layer_get_info(const struct layer *l) { return &l->info; }

const struct layer_extent *layer_get_extents(const struct layer *l, uint64_t *count)
{
	*count = l->info.extent_count;
	return l->extents;
}

int layer_get_fd(const struct layer *l) { return l->fd; }

int layer_decode_extent(const struct layer *l, uint64_t i, const void *stored, void *out)
{
	const struct layer_extent *x;
	size_t raw, got;
	struct decode_tls *t;

	if (i >= l->info.extent_count || l->extents[i].kind != LAYER_EXTENT_DATA)
		return log_error(-EINVAL, "read layer %s: extent %llu is not a data extent", l->name, (unsigned long long)i);
	x = &l->extents[i];
	raw = (size_t)x->block_count * LAYER_BLOCK_SIZE;
	if (XXH3_64bits(stored, x->stored_bytes) != l->checksums[i])
		return log_error(-EIO, "read layer %s: extent %llu (blocks %llu+%u at byte %llu): checksum mismatch",
				 l->name, (unsigned long long)i, (unsigned long long)x->block_index, x->block_count,
				 (unsigned long long)x->offset_bytes);
	if (!x->compressed) {
		if (stored != out) memcpy(out, stored, raw);
		return 0;
	}
	t = tls_get();
	if (!t) return log_error(-ENOMEM, "read layer %s: no memory for a zstd context", l->name);
	got = ZSTD_decompressDCtx(t->dctx, out, raw, stored, x->stored_bytes);
	if (ZSTD_isError(got) || got != raw) {
		memset(out, 0, raw); /* never leave half-decoded data behind */
		return log_error(-EIO, "read layer %s: extent %llu (blocks %llu+%u): decompression failed: %s",
				 l->name, (unsigned long long)i, (unsigned long long)x->block_index, x->block_count,
				 ZSTD_isError(got) ? ZSTD_getErrorName(got) : "wrong length");
	}
	return 0;
}

int layer_read_extent(struct layer *l, uint64_t i, void *out)
{
	const struct layer_extent *x;
	struct decode_tls *t;
	void *buf;
	int r;

	if (i >= l->info.extent_count || l->extents[i].kind != LAYER_EXTENT_DATA)
		return log_error(-EINVAL, "read layer %s: extent %llu is not a data extent", l->name, (unsigned long long)i);
	x = &l->extents[i];
	if (l->fd < 0) return log_error(-EBADF, "read layer %s: no file (opened from remote buffers)", l->name);
	buf = out;
	if (x->compressed) {
		t = tls_get();
		if (!t) return -ENOMEM;
		if (!t->scratch) t->scratch = malloc((size_t)LAYER_CHUNK_BLOCKS_MAX * LAYER_BLOCK_SIZE);
		if (!t->scratch) return log_error(-ENOMEM, "read layer %s: no memory", l->name);
		buf = t->scratch;
	}
	r = vfs_pread_full(l->fd, buf, x->stored_bytes, x->offset_bytes);
	if (r) {
		if (r == -ENODATA) r = -EIO;
		return log_error(r, "read layer %s: extent %llu: %s", l->name, (unsigned long long)i, strerror(-r));
	}
	r = layer_decode_extent(l, i, buf, out);
	if (r && !x->compressed) memset(out, 0, (size_t)x->block_count * LAYER_BLOCK_SIZE);
	return r;
}

/* ---------------------------------------------------------------- writer ------------------ */

struct layer_writer {
	struct layer_store *store;
	char tmp_path[OCIBLK_PATH_MAX];
	int fd;
	struct layer_writer_options opts;
	uint8_t parent_bin[SHA256_BYTES];
	bool has_parent;
	uint64_t virtual_blocks;
	uint64_t next_block;        /* every later call must start at or after this */
	uint64_t data_end;          /* file offset where the next chunk goes */
	/* the chunk being gathered */
	uint8_t *chunk;
	uint64_t chunk_first;
	uint32_t chunk_count;
	/* a pending run of zero blocks */
	uint64_t zero_first, zero_count;
	/* the index, encoded */
	uint8_t *index;
	uint64_t extent_count, index_cap;
	ZSTD_CCtx *cctx;
	uint8_t *cbuf;
	size_t cbuf_len;
	int error;                  /* sticky: after a failure only abort/commit (which fails) */
};

static int writer_push_entry(struct layer_writer *w, const uint8_t e[LF_INDEX_ENTRY_BYTES])
{
	if (w->extent_count >= LAYER_EXTENTS_MAX)
		return log_error(-E2BIG, "write layer: more than %u extents", LAYER_EXTENTS_MAX);
	if (w->extent_count == w->index_cap) {
		uint64_t cap = w->index_cap ? w->index_cap * 2 : 256;
		uint8_t *n = realloc(w->index, cap * LF_INDEX_ENTRY_BYTES);
		if (!n) return log_error(-ENOMEM, "write layer: no memory for the index");
		w->index = n;
		w->index_cap = cap;
	}
	memcpy(w->index + w->extent_count * LF_INDEX_ENTRY_BYTES, e, LF_INDEX_ENTRY_BYTES);
	w->extent_count++;
	return 0;
}

static int writer_flush_zero(struct layer_writer *w)
{
	while (w->zero_count) {
		uint8_t e[LF_INDEX_ENTRY_BYTES] = { 0 };
		uint32_t n = w->zero_count > UINT32_MAX ? UINT32_MAX : (uint32_t)w->zero_count;
		int r;
		le_put64(e + LFE_BLOCK_INDEX, w->zero_first);
		le_put32(e + LFE_BLOCK_COUNT, n);
		e[LFE_KIND] = LAYER_EXTENT_ZERO;
		r = writer_push_entry(w, e);
		if (r) return r;
		w->zero_first += n;
		w->zero_count -= n;
	}
	return 0;
}

static int writer_flush_chunk(struct layer_writer *w)
{
	uint8_t e[LF_INDEX_ENTRY_BYTES] = { 0 };
	size_t raw = (size_t)w->chunk_count * LAYER_BLOCK_SIZE, stored = raw;
	const uint8_t *data = w->chunk;
	int compressed = 0, r;

	if (!w->chunk_count) return 0;
	if (w->opts.zstd_level > 0) {
		size_t c = ZSTD_compressCCtx(w->cctx, w->cbuf, w->cbuf_len, w->chunk, raw, w->opts.zstd_level);
		if (ZSTD_isError(c)) return log_error(-EIO, "write layer: zstd: %s", ZSTD_getErrorName(c));
		if (c < raw) {
			data = w->cbuf;
			stored = c;
			compressed = 1;
		}
	}
	r = vfs_pwrite_full(w->fd, data, stored, w->data_end);
	if (r) return log_error(r, "write layer %s: %s", w->tmp_path, strerror(-r));
	le_put64(e + LFE_BLOCK_INDEX, w->chunk_first);
	le_put32(e + LFE_BLOCK_COUNT, w->chunk_count);
	e[LFE_KIND] = LAYER_EXTENT_DATA;
	e[LFE_COMPRESSED] = (uint8_t)compressed;
	le_put64(e + LFE_OFFSET, w->data_end);
	le_put32(e + LFE_STORED, (uint32_t)stored);
	le_put64(e + LFE_CHECKSUM, XXH3_64bits(data, stored));
	r = writer_push_entry(w, e);
	if (r) return r;
	w->data_end += stored;
	w->chunk_count = 0;
	return 0;
}

static int block_is_zero(const uint8_t *p)
{
	static const uint8_t zero[LAYER_BLOCK_SIZE];
	return !memcmp(p, zero, LAYER_BLOCK_SIZE);
}

static int writer_check_range(struct layer_writer *w, uint64_t block_index, uint64_t block_count)
{
	if (w->error) return w->error;
	if (block_count == 0) return log_error(-EINVAL, "write layer: empty range at block %llu", (unsigned long long)block_index);
	if (block_index < w->next_block)
		return log_error(-EINVAL, "write layer: block %llu out of order (next allowed %llu)",
				 (unsigned long long)block_index, (unsigned long long)w->next_block);
	if (!ck_range_within(block_index, block_count, w->virtual_blocks))
		return log_error(-EINVAL, "write layer: blocks %llu+%llu beyond the virtual size",
				 (unsigned long long)block_index, (unsigned long long)block_count);
	return 0;
}

static int writer_zero_block(struct layer_writer *w, uint64_t b, uint64_t n)
{
	int r;
	if (w->chunk_count) {
		r = writer_flush_chunk(w);
		if (r) return r;
	}
	if (w->zero_count && w->zero_first + w->zero_count == b) {
		w->zero_count += n;
		return 0;
	}
	r = writer_flush_zero(w);
	if (r) return r;
	w->zero_first = b;
	w->zero_count = n;
	return 0;
}

static int writer_data_block(struct layer_writer *w, uint64_t b, const uint8_t *p)
{
	int r;
	if (w->zero_count) {
		r = writer_flush_zero(w);
		if (r) return r;
	}
	if (w->chunk_count && (w->chunk_first + w->chunk_count != b || b % w->opts.chunk_blocks == 0)) {
		r = writer_flush_chunk(w);
		if (r) return r;
	}
	if (!w->chunk_count) w->chunk_first = b;
	memcpy(w->chunk + (size_t)w->chunk_count * LAYER_BLOCK_SIZE, p, LAYER_BLOCK_SIZE);
	w->chunk_count++;
	if (w->chunk_count == w->opts.chunk_blocks || (b + 1) % w->opts.chunk_blocks == 0)
		return writer_flush_chunk(w);
	return 0;
}

int layer_writer_add_data(struct layer_writer *w, uint64_t block_index, const void *data, uint64_t block_count)
{
	const uint8_t *p = data;
	int r = writer_check_range(w, block_index, block_count);
	if (r) return r;
	for (uint64_t i = 0; i < block_count; i++, p += LAYER_BLOCK_SIZE) {
		if (w->opts.detect_zero_blocks && block_is_zero(p)) r = writer_zero_block(w, block_index + i, 1);
		else r = writer_data_block(w, block_index + i, p);
		if (r) return w->error = r;
	}
	w->next_block = block_index + block_count;
	return 0;
}

int layer_writer_add_zero(struct layer_writer *w, uint64_t block_index, uint64_t block_count)
{
	int r = writer_check_range(w, block_index, block_count);
	if (r) return r;
	r = writer_zero_block(w, block_index, block_count);
	if (r) return w->error = r;
	w->next_block = block_index + block_count;
	return 0;
}

static void writer_free(struct layer_writer *w)
{
	if (w->fd >= 0) vfs_close(w->fd);
	ZSTD_freeCCtx(w->cctx);
	free(w->cbuf);
	free(w->chunk);
	free(w->index);
	free(w);
}

int layer_writer_create(struct layer_store *store, const struct layer_writer_options *opts, struct layer_writer **out)
{
	struct layer_writer *w;
	int r;

	*out = NULL;
	if (!opts->virtual_size_bytes || opts->virtual_size_bytes % LAYER_BLOCK_SIZE ||
	    opts->virtual_size_bytes > LAYER_VIRTUAL_SIZE_MAX)
		return log_error(-EINVAL, "create layer: bad virtual size %llu (a non-zero multiple of %u, at most %llu)",
				 (unsigned long long)opts->virtual_size_bytes, LAYER_BLOCK_SIZE,
				 (unsigned long long)LAYER_VIRTUAL_SIZE_MAX);
	if (opts->chunk_blocks > LAYER_CHUNK_BLOCKS_MAX)
		return log_error(-EINVAL, "create layer: chunk_blocks %u above %u", opts->chunk_blocks, LAYER_CHUNK_BLOCKS_MAX);
	if (opts->zstd_level < 0 || opts->zstd_level > ZSTD_maxCLevel())
		return log_error(-EINVAL, "create layer: bad zstd level %d", opts->zstd_level);
	w = calloc(1, sizeof *w);
	if (!w) return -ENOMEM;
	w->fd = -1;
	w->store = store;
	w->opts = *opts;
	w->opts.parent_digest = NULL;
	if (!w->opts.chunk_blocks) w->opts.chunk_blocks = LAYER_CHUNK_BLOCKS_DEFAULT;
	if (opts->parent_digest && opts->parent_digest[0]) {
		if (sha256_parse_digest(opts->parent_digest, w->parent_bin)) {
			writer_free(w);
			return log_error(-EINVAL, "create layer: bad parent digest \"%s\"", opts->parent_digest);
		}
		w->has_parent = true;
	}
	w->virtual_blocks = opts->virtual_size_bytes / LAYER_BLOCK_SIZE;
	w->data_end = LF_HEADER_BYTES;
	w->chunk = malloc((size_t)w->opts.chunk_blocks * LAYER_BLOCK_SIZE);
	if (!w->chunk) goto nomem;
	if (w->opts.zstd_level > 0) {
		w->cctx = ZSTD_createCCtx();
		w->cbuf_len = ZSTD_compressBound((size_t)w->opts.chunk_blocks * LAYER_BLOCK_SIZE);
		w->cbuf = malloc(w->cbuf_len);
		if (!w->cctx || !w->cbuf) goto nomem;
	}
	/* The temp is held (layer_store_tmp_hold's flock) until it is published or discarded, so gc
	 * leaves it alone however long the layer takes to write; only a gc with age 0 could remove
	 * it in the instant before the hold, and then a fresh one is made. */
	for (int attempt = 0;; attempt++) {
		r = layer_store_tmp_path(store, "layer", w->tmp_path, sizeof w->tmp_path);
		if (r) {
			writer_free(w);
			return r;
		}
		r = vfs_open(w->tmp_path, O_RDWR | O_CREAT | O_EXCL, 0644);
		if (r < 0) {
			writer_free(w);
			return log_error(r, "create layer %s: %s", w->tmp_path, strerror(-r));
		}
		w->fd = r;
		r = ls_hold_fd(w->fd);
		if (!r) break;
		vfs_close(w->fd);
		w->fd = -1;
		if (r != -ENOENT || attempt == 3) {
			writer_free(w);
			return log_error(r, "create layer %s: hold: %s", w->tmp_path, strerror(-r));
		}
	}
	*out = w;
	return 0;
nomem:
	writer_free(w);
	return log_error(-ENOMEM, "create layer: no memory");
}

void layer_writer_abort(struct layer_writer *w)
{
	if (!w) return;
	if (w->fd >= 0) {
		vfs_close(w->fd);
		w->fd = -1;
		vfs_unlink(w->tmp_path);
	}
	writer_free(w);
}

/* Under the store lock (so no gc runs and no other writer publishes the same digest meanwhile):
 * moves the finished, held temp to its digest name (or discards it when the layer exists), and
 * opens the result when asked while the temp's hold still pins the inode. */
static int writer_publish_locked(struct layer_writer *w, const char *digest, const char *final_path,
				 struct layer **opened)
{
	char dir[OCIBLK_PATH_MAX];
	struct stat st;
	int r;
	if (stat(final_path, &st) == 0) {
		/* Identical content already published: keep the existing file. */
		vfs_unlink(w->tmp_path);
		return opened ? layer_open(w->store, digest, false, opened) : 0;
	}
	r = vfs_rename(w->tmp_path, final_path);
	if (r) {
		vfs_unlink(w->tmp_path);
		return log_error(r, "publish layer %s: %s", digest, strerror(-r));
	}
	r = ls_path(w->store, dir, sizeof dir, "layers");
	if (!r) r = vfs_fsync_dir(dir);
	if (r) return log_error(r, "publish layer %s: fsync dir: %s", digest, strerror(-r));
	return opened ? layer_open(w->store, digest, false, opened) : 0;
}

int layer_writer_commit(struct layer_writer *w, char digest_out[SHA256_DIGEST_STRLEN])
{
	return layer_writer_commit_open(w, digest_out, NULL);
}

int layer_writer_commit_open(struct layer_writer *w, char digest_out[SHA256_DIGEST_STRLEN], struct layer **opened)
{
	uint8_t *hdr = NULL, bin[SHA256_BYTES];
	char final_path[OCIBLK_PATH_MAX];
	uint64_t index_len, file_size;
	int r = w->error;

	if (opened) *opened = NULL;

	if (r) goto out;
	r = writer_flush_chunk(w);
	if (!r) r = writer_flush_zero(w);
	if (r) goto out;
	index_len = w->extent_count * LF_INDEX_ENTRY_BYTES;
	if (index_len) {
		r = vfs_pwrite_full(w->fd, w->index, index_len, w->data_end);
		if (r) {
			r = log_error(r, "write layer %s: index: %s", w->tmp_path, strerror(-r));
			goto out;
		}
	}
	file_size = w->data_end + index_len;
	hdr = calloc(1, LF_HEADER_BYTES);
	if (!hdr) {
		r = -ENOMEM;
		goto out;
	}
	memcpy(hdr + LFH_MAGIC, LF_MAGIC, 8);
	le_put32(hdr + LFH_VERSION, LF_VERSION);
	le_put32(hdr + LFH_HEADER_BYTES, LF_HEADER_BYTES);
	le_put32(hdr + LFH_BLOCK_SIZE, LAYER_BLOCK_SIZE);
	le_put32(hdr + LFH_CHUNK_BLOCKS, w->opts.chunk_blocks);
	le_put64(hdr + LFH_VIRTUAL_SIZE, w->opts.virtual_size_bytes);
	le_put64(hdr + LFH_FLAGS, w->has_parent ? LF_FLAG_HAS_PARENT : 0);
	le_put32(hdr + LFH_COMPRESSION, w->opts.zstd_level > 0 ? LF_COMPRESSION_ZSTD : LF_COMPRESSION_NONE);
	le_put32(hdr + LFH_CHECKSUM_TYPE, LF_CHECKSUM_XXH3_64);
	le_put64(hdr + LFH_EXTENT_COUNT, w->extent_count);
	le_put64(hdr + LFH_INDEX_OFFSET, w->data_end);
	le_put64(hdr + LFH_INDEX_LENGTH, index_len);
	le_put64(hdr + LFH_INDEX_CHECKSUM, XXH3_64bits(w->index, index_len));
	le_put64(hdr + LFH_DATA_OFFSET, LF_HEADER_BYTES);
	le_put64(hdr + LFH_DATA_LENGTH, w->data_end - LF_HEADER_BYTES);
	if (w->has_parent) memcpy(hdr + LFH_PARENT, w->parent_bin, SHA256_BYTES);
	le_put64(hdr + LFH_HEADER_CHECKSUM, XXH3_64bits(hdr, LFH_HEADER_CHECKSUM));
	r = vfs_pwrite_full(w->fd, hdr, LF_HEADER_BYTES, 0);
	if (!r) r = vfs_fsync(w->fd);
	if (r) {
		r = log_error(r, "write layer %s: %s", w->tmp_path, strerror(-r));
		goto out;
	}
	/* Hash what is on disk (through the vfs), not what we meant to write. */
	r = hash_fd(w->fd, file_size, bin);
	if (r) {
		r = log_error(r, "hash layer %s: %s", w->tmp_path, strerror(-r));
		goto out;
	}
	sha256_format_digest(bin, digest_out);
	r = layer_store_layer_path(w->store, digest_out, final_path, sizeof final_path);
	if (r) goto out;
	r = layer_store_lock(w->store);
	if (r) goto out;
	r = writer_publish_locked(w, digest_out, final_path, opened);
	layer_store_unlock(w->store);
	vfs_close(w->fd); /* the temp is published or gone: nothing to remove below */
	w->fd = -1;
out:
	if (r && w->fd >= 0) {
		vfs_close(w->fd);
		w->fd = -1;
		vfs_unlink(w->tmp_path);
	}
	free(hdr);
	writer_free(w);
	return r;
}
