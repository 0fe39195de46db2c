/* `ociblk rm CONTAINER...` removes containers (record, directory and upper);
 * `ociblk rmi IMAGE...` removes image records.  Layers stay until `ociblk gc` finds them
 * unreferenced, so removing an image never breaks a container created from it. */
#include "cli/cli.h"
#include "common/log.h"
#include "layer-store/layer_store.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static const char rm_usage[] =
	"usage: ociblk rm CONTAINER...\n"
	"\n"
	"Removes each container: its record, its private upper (its writes are lost) and its directory.\n"
	"A container held open by a server is refused (in use).  Run `ociblk gc` to reclaim layers.\n";

static const char rmi_usage[] =
	"usage: ociblk rmi IMAGE...\n"
	"\n"
	"Removes each image record.  Containers created from it keep working (they reference the\n"
	"layers themselves); `ociblk gc` reclaims layers nothing references any more.\n";

static int cmd_rm_common(int argc, char **argv, const struct cli_globals *g, bool containers)
{
	const char *usage = containers ? rm_usage : rmi_usage;
	if (argc < 2) return cli_usage_error(usage, "%s: expected at least one %s", argv[0], containers ? "CONTAINER" : "IMAGE");
	for (int i = 1; i < argc; i++)
		if (argv[i][0] == '-') return cli_usage_error(usage, "%s: unknown option '%s'", argv[0], argv[i]);
	struct layer_store *store = NULL;
	if (cli_store_open(g, false, &store)) return 1;
	int failures = 0;
	for (int i = 1; i < argc; i++) {
		int err;
		if (containers) {
			struct container_record rec;
			err = layer_store_container_get(store, argv[i], &rec);
			if (err == -ENOENT) log_error(err, "rm: no such container '%s'", argv[i]);
			if (!err) err = layer_store_container_remove(store, argv[i]); /* logs "in use" itself */
		} else {
			struct image_record rec;
			memset(&rec, 0, sizeof rec);
			err = layer_store_image_get(store, argv[i], &rec);
			image_record_clear(&rec);
			if (err == -ENOENT) log_error(err, "rmi: no such image '%s'", argv[i]);
			if (!err) err = layer_store_image_remove(store, argv[i]);
		}
		if (err) failures++;
		else if (!g->quiet && !g->json) printf("%s\n", argv[i]);
	}
	layer_store_close(store);
	return failures ? 1 : 0;
}

static int cmd_rm(int argc, char **argv, const struct cli_globals *g) { return cmd_rm_common(argc, argv, g, true); }
static int cmd_rmi(int argc, char **argv, const struct cli_globals *g) { return cmd_rm_common(argc, argv, g, false); }

CLI_COMMAND(rm, "rm", "remove containers", rm_usage, cmd_rm)
CLI_COMMAND(rmi, "rmi", "remove images", rmi_usage, cmd_rmi)
