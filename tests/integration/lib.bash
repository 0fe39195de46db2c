# Shared prologue of the tests/integration/*.sh TAP scripts (sourced, not a test itself: prove
# only runs *.sh).  After `. "$(dirname "$0")/lib.bash"` a script has:
#   BUILD, OCIBLK     the build directory ($OCIBLK_BUILD, default build/) and the ociblk binary
#   FX                tests/fixtures
#   T                 a private temp dir; OCIBLK_ROOT=$T/store
#   PIDS              background pids: killed (and reaped) at exit, then $T is removed; a script
#                     that has more to undo defines test_cleanup, which runs first
#   ok/notok/diag     TAP lines (n counts them, failed counts failures); tap_end prints the plan
#                     and returns the status
#   check/status/same/is/json   the usual assertions
set -u
BUILD=${OCIBLK_BUILD:-$(cd "$(dirname "$0")/../.." && pwd)/build}
OCIBLK=$BUILD/ociblk
FX=$(cd "$(dirname "${BASH_SOURCE[0]}")/../fixtures" && pwd)
T=$(mktemp -d)
PIDS=""
lib_cleanup() {
	local p
	if declare -F test_cleanup >/dev/null; then test_cleanup; fi
	for p in $PIDS; do kill "$p" 2>/dev/null; done
	for p in $PIDS; do wait "$p" 2>/dev/null; done
	rm -rf "$T"
}
trap lib_cleanup EXIT
export OCIBLK_ROOT=$T/store
PATH=$PATH:/usr/sbin:/sbin

n=0; failed=0
ok()   { n=$((n+1)); echo "ok $n - $1"; }
notok(){ n=$((n+1)); failed=$((failed+1)); echo "not ok $n - $1"; }
diag() { sed 's/^/# /' "$@" | tail -15; }
tap_end() { echo "1..$n"; [ $failed = 0 ]; }
# check DESC CMD...: ok when CMD succeeds; shows its output otherwise.
check(){ local d=$1; shift; if "$@" >"$T/out" 2>"$T/err"; then ok "$d"; else notok "$d"; sed 's/^/# /' "$T/out" "$T/err" | head -20; fi; }
# status DESC WANT CMD...: the exit status must be exactly WANT.
status(){ local d=$1 want=$2; shift 2; "$@" >"$T/out" 2>"$T/err"; local rc=$?
	if [ "$rc" = "$want" ]; then ok "$d"; else notok "$d (exit $rc, wanted $want)"; sed 's/^/# /' "$T/err" | head -10; fi; }
same(){ if cmp -s "$2" "$3"; then ok "$1"; else notok "$1"; cmp "$2" "$3" 2>&1 | sed 's/^/# /' | head -3; fi; }
is(){ if [ "$2" = "$3" ]; then ok "$1"; else notok "$1 (got '$2', wanted '$3')"; fi; }
# json EXPR < JSON: prints EXPR evaluated with d bound to the parsed input.
json(){ python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }
