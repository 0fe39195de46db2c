/* image_import(): resolve an image in a source, verify all of it, then build its block layers.
 *
 * Phases, in order:
 *   1. resolve: index -> (platform) -> manifest -> config, every document verified against its
 *      descriptor's sha256 and size and parsed strictly (oci_json.c);
 *   2. verify: every layer blob is read once end to end (layer_stream.c): digest, size, diff id
 *      against the config, tar headers and names.  Nothing has been written yet;
 *   3. build: layers whose chain id is in the store are reused (decided and opened under the store
 *      lock); the others are applied bottom up with ext4_apply on a scratch cow device over the
 *      chain below, and committed as layers (the stream is hashed again while it is applied, so
 *      what was applied is what was verified).  This runs without the store lock: every layer of
 *      the chain stays open on the scratch device, which pins it against gc;
 *   4. publish, under the store lock: chain-id records, then the image record; then the scratch
 *      device (and with it the pins) is closed.
 * Invariants: records are written only in phase 4; a failure removes the layers this import
 * built unless something else references or holds them, so bad input leaves the store as it
 * was apart from tmp/; a killed import leaves unreferenced layers that the next gc removes.  The ext4 parameters come from the chain id of the bottom layer and the
 * timestamp is fixed, so a given chain always yields byte-identical block layers whichever image
 * brought it, which is what makes sharing layers by chain id sound. */
#define OCIBLK_IMAGE_IMPORT_INTERNAL
#include "image-import/image_import.h"
#include "image-import/ext4_apply.h"
#include "image-import/oci.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/vfs.h"
#include "cow/cow.h"

struct import_layer {
	struct oci_descriptor desc;      /* digest "" for docker-archive (computed in verify) */
	enum oci_compression compression;
	char member[IMAGE_IMPORT_ARCHIVE_NAME_MAX + 1];  /* docker-archive member, else "" */
	char diff_id[SHA256_DIGEST_STRLEN];
	char chain_id[SHA256_DIGEST_STRLEN];
	char chain_key[SHA256_DIGEST_STRLEN];           /* chain-id record key (see chain_key) */
	char layer_digest[SHA256_DIGEST_STRLEN];        /* block layer in the store */
};

struct import {
	struct layer_store *store;
	const struct image_import_options *opts;
	struct oci_source *src;
	char name[OCIBLK_NAME_MAX + 1];
	char manifest_digest[SHA256_DIGEST_STRLEN];      /* "" for legacy docker-archive */
	char config_digest[SHA256_DIGEST_STRLEN];
	char ref_name[OCI_REF_NAME_MAX];                 /* tag found in the source, or "" */
	struct oci_platform platform;
	bool platform_explicit;
	uint64_t size_bytes;
	struct oci_config *config;
	uint32_t layer_count;
	struct import_layer *layers;
	uint32_t built_from, built_count;                /* layers [from, from+count) built here */
	/* progress */
	bool progress;
	const char *phase;
	uint32_t cur_layer;
	uint64_t cur_total;
	struct timespec cur_start, last_print;
};

/* ---------------------------------------------------------------- progress --------------- */

static double ts_seconds(const struct timespec *a, const struct timespec *b)
{
	return (double)(b->tv_sec - a->tv_sec) + (double)(b->tv_nsec - a->tv_nsec) / 1e9;
}

static void progress_print(struct import *im, uint64_t done, bool final)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (!final && ts_seconds(&im->last_print, &now) < 0.2) return;
	im->last_print = now;
	double el = ts_seconds(&im->cur_start, &now);
	double rate = el > 0 ? (double)done / el : 0;
	char eta[32] = "";
	if (!final && rate > 0 && im->cur_total >= done)
		snprintf(eta, sizeof(eta), ", ETA %.0fs", (double)(im->cur_total - done) / rate);
	fprintf(stderr, "\r\033[K%s layer %u/%u: %.1f/%.1f MiB, %.1f MiB/s%s%s", im->phase, im->cur_layer + 1,
		im->layer_count, (double)done / 1048576.0, (double)im->cur_total / 1048576.0, rate / 1048576.0, eta,
		final ? "\n" : "");
}

static void progress_cb(void *opaque, uint64_t done)
{
	struct import *im = opaque;
	progress_print(im, done, false);
}

static void progress_start(struct import *im, const char *phase, uint32_t layer, uint64_t total)
{
	im->phase = phase;
	im->cur_layer = layer;
	im->cur_total = total;
	clock_gettime(CLOCK_MONOTONIC, &im->cur_start);
	im->last_print = (struct timespec){ 0, 0 };
}

