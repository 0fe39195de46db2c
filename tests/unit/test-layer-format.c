/* Unit tests for the layer file format: write layers through layer_writer, read them back
 * through layer_open/layer_read_extent/layer_decode_extent and compare block by block with an
 * in-memory model (random data, zero detection, compression on and off, many extents), plus the
 * limits the writer and the parser enforce. */
#include "layer-store/layer_store.h"
#include "common/log.h"
#include "common/vfs.h"
#include "tests/lib/tap.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BS LAYER_BLOCK_SIZE

/* Model: state[b] 0 = absent, 1 = data (bytes in model), 2 = zero. */
struct model {
	uint64_t blocks;
	uint8_t *state;
	uint8_t *data;
};

static void model_init(struct model *m, uint64_t blocks)
{
	m->blocks = blocks;
	m->state = calloc(blocks, 1);
	m->data = calloc(blocks, BS);
}

static void model_free(struct model *m)
{
	free(m->state);
	free(m->data);
}

static void fill_block(uint8_t *p, uint64_t *rng, int kind)
{
	if (kind == 0) { /* random, incompressible */
		for (unsigned i = 0; i < BS; i += 8) {
			uint64_t v = tap_rand(rng);
			memcpy(p + i, &v, 8);
		}
	} else if (kind == 1) { /* compressible */
		uint64_t v = tap_rand(rng);
		for (unsigned i = 0; i < BS; i++) p[i] = (uint8_t)("abcdefgh"[(i / 64 + v) % 8]);
	} else { /* all zero */
		memset(p, 0, BS);
	}
}

/* Writes the model as a layer, feeding runs of random lengths; returns the commit result. */
static int write_model(struct layer_store *s, struct model *m, const struct layer_writer_options *o, uint64_t *rng,
		       char digest[SHA256_DIGEST_STRLEN])
{
	struct layer_writer *w;
	int r = layer_writer_create(s, o, &w);
	if (r) return r;
	for (uint64_t b = 0; b < m->blocks;) {
		uint64_t n = 1;
		if (!m->state[b]) {
			b++;
			continue;
		}
		while (b + n < m->blocks && m->state[b + n] == m->state[b] && n < 1 + tap_rand(rng) % 40) n++;
		if (m->state[b] == 1) r = layer_writer_add_data(w, b, m->data + b * BS, n);
		else r = layer_writer_add_zero(w, b, n);
		if (r) {
			layer_writer_abort(w);
			return r;
		}
		b += n;
	}
	return layer_writer_commit(w, digest);
}

/* Reads every extent back and compares with the model; returns the number of mismatching blocks. */
static uint64_t compare_layer(struct layer *l, const struct model *m, int use_decode, bool detect_zero)
{
	uint64_t n, bad = 0, covered = 0;
	const struct layer_extent *x = layer_get_extents(l, &n);
	uint8_t *buf = malloc((size_t)LAYER_CHUNK_BLOCKS_MAX * BS), *stored = malloc((size_t)LAYER_CHUNK_BLOCKS_MAX * BS);
	uint8_t *seen = calloc(m->blocks, 1);
	static const uint8_t zero[BS];
	for (uint64_t i = 0; i < n; i++) {
		if (x[i].kind == LAYER_EXTENT_DATA) {
			int r;
			if (use_decode) {
				r = pread(layer_get_fd(l), stored, x[i].stored_bytes, (off_t)x[i].offset_bytes) == (ssize_t)x[i].stored_bytes ? 0 : -EIO;
				if (!r) r = layer_decode_extent(l, i, stored, buf);
			} else {
				r = layer_read_extent(l, i, buf);
			}
			if (r) {
				bad += x[i].block_count;
				continue;
			}
			for (uint32_t k = 0; k < x[i].block_count; k++) {
				uint64_t b = x[i].block_index + k;
				seen[b] = 1;
				covered++;
				if (m->state[b] != 1 || memcmp(buf + (size_t)k * BS, m->data + b * BS, BS)) bad++;
			}
		} else {
			for (uint32_t k = 0; k < x[i].block_count; k++) {
				uint64_t b = x[i].block_index + k;
				seen[b] = 2;
				covered++;
				if (m->state[b] == 0) bad++;
				else if (m->state[b] == 1 && (!detect_zero || memcmp(m->data + b * BS, zero, BS))) bad++;
			}
		}
	}
	for (uint64_t b = 0; b < m->blocks; b++)
		if (m->state[b] && !seen[b]) bad++;
	free(buf);
	free(stored);
	free(seen);
	return bad;
}

