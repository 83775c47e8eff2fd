#!/usr/bin/env bash
# Install the Debian packages Rivet's build, tests and demo use, when any is missing.
set -euo pipefail
pkgs=(libblkid-dev libclang-dev file curl python3-venv gdisk dosfstools mtools e2fsprogs genisoimage util-linux
      qemu-utils zstd xz-utils gzip fdisk iproute2
      qemu-system-x86 ovmf busybox-static cpio kmod grub-efi-amd64-bin grub-pc-bin grub2-common
      fio stress-ng dnsmasq-base gfs2-utils mariadb-server)
# Twice at most: installing Debian's qemu-system-x86 removes a newer qemu-utils from
# backports, which the second pass puts back at the matching version.
updated=
for _ in 1 2; do
  need=()
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
  ((${#need[@]})) || break
  echo "installing: ${need[*]}"
  [[ -n "$updated" ]] || { apt-get update -qq; updated=1; }
  # mariadb-server is for the multi-conductor Ironic, which starts its own server on its own
  # data directory: the package's service is not started (policy-rc.d says no while installing).
  guard=
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && guard=1
  fi
  rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || rc=$?
  [[ -n "$guard" ]] && rm -f /usr/sbin/policy-rc.d
  ((rc == 0)) || exit "$rc"
done
