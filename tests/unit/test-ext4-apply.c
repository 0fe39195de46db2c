/* ext4_apply: two tar layers with every feature (files, dirs, symlinks, hard links within and
 * across layers, devices, FIFOs, special mode bits, owners, times, xattrs, whiteouts, opaque
 * directories, file <-> directory replacement) applied on a scratch cow device; the result is
 * checked through libext2fs and e2fsck -fn after each layer, and bad entries give errors. */
#include "tests/unit/test-ext4-apply-util.h"

#define DEV_BYTES (256ull << 20)

static uint8_t big[300 * 1024];

static const char *const tool_xattrs[] = {
	"security.capability", "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
	"user.foo", "bar",
	NULL,
};
static const size_t tool_xattr_lens[] = { 20, 3 };
static const char *const dir_xattrs[] = { "trusted.overlay.x", "y", NULL };
static const char *const new_dir_xattrs[] = { "user.second", "2", NULL };

static void build_layer1(struct tarbuf *t)
{
	tar_begin(t);
	tar_add(t, &(struct tar_spec){ .path = "./", .type = AE_IFDIR, .perm = 0755 });
	tar_add(t, &(struct tar_spec){ .path = "etc/", .type = AE_IFDIR, .perm = 0755, .xattrs = dir_xattrs });
	tar_add(t, &(struct tar_spec){ .path = "etc/hello", .perm = 0644, .uid = 1000, .gid = 1001,
				       .mtime = 1500000000, .mtime_nsec = 123456789, .data = "hello world\n", .len = 12 });
	/* parents usr/ and usr/bin/ are implicit */
	tar_add(t, &(struct tar_spec){ .path = "/usr/bin/tool", .perm = 04755, .data = big, .len = sizeof(big),
				       .xattrs = tool_xattrs, .xattr_lens = tool_xattr_lens });
	tar_add(t, &(struct tar_spec){ .path = "usr/bin/tool2", .hardlink = "usr/bin/tool" });
	tar_add(t, &(struct tar_spec){ .path = "tmp", .type = AE_IFDIR, .perm = 01777 });
	tar_add(t, &(struct tar_spec){ .path = "sgid", .type = AE_IFDIR, .perm = 02755, .uid = 70000, .gid = 80000 });
	tar_add(t, &(struct tar_spec){ .path = "bin", .type = AE_IFLNK, .perm = 0777, .link = "usr/bin" });
	tar_add(t, &(struct tar_spec){ .path = "fastlink", .type = AE_IFLNK, .perm = 0644, .link = "x" });
	tar_add(t, &(struct tar_spec){ .path = "longlink", .type = AE_IFLNK, .perm = 0777,
				       .link = "/a/very/long/symlink/target/that/does/not/fit/into/the/inode/itself/"
					       "because/it/is/longer/than/sixty/bytes" });
	tar_add(t, &(struct tar_spec){ .path = "dev/null", .type = AE_IFCHR, .perm = 0666, .rmajor = 1, .rminor = 3 });
	tar_add(t, &(struct tar_spec){ .path = "dev/sda", .type = AE_IFBLK, .perm = 0660, .rmajor = 8, .rminor = 0 });
	tar_add(t, &(struct tar_spec){ .path = "dev/big", .type = AE_IFCHR, .perm = 0600, .rmajor = 300, .rminor = 70000 });
	tar_add(t, &(struct tar_spec){ .path = "run/fifo", .type = AE_IFIFO, .perm = 0644 });
	tar_add(t, &(struct tar_spec){ .path = "old/a", .data = "a", .len = 1 });
	tar_add(t, &(struct tar_spec){ .path = "old/sub/b", .data = "b", .len = 1 });
	tar_add(t, &(struct tar_spec){ .path = "old/sub/deeper/c", .data = big, .len = 9000 });
	tar_add(t, &(struct tar_spec){ .path = "opq/lower1", .data = "l", .len = 1 });
	tar_add(t, &(struct tar_spec){ .path = "opq/lowerdir/x", .data = "x", .len = 1 });
	tar_add(t, &(struct tar_spec){ .path = "opq/keepdir/lowerchild", .data = "k", .len = 1 });
	tar_add(t, &(struct tar_spec){ .path = "was_file", .data = "file", .len = 4 });
	tar_add(t, &(struct tar_spec){ .path = "was_dir/child", .data = big, .len = 5000 });
	tar_add(t, &(struct tar_spec){ .path = "gone", .data = big, .len = 20000 });
	tar_add(t, &(struct tar_spec){ .path = "shared/f", .data = "shared", .len = 6 });
	tar_add(t, &(struct tar_spec){ .path = "zeros", .data = big + sizeof(big) - 8192, .len = 8192 });
	tar_end(t);
}