static void round_trip(struct layer_store *s, uint64_t *rng, uint64_t blocks, int zstd_level, bool detect_zero,
		       uint32_t chunk_blocks, const char *label)
{
	struct model m;
	struct layer_writer_options o = {
		.virtual_size_bytes = blocks * BS, .zstd_level = zstd_level,
		.detect_zero_blocks = detect_zero, .chunk_blocks = chunk_blocks,
	};
	char digest[SHA256_DIGEST_STRLEN], again[SHA256_DIGEST_STRLEN];
	struct layer *l = NULL;
	uint64_t data_blocks = 0, compressed = 0, n;

	model_init(&m, blocks);
	for (uint64_t b = 0; b < blocks; b++) {
		unsigned k = (unsigned)(tap_rand(rng) % 10);
		if (k < 3) continue;                  /* absent */
		if (k < 5) { m.state[b] = 2; continue; } /* explicit zero */
		m.state[b] = 1;
		fill_block(m.data + b * BS, rng, k < 7 ? 0 : k < 9 ? 1 : 2);
	}
	TAP_IS(write_model(s, &m, &o, rng, digest), 0, "%s: commit", label);
	TAP_IS(layer_store_layer_exists(s, digest), 1, "%s: layer exists after commit", label);
	TAP_IS(layer_open(s, digest, true, &l), 0, "%s: open with digest verification", label);
	if (!l) {
		model_free(&m);
		return;
	}
	TAP_OK(!strcmp(layer_get_info(l)->digest, digest), "%s: info digest", label);
	TAP_IS(layer_get_info(l)->virtual_size_bytes, blocks * BS, "%s: virtual size", label);
	TAP_IS(compare_layer(l, &m, 0, detect_zero), 0, "%s: read_extent equals the model", label);
	TAP_IS(compare_layer(l, &m, 1, detect_zero), 0, "%s: decode_extent equals the model", label);
	const struct layer_extent *x = layer_get_extents(l, &n);
	for (uint64_t i = 0; i < n; i++)
		if (x[i].kind == LAYER_EXTENT_DATA) {
			data_blocks += x[i].block_count;
			compressed += x[i].compressed;
			if (x[i].block_count > (chunk_blocks ? chunk_blocks : LAYER_CHUNK_BLOCKS_DEFAULT)) compressed = 1u << 30;
		}
	TAP_IS(data_blocks, layer_get_info(l)->data_blocks, "%s: data_blocks in info", label);
	if (zstd_level) TAP_OK(compressed > 0 && compressed < (1u << 30), "%s: some chunks compressed (%llu)", label, (unsigned long long)compressed);
	else TAP_IS(compressed, 0, "%s: no chunk compressed", label);
	layer_close(l);
	/* Same content, same options: the same digest (deterministic chunking), no second file. */
	TAP_IS(write_model(s, &m, &o, rng, again), 0, "%s: commit again", label);
	TAP_OK(!strcmp(digest, again), "%s: identical content gives the identical digest", label);
	model_free(&m);
}

/* Threads decoding the same layer at once (cow/ does this): each must see exactly the data. */
struct thread_arg {
	struct layer *l;
	const uint8_t *expect; /* block b's bytes at expect + b * BS */
	int bad;
};

static void *decode_thread(void *p)
{
	struct thread_arg *a = p;
	uint64_t n;
	const struct layer_extent *x = layer_get_extents(a->l, &n);
	uint8_t *stored = malloc((size_t)LAYER_CHUNK_BLOCKS_MAX * BS), *out = malloc((size_t)LAYER_CHUNK_BLOCKS_MAX * BS);
	for (int rep = 0; rep < 20; rep++)
		for (uint64_t i = 0; i < n; i++) {
			if (pread(layer_get_fd(a->l), stored, x[i].stored_bytes, (off_t)x[i].offset_bytes) != (ssize_t)x[i].stored_bytes ||
			    layer_decode_extent(a->l, i, stored, out) ||
			    memcmp(out, a->expect + x[i].block_index * BS, (size_t)x[i].block_count * BS))
				a->bad++;
		}
	free(stored);
	free(out);
	return NULL;
}

static void threaded_decode(struct layer_store *s, uint64_t *rng)
{
	enum { BLOCKS = 512, THREADS = 4 };
	uint8_t *data = malloc((size_t)BLOCKS * BS);
	struct layer_writer_options o = { .virtual_size_bytes = BLOCKS * BS, .zstd_level = 1 };
	struct layer_writer *w;
	struct layer *l = NULL;
	char digest[SHA256_DIGEST_STRLEN];
	pthread_t t[THREADS];
	struct thread_arg a[THREADS];
	int bad = 0;
	for (uint64_t b = 0; b < BLOCKS; b++) fill_block(data + b * BS, rng, (int)(b % 2));
	if (layer_writer_create(s, &o, &w) || layer_writer_add_data(w, 0, data, BLOCKS) || layer_writer_commit(w, digest) ||
	    layer_open(s, digest, false, &l)) {
		TAP_OK(0, "threaded decode: setup");
		free(data);
		return;
	}
	for (int i = 0; i < THREADS; i++) {
		a[i] = (struct thread_arg){ .l = l, .expect = data };
		pthread_create(&t[i], NULL, decode_thread, &a[i]);
	}
	for (int i = 0; i < THREADS; i++) {
		pthread_join(t[i], NULL);
		bad += a[i].bad;
	}
	TAP_IS(bad, 0, "threaded decode: %d threads decoding one layer all see the right data", THREADS);
	layer_close(l);
	free(data);
}

