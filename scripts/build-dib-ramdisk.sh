#!/usr/bin/env bash
# The distribution ramdisk: diskimage-builder (from PyPI, in a venv) with debian-minimal
# (bookworm) and our element dib-element/rivet → OUT_DIR/rivet.kernel + rivet.initramfs.
# usage: scripts/build-dib-ramdisk.sh [OUT_DIR]     (default target/dib; root, network to
#        deb.debian.org and PyPI). COMPRESS overrides the initramfs compressor ("zstd -19 -T0";
#        Debian's kernel unpacks zstd initramfs images, and smaller than gzip, faster too).
#        RIVET_STEPS_DIR: custom steps (NAME.toml + executables) to ship in /etc/rivet/steps.d.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mkdir -p "${1:-$ROOT/target/dib}" && cd "${1:-$ROOT/target/dib}" && pwd)
VENV=${DIB_VENV:-$HOME/.cache/rivet-dib/venv}
"$ROOT/scripts/apt-install.sh" zstd debootstrap squashfs-tools kpartx qemu-utils cpio gdisk dosfstools \
  e2fsprogs util-linux parted sudo git curl xz-utils lsb-release python3-venv
if [[ ! -x "$VENV/bin/disk-image-create" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q diskimage-builder
fi
BIN=${RIVET:-$ROOT/target/x86_64-unknown-linux-gnu/release/rivet}
[[ -x "$BIN" ]] || "$ROOT/scripts/build-static.sh" >/dev/null
export PATH="$VENV/bin:$PATH"
export ELEMENTS_PATH="$ROOT/dib-element"
export DIB_RIVET_BINARY="$BIN" DIB_RIVET_UNIT="$ROOT/systemd/rivet.service"
# RIVET_STEPS_DIR: a directory of custom steps (NAME.toml + executables) for /etc/rivet/steps.d.
export DIB_RIVET_STEPS_DIR=${RIVET_STEPS_DIR:-}
# BURNIN_TOOLS=0: no stress-ng and fio (about 30 MB less; the burn-in steps report them missing).
export DIB_RIVET_BURNIN_TOOLS=${BURNIN_TOOLS:-1}
export DIB_RIVET_COMPRESS=${COMPRESS:-zstd -19 -T0 -q}
# debian-minimal follows "stable" unless pinned; security.debian.org is not reachable from
# every build network, deb.debian.org serves the same archive.
export DIB_RELEASE=bookworm DIB_DEBIAN_SECURITY_MIRROR=http://deb.debian.org/debian-security
export DIB_DEBOOTSTRAP_CACHE=1
t0=$SECONDS
disk-image-create -n -o "$OUT/rivet" debian-minimal rivet
echo "dib ramdisk: $OUT/rivet.kernel ($(stat -c %s "$OUT/rivet.kernel") bytes), $OUT/rivet.initramfs ($(stat -c %s "$OUT/rivet.initramfs") bytes), built in $((SECONDS - t0)) s"
