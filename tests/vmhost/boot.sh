#!/usr/bin/env bash
# Boots the test VM and stays in the foreground (QEMU) until it powers off. DIR gets: share/ (read-write 9p share,
# commands and their output), ctl.in / ctl.out (FIFOs to ttyS1: "run ID" in, "ID EXIT-CODE" out) and console.log.
# Usage: boot.sh DIR [npt=0|1] [CACHE_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=$1 npt=${2:-npt=1} cache=${3:-}
mapfile -t files < <("$here/prepare.sh" $cache)
mkdir -p "$dir/share"
rm -f "$dir/ctl.in" "$dir/ctl.out"
mkfifo "$dir/ctl.in" "$dir/ctl.out"
# QEMU goes when the process that booted it does, however that ends (exec keeps this shell's pid for QEMU).
if [ -n "${VMHOST_OWNER:-}" ]; then
  ( while kill -0 "$VMHOST_OWNER" 2>/dev/null && kill -0 $$ 2>/dev/null; do sleep 1; done; kill -9 $$ 2>/dev/null ) &
fi
# TCG emulates AMD SVM with nested paging (no VMX): kvm_amd loads, kvm_intel cannot. -cpu max has svm and npt.
exec qemu-system-x86_64 -accel tcg,thread=multi -machine q35 -cpu max -smp "${VMHOST_CPUS:-2}" -m "${VMHOST_MEM:-4G}" \
  -display none -monitor none -no-reboot -nic none \
  -kernel "${files[0]}" -initrd "${files[1]}" -append "console=ttyS0 quiet panic=-1 kvmobserve.${npt}" \
  -serial "file:$dir/console.log" -chardev "pipe,id=ctl,path=$dir/ctl" -serial chardev:ctl \
  -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap \
  -virtfs "local,path=$dir/share,mount_tag=share,security_model=none"
