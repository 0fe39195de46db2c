#!/usr/bin/env bash
# Installs every Debian package ociblk and its tests need, only those that are missing.
set -euo pipefail
pkgs=(
  build-essential pkg-config clang libclang-rt-14-dev
  libarchive-dev libext2fs-dev e2fsprogs libjson-c-dev libssl-dev libzstd-dev liburing-dev
  libxxhash-dev libxen-dev
  fio nbdkit libnbd-bin python3-libnbd qemu-utils umoci skopeo util-linux kmod zstd
  python3
  qemu-system-x86 xen-utils-4.17 busybox-static cpio xz-utils
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then echo "deps: all present"; exit 0; fi
echo "deps: installing ${missing[*]}"
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
