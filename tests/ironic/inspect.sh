#!/usr/bin/env bash
# The whole node lifecycle in one agent process, driven by the real Ironic 39 conductor
# (inspect interface "agent", [deploy]fast_track = true, require_tls):
#  1. enrol → manage → inspect: Rivet is started as the ramdisk would start it (callback URL
#     and API URL, fast-track), posts its inventory; the node becomes manageable with
#     cpu_arch, memory_mb, local_gb (from the root device hint), the boot_mode capability,
#     its port updated, and the inventory stored (GET /v1/nodes/{node}/inventory);
#  2. fast-track: the same agent process then cleans (provide: automated cleaning with
#     erase_devices_metadata) and deploys (active) without a reboot; the seconds from
#     inspect to active are printed;
#  3. auto-discovery: an unknown machine posts its data, Ironic enrols it (ports created from
#     the posted NICs) and Rivet looks it up by the returned UUID.
# The node's NIC is this machine's own (the inventory is real); its disk is a loop device.
# Management is noop: inspection reports this machine's real boot mode, and fake management
# could not set the "disk" boot device a BIOS-mode deploy asks for.
# usage: tests/ironic/inspect.sh   (RIVET=path/to/rivet to test another build)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RIVET=${RIVET:-$ROOT/target/debug/rivet}
export STATE=${STATE:-${TMPDIR:-/tmp}/rivet-ironic-inspect}
# shellcheck source=../../scripts/ironic/lib.sh
source "$ROOT/scripts/ironic/lib.sh"
init_session
t0=$SECONDS
[[ -x "$RIVET" ]] || fail "no rivet binary at $RIVET"

