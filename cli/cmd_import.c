/* `ociblk import`: turns an OCI / Docker image into block layers and an image record.
 * Thin: parses flags, calls image_import(), prints the result (text, or JSON with --json). */
#include "cli/cli.h"
#include "common/log.h"
#include "image-import/image_import.h"

#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char import_usage[] =
	"usage: ociblk import SOURCE [--name IMAGE] [--size BYTES] [--platform OS/ARCH[/VARIANT]] [--json]\n"
	"\n"
	"Imports an image: every layer becomes a block layer (an ext4 filesystem built layer by layer),\n"
	"layers already in the store (same chain id) are shared.  SOURCE is one of\n"
	"  oci:DIR[:TAG]                   an OCI image layout directory\n"
	"  oci-archive:FILE[:TAG]          the same in a tar file\n"
	"  docker-archive:FILE[:NAME:TAG]  what `docker save` writes\n"
	"\n"
	"  --name IMAGE        name of the image record (default: from the source's tag)\n"
	"  --size BYTES        device size, suffixes K M G T (default 10G)\n"
	"  --platform P        which image of a multi-platform index (default: the host's)\n"
	"  --json              print the result as JSON on stdout\n";

static int parse_size(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || s[0] == '-') return -EINVAL;
	unsigned shift = 0;
	if (*end) {
		switch (*end) {
		case 'k': case 'K': shift = 10; break;
		case 'm': case 'M': shift = 20; break;
		case 'g': case 'G': shift = 30; break;
		case 't': case 'T': shift = 40; break;
		default: return -EINVAL;
		}
		end++;
		if (*end == 'i') end++;
		if (*end == 'B' || *end == 'b') end++;
		if (*end) return -EINVAL;
	}
	if (shift && v > (UINT64_MAX >> shift)) return -ERANGE;
	*out = (uint64_t)v << shift;
	return 0;
}

static int cmd_import(int argc, char **argv, const struct cli_globals *g)
{
	struct image_import_options o = { 0 };
	bool json = g->json;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *val = NULL;
#define OPT(flag) (!strcmp(a, flag) ? (i + 1 < argc ? (val = argv[++i], 1) : -1) \
				     : !strncmp(a, flag "=", strlen(flag) + 1) ? (val = a + strlen(flag) + 1, 1) : 0)
		int m;
		if ((m = OPT("--name")) != 0) {
			if (m < 0) return cli_usage_error(import_usage, "--name needs a value");
			o.image_name = val;
		} else if ((m = OPT("--size")) != 0) {
			if (m < 0) return cli_usage_error(import_usage, "--size needs a value");
			if (parse_size(val, &o.size_bytes) < 0 || o.size_bytes == 0)
				return cli_usage_error(import_usage, "bad --size %s", val);
		} else if ((m = OPT("--platform")) != 0) {
			if (m < 0) return cli_usage_error(import_usage, "--platform needs a value");
			o.platform = val;
		} else if (!strcmp(a, "--json")) {
			json = true;
		} else if (a[0] == '-' && a[1]) {
			return cli_usage_error(import_usage, "unknown option %s", a);
		} else if (!o.source) {
			o.source = a;
		} else {
			return cli_usage_error(import_usage, "unexpected argument %s", a);
		}
#undef OPT
	}
	if (!o.source) return cli_usage_error(import_usage, "missing SOURCE");
	o.progress = !json && !g->quiet && isatty(STDERR_FILENO);

	struct layer_store *store;
	if (cli_store_open(g, true, &store) < 0) return 1;
	struct image_import_result res;
	int r = image_import(store, &o, &res);
	layer_store_close(store);
	if (r < 0) return 1;
	if (json) {
		struct json_object *j = json_object_new_object();
		json_object_object_add(j, "image", json_object_new_string(res.image));
		json_object_object_add(j, "layers", json_object_new_int64(res.layer_count));
		json_object_object_add(j, "layers_reused", json_object_new_int64(res.layers_reused));
		json_object_object_add(j, "bytes_read", json_object_new_int64((int64_t)res.bytes_read));
		json_object_object_add(j, "top_layer", json_object_new_string(res.top_layer));
		printf("%s\n", json_object_to_json_string_ext(j, JSON_C_TO_STRING_PLAIN));
		json_object_put(j);
	} else if (!g->quiet) {
		printf("imported %s: %" PRIu32 " layers (%" PRIu32 " shared), top %s\n", res.image, res.layer_count,
		       res.layers_reused, res.top_layer);
	}
	return 0;
}

CLI_COMMAND(import, "import", "import an OCI or Docker image as block layers", import_usage, cmd_import)
