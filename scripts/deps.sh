#!/usr/bin/env bash
# Install the Debian packages Rivet's build, tests and demo use, when any is missing.
set -euo pipefail
pkgs=(libblkid-dev libclang-dev file curl python3-venv gdisk dosfstools mtools e2fsprogs genisoimage util-linux
      qemu-utils zstd xz-utils gzip fdisk)
need=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
