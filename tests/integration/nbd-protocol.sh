#!/usr/bin/env bash
# NBD protocol edge cases and hostile clients (nbd-protocol.py through nbdsh/libnbd and raw
# sockets): out-of-range, zero-length, oversized, unaligned and read-only requests, bad flags and
# commands, option haggling (LIST, INFO, GO, ABORT, meta contexts, unknown export), garbage,
# lies about lengths, disconnects mid-request, floods; the server keeps serving and loses nothing.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/nbd-common.bash"
require nbdsh python3
make_store || { echo "1..1"; echo "not ok 1 - make store"; exit 1; }
start_server || { echo "1..1"; echo "not ok 1 - server start"; exit 1; }
SOCK=$SOCK BASE=$T/base.img timeout 180 nbdsh -c "exec(open('$HERE/nbd-protocol.py').read())" >"$T/py.out" 2>"$T/py.err"
rc=$?
while read -r word rest; do
	case $word in PASS) ok "$rest" ;; FAIL) notok "$rest" ;; esac
done <"$T/py.out"
[ "$rc" = 0 ] && ok "protocol script ran to the end" || { notok "protocol script ran to the end (exit $rc)"; sed 's/^/# /' "$T/py.err" | tail -15; }
server_alive && ok "server survived every client" || notok "server survived every client"
stop_server TERM; rc=$?
[ "$rc" = 0 ] && ok "SIGTERM: exit 0" || notok "SIGTERM: exit $rc"
grep -qi "assert\|sanitizer\|runtime error" "$T/serve.err" && { notok "server stderr clean"; sed 's/^/# /' "$T/serve.err" | head; } || ok "server stderr clean"
finish