static void build_layer2(struct tarbuf *t)
{
	tar_begin(t);
	tar_add(t, &(struct tar_spec){ .path = "./", .type = AE_IFDIR, .perm = 0750, .mtime = 1650000000 });
	tar_add(t, &(struct tar_spec){ .path = ".wh.gone", .len = 0 });
	tar_add(t, &(struct tar_spec){ .path = "old/.wh.sub" });
	tar_add(t, &(struct tar_spec){ .path = "opq", .type = AE_IFDIR, .perm = 0700 });
	tar_add(t, &(struct tar_spec){ .path = "opq/new1", .data = "n1", .len = 2 });
	tar_add(t, &(struct tar_spec){ .path = "opq/keepdir/newchild", .data = "nc", .len = 2 });
	tar_add(t, &(struct tar_spec){ .path = "opq/.wh..wh..opq" });
	tar_add(t, &(struct tar_spec){ .path = "opq/new2", .data = "n2", .len = 2 });
	tar_add(t, &(struct tar_spec){ .path = "was_file/", .type = AE_IFDIR, .perm = 0711, .xattrs = new_dir_xattrs });
	tar_add(t, &(struct tar_spec){ .path = "was_file/inside", .data = "in", .len = 2 });
	tar_add(t, &(struct tar_spec){ .path = "was_dir", .data = "now a file", .len = 10 });
	tar_add(t, &(struct tar_spec){ .path = "shared/g", .hardlink = "shared/f" });
	tar_add(t, &(struct tar_spec){ .path = "etc/hello", .perm = 0600, .data = "bye\n", .len = 4 });
	tar_add(t, &(struct tar_spec){ .path = "etc/", .type = AE_IFDIR, .perm = 0751 });
	tar_add(t, &(struct tar_spec){ .path = "usr/bin/.wh.tool2" });
	tar_add(t, &(struct tar_spec){ .path = ".wh.nonexistent" });
	tar_add(t, &(struct tar_spec){ .path = "nonexistent_dir/.wh.x" });
	tar_add(t, &(struct tar_spec){ .path = "newfile_then_wh", .data = "kept", .len = 4 });
	tar_add(t, &(struct tar_spec){ .path = ".wh.newfile_then_wh" });
	tar_end(t);
}

