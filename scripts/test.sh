#!/usr/bin/env bash
# Rivet's whole test suite, from a fresh machine: installs what it needs (Debian packages, the
# Ironic venv), checks formatting and lints, runs the unit and integration tests (with the
# stable-Rust fuzz smoke run; libFuzzer itself is scripts/fuzz.sh), builds the static release
# binary and runs it against the real Ironic conductor (deploy, clean, formats, inspection and
# fast-track) and in the lab (tests/lab), where Ironic itself powers, boots and deploys QEMU
# VMs through Redfish and IPMI BMCs, over virtual media and iPXE. Prints each suite's time at
# the end.
#
# The real-Ironic suites mostly wait (on heartbeats, on the conductor), so they run at once,
# each with its own Ironic on its own ports, while the diskimage-builder ramdisk the lab boots
# is built beside them and beside the lab's first flows (its flow waits for it).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export CARGO_TERM_COLOR=never
# Every build here starts from nothing: incremental compilation's bookkeeping is pure cost.
export CARGO_INCREMENTAL=0
# A test whose precondition (root, a tool, a namespace) is missing fails here instead of
# skipping: a green run means every test ran.
export RIVET_REQUIRE_ALL=1
# What a run may leave in the checkout: nothing but build output.
checkout_files() {
  git -C "$ROOT" status --porcelain --ignored --untracked-files=all 2>/dev/null \
    | grep -v -E '^!! (target|fuzz/target|fuzz/corpus|fuzz/artifacts)/' | sort || true
}
FILES_BEFORE=$(checkout_files)
passed=0; failed=0
summary=()
record() { # NAME STATUS SECONDS
  summary+=("$(printf '%-70s %6s %5d s' "$1" "$2" "$3")")
  if [[ "$2" == ok ]]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
}
LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT
logfile() { echo "$LOGS/${1//[^a-zA-Z0-9]/_}.log"; }
# Each failed suite's last lines are printed again at the very end, where a CI log cut to its
# tail still shows why it failed.
FAILED_LOGS=()
step() { # NAME CMD...
  local name=$1 rc=0; shift
  local t=$SECONDS
  echo "=== $name"
  "$@" 2>&1 | tee "$(logfile "$name")" || rc=$?
  if ((rc == 0)); then
    echo "=== $name: ok ($((SECONDS - t)) s)"; record "$name" ok $((SECONDS - t))
  else
    echo "=== $name: FAILED ($((SECONDS - t)) s)"; record "$name" FAILED $((SECONDS - t))
    FAILED_LOGS+=("$name")
  fi
}
declare -A BG_PID BG_START
bg() { # NAME CMD...: start a suite in the background, its output kept for later
  local name=$1; shift
  BG_START[$name]=$SECONDS
  "$@" > "$(logfile "$name")" 2>&1 &
  BG_PID[$name]=$!
}
collect() { # NAME: wait for a background suite, print its output and result
  local name=$1 rc=0
  wait "${BG_PID[$name]}" || rc=$?
  local took=$((SECONDS - BG_START[$name]))
  echo "=== $name"
  cat "$(logfile "$name")"
  if ((rc == 0)); then
    echo "=== $name: ok ($took s)"; record "$name" ok "$took"
  else
    echo "=== $name: FAILED ($took s)"; record "$name" FAILED "$took"
    FAILED_LOGS+=("$name")
  fi
}

t_all=$SECONDS
step "dependencies (Debian packages)" scripts/deps.sh
step "cargo fmt --check" cargo fmt --all -- --check
# Its output is kept: the names of failing tests are printed again at the very end, where a
# CI log cut to its tail still shows them.
# The API latency test (below) runs alone first: the rest runs beside the static build.
LATENCY=api_stays_fast_under_load_while_writing
cargo_test() { cargo test --locked --no-fail-fast -- --skip "$LATENCY" 2>&1 | tee "$LOGS/cargo-test.log"; }
step "cargo test: build" cargo test --locked --no-run
# The API's p99 under load and the write's slowdown beside it (5 % at most) are measured on a
# quiet machine: beside the idle-class static build the write lost 7-12 % (memory bandwidth
# and caches are not scheduled), every round of a CI run here.
step "cargo test: the API under load during a write, alone" \
  cargo test --locked --test api_latency -- --exact "$LATENCY"
