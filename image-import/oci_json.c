/* OCI image-spec and Docker JSON documents -> fixed-size validated structs.
 *
 * Invariants: every document is parsed completely (trailing bytes other than whitespace are an
 * error), nested at most IMAGE_IMPORT_JSON_DEPTH_MAX deep, and every field we use is checked for
 * its JSON type, its length and its range before it is copied.  Fields we do not use are
 * ignored, as the specs require.  Each error is logged once, naming the document and the field. */
#define OCIBLK_IMAGE_IMPORT_INTERNAL
#include "image-import/oci.h"
#include "image-import/image_import.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>

#include "common/log.h"

enum oci_kind oci_media_type_kind(const char *mt, enum oci_compression *compression)
{
	static const struct {
		const char *type;
		enum oci_kind kind;
		enum oci_compression compression;
	} types[] = {
		{ "application/vnd.oci.image.index.v1+json", OCI_KIND_INDEX, 0 },
		{ "application/vnd.docker.distribution.manifest.list.v2+json", OCI_KIND_INDEX, 0 },
		{ "application/vnd.oci.image.manifest.v1+json", OCI_KIND_MANIFEST, 0 },
		{ "application/vnd.docker.distribution.manifest.v2+json", OCI_KIND_MANIFEST, 0 },
		{ "application/vnd.oci.image.config.v1+json", OCI_KIND_CONFIG, 0 },
		{ "application/vnd.docker.container.image.v1+json", OCI_KIND_CONFIG, 0 },
		{ "application/vnd.oci.image.layer.v1.tar", OCI_KIND_LAYER, OCI_COMPRESSION_NONE },
		{ "application/vnd.oci.image.layer.v1.tar+gzip", OCI_KIND_LAYER, OCI_COMPRESSION_GZIP },
		{ "application/vnd.oci.image.layer.v1.tar+zstd", OCI_KIND_LAYER, OCI_COMPRESSION_ZSTD },
		{ "application/vnd.oci.image.layer.nondistributable.v1.tar", OCI_KIND_LAYER, OCI_COMPRESSION_NONE },
		{ "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", OCI_KIND_LAYER, OCI_COMPRESSION_GZIP },
		{ "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", OCI_KIND_LAYER, OCI_COMPRESSION_ZSTD },
		/* Docker calls every layer "tar.gzip"; some writers store it uncompressed. */
		{ "application/vnd.docker.image.rootfs.diff.tar.gzip", OCI_KIND_LAYER, OCI_COMPRESSION_DETECT },
		{ "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", OCI_KIND_LAYER, OCI_COMPRESSION_DETECT },
	};
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		if (strcmp(mt, types[i].type) == 0) {
			if (compression) *compression = types[i].compression;
			return types[i].kind;
		}
	}
	return OCI_KIND_UNKNOWN;
}

/* Parses buf as exactly one JSON value. */
static int json_parse_strict(const char *what, const void *buf, size_t len, struct json_object **out)
{
	if (len > IMAGE_IMPORT_JSON_BYTES_MAX)
		return log_error(-E2BIG, "parse %s: %zu bytes, limit %u", what, len, IMAGE_IMPORT_JSON_BYTES_MAX);
	if (len == 0) return log_error(-EINVAL, "parse %s: empty document", what);
	struct json_tokener *tok = json_tokener_new_ex(IMAGE_IMPORT_JSON_DEPTH_MAX);
	if (!tok) return log_error(-ENOMEM, "parse %s: out of memory", what);
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	struct json_object *obj = json_tokener_parse_ex(tok, buf, (int)len);
	enum json_tokener_error jerr = json_tokener_get_error(tok);
	size_t used = json_tokener_get_parse_end(tok);
	json_tokener_free(tok);
	if (!obj || jerr != json_tokener_success) {
		if (obj) json_object_put(obj);
		return log_error(-EINVAL, "parse %s: malformed JSON: %s",
				 what, jerr == json_tokener_continue ? "unexpected end of document"
								   : json_tokener_error_desc(jerr));
	}
	const char *p = buf;
	for (size_t i = used; i < len; i++) {
		if (p[i] != ' ' && p[i] != '\n' && p[i] != '\r' && p[i] != '\t') {
			json_object_put(obj);
			return log_error(-EINVAL, "parse %s: malformed JSON: trailing data at byte %zu", what, i);
		}
	}
	*out = obj;
	return 0;
}