static void check_layer1(ext2_filsys fs)
{
	struct ext2_inode_large in;
	char buf[512];
	static uint8_t rd[sizeof(big)];

	TAP_IS(check_read(fs, "etc/hello", buf, sizeof buf), 12, "etc/hello size");
	TAP_OK(!memcmp(buf, "hello world\n", 12), "etc/hello content");
	TAP_IS(check_inode(fs, "etc/hello", &in), 0, "etc/hello exists");
	TAP_IS(in.i_mode, LINUX_S_IFREG | 0644, "etc/hello mode");
	TAP_IS(t_uid(&in), 1000u, "etc/hello uid");
	TAP_IS(t_gid(&in), 1001u, "etc/hello gid");
	TAP_IS(in.i_mtime, 1500000000u, "etc/hello mtime");
	TAP_IS(in.i_mtime_extra >> 2, 123456789u, "etc/hello mtime nsec");
	TAP_IS(in.i_ctime, 1700000000u, "ctime is the image timestamp");
	TAP_IS(check_read(fs, "usr/bin/tool", rd, sizeof rd), (long)sizeof(big), "tool size");
	TAP_OK(!memcmp(rd, big, sizeof big), "tool content");
	TAP_IS(check_inode(fs, "usr/bin/tool", &in), 0, "tool exists");
	TAP_IS(in.i_mode, LINUX_S_IFREG | 04755, "tool setuid mode");
	TAP_IS(in.i_links_count, 2, "tool has 2 links");
	TAP_IS(check_lookup(fs, "usr/bin/tool2"), check_lookup(fs, "usr/bin/tool"), "tool2 is a hard link");
	TAP_IS(check_xattr(fs, "usr/bin/tool", "security.capability", buf, sizeof buf), 20, "security.capability");
	TAP_OK(!memcmp(buf, tool_xattrs[1], 20), "security.capability value");
	TAP_IS(check_xattr(fs, "usr/bin/tool", "user.foo", buf, sizeof buf), 3, "user.foo");
	TAP_IS(check_xattr(fs, "etc", "trusted.overlay.x", buf, sizeof buf), 1, "dir xattr");
	TAP_IS(check_inode(fs, "usr", &in), 0, "implicit parent usr");
	TAP_IS(in.i_mode, LINUX_S_IFDIR | 0755, "implicit parent mode 0755");
	TAP_IS(check_inode(fs, "tmp", &in), 0, "tmp");
	TAP_IS(in.i_mode, LINUX_S_IFDIR | 01777, "tmp sticky");
	TAP_IS(check_inode(fs, "sgid", &in), 0, "sgid");
	TAP_IS(in.i_mode, LINUX_S_IFDIR | 02755, "setgid dir");
	TAP_IS(t_uid(&in), 70000u, "32-bit uid");
	TAP_IS(t_gid(&in), 80000u, "32-bit gid");
	TAP_IS(check_symlink(fs, "bin", buf, sizeof buf), 0, "bin symlink");
	TAP_OK(!strcmp(buf, "usr/bin"), "bin target");
	TAP_IS(check_inode(fs, "fastlink", &in), 0, "symlink with mode 0644 in the tar");
	TAP_IS(in.i_mode, LINUX_S_IFLNK | 0777, "symlinks are always 0777, as symlink(2) makes them");
	TAP_IS(check_symlink(fs, "longlink", buf, sizeof buf), 0, "long symlink");
	TAP_OK(!strncmp(buf, "/a/very/long/symlink", 20) && strlen(buf) > 60, "long symlink target");
	TAP_IS(check_inode(fs, "dev/null", &in), 0, "dev/null");
	TAP_OK(LINUX_S_ISCHR(in.i_mode) && in.i_block[0] == (1 << 8 | 3), "dev/null 1:3");
	TAP_IS(check_inode(fs, "dev/sda", &in), 0, "dev/sda");
	TAP_OK(LINUX_S_ISBLK(in.i_mode) && in.i_block[0] == (8 << 8), "dev/sda 8:0");
	TAP_IS(check_inode(fs, "dev/big", &in), 0, "dev/big");
	TAP_OK(LINUX_S_ISCHR(in.i_mode) && in.i_block[0] == 0 &&
	       in.i_block[1] == ((70000 & 0xff) | (300 << 8) | ((70000 & ~0xffu) << 12)), "dev/big new encoding");
	TAP_IS(check_inode(fs, "run/fifo", &in), 0, "fifo");
	TAP_OK(LINUX_S_ISFIFO(in.i_mode), "fifo type");
	TAP_IS(check_inode(fs, "zeros", &in), 0, "zeros");
	TAP_OK(EXT2_I_SIZE(&in) == 8192 && in.i_blocks == 0, "all-zero file is sparse");
	TAP_OK(check_lookup(fs, "lost+found") != 0, "lost+found");
}