/* A reader of a remote copy: header, then index, then single chunks by (offset, length), as
 * HTTP range requests would fetch them; compared with the local reader. */
static uint64_t fetched;
static void fetch(int fd, void *buf, size_t len, uint64_t off)
{
	if (pread(fd, buf, len, (off_t)off) != (ssize_t)len) memset(buf, 0, len);
	fetched += len;
}

static void remote_read(struct layer_store *s, const char *digest)
{
	struct layer *local = NULL, *remote = NULL;
	uint8_t header[BS], *index = NULL, *stored = malloc((size_t)LAYER_CHUNK_BLOCKS_MAX * BS);
	uint8_t *a = malloc((size_t)LAYER_CHUNK_BLOCKS_MAX * BS), *b = malloc((size_t)LAYER_CHUNK_BLOCKS_MAX * BS);
	uint64_t io = 0, il = 0, n, same = 0, data = 0;
	if (layer_open(s, digest, false, &local)) {
		TAP_OK(0, "remote: open local");
		return;
	}
	int fd = layer_get_fd(local);
	uint64_t size = layer_get_info(local)->file_size_bytes;
	fetched = 0;
	fetch(fd, header, BS, 0);
	TAP_IS(layer_remote_index_range(header, size, &io, &il), 0, "remote: header gives the index range");
	index = malloc(il ? il : 1);
	fetch(fd, index, il, io);
	TAP_IS(layer_open_remote(header, index, size, digest, &remote), 0, "remote: open from header and index buffers");
	if (remote) {
		const struct layer_extent *x = layer_get_extents(remote, &n);
		uint64_t first = fetched;
		TAP_IS(first, BS + il, "remote: opening fetched only the header and the index (%llu bytes of %llu)",
		       (unsigned long long)first, (unsigned long long)size);
		for (uint64_t i = 0; i < n; i++) {
			if (x[i].kind != LAYER_EXTENT_DATA) continue;
			data++;
			fetch(fd, stored, x[i].stored_bytes, x[i].offset_bytes);
			if (!layer_decode_extent(remote, i, stored, a) && !layer_read_extent(local, i, b) &&
			    !memcmp(a, b, (size_t)x[i].block_count * BS))
				same++;
		}
		TAP_OK(data > 0 && same == data, "remote: every chunk fetched alone decodes to the local data (%llu)", (unsigned long long)data);
		log_set_quiet(1);
		TAP_IS(layer_read_extent(remote, 0, a), -EBADF, "remote: read_extent without a file is -EBADF");
		layer_close(remote);
		remote = NULL;
		index[il / 2] ^= 1;
		TAP_IS(layer_open_remote(header, index, size, digest, &remote), -EIO, "remote: a flipped index bit is -EIO");
		index[il / 2] ^= 1;
		header[30] ^= 1;
		TAP_IS(layer_remote_index_range(header, size, &io, &il), -EIO, "remote: a flipped header bit is -EIO");
		TAP_IS(layer_open_remote(header, index, size, digest, &remote), -EIO, "remote: open with a flipped header bit is -EIO");
		header[30] ^= 1;
		TAP_IS(layer_remote_index_range(header, size + 1, &io, &il), -EIO, "remote: a wrong file size is -EIO");
		log_set_quiet(0);
	}
	layer_close(remote);
	layer_close(local);
	free(index);
	free(stored);
	free(a);
	free(b);
}

static int count_layers_fn(const char *d, void *opaque)
{
	(void)d;
	(*(int *)opaque)++;
	return 0;
}

