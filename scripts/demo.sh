#!/usr/bin/env bash
# The main job, end to end on this machine: start the real Ironic 39 standalone on 127.0.0.1,
# enrol a node, ask for a deploy, run the static Rivet binary as that node's agent and show
# the conductor working with it (lookup, HTTPS heartbeats, deploy steps).
# Image writing is not in this build yet: the deploy stops at write_image with Rivet's error.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export STATE=${STATE:-${TMPDIR:-/tmp}/rivet-demo-state}
WORK=$(mktemp -d)
AGENT_PID=
cleanup() {
  [[ -n "$AGENT_PID" ]] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
  scripts/ironic/run-ironic.sh stop || true
  rm -rf "$WORK"
}
trap cleanup EXIT

scripts/deps.sh
scripts/build-static.sh
RIVET=$ROOT/target/x86_64-unknown-linux-gnu/release/rivet
echo "== starting Ironic (installs its venv on first use)"
REQUIRE_TLS=true HEARTBEAT_TIMEOUT=30 scripts/ironic/run-ironic.sh start
source scripts/ironic/lib.sh
MAC=52:54:00:12:34:56
NODE=$(enroll node0 "$MAC")
api PUT "/v1/nodes/$NODE/states/provision" '{"target": "provide"}' >/dev/null
wait_state "$NODE" available 60
sum=$(cat "$STATE/images/disk.raw.sha256")
api PATCH "/v1/nodes/$NODE" "[{\"op\": \"add\", \"path\": \"/instance_info\", \"value\": {
  \"image_source\": \"$IMG/disk.raw\", \"image_os_hash_algo\": \"sha256\",
  \"image_os_hash_value\": \"$sum\", \"image_disk_format\": \"raw\", \"root_gb\": \"1\"}}]" >/dev/null
echo "== deploying node $NODE"
api PUT "/v1/nodes/$NODE/states/provision" '{"target": "active"}' >/dev/null
wait_state "$NODE" "wait call-back" 60
echo "ipa-api-url=$API BOOTIF=$MAC ipa-listen-host=127.0.0.1 ipa-advertise-host=127.0.0.1" > "$WORK/cmdline"
echo "== starting Rivet: $RIVET --cmdline-file (ipa-api-url=$API BOOTIF=$MAC ...) --simulate-power"
t0=$(date +%s.%N)
"$RIVET" --cmdline-file "$WORK/cmdline" --state-dir "$WORK/state" --simulate-power > "$WORK/rivet.log" 2>&1 &
AGENT_PID=$!
for _ in $(seq 1 100); do
  [[ "$(node_field "$NODE" "['driver_internal_info'].get('agent_url')")" == https://* ]] && break
  sleep 0.1
done
t1=$(date +%s.%N)
echo "== the conductor accepted Rivet's first heartbeat $(awk "BEGIN{printf \"%.2f\", $t1-$t0}") s after start"
api GET "/v1/nodes/$NODE" | "$PY" -c '
import json, sys
n = json.load(sys.stdin); d = n["driver_internal_info"]
print("   provision_state     :", n["provision_state"])
for k in ("agent_url", "agent_version", "agent_last_heartbeat", "agent_status", "hardware_manager_version"):
    print("   %-20s: %s" % (k, d.get(k)))
print("   agent_verify_ca     : %s" % ("stored (auto-TLS)" if d.get("agent_verify_ca") else None))'
wait_state "$NODE" "deploy failed" 60 || true
echo "== Rivet's command history (as the conductor reads it)"
"$PY" -c '
import json, sys
for c in json.load(open(sys.argv[1])):
    e = c["command_error"]
    print("   %-22s %-10s %s" % (c["command_name"], c["command_status"], (e or {}).get("details", "")))' "$WORK/state/commands.json"
echo "== node: $(node_field "$NODE" "['provision_state']"); last_error: $(node_field "$NODE" "['last_error']")"
echo "== Rivet log"
sed -n '1,12p' "$WORK/rivet.log"
