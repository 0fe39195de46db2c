/* image-import: OCI and Docker images become verified, deterministic block layers.
 *
 * Sources use skopeo's transport names:
 *   oci:DIR[:TAG]                  an OCI image layout directory
 *   oci-archive:FILE[:TAG]         the same layout in a tar file
 *   docker-archive:FILE[:NAME:TAG] what `docker save` writes (legacy and OCI-layout forms)
 * Every blob is verified against its sha256 digest and every uncompressed layer against the
 * config's rootfs.diff_ids before anything reaches the store.  Each tar layer is applied through
 * libext2fs to the ext4 filesystem on the cow/ device formed by the layers below it; the blocks
 * it changes become the layer's block layer, stored under the layer's OCI chain id so that images
 * sharing base layers share block layers.  Bad input leaves the store exactly as it was; an
 * import killed midway leaves only temp files and unreferenced layer files, which gc removes
 * (records are written last, so no record ever names a half-imported image). */
#ifndef OCIBLK_IMAGE_IMPORT_H
#define OCIBLK_IMAGE_IMPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "layer-store/layer_store.h"

#define IMAGE_IMPORT_DEFAULT_SIZE_BYTES (10ull << 30)

struct image_import_options {
	const char *source;        /* transport:reference, as above */
	const char *image_name;    /* NULL: the source's tag / name */
	uint64_t size_bytes;       /* 0: IMAGE_IMPORT_DEFAULT_SIZE_BYTES */
	const char *platform;      /* NULL: the host's, e.g. "linux/amd64" */
	bool progress;             /* per-layer progress on stderr (a terminal) */
};

struct image_import_result {
	char image[OCIBLK_NAME_MAX + 1];
	uint32_t layer_count;
	uint32_t layers_reused;    /* chain ids already in the store */
	uint64_t bytes_read;       /* compressed bytes of layer blobs read */
	char top_layer[SHA256_DIGEST_STRLEN];
};

/* Imports one image.  Which one: the entry of index.json tagged TAG (annotation
 * org.opencontainers.image.ref.name), or the only entry; an image index (also nested, also the
 * Docker manifest list) picks opts->platform, else the host's.  For docker-archive, the image
 * whose RepoTags holds NAME:TAG (Docker's normalisation: "alpine:3" finds
 * "docker.io/library/alpine:3"), or the only one.
 * Name of the record, when opts->image_name is NULL: a TAG that is a full reference ("a/b:c"),
 * else "<basename of DIR or FILE without .tar>:<TAG>", else the basename; docker-archive: the
 * RepoTags entry.  An existing record of that name is replaced.
 * Sharing: a chain-id record maps the OCI chain id (at the default size; at another size, a key
 * derived from chain id and size, since the filesystem differs) to the layer holding it.
 * Determinism: the ext4 UUID and hash seed are derived from the bottom layer's chain id and the
 * invented timestamps are 0, so a chain's block layers are byte-identical whichever image or
 * machine brought them.  The record's extra_json holds source, manifest_digest (OCI sources),
 * config_digest, platform, created, layer_blobs, diff_ids and chain_ids.
 * Builds without the store lock (the layers it uses stay open, so gc keeps them) and holds it only
 * to publish the records (FORMAT.md section 4).
 * Returns 0 or -errno; every error is logged once, naming the image, the layer ("layer 2/5
 * (sha256:...)") and, for tar problems, the entry. */
int image_import(struct layer_store *store, const struct image_import_options *opts,
		 struct image_import_result *result);

/* Validates one JSON document the way image_import does (types, sizes, limits); 0 or -errno
 * (logged).  For the fuzz target and unit tests of the parsers. */
enum image_import_json_kind {
	IMAGE_IMPORT_JSON_INDEX = 1,          /* OCI index.json / image index / Docker manifest list */
	IMAGE_IMPORT_JSON_MANIFEST = 2,       /* OCI / Docker image manifest */
	IMAGE_IMPORT_JSON_CONFIG = 3,         /* OCI / Docker image config */
	IMAGE_IMPORT_JSON_DOCKER_MANIFEST = 4,/* docker-archive manifest.json */
};
int image_import_json_check(enum image_import_json_kind kind, const void *buf, size_t len);

/* Unpacks the archive at path as an import does (docker: docker-archive, else oci-archive) into
 * the store's tmp/, opens each of names as an archive member (following hard links and, for
 * docker-archive, symlinks with bounded hops) and reads it, then removes the unpacked files.
 * 0 when the archive unpacked (a missing member is not an error here), else -errno (logged).
 * For the fuzz target of archive member extraction. */
int image_import_archive_check(struct layer_store *store, const char *path, bool docker, const char *const *names,
			       unsigned name_count);

#endif
