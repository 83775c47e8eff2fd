#!/usr/bin/env bash
# The product end to end: the real Ironic 39 conductor (standalone, require_tls) deploys QEMU
# VMs (TCG, UEFI/OVMF) booted from Rivet's minimal ramdisk with ipa-api-url on the kernel
# command line. Each VM has two blank disks, an NVMe one (512-byte sectors) and a virtio one
# with 4096-byte sectors (4Kn); the node's root device hint names one of them by serial. Flows:
#  1. whole-disk qcow2 + config drive onto the NVMe disk;
#  2. partition image (qcow2) onto the 4Kn disk, GRUB installed by the agent from the image
#     (grub-install in a chroot): the image carries no boot loader of its own;
#  3. BIOS (SeaBIOS): whole-disk raw image whose GRUB sits in the MBR and BIOS boot partition;
#  4. the diskimage-builder ramdisk (systemd, rivet.service) boots, heartbeats and runs a
#     manual cleaning (erase_devices_metadata) for the real conductor;
#  5. inspection and fast-track: the conductor inspects a VM booted from the minimal ramdisk
#     (its NVMe and 4Kn disks and its NIC land in the stored inventory), then the same agent
#     cleans and deploys it without a reboot, and the VM boots its disk;
#  6. software RAID (raid interface agent): a VM with two NVMe disks and the 4Kn one; a manual
#     cleaning creates RAID-1 root (3 GiB) + RAID-0 data (MAX) on the NVMe disks, the same
#     agent (fast-track) deploys the whole-disk image onto the root array with a config drive,
#     and the VM boots with either NVMe disk removed; then delete_configuration leaves both
#     without RAID signatures, and the 4Kn disk is never written. Then the BIOS variant: a
#     RAID-1 root under SeaBIOS, GRUB from the image on both members, either one boots.
# Flows 1-3 end with the node active, the agent powering the VM off for real, the other disk
# untouched, and the VM booting its deployed disk to the test image's RIVET-BOOT-MARKER.
#
# Networking: QEMU user mode with restrict=on. hostfwd 127.0.0.1:PORT → the agent's :9999
# (the agent advertises 127.0.0.1:PORT, so the conductor reaches it and its auto-TLS
# certificate is for that address); guestfwd 10.0.2.100:{6385,8089} → the host's 127.0.0.1,
# and the ramdisk's rivet.forward= makes those ports answer on the guest's own 127.0.0.1, so
# the node's URLs (API, image) are the same inside and outside.
# usage: tests/vm/deploy.sh    (RAMDISK=dir with rivet.kernel/rivet.initramfs; RIVET for its build;
#                               FLOWS="wholedisk partition bios dib inspect raid" to choose flows;
#                               DIB_RAMDISK=dir with a prebuilt DIB rivet.kernel/rivet.initramfs)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ALL_FLOWS="wholedisk partition bios dib inspect raid"
FLOWS=${FLOWS:-$ALL_FLOWS}
for f in $FLOWS; do
  [[ " $ALL_FLOWS " == *" $f "* ]] || { echo "FAIL: unknown flow '$f' in FLOWS (known: $ALL_FLOWS)" >&2; exit 2; }
done
want() { [[ " $FLOWS " == *" $1 "* ]]; }
export STATE=${STATE:-${TMPDIR:-/tmp}/rivet-vm-deploy}
# shellcheck source=../../scripts/ironic/lib.sh
source "$ROOT/scripts/ironic/lib.sh"
init_session
t0=$SECONDS
RAMDISK=${RAMDISK:-$WORK/ramdisk}
if [[ ! -f "$RAMDISK/rivet.initramfs" ]]; then
  # Uncompressed: inflating gzip in emulated code costs seconds under TCG.
  COMPRESS=none "$ROOT/scripts/build-initramfs.sh" "$RAMDISK"
fi
QEMU_PID=
vm_cleanup() {
  if [[ -n "$QEMU_PID" ]]; then kill "$QEMU_PID" 2>/dev/null || true; wait "$QEMU_PID" 2>/dev/null || true; fi
  session_cleanup
}
trap vm_cleanup EXIT

REQUIRE_TLS=true HEARTBEAT_TIMEOUT=30 BIOS_BOOTLOADER=true "$ROOT/scripts/ironic/run-ironic.sh" start
I=$STATE/images
"$ROOT/tests/vm/make-boot-image.sh" "$I/boot.raw" "$RAMDISK/rivet.kernel"
qemu-img convert -f raw -O qcow2 -c "$I/boot.raw" "$I/boot.qcow2"
PART_UUID=4d6f6e21-0000-4000-8000-0000000000b2
"$ROOT/tests/vm/make-partition-image.sh" "$I/part.raw" "$RAMDISK/rivet.kernel" "$PART_UUID"
qemu-img convert -f raw -O qcow2 -c "$I/part.raw" "$I/part.qcow2"
sum() { sha256sum "$1" | cut -d' ' -f1; }
printf 'kernel\n' > "$I/vmlinuz"; printf 'initrd\n' > "$I/initrd"

# Every console log of a ramdisk boot: each must show the agent's first accepted heartbeat.
RAMDISK_LOGS=()
MAC=52:54:00:12:34:60
NODE=$(enroll_available vm0 "$MAC" '{"serial": "nvmetarget"}')
BB=$(command -v busybox)
FW=uefi
firmware() { # VARS_FILE: OVMF for UEFI flows; QEMU's SeaBIOS otherwise
  [[ "$FW" == uefi ]] || return 0
  cp /usr/share/OVMF/OVMF_VARS_4M.fd "$1"
  echo "-drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd -drive if=pflash,format=raw,file=$1"
}
disks() {
  echo "-drive file=$WORK/nvme.qcow2,if=none,id=d0,format=qcow2 -device nvme,drive=d0,serial=nvmetarget"
  echo "-drive file=$WORK/v4k.qcow2,if=none,id=d1,format=qcow2"
  echo "-device virtio-blk-pci,drive=d1,serial=v4ktarget,logical_block_size=4096,physical_block_size=4096"
}

