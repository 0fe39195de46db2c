#!/usr/bin/env bash
# Durability through the NBD server: writes covered by a completed flush (or FUA) survive
# `kill -9` of the server; a flush on one connection covers writes completed on another
# (CAN_MULTI_CONN); SIGTERM flushes everything completed before exiting 0; a fio verify workload
# with fsync survives kill -9 and verifies after the restart.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/nbd-common.bash"
require nbdsh python3 fio
make_store || { echo "1..1"; echo "not ok 1 - make store"; exit 1; }
SEED=${OCIBLK_SEED:-$RANDOM}
echo "# seed $SEED (OCIBLK_SEED replays)"

# py STEP: runs the write/check steps of a seeded model in nbdsh.
cat >"$T/steps.py" <<'PY'
import os, random, sys
import nbd
sock, step, seed = os.environ["SOCK"], os.environ["STEP"], int(os.environ["SEED"])
def h():
    x = nbd.NBD(); x.connect_uri("nbd+unix:///ctr?socket=" + sock); return x
rng = random.Random(seed)
# 64 writes of 4 KiB..64 KiB, 512-aligned, at distinct 1 MiB-spaced slots
slots = rng.sample(range(15), 15)
W = [(s << 20, rng.randrange(1, 129) * 512, rng.randrange(256)) for s in slots]
def data(off, ln, b): return bytes([(b + i) & 255 for i in range(256)]) * (ln // 256) + bytes(ln % 256)
if step == "write-flush":
    a, b = h(), h()
    for off, ln, v in W[:5]: a.pwrite(data(off, ln, v), off)
    for off, ln, v in W[5:8]: b.pwrite(data(off, ln, v), off)
    b.flush()                          # covers the writes of both connections (multi-conn)
    for off, ln, v in W[8:10]: a.pwrite(data(off, ln, v), off, nbd.CMD_FLAG_FUA)
    for off, ln, v in W[10:12]: a.pwrite(data(off, ln, v), off)   # not flushed: may be lost
    print("written")
elif step == "check-flushed":
    a = h()
    bad = [off for off, ln, v in W[:10] if a.pread(ln, off) != data(off, ln, v)]
    print("bad", bad) if bad else print("flushed data intact")
    sys.exit(1 if bad else 0)
elif step == "write-noflush":
    a = h()
    for off, ln, v in W[12:15]: a.pwrite(data(off, ln, v), off)
    print("written")
elif step == "check-all":
    a = h()
    bad = [off for off, ln, v in W[:10] + W[12:15] if a.pread(ln, off) != data(off, ln, v)]
    print("bad", bad) if bad else print("all data intact")
    sys.exit(1 if bad else 0)
PY
py() { SOCK=$SOCK SEED=$SEED STEP=$1 nbdsh -c "exec(open('$T/steps.py').read())"; }

start_server || { echo "1..1"; echo "not ok 1 - server start"; exit 1; }
check "write, flush on another connection, FUA writes, unflushed writes" py write-flush
stop_server KILL
ok "server killed with SIGKILL"
start_server && ok "restart after kill -9" || notok "restart after kill -9"
check "every write covered by a completed flush or FUA survived kill -9" py check-flushed
check "writes without flush" py write-noflush
stop_server TERM; rc=$?
[ "$rc" = 0 ] && ok "SIGTERM: exit 0" || notok "SIGTERM: exit $rc"
start_server && ok "restart after SIGTERM" || notok "restart after SIGTERM"
check "SIGTERM flushed the completed writes" py check-all

# fio: write with verify headers, fsync at the end of the job (end_fsync), kill -9, verify in a new run
U=$(uri ctr)
fcommon=(--name=dur --ioengine=nbd --uri="$U" --rw=randwrite --bs=4k --size=8M --iodepth=16 --verify=crc32c --randseed=$SEED)
check "fio random writes with end_fsync" timeout 120 fio "${fcommon[@]}" --do_verify=0 --end_fsync=1
stop_server KILL
start_server && ok "restart after kill -9 (fio)" || notok "restart after kill -9 (fio)"
check "fio verify-only after kill -9: every block verifies" timeout 120 fio "${fcommon[@]}" --verify_only --verify_fatal=1
stop_server TERM; rc=$?
[ "$rc" = 0 ] && ok "final SIGTERM: exit 0" || notok "final SIGTERM: exit $rc"
finish
