#!/usr/bin/env bash
# A tiny bootable whole-disk test image (we cannot download Cirros here): GPT with an EFI
# system partition holding a standalone GRUB as the firmware's fallback loader
# (\EFI\BOOT\BOOTX64.EFI), Debian's kernel and a one-file initramfs whose /init prints
# RIVET-BOOT-MARKER on the serial console and powers off; plus a 1 MiB BIOS boot partition.
# usage: make-boot-image.sh OUT.raw KERNEL     (needs grub-efi-amd64-bin, busybox-static, mtools)
set -euo pipefail
out=$1 kernel=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$(dirname "$0")/make-marker-initrd.sh" "$tmp/marker.img"
# GRUB with its configuration built in: find the ESP by a file on it, boot the kernel.
cat > "$tmp/grub.cfg" <<'CFG'
set timeout=0
serial --unit=0 --speed=115200
terminal_output serial console
echo "RIVET-GRUB: loading the test kernel"
search --no-floppy --file --set=root /rivet-test-kernel
linux /rivet-test-kernel console=ttyS0 quiet panic=-1
initrd /rivet-test-initrd
boot
CFG
grub-mkstandalone -O x86_64-efi -o "$tmp/BOOTX64.EFI" \
  --modules="part_gpt fat search search_fs_file linux serial echo normal terminal" \
  "boot/grub/grub.cfg=$tmp/grub.cfg"
rm -f "$out"; truncate -s 48M "$out"
sgdisk -o -n 1:2048:+40M -t 1:ef00 -c 1:ESP -n 2:0:+1M -t 2:ef02 -c 2:bios -n 3:0:0 -c 3:root "$out" >/dev/null
mkfs.fat -F 16 --offset 2048 -n ESP "$out" $((40 * 1024)) >/dev/null 2>&1
esp="$out@@1048576"
mmd -i "$esp" ::/EFI ::/EFI/BOOT
mcopy -i "$esp" "$tmp/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$esp" "$kernel" ::/rivet-test-kernel
mcopy -i "$esp" "$tmp/marker.img" ::/rivet-test-initrd
