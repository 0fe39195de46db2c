#!/usr/bin/env bash
# The device commands of the ociblk CLI, end to end with real tools: an ext4 image made by
# mkfs.ext4 -d, two containers, writes (whole blocks, unaligned bytes, across blocks) into one,
# read back, export of both compared with cmp against expectations built with dd, e2fsck -fn and
# debugfs on the exports, commit and a container from the committed image, rm/rmi and gc freeing
# the committed layers, fsck clean, then a flipped byte in a layer: fsck fails and reads fail with
# an error naming the layer, never wrong data.
. "$(dirname "$0")/lib.bash"
# patch FILE OFFSET DATAFILE: the expected effect of `ociblk write` on a plain copy
patch(){ dd if="$3" of="$1" bs=1 seek="$2" conv=notrunc status=none; }

for t in mkfs.ext4 e2fsck debugfs python3 cmp; do
	command -v $t >/dev/null || { echo "1..1"; echo "not ok 1 - $t missing (make deps)"; exit 1; }
done
[ -x "$OCIBLK" ] || { echo "1..1"; echo "not ok 1 - $OCIBLK not built"; exit 1; }

mkdir -p "$T/tree/etc" "$T/tree/srv"
printf '%-99s\n' "original message" >"$T/tree/srv/message.txt"
seq 1 100000 >"$T/tree/srv/numbers.txt"
head -c 200000 /dev/urandom >"$T/tree/etc/random.bin"
mkfs.ext4 -q -F -b 4096 -d "$T/tree" "$T/base.img" 32M >/dev/null || { echo "1..1"; echo "not ok 1 - mkfs.ext4 -d"; exit 1; }
msg_blk=$(debugfs -R "bmap /srv/message.txt 0" "$T/base.img" 2>/dev/null)
num0=$(debugfs -R "bmap /srv/numbers.txt 0" "$T/base.img" 2>/dev/null)
num1=$(debugfs -R "bmap /srv/numbers.txt 1" "$T/base.img" 2>/dev/null)
[ -n "$msg_blk" ] && [ "$num1" = $((num0 + 1)) ] && ok "file blocks located with debugfs ($msg_blk, $num0..$num1)" \
	|| { notok "file blocks located with debugfs ($msg_blk, $num0, $num1)"; echo "1..$n"; exit 1; }

check "layer add-raw" "$OCIBLK" --json layer add-raw --name base "$T/base.img"
BASE=$(json 'd["layer"]' <"$T/out")
check "create c1" "$OCIBLK" create base c1
check "create c2" "$OCIBLK" create base c2

# --- usage errors ------------------------------------------------------------------------------
status "write without arguments: exit 2" 2 "$OCIBLK" write
status "write with a bad offset: exit 2" 2 "$OCIBLK" write c1 12x "$T/base.img"
status "read with a bad length: exit 2" 2 "$OCIBLK" read c1 0 -5
status "export with one argument: exit 2" 2 "$OCIBLK" export c1
status "commit with one argument: exit 2" 2 "$OCIBLK" commit c1
status "export unknown option: exit 2" 2 "$OCIBLK" export --sparse c1 "$T/x.img"
for c in write read export commit; do "$OCIBLK" $c --help | grep -q "^usage: ociblk $c" || notok "$c --help"; done
ok "--help of the device commands"

# --- writes into c1: whole block, unaligned bytes, a write across two blocks --------------------
cp "$T/base.img" "$T/expect1.img"
printf '%-99s\n' "changed by ociblk write" >"$T/msg"
check "write a whole file block" "$OCIBLK" write c1 $((msg_blk * 4096)) "$T/msg"
patch "$T/expect1.img" $((msg_blk * 4096)) "$T/msg"
printf 'UNALIGNED-13B' >"$T/small"
check "write 13 bytes at an unaligned offset" "$OCIBLK" write c1 $((num0 * 4096 + 7)) "$T/small"
patch "$T/expect1.img" $((num0 * 4096 + 7)) "$T/small"
head -c 5000 /dev/urandom | tr -dc '0-9\n' | head -c 3000 >"$T/span"; while [ "$(stat -c %s "$T/span")" -lt 3000 ]; do echo 1234567 >>"$T/span"; done
head -c 3000 "$T/span" >"$T/span3k"
check "write 3000 bytes across a block boundary" "$OCIBLK" write c1 $((num0 * 4096 + 2500)) "$T/span3k"
patch "$T/expect1.img" $((num0 * 4096 + 2500)) "$T/span3k"
check "write from stdin with --json" sh -c "printf 'stdin!' | '$OCIBLK' --json write c1 $((num1 * 4096 + 100)) -"
printf 'stdin!' >"$T/six"; patch "$T/expect1.img" $((num1 * 4096 + 100)) "$T/six"
[ "$(json 'd["length_bytes"]' <"$T/out")" = 6 ] && ok "write --json reports the length" || notok "write --json reports the length"
status "write past the end of the device: exit 1" 1 "$OCIBLK" write c1 $((32 * 1024 * 1024 - 3)) "$T/small"
grep -q "past the end" "$T/err" && ok "and says so" || notok "and says so"
"$OCIBLK" export c1 "$T/c1-now.img" >/dev/null 2>&1
same "a refused write changed nothing" "$T/c1-now.img" "$T/expect1.img"
rm -f "$T/c1-now.img"
status "write into an image: exit 1" 1 "$OCIBLK" write base 0 "$T/small"