# boot_ramdisk LABEL MAC PARAMS: a VM (NIC with MAC, the two disks) booted from the minimal
# ramdisk with the agent's kernel PARAMS; sets PORT (the agent's API on the host) and QEMU_PID.
boot_ramdisk() {
  local label=$1 mac=$2 params=$3
  PORT=$(free_port)
  # shellcheck disable=SC2046
  qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp 2 -m 1024 -nodefaults -no-reboot \
    $(firmware "$WORK/vars.fd") \
    -kernel "$RAMDISK/rivet.kernel" -initrd "$RAMDISK/rivet.initramfs" \
    -append "console=ttyS0 quiet $params BOOTIF=$mac ipa-advertise-host=127.0.0.1 ipa-advertise-port=$PORT rivet.forward=6385,8089" \
    -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$PORT-:9999,guestfwd=tcp:10.0.2.100:6385-cmd:$BB nc 127.0.0.1 6385,guestfwd=tcp:10.0.2.100:8089-cmd:$BB nc 127.0.0.1 8089" \
    -device "virtio-net-pci,netdev=n0,mac=$mac" $(disks) \
    -serial "file:$WORK/serial-$label.log" -monitor none -display none &
  QEMU_PID=$!
  RAMDISK_LOGS+=("$WORK/serial-$label.log")
}

# hb_after NODE START_EPOCH: seconds (0.1) from START to the heartbeat the conductor recorded
# last (its own clock, not this script's polling); at the first sight of agent_url, the first.
hb_after() {
  api GET "/v1/nodes/$1" | "$PY" -c "
import datetime, json, sys
d = json.load(sys.stdin)['driver_internal_info']['agent_last_heartbeat']
t = datetime.datetime.fromisoformat(d.replace('Z', '+00:00'))
t = t if t.tzinfo else t.replace(tzinfo=datetime.timezone.utc)
print('%.1f' % (t.timestamp() - float(sys.argv[1])))" "$2"
}

