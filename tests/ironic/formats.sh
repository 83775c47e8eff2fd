#!/usr/bin/env bash
# The real Ironic 39 conductor (standalone, HTTPS to the agent with its token) deploys with
# Rivet, one node, one loop device, three flows, each timed:
#   1. whole-disk qcow2 with a config drive: node active; the disk equals the raw image it was
#      made from (past the GPT's first MiB, which gained the config-2 entry); the config drive
#      holds the conductor's meta_data.json;
#   2. whole-disk zstd with a config drive: the same checks;
#   3. partition image, UEFI: node active; sgdisk/blkid show ESP (vfat, efi-part, 550 MiB),
#      config drive and root last (1 GiB); the root file system is the image byte for byte
#      and fsck-clean; the ESP got the image's /boot/efi/EFI files (install_bootloader); the
#      root uuid Ironic stored is the one blkid reads;
#   4. a 4Kn disk (losetup --sector-size 4096): a 512-byte-sector GPT image is
#      refused before writing (deploy failed, last_error names the sector sizes, the disk's old
#      data untouched but for the wiped ends);
#   5. a 4096-byte-sector GPT image with a config drive onto that disk: active, and the config
#      drive is a vfat CONFIG-2 copy (ISO9660 cannot live on 4Kn).
# usage: tests/ironic/formats.sh   (RIVET=path/to/rivet to test another build)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RIVET=${RIVET:-$ROOT/target/debug/rivet}
export STATE=${STATE:-${TMPDIR:-/tmp}/rivet-ironic-formats}
# shellcheck source=../../scripts/ironic/lib.sh
source "$ROOT/scripts/ironic/lib.sh"
init_session
t0=$SECONDS
[[ -x "$RIVET" ]] || fail "no rivet binary at $RIVET (cargo build first)"

REQUIRE_TLS=true HEARTBEAT_TIMEOUT=30 "$ROOT/scripts/ironic/run-ironic.sh" start
I=$STATE/images
"$ROOT/scripts/ironic/make-test-image.sh" "$I/wd.raw" 48
qemu-img convert -f raw -O qcow2 -c "$I/wd.raw" "$I/wd.qcow2"
zstd -q -f -3 "$I/wd.raw" -o "$I/wd.raw.zst"
# The partition image: an ext4 root file system with the boot files a distribution puts in
# /boot/efi, and some content.
mkdir -p "$WORK/rootfs/boot/efi/EFI/BOOT" "$WORK/rootfs/etc"
printf 'MZ rivet partition-image loader\n' > "$WORK/rootfs/boot/efi/EFI/BOOT/BOOTX64.EFI"
# A hostile tenant's additions: links from the EFI tree to a file of the host (the agent's
# ramdisk), a FIFO and a device node. None of them may reach the ESP.
CANARY="RIVET-CANARY-$RANDOM$RANDOM$RANDOM"
echo "$CANARY" > "$WORK/canary"
ln -s "$WORK/canary" "$WORK/rootfs/boot/efi/EFI/BOOT/leak.efi"
ln -s "$WORK" "$WORK/rootfs/boot/efi/EFI/leakdir"
mkfifo "$WORK/rootfs/boot/efi/EFI/BOOT/fifo"
mknod "$WORK/rootfs/boot/efi/EFI/BOOT/null" c 1 3
echo "rivet-partition-test" > "$WORK/rootfs/etc/hostname"
head -c 3000000 /dev/urandom > "$WORK/rootfs/etc/blob"
ROOT_UUID=4d6f6e21-0000-4000-8000-0000000000a1
mkfs.ext4 -q -F -U "$ROOT_UUID" -L root -d "$WORK/rootfs" "$I/part.raw" 64M
printf 'kernel\n' > "$I/vmlinuz"; printf 'initrd\n' > "$I/initrd"
sum() { sha256sum "$1" | cut -d' ' -f1; }

# Sparse: the partition layout needs ESP 550 MiB + config drive + root 1 GiB.
truncate -s 2G "$WORK/disk.img"
LOOP=$(losetup --find --show "$WORK/disk.img")
echo "target disk: $LOOP"
MAC=52:54:00:12:34:57
NODE=$(enroll_available node1 "$MAC" "{\"name\": \"$LOOP\"}")
CD='{"target": "active", "configdrive": {"meta_data": {"hostname": "node1.rivet.example"}}}'

