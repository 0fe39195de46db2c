#!/usr/bin/env bash
# Installs what the real-Xen harness needs and unpacks the Xen hypervisor and a Linux kernel into
# $XEN_WORK (default build/xen).  The hypervisor and kernel are taken from Debian packages with
# `apt-get download` + `dpkg -x`, so the host's boot setup is never touched.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
work=${XEN_WORK:-$top/build/xen}
mkdir -p "$work/debs"
need=()
for p in qemu-system-x86 xen-utils-4.17 busybox-static cpio xz-utils kmod; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  [ -n "$(find /var/lib/apt/lists -name '*Packages*' 2>/dev/null | head -1)" ] || apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$kpkg" ] || { echo "fetch: cannot resolve linux-image-amd64" >&2; exit 1; }
cd "$work/debs"
if [ ! -f "$work/kernel.stamp" ] || [ "$(cat "$work/kernel.stamp")" != "$kpkg" ]; then
  rm -f ./*.deb
  apt-get download xen-hypervisor-4.17-amd64 "$kpkg" >&2 2>/dev/null || apt-get download xen-hypervisor-4.17-amd64 "$kpkg" >&2
  rm -rf "$work/kroot" "$work/xroot"
  dpkg -x linux-image-*.deb "$work/kroot"
  dpkg -x xen-hypervisor-*.deb "$work/xroot"
  # Multiboot needs the hypervisor as ELF; TCG boots an uncompressed vmlinux twice as fast.
  zcat "$work"/xroot/boot/xen-*.gz > "$work/xen"
  vmlinuz=$(ls "$work"/kroot/boot/vmlinuz-*)
  off=$(python3 -c "import sys; d=open(sys.argv[1],'rb').read(); print(d.find(b'\xfd7zXZ\x00'))" "$vmlinuz")
  tail -c +$((off + 1)) "$vmlinuz" | xz -dc --single-stream > "$work/vmlinux" 2>/dev/null || true
  file "$work/vmlinux" 2>/dev/null | grep -q ELF || head -c 4 "$work/vmlinux" | grep -q ELF
  echo "$kpkg" > "$work/kernel.stamp"
fi
echo "$work"
