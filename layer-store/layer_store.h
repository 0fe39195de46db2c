/* layer-store: the on-disk store of ociblk.
 *
 * A store is a directory (--root, $OCIBLK_ROOT, default /var/lib/ociblk) holding
 *   - immutable, content-addressed block layers, named "sha256:<hex>" after the sha256 of the
 *     whole layer file (format v1: layer-store/FORMAT.md);
 *   - image records: a name -> an ordered chain of layers (bottom first) and a device size;
 *   - container records: a name -> its chain and a private directory for its writable upper
 *     (the upper's files belong to cow/);
 *   - chain-id records: an OCI chain id -> the layer that holds it (image-import dedups on these).
 * Layer reference counts are derived from the records (never stored), so they cannot drift.
 * Every mutation takes the store lock (flock, exclusive), is written temp -> fsync -> rename ->
 * fsync(dir), and after a crash at any instant the store holds either the old or the new state.
 * Work in progress is marked by shared flocks (open layers, held temps): gc never removes it.
 *
 * Units: this module speaks bytes (offset_bytes, size_bytes) except where a name says blocks.
 * Everything returns 0 or -errno and logs once at the origin of an error. */
#ifndef OCIBLK_LAYER_STORE_H
#define OCIBLK_LAYER_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/limits.h"
#include "common/sha256.h"

struct layer_store; /* opaque */
struct layer;       /* opaque: an open, validated layer file */
struct layer_writer;/* opaque: a layer being written */

#define LAYER_STORE_DEFAULT_ROOT "/var/lib/ociblk"

/* ---------------------------------------------------------------- store ------------------- */

enum layer_store_open_flags {
	LAYER_STORE_CREATE = 1u << 0,   /* create root and its directories when missing */
};

/* Opens (and with LAYER_STORE_CREATE creates) the store at root.  root NULL means $OCIBLK_ROOT or
 * LAYER_STORE_DEFAULT_ROOT.  -ENOENT when the store does not exist and CREATE is not given. */
int layer_store_open(const char *root, unsigned flags, struct layer_store **out);
void layer_store_close(struct layer_store *store);
const char *layer_store_root(const struct layer_store *store);

/* Store-wide lock for a multi-step mutation of records (e.g. import: chain records, then the image
 * record).  Record functions below take it themselves; it is recursive within one store handle.
 * Long work (writing a layer) does not need it: what it uses stays open or held, which gc
 * respects (FORMAT.md section 4). */
int layer_store_lock(struct layer_store *store);
void layer_store_unlock(struct layer_store *store);

/* A fresh path for a temporary file inside the store (root/tmp/<prefix>.<pid>.<random>), on the
 * same filesystem as the layers so rename publishes it.  `ociblk gc` removes stale ones. */
int layer_store_tmp_path(struct layer_store *store, const char *prefix, char *out, size_t out_len);
/* Marks a temp file or directory (just created at a layer_store_tmp_path) as in use by taking a
 * shared flock on it; returns the fd holding it (close it when done, before or after removing the
 * entry).  gc never removes an entry of tmp/ while it is held, whatever its age.  -ENOENT when
 * the entry was removed before the hold was taken (only a gc with age 0 can do that): create a
 * fresh one. */
int layer_store_tmp_hold(const char *path);

/* Names of images and containers: 1..OCIBLK_NAME_MAX chars of [A-Za-z0-9._:/@+-], not starting
 * with '.' or '/', no "..".  0 or -EINVAL (logged, naming the name). */
int layer_store_name_validate(const char *kind, const char *name);

/* ---------------------------------------------------------------- layers ------------------ */

/* Path of a layer file in the store (whether or not it exists). */
int layer_store_layer_path(struct layer_store *store, const char *digest, char *out, size_t out_len);
/* 1 if the layer exists, 0 if not, -errno on error. */
int layer_store_layer_exists(struct layer_store *store, const char *digest);

