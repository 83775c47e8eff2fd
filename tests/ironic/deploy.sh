#!/usr/bin/env bash
# The real Ironic 39 conductor (PyPI, standalone on 127.0.0.1, [agent]require_tls=true as by
# default) deploys with Rivet as the agent:
#   1. whole-disk raw image with a config drive onto a loop device named by the node's root
#      device hint: lookup, HTTPS heartbeats with the auto-TLS certificate (stored by the
#      conductor and used to verify every call), deploy steps, write_image, get_partition_uuids,
#      install_bootloader (UEFI), power_off → node "active"; the disk holds the image's
#      partitions byte for byte, plus a config-2 partition in its last 64 MiB whose ISO holds
#      the meta_data.json the conductor built;
#   2. the same with a wrong checksum → node "deploy failed", last_error names the checksum,
#      the conductor collected Rivet's logs, and the disk has no partition table.
# usage: tests/ironic/deploy.sh   (RIVET=path/to/rivet to test another build)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RIVET=${RIVET:-$ROOT/target/debug/rivet}
export STATE=${STATE:-${TMPDIR:-/tmp}/rivet-ironic-deploy}
# shellcheck source=../../scripts/ironic/lib.sh
source "$ROOT/scripts/ironic/lib.sh"
init_session
t0=$SECONDS
[[ -x "$RIVET" ]] || fail "no rivet binary at $RIVET (cargo build first)"

REQUIRE_TLS=true HEARTBEAT_TIMEOUT=30 "$ROOT/scripts/ironic/run-ironic.sh" start
grep -q '^require_tls = true' "$STATE/ironic.conf" || fail "Ironic must run with require_tls = true"

"$ROOT/scripts/ironic/make-test-image.sh" "$STATE/images/wholedisk.raw" 48
SUM=$(sha256sum "$STATE/images/wholedisk.raw" | cut -d' ' -f1)
truncate -s 160M "$WORK/disk.img"
LOOP=$(losetup --find --show "$WORK/disk.img")
echo "target disk: $LOOP"

MAC=52:54:00:12:34:56
NODE=$(enroll_available node0 "$MAC" "{\"name\": \"$LOOP\"}")

deploy() { # LABEL CHECKSUM [PROVISION_BODY]
  start_deploy "$1" "{\"image_source\": \"$IMG/wholedisk.raw\", \"image_os_hash_algo\": \"sha256\",
    \"image_os_hash_value\": \"$2\", \"image_disk_format\": \"raw\", \"root_gb\": \"1\"}" "${3:-}"
}