static int get_field(const char *what, struct json_object *obj, const char *key, enum json_type type,
		     bool required, struct json_object **out)
{
	struct json_object *v = NULL;
	*out = NULL;
	if (!json_object_object_get_ex(obj, key, &v) || (v == NULL && !required)) {
		if (required) return log_error(-EINVAL, "parse %s: missing field %s", what, key);
		return 0;
	}
	if (!json_object_is_type(v, type))
		return log_error(-EINVAL, "parse %s: field %s has the wrong type", what, key);
	*out = v;
	return 0;
}

static int copy_string(const char *what, const char *key, struct json_object *v, char *out, size_t out_len)
{
	size_t n = (size_t)json_object_get_string_len(v);
	const char *s = json_object_get_string(v);
	if (n >= out_len) return log_error(-EINVAL, "parse %s: field %s too long (%zu bytes)", what, key, n);
	if (memchr(s, '\0', n)) return log_error(-EINVAL, "parse %s: field %s contains NUL", what, key);
	memcpy(out, s, n);
	out[n] = '\0';
	return 0;
}

static int get_string(const char *what, struct json_object *obj, const char *key, bool required,
		      char *out, size_t out_len)
{
	struct json_object *v;
	int r = get_field(what, obj, key, json_type_string, required, &v);
	if (r < 0) return r;
	if (!v) {
		out[0] = '\0';
		return 0;
	}
	return copy_string(what, key, v, out, out_len);
}

static int check_digest(const char *what, const char *key, const char *d)
{
	if (sha256_parse_digest(d, NULL) == 0) return 0;
	if (strncmp(d, "sha256:", 7) != 0 && strchr(d, ':'))
		return log_error(-EINVAL, "parse %s: field %s: unsupported digest algorithm in %.80s", what, key, d);
	return log_error(-EINVAL, "parse %s: field %s: not a sha256 digest: %.80s", what, key, d);
}

static int parse_platform(const char *what, struct json_object *obj, struct oci_platform *p)
{
	int r;
	if ((r = get_string(what, obj, "os", true, p->os, sizeof(p->os))) < 0) return r;
	if ((r = get_string(what, obj, "architecture", true, p->architecture, sizeof(p->architecture))) < 0) return r;
	if ((r = get_string(what, obj, "variant", false, p->variant, sizeof(p->variant))) < 0) return r;
	return 0;
}

static int parse_descriptor(const char *what, struct json_object *obj, uint64_t size_max, struct oci_descriptor *d)
{
	struct json_object *v;
	int r;
	memset(d, 0, sizeof(*d));
	if (!json_object_is_type(obj, json_type_object))
		return log_error(-EINVAL, "parse %s: descriptor is not an object", what);
	if ((r = get_string(what, obj, "mediaType", true, d->media_type, sizeof(d->media_type))) < 0) return r;
	char digest[128];
	if ((r = get_string(what, obj, "digest", true, digest, sizeof(digest))) < 0) return r;
	if ((r = check_digest(what, "digest", digest)) < 0) return r;
	memcpy(d->digest, digest, SHA256_DIGEST_STRLEN);
	if ((r = get_field(what, obj, "size", json_type_int, true, &v)) < 0) return r;
	int64_t size = json_object_get_int64(v);
	if (size < 0) return log_error(-EINVAL, "parse %s: field size is negative", what);
	if ((uint64_t)size > size_max)
		return log_error(-E2BIG, "parse %s: blob %s claims %lld bytes, limit %llu", what, d->digest,
				 (long long)size, (unsigned long long)size_max);
	d->size_bytes = (uint64_t)size;
	if ((r = get_field(what, obj, "annotations", json_type_object, false, &v)) < 0) return r;
	if (v) {
		struct json_object *name;
		if ((r = get_field(what, v, "org.opencontainers.image.ref.name", json_type_string, false, &name)) < 0)
			return r;
		if (name && (r = copy_string(what, "annotations.ref.name", name, d->ref_name, sizeof(d->ref_name))) < 0)
			return r;
	}
	if ((r = get_field(what, obj, "platform", json_type_object, false, &v)) < 0) return r;
	if (v) {
		if ((r = parse_platform(what, v, &d->platform)) < 0) return r;
		d->has_platform = true;
	}
	return 0;
}

