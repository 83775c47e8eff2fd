#!/usr/bin/env bash
# The product end to end, the way operators run it: in the lab (tests/lab/lab.sh: a network
# namespace with a provisioning bridge, dnsmasq, nginx, libvirt TCG domains behind Redfish
# (sushy-tools) and IPMI (virtualbmc) BMCs, and the real Ironic 39 with its API on HTTPS),
# Ironic alone powers the nodes, boots Rivet's ramdisks, deploys and reboots them into their
# deployed OS. The test only enrols nodes and asks for provision states, then watches the API
# and the consoles. Flows:
#  vmedia   redfish + redfish-virtual-media, UEFI: Ironic builds the ISO from Rivet's minimal
#           kernel and initramfs (with its CA: the agent verifies Ironic's HTTPS API with it)
#           and inserts it over Redfish, with the node's network_data (static IPv4 and IPv6,
#           no DHCP, no router advertisement) and its RTC ten years behind (ipa-ntp-server);
#           inspection, then in the same boot whole-disk qcow2 (over IPv6) + config drive
#           onto the NVMe disk;
#           Ironic powers the node off through the agent, sets the boot device and powers it
#           on; the deployed OS prints its marker. Then undeploy with automated cleaning.
#  ipv6     an IPv6-only provisioning network (router advertisements, DHCPv6): Ironic's API,
#           the images and the agent's API on IPv6, the agent's certificate for its IPv6
#           address verified by Ironic; whole-disk deploy over redfish-virtual-media.
#  ipxe     ipmi + ipxe, UEFI and BIOS: DHCP → iPXE (snponly.efi over TFTP from the UEFI
#           firmware's PXE; the NIC's iPXE ROM under SeaBIOS) → Ironic's boot.ipxe → Rivet's
#           kernel and initramfs over HTTP; a partition image, GRUB installed from the image;
#           rebooted into it over IPMI.
#  metal3   redfish-virtual-media: inspection (agent inspect interface) → manage → provide
#           (automated cleaning) → deploy in one boot (fast-track) onto a SAN LUN over two
#           paths (multipath; the busy path removed mid-write), then the instance boots.
#  raid     software RAID through Ironic's agent RAID interface (UEFI, virtual media): RAID-1
#           root + RAID-0 data on two NVMe disks, deployed, booted with either disk removed,
#           an erase that keeps "data", delete; an array nothing keeps is stopped and its
#           disks erased whole.
#  dib      the diskimage-builder ramdisk over redfish-virtual-media (Ironic builds its ISO):
#           a manual cleaning with burn-in and a custom step shipped in the ramdisk.
#  powerloss  Redfish ForceOff in the middle of write_image: "deploy failed" with a clear
#           last error; the next deploy succeeds and boots.
#  rescue   rescue_interface agent (ipmi + ipxe): the node reaches "rescue" through
#           finalize_rescue, the rescue user logs in on the serial console with the operator's
#           password (a wrong one is refused), unrescue returns it to "active".
#  arm64    an arm64 server (QEMU virt, AAVMF) on Redfish virtual media: Ironic picks the
#           arm64 ramdisk and ESP by the node's cpu_arch (*_by_arch); inspected (the inventory
#           says aarch64), then in the same boot a whole-disk arm64 image with a config drive;
#           then a partition image booted through the GRUB (arm64-efi) the agent installs.
#  faults   a BMC that refuses the password, an ISO Ironic cannot build, a DHCP server that
#           answers late (the agent meanwhile says it cannot reach the conductor): each a clear
#           error, and the late one still ends in a heartbeat and a finished cleaning.
# Per flow it prints `time <flow>_boot_to_heartbeat Ns` (Ironic's power-on to the first
# heartbeat the conductor recorded), the time to `active`, and each ramdisk boot's timeline.
# usage: tests/vm/deploy.sh   (RIVET=static binary; FLOWS="…" to choose; LANES=1|2|3 flows side
#                              by side (3); DIB_RAMDISK=dir with a DIB rivet.kernel/initramfs
#                              (built there when missing; waited for while DIR/.building exists
#                              without DIR/.done); LAB_KEEP=1 leaves the lab up at the end for a
#                              look, tests/lab/lab.sh down ends it)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ALL_FLOWS="vmedia ipv6 ipxe metal3 raid dib powerloss rescue faults arm64"
FLOWS=${FLOWS:-$ALL_FLOWS}
for f in $FLOWS; do
  [[ " $ALL_FLOWS " == *" $f "* ]] || { echo "FAIL: unknown flow '$f' in FLOWS (known: $ALL_FLOWS)" >&2; exit 2; }
done
want() { [[ " $FLOWS " == *" $1 "* ]]; }
RIVET=${RIVET:-$ROOT/target/x86_64-unknown-linux-gnu/release/rivet}
[[ -x "$RIVET" ]] || { echo "FAIL: no static rivet at $RIVET (scripts/build-static.sh)" >&2; exit 2; }
export RIVET
# The arm64 flow: the lab serves the arm64 ramdisk too, built from the aarch64 static binary
# (RIVET_ARM64; when RIVET_ARM64_STATUS=DIR names a build under way, the flow waits for
# DIR/.done or DIR/.failed).
RIVET_ARM64=${RIVET_ARM64:-$ROOT/target/aarch64-unknown-linux-gnu/release/rivet}
if want arm64 && [[ -z "${RIVET_ARM64_STATUS:-}" && ! -x "$RIVET_ARM64" ]]; then
  echo "FAIL: no aarch64 static rivet at $RIVET_ARM64 (ARCH=aarch64 scripts/build-static.sh)" >&2; exit 2
fi
# shellcheck source=../../scripts/ironic/lib.sh
source "$ROOT/scripts/ironic/lib.sh"
# Every wait polls every WAIT_POLL_S seconds (Ironic's API and log, the domain's state): the
# times the flows print come from Ironic's log, not from when a poll saw them.
WAIT_POLL_S=2
# shellcheck source=../lab/lab.sh
source "$ROOT/tests/lab/lab.sh"
# lib.sh's helpers (wait_state, node_field) talk to the lab's Ironic.
api() { lab_api "$@"; }
PY=${VENV:-$HOME/.cache/rivet-ironic/venv}/bin/python
fail() {
  # Console excerpts carry terminal control sequences: printable text only.
  echo "FAIL: $*" | sed 's/\x1b\[[0-9;=?]*[a-zA-Z]//g' | tr -d '\000-\010\013-\037' >&2
  [[ -f "$LAB_DIR/ironic.log" ]] && { echo "--- ironic.log (errors, tail) ---" >&2; grep -a -E "ERROR|WARNING" "$LAB_DIR/ironic.log" | tail -15 >&2; }
  exit 1
}
t0=$SECONDS
done_cleanup() { [[ "${LAB_KEEP:-0}" == 1 ]] || lab_down; }
trap done_cleanup EXIT
lab_up

# --- test images, served by the lab's nginx --------------------------------------------------
I=$LAB_DIR/http/images
"$ROOT/tests/vm/make-boot-image.sh" "$I/boot.raw" "$LAB_DIR/http/ramdisk/rivet.kernel"
qemu-img convert -f raw -O qcow2 -c "$I/boot.raw" "$I/boot.qcow2"
PART_UUID=4d6f6e21-0000-4000-8000-0000000000b2
"$ROOT/tests/vm/make-partition-image.sh" "$I/part.raw" "$LAB_DIR/http/ramdisk/rivet.kernel" "$PART_UUID"
qemu-img convert -f raw -O qcow2 -c "$I/part.raw" "$I/part.qcow2"
printf 'kernel\n' > "$I/vmlinuz"; printf 'initrd\n' > "$I/initrd"
chmod -R a+rX "$I"
sum() { sha256sum "$1" | cut -d' ' -f1; }
IMG=$LAB_HTTP/images

# --- helpers ---------------------------------------------------------------------------------
serial() { echo "$LAB_DIR/nodes/$1/serial.log"; }
# mark NAME: where NAME's console log ends now (what follows is the next boot's).
mark() { local f; f=$(serial "$1"); [[ -f "$f" ]] && stat -c %s "$f" || echo 0; }
since() { tail -c +$(($2 + 1)) "$(serial "$1")" 2>/dev/null | tr -d '\r' | sed 's/\x1b\[[0-9;]*m//g'; }
# wait_console NAME MARK TEXT TIMEOUT: the console shows TEXT after MARK.
wait_console() {
  local end=$((SECONDS + $4))
  while ((SECONDS < end)); do
    since "$1" "$2" | grep -a -- "$3" >/dev/null && return 0
    sleep 1
  done
  return 1
}
RAMDISK_BOOTS=()   # "NAME:MARK:LABEL" of every ramdisk boot, for the timelines at the end

# enroll_redfish NAME DOMAIN_UUID MAC BOOT_MODE [EXTRA_PROPERTIES_JSON]: a node with Ironic's
# redfish hardware type and virtual media, BMC credentials; ends "manageable" (the BMC was
# reached). Prints the node UUID.
enroll_redfish() {
  local uuid
  uuid=$(lab_api POST /v1/nodes "{\"name\": \"$1\", \"driver\": \"redfish\",
      \"boot_interface\": \"redfish-virtual-media\", \"deploy_interface\": \"direct\",
      \"network_interface\": \"noop\", \"automated_clean\": false,
      \"driver_info\": {\"redfish_address\": \"$LAB_REDFISH\",
        \"redfish_system_id\": \"/redfish/v1/Systems/$2\", \"redfish_username\": \"admin\",
        \"redfish_password\": \"password\"},
      \"properties\": {\"capabilities\": \"boot_mode:$4\"${5:+, $5}}}" | field "['uuid']") || return 1
  lab_api POST /v1/ports "{\"node_uuid\": \"$uuid\", \"address\": \"$3\"}" >/dev/null || return 1
  lab_api PUT "/v1/nodes/$uuid/states/provision" '{"target": "manage"}' >/dev/null || return 1
  wait_state "$uuid" manageable 180 >&2 || return 1
  echo "$uuid"
}

# enroll_ipmi NAME PORT MAC BOOT_MODE: the ipmi hardware type (virtualbmc on PORT) with the
# ipxe boot interface. Prints the node UUID; ends "manageable".
enroll_ipmi() {
  local uuid
  uuid=$(lab_api POST /v1/nodes "{\"name\": \"$1\", \"driver\": \"ipmi\",
      \"boot_interface\": \"ipxe\", \"deploy_interface\": \"direct\",
      \"network_interface\": \"noop\", \"automated_clean\": false,
      \"driver_info\": {\"ipmi_address\": \"$LAB_IP\", \"ipmi_port\": $2,
        \"ipmi_username\": \"admin\", \"ipmi_password\": \"password\"},
      \"properties\": {\"capabilities\": \"boot_mode:$4\"}}" | field "['uuid']") || return 1
  lab_api POST /v1/ports "{\"node_uuid\": \"$uuid\", \"address\": \"$3\"}" >/dev/null || return 1
  lab_api PUT "/v1/nodes/$uuid/states/provision" '{"target": "manage"}' >/dev/null || return 1
  wait_state "$uuid" manageable 180 >&2 || return 1
  echo "$uuid"
}

