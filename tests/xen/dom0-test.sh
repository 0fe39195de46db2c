# Runs in dom0: the ociblk backend serves containers of /store to PV guests; checks the results.
# Every result line is "RESULT ok|not ID [detail]"; the host harness (check-xen.sh) turns them into
# TAP in the order of the PLAN lines below, so a check that never reports (dom0 died, a guest hung)
# is a "not ok" too.  Guests (tests/xen/guest-test.sh, role in brackets), all at once:
#   g1 [rw]     c1 via `ociblk xen-attach`, backend type ociblk (grant copy), 1 queue
#   g2 [rw2]    c2 via xen-attach, a second daemon with --grant-map (type ocimap), 2 vCPUs,
#               2 queues, 4-page rings; its device process is killed mid-I/O
#   g3 [ro]     the image, read-only
#   g4 [reboot] c4 via an xl disk line (backend/vbd, script=block-ociblk), reboots once
#   g5 [fio]    c5 as xvdb via xen-attach; runs the fio-jobs/ latency jobs with verify
# PLAN g1-done g1 ran its script to the end
# PLAN g2-done g2 ran its script to the end
# PLAN g3-done g3 ran its checks to the end (then it waits to be destroyed)
# PLAN g1-layers g1 reads one file from each of the image's three layers
# PLAN g1-write g1 wrote a file, overwrote 8 KiB of a lower-layer file, unmounted
# PLAN g2-write g2 (second container of the same image, at the same time) wrote
# PLAN g1-geometry g1 connected with 1 queue and a 1-page ring (grant copy)
# PLAN g2-geometry g2 connected with 2 queues, 4-page rings, mapped persistent grants
# PLAN g3-ro-flag g3 sees a read-only disk
# PLAN g3-ro-read g3 mounts and reads the read-only image
# PLAN g3-ro-write g3's write to the read-only disk is refused
# PLAN g3-direct g3's O_DIRECT 1 MiB reads of the raw disk match the image
# PLAN stats-live statistics/ in xenstore grow while g1 writes
# PLAN kill-restart killing g2's device process: the daemon restarts it and it reconnects
# PLAN kill-other g1's disk kept working across g2's device process being killed (2+ checked rounds after)
# PLAN kill-resume g2's I/O resumed on the restarted device (2+ checked rounds after, no I/O errors)
# PLAN rounds-ok every write/drop-cache/read-back round of g1 and g2 checked out
# PLAN direct-io g1 and g2 copied a file with 1 MiB O_DIRECT reads and writes intact
# PLAN trim-grew the 24 MiB file g1 wrote landed in c1's upper
# PLAN trim-shrank after rm + fstrim in g1 the upper shrank by the file's size
# PLAN trim-zero the deleted file's pattern is nowhere in c1 (discarded blocks read zero)
# PLAN g1-stats-discard g1's backend counted discards covering the 24 MiB file (ds_req, ds_sect)
# PLAN g1-stats-indirect g1's backend counted indirect requests
# PLAN g1-stats-flush g1's backend counted flushes
# PLAN g1-stats-copy g1's backend moved data by grant copy, no error responses
# PLAN g2-stats-persistent g2's backend mapped persistent grants and reused them
# PLAN g2-stats-indirect g2's backend (grant map) counted indirect requests and flushes
# PLAN g3-stats g3's backend served reads and received no write
# PLAN g4-xl-disk g4's disk came from an xl disk line (backend/vbd served by xen-backend --vbd)
# PLAN g4-reboot g4 rebooted (on_reboot=restart) and its second boot found the first boot's file
# PLAN g4-reconnect the backend served g4's disk to both domains of the reboot
# PLAN g5-fio-write fio in g5: the write latency jobs with verify=crc32c ran without errors
# PLAN g5-fio-read fio in g5: the random-read latency job ran without errors
# PLAN g5-stats g5's backend served fio's reads, writes and flushes on xvdb
# PLAN no-flush-fail no guest saw a failed flush or an I/O error
# PLAN destroy-running xl destroy of the running g3 leaves no backend state behind
# PLAN destroy-clean after every guest is gone no backend state is left (ociblk, ocimap, vbd)
# PLAN c1-newfile c1 holds the guest's new file
# PLAN c1-bigfile c1 holds the overwritten large file
# PLAN c2-isolated c2 does not see c1's file
# PLAN image-unchanged the image is unchanged
# PLAN g1-bigsum g1 read the 16 MiB lower-layer file intact
# PLAN g3-bigsum g3 read the 16 MiB file intact
# PLAN c4-reboot-files c4 holds the files of both of g4's boots
# PLAN fsck e2fsck is clean on c1, c2 and c4
export OCIBLK_ROOT=/store
phase() { echo "MARK t=$(cut -d' ' -f1 /proc/uptime) $*"; }
res() { if [ "$1" = ok ]; then echo "RESULT ok $2"; else shift; echo "RESULT not $*"; fi; }
check() { # check ID DETAIL-ON-FAILURE COMMAND...: one result from a command's status
  local id=$1 why=$2; shift 2
  if "$@"; then res ok "$id"; else res not "$id" "$why"; fi
}
log() { echo "/var/log/xen/console/guest-$1.log"; }
mark() { sed -n "s/.*MARK $2 //p" "$(log "$1")" | tr -d '\r' | tail -1; }
has() { grep -q "MARK $2" "$(log "$1")" 2>/dev/null; }
wait_for() { # wait_for SECONDS 'CONDITION': evaluates the shell condition every 0.5 s
  local n=$(($1 * 2)) i; shift
  for i in $(seq 1 "$n"); do eval "$*" && return 0; sleep 0.5; done
  return 1
}
# A guest's data/ directory (its domid cached: xl is slow to start under emulation).
gid() { eval "[ -n \"\${id_$1:-}\" ] || id_$1=\$(xl domid $1 2>/dev/null); echo \${id_$1}"; }
gdata() { xenstore-read "/local/domain/$(gid "$1")/data/$2" 2>/dev/null; }
gput() { xenstore-write "/local/domain/$(gid "$1")/data/$2" "$3"; }
rounds_at_least() { [ "$(gdata "$1" loops || echo 0)" -ge "$2" ] 2>/dev/null; }
# stat_of LOGFILE DEVICE-PATH NAME: a counter from the device's last "disconnected; statistics" line
stat_of() { grep "$2: disconnected; statistics" "$1" | tail -1 | grep -o " $3=[0-9]*" | cut -d= -f2; }
upper_kib() { du -k /store/containers/c1/upper.data | cut -f1; }

