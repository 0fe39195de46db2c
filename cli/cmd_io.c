/* `ociblk write CONTAINER OFFSET FILE` and `ociblk read NAME OFFSET LENGTH`: data in and out of a
 * device without a server, for scripts, tests and the demo.  Any byte offset and length work:
 * the unaligned head and tail sectors are read, patched and written back (cow/ itself wants
 * 512-byte multiples).  Data moves in pieces of at most 1 MiB. */
#include "cli/cli.h"
#include "cli/cli_device.h"
#include "common/checked.h"
#include "common/cleanup.h"
#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define IO_PIECE_BYTES (1u << 20)
/* A piece plus one sector of slack at each end for alignment. */
#define IO_BUF_BYTES (IO_PIECE_BYTES + 2 * COW_SECTOR_SIZE)

static const char write_usage[] =
	"usage: ociblk write [--fua] CONTAINER OFFSET FILE\n"
	"\n"
	"Writes the contents of FILE ('-' for stdin) into the container's disk at byte OFFSET\n"
	"(suffixes K, M, G allowed; any alignment).  The data is flushed before the command exits\n"
	"(--fua also makes every piece durable as it is written).\n";

static const char read_usage[] =
	"usage: ociblk read [--container | --image] [-o FILE] NAME OFFSET LENGTH\n"
	"\n"
	"Copies LENGTH bytes at byte OFFSET of a container's or image's disk to stdout (or FILE).\n"
	"OFFSET and LENGTH take suffixes K, M, G; any alignment.\n";

/* Reads or writes [off, off+len) of dev through buf (IO_BUF_BYTES, 4 KiB aligned); for a write,
 * data holds the len new bytes. */
static int io_piece(struct cow_device *dev, bool is_write, uint64_t off, uint64_t len, unsigned char *buf,
		    const unsigned char *data, unsigned flags, unsigned char **out_ptr)
{
	uint64_t a = off / COW_SECTOR_SIZE * COW_SECTOR_SIZE;
	uint64_t e = DIV_ROUND_UP(off + len, COW_SECTOR_SIZE) * COW_SECTOR_SIZE;
	int err;
	if (!is_write) {
		err = cow_device_read(dev, a, buf, e - a);
		*out_ptr = buf + (off - a);
		return err;
	}
	if (a != off) {
		err = cow_device_read(dev, a, buf, COW_SECTOR_SIZE);
		if (err) return err;
	}
	if (e != off + len && (e - COW_SECTOR_SIZE >= a + (a != off ? COW_SECTOR_SIZE : 0))) {
		err = cow_device_read(dev, e - COW_SECTOR_SIZE, buf + (e - COW_SECTOR_SIZE - a), COW_SECTOR_SIZE);
		if (err) return err;
	}
	memcpy(buf + (off - a), data, len);
	return cow_device_write(dev, a, buf, e - a, flags);
}

static int read_input(int fd, unsigned char *p, size_t want, size_t *got)
{
	*got = 0;
	while (*got < want) {
		ssize_t r = read(fd, p + *got, want - *got);
		if (r < 0 && errno == EINTR) continue;
		if (r < 0) return -errno;
		if (r == 0) break;
		*got += (size_t)r;
	}
	return 0;
}

static int cmd_write(int argc, char **argv, const struct cli_globals *g)
{
	static const struct option opts[] = {
		{ "fua", no_argument, 0, 'F' },
		{ 0, 0, 0, 0 },
	};
	unsigned flags = 0;
	int c;
	cli_getopt_reset();
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c != 'F') return cli_bad_option(write_usage, argc, argv);
		flags |= COW_FUA;
	}
	if (argc - optind != 3) return cli_usage_error(write_usage, "write: expected CONTAINER OFFSET FILE");
	const char *name = argv[optind], *file = argv[optind + 2];
	uint64_t off;
	if (cli_parse_bytes(argv[optind + 1], &off)) return cli_usage_error(write_usage, "write: bad OFFSET '%s'", argv[optind + 1]);

	CLEANUP_CLOSE int in = strcmp(file, "-") ? open(file, O_RDONLY | O_CLOEXEC) : dup(STDIN_FILENO);
	if (in < 0) return cli_exit_status(log_error(-errno, "write: open %s: %s", file, strerror(errno)));

	struct layer_store *store = NULL;
	if (cli_store_open(g, false, &store)) return 1;
	struct cow_device *dev = NULL;
	CLEANUP_FREE unsigned char *buf = NULL, *data = NULL;
	uint64_t total = 0, size = 0;
	int err = cli_device_open(store, "write", name, CLI_DEVICE_CONTAINER, false, &dev, NULL);
	if (err) goto out;
	size = cow_device_size_bytes(dev);
	if (posix_memalign((void **)&buf, 4096, IO_BUF_BYTES) || !(data = malloc(IO_PIECE_BYTES))) {
		err = log_error(-ENOMEM, "write: out of memory");
		goto out;
	}
	/* A regular file's length is known: refuse before writing anything rather than half way. */
	struct stat st;
	if (fstat(in, &st) == 0 && S_ISREG(st.st_mode) && !ck_range_within(off, (uint64_t)st.st_size, size)) {
		err = log_error(-ENOSPC, "write: %s: %llu bytes at offset %llu run past the end of the %llu-byte device", name,
				(unsigned long long)st.st_size, (unsigned long long)off, (unsigned long long)size);
		goto out;
	}
	for (;;) {
		size_t got;
		err = read_input(in, data, IO_PIECE_BYTES, &got);
		if (err) {
			log_error(err, "write: read %s: %s", file, strerror(-err));
			goto out;
		}
		if (got == 0) break;
		uint64_t pos;
		if (ck_add_u64(off, total, &pos) || !ck_range_within(pos, got, size)) {
			err = log_error(-ENOSPC, "write: %s: data runs past the end of the %llu-byte device (at offset %llu)",
					name, (unsigned long long)size, (unsigned long long)(off + total));
			goto out;
		}
		err = io_piece(dev, true, pos, got, buf, data, flags, NULL);
		if (err) {
			log_error(err, "write: %s at offset %llu: %s", name, (unsigned long long)pos, strerror(-err));
			goto out;
		}
		total += got;
	}
	err = cow_device_flush(dev);
	if (err) log_error(err, "write: flush %s: %s", name, strerror(-err));