# --- read back ---------------------------------------------------------------------------------
"$OCIBLK" read c1 $((num0 * 4096 + 1)) 9000 >"$T/got" 2>"$T/err"
dd if="$T/expect1.img" bs=1 skip=$((num0 * 4096 + 1)) count=9000 status=none >"$T/want"
same "read of an unaligned range returns the written bytes" "$T/got" "$T/want"
"$OCIBLK" read -o "$T/got2" c2 $((msg_blk * 4096)) 4096 2>"$T/err"
dd if="$T/base.img" bs=4096 skip="$msg_blk" count=1 status=none >"$T/want2"
same "c2 still reads the original block" "$T/got2" "$T/want2"
status "read past the end: exit 1" 1 "$OCIBLK" read c1 $((32 * 1024 * 1024 - 10)) 20

# --- export and compare ------------------------------------------------------------------------
check "export c1" "$OCIBLK" --json export c1 "$T/c1.img"
same "export of c1 equals base.img plus the writes" "$T/c1.img" "$T/expect1.img"
check "export c2" "$OCIBLK" export c2 "$T/c2.img"
same "export of c2 equals base.img" "$T/c2.img" "$T/base.img"
alloc=$(( $(stat -c %b "$T/c2.img") * 512 )); apparent=$(stat -c %s "$T/c2.img")
[ "$alloc" -lt $((apparent / 4)) ] && ok "export is sparse ($alloc of $apparent bytes allocated)" || notok "export is sparse ($alloc of $apparent bytes allocated)"
check "e2fsck -fn on the export of c1" e2fsck -fn "$T/c1.img"
check "e2fsck -fn on the export of c2" e2fsck -fn "$T/c2.img"
[ "$(debugfs -R 'cat /srv/message.txt' "$T/c1.img" 2>/dev/null | tr -s ' ')" = "changed by ociblk write " ] \
	&& ok "debugfs reads the changed file in c1's export" || notok "debugfs reads the changed file in c1's export"
"$OCIBLK" export base - 2>"$T/err" | cmp -s - "$T/base.img" && ok "export of an image to stdout equals base.img" || notok "export of an image to stdout equals base.img"

# --- commit, then a container from the committed image -----------------------------------------
check "commit c1 img2" "$OCIBLK" --json commit c1 img2
L2=$(json 'd["layer"]' <"$T/out")
[ "$(json 'd["layer_count"]' <"$T/out")" = 2 ] && ok "committed image has 2 layers" || notok "committed image has 2 layers"
status "commit to an existing image name: exit 1" 1 "$OCIBLK" commit c1 img2
[ "$("$OCIBLK" inspect img2 | json '" ".join(l["digest"] for l in d["layers"])')" = "$BASE $L2" ] \
	&& ok "inspect img2: base layer then the committed one" || notok "inspect img2: base layer then the committed one"