# The machine's first NIC with a MAC: the node's port (lookup by MAC needs a real one).
HOST_MAC=$("$RIVET" inventory | "$PY" -c 'import json,sys
for i in json.load(sys.stdin)["interfaces"]:
    if i.get("mac_address"): print(i["mac_address"]); break')
[[ -n "$HOST_MAC" ]] || fail "this machine has no NIC with a MAC address to inspect"

FAST_TRACK=true AUTOMATED_CLEAN=true ERASE_META_PRIO=99 AUTO_DISCOVERY=true REQUIRE_TLS=true \
  HEARTBEAT_TIMEOUT=30 "$ROOT/scripts/ironic/run-ironic.sh" start
truncate -s 8G "$WORK/disk.img"
LOOP=$(losetup --find --show "$WORK/disk.img")

# --- 1. inspection ------------------------------------------------------------------------
NODE=$(api POST /v1/nodes "{\"name\": \"inspect0\", \"driver\": \"fake-hardware\",
    \"boot_interface\": \"fake\", \"deploy_interface\": \"direct\", \"power_interface\": \"fake\",
    \"management_interface\": \"noop\", \"network_interface\": \"noop\", \"inspect_interface\": \"agent\",
    \"properties\": {\"vendor\": \"lenovo\", \"root_device\": {\"name\": \"$LOOP\"}}}" | field "['uuid']")
# Enrolled as Metal3 does, with the boot NIC's port; pxe_enabled false so that the ports hook
# has something to correct.
api POST /v1/ports "{\"node_uuid\": \"$NODE\", \"address\": \"$HOST_MAC\", \"pxe_enabled\": false}" >/dev/null
api PUT "/v1/nodes/$NODE/states/provision" '{"target": "manage"}' >/dev/null
wait_state "$NODE" manageable 60
api PUT "/v1/nodes/$NODE/states/provision" '{"target": "inspect"}' >/dev/null
wait_state "$NODE" "inspect wait" 60
PORT=$(free_port)
echo "ipa-inspection-callback-url=$API/v1/continue_inspection ipa-api-url=$API BOOTIF=$HOST_MAC \
ipa-inspection-collectors=default,logs,pci-devices,numa-topology,usb-devices ipa-collect-lldp=1 ipa-lldp-timeout=1 \
ipa-listen-host=127.0.0.1 ipa-listen-port=$PORT ipa-advertise-host=127.0.0.1 ipa-advertise-port=$PORT" > "$WORK/cmdline"
ts=$SECONDS
"$RIVET" --cmdline-file "$WORK/cmdline" --state-dir "$WORK/state" --simulate-power --allow-loop-devices \
  > "$WORK/rivet.log" 2>&1 &
AGENT_PID=$!
wait_state "$NODE" manageable 120 || fail "inspection did not finish"
inspected=$((SECONDS - ts))
echo "ok: node manageable after inspection (${inspected} s after the agent started)"
props=$(api GET "/v1/nodes/$NODE" | field "['properties']")
echo "properties: $props"
pyget() { echo "$props" | "$PY" -c "import json,sys; p=json.load(sys.stdin); print($1)"; }
[[ "$(pyget "p.get('cpu_arch')")" == "$(uname -m)" ]] || fail "cpu_arch not set from the inventory: $props"
mem=$(pyget "p.get('memory_mb')")
[[ "$mem" =~ ^[0-9]+$ && "$mem" -gt 0 ]] || fail "memory_mb not set: $props"
# 8 GiB loop disk named by the hint; Ironic keeps 1 GiB for partitioning.
[[ "$(pyget "p.get('local_gb')")" == 7 ]] || fail "local_gb is not the hinted disk's size: $props"
[[ "$(pyget "p.get('capabilities')")" == *"boot_mode:"* ]] || fail "no boot_mode capability: $props"
ports=$(api GET "/v1/ports?node_uuid=$NODE&fields=address,pxe_enabled" | field "['ports']")
echo "ports: $ports"
[[ "$ports" == *"\"$HOST_MAC\""* && "$ports" == *'"pxe_enabled": true'* ]] \
  || fail "the port was not updated from the inventory (pxe_enabled): $ports"
inv=$(api GET "/v1/nodes/$NODE/inventory")
echo "$inv" | "$PY" -c "import json,sys
d=json.load(sys.stdin); inv=d['inventory']
assert any(x['name'] == '$LOOP' for x in inv['disks']), 'the loop disk is not in the stored inventory'
assert any(i['mac_address'] == '$HOST_MAC' for i in inv['interfaces']), 'the NIC is not in the stored inventory'
pd=d['plugin_data']
assert pd.get('root_disk', {}).get('name') == '$LOOP', pd.get('root_disk')
assert pd.get('pci_devices'), 'no pci_devices in plugin data'
assert 'numa_topology' in pd and 'usb_devices' in pd
assert pd.get('error') is None, pd.get('error')
print('stored inventory: %d disks, %d NICs, %d PCI devices, %s MiB' % (len(inv['disks']), len(inv['interfaces']), len(pd['pci_devices']), inv['memory']['physical_mb']))
" || fail "stored inventory incomplete"
grep -q "the inspection answer carries the node and its token" "$WORK/rivet.log" \
  || fail "the agent did not take the node and token from the 1.84 inspection answer"
echo "ok: inspection: properties, port and stored inventory as Ironic's hooks set them"

# --- 2. fast-track: the same process cleans and deploys ------------------------------------
api PUT "/v1/nodes/$NODE/states/provision" '{"target": "provide"}' >/dev/null
wait_state "$NODE" available 180 || fail "fast-track cleaning did not finish"
kill -0 "$AGENT_PID" 2>/dev/null || fail "the agent process ended during cleaning"
grep -q '"step":"erase_devices_metadata"' "$WORK/state/commands.json" || fail "erase_devices_metadata did not run in the inspecting agent"
echo "ok: fast-track cleaning by the same agent process ($((SECONDS - ts)) s since it started)"
# The agent restarts between flows (a crash, a supervisor): it must neither inspect again nor
# lose its token, which the conductor now only answers masked.
kill "$AGENT_PID"; wait "$AGENT_PID" || fail "the agent did not stop cleanly on SIGTERM"
"$RIVET" --cmdline-file "$WORK/cmdline" --state-dir "$WORK/state" --simulate-power --allow-loop-devices \
  > "$WORK/rivet-restarted.log" 2>&1 &
AGENT_PID=$!
IMGSUM=$(sha256sum "$STATE/images/disk.raw" | cut -d' ' -f1)
api PATCH "/v1/nodes/$NODE" "[{\"op\": \"add\", \"path\": \"/instance_info\", \"value\":
  {\"image_source\": \"$IMG/disk.raw\", \"image_os_hash_algo\": \"sha256\", \"image_os_hash_value\": \"$IMGSUM\",
   \"image_disk_format\": \"raw\"}}]" >/dev/null
api PUT "/v1/nodes/$NODE/states/provision" '{"target": "active"}' >/dev/null
wait_state "$NODE" active 180 || fail "fast-track deploy did not finish"
total=$((SECONDS - ts))
cmp -n "$(stat -c %s "$STATE/images/disk.raw")" "$STATE/images/disk.raw" "$LOOP" || fail "the disk does not hold the image"
grep -c '"command_name":"execute_deploy_step"' "$WORK/state/commands.json" >/dev/null || fail "no deploy step in the agent's history"
agent_done
grep -q "this boot was inspected already" "$WORK/rivet-restarted.log" || fail "the restarted agent inspected again"
grep -q "the conductor masked the token; using the one this boot already has" "$WORK/rivet-restarted.log" \
  || fail "the restarted agent did not keep its token"
echo "ok: fast-track: one boot inspected, cleaned and deployed the node (the agent restarted once, keeping its token); the disk holds the image"
echo "time inspect_to_active ${total}s (inspection ${inspected}s)"

# --- 3. auto-discovery of an unknown machine ----------------------------------------------
# At API 1.80 the conductor answers the post with the new node's UUID only (no token), and
# the agent looks the node up by it: the older path, with the real conductor.
api PUT "/v1/nodes/$NODE/maintenance" '{"reason": "next test"}' >/dev/null
api DELETE "/v1/nodes/$NODE" >/dev/null
PORT=$(free_port)
echo "ipa-inspection-callback-url=$API/v1/continue_inspection ipa-api-url=$API BOOTIF=$HOST_MAC \
ipa-inspection-collectors=default ipa-ironic-api-version=1.80 ipa-listen-host=127.0.0.1 ipa-listen-port=$PORT \
ipa-advertise-host=127.0.0.1 ipa-advertise-port=$PORT" > "$WORK/cmdline2"
"$RIVET" --cmdline-file "$WORK/cmdline2" --state-dir "$WORK/state2" --simulate-power --allow-loop-devices \
  > "$WORK/rivet-discovery.log" 2>&1 &
AGENT_PID=$!
NEW=
for _ in $(seq 1 120); do
  NEW=$(api GET "/v1/ports?address=$HOST_MAC&fields=node_uuid" | "$PY" -c 'import json,sys
p=json.load(sys.stdin)["ports"]; print(p[0]["node_uuid"] if p else "")')
  [[ -n "$NEW" ]] && break
  sleep 0.5
done
[[ -n "$NEW" ]] || fail "no node was discovered (no port for $HOST_MAC)"
for _ in $(seq 1 120); do
  grep -q "agent API serving.*$NEW" "$WORK/rivet-discovery.log" && break
  sleep 0.5
done
grep -q "agent API serving.*$NEW" "$WORK/rivet-discovery.log" || fail "the agent did not take up the discovered node $NEW"
grep -q "looking up the node.*node=Some(\"$NEW\")" "$WORK/rivet-discovery.log" || fail "the agent did not look the node up by the returned UUID"
for _ in $(seq 1 60); do
  [[ "$(node_field "$NEW" "['driver_internal_info'].get('agent_url')")" == https://* ]] && break
  sleep 0.5
done
[[ "$(node_field "$NEW" "['driver_internal_info'].get('agent_url')")" == "https://127.0.0.1:$PORT" ]] \
  || fail "the discovered node got no heartbeat from the agent"
driver=$(node_field "$NEW" "['driver']")
state=$(node_field "$NEW" "['provision_state']")
api GET "/v1/nodes/$NEW/inventory" | "$PY" -c "import json,sys; d=json.load(sys.stdin)
assert any(i['mac_address'] == '$HOST_MAC' for i in d['inventory']['interfaces'])
assert d['plugin_data'].get('auto_discovered') is True, d['plugin_data'].keys()" || fail "the discovered node's inventory is not stored"
echo "ok: discovery: Ironic enrolled $NEW ($driver, $state) with a port for $HOST_MAC; the agent heartbeats to it"
kill "$AGENT_PID" 2>/dev/null || true; wait "$AGENT_PID" 2>/dev/null || true; AGENT_PID=
echo "PASS inspect ($((SECONDS - t0)) s)"