# deploy_vm LABEL HINT_SERIAL INSTANCE_INFO PROVISION_BODY: fresh blank disks, a VM booted
# from the ramdisk, the node deployed and the VM powered off by the agent.
deploy_vm() {
  local label=$1 hint=$2 info=$3 body=$4
  # 8 GiB each (sparse): without root device hints before lookup, the agent waits for a disk
  # of at least 4 GiB, as IPA does.
  qemu-img create -q -f qcow2 "$WORK/nvme.qcow2" 8G
  qemu-img create -q -f qcow2 "$WORK/v4k.qcow2" 8G
  api PATCH "/v1/nodes/$NODE" "[{\"op\": \"add\", \"path\": \"/properties/root_device\", \"value\": {\"serial\": \"$hint\"}},
    {\"op\": \"add\", \"path\": \"/properties/capabilities\", \"value\": \"boot_mode:$FW\"},
    {\"op\": \"add\", \"path\": \"/instance_info\", \"value\": $info}]" >/dev/null
  api PUT "/v1/nodes/$NODE/states/provision" "$body" >/dev/null
  wait_state "$NODE" "wait call-back" 60
  local qemu_t0; qemu_t0=$(date +%s.%N)
  boot_ramdisk "$label" "$MAC" "ipa-api-url=http://127.0.0.1:6385"
  # First heartbeat: the conductor records the agent's URL.
  for _ in $(seq 1 600); do
    [[ "$(node_field "$NODE" "['driver_internal_info'].get('agent_url')")" == https://* ]] && break
    kill -0 "$QEMU_PID" 2>/dev/null || fail "$label: QEMU exited: $(tail -20 "$WORK/serial-$label.log")"
    sleep 0.5
  done
  [[ "$(node_field "$NODE" "['driver_internal_info'].get('agent_url')")" == "https://127.0.0.1:$PORT" ]] \
    || fail "$label: no heartbeat from the VM: $(tail -30 "$WORK/serial-$label.log")"
  local hbp hb; hbp=$(hb_after "$NODE" "$qemu_t0"); hb=$(printf '%.0f' "$hbp")
  echo "ok: $label: VM booted the ramdisk and heartbeat over HTTPS ${hbp} s after QEMU started"
  echo "time ${label}_boot_to_heartbeat ${hb}s"
  local dstart=$SECONDS
  wait_state "$NODE" active 600 || fail "$label: node did not become active: $(tail -30 "$WORK/serial-$label.log")"
  echo "ok: $label: node active $((SECONDS - dstart)) s after the first heartbeat"
  echo "time ${label}_deploy $((SECONDS - dstart))s"
  # The agent powered the VM off (a real power-off inside the VM: QEMU exits).
  for _ in $(seq 1 120); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$QEMU_PID" 2>/dev/null && fail "$label: the VM did not power off after the deploy"
  wait "$QEMU_PID" || true
  QEMU_PID=
  grep -q "rivet starting" "$WORK/serial-$label.log" || fail "$label: no agent output on the serial console"
  grep -a "root device chosen" -A3 "$WORK/serial-$label.log" | tr -d '\r' | head -4 || true
}

# blank FILE: the disk holds nothing but zeros: the qcow2 file's map has no extent with data
# (a plain write, even of zeros, makes one; a write-zeroes request leaves zero clusters, which
# read as the blank disk they are). qemu-img check leaves its allocated-clusters count out
# when it is zero, so the map is read instead, and an unreadable map is a failure.
blank() {
  local n
  n=$(qemu-img map --output=json "$1" | "$PY" -c 'import json,sys
m = json.load(sys.stdin)
assert isinstance(m, list) and m, m
print(sum(1 for e in m if e["data"]))') || fail "cannot read the map of $1 (qemu-img map)"
  [[ "$n" =~ ^[0-9]+$ ]] || fail "qemu-img map gave '$n' data extents for $1"
  [[ "$n" == 0 ]]
}

# boot_disk LABEL EXPECT: boot the VM from its disks; the marker line must contain EXPECT.
boot_disk() {
  local label=$1 expect=$2
  local b2=$SECONDS
  # shellcheck disable=SC2046
  qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp 2 -m 512 -nodefaults -no-reboot \
    $(firmware "$WORK/vars2.fd") $(disks) \
    -serial "file:$WORK/serial-$label-boot.log" -monitor none -display none &
  QEMU_PID=$!
  for _ in $(seq 1 360); do
    grep -q "RIVET-BOOT-MARKER" "$WORK/serial-$label-boot.log" 2>/dev/null && break
    kill -0 "$QEMU_PID" 2>/dev/null || break
    sleep 0.5
  done
  grep -q "RIVET-BOOT-MARKER" "$WORK/serial-$label-boot.log" \
    || fail "$label: the deployed disk did not boot: $(tail -c 2000 "$WORK/serial-$label-boot.log")"
  local line; line=$(grep -a -o "RIVET-BOOT-MARKER.*" "$WORK/serial-$label-boot.log" | tr -d '\r' | head -1)
  [[ "$line" == *"$expect"* ]] || fail "$label: booted, but not through the expected path ($expect): $line"
  echo "ok: $label: the VM booted from its deployed disk ($((SECONDS - b2)) s):"
  echo "$line"
  echo "time ${label}_boot_deployed $((SECONDS - b2))s"
  for _ in $(seq 1 60); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.5; done
  kill "$QEMU_PID" 2>/dev/null || true; wait "$QEMU_PID" 2>/dev/null || true
  QEMU_PID=
}

undeploy() {
  api PUT "/v1/nodes/$NODE/states/provision" '{"target": "deleted"}' >/dev/null
  wait_state "$NODE" available 120 || fail "node did not return to available"
}

# --- 1. whole-disk qcow2 + config drive onto the NVMe disk --------------------------------
if want wholedisk; then
deploy_vm wholedisk nvmetarget "{\"image_source\": \"$IMG/boot.qcow2\", \"image_os_hash_algo\": \"sha256\",
  \"image_os_hash_value\": \"$(sum "$I/boot.qcow2")\", \"image_disk_format\": \"qcow2\", \"root_gb\": \"1\"}" \
  '{"target": "active", "configdrive": {"meta_data": {"hostname": "vm0.rivet.example"}}}'
# The disk holds the image (past the GPT's first MiB, which gained the config-2 entry).
qemu-img convert -f qcow2 -O raw "$WORK/nvme.qcow2" "$WORK/vm-disk.raw"
size=$(stat -c %s "$I/boot.raw")
cmp -i 1048576:1048576 -n $((size - 1048576)) "$I/boot.raw" "$WORK/vm-disk.raw" || fail "the NVMe disk differs from the image"
sgdisk -p "$WORK/vm-disk.raw" | grep -q "config-2" || fail "no config-2 partition on the NVMe disk"
rm -f "$WORK/vm-disk.raw"
blank "$WORK/v4k.qcow2" || fail "wholedisk: the 4Kn disk the hint did not name was written"
echo "ok: wholedisk: the NVMe disk holds the image and a config drive; the 4Kn disk is untouched"
boot_disk wholedisk "rivet.flow=uefi"
undeploy
fi

# --- 2. partition image onto the 4Kn disk, GRUB from the image ----------------------------
if want partition; then
deploy_vm partition v4ktarget "{\"image_source\": \"$IMG/part.qcow2\", \"image_os_hash_algo\": \"sha256\",
  \"image_os_hash_value\": \"$(sum "$I/part.qcow2")\", \"image_disk_format\": \"qcow2\",
  \"image_type\": \"partition\", \"kernel\": \"$IMG/vmlinuz\", \"ramdisk\": \"$IMG/initrd\",
  \"root_gb\": \"1\", \"deploy_boot_mode\": \"uefi\"}" '{"target": "active"}'
grep -a "grub-install" "$WORK/serial-partition.log" | tr -d '\r' | tail -2 || true
stored=$(node_field "$NODE" "['driver_internal_info'].get('root_uuid_or_disk_id')")
[[ "$stored" == "$PART_UUID" ]] || fail "partition: Ironic stored root uuid '$stored', expected $PART_UUID"
blank "$WORK/nvme.qcow2" || fail "partition: the NVMe disk the hint did not name was written"
echo "ok: partition: root uuid stored by Ironic matches the image; the NVMe disk is untouched"
boot_disk partition "rivet.flow=partition-grub"
undeploy
fi
# --- 3. BIOS: the ramdisk boots under SeaBIOS; whole-disk raw image (GRUB in the MBR and the
# --- BIOS boot partition) onto the NVMe disk ------------------------------------------------
if want bios; then
FW=bios
# Fake management offers only PXE as a boot device; in BIOS mode the conductor sets "disk",
# which the noop management interface accepts.
api PATCH "/v1/nodes/$NODE" '[{"op": "replace", "path": "/management_interface", "value": "noop"}]' >/dev/null
deploy_vm bios nvmetarget "{\"image_source\": \"$IMG/boot.raw\", \"image_os_hash_algo\": \"sha256\",
  \"image_os_hash_value\": \"$(sum "$I/boot.raw")\", \"image_disk_format\": \"raw\", \"root_gb\": \"1\"}" \
  '{"target": "active"}'
qemu-img convert -f qcow2 -O raw "$WORK/nvme.qcow2" "$WORK/vm-disk.raw"
cmp -n "$(stat -c %s "$I/boot.raw")" "$I/boot.raw" "$WORK/vm-disk.raw" || fail "bios: the NVMe disk differs from the image"
rm -f "$WORK/vm-disk.raw"
blank "$WORK/v4k.qcow2" || fail "bios: the 4Kn disk the hint did not name was written"
echo "ok: bios: the NVMe disk holds the image byte for byte; the 4Kn disk is untouched"
boot_disk bios "rivet.flow=bios"
undeploy
api PATCH "/v1/nodes/$NODE" '[{"op": "replace", "path": "/management_interface", "value": "fake"}]' >/dev/null
fi
# --- 4. the diskimage-builder ramdisk: boot, heartbeat, manual cleaning ------------------
# No forwarder runs in the DIB ramdisk (that is test plumbing of the minimal one): the agent
# reaches the conductor at the guestfwd address directly, and cleaning needs no image URL.
if want dib; then
FW=uefi
DIB=${DIB_RAMDISK:-$WORK/dib}
if [[ ! -f "$DIB/rivet.initramfs" ]]; then
  bstart=$SECONDS
  RIVET_STEPS_DIR="$ROOT/tests/fixtures/steps.d" "$ROOT/scripts/build-dib-ramdisk.sh" "$DIB" | tail -1
  echo "time dib_build $((SECONDS - bstart))s"
fi
echo "dib ramdisk: initramfs $(($(stat -c %s "$DIB/rivet.initramfs") >> 20)) MiB, kernel $(($(stat -c %s "$DIB/rivet.kernel") >> 20)) MiB"
qemu-img create -q -f qcow2 "$WORK/nvme.qcow2" 8G
qemu-img create -q -f qcow2 "$WORK/v4k.qcow2" 8G
# Burn-in as operators configure it (driver_info), a few seconds each: stress-ng and fio ship
# in the DIB ramdisk.
api PATCH "/v1/nodes/$NODE" '[{"op": "replace", "path": "/management_interface", "value": "fake"},
  {"op": "add", "path": "/properties/capabilities", "value": "boot_mode:uefi"},
  {"op": "add", "path": "/driver_info/agent_burnin_cpu_timeout", "value": 3},
  {"op": "add", "path": "/driver_info/agent_burnin_vm_timeout", "value": 3},
  {"op": "add", "path": "/driver_info/agent_burnin_vm_vm-bytes", "value": "10%"}]' >/dev/null
api PUT "/v1/nodes/$NODE/states/provision" '{"target": "manage"}' >/dev/null
wait_state "$NODE" manageable 60 || fail "dib: node did not become manageable"
api PUT "/v1/nodes/$NODE/states/provision" \
  '{"target": "clean", "clean_steps": [{"interface": "deploy", "step": "erase_devices_metadata"},
    {"interface": "deploy", "step": "burnin_cpu"}, {"interface": "deploy", "step": "burnin_memory"},
    {"interface": "deploy", "step": "write_marker", "args": {"text": "from-the-dib-ramdisk"}}]}' >/dev/null
wait_state "$NODE" "clean wait" 60 || fail "dib: node did not wait for the agent"
PORT=$(free_port)
qemu_t0=$(date +%s.%N)
# shellcheck disable=SC2046
qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp 2 -m 2048 -nodefaults -no-reboot \
  $(firmware "$WORK/vars.fd") \
  -kernel "$DIB/rivet.kernel" -initrd "$DIB/rivet.initramfs" \
  -append "console=ttyS0 ipa-api-url=http://10.0.2.100:6385 BOOTIF=$MAC ipa-advertise-host=127.0.0.1 ipa-advertise-port=$PORT" \
  -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$PORT-:9999,guestfwd=tcp:10.0.2.100:6385-cmd:$BB nc 127.0.0.1 6385" \
  -device "virtio-net-pci,netdev=n0,mac=$MAC" $(disks) \
  -serial "file:$WORK/serial-dib.log" -monitor none -display none &
QEMU_PID=$!
RAMDISK_LOGS+=("$WORK/serial-dib.log")
for _ in $(seq 1 1200); do
  [[ "$(node_field "$NODE" "['driver_internal_info'].get('agent_url')")" == https://* ]] && break
  kill -0 "$QEMU_PID" 2>/dev/null || fail "dib: QEMU exited: $(tail -20 "$WORK/serial-dib.log")"
  sleep 0.5
done
[[ "$(node_field "$NODE" "['driver_internal_info'].get('agent_url')")" == "https://127.0.0.1:$PORT" ]] \
  || fail "dib: no heartbeat from the VM: $(tail -c 3000 "$WORK/serial-dib.log")"
hbp=$(hb_after "$NODE" "$qemu_t0"); hb=$(printf '%.0f' "$hbp")
echo "ok: dib: the DIB ramdisk booted (systemd, rivet.service) and heartbeat over HTTPS ${hbp} s after QEMU started"
echo "time dib_boot_to_heartbeat ${hb}s"
cstart=$SECONDS
wait_state "$NODE" manageable 600 || fail "dib: cleaning did not finish: $(tail -c 3000 "$WORK/serial-dib.log")"
echo "ok: dib: manual cleaning (erase_devices_metadata, burnin_cpu, burnin_memory) done $((SECONDS - cstart)) s after the first heartbeat"
echo "time dib_clean $((SECONDS - cstart))s"
kill "$QEMU_PID" 2>/dev/null || true; wait "$QEMU_PID" 2>/dev/null || true
QEMU_PID=
grep -a -q "metadata erased" "$WORK/serial-dib.log" || fail "dib: the agent's console output does not show the erase"
for s in cpu vm; do
  grep -a "execute_clean_step: result" "$STATE/ironic.log" | grep "'tool': 'stress-ng'" | grep -q "'stressor': '$s'" \
    || fail "dib: the conductor did not get stress-ng's $s burn-in result"
done
echo "ok: dib: stress-ng burnt in the CPUs and the memory for 3 s each; the conductor read both results"
grep -a "execute_clean_step: result" "$STATE/ironic.log" | grep -q "'text': 'from-the-dib-ramdisk'" \
  || fail "dib: the custom step shipped in the ramdisk (RIVET_STEPS_DIR) did not run"
echo "ok: dib: the custom step shipped through RIVET_STEPS_DIR ran: $(tr -d '\r' <"$WORK/serial-dib.log" | grep -a -o "marker written to [a-z/0-9]*" | head -1)"
api PUT "/v1/nodes/$NODE/states/provision" '{"target": "provide"}' >/dev/null
wait_state "$NODE" available 120 || fail "dib: node did not return to available"
fi
# --- 5. inspection, then fast-track cleaning and deployment by the same agent ----------------
# Fast-track is switched on for this node only (driver_info.fast_track), so the flows above
# keep rebooting between operations. The node has its own MAC: inspection finds nodes by the
# ports of the MACs the VM reports.
if want inspect; then
FW=uefi
IMAC=52:54:00:12:34:61
qemu-img create -q -f qcow2 "$WORK/nvme.qcow2" 8G
qemu-img create -q -f qcow2 "$WORK/v4k.qcow2" 8G
INODE=$(api POST /v1/nodes "{\"name\": \"vm-inspect\", \"driver\": \"fake-hardware\",
    \"boot_interface\": \"fake\", \"deploy_interface\": \"direct\", \"power_interface\": \"fake\",
    \"management_interface\": \"fake\", \"network_interface\": \"noop\", \"inspect_interface\": \"agent\",
    \"driver_info\": {\"fast_track\": true},
    \"properties\": {\"vendor\": \"lenovo\", \"root_device\": {\"serial\": \"nvmetarget\"}}}" | field "['uuid']")
api POST /v1/ports "{\"node_uuid\": \"$INODE\", \"address\": \"$IMAC\"}" >/dev/null
api PUT "/v1/nodes/$INODE/states/provision" '{"target": "manage"}' >/dev/null
wait_state "$INODE" manageable 60 || fail "inspect: node did not become manageable"
api PUT "/v1/nodes/$INODE/states/provision" '{"target": "inspect"}' >/dev/null
wait_state "$INODE" "inspect wait" 60 || fail "inspect: node did not wait for inspection data"
istart=$SECONDS
boot_ramdisk inspect "$IMAC" "ipa-inspection-callback-url=http://127.0.0.1:6385/v1/continue_inspection \
ipa-api-url=http://127.0.0.1:6385 ipa-inspection-collectors=default,logs,pci-devices,numa-topology,dmi-decode,usb-devices \
ipa-collect-lldp=1 ipa-lldp-timeout=2"
wait_state "$INODE" manageable 600 || fail "inspect: inspection did not finish: $(tail -c 3000 "$WORK/serial-inspect.log")"
insp=$((SECONDS - istart))
echo "ok: inspect: the conductor processed the VM's inspection data ${insp} s after QEMU started"
echo "time inspect_boot_to_inspected ${insp}s"
api GET "/v1/nodes/$INODE/inventory" | "$PY" -c "import json,sys
d=json.load(sys.stdin); inv=d['inventory']; pd=d['plugin_data']
serials={x.get('serial'): x for x in inv['disks']}
assert 'nvmetarget' in serials and 'v4ktarget' in serials, [x['name'] for x in inv['disks']]
assert serials['v4ktarget']['logical_sectors'] == 4096, serials['v4ktarget']
assert any(i['mac_address'] == '$IMAC' and i['ipv4_address'] for i in inv['interfaces']), inv['interfaces']
assert inv['boot']['current_boot_mode'] == 'uefi'
assert pd['root_disk']['serial'] in ('nvmetarget', 'v4ktarget')
assert pd['dmi']['bios'].get('Vendor'), pd['dmi']
assert pd.get('error') is None, pd['error']
print('stored inventory: disks', sorted(serials), 'NIC $IMAC, memory', inv['memory']['physical_mb'], 'MiB, BIOS', pd['dmi']['bios']['Vendor'])
" || fail "inspect: the stored inventory lacks the VM's disks or NIC"
props=$(node_field "$INODE" "['properties']")
[[ "$props" == *'"local_gb": 7'* && "$props" == *"boot_mode:uefi"* && "$props" == *'"cpu_arch": "x86_64"'* ]] \
  || fail "inspect: node properties not set from the inventory: $props"
echo "ok: inspect: NVMe and 4Kn disks, the NIC and SMBIOS data stored; local_gb, boot_mode, cpu_arch set: $props"
fstart=$SECONDS
api PUT "/v1/nodes/$INODE/states/provision" \
  '{"target": "clean", "clean_steps": [{"interface": "deploy", "step": "erase_devices_metadata"}]}' >/dev/null
wait_state "$INODE" manageable 300 || fail "inspect: fast-track cleaning failed: $(tail -c 3000 "$WORK/serial-inspect.log")"
api PUT "/v1/nodes/$INODE/states/provision" '{"target": "provide"}' >/dev/null
wait_state "$INODE" available 120 || fail "inspect: node did not become available"
api PATCH "/v1/nodes/$INODE" "[{\"op\": \"add\", \"path\": \"/instance_info\", \"value\": {\"image_source\": \"$IMG/boot.qcow2\",
  \"image_os_hash_algo\": \"sha256\", \"image_os_hash_value\": \"$(sum "$I/boot.qcow2")\", \"image_disk_format\": \"qcow2\"}}]" >/dev/null
api PUT "/v1/nodes/$INODE/states/provision" '{"target": "active"}' >/dev/null
wait_state "$INODE" active 600 || fail "inspect: fast-track deploy failed: $(tail -c 3000 "$WORK/serial-inspect.log")"
echo "ok: inspect: the same agent cleaned and deployed the node ($((SECONDS - fstart)) s after inspection)"
echo "time inspect_to_active $((SECONDS - istart))s"
for _ in $(seq 1 120); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.5; done
kill -0 "$QEMU_PID" 2>/dev/null && fail "inspect: the VM did not power off after the deploy"
wait "$QEMU_PID" || true
QEMU_PID=
starts=$(grep -a -c "starting rivet" "$WORK/serial-inspect.log" || true)
[[ "$starts" == 1 ]] || fail "inspect: the agent was started $starts times; fast-track means one process"
# (The 4Kn disk is not blank: erase_devices_metadata cleans every disk, as IPA's does.)
qemu-img convert -f qcow2 -O raw "$WORK/nvme.qcow2" "$WORK/vm-disk.raw"
cmp -n "$(stat -c %s "$I/boot.raw")" "$I/boot.raw" "$WORK/vm-disk.raw" || fail "inspect: the NVMe disk differs from the image"
rm -f "$WORK/vm-disk.raw"
echo "ok: inspect: the NVMe disk the hint named holds the image byte for byte"
boot_disk inspect "rivet.flow=uefi"
fi
# --- 6. software RAID: create (manual cleaning), deploy onto the root array, boot with either
# --- member gone, delete ----------------------------------------------------------------------
if want raid; then
FW=uefi
RMAC=52:54:00:12:34:62
for d in raida raidb; do qemu-img create -q -f qcow2 "$WORK/$d.qcow2" 8G; done
qemu-img create -q -f qcow2 "$WORK/v4k.qcow2" 8G
MEMBERS="raida raidb"
disks() { # the NVMe members present ($MEMBERS) and the 4Kn disk, which no step may touch
  local d
  for d in $MEMBERS; do echo "-drive file=$WORK/$d.qcow2,if=none,id=$d,format=qcow2 -device nvme,drive=$d,serial=$d"; done
  echo "-drive file=$WORK/v4k.qcow2,if=none,id=d1,format=qcow2"
  echo "-device virtio-blk-pci,drive=d1,serial=v4ktarget,logical_block_size=4096,physical_block_size=4096"
}
# md superblocks: v1.2 4 KiB into the array partitions (root at 551 MiB, data 3 GiB later),
# v1.0 8 KiB before the end of the ESP mirror's partition (1 MiB + 550 MiB).
md_magic() { # RAW: how many of the three superblocks carry md's magic
  "$PY" - "$1" <<'PY'
import sys
f = open(sys.argv[1], "rb"); M = 1 << 20
n = 0
for off in (551 * M + 4096, 551 * M + (3 << 30) + 4096, 551 * M - 8192):
    f.seek(off); n += f.read(4) == bytes.fromhex("fc4e2ba9")
print(n)
PY
}
# vendor lenovo: in UEFI mode the conductor then sets no boot device (fake management has no
# "disk"), as for the inspection node.
RNODE=$(api POST /v1/nodes "{\"name\": \"vm-raid\", \"driver\": \"fake-hardware\",
    \"boot_interface\": \"fake\", \"deploy_interface\": \"direct\", \"power_interface\": \"fake\",
    \"management_interface\": \"fake\", \"network_interface\": \"noop\", \"raid_interface\": \"agent\",
    \"driver_info\": {\"fast_track\": true},
    \"properties\": {\"vendor\": \"lenovo\", \"capabilities\": \"boot_mode:uefi\"}}" | field "['uuid']")
api POST /v1/ports "{\"node_uuid\": \"$RNODE\", \"address\": \"$RMAC\"}" >/dev/null
api PUT "/v1/nodes/$RNODE/states/raid" '{"logical_disks": [
  {"size_gb": 3, "raid_level": "1", "controller": "software", "volume_name": "root", "is_root_volume": true,
   "physical_disks": [{"serial": "raida"}, {"serial": "raidb"}]},
  {"size_gb": "MAX", "raid_level": "0", "controller": "software", "volume_name": "data",
   "physical_disks": [{"serial": "raida"}, {"serial": "raidb"}]}]}' >/dev/null
api PUT "/v1/nodes/$RNODE/states/provision" '{"target": "manage"}' >/dev/null
wait_state "$RNODE" manageable 60 || fail "raid: node did not become manageable"
api PUT "/v1/nodes/$RNODE/states/provision" \
  '{"target": "clean", "clean_steps": [{"interface": "raid", "step": "create_configuration"}]}' >/dev/null
wait_state "$RNODE" "clean wait" 60 || fail "raid: node did not wait for the agent"
rstart=$SECONDS
boot_ramdisk raid "$RMAC" "ipa-api-url=http://127.0.0.1:6385"
wait_state "$RNODE" manageable 600 || fail "raid: create_configuration failed: $(node_field "$RNODE" "['last_error']") $(tail -c 3000 "$WORK/serial-raid.log")"
echo "ok: raid: create_configuration done $((SECONDS - rstart)) s after QEMU started"
echo "time raid_create $((SECONDS - rstart))s"
node_field "$RNODE" "['raid_config']" | "$PY" -c "import json,sys
c=json.load(sys.stdin); l=c['logical_disks']
assert [x['volume_name'] for x in l] == ['root', 'data'] and l[0]['raid_level'] == '1', c
assert c.get('last_updated'), c
print('raid_config stored by the conductor:', [(x['volume_name'], x['raid_level'], x['size_gb']) for x in l])" \
  || fail "raid: the conductor did not store the RAID configuration"
props=$(node_field "$RNODE" "['properties']")
[[ "$props" == *"raid_level:1"* && "$props" == *'"local_gb": 3'* ]] || fail "raid: properties not updated: $props"
grep -a "RAID array created" "$WORK/serial-raid.log" | tr -d '\r' | sed 's/^/  /' || true
api PUT "/v1/nodes/$RNODE/states/provision" '{"target": "provide"}' >/dev/null
wait_state "$RNODE" available 120 || fail "raid: node did not become available"
api PATCH "/v1/nodes/$RNODE" "[{\"op\": \"add\", \"path\": \"/instance_info\", \"value\": {\"image_source\": \"$IMG/boot.qcow2\",
  \"image_os_hash_algo\": \"sha256\", \"image_os_hash_value\": \"$(sum "$I/boot.qcow2")\", \"image_disk_format\": \"qcow2\"}}]" >/dev/null
dstart=$SECONDS
api PUT "/v1/nodes/$RNODE/states/provision" \
  '{"target": "active", "configdrive": {"meta_data": {"hostname": "raid.rivet.example"}}}' >/dev/null
wait_state "$RNODE" active 600 || fail "raid: deploy failed: $(node_field "$RNODE" "['last_error']") $(tail -c 3000 "$WORK/serial-raid.log")"
echo "ok: raid: the same agent deployed onto the root array ($((SECONDS - dstart)) s)"
echo "time raid_deploy $((SECONDS - dstart))s"
for _ in $(seq 1 120); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.5; done
kill -0 "$QEMU_PID" 2>/dev/null && fail "raid: the VM did not power off after the deploy"
wait "$QEMU_PID" || true
QEMU_PID=
grep -a -q "the software RAID root volume" "$WORK/serial-raid.log" || fail "raid: the agent did not choose the root array"
grep -a "ESP mirror created\|image ESP copied" "$WORK/serial-raid.log" | tr -d '\r' | sed 's/^/  /' || true
for d in raida raidb; do
  qemu-img convert -f qcow2 -O raw "$WORK/$d.qcow2" "$WORK/$d.raw"
  [[ "$(md_magic "$WORK/$d.raw")" == 3 ]] || fail "raid: $d does not carry the root, data and ESP members"
  # Each root member holds the image with its config drive, from the superblock's data offset.
  "$PY" - "$WORK/$d.raw" "$WORK/$d-root.raw" <<'PY'
import struct, sys
f = open(sys.argv[1], "rb"); M = 1 << 20
f.seek(551 * M + 4096 + 128); data = struct.unpack("<Q", f.read(8))[0] * 512
f.seek(551 * M + data); open(sys.argv[2], "wb").write(f.read(64 * M))
PY
  cmp -i 1048576:1048576 -n $(($(stat -c %s "$I/boot.raw") - 1048576)) "$I/boot.raw" "$WORK/$d-root.raw" \
    || fail "raid: the root member on $d does not hold the image"
  sgdisk -p "$WORK/$d-root.raw" 2>/dev/null | grep -q "config-2" || fail "raid: no config drive in the image on $d"
  rm -f "$WORK/$d.raw" "$WORK/$d-root.raw"
done
blank "$WORK/v4k.qcow2" || fail "raid: the 4Kn disk was written"
echo "ok: raid: both NVMe disks carry root (the image and a config drive), data and ESP members; the 4Kn disk is untouched"
boot_disk raid "rivet.flow=uefi"
MEMBERS=raida boot_disk raid-without-b "rivet.flow=uefi"
MEMBERS=raidb boot_disk raid-without-a "rivet.flow=uefi"
undeploy_raid() {
  api PUT "/v1/nodes/$RNODE/states/provision" '{"target": "deleted"}' >/dev/null
  wait_state "$RNODE" available 120 || fail "raid: node did not return to available"
}
undeploy_raid
api PUT "/v1/nodes/$RNODE/states/provision" '{"target": "manage"}' >/dev/null
wait_state "$RNODE" manageable 60 || fail "raid: node did not become manageable"
# A metadata erase with the "data" volume kept by skip_block_devices: the root array (beside
# it) is erased through the md device, "data" and the ESP mirror beside it are kept, and the
# member disks are never erased behind their arrays' backs.
api PATCH "/v1/nodes/$RNODE" '[{"op": "add", "path": "/properties/skip_block_devices", "value": [{"volume_name": "data"}]}]' >/dev/null
api PUT "/v1/nodes/$RNODE/states/provision" \
  '{"target": "clean", "clean_steps": [{"interface": "deploy", "step": "erase_devices_metadata"}]}' >/dev/null
wait_state "$RNODE" "clean wait" 60 || fail "raid: node did not wait for the agent"
xstart=$SECONDS
MEMBERS="raida raidb"
boot_ramdisk raid-delete "$RMAC" "ipa-api-url=http://127.0.0.1:6385"
wait_state "$RNODE" manageable 600 || fail "raid: erase_devices_metadata failed: $(node_field "$RNODE" "['last_error']") $(tail -c 3000 "$WORK/serial-raid-delete.log")"
echo "time raid_erase_metadata $((SECONDS - xstart))s"
# The serial console is a terminal: the agent's log lines carry colours.
elog=$(tr -d '\r' <"$WORK/serial-raid-delete.log" | sed 's/\x1b\[[0-9;]*m//g')
disks_in() { grep -a "$1" <<<"$elog" | grep -a "${2:-}" | grep -o 'disk=/dev/[a-z0-9]*' | sort | tr '\n' ' ' || true; }
erased=$(disks_in "metadata erased")
kept=$(disks_in "kept by volume name")
members=$(disks_in "not erased" "member of")
echo "  erased: $erased; kept by volume name: $kept; members left to their arrays: $members"
[[ "$erased" == "disk=/dev/md"[0-9]*" disk=/dev/vda " ]] || fail "raid: the metadata erase did not erase exactly the root array and the 4Kn disk: $erased"
[[ "$kept" == "disk=/dev/md"[0-9]*" disk=/dev/md"[0-9]*" " ]] || fail "raid: the data array and the ESP mirror were not both kept: $kept"
[[ "$members" == "disk=/dev/nvme0n1 disk=/dev/nvme1n1 " ]] || fail "raid: the member disks were not left to their arrays: $members"
# The same agent (fast track) deletes the arrays once nothing is kept.
api PATCH "/v1/nodes/$RNODE" '[{"op": "remove", "path": "/properties/skip_block_devices"}]' >/dev/null
xstart=$SECONDS
api PUT "/v1/nodes/$RNODE/states/provision" \
  '{"target": "clean", "clean_steps": [{"interface": "raid", "step": "delete_configuration"}]}' >/dev/null
wait_state "$RNODE" manageable 600 || fail "raid: delete_configuration failed: $(node_field "$RNODE" "['last_error']") $(tail -c 3000 "$WORK/serial-raid-delete.log")"
echo "time raid_delete $((SECONDS - xstart))s"
kill "$QEMU_PID" 2>/dev/null || true; wait "$QEMU_PID" 2>/dev/null || true
QEMU_PID=
[[ "$(node_field "$RNODE" "['raid_config']")" == "{}" ]] || fail "raid: the conductor kept a RAID configuration"
for d in raida raidb; do
  qemu-img convert -f qcow2 -O raw "$WORK/$d.qcow2" "$WORK/$d.raw"
  [[ "$(md_magic "$WORK/$d.raw")" == 0 ]] || fail "raid: $d still carries md superblocks"
  sig=$(blkid -p -o value -s TYPE "$WORK/$d.raw" || true)
  [[ -z "$sig" ]] || fail "raid: $d still carries $sig"
  rm -f "$WORK/$d.raw"
done
blank "$WORK/v4k.qcow2" || fail "raid: the 4Kn disk was written"
echo "ok: raid: delete_configuration left both members without RAID signatures or tables; the 4Kn disk is untouched"
# BIOS (SeaBIOS): a RAID-1 root; the image's own grub-install writes GRUB to both members.
# The VM is off: tell the conductor, which then drops the fast-track agent's token.
api PUT "/v1/nodes/$RNODE/states/power" '{"target": "power off"}' >/dev/null
for _ in $(seq 1 60); do [[ "$(node_field "$RNODE" "['power_state']")" == "power off" ]] && break; sleep 0.5; done
[[ "$(node_field "$RNODE" "['power_state']")" == "power off" ]] \
  || fail "raid: the conductor did not record the node as powered off"
FW=bios
BIOS_UUID=4d6f6e21-0000-4000-8000-0000000000b5
"$ROOT/tests/vm/make-raid-bios-image.sh" "$I/raidbios.raw" "$RAMDISK/rivet.kernel" "$BIOS_UUID"
api PATCH "/v1/nodes/$RNODE" '[{"op": "replace", "path": "/management_interface", "value": "noop"},
  {"op": "replace", "path": "/properties/capabilities", "value": "boot_mode:bios,disk_label:gpt"}]' >/dev/null
api PUT "/v1/nodes/$RNODE/states/raid" '{"logical_disks": [
  {"size_gb": 3, "raid_level": "1", "controller": "software", "volume_name": "root", "is_root_volume": true,
   "physical_disks": [{"serial": "raida"}, {"serial": "raidb"}]}]}' >/dev/null