[ "$("$OCIBLK" inspect "$L2" | json 'd["parent"]')" = "$BASE" ] && ok "committed layer's parent is the base" || notok "committed layer's parent is the base"
check "export img2" "$OCIBLK" export img2 "$T/img2.img"
same "img2 equals c1's disk" "$T/img2.img" "$T/expect1.img"
check "export c1 after commit" "$OCIBLK" export c1 "$T/c1b.img"
same "c1 reads the same after commit (now from its new layer)" "$T/c1b.img" "$T/expect1.img"
check "create c3 from img2" "$OCIBLK" create img2 c3
check "export c3" "$OCIBLK" export c3 "$T/c3.img"
same "c3 starts as img2" "$T/c3.img" "$T/expect1.img"
cp "$T/expect1.img" "$T/expect3.img"
printf '%-99s\n' "third generation" >"$T/msg3"
check "write into c3" "$OCIBLK" write c3 $((msg_blk * 4096)) "$T/msg3"
patch "$T/expect3.img" $((msg_blk * 4096)) "$T/msg3"
check "commit c3 img3" "$OCIBLK" commit c3 img3
check "export img3" "$OCIBLK" export img3 "$T/img3.img"
same "img3 = base + two commits" "$T/img3.img" "$T/expect3.img"
check "e2fsck -fn on img3" e2fsck -fn "$T/img3.img"
check "fsck clean with containers" "$OCIBLK" --json fsck
[ "$(json 'd["containers_checked"]' <"$T/out")" = 3 ] && ok "fsck checked 3 containers" || notok "fsck checked 3 containers"

# --- rm, rmi, gc -------------------------------------------------------------------------------
check "rm c1 c3" "$OCIBLK" rm c1 c3
check "rmi img2 img3" "$OCIBLK" rmi img2 img3
check "gc" "$OCIBLK" --json gc
[ "$(json 'd["layers_removed"]' <"$T/out")" = 2 ] && ok "gc removed the two committed layers" || notok "gc removed the two committed layers"
status "committed layer is gone" 1 "$OCIBLK" inspect "$L2"
check "base layer survives (c2 and base use it)" "$OCIBLK" inspect "$BASE"
check "fsck clean after gc" "$OCIBLK" fsck

# --- a container held by another process (its lock file flock'ed, as a server does) -------------
python3 -c 'import fcntl,sys,time; f=open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX); open(sys.argv[2], "w").close(); time.sleep(60)' \
	"$OCIBLK_ROOT/containers/c2/lock" "$T/locked" &
holder=$!
for _ in $(seq 600); do [ -e "$T/locked" ] && break; sleep 0.1; done
[ "$("$OCIBLK" ps --json | json '[c["in_use"] for c in d if c["name"]=="c2"][0]')" = True ] && ok "ps shows c2 in use" || notok "ps shows c2 in use"
status "write into a container in use: exit 1" 1 "$OCIBLK" write c2 0 "$T/small"
grep -q "in use" "$T/err" && ok "and says it is in use" || notok "and says it is in use"
status "rm of a container in use: exit 1" 1 "$OCIBLK" rm c2
status "fsck skips a container in use (and says so)" 0 "$OCIBLK" fsck
grep -q "c2 is in use" "$T/err" && ok "fsck names the skipped container" || notok "fsck names the skipped container"
kill "$holder"; wait "$holder" 2>/dev/null
[ "$("$OCIBLK" ps --json | json '[c["in_use"] for c in d if c["name"]=="c2"][0]')" = False ] && ok "c2 free again" || notok "c2 free again"

# --- a flipped byte in the base layer ----------------------------------------------------------
ext=$("$OCIBLK" inspect --extents "$BASE" | json '[(e["offset_bytes"],e["stored_bytes"],e["block_index"]) for e in d["extent_list"] if e["kind"]=="data" and e["block_index"] <= '"$msg_blk"' < e["block_index"]+e["block_count"]][0]')
off=$(echo "$ext" | tr -d '(),' | awk '{print $1 + int($2 / 2)}')
python3 - "$OCIBLK_ROOT/layers/${BASE#sha256:}" "$off" <<'PY'
import sys
p, off = sys.argv[1], int(sys.argv[2])
with open(p, "r+b") as f:
    f.seek(off); b = f.read(1); f.seek(off); f.write(bytes([b[0] ^ 0x01]))
PY
status "fsck reports the flipped byte: exit 1" 1 "$OCIBLK" fsck
grep -q "${BASE#sha256:}" "$T/err" && ok "fsck names the layer" || notok "fsck names the layer"
status "reading the damaged block fails: exit 1" 1 "$OCIBLK" read c2 $((msg_blk * 4096)) 4096
[ ! -s "$T/out" ] && ok "no data is returned" || notok "no data is returned"
grep -q "${BASE#sha256:}" "$T/err" && ok "the read error names the layer" || { notok "the read error names the layer"; sed 's/^/# /' "$T/err"; }
status "export of the damaged image fails: exit 1" 1 "$OCIBLK" export base "$T/bad.img"

tap_end
