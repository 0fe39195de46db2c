/* `ociblk export CONTAINER|IMAGE FILE`: writes the device as a sparse raw image.  Block status
 * tells which runs read as zero: those stay holes (so are all-zero blocks found in data runs);
 * only data is read and written.  FILE "-" streams every byte to stdout instead. */
#include "cli/cli.h"
#include "cli/cli_device.h"
#include "common/cleanup.h"
#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define EXPORT_BUF_BYTES (1u << 20)

static const char export_usage[] =
	"usage: ociblk export [--container | --image] CONTAINER|IMAGE FILE\n"
	"\n"
	"Writes the disk of a container (its chain plus its writes) or of an image to FILE as a raw\n"
	"image.  Blocks that read as zero become holes, so FILE takes only the space of the data.\n"
	"FILE '-' writes every byte to stdout.  A container in use by a server cannot be exported.\n"
	"--container / --image say which one NAME is when both exist.\n";

static int write_all(int fd, const void *buf, size_t len, uint64_t off, bool stream)
{
	const char *p = buf;
	while (len) {
		ssize_t w = stream ? write(fd, p, len) : pwrite(fd, p, len, (off_t)off);
		if (w < 0 && errno == EINTR) continue;
		if (w < 0) return -errno;
		p += w;
		len -= (size_t)w;
		off += (uint64_t)w;
	}
	return 0;
}

static bool is_zero(const unsigned char *p, size_t len)
{
	const uint64_t *q = (const uint64_t *)p;
	for (size_t i = 0; i < len / 8; i++)
		if (q[i]) return false;
	return true;
}

static int cmd_export(int argc, char **argv, const struct cli_globals *g)
{
	static const struct option opts[] = {
		{ "container", no_argument, 0, 'c' },
		{ "image", no_argument, 0, 'i' },
		{ 0, 0, 0, 0 },
	};
	enum cli_device_kind want = CLI_DEVICE_ANY;
	int c;
	cli_getopt_reset();
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c == 'c') want = CLI_DEVICE_CONTAINER;
		else if (c == 'i') want = CLI_DEVICE_IMAGE;
		else return cli_bad_option(export_usage, argc, argv);
	}
	if (argc - optind != 2) return cli_usage_error(export_usage, "export: expected CONTAINER|IMAGE FILE");
	const char *name = argv[optind], *file = argv[optind + 1];
	bool stream = !strcmp(file, "-");

	struct layer_store *store = NULL;
	if (cli_store_open(g, false, &store)) return 1;
	struct cow_device *dev = NULL;
	CLEANUP_FREE unsigned char *buf = NULL;
	int fd = -1;
	uint64_t data_bytes = 0, size = 0;
	int err = cli_device_open(store, "export", name, want, true, &dev, NULL);
	if (err) goto out;
	size = cow_device_size_bytes(dev);
	if (posix_memalign((void **)&buf, 4096, EXPORT_BUF_BYTES)) {
		err = log_error(-ENOMEM, "export: out of memory");
		goto out;
	}
	if (stream) {
		fd = STDOUT_FILENO;
	} else {
		fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd < 0) {
			err = log_error(-errno, "export: create %s: %s", file, strerror(errno));
			goto out;
		}
		if (ftruncate(fd, (off_t)size) < 0) {
			err = log_error(-errno, "export: size %s: %s", file, strerror(errno));
			goto out;
		}
	}

	uint64_t blocks = size / COW_BLOCK_SIZE;
	for (uint64_t b = 0; b < blocks;) {
		enum cow_block_state state;
		uint64_t run = 0;
		err = cow_device_block_status(dev, b, blocks - b, &state, &run);
		if (err) goto out;
		if (run == 0 || run > blocks - b) {
			err = log_error(-EIO, "export: block status returned a bad run length at block %llu", (unsigned long long)b);
			goto out;
		}
		if (state == COW_BLOCK_ZERO) {
			if (stream) {
				memset(buf, 0, EXPORT_BUF_BYTES);
				for (uint64_t left = run * COW_BLOCK_SIZE; left;) {
					size_t n = left > EXPORT_BUF_BYTES ? EXPORT_BUF_BYTES : (size_t)left;
					err = write_all(fd, buf, n, 0, true);
					if (err) goto write_failed;
					left -= n;
				}
			}
			b += run;
			continue;
		}
		for (uint64_t i = 0; i < run;) {
			uint64_t n = run - i;
			if (n > EXPORT_BUF_BYTES / COW_BLOCK_SIZE) n = EXPORT_BUF_BYTES / COW_BLOCK_SIZE;
			uint64_t off = (b + i) * COW_BLOCK_SIZE;
			err = cow_device_read(dev, off, buf, n * COW_BLOCK_SIZE);
			if (err) {
				log_error(err, "export: read %s at offset %llu: %s", name, (unsigned long long)off, strerror(-err));
				goto out;
			}
			if (stream) {
				err = write_all(fd, buf, n * COW_BLOCK_SIZE, 0, true);
				if (err) goto write_failed;
			} else {
				for (uint64_t k = 0; k < n; k++) {
					unsigned char *p = buf + k * COW_BLOCK_SIZE;
					if (is_zero(p, COW_BLOCK_SIZE)) continue; /* leave a hole */
					uint64_t m = k + 1;
					while (m < n && !is_zero(buf + m * COW_BLOCK_SIZE, COW_BLOCK_SIZE)) m++;
					err = write_all(fd, p, (m - k) * COW_BLOCK_SIZE, off + k * COW_BLOCK_SIZE, false);
					if (err) goto write_failed;
					data_bytes += (m - k) * COW_BLOCK_SIZE;
					k = m - 1;
				}
			}
			i += n;
		}
		b += run;
	}
	if (!stream && fsync(fd) < 0) {
		err = -errno;
		goto write_failed;
	}
	goto out;
write_failed:
	log_error(err, "export: write %s: %s", file, strerror(-err));
out:
	if (fd >= 0 && !stream && close(fd) < 0 && !err) err = log_error(-errno, "export: close %s: %s", file, strerror(errno));
	if (dev) {
		int cerr = cow_device_close(dev);
		if (!err) err = cerr;
	}
	layer_store_close(store);
	if (!err && !stream) {
		if (g->json) {
			struct json_object *o = json_object_new_object();
			json_object_object_add(o, "name", json_object_new_string(name));
			json_object_object_add(o, "file", json_object_new_string(file));
			json_object_object_add(o, "size_bytes", json_object_new_int64((int64_t)size));
			json_object_object_add(o, "data_bytes", json_object_new_int64((int64_t)data_bytes));
			cli_json_print(o);
		} else if (!g->quiet) {
			char a[32], d[32];
			printf("exported %s to %s: %s, %s of data, the rest holes\n", name, file,
			       cli_human_bytes(size, a, sizeof a), cli_human_bytes(data_bytes, d, sizeof d));
		}
	}
	return cli_exit_status(err);
}

CLI_COMMAND(export, "export", "write a container's or image's disk to a sparse raw file", export_usage, cmd_export)
