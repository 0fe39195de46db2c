# Runs inside each PV guest (its initramfs /test.sh).  The role comes from the kernel command line
# (ociblk_role=rw|ro); every check prints a MARK line that the dom0 script collects.
role=$(sed -n 's/.*ociblk_role=\([a-z0-9]*\).*/\1/p' /proc/cmdline)
echo "MARK role=$role"
for i in $(seq 1 50); do [ -b /dev/xvda ] && break; sleep 0.2; done
[ -b /dev/xvda ] || { echo "MARK FAIL no /dev/xvda"; exit 1; }
echo "MARK disk $(cat /sys/block/xvda/size) sectors ro=$(cat /sys/block/xvda/ro)"
case "$role" in
rw|rw2)
  mount -t ext4 /dev/xvda /mnt || { echo "MARK FAIL mount"; exit 1; }
  for f in /mnt/etc/layer1 /mnt/etc/layer2 /mnt/etc/layer3; do
    [ -f "$f" ] && echo "MARK read $f $(cat "$f")" || echo "MARK FAIL missing $f"
  done
  echo "MARK bigsum $(md5sum < /mnt/data/big | cut -d' ' -f1)"
  echo "written by $role guest" > /mnt/guest-$role.txt
  # Overwrite 8 KiB in the middle of a large file that lives in a lower layer.
  dd if=/dev/zero bs=4096 count=2 seek=1000 conv=notrunc of=/mnt/data/big 2>/dev/null
  sync
  echo "MARK bigsum-after $(md5sum < /mnt/data/big | cut -d' ' -f1)"
  umount /mnt && echo "MARK write-ok"
  ;;
ro)
  [ "$(cat /sys/block/xvda/ro)" = 1 ] && echo "MARK ro-flag-ok"
  mount -t ext4 -o ro /dev/xvda /mnt && cat /mnt/etc/layer1 >/dev/null && echo "MARK ro-read-ok"
  echo "MARK robig $(md5sum < /mnt/data/big | cut -d' ' -f1)"
  umount /mnt
  echo "MARK dev32m $(dd if=/dev/xvda bs=1M count=32 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
  mount -t ext4 -o ro /dev/xvda /mnt
  umount /mnt
  if dd if=/dev/zero of=/dev/xvda bs=4096 count=1 oflag=direct 2>/dev/null; then
    echo "MARK FAIL ro disk accepted a write"
  else
    echo "MARK ro-write-refused"
  fi
  ;;
esac
