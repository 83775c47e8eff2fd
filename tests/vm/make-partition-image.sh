#!/usr/bin/env bash
# A tiny partition image (a root file system, no partition table) that only boots if the agent
# installs GRUB from it: it carries grub-install (with its libraries and x86_64-efi modules),
# a kernel, the marker initramfs and a GRUB menu, but no boot loader anywhere. Its GRUB has the
# x86_64-efi and i386-pc modules: the same image boots UEFI and BIOS nodes. Ext4 with 4 KiB
# blocks, so it also mounts on 4Kn disks.
# usage: make-partition-image.sh OUT.raw KERNEL UUID
#        (needs grub2-common, grub-efi-amd64-bin, grub-pc-bin)
set -euo pipefail
out=$1 kernel=$2 uuid=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
r=$tmp/root
mkdir -p "$r"/{boot/grub,boot/efi,dev,proc,sys,tmp,etc,usr/sbin,usr/lib/grub,bin}
# With its shared libraries and loader, at the same paths.
"$(dirname "$0")/../../scripts/ramdisk/copy-with-libs.sh" "$r" /usr/sbin/grub-install /usr/sbin/grub-install
cp -a /usr/lib/grub/x86_64-efi /usr/lib/grub/i386-pc "$r/usr/lib/grub/"
"$(dirname "$0")/image-root.sh" "$r" "$kernel" "the partition image" partition-grub
size=$(( $(du -sm "$r" | cut -f1) + 24 ))
rm -f "$out"
mkfs.ext4 -q -F -b 4096 -U "$uuid" -L root -d "$r" "$out" "${size}M"