static int check_schema_version(const char *what, struct json_object *root)
{
	struct json_object *v;
	int r = get_field(what, root, "schemaVersion", json_type_int, true, &v);
	if (r < 0) return r;
	if (json_object_get_int64(v) != 2)
		return log_error(-EINVAL, "parse %s: unsupported schemaVersion %lld", what,
				 (long long)json_object_get_int64(v));
	return 0;
}

static int check_document_media_type(const char *what, struct json_object *root, enum oci_kind want)
{
	char mt[OCI_MEDIA_TYPE_MAX];
	int r = get_string(what, root, "mediaType", false, mt, sizeof(mt));
	if (r < 0) return r;
	if (mt[0] && oci_media_type_kind(mt, NULL) != want)
		return log_error(-EINVAL, "parse %s: unsupported media type %s here", what, mt);
	return 0;
}

/* The start every OCI document parser shares: parses buf strictly, zeroes *out (out_size bytes),
 * checks the root is an object and, unless want is OCI_KIND_UNKNOWN, that schemaVersion is 2 and a
 * mediaType (if present) names that kind.  On success *root is the caller's to put. */
static int parse_document(const char *what, const void *buf, size_t len, enum oci_kind want, void *out,
			  size_t out_size, struct json_object **root)
{
	int r = json_parse_strict(what, buf, len, root);
	if (r < 0) return r;
	memset(out, 0, out_size);
	if (!json_object_is_type(*root, json_type_object))
		r = log_error(-EINVAL, "parse %s: not a JSON object", what);
	else if (want != OCI_KIND_UNKNOWN && (r = check_schema_version(what, *root)) >= 0)
		r = check_document_media_type(what, *root, want);
	if (r < 0) {
		json_object_put(*root);
		*root = NULL;
		return r;
	}
	return 0;
}

int oci_index_parse(const char *what, const void *buf, size_t len, struct oci_index *out)
{
	struct json_object *root, *arr;
	int r = parse_document(what, buf, len, OCI_KIND_INDEX, out, sizeof(*out), &root);
	if (r < 0) return r;
	if ((r = get_field(what, root, "manifests", json_type_array, true, &arr)) < 0) goto out;
	size_t n = json_object_array_length(arr);
	if (n > IMAGE_IMPORT_INDEX_ENTRIES_MAX) {
		r = log_error(-E2BIG, "parse %s: %zu manifests, limit %u", what, n, IMAGE_IMPORT_INDEX_ENTRIES_MAX);
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		char w[256];
		snprintf(w, sizeof(w), "%s manifests[%zu]", what, i);
		if ((r = parse_descriptor(w, json_object_array_get_idx(arr, i), IMAGE_IMPORT_JSON_BYTES_MAX,
					  &out->manifests[i])) < 0)
			goto out;
	}
	out->count = (uint32_t)n;
out:
	json_object_put(root);
	return r;
}

int oci_manifest_parse(const char *what, const void *buf, size_t len, struct oci_manifest *out)
{
	struct json_object *root, *v;
	int r = parse_document(what, buf, len, OCI_KIND_MANIFEST, out, sizeof(*out), &root);
	if (r < 0) return r;
	if ((r = get_field(what, root, "config", json_type_object, true, &v)) < 0) goto out;
	char w[256];
	snprintf(w, sizeof(w), "%s config", what);
	if ((r = parse_descriptor(w, v, IMAGE_IMPORT_JSON_BYTES_MAX, &out->config)) < 0) goto out;
	if ((r = get_field(what, root, "layers", json_type_array, true, &v)) < 0) goto out;
	size_t n = json_object_array_length(v);
	if (n == 0) {
		r = log_error(-EINVAL, "parse %s: no layers", what);
		goto out;
	}
	if (n > IMAGE_IMPORT_LAYERS_MAX) {
		r = log_error(-E2BIG, "parse %s: %zu layers, limit %u", what, n, IMAGE_IMPORT_LAYERS_MAX);
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		snprintf(w, sizeof(w), "%s layers[%zu]", what, i);
		if ((r = parse_descriptor(w, json_object_array_get_idx(v, i), IMAGE_IMPORT_BLOB_BYTES_MAX,
					  &out->layers[i])) < 0)
			goto out;
	}
	out->layer_count = (uint32_t)n;
out:
	json_object_put(root);
	return r;
}