/* ---------------------------------------------------------------- resolve ---------------- */

static int read_blob_json(struct import *im, const struct oci_descriptor *d, const char *what, char **buf, size_t *len)
{
	int fd = oci_source_open_blob(im->src, d->digest);
	if (fd < 0) return fd;
	char w[512];
	snprintf(w, sizeof(w), "%s %s", what, d->digest);
	int r = oci_read_fd_verified(fd, w, IMAGE_IMPORT_JSON_BYTES_MAX, d->digest, d->size_bytes, buf, len, NULL);
	close(fd);
	return r;
}

/* Picks the entry for the wanted platform; entries without a platform are not candidates unless
 * they are the only entry. */
static int index_pick_platform(struct import *im, const char *what, const struct oci_descriptor *list,
			       uint32_t count, const struct oci_descriptor **out)
{
	if (count == 1 && !list[0].has_platform) {
		*out = &list[0];
		return 0;
	}
	for (uint32_t i = 0; i < count; i++) {
		if (list[i].has_platform && oci_platform_match(&im->platform, &list[i].platform)) {
			*out = &list[i];
			return 0;
		}
	}
	char want[128], have[1024] = "";
	oci_platform_format(&im->platform, want, sizeof(want));
	for (uint32_t i = 0; i < count && strlen(have) < 900; i++) {
		char p[100];
		if (!list[i].has_platform) continue;
		oci_platform_format(&list[i].platform, p, sizeof(p));
		strcat(have, have[0] ? ", " : "");
		strncat(have, p, sizeof(have) - strlen(have) - 1);
	}
	return log_error(-ENOENT, "%s: no image for platform %s (has: %s); choose one with --platform", what, want,
			 have[0] ? have : "none");
}

static int resolve_manifest(struct import *im, struct oci_descriptor desc, struct oci_manifest *m)
{
	char *buf = NULL;
	size_t len;
	int r;
	/* An index may name an index (skopeo --all writes one): bounded nesting. */
	for (int depth = 0; depth < 4; depth++) {
		enum oci_kind kind = oci_media_type_kind(desc.media_type, NULL);
		char what[512];
		snprintf(what, sizeof(what), "image %s", im->name[0] ? im->name : oci_source_path(im->src));
		if (kind == OCI_KIND_MANIFEST) {
			if ((r = read_blob_json(im, &desc, "manifest", &buf, &len)) < 0) return r;
			snprintf(what, sizeof(what), "manifest %s", desc.digest);
			r = oci_manifest_parse(what, buf, len, m);
			free(buf);
			if (r == 0) memcpy(im->manifest_digest, desc.digest, SHA256_DIGEST_STRLEN);
			return r;
		}
		if (kind != OCI_KIND_INDEX)
			return log_error(-EINVAL, "%s: unsupported media type %s for manifest %s", what, desc.media_type,
					 desc.digest);
		if ((r = read_blob_json(im, &desc, "image index", &buf, &len)) < 0) return r;
		struct oci_index *idx = malloc(sizeof(*idx));
		if (!idx) {
			free(buf);
			return log_error(-ENOMEM, "%s: out of memory", what);
		}
		snprintf(what, sizeof(what), "image index %s", desc.digest);
		r = oci_index_parse(what, buf, len, idx);
		free(buf);
		const struct oci_descriptor *pick = NULL;
		if (r == 0) r = index_pick_platform(im, what, idx->manifests, idx->count, &pick);
		if (r == 0) desc = *pick;
		free(idx);
		if (r < 0) return r;
	}
	return log_error(-ELOOP, "image %s: image indexes nested too deep", oci_source_path(im->src));
}