static void check_layer2(ext2_filsys fs)
{
	struct ext2_inode_large in;
	char buf[512];

	TAP_IS(check_inode(fs, "", &in), 0, "root");
	TAP_IS(in.i_mode, LINUX_S_IFDIR | 0750, "root mode from ./ entry");
	TAP_IS(check_lookup(fs, "gone"), 0u, "whiteout removed gone");
	TAP_OK(check_lookup(fs, "old/a") != 0, "old/a kept");
	TAP_IS(check_lookup(fs, "old/sub"), 0u, "old/sub removed recursively");
	TAP_IS(check_inode(fs, "old", &in), 0, "old");
	TAP_IS(in.i_links_count, 2, "old link count after removing subdir");
	TAP_IS(check_lookup(fs, "opq/lower1"), 0u, "opaque: lower file removed");
	TAP_IS(check_lookup(fs, "opq/lowerdir"), 0u, "opaque: lower dir removed");
	TAP_IS(check_lookup(fs, "opq/keepdir/lowerchild"), 0u, "opaque: lower child of kept dir removed");
	TAP_OK(check_lookup(fs, "opq/keepdir/newchild") != 0, "opaque: same-layer child kept");
	TAP_OK(check_lookup(fs, "opq/new1") != 0, "opaque: entry before marker kept");
	TAP_OK(check_lookup(fs, "opq/new2") != 0, "opaque: entry after marker kept");
	TAP_IS(check_inode(fs, "opq", &in), 0, "opq");
	TAP_IS(in.i_mode, LINUX_S_IFDIR | 0700, "opq mode updated");
	TAP_IS(check_inode(fs, "was_file", &in), 0, "was_file");
	TAP_IS(in.i_mode, LINUX_S_IFDIR | 0711, "file replaced by directory");
	TAP_IS(check_xattr(fs, "was_file", "user.second", buf, sizeof buf), 1, "new dir xattr");
	TAP_OK(check_lookup(fs, "was_file/inside") != 0, "child of new directory");
	TAP_IS(check_inode(fs, "was_dir", &in), 0, "was_dir");
	TAP_OK(LINUX_S_ISREG(in.i_mode) && EXT2_I_SIZE(&in) == 10, "directory replaced by file");
	TAP_IS(check_inode(fs, "shared/f", &in), 0, "shared/f");
	TAP_IS(in.i_links_count, 2, "hard link across layers: 2 links");
	TAP_IS(check_lookup(fs, "shared/g"), check_lookup(fs, "shared/f"), "shared/g links the lower inode");
	TAP_IS(check_read(fs, "etc/hello", buf, sizeof buf), 4, "etc/hello replaced");
	TAP_OK(!memcmp(buf, "bye\n", 4), "etc/hello new content");
	TAP_IS(check_inode(fs, "etc", &in), 0, "etc");
	TAP_IS(in.i_mode, LINUX_S_IFDIR | 0751, "etc mode updated");
	TAP_IS(check_xattr(fs, "etc", "trusted.overlay.x", buf, sizeof buf), -1, "dir entry replaced xattrs");
	TAP_IS(check_lookup(fs, "usr/bin/tool2"), 0u, "whiteout of one hard link");
	TAP_IS(check_inode(fs, "usr/bin/tool", &in), 0, "tool still there");
	TAP_IS(in.i_links_count, 1, "tool down to 1 link");
	TAP_OK(check_lookup(fs, "newfile_then_wh") != 0, "whiteout does not remove a same-layer file");
}

static int apply_expect_error(struct layer_store *s, struct tarbuf *base, struct tarbuf *bad, const char *what)
{
	const char *none[1] = { NULL };
	char digest[SHA256_DIGEST_STRLEN];
	struct cow_device *d;
	int r;
	if (cow_device_open_scratch(s, none, 0, DEV_BYTES, &d)) return 0;
	r = base ? apply_layer(d, base, true, "base") : 0;
	if (!r && base) r = cow_device_commit_layer(d, digest);
	if (r) {
		tap_diag("%s: base layer failed", what);
		cow_device_close(d);
		return 0;
	}
	unsigned long before = log_error_count();
	log_set_quiet(1);
	r = apply_layer(d, bad, !base, "image test layer 2/2");
	log_set_quiet(0);
	if (log_error_count() == before) tap_diag("%s: no error logged", what);
	cow_device_close(d);
	return r;
}