# The static release build (compile-bound, six minutes alone) runs beside the other tests,
# which mostly wait (on loop devices, servers, timeouts), at the lowest priority: any test
# thread that wants a core gets it at once.
bg "static release build" nice -n 19 scripts/build-static.sh
# aarch64: the binary and the unit tests cross-built in one development build (a release
# build beside it, fat LTO, made the test command 2115 s instead of 1409 s without arm64), the
# tests run under qemu-aarch64; in a target directory of their own (cargo locks its directory
# per build), in the idle scheduling class all along: below the x86_64 build above and
# everything else, on the cores they leave. The lab's arm64 flow (last in its lane) boots the
# binary, waiting for it.
A64_STATUS="$LOGS/arm64"
mkdir -p "$A64_STATUS"; touch "$A64_STATUS/.building"
bg "aarch64: binary and unit tests (qemu-aarch64)" chrt --idle 0 \
  env CARGO_TARGET_DIR="$ROOT/target/cross" ARM64_READY="$A64_STATUS" scripts/test-aarch64.sh
step "cargo test" cargo_test
step "harness self-test (a test that could pass without testing fails)" tests/harness/selftest.sh
# Past the latency-sensitive tests, the static build leaves its low priority: beside the
# real-Ironic suites (the scale-out one busy for a minute or two) it starved there, and the
# lab waits for it (CI: 718 s against 360 s alone).
descendants() { local p; for p in $(pgrep -P "$1" || true); do echo "$p"; descendants "$p"; done; }
for _ in 1 2; do # twice: a compiler started while the first pass walked the tree
  for p in "${BG_PID[static release build]}" $(descendants "${BG_PID[static release build]}"); do
    for t in /proc/"$p"/task/*; do renice -n 0 -p "${t##*/}" >/dev/null 2>&1 || true; done
  done
done
# The Ironic venv is made once, before the suites that share it start.
step "Ironic 39 venv" scripts/ironic/run-ironic.sh install
# The real-Ironic suites run the debug build (its dependencies optimised) while the static
# build ends beside them: the lab runs the static one against Ironic.
RIVET_DEBUG="$ROOT/target/debug/rivet"
ironic() { # NAME PORT SCRIPT: one real-Ironic suite with its own conductor on PORT (images on PORT+1000)
  bg "$1" env RIVET="$RIVET_DEBUG" API_PORT="$2" IMG_PORT=$(($2 + 1000)) API="http://127.0.0.1:$2" \
    IMG="http://127.0.0.1:$(($2 + 1000))" "$3"
}
ironic "real Ironic: whole-disk deploy and failed deploy" 7301 tests/ironic/deploy.sh
ironic "real Ironic: automated cleaning" 7302 tests/ironic/clean.sh
ironic "real Ironic: qcow2, zstd and partition-image deploys" 7303 tests/ironic/formats.sh
ironic "real Ironic: inspection, fast-track cleaning and deploy, auto-discovery" 7304 tests/ironic/inspect.sh
# Three conductors on MariaDB behind two APIs (ports 7305, 7306): one killed, the database
# stopped, an API killed, while 24 nodes deploy; then fast track across a conductor's death.
ironic "real Ironic scale-out: 24 nodes, 3 conductors (one killed), database outage, API killed" 7305 tests/ironic/scaleout.sh
# Peer image sharing on a bridge of network namespaces: 8 agents, a tc-limited image server,
# a hostile peer, aria2c (15 s alone here).
bg "peer sharing: 8 agents in namespaces (LSD, tc-limited server, hostile peer, aria2c)" \
  env RIVET="$RIVET_DEBUG" tests/share/swarm.sh
