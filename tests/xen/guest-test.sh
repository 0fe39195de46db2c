# Runs inside each PV guest (its initramfs /test.sh).  The role comes from the kernel command line
# (ociblk_role=rw|rw2|ro|reboot|fio); every check prints a MARK line that the dom0 script collects.
# Control channel with dom0: this domain's xenstore directory data/ (the guest writes
# data/loops and data/phase, dom0 writes data/stop and data/trim-go).
role=$(sed -n 's/.*ociblk_role=\([a-z0-9]*\).*/\1/p' /proc/cmdline)
echo "MARK role=$role domid=$(xenstore-read domid 2>/dev/null)"
xs_get() { xenstore-read "data/$1" 2>/dev/null; }
# A write that did not take is retried (dom0 waits on these keys); one that never takes says so.
xs_put() {
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    xenstore-write "data/$1" "$2" 2>/dev/null && [ "$(xs_get "$1")" = "$2" ] && return 0
    sleep 1
  done
  echo "MARK xenstore-write data/$1=$2 failed"
}
wait_key() { # wait_key KEY: dom0 wrote data/KEY (at most 5 minutes)
  for i in $(seq 1 300); do [ -n "$(xs_get "$1")" ] && return 0; sleep 1; done
  echo "MARK FAIL timeout waiting for data/$1"; return 1
}
wait_disk() {
  for i in $(seq 1 100); do [ -b "/dev/$1" ] && break; sleep 0.2; done
  [ -b "/dev/$1" ] || { echo "MARK FAIL no /dev/$1"; exit 1; }
  echo "MARK disk $1 $(cat /sys/block/$1/size) sectors ro=$(cat /sys/block/$1/ro)"
}
md5() { md5sum < "$1" | cut -d' ' -f1; }

# Write, drop the page cache, read back: one round of I/O checked end to end.  Runs until dom0
# writes data/stop (dom0 kills a device process meanwhile and watches the rounds go on).
io_rounds() {
  i=0
  while [ -z "$(xs_get stop)" ] && [ $i -lt 1000 ]; do
    i=$((i + 1))
    dd if=/dev/urandom of=/mnt/round bs=64k count=4 conv=fsync 2>/dev/null
    a=$(md5 /mnt/round)
    echo 3 > /proc/sys/vm/drop_caches
    b=$(md5 /mnt/round)
    if [ -n "$a" ] && [ "$a" = "$b" ]; then echo "MARK round $i ok"; else echo "MARK round $i FAIL $a $b"; fi
    xs_put loops $i
    sleep 1
  done
  rm -f /mnt/round
  echo "MARK rounds-done $i"
}

# Large O_DIRECT I/O: 1 MiB requests, more segments than a direct request holds (indirect).
direct_io() {
  dd if=/dev/urandom of=/mnt/dio bs=1M count=4 2>/dev/null
  dd if=/mnt/dio of=/mnt/dio2 bs=1M iflag=direct oflag=direct 2>/dev/null && sync
  [ "$(md5 /mnt/dio)" = "$(md5 /mnt/dio2)" ] && echo "MARK direct-io ok" || echo "MARK direct-io FAIL"
  dd if=/dev/xvda of=/dev/null bs=1M count=8 iflag=direct 2>/dev/null
  rm -f /mnt/dio /mnt/dio2
}

# Discard: a 24 MiB file of a recognisable pattern reaches the disk, is deleted, and fstrim
# discards the free space; dom0 measures the container's upper in between (data/phase).
trim_test() {
  echo "MARK trim-start"
  yes OCIBLKTRIMPATTERN | head -c 25165824 > /mnt/trimme
  sync
  echo "MARK trim-file-written"
  xs_put phase trim-written
  wait_key trim-go
  rm /mnt/trimme
  sync
  echo "MARK fstrim $(fstrim -v /mnt 2>&1)"
  xs_put phase trimmed
}

