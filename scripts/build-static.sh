#!/usr/bin/env bash
# Build the statically linked release binary:
#   target/x86_64-unknown-linux-gnu/release/rivet      (ARCH=x86_64, the default)
#   target/aarch64-unknown-linux-gnu/release/rivet     (ARCH=aarch64: cross-built here)
# (under $CARGO_TARGET_DIR instead of target/ when it is set)
# glibc static-pie (+crt-static); the release profile is tuned for size and speed (fat LTO, one
# codegen unit, unwinding panics, stripped). Installs its build dependencies when missing: for
# aarch64, Debian's cross toolchain (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross), the arm64
# libblkid (multiarch) and the Rust target; no emulated compiler.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ARCH=${ARCH:-$(uname -m)}
case "$ARCH" in
  x86_64 | amd64) ARCH=x86_64 ;;
  aarch64 | arm64) ARCH=aarch64 ;;
  *) echo "ARCH must be x86_64 or aarch64, not $ARCH" >&2; exit 2 ;;
esac
TARGET=$ARCH-unknown-linux-gnu
if [[ "$ARCH" != "$(uname -m)" ]]; then
  [[ "$ARCH" == aarch64 ]] || { echo "cross builds go to aarch64 only" >&2; exit 2; }
  # shellcheck source=cross-aarch64.sh
  source "$ROOT/scripts/cross-aarch64.sh"
else
  "$ROOT/scripts/apt-install.sh" libblkid-dev libclang-dev file
fi
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --locked --target "$TARGET"
BIN="${CARGO_TARGET_DIR:-target}/$TARGET/release/rivet"
desc=$(file -b "$BIN")
case "$desc" in
  *"static-pie linked"* | *"statically linked"*) ;;
  *) echo "not a static binary: $desc" >&2; exit 1 ;;
esac
want=$([[ "$ARCH" == aarch64 ]] && echo "ARM aarch64" || echo "x86-64")
[[ "$desc" == *"$want"* ]] || { echo "not an $ARCH binary: $desc" >&2; exit 1; }
if ldd "$BIN" >/dev/null 2>&1 && ! ldd "$BIN" 2>&1 | grep -q "not a dynamic executable\|statically linked"; then
  echo "ldd finds dynamic dependencies:" >&2; ldd "$BIN" >&2; exit 1
fi
size=$(stat -c %s "$BIN")
# 12 MiB until peer sharing (the BitTorrent peer protocol, LSD, the web seed: 0.39 MB of
# x86_64 code and unwind tables) took the x86_64 binary from 12,482,672 to 12,875,440 bytes.
limit=$((13 * 1024 * 1024))
((size <= limit)) || { echo "binary is $size bytes, over the 13 MiB budget" >&2; exit 1; }
echo "$BIN: $(numfmt --to=iec-i --suffix=B "$size") ($size bytes); $desc"
