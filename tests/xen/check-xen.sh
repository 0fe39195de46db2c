#!/usr/bin/env bash
# Real Xen end to end: boots Xen + a Linux dom0 under QEMU (TCG), runs `ociblk xen-backend` in
# dom0 and PV guests whose xen-blkfront uses it.  Prints TAP.  Skips only when QEMU or the Xen
# packages cannot be had on this machine.
set -uo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${OCIBLK_BUILD:-$top/build}
here=$top/tests/xen
work=${XEN_WORK:-$build/xen}
if ! XEN_WORK=$work bash "$here/fetch.sh" > /dev/null 2>"$work.fetch.log"; then
  echo "1..0 # SKIP cannot install QEMU/Xen packages here (see $work.fetch.log)"; exit 0
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
ob=$build/ociblk
store=$tmp/payload/store
mkdir -p "$tmp/payload/payload"
# The guests' image: an OCI image built with umoci, three layers (one file under /etc each) and a
# 16 MiB file in the first, imported with `ociblk import`.
export OCIBLK_ROOT=$store
lay=$tmp/oci
umoci init --layout "$lay" && umoci new --image "$lay:t"
umoci unpack --image "$lay:t" "$tmp/b" >/dev/null
mkdir -p "$tmp/b/rootfs/etc" "$tmp/b/rootfs/data"
head -c 16M /dev/urandom > "$tmp/b/rootfs/data/big"
for n in 1 2 3; do
  echo "layer$n" > "$tmp/b/rootfs/etc/layer$n"
  umoci repack --refresh-bundle --image "$lay:t" "$tmp/b" >/dev/null
done
"$ob" import "oci:$lay:t" --name base --size 256M >/dev/null || { echo "1..1"; echo "not ok 1 - import the guest image"; exit 1; }
"$ob" create base c1 >/dev/null && "$ob" create base c2 >/dev/null
"$ob" export base "$tmp/base.raw" && sha256sum < "$tmp/base.raw" | cut -d' ' -f1 > "$tmp/payload/payload/base.sha256"
bash "$here/mkinitrd.sh" "$work" "$tmp/dom0.cpio" "$tmp/guest.cpio" "$here/dom0-test.sh" "$here/guest-test.sh" "$tmp/payload"
bash "$here/run-qemu.sh" "$work" "$tmp/dom0.cpio" "${XEN_TIMEOUT:-900}" > "$tmp/serial.log" 2>&1
cp "$tmp/serial.log" "$work/serial-last.log"  # kept for diagnosis
results=$(grep -a '^RESULT ' "$tmp/serial.log" | sed 's/^RESULT //')
n=$(printf '%s\n' "$results" | grep -c . || true)
echo "1..$((n + 1))"
grep -aq 'DOM0-DONE' "$tmp/serial.log" && echo "ok 1 - dom0 ran the test to the end" || echo "not ok 1 - dom0 ran the test to the end"
i=1
printf '%s\n' "$results" | while read -r status rest; do
  [ -n "$status" ] || continue
  i=$((i + 1))
  if [ "$status" = ok ]; then echo "ok $i - $rest"; else echo "not ok $i - ${rest#ok }"; fi
done
grep -a -E 'MARK|GUEST|ociblk' "$tmp/serial.log" | sed 's/^/# /' | tail -60