int oci_config_parse(const char *what, const void *buf, size_t len, struct oci_config *out)
{
	struct json_object *root, *rootfs, *ids;
	int r = parse_document(what, buf, len, OCI_KIND_UNKNOWN, out, sizeof(*out), &root);
	if (r < 0) return r;
	/* os and architecture are required by the spec; old Docker configs always have them. */
	if ((r = parse_platform(what, root, &out->platform)) < 0) goto out;
	if ((r = get_string(what, root, "created", false, out->created, sizeof(out->created))) < 0) goto out;
	if (out->created[0]) {
		int64_t t;
		if ((r = oci_time_parse(out->created, &t)) < 0) {
			r = log_error(-EINVAL, "parse %s: field created is not an RFC 3339 time: %s", what, out->created);
			goto out;
		}
	}
	if ((r = get_field(what, root, "rootfs", json_type_object, true, &rootfs)) < 0) goto out;
	char type[16];
	if ((r = get_string(what, rootfs, "type", true, type, sizeof(type))) < 0) goto out;
	if (strcmp(type, "layers") != 0) {
		r = log_error(-EINVAL, "parse %s: rootfs.type is %s, not layers", what, type);
		goto out;
	}
	if ((r = get_field(what, rootfs, "diff_ids", json_type_array, true, &ids)) < 0) goto out;
	size_t n = json_object_array_length(ids);
	if (n > IMAGE_IMPORT_LAYERS_MAX) {
		r = log_error(-E2BIG, "parse %s: %zu diff_ids, limit %u", what, n, IMAGE_IMPORT_LAYERS_MAX);
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		struct json_object *d = json_object_array_get_idx(ids, i);
		char key[32], buf2[128];
		snprintf(key, sizeof(key), "rootfs.diff_ids[%zu]", i);
		if (!json_object_is_type(d, json_type_string)) {
			r = log_error(-EINVAL, "parse %s: field %s has the wrong type", what, key);
			goto out;
		}
		if ((r = copy_string(what, key, d, buf2, sizeof(buf2))) < 0) goto out;
		if ((r = check_digest(what, key, buf2)) < 0) goto out;
		memcpy(out->diff_ids[i], buf2, SHA256_DIGEST_STRLEN);
	}
	out->diff_id_count = (uint32_t)n;
out:
	json_object_put(root);
	return r;
}

/* A member name in a docker-archive: relative, no "..", bounded. */
static int check_member_name(const char *what, const char *key, struct json_object *v, char *out, size_t out_len)
{
	int r = copy_string(what, key, v, out, out_len);
	if (r < 0) return r;
	if (!out[0] || oci_path_check(out) < 0)
		return log_error(-EINVAL, "parse %s: field %s: unsafe member name %.200s", what, key, out);
	return 0;
}

/* Docker's reference normalisation, so that "alpine:3" finds "docker.io/library/alpine:3":
 * a first component without '.' or ':' (and not localhost) is not a registry. */
static void docker_ref_normalize(const char *ref, char *out, size_t out_len)
{
	const char *slash = strchr(ref, '/');
	const char *prefix = "";
	if (!slash) {
		prefix = "docker.io/library/";
	} else {
		size_t n = (size_t)(slash - ref);
		if (!memchr(ref, '.', n) && !memchr(ref, ':', n) && !(n == 9 && strncmp(ref, "localhost", 9) == 0))
			prefix = "docker.io/";
	}
	const char *last = strrchr(ref, '/');
	last = last ? last : ref;
	const char *tag = strchr(last, ':') || strchr(last, '@') ? "" : ":latest";
	snprintf(out, out_len, "%s%s%s", prefix, ref, tag);
}

