#!/usr/bin/env bash
# Layer sharing and determinism of ociblk import:
#   - two images with a common base (umoci) share its block layers: the second import reuses
#     them (layers_reused) and adds one layer file only;
#   - the same image recompressed as zstd and as plain tar has the same diff ids, hence the same
#     chain ids: importing it adds nothing; another --size gives other layers (no false sharing);
#   - importing into a second store gives byte-identical layers (the same digests);
#   - removing one image and gc keeps the other intact (fsck clean, exported device e2fsck clean,
#     its files readable with debugfs);
#   - a multi-platform index: the host's platform by default, --platform picks another, an
#     absent platform is an error; `--json` output and `ociblk images` list the result.
. "$(dirname "$0")/lib.bash"
nlayers(){ ls "$1/layers" | wc -l; }

for tool in umoci python3 zstd e2fsck debugfs; do
	command -v $tool >/dev/null || { echo "1..1"; echo "not ok 1 - $tool missing (make deps)"; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "1..0 # SKIP needs root (umoci unpack/repack of owned files)"; exit 0; }
[ -x "$OCIBLK" ] || { echo "1..1"; echo "not ok 1 - $OCIBLK not built"; exit 1; }

if { bash "$FX/make-oci-fixture.sh" small "$T/img" base && bash "$FX/make-oci-fixture.sh" child "$T/img" base a &&
     bash "$FX/make-oci-fixture.sh" child "$T/img" base b; } >"$T/fx.log" 2>&1; then ok "fixtures: base, a and b on top of it"
else notok "fixtures"; sed 's/^/# /' "$T/fx.log" | tail; echo "1..$n"; exit 1; fi

check "import a" "$OCIBLK" --json import oci:"$T/img":a
cp "$T/out" "$T/a.json"
is "a: 3 layers" "$(json 'd["layers"]' <"$T/a.json")" 3
is "a: nothing shared in an empty store" "$(json 'd["layers_reused"]' <"$T/a.json")" 0
is "a: 3 layer files" "$(nlayers "$OCIBLK_ROOT")" 3
is "image named from the directory and tag" "$(json 'd["image"]' <"$T/a.json")" img:a
check "import b" "$OCIBLK" --json import oci:"$T/img":b
cp "$T/out" "$T/b.json"
is "b: the two base layers are shared" "$(json 'd["layers_reused"]' <"$T/b.json")" 2
is "b added one layer file" "$(nlayers "$OCIBLK_ROOT")" 4
"$OCIBLK" images >"$T/images" 2>&1
grep -q "^img:a " "$T/images" && grep -q "^img:b " "$T/images" && ok "ociblk images lists both" || { notok "ociblk images lists both"; sed 's/^/# /' "$T/images"; }

# --- recompression keeps chain ids -----------------------------------------------------------
for c in zstd none; do
	rm -rf "$T/img-$c"; cp -a "$T/img" "$T/img-$c"
	python3 "$FX/oci-mutate.py" "$T/img-$c" a recompress $c
	check "import a recompressed as $c" "$OCIBLK" --json import oci:"$T/img-$c":a --name "a-$c"
	is "a as $c: every layer shared (same diff ids, same chain ids)" "$(json 'd["layers_reused"]' <"$T/out")" 3
	is "a as $c: same top layer" "$(json 'd["top_layer"]' <"$T/out")" "$(json 'd["top_layer"]' <"$T/a.json")"
done
is "no layer file added by recompressed imports" "$(nlayers "$OCIBLK_ROOT")" 4
check "import a with --size 1G" "$OCIBLK" --json import oci:"$T/img":a --name a-1g --size 1G
is "another size shares nothing" "$(json 'd["layers_reused"]' <"$T/out")" 0
is "another size adds 3 layers" "$(nlayers "$OCIBLK_ROOT")" 7
"$OCIBLK" inspect --type image a-1g >"$T/ins" 2>&1
is "--size is the image's device size" "$(json 'd["size_bytes"]' <"$T/ins" 2>/dev/null)" $((1 << 30))