/* Calls fn for every layer file in the store; stops and returns fn's value when non-zero. */
int layer_store_layer_foreach(struct layer_store *store,
			      int (*fn)(const char *digest, void *opaque), void *opaque);

/* Extent kinds in a layer's index. */
enum layer_extent_kind {
	LAYER_EXTENT_DATA = 1,  /* blocks stored in one chunk of the data area */
	LAYER_EXTENT_ZERO = 2,  /* blocks that read as zero in this layer (mask the layers below) */
};

/* One entry of a layer's sorted extent index, in 4 KiB blocks of the virtual device.
 * Blocks not covered by any extent are absent from this layer: they come from the layers below. */
struct layer_extent {
	uint64_t block_index;   /* first virtual block */
	uint32_t block_count;   /* DATA: 1..LAYER_CHUNK_BLOCKS_MAX; ZERO: >= 1 */
	uint8_t kind;           /* enum layer_extent_kind */
	uint8_t compressed;     /* DATA: 1 = zstd frame, 0 = raw */
	uint64_t offset_bytes;  /* DATA: chunk position in the file */
	uint32_t stored_bytes;  /* DATA: chunk length in the file */
};

struct layer_info {
	char digest[SHA256_DIGEST_STRLEN];
	char parent_digest[SHA256_DIGEST_STRLEN]; /* "" for a base layer */
	uint64_t virtual_size_bytes;
	uint64_t file_size_bytes;
	uint64_t extent_count;
	uint64_t data_blocks;   /* blocks covered by DATA extents */
	uint64_t zero_blocks;   /* blocks covered by ZERO extents */
};

/* Opens and validates a layer: header, index checksum, index sortedness/bounds.  The file is
 * untrusted input: any inconsistency is -EIO (-EUCLEAN is not used) with a log line naming the
 * layer.  With verify_digest the whole file is re-hashed and must match digest (fsck does this;
 * the hot path does not, chunks are checked on every read instead).
 * An open layer is pinned (a shared flock on its file until layer_close): gc never removes it,
 * referenced or not, so work in progress (a commit before its record, an import before its image
 * record) keeps its layers by keeping them open.  -ENOENT if gc removed it just before. */
int layer_open(struct layer_store *store, const char *digest, bool verify_digest, struct layer **out);
/* Opens a layer file by path, outside any store (fsck of a loose file, tests, fuzzing). */
int layer_open_path(const char *path, const char *digest_or_null, bool verify_digest, struct layer **out);
void layer_close(struct layer *layer);
/* For a reader of a remote copy (HTTP range requests): validates the header (the file's first
 * 4096 bytes, file_size from e.g. the registry's blob size) and says where the index is. */
int layer_remote_index_range(const void *header, uint64_t file_size, uint64_t *index_offset, uint64_t *index_length);
/* Opens a layer from its header and its index (index_length bytes fetched at index_offset), with
 * the same validation as layer_open.  No file: layer_get_fd is -1 and layer_read_extent is
 * -EBADF; fetch a chunk's stored_bytes at offset_bytes and give it to layer_decode_extent, which
 * verifies it.  digest_or_null names the layer in log lines and info (not verified here: hash the
 * whole file when it has been fetched). */
int layer_open_remote(const void *header, const void *index, uint64_t file_size, const char *digest_or_null,
		      struct layer **out);

const struct layer_info *layer_get_info(const struct layer *layer);
/* The index, sorted by block_index, non-overlapping; valid while the layer is open. */
const struct layer_extent *layer_get_extents(const struct layer *layer, uint64_t *count);
/* The file descriptor of the layer file (read-only), for asynchronous reads by cow/. */
int layer_get_fd(const struct layer *layer);

/* Reads the chunk of DATA extent number extent_index into out (block_count * 4096 bytes):
 * reads stored_bytes at offset_bytes, verifies its checksum, decompresses.  A checksum or
 * decompression failure is -EIO with a log line naming the layer and extent: never wrong data. */
