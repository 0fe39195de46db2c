#!/usr/bin/env bash
# ociblk import on malformed images: each case must fail with exit 1, print an error naming what
# is wrong (and where), and leave the store exactly as it was (every file outside tmp/ hashed
# before and after; tmp/ itself must be empty again).  Images are built at test time with umoci
# and broken with tests/fixtures/oci-mutate.py.
. "$(dirname "$0")/lib.bash"

for tool in umoci python3 zstd; do
	command -v $tool >/dev/null || { echo "1..1"; echo "not ok 1 - $tool missing (make deps)"; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "1..0 # SKIP needs root (umoci unpack/repack of owned files)"; exit 0; }
[ -x "$OCIBLK" ] || { echo "1..1"; echo "not ok 1 - $OCIBLK not built"; exit 1; }

bash "$FX/make-oci-fixture.sh" small "$T/good" v1 >"$T/fx.log" 2>&1 || { echo "1..1"; echo "not ok 1 - fixture"; sed 's/^/# /' "$T/fx.log"; exit 1; }
if "$OCIBLK" import oci:"$T/good":v1 --name good >"$T/out" 2>"$T/err"; then ok "good image imports"; else notok "good image imports"; sed 's/^/# /' "$T/err"; fi

snapshot() { (cd "$OCIBLK_ROOT" && find . -path ./tmp -prune -o -type f ! -name lock -print0 | sort -z | xargs -0 sha256sum); }
snapshot >"$T/before"

# case NAME PATTERN SOURCE...: import must fail, say PATTERN, and change nothing
case_() {
	local name=$1 pat=$2; shift 2
	"$OCIBLK" import "$@" >"$T/out" 2>"$T/err"; local rc=$?
	if [ $rc != 1 ]; then notok "$name: exit $rc, wanted 1"; sed 's/^/# /' "$T/err" | head -5; return; fi
	if grep -q -- "$pat" "$T/err"; then ok "$name: error says '$pat'"; else notok "$name: error says '$pat'"; sed 's/^/# /' "$T/err" | head -5; fi
	snapshot >"$T/after"
	if cmp -s "$T/before" "$T/after"; then ok "$name: store unchanged"; else notok "$name: store unchanged"; diff "$T/before" "$T/after" | sed 's/^/# /' | head; cp "$T/after" "$T/before"; fi
	if [ -z "$(ls -A "$OCIBLK_ROOT/tmp")" ]; then ok "$name: no temp files left"; else notok "$name: no temp files left"; ls -la "$OCIBLK_ROOT/tmp" | sed 's/^/# /'; fi
}
mk() { local v=$1; shift; rm -rf "$T/$v"; cp -a "$T/good" "$T/$v"; python3 "$FX/oci-mutate.py" "$T/$v" v1 "$@"; }

# tars for the layer-content cases
python3 - "$T" <<'EOF'
import io, sys, tarfile
def tar(path, entries):
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, link in entries:
            ti = tarfile.TarInfo(name); ti.type = kind; ti.linkname = link; ti.mtime = 1700000000
            data = b"data\n" if kind == tarfile.REGTYPE else b""
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data) if data else None)
d = sys.argv[1]
tar(d + "/dotdot.tar", [("etc/", tarfile.DIRTYPE, ""), ("etc/../../escape", tarfile.REGTYPE, "")])
tar(d + "/abs.tar", [("/etc/absolute", tarfile.REGTYPE, "")])
tar(d + "/link-dotdot.tar", [("etc/l", tarfile.LNKTYPE, "../../etc/passwd")])
tar(d + "/link-missing.tar", [("etc/", tarfile.DIRTYPE, ""), ("etc/orphan-link", tarfile.LNKTYPE, "no/such/target")])
tar(d + "/newbase.tar", [("etc/", tarfile.DIRTYPE, ""), ("etc/newbase", tarfile.REGTYPE, "")])
EOF
head -c 20000 /dev/urandom >"$T/notgzip"

mk digest corrupt-layer 1;                      case_ "digest mismatch" "digest mismatch" oci:"$T/digest":v1
mk trunc truncate-layer 1;                      case_ "truncated gzip" "layer 2/2" oci:"$T/trunc":v1
mk badcfg config-raw '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[';
                                                case_ "malformed config JSON" "malformed JSON" oci:"$T/badcfg":v1
mk badman manifest-raw '{"schemaVersion":2,"config":5,"layers":[]}'
                                                case_ "manifest with a wrong type" "wrong type" oci:"$T/badman":v1
