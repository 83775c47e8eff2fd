#!/usr/bin/env bash
# The lab: Ironic powers, boots and networks the nodes itself, as in Bifrost and Metal3.
#
# One network namespace holds everything: a bridge for the provisioning network
# (192.168.150.0/24 and fd00:150::/64, no router advertisements), a second one for IPv6-only
# nodes (fd00:151::/64: router advertisements and DHCPv6, nothing IPv4), dnsmasq on them (DHCP; TFTP with iPXE; iPXE clients chained to Ironic's
# boot.ipxe, as Bifrost configures it), nginx serving Ironic's http_root and the test images,
# the real Ironic 39 (API on HTTPS, conductor) with the redfish and ipmi hardware types, the
# ipxe and redfish-virtual-media boot interfaces and Rivet's ramdisks as deploy kernel and
# ramdisk, libvirtd running TCG domains (OVMF or SeaBIOS; NVMe, virtio and 4Kn disks; a NIC on
# the bridge), sushy-tools (Redfish with virtual media) and virtualbmc (IPMI) in front of them.
# Nothing listens or sends outside the namespace; libvirtd's state lives in its own mount
# namespace on tmpfs. `lab_down` (also on a failed start) leaves no namespace, domain,
# process or file behind.
#
# As a command:  tests/lab/lab.sh up|down|status     (RIVET=, RAMDISK= as below)
# As a library:  source tests/lab/lab.sh; lab_up; lab_node …; … ; lab_down
#   env: RIVET (the static binary the ramdisk carries), RAMDISK (a directory with
#        rivet.kernel/rivet.initramfs; built from RIVET when missing), LAB_DIR (/tmp/rivet-lab),
#        LAB_NS (rivetlab), LAB_VENV (~/.cache/rivet-lab/venv: sushy-tools, virtualbmc)
set -euo pipefail
shopt -s inherit_errexit

LAB_SELF=$(readlink -f "${BASH_SOURCE[0]}")
LAB_ROOT=$(cd "$(dirname "$LAB_SELF")/../.." && pwd)
LAB_NS=${LAB_NS:-rivetlab}
LAB_DIR=${LAB_DIR:-${TMPDIR:-/tmp}/rivet-lab}
LAB_VENV=${LAB_VENV:-$HOME/.cache/rivet-lab/venv}
LAB_BR=brlab
LAB_IP=192.168.150.1
LAB_NO_NTP=192.168.150.2
LAB_IP6=fd00:150::1
LAB_BR6=brlab6
LAB_IP6ONLY=fd00:151::1
LAB_SAN_WWN=0x5000c50015ea71ac
LAB_API="https://$LAB_IP:6385"
LAB_HTTP="http://$LAB_IP:8080"
LAB_REDFISH="http://$LAB_IP:8000"
LAB_LIBVIRT="qemu:///system?socket=$LAB_DIR/run/libvirt-sock"
LAB_PACKAGES=(libvirt-daemon-system libvirt-clients libvirt-dev dnsmasq-base ipmitool ipxe
  xorriso isolinux syslinux-common nginx-light shim-signed grub-efi-amd64-signed ovmf
  seabios qemu-system-x86 openssl pkg-config gcc chrony ethtool qemu-system-arm qemu-efi-aarch64)

lab_log() { echo "lab: $*" >&2; }
lab_fail() { echo "lab: FAIL: $*" >&2; return 1; }
# Run in the lab's network namespace.
lab_in() { ip netns exec "$LAB_NS" "$@"; }
# lab_daemon NAME LOG CMD...: start CMD in the namespace in the background, its pid (the
# daemon's own: `ip netns exec` and the subshell both exec) in $LAB_DIR/pids/NAME.
lab_daemon() {
  local name=$1 log=$2; shift 2
  ( exec ip netns exec "$LAB_NS" "$@" ) >"$log" 2>&1 &
  echo $! > "$LAB_DIR/pids/$name"
  # lab_down kills it; the shell has no job to report ("Killed") then.
  disown $!
}

# lab_deps: Debian packages and the Python tools (sushy-tools, virtualbmc) in their own venv;
# Ironic's venv (scripts/ironic/run-ironic.sh install) gains sushy for the redfish driver.
lab_deps() {
  "$LAB_ROOT/scripts/apt-install.sh" "${LAB_PACKAGES[@]}"
  if [[ ! -x "$LAB_VENV/bin/sushy-emulator" || ! -x "$LAB_VENV/bin/vbmcd" ]]; then
    lab_log "making $LAB_VENV (sushy-tools, virtualbmc, libvirt-python)"
    python3 -m venv "$LAB_VENV"
    "$LAB_VENV/bin/pip" install -q -U pip
    "$LAB_VENV/bin/pip" install -q sushy-tools virtualbmc libvirt-python
  fi
  "$LAB_ROOT/scripts/ironic/run-ironic.sh" install >/dev/null
  local venv=${VENV:-$HOME/.cache/rivet-ironic/venv}
  "$venv/bin/python" -c 'import sushy' 2>/dev/null || "$venv/bin/pip" install -q sushy
}

