/* The ociblk command: each subcommand lives in its own cli/cmd_*.c and registers itself with
 * CLI_COMMAND, so modules add commands without touching a shared table.
 *
 * A command function gets argv starting at its own name (argv[0] = "create") plus the parsed
 * global options, and returns a process exit status: 0 success, 1 failure (the error was
 * logged), 2 usage error.  Commands print `--help` text from their usage string. */
#ifndef OCIBLK_CLI_H
#define OCIBLK_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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

/* ---- helpers shared by the commands (cli/util.c) ---- */
struct json_object;

/* Parses a byte count: decimal digits with an optional binary suffix K, M, G, T (KiB..TiB; a
 * trailing "iB" or "B" is accepted).  0 or -EINVAL / -ERANGE (nothing logged). */
int cli_parse_bytes(const char *s, uint64_t *out);
/* "1.5 GiB"-style text for tables. */
const char *cli_human_bytes(uint64_t bytes, char *buf, size_t len);
/* Prints a JSON value (pretty) on stdout followed by a newline, and frees it. */
void cli_json_print(struct json_object *obj);
/* Maps a 0 / -errno result to an exit status: 0 -> 0, anything else -> 1. */
static inline int cli_exit_status(int err) { return err ? 1 : 0; }
/* Option parsing for commands: resets getopt so getopt_long can be used on the command's argv,
 * with errors reported by the caller (opterr = 0). */
void cli_getopt_reset(void);
/* Standard message for an unknown option or missing option argument after getopt_long returned
 * '?' or ':'; returns 2. */
int cli_bad_option(const char *usage, int argc, char **argv);

#endif