static bool docker_ref_equal(const char *a, const char *b)
{
	char na[2 * OCI_REF_NAME_MAX], nb[2 * OCI_REF_NAME_MAX];
	docker_ref_normalize(a, na, sizeof(na));
	docker_ref_normalize(b, nb, sizeof(nb));
	return strcmp(na, nb) == 0;
}

int docker_manifest_parse(const char *what, const void *buf, size_t len, const char *ref,
			  struct docker_archive_image *out)
{
	struct json_object *root;
	int r = json_parse_strict(what, buf, len, &root);
	if (r < 0) return r;
	memset(out, 0, sizeof(*out));
	bool found = false;
	size_t n = 0;
	if (!json_object_is_type(root, json_type_array)) {
		r = log_error(-EINVAL, "parse %s: not a JSON array", what);
		goto out;
	}
	n = json_object_array_length(root);
	if (n == 0) {
		r = log_error(-EINVAL, "parse %s: no images", what);
		goto out;
	}
	if (n > IMAGE_IMPORT_INDEX_ENTRIES_MAX) {
		r = log_error(-E2BIG, "parse %s: %zu images, limit %u", what, n, IMAGE_IMPORT_INDEX_ENTRIES_MAX);
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		struct json_object *e = json_object_array_get_idx(root, i), *v, *tags, *layers;
		char w[256], name[IMAGE_IMPORT_ARCHIVE_NAME_MAX + 1];
		snprintf(w, sizeof(w), "%s [%zu]", what, i);
		if (!json_object_is_type(e, json_type_object)) {
			r = log_error(-EINVAL, "parse %s: not an object", w);
			goto out;
		}
		if ((r = get_field(w, e, "Config", json_type_string, true, &v)) < 0) goto out;
		if ((r = check_member_name(w, "Config", v, name, sizeof(name))) < 0) goto out;
		if ((r = get_field(w, e, "RepoTags", json_type_array, false, &tags)) < 0) goto out;
		size_t nt = tags ? json_object_array_length(tags) : 0;
		if (nt > IMAGE_IMPORT_INDEX_ENTRIES_MAX) {
			r = log_error(-E2BIG, "parse %s: %zu RepoTags", w, nt);
			goto out;
		}
		bool match = ref == NULL && n == 1;
		char first_tag[OCI_REF_NAME_MAX] = "", tag[OCI_REF_NAME_MAX];
		for (size_t t = 0; t < nt; t++) {
			struct json_object *tv = json_object_array_get_idx(tags, t);
			if (!json_object_is_type(tv, json_type_string)) {
				r = log_error(-EINVAL, "parse %s: RepoTags[%zu] is not a string", w, t);
				goto out;
			}
			if ((r = copy_string(w, "RepoTags", tv, tag, sizeof(tag))) < 0) goto out;
			if (t == 0) memcpy(first_tag, tag, sizeof(tag));
			if (ref && docker_ref_equal(tag, ref)) {
				match = true;
				memcpy(first_tag, tag, sizeof(tag));
			}
		}
		if ((r = get_field(w, e, "Layers", json_type_array, true, &layers)) < 0) goto out;
		size_t nl = json_object_array_length(layers);
		if (nl == 0) {
			r = log_error(-EINVAL, "parse %s: no layers", w);
			goto out;
		}
		if (nl > IMAGE_IMPORT_LAYERS_MAX) {
			r = log_error(-E2BIG, "parse %s: %zu layers, limit %u", w, nl, IMAGE_IMPORT_LAYERS_MAX);
			goto out;
		}
		bool take = match && !found;
		for (size_t l = 0; l < nl; l++) {
			struct json_object *lv = json_object_array_get_idx(layers, l);
			char key[32];
			snprintf(key, sizeof(key), "Layers[%zu]", l);
			if (!json_object_is_type(lv, json_type_string)) {
				r = log_error(-EINVAL, "parse %s: %s is not a string", w, key);
				goto out;
			}
			if ((r = check_member_name(w, key, lv, name, sizeof(name))) < 0) goto out;
			if (take) memcpy(out->layers[l], name, sizeof(name));
		}
		if (take) {
			found = true;
			out->layer_count = (uint32_t)nl;
			(void)check_member_name(w, "Config", v, out->config, sizeof(out->config));
			memcpy(out->repo_tag, first_tag, sizeof(first_tag));
		}
	}
	if (!found) {
		if (ref) r = log_error(-ENOENT, "%s: no image tagged %s", what, ref);
		else r = log_error(-EINVAL, "%s: holds %zu images: choose one with docker-archive:FILE:NAME:TAG", what, n);
	}
out:
	json_object_put(root);
	return r;
}