api PUT "/v1/nodes/$RNODE/states/provision" \
  '{"target": "clean", "clean_steps": [{"interface": "raid", "step": "create_configuration"}]}' >/dev/null
wait_state "$RNODE" "clean wait" 60 || fail "raid-bios: node did not wait for the agent"
bstart=$SECONDS
boot_ramdisk raid-bios "$RMAC" "ipa-api-url=http://127.0.0.1:6385"
wait_state "$RNODE" manageable 600 || fail "raid-bios: create_configuration failed: $(node_field "$RNODE" "['last_error']") $(tail -c 3000 "$WORK/serial-raid-bios.log")"
api PUT "/v1/nodes/$RNODE/states/provision" '{"target": "provide"}' >/dev/null
wait_state "$RNODE" available 120 || fail "raid-bios: node did not become available"
api PATCH "/v1/nodes/$RNODE" "[{\"op\": \"add\", \"path\": \"/instance_info\", \"value\": {\"image_source\": \"$IMG/raidbios.raw\",
  \"image_os_hash_algo\": \"sha256\", \"image_os_hash_value\": \"$(sum "$I/raidbios.raw")\", \"image_disk_format\": \"raw\"}}]" >/dev/null
api PUT "/v1/nodes/$RNODE/states/provision" '{"target": "active"}' >/dev/null
wait_state "$RNODE" active 600 || fail "raid-bios: deploy failed: $(node_field "$RNODE" "['last_error']") $(tail -c 3000 "$WORK/serial-raid-bios.log")"
for _ in $(seq 1 120); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.5; done
kill -0 "$QEMU_PID" 2>/dev/null && fail "raid-bios: the VM did not power off after the deploy"
wait "$QEMU_PID" || true
QEMU_PID=
echo "ok: raid-bios: RAID-1 created and the image deployed onto it in $((SECONDS - bstart)) s"
echo "time raid-bios_create_and_deploy $((SECONDS - bstart))s"
grep -a "grub-install.*for BIOS" "$WORK/serial-raid-bios.log" | tr -d '\r' | tail -1 | cut -c1-300 || true
MEMBERS=raida boot_disk raid-bios-without-b "rivet.flow=raid-bios"
MEMBERS=raidb boot_disk raid-bios-without-a "rivet.flow=raid-bios"
blank "$WORK/v4k.qcow2" || fail "raid-bios: the 4Kn disk was written"
# An array nothing keeps (no skip_block_devices volume): a metadata erase stops it, zeroes its
# superblocks and erases its member disks whole (their tables, BIOS boot partitions, GRUB),
# as it would a tenant's own array; nothing of it is left to become the next tenant's root.
undeploy_raid
api PUT "/v1/nodes/$RNODE/states/provision" '{"target": "manage"}' >/dev/null
wait_state "$RNODE" manageable 60 || fail "raid-bios: node did not become manageable"
api PUT "/v1/nodes/$RNODE/states/provision" \
  '{"target": "clean", "clean_steps": [{"interface": "deploy", "step": "erase_devices_metadata"}]}' >/dev/null