case "$role" in
rw|rw2)
  wait_disk xvda
  mount -t ext4 /dev/xvda /mnt || { echo "MARK FAIL mount"; exit 1; }
  for f in /mnt/etc/layer1 /mnt/etc/layer2 /mnt/etc/layer3; do
    [ -f "$f" ] && echo "MARK read $f $(cat "$f")" || echo "MARK FAIL missing $f"
  done
  echo "MARK bigsum $(md5 /mnt/data/big)"
  echo "written by $role guest" > /mnt/guest-$role.txt
  # Overwrite 8 KiB in the middle of a large file that lives in a lower layer.
  dd if=/dev/zero bs=4096 count=2 seek=1000 conv=notrunc of=/mnt/data/big 2>/dev/null
  sync
  echo "MARK bigsum-after $(md5 /mnt/data/big)"
  umount /mnt && echo "MARK write-ok"
  mount -t ext4 /dev/xvda /mnt || { echo "MARK FAIL remount"; exit 1; }
  io_rounds
  direct_io
  [ "$role" = rw ] && trim_test
  umount /mnt && echo "MARK second-umount-ok"
  ;;
ro)
  wait_disk xvda
  [ "$(cat /sys/block/xvda/ro)" = 1 ] && echo "MARK ro-flag-ok"
  mount -t ext4 -o ro /dev/xvda /mnt && cat /mnt/etc/layer1 >/dev/null && echo "MARK ro-read-ok"
  echo "MARK robig $(md5 /mnt/data/big)"
  umount /mnt
  echo "MARK dev32m $(dd if=/dev/xvda bs=1M count=32 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
  if dd if=/dev/zero of=/dev/xvda bs=4096 count=1 oflag=direct 2>/dev/null; then
    echo "MARK FAIL ro disk accepted a write"
  else
    echo "MARK ro-write-refused"
  fi
  # Stay up: dom0 destroys this guest while it runs (the backend must clean up after it).
  echo "MARK ro-waiting"
  wait_key poweroff
  ;;
reboot)
  # Attached by an xl disk line; on_reboot="restart" brings the same disk back to a new domain.
  wait_disk xvda
  mount -t ext4 /dev/xvda /mnt || { echo "MARK FAIL mount"; exit 1; }
  if [ -f /mnt/boot1 ]; then
    echo "MARK reboot-second-boot $(cat /mnt/boot1) layer3=$(cat /mnt/etc/layer3)"
    echo second > /mnt/boot2
    umount /mnt && echo "MARK reboot-done"
  else
    echo first > /mnt/boot1
    umount /mnt && echo "MARK reboot-first-boot"
    reboot -f
    sleep 60
  fi
  ;;
fio)
  # The fio-jobs/ latency jobs against the second disk, every write job with verify.
  wait_disk xvdb
  export FIO_ENGINE=libaio FIO_TARGET="filename=/dev/xvdb" FIO_DIRECT=1 FIO_IODEPTH=8 \
    FIO_IOS=64 FIO_QD_IOS=128 FIO_FLUSH_IOS=32 FIO_RUNTIME=2
  for j in first-write-qd1 first-write-qd first-write-flush rewrite write-flush randread-base; do
    case $j in
    randread-base) cp /fio-jobs/$j.fio /tmp/$j.fio ;;
    *) sed 's/^\[global\]$/[global]\nverify=crc32c\nverify_fatal=1\ndo_verify=1/' /fio-jobs/$j.fio > /tmp/$j.fio ;;
    esac
    fio --output-format=normal /tmp/$j.fio > /tmp/$j.out 2>&1
    rc=$?
    errs=$(grep -o 'err= *[0-9]*' /tmp/$j.out | tr -d ' ' | sort -u | tr '\n' ' ')
    verify=$(grep -c '^verify=crc32c' /tmp/$j.fio)
    unit=$(grep -m1 -o 'clat percentiles ([a-z]*)' /tmp/$j.out | sed 's/.*(\(.*\))/\1/')
    p50=$(grep -m1 -A3 'clat percentiles' /tmp/$j.out | sed -n 's/.*50\.00th=\[ *\([0-9]*\)\].*/\1/p' | head -1)
    echo "MARK fio $j rc=$rc ${errs}verify=$verify (clat p50 $p50 $unit under TCG)"
    [ $rc = 0 ] || tail -20 /tmp/$j.out
  done
  ;;
esac
