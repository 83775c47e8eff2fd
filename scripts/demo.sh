#!/usr/bin/env bash
# The main job, end to end on this machine: the real Ironic 39 (standalone on 127.0.0.1)
# deploys a node whose "disk" is a loop device, with the static Rivet binary as its agent.
# Shows the conductor and Rivet working together and the disk's partition table; then what an
# operator tries first: in the lab (tests/lab), Ironic boots a VM from Rivet's ramdisk over
# Redfish virtual media, deploys it with a config drive, reboots it into its OS, and cleans it
# when it is undeployed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export STATE=${STATE:-${TMPDIR:-/tmp}/rivet-demo-state}
source scripts/ironic/lib.sh
init_session

scripts/deps.sh
scripts/build-static.sh
RIVET=$ROOT/target/x86_64-unknown-linux-gnu/release/rivet
echo "== starting Ironic (installs its venv on first use)"
REQUIRE_TLS=true HEARTBEAT_TIMEOUT=30 scripts/ironic/run-ironic.sh start
scripts/ironic/make-test-image.sh "$STATE/images/wholedisk.raw" 48
SUM=$(sha256sum "$STATE/images/wholedisk.raw" | cut -d' ' -f1)
truncate -s 160M "$WORK/disk.img"
LOOP=$(losetup --find --show "$WORK/disk.img")
MAC=52:54:00:12:34:56
NODE=$(enroll_available node0 "$MAC" "{\"name\": \"$LOOP\"}")
api PATCH "/v1/nodes/$NODE" "[{\"op\": \"add\", \"path\": \"/instance_info\", \"value\": {
  \"image_source\": \"$IMG/wholedisk.raw\", \"image_os_hash_algo\": \"sha256\",
  \"image_os_hash_value\": \"$SUM\", \"image_disk_format\": \"raw\", \"root_gb\": \"1\"}}]" >/dev/null
echo "== deploying node $NODE (root device hint: name=$LOOP)"
api PUT "/v1/nodes/$NODE/states/provision" '{"target": "active"}' >/dev/null
wait_state "$NODE" "wait call-back" 60
echo "ipa-api-url=$API BOOTIF=$MAC ipa-listen-host=127.0.0.1 ipa-advertise-host=127.0.0.1" > "$WORK/cmdline"
echo "== starting Rivet: rivet --cmdline-file (ipa-api-url=$API BOOTIF=$MAC ...) --simulate-power --allow-loop-devices"
t0=$(date +%s.%N)
"$RIVET" --cmdline-file "$WORK/cmdline" --state-dir "$WORK/state" --simulate-power --allow-loop-devices > "$WORK/rivet.log" 2>&1 &
AGENT_PID=$!
for _ in $(seq 1 100); do
  [[ "$(node_field "$NODE" "['driver_internal_info'].get('agent_url')")" == https://* ]] && break
  sleep 0.1
done
echo "== the conductor accepted Rivet's first heartbeat after $(awk "BEGIN{printf \"%.2f\", $(date +%s.%N)-$t0}") s: agent_url $(node_field "$NODE" "['driver_internal_info'].get('agent_url')")"
wait_state "$NODE" active 180
echo "== node $(node_field "$NODE" "['provision_state']") $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N)-$t0}") s after Rivet started"
"$PY" -c '
import json, sys
for c in json.load(open(sys.argv[1])):
    print("   %-22s %s" % (c["command_name"], c["command_status"]))' "$WORK/state/commands.json"
echo "== the disk ($LOOP) now:"
sgdisk -p "$LOOP" | sed -n '/^Number/,$p'
qemu-img compare -f raw -F raw "$STATE/images/wholedisk.raw" "$LOOP"
echo "== where the time went, agent start to node active (host clock; the VM flows below print"
echo "   the same table from the guest's power-on)"
scripts/boot-timeline.sh "$WORK/rivet.log" "host agent"
echo "== Rivet log (excerpt)"
grep -E "lookup succeeded|agent API serving|root device chosen|image written|UEFI|fallback|system event" "$WORK/rivet.log" | cut -c1-200

echo
echo "== the product as operators meet it (the lab: a provisioning network in a namespace, dnsmasq,"
echo "   Ironic on HTTPS, a QEMU VM behind a Redfish BMC): Ironic builds a virtual-media ISO from"
echo "   Rivet's kernel and initramfs, inserts it, powers the VM on; Rivet verifies Ironic with the"
echo "   CA on the ISO, deploys a whole-disk image with a config drive; Ironic reboots the VM into"
echo "   its OS (its marker below), then undeploys it with automated cleaning (tests/vm/deploy.sh,"
echo "   ~3 min; FLOWS=\"vmedia ipxe metal3 raid dib powerloss rescue faults\" for every flow)"
scripts/ironic/run-ironic.sh stop >/dev/null 2>&1 || true
RIVET="$RIVET" FLOWS="${FLOWS:-vmedia}" LANES=1 tests/vm/deploy.sh
