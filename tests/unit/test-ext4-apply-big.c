/* ext4_apply at size: a directory of 10,000 files (then an opaque marker over it in a second
 * layer), a sparse 1 GiB file given as a pax sparse entry, and a 64 MiB all-zero file given as
 * plain data.  The layers must stay small (holes are never written), e2fsck -fn must be clean
 * and the content must read back.  Prints the apply times and layer sizes. */
#include <time.h>

#include "tests/unit/test-ext4-apply-util.h"

#define DEV_BYTES (2ull << 30)
#define NFILES 10000
#define SPARSE_BYTES (1ull << 30)

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint8_t mid[65536];

static void build_layer1(struct tarbuf *t)
{
	static uint8_t chunk[1 << 20];
	char name[64];

	tar_begin(t);
	for (int i = 0; i < NFILES; i++) {
		snprintf(name, sizeof name, "many/file-%05d", i);
		tar_add(t, &(struct tar_spec){ .path = name, .data = name, .len = strlen(name) });
	}
	/* a pax sparse file: data at 0, at 512 MiB and in the last block */
	struct archive_entry *e = archive_entry_new();
	archive_entry_set_pathname(e, "big/sparse");
	archive_entry_set_filetype(e, AE_IFREG);
	archive_entry_set_perm(e, 0644);
	archive_entry_set_size(e, (la_int64_t)SPARSE_BYTES);
	archive_entry_set_mtime(e, 1600000000, 0);
	archive_entry_sparse_add_entry(e, 0, 4096);
	archive_entry_sparse_add_entry(e, 512ll << 20, sizeof(mid));
	archive_entry_sparse_add_entry(e, (la_int64_t)SPARSE_BYTES - 4096, 4096);
	if (archive_write_header(t->w, e) != ARCHIVE_OK) {
		tap_diag("sparse header: %s", archive_error_string(t->w));
		exit(1);
	}
	for (uint64_t off = 0; off < SPARSE_BYTES; off += sizeof(chunk)) {
		memset(chunk, 0, sizeof(chunk));
		if (off == 0) memcpy(chunk, "head", 4);
		if (off == 512ull << 20) memcpy(chunk, mid, sizeof(mid));
		if (off + sizeof(chunk) == SPARSE_BYTES) memcpy(chunk + sizeof(chunk) - 4, "tail", 4);
		archive_write_data(t->w, chunk, sizeof(chunk));
	}
	archive_entry_free(e);
	/* 64 MiB of zeros as ordinary data */
	e = archive_entry_new();
	archive_entry_set_pathname(e, "big/zeros");
	archive_entry_set_filetype(e, AE_IFREG);
	archive_entry_set_perm(e, 0644);
	archive_entry_set_size(e, 64 << 20);
	archive_entry_set_mtime(e, 1600000000, 0);
	archive_write_header(t->w, e);
	memset(chunk, 0, sizeof(chunk));
	for (int i = 0; i < 64; i++) archive_write_data(t->w, chunk, sizeof(chunk));
	archive_entry_free(e);
	tar_end(t);
}

static void build_layer2(struct tarbuf *t)
{
	tar_begin(t);
	tar_add(t, &(struct tar_spec){ .path = "many/", .type = AE_IFDIR, .perm = 0755 });
	tar_add(t, &(struct tar_spec){ .path = "many/file-00042", .data = "new", .len = 3 });
	tar_add(t, &(struct tar_spec){ .path = "many/.wh..wh..opq" });
	tar_add(t, &(struct tar_spec){ .path = "many/after", .data = "after", .len = 5 });
	tar_end(t);
}

struct count_ctx {
	unsigned n;
};

static int count_cb(ext2_ino_t dir, int entry, struct ext2_dir_entry *de, int off, int bs, char *buf, void *priv)
{
	struct count_ctx *c = priv;
	if (entry != DIRENT_DOT_FILE && entry != DIRENT_DOT_DOT_FILE && de->inode) c->n++;
	return 0;
}

static unsigned count_entries(ext2_filsys fs, const char *path)
{
	struct count_ctx c = { 0 };
	ext2_ino_t ino = check_lookup(fs, path);
	if (!ino || ext2fs_dir_iterate2(fs, ino, 0, NULL, count_cb, &c)) return 0;
	return c.n;
}

static uint64_t layer_data_blocks(struct layer_store *s, const char *digest)
{
	struct layer *l;
	if (layer_open(s, digest, false, &l)) return UINT64_MAX;
	uint64_t n = layer_get_info(l)->data_blocks;
	layer_close(l);
	return n;
}