int layer_read_extent(struct layer *layer, uint64_t extent_index, void *out);
/* The same for a chunk the caller already read (e.g. with io_uring): verify + decompress
 * `stored` (stored_bytes long) into out.  Pure apart from logging; thread-safe.  For a raw
 * (uncompressed) extent stored may be out itself: then nothing is copied. */
int layer_decode_extent(const struct layer *layer, uint64_t extent_index, const void *stored, void *out);

/* ---------------------------------------------------------------- layer writer ------------ */

struct layer_writer_options {
	uint64_t virtual_size_bytes;   /* multiple of 4096, <= LAYER_VIRTUAL_SIZE_MAX */
	const char *parent_digest;     /* NULL or "" for a base layer */
	uint32_t chunk_blocks;         /* 0 = LAYER_CHUNK_BLOCKS_DEFAULT */
	int zstd_level;                /* 0 = no compression; chunks are stored raw if zstd is no smaller */
	bool detect_zero_blocks;       /* all-zero DATA blocks become ZERO extents */
};

/* Starts a layer in a temp file of the store. */
int layer_writer_create(struct layer_store *store, const struct layer_writer_options *opts,
			struct layer_writer **out);
/* Adds block_count blocks of data starting at block_index.  Calls must come in strictly
 * increasing, non-overlapping block order (-EINVAL otherwise). */
int layer_writer_add_data(struct layer_writer *w, uint64_t block_index, const void *data, uint64_t block_count);
/* Marks blocks as zero in this layer (they mask the layers below). Same ordering rule. */
int layer_writer_add_zero(struct layer_writer *w, uint64_t block_index, uint64_t block_count);
/* Finishes the file (index, header), fsyncs it, hashes it, renames it to its digest name and
 * fsyncs the directory; digest_out receives "sha256:<hex>".  If an identical layer already exists
 * the temp file is discarded and the digest returned.  Frees w in every case. */
int layer_writer_commit(struct layer_writer *w, char digest_out[SHA256_DIGEST_STRLEN]);
/* The same, and *opened receives the published layer, open (so pinned: see layer_open) from
 * before the store could see it, so no gc can remove it until the caller has written the record
 * that references it and closed it.  Without this, a layer nothing references yet may be removed
 * by a gc at any moment after layer_writer_commit returns. */
int layer_writer_commit_open(struct layer_writer *w, char digest_out[SHA256_DIGEST_STRLEN], struct layer **opened);
/* Discards the temp file and frees w. */
void layer_writer_abort(struct layer_writer *w);

/* ---------------------------------------------------------------- records ----------------- */

struct image_record {
	char name[OCIBLK_NAME_MAX + 1];
	uint64_t size_bytes;                               /* device size */
	uint32_t layer_count;                              /* 1..LAYER_CHAIN_MAX */
	char layers[LAYER_CHAIN_MAX][SHA256_DIGEST_STRLEN];/* bottom first */
	int64_t created_unix;
	char *extra_json;  /* NULL or a JSON object owned by the record (free with image_record_clear) */
};

struct container_record {
	char name[OCIBLK_NAME_MAX + 1];
	char image[OCIBLK_NAME_MAX + 1];                   /* the image it was created from (informative) */
	uint64_t size_bytes;
	uint32_t layer_count;
	char layers[LAYER_CHAIN_MAX][SHA256_DIGEST_STRLEN];/* its current chain, bottom first */
	int64_t created_unix;
};

void image_record_clear(struct image_record *rec); /* frees extra_json */

/* Image records.  put replaces atomically (validates the name and that every layer exists);
 * get fills *out (-ENOENT when missing); remove deletes the record only, gc reclaims layers. */