static int resolve_oci(struct import *im, struct oci_manifest *m)
{
	const char *src_path = oci_source_path(im->src);
	const char *ref = oci_source_ref(im->src);
	char *buf = NULL;
	size_t len;
	int fd, r;
	if (oci_source_transport(im->src) == OCI_TRANSPORT_DIR) {
		char p[OCIBLK_PATH_MAX + 16];
		snprintf(p, sizeof(p), "%s/index.json", src_path);
		fd = open(p, O_RDONLY | O_CLOEXEC);
		if (fd < 0) return log_error(-errno, "open %s: %s", p, strerror(errno));
	} else {
		fd = oci_source_open_member(im->src, "index.json");
		if (fd < 0) return fd;
	}
	char what[OCIBLK_PATH_MAX + 32];
	snprintf(what, sizeof(what), "%s index.json", src_path);
	r = oci_read_fd_verified(fd, what, IMAGE_IMPORT_JSON_BYTES_MAX, NULL, UINT64_MAX, &buf, &len, NULL);
	close(fd);
	if (r < 0) return r;
	struct oci_index *idx = malloc(sizeof(*idx));
	if (!idx) {
		free(buf);
		return log_error(-ENOMEM, "%s: out of memory", what);
	}
	r = oci_index_parse(what, buf, len, idx);
	free(buf);
	if (r < 0) goto out;
	/* Candidates: the entries tagged ref, or all of them. */
	struct oci_descriptor *cand = malloc(sizeof(*cand) * (idx->count ? idx->count : 1));
	uint32_t n = 0;
	if (!cand) {
		r = log_error(-ENOMEM, "%s: out of memory", what);
		goto out;
	}
	for (uint32_t i = 0; i < idx->count; i++)
		if (!ref[0] || strcmp(idx->manifests[i].ref_name, ref) == 0) cand[n++] = idx->manifests[i];
	const struct oci_descriptor *pick = NULL;
	if (n == 0) {
		r = ref[0] ? log_error(-ENOENT, "%s: no image tagged %s", what, ref)
			   : log_error(-ENOENT, "%s: no images", what);
	} else if (n == 1) {
		pick = &cand[0];
	} else {
		bool all_platform = true;
		for (uint32_t i = 0; i < n; i++) all_platform &= cand[i].has_platform;
		if (all_platform) {
			r = index_pick_platform(im, what, cand, n, &pick);
		} else {
			r = log_error(-EINVAL, "%s: holds %u images: choose one with %s:TAG", what, n,
				      oci_source_transport(im->src) == OCI_TRANSPORT_DIR ? "oci:DIR" : "oci-archive:FILE");
		}
	}
	if (r == 0) {
		snprintf(im->ref_name, sizeof(im->ref_name), "%s", pick->ref_name[0] ? pick->ref_name : ref);
		r = resolve_manifest(im, *pick, m);
	}
	free(cand);
out:
	free(idx);
	return r;
}

static int resolve_config_and_layers_oci(struct import *im, const struct oci_manifest *m)
{
	char *buf;
	size_t len;
	int r;
	if (oci_media_type_kind(m->config.media_type, NULL) != OCI_KIND_CONFIG)
		return log_error(-EINVAL, "image %s manifest %s: unsupported media type %s for the config", im->name,
				 im->manifest_digest, m->config.media_type);
	if ((r = read_blob_json(im, &m->config, "config", &buf, &len)) < 0) return r;
	char what[256];
	snprintf(what, sizeof(what), "config %s", m->config.digest);
	r = oci_config_parse(what, buf, len, im->config);
	free(buf);
	if (r < 0) return r;
	memcpy(im->config_digest, m->config.digest, SHA256_DIGEST_STRLEN);
	im->layer_count = m->layer_count;
	for (uint32_t i = 0; i < m->layer_count; i++) {
		struct import_layer *l = &im->layers[i];
		l->desc = m->layers[i];
		if (oci_media_type_kind(l->desc.media_type, &l->compression) != OCI_KIND_LAYER)
			return log_error(-EINVAL, "image %s layer %u/%u (%s): unsupported media type %s",
					 im->name[0] ? im->name : oci_source_path(im->src), i + 1, m->layer_count,
					 l->desc.digest, l->desc.media_type);
	}
	return 0;
}

/* The hex of "blobs/sha256/<hex>" or "<hex>.json" / "<hex>", or NULL. */
static bool digest_from_member_name(const char *name, char out[SHA256_DIGEST_STRLEN])
{
	const char *base = strrchr(name, '/');
	base = base ? base + 1 : name;
	size_t n = strlen(base);
	if (n == SHA256_HEX_LEN + 5 && strcmp(base + SHA256_HEX_LEN, ".json") == 0) n = SHA256_HEX_LEN;
	if (n != SHA256_HEX_LEN) return false;
	snprintf(out, SHA256_DIGEST_STRLEN, "sha256:%.*s", SHA256_HEX_LEN, base);
	return sha256_parse_digest(out, NULL) == 0;
}

