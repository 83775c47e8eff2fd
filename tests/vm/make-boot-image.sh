#!/usr/bin/env bash
# A tiny bootable whole-disk test image (we cannot download Cirros here): GPT with an EFI
# system partition holding a standalone GRUB as the firmware's fallback loader
# (\EFI\BOOT\BOOTX64.EFI), Debian's kernel and a one-file initramfs whose /init prints
# RIVET-BOOT-MARKER on the serial console and powers off. It boots with BIOS too: GRUB's
# boot.img in the MBR and a standalone i386-pc core image in the 1 MiB BIOS boot partition
# (placed and patched here as grub-bios-setup would, without touching any device). The kernel
# command line says which way it booted (rivet.flow=uefi|bios).
# usage: make-boot-image.sh OUT.raw KERNEL
#        (needs grub-efi-amd64-bin, grub-pc-bin, busybox-static, mtools, gdisk)
# ARCH=aarch64: an arm64 image, UEFI only (\EFI\BOOT\BOOTAA64.EFI, GRUB's arm64-efi from
# Debian's arm64 package, downloaded and unpacked), KERNEL an arm64 one, the marker on ttyAMA0.
set -euo pipefail
out=$1 kernel=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# esp_fill MIB LOADER: a FAT ESP of MIB MiB from sector 2048 of $out holding $tmp/LOADER as
# the firmware's fallback loader, the kernel and the marker initramfs.
esp_fill() {
  mkfs.fat -F 16 --offset 2048 -n ESP "$out" $(($1 * 1024)) >/dev/null 2>&1
  local esp="$out@@1048576"
  mmd -i "$esp" ::/EFI ::/EFI/BOOT
  mcopy -i "$esp" "$tmp/$2" "::/EFI/BOOT/$2"
  mcopy -i "$esp" "$kernel" ::/rivet-test-kernel
  mcopy -i "$esp" "$tmp/marker.img" ::/rivet-test-initrd
}
if [[ "${ARCH:-x86_64}" == aarch64 ]]; then
  cache=$HOME/.cache/rivet-ramdisk-arm64/grub
  if [[ ! -f "$cache/.done" ]]; then
    rm -rf "$cache" "$cache-debs" && mkdir -p "$cache-debs"
    (cd "$cache-debs" && apt-get download -qq grub-efi-arm64-bin:arm64 busybox-static:arm64 2>/dev/null)
    for d in "$cache-debs"/*.deb; do dpkg -x "$d" "$cache"; done
    touch "$cache/.done"
  fi
  BUSYBOX=$cache/bin/busybox TTY=ttyAMA0 "$(dirname "$0")/make-marker-initrd.sh" "$tmp/marker.img"
  cat > "$tmp/grub.cfg" <<'CFG'
set timeout=0
echo "RIVET-GRUB: loading the test kernel"
search --no-floppy --file --set=root /rivet-test-kernel
linux /rivet-test-kernel console=ttyAMA0 quiet panic=-1 rivet.flow=uefi-arm64
initrd /rivet-test-initrd
boot
CFG
  grub-mkstandalone -O arm64-efi -d "$cache/usr/lib/grub/arm64-efi" -o "$tmp/BOOTAA64.EFI" \
    --modules="part_gpt fat search search_fs_file linux echo normal" "boot/grub/grub.cfg=$tmp/grub.cfg"
  rm -f "$out"; truncate -s 80M "$out"
  sgdisk -o -n 1:2048:+72M -t 1:ef00 -c 1:ESP -n 2:0:0 -c 2:root "$out" >/dev/null
  esp_fill 72 BOOTAA64.EFI
  exit 0
fi
"$(dirname "$0")/make-marker-initrd.sh" "$tmp/marker.img"
# GRUB with its configuration built in: find the ESP by a file on it, boot the kernel.
cat > "$tmp/grub.cfg" <<'CFG'
set timeout=0
serial --unit=0 --speed=115200
terminal_output serial console
echo "RIVET-GRUB: loading the test kernel"
search --no-floppy --file --set=root /rivet-test-kernel
linux /rivet-test-kernel console=ttyS0 quiet panic=-1 rivet.flow=$rivet_flow
initrd /rivet-test-initrd
boot
CFG
sed 's/\$rivet_flow/bios/' "$tmp/grub.cfg" > "$tmp/grub-bios.cfg"
sed -i 's/\$rivet_flow/uefi/' "$tmp/grub.cfg"
grub-mkstandalone -O x86_64-efi -o "$tmp/BOOTX64.EFI" \
  --modules="part_gpt fat search search_fs_file linux serial echo normal terminal" \
  "boot/grub/grub.cfg=$tmp/grub.cfg"
rm -f "$out"; truncate -s 48M "$out"
sgdisk -o -n 1:2048:+40M -t 1:ef00 -c 1:ESP -n 2:0:+1M -t 2:ef02 -c 2:bios -n 3:0:0 -c 3:root "$out" >/dev/null
esp_fill 40 BOOTX64.EFI
# BIOS: a standalone core image (its menu inside, few modules so it fits the 1 MiB partition).
mods="biosdisk part_gpt fat search search_fs_file linux serial echo normal terminal"
grub-mkstandalone -O i386-pc -o "$tmp/core.img" --install-modules="$mods configfile test" \
  --modules="$mods" --locales= --fonts= --themes= "boot/grub/grub.cfg=$tmp/grub-bios.cfg"
bios_lba=$(sgdisk -i 2 "$out" | awk '/First sector/ {print $3}')
python3 - "$out" "$tmp/core.img" /usr/lib/grub/i386-pc/boot.img "$bios_lba" <<'PY'
import struct, sys
out, core_p, boot_p, lba = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
core = bytearray(open(core_p, "rb").read())
boot = bytearray(open(boot_p, "rb").read())
assert len(core) <= 1 << 20, "core image larger than the BIOS boot partition"
# boot.img loads the first sector of core (diskboot) from the LBA at 0x5c; diskboot's block
# list (0x1f4: start LBA, then sector count) loads the rest.
struct.pack_into("<Q", boot, 0x5C, lba)
struct.pack_into("<Q", core, 0x1F4, lba + 1)
struct.pack_into("<H", core, 0x1FC, (len(core) + 511) // 512 - 1)
with open(out, "r+b") as f:
    mbr = bytearray(f.read(512))
    mbr[:440] = boot[:440]  # keep the disk signature and the protective MBR's table
    f.seek(0)
    f.write(mbr)
    f.seek(lba * 512)
    f.write(core)
PY