# log_first PATTERN AFTER: the epoch time of the first line of ironic.log at or after AFTER
# (epoch seconds) that matches PATTERN (an extended regular expression); fails when there is
# none yet. grep picks the lines (Python reading the whole log, every second of every wait
# in three lanes, was a good part of the lab's CPU).
log_first() {
  { grep -a -E -- "$1" "$LAB_DIR/ironic.log" || true; } | "$PY" -c '
import datetime, sys
after = float(sys.argv[1])
for raw in sys.stdin.buffer:
    try:
        t = datetime.datetime.strptime(raw[:23].decode("ascii", "replace"), "%Y-%m-%d %H:%M:%S.%f")
    except ValueError:
        continue
    e = t.replace(tzinfo=datetime.timezone.utc).timestamp()
    if e >= after:
        print("%.2f" % e)
        sys.exit(0)
sys.exit(1)' "$2"
}
# provision NODE BODY: ask for a provision state; remembers when (REQ[NODE]).
declare -A REQ POWER_ON
provision() {
  REQ[$1]=$(date +%s.%N)
  lab_api PUT "/v1/nodes/$1/states/provision" "$2" >/dev/null
}
# first_heartbeat LABEL NODE NAME MARK TIMEOUT: Ironic powered NODE on (after the last
# provision request) and the agent's first heartbeat reached it; prints
# `time LABEL_boot_to_heartbeat Ns`, both times read from Ironic's own log.
first_heartbeat() {
  local label=$1 node=$2 name=$3 m=$4 end=$((SECONDS + $5)) on hb state
  while ((SECONDS < end)); do
    state=$(node_field "$node" "['provision_state']")
    # (a failed state counts once Ironic logged the move into it after the request: right after
    # a redeploy of a failed node is asked for, the old state can still be read)
    if [[ "$state" == *failed ]] && log_first "Node $node moved to provision state \"$state\"" "${REQ[$node]}" >/dev/null; then
      fail "$label: node $state before a heartbeat: $(node_field "$node" "['last_error']")"
    fi
    since "$name" "$m" | grep -a -E "Kernel panic|Out of memory: Killed" >/dev/null \
      && fail "$label: the ramdisk died: $(since "$name" "$m" | grep -a -E "Kernel panic|Out of memory" | head -2)"
    if on=$(log_first "Successfully set node $node power state to power on" "${REQ[$node]}") \
        && hb=$(log_first "POST /v1/heartbeat/$node - 202" "$on"); then
      RAMDISK_BOOTS+=("$name:$m:$label")
      POWER_ON[$node]=$on
      echo "ok: $label: Ironic powered the node on; the agent's first heartbeat came $(awk "BEGIN{printf \"%.1f\", $hb - $on}") s later"
      echo "time ${label}_boot_to_heartbeat $(awk "BEGIN{printf \"%.0f\", $hb - $on}")s"
      # A slow one: what the firmware tried before the ramdisk (once 235 s in a full run, not
      # seen alone), for the next look.
      if awk "BEGIN{exit !($hb - $on > 90)}"; then
        echo "slow boot: the firmware's boot attempts:"
        since "$name" "$m" | grep -a -E "BdsDxe|PXE|Boot000|Start |>>" | sed -n 1,20p || true
      fi
      return 0
    fi
    sleep "$WAIT_POLL_S"
  done
  fail "$label: no heartbeat within $5 s of the provision request; console: $(since "$name" "$m" | tail -25)"
}
# reached LABEL NODE STATE TIMEOUT NAME MARK: wait for STATE; print the time from the
# power-on to Ironic's move into STATE.
reached() {
  wait_state "$2" "$3" "$4" || fail "$1: node did not reach '$3': $(since "$5" "$6" | tail -30)"
  local t
  t=$(log_first "Node $2 moved to provision state \"$3\"" "${POWER_ON[$2]}") \
    || fail "$1: no move to '$3' in Ironic's log"
  echo "time ${1}_power_on_to_${3// /_} $(awk "BEGIN{printf \"%.0f\", $t - ${POWER_ON[$2]}}")s"
}

# disk_raw NAME SERIAL OUT: a node's disk as a raw file (the domain must be off).
disk_raw() { qemu-img convert -f qcow2 -O raw "$LAB_DIR/nodes/$1/$2.qcow2" "$3"; }
# domain_off NAME TIMEOUT: wait for the domain to be off (the deployed test OS powers itself
# off after its marker).
domain_off() {
  local end=$((SECONDS + $2))
  while ((SECONDS < end)); do
    [[ "$(virsh -c "$LAB_LIBVIRT" domstate "$1" 2>/dev/null)" == "shut off" ]] && return 0
    sleep "$WAIT_POLL_S"
  done
  return 1
}
# deployed_disk LABEL NAME SERIAL RAW: the deployed test OS powered itself off, and its disk
# (copied to RAW, left for more checks) holds boot.raw past the first MiB (the partition
# table, which a config drive changes).
deployed_disk() {
  domain_off "$2" 120 || fail "$1: the test OS did not power off"
  disk_raw "$2" "$3" "$4"
  local size; size=$(stat -c %s "$I/boot.raw")
  cmp -i 1048576:1048576 -n $((size - 1048576)) "$I/boot.raw" "$4" || fail "$1: the disk $3 differs from the image"
}
# config_drive LABEL RAW: the disk image RAW has a config drive: a partition whose file system
# is labelled config-2 (any agent's: the GPT partition's own name is the agent's choice).
config_drive() {
  local start found=""
  for start in $(sgdisk -p "$2" | awk '/^ *[0-9]+ +[0-9]+ +[0-9]+ / {print $2}'); do
    [[ "$(blkid -p -O $((start * 512)) -o value -s LABEL "$2" 2>/dev/null || true)" == config-2 ]] && found=$start
  done
  [[ -n "$found" ]] || fail "$1: no partition holds a config-2 file system: $(sgdisk -p "$2" | tail -4)"
}
# booted_os LABEL NAME MARK EXPECT: after the deploy, Ironic rebooted the node into its disk:
# the test OS's marker (naming the boot path) is on the console.
booted_os() {
  wait_console "$2" "$3" "RIVET-BOOT-MARKER" 300 || fail "$1: the deployed OS did not boot: $(since "$2" "$3" | tail -20)"
  local line; line=$(since "$2" "$3" | grep -a -o "RIVET-BOOT-MARKER.*" | head -1)
  [[ "$line" == *"$4"* ]] || fail "$1: booted, but not through the expected path ($4): $line"
  echo "ok: $1: Ironic rebooted the node into its deployed OS: $line"
}