static int resolve_docker(struct import *im)
{
	const char *ref = oci_source_ref(im->src);
	char *buf;
	size_t len;
	int r;
	int fd = oci_source_open_member(im->src, "manifest.json");
	if (fd < 0) return fd;
	char what[OCIBLK_PATH_MAX + 32];
	snprintf(what, sizeof(what), "%s manifest.json", oci_source_path(im->src));
	r = oci_read_fd_verified(fd, what, IMAGE_IMPORT_JSON_BYTES_MAX, NULL, UINT64_MAX, &buf, &len, NULL);
	close(fd);
	if (r < 0) return r;
	struct docker_archive_image *img = malloc(sizeof(*img));
	if (!img) {
		free(buf);
		return log_error(-ENOMEM, "%s: out of memory", what);
	}
	r = docker_manifest_parse(what, buf, len, ref[0] ? ref : NULL, img);
	free(buf);
	if (r < 0) goto out;
	snprintf(im->ref_name, sizeof(im->ref_name), "%s", img->repo_tag);
	/* The config's name is its digest in both forms `docker save` writes: check it. */
	char named[SHA256_DIGEST_STRLEN];
	bool has_named = digest_from_member_name(img->config, named);
	if ((fd = oci_source_open_member(im->src, img->config)) < 0) {
		r = fd;
		goto out;
	}
	snprintf(what, sizeof(what), "%s config %s", oci_source_path(im->src), img->config);
	r = oci_read_fd_verified(fd, what, IMAGE_IMPORT_JSON_BYTES_MAX, has_named ? named : NULL, UINT64_MAX, &buf,
				 &len, im->config_digest);
	close(fd);
	if (r < 0) goto out;
	r = oci_config_parse(what, buf, len, im->config);
	free(buf);
	if (r < 0) goto out;
	im->layer_count = img->layer_count;
	for (uint32_t i = 0; i < img->layer_count; i++) {
		struct import_layer *l = &im->layers[i];
		memcpy(l->member, img->layers[i], sizeof(l->member));
		l->compression = OCI_COMPRESSION_DETECT;
		l->desc.size_bytes = UINT64_MAX;
		/* OCI-form saves name layers by digest: verify that too. */
		if (!digest_from_member_name(l->member, l->desc.digest) || strstr(l->member, "blobs/sha256/") != l->member)
			l->desc.digest[0] = '\0';
	}
out:
	free(img);
	return r;
}

/* ---------------------------------------------------------------- naming ----------------- */

static int choose_name(struct import *im)
{
	const struct image_import_options *o = im->opts;
	if (o->image_name) {
		snprintf(im->name, sizeof(im->name), "%s", o->image_name);
		if (strlen(o->image_name) > OCIBLK_NAME_MAX)
			return log_error(-EINVAL, "image name %.64s...: longer than %u", o->image_name, OCIBLK_NAME_MAX);
		return layer_store_name_validate("image", im->name);
	}
	const char *tag = im->ref_name;
	char base[OCIBLK_PATH_MAX];
	snprintf(base, sizeof(base), "%s", oci_source_path(im->src));
	size_t bl = strlen(base);
	while (bl > 1 && base[bl - 1] == '/') base[--bl] = '\0';
	char *b = basename(base);
	size_t n = strlen(b);
	if (oci_source_transport(im->src) != OCI_TRANSPORT_DIR) {
		static const char *const ext[] = { ".tar.gz", ".tgz", ".tar.zst", ".tar" };
		for (size_t i = 0; i < sizeof(ext) / sizeof(ext[0]); i++) {
			size_t el = strlen(ext[i]);
			if (n > el && strcmp(b + n - el, ext[i]) == 0) {
				b[n - el] = '\0';
				break;
			}
		}
	}
	int w;
	if (tag[0] && (strchr(tag, ':') || strchr(tag, '/') || oci_source_transport(im->src) == OCI_TRANSPORT_DOCKER))
		w = snprintf(im->name, sizeof(im->name), "%s", tag);        /* a full reference */
	else if (tag[0])
		w = snprintf(im->name, sizeof(im->name), "%s:%s", b, tag);
	else
		w = snprintf(im->name, sizeof(im->name), "%s", b);
	if (w < 0 || (size_t)w > OCIBLK_NAME_MAX)
		return log_error(-EINVAL, "image name from %s is too long: use --name", o->source);
	if (layer_store_name_validate("image", im->name) < 0)
		return log_error(-EINVAL, "cannot name the image from %s: use --name", o->source);
	return 0;
}

/* ---------------------------------------------------------------- verify ----------------- */

static int layer_open_stream(struct import *im, uint32_t i, const char *label, bool progress, struct layer_stream **out)
{
	struct import_layer *l = &im->layers[i];
	int fd = l->member[0] ? oci_source_open_member(im->src, l->member) : oci_source_open_blob(im->src, l->desc.digest);
	if (fd < 0) return fd;
	struct layer_stream_progress p = { .fn = progress_cb, .opaque = im };
	return layer_stream_open(fd, l->compression, l->desc.size_bytes, label, progress ? &p : NULL, out);
}

