/* Helpers shared by the ociblk subcommands: byte-count parsing, human-readable sizes, JSON output
 * and getopt plumbing.  Nothing here touches the store; commands stay thin on top of it. */
#include "cli/cli.h"

#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cli_parse_bytes(const char *s, uint64_t *out)
{
	char *end = NULL;
	unsigned long long v;
	unsigned shift = 0;

	if (!s || !*s || *s == '-' || *s == '+') return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (end == s) return -EINVAL;
	if (errno == ERANGE) return -ERANGE;
	switch (*end) {
	case '\0': break;
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	case 't': case 'T': shift = 40; end++; break;
	case 'b': case 'B': break;
	default: return -EINVAL;
	}
	if (shift && !strcmp(end, "iB")) end += 2;
	else if (!strcmp(end, "B") || !strcmp(end, "b")) end += 1;
	if (*end) return -EINVAL;
	if (shift && v > (UINT64_MAX >> shift)) return -ERANGE;
	*out = (uint64_t)v << shift;
	return 0;
}

const char *cli_human_bytes(uint64_t bytes, char *buf, size_t len)
{
	static const char *units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
	double v = (double)bytes;
	unsigned u = 0;
	while (v >= 1024 && u + 1 < sizeof units / sizeof units[0]) {
		v /= 1024;
		u++;
	}
	if (u == 0) snprintf(buf, len, "%llu B", (unsigned long long)bytes);
	else snprintf(buf, len, v < 10 ? "%.1f %s" : "%.0f %s", v, units[u]);
	return buf;
}

void cli_json_print(struct json_object *obj)
{
	puts(json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(obj);
}

void cli_getopt_reset(void)
{
	optind = 0; /* GNU: 0 re-initialises the scanner completely */
	opterr = 0;
}

int cli_bad_option(const char *usage, int argc, char **argv)
{
	const char *bad = (optind > 0 && optind <= argc) ? argv[optind - 1] : "?";
	if (optopt) return cli_usage_error(usage, "%s: unknown option or missing argument: -%c", argv[0], optopt);
	return cli_usage_error(usage, "%s: unknown option or missing argument: %s", argv[0], bad);
}