out:
	if (dev) {
		int cerr = cow_device_close(dev);
		if (!err) err = cerr;
	}
	layer_store_close(store);
	if (!err) {
		if (g->json) {
			struct json_object *o = json_object_new_object();
			json_object_object_add(o, "container", json_object_new_string(name));
			json_object_object_add(o, "offset_bytes", json_object_new_int64((int64_t)off));
			json_object_object_add(o, "length_bytes", json_object_new_int64((int64_t)total));
			cli_json_print(o);
		} else if (!g->quiet) {
			printf("wrote %llu bytes at offset %llu of %s\n", (unsigned long long)total, (unsigned long long)off, name);
		}
	}
	return cli_exit_status(err);
}

static int cmd_read(int argc, char **argv, const struct cli_globals *g)
{
	static const struct option opts[] = {
		{ "container", no_argument, 0, 'c' },
		{ "image", no_argument, 0, 'i' },
		{ "output", required_argument, 0, 'o' },
		{ 0, 0, 0, 0 },
	};
	enum cli_device_kind want = CLI_DEVICE_ANY;
	const char *outfile = NULL;
	int c;
	cli_getopt_reset();
	while ((c = getopt_long(argc, argv, "o:", opts, NULL)) != -1) {
		if (c == 'c') want = CLI_DEVICE_CONTAINER;
		else if (c == 'i') want = CLI_DEVICE_IMAGE;
		else if (c == 'o') outfile = optarg;
		else return cli_bad_option(read_usage, argc, argv);
	}
	if (argc - optind != 3) return cli_usage_error(read_usage, "read: expected NAME OFFSET LENGTH");
	const char *name = argv[optind];
	uint64_t off, len;
	if (cli_parse_bytes(argv[optind + 1], &off)) return cli_usage_error(read_usage, "read: bad OFFSET '%s'", argv[optind + 1]);
	if (cli_parse_bytes(argv[optind + 2], &len)) return cli_usage_error(read_usage, "read: bad LENGTH '%s'", argv[optind + 2]);

	CLEANUP_CLOSE int out = outfile ? open(outfile, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644) : dup(STDOUT_FILENO);
	if (out < 0) return cli_exit_status(log_error(-errno, "read: open %s: %s", outfile ? outfile : "stdout", strerror(errno)));

	struct layer_store *store = NULL;
	if (cli_store_open(g, false, &store)) return 1;
	struct cow_device *dev = NULL;
	CLEANUP_FREE unsigned char *buf = NULL;
	int err = cli_device_open(store, "read", name, want, true, &dev, NULL);
	if (err) goto out;
	uint64_t size = cow_device_size_bytes(dev);
	if (!ck_range_within(off, len, size)) {
		err = log_error(-EINVAL, "read: %s: range %llu+%llu is past the end of the %llu-byte device", name,
				(unsigned long long)off, (unsigned long long)len, (unsigned long long)size);
		goto out;
	}
	if (posix_memalign((void **)&buf, 4096, IO_BUF_BYTES)) {
		err = log_error(-ENOMEM, "read: out of memory");
		goto out;
	}
	for (uint64_t done = 0; done < len;) {
		uint64_t n = len - done > IO_PIECE_BYTES ? IO_PIECE_BYTES : len - done;
		unsigned char *p = NULL;
		err = io_piece(dev, false, off + done, n, buf, NULL, 0, &p);
		if (err) {
			log_error(err, "read: %s at offset %llu: %s", name, (unsigned long long)(off + done), strerror(-err));
			goto out;
		}
		for (uint64_t w = 0; w < n;) {
			ssize_t r = write(out, p + w, n - w);
			if (r < 0 && errno == EINTR) continue;
			if (r < 0) {
				err = log_error(-errno, "read: write %s: %s", outfile ? outfile : "stdout", strerror(errno));
				goto out;
			}
			w += (uint64_t)r;
		}
		done += n;
	}
out:
	if (dev) {
		int cerr = cow_device_close(dev);
		if (!err) err = cerr;
	}
	layer_store_close(store);
	return cli_exit_status(err);
}

CLI_COMMAND(write, "write", "write a file's bytes into a container's disk", write_usage, cmd_write)
CLI_COMMAND(read, "read", "copy bytes out of a container's or image's disk", read_usage, cmd_read)