int layer_store_image_put(struct layer_store *store, const struct image_record *rec);
int layer_store_image_get(struct layer_store *store, const char *name, struct image_record *out);
int layer_store_image_remove(struct layer_store *store, const char *name);
/* Calls fn for each image name in sorted order. */
int layer_store_image_foreach(struct layer_store *store, int (*fn)(const char *name, void *opaque), void *opaque);

/* Container records.  create makes the record and its directory from an image (-EEXIST if the
 * name is taken); put rewrites it (cow/ uses this after a commit); remove deletes the record and
 * its directory (upper included). */
int layer_store_container_create(struct layer_store *store, const char *image, const char *name);
int layer_store_container_put(struct layer_store *store, const struct container_record *rec);
int layer_store_container_get(struct layer_store *store, const char *name, struct container_record *out);
int layer_store_container_remove(struct layer_store *store, const char *name);
int layer_store_container_foreach(struct layer_store *store, int (*fn)(const char *name, void *opaque), void *opaque);
/* The container's private directory (for cow/'s upper files). */
int layer_store_container_dir(struct layer_store *store, const char *name, char *out, size_t out_len);
/* Exclusive per-container lock (flock on its directory's lock file), held while a device has the
 * container open read-write: a second opener gets -EBUSY.  Returns an fd to close to release. */
int layer_store_container_lock(struct layer_store *store, const char *name);
/* The same lock shared, held while a device has the container open read-only: any number of
 * read-only opens coexist; -EBUSY while it is open read-write (and a read-write open, or a
 * remove, gets -EBUSY while any read-only open holds it). */
int layer_store_container_lock_shared(struct layer_store *store, const char *name);
/* Whether a device has the container open (1) or not (0), or -errno; logs nothing.  The probe
 * holds the lock only under the store lock, so it never makes a concurrent open fail; attempts of
 * the two functions above are made under the store lock for the same reason. */
int layer_store_container_in_use(struct layer_store *store, const char *name);

/* Chain-id records: OCI chain id ("sha256:<hex>") -> layer digest. */
int layer_store_chain_put(struct layer_store *store, const char *chain_id, const char *layer_digest);
/* 0 and fills layer_digest_out, or -ENOENT. A record whose layer is gone counts as missing. */
int layer_store_chain_get(struct layer_store *store, const char *chain_id, char layer_digest_out[SHA256_DIGEST_STRLEN]);

/* ---------------------------------------------------------------- gc / fsck --------------- */

struct layer_store_gc_stats {
	uint64_t layers_removed;
	uint64_t bytes_freed;
	uint64_t temp_files_removed;
	uint64_t chain_records_removed;
	uint64_t layers_in_use;     /* unreferenced but open (pinned) somewhere: kept */
};
/* References of a layer: the number of image and container records whose chain contains it. */
int layer_store_layer_refcount(struct layer_store *store, const char *digest, uint64_t *count);
/* Removes layers no record references and nobody has open, chain records of removed layers, and
 * temp files older than min_tmp_age_seconds that nobody holds (layer_store_tmp_hold; temps of
 * atomic writes inside a container directory are left while the process that wrote them lives).
 * Work in progress is recognised by its locks, not by its age: the age only covers the instant
 * between creating a temp and holding it. */
int layer_store_gc(struct layer_store *store, unsigned min_tmp_age_seconds, struct layer_store_gc_stats *stats);
/* Removes one layer if no record references it and nobody has it open (for a failed import
 * cleaning up after itself): 1 removed, 0 kept, -errno. */
int layer_store_layer_remove_unused(struct layer_store *store, const char *digest);

struct layer_store_fsck_report {
	uint64_t layers_checked;
	uint64_t images_checked;
	uint64_t containers_checked;
	uint64_t errors;     /* each one was logged with what and where */
};
/* Re-hashes every layer, re-checks every chunk checksum, parent links, and every record's
 * references.  Returns 0 when clean, -EUCLEAN when errors were found (report says how many). */
int layer_store_fsck(struct layer_store *store, struct layer_store_fsck_report *report);

#endif
