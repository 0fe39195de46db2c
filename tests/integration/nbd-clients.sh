#!/usr/bin/env bash
# `ociblk serve` driven by NBD clients nobody here wrote: nbdinfo (size, flags, export list, block
# status map), nbdcopy (export to a file and compare), qemu-img (compare, convert out of and into
# an export), qemu-io (aligned and unaligned writes, flush, discard, read-back patterns), checked
# against a local model file that gets the same writes.
set -u
. "$(dirname "$0")/nbd-common.bash"
require nbdinfo nbdcopy qemu-img qemu-io python3 cmp
make_store || { echo "1..1"; echo "not ok 1 - make store"; exit 1; }
start_server || { echo "1..1"; echo "not ok 1 - server start"; exit 1; }

# --- nbdinfo ------------------------------------------------------------------------------------
check "nbdinfo --list" nbdinfo --list --json "nbd+unix:///?socket=$SOCK"
python3 - "$T/out" <<'PY' && ok "NBD_OPT_LIST names the container and the image" || notok "NBD_OPT_LIST names the container and the image"
import json, sys
d = json.load(open(sys.argv[1]))
names = sorted(e["export-name"] for e in d["exports"])
sys.exit(0 if names == ["ctr", "img"] else 1)
PY
check "nbdinfo image" nbdinfo --json "$(uri img)"
cp "$T/out" "$T/img.json"
check "nbdinfo container" nbdinfo --json "$(uri ctr)"
cp "$T/out" "$T/ctr.json"
python3 - "$T/img.json" "$T/ctr.json" <<'PY' >"$T/flags" 2>&1 && ok "sizes and flags (image read-only, container writable, multi-conn, flush, fua, trim, zero, base:allocation)" || { notok "sizes and flags"; sed 's/^/# /' "$T/flags"; }
import json, sys
img = json.load(open(sys.argv[1]))["exports"][0]
ctr = json.load(open(sys.argv[2]))["exports"][0]
def want(c, m):
    if not c: print("fail:", m); sys.exit(1)
want(img["export-size"] == 16 << 20 and ctr["export-size"] == 16 << 20, "size")
want(img["is_read_only"] is True and ctr["is_read_only"] is False, "read-only")
want(img["can_multi_conn"] and ctr["can_multi_conn"], "multi-conn")
want(ctr["can_flush"] and ctr["can_fua"] and ctr["can_trim"] and ctr["can_zero"], "write features")
want("base:allocation" in ctr["contexts"], "context")
want(ctr["block_size_minimum"] == 512 and ctr["block_size_maximum"] == 32 << 20, "block sizes")
PY
check "nbdinfo --map image" nbdinfo --map "$(uri img)"
# base.img: data [0,2M), zeros [2M,2.25M) (all-zero blocks become ZERO extents), data to 8M, zeros to 16M
awk '{print $1, $2, $3}' "$T/out" >"$T/map"
printf '0 2097152 0\n2097152 262144 3\n2359296 6029312 0\n8388608 8388608 3\n' >"$T/map.want"
cmp -s "$T/map" "$T/map.want" && ok "block status map: data and zero extents" || { notok "block status map"; sed 's/^/# /' "$T/map"; }
check "nbdinfo --map --totals" nbdinfo --map --totals "$(uri img)"

# --- nbdcopy / qemu-img out of the exports -------------------------------------------------------
check "nbdcopy image export to a file" nbdcopy "$(uri img)" "$T/copy.img"
cmp -s "$T/copy.img" "$T/base.img" && ok "nbdcopy copy equals the image data" || notok "nbdcopy copy equals the image data"
check "nbdcopy container export (4 connections, 8 requests each)" nbdcopy --connections=4 --requests=8 "$(uri ctr)" "$T/copy2.img"
cmp -s "$T/copy2.img" "$T/base.img" && ok "fresh container reads as its image" || notok "fresh container reads as its image"
check "qemu-img compare image export with the file" qemu-img compare -f raw -F raw "$T/base.img" "$(uri img)"
check "qemu-img convert out of the export" qemu-img convert -f raw -O raw "$(uri img)" "$T/conv.img"
cmp -s "$T/conv.img" "$T/base.img" && ok "qemu-img convert copy equals the image" || notok "qemu-img convert copy equals the image"