guest_cfg() { # guest_cfg NAME ROLE VCPUS MEMORY RAMDISK [KERNEL_ARGS] [CONFIG_LINES]
  cat > /tmp/$1.cfg <<CFG
name="$1"
type="pv"
kernel="/guest/vmlinux"
ramdisk="/guest/$5"
extra="console=hvc0 quiet ociblk_role=$2 ${6:-}"
memory=$4
vcpus=$3
on_poweroff="destroy"
${7:-}
CFG
}
start_attached() { # start_attached NAME TYPE VDEV DISK ATTACH-OPTS: paused, xen-attach, unpause
  xl create -p /tmp/$1.cfg >/dev/null 2>&1 || { echo "create $1 failed"; return 1; }
  local id; id=$(xl domid "$1")
  ociblk xen-attach --type "$2" $5 "$id" "$3" "$4" >/dev/null || { echo "attach $1 failed"; return 1; }
  local v=51712; [ "$3" = xvdb ] && v=51728
  local st=/local/domain/0/backend/$2/$id/$v/state
  wait_for 20 '[ "$(xenstore-read $st 2>/dev/null)" = 2 ]'
  xl unpause "$1"
}

OCIBLK_LOG=info ociblk xen-backend --vbd > /tmp/backend.log 2>&1 &
be=$!
OCIBLK_LOG=info ociblk xen-backend --type ocimap --grant-map > /tmp/backend-map.log 2>&1 &
bemap=$!
wait_for 10 'grep -q "serving backend type ociblk" /tmp/backend.log'
wait_for 10 'grep -q "serving backend type ocimap" /tmp/backend-map.log'