# --- 1. a good deploy -------------------------------------------------------------------
deploy good "$SUM" '{"target": "active", "configdrive": {"meta_data": {"hostname": "node0.rivet.example"}, "user_data": "#cloud-config\n"}}'
for _ in $(seq 1 100); do
  [[ "$(node_field "$NODE" "['driver_internal_info'].get('agent_url')")" == https://* ]] && break
  sleep 0.1
done
agent_url=$(node_field "$NODE" "['driver_internal_info'].get('agent_url')")
[[ "$agent_url" == "https://127.0.0.1:$PORT" ]] || fail "agent_url is '$agent_url'"
cmp -s "$STATE/certificates/$NODE.crt" "$WORK/state-good/agent.crt" \
  || fail "the conductor's stored CA for the node is not Rivet's certificate"
echo "ok: conductor recorded agent_url $agent_url and Rivet's auto-TLS certificate"
wait_state "$NODE" active 180 || fail "node did not become active"
echo "ok: node active ($((SECONDS - DSTART)) s after the agent started)"
agent_done
"$ROOT/scripts/boot-timeline.sh" "$WORK/rivet-good.log" "agent on the host"
# From the first accepted heartbeat to the conductor's power-off (the deploy's last command),
# on the agent's clock: the pace the conductor and the agent's heartbeats set together.
"$PY" - "$WORK/rivet-good.log" <<'PY' || fail "cannot read the deploy's pace from the agent log"
import re, sys
from datetime import datetime
t = {}
for line in open(sys.argv[1], errors="replace"):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    m = re.match(r"(\S+Z)\s", line)
    if not m:
        continue
    ts = datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
    if "phase=heartbeat_accepted" in line:
        t.setdefault("hb", ts)
    if "power_off" in line:
        t.setdefault("off", ts)
print("   first heartbeat accepted -> power-off asked: %.2f s" % (t["off"] - t["hb"]))
PY
grep -q "Agent command deploy.get_deploy_steps for node $NODE returned result {'deploy_steps': {'GenericHardwareManager': \[{[^]]*'step': 'write_image'.*error None, HTTP status code 200" "$STATE/ironic.log" \
  || fail "conductor log does not show a successful deploy.get_deploy_steps"
"$PY" - "$WORK/state-good/commands.json" <<'PY' || fail "unexpected command history"
import json, sys
h = [(c["command_name"], c["command_status"]) for c in json.load(open(sys.argv[1]))]
print("   history:", h)
want = [("get_deploy_steps", "SUCCEEDED"), ("execute_deploy_step", "SUCCEEDED"), ("get_partition_uuids", "SUCCEEDED"),
        ("install_bootloader", "SUCCEEDED"), ("power_off", "SUCCEEDED")]
it = iter(h)
assert all(w in it for w in want), h
PY
# The image's partitions are on the disk byte for byte (the GPT itself gained an entry).
IMG_SIZE=$(stat -c %s "$STATE/images/wholedisk.raw")
cmp -i 1048576:1048576 -n $((IMG_SIZE - 1048576)) "$STATE/images/wholedisk.raw" "$LOOP" || fail "disk differs from the image"
sgdisk -p "$LOOP" | tee "$WORK/pt" | grep -q "EF00  EFI" || fail "partition table not read back"
sgdisk -v "$LOOP" | grep -q "No problems found" || fail "sgdisk -v finds problems"
cd_start=$(awk '/config-2/ {print $2}' "$WORK/pt")
[[ -n "$cd_start" ]] || fail "no config-2 partition: $(cat "$WORK/pt")"
blkid -p -O $((cd_start * 512)) "$LOOP" | grep -q 'LABEL="config-2".*TYPE="iso9660"' || fail "config-2 partition holds no config-2 ISO"
dd if="$LOOP" of="$WORK/cd.iso" bs=512 skip="$cd_start" count=131072 status=none
isoinfo -R -i "$WORK/cd.iso" -x /openstack/latest/meta_data.json | grep -q "node0.rivet.example" || fail "meta_data.json not on the config drive"
echo "ok: config drive in partition at sector $cd_start holds the conductor's meta_data.json"
sig=$(od -An -tx4 -j440 -N4 "$STATE/images/wholedisk.raw" | tr -d ' ')
[[ "$(node_field "$NODE" "['driver_internal_info'].get('root_uuid_or_disk_id')")" == "0x$sig" ]] || fail "root_uuid_or_disk_id"
echo "ok: the image's partitions are on the disk byte for byte, GPT verified, disk id 0x$sig recorded"

# --- 2. a deploy with a wrong checksum --------------------------------------------------
api PUT "/v1/nodes/$NODE/states/provision" '{"target": "deleted"}' >/dev/null
wait_state "$NODE" available 60
deploy bad "$(printf '0%.0s' $(seq 1 64))"
wait_state "$NODE" "deploy failed" 120 || fail "node did not reach 'deploy failed'"
err=$(node_field "$NODE" "['last_error']")
echo "last_error: $err"
[[ "$err" == *"checksum mismatch"* ]] || fail "last_error does not name the checksum"
ls "$STATE"/deploy-logs/*.tar.gz >/dev/null 2>&1 || fail "conductor stored no ramdisk logs"
if blkid -p "$LOOP" >/dev/null 2>&1; then fail "the disk still carries a signature after a failed deploy"; fi
echo "ok: failed deploy left no partition table; logs collected"
echo "PASS deploy ($((SECONDS - t0)) s)"
