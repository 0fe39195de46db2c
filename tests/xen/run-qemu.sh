#!/usr/bin/env bash
# Boots Xen + dom0 under QEMU (TCG) with a dom0 initramfs; prints the serial console to stdout.
# usage: run-qemu.sh WORK DOM0_CPIO TIMEOUT_SECONDS [DOM0_KERNEL_ARGS]
set -euo pipefail
work=$1 cpio=$2 limit=$3 kargs=${4:-}
exec timeout --foreground -k 5 "$limit" qemu-system-x86_64 \
  -accel tcg,thread=multi -cpu qemu64 -m 2048 -smp 2 -no-reboot -display none -vga none -net none \
  -serial stdio -monitor none \
  -kernel "$work/xen" \
  -append "console=com1 com1=115200,8n1 dom0_mem=768M,max:768M dom0_max_vcpus=2 bootscrub=false loglvl=all guest_loglvl=all" \
  -initrd "$work/vmlinux console=hvc0 earlyprintk=xen quiet $kargs,$cpio"