guest_cfg g1 rw 1 128 initrd.cpio
guest_cfg g2 rw2 2 128 initrd.cpio "xen_blkfront.max_queues=2 xen_blkfront.max_ring_page_order=2"
guest_cfg g3 ro 1 128 initrd.cpio
guest_cfg g4 reboot 1 128 initrd.cpio "" \
  "on_reboot=\"restart\"
disk=['vdev=xvda,access=rw,backendtype=phy,script=/etc/xen/scripts/block-ociblk,target=c4']"
guest_cfg g5 fio 1 320 initrd-fio.cpio
start_attached g1 ociblk xvda c1
start_attached g2 ocimap xvda c2
start_attached g3 ociblk xvda base --ro
xl create /tmp/g4.cfg >/tmp/g4.create 2>&1 || cat /tmp/g4.create
g4first=$(xl domid g4 2>/dev/null)
start_attached g5 ociblk xvdb c5
for g in g1 g2 g3 g5; do eval "id_$g=\$(xl domid $g)"; done
id1=$id_g1 id2=$id_g2 id3=$id_g3 id5=$id_g5
phase "domains g1=$id1 g2=$id2 g3=$id3 g4=$g4first g5=$id5"
B=/local/domain/0/backend

# ---- a device process killed while both read-write guests do checked I/O rounds ----
wait_for 240 'rounds_at_least g1 2'; wait_for 120 'rounds_at_least g2 2'
w0=$(xenstore-read $B/ociblk/$id1/51712/statistics/wr_req 2>/dev/null || echo 0)
if wait_for 30 '[ "$(xenstore-read $B/ociblk/$id1/51712/statistics/wr_req 2>/dev/null || echo 0)" -gt "$w0" ]' && [ "$w0" -gt 0 ]; then
  res ok stats-live
else res not stats-live "wr_req stayed at $w0"; fi
dev2=$B/ocimap/$id2/51712
pid=$(grep "serving $dev2 in process" /tmp/backend-map.log | tail -1 | sed 's/.*in process //')
phase "killing device process $pid ($dev2); g1 at round $(gdata g1 loops), g2 at round $(gdata g2 loops)"
kill -9 "$pid"
if wait_for 30 'grep -q "$dev2 killed by signal 9" /tmp/backend-map.log' \
  && wait_for 30 '[ "$(grep -c "serving $dev2 in process" /tmp/backend-map.log)" -ge 2 ]' \
  && wait_for 30 '[ "$(xenstore-read $dev2/state 2>/dev/null)" = 4 ]'; then res ok kill-restart
else res not kill-restart "$(grep "$dev2" /tmp/backend-map.log | tail -3 | tr '\n' ' ')"; fi
a1=$(gdata g1 loops) a2=$(gdata g2 loops)
wait_for 120 'rounds_at_least g1 $((a1 + 2))' && res ok kill-other || res not kill-other "g1 stayed at round $(gdata g1 loops) (was $a1)"
wait_for 120 'rounds_at_least g2 $((a2 + 2))' && res ok kill-resume || res not kill-resume "g2 stayed at round $(gdata g2 loops) (was $a2)"
gput g1 stop 1; gput g2 stop 1
phase "rounds stopped: g1 at $(gdata g1 loops), g2 at $(gdata g2 loops)"

