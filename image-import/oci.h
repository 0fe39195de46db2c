/* Private to image-import/: OCI / Docker JSON documents, image sources, verified layer streams.
 *
 * Everything here treats its input as hostile: JSON is validated field by field (types, sizes,
 * limits from common/limits.h) into fixed-size structs, archive members are never written under
 * a name taken from the archive, and every byte of a blob is hashed on its way through. */
#ifndef OCIBLK_IMAGE_IMPORT_OCI_H
#define OCIBLK_IMAGE_IMPORT_OCI_H
#ifndef OCIBLK_IMAGE_IMPORT_INTERNAL
#error "oci.h is private to image-import/"
#endif

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/limits.h"
#include "common/sha256.h"

struct layer_store;
struct archive;

#define OCI_MEDIA_TYPE_MAX 128
#define OCI_REF_NAME_MAX 256
#define OCI_PLATFORM_FIELD_MAX 32

/* ---------------------------------------------------------------- media types --------------- */

enum oci_kind {
	OCI_KIND_UNKNOWN = 0,
	OCI_KIND_INDEX,
	OCI_KIND_MANIFEST,
	OCI_KIND_CONFIG,
	OCI_KIND_LAYER,
};

enum oci_compression {
	OCI_COMPRESSION_NONE = 0,
	OCI_COMPRESSION_GZIP,
	OCI_COMPRESSION_ZSTD,
	OCI_COMPRESSION_DETECT, /* Docker layers and docker-archive members: gzip, zstd or plain */
};

/* Classifies a media type; for layers *compression says how the blob is compressed.
 * OCI_KIND_UNKNOWN for anything we do not support. */
enum oci_kind oci_media_type_kind(const char *media_type, enum oci_compression *compression);

/* ---------------------------------------------------------------- documents ----------------- */

struct oci_platform {
	char os[OCI_PLATFORM_FIELD_MAX];
	char architecture[OCI_PLATFORM_FIELD_MAX];
	char variant[OCI_PLATFORM_FIELD_MAX];
};

struct oci_descriptor {
	char media_type[OCI_MEDIA_TYPE_MAX];
	char digest[SHA256_DIGEST_STRLEN];
	uint64_t size_bytes;
	char ref_name[OCI_REF_NAME_MAX];     /* annotation org.opencontainers.image.ref.name, or "" */
	bool has_platform;
	struct oci_platform platform;
};

struct oci_index {
	uint32_t count;
	struct oci_descriptor manifests[IMAGE_IMPORT_INDEX_ENTRIES_MAX];
};

struct oci_manifest {
	struct oci_descriptor config;
	uint32_t layer_count;
	struct oci_descriptor layers[IMAGE_IMPORT_LAYERS_MAX];
};

struct oci_config {
	struct oci_platform platform;
	char created[64];                     /* as written, "" when absent */
	uint32_t diff_id_count;
	char diff_ids[IMAGE_IMPORT_LAYERS_MAX][SHA256_DIGEST_STRLEN];
};

/* One image of a docker-archive manifest.json; member names are as written (validated relative
 * paths without "..").  */
struct docker_archive_image {
	char config[IMAGE_IMPORT_ARCHIVE_NAME_MAX + 1];
	char repo_tag[OCI_REF_NAME_MAX];     /* the matching (or first) RepoTags entry, or "" */
	uint32_t layer_count;
	char layers[IMAGE_IMPORT_LAYERS_MAX][IMAGE_IMPORT_ARCHIVE_NAME_MAX + 1];
};

/* Parsers: 0 or -EINVAL / -E2BIG (logged: "<what>: <field>: <problem>").  what names the
 * document in messages ("image foo manifest sha256:..."). */
int oci_index_parse(const char *what, const void *buf, size_t len, struct oci_index *out);
int oci_manifest_parse(const char *what, const void *buf, size_t len, struct oci_manifest *out);
int oci_config_parse(const char *what, const void *buf, size_t len, struct oci_config *out);
/* Validates every entry; selects the one whose RepoTags holds ref (NAME:TAG), or with ref NULL
 * the only one (-EINVAL naming the choices when there are several). */
int docker_manifest_parse(const char *what, const void *buf, size_t len, const char *ref,
			  struct docker_archive_image *out);