static void test_errors(struct layer_store *s)
{
	struct tarbuf base, t;
	tar_begin(&base);
	tar_add(&base, &(struct tar_spec){ .path = "lnk", .type = AE_IFLNK, .link = "dir" });
	tar_add(&base, &(struct tar_spec){ .path = "dir/f", .data = "f", .len = 1 });
	tar_add(&base, &(struct tar_spec){ .path = "file", .data = "f", .len = 1 });
	tar_end(&base);

	tar_begin(&t);
	tar_add(&t, &(struct tar_spec){ .path = "a/../../etc/passwd", .data = "x", .len = 1 });
	tar_end(&t);
	TAP_IS(apply_expect_error(s, NULL, &t, "dotdot"), -EINVAL, "'..' in a path is refused");
	tar_free(&t);

	tar_begin(&t);
	tar_add(&t, &(struct tar_spec){ .path = "h", .hardlink = "does/not/exist" });
	tar_end(&t);
	TAP_IS(apply_expect_error(s, &base, &t, "hardlink"), -ENOENT, "hard link to a missing target");
	tar_free(&t);

	tar_begin(&t);
	tar_add(&t, &(struct tar_spec){ .path = "h", .hardlink = "../file" });
	tar_end(&t);
	TAP_IS(apply_expect_error(s, &base, &t, "hardlink dotdot"), -EINVAL, "hard link target with '..'");
	tar_free(&t);

	tar_begin(&t);
	tar_add(&t, &(struct tar_spec){ .path = "h", .hardlink = "dir" });
	tar_end(&t);
	TAP_IS(apply_expect_error(s, &base, &t, "hardlink dir"), -EPERM, "hard link to a directory");
	tar_free(&t);

	tar_begin(&t);
	tar_add(&t, &(struct tar_spec){ .path = "lnk/evil", .data = "x", .len = 1 });
	tar_end(&t);
	TAP_IS(apply_expect_error(s, &base, &t, "through symlink"), -ENOTDIR, "a symlink in the path is not followed");
	tar_free(&t);

	tar_begin(&t);
	tar_add(&t, &(struct tar_spec){ .path = "file/x", .data = "x", .len = 1 });
	tar_end(&t);
	TAP_IS(apply_expect_error(s, &base, &t, "through file"), -ENOTDIR, "a file in the path is an error");
	tar_free(&t);

	tar_begin(&t);
	tar_add(&t, &(struct tar_spec){ .path = "./", .type = AE_IFLNK, .link = "/" });
	tar_end(&t);
	TAP_IS(apply_expect_error(s, &base, &t, "root symlink"), -EINVAL, "the root cannot become a symlink");
	tar_free(&t);

	static char bigval[5001];
	memset(bigval, 'v', 5000);
	const char *big_xattr[] = { "user.big", bigval, NULL };
	tar_begin(&t);
	tar_add(&t, &(struct tar_spec){ .path = "x", .data = "x", .len = 1, .xattrs = big_xattr });
	tar_end(&t);
	TAP_IS(apply_expect_error(s, NULL, &t, "big xattr"), -E2BIG, "an xattr value over the limit is refused");
	tar_free(&t);

	/* 300 MB of incompressible data on a 256 MiB device */
	tar_begin(&t);
	for (int i = 0; i < 1000; i++) {
		char name[32];
		snprintf(name, sizeof name, "fill/%d", i);
		tar_add(&t, &(struct tar_spec){ .path = name, .data = big, .len = sizeof(big) });
	}
	tar_end(&t);
	TAP_IS(apply_expect_error(s, NULL, &t, "enospc"), -ENOSPC, "a full device is ENOSPC");
	tar_free(&t);

	/* garbage is a tar error, not a crash */
	tar_begin(&t);
	tar_add(&t, &(struct tar_spec){ .path = "ok", .data = "x", .len = 1 });
	tar_add(&t, &(struct tar_spec){ .path = "second", .data = "y", .len = 1 });
	tar_end(&t);
	for (size_t off = 512; off + 512 <= t.len; off += 512)
		if (!memcmp(t.data + off, "second", 6)) t.data[off + 150] ^= 0x7; /* header checksum */
	TAP_OK(apply_expect_error(s, NULL, &t, "garbage") < 0, "a corrupt tar is an error");
	tar_free(&t);
	tar_free(&base);
}

