/* Private to layer-store/: the on-disk layout of a layer file (v1, see FORMAT.md) and helpers
 * shared by the store, the reader, the writer, gc and fsck.  Nothing outside layer-store/
 * includes this header. */
#ifndef OCIBLK_LAYER_STORE_PRIVATE_H
#define OCIBLK_LAYER_STORE_PRIVATE_H

#include "layer-store/layer_store.h"

#include <pthread.h>
#include <stdint.h>
#include <string.h>

/* ---- layer file v1 layout (every integer little-endian) ---- */
#define LF_MAGIC "OCIBLKLF"            /* 8 bytes at offset 0 */
#define LF_VERSION 1u
#define LF_HEADER_BYTES 4096u          /* the header occupies the first block */
#define LF_INDEX_ENTRY_BYTES 40u
#define LF_CHECKSUM_XXH3_64 1u
#define LF_COMPRESSION_NONE 0u
#define LF_COMPRESSION_ZSTD 1u
#define LF_FLAG_HAS_PARENT 1ull        /* the only defined flag; others must be 0 */

/* Header field offsets. */
#define LFH_MAGIC 0
#define LFH_VERSION 8
#define LFH_HEADER_BYTES 12
#define LFH_BLOCK_SIZE 16
#define LFH_CHUNK_BLOCKS 20
#define LFH_VIRTUAL_SIZE 24
#define LFH_FLAGS 32
#define LFH_COMPRESSION 40
#define LFH_CHECKSUM_TYPE 44
#define LFH_EXTENT_COUNT 48
#define LFH_INDEX_OFFSET 56
#define LFH_INDEX_LENGTH 64
#define LFH_INDEX_CHECKSUM 72
#define LFH_DATA_OFFSET 80
#define LFH_DATA_LENGTH 88
#define LFH_PARENT 96                  /* 32 bytes of binary sha256 */
#define LFH_RESERVED 128               /* zero up to LFH_HEADER_CHECKSUM */
#define LFH_HEADER_CHECKSUM 4088       /* XXH3-64 of bytes [0, 4088) */

/* Index entry field offsets. */
#define LFE_BLOCK_INDEX 0
#define LFE_BLOCK_COUNT 8
#define LFE_KIND 12
#define LFE_COMPRESSED 13
#define LFE_RESERVED16 14
#define LFE_OFFSET 16
#define LFE_STORED 24
#define LFE_RESERVED32 28
#define LFE_CHECKSUM 32

static inline void le_put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void le_put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static inline void le_put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static inline uint16_t le_get16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t le_get32(const uint8_t *p)
{
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
	return v;
}
static inline uint64_t le_get64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
	return v;
}

/* ---- the store handle ---- */
struct layer_store {
	char root[OCIBLK_PATH_MAX];
	int lock_fd;
	pthread_mutex_t mutex;   /* recursive: serialises threads sharing the handle */
	unsigned lock_depth;     /* flock held while > 0 */
};

/* "<root>/<sub>" into out; -ENAMETOOLONG when it does not fit. */
int ls_path(const struct layer_store *store, char *out, size_t out_len, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* Percent-encodes a validated name into a file name. */
int ls_name_encode(const char *name, char *out, size_t out_len);
int ls_name_decode(const char *enc, char *out, size_t out_len);
/* 1 when s is 64 lowercase hex digits. */
int ls_is_hex64(const char *s);
/* Removes a file or a directory tree (through vfs for files). */
int ls_remove_tree(const char *path);

/* "In use" is a flock (FORMAT.md section 4): users hold a shared one on a layer file or a temp
 * entry; gc removes an entry only under an exclusive one it got without waiting.
 * ls_hold_fd: shared flock on fd (waits while gc removes the entry), then -ENOENT if the entry is
 * gone (gc removed it first).  ls_claim: 1 and *fd_out holding the exclusive flock (or -1 when the
 * entry cannot be opened to be locked, e.g. a symlink: nobody can hold it), 0 when someone holds
 * it, -ENOENT when it is gone. */
int ls_hold_fd(int fd);
int ls_claim(const char *path, int *fd_out);

#endif
