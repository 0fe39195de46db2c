/* `ociblk serve`: export the store's containers (read-write) and images (read-only) over NBD
 * until SIGTERM/SIGINT, then drain, flush and close every device and exit 0. */
#include "cli/cli.h"
#include "common/log.h"
#include "nbd/nbd.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char serve_usage[] =
	"usage: ociblk serve --nbd unix:PATH|tcp:HOST:PORT [--export NAME]...\n"
	"\n"
	"Serves the store over NBD until SIGTERM or SIGINT.  Every container is exported read-write\n"
	"and every image read-only, each under its record name; --export NAME (repeatable) limits\n"
	"the exports to those names (the first one is also the default export \"\").\n"
	"tcp: with an empty HOST (tcp::10809) binds loopback only.  On SIGTERM the server stops\n"
	"accepting, finishes the requests in flight, flushes and closes every device, and exits 0.\n"
	"\n"
	"  --nbd ADDR     unix:PATH or tcp:HOST:PORT (port 0 picks a free one; the address is printed)\n"
	"  --export NAME  export only this container or image (repeatable)\n";

static struct nbd_server *volatile serve_server;

static void serve_on_signal(int sig)
{
	(void)sig;
	struct nbd_server *s = serve_server;
	if (s) nbd_server_stop(s);
}

static int serve_run(int argc, char **argv, const struct cli_globals *g)
{
	const char *listen = NULL;
	const char **exports = calloc(argc > 0 ? (size_t)argc : 1, sizeof(char *));
	unsigned nexp = 0;
	int status = 1;
	if (!exports) return 1;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--nbd") && i + 1 < argc) listen = argv[++i];
		else if (!strncmp(a, "--nbd=", 6)) listen = a + 6;
		else if (!strcmp(a, "--export") && i + 1 < argc) exports[nexp++] = argv[++i];
		else if (!strncmp(a, "--export=", 9)) exports[nexp++] = a + 9;
		else {
			status = cli_usage_error(serve_usage, "serve: unexpected argument '%s'", a);
			goto out_free;
		}
	}
	if (!listen) {
		status = cli_usage_error(serve_usage, "serve: --nbd is required");
		goto out_free;
	}

	struct layer_store *store;
	if (cli_store_open(g, false, &store) < 0) goto out_free;
	struct nbd_server_options opts = { .listen = listen, .exports = exports, .export_count = nexp };
	struct nbd_server *srv;
	if (nbd_server_create(store, &opts, &srv) < 0) {
		layer_store_close(store);
		goto out_free;
	}
	serve_server = srv;
	struct sigaction sa = { .sa_handler = serve_on_signal };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (g->json) printf("{\"listening\": \"%s\"}\n", nbd_server_address(srv));
	else if (!g->quiet) printf("serving on %s\n", nbd_server_address(srv));
	fflush(stdout);

	int rc = nbd_server_run(srv);
	serve_server = NULL;
	int rc2 = nbd_server_free(srv);
	layer_store_close(store);
	status = rc < 0 || rc2 < 0 ? 1 : 0;
out_free:
	free(exports);
	return status;
}

CLI_COMMAND(serve, "serve", "export containers and images over NBD", serve_usage, serve_run)
