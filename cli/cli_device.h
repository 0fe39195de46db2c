/* Private to cli/: open a cow device by a container or image name (cli/open_device.c). */
#ifndef OCIBLK_CLI_DEVICE_H
#define OCIBLK_CLI_DEVICE_H

#include "cow/cow.h"

enum cli_device_kind {
	CLI_DEVICE_ANY = 0,
	CLI_DEVICE_CONTAINER = 1,
	CLI_DEVICE_IMAGE = 2,
};

/* Opens name as want says (ANY: whichever exists; both existing is -EINVAL).  Containers open
 * read-write (their lock is taken: -EBUSY when in use), or with readonly read-only (nothing of the
 * container is written; -EBUSY while a device has it read-write); images always read-only.
 * Errors are logged with cmd as the operation. */
int cli_device_open(struct layer_store *store, const char *cmd, const char *name, enum cli_device_kind want,
		    bool readonly, struct cow_device **out, enum cli_device_kind *kind_out);

#endif
