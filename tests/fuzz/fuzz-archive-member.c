/* libFuzzer target: archive member extraction of image-import (oci-archive and docker-archive
 * tars, plain or gzip/zstd) through image_import_archive_check: unpack into the store's tmp/
 * under our own names, then look members up by name, following hard links and docker-archive
 * symlinks (relative, "..", chains, loops, dangling).  The first byte picks the transport (bit 0:
 * docker-archive); the rest is the archive.  Every input must be unpacked or rejected cleanly: no
 * crash, no out-of-bounds access (ASan), no leak, no file written outside the unpack directory,
 * and the unpack directory removed again. */
#include "common/log.h"
#include "image-import/image_import.h"
#include "layer-store/layer_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const names[] = {
	"oci-layout", "index.json", "manifest.json", "repositories",
	"blobs/sha256/0000000000000000000000000000000000000000000000000000000000000000",
	"blobs/sha256/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
	"layer.tar", "a/layer.tar", "b/layer.tar", "a/../b/layer.tar", "./a/layer.tar", "config.json", "link",
};

static struct layer_store *store;
static char dir[64], archive[128], tmp[128];

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st, (void)flag, (void)ftw;
	return remove(path);
}

static void cleanup(void)
{
	layer_store_close(store);
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!store) {
		log_set_quiet(1);
		snprintf(dir, sizeof(dir), "/tmp/fuzz-archive-member.XXXXXX");
		if (!mkdtemp(dir)) abort();
		char root[96];
		snprintf(root, sizeof(root), "%s/store", dir);
		if (layer_store_open(root, LAYER_STORE_CREATE, &store)) abort();
		snprintf(archive, sizeof(archive), "%s/in.tar", dir);
		snprintf(tmp, sizeof(tmp), "%s/tmp", root);
		atexit(cleanup);
	}
	if (size < 1) return 0;
	int fd = open(archive, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) abort();
	for (size_t off = 1; off < size;) {
		ssize_t n = write(fd, data + off, size - off);
		if (n <= 0) abort();
		off += (size_t)n;
	}
	close(fd);
	(void)image_import_archive_check(store, archive, data[0] & 1, names, sizeof(names) / sizeof(names[0]));
	/* nothing may be left behind: the store's tmp/ is empty, the fuzz dir holds only store and input */
	DIR *d = opendir(tmp);
	struct dirent *e;
	if (!d) abort();
	while ((e = readdir(d)))
		if (e->d_name[0] != '.') abort();
	closedir(d);
	return 0;
}
