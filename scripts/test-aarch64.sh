#!/usr/bin/env bash
# Rivet's unit tests built for aarch64 here (Debian's cross toolchain, static as the shipped
# binary) and run under qemu-aarch64 user emulation: the parsers, the image pipeline, the
# inventory and boot loader rules, on an arm64 CPU's view of the world. Tests that need this
# machine's devices (loop devices, root) skip under emulation as they would anywhere without
# them. usage: scripts/test-aarch64.sh [TEST FILTER...]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=cross-aarch64.sh
source "$ROOT/scripts/cross-aarch64.sh"
"$ROOT/scripts/apt-install.sh" qemu-user
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64
# Static, as the release: nothing of the arm64 userland is needed to run them.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
# QEMU 7.2's user emulation (Debian 12's) has no openat2 (it answers ENOSYS), the system call
# that keeps every path the agent opens in an image inside the image's root; arm64 kernels
# have it (5.6 and later), and the lab's arm64 node runs that code for real.
cargo test --locked --target aarch64-unknown-linux-gnu --lib -- --skip system::inroot::tests "$@"
