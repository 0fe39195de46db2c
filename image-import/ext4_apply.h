/* Private to image-import/: applies tar layers to an ext4 filesystem on a cow/ device through
 * libext2fs, with an io_manager that reads and writes the cow device directly (no temp image).
 *
 * Determinism: the filesystem's UUID, hash seed and every timestamp it invents come from
 * ext4_params (derived by the caller from the image), so the same image gives byte-identical
 * blocks on any machine. */
#ifndef OCIBLK_IMAGE_IMPORT_EXT4_APPLY_H
#define OCIBLK_IMAGE_IMPORT_EXT4_APPLY_H
#ifndef OCIBLK_IMAGE_IMPORT_INTERNAL
#error "ext4_apply.h is private to image-import/"
#endif

#include <stdint.h>

struct archive;
struct cow_device;
struct ext4_apply; /* opaque */

struct ext4_params {
	uint8_t uuid[16];
	uint8_t hash_seed[16];
	int64_t timestamp_unix;   /* used for mkfs and for anything tar does not give a time */
};

/* Creates a fresh ext4 filesystem (with a journal, so a guest can mount it read-write) on an
 * all-zero device, and opens it.  label names the image and layer in the error messages of mkfs,
 * open and close (each logged once, here); it must outlive the handle. */
int ext4_apply_mkfs(struct cow_device *dev, const struct ext4_params *params, const char *label,
		    struct ext4_apply **out);
/* Opens the filesystem already on dev (the layers below).  label as for ext4_apply_mkfs. */
int ext4_apply_open(struct cow_device *dev, const struct ext4_params *params, const char *label,
		    struct ext4_apply **out);
/* Applies every entry of an opened libarchive reader, with OCI layer semantics (whiteouts, opaque
 * directories, hard links, replacing a directory by a file and back, xattrs...).  label names the
 * image and layer in error messages ("image foo layer 2/5"); each error also names the entry. */
int ext4_apply_tar(struct ext4_apply *fs, struct archive *tar, const char *label);
/* Writes all metadata back to the device and closes (the caller then commits the layer).  Errors
 * are logged here, named by the label given to mkfs/open. */
int ext4_apply_close(struct ext4_apply *fs);
/* Closes without promising anything about the device's contents (the caller discards it). */
void ext4_apply_abort(struct ext4_apply *fs);

#endif