# --- vmedia: redfish + redfish-virtual-media, UEFI, HTTPS API verified with Ironic's CA ------
# scripts/bench-vs-ipa.sh runs this flow with another agent's ramdisk (VMEDIA_DEPLOY_KERNEL,
# VMEDIA_DEPLOY_RAMDISK: files; VMEDIA_FOREIGN_AGENT=1 skips what only Rivet logs), another
# memory size (VM_MEMORY_MIB) and without the undeploy (VMEDIA_UNDEPLOY=0).
flow_vmedia() {
  N=vm-vmedia MAC=52:54:00:15:00:01 VIP=192.168.150.31 VIP6=fd00:150::31
  # VMEDIA_NETWORK=1 (default): no DHCP for this node (dnsmasq ignores its MAC) and no router
  # advertisement on its link: Ironic puts the node's network_data (a static IPv4 address,
  # gateway and DNS, and a static IPv6 address) on the ISO; the image comes over IPv6. The
  # node is inspected first, then deployed by the same ramdisk boot (fast-track). Its RTC is
  # ten years behind, set right by ipa-ntp-server before the agent verifies Ironic's
  # certificate.
  local net=${VMEDIA_NETWORK:-1} rtc=""
  [[ "$net" == 1 ]] && rtc=$((-10 * 365 * 86400))
  DOM=$(LAB_RTC_ADJUST=$rtc lab_node $N uefi $MAC "${VM_MEMORY_MIB:-1024}" nvme:nvmetarget:8G virtio4k:v4ktarget:8G)
  NODE=$(enroll_redfish $N "$DOM" $MAC uefi) || fail "vmedia: enrolment failed"
  lab_api PATCH "/v1/nodes/$NODE" '[{"op": "add", "path": "/properties/root_device", "value": {"serial": "nvmetarget"}}]' >/dev/null
  if [[ "$net" == 1 ]]; then
    lab_dhcp_ignore $MAC
    lab_api PATCH "/v1/nodes/$NODE" "[{\"op\": \"add\", \"path\": \"/network_data\", \"value\": {
      \"links\": [{\"id\": \"port0\", \"type\": \"phy\", \"ethernet_mac_address\": \"$MAC\"}],
      \"networks\": [{\"id\": \"prov\", \"type\": \"ipv4\", \"link\": \"port0\", \"network_id\": \"prov\",
        \"ip_address\": \"$VIP\", \"netmask\": \"255.255.255.0\",
        \"routes\": [{\"network\": \"0.0.0.0\", \"netmask\": \"0.0.0.0\", \"gateway\": \"$LAB_IP\"}]},
        {\"id\": \"prov6\", \"type\": \"ipv6\", \"link\": \"port0\", \"network_id\": \"prov6\",
        \"ip_address\": \"$VIP6\", \"netmask\": \"ffff:ffff:ffff:ffff::\"}],
      \"services\": [{\"type\": \"dns\", \"address\": \"$LAB_IP\"}]}},
      {\"op\": \"add\", \"path\": \"/driver_info/fast_track\", \"value\": true},
      {\"op\": \"add\", \"path\": \"/driver_info/kernel_append_params\",
       \"value\": \"nofb vga=normal console=ttyS0,115200 ipa-ntp-server=$LAB_IP\"}]" >/dev/null \
      || fail "vmedia: Ironic refused the node's network_data"
  fi
  if [[ -n "${VMEDIA_DEPLOY_KERNEL:-}" ]]; then
    mkdir -p "$LAB_DIR/http/bench"
    cp "$VMEDIA_DEPLOY_KERNEL" "$LAB_DIR/http/bench/kernel"
    cp "$VMEDIA_DEPLOY_RAMDISK" "$LAB_DIR/http/bench/ramdisk"
    chmod -R a+rX "$LAB_DIR/http/bench"
    lab_api PATCH "/v1/nodes/$NODE" "[{\"op\": \"add\", \"path\": \"/driver_info/deploy_kernel\", \"value\": \"$LAB_HTTP/bench/kernel\"},
      {\"op\": \"add\", \"path\": \"/driver_info/deploy_ramdisk\", \"value\": \"$LAB_HTTP/bench/ramdisk\"}]" >/dev/null
  fi
  local image=$IMG
  m=$(mark $N)
  if [[ "$net" == 1 ]]; then
    # Inspection first: the agent posts the inventory, then (fast-track) looks the node up and
    # heartbeats; the deploy below reuses this boot.
    provision "$NODE" '{"target": "inspect"}'
    first_heartbeat vmedia "$NODE" $N "$m" "${HB_TIMEOUT:-300}"
    wait_state "$NODE" manageable 300 || fail "vmedia: inspection failed: $(node_field "$NODE" "['last_error']")"
    lab_api GET "/v1/nodes/$NODE/inventory" | "$PY" -c "import json,sys
inv = json.load(sys.stdin)['inventory']
nic = [i for i in inv['interfaces'] if i['mac_address'] == '$MAC']
assert nic and nic[0].get('ipv4_address') == '$VIP', inv['interfaces']
assert nic[0].get('ipv6_address') == '$VIP6', inv['interfaces']
print('ok: vmedia: inspected; the inventory Ironic stored has', nic[0]['name'], nic[0]['ipv4_address'], nic[0]['ipv6_address'])" \
      || fail "vmedia: the inventory Ironic stored lacks the static addresses"
    # Over IPv6 and HTTPS: the agent verifies the image server's certificate too (with the
    # clock it set: ten years back, the certificate would not be valid yet).
    image="https://[$LAB_IP6]:8443/images"
  fi
  lab_api PUT "/v1/nodes/$NODE/states/provision" '{"target": "provide"}' >/dev/null
  wait_state "$NODE" available 120 || fail "vmedia: node did not become available"
  lab_api PATCH "/v1/nodes/$NODE" "[{\"op\": \"add\", \"path\": \"/instance_info\", \"value\": {\"image_source\": \"$image/boot.qcow2\",
    \"image_os_hash_algo\": \"sha256\", \"image_os_hash_value\": \"$(sum "$I/boot.qcow2")\", \"image_disk_format\": \"qcow2\"}}]" >/dev/null
  local deploy='{"target": "active", "configdrive": {"meta_data": {"hostname": "vmedia.rivet.example"}}}'
  if [[ "$net" == 1 ]]; then
    lab_api PUT "/v1/nodes/$NODE/states/provision" "$deploy" >/dev/null
  else
    provision "$NODE" "$deploy"
    first_heartbeat vmedia "$NODE" $N "$m" "${HB_TIMEOUT:-300}"
  fi
  con=$(since $N "$m")
  grep -a -q "boot_method=vmedia" <<<"$con" || fail "vmedia: the ramdisk was not booted from virtual media"
  grep -a -q "ipa-insecure" <<<"$con" && fail "vmedia: the kernel command line carries ipa-insecure"
  if [[ "${VMEDIA_FOREIGN_AGENT:-0}" == 1 ]]; then
    RAMDISK_BOOTS=()   # another agent: no Rivet timeline to read
  else
    grep -a -q -E "agent configuration copied: .*ironic-tls.conf" <<<"$con" \
      || fail "vmedia: the agent did not take Ironic's CA from the ISO: $(grep -a -i -E "vmedia|virtual media" <<<"$con" | tail -5)"
    echo "ok: vmedia: the agent took Ironic's CA from the ISO and verified the HTTPS API with it"
    if [[ "$net" == 1 ]]; then
      grep -a -q "network prov: $VIP/24, route 0.0.0.0/0 via $LAB_IP" <<<"$con" \
        || fail "vmedia: the static address from network_data was not applied: $(grep -a -i -E "network|DHCP" <<<"$con" | tail -8)"
      grep -a -i "$MAC" "$LAB_DIR/dnsmasq.log" | grep -a DHCP >/dev/null \
        && fail "vmedia: the node asked for DHCP although network_data gave it a static address"
      url=$(node_field "$NODE" "['driver_internal_info'].get('agent_url', '')")
      [[ "$url" == "https://$VIP:"* ]] || fail "vmedia: the agent advertised $url, not its static address $VIP"
      echo "ok: vmedia: no DHCP for the node: network_data's static $VIP/24, gateway and DNS from the ISO; the agent called back on $url"
      grep -a -q "network prov6: $VIP6/64" <<<"$con" \
        || fail "vmedia: the static IPv6 address from network_data was not applied: $(grep -a -i -E "network|IPv6" <<<"$con" | tail -8)"
      line=$(grep -a -o "clock set from $LAB_IP:123 (moved +[0-9.]* s[^)]*)" <<<"$con" | sed -n 1p)
      [[ -n "$line" ]] \
        || fail "vmedia: the clock ten years behind was not set from ipa-ntp-server: $(grep -a -i -E "ntp|clock" <<<"$con" | tail -5)"
      moved=$(grep -o -E "[0-9.]+ s" <<<"$line" | sed -n 1p | cut -d' ' -f1)
      awk "BEGIN{exit !($moved > 9 * 365 * 86400)}" || fail "vmedia: the clock moved only $moved s"
      echo "ok: vmedia: the RTC was ten years behind; the agent set the clock from the lab's NTP server ($line) before verifying Ironic's certificate"
    fi
  fi
  reached vmedia "$NODE" active 900 $N "$m"
  if [[ "$net" == 1 ]]; then
    grep -a -E "^$VIP6 .*GET /images/boot.qcow2" "$LAB_DIR/nginx/access.log" | grep -a -c -E '" (200|206) ' >/dev/null \
      || fail "vmedia: the image was not fetched from the node's static IPv6 address: $(grep -a boot.qcow2 "$LAB_DIR/nginx/access.log" | tail -3)"
    boots=$(since $N "$m" | grep -a -c "rivet-timeline init_start" || true)
    [[ "$boots" == 1 ]] || fail "vmedia: the ramdisk booted $boots times between inspection and the deployed OS"
    echo "ok: vmedia: inspected, then deployed by the same boot; the image came over HTTPS (certificate verified) and network_data's static IPv6 ($VIP6; no router advertisement on the link)"
  fi
  booted_os vmedia $N "$m" "rivet.flow=uefi"
  deployed_disk vmedia $N nvmetarget "$LAB_DIR/vm-disk.raw"
  config_drive vmedia "$LAB_DIR/vm-disk.raw"
  rm -f "$LAB_DIR/vm-disk.raw"
  echo "ok: vmedia: the NVMe disk holds the image and a config drive"
  [[ "${VMEDIA_UNDEPLOY:-1}" == 1 ]] || return 0
  # Undeploy with automated cleaning: Ironic boots the ramdisk again, from virtual media.
  # Without fast-track now: the cleaned node is powered off, not left running its agent.
  lab_api PATCH "/v1/nodes/$NODE" '[{"op": "replace", "path": "/automated_clean", "value": true}]' >/dev/null
  [[ "$net" == 1 ]] && lab_api PATCH "/v1/nodes/$NODE" '[{"op": "remove", "path": "/driver_info/fast_track"}]' >/dev/null
  m=$(mark $N)
  provision "$NODE" '{"target": "deleted"}'
  first_heartbeat vmedia_clean "$NODE" $N "$m" 300
  reached vmedia_clean "$NODE" available 900 $N "$m"
  domain_off $N 120 || fail "vmedia: the node is still on after cleaning"
  disk_raw $N nvmetarget "$LAB_DIR/vm-disk.raw"
  pt=$(blkid -p -o value -s PTTYPE "$LAB_DIR/vm-disk.raw" || true)
  rm -f "$LAB_DIR/vm-disk.raw"
  [[ -z "$pt" ]] || fail "vmedia: automated cleaning left a $pt table on the NVMe disk"
  echo "ok: vmedia: undeployed; automated cleaning erased the NVMe disk"
  [[ "$net" == 1 ]] && lab_dhcp_answer $MAC
  return 0
}

# --- ipv6: an IPv6-only provisioning network (router advertisements and DHCPv6, nothing IPv4)
# Ironic's API, the images and the agent's own API all on IPv6 literals; the agent's TLS
# certificate names its IPv6 address and Ironic verifies it. Ironic 39 has one API URL for
# every node ([service_catalog]), the lab's IPv4 one: this node is given the IPv6 URL in its
# kernel parameters (the last ipa-api-url wins, as in IPA).
flow_ipv6() {
  N=vm-ipv6 MAC=52:54:00:15:00:0c
  DOM=$(LAB_NIC_BRIDGE=$LAB_BR6 lab_node $N uefi $MAC 1024 nvme:nvmetarget:4G virtio:vother:1G)
  NODE=$(enroll_redfish $N "$DOM" $MAC uefi) || fail "ipv6: enrolment failed"
  local img6="http://[$LAB_IP6ONLY]:8080/images"
  # The checksum as a URL (an IPv6 literal too), which Ironic hands the agent to read.
  (cd "$I" && sha256sum boot.qcow2 > boot.qcow2.sha256 && chmod a+r boot.qcow2.sha256)
  lab_api PATCH "/v1/nodes/$NODE" "[{\"op\": \"add\", \"path\": \"/properties/root_device\", \"value\": {\"serial\": \"nvmetarget\"}},
    {\"op\": \"add\", \"path\": \"/driver_info/kernel_append_params\",
     \"value\": \"nofb vga=normal console=ttyS0,115200 ipa-api-url=https://[$LAB_IP6ONLY]:6385\"},
    {\"op\": \"add\", \"path\": \"/instance_info\", \"value\": {\"image_source\": \"$img6/boot.qcow2\",
     \"image_checksum\": \"$img6/boot.qcow2.sha256\", \"image_disk_format\": \"qcow2\"}}]" >/dev/null \
    || fail "ipv6: Ironic refused the node's settings"
  lab_api PUT "/v1/nodes/$NODE/states/provision" '{"target": "provide"}' >/dev/null
  wait_state "$NODE" available 120 || fail "ipv6: node did not become available"
  m=$(mark $N)
  provision "$NODE" '{"target": "active"}'
  first_heartbeat ipv6 "$NODE" $N "$m" 300
  con=$(since $N "$m")
  line=$(grep -a -o "DHCPv6: fd00:151::[0-9a-f:]*/128 on [a-z0-9.]*" <<<"$con" | sed -n 1p)
  [[ -n "$line" ]] || fail "ipv6: no DHCPv6 address: $(grep -a -i -E "dhcp|network" <<<"$con" | tail -8)"
  local addr=${line#DHCPv6: }; addr=${addr%%/*}
  url=$(node_field "$NODE" "['driver_internal_info'].get('agent_url', '')")
  [[ "$url" == "https://[$addr]:"* ]] || fail "ipv6: the agent advertised $url, not its DHCPv6 address $addr"
  ca=$(node_field "$NODE" "['driver_internal_info'].get('agent_verify_ca', '')")
  [[ "$ca" == /* ]] || fail "ipv6: the agent sent Ironic no certificate to verify it with ($ca)"
  echo "ok: ipv6: no IPv4 anywhere: $line (router advertisement, DHCPv6); lookup and heartbeats to https://[$LAB_IP6ONLY]:6385; the agent advertised $url"
  reached ipv6 "$NODE" active 900 $N "$m"
  grep -a -E "^$addr .*GET /images/boot.qcow2 " "$LAB_DIR/nginx/access.log" | grep -a -c -E '" (200|206) ' >/dev/null \
    || fail "ipv6: the image was not fetched over IPv6 from $addr: $(grep -a boot.qcow2 "$LAB_DIR/nginx/access.log" | tail -3)"
  grep -a -E "^$addr .*GET /images/boot.qcow2.sha256 " "$LAB_DIR/nginx/access.log" | grep -a -c '" 200 ' >/dev/null \
    || fail "ipv6: the agent did not read the checksum URL: $(grep -a sha256 "$LAB_DIR/nginx/access.log" | tail -3)"
  grep -a -E "ERROR.*$NODE" "$LAB_DIR/ironic.log" | grep -a -i -c -E "certificate|SSL" >/dev/null \
    && fail "ipv6: Ironic failed to verify the agent's certificate: $(grep -a -E "ERROR.*$NODE" "$LAB_DIR/ironic.log" | grep -a -i -E "certificate|SSL" | tail -2)"
  echo "ok: ipv6: Ironic drove the agent at $url, verifying the certificate the agent made for its IPv6 address; the agent read the image and its checksum URL from $img6"
  booted_os ipv6 $N "$m" "rivet.flow=uefi"
  deployed_disk ipv6 $N nvmetarget "$LAB_DIR/vm6-disk.raw"
  rm -f "$LAB_DIR/vm6-disk.raw"
  echo "ok: ipv6: the disk holds the image"
}

# --- ipxe: ipmi + ipxe, UEFI and BIOS side by side: partition images, GRUB from the image --
flow_ipxe() {
  lab_node vm-ipxe-uefi uefi 52:54:00:15:00:02 1024 nvme:nvmeother:8G virtio4k:v4ktarget:8G >/dev/null
  lab_node vm-ipxe-bios bios 52:54:00:15:00:03 1024 nvme:nvmetarget:8G >/dev/null
  lab_vbmc vm-ipxe-uefi 6231
  lab_vbmc vm-ipxe-bios 6232
  UNODE=$(enroll_ipmi vm-ipxe-uefi 6231 52:54:00:15:00:02 uefi) || fail "ipxe: UEFI enrolment failed"
  BNODE=$(enroll_ipmi vm-ipxe-bios 6232 52:54:00:15:00:03 bios) || fail "ipxe: BIOS enrolment failed"
  for pair in "$UNODE:v4ktarget:uefi" "$BNODE:nvmetarget:bios"; do
    IFS=: read -r n serial mode <<<"$pair"
    lab_api PATCH "/v1/nodes/$n" "[{\"op\": \"add\", \"path\": \"/properties/root_device\", \"value\": {\"serial\": \"$serial\"}},
      {\"op\": \"add\", \"path\": \"/instance_info\", \"value\": {\"image_source\": \"$IMG/part.qcow2\",
      \"image_os_hash_algo\": \"sha256\", \"image_os_hash_value\": \"$(sum "$I/part.qcow2")\", \"image_disk_format\": \"qcow2\",
      \"image_type\": \"partition\", \"kernel\": \"$IMG/vmlinuz\", \"ramdisk\": \"$IMG/initrd\",
      \"root_gb\": \"1\", \"deploy_boot_mode\": \"$mode\"}}]" >/dev/null
    lab_api PUT "/v1/nodes/$n/states/provision" '{"target": "provide"}' >/dev/null
    wait_state "$n" available 120 || fail "ipxe: node $n did not become available"
  done
  mu=$(mark vm-ipxe-uefi) mb=$(mark vm-ipxe-bios)
  provision "$UNODE" '{"target": "active"}'
  provision "$BNODE" '{"target": "active"}'
  for spec in "ipxe_uefi:$UNODE:vm-ipxe-uefi:$mu" "ipxe_bios:$BNODE:vm-ipxe-bios:$mb"; do
    IFS=: read -r label n name m <<<"$spec"
    first_heartbeat "$label" "$n" "$name" "$m" 420
    con=$(since "$name" "$m")
    grep -a -q "BOOTIF=" <<<"$con" || fail "$label: no BOOTIF on the command line iPXE passed"
    grep -a -q "ipa-global-request-id=" <<<"$con" || fail "$label: no ipa-global-request-id from Ironic's iPXE script"
    reached "$label" "$n" active 900 "$name" "$m"
    booted_os "$label" "$name" "$m" "rivet.flow=partition-grub"
    stored=$(node_field "$n" "['driver_internal_info'].get('root_uuid_or_disk_id')")
    [[ "$stored" == "$PART_UUID" ]] || fail "$label: Ironic stored root uuid '$stored', expected $PART_UUID"
  done
  grep -a -q "snponly.efi" "$LAB_DIR/dnsmasq.log" || fail "ipxe: the UEFI firmware did not fetch snponly.efi over TFTP"
  grep -a -c "boot.ipxe" "$LAB_DIR/nginx/access.log" | grep -q -v '^0$' || fail "ipxe: nobody fetched boot.ipxe"
  echo "ok: ipxe: DHCP → snponly.efi (TFTP) / the NIC's iPXE → boot.ipxe → Rivet over HTTP; partition images with GRUB from the image, UEFI and BIOS"
}

# --- metal3: inspection → manage → provide → deploy in one boot (fast-track), virtual media -
# The provisioning network reaches this node only tagged, on VLAN 100 (its switch port sends
# LLDP naming VLAN 100), and it boots with Metal3's default ipa-enable-vlan-interfaces=all.
# san_written NAME: "san0 BYTES" and "san1 BYTES" written through each SAN path, from QEMU.
san_written() {
  virsh -c "$LAB_LIBVIRT" qemu-monitor-command "$1" --hmp "info blockstats" | tr -d '\r' \
    | awk '/^san[01]:/{sub(":", "", $1); for (i = 2; i <= NF; i++) if ($i ~ /^wr_bytes=/) {split($i, a, "="); print $1, a[2]}}'
}
flow_metal3() {
  N=vm-metal3 MAC=52:54:00:15:00:04
  local tap; tap=$(lab_vlan_port m3 100) || fail "metal3: cannot make the VLAN-only port"
  # Its root disk is a SAN LUN over two paths (lab_node's mpath); the LUN starts with a GPT
  # (the test image's first MiB), which the cleaning on "provide" erases.
  DOM=$(LAB_NIC_TAP=$tap lab_node $N uefi $MAC 1024 nvme:nvmetarget:8G virtio4k:v4ktarget:8G mpath:santarget:4G)
  local san=$LAB_DIR/nodes/$N/santarget.raw
  dd if="$I/boot.raw" of="$san" bs=1M count=1 conv=notrunc status=none
  NODE=$(enroll_redfish $N "$DOM" $MAC uefi) || fail "metal3: enrolment failed"
  lab_api PATCH "/v1/nodes/$NODE" '[{"op": "add", "path": "/driver_info/fast_track", "value": true},
    {"op": "replace", "path": "/automated_clean", "value": true},
    {"op": "add", "path": "/driver_info/kernel_append_params", "value": "nofb vga=normal console=ttyS0,115200 ipa-enable-vlan-interfaces=all"},
    {"op": "replace", "path": "/inspect_interface", "value": "agent"}]' >/dev/null
  m=$(mark $N)
  provision "$NODE" '{"target": "inspect"}'
  wait_state "$NODE" manageable 600 || fail "metal3: inspection failed: $(since $N "$m" | tail -20)"
  on=$(log_first "Successfully set node $NODE power state to power on" "${REQ[$NODE]}") || fail "metal3: Ironic never powered the node on"
  POWER_ON[$NODE]=$on
  posted=$(log_first "POST /v1/continue_inspection - 20[02]" "$on") || fail "metal3: no inspection post in Ironic's log"
  echo "time metal3_power_on_to_inspection_data $(awk "BEGIN{printf \"%.0f\", $posted - $on}")s"
  RAMDISK_BOOTS+=("$N:$m:metal3")
  lab_api GET "/v1/nodes/$NODE/inventory" | "$PY" -c "import json,sys
inv = json.load(sys.stdin)['inventory']
serials = sorted(d.get('serial') for d in inv['disks'])
macs = [i['mac_address'] for i in inv['interfaces']]
assert 'nvmetarget' in serials and 'v4ktarget' in serials, serials
# The SAN LUN once, as its multipath map (its two paths are not disks of their own).
san = [d for d in inv['disks'] if d.get('wwn') == '$LAB_SAN_WWN']
assert len(san) == 1 and serials.count('santarget') == 1, inv['disks']
assert san[0]['name'].startswith('/dev/dm-'), san
assert '$MAC' in macs, macs
assert inv['system_vendor']['manufacturer'] == 'QEMU', inv['system_vendor']
vlans = [i['name'] for i in inv['interfaces'] if i['name'].endswith('.100') and i.get('ipv4_address')]
assert vlans, inv['interfaces']
print('inventory stored by the conductor: disks', serials, 'NIC', macs, 'VLAN interface', vlans, 'vendor', inv['system_vendor']['manufacturer'])
print('ok: metal3: the SAN LUN over two paths is one disk in the inventory:', san[0]['name'], san[0]['wwn'], san[0]['size'])" \
    || fail "metal3: the stored inventory is not this VM's (or has no addressed VLAN 100 interface, or not one SAN disk)"
  con=$(since $N "$m")
  grep -a -q -E "VLAN 100 on [a-z0-9]+, DHCPv4" <<<"$con" \
    || fail "metal3: no VLAN 100 from LLDP: $(grep -a -i -E "vlan|lldp" <<<"$con" | tail -5)"
  echo "ok: metal3: VLAN-only port: the switch's LLDP named VLAN 100, the ramdisk brought it up and took its address there"
  # The agent stays (fast-track): after its inspection post it looks the node up and heartbeats;
  # Ironic reuses it only while its heartbeats are fresh.
  local hb_end=$((SECONDS + 180))
  until hb=$(log_first "POST /v1/heartbeat/$NODE - 202" "$posted"); do
    ((SECONDS < hb_end)) || fail "metal3: the agent did not heartbeat after its inspection: $(since $N "$m" | tail -10)"
    sleep "$WAIT_POLL_S"
  done
  echo "time metal3_inspection_data_to_heartbeat $(awk "BEGIN{printf \"%.0f\", $hb - $posted}")s"
  # The root device is the SAN LUN, by WWN; the image comes slowly (nginx's rate-limited
  # path) so that a path can be pulled while it is written.
  lab_api PATCH "/v1/nodes/$NODE" "[{\"op\": \"add\", \"path\": \"/properties/root_device\", \"value\": {\"wwn\": \"$LAB_SAN_WWN\"}},
    {\"op\": \"add\", \"path\": \"/instance_info\", \"value\": {\"image_source\": \"$LAB_HTTP/slow/images/boot.raw\",
    \"image_os_hash_algo\": \"sha256\", \"image_os_hash_value\": \"$(sum "$I/boot.raw")\", \"image_disk_format\": \"raw\"}}]" >/dev/null
  # "provide" cleans (automated cleaning, erase_devices_metadata) in the same boot.
  lab_api PUT "/v1/nodes/$NODE/states/provision" '{"target": "provide"}' >/dev/null
  wait_state "$NODE" available 300 || fail "metal3: provide failed: $(node_field "$NODE" "['last_error']")"
  erased=$(since $N "$m" | grep -a "metadata erased" | grep -a -o "disk=[^ ]*" || true)
  [[ $(grep -c "disk=/dev/dm-" <<<"$erased") == 1 && $(grep -c "disk=/dev/sd" <<<"$erased") == 0 ]] \
    || fail "metal3: cleaning did not erase the SAN LUN once through its map: $erased"
  [[ -z "$(dd if="$san" bs=512 skip=1 count=1 status=none | tr -d '\0')" ]] \
    || fail "metal3: the SAN LUN's GPT header survived the metadata erase"
  echo "ok: metal3: automated cleaning erased the SAN LUN once, through its map ($(tr '\n' ' ' <<<"$erased"))"
  m2=$(mark $N)
  # With a config drive: a partition the agent adds on the map, written through its byte range.
  lab_api PUT "/v1/nodes/$NODE/states/provision" '{"target": "active", "configdrive": {"meta_data": {"hostname": "metal3.rivet.example"}}}' >/dev/null
  # Pull the path the writes go through (the one QEMU counts them on) while write_image runs.
  wait_console $N "$m2" "image recognised" 300 || fail "metal3: the write never started: $(since $N "$m2" | tail -10)"
  local before after busy
  before=$(san_written $N); sleep 2; after=$(san_written $N)
  busy=$(paste <(echo "$before") <(echo "$after") | awk '$4 - $2 > best {best = $4 - $2; p = $1} END{print p}')
  [[ "$busy" == san[01] ]] || fail "metal3: no writes on a SAN path in QEMU's block statistics: $before / $after"
  virsh -c "$LAB_LIBVIRT" qemu-monitor-command $N --hmp "device_del ${busy/san/sanpath}" >/dev/null \
    || fail "metal3: cannot remove the SAN path ${busy/san/sanpath}"
  echo "ok: metal3: removed the SAN path carrying the writes (${busy/san/sanpath}) while write_image ran"
  wait_state "$NODE" active 600 || fail "metal3: the fast-track deploy failed: $(node_field "$NODE" "['last_error']"): $(since $N "$m" | tail -20)"
  since $N "$m2" | grep -a -c -i "failing path" >/dev/null \
    || fail "metal3: multipath never failed over: $(since $N "$m2" | grep -a -i -E "multipath|sd[a-z]" | tail -5)"
  echo "ok: metal3: multipath failed over to the other path and the deploy finished"
  t=$(log_first "Node $NODE moved to provision state \"active\"" "$on")
  echo "time metal3_power_on_to_active $(awk "BEGIN{printf \"%.0f\", $t - $on}")s"
  booted_os metal3 $N "$m" "rivet.flow=uefi"
  boots=$(since $N "$m" | grep -a -c "rivet-timeline init_start" || true)
  [[ "$boots" == 1 ]] || fail "metal3: the ramdisk booted $boots times between inspection and the deployed OS"
  echo "ok: metal3: inspected, cleaned, provided and deployed by one ramdisk boot, then the instance booted from the SAN LUN"
  domain_off $N 120 || fail "metal3: the test OS did not power off"
  local size; size=$(stat -c %s "$I/boot.raw")
  cmp -i 1048576:1048576 -n $((size - 1048576)) "$I/boot.raw" "$san" || fail "metal3: the SAN LUN differs from the image"
  config_drive metal3 "$san"
  echo "ok: metal3: the SAN LUN holds the image and a config drive"
}

# --- raid: software RAID, UEFI (virtual media) and BIOS (iPXE) ------------------------------
# The root arrays are 1 GiB (the images are under 64 MiB): md resyncs a new RAID-1 whole, and
# under emulation each GiB costs the node about 30 s of a core (3 GiB: 89 s, the lab's largest
# single cost).
# md superblocks: v1.2 4 KiB into the array partitions (root at 551 MiB, data 1 GiB later),
# v1.0 8 KiB before the end of the ESP mirror's partition (1 MiB + 550 MiB).
md_magic() { # RAW: how many of the three superblocks carry md's magic
  "$PY" - "$1" <<'PY'
import sys
f = open(sys.argv[1], "rb"); M = 1 << 20
n = 0
for off in (551 * M + 4096, 551 * M + (1 << 30) + 4096, 551 * M - 8192):
    f.seek(off); n += f.read(4) == bytes.fromhex("fc4e2ba9")
print(n)
PY
}
# blank NAME SERIAL: the disk holds nothing but zeros: its qcow2 map has no extent with data
# (a plain write, even of zeros, makes one; a write-zeroes request leaves zero clusters, which
# read as the blank disk they are). An unreadable map is a failure, not a blank disk.
blank() {
  local n
  n=$(qemu-img map --output=json "$LAB_DIR/nodes/$1/$2.qcow2" | "$PY" -c 'import json,sys
m = json.load(sys.stdin)
assert isinstance(m, list) and m, m
print(sum(1 for e in m if e["data"]))') || fail "cannot read the map of $1's $2 (qemu-img map)"
  [[ "$n" =~ ^[0-9]+$ ]] || fail "qemu-img map gave '$n' data extents for $1's $2"
  [[ "$n" == 0 ]]
}
# boot_disks LABEL NAME EXPECT [SERIAL_TO_REMOVE]: boot the domain itself (test plumbing: a
# pulled disk), check the deployed OS's marker, wait for it to power off.
boot_disks() {
  local m; m=$(mark "$2")
  if [[ -n "${4:-}" ]]; then lab_boot_without "$2" "$4"; else virsh -c "$LAB_LIBVIRT" start "$2" >/dev/null; fi
  wait_console "$2" "$m" "RIVET-BOOT-MARKER" 300 || fail "$1: the deployed disk did not boot: $(since "$2" "$m" | tail -20)"
  local line; line=$(since "$2" "$m" | grep -a -o "RIVET-BOOT-MARKER.*" | head -1)
  [[ "$line" == *"$3"* ]] || fail "$1: booted, but not through the expected path ($3): $line"
  domain_off "$2" 120 || fail "$1: the test OS did not power off"
  [[ -n "${4:-}" ]] && lab_restore "$2"
  echo "ok: $1: booted${4:+ without $4}: $line"
}
elog_disks() { # TEXT PATTERN [PATTERN2]: the disks named in the agent's log lines matching
  grep -a "$2" <<<"$1" | grep -a "${3:-}" | grep -o 'disk=/dev/[a-z0-9]*' | sort | tr '\n' ' ' || true
}
flow_raid() {
  N=vm-raid MAC=52:54:00:15:00:05
  DOM=$(lab_node $N uefi $MAC 1024 nvme:raida:8G nvme:raidb:8G virtio4k:v4ktarget:8G)
  RNODE=$(enroll_redfish $N "$DOM" $MAC uefi) || fail "raid: enrolment failed"
  lab_api PATCH "/v1/nodes/$RNODE" '[{"op": "replace", "path": "/raid_interface", "value": "agent"},
    {"op": "add", "path": "/driver_info/fast_track", "value": true}]' >/dev/null
  lab_api PUT "/v1/nodes/$RNODE/states/raid" '{"logical_disks": [
    {"size_gb": 1, "raid_level": "1", "controller": "software", "volume_name": "root", "is_root_volume": true,
     "physical_disks": [{"serial": "raida"}, {"serial": "raidb"}]},
    {"size_gb": "MAX", "raid_level": "0", "controller": "software", "volume_name": "data",
     "physical_disks": [{"serial": "raida"}, {"serial": "raidb"}]}]}' >/dev/null
  m=$(mark $N)
  provision "$RNODE" '{"target": "clean", "clean_steps": [{"interface": "raid", "step": "create_configuration"}]}'
  first_heartbeat raid "$RNODE" $N "$m" 300
  reached raid "$RNODE" manageable 600 $N "$m"
  node_field "$RNODE" "['raid_config']" | "$PY" -c "import json,sys
c=json.load(sys.stdin); l=c['logical_disks']
assert [x['volume_name'] for x in l] == ['root', 'data'] and l[0]['raid_level'] == '1', c
print('raid_config stored by the conductor:', [(x['volume_name'], x['raid_level'], x['size_gb']) for x in l])" \
    || fail "raid: the conductor did not store the RAID configuration"
  lab_api PUT "/v1/nodes/$RNODE/states/provision" '{"target": "provide"}' >/dev/null
  wait_state "$RNODE" available 120 || fail "raid: node did not become available"
  lab_api PATCH "/v1/nodes/$RNODE" "[{\"op\": \"add\", \"path\": \"/instance_info\", \"value\": {\"image_source\": \"$IMG/boot.qcow2\",
    \"image_os_hash_algo\": \"sha256\", \"image_os_hash_value\": \"$(sum "$I/boot.qcow2")\", \"image_disk_format\": \"qcow2\"}}]" >/dev/null
  lab_api PUT "/v1/nodes/$RNODE/states/provision" \
    '{"target": "active", "configdrive": {"meta_data": {"hostname": "raid.rivet.example"}}}' >/dev/null
  wait_state "$RNODE" active 600 || fail "raid: deploy failed: $(node_field "$RNODE" "['last_error']")"
  booted_os raid $N "$m" "rivet.flow=uefi"
  domain_off $N 120 || fail "raid: the test OS did not power off"
  con=$(since $N "$m")
  grep -a -q "the software RAID root volume" <<<"$con" || fail "raid: the agent did not choose the root array"
  for d in raida raidb; do
    disk_raw $N $d "$LAB_DIR/$d.raw"
    [[ "$(md_magic "$LAB_DIR/$d.raw")" == 3 ]] || fail "raid: $d does not carry the root, data and ESP members"
    rm -f "$LAB_DIR/$d.raw"
  done
  blank $N v4ktarget || fail "raid: the 4Kn disk was written"
  echo "ok: raid: both NVMe disks carry root, data and ESP members; the 4Kn disk is untouched"
  boot_disks raid-without-b $N "rivet.flow=uefi" raidb
  boot_disks raid-without-a $N "rivet.flow=uefi" raida
  lab_api PUT "/v1/nodes/$RNODE/states/provision" '{"target": "deleted"}' >/dev/null
  wait_state "$RNODE" available 120 || fail "raid: node did not return to available"
  lab_api PUT "/v1/nodes/$RNODE/states/provision" '{"target": "manage"}' >/dev/null
  wait_state "$RNODE" manageable 60 || fail "raid: node did not become manageable"
  # A metadata erase with "data" kept by skip_block_devices: the root array (beside it) is
  # erased through the md device, "data" and the ESP mirror beside it are kept.
  lab_api PATCH "/v1/nodes/$RNODE" '[{"op": "add", "path": "/properties/skip_block_devices", "value": [{"volume_name": "data"}]}]' >/dev/null
  m=$(mark $N)
  provision "$RNODE" '{"target": "clean", "clean_steps": [{"interface": "deploy", "step": "erase_devices_metadata"}]}'
  first_heartbeat raid_erase "$RNODE" $N "$m" 300
  reached raid_erase "$RNODE" manageable 600 $N "$m"
  con=$(since $N "$m")
  erased=$(elog_disks "$con" "metadata erased")
  kept=$(elog_disks "$con" "kept by volume name")
  echo "  erased: $erased; kept by volume name: $kept"
  [[ "$erased" == "disk=/dev/md"[0-9]*" disk=/dev/vda " ]] || fail "raid: the metadata erase did not erase exactly the root array and the 4Kn disk: $erased"
  [[ "$kept" == "disk=/dev/md"[0-9]*" disk=/dev/md"[0-9]*" " ]] || fail "raid: the data array and the ESP mirror were not both kept: $kept"
  # The same agent (fast track) deletes the arrays once nothing is kept.
  lab_api PATCH "/v1/nodes/$RNODE" '[{"op": "remove", "path": "/properties/skip_block_devices"}]' >/dev/null
  lab_api PUT "/v1/nodes/$RNODE/states/provision" \
    '{"target": "clean", "clean_steps": [{"interface": "raid", "step": "delete_configuration"}]}' >/dev/null
  wait_state "$RNODE" manageable 600 || fail "raid: delete_configuration failed: $(node_field "$RNODE" "['last_error']")"
  [[ "$(node_field "$RNODE" "['raid_config']")" == "{}" ]] || fail "raid: the conductor kept a RAID configuration"
  lab_api PUT "/v1/nodes/$RNODE/states/power" '{"target": "power off"}' >/dev/null
  domain_off $N 60 || fail "raid: Ironic did not power the node off"
  for d in raida raidb; do
    disk_raw $N $d "$LAB_DIR/$d.raw"
    [[ "$(md_magic "$LAB_DIR/$d.raw")" == 0 ]] || fail "raid: $d still carries md superblocks"
    sig=$(blkid -p -o value -s TYPE "$LAB_DIR/$d.raw" || true)
    [[ -z "$sig" ]] || fail "raid: $d still carries $sig"
    rm -f "$LAB_DIR/$d.raw"
  done
  echo "ok: raid: delete_configuration left both members without RAID signatures or tables"

  # BIOS (SeaBIOS, iPXE, IPMI): a RAID-1 root; the image's own grub-install writes GRUB to both
  # members; either boots alone. Then an erase with nothing kept stops the array, zeroes its
  # superblocks and erases both members whole (as for an array a tenant made).
  N=vm-raid-bios MAC=52:54:00:15:00:06
  lab_node $N bios $MAC 1024 nvme:raida:8G nvme:raidb:8G >/dev/null
  lab_vbmc $N 6233
  BNODE=$(enroll_ipmi $N 6233 $MAC bios) || fail "raid-bios: enrolment failed"
  lab_api PATCH "/v1/nodes/$BNODE" '[{"op": "replace", "path": "/raid_interface", "value": "agent"},
    {"op": "add", "path": "/driver_info/fast_track", "value": true},
    {"op": "replace", "path": "/properties/capabilities", "value": "boot_mode:bios,disk_label:gpt"}]' >/dev/null
  BIOS_UUID=4d6f6e21-0000-4000-8000-0000000000b5
  "$ROOT/tests/vm/make-raid-bios-image.sh" "$I/raidbios.raw" "$LAB_DIR/http/ramdisk/rivet.kernel" "$BIOS_UUID"
  chmod a+r "$I/raidbios.raw"
  lab_api PUT "/v1/nodes/$BNODE/states/raid" '{"logical_disks": [
    {"size_gb": 1, "raid_level": "1", "controller": "software", "volume_name": "root", "is_root_volume": true,
     "physical_disks": [{"serial": "raida"}, {"serial": "raidb"}]}]}' >/dev/null
  m=$(mark $N)
  provision "$BNODE" '{"target": "clean", "clean_steps": [{"interface": "raid", "step": "create_configuration"}]}'
  first_heartbeat raid_bios "$BNODE" $N "$m" 420
  reached raid_bios "$BNODE" manageable 600 $N "$m"
  lab_api PUT "/v1/nodes/$BNODE/states/provision" '{"target": "provide"}' >/dev/null
  wait_state "$BNODE" available 120 || fail "raid-bios: node did not become available"
  lab_api PATCH "/v1/nodes/$BNODE" "[{\"op\": \"add\", \"path\": \"/instance_info\", \"value\": {\"image_source\": \"$IMG/raidbios.raw\",
    \"image_os_hash_algo\": \"sha256\", \"image_os_hash_value\": \"$(sum "$I/raidbios.raw")\", \"image_disk_format\": \"raw\"}}]" >/dev/null
  lab_api PUT "/v1/nodes/$BNODE/states/provision" '{"target": "active"}' >/dev/null
  wait_state "$BNODE" active 600 || fail "raid-bios: deploy failed: $(node_field "$BNODE" "['last_error']")"
  booted_os raid_bios $N "$m" "rivet.flow=raid-bios"
  domain_off $N 120 || fail "raid-bios: the test OS did not power off"
  boot_disks raid-bios-without-b $N "rivet.flow=raid-bios" raidb
  boot_disks raid-bios-without-a $N "rivet.flow=raid-bios" raida
  lab_api PUT "/v1/nodes/$BNODE/states/provision" '{"target": "deleted"}' >/dev/null
  wait_state "$BNODE" available 120 || fail "raid-bios: node did not return to available"
  lab_api PUT "/v1/nodes/$BNODE/states/provision" '{"target": "manage"}' >/dev/null
  wait_state "$BNODE" manageable 60 || fail "raid-bios: node did not become manageable"
  m=$(mark $N)
  provision "$BNODE" '{"target": "clean", "clean_steps": [{"interface": "deploy", "step": "erase_devices_metadata"}]}'
  first_heartbeat raid_bios_erase "$BNODE" $N "$m" 420
  reached raid_bios_erase "$BNODE" manageable 600 $N "$m"
  lab_api PUT "/v1/nodes/$BNODE/states/power" '{"target": "power off"}' >/dev/null
  domain_off $N 60 || fail "raid-bios: Ironic did not power the node off"
  con=$(since $N "$m")
  grep -a -q "array not kept: stopped and its superblocks zeroed" <<<"$con" \
    || fail "raid-bios: the agent did not stop the array before the erase"
  erased=$(elog_disks "$con" "metadata erased")
  [[ "$erased" == *"disk=/dev/nvme0n1 "*"disk=/dev/nvme1n1 "* ]] || fail "raid-bios: the member disks were not erased whole: $erased"
  for d in raida raidb; do
    disk_raw $N $d "$LAB_DIR/$d.raw"
    [[ "$(md_magic "$LAB_DIR/$d.raw")" == 0 ]] || fail "raid-bios: $d still carries an md superblock"
    sig=$(blkid -p -o value -s TYPE "$LAB_DIR/$d.raw" || true)
    pt=$(blkid -p -o value -s PTTYPE "$LAB_DIR/$d.raw" || true)
    [[ -z "$sig$pt" ]] || fail "raid-bios: $d still carries '$sig$pt'"
    rm -f "$LAB_DIR/$d.raw"
  done
  echo "ok: raid-bios: the array nothing kept was stopped, its superblocks zeroed and both member disks erased whole"
}

# --- dib: the diskimage-builder ramdisk over virtual media; a manual cleaning ---------------
flow_dib() {
  DIB=${DIB_RAMDISK:-$LAB_DIR/dib-build}
  if [[ -n "${DIB_RAMDISK:-}" && ! -f "$DIB/.done" && -f "$DIB/.building" ]]; then
    # Built beside this test (the test command): wait for it.
    local wstart=$SECONDS
    while [[ ! -f "$DIB/.done" ]]; do
      [[ -f "$DIB/.failed" ]] && fail "dib: the DIB ramdisk build failed"
      ((SECONDS - wstart < 1500)) || fail "dib: the DIB ramdisk build did not end in 25 min"
      sleep 5
    done
    echo "time dib_build_wait $((SECONDS - wstart))s"
  fi
  if [[ ! -f "$DIB/rivet.initramfs" ]]; then
    bstart=$SECONDS
    RIVET_STEPS_DIR="$ROOT/tests/fixtures/steps.d" "$ROOT/scripts/build-dib-ramdisk.sh" "$DIB" | tail -1
    echo "time dib_build $((SECONDS - bstart))s"
  fi
  mkdir -p "$LAB_DIR/http/dib"
  cp "$DIB/rivet.kernel" "$DIB/rivet.initramfs" "$LAB_DIR/http/dib/"
  chmod -R a+rX "$LAB_DIR/http/dib"
  echo "dib ramdisk: initramfs $(($(stat -c %s "$DIB/rivet.initramfs") >> 20)) MiB, kernel $(($(stat -c %s "$DIB/rivet.kernel") >> 20)) MiB"
  N=vm-dib MAC=52:54:00:15:00:08
  # VLAN-only too (as metal3), the VLAN named outright by the NIC's MAC: the DIB ramdisk brings
  # its network up with the same `rivet network` as the minimal one.
  local tap; tap=$(lab_vlan_port dib 100) || fail "dib: cannot make the VLAN-only port"
  DOM=$(LAB_NIC_TAP=$tap lab_node $N uefi $MAC 2048 nvme:nvmetarget:8G virtio4k:v4ktarget:8G)
  NODE=$(enroll_redfish $N "$DOM" $MAC uefi) || fail "dib: enrolment failed"
  lab_api PATCH "/v1/nodes/$NODE" "[{\"op\": \"add\", \"path\": \"/driver_info/kernel_append_params\",
    \"value\": \"nofb vga=normal console=ttyS0,115200 ipa-enable-vlan-interfaces=$MAC.100\"}]" >/dev/null
  # Burn-in as operators configure it (driver_info), a few seconds each: stress-ng and fio
  # ship in the DIB ramdisk. Its ISO is Ironic's, built from the DIB kernel and initramfs.
  lab_api PATCH "/v1/nodes/$NODE" "[{\"op\": \"add\", \"path\": \"/driver_info/deploy_kernel\", \"value\": \"$LAB_HTTP/dib/rivet.kernel\"},
    {\"op\": \"add\", \"path\": \"/driver_info/deploy_ramdisk\", \"value\": \"$LAB_HTTP/dib/rivet.initramfs\"},
    {\"op\": \"add\", \"path\": \"/driver_info/agent_burnin_cpu_timeout\", \"value\": 3},
    {\"op\": \"add\", \"path\": \"/driver_info/agent_burnin_vm_timeout\", \"value\": 3},
    {\"op\": \"add\", \"path\": \"/driver_info/agent_burnin_vm_vm-bytes\", \"value\": \"10%\"}]" >/dev/null
  m=$(mark $N)
  provision "$NODE" '{"target": "clean", "clean_steps": [{"interface": "deploy", "step": "erase_devices_metadata"},
    {"interface": "deploy", "step": "burnin_cpu"}, {"interface": "deploy", "step": "burnin_memory"},
    {"interface": "deploy", "step": "write_marker", "args": {"text": "from-the-dib-ramdisk"}}]}'
  first_heartbeat dib "$NODE" $N "$m" 600
  reached dib "$NODE" manageable 600 $N "$m"
  con=$(since $N "$m")
  grep -a -q -E "VLAN 100 on [a-z0-9]+, DHCPv4" <<<"$con" \
    || fail "dib: VLAN 100 (named by MAC) was not brought up: $(grep -a -i -E "vlan|rivet-network|DHCP" <<<"$con" | tail -5)"
  echo "ok: dib: VLAN-only port: ipa-enable-vlan-interfaces=$MAC.100 brought the VLAN up and DHCP answered over it"
  grep -a -q "metadata erased" <<<"$con" || fail "dib: the agent's console output does not show the erase"
  for s in cpu vm; do
    grep -a "execute_clean_step: result" "$LAB_DIR/ironic.log" | grep "'tool': 'stress-ng'" | grep "'stressor': '$s'" >/dev/null \
      || fail "dib: the conductor did not get stress-ng's $s burn-in result; its last command list: $(grep -a "Status of agent commands for node $NODE" "$LAB_DIR/ironic.log" | tail -1 | cut -c1-3000)"
  done
  grep -a "execute_clean_step: result" "$LAB_DIR/ironic.log" | grep "'text': 'from-the-dib-ramdisk'" >/dev/null \
    || fail "dib: the custom step shipped in the ramdisk (RIVET_STEPS_DIR) did not run"
  echo "ok: dib: Ironic booted the DIB ramdisk from virtual media; erase, stress-ng burn-in and the shipped custom step ran"
  lab_api PUT "/v1/nodes/$NODE/states/power" '{"target": "power off"}' >/dev/null
}

# --- powerloss: Redfish ForceOff in the middle of write_image --------------------------------
# Its two NICs are an active-backup bond from network_data (DHCP on the bond); the redeploy
# loses the active NIC's link in the middle of write_image and still ends active.
flow_powerloss() {
  N=vm-powerloss MAC=52:54:00:15:00:09 MAC2=52:54:00:15:00:19
  DOM=$(LAB_NIC2_MAC=$MAC2 lab_node $N uefi $MAC 1024 nvme:nvmetarget:8G virtio:spare:1G)
  NODE=$(enroll_redfish $N "$DOM" $MAC uefi) || fail "powerloss: enrolment failed"
  lab_api PATCH "/v1/nodes/$NODE" "[{\"op\": \"add\", \"path\": \"/network_data\", \"value\": {
      \"links\": [{\"id\": \"nic0\", \"type\": \"phy\", \"ethernet_mac_address\": \"$MAC\"},
                  {\"id\": \"nic1\", \"type\": \"phy\", \"ethernet_mac_address\": \"$MAC2\"},
                  {\"id\": \"bond0\", \"type\": \"bond\", \"bond_mode\": \"active-backup\",
                   \"bond_links\": [\"nic0\", \"nic1\"], \"ethernet_mac_address\": \"$MAC\"}],
      \"networks\": [{\"id\": \"prov\", \"type\": \"ipv4_dhcp\", \"link\": \"bond0\", \"network_id\": \"prov\"}],
      \"services\": []}}]" >/dev/null || fail "powerloss: Ironic refused the bond's network_data"
  lab_api PUT "/v1/nodes/$NODE/states/provision" '{"target": "provide"}' >/dev/null
  wait_state "$NODE" available 120 || fail "powerloss: node did not become available"
  # The image comes through nginx's rate-limited path: the write lasts long enough to cut.
  lab_api PATCH "/v1/nodes/$NODE" "[{\"op\": \"add\", \"path\": \"/instance_info\", \"value\": {\"image_source\": \"$LAB_HTTP/slow/images/boot.raw\",
    \"image_os_hash_algo\": \"sha256\", \"image_os_hash_value\": \"$(sum "$I/boot.raw")\", \"image_disk_format\": \"raw\"}}]" >/dev/null
  m=$(mark $N)
  provision "$NODE" '{"target": "active"}'
  first_heartbeat powerloss "$NODE" $N "$m" 300
  wait_console $N "$m" "image recognised" 300 || fail "powerloss: the write never started: $(since $N "$m" | tail -10)"
  lab_in curl -sS --fail -u admin:password -H 'Content-Type: application/json' -X POST \
    "$LAB_REDFISH/redfish/v1/Systems/$DOM/Actions/ComputerSystem.Reset" -d '{"ResetType": "ForceOff"}' >/dev/null \
    || fail "powerloss: the BMC refused ForceOff"
  cut=$(date +%s)
  echo "ok: powerloss: the node lost its power (Redfish ForceOff) while write_image ran"
  wait_state "$NODE" "deploy failed" 400 || fail "powerloss: the node did not end in 'deploy failed'"
  # Ironic saves "deploy failed" first and the error its clean-up writes a moment later
  # (once read as null under load).
  for _ in $(seq 1 30); do
    err=$(node_field "$NODE" "['last_error']")
    [[ "$err" != null ]] && break
    sleep 1
  done
  # Ironic 39's timeout clean-up fails the node a second time ('fail' from 'deploy failed'), and
  # the error of that can take last_error's place (seen once in a CI run): the conductor's log
  # then still says why the node failed.
  if [[ "$err" != *"Timeout reached while waiting for callback"* ]]; then
    log_first "Timeout reached while waiting for callback for node $NODE" "$cut" >/dev/null \
      || fail "powerloss: unclear last_error, and no callback timeout in Ironic's log: $err"
    echo "note: powerloss: Ironic's log has the callback timeout; last_error holds its clean-up's error: $err"
    err="Timeout reached while waiting for callback for node $NODE (Ironic's log)"
  fi
  echo "ok: powerloss: 'deploy failed' $(( $(date +%s) - cut )) s after the cut; last_error: $err"
  # The next deploy succeeds and boots, though the bond's active NIC loses its link while the
  # image is written (slowly again, so there is a middle to cut in).
  m=$(mark $N)
  provision "$NODE" '{"target": "active"}'
  first_heartbeat powerloss_redeploy "$NODE" $N "$m" 300
  grep -a -q "link bond0 up" <<<"$(since $N "$m")" || fail "powerloss: no bond from network_data: $(since $N "$m" | grep -a -i -E "bond|network" | tail -5)"
  wait_console $N "$m" "image recognised" 300 || fail "powerloss: the write never started: $(since $N "$m" | tail -10)"
  virsh -c "$LAB_LIBVIRT" domif-setlink $N $MAC down >/dev/null || fail "powerloss: cannot take the NIC's link down"
  echo "ok: powerloss: the bond's first NIC ($MAC) lost its link in the middle of write_image"
  reached powerloss_redeploy "$NODE" active 900 $N "$m"
  # (grep -c reads to the end: grep -q would close the pipe early and fail it under pipefail)
  since $N "$m" | grep -a -c -E "bond0: .*(making interface .* the new active one|link status definitely down)" >/dev/null \
    || fail "powerloss: the bond did not fail over: $(since $N "$m" | grep -a -i bond | tail -5)"
  echo "ok: powerloss: the bond failed over to $MAC2 and the deploy finished"
  booted_os powerloss $N "$m" "rivet.flow=uefi"
}

# --- rescue: rescue_interface agent; the rescue user logs in on the serial console -----------
# Over iPXE: Ironic 39's redfish-virtual-media boot powers the node off when it cleans up the
# rescue ramdisk's boot (unless fast-track keeps the agent), which leaves a rescued node off.
flow_rescue() {
  N=vm-rescue MAC=52:54:00:15:00:0a
  lab_node $N uefi $MAC 1024 nvme:nvmetarget:8G virtio:spare:1G >/dev/null
  lab_vbmc $N 6234
  NODE=$(enroll_ipmi $N 6234 $MAC uefi) || fail "rescue: enrolment failed"
  # An ipa-ntp-server where no NTP server runs: one clear log line, no wait, the flows go on.
  lab_api PATCH "/v1/nodes/$NODE" "[{\"op\": \"add\", \"path\": \"/driver_info/kernel_append_params\",
    \"value\": \"nofb vga=normal console=ttyS0,115200 ipa-insecure=1 ipa-ntp-server=$LAB_NO_NTP\"}]" >/dev/null
  lab_api PATCH "/v1/nodes/$NODE" "[{\"op\": \"replace\", \"path\": \"/rescue_interface\", \"value\": \"agent\"},
    {\"op\": \"add\", \"path\": \"/instance_info\", \"value\": {\"image_source\": \"$IMG/boot.qcow2\",
    \"image_os_hash_algo\": \"sha256\", \"image_os_hash_value\": \"$(sum "$I/boot.qcow2")\", \"image_disk_format\": \"qcow2\"}}]" >/dev/null
  lab_api PUT "/v1/nodes/$NODE/states/provision" '{"target": "provide"}' >/dev/null
  wait_state "$NODE" available 120 || fail "rescue: node did not become available"
  m=$(mark $N)
  provision "$NODE" '{"target": "active"}'
  wait_state "$NODE" active 900 || fail "rescue: deploy failed: $(node_field "$NODE" "['last_error']")"
  line=$(since $N "$m" | grep -a -o "no NTP server answered ($LAB_NO_NTP:123: refused[^)]*)" | sed -n 1p)
  [[ -n "$line" ]] \
    || fail "rescue: no clear line for the unreachable NTP server: $(since $N "$m" | grep -a -i -E "ntp|clock" | tail -4)"
  echo "ok: rescue: an NTP server that is not there: \"$line\", and the deploy went on"
  booted_os rescue_deploy $N "$m" "rivet.flow=uefi"
  m=$(mark $N)
  provision "$NODE" '{"target": "rescue", "rescue_password": "Rivet-rescue-pw"}'
  first_heartbeat rescue "$NODE" $N "$m" 300
  reached rescue "$NODE" rescue 600 $N "$m"
  wait_console $N "$m" "rescue: login on" 60 || fail "rescue: the ramdisk offers no login: $(since $N "$m" | tail -10)"
  out=$(lab_console $N rescue Rivet-rescue-pw 'id -un; cat /proc/cmdline') || fail "rescue: login failed: $out"
  [[ "$out" == *"rescue"* && "$out" == *"LAB-CONSOLE-42"* ]] || fail "rescue: unexpected session: $out"
  echo "ok: rescue: the rescue user logged in on the serial console with the operator's password"
  if lab_console $N rescue wrong-password 'id -un' >/dev/null 2>&1; then
    fail "rescue: a wrong password logged in"
  fi
  m=$(mark $N)
  provision "$NODE" '{"target": "unrescue"}'
  wait_state "$NODE" active 600 || fail "rescue: unrescue failed: $(node_field "$NODE" "['last_error']")"
  booted_os unrescue $N "$m" "rivet.flow=uefi"
  echo "ok: rescue: unrescue returned the node to active and its OS"
}

# --- faults: what goes wrong on an operator's first day ends in a clear error ----------------
#  a BMC that refuses the password: the node stays in "enroll", its last error says why;
#  an ISO Ironic cannot build (the node's deploy_kernel is not there): "clean failed", naming it;
#  a DHCP server that answers late: meanwhile the agent says it cannot reach the conductor,
#  and names it; once the NIC has an address it heartbeats and the cleaning ends.
flow_faults() {
  local n=vm-faults mac=52:54:00:15:00:0b dom uuid state err
  dom=$(lab_node $n uefi $mac 1024 nvme:nvmetarget:4G)
  uuid=$(lab_api POST /v1/nodes "{\"name\": \"$n\", \"driver\": \"redfish\",
      \"boot_interface\": \"redfish-virtual-media\", \"network_interface\": \"noop\",
      \"driver_info\": {\"redfish_address\": \"$LAB_REDFISH\",
        \"redfish_system_id\": \"/redfish/v1/Systems/$dom\", \"redfish_username\": \"admin\",
        \"redfish_password\": \"not-the-password\"},
      \"properties\": {\"capabilities\": \"boot_mode:uefi\"}}" | field "['uuid']") \
    || fail "faults: enrolment failed"
  lab_api POST /v1/ports "{\"node_uuid\": \"$uuid\", \"address\": \"$mac\"}" >/dev/null
  lab_api PUT "/v1/nodes/$uuid/states/provision" '{"target": "manage"}' >/dev/null
  local end=$((SECONDS + 120))
  while ((SECONDS < end)); do
    state=$(node_field "$uuid" "['provision_state']")
    err=$(node_field "$uuid" "['last_error']")
    [[ "$state" == enroll && -n "$err" && "$err" != null ]] && break
    [[ "$state" == manageable ]] && fail "faults: the BMC took a wrong password (node manageable)"
    sleep 2
  done
  [[ "$state" == enroll ]] || fail "faults: wrong BMC password: node '$state', no error within 120 s"
  grep -q -i -E "401|unauthori[sz]ed|authenticat|credential|access" <<<"$err" \
    || fail "faults: wrong BMC password: unclear last error: $err"
  echo "ok: faults: a wrong BMC password leaves the node in enroll: ${err:0:160}"
  lab_api PATCH "/v1/nodes/$uuid" '[{"op": "replace", "path": "/driver_info/redfish_password", "value": "password"}]' >/dev/null
  lab_api PUT "/v1/nodes/$uuid/states/provision" '{"target": "manage"}' >/dev/null
  wait_state "$uuid" manageable 180 || fail "faults: the right password did not make the node manageable"

  local clean='{"target": "clean", "clean_steps": [{"interface": "deploy", "step": "erase_devices_metadata"}]}'
  lab_api PATCH "/v1/nodes/$uuid" "[{\"op\": \"add\", \"path\": \"/driver_info/deploy_kernel\", \"value\": \"$LAB_HTTP/missing/rivet.kernel\"},
    {\"op\": \"add\", \"path\": \"/driver_info/deploy_ramdisk\", \"value\": \"$LAB_HTTP/missing/rivet.initramfs\"}]" >/dev/null
  provision "$uuid" "$clean"
  wait_state "$uuid" "clean failed" 300 || fail "faults: a missing deploy_kernel did not fail the cleaning"
  err=$(node_field "$uuid" "['last_error']")
  grep -q -E "missing/rivet\.(kernel|initramfs)|404|Not Found" <<<"$err" \
    || fail "faults: missing deploy_kernel: unclear last error: $err"
  echo "ok: faults: an ISO Ironic cannot build fails the cleaning: ${err:0:200}"
  lab_api PATCH "/v1/nodes/$uuid" '[{"op": "remove", "path": "/driver_info/deploy_kernel"}, {"op": "remove", "path": "/driver_info/deploy_ramdisk"}]' >/dev/null
  lab_api PUT "/v1/nodes/$uuid/states/provision" '{"target": "manage"}' >/dev/null
  wait_state "$uuid" manageable 180 || fail "faults: the node did not return to manageable"

  lab_dhcp_ignore $mac
  local m; m=$(mark $n)
  provision "$uuid" "$clean"
  wait_console $n "$m" "lookup failed, retrying" 300 \
    || { lab_dhcp_answer $mac; fail "faults: no DHCP answer, and the agent did not say it cannot reach the conductor: $(since $n "$m" | tail -15)"; }
  local line; line=$(since $n "$m" | grep -a "lookup failed, retrying" | head -1)
  [[ "$line" == *"cannot reach the Ironic API"*"$LAB_IP:6385"* ]] || { lab_dhcp_answer $mac; fail "faults: unclear agent log line: $line"; }
  echo "ok: faults: without an address the agent logs: $(grep -a -o "lookup failed.*" <<<"$line" | cut -c1-200)"
  sleep 15   # DHCP answers late: 15 s after the agent first said so
  state=$(node_field "$uuid" "['provision_state']")
  [[ "$state" == "clean wait" ]] || { lab_dhcp_answer $mac; fail "faults: node '$state' while the agent had no address"; }
  lab_dhcp_answer $mac
  first_heartbeat faults_dhcp_late "$uuid" $n "$m" 300
  reached faults_dhcp_late "$uuid" manageable 600 $n "$m"
  echo "ok: faults: the NIC got its address late; the agent heartbeated and the cleaning ended"
}

# --- arm64: an arm64 server (QEMU's virt machine, AAVMF) behind Redfish, booted by Ironic over
# virtual media with the arm64 ramdisk it picks by the node's cpu_arch ([conductor]
# deploy_kernel_by_arch, bootloader_by_arch: Debian's arm64 shim and GRUB); inspected, then
# in the same boot (fast-track) a whole-disk arm64 image with a config drive; it boots.
flow_arm64() {
  N=vm-arm64 MAC=52:54:00:15:00:0e
  if [[ -n "${RIVET_ARM64_STATUS:-}" ]]; then
    local t=$SECONDS
    until [[ -f "$RIVET_ARM64_STATUS/.done" ]]; do
      [[ -f "$RIVET_ARM64_STATUS/.failed" ]] && fail "arm64: the aarch64 static build failed"
      ((SECONDS - t < 1800)) || fail "arm64: no aarch64 static build after 1800 s"
      sleep 5
    done
    echo "ok: arm64: waited $((SECONDS - t)) s for the aarch64 static build"
  fi
  export RIVET_ARM64
  lab_arm64_boot_files_up || fail "arm64: the arm64 ramdisk or ESP image could not be made"
  local k=$LAB_DIR/http/ramdisk-arm64/rivet.kernel
  ARCH=aarch64 "$ROOT/tests/vm/make-boot-image.sh" "$I/boot-arm64.raw" "$k"
  qemu-img convert -f raw -O qcow2 -c "$I/boot-arm64.raw" "$I/boot-arm64.qcow2"
  PART_UUID_ARM64=4d6f6e21-0000-4000-8000-0000000000a6
  ARCH=aarch64 "$ROOT/tests/vm/make-partition-image.sh" "$I/part-arm64.raw" "$k" "$PART_UUID_ARM64" >/dev/null
  qemu-img convert -f raw -O qcow2 -c "$I/part-arm64.raw" "$I/part-arm64.qcow2"
  chmod a+r "$I"/*-arm64.*
  DOM=$(lab_node $N uefi-arm64 $MAC 1024 virtio:a64target:4G)
  # Enrolled as a machine of unknown architecture: its driver_info names the arm64 ramdisk
  # and ESP (as an operator does for that first boot); inspection then sets cpu_arch, by
  # which Ironic picks them on its own for every later boot (*_by_arch).
  NODE=$(enroll_redfish $N "$DOM" $MAC uefi) || fail "arm64: enrolment failed"
  local a64=$LAB_HTTP/ramdisk-arm64
  lab_api PATCH "/v1/nodes/$NODE" "[{\"op\": \"add\", \"path\": \"/properties/root_device\", \"value\": {\"serial\": \"a64target\"}},
    {\"op\": \"add\", \"path\": \"/driver_info/fast_track\", \"value\": true},
    {\"op\": \"add\", \"path\": \"/driver_info/kernel_append_params\", \"value\": \"nofb console=ttyAMA0,115200\"},
    {\"op\": \"add\", \"path\": \"/driver_info/deploy_kernel\", \"value\": \"$a64/rivet.kernel\"},
    {\"op\": \"add\", \"path\": \"/driver_info/deploy_ramdisk\", \"value\": \"$a64/rivet.initramfs\"},
    {\"op\": \"add\", \"path\": \"/driver_info/bootloader\", \"value\": \"$LAB_HTTP/esp-arm64.img\"}]" >/dev/null \
    || fail "arm64: Ironic refused the node's settings"
  m=$(mark $N)
  provision "$NODE" '{"target": "inspect"}'
  first_heartbeat arm64 "$NODE" $N "$m" 600
  wait_state "$NODE" manageable 300 || fail "arm64: inspection failed: $(node_field "$NODE" "['last_error']")"
  lab_api GET "/v1/nodes/$NODE/inventory" | "$PY" -c "import json,sys
inv = json.load(sys.stdin)['inventory']
cpu = inv['cpu']
assert cpu['architecture'] == 'aarch64', cpu
assert inv['boot']['current_boot_mode'] == 'uefi', inv['boot']
assert any(d.get('serial') == 'a64target' for d in inv['disks']), inv['disks']
print('ok: arm64: inspected; the inventory Ironic stored: cpu', {k: cpu.get(k) for k in ('architecture', 'model_name', 'count')},
      'boot', inv['boot']['current_boot_mode'], 'system', inv['system_vendor'].get('product_name'))" \
    || fail "arm64: the inventory Ironic stored is not an arm64 machine's"
  [[ "$(node_field "$NODE" "['properties'].get('cpu_arch')")" == aarch64 ]] \
    || fail "arm64: inspection did not set the node's cpu_arch: $(node_field "$NODE" "['properties']")"
  grep -a -q "Discovered CPU architecture: aarch64 for node: $NODE" "$LAB_DIR/ironic.log" \
    || fail "arm64: Ironic's architecture hook did not take aarch64 from the inventory"
  echo "ok: arm64: inspection set cpu_arch aarch64 (Ironic's architecture hook, from the inventory)"
  # From here Ironic picks the arm64 ramdisk and ESP by cpu_arch alone.
  lab_api PATCH "/v1/nodes/$NODE" '[{"op": "remove", "path": "/driver_info/deploy_kernel"},
    {"op": "remove", "path": "/driver_info/deploy_ramdisk"}, {"op": "remove", "path": "/driver_info/bootloader"}]' >/dev/null \
    || fail "arm64: Ironic refused to drop the node's own ramdisk"
  con=$(since $N "$m")
  grep -a -q "boot_method=vmedia" <<<"$con" || fail "arm64: the ramdisk was not booted from virtual media"
  lab_api PUT "/v1/nodes/$NODE/states/provision" '{"target": "provide"}' >/dev/null
  wait_state "$NODE" available 120 || fail "arm64: node did not become available"
  lab_api PATCH "/v1/nodes/$NODE" "[{\"op\": \"add\", \"path\": \"/instance_info\", \"value\": {\"image_source\": \"$IMG/boot-arm64.qcow2\",
    \"image_os_hash_algo\": \"sha256\", \"image_os_hash_value\": \"$(sum "$I/boot-arm64.qcow2")\", \"image_disk_format\": \"qcow2\"}}]" >/dev/null
  lab_api PUT "/v1/nodes/$NODE/states/provision" \
    '{"target": "active", "configdrive": {"meta_data": {"hostname": "arm64.rivet.example"}}}' >/dev/null
  reached arm64 "$NODE" active 600 $N "$m"
  booted_os arm64 $N "$m" "rivet.flow=uefi-arm64"
  domain_off $N 120 || fail "arm64: the test OS did not power off"
  disk_raw $N a64target "$LAB_DIR/arm64-disk.raw"
  local size; size=$(stat -c %s "$I/boot-arm64.raw")
  cmp -i 1048576:1048576 -n $((size - 1048576)) "$I/boot-arm64.raw" "$LAB_DIR/arm64-disk.raw" \
    || fail "arm64: the disk differs from the image"
  config_drive arm64 "$LAB_DIR/arm64-disk.raw"
  rm -f "$LAB_DIR/arm64-disk.raw"
  echo "ok: arm64: the disk holds the arm64 image and a config-2 partition; one ramdisk boot from inspection to the deployed OS"
  # Then a partition image whose only boot loader is the GRUB the agent installs from it
  # (grub-install --target=arm64-efi in the image's chroot).
  lab_api PUT "/v1/nodes/$NODE/states/provision" '{"target": "deleted"}' >/dev/null
  wait_state "$NODE" available 300 || fail "arm64: undeploy failed: $(node_field "$NODE" "['last_error']")"
  lab_api PATCH "/v1/nodes/$NODE" "[{\"op\": \"add\", \"path\": \"/instance_info\", \"value\": {\"image_source\": \"$IMG/part-arm64.qcow2\",
    \"image_os_hash_algo\": \"sha256\", \"image_os_hash_value\": \"$(sum "$I/part-arm64.qcow2")\", \"image_disk_format\": \"qcow2\",
    \"image_type\": \"partition\", \"kernel\": \"$IMG/vmlinuz\", \"ramdisk\": \"$IMG/initrd\", \"root_gb\": \"1\"}}]" >/dev/null
  m=$(mark $N)
  provision "$NODE" '{"target": "active"}'
  # (booted by [conductor]deploy_kernel_by_arch and bootloader_by_arch: the conductor's default
  # ramdisk is x86_64's, which an arm64 machine cannot run)
  first_heartbeat arm64_partition "$NODE" $N "$m" 600
  reached arm64_partition "$NODE" active 600 $N "$m"
  booted_os arm64_partition $N "$m" "rivet.flow=partition-grub-arm64"
  stored=$(node_field "$NODE" "['driver_internal_info'].get('root_uuid_or_disk_id')")
  [[ "$stored" == "$PART_UUID_ARM64" ]] || fail "arm64: Ironic stored root uuid '$stored', expected $PART_UUID_ARM64"
  domain_off $N 120 || fail "arm64: the partition image's OS did not power off"
  # The ESP the agent made holds arm64 loaders only: GRUB's removable path, no x86 name.
  disk_raw $N a64target "$LAB_DIR/arm64-disk.raw"
  local esp; esp=$(sgdisk -p "$LAB_DIR/arm64-disk.raw" | awk '$6 == "EF00" {print $2; exit}')
  [[ -n "$esp" ]] || fail "arm64: no ESP on the disk: $(sgdisk -p "$LAB_DIR/arm64-disk.raw" | tail -4)"
  loaders=$(mdir -b -i "$LAB_DIR/arm64-disk.raw@@$((esp * 512))" ::/EFI/BOOT 2>/dev/null | tr '\n' ' ' || true)
  [[ "$loaders" == *BOOTAA64.EFI* && "$loaders" != *X64* ]] || fail "arm64: the ESP's EFI/BOOT holds: $loaders"
  rm -f "$LAB_DIR/arm64-disk.raw"
  echo "ok: arm64: a partition image booted through the GRUB (arm64-efi) the agent installed from it"
}

# timelines: where each ramdisk boot of this lane spent its time, from its console (guest
# clock); every boot must show the agent's first accepted heartbeat.
timelines() {
  local b name m label
  for b in "${RAMDISK_BOOTS[@]}"; do
    IFS=: read -r name m label <<<"$b"
    since "$name" "$m" > "$LAB_DIR/boot-$label.log"
    grep -a -q "boot timeline" "$LAB_DIR/boot-$label.log" || fail "$label: the agent's console shows no boot timeline"
    "$ROOT/scripts/boot-timeline.sh" "$LAB_DIR/boot-$label.log" "$label"
    if ! grep -a -q -E "phase=\"?heartbeat_accepted" "$LAB_DIR/boot-$label.log"; then
      # The DIB ramdisk's agent logs through systemd to a console it shares with the kernel
      # and journald; under three lanes this line was once missing from the console log while
      # Ironic's own log had the heartbeat (first_heartbeat reads it there). The minimal
      # ramdisk's agent writes the console itself: there the line must be.
      [[ "$label" == dib ]] || fail "$label: the agent did not log its first accepted heartbeat in the timeline"
      echo "note: $label: the console lost the agent's heartbeat_accepted line (Ironic's log has the heartbeat)"
    fi
  done
}

# --- lanes: the flows run in LANES groups side by side (each flow's nodes are its own), which
# fills the time the conductor, the firmware and the boot loaders spend waiting. A lane's
# output is printed when it ends; any lane failing fails the run.
LANES=${LANES:-3}
lane_flows() { # N: the flows of lane N (of $LANES), the longest first, each lane in order
  local order="raid ipxe powerloss vmedia rescue metal3 ipv6 dib faults arm64" f i=0 out=""
  if ((LANES == 1)); then echo "$order"; return; fi
  case "$LANES:$1" in
    2:0) order="raid vmedia metal3 ipv6 dib" ;;
    2:1) order="ipxe powerloss rescue faults arm64" ;;
    3:0) order="raid metal3" ;;
    3:1) order="ipxe powerloss vmedia" ;;
    3:2) order="rescue ipv6 dib faults arm64" ;;
    *) echo "FAIL: LANES must be 1, 2 or 3" >&2; exit 2 ;;
  esac
  echo "$order"
}
declare -a LANE_PID
for ((l = 0; l < LANES; l++)); do
  (
    RAMDISK_BOOTS=()
    for f in $(lane_flows $l); do
      want "$f" || continue
      fstart=$SECONDS
      echo "=== flow $f"
      "flow_$f"
      echo "=== flow $f: ok ($((SECONDS - fstart)) s)"
    done
    ((${#RAMDISK_BOOTS[@]} == 0)) || timelines
  ) > "$LAB_DIR/lane-$l.log" 2>&1 &
  LANE_PID[$l]=$!
done
failed=()
for ((l = 0; l < LANES; l++)); do
  rc=0; wait "${LANE_PID[$l]}" || rc=$?
  echo "=== lane $l ($(lane_flows $l | tr ' ' '\n' | while read -r f; do want "$f" && printf '%s ' "$f"; done)): $( ((rc == 0)) && echo ok || echo FAILED)"
  cat "$LAB_DIR/lane-$l.log"
  ((rc == 0)) || failed+=("$l")
done
# The failing flow and its FAIL line named again last: a log cut to its tail still says which.
if ((${#failed[@]})); then
  why=""
  for l in "${failed[@]}"; do
    why+=" lane $l: flow $(grep -a -E '^=== flow [a-z0-9_]+$' "$LAB_DIR/lane-$l.log" | tail -1 | cut -d' ' -f3 || true):"
    why+=" $(grep -a -E '^FAIL: ' "$LAB_DIR/lane-$l.log" | tail -1 | cut -c7-400 || true);"
  done
  fail "a lane failed (above):$why"
fi
echo "PASS vm deploy in the lab ($((SECONDS - t0)) s)"