wait_state "$RNODE" "clean wait" 60 || fail "raid-bios: node did not wait for the agent"
xstart=$SECONDS
MEMBERS="raida raidb"
boot_ramdisk raid-erase "$RMAC" "ipa-api-url=http://127.0.0.1:6385"
wait_state "$RNODE" manageable 600 || fail "raid-bios: erase_devices_metadata failed: $(node_field "$RNODE" "['last_error']") $(tail -c 3000 "$WORK/serial-raid-erase.log")"
echo "time raid_erase_unkept_array $((SECONDS - xstart))s"
kill "$QEMU_PID" 2>/dev/null || true; wait "$QEMU_PID" 2>/dev/null || true
QEMU_PID=
elog=$(tr -d '\r' <"$WORK/serial-raid-erase.log" | sed 's/\x1b\[[0-9;]*m//g')
grep -a -q "array not kept: stopped and its superblocks zeroed" <<<"$elog" \
  || fail "raid-bios: the agent did not stop the array before the erase"
erased=$(disks_in "metadata erased")
[[ "$erased" == *"disk=/dev/nvme0n1 "*"disk=/dev/nvme1n1 "* ]] || fail "raid-bios: the member disks were not erased whole: $erased"
for d in raida raidb; do
  qemu-img convert -f qcow2 -O raw "$WORK/$d.qcow2" "$WORK/$d.raw"
  [[ "$(md_magic "$WORK/$d.raw")" == 0 ]] || fail "raid-bios: $d still carries an md superblock"
  sig=$(blkid -p -o value -s TYPE "$WORK/$d.raw" || true)
  pt=$(blkid -p -o value -s PTTYPE "$WORK/$d.raw" || true)
  [[ -z "$sig$pt" ]] || fail "raid-bios: $d still carries '$sig$pt'"
  rm -f "$WORK/$d.raw"
done
echo "ok: raid-bios: the array nothing kept was stopped, its superblocks zeroed and both member disks erased whole"
fi
# Where each ramdisk boot spent its time, from its console (guest clock).
((${#RAMDISK_LOGS[@]} > 0)) || fail "no ramdisk was booted (FLOWS='$FLOWS')"
for log in "${RAMDISK_LOGS[@]}"; do
  flow=${log##*/serial-}; flow=${flow%.log}
  grep -a -q "boot timeline" "$log" || fail "$flow: the agent's console shows no boot timeline"
  "$ROOT/scripts/boot-timeline.sh" "$log" "$flow"
  grep -a -q -E "phase=\"?heartbeat_accepted" <(sed 's/\x1b\[[0-9;]*m//g' "$log") \
    || fail "$flow: the agent did not log its first accepted heartbeat in the timeline"
done
echo "PASS vm deploy ($((SECONDS - t0)) s)"
