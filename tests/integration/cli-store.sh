#!/usr/bin/env bash
# The store-level commands of the ociblk CLI against a real ext4 image made by mkfs.ext4 -d:
# layer add-raw, images, create, ps/ls, inspect, layer ls, rm, rmi, gc, fsck, usage errors,
# --json output, and fsck catching a flipped byte in a layer file.
. "$(dirname "$0")/lib.bash"
# a file's data checked with json.tool
jsonok(){ local d=$1; shift; if "$@" 2>"$T/err" | python3 -m json.tool >/dev/null; then ok "$d"; else notok "$d"; sed 's/^/# /' "$T/err"; fi; }

command -v mkfs.ext4 >/dev/null || PATH=$PATH:/sbin:/usr/sbin
# e2fsprogs and python3 are in .ci/deps.sh: missing tools are a failure, not a skip.
if ! command -v mkfs.ext4 >/dev/null || ! command -v python3 >/dev/null; then echo "1..1"; echo "not ok 1 - mkfs.ext4 or python3 missing (make deps)"; exit 1; fi
[ -x "$OCIBLK" ] || { echo "1..1"; echo "not ok 1 - $OCIBLK not built"; exit 1; }

mkdir -p "$T/tree/etc" "$T/tree/srv/data"
echo "base image" >"$T/tree/etc/motd"
seq 1 100000 >"$T/tree/srv/data/numbers"
head -c 300000 /dev/urandom >"$T/tree/srv/data/random.bin"
mkfs.ext4 -q -F -b 4096 -d "$T/tree" "$T/base.img" 32M >/dev/null || { echo "1..1"; echo "not ok 1 - mkfs.ext4 -d failed"; exit 1; }

# --- usage errors: exit 2 with a usage text ---------------------------------------------------
status "no command: exit 2" 2 "$OCIBLK"
status "unknown command: exit 2" 2 "$OCIBLK" frobnicate
grep -q "unknown command" "$T/err" && ok "unknown command is named" || notok "unknown command is named"
status "create without arguments: exit 2" 2 "$OCIBLK" create
grep -q "^usage: ociblk create" "$T/err" && ok "usage printed on stderr" || notok "usage printed on stderr"
status "layer without subcommand: exit 2" 2 "$OCIBLK" layer
status "layer add-raw unknown option: exit 2" 2 "$OCIBLK" layer add-raw --bogus "$T/base.img"
status "layer add-raw bad --size: exit 2" 2 "$OCIBLK" layer add-raw --size 12Q "$T/base.img"
status "gc bad --tmp-age: exit 2" 2 "$OCIBLK" gc --tmp-age -3
status "inspect bad --type: exit 2" 2 "$OCIBLK" inspect --type foo x
status "rm without names: exit 2" 2 "$OCIBLK" rm
status "create --help: exit 0" 0 "$OCIBLK" create --help
grep -q "^usage: ociblk create" "$T/out" && ok "--help prints usage on stdout" || notok "--help prints usage on stdout"
for c in layer images create ps ls rm rmi gc fsck inspect; do
	"$OCIBLK" $c --help >/dev/null 2>&1 || { notok "$c --help"; continue; }
done; ok "--help of every store command exits 0"