# ---- discard: the upper grows by the file, fstrim shrinks it ----
# The guest's console marks count as well as data/phase: a lost xenstore write must not cost a
# whole wait (seen once: fstrim done, data/phase never changed).
wait_for 300 '[ "$(gdata g1 phase)" = trim-written ] || grep -aq "MARK trim-file-written" "$(log g1)"' || phase "g1 did not write its trim file: $(grep -a MARK "$(log g1)" | tail -3 | tr '\n' ' ')"
k1=$(upper_kib)
gput g1 trim-go 1
wait_for 300 '[ "$(gdata g1 phase)" = trimmed ] || grep -aq "MARK fstrim" "$(log g1)"' || phase "g1 did not trim: $(grep -a MARK "$(log g1)" | tail -3 | tr '\n' ' ')"
k2=$(upper_kib)
phase "c1 upper: ${k1} KiB with the file, ${k2} KiB after fstrim"
[ "$k1" -ge 24576 ] && res ok trim-grew || res not trim-grew "upper ${k1} KiB"
[ $((k1 - k2)) -ge 24576 ] && res ok trim-shrank || res not trim-shrank "upper ${k1} -> ${k2} KiB"

# ---- everyone finishes ----
for g in g1 g2; do
  if wait_for 240 'grep -q GUEST-DONE "$(log $g)"'; then res ok $g-done; else res not $g-done "no GUEST-DONE"; fi
done
if wait_for 240 'has g3 ro-waiting'; then res ok g3-done; else res not g3-done "no ro-waiting"; fi
xl destroy g3
if wait_for 30 '! xenstore-read $B/ociblk/$id3/51712/state >/dev/null 2>&1 && [ -z "$(xenstore-list $B/ociblk/$id3 2>/dev/null)" ]'; then
  res ok destroy-running
else res not destroy-running "$(xenstore-ls -f $B/ociblk/$id3 2>&1 | head -3 | tr '\n' ' ')"; fi
phase "g1-g3 done"
wait_for 240 'has g4 reboot-done'
phase "g4 done"
wait_for 300 'grep -q GUEST-DONE "$(log g5)"'
phase "g5 done"
for g in g1 g2 g3 g4 g5; do grep -a MARK "$(log $g)" | sed "s/^/$g: /"; done
g1=$(log g1) g2=$(log g2) g3=$(log g3) g4=$(log g4) g5=$(log g5)

check g1-layers "$(grep 'MARK read' $g1 | tr '\n' ' ')" \
  sh -c "grep -q 'MARK read /mnt/etc/layer1 layer1' $g1 && grep -q 'MARK read /mnt/etc/layer2 layer2' $g1 && grep -q 'MARK read /mnt/etc/layer3 layer3' $g1"
check g1-write "" has g1 write-ok
check g2-write "" has g2 write-ok
check g1-geometry "$(grep "ociblk/$id1/51712: connected" /tmp/backend.log)" \
  grep -q "ociblk/$id1/51712: connected 1 queue(s), ring order 0, x86_64-abi, copied grants" /tmp/backend.log
check g2-geometry "$(grep "ocimap/$id2/51712: connected" /tmp/backend-map.log | head -1)" \
  grep -q "ocimap/$id2/51712: connected 2 queue(s), ring order 2, x86_64-abi, mapped grants, persistent" /tmp/backend-map.log
check g3-ro-flag "" has g3 ro-flag-ok
check g3-ro-read "" has g3 ro-read-ok
check g3-ro-write "" has g3 ro-write-refused
check rounds-ok "$(grep -h 'MARK round.*FAIL' $g1 $g2 | head -2)" \
  sh -c "grep -q 'MARK rounds-done' $g1 && grep -q 'MARK rounds-done' $g2 && ! grep -q 'MARK round.*FAIL' $g1 $g2"
check direct-io "" sh -c "grep -q 'MARK direct-io ok' $g1 && grep -q 'MARK direct-io ok' $g2"