/* "os/arch[/variant]" -> platform; 0 or -EINVAL. */
int oci_platform_parse(const char *s, struct oci_platform *out);
/* The host's platform (uname machine mapped to GOARCH names). */
void oci_platform_host(struct oci_platform *out);
/* 1 when have satisfies want (variant only compared when want has one). */
int oci_platform_match(const struct oci_platform *want, const struct oci_platform *have);
void oci_platform_format(const struct oci_platform *p, char *out, size_t out_len);

/* RFC 3339 "created" -> seconds since the epoch; 0 or -EINVAL. */
int oci_time_parse(const char *s, int64_t *out);

/* ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)). */
void oci_chain_ids(const char diff_ids[][SHA256_DIGEST_STRLEN], uint32_t count,
		   char chain_ids[][SHA256_DIGEST_STRLEN]);

/* ---------------------------------------------------------------- sources ------------------- */

enum oci_transport {
	OCI_TRANSPORT_DIR = 1,       /* oci:DIR[:TAG] */
	OCI_TRANSPORT_ARCHIVE,       /* oci-archive:FILE[:TAG] */
	OCI_TRANSPORT_DOCKER,        /* docker-archive:FILE[:NAME:TAG] */
};

struct oci_source; /* opaque */

/* Parses "transport:reference"; 0 or -EINVAL (logged). */
int oci_source_parse(const char *source, enum oci_transport *transport, char *path, size_t path_len,
		     char *ref, size_t ref_len);

/* Opens a source.  Archives are unpacked (only the members an image can use, under names we
 * choose) into a fresh directory in the store's tmp/; oci_source_close removes it. */
int oci_source_open(struct layer_store *store, const char *source, struct oci_source **out);
void oci_source_close(struct oci_source *src);
enum oci_transport oci_source_transport(const struct oci_source *src);
const char *oci_source_path(const struct oci_source *src);
const char *oci_source_ref(const struct oci_source *src);  /* "" when none */

/* Opens the blob named by digest (OCI layouts).  fd or -errno (-ENOENT logged). */
int oci_source_open_blob(struct oci_source *src, const char *digest);
/* Opens a member of a docker-archive by its (validated) name.  fd or -errno. */
int oci_source_open_member(struct oci_source *src, const char *name);
/* Reads a whole small file (a JSON document) at most max_bytes, verifying its sha256 against
 * expect_digest when non-NULL and its size against expect_size when != UINT64_MAX.  *out is
 * malloc'd and NUL-terminated.  digest_out (may be NULL) receives the computed digest. */
int oci_read_fd_verified(int fd, const char *what, size_t max_bytes, const char *expect_digest,
			 uint64_t expect_size, char **out, size_t *len_out, char digest_out[SHA256_DIGEST_STRLEN]);

/* ---------------------------------------------------------------- layer streams ------------- */

/* A layer blob on its way through: the compressed bytes are hashed (digest, size), decompressed
 * (gzip / zstd / none) and hashed again (diff id), and presented as a libarchive tar reader. */
struct layer_stream; /* opaque */

struct layer_stream_progress {
	void (*fn)(void *opaque, uint64_t compressed_bytes_read);
	void *opaque;
};

/* Takes ownership of fd.  expect_size (UINT64_MAX: unknown) bounds how much of the file is read. */
int layer_stream_open(int fd, enum oci_compression compression, uint64_t expect_size, const char *label,
		      const struct layer_stream_progress *progress, struct layer_stream **out);
/* The tar reader (valid until layer_stream_close). */
struct archive *layer_stream_tar(struct layer_stream *ls);
/* Reads every header of the tar, checking names (no absolute paths, no "..", bounded length and
 * count), and skips the data: the verification pass.  Errors name the entry. */
int layer_stream_scan(struct layer_stream *ls);
/* Reads what is left (the tar's trailing padding, the rest of the blob) and checks the blob's
 * digest and size and the tar's diff id.  Errors name what differed. */
int layer_stream_finish(struct layer_stream *ls, const char *expect_digest, uint64_t expect_size,
			const char *expect_diff_id);
void layer_stream_close(struct layer_stream *ls);
/* Valid after finish: what was computed. */
const char *layer_stream_digest(const struct layer_stream *ls);
const char *layer_stream_diff_id(const struct layer_stream *ls);
uint64_t layer_stream_compressed_bytes(const struct layer_stream *ls);

/* Validates a name from a tar (layer entry or archive member): relative after stripping "./"
 * and leading "/" is NOT done: absolute paths are rejected, as is any ".." component. */
int oci_path_check(const char *name);

#endif
