#!/usr/bin/env bash
# Install the Debian packages Rivet's build, tests and demo use, when any is missing.
set -euo pipefail
pkgs=(libblkid-dev libclang-dev file curl python3-venv gdisk dosfstools mtools e2fsprogs genisoimage util-linux
      qemu-utils zstd xz-utils gzip fdisk iproute2
      qemu-system-x86 ovmf busybox-static cpio kmod grub-efi-amd64-bin grub-pc-bin grub2-common
      fio stress-ng dnsmasq-base gfs2-utils mariadb-server aria2 mktorrent nginx-light)
# mariadb-server is for the multi-conductor Ironic, which starts its own server on its own
# data directory (the package's service is not started: apt-install.sh). aria2, mktorrent and
# nginx-light: the peer-sharing tests' standard BitTorrent client, torrent maker, image server.
exec "$(dirname "$0")/apt-install.sh" "${pkgs[@]}"
