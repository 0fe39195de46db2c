/* Corruption tests for layer files: a flipped bit in every region (header, index, each chunk),
 * truncated and extended files, and a layer file swapped for another.  The rule checked
 * everywhere: opening fails with -EIO, or reading gives -EIO, or reading gives exactly the
 * original data; never wrong data, never a crash (ASan runs this too). */
#include "layer-store/layer_store.h"
#include "common/log.h"
#include "common/vfs.h"
#include "tests/lib/tap.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BS LAYER_BLOCK_SIZE
#define BLOCKS 200

static uint8_t model[BLOCKS][BS];
static uint8_t state[BLOCKS]; /* 0 absent, 1 data, 2 zero */
static char tmp_file[600];

static int read_file(const char *path, uint8_t **buf, size_t *len)
{
	char *b;
	int r = vfs_read_file(path, 64u << 20, &b, len);
	*buf = (uint8_t *)b;
	return r;
}

static void write_file(const uint8_t *buf, size_t len)
{
	FILE *f = fopen(tmp_file, "wb");
	if (!f || (len && fwrite(buf, 1, len, f) != len)) abort();
	fclose(f);
}

/* Flips bits of one byte of the victim file in place (the file otherwise holds orig); flip again
 * with the same mask to restore.  Much cheaper than rewriting the whole file per case. */
static void flip_byte(size_t pos, uint8_t mask)
{
	int fd = open(tmp_file, O_RDWR);
	uint8_t b;
	if (fd < 0 || pread(fd, &b, 1, (off_t)pos) != 1) abort();
	b ^= mask;
	if (pwrite(fd, &b, 1, (off_t)pos) != 1) abort();
	close(fd);
}

/* 0: open failed with -EIO; 1: opened and every read gave -EIO or the right data;
 * -1: a rule was broken (wrong error, or wrong data). */
static int check_file(const char *digest, int *reads_failed)
{
	struct layer *l = NULL;
	uint64_t n;
	const struct layer_extent *x;
	static uint8_t buf[LAYER_CHUNK_BLOCKS_MAX * BS];
	int r = layer_open_path(tmp_file, digest, digest != NULL, &l);
	if (r) return r == -EIO ? 0 : -1;
	x = layer_get_extents(l, &n);
	for (uint64_t i = 0; i < n; i++) {
		if (x[i].kind == LAYER_EXTENT_ZERO) {
			for (uint32_t k = 0; k < x[i].block_count; k++)
				if (state[x[i].block_index + k] == 0) goto wrong; /* the index would hide lower data */
			continue;
		}
		r = layer_read_extent(l, i, buf);
		if (r == -EIO) {
			(*reads_failed)++;
			continue;
		}
		if (r) goto wrong;
		for (uint32_t k = 0; k < x[i].block_count; k++)
			if (state[x[i].block_index + k] != 1 || memcmp(buf + (size_t)k * BS, model[x[i].block_index + k], BS)) goto wrong;
	}
	layer_close(l);
	return 1;
wrong:
	layer_close(l);
	return -1;
}