static void layer_label(struct import *im, uint32_t i, char *out, size_t out_len)
{
	struct import_layer *l = &im->layers[i];
	snprintf(out, out_len, "image %s layer %u/%u (%s)", im->name, i + 1, im->layer_count,
		 l->desc.digest[0] ? l->desc.digest : l->member);
}

static int verify_blob_digest(struct import *im, uint32_t i, const char *label)
{
	struct import_layer *l = &im->layers[i];
	int fd = l->member[0] ? oci_source_open_member(im->src, l->member) : oci_source_open_blob(im->src, l->desc.digest);
	if (fd < 0) return fd;
	struct sha256_ctx *ctx;
	int r = sha256_ctx_new(&ctx);
	if (r < 0) {
		close(fd);
		return log_error(r, "%s: out of memory", label);
	}
	static unsigned char buf[1 << 20];
	uint64_t total = 0;
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR) continue;
		if (n < 0) {
			r = log_error(-errno, "%s: read blob: %s", label, strerror(errno));
			break;
		}
		if (n == 0) break;
		total += (uint64_t)n;
		if (l->desc.size_bytes != UINT64_MAX && total > l->desc.size_bytes) break;
		sha256_ctx_update(ctx, buf, (size_t)n);
	}
	uint8_t bin[SHA256_BYTES];
	char d[SHA256_DIGEST_STRLEN];
	sha256_ctx_final(ctx, bin);
	sha256_ctx_free(ctx);
	close(fd);
	if (r < 0) return r;
	sha256_format_digest(bin, d);
	if (l->desc.size_bytes != UINT64_MAX && total != l->desc.size_bytes)
		return log_error(-EINVAL, "%s: blob size is %s%llu bytes, descriptor says %llu", label,
				 total > l->desc.size_bytes ? "more than " : "", (unsigned long long)total,
				 (unsigned long long)l->desc.size_bytes);
	if (strcmp(d, l->desc.digest) != 0)
		return log_error(-EINVAL, "%s: digest mismatch: blob is %s, descriptor says %s", label, d, l->desc.digest);
	return 0;
}

static int verify_layers(struct import *im)
{
	for (uint32_t i = 0; i < im->layer_count; i++) {
		struct import_layer *l = &im->layers[i];
		char label[1400];
		struct layer_stream *ls;
		layer_label(im, i, label, sizeof(label));
		if (im->progress) {
			uint64_t total = l->desc.size_bytes;
			if (total == UINT64_MAX) {
				int fd = l->member[0] ? oci_source_open_member(im->src, l->member) : -1;
				off_t end = fd >= 0 ? lseek(fd, 0, SEEK_END) : 0;
				total = end > 0 ? (uint64_t)end : 0;
				if (fd >= 0) close(fd);
			}
			progress_start(im, "verify", i, total);
		}
		/* The digest first: no decompressor sees bytes that are not the blob we were promised. */
		int r = l->desc.digest[0] ? verify_blob_digest(im, i, label) : 0;
		if (r < 0) return r;
		r = layer_open_stream(im, i, label, im->progress, &ls);
		if (r < 0) return r;
		r = layer_stream_scan(ls);
		if (r == 0)
			r = layer_stream_finish(ls, l->desc.digest[0] ? l->desc.digest : NULL, l->desc.size_bytes, l->diff_id);
		if (r == 0) {
			if (!l->desc.digest[0]) memcpy(l->desc.digest, layer_stream_digest(ls), SHA256_DIGEST_STRLEN);
			if (l->desc.size_bytes == UINT64_MAX) l->desc.size_bytes = layer_stream_compressed_bytes(ls);
			if (im->progress) progress_print(im, layer_stream_compressed_bytes(ls), true);
		}
		layer_stream_close(ls);
		if (r < 0) {
			if (im->progress) fputc('\n', stderr);
			return r;
		}
	}
	return 0;
}

/* ---------------------------------------------------------------- build ------------------ */

/* The key of a layer's chain-id record: the OCI chain id at the default device size; at another
 * size the filesystem differs, so the key also covers the size. */
static void chain_key(const char *chain_id, uint64_t size_bytes, char out[SHA256_DIGEST_STRLEN])
{
	if (size_bytes == IMAGE_IMPORT_DEFAULT_SIZE_BYTES) {
		memcpy(out, chain_id, SHA256_DIGEST_STRLEN);
		return;
	}
	char buf[SHA256_DIGEST_STRLEN + 64];
	int n = snprintf(buf, sizeof(buf), "%s ociblk-size %llu", chain_id, (unsigned long long)size_bytes);
	uint8_t bin[SHA256_BYTES];
	sha256_buffer(buf, (size_t)n, bin);
	sha256_format_digest(bin, out);
}