int oci_platform_parse(const char *s, struct oci_platform *out)
{
	memset(out, 0, sizeof(*out));
	const char *a = strchr(s, '/');
	if (!a || a == s) return log_error(-EINVAL, "platform %s: expected OS/ARCH[/VARIANT]", s);
	const char *v = strchr(a + 1, '/');
	size_t os_len = (size_t)(a - s);
	size_t arch_len = v ? (size_t)(v - a - 1) : strlen(a + 1);
	size_t var_len = v ? strlen(v + 1) : 0;
	if (os_len >= sizeof(out->os) || arch_len == 0 || arch_len >= sizeof(out->architecture) ||
	    (v && (var_len == 0 || var_len >= sizeof(out->variant) || strchr(v + 1, '/'))))
		return log_error(-EINVAL, "platform %s: expected OS/ARCH[/VARIANT]", s);
	memcpy(out->os, s, os_len);
	memcpy(out->architecture, a + 1, arch_len);
	if (v) memcpy(out->variant, v + 1, var_len);
	return 0;
}

void oci_platform_host(struct oci_platform *out)
{
	static const struct { const char *machine, *arch, *variant; } map[] = {
		{ "x86_64", "amd64", "" }, { "aarch64", "arm64", "" }, { "armv7l", "arm", "v7" },
		{ "armv6l", "arm", "v6" }, { "i686", "386", "" }, { "i386", "386", "" },
		{ "ppc64le", "ppc64le", "" }, { "s390x", "s390x", "" }, { "riscv64", "riscv64", "" },
	};
	struct utsname u;
	memset(out, 0, sizeof(*out));
	strcpy(out->os, "linux");
	strcpy(out->architecture, "amd64");
	if (uname(&u) != 0) return;
	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
		if (strcmp(u.machine, map[i].machine) == 0) {
			snprintf(out->architecture, sizeof(out->architecture), "%s", map[i].arch);
			snprintf(out->variant, sizeof(out->variant), "%s", map[i].variant);
			return;
		}
	}
	snprintf(out->architecture, sizeof(out->architecture), "%.31s", u.machine);
}

int oci_platform_match(const struct oci_platform *want, const struct oci_platform *have)
{
	if (strcmp(want->os, have->os) != 0 || strcmp(want->architecture, have->architecture) != 0) return 0;
	if (want->variant[0] && have->variant[0] && strcmp(want->variant, have->variant) != 0) return 0;
	return 1;
}

void oci_platform_format(const struct oci_platform *p, char *out, size_t out_len)
{
	snprintf(out, out_len, "%s/%s%s%s", p->os, p->architecture, p->variant[0] ? "/" : "", p->variant);
}

static int parse_digits(const char **p, int n, int *out)
{
	int v = 0;
	for (int i = 0; i < n; i++) {
		if ((*p)[i] < '0' || (*p)[i] > '9') return -EINVAL;
		v = v * 10 + ((*p)[i] - '0');
	}
	*p += n;
	*out = v;
	return 0;
}

