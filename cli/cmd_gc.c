/* `ociblk gc`: removes layers that no image or container references, and stale temp files. */
#include "cli/cli.h"
#include "common/log.h"
#include "layer-store/layer_store.h"

#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GC_DEFAULT_TMP_AGE_SECONDS 3600u

static const char gc_usage[] =
	"usage: ociblk gc [--tmp-age SECONDS] [--json]\n"
	"\n"
	"Removes every layer that no image or container references, chain records of removed layers,\n"
	"and temp files older than --tmp-age seconds (default 3600).  Layers and temp files that a running\n"
	"ociblk process holds (a commit or import in progress, an open device) are kept whatever their\n"
	"age; the age only guards the instant between creating a temp file and holding it.\n";

static int cmd_gc(int argc, char **argv, const struct cli_globals *g)
{
	static const struct option opts[] = {
		{ "tmp-age", required_argument, 0, 't' },
		{ 0, 0, 0, 0 },
	};
	unsigned long age = GC_DEFAULT_TMP_AGE_SECONDS;
	int c;
	cli_getopt_reset();
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c != 't') return cli_bad_option(gc_usage, argc, argv);
		char *end;
		errno = 0;
		age = strtoul(optarg, &end, 10);
		if (*end || !*optarg || errno || age > 100u * 365 * 86400)
			return cli_usage_error(gc_usage, "gc: bad --tmp-age '%s'", optarg);
	}
	if (optind != argc) return cli_usage_error(gc_usage, "gc: unexpected argument '%s'", argv[optind]);

	struct layer_store *store = NULL;
	if (cli_store_open(g, false, &store)) return 1;
	struct layer_store_gc_stats st;
	memset(&st, 0, sizeof st);
	int err = layer_store_gc(store, (unsigned)age, &st);
	layer_store_close(store);
	if (err) return 1;
	if (g->json) {
		struct json_object *o = json_object_new_object();
		json_object_object_add(o, "layers_removed", json_object_new_int64((int64_t)st.layers_removed));
		json_object_object_add(o, "bytes_freed", json_object_new_int64((int64_t)st.bytes_freed));
		json_object_object_add(o, "temp_files_removed", json_object_new_int64((int64_t)st.temp_files_removed));
		json_object_object_add(o, "chain_records_removed", json_object_new_int64((int64_t)st.chain_records_removed));
		json_object_object_add(o, "layers_in_use", json_object_new_int64((int64_t)st.layers_in_use));
		cli_json_print(o);
	} else if (!g->quiet) {
		char b[32];
		printf("removed %llu layers (%s), %llu temp files, %llu chain records\n",
		       (unsigned long long)st.layers_removed, cli_human_bytes(st.bytes_freed, b, sizeof b),
		       (unsigned long long)st.temp_files_removed, (unsigned long long)st.chain_records_removed);
		if (st.layers_in_use)
			printf("kept %llu unreferenced layers that are in use (a commit or import in progress)\n",
			       (unsigned long long)st.layers_in_use);
	}
	return 0;
}

CLI_COMMAND(gc, "gc", "remove unreferenced layers and stale temp files", gc_usage, cmd_gc)
