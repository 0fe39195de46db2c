#!/usr/bin/env bash
# The Xen ring path's cost, through the simulated Xen: 4 KiB random reads and first writes (each
# write to a block still in the image's layer) at QD1 and QD32, via blkfront-sim -> ring ->
# ociblk xen-backend -> cow/, with grant copy or grant map, persistent grants on or off; beside
# the same workload on the cow/ engine called directly (xen-cowbench).  Prints IOPS, p50/p99
# latency and the ratio of each ring row's IOPS to the engine's, all measured in this run.
# Not a test: nothing is asserted about speed.  Usage: bench/xen-sim-bench.sh [SECONDS] [MiB]
set -u
BUILD=${OCIBLK_BUILD:-$(cd "$(dirname "$0")/.." && pwd)/build}
OCIBLK=$BUILD/ociblk
FE=$BUILD/tests/tools/blkfront-sim
COWB=$BUILD/tests/tools/xen-cowbench
SECS=${1:-2}
MIB=${2:-256}
for b in "$OCIBLK" "$FE" "$COWB"; do [ -x "$b" ] || { echo "missing $b (make all tests)"; exit 1; }; done
T=$(mktemp -d)
PIDS=""
cleanup() { for p in $PIDS; do kill "$p" 2>/dev/null; done; for p in $PIDS; do wait "$p" 2>/dev/null; done; rm -rf "$T"; }
trap cleanup EXIT
export OCIBLK_ROOT=$T/store OCIBLK_XEN_SIM=$T/sim.sock

"$FE" pattern "$T/base.img" $((MIB << 20))
"$OCIBLK" layer add-raw "$T/base.img" --name bench --no-compress >/dev/null || exit 1
rm -f "$T/base.img"
"$OCIBLK" xen-sim "$T/sim.sock" 2>/dev/null & PIDS="$PIDS $!"
for _ in $(seq 200); do "$FE" xs-read /local/domain/0 >/dev/null 2>&1 && break; sleep 0.05; done
"$OCIBLK" xen-backend --type bcopy 2>"$T/copy.log" & PIDS="$PIDS $!"
"$OCIBLK" xen-backend --type bmap --grant-map 2>"$T/map.log" & PIDS="$PIDS $!"
sleep 0.3

dom=10
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" "$2"; }
# run PATHNAME WORKLOAD-ARGS... ; prints one row
run() {
	local path=$1 wl=$2; shift 2
	dom=$((dom + 1))
	"$OCIBLK" create bench "c$dom" >/dev/null
	case $path in
	engine) "$COWB" "$OCIBLK_ROOT" "c$dom" --seconds "$SECS" "$@" >"$T/out" 2>&1 ;;
	*)
		local type=bcopy fe=()
		case $path in map*) type=bmap ;; esac
		case $path in *persistent) fe=(--persistent) ;; esac
		"$OCIBLK" xen-attach --type $type $dom xvda "c$dom" >/dev/null
		"$FE" --domid $dom --vdev 51712 "${fe[@]}" --seconds "$SECS" "$@" bench >"$T/out" 2>&1 ;;
	esac
	local iops p50 p99
	iops=$(field iops "$T/out"); p50=$(field p50_us "$T/out"); p99=$(field p99_us "$T/out")
	[ -n "$iops" ] || { echo "$wl $path: failed"; sed 's/^/  /' "$T/out" | tail -5; return; }
	[ "$path" = engine ] && base=$iops
	printf "%-22s %-18s %9.0f %9.1f %9.1f %8.2fx\n" "$wl" "$path" "$iops" "$p50" "$p99" "$(awk -v a="$iops" -v b="$base" 'BEGIN{print a/b}')"
}

printf "%-22s %-18s %9s %9s %9s %9s\n" workload path IOPS p50_us p99_us vs-engine
for wl in "read-4k-qd1:--qd 1 --write-pct 0" "read-4k-qd32:--qd 32 --write-pct 0" \
	  "first-write-4k-qd1:--qd 1 --write-pct 100 --first-writes" "first-write-4k-qd32:--qd 32 --write-pct 100 --first-writes"; do
	name=${wl%%:*}; args=${wl#*:}
	base=1
	# shellcheck disable=SC2086
	for path in engine copy copy-persistent map map-persistent; do run $path "$name" $args --bs 4096; done
done
echo "(ring rows: blkfront-sim -> shared ring -> ociblk xen-backend process -> cow queue; engine: cow queue in-process."
echo " first writes wrap around after ${MIB} MiB; target: ring path >= 0.8x the engine's IOPS)"