int main(void)
{
	uint64_t rng = tap_seed();
	struct layer_store *s;
	struct layer_writer *w;
	struct layer *l;
	char root[512], path[4096], digest[SHA256_DIGEST_STRLEN], other[SHA256_DIGEST_STRLEN];
	uint8_t *orig;
	size_t len;
	const struct layer_extent *x;
	uint64_t n;

	snprintf(root, sizeof root, "%s/store", tap_tmpdir());
	snprintf(tmp_file, sizeof tmp_file, "%s/victim", tap_tmpdir());
	if (layer_store_open(root, LAYER_STORE_CREATE, &s)) return 1;

	/* A layer with compressed chunks, raw chunks, zero extents and holes. */
	for (int b = 0; b < BLOCKS; b++) {
		int k = (int)(tap_rand(&rng) % 8);
		if (k == 0) continue;
		if (k == 1) {
			state[b] = 2;
			continue;
		}
		state[b] = 1;
		for (unsigned i = 0; i < BS; i++)
			model[b][i] = k < 5 ? (uint8_t)tap_rand(&rng) : (uint8_t)("xyz"[(i / 100 + (unsigned)b) % 3]);
	}
	struct layer_writer_options o = { .virtual_size_bytes = BLOCKS * BS, .zstd_level = 3, .chunk_blocks = 8 };
	layer_writer_create(s, &o, &w);
	for (int b = 0; b < BLOCKS; b++) {
		if (state[b] == 1) layer_writer_add_data(w, (uint64_t)b, model[b], 1);
		else if (state[b] == 2) layer_writer_add_zero(w, (uint64_t)b, 1);
	}
	TAP_IS(layer_writer_commit(w, digest), 0, "victim layer written");
	layer_store_layer_path(s, digest, path, sizeof path);
	TAP_IS(read_file(path, &orig, &len), 0, "read the layer file");
	TAP_IS(layer_open(s, digest, true, &l), 0, "victim opens");
	x = layer_get_extents(l, &n);
	uint64_t index_off = 4096, chunks = 0, compressed = 0;
	for (uint64_t i = 0; i < n; i++)
		if (x[i].kind == LAYER_EXTENT_DATA) {
			chunks++;
			compressed += x[i].compressed;
			if (x[i].offset_bytes + x[i].stored_bytes > index_off) index_off = x[i].offset_bytes + x[i].stored_bytes;
		}
	tap_diag("file %zu bytes, %llu extents, %llu chunks (%llu compressed), index at %llu", len,
		 (unsigned long long)n, (unsigned long long)chunks, (unsigned long long)compressed, (unsigned long long)index_off);
	TAP_OK(compressed > 0 && compressed < chunks, "victim has both compressed and raw chunks");

	write_file(orig, len);
	int rf = 0;
	TAP_IS(check_file(NULL, &rf), 1, "unmodified copy reads back exactly");
	TAP_IS(rf, 0, "unmodified copy: no read errors");

	log_set_quiet(1);
	uint8_t *buf = malloc(len);
	/* Header: every byte of the defined fields and of the checksum, a sample of the reserved area. */
	int broken = 0, opened = 0, tried = 0;
	for (size_t pos = 0; pos < 4096; pos += (pos < 128 || pos >= 4088) ? 1 : 37) {
		uint8_t mask = (uint8_t)(1u << (tap_rand(&rng) % 8));
		flip_byte(pos, mask);
		int c = check_file(NULL, &rf);
		flip_byte(pos, mask);
		tried++;
		if (c < 0) broken++;
		if (c == 1) opened++;
	}
	TAP_IS(broken, 0, "header: %d flipped bits, none gives wrong data", tried);
	TAP_IS(opened, 0, "header: every flipped bit is caught at open");

	/* Index: every byte. */
	broken = opened = tried = 0;
	for (size_t pos = index_off; pos < len; pos++) {
		uint8_t mask = (uint8_t)(1u << (tap_rand(&rng) % 8));
		flip_byte(pos, mask);
		int c = check_file(NULL, &rf);
		flip_byte(pos, mask);
		tried++;
		if (c < 0) broken++;
		if (c == 1) opened++;
	}
	TAP_IS(broken, 0, "index: %d flipped bits, none gives wrong data", tried);
	TAP_IS(opened, 0, "index: every flipped bit is caught at open (index checksum)");

	/* Each chunk: a few flipped bits each; the layer opens, that chunk reads -EIO, the others
	 * read back right. */
	int chunk_ok = 1, eio_seen = 0;
	unsigned long errs_before = log_error_count();
	for (uint64_t i = 0; i < n; i++) {
		if (x[i].kind != LAYER_EXTENT_DATA) continue;
		for (int t = 0; t < 3; t++) {
			uint64_t pos = x[i].offset_bytes + tap_rand(&rng) % x[i].stored_bytes;
			uint8_t mask = (uint8_t)(1u << (tap_rand(&rng) % 8));
			flip_byte(pos, mask);
			rf = 0;
			int c = check_file(NULL, &rf);
			flip_byte(pos, mask);
			if (c != 1 || rf != 1) chunk_ok = 0;
			eio_seen += rf;
		}
	}
	TAP_OK(chunk_ok, "chunks: every flipped bit gives -EIO on exactly that chunk, other chunks read right");
	TAP_OK(eio_seen > 0 && log_error_count() - errs_before >= (unsigned long)eio_seen, "chunks: each -EIO was logged");
	/* With verify_digest, any flip anywhere fails the open. */
	broken = 0;
	for (int t = 0; t < 50; t++) {
		size_t pos = tap_rand(&rng) % len;
		uint8_t mask = (uint8_t)(1u << (tap_rand(&rng) % 8));
		flip_byte(pos, mask);
		if (check_file(digest, &rf) != 0) broken++;
		flip_byte(pos, mask);
	}
	TAP_IS(broken, 0, "verify_digest: 50 random flips all fail the open with -EIO");

	/* The log line names the layer and the extent. */
	{
		char logp[600], *text = NULL;
		size_t tl;
		int saved = dup(2);
		uint64_t i = 0;
		while (x[i].kind != LAYER_EXTENT_DATA) i++;
		snprintf(logp, sizeof logp, "%s/log", tap_tmpdir());
		memcpy(buf, orig, len);
		buf[x[i].offset_bytes] ^= 1;
		write_file(buf, len);
		struct layer *l2 = NULL;
		layer_open_path(tmp_file, digest, false, &l2);
		log_set_quiet(0);
		fflush(stderr);
		int fd = open(logp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		dup2(fd, 2);
		close(fd);
		static uint8_t out[LAYER_CHUNK_BLOCKS_MAX * BS];
		int r = l2 ? layer_read_extent(l2, i, out) : -1;
		fflush(stderr);
		dup2(saved, 2);
		close(saved);
		log_set_quiet(1);
		char want[64];
		snprintf(want, sizeof want, "extent %llu", (unsigned long long)i);
		vfs_read_file(logp, 1 << 16, &text, &tl);
		TAP_OK(r == -EIO && text && strstr(text, digest) && strstr(text, want), "log line names the layer and the extent: %s",
		       text ? text : "(none)");
		free(text);
		layer_close(l2);
	}

	/* decode_extent on a corrupted buffer in memory (the io_uring path). */
	{
		static uint8_t stored[LAYER_CHUNK_BLOCKS_MAX * BS], out[LAYER_CHUNK_BLOCKS_MAX * BS];
		int ok = 1;
		for (uint64_t i = 0; i < n; i++) {
			if (x[i].kind != LAYER_EXTENT_DATA) continue;
			memcpy(stored, orig + x[i].offset_bytes, x[i].stored_bytes);
			if (layer_decode_extent(l, i, stored, out) != 0) ok = 0;
			stored[tap_rand(&rng) % x[i].stored_bytes] ^= 0x10;
			if (layer_decode_extent(l, i, stored, out) != -EIO) ok = 0;
		}
		TAP_OK(ok, "decode_extent: clean buffers decode, flipped buffers are -EIO");
		uint64_t zi = 0;
		while (zi < n && x[zi].kind != LAYER_EXTENT_ZERO) zi++;
		TAP_IS(layer_decode_extent(l, zi, stored, out), -EINVAL, "decode_extent of a zero extent is -EINVAL");
		TAP_IS(layer_decode_extent(l, n, stored, out), -EINVAL, "decode_extent past the index is -EINVAL");
	}

	/* Truncated at many lengths, and extended: never opens. */
	broken = tried = 0;
	/* Every length near the ends and the header boundary, a stride elsewhere; the file is cut
	 * shorter and shorter (truncate only), longest first. */
	size_t *cuts = malloc(len * sizeof *cuts), ncuts = 0;
	for (size_t t = 0; t < len; t += (t < 300 || (t >= 4000 && t < 4200) || t + 300 > len) ? 1 : 97) cuts[ncuts++] = t;
	write_file(orig, len);
	while (ncuts) {
		if (truncate(tmp_file, (off_t)cuts[--ncuts])) abort();
		tried++;
		if (check_file(NULL, &rf) != 0) broken++;
	}
	free(cuts);
	TAP_IS(broken, 0, "truncated: %d lengths, none opens", tried);
	memcpy(buf, orig, len);
	{
		uint8_t *big = malloc(len + 1);
		memcpy(big, orig, len);
		big[len] = 0;
		write_file(big, len + 1);
		TAP_IS(check_file(NULL, &rf), 0, "a trailing byte is rejected");
		free(big);
	}

	/* Swapped: another valid layer's bytes under this layer's name. */
	o.zstd_level = 0;
	layer_writer_create(s, &o, &w);
	layer_writer_add_data(w, 3, model[3], 1);
	layer_writer_commit(w, other);
	{
		char opath[4096];
		uint8_t *obuf;
		size_t olen;
		layer_store_layer_path(s, other, opath, sizeof opath);
		read_file(opath, &obuf, &olen);
		FILE *f = fopen(path, "wb");
		fwrite(obuf, 1, olen, f);
		fclose(f);
		free(obuf);
	}
	struct layer *sw = NULL;
	TAP_IS(layer_open(s, digest, true, &sw), -EIO, "swapped file: open with verify_digest is -EIO");
	struct layer_store_fsck_report rep;
	TAP_IS(layer_store_fsck(s, &rep), -EUCLEAN, "swapped file: fsck reports it");
	TAP_IS(rep.errors, 1, "swapped file: exactly one error");
	TAP_IS(rep.layers_checked, 2, "fsck checked both layers");
	log_set_quiet(0);

	layer_close(l);
	free(buf);
	free(orig);
	layer_store_close(s);
	return tap_done();
}