# ---- what each backend counted (the device's statistics line when the guest went away) ----
d1=ociblk/$id1/51712 d2=ocimap/$id2/51712 d3=ociblk/$id3/51712 d5=ociblk/$id5/51728
wait_for 30 'grep -q "$d1: disconnected; statistics" /tmp/backend.log'
wait_for 30 'grep -q "$d2: disconnected; statistics" /tmp/backend-map.log'
grep "disconnected; statistics" /tmp/backend.log /tmp/backend-map.log
s() { stat_of /tmp/backend.log "$1" "$2"; }
sm() { stat_of /tmp/backend-map.log "$1" "$2"; }
[ "$(s $d1 ds_req)" -gt 0 ] 2>/dev/null && [ "$(s $d1 ds_sect)" -ge 49152 ] && res ok g1-stats-discard || res not g1-stats-discard "ds_req=$(s $d1 ds_req) ds_sect=$(s $d1 ds_sect)"
[ "$(s $d1 indirect_req)" -gt 0 ] 2>/dev/null && res ok g1-stats-indirect || res not g1-stats-indirect "indirect_req=$(s $d1 indirect_req)"
[ "$(s $d1 f_req)" -gt 0 ] 2>/dev/null && res ok g1-stats-flush || res not g1-stats-flush "f_req=$(s $d1 f_req)"
[ "$(s $d1 gnt_copy_segs)" -gt 0 ] 2>/dev/null && [ "$(s $d1 err_req)" = 0 ] && [ "$(s $d1 pgnt_mapped)" = 0 ] \
  && res ok g1-stats-copy || res not g1-stats-copy "gnt_copy_segs=$(s $d1 gnt_copy_segs) err_req=$(s $d1 err_req)"
[ "$(sm $d2 pgnt_mapped)" -gt 0 ] 2>/dev/null && [ "$(sm $d2 pgnt_reused)" -gt "$(sm $d2 pgnt_mapped)" ] && [ "$(sm $d2 gnt_copy_segs)" = 0 ] \
  && res ok g2-stats-persistent || res not g2-stats-persistent "pgnt_mapped=$(sm $d2 pgnt_mapped) pgnt_reused=$(sm $d2 pgnt_reused)"
[ "$(sm $d2 indirect_req)" -gt 0 ] 2>/dev/null && [ "$(sm $d2 f_req)" -gt 0 ] && [ "$(sm $d2 err_req)" = 0 ] \
  && res ok g2-stats-indirect || res not g2-stats-indirect "indirect_req=$(sm $d2 indirect_req) f_req=$(sm $d2 f_req) err_req=$(sm $d2 err_req)"
wait_for 30 'grep -q "$d3: disconnected; statistics" /tmp/backend.log'
[ "$(s $d3 rd_req)" -gt 0 ] 2>/dev/null && [ "$(s $d3 wr_req)" = 0 ] && res ok g3-stats || res not g3-stats "rd_req=$(s $d3 rd_req) wr_req=$(s $d3 wr_req)"

# ---- g4: xl disk line and reboot ----
g4second=$(grep -a 'MARK role=reboot' $g4 | tail -1 | sed 's/.*domid=//' | tr -d '\r ')
phase "g4 domains: first $g4first, second $g4second"
check g4-xl-disk "$(grep "vbd/$g4first/51712" /tmp/backend.log | head -2 | tr '\n' ' ')" \
  sh -c "grep -q 'MARK reboot-first-boot' $g4 && grep -q 'vbd/$g4first/51712: connected' /tmp/backend.log"
check g4-reboot "$(grep -a 'MARK' $g4 | tail -3 | tr '\n' ' ')" grep -q "MARK reboot-second-boot first" $g4
check g4-reconnect "$(grep 'vbd/' /tmp/backend.log | tr '\n' ' ')" \
  sh -c "[ -n '$g4second' ] && [ '$g4second' != '$g4first' ] && grep -q 'vbd/$g4second/51712: connected' /tmp/backend.log"

# ---- g5: fio ----
fiook=1
for j in first-write-qd1 first-write-qd first-write-flush rewrite write-flush; do
  grep -q "MARK fio $j rc=0 err=0 verify=1" $g5 || fiook=0
