#!/usr/bin/env bash
# fio's nbd engine against `ociblk serve` with verify=crc32c: random read/write at queue depth 32
# on one connection, then two jobs (two connections, multi-conn) on disjoint halves, then a
# verify-only pass in a fresh fio run (data written by the first runs read back through the
# server).  fio exits non-zero and prints "verify: bad" on any mismatch.
set -u
. "$(dirname "$0")/nbd-common.bash"
require fio
fio --enghelp=nbd >/dev/null 2>&1 && ok "fio has the nbd engine" || { notok "fio has the nbd engine"; finish; }
make_store || { echo "1..1"; echo "not ok 1 - make store"; exit 1; }
start_server || { echo "1..1"; echo "not ok 1 - server start"; exit 1; }
U=$(uri ctr)
common=(--ioengine=nbd --uri="$U" --bs=4k --verify=crc32c --verify_fatal=1 --do_verify=1 --randseed=${OCIBLK_SEED:-4242})
check "fio randrw, iodepth 32, verify crc32c" timeout 120 fio --name=randrw "${common[@]}" --rw=randrw --size=12M --iodepth=32
grep -q "verify: bad" "$T/out" && notok "no verify errors" || ok "no verify errors"
check "fio two connections on disjoint halves, verify" timeout 120 fio --name=mc "${common[@]}" --rw=randwrite --size=6M \
	--numjobs=2 --offset_increment=6M --iodepth=16 --verify_backlog=64
check "fio sequential 1 MiB writes with FUA-less fsync every 8 ios, verify" timeout 120 fio --name=seq "${common[@]}" \
	--rw=write --bs=1M --size=8M --offset=8M --iodepth=4 --fsync=8
check "fio verify-only pass in a new run reads the data back" timeout 120 fio --name=seq "${common[@]}" \
	--rw=write --bs=1M --size=8M --offset=8M --iodepth=4 --verify_only
check "fio trim workload" timeout 60 fio --name=trim --ioengine=nbd --uri="$U" --rw=randtrim --bs=64k --size=4M --iodepth=8
server_alive && ok "server still running" || notok "server still running"
stop_server TERM; rc=$?
[ "$rc" = 0 ] && ok "SIGTERM: exit 0" || notok "SIGTERM: exit $rc"
finish