# --- qemu-io writes, mirrored into a model file ---------------------------------------------------
cp "$T/base.img" "$T/model.img"
# model OFFSET LENGTH BYTE: the same write applied to the model
model() { python3 -c 'import sys
f = open(sys.argv[1], "r+b"); f.seek(int(sys.argv[2])); f.write(bytes([int(sys.argv[4], 0)]) * int(sys.argv[3]))' "$T/model.img" "$@"; }
QIO=(qemu-io -f raw "$(uri ctr)")
check "qemu-io aligned write into a lower block (copy-up)" "${QIO[@]}" -c 'write -P 0xab 512 1k' -c 'flush'
model 512 1024 0xab
check "qemu-io unaligned writes" "${QIO[@]}" -c 'write -P 0xcd 3 7' -c 'write -P 0xef 4095 2' -c 'write -P 0x11 1048577 70000'
model 3 7 0xcd; model 4095 2 0xef; model 1048577 70000 0x11
check "qemu-io FUA write" "${QIO[@]}" -c 'write -f -P 0x22 65536 4096'
model 65536 4096 0x22
check "qemu-io write zeroes" "${QIO[@]}" -c 'write -z 131072 65536' -c 'write -z 200 300'
model 131072 65536 0; model 200 300 0
check "qemu-io discard then read zeroes" "${QIO[@]}" -c 'discard 4194304 1048576' -c 'read -P 0 4194304 1048576' -c 'flush'
model 4194304 1048576 0
check "qemu-io write into the zero tail" "${QIO[@]}" -c 'write -P 0x33 12582912 8192'
model 12582912 8192 0x33
check "qemu-io reads back patterns" "${QIO[@]}" -c 'read -P 0xab 512 1k' -c 'read -P 0xcd 3 7' -c 'read -P 0xef 4095 2' \
	-c 'read -P 0x22 65536 4096' -c 'read -P 0 131072 65536' -c 'read -P 0x33 12582912 8192'
grep -q "Pattern verification failed" "$T/out" && notok "no pattern mismatch" || ok "no pattern mismatch"
check "nbdcopy container after writes" nbdcopy "$(uri ctr)" "$T/after.img"
cmp "$T/after.img" "$T/model.img" >"$T/cmp" 2>&1 && ok "container equals the model after all writes" || { notok "container equals the model"; sed 's/^/# /' "$T/cmp"; }
check "qemu-img compare container with the model" qemu-img compare -f raw -F raw "$T/model.img" "$(uri ctr)"
check "nbdinfo --map container" nbdinfo --map "$(uri ctr)"
# the discarded MiB reads as a hole; the written blocks are data
python3 - "$T/out" <<'PY' && ok "block status after writes: discarded range zero, written blocks data" || { notok "block status after writes"; sed 's/^/# /' "$T/out"; }
import sys
ext = [tuple(int(x) for x in l.split()[:3]) for l in open(sys.argv[1]) if l.strip()]
def kind(off):
    for o, l, t in ext:
        if o <= off < o + l: return t
    return None
ok = kind(4194304) == 3 and kind(4194304 + 1048575) == 3 and kind(512) == 0 and kind(12582912) == 0 and kind(15 << 20) == 3
sys.exit(0 if ok else 1)
PY

# --- qemu-img convert INTO the container (write + write_zeroes + block status of the source) --------
head -c $((3 << 20)) /dev/urandom >"$T/new.img"; truncate -s 16M "$T/new.img"
check "qemu-img convert a file into the container export" qemu-img convert -n -f raw -O raw "$T/new.img" "$(uri ctr)"
check "qemu-img compare after convert" qemu-img compare -f raw -F raw "$T/new.img" "$(uri ctr)"
check "image export unchanged by container writes" qemu-img compare -f raw -F raw "$T/base.img" "$(uri img)"

# --- a second server on TCP (port 0: the kernel picks one), limited with --export ---------------
"$OCIBLK" serve --nbd tcp:127.0.0.1:0 --export img >"$T/tcp.out" 2>"$T/tcp.err" & TCP_PID=$!
EXTRA_PIDS+=("$TCP_PID")
for i in $(seq 1 100); do grep -q "^serving on tcp:" "$T/tcp.out" 2>/dev/null && break; sleep 0.05; done
ADDR=$(sed -n 's/^serving on tcp://p' "$T/tcp.out")
case $ADDR in 127.0.0.1:[1-9]*) ok "tcp server on loopback prints its port ($ADDR)" ;; *) notok "tcp server address ($ADDR)"; sed 's/^/# /' "$T/tcp.err" ;; esac
check "nbdinfo --list over TCP" nbdinfo --list --json "nbd://$ADDR/"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if [e["export-name"] for e in d["exports"]] == ["img"] else 1)' "$T/out" \
	&& ok "--export limits the list to that name" || notok "--export limits the list to that name"
check "the default export \"\" is the first --export" nbdcopy "nbd://$ADDR" "$T/tcp.img"
cmp -s "$T/tcp.img" "$T/base.img" && ok "TCP copy equals the image" || notok "TCP copy equals the image"
nbdinfo "nbd://$ADDR/ctr" >/dev/null 2>&1 && notok "a name outside --export is refused" || ok "a name outside --export is refused"
kill -TERM "$TCP_PID"; wait "$TCP_PID"; rc=$?
[ "$rc" = 0 ] && ok "tcp server: SIGTERM exit 0" || notok "tcp server: SIGTERM exit $rc"

# --- the server survived everything and stops cleanly on SIGTERM ---------------------------------
server_alive && ok "server still running" || notok "server still running"
stop_server TERM; rc=$?
[ "$rc" = 0 ] && ok "SIGTERM: exit 0" || notok "SIGTERM: exit $rc"
[ ! -e "$SOCK" ] && ok "socket removed at exit" || notok "socket removed at exit"
finish