# Clippy runs from here to its end in the idle class, in the time the others leave: the
# static build's last minutes (link-time optimisation on one core) and the lab's waits. First
# (before the test build, sharing its build scripts) it took 342 s of a 41-minute run on two
# cores, one of which then sat idle for 210 s. Same target directory (it shares the test build's
# build scripts and macros; a directory of its own took 711 s): no cargo command runs in it
# until clippy is collected.
bg "cargo clippy" chrt --idle 0 cargo clippy --locked --all-targets -- -D warnings
collect "static release build"
RIVET_STATIC="$ROOT/target/x86_64-unknown-linux-gnu/release/rivet"
DIB_OUT="$LOGS/dib"
# The test boots this image; it does not measure its size. A light zstd level keeps the build
# off the critical path while the VM flows share the cores (the default, -19, is for shipping).
mkdir -p "$DIB_OUT"; touch "$DIB_OUT/.building"
bg "DIB ramdisk build (for the lab)" env RIVET="$RIVET_STATIC" COMPRESS="zstd -3 -T0 -q" \
  RIVET_STEPS_DIR="$ROOT/tests/fixtures/steps.d" \
  sh -c 'scripts/build-dib-ramdisk.sh "$1" && touch "$1/.done" || { touch "$1/.failed"; exit 1; }' _ "$DIB_OUT"
for s in "real Ironic: whole-disk deploy and failed deploy" "real Ironic: automated cleaning" \
         "real Ironic: qcow2, zstd and partition-image deploys" \
         "real Ironic: inspection, fast-track cleaning and deploy, auto-discovery" \
         "real Ironic scale-out: 24 nodes, 3 conductors (one killed), database outage, API killed" \
         "peer sharing: 8 agents in namespaces (LSD, tc-limited server, hostile peer, aria2c)"; do
  collect "$s"
done
# The lab: every flow, three side by side; the DIB flow waits for the build above.
step "lab: Ironic powers, boots (virtual media, iPXE) and deploys VMs: vmedia ipv6 ipxe metal3 raid dib powerloss rescue faults arm64" \
  env RIVET="$RIVET_STATIC" DIB_RAMDISK="$DIB_OUT" \
  RIVET_ARM64="$ROOT/target/cross/aarch64-unknown-linux-gnu/debug/rivet-static" RIVET_ARM64_STATUS="$A64_STATUS" \
  tests/vm/deploy.sh
collect "DIB ramdisk build (for the lab)"
collect "aarch64: binary and unit tests (qemu-aarch64)"
collect "cargo clippy"
# The node runs the release build: a panicking command must fail alone there too (unwinding).
step "release binary: a panicking command fails alone, the agent goes on" \
  env RIVET_AGENT_BIN="$RIVET_STATIC" cargo test --locked --test agent_api -- --exact \
  panics_fail_one_command_and_the_agent_goes_on

leftovers() { # the run left no file in the checkout (tools that write where they run)
  local now; now=$(checkout_files)
  if [[ "$now" != "$FILES_BEFORE" ]]; then
    echo "files the run left in the checkout:"; comm -13 <(echo "$FILES_BEFORE") <(echo "$now")
    return 1
  fi
}
step "no files left in the checkout" leftovers

echo
echo "suite times:"
printf '  %s\n' "${summary[@]}"
if grep -a -E '^test .* FAILED$|^---- .* stdout ----$|panicked at' "$LOGS/cargo-test.log" >/dev/null 2>&1; then
  echo "cargo test failures (the first lines of each):"
  grep -a -E -A6 '^---- .* stdout ----$' "$LOGS/cargo-test.log" | cut -c1-300 | sed -n 1,80p
  grep -a -E '^test .* FAILED$|^error: test failed' "$LOGS/cargo-test.log" | sed -n 1,40p
fi
for name in "${FAILED_LOGS[@]}"; do
  [[ "$name" == "cargo test" ]] && continue # its failures are above
  echo "last lines of the failed suite \"$name\":"
  grep -a -v -E '^[0-9-]+ [0-9:.]+ \| ' "$(logfile "$name")" | tail -n 40 | cut -c1-300 | sed 's/^/  /'  || true
done
echo "suites: $passed passed, $failed failed, $((SECONDS - t_all)) s in all"
((failed == 0))