static void derive_params(const char *bottom_chain_id, struct ext4_params *p)
{
	uint8_t bin[SHA256_BYTES];
	char buf[128];
	int n = snprintf(buf, sizeof(buf), "ociblk ext4 uuid %s", bottom_chain_id);
	sha256_buffer(buf, (size_t)n, bin);
	memcpy(p->uuid, bin, 16);
	p->uuid[6] = (uint8_t)((p->uuid[6] & 0x0f) | 0x40); /* RFC 4122 version 4 layout */
	p->uuid[8] = (uint8_t)((p->uuid[8] & 0x3f) | 0x80);
	n = snprintf(buf, sizeof(buf), "ociblk ext4 hash seed %s", bottom_chain_id);
	sha256_buffer(buf, (size_t)n, bin);
	memcpy(p->hash_seed, bin, 16);
	/* Fixed: a chain's block layers must not depend on which image brought it. */
	p->timestamp_unix = 0;
}

/* Is layer digest (found through a chain record) usable as layer i on top of parent? */
static int reusable(struct import *im, const char *digest, const char *parent)
{
	struct layer *layer;
	if (layer_open(im->store, digest, false, &layer) < 0) return 0;
	const struct layer_info *info = layer_get_info(layer);
	int ok = strcmp(info->parent_digest, parent) == 0 && info->virtual_size_bytes == im->size_bytes;
	layer_close(layer);
	return ok;
}

static int apply_layer(struct import *im, struct cow_device *dev, uint32_t i, const struct ext4_params *params)
{
	struct import_layer *l = &im->layers[i];
	char label[1400];
	struct ext4_apply *fs = NULL;
	struct layer_stream *ls = NULL;
	int r;
	layer_label(im, i, label, sizeof(label));
	if (im->progress) progress_start(im, "import", i, l->desc.size_bytes);
	/* mkfs/open/close log their own errors, named by label (logged once, at the origin). */
	r = i == 0 ? ext4_apply_mkfs(dev, params, label, &fs) : ext4_apply_open(dev, params, label, &fs);
	if (r < 0) goto out;
	if ((r = layer_open_stream(im, i, label, im->progress, &ls)) < 0) goto out;
	if ((r = ext4_apply_tar(fs, layer_stream_tar(ls), label)) < 0) goto out;
	/* The blob could have changed since it was verified: check what was applied. */
	if ((r = layer_stream_finish(ls, l->desc.digest, l->desc.size_bytes, l->diff_id)) < 0) goto out;
	r = ext4_apply_close(fs);
	fs = NULL;
	if (r < 0) goto out;
	if (im->progress) progress_print(im, layer_stream_compressed_bytes(ls), true);
out:
	if (fs) ext4_apply_abort(fs);
	layer_stream_close(ls);
	if (r < 0 && im->progress) fputc('\n', stderr);
	return r;
}

/* Phase 3.  *dev_out is the scratch device, left open: it holds every layer of the chain open,
 * which pins them against gc (layer_open) until phase 4 has written the records that reference
 * them; the caller closes it then.  im->built_count counts the layers committed here. */
static int build_layers(struct import *im, uint32_t *reused_out, struct cow_device **dev_out)
{
	const char *chain[IMAGE_IMPORT_LAYERS_MAX];
	struct cow_device *dev = NULL;
	uint32_t reused = 0;
	struct ext4_params params;
	int r;

	*dev_out = NULL;
	/* Deciding what to reuse and opening (pinning) it is one step under the store lock, so a gc
	 * cannot remove a reused layer in between; the long build below runs without the lock. */
	if ((r = layer_store_lock(im->store)) < 0) return r;
	for (; reused < im->layer_count; reused++) {
		struct import_layer *l = &im->layers[reused];
		char d[SHA256_DIGEST_STRLEN];
		if (layer_store_chain_get(im->store, l->chain_key, d) < 0) break;
		if (!reusable(im, d, reused ? im->layers[reused - 1].layer_digest : "")) break;
		memcpy(l->layer_digest, d, SHA256_DIGEST_STRLEN);
	}
	for (uint32_t i = 0; i < reused; i++) chain[i] = im->layers[i].layer_digest;
	r = cow_device_open_scratch(im->store, chain, reused, im->size_bytes, &dev);
	layer_store_unlock(im->store);
	if (r < 0) return log_error(r, "import %s: open scratch device: %s", im->name, strerror(-r));
	im->built_from = reused;
	derive_params(im->layers[0].chain_id, &params);
	for (uint32_t i = reused; i < im->layer_count; i++) {
		if ((r = apply_layer(im, dev, i, &params)) < 0) goto out;
		if ((r = cow_device_commit_layer(dev, im->layers[i].layer_digest)) < 0) {
			log_error(r, "import %s: commit layer %u/%u: %s", im->name, i + 1, im->layer_count, strerror(-r));
			goto out;
		}
		im->built_count++;
	}
	*reused_out = reused;
	*dev_out = dev;
	return 0;
out:
	(void)cow_device_close(dev);
	return r;
}