# --- docker-archive forms: skopeo's, legacy `docker save` (layers named by symlinks), Docker 25's
if skopeo --insecure-policy copy -q oci:"$T/img":a docker-archive:"$T/a-docker.tar":ex/a:1 2>"$T/err"; then
	python3 "$FX/docker-archive-variants.py" legacy-symlinks "$T/a-docker.tar" "$T/a-legacy.tar"
	python3 "$FX/docker-archive-variants.py" oci-form "$T/img" a "$T/a-ociform.tar"
	for v in docker:ex/a:1 legacy:docker.io/ex/a:1 ociform:example.com/oci-form:a; do
		f=${v%%:*}; ref=${v#*:}
		check "import docker-archive ($f form)" "$OCIBLK" --json import docker-archive:"$T/a-$f.tar":"$ref" --name "a-$f"
		is "docker-archive ($f form): same top layer as oci:" "$(json 'd["top_layer"]' <"$T/out")" "$(json 'd["top_layer"]' <"$T/a.json")"
	done
	check "docker-archive without NAME:TAG takes its only image" "$OCIBLK" --json import docker-archive:"$T/a-legacy.tar"
	is "... named after its RepoTags" "$(json 'd["image"]' <"$T/out")" docker.io/ex/a:1
	"$OCIBLK" rmi a-docker a-legacy a-ociform docker.io/ex/a:1 >/dev/null 2>&1
else notok "skopeo copy to docker-archive"; sed 's/^/# /' "$T/err"; fi

# --- determinism: a second store ---------------------------------------------------------------
OCIBLK_ROOT=$T/store2 "$OCIBLK" --json import oci:"$T/img-zstd":b >"$T/b2.json" 2>"$T/err" || sed 's/^/# /' "$T/err"
is "b in a second store (from zstd blobs): same top layer" "$(json 'd["top_layer"]' <"$T/b2.json")" "$(json 'd["top_layer"]' <"$T/b.json")"
missing=0; for d in $(ls "$T/store2/layers"); do [ -e "$OCIBLK_ROOT/layers/$d" ] || missing=$((missing+1)); done
is "every layer of the second store (3) is byte-identical to one of the first" "$(nlayers "$T/store2")/$missing" 3/0

# --- remove a, gc: b intact --------------------------------------------------------------------
check "rmi a a-zstd a-none a-1g" "$OCIBLK" rmi img:a a-zstd a-none a-1g
check "gc" "$OCIBLK" gc
is "gc removed a's own layers only" "$(nlayers "$OCIBLK_ROOT")" 3
check "fsck after gc" "$OCIBLK" fsck
check "create a container from b" "$OCIBLK" create img:b cb
check "export it" "$OCIBLK" export cb "$T/b.img"
check "e2fsck -fn of b's device" e2fsck -fn "$T/b.img"
is "b's own file" "$(debugfs -R 'cat /etc/child-b' "$T/b.img" 2>/dev/null)" "child of base: b"
is "b's base file" "$(debugfs -R 'cat /etc/second' "$T/b.img" 2>/dev/null)" "second layer"
debugfs -R 'stat /etc/motd' "$T/b.img" 2>&1 | grep -q "not found" && ok "whiteout of the base layer applies" || notok "whiteout of the base layer applies"
debugfs -R 'stat /etc/child-a' "$T/b.img" 2>&1 | grep -q "not found" && ok "a's file is not in b" || notok "a's file is not in b"

# --- multi-platform index ----------------------------------------------------------------------
rm -rf "$T/multi"; cp -a "$T/img" "$T/multi"
python3 "$FX/oci-mutate.py" "$T/multi" base platform-index
check "index: host platform by default" "$OCIBLK" --json import oci:"$T/multi":base --name m-host
is "host platform image has 2 layers" "$(json 'd["layers"]' <"$T/out")" 2
check "index: --platform linux/arm64" "$OCIBLK" --json import oci:"$T/multi":base --name m-arm --platform linux/arm64
is "arm64 image has 3 layers" "$(json 'd["layers"]' <"$T/out")" 3
"$OCIBLK" import oci:"$T/multi":base --name m-s390 --platform linux/s390x >"$T/out" 2>"$T/err"
[ $? = 1 ] && grep -q "no image for platform linux/s390x" "$T/err" && ok "index: absent platform is an error naming it" \
	|| { notok "index: absent platform is an error naming it"; sed 's/^/# /' "$T/err"; }
tap_end