check_config_drive() {
  sgdisk -p "$LOOP" > "$WORK/pt"
  local s; s=$(awk '/config-2/ {print $2}' "$WORK/pt")
  [[ -n "$s" ]] || fail "no config-2 partition: $(cat "$WORK/pt")"
  dd if="$LOOP" of="$WORK/cd.iso" bs=512 skip="$s" count=131072 status=none
  isoinfo -R -i "$WORK/cd.iso" -x /openstack/latest/meta_data.json | grep -q "node1.rivet.example" \
    || fail "meta_data.json not on the config drive"
}

undeploy() {
  api PUT "/v1/nodes/$NODE/states/provision" '{"target": "deleted"}' >/dev/null
  wait_state "$NODE" available 60
}

whole_disk() { # LABEL FILE FORMAT
  local label=$1 file=$2 fmt=$3
  # Old data on the disk, as on a reused machine.
  dd if=/dev/urandom of="$LOOP" bs=1M count=60 status=none
  start_deploy "$label" "{\"image_source\": \"$IMG/$file\", \"image_os_hash_algo\": \"sha256\",
    \"image_os_hash_value\": \"$(sum "$I/$file")\", \"image_disk_format\": \"$fmt\", \"root_gb\": \"1\"}" "$CD"
  wait_state "$NODE" active 180 || fail "$label: node did not become active"
  local took=$((SECONDS - DSTART))
  agent_done
  local size; size=$(stat -c %s "$I/wd.raw")
  cmp -i 1048576:1048576 -n $((size - 1048576)) "$I/wd.raw" "$LOOP" || fail "$label: disk differs from the image"
  sgdisk -v "$LOOP" | grep -q "No problems found" || fail "$label: sgdisk -v finds problems"
  check_config_drive
  echo "ok: $label: node active ${took} s after the agent started; disk = image; config drive holds meta_data.json"
  echo "time $label ${took}s"
  undeploy
}

whole_disk qcow2 wd.qcow2 qcow2
whole_disk zstd wd.raw.zst raw

# --- partition image, UEFI --------------------------------------------------------------
start_deploy partition "{\"image_source\": \"$IMG/part.raw\", \"image_os_hash_algo\": \"sha256\",
  \"image_os_hash_value\": \"$(sum "$I/part.raw")\", \"image_disk_format\": \"raw\",
  \"image_type\": \"partition\", \"kernel\": \"$IMG/vmlinuz\", \"ramdisk\": \"$IMG/initrd\",
  \"root_gb\": \"1\", \"deploy_boot_mode\": \"uefi\"}" "$CD"
wait_state "$NODE" active 180 || fail "partition: node did not become active"
took=$((SECONDS - DSTART))
agent_done
sgdisk -p "$LOOP" | tee "$WORK/pt"
sgdisk -v "$LOOP" | grep -q "No problems found" || fail "partition: sgdisk -v finds problems"
row() { awk -v n="$1" '$1 == n {print $2, $3, $6}' "$WORK/pt"; }
read -r esp_s esp_e esp_t < <(row 1)
read -r cd_s _ _ < <(row 2)
read -r root_s root_e root_t < <(row 3)
[[ "$esp_s" == 2048 && $((esp_e - esp_s + 1)) == $((550 * 2048)) && "$esp_t" == EF00 ]] \
  || fail "ESP is not 550 MiB at 1 MiB"
[[ -n "$cd_s" && $((root_e - root_s + 1)) == $((1024 * 2048)) && "$root_t" == 8300 ]] \
  || fail "root is not the last partition of 1 GiB"
blkid -p -O $((esp_s * 512)) "$LOOP" | grep -q 'LABEL="efi-part".*TYPE="vfat"' || fail "ESP is not vfat efi-part"
blkid -p -O $((cd_s * 512)) "$LOOP" | grep -q 'LABEL="config-2"' || fail "no config drive in partition 2"
blkid -p -O $((root_s * 512)) "$LOOP" | grep -q "UUID=\"$ROOT_UUID\"" || fail "root file system UUID"
size=$(stat -c %s "$I/part.raw")
cmp -i 0:$((root_s * 512)) -n "$size" "$I/part.raw" "$LOOP" || fail "root partition differs from the image"
dd if="$LOOP" of="$WORK/root.img" bs=1M skip=$((root_s / 2048)) count=$((size >> 20)) status=none
e2fsck -fn "$WORK/root.img" >/dev/null 2>&1 || fail "root file system is not clean"
mtype -i "$LOOP@@$((esp_s * 512))" ::/EFI/BOOT/BOOTX64.EFI | grep -q "partition-image loader" \
  || fail "the ESP did not get the image's boot loader"
