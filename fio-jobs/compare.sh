#!/usr/bin/env bash
# fio-jobs/compare.sh: runs the fio-jobs/*.fio jobs, in one invocation and on the same machine,
# against ociblk over NBD and the peers a user would otherwise pick, and prints one markdown table
# with each figure and its ratio to ociblk, the space each overlay used after the first-write jobs,
# overlayfs copy-up of a 4 KiB write + fsync into big lower files (cold cache), and how the issue's
# targets came out.  A benchmark script, not a test: it asserts nothing, it reports.
#
# Needs root (mount overlayfs, drop caches), fio, qemu-img, qemu-nbd, nbdkit, nbdsh, python3.
# Environment (defaults in brackets; keep them modest, it should finish in a few minutes):
#   SIZE_MB [320]       device size; five regions of 20% (see the job files)
#   IODEPTH [32]        queue depth of the QD jobs       RUNTIME [3]   seconds per time-based job
#   IOS [4096]          first-write QD1 / rewrite I/Os   QD_IOS [8192] first-write QD I/Os
#   FLUSH_IOS [1024]    write+flush I/Os                 COPYUP_SIZES ["64M 256M 1G"] overlayfs files
#   CHAIN_LAYERS [20]   layers of the deep-chain read comparison
#   WORKDIR [/var/tmp]  where images live (a real disk, not tmpfs)   OUT [-]  also write the table here
#   TARGETS [all]       a subset to run, e.g. "ociblk qemu-nbd-raw qcow2-64k-l2ext" (names as in
#                       the table, plus ociblk-deep for the chain comparison and overlayfs); the
#                       rest print n/a.  OCIBLK_BUILD picks the ociblk binary (A/B of two builds).
#   JOBS [all]          a subset of the job names (e.g. "first-write-flush write-flush")
#   OCIBLK_B [-]        another ociblk binary for an A/B in the same run: its own container on
#                       the same base, served after ociblk, column ociblk-b
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=${OCIBLK_BUILD:-$HERE/../build}
OCIBLK=$BUILD/ociblk
SIZE_MB=${SIZE_MB:-320}; IODEPTH=${IODEPTH:-32}; RUNTIME=${RUNTIME:-3}
IOS=${IOS:-4096}; QD_IOS=${QD_IOS:-8192}; FLUSH_IOS=${FLUSH_IOS:-1024}
COPYUP_SIZES=${COPYUP_SIZES:-"64M 256M 1G"}; CHAIN_LAYERS=${CHAIN_LAYERS:-20}
OUT=${OUT:--}
export PATH=/usr/bin:/bin:/usr/sbin:/sbin:$PATH   # system python3 for nbdsh (python3-libnbd)

for t in fio qemu-img qemu-nbd nbdkit nbdsh python3 mount; do
	command -v $t >/dev/null || { echo "compare.sh: $t missing (make deps)" >&2; exit 1; }
