#!/usr/bin/env bash
# Rivet's whole test suite, from a fresh machine: installs what it needs (Debian packages, the
# Ironic venv), checks formatting and lints, runs the unit and integration tests, fuzzes the
# parsers with libFuzzer, builds the static release binary and runs it against the real Ironic
# conductor (deploy, clean, formats, inspection and fast-track) and in QEMU VMs booted from our
# ramdisk.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export CARGO_TERM_COLOR=never
passed=0; failed=0
step() { # NAME CMD...
  local name=$1; shift
  local t=$SECONDS
  echo "=== $name"
  if "$@"; then
    passed=$((passed + 1)); echo "=== $name: ok ($((SECONDS - t)) s)"
  else
    failed=$((failed + 1)); echo "=== $name: FAILED ($((SECONDS - t)) s)"
  fi
}

scripts/deps.sh
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --locked --all-targets -- -D warnings
step "cargo test" cargo test --locked --no-fail-fast
# libFuzzer over the six parser targets, bounded (about 6 min to build, 15 s a target).
step "libFuzzer: every fuzz target" scripts/fuzz.sh 15
step "static release build" scripts/build-static.sh
RIVET_STATIC="$ROOT/target/x86_64-unknown-linux-gnu/release/rivet"
step "real Ironic: whole-disk deploy and failed deploy" env RIVET="$RIVET_STATIC" tests/ironic/deploy.sh
step "real Ironic: automated cleaning" env RIVET="$RIVET_STATIC" tests/ironic/clean.sh
step "real Ironic: qcow2, zstd and partition-image deploys" env RIVET="$RIVET_STATIC" tests/ironic/formats.sh
step "real Ironic: inspection, fast-track cleaning and deploy, auto-discovery" env RIVET="$RIVET_STATIC" tests/ironic/inspect.sh
step "VM: real Ironic deploys a QEMU VM booted from the Rivet ramdisk" env RIVET="$RIVET_STATIC" tests/vm/deploy.sh

echo "suites: $passed passed, $failed failed"
((failed == 0))
