#!/usr/bin/env bash
# `make demo`: the main job of ociblk end to end, narrated.  A small ext4 disk image becomes a
# base layer; a container gets a private copy-on-write disk on it; we change one file inside the
# file system by writing its 4 KiB block through the container; commit makes that change a layer
# of a new image; export writes the new image as a sparse raw disk that e2fsck checks and debugfs
# reads.  Then the NBD part (issue 4): a two-layer OCI image built with umoci is imported, a
# container on it is served with `ociblk serve`, a client writes 4 KiB into the middle of a big file
# of the image, and that latency is printed beside overlayfs copy-up of the same file measured in
# the same run.  Everything happens in a temporary store (kept with OCIBLK_DEMO_KEEP=1).
#
# To extend: add a section at the end with `step "what it shows"` then commands run through `run`
# (which echoes them).  $OCIBLK, $W (work dir) and the images/containers below are available.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${OCIBLK_BUILD:-$here/build}
OCIBLK=$BUILD/ociblk
PATH=$PATH:/usr/sbin:/sbin
W=$(mktemp -d "${TMPDIR:-/tmp}/ociblk-demo.XXXXXX")
export OCIBLK_ROOT=$W/store
if [ "${OCIBLK_DEMO_KEEP:-0}" = 1 ]; then trap 'echo; echo "(kept $W)"' EXIT; else trap 'rm -rf "$W"' EXIT; fi

bold=; dim=; off=
if [ -t 1 ]; then bold=$'\e[1m'; dim=$'\e[2m'; off=$'\e[0m'; fi
nstep=0
step() { nstep=$((nstep + 1)); echo; echo "${bold}== $nstep. $*${off}"; }
run() { echo "${dim}\$ $*${off}" | sed "s|$OCIBLK|ociblk|g; s|$W/|./|g"; "$@"; }
say() { echo "   $*"; }

for t in mkfs.ext4 e2fsck debugfs; do
	command -v $t >/dev/null || { echo "demo: $t is missing: run make deps" >&2; exit 1; }
done
[ -x "$OCIBLK" ] || { echo "demo: $OCIBLK is not built: run make" >&2; exit 1; }

step "A root file system: a directory tree made into a 64 MiB ext4 image with mkfs.ext4 -d"
mkdir -p "$W/rootfs/etc" "$W/rootfs/srv/www" "$W/rootfs/usr/share/data"
echo "ociblk-demo" >"$W/rootfs/etc/hostname"
printf '%-63s\n' "hello from the base image" >"$W/rootfs/srv/www/index.txt"
seq 1 200000 >"$W/rootfs/usr/share/data/numbers.txt"
head -c 2M /dev/urandom >"$W/rootfs/usr/share/data/random.bin"
run mkfs.ext4 -q -F -b 4096 -L demo -d "$W/rootfs" "$W/base.img" 64M >/dev/null
say "base.img: $(du -h --apparent-size "$W/base.img" | cut -f1) apparent, $(du -h "$W/base.img" | cut -f1) on disk"

step "Add it to the store as a base layer (zero blocks are not stored, chunks are zstd-compressed)"
run "$OCIBLK" layer add-raw --name demo-base "$W/base.img"
run "$OCIBLK" images

step "Create two containers on the image: each gets a private copy-on-write disk, nothing is copied"
run "$OCIBLK" create demo-base web1
run "$OCIBLK" create demo-base web2
run "$OCIBLK" ps

step "Change a file inside web1's file system by writing one 4 KiB block of its disk"
blk=$(debugfs -R "bmap /srv/www/index.txt 0" "$W/base.img" 2>/dev/null)
say "debugfs says /srv/www/index.txt lives in file-system block $blk, i.e. at byte $((blk * 4096)) of the disk"
printf '%-63s\n' "hello from container web1" >"$W/new.txt"
run "$OCIBLK" write web1 $((blk * 4096)) "$W/new.txt"
say "web1 reads back:  $("$OCIBLK" read web1 $((blk * 4096)) 64 | tr -s ' ')"
say "web2 still reads: $("$OCIBLK" read web2 $((blk * 4096)) 64 | tr -s ' ')"
run "$OCIBLK" ps

step "Commit web1: its upper becomes a new layer on top of the chain, image demo-v2"
run "$OCIBLK" commit web1 demo-v2
run "$OCIBLK" images

step "Export demo-v2 as a sparse raw disk; e2fsck checks it, debugfs reads the changed file"
run "$OCIBLK" export demo-v2 "$W/v2.img"
say "v2.img: $(du -h --apparent-size "$W/v2.img" | cut -f1) apparent, $(du -h "$W/v2.img" | cut -f1) on disk"
run e2fsck -fn "$W/v2.img"
say "/srv/www/index.txt in v2.img:   $(debugfs -R "cat /srv/www/index.txt" "$W/v2.img" 2>/dev/null | tr -s ' ')"
say "/srv/www/index.txt in base.img: $(debugfs -R "cat /srv/www/index.txt" "$W/base.img" 2>/dev/null | tr -s ' ')"
run "$OCIBLK" export web2 "$W/web2.img" >/dev/null
if cmp -s "$W/base.img" "$W/web2.img"; then say "web2's disk is byte for byte the original base.img"; else say "web2 differs from base.img!"; exit 1; fi

step "What the store holds: layers with their reference counts, and a full check"
run "$OCIBLK" layer ls
run "$OCIBLK" fsck

step "Clean up: references are counted, gc reclaims only layers that nothing uses"
run "$OCIBLK" rm web1 web2
run "$OCIBLK" rmi demo-base
say "demo-v2 still uses both layers (the base is shared, not copied), so gc keeps them:"
run "$OCIBLK" gc
run "$OCIBLK" rmi demo-v2
run "$OCIBLK" gc

