#!/usr/bin/env bash
# The server's batched socket I/O (nbd/server.c: one recv takes in many requests, one sendmsg
# carries a round's replies): pipelined requests in one send, the same stream cut into tiny
# pieces (headers and payloads split across reads), writes larger than the receive buffer,
# reads whose replies overflow one send round, and many connections at once, all checked
# byte for byte (nbd-batching.py through nbdsh's python and raw sockets).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/nbd-common.bash"
py_suite "$HERE/nbd-batching.py" 300
