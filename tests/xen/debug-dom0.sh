# One-guest debug run for dom0 (see tests/xen/check-xen.sh for the real test): serves container c1
# of /store to one PV guest, then dumps xenstore, /proc/interrupts, the guest console and the
# backend log, destroys the guest and shows what is left under backend/ociblk.
# usage: mkinitrd.sh build/xen DOM0.cpio GUEST.cpio tests/xen/debug-dom0.sh tests/xen/guest-test.sh DIR_WITH_store
export OCIBLK_ROOT=/store OCIBLK_LOG=debug
ociblk images
ociblk ps
ociblk xen-backend > /tmp/backend.log 2>&1 &
sleep 1
cat > /tmp/g1.cfg <<CFG
name="g1"
type="pv"
kernel="/guest/vmlinux"
ramdisk="/guest/initrd.cpio"
extra="console=hvc0 ociblk_role=rw xenbus_probe_frontend.timeout=20"
memory=192
vcpus=1
on_poweroff="destroy"
CFG
xl create -p /tmp/g1.cfg
id=$(xl domid g1)
ociblk xen-attach $id xvda c1
sleep 3
xenstore-ls -f /local/domain/0/backend/ociblk
xl unpause g1
for i in $(seq 1 90); do grep -q "MARK write-ok\|MARK FAIL" /var/log/xen/console/guest-g1.log 2>/dev/null && break; sleep 1; done
sleep 2
echo "=== backend state"
xenstore-ls -f /local/domain/0/backend/ociblk
echo "=== interrupts"
grep -i evtchn /proc/interrupts | head -5
echo "=== guest log"
grep -a "MARK\|xvda\|blkfront\|error" /var/log/xen/console/guest-g1.log | tail -30
xl destroy g1 2>/dev/null
sleep 5
echo "=== after destroy"
xenstore-ls -f /local/domain/0/backend/ociblk 2>&1 | head -5
echo "=== backend log"
tail -40 /tmp/backend.log
echo "=== guest log tail"
tail -15 /var/log/xen/console/guest-g1.log