mk mt layer-media-type 1 application/vnd.oci.image.layer.v1.tar+bzip2
                                                case_ "unsupported media type" "unsupported media type" oci:"$T/mt":v1
mk mismatch layer-media-type 1 application/vnd.oci.image.layer.v1.tar
                                                case_ "gzip blob labelled tar" "media type says" oci:"$T/mismatch":v1
mk size layer-size 1 12345;                     case_ "blob size differs from descriptor" "descriptor says" oci:"$T/size":v1
mk absurd layer-size 1 1125899906842624;        case_ "absurd blob size" "limit" oci:"$T/absurd":v1
mk many many-layers 300;                        case_ "absurd layer count" "300 layers, limit" oci:"$T/many":v1
mk diffid diff-id 1 sha256:0000000000000000000000000000000000000000000000000000000000000000
                                                case_ "diff id mismatch" "diff id mismatch" oci:"$T/diffid":v1
mk dotdot replace-layer 1 "$T/dotdot.tar";      case_ "path with .." "etc/../../escape" oci:"$T/dotdot":v1
mk abs replace-layer 1 "$T/abs.tar" none;       case_ "absolute path" "unsafe path" oci:"$T/abs":v1
mk ldd replace-layer 1 "$T/link-dotdot.tar" zstd; case_ "hard link to a path with .." "hard link to unsafe path" oci:"$T/ldd":v1
# the first layer is new (so it is built and committed) and the second fails while it is applied:
# the committed layer file must be removed again
mk lmiss replace-layer 0 "$T/newbase.tar"
python3 "$FX/oci-mutate.py" "$T/lmiss" v1 replace-layer 1 "$T/link-missing.tar"
                                                case_ "hard link to a missing target" "etc/orphan-link" oci:"$T/lmiss":v1
grep -q "layer 2/2" "$T/err" && ok "hard link error names the layer" || notok "hard link error names the layer"
# a layer that needs more than the device: ENOSPC from the filesystem, named, nothing kept
head -c $((80 << 20)) /dev/urandom >"$T/big.bin"
tar --numeric-owner --owner=0 --group=0 -C "$T" -cf "$T/full.tar" big.bin
mk full replace-layer 1 "$T/full.tar" none;     case_ "layer larger than the device" "layer 2/2 (sha256:[0-9a-f]*): entry big.bin" oci:"$T/full":v1 --size 64M
rm -f "$T/big.bin" "$T/full.tar"; rm -rf "$T/full"
rm -rf "$T/missing"; cp -a "$T/good" "$T/missing"
python3 - "$T/missing" <<'EOF'
import json, os, sys
d = sys.argv[1]; idx = json.load(open(d + "/index.json"))
m = json.load(open(d + "/blobs/sha256/" + idx["manifests"][0]["digest"][7:]))
os.unlink(d + "/blobs/sha256/" + m["layers"][1]["digest"][7:])
EOF
case_ "missing blob" "No such file" oci:"$T/missing":v1
case_ "unknown tag" "no image tagged nope" oci:"$T/good":nope
case_ "unknown transport" "unknown transport" docker://example.com/x
printf 'not a tar' >"$T/junk.tar"
case_ "oci-archive that is not a tar" "oci-archive" oci-archive:"$T/junk.tar"
# docker-archive whose manifest.json names a member outside the archive
python3 - "$T/evil-docker.tar" <<'EOF'
import io, json, sys, tarfile
with tarfile.open(sys.argv[1], "w") as t:
    data = json.dumps([{"Config": "c.json", "RepoTags": ["evil:1"], "Layers": ["../../etc/passwd"]}]).encode()
    ti = tarfile.TarInfo("manifest.json"); ti.size = len(data); t.addfile(ti, io.BytesIO(data))
EOF
case_ "docker-archive member outside the archive" "unsafe member name" docker-archive:"$T/evil-docker.tar"
# a member name with .. inside the archive itself
python3 - "$T/evil-oci.tar" <<'EOF'
import io, sys, tarfile
with tarfile.open(sys.argv[1], "w") as t:
    ti = tarfile.TarInfo("../../oci-layout"); data = b'{"imageLayoutVersion":"1.0.0"}'; ti.size = len(data); t.addfile(ti, io.BytesIO(data))
EOF
case_ "oci-archive member named with .." "unsafe member name" oci-archive:"$T/evil-oci.tar"

