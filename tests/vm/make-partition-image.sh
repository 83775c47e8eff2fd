#!/usr/bin/env bash
# A tiny partition image (a root file system, no partition table) that only boots if the agent
# installs GRUB from it: it carries grub-install (with its libraries and x86_64-efi modules),
# a kernel, the marker initramfs and a GRUB menu, but no boot loader anywhere. Its GRUB has the
# x86_64-efi and i386-pc modules: the same image boots UEFI and BIOS nodes. Ext4 with 4 KiB
# blocks, so it also mounts on 4Kn disks.
# usage: make-partition-image.sh OUT.raw KERNEL UUID
#        (needs grub2-common, grub-efi-amd64-bin, grub-pc-bin)
# ARCH=aarch64: an arm64 image (KERNEL an arm64 one): Debian's arm64 grub-install with its
# libraries and the arm64-efi modules, from their packages (downloaded and unpacked).
set -euo pipefail
out=$1 kernel=$2 uuid=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
r=$tmp/root
mkdir -p "$r"/{boot/grub,boot/efi,dev,proc,sys,tmp,etc,usr/sbin,usr/lib/grub,bin}
if [[ "${ARCH:-x86_64}" == aarch64 ]]; then
  tree=$HOME/.cache/rivet-ramdisk-arm64/grub-install
  if [[ ! -f "$tree/.done" ]]; then
    rm -rf "$tree" "$tree-debs" && mkdir -p "$tree-debs"
    (cd "$tree-debs" && apt-get download -qq grub2-common:arm64 grub-efi-arm64-bin:arm64 busybox-static:arm64 \
      libc6:arm64 liblzma5:arm64 libdevmapper1.02.1:arm64 libefivar1:arm64 libefiboot1:arm64 libselinux1:arm64 \
      libudev1:arm64 libpcre2-8-0:arm64 libcap2:arm64 2>/dev/null)
    for d in "$tree-debs"/*.deb; do dpkg -x "$d" "$tree"; done
    touch "$tree/.done"
  fi
  CROSS_ROOT=$tree "$(dirname "$0")/../../scripts/ramdisk/copy-with-libs.sh" "$r" "$tree/usr/sbin/grub-install" /usr/sbin/grub-install
  cp -a "$tree/usr/lib/grub/arm64-efi" "$r/usr/lib/grub/"
  BUSYBOX=$tree/bin/busybox TTY=ttyAMA0 "$(dirname "$0")/image-root.sh" "$r" "$kernel" "the partition image" partition-grub-arm64
else
  # With its shared libraries and loader, at the same paths.
  "$(dirname "$0")/../../scripts/ramdisk/copy-with-libs.sh" "$r" /usr/sbin/grub-install /usr/sbin/grub-install
  cp -a /usr/lib/grub/x86_64-efi /usr/lib/grub/i386-pc "$r/usr/lib/grub/"
  "$(dirname "$0")/image-root.sh" "$r" "$kernel" "the partition image" partition-grub
fi
size=$(( $(du -sm "$r" | cut -f1) + 24 ))
rm -f "$out"
mkfs.ext4 -q -F -b 4096 -U "$uuid" -L root -d "$r" "$out" "${size}M"