/* After a failure: the layers this import built are unreferenced; remove those nobody else uses
 * (an identical layer another import or commit holds open, or a record references, stays). */
static void remove_built_layers(struct import *im)
{
	for (uint32_t i = im->built_from; i < im->built_from + im->built_count; i++)
		(void)layer_store_layer_remove_unused(im->store, im->layers[i].layer_digest);
}

static char *build_extra_json(struct import *im)
{
	struct json_object *o = json_object_new_object(), *diffs = json_object_new_array(),
			   *chains = json_object_new_array(), *blobs = json_object_new_array();
	char plat[128];
	oci_platform_format(&im->config->platform, plat, sizeof(plat));
	json_object_object_add(o, "source", json_object_new_string(im->opts->source));
	if (im->manifest_digest[0]) json_object_object_add(o, "manifest_digest", json_object_new_string(im->manifest_digest));
	json_object_object_add(o, "config_digest", json_object_new_string(im->config_digest));
	json_object_object_add(o, "platform", json_object_new_string(plat));
	if (im->config->created[0]) json_object_object_add(o, "created", json_object_new_string(im->config->created));
	for (uint32_t i = 0; i < im->layer_count; i++) {
		json_object_array_add(diffs, json_object_new_string(im->layers[i].diff_id));
		json_object_array_add(chains, json_object_new_string(im->layers[i].chain_id));
		json_object_array_add(blobs, json_object_new_string(im->layers[i].desc.digest));
	}
	json_object_object_add(o, "layer_blobs", blobs);
	json_object_object_add(o, "diff_ids", diffs);
	json_object_object_add(o, "chain_ids", chains);
	char *s = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	json_object_put(o);
	return s;
}

/* ---------------------------------------------------------------- entry ------------------ */

int image_import(struct layer_store *store, const struct image_import_options *opts,
		 struct image_import_result *result)
{
	struct import im = { .store = store, .opts = opts, .progress = opts->progress };
	struct oci_manifest *m = NULL;
	struct image_record rec = { 0 };
	struct cow_device *dev = NULL;
	bool locked = false;
	int r;

	memset(result, 0, sizeof(*result));
	if (!opts->source) return log_error(-EINVAL, "import: no source");
	im.size_bytes = opts->size_bytes ? opts->size_bytes : IMAGE_IMPORT_DEFAULT_SIZE_BYTES;
	if (im.size_bytes % 4096 || im.size_bytes < IMAGE_IMPORT_SIZE_MIN_BYTES || im.size_bytes > LAYER_VIRTUAL_SIZE_MAX)
		return log_error(-EINVAL, "import %s: size %llu: must be a multiple of 4096 between %llu and %llu bytes",
				 opts->source, (unsigned long long)im.size_bytes,
				 (unsigned long long)IMAGE_IMPORT_SIZE_MIN_BYTES, (unsigned long long)LAYER_VIRTUAL_SIZE_MAX);
	if (opts->platform) {
		if ((r = oci_platform_parse(opts->platform, &im.platform)) < 0) return r;
		im.platform_explicit = true;
	} else {
		oci_platform_host(&im.platform);
	}
	im.config = calloc(1, sizeof(*im.config));
	im.layers = calloc(IMAGE_IMPORT_LAYERS_MAX, sizeof(*im.layers));
	m = calloc(1, sizeof(*m));
	if (!im.config || !im.layers || !m) {
		r = log_error(-ENOMEM, "import %s: out of memory", opts->source);
		goto out;
	}
	if ((r = oci_source_open(store, opts->source, &im.src)) < 0) goto out;

