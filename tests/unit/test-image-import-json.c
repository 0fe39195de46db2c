/* Unit tests for image-import's strict JSON parsers (through image_import_json_check): real
 * documents are accepted, and each kind of malformed document (wrong types, missing fields, bad
 * digests, negative and absurd sizes, too many layers, trailing data, deep nesting, unsupported
 * schema) is rejected with an error logged. */
#include "common/log.h"
#include "image-import/image_import.h"
#include "tests/lib/tap.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define D1 "sha256:a6d16ca575c8599b8ae4c957843aa8b50efb8e49995195ae9d5ee437281c97c5"
#define D2 "sha256:0ea1cbca2662135046ec2daf1381248270fdf8ecfddb81fd6c24a16754bb970c"
#define MT_MAN "application/vnd.oci.image.manifest.v1+json"
#define MT_CFG "application/vnd.oci.image.config.v1+json"
#define MT_GZ "application/vnd.oci.image.layer.v1.tar+gzip"

struct json_case {
	enum image_import_json_kind kind;
	int want;       /* 0, or the negative errno */
	const char *what;
	const char *doc;
};

static const struct json_case cases[] = {
	/* index */
	{ IMAGE_IMPORT_JSON_INDEX, 0, "umoci index.json",
	  "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"" MT_MAN "\",\"digest\":\"" D1 "\",\"size\":813,"
	  "\"annotations\":{\"org.opencontainers.image.ref.name\":\"full\"}}]}" },
	{ IMAGE_IMPORT_JSON_INDEX, 0, "multi-platform index with variant",
	  "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":["
	  "{\"mediaType\":\"" MT_MAN "\",\"digest\":\"" D1 "\",\"size\":1,\"platform\":{\"os\":\"linux\",\"architecture\":\"arm64\",\"variant\":\"v8\"}},"
	  "{\"mediaType\":\"" MT_MAN "\",\"digest\":\"" D2 "\",\"size\":2,\"platform\":{\"os\":\"linux\",\"architecture\":\"amd64\"}}]}" },
	{ IMAGE_IMPORT_JSON_INDEX, 0, "empty index", "{\"schemaVersion\":2,\"manifests\":[]}" },
	{ IMAGE_IMPORT_JSON_INDEX, -EINVAL, "schemaVersion 1", "{\"schemaVersion\":1,\"manifests\":[]}" },
	{ IMAGE_IMPORT_JSON_INDEX, -EINVAL, "schemaVersion as a string", "{\"schemaVersion\":\"2\",\"manifests\":[]}" },
	{ IMAGE_IMPORT_JSON_INDEX, -EINVAL, "manifests missing", "{\"schemaVersion\":2}" },
	{ IMAGE_IMPORT_JSON_INDEX, -EINVAL, "manifests an object", "{\"schemaVersion\":2,\"manifests\":{}}" },
	{ IMAGE_IMPORT_JSON_INDEX, -EINVAL, "an array, not an object", "[]" },
	{ IMAGE_IMPORT_JSON_INDEX, -EINVAL, "trailing garbage", "{\"schemaVersion\":2,\"manifests\":[]} x" },
	{ IMAGE_IMPORT_JSON_INDEX, -EINVAL, "truncated", "{\"schemaVersion\":2,\"manifests\":[" },
	{ IMAGE_IMPORT_JSON_INDEX, -EINVAL, "empty", "" },
	{ IMAGE_IMPORT_JSON_INDEX, -EINVAL, "index with a wrong mediaType",
	  "{\"schemaVersion\":2,\"mediaType\":\"" MT_MAN "\",\"manifests\":[]}" },
	{ IMAGE_IMPORT_JSON_INDEX, -EINVAL, "descriptor without digest",
	  "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"" MT_MAN "\",\"size\":1}]}" },
	{ IMAGE_IMPORT_JSON_INDEX, -EINVAL, "sha512 digest",
	  "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"" MT_MAN "\",\"size\":1,\"digest\":\"sha512:abcd\"}]}" },
	{ IMAGE_IMPORT_JSON_INDEX, -EINVAL, "uppercase hex digest",
	  "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"" MT_MAN "\",\"size\":1,\"digest\":"
	  "\"sha256:A6D16CA575C8599B8AE4C957843AA8B50EFB8E49995195AE9D5EE437281C97C5\"}]}" },
	{ IMAGE_IMPORT_JSON_INDEX, -EINVAL, "negative size",
	  "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"" MT_MAN "\",\"size\":-1,\"digest\":\"" D1 "\"}]}" },
	{ IMAGE_IMPORT_JSON_INDEX, -EINVAL, "fractional size",
	  "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"" MT_MAN "\",\"size\":1.5,\"digest\":\"" D1 "\"}]}" },
	{ IMAGE_IMPORT_JSON_INDEX, -E2BIG, "manifest size over the JSON limit",
	  "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"" MT_MAN "\",\"size\":1000000000,\"digest\":\"" D1 "\"}]}" },
	{ IMAGE_IMPORT_JSON_INDEX, -EINVAL, "platform without architecture",
	  "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"" MT_MAN "\",\"size\":1,\"digest\":\"" D1 "\",\"platform\":{\"os\":\"linux\"}}]}" },
	{ IMAGE_IMPORT_JSON_INDEX, -EINVAL, "ref.name not a string",
	  "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"" MT_MAN "\",\"size\":1,\"digest\":\"" D1 "\","
	  "\"annotations\":{\"org.opencontainers.image.ref.name\":5}}]}" },
	/* manifest */
	{ IMAGE_IMPORT_JSON_MANIFEST, 0, "OCI manifest",
	  "{\"schemaVersion\":2,\"mediaType\":\"" MT_MAN "\",\"config\":{\"mediaType\":\"" MT_CFG "\",\"digest\":\"" D1 "\",\"size\":778},"
	  "\"layers\":[{\"mediaType\":\"" MT_GZ "\",\"digest\":\"" D2 "\",\"size\":3081852}]}" },
	{ IMAGE_IMPORT_JSON_MANIFEST, 0, "Docker schema 2 manifest",
	  "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.docker.distribution.manifest.v2+json\","
	  "\"config\":{\"mediaType\":\"application/vnd.docker.container.image.v1+json\",\"digest\":\"" D1 "\",\"size\":7},"
	  "\"layers\":[{\"mediaType\":\"application/vnd.docker.image.rootfs.diff.tar.gzip\",\"digest\":\"" D2 "\",\"size\":9}]}" },
	{ IMAGE_IMPORT_JSON_MANIFEST, -EINVAL, "no layers",
	  "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"" MT_CFG "\",\"digest\":\"" D1 "\",\"size\":1},\"layers\":[]}" },
	{ IMAGE_IMPORT_JSON_MANIFEST, -EINVAL, "config not an object",
	  "{\"schemaVersion\":2,\"config\":5,\"layers\":[]}" },
	{ IMAGE_IMPORT_JSON_MANIFEST, -EINVAL, "layer without mediaType",
	  "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"" MT_CFG "\",\"digest\":\"" D1 "\",\"size\":1},"
	  "\"layers\":[{\"digest\":\"" D2 "\",\"size\":3}]}" },
	{ IMAGE_IMPORT_JSON_MANIFEST, -E2BIG, "layer size over the blob limit",
	  "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"" MT_CFG "\",\"digest\":\"" D1 "\",\"size\":1},"
	  "\"layers\":[{\"mediaType\":\"" MT_GZ "\",\"digest\":\"" D2 "\",\"size\":9223372036854775807}]}" },
	{ IMAGE_IMPORT_JSON_MANIFEST, -E2BIG, "layer size beyond int64",
	  "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"" MT_CFG "\",\"digest\":\"" D1 "\",\"size\":1},"
	  "\"layers\":[{\"mediaType\":\"" MT_GZ "\",\"digest\":\"" D2 "\",\"size\":99999999999999999999999}]}" },
	/* config */
	{ IMAGE_IMPORT_JSON_CONFIG, 0, "OCI config",
	  "{\"architecture\":\"amd64\",\"os\":\"linux\",\"created\":\"2024-01-01T00:00:00Z\",\"config\":{},"
	  "\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"" D1 "\",\"" D2 "\"]},\"history\":[]}" },
	{ IMAGE_IMPORT_JSON_CONFIG, 0, "created with fraction and offset",
	  "{\"architecture\":\"amd64\",\"os\":\"linux\",\"created\":\"2023-05-01T10:20:30.123456789+02:00\","
	  "\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"" D1 "\"]}}" },
	{ IMAGE_IMPORT_JSON_CONFIG, -EINVAL, "created not RFC 3339",
	  "{\"architecture\":\"amd64\",\"os\":\"linux\",\"created\":\"yesterday\",\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[]}}" },
	{ IMAGE_IMPORT_JSON_CONFIG, -EINVAL, "rootfs.type not layers",
	  "{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{\"type\":\"squash\",\"diff_ids\":[]}}" },
	{ IMAGE_IMPORT_JSON_CONFIG, -EINVAL, "diff_id not a digest",
	  "{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:xyz\"]}}" },
	{ IMAGE_IMPORT_JSON_CONFIG, -EINVAL, "diff_id a number",
	  "{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[7]}}" },
	{ IMAGE_IMPORT_JSON_CONFIG, -EINVAL, "os missing",
	  "{\"architecture\":\"amd64\",\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[]}}" },
	{ IMAGE_IMPORT_JSON_CONFIG, -EINVAL, "string with NUL",
	  "{\"architecture\":\"am\\u0000d64\",\"os\":\"linux\",\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[]}}" },
	{ IMAGE_IMPORT_JSON_CONFIG, -EINVAL, "architecture too long",
	  "{\"architecture\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\",\"os\":\"linux\",\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[]}}" },
	/* docker-archive manifest.json */
	{ IMAGE_IMPORT_JSON_DOCKER_MANIFEST, 0, "legacy docker save",
	  "[{\"Config\":\"abc.json\",\"RepoTags\":[\"docker.io/library/x:1\"],\"Layers\":[\"d1/layer.tar\",\"d2/layer.tar\"]}]" },
	{ IMAGE_IMPORT_JSON_DOCKER_MANIFEST, 0, "OCI-form docker save, RepoTags null",
	  "[{\"Config\":\"blobs/sha256/abc\",\"RepoTags\":null,\"Layers\":[\"blobs/sha256/def\"]}]" },
	{ IMAGE_IMPORT_JSON_DOCKER_MANIFEST, -EINVAL, "layer path with ..",
	  "[{\"Config\":\"abc.json\",\"Layers\":[\"../../etc/shadow\"]}]" },
	{ IMAGE_IMPORT_JSON_DOCKER_MANIFEST, -EINVAL, "absolute config path",
	  "[{\"Config\":\"/etc/passwd\",\"Layers\":[\"a.tar\"]}]" },
	{ IMAGE_IMPORT_JSON_DOCKER_MANIFEST, -EINVAL, "two images and no tag to choose",
	  "[{\"Config\":\"a.json\",\"Layers\":[\"a.tar\"]},{\"Config\":\"b.json\",\"Layers\":[\"b.tar\"]}]" },
	{ IMAGE_IMPORT_JSON_DOCKER_MANIFEST, -EINVAL, "not an array", "{\"Config\":\"a.json\"}" },
	{ IMAGE_IMPORT_JSON_DOCKER_MANIFEST, -EINVAL, "empty array", "[]" },
};

static char *repeat(const char *head, const char *unit, size_t n, const char *mid, const char *unit_end,
		    const char *tail)
{
	size_t len = strlen(head) + n * (strlen(unit) + strlen(unit_end)) + strlen(mid) + strlen(tail) + 1;
	char *s = malloc(len), *p = s;
	p += sprintf(p, "%s", head);
	for (size_t i = 0; i < n; i++) p += sprintf(p, "%s", unit);
	p += sprintf(p, "%s", mid);
	for (size_t i = 0; i < n; i++) p += sprintf(p, "%s", unit_end);
	sprintf(p, "%s", tail);
	return s;
}

int main(void)
{
	log_set_quiet(1);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct json_case *c = &cases[i];
		unsigned long errors = log_error_count();
		int r = image_import_json_check(c->kind, c->doc, strlen(c->doc));
		TAP_OK(r == c->want, "%s: %s (got %d, wanted %d)", c->want ? "rejected" : "accepted", c->what, r, c->want);
		if (c->want) TAP_OK(log_error_count() > errors, "%s: an error was logged", c->what);
	}

	/* nesting far beyond any real document */
	char *deep = repeat("{\"schemaVersion\":2,\"manifests\":[], \"x\":", "[", 100000, "1", "]", "}");
	TAP_IS(image_import_json_check(IMAGE_IMPORT_JSON_INDEX, deep, strlen(deep)), -EINVAL, "100000-deep nesting rejected");
	free(deep);

	/* 128 layers: one over the limit; 127 accepted */
	const char *layer = "{\"mediaType\":\"" MT_GZ "\",\"digest\":\"" D2 "\",\"size\":1},";
	for (int n = 127; n <= 128; n++) {
		char *doc = repeat("{\"schemaVersion\":2,\"config\":{\"mediaType\":\"" MT_CFG "\",\"digest\":\"" D1 "\",\"size\":1},\"layers\":[",
				   layer, (size_t)n, "", "", "");
		doc[strlen(doc) - 1] = '\0';
		char *full = malloc(strlen(doc) + 4);
		sprintf(full, "%s]}", doc);
		int r = image_import_json_check(IMAGE_IMPORT_JSON_MANIFEST, full, strlen(full));
		TAP_IS(r, n == 127 ? 0 : -E2BIG, "manifest with %d layers %s", n, n == 127 ? "accepted" : "rejected");
		free(doc);
		free(full);
	}

	/* a document over the size limit is rejected before parsing */
	size_t big = (8u << 20) + 1;
	char *huge = malloc(big);
	memset(huge, ' ', big);
	huge[0] = '{';
	huge[big - 1] = '}';
	TAP_IS(image_import_json_check(IMAGE_IMPORT_JSON_CONFIG, huge, big), -E2BIG, "document over 8 MiB rejected");
	free(huge);
	return tap_done();
}
