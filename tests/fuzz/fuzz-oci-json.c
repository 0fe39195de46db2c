/* libFuzzer target: the strict OCI / Docker JSON parsers of image-import (index, manifest, config,
 * docker-archive manifest.json) through image_import_json_check.  The first byte picks the
 * document kind; the rest is the document.  Every input must be accepted or rejected cleanly: no
 * crash, no out-of-bounds access (ASan), no leak, whatever the nesting, types or sizes. */
#include "common/log.h"
#include "image-import/image_import.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int quiet;
	if (!quiet) {
		log_set_quiet(1);
		quiet = 1;
	}
	if (size < 1) return 0;
	enum image_import_json_kind kind = (enum image_import_json_kind)(1 + data[0] % 4);
	(void)image_import_json_check(kind, data + 1, size - 1);
	return 0;
}