esp_files=$(mdir -/ -b -i "$LOOP@@$((esp_s * 512))" ::/EFI 2>/dev/null | tr 'A-Z' 'a-z')
[[ "$esp_files" == *bootx64.efi* ]] || fail "cannot list the ESP: $esp_files"
for f in leak fifo null; do
  [[ "$esp_files" != *"$f"* ]] || fail "the image's $f reached the ESP: $esp_files"
done
if dd if="$LOOP" bs=1M count=600 status=none | grep -aqF "$CANARY"; then
  fail "a file of the host reached the tenant's disk through the image's symlink"
fi
echo "ok: partition: the image's links to host files, FIFO and device node stayed off the ESP"
stored=$(node_field "$NODE" "['driver_internal_info'].get('root_uuid_or_disk_id')")
[[ "$stored" == "$ROOT_UUID" ]] || fail "Ironic stored root uuid '$stored', blkid reads $ROOT_UUID"
"$PY" - "$WORK/state-partition/commands.json" <<'PY' || fail "unexpected command history"
import json, sys
h = [(c["command_name"], c["command_status"]) for c in json.load(open(sys.argv[1]))]
want = [("execute_deploy_step", "SUCCEEDED"), ("get_partition_uuids", "SUCCEEDED"),
        ("install_bootloader", "SUCCEEDED"), ("power_off", "SUCCEEDED")]
it = iter(h)
assert all(w in it for w in want), h
PY
echo "ok: partition: node active ${took} s after the agent started; layout, labels, sizes, root fs, ESP and root uuid verified"
echo "time partition ${took}s"

# --- inject_files: a deploy step asked for in the provision request, plus the node's ------
# --- properties.inject_files; the partition image again, files read back with debugfs ------
undeploy
api PATCH "/v1/nodes/$NODE" "[{\"op\": \"add\", \"path\": \"/properties/inject_files\",
  \"value\": [{\"path\": \"/etc/motd\", \"content\": \"$(printf 'from the node\n' | base64 -w0)\"}]}]" >/dev/null
