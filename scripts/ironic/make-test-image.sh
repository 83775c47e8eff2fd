#!/usr/bin/env bash
# Build a small whole-disk test image: GPT, a FAT EFI system partition holding the firmware's
# fallback loader path \EFI\BOOT\BOOTX64.EFI (a stand-in file, not a real loader), and a data
# partition filled with a recognisable pattern. No mount, no root needed.
# usage: make-test-image.sh OUT.raw [SIZE_MIB]
set -euo pipefail
out=$1; mib=${2:-48}
rm -f "$out"; truncate -s "${mib}M" "$out"
sgdisk -o -n 1:2048:+32M -t 1:ef00 -c 1:EFI -n 2:0:0 -c 2:root "$out" >/dev/null
mkfs.fat -F 16 --offset 2048 -n EFI "$out" 32768 >/dev/null 2>&1
tmp=$(mktemp -d)
printf 'MZ rivet test loader\n' > "$tmp/BOOTX64.EFI"
mmd -i "$out@@1048576" ::/EFI ::/EFI/BOOT
mcopy -i "$out@@1048576" "$tmp/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
# Data partition: a pattern, so a wrong or partial write cannot compare equal.
start=$(( (2048 + 32 * 2048) * 512 ))
python3 - "$out" "$start" <<'PY'
import sys
path, start = sys.argv[1], int(sys.argv[2])
with open(path, "r+b") as f:
    f.seek(0, 2); end = f.tell() - 1024 * 1024
    f.seek(start)
    block = bytes((i * 7 + 3) % 251 for i in range(65536))
    while f.tell() + len(block) <= end:
        f.write(block)
PY
rm -rf "$tmp"
