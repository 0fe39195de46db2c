/* Opening a device by the name a user typed: a container (read-write, or read-only for commands
 * that only read: they write nothing of it) or an image (read-only).  Shared by export, read and write. */
#include "cli/cli_device.h"
#include "common/log.h"

#include <errno.h>
#include <string.h>

int cli_device_open(struct layer_store *store, const char *cmd, const char *name, enum cli_device_kind want,
		    bool readonly, struct cow_device **out, enum cli_device_kind *kind_out)
{
	struct container_record ctr;
	struct image_record img;
	bool have_ctr = false, have_img = false;
	int err;

	memset(&img, 0, sizeof img);
	if (want != CLI_DEVICE_IMAGE) {
		err = layer_store_container_get(store, name, &ctr);
		if (err && err != -ENOENT) return err;
		have_ctr = err == 0;
	}
	if (want != CLI_DEVICE_CONTAINER) {
		err = layer_store_image_get(store, name, &img);
		image_record_clear(&img);
		if (err && err != -ENOENT) return err;
		have_img = err == 0;
	}
	if (have_ctr && have_img)
		return log_error(-EINVAL, "%s: '%s' is both a container and an image: add --container or --image", cmd, name);
	if (!have_ctr && want == CLI_DEVICE_CONTAINER) {
		memset(&img, 0, sizeof img);
		err = layer_store_image_get(store, name, &img);
		image_record_clear(&img);
		if (err == 0)
			return log_error(-EINVAL, "%s: '%s' is an image, which is read-only: create a container from it "
					 "(ociblk create %s NAME)", cmd, name, name);
	}
	if (!have_ctr && !have_img) {
		const char *what = want == CLI_DEVICE_IMAGE ? "image" : want == CLI_DEVICE_CONTAINER ? "container" : "container or image";
		return log_error(-ENOENT, "%s: no %s named '%s'", cmd, what, name);
	}
	if (have_ctr) {
		err = readonly ? cow_device_open_container_readonly(store, name, out)
			       : cow_device_open_container(store, name, out);
		if (err == -EBUSY) log_error(err, "%s: container '%s' is in use", cmd, name);
		if (!err && kind_out) *kind_out = CLI_DEVICE_CONTAINER;
		return err;
	}
	err = cow_device_open_image(store, name, out);
	if (!err && kind_out) *kind_out = CLI_DEVICE_IMAGE;
	return err;
}
