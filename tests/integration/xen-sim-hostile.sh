#!/usr/bin/env bash
# A hostile frontend against the Xen backend, through the simulated Xen: each case of the table
# below runs a blkfront-sim that misbehaves one way (bad segment counts, sector ranges, grant
# references, indirect pages, producer indices, ABI mismatch, xenstore garbage, state-machine
# abuse) on a device of its own, and must be answered with an error response (and the device
# then still serves good requests), a disconnect, or a refused connection -- while a second,
# well-behaved guest keeps doing checked I/O on another device the whole time.  No device
# process may crash, and every device directory is cleaned up when its guest goes away.
. "$(dirname "$0")/lib.bash"
FE=$BUILD/tests/tools/blkfront-sim
export OCIBLK_XEN_SIM=$T/sim.sock
[ -x "$OCIBLK" ] && [ -x "$FE" ] || { echo "1..1"; echo "not ok 1 - ociblk or blkfront-sim not built"; exit 1; }
wait_gone() { for _ in $(seq 200); do "$FE" xs-read "$1" >/dev/null 2>&1 || return 0; sleep 0.05; done; return 1; }
wait_grep() { for _ in $(seq 200); do grep -q "$1" "$2" 2>/dev/null && return 0; sleep 0.05; done; return 1; }

# case  expected-result  disk(container|image)  frontend options
CASES="
rw-zero-segs              error      c  --persistent
rw-12-segs                error      c
rw-255-segs               error      c
first-gt-last             error      c
last-sect-8               error      c
sector-past-end           error      c
sector-overflow           error      c
bad-gref                  error      c
gref-out-of-table         error      c
gref-other-domain         error      c
read-into-readonly-grant  error      c
discard-misaligned        error      c
discard-past-end          error      c
discard-overflow          error      c
unknown-op                error      c
reserved-op               error      c
indirect-too-many         error      c  --indirect
indirect-zero-segs        error      c  --indirect
indirect-bad-gref         error      c  --indirect
indirect-bad-op           error      c  --indirect
indirect-bad-segment      error      c  --indirect --abi x86_32
indirect-past-end         error      c  --indirect
indirect-revoked-page     error      c  --indirect
write-to-image            error      i
discard-on-image          error      i
prod-overrun              disconnect c
prod-huge                 disconnect c  --order 2
prod-backwards            disconnect c  --abi x86_32
bad-ring-ref              refused    c
ring-ref-garbage          refused    c
ring-ref-huge-value       refused    c
ring-order-too-big        refused    c
queues-too-many           refused    c
queues-zero               refused    c
bad-protocol              refused    c
bad-evtchn                refused    c
missing-ring-ref          refused    c  --order 1
state-garbage             refused    c
state-99                  refused    c
state-connected-early     refused    c
abi-mismatch              error      c
evtchn-storm              error      c
reconnect-storm           error      c  --queues 2 --persistent
revoke-ring               error      c
"
NCASES=$(echo "$CASES" | grep -c .)
echo "1..$((NCASES * 2 + 6))"

"$FE" pattern "$T/base.img" 4194304 || exit 1
"$OCIBLK" layer add-raw "$T/base.img" --name base >/dev/null 2>"$T/err" || { diag "$T/err"; exit 1; }
"$OCIBLK" create base healthy >/dev/null
i=0
echo "$CASES" | while read -r c _; do [ -n "$c" ] && { i=$((i+1)); "$OCIBLK" create base "h$i" >/dev/null; }; done

"$OCIBLK" xen-sim "$T/sim.sock" 2>"$T/sim.log" & PIDS="$PIDS $!"
# the socket file exists before it listens: wait until a client gets an answer
for _ in $(seq 200); do "$FE" xs-read /local/domain/0 >/dev/null 2>&1 && break; sleep 0.05; done
OCIBLK_LOG=info "$OCIBLK" xen-backend 2>"$T/be.log" & BE=$!; PIDS="$PIDS $BE"
wait_grep "serving backend type ociblk" "$T/be.log" || { echo "Bail out! backend daemon did not start"; diag "$T/be.log"; exit 1; }

# the well-behaved neighbour
"$OCIBLK" xen-attach 2 xvda healthy >/dev/null
"$FE" --domid 2 --vdev 51712 --queues 2 --indirect --persistent --qd 16 --ops 400 --until "$T/stop" check >"$T/healthy" 2>&1 & HP=$!
PIDS="$PIDS $HP"
if wait_grep "^# connected" "$T/healthy"; then ok "healthy guest connected"; else notok "healthy guest connected"; diag "$T/healthy"; fi

i=0
while read -r c want disk opts; do
	[ -n "$c" ] || continue
	i=$((i+1)); dom=$((100 + i))
	if ! kill -0 "$BE" 2>/dev/null; then notok "$c: backend daemon is gone"; notok "$c: (skipped)"; continue; fi
	if [ "$disk" = i ]; then d=base; else d=h$i; fi
	"$OCIBLK" xen-attach "$dom" xvda "$d" >/dev/null 2>"$T/err" || { notok "$c: attach"; diag "$T/err"; continue; }
	# shellcheck disable=SC2086
	timeout 60 "$FE" --domid "$dom" --vdev 51712 $opts hostile "$c" >"$T/case.$i" 2>&1
	got=$(sed -n 's/^result: //p' "$T/case.$i" | tail -1)
	if [ "$got" = "$want" ]; then ok "$c: $want"; else notok "$c: wanted $want, got '${got:-nothing}'"; diag "$T/case.$i"; fi
	if wait_gone "/local/domain/0/backend/ociblk/$dom/51712/state"; then ok "$c: device cleaned up"
	else notok "$c: device directory left behind"
		[ -n "${XEN_SIM_DEBUG:-}" ] && for k in frontend params state online error; do echo "# $k=$("$FE" xs-read /local/domain/0/backend/ociblk/$dom/51712/$k)"; done
		"$OCIBLK" xen-detach "$dom" xvda --timeout 0 >/dev/null 2>&1; fi
done <<<"$CASES"

touch "$T/stop"
if wait "$HP" && grep -q "^result: ok" "$T/healthy"; then ok "healthy guest: all its I/O checked out meanwhile"
else notok "healthy guest failed"; diag "$T/healthy"; fi
rounds=$(sed -n 's/^# \([0-9]*\) check rounds/\1/p' "$T/healthy")
[ "${rounds:-0}" -ge 2 ] && ok "healthy guest ran $rounds check rounds during the table" || notok "healthy guest ran ${rounds:-0} rounds"
if grep -E "killed by signal|exited with" "$T/be.log" >"$T/crashes"; then notok "no device process crashed"; diag "$T/crashes"
else ok "no device process crashed"; fi
kill -0 "$BE" && ok "backend daemon alive" || notok "backend daemon alive"
# stop the daemons normally (they exit through main, so ASan builds run their leak check)
kill $BE; wait $BE 2>/dev/null
if grep -lE "Sanitizer|runtime error" "$T"/*.log "$T"/fe.* "$T"/case.* "$T"/healthy >"$T/san" 2>/dev/null; then
	notok "no sanitizer reports"; for f in $(cat "$T/san"); do diag "$f"; done
else ok "no sanitizer reports"; fi
[ $failed = 0 ] || { [ -n "${XEN_SIM_DEBUG:-}" ] && cp "$T/be.log" /tmp/hostile-be.log; false; }
