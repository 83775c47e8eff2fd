#!/usr/bin/env bash
# The product end to end: the real Ironic 39 conductor (standalone, require_tls) deploys a QEMU
# VM (TCG, UEFI/OVMF, virtio disk and NIC) booted from Rivet's minimal ramdisk with
# ipa-api-url on its kernel command line. Whole-disk qcow2 image with a config drive → node
# active; the agent powers the VM off for real; the harness boots the VM again from its disk
# and waits for the test image's RIVET-BOOT-MARKER on the serial console.
#
# Networking: QEMU user mode with restrict=on. hostfwd 127.0.0.1:PORT → the agent's :9999
# (the agent advertises 127.0.0.1:PORT, so the conductor reaches it and its auto-TLS
# certificate is for that address); guestfwd 10.0.2.100:{6385,8089} → the host's 127.0.0.1,
# and the ramdisk's rivet.forward= makes those ports answer on the guest's own 127.0.0.1, so
# the node's URLs (API, image) are the same inside and outside.
# usage: tests/vm/deploy.sh    (RAMDISK=dir with rivet.kernel/rivet.initramfs; RIVET for its build)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
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

REQUIRE_TLS=true HEARTBEAT_TIMEOUT=30 "$ROOT/scripts/ironic/run-ironic.sh" start
I=$STATE/images
"$ROOT/tests/vm/make-boot-image.sh" "$I/boot.raw" "$RAMDISK/rivet.kernel"
qemu-img convert -f raw -O qcow2 -c "$I/boot.raw" "$I/boot.qcow2"
# 8 GiB (sparse): without root device hints before lookup, the agent waits for a disk of
# at least 4 GiB, as IPA does.
qemu-img create -q -f qcow2 "$WORK/vm-disk.qcow2" 8G
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$WORK/vars.fd"

MAC=52:54:00:12:34:60
NODE=$(enroll_available vm0 "$MAC" '{"serial": "deploytarget"}')
api PATCH "/v1/nodes/$NODE" "[{\"op\": \"add\", \"path\": \"/instance_info\", \"value\": {
  \"image_source\": \"$IMG/boot.qcow2\", \"image_os_hash_algo\": \"sha256\",
  \"image_os_hash_value\": \"$(sha256sum "$I/boot.qcow2" | cut -d' ' -f1)\",
  \"image_disk_format\": \"qcow2\", \"root_gb\": \"1\"}}]" >/dev/null
api PUT "/v1/nodes/$NODE/states/provision" \
  '{"target": "active", "configdrive": {"meta_data": {"hostname": "vm0.rivet.example"}}}' >/dev/null
wait_state "$NODE" "wait call-back" 60

PORT=$(free_port)
BB=$(command -v busybox)
ovmf=(-drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd
      -drive "if=pflash,format=raw,file=$WORK/vars.fd")
boot_start=$SECONDS
qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp 2 -m 1024 -nodefaults -no-reboot "${ovmf[@]}" \
  -kernel "$RAMDISK/rivet.kernel" -initrd "$RAMDISK/rivet.initramfs" \
  -append "console=ttyS0 quiet ipa-api-url=http://127.0.0.1:6385 BOOTIF=$MAC ipa-advertise-host=127.0.0.1 ipa-advertise-port=$PORT rivet.forward=6385,8089" \
  -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$PORT-:9999,guestfwd=tcp:10.0.2.100:6385-cmd:$BB nc 127.0.0.1 6385,guestfwd=tcp:10.0.2.100:8089-cmd:$BB nc 127.0.0.1 8089" \
  -device "virtio-net-pci,netdev=n0,mac=$MAC" \
  -drive "file=$WORK/vm-disk.qcow2,if=none,id=d0,format=qcow2" -device virtio-blk-pci,drive=d0,serial=deploytarget \
  -serial "file:$WORK/serial-deploy.log" -monitor none -display none &
QEMU_PID=$!
# First heartbeat: the conductor records the agent's URL.
for _ in $(seq 1 600); do
  [[ "$(node_field "$NODE" "['driver_internal_info'].get('agent_url')")" == https://* ]] && break
  kill -0 "$QEMU_PID" 2>/dev/null || fail "QEMU exited: $(tail -20 "$WORK/serial-deploy.log")"
  sleep 0.5
done
hb=$((SECONDS - boot_start))
[[ "$(node_field "$NODE" "['driver_internal_info'].get('agent_url')")" == "https://127.0.0.1:$PORT" ]] \
  || fail "no heartbeat from the VM: $(tail -30 "$WORK/serial-deploy.log")"
echo "ok: VM booted the ramdisk and heartbeat over HTTPS ${hb} s after QEMU started"
echo "time vm_boot_to_heartbeat ${hb}s"
dstart=$SECONDS
wait_state "$NODE" active 600 || fail "node did not become active: $(tail -30 "$WORK/serial-deploy.log")"
echo "ok: node active $((SECONDS - dstart)) s after the first heartbeat"
echo "time vm_deploy $((SECONDS - dstart))s"
# The agent powered the VM off (a real power-off inside the VM: QEMU exits).
for _ in $(seq 1 120); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.5; done
kill -0 "$QEMU_PID" 2>/dev/null && fail "the VM did not power off after the deploy"
wait "$QEMU_PID" || true
QEMU_PID=
grep -q "rivet starting" "$WORK/serial-deploy.log" || fail "no agent output on the serial console"

# The disk holds the image (past the GPT's first MiB, which gained the config-2 entry).
qemu-img convert -f qcow2 -O raw "$WORK/vm-disk.qcow2" "$WORK/vm-disk.raw"
size=$(stat -c %s "$I/boot.raw")
cmp -i 1048576:1048576 -n $((size - 1048576)) "$I/boot.raw" "$WORK/vm-disk.raw" || fail "the VM's disk differs from the image"
sgdisk -p "$WORK/vm-disk.raw" | grep -q "config-2" || fail "no config-2 partition on the VM's disk"
echo "ok: the VM's disk holds the image and a config drive:"
sgdisk -p "$WORK/vm-disk.raw" | sed -n '/^Number/,$p'


# Boot the deployed disk.
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$WORK/vars2.fd"
ovmf[3]="if=pflash,format=raw,file=$WORK/vars2.fd"
b2=$SECONDS
qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp 2 -m 512 -nodefaults -no-reboot "${ovmf[@]}" \
  -drive "file=$WORK/vm-disk.qcow2,if=none,id=d0,format=qcow2" -device virtio-blk-pci,drive=d0 \
  -serial "file:$WORK/serial-boot.log" -monitor none -display none &
QEMU_PID=$!
for _ in $(seq 1 360); do
  grep -q "RIVET-BOOT-MARKER" "$WORK/serial-boot.log" 2>/dev/null && break
  kill -0 "$QEMU_PID" 2>/dev/null || break
  sleep 0.5
done
grep -q "RIVET-BOOT-MARKER" "$WORK/serial-boot.log" || fail "the deployed disk did not boot: $(tail -c 2000 "$WORK/serial-boot.log")"
echo "ok: the VM booted from its deployed disk ($((SECONDS - b2)) s):"
grep -a -o "RIVET-BOOT-MARKER.*" "$WORK/serial-boot.log" | tr -d '\r' | head -1
echo "time vm_boot_deployed $((SECONDS - b2))s"
echo "PASS vm deploy ($((SECONDS - t0)) s)"