echo
echo "${bold}demo finished: ext4 image -> base layer -> container write -> commit -> export -> e2fsck clean${off}"

# ---- issue 4: an OCI image served over NBD, and a first write beside overlayfs copy-up -----------
BIG_MB=${OCIBLK_DEMO_BIG_MB:-128}
SERVE_PID=
demo_nbd_cleanup() {
	[ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null
	mountpoint -q "$W/ovl/merged" 2>/dev/null && umount "$W/ovl/merged"
	return 0
}
if [ "${OCIBLK_DEMO_KEEP:-0}" = 1 ]; then trap 'demo_nbd_cleanup; echo; echo "(kept $W)"' EXIT; else trap 'demo_nbd_cleanup; rm -rf "$W"' EXIT; fi

step "A two-layer OCI image built locally with umoci: a base layer, then one that adds a ${BIG_MB} MiB file"
for t in umoci nbdsh python3; do command -v $t >/dev/null || { echo "demo: $t is missing: run make deps" >&2; exit 1; }; done
rootless=; [ "$(id -u)" = 0 ] || rootless=--rootless
run umoci init --layout "$W/oci"
run umoci new --image "$W/oci:app"
run umoci unpack $rootless --image "$W/oci:app" "$W/bundle" >/dev/null
mkdir -p "$W/bundle/rootfs/etc" "$W/bundle/rootfs/srv"
echo "ociblk-nbd-demo" >"$W/bundle/rootfs/etc/hostname"
run umoci repack --image "$W/oci:app" "$W/bundle"
rm -rf "$W/bundle"
run umoci unpack $rootless --image "$W/oci:app" "$W/bundle2" >/dev/null
(yes "ociblk demo data, one line of a big file" || true) | head -c $((BIG_MB << 20)) >"$W/bundle2/rootfs/srv/big.dat"
run umoci repack --image "$W/oci:app" "$W/bundle2"
rm -rf "$W/bundle2"

step "Import it (each OCI layer becomes a block layer) and create a container on it"
run "$OCIBLK" import "oci:$W/oci:app" --name app --size 1G
run "$OCIBLK" create app app1
run "$OCIBLK" export app "$W/app.img" >/dev/null
mid=$(( (BIG_MB << 20) / 4096 / 2 ))
blk=$(debugfs -R "bmap /srv/big.dat $mid" "$W/app.img" 2>/dev/null)
rm -f "$W/app.img"
say "/srv/big.dat's middle block is file-system block $blk, byte $((blk * 4096)) of the disk"

step "Serve the container over NBD and write 4 KiB into the middle of /srv/big.dat through a client (nbdsh), with a flush"
echo "${dim}\$ ociblk serve --nbd unix:./nbd.sock --export app1 &${off}"
"$OCIBLK" serve --nbd "unix:$W/nbd.sock" --export app1 >/dev/null &
SERVE_PID=$!
for _ in $(seq 1 200); do [ -S "$W/nbd.sock" ] && break; sleep 0.05; done
echo "${dim}\$ nbdinfo nbd+unix:///app1?socket=./nbd.sock${off}"
nbdinfo "nbd+unix:///app1?socket=$W/nbd.sock" | grep -E "export-size|is_read_only|can_multi_conn" || true
nbd_us=$(PATH=/usr/bin:$PATH nbdsh -u "nbd+unix:///app1?socket=$W/nbd.sock" -c "
import time
buf = b'w' * 4096
t0 = time.perf_counter()
h.pwrite(buf, $blk * 4096)
h.flush()
t1 = time.perf_counter()
assert h.pread(4096, $blk * 4096) == buf
print('%.0f' % ((t1 - t0) * 1e6))")
say "ociblk over NBD: first 4 KiB write + flush into the ${BIG_MB} MiB file: ${bold}${nbd_us} µs${off} (one block copied, nothing else)"
kill "$SERVE_PID"; wait "$SERVE_PID"; SERVE_PID=
run "$OCIBLK" ps

step "The same change on overlayfs: open + 4 KiB write + fsync copies the whole ${BIG_MB} MiB file up first"
mkdir -p "$W/ovl/upper" "$W/ovl/work" "$W/ovl/merged"
if [ "$(id -u)" = 0 ] && grep -qw overlay /proc/filesystems && run umoci unpack $rootless --image "$W/oci:app" "$W/lowerb" >/dev/null &&
	run mount -t overlay overlay -o "lowerdir=$W/lowerb/rootfs,upperdir=$W/ovl/upper,workdir=$W/ovl/work" "$W/ovl/merged"; then
	cache="cold cache"
	{ sync && echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null || cache="warm cache: drop_caches not permitted here"
	ovl_us=$(python3 - "$W/ovl/merged/srv/big.dat" <<'PY'
import os, sys, time
t0 = time.perf_counter()
fd = os.open(sys.argv[1], os.O_WRONLY)
os.pwrite(fd, b"w" * 4096, os.fstat(fd).st_size // 2 // 4096 * 4096)
os.fsync(fd)
t1 = time.perf_counter()
os.close(fd)
print("%.0f" % ((t1 - t0) * 1e6))
PY
)
	umount "$W/ovl/merged"
	say "overlayfs copy-up ($cache): ${bold}${ovl_us} µs${off}, upper now holds $(du -sh "$W/ovl/upper" | cut -f1)"
	say "ociblk was ${bold}$(( ovl_us / (nbd_us > 0 ? nbd_us : 1) ))x${off} faster for the same 4 KiB change (fio-jobs/compare.sh measures this properly)"
else
	say "(skipped: mounting overlayfs needs root with CAP_SYS_ADMIN)"
fi
echo
echo "${bold}nbd demo finished: OCI image -> import -> container -> NBD write${off}"