INJECT="{\"target\": \"active\", \"deploy_steps\": [{\"interface\": \"deploy\", \"step\": \"inject_files\",
  \"priority\": 55, \"args\": {\"files\": [
    {\"path\": \"/etc/rivet/agent.conf\", \"content\": \"$(printf 'secret=1\n' | base64 -w0)\", \"mode\": 384},
    {\"path\": \"/etc/hostname\", \"deleted\": true}]}}]}"
start_deploy inject "{\"image_source\": \"$IMG/part.raw\", \"image_os_hash_algo\": \"sha256\",
  \"image_os_hash_value\": \"$(sum "$I/part.raw")\", \"image_disk_format\": \"raw\",
  \"image_type\": \"partition\", \"kernel\": \"$IMG/vmlinuz\", \"ramdisk\": \"$IMG/initrd\",
  \"root_gb\": \"1\", \"deploy_boot_mode\": \"uefi\"}" "$INJECT"
wait_state "$NODE" active 180 || fail "inject: node did not become active"
took=$((SECONDS - DSTART))
agent_done
sgdisk -p "$LOOP" > "$WORK/pt"
read -r root_s _ _ < <(row 2)
dd if="$LOOP" of="$WORK/root.img" bs=1M skip=$((root_s / 2048)) count=64 status=none
dbg() { debugfs -R "$1" "$WORK/root.img" 2>/dev/null; }
[[ "$(dbg 'cat /etc/rivet/agent.conf')" == "secret=1" ]] || fail "inject: /etc/rivet/agent.conf not injected"
dbg 'stat /etc/rivet/agent.conf' | grep -q "Mode:  0600" || fail "inject: agent.conf mode is not 0600"
[[ "$(dbg 'cat /etc/motd')" == "from the node" ]] || fail "inject: the node's inject_files were not applied"
dbg 'ls /etc' | grep -qw hostname && fail "inject: /etc/hostname was not deleted"
e2fsck -fn "$WORK/root.img" >/dev/null 2>&1 || fail "inject: root file system is not clean"
"$PY" - "$WORK/state-inject/commands.json" <<'PY' || fail "inject: the step did not run after write_image"
import json, sys
h = [(c["command_name"], c["command_status"], (c.get("command_result") or {}).get("deploy_step", {}).get("step"))
     for c in json.load(open(sys.argv[1]))]
steps = [s for n, st, s in h if n == "execute_deploy_step" and st == "SUCCEEDED"]
assert steps == ["write_image", "inject_files"], h
PY
api PATCH "/v1/nodes/$NODE" '[{"op": "remove", "path": "/properties/inject_files"}]' >/dev/null
echo "ok: inject: node active ${took} s after the agent started; files written, mode set, file deleted, node property applied"
echo "time inject ${took}s"

# --- 4Kn --------------------------------------------------------------------------------
undeploy
truncate -s 48M "$I/wd4k.raw"
L4=$(losetup --sector-size 4096 --find --show "$I/wd4k.raw")
sgdisk -o -n 1:0:+8M -t 1:ef00 -n 2:0:0 "$L4" >/dev/null
losetup -d "$L4"
# Its ESP (4096-byte FAT sectors) with the fallback loader, for install_bootloader.
mkfs.fat -S 4096 --offset 256 -n EFI "$I/wd4k.raw" 8192 >/dev/null 2>&1
mmd -i "$I/wd4k.raw@@1048576" ::/EFI ::/EFI/BOOT
mcopy -i "$I/wd4k.raw@@1048576" "$WORK/rootfs/boot/efi/EFI/BOOT/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
head -c 8M /dev/urandom | dd of="$I/wd4k.raw" bs=1M seek=20 conv=notrunc status=none
truncate -s 160M "$WORK/disk4k.img"
losetup -d "$LOOP"; LOOP=
LOOP=$(losetup --sector-size 4096 --find --show "$WORK/disk4k.img")
dd if=/dev/urandom of="$LOOP" bs=1M count=8 seek=30 status=none
api PATCH "/v1/nodes/$NODE" "[{\"op\": \"add\", \"path\": \"/properties/root_device\", \"value\": {\"name\": \"$LOOP\"}}]" >/dev/null
before=$(dd if="$LOOP" bs=1M skip=30 count=8 status=none | sha256sum)
start_deploy 4kn-refused "{\"image_source\": \"$IMG/wd.raw\", \"image_os_hash_algo\": \"sha256\",
  \"image_os_hash_value\": \"$(sum "$I/wd.raw")\", \"image_disk_format\": \"raw\", \"root_gb\": \"1\"}"
wait_state "$NODE" "deploy failed" 120 || fail "4Kn: a 512-byte GPT image was not refused"
took=$((SECONDS - DSTART))
err=$(node_field "$NODE" "['last_error']")
[[ "$err" == *"512-byte sectors"*"4096-byte logical sectors"* ]] || fail "4Kn: last_error: $err"
[[ "$(dd if="$LOOP" bs=1M skip=30 count=8 status=none | sha256sum)" == "$before" ]] \
  || fail "4Kn: the disk was written before the refusal"
if blkid -p "$LOOP" >/dev/null 2>&1; then fail "4Kn: a signature is left on the disk"; fi
echo "ok: 4kn-refused: deploy failed ${took} s after the agent started: $err"
echo "time 4kn-refused ${took}s"
kill "$AGENT_PID" 2>/dev/null || true; wait "$AGENT_PID" 2>/dev/null || true; AGENT_PID=
api PUT "/v1/nodes/$NODE/states/provision" '{"target": "deleted"}' >/dev/null
wait_state "$NODE" available 60

start_deploy 4kn "{\"image_source\": \"$IMG/wd4k.raw\", \"image_os_hash_algo\": \"sha256\",
  \"image_os_hash_value\": \"$(sum "$I/wd4k.raw")\", \"image_disk_format\": \"raw\", \"root_gb\": \"1\"}" "$CD"
wait_state "$NODE" active 180 || fail "4Kn: node did not become active"
took=$((SECONDS - DSTART))
agent_done
size=$(stat -c %s "$I/wd4k.raw")
cmp -i 1048576:1048576 -n $((size - 1048576)) "$I/wd4k.raw" "$LOOP" || fail "4Kn: disk differs from the image"
sgdisk -p "$LOOP" > "$WORK/pt"
cd_s=$(awk '/config-2/ {print $2}' "$WORK/pt")
[[ -n "$cd_s" ]] || fail "4Kn: no config-2 partition: $(cat "$WORK/pt")"
blkid -p -O $((cd_s * 4096)) "$LOOP" | grep -q 'LABEL="CONFIG-2".*TYPE="vfat"' || fail "4Kn: config drive is not vfat CONFIG-2"
mtype -i "$LOOP@@$((cd_s * 4096))" ::/openstack/latest/meta_data.json | grep -q "node1.rivet.example" \
  || fail "4Kn: meta_data.json not on the vfat config drive"
echo "ok: 4kn: node active ${took} s after the agent started; disk = image; config drive is vfat CONFIG-2"
echo "time 4kn ${took}s"
echo "PASS formats ($((SECONDS - t0)) s)"
