#!/usr/bin/env bash
# NBD protocol edge cases and hostile clients (nbd-protocol.py through nbdsh/libnbd and raw
# sockets): out-of-range, zero-length, oversized, unaligned and read-only requests, bad flags and
# commands, option haggling (LIST, INFO, GO, ABORT, meta contexts, unknown export), garbage,
# lies about lengths, disconnects mid-request, floods; the server keeps serving and loses nothing.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/nbd-common.bash"
py_suite "$HERE/nbd-protocol.py" 180
