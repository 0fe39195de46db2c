#!/usr/bin/env bash
# `make bench`: measures the cow/ device against a plain file on the same disk, in one run, and
# prints one table of latencies and ratios (tests/tools/cow-bench.c does the measuring).
# Knobs: BENCH_DIR (where the store and files go; default $TMPDIR or /tmp), BENCH_SIZE_MIB (256),
# BENCH_OPS (5000 writes per row, twice that many reads), BENCH_SYNC_OPS (300 flushed writes).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${OCIBLK_BUILD:-$here/build}
tool=$BUILD/tests/tools/cow-bench
[ -x "$tool" ] || { echo "bench: $tool is not built (run make bench)" >&2; exit 1; }
dir=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/ociblk-bench.XXXXXX")
trap 'rm -rf "$dir"' EXIT

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
mem=$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
fs=$(df -PT "$dir" | awk 'NR==2 {print $2 " on " $1}')
virt=$(systemd-detect-virt 2>/dev/null || true)
echo "machine: $(nproc) cores ($cpu), $mem RAM, kernel $(uname -r)${virt:+, virtualised: $virt}"
echo "disk:    $dir ($fs)"
echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC'), ociblk $(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo '?')"
echo
"$tool" "$dir" "${BENCH_SIZE_MIB:-256}" "${BENCH_OPS:-5000}" "${BENCH_SYNC_OPS:-300}"
