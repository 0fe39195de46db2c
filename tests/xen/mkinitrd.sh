#!/usr/bin/env bash
# Builds the dom0 initramfs (busybox, Xen tools, ociblk, kernel modules) and the guest initramfs.
# usage: mkinitrd.sh WORK OUT_DOM0_CPIO OUT_GUEST_CPIO DOM0_SCRIPT GUEST_SCRIPT [EXTRA_DIR]
# DOM0_SCRIPT runs in dom0 after Xen's daemons are up; GUEST_SCRIPT is the guest's /test.sh.
# EXTRA_DIR's contents are copied into dom0's / (test payloads).
# Guests get busybox, xen-blkfront + ext4, and the xenstore client (their control channel with
# dom0: /local/domain/<id>/data/).  dom0 also holds /guest/initrd-fio.cpio: the guest initramfs
# with Debian's fio, its shared libraries and fio-jobs/*.fio appended as a zstd-compressed cpio
# (Linux unpacks concatenated archives), for the guest that runs fio.
set -euo pipefail
work=$1 out=$2 gout=$3 dscript=$4 gscript=$5 extra=${6:-}
top=$(cd "$(dirname "$0")/../.." && pwd)
kver=$(ls "$work/kroot/lib/modules")
mods="$work/kroot/lib/modules/$kver"

add_bin() { # add_bin ROOT FILE...: copies executables and their shared libraries
  local root=$1 f lib; shift
  for f in "$@"; do
    mkdir -p "$root$(dirname "$f")"
    cp -L "$f" "$root$f"
    ldd "$f" 2>/dev/null | awk '/=> \//{print $3} /^\t\/lib/{print $1}' | while read -r lib; do
      [ -e "$root$lib" ] && continue
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    done
  done
}

add_mods() { # add_mods ROOT MOD...: modules with their dependencies, load order in /modules.order
  local root=$1; shift
  mkdir -p "$root/lib/modules"
  for m in "$@"; do
    modprobe -d "$work/kroot" -S "$kver" --show-depends "$m" 2>/dev/null | awk '$1=="insmod"{print $2}'
  done | awk '!seen[$0]++' | while read -r ko; do
    cp "$ko" "$root/lib/modules/"
    echo "$(basename "$ko")" >> "$root/modules.order"
  done
}

base_root() { # base_root ROOT
  local root=$1
  mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,run,tmp,mnt,var/log,var/lib,root}
  cp /bin/busybox "$root/bin/busybox"
  for a in $(/bin/busybox --list); do [ -e "$root/bin/$a" ] || ln -s busybox "$root/bin/$a"; done
  ln -sf ../run "$root/var/run"
}

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
depmod -b "$work/kroot" "$kver" 2>/dev/null || true

# ---- guest ----
g=$tmp/guest; base_root "$g"
add_mods "$g" xen-blkfront ext4
add_bin "$g" /usr/bin/xenstore
for t in read write exists; do ln -sf xenstore "$g/usr/bin/xenstore-$t"; done
cp "$gscript" "$g/test.sh"; chmod +x "$g/test.sh"
cat > "$g/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do
  # busybox insmod does not read /proc/cmdline: pass the module's NAME.param=value options on.
  n=$(basename "$m" .ko | tr - _)
  insmod /lib/modules/$m $(tr ' ' '\n' < /proc/cmdline | sed -n "s/^$n\.//p") 2>/dev/null
done
echo "GUEST-BOOTED"
sh /test.sh 2>&1
echo "GUEST-DONE rc=$?"
sync
poweroff -f
INIT
chmod +x "$g/init"
(cd "$g" && find . | cpio -o -H newc --quiet) > "$gout"
# The fio guest's extra files: only what the base guest does not already have.
fr=$tmp/fio; mkdir -p "$fr/fio-jobs"
add_bin "$fr" "$(command -v fio)"
cp "$top"/fio-jobs/*.fio "$fr/fio-jobs/"
(cd "$fr" && find . | while read -r p; do [ -d "$p" ] || [ ! -e "$g/$p" ] && echo "$p"; done | cpio -o -H newc --quiet) \
  | zstd -q -3 > "$tmp/fio.cpio.zst"

# ---- dom0 ----
d=$tmp/dom0; base_root "$d"
add_mods "$d" xen-evtchn xen-privcmd xenfs xen-gntdev xen-gntalloc loop ext4
xb=/usr/lib/xen-4.17/bin
add_bin "$d" $xb/xl $xb/xenstored $xb/xenconsoled $xb/xenconsole $xb/xen-init-dom0 $xb/libxl-save-helper /usr/bin/xenstore
for t in read write ls chmod rm watch list exists; do ln -sf xenstore "$d/usr/bin/xenstore-$t"; done
if [ -x "$top/build/ociblk" ]; then
  add_bin "$d" "$top/build/ociblk"
  mkdir -p "$d/usr/bin" && mv "$d$top/build/ociblk" "$d/usr/bin/ociblk"
fi
cp -L /lib/x86_64-linux-gnu/libgcc_s.so.1 "$d/lib/x86_64-linux-gnu/"  # pthread_cancel dlopens it
for f in /sbin/mkfs.ext4 /sbin/e2fsck /sbin/debugfs; do [ -x "$f" ] && add_bin "$d" "$f"; done
mkdir -p "$d/etc/xen" "$d/var/lib/xen" "$d/var/log/xen/console" "$d/var/lib/xenstored" "$d/guest"
printf 'autoballoon="off"\nrun_hotplug_scripts=1\n' > "$d/etc/xen/xl.conf"
cp "$work/vmlinux" "$d/guest/vmlinux"
cp "$gout" "$d/guest/initrd.cpio"
cat "$gout" "$tmp/fio.cpio.zst" > "$d/guest/initrd-fio.cpio"
mkdir -p "$d/etc/xen/scripts"
install -m 755 "$top/contrib/xen/block-ociblk" "$d/etc/xen/scripts/block-ociblk"
cp "$dscript" "$d/test.sh"; chmod +x "$d/test.sh"
[ -n "$extra" ] && cp -a "$extra"/. "$d/"
cat > "$d/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts; mount -t devpts devpts /dev/pts
mount -t tmpfs -o size=80% tmpfs /run; mount -t tmpfs -o size=80% tmpfs /tmp
mkdir -p /run/xen /run/xenstored /var/log/xen/console
for m in $(cat /modules.order); do
  # busybox insmod does not read /proc/cmdline: pass the module's NAME.param=value options on.
  n=$(basename "$m" .ko | tr - _)
  insmod /lib/modules/$m $(tr ' ' '\n' < /proc/cmdline | sed -n "s/^$n\.//p") 2>/dev/null
done
mount -t xenfs xenfs /proc/xen
export PATH=/usr/lib/xen-4.17/bin:/usr/bin:/bin:/sbin:/usr/sbin
xenstored --pid-file /run/xenstored.pid
xen-init-dom0 >/dev/null 2>&1
xenconsoled --log=guest --log-dir=/var/log/xen/console
echo "DOM0-READY"
sh /test.sh 2>&1
echo "DOM0-DONE rc=$?"
poweroff -f
INIT
chmod +x "$d/init"
(cd "$d" && find . | cpio -o -H newc --quiet) > "$out"