# usage errors
"$OCIBLK" import >/dev/null 2>&1; [ $? = 2 ] && ok "no source: exit 2" || notok "no source: exit 2"
"$OCIBLK" import oci:"$T/good":v1 --size 12Q >/dev/null 2>&1; [ $? = 2 ] && ok "bad --size: exit 2" || notok "bad --size: exit 2"
case_ "--size not a multiple of 4096" "multiple of 4096" oci:"$T/good":v1 --size 100000001
case_ "--platform malformed" "OS/ARCH" oci:"$T/good":v1 --platform linux
case_ "--platform not the image's" "not linux/arm64" oci:"$T/good":v1 --platform linux/arm64

# --- an import killed while it builds layers ------------------------------------------------------
# Layer 1 is new; layer 2's blob is a FIFO that we serve for the two verify reads, then hold open
# without data, so the import blocks applying layer 2 after committing layer 1.  kill -9 then leaves
# an unreferenced layer file and temp files; gc must bring the store back to what it was.
mk killed replace-layer 0 "$T/newbase.tar"
blob=$(python3 -c 'import json,sys; d=sys.argv[1]; i=json.load(open(d+"/index.json")); m=json.load(open(d+"/blobs/sha256/"+i["manifests"][0]["digest"][7:])); print(d+"/blobs/sha256/"+m["layers"][1]["digest"][7:])' "$T/killed")
mv "$blob" "$T/layer2.blob"; mkfifo "$blob"
"$OCIBLK" import oci:"$T/killed":v1 >"$T/out" 2>"$T/err" &
imp=$!
# The feeder serves one session per open of the FIFO by the import, and starts the next one only
# once the import has closed it (seen in /proc), so sessions never merge.
python3 - "$blob" "$T/layer2.blob" $imp <<'EOF' &
import os, sys, time
fifo, data, pid = os.path.realpath(sys.argv[1]), open(sys.argv[2], "rb").read(), sys.argv[3]
def reader_has_it():
    try:
        fds = os.listdir("/proc/%s/fd" % pid)
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            if os.readlink("/proc/%s/fd/%s" % (pid, fd)) == fifo:
                return True
        except OSError:
            pass
    return False
for _ in range(2):  # the two reads of the verify pass
    fd = os.open(fifo, os.O_WRONLY)
    os.write(fd, data)
    while not reader_has_it():  # its open may return after ours: wait until it holds the FIFO
        if not os.path.exists("/proc/%s" % pid):
            sys.exit(0)
        time.sleep(0.01)
    os.close(fd)
    while reader_has_it():
        time.sleep(0.01)
fd = os.open(fifo, os.O_WRONLY)  # the apply pass: open, never any data
time.sleep(120)
EOF
feeder=$!
for i in $(seq 1 600); do
	[ "$(ls "$OCIBLK_ROOT/layers" | wc -l)" -gt "$(grep -c ' ./layers/' "$T/before")" ] && break
	kill -0 $imp 2>/dev/null || break
	sleep 0.1
done
if kill -0 $imp 2>/dev/null; then
	ok "import blocked after committing layer 1"
	kill -9 $imp; wait $imp 2>/dev/null
	snapshot >"$T/after"
	cmp -s "$T/before" "$T/after" && notok "killed import left its layer file (expected before gc)" || ok "killed import left an unreferenced layer file"
	if "$OCIBLK" gc --tmp-age 0 >"$T/out" 2>&1; then ok "gc after the killed import"; else notok "gc after the killed import"; sed 's/^/# /' "$T/out"; fi
	snapshot >"$T/after"
	if cmp -s "$T/before" "$T/after"; then ok "killed import + gc: store as before"; else notok "killed import + gc: store as before"; diff "$T/before" "$T/after" | sed 's/^/# /' | head; fi
	[ -z "$(ls -A "$OCIBLK_ROOT/tmp")" ] && ok "killed import + gc: no temp files" || notok "killed import + gc: no temp files"
else
	notok "import blocked after committing layer 1"; sed 's/^/# /' "$T/err" | head
fi
kill $feeder 2>/dev/null; wait $feeder 2>/dev/null

# after all that, the good image still works and fsck is clean
if "$OCIBLK" fsck >"$T/out" 2>&1; then ok "fsck clean after the failed imports"; else notok "fsck clean after the failed imports"; sed 's/^/# /' "$T/out" | head; fi
tap_end
