#!/usr/bin/env bash
# A tiny whole-disk image for BIOS boot from software RAID: GPT with a BIOS boot partition and
# an ext4 root file system that carries grub-install (with its libraries and i386-pc modules),
# mdadm, a kernel, the marker initramfs and a GRUB menu, and no boot code anywhere. Written
# onto an md array, it boots only once the agent has run its grub-install onto every member.
# usage: make-raid-bios-image.sh OUT.raw KERNEL UUID   (needs grub2-common, grub-pc-bin, gdisk)
set -euo pipefail
out=$1 kernel=$2 uuid=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
r=$tmp/root
mkdir -p "$r"/{boot/grub,dev,proc,sys,tmp,etc,usr/sbin,usr/lib/grub,bin}
with_libs="$(dirname "$0")/../../scripts/ramdisk/copy-with-libs.sh"
"$with_libs" "$r" /usr/sbin/grub-install /usr/sbin/grub-install
cp -a /usr/lib/grub/i386-pc "$r/usr/lib/grub/"
# mdadm, as a distribution with software RAID has it: grub-install asks it for the array's
# UUID, by which GRUB finds the array at boot.
md=$HOME/.cache/rivet-ramdisk/mdadm/sbin/mdadm
if [[ ! -x "$md" ]]; then
  (cd "$tmp" && apt-get download -qq mdadm 2>/dev/null && dpkg -x mdadm_*.deb mdadm-deb)
  md=$tmp/mdadm-deb/sbin/mdadm
fi
"$with_libs" "$r" "$md" /sbin/mdadm
"$(dirname "$0")/image-root.sh" "$r" "$kernel" "the RAID image" raid-bios
mib=$(( $(du -sm "$r" | cut -f1) + 24 ))
mkfs.ext4 -q -F -b 4096 -U "$uuid" -L root -d "$r" "$tmp/root.ext4" "${mib}M"
rm -f "$out"; truncate -s $(( (mib + 3) << 20 )) "$out"
sgdisk -o -n 1:2048:+1M -t 1:ef02 -c 1:bios -n 2:4096:0 -c 2:root "$out" >/dev/null
dd if="$tmp/root.ext4" of="$out" bs=1M seek=2 conv=notrunc status=none
