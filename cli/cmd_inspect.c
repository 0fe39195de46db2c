/* `ociblk inspect NAME`: JSON describing an image, a container or a layer (by digest): the chain
 * bottom first, sizes, and per-layer information read from each layer's validated header. */
#include "cli/cli.h"
#include "common/log.h"
#include "layer-store/layer_store.h"

#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

static const char inspect_usage[] =
	"usage: ociblk inspect [--type image|container|layer] [--extents] NAME\n"
	"\n"
	"Prints JSON about NAME: an image, a container, or a layer given as sha256:<hex>.  Images and\n"
	"containers show their chain of layers (bottom first) with each layer's sizes, extent counts\n"
	"and reference count.  When an image and a container share NAME, --type chooses.\n"
	"--extents adds each layer's extent index (block ranges, DATA chunk offsets and lengths).\n";

/* One layer as JSON; on a layer that cannot be opened, {"digest", "error"} (the cause was logged). */
static bool show_extents;

static struct json_object *extents_json(const struct layer_extent *ex, uint64_t n)
{
	struct json_object *arr = json_object_new_array();
	for (uint64_t i = 0; i < n; i++) {
		struct json_object *e = json_object_new_object();
		bool data = ex[i].kind == LAYER_EXTENT_DATA;
		json_object_object_add(e, "block_index", json_object_new_int64((int64_t)ex[i].block_index));
		json_object_object_add(e, "block_count", json_object_new_int64(ex[i].block_count));
		json_object_object_add(e, "kind", json_object_new_string(data ? "data" : "zero"));
		if (data) {
			json_object_object_add(e, "offset_bytes", json_object_new_int64((int64_t)ex[i].offset_bytes));
			json_object_object_add(e, "stored_bytes", json_object_new_int64(ex[i].stored_bytes));
			json_object_object_add(e, "compressed", json_object_new_boolean(ex[i].compressed));
		}
		json_object_array_add(arr, e);
	}
	return arr;
}

static struct json_object *layer_json(struct layer_store *store, const char *digest, int *errors)
{
	struct json_object *o = json_object_new_object();
	struct layer *l = NULL;
	uint64_t refs = 0;
	json_object_object_add(o, "digest", json_object_new_string(digest));
	if (layer_store_layer_refcount(store, digest, &refs) == 0)
		json_object_object_add(o, "refs", json_object_new_int64((int64_t)refs));
	if (layer_open(store, digest, false, &l)) {
		json_object_object_add(o, "error", json_object_new_string("cannot open layer (run ociblk fsck)"));
		(*errors)++;
		return o;
	}
	const struct layer_info *in = layer_get_info(l);
	uint64_t n = 0, compressed = 0, stored = 0;
	const struct layer_extent *ex = layer_get_extents(l, &n);
	for (uint64_t i = 0; i < n; i++) {
		if (ex[i].kind != LAYER_EXTENT_DATA) continue;
		stored += ex[i].stored_bytes;
		if (ex[i].compressed) compressed++;
	}
	json_object_object_add(o, "parent", json_object_new_string(in->parent_digest));
	json_object_object_add(o, "virtual_size_bytes", json_object_new_int64((int64_t)in->virtual_size_bytes));
	json_object_object_add(o, "file_size_bytes", json_object_new_int64((int64_t)in->file_size_bytes));
	json_object_object_add(o, "extents", json_object_new_int64((int64_t)in->extent_count));
	json_object_object_add(o, "data_blocks", json_object_new_int64((int64_t)in->data_blocks));
	json_object_object_add(o, "data_bytes", json_object_new_int64((int64_t)(in->data_blocks * LAYER_BLOCK_SIZE)));
	json_object_object_add(o, "stored_bytes", json_object_new_int64((int64_t)stored));
	json_object_object_add(o, "compressed_chunks", json_object_new_int64((int64_t)compressed));
	json_object_object_add(o, "zero_blocks", json_object_new_int64((int64_t)in->zero_blocks));
	if (show_extents) json_object_object_add(o, "extent_list", extents_json(ex, n));
	layer_close(l);
	return o;
}

static struct json_object *chain_json(struct layer_store *store, uint32_t count, char layers[][SHA256_DIGEST_STRLEN],
				      int *errors)
{
	struct json_object *arr = json_object_new_array();
	for (uint32_t i = 0; i < count; i++) json_object_array_add(arr, layer_json(store, layers[i], errors));
	return arr;
}

static uint64_t du_total;
static int du_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	if (flag == FTW_F) du_total += (uint64_t)st->st_blocks * 512;
	return 0;
}

