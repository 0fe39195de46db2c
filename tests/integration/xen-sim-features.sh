#!/usr/bin/env bash
# The Xen backend end to end through the simulated Xen, every party a separate process: the sim
# daemon (ociblk xen-sim), two backend daemons (grant copy, and grant map under another type),
# the toolstack (ociblk xen-attach/xen-detach) and test frontends (blkfront-sim) that do Linux
# blkfront's handshake and check random I/O (read, write, flush, flush+data, barrier, discard,
# indirect) against an in-memory model.  Covers ABIs, multi-page rings, multi-queue, persistent
# grants, read-only images and --ro containers, reconnection, persistence across device
# processes, a killed device process being restarted and resuming, a vanished frontend, detach,
# the device's statistics in xenstore and in the log.
. "$(dirname "$0")/lib.bash"
FE=$BUILD/tests/tools/blkfront-sim
export OCIBLK_XEN_SIM=$T/sim.sock
[ -x "$OCIBLK" ] && [ -x "$FE" ] || { echo "1..1"; echo "not ok 1 - ociblk or blkfront-sim not built"; exit 1; }
BE0=/local/domain/0/backend

# wait_gone PATH: up to 10 s for a xenstore node to disappear
wait_gone() { for _ in $(seq 200); do "$FE" xs-read "$1" >/dev/null 2>&1 || return 0; sleep 0.05; done; return 1; }
# wait_value PATH VALUE
wait_value() { for _ in $(seq 200); do [ "$("$FE" xs-read "$1" 2>/dev/null)" = "$2" ] && return 0; sleep 0.05; done; return 1; }
wait_grep() { for _ in $(seq 200); do grep -q "$1" "$2" 2>/dev/null && return 0; sleep 0.05; done; return 1; }