int main(void)
{
	struct tarbuf l1, l2;
	char d1[SHA256_DIGEST_STRLEN], d2[SHA256_DIGEST_STRLEN], img1[1024], img2[1024], root[1024];
	const char *none[1] = { NULL };
	struct layer_store *s = NULL;
	struct cow_device *d = NULL;
	uint64_t seed = 77;
	double t0;

	if (!e2fsck_path()) tap_skip_all("e2fsck not installed");
	for (size_t i = 0; i < sizeof(mid); i++) mid[i] = (uint8_t)(tap_rand(&seed) >> 32);
	build_layer1(&l1);
	build_layer2(&l2);
	tap_diag("layer 1 tar: %zu bytes, layer 2 tar: %zu bytes", l1.len, l2.len);

	snprintf(root, sizeof root, "%s/store", tap_tmpdir());
	TAP_IS(layer_store_open(root, LAYER_STORE_CREATE, &s), 0, "store");
	TAP_IS(cow_device_open_scratch(s, none, 0, DEV_BYTES, &d), 0, "scratch device of 2 GiB");
	t0 = now_s();
	TAP_IS(apply_layer(d, &l1, true, "big layer 1/2"), 0, "layer 1: 10,000 files, sparse 1 GiB, 64 MiB of zeros");
	tap_diag("layer 1 applied in %.2f s", now_s() - t0);
	TAP_IS(cow_device_commit_layer(d, d1), 0, "commit layer 1");
	uint64_t b1 = layer_data_blocks(s, d1);
	tap_diag("layer 1: %llu data blocks (%.1f MiB)", (unsigned long long)b1, (double)b1 * 4096 / (1 << 20));
	/* 10,000 inodes with data (40 MiB at most), the sparse file's 18 blocks, metadata: far below
	 * what writing the holes or the zeros would take (1 GiB + 64 MiB). */
	TAP_OK(b1 < 16384, "layer 1 stays small: holes and zero blocks are not stored");
	snprintf(img1, sizeof img1, "%s/l1.img", tap_tmpdir());
	TAP_IS(export_raw(d, img1), 0, "export layer 1");
	t0 = now_s();
	TAP_IS(apply_layer(d, &l2, false, "big layer 2/2"), 0, "layer 2: opaque over the big directory");
	tap_diag("layer 2 applied in %.2f s", now_s() - t0);
	TAP_IS(cow_device_commit_layer(d, d2), 0, "commit layer 2");
	uint64_t b2 = layer_data_blocks(s, d2);
	tap_diag("layer 2: %llu data blocks", (unsigned long long)b2);
	snprintf(img2, sizeof img2, "%s/l2.img", tap_tmpdir());
	TAP_IS(export_raw(d, img2), 0, "export layer 2");
	TAP_IS(cow_device_close(d), 0, "close device");

	TAP_IS(run_e2fsck(img1), 0, "e2fsck -fn clean with a 10,000-file directory and a sparse 1 GiB file");
	TAP_IS(run_e2fsck(img2), 0, "e2fsck -fn clean after removing 10,000 files");

	ext2_filsys fs = check_open(img1);
	TAP_OK(fs != NULL, "open layer 1 image");
	if (fs) {
		char buf[64];
		static uint8_t rd[65536];
		struct ext2_inode_large in;
		TAP_IS(count_entries(fs, "many"), (unsigned)NFILES, "10,000 entries in the directory");
		TAP_IS(check_read(fs, "many/file-09999", buf, sizeof buf), 15, "last file");
		TAP_OK(!memcmp(buf, "many/file-09999", 15), "last file content");
		TAP_IS(check_inode(fs, "big/sparse", &in), 0, "sparse file");
		TAP_OK(EXT2_I_SIZE(&in) == SPARSE_BYTES, "sparse file is 1 GiB long");
		tap_diag("sparse file: %llu sectors allocated", (unsigned long long)in.i_blocks);
		TAP_OK(in.i_blocks <= 2 * 8 + 16 * 8 + 8, "sparse file allocates only its data blocks");
		ext2_file_t f;
		unsigned got = 0;
		int ok = !ext2fs_file_open(fs, check_lookup(fs, "big/sparse"), 0, &f);
		ok = ok && !ext2fs_file_read(f, buf, 4, &got) && got == 4 && !memcmp(buf, "head", 4);
		ok = ok && !ext2fs_file_llseek(f, 512ull << 20, EXT2_SEEK_SET, NULL) &&
		     !ext2fs_file_read(f, rd, sizeof(rd), &got) && got == sizeof(rd) && !memcmp(rd, mid, sizeof(mid));
		ok = ok && !ext2fs_file_llseek(f, 256ull << 20, EXT2_SEEK_SET, NULL) &&
		     !ext2fs_file_read(f, buf, 64, &got) && got == 64 && !memcmp(buf, rd + sizeof(rd) - 64, 0);
		for (int i = 0; ok && i < 64; i++) ok = buf[i] == 0;
		ok = ok && !ext2fs_file_llseek(f, SPARSE_BYTES - 4, EXT2_SEEK_SET, NULL) &&
		     !ext2fs_file_read(f, buf, 4, &got) && got == 4 && !memcmp(buf, "tail", 4);
		ext2fs_file_close(f);
		TAP_OK(ok, "sparse file reads head, middle, hole and tail back");
		TAP_IS(check_inode(fs, "big/zeros", &in), 0, "zeros file");
		TAP_OK(EXT2_I_SIZE(&in) == (64 << 20) && in.i_blocks == 0, "64 MiB of zeros allocates nothing");
		ext2fs_close(fs);
	}
	fs = check_open(img2);
	TAP_OK(fs != NULL, "open layer 2 image");
	if (fs) {
		char buf[16];
		TAP_IS(count_entries(fs, "many"), 2u, "opaque: only this layer's 2 entries remain");
		TAP_IS(check_read(fs, "many/file-00042", buf, sizeof buf), 3, "same-layer file kept");
		TAP_OK(check_lookup(fs, "many/after") != 0, "entry after the marker");
		TAP_IS(check_lookup(fs, "many/file-00041"), 0u, "lower file removed");
		ext2fs_close(fs);
	}
	tar_free(&l1);
	tar_free(&l2);
	layer_store_close(s);
	return tap_done();
}