	/* 1. resolve */
	if (oci_source_transport(im.src) == OCI_TRANSPORT_DOCKER) {
		r = resolve_docker(&im);
	} else {
		r = resolve_oci(&im, m);
		if (r == 0) r = resolve_config_and_layers_oci(&im, m);
	}
	if (r < 0) goto out;
	if ((r = choose_name(&im)) < 0) goto out;
	if (im.config->diff_id_count != im.layer_count) {
		r = log_error(-EINVAL, "image %s: manifest has %u layers but config %s has %u diff_ids", im.name,
			      im.layer_count, im.config_digest, im.config->diff_id_count);
		goto out;
	}
	if (im.platform_explicit && !oci_platform_match(&im.platform, &im.config->platform)) {
		char want[128], have[128];
		oci_platform_format(&im.platform, want, sizeof(want));
		oci_platform_format(&im.config->platform, have, sizeof(have));
		r = log_error(-EINVAL, "image %s: config is for %s, not %s", im.name, have, want);
		goto out;
	}
	for (uint32_t i = 0; i < im.layer_count; i++) memcpy(im.layers[i].diff_id, im.config->diff_ids[i], SHA256_DIGEST_STRLEN);
	{
		char diffs[IMAGE_IMPORT_LAYERS_MAX][SHA256_DIGEST_STRLEN], chains[IMAGE_IMPORT_LAYERS_MAX][SHA256_DIGEST_STRLEN];
		for (uint32_t i = 0; i < im.layer_count; i++) memcpy(diffs[i], im.layers[i].diff_id, SHA256_DIGEST_STRLEN);
		oci_chain_ids((const char (*)[SHA256_DIGEST_STRLEN])diffs, im.layer_count, chains);
		for (uint32_t i = 0; i < im.layer_count; i++) {
			memcpy(im.layers[i].chain_id, chains[i], SHA256_DIGEST_STRLEN);
			chain_key(chains[i], im.size_bytes, im.layers[i].chain_key);
		}
	}

	struct timespec t_resolved, t_verified, t_built;
	clock_gettime(CLOCK_MONOTONIC, &t_resolved);
	/* 2. verify every blob before anything is written */
	if ((r = verify_layers(&im)) < 0) goto out;
	clock_gettime(CLOCK_MONOTONIC, &t_verified);
	for (uint32_t i = 0; i < im.layer_count; i++) result->bytes_read += im.layers[i].desc.size_bytes;

	/* 3. build (the new layers stay pinned by the scratch device), 4. publish under the lock */
	uint32_t reused = 0;
	if ((r = build_layers(&im, &reused, &dev)) < 0) goto out;
	clock_gettime(CLOCK_MONOTONIC, &t_built);
	log_debug("import %s: verify %.2fs, build %.2fs (%u of %u layers shared)", im.name,
		  ts_seconds(&t_resolved, &t_verified), ts_seconds(&t_verified, &t_built), reused, im.layer_count);
	if ((r = layer_store_lock(store)) < 0) goto out;
	locked = true;
	for (uint32_t i = reused; i < im.layer_count; i++) {
		if ((r = layer_store_chain_put(store, im.layers[i].chain_key, im.layers[i].layer_digest)) < 0) {
			log_error(r, "import %s: record chain id %s: %s", im.name, im.layers[i].chain_id, strerror(-r));
			goto out;
		}
	}
	snprintf(rec.name, sizeof(rec.name), "%s", im.name);
	rec.size_bytes = im.size_bytes;
	rec.layer_count = im.layer_count;
	for (uint32_t i = 0; i < im.layer_count; i++) memcpy(rec.layers[i], im.layers[i].layer_digest, SHA256_DIGEST_STRLEN);
	int64_t created = 0;
	if (!im.config->created[0] || oci_time_parse(im.config->created, &created) < 0) created = (int64_t)time(NULL);
	rec.created_unix = created;
	rec.extra_json = build_extra_json(&im);
	if (!rec.extra_json) {
		r = log_error(-ENOMEM, "import %s: out of memory", im.name);
		goto out;
	}
	if ((r = layer_store_image_put(store, &rec)) < 0) {
		log_error(r, "import %s: write image record: %s", im.name, strerror(-r));
		goto out;
	}
	snprintf(result->image, sizeof(result->image), "%s", im.name);
	result->layer_count = im.layer_count;
	result->layers_reused = reused;
	memcpy(result->top_layer, im.layers[im.layer_count - 1].layer_digest, SHA256_DIGEST_STRLEN);
	r = 0;
out:
	if (locked) layer_store_unlock(store);
	if (dev) {
		int rc = cow_device_close(dev);
		if (rc < 0 && r == 0) r = log_error(rc, "import %s: close scratch device: %s", im.name, strerror(-rc));
	}
	if (r < 0) remove_built_layers(&im);
	image_record_clear(&rec);
	oci_source_close(im.src);
	free(m);
	free(im.layers);
	free(im.config);
	return r;
}
