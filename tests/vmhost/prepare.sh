#!/usr/bin/env bash
# Prepares the test VM: Debian's linux-image-amd64 kernel (downloaded and unpacked into the cache, never installed)
# and an initramfs of busybox-static, the modules kvm_amd, 9p, virtio and overlay need, and ./init.
# Prints the kernel's and the initramfs's paths, one per line. Both are kept in the cache between runs.
# Usage: prepare.sh [CACHE_DIR]   (default /var/cache/kvmobserve/vmhost)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${1:-/var/cache/kvmobserve/vmhost}
mkdir -p "$cache"
die() { echo "vmhost: $*" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is missing (apt-get install qemu-system-x86)"
busybox=/bin/busybox
[ -x "$busybox" ] && ! ldd "$busybox" >/dev/null 2>&1 || die "a static busybox is missing (apt-get install busybox-static)"

# The newest kernel package linux-image-amd64 points at, once known here; a cached one is used as long as it is
# the newest the package lists name (or when they cannot be read at all).
# VMHOST_SUITE picks it from another suite (bookworm-backports: the newer kernel).
meta=linux-image-amd64${VMHOST_SUITE:+/$VMHOST_SUITE}
pkg=$(apt-cache depends "$meta" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -1)
if [ -z "$pkg" ]; then
  pkg=$(ls -1 "$cache" | grep '^linux-image-' | sort -V | tail -1 || true)
  [ -n "$pkg" ] || { apt-get update -qq >&2 || true; pkg=$(apt-cache depends "$meta" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -1); }
  [ -n "$pkg" ] || die "cannot tell which kernel linux-image-amd64 is: apt-cache knows no linux-image-amd64 (run apt-get update)"
fi
kver=${pkg#linux-image-}
kdir=$cache/$pkg
if [ ! -f "$kdir/vmlinuz" ]; then
  tmp=$(mktemp -d "$cache/.download.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download "$pkg" >/dev/null 2>&1) || die "apt-get download $pkg failed"
  dpkg-deb -x "$tmp"/*.deb "$tmp/root"
  depmod -b "$tmp/root" "$kver"
  mkdir -p "$tmp/kernel/modules"
  cp "$tmp/root/boot/vmlinuz-$kver" "$tmp/kernel/vmlinuz"
  cp "$tmp/root/boot/config-$kver" "$tmp/kernel/config"
  # kvm-amd needs kvm, ccp and irqbypass; 9p its transport; the overlay makes the host's root writable in tmpfs.
  for m in kvm-amd 9p 9pnet_virtio virtio_pci overlay; do
    modprobe -d "$tmp/root" -S "$kver" --show-depends "$m"
  done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }' > "$tmp/order"
  # Newer kernels ship them xz- or zstd-compressed, which busybox's insmod cannot load: stored plain.
  while read -r ko; do
    name=$(basename "$ko"); name=${name%.xz}; name=${name%.zst}
    case $ko in *.xz) xz -dc "$ko";; *.zst) zstd -qdc "$ko";; *) cat "$ko";; esac > "$tmp/kernel/modules/$name"
    echo "$name"
  done < "$tmp/order" > "$tmp/kernel/modules/order"
  rm -rf "$kdir" && mv "$tmp/kernel" "$kdir"
fi

# The initramfs is rebuilt when init or busybox changes.
stamp=$(cat "$here/init" "$busybox" "$kdir/modules/order" | sha256sum | cut -c1-16)
initrd=$kdir/initrd-$stamp.gz
if [ ! -f "$initrd" ]; then
  tmp=$(mktemp -d "$cache/.initrd.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp"/{bin,modules,proc,sys,dev,host,share,upper,sysroot}
  cp "$busybox" "$tmp/bin/busybox"
  cp "$here/init" "$tmp/init"
  cp "$kdir"/modules/* "$tmp/modules/"
  (cd "$tmp" && find . | "$busybox" cpio -o -H newc 2>/dev/null | gzip -1 > "$initrd.part") && mv "$initrd.part" "$initrd"
  find "$kdir" -name 'initrd-*.gz' ! -name "$(basename "$initrd")" -delete
fi
echo "$kdir/vmlinuz"
echo "$initrd"