# --- the network namespace and its bridge ------------------------------------------------
lab_net_up() {
  ip netns add "$LAB_NS"
  ip -n "$LAB_NS" link set lo up
  ip -n "$LAB_NS" link add "$LAB_BR" type bridge stp_state 0 forward_delay 0
  ip -n "$LAB_NS" addr add "$LAB_IP/24" dev "$LAB_BR"
  # A second address where nothing serves NTP (an operator's wrong ipa-ntp-server).
  ip -n "$LAB_NS" addr add "$LAB_NO_NTP/24" dev "$LAB_BR"
  # IPv6 on the same bridge, static only (no router advertisements: network_data's static
  # IPv6 is tested there); nodad: nginx binds it at once.
  ip -n "$LAB_NS" addr add "$LAB_IP6/64" dev "$LAB_BR" nodad
  ip -n "$LAB_NS" link set "$LAB_BR" up
  # The IPv6-only provisioning network: router advertisements and DHCPv6 from dnsmasq.
  ip -n "$LAB_NS" link add "$LAB_BR6" type bridge stp_state 0 forward_delay 0 mcast_snooping 0
  ip -n "$LAB_NS" addr add "$LAB_IP6ONLY/64" dev "$LAB_BR6" nodad
  ip -n "$LAB_NS" link set "$LAB_BR6" up
}

# --- libvirtd: in the lab's network namespace (the domains' taps go on its bridge) and in a
# mount namespace of its own whose /etc/libvirt, /var/lib/libvirt, /run/libvirt, caches and
# logs are tmpfs (nothing of it is left on the machine). QEMU runs as root: libvirt's probe of
# QEMU as libvirt-qemu fails on this machine kind (/dev/kvm it cannot use) and is then
# repeated on every call. Clients reach it through $LAB_LIBVIRT.
lab_libvirtd_inner() { # (runs inside the new mount namespace, then becomes libvirtd)
  local d
  for d in /etc/libvirt /var/lib/libvirt /run/libvirt /var/cache/libvirt; do
    mkdir -p "$d"; mount -t tmpfs -o mode=0755 tmpfs "$d"
  done
  # The domains' QEMU logs stay readable from outside (and go with the lab's directory).
  mkdir -p /var/log/libvirt "$LAB_DIR/qemu-logs"
  mount --bind "$LAB_DIR/qemu-logs" /var/log/libvirt
  mkdir -p /etc/libvirt/qemu /var/lib/libvirt/qemu /var/log/libvirt/qemu "$LAB_DIR/run"
  cat > /etc/libvirt/libvirtd.conf <<CONF
unix_sock_dir = "$LAB_DIR/run"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:$LAB_DIR/libvirtd.log"
CONF
  cat > /etc/libvirt/qemu.conf <<CONF
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
stdio_handler = "file"
namespaces = [ ]
remember_owner = 0
CONF
  exec libvirtd -f /etc/libvirt/libvirtd.conf 2>>"$LAB_DIR/libvirtd.log"
}
lab_libvirtd_up() {
  lab_daemon libvirtd "$LAB_DIR/libvirtd.stdout" unshare -m --propagation private \
    env LAB_DIR="$LAB_DIR" LAB_NS="$LAB_NS" bash "$LAB_SELF" _libvirtd_inner
  local _
  for _ in $(seq 1 100); do
    virsh -c "$LAB_LIBVIRT" version >/dev/null 2>&1 && return 0
    kill -0 "$(cat "$LAB_DIR/pids/libvirtd")" 2>/dev/null || break
    sleep 0.2
  done
  tail -20 "$LAB_DIR/libvirtd.log" >&2 || true
  lab_fail "libvirtd did not start"
}

# --- TLS for Ironic's API: a CA of the lab's own and a certificate for the bridge address.
# The CA goes into the virtual-media ISOs ([agent]api_ca_file), so the agent verifies Ironic.
lab_tls_up() {
  local t=$LAB_DIR/tls
  mkdir -p "$t"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=Rivet lab CA" \
    -keyout "$t/ca.key" -out "$t/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$LAB_IP" -keyout "$t/server.key" \
    -out "$t/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:%s,IP:%s,IP:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
    "$LAB_IP" "$LAB_IP6" "$LAB_IP6ONLY" > "$t/ext"
  openssl x509 -req -in "$t/server.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -CAcreateserial \
    -days 2 -extfile "$t/ext" -out "$t/server.pem" 2>/dev/null
}

