/* The ociblk command: each subcommand lives in its own cli/cmd_*.c and registers itself with
 * CLI_COMMAND, so modules add commands without touching a shared table.
 *
 * A command function gets argv starting at its own name (argv[0] = "create") plus the parsed
 * global options, and returns a process exit status: 0 success, 1 failure (the error was
 * logged), 2 usage error.  Commands print `--help` text from their usage string. */
#ifndef OCIBLK_CLI_H
#define OCIBLK_CLI_H

#include <stdbool.h>

struct layer_store;

struct cli_globals {
	const char *root;   /* --root DIR, else $OCIBLK_ROOT, else the default */
	bool json;          /* --json: machine-readable output on stdout */
	bool quiet;         /* --quiet */
};

struct cli_command {
	const char *name;
	const char *summary;  /* one line for `ociblk --help` */
	const char *usage;    /* full help text for `ociblk NAME --help` */
	int (*run)(int argc, char **argv, const struct cli_globals *g);
	struct cli_command *next;
};

void cli_command_register(struct cli_command *cmd);

#define CLI_COMMAND(ident, name_, summary_, usage_, run_)                                   \
	static struct cli_command cli_cmd_##ident = { name_, summary_, usage_, run_, 0 };    \
	__attribute__((constructor)) static void cli_register_##ident(void)                  \
	{ cli_command_register(&cli_cmd_##ident); }

/* Opens the store named by the globals (create: make it if missing). Logs and returns -errno. */
int cli_store_open(const struct cli_globals *g, bool create, struct layer_store **out);
/* Prints "ociblk: <message>" and the usage text to stderr; returns 2. */
int cli_usage_error(const char *usage, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* 1 when argv contains -h or --help (then the caller prints usage and returns 0). */
bool cli_wants_help(int argc, char **argv);

#endif