int main(void)
{
	uint64_t seed = tap_seed(), rng = seed;
	struct layer_store *s = NULL;
	char root[512], digest[SHA256_DIGEST_STRLEN], base[SHA256_DIGEST_STRLEN];
	struct layer_writer *w;
	struct layer *l;
	int nlayers = 0;

	snprintf(root, sizeof root, "%s/store", tap_tmpdir());
	log_set_quiet(1);
	TAP_IS(layer_store_open(root, 0, &s), -ENOENT, "open without CREATE on a missing store");
	log_set_quiet(0);
	TAP_IS(layer_store_open(root, LAYER_STORE_CREATE, &s), 0, "create store");

	round_trip(s, &rng, 700, 0, false, 0, "raw");
	round_trip(s, &rng, 700, 3, false, 0, "zstd");
	round_trip(s, &rng, 700, 1, true, 0, "zstd+zero detection");
	round_trip(s, &rng, 3000, 0, true, 1, "many 1-block extents");
	round_trip(s, &rng, 2000, 5, false, LAYER_CHUNK_BLOCKS_MAX, "256-block chunks");

	/* Parent digest, empty layer, sizes. */
	struct layer_writer_options o = { .virtual_size_bytes = 1 << 20 };
	TAP_IS(layer_writer_create(s, &o, &w), 0, "empty layer: create");
	TAP_IS(layer_writer_commit(w, base), 0, "empty layer: commit");
	o.parent_digest = base;
	TAP_IS(layer_writer_create(s, &o, &w), 0, "child layer: create");
	TAP_IS(layer_writer_add_zero(w, 0, 256), 0, "child layer: zero whole device");
	TAP_IS(layer_writer_commit(w, digest), 0, "child layer: commit");
	TAP_IS(layer_open(s, digest, false, &l), 0, "child layer: open");
	if (l) {
		TAP_OK(!strcmp(layer_get_info(l)->parent_digest, base), "child layer: parent digest recorded");
		TAP_IS(layer_get_info(l)->zero_blocks, 256, "child layer: zero blocks");
		layer_close(l);
	}
	TAP_IS(layer_open(s, base, false, &l), 0, "base layer: open");
	if (l) {
		TAP_OK(layer_get_info(l)->parent_digest[0] == 0, "base layer: no parent");
		layer_close(l);
	}

	/* Writer limits and ordering. */
	log_set_quiet(1);
	struct layer_writer_options bad = { .virtual_size_bytes = LAYER_VIRTUAL_SIZE_MAX + BS };
	TAP_IS(layer_writer_create(s, &bad, &w), -EINVAL, "virtual size above the limit rejected");
	bad.virtual_size_bytes = 4097;
	TAP_IS(layer_writer_create(s, &bad, &w), -EINVAL, "virtual size not a block multiple rejected");
	bad.virtual_size_bytes = 0;
	TAP_IS(layer_writer_create(s, &bad, &w), -EINVAL, "zero virtual size rejected");
	bad.virtual_size_bytes = 1 << 20;
	bad.chunk_blocks = LAYER_CHUNK_BLOCKS_MAX + 1;
	TAP_IS(layer_writer_create(s, &bad, &w), -EINVAL, "chunk_blocks above the limit rejected");
	bad.chunk_blocks = 0;
	bad.parent_digest = "sha256:nothex";
	TAP_IS(layer_writer_create(s, &bad, &w), -EINVAL, "bad parent digest rejected");
	bad.parent_digest = NULL;
	TAP_IS(layer_writer_create(s, &bad, &w), 0, "writer for ordering checks");
	uint8_t blk[BS];
	memset(blk, 7, sizeof blk);
	TAP_IS(layer_writer_add_data(w, 10, blk, 1), 0, "add block 10");
	TAP_IS(layer_writer_add_data(w, 10, blk, 1), -EINVAL, "re-adding block 10 rejected");
	TAP_IS(layer_writer_add_zero(w, 5, 1), -EINVAL, "going backwards rejected");
	TAP_IS(layer_writer_add_zero(w, 255, 2), -EINVAL, "range past the virtual size rejected");
	TAP_IS(layer_writer_add_zero(w, 11, 0), -EINVAL, "empty range rejected");
	layer_writer_abort(w);
	TAP_IS(layer_open(s, "sha256:0000000000000000000000000000000000000000000000000000000000000000", false, &l), -ENOENT,
	       "opening a missing layer is -ENOENT");
	TAP_IS(layer_open(s, "sha256:xyz", false, &l), -EINVAL, "opening a malformed digest is -EINVAL");
	log_set_quiet(0);

	TAP_IS(layer_store_layer_foreach(s, count_layers_fn, &nlayers), 0, "foreach layers");
	TAP_IS(nlayers, 7, "7 distinct layers in the store");
	threaded_decode(s, &rng);
	{
		/* a layer of several compressed and raw chunks for the remote reader */
		struct model m;
		struct layer_writer_options ro = { .virtual_size_bytes = 300 * BS, .zstd_level = 3 };
		model_init(&m, 300);
		for (uint64_t b = 0; b < 300; b++) {
			m.state[b] = b % 7 == 3 ? 0 : 1;
			fill_block(m.data + b * BS, &rng, (int)(b / 20) % 2);
		}
		if (!write_model(s, &m, &ro, &rng, digest)) remote_read(s, digest);
		else TAP_OK(0, "remote: write layer");
		model_free(&m);
	}
	layer_store_close(s);
	return tap_done();
}