# --- nginx: Ironic's http_root (boot.ipxe, per-node iPXE scripts, deploy kernels and
# ramdisks, virtual-media ISOs) and the test images, with Range support for the agent.
lab_nginx_up() {
  mkdir -p "$LAB_DIR/http" "$LAB_DIR/nginx"
  cat > "$LAB_DIR/nginx/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $LAB_DIR/nginx/nginx.pid;
error_log $LAB_DIR/nginx/error.log;
events { worker_connections 256; }
http {
  access_log $LAB_DIR/nginx/access.log;
  client_body_temp_path $LAB_DIR/nginx/body;
  proxy_temp_path $LAB_DIR/nginx/proxy;
  fastcgi_temp_path $LAB_DIR/nginx/fastcgi;
  uwsgi_temp_path $LAB_DIR/nginx/uwsgi;
  scgi_temp_path $LAB_DIR/nginx/scgi;
  sendfile on;
  default_type application/octet-stream;
  server {
    listen $LAB_IP:8080;
    listen [$LAB_IP6]:8080;
    listen [$LAB_IP6ONLY]:8080;
    # HTTPS with the lab's certificate: an image server the agent verifies with the CA.
    listen $LAB_IP:8443 ssl;
    listen [$LAB_IP6]:8443 ssl;
    ssl_certificate $LAB_DIR/tls/server.pem;
    ssl_certificate_key $LAB_DIR/tls/server.key;
    # Ironic 39 asks image servers for TLS 1.3 (webserver_tls_minimum_version); this nginx
    # offers up to 1.2 unless told.
    ssl_protocols TLSv1.2 TLSv1.3;
    root $LAB_DIR/http;
    # The same files at 4 MiB/s: a write that lasts long enough to be interrupted.
    location /slow/ { alias $LAB_DIR/http/; limit_rate 4m; }
  }
}
CONF
  # nginx's workers run as nobody: the tree they serve must be readable.
  chmod 755 "$LAB_DIR" "$LAB_DIR/http"
  lab_daemon nginx "$LAB_DIR/nginx/stdout.log" nginx -c "$LAB_DIR/nginx/nginx.conf"
}

# --- dnsmasq on the bridge, as Bifrost configures it for Ironic's dhcp_provider "none":
# firmware PXE gets iPXE over TFTP (snponly.efi for UEFI, undionly.kpxe for BIOS), iPXE gets
# Ironic's boot.ipxe over HTTP; every node (and the agent in it) gets an address. On the
# IPv6-only bridge: router advertisements (managed: addresses from DHCPv6; no default route)
# and DHCPv6 with a name server.
lab_dnsmasq_up() {
  mkdir -p "$LAB_DIR/tftp"
  cp /usr/lib/ipxe/snponly.efi /usr/lib/ipxe/undionly.kpxe "$LAB_DIR/tftp/"
  cat > "$LAB_DIR/dnsmasq.conf" <<CONF
port=0
interface=$LAB_BR
bind-interfaces
dhcp-range=192.168.150.100,192.168.150.199,1h
dhcp-leasefile=$LAB_DIR/dnsmasq.leases
dhcp-authoritative
log-dhcp
enable-tftp
tftp-root=$LAB_DIR/tftp
dhcp-match=set:ipxe,175
dhcp-match=set:efi,option:client-arch,7
dhcp-match=set:efi,option:client-arch,9
dhcp-match=set:efi,option:client-arch,11
dhcp-boot=tag:efi,tag:!ipxe,snponly.efi
dhcp-boot=tag:!efi,tag:!ipxe,undionly.kpxe
dhcp-boot=tag:ipxe,$LAB_HTTP/boot.ipxe
dhcp-hostsfile=$LAB_DIR/dhcp-hosts
interface=$LAB_BR6
dhcp-range=fd00:151::100,fd00:151::1ff,64,1h
enable-ra
ra-param=$LAB_BR6,10,0
dhcp-option=option6:dns-server,[$LAB_IP6ONLY]
CONF
  # Per-MAC entries ("MAC,ignore" keeps a node without an address); read again on SIGHUP.
  : > "$LAB_DIR/dhcp-hosts"
  lab_daemon dnsmasq "$LAB_DIR/dnsmasq.stdout" dnsmasq --keep-in-foreground \
    --conf-file="$LAB_DIR/dnsmasq.conf" --pid-file="$LAB_DIR/dnsmasq.pid" \
    --log-facility="$LAB_DIR/dnsmasq.log"
}

# --- an NTP server on the bridge address (chronyd serving its own clock; it never sets the
# machine's), for ipa-ntp-server.
lab_ntp_up() {
  mkdir -p "$LAB_DIR/chrony"
  cat > "$LAB_DIR/chrony/chrony.conf" <<CONF
local stratum 8
allow 192.168.150.0/24
bindaddress $LAB_IP
driftfile $LAB_DIR/chrony/drift
pidfile $LAB_DIR/chrony/chronyd.pid
cmdport 0
CONF
  lab_daemon chronyd "$LAB_DIR/chrony/stdout.log" chronyd -x -d -f "$LAB_DIR/chrony/chrony.conf"
}