done
[ -x "$OCIBLK" ] || { echo "compare.sh: $OCIBLK not built (make)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "compare.sh: needs root (overlayfs mount, drop_caches)" >&2; exit 1; }
REGION=$((SIZE_MB * 1024 * 1024 / 5))
for v in IOS QD_IOS FLUSH_IOS; do
	[ $(( ${!v} * 4096 )) -le $REGION ] || { echo "compare.sh: $v*4KiB exceeds a region ($REGION bytes): raise SIZE_MB" >&2; exit 1; }
done

W=$(mktemp -d "${WORKDIR:-/var/tmp}/ociblk-compare.XXXXXX")
R=$W/results; mkdir -p "$R"
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	mountpoint -q "$W/ovl/merged" 2>/dev/null && umount "$W/ovl/merged"
	rm -rf "$W"
}
trap cleanup EXIT
log() { echo "compare: $*" >&2; }
TARGETS=${TARGETS:-all}
want() { [ "$TARGETS" = all ] || [[ " $TARGETS " == *" $1 "* ]]; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
wait_sock() { for _ in $(seq 1 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "socket $1 never appeared" >&2; return 1; }

# settle ENGINE TARGET OUTFILE: one flush of the target, its seconds into OUTFILE.  Run before
# each write+flush job, so that job measures pairs, not the write-back of what the jobs before it
# left unflushed (40+ MiB after the first-write jobs); that one flush is reported on its own row.
settle() {
	local engine=$1 target=$2 out=$3
	if [ "$engine" = nbd ]; then
		nbdsh -u "${target#uri=}" -c '
import time
t = time.perf_counter(); h.flush(); print(time.perf_counter() - t)' >"$out"
	else
		python3 -c '
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
t = time.perf_counter(); os.fsync(fd); print(time.perf_counter() - t)' "${target#filename=}" >"$out"
	fi
}

# run_jobs NAME ENGINE TARGET DIRECT JOBS...: fio JSON per job into $R/NAME.JOB.json
run_jobs() {
	local name=$1 engine=$2 target=$3 direct=$4; shift 4
	local j
	for j in "$@"; do
		case $j in *flush) settle "$engine" "$target" "$R/$name.$j.settle" || log "$name: settle before $j failed";; esac
		FIO_ENGINE=$engine FIO_TARGET=$target FIO_DIRECT=$direct FIO_IODEPTH=$IODEPTH FIO_IOS=$IOS \
		FIO_QD_IOS=$QD_IOS FIO_FLUSH_IOS=$FLUSH_IOS FIO_RUNTIME=$RUNTIME \
			fio "$HERE/$j.fio" --output-format=json --output="$R/$name.$j.json" >/dev/null 2>"$R/$name.$j.err" ||
			{ log "$name $j failed:"; cat "$R/$name.$j.err" >&2; }
	done
}
want_job() { [ -z "${JOBS:-}" ] || [[ " $JOBS " == *" $1 "* ]]; }
FIRST_JOBS=(); LATER_JOBS=()
for j in first-write-qd1 first-write-qd first-write-flush; do want_job $j && FIRST_JOBS+=($j); done
for j in rewrite write-flush randread-base seqread-1m seqwrite-1m randrw; do want_job $j && LATER_JOBS+=($j); done
# bench NAME ENGINE TARGET DIRECT SPACE-CMD: every job; the space after the first-write jobs
bench() {
	local name=$1 engine=$2 target=$3 direct=$4 space=$5
	log "$name"
	run_jobs "$name" "$engine" "$target" "$direct" ${FIRST_JOBS[@]+"${FIRST_JOBS[@]}"}
	if [ -n "$space" ]; then sync; eval "$space" >"$R/$name.space"; fi
	run_jobs "$name" "$engine" "$target" "$direct" ${LATER_JOBS[@]+"${LATER_JOBS[@]}"}
}
du_bytes() { du -s --block-size=1 "$@" | awk '{s += $1} END {print s}'; }

# ---------------------------------------------------------------- base data --------------------
log "base image: $SIZE_MB MiB of incompressible data"
head -c $((SIZE_MB << 20)) /dev/urandom >"$W/base.img"
export OCIBLK_ROOT=$W/store
"$OCIBLK" --quiet layer add-raw --name base --no-compress "$W/base.img" >/dev/null
"$OCIBLK" --quiet create base ctr >/dev/null

# ---------------------------------------------------------------- ociblk ----------------------
if want ociblk || want ociblk-deep; then
drop_caches
"$OCIBLK" serve --nbd "unix:$W/ociblk.sock" >/dev/null 2>"$R/serve.err" & PIDS+=($!)
wait_sock "$W/ociblk.sock"
CTR_DIR=$(find "$W/store" -mindepth 2 -maxdepth 2 -type d -name ctr | head -1)
want ociblk && bench ociblk nbd "uri=nbd+unix:///ctr?socket=$W/ociblk.sock" 0 "du_bytes '$CTR_DIR'"
fi
if [ -n "${OCIBLK_B:-}" ]; then
"$OCIBLK_B" --quiet create base ctrb >/dev/null
drop_caches
"$OCIBLK_B" serve --nbd "unix:$W/ociblk-b.sock" --export ctrb >/dev/null 2>"$R/serve-b.err" & PIDS+=($!)
wait_sock "$W/ociblk-b.sock"
CTRB_DIR=$(find "$W/store" -mindepth 2 -maxdepth 2 -type d -name ctrb | head -1)
bench ociblk-b nbd "uri=nbd+unix:///ctrb?socket=$W/ociblk-b.sock" 0 "du_bytes '$CTRB_DIR'"
fi

# deep chain: CHAIN_LAYERS layers, each adding 256 scattered 4 KiB blocks all over the device
if want ociblk-deep; then
log "ociblk: building a $CHAIN_LAYERS-layer chain"
"$OCIBLK" --quiet create base chainctr >/dev/null
for i in $(seq 2 "$CHAIN_LAYERS"); do
	"$OCIBLK" serve --nbd "unix:$W/chain.sock" --export chainctr >/dev/null 2>>"$R/serve.err" & sp=$!
	wait_sock "$W/chain.sock"
	nbdsh -u "nbd+unix:///chainctr?socket=$W/chain.sock" -c "
import random
r = random.Random($i); n = h.get_size() // 4096
for b in r.sample(range(n), 256): h.pwrite(bytes([$i]) * 4096, b * 4096)
h.flush()"
	kill "$sp"; wait "$sp"
	"$OCIBLK" --quiet commit --force chainctr "chain$i" >/dev/null
done
"$OCIBLK" --quiet create "chain$CHAIN_LAYERS" deepctr >/dev/null
"$OCIBLK" --quiet create base flatctr >/dev/null
"$OCIBLK" serve --nbd "unix:$W/deep.sock" --export deepctr --export flatctr >/dev/null 2>>"$R/serve.err" & PIDS+=($!)
wait_sock "$W/deep.sock"
drop_caches
log "ociblk: 1-layer vs $CHAIN_LAYERS-layer random reads"
run_jobs ociblk-1layer nbd "uri=nbd+unix:///flatctr?socket=$W/deep.sock" 0 randread-base
run_jobs ociblk-deep nbd "uri=nbd+unix:///deepctr?socket=$W/deep.sock" 0 randread-base
fi

# ---------------------------------------------------------------- qcow2 chains on qemu-nbd ------
for cfg in "qcow2-64k:cluster_size=65536" "qcow2-4k:cluster_size=4096" "qcow2-64k-l2ext:cluster_size=65536,extended_l2=on"; do
	name=${cfg%%:*}; opts=${cfg#*:}
	want "$name" || continue
	qemu-img create -q -f qcow2 -b "$W/base.img" -F raw -o "$opts" "$W/$name.qcow2"
	drop_caches
	qemu-nbd --persistent --socket="$W/$name.sock" -f qcow2 --shared=8 "$W/$name.qcow2" 2>"$R/$name.qemu-nbd.err" & PIDS+=($!)
	wait_sock "$W/$name.sock"
	bench "$name" nbd "uri=nbd+unix:///?socket=$W/$name.sock" 0 "du_bytes '$W/$name.qcow2'"
done

# ---------------------------------------------------------------- qemu-nbd raw, nbdkit, io_uring
if want qemu-nbd-raw; then
cp "$W/base.img" "$W/raw.img"
drop_caches
qemu-nbd --persistent --socket="$W/raw.sock" -f raw --shared=8 "$W/raw.img" 2>"$R/raw.qemu-nbd.err" & PIDS+=($!)
wait_sock "$W/raw.sock"
bench qemu-nbd-raw nbd "uri=nbd+unix:///?socket=$W/raw.sock" 0 ""
fi
if want nbdkit-memory; then
nbdkit --foreground -U "$W/mem.sock" memory "${SIZE_MB}M" 2>"$R/nbdkit.err" & PIDS+=($!)
wait_sock "$W/mem.sock"
bench nbdkit-memory nbd "uri=nbd+unix:///?socket=$W/mem.sock" 0 ""
fi
if want raw-io_uring-direct; then
cp "$W/base.img" "$W/direct.img"
drop_caches
bench raw-io_uring-direct io_uring "filename=$W/direct.img" 1 ""
fi

# ---------------------------------------------------------------- overlayfs copy-up -------------
if want overlayfs; then
log "overlayfs copy-up"
mkdir -p "$W/ovl/lower"
for s in $COPYUP_SIZES; do (yes ociblk-lower-data || true) | head -c "$(numfmt --from=iec "$s")" >"$W/ovl/lower/f$s"; done
for s in $COPYUP_SIZES; do
	rm -rf "$W/ovl/upper" "$W/ovl/work"; mkdir -p "$W/ovl/upper" "$W/ovl/work" "$W/ovl/merged"
	mount -t overlay overlay -o "lowerdir=$W/ovl/lower,upperdir=$W/ovl/upper,workdir=$W/ovl/work" "$W/ovl/merged"
	drop_caches
	python3 - "$W/ovl/merged/f$s" >"$R/copyup.$s.sec" <<'PY'
import os, sys, time
t0 = time.perf_counter()
fd = os.open(sys.argv[1], os.O_WRONLY)
os.pwrite(fd, b"x" * 4096, os.fstat(fd).st_size // 2 // 4096 * 4096)
os.fsync(fd)
t1 = time.perf_counter()
os.close(fd)
print(t1 - t0)
PY
	umount "$W/ovl/merged"
	du_bytes "$W/ovl/upper" >"$R/copyup.$s.space"
done
fi

# ---------------------------------------------------------------- report -----------------------
machine="$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, $(uname -r), $(findmnt -no FSTYPE -T "$W") on $(findmnt -no SOURCE -T "$W")"
python3 - "$R" "$machine" "$SIZE_MB" "$IODEPTH" "$RUNTIME" "$IOS" "$QD_IOS" "$FLUSH_IOS" "$COPYUP_SIZES" "$CHAIN_LAYERS" <<'PY' | { if [ "$OUT" = - ]; then cat; else tee "$OUT"; fi; }
import json, os, sys, datetime
R, machine, size_mb, qd, runtime, ios, qd_ios, flush_ios, copyup_sizes, chain = sys.argv[1:11]
qd, ios, qd_ios, flush_ios = int(qd), int(ios), int(qd_ios), int(flush_ios)

def load(name, job):
    p = os.path.join(R, "%s.%s.json" % (name, job))
    try:
        s = open(p).read()
        return json.loads(s[s.index("{"):])  # fio's nbd engine prints a line before the JSON
    except (OSError, ValueError):
        return None

def job(name, jobfile, jobname=None):
    d = load(name, jobfile)
    if not d: return None
    for j in d["jobs"]:
        if jobname is None or j["jobname"] == jobname: return j
    return None

def clat_us(name, jobfile, pct):
    j = job(name, jobfile)
    if not j: return None
    p = j["write"]["clat_ns"].get("percentile", {})
    key = "%.6f" % pct
    return p[key] / 1000.0 if key in p else None

def iops(name, jobfile, rw="write", jobname=None):
    j = job(name, jobfile, jobname)
    return j[rw]["iops"] if j else None

def mibs(name, jobfile, rw):
    j = job(name, jobfile)
    return j[rw]["bw_bytes"] / 1048576.0 if j else None

def settle_ms(name, jobfile):
    try: return float(open(os.path.join(R, "%s.%s.settle" % (name, jobfile))).read()) * 1000.0
    except (OSError, ValueError): return None

def op_lat_us(name, jobfile):
    # QD1 write + fsync: mean time per write+flush pair = write clat mean + fsync latency mean
    j = job(name, jobfile)
    if not j: return None
    w = j["write"]["clat_ns"]["mean"]
    s = j.get("sync", {}).get("lat_ns", {}).get("mean", 0.0)
    return (w + s) / 1000.0

targets = ["ociblk"] + (["ociblk-b"] if any(f.startswith("ociblk-b.") for f in os.listdir(R)) else []) + ["qcow2-64k", "qcow2-4k", "qcow2-64k-l2ext", "qemu-nbd-raw", "nbdkit-memory", "raw-io_uring-direct"]
rows = [
    ("first write 4 KiB QD1, p50 (µs)", lambda t: clat_us(t, "first-write-qd1", 50.0), "lower"),
    ("first write 4 KiB QD1, p99 (µs)", lambda t: clat_us(t, "first-write-qd1", 99.0), "lower"),
    ("first write 4 KiB QD%d (IOPS)" % qd, lambda t: iops(t, "first-write-qd"), "higher"),
    ("first write 4 KiB + flush QD1 (µs per pair)", lambda t: op_lat_us(t, "first-write-flush"), "lower"),
    ("rewrite owned 4 KiB QD%d (IOPS)" % qd, lambda t: iops(t, "rewrite"), "higher"),
    ("write + flush owned 4 KiB QD1 (µs per pair)", lambda t: op_lat_us(t, "write-flush"), "lower"),
    ("one flush after the first-write QD jobs (ms)", lambda t: settle_ms(t, "first-write-flush"), "lower"),
    ("one flush after the rewrite job (ms)", lambda t: settle_ms(t, "write-flush"), "lower"),
    ("random read base 4 KiB QD1 (IOPS)", lambda t: iops(t, "randread-base", "read", "randread-base-qd1"), "higher"),
    ("random read base 4 KiB QD%d (IOPS)" % qd, lambda t: iops(t, "randread-base", "read", "randread-base-qd"), "higher"),
    ("sequential read 1 MiB QD4 (MiB/s)", lambda t: mibs(t, "seqread-1m", "read"), "higher"),
    ("sequential write 1 MiB QD4 (MiB/s)", lambda t: mibs(t, "seqwrite-1m", "write"), "higher"),
    ("random read/write 70/30 4 KiB QD%d (IOPS, r+w)" % qd,
     lambda t: (iops(t, "randrw", "read") or 0) + (iops(t, "randrw", "write") or 0) if job(t, "randrw") else None, "higher"),
]

def fmt(v):
    if v is None: return "n/a"
    return "%.0f" % v if v >= 100 else "%.1f" % v if v >= 10 else "%.2f" % v

out = []
out.append("## ociblk vs peers (fio-jobs/compare.sh)\n")
out.append("Run %s UTC on: %s.  \nDevice %s MiB of random data; QD jobs at depth %d; time-based jobs %s s; "
           "first writes: %d (QD1), %d (QD%d), %d (+flush).  All NBD targets over a unix socket with fio's nbd "
           "engine; page cache dropped before each target; each +flush job starts after one flush of what the "
           "jobs before it left unflushed (timed on its own row).  Cell: value (ratio to ociblk; >1 means the peer "
           "is better for this row).\n" % (datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M"), machine, size_mb, qd,
                                           runtime, ios, qd_ios, qd, flush_ios))
out.append("| metric | " + " | ".join(targets) + " |")
out.append("|---" * (len(targets) + 1) + "|")
vals = {}
for label, fn, better in rows:
    base = fn("ociblk")
    cells = []
    for t in targets:
        v = fn(t)
        vals[(label, t)] = v
        if t == "ociblk" or v is None or not base:
            cells.append(fmt(v))
        else:
            r = (v / base) if better == "higher" else (base / v)
            cells.append("%s (%.2f×)" % (fmt(v), r))
    out.append("| %s | %s |" % (label, " | ".join(cells)))

def space(t):
    try: return int(open(os.path.join(R, t + ".space")).read())
    except (OSError, ValueError): return None
written = 4096 * (ios + qd_ios + flush_ios)
out.append("\n**Space used by each overlay after the three first-write jobs** (%d scattered 4 KiB writes = %.1f MiB of data):\n" % (written // 4096, written / 1048576))
out.append("| overlay | space (MiB) | ratio to data written |")
out.append("|---|---|---|")
for t in ["ociblk", "ociblk-b", "qcow2-64k", "qcow2-4k", "qcow2-64k-l2ext"]:
    s = space(t)
    if t == "ociblk-b" and s is None: continue
    out.append("| %s | %s | %s |" % (t + (" (container dir: upper data + map)" if t.startswith("ociblk") else " (overlay file)"),
                                      fmt(s / 1048576) if s else "n/a", "%.2f×" % (s / written) if s else "n/a"))

fw_flush = vals[(rows[3][0], "ociblk")]
out.append("\n**overlayfs copy-up** (ext4 under it, cold cache): open + 4 KiB write + fsync into a lower file; ociblk's figure "
           "for the same operation is the first write + flush row above (a block device has no files: it copies one block).\n")
out.append("| lower file | copy-up write+fsync (ms) | upper space (MiB) | ociblk first write + flush (µs) | overlayfs / ociblk |")
out.append("|---|---|---|---|---|")
copyup = {}
for s in copyup_sizes.split():
    try:
        sec = float(open(os.path.join(R, "copyup.%s.sec" % s)).read())
        sp = int(open(os.path.join(R, "copyup.%s.space" % s)).read())
    except (OSError, ValueError):
        out.append("| %s | n/a | n/a | | |" % s); continue
    copyup[s] = sec
    ratio = sec * 1e6 / fw_flush if fw_flush else None
    out.append("| %s | %.1f | %.0f | %s | %s |" % (s, sec * 1000, sp / 1048576, fmt(fw_flush), ("%.0f×" % ratio) if ratio else "n/a"))

flat = iops("ociblk-1layer", "randread-base", "read", "randread-base-qd")
deep = iops("ociblk-deep", "randread-base", "read", "randread-base-qd")
flat1 = iops("ociblk-1layer", "randread-base", "read", "randread-base-qd1")
deep1 = iops("ociblk-deep", "randread-base", "read", "randread-base-qd1")
out.append("\n**Layer depth**: 4 KiB random reads of base data, 1-layer chain vs %s-layer chain (each upper layer adds 256 scattered blocks):\n" % chain)
out.append("| chain | QD1 (IOPS) | QD%d (IOPS) |" % qd)
out.append("|---|---|---|")
out.append("| 1 layer | %s | %s |" % (fmt(flat1), fmt(flat)))
out.append("| %s layers | %s (%s×) | %s (%s×) |" % (chain, fmt(deep1), "%.2f" % (deep1 / flat1) if deep1 and flat1 else "n/a",
                                                   fmt(deep), "%.2f" % (deep / flat) if deep and flat else "n/a"))

# targets of issue 4
def verdict(ok): return "met" if ok else "NOT met"
out.append("\n**Targets (issue 4)**\n")
big = copyup_sizes.split()[-1]
if big in copyup and fw_flush:
    r = copyup[big] * 1e6 / fw_flush
    out.append("- first 4 KiB write + flush into a %s lower file ≥ 1000× faster than overlayfs copy-up: %.0f× — %s" % (big, r, verdict(r >= 1000)))
raw_wf = vals[(rows[3][0], "qemu-nbd-raw")]
if fw_flush and raw_wf:
    out.append("- … and no slower than a write + flush on qemu-nbd raw: %.0f µs vs %.0f µs (%.2f×) — %s" % (fw_flush, raw_wf, raw_wf / fw_flush, verdict(fw_flush <= raw_wf)))
fq = vals[(rows[2][0], "ociblk")]
best_q = max([vals[(rows[2][0], t)] or 0 for t in ["qcow2-64k", "qcow2-4k", "qcow2-64k-l2ext"]])
rawq = vals[(rows[2][0], "qemu-nbd-raw")]
if fq and best_q:
    out.append("- first-write QD%d IOPS ≥ 2× qcow2's best configuration: %.0f vs %.0f (%.2f×) — %s" % (qd, fq, best_q, fq / best_q, verdict(fq >= 2 * best_q)))
if fq and rawq:
    out.append("- first-write QD%d IOPS ≥ 0.8× qemu-nbd raw: %.0f vs %.0f (%.2f×) — %s" % (qd, fq, rawq, fq / rawq, verdict(fq >= 0.8 * rawq)))
if deep and flat:
    out.append("- random read through a %s-layer chain ≥ 0.9× a 1-layer chain (QD%d): %.2f× — %s" % (chain, qd, deep / flat, verdict(deep >= 0.9 * flat)))
s = space("ociblk")
if s:
    out.append("- overlay space after scattered 4 KiB first writes within 1.1× of the data written: %.2f× — %s" % (s / written, verdict(s <= 1.1 * written)))
print("\n".join(out))
PY
