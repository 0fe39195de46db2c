#!/usr/bin/env bash
# The server's batched socket I/O (nbd/server.c: one recv takes in many requests, one sendmsg
# carries a round's replies): pipelined requests in one send, the same stream cut into tiny
# pieces (headers and payloads split across reads), writes larger than the receive buffer,
# reads whose replies overflow one send round, and many connections at once, all checked
# byte for byte (nbd-batching.py through nbdsh's python and raw sockets).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/nbd-common.bash"
require nbdsh python3
make_store || { echo "1..1"; echo "not ok 1 - make store"; exit 1; }
start_server || { echo "1..1"; echo "not ok 1 - server start"; exit 1; }
SOCK=$SOCK BASE=$T/base.img timeout 300 nbdsh -c "exec(open('$HERE/nbd-batching.py').read())" >"$T/py.out" 2>"$T/py.err"
rc=$?
while read -r word rest; do
	case $word in PASS) ok "$rest" ;; FAIL) notok "$rest" ;; esac
done <"$T/py.out"
[ "$rc" = 0 ] && ok "batching script ran to the end" || { notok "batching script ran to the end (exit $rc)"; sed 's/^/# /' "$T/py.err" | tail -15; }
server_alive && ok "server alive" || notok "server alive"
stop_server TERM; rc=$?
[ "$rc" = 0 ] && ok "SIGTERM: exit 0" || notok "SIGTERM: exit $rc"
grep -qi "assert\|sanitizer\|runtime error" "$T/serve.err" && { notok "server stderr clean"; sed 's/^/# /' "$T/serve.err" | head; } || ok "server stderr clean"
finish