static int cmd_inspect(int argc, char **argv, const struct cli_globals *g)
{
	static const struct option opts[] = {
		{ "type", required_argument, 0, 't' },
		{ "extents", no_argument, 0, 'e' },
		{ 0, 0, 0, 0 },
	};
	const char *type = NULL;
	int c;
	cli_getopt_reset();
	while ((c = getopt_long(argc, argv, "t:", opts, NULL)) != -1) {
		if (c == 'e') {
			show_extents = true;
			continue;
		}
		if (c != 't') return cli_bad_option(inspect_usage, argc, argv);
		type = optarg;
		if (strcmp(type, "image") && strcmp(type, "container") && strcmp(type, "layer"))
			return cli_usage_error(inspect_usage, "inspect: --type must be image, container or layer");
	}
	if (argc - optind != 1) return cli_usage_error(inspect_usage, "inspect: expected one NAME");
	const char *name = argv[optind];

	struct layer_store *store = NULL;
	if (cli_store_open(g, false, &store)) return 1;
	struct json_object *out = NULL;
	int errors = 0, err = 0;

	bool is_digest = sha256_parse_digest(name, NULL) == 0;
	if (is_digest && (!type || !strcmp(type, "layer"))) {
		err = layer_store_layer_exists(store, name);
		if (err == 0) err = log_error(-ENOENT, "inspect: no such layer %s", name);
		else if (err > 0) {
			err = 0;
			out = layer_json(store, name, &errors);
			json_object_object_add(out, "kind", json_object_new_string("layer"));
		}
		goto done;
	}
	if (type && !strcmp(type, "layer")) {
		err = log_error(-EINVAL, "inspect: '%s' is not a layer digest (sha256:<64 hex>)", name);
		goto done;
	}

	struct image_record img;
	struct container_record ctr;
	memset(&img, 0, sizeof img);
	memset(&ctr, 0, sizeof ctr);
	bool have_img = false, have_ctr = false;
	if (!type || !strcmp(type, "image")) {
		err = layer_store_image_get(store, name, &img);
		if (err && err != -ENOENT) goto done;
		have_img = err == 0;
	}
	if (!type || !strcmp(type, "container")) {
		err = layer_store_container_get(store, name, &ctr);
		if (err && err != -ENOENT) {
			image_record_clear(&img);
			goto done;
		}
		have_ctr = err == 0;
	}
	err = 0;
	if (have_img && have_ctr) {
		err = log_error(-EINVAL, "inspect: '%s' is both an image and a container: add --type", name);
	} else if (have_img) {
		out = json_object_new_object();
		json_object_object_add(out, "kind", json_object_new_string("image"));
		json_object_object_add(out, "name", json_object_new_string(img.name));
		json_object_object_add(out, "size_bytes", json_object_new_int64((int64_t)img.size_bytes));
		json_object_object_add(out, "created_unix", json_object_new_int64(img.created_unix));
		json_object_object_add(out, "layer_count", json_object_new_int64(img.layer_count));
		json_object_object_add(out, "top_layer",
				       json_object_new_string(img.layer_count ? img.layers[img.layer_count - 1] : ""));
		json_object_object_add(out, "layers", chain_json(store, img.layer_count, img.layers, &errors));
		if (img.extra_json) {
			struct json_object *extra = json_tokener_parse(img.extra_json);
			if (extra) json_object_object_add(out, "extra", extra);
		}
	} else if (have_ctr) {
		char dir[OCIBLK_PATH_MAX];
		out = json_object_new_object();
		json_object_object_add(out, "kind", json_object_new_string("container"));
		json_object_object_add(out, "name", json_object_new_string(ctr.name));
		json_object_object_add(out, "image", json_object_new_string(ctr.image));
		json_object_object_add(out, "size_bytes", json_object_new_int64((int64_t)ctr.size_bytes));
		json_object_object_add(out, "created_unix", json_object_new_int64(ctr.created_unix));
		if (layer_store_container_dir(store, name, dir, sizeof dir) == 0) {
			du_total = 0;
			nftw(dir, du_one, 16, FTW_PHYS);
			json_object_object_add(out, "directory", json_object_new_string(dir));
			json_object_object_add(out, "disk_bytes", json_object_new_int64((int64_t)du_total));
		}
		json_object_object_add(out, "layer_count", json_object_new_int64(ctr.layer_count));
		json_object_object_add(out, "top_layer",
				       json_object_new_string(ctr.layer_count ? ctr.layers[ctr.layer_count - 1] : ""));
		json_object_object_add(out, "layers", chain_json(store, ctr.layer_count, ctr.layers, &errors));
	} else {
		err = log_error(-ENOENT, "inspect: no image, container or layer named '%s'", name);
	}
	image_record_clear(&img);
done:
	layer_store_close(store);
	if (out) cli_json_print(out);
	return err || errors ? 1 : 0;
}

CLI_COMMAND(inspect, "inspect", "describe an image, container or layer as JSON", inspect_usage, cmd_inspect)