/* GNU tar (././@LongLink names) and pax long names and link targets. */
static void test_long_names(struct layer_store *s)
{
	const char *none[1] = { NULL };
	char longdir[300], longfile[400], longlink[400], img[1024], buf[512];
	struct cow_device *d;
	struct tarbuf t;

	memset(longdir, 'd', 200);
	longdir[200] = '\0';
	snprintf(longfile, sizeof longfile, "%s/%s", longdir, "a-file-name-that-makes-the-path-longer-than-ustar-allows");
	snprintf(longlink, sizeof longlink, "%s/hard", longdir);
	tar_begin_format(&t, archive_write_set_format_gnutar);
	tar_add(&t, &(struct tar_spec){ .path = longfile, .data = "gnu", .len = 3 });
	tar_add(&t, &(struct tar_spec){ .path = longlink, .hardlink = longfile });
	tar_add(&t, &(struct tar_spec){ .path = "sym", .type = AE_IFLNK, .link = longfile });
	tar_end(&t);
	snprintf(img, sizeof img, "%s/gnu.img", tap_tmpdir());
	int r = cow_device_open_scratch(s, none, 0, DEV_BYTES, &d);
	if (!r) r = apply_layer(d, &t, true, "gnu layer");
	TAP_IS(r, 0, "GNU tar with long names, long hard link and symlink targets");
	if (!r) r = export_raw(d, img);
	cow_device_close(d);
	tar_free(&t);
	ext2_filsys fs = r ? NULL : check_open(img);
	TAP_OK(fs != NULL, "GNU layer image opens");
	if (!fs) return;
	TAP_IS(check_read(fs, longfile, buf, sizeof buf), 3, "long name file readable");
	TAP_IS(check_lookup(fs, longlink), check_lookup(fs, longfile), "long hard link");
	TAP_IS(check_symlink(fs, "sym", buf, sizeof buf), 0, "long symlink");
	TAP_OK(!strcmp(buf, longfile), "long symlink target");
	ext2fs_close(fs);
	TAP_IS(run_e2fsck(img), 0, "GNU layer e2fsck clean");
}

static int apply_both(struct layer_store *s, struct tarbuf *l1, struct tarbuf *l2, char d1[SHA256_DIGEST_STRLEN],
		      char d2[SHA256_DIGEST_STRLEN], const char *img1, const char *img2)
{
	const char *none[1] = { NULL };
	struct cow_device *d;
	int r = cow_device_open_scratch(s, none, 0, DEV_BYTES, &d);
	if (r) return r;
	r = apply_layer(d, l1, true, "image test layer 1/2");
	if (!r) r = cow_device_commit_layer(d, d1);
	if (!r && img1) r = export_raw(d, img1);
	if (!r) r = apply_layer(d, l2, false, "image test layer 2/2");
	if (!r) r = cow_device_commit_layer(d, d2);
	if (!r && img2) r = export_raw(d, img2);
	int c = cow_device_close(d);
	return r ? r : c;
}

/* Opening a device without a filesystem fails with exactly one error, logged by ext4_apply_open and
 * naming the label the caller gave (image_import.c does not log it again). */
