#!/usr/bin/env bash
# `ociblk gc --tmp-age 0` in a loop while real imports and commits run (FORMAT.md section 4: work in
# progress is held by flocks, not protected by an age).  Seeded ($OCIBLK_SEED replays): rounds
# of importing two umoci images (removed again at random, so gc deletes their layers and chain
# records and later imports rebuild them, racing gc between the reuse decision and the build),
# creating a container, writing into it, committing it, removing it.  Every command must succeed,
# gc must never fail, and at the end one more gc must leave only referenced layers (none held),
# an empty tmp/ and a clean fsck; the last image of each kind must read back what was written.
. "$(dirname "$0")/lib.bash"
for tool in umoci python3; do
	command -v $tool >/dev/null || { echo "1..1"; echo "not ok 1 - $tool missing (make deps)"; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "1..0 # SKIP needs root (umoci unpack/repack of owned files)"; exit 0; }
SEED=${OCIBLK_SEED:-$(( $(date +%s) % 32768 ))}
echo "# seed $SEED (replay with OCIBLK_SEED=$SEED)"
RANDOM=$SEED

if { bash "$FX/make-oci-fixture.sh" small "$T/img" base && bash "$FX/make-oci-fixture.sh" child "$T/img" base a; } >"$T/fx.log" 2>&1
then ok "fixtures: base and a on top of it"
else notok "fixtures"; sed 's/^/# /' "$T/fx.log" | tail; tap_end; exit; fi
check "import keep (never removed)" "$OCIBLK" import oci:"$T/img":base --name keep

( while [ ! -e "$T/stop" ]; do "$OCIBLK" --json gc --tmp-age 0 >>"$T/gc.out" 2>>"$T/gc.err" || echo "gc failed" >>"$T/gc.fail"; done ) &
PIDS="$PIDS $!"

bad=0
run() { if ! "$@" >"$T/out" 2>"$T/err"; then bad=$((bad+1)); echo "# failed: $*"; sed 's/^/#   /' "$T/err" | head -5; fi; }
ROUNDS=${OCIBLK_GC_ROUNDS:-12}
for i in $(seq 1 "$ROUNDS"); do
	run "$OCIBLK" import oci:"$T/img":a --name "a$i"
	run "$OCIBLK" import oci:"$T/img":base --name "b$i"
	run "$OCIBLK" create "a$i" "c$i"
	head -c $((4096 + RANDOM)) /dev/urandom >"$T/data$i"
	off=$(( (RANDOM % 4096) * 4096 ))
	echo "$off" >"$T/off$i"
	run "$OCIBLK" write "c$i" "$off" "$T/data$i"
	run "$OCIBLK" commit "c$i" "m$i"
	run "$OCIBLK" rm "c$i"
	# garbage for the gc loop: earlier images go, at random
	for old in a b m; do
		[ $i -gt 1 ] && [ $((RANDOM % 2)) = 0 ] && "$OCIBLK" images --json 2>/dev/null | grep -q "\"$old$((i-1))\"" &&
			run "$OCIBLK" rmi "$old$((i-1))"
	done
done
touch "$T/stop"
is "every import, create, write, commit, rm and rmi succeeded ($ROUNDS rounds against the gc loop)" "$bad" 0
for p in $PIDS; do wait "$p" 2>/dev/null; done
PIDS=""
if [ -e "$T/gc.fail" ]; then notok "the gc loop never failed"; sed 's/^/# /' "$T/gc.err" | tail -5
else ok "the gc loop never failed ($(grep -c layers_removed "$T/gc.out") runs)"; fi
removed=$(grep -o '"layers_removed": *[0-9]*' "$T/gc.out" | awk -F: '{s+=$2} END {print s+0}')
echo "# the gc loop removed $removed layers while the work ran"

check "final gc" "$OCIBLK" --json gc --tmp-age 0
is "final gc: nothing held" "$(json 'd["layers_in_use"]' <"$T/out")" 0
leaked=$(python3 - "$OCIBLK_ROOT" <<'PY'
import json, os, sys
root = sys.argv[1]
used = set()
for f in os.listdir(root + "/images"):
    if f.endswith(".json"): used.update(l[7:] for l in json.load(open(root + "/images/" + f))["layers"])
for c in os.listdir(root + "/containers"):
    used.update(l[7:] for l in json.load(open(root + "/containers/" + c + "/config.json"))["layers"])
print(len(set(os.listdir(root + "/layers")) - used))
PY
)
is "no unreferenced layer is left (no leak)" "$leaked" 0
is "tmp/ is empty" "$(ls -A "$OCIBLK_ROOT/tmp" | wc -l)" 0
check "fsck clean" "$OCIBLK" fsck
last=$ROUNDS
check "the last commit reads back what was written" "$OCIBLK" read -o "$T/back" "m$last" "$(cat "$T/off$last")" "$(stat -c %s "$T/data$last")"
same "  byte for byte" "$T/back" "$T/data$last"
tap_end
