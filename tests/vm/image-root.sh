#!/usr/bin/env bash
# What every test image's root file system carries to boot to its marker: a kernel, the marker
# initramfs, an os-release and a GRUB menu (on the serial console) that names the flow.
# usage: image-root.sh ROOT KERNEL WHAT FLOW   (WHAT: the image, as GRUB's menu prints it;
#        env BUSYBOX and TTY as make-marker-initrd.sh's, for another architecture)
set -euo pipefail
r=$1 kernel=$2 what=$3 flow=$4
mkdir -p "$r/boot/grub" "$r/etc"
cp "$kernel" "$r/boot/vmlinuz"
"$(dirname "$0")/make-marker-initrd.sh" "$r/boot/initrd.img"
printf 'ID=rivettest\nNAME="Rivet test image"\n' > "$r/etc/os-release"
# TTY=ttyAMA0 (arm64): the kernel's console there; GRUB writes to the firmware's console.
tty=${TTY:-ttyS0} serial="serial --unit=0 --speed=115200
terminal_output serial console"
[[ "$tty" == ttyS* ]] || serial=""
cat > "$r/boot/grub/grub.cfg" <<CFG
set timeout=0
$serial
echo "RIVET-GRUB: $what's own menu"
linux /boot/vmlinuz console=$tty quiet panic=-1 rivet.flow=$flow
initrd /boot/initrd.img
boot
CFG