# --- add-raw -----------------------------------------------------------------------------------
status "commands on a missing store fail with exit 1" 1 "$OCIBLK" images
check "layer add-raw" "$OCIBLK" --json layer add-raw --name base "$T/base.img"
cp "$T/out" "$T/add.json"
python3 -m json.tool <"$T/add.json" >/dev/null && ok "add-raw --json parses" || notok "add-raw --json parses"
L1=$(json 'd["layer"]' <"$T/add.json")
[ "$(json 'd["size_bytes"]' <"$T/add.json")" = $((32 << 20)) ] && ok "device size is the file size" || notok "device size is the file size"
zb=$(json 'd["zero_blocks"]' <"$T/add.json"); db=$(json 'd["data_blocks"]' <"$T/add.json")
[ "$zb" -gt 0 ] && [ $((zb + db)) = 8192 ] && ok "zero blocks detected ($db data, $zb zero)" || notok "zero blocks detected ($db data, $zb zero)"
lf=$(json 'd["layer_file_bytes"]' <"$T/add.json")
[ "$lf" -lt $((db * 4096)) ] && ok "compressed layer ($lf bytes) smaller than its data" || notok "compressed layer ($lf bytes) smaller than its data"
status "add-raw refuses an existing image name" 1 "$OCIBLK" layer add-raw --name base "$T/base.img"
grep -q "already exists" "$T/err" && ok "and says why" || notok "and says why"
check "add-raw --no-compress, --size, same data" "$OCIBLK" layer add-raw --no-compress --size 40M --name big "$T/base.img"
status "add-raw --size below the file size: exit 1" 1 "$OCIBLK" layer add-raw --size 16M --name small "$T/base.img"
status "add-raw of a missing file: exit 1" 1 "$OCIBLK" layer add-raw "$T/nope.img"
grep -q "nope.img" "$T/err" && ok "error names the file" || notok "error names the file"
# A sparse file: a 1 GiB hole with 8 KiB of data; add-raw must not read 1 GiB of zeros as data.
truncate -s 1G "$T/sparse.raw"; printf 'hello' | dd of="$T/sparse.raw" bs=1 seek=$((512 << 20)) conv=notrunc status=none
check "add-raw of a sparse 1 GiB file" "$OCIBLK" --json layer add-raw "$T/sparse.raw"
[ "$(json 'd["image"]+":"+str(d["data_blocks"])' <"$T/out")" = "sparse:1" ] && ok "default name from the file, one data block" || notok "default name from the file, one data block"

# --- images / create / ps / inspect ------------------------------------------------------------
check "images" "$OCIBLK" images
grep -q "^base .* 32 MiB .* 1  $L1" "$T/out" && ok "images shows name, size, layers, top layer" || { notok "images shows name, size, layers, top layer"; sed 's/^/# /' "$T/out"; }
jsonok "images --json parses" "$OCIBLK" images --json
check "create c1" "$OCIBLK" create base c1
check "create c2" "$OCIBLK" create base c2
status "create with a taken name: exit 1" 1 "$OCIBLK" create base c1
status "create from a missing image: exit 1" 1 "$OCIBLK" create nope c3
grep -q "no such image" "$T/err" && ok "and says so" || notok "and says so"
status "create with a bad name: exit 1" 1 "$OCIBLK" create base "../evil"
check "ps" "$OCIBLK" ps
[ "$(grep -c '^c[12] ' "$T/out")" = 2 ] && ok "ps lists both containers" || notok "ps lists both containers"
check "ls is ps" "$OCIBLK" ls
jsonok "ps --json parses" "$OCIBLK" --json ps
[ "$("$OCIBLK" ps --json | json '",".join(c["name"]+"="+c["image"] for c in d)')" = "c1=base,c2=base" ] && ok "ps --json content" || notok "ps --json content"
jsonok "inspect image is JSON" "$OCIBLK" inspect base
[ "$("$OCIBLK" inspect base | json 'd["kind"]+" "+d["layers"][0]["digest"]+" "+str(d["layers"][0]["refs"])')" = "image $L1 3" ] \
	&& ok "inspect image: chain and refcount (image + 2 containers)" || notok "inspect image: chain and refcount"
jsonok "inspect container is JSON" "$OCIBLK" inspect c1
[ "$("$OCIBLK" inspect c1 | json 'd["kind"]+" "+d["image"]+" "+d["top_layer"]')" = "container base $L1" ] && ok "inspect container" || notok "inspect container"
jsonok "inspect layer is JSON" "$OCIBLK" inspect --extents "$L1"
[ "$("$OCIBLK" inspect --extents "$L1" | json 'str(sum(e["block_count"] for e in d["extent_list"]))')" = 8192 ] \
	&& ok "inspect --extents covers the whole device" || notok "inspect --extents covers the whole device"
