/* `ociblk images`: the image records of the store (name, device size, layer count, top layer). */
#include "cli/cli.h"
#include "common/log.h"
#include "layer-store/layer_store.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static const char images_usage[] =
	"usage: ociblk images [--json]\n"
	"\n"
	"Lists the images of the store: name, device size, number of layers, top layer digest.\n"
	"--json prints an array of {name, size_bytes, layer_count, top_layer, layers, created_unix}.\n";

struct images_ctx {
	struct layer_store *store;
	struct json_object *arr;
	bool json;
};

static int images_one(const char *name, void *opaque)
{
	struct images_ctx *ctx = opaque;
	struct image_record rec;
	memset(&rec, 0, sizeof rec);
	int err = layer_store_image_get(ctx->store, name, &rec);
	if (err) return err;
	const char *top = rec.layer_count ? rec.layers[rec.layer_count - 1] : "";
	if (ctx->json) {
		struct json_object *o = json_object_new_object(), *layers = json_object_new_array();
		for (uint32_t i = 0; i < rec.layer_count; i++) json_object_array_add(layers, json_object_new_string(rec.layers[i]));
		json_object_object_add(o, "name", json_object_new_string(rec.name));
		json_object_object_add(o, "size_bytes", json_object_new_int64((int64_t)rec.size_bytes));
		json_object_object_add(o, "layer_count", json_object_new_int64(rec.layer_count));
		json_object_object_add(o, "top_layer", json_object_new_string(top));
		json_object_object_add(o, "layers", layers);
		json_object_object_add(o, "created_unix", json_object_new_int64(rec.created_unix));
		json_object_array_add(ctx->arr, o);
	} else {
		char sz[32];
		printf("%-24s %10s %6u  %s\n", rec.name, cli_human_bytes(rec.size_bytes, sz, sizeof sz), rec.layer_count, top);
	}
	image_record_clear(&rec);
	return 0;
}

static int cmd_images(int argc, char **argv, const struct cli_globals *g)
{
	if (argc > 1) return cli_usage_error(images_usage, "images: unexpected argument '%s'", argv[1]);
	struct layer_store *store = NULL;
	if (cli_store_open(g, false, &store)) return 1;
	struct images_ctx ctx = { .store = store, .json = g->json };
	if (g->json) ctx.arr = json_object_new_array();
	else printf("%-24s %10s %6s  %s\n", "IMAGE", "SIZE", "LAYERS", "TOP LAYER");
	int err = layer_store_image_foreach(store, images_one, &ctx);
	if (g->json) {
		if (err) json_object_put(ctx.arr);
		else cli_json_print(ctx.arr);
	}
	layer_store_close(store);
	return cli_exit_status(err);
}

CLI_COMMAND(images, "images", "list images", images_usage, cmd_images)
