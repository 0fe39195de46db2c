/* `ociblk commit CONTAINER IMAGE`: the container's upper becomes a new immutable layer on top of
 * its chain and IMAGE names the new chain; the container continues on it with an empty upper. */
#include "cli/cli.h"
#include "common/log.h"
#include "cow/cow.h"
#include "layer-store/layer_store.h"

#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

static const char commit_usage[] =
	"usage: ociblk commit [--force] CONTAINER IMAGE\n"
	"\n"
	"Turns the container's writes (its upper) into a new layer on top of its chain and records\n"
	"image IMAGE with that chain, like `docker commit`.  The container goes on from the new chain\n"
	"with an empty upper.  --force replaces an existing image IMAGE.  The container must not be\n"
	"in use by a server.\n";

static int cmd_commit(int argc, char **argv, const struct cli_globals *g)
{
	static const struct option opts[] = {
		{ "force", no_argument, 0, 'f' },
		{ 0, 0, 0, 0 },
	};
	bool force = false;
	int c;
	cli_getopt_reset();
	while ((c = getopt_long(argc, argv, "f", opts, NULL)) != -1) {
		if (c != 'f') return cli_bad_option(commit_usage, argc, argv);
		force = true;
	}
	if (argc - optind != 2) return cli_usage_error(commit_usage, "commit: expected CONTAINER IMAGE");
	const char *container = argv[optind], *image = argv[optind + 1];
	if (layer_store_name_validate("image", image)) return 1;

	struct layer_store *store = NULL;
	if (cli_store_open(g, false, &store)) return 1;
	struct cow_device *dev = NULL;
	char digest[SHA256_DIGEST_STRLEN] = "";
	struct container_record rec;
	struct image_record img;
	memset(&img, 0, sizeof img);
	int err = layer_store_container_get(store, container, &rec);
	if (err == -ENOENT) {
		log_error(err, "commit: no such container '%s'", container);
		goto out;
	}
	if (err) goto out;
	if (!force) {
		int e = layer_store_image_get(store, image, &img);
		image_record_clear(&img);
		if (e == 0) {
			err = log_error(-EEXIST, "commit: image '%s' already exists (use --force to replace it)", image);
			goto out;
		}
	}
	err = cow_device_open_container(store, container, &dev);
	if (err == -EBUSY) log_error(err, "commit: container '%s' is in use", container);
	if (err) goto out;
	struct cow_device_stats st;
	cow_device_get_stats(dev, &st);
	err = cow_device_commit(dev, image, digest);
	uint32_t layers = cow_device_layer_count(dev);
	int cerr = cow_device_close(dev);
	if (!err) err = cerr;
	if (err) goto out;
	if (g->json) {
		struct json_object *o = json_object_new_object();
		json_object_object_add(o, "container", json_object_new_string(container));
		json_object_object_add(o, "image", json_object_new_string(image));
		json_object_object_add(o, "layer", json_object_new_string(digest));
		json_object_object_add(o, "layer_count", json_object_new_int64(layers));
		json_object_object_add(o, "upper_blocks", json_object_new_int64((int64_t)st.upper_blocks));
		cli_json_print(o);
	} else if (!g->quiet) {
		printf("image %s: %u layers, new top layer %s (%llu block%s written in %s)\n", image, layers, digest,
		       (unsigned long long)st.upper_blocks, st.upper_blocks == 1 ? "" : "s", container);
	}
out:
	layer_store_close(store);
	return cli_exit_status(err);
}

CLI_COMMAND(commit, "commit", "make a container's writes a new layer and image", commit_usage, cmd_commit)