static void test_open_error(struct layer_store *s)
{
	const char *none[1] = { NULL };
	struct cow_device *d;
	struct ext4_apply *fs = NULL;
	struct ext4_params p = test_params();
	char path[1024], msg[4096] = "";
	if (cow_device_open_scratch(s, none, 0, DEV_BYTES, &d)) {
		TAP_OK(0, "scratch device for the open error");
		return;
	}
	snprintf(path, sizeof path, "%s/open-error.log", tap_tmpdir());
	int saved = dup(2), fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	unsigned long before = log_error_count();
	fflush(stderr);
	dup2(fd, 2);
	int r = ext4_apply_open(d, &p, "image t layer 2/2 (sha256:abc)", &fs);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	ssize_t n = pread(fd, msg, sizeof msg - 1, 0);
	close(fd);
	msg[n > 0 ? n : 0] = 0;
	msg[strcspn(msg, "\n")] = 0;
	TAP_OK(r < 0 && fs == NULL, "open of a device without a filesystem fails (%d)", r);
	TAP_IS(log_error_count() - before, 1, "one error logged");
	TAP_OK(strstr(msg, "image t layer 2/2 (sha256:abc): open filesystem: ") != NULL, "it names the label: %s", msg);
	cow_device_close(d);
}

int main(void)
{
	struct tarbuf l1, l2;
	char d1[SHA256_DIGEST_STRLEN], d2[SHA256_DIGEST_STRLEN], e1[SHA256_DIGEST_STRLEN], e2[SHA256_DIGEST_STRLEN];
	char img1[1024], img2[1024];
	uint64_t seed = 0x1234;

	if (!e2fsck_path()) tap_skip_all("e2fsck not installed");
	for (size_t i = 0; i < sizeof(big) - 8192; i++) big[i] = (uint8_t)(tap_rand(&seed) >> 24);
	build_layer1(&l1);
	build_layer2(&l2);

	struct layer_store *s1 = NULL, *s2 = NULL;
	char root[1024];
	snprintf(root, sizeof root, "%s/store1", tap_tmpdir());
	TAP_IS(layer_store_open(root, LAYER_STORE_CREATE, &s1), 0, "store 1");
	snprintf(root, sizeof root, "%s/store2", tap_tmpdir());
	TAP_IS(layer_store_open(root, LAYER_STORE_CREATE, &s2), 0, "store 2");
	snprintf(img1, sizeof img1, "%s/layer1.img", tap_tmpdir());
	snprintf(img2, sizeof img2, "%s/layer2.img", tap_tmpdir());

	TAP_IS(apply_both(s1, &l1, &l2, d1, d2, img1, img2), 0, "two layers applied and committed");
	TAP_IS(run_e2fsck(img1), 0, "e2fsck -fn clean after layer 1");
	TAP_IS(run_e2fsck(img2), 0, "e2fsck -fn clean after layer 2");
	ext2_filsys fs = check_open(img1);
	TAP_OK(fs != NULL, "layer 1 image opens with libext2fs");
	if (fs) {
		TAP_OK(ext2fs_has_feature_metadata_csum(fs->super) && ext2fs_has_feature_extents(fs->super) &&
		       ext2fs_has_feature_journal(fs->super) && ext2fs_has_feature_64bit(fs->super) &&
		       ext2fs_has_feature_flex_bg(fs->super) && EXT2_INODE_SIZE(fs->super) == 256,
		       "ext4 features, 256-byte inodes");
		TAP_OK(!memcmp(fs->super->s_uuid, test_params().uuid, 16) &&
		       !memcmp(fs->super->s_hash_seed, test_params().hash_seed, 16), "uuid and hash seed from params");
		check_layer1(fs);
		ext2fs_close(fs);
	}
	fs = check_open(img2);
	TAP_OK(fs != NULL, "layer 2 image opens with libext2fs");
	if (fs) {
		check_layer2(fs);
		ext2fs_close(fs);
	}

	TAP_IS(apply_both(s2, &l1, &l2, e1, e2, NULL, NULL), 0, "same layers in a second store");
	TAP_OK(!strcmp(d1, e1) && !strcmp(d2, e2), "deterministic: identical layer digests (%s)", d2);

	test_errors(s1);
	test_long_names(s1);
	test_open_error(s1);

	tar_free(&l1);
	tar_free(&l2);
	layer_store_close(s1);
	layer_store_close(s2);
	return tap_done();
}