done
[ $fiook = 1 ] && res ok g5-fio-write || res not g5-fio-write "$(grep -a 'MARK fio' $g5 | tr '\n' ' ')"
check g5-fio-read "$(grep -a 'MARK fio randread' $g5)" grep -q "MARK fio randread-base rc=0 err=0" $g5
wait_for 30 'grep -q "$d5: disconnected; statistics" /tmp/backend.log'
[ "$(s $d5 rd_req)" -gt 0 ] 2>/dev/null && [ "$(s $d5 wr_req)" -gt 0 ] && [ "$(s $d5 f_req)" -gt 0 ] && [ "$(s $d5 err_req)" = 0 ] \
  && res ok g5-stats || res not g5-stats "$(grep "$d5: disconnected" /tmp/backend.log)"

errs=$(grep -h -a -E "flush op failed|I/O error|blk_update_request|buffer I/O" $g1 $g2 $g3 $g4 $g5 | head -2)
[ -z "$errs" ] && res ok no-flush-fail || res not no-flush-fail "$errs"
bigsum=$(mark g1 bigsum-after)

# ---- lifecycle: destroyed guests leave no backend state behind ----
phase "destroying"
for g in g1 g2 g3 g4 g5; do xl destroy $g >/dev/null 2>&1; done
left() { for t in ociblk ocimap vbd; do xenstore-list $B/$t 2>/dev/null | sed "s|^|$t/|"; done; }
wait_for 30 '[ -z "$(left)" ]'
[ -z "$(left)" ] && res ok destroy-clean || res not destroy-clean "$(left | tr '\n' ' ')"
kill $be $bemap; wait $be $bemap
tail -3 /tmp/backend.log

phase "exports"
# ---- what reached the store: exactly the guests' changes, image and other container untouched ----
for c in c1 c2 c4 base; do ociblk export $c /tmp/$c.raw >/dev/null; done
[ "$(debugfs -R 'cat /guest-rw.txt' /tmp/c1.raw 2>/dev/null)" = "written by rw guest" ] && res ok c1-newfile || res not c1-newfile
[ "$(debugfs -R 'cat /data/big' /tmp/c1.raw 2>/dev/null | md5sum | cut -d' ' -f1)" = "$bigsum" ] && res ok c1-bigfile || res not c1-bigfile
debugfs -R 'stat /guest-rw.txt' /tmp/c2.raw 2>&1 | grep -q 'not found' && res ok c2-isolated || res not c2-isolated
[ "$(sha256sum < /tmp/base.raw | cut -d' ' -f1)" = "$(cat /payload/base.sha256)" ] && res ok image-unchanged || res not image-unchanged
grep -a -q OCIBLKTRIMPATTERN /tmp/c1.raw && res not trim-zero "the pattern is still in c1" || res ok trim-zero
basebig=$(debugfs -R 'cat /data/big' /tmp/base.raw 2>/dev/null | md5sum | cut -d' ' -f1)
[ "$(mark g1 bigsum)" = "$basebig" ] && res ok g1-bigsum || res not g1-bigsum "$(mark g1 bigsum) vs $basebig"
[ "$(mark g3 robig)" = "$basebig" ] && res ok g3-bigsum || res not g3-bigsum "$(mark g3 robig) vs $basebig"
[ "$(mark g3 dev32m)" = "$(dd if=/tmp/base.raw bs=1M count=32 2>/dev/null | md5sum | cut -d' ' -f1)" ] && res ok g3-direct || res not g3-direct
[ "$(debugfs -R 'cat /boot1' /tmp/c4.raw 2>/dev/null)" = first ] && [ "$(debugfs -R 'cat /boot2' /tmp/c4.raw 2>/dev/null)" = second ] \
  && res ok c4-reboot-files || res not c4-reboot-files
fsck=""
for c in c1 c2 c4; do e2fsck -fn /tmp/$c.raw >/dev/null 2>&1 || fsck="$fsck $c"; done
[ -z "$fsck" ] && res ok fsck || res not fsck "not clean:$fsck"
