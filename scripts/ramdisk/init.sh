#!/bin/busybox sh
# PID 1 of the minimal Rivet ramdisk (scripts/build-initramfs.sh): mount the pseudo file
# systems, load the deploy modules, bring the network up (rivet network), then keep the agent
# running (as systemd's Restart=always would). The agent powers the machine off or reboots it itself.
/bin/busybox mkdir -p /proc /sys /dev /run /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox mount -t tmpfs -o mode=0755 tmpfs /run
/bin/busybox mount -t tmpfs tmpfs /tmp
/bin/busybox --install -s
exec </dev/console >/dev/console 2>&1
up() { cut -d' ' -f1 /proc/uptime; }
# The boot timeline (scripts/boot-timeline.sh reads these lines beside the agent's).
mark() { echo "rivet-timeline $1 $(up)"; }
mark init_start
# Drivers for every device (PCI, USB, … by modalias) in one modprobe, beside the agent (which
# waits for its NIC and disks by itself); a second pass for the devices found behind those
# (NVMe namespaces, virtio disks, USB storage); the file systems last (the kernel would also
# ask for them at the first mount). One modprobe per pass: dependencies are resolved once and
# no process is started per device. In the foreground and at the same time, the NIC drivers
# alone (PCI network class), which are on the way to the first address; virtio_net comes with
# them, as a virtio NIC only appears once virtio_pci has probed. A module both passes ask for
# is loaded once (the kernel makes the second wait for the first).
aliases() { cat /sys/bus/*/devices/*/modalias 2>/dev/null | sort -u; }
nic_aliases() {
  for d in /sys/bus/pci/devices/*; do
    case "$(cat "$d/class" 2>/dev/null)" in 0x02*) cat "$d/modalias" ;; esac
  done
}
(
  # shellcheck disable=SC2046
  modprobe -qa $(aliases) virtio_blk virtio_scsi 2>/dev/null
  mark modules_loaded
  # shellcheck disable=SC2046
  modprobe -qa $(aliases) 2>/dev/null
  mark modules_second_pass
  modprobe -qa sd_mod sr_mod vfat nls_cp437 nls_iso8859_1 nls_ascii nls_utf8 ext4 iso9660 loop efivarfs 2>/dev/null
  [ -d /sys/firmware/efi/efivars ] && mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null
  mark modules_all
) &
# VLANs and bonds (network_data.json, ipa-enable-vlan-interfaces) with them; bonding without
# the empty bond0 it would otherwise make (a bond is made only when network_data asks).
modprobe -q bonding max_bonds=0 2>/dev/null
# shellcheck disable=SC2046
modprobe -qa $(nic_aliases) virtio_net 8021q 2>/dev/null
mark nic_drivers_loaded
# The network: `rivet network` (the same bring-up as the DIB ramdisk's rivet-network.service)
# applies network_data.json from the virtual media when Ironic put one there (static
# addresses, bonds, VLANs), else asks DHCP on every NIC the moment it appears, again and again
# until a server answers; then the VLANs ipa-enable-vlan-interfaces asks for. Beside the
# agent, which finds its conductor as soon as an address is there.
ip link set lo up
/usr/bin/rivet network &
# Rescue: once the agent has set the rescue user's password (rescue.finalize_rescue), the
# serial console (the last console=ttyS* or, on arm64, ttyAMA* given) offers a login, as IPA's
# ramdisks do. Before that there is no login at all (root's password is locked in any case).
(
  while [ ! -e /etc/ipa-rescue-config/ipa-rescue-password ]; do sleep 1; done
  tty=$(tr ' ' '\n' < /proc/cmdline | sed -n -e 's/^console=\(ttyS[0-9]*\).*/\1/p' \
    -e 's/^console=\(ttyAMA[0-9]*\).*/\1/p' | tail -1)
  [ -n "$tty" ] || { [ "$(uname -m)" = aarch64 ] && tty=ttyAMA0 || tty=ttyS0; }
  echo "[rivet-init] rescue: login on $tty"
  while :; do setsid getty -L 115200 "$tty" vt100; sleep 1; done
) &
(
  while :; do
    echo "[rivet-init] starting rivet at $(up) s"
    mark agent_exec
    /usr/bin/rivet --state-dir /run/rivet
    echo "[rivet-init] rivet exited ($?); again in 5 s"
    sleep 5
  done
) &
while :; do wait; sleep 1; done
