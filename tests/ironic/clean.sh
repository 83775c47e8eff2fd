#!/usr/bin/env bash
# Automated cleaning by the real Ironic 39 conductor with Rivet as the agent: the node goes
# manageable → cleaning → clean wait → available, running erase_devices_metadata on the disk
# its root device hint names (a loop device carrying a GPT and file systems); afterwards
# blkid -p finds nothing on it.
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

AUTOMATED_CLEAN=true ERASE_META_PRIO=99 REQUIRE_TLS=true HEARTBEAT_TIMEOUT=30 "$ROOT/scripts/ironic/run-ironic.sh" start
# A disk with something to erase: a GPT, an ESP with a FAT file system, a data partition.
"$ROOT/scripts/ironic/make-test-image.sh" "$WORK/disk.img" 64
LOOP=$(losetup --find --show "$WORK/disk.img")
blkid -p "$LOOP" | grep -q 'PTTYPE="gpt"' || fail "test disk has no GPT to start with"

MAC=52:54:00:12:34:57
NODE=$(enroll node1 "$MAC")
api PATCH "/v1/nodes/$NODE" "[{\"op\": \"add\", \"path\": \"/properties/root_device\", \"value\": {\"name\": \"$LOOP\"}}]" >/dev/null
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
if blkid -p "$LOOP" >/dev/null 2>&1; then fail "blkid still finds: $(blkid -p "$LOOP")"; fi
echo "ok: blkid -p finds nothing on $LOOP"
echo "PASS clean ($((SECONDS - t0)) s)"
