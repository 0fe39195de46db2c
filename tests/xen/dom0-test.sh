# Runs in dom0: the ociblk backend serves containers of /store to PV guests; checks the results.
# Every result line starts with RESULT so the host harness can turn it into TAP.
export OCIBLK_ROOT=/store
res() { echo "RESULT $*"; }
guest_cfg() { # guest_cfg NAME ROLE [VCPUS [KERNEL_ARGS]]
  cat > /tmp/$1.cfg <<CFG
name="$1"
type="pv"
kernel="/guest/vmlinux"
ramdisk="/guest/initrd.cpio"
extra="console=hvc0 quiet ociblk_role=$2 ${4:-}"
memory=192
vcpus=${3:-1}
on_poweroff="destroy"
CFG
}
wait_log() { # wait_log NAME PATTERN SECONDS
  for i in $(seq 1 "$3"); do
    grep -q "$2" /var/log/xen/console/guest-$1.log 2>/dev/null && return 0
    sleep 1
  done
  return 1
}
start_guest() { # start_guest NAME ROLE DISK [--ro] [VCPUS [KERNEL_ARGS]]
  guest_cfg "$1" "$2" "${5:-}" "${6:-}"
  xl create -p /tmp/$1.cfg >/dev/null 2>&1 || { res "not ok create $1"; return 1; }
  local id; id=$(xl domid "$1")
  ociblk xen-attach "$id" xvda "$3" $4 || { res "not ok attach $1"; return 1; }
  for i in $(seq 1 100); do
    [ "$(xenstore-read /local/domain/0/backend/ociblk/$id/51712/state 2>/dev/null)" = 2 ] && break
    sleep 0.1
  done
  xl unpause "$1"
}

OCIBLK_LOG=info ociblk xen-backend > /tmp/backend.log 2>&1 &
backend=$!
sleep 1
start_guest g1 rw c1
# g2: two vCPUs, two queues, a 4-page ring per queue.
start_guest g2 rw2 c2 "" 2 "xen_blkfront.max_queues=2 xen_blkfront.max_ring_page_order=2"
start_guest g3 ro base --ro
for g in g1 g2 g3; do
  if wait_log $g GUEST-DONE 240; then res "ok $g finished"; else res "not ok $g finished"; fi
done
for g in g1 g2 g3; do grep MARK /var/log/xen/console/guest-$g.log | sed "s/^/$g: /"; done
g1=/var/log/xen/console/guest-g1.log g2=/var/log/xen/console/guest-g2.log g3=/var/log/xen/console/guest-g3.log
for l in 1 2 3; do grep -q "MARK read /mnt/etc/layer$l layer$l" $g1 && res "ok g1 reads layer$l" || res "not ok g1 reads layer$l"; done
grep -q "MARK write-ok" $g1 && res "ok g1 wrote and unmounted" || res "not ok g1 wrote and unmounted"
grep -q "MARK write-ok" $g2 && res "ok g2 (second container, same image, concurrently) wrote" || res "not ok g2 wrote"
grep -q "MARK ro-flag-ok" $g3 && res "ok g3 sees a read-only disk" || res "not ok g3 sees a read-only disk"
grep -q "MARK ro-read-ok" $g3 && res "ok g3 reads the read-only image" || res "not ok g3 reads the read-only image"
grep -q "MARK ro-write-refused" $g3 && res "ok g3 write refused" || res "not ok g3 write refused"
grep -q "ociblk/2/51712: connected 2 queue(s), ring order 2" /tmp/backend.log && res "ok g2 connected with 2 queues and a 4-page ring" || res "not ok g2 connected with 2 queues and a 4-page ring ($(grep 'ociblk/2/51712: connected' /tmp/backend.log))"
grep -q "ociblk/1/51712: connected 1 queue(s), ring order 0" /tmp/backend.log && res "ok g1 connected with 1 queue and a 1-page ring" || res "not ok g1 connected with 1 queue and a 1-page ring"
bigsum=$(sed -n 's/.*MARK bigsum-after //p' $g1 | tr -d '\r ')

# Lifecycle: destroyed guests leave no backend state behind.
for g in g1 g2 g3; do xl destroy $g >/dev/null 2>&1; done
for i in $(seq 1 100); do
  [ -z "$(xenstore-list /local/domain/0/backend/ociblk 2>/dev/null)" ] && break
  sleep 0.1
done
[ -z "$(xenstore-list /local/domain/0/backend/ociblk 2>/dev/null)" ] && res "ok backend state removed after destroy" || res "not ok backend state removed after destroy ($(xenstore-list /local/domain/0/backend/ociblk 2>&1 | tr '\n' ' '))"
kill $backend; wait $backend
tail -5 /tmp/backend.log

# What reached the store: exactly the guest's changes, image and other container untouched.
ociblk export c1 /tmp/c1.raw && ociblk export base /tmp/base.raw && ociblk export c2 /tmp/c2.raw
[ "$(debugfs -R 'cat /guest-rw.txt' /tmp/c1.raw 2>/dev/null)" = "written by rw guest" ] && res "ok c1 holds the guest's new file" || res "not ok c1 holds the guest's new file"
[ "$(debugfs -R 'cat /data/big' /tmp/c1.raw 2>/dev/null | md5sum | cut -d' ' -f1)" = "$bigsum" ] && res "ok c1 holds the overwritten large file" || res "not ok c1 holds the overwritten large file"
debugfs -R 'stat /guest-rw.txt' /tmp/c2.raw 2>&1 | grep -q 'not found' && res "ok c2 does not see c1's file" || res "not ok c2 does not see c1's file"
[ "$(sha256sum < /tmp/base.raw | cut -d' ' -f1)" = "$(cat /payload/base.sha256)" ] && res "ok image unchanged" || res "not ok image unchanged"
basebig=$(debugfs -R 'cat /data/big' /tmp/base.raw 2>/dev/null | md5sum | cut -d' ' -f1)
mk() { sed -n "s/.*MARK $2 //p" "$1" | tr -d '\r '; }
[ "$(mk $g1 bigsum)" = "$basebig" ] && res "ok g1 read the 16 MiB lower-layer file intact" || res "not ok g1 read the 16 MiB lower-layer file intact ($(mk $g1 bigsum) vs $basebig)"
[ "$(mk $g3 robig)" = "$basebig" ] && res "ok g3 read the 16 MiB file intact" || res "not ok g3 read the 16 MiB file intact"
[ "$(mk $g3 dev32m)" = "$(dd if=/tmp/base.raw bs=1M count=32 2>/dev/null | md5sum | cut -d' ' -f1)" ] && res "ok g3 O_DIRECT 1 MiB reads of the raw disk match the image" || res "not ok g3 O_DIRECT raw reads match the image"
! grep -q "flush op failed" $g1 $g2 $g3 && res "ok no guest saw a failed flush" || res "not ok a guest saw a failed flush: $(grep -h 'flush op failed' $g1 $g2 $g3 | head -1)"
e2fsck -fn /tmp/c1.raw >/dev/null 2>&1 && res "ok e2fsck clean on c1" || res "not ok e2fsck clean on c1"