# --- sushy-tools (Redfish, virtual media) and virtualbmc (IPMI), both on libvirt.
lab_bmcs_up() {
  mkdir -p "$LAB_DIR/pool" "$LAB_DIR/vbmc"
  virsh -c "$LAB_LIBVIRT" pool-define-as default dir --target "$LAB_DIR/pool" >/dev/null
  virsh -c "$LAB_LIBVIRT" pool-start default >/dev/null
  # The BMC's credentials (a wrong password is refused: htpasswd, bcrypt).
  "$LAB_VENV/bin/python" - "$LAB_DIR/htpasswd" <<'PY'
import sys, bcrypt
open(sys.argv[1], "w").write("admin:" + bcrypt.hashpw(b"password", bcrypt.gensalt(rounds=4)).decode() + "\n")
PY
  cat > "$LAB_DIR/sushy.conf" <<CONF
SUSHY_EMULATOR_LISTEN_IP = '$LAB_IP'
SUSHY_EMULATOR_LISTEN_PORT = 8000
SUSHY_EMULATOR_LIBVIRT_URI = '$LAB_LIBVIRT'
SUSHY_EMULATOR_AUTH_FILE = '$LAB_DIR/htpasswd'
SUSHY_EMULATOR_IGNORE_BOOT_DEVICE = False
SUSHY_EMULATOR_VMEDIA_VERIFY_SSL = False
SUSHY_EMULATOR_STORAGE_POOL = 'default'
SUSHY_EMULATOR_SECURE_BOOT_DISABLED_NVRAM = '/usr/share/OVMF/OVMF_VARS_4M.fd'
SUSHY_EMULATOR_SECURE_BOOT_ENABLED_NVRAM = '/usr/share/OVMF/OVMF_VARS_4M.ms.fd'
SUSHY_EMULATOR_BOOT_LOADER_MAP = {
    'UEFI': {'x86_64': '/usr/share/OVMF/OVMF_CODE_4M.fd'},
    'Legacy': {'x86_64': '/usr/share/seabios/bios-256k.bin'},
}
CONF
  lab_daemon sushy "$LAB_DIR/sushy.log" "$LAB_VENV/bin/sushy-emulator" --config "$LAB_DIR/sushy.conf"
  cat > "$LAB_DIR/vbmc/virtualbmc.conf" <<CONF
[default]
config_dir = $LAB_DIR/vbmc
pid_file = $LAB_DIR/vbmc/vbmcd.pid
server_port = 50891
[log]
logfile = $LAB_DIR/vbmc/vbmcd.log
CONF
  lab_daemon vbmcd "$LAB_DIR/vbmc/stdout.log" \
    env VIRTUALBMC_CONFIG="$LAB_DIR/vbmc/virtualbmc.conf" "$LAB_VENV/bin/vbmcd" --foreground
  local _
  for _ in $(seq 1 100); do
    lab_in curl -s -o /dev/null "$LAB_REDFISH/redfish/v1/" && return 0
    sleep 0.2
  done
  tail -20 "$LAB_DIR/sushy.log" >&2
  lab_fail "sushy-emulator did not start"
}

