#!/usr/bin/env bash
# Rivet for aarch64, built here (Debian's cross toolchain, static as the shipped binary) in the
# development profile: the rivet binary (stripped copy: target/aarch64-unknown-linux-gnu/debug/
# rivet-static, checked to be a static ARM aarch64 executable) and the unit tests, run under
# qemu-aarch64 user emulation: the parsers, the image pipeline, the inventory and boot loader
# rules, on an arm64 CPU's view of the world. Tests that need this machine's devices (loop
# devices, root) skip under emulation as they would anywhere without them. The release build
# is ARCH=aarch64 scripts/build-static.sh (fat LTO: twice the compile, for the size budget).
# usage: scripts/test-aarch64.sh [TEST FILTER...]
# env: ARM64_READY=DIR: DIR/.done once the binary is built and checked (DIR/.failed if not),
#      before the tests run (the lab's arm64 flow waits for it).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=cross-aarch64.sh
source "$ROOT/scripts/cross-aarch64.sh"
"$ROOT/scripts/apt-install.sh" qemu-user
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64
# Static, as the release: nothing of the arm64 userland is needed to run them.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
ready() { [[ -n "${ARM64_READY:-}" ]] && touch "$ARM64_READY/$1"; return 0; }
dir=${CARGO_TARGET_DIR:-target}/aarch64-unknown-linux-gnu/debug
if ! cargo build --locked --target aarch64-unknown-linux-gnu --bin rivet \
    || ! aarch64-linux-gnu-strip -o "$dir/rivet-static" "$dir/rivet"; then
  ready .failed; exit 1
fi
desc=$(file -b "$dir/rivet-static")
if [[ "$desc" != *"ARM aarch64"* || "$desc" != *static* ]]; then
  echo "not a static aarch64 binary: $desc" >&2; ready .failed; exit 1
fi
echo "$dir/rivet-static: $desc"
ready .done
# QEMU 7.2's user emulation (Debian 12's) has no openat2 (it answers ENOSYS), the system call
# that keeps every path the agent opens in an image inside the image's root; arm64 kernels
# have it (5.6 and later), and the lab's arm64 node runs that code for real.
cargo test --locked --target aarch64-unknown-linux-gnu --lib -- --skip system::inroot::tests "$@"
