#!/usr/bin/env bash
# The test images' "operating system": a one-file initramfs (busybox + /init) that prints
# RIVET-BOOT-MARKER and its kernel command line on the serial console, then powers off.
# usage: make-marker-initrd.sh OUT.img   (env: BUSYBOX, another architecture's static busybox;
#        TTY, the serial console's device: ttyS0, ttyAMA0 on arm64)
set -euo pipefail
out=$1
TTY=${TTY:-ttyS0}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/rd/bin" "$tmp/rd/dev" "$tmp/rd/proc"
cp "${BUSYBOX:-/bin/busybox}" "$tmp/rd/bin/busybox"
cat > "$tmp/rd/init" <<INIT
#!/bin/busybox sh
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox mount -t proc proc /proc
echo "RIVET-BOOT-MARKER: booted from the deployed disk (\$(/bin/busybox cat /proc/cmdline))" > /dev/$TTY
/bin/busybox sync
/bin/busybox poweroff -f
INIT
chmod 755 "$tmp/rd/init"
(cd "$tmp/rd" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -6) > "$out"
