# Shared setup of the tests/integration/nbd-*.sh tests (sourced, not a test itself):
# a private temp dir and store, a TAP counter, and an `ociblk serve` on a private unix socket
# that is killed when the test exits, whatever happens.
BUILD=${OCIBLK_BUILD:-$(cd "$(dirname "$0")/../.." && pwd)/build}
OCIBLK=$BUILD/ociblk
T=$(mktemp -d)
SERVER_PID=
EXTRA_PIDS=()   # other servers a test starts: killed at exit too
nbd_cleanup() {
	local p
	for p in "${EXTRA_PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
	if [ -n "$SERVER_PID" ]; then kill -9 "$SERVER_PID" 2>/dev/null; { wait "$SERVER_PID"; } 2>/dev/null; fi
	rm -rf "$T"
}
trap nbd_cleanup EXIT
export OCIBLK_ROOT=$T/store
SOCK=$T/nbd.sock
# Python must not pick up the repository's nbd/ directory as the libnbd module, and nbdsh must run
# the system python3 that has python3-libnbd (not a pyenv one first in PATH).
cd "$T" || exit 1
export PATH=/usr/bin:/bin:/usr/sbin:/sbin:$PATH

n=0; failed=0
ok()   { n=$((n+1)); echo "ok $n - $1"; }
notok(){ n=$((n+1)); failed=$((failed+1)); echo "not ok $n - $1"; }
# check DESC CMD...: ok when CMD succeeds; shows its output otherwise.
check(){ local d=$1; shift; if "$@" >"$T/out" 2>"$T/err"; then ok "$d"; else notok "$d"; sed 's/^/# /' "$T/out" "$T/err" | tail -20; fi; }
# Required tools are a failure when missing (make deps installs them), never a skip.
require() {
	local t missing=
	for t in "$@"; do command -v "$t" >/dev/null || missing="$missing $t"; done
	[ -x "$OCIBLK" ] || missing="$missing $OCIBLK"
	if [ -n "$missing" ]; then echo "1..1"; echo "not ok 1 - missing:$missing (make deps / make)"; exit 1; fi
}
finish() { echo "1..$n"; [ "$failed" = 0 ]; exit $?; }

uri() { echo "nbd+unix:///$1?socket=$SOCK"; }

# start_server [ARGS...]: serve on $SOCK, wait until it accepts.
start_server() {
	"$OCIBLK" serve --nbd "unix:$SOCK" "$@" >"$T/serve.out" 2>>"$T/serve.err" &
	SERVER_PID=$!
	local i
	for i in $(seq 1 200); do
		[ -S "$SOCK" ] && return 0
		kill -0 "$SERVER_PID" 2>/dev/null || break
		sleep 0.05
	done
	echo "# server did not start:"; sed 's/^/# /' "$T/serve.err" | tail -5
	return 1
}
# stop_server [SIGNAL]: signal (default TERM), wait, return its exit status.
stop_server() {
	local sig=${1:-TERM} rc
	kill -"$sig" "$SERVER_PID" 2>/dev/null
	{ wait "$SERVER_PID"; } 2>/dev/null; rc=$?
	SERVER_PID=
	return $rc
}
server_alive() { [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; }

# make_store: base.img (16 MiB: 8 MiB random data then zeros; a hole in the middle of the data)
# as image "img" (read-only export) and container "ctr" (read-write export).
make_store() {
	head -c $((8 << 20)) /dev/urandom >"$T/base.img" &&
	dd if=/dev/zero of="$T/base.img" bs=4096 seek=512 count=64 conv=notrunc status=none &&
	truncate -s 16M "$T/base.img" &&
	"$OCIBLK" --quiet layer add-raw --name img "$T/base.img" >/dev/null &&
	"$OCIBLK" --quiet create img ctr >/dev/null
}

# py_suite SCRIPT.py TIMEOUT: a fresh store and server, SCRIPT.py run in nbdsh's python (SOCK and
# BASE in its environment) with its "PASS desc"/"FAIL desc" lines as TAP; then the server must be
# alive, stop with exit 0 on SIGTERM and leave no assertion or sanitizer report.  Ends the test.
py_suite() {
	local py=$1 secs=$2 rc
	require nbdsh python3
	make_store || { echo "1..1"; echo "not ok 1 - make store"; exit 1; }
	start_server || { echo "1..1"; echo "not ok 1 - server start"; exit 1; }
	SOCK=$SOCK BASE=$T/base.img timeout "$secs" nbdsh -c "exec(open('$py').read())" >"$T/py.out" 2>"$T/py.err"
	rc=$?
	while read -r word rest; do
		case $word in PASS) ok "$rest" ;; FAIL) notok "$rest" ;; esac
	done <"$T/py.out"
	[ "$rc" = 0 ] && ok "$(basename "$py") ran to the end" ||
		{ notok "$(basename "$py") ran to the end (exit $rc)"; sed 's/^/# /' "$T/py.err" | tail -15; }
	server_alive && ok "server survived every client" || notok "server survived every client"
	stop_server TERM; rc=$?
	[ "$rc" = 0 ] && ok "SIGTERM: exit 0" || notok "SIGTERM: exit $rc"
	grep -qi "assert\|sanitizer\|runtime error" "$T/serve.err" && { notok "server stderr clean"; sed 's/^/# /' "$T/serve.err" | head; } || ok "server stderr clean"
	finish
}
