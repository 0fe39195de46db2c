#!/usr/bin/env bash
# Import benchmark (a script, not a test): builds a multi-layer image of a few hundred MB with
# many small files (umoci, at run time), then in the same run times
#   - `ociblk import` of it into a fresh store (verify + ext4 apply + commit of every layer),
#   - `umoci unpack` of the same image (the work a runtime does before mounting overlayfs),
# and prints both, the throughput over the image's uncompressed bytes, and the ratio.
# Knobs: BENCH_DIR (default $TMPDIR or /tmp), IMPORT_BENCH_LAYERS (4), IMPORT_BENCH_MIB_PER_LAYER
# (75: about 3/4 in files of 1-64 KiB, the rest in a few large files), IMPORT_BENCH_RUNS (3, best
# of each is reported).  Needs root (umoci unpack as root, like a runtime).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${OCIBLK_BUILD:-$here/build}
OCIBLK=$BUILD/ociblk
[ -x "$OCIBLK" ] || { echo "import-bench: $OCIBLK is not built (run make)" >&2; exit 1; }
command -v umoci >/dev/null || { echo "import-bench: umoci missing (make deps)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "import-bench: run as root" >&2; exit 1; }
layers=${IMPORT_BENCH_LAYERS:-4}; mib=${IMPORT_BENCH_MIB_PER_LAYER:-75}; runs=${IMPORT_BENCH_RUNS:-3}
dir=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/ociblk-import-bench.XXXXXX")
trap 'rm -rf "$dir"' EXIT

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) RAM, kernel $(uname -r)"
echo "disk:    $dir ($(df -PT "$dir" | awk 'NR==2 {print $2 " on " $1}'))"
echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC'), ociblk $(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo '?')"

# ---- the image -------------------------------------------------------------------------------
umoci init --layout "$dir/img" >/dev/null
umoci new --image "$dir/img:bench" >/dev/null
umoci unpack --image "$dir/img:bench" "$dir/b" >/dev/null
python3 - "$dir/b/rootfs" "$layers" "$mib" "$dir/img:bench" "$dir/b" <<'EOF'
import os, random, subprocess, sys
root, layers, mib, image, bundle = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
rnd = random.Random(42)
files = 0
for l in range(layers):
    budget = mib << 20
    small = budget * 3 // 4
    d = os.path.join(root, "layer%d" % l)
    n = 0
    while small > 0:
        sub = os.path.join(d, "dir%03d" % (n // 500))
        os.makedirs(sub, exist_ok=True)
        size = rnd.randint(1024, 65536)
        # half-compressible content, like binaries and text
        data = os.urandom(size // 2) + bytes(size - size // 2)
        with open(os.path.join(sub, "f%05d" % n), "wb") as f:
            f.write(data)
        small -= size; n += 1
    big = budget // 4
    for k in range(4):
        with open(os.path.join(d, "big%d.bin" % k), "wb") as f:
            f.write(os.urandom(big // 8) + bytes(big // 8))
    if l > 0:  # change and delete some files of the layer below
        below = os.path.join(root, "layer%d" % (l - 1), "dir000")
        for name in sorted(os.listdir(below))[:100]:
            os.unlink(os.path.join(below, name))
    files += n + 4
    subprocess.run(["umoci", "repack", "--refresh-bundle", "--image", image, bundle], check=True,
                   stdout=subprocess.DEVNULL)
print("image:   %d layers, %d files, %d MiB of file data" % (layers, files, layers * mib))
EOF
blobs=$(du -sm "$dir/img/blobs" | cut -f1)
echo "blobs:   $blobs MiB compressed"

best() { sort -n | head -1; }
calc() { awk "BEGIN { printf \"%.4f\", $1 }"; }
now() { date +%s.%N; }
imp=(); unp=()
for r in $(seq 1 "$runs"); do
	rm -rf "$dir/store" "$dir/unpacked"; sync
	t0=$(now); OCIBLK_ROOT=$dir/store "$OCIBLK" --quiet import oci:"$dir/img":bench >/dev/null; t1=$(now)
	umoci unpack --image "$dir/img:bench" "$dir/unpacked" >/dev/null; t2=$(now)
	imp+=("$(calc "$t1 - $t0")"); unp+=("$(calc "$t2 - $t1")")
done
ti=$(printf '%s\n' "${imp[@]}" | best); tu=$(printf '%s\n' "${unp[@]}" | best)
tar_mib=$(du -sm "$dir/unpacked/rootfs" | cut -f1)
store_mib=$(du -sm "$dir/store/layers" | cut -f1)
echo
printf '%-28s %10s %12s\n' "" "seconds" "MiB/s"
printf '%-28s %10.2f %12.1f\n' "ociblk import" "$ti" "$(calc "$tar_mib / $ti")"
printf '%-28s %10.2f %12.1f\n' "umoci unpack" "$tu" "$(calc "$tar_mib / $tu")"
printf 'ratio import/unpack: %.2f (best of %d runs; throughput over %d MiB unpacked; layers in store: %d MiB)\n' \
	"$(calc "$ti / $tu")" "$runs" "$tar_mib" "$store_mib"
