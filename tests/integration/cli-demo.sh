#!/usr/bin/env bash
# `make demo` keeps working: runs tests/demo.sh (as `make demo` does) and checks it finished and
# showed the outcomes it narrates.
. "$(dirname "$0")/lib.bash"
here=$(cd "$(dirname "$0")/../.." && pwd)
export OCIBLK_BUILD=$BUILD
has(){ grep -q -- "$2" "$T/out" && ok "$1" || notok "$1"; }

if TMPDIR=$T bash "$here/tests/demo.sh" >"$T/out" 2>&1; then ok "demo exits 0"; else notok "demo exits 0"; sed 's/^/# /' "$T/out" | tail -30; fi
has "demo finished" "demo finished"
has "the container read back its write" "web1 reads back:  hello from container web1"
has "the other container was untouched" "web2 still reads: hello from the base image"
has "e2fsck passed on the export" "Pass 5: Checking group summary information"
has "the committed image has the change" "index.txt in v2.img:   hello from container web1"
has "fsck clean" ": clean"
[ -z "$(ls -A "$T" | grep -v '^out$')" ] && ok "demo removed its temporary store" || notok "demo removed its temporary store"
tap_end
