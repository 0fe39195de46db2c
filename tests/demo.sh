#!/usr/bin/env bash
# `make demo`: the main job of ociblk end to end, narrated.  A small ext4 disk image becomes a
# base layer; a container gets a private copy-on-write disk on it; we change one file inside the
# file system by writing its 4 KiB block through the container; commit makes that change a layer
# of a new image; export writes the new image as a sparse raw disk that e2fsck checks and debugfs
# reads.  Everything happens in a temporary store (kept with OCIBLK_DEMO_KEEP=1).
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
