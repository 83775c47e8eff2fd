#!/usr/bin/env bash
# Automated cleaning by the real Ironic 39 conductor with Rivet as the agent: the node goes
# manageable → cleaning → clean wait → available, running erase_devices_metadata and then
# erase_devices_express (raised into automated cleaning, with Ironic's own
# disk_erasure_concurrency) on the disk its root device hint names (a loop device carrying a
# GPT and file systems, and unable to discard, as a spinning disk: express falls back to the
# metadata erase); afterwards blkid -p finds nothing on it. Then manual cleaning (manageable → clean with explicit steps)
# with erase_devices (overwrite, verified) and erase_devices_express (discard, verified): the
# disk, filled with random data first, reads back as zeros end to end.
# usage: tests/ironic/clean.sh   (RIVET=path/to/rivet to test another build)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RIVET=${RIVET:-$ROOT/target/debug/rivet}
export STATE=${STATE:-${TMPDIR:-/tmp}/rivet-ironic-clean}
# shellcheck source=../../scripts/ironic/lib.sh
source "$ROOT/scripts/ironic/lib.sh"
init_session
t0=$SECONDS
[[ -x "$RIVET" ]] || fail "no rivet binary at $RIVET"

AUTOMATED_CLEAN=true ERASE_META_PRIO=99 EXPRESS_PRIO=95 REQUIRE_TLS=true HEARTBEAT_TIMEOUT=30 "$ROOT/scripts/ironic/run-ironic.sh" start
# A disk with something to erase: a GPT, an ESP with a FAT file system, a data partition.
"$ROOT/scripts/ironic/make-test-image.sh" "$WORK/disk.img" 64
LOOP=$(losetup --find --show "$WORK/disk.img")
blkid -p "$LOOP" | grep -q 'PTTYPE="gpt"' || fail "test disk has no GPT to start with"
# The automated cleaning's disk cannot discard, as a spinning disk: a copy on ramfs (which
# cannot punch holes, so the loop driver offers no discard over it).
RAMFS=$WORK/ramfs
mkdir -p "$RAMFS"
mount -t ramfs ramfs "$RAMFS"
cp "$WORK/disk.img" "$RAMFS/disk.img"
LOOP2=$(losetup --find --show "$RAMFS/disk.img")
[[ "$(cat "/sys/block/${LOOP2#/dev/}/queue/discard_max_bytes")" == 0 ]] || fail "$LOOP2 (on ramfs) can discard"

MAC=52:54:00:12:34:57
NODE=$(enroll node1 "$MAC")
api PATCH "/v1/nodes/$NODE" "[{\"op\": \"add\", \"path\": \"/properties/root_device\", \"value\": {\"name\": \"$LOOP2\"}}]" >/dev/null
api PUT "/v1/nodes/$NODE/states/provision" '{"target": "provide"}' >/dev/null
wait_state "$NODE" "clean wait" 60
echo "ipa-api-url=$API BOOTIF=$MAC ipa-listen-host=127.0.0.1 ipa-listen-port=0 ipa-advertise-host=127.0.0.1" > "$WORK/cmdline"
PORT=$(free_port)
sed -i "s/ipa-listen-port=0/ipa-listen-port=$PORT ipa-advertise-port=$PORT/" "$WORK/cmdline"
ts=$SECONDS
"$RIVET" --cmdline-file "$WORK/cmdline" --state-dir "$WORK/state" --simulate-power --allow-loop-devices > "$WORK/rivet.log" 2>&1 &
AGENT_PID=$!
wait_state "$NODE" available 120 || fail "cleaning did not finish"
echo "ok: node available after cleaning ($((SECONDS - ts)) s after the agent started)"
grep -q '"command_name":"execute_clean_step","command_status":"SUCCEEDED"' "$WORK/state/commands.json" || fail "no successful clean step in Rivet's history"
grep -q "erase_devices_metadata" "$WORK/state/commands.json" || fail "erase_devices_metadata did not run"
grep -q '"step":"erase_devices_express"' "$WORK/state/commands.json" || fail "erase_devices_express did not run"
grep -q '"method":"metadata wipe"' "$WORK/state/commands.json" \
  || fail "express erase on a disk without discard: no metadata wipe in $(grep -o '"method":"[a-z ]*"' "$WORK/state/commands.json")"
if blkid -p "$LOOP2" >/dev/null 2>&1; then fail "blkid still finds: $(blkid -p "$LOOP2")"; fi
echo "ok: blkid -p finds nothing on $LOOP2; erase_devices_express on a disk without discard fell back to the metadata erase"
# The conductor powers the node off through its (fake) power interface: the agent would
# heartbeat on; a real machine would be off.
kill "$AGENT_PID" 2>/dev/null || true; wait "$AGENT_PID" 2>/dev/null || true; AGENT_PID=

api PUT "/v1/nodes/$NODE/states/provision" '{"target": "manage"}' >/dev/null
wait_state "$NODE" manageable 60
# From here on the disk that discards.
api PATCH "/v1/nodes/$NODE" "[{\"op\": \"add\", \"path\": \"/properties/root_device\", \"value\": {\"name\": \"$LOOP\"}}]" >/dev/null
manual_clean() { # STEP
  local step=$1
  dd if=/dev/urandom of="$LOOP" bs=1M count=64 status=none
  api PUT "/v1/nodes/$NODE/states/provision" "{\"target\": \"clean\", \"clean_steps\": [{\"interface\": \"deploy\", \"step\": \"$step\"}]}" >/dev/null
  wait_state "$NODE" "clean wait" 60
  ts=$SECONDS
  "$RIVET" --cmdline-file "$WORK/cmdline" --state-dir "$WORK/state-$step" --simulate-power --allow-loop-devices > "$WORK/rivet-$step.log" 2>&1 &
  AGENT_PID=$!
  wait_state "$NODE" manageable 180 || fail "$step: manual cleaning did not finish"
  local took=$((SECONDS - ts))
  grep -q "\"step\":\"$step\"" "$WORK/state-$step/commands.json" || fail "$step did not run"
  cmp -n $((64 << 20)) "$LOOP" /dev/zero || fail "$step: the disk does not read back as zeros"
  local method; method=$(grep -o '"method":"[a-z ]*"' "$WORK/state-$step/commands.json" | head -1)
  echo "ok: $step: disk zero end to end, $method, node manageable ${took} s after the agent started"
  kill "$AGENT_PID" 2>/dev/null || true; wait "$AGENT_PID" 2>/dev/null || true; AGENT_PID=
}
manual_clean erase_devices
manual_clean erase_devices_express

# --- custom steps (drop-ins in a steps directory): one writes a marker onto the node's root
# device and returns JSON, which the conductor reads; one fails, and so does the cleaning.
STEPS=$WORK/steps.d
mkdir -p "$STEPS"
cp "$ROOT"/tests/fixtures/steps.d/* "$STEPS/"
cat > "$STEPS/check_firmware.toml" <<'EOF'
step = "check_firmware"
kinds = ["clean"]
timeout = 30
exec = "check-firmware.sh"
EOF
printf '#!/bin/sh\necho "BMC firmware 1.2.3 is older than the required 2.0" >&2\nexit 1\n' > "$STEPS/check-firmware.sh"
# A broken manifest is skipped (and logged), never fatal.
printf 'step = "broken"\nkinds = ["clean"]\n' > "$STEPS/broken.toml"
chmod +x "$STEPS"/*.sh
custom_clean() { # LABEL STEPS_JSON END_STATE
  api PUT "/v1/nodes/$NODE/states/provision" "{\"target\": \"clean\", \"clean_steps\": $2}" >/dev/null
  wait_state "$NODE" "clean wait" 60
  "$RIVET" --cmdline-file "$WORK/cmdline-steps" --state-dir "$WORK/state-$1" --simulate-power --allow-loop-devices > "$WORK/rivet-$1.log" 2>&1 &
  AGENT_PID=$!
  wait_state "$NODE" "$3" 180 || fail "$1: the cleaning did not end $3"
  kill "$AGENT_PID" 2>/dev/null || true; wait "$AGENT_PID" 2>/dev/null || true; AGENT_PID=
}
plain() { sed 's/\x1b\[[0-9;]*m//g' "$1"; }
sed "s|\$| rivet-steps-dir=$STEPS|" "$WORK/cmdline" > "$WORK/cmdline-steps"
custom_clean marker '[{"interface": "deploy", "step": "write_marker", "args": {"text": "hello-from-ironic"}}]' manageable
[[ "$(dd if="$LOOP" bs=1M skip=1 count=1 status=none | head -c 30)" == "RIVET-MARKER hello-from-ironic" ]] \
  || fail "the custom step's marker is not on $LOOP"
plain "$WORK/rivet-marker.log" | grep "custom step skipped: invalid manifest.*broken.toml" >/dev/null \
  || fail "the broken manifest was not reported"
plain "$WORK/rivet-marker.log" | grep "marker written to $LOOP" >/dev/null \
  || fail "the custom step's stderr is not in the agent log"
grep -q "execute_clean_step: result \"{'clean_result': {'device': '$LOOP', 'node': '$NODE', 'text': 'hello-from-ironic'}" "$STATE/ironic.log" \
  || fail "the conductor did not receive the custom step's result"
echo "ok: custom step write_marker ran through the conductor: marker on $LOOP, its JSON result read by the conductor, a broken manifest skipped"
custom_clean failing '[{"interface": "deploy", "step": "check_firmware"}]' "clean failed"
err=$(node_field "$NODE" "['last_error']")
[[ "$err" == *"check_firmware"*"BMC firmware 1.2.3 is older than the required 2.0"* ]] || fail "last_error: $err"
echo "ok: a failing custom step failed the cleaning with its message: $err"
echo "PASS clean ($((SECONDS - t0)) s)"
