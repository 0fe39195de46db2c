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
: > "$tmp/serial.log"
if "$ob" import "oci:$lay:t" --name base --size 256M >/dev/null \
  && "$ob" create base c1 >/dev/null && "$ob" create base c2 >/dev/null \
  && "$ob" create base c4 >/dev/null && "$ob" create base c5 >/dev/null \
  && "$ob" export base "$tmp/base.raw" >/dev/null && sha256sum < "$tmp/base.raw" | cut -d' ' -f1 > "$tmp/payload/payload/base.sha256" \
  && bash "$here/mkinitrd.sh" "$work" "$tmp/dom0.cpio" "$tmp/guest.cpio" "$here/dom0-test.sh" "$here/guest-test.sh" "$tmp/payload"; then
  bash "$here/run-qemu.sh" "$work" "$tmp/dom0.cpio" "${XEN_TIMEOUT:-1800}" > "$tmp/serial.log" 2>&1
else
  echo "# preparing the image or the initramfs failed"
fi
cp "$tmp/serial.log" "$work/serial-last.log"  # kept for diagnosis
# The plan is fixed: every "# PLAN ID description" line of dom0-test.sh is one test, in that order,
# whatever dom0 managed to report; check 1 is dom0 reaching its end having reported nothing else.
plan=$(sed -n 's/^# PLAN //p' "$here/dom0-test.sh")
grep -a '^RESULT ' "$tmp/serial.log" | tr -d '\r' > "$tmp/results"
echo "1..$(( $(printf '%s\n' "$plan" | wc -l) + 1 ))"
unknown=$(awk '{print $3}' "$tmp/results" | while read -r id; do grep "^$id " >/dev/null <<< "$plan" || echo "$id"; done | tr '\n' ' ')
if grep -aq 'DOM0-DONE' "$tmp/serial.log" && [ -z "$unknown" ]; then echo "ok 1 - dom0 ran the test to the end"
else echo "not ok 1 - dom0 ran the test to the end${unknown:+ (results outside the plan: $unknown)}"; fi
i=1
while read -r id desc; do
  i=$((i + 1))
  line=$(grep -a "^RESULT [a-z]* $id\( \|\$\)" "$tmp/results" | tail -1)
  case "$line" in
  "RESULT ok $id"*) echo "ok $i - $desc" ;;
  "RESULT not $id"*) detail=${line#"RESULT not $id"}; echo "not ok $i - $desc${detail:+ (${detail# })}" ;;
  *) echo "not ok $i - $desc (no result: dom0 never got there)" ;;
  esac
done <<< "$plan"
grep -a -E 'MARK|GUEST|ociblk|RESULT not' "$tmp/serial.log" | sed 's/^/# /' | tail -${XEN_DIAG_LINES:-80}