# run_check DESC DOMID DISK TYPE [attach opts] -- [frontend opts]
run_check() {
	local desc=$1 dom=$2 disk=$3 type=$4; shift 4
	local aopts=()
	while [ $# -gt 0 ] && [ "$1" != "--" ]; do aopts+=("$1"); shift; done
	shift
	if ! "$OCIBLK" xen-attach --type "$type" "${aopts[@]}" "$dom" xvda "$disk" >/dev/null 2>"$T/attach.err"; then
		notok "$desc: attach"; diag "$T/attach.err"; return
	fi
	if timeout 120 "$FE" --domid "$dom" --vdev 51712 "$@" check >"$T/fe.$dom" 2>&1 && grep -q "^result: ok" "$T/fe.$dom"; then
		ok "$desc"
	else
		notok "$desc"; diag "$T/fe.$dom"
	fi
	if wait_gone "$BE0/$type/$dom/51712/state"; then ok "$desc: backend removed its directory after the guest left"
	else notok "$desc: backend directory left behind"; fi
}

"$FE" pattern "$T/base.img" 8388608 || { echo "1..1"; echo "not ok 1 - pattern"; exit 1; }
"$OCIBLK" layer add-raw "$T/base.img" --name base >/dev/null 2>"$T/err" || { echo "1..1"; echo "not ok 1 - add-raw"; diag "$T/err"; exit 1; }
for c in c1 c2 c3 c4 c5 c7 c8 c9 c10 c11 c13 c14 c15; do "$OCIBLK" create base $c >/dev/null; done

"$OCIBLK" xen-sim "$T/sim.sock" 2>"$T/sim.log" & PIDS="$PIDS $!"
# the socket file exists before it listens: wait until a client gets an answer
for _ in $(seq 200); do "$FE" xs-read /local/domain/0 >/dev/null 2>&1 && break; sleep 0.05; done
OCIBLK_LOG=info "$OCIBLK" xen-backend 2>"$T/be.log" & BE=$!; PIDS="$PIDS $BE"
OCIBLK_LOG=info "$OCIBLK" xen-backend --type ocimap --grant-map --vbd 2>"$T/bemap.log" & BEMAP=$!; PIDS="$PIDS $BEMAP"
if ! wait_grep "serving backend type ociblk" "$T/be.log" || ! wait_grep "serving backend type ocimap" "$T/bemap.log"; then
	echo "Bail out! backend daemons did not start"; diag "$T/be.log" "$T/bemap.log"; exit 1
fi

echo "1..52"
run_check "native abi, 1 queue, 1-page ring, no persistent/indirect" 1 c1 ociblk -- --ops 1500 --qd 8
run_check "x86_32-abi, 4 queues, 4-page rings, persistent, indirect, QD32, 2 reconnects" 2 c2 ociblk -- \
	--abi x86_32 --queues 4 --order 2 --persistent --indirect --qd 32 --ops 2000 --reconnect 2
run_check "x86_64-abi, 16-page ring, indirect, QD16" 3 c3 ociblk -- --abi x86_64 --order 4 --indirect --qd 16 --ops 1500
run_check "grant map: 2 queues, persistent, indirect, QD32, reconnect" 4 c4 ocimap -- \
	--queues 2 --order 1 --persistent --indirect --qd 32 --ops 2000 --reconnect 1
run_check "grant map: x86_32-abi, no persistent, indirect" 5 c5 ocimap -- --abi x86_32 --indirect --qd 16 --ops 1500
run_check "image attached: read-only (writes answered with errors, reads the image)" 6 base ociblk -- --indirect --ops 800
grep -q "readonly 1" "$T/fe.6" && ok "image: info has VDISK_READONLY" || notok "image: info has VDISK_READONLY"
run_check "container attached --ro: read-only" 7 c7 ociblk --ro -- --ops 500
grep -q "readonly 1" "$T/fe.7" && ok "--ro: info has VDISK_READONLY" || notok "--ro: info has VDISK_READONLY"

# persistence: a second device process sees what the first one wrote
run_check "persistence: first session writes" 8 c8 ociblk -- --ops 1500 --model "$T/model8" --indirect
run_check "persistence: second session (new device process) reads it back" 8 c8 ociblk -- --ops 500 --model "$T/model8"

# a device process killed mid-session is restarted and resumes the frontend's rings
"$OCIBLK" xen-attach 9 xvda c9 >/dev/null
timeout 120 "$FE" --domid 9 --vdev 51712 --queues 2 --persistent --indirect --qd 16 --ops 1500 --pause "$T/go9" check >"$T/fe.9" 2>&1 & FEP=$!
if wait_grep "^# connected" "$T/fe.9"; then ok "restart: frontend connected"; else notok "restart: frontend connected"; diag "$T/fe.9"; fi
B=$BE0/ociblk/9/51712
[ "$("$FE" xs-read $B/sectors)" = 16384 ] && [ "$("$FE" xs-read $B/info)" = 0 ] && [ "$("$FE" xs-read $B/sector-size)" = 512 ] \
	&& [ "$("$FE" xs-read $B/physical-sector-size)" = 4096 ] && ok "connected: sectors, info, sector-size, physical-sector-size" \
	|| notok "connected: sectors, info, sector-size, physical-sector-size"
[ "$("$FE" xs-read $B/feature-max-indirect-segments)" = 32 ] && [ "$("$FE" xs-read $B/multi-queue-max-queues)" = 4 ] \
	&& [ "$("$FE" xs-read $B/max-ring-page-order)" = 4 ] && [ "$("$FE" xs-read $B/feature-persistent)" = 1 ] \
	&& [ "$("$FE" xs-read $B/feature-flush-cache)" = 1 ] && [ "$("$FE" xs-read $B/feature-discard)" = 1 ] \
	&& [ "$("$FE" xs-read $B/discard-granularity)" = 4096 ] && ok "features published" || notok "features published"
DEV=$(grep "serving $B in process" "$T/be.log" | tail -1 | sed 's/.*in process //')
if [ -n "$DEV" ] && kill -9 "$DEV" 2>/dev/null; then ok "killed device process $DEV"; else notok "killed device process"; fi
if wait_grep "for $B killed by signal 9" "$T/be.log" && for _ in $(seq 200); do [ "$(grep -c "serving $B in process" "$T/be.log")" -ge 2 ] && break; sleep 0.05; done \
	&& [ "$(grep -c "serving $B in process" "$T/be.log")" -ge 2 ]; then ok "daemon restarted the device process"; else notok "daemon restarted the device process"; diag "$T/be.log"; fi
wait_value $B/state 4 && ok "restarted device reconnected to the live rings" || notok "restarted device reconnected"
touch "$T/go9"
if wait "$FEP" && grep -q "^result: ok" "$T/fe.9"; then ok "restart: the frontend's I/O all checked out"; else notok "restart: frontend I/O"; diag "$T/fe.9"; fi
wait_gone $B/state && ok "restart: cleaned up" || notok "restart: cleaned up"

# a frontend that vanishes (guest destroyed) while connected
"$OCIBLK" xen-attach 10 xvda c10 >/dev/null
"$FE" --domid 10 --vdev 51712 --pause "$T/never" check >"$T/fe.10" 2>&1 & FEP=$!; PIDS="$PIDS $FEP"
wait_grep "^# connected" "$T/fe.10" && { kill -9 $FEP; wait $FEP; } 2>/dev/null

wait_gone $BE0/ociblk/10/51712/state && ok "vanished frontend: backend removed its directory" || notok "vanished frontend: backend directory"
wait_grep "ociblk/10/51712: frontend .* is gone" "$T/be.log" && ok "vanished frontend: device noticed" || notok "vanished frontend noticed"
run_check "vanished frontend: the container is free again for a new guest" 10 c10 ociblk -- --ops 300

# detach without a live frontend
"$OCIBLK" xen-attach 11 xvda c11 >/dev/null
wait_value $BE0/ociblk/11/51712/state 2 && ok "attach: backend reached InitWait" || notok "attach: backend InitWait"
if "$OCIBLK" xen-detach 11 xvda --timeout 2000 2>"$T/err"; then ok "xen-detach"; else notok "xen-detach"; diag "$T/err"; fi
! "$FE" xs-read $BE0/ociblk/11/51712/state >/dev/null 2>&1 && ! "$FE" xs-read /local/domain/11/device/vbd/51712/state >/dev/null 2>&1 \
	&& ok "detach removed backend and frontend nodes" || notok "detach removed nodes"
run_check "after detach the container attaches again" 11 c11 ociblk -- --ops 300

# disks xl writes under backend/vbd (backendtype=phy), served when asked with --vbd
run_check "backend/vbd served by the daemon started with --vbd (grant map)" 13 c13 vbd -- --ops 300

# the daemon itself restarts: a new one re-serves a live device and resumes its rings
"$OCIBLK" xen-attach 14 xvda c14 >/dev/null
"$FE" --domid 14 --vdev 51712 --persistent --indirect --qd 8 --ops 800 --pause "$T/go14" check >"$T/fe.14" 2>&1 & FEP=$!
if wait_grep "^# connected" "$T/fe.14"; then ok "daemon restart: frontend connected"; else notok "daemon restart: frontend connected"; diag "$T/fe.14"; fi
kill $BE; wait $BE 2>/dev/null
OCIBLK_LOG=info "$OCIBLK" xen-backend 2>"$T/be2.log" & BE=$!; PIDS="$PIDS $BE"
if wait_grep "ociblk/14/51712: connected" "$T/be2.log"; then ok "new daemon re-served the device and reconnected its rings"
else notok "new daemon re-served the device"; diag "$T/be2.log"; fi
touch "$T/go14"
if wait "$FEP" && grep -q "^result: ok" "$T/fe.14"; then ok "daemon restart: the frontend's I/O all checked out"; else notok "daemon restart: frontend I/O"; diag "$T/fe.14"; fi
wait_gone $BE0/ociblk/14/51712/state && ok "daemon restart: cleaned up" || notok "daemon restart: cleaned up"

# statistics: a connected device publishes its counters under statistics/ while the guest runs
"$OCIBLK" xen-attach --type ocimap 15 xvda c15 >/dev/null
timeout 120 "$FE" --domid 15 --vdev 51712 --persistent --indirect --qd 8 --ops 200 --until "$T/stop15" check >"$T/fe.15" 2>&1 & FEP=$!
S=$BE0/ocimap/15/51712/statistics
stat_pos() { for _ in $(seq 200); do [ "$("$FE" xs-read "$S/$1" 2>/dev/null || echo 0)" -gt "${2:-0}" ] && return 0; sleep 0.05; done; return 1; }
if stat_pos rd_req && stat_pos wr_req && stat_pos f_req && stat_pos ds_req && stat_pos indirect_req && stat_pos pgnt_mapped \
	&& stat_pos pgnt_reused && [ "$("$FE" xs-read $S/err_req)" = 0 ]; then ok "statistics: live counters for reads, writes, flushes, discards, indirect, persistent grants; no errors"
else notok "statistics: live counters"; for k in rd_req wr_req f_req ds_req indirect_req pgnt_mapped pgnt_reused err_req; do echo "# $k=$("$FE" xs-read $S/$k 2>&1)"; done; fi
w1=$("$FE" xs-read $S/wr_sect 2>/dev/null || echo 0)
stat_pos wr_sect "$w1" && ok "statistics: republished while the guest keeps writing" || notok "statistics: republished while the guest keeps writing"
touch "$T/stop15"; wait $FEP
wait_grep "ocimap/15/51712: disconnected; statistics: rd_req=[1-9]" "$T/bemap.log" && ok "statistics: logged when the connection ends" \
	|| notok "statistics: logged when the connection ends"

# toolstack usage
"$OCIBLK" xen-attach 0 xvda c1 >/dev/null 2>&1; [ $? = 2 ] && ok "attach to domain 0: usage error" || notok "attach to domain 0: usage error"
"$OCIBLK" xen-attach 12 xvda nosuch >/dev/null 2>&1; [ $? = 1 ] && ok "attach of an unknown disk fails" || notok "attach of an unknown disk fails"
"$OCIBLK" xen-attach 12 xvdb base >/dev/null 2>&1 && ! "$OCIBLK" xen-attach 12 xvdb base >/dev/null 2>&1 \
	&& ok "attaching the same vdev twice fails" || notok "attaching the same vdev twice fails"
"$OCIBLK" xen-detach 12 xvdb --timeout 0 >/dev/null 2>&1

if grep -E "killed by signal|exited with" "$T/be.log" "$T/be2.log" "$T/bemap.log" | grep -v "ociblk/9/51712 killed by signal 9" >"$T/crashes"; then
	notok "no device process crashed"; diag "$T/crashes"
else ok "no device process crashed"; fi
kill -0 $BE && kill -0 $BEMAP && ok "backend daemons alive" || notok "backend daemons alive"
# stop the daemons normally (they exit through main, so ASan builds run their leak check)
kill $BE $BEMAP; wait $BE $BEMAP 2>/dev/null
if grep -lE "Sanitizer|runtime error" "$T"/*.log "$T"/fe.* "$T"/case.* "$T"/healthy >"$T/san" 2>/dev/null; then
	notok "no sanitizer reports"; for f in $(cat "$T/san"); do diag "$f"; done
else ok "no sanitizer reports"; fi
[ $failed = 0 ]