int oci_time_parse(const char *s, int64_t *out)
{
	int y, mo, d, h, mi, sec;
	const char *p = s;
	if (parse_digits(&p, 4, &y) || *p++ != '-' || parse_digits(&p, 2, &mo) || *p++ != '-' ||
	    parse_digits(&p, 2, &d) || (*p != 'T' && *p != 't' && *p != ' ') || !*p++ ||
	    parse_digits(&p, 2, &h) || *p++ != ':' || parse_digits(&p, 2, &mi) || *p++ != ':' ||
	    parse_digits(&p, 2, &sec))
		return -EINVAL;
	if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60) return -EINVAL;
	if (*p == '.') {
		p++;
		if (*p < '0' || *p > '9') return -EINVAL;
		for (int i = 0; *p >= '0' && *p <= '9'; i++, p++)
			if (i > 12) return -EINVAL;
	}
	int off = 0;
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if (*p == '+' || *p == '-') {
		int sign = *p++ == '-' ? -1 : 1, oh, om;
		if (parse_digits(&p, 2, &oh) || *p++ != ':' || parse_digits(&p, 2, &om) || oh > 23 || om > 59)
			return -EINVAL;
		off = sign * (oh * 3600 + om * 60);
	} else {
		return -EINVAL;
	}
	if (*p) return -EINVAL;
	struct tm tm = { .tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h, .tm_min = mi,
			 .tm_sec = sec };
	*out = (int64_t)timegm(&tm) - off;
	return 0;
}

void oci_chain_ids(const char diff_ids[][SHA256_DIGEST_STRLEN], uint32_t count,
		   char chain_ids[][SHA256_DIGEST_STRLEN])
{
	for (uint32_t i = 0; i < count; i++) {
		if (i == 0) {
			memcpy(chain_ids[0], diff_ids[0], SHA256_DIGEST_STRLEN);
			continue;
		}
		char buf[2 * SHA256_DIGEST_STRLEN + 1];
		int n = snprintf(buf, sizeof(buf), "%s %s", chain_ids[i - 1], diff_ids[i]);
		uint8_t bin[SHA256_BYTES];
		sha256_buffer(buf, (size_t)n, bin);
		sha256_format_digest(bin, chain_ids[i]);
	}
}

int oci_path_check(const char *name)
{
	if (name[0] == '/') return -EINVAL;
	const char *p = name;
	while (*p) {
		const char *e = strchr(p, '/');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		if (n == 2 && p[0] == '.' && p[1] == '.') return -EINVAL;
		if (!e) break;
		p = e + 1;
	}
	return 0;
}

/* The fuzz target and unit tests reach the parsers through this public entry point. */
int image_import_json_check(enum image_import_json_kind kind, const void *buf, size_t len)
{
	int r;
	switch (kind) {
	case IMAGE_IMPORT_JSON_INDEX: {
		struct oci_index *x = malloc(sizeof(*x));
		if (!x) return -ENOMEM;
		r = oci_index_parse("index", buf, len, x);
		free(x);
		return r;
	}
	case IMAGE_IMPORT_JSON_MANIFEST: {
		struct oci_manifest *x = malloc(sizeof(*x));
		if (!x) return -ENOMEM;
		r = oci_manifest_parse("manifest", buf, len, x);
		if (r == 0) {
			for (uint32_t i = 0; i < x->layer_count; i++)
				(void)oci_media_type_kind(x->layers[i].media_type, NULL);
		}
		free(x);
		return r;
	}
	case IMAGE_IMPORT_JSON_CONFIG: {
		struct oci_config *x = malloc(sizeof(*x));
		if (!x) return -ENOMEM;
		r = oci_config_parse("config", buf, len, x);
		if (r == 0 && x->diff_id_count) {
			char (*chains)[SHA256_DIGEST_STRLEN] = malloc(sizeof(*chains) * x->diff_id_count);
			if (!chains) {
				free(x);
				return -ENOMEM;
			}
			oci_chain_ids((const char (*)[SHA256_DIGEST_STRLEN])x->diff_ids, x->diff_id_count, chains);
			free(chains);
		}
		free(x);
		return r;
	}
	case IMAGE_IMPORT_JSON_DOCKER_MANIFEST: {
		struct docker_archive_image *x = malloc(sizeof(*x));
		if (!x) return -ENOMEM;
		r = docker_manifest_parse("manifest.json", buf, len, NULL, x);
		free(x);
		return r;
	}
	}
	return -EINVAL;
}