status "inspect unknown name: exit 1" 1 "$OCIBLK" inspect nothing-here
jsonok "layer ls --json parses" "$OCIBLK" layer ls --json

# --- --root and --json in either position ----------------------------------------------------
[ "$(env -u OCIBLK_ROOT "$OCIBLK" --root "$OCIBLK_ROOT" --json images | json 'd[0]["name"]')" = base ] && ok "--root before the command" || notok "--root before the command"
[ "$(env -u OCIBLK_ROOT "$OCIBLK" images --root="$OCIBLK_ROOT" --json | json 'd[0]["name"]')" = base ] && ok "--root= and --json after the command" || notok "--root= and --json after the command"
status "--root without a directory: exit 2" 2 "$OCIBLK" --root
status "a store that does not exist: exit 1" 1 "$OCIBLK" --root "$T/nowhere" images
grep -q "nowhere" "$T/err" && ok "and the error names it" || notok "and the error names it"

# --- fsck, rm, gc ------------------------------------------------------------------------------
check "fsck is clean" "$OCIBLK" fsck
jsonok "fsck --json parses" "$OCIBLK" fsck --json
nlayers(){ "$OCIBLK" layer ls --json | json 'len(d)'; }
before=$(nlayers)
check "rm c1 c2" "$OCIBLK" rm c1 c2
status "rm of a missing container: exit 1" 1 "$OCIBLK" rm c1
check "gc with images still there" "$OCIBLK" --json gc
[ "$(json 'd["layers_removed"]' <"$T/out")" = 0 ] && ok "gc keeps referenced layers" || notok "gc keeps referenced layers"
check "rmi base big" "$OCIBLK" rmi base big
check "gc" "$OCIBLK" --json gc
cp "$T/out" "$T/gc.json"
[ "$(json 'd["layers_removed"]' <"$T/gc.json")" -ge 2 ] && ok "gc removed the unreferenced layers" || notok "gc removed the unreferenced layers"
[ "$(json 'd["bytes_freed"]' <"$T/gc.json")" -gt 0 ] && ok "gc reports bytes freed" || notok "gc reports bytes freed"
after=$(nlayers)
[ "$after" = $((before - 2)) ] && ok "layer count $before -> $after" || notok "layer count $before -> $after"
status "the removed layer is gone" 1 "$OCIBLK" inspect "$L1"

# --- corruption --------------------------------------------------------------------------------
check "re-add base" "$OCIBLK" --json layer add-raw --name base "$T/base.img"
L1=$(json 'd["layer"]' <"$T/out")
check "fsck clean again" "$OCIBLK" fsck
lp=$OCIBLK_ROOT/layers/${L1#sha256:}
[ -f "$lp" ] || lp=$(find "$OCIBLK_ROOT/layers" -type f | head -1)
off=$("$OCIBLK" inspect --extents "$L1" | json '[e for e in d["extent_list"] if e["kind"]=="data"][0]["offset_bytes"]+7')
python3 - "$lp" "$off" <<'PY'
import sys
p, off = sys.argv[1], int(sys.argv[2])
with open(p, "r+b") as f:
    f.seek(off); b = f.read(1); f.seek(off); f.write(bytes([b[0] ^ 0x40]))
PY
status "fsck finds a flipped byte: exit 1" 1 "$OCIBLK" fsck
grep -q "${L1#sha256:}" "$T/err" && ok "fsck names the damaged layer" || { notok "fsck names the damaged layer"; sed 's/^/# /' "$T/err" | head; }
"$OCIBLK" fsck --json >"$T/out" 2>/dev/null
[ "$(json 'd["clean"]' <"$T/out")" = False ] && ok "fsck --json says not clean" || notok "fsck --json says not clean"

tap_end
