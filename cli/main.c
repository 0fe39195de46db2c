/* ociblk: entry point.  Parses the global options, then dispatches to the subcommand that
 * registered itself with CLI_COMMAND (cli/cmd_*.c).  Exit status: 0 ok, 1 failure, 2 usage. */
#include "cli/cli.h"
#include "common/log.h"
#include "layer-store/layer_store.h"

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct cli_command *commands;

void cli_command_register(struct cli_command *cmd)
{
	/* Keep the list sorted by name so `--help` is stable. */
	struct cli_command **p = &commands;
	while (*p && strcmp((*p)->name, cmd->name) < 0) p = &(*p)->next;
	cmd->next = *p;
	*p = cmd;
}

int cli_store_open(const struct cli_globals *g, bool create, struct layer_store **out)
{
	int err = layer_store_open(g->root, create ? LAYER_STORE_CREATE : 0, out);
	if (err == -ENOENT && !create)
		fprintf(stderr, "ociblk: hint: `ociblk layer add-raw` (or an import) creates the store; "
				"--root DIR or $OCIBLK_ROOT chooses another one\n");
	return err;
}

int cli_usage_error(const char *usage, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "ociblk: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n%s", usage);
	return 2;
}

bool cli_wants_help(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--")) break;
		if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) return true;
	}
	return false;
}

static void print_help(FILE *f)
{
	fprintf(f, "usage: ociblk [--root DIR] [--json] [--quiet] [--verbose] COMMAND [ARGS]\n\n"
		   "Content-addressed block layers, copy-on-write container disks, served over NBD and Xen blkif.\n\n"
		   "global options:\n"
		   "  --root DIR   the store (default $OCIBLK_ROOT, else " LAYER_STORE_DEFAULT_ROOT ")\n"
		   "  --json       machine-readable output\n"
		   "  --quiet      only errors\n"
		   "  --verbose    debug logging\n\ncommands:\n");
	for (struct cli_command *c = commands; c; c = c->next) fprintf(f, "  %-12s %s\n", c->name, c->summary);
	fprintf(f, "\n`ociblk COMMAND --help` describes one command.\n");
}

/* Scripts write `ociblk images --json` as often as `ociblk --json images`: accept --json and
 * --root after the command name too (up to a "--"), removing them from the command's argv. */
static int take_trailing_globals(int argc, char **argv, int cmd_index, struct cli_globals *g, int *argc_out)
{
	int out = cmd_index + 1;
	int j;
	for (j = cmd_index + 1; j < argc; j++) {
		const char *a = argv[j];
		if (!strcmp(a, "--")) break;
		if (!strcmp(a, "--json")) {
			g->json = true;
		} else if (!strcmp(a, "--root")) {
			if (j + 1 >= argc) {
				fprintf(stderr, "ociblk: --root needs a directory\n");
				return 2;
			}
			g->root = argv[++j];
		} else if (!strncmp(a, "--root=", 7)) {
			g->root = a + 7;
		} else {
			argv[out++] = argv[j];
		}
	}
	while (j < argc) argv[out++] = argv[j++];
	argv[out] = NULL;
	*argc_out = out;
	return 0;
}

int main(int argc, char **argv)
{
	struct cli_globals g = { .root = getenv("OCIBLK_ROOT") };
	int i;
	for (i = 1; i < argc && argv[i][0] == '-'; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--root") && i + 1 < argc) {
			g.root = argv[++i];
		} else if (!strncmp(a, "--root=", 7)) {
			g.root = a + 7;
		} else if (!strcmp(a, "--json")) {
			g.json = true;
		} else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
			g.quiet = true;
			log_set_level(LOG_LEVEL_ERROR);
		} else if (!strcmp(a, "--verbose") || !strcmp(a, "-v")) {
			log_set_level(LOG_LEVEL_DEBUG);
		} else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			print_help(stdout);
			return 0;
		} else if (!strcmp(a, "--root")) {
			fprintf(stderr, "ociblk: --root needs a directory\n");
			return 2;
		} else {
			fprintf(stderr, "ociblk: unknown global option %s\n", a);
			print_help(stderr);
			return 2;
		}
	}
	if (i >= argc) {
		print_help(stderr);
		return 2;
	}
	for (struct cli_command *c = commands; c; c = c->next) {
		if (strcmp(c->name, argv[i]) != 0) continue;
		int rc = take_trailing_globals(argc, argv, i, &g, &argc);
		if (rc) return rc;
		if (cli_wants_help(argc - i, argv + i)) {
			fputs(c->usage, stdout);
			return 0;
		}
		return c->run(argc - i, argv + i, &g);
	}
	fprintf(stderr, "ociblk: unknown command '%s' (see ociblk --help)\n", argv[i]);
	return 2;
}