# --- what Ironic boots: Rivet's minimal ramdisk (built from $RIVET when $RAMDISK has none),
# and the ESP image UEFI virtual media boots (Debian's shim and signed GRUB, as Bifrost
# builds it).
lab_boot_files_up() {
  mkdir -p "$LAB_DIR/http/ramdisk" "$LAB_DIR/http/images"
  local rd=${RAMDISK:-$LAB_DIR/ramdisk-build}
  if [[ ! -f "$rd/rivet.initramfs" ]]; then
    [[ -x "${RIVET:-}" ]] || lab_fail "RIVET must name the static rivet binary (scripts/build-static.sh)"
    # zstd, as an operator would ship it: the firmware reads the image from virtual media or
    # over HTTP far slower than the kernel inflates zstd, even emulated (the ipv6 flow alone:
    # first heartbeat 28 s after power-on, active 41 s; uncompressed 41 MB, 32 s and 48 s).
    RIVET="$RIVET" COMPRESS=zstd "$LAB_ROOT/scripts/build-initramfs.sh" "$rd" >/dev/null
  fi
  cp "$rd/rivet.kernel" "$rd/rivet.initramfs" "$LAB_DIR/http/ramdisk/"
  local esp=$LAB_DIR/http/esp.img
  truncate -s 8M "$esp"
  mkfs.msdos -F 12 -n ESP_IMAGE "$esp" >/dev/null
  mmd -i "$esp" ::EFI ::EFI/BOOT
  mcopy -i "$esp" /usr/lib/shim/shimx64.efi.signed ::EFI/BOOT/BOOTX64.EFI
  mcopy -i "$esp" /usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed ::EFI/BOOT/grubx64.efi
  chmod -R a+rX "$LAB_DIR/http"
}
# arm64 nodes (called by the flow that boots one, once the binary exists): the arm64 minimal
# ramdisk (RIVET_ARM64: the aarch64 static binary; ARCH=aarch64 scripts/build-static.sh) and
# an ESP image of Debian's arm64 shim and signed GRUB, from their packages (downloaded and
# unpacked, as the ramdisk's are), where Ironic's [conductor]*_by_arch point.
lab_arm64_boot_files_up() {
  local rd=${RAMDISK_ARM64:-$LAB_DIR/ramdisk-arm64-build} cache=$HOME/.cache/rivet-ramdisk-arm64
  if [[ ! -f "$rd/rivet.initramfs" ]]; then
    [[ -x "${RIVET_ARM64:-}" ]] || lab_fail "RIVET_ARM64 must name the aarch64 static rivet binary (ARCH=aarch64 scripts/build-static.sh)"
    ARCH=aarch64 RIVET="$RIVET_ARM64" COMPRESS=zstd "$LAB_ROOT/scripts/build-initramfs.sh" "$rd" >/dev/null || return 1
  fi
  mkdir -p "$LAB_DIR/http/ramdisk-arm64" "$cache"
  cp "$rd/rivet.kernel" "$rd/rivet.initramfs" "$LAB_DIR/http/ramdisk-arm64/"
  if [[ ! -f "$cache/esp/.done" ]]; then
    rm -rf "$cache/esp" "$cache/esp-debs" && mkdir -p "$cache/esp-debs"
    (cd "$cache/esp-debs" && apt-get download -qq shim-signed:arm64 grub-efi-arm64-signed:arm64 2>/dev/null) || return 1
    local d; for d in "$cache"/esp-debs/*.deb; do dpkg -x "$d" "$cache/esp"; done
    touch "$cache/esp/.done"
  fi
  local esp=$LAB_DIR/http/esp-arm64.img
  truncate -s 8M "$esp"
  mkfs.msdos -F 12 -n ESP_IMAGE "$esp" >/dev/null
  mmd -i "$esp" ::EFI ::EFI/BOOT
  mcopy -i "$esp" "$cache/esp/usr/lib/shim/shimaa64.efi.signed" ::EFI/BOOT/BOOTAA64.EFI
  mcopy -i "$esp" "$cache/esp/usr/lib/grub/arm64-efi-signed/grubaa64.efi.signed" ::EFI/BOOT/grubaa64.efi
  chmod -R a+rX "$LAB_DIR/http"
}

# --- Ironic 39 (API on HTTPS and conductor, one process) on the bridge address.
lab_ironic_up() {
  local venv=${VENV:-$HOME/.cache/rivet-ironic/venv}
  mkdir -p "$LAB_DIR/locks" "$LAB_DIR/certificates" "$LAB_DIR/deploy-logs"
  sed -e "s#@LAB@#$LAB_DIR#g" -e "s#@IP@#$LAB_IP#g" "$LAB_ROOT/tests/lab/ironic.conf.in" \
    > "$LAB_DIR/ironic.conf"
  "$venv/bin/ironic-dbsync" --config-file "$LAB_DIR/ironic.conf" create_schema \
    > "$LAB_DIR/dbsync.log" 2>&1
  lab_daemon ironic "$LAB_DIR/ironic.stdout" "$venv/bin/ironic" --config-file "$LAB_DIR/ironic.conf"
  local _
  for _ in $(seq 1 240); do
    if lab_api GET /v1/drivers 2>/dev/null | grep '"redfish"' >/dev/null; then
      return 0
    fi
    kill -0 "$(cat "$LAB_DIR/pids/ironic")" 2>/dev/null || break
    sleep 0.5
  done
  tail -30 "$LAB_DIR/ironic.stdout" "$LAB_DIR/ironic.log" >&2 || true
  lab_fail "Ironic did not start"
}

# lab_api METHOD PATH [JSON]: Ironic's API from inside the lab, verified with the lab's CA; a
# 4xx/5xx answer fails with its body on stderr. A node Ironic holds locked (409) is asked again
# for up to 30 s, as Ironic's own client does.
lab_api() {
  local m=$1 p=$2 d=${3:-} out rc try
  local args=(-sS --fail-with-body --cacert "$LAB_DIR/tls/ca.pem" -X "$m"
    -H 'Content-Type: application/json' -H 'X-OpenStack-Ironic-API-Version: 1.115' "$LAB_API$p")
  [[ -n "$d" ]] && args+=(-d "$d")
  for try in $(seq 1 15); do
    rc=0
    out=$(lab_in curl "${args[@]}" 2>&1) || rc=$?
    if ((rc == 22)) && [[ "$out" == *"is locked by host"* ]] && ((try < 15)); then
      sleep 2
      continue
    fi
    break
  done
  if ((rc)); then
    echo "Ironic API: $m $p failed (curl exit $rc): $out" >&2
    return "$rc"
  fi
  printf '%s\n' "$out"
}

# --- nodes: libvirt domains (TCG) behind the BMCs.
# lab_node NAME FIRMWARE MAC MEMORY_MIB DISK...: define a domain, powered off, its serial
# console logged to $LAB_DIR/nodes/NAME/serial.log (appended over every boot) and open for
# typing on $LAB_DIR/nodes/NAME/console.sock (lab_console). FIRMWARE: uefi (OVMF 4M,
# secure boot off; the NIC's iPXE ROM off, so the firmware's own PXE loads snponly.efi) or bios
# (SeaBIOS; the NIC's iPXE ROM is the PXE client). DISK: KIND:SERIAL:SIZE with KIND nvme,
# virtio or virtio4k (4096-byte sectors), fresh, blank qcow2 files, or mpath (one raw file
# behind two SCSI paths: a multipath SAN LUN; SERIAL.raw). Prints the domain UUID. A
# node with a Redfish BMC needs one virtio disk at least: sushy-tools sets the boot device
# "Hdd" on the disks libvirt knows (the NVMe ones are QEMU arguments).
lab_node() {
  local name=$1 fw=$2 mac=$3 mem=$4; shift 4
  local dir=$LAB_DIR/nodes/$name
  mkdir -p "$dir"
  local os disks="" qemu_args="" i=0 spec kind serial size f
  local emulator=/usr/bin/qemu-system-x86_64 vcpus=2 cpu="<cpu mode='maximum' check='none'/>"
  local features="<features><acpi/><apic/></features>"
  if [[ "$fw" == uefi-arm64 ]]; then
    # An arm64 server: QEMU's virt machine (PCIe, GIC, PL011 UART), AAVMF's UEFI, a Cortex-A57
    # (emulated; "max" adds pointer authentication, which emulation pays for on every call).
    os="<os><type arch='aarch64' machine='virt'>hvm</type><loader readonly='yes' secure='no' type='pflash'>/usr/share/AAVMF/AAVMF_CODE.fd</loader><nvram template='/usr/share/AAVMF/AAVMF_VARS.fd'>$dir/VARS.fd</nvram></os>"
    emulator=/usr/bin/qemu-system-aarch64 vcpus=1 features=""
    # The SCSI bus the BMC puts its virtual CD on: virtio-scsi, which the firmware drives
    # (libvirt's own choice here, LSI Logic, AAVMF has no driver for: no CD to boot).
    disks+="<controller type='scsi' index='0' model='virtio-scsi'/>"
    cpu="<cpu mode='custom' match='exact' check='none'><model fallback='forbid'>cortex-a57</model></cpu>"
  elif [[ "$fw" == uefi ]]; then
    # The firmware named, not auto-selected: a BMC that rewrites the domain (virtualbmc's boot
    # device) gets back an expanded definition libvirt refuses to mix with auto-selection.
    os="<os><type arch='x86_64' machine='q35'>hvm</type><loader readonly='yes' secure='no' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader><nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>$dir/VARS.fd</nvram></os>"
  else
    os="<os><type arch='x86_64' machine='q35'>hvm</type><loader type='rom'>/usr/share/seabios/bios-256k.bin</loader></os>"
  fi
  for spec in "$@"; do
    IFS=: read -r kind serial size <<<"$spec"
    f=$dir/$serial.qcow2
    if [[ "$kind" == mpath ]]; then
      f=$dir/$serial.raw
      truncate -s "$size" "$f"
    else
      qemu-img create -q -f qcow2 "$f" "$size"
    fi
    case "$kind" in
      nvme)
        qemu_args+="<qemu:arg value='-drive'/><qemu:arg value='file=$f,if=none,id=nvme$i,format=qcow2'/>"
        # On a slot of the root bus libvirt does not hand out (it numbers its own from 1), and
        # in the firmware's boot order after whatever the BMC asks for (libvirt knows nothing
        # of this disk: its boot index comes from here, past libvirt's own).
        qemu_args+="<qemu:arg value='-device'/><qemu:arg value='nvme,drive=nvme$i,serial=$serial,bus=pcie.0,addr=0x$((16 + i)),bootindex=$((10 + i))'/>" ;;
      virtio|virtio4k)
        disks+="<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$f'/>"
        disks+="<target dev='vd$(printf "\\x$(printf %x $((97 + i)))")' bus='virtio'/><serial>$serial</serial>"
        [[ "$kind" == virtio4k ]] && disks+="<blockio logical_block_size='4096' physical_block_size='4096'/>"
        disks+="</disk>" ;;
      mpath)
        # A SAN LUN over two paths (two HBAs): one file behind two SCSI disks with one WWN
        # ($LAB_SAN_WWN) and serial, device ids sanpath0 and sanpath1 (for device_del). Raw:
        # two qcow2 drivers on one file would each cache its own metadata; no locking and
        # share-rw, as two hosts' views of one LUN. One such disk per node.
        local p
        for p in 0 1; do
          qemu_args+="<qemu:arg value='-device'/><qemu:arg value='virtio-scsi-pci,id=hba$p,bus=pcie.0,addr=0x1$(printf %x $((12 + p)))'/>"
          qemu_args+="<qemu:arg value='-drive'/><qemu:arg value='file=$f,if=none,id=san$p,format=raw,file.locking=off'/>"
          qemu_args+="<qemu:arg value='-device'/><qemu:arg value='scsi-hd,drive=san$p,bus=hba$p.0,id=sanpath$p,serial=$serial,wwn=$LAB_SAN_WWN,share-rw=on,bootindex=$((10 + i + 10 * p))'/>"
        done ;;
      *) lab_fail "unknown disk kind $kind"; return 1 ;;
    esac
    i=$((i + 1))
  done
  local rom=""
  [[ "$fw" == uefi* ]] && rom="<rom enabled='no'/>"
  # LAB_NIC_TAP=TAP: the NIC is on that tap (lab_vlan_port), not on the bridge; offloads off,
  # so the frames a user-space port forwards are whole. LAB_NIC2_MAC=MAC: a second NIC on
  # the bridge (a bond's second member).
  # LAB_NIC_BRIDGE=BRIDGE: the (first) NIC on that bridge ($LAB_BR6: the IPv6-only network).
  local nics="<interface type='bridge'><source bridge='${LAB_NIC_BRIDGE:-$LAB_BR}'/><mac address='$mac'/><model type='virtio'/>$rom</interface>"
  if [[ -n "${LAB_NIC_TAP:-}" ]]; then
    nics="<interface type='ethernet'><target dev='$LAB_NIC_TAP' managed='no'/><mac address='$mac'/><model type='virtio'/>"
    nics+="<driver><host csum='off' gso='off' tso4='off' tso6='off' ecn='off' ufo='off' mrg_rxbuf='off'/>"
    nics+="<guest csum='off' tso4='off' tso6='off' ecn='off' ufo='off'/></driver>$rom</interface>"
  fi
  [[ -n "${LAB_NIC2_MAC:-}" ]] \
    && nics+="<interface type='bridge'><source bridge='$LAB_BR'/><mac address='$LAB_NIC2_MAC'/><model type='virtio'/>$rom</interface>"
  # LAB_RTC_ADJUST=SECONDS: the node's RTC that far off UTC (a node whose clock is wrong).
  local clock="<clock offset='utc'/>"
  [[ -n "${LAB_RTC_ADJUST:-}" ]] && clock="<clock offset='variable' adjustment='$LAB_RTC_ADJUST' basis='utc'/>"
  cat > "$dir/domain.xml" <<XML
<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>$name</name>
  <memory unit='MiB'>$mem</memory>
  <vcpu>$vcpus</vcpu>
  $os
  $features
  $cpu
  $clock
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <devices>
    <emulator>$emulator</emulator>
    $disks
    $nics
    <serial type='unix'><source mode='bind' path='$dir/console.sock'/><log file='$dir/serial.log' append='on'/><target port='0'/></serial>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>$qemu_args</qemu:commandline>
</domain>
XML
  virsh -c "$LAB_LIBVIRT" define "$dir/domain.xml" >/dev/null
  virsh -c "$LAB_LIBVIRT" domuuid "$name"
}

# lab_boot_without NAME SERIAL...: start domain NAME with those NVMe disks taken out (a disk
# failed or pulled), for one boot; lab_restore NAME puts them back (the domain must be off).
lab_boot_without() {
  local name=$1; shift
  local dir=$LAB_DIR/nodes/$name
  virsh -c "$LAB_LIBVIRT" dumpxml --inactive "$name" > "$dir/full.xml"
  python3 - "$dir/full.xml" "$dir/partial.xml" "$@" <<'PY'
import sys, xml.etree.ElementTree as ET
Q = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("qemu", Q)
tree = ET.parse(sys.argv[1])
cl = tree.getroot().find("{%s}commandline" % Q)
args = list(cl)
drop = set()
for serial in sys.argv[3:]:
    for i, a in enumerate(args):
        v = a.get("value", "")
        # -drive file=…/SERIAL.qcow2 and -device nvme,…,serial=SERIAL,…: each with its flag.
        if v.startswith("file=") and "/%s.qcow2," % serial in v or "serial=%s," % serial in v:
            drop.update({i - 1, i})
for i in sorted(drop, reverse=True):
    cl.remove(args[i])
tree.write(sys.argv[2])
PY
  virsh -c "$LAB_LIBVIRT" define "$dir/partial.xml" >/dev/null
  virsh -c "$LAB_LIBVIRT" start "$name" >/dev/null
}
lab_restore() {
  virsh -c "$LAB_LIBVIRT" define "$LAB_DIR/nodes/$1/full.xml" >/dev/null
}

# lab_console NAME USER PASSWORD COMMAND: log in on NAME's serial console and run COMMAND;
# prints what it printed. Fails (with what the console showed) if any step times out.
lab_console() {
  python3 - "$LAB_DIR/nodes/$1/console.sock" "$2" "$3" "$4" <<'PY'
import socket, sys, time
path, user, password, command = sys.argv[1:5]
s = socket.socket(socket.AF_UNIX)
s.connect(path)
s.settimeout(0.5)
seen = b""
def expect(what, secs):
    global seen
    end = time.time() + secs
    while time.time() < end:
        try:
            chunk = s.recv(4096)
        except socket.timeout:
            continue
        seen += chunk
        if what in seen:
            return
    sys.exit("console: no %r in %ds; it showed: %r" % (what, secs, seen[-600:]))
s.sendall(b"\r")
expect(b"login:", 60)
seen = b""
s.sendall(user.encode() + b"\r")
expect(b"assword:", 30)
s.sendall(password.encode() + b"\r")
time.sleep(2)
seen = b""
# The shell computes the end marker, so the echo of the typed line does not match it.
s.sendall(command.encode() + b"; echo LAB-CONSOLE-$((6*7))\r")
expect(b"LAB-CONSOLE-42", 30)
s.sendall(b"exit\r")
sys.stdout.write(seen.decode(errors="replace"))
PY
}

# lab_vbmc NAME PORT: an IPMI BMC (admin/password) for domain NAME on the bridge address.
lab_vbmc() {
  local v=(env VIRTUALBMC_CONFIG="$LAB_DIR/vbmc/virtualbmc.conf" "$LAB_VENV/bin/vbmc")
  lab_in "${v[@]}" add "$1" --port "$2" --address "$LAB_IP" --username admin \
    --password password --libvirt-uri "$LAB_LIBVIRT" >/dev/null
  lab_in "${v[@]}" start "$1" >/dev/null
}

# --- the lab as a whole
lab_up() {
  lab_deps
  lab_down >/dev/null 2>&1 || true
  rm -rf "$LAB_DIR"
  mkdir -p "$LAB_DIR/pids"
  local t0=$SECONDS
  { lab_net_up && lab_tls_up && lab_boot_files_up && lab_nginx_up && lab_dnsmasq_up \
      && lab_ntp_up && lab_libvirtd_up && lab_bmcs_up && lab_ironic_up; } || { lab_down; lab_fail "the lab did not start"; }
  lab_log "up in $((SECONDS - t0)) s: namespace $LAB_NS, Ironic $LAB_API, Redfish $LAB_REDFISH, http $LAB_HTTP, state $LAB_DIR"
}

lab_down() {
  # Domains first: their QEMU processes are libvirtd's children and would outlive it.
  if [[ -S "$LAB_DIR/run/libvirt-sock" ]]; then
    local d
    for d in $(virsh -c "$LAB_LIBVIRT" list --all --name 2>/dev/null); do
      virsh -c "$LAB_LIBVIRT" destroy "$d" >/dev/null 2>&1 || true
      virsh -c "$LAB_LIBVIRT" undefine --nvram "$d" >/dev/null 2>&1 || true
    done
  fi
  local f pid
  for f in ironic sushy vbmcd dnsmasq nginx chronyd libvirtd; do
    [[ -f "$LAB_DIR/pids/$f" ]] || continue
    pid=$(cat "$LAB_DIR/pids/$f")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$LAB_DIR/pids/$f"
  done
  # Whatever is left in the namespace (a QEMU, an ipmitool) goes with it.
  if ip netns pids "$LAB_NS" >/dev/null 2>&1; then
    for pid in $(ip netns pids "$LAB_NS"); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$LAB_NS" 2>/dev/null || true
  fi
  rm -rf "${LAB_DIR:?}"
}

# lab_vlan_port NAME VID: a switch port that carries the provisioning network tagged VID and
# nothing untagged (tests/lab/vlan-trunk.py between a tap and a veth on the bridge), sending
# LLDP that names VID. Prints the tap's name, for LAB_NIC_TAP.
lab_vlan_port() {
  local tap=tp-$1 a=va-$1 b=vb-$1
  ip -n "$LAB_NS" tuntap add dev "$tap" mode tap
  ip -n "$LAB_NS" link add "$a" type veth peer name "$b"
  ip -n "$LAB_NS" link set "$b" master "$LAB_BR"
  local d
  for d in "$tap" "$a" "$b"; do
    # Whole, checksummed frames on the user-space path: no segmentation or checksum offload.
    lab_in ethtool -K "$d" tx off sg off tso off gso off gro off >/dev/null 2>&1 || true
    ip -n "$LAB_NS" link set "$d" up
  done
  lab_daemon "vlan-$1" "$LAB_DIR/vlan-$1.log" python3 "$LAB_ROOT/tests/lab/vlan-trunk.py" \
    "$tap" "$a" "$2" "$LAB_ROOT/tests/fixtures/lldp-switch-frame.hex"
  echo "$tap"
}

# lab_dhcp_ignore MAC: dnsmasq ignores MAC's DHCP requests (a node on a network with no DHCP
# for it); lab_dhcp_answer MAC: it answers MAC again (a DHCP server that answers late).
lab_dhcp_ignore() {
  echo "$1,ignore" >> "$LAB_DIR/dhcp-hosts"
  kill -HUP "$(cat "$LAB_DIR/pids/dnsmasq")"
}
lab_dhcp_answer() {
  local rest; rest=$(grep -v -i "^$1,ignore\$" "$LAB_DIR/dhcp-hosts" || true)
  printf '%s\n' "$rest" | sed '/^$/d' > "$LAB_DIR/dhcp-hosts"
  kill -HUP "$(cat "$LAB_DIR/pids/dnsmasq")"
}

lab_status() {
  ip netns list | grep -q "^$LAB_NS\b" || { echo "lab: down"; return 1; }
  echo "lab: namespace $LAB_NS; processes: $(ip netns pids "$LAB_NS" | wc -l)"
  virsh -c "$LAB_LIBVIRT" list --all 2>/dev/null || true
  lab_api GET /v1/nodes 2>/dev/null | head -c 2000 || true
}

# Entry point when run as a command (also how libvirtd's mount namespace is set up).
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  case "${1:-}" in
    _libvirtd_inner) lab_libvirtd_inner ;;
    up) lab_up ;;
    down) lab_down ;;
    status) lab_status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
  esac
fi
