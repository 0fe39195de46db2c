/* `ociblk create IMAGE CONTAINER`: a container record on the image's chain with an empty upper. */
#include "cli/cli.h"
#include "common/log.h"
#include "layer-store/layer_store.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

static const char create_usage[] =
	"usage: ociblk create IMAGE CONTAINER\n"
	"\n"
	"Creates container CONTAINER from image IMAGE: its disk reads as the image until written;\n"
	"writes go to the container's private copy-on-write upper, 4 KiB blocks at a time.\n";

static int cmd_create(int argc, char **argv, const struct cli_globals *g)
{
	if (argc != 3) return cli_usage_error(create_usage, "create: expected IMAGE CONTAINER");
	const char *image = argv[1], *name = argv[2];
	if (layer_store_name_validate("container", name)) return 1;
	struct layer_store *store = NULL;
	if (cli_store_open(g, false, &store)) return 1;

	struct image_record rec;
	memset(&rec, 0, sizeof rec);
	int err = layer_store_image_get(store, image, &rec);
	image_record_clear(&rec);
	if (err == -ENOENT) {
		log_error(err, "create: no such image '%s' (see ociblk images)", image);
	} else if (!err) {
		err = layer_store_container_create(store, image, name); /* logs "the name is taken" */
	}
	if (!err) {
		if (g->json) {
			struct json_object *o = json_object_new_object();
			json_object_object_add(o, "container", json_object_new_string(name));
			json_object_object_add(o, "image", json_object_new_string(image));
			cli_json_print(o);
		} else if (!g->quiet) {
			printf("%s\n", name);
		}
	}
	layer_store_close(store);
	return cli_exit_status(err);
}

CLI_COMMAND(create, "create", "create a container from an image", create_usage, cmd_create)
